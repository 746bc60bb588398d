//! Which devices are online, and how to reach their connection.
//!
//! Each authenticated device has at most one registration; a newer connection replaces
//! an older one (which is told to close, through a [`Notify`] that a full push queue
//! cannot lose). Pushes go through a channel bounded in count ([`PUSH_QUEUE`]) and in
//! envelope bytes ([`MAX_PUSH_QUEUE_BYTES`]); a push that does not fit is dropped and
//! the registration marked as lagging, so the connection reads what it missed from the
//! store (nothing is lost: the store is the truth).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sealpost_protocol::envelope::Envelope;
use sealpost_protocol::identity::{AccountId, DeviceId};
use tokio::sync::{mpsc, Notify};

use crate::store::PreKeyCounts;

/// Pushes buffered per online device.
pub const PUSH_QUEUE: usize = 1024;
/// Envelope bytes (body plus [`PUSH_OVERHEAD_BYTES`] each) buffered per online device.
/// A recipient that stops reading holds at most this much in its push queue; what does
/// not fit is read from the store once it catches up.
pub const MAX_PUSH_QUEUE_BYTES: usize = 1 << 20;
/// What one queued envelope push counts beyond its body (header, `Arc`, channel slot).
pub const PUSH_OVERHEAD_BYTES: usize = 256;

/// Something for an online device.
#[derive(Debug)]
pub enum Push {
    /// An envelope was committed to its mailbox.
    Envelope {
        /// Its sequence number.
        seq: u64,
        /// The envelope.
        envelope: Arc<Envelope>,
    },
    /// Its one-time prekey stock is low.
    PreKeysLow(PreKeyCounts),
    /// A device log this device follows grew (its own account's, or a client's the
    /// device's staff account is assigned to).
    DeviceLogChanged {
        /// The account.
        account: AccountId,
        /// The new last entry.
        seq: u64,
        /// Its action.
        action: &'static str,
    },
    /// A security event about its account that the relay's `notify_devices` measure
    /// tells the account's other devices about.
    AccountAlert(Arc<sealpost_protocol::wire::SecurityEventInfo>),
}

impl Push {
    /// The bytes this push counts against [`MAX_PUSH_QUEUE_BYTES`].
    pub fn queued_bytes(&self) -> usize {
        match self {
            Self::Envelope { envelope, .. } => envelope.body.len() + PUSH_OVERHEAD_BYTES,
            _ => 0,
        }
    }
}

struct Registration {
    conn: u64,
    account: AccountId,
    tx: mpsc::Sender<Push>,
    queued: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
    revoked: Arc<Notify>,
    replaced: Arc<Notify>,
}

/// A registration handed to a connection.
pub struct Subscription {
    /// The connection's id.
    pub conn: u64,
    /// Pushes for it.
    pub rx: mpsc::Receiver<Push>,
    /// Bytes of the pushes in `rx` ([`Push::queued_bytes`]): the receiver subtracts
    /// what it takes out.
    pub queued: Arc<AtomicUsize>,
    /// Set when a push was dropped; the connection must catch up from the store.
    pub lagged: Arc<AtomicBool>,
    /// Notified when the device is revoked: the connection must close. (Not a push, so
    /// that a full push queue cannot lose it.)
    pub revoked: Arc<Notify>,
    /// Notified when another connection authenticated as the same device: this one
    /// must close. (Not a push either: it matters most when this connection is stalled
    /// and its push queue full.)
    pub replaced: Arc<Notify>,
}

/// The registry of online devices.
#[derive(Default)]
pub struct Hub {
    devices: Mutex<HashMap<DeviceId, Registration>>,
    next_conn: AtomicU64,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `device` of `account`, replacing (and notifying) an older connection.
    pub fn register(&self, account: AccountId, device: DeviceId) -> Subscription {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let lagged = Arc::new(AtomicBool::new(false));
        let revoked = Arc::new(Notify::new());
        let replaced = Arc::new(Notify::new());
        let reg = Registration {
            conn,
            account,
            tx,
            queued: queued.clone(),
            lagged: lagged.clone(),
            revoked: revoked.clone(),
            replaced: replaced.clone(),
        };
        let old = match self.devices.lock() {
            Ok(mut map) => map.insert(device, reg),
            Err(poisoned) => poisoned.into_inner().insert(device, reg),
        };
        if let Some(old) = old {
            // Stored as a permit if the old connection is not waiting right now.
            old.replaced.notify_one();
        }
        Subscription {
            conn,
            rx,
            queued,
            lagged,
            revoked,
            replaced,
        }
    }

    /// Remove `device`'s registration if it is still `conn`'s.
    pub fn unregister(&self, device: &DeviceId, conn: u64) {
        let mut map = match self.devices.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.get(device).is_some_and(|r| r.conn == conn) {
            map.remove(device);
        }
    }

    /// Push to `device` if online. Returns true if it was online.
    pub fn push(&self, device: &DeviceId, push: Push) -> bool {
        let map = match self.devices.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        match map.get(device) {
            None => false,
            Some(reg) => {
                Self::offer(reg, push);
                true
            }
        }
    }

    /// Push `make()` to every online device of `account` but `except`. Returns how many
    /// were online. (Walks the online devices: for rare pushes, such as alerts.)
    pub fn push_account(
        &self,
        account: &AccountId,
        except: Option<&DeviceId>,
        make: impl Fn() -> Push,
    ) -> usize {
        let map = match self.devices.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut n = 0;
        for (device, reg) in map.iter() {
            if &reg.account == account && Some(device) != except {
                Self::offer(reg, make());
                n += 1;
            }
        }
        n
    }

    fn offer(reg: &Registration, push: Push) {
        {
            {
                let bytes = push.queued_bytes();
                // Room in the byte bound (an empty queue always takes one push).
                let fits = reg
                    .queued
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                        (q == 0 || q.saturating_add(bytes) <= MAX_PUSH_QUEUE_BYTES)
                            .then_some(q.saturating_add(bytes))
                    })
                    .is_ok();
                if !fits {
                    reg.lagged.store(true, Ordering::Release);
                } else if reg.tx.try_send(push).is_err() {
                    reg.queued.fetch_sub(bytes, Ordering::AcqRel);
                    reg.lagged.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Tell `device`'s connection, if online, that the device was revoked (it closes).
    /// Returns true if it was online.
    pub fn revoke(&self, device: &DeviceId) -> bool {
        let map = match self.devices.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        match map.get(device) {
            None => false,
            Some(reg) => {
                reg.revoked.notify_one();
                true
            }
        }
    }

    /// Bytes queued in `device`'s push queue ([`Push::queued_bytes`]); 0 if offline.
    pub fn queued_bytes(&self, device: &DeviceId) -> usize {
        let map = match self.devices.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(device)
            .map_or(0, |r| r.queued.load(Ordering::Acquire))
    }

    /// Whether `device` is online (authenticated on a connection).
    pub fn is_online(&self, device: &DeviceId) -> bool {
        match self.devices.lock() {
            Ok(m) => m.contains_key(device),
            Err(p) => p.into_inner().contains_key(device),
        }
    }

    /// How many devices are online.
    pub fn online(&self) -> usize {
        match self.devices.lock() {
            Ok(m) => m.len(),
            Err(p) => p.into_inner().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};

    fn acct() -> AccountId {
        AccountId::new("alice").unwrap()
    }

    #[test]
    fn an_account_push_reaches_the_accounts_other_online_devices_only() {
        let hub = Hub::new();
        let (a, b, c) = (DeviceId([1; 16]), DeviceId([2; 16]), DeviceId([3; 16]));
        let mut sa = hub.register(acct(), a);
        let mut sb = hub.register(acct(), b);
        let mut sc = hub.register(AccountId::new("bob").unwrap(), c);
        let n = hub.push_account(&acct(), Some(&a), || {
            Push::PreKeysLow(PreKeyCounts::default())
        });
        assert_eq!(n, 1);
        assert!(sb.rx.try_recv().is_ok());
        assert!(sa.rx.try_recv().is_err() && sc.rx.try_recv().is_err());
    }

    fn envelope(to: DeviceId, len: usize) -> Arc<Envelope> {
        let header = RoutingHeader::new(
            DeviceId([9; 16]),
            to,
            EnvelopeKind::Chat,
            0,
            &mut rand::rngs::OsRng,
        );
        Arc::new(Envelope {
            header,
            body: vec![0; len],
        })
    }

    #[test]
    fn the_push_queue_is_bounded_by_bytes_and_a_dropped_push_marks_it_lagging() {
        let hub = Hub::new();
        let d = DeviceId([1; 16]);
        let mut sub = hub.register(acct(), d);
        let len = 64 * 1024;
        for seq in 1..=100 {
            assert!(hub.push(
                &d,
                Push::Envelope {
                    seq,
                    envelope: envelope(d, len),
                }
            ));
        }
        let queued = hub.queued_bytes(&d);
        assert!(queued <= MAX_PUSH_QUEUE_BYTES, "{queued}");
        assert!(sub.lagged.load(Ordering::Acquire), "drops are reported");
        let mut taken = 0;
        while let Ok(p) = sub.rx.try_recv() {
            sub.queued.fetch_sub(p.queued_bytes(), Ordering::AcqRel);
            taken += 1;
        }
        assert_eq!(taken, MAX_PUSH_QUEUE_BYTES / (len + PUSH_OVERHEAD_BYTES));
        assert_eq!(hub.queued_bytes(&d), 0);
        // An empty queue takes a push again.
        assert!(hub.push(
            &d,
            Push::Envelope {
                seq: 101,
                envelope: envelope(d, len),
            }
        ));
        assert!(sub.rx.try_recv().is_ok());
    }

    #[tokio::test]
    async fn replacing_a_connection_is_not_lost_when_its_push_queue_is_full() {
        let hub = Hub::new();
        let d = DeviceId([2; 16]);
        let old = hub.register(acct(), d);
        for seq in 1..=(PUSH_QUEUE as u64 + 10) {
            hub.push(
                &d,
                Push::Envelope {
                    seq,
                    envelope: envelope(d, 1),
                },
            );
        }
        let _new = hub.register(acct(), d);
        tokio::time::timeout(std::time::Duration::from_secs(5), old.replaced.notified())
            .await
            .expect("the old connection is told it was replaced");
    }
}
