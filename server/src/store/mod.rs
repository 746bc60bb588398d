//! Narrow storage traits for the relay, with an in-memory reference implementation
//! ([`memory::MemoryStore`]) and the embedded durable default ([`sqlite::SqliteStore`]).
//!
//! The relay is generic over these traits; a PostgreSQL implementation for several
//! relays follows the same contract (see `docs/OPERATIONS.md`). Every method that
//! changes state returns only after the change is durable (for SQLite: committed in WAL
//! mode with `synchronous = FULL`; commits of concurrent callers are grouped).
//!
//! Contract details every implementation must honour (checked by the shared conformance
//! tests in `server/tests/store_conformance.rs`):
//! * `redeem_enrollment` is atomic: a code is used at most once, even under concurrency.
//! * `take_bundle` hands each one-time prekey out at most once, even under concurrency,
//!   and falls back to the last-resort KEM prekey when the one-time ones run out.
//! * `enqueue` is idempotent per (recipient, message id, sender timestamp): a repeat
//!   (all three equal) stores nothing and is answered `duplicate = true` with the
//!   original sequence number, also after the original was acknowledged (until its
//!   expiry). An envelope with the same recipient and message id but another
//!   `timestamp_ms` is **not** a repeat: it is a new envelope with its own sequence
//!   number, acknowledged on its own (by that number), and its recipient drops it by
//!   message id (docs/PROTOCOL.md §18.3). A sender gains nothing by this that fresh
//!   message ids would not give it; quota and rate limits bound both. A repeat of an
//!   envelope still in flight, or one refused by the quota, is recognised before it is
//!   staged. The SQLite store recognises a repeat of an envelope already on disk only
//!   when it writes its batch (reading the disk before every push would cost more than
//!   the rest of a message): by then the repeat was staged, so `on_staged` ran with a
//!   sequence number that is never stored and the recipient may have been offered the
//!   copy. Delivery is at least once, and every client drops an envelope whose message
//!   id it has already processed (docs/PROTOCOL.md), so a repeat is never shown twice.
//! * Sequence numbers are per recipient device, start at 1 and increase in staging
//!   order (`on_staged` is called in that order). A number handed to a repeat that
//!   turned out to be on disk, or to an envelope of a batch that failed, is never
//!   stored: a reader that sees a gap reads the mailbox again.
//! * An envelope is visible to `pending` from the moment it is staged, and an
//!   acknowledgement takes effect for `pending` at once; both are durable when their
//!   futures resolve.
//! * An envelope stays until acknowledged by its recipient or expired.
//! * Every trust change ([`TrustStore`] appends and attestations) appends its
//!   transparency-log leaf in the same transaction ([`tlog`]).
//! * Trust records ([`TrustStore`]) only ever grow: roster versions are appended one
//!   version at a time and device-log entries one sequence number at a time, each
//!   atomically with its effects on the device table; nothing is rewritten. The store
//!   does not verify signatures (the relay verifies before it writes, and again from the
//!   pinned fingerprint when it starts).

pub mod blob;
pub mod events;
pub mod memory;
pub mod sqlite;
pub mod tlog;

use std::future::Future;
use std::sync::Arc;

use sealpost_protocol::envelope::{Envelope, MessageId};
use sealpost_protocol::identity::{AccountId, DeviceId, PublicIdentity};
use sealpost_protocol::prekeys::{KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey};
use sealpost_protocol::trust::{
    ClientAttestation, LogEntry, SignedRoster, MAX_LOG_ENTRIES, MAX_ROSTER_CHAIN_LEN,
};
use sealpost_protocol::wire::{Role, MAX_FRAME_LEN};

/// Most devices per account.
pub const MAX_DEVICES_PER_ACCOUNT: usize = sealpost_protocol::identity::MAX_DEVICES_PER_ACCOUNT;
/// Most one-time prekeys of each kind stored per device.
pub const MAX_STORED_ONE_TIME_PREKEYS: u32 = 1000;
/// Most roster versions stored (the protocol's chain bound).
pub const MAX_STORED_ROSTER_VERSIONS: u64 = MAX_ROSTER_CHAIN_LEN as u64;
/// Most device-log entries stored per account (the protocol's log bound).
pub const MAX_STORED_LOG_ENTRIES: u64 = MAX_LOG_ENTRIES as u64;
/// Largest encoded device-log entry stored (it arrived in one frame).
pub const MAX_LOG_ENTRY_BYTES: usize = MAX_FRAME_LEN;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record already exists.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The record does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The enrolment code is unknown, already used or expired (one error for all three,
    /// so the answer is no oracle).
    #[error("enrolment code is unknown, used or expired")]
    EnrollmentRefused,
    /// A bound was reached.
    #[error("quota exceeded: {what} ({current} of at most {max})")]
    QuotaExceeded {
        /// Which bound.
        what: &'static str,
        /// Current value.
        current: u64,
        /// The bound.
        max: u64,
    },
    /// The backend failed (I/O, corruption, closed). Details are logged, not sent to peers.
    #[error("storage backend failure: {0}")]
    Backend(String),
}

/// An account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    /// Its id.
    pub id: AccountId,
    /// Its role.
    pub role: Role,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Set and cleared by the account's device log (freeze, unfreeze): a frozen account
    /// may not send sensitive kinds of envelope.
    pub frozen: bool,
    /// Set and cleared by the operator (`sealpost-relay admin disable`/`enable`): a
    /// disabled account's devices cannot authenticate and their connections are closed.
    /// Nothing else changes (its mailboxes, log and assignments stay).
    pub disabled: bool,
}

/// An enrolment code as the operator sees it (never the code itself: only its hash is
/// stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeRecord {
    /// The account it enrols a first device into.
    pub account: AccountId,
    /// The first 6 bytes of the stored hash, hex: names the code for `admin revoke-code`.
    pub id: String,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Redeemed.
    pub used: bool,
}

/// Hex digits of a code hash that name it ([`CodeRecord::id`]).
pub const CODE_ID_HEX: usize = 12;

/// An enrolled device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its id (derived from its identity keys).
    pub id: DeviceId,
    /// Its account.
    pub account: AccountId,
    /// Its public identity.
    pub identity: PublicIdentity,
    /// Enrolment time, ms since the Unix epoch.
    pub enrolled_ms: u64,
    /// Revoked devices may not authenticate.
    pub revoked: bool,
}

/// Prekeys uploaded by a device (any subset).
#[derive(Clone, Debug, Default)]
pub struct PreKeyUpload {
    /// Replaces the current signed prekey.
    pub signed_prekey: Option<SignedPreKey>,
    /// Added to the one-time X25519 stock.
    pub one_time: Vec<OneTimePreKey>,
    /// Added to the one-time ML-KEM stock.
    pub kem_one_time: Vec<KemPreKey>,
    /// Replaces the last-resort ML-KEM prekey.
    pub kem_last_resort: Option<KemPreKey>,
}

/// One-time prekeys left for a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreKeyCounts {
    /// One-time X25519 prekeys.
    pub one_time: u32,
    /// One-time ML-KEM prekeys.
    pub kem_one_time: u32,
}

/// Per-recipient mailbox bounds, checked atomically with the insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most pending envelopes.
    pub max_count: u64,
    /// Most pending bytes (sum of envelope body lengths).
    pub max_bytes: u64,
}

/// Result of [`MailboxStore::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// The envelope's sequence number in its recipient's mailbox.
    pub seq: u64,
    /// True if this (recipient, message id, timestamp) was already stored; nothing
    /// changed.
    pub duplicate: bool,
}

/// Called with an envelope's sequence number once it is staged (see
/// [`MailboxStore::enqueue_with`]); returns true if it handed the envelope to its
/// recipient's live connection (a store may then wait a little for the acknowledgement
/// before it writes the envelope).
pub type OnStaged = Box<dyn FnOnce(u64) -> bool + Send + 'static>;

/// A pending envelope with its mailbox sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Sequence number in the recipient's mailbox.
    pub seq: u64,
    /// The envelope as sent.
    pub envelope: Envelope,
}

/// Mailbox totals, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Pending envelopes, all devices.
    pub count: u64,
    /// Pending body bytes, all devices.
    pub bytes: u64,
}

/// Accounts, enrolment codes, devices and assignments.
pub trait AccountStore: Send + Sync + 'static {
    /// Create an account. `Conflict` if it exists.
    fn create_account(
        &self,
        id: &AccountId,
        role: Role,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// An account, if it exists.
    fn account(
        &self,
        id: &AccountId,
    ) -> impl Future<Output = Result<Option<AccountRecord>, StoreError>> + Send;
    /// All accounts, ordered by id.
    fn list_accounts(&self) -> impl Future<Output = Result<Vec<AccountRecord>, StoreError>> + Send;
    /// Store the SHA-256 hash of a one-time enrolment code for `account`, valid until
    /// `expires_ms`. `NotFound` if the account does not exist.
    fn add_enrollment_code(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        expires_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Atomically: check the code (exists for this account, unused, `now_ms < expires`),
    /// mark it used and register the device. `EnrollmentRefused` for any code problem;
    /// `Conflict` if the device is already enrolled; `QuotaExceeded` past
    /// [`MAX_DEVICES_PER_ACCOUNT`]. On any error nothing changes (the code stays usable).
    fn redeem_enrollment(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        identity: &PublicIdentity,
        now_ms: u64,
    ) -> impl Future<Output = Result<DeviceRecord, StoreError>> + Send;
    /// A device, if enrolled.
    fn device(
        &self,
        id: &DeviceId,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StoreError>> + Send;
    /// The devices of an account (revoked ones included), ordered by enrolment time.
    fn devices_of(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, StoreError>> + Send;
    /// Assign a client to an advisor or staff account (idempotent).
    fn assign(
        &self,
        client: &AccountId,
        staff: &AccountId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Remove an assignment; true if it existed.
    fn unassign(
        &self,
        client: &AccountId,
        staff: &AccountId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Whether `client` is assigned to `staff`.
    fn is_assigned(
        &self,
        client: &AccountId,
        staff: &AccountId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The accounts `account` is assigned to (for a client) or has assigned (for staff).
    fn assignments_of(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<Vec<AccountId>, StoreError>> + Send;
    /// Client accounts with an id after `after` (all when `None`), ascending by id (byte
    /// order), at most `limit` of them.
    fn clients_after(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AccountId>, StoreError>> + Send;
    /// Disable or re-enable an account; true if that changed it. `NotFound("account")`.
    fn set_account_disabled(
        &self,
        id: &AccountId,
        disabled: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The accounts the operator disabled, ordered by id.
    fn disabled_accounts(&self) -> impl Future<Output = Result<Vec<AccountId>, StoreError>> + Send;
    /// Enrolment codes (of `account`, or all), ordered by account then id.
    fn enrollment_codes(
        &self,
        account: Option<&AccountId>,
    ) -> impl Future<Output = Result<Vec<CodeRecord>, StoreError>> + Send;
    /// Delete the unused codes of `account` whose [`CodeRecord::id`] starts with
    /// `id_prefix` (every unused code of the account when `None`); returns how many.
    /// Redeemed codes stay (they are the record of the account's enrolment).
    fn revoke_enrollment_codes(
        &self,
        account: &AccountId,
        id_prefix: Option<&str>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The prekey directory.
pub trait PreKeyStore: Send + Sync + 'static {
    /// Add or replace prekeys for an enrolled device (signatures already verified by the
    /// caller). One-time stock beyond [`MAX_STORED_ONE_TIME_PREKEYS`] of either kind is
    /// `QuotaExceeded` and nothing is stored. A one-time prekey id already stored for the
    /// device is `Conflict`. Returns the stock afterwards.
    fn put_prekeys(
        &self,
        device: &DeviceId,
        upload: PreKeyUpload,
    ) -> impl Future<Output = Result<PreKeyCounts, StoreError>> + Send;
    /// Atomically build a bundle for `device`, removing the one-time X25519 prekey and the
    /// one-time ML-KEM prekey it hands out (falling back to no one-time X25519 prekey and
    /// to the last-resort ML-KEM prekey when none are left). `None` if the device has no
    /// signed prekey or no ML-KEM prekey at all. Returns the stock afterwards.
    fn take_bundle(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Option<(PreKeyBundle, PreKeyCounts)>, StoreError>> + Send;
    /// The stock of one-time prekeys.
    fn prekey_counts(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<PreKeyCounts, StoreError>> + Send;
}

/// Store-and-forward mailboxes.
pub trait MailboxStore: Send + Sync + 'static {
    /// Durably store an envelope for `envelope.header.recipient`, idempotent per
    /// (recipient, message id, timestamp) (see the module documentation), within
    /// `quota` (else `QuotaExceeded`, nothing stored).
    ///
    /// Two moments matter, and the relay uses both:
    /// * **staged**: the envelope has its sequence number and is visible to
    ///   [`MailboxStore::pending`]; `on_staged(seq)` is called then, exactly once, and
    ///   never for a refused envelope or a repeat recognised before staging (see the
    ///   module documentation for repeats of envelopes already on disk). Calls for one
    ///   recipient happen in sequence order, so the relay pushes to an online recipient
    ///   from there without waiting for the disk.
    /// * **durable**: the returned future resolves only once the envelope (or, if the
    ///   recipient acknowledged it in the meantime, its tombstone) is committed. Only
    ///   then may the sender be told it was accepted.
    ///
    /// A backend failure between the two loses a staged envelope that the sender was
    /// never told was accepted (it retries; recipients deduplicate by message id).
    /// `on_staged` runs under the store's internal lock: it must be quick and must not
    /// call back into the store.
    fn enqueue_with(
        &self,
        envelope: Arc<Envelope>,
        expires_ms: u64,
        quota: Quota,
        on_staged: OnStaged,
    ) -> impl Future<Output = Result<Enqueued, StoreError>> + Send;
    /// [`MailboxStore::enqueue_with`] without a staged hook.
    fn enqueue(
        &self,
        envelope: &Envelope,
        expires_ms: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Enqueued, StoreError>> + Send {
        self.enqueue_with(
            Arc::new(envelope.clone()),
            expires_ms,
            quota,
            Box::new(|_| false),
        )
    }
    /// Pending envelopes of `device` with `seq > after_seq`, in sequence order, at most `limit`.
    fn pending(
        &self,
        device: &DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Pending>, StoreError>> + Send;
    /// Delete an envelope its recipient acknowledged, given the message id and the
    /// sequence number it was delivered under (both must match); true if it was
    /// pending. Takes effect for `pending` at once; resolves once durable. An envelope
    /// acknowledged before it was committed is never written: only its tombstone is.
    fn ack(
        &self,
        device: &DeviceId,
        message_id: &MessageId,
        seq: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Delete envelopes whose expiry is `<= now_ms`; returns how many.
    fn expire(&self, now_ms: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Totals for metrics.
    fn queue_stats(&self) -> impl Future<Output = Result<QueueStats, StoreError>> + Send;
    /// Make everything acknowledged so far durable and release resources (shutdown).
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A device that a device-log entry adds (or recovers into) an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedDevice {
    /// Its identity.
    pub identity: PublicIdentity,
    /// The entry's timestamp (ms since the Unix epoch): becomes its `enrolled_ms`.
    pub added_ms: u64,
}

/// What an appended device-log entry changes, applied in the same transaction as the
/// entry itself. Computed by the relay from the verified log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogEffects {
    /// The device an `add` or `recover` registers (it can authenticate afterwards).
    pub register: Option<LoggedDevice>,
    /// Devices revoked by the log (removed, recovered away, or on probation at a
    /// freeze). Already-revoked ones are left as they are.
    pub revoke: Vec<DeviceId>,
    /// The account's frozen flag after the entry.
    pub frozen: bool,
}

/// Roster versions and account device logs.
pub trait TrustStore: Send + Sync + 'static {
    /// Append roster version `link.roster.version()`, which must be exactly the newest
    /// stored version plus one (1 for the first): otherwise `Conflict("roster version")`
    /// and nothing changes. `QuotaExceeded` past [`MAX_STORED_ROSTER_VERSIONS`].
    fn append_roster(
        &self,
        link: &SignedRoster,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Roster versions after `after_version`, in order, at most `limit`.
    fn rosters_after(
        &self,
        after_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<SignedRoster>, StoreError>> + Send;
    /// Entries of `account`'s device log with `seq >= from_seq`, in order, at most `limit`.
    fn device_log(
        &self,
        account: &AccountId,
        from_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LogEntry>, StoreError>> + Send;
    /// As [`TrustStore::device_log`], each entry with when the relay appended it (the
    /// `now_ms` given to [`TrustStore::append_device_log`] or
    /// [`TrustStore::enroll_first_device`]), read together so that entries and times
    /// always match.
    fn device_log_timed(
        &self,
        account: &AccountId,
        from_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(LogEntry, u64)>, StoreError>> + Send;
    /// How many entries `account`'s device log holds.
    fn device_log_len(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Atomically append `entry` to the log of `entry.body.account` and apply `effects`.
    /// `NotFound("account")` if the account does not exist; `Conflict("device log
    /// entry")` unless `entry.body.seq` equals the log's length; `Conflict("device")` if
    /// the registered device is enrolled in another account or was revoked;
    /// `QuotaExceeded` past [`MAX_STORED_LOG_ENTRIES`]. On any error nothing changes.
    fn append_device_log(
        &self,
        entry: &LogEntry,
        effects: &LogEffects,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Enrol an account's first device: atomically check the code as
    /// [`AccountStore::redeem_enrollment`] does, refuse (`EnrollmentRefused`) if the
    /// account already has device-log entries, mark the code used, register `identity`
    /// and store `genesis` as entry 0. On any error nothing changes.
    fn enroll_first_device(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        identity: &PublicIdentity,
        genesis: &LogEntry,
        now_ms: u64,
    ) -> impl Future<Output = Result<DeviceRecord, StoreError>> + Send;
    /// Store the firm's attestation of `attestation.account`'s first device (verified by
    /// the relay). `NotFound("account")` if the account does not exist;
    /// `Conflict("attestation")` if the account already has one (the first stays: an
    /// account has one genesis entry). Durable when it resolves.
    fn put_attestation(
        &self,
        attestation: &ClientAttestation,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The attestation of `account`'s first device, if any.
    fn attestation(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<Option<ClientAttestation>, StoreError>> + Send;
    /// Client accounts with an id after `after` (all when `None`) that have a device log
    /// (at least one entry) and no attestation, ascending by id, at most `limit`.
    fn unattested_clients_after(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AccountId>, StoreError>> + Send;
}

/// The device a genesis entry adds.
pub(crate) fn genesis_device(entry: &LogEntry) -> Option<DeviceId> {
    match &entry.body.action {
        sealpost_protocol::trust::DeviceAction::Add { identity }
        | sealpost_protocol::trust::DeviceAction::Recover { identity } => {
            Some(identity.device_id())
        }
        _ => None,
    }
}

/// The leaves an enrolment appends: the code redeemed, then the genesis entry's head.
pub(crate) fn enrollment_leaves(
    account: &AccountId,
    identity: &PublicIdentity,
    genesis: &LogEntry,
    now_ms: u64,
) -> [sealpost_protocol::tlog::LogLeaf; 2] {
    use sealpost_protocol::tlog::{Actor, LeafEvent, LogLeaf};
    let redeemed = LogLeaf::new(
        now_ms,
        Actor::Account(account.clone()),
        LeafEvent::EnrollmentRedeemed {
            account: account.clone(),
            device: identity.device_id(),
        },
    );
    [redeemed, LogLeaf::device_log_head(genesis, now_ms)]
}

/// Everything the relay needs from storage.
pub trait Store: AccountStore + PreKeyStore + MailboxStore + TrustStore + tlog::TlogStore {}
impl<T: AccountStore + PreKeyStore + MailboxStore + TrustStore + tlog::TlogStore> Store for T {}
