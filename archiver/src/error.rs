//! Typed errors, by operation and cause.

use std::path::PathBuf;

/// Loading or writing the archive key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be created, opened or read.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error("key file {path} has mode {mode:o}; it must be 0600 (owner only)")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold 64 hex digits.
    #[error("key file {path} does not hold a 32-byte key as 64 hex digits")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
}

/// Any archive operation other than `verify` and `verify_export`.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// SQLCipher could not read the file with this key: the key is wrong, or the file is
    /// not an archive database (or is damaged beyond its first page).
    #[error("{path}: the key does not open this archive (wrong key, or not an archive database)")]
    WrongKey {
        /// The database file.
        path: PathBuf,
    },
    /// The database was written by a newer (or unknown) schema.
    #[error("archive schema version {found} is not supported (this build reads {supported})")]
    Schema {
        /// Version found in the file.
        found: i64,
        /// Version this build writes and reads.
        supported: i64,
    },
    /// An input exceeds one of the named bounds in [`crate::limits`].
    #[error("{what} is {got}, at most {max} allowed")]
    TooLarge {
        /// Which bound.
        what: &'static str,
        /// The size or count given.
        got: u64,
        /// The bound.
        max: u64,
    },
    /// An input is malformed (empty where a value is needed, a bad range, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A stored record could not be decoded (the store was altered outside this crate;
    /// run `verify`).
    #[error("stored record {seq} cannot be read: {reason}")]
    Corrupt {
        /// The record.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A legal hold with this name is already active.
    #[error("legal hold {0:?} is already active")]
    HoldExists(String),
    /// No active legal hold has this name.
    #[error("no active legal hold named {0:?}")]
    NoSuchHold(String),
    /// The export directory exists and is not empty.
    #[error("export directory {0} is not empty")]
    ExportDirNotEmpty(PathBuf),
    /// Nothing matched the export's scope.
    #[error("nothing to export in this scope")]
    NothingToExport,
    /// A file outside the database (export, key) could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// SQLite / SQLCipher.
    #[error("archive database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// What is wrong with the first broken record found by [`crate::Archive::verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The record's stored hash does not match its fields: it was edited.
    #[error("edited: its hash does not match its contents")]
    Edited,
    /// Records are missing before this one (deleted rows): `expected` was the next
    /// sequence number, this row has a later one.
    #[error("records {expected}..{seq} are missing (deleted)", seq = .found.saturating_sub(1))]
    Missing {
        /// The sequence number that should have come next.
        expected: u64,
        /// The sequence number found instead.
        found: u64,
    },
    /// The record was moved: its `prev_hash` links to record `links_to`, not to the
    /// record before it.
    #[error("reordered: it links to record {links_to}, not to the record before it")]
    Reordered {
        /// The record whose hash this record's `prev_hash` names.
        links_to: u64,
    },
    /// The `prev_hash` names no record in the store.
    #[error("broken link: its prev_hash is not the previous record's hash")]
    LinkBroken,
    /// The content no longer matches the digest recorded in the chain.
    #[error("content changed: it no longer matches the digest in the chain")]
    ContentChanged,
    /// The content is gone but no tombstone records its deletion.
    #[error("content deleted without a tombstone")]
    ContentMissing,
    /// A tombstone for this record exists but its content is still there.
    #[error("tombstoned at record {tombstone} but its content is still present")]
    ContentNotDeleted {
        /// The tombstone's record.
        tombstone: u64,
    },
    /// A tombstone that names a record that does not exist, is not a message, or
    /// carries another digest.
    #[error("bad tombstone: {0}")]
    BadTombstone(String),
    /// The search index row disagrees with the chained metadata.
    #[error("index row differs from the chained metadata ({0})")]
    IndexMismatch(&'static str),
    /// The row cannot be decoded.
    #[error("cannot be decoded: {0}")]
    Undecodable(String),
}

/// The result of a failed [`crate::Archive::verify`].
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The first broken record, in sequence order.
    #[error("record {seq}: {problem}")]
    Broken {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        problem: Problem,
    },
    /// The chain and contents verify, but the search index does not match the
    /// contents: a search could miss a record or find one for words it does not hold.
    #[error("the search index does not match the archived contents (a search could miss records); the chain itself verifies: rebuild the index with `sealpost-archiver reindex`")]
    SearchIndex,
    /// The database could not be read.
    #[error("archive database: {0}")]
    Db(#[from] rusqlite::Error),
}

impl VerifyError {
    /// The sequence number of the first broken record, if the chain is broken.
    pub fn seq(&self) -> Option<u64> {
        match self {
            VerifyError::Broken { seq, .. } => Some(*seq),
            VerifyError::SearchIndex | VerifyError::Db(_) => None,
        }
    }
}

/// The result of a failed [`crate::verify_export`]: the first bad file or record.
#[derive(Debug, thiserror::Error)]
pub enum ExportVerifyError {
    /// `manifest.json` is missing, too large or malformed.
    #[error("manifest.json: {0}")]
    Manifest(String),
    /// A file listed in the manifest is missing, too large, or has another SHA-256.
    #[error("file {path}: {problem}")]
    File {
        /// Path relative to the export directory.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A record in the manifest does not verify.
    #[error("record {seq}: {problem}")]
    Record {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        problem: String,
    },
}
