//! Retention per record class, legal holds, and the sweep that deletes expired content
//! and leaves a tombstone in the chain.

use std::collections::BTreeMap;

use rusqlite::{params, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::ArchiveError;
use crate::limits::*;
use crate::record::*;
use crate::store::{append_in, check_actor, check_len, head_in, to_i64, Archive};

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// The default retention: seven years (7 × 365 days + 2 leap days).
pub const DEFAULT_RETENTION_DAYS: u64 = 7 * 365 + 2;

/// Longest retention accepted (100 years).
pub const MAX_RETENTION_DAYS: u64 = 36_525;

/// How long each class of record is kept, counted from when the archive recorded it.
///
/// Deserializes from configuration such as
///
/// ```toml
/// default_days = 2557        # seven years, the default
/// [classes]
/// receipt = 1095             # three years
/// sync = 1095
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Days for classes not listed in `classes`.
    pub default_days: u64,
    /// Days per class.
    pub classes: BTreeMap<RecordClass, u64>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            default_days: DEFAULT_RETENTION_DAYS,
            classes: BTreeMap::new(),
        }
    }
}

impl RetentionPolicy {
    /// Days for `class`.
    pub fn days(&self, class: RecordClass) -> u64 {
        self.classes
            .get(&class)
            .copied()
            .unwrap_or(self.default_days)
    }

    /// Checks every duration against [`MAX_RETENTION_DAYS`].
    pub fn validate(&self) -> Result<(), ArchiveError> {
        for d in std::iter::once(self.default_days).chain(self.classes.values().copied()) {
            if d > MAX_RETENTION_DAYS {
                return Err(ArchiveError::TooLarge {
                    what: "retention days",
                    got: d,
                    max: MAX_RETENTION_DAYS,
                });
            }
        }
        Ok(())
    }
}

/// A legal hold in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveHold {
    /// Its name.
    pub name: String,
    /// Why it was placed.
    pub reason: String,
    /// What it covers.
    pub scope: HoldScope,
    /// Who placed it.
    pub placed_by: String,
    /// The `hold_placed` record.
    pub placed_seq: u64,
    /// When (Unix ms, archive clock).
    pub placed_ms: u64,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// `(record, its tombstone)` for each record whose content was deleted.
    pub deleted: Vec<(u64, u64)>,
    /// Expired records kept because a legal hold covers them.
    pub held: u64,
    /// True when [`MAX_SWEEP_RECORDS`] was reached; run the sweep again.
    pub more: bool,
}

impl Archive {
    /// The legal holds in force, folded from the chain's `hold_placed` and
    /// `hold_released` records (the chain is the only place holds are kept).
    pub fn holds(&self) -> Result<Vec<ActiveHold>, ArchiveError> {
        active_holds(&self.conn)
    }

    /// Places a legal hold. Its name must be unique among active holds. Returns the
    /// `hold_placed` record's sequence number.
    pub fn place_hold(
        &mut self,
        actor: &str,
        name: &str,
        reason: &str,
        scope: HoldScope,
    ) -> Result<u64, ArchiveError> {
        check_actor(actor)?;
        check_hold_name(name)?;
        check_len("reason length", reason, MAX_REASON_LEN)?;
        match &scope {
            HoldScope::Client { account } | HoldScope::Firm { account } => {
                check_len("account length", account, MAX_ACCOUNT_LEN)?
            }
            HoldScope::DateRange { from_ms, to_ms } if from_ms >= to_ms => {
                return Err(ArchiveError::Invalid {
                    what: "hold date range",
                    reason: format!("from {from_ms} is not before to {to_ms}"),
                })
            }
            _ => {}
        }
        let now = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let holds = active_holds(&tx)?;
        if holds.iter().any(|h| h.name == name) {
            return Err(ArchiveError::HoldExists(name.to_string()));
        }
        if holds.len() >= MAX_ACTIVE_HOLDS {
            return Err(ArchiveError::TooLarge {
                what: "active legal holds",
                got: holds.len() as u64 + 1,
                max: MAX_ACTIVE_HOLDS as u64,
            });
        }
        let mut head = head_in(&tx)?;
        let body = RecordBody::HoldPlaced {
            actor: actor.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
            scope,
        };
        let (seq, _) = append_in(&tx, &mut head, now, &body)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Releases the active hold `name`. Returns the `hold_released` record's sequence
    /// number.
    pub fn release_hold(
        &mut self,
        actor: &str,
        name: &str,
        reason: &str,
    ) -> Result<u64, ArchiveError> {
        check_actor(actor)?;
        check_hold_name(name)?;
        check_len("reason length", reason, MAX_REASON_LEN)?;
        let now = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !active_holds(&tx)?.iter().any(|h| h.name == name) {
            return Err(ArchiveError::NoSuchHold(name.to_string()));
        }
        let mut head = head_in(&tx)?;
        let body = RecordBody::HoldReleased {
            actor: actor.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let (seq, _) = append_in(&tx, &mut head, now, &body)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Deletes the content of every message record whose retention (per its class,
    /// counted from `recorded_ms`) ended before `now_ms` and that no active legal hold
    /// covers, and appends a tombstone for each; the record's chain row stays. At most
    /// [`MAX_SWEEP_RECORDS`] per call (one transaction); `more` says to call again.
    pub fn sweep(&mut self, now_ms: u64, actor: &str) -> Result<SweepReport, ArchiveError> {
        check_actor(actor)?;
        let policy = self.options.retention.clone();
        policy.validate()?;
        let recorded = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let holds = active_holds(&tx)?;
        let mut head = head_in(&tx)?;
        let mut report = SweepReport::default();
        const PAGE: i64 = 1_000;
        'classes: for class in RecordClass::ALL {
            let days = policy.days(class);
            let cutoff = now_ms.saturating_sub(days.saturating_mul(DAY_MS));
            let cutoff = to_i64(cutoff, "cutoff")?;
            let mut after: i64 = 0;
            loop {
                let page: Vec<(i64, String)> = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT m.seq, r.body FROM messages m \
                         JOIN content c ON c.seq = m.seq JOIN records r ON r.seq = m.seq \
                         WHERE m.class = ?1 AND m.recorded_ms < ?2 AND m.seq > ?3 \
                         ORDER BY m.seq LIMIT ?4",
                    )?;
                    let rows = stmt
                        .query_map(params![class.as_str(), cutoff, after, PAGE], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                    rows.collect::<Result<_, _>>()?
                };
                if page.is_empty() {
                    break;
                }
                for (seq_i, body) in page {
                    after = seq_i;
                    let seq = u64::try_from(seq_i).unwrap_or(0);
                    let body: RecordBody =
                        serde_json::from_str(&body).map_err(|e| ArchiveError::Corrupt {
                            seq,
                            reason: e.to_string(),
                        })?;
                    let RecordBody::Message(meta) = body else {
                        return Err(ArchiveError::Corrupt {
                            seq,
                            reason: "indexed as a message but is not one".into(),
                        });
                    };
                    if holds.iter().any(|h| h.scope.covers(&meta)) {
                        report.held += 1;
                        continue;
                    }
                    if report.deleted.len() >= MAX_SWEEP_RECORDS {
                        report.more = true;
                        break 'classes;
                    }
                    let text: String = tx
                        .prepare_cached("SELECT text FROM content WHERE seq = ?1")?
                        .query_row(params![seq_i], |r| r.get(0))?;
                    // Every content row is indexed (see `ingest_batch`).
                    tx.prepare_cached(
                        "INSERT INTO message_fts (message_fts, rowid, text) VALUES ('delete', ?1, ?2)",
                    )?
                    .execute(params![seq_i, text])?;
                    tx.prepare_cached("DELETE FROM content WHERE seq = ?1")?
                        .execute(params![seq_i])?;
                    tx.prepare_cached("DELETE FROM attachments WHERE seq = ?1")?
                        .execute(params![seq_i])?;
                    let tomb = RecordBody::Tombstone {
                        target: seq,
                        class,
                        content_digest: meta.content_digest,
                        reason: format!("retention: {} kept {days} days", class.as_str()),
                        actor: actor.to_string(),
                    };
                    let (tseq, _) = append_in(&tx, &mut head, recorded, &tomb)?;
                    report.deleted.push((seq, tseq));
                }
            }
        }
        tx.commit()?;
        Ok(report)
    }
}

fn check_hold_name(name: &str) -> Result<(), ArchiveError> {
    if name.trim().is_empty() {
        return Err(ArchiveError::Invalid {
            what: "hold name",
            reason: "empty".into(),
        });
    }
    check_len("hold name length", name, MAX_HOLD_NAME_LEN)
}

pub(crate) fn active_holds(conn: &rusqlite::Connection) -> Result<Vec<ActiveHold>, ArchiveError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, recorded_ms, body FROM records \
         WHERE kind IN ('hold_placed', 'hold_released') ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut holds: Vec<ActiveHold> = Vec::new();
    for row in rows {
        let (seq, ms, body) = row?;
        let seq = u64::try_from(seq).unwrap_or(0);
        let body: RecordBody = serde_json::from_str(&body).map_err(|e| ArchiveError::Corrupt {
            seq,
            reason: e.to_string(),
        })?;
        match body {
            RecordBody::HoldPlaced {
                actor,
                name,
                reason,
                scope,
            } => holds.push(ActiveHold {
                name,
                reason,
                scope,
                placed_by: actor,
                placed_seq: seq,
                placed_ms: u64::try_from(ms).unwrap_or(0),
            }),
            RecordBody::HoldReleased { name, .. } => holds.retain(|h| h.name != name),
            _ => {
                return Err(ArchiveError::Corrupt {
                    seq,
                    reason: "kind column says hold, metadata does not".into(),
                })
            }
        }
    }
    Ok(holds)
}
