//! Request handling: what the relay does with each frame. The connection shell
//! (`conn.rs`) reads frames and writes replies; every decision is made here, against the
//! storage traits, the pure policy and limit functions, and the hub. The trust frames of
//! docs/PROTOCOL.md §19 (device logs, linking, roster, notices) are in `relay/trust_frames.rs`.

mod attest_frames;
mod directory;
mod tlog_frames;
mod trust_frames;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sealpost_protocol::envelope::{Envelope, EnvelopeKind, MessageId};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::prekeys::PreKeyKind;
use sealpost_protocol::trust::{DeviceLog, EntryTimes, SendDecision, MAX_LOG_ENTRIES};
use sealpost_protocol::wire::{
    auth_signature_message, enroll_signature_message, BoundedVec, DeviceInfo, ErrorCode, Frame,
    FrameBody, Role,
};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::hub::{Hub, Push};
use crate::limits::{KeyedLimiter, Limited};
use crate::links::LinkRegistry;
use crate::metrics as m;
use crate::policy::{self, Party};
use crate::security::{Measure, Observation, Security};
use crate::store::{AccountRecord, PreKeyUpload, Quota, Store, StoreError};
use crate::trust::{refusal_label, refusal_message, AccountTrust, SenderTrust, TrustState};

/// Domain label under which enrolment codes are hashed for storage.
pub const ENROLLMENT_CODE_LABEL: &[u8] = b"Sealpost_EnrollCode_v1";
/// How long a per-connection policy answer (assignment, role) is trusted, milliseconds.
/// A recipient's revoked state is never taken from this cache once a revocation happened
/// after the answer was cached ([`Relay::revocation_epoch`]).
const POLICY_CACHE_MS: u64 = 30_000;
/// Most entries in a connection's policy cache.
const POLICY_CACHE_MAX: usize = 4096;

/// Milliseconds since the Unix epoch (wall clock, for stored timestamps and expiry); the
/// relay's one reading of it (the protocol crate's functions take the time as an argument).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Hash of an enrolment code as stored.
///
/// Codes are issued as 20 Crockford base32 characters in groups of five
/// (`7K2QM-9XH4T-P3WZR-B8N6D`, [`crate::admin::generate_code`]) and stored as the hash of
/// that grouped form. What a person types is read the way Crockford decoders read it
/// (docs/PROTOCOL.md §12.2): hyphens and whitespace ignored, letters case-insensitive, `I`
/// and `L` read as `1`, `O` as `0`. Input that is then 20 characters of the alphabet is
/// hashed in the grouped form, so `7k2qm9xh4tp3wzrb8n6d` redeems `7K2QM-9XH4T-P3WZR-B8N6D`;
/// anything else is hashed as typed (upper-cased, whitespace removed) and matches no code.
pub fn enrollment_code_hash(code: &str) -> [u8; 32] {
    let normalized = normalize_enrollment_code(code);
    sealpost_protocol::crypto::sha256(&[ENROLLMENT_CODE_LABEL, normalized.as_bytes()])
}

/// The grouped, upper-case form of a typed enrolment code (see [`enrollment_code_hash`]).
pub fn normalize_enrollment_code(code: &str) -> String {
    let typed: String = code
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let symbols: Option<Vec<char>> = typed
        .chars()
        .filter(|c| *c != '-')
        .map(|c| match c {
            'I' | 'L' => Some('1'),
            'O' => Some('0'),
            c if c.is_ascii() && crate::admin::CODE_ALPHABET.contains(&(c as u8)) => Some(c),
            _ => None,
        })
        .collect();
    match symbols {
        Some(s) if s.len() == crate::admin::CODE_CHARS => {
            let mut out = String::with_capacity(s.len() + s.len() / 5);
            for (i, c) in s.into_iter().enumerate() {
                if i > 0 && i % 5 == 0 {
                    out.push('-');
                }
                out.push(c);
            }
            out
        }
        _ => typed,
    }
}

struct Limiters {
    send: KeyedLimiter<DeviceId>,
    auth_ip: KeyedLimiter<IpAddr>,
    auth_device: KeyedLimiter<DeviceId>,
    fetch_device: KeyedLimiter<DeviceId>,
    fetch_pair: KeyedLimiter<(DeviceId, AccountId)>,
    control: KeyedLimiter<DeviceId>,
    link_ip: KeyedLimiter<IpAddr>,
}

/// The relay's shared state.
pub struct Relay<S: Store> {
    /// Storage.
    pub store: S,
    /// Online devices.
    pub hub: Arc<Hub>,
    /// Configuration.
    pub config: Config,
    /// Attachment blobs (opaque ciphertext; see `transfer.rs`).
    pub blobs: Arc<dyn crate::store::blob::BlobStore>,
    /// The roster chain and the verified device sets (`trust.rs`).
    pub trust: TrustState,
    /// The transparency log (`tlog.rs`).
    pub tlog: crate::tlog::Tlog,
    links: Mutex<LinkRegistry>,
    attest: Mutex<attest_frames::AttestRegistry>,
    limiters: Mutex<Limiters>,
    started: Instant,
    /// Bumped after every device-log append that revokes a device, once it is durable:
    /// per-connection caches of recipients read before it are stale.
    revocations: std::sync::atomic::AtomicU64,
    /// Security events: the rules, the live feed, the writer's queue (`security/`).
    pub security: Arc<Security>,
}

/// An authenticated device on a connection.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The device.
    pub device: DeviceId,
    /// Its account.
    pub account: AccountId,
    /// The account's role.
    pub role: Role,
}

/// Where a connection is in the authentication exchange.
#[derive(Clone, Debug)]
pub enum AuthState {
    /// Nothing yet.
    Fresh,
    /// A challenge was issued for `device`.
    Challenged {
        /// The device claimed.
        device: DeviceId,
        /// The nonce to sign.
        nonce: [u8; 32],
    },
    /// Authenticated.
    Done(Authenticated),
}

#[derive(Clone)]
struct PeerInfo {
    /// Why the policy refuses the recipient (with its account, for the security rules);
    /// only answers that allow are cached, so a cached clone allocates nothing.
    allowed: Result<(), (String, AccountId)>,
    revoked: bool,
    /// The recipient's account is the archive the verified roster names (§22).
    archive: bool,
    expires_ms: u64,
    /// [`Relay::revocation_epoch`] when this was read: a later revocation invalidates it.
    epoch: u64,
}

/// Per-connection state the handlers need.
pub struct ConnCtx {
    /// The peer's address.
    pub remote: SocketAddr,
    /// 32 bytes exported from this connection's TLS session (channel binding).
    pub exporter: [u8; 32],
    /// Authentication state.
    pub auth: AuthState,
    peers: HashMap<DeviceId, PeerInfo>,
    /// The authenticated device's view of its account's verified device set.
    sender: Option<SenderTrust>,
    /// The link request this (unauthenticated) connection waits on (`link_start`, or a
    /// `link_poll` answered): while it is open the authentication timeout does not close
    /// the connection (conn.rs; docs/PROTOCOL.md §19.4).
    pub waiting_link: Option<[u8; 16]>,
}

impl ConnCtx {
    /// State for a new connection.
    pub fn new(remote: SocketAddr, exporter: [u8; 32]) -> Self {
        Self {
            remote,
            exporter,
            auth: AuthState::Fresh,
            peers: HashMap::new(),
            sender: None,
            waiting_link: None,
        }
    }

    /// The authenticated device, if any.
    pub fn authenticated(&self) -> Option<&Authenticated> {
        match &self.auth {
            AuthState::Done(a) => Some(a),
            _ => None,
        }
    }
}

/// Why a device set could not be had.
enum TrustFailure {
    Store(StoreError),
    /// The stored log does not verify (logged where detected).
    Invalid,
}

impl TrustFailure {
    fn answer(self, id: u64) -> Handled {
        match self {
            Self::Store(e) => store_failure(id, &e),
            Self::Invalid => refuse(
                id,
                ErrorCode::Forbidden,
                "the account's stored device log does not verify; the operator has been alerted",
            ),
        }
    }
}

/// A `send` that passed every check and only needs committing.
pub struct PreparedSend {
    id: u64,
    envelope: Envelope,
    quota: Quota,
    expires: u64,
    started: Instant,
}

/// The sequence numbers one message id was delivered under on a connection and not yet
/// acknowledged there: almost always one, without an allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredSeqs {
    /// The first delivery.
    first: u64,
    /// Any further deliveries of the same id (repeats, resends).
    more: Vec<u64>,
}

impl DeliveredSeqs {
    /// One delivery (no allocation).
    pub fn new(first: u64) -> Self {
        Self {
            first,
            more: Vec::new(),
        }
    }

    /// Add a further delivery; false if `seq` is already among them.
    pub fn add(&mut self, seq: u64) -> bool {
        if self.first == seq || self.more.contains(&seq) {
            return false;
        }
        self.more.push(seq);
        true
    }

    /// How many (at least one).
    pub fn count(&self) -> usize {
        1 + self.more.len()
    }

    /// All of them, the first first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }
}

/// What the shell must do after a frame.
#[derive(Debug, Default)]
pub struct Handled {
    /// Reply to send (with the request's id).
    pub reply: Option<Frame>,
    /// The connection just authenticated: subscribe it and start delivery.
    pub authenticated: Option<Authenticated>,
    /// Acknowledgements of envelopes delivered on this connection that the store has
    /// answered (whatever it answered): that many delivery-window slots are free again.
    pub released: usize,
    /// The device asked to drain its mailbox; answer `mailbox_empty` with this id.
    pub drain: Option<u64>,
    /// A security device started watching: push the events of this feed after the
    /// reply.
    pub watch: Option<SecurityFeed>,
}

/// The live security events a watching connection forwards (`security_event` pushes).
#[derive(Debug)]
pub struct SecurityFeed {
    /// New events.
    pub feed: tokio::sync::broadcast::Receiver<Arc<sealpost_protocol::wire::SecurityEventInfo>>,
    /// The last id the reply held: events up to it are not pushed again.
    pub after: u64,
}

fn reply(id: u64, body: FrameBody) -> Handled {
    Handled {
        reply: Some(Frame::new(id, body)),
        ..Handled::default()
    }
}

fn refuse(id: u64, code: ErrorCode, message: &str) -> Handled {
    reply(id, FrameBody::error(code, message))
}

fn limited(id: u64, which: &'static str, l: Limited) -> Handled {
    metrics::counter!(m::RATE_LIMITED, "limit" => which).increment(1);
    if l == Limited::TooManyKeys {
        metrics::counter!(m::RATE_LIMIT_KEYS_FULL, "limit" => which).increment(1);
    }
    let mut h = refuse(id, ErrorCode::RateLimited, &format!("rate limit: {which}"));
    if let Some(Frame {
        body: FrameBody::Error { retry_after_ms, .. },
        ..
    }) = &mut h.reply
    {
        *retry_after_ms = Some(l.retry_after_ms());
    }
    h
}

fn store_failure(id: u64, e: &StoreError) -> Handled {
    match e {
        StoreError::Conflict(what) => {
            refuse(id, ErrorCode::Conflict, &format!("{what} already exists"))
        }
        StoreError::NotFound(what) => refuse(id, ErrorCode::NotFound, &format!("{what} not found")),
        StoreError::EnrollmentRefused => refuse(
            id,
            ErrorCode::EnrollmentRefused,
            "enrolment code is unknown, used or expired",
        ),
        StoreError::QuotaExceeded { what, current, max } => refuse(
            id,
            ErrorCode::QuotaExceeded,
            &format!("quota exceeded: {what} ({current} of at most {max})"),
        ),
        StoreError::Backend(detail) => {
            warn!(error = %detail, "storage failure");
            refuse(id, ErrorCode::Internal, "storage failure; retry later")
        }
    }
}

fn type_name(body: &FrameBody) -> &'static str {
    match body {
        FrameBody::Enroll { .. } => "enroll",
        FrameBody::AuthStart { .. } => "auth_start",
        FrameBody::AuthResponse { .. } => "auth_response",
        FrameBody::UploadPreKeys { .. } => "upload_pre_keys",
        FrameBody::FetchBundles { .. } => "fetch_bundles",
        FrameBody::ListDevices { .. } => "list_devices",
        FrameBody::Send { .. } => "send",
        FrameBody::Ack { .. } => "ack",
        FrameBody::Ping => "ping",
        FrameBody::ListContacts => "list_contacts",
        FrameBody::Drain => "drain",
        FrameBody::LinkStart { .. } => "link_start",
        FrameBody::LinkPoll { .. } => "link_poll",
        FrameBody::LinkSign { .. } => "link_sign",
        FrameBody::LinkComplete { .. } => "link_complete",
        FrameBody::LinkAuthorize { .. } => "link_authorize",
        FrameBody::SendNotice { .. } => "send_notice",
        FrameBody::GetRoster { .. } => "get_roster",
        FrameBody::PublishRoster { .. } => "publish_roster",
        FrameBody::GetDeviceLog { .. } => "get_device_log",
        FrameBody::AppendDeviceLog { .. } => "append_device_log",
        FrameBody::ListLinks { .. } => "list_links",
        FrameBody::LinkOffer { .. } => "link_offer",
        FrameBody::GetOrg => "get_org",
        FrameBody::DismissLink { .. } => "dismiss_link",
        FrameBody::GetLogHeads { .. } => "get_log_heads",
        FrameBody::ListClients { .. } => "list_clients",
        FrameBody::SecurityWatch { .. } => "security_watch",
        FrameBody::GetAccountAlerts { .. } => "get_account_alerts",
        FrameBody::AnchorArchive { .. } => "anchor_archive",
        FrameBody::AttestStart { .. }
        | FrameBody::AttestPoll
        | FrameBody::AttestReveal { .. }
        | FrameBody::ListUnattested { .. }
        | FrameBody::AttestChallenge { .. }
        | FrameBody::AttestSubmit { .. }
        | FrameBody::AttestDismiss { .. } => "attest",
        FrameBody::GetCheckpoint
        | FrameBody::ProveLogHead { .. }
        | FrameBody::ProveRoster { .. }
        | FrameBody::GetLogLeaves { .. }
        | FrameBody::GetConsistency { .. }
        | FrameBody::SubmitCosignature { .. } => "tlog",
        FrameBody::BlobUpload { .. }
        | FrameBody::BlobDownload { .. }
        | FrameBody::BlobChunk { .. } => "blob",
        _ => "relay_only",
    }
}

impl<S: Store> Relay<S> {
    /// Sign the transparency log with `signer` (the key of the data directory).
    pub fn with_log_signer(mut self, signer: sealpost_protocol::tlog::LogSigner) -> Self {
        self.tlog = crate::tlog::Tlog::new(signer);
        self
    }

    /// Build the relay state.
    pub fn new(store: S, config: Config) -> Self {
        let l = &config.limits;
        let limiters = Limiters {
            send: KeyedLimiter::new(l.send_rate, l.rate_limit_max_keys),
            auth_ip: KeyedLimiter::new(l.auth_failures_per_ip, l.rate_limit_max_keys),
            auth_device: KeyedLimiter::new(l.auth_failures_per_device, l.rate_limit_max_keys),
            fetch_device: KeyedLimiter::new(l.bundle_fetch_per_device, l.rate_limit_max_keys),
            fetch_pair: KeyedLimiter::new(l.bundle_fetch_per_pair, l.rate_limit_max_keys),
            control: KeyedLimiter::new(l.control_requests_per_device, l.rate_limit_max_keys),
            link_ip: KeyedLimiter::new(l.link_requests_per_ip, l.rate_limit_max_keys),
        };
        // A relay built in-process without its data directory signs with a fresh key;
        // `Server::bind` replaces it with the one in the data directory.
        let log_name = sealpost_protocol::tlog::KeyName::new(&config.log_origin)
            .or_else(|_| sealpost_protocol::tlog::KeyName::new(crate::tlog::DEFAULT_LOG_ORIGIN));
        let tlog = match log_name {
            Ok(name) => crate::tlog::Tlog::new(sealpost_protocol::tlog::LogSigner::generate(
                name,
                &mut rand::rngs::OsRng,
            )),
            Err(_) => unreachable!("the default origin is a valid key name"),
        };
        let security = Arc::new(Security::new(
            config.security.clone(),
            Arc::new(crate::store::events::MemoryEventStore::new(
                usize::try_from(config.security.max_events).unwrap_or(usize::MAX),
            )),
        ));
        Self {
            tlog,
            security,
            trust: TrustState::new(config.org_fingerprint, l.trust_cache_accounts),
            attest: Mutex::new(attest_frames::AttestRegistry::default()),
            links: Mutex::new(LinkRegistry::new(
                l.max_pending_links,
                l.link_lifetime_secs.saturating_mul(1000),
            )),
            store,
            hub: Arc::new(Hub::new()),
            blobs: Arc::new(crate::store::blob::MemoryBlobStore::new(
                crate::store::blob::BlobLimits::from_limits(&config.limits),
            )),
            config,
            limiters: Mutex::new(limiters),
            started: Instant::now(),
            revocations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Close the open connections of every device of an account the operator disabled
    /// (`sealpost-relay admin disable`, which may run in another process: the sweep calls
    /// this every 30 s; authentication is refused at once). Returns how many were online.
    pub async fn close_disabled(&self) -> Result<usize, crate::store::StoreError> {
        let mut closed = 0;
        for account in self.store.disabled_accounts().await? {
            for d in self.store.devices_of(&account).await? {
                if self.hub.revoke(&d.id) {
                    info!(account = %account, device = %d.id, "connection closed: the account is disabled");
                    closed += 1;
                }
            }
        }
        Ok(closed)
    }

    /// The readiness probe's read: the store answers a lookup (whatever the answer; only
    /// that the store answers matters).
    pub async fn probe_store(&self) -> Result<(), String> {
        let probe = AccountId::new("readyz-probe").map_err(|e| e.to_string())?;
        self.store
            .account(&probe)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// How many revoking device-log appends this relay has made durable (see
    /// [`Relay::revoked_devices`]); a cached recipient read at an older epoch is read again.
    pub fn revocation_epoch(&self) -> u64 {
        self.revocations.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Record that a durable device-log append revoked devices (called after the store
    /// committed it, before the relay answers).
    pub(crate) fn revoked_devices(&self) {
        self.revocations
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Store security events in `events` (instead of the in-memory store `new` sets up);
    /// event ids continue after its last.
    pub fn with_events(mut self, events: Arc<dyn crate::store::events::EventStore>) -> Self {
        self.security = Arc::new(Security::new(self.config.security.clone(), events));
        self
    }

    /// Hand `obs` to the security rules and carry out the measures of the events it
    /// raises (docs/OPERATIONS.md, "Targeted measures"). Never waits: one short critical
    /// section, and a queue to the writer task.
    pub fn observe(&self, obs: Observation) {
        let now = unix_ms();
        for (raised, info) in self.security.observe(now, &obs) {
            let Some(account) = raised.account.as_ref() else {
                continue;
            };
            for measure in raised.measure.iter() {
                self.take_measure(now, measure, &raised, account, &info);
            }
        }
    }

    fn take_measure(
        &self,
        now: u64,
        measure: Measure,
        raised: &crate::security::Raised,
        account: &AccountId,
        info: &Arc<sealpost_protocol::wire::SecurityEventInfo>,
    ) {
        {
            match measure {
                Measure::HoldSensitive => {
                    let until = now.saturating_add(
                        self.security
                            .config()
                            .hold_sensitive_for
                            .saturating_mul(1000),
                    );
                    self.security.hold(account, until);
                    info!(account = %account, rule = raised.rule.name(), until_ms = until, "measure: sensitive kinds held");
                }
                Measure::RequireFreshLinkCode => {
                    let dropped = match self.links.lock() {
                        Ok(mut l) => l.drop_account(account),
                        Err(p) => p.into_inner().drop_account(account),
                    };
                    info!(account = %account, rule = raised.rule.name(), dropped, "measure: pending link requests dropped; a new link needs a new code");
                }
                Measure::NotifyDevices => {
                    // Online devices now; the others ask when they next connect (the
                    // writer stores the event marked as an alert).
                    let online = self.hub.push_account(account, raised.device.as_ref(), || {
                        crate::hub::Push::AccountAlert(info.clone())
                    });
                    info!(account = %account, rule = raised.rule.name(), online, "measure: the account's other devices notified");
                }
            }
        }
    }

    /// Whether `me` may watch security events: a staff device whose account the verified
    /// roster lists with the `security` role, and this device among its devices.
    pub fn is_security_desk(&self, me: &Authenticated) -> bool {
        if me.role != Role::Staff {
            return false;
        }
        let Some(chain) = self.trust.chain() else {
            return false;
        };
        chain.head().member(&me.account).is_some_and(|m| {
            m.role == sealpost_protocol::trust::StaffRole::Security
                && m.device(&me.device).is_some()
        })
    }

    /// Use `blobs` for attachment blobs (instead of the in-memory store `new` sets up).
    pub fn with_blobs(mut self, blobs: Arc<dyn crate::store::blob::BlobStore>) -> Self {
        self.blobs = blobs;
        self
    }

    /// Monotonic milliseconds since the relay started (for rate limits).
    pub fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn with_limiters<T>(&self, f: impl FnOnce(&mut Limiters) -> T) -> T {
        match self.limiters.lock() {
            Ok(mut l) => f(&mut l),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Whether this address may still try to authenticate or enrol.
    fn auth_allowed(&self, ip: IpAddr) -> Result<(), Limited> {
        let now = self.mono_ms();
        // A new address is refused while the table is full: its failures could not be
        // recorded.
        self.with_limiters(|l| l.auth_ip.would_allow(&ip, 1.0, now))
    }

    fn auth_failed(&self, ip: IpAddr, device: Option<DeviceId>, account: Option<&AccountId>) {
        metrics::counter!(m::AUTH_FAILURES).increment(1);
        self.observe(Observation::AuthFailed {
            account: account.cloned(),
            device,
            address: ip,
        });
        let now = self.mono_ms();
        let (by_ip, by_device) = self.with_limiters(|l| {
            let by_ip = l.auth_ip.check(&ip, 1.0, now);
            let by_device = device.map(|d| l.auth_device.check(&d, 1.0, now));
            (by_ip, by_device)
        });
        // A failure a full table could not record: the key is refused anyway until the
        // table has room (`would_allow` fails closed), and it is counted.
        if by_ip == Err(Limited::TooManyKeys) {
            metrics::counter!(m::RATE_LIMIT_KEYS_FULL, "limit" => "auth_failures_per_ip")
                .increment(1);
        }
        if by_device == Some(Err(Limited::TooManyKeys)) {
            metrics::counter!(m::RATE_LIMIT_KEYS_FULL, "limit" => "auth_failures_per_device")
                .increment(1);
        }
    }

    /// Handle one decoded frame.
    pub async fn handle(&self, ctx: &mut ConnCtx, frame: Frame) -> Handled {
        let started = Instant::now();
        let name = type_name(&frame.body);
        let id = frame.id;
        let out = match frame.body {
            FrameBody::Ping => reply(id, FrameBody::Pong),
            FrameBody::Enroll {
                account,
                code,
                identity,
                signature,
                genesis,
            } => {
                self.enroll(
                    ctx,
                    id,
                    account,
                    code.as_str(),
                    identity,
                    signature,
                    *genesis,
                )
                .await
            }
            FrameBody::LinkStart {
                account,
                identity,
                commitment,
                signature,
            } => {
                self.link_start(ctx, id, account, identity, commitment, signature)
                    .await
            }
            FrameBody::LinkPoll { link_id } => self.link_poll(ctx, id, link_id),
            FrameBody::LinkSign {
                link_id,
                signature,
                nonce,
            } => self.link_sign(ctx, id, link_id, signature, nonce),
            FrameBody::LinkComplete { link_id, signature } => {
                self.link_complete(ctx, id, link_id, signature).await
            }
            FrameBody::GetOrg => reply(
                id,
                FrameBody::Org {
                    fingerprint: self.trust.pinned().map(|f| f.0),
                },
            ),
            FrameBody::AuthStart { device } => self.auth_start(ctx, id, device),
            FrameBody::AuthResponse { signature } => self.auth_response(ctx, id, signature).await,
            body => match ctx.authenticated().cloned() {
                None => refuse(
                    id,
                    ErrorCode::Unauthenticated,
                    "authenticate first (auth_start)",
                ),
                Some(me) => self.handle_authenticated(ctx, &me, id, body).await,
            },
        };
        metrics::histogram!(m::REQUEST_LATENCY, "type" => name)
            .record(started.elapsed().as_secs_f64());
        out
    }

    #[allow(clippy::too_many_arguments)]
    async fn enroll(
        &self,
        ctx: &mut ConnCtx,
        id: u64,
        account: AccountId,
        code: &str,
        identity: sealpost_protocol::PublicIdentity,
        signature: [u8; 64],
        genesis: sealpost_protocol::trust::LogEntry,
    ) -> Handled {
        if ctx.authenticated().is_some() {
            return refuse(id, ErrorCode::UnexpectedFrame, "already authenticated");
        }
        if let Err(l) = self.auth_allowed(ctx.remote.ip()) {
            return limited(id, "auth_failures_per_ip", l);
        }
        let msg = enroll_signature_message(&ctx.exporter, &account, code);
        if identity.verify(&msg, &signature).is_err() {
            self.auth_failed(ctx.remote.ip(), None, Some(&account));
            return refuse(
                id,
                ErrorCode::AuthFailed,
                "enrolment signature does not verify for this connection",
            );
        }
        let now = unix_ms();
        let generation = self.trust.generation();
        let snapshot = match self.check_genesis(&account, &identity, &genesis, now) {
            Ok(s) => s,
            Err(why) => {
                self.trust_refused("genesis");
                return refuse(id, ErrorCode::Forbidden, &why);
            }
        };
        match self
            .store
            .enroll_first_device(
                &account,
                enrollment_code_hash(code),
                &identity,
                &genesis,
                now,
            )
            .await
        {
            Ok(dev) => {
                let role = match self.store.account(&account).await {
                    Ok(Some(a)) => a.role,
                    Ok(None) => return refuse(id, ErrorCode::NotFound, "account not found"),
                    Err(e) => return store_failure(id, &e),
                };
                self.trust.install(snapshot, generation);
                metrics::counter!(m::DEVICE_LOG_APPENDS, "action" => "add").increment(1);
                info!(account = %account, device = %dev.id, "device enrolled (device log entry 0)");
                reply(
                    id,
                    FrameBody::Enrolled {
                        device: dev.id,
                        role,
                    },
                )
            }
            Err(StoreError::EnrollmentRefused) => {
                self.auth_failed(ctx.remote.ip(), None, Some(&account));
                refuse(
                    id,
                    ErrorCode::EnrollmentRefused,
                    "enrolment code is unknown, used or expired, or the account already has a \
                     device (further devices are linked from an existing one)",
                )
            }
            Err(e) => store_failure(id, &e),
        }
    }

    fn auth_start(&self, ctx: &mut ConnCtx, id: u64, device: DeviceId) -> Handled {
        if ctx.authenticated().is_some() {
            return refuse(id, ErrorCode::UnexpectedFrame, "already authenticated");
        }
        if let Err(l) = self.auth_allowed(ctx.remote.ip()) {
            return limited(id, "auth_failures_per_ip", l);
        }
        let now = self.mono_ms();
        if let Err(l) = self.with_limiters(|l| l.auth_device.would_allow(&device, 1.0, now)) {
            return limited(id, "auth_failures_per_device", l);
        }
        let mut nonce = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        ctx.auth = AuthState::Challenged { device, nonce };
        reply(id, FrameBody::AuthChallenge { nonce })
    }

    async fn auth_response(&self, ctx: &mut ConnCtx, id: u64, signature: [u8; 64]) -> Handled {
        let (device, nonce) = match &ctx.auth {
            AuthState::Challenged { device, nonce } => (*device, *nonce),
            AuthState::Fresh => {
                return refuse(
                    id,
                    ErrorCode::UnexpectedFrame,
                    "auth_response without auth_start",
                )
            }
            AuthState::Done(_) => {
                return refuse(id, ErrorCode::UnexpectedFrame, "already authenticated")
            }
        };
        // One challenge, one attempt.
        ctx.auth = AuthState::Fresh;
        let record = match self.store.device(&device).await {
            Ok(r) => r,
            Err(e) => return store_failure(id, &e),
        };
        let verified = record.as_ref().is_some_and(|r| {
            !r.revoked
                && r.identity
                    .verify(
                        &auth_signature_message(&ctx.exporter, &nonce, &device),
                        &signature,
                    )
                    .is_ok()
        });
        let claimed = record.as_ref().map(|r| r.account.clone());
        let Some(record) = record.filter(|_| verified) else {
            self.auth_failed(ctx.remote.ip(), Some(device), claimed.as_ref());
            debug!(device = %device, remote = %ctx.remote, "authentication failed");
            return refuse(id, ErrorCode::AuthFailed, "authentication failed");
        };
        let account = match self.store.account(&record.account).await {
            Ok(Some(a)) => a,
            Ok(None) => return refuse(id, ErrorCode::AuthFailed, "authentication failed"),
            Err(e) => return store_failure(id, &e),
        };
        if account.disabled {
            info!(device = %device, account = %account.id, "authentication refused: the account is disabled");
            return refuse(
                id,
                ErrorCode::AuthFailed,
                "authentication refused: this account is disabled by the relay's operator",
            );
        }
        // Only a device its account's verified device log lists as active may
        // authenticate (a device written into storage behind the log's back may not).
        let snapshot = match self.account_trust(&account.id).await {
            Ok(t) => t,
            Err(f) => return f.answer(id),
        };
        if !snapshot.is_active(&device) {
            self.trust_refused("auth_not_in_log");
            self.auth_failed(ctx.remote.ip(), Some(device), Some(&account.id));
            debug!(device = %device, "authentication refused: device not active in its log");
            return refuse(
                id,
                ErrorCode::AuthFailed,
                "authentication failed: the device is not active in its account's device log",
            );
        }
        ctx.sender = Some(SenderTrust::new(snapshot, &device));
        let me = Authenticated {
            device,
            account: account.id.clone(),
            role: account.role,
        };
        ctx.auth = AuthState::Done(me.clone());
        info!(device = %device, account = %account.id, "device authenticated");
        Handled {
            reply: Some(Frame::new(
                id,
                FrameBody::AuthOk {
                    account: account.id,
                    role: account.role,
                },
            )),
            authenticated: Some(me),
            released: 0,
            drain: None,
            watch: None,
        }
    }

    async fn handle_authenticated(
        &self,
        ctx: &mut ConnCtx,
        me: &Authenticated,
        id: u64,
        body: FrameBody,
    ) -> Handled {
        if matches!(
            body,
            FrameBody::UploadPreKeys { .. }
                | FrameBody::ListDevices { .. }
                | FrameBody::ListContacts
                | FrameBody::Drain
                | FrameBody::GetRoster { .. }
                | FrameBody::PublishRoster { .. }
                | FrameBody::GetDeviceLog { .. }
                | FrameBody::AppendDeviceLog { .. }
                | FrameBody::ListLinks { .. }
                | FrameBody::LinkOffer { .. }
                | FrameBody::LinkAuthorize { .. }
                | FrameBody::DismissLink { .. }
                | FrameBody::GetLogHeads { .. }
                | FrameBody::ListClients { .. }
                | FrameBody::AttestStart { .. }
                | FrameBody::AttestPoll
                | FrameBody::AttestReveal { .. }
                | FrameBody::ListUnattested { .. }
                | FrameBody::AttestChallenge { .. }
                | FrameBody::AttestSubmit { .. }
                | FrameBody::AttestDismiss { .. }
                | FrameBody::GetCheckpoint
                | FrameBody::ProveLogHead { .. }
                | FrameBody::ProveRoster { .. }
                | FrameBody::GetLogLeaves { .. }
                | FrameBody::GetConsistency { .. }
                | FrameBody::SubmitCosignature { .. }
                | FrameBody::SecurityWatch { .. }
                | FrameBody::GetAccountAlerts { .. }
                | FrameBody::AnchorArchive { .. }
        ) {
            let now = self.mono_ms();
            if let Err(l) = self.with_limiters(|l| l.control.check(&me.device, 1.0, now)) {
                return limited(id, "control_requests_per_device", l);
            }
        }
        match body {
            FrameBody::Send { envelope } => self.send(ctx, me, id, envelope).await,
            // An acknowledgement names what this connection delivered; the connection
            // shell (`conn.rs`) resolves it against its deliveries and calls
            // `commit_ack`. Without a delivery there is nothing to acknowledge.
            FrameBody::Ack { .. } => Handled::default(),
            FrameBody::UploadPreKeys {
                signed_prekey,
                one_time,
                kem_one_time,
                kem_last_resort,
            } => {
                self.upload_prekeys(
                    me,
                    id,
                    signed_prekey,
                    one_time.into_inner(),
                    kem_one_time.into_inner(),
                    kem_last_resort,
                )
                .await
            }
            FrameBody::FetchBundles { account } => self.fetch_bundles(ctx, me, id, account).await,
            FrameBody::ListDevices { account } => self.list_devices(ctx, me, id, account).await,
            FrameBody::ListContacts => self.list_contacts(me, id).await,
            FrameBody::Drain => Handled {
                drain: Some(id),
                ..Handled::default()
            },
            FrameBody::SendNotice { envelope, notice } => {
                self.send_notice(ctx, me, id, envelope, *notice).await
            }
            FrameBody::GetRoster { after_version } => self.get_roster(id, after_version),
            FrameBody::PublishRoster { roster } => self.publish_roster(me, id, *roster).await,
            FrameBody::GetDeviceLog { account, from_seq } => {
                self.get_device_log(me, id, account, from_seq).await
            }
            FrameBody::AppendDeviceLog { entry } => self.append_device_log(me, id, *entry).await,
            FrameBody::ListLinks { account } => self.list_links(me, id, account),
            FrameBody::LinkOffer {
                link_id,
                challenge,
                body,
            } => self.link_offer(me, id, link_id, challenge, *body).await,
            FrameBody::LinkAuthorize { link_id, entry } => {
                self.link_authorize(me, id, link_id, *entry).await
            }
            FrameBody::DismissLink { link_id } => self.dismiss_link(me, id, link_id),
            FrameBody::GetLogHeads { after } => self.log_heads(me, id, after).await,
            FrameBody::ListClients { after } => self.list_clients(me, id, after).await,
            FrameBody::AttestStart { commitment } => self.attest_start(me, id, commitment).await,
            FrameBody::AttestPoll => self.attest_poll(me, id).await,
            FrameBody::AttestReveal { nonce } => self.attest_reveal(me, id, nonce).await,
            FrameBody::ListUnattested { after } => self.list_unattested(me, id, after).await,
            FrameBody::AttestChallenge { account, challenge } => {
                self.attest_challenge(me, id, account, challenge)
            }
            FrameBody::AttestSubmit { attestation } => {
                self.attest_submit(me, id, *attestation).await
            }
            FrameBody::AttestDismiss { account } => self.attest_dismiss(me, id, account),
            FrameBody::GetCheckpoint => self.get_checkpoint(id).await,
            FrameBody::ProveLogHead {
                account,
                length,
                head,
                old_size,
            } => {
                self.prove_log_head(id, account, length, head, old_size)
                    .await
            }
            FrameBody::ProveRoster {
                version,
                hash,
                old_size,
            } => self.prove_roster(id, version, hash, old_size).await,
            FrameBody::GetLogLeaves { start, count } => {
                self.get_log_leaves(me, id, start, count).await
            }
            FrameBody::GetConsistency { old_size, new_size } => {
                self.get_consistency(id, old_size, new_size).await
            }
            FrameBody::SubmitCosignature { size, line } => {
                self.submit_cosignature(me, id, size, line.as_str()).await
            }
            FrameBody::SecurityWatch { since } => self.security_watch(me, id, since).await,
            FrameBody::GetAccountAlerts { since } => self.get_account_alerts(me, id, since).await,
            FrameBody::AnchorArchive { seq, hash } => self.anchor_archive(me, id, seq, hash).await,
            FrameBody::BlobUpload { .. }
            | FrameBody::BlobDownload { .. }
            | FrameBody::BlobChunk { .. } => refuse(
                id,
                ErrorCode::UnexpectedFrame,
                "attachment frames belong on their own stream",
            ),
            _ => refuse(
                id,
                ErrorCode::UnexpectedFrame,
                "this frame type is sent by the relay, not to it",
            ),
        }
    }

    /// `security_watch`: the stored events after `since` and, when they all fit in the
    /// answer, the live feed from then on; only for the security desk
    /// ([`Relay::is_security_desk`]), anyone else is refused and gets nothing.
    async fn security_watch(&self, me: &Authenticated, id: u64, since: u64) -> Handled {
        if !self.is_security_desk(me) {
            self.trust_refused("security_watch");
            info!(account = %me.account, device = %me.device, "security_watch refused: not a security staff device in the roster");
            return refuse(
                id,
                ErrorCode::Forbidden,
                "security events are only for devices of staff whose role in the verified \
                 roster is security",
            );
        }
        let start = self
            .security
            .watch(
                since,
                sealpost_protocol::wire::MAX_SECURITY_EVENTS_PER_FRAME,
            )
            .await;
        let after = start.events.last().map_or(since, |e| e.id);
        let more = start.more;
        let events = match BoundedVec::new(start.events) {
            Ok(e) => e,
            Err(_) => return refuse(id, ErrorCode::Internal, "too many security events"),
        };
        let mut h = reply(id, FrameBody::SecurityEvents { events, more });
        if !more {
            info!(account = %me.account, device = %me.device, since, "security desk watching");
            h.watch = Some(SecurityFeed {
                feed: start.feed,
                after,
            });
        }
        h
    }

    /// `get_account_alerts`: the stored alerts for `me`'s own account after `since`
    /// (the `notify_devices` measure), those about `me` itself left out.
    async fn get_account_alerts(&self, me: &Authenticated, id: u64, since: u64) -> Handled {
        let max = sealpost_protocol::wire::MAX_SECURITY_EVENTS_PER_FRAME;
        let mut alerts = match self
            .security
            .alerts_for(&me.account, me.device, since, max + 1)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "reading account alerts failed");
                return refuse(id, ErrorCode::Internal, "alerts unavailable; try again");
            }
        };
        let more = alerts.len() > max;
        alerts.truncate(max);
        match BoundedVec::new(alerts) {
            Ok(alerts) => reply(id, FrameBody::AccountAlerts { alerts, more }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many alerts"),
        }
    }

    /// `anchor_archive` (§22.6): the archive device's chain head, appended to the
    /// transparency log with the device as its actor.
    async fn anchor_archive(
        &self,
        me: &Authenticated,
        id: u64,
        seq: u64,
        hash: [u8; 32],
    ) -> Handled {
        if self.archive_account().is_none_or(|a| a != me.account) {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "only the firm's archive (as the verified roster names it) anchors its chain",
            );
        }
        let leaf = sealpost_protocol::tlog::LogLeaf::new(
            unix_ms(),
            sealpost_protocol::tlog::Actor::Device {
                account: me.account.clone(),
                device: me.device,
            },
            sealpost_protocol::tlog::LeafEvent::ArchiveHead { seq, hash },
        );
        match self.tlog.append(&self.store, &leaf, unix_ms()).await {
            Ok(index) => {
                info!(
                    seq,
                    index, "archive chain head anchored in the transparency log"
                );
                reply(id, FrameBody::ArchiveAnchored { index })
            }
            Err(e) => {
                warn!(error = %e, "anchoring the archive's head failed");
                refuse(
                    id,
                    ErrorCode::Internal,
                    "the log could not take the anchor; try again",
                )
            }
        }
    }

    /// The archive account the verified roster head names (§22), if any.
    pub fn archive_account(&self) -> Option<AccountId> {
        self.trust.chain().and_then(|c| {
            c.head()
                .policy()
                .archive
                .as_ref()
                .map(|a| a.account.clone())
        })
    }

    /// May `me` address `account`? Checked with the policy, cached per connection.
    async fn may_reach_account(
        &self,
        me: &Authenticated,
        account: &AccountRecord,
    ) -> Result<Result<(), String>, StoreError> {
        let sender = match self.store.account(&me.account).await? {
            Some(a) => a,
            None => return Ok(Err("sending account no longer exists".into())),
        };
        // The firm's archive (§22): every member of the organisation hands it copies; it
        // sends nothing.
        if let Some(archive) = self.archive_account() {
            if archive == sender.id {
                return Ok(Err("the firm's archive account sends nothing".into()));
            }
            if archive == account.id {
                return Ok(Ok(()));
            }
        }
        let s = Party {
            account: &sender.id,
            role: sender.role,
        };
        let r = Party {
            account: &account.id,
            role: account.role,
        };
        let assigned = match policy::required_assignment(s, r) {
            Err(refusal) => return Ok(Err(refusal.to_string())),
            Ok(None) => true,
            Ok(Some((client, staff))) => self.store.is_assigned(client, staff).await?,
        };
        Ok(policy::decide(s, r, assigned).map_err(|e| e.to_string()))
    }

    async fn peer(
        &self,
        ctx: &mut ConnCtx,
        me: &Authenticated,
        device: &DeviceId,
    ) -> Result<Option<PeerInfo>, StoreError> {
        let now = self.mono_ms();
        let epoch = self.revocation_epoch();
        if let Some(p) = ctx.peers.get(device) {
            if p.expires_ms > now && p.epoch == epoch {
                return Ok(Some(p.clone()));
            }
        }
        let Some(rec) = self.store.device(device).await? else {
            return Ok(None);
        };
        let Some(account) = self.store.account(&rec.account).await? else {
            return Ok(None);
        };
        let allowed = self.may_reach_account(me, &account).await?;
        let info = PeerInfo {
            allowed: allowed.map_err(|why| (why, account.id.clone())),
            revoked: rec.revoked,
            archive: self.archive_account().is_some_and(|a| a == account.id),
            expires_ms: now + POLICY_CACHE_MS,
            epoch,
        };
        // Only what is allowed is cached: an assignment the operator adds (another
        // process, `sealpost-relay admin assign`) takes effect at the next send, not
        // after the cache entry lapses. (One removed still lets a connection that used it
        // reach the account for up to POLICY_CACHE_MS.)
        if info.allowed.is_ok() {
            if ctx.peers.len() >= POLICY_CACHE_MAX {
                ctx.peers.retain(|_, p| p.expires_ms > now);
                if ctx.peers.len() >= POLICY_CACHE_MAX {
                    ctx.peers.clear();
                }
            }
            ctx.peers.insert(*device, info.clone());
        }
        Ok(Some(info))
    }

    async fn send(
        &self,
        ctx: &mut ConnCtx,
        me: &Authenticated,
        id: u64,
        envelope: Envelope,
    ) -> Handled {
        match self.prepare_send(ctx, me, id, envelope).await {
            Ok(p) => self.commit_send(p).await,
            Err(refused) => refused,
        }
    }

    /// Every check of a `send` (sender, kind, device log, size, recipient, policy, rate
    /// limit), in frame order; what passes only needs [`Relay::commit_send`].
    pub async fn prepare_send(
        &self,
        ctx: &mut ConnCtx,
        me: &Authenticated,
        id: u64,
        envelope: Envelope,
    ) -> Result<PreparedSend, Handled> {
        if envelope.header.kind == EnvelopeKind::Notice {
            self.trust_refused("notice_via_send");
            return Err(refuse(
                id,
                ErrorCode::Forbidden,
                "notices are sent with send_notice, which carries the signed notice header",
            ));
        }
        self.prepare_envelope(ctx, me, id, envelope, false).await
    }

    /// The checks `send` and `send_notice` share. `any_client`: the envelope carries a
    /// notice to all clients whose quorum and audience the caller checked, so a client
    /// recipient need not be assigned to the sender (`relay/directory.rs`).
    async fn prepare_envelope(
        &self,
        ctx: &mut ConnCtx,
        me: &Authenticated,
        id: u64,
        envelope: Envelope,
        any_client: bool,
    ) -> Result<PreparedSend, Handled> {
        let started = Instant::now();
        if envelope.header.sender != me.device {
            return Err(refuse(
                id,
                ErrorCode::Forbidden,
                "envelope sender must be the authenticated device",
            ));
        }
        // The device-log send rule (§19.6), from the connection's cached snapshot.
        let kind = envelope.header.kind;
        let decision = match ctx.sender.as_ref().filter(|s| !s.is_stale()) {
            Some(s) => s.may_send(kind, unix_ms),
            None => {
                let snapshot = self
                    .account_trust(&me.account)
                    .await
                    .map_err(|f| f.answer(id))?;
                let sender = SenderTrust::new(snapshot, &me.device);
                let d = sender.may_send(kind, unix_ms);
                ctx.sender = Some(sender);
                d
            }
        };
        if let SendDecision::OnProbation { .. } = decision {
            self.observe(Observation::SensitiveDuringCoolingOff {
                account: me.account.clone(),
                device: me.device,
                kind: kind.name(),
            });
        }
        if decision != SendDecision::Allowed {
            self.trust_refused(refusal_label(decision));
            let why = refusal_message(decision, kind).unwrap_or_default();
            debug!(device = %me.device, kind = ?kind, reason = refusal_label(decision), "send refused by the device log");
            return Err(refuse(id, ErrorCode::Forbidden, &why));
        }
        // A targeted measure (`hold_sensitive`): one atomic load unless an account is held.
        if let Some(until) = self.security.held_until(&me.account, unix_ms) {
            if ctx.sender.as_ref().is_some_and(|s| s.is_sensitive(kind)) {
                self.trust_refused("security_hold");
                return Err(refuse(
                    id,
                    ErrorCode::Forbidden,
                    &format!(
                        "security hold: the relay's security desk holds {} envelopes of this \
                         account until {} (a security event's measure); contact the firm",
                        kind.name(),
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(until)
                        )
                    ),
                ));
            }
        }
        if envelope.body.len() > self.config.limits.max_envelope_bytes {
            return Err(refuse(
                id,
                ErrorCode::TooLarge,
                &format!(
                    "envelope body of {} bytes exceeds {}",
                    envelope.body.len(),
                    self.config.limits.max_envelope_bytes
                ),
            ));
        }
        let recipient = envelope.header.recipient;
        let peer = match self.peer(ctx, me, &recipient).await {
            Ok(Some(p)) if !p.revoked => p,
            Ok(_) => {
                return Err(refuse(
                    id,
                    ErrorCode::NotFound,
                    "recipient device not found",
                ))
            }
            Err(e) => return Err(store_failure(id, &e)),
        };
        if let Err((why, target)) = &peer.allowed {
            if !any_client {
                self.observe(Observation::UnassignedContact {
                    account: me.account.clone(),
                    device: me.device,
                    target: target.clone(),
                });
                return Err(refuse(id, ErrorCode::Forbidden, why));
            }
        }
        // Archive copies go to the roster's archive, and it takes nothing else (§22).
        match (peer.archive, kind == EnvelopeKind::Archive) {
            (true, false) => {
                return Err(refuse(
                    id,
                    ErrorCode::Forbidden,
                    "the firm's archive takes only archive copies (kind archive)",
                ))
            }
            (false, true) => {
                return Err(refuse(
                    id,
                    ErrorCode::Forbidden,
                    "archive copies go only to the archive the verified roster names",
                ))
            }
            _ => {}
        }
        let now = self.mono_ms();
        if let Err(l) = self.with_limiters(|l| l.send.check(&me.device, 1.0, now)) {
            return Err(limited(id, "send_rate", l));
        }
        let limits = &self.config.limits;
        let quota = Quota {
            max_count: limits.mailbox_max_count,
            max_bytes: limits.mailbox_max_bytes,
        };
        let expires = unix_ms().saturating_add(limits.envelope_ttl_secs.saturating_mul(1000));
        Ok(PreparedSend {
            id,
            envelope,
            quota,
            expires,
            started,
        })
    }

    /// Store a checked `send`: the recipient, if online, gets it as soon as the store has
    /// staged it (sequence number assigned, visible to its mailbox), without waiting for
    /// the disk; the sender is answered `accepted` only once it is durable.
    pub async fn commit_send(&self, p: PreparedSend) -> Handled {
        let PreparedSend {
            id,
            envelope,
            quota,
            expires,
            started,
        } = p;
        let message_id = envelope.header.message_id;
        let recipient = envelope.header.recipient;
        let envelope = Arc::new(envelope);
        let hub = Arc::clone(&self.hub);
        let pushed = Arc::clone(&envelope);
        let on_staged: crate::store::OnStaged = Box::new(move |seq| {
            hub.push(
                &recipient,
                Push::Envelope {
                    seq,
                    envelope: pushed,
                },
            )
        });
        match self
            .store
            .enqueue_with(envelope, expires, quota, on_staged)
            .await
        {
            Ok(done) => {
                metrics::histogram!(m::SEND_LATENCY).record(started.elapsed().as_secs_f64());
                if !done.duplicate {
                    metrics::counter!(m::ENVELOPES_ACCEPTED).increment(1);
                }
                reply(id, FrameBody::Accepted { message_id })
            }
            Err(e) => store_failure(id, &e),
        }
    }

    /// Delete the envelopes its recipient `device` acknowledged by `message_id`,
    /// delivered to it on this connection as `seqs` (every copy of the id it was handed
    /// there). Each of them gives its delivery-window slot back whatever the store
    /// answers: `false` (expired meanwhile, a repeat that was never stored, already
    /// acknowledged) or an error (the envelope stays pending and comes again on the next
    /// connection) must not shrink the window for good.
    pub async fn commit_acks(
        &self,
        device: DeviceId,
        id: u64,
        message_id: MessageId,
        seqs: DeliveredSeqs,
    ) -> Handled {
        let mut out = Handled {
            released: seqs.count(),
            ..Handled::default()
        };
        for seq in seqs.iter() {
            match self.store.ack(&device, &message_id, seq).await {
                Ok(true) => metrics::counter!(m::ENVELOPES_ACKED).increment(1),
                Ok(false) => {}
                Err(e) => out.reply = store_failure(id, &e).reply,
            }
        }
        out
    }

    /// Count a refusal by a trust rule (metric label `reason`).
    fn trust_refused(&self, reason: &'static str) {
        metrics::counter!(m::TRUST_REFUSALS, "reason" => reason).increment(1);
    }

    /// Every entry of `account`'s device log, as stored, with the times that bound when
    /// each took effect: this relay's append times and, for a client's first device, the
    /// date of the firm's attestation (docs/PROTOCOL.md §19.3, "Effective time").
    async fn load_log(&self, account: &AccountId) -> Result<(DeviceLog, EntryTimes), StoreError> {
        let (entries, appended_ms): (Vec<_>, Vec<_>) = self
            .store
            .device_log_timed(account, 0, MAX_LOG_ENTRIES)
            .await?
            .into_iter()
            .unzip();
        let attested_ms = self
            .store
            .attestation(account)
            .await?
            .map(|a| a.attested_ms);
        let appended = EntryTimes {
            appended_ms,
            attested_ms,
            ..EntryTimes::default()
        };
        let entries = BoundedVec::new(entries).map_err(|e| {
            StoreError::Backend(format!("device log of {account} exceeds its bound: {e}"))
        })?;
        Ok((
            DeviceLog {
                account: account.clone(),
                entries,
            },
            appended,
        ))
    }

    /// `account`'s verified device set: cached, or loaded and verified once.
    async fn account_trust(&self, account: &AccountId) -> Result<Arc<AccountTrust>, TrustFailure> {
        if let Some(t) = self.trust.cached(account) {
            return Ok(t);
        }
        let generation = self.trust.generation();
        let (log, appended) = self.load_log(account).await.map_err(TrustFailure::Store)?;
        match self.trust.verify_log(&log, &appended, unix_ms()) {
            Ok((_, snapshot)) => Ok(self.trust.install(snapshot, generation)),
            Err(e) => {
                warn!(account = %account, error = %e, "a stored device log does not verify");
                self.trust_refused("stored_log_invalid");
                Err(TrustFailure::Invalid)
            }
        }
    }

    async fn upload_prekeys(
        &self,
        me: &Authenticated,
        id: u64,
        signed_prekey: Option<sealpost_protocol::prekeys::SignedPreKey>,
        one_time: Vec<sealpost_protocol::prekeys::OneTimePreKey>,
        kem_one_time: Vec<sealpost_protocol::prekeys::KemPreKey>,
        kem_last_resort: Option<sealpost_protocol::prekeys::KemPreKey>,
    ) -> Handled {
        let record = match self.store.device(&me.device).await {
            Ok(Some(r)) => r,
            Ok(None) => return refuse(id, ErrorCode::NotFound, "device not found"),
            Err(e) => return store_failure(id, &e),
        };
        let ident = &record.identity;
        // Every prekey must be signed by this device's identity key and be of the right kind.
        let bad = signed_prekey
            .as_ref()
            .is_some_and(|k| k.verify(ident).is_err())
            || one_time.iter().any(|k| k.verify(ident).is_err())
            || kem_one_time
                .iter()
                .any(|k| k.kind() != PreKeyKind::KemOneTime || k.verify(ident).is_err())
            || kem_last_resort
                .as_ref()
                .is_some_and(|k| k.kind() != PreKeyKind::KemLastResort || k.verify(ident).is_err());
        if bad {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "a prekey is not signed by this device's identity key or has the wrong kind",
            );
        }
        let upload = PreKeyUpload {
            signed_prekey,
            one_time,
            kem_one_time,
            kem_last_resort,
        };
        match self.store.put_prekeys(&me.device, upload).await {
            Ok(c) => reply(
                id,
                FrameBody::PreKeyStock {
                    one_time: c.one_time,
                    kem_one_time: c.kem_one_time,
                    low: c.one_time < self.config.limits.prekey_low_watermark
                        || c.kem_one_time < self.config.limits.prekey_low_watermark,
                },
            ),
            Err(e) => store_failure(id, &e),
        }
    }

    async fn fetch_bundles(
        &self,
        _ctx: &mut ConnCtx,
        me: &Authenticated,
        id: u64,
        account: AccountId,
    ) -> Handled {
        let now = self.mono_ms();
        let pair = (me.device, account.clone());
        let check = self.with_limiters(|l| {
            l.fetch_device
                .check(&me.device, 1.0, now)
                .map_err(|e| ("bundle_fetch_per_device", e))?;
            l.fetch_pair
                .check(&pair, 1.0, now)
                .map_err(|e| ("bundle_fetch_per_pair", e))
        });
        if let Err((which, l)) = check {
            return limited(id, which, l);
        }
        self.observe(Observation::BundleFetch {
            account: me.account.clone(),
            device: me.device,
            target: account.clone(),
        });
        if let Err(h) = self
            .authorize_directory(me, id, &account, directory::DirectoryRead::Bundles)
            .await
        {
            return h;
        }
        let devices = match self.store.devices_of(&account).await {
            Ok(d) => d,
            Err(e) => return store_failure(id, &e),
        };
        let mut bundles = Vec::new();
        for d in devices.iter().filter(|d| !d.revoked && d.id != me.device) {
            match self.store.take_bundle(&d.id).await {
                Ok(Some((bundle, counts))) => {
                    let low = self.config.limits.prekey_low_watermark;
                    if counts.one_time < low || counts.kem_one_time < low {
                        self.hub.push(&d.id, Push::PreKeysLow(counts));
                    }
                    bundles.push(bundle);
                }
                Ok(None) => {}
                Err(e) => return store_failure(id, &e),
            }
        }
        match BoundedVec::new(bundles) {
            Ok(bundles) => reply(id, FrameBody::Bundles { account, bundles }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many devices"),
        }
    }

    async fn list_contacts(&self, me: &Authenticated, id: u64) -> Handled {
        let accounts = match self.store.assignments_of(&me.account).await {
            Ok(a) => a,
            Err(e) => return store_failure(id, &e),
        };
        let mut contacts = Vec::with_capacity(accounts.len());
        for a in accounts
            .into_iter()
            .take(sealpost_protocol::wire::MAX_CONTACTS)
        {
            match self.store.account(&a).await {
                Ok(Some(rec)) => contacts.push(sealpost_protocol::wire::ContactInfo {
                    account: rec.id,
                    role: rec.role,
                }),
                Ok(None) => {}
                Err(e) => return store_failure(id, &e),
            }
        }
        match BoundedVec::new(contacts) {
            Ok(contacts) => reply(id, FrameBody::Contacts { contacts }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many contacts"),
        }
    }

    async fn list_devices(
        &self,
        _ctx: &mut ConnCtx,
        me: &Authenticated,
        id: u64,
        account: AccountId,
    ) -> Handled {
        if let Err(h) = self
            .authorize_directory(me, id, &account, directory::DirectoryRead::Devices)
            .await
        {
            return h;
        }
        match self.store.devices_of(&account).await {
            Ok(devices) => {
                let list: Vec<DeviceInfo> = devices
                    .into_iter()
                    .filter(|d| !d.revoked)
                    .map(|d| DeviceInfo {
                        identity: d.identity,
                        enrolled_ms: d.enrolled_ms,
                    })
                    .collect();
                match BoundedVec::new(list) {
                    Ok(devices) => reply(id, FrameBody::Devices { account, devices }),
                    Err(_) => refuse(id, ErrorCode::Internal, "too many devices"),
                }
            }
            Err(e) => store_failure(id, &e),
        }
    }
}
