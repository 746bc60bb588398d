//! Security events (docs/OPERATIONS.md, "Security events"): the relay's shell around the
//! I/O-free rule engine in [`rules`].
//!
//! The relay's code paths hand [`Observation`]s to [`Security::observe`] (a short
//! critical section on one mutex; nothing awaits, nothing touches storage). An event the
//! rules raise gets its id, is counted (`sealpost_security_events_total{rule,severity}`),
//! is broadcast to the watching security devices, and is queued for one writer task
//! ([`write_loop`]) that stores it ([`crate::store::events::EventStore`], retention by age
//! and count) and appends it as a JSON line to the SIEM file and socket the operator
//! configured. Accepted envelopes are never observed: only refusals, control requests and
//! trust changes are, so the per-envelope path does not pay for the rules.
//!
//! Events carry metadata only: rule, severity, account, device, address and a detail in
//! the relay's own words. The relay has no message content; nothing a peer wrote as text
//! is copied into an event.

pub mod rules;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::wire::{BoundedString, SecurityEventInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

pub use rules::{Engine, Measure, Measures, Observation, Raised, Rule, RuleSettings};

use crate::metrics as m;
use crate::store::events::EventStore;

/// Events buffered for each watching security device; a watcher further behind misses
/// events (it is told how many, in the log, and can ask again with `since`).
pub const FEED_CAPACITY: usize = 1024;
/// Events raised and not yet written by the writer task, at most; beyond, new events are
/// counted (`sealpost_security_events_dropped_total`) and not stored or exported.
pub const MAX_UNWRITTEN_EVENTS: usize = 4096;
/// Recent events kept in memory, so that a watch started while the writer is behind
/// still sees them.
pub const RECENT_EVENTS: usize = 1024;
/// Accounts held at once by `hold_sensitive`; beyond, the hold ending first is dropped.
pub const MAX_HELD_ACCOUNTS: usize = 10_000;
/// Events written in one batch by the writer task.
const WRITE_BATCH: usize = 256;
/// How often the writer prunes the store to its retention.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The rules' settings, one table per rule (`[security.rules.<name>]`). A rule or a key
/// left out keeps its default (docs/OPERATIONS.md lists them); an unknown rule or key is
/// refused.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "std::collections::BTreeMap<String, PartialRule>")]
#[allow(missing_docs)]
pub struct RulesConfig {
    pub auth_failures_account: RuleSettings,
    pub auth_failures_address: RuleSettings,
    pub sensitive_during_cooling_off: RuleSettings,
    pub device_count_jump: RuleSettings,
    pub recovery_requested: RuleSettings,
    pub unsolicited_link_request: RuleSettings,
    pub bundle_fetch_burst: RuleSettings,
    pub unassigned_contact_attempt: RuleSettings,
    pub rate_limited: RuleSettings,
    pub approval_burst: RuleSettings,
    pub account_frozen: RuleSettings,
    pub account_unfrozen: RuleSettings,
    pub notice_to_all_clients: RuleSettings,
}

impl Default for RulesConfig {
    fn default() -> Self {
        let d = RuleSettings::default_for;
        Self {
            auth_failures_account: d(Rule::AuthFailuresAccount),
            auth_failures_address: d(Rule::AuthFailuresAddress),
            sensitive_during_cooling_off: d(Rule::SensitiveDuringCoolingOff),
            device_count_jump: d(Rule::DeviceCountJump),
            recovery_requested: d(Rule::RecoveryRequested),
            unsolicited_link_request: d(Rule::UnsolicitedLinkRequest),
            bundle_fetch_burst: d(Rule::BundleFetchBurst),
            unassigned_contact_attempt: d(Rule::UnassignedContactAttempt),
            rate_limited: d(Rule::RateLimited),
            approval_burst: d(Rule::ApprovalBurst),
            account_frozen: d(Rule::AccountFrozen),
            account_unfrozen: d(Rule::AccountUnfrozen),
            notice_to_all_clients: d(Rule::NoticeToAllClients),
        }
    }
}

/// Whole seconds, written as a duration (`"5m"`) or a number.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(transparent)]
pub struct Secs(#[serde(with = "crate::config::duration_secs")] pub u64);

/// A rule's table as written: every key optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialRule {
    enabled: Option<bool>,
    threshold: Option<u32>,
    window: Option<Secs>,
    severity: Option<sealpost_protocol::wire::SecuritySeverity>,
    /// One measure name, or a list of names; `"none"` (or `[]`) switches them off.
    measure: Option<MeasureSpec>,
}

/// A measure, or `"none"`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureSetting {
    /// No measure.
    None,
    /// [`Measure::HoldSensitive`].
    HoldSensitive,
    /// [`Measure::RequireFreshLinkCode`].
    RequireFreshLinkCode,
    /// [`Measure::NotifyDevices`].
    NotifyDevices,
}

impl MeasureSetting {
    fn measure(self) -> Option<Measure> {
        match self {
            MeasureSetting::None => None,
            MeasureSetting::HoldSensitive => Some(Measure::HoldSensitive),
            MeasureSetting::RequireFreshLinkCode => Some(Measure::RequireFreshLinkCode),
            MeasureSetting::NotifyDevices => Some(Measure::NotifyDevices),
        }
    }
}

/// `measure = "name"` or `measure = ["name", ...]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MeasureSpec {
    /// One measure (or `"none"`).
    One(MeasureSetting),
    /// Several (a `"none"` among them counts for nothing).
    Many(Vec<MeasureSetting>),
}

impl TryFrom<std::collections::BTreeMap<String, PartialRule>> for RulesConfig {
    type Error = String;
    fn try_from(tables: std::collections::BTreeMap<String, PartialRule>) -> Result<Self, String> {
        let mut out = RulesConfig::default();
        for (name, p) in tables {
            let rule = Rule::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .ok_or_else(|| {
                    format!(
                        "security.rules.{name}: no such rule (rules: {})",
                        Rule::ALL.map(|r| r.name()).join(", ")
                    )
                })?;
            let s = out.get_mut(rule);
            if let Some(v) = p.enabled {
                s.enabled = v;
            }
            if let Some(v) = p.threshold {
                s.threshold = v;
            }
            if let Some(v) = p.window {
                s.window = v.0;
            }
            if let Some(v) = p.severity {
                s.severity = v;
            }
            match p.measure {
                None => {}
                Some(MeasureSpec::One(m)) => s.measure = m.measure().into_iter().collect(),
                Some(MeasureSpec::Many(v)) => {
                    s.measure = v.into_iter().filter_map(MeasureSetting::measure).collect()
                }
            }
        }
        Ok(out)
    }
}

impl RulesConfig {
    /// The settings of `rule`.
    pub fn get(&self, rule: Rule) -> RuleSettings {
        *self.get_ref(rule)
    }

    fn get_ref(&self, rule: Rule) -> &RuleSettings {
        match rule {
            Rule::AuthFailuresAccount => &self.auth_failures_account,
            Rule::AuthFailuresAddress => &self.auth_failures_address,
            Rule::SensitiveDuringCoolingOff => &self.sensitive_during_cooling_off,
            Rule::DeviceCountJump => &self.device_count_jump,
            Rule::RecoveryRequested => &self.recovery_requested,
            Rule::UnsolicitedLinkRequest => &self.unsolicited_link_request,
            Rule::BundleFetchBurst => &self.bundle_fetch_burst,
            Rule::UnassignedContactAttempt => &self.unassigned_contact_attempt,
            Rule::RateLimited => &self.rate_limited,
            Rule::ApprovalBurst => &self.approval_burst,
            Rule::AccountFrozen => &self.account_frozen,
            Rule::AccountUnfrozen => &self.account_unfrozen,
            Rule::NoticeToAllClients => &self.notice_to_all_clients,
        }
    }

    /// The settings of `rule`, to change.
    pub fn get_mut(&mut self, rule: Rule) -> &mut RuleSettings {
        match rule {
            Rule::AuthFailuresAccount => &mut self.auth_failures_account,
            Rule::AuthFailuresAddress => &mut self.auth_failures_address,
            Rule::SensitiveDuringCoolingOff => &mut self.sensitive_during_cooling_off,
            Rule::DeviceCountJump => &mut self.device_count_jump,
            Rule::RecoveryRequested => &mut self.recovery_requested,
            Rule::UnsolicitedLinkRequest => &mut self.unsolicited_link_request,
            Rule::BundleFetchBurst => &mut self.bundle_fetch_burst,
            Rule::UnassignedContactAttempt => &mut self.unassigned_contact_attempt,
            Rule::RateLimited => &mut self.rate_limited,
            Rule::ApprovalBurst => &mut self.approval_burst,
            Rule::AccountFrozen => &mut self.account_frozen,
            Rule::AccountUnfrozen => &mut self.account_unfrozen,
            Rule::NoticeToAllClients => &mut self.notice_to_all_clients,
        }
    }
}

/// `[security]`: the rule engine, event retention, the SIEM export and the measures.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Evaluate the rules at all (default true).
    pub enabled: bool,
    /// Append every event as a JSON line to this file (created if missing; fsync-ed
    /// after each batch). Off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_file: Option<PathBuf>,
    /// Write every event as a JSON line to the Unix stream socket at this path (a SIEM
    /// forwarder listening there); reconnected at the next batch after a failure. Off
    /// when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_socket: Option<PathBuf>,
    /// How long stored events are kept (default 90 days).
    #[serde(with = "crate::config::duration_secs")]
    pub retention: u64,
    /// Most stored events (default 100000); beyond, the oldest go.
    pub max_events: u64,
    /// How long `hold_sensitive` holds an account's sensitive kinds (default 24 hours).
    #[serde(with = "crate::config::duration_secs")]
    pub hold_sensitive_for: u64,
    /// The rules.
    pub rules: RulesConfig,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            siem_file: None,
            siem_socket: None,
            retention: 90 * 24 * 3600,
            max_events: 100_000,
            hold_sensitive_for: 24 * 3600,
            rules: RulesConfig::default(),
        }
    }
}

impl SecurityConfig {
    /// Why these settings cannot be used (the message names the key).
    pub fn check(&self) -> Result<(), String> {
        for rule in Rule::ALL {
            self.rules.get(rule).check(rule)?;
        }
        if self.retention == 0 {
            return Err("security.retention must be at least one second".into());
        }
        if self.max_events == 0 {
            return Err("security.max_events must be positive".into());
        }
        if self.hold_sensitive_for == 0 || self.hold_sensitive_for > rules::MAX_WINDOW_SECS {
            return Err("security.hold_sensitive_for must be 1s..=7d".into());
        }
        Ok(())
    }
}

/// Whether `event` concerns trust (device sets, freezes, recoveries, approvals, notices
/// to all clients): the events the transparency log is to record. Events of rules this
/// relay does not know do not.
pub fn concerns_trust(event: &SecurityEventInfo) -> bool {
    Rule::ALL
        .iter()
        .any(|r| r.name() == event.rule.as_str() && r.concerns_trust())
}

/// Called by the writer task with every stored event that [`concerns_trust`] (the
/// transparency log's entry point; see [`Security::on_trust_event`]).
pub type TrustHook = Arc<dyn Fn(&SecurityEventInfo) + Send + Sync>;

/// An event as a SIEM JSON line (no trailing newline): `{"event": "security_event",
/// "id", "time" (RFC 3339), "time_ms", "severity", "rule", "account", "device" (hex),
/// "address", "detail"}`; absent fields are null.
pub fn json_line(e: &SecurityEventInfo) -> String {
    let time =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms))
            .to_string();
    serde_json::json!({
        "event": "security_event",
        "id": e.id,
        "time": time,
        "time_ms": e.time_ms,
        "severity": e.severity.name(),
        "rule": e.rule.as_str(),
        "account": e.account.as_ref().map(|a| a.as_str()),
        "device": e.device.map(|d| d.to_hex()),
        "address": e.address.as_ref().map(|a| a.as_str()),
        "detail": e.detail.as_str(),
    })
    .to_string()
}

struct Raising {
    engine: Engine,
    next_id: u64,
    recent: VecDeque<Arc<SecurityEventInfo>>,
}

/// An event on its way to the store, and whether it is an alert for the other devices
/// of its account ([`Measure::NotifyDevices`]).
type Unwritten = (Arc<SecurityEventInfo>, bool);

/// The relay's security-event state.
pub struct Security {
    config: SecurityConfig,
    raising: Mutex<Raising>,
    feed: broadcast::Sender<Arc<SecurityEventInfo>>,
    out_tx: mpsc::Sender<Unwritten>,
    out_rx: Mutex<Option<mpsc::Receiver<Unwritten>>>,
    holds: Mutex<HashMap<AccountId, u64>>,
    any_hold: AtomicBool,
    /// Where events are stored.
    pub store: Arc<dyn EventStore>,
    trust_hook: Mutex<Option<TrustHook>>,
    observed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What a watch starts with: stored and recent events after `since`, and the feed of
/// what comes next.
pub struct WatchStart {
    /// Events after `since`, ascending (at most the frame bound).
    pub events: Vec<SecurityEventInfo>,
    /// More stored events follow the ones in `events`.
    pub more: bool,
    /// New events from now on (subscribed before the store was read).
    pub feed: broadcast::Receiver<Arc<SecurityEventInfo>>,
}

impl Security {
    /// The state for `config`, storing into `store` (ids continue after its last).
    pub fn new(config: SecurityConfig, store: Arc<dyn EventStore>) -> Self {
        let last = store.last_id().unwrap_or_else(|e| {
            warn!(error = %e, "reading the last security event id failed; ids restart at 1");
            0
        });
        let rules = config.rules.clone();
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (out_tx, out_rx) = mpsc::channel(MAX_UNWRITTEN_EVENTS);
        Self {
            raising: Mutex::new(Raising {
                engine: Engine::new(|r| rules.get(r)),
                next_id: last + 1,
                recent: VecDeque::new(),
            }),
            config,
            feed,
            out_tx,
            out_rx: Mutex::new(Some(out_rx)),
            holds: Mutex::new(HashMap::new()),
            any_hold: AtomicBool::new(false),
            store,
            trust_hook: Mutex::new(None),
            observed: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SecurityConfig {
        &self.config
    }

    /// Call `hook` with every event that [`concerns_trust`], once it is stored (from the
    /// writer task, never on a request path). The transparency log appends them here.
    pub fn on_trust_event(&self, hook: TrustHook) {
        *lock(&self.trust_hook) = Some(hook);
    }

    /// Observations evaluated so far (for tests).
    pub fn observed(&self) -> u64 {
        self.observed.load(Ordering::Relaxed)
    }

    /// Evaluate `obs` at `now_ms` (wall clock): the events it raised, already counted,
    /// broadcast and queued for the store and the SIEM export. The caller carries out
    /// their measures.
    pub fn observe(&self, now_ms: u64, obs: &Observation) -> Vec<(Raised, Arc<SecurityEventInfo>)> {
        if !self.config.enabled {
            return Vec::new();
        }
        self.observed.fetch_add(1, Ordering::Relaxed);
        let mut r = lock(&self.raising);
        let raised = r.engine.observe(now_ms, obs);
        let mut out = Vec::with_capacity(raised.len());
        for ev in raised {
            let id = r.next_id;
            r.next_id += 1;
            let info = Arc::new(SecurityEventInfo {
                id,
                time_ms: now_ms,
                severity: ev.severity,
                rule: BoundedString::truncating(ev.rule.name()),
                account: ev.account.clone(),
                device: ev.device,
                address: ev
                    .address
                    .map(|a| BoundedString::truncating(&a.to_string())),
                detail: BoundedString::truncating(&ev.detail),
            });
            metrics::counter!(m::SECURITY_EVENTS, "rule" => ev.rule.name(), "severity" => ev.severity.name())
                .increment(1);
            info!(
                id,
                rule = ev.rule.name(),
                severity = ev.severity.name(),
                account = ev.account.as_ref().map(|a| a.as_str()),
                device = ev.device.map(|d| d.to_hex()),
                address = ev.address.map(|a| a.to_string()),
                "security event"
            );
            if r.recent.len() >= RECENT_EVENTS {
                r.recent.pop_front();
            }
            r.recent.push_back(info.clone());
            // Under the lock: watchers see events in id order.
            let _ = self.feed.send(info.clone());
            let alert = ev.measure.contains(Measure::NotifyDevices) && ev.account.is_some();
            if self.out_tx.try_send((info.clone(), alert)).is_err() {
                metrics::counter!(m::SECURITY_EVENTS_DROPPED).increment(1);
            }
            out.push((ev, info));
        }
        out
    }

    /// Start a watch: events after `since` (stored and recent) and the feed from now on.
    pub async fn watch(&self, since: u64, max: usize) -> WatchStart {
        let (feed, recent) = {
            let r = lock(&self.raising);
            let recent: Vec<_> = r
                .recent
                .iter()
                .filter(|e| e.id > since)
                .map(|e| (**e).clone())
                .collect();
            (self.feed.subscribe(), recent)
        };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.after(since, max + 1))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut events = match stored {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "reading stored security events failed");
                Vec::new()
            }
        };
        let more = events.len() > max;
        events.truncate(max);
        if !more {
            let last = events.last().map_or(since, |e| e.id);
            events.extend(recent.into_iter().filter(|e| e.id > last));
            let n = events.len();
            if n > max {
                events.drain(..n - max);
            }
        }
        WatchStart { events, more, feed }
    }

    /// Hold `account`'s sensitive kinds until `until_ms`.
    pub fn hold(&self, account: &AccountId, until_ms: u64) {
        let mut holds = lock(&self.holds);
        if !holds.contains_key(account) && holds.len() >= MAX_HELD_ACCOUNTS {
            if let Some(first) = holds
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(a, _)| a.clone())
            {
                holds.remove(&first);
            }
        }
        let until = holds.entry(account.clone()).or_insert(0);
        *until = (*until).max(until_ms);
        self.any_hold.store(true, Ordering::Release);
    }

    /// Until when `account`'s sensitive kinds are held, if they are at `now_ms()` (read
    /// only while some account is held: otherwise this is one atomic load).
    pub fn held_until(&self, account: &AccountId, now_ms: impl FnOnce() -> u64) -> Option<u64> {
        if !self.any_hold.load(Ordering::Acquire) {
            return None;
        }
        let now_ms = now_ms();
        let mut holds = lock(&self.holds);
        holds.retain(|_, u| *u > now_ms);
        if holds.is_empty() {
            self.any_hold.store(false, Ordering::Release);
        }
        holds.get(account).copied()
    }

    /// The stored alerts ([`Measure::NotifyDevices`]) for `account` after `since`, for
    /// its device `device` (alerts about that device itself are for the others).
    pub async fn alerts_for(
        &self,
        account: &AccountId,
        device: DeviceId,
        since: u64,
        max: usize,
    ) -> Result<Vec<SecurityEventInfo>, crate::store::StoreError> {
        let store = self.store.clone();
        let account = account.clone();
        tokio::task::spawn_blocking(move || store.alerts_for(&account, &device, since, max))
            .await
            .map_err(|e| crate::store::StoreError::Backend(e.to_string()))?
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<Unwritten>> {
        lock(&self.out_rx).take()
    }
}

/// The SIEM sinks: a file and a Unix socket, as configured.
struct Siem {
    file: Option<(PathBuf, Option<std::fs::File>)>,
    socket: Option<(PathBuf, Option<std::os::unix::net::UnixStream>)>,
}

impl Siem {
    fn new(config: &SecurityConfig) -> Self {
        Self {
            file: config.siem_file.clone().map(|p| (p, None)),
            socket: config.siem_socket.clone().map(|p| (p, None)),
        }
    }

    fn write(&mut self, lines: &str) {
        if let Some((path, file)) = &mut self.file {
            if file.is_none() {
                *file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*path)
                    .map_err(
                        |e| warn!(path = %path.display(), error = %e, "cannot open the SIEM file"),
                    )
                    .ok();
            }
            let written = match file.as_mut() {
                Some(f) => f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()),
                None => Err(std::io::Error::other("not open")),
            };
            if let Err(e) = written {
                metrics::counter!(m::SECURITY_SINK_ERRORS, "sink" => "siem_file").increment(1);
                warn!(path = %path.display(), error = %e, "writing the SIEM file failed");
                *file = None;
            }
        }
        if let Some((path, sock)) = &mut self.socket {
            if sock.is_none() {
                *sock = std::os::unix::net::UnixStream::connect(&*path)
                    .and_then(|s| {
                        s.set_write_timeout(Some(Duration::from_secs(2)))?;
                        Ok(s)
                    })
                    .ok();
            }
            let written = match sock.as_mut() {
                Some(s) => s.write_all(lines.as_bytes()),
                None => Err(std::io::Error::other("not connected")),
            };
            if let Err(e) = written {
                metrics::counter!(m::SECURITY_SINK_ERRORS, "sink" => "siem_socket").increment(1);
                warn!(path = %path.display(), error = %e, "writing to the SIEM socket failed; reconnecting at the next event");
                *sock = None;
            }
        }
    }
}

/// The writer task: stores queued events, exports them to the SIEM sinks, hands those
/// that concern trust to the hook, and prunes the store to its retention. On `stop` it
/// writes what is queued and returns.
pub async fn write_loop(security: Arc<Security>, mut stop: watch::Receiver<bool>) {
    let Some(mut rx) = security.take_receiver() else {
        return;
    };
    let siem = Arc::new(Mutex::new(Siem::new(&security.config)));
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let mut stopping = false;
    loop {
        let mut batch = Vec::new();
        if stopping {
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, WRITE_BATCH) => if n == 0 { return },
                _ = prune.tick() => {
                    let s = security.clone();
                    let before = crate::relay::unix_ms()
                        .saturating_sub(s.config.retention.saturating_mul(1000));
                    let keep = s.config.max_events;
                    match tokio::task::spawn_blocking(move || s.store.prune(before, keep)).await {
                        Ok(Ok(n)) if n > 0 => info!(pruned = n, "security events past their retention deleted"),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(error = %e, "pruning security events failed"),
                        Err(e) => warn!(error = %e, "pruning security events failed"),
                    }
                    continue;
                }
                _ = stop.changed() => { stopping = true; continue; }
            }
        }
        let s = security.clone();
        let siem = siem.clone();
        let hook = lock(&security.trust_hook).clone();
        let written = tokio::task::spawn_blocking(move || {
            let events: Vec<SecurityEventInfo> = batch.iter().map(|(e, _)| (**e).clone()).collect();
            let alerts: Vec<u64> = batch
                .iter()
                .filter(|(_, alert)| *alert)
                .map(|(e, _)| e.id)
                .collect();
            if let Err(e) = s.store.append_alerting(&events, &alerts) {
                metrics::counter!(m::SECURITY_SINK_ERRORS, "sink" => "store").increment(1);
                warn!(error = %e, "storing security events failed");
            }
            let mut lines = String::new();
            for e in &events {
                lines.push_str(&json_line(e));
                lines.push('\n');
            }
            lock(&siem).write(&lines);
            if let Some(hook) = hook {
                for e in events.iter().filter(|e| concerns_trust(e)) {
                    hook(e);
                }
            }
        })
        .await;
        if let Err(e) = written {
            warn!(error = %e, "the security event writer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::store::events::MemoryEventStore;

    fn security() -> Security {
        let mut config = SecurityConfig::default();
        config.rules.get_mut(Rule::AccountFrozen).threshold = 1;
        Security::new(config, Arc::new(MemoryEventStore::new(100)))
    }

    fn frozen(n: u8) -> Observation {
        Observation::Frozen {
            account: AccountId::new(&format!("acct-{n}")).unwrap(),
            by: sealpost_protocol::identity::DeviceId([n; 16]),
        }
    }

    #[tokio::test]
    async fn events_get_increasing_ids_and_a_watch_sees_recent_ones_before_they_are_stored() {
        let s = security();
        let a = s.observe(1000, &frozen(1));
        let b = s.observe(2000, &frozen(2));
        assert_eq!((a[0].1.id, b[0].1.id), (1, 2));
        assert!(concerns_trust(&a[0].1));
        // Nothing stored yet (no writer ran): the recent events answer the watch.
        let start = s.watch(0, 10).await;
        assert_eq!(
            start.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(!start.more);
        let mut feed = start.feed;
        s.observe(3000, &frozen(3));
        assert_eq!(feed.recv().await.unwrap().id, 3);
        // Stored ones come from the store; a since skips what the watcher has.
        s.store
            .append(&[(*a[0].1).clone(), (*b[0].1).clone()])
            .unwrap();
        let start = s.watch(1, 10).await;
        assert_eq!(
            start.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [2, 3]
        );
        let paged = s.watch(0, 1).await;
        assert!(paged.more);
        assert_eq!(paged.events.len(), 1);
        // A restarted relay continues the ids after the stored ones.
        let again = Security::new(SecurityConfig::default(), s.store.clone());
        assert_eq!(again.observe(4000, &frozen(9))[0].1.id, 3);
    }

    #[test]
    fn a_hold_lasts_until_it_ends_and_holds_are_bounded() {
        let s = security();
        let a = AccountId::new("alice").unwrap();
        assert_eq!(
            s.held_until(&a, || panic!("no hold: the clock is not read")),
            None
        );
        s.hold(&a, 5000);
        assert_eq!(s.held_until(&a, || 4999), Some(5000));
        assert_eq!(s.held_until(&a, || 5000), None);
        for i in 0..MAX_HELD_ACCOUNTS + 10 {
            s.hold(
                &AccountId::new(&format!("a{i}")).unwrap(),
                10_000 + i as u64,
            );
        }
        assert!(lock(&s.holds).len() <= MAX_HELD_ACCOUNTS);
    }

    #[test]
    fn a_siem_line_is_one_json_object_with_hex_device_ids() {
        let s = security();
        let e = &s.observe(1_700_000_000_000, &frozen(0x11))[0].1;
        let line = json_line(e);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "security_event");
        assert_eq!(v["rule"], "account_frozen");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["account"], "acct-17");
        assert_eq!(v["device"], "11".repeat(16));
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert!(v["address"].is_null());
    }

    #[test]
    fn a_disabled_engine_raises_nothing() {
        let s = Security::new(
            SecurityConfig {
                enabled: false,
                ..SecurityConfig::default()
            },
            Arc::new(MemoryEventStore::new(10)),
        );
        assert!(s.observe(0, &frozen(1)).is_empty());
        assert_eq!(s.observed(), 0);
    }
}
