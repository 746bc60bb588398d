//! Mailboxes of the SQLite store: envelopes are *staged* in memory by the caller and
//! *committed* in batches by the writer thread.
//!
//! # Why two steps
//!
//! A sent envelope is acknowledged to its sender only once it is durable, but nothing
//! requires an online recipient to wait for the disk: it may get the envelope as soon as
//! the relay has decided to keep it. Staging decides (duplicate check, quota, sequence
//! number) under one lock, makes the envelope visible to [`Mailboxes::pending`] and
//! calls the relay's hook, which pushes it; the sender's answer waits for the commit.
//!
//! The writer takes everything staged so far as one [`Batch`] whenever it is free, so
//! batches grow with the load and one `fsync` is shared by all of them. An envelope
//! whose recipient acknowledges it while it is still in the open batch (the common case
//! for an online recipient under load) is never written: the batch writes only its
//! tombstone, which keeps a retry by the sender recognisable as a duplicate. Under load
//! this removes the insert, the delete and most of the WAL traffic of a message.
//!
//! # Consistency
//!
//! * Per-recipient counters (`next_seq`, `pending_count`, `pending_bytes`) are cached
//!   here once loaded; the writer is the only one that writes them, as absolute values
//!   taken together with the batch, so the database always holds the counters that
//!   match its rows.
//! * `pending` reads the staged envelopes first and the database second, and an
//!   envelope leaves the staged set only after its batch committed, so a reader never
//!   misses one that moves from memory to disk in between (it may see it twice; the
//!   merge keeps one).
//! * If a commit fails, every staged envelope of that batch and of the open batch is
//!   answered with the error (those senders were never told "accepted"), and the cached
//!   counters are reloaded from the database; sequence numbers never go back, so a
//!   connected recipient sees a gap and reads its mailbox again.
//! * Staged envelope bytes are bounded by [`MAX_STAGED_BYTES`]: `enqueue` waits for
//!   room when the disk falls behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rusqlite::{params, Connection, OptionalExtension};
use sealpost_protocol::envelope::{Envelope, MessageId};
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

/// The end of one batch's commit, awaited by every operation in it.
pub(super) struct BatchDone {
    result: OnceLock<Result<(), String>>,
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
    pub(super) async fn wait(&self) -> Result<(), StoreError> {
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

    fn finish(&self, result: Result<(), String>) {
        let _ = self.result.set(result);
        self.notify.notify_waiters();
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
    message_id: MessageId,
}

/// Staged work handed to the writer in one piece.
pub(super) struct Batch {
    generation: u64,
    inserts: Vec<Insert>,
    acks: Vec<DbAck>,
    /// Absolute counters of every mailbox this batch changed, taken with it.
    counters: Vec<(DeviceId, Counters)>,
    done: Arc<BatchDone>,
}

impl Batch {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            inserts: Vec::new(),
            acks: Vec::new(),
            counters: Vec::new(),
            done: BatchDone::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.acks.is_empty()
    }

    /// Write the batch inside the writer's open transaction.
    pub(super) fn write(&self, c: &Connection) -> Result<(), StoreError> {
        for i in &self.inserts {
            let h = &i.envelope.header;
            if i.cancelled {
                insert_tombstone(c, &h.recipient, &h.message_id, i.seq, i.expires_ms)?;
                continue;
            }
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
                    int(i.envelope.body.len() as u64),
                    int(i.expires_ms)
                ])
            })
            .map_err(backend)?;
        }
        for a in &self.acks {
            let row: Option<(i64, i64)> = c
                .prepare_cached(
                    "DELETE FROM envelopes WHERE recipient = ?1 AND message_id = ?2
                     RETURNING seq, expires_ms",
                )
                .and_then(|mut s| {
                    s.query_row(params![dev(&a.recipient), msg(&a.message_id)], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                })
                .map_err(backend)?;
            // None: the row expired in the meantime (the expiry pass left the counters
            // to this acknowledgement).
            if let Some((seq, expires)) = row {
                let seq = uint(seq, "sequence number")?;
                let expires = uint(expires, "expiry")?;
                insert_tombstone(c, &a.recipient, &a.message_id, seq, expires)?;
            }
        }
        for (device, n) in &self.counters {
            c.prepare_cached(
                "UPDATE devices SET next_seq = ?2, pending_count = ?3, pending_bytes = ?4
                 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    dev(device),
                    int(n.next_seq),
                    int(n.count),
                    int(n.bytes)
                ])
            })
            .map_err(backend)?;
        }
        Ok(())
    }

    /// Operations in the batch, for the writer's counters.
    pub(super) fn len(&self) -> usize {
        self.inserts.len() + self.acks.len()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // A batch dropped without an answer (the writer stopped): nobody waits forever.
        self.done
            .finish(Err("the sqlite writer stopped before committing".to_owned()));
    }
}

fn insert_tombstone(
    c: &Connection,
    recipient: &DeviceId,
    message_id: &MessageId,
    seq: u64,
    expires_ms: u64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO delivered (recipient, message_id, seq, expires_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (recipient, message_id) DO NOTHING",
    )
    .and_then(|mut s| {
        s.execute(params![
            dev(recipient),
            msg(message_id),
            int(seq),
            int(expires_ms)
        ])
    })
    .map_err(backend)?;
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    next_seq: u64,
    count: u64,
    bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Staged in batch `generation` at `index` of its inserts (being committed if that
    /// is no longer the open batch).
    Staged { generation: u64, index: usize },
    /// Acknowledged while its batch was open; batch `generation` writes a tombstone.
    Cancelled { generation: u64 },
    /// Its delete is in batch `generation`.
    Acking { generation: u64 },
}

#[derive(Clone, Copy, Debug)]
struct IdState {
    seq: u64,
    phase: Phase,
}

#[derive(Default)]
struct MailboxState {
    counters: Counters,
    /// Changed since the writer last took the counters.
    dirty: bool,
    /// Set after a failed commit: reload count and bytes from the database before use.
    stale: bool,
    /// Staged, not acknowledged, not yet committed: what `pending` adds to the database.
    staged: BTreeMap<u64, Arc<Envelope>>,
    /// Every message id with work in an open or committing batch.
    ids: HashMap<MessageId, IdState>,
}

impl MailboxState {
    fn idle(&self) -> bool {
        !self.dirty && self.staged.is_empty() && self.ids.is_empty()
    }
}

struct Inner {
    /// A read-only connection for the checks staging makes (duplicates, counters);
    /// `None` once the store is closing.
    reader: Option<Connection>,
    boxes: HashMap<DeviceId, MailboxState>,
    /// Mailboxes whose counters changed since the writer last took them.
    dirty: Vec<DeviceId>,
    open: Batch,
    /// The batch the writer is committing, if any.
    committing: Option<(u64, Arc<BatchDone>)>,
    stats: MailboxStats,
}

impl Inner {
    /// The commit that makes work of batch `generation` durable.
    fn done_of(&self, generation: u64) -> Option<Arc<BatchDone>> {
        if generation == self.open.generation {
            return Some(self.open.done.clone());
        }
        match &self.committing {
            Some((g, done)) if *g == generation => Some(done.clone()),
            // Already committed.
            _ => None,
        }
    }
}

/// What staging decided.
pub(super) struct Staged<T> {
    /// The answer, once `durable` (if any) resolved.
    pub(super) value: T,
    /// The batch to wait for, if the answer depends on a commit.
    pub(super) durable: Option<Arc<BatchDone>>,
    /// The open batch was empty: wake the writer.
    pub(super) wake: bool,
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
                dirty: Vec::new(),
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
        let recipient = envelope.header.recipient;
        let message_id = envelope.header.message_id;
        let known = {
            let inner = &mut *g;
            let mb = mailbox(&mut inner.boxes, reader(&inner.reader)?, &recipient)?;
            mb.ids.get(&message_id).copied()
        };
        if let Some(st) = known {
            // Staged, being committed, or acknowledged and not yet committed: a duplicate,
            // durable with the batch that holds the original.
            let generation = match st.phase {
                Phase::Staged { generation, .. }
                | Phase::Cancelled { generation }
                | Phase::Acking { generation } => generation,
            };
            return Ok(Staged {
                value: Enqueued {
                    seq: st.seq,
                    duplicate: true,
                },
                durable: g.done_of(generation),
                wake: false,
            });
        }
        if let Some(seq) = stored_seq(reader(&g.reader)?, &recipient, &message_id)? {
            return Ok(Staged {
                value: Enqueued {
                    seq,
                    duplicate: true,
                },
                durable: None,
                wake: false,
            });
        }
        let inner = &mut *g;
        let open_generation = inner.open.generation;
        let mb = mailbox(&mut inner.boxes, reader(&inner.reader)?, &recipient)?;
        let n = &mut mb.counters;
        if n.count.saturating_add(1) > quota.max_count {
            return Err(StoreError::QuotaExceeded {
                what: "pending envelopes",
                current: n.count,
                max: quota.max_count,
            });
        }
        let size = envelope.body.len() as u64;
        if n.bytes.saturating_add(size) > quota.max_bytes {
            return Err(StoreError::QuotaExceeded {
                what: "pending bytes",
                current: n.bytes,
                max: quota.max_bytes,
            });
        }
        let seq = n.next_seq;
        n.next_seq += 1;
        n.count += 1;
        n.bytes += size;
        mark_dirty(&mut inner.dirty, mb, &recipient);
        let index = inner.open.inserts.len();
        mb.ids.insert(
            message_id,
            IdState {
                seq,
                phase: Phase::Staged {
                    generation: open_generation,
                    index,
                },
            },
        );
        mb.staged.insert(seq, envelope.clone());
        let wake = inner.open.is_empty();
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
            durable: Some(inner.open.done.clone()),
            wake,
        })
    }

    /// Acknowledge `message_id` for `device`: true if it was pending.
    pub(super) fn ack(
        &self,
        device: &DeviceId,
        message_id: &MessageId,
    ) -> Result<Staged<bool>, StoreError> {
        let mut g = self.lock()?;
        let inner = &mut *g;
        let not_pending = Staged {
            value: false,
            durable: None,
            wake: false,
        };
        let open_generation = inner.open.generation;
        let mb = match mailbox(&mut inner.boxes, reader(&inner.reader)?, device) {
            Ok(mb) => mb,
            Err(StoreError::NotFound(_)) => return Ok(not_pending),
            Err(e) => return Err(e),
        };
        let (seq, size) = match mb.ids.get(message_id).copied() {
            Some(IdState {
                phase: Phase::Cancelled { .. } | Phase::Acking { .. },
                ..
            }) => return Ok(not_pending),
            Some(IdState {
                seq,
                phase: Phase::Staged { generation, index },
            }) if generation == open_generation => {
                // Still in the open batch: it is never written, only its tombstone.
                let Some(insert) = inner.open.inserts.get_mut(index) else {
                    return Err(StoreError::Backend("staged envelope vanished".to_owned()));
                };
                insert.cancelled = true;
                let size = insert.envelope.body.len() as u64;
                mb.ids.insert(
                    *message_id,
                    IdState {
                        seq,
                        phase: Phase::Cancelled {
                            generation: open_generation,
                        },
                    },
                );
                mb.staged.remove(&seq);
                take_counts(mb);
                mb.counters.bytes = mb.counters.bytes.saturating_sub(size);
                mark_dirty(&mut inner.dirty, mb, device);
                inner.stats.cancelled += 1;
                return Ok(Staged {
                    value: true,
                    durable: Some(inner.open.done.clone()),
                    wake: false,
                });
            }
            Some(IdState { seq, .. }) => {
                // Being committed: its row is deleted by the next batch.
                let size = mb.staged.remove(&seq).map_or(0, |e| e.body.len() as u64);
                (seq, size)
            }
            None => match stored_row(reader(&inner.reader)?, device, message_id)? {
                Some(row) => row,
                None => return Ok(not_pending),
            },
        };
        mb.ids.insert(
            *message_id,
            IdState {
                seq,
                phase: Phase::Acking {
                    generation: open_generation,
                },
            },
        );
        take_counts(mb);
        mb.counters.bytes = mb.counters.bytes.saturating_sub(size);
        mark_dirty(&mut inner.dirty, mb, device);
        let wake = inner.open.is_empty();
        inner.open.acks.push(DbAck {
            recipient: *device,
            message_id: *message_id,
        });
        Ok(Staged {
            value: true,
            durable: Some(inner.open.done.clone()),
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

    /// The writer takes everything staged so far (`None` if nothing is).
    pub(super) fn take(&self) -> Option<Batch> {
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        if inner.open.is_empty() {
            return None;
        }
        let next = Batch::new(inner.open.generation + 1);
        let mut batch = std::mem::replace(&mut inner.open, next);
        for device in inner.dirty.drain(..) {
            if let Some(mb) = inner.boxes.get_mut(&device) {
                if mb.dirty {
                    mb.dirty = false;
                    batch.counters.push((device, mb.counters));
                }
            }
        }
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

    /// The writer finished `batch`: with `Ok` it is committed, with `Err` rolled back.
    pub(super) fn finish(&self, batch: Batch, result: Result<(), String>) {
        let failed = result.is_err();
        if let Ok(mut g) = self.inner.lock() {
            let inner = &mut *g;
            let generation = batch.generation;
            inner.committing = None;
            for i in &batch.inserts {
                let h = &i.envelope.header;
                if let Some(mb) = inner.boxes.get_mut(&h.recipient) {
                    mb.staged.remove(&i.seq);
                    let ours = matches!(
                        mb.ids.get(&h.message_id).map(|s| s.phase),
                        Some(Phase::Staged { generation: g, .. } | Phase::Cancelled { generation: g })
                            if g == generation
                    );
                    if ours {
                        mb.ids.remove(&h.message_id);
                    }
                }
            }
            for a in &batch.acks {
                if let Some(mb) = inner.boxes.get_mut(&a.recipient) {
                    if matches!(
                        mb.ids.get(&a.message_id).map(|s| s.phase),
                        Some(Phase::Acking { generation: g }) if g == generation
                    ) {
                        mb.ids.remove(&a.message_id);
                    }
                }
            }
            if failed {
                // Nothing of this batch was written, and the open batch was staged on top
                // of it: fail that too, and start again from the database, keeping
                // sequence numbers moving forward.
                let next = Batch::new(inner.open.generation + 1);
                let open = std::mem::replace(&mut inner.open, next);
                for mb in inner.boxes.values_mut() {
                    mb.staged.clear();
                    mb.ids.clear();
                    mb.dirty = false;
                    mb.stale = true;
                }
                inner.dirty.clear();
                let error = result.clone().err().unwrap_or_default();
                open.done
                    .finish(Err(format!("an earlier batch failed: {error}")));
            }
        }
        batch.done.finish(result);
    }

    /// After the writer deleted expired envelope rows (in its open transaction, after
    /// the batch's counters): subtract them from the cached counters. Rows whose
    /// acknowledgement is already counted are skipped.
    pub(super) fn expired(&self, rows: &[(DeviceId, MessageId, u64)]) {
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        for (device, message_id, size) in rows {
            if let Some(mb) = inner.boxes.get_mut(device) {
                let acked = matches!(
                    mb.ids.get(message_id).map(|s| s.phase),
                    Some(Phase::Acking { .. } | Phase::Cancelled { .. })
                );
                if mb.stale || acked {
                    continue;
                }
                take_counts(mb);
                mb.counters.bytes = mb.counters.bytes.saturating_sub(*size);
                mark_dirty(&mut inner.dirty, mb, device);
            }
        }
    }
}

fn reader(c: &Option<Connection>) -> Result<&Connection, StoreError> {
    c.as_ref()
        .ok_or_else(|| StoreError::Backend("the store is closing".to_owned()))
}

/// One envelope fewer pending (acknowledged or expired).
fn take_counts(mb: &mut MailboxState) {
    mb.counters.count = mb.counters.count.saturating_sub(1);
}

fn mark_dirty(list: &mut Vec<DeviceId>, mb: &mut MailboxState, device: &DeviceId) {
    if !mb.dirty {
        mb.dirty = true;
        list.push(*device);
    }
}

/// The cached state of `device`'s mailbox, loaded from the database if needed.
/// `NotFound("device")` if there is no such device.
fn mailbox<'a>(
    boxes: &'a mut HashMap<DeviceId, MailboxState>,
    reader: &Connection,
    device: &DeviceId,
) -> Result<&'a mut MailboxState, StoreError> {
    let reload = match boxes.get(device) {
        None => true,
        Some(mb) => mb.stale,
    };
    if reload {
        let row: Option<(i64, i64, i64)> = reader
            .prepare_cached(
                "SELECT next_seq, pending_count, pending_bytes FROM devices WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![dev(device)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(backend)?;
        let Some((next_seq, count, bytes)) = row else {
            return Err(StoreError::NotFound("device"));
        };
        let loaded = Counters {
            next_seq: uint(next_seq, "sequence number")?,
            count: uint(count, "pending count")?,
            bytes: uint(bytes, "pending bytes")?,
        };
        let mb = boxes.entry(*device).or_default();
        // Sequence numbers never go back, even past a failed batch.
        mb.counters = Counters {
            next_seq: loaded.next_seq.max(mb.counters.next_seq),
            ..loaded
        };
        mb.stale = false;
    }
    boxes
        .get_mut(device)
        .ok_or_else(|| StoreError::Backend("mailbox state vanished".to_owned()))
}

/// The sequence number of a committed envelope or tombstone with this id.
fn stored_seq(
    c: &Connection,
    recipient: &DeviceId,
    message_id: &MessageId,
) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = c
        .prepare_cached(
            "SELECT seq FROM envelopes WHERE recipient = ?1 AND message_id = ?2
             UNION ALL
             SELECT seq FROM delivered WHERE recipient = ?1 AND message_id = ?2
             LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row(params![dev(recipient), msg(message_id)], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    seq.map(|s| uint(s, "sequence number")).transpose()
}

/// Sequence number and size of a committed, pending envelope.
fn stored_row(
    c: &Connection,
    recipient: &DeviceId,
    message_id: &MessageId,
) -> Result<Option<(u64, u64)>, StoreError> {
    let row: Option<(i64, i64)> = c
        .prepare_cached("SELECT seq, size FROM envelopes WHERE recipient = ?1 AND message_id = ?2")
        .and_then(|mut s| {
            s.query_row(params![dev(recipient), msg(message_id)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(backend)?;
    row.map(|(seq, size)| Ok((uint(seq, "sequence number")?, uint(size, "size")?)))
        .transpose()
}
