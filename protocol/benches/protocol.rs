//! Sealpost protocol benchmarks, all in one run so the numbers are comparable:
//!
//! * `message_1k`: our seal + open of a 1 KiB plaintext in an established session (one
//!   direction, no DH ratchet step per message; the routing header is built per message
//!   inside the timed loop), against the floor: raw ChaCha20-Poly1305 seal + open of the
//!   same 1 KiB plus the two HMAC-SHA256 chain steps of each side, each HMAC keyed from
//!   scratch (`Hmac::<Sha256>::new_from_slice`).
//! * `session_setup`: our full hybrid setup on both sides (`initiate` from a decoded
//!   bundle with a one-time prekey + the initiator's first `seal` of a 5-byte message +
//!   `accept`, which decrypts it), against the primitive operations it needs, each
//!   measured on its own and summed with its multiplicity.
//! * `olm`: vodozemac 0.9 Olm encrypt + decrypt of 1 KiB in an established session (a
//!   normal message, not a prekey message), and Olm session creation.
//!
//! * paired check `message_1k_content: with views vs without`: a 1 KiB text `Message`
//!   encoded, sealed, opened and decoded with both split-view heads (`Message.views`,
//!   PROTOCOL.md §18.7) against the same message without them (the message path before
//!   issue 9). Measured 2026-12-07: 1204 vs 1083 bytes, 7.49 vs 6.68 µs (median ratio
//!   1.12).
//!
//! After the groups, the ratios are computed from criterion's `estimates.json` files and
//! printed (only when run by `cargo bench`, not in `cargo test`'s quick mode).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use criterion::{BatchSize, Criterion};
use hmac::{Hmac, Mac};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem768};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};
use sealpost_protocol::prekeys::{prekey_signature_message, PreKeyKind};
use sealpost_protocol::{accept, initiate, IdentityKeyPair, PreKeyBundle, PreKeySecrets, Session};
use sha2::{Digest, Sha256};

const TIMESTAMP_MS: u64 = 1_700_000_000_000;
const SMALL: &[u8] = b"hello";

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn header(from: &IdentityKeyPair, to: &IdentityKeyPair, rng: &mut StdRng) -> RoutingHeader {
    RoutingHeader::new(
        from.device_id(),
        to.device_id(),
        EnvelopeKind::Chat,
        TIMESTAMP_MS,
        rng,
    )
}

/// Fresh prekey state for `identity`: a signed prekey, one one-time X25519 prekey and one
/// one-time ML-KEM prekey; and the bundle handing out both one-time prekeys.
fn fresh_prekeys(identity: &IdentityKeyPair, rng: &mut StdRng) -> (PreKeySecrets, PreKeyBundle) {
    let mut prekeys = PreKeySecrets::new();
    prekeys.rotate_signed(identity, rng);
    prekeys.generate_one_time(identity, 1, rng);
    prekeys.generate_kem_one_time(identity, 1, rng);
    let bundle = prekeys.bundle_for_test(identity, true).unwrap();
    assert!(bundle.one_time_prekey.is_some() && !bundle.kem_prekey.last_resort);
    (prekeys, bundle)
}

/// Alice and Bob with an established session in which Alice's next messages are normal
/// (not prekey) messages and carry no new ratchet key: A -> B (prekey message), B -> A,
/// A -> B.
fn established(rng: &mut StdRng) -> (IdentityKeyPair, IdentityKeyPair, Session, Session) {
    let alice = IdentityKeyPair::generate(rng);
    let bob = IdentityKeyPair::generate(rng);
    let (mut prekeys, bundle) = fresh_prekeys(&bob, rng);
    let mut a = initiate(&alice, &bundle, rng).unwrap();
    let env = a.seal(header(&alice, &bob, rng), SMALL, rng).unwrap();
    let (mut b, pt) = accept(&bob, &mut prekeys, &env).unwrap();
    assert_eq!(&pt[..], SMALL);
    let env = b.seal(header(&bob, &alice, rng), SMALL, rng).unwrap();
    assert_eq!(&a.open(&env).unwrap()[..], SMALL);
    assert!(!a.awaiting_first_reply());
    let env = a.seal(header(&alice, &bob, rng), SMALL, rng).unwrap();
    assert_eq!(&b.open(&env).unwrap()[..], SMALL);
    (alice, bob, a, b)
}

// ---------------------------------------------------------------------------------------
// 1. message_1k

type HmacSha256 = Hmac<Sha256>;

/// One KDF_CK step with each HMAC keyed from scratch: (message key, next chain key).
fn floor_chain_step(ck: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let mut m = <HmacSha256 as Mac>::new_from_slice(ck).unwrap();
    m.update(&[0x01]);
    let mk: [u8; 32] = m.finalize().into_bytes().into();
    let mut m = <HmacSha256 as Mac>::new_from_slice(ck).unwrap();
    m.update(&[0x02]);
    let next: [u8; 32] = m.finalize().into_bytes().into();
    (mk, next)
}

fn bench_message_1k(c: &mut Criterion) {
    let mut g = c.benchmark_group("message_1k");
    let plaintext: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();

    // (a) ours: header + seal (Alice) + open (Bob), all timed.
    let mut r = rng(1);
    let (alice, bob, mut a, mut b) = established(&mut r);
    g.bench_function("sealpost_seal_open", |bench| {
        bench.iter(|| {
            let h = header(&alice, &bob, &mut r);
            let env = a.seal(h, black_box(&plaintext), &mut r).unwrap();
            let pt = b.open(black_box(&env)).unwrap();
            black_box(pt.len())
        })
    });

    // (b) floor: sender and receiver chain steps (2 HMACs each) + ChaCha20-Poly1305 seal
    // and open of the same 1 KiB (zero nonce, no associated data), in a reused buffer.
    let nonce = [0u8; 12];
    let floor = |send_ck: &mut [u8; 32],
                 recv_ck: &mut [u8; 32],
                 buf: &mut Vec<u8>,
                 pt: &[u8],
                 pad_to: usize,
                 ad: &[u8]| {
        let (mk, next) = floor_chain_step(black_box(send_ck));
        *send_ck = next;
        buf.clear();
        buf.extend_from_slice(black_box(pt));
        buf.resize(pad_to, 0);
        let tag = ChaCha20Poly1305::new(&mk.into())
            .encrypt_in_place_detached(&nonce.into(), ad, buf)
            .unwrap();
        let (mk, next) = floor_chain_step(black_box(recv_ck));
        *recv_ck = next;
        ChaCha20Poly1305::new(&mk.into())
            .decrypt_in_place_detached(&nonce.into(), ad, black_box(buf), &tag)
            .unwrap();
    };
    let mut send_ck = [7u8; 32];
    let mut recv_ck = [7u8; 32];
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    floor(&mut send_ck, &mut recv_ck, &mut buf, &plaintext, 1024, b"");
    assert_eq!(buf, plaintext);
    g.bench_function("floor_chacha_hmac", |bench| {
        bench.iter(|| {
            floor(&mut send_ck, &mut recv_ck, &mut buf, &plaintext, 1024, b"");
            black_box(buf.len())
        })
    });

    // Diagnostics (not part of the ratio): the same floor with what the protocol adds to
    // the AEAD input (padding to the 1088-byte bucket and the 247-byte associated data:
    // session AD 147 + routing header 60 + ratchet header 40), and our seal and open alone.
    let ad = [0xA5u8; 247];
    g.bench_function("diag_floor_with_padding_and_ad", |bench| {
        bench.iter(|| {
            floor(&mut send_ck, &mut recv_ck, &mut buf, &plaintext, 1088, &ad);
            black_box(buf.len())
        })
    });
    let mut r = rng(11);
    let (alice, bob, mut a, _) = established(&mut r);
    g.bench_function("diag_sealpost_seal_only", |bench| {
        bench.iter(|| {
            let h = header(&alice, &bob, &mut r);
            black_box(a.seal(h, black_box(&plaintext), &mut r).unwrap())
        })
    });
    let mut r = rng(12);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let mut setup_rng = rng(13);
    g.bench_function("diag_sealpost_open_only", |bench| {
        bench.iter_batched(
            || {
                a.seal(
                    header(&alice, &bob, &mut setup_rng),
                    &plaintext,
                    &mut setup_rng,
                )
                .unwrap()
            },
            |env| black_box(b.open(&env).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// 2. session_setup

fn bench_session_setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_setup");
    g.sample_size(50);
    let mut r = rng(2);
    let alice = IdentityKeyPair::generate(&mut r);
    let bob = IdentityKeyPair::generate(&mut r);

    // (a) ours. Not timed (setup): fresh prekey state for Bob with one one-time X25519 and
    // one one-time ML-KEM prekey, and the decoded bundle handing them out. Timed: Alice's
    // `initiate` (bundle verification, DH1-4, ML-KEM encapsulation, KDF, first ratchet
    // step), building the routing header and sealing "hello" (CBOR prekey body), and Bob's
    // `accept` (body decoding, DH1-4, decapsulation, KDF, DH ratchet step, decryption,
    // one-time prekey erasure). Sessions and prekey state are dropped outside the timing.
    let mut setup_rng = rng(3);
    g.bench_function("sealpost_initiate_seal_accept", |bench| {
        bench.iter_batched(
            || fresh_prekeys(&bob, &mut setup_rng),
            |(mut prekeys, bundle)| {
                let mut a = initiate(&alice, black_box(&bundle), &mut r).unwrap();
                let env = a.seal(header(&alice, &bob, &mut r), SMALL, &mut r).unwrap();
                let (b, pt) = accept(&bob, &mut prekeys, black_box(&env)).unwrap();
                assert_eq!(pt.len(), SMALL.len());
                (a, b, prekeys, bundle)
            },
            BatchSize::SmallInput,
        )
    });

    // (b) the primitives, each measured alone on real inputs.
    let (_, bundle) = fresh_prekeys(&bob, &mut r);
    let vk = bob.public().signing_key();
    let spk_msg = prekey_signature_message(
        PreKeyKind::Signed,
        bundle.signed_prekey.id,
        &bundle.signed_prekey.public,
    );
    let otk = bundle.one_time_prekey.clone().unwrap();
    let otk_msg = prekey_signature_message(PreKeyKind::OneTime, otk.id, &otk.public);
    let kem_msg = prekey_signature_message(
        bundle.kem_prekey.kind(),
        bundle.kem_prekey.id,
        &bundle.kem_prekey.public[..],
    );
    let sigs = [
        (spk_msg, bundle.signed_prekey.signature),
        (otk_msg, otk.signature),
        (kem_msg, bundle.kem_prekey.signature),
    ];
    g.bench_function("prim_ed25519_verify_x3", |bench| {
        bench.iter(|| {
            for (m, s) in &sigs {
                vk.verify_strict(
                    black_box(m),
                    &ed25519_dalek::Signature::from_bytes(black_box(s)),
                )
                .unwrap();
            }
        })
    });

    g.bench_function("prim_x25519_keygen", |bench| {
        bench.iter(|| {
            let s = x25519_dalek::StaticSecret::random_from_rng(&mut r);
            black_box(x25519_dalek::PublicKey::from(&s))
        })
    });

    let dh_secret = x25519_dalek::StaticSecret::random_from_rng(&mut r);
    let dh_public = x25519_dalek::PublicKey::from(bundle.signed_prekey.public);
    g.bench_function("prim_x25519_dh", |bench| {
        bench.iter(|| black_box(dh_secret.diffie_hellman(black_box(&dh_public))).to_bytes())
    });

    let (dk, ek) = MlKem768::generate(&mut r);
    let ek_bytes = ek.as_bytes();
    g.bench_function("prim_mlkem768_encapsulate", |bench| {
        bench.iter(|| {
            let ek = <MlKem768 as KemCore>::EncapsulationKey::from_bytes(black_box(&ek_bytes));
            black_box(ek.encapsulate(&mut r).unwrap())
        })
    });
    let (ct, _) = ek.encapsulate(&mut r).unwrap();
    g.bench_function("prim_mlkem768_decapsulate", |bench| {
        bench.iter(|| black_box(dk.decapsulate(black_box(&ct)).unwrap()))
    });

    // Session key: ikm = 0xFF*32 || DH1..DH4 || SS (192 bytes), info = label || hash.
    let ikm = [0x5Au8; 32 * 6];
    let transcript_hash = [0x11u8; 32];
    g.bench_function("prim_hkdf_session_key", |bench| {
        bench.iter(|| {
            let hk = hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), black_box(&ikm));
            let mut out = [0u8; 32];
            hk.expand_multi_info(
                &[sealpost_protocol::handshake::PQXDH_INFO, &transcript_hash],
                &mut out,
            )
            .unwrap();
            black_box(out)
        })
    });
    // Root KDF: salt = root key, ikm = DH output, 64 bytes out.
    let rk = [0x22u8; 32];
    let dh_out = [0x33u8; 32];
    g.bench_function("prim_hkdf_root", |bench| {
        bench.iter(|| {
            let hk = hkdf::Hkdf::<Sha256>::new(Some(black_box(&rk)), black_box(&dh_out));
            let mut out = [0u8; 64];
            hk.expand(sealpost_protocol::ratchet::RATCHET_INFO, &mut out)
                .unwrap();
            black_box(out)
        })
    });

    g.bench_function("prim_sha256_kem_transcript", |bench| {
        bench.iter(|| {
            let mut h = Sha256::new();
            h.update(black_box(&ek_bytes[..]));
            h.update(black_box(&ct[..]));
            black_box(h.finalize())
        })
    });

    let key = [0x44u8; 32];
    let nonce = [0u8; 12];
    let mut buf: Vec<u8> = Vec::with_capacity(64);
    g.bench_function("prim_chacha_small_seal_open", |bench| {
        bench.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(SMALL));
            let tag = ChaCha20Poly1305::new(&key.into())
                .encrypt_in_place_detached(&nonce.into(), b"", &mut buf)
                .unwrap();
            ChaCha20Poly1305::new(&key.into())
                .decrypt_in_place_detached(&nonce.into(), b"", black_box(&mut buf), &tag)
                .unwrap();
            black_box(buf.len())
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// 3. olm (vodozemac 0.9)

fn bench_olm(c: &mut Criterion) {
    use vodozemac::olm::{Account, OlmMessage, SessionConfig};

    let mut g = c.benchmark_group("olm");
    let plaintext: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();

    // Established session: A -> B (prekey message), B -> A, A -> B; then Alice's messages
    // are normal messages on a chain both sides already hold.
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let mut a =
        alice.create_outbound_session(SessionConfig::version_2(), bob.curve25519_key(), otk);
    let OlmMessage::PreKey(pre) = a.encrypt(SMALL) else {
        panic!("first Olm message is not a prekey message")
    };
    let mut b = bob
        .create_inbound_session(alice.curve25519_key(), &pre)
        .unwrap()
        .session;
    let reply = b.encrypt(SMALL);
    assert_eq!(a.decrypt(&reply).unwrap(), SMALL);
    let m = a.encrypt(SMALL);
    assert!(matches!(m, OlmMessage::Normal(_)));
    assert_eq!(b.decrypt(&m).unwrap(), SMALL);

    g.bench_function("olm_encrypt_decrypt", |bench| {
        bench.iter(|| {
            let m = a.encrypt(black_box(&plaintext));
            let pt = b.decrypt(black_box(&m)).unwrap();
            black_box(pt.len())
        })
    });
    assert!(matches!(a.encrypt(SMALL), OlmMessage::Normal(_)));

    // Session creation. Not timed: a fresh responder account with one published one-time
    // key. Timed: create_outbound_session + the first (prekey) message + create_inbound_session
    // (which decrypts it and removes the one-time key).
    g.bench_function("olm_session_creation", |bench| {
        bench.iter_batched(
            || {
                let mut bob = Account::new();
                bob.generate_one_time_keys(1);
                let otk = *bob.one_time_keys().values().next().unwrap();
                bob.mark_keys_as_published();
                (bob, otk)
            },
            |(mut bob, otk)| {
                let mut a = alice.create_outbound_session(
                    SessionConfig::version_2(),
                    bob.curve25519_key(),
                    otk,
                );
                let OlmMessage::PreKey(pre) = a.encrypt(SMALL) else {
                    panic!("first Olm message is not a prekey message")
                };
                let res = bob
                    .create_inbound_session(alice.curve25519_key(), &pre)
                    .unwrap();
                assert_eq!(res.plaintext.len(), SMALL.len());
                (a, res.session, bob)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Paired check. The machine is shared, so load can change between two criterion
// benchmarks measured seconds apart. Here each comparison alternates short blocks of its
// two sides many times; the per-round ratio's median, and the ratio of the two sides'
// fastest rounds, are much less sensitive to that drift.

/// Time per iteration of `iters` runs of `f`.
fn per_iter(iters: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Alternate `a` and `b` (each returns ns per operation) for `rounds` rounds; print
/// median and fastest of each side, and the median of per-round ratios a/b.
fn paired(name: &str, rounds: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) {
    let (mut va, mut vb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which side goes first, so neither always follows the other.
        let (x, y) = if i % 2 == 0 {
            let x = a();
            (x, b())
        } else {
            let y = b();
            (a(), y)
        };
        va.push(x);
        vb.push(y);
        ratios.push(x / y);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{name:<40} a {:>10} (min {:>10})  b {:>10} (min {:>10})  a/b median {:.3}, min/min {:.3}",
        fmt_ns(median(va.clone())),
        fmt_ns(min(&va)),
        fmt_ns(median(vb.clone())),
        fmt_ns(min(&vb)),
        median(ratios),
        min(&va) / min(&vb)
    );
}

fn paired_checks() {
    use vodozemac::olm::{Account, OlmMessage, SessionConfig};
    println!("\n=== Paired check (interleaved blocks; a = first, b = second) ===");
    let plaintext: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let mut r = rng(21);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let ours_msg = |a: &mut Session, b: &mut Session, r: &mut StdRng| {
        per_iter(200, || {
            let env = a.seal(header(&alice, &bob, r), &plaintext, r).unwrap();
            black_box(b.open(&env).unwrap());
        })
    };
    let (mut send_ck, mut recv_ck) = ([7u8; 32], [7u8; 32]);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let nonce = [0u8; 12];
    paired(
        "message_1k: ours vs floor",
        60,
        || ours_msg(&mut a, &mut b, &mut r),
        || {
            per_iter(200, || {
                let (mk, next) = floor_chain_step(black_box(&send_ck));
                send_ck = next;
                buf.clear();
                buf.extend_from_slice(black_box(&plaintext));
                let tag = ChaCha20Poly1305::new(&mk.into())
                    .encrypt_in_place_detached(&nonce.into(), b"", &mut buf)
                    .unwrap();
                let (mk, next) = floor_chain_step(black_box(&recv_ck));
                recv_ck = next;
                ChaCha20Poly1305::new(&mk.into())
                    .decrypt_in_place_detached(&nonce.into(), b"", black_box(&mut buf), &tag)
                    .unwrap();
            })
        },
    );

    // The split-view heads every message carries since issue 9 (`Message.views`, PROTOCOL.md
    // §18.7): a 1 KiB text message encoded, sealed, opened and decoded, with both heads
    // (the worst case) against the same message without them (what main sent before).
    {
        use sealpost_protocol::content::{Content, HeadView, LogViews, Message};
        use sealpost_protocol::identity::AccountId;
        use sealpost_protocol::wire::BoundedString;
        let text: String = (0..1024u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let head = HeadView {
            seq: 3,
            hash: [0x5a; 32],
        };
        let message = |views: Option<LogViews>| Message {
            from: AccountId::new("client.alice").unwrap(),
            sent_ms: TIMESTAMP_MS,
            content: Content::Text {
                body: BoundedString::truncating(&text),
            },
            views,
        };
        let with = message(Some(LogViews {
            sender: Some(head),
            recipient: Some(head),
            split: false,
            checkpoint: None,
        }));
        let without = message(None);
        println!(
            "message views: encoded {} bytes with both heads, {} without",
            with.encode().unwrap().len(),
            without.encode().unwrap().len()
        );
        let (alice_v, bob_v, mut av, mut bv) = established(&mut r);
        let mut rv = rng(25);
        let round = |m: &Message,
                     (from, to): (&IdentityKeyPair, &IdentityKeyPair),
                     a: &mut Session,
                     b: &mut Session,
                     r: &mut StdRng| {
            per_iter(200, || {
                let bytes = m.encode().unwrap();
                let env = a.seal(header(from, to, r), &bytes, r).unwrap();
                black_box(Message::decode(&b.open(&env).unwrap()).unwrap());
            })
        };
        let (alice_w, bob_w, mut av2, mut bv2) = established(&mut r);
        let mut rv2 = rng(26);
        paired(
            "message_1k_content: with views vs without",
            60,
            || round(&with, (&alice_v, &bob_v), &mut av, &mut bv, &mut rv),
            || round(&without, (&alice_w, &bob_w), &mut av2, &mut bv2, &mut rv2),
        );
        // The transparency-log checkpoint in the views since issue 10 (§20.9): the same
        // message with both heads and a checkpoint, against both heads only.
        let mut with_cp = with.clone();
        if let Some(v) = with_cp.views.as_mut() {
            v.checkpoint = Some(sealpost_protocol::content::CheckpointView {
                size: 1 << 20,
                root: [0x3c; 32],
            });
        }
        println!(
            "message views: encoded {} bytes with both heads and a checkpoint, {} without it",
            with_cp.encode().unwrap().len(),
            with.encode().unwrap().len()
        );
        paired(
            "message_1k_content: checkpoint vs heads only",
            60,
            || round(&with_cp, (&alice_v, &bob_v), &mut av, &mut bv, &mut rv),
            || round(&with, (&alice_w, &bob_w), &mut av2, &mut bv2, &mut rv2),
        );
    }

    // Olm, established as in the `olm` group.
    let oa_acc = Account::new();
    let mut ob_acc = Account::new();
    ob_acc.generate_one_time_keys(1);
    let otk = *ob_acc.one_time_keys().values().next().unwrap();
    let mut oa =
        oa_acc.create_outbound_session(SessionConfig::version_2(), ob_acc.curve25519_key(), otk);
    let OlmMessage::PreKey(pre) = oa.encrypt(SMALL) else {
        panic!("first Olm message is not a prekey message")
    };
    let mut ob = ob_acc
        .create_inbound_session(oa_acc.curve25519_key(), &pre)
        .unwrap()
        .session;
    oa.decrypt(&ob.encrypt(SMALL)).unwrap();
    ob.decrypt(&oa.encrypt(SMALL)).unwrap();
    paired(
        "message_1k: Olm vs ours (speedup)",
        60,
        || {
            per_iter(100, || {
                let m = oa.encrypt(&plaintext);
                black_box(ob.decrypt(&m).unwrap());
            })
        },
        || ours_msg(&mut a, &mut b, &mut r),
    );

    // Setup: ours (fresh prekey state made before each block, not timed) vs the sum of
    // its primitives, each timed in the same block.
    let alice_id = IdentityKeyPair::generate(&mut r);
    let bob_id = IdentityKeyPair::generate(&mut r);
    let mut setup_rng = rng(22);
    let mut r2 = rng(23);
    let mut r3 = rng(24);
    let (_, bundle) = fresh_prekeys(&bob_id, &mut r2);
    let vk = *bob_id.public().signing_key();
    let otk = bundle.one_time_prekey.clone().unwrap();
    let sigs = [
        (
            prekey_signature_message(
                PreKeyKind::Signed,
                bundle.signed_prekey.id,
                &bundle.signed_prekey.public,
            ),
            bundle.signed_prekey.signature,
        ),
        (
            prekey_signature_message(PreKeyKind::OneTime, otk.id, &otk.public),
            otk.signature,
        ),
        (
            prekey_signature_message(
                bundle.kem_prekey.kind(),
                bundle.kem_prekey.id,
                &bundle.kem_prekey.public[..],
            ),
            bundle.kem_prekey.signature,
        ),
    ];
    let dh_secret = x25519_dalek::StaticSecret::random_from_rng(&mut r2);
    let dh_public = x25519_dalek::PublicKey::from(bundle.signed_prekey.public);
    let (dk, ek) = MlKem768::generate(&mut r2);
    let ek_bytes = ek.as_bytes();
    let (ct, _) = ek.encapsulate(&mut r2).unwrap();
    paired(
        "session_setup: ours vs primitive sum",
        16,
        || {
            let mut inputs: Vec<_> = (0..4)
                .map(|_| fresh_prekeys(&bob_id, &mut setup_rng))
                .collect();
            let t = Instant::now();
            let mut out = Vec::with_capacity(4);
            for (prekeys, bundle) in inputs.iter_mut() {
                let mut s = initiate(&alice_id, bundle, &mut r2).unwrap();
                let env = s
                    .seal(header(&alice_id, &bob_id, &mut r2), SMALL, &mut r2)
                    .unwrap();
                out.push((s, accept(&bob_id, prekeys, &env).unwrap()));
            }
            let ns = t.elapsed().as_nanos() as f64 / 4.0;
            drop(out);
            ns
        },
        || {
            let n = 4;
            per_iter(n, || {
                for (m, sig) in &sigs {
                    vk.verify_strict(m, &ed25519_dalek::Signature::from_bytes(sig))
                        .unwrap();
                }
            }) + 2.0
                * per_iter(n, || {
                    let s = x25519_dalek::StaticSecret::random_from_rng(&mut r3);
                    black_box(x25519_dalek::PublicKey::from(&s));
                })
                + 10.0
                    * per_iter(n, || {
                        black_box(dh_secret.diffie_hellman(black_box(&dh_public)));
                    })
                + per_iter(n, || {
                    let ek = <MlKem768 as KemCore>::EncapsulationKey::from_bytes(&ek_bytes);
                    black_box(ek.encapsulate(&mut r3).unwrap());
                })
                + per_iter(n, || {
                    black_box(dk.decapsulate(&ct).unwrap());
                })
                + 2.0
                    * per_iter(n, || {
                        let hk = hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), &[0x5Au8; 192]);
                        let mut out = [0u8; 32];
                        hk.expand_multi_info(
                            &[sealpost_protocol::handshake::PQXDH_INFO, &[1u8; 32]],
                            &mut out,
                        )
                        .unwrap();
                        black_box(out);
                    })
                + 2.0
                    * per_iter(n, || {
                        let hk = hkdf::Hkdf::<Sha256>::new(Some(&[0x22u8; 32]), &[0x33u8; 32]);
                        let mut out = [0u8; 64];
                        hk.expand(sealpost_protocol::ratchet::RATCHET_INFO, &mut out)
                            .unwrap();
                        black_box(out);
                    })
                + 2.0
                    * per_iter(n, || {
                        let mut h = Sha256::new();
                        h.update(&ek_bytes[..]);
                        h.update(&ct[..]);
                        black_box(h.finalize());
                    })
                + per_iter(n, || {
                    let key = [0x44u8; 32];
                    let mut small = SMALL.to_vec();
                    let tag = ChaCha20Poly1305::new(&key.into())
                        .encrypt_in_place_detached(&[0u8; 12].into(), b"", &mut small)
                        .unwrap();
                    ChaCha20Poly1305::new(&key.into())
                        .decrypt_in_place_detached(&[0u8; 12].into(), b"", &mut small, &tag)
                        .unwrap();
                })
        },
    );
}

// ---------------------------------------------------------------------------------------
// Ratios, from criterion's estimates.

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion")
}

/// (mean, median) point estimates in nanoseconds of `group/bench`, if it was measured by
/// this run (written at or after `since`; older files are from earlier runs).
fn estimate(dir: &Path, since: SystemTime, group: &str, bench: &str) -> Option<(f64, f64)> {
    let path = dir.join(group).join(bench).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json = std::fs::read_to_string(path).ok()?;
    let point = |key: &str| -> Option<f64> {
        let rest = &json[json.find(&format!("\"{key}\":"))?..];
        let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
        let end = rest.find([',', '}'])?;
        rest[..end].trim().parse().ok()
    };
    Some((point("mean")?, point("median")?))
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn print_ratios(dir: &Path, since: SystemTime) {
    let get = |g: &str, b: &str| estimate(dir, since, g, b);
    println!("\n=== Sealpost benchmark summary (mean / median; ratios on both) ===");
    let line = |name: &str, v: (f64, f64)| {
        println!("{name:<48} {:>12} / {:>12}", fmt_ns(v.0), fmt_ns(v.1));
    };
    let ratio = |name: &str, num: (f64, f64), den: (f64, f64), target: &str| {
        println!(
            "{name:<48} {:>12.3} / {:>12.3}   (target {target})",
            num.0 / den.0,
            num.1 / den.1
        );
    };

    let ours = get("message_1k", "sealpost_seal_open");
    let floor = get("message_1k", "floor_chacha_hmac");
    if let (Some(o), Some(f)) = (ours, floor) {
        line("message_1k ours (header+seal+open)", o);
        line("message_1k floor (ChaCha20-Poly1305 + 4 HMAC)", f);
        ratio("message_1k ratio ours/floor", o, f, "<= 1.5");
        for (b, name) in [
            (
                "diag_floor_with_padding_and_ad",
                "  diag: floor + padding 1088 + AD 247",
            ),
            ("diag_sealpost_seal_only", "  diag: ours header+seal only"),
            ("diag_sealpost_open_only", "  diag: ours open only"),
        ] {
            if let Some(v) = get("message_1k", b) {
                line(name, v);
            }
        }
    } else {
        println!("message_1k: not measured in this run");
    }

    // (bench, multiplicity) of the primitive operations of one full setup, both sides.
    let prims: [(&str, f64); 9] = [
        ("prim_ed25519_verify_x3", 1.0),
        ("prim_x25519_keygen", 2.0),
        ("prim_x25519_dh", 10.0),
        ("prim_mlkem768_encapsulate", 1.0),
        ("prim_mlkem768_decapsulate", 1.0),
        ("prim_hkdf_session_key", 2.0),
        ("prim_hkdf_root", 2.0),
        ("prim_sha256_kem_transcript", 2.0),
        ("prim_chacha_small_seal_open", 1.0),
    ];
    let setup = get("session_setup", "sealpost_initiate_seal_accept");
    let mut sum = Some((0.0, 0.0));
    for (b, k) in prims {
        match (get("session_setup", b), sum) {
            (Some(v), Some(s)) => {
                line(&format!("  {b} x{k}"), (v.0 * k, v.1 * k));
                sum = Some((s.0 + v.0 * k, s.1 + v.1 * k));
            }
            _ => sum = None,
        }
    }
    if let (Some(o), Some(s)) = (setup, sum) {
        line("session_setup ours (initiate+seal+accept)", o);
        line("session_setup primitive sum", s);
        ratio("session_setup ratio ours/primitive sum", o, s, "<= 1.2");
    } else {
        println!("session_setup: not measured in this run");
    }

    let olm_msg = get("olm", "olm_encrypt_decrypt");
    let olm_setup = get("olm", "olm_session_creation");
    if let Some(v) = olm_msg {
        line("olm encrypt+decrypt 1 KiB", v);
    }
    if let Some(v) = olm_setup {
        line("olm session creation (out+first msg+in)", v);
    }
    if let (Some(o), Some(olm)) = (ours, olm_msg) {
        ratio("speedup ours vs Olm (Olm/ours, message)", olm, o, ">= 3");
    }
    if let (Some(o), Some(olm)) = (setup, olm_setup) {
        ratio("setup ours/Olm (PQ hybrid vs 3DH, info)", o, olm, "none");
    }
}

fn main() {
    // Coarse file timestamps: a margin keeps this run's files in and older runs' out.
    let since = SystemTime::now() - Duration::from_secs(1);
    let dir = criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    bench_message_1k(&mut c);
    bench_session_setup(&mut c);
    bench_olm(&mut c);
    c.final_summary();
    // `cargo bench` passes `--bench`; `cargo test` runs each benchmark once and measures
    // nothing, so there is nothing to report then.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios(&dir, since);
        if std::env::var_os("SEALPOST_BENCH_NO_PAIRED").is_none() {
            paired_checks();
        }
    }
}
