//! Online backup and offline restore of a relay's data directory (SQLite backend).
//!
//! A backup is a directory:
//!
//! * `relay.sqlite3`: a consistent snapshot of the database, taken with SQLite's
//!   `VACUUM INTO` on a read transaction while the relay keeps running (writers are not
//!   blocked; the snapshot is the database as of one committed transaction, WAL
//!   included);
//! * `blobs/`: the attachment blobs committed when the copy ran (each blob file is
//!   immutable once committed; in-progress uploads are skipped);
//! * `BACKUP.json`: the manifest ([`Manifest`]): when, the schema version, the relay's
//!   version and commit, the SHA-256 and size of the database file, and the blob count.
//!
//! [`restore`] checks the manifest against the files before it writes anything, and
//! writes the database atomically (temporary file, fsync, rename). It runs only while no
//! relay holds the data directory (the caller takes the directory's lock).
//!
//! What is not in a backup: the development TLS files (`certs/dev/`, regenerated, which
//! changes the CA fingerprint clients pin: back them up separately, or use production
//! certificates) and the relay's QUIC token key (`relay-secrets.bin`, regenerated; it only
//! validates addresses between connections).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name inside a backup.
pub const MANIFEST: &str = "BACKUP.json";
/// The database file name, in a backup and in a data directory.
pub const DB_FILE: &str = "relay.sqlite3";
/// The blob directory name, in a backup and in a data directory.
pub const BLOB_DIR: &str = "blobs";
/// Version of the backup layout.
pub const FORMAT: u32 = 1;

/// A backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("database: {0}")]
    Database(String),
    /// The backup is not usable (missing, altered, another format, or the target is not
    /// empty).
    #[error("{0}")]
    Refused(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What a backup holds (`BACKUP.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// When the snapshot was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// The database's schema version (`PRAGMA user_version`).
    pub schema_version: u32,
    /// The relay that took it: `version (commit ...)`.
    pub relay_version: String,
    /// SHA-256 of `relay.sqlite3`, hex.
    pub database_sha256: String,
    /// Size of `relay.sqlite3`, bytes.
    pub database_bytes: u64,
    /// Blob files copied.
    pub blobs: u64,
}

fn sha256_file(path: &Path) -> Result<(String, u64), BackupError> {
    let mut f = fs::File::open(path).map_err(io("reading", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(ctx.finish().as_ref()), total))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Copy `from` to `to` (a new file), fsynced.
fn copy_synced(from: &Path, to: &Path) -> Result<(), BackupError> {
    let mut src = fs::File::open(from).map_err(io("reading", from))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io("creating", to))?;
    std::io::copy(&mut src, &mut dst).map_err(io("writing", to))?;
    dst.sync_all().map_err(io("syncing", to))?;
    Ok(())
}

/// Committed blob files in `dir` (names of 32 hex digits; uploads in progress are not).
fn blob_files(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("listing", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Take an online backup of the data directory `data_dir` into `out` (which must not exist
/// or be empty). Safe while the relay runs.
pub fn backup(
    data_dir: &Path,
    out: &Path,
    relay_version: &str,
    now_ms: u64,
) -> Result<Manifest, BackupError> {
    let db = data_dir.join(DB_FILE);
    if !db.exists() {
        return Err(BackupError::Refused(format!(
            "no database at {}: nothing to back up (is this the relay's data directory?)",
            db.display()
        )));
    }
    if out.exists()
        && fs::read_dir(out)
            .map_err(io("listing", out))?
            .next()
            .is_some()
    {
        return Err(BackupError::Refused(format!(
            "{} is not empty: back up into a new directory",
            out.display()
        )));
    }
    fs::create_dir_all(out).map_err(io("creating", out))?;
    let conn = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| BackupError::Database(format!("opening {}: {e}", db.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| BackupError::Database(e.to_string()))?;
    let schema_version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| BackupError::Database(e.to_string()))?;
    let snapshot = out.join(DB_FILE);
    let target = snapshot
        .to_str()
        .ok_or_else(|| BackupError::Refused("the backup path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(|e| BackupError::Database(format!("snapshot: {e}")))?;
    drop(conn);
    fs::File::open(&snapshot)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", &snapshot))?;
    let (database_sha256, database_bytes) = sha256_file(&snapshot)?;

    let blobs_out = out.join(BLOB_DIR);
    fs::create_dir_all(&blobs_out).map_err(io("creating", &blobs_out))?;
    let mut blobs = 0u64;
    for file in blob_files(&data_dir.join(BLOB_DIR))? {
        let Some(name) = file.file_name() else {
            continue;
        };
        match copy_synced(&file, &blobs_out.join(name)) {
            Ok(()) => blobs += 1,
            // Expired or downloaded-and-deleted between the listing and the copy.
            Err(BackupError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(&blobs_out)?;

    let manifest = Manifest {
        format: FORMAT,
        created_ms: now_ms,
        schema_version,
        relay_version: relay_version.to_owned(),
        database_sha256,
        database_bytes,
        blobs,
    };
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| BackupError::Refused(e.to_string()))?;
    let path = out.join(MANIFEST);
    let mut f = fs::File::create(&path).map_err(io("creating", &path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io("writing", &path))?;
    sync_dir(out)?;
    Ok(manifest)
}

/// Check a backup directory: the manifest reads, and the database file has the size and
/// SHA-256 it records.
pub fn check(backup_dir: &Path) -> Result<Manifest, BackupError> {
    let path = backup_dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io("reading", &path))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| BackupError::Refused(format!("{} does not parse: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Refused(format!(
            "backup format {} is not {FORMAT}",
            manifest.format
        )));
    }
    let (sha, bytes) = sha256_file(&backup_dir.join(DB_FILE))?;
    if sha != manifest.database_sha256 || bytes != manifest.database_bytes {
        return Err(BackupError::Refused(format!(
            "{} does not match its manifest (SHA-256 {sha}, {bytes} bytes; the manifest says \
             {}, {} bytes): the backup was altered or is incomplete",
            backup_dir.join(DB_FILE).display(),
            manifest.database_sha256,
            manifest.database_bytes
        )));
    }
    Ok(manifest)
}

/// Restore `backup_dir` into `data_dir`. The caller holds the data directory's lock (no
/// relay runs on it). Refused if the backup does not check out, or if `data_dir` already
/// holds a database and `replace` is false. The database is written to a temporary file
/// and renamed into place; stale WAL files of a replaced database are removed first.
pub fn restore(backup_dir: &Path, data_dir: &Path, replace: bool) -> Result<Manifest, BackupError> {
    let manifest = check(backup_dir)?;
    fs::create_dir_all(data_dir).map_err(io("creating", data_dir))?;
    let db = data_dir.join(DB_FILE);
    if db.exists() && !replace {
        return Err(BackupError::Refused(format!(
            "{} already holds a database: pass --replace to overwrite it",
            db.display()
        )));
    }
    let tmp = data_dir.join(format!("{DB_FILE}.restoring"));
    let _ = fs::remove_file(&tmp);
    copy_synced(&backup_dir.join(DB_FILE), &tmp)?;
    for suffix in ["-wal", "-shm"] {
        let stale = data_dir.join(format!("{DB_FILE}{suffix}"));
        match fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &stale)(e)),
        }
    }
    fs::rename(&tmp, &db).map_err(io("renaming into", &db))?;
    let blobs_in = data_dir.join(BLOB_DIR);
    fs::create_dir_all(&blobs_in).map_err(io("creating", &blobs_in))?;
    for file in blob_files(&backup_dir.join(BLOB_DIR))? {
        let Some(name) = file.file_name() else {
            continue;
        };
        let to = blobs_in.join(name);
        if !to.exists() {
            copy_synced(&file, &to)?;
        }
    }
    sync_dir(&blobs_in)?;
    sync_dir(data_dir)?;
    Ok(manifest)
}
