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
//! for the write.
//!
//! An envelope handed to an online recipient is then *held* for up to [`ONLINE_HOLD`]:
//! if the recipient acknowledges it meanwhile, which an online client does within a few
//! milliseconds, the envelope is never written, only its tombstone (which keeps a retry
//! by the sender recognisable as a duplicate). Everything else (envelopes for offline
//! recipients, tombstones, acknowledgements of stored envelopes) is written after
//! [`BATCH_LINGER`]. The writer takes whatever is due whenever it is free, so batches
//! grow with the load and one `fsync` serves all of them. Holding costs the sender's
//! `accepted` at most the hold time; the recipient already has the envelope.
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
//!   flight, for the quota check and the next sequence number. A repeat (same message
//!   id and timestamp) of an envelope staged or in flight is recognised at once; a
//!   same-id envelope with another timestamp is a new envelope, staged without an
//!   entry of its own in the per-id state (its acknowledgement finds it by sequence
//!   number). A repeat of one that is only on disk
//!   is recognised by the writer: the sender is then told "duplicate" with the original
//!   number, but the recipient has already been offered the copy (under a number that
//!   is never stored) and drops it by message id, as every client must.
//! * `pending` reads the staged envelopes first and the database second; an envelope
//!   leaves the staged set only after it was committed, so a reader never misses one
//!   that moves from memory to disk in between (it may see it twice; the merge keeps
//!   one).
//! * If a commit fails, everything staged is answered with the error (those senders
//!   were never told "accepted"), and both sides reload their counters from the
//!   database; sequence numbers never go back, so a connected recipient sees a gap and
//!   reads its mailbox again.
//! * Staged envelope bytes are bounded by [`MAX_STAGED_BYTES`]: `enqueue` waits for
//!   room when the disk falls behind, and held envelopes are written early when the
//!   staged bytes pass half of it.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
/// How long an envelope handed to an online recipient waits for its acknowledgement
/// before it is written. An online client acknowledges within milliseconds; if it
/// does within this time, the envelope is never written. Only the sender's `accepted`
/// waits; the recipient already has the envelope.
pub const ONLINE_HOLD: Duration = Duration::from_millis(50);
/// How long everything else waits to share a commit with what follows it, when the
/// writer is not busy anyway.
pub const BATCH_LINGER: Duration = Duration::from_millis(2);
/// Envelope rows one expiry pass removes at most (the sweeper runs again later).
pub const MAX_EXPIRED_PER_PASS: usize = 50_000;

/// Counters of staging, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Envelopes staged.
    pub staged: u64,
    /// Envelopes acknowledged before they were written (only a tombstone was).
    pub cancelled: u64,
}

/// Per-mailbox counters, as stored in `devices`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    next_seq: u64,
    count: u64,
    bytes: u64,
}

/// A committed transaction's findings (per operation of its batch, in order) and the
/// mailbox counters it wrote.
pub(super) type Committed = (Vec<Found>, Vec<(DeviceId, Counters)>);

/// What the writer found for one staged operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// The envelope (or its tombstone) was written.
    Written,
    /// The message id was already stored or acknowledged as this sequence number.
    Duplicate(u64),
    /// An acknowledgement: whether the envelope was pending.
    Acked(bool),
}

/// The completion of one staged operation: resolved once it is committed (or failed).
pub(super) struct Slot {
    result: OnceLock<Result<Found, String>>,
    notify: Notify,
}

impl Slot {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            result: OnceLock::new(),
            notify: Notify::new(),
        })
    }

    async fn wait(&self) -> Result<Found, StoreError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.result.get() {
                return r
                    .clone()
                    .map_err(|e| StoreError::Backend(format!("commit failed: {e}")));
            }
            notified.await;
        }
    }

    fn finish(&self, result: Result<Found, String>) {
        let _ = self.result.set(result);
        self.notify.notify_waiters();
    }
}

/// An operation staged: its provisional answer and what makes it final.
pub(super) struct Staged<T> {
    value: T,
    durable: Option<Arc<Slot>>,
    /// Something became due sooner than the writer expects: wake it.
    pub(super) wake: bool,
}

impl Staged<Enqueued> {
    /// The final answer, once durable.
    pub(super) async fn enqueued(self) -> Result<Enqueued, StoreError> {
        let Some(slot) = self.durable else {
            return Ok(self.value);
        };
        Ok(match slot.wait().await? {
            // The original of an in-flight repeat may itself turn out to be a repeat.
            Found::Duplicate(seq) => Enqueued {
                seq,
                duplicate: true,
            },
            _ => self.value,
        })
    }
}

impl Staged<bool> {
    /// The final answer, once durable.
    pub(super) async fn acked(self) -> Result<bool, StoreError> {
        let Some(slot) = self.durable else {
            return Ok(self.value);
        };
        Ok(match slot.wait().await? {
            Found::Acked(found) => found,
            // A cancelled envelope: its tombstone was written (or it was a repeat).
            Found::Written | Found::Duplicate(_) => self.value,
        })
    }
}

struct Insert {
    seq: u64,
    envelope: Arc<Envelope>,
    expires_ms: u64,
    /// When it is written if not acknowledged by then.
    due: Instant,
    /// Acknowledged before it was written: write a tombstone instead.
    cancelled: bool,
    slot: Arc<Slot>,
    /// Room in the staged-bytes bound, given back when it is done.
    _room: OwnedSemaphorePermit,
}

struct DbAck {
    recipient: DeviceId,
    seq: u64,
    message_id: MessageId,
    slot: Arc<Slot>,
}

/// Work the writer took, written in one transaction.
pub(super) struct Batch {
    generation: u64,
    inserts: Vec<Insert>,
    acks: Vec<DbAck>,
}

impl Batch {
    /// Operations in the batch, for the writer's counters.
    pub(super) fn len(&self) -> usize {
        self.inserts.len() + self.acks.len()
    }

    /// Envelopes in the batch acknowledged before they were written.
    pub(super) fn cancelled(&self) -> u64 {
        self.inserts.iter().filter(|i| i.cancelled).count() as u64
    }

    /// Write the batch inside the writer's open transaction, keeping `counters` (the
    /// writer's own) in step. Returns what it found, in the order of inserts then acks.
    pub(super) fn write(
        &self,
        c: &Connection,
        counters: &mut WriterCounters,
    ) -> Result<Vec<Found>, StoreError> {
        let mut out = Vec::with_capacity(self.len());
        for i in &self.inserts {
            let h = &i.envelope.header;
            let n = counters.get(c, &h.recipient)?;
            n.next_seq = n.next_seq.max(i.seq.saturating_add(1));
            if let Some(seq) = stored_seq(c, h)? {
                // Already stored or acknowledged: nothing is written.
                out.push(Found::Duplicate(seq));
                continue;
            }
            out.push(Found::Written);
            if i.cancelled {
                insert_tombstone(
                    c,
                    h.timestamp_ms as i64,
                    &h.recipient,
                    &h.message_id,
                    i.seq,
                    int(i.expires_ms),
                )?;
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
                out.push(Found::Acked(false));
                continue;
            };
            out.push(Found::Acked(true));
            let size = uint(size, "size")?;
            insert_tombstone(c, timestamp_ms, &a.recipient, &a.message_id, a.seq, expires)?;
            let n = counters.get(c, &a.recipient)?;
            n.count = n.count.saturating_sub(1);
            n.bytes = n.bytes.saturating_sub(size);
        }
        Ok(out)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Dropped without an answer (the writer stopped): nobody waits forever.
        let stopped = || Err("the sqlite writer stopped before committing".to_owned());
        for i in &self.inserts {
            i.slot.finish(stopped());
        }
        for a in &self.acks {
            a.slot.finish(stopped());
        }
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

fn insert_tombstone(
    c: &Connection,
    timestamp_ms: i64,
    recipient: &DeviceId,
    message_id: &MessageId,
    seq: u64,
    expires_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO delivered (timestamp_ms, recipient, message_id, seq, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (timestamp_ms, recipient, message_id) DO NOTHING",
    )
    .and_then(|mut s| {
        s.execute(params![
            // Stored bit for bit (the sender's clock), as in `envelopes`.
            timestamp_ms,
            dev(recipient),
            msg(message_id),
            int(seq),
            expires_ms
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
    /// Staged, not yet taken: `ticket` locates it in the open queue.
    Open { ticket: u64 },
    /// Acknowledged before it was taken (its tombstone is written).
    Cancelled { ticket: u64 },
    /// Taken by the writer in batch `generation` (its envelope or tombstone).
    Writing { generation: u64 },
    /// Its acknowledgement is queued (`None`) or in batch `generation`.
    Acking { generation: Option<u64> },
}

#[derive(Clone)]
struct IdState {
    seq: u64,
    /// The sender's timestamp of the staged envelope (with the message id, what
    /// recognises a repeat); `None` for an acknowledgement of an envelope only on disk.
    timestamp_ms: Option<u64>,
    size: u64,
    phase: Phase,
    /// Completes when what this id waits for is durable.
    slot: Arc<Slot>,
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
    /// Staged, not acknowledged, not yet committed: what `pending` adds to the database,
    /// by sequence number, with the writer ticket of its insert.
    staged: BTreeMap<u64, (u64, Arc<Envelope>)>,
    /// Every message id with work staged or being written.
    ids: HashMap<MessageId, IdState>,
}

impl MailboxState {
    fn idle(&self) -> bool {
        self.staged.is_empty() && self.ids.is_empty()
    }
}

struct Inner {
    /// A read-only connection, to load a mailbox's counters the first time it is used
    /// (and to answer a repeat refused by the quota); `None` once the store is closing.
    reader: Option<Connection>,
    boxes: HashMap<DeviceId, MailboxState>,
    /// Staged envelopes not yet taken, in staging order; `None` once taken early.
    open: VecDeque<Option<Insert>>,
    /// Ticket of `open[0]`.
    first_ticket: u64,
    /// Acknowledgements of stored (or being written) envelopes, not yet taken.
    acks: Vec<DbAck>,
    /// The earliest time something staged is due to be written.
    due: Option<Instant>,
    /// Number of the next batch.
    generation: u64,
    stats: MailboxStats,
}

impl Inner {
    /// Something must be written by `at`: returns true if that is sooner than before.
    fn due_by(&mut self, at: Instant) -> bool {
        match self.due {
            Some(d) if d <= at => false,
            _ => {
                self.due = Some(at);
                true
            }
        }
    }

    fn open_mut(&mut self, ticket: u64) -> Option<&mut Insert> {
        let i = usize::try_from(ticket.checked_sub(self.first_ticket)?).ok()?;
        self.open.get_mut(i)?.as_mut()
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
                open: VecDeque::new(),
                first_ticket: 0,
                acks: Vec::new(),
                due: None,
                generation: 1,
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
        let timestamp_ms = envelope.header.timestamp_ms;
        let mb = mailbox(&mut inner.boxes, inner.reader.as_ref(), &recipient)?;
        // Another envelope with this id is in flight (another timestamp, or an
        // acknowledgement of one on disk): this one is staged without an entry in `ids`,
        // and the writer tells whether it is a repeat of what is on disk.
        let tracked = mb.ids.get(&message_id);
        let untracked = tracked.is_some_and(|st| st.timestamp_ms != Some(timestamp_ms));
        if let Some(st) = tracked.filter(|_| !untracked) {
            // In flight: a repeat, durable with the original.
            return Ok(Staged {
                value: Enqueued {
                    seq: st.seq,
                    duplicate: true,
                },
                durable: Some(st.slot.clone()),
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
            // A repeat of a stored envelope is still answered as such (the one place
            // staging reads the database; a refusal is rare).
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
                    durable: None,
                    wake: false,
                }),
                None => Err(refusal),
            };
        }
        let seq = mb.next_seq;
        mb.next_seq += 1;
        mb.in_flight.0 += 1;
        mb.in_flight.1 += size;
        let ticket = inner.first_ticket + inner.open.len() as u64;
        let slot = Slot::new();
        if !untracked {
            mb.ids.insert(
                message_id,
                IdState {
                    seq,
                    timestamp_ms: Some(timestamp_ms),
                    size,
                    phase: Phase::Open { ticket },
                    slot: slot.clone(),
                },
            );
        }
        mb.staged.insert(seq, (ticket, envelope.clone()));
        inner.stats.staged += 1;
        let online = on_staged(seq);
        // Held for an online recipient's acknowledgement; otherwise it shares the next
        // commit.
        let due = Instant::now() + if online { ONLINE_HOLD } else { BATCH_LINGER };
        let wake = inner.due_by(due);
        inner.open.push_back(Some(Insert {
            seq,
            envelope,
            expires_ms,
            due,
            cancelled: false,
            slot: slot.clone(),
            _room: room,
        }));
        Ok(Staged {
            value: Enqueued {
                seq,
                duplicate: false,
            },
            durable: Some(slot),
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
            durable: None,
            wake: false,
        };
        let mb = match mailbox(&mut inner.boxes, inner.reader.as_ref(), device) {
            Ok(mb) => mb,
            Err(StoreError::NotFound(_)) => return Ok(not_pending),
            Err(e) => return Err(e),
        };
        let Some(st) = mb.ids.get(message_id).cloned() else {
            // Only on disk, if anywhere: the writer finds out.
            let slot = Slot::new();
            mb.ids.insert(
                *message_id,
                IdState {
                    seq,
                    timestamp_ms: None,
                    size: 0,
                    phase: Phase::Acking { generation: None },
                    slot: slot.clone(),
                },
            );
            return Ok(self.queue_ack(inner, device, message_id, seq, slot));
        };
        if st.seq != seq {
            // Another copy of the id (staged without an entry in `ids`, or on disk).
            return Ok(self.ack_untracked(inner, device, message_id, seq));
        }
        match st.phase {
            Phase::Cancelled { .. } | Phase::Acking { .. } => Ok(not_pending),
            Phase::Open { ticket } => {
                // Not yet written: it never will be, only its tombstone.
                mb.staged.remove(&seq);
                mb.in_flight.0 = mb.in_flight.0.saturating_sub(1);
                mb.in_flight.1 = mb.in_flight.1.saturating_sub(st.size);
                if let Some(state) = mb.ids.get_mut(message_id) {
                    state.phase = Phase::Cancelled { ticket };
                }
                let Some(insert) = inner.open_mut(ticket) else {
                    return Err(StoreError::Backend("staged envelope vanished".to_owned()));
                };
                insert.cancelled = true;
                inner.stats.cancelled += 1;
                let wake = inner.due_by(Instant::now() + BATCH_LINGER);
                Ok(Staged {
                    value: true,
                    durable: Some(st.slot),
                    wake,
                })
            }
            Phase::Writing { .. } => {
                // Being written: the next batch deletes it.
                mb.staged.remove(&seq);
                let slot = Slot::new();
                if let Some(state) = mb.ids.get_mut(message_id) {
                    state.phase = Phase::Acking { generation: None };
                    state.slot = slot.clone();
                }
                Ok(self.queue_ack(inner, device, message_id, seq, slot))
            }
        }
    }

    /// Acknowledge `seq`, an envelope with an id whose entry in `ids` is about another
    /// envelope: still open (not taken by the writer), it is cancelled as an envelope
    /// with its own entry would be; otherwise the writer deletes it (or finds nothing).
    fn ack_untracked(
        &self,
        inner: &mut Inner,
        device: &DeviceId,
        message_id: &MessageId,
        seq: u64,
    ) -> Staged<bool> {
        // Found through its ticket, not by a scan of everything open: this runs under
        // the lock every send and ack takes, for as many copies as a sender makes.
        let ticket = inner
            .boxes
            .get(device)
            .and_then(|mb| mb.staged.get(&seq))
            .map(|(ticket, _)| *ticket);
        let open = ticket.and_then(|t| inner.open_mut(t)).filter(|i| {
            i.seq == seq
                && !i.cancelled
                && i.envelope.header.recipient == *device
                && i.envelope.header.message_id == *message_id
        });
        if let Some(insert) = open {
            insert.cancelled = true;
            let size = insert.envelope.body.len() as u64;
            let slot = insert.slot.clone();
            if let Some(mb) = inner.boxes.get_mut(device) {
                mb.staged.remove(&seq);
                mb.in_flight.0 = mb.in_flight.0.saturating_sub(1);
                mb.in_flight.1 = mb.in_flight.1.saturating_sub(size);
            }
            inner.stats.cancelled += 1;
            let wake = inner.due_by(Instant::now() + BATCH_LINGER);
            return Staged {
                value: true,
                durable: Some(slot),
                wake,
            };
        }
        if let Some(mb) = inner.boxes.get_mut(device) {
            mb.staged.remove(&seq);
        }
        self.queue_ack(inner, device, message_id, seq, Slot::new())
    }

    fn queue_ack(
        &self,
        inner: &mut Inner,
        device: &DeviceId,
        message_id: &MessageId,
        seq: u64,
        slot: Arc<Slot>,
    ) -> Staged<bool> {
        inner.acks.push(DbAck {
            recipient: *device,
            seq,
            message_id: *message_id,
            slot: slot.clone(),
        });
        let wake = inner.due_by(Instant::now() + BATCH_LINGER);
        Staged {
            value: true,
            durable: Some(slot),
            wake,
        }
    }

    /// Staged envelopes of `device` after `after_seq` (at most `limit`), to merge with
    /// what the database holds. Read this before the database (module documentation).
    pub(super) fn staged(&self, device: &DeviceId, after_seq: u64, limit: usize) -> Vec<Pending> {
        // Only the `Arc`s under the lock; the bodies are copied after it is released.
        let shared: Vec<(u64, Arc<Envelope>)> = {
            let Ok(g) = self.inner.lock() else {
                return Vec::new();
            };
            let Some(mb) = g.boxes.get(device) else {
                return Vec::new();
            };
            mb.staged
                .range(after_seq.saturating_add(1)..)
                .take(limit)
                .map(|(seq, (_, e))| (*seq, e.clone()))
                .collect()
        };
        shared
            .into_iter()
            .map(|(seq, e)| Pending {
                seq,
                envelope: Envelope::clone(&e),
            })
            .collect()
    }

    /// When the writer should next take something: `None` if nothing is staged.
    pub(super) fn due(&self) -> Option<Instant> {
        self.inner.lock().ok()?.due
    }

    /// The writer takes everything due (everything, if `all`; held envelopes too when
    /// the staged bytes pass half their bound). `None` if nothing is.
    pub(super) fn take(&self, all: bool) -> Option<Batch> {
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        let now = Instant::now();
        let pressed = self.room.available_permits() < MAX_STAGED_BYTES / PERMIT_UNIT / 2;
        let generation = inner.generation;
        let mut inserts = Vec::new();
        let mut next_due = None::<Instant>;
        for entry in inner.open.iter_mut() {
            let Some(i) = entry else { continue };
            if all || pressed || i.cancelled || i.due <= now {
                if let Some(i) = entry.take() {
                    inserts.push(i);
                }
            } else {
                next_due = Some(next_due.map_or(i.due, |d| d.min(i.due)));
            }
        }
        while matches!(inner.open.front(), Some(None)) {
            inner.open.pop_front();
            inner.first_ticket += 1;
        }
        inner.due = next_due;
        let acks = std::mem::take(&mut inner.acks);
        if inserts.is_empty() && acks.is_empty() {
            return None;
        }
        inner.generation += 1;
        for i in &inserts {
            if let Some(mb) = inner.boxes.get_mut(&i.envelope.header.recipient) {
                if let Some(st) = mb.ids.get_mut(&i.envelope.header.message_id) {
                    if st.seq == i.seq
                        && matches!(st.phase, Phase::Open { .. } | Phase::Cancelled { .. })
                    {
                        st.phase = Phase::Writing { generation };
                    }
                }
            }
        }
        for a in &acks {
            if let Some(mb) = inner.boxes.get_mut(&a.recipient) {
                if let Some(st) = mb.ids.get_mut(&a.message_id) {
                    if st.seq == a.seq && st.phase == (Phase::Acking { generation: None }) {
                        st.phase = Phase::Acking {
                            generation: Some(generation),
                        };
                    }
                }
            }
        }
        if inner.boxes.len() > MAX_CACHED_MAILBOXES {
            let keep = MAX_CACHED_MAILBOXES * 3 / 4;
            let mut excess = inner.boxes.len() - keep;
            inner.boxes.retain(|_, mb| {
                // A stale mailbox (after a failed batch) keeps the sequence numbers it
                // handed out; reloaded from disk it would hand them out again.
                if excess > 0 && mb.idle() && !mb.stale {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        Some(Batch {
            generation,
            inserts,
            acks,
        })
    }

    /// The writer finished a transaction, with or without a batch: committed (with what
    /// it found for each operation of the batch and the mailbox counters it wrote), or
    /// rolled back.
    pub(super) fn finish(&self, batch: Option<Batch>, result: Result<Committed, String>) {
        let Ok(mut g) = self.inner.lock() else {
            // Dropping the batch answers its operations with an error.
            return;
        };
        let inner = &mut *g;
        let Some(mut batch) = batch else {
            if let Ok((_, counters)) = result {
                apply_counters(inner, counters);
            }
            return;
        };
        let generation = batch.generation;
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
                .is_some_and(|s| s.seq == i.seq && s.phase == Phase::Writing { generation })
            {
                mb.ids.remove(&h.message_id);
            }
        }
        for a in &batch.acks {
            if let Some(mb) = inner.boxes.get_mut(&a.recipient) {
                if mb.ids.get(&a.message_id).is_some_and(|s| {
                    s.seq == a.seq
                        && s.phase
                            == Phase::Acking {
                                generation: Some(generation),
                            }
                }) {
                    mb.ids.remove(&a.message_id);
                }
            }
        }
        match result {
            Ok((found, counters)) => {
                apply_counters(inner, counters);
                let mut found = found.into_iter();
                for i in batch.inserts.drain(..) {
                    i.slot.finish(Ok(found.next().unwrap_or(Found::Written)));
                }
                for a in batch.acks.drain(..) {
                    a.slot
                        .finish(Ok(found.next().unwrap_or(Found::Acked(false))));
                }
            }
            Err(error) => {
                // Nothing of this batch was written, and what is still staged was staged
                // on top of it: fail that too, and start again from the database,
                // keeping sequence numbers moving forward.
                let earlier = format!("an earlier batch failed: {error}");
                for i in inner.open.drain(..).flatten() {
                    i.slot.finish(Err(earlier.clone()));
                }
                inner.first_ticket = 0;
                for a in inner.acks.drain(..) {
                    a.slot.finish(Err(earlier.clone()));
                }
                inner.due = None;
                for mb in inner.boxes.values_mut() {
                    mb.staged.clear();
                    mb.ids.clear();
                    mb.in_flight = (0, 0);
                    mb.stale = true;
                }
                for i in batch.inserts.drain(..) {
                    i.slot.finish(Err(error.clone()));
                }
                for a in batch.acks.drain(..) {
                    a.slot.finish(Err(error.clone()));
                }
            }
        }
    }
}

fn apply_counters(inner: &mut Inner, counters: Vec<(DeviceId, Counters)>) {
    for (device, n) in counters {
        if let Some(mb) = inner.boxes.get_mut(&device) {
            mb.committed = n;
            mb.next_seq = mb.next_seq.max(n.next_seq);
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
