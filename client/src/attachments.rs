//! Attachments over the relay: encrypt and upload a file as an opaque blob, download and
//! verify it. Each transfer runs on its own bidirectional QUIC stream of an authenticated
//! [`RelayConnection`], next to the control stream; the relay only ever sees ciphertext.
//!
//! The cryptography is [`sealpost_protocol::attachment`] (STREAM over ChaCha20-Poly1305,
//! a fresh key per attachment). Both directions stream in 64 KiB pieces: a file is never
//! held in memory as a whole. The [`AttachmentDescriptor`] returned by an upload is what
//! the sender puts inside an end-to-end encrypted message; the recipient passes it to
//! [`download_to_file`], which writes to a temporary file and renames it into place only
//! after the last chunk, the size and the SHA-256 have been verified, so a tampered or
//! truncated download leaves nothing behind.
//!
//! Stream exchange: see "Attachments" in `docs/PROTOCOL.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{CryptoRng, RngCore};
use sealpost_protocol::attachment::{self, AttachmentDescriptor, Decryptor, Encryptor, CHUNK_LEN};
use sealpost_protocol::wire::{self, ErrorCode, Frame, FrameBody, FRAME_PREFIX_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::net::RelayConnection;

/// How long a transfer may go without progress before it is abandoned.
pub const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the relay's verdict after the last byte of an upload (it fsyncs).
pub const UPLOAD_COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Application error code with which this side resets an abandoned transfer stream.
pub const STREAM_ABANDONED: u32 = 1;

/// An attachment transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// The attachment is too large, or its ciphertext failed verification (tampered,
    /// reordered, truncated, extended, wrong size or hash).
    #[error(transparent)]
    Integrity(#[from] attachment::AttachmentError),
    /// The relay refused the transfer.
    #[error("relay refused ({}): {message}", crate::display::name(.code))]
    Refused {
        /// Why.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The stream or connection failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The relay broke the stream protocol.
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    /// No progress within [`TRANSFER_IDLE_TIMEOUT`].
    #[error("attachment transfer stalled")]
    Timeout,
    /// Reading the source or writing the destination failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn conn_err(e: impl std::fmt::Display) -> AttachmentError {
    AttachmentError::Connection(e.to_string())
}

async fn write_frame(
    send: &mut quinn::SendStream,
    id: u64,
    body: FrameBody,
) -> Result<(), AttachmentError> {
    let bytes = wire::encode_frame(&Frame::new(id, body))
        .map_err(|e| AttachmentError::Protocol(e.to_string()))?;
    match tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, send.write_all(&bytes)).await {
        Ok(r) => r.map_err(conn_err),
        Err(_) => Err(AttachmentError::Timeout),
    }
}

/// The next frame, `None` when the relay finished the stream between frames.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    wait: Duration,
) -> Result<Option<Frame>, AttachmentError> {
    let mut prefix = [0u8; FRAME_PREFIX_LEN];
    match tokio::time::timeout(wait, recv.read_exact(&mut prefix)).await {
        Err(_) => return Err(AttachmentError::Timeout),
        Ok(Err(quinn::ReadExactError::FinishedEarly(0))) => return Ok(None),
        Ok(Err(e)) => return Err(conn_err(e)),
        Ok(Ok(())) => {}
    }
    let len = wire::frame_len(prefix).map_err(|e| AttachmentError::Protocol(e.to_string()))?;
    let mut payload = vec![0u8; len];
    match tokio::time::timeout(wait, recv.read_exact(&mut payload)).await {
        Err(_) => return Err(AttachmentError::Timeout),
        Ok(Err(e)) => return Err(conn_err(e)),
        Ok(Ok(())) => {}
    }
    wire::decode_frame(&payload)
        .map(Some)
        .map_err(|e| AttachmentError::Protocol(e.to_string()))
}

fn refused(body: FrameBody) -> AttachmentError {
    match body {
        FrameBody::Error { code, message, .. } => AttachmentError::Refused {
            code,
            message: message.as_str().to_owned(),
        },
        other => AttachmentError::Protocol(format!("{other:?}")),
    }
}

/// Encrypt `size` bytes read from `plaintext` under a fresh key and upload them as a new
/// blob. `progress(done, total)` is called with plaintext bytes sent so far. Returns the
/// descriptor to send (end-to-end encrypted) to the recipients; it holds the key.
pub async fn upload<R, G, P>(
    conn: &RelayConnection,
    mut plaintext: R,
    size: u64,
    file_name: &str,
    media_type: &str,
    rng: &mut G,
    mut progress: P,
) -> Result<AttachmentDescriptor, AttachmentError>
where
    R: AsyncRead + Unpin,
    G: RngCore + CryptoRng,
    P: FnMut(u64, u64),
{
    let mut enc = Encryptor::new(rng, size)?;
    let blob_id = enc.blob_id();
    let (mut send, mut recv) = conn.quic().open_bi().await.map_err(conn_err)?;
    let sent: Result<AttachmentDescriptor, AttachmentError> = async {
        write_frame(
            &mut send,
            1,
            FrameBody::BlobUpload {
                blob_id,
                size: enc.ciphertext_size(),
            },
        )
        .await?;
        let mut buf = Zeroizing::new(vec![0u8; CHUNK_LEN]);
        let mut done = 0u64;
        progress(0, size);
        while done < size {
            let want = (size - done).min(CHUNK_LEN as u64) as usize;
            let n =
                match tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, plaintext.read(&mut buf[..want]))
                    .await
                {
                    Ok(r) => r?,
                    Err(_) => return Err(AttachmentError::Timeout),
                };
            if n == 0 {
                return Err(attachment::AttachmentError::SizeMismatch {
                    expected: size,
                    got: done,
                }
                .into());
            }
            for data in enc.push(&buf[..n])? {
                write_frame(&mut send, 0, FrameBody::BlobChunk { data }).await?;
            }
            done += n as u64;
            progress(done, size);
        }
        let (rest, descriptor) = enc.finish(file_name, media_type)?;
        for data in rest {
            write_frame(&mut send, 0, FrameBody::BlobChunk { data }).await?;
        }
        send.finish().map_err(conn_err)?;
        Ok(descriptor)
    }
    .await;
    let descriptor = match sent {
        Ok(d) => d,
        Err(e) => {
            let _ = send.reset(STREAM_ABANDONED.into());
            // If the relay refused (it stops reading and says why), report its reason.
            if matches!(e, AttachmentError::Connection(_)) {
                if let Ok(Some(frame)) = read_frame(&mut recv, Duration::from_secs(5)).await {
                    return Err(refused(frame.body));
                }
            }
            return Err(e);
        }
    };
    match read_frame(&mut recv, UPLOAD_COMMIT_TIMEOUT).await? {
        Some(Frame {
            body: FrameBody::BlobStored { blob_id: stored },
            ..
        }) if stored == blob_id => Ok(descriptor),
        Some(frame) => Err(refused(frame.body)),
        None => Err(AttachmentError::Protocol(
            "the relay ended the stream without an answer".into(),
        )),
    }
}

/// Encrypt and upload the file at `path` (its file name goes into the descriptor).
pub async fn upload_file<G, P>(
    conn: &RelayConnection,
    path: &Path,
    media_type: &str,
    rng: &mut G,
    progress: P,
) -> Result<AttachmentDescriptor, AttachmentError>
where
    G: RngCore + CryptoRng,
    P: FnMut(u64, u64),
{
    let file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    upload(conn, file, size, &name, media_type, rng, progress).await
}

/// Download the blob `descriptor` names, verify it, and write the plaintext to `sink`
/// chunk by chunk as each is authenticated. `progress(done, total)` counts plaintext
/// bytes. On error `sink` may hold a verified prefix of the file: use
/// [`download_to_file`] to get all or nothing.
pub async fn download<W, P>(
    conn: &RelayConnection,
    descriptor: &AttachmentDescriptor,
    sink: &mut W,
    mut progress: P,
) -> Result<(), AttachmentError>
where
    W: AsyncWrite + Unpin,
    P: FnMut(u64, u64),
{
    let mut dec = Decryptor::new(descriptor)?;
    let (mut send, mut recv) = conn.quic().open_bi().await.map_err(conn_err)?;
    let result = async {
        write_frame(
            &mut send,
            1,
            FrameBody::BlobDownload {
                blob_id: descriptor.blob_id,
            },
        )
        .await?;
        send.finish().map_err(conn_err)?;
        let size = match read_frame(&mut recv, TRANSFER_IDLE_TIMEOUT).await? {
            Some(Frame {
                body: FrameBody::BlobHeader { size },
                ..
            }) => size,
            Some(frame) => return Err(refused(frame.body)),
            None => {
                return Err(AttachmentError::Protocol(
                    "the relay ended the stream without an answer".into(),
                ))
            }
        };
        if size != descriptor.ciphertext_size {
            return Err(attachment::AttachmentError::SizeMismatch {
                expected: descriptor.ciphertext_size,
                got: size,
            }
            .into());
        }
        let mut done = 0u64;
        progress(0, descriptor.size);
        while dec.received() < size {
            let data = match read_frame(&mut recv, TRANSFER_IDLE_TIMEOUT).await? {
                Some(Frame {
                    body: FrameBody::BlobChunk { data },
                    ..
                }) => data,
                Some(frame) => return Err(refused(frame.body)),
                None => {
                    return Err(attachment::AttachmentError::Truncated {
                        got: dec.received(),
                        expected: size,
                    }
                    .into())
                }
            };
            let plain = dec.push(&data)?;
            if !plain.is_empty() {
                sink.write_all(&plain).await?;
                done += plain.len() as u64;
                progress(done, descriptor.size);
            }
        }
        if read_frame(&mut recv, TRANSFER_IDLE_TIMEOUT)
            .await?
            .is_some()
        {
            return Err(attachment::AttachmentError::Extended { expected: size }.into());
        }
        dec.finish()?;
        sink.flush().await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = recv.stop(STREAM_ABANDONED.into());
    }
    result
}

/// Download, verify and store the attachment at `path`. The plaintext goes to a temporary
/// file beside `path` that is fsynced and renamed to `path` only after every check passed;
/// on any error the temporary file is removed and `path` is left untouched.
pub async fn download_to_file<P>(
    conn: &RelayConnection,
    descriptor: &AttachmentDescriptor,
    path: &Path,
    progress: P,
) -> Result<(), AttachmentError>
where
    P: FnMut(u64, u64),
{
    let tmp = temp_path(path)?;
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await?;
        download(conn, descriptor, &mut file, progress).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, path).await?;
        sync_parent(path).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

fn temp_path(path: &Path) -> Result<PathBuf, AttachmentError> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut suffix = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut suffix);
    Ok(path.with_file_name(format!(
        ".{}.{}.partial",
        name.to_string_lossy(),
        hex::encode(suffix)
    )))
}

async fn sync_parent(path: &Path) -> Result<(), AttachmentError> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        tokio::fs::File::open(dir).await?.sync_all().await?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
