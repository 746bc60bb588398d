//! The Sealpost client: one device's view of its account, its contacts and their devices,
//! its sessions, and its message history.
//!
//! * A message to an account is sealed for every device of that account (from the relay's
//!   directory) and, as a `sync` copy, for this account's other devices.
//! * Incoming envelopes are deduplicated by message id, decrypted, checked against the
//!   sender's device directory, stored, and only then acknowledged to the relay. State is
//!   saved before any sealed envelope leaves the device (the ratchet's nonce rule).
//! * A contact whose set of devices changes is reported; if it was verified it becomes
//!   unverified until the user compares safety numbers again.
//! * Trust (docs/PROTOCOL.md §19): the device set of every account is taken from its
//!   verified device log, never from the relay's directory alone ([`crate::trust`]);
//!   approvals and signed notices are in [`crate::approvals`] and [`crate::notices`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use rand::rngs::OsRng;
use sealpost_protocol::attachment::AttachmentDescriptor;
use sealpost_protocol::content::{
    Content, InstructionCategory, LogViews, Message, ReceiptKind, MAX_RECEIPT_IDS, MAX_TEXT_LEN,
};
use sealpost_protocol::envelope::{Envelope, MessageId, RoutingHeader};
use sealpost_protocol::hexid::Hex32;
use sealpost_protocol::identity::{
    AccountId, DeviceId, IdentityKeyPair, PublicIdentity, SafetyNumber,
};
use sealpost_protocol::trust::{OrgFingerprint, RosterHead, SignedRoster, TrustError};
use sealpost_protocol::wire::{BoundedString, BoundedVec, ErrorCode, FrameBody, Role};
use sealpost_protocol::{EnvelopeKind, PreKeySecrets, Session};
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::net::{NetError, RelayAddress, RelayConnection};
use crate::receive::{
    compare_views, HeldMessage, Judgement, Keys, Opened, PeerSession, SplitRecord, Staged,
    ViewCheck,
};
use crate::state::{Profile, StateError};

/// One-time X25519 prekeys the client keeps published.
pub const TARGET_ONE_TIME_PREKEYS: u32 = 100;
/// One-time ML-KEM prekeys the client keeps published.
pub const TARGET_KEM_PREKEYS: u32 = 40;
/// Signed prekeys (and the last-resort KEM prekey) are replaced after this long.
pub const SIGNED_PREKEY_ROTATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Messages kept in the local history.
pub const MAX_HISTORY: usize = 10_000;
pub use crate::receive::{MAX_HELD, MAX_SEEN_IDS};
/// After a sender check failed for a transient reason, that account is not checked again
/// for this long: its messages are held at once (a listening device receives every half
/// second and would otherwise spend its request budget on a relay that just refused).
pub const SENDER_RECHECK_MS: u64 = 2_000;
/// A contact's device list is refreshed from the relay when older than this.
pub const DEVICE_LIST_TTL_MS: u64 = 30_000;
/// Received envelopes processed before the state is saved and they are acknowledged,
/// at most (a burst is otherwise committed when no further delivery is queued).
pub const MAX_UNSAVED_RECEIVED: usize = 64;
/// Connection attempts before `connect` gives up.
pub const MAX_CONNECT_ATTEMPTS: u32 = 6;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Local state.
    #[error(transparent)]
    State(#[from] StateError),
    /// The relay or the network.
    #[error(transparent)]
    Net(#[from] NetError),
    /// This device is not enrolled yet.
    #[error("this device is not enrolled (run `sealpost enroll`)")]
    NotEnrolled,
    /// Not connected.
    #[error("not connected to the relay")]
    NotConnected,
    /// The account has no device to write to.
    #[error("{0} has no enrolled device")]
    NoDevices(AccountId),
    /// Input the user gave is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A protocol operation failed.
    #[error("protocol: {0}")]
    Protocol(String),
    /// An attachment could not be sent or fetched, or failed its integrity checks.
    #[error("attachment: {0}")]
    Attachment(String),
    /// A trust object (roster chain, device log, approval, notice) failed verification,
    /// or went backwards or forked against what this device verified before.
    #[error("trust: {0}")]
    Trust(#[from] TrustError),
    /// The operation needs the organisation's roster, and there is none (no organisation
    /// pinned at enrolment, or the relay serves no roster yet).
    #[error("no organisation roster: {0}")]
    NoRoster(String),
    /// The firm's archive could not be handed its copy of a message and the roster's
    /// policy is `refuse` (§22): nothing was sent; try again.
    #[error("the firm's archive could not take its copy, so nothing was sent: {0}")]
    ArchiveUnavailable(String),
    /// This device or account may not do this (not staff, frozen, wrong
    /// role, not an active device).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// This device is on probation (its cooling-off after it was added, §19.6) and may
    /// not do this until `until_ms`.
    #[error(
        "not allowed: this device is on probation until {until_ms} (ms since the Unix \
         epoch) and may not {refused} until then"
    )]
    OnProbation {
        /// End of its cooling-off window (ms since the Unix epoch).
        until_ms: u64,
        /// What it may not do, e.g. `send approval messages`.
        refused: String,
    },
    /// The code typed does not match the one the new device shows. The offer is
    /// withdrawn; start again with a fresh challenge.
    #[error("the code does not match the one the new device shows; the offer was withdrawn")]
    CodeMismatch,
    /// A bounded wait ended before the other side acted.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// No such approval request, link or device.
    #[error("not found: {0}")]
    NotFound(String),
    /// The relay serves an organisation and no organisation fingerprint was given to pin.
    /// The fingerprint is never taken from the relay (that would let a compromised relay
    /// choose whom the device trusts): get it from the firm out of band.
    #[error(
        "the relay at {relay} belongs to an organisation, but no organisation fingerprint was \
         given: get it from your firm out of band (it is printed with your enrolment code) \
         and pass it with --org; it is never taken from the relay"
    )]
    OrgNotPinned {
        /// The relay's address.
        relay: String,
    },
    /// The relay is configured with another organisation than the one this device pins
    /// (or was given to pin). The relay's fingerprint is deliberately not kept nor shown:
    /// printing it would invite copying it over the one the firm gave out of band.
    #[error(
        "the relay at {relay} belongs to a different organisation than the one pinned \
         ({pinned}): nothing was sent"
    )]
    OrgMismatch {
        /// The relay's address.
        relay: String,
        /// The fingerprint this device pins or was given (hex).
        pinned: String,
    },
}

impl ClientError {
    /// A failure that says nothing about the operation itself: the relay could not be
    /// reached, did not answer in time, was busy or rate limited, or lost its store for a
    /// moment. The same request may succeed later; it is never a verdict.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotConnected | Self::Timeout(_) => true,
            Self::Net(e) => e.is_transient(),
            _ => false,
        }
    }
}

fn proto<E: std::fmt::Display>(e: E) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Where the relay is, as stored in the profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayInfo {
    /// UDP address.
    pub addr: String,
    /// Certificate name.
    pub server_name: String,
    /// Pinned CA fingerprint, hex.
    pub ca_fingerprint: String,
    /// Pinned organisation fingerprint (64 hex digits), if the firm runs an organisation
    /// root. Pinned at enrolment (or linking) and never changed afterwards; profiles from
    /// before trust load with none.
    #[serde(default)]
    pub org_fingerprint: Option<String>,
}

impl RelayInfo {
    pub(crate) fn address(&self) -> Result<RelayAddress, ClientError> {
        let addr = self
            .addr
            .parse()
            .map_err(|_| ClientError::Invalid(format!("bad relay address {}", self.addr)))?;
        let ca: Hex32 = self
            .ca_fingerprint
            .parse()
            .map_err(|e| ClientError::Invalid(format!("bad CA fingerprint in the profile: {e}")))?;
        Ok(RelayAddress {
            addr,
            server_name: self.server_name.clone(),
            ca_fingerprint: ca.into_bytes(),
        })
    }

    fn org_of(hex: &str) -> Result<Option<OrgFingerprint>, ClientError> {
        RelayInfo {
            addr: String::new(),
            server_name: String::new(),
            ca_fingerprint: String::new(),
            org_fingerprint: Some(hex.to_owned()),
        }
        .org()
    }

    /// The pinned organisation fingerprint, parsed.
    pub fn org(&self) -> Result<Option<OrgFingerprint>, ClientError> {
        match &self.org_fingerprint {
            None => Ok(None),
            Some(hex) => OrgFingerprint::from_hex(hex).map(Some).map_err(|_| {
                ClientError::Invalid("the organisation fingerprint must be 64 hex digits".into())
            }),
        }
    }
}

/// A device of a contact, as first seen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownDevice {
    /// Its identity.
    pub identity: PublicIdentity,
    /// When this device first saw it.
    pub first_seen_ms: u64,
}

/// A contact: an account and the devices it is known to have.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Contact {
    /// The account.
    pub account: AccountId,
    /// Its role, if the relay told us.
    pub role: Option<Role>,
    /// Its devices.
    pub devices: BTreeMap<DeviceId, KnownDevice>,
    /// The safety number the user verified, if any.
    pub verified: Option<String>,
    /// When the device list was last refreshed (not persisted meaningfully across runs).
    #[serde(default)]
    pub refreshed_ms: u64,
}

/// Direction of a history entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received.
    In,
    /// Sent (by this or another device of the account).
    Out,
}

/// What a history entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Chat.
    Text,
    /// Account notice.
    Notice,
    /// A client's instruction (payment, withdrawal, transfer, standing-instruction
    /// change): a sensitive kind, shown apart from chat.
    Instruction,
}

/// A message in the local history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Message id.
    pub id: MessageId,
    /// In or out.
    pub direction: Direction,
    /// The other account.
    pub peer: AccountId,
    /// Chat or notice.
    pub kind: EntryKind,
    /// Notice title.
    pub title: Option<String>,
    /// The text.
    pub body: String,
    /// Sender's clock.
    pub sent_ms: u64,
    /// When this device got it.
    pub received_ms: u64,
    /// For sent messages: a delivery receipt arrived.
    pub delivered: bool,
    /// For sent messages: a read receipt arrived.
    pub read: bool,
    /// For received messages: shown to the user here.
    pub seen_locally: bool,
    /// For attachments: what the file is (the key stays in the encrypted state only).
    #[serde(default)]
    pub attachment: Option<AttachmentInfo>,
    /// For notices: whether the notice verified, who signed and co-signed it, or why it
    /// is NOT AUTHENTICATED.
    #[serde(default)]
    pub notice: Option<crate::notices::NoticeStatus>,
    /// For instructions: what kind of instruction it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<InstructionCategory>,
    /// For received messages: the sending device has been revoked since, at this time
    /// (ms since the Unix epoch); the message says it was sent before (§18.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_revoked_ms: Option<u64>,
}

/// A file attached to a message, as shown to the user (no key material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    /// File name given by the sender.
    pub file_name: String,
    /// Media type given by the sender.
    pub media_type: String,
    /// Plaintext size, bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
}

impl AttachmentInfo {
    fn of(d: &AttachmentDescriptor) -> Self {
        Self {
            file_name: d.file_name.as_str().to_owned(),
            media_type: d.media_type.as_str().to_owned(),
            size: d.size,
            sha256: hex::encode(d.sha256),
        }
    }
}

/// Something that happened while receiving.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A chat message arrived.
    Message {
        /// The entry.
        entry: HistoryEntry,
    },
    /// An account notice arrived.
    Notice {
        /// The entry.
        entry: HistoryEntry,
    },
    /// An instruction arrived (payment, withdrawal, transfer, standing-instruction
    /// change), from a device past its cooling-off (one on probation is refused and
    /// reported as [`Event::Rejected`]).
    Instruction {
        /// The entry.
        entry: HistoryEntry,
    },
    /// Another device of this account sent a message.
    Synced {
        /// The entry.
        entry: HistoryEntry,
    },
    /// Receipts arrived.
    Receipt {
        /// From.
        from: AccountId,
        /// Delivered or read.
        kind: ReceiptKind,
        /// Which messages.
        message_ids: Vec<MessageId>,
    },
    /// A contact's devices changed: new identity keys. Never accepted silently.
    DevicesChanged {
        /// The account.
        account: AccountId,
        /// Fingerprints of devices that appeared.
        added: Vec<String>,
        /// Fingerprints of devices that disappeared.
        removed: Vec<String>,
        /// The contact was verified and no longer is.
        was_verified: bool,
    },
    /// An envelope was dropped.
    Rejected {
        /// Its sender device.
        device: DeviceId,
        /// Its message id.
        message_id: MessageId,
        /// Why.
        reason: String,
        /// A sensitive kind (an instruction, an approval, a device change) refused because
        /// of its sender (on probation, frozen, not in the account's log): possibly a
        /// device added behind the account's back, to be shown loudly.
        alarm: bool,
    },
    /// A message decrypted, but its sender could not be checked against a verified
    /// device log now (the relay did not answer, refused for a while, or the connection
    /// dropped). It is kept in the encrypted profile, not shown, and checked again on
    /// the next receive; it is shown (or refused) then.
    Held {
        /// Its sender device.
        device: DeviceId,
        /// Its message id.
        message_id: MessageId,
        /// The account it claims.
        from: AccountId,
        /// Why the check could not be made.
        reason: String,
    },
    /// A message needed to be held, but [`MAX_HELD`] messages are held already: nothing
    /// was committed and it was not acknowledged, so the relay keeps it and delivers it
    /// again.
    HoldFull {
        /// Its sender device.
        device: DeviceId,
        /// Its message id.
        message_id: MessageId,
        /// The bound.
        max: usize,
    },
    /// The relay showed this device and `account` different device logs (of this account
    /// or of `account`): a split view, possibly a device slipped into one side's view.
    /// Sensitive kinds (approvals, instructions, device changes) are refused across the
    /// pair until the views agree. Shown loudly.
    SplitView {
        /// The peer account.
        account: AccountId,
        /// What differed.
        reason: String,
        /// The peer's device detected it and said so in its message (this device's own
        /// comparison found no contradiction on its own).
        reported_by_peer: bool,
    },
    /// Fresh prekeys were published.
    PreKeysPublished {
        /// One-time X25519 prekeys now at the relay.
        one_time: u32,
        /// One-time ML-KEM prekeys now at the relay.
        kem_one_time: u32,
    },
    /// The relay presented a device (in its directory, a bundle or as a sender) that the
    /// account's verified device log does not list as active: possibly inserted by the
    /// relay. Nothing is encrypted to it and nothing from it is trusted.
    UntrustedDevice {
        /// The account it claims.
        account: AccountId,
        /// The device.
        device: DeviceId,
        /// Its fingerprint, when its keys are known.
        fingerprint: Option<String>,
        /// Where it was seen: `directory`, `bundle` or `message`.
        seen_in: String,
    },
    /// A device joined an account (a contact's or this one) through its device log.
    DeviceAdded {
        /// The account.
        account: AccountId,
        /// The device.
        device: DeviceId,
        /// Its fingerprint.
        fingerprint: String,
        /// End of its cooling-off window (ms since the Unix epoch).
        probation_until_ms: u64,
    },
    /// The relay reports a security event about this account (its `notify_devices`
    /// measure, docs/PROTOCOL.md §21.3): the relay's word, shown as a warning.
    SecurityAlert {
        /// The relay's event id.
        id: u64,
        /// When it was raised (ms since the Unix epoch).
        time_ms: u64,
        /// Its severity (`info` .. `critical`).
        severity: String,
        /// The rule that raised it.
        rule: String,
        /// The device it concerns, if any (another device of this account, or one that
        /// tried to become one).
        device: Option<DeviceId>,
        /// What the relay saw, in its words.
        detail: String,
    },
    /// The firm's archive in the verified roster changed, or was seen for the first time
    /// (docs/PROTOCOL.md §22): every message between a client and the firm is copied to
    /// it from now on. Announced to every device.
    ArchiveChanged {
        /// The roster version that changed it.
        roster_version: u64,
        /// The archive's fingerprint before (none: not recorded).
        before: Option<String>,
        /// Its fingerprint now (none: no longer recorded).
        after: Option<String>,
        /// The firm's disclosure text now.
        disclosure: Option<String>,
    },
    /// A message was sent, and its archive copy is kept on this device until the firm's
    /// archive takes it (the roster's `queue` policy, §22).
    ArchiveQueued {
        /// The message.
        message_id: MessageId,
        /// Its recipient.
        to: AccountId,
        /// Archive copies now waiting on this device.
        waiting: usize,
        /// Why it could not be handed over.
        reason: String,
    },
    /// The archive device received a message's archive copy (only on the archive).
    Archived {
        /// The message.
        message_id: MessageId,
        /// The sending account.
        from: AccountId,
        /// The account the original went to.
        to: AccountId,
        /// The content's kind (`text`, `notice`, ...).
        kind: String,
    },
    /// An account was frozen or unfrozen.
    FreezeChanged {
        /// The account.
        account: AccountId,
        /// Now frozen.
        frozen: bool,
    },
    /// A roster chain or device log was refused (rollback, fork, forged link). The relay
    /// is misbehaving or compromised; the previously verified state is kept.
    TrustRefused {
        /// `roster` or the account whose log it is.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A newer roster version verified.
    RosterUpdated {
        /// The new head version.
        version: u64,
    },
    /// An approval request arrived, verified, and waits for this user's decision.
    ApprovalRequested {
        /// The request (as [`crate::approvals::ApprovalView`]).
        request: crate::approvals::ApprovalView,
    },
    /// An approver answered one of this device's requests.
    ApprovalAnswered {
        /// Request id, hex.
        request_id: String,
        /// The approver's account.
        approver: AccountId,
        /// Approved (true) or rejected.
        approved: bool,
        /// The approver's reason (may be empty).
        reason: String,
    },
    /// An approval request or answer was refused (bad signature, expired, other content,
    /// from the initiator, duplicate, wrong role, not in the roster).
    ApprovalRefused {
        /// Request id, hex.
        request_id: String,
        /// The sending account.
        from: AccountId,
        /// Why.
        reason: String,
    },
    /// A request reached its quorum and the operation was carried out.
    OperationCompleted {
        /// Request id, hex.
        request_id: String,
        /// The operation.
        operation: String,
        /// What was done.
        summary: String,
    },
    /// A request reached its quorum but carrying it out failed.
    OperationFailed {
        /// Request id, hex.
        request_id: String,
        /// The operation.
        operation: String,
        /// Why.
        reason: String,
        /// The failure was transient (relay unreachable, timeout, rate limit): the
        /// operation is tried again on the next receive pass while its approvals last.
        /// Otherwise the request is failed; `sealpost approvals retry` tries again.
        will_retry: bool,
    },
}

/// Result of a send.
#[derive(Clone, Debug, Serialize)]
pub struct SendReport {
    /// The message id (same on every device).
    pub message_id: MessageId,
    /// The account it went to.
    pub to: AccountId,
    /// Recipient devices that got a copy.
    pub devices: usize,
    /// This account's other devices that got a sync copy.
    pub own_devices: usize,
    /// Warnings raised while sending (device changes).
    pub events: Vec<Event>,
}

#[derive(Serialize, Deserialize)]
struct SessionRecord {
    device: DeviceId,
    account: AccountId,
    #[serde(with = "serde_bytes")]
    pickle: Vec<u8>,
    /// Replaced sessions still opened with (newest first), pickled like `pickle`.
    #[serde(default)]
    previous: Vec<serde_bytes::ByteBuf>,
}

/// Everything that is persisted (encrypted as a whole by [`Profile`]).
#[derive(Serialize, Deserialize)]
struct StateFile {
    #[serde(with = "serde_bytes")]
    identity: Vec<u8>,
    #[serde(with = "serde_bytes")]
    prekeys: Vec<u8>,
    prekeys_rotated_ms: u64,
    relay: Option<RelayInfo>,
    account: Option<AccountId>,
    role: Option<Role>,
    sessions: Vec<SessionRecord>,
    contacts: Vec<Contact>,
    history: Vec<HistoryEntry>,
    /// Message ids remembered by versions that did not key them by device (read, never
    /// grown).
    #[serde(default)]
    seen: Vec<MessageId>,
    /// Message ids of authenticated envelopes, per sending device.
    #[serde(default)]
    seen_by_device: Vec<(DeviceId, MessageId)>,
    /// Messages held until their sender can be checked (§18.3).
    #[serde(default)]
    held: Vec<crate::receive::HeldMessage>,
    /// Peer accounts with a split view (§18.7).
    #[serde(default)]
    splits: Vec<crate::receive::SplitRecord>,
    /// Descriptors (with keys) of attachments in the history, by message id.
    #[serde(default)]
    attachments: Vec<(MessageId, AttachmentDescriptor)>,
    /// The verified roster chain's links, version 1 first.
    #[serde(default)]
    roster: Vec<SignedRoster>,
    /// The newest roster version verified (rollback and fork protection).
    #[serde(default)]
    roster_head: Option<RosterHead>,
    /// The verified head of every account's device log seen.
    #[serde(default)]
    log_heads: Vec<crate::trust::LogHeadRecord>,
    /// The transparency-log checkpoint accepted last (signed note text, §21.6).
    #[serde(default)]
    tlog_checkpoint: Option<String>,
    /// The last account alert shown (§21.3).
    #[serde(default)]
    alerts_seen: u64,
    /// Archive copies not yet handed to the firm's archive (§22).
    #[serde(default)]
    archive_queue: Vec<crate::archive::PendingArchive>,
    /// This device's witness key, if it is a witness of the transparency log (§21.8).
    #[serde(default)]
    witness: Option<crate::witness::WitnessKeyRecord>,
    /// Approval requests, incoming and outgoing.
    #[serde(default)]
    approvals: Vec<crate::approvals::ApprovalRecord>,
    /// Link offers this device made and has not completed.
    #[serde(default)]
    link_offers: Vec<crate::trust::LinkOfferRecord>,
    /// The link request this (new) device started and has not completed.
    #[serde(default)]
    new_link: Option<crate::trust::NewLinkRecord>,
    /// The firm's verification of this account (client) or of clients (staff).
    #[serde(default)]
    attest: crate::attest::AttestRecords,
}

/// A device's client.
pub struct Client {
    pub(crate) profile: Profile,
    pub(crate) identity: IdentityKeyPair,
    pub(crate) prekeys: PreKeySecrets,
    pub(crate) prekeys_rotated_ms: u64,
    pub(crate) relay: Option<RelayInfo>,
    pub(crate) account: Option<AccountId>,
    pub(crate) role: Option<Role>,
    pub(crate) sessions: HashMap<DeviceId, PeerSession>,
    pub(crate) contacts: BTreeMap<AccountId, Contact>,
    pub(crate) history: VecDeque<HistoryEntry>,
    pub(crate) seen: crate::receive::SeenIds,
    /// Messages held until their sender can be checked.
    pub(crate) held: Vec<crate::receive::HeldMessage>,
    /// Peer accounts with a split view.
    pub(crate) splits: crate::receive::Splits,
    /// Accounts whose sender check failed, with the time (ms since the Unix epoch) until
    /// which messages from them are held at once rather than spending more requests on a
    /// relay that just refused ([`SENDER_RECHECK_MS`]; cleared on a new connection).
    pub(crate) unverifiable: HashMap<AccountId, u64>,
    /// Messages held at most ([`MAX_HELD`]; lowered only by tests).
    pub(crate) max_held: usize,
    pub(crate) attachments: BTreeMap<MessageId, AttachmentDescriptor>,
    pub(crate) conn: Option<RelayConnection>,
    pub(crate) pending_receipts: BTreeMap<AccountId, Vec<MessageId>>,
    /// Received envelopes processed in memory, acknowledged after the next save.
    pub(crate) pending_acks: Vec<MessageId>,
    /// Roster chain, device-log heads and verified device sets.
    pub(crate) trust: crate::trust::TrustCache,
    /// Approval requests, incoming and outgoing.
    pub(crate) approvals: Vec<crate::approvals::ApprovalRecord>,
    /// Link offers made by this device.
    pub(crate) link_offers: Vec<crate::trust::LinkOfferRecord>,
    /// The firm's verification of this account (client) or of clients (staff).
    pub(crate) attest: crate::attest::AttestRecords,
    /// A link this (new) device started and has not completed.
    pub(crate) new_link: Option<crate::trust::NewDeviceLink>,
    /// Events raised by internal checks, handed out with the next result that carries
    /// events (or [`Client::take_events`]).
    pub(crate) events: Vec<Event>,
    /// Validity of approval requests this device initiates.
    pub(crate) approval_validity_ms: u64,
    /// This device's witness key (§21.8), if any.
    pub(crate) witness: Option<crate::witness::WitnessKeyRecord>,
    /// The last account alert shown (§21.3).
    pub(crate) alerts_seen: u64,
    /// Archive copies not yet handed to the firm's archive (§22).
    pub(crate) archive_queue: Vec<crate::archive::PendingArchive>,
    /// The archive device's store (set by `sealpost-archiver`).
    pub(crate) archive_sink: Option<crate::archive::ArchiveSink>,
    /// Archive copies received and not yet handed to the sink.
    pub(crate) archived: Vec<crate::archive::ArchivedMessage>,
}

impl Client {
    /// Create a new device profile in `home`: identity and prekeys, encrypted under the
    /// passphrase.
    pub fn init(home: &Path, passphrase: &str) -> Result<Self, ClientError> {
        let mut rng = OsRng;
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut prekeys = PreKeySecrets::new();
        prekeys.rotate_signed(&identity, &mut rng);
        prekeys.rotate_kem_last_resort(&identity, &mut rng);
        // The profile key comes from the passphrase; the first save happens inside create.
        let placeholder = StateFile {
            identity: Vec::new(),
            prekeys: Vec::new(),
            prekeys_rotated_ms: 0,
            relay: None,
            account: None,
            role: None,
            sessions: Vec::new(),
            contacts: Vec::new(),
            history: Vec::new(),
            seen: Vec::new(),
            seen_by_device: Vec::new(),
            held: Vec::new(),
            splits: Vec::new(),
            attachments: Vec::new(),
            roster: Vec::new(),
            roster_head: None,
            log_heads: Vec::new(),
            tlog_checkpoint: None,
            alerts_seen: 0,
            archive_queue: Vec::new(),
            witness: None,
            approvals: Vec::new(),
            link_offers: Vec::new(),
            new_link: None,
            attest: Default::default(),
        };
        let profile = Profile::create(home, passphrase, &placeholder, &mut rng)?;
        let client = Self {
            profile,
            identity,
            prekeys,
            prekeys_rotated_ms: now_ms(),
            relay: None,
            account: None,
            role: None,
            sessions: HashMap::new(),
            contacts: BTreeMap::new(),
            history: VecDeque::new(),
            seen: crate::receive::SeenIds::default(),
            held: Vec::new(),
            splits: crate::receive::Splits::default(),
            unverifiable: HashMap::new(),
            max_held: MAX_HELD,
            attachments: BTreeMap::new(),
            conn: None,
            pending_receipts: BTreeMap::new(),
            pending_acks: Vec::new(),
            trust: crate::trust::TrustCache::default(),
            approvals: Vec::new(),
            link_offers: Vec::new(),
            attest: Default::default(),
            new_link: None,
            events: Vec::new(),
            approval_validity_ms: crate::approvals::APPROVAL_VALIDITY_MS,
            witness: None,
            alerts_seen: 0,
            archive_queue: Vec::new(),
            archive_sink: None,
            archived: Vec::new(),
        };
        client.save()?;
        Ok(client)
    }

    /// Open the profile in `home`.
    pub fn open(home: &Path, passphrase: &str) -> Result<Self, ClientError> {
        let (profile, file): (Profile, StateFile) = Profile::open(home, passphrase)?;
        Self::restore(profile, file)
    }

    /// Forget everything held in memory and read the profile again from disk (keeping its
    /// lock; no passphrase needed), disconnected. For a long-running process whose work
    /// was interrupted half-way (`sealpost listen` after a forwarded command was cut off):
    /// only what was saved counts, as if the process had restarted; the relay delivers
    /// again whatever was not acknowledged, and nothing is acknowledged before it is saved.
    pub fn reload(&mut self) -> Result<(), ClientError> {
        self.disconnect();
        let (profile, file): (Profile, StateFile) = self.profile.reload()?;
        *self = Self::restore(profile, file)?;
        Ok(())
    }

    /// Whether a relay connection is open (it may still turn out to be closed at the next
    /// request).
    pub fn is_connected(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.quic().close_reason().is_none())
    }

    fn restore(profile: Profile, file: StateFile) -> Result<Self, ClientError> {
        let key = profile.key();
        let identity =
            IdentityKeyPair::from_pickle(&file.identity, key).map_err(StateError::from)?;
        let prekeys = PreKeySecrets::from_pickle(&file.prekeys, key).map_err(StateError::from)?;
        let mut sessions = HashMap::new();
        for r in &file.sessions {
            let session = Session::from_pickle(&r.pickle, key).map_err(StateError::from)?;
            let mut peer = PeerSession::new(r.account.clone(), session);
            for p in r
                .previous
                .iter()
                .take(crate::receive::MAX_PREVIOUS_SESSIONS)
            {
                peer.previous
                    .push(Session::from_pickle(p, key).map_err(StateError::from)?);
            }
            sessions.insert(r.device, peer);
        }
        Ok(Self {
            identity,
            prekeys,
            prekeys_rotated_ms: file.prekeys_rotated_ms,
            relay: file.relay,
            account: file.account,
            role: file.role,
            sessions,
            contacts: file
                .contacts
                .into_iter()
                .map(|c| {
                    (
                        c.account.clone(),
                        Contact {
                            refreshed_ms: 0,
                            ..c
                        },
                    )
                })
                .collect(),
            history: file.history.into_iter().collect(),
            seen: crate::receive::SeenIds::restore(file.seen_by_device, file.seen),
            held: file.held,
            splits: crate::receive::Splits::restore(file.splits),
            unverifiable: HashMap::new(),
            max_held: MAX_HELD,
            attachments: file.attachments.into_iter().collect(),
            conn: None,
            pending_receipts: BTreeMap::new(),
            pending_acks: Vec::new(),
            trust: crate::trust::TrustCache::restore(
                file.roster,
                file.roster_head,
                file.log_heads,
                file.tlog_checkpoint.as_deref(),
            ),
            approvals: file.approvals,
            link_offers: file.link_offers,
            new_link: file.new_link.map(crate::trust::NewDeviceLink::restored),
            attest: file.attest,
            events: Vec::new(),
            approval_validity_ms: crate::approvals::APPROVAL_VALIDITY_MS,
            witness: file.witness,
            alerts_seen: file.alerts_seen,
            archive_queue: file.archive_queue,
            archive_sink: None,
            archived: Vec::new(),
            profile,
        })
    }

    pub(crate) fn save(&self) -> Result<(), ClientError> {
        let mut rng = OsRng;
        let key = self.profile.key();
        let mut sessions = Vec::with_capacity(self.sessions.len());
        for (device, p) in &self.sessions {
            sessions.push(SessionRecord {
                device: *device,
                account: p.account.clone(),
                pickle: p.session.pickle(key, &mut rng).map_err(StateError::from)?,
                previous: p
                    .previous
                    .iter()
                    .map(|s| s.pickle(key, &mut rng).map(serde_bytes::ByteBuf::from))
                    .collect::<Result<_, _>>()
                    .map_err(StateError::from)?,
            });
        }
        let file = StateFile {
            identity: self
                .identity
                .pickle(key, &mut rng)
                .map_err(StateError::from)?,
            prekeys: self
                .prekeys
                .pickle(key, &mut rng)
                .map_err(StateError::from)?,
            prekeys_rotated_ms: self.prekeys_rotated_ms,
            relay: self.relay.clone(),
            account: self.account.clone(),
            role: self.role,
            sessions,
            contacts: self.contacts.values().cloned().collect(),
            history: self.history.iter().cloned().collect(),
            seen: self.seen.legacy(),
            seen_by_device: self.seen.pairs(),
            held: self.held.clone(),
            splits: self.splits.records(),
            attachments: self
                .attachments
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            roster: self.trust.roster_links(),
            roster_head: self.trust.roster_head,
            log_heads: self.trust.head_records(),
            tlog_checkpoint: self.trust.checkpoint.as_ref().map(|c| c.to_text()),
            alerts_seen: self.alerts_seen,
            archive_queue: self.archive_queue.clone(),
            witness: self.witness.clone(),
            approvals: self.approvals.clone(),
            link_offers: self.link_offers.clone(),
            new_link: self.new_link.as_ref().map(|l| l.record.clone()),
            attest: self.attest.clone(),
        };
        Ok(self.profile.save(&file, &mut rng)?)
    }

    /// This device's identity.
    pub fn identity(&self) -> &PublicIdentity {
        self.identity.public()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.identity.device_id()
    }

    /// The account, once enrolled.
    pub fn account(&self) -> Option<&AccountId> {
        self.account.as_ref()
    }

    /// The account's role, once enrolled.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// The relay, once enrolled.
    pub fn relay(&self) -> Option<&RelayInfo> {
        self.relay.as_ref()
    }

    /// Known contacts.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    /// Messages kept until their sender can be checked against a verified device log
    /// (checked again on every receive; at most [`MAX_HELD`]).
    pub fn held(&self) -> &[HeldMessage] {
        &self.held
    }

    /// For tests: hold at most `n` messages (at most [`MAX_HELD`]), so that the path of
    /// a full hold store (nothing committed, nothing acknowledged) can be reached.
    #[doc(hidden)]
    pub fn set_max_held_for_tests(&mut self, n: usize) {
        self.max_held = n.min(MAX_HELD);
    }

    /// Peer accounts with which the relay showed this device different device logs (a
    /// split view): sensitive kinds are refused across these pairs until the views agree.
    pub fn split_views(&self) -> Vec<SplitRecord> {
        self.splits.records()
    }

    /// The local history, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.iter()
    }

    pub(crate) fn me(&self) -> Result<AccountId, ClientError> {
        self.account.clone().ok_or(ClientError::NotEnrolled)
    }

    pub(crate) fn conn(&self) -> Result<&RelayConnection, ClientError> {
        self.conn.as_ref().ok_or(ClientError::NotConnected)
    }

    /// Enrol this device into `account` at `relay` with a one-time code, then publish
    /// prekeys. Stays connected.
    pub async fn enroll(
        &mut self,
        relay: RelayInfo,
        account: &AccountId,
        code: &str,
    ) -> Result<Role, ClientError> {
        if self.account.is_some() {
            return Err(ClientError::Invalid(
                "this device is already enrolled".into(),
            ));
        }
        let addr = relay.address()?;
        // The organisation fingerprint is pinned here, and only here (or when linking).
        relay.org()?;
        let conn = RelayConnection::connect(&addr).await?;
        check_relay_org(&conn, &relay).await?;
        let (_, role) = conn.enroll(&self.identity, account, code).await?;
        conn.authenticate(&self.identity).await?;
        self.relay = Some(relay);
        self.account = Some(account.clone());
        self.role = Some(role);
        self.conn = Some(conn);
        self.save()?;
        self.maintain_prekeys().await?;
        self.after_join().await?;
        Ok(role)
    }

    /// After enrolment or linking: verify the roster (if any) and this account's log,
    /// so their heads are pinned from the start.
    pub(crate) async fn after_join(&mut self) -> Result<(), ClientError> {
        self.refresh_roster(true).await?;
        let me = self.me()?;
        self.verified_set(&me, true).await?;
        self.save()
    }

    /// Events raised by checks since they were last taken (untrusted devices, refused
    /// rosters or logs, devices added). Results that carry events ([`SendReport`],
    /// [`Client::receive`]) include them already.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Connect and authenticate: up to [`MAX_CONNECT_ATTEMPTS`] attempts, separated by
    /// pauses of [`Backoff::connect`] (exponential with jitter, 200 ms to 5 s).
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        let relay = self
            .relay
            .clone()
            .ok_or(ClientError::NotEnrolled)?
            .address()?;
        let mut pauses = Backoff::connect();
        let mut last = None;
        for attempt in 0..MAX_CONNECT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(pauses.next_pause()).await;
            }
            match RelayConnection::connect(&relay).await {
                Ok(conn) => match conn.authenticate(&self.identity).await {
                    Ok((_, role)) => {
                        self.role = Some(role);
                        // What was processed on an earlier connection and not yet
                        // acknowledged is made durable now; the relay delivers it again on
                        // this connection and it is acknowledged then, as a duplicate.
                        if !self.pending_acks.is_empty() {
                            self.save()?;
                            self.pending_acks.clear();
                        }
                        // A new connection may answer what the last one refused.
                        self.unverifiable.clear();
                        self.conn = Some(conn);
                        // A new connection may reach a different (or restored) relay:
                        // verify every device set again before it is used.
                        self.trust.clear_sets();
                        self.maintain_prekeys().await?;
                        // Device-log changes pushed while this device was offline were
                        // lost with the push: catch up on them now.
                        self.catch_up_logs().await;
                        // And alerts about this account told while it was offline.
                        self.catch_up_alerts().await;
                        return Ok(());
                    }
                    Err(
                        e @ NetError::Refused {
                            code: ErrorCode::AuthFailed,
                            ..
                        },
                    ) => return Err(e.into()),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(ClientError::NotConnected, ClientError::Net))
    }

    /// Drop the connection.
    pub fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close();
        }
    }

    /// Keep prekeys stocked and rotate the signed ones on schedule.
    pub async fn maintain_prekeys(&mut self) -> Result<Option<Event>, ClientError> {
        let mut rng = OsRng;
        if self.conn.is_none() {
            return Err(ClientError::NotConnected);
        }
        let rotate = now_ms().saturating_sub(self.prekeys_rotated_ms)
            > SIGNED_PREKEY_ROTATION.as_millis() as u64
            || self.prekeys_rotated_ms == 0;
        let (signed, last_resort) = if rotate {
            (
                Some(self.prekeys.rotate_signed(&self.identity, &mut rng)),
                Some(
                    self.prekeys
                        .rotate_kem_last_resort(&self.identity, &mut rng),
                ),
            )
        } else {
            (
                self.prekeys.current_signed().cloned(),
                self.prekeys.current_kem_last_resort().cloned(),
            )
        };
        if rotate {
            // Secrets are durable before their public halves are published: a crash in
            // between must not leave the relay handing out keys this device lost.
            self.prekeys_rotated_ms = now_ms();
            self.save()?;
        }
        let conn = self.conn.as_ref().ok_or(ClientError::NotConnected)?;
        let (ot, kem, _) = conn
            .upload_prekeys(signed, vec![], vec![], last_resort)
            .await?;
        let want_ot = TARGET_ONE_TIME_PREKEYS.saturating_sub(ot) as usize;
        let want_kem = TARGET_KEM_PREKEYS.saturating_sub(kem) as usize;
        if want_ot == 0 && want_kem == 0 && !rotate {
            return Ok(None);
        }
        let one_time = self
            .prekeys
            .generate_one_time(&self.identity, want_ot.min(100), &mut rng);
        let kem_keys =
            self.prekeys
                .generate_kem_one_time(&self.identity, want_kem.min(100), &mut rng);
        // Persist the secrets before the public halves are published.
        self.save()?;
        let (ot, kem, _) = conn.upload_prekeys(None, one_time, kem_keys, None).await?;
        Ok(Some(Event::PreKeysPublished {
            one_time: ot,
            kem_one_time: kem,
        }))
    }

    /// Accounts this account may reach, with their roles.
    pub async fn reachable(&mut self) -> Result<Vec<(AccountId, Role)>, ClientError> {
        let answer = self.conn()?.request(FrameBody::ListContacts).await?;
        let FrameBody::Contacts { contacts } = answer else {
            return Err(ClientError::Protocol(
                "unexpected answer to list_contacts".into(),
            ));
        };
        let list: Vec<(AccountId, Role)> = contacts
            .into_inner()
            .into_iter()
            .map(|c| (c.account, c.role))
            .collect();
        for (a, r) in &list {
            self.contacts
                .entry(a.clone())
                .or_insert_with(|| Contact {
                    account: a.clone(),
                    role: Some(*r),
                    devices: BTreeMap::new(),
                    verified: None,
                    refreshed_ms: 0,
                })
                .role = Some(*r);
        }
        self.save()?;
        Ok(list)
    }

    /// Make sure every device of `account` in its verified log has a session. A bundle for
    /// a device the log does not list is refused and reported, never used.
    pub(crate) async fn ensure_sessions(&mut self, account: &AccountId) -> Result<(), ClientError> {
        let missing: Vec<DeviceId> = self
            .contacts
            .get(account)
            .map(|c| {
                c.devices
                    .keys()
                    .filter(|d| !self.sessions.contains_key(*d))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        if missing.is_empty() {
            return Ok(());
        }
        let bundles = self.conn()?.fetch_bundles(account).await?;
        let mut rng = OsRng;
        let me = self.device_id();
        for b in bundles {
            let id = b.identity.device_id();
            let trusted = self
                .contacts
                .get(account)
                .and_then(|c| c.devices.get(&id))
                .is_some_and(|k| k.identity == b.identity);
            if !trusted {
                if id != me {
                    self.events.push(Event::UntrustedDevice {
                        account: account.clone(),
                        device: id,
                        fingerprint: Some(b.identity.fingerprint().to_string()),
                        seen_in: "bundle".into(),
                    });
                }
                continue;
            }
            if !missing.contains(&id) {
                continue;
            }
            // The directory lists this identity for the account (device ids derive from keys).
            let session =
                sealpost_protocol::initiate(&self.identity, &b, &mut rng).map_err(proto)?;
            self.sessions
                .insert(id, PeerSession::new(account.clone(), session));
        }
        Ok(())
    }

    /// Seal `content` for every active device of `to` (from its verified log) and a sync
    /// copy for this account's other active devices; save; hand everything to the relay.
    pub(crate) async fn fan_out(
        &mut self,
        to: &AccountId,
        content: Content,
        record: bool,
    ) -> Result<SendReport, ClientError> {
        self.fan_out_as(to, content, record, None, true).await
    }

    /// [`Client::fan_out`], the recipient copies labelled `kind` instead of the kind the
    /// content requires (only adversarial tests relabel). `check_local`: refuse here what
    /// the relay would refuse (only adversarial tests skip it, to reach the relay).
    pub(crate) async fn fan_out_as(
        &mut self,
        to: &AccountId,
        content: Content,
        record: bool,
        relabel: Option<sealpost_protocol::EnvelopeKind>,
        check_local: bool,
    ) -> Result<SendReport, ClientError> {
        let me = self.me()?;
        let mut events = self.refresh_devices(to, false).await?;
        if to != &me {
            events.extend(self.refresh_devices(&me, false).await?);
        }
        // The relay refuses sensitive kinds from a device on probation or a frozen
        // account; refuse them here first, with the reason.
        if check_local {
            let kind = relabel.unwrap_or_else(|| content.envelope_kind());
            self.check_may_send(kind).await?;
            if kind.is_sensitive() {
                if let Some(split) = self.splits.get(to) {
                    return Err(ClientError::NotAllowed(format!(
                        "the relay showed this device and {to} different device logs (a split \
                         view: {}); {} messages to {to} are refused until the views agree",
                        split.reason,
                        kind.name()
                    )));
                }
            }
        }
        self.ensure_sessions(to).await?;
        if to != &me {
            self.ensure_sessions(&me).await?;
        }
        let mut rng = OsRng;
        let message_id = MessageId::random(&mut rng);
        let sent_ms = now_ms();
        let kind = relabel.unwrap_or_else(|| content.envelope_kind());
        // The firm's archive gets its copy first (§22): sealed now, saved with the rest,
        // handed over before the others leave; under `refuse`, nothing leaves without it.
        let archive = self
            .prepare_archive_copy(to, message_id, sent_ms, &content)
            .await?;
        let targets: Vec<DeviceId> = self
            .contacts
            .get(to)
            .map(|c| c.devices.keys().copied().collect())
            .unwrap_or_default();
        if targets.is_empty() {
            return Err(ClientError::NoDevices(to.clone()));
        }
        // Receipts and approval traffic get no sync copies (approvals are between the
        // initiator's account and each approver, §19.5).
        let no_sync = matches!(
            content,
            Content::Receipt { .. }
                | Content::ApprovalRequest { .. }
                | Content::ApprovalResponse { .. }
        );
        let own: Vec<DeviceId> = if to != &me && !no_sync {
            self.contacts
                .get(&me)
                .map(|c| c.devices.keys().copied().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let plain = Message {
            from: me.clone(),
            sent_ms,
            content: content.clone(),
            views: Some(self.views_for(to)),
        }
        .encode()
        .map_err(proto)?;
        let sync_plain = Message {
            from: me.clone(),
            sent_ms,
            content: Content::Sync {
                to: to.clone(),
                content: Box::new(content.clone()),
            },
            views: Some(self.views_for(&me)),
        }
        .encode()
        .map_err(proto)?;
        let mut envelopes: Vec<Envelope> = Vec::new();
        // How many of `envelopes` are recipient copies (they come first).
        let mut recipient_copies = 0;
        let sender = self.device_id();
        for (devices, plaintext, k) in [
            (&targets, &plain, kind),
            (&own, &sync_plain, sealpost_protocol::EnvelopeKind::Sync),
        ] {
            if k == sealpost_protocol::EnvelopeKind::Sync {
                recipient_copies = envelopes.len();
            }
            for d in devices.iter() {
                let Some(peer) = self.sessions.get_mut(d) else {
                    continue;
                };
                let header = RoutingHeader {
                    message_id,
                    ..RoutingHeader::new(sender, *d, k, sent_ms, &mut rng)
                };
                envelopes.push(
                    peer.session
                        .seal(header, plaintext, &mut rng)
                        .map_err(proto)?,
                );
            }
        }
        if record {
            if let Some(entry) = Self::entry_for(message_id, Direction::Out, to, &content, sent_ms)
            {
                self.push_history(entry);
            }
        }
        // The ratchet's nonce rule: state is durable before any envelope leaves.
        self.save()?;
        // Under `refuse` the archive's copy is accepted before anything else leaves; under
        // `queue` it is durable in the queue already and goes beside the others.
        let (first, beside) = match archive {
            Some(a) if a.goes_first() => (Some(a), None),
            other => (None, other),
        };
        if let Err(e) = self.deliver_archive_copy(first).await {
            // Nothing was sent: the history does not show it as sent.
            self.history.retain(|h| h.id != message_id);
            let _ = self.save();
            return Err(e);
        }
        let conn = self.conn()?;
        let beside_envelope = beside.as_ref().and_then(|a| a.envelope());
        let archive_send = async {
            match beside_envelope {
                Some(e) => Some(conn.send_envelope(e).await),
                None => None,
            }
        };
        let sends = envelopes.into_iter().map(|e| conn.send_envelope(e));
        let (mut results, archived) =
            futures_util::future::join(futures_util::future::join_all(sends), archive_send).await;
        if let Some(a) = beside {
            let r = match archived {
                Some(r) => r.map(|_| ()).map_err(ClientError::from),
                None => Ok(()),
            };
            // `queue`: never an error; a copy the relay did not take stays queued.
            let _ = self.finish_archive_copy(a, r);
        }
        // Sent if at least one recipient copy was accepted (sync copies alone, to this
        // account's own devices, do not make a message sent: a recipient copy the relay
        // refuses, such as an instruction from a device on probation, is the error).
        let own_results = results.split_off(recipient_copies.min(results.len()));
        let delivered = results.iter().filter(|r| r.is_ok()).count();
        let first_error = results.into_iter().chain(own_results).find_map(|r| r.err());
        if let Some(e) = first_error {
            if delivered == 0 {
                return Err(e.into());
            }
        }
        events.extend(self.take_events());
        Ok(SendReport {
            message_id,
            to: to.clone(),
            devices: targets.len(),
            own_devices: own.len(),
            events,
        })
    }

    pub(crate) fn entry_for(
        id: MessageId,
        direction: Direction,
        peer: &AccountId,
        content: &Content,
        sent_ms: u64,
    ) -> Option<HistoryEntry> {
        let (kind, title, body) = match content {
            Content::Text { body } => (EntryKind::Text, None, body.as_str().to_owned()),
            Content::Instruction { body, .. } => {
                (EntryKind::Instruction, None, body.as_str().to_owned())
            }
            Content::Notice { content, .. } => {
                // What the notice says; whether it is authentic is recorded beside it
                // (`HistoryEntry::notice`) by the caller.
                match sealpost_protocol::content::NoticeText::decode(content) {
                    Ok(text) => (
                        EntryKind::Notice,
                        Some(text.title.as_str().to_owned()),
                        text.body.as_str().to_owned(),
                    ),
                    Err(e) => (
                        EntryKind::Notice,
                        Some("(undecodable notice)".to_owned()),
                        format!("the notice content does not decode: {e}"),
                    ),
                }
            }
            Content::Attachment {
                descriptor,
                caption,
            } => (
                EntryKind::Text,
                None,
                if caption.as_str().is_empty() {
                    format!(
                        "[file] {} ({} bytes)",
                        descriptor.file_name.as_str(),
                        descriptor.size
                    )
                } else {
                    format!(
                        "{} [file] {} ({} bytes)",
                        caption.as_str(),
                        descriptor.file_name.as_str(),
                        descriptor.size
                    )
                },
            ),
            _ => return None,
        };
        let attachment = match content {
            Content::Attachment { descriptor, .. } => Some(AttachmentInfo::of(descriptor)),
            _ => None,
        };
        let instruction = match content {
            Content::Instruction { category, .. } => Some(*category),
            _ => None,
        };
        Some(HistoryEntry {
            id,
            direction,
            peer: peer.clone(),
            kind,
            title,
            body,
            sent_ms,
            received_ms: now_ms(),
            delivered: false,
            read: false,
            seen_locally: direction == Direction::Out,
            attachment,
            notice: None,
            instruction,
            sender_revoked_ms: None,
        })
    }

    pub(crate) fn push_history(&mut self, entry: HistoryEntry) {
        if self.history.len() >= MAX_HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.attachments.remove(&old.id);
            }
        }
        self.history.push_back(entry);
    }

    /// Send a chat message to `to`.
    pub async fn send_text(
        &mut self,
        to: &AccountId,
        text: &str,
    ) -> Result<SendReport, ClientError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(ClientError::Invalid(format!(
                "messages are at most {MAX_TEXT_LEN} bytes"
            )));
        }
        self.fan_out(
            to,
            Content::Text {
                body: BoundedString::truncating(text),
            },
            true,
        )
        .await
    }

    /// Encrypt the file at `path` under a fresh key, upload it as a relay blob (on its own
    /// QUIC stream, in chunks), then send its descriptor to `to` end to end.
    /// `progress(done, total)` counts plaintext bytes uploaded.
    pub async fn send_file(
        &mut self,
        to: &AccountId,
        path: &Path,
        caption: &str,
        progress: impl FnMut(u64, u64),
    ) -> Result<SendReport, ClientError> {
        if caption.len() > MAX_TEXT_LEN {
            return Err(ClientError::Invalid(format!(
                "captions are at most {MAX_TEXT_LEN} bytes"
            )));
        }
        let media_type = media_type_for(path);
        let descriptor =
            crate::attachments::upload_file(self.conn()?, path, media_type, &mut OsRng, progress)
                .await
                .map_err(attachment_error)?;
        let content = Content::Attachment {
            descriptor: descriptor.clone(),
            caption: BoundedString::truncating(caption),
        };
        let report = self.fan_out(to, content, true).await?;
        self.attachments.insert(report.message_id, descriptor);
        self.save()?;
        Ok(report)
    }

    /// Download the attachment of message `id` to `dest`, verifying it chunk by chunk and
    /// as a whole; `dest` appears only once everything checked out.
    pub async fn download_attachment(
        &mut self,
        id: &MessageId,
        dest: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<AttachmentInfo, ClientError> {
        let descriptor = self.attachments.get(id).cloned().ok_or_else(|| {
            ClientError::Invalid(format!("no attachment with message id {}", id.to_hex()))
        })?;
        crate::attachments::download_to_file(self.conn()?, &descriptor, dest, progress)
            .await
            .map_err(attachment_error)?;
        Ok(AttachmentInfo::of(&descriptor))
    }

    /// The attachment of message `id`, if the history has one.
    pub fn attachment(&self, id: &MessageId) -> Option<AttachmentInfo> {
        self.attachments.get(id).map(AttachmentInfo::of)
    }

    /// Send read receipts for every received message not yet marked read; marks them.
    pub async fn mark_read(&mut self) -> Result<usize, ClientError> {
        let mut by_peer: BTreeMap<AccountId, Vec<MessageId>> = BTreeMap::new();
        for e in self
            .history
            .iter_mut()
            .filter(|e| e.direction == Direction::In && !e.seen_locally)
        {
            e.seen_locally = true;
            by_peer.entry(e.peer.clone()).or_default().push(e.id);
        }
        let mut n = 0;
        for (peer, ids) in by_peer {
            n += ids.len();
            self.send_receipts(&peer, ReceiptKind::Read, &ids).await?;
        }
        self.save()?;
        Ok(n)
    }

    /// Security desk (`sealpost security watch`): one page of the stored security events
    /// after `since`, and whether more follow. Once a page says none follow, the relay
    /// pushes each new event on this connection; take them with
    /// [`Client::next_security_event`]. Refused unless this device is a device of staff
    /// whose role in the verified roster is `security`.
    pub async fn security_watch(
        &mut self,
        since: u64,
    ) -> Result<(Vec<sealpost_protocol::wire::SecurityEventInfo>, bool), ClientError> {
        Ok(self.conn()?.security_watch(since).await?)
    }

    /// The next security event the relay pushes after [`Client::security_watch`];
    /// `None` when the connection is gone. Other pushes on this connection are left
    /// to the relay's redelivery (a watching profile does not read its mailbox here).
    pub async fn next_security_event(
        &self,
    ) -> Result<Option<sealpost_protocol::wire::SecurityEventInfo>, ClientError> {
        let conn = self.conn()?;
        loop {
            match conn.next_push().await {
                None => return Ok(None),
                Some(FrameBody::SecurityEvent { event }) => return Ok(Some(event)),
                Some(_) => continue,
            }
        }
    }

    /// Process pushes from the relay. With `until_empty`, returns once the mailbox is
    /// drained (or after `max_wait`); otherwise returns after `max_wait` of listening.
    /// Delivery receipts for what arrived are sent before returning.
    pub async fn receive(
        &mut self,
        until_empty: bool,
        max_wait: Duration,
    ) -> Result<Vec<Event>, ClientError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        // Messages held because their sender could not be checked: the relay may answer
        // now.
        let mut events = self.recheck_held().await?;
        let mut drain = if until_empty {
            Some(self.conn()?.start_request(FrameBody::Drain).await?)
        } else {
            None
        };
        let mut drained = false;
        loop {
            let next = async {
                match &mut drain {
                    Some(rx) if !drained => tokio::select! {
                        biased;
                        p = self.conn.as_ref()?.next_push() => p.map(Some),
                        _ = rx => Some(None),
                    },
                    _ => self.conn.as_ref()?.next_push().await.map(Some),
                }
            };
            // After the drain answer, only what is already queued is taken.
            let wait_until = if drained {
                tokio::time::Instant::now()
            } else {
                deadline
            };
            let push = match tokio::time::timeout_at(wait_until, next).await {
                Err(_) => break,
                Ok(Some(None)) => {
                    drained = true;
                    continue;
                }
                Ok(Some(Some(p))) => Some(p),
                Ok(None) => None,
            };
            let Some(push) = push else {
                // Keep what was processed; the relay redelivers the unacknowledged rest.
                self.save()?;
                self.pending_acks.clear();
                self.conn = None;
                return Err(ClientError::NotConnected);
            };
            match push {
                FrameBody::Deliver { envelope } => {
                    let evs = self.handle_envelope(envelope).await?;
                    events.extend(evs);
                    if self.pending_acks.len() >= MAX_UNSAVED_RECEIVED
                        || self.conn()?.queued_pushes() == 0
                    {
                        self.commit_received().await?;
                    }
                }
                FrameBody::PreKeyStock { low: true, .. } => {
                    if let Some(e) = self.maintain_prekeys().await? {
                        events.push(e);
                    }
                }
                FrameBody::AccountAlert { event } => {
                    if let Some(ev) = self.alert_event(event) {
                        events.push(ev);
                        self.save()?;
                    }
                }
                FrameBody::DeviceLogChanged { account, .. } => {
                    // Verify the log again now, under the newest roster (its entry may be
                    // dated under a version this device has not fetched yet, and
                    // cooling-off windows come from the roster); a refusal is reported
                    // (`TrustRefused`), not fatal.
                    let _ = self.refresh_roster(true).await;
                    match self.refresh_devices(&account, true).await {
                        Ok(evs) => events.extend(evs),
                        Err(e) => events.push(Event::TrustRefused {
                            subject: account.to_string(),
                            reason: e.to_string(),
                        }),
                    }
                }
                _ => {}
            }
        }
        self.commit_received().await?;
        // A message held during this pass may be checkable now (its sender's log was
        // verified for a later message).
        events.extend(self.recheck_held().await?);
        self.flush_receipts().await;
        // Operations whose quorum is in but whose carrying out failed for a transient
        // reason: the relay may answer now.
        events.extend(self.retry_approved().await);
        // Archive copies waiting for the firm's archive (§22).
        self.flush_archive_queue().await;
        events.extend(self.take_events());
        Ok(events)
    }

    /// Send the delivery receipts queued by this receive pass. Best effort: what was
    /// received is already saved and acknowledged, so a receipt the relay refuses (rate
    /// limited, connection lost) does not turn the pass into an error that would hide
    /// the messages it showed; it is logged and not sent.
    async fn flush_receipts(&mut self) {
        let pending = std::mem::take(&mut self.pending_receipts);
        for (peer, ids) in pending {
            if let Err(e) = self
                .send_receipts(&peer, ReceiptKind::Delivered, &ids)
                .await
            {
                tracing::warn!(peer = %peer, error = %e, "delivery receipts not sent");
            }
        }
    }

    /// Send `kind` receipts for `ids` to `peer`, at most [`MAX_RECEIPT_IDS`] per receipt.
    /// A peer this account may not write to (a staff member who sent a notice to all
    /// clients without being assigned to this one) gets none: the relay refuses the
    /// directory request or the send, and that is not an error of the receive.
    async fn send_receipts(
        &mut self,
        peer: &AccountId,
        kind: ReceiptKind,
        ids: &[MessageId],
    ) -> Result<(), ClientError> {
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            let ids = BoundedVec::new(chunk.to_vec()).map_err(proto)?;
            let sent = self
                .fan_out(
                    peer,
                    Content::Receipt {
                        kind,
                        message_ids: ids,
                    },
                    false,
                )
                .await;
            match sent {
                Ok(_) => {}
                Err(ClientError::Net(NetError::Refused {
                    code: ErrorCode::Forbidden,
                    message,
                    ..
                })) => {
                    tracing::debug!(peer = %peer, reason = %message, "receipt not sent: not reachable");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The views this device puts in a message to `to` (docs/PROTOCOL.md §18.7): its
    /// verified heads of its own account's log and of `to`'s, and whether it records a
    /// split view with `to`.
    pub(crate) fn views_for(&self, to: &AccountId) -> LogViews {
        let mine = self.account.as_ref().and_then(|m| self.trust.head(m));
        crate::receive::views_for(
            mine,
            self.trust.head(to),
            self.splits.contains(to),
            crate::transparency::view_of(self.trust.checkpoint.as_ref().map(|c| &c.checkpoint)),
        )
    }

    /// Commit the session state a decryption produced: the advanced session, or the new
    /// session together with the prekeys (and base key) it used.
    fn commit_staged(&mut self, sender: DeviceId, account: &AccountId, staged: Staged) {
        crate::receive::commit_session(
            &mut self.sessions,
            &mut self.prekeys,
            sender,
            account,
            staged,
        );
    }

    /// One delivered envelope (docs/PROTOCOL.md §18.3): the core decides
    /// ([`crate::receive`]), this shell fetches what the decision needs, commits exactly
    /// what the verdict says and queues the acknowledgement, sent after the next save.
    async fn handle_envelope(&mut self, envelope: Envelope) -> Result<Vec<Event>, ClientError> {
        let id = envelope.header.message_id;
        let device = envelope.header.sender;
        let keys = Keys {
            identity: &self.identity,
            prekeys: &self.prekeys,
            sessions: &self.sessions,
        };
        let a = match crate::receive::open(&envelope, &keys, &self.seen) {
            Opened::Duplicate => {
                // Already processed: acknowledge again only if that is saved already;
                // otherwise the next save does.
                if !self.pending_acks.contains(&id) {
                    self.conn()?.ack(id).await?;
                }
                return Ok(Vec::new());
            }
            Opened::Refused(reason) => {
                // Did not authenticate: final, and nothing is remembered.
                self.pending_acks.push(id);
                return Ok(vec![Event::Rejected {
                    device,
                    message_id: id,
                    reason,
                    alarm: false,
                }]);
            }
            Opened::Authentic(a) => *a,
        };
        let (judgement, mut events) = self.decide(a.sender, a.header_kind, &a.message).await;
        let judgement = match judgement {
            Judgement::Show => match self.prepare(&a.message).await {
                Ok(()) => Judgement::Show,
                Err(reason) => Judgement::Hold(reason),
            },
            other => other,
        };
        let from = a.message.from.clone();
        match judgement {
            Judgement::Show | Judgement::ShowFromRevoked { .. } => {
                let revoked = match judgement {
                    Judgement::ShowFromRevoked { revoked_ms } => Some(revoked_ms),
                    _ => None,
                };
                self.commit_staged(a.sender, &from, a.staged);
                self.seen.insert(a.sender, a.id);
                let evs = self.show(id, a.sender, a.message, revoked).await;
                events.extend(evs);
                self.pending_acks.push(id);
            }
            Judgement::Hold(reason) => {
                if self.held.len() >= self.max_held {
                    // Nothing committed, no acknowledgement: the relay keeps it.
                    events.push(Event::HoldFull {
                        device,
                        message_id: id,
                        max: self.max_held,
                    });
                    return Ok(events);
                }
                self.commit_staged(a.sender, &from, a.staged);
                self.seen.insert(a.sender, a.id);
                self.held.push(HeldMessage {
                    id,
                    sender: a.sender,
                    header_kind: a.header_kind as u16,
                    message: a.message,
                    held_ms: now_ms(),
                    reason: reason.clone(),
                });
                events.push(Event::Held {
                    device,
                    message_id: id,
                    from,
                    reason,
                });
                self.pending_acks.push(id);
            }
            Judgement::Refuse {
                reason,
                alarm,
                not_active,
            } => {
                // The ratchet advance of an existing session is kept (the message was
                // authentic); a new session is discarded without consuming its prekeys.
                if let Staged::Advanced(..) = &a.staged {
                    self.commit_staged(a.sender, &from, a.staged);
                }
                if not_active {
                    self.report_untrusted(&from, device, None, "message", &mut events);
                }
                self.seen.insert(a.sender, a.id);
                self.pending_acks.push(id);
                events.push(Event::Rejected {
                    device,
                    message_id: id,
                    reason,
                    alarm,
                });
            }
        }
        Ok(events)
    }

    /// Get what the core needs to judge an authentic message (the sender account's
    /// verified device set, fresh heads where the views differ) and judge it. A failure
    /// to get them is a hold, never a verdict.
    async fn decide(
        &mut self,
        sender: DeviceId,
        header_kind: EnvelopeKind,
        message: &Message,
    ) -> (Judgement, Vec<Event>) {
        let mut events = Vec::new();
        let Some(me) = self.account.clone() else {
            return (
                Judgement::Hold("this device is not enrolled".into()),
                events,
            );
        };
        let from = message.from.clone();
        let now = now_ms();
        if self
            .unverifiable
            .get(&from)
            .is_some_and(|until| now < *until)
        {
            return (
                Judgement::Hold(format!(
                    "the device log of {from} could not be verified a moment ago; checked \
                     again shortly"
                )),
                events,
            );
        }
        match self.check_sender(&from, sender).await {
            Ok(evs) => {
                self.unverifiable.remove(&from);
                events.extend(evs);
            }
            Err(reason) => {
                self.unverifiable.retain(|_, until| now < *until);
                if self.unverifiable.len() < MAX_HELD {
                    self.unverifiable
                        .insert(from, now.saturating_add(SENDER_RECHECK_MS));
                }
                return (Judgement::Hold(reason), events);
            }
        }
        // Only a device the verified log lists may speak for the views of its account.
        let listed = self
            .trust
            .set(&from)
            .is_some_and(|s| s.device(&sender).is_some());
        if listed {
            if let Err(reason) = self.check_views(&from, &me, message, &mut events).await {
                return (Judgement::Hold(reason), events);
            }
        }
        let judgement = crate::receive::judge(
            &me,
            sender,
            header_kind,
            message,
            self.trust.set(&from),
            self.splits.contains(&from),
            now_ms(),
        );
        (judgement, events)
    }

    /// Compare the views a message from `from` carries with this device's (§18.7),
    /// refreshing a log the sender claims to be ahead on first; record (and report) a
    /// split view, or clear it when both views agree. `Err`: a refresh needed to decide
    /// failed (the message waits).
    async fn check_views(
        &mut self,
        from: &AccountId,
        me: &AccountId,
        message: &Message,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        let views = message.views.as_ref();
        let mut check = compare_views(
            from,
            me,
            views,
            self.trust.head(from),
            self.trust.head(me),
            false,
        );
        if let ViewCheck::Behind(accounts) = &check {
            for account in accounts.clone() {
                match self.refresh_devices(&account, true).await {
                    Ok(evs) => events.extend(evs),
                    Err(e) => {
                        return Err(format!(
                            "cannot fetch the device log of {account} to compare it with the \
                             sender's view: {e}"
                        ))
                    }
                }
            }
            check = compare_views(
                from,
                me,
                views,
                self.trust.head(from),
                self.trust.head(me),
                true,
            );
        }
        // Then the transparency log (§21.7): the sender's checkpoint must be consistent
        // with this device's. A split is cleared only when both agree.
        let split = match check {
            ViewCheck::Split(reason) => Some((reason, false)),
            check => match self
                .compare_checkpoint(views.and_then(|v| v.checkpoint.as_ref()))
                .await?
            {
                Some(reason) => Some((reason, false)),
                None if check == ViewCheck::Agree => {
                    self.splits.clear(from);
                    None
                }
                None => views.filter(|v| v.split).map(|_| {
                    (
                        format!(
                            "a device of {from} reports that the relay showed it other device \
                             logs than it showed this device"
                        ),
                        true,
                    )
                }),
            },
        };
        if let Some((reason, reported_by_peer)) = split {
            let new = self.splits.record(SplitRecord {
                account: from.clone(),
                detected_ms: now_ms(),
                reason: reason.clone(),
            });
            if new {
                events.push(Event::SplitView {
                    account: from.clone(),
                    reason,
                    reported_by_peer,
                });
            }
        }
        Ok(())
    }

    /// Before committing a message to be shown: fetch what showing it verifies against
    /// (the roster a notice or an approval request names), so that no fetch (and no save)
    /// happens between the commit and the history entry. `Err`: it could not be fetched
    /// for a transient reason (the message waits).
    async fn prepare(&mut self, message: &Message) -> Result<(), String> {
        let needed = match &message.content {
            Content::Notice { notice, .. } => notice.header.roster_version,
            Content::ApprovalRequest { bundle, .. } => bundle.request.roster_version,
            _ => return Ok(()),
        };
        let pinned = self.relay.as_ref().and_then(|r| r.org().ok()).flatten();
        let stale = self
            .trust
            .chain()
            .is_none_or(|c| c.head().version() < needed);
        if pinned.is_none() || !stale {
            return Ok(());
        }
        match self.refresh_roster(true).await {
            Err(e @ (ClientError::Net(_) | ClientError::NotConnected)) => {
                Err(format!("the roster could not be fetched: {e}"))
            }
            // Verification failures are the notice's or request's verdict.
            _ => Ok(()),
        }
    }

    /// Check the held messages again (the relay may answer now): show, refuse or keep
    /// each. They were acknowledged when held; each stays in `held` until it is shown or
    /// refused, so a save in between never loses one.
    pub(crate) async fn recheck_held(&mut self) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        if self.held.is_empty() || self.conn.is_none() {
            return Ok(events);
        }
        let keys: Vec<(DeviceId, MessageId)> = self.held.iter().map(|h| (h.sender, h.id)).collect();
        let mut changed = false;
        for (sender, id) in keys {
            let Some(h) = self
                .held
                .iter()
                .find(|h| h.sender == sender && h.id == id)
                .cloned()
            else {
                continue;
            };
            let judgement = match EnvelopeKind::try_from(h.header_kind) {
                Ok(kind) => {
                    let (j, evs) = self.decide(sender, kind, &h.message).await;
                    events.extend(evs);
                    match j {
                        Judgement::Show => match self.prepare(&h.message).await {
                            Ok(()) => Judgement::Show,
                            Err(reason) => Judgement::Hold(reason),
                        },
                        other => other,
                    }
                }
                Err(e) => Judgement::Refuse {
                    reason: format!("held with an unknown kind: {e}"),
                    alarm: false,
                    not_active: false,
                },
            };
            match judgement {
                Judgement::Hold(reason) => {
                    if let Some(k) = self
                        .held
                        .iter_mut()
                        .find(|k| k.sender == sender && k.id == id)
                    {
                        k.reason = reason;
                    }
                }
                Judgement::Show | Judgement::ShowFromRevoked { .. } => {
                    let revoked = match judgement {
                        Judgement::ShowFromRevoked { revoked_ms } => Some(revoked_ms),
                        _ => None,
                    };
                    changed = true;
                    self.held.retain(|k| !(k.sender == sender && k.id == id));
                    let evs = self.show(id, sender, h.message, revoked).await;
                    events.extend(evs);
                }
                Judgement::Refuse {
                    reason,
                    alarm,
                    not_active,
                } => {
                    changed = true;
                    self.held.retain(|k| !(k.sender == sender && k.id == id));
                    if not_active {
                        // Its session was committed when it was held: nothing from a
                        // device the log does not list is kept.
                        if self
                            .sessions
                            .get(&sender)
                            .is_some_and(|p| p.account == h.message.from)
                        {
                            self.sessions.remove(&sender);
                        }
                        self.report_untrusted(
                            &h.message.from,
                            sender,
                            None,
                            "message",
                            &mut events,
                        );
                    }
                    events.push(Event::Rejected {
                        device: sender,
                        message_id: id,
                        reason,
                        alarm,
                    });
                }
            }
        }
        if changed {
            self.save()?;
        }
        Ok(events)
    }

    /// Act on a message judged to be shown, once its state is committed.
    async fn show(
        &mut self,
        id: MessageId,
        sender: DeviceId,
        message: Message,
        revoked: Option<u64>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        match message.content {
            Content::Archive { to, content } => {
                if !self.is_archive_device() {
                    // Perhaps named by a roster version this device has not fetched yet.
                    let _ = self.refresh_roster(true).await;
                }
                if !self.is_archive_device() {
                    events.push(Event::Rejected {
                        device: sender,
                        message_id: id,
                        reason: "an archive copy, and this device is not the firm's archive".into(),
                        alarm: false,
                    });
                    return events;
                }
                let original = Message {
                    from: message.from.clone(),
                    sent_ms: message.sent_ms,
                    content: (*content).clone(),
                    views: None,
                }
                .encode()
                .unwrap_or_default();
                let (client_account, firm_account) = if self.is_firm_account(&message.from) {
                    (to.clone(), message.from.clone())
                } else {
                    (message.from.clone(), to.clone())
                };
                events.push(Event::Archived {
                    message_id: id,
                    from: message.from.clone(),
                    to: to.clone(),
                    kind: content.name().to_owned(),
                });
                self.archived.push(crate::archive::ArchivedMessage {
                    message_id: id,
                    from: message.from,
                    device: sender,
                    to,
                    client_account,
                    firm_account,
                    sent_ms: message.sent_ms,
                    received_ms: now_ms(),
                    content: *content,
                    original,
                    attachment: None,
                    attachment_error: None,
                });
            }
            Content::Notice { notice, content } => {
                let evs = self
                    .receive_notice(id, sender, &message.from, message.sent_ms, *notice, content)
                    .await;
                events.extend(evs);
            }
            Content::Text { .. } | Content::Attachment { .. } | Content::Instruction { .. } => {
                if let Content::Attachment { descriptor, .. } = &message.content {
                    self.attachments.insert(id, descriptor.clone());
                }
                if let Some(mut entry) = Self::entry_for(
                    id,
                    Direction::In,
                    &message.from,
                    &message.content,
                    message.sent_ms,
                ) {
                    entry.sender_revoked_ms = revoked;
                    events.push(match entry.kind {
                        EntryKind::Text => Event::Message {
                            entry: entry.clone(),
                        },
                        EntryKind::Notice => Event::Notice {
                            entry: entry.clone(),
                        },
                        EntryKind::Instruction => Event::Instruction {
                            entry: entry.clone(),
                        },
                    });
                    self.push_history(entry);
                    self.pending_receipts
                        .entry(message.from.clone())
                        .or_default()
                        .push(id);
                }
            }
            Content::Sync { to, content } => {
                if let Content::Attachment { descriptor, .. } = content.as_ref() {
                    self.attachments.insert(id, descriptor.clone());
                }
                if let Some(mut entry) =
                    Self::entry_for(id, Direction::Out, &to, &content, message.sent_ms)
                {
                    entry.sender_revoked_ms = revoked;
                    events.push(Event::Synced {
                        entry: entry.clone(),
                    });
                    self.push_history(entry);
                }
            }
            Content::ApprovalRequest { bundle, subject } => {
                let evs = self
                    .receive_approval_request(sender, &message.from, *bundle, *subject)
                    .await;
                events.extend(evs);
            }
            Content::ApprovalResponse {
                request_id,
                approval,
                reason,
            } => {
                let evs = self
                    .receive_approval_response(
                        sender,
                        &message.from,
                        request_id,
                        approval.map(|a| *a),
                        reason.as_str(),
                    )
                    .await;
                events.extend(evs);
            }
            Content::Receipt { kind, message_ids } => {
                let ids = message_ids.into_inner();
                for e in self
                    .history
                    .iter_mut()
                    .filter(|e| e.direction == Direction::Out && e.peer == message.from)
                {
                    if ids.contains(&e.id) {
                        e.delivered = true;
                        if kind == ReceiptKind::Read {
                            e.read = true;
                        }
                    }
                }
                events.push(Event::Receipt {
                    from: message.from.clone(),
                    kind,
                    message_ids: ids,
                });
            }
        }
        events
    }

    /// Save what was received, then acknowledge it to the relay: an envelope is deleted
    /// at the relay only once its effect on this device is durable. Done once per burst of
    /// deliveries rather than once per envelope.
    async fn commit_received(&mut self) -> Result<(), ClientError> {
        if self.pending_acks.is_empty() {
            return Ok(());
        }
        // The archive device: its store commits before the relay is told (§22).
        self.drain_archived().await?;
        self.save()?;
        let ids = std::mem::take(&mut self.pending_acks);
        let conn = self.conn()?;
        for id in ids {
            conn.ack(id).await?;
        }
        Ok(())
    }

    /// The safety number with `account` (over this account's and its devices).
    pub async fn safety_number(
        &mut self,
        account: &AccountId,
    ) -> Result<SafetyNumber, ClientError> {
        let me = self.me()?;
        if self.conn.is_some() {
            self.refresh_devices(account, true).await?;
            self.refresh_devices(&me, true).await?;
        }
        let theirs: Vec<PublicIdentity> = self
            .contacts
            .get(account)
            .map(|c| c.devices.values().map(|d| d.identity.clone()).collect())
            .unwrap_or_default();
        if theirs.is_empty() {
            return Err(ClientError::NoDevices(account.clone()));
        }
        let mut mine: Vec<PublicIdentity> = self
            .contacts
            .get(&me)
            .map(|c| c.devices.values().map(|d| d.identity.clone()).collect())
            .unwrap_or_default();
        mine.push(self.identity.public().clone());
        SafetyNumber::compute((&me, &mine), (account, &theirs)).map_err(proto)
    }

    /// Mark `account` verified at its current safety number.
    pub async fn mark_verified(
        &mut self,
        account: &AccountId,
    ) -> Result<SafetyNumber, ClientError> {
        let sn = self.safety_number(account).await?;
        if let Some(c) = self.contacts.get_mut(account) {
            c.verified = Some(sn.digits().to_owned());
        }
        self.save()?;
        Ok(sn)
    }

    /// Mark `account` verified only if `expected` (the digits the user compared,
    /// whitespace ignored) equals the current safety number; the number is computed once,
    /// so what is stored is exactly what was compared. Returns whether it matched.
    pub async fn confirm_safety_number(
        &mut self,
        account: &AccountId,
        expected: &str,
    ) -> Result<bool, ClientError> {
        let expected: String = expected.chars().filter(|c| !c.is_whitespace()).collect();
        let sn = self.safety_number(account).await?;
        if expected != sn.digits() {
            return Ok(false);
        }
        if let Some(c) = self.contacts.get_mut(account) {
            c.verified = Some(sn.digits().to_owned());
        }
        self.save()?;
        Ok(true)
    }

    /// Whether `account` is verified at its current devices.
    pub fn is_verified(&self, account: &AccountId) -> bool {
        self.contacts
            .get(account)
            .is_some_and(|c| c.verified.is_some())
    }

    /// This account's devices (from the relay).
    pub async fn own_devices(&mut self) -> Result<Vec<PublicIdentity>, ClientError> {
        let me = self.me()?;
        let list = self.conn()?.list_devices(&me).await?;
        Ok(list.into_iter().map(|d| d.identity).collect())
    }

    /// Point the profile at another relay address (the relay moved; the pinned CA must
    /// still be given explicitly).
    /// The organisation fingerprint pinned at enrolment cannot be changed this way: a
    /// `relay` naming another one is refused (one naming none keeps the pinned one).
    pub fn set_relay(&mut self, mut relay: RelayInfo) -> Result<(), ClientError> {
        relay.address()?;
        relay.org()?;
        let pinned = self.relay.as_ref().and_then(|r| r.org_fingerprint.clone());
        match (&pinned, &relay.org_fingerprint) {
            (Some(p), Some(n)) if relay.org()? != RelayInfo::org_of(p)? => {
                let _ = n;
                return Err(ClientError::NotAllowed(
                    "the organisation fingerprint is pinned at enrolment and cannot change".into(),
                ));
            }
            (None, Some(_)) if self.account.is_some() => {
                return Err(ClientError::NotAllowed(
                    "this device was enrolled without an organisation; it cannot pin one now"
                        .into(),
                ));
            }
            _ => {}
        }
        relay.org_fingerprint = pinned.or(relay.org_fingerprint);
        self.relay = Some(relay);
        self.save()
    }

    /// For tests whose relay restarts on a new port: replace the relay address (the
    /// pinned organisation fingerprint is kept).
    #[doc(hidden)]
    pub fn relay_override_for_tests(&mut self, mut relay: RelayInfo) {
        relay.org_fingerprint = self.relay.as_ref().and_then(|r| r.org_fingerprint.clone());
        self.relay = Some(relay);
    }

    /// Save now (for example before exiting).
    pub fn persist(&self) -> Result<(), ClientError> {
        self.save()
    }
}

/// Before enrolling or linking: refuse a relay that serves an organisation when no
/// fingerprint was given to pin, or serves another one than the fingerprint given. A relay
/// that does not know `get_org` (or has no organisation) passes when none was given.
pub(crate) async fn check_relay_org(
    conn: &RelayConnection,
    relay: &RelayInfo,
) -> Result<(), ClientError> {
    let given = relay.org()?;
    let announced = match conn.get_org().await {
        Ok(a) => a.map(OrgFingerprint),
        Err(NetError::Refused {
            code: ErrorCode::UnexpectedFrame | ErrorCode::BadFrame,
            ..
        }) => None,
        Err(e) => return Err(e.into()),
    };
    match (given, announced) {
        (None, Some(_)) => Err(ClientError::OrgNotPinned {
            relay: relay.addr.clone(),
        }),
        (Some(g), Some(a)) if g != a => Err(ClientError::OrgMismatch {
            relay: relay.addr.clone(),
            pinned: g.to_hex(),
        }),
        _ => Ok(()),
    }
}

fn attachment_error(e: crate::attachments::AttachmentError) -> ClientError {
    use crate::attachments::AttachmentError as A;
    match e {
        A::Refused { code, message } => ClientError::Net(NetError::Refused {
            code,
            message,
            retry_after_ms: None,
        }),
        other => ClientError::Attachment(other.to_string()),
    }
}

/// A media type from the file extension (what the recipient is told; never trusted for
/// anything but display).
fn media_type_for(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        Some("csv") => "text/csv",
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("json") => "application/json",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}
