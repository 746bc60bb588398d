//! The security rule engine: I/O-free. The relay shell hands it [`Observation`]s (what
//! it saw, metadata only) with the time; it answers with the [`SecurityEvent`]s the
//! named rules raise. Every window and every map is bounded ([`MAX_TRACKED_KEYS`],
//! [`MAX_THRESHOLD`]), so an attacker who varies accounts, addresses or targets cannot
//! grow the relay's memory; when a rule's table is full, the key seen least recently is
//! forgotten.
//!
//! A rule counts observations per key (an account, an address, a device, a notice) in a
//! sliding window. When the count reaches the rule's threshold the rule fires once, the
//! key's count is cleared, and the key stays quiet for one window: a burst that goes on
//! raises one event per window, not one per observation.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::wire::SecuritySeverity;
use serde::{Deserialize, Serialize};

/// Keys one rule tracks at most; beyond, the key seen least recently is forgotten.
pub const MAX_TRACKED_KEYS: usize = 10_000;
/// Largest threshold a rule may have (a key keeps at most this many timestamps).
pub const MAX_THRESHOLD: u32 = 10_000;
/// Longest window a rule may have, seconds (7 days).
pub const MAX_WINDOW_SECS: u64 = 7 * 24 * 3600;

/// The rules, by their stable names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Failed authentications (or enrolments, link signatures) naming one account.
    AuthFailuresAccount,
    /// Failed authentications from one remote address.
    AuthFailuresAddress,
    /// A device on its cooling-off (newly added) attempted a sensitive kind.
    SensitiveDuringCoolingOff,
    /// Devices added to one account in a short time.
    DeviceCountJump,
    /// A staff device offered a recovery of an account.
    RecoveryRequested,
    /// A link request to an account none of whose devices was connected.
    UnsolicitedLinkRequest,
    /// One device fetching the bundles of many distinct accounts (enumeration).
    BundleFetchBurst,
    /// Sends or directory reads to accounts the routing policy does not let the device
    /// reach (not assigned).
    UnassignedContactAttempt,
    /// Requests refused by a rate limit.
    RateLimited,
    /// One staff member approving many distinct requests.
    ApprovalBurst,
    /// An account was frozen by its device log.
    AccountFrozen,
    /// An account was unfrozen by a staff quorum.
    AccountUnfrozen,
    /// A notice addressed to all clients was accepted.
    NoticeToAllClients,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 13] = [
        Rule::AuthFailuresAccount,
        Rule::AuthFailuresAddress,
        Rule::SensitiveDuringCoolingOff,
        Rule::DeviceCountJump,
        Rule::RecoveryRequested,
        Rule::UnsolicitedLinkRequest,
        Rule::BundleFetchBurst,
        Rule::UnassignedContactAttempt,
        Rule::RateLimited,
        Rule::ApprovalBurst,
        Rule::AccountFrozen,
        Rule::AccountUnfrozen,
        Rule::NoticeToAllClients,
    ];

    /// The stable snake_case name (configuration key, event field, metric label).
    pub fn name(self) -> &'static str {
        match self {
            Rule::AuthFailuresAccount => "auth_failures_account",
            Rule::AuthFailuresAddress => "auth_failures_address",
            Rule::SensitiveDuringCoolingOff => "sensitive_during_cooling_off",
            Rule::DeviceCountJump => "device_count_jump",
            Rule::RecoveryRequested => "recovery_requested",
            Rule::UnsolicitedLinkRequest => "unsolicited_link_request",
            Rule::BundleFetchBurst => "bundle_fetch_burst",
            Rule::UnassignedContactAttempt => "unassigned_contact_attempt",
            Rule::RateLimited => "rate_limited",
            Rule::ApprovalBurst => "approval_burst",
            Rule::AccountFrozen => "account_frozen",
            Rule::AccountUnfrozen => "account_unfrozen",
            Rule::NoticeToAllClients => "notice_to_all_clients",
        }
    }

    /// Whether an event of this rule concerns trust (device sets, freezes, recoveries,
    /// approvals): the events the transparency log records.
    pub fn concerns_trust(self) -> bool {
        matches!(
            self,
            Rule::SensitiveDuringCoolingOff
                | Rule::DeviceCountJump
                | Rule::RecoveryRequested
                | Rule::UnsolicitedLinkRequest
                | Rule::ApprovalBurst
                | Rule::AccountFrozen
                | Rule::AccountUnfrozen
                | Rule::NoticeToAllClients
        )
    }
}

/// A measure the relay takes against the account an event concerns, switched on per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Refuse the sensitive envelope kinds of the roster policy from every device of the
    /// account for `security.hold_sensitive_for`.
    HoldSensitive,
    /// Drop the account's pending link requests (with their offers): a device that wants
    /// to join must start again, and gets a new link code.
    RequireFreshLinkCode,
    /// Tell the account's other devices (every device but the one the event concerns):
    /// pushed to those online, kept for the others until they next connect and ask
    /// (`get_account_alerts`, docs/PROTOCOL.md §21.3), within the events' retention.
    NotifyDevices,
}

impl Measure {
    /// Every measure.
    pub const ALL: [Measure; 3] = [
        Measure::HoldSensitive,
        Measure::RequireFreshLinkCode,
        Measure::NotifyDevices,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Measure::HoldSensitive => "hold_sensitive",
            Measure::RequireFreshLinkCode => "require_fresh_link_code",
            Measure::NotifyDevices => "notify_devices",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Measure::HoldSensitive => 1,
            Measure::RequireFreshLinkCode => 2,
            Measure::NotifyDevices => 4,
        }
    }
}

/// The measures switched on for a rule (any combination; written in the configuration
/// as one name or a list of names).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<Measure>", from = "Vec<Measure>")]
pub struct Measures(u8);

impl Measures {
    /// No measure.
    pub const NONE: Measures = Measures(0);

    /// These measures and `m`.
    #[must_use]
    pub const fn with(self, m: Measure) -> Self {
        Measures(self.0 | m.bit())
    }

    /// Whether `m` is switched on.
    pub const fn contains(self, m: Measure) -> bool {
        self.0 & m.bit() != 0
    }

    /// Whether none is.
    pub const fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The measures switched on.
    pub fn iter(self) -> impl Iterator<Item = Measure> {
        Measure::ALL.into_iter().filter(move |m| self.contains(*m))
    }
}

impl From<Measures> for Vec<Measure> {
    fn from(m: Measures) -> Self {
        m.iter().collect()
    }
}

impl From<Vec<Measure>> for Measures {
    fn from(v: Vec<Measure>) -> Self {
        v.into_iter().fold(Measures::NONE, Measures::with)
    }
}

impl FromIterator<Measure> for Measures {
    fn from_iter<I: IntoIterator<Item = Measure>>(iter: I) -> Self {
        iter.into_iter().fold(Measures::NONE, Measures::with)
    }
}

impl std::fmt::Debug for Measures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(Measure::name))
            .finish()
    }
}

/// One rule's settings (`[security.rules.<name>]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Whether the rule is evaluated.
    pub enabled: bool,
    /// Observations of one key within `window` that raise the event (1..=10000).
    pub threshold: u32,
    /// The sliding window, and how long a key stays quiet after its event.
    #[serde(with = "crate::config::duration_secs")]
    pub window: u64,
    /// The severity of its events.
    pub severity: SecuritySeverity,
    /// The targeted measures taken when it fires (none by default).
    #[serde(default, skip_serializing_if = "Measures::is_empty")]
    pub measure: Measures,
}

impl RuleSettings {
    const fn new(threshold: u32, window: u64, severity: SecuritySeverity) -> Self {
        Self {
            enabled: true,
            threshold,
            window,
            severity,
            measure: Measures::NONE,
        }
    }

    /// The defaults of `rule` (docs/OPERATIONS.md, "Security events").
    pub const fn default_for(rule: Rule) -> Self {
        use SecuritySeverity::*;
        match rule {
            Rule::AuthFailuresAccount => Self::new(5, 300, High),
            Rule::AuthFailuresAddress => Self::new(10, 300, Medium),
            Rule::SensitiveDuringCoolingOff => Self::new(1, 3600, High),
            Rule::DeviceCountJump => Self::new(3, 24 * 3600, High),
            Rule::RecoveryRequested => Self::new(1, 60, Medium),
            Rule::UnsolicitedLinkRequest => Self::new(1, 600, Medium),
            Rule::BundleFetchBurst => Self::new(20, 60, Medium),
            Rule::UnassignedContactAttempt => Self::new(3, 600, Medium),
            Rule::RateLimited => Self::new(10, 60, Low),
            Rule::ApprovalBurst => Self::new(10, 600, High),
            Rule::AccountFrozen => Self::new(1, 60, High),
            Rule::AccountUnfrozen => Self::new(1, 60, Medium),
            Rule::NoticeToAllClients => Self::new(1, 3600, Info),
        }
    }

    /// Why these settings cannot be used, naming `rule`.
    pub fn check(&self, rule: Rule) -> Result<(), String> {
        if self.threshold == 0 || self.threshold > MAX_THRESHOLD {
            return Err(format!(
                "security.rules.{}.threshold must be 1..={MAX_THRESHOLD}, got {}",
                rule.name(),
                self.threshold
            ));
        }
        if self.window == 0 || self.window > MAX_WINDOW_SECS {
            return Err(format!(
                "security.rules.{}.window must be 1s..=7d, got {}s",
                rule.name(),
                self.window
            ));
        }
        Ok(())
    }
}

/// What the relay saw. Metadata only: accounts, devices, addresses, kinds, counts; the
/// relay has no message content to put here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// An authentication, enrolment or link signature failed. `account`: the account it
    /// named, when the relay knows it.
    AuthFailed {
        /// The account named.
        account: Option<AccountId>,
        /// The device named.
        device: Option<DeviceId>,
        /// From where.
        address: IpAddr,
    },
    /// A device within its cooling-off sent a sensitive kind (refused by the send rule).
    SensitiveDuringCoolingOff {
        /// The account.
        account: AccountId,
        /// The device on cooling-off.
        device: DeviceId,
        /// The kind attempted.
        kind: &'static str,
    },
    /// A device was added to an account's log (link or recovery).
    DeviceAdded {
        /// The account.
        account: AccountId,
        /// The device added.
        device: DeviceId,
        /// Active devices of the account after the addition.
        devices: usize,
    },
    /// A staff device offered the recovery of an account.
    RecoveryRequested {
        /// The account to recover.
        account: AccountId,
        /// The staff device that offered it.
        by: DeviceId,
    },
    /// A link request (`link_start`) to `account`; `solicited`: a device of the account
    /// was connected when it arrived.
    LinkRequest {
        /// The account.
        account: AccountId,
        /// The device asking to join.
        device: DeviceId,
        /// From where.
        address: IpAddr,
        /// Whether a device of the account was connected.
        solicited: bool,
    },
    /// A device fetched the bundles of `target`.
    BundleFetch {
        /// The fetching account.
        account: AccountId,
        /// The fetching device.
        device: DeviceId,
        /// The account whose bundles were asked for.
        target: AccountId,
    },
    /// A send or directory read refused by the routing policy (not assigned).
    UnassignedContact {
        /// The account.
        account: AccountId,
        /// The device.
        device: DeviceId,
        /// The account it tried to reach.
        target: AccountId,
    },
    /// A request refused by a rate limit.
    RateLimited {
        /// The authenticated account, if any.
        account: Option<AccountId>,
        /// The authenticated device, if any.
        device: Option<DeviceId>,
        /// From where.
        address: IpAddr,
    },
    /// A staff member's approval of a request reached the relay (in a quorum-carried log
    /// entry or a notice's cosignatures). The same approval seen again is not counted
    /// again.
    ApprovalSigned {
        /// The approver's account.
        approver: AccountId,
        /// The approver's device.
        device: DeviceId,
        /// The digest of the request approved.
        request: [u8; 32],
    },
    /// An account was frozen by its device log.
    Frozen {
        /// The account.
        account: AccountId,
        /// The device that carried the entry.
        by: DeviceId,
    },
    /// An account was unfrozen.
    Unfrozen {
        /// The account.
        account: AccountId,
        /// The device that carried the entry.
        by: DeviceId,
    },
    /// A notice to all clients was accepted for one recipient (the same notice is seen
    /// once per recipient device; it raises one event).
    NoticeToAllClients {
        /// The sender's account.
        account: AccountId,
        /// The sender's device.
        device: DeviceId,
        /// The notice's identity (its header digest).
        notice: [u8; 32],
    },
}

/// A security event as the engine raises it (before the shell gives it an id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raised {
    /// The rule.
    pub rule: Rule,
    /// Its severity.
    pub severity: SecuritySeverity,
    /// The account concerned.
    pub account: Option<AccountId>,
    /// The device concerned.
    pub device: Option<DeviceId>,
    /// The address concerned.
    pub address: Option<IpAddr>,
    /// What was seen (metadata only).
    pub detail: String,
    /// The measures to take (the rule's settings).
    pub measure: Measures,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Account(u64),
    Address(IpAddr),
    Device(DeviceId),
    Digest([u8; 32]),
}

fn account_key(a: &AccountId) -> Key {
    Key::Account(tag_of(a.as_str().as_bytes()))
}

/// A 64-bit tag of `bytes` for counting distinct values (a collision only merges two
/// values in one count). Keyed with a fixed key: the tags are never shown.
fn tag_of(bytes: &[u8]) -> u64 {
    let d = sealpost_protocol::crypto::sha256(&[b"Sealpost_SecurityTag_v1", bytes]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&d[..8]);
    u64::from_le_bytes(t)
}

#[derive(Debug, Default)]
struct Track {
    /// (time, tag of a distinct value or 0) of the observations in the window, at most
    /// the threshold.
    hits: VecDeque<(u64, u64)>,
    /// No event before this time (one window after the last).
    quiet_until: u64,
    /// Last observation.
    last: u64,
}

#[derive(Debug)]
struct RuleState {
    settings: RuleSettings,
    keys: HashMap<Key, Track>,
}

impl RuleState {
    /// Count one observation of `key` (of the distinct value `tag`, if any) at `now`;
    /// true when the rule fires.
    fn hit(&mut self, now: u64, key: Key, tag: Option<u64>) -> bool {
        let s = self.settings;
        if !s.enabled {
            return false;
        }
        let window_ms = s.window.saturating_mul(1000);
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_TRACKED_KEYS {
            // Forget what has expired; if that frees nothing, the key seen least recently.
            self.keys
                .retain(|_, t| t.last.saturating_add(window_ms) > now || t.quiet_until > now);
            if self.keys.len() >= MAX_TRACKED_KEYS {
                if let Some(oldest) = self
                    .keys
                    .iter()
                    .min_by_key(|(_, t)| t.last)
                    .map(|(k, _)| *k)
                {
                    self.keys.remove(&oldest);
                }
            }
        }
        let track = self.keys.entry(key).or_default();
        track.last = now;
        while track
            .hits
            .front()
            .is_some_and(|(t, _)| t.saturating_add(window_ms) <= now)
        {
            track.hits.pop_front();
        }
        if track.quiet_until > now {
            return false;
        }
        if let Some(tag) = tag {
            if track.hits.iter().any(|(_, t)| *t == tag) {
                return false;
            }
        }
        track.hits.push_back((now, tag.unwrap_or(0)));
        if track.hits.len() >= s.threshold as usize {
            track.hits.clear();
            track.quiet_until = now.saturating_add(window_ms);
            return true;
        }
        false
    }
}

/// The engine: one state per rule.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<RuleState>,
}

fn window_text(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

impl Engine {
    /// An engine with `settings(rule)` for every rule.
    pub fn new(settings: impl Fn(Rule) -> RuleSettings) -> Self {
        Self {
            rules: Rule::ALL
                .iter()
                .map(|r| RuleState {
                    settings: settings(*r),
                    keys: HashMap::new(),
                })
                .collect(),
        }
    }

    fn state(&mut self, rule: Rule) -> &mut RuleState {
        // Rule::ALL is in declaration order, and `rules` was built from it.
        &mut self.rules[rule as usize]
    }

    /// Keys tracked by `rule` now (for tests and bounds checks).
    pub fn tracked(&self, rule: Rule) -> usize {
        self.rules[rule as usize].keys.len()
    }

    /// Evaluate `obs` seen at `now_ms`: the events it raises (usually none).
    pub fn observe(&mut self, now_ms: u64, obs: &Observation) -> Vec<Raised> {
        let mut out = Vec::new();
        let mut fire = |engine: &mut Engine,
                        rule: Rule,
                        key: Key,
                        tag: Option<u64>,
                        account: Option<&AccountId>,
                        device: Option<DeviceId>,
                        address: Option<IpAddr>,
                        detail: &dyn Fn(&RuleSettings) -> String| {
            let st = engine.state(rule);
            if st.hit(now_ms, key, tag) {
                let s = st.settings;
                out.push(Raised {
                    rule,
                    severity: s.severity,
                    account: account.cloned(),
                    device,
                    address,
                    detail: detail(&s),
                    measure: s.measure,
                });
            }
        };
        match obs {
            Observation::AuthFailed {
                account,
                device,
                address,
            } => {
                if let Some(a) = account {
                    fire(
                        self,
                        Rule::AuthFailuresAccount,
                        account_key(a),
                        None,
                        Some(a),
                        *device,
                        Some(*address),
                        &|s| {
                            format!(
                                "{} failed authentications naming the account within {}",
                                s.threshold,
                                window_text(s.window)
                            )
                        },
                    );
                }
                fire(
                    self,
                    Rule::AuthFailuresAddress,
                    Key::Address(*address),
                    None,
                    account.as_ref(),
                    *device,
                    Some(*address),
                    &|s| {
                        format!(
                            "{} failed authentications from the address within {}",
                            s.threshold,
                            window_text(s.window)
                        )
                    },
                );
            }
            Observation::SensitiveDuringCoolingOff {
                account,
                device,
                kind,
            } => fire(
                self,
                Rule::SensitiveDuringCoolingOff,
                Key::Device(*device),
                None,
                Some(account),
                Some(*device),
                None,
                &|_| format!("a device on its cooling-off attempted a {kind} envelope (refused)"),
            ),
            Observation::DeviceAdded {
                account,
                device,
                devices,
            } => fire(
                self,
                Rule::DeviceCountJump,
                account_key(account),
                None,
                Some(account),
                Some(*device),
                None,
                &|s| {
                    format!(
                        "{} devices added within {}; the account has {devices} active devices",
                        s.threshold,
                        window_text(s.window)
                    )
                },
            ),
            Observation::RecoveryRequested { account, by } => fire(
                self,
                Rule::RecoveryRequested,
                account_key(account),
                None,
                Some(account),
                Some(*by),
                None,
                &|_| format!("staff device {by} offered a recovery of the account"),
            ),
            Observation::LinkRequest {
                account,
                device,
                address,
                solicited,
            } => {
                if !solicited {
                    fire(
                        self,
                        Rule::UnsolicitedLinkRequest,
                        account_key(account),
                        None,
                        Some(account),
                        Some(*device),
                        Some(*address),
                        &|_| {
                            "a link request to the account while none of its devices was \
                             connected"
                                .to_owned()
                        },
                    )
                }
            }
            Observation::BundleFetch {
                account,
                device,
                target,
            } => fire(
                self,
                Rule::BundleFetchBurst,
                Key::Device(*device),
                Some(tag_of(target.as_str().as_bytes())),
                Some(account),
                Some(*device),
                None,
                &|s| {
                    format!(
                        "bundles of {} distinct accounts fetched within {}",
                        s.threshold,
                        window_text(s.window)
                    )
                },
            ),
            Observation::UnassignedContact {
                account,
                device,
                target,
            } => fire(
                self,
                Rule::UnassignedContactAttempt,
                account_key(account),
                None,
                Some(account),
                Some(*device),
                None,
                &|s| {
                    format!(
                        "{} attempts to reach accounts not assigned to it within {} (last: {target})",
                        s.threshold,
                        window_text(s.window)
                    )
                },
            ),
            Observation::RateLimited {
                account,
                device,
                address,
            } => {
                let key = match account {
                    Some(a) => account_key(a),
                    None => Key::Address(*address),
                };
                fire(
                    self,
                    Rule::RateLimited,
                    key,
                    None,
                    account.as_ref(),
                    *device,
                    Some(*address),
                    &|s| {
                        format!(
                            "{} requests refused by rate limits within {}",
                            s.threshold,
                            window_text(s.window)
                        )
                    },
                )
            }
            Observation::ApprovalSigned {
                approver,
                device,
                request,
            } => fire(
                self,
                Rule::ApprovalBurst,
                account_key(approver),
                Some(tag_of(request)),
                Some(approver),
                Some(*device),
                None,
                &|s| {
                    format!(
                        "{} distinct requests approved by this staff member within {}",
                        s.threshold,
                        window_text(s.window)
                    )
                },
            ),
            Observation::Frozen { account, by } => fire(
                self,
                Rule::AccountFrozen,
                account_key(account),
                None,
                Some(account),
                Some(*by),
                None,
                &|_| "the account was frozen by its device log".to_owned(),
            ),
            Observation::Unfrozen { account, by } => fire(
                self,
                Rule::AccountUnfrozen,
                account_key(account),
                None,
                Some(account),
                Some(*by),
                None,
                &|_| "the account was unfrozen by a staff quorum".to_owned(),
            ),
            Observation::NoticeToAllClients {
                account,
                device,
                notice,
            } => fire(
                self,
                Rule::NoticeToAllClients,
                Key::Digest(*notice),
                None,
                Some(account),
                Some(*device),
                None,
                &|_| "a notice to all clients was accepted".to_owned(),
            ),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const WINDOW_SECS: u64 = 10;

    fn acct(n: u64) -> AccountId {
        AccountId::new(&format!("acct-{n}")).unwrap()
    }

    fn addr(n: u64) -> IpAddr {
        IpAddr::from([10, 0, (n >> 8) as u8, n as u8])
    }

    /// An engine where every rule has `threshold` and a 10 s window.
    fn engine(threshold: u32) -> Engine {
        Engine::new(|r| RuleSettings {
            threshold,
            window: WINDOW_SECS,
            ..RuleSettings::default_for(r)
        })
    }

    /// The i-th observation of an attack that `rule` must catch (same key, distinct
    /// values where the rule counts distinct ones).
    fn attack(rule: Rule, i: u64) -> Observation {
        let a = acct(1);
        let d = DeviceId([1; 16]);
        match rule {
            Rule::AuthFailuresAccount => Observation::AuthFailed {
                account: Some(a),
                device: Some(d),
                // Another address each time: only the account rule counts them together.
                address: addr(100 + i),
            },
            Rule::AuthFailuresAddress => Observation::AuthFailed {
                account: None,
                device: None,
                address: addr(1),
            },
            Rule::SensitiveDuringCoolingOff => Observation::SensitiveDuringCoolingOff {
                account: a,
                device: d,
                kind: "payment_instruction",
            },
            Rule::DeviceCountJump => Observation::DeviceAdded {
                account: a,
                device: DeviceId([i as u8; 16]),
                devices: 1 + i as usize,
            },
            Rule::RecoveryRequested => Observation::RecoveryRequested { account: a, by: d },
            Rule::UnsolicitedLinkRequest => Observation::LinkRequest {
                account: a,
                device: DeviceId([i as u8; 16]),
                address: addr(1),
                solicited: false,
            },
            Rule::BundleFetchBurst => Observation::BundleFetch {
                account: a,
                device: d,
                target: acct(1000 + i),
            },
            Rule::UnassignedContactAttempt => Observation::UnassignedContact {
                account: a,
                device: d,
                target: acct(1000 + i),
            },
            Rule::RateLimited => Observation::RateLimited {
                account: Some(a),
                device: Some(d),
                address: addr(1),
            },
            Rule::ApprovalBurst => Observation::ApprovalSigned {
                approver: a,
                device: d,
                request: [i as u8; 32],
            },
            Rule::AccountFrozen => Observation::Frozen { account: a, by: d },
            Rule::AccountUnfrozen => Observation::Unfrozen { account: a, by: d },
            Rule::NoticeToAllClients => Observation::NoticeToAllClients {
                account: a,
                device: d,
                notice: [7; 32],
            },
        }
    }

    fn fired(e: &mut Engine, now: u64, obs: &Observation, rule: Rule) -> usize {
        e.observe(now, obs)
            .iter()
            .filter(|r| r.rule == rule)
            .count()
    }

    #[test]
    fn every_rule_fires_exactly_once_at_its_threshold_and_not_below() {
        for rule in Rule::ALL {
            // The notice rule counts one notice once, however many recipients.
            let threshold = if rule == Rule::NoticeToAllClients {
                1
            } else {
                3
            };
            let mut e = engine(threshold);
            let mut events = Vec::new();
            for i in 0..10u64 {
                let raised = e.observe(1000 + i, &attack(rule, i));
                for r in raised {
                    events.push((i, r));
                }
            }
            let mine: Vec<_> = events.iter().filter(|(_, r)| r.rule == rule).collect();
            assert_eq!(mine.len(), 1, "{}: {events:?}", rule.name());
            let (at, ev) = mine[0];
            assert_eq!(
                *at,
                u64::from(threshold) - 1,
                "{} fired early or late",
                rule.name()
            );
            // The address rule's attack names no account (an unknown device).
            let want = (rule != Rule::AuthFailuresAddress).then(|| acct(1));
            assert_eq!(ev.account, want, "{}", rule.name());
            assert_eq!(ev.severity, RuleSettings::default_for(rule).severity);
            assert!(!ev.detail.is_empty());
            // No other rule fired on these observations (the auth observation also
            // feeds the address rule, with one address per try in the account attack).
            assert!(
                events.iter().all(|(_, r)| r.rule == rule),
                "{}: {events:?}",
                rule.name()
            );
        }
    }

    #[test]
    fn windows_expire_and_a_key_fires_again_one_window_after_its_event() {
        let rule = Rule::AuthFailuresAddress;
        let mut e = engine(3);
        let obs = attack(rule, 0);
        let w = WINDOW_SECS * 1000;
        assert_eq!(fired(&mut e, 0, &obs, rule), 0);
        assert_eq!(fired(&mut e, 1, &obs, rule), 0);
        // The first two have left the window: two more are still below the threshold.
        assert_eq!(fired(&mut e, w + 1, &obs, rule), 0);
        assert_eq!(fired(&mut e, w + 2, &obs, rule), 0);
        assert_eq!(fired(&mut e, w + 3, &obs, rule), 1);
        // Quiet for one window after the event, however long the burst goes on.
        for t in 0..50 {
            assert_eq!(fired(&mut e, w + 4 + t, &obs, rule), 0);
        }
        let later = 2 * w + 4;
        assert_eq!(fired(&mut e, later, &obs, rule), 0);
        assert_eq!(fired(&mut e, later + 1, &obs, rule), 0);
        assert_eq!(fired(&mut e, later + 2, &obs, rule), 1);
    }

    #[test]
    fn distinct_rules_do_not_count_the_same_target_twice() {
        let mut e = engine(3);
        let same = Observation::BundleFetch {
            account: acct(1),
            device: DeviceId([1; 16]),
            target: acct(2),
        };
        for t in 0..100 {
            assert_eq!(fired(&mut e, t, &same, Rule::BundleFetchBurst), 0);
        }
        let approval = attack(Rule::ApprovalBurst, 0);
        for t in 0..100 {
            assert_eq!(fired(&mut e, t, &approval, Rule::ApprovalBurst), 0);
        }
    }

    #[test]
    fn a_solicited_link_and_a_disabled_rule_raise_nothing() {
        let mut e = engine(1);
        let solicited = Observation::LinkRequest {
            account: acct(1),
            device: DeviceId([2; 16]),
            address: addr(1),
            solicited: true,
        };
        assert!(e.observe(0, &solicited).is_empty());
        let mut off = Engine::new(|r| RuleSettings {
            enabled: r != Rule::AccountFrozen,
            ..RuleSettings::default_for(r)
        });
        assert!(off.observe(0, &attack(Rule::AccountFrozen, 0)).is_empty());
        assert_eq!(off.tracked(Rule::AccountFrozen), 0);
    }

    #[test]
    fn tracked_keys_are_bounded_and_the_least_recent_is_forgotten() {
        let mut e = engine(2);
        let n = MAX_TRACKED_KEYS as u64 + 500;
        for i in 0..n {
            let obs = Observation::AuthFailed {
                account: None,
                device: None,
                address: IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            };
            assert!(e.observe(i, &obs).is_empty());
        }
        assert!(e.tracked(Rule::AuthFailuresAddress) <= MAX_TRACKED_KEYS);
        // The newest key is still tracked: its second failure fires.
        let last = n - 1;
        let obs = Observation::AuthFailed {
            account: None,
            device: None,
            address: IpAddr::from([10, (last >> 16) as u8, (last >> 8) as u8, last as u8]),
        };
        assert_eq!(fired(&mut e, n, &obs, Rule::AuthFailuresAddress), 1);
        // The oldest was forgotten: its second failure counts as a first.
        let first = Observation::AuthFailed {
            account: None,
            device: None,
            address: IpAddr::from([10, 0, 0, 0]),
        };
        assert_eq!(fired(&mut e, n + 1, &first, Rule::AuthFailuresAddress), 0);
    }

    #[test]
    fn settings_are_checked_and_names_are_stable() {
        for rule in Rule::ALL {
            assert!(RuleSettings::default_for(rule).check(rule).is_ok());
            let zero = RuleSettings {
                threshold: 0,
                ..RuleSettings::default_for(rule)
            };
            assert!(zero.check(rule).unwrap_err().contains(rule.name()));
            let no_window = RuleSettings {
                window: 0,
                ..RuleSettings::default_for(rule)
            };
            assert!(no_window.check(rule).is_err());
            // The enum order is the engine's table order.
            assert_eq!(Rule::ALL[rule as usize], rule);
        }
        let names: std::collections::BTreeSet<_> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
    }
}
