//! Attachments over real QUIC on loopback: encrypted upload on its own stream, the
//! descriptor carried inside an end-to-end encrypted message, verified download; what the
//! relay stores (ciphertext only) and what it refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealpost_client::attachments::{self, AttachmentError};
use sealpost_client::net::RelayConnection;
use sealpost_protocol::accept;
use sealpost_protocol::attachment::{
    self as att, AttachmentDescriptor, Encryptor, MAX_ATTACHMENT_LEN, SEALED_CHUNK_LEN,
};
use sealpost_protocol::crypto::sha256;
use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};
use sealpost_protocol::wire::{self, ErrorCode, Frame, FrameBody, Role, MAX_BLOB_LEN};
use sealpost_server::store::Store;
use sealpost_tests::*;

const WAIT: Duration = Duration::from_secs(20);
const MARKER: &[u8] = b"SEALPOST-ATTACHMENT-PLAINTEXT-MARKER-7f3a9c";

/// Random bytes with the marker at the start, across a chunk boundary, and at the end.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    for at in [0, att::CHUNK_LEN - 10, len / 2, len - MARKER.len()] {
        v[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn pair<S: Store>(relay: &TestRelay<S>) -> (TestDevice, TestDevice) {
    let client = relay.account("erin", Role::Client).await;
    let advisor = relay.account("frank.advisor", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let a = relay.device(&client, 21).await;
    let b = relay.device(&advisor, 22).await;
    (a, b)
}

/// Upload `plain` from a file as device `a`.
async fn upload_bytes(a: &mut TestDevice, dir: &Path, plain: &[u8]) -> AttachmentDescriptor {
    let src = dir.join("statement-2024-Q4.pdf");
    std::fs::write(&src, plain).unwrap();
    attachments::upload_file(&a.conn, &src, "application/pdf", &mut a.rng, |_, _| {})
        .await
        .unwrap()
}

async fn open_raw(conn: &RelayConnection) -> (quinn::SendStream, quinn::RecvStream) {
    conn.quic().open_bi().await.unwrap()
}

async fn write(send: &mut quinn::SendStream, id: u64, body: FrameBody) -> bool {
    let bytes = wire::encode_frame(&Frame::new(id, body)).unwrap();
    send.write_all(&bytes).await.is_ok()
}

async fn read(recv: &mut quinn::RecvStream) -> Option<Frame> {
    let mut prefix = [0u8; 4];
    tokio::time::timeout(WAIT, recv.read_exact(&mut prefix))
        .await
        .expect("an answer in time")
        .ok()?;
    let mut payload = vec![0u8; wire::frame_len(prefix).unwrap()];
    recv.read_exact(&mut payload).await.ok()?;
    Some(wire::decode_frame(&payload).unwrap())
}

/// Open a transfer stream, send `bodies` (the first with id 7), finish, and return the
/// relay's first answer. The stream is dropped afterwards.
async fn exchange(conn: &RelayConnection, bodies: Vec<FrameBody>) -> Option<Frame> {
    let (mut s, mut r) = open_raw(conn).await;
    for (i, body) in bodies.into_iter().enumerate() {
        let id = if i == 0 { 7 } else { 0 };
        if !write(&mut s, id, body).await {
            break;
        }
    }
    let _ = s.finish();
    read(&mut r).await
}

fn error_code(frame: Option<Frame>) -> ErrorCode {
    match frame {
        Some(Frame {
            body: FrameBody::Error { code, .. },
            ..
        }) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, AttachmentError>) -> ErrorCode {
    match r {
        Err(AttachmentError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn five_mib_attachment_travels_in_an_encrypted_message_and_arrives_intact() {
    let relay = memory_relay(|_| {}).await;
    let (mut a, mut b) = pair(&relay).await;
    let dir = tempfile::tempdir().unwrap();
    let plain = payload(5 * 1024 * 1024, 1);

    let src = dir.path().join("statement.pdf");
    std::fs::write(&src, &plain).unwrap();
    let mut seen = Vec::new();
    let descriptor =
        attachments::upload_file(&a.conn, &src, "application/pdf", &mut a.rng, |d, t| {
            seen.push((d, t))
        })
        .await
        .unwrap();
    assert_eq!(descriptor.size, plain.len() as u64);
    assert_eq!(descriptor.sha256, sha256(&[&plain]));
    assert_eq!(descriptor.file_name.as_str(), "statement.pdf");
    assert_eq!(seen.first(), Some(&(0, plain.len() as u64)));
    assert_eq!(seen.last(), Some(&(plain.len() as u64, plain.len() as u64)));
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress is monotone"
    );

    // The relay holds exactly the ciphertext, and not one copy of the marker.
    let (size, mut reader) = relay
        .relay
        .blobs
        .open(&descriptor.blob_id)
        .unwrap()
        .unwrap();
    assert_eq!(size, descriptor.ciphertext_size);
    let mut stored = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        stored.extend_from_slice(&buf[..n]);
    }
    assert_eq!(stored.len() as u64, descriptor.ciphertext_size);
    assert!(!contains(&stored, MARKER));

    // The descriptor goes to the advisor inside an end-to-end encrypted envelope.
    let mut session = a.session_with(&b).await;
    let header = RoutingHeader::new(
        a.id(),
        b.id(),
        EnvelopeKind::Chat,
        1_700_000_000_000,
        &mut a.rng,
    );
    let cbor = descriptor.to_cbor().unwrap();
    let env = session.seal(header, &cbor, &mut a.rng).unwrap();
    a.conn.send_envelope(env).await.unwrap();
    let got = b.next_envelope(WAIT).await.expect("delivered");
    let (_, pt) = accept(&b.identity, &mut b.prekeys, &got).unwrap();
    let received = AttachmentDescriptor::from_cbor(&pt).unwrap();
    assert_eq!(received, descriptor);

    let out = dir.path().join("downloaded.pdf");
    let mut last = (0, 0);
    attachments::download_to_file(&b.conn, &received, &out, |d, t| last = (d, t))
        .await
        .unwrap();
    let back = std::fs::read(&out).unwrap();
    assert_eq!(back.len(), plain.len());
    assert!(back == plain, "bytes differ");
    assert_eq!(sha256(&[&back]), descriptor.sha256);
    assert_eq!(last, (plain.len() as u64, plain.len() as u64));
    // No temporary files are left beside the output.
    let names: Vec<_> = files_under(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");

    // The uploader's other streams can download it too (any authenticated holder of
    // the descriptor can); an empty attachment works as well.
    let empty = attachments::upload(
        &a.conn,
        &b""[..],
        0,
        "empty.txt",
        "text/plain",
        &mut a.rng,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(empty.ciphertext_size, 16);
    let mut sink = Vec::new();
    attachments::download(&b.conn, &empty, &mut sink, |_, _| {})
        .await
        .unwrap();
    assert!(sink.is_empty());
}

#[tokio::test]
async fn file_system_store_holds_only_ciphertext_and_tampering_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let relay = sqlite_relay_in(dir, |_| {}).await;
    let (mut a, b) = pair(&relay).await;
    let work = tempfile::tempdir().unwrap();
    let plain = payload(300 * 1024 + 123, 2);
    let descriptor = upload_bytes(&mut a, work.path(), &plain).await;

    // Stored as <data_dir>/blobs/<hex blob id>, exactly the ciphertext size.
    let blob_path = relay
        .dir
        .path()
        .join("data")
        .join("blobs")
        .join(hex::encode(descriptor.blob_id));
    assert_eq!(
        std::fs::metadata(&blob_path).unwrap().len(),
        descriptor.ciphertext_size
    );
    // The descriptor (with the key) goes to the advisor inside an envelope the advisor
    // does not acknowledge, so the relay keeps it in its database.
    let mut session = a.session_with(&b).await;
    let header = RoutingHeader::new(
        a.id(),
        b.id(),
        EnvelopeKind::Chat,
        1_700_000_000_000,
        &mut a.rng,
    );
    let cbor = descriptor.to_cbor().unwrap();
    let env = session.seal(header, &cbor, &mut a.rng).unwrap();
    a.conn.send_envelope(env).await.unwrap();
    assert!(b.next_envelope(WAIT).await.is_some());

    // Nothing in the relay's directory (database, WAL, blobs, certificates) contains the
    // plaintext marker or the descriptor that carries the key.
    let files = files_under(relay.dir.path());
    assert!(files.iter().any(|f| f == &blob_path));
    assert!(files.len() > 2, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(!contains(&bytes, MARKER), "plaintext marker found in {f:?}");
        assert!(!contains(&bytes, &cbor[..]), "descriptor found in {f:?}");
    }

    // Intact download works.
    let out_dir = tempfile::tempdir().unwrap();
    let good = out_dir.path().join("good.pdf");
    attachments::download_to_file(&b.conn, &descriptor, &good, |_, _| {})
        .await
        .unwrap();
    assert!(std::fs::read(&good).unwrap() == plain);

    // Flip one byte of the second chunk on disk: the download fails at that chunk and
    // leaves no file (neither the target nor a temporary one).
    let mut stored = std::fs::read(&blob_path).unwrap();
    stored[SEALED_CHUNK_LEN + 1000] ^= 0x40;
    std::fs::write(&blob_path, &stored).unwrap();
    let bad = out_dir.path().join("bad.pdf");
    match attachments::download_to_file(&b.conn, &descriptor, &bad, |_, _| {}).await {
        Err(AttachmentError::Integrity(att::AttachmentError::Tampered { chunk: 1 })) => {}
        other => panic!("expected a tampered chunk, got {other:?}"),
    }
    assert!(!bad.exists());
    assert_eq!(files_under(out_dir.path()), vec![good.clone()]);

    // Swap two chunks (reorder): refused at chunk 0.
    stored[SEALED_CHUNK_LEN + 1000] ^= 0x40;
    let (c0, rest) = stored.split_at(SEALED_CHUNK_LEN);
    let (c1, rest) = rest.split_at(SEALED_CHUNK_LEN);
    std::fs::write(&blob_path, [c1, c0, rest].concat()).unwrap();
    match attachments::download_to_file(&b.conn, &descriptor, &bad, |_, _| {}).await {
        Err(AttachmentError::Integrity(att::AttachmentError::Tampered { chunk: 0 })) => {}
        other => panic!("expected a reordered chunk to fail, got {other:?}"),
    }
    // Drop the last chunk (truncation): refused before any output appears.
    std::fs::write(&blob_path, &stored[..stored.len() - 200]).unwrap();
    match attachments::download_to_file(&b.conn, &descriptor, &bad, |_, _| {}).await {
        Err(AttachmentError::Integrity(att::AttachmentError::SizeMismatch { .. })) => {}
        other => panic!("expected a size mismatch, got {other:?}"),
    }
    assert!(!bad.exists());
    assert_eq!(files_under(out_dir.path()), vec![good]);
}

#[tokio::test]
async fn oversize_overflowing_and_over_quota_uploads_are_refused() {
    let relay = memory_relay(|c| c.limits.blob_max_total_bytes = 200_000).await;
    let (mut a, _b) = pair(&relay).await;

    // Declared size above MAX_BLOB_LEN; the error echoes the request id.
    let f = exchange(
        &a.conn,
        vec![FrameBody::BlobUpload {
            blob_id: [1; 16],
            size: MAX_BLOB_LEN + 1,
        }],
    )
    .await;
    assert_eq!(f.as_ref().map(|f| f.id), Some(7));
    assert_eq!(error_code(f), ErrorCode::TooLarge);

    let upload = |id: u8, size: u64| FrameBody::BlobUpload {
        blob_id: [id; 16],
        size,
    };
    let chunk = |len: usize| FrameBody::BlobChunk {
        data: vec![0xA5; len],
    };
    // More bytes than declared in one chunk.
    let f = exchange(&a.conn, vec![upload(2, 10), chunk(20)]).await;
    assert_eq!(error_code(f), ErrorCode::TooLarge);
    // Exactly the declared bytes, then an extra chunk before the end of the stream.
    let f = exchange(&a.conn, vec![upload(3, 10), chunk(10), chunk(1)]).await;
    assert_eq!(error_code(f), ErrorCode::TooLarge);
    // A chunk above MAX_BLOB_CHUNK_LEN.
    let f = exchange(
        &a.conn,
        vec![upload(4, 150_000), chunk(wire::MAX_BLOB_CHUNK_LEN + 1)],
    )
    .await;
    assert_eq!(error_code(f), ErrorCode::TooLarge);
    // A frame other than blob_chunk after blob_upload.
    let f = exchange(&a.conn, vec![upload(5, 10), FrameBody::Ping]).await;
    assert_eq!(error_code(f), ErrorCode::UnexpectedFrame);
    // A stream that starts with anything else.
    let f = exchange(&a.conn, vec![FrameBody::Ping]).await;
    assert_eq!(error_code(f), ErrorCode::UnexpectedFrame);
    // A stream that ends before the declared size.
    let f = exchange(&a.conn, vec![upload(6, 10), chunk(5)]).await;
    assert_eq!(error_code(f), ErrorCode::BadFrame);

    // None of the refused uploads left a blob or a reservation behind.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.relay.blobs.used_bytes(), 0);
    for id in 1..=6u8 {
        assert!(relay.relay.blobs.open(&[id; 16]).unwrap().is_none());
    }

    // The relay's total cap (200 000 bytes): a 150 KB attachment fits, a second does not.
    let work = tempfile::tempdir().unwrap();
    upload_bytes(&mut a, work.path(), &payload(150_000, 3)).await;
    let second = attachments::upload(
        &a.conn,
        &payload(150_000, 4)[..],
        150_000,
        "big.pdf",
        "application/pdf",
        &mut a.rng,
        |_, _| {},
    )
    .await;
    assert_eq!(refused(second), ErrorCode::QuotaExceeded);

    // A plaintext over MAX_ATTACHMENT_LEN is refused before anything is sent.
    let huge = attachments::upload(
        &a.conn,
        tokio::io::empty(),
        MAX_ATTACHMENT_LEN + 1,
        "huge.bin",
        "application/octet-stream",
        &mut a.rng,
        |_, _| {},
    )
    .await;
    assert!(matches!(
        huge,
        Err(AttachmentError::Integrity(
            att::AttachmentError::TooLarge { .. }
        ))
    ));
    // A source shorter than announced is refused and the relay discards the partial blob.
    let short = attachments::upload(
        &a.conn,
        &[1u8; 100][..],
        1000,
        "short.bin",
        "application/octet-stream",
        &mut a.rng,
        |_, _| {},
    )
    .await;
    assert!(matches!(
        short,
        Err(AttachmentError::Integrity(
            att::AttachmentError::SizeMismatch { .. }
        ))
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(relay.relay.blobs.used_bytes() <= 200_000);
    assert_eq!(
        relay.relay.blobs.used_bytes(),
        att::ciphertext_len(150_000).unwrap()
    );
}

#[tokio::test]
async fn transfers_on_an_unauthenticated_connection_are_refused() {
    let relay = memory_relay(|_| {}).await;
    let (mut a, _b) = pair(&relay).await;
    let work = tempfile::tempdir().unwrap();
    let descriptor = upload_bytes(&mut a, work.path(), &payload(70_000, 5)).await;

    let anon = relay.connect().await;
    let (mut s, mut r) = open_raw(&anon).await;
    write(
        &mut s,
        1,
        FrameBody::BlobUpload {
            blob_id: [9; 16],
            size: 10,
        },
    )
    .await;
    assert_eq!(error_code(read(&mut r).await), ErrorCode::Unauthenticated);

    // Downloading a blob that exists is refused just the same.
    let mut sink = Vec::new();
    let r = attachments::download(&anon, &descriptor, &mut sink, |_, _| {}).await;
    assert_eq!(refused(r), ErrorCode::Unauthenticated);
    assert!(sink.is_empty());

    // And through the upload API.
    let mut rng = StdRng::seed_from_u64(9);
    let r = attachments::upload(
        &anon,
        &payload(200_000, 6)[..],
        200_000,
        "x.pdf",
        "application/pdf",
        &mut rng,
        |_, _| {},
    )
    .await;
    assert_eq!(refused(r), ErrorCode::Unauthenticated);
    assert!(relay.relay.blobs.open(&[9; 16]).unwrap().is_none());
    assert_eq!(
        relay.relay.blobs.used_bytes(),
        descriptor.ciphertext_size,
        "only the authenticated upload is stored"
    );
    // The control stream of the unauthenticated connection still answers.
    assert_eq!(
        anon.request(FrameBody::Ping).await.unwrap(),
        FrameBody::Pong
    );
}

#[tokio::test]
async fn unknown_blob_is_not_found_and_a_duplicate_id_conflicts() {
    let relay = memory_relay(|_| {}).await;
    let (mut a, b) = pair(&relay).await;

    // A descriptor for a blob that was never uploaded.
    let mut rng = StdRng::seed_from_u64(10);
    let mut enc = Encryptor::new(&mut rng, 5).unwrap();
    enc.push(b"hello").unwrap();
    let (_, ghost) = enc.finish("ghost.txt", "text/plain").unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("ghost.txt");
    let r = attachments::download_to_file(&b.conn, &ghost, &out, |_, _| {}).await;
    assert_eq!(refused(r), ErrorCode::NotFound);
    assert!(files_under(out_dir.path()).is_empty());

    // Re-uploading under an existing blob id: conflict; the original stays intact.
    let work = tempfile::tempdir().unwrap();
    let plain = payload(80_000, 7);
    let descriptor = upload_bytes(&mut a, work.path(), &plain).await;
    let (mut s, mut r) = open_raw(&a.conn).await;
    write(
        &mut s,
        1,
        FrameBody::BlobUpload {
            blob_id: descriptor.blob_id,
            size: 16,
        },
    )
    .await;
    assert_eq!(error_code(read(&mut r).await), ErrorCode::Conflict);
    let mut sink = Vec::new();
    attachments::download(&b.conn, &descriptor, &mut sink, |_, _| {})
        .await
        .unwrap();
    assert!(sink == plain);
}

#[tokio::test]
async fn the_control_stream_keeps_working_during_a_transfer() {
    let relay = memory_relay(|_| {}).await;
    let (mut a, b) = pair(&relay).await;

    // Start an upload by hand and leave it half done.
    let plain = payload(4 * att::CHUNK_LEN, 8);
    let mut rng = StdRng::seed_from_u64(11);
    let mut enc = Encryptor::new(&mut rng, plain.len() as u64).unwrap();
    let blob_id = enc.blob_id();
    let (mut s, mut r) = open_raw(&a.conn).await;
    write(
        &mut s,
        1,
        FrameBody::BlobUpload {
            blob_id,
            size: enc.ciphertext_size(),
        },
    )
    .await;
    let mut chunks = enc.push(&plain).unwrap();
    let (rest, descriptor) = enc.finish("s.pdf", "application/pdf").unwrap();
    chunks.extend(rest);
    for data in chunks.drain(..2) {
        assert!(write(&mut s, 0, FrameBody::BlobChunk { data }).await);
    }

    // Meanwhile: pings, a message to the advisor, and a concurrent download by b.
    for _ in 0..5 {
        assert_eq!(
            a.conn.request(FrameBody::Ping).await.unwrap(),
            FrameBody::Pong
        );
    }
    let mut session = a.session_with(&b).await;
    let env = a.seal(&mut session, b.id(), "statement follows");
    let id = env.header.message_id;
    a.conn.send_envelope(env).await.unwrap();
    assert_eq!(
        b.next_envelope(WAIT)
            .await
            .expect("delivered")
            .header
            .message_id,
        id
    );
    assert!(
        relay.relay.blobs.open(&blob_id).unwrap().is_none(),
        "not yet stored"
    );

    // Finish the upload: stored, and downloadable.
    for data in chunks {
        assert!(write(&mut s, 0, FrameBody::BlobChunk { data }).await);
    }
    s.finish().unwrap();
    match read(&mut r).await {
        Some(Frame {
            id: 1,
            body: FrameBody::BlobStored { blob_id: got },
            ..
        }) => assert_eq!(got, blob_id),
        other => panic!("expected blob_stored, got {other:?}"),
    }
    let mut sink = Vec::new();
    attachments::download(&b.conn, &descriptor, &mut sink, |_, _| {})
        .await
        .unwrap();
    assert!(sink == plain);
}

#[tokio::test]
async fn idle_transfers_time_out_and_concurrent_transfers_are_bounded() {
    let relay = memory_relay(|c| {
        c.limits.blob_idle_timeout_secs = 1;
        c.limits.blob_transfers_per_connection = 1;
    })
    .await;
    let (a, _b) = pair(&relay).await;

    // An upload that stalls after its header.
    let (mut s1, mut r1) = open_raw(&a.conn).await;
    write(
        &mut s1,
        1,
        FrameBody::BlobUpload {
            blob_id: [1; 16],
            size: 100,
        },
    )
    .await;
    // While it occupies the only transfer slot, a second transfer is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s2, mut r2) = open_raw(&a.conn).await;
    write(&mut s2, 1, FrameBody::BlobDownload { blob_id: [1; 16] }).await;
    assert_eq!(error_code(read(&mut r2).await), ErrorCode::RateLimited);
    // The stalled one is ended after the idle timeout, and nothing is kept.
    let started = std::time::Instant::now();
    assert_eq!(error_code(read(&mut r1).await), ErrorCode::UnexpectedFrame);
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(relay.relay.blobs.used_bytes(), 0);

    drop((s1, r1, s2, r2));
    // The slot is free again.
    let (mut s3, mut r3) = open_raw(&a.conn).await;
    write(&mut s3, 1, FrameBody::BlobDownload { blob_id: [1; 16] }).await;
    s3.finish().unwrap();
    assert_eq!(error_code(read(&mut r3).await), ErrorCode::NotFound);
}

#[tokio::test]
async fn blobs_expire_with_the_envelope_ttl() {
    let relay = memory_relay(|c| c.limits.envelope_ttl_secs = 1).await;
    let (mut a, b) = pair(&relay).await;
    let work = tempfile::tempdir().unwrap();
    let descriptor = upload_bytes(&mut a, work.path(), &payload(70_000, 12)).await;
    assert!(relay.relay.blobs.used_bytes() > 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sealpost_server::transfer::expire_blobs(relay.relay.blobs.clone()).await;
    assert_eq!(relay.relay.blobs.used_bytes(), 0);
    let mut sink = Vec::new();
    let r = attachments::download(&b.conn, &descriptor, &mut sink, |_, _| {}).await;
    assert_eq!(refused(r), ErrorCode::NotFound);
}
