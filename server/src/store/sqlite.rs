//! SQLite store: the embedded durable default.
//!
//! # Durability and group commit
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a committed transaction
//! survives a crash or `SIGKILL` of the relay (and, as far as the disk honours `fsync`,
//! of the machine). Every write goes through one dedicated writer thread that owns the
//! only read-write connection. Callers send it an operation over a channel and wait for
//! the answer on a oneshot channel. The writer takes every operation already queued (up
//! to [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE` transaction with a `SAVEPOINT`
//! per operation (so one failing operation, for example a full mailbox, rolls back only
//! itself), commits once, and only then answers every caller. Under load, one `fsync`
//! is shared by many writes instead of one per message.
//!
//! Reads run on a small pool of read-only connections (WAL lets them run alongside the
//! writer) on Tokio's blocking threads. A read issued after a write was answered sees it.
//!
//! # Schema
//!
//! Plain column types so that a PostgreSQL implementation can follow the same layout:
//! TEXT ids (account ids as given, device and message ids as lower-case hex), BLOB keys
//! and bodies, INTEGER milliseconds since the Unix epoch. Per-device mailbox counters
//! (`next_seq`, `pending_count`, `pending_bytes`) live in `devices` and change in the
//! same transaction as the envelope rows. Envelope bodies are ciphertext; nothing in the
//! database is plaintext content. Acknowledged envelopes leave a small tombstone
//! (recipient, message id, seq, expiry) in `delivered` until their expiry, so a late
//! retry by the sender is still recognised as a duplicate.
//!
//! The schema version is `PRAGMA user_version`; [`MIGRATIONS`] are applied in order, in
//! one transaction, when the store is opened. A database written by a newer relay is
//! refused with a clear error.

mod mailbox;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, MessageId, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId, PublicIdentity};
use sealpost_protocol::prekeys::{KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey};
use sealpost_protocol::tlog::LogLeaf;
use sealpost_protocol::trust::{ClientAttestation, LogEntry, SignedRoster};
use sealpost_protocol::wire::Role;
use tokio::sync::{oneshot, Semaphore};

use mailbox::{Batch, Mailboxes, WriterCounters};
pub use mailbox::{MailboxStats, MAX_CACHED_MAILBOXES, MAX_EXPIRED_PER_PASS, MAX_STAGED_BYTES};

use super::tlog::{check_room, encode_leaf, TlogStore, MAX_LEAVES_PER_READ};
use super::{
    enrollment_leaves, genesis_device, AccountRecord, AccountStore, CodeRecord, DeviceRecord,
    Enqueued, LogEffects, MailboxStore, OnStaged, Pending, PreKeyCounts, PreKeyStore, PreKeyUpload,
    QueueStats, Quota, StoreError, TrustStore, CODE_ID_HEX, MAX_DEVICES_PER_ACCOUNT,
    MAX_LOG_ENTRY_BYTES, MAX_STORED_LOG_ENTRIES, MAX_STORED_ONE_TIME_PREKEYS,
    MAX_STORED_ROSTER_VERSIONS,
};

/// Most operations committed in one transaction. Under load the writer takes whatever
/// is queued, so this caps one commit cycle's work, not its latency at moderate rates;
/// it must be large enough that a saturated queue (connections x their in-flight
/// operations) drains in few cycles, because each cycle pays one `fsync`.
pub const MAX_BATCH: usize = 4096;
/// WAL frames after which the writer finishes a checkpoint between two transactions so
/// that the log restarts from its beginning (the WAL file stays near 32 MiB).
const WAL_RESTART_FRAMES: i64 = 8192;
/// How often the checkpoint thread copies the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// Read-only connections used at the same time.
pub const READ_CONNECTIONS: usize = 4;
/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations, in order; step `i` takes the schema from version `i` to `i + 1`.
/// Never edit a released step: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // Version 1.
    r#"
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('client', 'advisor', 'staff')),
    created_ms  INTEGER NOT NULL,
    frozen      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE enrollment_codes (
    code_hash   BLOB PRIMARY KEY,
    account     TEXT NOT NULL REFERENCES accounts (id),
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER
);
CREATE INDEX enrollment_codes_account ON enrollment_codes (account);

CREATE TABLE devices (
    id             TEXT PRIMARY KEY,
    account        TEXT NOT NULL REFERENCES accounts (id),
    ed25519        BLOB NOT NULL,
    x25519         BLOB NOT NULL,
    enrolled_ms    INTEGER NOT NULL,
    revoked        INTEGER NOT NULL DEFAULT 0,
    next_seq       INTEGER NOT NULL DEFAULT 1,
    pending_count  INTEGER NOT NULL DEFAULT 0,
    pending_bytes  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX devices_account ON devices (account, enrolled_ms);

CREATE TABLE assignments (
    client  TEXT NOT NULL REFERENCES accounts (id),
    staff   TEXT NOT NULL REFERENCES accounts (id),
    PRIMARY KEY (client, staff)
);
CREATE INDEX assignments_staff ON assignments (staff, client);

CREATE TABLE signed_prekeys (
    device     TEXT PRIMARY KEY REFERENCES devices (id),
    key_id     INTEGER NOT NULL,
    public     BLOB NOT NULL,
    signature  BLOB NOT NULL
);

CREATE TABLE one_time_prekeys (
    device     TEXT NOT NULL REFERENCES devices (id),
    key_id     INTEGER NOT NULL,
    public     BLOB NOT NULL,
    signature  BLOB NOT NULL,
    PRIMARY KEY (device, key_id)
);

CREATE TABLE kem_one_time_prekeys (
    device       TEXT NOT NULL REFERENCES devices (id),
    key_id       INTEGER NOT NULL,
    last_resort  INTEGER NOT NULL,
    public       BLOB NOT NULL,
    signature    BLOB NOT NULL,
    PRIMARY KEY (device, key_id)
);

CREATE TABLE kem_last_resort_prekeys (
    device       TEXT PRIMARY KEY REFERENCES devices (id),
    key_id       INTEGER NOT NULL,
    last_resort  INTEGER NOT NULL,
    public       BLOB NOT NULL,
    signature    BLOB NOT NULL
);

CREATE TABLE envelopes (
    recipient     TEXT NOT NULL REFERENCES devices (id),
    seq           INTEGER NOT NULL,
    message_id    TEXT NOT NULL,
    sender        TEXT NOT NULL,
    version       INTEGER NOT NULL,
    kind          INTEGER NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    body          BLOB NOT NULL,
    size          INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    PRIMARY KEY (recipient, seq),
    UNIQUE (recipient, message_id)
);
CREATE INDEX envelopes_expiry ON envelopes (expires_ms);

CREATE TABLE delivered (
    recipient   TEXT NOT NULL REFERENCES devices (id),
    message_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    PRIMARY KEY (recipient, message_id)
);
CREATE INDEX delivered_expiry ON delivered (expires_ms);
"#,
    // Version 2: trust (issue 5). Roster versions and account device logs, stored as the
    // CBOR the relay verified (signatures are checked again from the pinned organisation
    // fingerprint when the relay starts); `action` is for operators reading the table.
    r#"
CREATE TABLE roster_versions (
    version    INTEGER PRIMARY KEY,
    signed     BLOB NOT NULL,
    stored_ms  INTEGER NOT NULL
);

CREATE TABLE device_log (
    account    TEXT NOT NULL REFERENCES accounts (id),
    seq        INTEGER NOT NULL,
    action     TEXT NOT NULL,
    entry      BLOB NOT NULL,
    stored_ms  INTEGER NOT NULL,
    PRIMARY KEY (account, seq)
);
"#,
    // Version 3: mailboxes keyed so that writes append instead of scattering. Under load
    // most of a batch's pages were index leaves touched at random by message ids; now
    // an envelope is found by (sender's timestamp, recipient, message id), which a
    // repeat carries unchanged, and an acknowledgement deletes by (recipient, seq),
    // which the relay knows from the delivery. Tombstones are a table of their own,
    // clustered the same way. Tombstones of version 2 carry no timestamp (0): a repeat
    // of such a message is stored again and dropped by its recipient by message id.
    r#"
CREATE TABLE envelopes_v3 (
    recipient     TEXT NOT NULL REFERENCES devices (id),
    seq           INTEGER NOT NULL,
    message_id    TEXT NOT NULL,
    sender        TEXT NOT NULL,
    version       INTEGER NOT NULL,
    kind          INTEGER NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    body          BLOB NOT NULL,
    size          INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    PRIMARY KEY (recipient, seq)
);
INSERT INTO envelopes_v3
    SELECT recipient, seq, message_id, sender, version, kind, timestamp_ms, body, size,
           expires_ms
    FROM envelopes;
DROP TABLE envelopes;
ALTER TABLE envelopes_v3 RENAME TO envelopes;
CREATE INDEX envelopes_expiry ON envelopes (expires_ms);
CREATE INDEX envelopes_by_message ON envelopes (timestamp_ms, recipient, message_id);

CREATE TABLE delivered_v3 (
    timestamp_ms  INTEGER NOT NULL,
    recipient     TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    PRIMARY KEY (timestamp_ms, recipient, message_id)
) WITHOUT ROWID;
INSERT INTO delivered_v3 SELECT 0, recipient, message_id, seq, expires_ms FROM delivered;
DROP TABLE delivered;
ALTER TABLE delivered_v3 RENAME TO delivered;
CREATE INDEX delivered_expiry ON delivered (expires_ms);
"#,
    // Version 4: the firm's attestations of client accounts' first devices (issue 9),
    // stored as the CBOR the relay verified.
    r#"
CREATE TABLE attestations (
    account      TEXT PRIMARY KEY REFERENCES accounts (id),
    attestation  BLOB NOT NULL,
    stored_ms    INTEGER NOT NULL
);
"#,
    // Version 5: accounts the operator disabled (`sealpost-relay admin disable`).
    r#"
ALTER TABLE accounts ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
"#,
    // Version 6: the transparency log (issue 10). Leaves are append-only (the triggers
    // refuse changes; `sealpost-relay audit verify` detects them anyway); checkpoints are
    // the signed note texts, replaced when a witness cosignature is added.
    r#"
CREATE TABLE tlog_leaves (
    idx        INTEGER PRIMARY KEY,
    leaf       BLOB NOT NULL,
    stored_ms  INTEGER NOT NULL
);
CREATE TRIGGER tlog_leaves_no_update BEFORE UPDATE ON tlog_leaves
BEGIN SELECT RAISE(ABORT, 'the transparency log is append-only'); END;
CREATE TRIGGER tlog_leaves_no_delete BEFORE DELETE ON tlog_leaves
BEGIN SELECT RAISE(ABORT, 'the transparency log is append-only'); END;

CREATE TABLE tlog_checkpoints (
    size       INTEGER PRIMARY KEY,
    note       TEXT NOT NULL,
    stored_ms  INTEGER NOT NULL
);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Counters of the writer thread, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed (or attempted).
    pub commits: u64,
    /// Write operations run (each staged envelope or acknowledgement counts once).
    pub ops: u64,
    /// Envelopes staged.
    pub staged: u64,
    /// Envelopes acknowledged before their batch was written: only a tombstone was.
    pub cancelled: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    ops: AtomicU64,
}

/// The SQLite store. Dropping it stops the writer thread after the operations already
/// queued and closes the database.
pub struct SqliteStore {
    writer: Option<mpsc::Sender<Msg>>,
    mailboxes: Arc<Mailboxes>,
    /// The writer thread (which also stops and joins the checkpoint thread).
    thread: Option<JoinHandle<()>>,
    readers: Arc<Readers>,
    permits: Semaphore,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn closed() -> StoreError {
    StoreError::Backend("sqlite writer thread has stopped".to_owned())
}

impl SqliteStore {
    /// Open (creating the file and its parent directory if needed) and migrate the
    /// database at `path`, and start the writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!("creating {}: {e}", parent.display()))
                })?;
            }
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "could not switch {} to WAL mode (journal mode is {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        // No auto-checkpoint in the commit path: copying 8192 pages into the database and
        // fsyncing it there stalled every queued write. A checkpoint thread with its own
        // connection does that work alongside the writer (WAL allows a checkpoint to run
        // concurrently with writes); the writer only finishes it when the WAL is long, so
        // that the log restarts (`restart_wal_if_long`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        conn.pragma_update(None, "cache_size", -32768)
            .map_err(backend)?;
        migrate(&mut conn)?;

        let ckpt_conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        ckpt_conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // FULL: a checkpoint fsyncs the WAL before copying and the database after.
        ckpt_conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        ckpt_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        // Closed (dropped) to stop the checkpoint thread.
        let (ckpt_tx, ckpt_rx) = mpsc::sync_channel::<()>(1);
        let wal_frames = Arc::new(AtomicI64::new(0));
        let ckpt_frames = Arc::clone(&wal_frames);
        let checkpointer = std::thread::Builder::new()
            .name("sealpost-ckpt".to_owned())
            .spawn(move || checkpoint_loop(&ckpt_conn, &ckpt_rx, &ckpt_frames))
            .map_err(|e| StoreError::Backend(format!("starting the checkpoint thread: {e}")))?;

        let mailbox_reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        mailbox_reader.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        let mailboxes = Arc::new(Mailboxes::new(mailbox_reader));
        let thread_mailboxes = Arc::clone(&mailboxes);

        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("sealpost-sqlite-writer".to_owned())
            .spawn(move || {
                writer_loop(&conn, &rx, &thread_mailboxes, &thread_counters, &wal_frames);
                // Stop the checkpointer and close its connection first, so that the
                // writer's connection is the last one and checkpoints the WAL as it closes.
                drop(ckpt_tx);
                if checkpointer.join().is_err() {
                    tracing::error!("sqlite checkpoint thread panicked");
                }
                drop(conn);
            })
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        Ok(Self {
            writer: Some(tx),
            mailboxes,
            thread: Some(thread),
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            permits: Semaphore::new(READ_CONNECTIONS),
            counters,
        })
    }

    /// The schema version of an opened database (always [`SCHEMA_VERSION`]).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(|c| {
            let v: i64 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(backend)?;
            u32::try_from(v).map_err(backend)
        })
        .await
    }

    /// Writer counters: with many concurrent writers, `ops / commits` is the average
    /// group-commit batch size.
    pub fn write_stats(&self) -> WriteStats {
        let MailboxStats { staged, cancelled } = self.mailboxes.stats();
        WriteStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
            staged,
            cancelled,
        }
    }

    /// Tell the writer that the open mailbox batch has work.
    fn wake(&self) -> Result<(), StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(closed)?
            .send(Msg::Wake)
            .map_err(|_| closed())
    }

    /// Run `f` on the writer thread inside the next batch's transaction, in its own
    /// savepoint; answer after commit.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f).await
    }

    async fn submit<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Box<dyn WriteOp> = Box::new(Job {
            f: Some(f),
            result: None,
            tx,
        });
        self.writer
            .as_ref()
            .ok_or_else(closed)?
            .send(Msg::Op(job))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Run `f` on a read-only connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(backend)?;
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = readers.get()?;
            let result = f(&conn);
            readers.put(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite reader task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Close the readers first so that the writer's connection is the last one and
        // checkpoints the WAL when it closes.
        if let Ok(mut idle) = self.readers.idle.lock() {
            idle.clear();
        }
        self.mailboxes.close();
        self.writer = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("sqlite writer thread panicked");
            }
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    let current = usize::try_from(current)
        .map_err(|_| StoreError::Backend(format!("invalid database schema version {current}")))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {current} is newer than this relay supports \
             ({SCHEMA_VERSION}); upgrade the relay or restore a matching backup"
        )));
    }
    if current == MIGRATIONS.len() {
        return Ok(());
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(step)
            .map_err(|e| StoreError::Backend(format!("schema migration {}: {e}", i + 1)))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

// ---------------------------------------------------------------------------------------
// Writer thread

enum Msg {
    Op(Box<dyn WriteOp>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// The open mailbox batch has work.
    Wake,
    /// Remove expired envelopes and tombstones (needs the mailbox state).
    Expire(u64, oneshot::Sender<Result<u64, StoreError>>),
}

/// A queued write, type-erased.
trait WriteOp: Send {
    /// Run inside the batch transaction, in its own savepoint (so a failing operation
    /// rolls back only itself). Returns true if the whole batch must be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answer the caller once the batch is committed (`commit_error` if it was not).
    fn answer(self: Box<Self>, commit_error: Option<&str>);
}

struct Job<T, F> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteOp for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return false };
        self.result = Some(in_savepoint(conn, f));
        false
    }

    fn answer(self: Box<Self>, commit_error: Option<&str>) {
        let result = match (self.result, commit_error) {
            // An operation that failed changed nothing either way: its own error is exact.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Some(e)) => Err(StoreError::Backend(format!("commit failed: {e}"))),
            (Some(Ok(v)), None) => Ok(v),
            (None, Some(e)) => Err(StoreError::Backend(e.to_owned())),
            (None, None) => Err(StoreError::Backend("write was not run".to_owned())),
        };
        // The caller may have gone away; the write stands.
        let _ = self.tx.send(result);
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if conn.is_autocommit() {
        // SQLite rolled the batch transaction back (for example on an I/O error); running
        // the operation now would commit it on its own.
        return Err(StoreError::Backend(
            "batch transaction was aborted".to_owned(),
        ));
    }
    conn.execute_batch("SAVEPOINT op").map_err(backend)?;
    let result = f(conn);
    match result {
        Ok(v) => match conn.execute_batch("RELEASE op") {
            Ok(()) => Ok(v),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
                Err(backend(e))
            }
        },
        Err(e) => {
            if let Err(rb) = conn.execute_batch("ROLLBACK TO op; RELEASE op") {
                tracing::error!(error = %rb, "rolling back a failed store operation");
            }
            Err(e)
        }
    }
}

fn writer_loop(
    conn: &Connection,
    rx: &mpsc::Receiver<Msg>,
    mailboxes: &Mailboxes,
    counters: &Counters,
    wal_frames: &AtomicI64,
) {
    let mut ops: Vec<Box<dyn WriteOp>> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    let mut expires = Vec::new();
    let mut mailbox_counters = WriterCounters::default();
    loop {
        // Wait for a message, or until staged mailbox work is due.
        let first = match mailboxes.due() {
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            Some(at) => {
                let now = std::time::Instant::now();
                if at <= now {
                    rx.try_recv().ok()
                } else {
                    match rx.recv_timeout(at - now) {
                        Ok(m) => Some(m),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        };
        let mut next = first;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Op(op) => ops.push(op),
                Msg::Flush(tx) => flushes.push(tx),
                // Something staged became due sooner: the loop looks again.
                Msg::Wake => {}
                Msg::Expire(now, tx) => expires.push((now, tx)),
            }
            if ops.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let flushing = !flushes.is_empty();
        let mailbox_due = mailboxes
            .due()
            .is_some_and(|d| d <= std::time::Instant::now());
        if ops.is_empty() && expires.is_empty() && !flushing && !mailbox_due {
            continue;
        }
        // A flush (shutdown) writes everything staged, held or not.
        let batch = mailboxes.take(flushing);
        if batch.is_some() || !ops.is_empty() || !expires.is_empty() {
            let started = std::time::Instant::now();
            counters.commits.fetch_add(1, Ordering::Relaxed);
            let n = (ops.len() + batch.as_ref().map_or(0, Batch::len)) as u64;
            counters.ops.fetch_add(n, Ordering::Relaxed);
            let cancelled = batch.as_ref().map_or(0, Batch::cancelled);
            commit_batch(
                conn,
                mailboxes,
                &mut mailbox_counters,
                batch,
                &mut ops,
                &mut expires,
            );
            metrics::counter!(crate::metrics::STORE_COMMITS).increment(1);
            metrics::counter!(crate::metrics::STORE_WRITES).increment(n);
            metrics::counter!(crate::metrics::STORE_ACKED_BEFORE_WRITE).increment(cancelled);
            metrics::histogram!(crate::metrics::STORE_COMMIT_SECONDS)
                .record(started.elapsed().as_secs_f64());
            restart_wal_if_long(conn, wal_frames);
        }
        if flushing {
            let result = checkpoint(conn);
            for tx in flushes.drain(..) {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Backend(e.clone())),
                };
                let _ = tx.send(answer);
            }
        }
    }
    // Stopping: whatever is still staged is committed.
    if let Some(batch) = mailboxes.take(true) {
        commit_batch(
            conn,
            mailboxes,
            &mut mailbox_counters,
            Some(batch),
            &mut ops,
            &mut expires,
        );
    }
}

type ExpireRequest = (u64, oneshot::Sender<Result<u64, StoreError>>);

/// One transaction: the staged mailbox batch first, then the queued operations, then
/// expiry passes, then the mailbox counters all of them changed.
fn commit_batch(
    conn: &Connection,
    mailboxes: &Mailboxes,
    counters: &mut WriterCounters,
    batch: Option<Batch>,
    ops: &mut Vec<Box<dyn WriteOp>>,
    expires: &mut Vec<ExpireRequest>,
) {
    let fail_all = |batch: Option<Batch>,
                    ops: &mut Vec<Box<dyn WriteOp>>,
                    expires: &mut Vec<ExpireRequest>,
                    counters: &mut WriterCounters,
                    msg: &str| {
        counters.reset();
        for op in ops.drain(..) {
            op.answer(Some(msg));
        }
        for (_, tx) in expires.drain(..) {
            let _ = tx.send(Err(StoreError::Backend(msg.to_owned())));
        }
        mailboxes.finish(batch, Err(msg.to_owned()));
    };
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        fail_all(batch, ops, expires, counters, &format!("begin: {e}"));
        return;
    }
    let mut poisoned = false;
    let mut outcomes = Vec::new();
    if let Some(b) = &batch {
        match b.write(conn, counters) {
            Ok(o) => outcomes = o,
            Err(e) => {
                tracing::error!(error = %e, "writing staged envelopes failed");
                poisoned = true;
            }
        }
    }
    if !poisoned {
        for op in ops.iter_mut() {
            poisoned |= op.run(conn);
        }
    }
    let mut expire_results = Vec::new();
    if !poisoned {
        for (now, _) in expires.iter() {
            match op_expire(conn, *now, counters) {
                Ok(n) => expire_results.push(n),
                Err(e) => {
                    tracing::error!(error = %e, "expiry pass failed");
                    poisoned = true;
                    break;
                }
            }
        }
    }
    let written = if poisoned {
        Vec::new()
    } else {
        match counters.write(conn) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "writing mailbox counters failed");
                poisoned = true;
                Vec::new()
            }
        }
    };
    if poisoned {
        tracing::error!("a store operation failed part-way; rolling back its batch");
        let _ = conn.execute_batch("ROLLBACK");
        fail_all(
            batch,
            ops,
            expires,
            counters,
            "batch rolled back after a storage failure",
        );
        return;
    }
    let commit_error = match conn.execute_batch("COMMIT") {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(error = %e, "sqlite commit failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Some(e.to_string())
        }
    };
    match &commit_error {
        None => {
            counters.committed();
            mailboxes.finish(batch, Ok((outcomes, written)));
        }
        Some(e) => {
            counters.reset();
            mailboxes.finish(batch, Err(e.clone()));
        }
    }
    for op in ops.drain(..) {
        op.answer(commit_error.as_deref());
    }
    for ((_, tx), n) in expires.drain(..).zip(
        expire_results
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat(None)),
    ) {
        let answer = match (&commit_error, n) {
            (None, Some(n)) => Ok(n),
            (Some(e), _) => Err(StoreError::Backend(format!("commit failed: {e}"))),
            (None, None) => Err(StoreError::Backend("expiry pass was not run".to_owned())),
        };
        let _ = tx.send(answer);
    }
}

/// The checkpoint thread: every [`CHECKPOINT_INTERVAL`], copy what the WAL holds into
/// the database and fsync it (`PASSIVE`: never blocks the writer or readers, never
/// waits), and publish the WAL's length in frames for the writer. Not after every
/// commit: under a steady trickle that would fsync the database file once per commit
/// as well. Stops when the writer thread has stopped (its channel closes).
fn checkpoint_loop(conn: &Connection, wake: &mpsc::Receiver<()>, wal_frames: &AtomicI64) {
    loop {
        match wake.recv_timeout(CHECKPOINT_INTERVAL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(log) => wal_frames.store(log, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
        }
    }
}

/// On the writer, between transactions: once the WAL has grown past
/// [`WAL_RESTART_FRAMES`], finish the checkpoint the checkpoint thread has mostly done
/// (a `PASSIVE` one, as SQLite's own auto-checkpoint would run here), so that the next
/// transaction starts the WAL again from its beginning. SQLite restarts the log only
/// from the writer, and only when every frame is in the database; a checkpoint thread
/// alone could never catch up with a writer that is always busy.
fn restart_wal_if_long(conn: &Connection, wal_frames: &AtomicI64) {
    if wal_frames.load(Ordering::Relaxed) < WAL_RESTART_FRAMES {
        return;
    }
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    }) {
        // Fully copied: the next transaction restarts the log.
        Ok((log, done)) if done >= log => wal_frames.store(0, Ordering::Relaxed),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
    }
}

fn checkpoint(conn: &Connection) -> Result<(), String> {
    // The checkpoint thread may hold the checkpoint lock for a moment (the pragma then
    // reports busy instead of waiting): try again a few times.
    for _ in 0..50 {
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Everything committed is durable in the WAL either way; only its truncation waits.
    tracing::warn!("WAL checkpoint stayed busy; the WAL was not truncated");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Readers

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn get(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle.lock().map_err(backend)?.pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", self.path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < READ_CONNECTIONS {
                idle.push(conn);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Conversions

/// Milliseconds and counters as SQLite INTEGER (i64), saturating.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Backend(format!("negative {what} in database")))
}

fn key_id(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Backend(format!("prekey id {v} out of range")))
}

fn dev(id: &DeviceId) -> String {
    id.to_hex()
}

fn parse_device(s: &str) -> Result<DeviceId, StoreError> {
    DeviceId::from_hex(s)
        .map_err(|_| StoreError::Backend(format!("bad device id {s:?} in database")))
}

fn msg(id: &MessageId) -> String {
    id.to_hex()
}

fn parse_message_id(s: &str) -> Result<MessageId, StoreError> {
    MessageId::from_hex(s)
        .map_err(|e| StoreError::Backend(format!("bad message id {s:?} in database: {e}")))
}

fn parse_account(s: String) -> Result<AccountId, StoreError> {
    AccountId::try_from(s)
        .map_err(|e| StoreError::Backend(format!("bad account id in database: {e}")))
}

fn role_str(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Advisor => "advisor",
        Role::Staff => "staff",
    }
}

fn parse_role(s: &str) -> Result<Role, StoreError> {
    match s {
        "client" => Ok(Role::Client),
        "advisor" => Ok(Role::Advisor),
        "staff" => Ok(Role::Staff),
        other => Err(StoreError::Backend(format!(
            "bad role {other:?} in database"
        ))),
    }
}

fn array<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| {
        StoreError::Backend(format!(
            "{what} in database has {} bytes, expected {N}",
            v.len()
        ))
    })
}

fn boxed<const N: usize>(v: &[u8], what: &str) -> Result<Box<[u8; N]>, StoreError> {
    let arr: [u8; N] = array(v, what)?;
    Ok(Box::new(arr))
}

// ---------------------------------------------------------------------------------------
// Accounts

type AccountRow = (String, String, i64, bool, bool);

fn account_from_row(
    (id, role, created_ms, frozen, disabled): AccountRow,
) -> Result<AccountRecord, StoreError> {
    Ok(AccountRecord {
        id: parse_account(id)?,
        role: parse_role(&role)?,
        created_ms: uint(created_ms, "creation time")?,
        frozen,
        disabled,
    })
}

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

type DeviceRow = (String, String, Vec<u8>, Vec<u8>, i64, bool);

const DEVICE_COLUMNS: &str = "id, account, ed25519, x25519, enrolled_ms, revoked";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn identity_from(ed: &[u8], x: &[u8]) -> Result<PublicIdentity, StoreError> {
    PublicIdentity::from_bytes(&array(ed, "ed25519 key")?, &array(x, "x25519 key")?)
        .map_err(|e| StoreError::Backend(format!("bad identity key in database: {e}")))
}

fn device_from_row(
    (id, account, ed, x, enrolled_ms, revoked): DeviceRow,
) -> Result<DeviceRecord, StoreError> {
    let id = parse_device(&id)?;
    let identity = identity_from(&ed, &x)?;
    if identity.device_id() != id {
        return Err(StoreError::Backend(format!(
            "device {id} in database does not match its identity keys"
        )));
    }
    Ok(DeviceRecord {
        id,
        account: parse_account(account)?,
        identity,
        enrolled_ms: uint(enrolled_ms, "enrolment time")?,
        revoked,
    })
}

fn account_exists(c: &Connection, id: &AccountId) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")
        .and_then(|mut s| s.exists(params![id.as_str()]))
        .map_err(backend)
}

fn device_exists(c: &Connection, id: &str) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT 1 FROM devices WHERE id = ?1")
        .and_then(|mut s| s.exists(params![id]))
        .map_err(backend)
}

fn op_create_account(
    c: &Connection,
    id: &AccountId,
    role: Role,
    now_ms: u64,
) -> Result<(), StoreError> {
    let n = c
        .prepare_cached(
            "INSERT INTO accounts (id, role, created_ms, frozen) VALUES (?1, ?2, ?3, 0)
             ON CONFLICT (id) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![id.as_str(), role_str(role), int(now_ms)]))
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::Conflict("account"));
    }
    Ok(())
}

fn op_add_code(
    c: &Connection,
    account: &AccountId,
    code_hash: &[u8; 32],
    expires_ms: u64,
) -> Result<(), StoreError> {
    if !account_exists(c, account)? {
        return Err(StoreError::NotFound("account"));
    }
    let n = c
        .prepare_cached(
            "INSERT INTO enrollment_codes (code_hash, account, expires_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (code_hash) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![&code_hash[..], account.as_str(), int(expires_ms)]))
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::Conflict("enrollment code"));
    }
    Ok(())
}

fn op_redeem(
    c: &Connection,
    account: &AccountId,
    code_hash: &[u8; 32],
    identity: &PublicIdentity,
    now_ms: u64,
) -> Result<DeviceRecord, StoreError> {
    let code: Option<(String, i64, Option<i64>)> = c
        .prepare_cached(
            "SELECT account, expires_ms, used_ms FROM enrollment_codes WHERE code_hash = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![&code_hash[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(backend)?;
    let now = int(now_ms);
    match code {
        Some((owner, expires, None)) if owner == account.as_str() && now < expires => {}
        _ => return Err(StoreError::EnrollmentRefused),
    }
    let id = identity.device_id();
    let id_hex = dev(&id);
    if device_exists(c, &id_hex)? {
        return Err(StoreError::Conflict("device"));
    }
    let active: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM devices WHERE account = ?1 AND revoked = 0")
        .and_then(|mut s| s.query_row(params![account.as_str()], |r| r.get(0)))
        .map_err(backend)?;
    let active = uint(active, "device count")?;
    if active >= MAX_DEVICES_PER_ACCOUNT as u64 {
        return Err(StoreError::QuotaExceeded {
            what: "devices per account",
            current: active,
            max: MAX_DEVICES_PER_ACCOUNT as u64,
        });
    }
    c.prepare_cached("UPDATE enrollment_codes SET used_ms = ?2 WHERE code_hash = ?1")
        .and_then(|mut s| s.execute(params![&code_hash[..], now]))
        .map_err(backend)?;
    c.prepare_cached(
        "INSERT INTO devices (id, account, ed25519, x25519, enrolled_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id_hex,
            account.as_str(),
            &identity.signing_bytes()[..],
            &identity.dh_bytes()[..],
            now
        ])
    })
    .map_err(backend)?;
    Ok(DeviceRecord {
        id,
        account: account.clone(),
        identity: identity.clone(),
        enrolled_ms: now_ms,
        revoked: false,
    })
}

fn op_assign(c: &Connection, client: &AccountId, staff: &AccountId) -> Result<(), StoreError> {
    if !account_exists(c, client)? || !account_exists(c, staff)? {
        return Err(StoreError::NotFound("account"));
    }
    c.prepare_cached(
        "INSERT INTO assignments (client, staff) VALUES (?1, ?2) ON CONFLICT (client, staff) DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![client.as_str(), staff.as_str()]))
    .map_err(backend)?;
    Ok(())
}

fn op_unassign(c: &Connection, client: &AccountId, staff: &AccountId) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached("DELETE FROM assignments WHERE client = ?1 AND staff = ?2")
        .and_then(|mut s| s.execute(params![client.as_str(), staff.as_str()]))
        .map_err(backend)?;
    Ok(n > 0)
}

impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        id: &AccountId,
        role: Role,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |c| op_create_account(c, &id, role, now_ms))
            .await
    }

    async fn account(&self, id: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let id = id.clone();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, role, created_ms, frozen, disabled FROM accounts WHERE id = ?1",
            )
            .and_then(|mut s| s.query_row(params![id.as_str()], account_row).optional())
            .map_err(backend)?
            .map(account_from_row)
            .transpose()
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        self.read(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT id, role, created_ms, frozen, disabled FROM accounts ORDER BY id",
                )
                .and_then(|mut s| {
                    s.query_map([], account_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter().map(account_from_row).collect()
        })
        .await
    }

    async fn add_enrollment_code(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        let account = account.clone();
        self.write(move |c| op_add_code(c, &account, &code_hash, expires_ms))
            .await
    }

    async fn redeem_enrollment(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        identity: &PublicIdentity,
        now_ms: u64,
    ) -> Result<DeviceRecord, StoreError> {
        let account = account.clone();
        let identity = identity.clone();
        self.write(move |c| op_redeem(c, &account, &code_hash, &identity, now_ms))
            .await
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let id = dev(id);
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![id], device_row).optional())
            .map_err(backend)?
            .map(device_from_row)
            .transpose()
        })
        .await
    }

    async fn devices_of(&self, account: &AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        let account = account.clone();
        self.read(move |c| {
            let rows = c
                .prepare_cached(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE account = ?1
                     ORDER BY enrolled_ms, rowid"
                ))
                .and_then(|mut s| {
                    s.query_map(params![account.as_str()], device_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter().map(device_from_row).collect()
        })
        .await
    }

    async fn assign(&self, client: &AccountId, staff: &AccountId) -> Result<(), StoreError> {
        let (client, staff) = (client.clone(), staff.clone());
        self.write(move |c| op_assign(c, &client, &staff)).await
    }

    async fn unassign(&self, client: &AccountId, staff: &AccountId) -> Result<bool, StoreError> {
        let (client, staff) = (client.clone(), staff.clone());
        self.write(move |c| op_unassign(c, &client, &staff)).await
    }

    async fn is_assigned(&self, client: &AccountId, staff: &AccountId) -> Result<bool, StoreError> {
        let (client, staff) = (client.clone(), staff.clone());
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM assignments WHERE client = ?1 AND staff = ?2")
                .and_then(|mut s| s.exists(params![client.as_str(), staff.as_str()]))
                .map_err(backend)
        })
        .await
    }

    async fn assignments_of(&self, account: &AccountId) -> Result<Vec<AccountId>, StoreError> {
        let account = account.clone();
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT staff FROM assignments WHERE client = ?1
                     UNION
                     SELECT client FROM assignments WHERE staff = ?1
                     ORDER BY 1",
                )
                .and_then(|mut s| {
                    s.query_map(params![account.as_str()], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter().map(parse_account).collect()
        })
        .await
    }

    async fn clients_after(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError> {
        // Account ids are non-empty, so "" sorts before every one of them.
        let after = after.map_or_else(String::new, |a| a.as_str().to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT id FROM accounts WHERE role = 'client' AND id > ?1
                     ORDER BY id LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![after, limit], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter().map(parse_account).collect()
        })
        .await
    }

    async fn set_account_disabled(
        &self,
        id: &AccountId,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write(move |c| {
            let before: Option<bool> = c
                .prepare_cached("SELECT disabled FROM accounts WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![id.as_str()], |r| r.get(0)).optional())
                .map_err(backend)?;
            let Some(before) = before else {
                return Err(StoreError::NotFound("account"));
            };
            c.prepare_cached("UPDATE accounts SET disabled = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id.as_str(), disabled]))
                .map_err(backend)?;
            Ok(before != disabled)
        })
        .await
    }

    async fn disabled_accounts(&self) -> Result<Vec<AccountId>, StoreError> {
        self.read(|c| {
            let rows = c
                .prepare_cached("SELECT id FROM accounts WHERE disabled = 1 ORDER BY id")
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter().map(parse_account).collect()
        })
        .await
    }

    async fn enrollment_codes(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<CodeRecord>, StoreError> {
        let account = account.map(|a| a.as_str().to_owned());
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT account, code_hash, expires_ms, used_ms IS NOT NULL FROM enrollment_codes
                     WHERE ?1 IS NULL OR account = ?1 ORDER BY account, code_hash",
                )
                .and_then(|mut s| {
                    s.query_map(params![account], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, bool>(3)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter()
                .map(|(account, hash, expires, used)| {
                    let hex = hex::encode(&hash);
                    Ok(CodeRecord {
                        account: parse_account(account)?,
                        id: hex.get(..CODE_ID_HEX).unwrap_or(&hex).to_owned(),
                        expires_ms: uint(expires, "code expiry")?,
                        used,
                    })
                })
                .collect()
        })
        .await
    }

    async fn revoke_enrollment_codes(
        &self,
        account: &AccountId,
        id_prefix: Option<&str>,
    ) -> Result<u64, StoreError> {
        let account = account.clone();
        let prefix = id_prefix.map(str::to_ascii_lowercase);
        self.write(move |c| {
            let hashes: Vec<Vec<u8>> = c
                .prepare_cached(
                    "SELECT code_hash FROM enrollment_codes WHERE account = ?1 AND used_ms IS NULL",
                )
                .and_then(|mut s| {
                    s.query_map(params![account.as_str()], |r| r.get::<_, Vec<u8>>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            let mut n = 0u64;
            for h in hashes {
                if prefix
                    .as_deref()
                    .is_none_or(|p| hex::encode(&h).starts_with(p))
                {
                    n += c
                        .prepare_cached("DELETE FROM enrollment_codes WHERE code_hash = ?1")
                        .and_then(|mut s| s.execute(params![h]))
                        .map_err(backend)? as u64;
                }
            }
            Ok(n)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Trust: roster versions and device logs

fn encode_entry(entry: &LogEntry) -> Result<Vec<u8>, StoreError> {
    sealpost_protocol::codec::encode("device log entry", entry, MAX_LOG_ENTRY_BYTES)
        .map_err(|e| StoreError::Backend(format!("encoding a device log entry: {e}")))
}

fn decode_entry(bytes: &[u8]) -> Result<LogEntry, StoreError> {
    sealpost_protocol::codec::decode("device log entry", bytes, MAX_LOG_ENTRY_BYTES)
        .map_err(|e| StoreError::Backend(format!("bad device log entry in database: {e}")))
}

fn log_len(c: &Connection, account: &AccountId) -> Result<u64, StoreError> {
    let n: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM device_log WHERE account = ?1")
        .and_then(|mut s| s.query_row(params![account.as_str()], |r| r.get(0)))
        .map_err(backend)?;
    uint(n, "device log length")
}

fn insert_log_row(
    c: &Connection,
    entry: &LogEntry,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO device_log (account, seq, action, entry, stored_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            entry.body.account.as_str(),
            int(entry.body.seq),
            entry.body.action.name(),
            bytes,
            int(now_ms)
        ])
    })
    .map_err(backend)?;
    Ok(())
}

/// Append a transparency-log leaf in the caller's transaction; returns its index.
fn op_append_leaf(c: &Connection, leaf: &LogLeaf, now_ms: u64) -> Result<u64, StoreError> {
    let have = leaf_count(c)?;
    check_room(have)?;
    let leaf = encode_leaf(leaf, have)?;
    c.prepare_cached("INSERT INTO tlog_leaves (idx, leaf, stored_ms) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![int(have), leaf, int(now_ms)]))
        .map_err(backend)?;
    Ok(have)
}

fn leaf_count(c: &Connection) -> Result<u64, StoreError> {
    let n: i64 = c
        .prepare_cached("SELECT COALESCE(MAX(idx) + 1, 0) FROM tlog_leaves")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    uint(n, "leaf index")
}

fn op_append_roster(
    c: &Connection,
    version: u64,
    bytes: &[u8],
    leaf: &LogLeaf,
    now_ms: u64,
) -> Result<(), StoreError> {
    let have: i64 = c
        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM roster_versions")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    let have = uint(have, "roster version")?;
    if version != have.saturating_add(1) {
        return Err(StoreError::Conflict("roster version"));
    }
    if have >= MAX_STORED_ROSTER_VERSIONS {
        return Err(StoreError::QuotaExceeded {
            what: "roster versions",
            current: have,
            max: MAX_STORED_ROSTER_VERSIONS,
        });
    }
    c.prepare_cached(
        "INSERT INTO roster_versions (version, signed, stored_ms) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![int(version), bytes, int(now_ms)]))
    .map_err(backend)?;
    op_append_leaf(c, leaf, now_ms)?;
    Ok(())
}

fn op_append_log(
    c: &Connection,
    entry: &LogEntry,
    bytes: &[u8],
    leaf: &LogLeaf,
    effects: &LogEffects,
    now_ms: u64,
) -> Result<(), StoreError> {
    let account = &entry.body.account;
    if !account_exists(c, account)? {
        return Err(StoreError::NotFound("account"));
    }
    let len = log_len(c, account)?;
    if entry.body.seq != len {
        return Err(StoreError::Conflict("device log entry"));
    }
    if len >= MAX_STORED_LOG_ENTRIES {
        return Err(StoreError::QuotaExceeded {
            what: "device log entries",
            current: len,
            max: MAX_STORED_LOG_ENTRIES,
        });
    }
    let mut register = None;
    if let Some(new) = &effects.register {
        let id = dev(&new.identity.device_id());
        let existing: Option<(String, bool)> = c
            .prepare_cached("SELECT account, revoked FROM devices WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        match existing {
            Some((owner, revoked)) if owner != account.as_str() || revoked => {
                return Err(StoreError::Conflict("device"));
            }
            Some(_) => {}
            None => register = Some((id, new)),
        }
    }
    // Every refusal is above; the writes follow.
    if let Some((id, new)) = register {
        c.prepare_cached(
            "INSERT INTO devices (id, account, ed25519, x25519, enrolled_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                account.as_str(),
                &new.identity.signing_bytes()[..],
                &new.identity.dh_bytes()[..],
                int(new.added_ms)
            ])
        })
        .map_err(backend)?;
    }
    for revoked in &effects.revoke {
        c.prepare_cached("UPDATE devices SET revoked = 1 WHERE id = ?1 AND account = ?2")
            .and_then(|mut s| s.execute(params![dev(revoked), account.as_str()]))
            .map_err(backend)?;
    }
    c.prepare_cached("UPDATE accounts SET frozen = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![account.as_str(), effects.frozen]))
        .map_err(backend)?;
    insert_log_row(c, entry, bytes, now_ms)?;
    op_append_leaf(c, leaf, now_ms)?;
    Ok(())
}

fn op_enroll_first(
    c: &Connection,
    account: &AccountId,
    code_hash: &[u8; 32],
    identity: &PublicIdentity,
    genesis: &LogEntry,
    bytes: &[u8],
    now_ms: u64,
) -> Result<DeviceRecord, StoreError> {
    if log_len(c, account)? > 0 {
        return Err(StoreError::EnrollmentRefused);
    }
    let record = op_redeem(c, account, code_hash, identity, now_ms)?;
    insert_log_row(c, genesis, bytes, now_ms)?;
    for leaf in enrollment_leaves(account, identity, genesis, now_ms) {
        op_append_leaf(c, &leaf, now_ms)?;
    }
    Ok(record)
}

impl TrustStore for SqliteStore {
    async fn append_roster(&self, link: &SignedRoster, now_ms: u64) -> Result<(), StoreError> {
        let version = link.roster.version();
        let bytes = link
            .to_cbor()
            .map_err(|e| StoreError::Backend(format!("encoding a roster: {e}")))?;
        let leaf = LogLeaf::roster(link, now_ms);
        self.write(move |c| op_append_roster(c, version, &bytes, &leaf, now_ms))
            .await
    }

    async fn rosters_after(
        &self,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<SignedRoster>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT signed FROM roster_versions WHERE version > ?1 ORDER BY version LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![int(after_version), limit], |r| r.get::<_, Vec<u8>>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.iter()
                .map(|b| {
                    SignedRoster::from_cbor(b).map_err(|e| {
                        StoreError::Backend(format!("bad roster version in database: {e}"))
                    })
                })
                .collect()
        })
        .await
    }

    async fn device_log(
        &self,
        account: &AccountId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let account = account.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT entry FROM device_log WHERE account = ?1 AND seq >= ?2
                     ORDER BY seq LIMIT ?3",
                )
                .and_then(|mut s| {
                    s.query_map(params![account.as_str(), int(from_seq), limit], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.iter().map(|b| decode_entry(b)).collect()
        })
        .await
    }

    async fn device_log_timed(
        &self,
        account: &AccountId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(LogEntry, u64)>, StoreError> {
        let account = account.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT entry, stored_ms FROM device_log WHERE account = ?1 AND seq >= ?2
                     ORDER BY seq LIMIT ?3",
                )
                .and_then(|mut s| {
                    s.query_map(params![account.as_str(), int(from_seq), limit], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.iter()
                .map(|(b, t)| Ok((decode_entry(b)?, uint(*t, "device log append time")?)))
                .collect()
        })
        .await
    }

    async fn device_log_len(&self, account: &AccountId) -> Result<u64, StoreError> {
        let account = account.clone();
        self.read(move |c| log_len(c, &account)).await
    }

    async fn put_attestation(
        &self,
        attestation: &ClientAttestation,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let bytes = attestation
            .to_cbor()
            .map_err(|e| StoreError::Backend(format!("encoding an attestation: {e}")))?;
        let account = attestation.account.clone();
        let attestation = attestation.clone();
        self.write(move |c| {
            let exists: bool = c
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = ?1)")
                .and_then(|mut s| s.query_row(params![account.as_str()], |r| r.get(0)))
                .map_err(backend)?;
            if !exists {
                return Err(StoreError::NotFound("account"));
            }
            let n = c
                .prepare_cached(
                    "INSERT INTO attestations (account, attestation, stored_ms)
                     VALUES (?1, ?2, ?3) ON CONFLICT (account) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![account.as_str(), bytes, int(now_ms)]))
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Conflict("attestation"));
            }
            let first: Option<Vec<u8>> = c
                .prepare_cached("SELECT entry FROM device_log WHERE account = ?1 AND seq = 0")
                .and_then(|mut s| {
                    s.query_row(params![account.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            let device = match first {
                Some(b) => genesis_device(&decode_entry(&b)?),
                None => None,
            }
            .ok_or(StoreError::NotFound("device log"))?;
            let leaf = LogLeaf::attestation(&attestation, device, now_ms);
            op_append_leaf(c, &leaf, now_ms)?;
            Ok(())
        })
        .await
    }

    async fn attestation(
        &self,
        account: &AccountId,
    ) -> Result<Option<ClientAttestation>, StoreError> {
        let account = account.clone();
        self.read(move |c| {
            let row: Option<Vec<u8>> = c
                .prepare_cached("SELECT attestation FROM attestations WHERE account = ?1")
                .and_then(|mut s| {
                    s.query_row(params![account.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            row.map(|b| {
                ClientAttestation::from_cbor(&b)
                    .map_err(|e| StoreError::Backend(format!("bad attestation in database: {e}")))
            })
            .transpose()
        })
        .await
    }

    async fn unattested_clients_after(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError> {
        // Account ids are non-empty, so "" sorts before every one of them.
        let after = after.map_or_else(String::new, |a| a.as_str().to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT a.id FROM accounts a
                     WHERE a.role = 'client' AND a.id > ?1
                       AND EXISTS (SELECT 1 FROM device_log l WHERE l.account = a.id)
                       AND NOT EXISTS (SELECT 1 FROM attestations t WHERE t.account = a.id)
                     ORDER BY a.id LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![after, limit], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter().map(parse_account).collect()
        })
        .await
    }

    async fn append_device_log(
        &self,
        entry: &LogEntry,
        effects: &LogEffects,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let bytes = encode_entry(entry)?;
        let leaf = LogLeaf::device_log_head(entry, now_ms);
        let (entry, effects) = (entry.clone(), effects.clone());
        self.write(move |c| op_append_log(c, &entry, &bytes, &leaf, &effects, now_ms))
            .await
    }

    async fn enroll_first_device(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        identity: &PublicIdentity,
        genesis: &LogEntry,
        now_ms: u64,
    ) -> Result<DeviceRecord, StoreError> {
        let bytes = encode_entry(genesis)?;
        let (account, identity, genesis) = (account.clone(), identity.clone(), genesis.clone());
        self.write(move |c| {
            op_enroll_first(c, &account, &code_hash, &identity, &genesis, &bytes, now_ms)
        })
        .await
    }
}

impl TlogStore for SqliteStore {
    async fn append_leaf(&self, leaf: &LogLeaf, now_ms: u64) -> Result<u64, StoreError> {
        let leaf = leaf.clone();
        self.write(move |c| op_append_leaf(c, &leaf, now_ms)).await
    }

    async fn leaves(&self, start: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let limit = i64::try_from(limit.min(MAX_LEAVES_PER_READ)).unwrap_or(0);
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT idx, leaf FROM tlog_leaves WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![int(start), limit], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter()
                .map(|(i, l)| Ok((uint(i, "leaf index")?, l)))
                .collect()
        })
        .await
    }

    async fn leaf_count(&self) -> Result<u64, StoreError> {
        self.read(leaf_count).await
    }

    async fn put_checkpoint(&self, size: u64, note: &str, now_ms: u64) -> Result<(), StoreError> {
        let note = note.to_owned();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO tlog_checkpoints (size, note, stored_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (size) DO UPDATE SET note = excluded.note",
            )
            .and_then(|mut s| s.execute(params![int(size), note, int(now_ms)]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            c.prepare_cached("SELECT note FROM tlog_checkpoints WHERE size = ?1")
                .and_then(|mut s| s.query_row(params![int(size)], |r| r.get(0)).optional())
                .map_err(backend)
        })
        .await
    }

    async fn checkpoints_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.map_or(-1, int);
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT size, note FROM tlog_checkpoints WHERE size > ?1 ORDER BY size LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![after, limit], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter()
                .map(|(n, note)| Ok((uint(n, "checkpoint size")?, note)))
                .collect()
        })
        .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(move |c| {
            let row: Option<(i64, String)> = c
                .prepare_cached(
                    "SELECT size, note FROM tlog_checkpoints ORDER BY size DESC LIMIT 1",
                )
                .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(backend)?;
            row.map(|(n, note)| Ok((uint(n, "checkpoint size")?, note)))
                .transpose()
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Prekeys

fn counts(c: &Connection, device: &str) -> Result<PreKeyCounts, StoreError> {
    let (one_time, kem_one_time): (i64, i64) = c
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM one_time_prekeys WHERE device = ?1),
                    (SELECT COUNT(*) FROM kem_one_time_prekeys WHERE device = ?1)",
        )
        .and_then(|mut s| s.query_row(params![device], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend)?;
    Ok(PreKeyCounts {
        one_time: u32::try_from(one_time).map_err(backend)?,
        kem_one_time: u32::try_from(kem_one_time).map_err(backend)?,
    })
}

fn op_put_prekeys(
    c: &Connection,
    device: &DeviceId,
    upload: &PreKeyUpload,
) -> Result<PreKeyCounts, StoreError> {
    let d = dev(device);
    if !device_exists(c, &d)? {
        return Err(StoreError::NotFound("device"));
    }
    let have = counts(c, &d)?;
    let max = u64::from(MAX_STORED_ONE_TIME_PREKEYS);
    let current = u64::from(have.one_time);
    if current + upload.one_time.len() as u64 > max {
        return Err(StoreError::QuotaExceeded {
            what: "one-time prekeys",
            current,
            max,
        });
    }
    let current = u64::from(have.kem_one_time);
    if current + upload.kem_one_time.len() as u64 > max {
        return Err(StoreError::QuotaExceeded {
            what: "one-time ML-KEM prekeys",
            current,
            max,
        });
    }
    {
        let mut s = c
            .prepare_cached(
                "INSERT INTO one_time_prekeys (device, key_id, public, signature) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device, key_id) DO NOTHING",
            )
            .map_err(backend)?;
        for k in &upload.one_time {
            let n = s
                .execute(params![d, i64::from(k.id), &k.public[..], &k.signature[..]])
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Conflict("one-time prekey"));
            }
        }
    }
    {
        let mut s = c
            .prepare_cached(
                "INSERT INTO kem_one_time_prekeys (device, key_id, last_resort, public, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (device, key_id) DO NOTHING",
            )
            .map_err(backend)?;
        for k in &upload.kem_one_time {
            let n = s
                .execute(params![
                    d,
                    i64::from(k.id),
                    k.last_resort,
                    &k.public[..],
                    &k.signature[..]
                ])
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Conflict("one-time ML-KEM prekey"));
            }
        }
    }
    if let Some(k) = &upload.signed_prekey {
        c.prepare_cached(
            "INSERT INTO signed_prekeys (device, key_id, public, signature) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device) DO UPDATE SET
                 key_id = excluded.key_id, public = excluded.public, signature = excluded.signature",
        )
        .and_then(|mut s| s.execute(params![d, i64::from(k.id), &k.public[..], &k.signature[..]]))
        .map_err(backend)?;
    }
    if let Some(k) = &upload.kem_last_resort {
        c.prepare_cached(
            "INSERT INTO kem_last_resort_prekeys (device, key_id, last_resort, public, signature)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device) DO UPDATE SET
                 key_id = excluded.key_id, last_resort = excluded.last_resort,
                 public = excluded.public, signature = excluded.signature",
        )
        .and_then(|mut s| {
            s.execute(params![
                d,
                i64::from(k.id),
                k.last_resort,
                &k.public[..],
                &k.signature[..]
            ])
        })
        .map_err(backend)?;
    }
    counts(c, &d)
}

type X25519Row = (i64, Vec<u8>, Vec<u8>);
type KemRow = (i64, bool, Vec<u8>, Vec<u8>);

fn kem_from_row((id, last_resort, public, signature): KemRow) -> Result<KemPreKey, StoreError> {
    Ok(KemPreKey {
        id: key_id(id)?,
        last_resort,
        public: boxed(&public, "ML-KEM prekey")?,
        signature: array(&signature, "prekey signature")?,
    })
}

fn op_take_bundle(
    c: &Connection,
    device: &DeviceId,
) -> Result<Option<(PreKeyBundle, PreKeyCounts)>, StoreError> {
    let d = dev(device);
    let keys: Option<(Vec<u8>, Vec<u8>)> = c
        .prepare_cached("SELECT ed25519, x25519 FROM devices WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![d], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    let Some((ed, x)) = keys else {
        return Err(StoreError::NotFound("device"));
    };
    let identity = identity_from(&ed, &x)?;
    let x25519_row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<X25519Row> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    };
    let kem_row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<KemRow> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    };
    let signed: Option<X25519Row> = c
        .prepare_cached("SELECT key_id, public, signature FROM signed_prekeys WHERE device = ?1")
        .and_then(|mut s| s.query_row(params![d], x25519_row).optional())
        .map_err(backend)?;
    let Some((id, public, signature)) = signed else {
        return Ok(None);
    };
    let signed_prekey = SignedPreKey {
        id: key_id(id)?,
        public: array(&public, "signed prekey")?,
        signature: array(&signature, "prekey signature")?,
    };

    let kem_one_time: Option<KemRow> = c
        .prepare_cached(
            "SELECT key_id, last_resort, public, signature FROM kem_one_time_prekeys
             WHERE device = ?1 ORDER BY key_id LIMIT 1",
        )
        .and_then(|mut s| s.query_row(params![d], kem_row).optional())
        .map_err(backend)?;
    let kem_prekey = match kem_one_time {
        Some(row) => {
            let id = row.0;
            c.prepare_cached("DELETE FROM kem_one_time_prekeys WHERE device = ?1 AND key_id = ?2")
                .and_then(|mut s| s.execute(params![d, id]))
                .map_err(backend)?;
            kem_from_row(row)?
        }
        None => {
            let last_resort: Option<KemRow> = c
                .prepare_cached(
                    "SELECT key_id, last_resort, public, signature FROM kem_last_resort_prekeys
                     WHERE device = ?1",
                )
                .and_then(|mut s| s.query_row(params![d], kem_row).optional())
                .map_err(backend)?;
            match last_resort {
                Some(row) => kem_from_row(row)?,
                None => return Ok(None),
            }
        }
    };

    let one_time: Option<X25519Row> = c
        .prepare_cached(
            "SELECT key_id, public, signature FROM one_time_prekeys
             WHERE device = ?1 ORDER BY key_id LIMIT 1",
        )
        .and_then(|mut s| s.query_row(params![d], x25519_row).optional())
        .map_err(backend)?;
    let one_time_prekey = match one_time {
        Some((id, public, signature)) => {
            c.prepare_cached("DELETE FROM one_time_prekeys WHERE device = ?1 AND key_id = ?2")
                .and_then(|mut s| s.execute(params![d, id]))
                .map_err(backend)?;
            Some(OneTimePreKey {
                id: key_id(id)?,
                public: array(&public, "one-time prekey")?,
                signature: array(&signature, "prekey signature")?,
            })
        }
        None => None,
    };
    let after = counts(c, &d)?;
    Ok(Some((
        PreKeyBundle {
            identity,
            signed_prekey,
            one_time_prekey,
            kem_prekey,
        },
        after,
    )))
}

impl PreKeyStore for SqliteStore {
    async fn put_prekeys(
        &self,
        device: &DeviceId,
        upload: PreKeyUpload,
    ) -> Result<PreKeyCounts, StoreError> {
        let device = *device;
        self.write(move |c| op_put_prekeys(c, &device, &upload))
            .await
    }

    async fn take_bundle(
        &self,
        device: &DeviceId,
    ) -> Result<Option<(PreKeyBundle, PreKeyCounts)>, StoreError> {
        let device = *device;
        self.write(move |c| op_take_bundle(c, &device)).await
    }

    async fn prekey_counts(&self, device: &DeviceId) -> Result<PreKeyCounts, StoreError> {
        let d = dev(device);
        self.read(move |c| {
            if !device_exists(c, &d)? {
                return Err(StoreError::NotFound("device"));
            }
            counts(c, &d)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Mailboxes

type EnvelopeRow = (i64, String, String, u16, u16, i64, Vec<u8>);

fn pending_from_row(recipient: DeviceId, row: EnvelopeRow) -> Result<Pending, StoreError> {
    let (seq, message_id, sender, version, kind, timestamp_ms, body) = row;
    Ok(Pending {
        seq: uint(seq, "sequence number")?,
        envelope: Envelope {
            header: RoutingHeader {
                version,
                recipient,
                sender: parse_device(&sender)?,
                message_id: parse_message_id(&message_id)?,
                timestamp_ms: timestamp_ms as u64,
                kind: EnvelopeKind::try_from(kind).map_err(|_| {
                    StoreError::Backend(format!("bad envelope kind {kind} in database"))
                })?,
            },
            body,
        },
    })
}

/// One expiry pass (inside the writer's transaction): remove at most
/// [`MAX_EXPIRED_PER_PASS`] expired envelopes, subtracting them from the writer's
/// mailbox counters, and expired tombstones. Returns how many envelopes went.
fn op_expire(
    c: &Connection,
    now_ms: u64,
    counters: &mut WriterCounters,
) -> Result<u64, StoreError> {
    let now = int(now_ms);
    let rows: Vec<(String, i64, i64)> = c
        .prepare_cached(
            "SELECT recipient, seq, size FROM envelopes WHERE expires_ms <= ?1 LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![now, int(MAX_EXPIRED_PER_PASS as u64)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .map_err(backend)?;
    let removed = rows.len() as u64;
    let mut per_device: std::collections::HashMap<String, (u64, u64)> =
        std::collections::HashMap::new();
    for (recipient, seq, size) in rows {
        c.prepare_cached("DELETE FROM envelopes WHERE recipient = ?1 AND seq = ?2")
            .and_then(|mut s| s.execute(params![recipient, seq]))
            .map_err(backend)?;
        let t = per_device.entry(recipient).or_default();
        t.0 += 1;
        t.1 += uint(size, "size")?;
    }
    for (recipient, (n, bytes)) in per_device {
        counters.expired(c, &parse_device(&recipient)?, n, bytes)?;
    }
    c.prepare_cached(
        "DELETE FROM delivered WHERE (timestamp_ms, recipient, message_id) IN
             (SELECT timestamp_ms, recipient, message_id FROM delivered
              WHERE expires_ms <= ?1 LIMIT ?2)",
    )
    .and_then(|mut s| s.execute(params![now, int(MAX_EXPIRED_PER_PASS as u64)]))
    .map_err(backend)?;
    Ok(removed)
}

impl MailboxStore for SqliteStore {
    async fn enqueue_with(
        &self,
        envelope: Arc<Envelope>,
        expires_ms: u64,
        quota: Quota,
        on_staged: OnStaged,
    ) -> Result<Enqueued, StoreError> {
        if self.writer.is_none() {
            return Err(closed());
        }
        let room = self.mailboxes.room(envelope.body.len()).await?;
        let staged = self
            .mailboxes
            .stage(envelope, expires_ms, quota, on_staged, room)?;
        if staged.wake {
            self.wake()?;
        }
        staged.enqueued().await
    }

    async fn pending(
        &self,
        device: &DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let recipient = *device;
        // Staged first, then the database (see `mailbox`): an envelope committed in
        // between is then seen once or twice, never missed.
        let staged = self.mailboxes.staged(device, after_seq, limit);
        let max = limit;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stored = self
            .read(move |c| {
                let rows = c
                    .prepare_cached(
                        "SELECT seq, message_id, sender, version, kind, timestamp_ms, body
                     FROM envelopes WHERE recipient = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![dev(&recipient), int(after_seq), limit], |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                            ))
                        })?
                        .collect::<rusqlite::Result<Vec<EnvelopeRow>>>()
                    })
                    .map_err(backend)?;
                rows.into_iter()
                    .map(|row| pending_from_row(recipient, row))
                    .collect::<Result<Vec<Pending>, StoreError>>()
            })
            .await?;
        if staged.is_empty() {
            return Ok(stored);
        }
        let mut merged: std::collections::BTreeMap<u64, Pending> =
            stored.into_iter().map(|p| (p.seq, p)).collect();
        for p in staged {
            merged.entry(p.seq).or_insert(p);
        }
        Ok(merged.into_values().take(max).collect())
    }

    async fn ack(
        &self,
        device: &DeviceId,
        message_id: &MessageId,
        seq: u64,
    ) -> Result<bool, StoreError> {
        if self.writer.is_none() {
            return Err(closed());
        }
        let staged = self.mailboxes.ack(device, message_id, seq)?;
        if staged.wake {
            self.wake()?;
        }
        staged.acked().await
    }

    async fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(closed)?
            .send(Msg::Expire(now_ms, tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.read(|c| {
            let (count, bytes): (i64, i64) = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(pending_count), 0), COALESCE(SUM(pending_bytes), 0) FROM devices",
                )
                .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(backend)?;
            Ok(QueueStats {
                count: uint(count, "pending count")?,
                bytes: uint(bytes, "pending bytes")?,
            })
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(closed)?
            .send(Msg::Flush(tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}
