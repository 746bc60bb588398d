//! # sealpost-archiver: the compliance archive store
//!
//! The firm's record of every client<->firm message (SEC 17a-4 audit-trail alternative,
//! Advisers Act 204-2, FINRA 4511, MiFID II Art. 16(7)): an append-only, hash-chained,
//! encrypted store with retention per record class, legal holds, search, verifiable
//! exports and a whole-store `verify`. The `sealpost-archiver` binary (a device that
//! receives the archive copy of every message) decrypts each item and calls
//! [`Archive::ingest_batch`]; this crate does no networking.
//!
//! * **Encrypted at rest.** One SQLCipher database (WAL mode) under a 32-byte raw
//!   [`ArchiveKey`] the firm holds; the relay never sees it. A wrong key gives
//!   [`ArchiveError::WrongKey`].
//! * **Chained.** Every record (`message`, `tombstone`, `hold_placed`,
//!   `hold_released`, `search`, `export`, `anchor`) has `seq`, `prev_hash` and `hash`;
//!   the hash covers the metadata and the SHA-256 of the content, not the content
//!   itself, so deleting content at the end of retention keeps the chain verifiable.
//!   The encoding is specified in [`record`] so a third party can re-implement it.
//! * **Exactly once.** Each item carries a unique `source_id`; ingesting it again is a
//!   no-op returning the existing record.
//! * **Audited.** Every search, export, hold and release is itself a chain record
//!   naming who did it.
//!
//! ```no_run
//! use sealpost_archiver::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = ArchiveKey::load(std::path::Path::new("/etc/sealpost/archive.key"))?;
//! let mut archive = Archive::open(std::path::Path::new("/var/lib/sealpost/archive.db"), &key)?;
//! let item = NewRecord {
//!     source_id: b"device-a1/msg-42".to_vec(),
//!     class: RecordClass::Message,
//!     sent_ms: 1_765_000_000_000,
//!     client_account: "client-alice".into(),
//!     firm_account: "advisor-bob".into(),
//!     sender_account: "client-alice".into(),
//!     sender_device: "a1b2c3".into(),
//!     direction: Direction::ClientToFirm,
//!     kind: "text".into(),
//!     text: "Please sell 10 units".into(),
//!     attachments: vec![],
//!     original: b"...the decrypted message bytes...".to_vec(),
//! };
//! let done = archive.ingest_batch(&[item])?;
//! let hits = archive.search("compliance-carol", &SearchQuery {
//!     text: Some("sell".into()),
//!     ..SearchQuery::default()
//! })?;
//! archive.verify()?;
//! # let _ = (done, hits); Ok(()) }
//! ```
//!
//! ## Using it from the archiver binary
//!
//! * **Keys.** `ArchiveKey::write_new_file` once at setup (mode 0600, never
//!   overwrites), `ArchiveKey::load` at start (refuses a group/world-readable file).
//!   Back up the key apart from the database: without it the archive is unreadable.
//! * **Ingest.** Drain the relay mailbox in batches (up to [`limits::MAX_BATCH`]), call
//!   [`Archive::ingest_batch`], and acknowledge the relay only after it returns: the
//!   batch is then durable, and a redelivery after a crash is recognised by
//!   `source_id` (sender device id + message id) and not stored twice.
//! * **Anchoring.** Publish [`Archive::head`] (e.g. as a transparency-log leaf) and
//!   record where with [`Archive::anchor`].
//! * **Retention.** Run [`Archive::sweep`] periodically (e.g. daily) with the current
//!   time; repeat while [`SweepReport::more`] is set. The policy comes from
//!   [`ArchiveOptions::retention`] (a [`RetentionPolicy`], deserializable from the
//!   binary's TOML configuration).
//! * **Compliance commands.** [`Archive::search`], [`Archive::export`],
//!   [`Archive::place_hold`], [`Archive::release_hold`] and [`Archive::holds`] take
//!   the acting officer's name; the first four write a chain record naming them.
//!   [`Archive::verify`] returns [`VerifyError::Broken`] with the first broken `seq`
//!   (its `Display` is the line to print); [`verify_export`] needs no key or database.
//! * **Processes.** Several processes may open the same file (a daemon ingesting, a
//!   CLI searching): WAL mode, writers wait up to [`store::BUSY_TIMEOUT`].

pub mod error;
pub mod export;
pub mod key;
pub mod limits;
pub mod record;
pub mod retention;
pub mod search;
pub mod store;

pub use error::{ArchiveError, ExportVerifyError, KeyError, Problem, VerifyError};
pub use export::{
    html_escape, verify_export, ChainLink, ContentState, ExportReport, ExportVerifyReport,
    FileRole, Manifest, ManifestFile, ManifestRecord, EXPORT_FORMAT,
};
pub use key::{ArchiveKey, KEY_LEN};
pub use record::{
    content_digest, record_hash, Attachment, AttachmentMeta, Content, Direction, ExportScope, Hash,
    HoldScope, MessageMeta, NewRecord, RecordBody, RecordClass, SearchOrder, SearchQuery,
    StoredRecord, GENESIS_PREV_HASH,
};
pub use retention::{ActiveHold, RetentionPolicy, SweepReport, DAY_MS, DEFAULT_RETENTION_DAYS};
pub use search::{SearchHit, SearchResults};
pub use store::{
    Archive, ArchiveOptions, Clock, Head, Ingested, SystemClock, VerifySummary, CACHE_SIZE_KIB,
    MAX_CACHE_SIZE_KIB, SCHEMA_VERSION, WAL_AUTOCHECKPOINT_PAGES,
};

#[cfg(test)]
mod tests;
