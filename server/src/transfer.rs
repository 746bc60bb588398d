//! Attachment transfer streams: every bidirectional stream after the control stream
//! carries exactly one upload or download of an attachment blob (opaque ciphertext).
//!
//! Same framing as the control stream (`u32 BE length || CBOR Frame`). The first frame
//! decides:
//! * `blob_upload {blob_id, size}` → `blob_chunk` frames carrying exactly `size` bytes,
//!   then the device finishes its direction; the relay stores the blob durably and answers
//!   `blob_stored {blob_id}`, then finishes.
//! * `blob_download {blob_id}` → `blob_header {size}`, `blob_chunk` frames, finish; or
//!   `error not_found`.
//!
//! Anything else, a stream on an unauthenticated connection, a bound exceeded or a
//! transfer idle for longer than `limits.blob_idle_timeout_secs` gets an `error` frame
//! (echoing the first frame's id, else 0), after which the relay finishes its direction
//! and stops reading (STOP_SENDING with [`STREAM_REFUSED`]); a partial upload is
//! discarded. See "Attachments" in `docs/PROTOCOL.md`.

use std::sync::Arc;
use std::time::Duration;

use sealpost_protocol::wire::{
    self, ErrorCode, Frame, FrameBody, FRAME_PREFIX_LEN, MAX_BLOB_CHUNK_LEN, MAX_BLOB_LEN,
};
use sealpost_protocol::DecodeError;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::metrics as m;
use crate::relay::{self, Authenticated, Relay};
use crate::store::blob::{BlobError, BlobStore, BlobWriter};
use crate::store::Store;

/// Application error code with which the relay stops or resets a refused transfer stream.
pub const STREAM_REFUSED: u32 = 1;

/// Why a transfer stream ended early.
enum Fail {
    /// Tell the peer why, then close the stream.
    Refuse(ErrorCode, String),
    /// The peer reset the stream or the connection is gone: nothing to say.
    Gone,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Fail {
    Fail::Refuse(code, message.into())
}

fn blob_failure(e: BlobError) -> Fail {
    match e {
        BlobError::TooLarge { size, max } => refuse(
            ErrorCode::TooLarge,
            format!("blob of {size} bytes exceeds the maximum of {max}"),
        ),
        BlobError::Conflict => refuse(ErrorCode::Conflict, "blob already exists"),
        BlobError::QuotaExceeded { .. } => refuse(
            ErrorCode::QuotaExceeded,
            "the relay's attachment storage is full",
        ),
        BlobError::Incomplete { written, size } => refuse(
            ErrorCode::BadFrame,
            format!("blob incomplete: {written} of {size} bytes"),
        ),
        BlobError::Io(e) => {
            warn!(error = %e, "blob storage failure");
            refuse(ErrorCode::Internal, "storage failure; retry later")
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        warn!(error = %e, "blob storage task failed");
        refuse(ErrorCode::Internal, "storage failure; retry later")
    })
}

/// Accept further bidirectional streams of a connection and serve each as one transfer,
/// at most `limits.blob_transfers_per_connection` at a time. `auth` holds the connection's
/// authenticated device once the control stream has authenticated. Runs until the
/// connection closes; aborting it aborts the transfers in progress.
pub async fn serve_streams<S: Store>(
    relay: Arc<Relay<S>>,
    conn: quinn::Connection,
    auth: watch::Receiver<Option<Authenticated>>,
) {
    let limits = &relay.config.limits;
    let slots = Arc::new(Semaphore::new(limits.blob_transfers_per_connection));
    let idle = Duration::from_secs(limits.blob_idle_timeout_secs);
    let mut tasks = JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        while tasks.try_join_next().is_some() {}
        let mut stream = Transfer { send, recv, idle };
        let Some(me) = auth.borrow().clone() else {
            tasks.spawn(async move {
                stream
                    .close(
                        0,
                        refuse(
                            ErrorCode::Unauthenticated,
                            "authenticate on the control stream first",
                        ),
                    )
                    .await;
            });
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tasks.spawn(async move {
                stream
                    .close(
                        0,
                        refuse(
                            ErrorCode::RateLimited,
                            "too many transfers on this connection",
                        ),
                    )
                    .await;
            });
            continue;
        };
        let relay = relay.clone();
        tasks.spawn(async move {
            let _slot = slot;
            stream.serve(&relay, &me).await;
        });
    }
}

struct Transfer {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    idle: Duration,
}

impl Transfer {
    async fn serve<S: Store>(&mut self, relay: &Relay<S>, _me: &Authenticated) {
        let first = match self.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return self
                    .close(0, refuse(ErrorCode::BadFrame, "empty transfer stream"))
                    .await
            }
            Err(e) => return self.close(0, e).await,
        };
        let id = first.id;
        let result = match first.body {
            FrameBody::BlobUpload { blob_id, size } => self.upload(relay, blob_id, size).await,
            FrameBody::BlobDownload { blob_id } => self.download(relay, blob_id, id).await,
            _ => Err(refuse(
                ErrorCode::UnexpectedFrame,
                "a transfer stream starts with blob_upload or blob_download",
            )),
        };
        match result {
            Ok(Some(reply)) => {
                if self.write(id, reply).await.is_ok() {
                    let _ = self.send.finish();
                }
            }
            Ok(None) => {}
            Err(e) => {
                debug!("attachment transfer refused");
                self.close(id, e).await;
            }
        }
    }

    /// Receive a blob; the answer to send on success.
    async fn upload<S: Store>(
        &mut self,
        relay: &Relay<S>,
        blob_id: [u8; 16],
        size: u64,
    ) -> Result<Option<FrameBody>, Fail> {
        if size > MAX_BLOB_LEN {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("blob of {size} bytes exceeds the maximum of {MAX_BLOB_LEN}"),
            ));
        }
        let blobs = relay.blobs.clone();
        let mut writer: Box<dyn BlobWriter> = blocking(move || blobs.begin(blob_id, size))
            .await?
            .map_err(blob_failure)?;
        let mut received = 0u64;
        while received < size {
            let frame = self.read_frame().await?.ok_or_else(|| {
                refuse(
                    ErrorCode::BadFrame,
                    format!("stream ended after {received} of {size} bytes"),
                )
            })?;
            let data = match frame.body {
                FrameBody::BlobChunk { data } => data,
                _ => {
                    return Err(refuse(
                        ErrorCode::UnexpectedFrame,
                        "only blob_chunk frames may follow blob_upload",
                    ))
                }
            };
            if data.is_empty() {
                return Err(refuse(ErrorCode::BadFrame, "empty blob_chunk"));
            }
            if data.len() > MAX_BLOB_CHUNK_LEN {
                return Err(refuse(
                    ErrorCode::TooLarge,
                    format!("blob_chunk larger than {MAX_BLOB_CHUNK_LEN} bytes"),
                ));
            }
            let len = data.len() as u64;
            if received + len > size {
                return Err(refuse(
                    ErrorCode::TooLarge,
                    format!("more than the announced {size} bytes"),
                ));
            }
            let (w, r) = blocking(move || {
                let r = writer.write(&data);
                (writer, r)
            })
            .await?;
            writer = w;
            r.map_err(blob_failure)?;
            received += len;
            metrics::counter!(m::BLOB_BYTES_RECEIVED).increment(len);
        }
        // The device finishes its direction right after the last byte.
        if self.read_frame().await?.is_some() {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("data after the announced {size} bytes"),
            ));
        }
        blocking(move || writer.commit())
            .await?
            .map_err(blob_failure)?;
        metrics::counter!(m::BLOBS_STORED).increment(1);
        Ok(Some(FrameBody::BlobStored { blob_id }))
    }

    /// Send a blob: header, chunks, finish.
    async fn download<S: Store>(
        &mut self,
        relay: &Relay<S>,
        blob_id: [u8; 16],
        id: u64,
    ) -> Result<Option<FrameBody>, Fail> {
        let blobs = relay.blobs.clone();
        let (size, mut reader) = blocking(move || blobs.open(&blob_id))
            .await?
            .map_err(blob_failure)?
            .ok_or_else(|| refuse(ErrorCode::NotFound, "blob not found"))?;
        // The device has nothing more to say on this stream.
        let _ = self.recv.stop(0u32.into());
        self.write(id, FrameBody::BlobHeader { size }).await?;
        let mut sent = 0u64;
        loop {
            let (r, res) = blocking(move || {
                let mut buf = vec![0u8; MAX_BLOB_CHUNK_LEN];
                let res = reader.read(&mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                (reader, res)
            })
            .await?;
            reader = r;
            let data = match res {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "reading a blob failed");
                    return Err(self.reset());
                }
            };
            if data.is_empty() {
                break;
            }
            let len = data.len() as u64;
            sent += len;
            if sent > size {
                break;
            }
            self.write(0, FrameBody::BlobChunk { data }).await?;
            metrics::counter!(m::BLOB_BYTES_SENT).increment(len);
        }
        if sent != size {
            warn!(sent, size, "blob changed size while being sent");
            return Err(self.reset());
        }
        let _ = self.send.finish();
        Ok(None)
    }

    fn reset(&mut self) -> Fail {
        let _ = self.send.reset(STREAM_REFUSED.into());
        Fail::Gone
    }

    /// The next frame, `None` at a clean end of the stream (between frames).
    async fn read_frame(&mut self) -> Result<Option<Frame>, Fail> {
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        match tokio::time::timeout(self.idle, self.recv.read_exact(&mut prefix)).await {
            Err(_) => return Err(idle_timeout()),
            Ok(Err(quinn::ReadExactError::FinishedEarly(0))) => return Ok(None),
            Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
                return Err(refuse(ErrorCode::BadFrame, "truncated frame"))
            }
            Ok(Err(quinn::ReadExactError::ReadError(_))) => return Err(Fail::Gone),
            Ok(Ok(())) => {}
        }
        let len = wire::frame_len(prefix).map_err(|e| decode_failure(&e))?;
        let mut payload = vec![0u8; len];
        match tokio::time::timeout(self.idle, self.recv.read_exact(&mut payload)).await {
            Err(_) => return Err(idle_timeout()),
            Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
                return Err(refuse(ErrorCode::BadFrame, "truncated frame"))
            }
            Ok(Err(quinn::ReadExactError::ReadError(_))) => return Err(Fail::Gone),
            Ok(Ok(())) => {}
        }
        metrics::counter!(m::BYTES_RECEIVED).increment((len + FRAME_PREFIX_LEN) as u64);
        wire::decode_frame(&payload)
            .map(Some)
            .map_err(|e| decode_failure(&e))
    }

    async fn write(&mut self, id: u64, body: FrameBody) -> Result<(), Fail> {
        let bytes = wire::encode_frame(&Frame::new(id, body)).map_err(|e| {
            warn!(error = %e, "could not encode a frame");
            refuse(ErrorCode::Internal, "encoding failed")
        })?;
        match tokio::time::timeout(self.idle, self.send.write_all(&bytes)).await {
            Ok(Ok(())) => {
                metrics::counter!(m::BYTES_SENT).increment(bytes.len() as u64);
                Ok(())
            }
            Ok(Err(_)) => Err(Fail::Gone),
            Err(_) => {
                metrics::counter!(m::BLOB_TRANSFERS_REFUSED, "reason" => "idle").increment(1);
                Err(self.reset())
            }
        }
    }

    /// End a failed transfer: send the error (if the peer is still there), finish our
    /// direction and stop reading theirs.
    async fn close(&mut self, id: u64, fail: Fail) {
        let _ = self.recv.stop(STREAM_REFUSED.into());
        match fail {
            Fail::Refuse(code, message) => {
                metrics::counter!(m::BLOB_TRANSFERS_REFUSED, "reason" => reason(code)).increment(1);
                if self
                    .write(id, FrameBody::error(code, &message))
                    .await
                    .is_ok()
                {
                    let _ = self.send.finish();
                }
            }
            Fail::Gone => {
                let _ = self.send.reset(STREAM_REFUSED.into());
            }
        }
    }
}

fn idle_timeout() -> Fail {
    refuse(ErrorCode::UnexpectedFrame, "transfer idle for too long")
}

fn decode_failure(e: &DecodeError) -> Fail {
    let code = match e {
        DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::BadFrame,
    };
    refuse(code, e.to_string())
}

fn reason(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unauthenticated => "unauthenticated",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::QuotaExceeded => "quota_exceeded",
        ErrorCode::Conflict => "conflict",
        ErrorCode::NotFound => "not_found",
        ErrorCode::RateLimited => "concurrency",
        ErrorCode::Internal => "internal",
        _ => "protocol",
    }
}

/// Delete expired blobs (called from the relay's periodic sweep).
pub async fn expire_blobs(blobs: Arc<dyn BlobStore>) {
    match tokio::task::spawn_blocking(move || blobs.expire(relay::unix_ms())).await {
        Ok(Ok(n)) if n > 0 => {
            metrics::counter!(m::BLOBS_EXPIRED).increment(n);
            info!(expired = n, "expired attachment blobs");
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "blob expiry sweep failed"),
        Err(e) => warn!(error = %e, "blob expiry task failed"),
    }
}
