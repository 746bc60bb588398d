//! An account's device log: append-only, hash-chained, every entry signed by a device of
//! the account or carried by a staff quorum; and the short code shown when linking.
//!
//! Rules checked by [`DeviceLog::verify`], entry by entry:
//!
//! * the entry names the log's account, the next sequence number (0, 1, ...) and the
//!   previous entry's hash (none for entry 0); its timestamp is not earlier than the
//!   previous entry's and not later than `now_ms` plus [`MAX_CLOCK_SKEW_MS`];
//! * entry 0 adds a device and is signed by that device only ([`EntryAuthorization::Genesis`]);
//!   no later entry may use that authorisation;
//! * [`DeviceAction::Add`], [`DeviceAction::Remove`] and [`DeviceAction::Freeze`] are
//!   signed by an active device of the account whose cooling-off ended at or before the
//!   entry's effective time (its timestamp, or later: [`DeviceLog::verify_timed`]);
//!   nothing else authorises them;
//! * [`DeviceAction::Recover`] and [`DeviceAction::Unfreeze`] are carried by a staff
//!   quorum ([`Operation::AccountRecovery`], [`Operation::Unfreeze`]) whose parameters are
//!   exactly the entry hash, checked under the roster version the request names, which must
//!   not have been replaced at the entry's timestamp ([`RosterChain::roster_for`]), with
//!   the approvals valid at that timestamp;
//! * an added or recovered device also signs the entry (proof that it holds the key);
//! * no device is added twice, re-added after revocation, or added beyond
//!   [`MAX_DEVICES_PER_ACCOUNT`] active devices; removals name an active device;
//! * while the account is frozen, nothing is added except by recovery; a freeze revokes
//!   every device still on probation; unfreeze applies only to a frozen account.
//!
//! A device added at `t` is on probation until `t + cooling_off_ms` (`t` being the entry's
//! effective time when the verifier has the relay's append times,
//! [`DeviceLog::verify_timed`]), with the cooling-off
//! window of the roster in force at `t` ([`RosterChain::roster_at`]), so a later policy
//! change never rewrites history. A device recovered by a staff quorum is on probation
//! until `max(t, expires_ms) + cooling_off_ms`, `expires_ms` being the approval request's
//! expiry ([`LogEntry::probation_start`]): the entry may have been appended at any time
//! before its approvals expired, and the cooling-off must run from the append.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::codec::{self, bytes_array, opt_bytes_array};
use crate::crypto;
use crate::envelope::EnvelopeKind;
use crate::identity::{
    AccountId, DeviceId, IdentityKeyPair, PublicIdentity, MAX_DEVICES_PER_ACCOUNT,
};
use crate::wire::{BoundedString, BoundedVec};

use super::approval::{verify_quorum, ApprovalBundle, QuorumProof};
use super::attestation::EntryTimes;
use super::error::{Digest, TrustError};
use super::roster::{Operation, RosterChain};
use super::{
    Canon, DEFAULT_COOLING_OFF_MS, LINK_CODE_LABEL, LINK_COMMIT_LABEL, LOG_ENTRY_LABEL,
    LOG_SIGN_LABEL, MAX_CLOCK_SKEW_MS, MAX_DEVICE_LOG_LEN, MAX_LOG_ENTRIES, MAX_LOG_REASON_LEN,
};

/// What an entry does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceAction {
    /// Add a device (it starts on probation). Code 1.
    Add {
        /// The new device.
        identity: PublicIdentity,
    },
    /// Revoke a device. Code 2.
    Remove {
        /// The device.
        device: DeviceId,
    },
    /// Freeze the account and revoke every device on probation ("this wasn't me"). Code 3.
    Freeze,
    /// Lift a freeze (staff quorum). Code 4.
    Unfreeze,
    /// All devices lost: revoke every active device and add this one (staff quorum). Code 5.
    Recover {
        /// The new device.
        identity: PublicIdentity,
    },
}

impl DeviceAction {
    fn code(&self) -> u8 {
        match self {
            Self::Add { .. } => 1,
            Self::Remove { .. } => 2,
            Self::Freeze => 3,
            Self::Unfreeze => 4,
            Self::Recover { .. } => 5,
        }
    }

    /// The snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Add { .. } => "add",
            Self::Remove { .. } => "remove",
            Self::Freeze => "freeze",
            Self::Unfreeze => "unfreeze",
            Self::Recover { .. } => "recover",
        }
    }

    fn subject(&self) -> Option<&PublicIdentity> {
        match self {
            Self::Add { identity } | Self::Recover { identity } => Some(identity),
            _ => None,
        }
    }
}

/// The signed part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// The account whose log this is.
    pub account: AccountId,
    /// Position in the log, from 0.
    pub seq: u64,
    /// Hash of the previous entry (None for entry 0).
    #[serde(with = "opt_bytes_array")]
    pub previous: Option<[u8; 32]>,
    /// When it was made, ms since the Unix epoch (signer's clock).
    pub timestamp_ms: u64,
    /// What it does.
    pub action: DeviceAction,
    /// Why, for people (shown in notifications and the audit trail).
    pub reason: BoundedString<MAX_LOG_REASON_LEN>,
}

impl EntryBody {
    /// The hashed bytes (see the module documentation of [`crate::trust`]).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(LOG_ENTRY_LABEL);
        c.account(&self.account).u64(self.seq);
        match &self.previous {
            None => c.u8(0),
            Some(h) => c.u8(1).raw(h),
        };
        c.u64(self.timestamp_ms).u8(self.action.code());
        match &self.action {
            DeviceAction::Add { identity } | DeviceAction::Recover { identity } => {
                c.raw(&identity.to_bytes());
            }
            DeviceAction::Remove { device } => {
                c.raw(&device.0);
            }
            DeviceAction::Freeze | DeviceAction::Unfreeze => {}
        }
        c.var(self.reason.as_str().as_bytes());
        c.into_bytes()
    }

    /// `SHA-256(canonical_bytes)`: what signatures and quorum parameters bind.
    pub fn hash(&self) -> Digest {
        Digest(crypto::sha256(&[&self.canonical_bytes()]))
    }

    /// A device's signature over `"Sealpost_DeviceLogSign_v1" || hash`.
    pub fn sign(&self, identity: &IdentityKeyPair) -> [u8; 64] {
        identity.sign(&sign_message(&self.hash()))
    }

    /// Whether `signature` is `identity`'s signature over this body (what a linking
    /// device's `link_sign` and an entry's `subject_signature` must be).
    pub fn is_signed_by(&self, identity: &PublicIdentity, signature: &[u8; 64]) -> bool {
        identity
            .verify(&sign_message(&self.hash()), signature)
            .is_ok()
    }
}

fn sign_message(hash: &Digest) -> Vec<u8> {
    let mut m = Vec::with_capacity(LOG_SIGN_LABEL.len() + 32);
    m.extend_from_slice(LOG_SIGN_LABEL);
    m.extend_from_slice(&hash.0);
    m
}

/// Who authorised an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EntryAuthorization {
    /// Entry 0 only: the added device's own signature (in `subject_signature`).
    Genesis,
    /// A device of the account.
    Device {
        /// The signing device.
        device: DeviceId,
        /// Its signature over `"Sealpost_DeviceLogSign_v1" || entry_hash`.
        #[serde(with = "bytes_array")]
        signature: [u8; 64],
    },
    /// A staff quorum whose parameters are the entry hash.
    Quorum(ApprovalBundle),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// The signed part.
    pub body: EntryBody,
    /// Who authorised it.
    pub authorization: EntryAuthorization,
    /// For add and recover: the new device's signature over
    /// `"Sealpost_DeviceLogSign_v1" || entry_hash`; absent otherwise.
    #[serde(with = "opt_sig")]
    pub subject_signature: Option<[u8; 64]>,
}

mod opt_sig {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct S(#[serde(with = "crate::codec::bytes_array")] [u8; 64]);

    pub fn serialize<Se: Serializer>(v: &Option<[u8; 64]>, s: Se) -> Result<Se::Ok, Se::Error> {
        v.map(S).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 64]>, D::Error> {
        Ok(Option::<S>::deserialize(d)?.map(|s| s.0))
    }
}

impl LogEntry {
    /// Entry 0: `identity` adds itself.
    pub fn genesis(body: EntryBody, identity: &IdentityKeyPair) -> Self {
        let subject_signature = Some(body.sign(identity));
        Self {
            body,
            authorization: EntryAuthorization::Genesis,
            subject_signature,
        }
    }

    /// An entry signed by an existing device; `subject` is the added device for an add.
    pub fn signed_by_device(
        body: EntryBody,
        signer: &IdentityKeyPair,
        subject: Option<&IdentityKeyPair>,
    ) -> Self {
        let signature = body.sign(signer);
        let subject_signature = subject.map(|s| body.sign(s));
        Self {
            body,
            authorization: EntryAuthorization::Device {
                device: signer.device_id(),
                signature,
            },
            subject_signature,
        }
    }

    /// When the cooling-off of the device this entry adds starts: its timestamp, except
    /// for an entry carried by a staff quorum (a recovery), where it is the later of the
    /// timestamp and the approval request's `expires_ms`.
    ///
    /// A quorum-carried entry's timestamp is chosen by its initiator when the request is
    /// made, and the relay accepts the entry for as long as the approvals are unexpired,
    /// so it may be appended long after that date (up to
    /// [`super::MAX_APPROVAL_VALIDITY_MS`]). Counting the cooling-off from the date
    /// would let a recovered device skip part or all of it. No device can tell when the
    /// relay appended the entry, but every device can tell from the log alone that it was
    /// appended no later than the approvals' expiry (the relay refuses expired approvals
    /// on arrival), so probation lasts at least `cooling_off_ms` after the append:
    /// `probation_until = max(timestamp, expires_ms) + cooling_off_ms`.
    pub fn probation_start(&self) -> u64 {
        match &self.authorization {
            EntryAuthorization::Quorum(bundle) => {
                self.body.timestamp_ms.max(bundle.request.expires_ms)
            }
            EntryAuthorization::Genesis | EntryAuthorization::Device { .. } => {
                self.body.timestamp_ms
            }
        }
    }

    /// The relay's arrival rule for an entry carried by a staff quorum: its approvals must
    /// not have expired at `arrival_ms`, the relay's clock when the entry reaches it
    /// ([`ApprovalBundle::check_arrival`]). Entries signed by a device pass (their
    /// freshness is bounded by the relay's `max_log_entry_age_secs` instead).
    pub fn check_arrival(&self, arrival_ms: u64) -> Result<(), TrustError> {
        match &self.authorization {
            EntryAuthorization::Quorum(bundle) => bundle.check_arrival(arrival_ms),
            EntryAuthorization::Genesis | EntryAuthorization::Device { .. } => Ok(()),
        }
    }

    /// An entry carried by a staff quorum; `subject` is the recovered device for a recovery.
    pub fn with_quorum(
        body: EntryBody,
        bundle: ApprovalBundle,
        subject: Option<&IdentityKeyPair>,
    ) -> Self {
        let subject_signature = subject.map(|s| body.sign(s));
        Self {
            body,
            authorization: EntryAuthorization::Quorum(bundle),
            subject_signature,
        }
    }
}

/// What a client caches about a verified log: its last entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHead {
    /// The last entry's sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: Digest,
}

/// An account's device log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceLog {
    /// The account.
    pub account: AccountId,
    /// Its entries, oldest first.
    pub entries: BoundedVec<LogEntry, MAX_LOG_ENTRIES>,
}

/// A device in the verified set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// Its identity.
    pub identity: PublicIdentity,
    /// When it was added (the entry's timestamp).
    pub added_ms: u64,
    /// End of its cooling-off window.
    pub probation_until_ms: u64,
    /// Whether it is on probation at the `now_ms` the log was verified at.
    pub on_probation: bool,
}

/// Whether a device may send a given kind of envelope ([`DeviceSet::may_send`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendDecision {
    /// Allowed.
    Allowed,
    /// Not an active device of the account (never added, or revoked): refuse everything.
    NotActive,
    /// A sensitive kind from a device on probation until the given time.
    OnProbation {
        /// End of probation.
        until_ms: u64,
    },
    /// A sensitive kind while the account is frozen.
    Frozen,
}

/// The device set a verified log yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSet {
    /// The account.
    pub account: AccountId,
    /// The last entry (None for an empty log, which has no devices).
    pub head: Option<LogHead>,
    /// Whether the account is frozen.
    pub frozen: bool,
    /// Active devices, by device id.
    pub devices: Vec<DeviceState>,
    /// Revoked devices, by device id.
    pub revoked: Vec<DeviceId>,
    /// When each revoked device was revoked: the effective time of the entry that revoked
    /// it (a removal, a freeze, a recovery), for the log's rules: never before the
    /// relay recorded the entry (§19.3, "Effective time").
    pub revoked_at: BTreeMap<DeviceId, u64>,
    /// Envelope kinds refused from a device on probation or a frozen account (from the
    /// roster chain's head).
    pub sensitive_kinds: Vec<EnvelopeKind>,
}

impl DeviceSet {
    /// The state of `device`, if active.
    pub fn device(&self, device: &DeviceId) -> Option<&DeviceState> {
        self.devices
            .iter()
            .find(|d| d.identity.device_id() == *device)
    }

    /// Whether `device` was revoked.
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revoked.contains(device)
    }

    /// When `device` was revoked (the revoking entry's effective time), if it was.
    pub fn revoked_ms(&self, device: &DeviceId) -> Option<u64> {
        self.revoked_at.get(device).copied()
    }

    /// The identities to encrypt to.
    pub fn identities(&self) -> Vec<PublicIdentity> {
        self.devices.iter().map(|d| d.identity.clone()).collect()
    }

    /// Whether `device` may send `kind` at the time the log was verified: sensitive kinds
    /// are refused from a device on probation and from every device of a frozen account;
    /// an inactive device may send nothing. A set kept for a while should be asked with
    /// [`DeviceSet::may_send_at`] instead.
    pub fn may_send(&self, device: &DeviceId, kind: EnvelopeKind) -> SendDecision {
        let Some(d) = self.device(device) else {
            return SendDecision::NotActive;
        };
        self.decide(d.on_probation, d.probation_until_ms, kind)
    }

    /// As [`DeviceSet::may_send`], with probation judged at `now_ms` (a cached set's
    /// `on_probation` flags are those of the time it was verified).
    pub fn may_send_at(&self, device: &DeviceId, kind: EnvelopeKind, now_ms: u64) -> SendDecision {
        let Some(d) = self.device(device) else {
            return SendDecision::NotActive;
        };
        self.decide(d.probation_until_ms > now_ms, d.probation_until_ms, kind)
    }

    fn decide(&self, on_probation: bool, until_ms: u64, kind: EnvelopeKind) -> SendDecision {
        if !self.sensitive_kinds.contains(&kind) {
            return SendDecision::Allowed;
        }
        if self.frozen {
            return SendDecision::Frozen;
        }
        if on_probation {
            return SendDecision::OnProbation { until_ms };
        }
        SendDecision::Allowed
    }
}

struct Active {
    identity: PublicIdentity,
    added_ms: u64,
    /// End of the cooling-off for the log's rules (from the entry's effective time).
    probation_until_ms: u64,
    /// End of the cooling-off in this device's view (never earlier).
    view_until_ms: u64,
}

impl DeviceLog {
    /// An empty log for `account`.
    pub fn new(account: AccountId) -> Self {
        Self {
            account,
            entries: super::empty_list(),
        }
    }

    /// The body of the next entry (sequence and previous hash filled in), to be signed.
    pub fn next_body(&self, timestamp_ms: u64, action: DeviceAction, reason: &str) -> EntryBody {
        let last = self.entries.as_slice().last();
        EntryBody {
            account: self.account.clone(),
            seq: last.map_or(0, |e| e.body.seq + 1),
            previous: last.map(|e| e.body.hash().0),
            timestamp_ms,
            action,
            reason: BoundedString::truncating(reason),
        }
    }

    /// Append an entry without checking it (run [`DeviceLog::verify`] afterwards).
    pub fn push(&mut self, entry: LogEntry) -> Result<(), TrustError> {
        let mut v = std::mem::replace(&mut self.entries, super::empty_list()).into_inner();
        v.push(entry);
        let len = v.len();
        self.entries = BoundedVec::new(v).map_err(|_| TrustError::TooMany {
            what: "device log entries",
            got: len,
            max: MAX_LOG_ENTRIES,
        })?;
        Ok(())
    }

    /// The last entry's sequence number and hash.
    pub fn head(&self) -> Option<LogHead> {
        self.entries.as_slice().last().map(|e| LogHead {
            seq: e.body.seq,
            hash: e.body.hash(),
        })
    }

    /// CBOR, at most [`MAX_DEVICE_LOG_LEN`] bytes.
    pub fn to_cbor(&self) -> Result<Vec<u8>, TrustError> {
        Ok(codec::encode("device log", self, MAX_DEVICE_LOG_LEN)?)
    }

    /// Decode (bounded; run [`DeviceLog::verify`] before trusting it).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, TrustError> {
        Ok(codec::decode("device log", bytes, MAX_DEVICE_LOG_LEN)?)
    }

    /// Verify every entry (rules in the module documentation) and compute the device
    /// set at `now_ms`. `held` is the head this client verified before, if any: a log that
    /// ends before it, or differs at it, is refused (rollback, fork). Cooling-off runs
    /// from the signed dates only: see [`DeviceLog::verify_timed`].
    pub fn verify(
        &self,
        chain: Option<&RosterChain>,
        held: Option<&LogHead>,
        now_ms: u64,
    ) -> Result<DeviceSet, TrustError> {
        self.verify_timed(chain, held, now_ms, &EntryTimes::default())
    }

    /// [`DeviceLog::verify`], with cooling-off counted from times the signers do not
    /// choose (docs/PROTOCOL.md §19.3, "Effective time").
    ///
    /// Each entry `k` takes effect, for the log's rules, at
    /// `e(k) = max(timestamp(k), e(k - 1), appended_ms[k])`: never before the relay
    /// recorded it, nor before the entry it extends. A device it adds (or recovers)
    /// starts its cooling-off at `e(k)` (a recovery at `max(e(k), expires_ms)`), a signer
    /// must have finished its cooling-off at `e(k)`, and a freeze revokes the devices
    /// still on probation at `e(k)`: every verifier holding the same relay times reaches
    /// the same verdict (the relay computes it from its own times). In this device's own
    /// eyes ([`DeviceState::probation_until_ms`]) probation also runs from no earlier
    /// than `first_seen_ms[k]` and, for the first device, than `attested_ms`; these
    /// only lengthen a probation and never make a log invalid. Relay times later than
    /// `now_ms` plus [`MAX_CLOCK_SKEW_MS`] are refused.
    pub fn verify_timed(
        &self,
        chain: Option<&RosterChain>,
        held: Option<&LogHead>,
        now_ms: u64,
        times: &EntryTimes,
    ) -> Result<DeviceSet, TrustError> {
        let mut active: BTreeMap<DeviceId, Active> = BTreeMap::new();
        let mut revoked: BTreeSet<DeviceId> = BTreeSet::new();
        let mut revoked_at: BTreeMap<DeviceId, u64> = BTreeMap::new();
        let mut frozen = false;
        // (hash, signed date, effective time for the rules, effective time in this
        // device's view) of the previous entry.
        let mut prev: Option<(Digest, u64, u64, u64)> = None;
        let mut hashes: Vec<Digest> = Vec::with_capacity(self.entries.as_slice().len());

        for (i, entry) in self.entries.as_slice().iter().enumerate() {
            let b = &entry.body;
            let seq = i as u64;
            if b.account != self.account {
                return Err(TrustError::LogAccountMismatch {
                    seq,
                    expected: self.account.clone(),
                    got: b.account.clone(),
                });
            }
            if b.seq != seq {
                return Err(TrustError::LogSequence {
                    expected: seq,
                    got: b.seq,
                });
            }
            let expected_prev = prev.map(|(h, ..)| h);
            if b.previous.map(Digest) != expected_prev {
                return Err(TrustError::LogPrevHashMismatch {
                    seq,
                    expected: expected_prev,
                    got: b.previous.map(Digest),
                });
            }
            if let Some((_, previous_ms, ..)) = prev {
                if b.timestamp_ms < previous_ms {
                    return Err(TrustError::LogTimeRegression {
                        seq,
                        previous_ms,
                        got_ms: b.timestamp_ms,
                    });
                }
            }
            if b.timestamp_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
                return Err(TrustError::FromTheFuture {
                    what: "device log entry",
                    got_ms: b.timestamp_ms,
                    now_ms,
                });
            }
            let hash = b.hash();
            let message = sign_message(&hash);
            let ts = b.timestamp_ms;
            let appended = times.appended_ms.get(i).copied().unwrap_or(0);
            if appended > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
                return Err(TrustError::AppendedInTheFuture {
                    seq,
                    got_ms: appended,
                    now_ms,
                });
            }
            // The entry's effective time for the rules, and in this device's view.
            let (prev_rule, prev_view) = prev.map_or((0, 0), |(_, _, r, v)| (r, v));
            let at = ts.max(prev_rule).max(appended);
            let mut seen = times.first_seen_ms.get(&seq).copied().unwrap_or(0);
            if seq == 0 {
                seen = seen.max(times.attested_ms.unwrap_or(0));
            }
            let view_at = at.max(prev_view).max(seen);
            let cooling_off = chain.map_or(DEFAULT_COOLING_OFF_MS, |c| {
                c.roster_at(ts).policy().cooling_off_ms
            });
            let unauthorized = |reason: &'static str| TrustError::Unauthorized {
                seq,
                action: b.action.name(),
                reason,
            };

            // The added device's proof of possession.
            match (b.action.subject(), &entry.subject_signature) {
                (Some(identity), Some(sig)) => {
                    identity
                        .verify(&message, sig)
                        .map_err(|_| TrustError::BadSignature {
                            what: "added device's log entry",
                            signer: identity.device_id().to_string(),
                        })?;
                }
                (Some(_), None) => {
                    return Err(unauthorized("the added device did not sign the entry"))
                }
                (None, Some(_)) => {
                    return Err(unauthorized(
                        "only add and recover carry a subject signature",
                    ))
                }
                (None, None) => {}
            }

            match (&b.action, &entry.authorization) {
                (DeviceAction::Add { identity }, EntryAuthorization::Genesis) => {
                    if seq != 0 {
                        return Err(unauthorized(
                            "only the first entry may be signed by the added device alone",
                        ));
                    }
                    add_device(
                        &mut active,
                        &revoked,
                        identity,
                        ts,
                        (at, view_at),
                        cooling_off,
                        seq,
                    )?;
                }
                (_, EntryAuthorization::Genesis) => {
                    return Err(unauthorized("the first entry must add a device"));
                }
                (_, _) if seq == 0 => {
                    return Err(unauthorized(
                        "the first entry must be signed by the device it adds",
                    ));
                }
                (action, EntryAuthorization::Device { device, signature }) => {
                    let signer = active.get(device).ok_or(TrustError::SignerNotActive {
                        seq,
                        device: *device,
                    })?;
                    signer.identity.verify(&message, signature).map_err(|_| {
                        TrustError::BadSignature {
                            what: "device log entry",
                            signer: device.to_string(),
                        }
                    })?;
                    if signer.probation_until_ms > at {
                        return Err(TrustError::SignerOnProbation {
                            seq,
                            device: *device,
                            until_ms: signer.probation_until_ms,
                        });
                    }
                    match action {
                        DeviceAction::Add { identity } => {
                            if frozen {
                                return Err(TrustError::AccountFrozen { seq });
                            }
                            add_device(
                                &mut active,
                                &revoked,
                                identity,
                                ts,
                                (at, view_at),
                                cooling_off,
                                seq,
                            )?;
                        }
                        DeviceAction::Remove { device: target } => {
                            if active.remove(target).is_none() {
                                return Err(TrustError::InvalidLogAction {
                                    seq,
                                    reason: "removes a device that is not active",
                                });
                            }
                            revoked.insert(*target);
                            revoked_at.insert(*target, at);
                        }
                        DeviceAction::Freeze => {
                            let on_probation: Vec<DeviceId> = active
                                .iter()
                                .filter(|(_, a)| a.probation_until_ms > at)
                                .map(|(id, _)| *id)
                                .collect();
                            for id in on_probation {
                                active.remove(&id);
                                revoked.insert(id);
                                revoked_at.insert(id, at);
                            }
                            frozen = true;
                        }
                        DeviceAction::Unfreeze | DeviceAction::Recover { .. } => {
                            return Err(unauthorized(
                                "needs a staff quorum, not a device signature",
                            ));
                        }
                    }
                }
                (action, EntryAuthorization::Quorum(bundle)) => {
                    let op =
                        match action {
                            DeviceAction::Recover { .. } => Operation::AccountRecovery,
                            DeviceAction::Unfreeze => Operation::Unfreeze,
                            _ => return Err(unauthorized(
                                "needs a signature by a device of the account, not a staff quorum",
                            )),
                        };
                    let Some(chain) = chain else {
                        return Err(TrustError::NoRoster);
                    };
                    check_quorum(chain, bundle, op, &hash, ts)?;
                    match action {
                        DeviceAction::Recover { identity } => {
                            let old: Vec<DeviceId> = active.keys().copied().collect();
                            for id in old {
                                active.remove(&id);
                                revoked.insert(id);
                                revoked_at.insert(id, at);
                            }
                            // The quorum could have been used until its expiry: the
                            // cooling-off runs from the latest moment the entry could
                            // have been appended, not from its signer-chosen date.
                            let expires = entry.probation_start();
                            add_device(
                                &mut active,
                                &revoked,
                                identity,
                                ts,
                                (at.max(expires), view_at.max(expires)),
                                cooling_off,
                                seq,
                            )?;
                        }
                        _ => {
                            if !frozen {
                                return Err(TrustError::InvalidLogAction {
                                    seq,
                                    reason: "unfreezes an account that is not frozen",
                                });
                            }
                            frozen = false;
                        }
                    }
                }
            }
            hashes.push(hash);
            prev = Some((hash, ts, at, view_at));
        }

        if let Some(held) = held {
            let got = hashes.len().checked_sub(1).map(|n| n as u64);
            let at = usize::try_from(held.seq).ok().and_then(|i| hashes.get(i));
            match at {
                None => {
                    return Err(TrustError::LogRollback {
                        held: held.seq,
                        got,
                    })
                }
                Some(h) if *h != held.hash => {
                    return Err(TrustError::LogFork {
                        seq: held.seq,
                        held: held.hash,
                        got: *h,
                    })
                }
                Some(_) => {}
            }
        }

        Ok(DeviceSet {
            account: self.account.clone(),
            head: prev.map(|(hash, ..)| LogHead {
                seq: hashes.len().saturating_sub(1) as u64,
                hash,
            }),
            frozen,
            devices: active
                .into_values()
                .map(|a| DeviceState {
                    on_probation: a.view_until_ms > now_ms,
                    identity: a.identity,
                    added_ms: a.added_ms,
                    probation_until_ms: a.view_until_ms,
                })
                .collect(),
            revoked: revoked.into_iter().collect(),
            revoked_at,
            sensitive_kinds: match chain {
                Some(c) => c.head().policy().sensitive_kinds.clone(),
                None => EnvelopeKind::ALL
                    .into_iter()
                    .filter(|k| k.is_sensitive())
                    .collect(),
            },
        })
    }
}

fn add_device(
    active: &mut BTreeMap<DeviceId, Active>,
    revoked: &BTreeSet<DeviceId>,
    identity: &PublicIdentity,
    ts: u64,
    (start, view_start): (u64, u64),
    cooling_off: u64,
    seq: u64,
) -> Result<(), TrustError> {
    let id = identity.device_id();
    if active.contains_key(&id) {
        return Err(TrustError::InvalidLogAction {
            seq,
            reason: "adds a device that is already active",
        });
    }
    if revoked.contains(&id) {
        return Err(TrustError::InvalidLogAction {
            seq,
            reason: "adds a device that was revoked",
        });
    }
    if active.len() >= MAX_DEVICES_PER_ACCOUNT {
        return Err(TrustError::TooMany {
            what: "active devices of an account",
            got: active.len() + 1,
            max: MAX_DEVICES_PER_ACCOUNT,
        });
    }
    active.insert(
        id,
        Active {
            identity: identity.clone(),
            added_ms: ts,
            probation_until_ms: start.saturating_add(cooling_off),
            view_until_ms: view_start.max(start).saturating_add(cooling_off),
        },
    );
    Ok(())
}

fn check_quorum(
    chain: &RosterChain,
    bundle: &ApprovalBundle,
    op: Operation,
    entry_hash: &Digest,
    ts: u64,
) -> Result<QuorumProof, TrustError> {
    if bundle.request.operation != op {
        return Err(TrustError::WrongOperation {
            expected: op,
            got: bundle.request.operation,
        });
    }
    if bundle.request.parameters.as_slice() != entry_hash.0.as_slice() {
        return Err(TrustError::ParametersMismatch {
            what: "device log entry",
        });
    }
    let roster = chain.roster_for(bundle.request.roster_version, ts)?;
    verify_quorum(roster, bundle, ts)
}

/// A random challenge the existing device picks after it has received the new device's
/// identity and [`LinkCommitment`] (see [`LinkCode`]).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkChallenge(#[serde(with = "bytes_array")] pub [u8; 16]);

impl LinkChallenge {
    /// A fresh challenge.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut c = [0u8; 16];
        rng.fill_bytes(&mut c);
        Self(c)
    }
}

impl fmt::Debug for LinkChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkChallenge({})", hex::encode(self.0))
    }
}

/// The new device's random nonce: committed to in `link_start` (as a
/// [`LinkCommitment`]) and revealed in `link_sign`, only after the new device has
/// received the existing device's [`LinkChallenge`].
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkNonce(#[serde(with = "bytes_array")] pub [u8; 32]);

impl LinkNonce {
    /// A fresh nonce.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut c = [0u8; 32];
        rng.fill_bytes(&mut c);
        Self(c)
    }
}

impl fmt::Debug for LinkNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkNonce({})", hex::encode(self.0))
    }
}

/// `SHA-256("Sealpost_LinkCommit_v1" || u16 len || account || identity (64) || nonce
/// (32))`: what the new device sends with its identity, binding it to a nonce it reveals
/// later.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkCommitment(#[serde(with = "bytes_array")] pub [u8; 32]);

impl LinkCommitment {
    /// The commitment of `identity` joining `account` to `nonce`.
    pub fn compute(account: &AccountId, identity: &PublicIdentity, nonce: &LinkNonce) -> Self {
        let mut c = Canon::new(LINK_COMMIT_LABEL);
        c.account(account).raw(&identity.to_bytes()).raw(&nonce.0);
        Self(crypto::sha256(&[&c.into_bytes()]))
    }

    /// Whether `nonce` opens this commitment for `identity` joining `account`.
    pub fn opens(&self, account: &AccountId, identity: &PublicIdentity, nonce: &LinkNonce) -> bool {
        Self::compute(account, identity, nonce) == *self
    }
}

impl fmt::Debug for LinkCommitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkCommitment({})", hex::encode(self.0))
    }
}

/// The six-digit code both screens show when a device is linked:
/// `u64_be(SHA-256("Sealpost_LinkCode_v2" || u16 len || account || identity (64) ||
/// challenge (16) || nonce (32))[0..8]) mod 10^6`, zero-padded.
///
/// A commit-then-reveal exchange, so that nobody in the middle (the relay included) can
/// search for inputs that make two different identities show the same code:
/// 1. the new device picks a [`LinkNonce`] and sends its identity with the
///    [`LinkCommitment`] to it (`link_start`);
/// 2. the existing device, having received both, picks a fresh [`LinkChallenge`] and
///    offers the entry (`link_offer`);
/// 3. the new device, having received the challenge, reveals its nonce with its signature
///    over the entry (`link_sign`) and shows the code;
/// 4. the existing device checks that the nonce opens the commitment it saw in step 2,
///    computes the code, and the user confirms both codes match.
///
/// Whoever substitutes an identity must commit to its nonce before the honest challenge
/// is picked, and must pick the challenge it hands the new device before that device's
/// nonce is revealed: each side's code is then fixed by a value the attacker did not
/// choose, and it wins with probability 10^-6 per attempt (the relay bounds attempts).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode(String);

impl LinkCode {
    /// The code for `identity` joining `account` under `challenge` and `nonce`.
    pub fn compute(
        account: &AccountId,
        identity: &PublicIdentity,
        challenge: &LinkChallenge,
        nonce: &LinkNonce,
    ) -> Self {
        let mut c = Canon::new(LINK_CODE_LABEL);
        c.account(account)
            .raw(&identity.to_bytes())
            .raw(&challenge.0)
            .raw(&nonce.0);
        let h = crypto::sha256(&[&c.into_bytes()]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        Self(format!("{:06}", u64::from_be_bytes(first) % 1_000_000))
    }

    /// The six digits.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// Whether `typed` (spaces ignored) is this code.
    pub fn matches(&self, typed: &str) -> bool {
        let compact: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
        compact == self.0
    }
}

impl fmt::Display for LinkCode {
    /// `123 456`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = self.0.split_at(3.min(self.0.len()));
        write!(f, "{a} {b}")
    }
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkCode({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::testutil::{acct, Org, HOUR, T0};
    use crate::trust::DEFAULT_COOLING_OFF_MS;

    const DAY: u64 = 24 * HOUR;

    struct Client {
        log: DeviceLog,
        phone: IdentityKeyPair,
    }

    /// A client whose phone enrolled at T0 and is past probation from T0 + 1 day.
    fn client(org: &mut Org) -> Client {
        let phone = IdentityKeyPair::generate(&mut org.rng);
        let mut log = DeviceLog::new(acct("client.zoe"));
        let body = log.next_body(
            T0,
            DeviceAction::Add {
                identity: phone.public().clone(),
            },
            "enrolment",
        );
        log.push(LogEntry::genesis(body, &phone)).unwrap();
        Client { log, phone }
    }

    fn add(c: &mut Client, signer: &IdentityKeyPair, new: &IdentityKeyPair, at: u64) {
        let body = c.log.next_body(
            at,
            DeviceAction::Add {
                identity: new.public().clone(),
            },
            "link",
        );
        c.log
            .push(LogEntry::signed_by_device(body, signer, Some(new)))
            .unwrap();
    }

    #[test]
    fn genesis_then_an_add_by_a_device_past_probation() {
        let mut org = Org::new(40);
        let chain = org.chain();
        let mut c = client(&mut org);
        let set = c.log.verify(Some(&chain), None, T0 + HOUR).unwrap();
        assert_eq!(set.devices.len(), 1);
        assert!(
            set.devices[0].on_probation,
            "the first device also cools off"
        );
        assert_eq!(
            set.devices[0].probation_until_ms,
            T0 + DEFAULT_COOLING_OFF_MS
        );

        let laptop = IdentityKeyPair::generate(&mut org.rng);
        let phone =
            IdentityKeyPair::from_secrets(&c.phone.secret_bytes().0, &c.phone.secret_bytes().1);
        add(&mut c, &phone, &laptop, T0 + DAY + 1);
        let now = T0 + DAY + 2;
        let set = c.log.verify(Some(&chain), None, now).unwrap();
        assert_eq!(set.devices.len(), 2);
        let l = set.device(&laptop.device_id()).unwrap();
        assert!(l.on_probation);
        assert_eq!(l.probation_until_ms, T0 + DAY + 1 + DAY);
        assert!(!set.device(&phone.device_id()).unwrap().on_probation);
        // Probation ends after the cooling-off window.
        let later = c.log.verify(Some(&chain), None, T0 + 2 * DAY + 1).unwrap();
        assert!(later.devices.iter().all(|d| !d.on_probation));
        assert_eq!(set.head, c.log.head());
    }

    #[test]
    fn cooling_off_runs_from_times_the_signer_does_not_choose() {
        let mut org = Org::new(43);
        let chain = org.chain();
        let mut c = client(&mut org);
        let phone =
            IdentityKeyPair::from_secrets(&c.phone.secret_bytes().0, &c.phone.secret_bytes().1);
        let laptop = IdentityKeyPair::generate(&mut org.rng);
        // Dated just after the phone's cooling-off, appended (by the relay's record) a
        // week later.
        add(&mut c, &phone, &laptop, T0 + DAY + 1);
        let appended = T0 + 7 * DAY;
        let now = appended + HOUR;
        let signed_only = c.log.verify(Some(&chain), None, now).unwrap();
        assert!(
            !signed_only
                .device(&laptop.device_id())
                .unwrap()
                .on_probation
        );
        let times = EntryTimes {
            appended_ms: vec![T0, appended],
            ..EntryTimes::default()
        };
        let set = c.log.verify_timed(Some(&chain), None, now, &times).unwrap();
        let l = set.device(&laptop.device_id()).unwrap();
        assert!(l.on_probation);
        assert_eq!(l.probation_until_ms, appended + DAY);
        assert_eq!(l.added_ms, T0 + DAY + 1);
        // A device that first saw the entry later still counts from then; the first
        // device's probation runs from no earlier than its attestation.
        let times = EntryTimes {
            appended_ms: vec![T0, appended],
            first_seen_ms: [(1, appended + 2 * HOUR)].into_iter().collect(),
            attested_ms: Some(T0 + 3 * DAY),
        };
        let set = c
            .log
            .verify_timed(Some(&chain), None, appended + 2 * HOUR, &times)
            .unwrap();
        assert_eq!(
            set.device(&laptop.device_id()).unwrap().probation_until_ms,
            appended + 2 * HOUR + DAY
        );
        assert_eq!(
            set.device(&phone.device_id()).unwrap().probation_until_ms,
            T0 + 4 * DAY
        );
        // A relay time in the future is refused.
        let times = EntryTimes {
            appended_ms: vec![T0, now + HOUR],
            ..EntryTimes::default()
        };
        assert!(matches!(
            c.log.verify_timed(Some(&chain), None, now, &times),
            Err(TrustError::AppendedInTheFuture { seq: 1, .. })
        ));
        // The signer must have finished its cooling-off at the entry's effective time:
        // an entry the phone signs while still on probation by the relay's time is
        // refused, whatever date it carries.
        let mut d = client(&mut org);
        let phone2 =
            IdentityKeyPair::from_secrets(&d.phone.secret_bytes().0, &d.phone.secret_bytes().1);
        let tablet = IdentityKeyPair::generate(&mut org.rng);
        add(&mut d, &phone2, &tablet, T0 + DAY + 1);
        let times = EntryTimes {
            appended_ms: vec![T0 + DAY, T0 + DAY + 2],
            ..EntryTimes::default()
        };
        assert!(matches!(
            d.log.verify_timed(Some(&chain), None, T0 + 3 * DAY, &times),
            Err(TrustError::SignerOnProbation { seq: 1, .. })
        ));
    }

    #[test]
    fn a_device_on_probation_cannot_send_sensitive_kinds() {
        let mut org = Org::new(41);
        let chain = org.chain();
        let c = client(&mut org);
        let set = c.log.verify(Some(&chain), None, T0 + HOUR).unwrap();
        let id = c.phone.device_id();
        assert_eq!(set.may_send(&id, EnvelopeKind::Chat), SendDecision::Allowed);
        assert_eq!(
            set.may_send(&id, EnvelopeKind::Instruction),
            SendDecision::OnProbation { until_ms: T0 + DAY }
        );
        let stranger = IdentityKeyPair::generate(&mut org.rng);
        assert_eq!(
            set.may_send(&stranger.device_id(), EnvelopeKind::Chat),
            SendDecision::NotActive
        );
        let set = c.log.verify(Some(&chain), None, T0 + DAY).unwrap();
        assert_eq!(
            set.may_send(&id, EnvelopeKind::Approval),
            SendDecision::Allowed
        );
    }

    #[test]
    fn a_device_inserted_without_a_valid_signature_is_refused() {
        let mut org = Org::new(42);
        let chain = org.chain();
        let base = client(&mut org);
        let relay_device = IdentityKeyPair::generate(&mut org.rng);
        let now = T0 + 2 * DAY;
        let body = base.log.next_body(
            T0 + DAY + 1,
            DeviceAction::Add {
                identity: relay_device.public().clone(),
            },
            "inserted",
        );

        // Signed by the relay's own device, which is not in the log.
        let mut log = base.log.clone();
        log.push(LogEntry::signed_by_device(
            body.clone(),
            &relay_device,
            Some(&relay_device),
        ))
        .unwrap();
        assert_eq!(
            log.verify(Some(&chain), None, now).err(),
            Some(TrustError::SignerNotActive {
                seq: 1,
                device: relay_device.device_id()
            })
        );
        // Claims the phone signed it, with a garbage signature.
        let mut log = base.log.clone();
        log.push(LogEntry {
            body: body.clone(),
            authorization: EntryAuthorization::Device {
                device: base.phone.device_id(),
                signature: [7; 64],
            },
            subject_signature: Some(body.sign(&relay_device)),
        })
        .unwrap();
        assert!(matches!(
            log.verify(Some(&chain), None, now),
            Err(TrustError::BadSignature {
                what: "device log entry",
                ..
            })
        ));
        // Self-signed as if it were a genesis.
        let mut log = base.log.clone();
        log.push(LogEntry::genesis(body.clone(), &relay_device))
            .unwrap();
        assert!(matches!(
            log.verify(Some(&chain), None, now),
            Err(TrustError::Unauthorized { seq: 1, .. })
        ));
        // Signed by the phone, but the new device never signed (no proof of possession).
        let mut log = base.log.clone();
        log.push(LogEntry::signed_by_device(body.clone(), &base.phone, None))
            .unwrap();
        assert!(matches!(
            log.verify(Some(&chain), None, now),
            Err(TrustError::Unauthorized { seq: 1, .. })
        ));
        // The phone's genuine signature, but the relay rewrote the identity afterwards.
        let mut log = base.log.clone();
        let mut entry = LogEntry::signed_by_device(body, &base.phone, Some(&relay_device));
        let swapped = IdentityKeyPair::generate(&mut org.rng);
        entry.body.action = DeviceAction::Add {
            identity: swapped.public().clone(),
        };
        log.push(entry).unwrap();
        assert!(matches!(
            log.verify(Some(&chain), None, now),
            Err(TrustError::BadSignature { .. })
        ));
        // A genesis signed by someone other than the device it adds.
        let mut log = DeviceLog::new(acct("client.zoe"));
        let body = log.next_body(
            T0,
            DeviceAction::Add {
                identity: base.phone.public().clone(),
            },
            "",
        );
        let mut e = LogEntry::genesis(body, &base.phone);
        e.subject_signature = Some(e.body.sign(&relay_device));
        log.push(e).unwrap();
        assert!(log.verify(Some(&chain), None, now).is_err());
    }

    #[test]
    fn a_device_on_probation_cannot_sign_log_entries() {
        let mut org = Org::new(43);
        let chain = org.chain();
        let mut c = client(&mut org);
        let laptop = IdentityKeyPair::generate(&mut org.rng);
        let phone =
            IdentityKeyPair::from_secrets(&c.phone.secret_bytes().0, &c.phone.secret_bytes().1);
        add(&mut c, &phone, &laptop, T0 + HOUR);
        assert_eq!(
            c.log.verify(Some(&chain), None, T0 + 2 * HOUR).err(),
            Some(TrustError::SignerOnProbation {
                seq: 1,
                device: phone.device_id(),
                until_ms: T0 + DAY
            })
        );
    }

    #[test]
    fn structure_is_checked_sequence_previous_hash_account_and_time() {
        let mut org = Org::new(44);
        let chain = org.chain();
        let mut c = client(&mut org);
        let laptop = IdentityKeyPair::generate(&mut org.rng);
        let phone =
            IdentityKeyPair::from_secrets(&c.phone.secret_bytes().0, &c.phone.secret_bytes().1);
        add(&mut c, &phone, &laptop, T0 + DAY);
        let now = T0 + 2 * DAY;
        assert!(c.log.verify(Some(&chain), None, now).is_ok());

        let mut wrong_seq = c.log.clone();
        let mut v = wrong_seq.entries.clone().into_inner();
        v[1].body.seq = 5;
        wrong_seq.entries = BoundedVec::new(v).unwrap();
        assert!(matches!(
            wrong_seq.verify(Some(&chain), None, now),
            Err(TrustError::LogSequence {
                expected: 1,
                got: 5
            })
        ));

        let mut wrong_prev = c.log.clone();
        let mut v = wrong_prev.entries.clone().into_inner();
        v[1].body.previous = Some([0; 32]);
        wrong_prev.entries = BoundedVec::new(v).unwrap();
        assert!(matches!(
            wrong_prev.verify(Some(&chain), None, now),
            Err(TrustError::LogPrevHashMismatch { seq: 1, .. })
        ));

        let mut other_account = c.log.clone();
        other_account.account = acct("client.other");
        assert!(matches!(
            other_account.verify(Some(&chain), None, now),
            Err(TrustError::LogAccountMismatch { seq: 0, .. })
        ));

        assert!(matches!(
            c.log.verify(Some(&chain), None, T0),
            Err(TrustError::FromTheFuture { .. })
        ));

        let mut back = client(&mut org);
        let p2 = IdentityKeyPair::from_secrets(
            &back.phone.secret_bytes().0,
            &back.phone.secret_bytes().1,
        );
        add(&mut back, &p2, &laptop, T0 - 1);
        assert!(matches!(
            back.log.verify(Some(&chain), None, now),
            Err(TrustError::LogTimeRegression { seq: 1, .. })
        ));
    }

    #[test]
    fn freezing_revokes_the_new_device_and_unfreezing_needs_the_quorum() {
        let mut org = Org::new(45);
        let chain = org.chain();
        let mut c = client(&mut org);
        let phone =
            IdentityKeyPair::from_secrets(&c.phone.secret_bytes().0, &c.phone.secret_bytes().1);
        let intruder = IdentityKeyPair::generate(&mut org.rng);
        add(&mut c, &phone, &intruder, T0 + 2 * DAY);
        // "This wasn't me."
        let body = c
            .log
            .next_body(T0 + 2 * DAY + HOUR, DeviceAction::Freeze, "this wasn't me");
        c.log
            .push(LogEntry::signed_by_device(body, &phone, None))
            .unwrap();
        let now = T0 + 2 * DAY + 2 * HOUR;
        let set = c.log.verify(Some(&chain), None, now).unwrap();
        assert!(set.frozen);
        assert!(set.is_revoked(&intruder.device_id()));
        assert!(set.device(&intruder.device_id()).is_none());
        assert_eq!(
            set.may_send(&phone.device_id(), EnvelopeKind::Instruction),
            SendDecision::Frozen
        );
        assert_eq!(
            set.may_send(&phone.device_id(), EnvelopeKind::Chat),
            SendDecision::Allowed
        );

        // While frozen, the phone cannot add a device.
        let mut frozen_add = c.log.clone();
        let other = IdentityKeyPair::generate(&mut org.rng);
        let body = frozen_add.next_body(
            now,
            DeviceAction::Add {
                identity: other.public().clone(),
            },
            "",
        );
        frozen_add
            .push(LogEntry::signed_by_device(body, &phone, Some(&other)))
            .unwrap();
        assert_eq!(
            frozen_add.verify(Some(&chain), None, now).err(),
            Some(TrustError::AccountFrozen { seq: 3 })
        );

        // Nor unfreeze it.
        let mut self_unfreeze = c.log.clone();
        let body = self_unfreeze.next_body(now, DeviceAction::Unfreeze, "");
        self_unfreeze
            .push(LogEntry::signed_by_device(body, &phone, None))
            .unwrap();
        assert!(matches!(
            self_unfreeze.verify(Some(&chain), None, now),
            Err(TrustError::Unauthorized { seq: 3, .. })
        ));

        // One staff member is not enough.
        let body = c
            .log
            .next_body(now, DeviceAction::Unfreeze, "verified by phone call");
        let one = org.bundle(
            Operation::Unfreeze,
            body.hash().0.to_vec(),
            1,
            now + HOUR,
            0,
            &[(1, 0)],
        );
        let mut weak = c.log.clone();
        weak.push(LogEntry::with_quorum(body.clone(), one, None))
            .unwrap();
        assert!(matches!(
            weak.verify(Some(&chain), None, now),
            Err(TrustError::QuorumNotReached {
                needed: 2,
                got: 1,
                ..
            })
        ));

        // A recovery quorum does not unfreeze.
        let wrong_op = org.bundle(
            Operation::AccountRecovery,
            body.hash().0.to_vec(),
            1,
            now + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        let mut wrong = c.log.clone();
        wrong
            .push(LogEntry::with_quorum(body.clone(), wrong_op, None))
            .unwrap();
        assert!(matches!(
            wrong.verify(Some(&chain), None, now),
            Err(TrustError::WrongOperation { .. })
        ));

        // The quorum unfreezes.
        let ok = org.bundle(
            Operation::Unfreeze,
            body.hash().0.to_vec(),
            1,
            now + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        c.log.push(LogEntry::with_quorum(body, ok, None)).unwrap();
        let set = c.log.verify(Some(&chain), None, now + 1).unwrap();
        assert!(!set.frozen);
        // The approvals were valid when the entry was made, so the log still verifies
        // long after they expired.
        assert!(c.log.verify(Some(&chain), None, now + 30 * DAY).is_ok());
        // Unfreezing an account that is not frozen is refused.
        let body = c.log.next_body(now + 2, DeviceAction::Unfreeze, "");
        let again = org.bundle(
            Operation::Unfreeze,
            body.hash().0.to_vec(),
            1,
            now + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        c.log
            .push(LogEntry::with_quorum(body, again, None))
            .unwrap();
        assert!(matches!(
            c.log.verify(Some(&chain), None, now + 3),
            Err(TrustError::InvalidLogAction { seq: 4, .. })
        ));
    }

    /// A roster change proposed before an unfreeze under the old version and published
    /// after it does not invalidate the log: the unfreeze is dated before the old
    /// version's boundary (the new version's approvals' expiry plus the clock skew).
    #[test]
    fn an_unfreeze_under_a_roster_replaced_later_keeps_verifying() {
        use crate::trust::{ApprovalPolicy, RosterChain, SignedRoster, MAX_CLOCK_SKEW_MS};
        let mut org = Org::new(49);
        let mut c = client(&mut org);
        let phone =
            IdentityKeyPair::from_secrets(&c.phone.secret_bytes().0, &c.phone.secret_bytes().1);
        let t = T0 + 2 * DAY;
        let body = c.log.next_body(t, DeviceAction::Freeze, "this wasn't me");
        c.log
            .push(LogEntry::signed_by_device(body, &phone, None))
            .unwrap();
        // At t + 1 h staff propose v2 (valid for 6 hours).
        let staff = org.staff.iter().map(|s| s.member()).collect();
        let v2 = org
            .v1
            .roster
            .next(t + HOUR, staff, ApprovalPolicy::default())
            .unwrap();
        let b2 = org.bundle(
            Operation::RosterChange,
            v2.hash().0.to_vec(),
            1,
            t + 7 * HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        let l2 = SignedRoster::with_quorum(v2, b2);
        // At t + 90 min the unfreeze is approved under v1 and appended.
        let at = t + 90 * 60 * 1000;
        let body = c.log.next_body(at, DeviceAction::Unfreeze, "checked");
        let ok = org.bundle(
            Operation::Unfreeze,
            body.hash().0.to_vec(),
            1,
            at + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        c.log.push(LogEntry::with_quorum(body, ok, None)).unwrap();
        assert!(!c.log.verify(Some(&org.chain()), None, at).unwrap().frozen);
        // At t + 3 h v2 is published; the log still verifies under the longer chain,
        // then and much later.
        let fp = org.root.public().fingerprint();
        let chain =
            RosterChain::verify(&fp, vec![org.v1.clone(), l2.clone()], None, t + 3 * HOUR).unwrap();
        assert!(
            !c.log
                .verify(Some(&chain), None, t + 3 * HOUR)
                .unwrap()
                .frozen
        );
        assert!(c.log.verify(Some(&chain), None, t + 60 * DAY).is_ok());

        // An entry under v1 dated after v1's boundary is refused.
        let late = t + 7 * HOUR + MAX_CLOCK_SKEW_MS + 1;
        let mut log = c.log.clone();
        let body = log.next_body(late, DeviceAction::Freeze, "again");
        log.push(LogEntry::signed_by_device(body, &phone, None))
            .unwrap();
        let body = log.next_body(late, DeviceAction::Unfreeze, "checked");
        let stale = org.bundle(
            Operation::Unfreeze,
            body.hash().0.to_vec(),
            1,
            late + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        log.push(LogEntry::with_quorum(body, stale, None)).unwrap();
        assert!(matches!(
            log.verify(Some(&chain), None, late),
            Err(TrustError::RosterSuperseded { version: 1, .. })
        ));
    }

    #[test]
    fn recovery_needs_the_quorum_and_revokes_every_old_device() {
        let mut org = Org::new(46);
        let chain = org.chain();
        let mut c = client(&mut org);
        let new_phone = IdentityKeyPair::generate(&mut org.rng);
        let at = T0 + 3 * DAY;
        let body = c.log.next_body(
            at,
            DeviceAction::Recover {
                identity: new_phone.public().clone(),
            },
            "lost phone, verified in branch",
        );
        // By a device of the account: refused.
        let mut by_device = c.log.clone();
        by_device
            .push(LogEntry::signed_by_device(
                body.clone(),
                &c.phone,
                Some(&new_phone),
            ))
            .unwrap();
        assert!(matches!(
            by_device.verify(Some(&chain), None, at),
            Err(TrustError::Unauthorized { seq: 1, .. })
        ));
        // For another entry: refused.
        let other = org.bundle(
            Operation::AccountRecovery,
            vec![0; 32],
            1,
            at + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        let mut mismatch = c.log.clone();
        mismatch
            .push(LogEntry::with_quorum(body.clone(), other, Some(&new_phone)))
            .unwrap();
        assert!(matches!(
            mismatch.verify(Some(&chain), None, at),
            Err(TrustError::ParametersMismatch { .. })
        ));
        // Quorum: accepted, old phone revoked, new one on probation.
        let b = org.bundle(
            Operation::AccountRecovery,
            body.hash().0.to_vec(),
            1,
            at + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        c.log
            .push(LogEntry::with_quorum(body, b, Some(&new_phone)))
            .unwrap();
        let set = c.log.verify(Some(&chain), None, at).unwrap();
        assert_eq!(set.devices.len(), 1);
        assert!(set.device(&new_phone.device_id()).unwrap().on_probation);
        assert!(set.is_revoked(&c.phone.device_id()));
        // The revoked phone cannot come back.
        let body = c.log.next_body(
            at + 2 * DAY,
            DeviceAction::Add {
                identity: c.phone.public().clone(),
            },
            "",
        );
        c.log
            .push(LogEntry::signed_by_device(body, &new_phone, Some(&c.phone)))
            .unwrap();
        assert!(matches!(
            c.log.verify(Some(&chain), None, at + 2 * DAY),
            Err(TrustError::InvalidLogAction { seq: 2, .. })
        ));
    }

    #[test]
    fn a_recovered_device_cools_off_from_the_approvals_expiry_not_the_entry_date() {
        let mut org = Org::new(50);
        let chain = org.chain();
        let mut c = client(&mut org);
        let new_phone = IdentityKeyPair::generate(&mut org.rng);
        // The request is made (and the entry dated) at `at`; its approvals stay usable
        // for six days, so the relay may append the entry at any time until then.
        let at = T0 + 3 * DAY;
        let expires = at + 6 * DAY;
        let body = c.log.next_body(
            at,
            DeviceAction::Recover {
                identity: new_phone.public().clone(),
            },
            "lost phone",
        );
        let b = org.bundle(
            Operation::AccountRecovery,
            body.hash().0.to_vec(),
            1,
            expires,
            0,
            &[(1, 0), (2, 0)],
        );
        let entry = LogEntry::with_quorum(body, b, Some(&new_phone));
        assert_eq!(entry.probation_start(), expires);
        c.log.push(entry).unwrap();
        // Appended on the last day of the approvals: still a full cooling-off after that.
        let appended = expires - HOUR;
        let set = c.log.verify(Some(&chain), None, appended).unwrap();
        let d = set.device(&new_phone.device_id()).unwrap();
        assert_eq!(d.added_ms, at);
        assert_eq!(d.probation_until_ms, expires + DEFAULT_COOLING_OFF_MS);
        assert!(d.on_probation);
        let just_before = c
            .log
            .verify(Some(&chain), None, expires + DEFAULT_COOLING_OFF_MS - 1)
            .unwrap();
        assert!(
            just_before
                .device(&new_phone.device_id())
                .unwrap()
                .on_probation
        );
        assert_eq!(
            just_before.may_send(&new_phone.device_id(), EnvelopeKind::Approval),
            SendDecision::OnProbation {
                until_ms: expires + DEFAULT_COOLING_OFF_MS
            }
        );
        let after = c
            .log
            .verify(Some(&chain), None, expires + DEFAULT_COOLING_OFF_MS)
            .unwrap();
        assert!(!after.device(&new_phone.device_id()).unwrap().on_probation);
        // A set verified earlier and kept answers for the time it is asked at.
        assert_eq!(
            set.may_send_at(
                &new_phone.device_id(),
                EnvelopeKind::Approval,
                expires + DEFAULT_COOLING_OFF_MS
            ),
            SendDecision::Allowed
        );
        assert!(matches!(
            set.may_send(&new_phone.device_id(), EnvelopeKind::Approval),
            SendDecision::OnProbation { .. }
        ));
        // Nor can it sign entries before then (a device it adds is refused).
        let laptop = IdentityKeyPair::generate(&mut org.rng);
        let mut early = c.log.clone();
        let body = early.next_body(
            at + 2 * DAY,
            DeviceAction::Add {
                identity: laptop.public().clone(),
            },
            "",
        );
        early
            .push(LogEntry::signed_by_device(body, &new_phone, Some(&laptop)))
            .unwrap();
        assert_eq!(
            early.verify(Some(&chain), None, at + 2 * DAY).err(),
            Some(TrustError::SignerOnProbation {
                seq: 2,
                device: new_phone.device_id(),
                until_ms: expires + DEFAULT_COOLING_OFF_MS
            })
        );
        // A device-signed add still cools off from its own date (the relay bounds how
        // old such an entry may be on arrival).
        let e = c.log.entries.as_slice()[0].clone();
        assert_eq!(e.probation_start(), T0);
    }

    #[test]
    fn approvals_are_checked_against_the_arrival_time() {
        let mut org = Org::new(51);
        let mut c = client(&mut org);
        let body = c.log.next_body(T0 + DAY, DeviceAction::Unfreeze, "");
        let b = org.bundle(
            Operation::Unfreeze,
            body.hash().0.to_vec(),
            1,
            T0 + DAY + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        assert_eq!(b.check_arrival(T0 + DAY + HOUR), Ok(()));
        assert_eq!(
            b.check_arrival(T0 + DAY + HOUR + 1),
            Err(TrustError::ExpiredOnArrival {
                operation: Operation::Unfreeze,
                expires_ms: T0 + DAY + HOUR,
                arrival_ms: T0 + DAY + HOUR + 1
            })
        );
        let entry = LogEntry::with_quorum(body, b, None);
        assert!(entry.check_arrival(T0 + DAY).is_ok());
        assert!(matches!(
            entry.check_arrival(T0 + 2 * DAY),
            Err(TrustError::ExpiredOnArrival { .. })
        ));
        // Device-signed entries have no approvals to expire.
        let genesis = c.log.entries.as_slice()[0].clone();
        assert!(genesis.check_arrival(T0 + 365 * DAY).is_ok());
        let _ = &mut c;
    }

    #[test]
    fn removal_and_a_cached_head_refuse_rollback_and_fork() {
        let mut org = Org::new(47);
        let chain = org.chain();
        let mut c = client(&mut org);
        let phone =
            IdentityKeyPair::from_secrets(&c.phone.secret_bytes().0, &c.phone.secret_bytes().1);
        let laptop = IdentityKeyPair::generate(&mut org.rng);
        add(&mut c, &phone, &laptop, T0 + DAY);
        let before_removal = c.log.clone();
        let body = c.log.next_body(
            T0 + DAY + 1,
            DeviceAction::Remove {
                device: laptop.device_id(),
            },
            "sold it",
        );
        c.log
            .push(LogEntry::signed_by_device(body, &phone, None))
            .unwrap();
        let now = T0 + 3 * DAY;
        let set = c.log.verify(Some(&chain), None, now).unwrap();
        assert!(set.is_revoked(&laptop.device_id()));
        let held = set.head.unwrap();
        assert_eq!(held.seq, 2);
        // The relay serves the older log (the laptop "back").
        assert_eq!(
            before_removal.verify(Some(&chain), Some(&held), now).err(),
            Some(TrustError::LogRollback {
                held: 2,
                got: Some(1)
            })
        );
        // Or another history of the same length.
        let mut fork = before_removal.clone();
        let other = IdentityKeyPair::generate(&mut org.rng);
        let body = fork.next_body(
            T0 + DAY + 1,
            DeviceAction::Add {
                identity: other.public().clone(),
            },
            "",
        );
        fork.push(LogEntry::signed_by_device(body, &phone, Some(&other)))
            .unwrap();
        assert!(matches!(
            fork.verify(Some(&chain), Some(&held), now),
            Err(TrustError::LogFork { seq: 2, .. })
        ));
        assert!(c.log.verify(Some(&chain), Some(&held), now).is_ok());
        // Removing a device that is not active is refused.
        let body = c.log.next_body(
            T0 + DAY + 2,
            DeviceAction::Remove {
                device: laptop.device_id(),
            },
            "",
        );
        c.log
            .push(LogEntry::signed_by_device(body, &phone, None))
            .unwrap();
        assert!(matches!(
            c.log.verify(Some(&chain), None, now),
            Err(TrustError::InvalidLogAction { seq: 3, .. })
        ));
    }

    #[test]
    fn logs_round_trip_through_cbor() {
        let mut org = Org::new(48);
        let chain = org.chain();
        let c = client(&mut org);
        let bytes = c.log.to_cbor().unwrap();
        let back = DeviceLog::from_cbor(&bytes).unwrap();
        assert_eq!(back, c.log);
        assert!(back.verify(Some(&chain), None, T0).is_ok());
    }

    #[test]
    fn link_codes_match_on_both_screens_and_depend_on_every_input() {
        let mut org = Org::new(49);
        let account = acct("client.zoe");
        let new = IdentityKeyPair::generate(&mut org.rng);
        let challenge = LinkChallenge::generate(&mut org.rng);
        let nonce = LinkNonce::generate(&mut org.rng);
        let on_new = LinkCode::compute(&account, new.public(), &challenge, &nonce);
        let on_existing = LinkCode::compute(&account, new.public(), &challenge, &nonce);
        assert_eq!(on_new, on_existing);
        assert_eq!(on_new.digits().len(), 6);
        assert!(on_new.digits().bytes().all(|b| b.is_ascii_digit()));
        assert!(on_new.matches(&on_new.to_string()));
        assert!(!on_new.matches("12345"));
        assert_eq!(on_new.to_string().len(), 7);
        let substituted = IdentityKeyPair::generate(&mut org.rng);
        let other_challenge = LinkChallenge::generate(&mut org.rng);
        let other_nonce = LinkNonce::generate(&mut org.rng);
        // Different inputs give different codes here (1 in 10^6 chance of a collision
        // for random inputs; these seeded ones do not collide).
        for other in [
            LinkCode::compute(&account, substituted.public(), &challenge, &nonce),
            LinkCode::compute(&account, new.public(), &other_challenge, &nonce),
            LinkCode::compute(&account, new.public(), &challenge, &other_nonce),
            LinkCode::compute(&acct("client.other"), new.public(), &challenge, &nonce),
        ] {
            assert_ne!(other, on_new);
        }
    }

    #[test]
    fn a_link_commitment_opens_only_with_its_own_nonce_identity_and_account() {
        let mut org = Org::new(50);
        let account = acct("client.zoe");
        let new = IdentityKeyPair::generate(&mut org.rng);
        let nonce = LinkNonce::generate(&mut org.rng);
        let commitment = LinkCommitment::compute(&account, new.public(), &nonce);
        assert!(commitment.opens(&account, new.public(), &nonce));
        let other = IdentityKeyPair::generate(&mut org.rng);
        assert!(!commitment.opens(&account, other.public(), &nonce));
        assert!(!commitment.opens(&acct("client.other"), new.public(), &nonce));
        assert!(!commitment.opens(&account, new.public(), &LinkNonce::generate(&mut org.rng)));
    }
}
