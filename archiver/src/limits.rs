//! Named bounds on every size and count the archive accepts. An input past one of them
//! is refused with [`crate::ArchiveError::TooLarge`] naming the bound.

/// Bytes in a source id (sender device id + message id).
pub const MAX_SOURCE_ID_LEN: usize = 256;
/// Bytes in an account id (client, firm-side, sender).
pub const MAX_ACCOUNT_LEN: usize = 256;
/// Bytes in a sender device id (hex string).
pub const MAX_DEVICE_LEN: usize = 256;
/// Bytes in a message kind string.
pub const MAX_KIND_LEN: usize = 64;
/// Bytes of searchable text in one record.
pub const MAX_TEXT_LEN: usize = 256 * 1024;
/// Attachments in one record.
pub const MAX_ATTACHMENTS: usize = 32;
/// Bytes in an attachment's file name.
pub const MAX_ATTACHMENT_NAME_LEN: usize = 255;
/// Bytes in an attachment's MIME type.
pub const MAX_MIME_LEN: usize = 127;
/// Bytes of one attachment.
pub const MAX_ATTACHMENT_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of the original content of one record.
pub const MAX_ORIGINAL_LEN: usize = 96 * 1024 * 1024;
/// Bytes of content (text + attachments + original) in one record.
pub const MAX_RECORD_CONTENT_BYTES: usize = 128 * 1024 * 1024;
/// Records in one `ingest_batch` call (one transaction).
pub const MAX_BATCH: usize = 10_000;
/// Results one search returns.
pub const MAX_SEARCH_RESULTS: u32 = 1_000;
/// Bytes of search text.
pub const MAX_QUERY_TEXT_LEN: usize = 1_024;
/// Terms in a search text.
pub const MAX_QUERY_TERMS: usize = 32;
/// Records in one export.
pub const MAX_EXPORT_RECORDS: u64 = 100_000;
/// Bytes in an actor name (who searched, exported, placed a hold).
pub const MAX_ACTOR_LEN: usize = 256;
/// Bytes in a legal hold's name.
pub const MAX_HOLD_NAME_LEN: usize = 128;
/// Bytes in a reason (hold, release, tombstone) or an anchor's log name or reference.
pub const MAX_REASON_LEN: usize = 4_096;
/// Legal holds active at once.
pub const MAX_ACTIVE_HOLDS: usize = 1_000;
/// Records one `sweep` deletes; the report says whether more remain.
pub const MAX_SWEEP_RECORDS: usize = 10_000;
/// Bytes of `manifest.json` that `verify_export` reads.
pub const MAX_MANIFEST_BYTES: u64 = 512 * 1024 * 1024;
/// Files listed in one export manifest.
pub const MAX_EXPORT_FILES: usize = 4 * 1024 * 1024;
/// Records one `Archive::records` call lists.
pub const MAX_LIST_RECORDS: u32 = 10_000;
