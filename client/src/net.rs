//! The connection to the relay: QUIC with TLS 1.3 to a pinned CA, one control stream,
//! request/response correlation by frame id, and a queue of pushes (deliveries, prekey
//! warnings).
//!
//! The relay's certificate chain must contain a certificate whose SHA-256 equals the
//! pinned CA fingerprint; the chain is then verified with webpki against that CA alone,
//! for the server name given. No 0-RTT: every request travels after the handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sealpost_protocol::envelope::{Envelope, MessageId};
use sealpost_protocol::identity::{AccountId, DeviceId, IdentityKeyPair, PublicIdentity};
use sealpost_protocol::prekeys::{KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey};
use sealpost_protocol::trust::{
    DeviceAction, DeviceLog, EntryBody, LinkChallenge, LinkCommitment, LinkNonce, LogEntry,
    SignedNotice, SignedRoster,
};
use sealpost_protocol::wire::{
    self, auth_signature_message, enroll_signature_message, link_complete_signature_message,
    link_signature_message, BoundedString, BoundedVec, DeviceInfo, ErrorCode, Frame, FrameBody,
    PendingLink, Role, ALPN, TLS_EXPORTER_LABEL,
};
use sealpost_protocol::DecodeError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

mod outbox;
pub use outbox::OUTBOX_BYTES;
use outbox::{Append, OutBuffer, Take};

/// Pushes buffered before the reader waits for the application.
pub const PUSH_QUEUE: usize = 4096;
/// Ack-eliciting packets the relay may receive before it must ACK (QUIC ACK frequency).
pub const ACK_ELICITING_THRESHOLD: u32 = 8;
/// Requests outstanding at once on one connection.
pub const MAX_OUTSTANDING: usize = 4096;
/// How long a request waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An account's device log as the relay served it, with what the relay recorded beside
/// it (both unverified until checked: the times by [`DeviceLog::verify_timed`], the
/// attestation by [`sealpost_protocol::trust::first_contact`]).
#[derive(Clone, Debug)]
pub struct ServedLog {
    /// The entries.
    pub log: DeviceLog,
    /// When the relay says it appended each entry (0: unknown).
    pub appended_ms: Vec<u64>,
    /// The firm's attestation of the account's first device, if the relay holds one.
    pub attestation: Option<sealpost_protocol::trust::ClientAttestation>,
}

/// Where an account's verification by the firm stands, as the relay says (`attest_state`).
#[derive(Clone, Debug)]
pub struct AttestState {
    /// The pending request's commitment (None: no request).
    pub commitment: Option<sealpost_protocol::trust::LinkCommitment>,
    /// The staff member's challenge, once picked.
    pub challenge: Option<sealpost_protocol::trust::LinkChallenge>,
    /// The nonce was revealed for this request.
    pub revealed: bool,
    /// The relay holds an attestation of the account.
    pub attested: bool,
}

/// A connection-level failure.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The address or server name is unusable.
    #[error("invalid relay address or name: {0}")]
    Address(String),
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The relay's certificate did not verify against the pinned CA fingerprint (or not
    /// for the server name): whoever answered is not the relay this device trusts. A
    /// verdict, not a transient failure: trying again does not help.
    #[error("the relay's certificate does not match the pinned CA: {0}")]
    UntrustedRelay(String),
    /// The QUIC connection could not be established or was lost.
    #[error("connection: {0}")]
    Connection(String),
    /// The relay refused the request.
    #[error("relay refused ({}): {message}", crate::display::name(.code))]
    Refused {
        /// Why.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
        /// For rate limits: when to retry.
        retry_after_ms: Option<u64>,
    },
    /// The relay answered with a frame of the wrong type.
    #[error("unexpected answer from the relay: {0}")]
    Unexpected(String),
    /// A frame from the relay did not decode.
    #[error("bad frame from the relay: {0}")]
    Decode(#[from] DecodeError),
    /// No answer in time.
    #[error("no answer from the relay within {0:?}")]
    Timeout(Duration),
    /// Too many requests outstanding.
    #[error("too many outstanding requests")]
    Busy,
}

impl NetError {
    /// A failure a new attempt may cure, never a verdict: the connection (lost, timed
    /// out, busy, garbled), or a refusal that says "later" (`rate_limited`, `internal`).
    /// A refusal for what was asked, an unusable address or TLS setup, and a relay that
    /// is not the pinned one are final.
    pub fn is_transient(&self) -> bool {
        use sealpost_protocol::wire::ErrorCode;
        match self {
            Self::Refused { code, .. } => {
                matches!(code, ErrorCode::RateLimited | ErrorCode::Internal)
            }
            Self::Address(_) | Self::Tls(_) | Self::UntrustedRelay(_) => false,
            _ => true,
        }
    }
}

/// Where the relay is and how to trust it.
#[derive(Clone, Debug)]
pub struct RelayAddress {
    /// UDP address.
    pub addr: SocketAddr,
    /// Name on the relay's certificate (`localhost` for the development CA).
    pub server_name: String,
    /// SHA-256 of the pinned CA certificate.
    pub ca_fingerprint: [u8; 32],
}

#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Why the relay's certificate was refused, once it was: the handshake's error
    /// (quinn's) does not say on which side TLS failed, this does.
    refused: Arc<Mutex<Option<String>>>,
}

impl PinnedCa {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sealpost_protocol::crypto::sha256(&[c.as_ref()]) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the relay's certificate chain does not contain the pinned CA".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self.check(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(e) = &r {
            if let Ok(mut refused) = self.refused.lock() {
                *refused = Some(match e {
                    rustls::Error::General(m) => m.clone(),
                    other => other.to_string(),
                });
            }
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A QUIC client configuration that pins `ca_fingerprint`.
pub fn client_config(ca_fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, NetError> {
    pinned_client_config(ca_fingerprint, Arc::new(Mutex::new(None)))
}

/// [`client_config`], whose verifier writes into `refused` why it refused the relay's
/// certificate.
fn pinned_client_config(
    ca_fingerprint: [u8; 32],
    refused: Arc<Mutex<Option<String>>>,
) -> Result<quinn::ClientConfig, NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: ca_fingerprint,
            provider,
            refused,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(15)))
        .max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(60)).ok())
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    // Ask the relay to ACK every ninth ack-eliciting packet rather than every other one
    // (within its max ACK delay): fewer ACK-only packets when deliveries stream in.
    let mut ack_frequency = quinn::AckFrequencyConfig::default();
    ack_frequency.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    transport.ack_frequency_config(Some(ack_frequency));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint (one UDP socket) for connections to relays of `addr`'s family.
pub fn client_endpoint(for_addr: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    let bind: SocketAddr = if for_addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| NetError::Address("bind address".into()))?;
    let socket = bind_udp(bind).map_err(|e| NetError::Connection(e.to_string()))?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| NetError::Connection("no async runtime".into()))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .map_err(|e| NetError::Connection(e.to_string()))
}

/// Receive and send buffer asked for on a client's UDP socket: larger than the kernel's
/// default (about 200 KiB on Linux), which drops datagrams as soon as a burst of
/// deliveries outruns the client for a few milliseconds. The kernel caps it at
/// `net.core.rmem_max`; a smaller buffer still works.
pub const UDP_BUFFER_BYTES: usize = 2 * 1024 * 1024;

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]:0` also reaches IPv4-mapped peers, as quinn's own client endpoint does.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Waiters of requests by id; `None` once the reader has stopped (the connection is
/// gone), so a new request fails at once instead of waiting for its timeout.
type PendingMap = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<FrameBody>>>>>;

/// The shared side of the writer task: the [`OutBuffer`] callers encode frames into, and
/// the two wake-ups around it.
struct Outbox {
    state: Mutex<OutBuffer>,
    /// Wakes the writer task, which waits when it found nothing to take.
    ready: Notify,
    /// Wakes callers that found the buffer full.
    room: Notify,
}

impl Outbox {
    fn new() -> Self {
        Self {
            state: Mutex::new(OutBuffer::new(OUTBOX_BYTES)),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    /// Run `append` on the buffer, waiting for room while it is full. Cancel-safe: an
    /// append either happened (and will be written) or did not.
    async fn push(
        &self,
        mut append: impl FnMut(&mut OutBuffer) -> Result<Append, NetError>,
    ) -> Result<(), NetError> {
        loop {
            // Made before the buffer is looked at, so the writer's notify_waiters after a
            // take reaches it even if that take happens before this task waits.
            let room = self.room.notified();
            let outcome = {
                let mut state = self.state.lock().map_err(|_| closed())?;
                append(&mut state)?
            };
            match outcome {
                Append::Done { wake_writer } => {
                    if wake_writer {
                        self.ready.notify_one();
                    }
                    return Ok(());
                }
                Append::Closed => return Err(closed()),
                Append::Full => room.await,
            }
        }
    }

    fn take(&self) -> Take {
        match self.state.lock() {
            Ok(mut state) => state.take(),
            Err(_) => Take::Closed,
        }
    }

    /// Refuse further frames; with `discard`, drop what is buffered too (it cannot be
    /// sent). Wakes the writer and every waiting caller.
    fn close(&self, discard: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.close();
            if discard {
                state.discard();
            }
        }
        self.ready.notify_one();
        self.room.notify_waiters();
    }
}

fn closed() -> NetError {
    NetError::Connection("connection closed".into())
}

/// An open connection to the relay.
///
/// Two tasks serve it. The writer takes whatever frames callers encoded into the shared
/// outbox (at most [`OUTBOX_BYTES`] before callers wait) and hands them to QUIC as one
/// chunk, without copying. The reader takes chunks as QUIC has them, cuts them into
/// frames with `tokio_util`'s length-delimited codec, and routes each answer to its request by id and every
/// other frame to the push queue (at most [`PUSH_QUEUE`]).
pub struct RelayConnection {
    conn: quinn::Connection,
    out: Arc<Outbox>,
    pending: PendingMap,
    next_id: AtomicU64,
    pushes: tokio::sync::Mutex<mpsc::Receiver<FrameBody>>,
    exporter: [u8; 32],
    _endpoint: Option<quinn::Endpoint>,
}

impl RelayConnection {
    /// Connect on a new endpoint of its own.
    pub async fn connect(relay: &RelayAddress) -> Result<Self, NetError> {
        let endpoint = client_endpoint(relay.addr)?;
        let mut c = Self::connect_on(&endpoint, relay).await?;
        c._endpoint = Some(endpoint);
        Ok(c)
    }

    /// Connect using an existing endpoint (many connections can share one socket).
    pub async fn connect_on(
        endpoint: &quinn::Endpoint,
        relay: &RelayAddress,
    ) -> Result<Self, NetError> {
        let refused = Arc::new(Mutex::new(None));
        let config = pinned_client_config(relay.ca_fingerprint, refused.clone())?;
        let connecting = endpoint
            .connect_with(config, relay.addr, &relay.server_name)
            .map_err(|e| NetError::Address(e.to_string()))?;
        let conn = connecting.await.map_err(|e| {
            // Our verifier refused the certificate: a trust verdict, not "unreachable".
            match refused.lock().ok().and_then(|mut r| r.take()) {
                Some(why) => NetError::UntrustedRelay(why),
                None => NetError::Connection(e.to_string()),
            }
        })?;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, TLS_EXPORTER_LABEL, b"")
            .map_err(|_| NetError::Tls("keying material export failed".into()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        let out = Arc::new(Outbox::new());
        tokio::spawn(write_loop(send, out.clone()));
        let pending: PendingMap = Arc::new(Mutex::new(Some(HashMap::new())));
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE);
        tokio::spawn(read_loop(recv, pending.clone(), push_tx));
        Ok(Self {
            conn,
            out,
            pending,
            next_id: AtomicU64::new(1),
            pushes: tokio::sync::Mutex::new(push_rx),
            exporter,
            _endpoint: None,
        })
    }

    /// The channel-binding value of this connection.
    pub fn exporter(&self) -> &[u8; 32] {
        &self.exporter
    }

    /// The underlying QUIC connection.
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Send raw bytes on the control stream (for adversarial tests).
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.out.push(|b| Ok(b.append_raw(&bytes))).await
    }

    /// Encode `frame` into the outbox (waiting for room if it is full).
    async fn send_encoded(&self, frame: &Frame) -> Result<(), NetError> {
        self.out
            .push(|b| {
                b.append_frame(frame)
                    .map_err(|e| NetError::Unexpected(e.to_string()))
            })
            .await
    }

    /// Send a frame without waiting for an answer.
    pub async fn send_frame(&self, body: FrameBody) -> Result<(), NetError> {
        self.send_encoded(&Frame::new(0, body)).await
    }

    /// Register a waiter for the answer to a new request id.
    fn register(&self) -> Result<(u64, oneshot::Receiver<FrameBody>), NetError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut p = self.pending.lock().map_err(|_| NetError::Busy)?;
        let Some(p) = p.as_mut() else {
            return Err(NetError::Connection(self.close_reason()));
        };
        if p.len() >= MAX_OUTSTANDING {
            return Err(NetError::Busy);
        }
        p.insert(id, tx);
        Ok((id, rx))
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            if let Some(p) = p.as_mut() {
                p.remove(&id);
            }
        }
    }

    /// Register request `id`'s waiter (done first, so the answer cannot arrive before it)
    /// and send the request.
    async fn send_request(
        &self,
        body: FrameBody,
    ) -> Result<(u64, oneshot::Receiver<FrameBody>), NetError> {
        let (id, rx) = self.register()?;
        match self.send_encoded(&Frame::new(id, body)).await {
            Ok(()) => Ok((id, rx)),
            Err(e) => {
                self.unregister(id);
                Err(e)
            }
        }
    }

    /// Send a request and return a receiver for its answer, without waiting for it (so
    /// the caller can keep processing pushes meanwhile).
    pub async fn start_request(
        &self,
        body: FrameBody,
    ) -> Result<oneshot::Receiver<FrameBody>, NetError> {
        Ok(self.send_request(body).await?.1)
    }

    /// Send a request and wait for its answer; an `error` frame becomes `Refused`.
    pub async fn request(&self, body: FrameBody) -> Result<FrameBody, NetError> {
        let (id, rx) = self.send_request(body).await?;
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err(NetError::Connection(self.close_reason())),
            Err(_) => {
                self.unregister(id);
                return Err(NetError::Timeout(REQUEST_TIMEOUT));
            }
        };
        match answer {
            FrameBody::Error {
                code,
                message,
                retry_after_ms,
            } => Err(NetError::Refused {
                code,
                message: message.as_str().to_owned(),
                retry_after_ms,
            }),
            other => Ok(other),
        }
    }

    fn close_reason(&self) -> String {
        match self.conn.close_reason() {
            Some(r) => r.to_string(),
            None => "connection closed".into(),
        }
    }

    /// Security desk: the stored security events after `since` and whether more follow;
    /// when none follow, the relay pushes every new event on this connection from now on
    /// (`security_event`). Refused (`forbidden`) unless this device belongs to a staff
    /// member whose roster role is security.
    pub async fn security_watch(
        &self,
        since: u64,
    ) -> Result<(Vec<wire::SecurityEventInfo>, bool), NetError> {
        match self.request(FrameBody::SecurityWatch { since }).await? {
            FrameBody::SecurityEvents { events, more } => Ok((events.into_inner(), more)),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The stored alerts about this device's account after `since` (§21.3), and whether
    /// more follow.
    pub async fn get_account_alerts(
        &self,
        since: u64,
    ) -> Result<(Vec<wire::SecurityEventInfo>, bool), NetError> {
        match self.request(FrameBody::GetAccountAlerts { since }).await? {
            FrameBody::AccountAlerts { alerts, more } => Ok((alerts.into_inner(), more)),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The archive device: anchor its chain head in the transparency log (§22.6); the
    /// leaf's index.
    pub async fn anchor_archive(&self, seq: u64, hash: [u8; 32]) -> Result<u64, NetError> {
        match self.request(FrameBody::AnchorArchive { seq, hash }).await? {
            FrameBody::ArchiveAnchored { index } => Ok(index),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The next push from the relay (a delivery, a prekey warning, or an error frame not
    /// tied to a request); `None` when the connection is gone.
    pub async fn next_push(&self) -> Option<FrameBody> {
        self.pushes.lock().await.recv().await
    }

    /// Wait for the next push, then take it and the pushes queued behind it, `max` at
    /// most, appending them to `out` in order: one wake-up for a burst of deliveries.
    /// Returns how many were taken; 0 when the connection is gone (or `max` is 0).
    /// Cancel-safe like [`RelayConnection::next_push`]: if the future is dropped before it
    /// completes, no push was taken.
    pub async fn next_pushes(&self, out: &mut Vec<FrameBody>, max: usize) -> usize {
        self.pushes.lock().await.recv_many(out, max).await
    }

    /// Pushes received and not yet taken with [`RelayConnection::next_push`] (0 while
    /// another task is taking one).
    pub fn queued_pushes(&self) -> usize {
        self.pushes.try_lock().map_or(0, |rx| rx.len())
    }

    /// Enrol `identity` into `account` with a one-time code.
    pub async fn enroll(
        &self,
        identity: &IdentityKeyPair,
        account: &AccountId,
        code: &str,
    ) -> Result<(DeviceId, Role), NetError> {
        let body = DeviceLog::new(account.clone()).next_body(
            crate::clock::now_ms(),
            DeviceAction::Add {
                identity: identity.public().clone(),
            },
            "enrolment",
        );
        let genesis = LogEntry::genesis(body, identity);
        self.enroll_with_genesis(identity, account, code, genesis)
            .await
    }

    /// [`RelayConnection::enroll`] with a caller-built genesis entry (tests use it to
    /// present bad entries).
    pub async fn enroll_with_genesis(
        &self,
        identity: &IdentityKeyPair,
        account: &AccountId,
        code: &str,
        genesis: LogEntry,
    ) -> Result<(DeviceId, Role), NetError> {
        let signature = identity.sign(&enroll_signature_message(&self.exporter, account, code));
        let code = BoundedString::try_from(code.to_owned())
            .map_err(|e| NetError::Address(e.to_string()))?;
        match self
            .request(FrameBody::Enroll {
                account: account.clone(),
                code,
                identity: identity.public().clone(),
                signature,
                genesis: Box::new(genesis),
            })
            .await?
        {
            FrameBody::Enrolled { device, role } => Ok((device, role)),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Ask to join `account` as a new device (before authentication): returns the link id
    /// and when the request lapses.
    pub async fn link_start(
        &self,
        identity: &IdentityKeyPair,
        account: &AccountId,
        commitment: LinkCommitment,
    ) -> Result<([u8; 16], u64), NetError> {
        let signature = identity.sign(&link_signature_message(&self.exporter, account));
        match self
            .request(FrameBody::LinkStart {
                account: account.clone(),
                identity: identity.public().clone(),
                commitment,
                signature,
            })
            .await?
        {
            FrameBody::LinkStarted {
                link_id,
                expires_ms,
            } => Ok((link_id, expires_ms)),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// How a link request stands (new device, before authentication).
    pub async fn link_poll(&self, link_id: [u8; 16]) -> Result<LinkStatus, NetError> {
        match self.request(FrameBody::LinkPoll { link_id }).await? {
            FrameBody::LinkState {
                challenge,
                body,
                completed,
                ready,
            } => Ok(LinkStatus {
                challenge,
                body: body.map(|b| *b),
                completed,
                ready,
            }),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The new device's signature over the offered entry body, with the reveal of its
    /// nonce.
    pub async fn link_sign(
        &self,
        link_id: [u8; 16],
        signature: [u8; 64],
        nonce: LinkNonce,
    ) -> Result<(), NetError> {
        self.expect_done(FrameBody::LinkSign {
            link_id,
            signature,
            nonce,
        })
        .await
    }

    /// The recovered device completes its recovery (before authentication): the relay
    /// appends the entry the staff quorum authorised; the device can authenticate next.
    pub async fn link_complete(
        &self,
        identity: &IdentityKeyPair,
        link_id: [u8; 16],
    ) -> Result<(), NetError> {
        let signature = identity.sign(&link_complete_signature_message(&self.exporter, &link_id));
        self.expect_done(FrameBody::LinkComplete { link_id, signature })
            .await
    }

    /// Staff: hand the relay the recovery entry its quorum approved, for the new device
    /// to complete.
    pub async fn link_authorize(&self, link_id: [u8; 16], entry: LogEntry) -> Result<(), NetError> {
        self.expect_done(FrameBody::LinkAuthorize {
            link_id,
            entry: Box::new(entry),
        })
        .await
    }

    /// Pending link and recovery requests for `account`.
    pub async fn list_links(&self, account: &AccountId) -> Result<Vec<PendingLink>, NetError> {
        match self
            .request(FrameBody::ListLinks {
                account: account.clone(),
            })
            .await?
        {
            FrameBody::Links { links } => Ok(links.into_inner()),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Dismiss one of this account's pending link requests.
    pub async fn dismiss_link(&self, link_id: [u8; 16]) -> Result<(), NetError> {
        self.expect_done(FrameBody::DismissLink { link_id }).await
    }

    /// The organisation fingerprint the relay is configured with (before or after
    /// authentication). Never pinned from here: a device compares it with the one its
    /// user gave.
    pub async fn get_org(&self) -> Result<Option<[u8; 32]>, NetError> {
        match self.request(FrameBody::GetOrg).await? {
            FrameBody::Org { fingerprint } => Ok(fingerprint),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Ask the relay to prove a device-log head or a roster version in the transparency
    /// log (`prove_log_head` / `prove_roster`, docs/PROTOCOL.md §21.5) against its latest
    /// checkpoint, with a consistency proof from `old_size`.
    pub async fn prove(
        &self,
        claim: &crate::transparency::Claim,
        old_size: u64,
    ) -> Result<LogProofAnswer, NetError> {
        use crate::transparency::Claim;
        let body = match claim {
            Claim::LogHead {
                account,
                length,
                head,
            } => FrameBody::ProveLogHead {
                account: account.clone(),
                length: *length,
                head: *head,
                old_size,
            },
            Claim::Roster { version, hash } => FrameBody::ProveRoster {
                version: *version,
                hash: *hash,
                old_size,
            },
        };
        match self.request(body).await? {
            FrameBody::LogProof {
                checkpoint,
                index,
                leaf,
                inclusion,
                consistency,
            } => Ok(LogProofAnswer {
                checkpoint: checkpoint.as_str().to_owned(),
                index,
                leaf: leaf.as_slice().to_vec(),
                inclusion: sealpost_protocol::tlog::proof_hashes(inclusion.as_slice()),
                consistency: sealpost_protocol::tlog::proof_hashes(consistency.as_slice()),
            }),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The relay's latest checkpoint note (`get_checkpoint`).
    pub async fn checkpoint(&self) -> Result<String, NetError> {
        match self.request(FrameBody::GetCheckpoint).await? {
            FrameBody::Checkpoint { note } => Ok(note.as_str().to_owned()),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// A consistency proof between two tree sizes (`get_consistency`).
    pub async fn consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<sealpost_protocol::tlog::Hash>, NetError> {
        match self
            .request(FrameBody::GetConsistency { old_size, new_size })
            .await?
        {
            FrameBody::Consistency {
                old_size: o,
                new_size: n,
                proof,
            } if o == old_size && n == new_size => {
                Ok(sealpost_protocol::tlog::proof_hashes(proof.as_slice()))
            }
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Leaves from `start` (`get_log_leaves`, one page): the leaves and the log's size.
    pub async fn log_leaves(
        &self,
        start: u64,
        count: u16,
    ) -> Result<(Vec<Vec<u8>>, u64), NetError> {
        match self
            .request(FrameBody::GetLogLeaves { start, count })
            .await?
        {
            FrameBody::LogLeaves {
                start: s,
                leaves,
                size,
            } if s == start => Ok((
                leaves
                    .into_inner()
                    .into_iter()
                    .map(|l| l.as_slice().to_vec())
                    .collect(),
                size,
            )),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Hand the relay a witness cosignature of its checkpoint of `size` leaves.
    pub async fn submit_cosignature(&self, size: u64, line: &str) -> Result<(), NetError> {
        let line = BoundedString::try_from(line.to_owned())
            .map_err(|e| NetError::Unexpected(format!("cosignature line: {e}")))?;
        match self
            .request(FrameBody::SubmitCosignature { size, line })
            .await?
        {
            FrameBody::Done => Ok(()),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The lengths of the device logs this device is told about (`get_log_heads`, every
    /// page), ascending by account.
    pub async fn log_heads(&self) -> Result<Vec<wire::LogLength>, NetError> {
        let mut out: Vec<wire::LogLength> = Vec::new();
        // Each page is at most MAX_LOG_HEADS_PER_FRAME; a relay that never stops paging
        // is cut off (an advisor with more assigned clients than this is not expected).
        for _ in 0..64 {
            let after = out.last().map(|h| h.account.clone());
            match self.request(FrameBody::GetLogHeads { after }).await? {
                FrameBody::LogHeads { heads, more } => {
                    let heads = heads.into_inner();
                    let progressed = !heads.is_empty();
                    out.extend(heads);
                    if !more || !progressed {
                        return Ok(out);
                    }
                }
                other => return Err(NetError::Unexpected(format!("{other:?}"))),
            }
        }
        Err(NetError::Unexpected(
            "log_heads paging did not end".to_owned(),
        ))
    }

    /// Offer the entry that adds (or recovers) a linking device, with the challenge its
    /// code is computed from.
    pub async fn link_offer(
        &self,
        link_id: [u8; 16],
        challenge: LinkChallenge,
        body: EntryBody,
    ) -> Result<(), NetError> {
        self.expect_done(FrameBody::LinkOffer {
            link_id,
            challenge,
            body: Box::new(body),
        })
        .await
    }

    /// Every roster version after `after_version` (pages until the relay's latest).
    pub async fn get_roster(&self, after_version: u64) -> Result<Vec<SignedRoster>, NetError> {
        Ok(self.get_roster_after(after_version).await?.0)
    }

    /// Every roster version after `after_version`, and the newest version the relay says
    /// it holds (a client that verified a later one than that sees a rollback).
    pub async fn get_roster_after(
        &self,
        after_version: u64,
    ) -> Result<(Vec<SignedRoster>, u64), NetError> {
        let mut out: Vec<SignedRoster> = Vec::new();
        let mut after = after_version;
        // Each page holds at least one version, so this ends after at most
        // MAX_ROSTER_CHAIN_LEN pages.
        for _ in 0..=sealpost_protocol::trust::MAX_ROSTER_CHAIN_LEN {
            match self
                .request(FrameBody::GetRoster {
                    after_version: after,
                })
                .await?
            {
                FrameBody::Roster { links, latest } => {
                    let links = links.into_inner();
                    let Some(last) = links.last().map(|l| l.roster.version()) else {
                        return Ok((out, latest));
                    };
                    if last <= after {
                        return Err(NetError::Unexpected(
                            "roster page does not advance".to_owned(),
                        ));
                    }
                    after = last;
                    out.extend(links);
                    if out.len() > sealpost_protocol::trust::MAX_ROSTER_CHAIN_LEN {
                        return Err(NetError::Unexpected("roster chain too long".to_owned()));
                    }
                    if after >= latest {
                        return Ok((out, latest));
                    }
                }
                other => return Err(NetError::Unexpected(format!("{other:?}"))),
            }
        }
        Err(NetError::Unexpected("roster paging did not end".to_owned()))
    }

    /// Publish the next roster version.
    pub async fn publish_roster(&self, roster: SignedRoster) -> Result<(), NetError> {
        self.expect_done(FrameBody::PublishRoster {
            roster: Box::new(roster),
        })
        .await
    }

    /// An account's whole device log (pages until `total`).
    pub async fn get_device_log(&self, account: &AccountId) -> Result<DeviceLog, NetError> {
        Ok(self.get_served_log(account).await?.log)
    }

    /// An account's whole device log with the relay's append times and the firm's
    /// attestation of its first device, if any (`get_device_log`, paged).
    pub async fn get_served_log(&self, account: &AccountId) -> Result<ServedLog, NetError> {
        let mut log = DeviceLog::new(account.clone());
        let mut appended_ms: Vec<u64> = Vec::new();
        let mut attestation = None;
        let mut from_seq = 0u64;
        // Each page holds at least one entry, so this ends after at most MAX_LOG_ENTRIES
        // pages.
        for _ in 0..=sealpost_protocol::trust::MAX_LOG_ENTRIES {
            match self
                .request(FrameBody::GetDeviceLog {
                    account: account.clone(),
                    from_seq,
                })
                .await?
            {
                FrameBody::DeviceLog {
                    account: got,
                    entries,
                    total,
                    appended_ms: times,
                    attestation: att,
                } => {
                    if &got != account {
                        return Err(NetError::Unexpected(
                            "device log for another account".to_owned(),
                        ));
                    }
                    if from_seq == 0 {
                        attestation = att.map(|a| *a);
                    }
                    let entries = entries.into_inner();
                    let mut times = times.into_inner();
                    // Times are per entry of this page (none from an older relay).
                    times.resize(entries.len(), 0);
                    let done = |log: DeviceLog, appended_ms: Vec<u64>, attestation| {
                        Ok(ServedLog {
                            log,
                            appended_ms,
                            attestation,
                        })
                    };
                    if entries.is_empty() {
                        return if from_seq >= total {
                            done(log, appended_ms, attestation)
                        } else {
                            Err(NetError::Unexpected("device log page is empty".to_owned()))
                        };
                    }
                    appended_ms.extend(times);
                    for e in entries {
                        from_seq += 1;
                        log.push(e)
                            .map_err(|e| NetError::Unexpected(e.to_string()))?;
                    }
                    if from_seq >= total {
                        return done(log, appended_ms, attestation);
                    }
                }
                other => return Err(NetError::Unexpected(format!("{other:?}"))),
            }
        }
        Err(NetError::Unexpected(
            "device log paging did not end".to_owned(),
        ))
    }

    /// Append an entry to an account's device log.
    pub async fn append_device_log(&self, entry: LogEntry) -> Result<(), NetError> {
        self.expect_done(FrameBody::AppendDeviceLog {
            entry: Box::new(entry),
        })
        .await
    }

    /// Send a staff notice (envelope of kind `notice` with its signed header).
    pub async fn send_notice(
        &self,
        envelope: Envelope,
        notice: SignedNotice,
    ) -> Result<MessageId, NetError> {
        match self
            .request(FrameBody::SendNotice {
                envelope,
                notice: Box::new(notice),
            })
            .await?
        {
            FrameBody::Accepted { message_id } => Ok(message_id),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Client: ask the firm to verify this account, committing to a nonce
    /// (`attest_start`).
    pub async fn attest_start(
        &self,
        commitment: sealpost_protocol::trust::LinkCommitment,
    ) -> Result<AttestState, NetError> {
        self.attest_state(FrameBody::AttestStart { commitment })
            .await
    }

    /// Client: where this account's verification stands (`attest_poll`).
    pub async fn attest_poll(&self) -> Result<AttestState, NetError> {
        self.attest_state(FrameBody::AttestPoll).await
    }

    /// Client: reveal the nonce, after the challenge (`attest_reveal`).
    pub async fn attest_reveal(
        &self,
        nonce: sealpost_protocol::trust::LinkNonce,
    ) -> Result<AttestState, NetError> {
        self.attest_state(FrameBody::AttestReveal { nonce }).await
    }

    async fn attest_state(&self, body: FrameBody) -> Result<AttestState, NetError> {
        match self.request(body).await? {
            FrameBody::AttestState {
                commitment,
                challenge,
                revealed,
                attested,
            } => Ok(AttestState {
                commitment,
                challenge,
                revealed,
                attested,
            }),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Staff: every client account awaiting verification (`list_unattested`, paged; at
    /// most 64 pages).
    pub async fn list_unattested(&self) -> Result<Vec<wire::PendingAttestation>, NetError> {
        let mut out: Vec<wire::PendingAttestation> = Vec::new();
        for _ in 0..64 {
            let after = out.last().map(|p| p.account.clone());
            match self.request(FrameBody::ListUnattested { after }).await? {
                FrameBody::Unattested { clients, more } => {
                    let clients = clients.into_inner();
                    let progressed = !clients.is_empty();
                    out.extend(clients);
                    if !more || !progressed {
                        return Ok(out);
                    }
                }
                other => return Err(NetError::Unexpected(format!("{other:?}"))),
            }
        }
        Ok(out)
    }

    /// Staff: the challenge for `account`'s request (`attest_challenge`).
    pub async fn attest_challenge(
        &self,
        account: &AccountId,
        challenge: sealpost_protocol::trust::LinkChallenge,
    ) -> Result<(), NetError> {
        self.expect_done(FrameBody::AttestChallenge {
            account: account.clone(),
            challenge,
        })
        .await
    }

    /// Staff: submit a signed attestation (`attest_submit`).
    pub async fn attest_submit(
        &self,
        attestation: sealpost_protocol::trust::ClientAttestation,
    ) -> Result<(), NetError> {
        self.expect_done(FrameBody::AttestSubmit {
            attestation: Box::new(attestation),
        })
        .await
    }

    /// Staff: end `account`'s pending request (`attest_dismiss`).
    pub async fn attest_dismiss(&self, account: &AccountId) -> Result<(), NetError> {
        self.expect_done(FrameBody::AttestDismiss {
            account: account.clone(),
        })
        .await
    }

    async fn expect_done(&self, body: FrameBody) -> Result<(), NetError> {
        match self.request(body).await? {
            FrameBody::Done => Ok(()),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Authenticate as `identity`, bound to this connection.
    pub async fn authenticate(
        &self,
        identity: &IdentityKeyPair,
    ) -> Result<(AccountId, Role), NetError> {
        let device = identity.device_id();
        let nonce = match self.request(FrameBody::AuthStart { device }).await? {
            FrameBody::AuthChallenge { nonce } => nonce,
            other => return Err(NetError::Unexpected(format!("{other:?}"))),
        };
        let signature = identity.sign(&auth_signature_message(&self.exporter, &nonce, &device));
        match self.request(FrameBody::AuthResponse { signature }).await? {
            FrameBody::AuthOk { account, role } => Ok((account, role)),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Upload prekeys; returns (one-time, KEM one-time, low).
    pub async fn upload_prekeys(
        &self,
        signed_prekey: Option<SignedPreKey>,
        one_time: Vec<OneTimePreKey>,
        kem_one_time: Vec<KemPreKey>,
        kem_last_resort: Option<KemPreKey>,
    ) -> Result<(u32, u32, bool), NetError> {
        let one_time = BoundedVec::new(one_time)?;
        let kem_one_time = BoundedVec::new(kem_one_time)?;
        match self
            .request(FrameBody::UploadPreKeys {
                signed_prekey,
                one_time,
                kem_one_time,
                kem_last_resort,
            })
            .await?
        {
            FrameBody::PreKeyStock {
                one_time,
                kem_one_time,
                low,
            } => Ok((one_time, kem_one_time, low)),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Fetch one bundle per device of `account`.
    pub async fn fetch_bundles(&self, account: &AccountId) -> Result<Vec<PreKeyBundle>, NetError> {
        match self
            .request(FrameBody::FetchBundles {
                account: account.clone(),
            })
            .await?
        {
            FrameBody::Bundles { bundles, .. } => Ok(bundles.into_inner()),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The devices of `account`.
    pub async fn list_devices(&self, account: &AccountId) -> Result<Vec<DeviceInfo>, NetError> {
        match self
            .request(FrameBody::ListDevices {
                account: account.clone(),
            })
            .await?
        {
            FrameBody::Devices { devices, .. } => Ok(devices.into_inner()),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Hand an envelope to the relay; returns once it is durably stored there.
    pub async fn send_envelope(&self, envelope: Envelope) -> Result<MessageId, NetError> {
        match self.request(FrameBody::Send { envelope }).await? {
            FrameBody::Accepted { message_id } => Ok(message_id),
            other => Err(NetError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Tell the relay an envelope was processed (it deletes it).
    pub async fn ack(&self, message_id: MessageId) -> Result<(), NetError> {
        self.send_frame(FrameBody::Ack { message_id }).await
    }

    /// Close the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

impl Drop for RelayConnection {
    fn drop(&mut self) {
        // The writer task hands over what is buffered, finishes the stream and ends.
        self.out.close(false);
        self.conn.close(0u32.into(), b"bye");
    }
}

async fn write_loop(mut send: quinn::SendStream, out: Arc<Outbox>) {
    loop {
        match out.take() {
            Take::Batch {
                bytes,
                wake_senders,
            } => {
                if wake_senders {
                    out.room.notify_waiters();
                }
                // The buffer becomes the chunk QUIC keeps until the relay acknowledges it:
                // no copy. (Not cancel-safe, and not raced against anything.)
                if send.write_chunk(bytes::Bytes::from(bytes)).await.is_err() {
                    out.close(true);
                    return;
                }
            }
            Take::Empty => out.ready.notified().await,
            Take::Closed => break,
        }
    }
    let _ = send.finish();
}

/// Route one frame from the relay: an answer to its waiting request, anything else to the
/// push queue (waiting while it is full). False when the connection's owner is gone.
async fn dispatch(frame: Frame, pending: &PendingMap, pushes: &mpsc::Sender<FrameBody>) -> bool {
    let waiter = if frame.id != 0 {
        pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|p| p.remove(&frame.id)))
    } else {
        None
    };
    match waiter {
        Some(tx) => {
            let _ = tx.send(frame.body);
            true
        }
        None => pushes.send(frame.body).await.is_ok(),
    }
}

/// The byte stream from the relay cannot be cut into frames any further (a length prefix
/// over [`wire::MAX_FRAME_LEN`] or of zero).
#[derive(Debug, PartialEq, Eq)]
struct Unframeable;

/// The control stream's framing, PROTOCOL.md §10: a `u32` big-endian length
/// ([`wire::FRAME_PREFIX_LEN`] bytes) then that many bytes of CBOR, at most
/// [`wire::MAX_FRAME_LEN`] (checked on the prefix, before the payload is buffered). The
/// protocol crate's I/O-free `FrameReader` cuts the same layout; `tokio_util`'s codec does
/// it here, over the bytes as QUIC hands them over.
fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(wire::FRAME_PREFIX_LEN)
        .big_endian()
        .max_frame_length(wire::MAX_FRAME_LEN)
        .new_codec()
}

/// Cut the whole frames buffered in `buf` out of it, appending them to `frames`; a
/// partial frame at its end stays in `buf` for the next chunk. A frame that does not
/// decode is skipped (the relay's answers are typed, one bad frame does not end the
/// connection); a bad length prefix (over the bound, or zero: [`wire::frame_len`]) ends
/// the stream.
fn cut_frames(
    codec: &mut LengthDelimitedCodec,
    buf: &mut BytesMut,
    frames: &mut Vec<Frame>,
) -> Result<(), Unframeable> {
    loop {
        match codec.decode(buf) {
            Ok(None) => return Ok(()),
            Ok(Some(payload)) if payload.is_empty() => return Err(Unframeable),
            Ok(Some(payload)) => {
                if let Ok(frame) = wire::decode_frame(&payload) {
                    frames.push(frame);
                }
            }
            Err(_) => return Err(Unframeable),
        }
    }
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    pending: PendingMap,
    pushes: mpsc::Sender<FrameBody>,
) {
    let mut codec = frame_codec();
    // Holds at most the partial frame left by the last chunk, then the next chunk.
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        // Cancel-safe: the bytes as QUIC received them. A chunk may hold many frames or
        // part of one.
        let chunk = match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) | Err(_) => break,
        };
        buf.extend_from_slice(&chunk);
        let framed = cut_frames(&mut codec, &mut buf, &mut frames);
        let mut owner_gone = false;
        for frame in frames.drain(..) {
            if !owner_gone && !dispatch(frame, &pending, &pushes).await {
                owner_gone = true;
            }
        }
        if owner_gone || framed.is_err() {
            break;
        }
    }
    // Wake every waiter, and refuse new requests: the connection is gone.
    if let Ok(mut p) = pending.lock() {
        *p = None;
    }
}

/// What `link_poll` reports to a linking device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// The challenge an existing device offered, if any yet.
    pub challenge: Option<LinkChallenge>,
    /// The entry body it offered.
    pub body: Option<EntryBody>,
    /// The entry was appended: the device can authenticate.
    pub completed: bool,
    /// A recovery's quorum authorised the entry: the device completes it
    /// ([`RelayConnection::link_complete`]).
    pub ready: bool,
}

/// Check a device list against what the caller expects (helper for callers that pin
/// identities): the identities of `devices`.
pub fn identities(devices: &[DeviceInfo]) -> Vec<PublicIdentity> {
    devices.iter().map(|d| d.identity.clone()).collect()
}

/// A `log_proof` answer (docs/PROTOCOL.md §21.5), owned.
#[derive(Clone, Debug)]
pub struct LogProofAnswer {
    /// The checkpoint note text.
    pub checkpoint: String,
    /// The leaf's index.
    pub index: u64,
    /// The leaf bytes.
    pub leaf: Vec<u8>,
    /// Inclusion proof.
    pub inclusion: Vec<sealpost_protocol::tlog::Hash>,
    /// Consistency proof from the asked size.
    pub consistency: Vec<sealpost_protocol::tlog::Hash>,
}

impl LogProofAnswer {
    /// Borrowed, for [`crate::transparency::check_leaf_proof`].
    pub fn as_answer(&self) -> crate::transparency::ProofAnswer<'_> {
        crate::transparency::ProofAnswer {
            checkpoint: &self.checkpoint,
            index: self.index,
            leaf: &self.leaf,
            inclusion: &self.inclusion,
            consistency: &self.consistency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_protocol::envelope::MessageId;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::new(3, FrameBody::Pong),
            Frame::new(
                0,
                FrameBody::Ack {
                    message_id: MessageId([1; 16]),
                },
            ),
            Frame::new(
                0,
                FrameBody::BlobChunk {
                    data: vec![9; 3000],
                },
            ),
            Frame::new(u64::MAX, FrameBody::error(ErrorCode::Internal, "boom")),
        ]
    }

    fn stream(frames: &[Frame]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| wire::encode_frame(f).unwrap())
            .collect()
    }

    fn cut_in_chunks(bytes: &[u8], chunk_len: usize) -> Result<Vec<Frame>, Unframeable> {
        let mut codec = frame_codec();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(chunk_len) {
            buf.extend_from_slice(chunk);
            cut_frames(&mut codec, &mut buf, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn many_frames_in_one_chunk() {
        let want = frames();
        assert_eq!(cut_in_chunks(&stream(&want), usize::MAX).unwrap(), want);
    }

    #[test]
    fn frames_split_across_chunks_at_every_length() {
        let want = frames();
        let bytes = stream(&want);
        for chunk_len in 1..=bytes.len() {
            assert_eq!(
                cut_in_chunks(&bytes, chunk_len).unwrap(),
                want,
                "{chunk_len}"
            );
        }
    }

    #[test]
    fn a_frame_that_does_not_decode_is_skipped() {
        let want = frames();
        let mut bytes = wire::encode_frame(&want[0]).unwrap();
        bytes.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff]);
        bytes.extend(stream(&want[1..]));
        for chunk_len in [1, 5, 7, usize::MAX] {
            assert_eq!(cut_in_chunks(&bytes, chunk_len).unwrap(), want);
        }
    }

    #[test]
    fn a_bad_length_prefix_stops_the_stream_after_the_frames_before_it() {
        let want = frames();
        for bad in [0u32, (wire::MAX_FRAME_LEN + 1) as u32] {
            let mut bytes = stream(&want);
            bytes.extend_from_slice(&bad.to_be_bytes());
            bytes.extend(stream(&want));
            let mut out = Vec::new();
            assert_eq!(
                cut_frames(
                    &mut frame_codec(),
                    &mut BytesMut::from(&bytes[..]),
                    &mut out
                ),
                Err(Unframeable)
            );
            assert_eq!(out, want);
            // The protocol's own reader refuses the same prefix.
            assert!(wire::frame_len(bad.to_be_bytes()).is_err());
        }
    }

    #[tokio::test]
    async fn a_full_outbox_holds_callers_until_the_writer_takes_it() {
        let out = Arc::new(Outbox::new());
        let ack = Frame::new(
            0,
            FrameBody::Ack {
                message_id: MessageId([2; 16]),
            },
        );
        // Fill it past the bound without a writer.
        let filler = vec![0u8; OUTBOX_BYTES];
        out.push(|b| Ok(b.append_raw(&filler))).await.unwrap();
        let waiting = tokio::spawn({
            let out = out.clone();
            let ack = ack.clone();
            async move {
                out.push(|b| {
                    b.append_frame(&ack)
                        .map_err(|e| NetError::Unexpected(e.to_string()))
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a full outbox makes callers wait");
        // The writer's side: take the batch, wake the waiters.
        let Take::Batch {
            bytes,
            wake_senders,
        } = out.take()
        else {
            panic!("expected a batch");
        };
        assert_eq!(bytes.len(), OUTBOX_BYTES);
        assert!(wake_senders);
        out.room.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Take::Batch { bytes, .. } = out.take() else {
            panic!("expected the waiting caller's frame");
        };
        assert_eq!(bytes, wire::encode_frame(&ack).unwrap());
    }

    #[tokio::test]
    async fn closing_the_outbox_fails_waiting_and_later_callers() {
        let out = Arc::new(Outbox::new());
        let filler = vec![0u8; OUTBOX_BYTES];
        out.push(|b| Ok(b.append_raw(&filler))).await.unwrap();
        let waiting = tokio::spawn({
            let out = out.clone();
            async move { out.push(|b| Ok(b.append_raw(b"x"))).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The writer failed: what is buffered can never be sent.
        out.close(true);
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(r, Err(NetError::Connection(_))));
        assert!(matches!(
            out.push(|b| Ok(b.append_raw(b"y"))).await,
            Err(NetError::Connection(_))
        ));
        assert_eq!(out.take(), Take::Closed);
    }

    #[tokio::test]
    async fn the_writer_is_woken_by_the_first_frame_after_it_went_idle() {
        let out = Arc::new(Outbox::new());
        assert_eq!(out.take(), Take::Empty);
        let woken = tokio::spawn({
            let out = out.clone();
            async move { out.ready.notified().await }
        });
        out.push(|b| Ok(b.append_raw(b"abc"))).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(out.take(), Take::Batch { .. }));
    }
}
