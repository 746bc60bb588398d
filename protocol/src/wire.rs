//! The wire format between a device and the relay: length-prefixed, versioned CBOR frames.
//!
//! On a QUIC stream, a frame is `length (u32, big-endian) || CBOR(Frame)`. The length is
//! checked against [`MAX_FRAME_LEN`] before any byte of the payload is read or decoded.
//! A `Frame` is the CBOR map `{"v": 1, "id": u64, "body": {"t": type, "c": content}}`;
//! `id` correlates a request with its response (0 for pushes). Every type, field and bound
//! is listed in `docs/PROTOCOL.md`.

use serde::{Deserialize, Serialize};

use crate::codec::{self, bytes_array};
use crate::envelope::{Envelope, MessageId};
use crate::error::{DecodeError, EncodeError};
use crate::identity::{AccountId, DeviceId, PublicIdentity, MAX_DEVICES_PER_ACCOUNT};
use crate::prekeys::{KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey};
use crate::tlog::{
    LeafBytes, ProofHash, MAX_LEAVES_PER_FRAME, MAX_NOTE_LEN, MAX_PROOF_HASHES,
    MAX_SIGNATURE_LINE_LEN,
};
use crate::trust::{
    ClientAttestation, EntryBody, LinkChallenge, LinkCommitment, LinkNonce, LogEntry, SignedNotice,
    SignedRoster,
};
use crate::PROTOCOL_VERSION;

/// Largest frame payload (after the 4-byte length prefix).
pub const MAX_FRAME_LEN: usize = 256 * 1024;
/// Length of the frame length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;
/// Most one-time X25519 prekeys in one upload.
pub const MAX_ONE_TIME_PREKEYS_PER_UPLOAD: usize = 100;
/// Most ML-KEM prekeys in one upload (each is 1184 bytes).
pub const MAX_KEM_PREKEYS_PER_UPLOAD: usize = 100;
/// Longest human-readable error message in an `error` frame.
pub const MAX_ERROR_MESSAGE_LEN: usize = 512;
/// Longest enrolment code.
pub const MAX_ENROLLMENT_CODE_LEN: usize = 64;
/// Most contacts in one `contacts` answer.
pub const MAX_CONTACTS: usize = 4096;
/// Largest attachment blob the relay stores, bytes (ciphertext).
pub const MAX_BLOB_LEN: u64 = 64 * 1024 * 1024;
/// Largest chunk in a `blob_chunk` frame, bytes.
pub const MAX_BLOB_CHUNK_LEN: usize = 64 * 1024 + 16;
/// ALPN protocol id of Sealpost over QUIC.
pub const ALPN: &[u8] = b"sealpost/1";
/// TLS exporter label for channel-bound authentication (RFC 8446 section 7.5).
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Sealpost-Auth-v1";
/// Domain label of the authentication signature.
pub const AUTH_SIGNATURE_LABEL: &[u8] = b"Sealpost_Auth_v1";
/// Domain label of the enrolment signature.
pub const ENROLL_SIGNATURE_LABEL: &[u8] = b"Sealpost_Enroll_v1";
/// Signature label of `link_start`.
pub const LINK_SIGNATURE_LABEL: &[u8] = b"Sealpost_Link_v1";
/// Signature label of `link_complete`.
pub const LINK_COMPLETE_SIGNATURE_LABEL: &[u8] = b"Sealpost_LinkComplete_v1";
/// Most pending link requests per account.
pub const MAX_PENDING_LINKS: usize = 4;
/// Most roster versions in one `roster` frame.
pub const MAX_ROSTER_LINKS_PER_FRAME: usize = 16;
/// A `roster` frame stops adding versions once it holds this many bytes of them (one
/// version is at most [`crate::trust::MAX_SIGNED_ROSTER_LEN`], below [`MAX_FRAME_LEN`]).
pub const ROSTER_FRAME_BUDGET: usize = 192 * 1024;
/// Most device-log entries in one `device_log` frame.
pub const MAX_LOG_ENTRIES_PER_FRAME: usize = 32;
/// Most accounts in one `log_heads` frame (ask again from the last one while `more`).
pub const MAX_LOG_HEADS_PER_FRAME: usize = 1024;
/// Most client accounts in one `clients` frame (ask again from the last one while `more`).
pub const MAX_CLIENTS_PER_FRAME: usize = 1024;
/// Most client accounts in one `unattested` frame (ask again from the last one while
/// `more`).
pub const MAX_UNATTESTED_PER_FRAME: usize = 64;

/// Most security events in one `security_events` answer (ask again from the last id while
/// `more`).
pub const MAX_SECURITY_EVENTS_PER_FRAME: usize = 256;
/// Longest rule name in a security event.
pub const MAX_SECURITY_RULE_LEN: usize = 48;
/// Longest detail text in a security event (metadata only, never message content).
pub const MAX_SECURITY_DETAIL_LEN: usize = 256;
/// Longest address text (`ip` or `ip:port`) in a security event.
pub const MAX_SECURITY_ADDRESS_LEN: usize = 64;

/// How serious a security event is. Encoded as a snake_case string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecuritySeverity {
    /// Worth recording, nothing to do.
    Info,
    /// Look at it when convenient.
    Low,
    /// Look at it today.
    Medium,
    /// Look at it now.
    High,
    /// Act now.
    Critical,
}

impl SecuritySeverity {
    /// All severities, least serious first.
    pub const ALL: [SecuritySeverity; 5] = [
        Self::Info,
        Self::Low,
        Self::Medium,
        Self::High,
        Self::Critical,
    ];

    /// The name as written on the wire (`high`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// A security event as the relay reports it to the security desk (`security_events`,
/// `security_event`): metadata only, never message content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityEventInfo {
    /// The relay's id of the event, increasing.
    pub id: u64,
    /// When it was raised, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// How serious it is.
    pub severity: SecuritySeverity,
    /// The rule that raised it (`auth_failures_account`, ...).
    pub rule: BoundedString<MAX_SECURITY_RULE_LEN>,
    /// The account it concerns, if any.
    pub account: Option<AccountId>,
    /// The device it concerns, if any.
    pub device: Option<DeviceId>,
    /// The remote address it concerns, if any.
    pub address: Option<BoundedString<MAX_SECURITY_ADDRESS_LEN>>,
    /// What was seen, in the relay's words (counts, kinds, windows).
    pub detail: BoundedString<MAX_SECURITY_DETAIL_LEN>,
}

/// A client account whose first device the firm has not attested yet, as staff see it
/// (`unattested`), with where its verification stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingAttestation {
    /// The client account.
    pub account: AccountId,
    /// The client's commitment to its nonce (`attest_start`), if it asked to be verified.
    pub commitment: Option<LinkCommitment>,
    /// The challenge a staff device picked (`attest_challenge`), if any yet.
    pub challenge: Option<LinkChallenge>,
    /// The client's nonce, once revealed (`attest_reveal`, only after the challenge).
    pub nonce: Option<LinkNonce>,
}

/// How long an account's device log is (`log_heads`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLength {
    /// The account.
    pub account: AccountId,
    /// Entries in its device log (the last one is `entries - 1`; 0: no log).
    pub entries: u64,
}

/// A pending request to add a device to an account (or recover it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingLink {
    /// Its id.
    #[serde(with = "bytes_array")]
    pub link_id: [u8; 16],
    /// The account.
    pub account: AccountId,
    /// The new device's identity.
    pub identity: PublicIdentity,
    /// The new device's commitment to its linking nonce (sent with `link_start`).
    pub commitment: LinkCommitment,
    /// When it was made, ms since the Unix epoch.
    pub created_ms: u64,
    /// The challenge offered, if an offer was made.
    pub challenge: Option<LinkChallenge>,
    /// The body offered.
    pub body: Option<EntryBody>,
    /// The new device's signature over the offered body.
    #[serde(with = "crate::codec::opt_bytes_array")]
    pub subject_signature: Option<[u8; 64]>,
    /// The nonce the new device revealed with its signature (it opens `commitment`).
    pub nonce: Option<LinkNonce>,
}

/// A `Vec` whose length is checked against `N` when decoded.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<T>", into = "Vec<T>")]
#[serde(bound(
    serialize = "T: Serialize + Clone",
    deserialize = "T: Deserialize<'de>"
))]
pub struct BoundedVec<T, const N: usize>(Vec<T>);

impl<T, const N: usize> BoundedVec<T, N> {
    /// Wrap `v`, refusing more than `N` items.
    pub fn new(v: Vec<T>) -> Result<Self, DecodeError> {
        if v.len() > N {
            return Err(DecodeError::TooLarge {
                what: "list",
                got: v.len(),
                max: N,
            });
        }
        Ok(Self(v))
    }

    /// The items.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// Take the items.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

impl<T, const N: usize> TryFrom<Vec<T>> for BoundedVec<T, N> {
    type Error = DecodeError;
    fn try_from(v: Vec<T>) -> Result<Self, DecodeError> {
        Self::new(v)
    }
}

impl<T, const N: usize> From<BoundedVec<T, N>> for Vec<T> {
    fn from(b: BoundedVec<T, N>) -> Vec<T> {
        b.0
    }
}

/// A text field of at most `N` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BoundedString<const N: usize>(String);

impl<const N: usize> BoundedString<N> {
    /// Wrap `s`, truncating at a character boundary to `N` bytes.
    pub fn truncating(s: &str) -> Self {
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self(s[..end].to_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> TryFrom<String> for BoundedString<N> {
    type Error = DecodeError;
    fn try_from(s: String) -> Result<Self, DecodeError> {
        if s.len() > N {
            return Err(DecodeError::TooLarge {
                what: "text field",
                got: s.len(),
                max: N,
            });
        }
        Ok(Self(s))
    }
}

impl<const N: usize> From<BoundedString<N>> for String {
    fn from(b: BoundedString<N>) -> String {
        b.0
    }
}

/// An account's role at the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An investor.
    Client,
    /// An advisor with assigned clients.
    Advisor,
    /// Operations, compliance or security staff.
    Staff,
}

/// Why the relay refused a request. Encoded as a snake_case string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame did not decode (truncated, oversized, not CBOR, wrong structure).
    BadFrame,
    /// The frame's protocol version is not supported.
    UnsupportedVersion,
    /// The request needs an authenticated connection.
    Unauthenticated,
    /// Authentication failed.
    AuthFailed,
    /// The enrolment code is unknown, used or expired.
    EnrollmentRefused,
    /// The routing policy forbids this (for example a client writing to another client).
    Forbidden,
    /// The account or device does not exist.
    NotFound,
    /// A per-device count or byte quota is full.
    QuotaExceeded,
    /// A size bound was exceeded.
    TooLarge,
    /// A rate limit was hit; see `retry_after_ms`.
    RateLimited,
    /// The request conflicts with existing state.
    Conflict,
    /// The frame was valid but not allowed at this point of the conversation.
    UnexpectedFrame,
    /// The relay failed internally; the request may be retried.
    Internal,
}

impl ErrorCode {
    /// The code as written on the wire (`rate_limited`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Unauthenticated => "unauthenticated",
            Self::AuthFailed => "auth_failed",
            Self::EnrollmentRefused => "enrollment_refused",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::QuotaExceeded => "quota_exceeded",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Conflict => "conflict",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::Internal => "internal",
        }
    }
}

/// A device as listed by the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// The device's identity.
    pub identity: PublicIdentity,
    /// When it enrolled, milliseconds since the Unix epoch.
    pub enrolled_ms: u64,
}

/// An account reachable under the routing policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactInfo {
    /// The account.
    pub account: AccountId,
    /// Its role.
    pub role: Role,
}

/// A frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    /// Protocol version (1).
    pub v: u16,
    /// Request id chosen by the requester, echoed in the response; 0 for pushes.
    pub id: u64,
    /// Type and content.
    pub body: FrameBody,
}

impl Frame {
    /// A frame of the current version.
    pub fn new(id: u64, body: FrameBody) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            body,
        }
    }
}

/// Frame types. Encoded as `{"t": "<snake_case name>", "c": <content map or null>}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "t",
    content = "c",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum FrameBody {
    // ----- security desk (docs/PROTOCOL.md, "Security events") -----
    /// Security staff: the stored security events after `since` (an event id; 0 for all
    /// retained), answered with `security_events`; from then on the relay pushes each new
    /// event as `security_event` on this connection. Only devices of a staff member whose
    /// role in the verified roster is `security` may ask; anyone else gets `forbidden`.
    SecurityWatch {
        /// Events with a greater id are returned.
        since: u64,
    },
    /// Answer to `security_watch`: stored events after `since`, ascending by id.
    SecurityEvents {
        /// The events.
        events: BoundedVec<SecurityEventInfo, MAX_SECURITY_EVENTS_PER_FRAME>,
        /// More stored events follow: the watch is not started; ask again with `since` =
        /// the last id here.
        more: bool,
    },
    /// Push (id 0) to a watching security device: a new security event.
    SecurityEvent {
        /// The event.
        event: SecurityEventInfo,
    },
    /// Any authenticated device: the stored alerts for its own account with an id greater
    /// than `since` (security events whose rule has the `notify_devices` measure; those
    /// about this device itself are left out), answered with `account_alerts`.
    GetAccountAlerts {
        /// Alerts with a greater id are returned.
        since: u64,
    },
    /// Answer to `get_account_alerts`, ascending by id.
    AccountAlerts {
        /// The alerts.
        alerts: BoundedVec<SecurityEventInfo, MAX_SECURITY_EVENTS_PER_FRAME>,
        /// More follow: ask again with `since` = the last id here.
        more: bool,
    },
    /// Push (id 0) to every other online device of an account: a new alert about it.
    AccountAlert {
        /// The event.
        event: SecurityEventInfo,
    },
    /// The firm's archive device (§22.6): append the head of its record chain to the
    /// transparency log, answered with `archive_anchored`. Only devices of the archive
    /// account the relay's verified roster names may ask.
    AnchorArchive {
        /// The head record's sequence number.
        seq: u64,
        /// Its hash.
        #[serde(with = "bytes_array")]
        hash: [u8; 32],
    },
    /// Answer to `anchor_archive`: the leaf's index in the log.
    ArchiveAnchored {
        /// The leaf index.
        index: u64,
    },
    // ----- device -> relay, before authentication -----
    /// Register this device's identity with a one-time enrolment code.
    Enroll {
        /// The account the code was issued for.
        account: AccountId,
        /// The code.
        code: BoundedString<MAX_ENROLLMENT_CODE_LEN>,
        /// The device's identity.
        identity: PublicIdentity,
        /// Signature over [`enroll_signature_message`]:
        /// `ENROLL_SIGNATURE_LABEL || exporter || u16 len || account || u16 len || code`.
        #[serde(with = "bytes_array")]
        signature: [u8; 64],
        /// Entry 0 of the account's device log: this identity adding itself, signed by it
        /// ([`crate::trust::LogEntry::genesis`]). An account that already has a log cannot
        /// enrol another device with a code: it links one, or staff recover it.
        genesis: Box<LogEntry>,
    },
    /// Ask to join an existing account as a new device (see docs/PROTOCOL.md, "Linking a
    /// device"). Allowed before authentication; answered with `link_started`.
    LinkStart {
        /// The account to join.
        account: AccountId,
        /// The new device's identity.
        identity: PublicIdentity,
        /// Its commitment to a fresh nonce it reveals in `link_sign`
        /// ([`LinkCommitment`]).
        commitment: LinkCommitment,
        /// Signature over [`link_signature_message`]: `LINK_SIGNATURE_LABEL || exporter ||
        /// u16 len || account`, proving the new device holds the key on this connection.
        #[serde(with = "bytes_array")]
        signature: [u8; 64],
    },
    /// The new device asks how its link request stands; answered with `link_state`.
    LinkPoll {
        /// The id `link_started` returned (a capability: only the new device knows it).
        #[serde(with = "bytes_array")]
        link_id: [u8; 16],
    },
    /// The organisation fingerprint this relay is configured with; answered with `org`.
    /// Allowed before authentication: a device about to enrol or link refuses to go on
    /// when the relay has an organisation and the user gave no fingerprint to pin (the
    /// fingerprint is never taken from the relay).
    GetOrg,
    /// The new device's signature over the offered entry (`"Sealpost_DeviceLogSign_v1" ||
    /// entry_hash`) and the reveal of its nonce; answered with `done`. Sent only after the
    /// new device has received the challenge.
    LinkSign {
        /// The link.
        #[serde(with = "bytes_array")]
        link_id: [u8; 16],
        /// The signature.
        #[serde(with = "bytes_array")]
        signature: [u8; 64],
        /// The nonce its `link_start` commitment was made to.
        nonce: LinkNonce,
    },
    /// The recovered device completes its recovery: the relay appends the entry a staff
    /// quorum authorised for this link (`link_authorize`) and the device can authenticate
    /// at once. Allowed before authentication; answered with `done`. The new device sends
    /// it only once it has durably recorded that it is becoming the account's device, so
    /// that the entry revoking the account's old devices is appended only when the new one
    /// can use the account (docs/PROTOCOL.md §19.5, "Completing a recovery").
    LinkComplete {
        /// The link.
        #[serde(with = "bytes_array")]
        link_id: [u8; 16],
        /// Signature by the link's identity over [`link_complete_signature_message`]:
        /// `LINK_COMPLETE_SIGNATURE_LABEL || exporter || link_id`.
        #[serde(with = "bytes_array")]
        signature: [u8; 64],
    },
    /// Begin authentication as `device`.
    AuthStart {
        /// The device.
        device: DeviceId,
    },
    /// Proof of possession: signature over `AUTH_SIGNATURE_LABEL || exporter || nonce || device`.
    AuthResponse {
        /// The signature.
        #[serde(with = "bytes_array")]
        signature: [u8; 64],
    },
    // ----- device -> relay, authenticated -----
    /// Publish prekeys (any subset).
    UploadPreKeys {
        /// A new signed prekey.
        signed_prekey: Option<SignedPreKey>,
        /// One-time X25519 prekeys.
        one_time: BoundedVec<OneTimePreKey, MAX_ONE_TIME_PREKEYS_PER_UPLOAD>,
        /// One-time ML-KEM prekeys.
        kem_one_time: BoundedVec<KemPreKey, MAX_KEM_PREKEYS_PER_UPLOAD>,
        /// A new last-resort ML-KEM prekey.
        kem_last_resort: Option<KemPreKey>,
    },
    /// Fetch one prekey bundle per device of `account`.
    FetchBundles {
        /// The account.
        account: AccountId,
    },
    /// List the devices of `account`.
    ListDevices {
        /// The account.
        account: AccountId,
    },
    /// Store and forward an envelope.
    Send {
        /// The envelope; `sender` must be the authenticated device.
        envelope: Envelope,
    },
    /// The recipient has processed this envelope; the relay deletes it.
    Ack {
        /// The envelope's message id.
        message_id: MessageId,
    },
    /// Liveness check.
    Ping,
    /// Ask the relay to deliver everything pending; answered with `mailbox_empty` (same
    /// id) once every envelope committed before this request has been delivered.
    Drain,
    /// The accounts this device's account may reach (assigned advisors and staff for a
    /// client; assigned clients for advisors and staff).
    ListContacts,
    /// Every client account of the relay, assigned to this account or not, ascending by
    /// account id, after `after` (null: from the first); answered with `clients`. Staff
    /// and advisor devices only: a notice to all clients goes to every one of them.
    ListClients {
        /// The last account of the previous answer, or null.
        after: Option<AccountId>,
    },
    /// Send a staff notice: like `send`, with the notice's signed header (and its
    /// co-signatures) in the clear for the relay to check. The envelope's kind is `notice`.
    SendNotice {
        /// The sealed envelope (its plaintext carries the same signed notice and content).
        envelope: Envelope,
        /// The signed header.
        notice: Box<SignedNotice>,
    },
    /// Roster versions after `after_version` (0: from version 1); answered with `roster`.
    GetRoster {
        /// The last version the device already holds.
        after_version: u64,
    },
    /// Publish the next roster version (staff devices only); answered with `done`.
    PublishRoster {
        /// The signed version.
        roster: Box<SignedRoster>,
    },
    /// Entries of an account's device log from `from_seq` on; answered with `device_log`.
    GetDeviceLog {
        /// The account.
        account: AccountId,
        /// The first entry wanted.
        from_seq: u64,
    },
    /// Append an entry to an account's device log; answered with `done`.
    AppendDeviceLog {
        /// The entry; its body names the account.
        entry: Box<LogEntry>,
    },
    /// Pending link (and recovery) requests for an account: the account's own devices, or
    /// any staff device; answered with `links`.
    ListLinks {
        /// The account.
        account: AccountId,
    },
    /// A device of the account dismisses one of the account's pending link requests
    /// (one it did not make, or no longer wants); answered with `done`.
    DismissLink {
        /// The link.
        #[serde(with = "bytes_array")]
        link_id: [u8; 16],
    },
    /// The lengths of the device logs this device is told about when they change (its own
    /// account's and, for staff and advisors, those of the clients assigned to them),
    /// ascending by account, after `after` (null: from the first); answered with
    /// `log_heads`. A device that was offline compares them with the heads it verified.
    GetLogHeads {
        /// The last account of the previous answer, or null.
        after: Option<AccountId>,
    },
    /// An existing device (or, for a recovery, a staff device) offers the new device the
    /// entry that will add it, and the challenge its link code is computed from; answered
    /// with `done`.
    LinkOffer {
        /// The link.
        #[serde(with = "bytes_array")]
        link_id: [u8; 16],
        /// Picked after the new identity was received.
        challenge: LinkChallenge,
        /// The entry body (an add or a recover of the link's identity).
        body: Box<EntryBody>,
    },
    /// The staff device that initiated a recovery hands the relay the entry its quorum
    /// approved (the offered `recover` body, the approvals, the new device's signature),
    /// to be appended when the new device completes it (`link_complete`); answered with
    /// `done`. A recovery is never appended with `append_device_log`.
    LinkAuthorize {
        /// The link.
        #[serde(with = "bytes_array")]
        link_id: [u8; 16],
        /// The whole entry, as it will be appended.
        entry: Box<LogEntry>,
    },
    // ----- the firm's attestation of a client's first device (docs/PROTOCOL.md §19.10) -----
    /// A client device asks the firm to verify its account: its commitment to a fresh
    /// nonce (replacing any earlier request of the account); answered with `attest_state`.
    AttestStart {
        /// `LinkCommitment` of (account, the genesis entry's identity, nonce).
        commitment: LinkCommitment,
    },
    /// A client device asks where its account's verification stands; answered with
    /// `attest_state`.
    AttestPoll,
    /// A client device reveals its nonce, only after it received the staff member's
    /// challenge (in `attest_state`); answered with `attest_state`.
    AttestReveal {
        /// The nonce the request's commitment binds.
        nonce: LinkNonce,
    },
    /// Staff: client accounts with a device log and no attestation, after `after` (null:
    /// from the first), ascending; answered with `unattested`.
    ListUnattested {
        /// The last account of the previous answer, or null.
        after: Option<AccountId>,
    },
    /// Staff: the challenge for a client's pending request (picked after its commitment
    /// was received); answered with `done`.
    AttestChallenge {
        /// The client account.
        account: AccountId,
        /// A fresh challenge.
        challenge: LinkChallenge,
    },
    /// Staff: the signed attestation, once the code the client read out matched;
    /// answered with `done`.
    AttestSubmit {
        /// The attestation.
        attestation: Box<ClientAttestation>,
    },
    /// Staff: end a client's pending request (the code read out did not match, say); the
    /// client starts again with a fresh nonce. Answered with `done`.
    AttestDismiss {
        /// The client account.
        account: AccountId,
    },
    // ----- the transparency log (docs/PROTOCOL.md §20), authenticated -----
    /// The latest signed checkpoint (the relay signs a new one first if the log grew);
    /// answered with `checkpoint`.
    GetCheckpoint,
    /// Prove that an account's device log had `length` entries ending in `head`: answered
    /// with `log_proof` (the leaf recording it, its inclusion proof in a checkpoint: the
    /// newest one the roster's witnesses cosigned that holds the leaf and is not older
    /// than `old_size`, else the latest; and the consistency proof from `old_size`, 0 for
    /// none).
    ProveLogHead {
        /// The account.
        account: AccountId,
        /// Entries in its log.
        length: u64,
        /// The last entry's hash.
        #[serde(with = "bytes_array")]
        head: [u8; 32],
        /// The size of the last checkpoint the device accepted (0: none).
        old_size: u64,
    },
    /// Prove that roster `version` with `hash` was published; answered with `log_proof`.
    ProveRoster {
        /// The version.
        version: u64,
        /// Its hash.
        #[serde(with = "bytes_array")]
        hash: [u8; 32],
        /// The size of the last checkpoint the device accepted (0: none).
        old_size: u64,
    },
    /// Leaves from `start`, at most `count` (and at most [`MAX_LEAVES_PER_FRAME`]);
    /// answered with `log_leaves`. For witnesses and auditors.
    GetLogLeaves {
        /// First leaf index.
        start: u64,
        /// How many wanted.
        count: u16,
    },
    /// A consistency proof between two tree sizes (`old_size <= new_size <=` the latest
    /// checkpoint's size); answered with `consistency`.
    GetConsistency {
        /// The older size.
        old_size: u64,
        /// The newer size.
        new_size: u64,
    },
    /// A witness's cosignature of the stored checkpoint of size `size`: one signed-note
    /// signature line (`— <name> <base64(key id || u64 time || signature)>`). The relay
    /// checks it against the roster's witness keys and stores it; answered with `done`.
    SubmitCosignature {
        /// The checkpoint's tree size.
        size: u64,
        /// The signature line.
        line: BoundedString<MAX_SIGNATURE_LINE_LEN>,
    },
    // ----- attachment streams (each on its own bidirectional stream, authenticated
    // connection only; see docs/PROTOCOL.md) -----
    /// First frame of an upload stream: the blob that follows in `blob_chunk` frames.
    BlobUpload {
        /// Random 128-bit id chosen by the uploader.
        #[serde(with = "bytes_array")]
        blob_id: [u8; 16],
        /// Total ciphertext length.
        size: u64,
    },
    /// First frame of a download stream.
    BlobDownload {
        /// The blob.
        #[serde(with = "bytes_array")]
        blob_id: [u8; 16],
    },
    /// A piece of a blob, in order.
    BlobChunk {
        /// Ciphertext bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    // ----- relay -> device -----
    /// The enrolment succeeded.
    Enrolled {
        /// The new device's id.
        device: DeviceId,
        /// Its account's role.
        role: Role,
    },
    /// The challenge to sign.
    AuthChallenge {
        /// 32 random bytes.
        #[serde(with = "bytes_array")]
        nonce: [u8; 32],
    },
    /// Authentication succeeded.
    AuthOk {
        /// The device's account.
        account: AccountId,
        /// Its role.
        role: Role,
    },
    /// Prekey stock after an upload, or a warning pushed when it runs low.
    PreKeyStock {
        /// One-time X25519 prekeys left.
        one_time: u32,
        /// One-time ML-KEM prekeys left.
        kem_one_time: u32,
        /// True when the relay asks for more.
        low: bool,
    },
    /// Answer to `fetch_bundles`.
    Bundles {
        /// The account.
        account: AccountId,
        /// One bundle per device.
        bundles: BoundedVec<PreKeyBundle, MAX_DEVICES_PER_ACCOUNT>,
    },
    /// Answer to `list_devices`.
    Devices {
        /// The account.
        account: AccountId,
        /// Its devices.
        devices: BoundedVec<DeviceInfo, MAX_DEVICES_PER_ACCOUNT>,
    },
    /// The envelope is durably stored (or was already): the sender may forget it.
    Accepted {
        /// Its message id.
        message_id: MessageId,
    },
    /// An envelope for this device.
    Deliver {
        /// The envelope.
        envelope: Envelope,
    },
    /// Answer to `ping`.
    Pong,
    /// A request without another answer succeeded.
    Done,
    /// Answer to `link_start`.
    LinkStarted {
        /// The link's id.
        #[serde(with = "bytes_array")]
        link_id: [u8; 16],
        /// When the request lapses, ms since the Unix epoch.
        expires_ms: u64,
    },
    /// Answer to `link_poll`.
    LinkState {
        /// What an existing device offered, if anything yet.
        challenge: Option<LinkChallenge>,
        /// The offered entry body.
        body: Option<Box<EntryBody>>,
        /// The entry was appended: the new device can authenticate now.
        completed: bool,
        /// A recovery's quorum authorised the entry (`link_authorize`): the new device
        /// completes it with `link_complete`. Absent (false) in frames of older relays.
        #[serde(default)]
        ready: bool,
    },
    /// Answer to `list_links`.
    Links {
        /// Pending requests, oldest first.
        links: BoundedVec<PendingLink, MAX_PENDING_LINKS>,
    },
    /// Answer to `get_roster`: consecutive versions, oldest first.
    Roster {
        /// At most [`MAX_ROSTER_LINKS_PER_FRAME`] versions, fewer if the frame would
        /// grow past [`ROSTER_FRAME_BUDGET`].
        links: BoundedVec<SignedRoster, MAX_ROSTER_LINKS_PER_FRAME>,
        /// The newest version the relay holds (0: none); ask again while behind it.
        latest: u64,
    },
    /// Answer to `get_device_log`: consecutive entries, oldest first.
    DeviceLog {
        /// The account.
        account: AccountId,
        /// At most [`MAX_LOG_ENTRIES_PER_FRAME`] entries.
        entries: BoundedVec<LogEntry, MAX_LOG_ENTRIES_PER_FRAME>,
        /// How many entries the log holds in all.
        total: u64,
        /// When the relay appended each entry of `entries` (ms since the Unix epoch), in
        /// the same order; absent from relays that do not record it (cooling-off then
        /// runs from the signed dates alone).
        #[serde(default, skip_serializing_if = "bounded_is_empty")]
        appended_ms: BoundedVec<u64, MAX_LOG_ENTRIES_PER_FRAME>,
        /// The firm's attestation of the account's first device, if the relay holds one
        /// (in the answer whose `entries` start at entry 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attestation: Option<Box<ClientAttestation>>,
    },
    /// Answer to `get_org`.
    Org {
        /// The configured organisation fingerprint (32 bytes), or null when the relay has
        /// no organisation.
        #[serde(with = "crate::codec::opt_bytes_array")]
        fingerprint: Option<[u8; 32]>,
    },
    /// Answer to `get_log_heads`.
    LogHeads {
        /// Accounts and the lengths of their logs, ascending by account.
        heads: BoundedVec<LogLength, MAX_LOG_HEADS_PER_FRAME>,
        /// More accounts follow: ask again with `after` = the last account here.
        more: bool,
    },
    /// Push: an account's device log grew (sent to the account's other devices and to the
    /// staff assigned to it).
    DeviceLogChanged {
        /// The account.
        account: AccountId,
        /// The new last entry.
        seq: u64,
        /// Its action (`add`, `remove`, `freeze`, `unfreeze`, `recover`).
        action: BoundedString<16>,
    },
    /// Answer to `drain`: every envelope pending when `drain` arrived has been delivered
    /// (the `deliver` frames precede this answer on the stream).
    MailboxEmpty,
    /// Answer to `list_contacts`.
    Contacts {
        /// Reachable accounts and their roles.
        contacts: BoundedVec<ContactInfo, MAX_CONTACTS>,
    },
    /// Answer to `attest_start`, `attest_poll` and `attest_reveal`: the account's
    /// pending verification request, if any.
    AttestState {
        /// The commitment of the pending request (null: none; send `attest_start`).
        commitment: Option<LinkCommitment>,
        /// The staff member's challenge, once picked.
        challenge: Option<LinkChallenge>,
        /// The nonce was revealed for this request (it must never be used again).
        revealed: bool,
        /// The relay holds an attestation of the account.
        attested: bool,
    },
    /// Answer to `list_unattested`.
    Unattested {
        /// Client accounts awaiting verification, ascending by account.
        clients: BoundedVec<PendingAttestation, MAX_UNATTESTED_PER_FRAME>,
        /// More follow: ask again with `after` = the last account here.
        more: bool,
    },
    /// Answer to `list_clients`.
    Clients {
        /// Client accounts, ascending by account id, all after the request's `after`.
        clients: BoundedVec<AccountId, MAX_CLIENTS_PER_FRAME>,
        /// More client accounts follow: ask again with `after` = the last account here.
        more: bool,
    },
    /// Answer to `blob_upload` once the whole blob is durably stored.
    BlobStored {
        /// The blob.
        #[serde(with = "bytes_array")]
        blob_id: [u8; 16],
    },
    /// Answer to `blob_download`: the blob's size; `blob_chunk` frames follow, then the
    /// relay finishes the stream.
    BlobHeader {
        /// Total ciphertext length.
        size: u64,
    },
    /// Answer to `get_checkpoint`: the signed note text, with every stored cosignature.
    Checkpoint {
        /// The note (`tlog-checkpoint` text, blank line, signature lines).
        note: BoundedString<MAX_NOTE_LEN>,
    },
    /// Answer to `prove_log_head` and `prove_roster`.
    LogProof {
        /// The checkpoint the proofs are against (signed note text).
        checkpoint: BoundedString<MAX_NOTE_LEN>,
        /// The leaf's index.
        index: u64,
        /// The leaf bytes (a CBOR `LogLeaf`).
        leaf: LeafBytes,
        /// Inclusion proof of the leaf in the checkpoint's tree.
        inclusion: BoundedVec<ProofHash, MAX_PROOF_HASHES>,
        /// Consistency proof from the asked `old_size` to the checkpoint's size (empty
        /// when `old_size` is 0 or equal).
        consistency: BoundedVec<ProofHash, MAX_PROOF_HASHES>,
    },
    /// Answer to `get_log_leaves`: consecutive leaves from `start`.
    LogLeaves {
        /// Index of the first leaf.
        start: u64,
        /// The leaves (at most [`MAX_LEAVES_PER_FRAME`] and about
        /// [`crate::tlog::LEAVES_FRAME_BUDGET`] bytes).
        leaves: BoundedVec<LeafBytes, MAX_LEAVES_PER_FRAME>,
        /// Leaves in the log in all.
        size: u64,
    },
    /// Answer to `get_consistency`.
    Consistency {
        /// The older size.
        old_size: u64,
        /// The newer size.
        new_size: u64,
        /// The proof.
        proof: BoundedVec<ProofHash, MAX_PROOF_HASHES>,
    },
    /// A request was refused.
    Error {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        message: BoundedString<MAX_ERROR_MESSAGE_LEN>,
        /// For `rate_limited`: when to retry.
        retry_after_ms: Option<u64>,
    },
}

/// Names of all frame types, for error messages.
pub const FRAME_TYPES: &[&str] = &[
    "enroll",
    "auth_start",
    "auth_response",
    "upload_pre_keys",
    "fetch_bundles",
    "list_devices",
    "send",
    "ack",
    "ping",
    "enrolled",
    "auth_challenge",
    "auth_ok",
    "pre_key_stock",
    "bundles",
    "devices",
    "accepted",
    "deliver",
    "pong",
    "drain",
    "list_contacts",
    "blob_upload",
    "blob_download",
    "blob_chunk",
    "mailbox_empty",
    "contacts",
    "blob_stored",
    "blob_header",
    "error",
    "link_start",
    "link_poll",
    "link_sign",
    "send_notice",
    "get_roster",
    "publish_roster",
    "get_device_log",
    "append_device_log",
    "list_links",
    "link_offer",
    "done",
    "link_started",
    "link_state",
    "links",
    "roster",
    "device_log",
    "device_log_changed",
    "get_org",
    "org",
    "dismiss_link",
    "get_log_heads",
    "log_heads",
    "list_clients",
    "clients",
    "link_complete",
    "link_authorize",
    "attest_start",
    "attest_poll",
    "attest_reveal",
    "list_unattested",
    "attest_challenge",
    "attest_submit",
    "attest_dismiss",
    "attest_state",
    "unattested",
    "get_checkpoint",
    "prove_log_head",
    "prove_roster",
    "get_log_leaves",
    "get_consistency",
    "submit_cosignature",
    "checkpoint",
    "log_proof",
    "log_leaves",
    "consistency",
    "security_watch",
    "security_events",
    "security_event",
    "get_account_alerts",
    "account_alerts",
    "account_alert",
    "anchor_archive",
    "archive_anchored",
];

fn bounded_is_empty<T, const N: usize>(v: &BoundedVec<T, N>) -> bool {
    v.as_slice().is_empty()
}

impl FrameBody {
    /// An error frame body.
    pub fn error(code: ErrorCode, message: &str) -> Self {
        Self::Error {
            code,
            message: BoundedString::truncating(message),
            retry_after_ms: None,
        }
    }
}

/// Encode a frame with its 4-byte length prefix.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    append_prefixed(frame, &mut out)?;
    Ok(out)
}

/// Append `frame`, length prefix included, to `out`: the bytes [`encode_frame`] returns,
/// without a buffer of its own. On error `out` is left as it was.
pub fn encode_frame_into(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    append_prefixed(frame, out)
}

/// Append a `deliver` push (id 0) of `envelope` to `out`: byte for byte what
/// [`encode_frame`] gives for `Frame::new(0, FrameBody::Deliver { envelope })`, without
/// copying the envelope into a frame first (the relay's delivery path).
pub fn encode_deliver_into(envelope: &Envelope, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    /// The shape of a `Frame` holding a `deliver` body, borrowing the envelope.
    #[derive(Serialize)]
    struct DeliverFrame<'a> {
        v: u16,
        id: u64,
        body: DeliverBody<'a>,
    }
    #[derive(Serialize)]
    #[serde(tag = "t", content = "c", rename_all = "snake_case")]
    enum DeliverBody<'a> {
        Deliver { envelope: &'a Envelope },
    }
    append_prefixed(
        &DeliverFrame {
            v: PROTOCOL_VERSION,
            id: 0,
            body: DeliverBody::Deliver { envelope },
        },
        out,
    )
}

fn append_prefixed<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX_LEN]);
    let result = codec::encode_into("frame", value, out).and_then(|()| {
        let len = out.len() - start - FRAME_PREFIX_LEN;
        let too_large = EncodeError::TooLarge {
            what: "frame",
            got: len,
            max: MAX_FRAME_LEN,
        };
        if len > MAX_FRAME_LEN {
            return Err(too_large);
        }
        let prefix = u32::try_from(len).map_err(|_| too_large)?;
        out[start..start + FRAME_PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Read and check a length prefix: the payload length that follows.
pub fn frame_len(prefix: [u8; FRAME_PREFIX_LEN]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            what: "frame",
            got: len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::Truncated {
            what: "frame",
            need: 1,
            have: 0,
        });
    }
    Ok(len)
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u16,
}

#[derive(Deserialize)]
struct TypeProbe {
    body: TypeProbeBody,
}

#[derive(Deserialize)]
struct TypeProbeBody {
    t: String,
}

/// Decode a frame payload (without its prefix). The length is checked first; an unknown
/// version or type gets its own error; envelopes inside are validated.
pub fn decode_frame(payload: &[u8]) -> Result<Frame, DecodeError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            what: "frame",
            got: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let frame: Frame = match codec::decode("frame", payload, MAX_FRAME_LEN) {
        Ok(f) => f,
        Err(e) => {
            // Classify: version first, then type, else the structural error.
            if let Ok(p) = codec::decode::<VersionProbe>("frame", payload, MAX_FRAME_LEN) {
                if p.v != PROTOCOL_VERSION {
                    return Err(DecodeError::UnsupportedVersion {
                        got: p.v,
                        supported: PROTOCOL_VERSION,
                    });
                }
            }
            if let Ok(p) = codec::decode::<TypeProbe>("frame", payload, MAX_FRAME_LEN) {
                if !FRAME_TYPES.contains(&p.body.t.as_str()) {
                    let mut t = p.body.t;
                    t.truncate(32);
                    return Err(DecodeError::UnknownFrameType(t));
                }
            }
            return Err(e);
        }
    };
    if frame.v != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            got: frame.v,
            supported: PROTOCOL_VERSION,
        });
    }
    match &frame.body {
        FrameBody::Send { envelope } | FrameBody::Deliver { envelope } => envelope.validate()?,
        _ => {}
    }
    Ok(frame)
}

/// A sans-I/O frame reader: feed it bytes as they arrive, take whole frames out.
/// It never buffers more than one prefix plus [`MAX_FRAME_LEN`] bytes.
///
/// Whole frames are consumed from the front of its buffer without moving the rest (the
/// consumed part is dropped when the buffer is refilled), so a chunk holding many
/// frames costs one copy in and one decode per frame.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The length of the frame whose prefix starts the unread bytes, if the prefix is in.
    fn current_len(&self) -> Result<Option<usize>, DecodeError> {
        let unread = self.unread();
        if unread.len() < FRAME_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        prefix.copy_from_slice(&unread[..FRAME_PREFIX_LEN]);
        frame_len(prefix).map(Some)
    }

    /// Bytes needed before the next frame could be complete (at least 1).
    pub fn wanted(&self) -> Result<usize, DecodeError> {
        let have = self.unread().len();
        Ok(match self.current_len()? {
            None => FRAME_PREFIX_LEN - have,
            Some(len) => (FRAME_PREFIX_LEN + len).saturating_sub(have).max(1),
        })
    }

    /// Append up to what the current frame needs from `data`; returns how many bytes were
    /// taken. Call [`FrameReader::next_frame`] after each push.
    pub fn push(&mut self, data: &[u8]) -> Result<usize, DecodeError> {
        if self.start > 0 {
            // Drop what was consumed before growing.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut taken = 0;
        while taken < data.len() {
            let want = match self.current_len()? {
                None => FRAME_PREFIX_LEN - self.buf.len(),
                Some(len) => {
                    let total = FRAME_PREFIX_LEN + len;
                    if self.buf.len() >= total {
                        break;
                    }
                    total - self.buf.len()
                }
            };
            let n = want.min(data.len() - taken);
            self.buf.extend_from_slice(&data[taken..taken + n]);
            taken += n;
        }
        Ok(taken)
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(len) = self.current_len()? else {
            return Ok(None);
        };
        let unread = self.unread();
        if unread.len() < FRAME_PREFIX_LEN + len {
            return Ok(None);
        }
        let frame = decode_frame(&unread[FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len]);
        self.start += FRAME_PREFIX_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        frame.map(Some)
    }
}

/// The bytes a device signs to authenticate on a connection.
pub fn auth_signature_message(exporter: &[u8; 32], nonce: &[u8; 32], device: &DeviceId) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_SIGNATURE_LABEL.len() + 80);
    m.extend_from_slice(AUTH_SIGNATURE_LABEL);
    m.extend_from_slice(exporter);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&device.0);
    m
}

/// The bytes a new device signs in `link_start`.
pub fn link_signature_message(exporter: &[u8; 32], account: &AccountId) -> Vec<u8> {
    let mut m = Vec::with_capacity(LINK_SIGNATURE_LABEL.len() + 32 + 2 + 64);
    m.extend_from_slice(LINK_SIGNATURE_LABEL);
    m.extend_from_slice(exporter);
    m.extend_from_slice(&(account.as_str().len() as u16).to_be_bytes());
    m.extend_from_slice(account.as_str().as_bytes());
    m
}

/// The bytes a recovered device signs to complete its recovery on a connection
/// (`link_complete`): `LINK_COMPLETE_SIGNATURE_LABEL || exporter || link_id`.
pub fn link_complete_signature_message(exporter: &[u8; 32], link_id: &[u8; 16]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LINK_COMPLETE_SIGNATURE_LABEL.len() + 32 + 16);
    m.extend_from_slice(LINK_COMPLETE_SIGNATURE_LABEL);
    m.extend_from_slice(exporter);
    m.extend_from_slice(link_id);
    m
}

/// The bytes a device signs to enrol on a connection.
pub fn enroll_signature_message(exporter: &[u8; 32], account: &AccountId, code: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENROLL_SIGNATURE_LABEL.len() + 32 + 2 + 64 + 2 + code.len());
    m.extend_from_slice(ENROLL_SIGNATURE_LABEL);
    m.extend_from_slice(exporter);
    // Length-prefixed so that (account, code) pairs cannot collide.
    m.extend_from_slice(&(account.as_str().len() as u16).to_be_bytes());
    m.extend_from_slice(account.as_str().as_bytes());
    m.extend_from_slice(&(code.len() as u16).to_be_bytes());
    m.extend_from_slice(code.as_bytes());
    m
}

#[cfg(test)]
mod error_code_tests {
    use super::ErrorCode;

    #[test]
    fn names_are_the_wire_names() {
        use ErrorCode::*;
        for code in [
            BadFrame,
            UnsupportedVersion,
            Unauthenticated,
            AuthFailed,
            EnrollmentRefused,
            Forbidden,
            NotFound,
            QuotaExceeded,
            TooLarge,
            RateLimited,
            Conflict,
            UnexpectedFrame,
            Internal,
        ] {
            let bytes = serde_cbor::to_vec(&code).unwrap();
            let wire: String = serde_cbor::from_slice(&bytes).unwrap();
            assert_eq!(code.name(), wire);
        }
    }
}
