//! Which devices are online, and how to reach their connection.
//!
//! Each authenticated device has at most one registration; a newer connection replaces
//! an older one (which is told to close). Pushes go through a bounded channel; when it is
//! full the push is dropped and the registration marked as lagging, so the connection
//! reads what it missed from the store (nothing is lost: the store is the truth).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sealpost_protocol::envelope::Envelope;
use sealpost_protocol::identity::DeviceId;
use tokio::sync::mpsc;

use crate::store::PreKeyCounts;

/// Pushes buffered per online device.
pub const PUSH_QUEUE: usize = 1024;

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
    /// Another connection authenticated as this device; close this one.
    Replaced,
}

struct Registration {
    conn: u64,
    tx: mpsc::Sender<Push>,
    lagged: Arc<AtomicBool>,
}

/// A registration handed to a connection.
pub struct Subscription {
    /// The connection's id.
    pub conn: u64,
    /// Pushes for it.
    pub rx: mpsc::Receiver<Push>,
    /// Set when a push was dropped; the connection must catch up from the store.
    pub lagged: Arc<AtomicBool>,
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

    /// Register `device`, replacing (and notifying) an older connection.
    pub fn register(&self, device: DeviceId) -> Subscription {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let reg = Registration {
            conn,
            tx,
            lagged: lagged.clone(),
        };
        let old = match self.devices.lock() {
            Ok(mut map) => map.insert(device, reg),
            Err(poisoned) => poisoned.into_inner().insert(device, reg),
        };
        if let Some(old) = old {
            let _ = old.tx.try_send(Push::Replaced);
        }
        Subscription { conn, rx, lagged }
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
                if reg.tx.try_send(push).is_err() {
                    reg.lagged.store(true, Ordering::Release);
                }
                true
            }
        }
    }

    /// Devices online.
    pub fn online(&self) -> usize {
        match self.devices.lock() {
            Ok(m) => m.len(),
            Err(p) => p.into_inner().len(),
        }
    }
}
