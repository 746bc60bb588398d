//! Trust on the client (docs/PROTOCOL.md §19): the roster chain verified from the pinned
//! organisation fingerprint, every account's device log verified before this device
//! encrypts to it or trusts a message from it, linking a new device, and the device
//! commands (list, revoke, freeze).
//!
//! * **Roster.** Fetched from the cached head (`get_roster`), verified with
//!   [`RosterChain::verify`] from the pinned fingerprint and the cached [`RosterHead`]; a
//!   rollback (the relay's latest is older than what this device verified), a fork or a
//!   forged link is refused, reported as [`Event::TrustRefused`] and returned as
//!   [`ClientError::Trust`]. Refreshed after [`ROSTER_TTL_MS`], on demand (a notice or
//!   request under an unknown version) and whenever a log names an unknown version.
//! * **Device logs.** Fetched whole and verified ([`DeviceLog::verify`]) against the head
//!   this device verified before (rollback and fork refused). The verified set is cached
//!   for [`LOG_TTL_MS`] and refetched on a `device_log_changed` push, on a message from a
//!   device it does not list, and when the cache lapses. Only its active devices are
//!   encrypted to; a device the relay lists (directory or bundles) that the log does not is
//!   reported as [`Event::UntrustedDevice`] and never used.
//! * **Linking.** The new device calls [`Client::link_start`] and then
//!   [`Client::link_progress`] until it is linked; an existing device calls
//!   [`Client::pending_links`], [`Client::offer_link`] and, once the user has typed the code
//!   the new device shows, [`Client::confirm_link`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use rand::rngs::OsRng;
use sealpost_protocol::envelope::EnvelopeKind;
use sealpost_protocol::identity::{AccountId, DeviceId, PublicIdentity};
use sealpost_protocol::tlog::SignedCheckpoint;
use sealpost_protocol::trust::{
    first_contact, DeviceAction, DeviceLog, DeviceSet, Digest, EntryAuthorization, EntryBody,
    EntryTimes, LinkChallenge, LinkCode, LinkCommitment, LinkNonce, LogEntry, LogHead, RosterChain,
    RosterHead, SendDecision, SignedRoster, Standing, TrustError, MAX_COOLING_OFF_MS,
};
use sealpost_protocol::wire::{ErrorCode, Role};

use crate::transparency::Claim;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
#[cfg(doc)]
use crate::backoff::{MAX_RECONNECT_DELAY, RECONNECT_DELAY};
use crate::client::{Client, ClientError, Contact, Event, KnownDevice, RelayInfo};
use crate::clock::now_ms;
use crate::net::{NetError, RelayConnection, ServedLog};

/// A verified device set is reused for this long before the log is fetched again.
pub const LOG_TTL_MS: u64 = 30_000;
/// The roster is fetched again after this long.
pub const ROSTER_TTL_MS: u64 = 60_000;
/// Accounts whose verified device set is kept in memory.
pub const MAX_CACHED_SETS: usize = 4096;
/// Accounts whose log head is remembered (persisted).
pub const MAX_LOG_HEADS: usize = 10_000;
/// Link offers this device keeps open at once.
pub const MAX_LINK_OFFERS: usize = 8;
/// Link offers lapse after this long (the relay drops the link after 24 hours).
pub const LINK_OFFER_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// How often a linking device polls the relay (`link_poll`) during its first
/// [`LINK_POLL_FAST_FOR`], when the other device is most likely being used right now.
pub const LINK_POLL_INTERVAL: Duration = Duration::from_millis(300);
/// How long after `link_start` a linking device polls every [`LINK_POLL_INTERVAL`].
pub const LINK_POLL_FAST_FOR: Duration = Duration::from_secs(3);
/// How often a linking device polls after that (a recovery may wait hours for its
/// approvals). Pre-authentication link requests are limited per IP address by the relay
/// (`link_requests_per_ip`, by default 1 a second with a burst of 30): the fast phase
/// spends 11 of the burst (`link_start` and 10 polls), and this is a third of the
/// sustained rate, so even two devices linking from one address at once stay well
/// inside the limit, however long they wait.
pub const LINK_POLL_SLOW_INTERVAL: Duration = Duration::from_secs(3);
/// Longest pause a `rate_limited` answer's `retry_after_ms` is honoured for before the
/// next poll.
pub const MAX_LINK_RETRY_PAUSE: Duration = Duration::from_secs(60);
/// Longest a single wait for the other device may be asked to last.
pub const MAX_LINK_WAIT: Duration = Duration::from_secs(15 * 60);
/// Device logs fetched again after a reconnect because they moved while this device was
/// offline, at most (the others are verified when next used).
pub const MAX_LOG_CATCH_UP: usize = 512;
/// Untrusted devices reported once per account and device per run, at most this many.
const MAX_REPORTED_UNTRUSTED: usize = 4096;

/// The verified head of an account's device log, as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogHeadRecord {
    /// The account.
    pub account: AccountId,
    /// The last entry's sequence number.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    /// Whether the verified log left the account frozen ([`Event::FreezeChanged`] is
    /// reported when this changes).
    #[serde(default)]
    pub frozen: bool,
    /// When this device first saw entries it learnt beyond a head it had pinned:
    /// `(seq, ms)`, kept while they could still lengthen a cooling-off (at most
    /// [`MAX_FIRST_SEEN`] per account). Probation runs from no earlier than these in this
    /// device's eyes (docs/PROTOCOL.md §19.3, "Effective time").
    #[serde(default)]
    pub first_seen: Vec<(u64, u64)>,
}

/// First-seen times kept per account.
pub const MAX_FIRST_SEEN: usize = 64;

/// What this device offered to a linking device, kept until it is confirmed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkOfferRecord {
    /// The link.
    #[serde(with = "serde_bytes")]
    pub link_id: Vec<u8>,
    /// The account the device joins.
    pub account: AccountId,
    /// The identity the relay presented for the new device (what the code covers).
    pub identity: PublicIdentity,
    /// The challenge this device chose after it received that identity.
    pub challenge: LinkChallenge,
    /// The new device's commitment to its nonce, as received with the identity before the
    /// challenge was chosen (the revealed nonce must open it). None in offers saved by an
    /// older version: those are offered again.
    #[serde(default)]
    pub commitment: Option<LinkCommitment>,
    /// The entry body offered (an add, or a recovery offered by staff).
    pub body: EntryBody,
    /// When the offer was made.
    pub created_ms: u64,
}

/// In-memory trust state: the verified roster chain and device sets.
#[derive(Default)]
pub(crate) struct TrustCache {
    chain: Option<RosterChain>,
    /// Links restored from the profile, verified on first use.
    stored_links: Vec<SignedRoster>,
    pub(crate) roster_head: Option<RosterHead>,
    roster_checked_ms: u64,
    heads: BTreeMap<AccountId, LogHead>,
    /// When this device first saw entries beyond a head it had pinned, by account.
    first_seen: BTreeMap<AccountId, BTreeMap<u64, u64>>,
    /// How this device's own account stands with the firm (None: not known yet, or no
    /// organisation), from its last verified log.
    pub(crate) own_standing: Option<Result<Standing, TrustError>>,
    /// Accounts whose verified log (at the head in `heads`) left them frozen, persisted
    /// beside the heads, so that a freeze is reported once and not on every run.
    frozen: BTreeSet<AccountId>,
    sets: HashMap<AccountId, (DeviceSet, u64)>,
    reported: HashSet<(AccountId, DeviceId)>,
    /// The transparency-log checkpoint this device accepted last (persisted as its note):
    /// every later proof must extend it (docs/PROTOCOL.md §21.6).
    pub(crate) checkpoint: Option<SignedCheckpoint>,
    /// Peers' checkpoints (size, root) proven to be prefixes of `checkpoint`
    /// ([`crate::logcheck::MAX_PROVEN_PREFIXES`] at most).
    pub(crate) proven_prefixes: BTreeSet<(u64, [u8; 32])>,
}

impl TrustCache {
    pub(crate) fn restore(
        links: Vec<SignedRoster>,
        head: Option<RosterHead>,
        heads: Vec<LogHeadRecord>,
        checkpoint: Option<&str>,
    ) -> Self {
        // The profile is encrypted and authenticated: a note that no longer parses means a
        // format this build does not know; the next proof starts from none.
        let checkpoint = checkpoint.and_then(|n| SignedCheckpoint::parse(n.as_bytes()).ok());
        let frozen = heads
            .iter()
            .filter(|r| r.frozen)
            .map(|r| r.account.clone())
            .collect();
        let first_seen = heads
            .iter()
            .filter(|r| !r.first_seen.is_empty())
            .map(|r| (r.account.clone(), r.first_seen.iter().copied().collect()))
            .collect();
        let heads = heads
            .into_iter()
            .filter_map(|r| {
                let hash: [u8; 32] = r.hash.as_slice().try_into().ok()?;
                Some((
                    r.account,
                    LogHead {
                        seq: r.seq,
                        hash: Digest(hash),
                    },
                ))
            })
            .collect();
        Self {
            stored_links: links,
            roster_head: head,
            heads,
            frozen,
            first_seen,
            checkpoint,
            ..Self::default()
        }
    }

    pub(crate) fn roster_links(&self) -> Vec<SignedRoster> {
        match &self.chain {
            Some(c) => c.links().to_vec(),
            None => self.stored_links.clone(),
        }
    }

    pub(crate) fn head_records(&self) -> Vec<LogHeadRecord> {
        self.heads
            .iter()
            .map(|(a, h)| LogHeadRecord {
                account: a.clone(),
                seq: h.seq,
                hash: h.hash.0.to_vec(),
                frozen: self.frozen.contains(a),
                first_seen: self
                    .first_seen
                    .get(a)
                    .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    pub(crate) fn chain(&self) -> Option<&RosterChain> {
        self.chain.as_ref()
    }

    /// The head of the roster chain this device verified last: the verified chain's, or
    /// (before it is fetched again this session) the last link of the chain the profile
    /// holds, which this device verified before saving it.
    pub(crate) fn head_roster(&self) -> Option<&sealpost_protocol::trust::Roster> {
        match &self.chain {
            Some(c) => Some(c.head()),
            None => self.stored_links.last().map(|l| &l.roster),
        }
    }

    /// The head of `account`'s log this device verified last.
    pub(crate) fn head(&self, account: &AccountId) -> Option<&LogHead> {
        self.heads.get(account)
    }

    pub(crate) fn set(&self, account: &AccountId) -> Option<&DeviceSet> {
        self.sets.get(account).map(|(s, _)| s)
    }

    pub(crate) fn clear_sets(&mut self) {
        self.sets.clear();
    }

    fn forget_set(&mut self, account: &AccountId) {
        self.sets.remove(account);
    }
}

/// The offer this (new) device signed, as persisted.
#[derive(Clone, Serialize, Deserialize)]
pub struct SignedOfferRecord {
    /// The hash of the body signed.
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    /// The challenge it came with.
    pub challenge: LinkChallenge,
    /// `add` or `recover`.
    pub action: String,
}

/// A link this (new) device started and has not completed, kept in its profile so that a
/// later run (`sealpost device link` again, or any command) finishes it: a confirmation
/// given while this device was offline is learnt when it comes back (docs/PROTOCOL.md
/// §19.4, "Waiting at human speed"). Holds the link nonce (secret until revealed): it
/// lives only in the encrypted profile and has no `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct NewLinkRecord {
    /// The relay (pinned as at enrolment).
    pub relay: RelayInfo,
    /// The account this device asked to join.
    pub account: AccountId,
    /// The link id.
    #[serde(with = "serde_bytes")]
    pub link_id: Vec<u8>,
    /// When the request lapses unless offered on.
    pub expires_ms: u64,
    /// The nonce committed to in `link_start`; revealed once, with the first signature.
    pub nonce: LinkNonce,
    /// The offer this device signed, if any.
    #[serde(default)]
    pub signed: Option<SignedOfferRecord>,
    /// A recovery: its quorum authorised the entry and this device is completing it
    /// (stored before `link_complete` is sent, so that a crash or a lost connection after
    /// the relay appended the entry still ends with this device in the account).
    #[serde(default)]
    pub completing: bool,
}

impl NewLinkRecord {
    fn id(&self) -> [u8; 16] {
        <[u8; 16]>::try_from(self.link_id.as_slice()).unwrap_or_default()
    }
}

/// A link this (new) device started and has not completed.
pub(crate) struct NewDeviceLink {
    pub(crate) record: NewLinkRecord,
    /// The connection, while one is open (reconnected as needed).
    conn: Option<RelayConnection>,
    /// The relay refused `link_start` because this identity is already registered: the
    /// link was confirmed while this device was away; it only has to authenticate.
    registered: bool,
    /// When polling started in this run (the poll schedule runs from it).
    started: tokio::time::Instant,
    /// The next `link_poll` (or reconnection) is not attempted before this (kept across
    /// `link_progress` calls, so a caller that calls it in a loop cannot poll faster).
    next_poll: tokio::time::Instant,
    /// The pauses between reconnection attempts ([`Backoff::reconnect`]: exponential
    /// with jitter, [`RECONNECT_DELAY`] to [`MAX_RECONNECT_DELAY`]).
    reconnect: Backoff,
}

impl NewDeviceLink {
    /// A link restored from the profile: polled on the slow schedule, connected on demand.
    pub(crate) fn restored(record: NewLinkRecord) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            record,
            conn: None,
            registered: false,
            started: now.checked_sub(LINK_POLL_FAST_FOR).unwrap_or(now),
            next_poll: now,
            reconnect: Backoff::reconnect(),
        }
    }

    /// The connection was lost (or never made): try again after the backoff.
    fn lost(&mut self) {
        self.conn = None;
        self.next_poll = tokio::time::Instant::now() + self.reconnect.next_pause();
    }
}

/// How long a linking device waits after a `link_poll` sent `since_start` after its
/// `link_start`: [`LINK_POLL_INTERVAL`] during the first [`LINK_POLL_FAST_FOR`], then
/// [`LINK_POLL_SLOW_INTERVAL`].
pub fn link_poll_delay(since_start: Duration) -> Duration {
    if since_start < LINK_POLL_FAST_FOR {
        LINK_POLL_INTERVAL
    } else {
        LINK_POLL_SLOW_INTERVAL
    }
}

/// What a new device shows after [`Client::link_start`].
#[derive(Clone, Debug, Serialize)]
pub struct LinkTicket {
    /// The link id, hex.
    pub link_id: String,
    /// The account it asks to join.
    pub account: AccountId,
    /// This device's fingerprint (the existing device shows it too).
    pub fingerprint: String,
    /// When the request lapses (ms since the Unix epoch).
    pub expires_ms: u64,
    /// The request was started by an earlier run of this profile and is resumed (or the
    /// relay already registered this device: it only has to authenticate).
    pub resumed: bool,
}

/// Where a link stands on the new device.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkProgress {
    /// No offer (or nothing new) yet.
    Waiting,
    /// An existing device (or, for a recovery, a staff member) offered an entry; this
    /// device checked that it adds exactly this identity to this account and signed it.
    /// Show `code`: the user types it into the existing device (or reads it to staff).
    Offered {
        /// The six digits.
        code: String,
        /// `add` or `recover`.
        action: String,
    },
    /// The entry is in the account's log: this device is authenticated, its prekeys are
    /// published and the profile is saved.
    Completed {
        /// The account's role.
        role: Role,
    },
}

/// A pending link request, as an existing device (or staff) sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PendingLinkView {
    /// The link id, hex.
    pub link_id: String,
    /// The account.
    pub account: AccountId,
    /// The device that asks to join.
    pub device: DeviceId,
    /// Its fingerprint.
    pub fingerprint: String,
    /// When it asked.
    pub created_ms: u64,
    /// This device has an open offer for it.
    pub offered_by_me: bool,
    /// The new device signed the current offer.
    pub signed: bool,
}

/// A device in a verified log.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceView {
    /// The device.
    pub device: DeviceId,
    /// Its fingerprint.
    pub fingerprint: String,
    /// When it was added.
    pub added_ms: u64,
    /// End of its cooling-off window.
    pub probation_until_ms: u64,
    /// Still on probation (may not send sensitive kinds).
    pub on_probation: bool,
    /// This is the device running this client.
    pub this_device: bool,
}

/// An account's devices, from its verified log.
#[derive(Clone, Debug, Serialize)]
pub struct AccountDevices {
    /// The account.
    pub account: AccountId,
    /// Frozen ("this wasn't me") until a staff quorum unfreezes it.
    pub frozen: bool,
    /// Active devices.
    pub devices: Vec<DeviceView>,
    /// Revoked devices.
    pub revoked: Vec<DeviceId>,
    /// Entries in the log.
    pub log_entries: u64,
}

pub(crate) fn parse_link_id(hex_id: &str) -> Result<[u8; 16], ClientError> {
    hex_id
        .trim()
        .parse::<sealpost_protocol::hexid::Hex16>()
        .map(|h| h.into_bytes())
        .map_err(|e| ClientError::Invalid(format!("bad link id: {e}")))
}

fn device_view(d: &sealpost_protocol::trust::DeviceState, me: DeviceId) -> DeviceView {
    let id = d.identity.device_id();
    DeviceView {
        device: id,
        fingerprint: d.identity.fingerprint().to_string(),
        added_ms: d.added_ms,
        probation_until_ms: d.probation_until_ms,
        on_probation: d.on_probation,
        this_device: id == me,
    }
}

impl Client {
    /// The verified roster chain, if the organisation has one (newer versions fetched from
    /// the relay now and verified; see the module documentation).
    pub async fn roster(&mut self) -> Result<Option<&RosterChain>, ClientError> {
        self.refresh_roster(true).await?;
        Ok(self.trust.chain())
    }

    /// The roster chain as last verified, without asking the relay.
    pub fn cached_roster(&self) -> Option<&RosterChain> {
        self.trust.chain()
    }

    /// Fetch newer roster versions from the cached head and verify the chain.
    pub(crate) async fn refresh_roster(&mut self, force: bool) -> Result<(), ClientError> {
        let Some(pinned) = self
            .relay
            .as_ref()
            .map(RelayInfo::org)
            .transpose()?
            .flatten()
        else {
            return Ok(());
        };
        let now = now_ms();
        if !force
            && self.trust.chain.is_some()
            && now.saturating_sub(self.trust.roster_checked_ms) < ROSTER_TTL_MS
        {
            return Ok(());
        }
        let held = self.trust.roster_head;
        let after = held.map_or(0, |h| h.version);
        let (fresh, latest) = self.conn()?.get_roster_after(after).await?;
        if latest < after {
            return Err(self.roster_refused(TrustError::RosterRollback {
                held: after,
                got: latest,
            }));
        }
        if fresh.is_empty() && self.trust.chain.is_some() {
            self.trust.roster_checked_ms = now;
            return Ok(());
        }
        let mut links = self.trust.roster_links();
        links.extend(fresh);
        if links.is_empty() {
            // The organisation has not published a roster yet.
            self.trust.roster_checked_ms = now;
            return Ok(());
        }
        match RosterChain::verify(&pinned, links, held.as_ref(), now) {
            Ok(chain) => {
                let head = chain.head_ref();
                // A roster version this device accepts for the first time must be in the
                // transparency log its own policy names (§21.6).
                if held.is_none_or(|h| h.version < head.version) {
                    if let Some(policy) = chain.head().policy().transparency.clone() {
                        let policy = self.as_checked_here(policy);
                        let claim = Claim::Roster {
                            version: head.version,
                            hash: chain.head().hash().0,
                        };
                        self.prove_in_log(&policy, claim).await?;
                    }
                }
                if held.is_none_or(|h| h.version < head.version) {
                    self.events.push(Event::RosterUpdated {
                        version: head.version,
                    });
                    // The firm's archive (§22): a change is announced to every device;
                    // the first roster a device verifies announces it as the disclosure.
                    let before = self
                        .trust
                        .chain
                        .as_ref()
                        .and_then(|c| c.head().policy().archive.clone());
                    let after = chain.head().policy().archive.clone();
                    if before != after {
                        self.events.push(crate::archive::changed_event(
                            before.as_ref(),
                            after.as_ref(),
                            head.version,
                        ));
                    }
                    // Cooling-off windows and sensitive kinds come from the roster:
                    // every cached device set is verified again under the new one.
                    self.trust.sets.clear();
                }
                self.trust.roster_head = Some(head);
                self.trust.chain = Some(chain);
                self.trust.stored_links.clear();
                self.trust.roster_checked_ms = now;
                self.save()?;
                Ok(())
            }
            Err(e) => Err(self.roster_refused(e)),
        }
    }

    /// Pin the organisation fingerprint on a device enrolled before its relay had an
    /// organisation: only when none is pinned (a pinned fingerprint never changes), and
    /// only if the relay announces the same one (or none yet) and the roster it serves, if
    /// any, verifies from it. Nothing is pinned otherwise. Returns the verified roster
    /// version (0: none published yet).
    pub async fn pin_org(&mut self, fingerprint: &str) -> Result<u64, ClientError> {
        let current = self.relay.clone().ok_or(ClientError::NotEnrolled)?;
        if current.org_fingerprint.is_some() {
            return Err(ClientError::NotAllowed(
                "this device already pins an organisation fingerprint; it never changes".into(),
            ));
        }
        let mut pinned = current.clone();
        pinned.org_fingerprint = Some(fingerprint.trim().to_owned());
        let Some(fp) = pinned.org()? else {
            return Err(ClientError::Invalid("no fingerprint given".into()));
        };
        pinned.org_fingerprint = Some(fp.to_hex());
        crate::client::check_relay_org(self.conn()?, &pinned).await?;
        self.relay = Some(pinned);
        match self.refresh_roster(true).await {
            Ok(()) => {
                self.save()?;
                Ok(self.trust.chain().map_or(0, |c| c.head().version()))
            }
            Err(e) => {
                self.relay = Some(current);
                self.trust.chain = None;
                self.trust.roster_head = None;
                Err(e)
            }
        }
    }

    /// After a reconnect: the relay gives the lengths of the device logs whose changes it
    /// pushes to this device (`get_log_heads`: its own account's and, for staff and
    /// advisors, those of their assigned clients). Every log whose length differs from the
    /// head this device verified is fetched and verified again, raising what the lost
    /// pushes would have raised ([`Event::DeviceAdded`], [`Event::FreezeChanged`], ...),
    /// handed out with the next events. Logs this device never verified are left to be
    /// verified when first used; at most [`MAX_LOG_CATCH_UP`] logs per connection. Best
    /// effort: a failure leaves the regular refresh ([`LOG_TTL_MS`]) to notice.
    pub(crate) async fn catch_up_logs(&mut self) {
        let heads = match self.conn() {
            Ok(conn) => conn.log_heads().await,
            Err(_) => return,
        };
        let Ok(heads) = heads else { return };
        let moved: Vec<AccountId> = heads
            .into_iter()
            .filter(|h| {
                self.trust
                    .heads
                    .get(&h.account)
                    .is_some_and(|held| held.seq.saturating_add(1) != h.entries)
            })
            .map(|h| h.account)
            .take(MAX_LOG_CATCH_UP)
            .collect();
        if !moved.is_empty() {
            // The entries may be dated under a roster version this device has not seen
            // (cooling-off windows come from the roster).
            let _ = self.refresh_roster(true).await;
        }
        for account in moved {
            // A refused log was reported by `load_log` (TrustRefused); anything else is
            // left to the next refresh.
            if let Ok(evs) = self.refresh_devices(&account, true).await {
                self.events.extend(evs);
            }
        }
        let _ = self.save();
    }

    fn roster_refused(&mut self, e: TrustError) -> ClientError {
        self.events.push(Event::TrustRefused {
            subject: "roster".into(),
            reason: e.to_string(),
        });
        ClientError::Trust(e)
    }

    /// Fetch and verify `account`'s whole log against the head verified before; update
    /// the caches and the contact's devices; report what changed.
    pub(crate) async fn load_log(
        &mut self,
        account: &AccountId,
    ) -> Result<(DeviceLog, DeviceSet, Vec<Event>), ClientError> {
        self.refresh_roster(false).await?;
        let ServedLog {
            log,
            appended_ms,
            attestation,
        } = self.conn()?.get_served_log(account).await?;
        let held = self.trust.heads.get(account).copied();
        let now = now_ms();
        // Entries beyond the head this device had pinned are seen now for the first time
        // (unless seen before): probation runs from no earlier than this, in its eyes.
        let mut first_seen = self
            .trust
            .first_seen
            .get(account)
            .cloned()
            .unwrap_or_default();
        if let Some(h) = held {
            let len = log.entries.as_slice().len() as u64;
            for seq in h.seq.saturating_add(1)..len {
                first_seen.entry(seq).or_insert(now);
            }
        }
        first_seen.retain(|_, t| t.saturating_add(MAX_COOLING_OFF_MS) > now);
        while first_seen.len() > MAX_FIRST_SEEN {
            first_seen.pop_first();
        }
        let pinned = self.pinned_org()?;
        let own = self.account.as_ref() == Some(account);
        if pinned && !own && self.trust.chain().is_none() {
            // The first-contact rule needs the roster: it may have been published since.
            self.refresh_roster(true).await?;
        }
        // The attestation's date bounds the first device's probation only if it is valid
        // for this log (checked again by the first-contact rule below).
        let attested_ms = match (
            self.trust.chain(),
            attestation.as_ref(),
            log.entries.as_slice().first(),
        ) {
            (Some(chain), Some(a), Some(genesis))
                if pinned
                    && chain.head().member(account).is_none()
                    && a.verify(chain, account, &genesis.body.hash(), now).is_ok() =>
            {
                Some(a.attested_ms)
            }
            _ => None,
        };
        let times = EntryTimes {
            appended_ms,
            first_seen_ms: first_seen.clone(),
            attested_ms,
        };
        let mut verified = log.verify_timed(self.trust.chain(), held.as_ref(), now, &times);
        if matches!(
            verified,
            Err(TrustError::RosterVersionUnknown { .. } | TrustError::NoRoster)
        ) {
            self.refresh_roster(true).await?;
            verified = log.verify_timed(self.trust.chain(), held.as_ref(), now, &times);
        }
        // The first-contact rule (docs/PROTOCOL.md §19.10): with an organisation pinned,
        // another account's log is trusted only if the roster lists its devices or the
        // firm attested its first device. This device's own account is judged for what
        // it may do (`check_may_send`), not refused.
        let me = self.device_id();
        let verified = verified.and_then(|set| {
            let standing = match (pinned, self.trust.chain()) {
                (false, _) => return Ok(set),
                (true, None) => Err(TrustError::NoRoster),
                (true, Some(chain)) => first_contact(&log, &set, chain, attestation.as_ref(), now),
            };
            if own {
                self.trust.own_standing = Some(standing);
                Ok(set)
            } else {
                standing.map(|_| set)
            }
        });
        let set = match verified {
            Ok(set) => set,
            Err(e) => {
                self.events.push(Event::TrustRefused {
                    subject: account.to_string(),
                    reason: e.to_string(),
                });
                self.trust.forget_set(account);
                return Err(ClientError::Trust(e));
            }
        };
        // A head this device has not accepted before must be in the transparency log
        // (§21.6), when the roster names one: the log proves that every device is shown
        // the same head, and a relay that cannot prove it is refused.
        if let (Some(head), Some(policy)) = (set.head, self.transparency_policy()) {
            if held.is_none_or(|h| h.seq != head.seq || h.hash != head.hash) {
                let claim = Claim::LogHead {
                    account: account.clone(),
                    length: head.seq.saturating_add(1),
                    head: head.hash.0,
                };
                if let Err(e) = self.prove_in_log(&policy, claim).await {
                    self.trust.forget_set(account);
                    return Err(e);
                }
            }
        }
        let mut events = Vec::new();
        // What this client last saw, persisted: a freeze is reported when it changes, not
        // on every run while the account stays frozen.
        let was_frozen = self.trust.frozen.contains(account);
        if let Some(head) = set.head {
            if self.trust.heads.len() >= MAX_LOG_HEADS && !self.trust.heads.contains_key(account) {
                // Forget the head of some other account rather than grow without bound.
                if let Some(k) = self.trust.heads.keys().next().cloned() {
                    self.trust.heads.remove(&k);
                    self.trust.frozen.remove(&k);
                }
            }
            self.trust.heads.insert(account.clone(), head);
            if first_seen.is_empty() {
                self.trust.first_seen.remove(account);
            } else {
                self.trust.first_seen.insert(account.clone(), first_seen);
            }
        }
        if set.frozen {
            self.trust.frozen.insert(account.clone());
        } else {
            self.trust.frozen.remove(account);
        }
        // Update the contact's devices from the verified set.
        // Devices this device itself signed into the log (it confirmed their link): no
        // warning about those. Every other add is reported.
        let added_by_me: HashSet<DeviceId> = log
            .entries
            .as_slice()
            .iter()
            .filter_map(|e| match (&e.body.action, &e.authorization) {
                (DeviceAction::Add { identity }, EntryAuthorization::Device { device, .. })
                    if device == &me =>
                {
                    Some(identity.device_id())
                }
                _ => None,
            })
            .collect();
        let contact = self
            .contacts
            .entry(account.clone())
            .or_insert_with(|| Contact {
                account: account.clone(),
                role: None,
                devices: BTreeMap::new(),
                verified: None,
                refreshed_ms: 0,
            });
        let known_before = held.is_some() || !contact.devices.is_empty();
        let active: HashSet<DeviceId> = set
            .devices
            .iter()
            .map(|d| d.identity.device_id())
            .filter(|d| *d != me)
            .collect();
        let mut added = Vec::new();
        for d in &set.devices {
            let id = d.identity.device_id();
            if id == me {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = contact.devices.entry(id) {
                let fingerprint = d.identity.fingerprint().to_string();
                if known_before && !added_by_me.contains(&id) {
                    events.push(Event::DeviceAdded {
                        account: account.clone(),
                        device: id,
                        fingerprint: fingerprint.clone(),
                        probation_until_ms: d.probation_until_ms,
                    });
                    added.push(fingerprint);
                }
                slot.insert(KnownDevice {
                    identity: d.identity.clone(),
                    first_seen_ms: now,
                });
            }
        }
        let gone: Vec<DeviceId> = contact
            .devices
            .keys()
            .filter(|id| !active.contains(id))
            .copied()
            .collect();
        let mut removed = Vec::new();
        for id in gone {
            if let Some(d) = contact.devices.remove(&id) {
                removed.push(d.identity.fingerprint().to_string());
            }
            self.sessions.remove(&id);
        }
        contact.refreshed_ms = now;
        if known_before && (!added.is_empty() || !removed.is_empty()) {
            let was_verified = contact.verified.take().is_some();
            events.push(Event::DevicesChanged {
                account: account.clone(),
                added,
                removed,
                was_verified,
            });
        }
        if was_frozen != set.frozen {
            events.push(Event::FreezeChanged {
                account: account.clone(),
                frozen: set.frozen,
            });
        }
        // What the relay's directory lists beyond the log is reported, never used.
        let listed = self.conn()?.list_devices(account).await?;
        for d in listed {
            let id = d.identity.device_id();
            if id != me && set.device(&id).is_none() {
                self.report_untrusted(account, id, Some(&d.identity), "directory", &mut events);
            }
        }
        if self.trust.sets.len() >= MAX_CACHED_SETS && !self.trust.sets.contains_key(account) {
            let oldest = self
                .trust
                .sets
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(a, _)| a.clone());
            if let Some(a) = oldest {
                self.trust.sets.remove(&a);
            }
        }
        self.trust.sets.insert(account.clone(), (set.clone(), now));
        Ok((log, set, events))
    }

    pub(crate) fn report_untrusted(
        &mut self,
        account: &AccountId,
        device: DeviceId,
        identity: Option<&PublicIdentity>,
        seen_in: &str,
        events: &mut Vec<Event>,
    ) {
        let key = (account.clone(), device);
        if self.trust.reported.contains(&key) && seen_in != "message" {
            return;
        }
        if self.trust.reported.len() < MAX_REPORTED_UNTRUSTED {
            self.trust.reported.insert(key);
        }
        events.push(Event::UntrustedDevice {
            account: account.clone(),
            device,
            fingerprint: identity.map(|i| i.fingerprint().to_string()),
            seen_in: seen_in.into(),
        });
    }

    /// Whether this device pins an organisation (the first-contact rule applies).
    pub(crate) fn pinned_org(&self) -> Result<bool, ClientError> {
        Ok(self
            .relay
            .as_ref()
            .map(RelayInfo::org)
            .transpose()?
            .flatten()
            .is_some())
    }

    /// Whether this device trusts on first use: enrolled with a relay without an
    /// organisation, so a contact's first device is taken as the relay serves it.
    pub fn trust_on_first_use(&self) -> bool {
        self.relay.is_some() && !self.pinned_org().unwrap_or(false)
    }

    /// Bring `account`'s verified device set up to date (cached for [`LOG_TTL_MS`] unless
    /// `force`); report changes.
    pub(crate) async fn refresh_devices(
        &mut self,
        account: &AccountId,
        force: bool,
    ) -> Result<Vec<Event>, ClientError> {
        if !force {
            if let Some((_, t)) = self.trust.sets.get(account) {
                if now_ms().saturating_sub(*t) < LOG_TTL_MS {
                    return Ok(Vec::new());
                }
            }
        }
        let (_, _, events) = self.load_log(account).await?;
        Ok(events)
    }

    /// The verified device set of `account` (cached unless `force`).
    pub(crate) async fn verified_set(
        &mut self,
        account: &AccountId,
        force: bool,
    ) -> Result<DeviceSet, ClientError> {
        let evs = self.refresh_devices(account, force).await?;
        self.events.extend(evs);
        self.trust
            .set(account)
            .cloned()
            .ok_or_else(|| ClientError::NoDevices(account.clone()))
    }

    /// Whether this device may send `kind` now (its own verified log): refuses what the
    /// relay would refuse, with the reason, and, with an organisation pinned, everything
    /// while the firm has not attested this (client) account: its peers would refuse it.
    pub(crate) async fn check_may_send(&mut self, kind: EnvelopeKind) -> Result<(), ClientError> {
        let me = self.me()?;
        let mut set = self.verified_set(&me, false).await?;
        // A client waiting for the firm's verification: its peers would refuse what it
        // sends. (Other failures of the rule, a staff account whose log lists a device the
        // roster does not, are for its peers to refuse; its own devices still talk.)
        if matches!(
            self.trust.own_standing,
            Some(Err(TrustError::NotAttested { .. }))
        ) {
            // Attested since the cached verdict? Ask the relay again before refusing.
            set = self.verified_set(&me, true).await?;
            if let Some(Err(e @ TrustError::NotAttested { .. })) = &self.trust.own_standing {
                return Err(ClientError::Trust(e.clone()));
            }
        }
        match set.may_send_at(&self.device_id(), kind, now_ms()) {
            SendDecision::Allowed => Ok(()),
            SendDecision::NotActive => Err(ClientError::NotAllowed(
                "this device is not an active device of its account (revoked?)".into(),
            )),
            SendDecision::OnProbation { until_ms } => Err(ClientError::OnProbation {
                until_ms,
                refused: format!("send {} messages", kind.name()),
            }),
            SendDecision::Frozen => Err(ClientError::NotAllowed(format!(
                "the account is frozen; {} messages are refused until staff unfreeze it",
                kind.name()
            ))),
        }
    }

    /// Before a received message from `device` of `account` is judged
    /// ([`crate::receive::judge`]): make sure this device holds a fresh verified device
    /// set of `account`, fetched again when it has none, when it lapsed, or when it does
    /// not list `device`. `Err` is why no verified set could be had now (the relay did not
    /// answer, refused for a while, the connection dropped, or the log did not verify):
    /// the message waits and is checked again; it is never refused for that.
    pub(crate) async fn check_sender(
        &mut self,
        account: &AccountId,
        device: DeviceId,
    ) -> Result<Vec<Event>, String> {
        let (present, fresh) = match self.trust.sets.get(account) {
            Some((set, t)) => (
                set.device(&device).is_some(),
                now_ms().saturating_sub(*t) < LOG_TTL_MS,
            ),
            None => (false, false),
        };
        if present && fresh {
            return Ok(Vec::new());
        }
        self.refresh_devices(account, true)
            .await
            .map_err(|e| format!("cannot verify the device log of {account}: {e}"))
    }

    fn devices_view(&self, account: &AccountId, set: &DeviceSet) -> AccountDevices {
        let me = self.device_id();
        AccountDevices {
            account: account.clone(),
            frozen: set.frozen,
            devices: set.devices.iter().map(|d| device_view(d, me)).collect(),
            revoked: set.revoked.clone(),
            log_entries: set.head.map_or(0, |h| h.seq + 1),
        }
    }

    /// This account's devices, from its verified log (fetched now).
    pub async fn devices(&mut self) -> Result<AccountDevices, ClientError> {
        let me = self.me()?;
        self.account_devices(&me).await
    }

    /// `account`'s devices, from its verified log (fetched now).
    pub async fn account_devices(
        &mut self,
        account: &AccountId,
    ) -> Result<AccountDevices, ClientError> {
        let (_, set, events) = self.load_log(account).await?;
        self.events.extend(events);
        self.save()?;
        Ok(self.devices_view(account, &set))
    }

    /// This device must be active and past its cooling-off to sign a log entry.
    fn require_settled(&self, set: &DeviceSet) -> Result<(), ClientError> {
        match set.device(&self.device_id()) {
            None => Err(ClientError::NotAllowed(
                "this device is not an active device of its account".into(),
            )),
            Some(d) if d.probation_until_ms > now_ms() => Err(ClientError::OnProbation {
                until_ms: d.probation_until_ms,
                refused: "change the account's devices".into(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Sign `action` into this account's log, check the result locally, append it.
    async fn append_own(
        &mut self,
        action: DeviceAction,
        reason: &str,
        subject_signature: Option<[u8; 64]>,
    ) -> Result<AccountDevices, ClientError> {
        let me = self.me()?;
        // Cooling-off windows come from the roster: decide (and verify what the relay
        // will verify) under the relay's newest version, not a cached older one, or a
        // freeze could leave out a device the relay counts as on probation.
        self.refresh_roster(true).await?;
        let (mut log, set, events) = self.load_log(&me).await?;
        self.events.extend(events);
        self.require_settled(&set)?;
        let body = log.next_body(now_ms(), action, reason);
        let entry = LogEntry {
            authorization: EntryAuthorization::Device {
                device: self.device_id(),
                signature: body.sign(&self.identity),
            },
            body,
            subject_signature,
        };
        // Verify exactly what the relay will verify before sending it.
        log.push(entry.clone())?;
        log.verify(self.trust.chain(), self.trust.heads.get(&me), now_ms())?;
        self.conn()?.append_device_log(entry).await?;
        let (_, set, events) = self.load_log(&me).await?;
        self.events.extend(events);
        self.save()?;
        Ok(self.devices_view(&me, &set))
    }

    /// Revoke a device of this account (an entry signed by this device, which must be
    /// active and past its cooling-off). The relay closes its connections.
    pub async fn revoke_device(
        &mut self,
        device: &DeviceId,
        reason: &str,
    ) -> Result<AccountDevices, ClientError> {
        if *device == self.device_id() {
            return Err(ClientError::Invalid(
                "revoke this device from another device of the account".into(),
            ));
        }
        let me = self.me()?;
        let set = self.verified_set(&me, true).await?;
        if set.device(device).is_none() {
            return Err(ClientError::NotFound(format!(
                "{device} is not an active device of {me}"
            )));
        }
        self.append_own(DeviceAction::Remove { device: *device }, reason, None)
            .await
    }

    /// "This wasn't me": freeze the account. Every device still on probation is revoked
    /// and the account stays frozen until a staff quorum unfreezes it. This device must
    /// be active and past its cooling-off.
    pub async fn freeze_account(&mut self, reason: &str) -> Result<AccountDevices, ClientError> {
        self.append_own(DeviceAction::Freeze, reason, None).await
    }

    // ---- linking: the new device ----

    /// Ask to join `account` at `relay` as a new device (pins `relay`'s organisation
    /// fingerprint, as enrolment does). Then call [`Client::link_progress`] until it
    /// reports `Completed`.
    ///
    /// A request this profile started earlier for the same account and relay is resumed
    /// when it was completed meanwhile (a confirmation given while this device was
    /// offline) or is a recovery this device signed (approvals may be under way, or done:
    /// this device completes it); otherwise a new request replaces it. A relay that
    /// already registered this identity (the request was completed and then forgotten)
    /// is answered by authenticating.
    pub async fn link_start(
        &mut self,
        relay: RelayInfo,
        account: &AccountId,
    ) -> Result<LinkTicket, ClientError> {
        if self.account.is_some() {
            return Err(ClientError::Invalid(
                "this device is already enrolled".into(),
            ));
        }
        relay.org()?;
        let conn = RelayConnection::connect(&relay.address()?).await?;
        crate::client::check_relay_org(&conn, &relay).await?;
        if let Some(link) = self.new_link.as_mut() {
            let same = &link.record.account == account && link.record.relay.addr == relay.addr;
            if same {
                // Resume the earlier request if it was completed meanwhile (the device
                // only has to authenticate), or is a recovery this device signed (its
                // approvals may be under way, or done: it completes it). Any other request
                // is replaced by a new one below (after a refused code that is the only
                // way on; the existing device offers again).
                let recovering = link
                    .record
                    .signed
                    .as_ref()
                    .is_some_and(|o| o.action == "recover");
                match conn.link_poll(link.record.id()).await {
                    Ok(state) if state.completed || state.ready || recovering => {
                        let r = &link.record;
                        let ticket = LinkTicket {
                            link_id: hex::encode(&r.link_id),
                            account: account.clone(),
                            fingerprint: self.identity.public().fingerprint().to_string(),
                            expires_ms: r.expires_ms,
                            resumed: true,
                        };
                        link.conn = Some(conn);
                        link.next_poll = tokio::time::Instant::now();
                        return Ok(ticket);
                    }
                    Ok(_) => {}
                    // Gone: a new request below (if it was completed meanwhile, the relay
                    // answers that this device is registered, and it authenticates).
                    Err(NetError::Refused {
                        code: ErrorCode::NotFound,
                        ..
                    }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let nonce = LinkNonce::generate(&mut OsRng);
        let commitment = LinkCommitment::compute(account, self.identity.public(), &nonce);
        let (link_id, expires_ms, registered) =
            match conn.link_start(&self.identity, account, commitment).await {
                Ok((id, exp)) => (id, exp, false),
                // `link_start` answers `conflict` only for an identity registered already
                // (§19.2): an earlier request of this identity was completed while this
                // device was away (or its profile lost the request). Authenticating tells.
                Err(NetError::Refused {
                    code: ErrorCode::Conflict,
                    ..
                }) => ([0; 16], 0, true),
                Err(e) => return Err(e.into()),
            };
        let started = tokio::time::Instant::now();
        let record = NewLinkRecord {
            relay,
            account: account.clone(),
            link_id: link_id.to_vec(),
            expires_ms,
            nonce,
            signed: None,
            completing: false,
        };
        self.new_link = Some(NewDeviceLink {
            record,
            conn: Some(conn),
            registered,
            started,
            next_poll: started,
            reconnect: Backoff::reconnect(),
        });
        if !registered {
            // Durable before anything is shown: a later run resumes this request.
            self.save()?;
        }
        Ok(LinkTicket {
            link_id: hex::encode(link_id),
            account: account.clone(),
            fingerprint: self.identity.public().fingerprint().to_string(),
            expires_ms,
            resumed: registered,
        })
    }

    /// [`Client::link_start`], forgetting any earlier request of this profile first: a new
    /// request (a new nonce) replaces it at the relay. For a new device whose code was
    /// refused (typed wrong) on the existing device or by staff: that request cannot be
    /// offered on again.
    pub async fn link_restart(
        &mut self,
        relay: RelayInfo,
        account: &AccountId,
    ) -> Result<LinkTicket, ClientError> {
        if self.account.is_some() {
            return Err(ClientError::Invalid(
                "this device is already enrolled".into(),
            ));
        }
        self.new_link = None;
        self.save()?;
        self.link_start(relay, account).await
    }

    /// The link request this (new) device has pending, if any: the account it asks to
    /// join and the relay's address.
    pub fn pending_link(&self) -> Option<(&AccountId, &str)> {
        self.new_link
            .as_ref()
            .map(|l| (&l.record.account, l.record.relay.addr.as_str()))
    }

    /// Forget the pending link (after it failed for good), durably.
    fn drop_new_link(&mut self) {
        self.new_link = None;
        let _ = self.save();
    }

    /// Wait (at most `max_wait`, itself at most [`MAX_LINK_WAIT`]) for the link started
    /// with [`Client::link_start`] (in this run or an earlier one) to move on: a new offer
    /// (checked and signed here; show the code), or completion (this device then
    /// authenticates and publishes prekeys). A recovery its quorum authorised is
    /// completed here (`link_complete`), after this device durably recorded it.
    ///
    /// Polls the relay on the schedule of [`link_poll_delay`], across calls; a
    /// `rate_limited` answer is waited out (its `retry_after_ms`, at most
    /// [`MAX_LINK_RETRY_PAUSE`]) and polling goes on. A lost connection or a relay that
    /// does not answer is retried (reconnecting after a pause of [`Backoff::reconnect`]:
    /// from [`RECONNECT_DELAY`] growing up to [`MAX_RECONNECT_DELAY`], with jitter) for as
    /// long as the request lives.
    pub async fn link_progress(&mut self, max_wait: Duration) -> Result<LinkProgress, ClientError> {
        let deadline = tokio::time::Instant::now() + max_wait.min(MAX_LINK_WAIT);
        loop {
            let link = self
                .new_link
                .as_mut()
                .ok_or_else(|| ClientError::Invalid("no link in progress".into()))?;
            if link.registered {
                return match self.finish_link().await {
                    Err(ClientError::Net(NetError::Refused {
                        code: ErrorCode::AuthFailed,
                        ..
                    })) => {
                        self.drop_new_link();
                        Err(ClientError::NotAllowed(
                            "the relay knows this device's identity but it cannot \
                             authenticate: it was revoked; link a new profile (`sealpost init` \
                             in another directory)"
                                .into(),
                        ))
                    }
                    other => other,
                };
            }
            // Once this device has signed an offer the relay keeps the request longer
            // (a recovery waits for its approvals): the relay says when it is gone.
            if link.record.signed.is_none() && now_ms() > link.record.expires_ms {
                self.drop_new_link();
                return Err(ClientError::Timeout("the link request lapsed"));
            }
            if link.next_poll > deadline {
                tokio::time::sleep_until(deadline).await;
                return Ok(LinkProgress::Waiting);
            }
            tokio::time::sleep_until(link.next_poll).await;
            if link.conn.is_none() {
                match link.record.relay.address() {
                    Ok(addr) => match RelayConnection::connect(&addr).await {
                        Ok(c) => {
                            link.conn = Some(c);
                            link.reconnect.reset();
                        }
                        Err(e) if e.is_transient() => {
                            link.lost();
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    },
                    Err(e) => return Err(e),
                }
            }
            if link.record.completing {
                match self.complete_recovery().await? {
                    Some(done) => return Ok(done),
                    None => continue,
                }
            }
            let link_id = link.record.id();
            let Some(conn) = link.conn.as_ref() else {
                continue;
            };
            let polled = conn.link_poll(link_id).await;
            let now = tokio::time::Instant::now();
            link.next_poll = now + link_poll_delay(now.duration_since(link.started));
            let status = match polled {
                Ok(status) => status,
                Err(e) if e.is_transient() => {
                    link.lost();
                    continue;
                }
                Err(NetError::Refused {
                    code: ErrorCode::RateLimited,
                    retry_after_ms,
                    ..
                }) => {
                    let asked = Duration::from_millis(retry_after_ms.unwrap_or(0));
                    link.next_poll =
                        now + asked.clamp(LINK_POLL_SLOW_INTERVAL, MAX_LINK_RETRY_PAUSE);
                    continue;
                }
                Err(NetError::Refused {
                    code: ErrorCode::NotFound,
                    ..
                }) => {
                    // Lapsed, dismissed by a device of the account, replaced, or the relay
                    // restarted (links live in its memory). If the entry this device signed
                    // was appended meanwhile, it can authenticate all the same.
                    let signed = link.record.signed.is_some();
                    if signed {
                        match self.finish_link().await {
                            Ok(done) => return Ok(done),
                            Err(ClientError::Net(e)) if e.is_transient() => {
                                if let Some(l) = self.new_link.as_mut() {
                                    l.lost();
                                }
                                continue;
                            }
                            Err(_) => {}
                        }
                    }
                    self.drop_new_link();
                    return Err(ClientError::NotFound(
                        "the link request lapsed or was dismissed by a device of the account, \
                         and this device was not added; start again"
                            .into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            if status.completed {
                return self.finish_link().await;
            }
            if let (Some(challenge), Some(body)) = (status.challenge, status.body) {
                let hash = body.hash();
                let same = link
                    .record
                    .signed
                    .as_ref()
                    .is_some_and(|s| s.hash == hash.0 && s.challenge == challenge);
                if same && status.ready {
                    // The recovery's quorum approved: record that this device is becoming
                    // the account's device, durably, before the relay appends the entry
                    // that revokes the old ones.
                    link.record.completing = true;
                    link.next_poll = tokio::time::Instant::now();
                    self.save()?;
                    continue;
                }
                if !same {
                    if link.record.signed.is_some() {
                        // The nonce is out: a code under a new challenge could have been
                        // picked knowing it. Only a new request (a new nonce) is safe.
                        self.drop_new_link();
                        return Err(ClientError::NotAllowed(
                            "the offer changed after this device had shown its code; this \
                             request is abandoned: start linking again"
                                .into(),
                        ));
                    }
                    let me = self.identity.public();
                    let action = match &body.action {
                        DeviceAction::Add { identity } if identity == me => "add",
                        DeviceAction::Recover { identity } if identity == me => "recover",
                        _ => {
                            return Err(ClientError::NotAllowed(format!(
                                "the offered entry does not add this device ({}); refusing to \
                                 sign it",
                                body.action.name()
                            )))
                        }
                    };
                    if body.account != link.record.account
                        || body.seq == 0
                        || body.previous.is_none()
                    {
                        return Err(ClientError::NotAllowed(
                            "the offered entry is not for this account's existing log; \
                             refusing to sign it"
                                .into(),
                        ));
                    }
                    let signature = body.sign(&self.identity);
                    let nonce = link.record.nonce;
                    // Recorded before the nonce leaves: a later run never reveals it for
                    // another offer.
                    link.record.signed = Some(SignedOfferRecord {
                        hash: hash.0.to_vec(),
                        challenge,
                        action: action.into(),
                    });
                    self.save()?;
                    let Some(link) = self.new_link.as_mut() else {
                        continue;
                    };
                    let Some(conn) = link.conn.as_ref() else {
                        continue;
                    };
                    match conn.link_sign(link_id, signature, nonce).await {
                        Ok(()) => {}
                        Err(e) if e.is_transient() => {
                            // Signed again (same body, same nonce) after reconnecting.
                            link.record.signed = None;
                            link.lost();
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let code = LinkCode::compute(&link.record.account, me, &challenge, &nonce);
                    return Ok(LinkProgress::Offered {
                        code: code.digits().to_owned(),
                        action: action.into(),
                    });
                }
            }
        }
    }

    /// The code this device showed for the offer it signed (a later run shows it again).
    pub fn link_code(&self) -> Option<(String, String)> {
        let link = self.new_link.as_ref()?;
        let s = link.record.signed.as_ref()?;
        let code = LinkCode::compute(
            &link.record.account,
            self.identity.public(),
            &s.challenge,
            &link.record.nonce,
        );
        Some((code.digits().to_owned(), s.action.clone()))
    }

    /// Complete an authorised recovery (`link_complete`), then authenticate. `None`: a
    /// transient failure, retried on the next poll.
    async fn complete_recovery(&mut self) -> Result<Option<LinkProgress>, ClientError> {
        let Some(link) = self.new_link.as_mut() else {
            return Err(ClientError::Invalid("no link in progress".into()));
        };
        let Some(conn) = link.conn.as_ref() else {
            return Ok(None);
        };
        let mut refusal = None;
        match conn.link_complete(&self.identity, link.record.id()).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                link.lost();
                return Ok(None);
            }
            Err(NetError::Refused {
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            }) => {
                let asked = Duration::from_millis(retry_after_ms.unwrap_or(0));
                link.next_poll = tokio::time::Instant::now()
                    + asked.clamp(LINK_POLL_SLOW_INTERVAL, MAX_LINK_RETRY_PAUSE);
                return Ok(None);
            }
            // Completed already (an earlier run's `link_complete` whose answer was lost,
            // or the relay restarted after appending it): authenticate.
            // (Or refused as a conflict: the log moved on, the roster changed. Then
            // authenticating fails and the relay's reason is reported.)
            Err(NetError::Refused {
                code: code @ (ErrorCode::Conflict | ErrorCode::NotFound),
                message,
                ..
            }) => refusal = Some(format!("{}: {message}", crate::display::name(&code))),
            Err(NetError::Refused { code, message, .. }) => {
                // The relay refused the append (the approvals expired, the account's log
                // moved on): nothing changed, the account's old devices still work.
                self.drop_new_link();
                return Err(ClientError::NotAllowed(format!(
                    "the recovery could not be completed ({}: {message}); the account's \
                     other devices were not revoked: ask staff to start the recovery again",
                    crate::display::name(&code)
                )));
            }
            Err(e) => return Err(e.into()),
        }
        match self.finish_link().await {
            Ok(done) => Ok(Some(done)),
            Err(ClientError::Net(e)) if e.is_transient() => {
                if let Some(l) = self.new_link.as_mut() {
                    l.lost();
                }
                Ok(None)
            }
            Err(ClientError::Net(NetError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            })) => {
                self.drop_new_link();
                Err(ClientError::NotFound(format!(
                    "the recovery could not be completed ({}) and this device was not added; \
                     the account's other devices were not revoked: start again",
                    refusal.as_deref().unwrap_or("refused")
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Authenticate as a device of the link's account (its entry was appended) and
    /// become that device. The pending link stays (for a later run) on any failure.
    async fn finish_link(&mut self) -> Result<LinkProgress, ClientError> {
        let link = self
            .new_link
            .as_mut()
            .ok_or_else(|| ClientError::Invalid("no link in progress".into()))?;
        let conn = match link.conn.take() {
            Some(c) => c,
            None => RelayConnection::connect(&link.record.relay.address()?).await?,
        };
        let (account, role) = match conn.authenticate(&self.identity).await {
            Ok(v) => v,
            Err(e) => {
                // `authenticate` is one attempt per connection; a new one is made next time.
                link.registered = false;
                return Err(e.into());
            }
        };
        if account != link.record.account {
            return Err(ClientError::Protocol(format!(
                "linked into {account}, not {}",
                link.record.account
            )));
        }
        let Some(link) = self.new_link.take() else {
            return Err(ClientError::Invalid("no link in progress".into()));
        };
        self.relay = Some(link.record.relay);
        self.account = Some(account);
        self.role = Some(role);
        self.conn = Some(conn);
        self.save()?;
        self.maintain_prekeys().await?;
        self.after_join().await?;
        Ok(LinkProgress::Completed { role })
    }

    // ---- linking: the existing device (and staff, for recovery) ----

    /// Pending link requests for this account, or for `account` (staff and advisors).
    pub async fn pending_links(
        &mut self,
        account: Option<&AccountId>,
    ) -> Result<Vec<PendingLinkView>, ClientError> {
        let account = match account {
            Some(a) => a.clone(),
            None => self.me()?,
        };
        let links = self.conn()?.list_links(&account).await?;
        Ok(links
            .into_iter()
            .map(|l| {
                let offer = self
                    .link_offers
                    .iter()
                    .find(|o| o.link_id.as_slice() == l.link_id.as_slice());
                let signed = match (offer, &l.subject_signature, &l.body) {
                    (Some(o), Some(sig), Some(body)) => {
                        *body == o.body && o.body.is_signed_by(&o.identity, sig)
                    }
                    _ => false,
                };
                PendingLinkView {
                    link_id: hex::encode(l.link_id),
                    account: l.account.clone(),
                    device: l.identity.device_id(),
                    fingerprint: l.identity.fingerprint().to_string(),
                    created_ms: l.created_ms,
                    offered_by_me: offer.is_some(),
                    signed,
                }
            })
            .collect())
    }

    /// Offer `action` (built from the link's identity) for a pending link, with a fresh
    /// challenge chosen now, after the identity was received.
    pub(crate) async fn make_offer(
        &mut self,
        account: &AccountId,
        link_id: &str,
        recover: bool,
        reason: &str,
    ) -> Result<PendingLinkView, ClientError> {
        let id = parse_link_id(link_id)?;
        let links = self.conn()?.list_links(account).await?;
        let link = links
            .into_iter()
            .find(|l| l.link_id == id && &l.account == account)
            .ok_or_else(|| ClientError::NotFound(format!("link {link_id} for {account}")))?;
        let (log, set, events) = self.load_log(account).await?;
        self.events.extend(events);
        if !recover {
            self.require_settled(&set)?;
        }
        let action = if recover {
            DeviceAction::Recover {
                identity: link.identity.clone(),
            }
        } else {
            DeviceAction::Add {
                identity: link.identity.clone(),
            }
        };
        let body = log.next_body(now_ms(), action, reason);
        let challenge = LinkChallenge::generate(&mut OsRng);
        self.conn()?.link_offer(id, challenge, body.clone()).await?;
        let now = now_ms();
        self.link_offers.retain(|o| {
            o.link_id.as_slice() != id.as_slice()
                && now.saturating_sub(o.created_ms) < LINK_OFFER_TTL_MS
        });
        while self.link_offers.len() >= MAX_LINK_OFFERS {
            self.link_offers.remove(0);
        }
        self.link_offers.push(LinkOfferRecord {
            link_id: id.to_vec(),
            account: account.clone(),
            identity: link.identity.clone(),
            challenge,
            commitment: Some(link.commitment),
            body,
            created_ms: now,
        });
        self.save()?;
        Ok(PendingLinkView {
            link_id: hex::encode(id),
            account: account.clone(),
            device: link.identity.device_id(),
            fingerprint: link.identity.fingerprint().to_string(),
            created_ms: link.created_ms,
            offered_by_me: true,
            signed: false,
        })
    }

    /// Offer to add the device of pending link `link_id` (hex) to this account. The new
    /// device then shows a code; the user types it into [`Client::confirm_link`].
    pub async fn offer_link(&mut self, link_id: &str) -> Result<PendingLinkView, ClientError> {
        let me = self.me()?;
        self.make_offer(&me, link_id, false, "linked by an existing device")
            .await
    }

    /// Check the code typed from the new device's screen, wait (at most `max_wait`) for
    /// the new device's signature, and append the entry signed by this device. A wrong
    /// code withdraws the offer ([`ClientError::CodeMismatch`]).
    pub async fn confirm_link(
        &mut self,
        link_id: &str,
        typed_code: &str,
        max_wait: Duration,
    ) -> Result<DeviceView, ClientError> {
        let (offer, signature, _) = self
            .await_signed_offer(link_id, typed_code, max_wait)
            .await?;
        if !matches!(offer.body.action, DeviceAction::Add { .. }) {
            return Err(ClientError::Invalid(
                "this link is a recovery; staff complete it with an approval request".into(),
            ));
        }
        let me = self.me()?;
        self.refresh_roster(true).await?;
        if offer.account != me {
            return Err(ClientError::Invalid(format!(
                "the offer is for {}, not this account",
                offer.account
            )));
        }
        let (log, set, events) = self.load_log(&me).await?;
        self.events.extend(events);
        self.require_settled(&set)?;
        if log.head().map(|h| h.hash.0) != offer.body.previous {
            self.drop_offer(&offer.link_id);
            return Err(ClientError::Invalid(
                "the account's log changed since the offer; offer again".into(),
            ));
        }
        let entry = LogEntry {
            authorization: EntryAuthorization::Device {
                device: self.device_id(),
                signature: offer.body.sign(&self.identity),
            },
            body: offer.body.clone(),
            subject_signature: Some(signature),
        };
        let mut check = log.clone();
        check.push(entry.clone())?;
        check.verify(self.trust.chain(), self.trust.heads.get(&me), now_ms())?;
        self.conn()?.append_device_log(entry).await?;
        self.drop_offer(&offer.link_id);
        let (_, set, events) = self.load_log(&me).await?;
        self.events.extend(events);
        self.save()?;
        let new_id = offer.identity.device_id();
        set.device(&new_id)
            .map(|d| device_view(d, self.device_id()))
            .ok_or_else(|| ClientError::Protocol("the linked device is not in the log".into()))
    }

    /// Dismiss a pending link request of this account (`link_id` in hex): one no device
    /// of the account started, or that is no longer wanted. It answers `not_found` from
    /// then on.
    pub async fn dismiss_link(&mut self, link_id: &str) -> Result<(), ClientError> {
        let id = parse_link_id(link_id)?;
        self.conn()?.dismiss_link(id).await?;
        self.drop_offer(&id);
        Ok(())
    }

    pub(crate) fn drop_offer(&mut self, link_id: &[u8]) {
        self.link_offers.retain(|o| o.link_id.as_slice() != link_id);
        let _ = self.save();
    }

    /// Wait for the new device's signature over exactly the offered body and the nonce
    /// it reveals with it, check that the nonce opens the commitment seen before the
    /// challenge was picked, then check the typed code (which covers the nonce).
    pub(crate) async fn await_signed_offer(
        &mut self,
        link_id: &str,
        typed_code: &str,
        max_wait: Duration,
    ) -> Result<(LinkOfferRecord, [u8; 64], LinkNonce), ClientError> {
        let id = parse_link_id(link_id)?;
        let offer = self
            .link_offers
            .iter()
            .find(|o| o.link_id.as_slice() == id.as_slice())
            .cloned()
            .ok_or_else(|| {
                ClientError::NotFound(format!("no offer of this device for link {link_id}"))
            })?;
        let Some(commitment) = offer.commitment else {
            self.drop_offer(&offer.link_id);
            return Err(ClientError::Invalid(
                "this offer was saved by an older version without the new device's \
                 commitment; offer again"
                    .into(),
            ));
        };
        let deadline = tokio::time::Instant::now() + max_wait.min(MAX_LINK_WAIT);
        loop {
            let links = self.conn()?.list_links(&offer.account).await?;
            let Some(link) = links.into_iter().find(|l| l.link_id == id) else {
                self.drop_offer(&offer.link_id);
                return Err(ClientError::NotFound(format!("link {link_id} lapsed")));
            };
            if link.identity != offer.identity || link.commitment != commitment {
                self.drop_offer(&offer.link_id);
                return Err(ClientError::NotAllowed(
                    "the link's identity or commitment changed since the offer".into(),
                ));
            }
            if let (Some(sig), Some(nonce), Some(body), Some(ch)) = (
                link.subject_signature,
                link.nonce,
                &link.body,
                &link.challenge,
            ) {
                if *body == offer.body && *ch == offer.challenge {
                    // The code is checked only now: it covers the nonce, revealed after
                    // the challenge this device picked, and opening the commitment it
                    // saw before picking it.
                    if !commitment.opens(&offer.account, &offer.identity, &nonce) {
                        self.drop_offer(&offer.link_id);
                        return Err(ClientError::NotAllowed(
                            "the new device's nonce does not open its commitment".into(),
                        ));
                    }
                    let code = LinkCode::compute(
                        &offer.account,
                        &offer.identity,
                        &offer.challenge,
                        &nonce,
                    );
                    if !code.matches(typed_code) {
                        self.drop_offer(&offer.link_id);
                        return Err(ClientError::CodeMismatch);
                    }
                    if offer.body.is_signed_by(&offer.identity, &sig) {
                        return Ok((offer, sig, nonce));
                    }
                    return Err(ClientError::NotAllowed(
                        "the new device's signature does not verify".into(),
                    ));
                }
                if *body != offer.body {
                    self.drop_offer(&offer.link_id);
                    return Err(ClientError::NotAllowed(
                        "another offer replaced this one; offer again".into(),
                    ));
                }
            }
            if tokio::time::Instant::now() + LINK_POLL_INTERVAL > deadline {
                return Err(ClientError::Timeout("the new device's signature"));
            }
            tokio::time::sleep(LINK_POLL_INTERVAL).await;
        }
    }
}
