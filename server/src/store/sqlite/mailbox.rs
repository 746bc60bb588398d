//! Mailboxes of the SQLite store: envelopes are *staged* in memory by the caller and
//! *written* in batches by the writer thread.
//!
//! # Why two steps
//!
//! A sent envelope is acknowledged to its sender only once it is durable, but nothing
//! requires an online recipient to wait for the disk: it may get the envelope as soon as
//! the relay has decided to keep it. Staging decides (sequence number, quota) in memory,
//! under one short lock and without touching the database, makes the envelope visible
//! to `pending` and calls the relay's hook, which pushes it; the sender's answer waits
//! for the commit.
//!
//! The writer takes everything staged as one [`Batch`] (after letting a young batch
//! linger for [`BATCH_LINGER`]), so batches grow with the load and one `fsync` serves
//! all of them. An envelope whose recipient acknowledges it while its batch is still
//! open, the common case for an online recipient, is never written: the batch writes
//! only its tombstone, which keeps a retry by the sender recognisable as a duplicate.
//!
//! # Who knows what
//!
//! * The **writer** owns the truth. For each staged envelope it checks, on its own
//!   connection (whose page cache its own writes keep warm), whether the message id is
//!   already stored or acknowledged; it keeps every mailbox's counters
//!   (`next_seq`, `pending_count`, `pending_bytes`) in memory, changes them by what the
//!   batch actually did, and writes them in the same transaction. A crash therefore
//!   always leaves counters that match the rows.
//! * **Staging** keeps, per mailbox, the counters as of the last commit plus what is in
//!   flight, for the quota check and the next sequence number. A message id that is
//!   staged or in flight is recognised as a duplicate at once. One that is only on disk
//!   is recognised by the writer: the sender is then told "duplicate" with the original
//!   number, but the recipient has already been offered the copy (under a number that
//!   is never stored) and drops it by message id, as every client must.
//! * `pending` reads the staged envelopes first and the database second; an envelope
//!   leaves the staged set only after its batch committed, so a reader never misses one
//!   that moves from memory to disk in between (it may see it twice; the merge keeps
//!   one).
//! * If a commit fails, everything staged is answered with the error (those senders
//!   were never told "accepted"), and both sides reload their counters from the
//!   database; sequence numbers never go back, so a connected recipient sees a gap and
//!   reads its mailbox again.
//! * Staged envelope bytes are bounded by [`MAX_STAGED_BYTES`]: `enqueue` waits for
//!   room when the disk falls behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use sealpost_protocol::envelope::{Envelope, MessageId, RoutingHeader};
use sealpost_protocol::identity::DeviceId;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{backend, dev, int, msg, uint};
use crate::store::{Enqueued, OnStaged, Pending, Quota, StoreError};

/// Most envelope body bytes staged and not yet committed; `enqueue` waits for room.
pub const MAX_STAGED_BYTES: usize = 64 << 20;
/// Granularity of the staged-bytes bound (every envelope counts as at least this much).
const PERMIT_UNIT: usize = 1024;
/// Mailboxes whose counters stay cached; idle ones beyond this are forgotten.
pub const MAX_CACHED_MAILBOXES: usize = 65_536;
/// How long the writer lets a batch stay open after its first operation, when it is
/// not busy anyway: an online recipient's acknowledgement usually arrives within this
/// time, and the envelope is then never written. Only the sender's `accepted` waits
/// this long; the recipient already has the envelope.
pub const BATCH_LINGER: Duration = Duration::from_millis(2);
/// Operations in an open batch after which the writer takes it without lingering.
pub const BATCH_LINGER_MAX_OPS: usize = 4096;
/// Envelope rows one expiry pass removes at most (the sweeper runs again later).
pub const MAX_EXPIRED_PER_PASS: usize = 50_000;

/// Counters of staging, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Envelopes staged.
    pub staged: u64,
    /// Envelopes acknowledged before their batch was written (only a tombstone was).
    pub cancelled: u64,
}

/// Per-mailbox counters, as stored in `devices`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    next_seq: u64,
    count: u64,
    bytes: u64,
}

/// What the writer found for the operations of a batch.
#[derive(Debug, Default)]
pub(super) struct Outcomes {
    /// Per insert: `Some(seq)` if the message id was already stored (as `seq`).
    duplicate: Vec<Option<u64>>,
    /// Per acknowledgement of a stored envelope: whether it was pending.
    acked: Vec<bool>,
}

/// The end of one batch's commit, awaited by every operation in it.
pub(super) struct BatchDone {
    result: OnceLock<Result<Outcomes, String>>,
    notify: Notify,
}

impl BatchDone {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            result: OnceLock::new(),
            notify: Notify::new(),
        })
    }

    /// Resolve once the batch committed (or failed).
    async fn wait(&self) -> Result<&Outcomes, StoreError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.result.get() {
                return r
                    .as_ref()
                    .map_err(|e| StoreError::Backend(format!("commit failed: {e}")));
            }
            notified.await;
        }
    }

    fn finish(&self, result: Result<Outcomes, String>) {
        let _ = self.result.set(result);
        self.notify.notify_waiters();
    }
}

/// Where a staged operation's answer comes from.
pub(super) enum Durable {
    /// Nothing to wait for.
    Now,
    /// The commit of a batch (the operation's own, or the one holding the original).
    Batch(Arc<BatchDone>),
    /// The commit of a batch, with the writer's finding for insert `index`.
    Insert(Arc<BatchDone>, usize),
    /// The commit of a batch, with the writer's finding for acknowledgement `index`.
    Ack(Arc<BatchDone>, usize),
}

/// An operation staged: its provisional answer and what makes it final.
pub(super) struct Staged<T> {
    value: T,
    durable: Durable,
    /// The open batch was empty: wake the writer.
    pub(super) wake: bool,
}

impl Staged<Enqueued> {
    /// The final answer, once durable.
    pub(super) async fn enqueued(self) -> Result<Enqueued, StoreError> {
        match self.durable {
            Durable::Now => Ok(self.value),
            Durable::Batch(done) | Durable::Ack(done, _) => {
                done.wait().await?;
                Ok(self.value)
            }
            Durable::Insert(done, i) => {
                let found = done.wait().await?;
                Ok(match found.duplicate.get(i).copied().flatten() {
                    Some(seq) => Enqueued {
                        seq,
                        duplicate: true,
                    },
                    None => self.value,
                })
            }
        }
    }
}

impl Staged<bool> {
    /// The final answer, once durable.
    pub(super) async fn acked(self) -> Result<bool, StoreError> {
        match self.durable {
            Durable::Now => Ok(self.value),
            Durable::Batch(done) | Durable::Insert(done, _) => {
                done.wait().await?;
                Ok(self.value)
            }
            Durable::Ack(done, i) => {
                let found = done.wait().await?;
                Ok(found.acked.get(i).copied().unwrap_or(false))
            }
        }
    }
}

struct Insert {
    seq: u64,
    envelope: Arc<Envelope>,
    expires_ms: u64,
    /// Acknowledged while the batch was open: write a tombstone instead.
    cancelled: bool,
    /// Room in the staged-bytes bound, given back when the batch is done.
    _room: OwnedSemaphorePermit,
}

struct DbAck {
    recipient: DeviceId,
    seq: u64,
    message_id: MessageId,
}

/// Staged work handed to the writer in one piece.
pub(super) struct Batch {
    generation: u64,
    /// When its first operation was staged.
    opened: Option<Instant>,
    inserts: Vec<Insert>,
    acks: Vec<DbAck>,
    done: Arc<BatchDone>,
}

impl Batch {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            opened: None,
            inserts: Vec::new(),
            acks: Vec::new(),
            done: BatchDone::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.acks.is_empty()
    }

    /// Operations in the batch, for the writer's counters.
    pub(super) fn len(&self) -> usize {
        self.inserts.len() + self.acks.len()
    }

    /// Envelopes in the batch acknowledged before it was written.
    pub(super) fn cancelled(&self) -> u64 {
        self.inserts.iter().filter(|i| i.cancelled).count() as u64
    }

    /// Write the batch inside the writer's open transaction, keeping `counters` (the
    /// writer's own) in step. Returns what it found.
    pub(super) fn write(
        &self,
        c: &Connection,
        counters: &mut WriterCounters,
    ) -> Result<Outcomes, StoreError> {
        let mut out = Outcomes {
            duplicate: Vec::with_capacity(self.inserts.len()),
            acked: Vec::with_capacity(self.acks.len()),
        };
        for i in &self.inserts {
            let h = &i.envelope.header;
            let n = counters.get(c, &h.recipient)?;
            n.next_seq = n.next_seq.max(i.seq.saturating_add(1));
            if let Some(seq) = stored_seq(c, h)? {
                // Already stored or acknowledged: nothing is written.
                out.duplicate.push(Some(seq));
                continue;
            }
            out.duplicate.push(None);
            if i.cancelled {
                insert_tombstone(c, h, i.seq, i.expires_ms)?;
                continue;
            }
            let size = i.envelope.body.len() as u64;
            c.prepare_cached(
                "INSERT INTO envelopes (recipient, seq, message_id, sender, version, kind,
                                        timestamp_ms, body, size, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    dev(&h.recipient),
                    int(i.seq),
                    msg(&h.message_id),
                    dev(&h.sender),
                    h.version,
                    h.kind.code(),
                    // The sender's clock is arbitrary: stored bit for bit, never compared.
                    h.timestamp_ms as i64,
                    i.envelope.body,
                    int(size),
                    int(i.expires_ms)
                ])
            })
            .map_err(backend)?;
            let n = counters.get(c, &h.recipient)?;
            n.count += 1;
            n.bytes += size;
        }
        for a in &self.acks {
            let row: Option<(i64, i64, i64)> = c
                .prepare_cached(
                    "DELETE FROM envelopes WHERE recipient = ?1 AND seq = ?2 AND message_id = ?3
                     RETURNING size, expires_ms, timestamp_ms",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![dev(&a.recipient), int(a.seq), msg(&a.message_id)],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                })
                .map_err(backend)?;
            let Some((size, expires, timestamp_ms)) = row else {
                out.acked.push(false);
                continue;
            };
            out.acked.push(true);
            let size = uint(size, "size")?;
            c.prepare_cached(
                "INSERT INTO delivered (timestamp_ms, recipient, message_id, seq, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (timestamp_ms, recipient, message_id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    timestamp_ms,
                    dev(&a.recipient),
                    msg(&a.message_id),
                    int(a.seq),
                    expires
                ])
            })
            .map_err(backend)?;
            let n = counters.get(c, &a.recipient)?;
            n.count = n.count.saturating_sub(1);
            n.bytes = n.bytes.saturating_sub(size);
        }
        Ok(out)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // A batch dropped without an answer (the writer stopped): nobody waits forever.
        self.done
            .finish(Err("the sqlite writer stopped before committing".to_owned()));
    }
}

/// The writer's own copy of every mailbox counter it touched: the truth, changed only
/// by what the writer does, written with each transaction.
#[derive(Default)]
pub(super) struct WriterCounters {
    cached: HashMap<DeviceId, (Counters, bool)>,
    touched: Vec<DeviceId>,
}

impl WriterCounters {
    fn get(&mut self, c: &Connection, device: &DeviceId) -> Result<&mut Counters, StoreError> {
        if !self.cached.contains_key(device) {
            let n = load_counters(c, device)?.unwrap_or_default();
            self.cached.insert(*device, (n, false));
        }
        let Some((n, touched)) = self.cached.get_mut(device) else {
            return Err(StoreError::Backend("writer counters vanished".to_owned()));
        };
        if !*touched {
            *touched = true;
            self.touched.push(*device);
        }
        Ok(n)
    }

    /// Subtract expired envelopes (the expiry pass runs on the writer).
    pub(super) fn expired(
        &mut self,
        c: &Connection,
        device: &DeviceId,
        count: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let n = self.get(c, device)?;
        n.count = n.count.saturating_sub(count);
        n.bytes = n.bytes.saturating_sub(bytes);
        Ok(())
    }

    /// Write the touched mailboxes' counters (inside the transaction); returns them for
    /// staging to pick up once committed.
    pub(super) fn write(
        &mut self,
        c: &Connection,
    ) -> Result<Vec<(DeviceId, Counters)>, StoreError> {
        let mut out = Vec::with_capacity(self.touched.len());
        for device in self.touched.drain(..) {
            let Some((n, touched)) = self.cached.get_mut(&device) else {
                continue;
            };
            *touched = false;
            let n = *n;
            c.prepare_cached(
                "UPDATE devices SET next_seq = ?2, pending_count = ?3, pending_bytes = ?4
                 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    dev(&device),
                    int(n.next_seq),
                    int(n.count),
                    int(n.bytes)
                ])
            })
            .map_err(backend)?;
            out.push((device, n));
        }
        Ok(out)
    }

    /// After a commit: keep the cache bounded (everything in it is on disk now).
    pub(super) fn committed(&mut self) {
        if self.cached.len() > MAX_CACHED_MAILBOXES {
            self.cached.clear();
        }
    }

    /// The transaction was rolled back: forget everything (reloaded on use).
    pub(super) fn reset(&mut self) {
        self.cached.clear();
        self.touched.clear();
    }
}

fn load_counters(c: &Connection, device: &DeviceId) -> Result<Option<Counters>, StoreError> {
    let row: Option<(i64, i64, i64)> = c
        .prepare_cached("SELECT next_seq, pending_count, pending_bytes FROM devices WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![dev(device)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(backend)?;
    row.map(|(next_seq, count, bytes)| {
        Ok(Counters {
            next_seq: uint(next_seq, "sequence number")?,
            count: uint(count, "pending count")?,
            bytes: uint(bytes, "pending bytes")?,
        })
    })
    .transpose()
}

/// The tombstone of an envelope acknowledged before it was ever written.
fn insert_tombstone(
    c: &Connection,
    h: &RoutingHeader,
    seq: u64,
    expires_ms: u64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO delivered (timestamp_ms, recipient, message_id, seq, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (timestamp_ms, recipient, message_id) DO NOTHING",
    )
    .and_then(|mut s| {
        s.execute(params![
            // Stored bit for bit (the sender's clock), as in `envelopes`.
            h.timestamp_ms as i64,
            dev(&h.recipient),
            msg(&h.message_id),
            int(seq),
            int(expires_ms)
        ])
    })
    .map_err(backend)?;
    Ok(())
}

/// The sequence number of a stored envelope or tombstone with this header's message id
/// (and timestamp: a repeat carries the header unchanged).
fn stored_seq(c: &Connection, h: &RoutingHeader) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = c
        .prepare_cached(
            "SELECT seq FROM envelopes
             WHERE timestamp_ms = ?1 AND recipient = ?2 AND message_id = ?3
             UNION ALL
             SELECT seq FROM delivered
             WHERE timestamp_ms = ?1 AND recipient = ?2 AND message_id = ?3
             LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row(
                params![h.timestamp_ms as i64, dev(&h.recipient), msg(&h.message_id)],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(backend)?;
    seq.map(|s| uint(s, "sequence number")).transpose()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Staged in batch `generation` at `index` of its inserts (being written if that
    /// is no longer the open batch).
    Staged { generation: u64, index: usize },
    /// Acknowledged while its batch was open; batch `generation` writes a tombstone.
    Cancelled { generation: u64 },
    /// Its acknowledgement is in batch `generation`.
    Acking { generation: u64 },
}

impl Phase {
    fn generation(self) -> u64 {
        match self {
            Self::Staged { generation, .. }
            | Self::Cancelled { generation }
            | Self::Acking { generation } => generation,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct IdState {
    seq: u64,
    size: u64,
    phase: Phase,
}

#[derive(Default)]
struct MailboxState {
    /// As of the last commit (from the writer).
    committed: Counters,
    /// The next sequence number to hand out.
    next_seq: u64,
    /// Staged envelopes not yet committed and not acknowledged: count and bytes.
    in_flight: (u64, u64),
    /// Set after a failed commit: reload before use.
    stale: bool,
    /// Staged, not acknowledged, not yet committed: what `pending` adds to the database.
    staged: BTreeMap<u64, Arc<Envelope>>,
    /// Every message id with work in an open or committing batch.
    ids: HashMap<MessageId, IdState>,
}

impl MailboxState {
    fn idle(&self) -> bool {
        self.staged.is_empty() && self.ids.is_empty()
    }
}

struct Inner {
    /// A read-only connection, to load a mailbox's counters the first time it is used;
    /// `None` once the store is closing.
    reader: Option<Connection>,
    boxes: HashMap<DeviceId, MailboxState>,
    open: Batch,
    /// The batch the writer is writing, if any.
    committing: Option<(u64, Arc<BatchDone>)>,
    stats: MailboxStats,
}

impl Inner {
    /// The commit that makes work of batch `generation` durable.
    fn done_of(&self, generation: u64) -> Durable {
        if generation == self.open.generation {
            return Durable::Batch(self.open.done.clone());
        }
        match &self.committing {
            Some((g, done)) if *g == generation => Durable::Batch(done.clone()),
            // Already committed.
            _ => Durable::Now,
        }
    }

    fn open_first(&mut self) -> bool {
        let first = self.open.is_empty();
        if first {
            self.open.opened = Some(Instant::now());
        }
        first
    }
}

/// The staged state of every mailbox, shared by callers and the writer thread.
pub(super) struct Mailboxes {
    inner: Mutex<Inner>,
    room: Arc<Semaphore>,
}

fn room_units(len: usize) -> u32 {
    let units = len
        .div_ceil(PERMIT_UNIT)
        .clamp(1, MAX_STAGED_BYTES / PERMIT_UNIT);
    u32::try_from(units).unwrap_or(u32::MAX)
}

impl Mailboxes {
    pub(super) fn new(reader: Connection) -> Self {
        Self {
            inner: Mutex::new(Inner {
                reader: Some(reader),
                boxes: HashMap::new(),
                open: Batch::new(1),
                committing: None,
                stats: MailboxStats::default(),
            }),
            room: Arc::new(Semaphore::new(MAX_STAGED_BYTES / PERMIT_UNIT)),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("mailbox state lock poisoned".to_owned()))
    }

    /// Close the read connection (the store is closing: the writer's connection must be
    /// the last one, so that it checkpoints the WAL).
    pub(super) fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.reader = None;
        }
    }

    pub(super) fn stats(&self) -> MailboxStats {
        self.inner.lock().map(|g| g.stats).unwrap_or_default()
    }

    /// Wait for room for an envelope of `len` body bytes in the staged bound.
    pub(super) async fn room(&self, len: usize) -> Result<OwnedSemaphorePermit, StoreError> {
        self.room
            .clone()
            .acquire_many_owned(room_units(len))
            .await
            .map_err(backend)
    }

    /// Stage `envelope` (see the module documentation).
    pub(super) fn stage(
        &self,
        envelope: Arc<Envelope>,
        expires_ms: u64,
        quota: Quota,
        on_staged: OnStaged,
        room: OwnedSemaphorePermit,
    ) -> Result<Staged<Enqueued>, StoreError> {
        let mut g = self.lock()?;
        let inner = &mut *g;
        let recipient = envelope.header.recipient;
        let message_id = envelope.header.message_id;
        let open_generation = inner.open.generation;
        let mb = mailbox(&mut inner.boxes, inner.reader.as_ref(), &recipient)?;
        if let Some(st) = mb.ids.get(&message_id).copied() {
            // In flight: a duplicate, durable with the batch that holds the original.
            return Ok(Staged {
                value: Enqueued {
                    seq: st.seq,
                    duplicate: true,
                },
                durable: inner.done_of(st.phase.generation()),
                wake: false,
            });
        }
        let count = mb.committed.count + mb.in_flight.0;
        let bytes = mb.committed.bytes + mb.in_flight.1;
        let size = envelope.body.len() as u64;
        let refusal = if count.saturating_add(1) > quota.max_count {
            Some(StoreError::QuotaExceeded {
                what: "pending envelopes",
                current: count,
                max: quota.max_count,
            })
        } else if bytes.saturating_add(size) > quota.max_bytes {
            Some(StoreError::QuotaExceeded {
                what: "pending bytes",
                current: bytes,
                max: quota.max_bytes,
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // A repeat of a stored envelope is still answered as such (a rare path: the
            // one place staging reads the database).
            let reader = inner
                .reader
                .as_ref()
                .ok_or_else(|| StoreError::Backend("the store is closing".to_owned()))?;
            return match stored_seq(reader, &envelope.header)? {
                Some(seq) => Ok(Staged {
                    value: Enqueued {
                        seq,
                        duplicate: true,
                    },
                    durable: Durable::Now,
                    wake: false,
                }),
                None => Err(refusal),
            };
        }
        let seq = mb.next_seq;
        mb.next_seq += 1;
        mb.in_flight.0 += 1;
        mb.in_flight.1 += size;
        let index = inner.open.inserts.len();
        mb.ids.insert(
            message_id,
            IdState {
                seq,
                size,
                phase: Phase::Staged {
                    generation: open_generation,
                    index,
                },
            },
        );
        mb.staged.insert(seq, envelope.clone());
        let wake = inner.open_first();
        inner.open.inserts.push(Insert {
            seq,
            envelope,
            expires_ms,
            cancelled: false,
            _room: room,
        });
        inner.stats.staged += 1;
        on_staged(seq);
        Ok(Staged {
            value: Enqueued {
                seq,
                duplicate: false,
            },
            durable: Durable::Insert(inner.open.done.clone(), index),
            wake,
        })
    }

    /// Acknowledge `message_id`, delivered to `device` as `seq` (true, once durable, if
    /// it was pending).
    pub(super) fn ack(
        &self,
        device: &DeviceId,
        message_id: &MessageId,
        seq: u64,
    ) -> Result<Staged<bool>, StoreError> {
        let mut g = self.lock()?;
        let inner = &mut *g;
        let not_pending = Staged {
            value: false,
            durable: Durable::Now,
            wake: false,
        };
        let open_generation = inner.open.generation;
        let mb = match mailbox(&mut inner.boxes, inner.reader.as_ref(), device) {
            Ok(mb) => mb,
            Err(StoreError::NotFound(_)) => return Ok(not_pending),
            Err(e) => return Err(e),
        };
        match mb.ids.get(message_id).copied() {
            Some(IdState {
                phase: Phase::Cancelled { .. } | Phase::Acking { .. },
                ..
            }) => return Ok(not_pending),
            Some(st) if st.seq != seq => return Ok(not_pending),
            Some(IdState {
                seq,
                size,
                phase: Phase::Staged { generation, index },
            }) if generation == open_generation => {
                // Still in the open batch: it is never written, only its tombstone.
                let Some(insert) = inner.open.inserts.get_mut(index) else {
                    return Err(StoreError::Backend("staged envelope vanished".to_owned()));
                };
                insert.cancelled = true;
                mb.ids.insert(
                    *message_id,
                    IdState {
                        seq,
                        size,
                        phase: Phase::Cancelled {
                            generation: open_generation,
                        },
                    },
                );
                mb.staged.remove(&seq);
                mb.in_flight.0 = mb.in_flight.0.saturating_sub(1);
                mb.in_flight.1 = mb.in_flight.1.saturating_sub(size);
                inner.stats.cancelled += 1;
                return Ok(Staged {
                    value: true,
                    durable: Durable::Batch(inner.open.done.clone()),
                    wake: false,
                });
            }
            Some(st) => {
                // Being written: the next batch deletes it.
                mb.staged.remove(&st.seq);
                mb.ids.insert(
                    *message_id,
                    IdState {
                        phase: Phase::Acking {
                            generation: open_generation,
                        },
                        ..st
                    },
                );
            }
            None => {
                // Only on disk, if anywhere: the writer finds out.
                mb.ids.insert(
                    *message_id,
                    IdState {
                        seq,
                        size: 0,
                        phase: Phase::Acking {
                            generation: open_generation,
                        },
                    },
                );
            }
        }
        let wake = inner.open_first();
        let index = inner.open.acks.len();
        inner.open.acks.push(DbAck {
            recipient: *device,
            seq,
            message_id: *message_id,
        });
        Ok(Staged {
            value: true,
            durable: Durable::Ack(inner.open.done.clone(), index),
            wake,
        })
    }

    /// Staged envelopes of `device` after `after_seq` (at most `limit`), to merge with
    /// what the database holds. Read this before the database (module documentation).
    pub(super) fn staged(&self, device: &DeviceId, after_seq: u64, limit: usize) -> Vec<Pending> {
        let Ok(g) = self.inner.lock() else {
            return Vec::new();
        };
        let Some(mb) = g.boxes.get(device) else {
            return Vec::new();
        };
        mb.staged
            .range(after_seq.saturating_add(1)..)
            .take(limit)
            .map(|(seq, e)| Pending {
                seq: *seq,
                envelope: Envelope::clone(e),
            })
            .collect()
    }

    /// When the writer should take the open batch: `None` if it is empty, else the end
    /// of its linger time (its start, if it is already large).
    pub(super) fn due(&self) -> Option<Instant> {
        let g = self.inner.lock().ok()?;
        let opened = g.open.opened?;
        if g.open.len() >= BATCH_LINGER_MAX_OPS {
            return Some(opened);
        }
        Some(opened + BATCH_LINGER)
    }

    /// The writer takes everything staged so far (`None` if nothing is).
    pub(super) fn take(&self) -> Option<Batch> {
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        if inner.open.is_empty() {
            return None;
        }
        let next = Batch::new(inner.open.generation + 1);
        let batch = std::mem::replace(&mut inner.open, next);
        inner.committing = Some((batch.generation, batch.done.clone()));
        if inner.boxes.len() > MAX_CACHED_MAILBOXES {
            let keep = MAX_CACHED_MAILBOXES * 3 / 4;
            let mut excess = inner.boxes.len() - keep;
            inner.boxes.retain(|_, mb| {
                if excess > 0 && mb.idle() {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        Some(batch)
    }

    /// The writer finished a transaction, with or without a batch: committed (with the
    /// writer's findings and the mailbox counters it wrote), or rolled back.
    pub(super) fn finish(
        &self,
        batch: Option<Batch>,
        result: Result<(Outcomes, Vec<(DeviceId, Counters)>), String>,
    ) {
        let Ok(mut g) = self.inner.lock() else {
            if let Some(b) = batch {
                b.done.finish(result.map(|(o, _)| o));
            }
            return;
        };
        let inner = &mut *g;
        if let Some(batch) = &batch {
            let generation = batch.generation;
            inner.committing = None;
            for i in &batch.inserts {
                let h = &i.envelope.header;
                let Some(mb) = inner.boxes.get_mut(&h.recipient) else {
                    continue;
                };
                mb.staged.remove(&i.seq);
                if !i.cancelled {
                    mb.in_flight.0 = mb.in_flight.0.saturating_sub(1);
                    mb.in_flight.1 = mb.in_flight.1.saturating_sub(i.envelope.body.len() as u64);
                }
                if mb
                    .ids
                    .get(&h.message_id)
                    .is_some_and(|s| s.phase.generation() == generation)
                {
                    mb.ids.remove(&h.message_id);
                }
            }
            for a in &batch.acks {
                if let Some(mb) = inner.boxes.get_mut(&a.recipient) {
                    if mb
                        .ids
                        .get(&a.message_id)
                        .is_some_and(|s| s.phase.generation() == generation)
                    {
                        mb.ids.remove(&a.message_id);
                    }
                }
            }
        }
        match result {
            Ok((outcomes, counters)) => {
                for (device, n) in counters {
                    if let Some(mb) = inner.boxes.get_mut(&device) {
                        mb.committed = n;
                        mb.next_seq = mb.next_seq.max(n.next_seq);
                    }
                }
                if let Some(b) = batch {
                    b.done.finish(Ok(outcomes));
                }
            }
            Err(error) => {
                let Some(batch) = batch else {
                    // Nothing staged was in it; nothing of it was committed.
                    return;
                };
                // Nothing of this batch was written, and the open batch was staged on top
                // of it: fail that too, and start again from the database, keeping
                // sequence numbers moving forward.
                let next = Batch::new(inner.open.generation + 1);
                let open = std::mem::replace(&mut inner.open, next);
                for mb in inner.boxes.values_mut() {
                    mb.staged.clear();
                    mb.ids.clear();
                    mb.in_flight = (0, 0);
                    mb.stale = true;
                }
                open.done
                    .finish(Err(format!("an earlier batch failed: {error}")));
                batch.done.finish(Err(error));
            }
        }
    }
}

/// The staged state of `device`'s mailbox, loaded from the database the first time.
/// `NotFound("device")` if there is no such device.
fn mailbox<'a>(
    boxes: &'a mut HashMap<DeviceId, MailboxState>,
    reader: Option<&Connection>,
    device: &DeviceId,
) -> Result<&'a mut MailboxState, StoreError> {
    let reload = boxes.get(device).is_none_or(|mb| mb.stale);
    if reload {
        let reader =
            reader.ok_or_else(|| StoreError::Backend("the store is closing".to_owned()))?;
        let Some(loaded) = load_counters(reader, device)? else {
            return Err(StoreError::NotFound("device"));
        };
        let mb = boxes.entry(*device).or_default();
        mb.committed = loaded;
        // Sequence numbers never go back, even past a failed batch.
        mb.next_seq = mb.next_seq.max(loaded.next_seq);
        mb.stale = false;
    }
    boxes
        .get_mut(device)
        .ok_or_else(|| StoreError::Backend("mailbox state vanished".to_owned()))
}
