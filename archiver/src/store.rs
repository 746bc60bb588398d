//! The encrypted store: opening, the schema, appending to the chain, ingest, reads, and
//! `verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{ArchiveError, Problem, VerifyError};
use crate::key::ArchiveKey;
use crate::limits::*;
use crate::record::*;
use crate::retention::RetentionPolicy;

/// The schema version this build writes (`PRAGMA user_version`). Version 1 kept a
/// contentless search index, which `verify` could not check against the contents; it is
/// rebuilt as an external-content index when a version-1 store is opened.
pub const SCHEMA_VERSION: i64 = 2;

/// The page cache of one connection, in KiB (SQLite's default is 2 MiB; the indexes of
/// a million-message archive want more to keep ingest fast).
pub const CACHE_SIZE_KIB: u32 = 64 * 1024;

/// Largest page cache accepted in [`ArchiveOptions::cache_size_kib`] (4 GiB).
pub const MAX_CACHE_SIZE_KIB: u32 = 4 * 1024 * 1024;

/// WAL size (in 4 KiB pages, so 64 MiB) that triggers a checkpoint. SQLite's default
/// is 1,000, which a batch of 1,000 messages alone exceeds, so every batch paid for a
/// checkpoint; at 16,384 pages rewrites of the same index pages coalesce and ingest
/// of 400,000 messages measured 11,000 msgs/s instead of 8,300 (`examples/scale.rs`).
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, seq);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    source_id BLOB NOT NULL UNIQUE,
    class TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    client TEXT NOT NULL,
    firm TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_client ON messages(client, seq);
CREATE INDEX IF NOT EXISTS messages_firm ON messages(firm, seq);
CREATE INDEX IF NOT EXISTS messages_sent ON messages(sent_ms);
CREATE INDEX IF NOT EXISTS messages_class_recorded ON messages(class, recorded_ms);
CREATE TABLE IF NOT EXISTS content (
    seq INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    original BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (seq, idx)
);
";

/// The search index: over `content.text`, by record number, so that FTS5's
/// `integrity-check` compares it with the contents themselves (which the chain verifies).
const FTS_SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS message_fts USING fts5(
    text, content='content', content_rowid='seq', tokenize='unicode61 remove_diacritics 2'
);
";

/// The archive's source of time (Unix milliseconds). Tests and the integrator may pass
/// their own; the default is the system clock.
pub trait Clock: Send {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Options for [`Archive::open_with`].
pub struct ArchiveOptions {
    /// Retention per class, used by [`Archive::sweep`].
    pub retention: RetentionPolicy,
    /// Source of `recorded_ms`.
    pub clock: Box<dyn Clock>,
    /// Mail domain for the addresses and Message-IDs in exports.
    pub mail_domain: String,
    /// Page cache of the connection in KiB (default [`CACHE_SIZE_KIB`], at most
    /// [`MAX_CACHE_SIZE_KIB`]).
    pub cache_size_kib: u32,
    /// WAL pages after which a commit checkpoints (default [`WAL_AUTOCHECKPOINT_PAGES`]).
    pub wal_autocheckpoint_pages: u32,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            retention: RetentionPolicy::default(),
            clock: Box::new(SystemClock),
            mail_domain: "archive.sealpost.invalid".to_string(),
            cache_size_kib: CACHE_SIZE_KIB,
            wal_autocheckpoint_pages: WAL_AUTOCHECKPOINT_PAGES,
        }
    }
}

/// The chain head, for anchoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the last record (0 for an empty archive).
    pub seq: u64,
    /// Its hash ([`GENESIS_PREV_HASH`] for an empty archive).
    #[serde(with = "crate::record::hex32")]
    pub hash: Hash,
}

/// The outcome of ingesting one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash.
    pub hash: Hash,
    /// True when the source id was already archived (nothing was written).
    pub duplicate: bool,
}

/// The outcome of a successful [`Archive::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Records checked.
    pub records: u64,
    /// Message records whose content is present (digest recomputed).
    pub contents_checked: u64,
    /// Tombstones checked.
    pub tombstones: u64,
    /// The head.
    pub head: Head,
}

/// The compliance archive: an encrypted, append-only, hash-chained store.
///
/// One `Archive` is one SQLCipher connection; it is `Send` but not `Sync`. Several
/// processes may open the same file (WAL; writers wait up to [`BUSY_TIMEOUT`]).
pub struct Archive {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) options: ArchiveOptions,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("path", &self.path).finish()
    }
}

fn too_large(what: &'static str, got: usize, max: usize) -> ArchiveError {
    ArchiveError::TooLarge {
        what,
        got: got as u64,
        max: max as u64,
    }
}

pub(crate) fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), ArchiveError> {
    if s.len() > max {
        return Err(too_large(what, s.len(), max));
    }
    Ok(())
}

pub(crate) fn check_actor(actor: &str) -> Result<(), ArchiveError> {
    if actor.trim().is_empty() {
        return Err(ArchiveError::Invalid {
            what: "actor",
            reason: "empty".into(),
        });
    }
    check_len("actor length", actor, MAX_ACTOR_LEN)
}

fn validate(rec: &NewRecord) -> Result<(), ArchiveError> {
    if rec.source_id.is_empty() {
        return Err(ArchiveError::Invalid {
            what: "source_id",
            reason: "empty".into(),
        });
    }
    if rec.source_id.len() > MAX_SOURCE_ID_LEN {
        return Err(too_large(
            "source id length",
            rec.source_id.len(),
            MAX_SOURCE_ID_LEN,
        ));
    }
    check_len(
        "client account length",
        &rec.client_account,
        MAX_ACCOUNT_LEN,
    )?;
    check_len("firm account length", &rec.firm_account, MAX_ACCOUNT_LEN)?;
    check_len(
        "sender account length",
        &rec.sender_account,
        MAX_ACCOUNT_LEN,
    )?;
    check_len("sender device length", &rec.sender_device, MAX_DEVICE_LEN)?;
    check_len("kind length", &rec.kind, MAX_KIND_LEN)?;
    check_len("text length", &rec.text, MAX_TEXT_LEN)?;
    if rec.attachments.len() > MAX_ATTACHMENTS {
        return Err(too_large(
            "attachments",
            rec.attachments.len(),
            MAX_ATTACHMENTS,
        ));
    }
    if rec.original.len() > MAX_ORIGINAL_LEN {
        return Err(too_large(
            "original length",
            rec.original.len(),
            MAX_ORIGINAL_LEN,
        ));
    }
    let mut total = rec.text.len() + rec.original.len();
    for a in &rec.attachments {
        check_len("attachment name length", &a.name, MAX_ATTACHMENT_NAME_LEN)?;
        check_len("attachment MIME type length", &a.mime, MAX_MIME_LEN)?;
        if a.bytes.len() > MAX_ATTACHMENT_BYTES {
            return Err(too_large(
                "attachment size",
                a.bytes.len(),
                MAX_ATTACHMENT_BYTES,
            ));
        }
        total += a.bytes.len();
    }
    if total > MAX_RECORD_CONTENT_BYTES {
        return Err(too_large(
            "record content size",
            total,
            MAX_RECORD_CONTENT_BYTES,
        ));
    }
    Ok(())
}

fn meta_of(rec: &NewRecord) -> MessageMeta {
    MessageMeta {
        source_id: rec.source_id.clone(),
        class: rec.class,
        sent_ms: rec.sent_ms,
        client_account: rec.client_account.clone(),
        firm_account: rec.firm_account.clone(),
        sender_account: rec.sender_account.clone(),
        sender_device: rec.sender_device.clone(),
        direction: rec.direction,
        kind: rec.kind.clone(),
        attachments: rec
            .attachments
            .iter()
            .map(|a| AttachmentMeta {
                name: a.name.clone(),
                mime: a.mime.clone(),
                size: a.bytes.len() as u64,
            })
            .collect(),
        text_len: rec.text.len() as u64,
        original_len: rec.original.len() as u64,
        content_digest: content_digest(
            &rec.text,
            rec.attachments
                .iter()
                .map(|a| (a.name.as_str(), a.mime.as_str(), a.bytes.as_slice())),
            &rec.original,
        ),
    }
}

pub(crate) fn to_i64(v: u64, what: &'static str) -> Result<i64, ArchiveError> {
    i64::try_from(v).map_err(|_| ArchiveError::Invalid {
        what,
        reason: format!("{v} exceeds the database's integer range"),
    })
}

fn hash_from(v: Vec<u8>) -> Option<Hash> {
    Hash::try_from(v.as_slice()).ok()
}

impl Archive {
    /// Opens (or creates) the archive at `path` with the default options.
    pub fn open(path: &Path, key: &ArchiveKey) -> Result<Archive, ArchiveError> {
        Archive::open_with(path, key, ArchiveOptions::default())
    }

    /// Opens (or creates) the archive at `path`.
    ///
    /// The key is set with `PRAGMA key` as the very first statement; a wrong key (or a
    /// file that is not an archive) gives [`ArchiveError::WrongKey`]. The database runs
    /// in WAL mode with `synchronous=FULL` (a commit is durable when it returns),
    /// `secure_delete=ON` (deleted content is overwritten, not just unlinked) and
    /// `temp_store=MEMORY` (sorts and temporary indexes never spill to disk).
    pub fn open_with(
        path: &Path,
        key: &ArchiveKey,
        options: ArchiveOptions,
    ) -> Result<Archive, ArchiveError> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(&key.pragma())?;
        let wrong_key = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => ArchiveError::WrongKey {
                path: path.to_path_buf(),
            },
            _ => ArchiveError::Db(e),
        };
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(wrong_key)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ArchiveError::Invalid {
                what: "journal mode",
                reason: format!("database refused WAL (got {mode})"),
            });
        }
        if options.cache_size_kib > MAX_CACHE_SIZE_KIB {
            return Err(too_large(
                "cache size (KiB)",
                options.cache_size_kib as usize,
                MAX_CACHE_SIZE_KIB as usize,
            ));
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous=FULL; PRAGMA secure_delete=ON; PRAGMA foreign_keys=ON; \
             PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{}; PRAGMA wal_autocheckpoint={};",
            options.cache_size_kib, options.wal_autocheckpoint_pages
        ))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(ArchiveError::Schema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
        if version == 1 {
            // Under the write lock, and only if no other process migrated it meanwhile.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now == 1 {
                tx.execute_batch("DROP TABLE IF EXISTS message_fts;")?;
                tx.execute_batch(FTS_SCHEMA)?;
                tx.execute_batch("INSERT INTO message_fts (message_fts) VALUES ('rebuild');")?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            }
            tx.commit()?;
        } else {
            conn.execute_batch(FTS_SCHEMA)?;
            if version < SCHEMA_VERSION {
                conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            }
        }
        Ok(Archive {
            conn,
            path: path.to_path_buf(),
            options,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The retention policy in force.
    pub fn retention(&self) -> &RetentionPolicy {
        &self.options.retention
    }

    /// Replaces the retention policy (e.g. after a configuration reload).
    pub fn set_retention(&mut self, policy: RetentionPolicy) {
        self.options.retention = policy;
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.options.clock.now_ms()
    }

    /// The chain head: the last record's sequence number and hash (0 and
    /// [`GENESIS_PREV_HASH`] when empty). Anchor this (see [`Archive::anchor`]).
    pub fn head(&self) -> Result<Head, ArchiveError> {
        head_in(&self.conn)
    }

    /// Archives one item; see [`Archive::ingest_batch`].
    pub fn ingest(&mut self, record: &NewRecord) -> Result<Ingested, ArchiveError> {
        let mut out = self.ingest_batch(std::slice::from_ref(record))?;
        out.pop().ok_or(ArchiveError::Invalid {
            what: "batch",
            reason: "no result".into(),
        })
    }

    /// Archives up to [`MAX_BATCH`] items in one transaction, durable when this returns.
    ///
    /// Exactly once: an item whose `source_id` is already archived (or appears earlier in
    /// the same batch) is not written again; its result carries the existing `seq` and
    /// `duplicate: true`. Every item is checked against the bounds in [`crate::limits`]
    /// before anything is written; one bad item fails the whole batch.
    pub fn ingest_batch(&mut self, records: &[NewRecord]) -> Result<Vec<Ingested>, ArchiveError> {
        if records.len() > MAX_BATCH {
            return Err(too_large("batch size", records.len(), MAX_BATCH));
        }
        for r in records {
            validate(r)?;
        }
        let now = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut head = head_in(&tx)?;
        let mut out = Vec::with_capacity(records.len());
        {
            let mut find = tx.prepare_cached(
                "SELECT m.seq, r.hash FROM messages m JOIN records r ON r.seq = m.seq \
                 WHERE m.source_id = ?1",
            )?;
            let mut ins_msg = tx.prepare_cached(
                "INSERT INTO messages (seq, source_id, class, sent_ms, recorded_ms, client, firm) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut ins_content =
                tx.prepare_cached("INSERT INTO content (seq, text, original) VALUES (?1, ?2, ?3)")?;
            let mut ins_att =
                tx.prepare_cached("INSERT INTO attachments (seq, idx, bytes) VALUES (?1, ?2, ?3)")?;
            let mut ins_fts =
                tx.prepare_cached("INSERT INTO message_fts (rowid, text) VALUES (?1, ?2)")?;
            for rec in records {
                let existing = find
                    .query_row(params![rec.source_id], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .optional()?;
                if let Some((seq, hash)) = existing {
                    let seq = u64::try_from(seq).unwrap_or(0);
                    let hash = hash_from(hash).ok_or(ArchiveError::Corrupt {
                        seq,
                        reason: "hash is not 32 bytes".into(),
                    })?;
                    out.push(Ingested {
                        seq,
                        hash,
                        duplicate: true,
                    });
                    continue;
                }
                let meta = meta_of(rec);
                let body = RecordBody::Message(meta);
                let (seq, hash) = append_in(&tx, &mut head, now, &body)?;
                let seq_i = to_i64(seq, "seq")?;
                ins_msg.execute(params![
                    seq_i,
                    rec.source_id,
                    rec.class.as_str(),
                    to_i64(rec.sent_ms, "sent_ms")?,
                    to_i64(now, "recorded_ms")?,
                    rec.client_account,
                    rec.firm_account
                ])?;
                ins_content.execute(params![seq_i, rec.text, rec.original])?;
                for (i, a) in rec.attachments.iter().enumerate() {
                    ins_att.execute(params![seq_i, i as i64, a.bytes])?;
                }
                // Every content row is indexed (an empty text has no terms), so that
                // the index and the contents agree row for row.
                ins_fts.execute(params![seq_i, rec.text])?;
                out.push(Ingested {
                    seq,
                    hash,
                    duplicate: false,
                });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Records that the current head was anchored in `log` under `reference` (e.g. a
    /// transparency-log leaf index). Returns the anchor record's sequence number.
    pub fn anchor(&mut self, actor: &str, log: &str, reference: &str) -> Result<u64, ArchiveError> {
        check_actor(actor)?;
        check_len("log name length", log, MAX_REASON_LEN)?;
        check_len("reference length", reference, MAX_REASON_LEN)?;
        let now = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut head = head_in(&tx)?;
        let body = RecordBody::Anchor {
            actor: actor.to_string(),
            head_seq: head.seq,
            head_hash: head.hash,
            log: log.to_string(),
            reference: reference.to_string(),
        };
        let (seq, _) = append_in(&tx, &mut head, now, &body)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Appends one audit-type record in its own transaction.
    pub(crate) fn append(&mut self, body: &RecordBody) -> Result<(u64, Hash), ArchiveError> {
        let now = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut head = head_in(&tx)?;
        let out = append_in(&tx, &mut head, now, body)?;
        tx.commit()?;
        Ok(out)
    }

    /// One record of the chain, or `None` past the head.
    pub fn record(&self, seq: u64) -> Result<Option<StoredRecord>, ArchiveError> {
        read_record(&self.conn, seq)
    }

    /// The content of a message record, or `None` when it is not a message or its
    /// content was deleted at the end of retention.
    pub fn content(&self, seq: u64) -> Result<Option<Content>, ArchiveError> {
        read_content(&self.conn, seq)
    }

    /// The sequence number of the record archived under `source_id`, if any.
    pub fn seq_of_source(&self, source_id: &[u8]) -> Result<Option<u64>, ArchiveError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM messages WHERE source_id = ?1",
                params![source_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()))
    }

    /// Checks the whole store and names the first broken record.
    ///
    /// For every record in order: its sequence number follows the previous one (else
    /// [`Problem::Missing`]), its hash matches its fields ([`Problem::Edited`], or
    /// [`Problem::Reordered`] when it links to another record), its `prev_hash` is the
    /// previous hash ([`Problem::LinkBroken`]), its search-index row matches the chained
    /// metadata ([`Problem::IndexMismatch`]); for messages with content, the content
    /// digest is recomputed ([`Problem::ContentChanged`]); every tombstone names an
    /// earlier message with the same digest and class whose content is gone
    /// ([`Problem::BadTombstone`], [`Problem::ContentNotDeleted`]); and no message lost
    /// its content without a tombstone ([`Problem::ContentMissing`]); and no content,
    /// index or attachment row belongs to no record ([`Problem::IndexMismatch`]).
    ///
    /// Then the search index is compared with the contents (FTS5 `integrity-check`):
    /// an index that would let a search miss a record, or find one for words it does
    /// not hold, is [`VerifyError::SearchIndex`] ([`Archive::reindex`] rebuilds it).
    pub fn verify(&self) -> Result<VerifySummary, VerifyError> {
        // One read transaction: a consistent snapshot while another process appends.
        let tx = self.conn.unchecked_transaction()?;
        let out = verify_conn(&tx);
        tx.finish()?;
        let summary = out?;
        check_search_index(&self.conn)?;
        Ok(summary)
    }

    /// Rebuilds the search index from the contents, after checking the chain and every
    /// content against it (an index is never rebuilt from contents that do not verify).
    pub fn reindex(&mut self) -> Result<VerifySummary, VerifyError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let summary = verify_conn(&tx)?;
        tx.execute_batch("INSERT INTO message_fts (message_fts) VALUES ('rebuild');")?;
        tx.commit()?;
        check_search_index(&self.conn)?;
        Ok(summary)
    }

    /// Up to `limit` (at most [`MAX_LIST_RECORDS`]) records from `from` on, in order:
    /// for listing the chain (e.g. the audit records) without reading it all.
    pub fn records(&self, from: u64, limit: u32) -> Result<Vec<StoredRecord>, ArchiveError> {
        if limit > MAX_LIST_RECORDS {
            return Err(ArchiveError::TooLarge {
                what: "records listed",
                got: u64::from(limit),
                max: u64::from(MAX_LIST_RECORDS),
            });
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, recorded_ms, body, prev_hash, hash FROM records \
             WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![to_i64(from, "from")?, i64::from(limit)], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for raw in rows {
            out.push(
                decode_raw(raw?).map_err(|(seq, reason)| ArchiveError::Corrupt { seq, reason })?,
            );
        }
        Ok(out)
    }
}

/// FTS5's `integrity-check` with rank 1: the index against the external content table.
/// It is a write statement (it takes the write lock for its duration, as a commit does).
fn check_search_index(conn: &Connection) -> Result<(), VerifyError> {
    match conn.execute(
        "INSERT INTO message_fts (message_fts, rank) VALUES ('integrity-check', 1)",
        [],
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            Err(VerifyError::SearchIndex)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn head_in(conn: &Connection) -> Result<Head, ArchiveError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => Ok(Head {
            seq: 0,
            hash: GENESIS_PREV_HASH,
        }),
        Some((seq, hash)) => {
            let seq = u64::try_from(seq).map_err(|_| ArchiveError::Corrupt {
                seq: 0,
                reason: "negative seq".into(),
            })?;
            let hash = hash_from(hash).ok_or(ArchiveError::Corrupt {
                seq,
                reason: "hash is not 32 bytes".into(),
            })?;
            Ok(Head { seq, hash })
        }
    }
}

/// Appends `body` after `head` and advances `head`.
pub(crate) fn append_in(
    tx: &Transaction<'_>,
    head: &mut Head,
    now_ms: u64,
    body: &RecordBody,
) -> Result<(u64, Hash), ArchiveError> {
    let seq = head.seq.checked_add(1).ok_or(ArchiveError::Invalid {
        what: "seq",
        reason: "sequence exhausted".into(),
    })?;
    let hash = record_hash(seq, &head.hash, now_ms, body);
    let json = serde_json::to_string(body).map_err(|e| ArchiveError::Invalid {
        what: "record",
        reason: e.to_string(),
    })?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO records (seq, kind, recorded_ms, body, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    ins.execute(params![
        to_i64(seq, "seq")?,
        body.kind(),
        to_i64(now_ms, "recorded_ms")?,
        json,
        &head.hash[..],
        &hash[..]
    ])?;
    *head = Head { seq, hash };
    Ok((seq, hash))
}

type RawRecord = (i64, String, i64, String, Vec<u8>, Vec<u8>);

fn decode_raw(raw: RawRecord) -> Result<StoredRecord, (u64, String)> {
    let (seq, kind, recorded_ms, body, prev_hash, hash) = raw;
    let seq_u = u64::try_from(seq).map_err(|_| (0, format!("negative seq {seq}")))?;
    let bad = |reason: String| (seq_u, reason);
    let recorded_ms = u64::try_from(recorded_ms).map_err(|_| bad("negative recorded_ms".into()))?;
    let body: RecordBody =
        serde_json::from_str(&body).map_err(|e| bad(format!("metadata: {e}")))?;
    if body.kind() != kind {
        return Err(bad(format!(
            "kind column {kind:?} differs from metadata {:?}",
            body.kind()
        )));
    }
    let prev_hash = hash_from(prev_hash).ok_or_else(|| bad("prev_hash is not 32 bytes".into()))?;
    let hash = hash_from(hash).ok_or_else(|| bad("hash is not 32 bytes".into()))?;
    Ok(StoredRecord {
        seq: seq_u,
        recorded_ms,
        prev_hash,
        hash,
        body,
    })
}

pub(crate) fn read_record(
    conn: &Connection,
    seq: u64,
) -> Result<Option<StoredRecord>, ArchiveError> {
    let Ok(seq_i) = i64::try_from(seq) else {
        return Ok(None);
    };
    let raw: Option<RawRecord> = conn
        .prepare_cached(
            "SELECT seq, kind, recorded_ms, body, prev_hash, hash FROM records WHERE seq = ?1",
        )?
        .query_row(params![seq_i], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    match raw {
        None => Ok(None),
        Some(raw) => decode_raw(raw)
            .map(Some)
            .map_err(|(seq, reason)| ArchiveError::Corrupt { seq, reason }),
    }
}

pub(crate) fn read_content(conn: &Connection, seq: u64) -> Result<Option<Content>, ArchiveError> {
    let Some(record) = read_record(conn, seq)? else {
        return Ok(None);
    };
    let RecordBody::Message(meta) = record.body else {
        return Ok(None);
    };
    let seq_i = to_i64(seq, "seq")?;
    let row: Option<(String, Vec<u8>)> = conn
        .prepare_cached("SELECT text, original FROM content WHERE seq = ?1")?
        .query_row(params![seq_i], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((text, original)) = row else {
        return Ok(None);
    };
    let blobs = read_attachment_blobs(conn, seq_i)?;
    if blobs.len() != meta.attachments.len() {
        return Err(ArchiveError::Corrupt {
            seq,
            reason: format!(
                "{} attachments stored, {} in the chain",
                blobs.len(),
                meta.attachments.len()
            ),
        });
    }
    let attachments = meta
        .attachments
        .iter()
        .zip(blobs)
        .map(|(m, bytes)| Attachment {
            name: m.name.clone(),
            mime: m.mime.clone(),
            bytes,
        })
        .collect();
    Ok(Some(Content {
        text,
        attachments,
        original,
    }))
}

fn read_attachment_blobs(conn: &Connection, seq: i64) -> Result<Vec<Vec<u8>>, rusqlite::Error> {
    let mut stmt =
        conn.prepare_cached("SELECT bytes FROM attachments WHERE seq = ?1 ORDER BY idx LIMIT ?2")?;
    let rows = stmt.query_map(params![seq, (MAX_ATTACHMENTS + 1) as i64], |r| r.get(0))?;
    rows.collect()
}

fn broken(seq: u64, problem: Problem) -> VerifyError {
    VerifyError::Broken { seq, problem }
}

#[derive(Default)]
struct IndexRow {
    present: bool,
    source_id: Vec<u8>,
    class: String,
    sent_ms: i64,
    recorded_ms: i64,
    client: String,
    firm: String,
}

fn index_mismatch(meta: &MessageMeta, rec: &StoredRecord, row: &IndexRow) -> Option<&'static str> {
    if !row.present {
        return Some("missing");
    }
    if row.source_id != meta.source_id {
        return Some("source_id");
    }
    if row.class != meta.class.as_str() {
        return Some("class");
    }
    if u64::try_from(row.sent_ms).ok() != Some(meta.sent_ms) {
        return Some("sent_ms");
    }
    if u64::try_from(row.recorded_ms).ok() != Some(rec.recorded_ms) {
        return Some("recorded_ms");
    }
    if row.client != meta.client_account {
        return Some("client");
    }
    if row.firm != meta.firm_account {
        return Some("firm");
    }
    None
}

pub(crate) fn verify_conn(conn: &Connection) -> Result<VerifySummary, VerifyError> {
    let mut stmt = conn.prepare(
        "SELECT r.seq, r.kind, r.recorded_ms, r.body, r.prev_hash, r.hash, \
                m.seq, m.source_id, m.class, m.sent_ms, m.recorded_ms, m.client, m.firm, \
                c.seq, c.text, c.original \
         FROM records r LEFT JOIN messages m ON m.seq = r.seq LEFT JOIN content c ON c.seq = r.seq \
         ORDER BY r.seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = Head {
        seq: 0,
        hash: GENESIS_PREV_HASH,
    };
    // Messages without content, and the tombstones seen so far (target -> tombstone).
    let mut absent: BTreeSet<u64> = BTreeSet::new();
    let mut tombstoned: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut content_errors: Vec<(u64, Problem)> = Vec::new();
    let mut chain_error: Option<VerifyError> = None;
    let mut contents_checked = 0u64;
    let mut tombstones = 0u64;
    while let Some(row) = rows.next()? {
        let raw: RawRecord = (
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
        );
        let expected = prev.seq + 1;
        let rec = match decode_raw(raw) {
            Ok(r) => r,
            Err((seq, reason)) => {
                chain_error = Some(broken(seq.max(expected), Problem::Undecodable(reason)));
                break;
            }
        };
        if rec.seq < expected {
            chain_error = Some(broken(
                expected,
                Problem::Undecodable(format!("sequence number {} out of order", rec.seq)),
            ));
            break;
        }
        if rec.seq != expected {
            chain_error = Some(broken(
                expected,
                Problem::Missing {
                    expected,
                    found: rec.seq,
                },
            ));
            break;
        }
        if rec.computed_hash() != rec.hash || rec.prev_hash != prev.hash {
            // Classify: a row whose prev_hash names another record was moved.
            let links_to: Option<i64> = conn
                .query_row(
                    "SELECT seq FROM records WHERE hash = ?1 LIMIT 1",
                    params![&rec.prev_hash[..]],
                    |r| r.get(0),
                )
                .optional()?;
            let links_to = links_to.and_then(|s| u64::try_from(s).ok());
            let problem = match links_to {
                Some(k) if k + 1 != rec.seq => Problem::Reordered { links_to: k },
                _ if rec.computed_hash() != rec.hash => Problem::Edited,
                _ => Problem::LinkBroken,
            };
            chain_error = Some(broken(rec.seq, problem));
            break;
        }
        let index = IndexRow {
            present: row.get::<_, Option<i64>>(6)?.is_some(),
            source_id: row.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default(),
            class: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
            sent_ms: row.get::<_, Option<i64>>(9)?.unwrap_or_default(),
            recorded_ms: row.get::<_, Option<i64>>(10)?.unwrap_or_default(),
            client: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
            firm: row.get::<_, Option<String>>(12)?.unwrap_or_default(),
        };
        let content_present = row.get::<_, Option<i64>>(13)?.is_some();
        match &rec.body {
            RecordBody::Message(meta) => {
                if let Some(field) = index_mismatch(meta, &rec, &index) {
                    chain_error = Some(broken(rec.seq, Problem::IndexMismatch(field)));
                    break;
                }
                if content_present {
                    let text: String = row.get(14)?;
                    let original: Vec<u8> = row.get(15)?;
                    let seq_i = i64::try_from(rec.seq).unwrap_or(i64::MAX);
                    let blobs = read_attachment_blobs(conn, seq_i)?;
                    let ok = blobs.len() == meta.attachments.len()
                        && content_digest(
                            &text,
                            meta.attachments
                                .iter()
                                .zip(&blobs)
                                .map(|(m, b)| (m.name.as_str(), m.mime.as_str(), b.as_slice())),
                            &original,
                        ) == meta.content_digest;
                    if !ok {
                        content_errors.push((rec.seq, Problem::ContentChanged));
                    }
                    contents_checked += 1;
                } else {
                    absent.insert(rec.seq);
                }
            }
            other => {
                if index.present {
                    chain_error = Some(broken(rec.seq, Problem::IndexMismatch("not a message")));
                    break;
                }
                if content_present {
                    chain_error = Some(broken(
                        rec.seq,
                        Problem::IndexMismatch("content on a non-message record"),
                    ));
                    break;
                }
                if let RecordBody::Tombstone {
                    target,
                    class,
                    content_digest: digest,
                    ..
                } = other
                {
                    tombstones += 1;
                    let problem = if *target >= rec.seq {
                        Some(format!("names record {target}, not an earlier one"))
                    } else if tombstoned.contains_key(target) {
                        Some(format!("record {target} was already tombstoned"))
                    } else {
                        match read_record(conn, *target) {
                            Ok(Some(StoredRecord {
                                body: RecordBody::Message(m),
                                ..
                            })) => {
                                if m.content_digest != *digest {
                                    Some(format!("digest differs from record {target}'s"))
                                } else if m.class != *class {
                                    Some(format!("class differs from record {target}'s"))
                                } else {
                                    None
                                }
                            }
                            Ok(Some(_)) => Some(format!("record {target} is not a message")),
                            Ok(None) => Some(format!("record {target} does not exist")),
                            Err(e) => Some(format!("record {target} unreadable: {e}")),
                        }
                    };
                    if let Some(p) = problem {
                        chain_error = Some(broken(rec.seq, Problem::BadTombstone(p)));
                        break;
                    }
                    tombstoned.insert(*target, rec.seq);
                    if !absent.remove(target) {
                        content_errors.retain(|(s, _)| s != target);
                        content_errors
                            .push((*target, Problem::ContentNotDeleted { tombstone: rec.seq }));
                    }
                }
            }
        }
        prev = Head {
            seq: rec.seq,
            hash: rec.hash,
        };
    }
    drop(rows);
    let mut first: Option<(u64, Problem)> = content_errors.into_iter().min_by_key(|(s, _)| *s);
    if let Some(VerifyError::Broken { seq, problem }) = chain_error {
        if first.as_ref().is_none_or(|(s, _)| *s > seq) {
            first = Some((seq, problem));
        }
    } else if let Some(e) = chain_error {
        return Err(e);
    } else if let Some(&seq) = absent.iter().next() {
        // Only meaningful once every tombstone has been seen.
        if first.as_ref().is_none_or(|(s, _)| *s > seq) {
            first = Some((seq, Problem::ContentMissing));
        }
    }
    if first.is_none() {
        // Rows that belong to no record (stray content could hide data; stray index
        // rows could mislead a search).
        for (sql, what) in [
            (
                "SELECT seq FROM content WHERE seq NOT IN (SELECT seq FROM messages) ORDER BY seq LIMIT 1",
                "content row without a message record",
            ),
            (
                "SELECT seq FROM messages WHERE seq NOT IN (SELECT seq FROM records) ORDER BY seq LIMIT 1",
                "index row without a record",
            ),
            (
                "SELECT seq FROM attachments WHERE seq NOT IN (SELECT seq FROM content) ORDER BY seq LIMIT 1",
                "attachment row without content",
            ),
        ] {
            let stray: Option<i64> = conn.query_row(sql, [], |r| r.get(0)).optional()?;
            if let Some(seq) = stray {
                first = Some((u64::try_from(seq).unwrap_or(0), Problem::IndexMismatch(what)));
                break;
            }
        }
    }
    if let Some((seq, problem)) = first {
        return Err(broken(seq, problem));
    }
    Ok(VerifySummary {
        records: prev.seq,
        contents_checked,
        tombstones,
        head: prev,
    })
}
