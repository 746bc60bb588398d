//! The per-connection shell: reads frames from the control stream, hands them to
//! [`Relay::handle`], writes replies, and runs the delivery pump once the device is
//! authenticated. Everything here is I/O plumbing; decisions live in `relay.rs`.
//!
//! A device opens one bidirectional control stream. Frames are `u32 BE length || CBOR`.
//! A length over the bound closes the connection (the stream cannot be resynchronised);
//! a frame that fails to decode gets an `error` frame and the connection continues, up
//! to `max_bad_frames`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use sealpost_protocol::envelope::MessageId;
use sealpost_protocol::wire::{
    self, BoundedString, ErrorCode, Frame, FrameBody, TLS_EXPORTER_LABEL,
};
use sealpost_protocol::{DecodeError, EncodeError};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};
use tracing::{debug, info, warn};

use crate::hub::{Push, Subscription, PUSH_OVERHEAD_BYTES};
use crate::metrics as m;
use crate::relay::{Authenticated, ConnCtx, DeliveredSeqs, Handled, Relay};
use crate::store::Store;

/// Refusals logged (at info) per connection; the rest are counted and summed up in one
/// line when the connection ends (a peer cannot flood the log).
pub const MAX_LOGGED_REFUSALS: u32 = 20;

/// The refusals of one connection, for the log: what was refused, why, and to whom (never
/// message content: the relay has none, and the reasons are its own words).
struct RefusalLog {
    remote: std::net::SocketAddr,
    who: Option<(
        sealpost_protocol::identity::AccountId,
        sealpost_protocol::identity::DeviceId,
    )>,
    logged: u32,
    unlogged: u64,
}

impl RefusalLog {
    fn new(remote: std::net::SocketAddr) -> Self {
        Self {
            remote,
            who: None,
            logged: 0,
            unlogged: 0,
        }
    }

    fn note(&mut self, reply: &Frame) {
        let FrameBody::Error { code, message, .. } = &reply.body else {
            return;
        };
        if self.logged >= MAX_LOGGED_REFUSALS {
            self.unlogged += 1;
            return;
        }
        self.logged += 1;
        let code = code.name();
        match &self.who {
            Some((account, device)) => info!(
                remote = %self.remote,
                account = %account,
                device = %device,
                request = reply.id,
                code,
                reason = message.as_str(),
                "request refused"
            ),
            None => info!(
                remote = %self.remote,
                request = reply.id,
                code,
                reason = message.as_str(),
                "request refused (unauthenticated)"
            ),
        }
    }

    fn closed(&self, reason: &str) {
        info!(remote = %self.remote, reason, "connection closed by the relay");
    }
}

impl Drop for RefusalLog {
    fn drop(&mut self) {
        if self.unlogged > 0 {
            info!(
                remote = %self.remote,
                not_logged = self.unlogged,
                "further refusals on this connection were not logged"
            );
        }
    }
}

/// Encoded bytes queued for the peer after which producers wait for the writer.
pub const OUTBOX_BYTES: usize = 1 << 20;
/// Capacity an empty outbox takes when a frame arrives.
const OUTBOX_START: usize = 16 * 1024;
/// Most bytes asked of the control stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// `drain` requests waiting for an answer, at most (more are answered together).
const MAX_PENDING_DRAINS: usize = 16;
/// `send`/`ack` store operations one connection may have waiting for their commit.
pub const MAX_IN_FLIGHT: usize = 128;
/// Most pending envelopes the delivery pump reads from the store at once.
const MAX_DELIVERY_BATCH: usize = 256;
/// Most envelope bytes (body plus [`PUSH_OVERHEAD_BYTES`] each) of one batch read from
/// the store that the delivery pump holds while it waits for room in the outbox (at
/// least one envelope); the rest of the batch is read again.
pub const MAX_DELIVERY_BATCH_BYTES: usize = 1 << 20;
/// Application close codes.
pub mod close {
    /// Normal close (relay shutting down).
    pub const SHUTDOWN: u32 = 0;
    /// The peer violated the framing.
    pub const PROTOCOL: u32 = 1;
    /// Another connection authenticated as the same device.
    pub const REPLACED: u32 = 2;
    /// The peer did not open its control stream or authenticate in time.
    pub const TIMEOUT: u32 = 3;
    /// The device was revoked by its account's device log.
    pub const REVOKED: u32 = 4;
}

/// Why the delivery pump ended the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Another connection authenticated as the same device.
    Replaced,
    /// The device was revoked.
    Revoked,
}

fn code_for(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::BadFrame,
    }
}

/// Frames encoded for the peer, waiting for the writer task, which hands everything
/// queued to quinn in one piece (quinn keeps the buffer; nothing is copied again).
/// Replies and deliveries are encoded straight into it. Bounded: producers wait while
/// more than [`OUTBOX_BYTES`] are queued.
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    /// The writer waits here for frames.
    filled: Notify,
    /// Producers wait here for room.
    drained: Notify,
}

struct OutboxState {
    buf: Vec<u8>,
    closed: bool,
}

impl Outbox {
    fn new() -> Self {
        Self {
            state: Mutex::new(OutboxState {
                buf: Vec::new(),
                closed: false,
            }),
            filled: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Queue one frame, written by `encode` (which appends it, prefix included, and
    /// leaves the buffer as it was on error). Waits for room; false once closed.
    async fn push(&self, encode: impl Fn(&mut Vec<u8>) -> Result<(), EncodeError>) -> bool {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return false;
                }
                if st.buf.len() < OUTBOX_BYTES {
                    let was_empty = st.buf.is_empty();
                    if st.buf.capacity() == 0 {
                        // Room for a burst at once; an idle connection holds none.
                        st.buf.reserve(OUTBOX_START);
                    }
                    if let Err(e) = encode(&mut st.buf) {
                        warn!(error = %e, "could not encode a frame");
                        return true;
                    }
                    drop(st);
                    if was_empty {
                        self.filled.notify_one();
                    }
                    return true;
                }
            }
            drained.await;
        }
    }

    /// Queue `frame`.
    async fn frame(&self, frame: &Frame) -> bool {
        self.push(|b| wire::encode_frame_into(frame, b)).await
    }

    /// Everything queued, once there is something; `None` once closed and empty.
    async fn take(&self) -> Option<Vec<u8>> {
        loop {
            let filled = self.filled.notified();
            tokio::pin!(filled);
            filled.as_mut().enable();
            {
                let mut st = self.lock();
                if !st.buf.is_empty() {
                    let out = std::mem::take(&mut st.buf);
                    drop(st);
                    self.drained.notify_waiters();
                    return Some(out);
                }
                if st.closed {
                    return None;
                }
            }
            filled.await;
        }
    }

    /// No more frames: the writer finishes what is queued; producers stop.
    fn close(&self) {
        self.lock().closed = true;
        self.filled.notify_one();
        self.drained.notify_waiters();
    }
}

/// What the connection loop takes from the control stream.
enum Incoming {
    /// A decoded frame (boxed: frames are large next to the error variants).
    Frame(Box<Frame>),
    /// A frame that did not decode (the stream is still in sync).
    Bad(DecodeError),
    /// A length prefix over the bound (the stream cannot be resynchronised).
    Fatal(DecodeError),
}

/// The control stream's framing, PROTOCOL.md §10: a `u32` big-endian length
/// ([`wire::FRAME_PREFIX_LEN`] bytes) then that many bytes of CBOR, at most
/// [`wire::MAX_FRAME_LEN`] (checked on the prefix, before the payload is buffered). The
/// protocol crate's I/O-free `FrameReader` cuts the same layout; `tokio_util`'s codec does
/// it here, over the chunks read from QUIC.
fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(wire::FRAME_PREFIX_LEN)
        .big_endian()
        .max_frame_length(wire::MAX_FRAME_LEN)
        .new_codec()
}

/// Why a length prefix was refused, in the protocol's words ([`wire::frame_len`]).
fn refused_prefix(prefix: [u8; wire::FRAME_PREFIX_LEN]) -> DecodeError {
    wire::frame_len(prefix)
        .err()
        .unwrap_or(DecodeError::TooLarge {
            what: "frame",
            got: u32::from_be_bytes(prefix) as usize,
            max: wire::MAX_FRAME_LEN,
        })
}

/// The next frame of what was read into `buf` (consumed from its front). `None` when
/// more must be read: `buf` then holds at most part of one frame.
fn next_incoming(codec: &mut LengthDelimitedCodec, buf: &mut BytesMut) -> Option<Incoming> {
    match codec.decode(buf) {
        Ok(None) => None,
        // A zero length: the codec cuts an empty frame, the protocol refuses it.
        Ok(Some(payload)) if payload.is_empty() => {
            buf.clear();
            Some(Incoming::Fatal(refused_prefix([0; wire::FRAME_PREFIX_LEN])))
        }
        Ok(Some(payload)) => Some(match wire::decode_frame(&payload) {
            Ok(f) => Incoming::Frame(Box::new(f)),
            Err(e) => Incoming::Bad(e),
        }),
        // Over the bound: the codec leaves the refused prefix at the front of `buf`.
        Err(_) => {
            let mut prefix = [0xff; wire::FRAME_PREFIX_LEN];
            if let Some(p) = buf.get(..wire::FRAME_PREFIX_LEN) {
                prefix.copy_from_slice(p);
            }
            buf.clear();
            Some(Incoming::Fatal(refused_prefix(prefix)))
        }
    }
}

type InFlight<'a> = Pin<Box<dyn Future<Output = Handled> + Send + 'a>>;

/// Serve one accepted connection until it closes or `shutdown` fires.
///
/// One task reads the control stream in chunks and handles every whole frame in them;
/// replies and deliveries go through an [`Outbox`] to a writer task. `send` and `ack`
/// frames are pipelined: each is checked in frame order, its store operation is
/// submitted in frame order (so a sender's envelopes keep their order), and up to
/// [`MAX_IN_FLIGHT`] of them wait for their commit at once; their replies are written in
/// frame order as the commits complete. Every other frame first waits for the in-flight
/// ones, so control frames see the effects of everything sent before them.
pub async fn serve<S: Store>(
    relay: Arc<Relay<S>>,
    conn: quinn::Connection,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote = conn.remote_address();
    let limits = &relay.config.limits;
    let mut exporter = [0u8; 32];
    if conn
        .export_keying_material(&mut exporter, TLS_EXPORTER_LABEL, b"")
        .is_err()
    {
        conn.close(close::PROTOCOL.into(), b"no TLS exporter");
        return;
    }
    let stream = tokio::time::timeout(
        Duration::from_secs(limits.stream_open_timeout_secs),
        conn.accept_bi(),
    )
    .await;
    let (send, mut recv) = match stream {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return,
        Err(_) => {
            info!(remote = %remote, reason = "control stream not opened in time", "connection closed by the relay");
            conn.close(close::TIMEOUT.into(), b"control stream not opened in time");
            return;
        }
    };
    // Further streams carry attachment transfers, once authenticated (`transfer.rs`).
    let (auth_tx, auth_rx) = watch::channel(None);
    let extra = tokio::spawn(crate::transfer::serve_streams(
        relay.clone(),
        conn.clone(),
        auth_rx,
    ));

    let outbox = Arc::new(Outbox::new());
    let writer = tokio::spawn(write_loop(send, outbox.clone()));
    let mut codec = frame_codec();
    // What was read and not yet cut into frames: part of one frame and the last chunk.
    let mut buf = BytesMut::new();
    // No whole frame is left in `buf`: the next chunk may be read.
    let mut need_more = true;
    let mut ctx = ConnCtx::new(remote, exporter);
    let mut refusals = RefusalLog::new(remote);
    let mut bad_frames = 0u32;
    let auth_deadline = tokio::time::sleep(Duration::from_secs(limits.auth_timeout_secs));
    tokio::pin!(auth_deadline);
    let mut link_grace_used = false;
    let mut delivery: Option<Delivery> = None;
    let mut ended: Option<End> = None;
    let relay_ref: &Relay<S> = &relay;
    let mut in_flight: FuturesOrdered<InFlight<'_>> = FuturesOrdered::new();

    'conn: loop {
        // Handle what was already read, while there is room for store operations.
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(incoming) = next_incoming(&mut codec, &mut buf) else {
                need_more = true;
                break;
            };
            let frame = match incoming {
                Incoming::Frame(f) => *f,
                Incoming::Fatal(e) => {
                    metrics::counter!(m::BAD_FRAMES).increment(1);
                    let _ = outbox
                        .frame(&Frame::new(
                            0,
                            FrameBody::error(code_for(&e), &e.to_string()),
                        ))
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    refusals.closed("bad frame length");
                    conn.close(close::PROTOCOL.into(), b"bad frame length");
                    break 'conn;
                }
                Incoming::Bad(e) => {
                    metrics::counter!(m::BAD_FRAMES).increment(1);
                    bad_frames += 1;
                    debug!(remote = %remote, error = %e, "undecodable frame");
                    let error = Frame::new(0, FrameBody::error(code_for(&e), &e.to_string()));
                    if !outbox.frame(&error).await {
                        break 'conn;
                    }
                    if bad_frames >= limits.max_bad_frames {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        refusals.closed("too many bad frames");
                        conn.close(close::PROTOCOL.into(), b"too many bad frames");
                        break 'conn;
                    }
                    continue;
                }
            };
            let me = ctx.authenticated().cloned();
            match (frame.body, me) {
                (FrameBody::Send { envelope }, Some(me)) => {
                    match relay_ref
                        .prepare_send(&mut ctx, &me, frame.id, envelope)
                        .await
                    {
                        Ok(prepared) => {
                            in_flight.push_back(Box::pin(relay_ref.commit_send(prepared)));
                        }
                        Err(refused) => {
                            if !apply(
                                refused,
                                &relay,
                                &mut delivery,
                                &auth_tx,
                                &outbox,
                                &shutdown,
                                &mut refusals,
                            )
                            .await
                            {
                                break 'conn;
                            }
                        }
                    }
                }
                (FrameBody::Ack { message_id }, Some(me)) => {
                    // Only what this connection delivered can be acknowledged on it (the
                    // store deletes by the number it was delivered under). Anything else
                    // is still pending and is delivered again, and acknowledged then.
                    // Every copy of the id delivered here is acknowledged at once (the
                    // client drops the others by id anyway), and each gives its window
                    // slot back whatever the store answers.
                    if let Some(seqs) = delivery.as_ref().and_then(|d| d.take_acked(&message_id)) {
                        in_flight.push_back(Box::pin(
                            relay_ref.commit_acks(me.device, frame.id, message_id, seqs),
                        ));
                    }
                }
                (body, _) => {
                    // Control frames wait for everything before them.
                    while let Some(done) = in_flight.next().await {
                        if !apply(
                            done,
                            &relay,
                            &mut delivery,
                            &auth_tx,
                            &outbox,
                            &shutdown,
                            &mut refusals,
                        )
                        .await
                        {
                            break 'conn;
                        }
                    }
                    let handled = relay.handle(&mut ctx, Frame { body, ..frame }).await;
                    if !apply(
                        handled,
                        &relay,
                        &mut delivery,
                        &auth_tx,
                        &outbox,
                        &shutdown,
                        &mut refusals,
                    )
                    .await
                    {
                        break 'conn;
                    }
                }
            }
        }
        let can_read = need_more && in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if !apply(done, &relay, &mut delivery, &auth_tx, &outbox, &shutdown, &mut refusals).await {
                    break;
                }
            }
            _ = &mut auth_deadline, if ctx.authenticated().is_none() => {
                // A connection waiting on an open link request (a new device waiting for
                // its confirmation or for a recovery's quorum) is not closed: the request
                // bounds the wait (its lifetime), and the idle timeout, the connection
                // limits and the per-address link limits still apply. Once the request
                // completed, the device gets one more period to authenticate.
                let waiting = ctx.waiting_link.as_ref().and_then(|l| relay.link_waiting(l));
                match waiting {
                    Some(completed) if !(completed && link_grace_used) => {
                        link_grace_used = completed;
                        auth_deadline.as_mut().reset(
                            tokio::time::Instant::now()
                                + Duration::from_secs(limits.auth_timeout_secs),
                        );
                    }
                    _ => {
                        refusals.closed("not authenticated in time");
                        conn.close(close::TIMEOUT.into(), b"not authenticated in time");
                        break;
                    }
                }
            }
            end = async {
                match &mut delivery {
                    Some(d) => (&mut d.end_rx).await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                // The pump ended: replaced by a newer connection, the device was revoked,
                // or the connection is gone.
                ended = end;
                break;
            }
            // Cancel-safe: a chunk not taken stays in the stream.
            chunk = recv.read_chunk(READ_CHUNK, true), if can_read => match chunk {
                Ok(Some(c)) => {
                    metrics::counter!(m::BYTES_RECEIVED).increment(c.bytes.len() as u64);
                    buf.extend_from_slice(&c.bytes);
                    need_more = false;
                }
                // The peer finished or reset the stream, or the connection is gone.
                Ok(None) | Err(_) => break,
            },
        }
    }

    // Let committed work answer (bounded by the connection's lifetime anyway).
    while let Ok(Some(done)) = tokio::time::timeout(Duration::from_secs(2), in_flight.next()).await
    {
        if !apply(
            done,
            &relay,
            &mut delivery,
            &auth_tx,
            &outbox,
            &shutdown,
            &mut refusals,
        )
        .await
        {
            break;
        }
    }
    drop(in_flight);
    if let Some(d) = delivery.take() {
        d.stop(&relay).await;
    }
    extra.abort();
    outbox.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if ended == Some(End::Replaced) {
        conn.close(close::REPLACED.into(), b"replaced by a newer connection");
    } else if ended == Some(End::Revoked) {
        conn.close(
            close::REVOKED.into(),
            b"device revoked by its account's device log, or its account disabled",
        );
    } else if *shutdown.borrow() {
        conn.close(close::SHUTDOWN.into(), b"relay shutting down");
    }
}

/// Carry out what a handler decided. Returns false when the connection is gone.
async fn apply<S: Store>(
    handled: Handled,
    relay: &Arc<Relay<S>>,
    delivery: &mut Option<Delivery>,
    auth_tx: &watch::Sender<Option<Authenticated>>,
    outbox: &Arc<Outbox>,
    shutdown: &watch::Receiver<bool>,
    refusals: &mut RefusalLog,
) -> bool {
    if let Some(me) = handled.authenticated {
        refusals.who = Some((me.account.clone(), me.device));
        auth_tx.send_replace(Some(me.clone()));
        *delivery = Some(Delivery::start(
            relay.clone(),
            me,
            outbox.clone(),
            shutdown.clone(),
        ));
    }
    if let (n @ 1.., Some(d)) = (handled.released, delivery.as_ref()) {
        d.release(n);
    }
    if let (Some(id), Some(d)) = (handled.drain, delivery.as_ref()) {
        // Bounded: a flood of drains beyond the queue is simply not answered twice.
        let _ = d.drain_tx.try_send(id);
    }
    if let Some(reply) = handled.reply {
        refusals.note(&reply);
        if let FrameBody::Error {
            code: ErrorCode::RateLimited,
            ..
        } = &reply.body
        {
            relay.observe(crate::security::Observation::RateLimited {
                account: refusals.who.as_ref().map(|w| w.0.clone()),
                device: refusals.who.as_ref().map(|w| w.1),
                address: refusals.remote.ip(),
            });
        }
        if !outbox.frame(&reply).await {
            return false;
        }
    }
    // After the `security_events` answer: the pushes follow it.
    if let (Some(feed), Some(d)) = (handled.watch, delivery.as_mut()) {
        d.watch_security(relay.clone(), feed, outbox.clone());
    }
    true
}

/// Forward the security events of `feed` to a watching security device, as
/// `security_event` pushes, while its device is still the security desk's.
async fn forward_security<S: Store>(
    relay: Arc<Relay<S>>,
    me: Authenticated,
    mut feed: crate::relay::SecurityFeed,
    out: Arc<Outbox>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match feed.feed.recv().await {
            Ok(event) => {
                if event.id <= feed.after {
                    continue;
                }
                feed.after = event.id;
                if !relay.is_security_desk(&me) {
                    info!(account = %me.account, device = %me.device, "security watch ended: the device is no longer the security desk's");
                    return;
                }
                let frame = Frame::new(
                    0,
                    FrameBody::SecurityEvent {
                        event: (*event).clone(),
                    },
                );
                if !out.frame(&frame).await {
                    return;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                warn!(account = %me.account, device = %me.device, missed, "a security watcher fell behind and missed events (it can ask again from the last id it saw)");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Hand everything the outbox collects to quinn, one buffer per wake-up.
async fn write_loop(mut send: quinn::SendStream, outbox: Arc<Outbox>) {
    while let Some(buf) = outbox.take().await {
        let n = buf.len() as u64;
        if send.write_chunk(Bytes::from(buf)).await.is_err() {
            outbox.close();
            return;
        }
        metrics::counter!(m::BYTES_SENT).increment(n);
    }
    let _ = send.finish();
}

/// Envelopes delivered on one connection and not yet acknowledged on it, each holding a
/// delivery-window slot. Keyed by sequence number: the same message id can be delivered
/// more than once (a repeat pushed under a new number before the store recognised it, or
/// a resend with another timestamp, which is a new envelope), and each delivery holds its
/// own slot.
#[derive(Debug, Default)]
struct Unacked(HashMap<MessageId, DeliveredSeqs>);

impl Unacked {
    /// Record a delivery; false if `seq` is already in flight here (it holds a slot).
    fn insert(&mut self, seq: u64, id: MessageId) -> bool {
        match self.0.entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(DeliveredSeqs::new(seq));
                true
            }
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().add(seq),
        }
    }

    /// Every delivery of `id`, removed (their slots are given back once the store has
    /// answered their acknowledgement); None if there is none.
    fn take(&mut self, id: &MessageId) -> Option<DeliveredSeqs> {
        self.0.remove(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.values().map(DeliveredSeqs::count).sum()
    }
}

fn lock_unacked(m: &Mutex<Unacked>) -> std::sync::MutexGuard<'_, Unacked> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The delivery pump of an authenticated connection.
struct Delivery {
    me: Authenticated,
    conn: u64,
    inflight: Arc<Mutex<Unacked>>,
    window: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
    end_rx: tokio::sync::oneshot::Receiver<End>,
    drain_tx: mpsc::Sender<u64>,
    /// The security-event forwarder, once the device watches.
    security: Option<tokio::task::JoinHandle<()>>,
}

impl Delivery {
    fn start<S: Store>(
        relay: Arc<Relay<S>>,
        me: Authenticated,
        out: Arc<Outbox>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let sub = relay.hub.register(me.account.clone(), me.device);
        let conn = sub.conn;
        metrics::gauge!(m::DEVICES_AUTHENTICATED).set(relay.hub.online() as f64);
        let window = Arc::new(Semaphore::new(relay.config.limits.delivery_window));
        let inflight = Arc::new(Mutex::new(Unacked::default()));
        let (end_tx, end_rx) = tokio::sync::oneshot::channel();
        let (drain_tx, drain_rx) = mpsc::channel(MAX_PENDING_DRAINS);
        let task = tokio::spawn(pump(
            relay,
            me.clone(),
            sub,
            out,
            window.clone(),
            inflight.clone(),
            shutdown,
            end_tx,
            drain_rx,
        ));
        Self {
            me,
            conn,
            inflight,
            window,
            task,
            end_rx,
            drain_tx,
            security: None,
        }
    }

    /// Start (or restart) forwarding security events.
    fn watch_security<S: Store>(
        &mut self,
        relay: Arc<Relay<S>>,
        feed: crate::relay::SecurityFeed,
        out: Arc<Outbox>,
    ) {
        if let Some(old) = self.security.take() {
            old.abort();
        }
        self.security = Some(tokio::spawn(forward_security(
            relay,
            self.me.clone(),
            feed,
            out,
        )));
    }

    /// The sequence numbers `id` was delivered under on this connection and not yet
    /// acknowledged, taken out of the in-flight set; each still holds its window slot
    /// until [`Delivery::release`].
    fn take_acked(&self, id: &MessageId) -> Option<DeliveredSeqs> {
        lock_unacked(&self.inflight).take(id)
    }

    /// Give back `n` window slots (acknowledgements the store has answered, whatever it
    /// answered).
    fn release(&self, n: usize) {
        self.window.add_permits(n);
    }

    async fn stop<S: Store>(self, relay: &Relay<S>) {
        relay.hub.unregister(&self.me.device, self.conn);
        metrics::gauge!(m::DEVICES_AUTHENTICATED).set(relay.hub.online() as f64);
        if let Some(s) = self.security {
            s.abort();
        }
        self.task.abort();
        let _ = self.task.await;
    }
}

/// How many envelopes at the start of `batch` fit in [`MAX_DELIVERY_BATCH_BYTES`]
/// (at least one).
fn within_bytes(batch: &[crate::store::Pending]) -> usize {
    let mut bytes = 0usize;
    let mut n = 0;
    for p in batch {
        bytes = bytes.saturating_add(p.envelope.body.len() + PUSH_OVERHEAD_BYTES);
        if n > 0 && bytes > MAX_DELIVERY_BATCH_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// Record a delivery (for the window and for its `ack`) and queue it. False once the
/// connection is gone.
async fn deliver(
    out: &Outbox,
    window: &Semaphore,
    inflight: &Mutex<Unacked>,
    seq: u64,
    envelope: &sealpost_protocol::Envelope,
) -> bool {
    if !lock_unacked(inflight).insert(seq, envelope.header.message_id) {
        // Already delivered here under this number (and holding a slot): not again.
        window.add_permits(1);
        return true;
    }
    metrics::counter!(m::ENVELOPES_DELIVERED).increment(1);
    out.push(|b| wire::encode_deliver_into(envelope, b)).await
}

/// The delivery pump: ends the connection when the device is replaced by a newer
/// connection or revoked. Both are [`Notify`]s rather than pushes, and are watched at
/// every await of the pump (also while it waits for window room or for the outbox), so
/// neither a full push queue nor a stalled peer can hold them up.
#[allow(clippy::too_many_arguments)]
async fn pump<S: Store>(
    relay: Arc<Relay<S>>,
    me: Authenticated,
    sub: Subscription,
    out: Arc<Outbox>,
    window: Arc<Semaphore>,
    inflight: Arc<Mutex<Unacked>>,
    shutdown: watch::Receiver<bool>,
    end_tx: tokio::sync::oneshot::Sender<End>,
    drain_rx: mpsc::Receiver<u64>,
) {
    let Subscription {
        rx,
        queued,
        lagged,
        revoked,
        replaced,
        ..
    } = sub;
    let end = tokio::select! {
        biased;
        _ = revoked.notified() => Some(End::Revoked),
        _ = replaced.notified() => Some(End::Replaced),
        () = deliver_loop(
            relay, me, rx, &queued, &lagged, out, window, inflight, shutdown, drain_rx,
        ) => None,
    };
    if let Some(end) = end {
        let _ = end_tx.send(end);
    }
}

#[allow(clippy::too_many_arguments)]
async fn deliver_loop<S: Store>(
    relay: Arc<Relay<S>>,
    me: Authenticated,
    mut rx: mpsc::Receiver<Push>,
    queued: &AtomicUsize,
    lagged: &AtomicBool,
    out: Arc<Outbox>,
    window: Arc<Semaphore>,
    inflight: Arc<Mutex<Unacked>>,
    mut shutdown: watch::Receiver<bool>,
    mut drain_rx: mpsc::Receiver<u64>,
) {
    let mut last_seq = 0u64;
    let mut drains: Vec<u64> = Vec::new();
    // Start by catching up with everything pending (redelivery of unacknowledged ones).
    let mut catching_up = true;
    loop {
        if lagged.swap(false, Ordering::AcqRel) {
            catching_up = true;
        }
        if catching_up {
            // Wait for room in the window, then read the next batch from the store.
            let permit = tokio::select! {
                p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.changed() => return,
            };
            let room = window.available_permits() + 1;
            let asked = room.min(MAX_DELIVERY_BATCH);
            let mut batch = match relay.store.pending(&me.device, last_seq, asked).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "reading pending envelopes failed; retrying");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                drop(permit);
                catching_up = false;
                for id in drains.drain(..) {
                    if !out.frame(&Frame::new(id, FrameBody::MailboxEmpty)).await {
                        return;
                    }
                }
                continue;
            }
            let n = batch.len();
            // Hold at most MAX_DELIVERY_BATCH_BYTES while the outbox may make us wait;
            // the rest is read again.
            batch.truncate(within_bytes(&batch));
            let trimmed = batch.len() < n;
            permit.forget();
            for (i, p) in batch.into_iter().enumerate() {
                if i > 0 {
                    match window.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    }
                }
                last_seq = p.seq;
                if !deliver(&out, &window, &inflight, p.seq, &p.envelope).await {
                    return;
                }
            }
            if n < asked && !trimmed {
                // Drained the store (as far as this read saw).
                catching_up = false;
                for id in drains.drain(..) {
                    if !out.frame(&Frame::new(id, FrameBody::MailboxEmpty)).await {
                        return;
                    }
                }
            }
            continue;
        }
        let push = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            d = drain_rx.recv() => {
                if let Some(id) = d {
                    if drains.len() < MAX_PENDING_DRAINS {
                        drains.push(id);
                    }
                    catching_up = true;
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        queued.fetch_sub(push.queued_bytes(), Ordering::AcqRel);
        match push {
            Push::Envelope { seq, envelope } => {
                if seq <= last_seq {
                    continue;
                }
                if seq == last_seq + 1 {
                    if let Ok(p) = window.try_acquire() {
                        p.forget();
                        last_seq = seq;
                        if !deliver(&out, &window, &inflight, seq, &envelope).await {
                            return;
                        }
                        continue;
                    }
                }
                catching_up = true;
            }
            Push::PreKeysLow(c) => {
                let frame = Frame::new(
                    0,
                    FrameBody::PreKeyStock {
                        one_time: c.one_time,
                        kem_one_time: c.kem_one_time,
                        low: true,
                    },
                );
                if !out.frame(&frame).await {
                    return;
                }
            }
            Push::AccountAlert(event) => {
                let frame = Frame::new(
                    0,
                    FrameBody::AccountAlert {
                        event: (*event).clone(),
                    },
                );
                if !out.frame(&frame).await {
                    return;
                }
            }
            Push::DeviceLogChanged {
                account,
                seq,
                action,
            } => {
                let frame = Frame::new(
                    0,
                    FrameBody::DeviceLogChanged {
                        account,
                        seq,
                        action: BoundedString::truncating(action),
                    },
                );
                if !out.frame(&frame).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn ping(id: u64) -> Frame {
        Frame::new(id, FrameBody::Pong)
    }

    #[tokio::test]
    async fn outbox_hands_over_everything_queued_in_order_and_bounds_producers() {
        let outbox = Arc::new(Outbox::new());
        for id in 1..=3 {
            assert!(outbox.frame(&ping(id)).await);
        }
        let mut codec = frame_codec();
        let taken = outbox.take().await.unwrap();
        let mut buf = BytesMut::from(&taken[..]);
        let mut ids = Vec::new();
        while let Some(Incoming::Frame(f)) = next_incoming(&mut codec, &mut buf) {
            ids.push(f.id);
        }
        assert_eq!(ids, [1, 2, 3]);

        // Past the bound a producer waits until the writer takes the queue.
        let big = vec![0u8; OUTBOX_BYTES];
        assert!(
            outbox
                .push(|b| {
                    b.extend_from_slice(&big);
                    Ok(())
                })
                .await
        );
        let blocked = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.frame(&ping(9)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "a producer went past the bound");
        assert_eq!(outbox.take().await.unwrap().len(), OUTBOX_BYTES);
        assert!(blocked.await.unwrap());
        let next = outbox.take().await.unwrap();
        assert_eq!(next, wire::encode_frame(&ping(9)).unwrap());

        // Closing: what is queued is still taken, then nothing; producers are refused.
        assert!(outbox.frame(&ping(10)).await);
        outbox.close();
        assert!(!outbox.frame(&ping(11)).await);
        assert_eq!(
            outbox.take().await.unwrap(),
            wire::encode_frame(&ping(10)).unwrap()
        );
        assert!(outbox.take().await.is_none());
    }

    #[test]
    fn unacked_deliveries_are_keyed_by_seq_and_an_ack_takes_every_copy() {
        let mut u = Unacked::default();
        let (x, y) = (MessageId([1; 16]), MessageId([2; 16]));
        assert!(u.insert(5, x));
        assert!(u.insert(6, y));
        // The same id again under another number: a second delivery, a second slot.
        assert!(u.insert(9, x));
        // The same number again is not a new delivery.
        assert!(!u.insert(9, x));
        assert_eq!(u.len(), 3);
        assert_eq!(u.take(&x).unwrap().iter().collect::<Vec<_>>(), [5, 9]);
        assert!(u.take(&x).is_none(), "a repeated ack finds nothing");
        assert_eq!(u.len(), 1);
        assert_eq!(u.take(&y).unwrap().iter().collect::<Vec<_>>(), [6]);
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn a_delivery_batch_is_bounded_by_bytes_and_keeps_at_least_one() {
        use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};
        let mut rng = rand::rngs::OsRng;
        let header = RoutingHeader::new(
            sealpost_protocol::identity::DeviceId([1; 16]),
            sealpost_protocol::identity::DeviceId([2; 16]),
            EnvelopeKind::Chat,
            0,
            &mut rng,
        );
        let pending = |len: usize| crate::store::Pending {
            seq: 1,
            envelope: sealpost_protocol::Envelope {
                header: header.clone(),
                body: vec![0; len],
            },
        };
        let big = MAX_DELIVERY_BATCH_BYTES / 4;
        let batch: Vec<_> = (0..10).map(|_| pending(big)).collect();
        assert_eq!(within_bytes(&batch), 3);
        let small: Vec<_> = (0..256).map(|_| pending(100)).collect();
        assert_eq!(within_bytes(&small), 256);
        assert_eq!(within_bytes(&[pending(2 * MAX_DELIVERY_BATCH_BYTES)]), 1);
        assert_eq!(within_bytes(&[]), 0);
    }

    #[test]
    fn incoming_frames_split_and_packed_across_chunks() {
        let frames: Vec<Frame> = (1..=5).map(ping).collect();
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend_from_slice(&wire::encode_frame(f).unwrap());
        }
        // Every way of cutting the stream in two chunks yields the same frames.
        for cut in 0..=bytes.len() {
            let mut codec = frame_codec();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(part);
                while let Some(i) = next_incoming(&mut codec, &mut buf) {
                    match i {
                        Incoming::Frame(f) => got.push(f.id),
                        _ => panic!("bad frame at cut {cut}"),
                    }
                }
            }
            assert!(buf.is_empty());
            assert_eq!(got, [1, 2, 3, 4, 5], "cut at {cut}");
        }
        // A bad length (over the bound, or zero) is fatal, with the protocol's error, as
        // soon as its prefix is in; an undecodable frame of a valid length is not.
        for (prefix, want) in [
            (
                [0xff, 0xff, 0xff, 0xff],
                wire::frame_len([0xff, 0xff, 0xff, 0xff]).unwrap_err(),
            ),
            (
                (wire::MAX_FRAME_LEN as u32 + 1).to_be_bytes(),
                wire::frame_len((wire::MAX_FRAME_LEN as u32 + 1).to_be_bytes()).unwrap_err(),
            ),
            ([0, 0, 0, 0], wire::frame_len([0; 4]).unwrap_err()),
        ] {
            let mut buf = BytesMut::from(&prefix[..]);
            match next_incoming(&mut frame_codec(), &mut buf) {
                Some(Incoming::Fatal(e)) => assert_eq!(e.to_string(), want.to_string()),
                _ => panic!("{prefix:?} not fatal"),
            }
        }
        // The largest length is accepted (the frame is awaited, nothing is fatal yet).
        let mut buf = BytesMut::from(&(wire::MAX_FRAME_LEN as u32).to_be_bytes()[..]);
        assert!(next_incoming(&mut frame_codec(), &mut buf).is_none());
        let mut codec = frame_codec();
        let mut garbage = vec![0, 0, 0, 3, 0xff, 0xff, 0xff];
        garbage.extend_from_slice(&wire::encode_frame(&ping(7)).unwrap());
        let mut buf = BytesMut::from(&garbage[..]);
        assert!(matches!(
            next_incoming(&mut codec, &mut buf),
            Some(Incoming::Bad(_))
        ));
        assert!(matches!(
            next_incoming(&mut codec, &mut buf),
            Some(Incoming::Frame(f)) if f.id == 7
        ));
    }
}
