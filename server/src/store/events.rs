//! Security events at rest: a narrow, synchronous trait ([`EventStore`]) with an
//! in-memory reference ([`MemoryEventStore`]) and a SQLite implementation
//! ([`SqliteEventStore`], its own database file `security_events.sqlite3` in the data
//! directory, so that writing events never queues behind the mailbox writer). The relay
//! calls it from one writer task through `spawn_blocking` (`security::write_loop`),
//! never on the per-envelope path.
//!
//! Events hold metadata only (rule, severity, account, device, address, a detail in the
//! relay's words); retention is bounded by age and by count ([`EventStore::prune`],
//! `security.retention` and `security.max_events`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;

use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::wire::{BoundedString, SecurityEventInfo, SecuritySeverity};

use super::StoreError;

/// Storage of security events.
pub trait EventStore: Send + Sync + 'static {
    /// Append `events` (ids increasing, each greater than every stored id); durable when
    /// this returns.
    fn append(&self, events: &[SecurityEventInfo]) -> Result<(), StoreError> {
        self.append_alerting(events, &[])
    }
    /// Append `events` as [`EventStore::append`] does, and mark those whose ids are in
    /// `alerts` as alerts for the other devices of the account they concern (the
    /// `notify_devices` measure), in the same transaction.
    fn append_alerting(
        &self,
        events: &[SecurityEventInfo],
        alerts: &[u64],
    ) -> Result<(), StoreError>;
    /// Up to `max` stored alerts for `account` with an id greater than `since`, ascending,
    /// leaving out those that concern `device` itself (an alert is for the *other*
    /// devices).
    fn alerts_for(
        &self,
        account: &AccountId,
        device: &DeviceId,
        since: u64,
        max: usize,
    ) -> Result<Vec<SecurityEventInfo>, StoreError>;
    /// Up to `max` stored events with an id greater than `since`, ascending.
    fn after(&self, since: u64, max: usize) -> Result<Vec<SecurityEventInfo>, StoreError>;
    /// The greatest stored id (0: none).
    fn last_id(&self) -> Result<u64, StoreError>;
    /// Delete events older than `before_ms` and, beyond that, the oldest until at most
    /// `keep` remain. Returns how many were deleted.
    fn prune(&self, before_ms: u64, keep: u64) -> Result<u64, StoreError>;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Events in memory (the memory backend, tests); bounded by `max` at every append.
pub struct MemoryEventStore {
    events: Mutex<VecDeque<(SecurityEventInfo, bool)>>,
    max: usize,
}

impl MemoryEventStore {
    /// An empty store keeping at most `max` events.
    pub fn new(max: usize) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            max: max.max(1),
        }
    }
}

impl EventStore for MemoryEventStore {
    fn append_alerting(
        &self,
        events: &[SecurityEventInfo],
        alerts: &[u64],
    ) -> Result<(), StoreError> {
        let mut all = lock(&self.events);
        let mut last = all.back().map(|(l, _)| l.id);
        for e in events {
            if last.is_some_and(|l| l >= e.id) {
                return Err(StoreError::Conflict("security event"));
            }
            last = Some(e.id);
        }
        for e in events {
            all.push_back((e.clone(), alerts.contains(&e.id)));
        }
        while all.len() > self.max {
            all.pop_front();
        }
        Ok(())
    }

    fn after(&self, since: u64, max: usize) -> Result<Vec<SecurityEventInfo>, StoreError> {
        Ok(lock(&self.events)
            .iter()
            .filter(|(e, _)| e.id > since)
            .take(max)
            .map(|(e, _)| e.clone())
            .collect())
    }

    fn alerts_for(
        &self,
        account: &AccountId,
        device: &DeviceId,
        since: u64,
        max: usize,
    ) -> Result<Vec<SecurityEventInfo>, StoreError> {
        Ok(lock(&self.events)
            .iter()
            .filter(|(e, alert)| {
                *alert
                    && e.id > since
                    && e.account.as_ref() == Some(account)
                    && e.device.as_ref() != Some(device)
            })
            .take(max)
            .map(|(e, _)| e.clone())
            .collect())
    }

    fn last_id(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.events).back().map_or(0, |(e, _)| e.id))
    }

    fn prune(&self, before_ms: u64, keep: u64) -> Result<u64, StoreError> {
        let mut all = lock(&self.events);
        let n = all.len();
        all.retain(|(e, _)| e.time_ms >= before_ms);
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        while all.len() > keep {
            all.pop_front();
        }
        Ok((n - all.len()) as u64)
    }
}

/// Events in their own SQLite database (WAL, `synchronous = FULL`).
pub struct SqliteEventStore {
    conn: Mutex<rusqlite::Connection>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("security events: {e}"))
}

/// The file name of the events database in the data directory.
pub const EVENTS_DB_FILE: &str = "security_events.sqlite3";

impl SqliteEventStore {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(backend)?;
        }
        let conn = rusqlite::Connection::open(path).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        let _: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS security_events (
                id INTEGER PRIMARY KEY,
                time_ms INTEGER NOT NULL,
                severity TEXT NOT NULL,
                rule TEXT NOT NULL,
                account TEXT,
                device TEXT,
                address TEXT,
                detail TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS security_events_time ON security_events (time_ms);
            CREATE TABLE IF NOT EXISTS account_alerts (
                event_id INTEGER PRIMARY KEY,
                account TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS account_alerts_account
                ON account_alerts (account, event_id);",
        )
        .map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

fn severity_from(name: &str) -> Result<SecuritySeverity, StoreError> {
    SecuritySeverity::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| backend(format!("unknown severity {name:?}")))
}

const EVENT_COLUMNS: &str = "id, time_ms, severity, rule, account, device, address, detail";

type EventRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn event_from(row: EventRow) -> Result<SecurityEventInfo, StoreError> {
    let (id, time_ms, severity, rule, account, device, address, detail) = row;
    Ok(SecurityEventInfo {
        id: u64::try_from(id).map_err(backend)?,
        time_ms: u64::try_from(time_ms).map_err(backend)?,
        severity: severity_from(&severity)?,
        rule: BoundedString::truncating(&rule),
        account: account
            .map(|a| AccountId::new(&a))
            .transpose()
            .map_err(backend)?,
        device: device
            .map(|d| DeviceId::from_hex(&d))
            .transpose()
            .map_err(backend)?,
        address: address.map(|a| BoundedString::truncating(&a)),
        detail: BoundedString::truncating(&detail),
    })
}

fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl EventStore for SqliteEventStore {
    fn append_alerting(
        &self,
        events: &[SecurityEventInfo],
        alerts: &[u64],
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(backend)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO security_events
                     (id, time_ms, severity, rule, account, device, address, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(backend)?;
            for e in events {
                st.execute(rusqlite::params![
                    i64::try_from(e.id).map_err(backend)?,
                    i64::try_from(e.time_ms).map_err(backend)?,
                    e.severity.name(),
                    e.rule.as_str(),
                    e.account.as_ref().map(|a| a.as_str().to_owned()),
                    e.device.map(|d| d.to_hex()),
                    e.address.as_ref().map(|a| a.as_str().to_owned()),
                    e.detail.as_str(),
                ])
                .map_err(backend)?;
            }
            let mut st = tx
                .prepare_cached("INSERT INTO account_alerts (event_id, account) VALUES (?1, ?2)")
                .map_err(backend)?;
            for e in events.iter().filter(|e| alerts.contains(&e.id)) {
                if let Some(account) = &e.account {
                    st.execute(rusqlite::params![sql_u64(e.id), account.as_str()])
                        .map_err(backend)?;
                }
            }
        }
        tx.commit().map_err(backend)
    }

    fn alerts_for(
        &self,
        account: &AccountId,
        device: &DeviceId,
        since: u64,
        max: usize,
    ) -> Result<Vec<SecurityEventInfo>, StoreError> {
        let conn = lock(&self.conn);
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM security_events
                 WHERE id IN (SELECT event_id FROM account_alerts
                              WHERE account = ?1 AND event_id > ?2)
                   AND (device IS NULL OR device != ?3)
                 ORDER BY id LIMIT ?4"
            ))
            .map_err(backend)?;
        let rows = st
            .query_map(
                rusqlite::params![
                    account.as_str(),
                    sql_u64(since),
                    device.to_hex(),
                    sql_u64(max as u64)
                ],
                event_row,
            )
            .map_err(backend)?;
        rows.map(|r| r.map_err(backend).and_then(event_from))
            .collect()
    }

    fn after(&self, since: u64, max: usize) -> Result<Vec<SecurityEventInfo>, StoreError> {
        let conn = lock(&self.conn);
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM security_events WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .map_err(backend)?;
        let rows = st
            .query_map(
                rusqlite::params![sql_u64(since), sql_u64(max as u64)],
                event_row,
            )
            .map_err(backend)?;
        rows.map(|r| r.map_err(backend).and_then(event_from))
            .collect()
    }

    fn last_id(&self) -> Result<u64, StoreError> {
        let conn = lock(&self.conn);
        let id: Option<i64> = conn
            .query_row("SELECT MAX(id) FROM security_events", [], |r| r.get(0))
            .map_err(backend)?;
        Ok(id.and_then(|i| u64::try_from(i).ok()).unwrap_or(0))
    }

    fn prune(&self, before_ms: u64, keep: u64) -> Result<u64, StoreError> {
        let conn = lock(&self.conn);
        let by_age = conn
            .execute(
                "DELETE FROM security_events WHERE time_ms < ?1",
                [i64::try_from(before_ms).unwrap_or(i64::MAX)],
            )
            .map_err(backend)?;
        let by_count = conn
            .execute(
                "DELETE FROM security_events WHERE id <= (
                    SELECT id FROM security_events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                [i64::try_from(keep).unwrap_or(i64::MAX)],
            )
            .map_err(backend)?;
        conn.execute(
            "DELETE FROM account_alerts WHERE event_id NOT IN (SELECT id FROM security_events)",
            [],
        )
        .map_err(backend)?;
        Ok((by_age + by_count) as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn event(id: u64, time_ms: u64) -> SecurityEventInfo {
        SecurityEventInfo {
            id,
            time_ms,
            severity: SecuritySeverity::High,
            rule: BoundedString::truncating("auth_failures_account"),
            account: Some(AccountId::new("alice").unwrap()),
            device: Some(DeviceId([7; 16])),
            address: Some(BoundedString::truncating("127.0.0.1")),
            detail: BoundedString::truncating("5 failed authentications"),
        }
    }

    fn conformance(store: &dyn EventStore) {
        assert_eq!(store.last_id().unwrap(), 0);
        store
            .append(&(1..=10).map(|i| event(i, i * 1000)).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.last_id().unwrap(), 10);
        let got = store.after(3, 4).unwrap();
        assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert_eq!(got[0], event(4, 4000));
        // By age: everything before 3000 goes; by count: at most 5 stay, the newest.
        assert_eq!(store.prune(3000, 5).unwrap(), 5);
        let left = store.after(0, 100).unwrap();
        assert_eq!(
            left.iter().map(|e| e.id).collect::<Vec<_>>(),
            [6, 7, 8, 9, 10]
        );
        assert_eq!(store.prune(0, 100).unwrap(), 0);
        // Alerts: marked in the same append; for the account's other devices only.
        let alice = AccountId::new("alice").unwrap();
        let mut other = event(12, 12_000);
        other.device = Some(DeviceId([9; 16]));
        let mut bob = event(13, 13_000);
        bob.account = Some(AccountId::new("bob").unwrap());
        store
            .append_alerting(
                &[event(11, 11_000), other, bob, event(14, 14_000)],
                &[11, 12, 13],
            )
            .unwrap();
        let ids = |v: Vec<SecurityEventInfo>| v.iter().map(|e| e.id).collect::<Vec<_>>();
        // Device 7 is the one events 11 and 14 concern: it sees only 12; event 14 is no
        // alert.
        assert_eq!(
            ids(store.alerts_for(&alice, &DeviceId([7; 16]), 0, 10).unwrap()),
            [12]
        );
        assert_eq!(
            ids(store.alerts_for(&alice, &DeviceId([8; 16]), 0, 10).unwrap()),
            [11, 12]
        );
        assert_eq!(
            ids(store
                .alerts_for(&alice, &DeviceId([8; 16]), 11, 10)
                .unwrap()),
            [12]
        );
        assert_eq!(
            ids(store.alerts_for(&alice, &DeviceId([8; 16]), 0, 1).unwrap()),
            [11]
        );
        // Pruned with their events.
        store.prune(11_500, 100).unwrap();
        assert_eq!(
            ids(store.alerts_for(&alice, &DeviceId([8; 16]), 0, 10).unwrap()),
            [12]
        );
    }

    #[test]
    fn memory_and_sqlite_keep_order_and_prune_by_age_and_count() {
        conformance(&MemoryEventStore::new(1000));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_DB_FILE);
        conformance(&SqliteEventStore::open(&path).unwrap());
        // Durable: a reopened database has them.
        let again = SqliteEventStore::open(&path).unwrap();
        assert_eq!(again.last_id().unwrap(), 14);
    }

    #[test]
    fn the_memory_store_is_bounded_at_every_append() {
        let s = MemoryEventStore::new(3);
        s.append(&(1..=5).map(|i| event(i, i)).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(s.after(0, 10).unwrap().len(), 3);
        assert!(s.append(&[event(2, 2)]).is_err(), "ids must increase");
    }
}
