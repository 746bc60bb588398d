//! # Trust and approvals: the organisation root, the roster chain, M-of-N approvals,
//! account device logs and signed notices
//!
//! Everything here is pure: no I/O, no clock (callers pass `now_ms`, milliseconds since
//! the Unix epoch), no global RNG (callers pass a [`rand_core::CryptoRng`]). Every object
//! is verifiable by any device from one pinned value, the organisation root's
//! fingerprint, so a compromised relay can drop or delay these objects but never forge
//! one. The relay runs the same checks to refuse bad input early; clients never rely on
//! the relay having done so.
//!
//! ## Objects
//!
//! * [`OrgRoot`] / [`OrgRootPublic`]: an Ed25519 key created and kept offline by the firm.
//!   It signs roster version 1 and nothing else. Devices pin
//!   [`OrgFingerprint`] `= SHA-256("Sealpost_OrgRoot_Fingerprint_v1" || key(32))`, shown
//!   as hex in groups of four.
//! * [`Roster`]: staff accounts (account id, [`StaffRole`], 1 to 8 device identities), an
//!   [`ApprovalPolicy`] (a [`Quorum`] per [`Operation`], the cooling-off window, the
//!   sensitive envelope kinds), a version, the previous version's hash and the issue time.
//!   [`SignedRoster`] adds its authorisation; [`RosterChain`] is a verified chain.
//! * [`ApprovalRequest`] / [`Approval`] / [`ApprovalBundle`]: the multi-signature;
//!   [`verify_quorum`] checks one and returns a [`QuorumProof`] naming who counted.
//! * [`DeviceLog`]: an account's append-only, hash-chained log of device changes;
//!   [`DeviceLog::verify`] yields the [`DeviceSet`] (active devices, probation, frozen).
//! * [`ClientAttestation`]: the firm's attestation of a client account's first device;
//!   [`first_contact`] is the rule a device applies before it trusts another account's
//!   log with an organisation pinned (the roster for staff, an attestation for clients).
//! * [`SignedNotice`]: a staff notice signed by its sender's device, with quorum
//!   co-signatures for high-risk kinds and notices to all clients or a segment;
//!   [`NoticeVerdict`] is what a client shows, including a loud "NOT AUTHENTICATED".
//!
//! ## Encoding: hand-specified bytes for signing, CBOR for transport
//!
//! Every object travels as CBOR through [`crate::codec`] (bounded decode; lists are
//! [`crate::wire::BoundedVec`]s). Nothing is ever signed or hashed over CBOR: serde_cbor's
//! decoder accepts several encodings of one value (see `docs/PROTOCOL.md` §9), so each
//! signed or hashed value has a byte layout defined here and recomputed from the decoded,
//! typed value. Two encodings of the same value therefore hash the same, and any change
//! of value changes the hash. Layout rules: integers are big-endian (`u8`, `u16`, `u64`);
//! a variable-length field is `u16 length || bytes`; a [`crate::identity::PublicIdentity`] is
//! `ed25519 (32) || x25519 (32)`; a signer is `u16 len || account id || device id (16)`;
//! every hash input starts with an ASCII label that ends in `_v1` and is not
//! terminated; every signature is over `label || SHA-256 digest (32)`.
//!
//! ### Roster hash
//!
//! ```text
//! roster_bytes = "Sealpost_Roster_v1"
//!   || u16 format (= 1) || u64 version
//!   || u8 0                         (version 1)
//!    | u8 1 || previous_hash (32)   (later versions)
//!   || u64 issued_ms || u16 staff_count
//!   || for each staff account, ascending by account id:
//!        u16 len || account || u8 role || u8 device_count
//!        || for each device, ascending by device id: ed25519 (32) || x25519 (32)
//!   || for each operation code 1..=5: u8 code || u8 threshold || u8 role_mask
//!   || u64 cooling_off_ms || u8 kind_count || for each sensitive kind, ascending: u16 code
//!   || u8 attestation_role_mask     (format 2 only)
//!   || u8 attestation_role_mask (0: absent) || transparency   (format 3 only)
//! transparency = u8 log_key_count || for each: u16 len || name || ed25519 (32)
//!   || u8 witness_count || for each: u16 len || name || ed25519 (32)
//!   || u8 witness_threshold         (keys and witnesses sorted by name, then key)
//!   || u8 attestation_role_mask (0: absent)
//!      || u8 0 | u8 1 || transparency || archive                 (format 4 only)
//! archive = u16 len || account || ed25519 (32) || x25519 (32)
//!   || u8 unreachable (refuse 1, queue 2) || u16 len || disclosure (UTF-8)
//! roster_hash = SHA-256(roster_bytes)
//! ```
//!
//! `format` is 1 when the policy's `client_attestation`, `transparency` and `archive` are
//! absent (rosters written before they existed keep their hash), 2 when only
//! `client_attestation` is present (its role mask is appended), 3 when `transparency` is
//! present and `archive` absent, and 4 when `archive` is present.
//!
//! Role codes: advisor 1, operations 2, compliance 3, security 4; `role_mask` has bit
//! `code - 1` set per accepted role. Operation codes: account recovery 1, unfreeze 2,
//! roster change 3, notice to all clients 4, high-risk notice 5. Envelope kind codes are
//! [`crate::envelope::EnvelopeKind::code`].
//!
//! Version 1 is signed by the root: `Ed25519_root("Sealpost_Roster_Root_v1" ||
//! roster_hash)`, the root key travelling with it. Version `n + 1` carries an
//! [`ApprovalBundle`] for [`Operation::RosterChange`] whose `roster_version` is `n` and
//! whose `parameters` are exactly the 32-byte hash of version `n + 1`; the quorum is that
//! of version `n`'s policy, checked among version `n`'s staff, at version `n + 1`'s
//! `issued_ms`. The roster change thus uses exactly the same approval rules as every other
//! operation (the initiator signs and does not count, distinct accounts, eligible roles).
//!
//! [`RosterChain::verify`] starts from the pinned fingerprint and refuses: a first link
//! that is not version 1 or not signed by the pinned root; a version gap; a previous-hash
//! mismatch; a root signature on a later version; a quorum that fails [`verify_quorum`];
//! an `issued_ms` earlier than the predecessor's or later than `now_ms` plus
//! [`MAX_CLOCK_SKEW_MS`]. Given the [`RosterHead`] the client cached, it also refuses a
//! chain ending before it (rollback) or holding another hash at that version (fork).
//!
//! ### Approval request digest and signatures
//!
//! ```text
//! request_bytes = "Sealpost_ApprovalRequest_v1"
//!   || u8 operation || u16 len || parameters || u64 roster_version
//!   || request_id (16) || u64 expires_ms
//!   || u16 len || initiator account || initiator device (16)
//! digest = SHA-256(request_bytes)
//! initiator signature = Ed25519_initiator_device("Sealpost_ApprovalInitiate_v1" || digest)
//! approval signature  = Ed25519_approver_device("Sealpost_Approval_v1" || digest)
//! ```
//!
//! The initiator must sign: otherwise a rogue staff member could name someone else as
//! initiator and count their own approval. Counting is **per staff account**: two devices
//! of one person are one vote, and every device of the initiator's account is excluded,
//! so a threshold `M` means `M + 1` distinct people. [`Roster::new`] refuses a policy the
//! listed staff could never satisfy. Approvals expire with their request; a request may
//! not expire more than [`MAX_APPROVAL_VALIDITY_MS`] after the time it is checked at.
//!
//! ### Device log
//!
//! ```text
//! entry_bytes = "Sealpost_DeviceLogEntry_v1"
//!   || u16 len || account || u64 seq || u8 0 | u8 1 || previous_entry_hash (32)
//!   || u64 timestamp_ms || action || u16 len || reason (UTF-8)
//! action = u8 1 || identity (64)      add
//!        | u8 2 || device id (16)     remove
//!        | u8 3                       freeze
//!        | u8 4                       unfreeze
//!        | u8 5 || identity (64)      recover
//! entry_hash = SHA-256(entry_bytes)
//! device signature  = Ed25519_device("Sealpost_DeviceLogSign_v1" || entry_hash)
//! ```
//!
//! The first entry (`seq` 0, no previous hash) must add a device and is signed by that
//! device alone (the account's genesis; peers pin the log head from then on). Adds,
//! removals and freezes are signed by an active device of the account that has finished
//! its cooling-off. An added (or recovered) device also signs the entry itself, proving it
//! holds the key. Recovery (all devices lost: revokes every active device and adds one) and
//! unfreeze are carried by an [`ApprovalBundle`] for [`Operation::AccountRecovery`] /
//! [`Operation::Unfreeze`] whose `parameters` are exactly the 32-byte entry hash, checked
//! against the roster version it names, whose boundary (see "Time" below) must not be
//! earlier than the entry's timestamp, with the approvals valid at that timestamp. A freeze also revokes every device
//! still on probation ("this wasn't me"). A device added at `t` is on probation while
//! `t + cooling_off_ms > now`; a device recovered by a quorum whose request expires at
//! `e` while `max(t, e) + cooling_off_ms > now` (the entry may have been appended at any
//! time before `e`). See [`device_log`] for all rules.
//!
//! Linking a device shows a [`LinkCode`]: 6 digits from
//! `SHA-256("Sealpost_LinkCode_v2" || u16 len || account || identity (64) || challenge (16)
//! || nonce (32))`, by a commit-then-reveal exchange: the new device sends its identity
//! with `SHA-256("Sealpost_LinkCommit_v1" || u16 len || account || identity (64) || nonce
//! (32))`; the existing device picks the challenge only after it has received both; the
//! new device reveals the nonce only after it has received the challenge. Nobody in the
//! middle (the relay included) can then search for a substituted identity, challenge or
//! nonce that makes both screens show the same code: each attempt is a 1-in-10^6 guess.
//!
//! ### Notices
//!
//! ```text
//! content_hash  = SHA-256("Sealpost_NoticeContent_v1" || content bytes)
//! notice_bytes  = "Sealpost_Notice_v1"
//!   || notice_id (16) || u8 category || audience || content_hash (32)
//!   || u64 sent_ms || u16 len || sender account || sender device (16) || u64 roster_version
//! audience = u8 1 || u16 len || client account | u8 2 || u16 len || segment | u8 3 (all clients)
//! notice_digest = SHA-256(notice_bytes)
//! sender signature = Ed25519_sender_device("Sealpost_NoticeSign_v1" || notice_digest)
//! ```
//!
//! A notice of a high-risk category needs an [`Operation::HighRiskNotice`] bundle, a notice
//! to all clients or to a segment an [`Operation::NoticeToAllClients`] bundle (both, if
//! both apply), each with `parameters = notice_digest` and the sender as initiator. A
//! segment is only a name (nothing signed lists its members, so no recipient can check
//! that it belongs), hence the same quorum as all clients. See [`notice`].
//!
//! ## Labels
//!
//! | label | use |
//! |---|---|
//! | `Sealpost_OrgRoot_Fingerprint_v1` | organisation fingerprint |
//! | `Sealpost_Roster_v1` | roster hash input |
//! | `Sealpost_Roster_Root_v1` | root signature on roster v1 |
//! | `Sealpost_ApprovalRequest_v1` | request digest input |
//! | `Sealpost_ApprovalInitiate_v1` | initiator signature |
//! | `Sealpost_Approval_v1` | approval signature |
//! | `Sealpost_DeviceLogEntry_v1` | log entry hash input |
//! | `Sealpost_DeviceLogSign_v1` | log entry signatures |
//! | `Sealpost_LinkCode_v2` | device-linking code |
//! | `Sealpost_LinkCommit_v1` | new device's commitment to its linking nonce |
//! | `Sealpost_NoticeContent_v1` | notice content hash |
//! | `Sealpost_Notice_v1` | notice digest input |
//! | `Sealpost_NoticeSign_v1` | notice sender signature |
//! | `Sealpost_Attestation_v1` | client attestation digest input ([`attestation`]) |
//! | `Sealpost_AttestationSign_v1` | attester's signature ([`attestation`]) |
//!
//! Every signature in this module has its own label, distinct from the existing ones
//! (`Sealpost_Auth_v1`, `Sealpost_Enroll_v1`, `Sealpost_PreKey_v1`), so a signature made
//! for one purpose never verifies for another.
//!
//! ## Time
//!
//! An object signed under roster version `v` and dated `t` (a log entry, a notice) is
//! accepted only if `v` is in the chain and `t` is not later than `v`'s **boundary**
//! ([`RosterChain::roster_for`], [`RosterChain::valid_until`]): none for the head; for an
//! older version, `max(issued_ms, expires_ms) + MAX_CLOCK_SKEW_MS`, where `issued_ms` is
//! that of `v + 1` and `expires_ms` that of `v + 1`'s roster-change request. The boundary is not `v + 1`'s `issued_ms`: that is the time it
//! was proposed, and it is published only once its quorum approved, up to its request's
//! expiry; meanwhile the relay goes on accepting objects under `v`, dated at most
//! [`MAX_CLOCK_SKEW_MS`] after they reach it. Every object a relay accepted under `v`
//! is therefore dated at or before the boundary, and stays valid for ever: an account's
//! device log is append-only, so an entry that stopped verifying would make the whole
//! account unusable. Once `v + 1` is published the relay refuses new objects that name
//! another version than its head (`conflict`: refresh the roster, sign or propose again).
//!
//! Dates are chosen by the signers, so a staff member removed from the roster could still
//! sign an object back-dated to before `v`'s boundary (up to [`MAX_APPROVAL_VALIDITY_MS`]
//! plus the skew after `v + 1` was proposed); a correct relay refuses it (it is not under
//! the head), but a compromised relay could deliver it. Clients SHOULD treat a notice
//! whose `sent_ms` is far older than its arrival with suspicion
//! ([`VerifiedNotice::roster_superseded`] flags notices signed under a roster that has
//! since been replaced). Objects dated more than [`MAX_CLOCK_SKEW_MS`] after `now_ms` are
//! refused.

pub mod approval;
pub mod archive;
pub mod attestation;
pub mod device_log;
pub mod error;
pub mod notice;
pub mod org;
pub mod roster;

#[cfg(test)]
mod testutil;

pub use approval::{
    verify_quorum, Approval, ApprovalBundle, ApprovalRequest, Parameters, QuorumProof, SignerRef,
};
pub use archive::{ArchivePolicy, ArchiveUnreachable, MAX_ARCHIVE_DISCLOSURE_LEN};
pub use attestation::{first_contact, ClientAttestation, EntryTimes, Standing};
pub use device_log::{
    DeviceAction, DeviceLog, DeviceSet, DeviceState, EntryAuthorization, EntryBody, LinkChallenge,
    LinkCode, LinkCommitment, LinkNonce, LogEntry, LogHead, SendDecision,
};
pub use error::{Digest, TrustError};
pub use notice::{
    content_hash, NoticeAudience, NoticeCategory, NoticeHeader, NoticeRisk, NoticeVerdict,
    SignedNotice, VerifiedNotice,
};
pub use org::{OrgFingerprint, OrgRoot, OrgRootPublic};
pub use roster::{
    ApprovalPolicy, Operation, Quorum, RoleSet, Roster, RosterAuthorization, RosterChain,
    RosterHead, SignedRoster, StaffMember, StaffRole, DEFAULT_ATTESTATION_ROLES,
};

/// Default cooling-off window of a new device: 24 hours.
pub const DEFAULT_COOLING_OFF_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest cooling-off window a roster may set: 30 days.
pub const MAX_COOLING_OFF_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// How far in the future an object may be dated (clock skew allowance): 5 minutes.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Longest validity of an approval request, from the time it is checked: 7 days.
pub const MAX_APPROVAL_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most staff accounts in a roster.
pub const MAX_ROSTER_STAFF: usize = 256;
/// Most devices per staff account in a roster.
pub const MAX_STAFF_DEVICES: usize = 8;
/// Largest quorum threshold.
pub const MAX_QUORUM_THRESHOLD: u8 = 32;
/// Most roster versions in a chain.
pub const MAX_ROSTER_CHAIN_LEN: usize = 1024;
/// Largest CBOR signed roster.
pub const MAX_SIGNED_ROSTER_LEN: usize = 192 * 1024;
/// Most approvals in one bundle.
pub const MAX_APPROVALS: usize = 32;
/// Longest approval parameters, bytes.
pub const MAX_APPROVAL_PARAMETERS_LEN: usize = 1024;
/// Most entries in an account's device log.
pub const MAX_LOG_ENTRIES: usize = 1024;
/// Longest reason text in a device-log entry, bytes.
pub const MAX_LOG_REASON_LEN: usize = 256;
/// Largest CBOR device log.
pub const MAX_DEVICE_LOG_LEN: usize = 2 * 1024 * 1024;
/// Longest audience segment name, bytes.
pub const MAX_SEGMENT_LEN: usize = 64;
/// Largest CBOR signed notice (without its content, which travels beside it).
pub const MAX_SIGNED_NOTICE_LEN: usize = 64 * 1024;

/// Format number written into roster bytes (a policy without `client_attestation`).
pub(crate) const ROSTER_FORMAT: u16 = 1;
/// Format number of roster bytes whose policy names the attesting roles (the role mask
/// follows the sensitive kinds).
pub(crate) const ROSTER_FORMAT_ATTESTATION: u16 = 2;
/// Format number of roster bytes whose policy lists the transparency log's keys and
/// witnesses (the attestation role mask, 0 when absent, then the transparency policy).
pub(crate) const ROSTER_FORMAT_TRANSPARENCY: u16 = 3;
/// Format number of roster bytes whose policy names the firm's archive (the attestation
/// role mask, 0 when absent; a transparency flag and policy; then the archive).
pub(crate) const ROSTER_FORMAT_ARCHIVE: u16 = 4;
pub(crate) const ORG_FINGERPRINT_LABEL: &[u8] = b"Sealpost_OrgRoot_Fingerprint_v1";
pub(crate) const ROSTER_HASH_LABEL: &[u8] = b"Sealpost_Roster_v1";
pub(crate) const ROSTER_ROOT_LABEL: &[u8] = b"Sealpost_Roster_Root_v1";
pub(crate) const APPROVAL_REQUEST_LABEL: &[u8] = b"Sealpost_ApprovalRequest_v1";
pub(crate) const APPROVAL_INITIATE_LABEL: &[u8] = b"Sealpost_ApprovalInitiate_v1";
pub(crate) const APPROVAL_SIGN_LABEL: &[u8] = b"Sealpost_Approval_v1";
pub(crate) const LOG_ENTRY_LABEL: &[u8] = b"Sealpost_DeviceLogEntry_v1";
pub(crate) const LOG_SIGN_LABEL: &[u8] = b"Sealpost_DeviceLogSign_v1";
pub(crate) const LINK_CODE_LABEL: &[u8] = b"Sealpost_LinkCode_v2";
pub(crate) const LINK_COMMIT_LABEL: &[u8] = b"Sealpost_LinkCommit_v1";
pub(crate) const NOTICE_CONTENT_LABEL: &[u8] = b"Sealpost_NoticeContent_v1";
pub(crate) const NOTICE_LABEL: &[u8] = b"Sealpost_Notice_v1";
pub(crate) const NOTICE_SIGN_LABEL: &[u8] = b"Sealpost_NoticeSign_v1";
pub(crate) const ATTESTATION_LABEL: &[u8] = b"Sealpost_Attestation_v1";
pub(crate) const ATTESTATION_SIGN_LABEL: &[u8] = b"Sealpost_AttestationSign_v1";

/// An empty bounded list (an empty list is within every bound).
pub(crate) fn empty_list<T, const N: usize>() -> crate::wire::BoundedVec<T, N> {
    match crate::wire::BoundedVec::new(Vec::new()) {
        Ok(v) => v,
        Err(_) => unreachable!("an empty list is within every bound"),
    }
}

/// Builder of the hand-specified bytes that are hashed (see the module documentation).
pub(crate) struct Canon(Vec<u8>);

impl Canon {
    pub(crate) fn new(label: &[u8]) -> Self {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(label);
        Self(v)
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// `u16 length || bytes`. Every variable field hashed here is bounded well below
    /// 65 535 bytes by its type (account ids 64, parameters 1024, reasons 256, segments 64).
    pub(crate) fn var(&mut self, b: &[u8]) -> &mut Self {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.raw(b.get(..usize::from(len)).unwrap_or(b))
    }

    pub(crate) fn account(&mut self, a: &crate::identity::AccountId) -> &mut Self {
        self.var(a.as_str().as_bytes())
    }

    pub(crate) fn signer(&mut self, s: &SignerRef) -> &mut Self {
        self.account(&s.account).raw(&s.device.0)
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}
