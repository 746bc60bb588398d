//! The roster: staff accounts, their devices and roles, and the approval policy; signed
//! version 1 by the organisation root and every later version by the previous version's
//! staff quorum. [`RosterChain`] verifies the whole chain from the pinned fingerprint.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{self, bytes_array, opt_bytes_array};
use crate::envelope::EnvelopeKind;
use crate::identity::{AccountId, DeviceId, PublicIdentity};

use super::approval::{verify_quorum, ApprovalBundle, QuorumProof};
use super::archive::ArchivePolicy;
use super::error::{Digest, TrustError};
use super::org::{root_message, OrgFingerprint, OrgRootPublic};
use super::{
    Canon, DEFAULT_COOLING_OFF_MS, MAX_CLOCK_SKEW_MS, MAX_COOLING_OFF_MS, MAX_QUORUM_THRESHOLD,
    MAX_ROSTER_CHAIN_LEN, MAX_ROSTER_STAFF, MAX_SIGNED_ROSTER_LEN, MAX_STAFF_DEVICES,
    ROSTER_FORMAT, ROSTER_FORMAT_ARCHIVE, ROSTER_FORMAT_ATTESTATION, ROSTER_FORMAT_TRANSPARENCY,
    ROSTER_HASH_LABEL,
};
use crate::tlog::{TlogError, TransparencyPolicy};

/// A staff member's role. Codes (in signed bytes): advisor 1, operations 2, compliance 3,
/// security 4; CBOR: the snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaffRole {
    /// Advisor with assigned clients.
    Advisor = 1,
    /// Operations.
    Operations = 2,
    /// Compliance.
    Compliance = 3,
    /// Security.
    Security = 4,
}

impl StaffRole {
    /// All roles, in code order.
    pub const ALL: [StaffRole; 4] = [
        Self::Advisor,
        Self::Operations,
        Self::Compliance,
        Self::Security,
    ];

    /// The code written into signed bytes.
    pub fn code(self) -> u8 {
        self as u8
    }

    fn bit(self) -> u8 {
        1 << (self.code() - 1)
    }

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Advisor => "advisor",
            Self::Operations => "operations",
            Self::Compliance => "compliance",
            Self::Security => "security",
        }
    }
}

impl fmt::Display for StaffRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of roles. Signed bytes: one byte, bit `code - 1` set per role; CBOR: a list of
/// role names (duplicates collapse).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "Vec<StaffRole>", into = "Vec<StaffRole>")]
pub struct RoleSet(u8);

impl RoleSet {
    /// The set of `roles`.
    pub fn of(roles: &[StaffRole]) -> Self {
        Self(roles.iter().fold(0, |m, r| m | r.bit()))
    }

    /// Whether `role` is in the set.
    pub fn contains(self, role: StaffRole) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles, in code order.
    pub fn roles(self) -> Vec<StaffRole> {
        StaffRole::ALL
            .into_iter()
            .filter(|r| self.contains(*r))
            .collect()
    }

    /// The one-byte mask written into signed bytes.
    pub fn mask(self) -> u8 {
        self.0
    }
}

impl From<Vec<StaffRole>> for RoleSet {
    fn from(v: Vec<StaffRole>) -> Self {
        Self::of(&v)
    }
}

impl From<RoleSet> for Vec<StaffRole> {
    fn from(s: RoleSet) -> Self {
        s.roles()
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.roles()).finish()
    }
}

/// An operation that needs a staff quorum. Codes (in signed bytes): account recovery 1,
/// unfreeze 2, roster change 3, notice to all clients 4, high-risk notice 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Adding a device to an account whose devices are all lost (revokes the old ones).
    AccountRecovery = 1,
    /// Lifting a freeze.
    Unfreeze = 2,
    /// Replacing the roster by its next version.
    RosterChange = 3,
    /// A notice addressed to all clients.
    NoticeToAllClients = 4,
    /// A notice of a high-risk category (payment, deposit, address or security change).
    HighRiskNotice = 5,
}

impl Operation {
    /// All operations, in code order.
    pub const ALL: [Operation; 5] = [
        Self::AccountRecovery,
        Self::Unfreeze,
        Self::RosterChange,
        Self::NoticeToAllClients,
        Self::HighRiskNotice,
    ];

    /// The code written into signed bytes.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::AccountRecovery => "account_recovery",
            Self::Unfreeze => "unfreeze",
            Self::RosterChange => "roster_change",
            Self::NoticeToAllClients => "notice_to_all_clients",
            Self::HighRiskNotice => "high_risk_notice",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many approvals an operation needs, from which roles. The initiator never counts,
/// so `threshold = M` means M approvers besides the initiator: M + 1 people in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    /// M: distinct staff accounts (other than the initiator's) that must approve; 1..=32.
    pub threshold: u8,
    /// Roles whose approvals count.
    pub roles: RoleSet,
}

impl Quorum {
    /// A quorum of `threshold` approvals from `roles`.
    pub fn new(threshold: u8, roles: &[StaffRole]) -> Self {
        Self {
            threshold,
            roles: RoleSet::of(roles),
        }
    }
}

/// The approval policy: a quorum per [`Operation`], the cooling-off window of new devices
/// and the envelope kinds a device on probation (or a frozen account) may not send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// [`Operation::AccountRecovery`].
    pub account_recovery: Quorum,
    /// [`Operation::Unfreeze`].
    pub unfreeze: Quorum,
    /// [`Operation::RosterChange`].
    pub roster_change: Quorum,
    /// [`Operation::NoticeToAllClients`].
    pub notice_to_all_clients: Quorum,
    /// [`Operation::HighRiskNotice`].
    pub high_risk_notice: Quorum,
    /// How long a newly added device stays on probation, ms (default 24 h, at most 30 days).
    pub cooling_off_ms: u64,
    /// Envelope kinds refused from a device on probation; kept sorted by code, deduplicated.
    pub sensitive_kinds: Vec<EnvelopeKind>,
    /// Roles whose members may attest a client account's first device (docs/PROTOCOL.md
    /// §19.10). `None` (absent in CBOR; rosters of format 1, written before this field
    /// existed) means [`DEFAULT_ATTESTATION_ROLES`]. When present the roster's canonical
    /// bytes are of format 2 and end with its role mask; absent, they are exactly the
    /// format-1 bytes, so every roster signed before keeps its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_attestation: Option<RoleSet>,
    /// The transparency log's keys, its witnesses and the cosignatures a checkpoint needs
    /// (docs/PROTOCOL.md §20). `None` (absent in CBOR) keeps the format-1 or format-2
    /// bytes; present, the canonical bytes are of format 3: the attestation role mask (0
    /// when absent) and then the policy's bytes follow the sensitive kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparency: Option<TransparencyPolicy>,
    /// The firm's compliance archive (docs/PROTOCOL.md §22): every message between a
    /// client and the firm gets a copy sealed to it. `None` (absent in CBOR) keeps the
    /// earlier formats; present, the canonical bytes are of format 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchivePolicy>,
}

/// Who may attest a client's first device when the policy does not say: advisors and
/// operations staff (the people who onboard clients and place calls to them).
pub const DEFAULT_ATTESTATION_ROLES: [StaffRole; 2] = [StaffRole::Advisor, StaffRole::Operations];

impl Default for ApprovalPolicy {
    /// Two approvals for recovery, unfreeze, roster changes and high-risk notices; one
    /// co-signer for notices to all clients; 24 h cooling-off; the kinds
    /// [`EnvelopeKind::is_sensitive`] names.
    fn default() -> Self {
        use StaffRole::{Compliance, Operations, Security};
        Self {
            account_recovery: Quorum::new(2, &[Operations, Compliance, Security]),
            unfreeze: Quorum::new(2, &[Operations, Compliance, Security]),
            roster_change: Quorum::new(2, &[Compliance, Security]),
            notice_to_all_clients: Quorum::new(1, &[Operations, Compliance]),
            high_risk_notice: Quorum::new(2, &[Operations, Compliance, Security]),
            cooling_off_ms: DEFAULT_COOLING_OFF_MS,
            sensitive_kinds: EnvelopeKind::ALL
                .into_iter()
                .filter(|k| k.is_sensitive())
                .collect(),
            client_attestation: None,
            transparency: None,
            archive: None,
        }
    }
}

impl ApprovalPolicy {
    /// The quorum for `op`.
    pub fn quorum(&self, op: Operation) -> &Quorum {
        match op {
            Operation::AccountRecovery => &self.account_recovery,
            Operation::Unfreeze => &self.unfreeze,
            Operation::RosterChange => &self.roster_change,
            Operation::NoticeToAllClients => &self.notice_to_all_clients,
            Operation::HighRiskNotice => &self.high_risk_notice,
        }
    }

    /// The roles whose members may attest a client's first device
    /// ([`ApprovalPolicy::client_attestation`], or [`DEFAULT_ATTESTATION_ROLES`]).
    pub fn attestation_roles(&self) -> RoleSet {
        self.client_attestation
            .unwrap_or_else(|| RoleSet::of(&DEFAULT_ATTESTATION_ROLES))
    }

    /// Whether a device on probation may not send `kind`.
    pub fn is_sensitive(&self, kind: EnvelopeKind) -> bool {
        self.sensitive_kinds.contains(&kind)
    }
}

/// One staff account in the roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffMember {
    /// The account.
    pub account: AccountId,
    /// Its role.
    pub role: StaffRole,
    /// Its devices' identities (1..=8); kept sorted by device id.
    pub devices: Vec<PublicIdentity>,
}

impl StaffMember {
    /// Whether `device` is one of this member's devices.
    pub fn device(&self, device: &DeviceId) -> Option<&PublicIdentity> {
        self.devices.iter().find(|d| d.device_id() == *device)
    }
}

/// A roster version. Construct with [`Roster::new`] or decode: both sort and check it, so
/// a `Roster` value is always well formed and its [`Roster::hash`] deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RosterWire", into = "RosterWire")]
pub struct Roster {
    version: u64,
    previous: Option<Digest>,
    issued_ms: u64,
    staff: Vec<StaffMember>,
    policy: ApprovalPolicy,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterWire {
    version: u64,
    #[serde(with = "opt_bytes_array")]
    previous: Option<[u8; 32]>,
    issued_ms: u64,
    staff: Vec<StaffMember>,
    policy: ApprovalPolicy,
}

impl TryFrom<RosterWire> for Roster {
    type Error = TrustError;
    fn try_from(w: RosterWire) -> Result<Self, TrustError> {
        Roster::new(
            w.version,
            w.previous.map(Digest),
            w.issued_ms,
            w.staff,
            w.policy,
        )
    }
}

impl From<Roster> for RosterWire {
    fn from(r: Roster) -> Self {
        Self {
            version: r.version,
            previous: r.previous.map(|d| d.0),
            issued_ms: r.issued_ms,
            staff: r.staff,
            policy: r.policy,
        }
    }
}

impl Roster {
    /// Build and check a roster: version 1 has no previous hash, later versions have one;
    /// 1..=256 staff accounts, each with 1..=8 devices; no account or device twice; every
    /// quorum 1..=32 with at least one role and reachable by the listed staff (M eligible
    /// accounts and M + 1 accounts in all, since the initiator never counts); cooling-off at
    /// most 30 days. Staff are sorted by account id, devices by device id, sensitive kinds
    /// by code.
    pub fn new(
        version: u64,
        previous: Option<Digest>,
        issued_ms: u64,
        mut staff: Vec<StaffMember>,
        mut policy: ApprovalPolicy,
    ) -> Result<Self, TrustError> {
        if version == 0 {
            return Err(TrustError::InvalidRoster("version starts at 1"));
        }
        if (version == 1) != previous.is_none() {
            return Err(TrustError::InvalidRoster(
                "version 1 has no previous hash and every later version has one",
            ));
        }
        if staff.is_empty() {
            return Err(TrustError::InvalidRoster("no staff"));
        }
        if staff.len() > MAX_ROSTER_STAFF {
            return Err(TrustError::TooMany {
                what: "roster staff",
                got: staff.len(),
                max: MAX_ROSTER_STAFF,
            });
        }
        staff.sort_by(|a, b| a.account.cmp(&b.account));
        let mut devices_seen = BTreeSet::new();
        for member in staff.iter_mut() {
            if member.devices.is_empty() {
                return Err(TrustError::InvalidRoster("a staff account has no device"));
            }
            if member.devices.len() > MAX_STAFF_DEVICES {
                return Err(TrustError::TooMany {
                    what: "devices of a staff account",
                    got: member.devices.len(),
                    max: MAX_STAFF_DEVICES,
                });
            }
            member.devices.sort_by_key(|d| d.device_id());
            for d in &member.devices {
                if !devices_seen.insert(d.device_id()) {
                    return Err(TrustError::InvalidRoster("a device is listed twice"));
                }
            }
        }
        if staff.windows(2).any(|w| w[0].account == w[1].account) {
            return Err(TrustError::InvalidRoster("a staff account is listed twice"));
        }
        if policy.cooling_off_ms > MAX_COOLING_OFF_MS {
            return Err(TrustError::InvalidRoster(
                "cooling-off window longer than 30 days",
            ));
        }
        policy.sensitive_kinds.sort_by_key(|k| k.code());
        policy.sensitive_kinds.dedup();
        if let Some(roles) = policy.client_attestation {
            if roles.is_empty() {
                return Err(TrustError::InvalidRoster(
                    "client attestation accepts no role",
                ));
            }
            if !staff.iter().any(|m| roles.contains(m.role)) {
                return Err(TrustError::InvalidRoster(
                    "no listed staff member may attest clients",
                ));
            }
        }
        if let Some(t) = policy.transparency.as_mut() {
            t.normalize().map_err(|e| match e {
                TlogError::BadPolicy(why) => TrustError::InvalidRoster(why),
                _ => TrustError::InvalidRoster("invalid transparency policy"),
            })?;
        }
        if let Some(a) = &policy.archive {
            a.validate()?;
            if staff.iter().any(|m| m.account == a.account) {
                return Err(TrustError::InvalidRoster(
                    "the archive's account is a staff account",
                ));
            }
            if staff.iter().any(|m| m.device(&a.device()).is_some()) {
                return Err(TrustError::InvalidRoster(
                    "the archive's device is a staff device",
                ));
            }
        }
        for op in Operation::ALL {
            let q = policy.quorum(op);
            if q.threshold == 0 || q.threshold > MAX_QUORUM_THRESHOLD {
                return Err(TrustError::InvalidRoster(
                    "a quorum threshold is not 1 to 32",
                ));
            }
            if q.roles.is_empty() {
                return Err(TrustError::InvalidRoster("a quorum accepts no role"));
            }
            let eligible = staff.iter().filter(|m| q.roles.contains(m.role)).count();
            if eligible < usize::from(q.threshold) || staff.len() < usize::from(q.threshold) + 1 {
                return Err(TrustError::QuorumUnreachable {
                    operation: op,
                    threshold: q.threshold,
                    eligible,
                    staff: staff.len(),
                });
            }
        }
        Ok(Self {
            version,
            previous,
            issued_ms,
            staff,
            policy,
        })
    }

    /// The version that follows this one: same policy unless replaced by the caller.
    pub fn next(
        &self,
        issued_ms: u64,
        staff: Vec<StaffMember>,
        policy: ApprovalPolicy,
    ) -> Result<Self, TrustError> {
        Self::new(
            self.version + 1,
            Some(self.hash()),
            issued_ms,
            staff,
            policy,
        )
    }

    /// The version (1, 2, ...).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The hash of the previous version (None for version 1).
    pub fn previous(&self) -> Option<Digest> {
        self.previous
    }

    /// When this version was issued, ms since the Unix epoch (signed).
    pub fn issued_ms(&self) -> u64 {
        self.issued_ms
    }

    /// The staff, sorted by account id.
    pub fn staff(&self) -> &[StaffMember] {
        &self.staff
    }

    /// The approval policy.
    pub fn policy(&self) -> &ApprovalPolicy {
        &self.policy
    }

    /// The staff member with this account id.
    pub fn member(&self, account: &AccountId) -> Option<&StaffMember> {
        self.staff
            .binary_search_by(|m| m.account.cmp(account))
            .ok()
            .and_then(|i| self.staff.get(i))
    }

    /// The identity of `device` if the roster lists it under `account`.
    pub fn staff_device(&self, account: &AccountId, device: &DeviceId) -> Option<&PublicIdentity> {
        self.member(account).and_then(|m| m.device(device))
    }

    /// The canonical bytes (see the module documentation of [`crate::trust`]).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(ROSTER_HASH_LABEL);
        let format = if self.policy.archive.is_some() {
            ROSTER_FORMAT_ARCHIVE
        } else if self.policy.transparency.is_some() {
            ROSTER_FORMAT_TRANSPARENCY
        } else if self.policy.client_attestation.is_some() {
            ROSTER_FORMAT_ATTESTATION
        } else {
            ROSTER_FORMAT
        };
        c.u16(format).u64(self.version);
        match &self.previous {
            None => c.u8(0),
            Some(h) => c.u8(1).raw(&h.0),
        };
        c.u64(self.issued_ms).u16(len16(self.staff.len()));
        for m in &self.staff {
            c.account(&m.account)
                .u8(m.role.code())
                .u8(len8(m.devices.len()));
            for d in &m.devices {
                c.raw(&d.to_bytes());
            }
        }
        for op in Operation::ALL {
            let q = self.policy.quorum(op);
            c.u8(op.code()).u8(q.threshold).u8(q.roles.mask());
        }
        c.u64(self.policy.cooling_off_ms)
            .u8(len8(self.policy.sensitive_kinds.len()));
        for k in &self.policy.sensitive_kinds {
            c.u16(k.code());
        }
        let transparency = |c: &mut Canon, t: &TransparencyPolicy| {
            c.u8(len8(t.log_keys.len()));
            for k in &t.log_keys {
                c.var(k.name().as_str().as_bytes()).raw(k.public());
            }
            c.u8(len8(t.witnesses.len()));
            for w in &t.witnesses {
                c.var(w.name().as_str().as_bytes()).raw(w.public());
            }
            c.u8(t.witness_threshold);
        };
        if let Some(a) = &self.policy.archive {
            // Format 4: the mask (0: absent), the transparency policy behind a presence
            // flag, then the archive.
            c.u8(self.policy.client_attestation.map_or(0, |r| r.mask()));
            match &self.policy.transparency {
                None => {
                    c.u8(0);
                }
                Some(t) => {
                    c.u8(1);
                    transparency(&mut c, t);
                }
            }
            c.account(&a.account)
                .raw(&a.identity.to_bytes())
                .u8(a.unreachable.code())
                .var(a.disclosure.as_bytes());
        } else if let Some(t) = &self.policy.transparency {
            // Format 3: the mask is always written, 0 meaning absent (a present set is
            // never empty).
            c.u8(self.policy.client_attestation.map_or(0, |r| r.mask()));
            transparency(&mut c, t);
        } else if let Some(roles) = self.policy.client_attestation {
            c.u8(roles.mask());
        }
        c.into_bytes()
    }

    /// `SHA-256(canonical_bytes)`: what the root and the staff quorum sign, and what the
    /// next version names as previous.
    pub fn hash(&self) -> Digest {
        Digest(crate::crypto::sha256(&[&self.canonical_bytes()]))
    }
}

// Lengths are bounded by the roster's own checks (<= 256 staff, <= 8 devices, <= 8 kinds),
// so these conversions never saturate.
fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}
fn len8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// How a roster version is authorised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RosterAuthorization {
    /// Version 1: the organisation root's signature over
    /// `"Sealpost_Roster_Root_v1" || roster_hash`; the key travels with it and must match
    /// the pinned fingerprint.
    Root {
        /// The root public key.
        root: OrgRootPublic,
        /// The signature.
        #[serde(with = "bytes_array")]
        signature: [u8; 64],
    },
    /// Later versions: a [`Operation::RosterChange`] approval bundle under the previous
    /// version whose parameters are exactly the 32-byte roster hash.
    Quorum(ApprovalBundle),
}

/// A roster with its authorisation, as the relay serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoster {
    /// The roster.
    pub roster: Roster,
    /// Its authorisation.
    pub authorization: RosterAuthorization,
}

impl SignedRoster {
    pub(crate) fn from_parts(roster: Roster, authorization: RosterAuthorization) -> Self {
        Self {
            roster,
            authorization,
        }
    }

    /// A later version carried by the previous version's roster-change quorum (checked
    /// by [`RosterChain::extend`], not here).
    pub fn with_quorum(roster: Roster, bundle: ApprovalBundle) -> Self {
        Self::from_parts(roster, RosterAuthorization::Quorum(bundle))
    }

    /// The relay's arrival rule for publishing this version: a version carried by a
    /// roster-change quorum is accepted only while those approvals are unexpired at
    /// `arrival_ms` ([`ApprovalBundle::check_arrival`]); version 1 (the root's
    /// signature) has no expiry. Only checked when a version is published: the stored
    /// chain's older approvals have long expired and stay valid at their `issued_ms`.
    pub fn check_arrival(&self, arrival_ms: u64) -> Result<(), TrustError> {
        match &self.authorization {
            RosterAuthorization::Quorum(bundle) => bundle.check_arrival(arrival_ms),
            RosterAuthorization::Root { .. } => Ok(()),
        }
    }

    /// CBOR, at most [`MAX_SIGNED_ROSTER_LEN`] bytes.
    pub fn to_cbor(&self) -> Result<Vec<u8>, TrustError> {
        Ok(codec::encode("signed roster", self, MAX_SIGNED_ROSTER_LEN)?)
    }

    /// Decode (bounded; the roster is checked as it decodes; signatures are checked by
    /// [`RosterChain`]).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, TrustError> {
        Ok(codec::decode(
            "signed roster",
            bytes,
            MAX_SIGNED_ROSTER_LEN,
        )?)
    }
}

/// What a client caches to refuse rollbacks and forks: the version and hash of the
/// newest roster it has verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterHead {
    /// The version.
    pub version: u64,
    /// Its hash.
    #[serde(with = "digest_bytes")]
    pub hash: Digest,
}

mod digest_bytes {
    use super::Digest;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&d.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        Ok(Digest(crate::codec::bytes_array::deserialize(d)?))
    }
}

/// A verified roster chain, version 1 to the head. Only [`RosterChain::verify`] and
/// [`RosterChain::extend`] build one, so holding a `RosterChain` means every link was
/// checked from the pinned organisation fingerprint.
#[derive(Clone, Debug)]
pub struct RosterChain {
    pinned: OrgFingerprint,
    links: Vec<SignedRoster>,
    hashes: Vec<Digest>,
    proofs: Vec<Option<QuorumProof>>,
}

impl RosterChain {
    /// Verify `links` (version 1 first) from the pinned fingerprint. `held` is the head
    /// this client verified before, if any: a chain ending below it is a rollback, and a
    /// chain with another hash at that version is a fork; both are refused. A roster
    /// issued later than `now_ms` plus [`MAX_CLOCK_SKEW_MS`] is refused.
    pub fn verify(
        pinned: &OrgFingerprint,
        links: Vec<SignedRoster>,
        held: Option<&RosterHead>,
        now_ms: u64,
    ) -> Result<Self, TrustError> {
        let mut it = links.into_iter();
        let first = it.next().ok_or(TrustError::EmptyChain)?;
        let hash = first.roster.hash();
        if first.roster.version != 1 {
            return Err(TrustError::RosterVersionGap {
                expected: 1,
                got: first.roster.version,
            });
        }
        match &first.authorization {
            RosterAuthorization::Root { root, signature } => {
                let got = root.fingerprint();
                if got != *pinned {
                    return Err(TrustError::RootMismatch {
                        expected: pinned.to_hex(),
                        got: got.to_hex(),
                    });
                }
                root.verify(&root_message(&hash.0), signature)?;
            }
            RosterAuthorization::Quorum(_) => {
                return Err(TrustError::WrongRosterAuthorization {
                    version: 1,
                    reason: "version 1 must be signed by the organisation root",
                })
            }
        }
        check_not_future(&first.roster, now_ms)?;
        let mut chain = Self {
            pinned: *pinned,
            links: vec![first],
            hashes: vec![hash],
            proofs: vec![None],
        };
        chain.extend(it.collect(), now_ms)?;
        if let Some(held) = held {
            chain.check_not_behind(held)?;
        }
        Ok(chain)
    }

    /// Verify and append later versions. On error the chain is unchanged.
    pub fn extend(&mut self, more: Vec<SignedRoster>, now_ms: u64) -> Result<(), TrustError> {
        if self.links.len() + more.len() > MAX_ROSTER_CHAIN_LEN {
            return Err(TrustError::TooMany {
                what: "roster chain",
                got: self.links.len() + more.len(),
                max: MAX_ROSTER_CHAIN_LEN,
            });
        }
        let mut staged: Vec<(SignedRoster, Digest, QuorumProof)> = Vec::with_capacity(more.len());
        for link in more {
            let (prev, prev_hash) = match staged.last() {
                Some((l, h, _)) => (&l.roster, *h),
                None => match (self.links.last(), self.hashes.last()) {
                    (Some(l), Some(h)) => (&l.roster, *h),
                    _ => return Err(TrustError::EmptyChain),
                },
            };
            let (hash, proof) = verify_successor(prev, prev_hash, &link, now_ms)?;
            staged.push((link, hash, proof));
        }
        for (link, hash, proof) in staged {
            self.links.push(link);
            self.hashes.push(hash);
            self.proofs.push(Some(proof));
        }
        Ok(())
    }

    fn check_not_behind(&self, held: &RosterHead) -> Result<(), TrustError> {
        let head = self.head().version;
        if head < held.version {
            return Err(TrustError::RosterRollback {
                held: held.version,
                got: head,
            });
        }
        if let Some(got) = self.hash_of(held.version) {
            if got != held.hash {
                return Err(TrustError::RosterFork {
                    version: held.version,
                    held: held.hash,
                    got,
                });
            }
        }
        Ok(())
    }

    /// The pinned fingerprint this chain was verified from.
    pub fn pinned(&self) -> &OrgFingerprint {
        &self.pinned
    }

    /// The newest roster.
    pub fn head(&self) -> &Roster {
        // A chain always holds version 1; fall back to it for the type checker.
        match self.links.last() {
            Some(l) => &l.roster,
            None => &self.links[0].roster,
        }
    }

    /// What to cache: the head's version and hash.
    pub fn head_ref(&self) -> RosterHead {
        let head = self.head();
        RosterHead {
            version: head.version,
            hash: self.hashes.last().copied().unwrap_or(Digest([0; 32])),
        }
    }

    /// Roster `version`, if in the chain.
    pub fn get(&self, version: u64) -> Option<&Roster> {
        let i = usize::try_from(version.checked_sub(1)?).ok()?;
        self.links.get(i).map(|l| &l.roster)
    }

    fn hash_of(&self, version: u64) -> Option<Digest> {
        let i = usize::try_from(version.checked_sub(1)?).ok()?;
        self.hashes.get(i).copied()
    }

    /// Who approved the change to `version` (None for version 1 and unknown versions).
    pub fn change_proof(&self, version: u64) -> Option<&QuorumProof> {
        let i = usize::try_from(version.checked_sub(1)?).ok()?;
        self.proofs.get(i)?.as_ref()
    }

    /// The signed links, version 1 first (what a client stores and serves back).
    pub fn links(&self) -> &[SignedRoster] {
        &self.links
    }

    /// The last time, ms, at which an object may be dated under roster `version`: None
    /// for the head (and unknown versions), which no version has replaced yet.
    ///
    /// Version `v + 1` carries a roster-change bundle under `v` whose request expires at
    /// `e`; the boundary of `v` is `max(issued_ms of v + 1, e) + MAX_CLOCK_SKEW_MS`. Its
    /// `issued_ms` alone would not do: `v + 1` is dated when it was proposed but published
    /// only once its quorum approved, up to `e`, and until then the relay accepts objects
    /// under `v` (dated at most [`MAX_CLOCK_SKEW_MS`] after they arrive). Every object the
    /// relay accepted under `v` is therefore dated at or before the boundary, so a later
    /// roster change never invalidates it (an account's append-only device log holding it
    /// would otherwise stop verifying for good). Once `v + 1` is published the relay
    /// refuses new objects under `v`.
    pub fn valid_until(&self, version: u64) -> Option<u64> {
        let next = self.get(version.checked_add(1)?)?;
        let i = usize::try_from(version).ok()?;
        let end = match self.links.get(i).map(|l| &l.authorization) {
            Some(RosterAuthorization::Quorum(bundle)) => {
                next.issued_ms.max(bundle.request.expires_ms)
            }
            _ => next.issued_ms,
        };
        Some(end.saturating_add(MAX_CLOCK_SKEW_MS))
    }

    /// Roster `version` for an object dated `at_ms`: it must be in the chain and `at_ms`
    /// must not be later than the version's boundary ([`RosterChain::valid_until`]).
    pub fn roster_for(&self, version: u64, at_ms: u64) -> Result<&Roster, TrustError> {
        let roster = self.get(version).ok_or(TrustError::RosterVersionUnknown {
            version,
            head: self.head().version,
        })?;
        if let Some(until) = self.valid_until(version) {
            if at_ms > until {
                return Err(TrustError::RosterSuperseded {
                    version,
                    at_ms,
                    replaced_ms: until,
                });
            }
        }
        Ok(roster)
    }

    /// The roster in force at `at_ms`: the newest version issued at or before it (version
    /// 1 for earlier times).
    pub fn roster_at(&self, at_ms: u64) -> &Roster {
        self.links
            .iter()
            .rev()
            .map(|l| &l.roster)
            .find(|r| r.issued_ms <= at_ms)
            .unwrap_or_else(|| &self.links[0].roster)
    }
}

fn check_not_future(r: &Roster, now_ms: u64) -> Result<(), TrustError> {
    if r.issued_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(TrustError::FromTheFuture {
            what: "roster",
            got_ms: r.issued_ms,
            now_ms,
        });
    }
    Ok(())
}

/// Check one link against its verified predecessor.
fn verify_successor(
    prev: &Roster,
    prev_hash: Digest,
    link: &SignedRoster,
    now_ms: u64,
) -> Result<(Digest, QuorumProof), TrustError> {
    let r = &link.roster;
    if r.version != prev.version + 1 {
        return Err(TrustError::RosterVersionGap {
            expected: prev.version + 1,
            got: r.version,
        });
    }
    if r.previous != Some(prev_hash) {
        return Err(TrustError::RosterPrevHashMismatch {
            version: r.version,
            expected: Some(prev_hash),
            got: r.previous,
        });
    }
    if r.issued_ms < prev.issued_ms {
        return Err(TrustError::RosterTimeRegression {
            version: r.version,
            previous_ms: prev.issued_ms,
            got_ms: r.issued_ms,
        });
    }
    check_not_future(r, now_ms)?;
    let hash = r.hash();
    let bundle = match &link.authorization {
        RosterAuthorization::Quorum(b) => b,
        RosterAuthorization::Root { .. } => {
            return Err(TrustError::WrongRosterAuthorization {
                version: r.version,
                reason: "versions after 1 need the previous version's staff quorum, not the root",
            })
        }
    };
    if bundle.request.operation != Operation::RosterChange {
        return Err(TrustError::WrongOperation {
            expected: Operation::RosterChange,
            got: bundle.request.operation,
        });
    }
    if bundle.request.parameters.as_slice() != hash.0.as_slice() {
        return Err(TrustError::ParametersMismatch { what: "roster" });
    }
    // Approvals must have been valid when the new version was issued.
    let proof = verify_quorum(prev, bundle, r.issued_ms)?;
    Ok((hash, proof))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::testutil::{acct, Org, HOUR, T0};
    use crate::trust::OrgRoot;

    /// v2 drops erin and adds a device for dave; authorised by alice + bob + carol.
    fn v2(org: &mut Org, prev: &Roster, at: u64) -> SignedRoster {
        let staff: Vec<StaffMember> = org.staff[..4].iter().map(|s| s.member()).collect();
        let roster = prev.next(at, staff, ApprovalPolicy::default()).unwrap();
        let b = org.bundle(
            Operation::RosterChange,
            roster.hash().0.to_vec(),
            prev.version(),
            at + HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        SignedRoster::with_quorum(roster, b)
    }

    fn fp(org: &Org) -> OrgFingerprint {
        org.root.public().fingerprint()
    }

    #[test]
    fn a_chain_verifies_from_the_pinned_root() {
        let mut org = Org::new(30);
        let v1 = org.v1.clone();
        let l2 = v2(&mut org, &v1.roster, T0 + HOUR);
        let chain =
            RosterChain::verify(&fp(&org), vec![v1.clone(), l2.clone()], None, T0 + HOUR).unwrap();
        assert_eq!(chain.head().version(), 2);
        assert_eq!(chain.head_ref().hash, l2.roster.hash());
        assert_eq!(chain.links().len(), 2);
        let proof = chain.change_proof(2).unwrap();
        assert_eq!(proof.approvers.len(), 2);
        // Version 1's policy is in force before v2 is issued, v2's after.
        assert_eq!(chain.roster_at(T0).version(), 1);
        assert_eq!(chain.roster_at(T0 + HOUR).version(), 2);
        // Objects under v1 stay valid until v2's approvals expire (T0 + 2 h), plus the
        // clock skew: v2 could have been published as late as that.
        let until = T0 + 2 * HOUR + MAX_CLOCK_SKEW_MS;
        assert_eq!(chain.valid_until(1), Some(until));
        assert_eq!(chain.valid_until(2), None);
        assert!(chain.roster_for(1, T0 + 1).is_ok());
        assert!(chain.roster_for(1, T0 + HOUR).is_ok());
        assert!(chain.roster_for(1, until).is_ok());
        assert!(matches!(
            chain.roster_for(1, until + 1),
            Err(TrustError::RosterSuperseded { version: 1, replaced_ms, .. }) if replaced_ms == until
        ));
        assert!(matches!(
            chain.roster_for(3, T0 + HOUR),
            Err(TrustError::RosterVersionUnknown {
                version: 3,
                head: 2
            })
        ));
        // The cached head accepts the same chain again.
        let held = chain.head_ref();
        assert!(RosterChain::verify(&fp(&org), vec![v1, l2], Some(&held), T0 + HOUR).is_ok());
    }

    #[test]
    fn a_roster_signed_by_another_root_is_refused() {
        let mut org = Org::new(31);
        let impostor = OrgRoot::generate(&mut org.rng);
        let forged = impostor.sign_genesis(org.v1.roster.clone()).unwrap();
        assert!(matches!(
            RosterChain::verify(&fp(&org), vec![forged], None, T0),
            Err(TrustError::RootMismatch { .. })
        ));
        // The right key with a signature over another roster.
        let mut tampered = org.v1.clone();
        if let RosterAuthorization::Root { signature, .. } = &mut tampered.authorization {
            signature[0] ^= 1;
        }
        assert!(matches!(
            RosterChain::verify(&fp(&org), vec![tampered], None, T0),
            Err(TrustError::BadSignature { .. })
        ));
        let later = org
            .v1
            .roster
            .next(
                T0,
                org.v1.roster.staff().to_vec(),
                ApprovalPolicy::default(),
            )
            .unwrap();
        assert!(org.root.sign_genesis(later).is_err());
        assert_eq!(
            RosterChain::verify(&fp(&org), vec![], None, T0).err(),
            Some(TrustError::EmptyChain)
        );
    }

    /// The scenario that used to brick accounts: v2 is proposed (and dated) at T0 + 1 h;
    /// at T0 + 1.5 h an unfreeze is approved under v1 and appended; v2's quorum approves
    /// and it is published at T0 + 3 h (its request expiring at T0 + 4 h). Everything
    /// dated under v1 up to the last moment the relay could have accepted it (v2's
    /// approvals' expiry plus the clock skew) stays valid for ever after, so an append-only
    /// log holding the unfreeze keeps verifying; nothing later does.
    #[test]
    fn a_version_stays_valid_until_its_successor_could_have_been_published() {
        let mut org = Org::new(39);
        let v1 = org.v1.clone();
        let proposed = T0 + HOUR;
        let staff: Vec<StaffMember> = org.staff.iter().map(|s| s.member()).collect();
        let roster = v1
            .roster
            .next(proposed, staff, ApprovalPolicy::default())
            .unwrap();
        let b = org.bundle(
            Operation::RosterChange,
            roster.hash().0.to_vec(),
            1,
            T0 + 4 * HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        let l2 = SignedRoster::with_quorum(roster, b);
        assert_eq!(l2.check_arrival(T0 + 3 * HOUR), Ok(()));
        let chain =
            RosterChain::verify(&fp(&org), vec![v1, l2], None, T0 + 400 * 24 * HOUR).unwrap();
        let until = T0 + 4 * HOUR + MAX_CLOCK_SKEW_MS;
        assert_eq!(chain.valid_until(1), Some(until));
        // Dated between the proposal and the publication: valid.
        assert_eq!(
            chain.roster_for(1, T0 + 90 * 60 * 1000).unwrap().version(),
            1
        );
        assert!(chain.roster_for(1, proposed).is_ok());
        assert!(chain.roster_for(1, until).is_ok());
        // Later than v1 could have been accepted by a relay: superseded.
        assert!(matches!(
            chain.roster_for(1, until + 1),
            Err(TrustError::RosterSuperseded { version: 1, .. })
        ));
        // The head is never superseded; an unknown version is refused.
        assert!(chain.roster_for(2, u64::MAX).is_ok());
        assert!(chain.roster_for(3, T0).is_err());
    }

    #[test]
    fn a_rollback_is_refused() {
        let mut org = Org::new(32);
        let v1 = org.v1.clone();
        let l2 = v2(&mut org, &v1.roster, T0 + HOUR);
        let chain = RosterChain::verify(&fp(&org), vec![v1.clone(), l2], None, T0 + HOUR).unwrap();
        let held = chain.head_ref();
        assert_eq!(
            RosterChain::verify(&fp(&org), vec![v1], Some(&held), T0 + HOUR).err(),
            Some(TrustError::RosterRollback { held: 2, got: 1 })
        );
    }

    #[test]
    fn a_fork_is_refused() {
        let mut org = Org::new(33);
        let v1 = org.v1.clone();
        let a = v2(&mut org, &v1.roster, T0 + HOUR);
        let b = v2(&mut org, &v1.roster, T0 + 2 * HOUR);
        assert_ne!(a.roster.hash(), b.roster.hash());
        let chain =
            RosterChain::verify(&fp(&org), vec![v1.clone(), a], None, T0 + 2 * HOUR).unwrap();
        let held = chain.head_ref();
        assert!(matches!(
            RosterChain::verify(&fp(&org), vec![v1, b], Some(&held), T0 + 2 * HOUR),
            Err(TrustError::RosterFork { version: 2, .. })
        ));
    }

    #[test]
    fn a_roster_change_is_published_only_before_its_approvals_expire() {
        let mut org = Org::new(35);
        let v1 = org.v1.clone();
        let good = v2(&mut org, &v1.roster, T0 + HOUR);
        assert_eq!(
            v1.check_arrival(u64::MAX),
            Ok(()),
            "the root signature has no expiry"
        );
        assert_eq!(good.check_arrival(T0 + 2 * HOUR), Ok(()));
        assert!(matches!(
            good.check_arrival(T0 + 2 * HOUR + 1),
            Err(TrustError::ExpiredOnArrival {
                operation: Operation::RosterChange,
                ..
            })
        ));
        // Once published, the chain verifies long after the approvals expired.
        let pinned = fp(&org);
        assert!(RosterChain::verify(&pinned, vec![v1, good], None, T0 + 400 * 24 * HOUR).is_ok());
    }

    #[test]
    fn forged_roster_versions_are_refused() {
        let mut org = Org::new(34);
        let v1 = org.v1.clone();
        let good = v2(&mut org, &v1.roster, T0 + HOUR);
        let pinned = fp(&org);
        let check = |links: Vec<SignedRoster>| RosterChain::verify(&pinned, links, None, T0 + HOUR);

        // v2 signed by the root instead of the quorum.
        let mut by_root = good.clone();
        by_root.authorization = org.v1.authorization.clone();
        assert!(matches!(
            check(vec![v1.clone(), by_root]),
            Err(TrustError::WrongRosterAuthorization { version: 2, .. })
        ));
        // v2 changed after approval.
        let mut altered = good.clone();
        altered.roster = Roster::new(
            2,
            Some(v1.roster.hash()),
            T0 + HOUR,
            vec![
                org.staff[1].member(),
                org.staff[2].member(),
                org.staff[0].member(),
            ],
            ApprovalPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            check(vec![v1.clone(), altered]).err(),
            Some(TrustError::ParametersMismatch { what: "roster" })
        );
        // v2 approved by one staff member only.
        let roster = good.roster.clone();
        let one = org.bundle(
            Operation::RosterChange,
            roster.hash().0.to_vec(),
            1,
            T0 + 2 * HOUR,
            0,
            &[(1, 0)],
        );
        assert!(matches!(
            check(vec![
                v1.clone(),
                SignedRoster::with_quorum(roster.clone(), one)
            ]),
            Err(TrustError::QuorumNotReached {
                needed: 2,
                got: 1,
                ..
            })
        ));
        // Approved under the wrong operation.
        let wrong = org.bundle(
            Operation::Unfreeze,
            roster.hash().0.to_vec(),
            1,
            T0 + 2 * HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        assert!(matches!(
            check(vec![
                v1.clone(),
                SignedRoster::with_quorum(roster.clone(), wrong)
            ]),
            Err(TrustError::WrongOperation { .. })
        ));
        // A version gap: v1 then v3.
        let v3 = v2(&mut org, &good.roster, T0 + HOUR);
        assert_eq!(
            check(vec![v1.clone(), v3.clone()]).err(),
            Some(TrustError::RosterVersionGap {
                expected: 2,
                got: 3
            })
        );
        // Version 2 naming another predecessor.
        let mut other_prev = Roster::new(
            2,
            Some(Digest([5; 32])),
            T0 + HOUR,
            org.staff.iter().map(|s| s.member()).collect(),
            ApprovalPolicy::default(),
        )
        .unwrap();
        let b = org.bundle(
            Operation::RosterChange,
            other_prev.hash().0.to_vec(),
            1,
            T0 + 2 * HOUR,
            0,
            &[(1, 0), (2, 0)],
        );
        other_prev.issued_ms = T0 + HOUR;
        assert!(matches!(
            check(vec![v1.clone(), SignedRoster::with_quorum(other_prev, b)]),
            Err(TrustError::RosterPrevHashMismatch { version: 2, .. })
        ));
        // The first link is not version 1.
        assert!(matches!(
            check(vec![good.clone()]),
            Err(TrustError::RosterVersionGap {
                expected: 1,
                got: 2
            })
        ));
        // Issued in the future.
        assert!(matches!(
            RosterChain::verify(&pinned, vec![v1.clone(), good.clone()], None, T0),
            Err(TrustError::FromTheFuture { .. })
        ));
        // And the genuine chain passes; extend leaves the chain unchanged on error.
        let mut chain = check(vec![v1]).unwrap();
        assert!(chain.extend(vec![v3], T0 + HOUR).is_err());
        assert_eq!(chain.head().version(), 1);
        chain.extend(vec![good], T0 + HOUR).unwrap();
        assert_eq!(chain.head().version(), 2);
    }

    #[test]
    fn a_later_roster_needs_staff_of_the_previous_one() {
        let mut org = Org::new(35);
        let v1 = org.v1.clone();
        // v2 adds two new security officers who approve their own appointment.
        let mut rng_staff = Vec::new();
        for name in ["sec.new1", "sec.new2"] {
            let id = crate::identity::IdentityKeyPair::generate(&mut org.rng);
            rng_staff.push(crate::trust::testutil::Staff {
                account: acct(name),
                role: StaffRole::Security,
                devices: vec![id],
            });
        }
        let mut members: Vec<StaffMember> = org.staff.iter().map(|s| s.member()).collect();
        members.extend(rng_staff.iter().map(|s| s.member()));
        let roster = v1
            .roster
            .next(T0 + HOUR, members, ApprovalPolicy::default())
            .unwrap();
        org.staff.extend(rng_staff);
        let b = org.bundle(
            Operation::RosterChange,
            roster.hash().0.to_vec(),
            1,
            T0 + 2 * HOUR,
            0,
            &[(5, 0), (6, 0)],
        );
        assert!(matches!(
            RosterChain::verify(
                &fp(&org),
                vec![v1, SignedRoster::with_quorum(roster, b)],
                None,
                T0 + HOUR
            ),
            Err(TrustError::ApproverNotInRoster { .. })
        ));
    }

    #[test]
    fn roster_construction_checks_its_rules() {
        let org = Org::new(36);
        let members = || org.staff.iter().map(|s| s.member()).collect::<Vec<_>>();
        let p = ApprovalPolicy::default;
        assert!(Roster::new(0, None, T0, members(), p()).is_err());
        assert!(Roster::new(1, Some(Digest([0; 32])), T0, members(), p()).is_err());
        assert!(Roster::new(2, None, T0, members(), p()).is_err());
        let mut dup = members();
        dup.push(org.staff[0].member());
        assert_eq!(
            Roster::new(1, None, T0, dup, p()).err(),
            Some(TrustError::InvalidRoster("a device is listed twice"))
        );
        let mut same_account = members();
        let mut m = org.staff[1].member();
        m.devices = org.staff[4]
            .devices
            .iter()
            .map(|d| d.public().clone())
            .collect();
        same_account[4] = m;
        assert!(Roster::new(1, None, T0, same_account, p()).is_err());
        let mut zero = p();
        zero.unfreeze.threshold = 0;
        assert!(Roster::new(1, None, T0, members(), zero).is_err());
        let mut no_role = p();
        no_role.unfreeze.roles = RoleSet::default();
        assert!(Roster::new(1, None, T0, members(), no_role).is_err());
        // Three security approvals: only bob is security.
        let mut unreachable = p();
        unreachable.account_recovery = Quorum::new(3, &[StaffRole::Security]);
        assert!(matches!(
            Roster::new(1, None, T0, members(), unreachable),
            Err(TrustError::QuorumUnreachable {
                eligible: 1,
                staff: 5,
                ..
            })
        ));
        // One staff member can never meet a quorum of two, nor even of one (the
        // initiator never counts).
        let solo = vec![org.staff[1].member()];
        assert!(matches!(
            Roster::new(1, None, T0, solo, p()),
            Err(TrustError::QuorumUnreachable { staff: 1, .. })
        ));
        let mut long = p();
        long.cooling_off_ms = crate::trust::MAX_COOLING_OFF_MS + 1;
        assert!(Roster::new(1, None, T0, members(), long).is_err());
    }

    #[test]
    fn the_hash_is_canonical_whatever_the_input_order_and_survives_cbor() {
        let org = Org::new(37);
        let mut members: Vec<StaffMember> = org.staff.iter().map(|s| s.member()).collect();
        let a = Roster::new(1, None, T0, members.clone(), ApprovalPolicy::default()).unwrap();
        members.reverse();
        members[4].devices.reverse();
        let mut policy = ApprovalPolicy::default();
        policy.sensitive_kinds.reverse();
        policy.sensitive_kinds.push(policy.sensitive_kinds[0]);
        let b = Roster::new(1, None, T0, members, policy).unwrap();
        assert_eq!(a.hash(), b.hash());
        let bytes = org.v1.to_cbor().unwrap();
        let back = SignedRoster::from_cbor(&bytes).unwrap();
        assert_eq!(back.roster.hash(), org.v1.roster.hash());
        assert_eq!(back, org.v1);
        // The layout starts with the label, the format and the version.
        let c = a.canonical_bytes();
        assert!(c.starts_with(b"Sealpost_Roster_v1\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00"));
        // Any field change changes the hash.
        let later = Roster::new(1, None, T0 + 1, a.staff().to_vec(), a.policy().clone()).unwrap();
        assert_ne!(later.hash(), a.hash());
    }

    #[test]
    fn issue_times_may_not_go_backwards() {
        let mut org = Org::new(38);
        let v1 = org.v1.clone();
        let back = v2(&mut org, &v1.roster, T0 - 1);
        assert!(matches!(
            RosterChain::verify(&fp(&org), vec![v1, back], None, T0),
            Err(TrustError::RosterTimeRegression { .. })
        ));
    }

    #[test]
    fn an_archive_is_format_4_and_rosters_without_one_keep_their_hash() {
        use crate::identity::IdentityKeyPair;
        use crate::trust::{ArchivePolicy, ArchiveUnreachable};
        let mut org = Org::new(41);
        let members: Vec<StaffMember> = org.staff.iter().map(|s| s.member()).collect();
        let plain = Roster::new(1, None, T0, members.clone(), ApprovalPolicy::default()).unwrap();
        let archive = IdentityKeyPair::generate(&mut org.rng);
        let policy = ApprovalPolicy {
            archive: Some(ArchivePolicy {
                account: AccountId::new("archive").unwrap(),
                identity: archive.public().clone(),
                unreachable: ArchiveUnreachable::Queue,
                disclosure: "Recorded by the firm.".into(),
            }),
            ..ApprovalPolicy::default()
        };
        let with = Roster::new(1, None, T0, members.clone(), policy.clone()).unwrap();
        assert!(plain
            .canonical_bytes()
            .starts_with(b"Sealpost_Roster_v1\x00\x01"));
        assert!(with
            .canonical_bytes()
            .starts_with(b"Sealpost_Roster_v1\x00\x04"));
        // Format 4 appends: mask 0, no transparency (0), the archive.
        let tail = 1 + 1 + (2 + 7) + 64 + 1 + (2 + 21);
        assert_eq!(
            with.canonical_bytes().len(),
            plain.canonical_bytes().len() + tail
        );
        assert!(with.canonical_bytes().ends_with(b"Recorded by the firm."));
        // CBOR round trip keeps the hash; each field changes it.
        let signed = org.root.sign_genesis(with.clone()).unwrap();
        let back = SignedRoster::from_cbor(&signed.to_cbor().unwrap()).unwrap();
        assert_eq!(back.roster.hash(), with.hash());
        let variants: [fn(&mut ArchivePolicy); 3] = [
            |a| a.unreachable = ArchiveUnreachable::Refuse,
            |a| a.disclosure.push('!'),
            |a| a.account = AccountId::new("archive2").unwrap(),
        ];
        for change in variants {
            let mut p = policy.clone();
            change(p.archive.as_mut().unwrap());
            let other = Roster::new(1, None, T0, members.clone(), p).unwrap();
            assert_ne!(other.hash(), with.hash());
        }
        let mut p = policy.clone();
        p.archive.as_mut().unwrap().identity =
            IdentityKeyPair::generate(&mut org.rng).public().clone();
        assert_ne!(
            Roster::new(1, None, T0, members.clone(), p).unwrap().hash(),
            with.hash()
        );
        // Refused: an empty disclosure, a staff account as the archive.
        let mut bad = policy.clone();
        bad.archive.as_mut().unwrap().disclosure = "  ".into();
        assert!(Roster::new(1, None, T0, members.clone(), bad).is_err());
        let mut bad = policy;
        bad.archive.as_mut().unwrap().account = members[0].account.clone();
        assert!(Roster::new(1, None, T0, members, bad).is_err());
    }

    #[test]
    fn a_transparency_policy_is_format_3_and_old_rosters_keep_their_hash() {
        use crate::tlog::{KeyName, LogSigner, WitnessSigner};
        let mut org = Org::new(39);
        let members: Vec<StaffMember> = org.staff.iter().map(|s| s.member()).collect();
        let plain = Roster::new(1, None, T0, members.clone(), ApprovalPolicy::default()).unwrap();
        let log = LogSigner::generate(KeyName::new("relay.example/log").unwrap(), &mut org.rng);
        let w1 = WitnessSigner::generate(KeyName::new("w.example/1").unwrap(), &mut org.rng);
        let w2 = WitnessSigner::generate(KeyName::new("w.example/2").unwrap(), &mut org.rng);
        let policy = ApprovalPolicy {
            transparency: Some(TransparencyPolicy {
                log_keys: vec![log.public().clone()],
                witnesses: vec![w2.public().clone(), w1.public().clone()],
                witness_threshold: 2,
            }),
            ..ApprovalPolicy::default()
        };
        let with = Roster::new(1, None, T0, members.clone(), policy.clone()).unwrap();
        // The plain roster is exactly format 1 (its bytes did not change).
        assert!(plain
            .canonical_bytes()
            .starts_with(b"Sealpost_Roster_v1\x00\x01"));
        assert!(with
            .canonical_bytes()
            .starts_with(b"Sealpost_Roster_v1\x00\x03"));
        assert_ne!(plain.hash(), with.hash());
        // Format 3 appends: attestation mask 0, one log key, two witnesses sorted, threshold.
        let tail_len = 1 + 1 + (2 + 17 + 32) + 1 + 2 * (2 + 11 + 32) + 1;
        let plain_len = plain.canonical_bytes().len();
        assert_eq!(with.canonical_bytes().len(), plain_len + tail_len);
        let t = with.policy().transparency.as_ref().unwrap();
        assert_eq!(t.witnesses[0].name().as_str(), "w.example/1");
        assert!(with.canonical_bytes().ends_with(&[2]));
        // CBOR round trip keeps the hash; another threshold changes it.
        let signed = org.root.sign_genesis(with.clone()).unwrap();
        let back = SignedRoster::from_cbor(&signed.to_cbor().unwrap()).unwrap();
        assert_eq!(back.roster.hash(), with.hash());
        let mut lower = policy.clone();
        lower.transparency.as_mut().unwrap().witness_threshold = 1;
        let other = Roster::new(1, None, T0, members.clone(), lower).unwrap();
        assert_ne!(other.hash(), with.hash());
        // A threshold the witnesses cannot reach, or no log key, is refused.
        let mut bad = policy.clone();
        bad.transparency.as_mut().unwrap().witness_threshold = 3;
        assert!(Roster::new(1, None, T0, members.clone(), bad).is_err());
        let mut bad = policy;
        bad.transparency.as_mut().unwrap().log_keys.clear();
        assert!(Roster::new(1, None, T0, members, bad).is_err());
    }
}
