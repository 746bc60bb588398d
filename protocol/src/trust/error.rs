//! [`TrustError`]: every way a trust object (roster, approval, device log, notice) can be
//! refused, with the expected and received values where they help.

use std::fmt;

use crate::crypto::CryptoError;
use crate::error::{DecodeError, EncodeError};
use crate::identity::{AccountId, DeviceId};

use super::roster::{Operation, StaffRole};

/// A SHA-256 value (roster hash, request digest, log entry hash, notice digest), shown as
/// lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A hash that may be absent (the first entry names none), for messages.
fn hash_or_none(d: &Option<Digest>) -> String {
    d.as_ref().map_or("none".to_owned(), Digest::to_hex)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// A trust object was refused. Each variant names the object and, where it helps, what
/// was expected and what was received. None carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    // ----- organisation root and roster -----
    /// Version 1 of the roster is signed by a root whose fingerprint is not the pinned one.
    /// The message names the pinned fingerprint only: printing the other one would invite
    /// copying it over the one the firm gave out of band.
    #[error(
        "roster v1 is signed by another organisation root than the pinned one ({expected}): \
         check the organisation fingerprint with your firm out of band"
    )]
    RootMismatch {
        /// The pinned fingerprint (hex).
        expected: String,
        /// The fingerprint of the key that signed (hex).
        got: String,
    },
    /// A signature did not verify.
    #[error("{what} signature by {signer} does not verify")]
    BadSignature {
        /// Which signature.
        what: &'static str,
        /// Who was supposed to have signed (account/device or "organisation root").
        signer: String,
    },
    /// A roster breaks a structural rule (ordering, duplicates, bounds).
    #[error("invalid roster: {0}")]
    InvalidRoster(&'static str),
    /// The policy asks for a quorum the roster's staff can never reach.
    #[error(
        "{operation} needs {threshold} approvals besides the initiator, but only \
         {eligible} staff accounts are eligible out of {staff}"
    )]
    QuorumUnreachable {
        /// The operation.
        operation: Operation,
        /// Its threshold.
        threshold: u8,
        /// Staff accounts whose role the policy accepts.
        eligible: usize,
        /// All staff accounts.
        staff: usize,
    },
    /// The chain is empty.
    #[error("roster chain is empty")]
    EmptyChain,
    /// A staff quorum was presented but no roster is known to check it against (the
    /// organisation has not published one).
    #[error("no roster is known: a staff quorum cannot be checked")]
    NoRoster,
    /// A roster's version is not the one that must come next.
    #[error("roster version {got} where version {expected} was expected")]
    RosterVersionGap {
        /// The version that must come next.
        expected: u64,
        /// The version found.
        got: u64,
    },
    /// A roster's previous-hash does not match the roster before it.
    #[error(
        "roster v{version} names previous hash {got:?}, the previous roster hashes to {expected:?}"
    )]
    RosterPrevHashMismatch {
        /// The roster's version.
        version: u64,
        /// The hash of the previous roster (None for v1: v1 must not name one).
        expected: Option<Digest>,
        /// The hash it names.
        got: Option<Digest>,
    },
    /// A roster carries the wrong kind of authorisation for its version.
    #[error("roster v{version}: {reason}")]
    WrongRosterAuthorization {
        /// The roster's version.
        version: u64,
        /// Why.
        reason: &'static str,
    },
    /// A roster was issued before the one it replaces.
    #[error("roster v{version} issued at {got_ms} ms, before its predecessor ({previous_ms} ms)")]
    RosterTimeRegression {
        /// The roster's version.
        version: u64,
        /// Its predecessor's issue time.
        previous_ms: u64,
        /// Its issue time.
        got_ms: u64,
    },
    /// The offered chain ends before the version this client already holds.
    #[error("roster rollback: this client holds v{held}, the offered chain ends at v{got}")]
    RosterRollback {
        /// The version held.
        held: u64,
        /// The head of the offered chain.
        got: u64,
    },
    /// The offered chain has another roster at a version this client already holds.
    #[error("roster fork at v{version}: held {held}, offered {got}")]
    RosterFork {
        /// The version.
        version: u64,
        /// The hash held.
        held: Digest,
        /// The hash offered.
        got: Digest,
    },
    /// A roster version named by an object is not in the chain.
    #[error("roster v{version} is unknown (chain head is v{head})")]
    RosterVersionUnknown {
        /// The version named.
        version: u64,
        /// The chain's head.
        head: u64,
    },
    /// An object signed under roster `version` is dated after that roster was replaced
    /// (later than its boundary, [`crate::trust::RosterChain::valid_until`]).
    #[error("signed under roster v{version} at {at_ms} ms, but v{version} was replaced (valid until {replaced_ms} ms)")]
    RosterSuperseded {
        /// The version named.
        version: u64,
        /// The object's time.
        at_ms: u64,
        /// The last time an object may be dated under that version.
        replaced_ms: u64,
    },
    /// An object is dated further in the future than the allowed clock skew.
    #[error("{what} is dated {got_ms} ms, later than now ({now_ms} ms) plus the allowed skew")]
    FromTheFuture {
        /// Which object.
        what: &'static str,
        /// Its time.
        got_ms: u64,
        /// The caller's clock.
        now_ms: u64,
    },
    /// A list is longer than its bound.
    #[error("{what}: {got} items, more than the maximum of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The bound.
        max: usize,
    },

    // ----- approvals -----
    /// The approval bundle is for another operation than the one being authorised.
    #[error("approvals are for {got}, this needs {expected}")]
    WrongOperation {
        /// The operation needed.
        expected: Operation,
        /// The operation approved.
        got: Operation,
    },
    /// The approved parameters are not exactly the object being authorised.
    #[error("approved parameters do not match the {what} being authorised")]
    ParametersMismatch {
        /// What was being authorised.
        what: &'static str,
    },
    /// The request names another roster version than the one it is checked against.
    #[error("request is for roster v{got}, checked against v{expected}")]
    RosterVersionMismatch {
        /// The roster it is checked against.
        expected: u64,
        /// The version the request names.
        got: u64,
    },
    /// The request expired before the time it is checked at.
    #[error("approval request expired at {expires_ms} ms; checked at {now_ms} ms")]
    Expired {
        /// The request's expiry.
        expires_ms: u64,
        /// The time it was checked at.
        now_ms: u64,
    },
    /// The relay's arrival rule: approvals that had expired when the operation they
    /// authorise reached the relay (by the relay's clock). A signed date (a notice's
    /// `sent_ms`, a roster's `issued_ms`, a log entry's timestamp) is chosen by its
    /// signers, so approvals valid at that date could otherwise be used indefinitely.
    #[error(
        "the {operation} approvals expired at {expires_ms} ms, before the operation reached \
         the relay at {arrival_ms} ms; ask the approvers again"
    )]
    ExpiredOnArrival {
        /// The operation approved.
        operation: Operation,
        /// The request's expiry.
        expires_ms: u64,
        /// The relay's clock when the operation arrived.
        arrival_ms: u64,
    },
    /// The request's expiry is further ahead than [`super::MAX_APPROVAL_VALIDITY_MS`].
    #[error("approval request expires at {expires_ms} ms, later than the maximum {max_ms} ms")]
    ExpiryTooFar {
        /// The request's expiry.
        expires_ms: u64,
        /// The latest acceptable expiry.
        max_ms: u64,
    },
    /// The initiator is not a staff device of the roster.
    #[error("initiator {account}/{device} is not a staff device in the roster")]
    InitiatorNotInRoster {
        /// The account named.
        account: AccountId,
        /// The device named.
        device: DeviceId,
    },
    /// An approval signs another request than this one.
    #[error("approval by {approver} is for request {got}, not {expected}")]
    ApprovalForOtherRequest {
        /// The approver.
        approver: AccountId,
        /// This request's digest.
        expected: Digest,
        /// The digest the approval names.
        got: Digest,
    },
    /// An approval comes from the initiator's account; the initiator never counts.
    #[error("approval by {account}, the initiator, does not count")]
    InitiatorApproval {
        /// The initiator's account.
        account: AccountId,
    },
    /// Two approvals come from the same staff account (per-account counting).
    #[error("two approvals by {account}: a staff account counts once")]
    DuplicateApprover {
        /// The account.
        account: AccountId,
    },
    /// An approval comes from a device that the roster does not list for that account.
    #[error("approver {account}/{device} is not a staff device in the roster")]
    ApproverNotInRoster {
        /// The account named.
        account: AccountId,
        /// The device named.
        device: DeviceId,
    },
    /// An approver's role is not accepted for this operation.
    #[error("{account} is {role}, which the policy does not accept for {operation}")]
    RoleNotEligible {
        /// The approver.
        account: AccountId,
        /// Its role.
        role: StaffRole,
        /// The operation.
        operation: Operation,
    },
    /// Fewer valid approvals than the policy's threshold.
    #[error("{operation} needs {needed} approvals, got {got}")]
    QuorumNotReached {
        /// The operation.
        operation: Operation,
        /// The threshold.
        needed: u8,
        /// Valid approvals counted.
        got: usize,
    },

    // ----- device log -----
    /// A log entry belongs to another account.
    #[error("log entry {seq} is for account {got}, the log is {expected}'s")]
    LogAccountMismatch {
        /// Entry sequence number.
        seq: u64,
        /// The log's account.
        expected: AccountId,
        /// The account in the entry.
        got: AccountId,
    },
    /// A log entry has the wrong sequence number.
    #[error("log entry has sequence {got}, expected {expected}")]
    LogSequence {
        /// The next sequence number.
        expected: u64,
        /// The one found.
        got: u64,
    },
    /// A log entry's previous hash does not match the entry before it.
    #[error(
        "log entry {seq} names previous hash {}, expected {}",
        hash_or_none(.got),
        hash_or_none(.expected)
    )]
    LogPrevHashMismatch {
        /// Entry sequence number.
        seq: u64,
        /// The previous entry's hash (None for the first entry).
        expected: Option<Digest>,
        /// The hash it names.
        got: Option<Digest>,
    },
    /// A log entry is dated before the entry it follows.
    #[error("log entry {seq} dated {got_ms} ms, before the previous entry ({previous_ms} ms)")]
    LogTimeRegression {
        /// Entry sequence number.
        seq: u64,
        /// The previous entry's time.
        previous_ms: u64,
        /// This entry's time.
        got_ms: u64,
    },
    /// A log entry is not authorised the way its action requires.
    #[error("log entry {seq} ({action}) is not validly authorised: {reason}")]
    Unauthorized {
        /// Entry sequence number.
        seq: u64,
        /// The action.
        action: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The signing device is not an active device of the account.
    #[error("log entry {seq} is signed by {device}, which is not an active device of the account")]
    SignerNotActive {
        /// Entry sequence number.
        seq: u64,
        /// The device.
        device: DeviceId,
    },
    /// The signing device is still in its cooling-off window.
    #[error("log entry {seq} is signed by {device}, on probation until {until_ms} ms")]
    SignerOnProbation {
        /// Entry sequence number.
        seq: u64,
        /// The device.
        device: DeviceId,
        /// End of its probation.
        until_ms: u64,
    },
    /// The entry's action does not apply to the account's state.
    #[error("log entry {seq}: {reason}")]
    InvalidLogAction {
        /// Entry sequence number.
        seq: u64,
        /// Why.
        reason: &'static str,
    },
    /// The account is frozen; only removals, freezes, recovery and a quorum unfreeze apply.
    #[error("log entry {seq}: the account is frozen")]
    AccountFrozen {
        /// Entry sequence number.
        seq: u64,
    },
    /// The offered log is shorter than the one this client already verified.
    #[error(
        "device log rollback: held up to entry {held}, offered {}",
        .got.map_or("an empty log".to_owned(), |g| format!("up to entry {g}"))
    )]
    LogRollback {
        /// The sequence number held.
        held: u64,
        /// The offered log's last sequence number.
        got: Option<u64>,
    },
    /// The offered log differs from the one already verified.
    #[error("device log fork at entry {seq}: held {held}, offered {got}")]
    LogFork {
        /// The sequence number.
        seq: u64,
        /// The hash held.
        held: Digest,
        /// The hash offered.
        got: Digest,
    },

    // ----- notices -----
    /// A client account with an organisation pinned, whose first device no valid
    /// attestation of the firm vouches for.
    #[error(
        "{account} is waiting for the firm's verification: no staff member has attested its \
         first device (an organisation is pinned, so no device is trusted on first sight)"
    )]
    NotAttested {
        /// The account.
        account: AccountId,
    },
    /// The relay offered, as the firm's archive, a device whose identity is not the one
    /// the verified roster names (§22): nothing is sealed to it.
    #[error(
        "the relay offers {offered} device(s) for the archive account {account}, none with \
         the identity the verified roster names for the firm's archive ({fingerprint}); \
         nothing was sealed to them"
    )]
    ArchiveSubstituted {
        /// The archive account.
        account: AccountId,
        /// The roster's archive fingerprint.
        fingerprint: String,
        /// Devices the relay offered.
        offered: usize,
    },
    /// An attestation for another account or another genesis entry.
    #[error("the attestation does not name {account}'s genesis entry")]
    AttestationMismatch {
        /// The account.
        account: AccountId,
    },
    /// The attester may not attest clients.
    #[error("attestation by {attester} refused: {reason}")]
    AttesterNotEligible {
        /// The attesting account.
        attester: AccountId,
        /// Why.
        reason: &'static str,
    },
    /// A staff account's log lists a device its roster entry does not.
    #[error(
        "{account} is in the roster, but its device log lists device {device}, which the \
         roster does not: refused (a relay may be serving a fabricated log)"
    )]
    DeviceNotInRoster {
        /// The account.
        account: AccountId,
        /// The unlisted device.
        device: DeviceId,
    },
    /// A relay-recorded time later than the verifier's clock allows.
    #[error("the relay says entry {seq} was appended at {got_ms} ms, after now ({now_ms} ms)")]
    AppendedInTheFuture {
        /// The entry.
        seq: u64,
        /// The time served.
        got_ms: u64,
        /// The verifier's clock.
        now_ms: u64,
    },
    /// The notice content does not hash to the signed content hash.
    #[error("notice content does not match its signed hash")]
    NoticeContentMismatch,
    /// The notice is for another client.
    #[error("notice is addressed to {addressed}, not to {me}")]
    NoticeNotForRecipient {
        /// The signed addressee.
        addressed: AccountId,
        /// The account checking.
        me: AccountId,
    },
    /// The sender is not a staff device of the roster.
    #[error("notice sender {account}/{device} is not a staff device in the roster")]
    NoticeSenderNotStaff {
        /// The account named.
        account: AccountId,
        /// The device named.
        device: DeviceId,
    },
    /// A notice that needs a quorum lacks it.
    #[error("notice needs co-signatures for {0}")]
    MissingCosignatures(Operation),
    /// A notice carries co-signatures for an operation it does not need, or twice.
    #[error("notice carries unexpected co-signatures for {0}")]
    UnexpectedCosignatures(Operation),

    /// The transparency log does not prove what the relay served, or showed this device
    /// another log than before (docs/PROTOCOL.md §21.6); the message says what did not
    /// match.
    #[error("{0}")]
    Transparency(String),

    // ----- plumbing -----
    /// A primitive refused an input.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Decoding failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages say "none" and "entry N", never Rust's `Some(..)`/`None`/`Digest(..)`.
    #[test]
    fn messages_carry_no_debug_text() {
        let e = TrustError::LogPrevHashMismatch {
            seq: 0,
            expected: None,
            got: Some(Digest([0xab; 32])),
        };
        let text = e.to_string();
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        assert!(text.ends_with("expected none"), "{text}");
        assert!(
            !text.contains("Some(") && !text.contains("Digest("),
            "{text}"
        );
        let e = TrustError::LogRollback {
            held: 3,
            got: Some(1),
        };
        assert_eq!(
            e.to_string(),
            "device log rollback: held up to entry 3, offered up to entry 1"
        );
        let e = TrustError::LogRollback { held: 3, got: None };
        assert_eq!(
            e.to_string(),
            "device log rollback: held up to entry 3, offered an empty log"
        );
    }
}
