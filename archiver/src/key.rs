//! The archive key: 32 raw bytes the firm holds, under which SQLCipher encrypts the
//! whole database file and its write-ahead log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use rand::RngCore;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::KeyError;

/// Length of an archive key in bytes.
pub const KEY_LEN: usize = 32;

/// Largest key file accepted by [`ArchiveKey::load`] (64 hex digits, optional newline,
/// some slack for `\r\n` or trailing spaces).
pub const MAX_KEY_FILE_LEN: u64 = 128;

/// The archive's database key.
///
/// Kept boxed so moves leave no copies on the stack, zeroized on drop, and never
/// printed: `Debug` shows `ArchiveKey(..)` only. There is no accessor for the bytes
/// outside this crate; the only way out is [`ArchiveKey::write_new_file`].
#[derive(ZeroizeOnDrop)]
pub struct ArchiveKey(Box<[u8; KEY_LEN]>);

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveKey(..)")
    }
}

impl ArchiveKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> ArchiveKey {
        let mut key = Box::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        ArchiveKey(key)
    }

    /// A key from raw bytes (for callers that keep the key in an HSM or a secret store).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ArchiveKey {
        let mut bytes = Zeroizing::new(bytes);
        let mut key = Box::new([0u8; KEY_LEN]);
        key.copy_from_slice(&bytes[..]);
        zeroize::Zeroize::zeroize(&mut *bytes);
        ArchiveKey(key)
    }

    /// Generates a key and writes it, as 64 hex digits and a newline, to a new file
    /// created with mode 0600 (never overwrites an existing file).
    pub fn write_new_file(path: &Path) -> Result<ArchiveKey, KeyError> {
        let key = ArchiveKey::generate();
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut text = Zeroizing::new(hex::encode(&key.0[..]));
        text.push('\n');
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(key)
    }

    /// Loads a key file written by [`ArchiveKey::write_new_file`]. On Unix the file must
    /// not be readable or writable by group or others.
    pub fn load(path: &Path) -> Result<ArchiveKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(io)?;
        let mut key = Box::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
        })?;
        Ok(ArchiveKey(key))
    }

    /// The SQLCipher statement that sets this key as a raw key (no KDF):
    /// `PRAGMA key = "x'<64 hex>'"`.
    pub(crate) fn pragma(&self) -> Zeroizing<String> {
        let hex = Zeroizing::new(hex::encode(&self.0[..]));
        let mut s = Zeroizing::new(String::with_capacity(96));
        s.push_str("PRAGMA key = \"x'");
        s.push_str(&hex);
        s.push_str("'\";");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let key = ArchiveKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "ArchiveKey(..)");
        assert!(!shown.contains("ab"));
    }

    #[test]
    fn key_file_round_trip_and_mode() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("archive.key");
        let written = ArchiveKey::write_new_file(&path)?;
        let loaded = ArchiveKey::load(&path)?;
        assert_eq!(written.0, loaded.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            assert!(matches!(
                ArchiveKey::load(&path),
                Err(KeyError::Permissions { mode: 0o644, .. })
            ));
        }
        // Never overwrites.
        assert!(matches!(
            ArchiveKey::write_new_file(&path),
            Err(KeyError::Io { .. })
        ));
        Ok(())
    }

    #[test]
    fn malformed_key_file_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.key");
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(&path)?.write_all(b"not hex at all\n")?;
        assert!(matches!(
            ArchiveKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
        Ok(())
    }
}
