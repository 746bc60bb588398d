//! The device's local state, in one directory, encrypted at rest.
//!
//! ```text
//! <home>/kdf.json       Argon2id parameters and salt (not secret)
//! <home>/state.sealed   the whole state, a protocol pickle (ChaCha20-Poly1305) under
//!                       Argon2id(passphrase, salt)
//! <home>/lock           held exclusively while a process uses the profile
//! ```
//!
//! Every write is atomic: write a temporary file, fsync it, rename it over the old one,
//! fsync the directory. A crash at any instant leaves the previous or the next state. A
//! wrong passphrase fails AEAD authentication and is reported as such.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand_core::{CryptoRng, RngCore};
use sealpost_protocol::pickle::{self, PickleKind};
use sealpost_protocol::{PickleError, PickleKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Argon2id memory cost, KiB (64 MiB; RFC 9106's second recommended setting).
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const ARGON2_T: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 1;
/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE_LEN: usize = 8;
const KDF_FILE: &str = "kdf.json";
const STATE_FILE: &str = "state.sealed";
const LOCK_FILE: &str = "lock";

/// A local state failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No profile in this directory.
    #[error("no Sealpost profile in {0} (run `sealpost init` first)")]
    NoProfile(PathBuf),
    /// A profile already exists here.
    #[error("a Sealpost profile already exists in {0}")]
    Exists(PathBuf),
    /// The passphrase does not open the state.
    #[error("wrong passphrase (or the state file was altered)")]
    WrongPassphrase,
    /// The passphrase is too short.
    #[error("the passphrase must be at least {MIN_PASSPHRASE_LEN} characters")]
    WeakPassphrase,
    /// Another process holds the profile.
    #[error("the profile in {0} is in use by another sealpost process")]
    Locked(PathBuf),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The files are not in a format this version understands.
    #[error("profile format: {0}")]
    Format(String),
}

impl From<PickleError> for StateError {
    fn from(e: PickleError) -> Self {
        match e {
            PickleError::Authentication => StateError::WrongPassphrase,
            other => StateError::Format(other.to_string()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KdfParams {
    version: u32,
    algorithm: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
}

/// An open profile directory: its key and its lock.
pub struct Profile {
    dir: PathBuf,
    key: PickleKey,
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |e| StateError::Io(path.to_owned(), e)
}

fn derive_key(passphrase: &str, params: &KdfParams) -> Result<PickleKey, StateError> {
    let salt = hex::decode(&params.salt).map_err(|_| StateError::Format("salt".into()))?;
    if params.algorithm != "argon2id" || params.version != 1 {
        return Err(StateError::Format(format!(
            "unknown KDF {} v{}",
            params.algorithm, params.version
        )));
    }
    // Refuse parameters weaker than this build's, so a tampered kdf.json cannot weaken it.
    if params.m_kib < ARGON2_M_KIB
        || params.t < ARGON2_T
        || params.m_kib > 4 * 1024 * 1024
        || params.t > 64
        || params.p > 16
    {
        return Err(StateError::Format(
            "Argon2id parameters out of range".into(),
        ));
    }
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|e| StateError::Format(e.to_string()))?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), &salt, &mut out[..])
        .map_err(|e| StateError::Format(e.to_string()))?;
    Ok(PickleKey::from_bytes(*out))
}

fn lock(dir: &Path) -> Result<File, StateError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(StateError::Io(path, e)),
    }
}

/// Write `data` atomically to `path` (temp, fsync, rename, fsync dir), mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let dir = parent_dir(path);
    let tmp = path.with_extension("tmp");
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// The directory holding `path`: a bare file name (whose parent is the empty path) and
/// the root are in the current directory.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl Profile {
    /// Create a new profile in `dir` (created if missing) and write `initial` into it.
    pub fn create<T: Serialize, R: RngCore + CryptoRng>(
        dir: &Path,
        passphrase: &str,
        initial: &T,
        rng: &mut R,
    ) -> Result<Self, StateError> {
        if passphrase.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(StateError::WeakPassphrase);
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        let lock = lock(dir)?;
        if dir.join(STATE_FILE).exists() {
            return Err(StateError::Exists(dir.to_owned()));
        }
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let params = KdfParams {
            version: 1,
            algorithm: "argon2id".into(),
            m_kib: ARGON2_M_KIB,
            t: ARGON2_T,
            p: ARGON2_P,
            salt: hex::encode(salt),
        };
        let key = derive_key(passphrase, &params)?;
        let json =
            serde_json::to_vec_pretty(&params).map_err(|e| StateError::Format(e.to_string()))?;
        write_atomic(&dir.join(KDF_FILE), &json)?;
        let profile = Self {
            dir: dir.to_owned(),
            key,
            _lock: lock,
        };
        profile.save(initial, rng)?;
        Ok(profile)
    }

    /// Open the profile in `dir` and read its state.
    pub fn open<T: DeserializeOwned>(
        dir: &Path,
        passphrase: &str,
    ) -> Result<(Self, T), StateError> {
        if !dir.join(STATE_FILE).exists() {
            return Err(StateError::NoProfile(dir.to_owned()));
        }
        let lock = lock(dir)?;
        let kdf_path = dir.join(KDF_FILE);
        let params: KdfParams =
            serde_json::from_slice(&fs::read(&kdf_path).map_err(io(&kdf_path))?)
                .map_err(|e| StateError::Format(format!("{}: {e}", kdf_path.display())))?;
        let key = derive_key(passphrase, &params)?;
        let state_path = dir.join(STATE_FILE);
        let sealed = fs::read(&state_path).map_err(io(&state_path))?;
        let state: T = pickle::open(PickleKind::Application, &sealed, &key)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                key,
                _lock: lock,
            },
            state,
        ))
    }

    /// Encrypt and atomically replace the state.
    pub fn save<T: Serialize, R: RngCore + CryptoRng>(
        &self,
        state: &T,
        rng: &mut R,
    ) -> Result<(), StateError> {
        let sealed = pickle::seal(PickleKind::Application, state, &self.key, rng)?;
        write_atomic(&self.dir.join(STATE_FILE), &sealed)
    }

    /// The key nested pickles (identity, prekeys, sessions) are sealed under.
    /// Read the state again from disk with this profile's key (no passphrase, no Argon2):
    /// a second handle on the same profile, sharing this one's lock (the same open lock
    /// file, so the lock is held until both are dropped).
    pub fn reload<T: DeserializeOwned>(&self) -> Result<(Self, T), StateError> {
        let lock_path = self.dir.join(LOCK_FILE);
        let lock = self._lock.try_clone().map_err(io(&lock_path))?;
        let state_path = self.dir.join(STATE_FILE);
        let sealed = fs::read(&state_path).map_err(io(&state_path))?;
        let state: T = pickle::open(PickleKind::Application, &sealed, &self.key)?;
        Ok((
            Self {
                dir: self.dir.clone(),
                key: self.key.duplicate(),
                _lock: lock,
            },
            state,
        ))
    }

    pub fn key(&self) -> &PickleKey {
        &self.key
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct S {
        n: u32,
    }

    #[test]
    fn an_atomic_write_under_a_bare_file_name_lands_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("r.cbor")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/r.cbor")), Path::new("a"));
        assert_eq!(parent_dir(Path::new("/r.cbor")), Path::new("/"));
        let name = format!("t-atomic-{}.cbor", std::process::id());
        let name = Path::new(&name);
        let written = write_atomic(name, b"bare");
        let back = fs::read(name);
        let _ = fs::remove_file(name);
        written.unwrap();
        assert_eq!(back.unwrap(), b"bare");
    }

    #[test]
    fn create_open_wrong_passphrase_lock_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("p");
        let mut rng = rand::rngs::OsRng;
        let p = Profile::create(&home, "correct horse", &S { n: 1 }, &mut rng).unwrap();
        assert!(matches!(
            Profile::open::<S>(&home, "correct horse"),
            Err(StateError::Locked(_))
        ));
        p.save(&S { n: 2 }, &mut rng).unwrap();
        drop(p);
        assert!(matches!(
            Profile::open::<S>(&home, "wrong horse!"),
            Err(StateError::WrongPassphrase)
        ));
        let (_p, s) = Profile::open::<S>(&home, "correct horse").unwrap();
        assert_eq!(s, S { n: 2 });
        assert!(!home.join("state.tmp").exists());
        let raw = fs::read(home.join(STATE_FILE)).unwrap();
        assert!(
            !raw.windows(2).any(|w| w == [0xa1, 0x61]),
            "state is not plain CBOR"
        );
        assert!(matches!(
            Profile::create(&home, "short", &S { n: 0 }, &mut rng),
            Err(StateError::WeakPassphrase)
        ));
    }
}
