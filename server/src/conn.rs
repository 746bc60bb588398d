//! The per-connection shell: reads frames from the control stream, hands them to
//! [`Relay::handle`], writes replies, and runs the delivery pump once the device is
//! authenticated. Everything here is I/O plumbing; decisions live in `relay.rs`.
//!
//! A device opens one bidirectional control stream. Frames are `u32 BE length || CBOR`.
//! A length over the bound closes the connection (the stream cannot be resynchronised);
//! a frame that fails to decode gets an `error` frame and the connection continues, up
//! to `max_bad_frames`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealpost_protocol::envelope::MessageId;
use sealpost_protocol::wire::{
    self, ErrorCode, Frame, FrameBody, FRAME_PREFIX_LEN, TLS_EXPORTER_LABEL,
};
use sealpost_protocol::DecodeError;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, warn};

use crate::hub::Push;
use crate::metrics as m;
use crate::relay::{Authenticated, ConnCtx, Relay};
use crate::store::Store;

/// Encoded frames queued for the writer, at most.
const WRITE_QUEUE: usize = 1024;
/// `drain` requests waiting for an answer, at most (more are answered together).
const MAX_PENDING_DRAINS: usize = 16;
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

/// Serve one accepted connection until it closes or `shutdown` fires.
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
    let mut ctx = ConnCtx::new(remote, exporter);
    let mut bad_frames = 0u32;
    let auth_deadline = tokio::time::sleep(Duration::from_secs(limits.auth_timeout_secs));
    tokio::pin!(auth_deadline);
    let mut delivery: Option<Delivery> = None;
    let mut replaced = false;

    loop {
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = &mut auth_deadline, if ctx.authenticated().is_none() => {
                conn.close(close::TIMEOUT.into(), b"not authenticated in time");
                break;
            }
            r = recv.read_exact(&mut prefix) => {
                if r.is_err() { break; }
            }
            was_replaced = async {
                match &mut delivery {
                    Some(d) => (&mut d.replaced_rx).await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                // The pump ended: replaced by a newer connection, or the connection is gone.
                replaced = was_replaced;
                break;
            }
        }
        let len = match wire::frame_len(prefix) {
            Ok(len) => len,
            Err(e) => {
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
        };
        let mut payload = vec![0u8; len];
        if recv.read_exact(&mut payload).await.is_err() {
            break;
        }
        metrics::counter!(m::BYTES_RECEIVED).increment((len + FRAME_PREFIX_LEN) as u64);
        let frame = match wire::decode_frame(&payload) {
            Ok(f) => f,
            Err(e) => {
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
        let handled = relay.handle(&mut ctx, frame).await;
        if let Some(me) = handled.authenticated {
            auth_tx.send_replace(Some(me.clone()));
            delivery = Some(Delivery::start(
                relay.clone(),
                me,
                out_tx.clone(),
                shutdown.clone(),
            ));
        }
        if let (Some(id), Some(d)) = (handled.acked, &delivery) {
            d.acked(&id);
        }
        if let (Some(id), Some(d)) = (handled.drain, &delivery) {
            // Bounded: a flood of drains beyond the queue is simply not answered twice.
            let _ = d.drain_tx.try_send(id);
        }
        if let Some(reply) = handled.reply {
            if let Some(b) = encode(&reply) {
                if out_tx.send(b).await.is_err() {
                    break;
                }
            }
        }
    }

    if let Some(d) = delivery.take() {
        d.stop(&relay).await;
    }
    extra.abort();
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if replaced {
        conn.close(close::REPLACED.into(), b"replaced by a newer connection");
    } else if *shutdown.borrow() {
        conn.close(close::SHUTDOWN.into(), b"relay shutting down");
    }
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
    replaced_rx: tokio::sync::oneshot::Receiver<()>,
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
        metrics::gauge!(m::DEVICES_AUTHENTICATED).set(relay.hub.online() as f64);
        let window = Arc::new(Semaphore::new(relay.config.limits.delivery_window));
        let inflight = Arc::new(Mutex::new(HashMap::new()));
        let (replaced_tx, replaced_rx) = tokio::sync::oneshot::channel();
        let (drain_tx, drain_rx) = mpsc::channel(MAX_PENDING_DRAINS);
        let task = tokio::spawn(pump(
            relay,
            me.clone(),
            sub.rx,
            sub.lagged,
            out,
            window.clone(),
            inflight.clone(),
            shutdown,
            replaced_tx,
            drain_rx,
        ));
        Self {
            me,
            conn: sub.conn,
            inflight,
            window,
            task,
            replaced_rx,
            drain_tx,
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
    mut rx: mpsc::Receiver<Push>,
    lagged: Arc<std::sync::atomic::AtomicBool>,
    out: mpsc::Sender<Vec<u8>>,
    window: Arc<Semaphore>,
    inflight: Arc<Mutex<HashMap<MessageId, u64>>>,
    mut shutdown: watch::Receiver<bool>,
    replaced_tx: tokio::sync::oneshot::Sender<()>,
    mut drain_rx: mpsc::Receiver<u64>,
) {
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
                let _ = replaced_tx.send(());
                return;
            }
        }
    }
}
