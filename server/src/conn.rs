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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use sealpost_protocol::envelope::MessageId;
use sealpost_protocol::wire::{
    self, BoundedString, ErrorCode, Frame, FrameBody, FRAME_PREFIX_LEN, TLS_EXPORTER_LABEL,
};
use sealpost_protocol::DecodeError;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, warn};

use crate::hub::{Push, Subscription};
use crate::metrics as m;
use crate::relay::{Authenticated, ConnCtx, Handled, Relay};
use crate::store::Store;

/// Encoded frames queued for the writer, at most.
const WRITE_QUEUE: usize = 1024;
/// `drain` requests waiting for an answer, at most (more are answered together).
const MAX_PENDING_DRAINS: usize = 16;
/// Decoded frames buffered between the reader task and the connection loop.
const READ_QUEUE: usize = 16;
/// `send`/`ack` store operations one connection may have waiting for their commit.
pub const MAX_IN_FLIGHT: usize = 128;
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

fn encode(frame: &Frame) -> Option<Vec<u8>> {
    match wire::encode_frame(frame) {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(error = %e, "could not encode a frame");
            None
        }
    }
}

/// What the frame reader hands to the connection loop.
enum Incoming {
    /// A decoded frame (boxed: frames are large next to the error variants).
    Frame(Box<Frame>),
    /// A frame that did not decode (the stream is still in sync).
    Bad(DecodeError),
    /// A length prefix over the bound (the stream cannot be resynchronised).
    Fatal(DecodeError),
}

/// Read frames from the control stream into a bounded channel. Runs as its own task so
/// that the connection loop never cancels a read half-way.
async fn read_frames(mut recv: quinn::RecvStream, tx: mpsc::Sender<Incoming>) {
    loop {
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        if recv.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let len = match wire::frame_len(prefix) {
            Ok(len) => len,
            Err(e) => {
                let _ = tx.send(Incoming::Fatal(e)).await;
                return;
            }
        };
        let mut payload = vec![0u8; len];
        if recv.read_exact(&mut payload).await.is_err() {
            return;
        }
        metrics::counter!(m::BYTES_RECEIVED).increment((len + FRAME_PREFIX_LEN) as u64);
        let item = match wire::decode_frame(&payload) {
            Ok(f) => Incoming::Frame(Box::new(f)),
            Err(e) => Incoming::Bad(e),
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
}

type InFlight<'a> = Pin<Box<dyn Future<Output = Handled> + Send + 'a>>;

/// Serve one accepted connection until it closes or `shutdown` fires.
///
/// `send` and `ack` frames are pipelined: each is checked in frame order, its store
/// operation is submitted in frame order (so a sender's envelopes keep their order), and
/// up to [`MAX_IN_FLIGHT`] of them wait for their commit at once; their replies are
/// written in frame order as the commits complete. Every other frame first waits for the
/// in-flight ones, so control frames see the effects of everything sent before them.
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
    let (send, recv) = match stream {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return,
        Err(_) => {
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

    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = tokio::spawn(write_loop(send, out_rx));
    let (in_tx, mut in_rx) = mpsc::channel::<Incoming>(READ_QUEUE);
    let reader = tokio::spawn(read_frames(recv, in_tx));
    let mut ctx = ConnCtx::new(remote, exporter);
    let mut bad_frames = 0u32;
    let auth_deadline = tokio::time::sleep(Duration::from_secs(limits.auth_timeout_secs));
    tokio::pin!(auth_deadline);
    let mut delivery: Option<Delivery> = None;
    let mut ended: Option<End> = None;
    let relay_ref: &Relay<S> = &relay;
    let mut in_flight: FuturesOrdered<InFlight<'_>> = FuturesOrdered::new();

    'conn: loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if !apply(done, &relay, &mut delivery, &auth_tx, &out_tx, &shutdown).await {
                    break;
                }
                continue;
            }
            _ = &mut auth_deadline, if ctx.authenticated().is_none() => {
                conn.close(close::TIMEOUT.into(), b"not authenticated in time");
                break;
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
            i = in_rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => match i {
                Some(i) => i,
                None => break,
            },
        };
        let frame = match incoming {
            Incoming::Frame(f) => *f,
            Incoming::Fatal(e) => {
                metrics::counter!(m::BAD_FRAMES).increment(1);
                if let Some(b) = encode(&Frame::new(
                    0,
                    FrameBody::error(code_for(&e), &e.to_string()),
                )) {
                    let _ = out_tx.send(b).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.close(close::PROTOCOL.into(), b"bad frame length");
                break;
            }
            Incoming::Bad(e) => {
                metrics::counter!(m::BAD_FRAMES).increment(1);
                bad_frames += 1;
                debug!(remote = %remote, error = %e, "undecodable frame");
                if let Some(b) = encode(&Frame::new(
                    0,
                    FrameBody::error(code_for(&e), &e.to_string()),
                )) {
                    if out_tx.send(b).await.is_err() {
                        break;
                    }
                }
                if bad_frames >= limits.max_bad_frames {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    conn.close(close::PROTOCOL.into(), b"too many bad frames");
                    break;
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
                    Ok(prepared) => in_flight.push_back(Box::pin(relay_ref.commit_send(prepared))),
                    Err(refused) => {
                        if !apply(refused, &relay, &mut delivery, &auth_tx, &out_tx, &shutdown)
                            .await
                        {
                            break;
                        }
                    }
                }
            }
            (FrameBody::Ack { message_id }, Some(me)) => {
                // Only what this connection delivered can be acknowledged on it (the
                // store deletes by the number it was delivered under). Anything else
                // is still pending and is delivered again, and acknowledged then.
                if let Some(seq) = delivery.as_ref().and_then(|d| d.seq_of(&message_id)) {
                    in_flight.push_back(Box::pin(
                        relay_ref.commit_ack(me.device, frame.id, message_id, seq),
                    ));
                }
            }
            (body, _) => {
                // Control frames wait for everything before them.
                while let Some(done) = in_flight.next().await {
                    if !apply(done, &relay, &mut delivery, &auth_tx, &out_tx, &shutdown).await {
                        break 'conn;
                    }
                }
                let handled = relay.handle(&mut ctx, Frame { body, ..frame }).await;
                if !apply(handled, &relay, &mut delivery, &auth_tx, &out_tx, &shutdown).await {
                    break;
                }
            }
        }
    }

    // Let committed work answer (bounded by the connection's lifetime anyway).
    while let Ok(Some(done)) = tokio::time::timeout(Duration::from_secs(2), in_flight.next()).await
    {
        if !apply(done, &relay, &mut delivery, &auth_tx, &out_tx, &shutdown).await {
            break;
        }
    }
    drop(in_flight);
    reader.abort();
    if let Some(d) = delivery.take() {
        d.stop(&relay).await;
    }
    extra.abort();
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if ended == Some(End::Replaced) {
        conn.close(close::REPLACED.into(), b"replaced by a newer connection");
    } else if ended == Some(End::Revoked) {
        conn.close(
            close::REVOKED.into(),
            b"device revoked by its account's device log",
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
    out_tx: &mpsc::Sender<Vec<u8>>,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    if let Some(me) = handled.authenticated {
        auth_tx.send_replace(Some(me.clone()));
        *delivery = Some(Delivery::start(
            relay.clone(),
            me,
            out_tx.clone(),
            shutdown.clone(),
        ));
    }
    if let (Some(id), Some(d)) = (handled.acked, delivery.as_ref()) {
        d.acked(&id);
    }
    if let (Some(id), Some(d)) = (handled.drain, delivery.as_ref()) {
        // Bounded: a flood of drains beyond the queue is simply not answered twice.
        let _ = d.drain_tx.try_send(id);
    }
    if let Some(reply) = handled.reply {
        if let Some(b) = encode(&reply) {
            if out_tx.send(b).await.is_err() {
                return false;
            }
        }
    }
    true
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        // Coalesce whatever else is queued into one write.
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if send.write_all(&batch).await.is_err() {
            return;
        }
        metrics::counter!(m::BYTES_SENT).increment(batch.len() as u64);
    }
    let _ = send.finish();
}

/// The delivery pump of an authenticated connection.
struct Delivery {
    me: Authenticated,
    conn: u64,
    inflight: Arc<Mutex<HashMap<MessageId, u64>>>,
    window: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
    end_rx: tokio::sync::oneshot::Receiver<End>,
    drain_tx: mpsc::Sender<u64>,
}

impl Delivery {
    fn start<S: Store>(
        relay: Arc<Relay<S>>,
        me: Authenticated,
        out: mpsc::Sender<Vec<u8>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let sub = relay.hub.register(me.device);
        let conn = sub.conn;
        metrics::gauge!(m::DEVICES_AUTHENTICATED).set(relay.hub.online() as f64);
        let window = Arc::new(Semaphore::new(relay.config.limits.delivery_window));
        let inflight = Arc::new(Mutex::new(HashMap::new()));
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
        }
    }

    /// The sequence number `id` was delivered under on this connection, if it was.
    fn seq_of(&self, id: &MessageId) -> Option<u64> {
        match self.inflight.lock() {
            Ok(m) => m.get(id).copied(),
            Err(p) => p.into_inner().get(id).copied(),
        }
    }

    fn acked(&self, id: &MessageId) {
        let removed = match self.inflight.lock() {
            Ok(mut m) => m.remove(id).is_some(),
            Err(p) => p.into_inner().remove(id).is_some(),
        };
        if removed {
            self.window.add_permits(1);
        }
    }

    async fn stop<S: Store>(self, relay: &Relay<S>) {
        relay.hub.unregister(&self.me.device, self.conn);
        metrics::gauge!(m::DEVICES_AUTHENTICATED).set(relay.hub.online() as f64);
        self.task.abort();
        let _ = self.task.await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump<S: Store>(
    relay: Arc<Relay<S>>,
    me: Authenticated,
    sub: Subscription,
    out: mpsc::Sender<Vec<u8>>,
    window: Arc<Semaphore>,
    inflight: Arc<Mutex<HashMap<MessageId, u64>>>,
    mut shutdown: watch::Receiver<bool>,
    end_tx: tokio::sync::oneshot::Sender<End>,
    mut drain_rx: mpsc::Receiver<u64>,
) {
    let Subscription {
        mut rx,
        lagged,
        revoked,
        ..
    } = sub;
    let mut last_seq = 0u64;
    let mut drains: Vec<u64> = Vec::new();
    // Start by catching up with everything pending (redelivery of unacknowledged ones).
    let mut catching_up = true;
    let deliver = |seq: u64, env: &sealpost_protocol::Envelope| -> Option<Vec<u8>> {
        if let Ok(mut m) = inflight.lock() {
            m.insert(env.header.message_id, seq);
        }
        metrics::counter!(m::ENVELOPES_DELIVERED).increment(1);
        encode(&Frame::new(
            0,
            FrameBody::Deliver {
                envelope: env.clone(),
            },
        ))
    };
    loop {
        if lagged.swap(false, Ordering::AcqRel) {
            catching_up = true;
        }
        if catching_up {
            // Wait for room in the window, then read the next batch from the store.
            let permit = tokio::select! {
                p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.changed() => return,
                _ = revoked.notified() => {
                    let _ = end_tx.send(End::Revoked);
                    return;
                }
            };
            let room = window.available_permits() + 1;
            let batch = match relay
                .store
                .pending(&me.device, last_seq, room.min(256))
                .await
            {
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
                    if let Some(b) = encode(&Frame::new(id, FrameBody::MailboxEmpty)) {
                        if out.send(b).await.is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            let n = batch.len();
            permit.forget();
            for (i, p) in batch.into_iter().enumerate() {
                if i > 0 {
                    match window.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    }
                }
                last_seq = p.seq;
                if let Some(b) = deliver(p.seq, &p.envelope) {
                    if out.send(b).await.is_err() {
                        return;
                    }
                }
            }
            if n < room.min(256) {
                // Drained the store (as far as this read saw).
                catching_up = false;
                for id in drains.drain(..) {
                    if let Some(b) = encode(&Frame::new(id, FrameBody::MailboxEmpty)) {
                        if out.send(b).await.is_err() {
                            return;
                        }
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
            _ = revoked.notified() => {
                let _ = end_tx.send(End::Revoked);
                return;
            }
        };
        match push {
            Push::Envelope { seq, envelope } => {
                if seq <= last_seq {
                    continue;
                }
                if seq == last_seq + 1 {
                    if let Ok(p) = window.try_acquire() {
                        p.forget();
                        last_seq = seq;
                        if let Some(b) = deliver(seq, &envelope) {
                            if out.send(b).await.is_err() {
                                return;
                            }
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
                if let Some(b) = encode(&frame) {
                    if out.send(b).await.is_err() {
                        return;
                    }
                }
            }
            Push::Replaced => {
                let _ = end_tx.send(End::Replaced);
                return;
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
                if let Some(b) = encode(&frame) {
                    if out.send(b).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
