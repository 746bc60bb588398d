//! The relay's trust state (docs/PROTOCOL.md §19): the roster chain verified from the
//! pinned organisation fingerprint, and a bounded cache of each account's verified device
//! set for the send rules.
//!
//! The send path is hot, so it never verifies a signature: the device set is computed
//! once per account by [`DeviceLog::verify`] (on first use after a start, and after each
//! append), kept as an [`AccountTrust`] snapshot, and each connection holds an `Arc` to
//! its own account's snapshot ([`SenderTrust`]). A snapshot that an append or a roster
//! change replaced is marked stale, so the next `send` on any connection holding it
//! fetches the new one. Checking a `send` therefore costs one atomic load, one
//! comparison of the envelope kind against the sensitive kinds (at most 8) and, only for
//! a sensitive kind, one read of the wall clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sealpost_protocol::envelope::EnvelopeKind;
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{
    DeviceLog, DeviceSet, EntryTimes, OrgFingerprint, RosterChain, SendDecision, SignedRoster,
    TrustError,
};

/// What the send rules need about one account, from its verified device log.
#[derive(Debug)]
pub struct AccountTrust {
    /// The account.
    pub account: AccountId,
    /// Entries in the log this was computed from.
    pub log_len: u64,
    /// Whether the account is frozen.
    pub frozen: bool,
    /// Active devices and the end of their cooling-off (ms since the Unix epoch).
    pub devices: HashMap<DeviceId, u64>,
    /// Kinds refused from a device on probation or a frozen account.
    pub sensitive: Vec<EnvelopeKind>,
    stale: AtomicBool,
}

impl AccountTrust {
    /// From a verified device set.
    pub fn from_set(set: &DeviceSet, log_len: u64) -> Self {
        Self {
            account: set.account.clone(),
            log_len,
            frozen: set.frozen,
            devices: set
                .devices
                .iter()
                .map(|d| (d.identity.device_id(), d.probation_until_ms))
                .collect(),
            sensitive: set.sensitive_kinds.clone(),
            stale: AtomicBool::new(false),
        }
    }

    /// Whether a newer snapshot replaced this one.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Whether `device` is an active device of the account.
    pub fn is_active(&self, device: &DeviceId) -> bool {
        self.devices.contains_key(device)
    }

    /// The rule of §19.6 for `device` sending `kind` at `now_ms`.
    pub fn may_send(&self, device: &DeviceId, kind: EnvelopeKind, now_ms: u64) -> SendDecision {
        match self.devices.get(device) {
            None => SendDecision::NotActive,
            Some(until) => decide(*until, self.frozen, &self.sensitive, kind, now_ms),
        }
    }
}

fn decide(
    probation_until_ms: u64,
    frozen: bool,
    sensitive: &[EnvelopeKind],
    kind: EnvelopeKind,
    now_ms: u64,
) -> SendDecision {
    if !sensitive.contains(&kind) {
        return SendDecision::Allowed;
    }
    if frozen {
        return SendDecision::Frozen;
    }
    if probation_until_ms > now_ms {
        return SendDecision::OnProbation {
            until_ms: probation_until_ms,
        };
    }
    SendDecision::Allowed
}

/// A connection's view of its own device in its account's snapshot.
#[derive(Clone, Debug)]
pub struct SenderTrust {
    snapshot: Arc<AccountTrust>,
    /// End of the device's cooling-off; None when the device is not active.
    probation_until_ms: Option<u64>,
}

impl SenderTrust {
    /// `device`'s view of `snapshot`.
    pub fn new(snapshot: Arc<AccountTrust>, device: &DeviceId) -> Self {
        let probation_until_ms = snapshot.devices.get(device).copied();
        Self {
            snapshot,
            probation_until_ms,
        }
    }

    /// Whether the snapshot was replaced (fetch a new one before deciding).
    pub fn is_stale(&self) -> bool {
        self.snapshot.is_stale()
    }

    /// Whether the roster policy counts `kind` as sensitive for this account.
    pub fn is_sensitive(&self, kind: EnvelopeKind) -> bool {
        self.snapshot.sensitive.contains(&kind)
    }

    /// The send rule; `now_ms` is read only for a sensitive kind.
    pub fn may_send(&self, kind: EnvelopeKind, now_ms: impl FnOnce() -> u64) -> SendDecision {
        let Some(until) = self.probation_until_ms else {
            return SendDecision::NotActive;
        };
        let s = &self.snapshot;
        if !s.sensitive.contains(&kind) {
            return SendDecision::Allowed;
        }
        decide(until, s.frozen, &s.sensitive, kind, now_ms())
    }
}

/// The human-readable reason for a refused send (no keys, no content).
pub fn refusal_message(decision: SendDecision, kind: EnvelopeKind) -> Option<String> {
    match decision {
        SendDecision::Allowed => None,
        SendDecision::NotActive => {
            Some("the sending device is not an active device in its account's device log".into())
        }
        SendDecision::OnProbation { until_ms } => Some(format!(
            "a device on probation may not send {} envelopes (its cooling-off ends at {}, {until_ms} ms since the Unix epoch)",
            kind.name(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(until_ms))
        )),
        SendDecision::Frozen => Some(format!(
            "the account is frozen: it may not send {} envelopes until a staff quorum unfreezes it",
            kind.name()
        )),
    }
}

/// The metric label of a refused send.
pub fn refusal_label(decision: SendDecision) -> &'static str {
    match decision {
        SendDecision::Allowed => "allowed",
        SendDecision::NotActive => "device_not_active",
        SendDecision::OnProbation { .. } => "probation",
        SendDecision::Frozen => "frozen",
    }
}

/// The roster chain and the per-account cache.
pub struct TrustState {
    pinned: Option<OrgFingerprint>,
    chain: RwLock<Option<Arc<RosterChain>>>,
    cache: Mutex<HashMap<AccountId, Arc<AccountTrust>>>,
    /// Bumped whenever every snapshot is dropped (a roster change), so a snapshot
    /// computed under the previous roster is not installed afterwards.
    generation: AtomicU64,
    max_cached: usize,
    /// Serialises `publish_roster`.
    pub publish: tokio::sync::Mutex<()>,
}

impl TrustState {
    /// Empty state for a relay pinned to `pinned` (None: no organisation).
    pub fn new(pinned: Option<OrgFingerprint>, max_cached: usize) -> Self {
        Self {
            pinned,
            chain: RwLock::new(None),
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            max_cached: max_cached.max(1),
            publish: tokio::sync::Mutex::new(()),
        }
    }

    /// The pinned organisation fingerprint.
    pub fn pinned(&self) -> Option<&OrgFingerprint> {
        self.pinned.as_ref()
    }

    /// The verified chain, if any version was published.
    pub fn chain(&self) -> Option<Arc<RosterChain>> {
        match self.chain.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The newest roster version held (0: none).
    pub fn latest_version(&self) -> u64 {
        self.chain().map_or(0, |c| c.head().version())
    }

    /// Verify `links` (version 1 first, as stored) from the pinned fingerprint and make
    /// them the chain. With no organisation configured, stored versions are an error
    /// (the operator removed the fingerprint) and an empty store is fine.
    pub fn load(&self, links: Vec<SignedRoster>, now_ms: u64) -> Result<u64, TrustError> {
        let chain = match (&self.pinned, links.is_empty()) {
            (_, true) => None,
            (Some(pinned), false) => Some(RosterChain::verify(pinned, links, None, now_ms)?),
            (None, false) => return Err(TrustError::NoRoster),
        };
        let version = chain.as_ref().map_or(0, |c| c.head().version());
        self.set_chain(chain);
        Ok(version)
    }

    /// Verify `link` as the next version: version 1 from the pinned root when there is
    /// no chain yet, otherwise as an extension of the current chain. Returns the new
    /// chain without installing it (the caller stores the version first).
    pub fn next_chain(&self, link: SignedRoster, now_ms: u64) -> Result<RosterChain, TrustError> {
        let Some(pinned) = &self.pinned else {
            return Err(TrustError::NoRoster);
        };
        match self.chain() {
            None => RosterChain::verify(pinned, vec![link], None, now_ms),
            Some(current) => {
                let mut next = (*current).clone();
                next.extend(vec![link], now_ms)?;
                Ok(next)
            }
        }
    }

    /// Install a new chain and drop every cached device set (the sensitive kinds and
    /// cooling-off may have changed).
    pub fn set_chain(&self, chain: Option<RosterChain>) {
        self.set_chain_arc(chain.map(Arc::new));
    }

    fn set_chain_arc(&self, chain: Option<Arc<RosterChain>>) {
        match self.chain.write() {
            Ok(mut c) => *c = chain,
            Err(p) => *p.into_inner() = chain,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut cache = self.lock_cache();
        for (_, t) in cache.drain() {
            t.mark_stale();
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Arc<AccountTrust>>> {
        match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        }
    }

    /// The cached snapshot of `account`, if fresh.
    pub fn cached(&self, account: &AccountId) -> Option<Arc<AccountTrust>> {
        self.lock_cache()
            .get(account)
            .filter(|t| !t.is_stale())
            .cloned()
    }

    /// The current cache generation (take it before loading a log).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Verify `log` under the current chain and compute its snapshot. `times` holds this
    /// relay's own append times of the entries (by sequence number) and the date of the
    /// firm's attestation of a client's first device: cooling-off runs from them, never
    /// from the earlier dates a signer may have chosen ([`DeviceLog::verify_timed`]).
    pub fn verify_log(
        &self,
        log: &DeviceLog,
        times: &EntryTimes,
        now_ms: u64,
    ) -> Result<(DeviceSet, Arc<AccountTrust>), TrustError> {
        let chain = self.chain();
        let set = log.verify_timed(chain.as_deref(), None, now_ms, times)?;
        let len = log.entries.as_slice().len() as u64;
        let snapshot = Arc::new(AccountTrust::from_set(&set, len));
        Ok((set, snapshot))
    }

    /// Install `snapshot` unless a snapshot of a longer log is cached or the roster
    /// changed since `generation`; the one it replaces is marked stale. Returns the
    /// snapshot now cached for the account (which may be the newer existing one).
    pub fn install(&self, snapshot: Arc<AccountTrust>, generation: u64) -> Arc<AccountTrust> {
        let mut cache = self.lock_cache();
        if self.generation() != generation {
            // Computed under a replaced roster: use it once, do not cache it.
            snapshot.mark_stale();
            return snapshot;
        }
        if let Some(existing) = cache.get(&snapshot.account) {
            if existing.log_len > snapshot.log_len && !existing.is_stale() {
                return existing.clone();
            }
            existing.mark_stale();
        }
        if cache.len() >= self.max_cached && !cache.contains_key(&snapshot.account) {
            // Bounded: drop everything (each account reloads on its next use).
            for (_, t) in cache.drain() {
                t.mark_stale();
            }
        }
        cache.insert(snapshot.account.clone(), snapshot.clone());
        snapshot
    }

    /// Drop `account`'s snapshot (marked stale): the next use verifies its log again
    /// (after the firm's attestation, which bounds its first device's probation).
    pub fn forget(&self, account: &AccountId) {
        if let Some(t) = self.lock_cache().remove(account) {
            t.mark_stale();
        }
    }

    /// Accounts cached (for tests and metrics).
    pub fn cached_accounts(&self) -> usize {
        self.lock_cache().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use sealpost_protocol::trust::{DeviceAction, LogEntry, DEFAULT_COOLING_OFF_MS};
    use sealpost_protocol::IdentityKeyPair;

    const T0: u64 = 1_704_067_200_000;

    fn log_with(n: usize, seed: u64) -> (DeviceLog, Vec<IdentityKeyPair>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let account = AccountId::new("alice").unwrap();
        let mut log = DeviceLog::new(account);
        let first = IdentityKeyPair::generate(&mut rng);
        let body = log.next_body(
            T0,
            DeviceAction::Add {
                identity: first.public().clone(),
            },
            "enrolment",
        );
        log.push(LogEntry::genesis(body, &first)).unwrap();
        let mut keys = vec![first];
        for i in 1..n {
            let new = IdentityKeyPair::generate(&mut rng);
            let body = log.next_body(
                T0 + DEFAULT_COOLING_OFF_MS + i as u64,
                DeviceAction::Add {
                    identity: new.public().clone(),
                },
                "link",
            );
            log.push(LogEntry::signed_by_device(body, &keys[0], Some(&new)))
                .unwrap();
            keys.push(new);
        }
        (log, keys)
    }

    #[test]
    fn link_sign_signature_matches_the_protocol_layout() {
        let (log, keys) = log_with(1, 1);
        let body = &log.entries.as_slice()[0].body;
        let sig = body.sign(&keys[0]);
        assert!(body.is_signed_by(keys[0].public(), &sig));
        let mut other = body.clone();
        other.timestamp_ms += 1;
        assert!(!other.is_signed_by(keys[0].public(), &sig));
    }

    #[test]
    fn send_rules_follow_the_verified_set() {
        let (log, keys) = log_with(2, 2);
        let state = TrustState::new(None, 16);
        let now = T0 + DEFAULT_COOLING_OFF_MS + 10;
        let (_, snap) = state.verify_log(&log, &EntryTimes::default(), now).unwrap();
        let old = keys[0].device_id();
        let new = keys[1].device_id();
        assert_eq!(
            snap.may_send(&old, EnvelopeKind::Instruction, now),
            SendDecision::Allowed
        );
        assert!(matches!(
            snap.may_send(&new, EnvelopeKind::Approval, now),
            SendDecision::OnProbation { .. }
        ));
        assert_eq!(
            snap.may_send(&new, EnvelopeKind::Chat, now),
            SendDecision::Allowed
        );
        let stranger = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(9)).device_id();
        assert_eq!(
            snap.may_send(&stranger, EnvelopeKind::Chat, now),
            SendDecision::NotActive
        );
        let sender = SenderTrust::new(snap.clone(), &new);
        let mut clock_read = false;
        assert_eq!(
            sender.may_send(EnvelopeKind::Chat, || {
                clock_read = true;
                now
            }),
            SendDecision::Allowed
        );
        assert!(!clock_read, "non-sensitive kinds never read the clock");
        assert!(matches!(
            sender.may_send(EnvelopeKind::Instruction, || now),
            SendDecision::OnProbation { .. }
        ));
        assert_eq!(
            sender.may_send(EnvelopeKind::Instruction, || now + DEFAULT_COOLING_OFF_MS),
            SendDecision::Allowed
        );
    }

    #[test]
    fn install_marks_replaced_snapshots_stale_and_keeps_the_longer_log() {
        let (log1, _) = log_with(1, 3);
        let (log2, _) = log_with(2, 3);
        let state = TrustState::new(None, 16);
        let now = T0 + 2 * DEFAULT_COOLING_OFF_MS;
        let g = state.generation();
        let (_, short) = state
            .verify_log(&log1, &EntryTimes::default(), now)
            .unwrap();
        let (_, long) = state
            .verify_log(&log2, &EntryTimes::default(), now)
            .unwrap();
        let cached = state.install(long.clone(), g);
        assert!(Arc::ptr_eq(&cached, &long));
        // A late loader with a shorter log does not replace the newer snapshot.
        let cached = state.install(short.clone(), g);
        assert!(Arc::ptr_eq(&cached, &long));
        assert!(!long.is_stale());
        // A roster change drops everything.
        state.set_chain(None);
        assert!(long.is_stale());
        assert!(state.cached(&long.account).is_none());
        // A snapshot computed before the change is not cached.
        let used = state.install(short.clone(), g);
        assert!(used.is_stale());
        assert_eq!(state.cached_accounts(), 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let state = TrustState::new(None, 2);
        let now = T0 + 2 * DEFAULT_COOLING_OFF_MS;
        let mut snaps = Vec::new();
        for (i, name) in ["a1", "a2", "a3"].iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let k = IdentityKeyPair::generate(&mut rng);
            let mut log = DeviceLog::new(AccountId::new(name).unwrap());
            let body = log.next_body(
                T0,
                DeviceAction::Add {
                    identity: k.public().clone(),
                },
                "",
            );
            log.push(LogEntry::genesis(body, &k)).unwrap();
            let (_, s) = state.verify_log(&log, &EntryTimes::default(), now).unwrap();
            snaps.push(state.install(s, state.generation()));
            assert!(state.cached_accounts() <= 2);
        }
        assert!(snaps[0].is_stale() && snaps[1].is_stale());
        assert!(!snaps[2].is_stale());
    }
}
