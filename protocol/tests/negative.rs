//! Negative cases: every way a bundle, an envelope or a frame can be wrong is refused
//! with its own error, never a panic, and leaves the session usable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use rand::RngCore;
use sealpost_protocol::crypto::{self, CryptoError};
use sealpost_protocol::envelope::{
    Envelope, EnvelopeKind, RoutingHeader, MAX_BODY_LEN, MAX_PLAINTEXT_LEN,
};
use sealpost_protocol::prekeys::{prekey_signature_message, PreKeyBundle, PreKeyKind};
use sealpost_protocol::ratchet::MAX_MESSAGE_GAP;
use sealpost_protocol::wire::{
    decode_frame, encode_frame, frame_len, BoundedVec, Frame, FrameBody, FrameReader,
    FRAME_PREFIX_LEN, MAX_FRAME_LEN, MAX_ONE_TIME_PREKEYS_PER_UPLOAD,
};
use sealpost_protocol::{
    accept, initiate, DecodeError, DecryptError, EncodeError, EncryptError, PublicIdentity,
    SetupError, PROTOCOL_VERSION,
};

// ---------------------------------------------------------------------------------------
// Helpers

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("sub-slice present")
}

/// `bytes` with the first occurrence of `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let i = find(bytes, from);
    let mut out = bytes[..i].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&bytes[i + from.len()..]);
    out
}

/// The payload (without length prefix) of an encoded frame.
fn payload(frame: &Frame) -> Vec<u8> {
    encode_frame(frame).unwrap()[FRAME_PREFIX_LEN..].to_vec()
}

/// Re-sign the bundle's signed prekey after replacing its public key.
fn with_signed_prekey(bundle: &PreKeyBundle, bob: &Device, public: [u8; 32]) -> PreKeyBundle {
    let mut b = bundle.clone();
    b.signed_prekey.public = public;
    b.signed_prekey.signature = bob.identity.sign(&prekey_signature_message(
        PreKeyKind::Signed,
        b.signed_prekey.id,
        &public,
    ));
    b
}

/// X25519 u-coordinates of small order (RFC 7748 section 6.1, and the list libsodium
/// refuses): 0, 1, two points of order 8, p - 1, and the non-canonical p and p + 1.
fn low_order_points() -> Vec<[u8; 32]> {
    let mut p_minus_1 = [0xff; 32];
    p_minus_1[0] = 0xec;
    p_minus_1[31] = 0x7f;
    let mut p = p_minus_1;
    p[0] = 0xed;
    let mut p_plus_1 = p_minus_1;
    p_plus_1[0] = 0xee;
    let mut one = [0u8; 32];
    one[0] = 1;
    vec![
        [0u8; 32],
        one,
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ],
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ],
        p_minus_1,
        p,
        p_plus_1,
    ]
}

// ---------------------------------------------------------------------------------------
// Bundles

#[test]
fn bad_signature_on_each_prekey_is_refused() {
    let mut r = rng(101);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let good = bob.prekeys.bundle_for_test(&bob.identity, true).unwrap();
    assert!(initiate(&alice.identity, &good, &mut r).is_ok());

    let mut b = good.clone();
    b.signed_prekey.signature[10] ^= 0x40;
    let id = b.signed_prekey.id;
    assert_eq!(
        initiate(&alice.identity, &b, &mut r).err(),
        Some(SetupError::BadPreKeySignature {
            which: "signed",
            id
        })
    );

    let mut b = good.clone();
    let otk = b.one_time_prekey.as_mut().unwrap();
    otk.signature[63] ^= 1;
    let id = otk.id;
    assert_eq!(
        initiate(&alice.identity, &b, &mut r).err(),
        Some(SetupError::BadPreKeySignature {
            which: "one-time",
            id
        })
    );

    let mut b = good.clone();
    b.kem_prekey.signature[0] ^= 0x80;
    let id = b.kem_prekey.id;
    assert_eq!(
        initiate(&alice.identity, &b, &mut r).err(),
        Some(SetupError::BadPreKeySignature {
            which: "ML-KEM",
            id
        })
    );

    // A valid signature over another key is as bad as a broken one.
    let mut b = good.clone();
    b.signed_prekey.public[5] ^= 1;
    assert!(matches!(
        initiate(&alice.identity, &b, &mut r),
        Err(SetupError::BadPreKeySignature {
            which: "signed",
            ..
        })
    ));
    let mut b = good.clone();
    b.kem_prekey.public[100] ^= 1;
    assert!(matches!(
        initiate(&alice.identity, &b, &mut r),
        Err(SetupError::BadPreKeySignature {
            which: "ML-KEM",
            ..
        })
    ));
    // Flipping the last-resort flag changes the signed kind byte.
    let mut b = good.clone();
    b.kem_prekey.last_resort = !b.kem_prekey.last_resort;
    assert!(matches!(
        initiate(&alice.identity, &b, &mut r),
        Err(SetupError::BadPreKeySignature {
            which: "ML-KEM",
            ..
        })
    ));
    // Prekeys signed by another identity.
    let mallory = Device::new(&mut r);
    let mut b = good.clone();
    b.signed_prekey.signature = mallory.identity.sign(&prekey_signature_message(
        PreKeyKind::Signed,
        b.signed_prekey.id,
        &b.signed_prekey.public,
    ));
    assert!(matches!(
        initiate(&alice.identity, &b, &mut r),
        Err(SetupError::BadPreKeySignature {
            which: "signed",
            ..
        })
    ));
}

#[test]
fn low_order_signed_prekey_is_refused() {
    let mut r = rng(102);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let good = bob.prekeys.bundle_for_test(&bob.identity, true).unwrap();
    let scalar = [0x42u8; 32];
    for point in low_order_points() {
        assert_eq!(
            crypto::x25519_bytes(&scalar, &point).err(),
            Some(CryptoError::LowOrderPoint),
            "{point:02x?} is of small order"
        );
        // Correctly signed, so only the DH check stops it.
        let b = with_signed_prekey(&good, &bob, point);
        assert!(b.verify().is_ok());
        assert!(
            matches!(
                initiate(&alice.identity, &b, &mut r),
                Err(SetupError::LowOrderPoint(_))
            ),
            "signed prekey {point:02x?}"
        );
    }
    // The all-zero point in particular, and the DH it fails at.
    let b = with_signed_prekey(&good, &bob, [0u8; 32]);
    assert_eq!(
        initiate(&alice.identity, &b, &mut r).err(),
        Some(SetupError::LowOrderPoint("DH1 (identity, signed prekey)"))
    );
}

#[test]
fn low_order_one_time_prekey_and_identity_key_are_refused() {
    let mut r = rng(103);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let good = bob.prekeys.bundle_for_test(&bob.identity, true).unwrap();

    let mut b = good.clone();
    let otk = b.one_time_prekey.as_mut().unwrap();
    otk.public = [0u8; 32];
    otk.signature = bob.identity.sign(&prekey_signature_message(
        PreKeyKind::OneTime,
        otk.id,
        &otk.public,
    ));
    assert_eq!(
        initiate(&alice.identity, &b, &mut r).err(),
        Some(SetupError::LowOrderPoint(
            "DH4 (ephemeral, one-time prekey)"
        ))
    );

    // An identity whose X25519 key is of small order (its Ed25519 key signs as before).
    let mut b = good.clone();
    b.identity =
        PublicIdentity::from_bytes(bob.identity.public().signing_bytes(), &[0u8; 32]).unwrap();
    assert!(b.verify().is_ok());
    assert_eq!(
        initiate(&alice.identity, &b, &mut r).err(),
        Some(SetupError::LowOrderPoint("DH2 (ephemeral, identity)"))
    );
}

#[test]
fn low_order_base_key_in_initial_message_is_refused() {
    let mut r = rng(104);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let mut a = initiate_with(&alice, &mut bob, true, &mut r);
    let env = seal(&mut a, &alice, &bob, b"hello", &mut r);
    let base = env.session_base_key().unwrap().unwrap();
    let counts = bob.prekeys.one_time_counts();
    for point in low_order_points() {
        let mut bad = env.clone();
        bad.body = replace(&env.body, &base, &point);
        let err = accept(&bob.identity, &mut bob.prekeys, &bad).err();
        // Canonical small-order points fail the DH check; p and p + 1 (non-canonical
        // encodings of 0 and 1) are refused before any DH.
        assert!(
            matches!(
                err,
                Some(SetupError::LowOrderPoint("DH2 (ephemeral, identity)"))
                    | Some(SetupError::Decode(DecodeError::InvalidField {
                        field: "base key",
                        ..
                    }))
            ),
            "base key {point:02x?}: {err:?}"
        );
    }
    assert_eq!(bob.prekeys.one_time_counts(), counts);
    let (_, pt) = accept(&bob.identity, &mut bob.prekeys, &env).unwrap();
    assert_eq!(&pt[..], b"hello");
}

// ---------------------------------------------------------------------------------------
// Replays

#[test]
fn ordinary_message_replay_is_refused() {
    let mut r = rng(105);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let reply = seal(&mut b, &bob, &alice, b"reply", &mut r);
    assert_eq!(&a.open(&reply).unwrap()[..], b"reply");
    assert!(matches!(
        a.open(&reply),
        Err(DecryptError::Replay { index: 0, .. })
    ));
    let env = seal(&mut a, &alice, &bob, b"ordinary", &mut r);
    assert_eq!(env.session_base_key().unwrap(), None);
    assert_eq!(&b.open(&env).unwrap()[..], b"ordinary");
    assert!(matches!(b.open(&env), Err(DecryptError::Replay { .. })));
    // Still a replay after the chain moved on, and after a DH ratchet step.
    let next = seal(&mut a, &alice, &bob, b"next", &mut r);
    b.open(&next).unwrap();
    assert!(matches!(b.open(&env), Err(DecryptError::Replay { .. })));
    let back = seal(&mut b, &bob, &alice, b"back", &mut r);
    a.open(&back).unwrap();
    let third = seal(&mut a, &alice, &bob, b"third", &mut r);
    b.open(&third).unwrap();
    assert!(matches!(b.open(&env), Err(DecryptError::Replay { .. })));
    assert!(matches!(a.open(&reply), Err(DecryptError::Replay { .. })));
}

#[test]
fn initial_message_replay_is_refused_with_and_without_one_time_prekeys() {
    for use_one_time in [true, false] {
        let mut r = rng(106);
        let alice = Device::new(&mut r);
        let mut bob = Device::new(&mut r);
        let mut a = initiate_with(&alice, &mut bob, use_one_time, &mut r);
        let env = seal(&mut a, &alice, &bob, b"first", &mut r);
        let (mut b, _) = accept(&bob.identity, &mut bob.prekeys, &env).unwrap();
        assert_eq!(
            accept(&bob.identity, &mut bob.prekeys, &env).err(),
            Some(SetupError::Replay)
        );
        assert!(matches!(b.open(&env), Err(DecryptError::Replay { .. })));
    }
}

/// Regression: X25519 ignores the top bit of a public key, so a replayed initial message
/// whose base key had its top bit set derived the same keys, passed the replay check
/// (which compares bytes) and opened a second session. Found by the bit-flip property.
#[test]
fn initial_message_replay_with_re_encoded_base_key_is_refused() {
    let mut r = rng(107);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    // No one-time prekeys: the base-key record is the only replay defence.
    let mut a = initiate_with(&alice, &mut bob, false, &mut r);
    let env = seal(&mut a, &alice, &bob, b"first", &mut r);
    let base = env.session_base_key().unwrap().unwrap();
    let mut alias = base;
    alias[31] ^= 0x80;
    let mut replayed = env.clone();
    replayed.body = replace(&env.body, &base, &alias);
    // Before or after the genuine one, the alias is refused.
    assert_eq!(
        accept(&bob.identity, &mut bob.prekeys, &replayed).err(),
        Some(SetupError::Decode(DecodeError::InvalidField {
            field: "base key",
            reason: "non-canonical X25519 public key",
        }))
    );
    accept(&bob.identity, &mut bob.prekeys, &env).unwrap();
    assert!(accept(&bob.identity, &mut bob.prekeys, &replayed).is_err());
}

/// Regression: a later initial message of an accepted session could carry altered
/// PQXDH data (prekey ids, KEM ciphertext), which the ratchet's associated data does not
/// cover, and still open. Found by the bit-flip property.
#[test]
fn later_initial_message_with_altered_setup_data_is_refused() {
    let mut r = rng(108);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let mut a = initiate_with(&alice, &mut bob, true, &mut r);
    let first = seal(&mut a, &alice, &bob, b"first", &mut r);
    let second = seal(&mut a, &alice, &bob, b"second", &mut r);
    let (mut b, _) = accept(&bob.identity, &mut bob.prekeys, &first).unwrap();
    // The KEM ciphertext is the only 1088-byte string in the body; alter one byte.
    let start = second
        .body
        .windows(3)
        .position(|w| w == [0x59, 0x04, 0x40])
        .unwrap()
        + 3;
    let mut bad = second.clone();
    bad.body[start + 500] ^= 1;
    assert_eq!(b.open(&bad).err(), Some(DecryptError::Authentication));
    assert_eq!(&b.open(&second).unwrap()[..], b"second");
}

// ---------------------------------------------------------------------------------------
// Gaps

#[test]
fn too_big_gap_in_current_chain_is_refused_and_session_survives() {
    let mut r = rng(109);
    let (alice, bob, mut a, mut b) = established(&mut r);
    // Bob has opened n = 0; n = 1 + MAX_MESSAGE_GAP skips exactly the maximum.
    let envs: Vec<Envelope> = (1..=MAX_MESSAGE_GAP + 2)
        .map(|i| seal(&mut a, &alice, &bob, format!("{i}").as_bytes(), &mut r))
        .collect();
    let too_far = envs.last().unwrap();
    assert_eq!(
        b.open(too_far).err(),
        Some(DecryptError::TooBigGap {
            got: u64::from(MAX_MESSAGE_GAP) + 1,
            max: MAX_MESSAGE_GAP
        })
    );
    assert_eq!(b.skipped_key_count(), 0);
    let at_limit = &envs[envs.len() - 2];
    assert_eq!(
        &b.open(at_limit).unwrap()[..],
        format!("{}", MAX_MESSAGE_GAP + 1).as_bytes()
    );
    assert_eq!(b.skipped_key_count(), MAX_MESSAGE_GAP as usize);
    assert_eq!(
        &b.open(too_far).unwrap()[..],
        format!("{}", MAX_MESSAGE_GAP + 2).as_bytes()
    );
    assert_eq!(&b.open(&envs[0]).unwrap()[..], b"1");
    let reply = seal(&mut b, &bob, &alice, b"reply", &mut r);
    assert_eq!(&a.open(&reply).unwrap()[..], b"reply");
}

#[test]
fn too_big_gap_in_new_chain_is_refused_and_session_survives() {
    let mut r = rng(110);
    let (alice, bob, mut a, mut b) = established(&mut r);
    // Bob's first chain: index MAX_MESSAGE_GAP + 1 is too far ahead of a new chain.
    let envs: Vec<Envelope> = (0..=MAX_MESSAGE_GAP + 1)
        .map(|i| seal(&mut b, &bob, &alice, format!("{i}").as_bytes(), &mut r))
        .collect();
    assert_eq!(
        a.open(envs.last().unwrap()).err(),
        Some(DecryptError::TooBigGap {
            got: u64::from(MAX_MESSAGE_GAP) + 1,
            max: MAX_MESSAGE_GAP
        })
    );
    assert!(a.awaiting_first_reply(), "a failure changes nothing");
    assert_eq!(&a.open(&envs[5]).unwrap()[..], b"5");
    assert!(!a.awaiting_first_reply());
    let env = seal(&mut a, &alice, &bob, b"ordinary", &mut r);
    assert_eq!(&b.open(&env).unwrap()[..], b"ordinary");
}

// ---------------------------------------------------------------------------------------
// Wrong devices

#[test]
fn envelope_for_another_device_is_refused() {
    let mut r = rng(111);
    let (alice, bob, mut a, mut b) = established(&mut r);
    // Carol, and a session of Alice's device with her.
    let mut carol = Device::new(&mut r);
    let mut a2 = initiate_with(&alice, &mut carol, true, &mut r);
    let hi = seal(&mut a2, &alice, &carol, b"hi carol", &mut r);
    let (mut c, _) = accept(&carol.identity, &mut carol.prekeys, &hi).unwrap();
    // Alice -> Bob opened by Carol's session with Alice.
    let to_bob = seal(&mut a, &alice, &bob, b"for bob", &mut r);
    assert_eq!(
        c.open(&to_bob).err(),
        Some(DecryptError::WrongRecipient {
            expected: carol.identity.device_id(),
            got: bob.identity.device_id(),
        })
    );
    // The initial message Alice -> Bob accepted by Carol.
    let mut r2 = rng(112);
    let mut dave = Device::new(&mut r2);
    let mut ad = initiate_with(&alice, &mut dave, true, &mut r2);
    let to_dave = seal(&mut ad, &alice, &dave, b"for dave", &mut r2);
    assert_eq!(
        accept(&carol.identity, &mut carol.prekeys, &to_dave).err(),
        Some(SetupError::WrongRecipient {
            expected: carol.identity.device_id(),
            got: dave.identity.device_id(),
        })
    );
    // Re-addressing it to Carol does not help: the prekeys are Dave's.
    let mut readdressed = to_dave.clone();
    readdressed.header.recipient = carol.identity.device_id();
    assert!(accept(&carol.identity, &mut carol.prekeys, &readdressed).is_err());
    // Nobody's state was touched.
    assert_eq!(&b.open(&to_bob).unwrap()[..], b"for bob");
    let ok = seal(&mut a2, &alice, &carol, b"still fine", &mut r);
    assert_eq!(&c.open(&ok).unwrap()[..], b"still fine");
    assert!(accept(&dave.identity, &mut dave.prekeys, &to_dave).is_ok());
}

#[test]
fn envelope_from_another_device_is_refused() {
    let mut r = rng(113);
    let (alice, mut bob, mut a, mut b) = established(&mut r);
    // Carol -> Bob, in a session of their own, is not for Bob's session with Alice.
    let carol = Device::new(&mut r);
    let mut c = initiate_with(&carol, &mut bob, true, &mut r);
    let from_carol = seal(&mut c, &carol, &bob, b"from carol", &mut r);
    assert_eq!(
        b.open(&from_carol).err(),
        Some(DecryptError::WrongSender {
            expected: alice.identity.device_id(),
            got: carol.identity.device_id(),
        })
    );
    // Nor is Alice's envelope relabelled as Carol's.
    let mut mislabeled = seal(&mut a, &alice, &bob, b"from alice", &mut r);
    mislabeled.header.sender = carol.identity.device_id();
    assert_eq!(
        b.open(&mislabeled).err(),
        Some(DecryptError::WrongSender {
            expected: alice.identity.device_id(),
            got: carol.identity.device_id(),
        })
    );
    // Bob accepts Carol's session separately; both carry on.
    let (_, pt) = accept(&bob.identity, &mut bob.prekeys, &from_carol).unwrap();
    assert_eq!(&pt[..], b"from carol");
    // An initial message whose header names another sender than its identity.
    let mut fresh_bob = Device::new(&mut r);
    let mut a2 = initiate_with(&alice, &mut fresh_bob, true, &mut r);
    let mut first = seal(&mut a2, &alice, &fresh_bob, b"first", &mut r);
    first.header.sender = carol.identity.device_id();
    assert_eq!(
        accept(&fresh_bob.identity, &mut fresh_bob.prekeys, &first).err(),
        Some(SetupError::SenderMismatch)
    );
    // An ordinary message handed to accept.
    let reply = seal(&mut b, &bob, &alice, b"reply", &mut r);
    a.open(&reply).unwrap();
    let ordinary = seal(&mut a, &alice, &bob, b"ordinary", &mut r);
    let mut bob2 = Device::new(&mut r);
    let mut to_bob2 = ordinary.clone();
    to_bob2.header.recipient = bob2.identity.device_id();
    assert_eq!(
        accept(&bob2.identity, &mut bob2.prekeys, &to_bob2).err(),
        Some(SetupError::NotAPreKeyMessage)
    );
    assert_eq!(&b.open(&ordinary).unwrap()[..], b"ordinary");
}

#[test]
fn altered_routing_header_is_refused() {
    let mut r = rng(114);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let reply = seal(&mut b, &bob, &alice, b"reply", &mut r);
    a.open(&reply).unwrap();
    let env = seal(&mut a, &alice, &bob, b"dated", &mut r);
    let mut later = env.clone();
    later.header.timestamp_ms += 1;
    assert_eq!(b.open(&later).err(), Some(DecryptError::Authentication));
    let mut relabeled = env.clone();
    relabeled.header.kind = EnvelopeKind::Instruction;
    assert_eq!(b.open(&relabeled).err(), Some(DecryptError::Authentication));
    let mut renamed = env.clone();
    renamed.header.message_id.0[0] ^= 1;
    assert_eq!(b.open(&renamed).err(), Some(DecryptError::Authentication));
    let mut v2 = env.clone();
    v2.header.version = 2;
    assert_eq!(
        b.open(&v2).err(),
        Some(DecryptError::Authentication),
        "the version is bound into the associated data"
    );
    assert!(matches!(
        v2.validate(),
        Err(DecodeError::UnsupportedVersion { got: 2, .. })
    ));
    assert_eq!(&b.open(&env).unwrap()[..], b"dated");
}

// ---------------------------------------------------------------------------------------
// Sizes

#[test]
fn oversized_plaintext_is_refused() {
    let mut r = rng(115);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let big = vec![7u8; MAX_PLAINTEXT_LEN + 1];
    assert_eq!(
        a.seal(header(&alice, &bob, &mut r), &big, &mut r).err(),
        Some(EncryptError::PlaintextTooLarge {
            got: MAX_PLAINTEXT_LEN + 1,
            max: MAX_PLAINTEXT_LEN
        })
    );
    // The maximum itself goes through, and nothing was consumed by the failure.
    let max = vec![9u8; MAX_PLAINTEXT_LEN];
    let env = seal(&mut a, &alice, &bob, &max, &mut r);
    assert!(env.body.len() <= MAX_BODY_LEN);
    assert_eq!(&b.open(&env).unwrap()[..], &max[..]);
    // Headers naming other devices are refused too.
    let wrong = header(&bob, &alice, &mut r);
    assert_eq!(
        a.seal(wrong, b"x", &mut r).err(),
        Some(EncryptError::WrongDevices)
    );
}

#[test]
fn oversized_envelope_body_is_refused() {
    let mut r = rng(116);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let mut env = seal(&mut a, &alice, &bob, b"x", &mut r);
    env.body = vec![0u8; MAX_BODY_LEN + 1];
    assert!(matches!(
        env.validate(),
        Err(DecodeError::TooLarge {
            what: "envelope body",
            ..
        })
    ));
    let cbor = env.to_cbor().unwrap();
    assert!(matches!(
        Envelope::from_cbor(&cbor),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(b.open(&env).is_err());
    assert!(accept(&bob.identity, &mut Device::new(&mut r).prekeys, &env).is_err());
}

#[test]
fn oversized_lists_are_refused() {
    assert_eq!(
        BoundedVec::<u8, 3>::new(vec![1, 2, 3, 4]).err(),
        Some(DecodeError::TooLarge {
            what: "list",
            got: 4,
            max: 3
        })
    );
    assert!(BoundedVec::<u8, 3>::new(vec![1, 2, 3]).is_ok());

    // An upload of MAX + 1 one-time prekeys, built by growing the CBOR array of a valid
    // upload of MAX (all items identical, so the item encoding is easy to repeat).
    let mut r = rng(117);
    let mut dev = Device::new(&mut r);
    let otk = dev
        .prekeys
        .generate_one_time(&dev.identity, 1, &mut r)
        .remove(0);
    let n = MAX_ONE_TIME_PREKEYS_PER_UPLOAD;
    let upload = |count: usize| {
        Frame::new(
            9,
            FrameBody::UploadPreKeys {
                signed_prekey: None,
                one_time: BoundedVec::new(vec![otk.clone(); count]).unwrap(),
                kem_one_time: BoundedVec::new(Vec::new()).unwrap(),
                kem_last_resort: None,
            },
        )
    };
    let full = payload(&upload(n));
    let one_less = payload(&upload(n - 1));
    let item_len = full.len() - one_less.len();
    assert_eq!(decode_frame(&full).unwrap(), upload(n));
    // CBOR array of 100 items: 0x98 0x64.
    let at = find(&full, &[0x98, u8::try_from(n).unwrap()]);
    let mut grown = full[..at].to_vec();
    grown.extend_from_slice(&[0x98, u8::try_from(n + 1).unwrap()]);
    grown.extend_from_slice(&full[at + 2..at + 2 + item_len]);
    grown.extend_from_slice(&full[at + 2..]);
    match decode_frame(&grown) {
        Err(DecodeError::Malformed { detail, .. }) => {
            assert!(detail.contains("maximum of 100"), "{detail}")
        }
        other => panic!("oversized list: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Frames

fn sample_frames() -> Vec<Frame> {
    let mut r = rng(118);
    let (alice, bob, mut a, _b) = established(&mut r);
    let env = seal(&mut a, &alice, &bob, b"in a frame", &mut r);
    let mut bob = bob;
    let bundle = bob.prekeys.bundle_for_test(&bob.identity, true).unwrap();
    vec![
        Frame::new(0, FrameBody::Ping),
        Frame::new(
            1,
            FrameBody::AuthStart {
                device: alice.identity.device_id(),
            },
        ),
        Frame::new(
            2,
            FrameBody::Send {
                envelope: env.clone(),
            },
        ),
        Frame::new(0, FrameBody::Deliver { envelope: env }),
        Frame::new(
            3,
            FrameBody::Bundles {
                account: sealpost_protocol::AccountId::new("client-7").unwrap(),
                bundles: BoundedVec::new(vec![bundle]).unwrap(),
            },
        ),
        Frame::new(
            4,
            FrameBody::error(sealpost_protocol::wire::ErrorCode::RateLimited, "slow down"),
        ),
    ]
}

#[test]
fn every_prefix_of_a_frame_is_truncated_or_malformed() {
    for frame in sample_frames() {
        let bytes = encode_frame(&frame).unwrap();
        let body = &bytes[FRAME_PREFIX_LEN..];
        assert_eq!(decode_frame(body).unwrap(), frame);
        for k in 0..body.len() {
            match decode_frame(&body[..k]) {
                Err(DecodeError::Truncated { .. } | DecodeError::Malformed { .. }) => {}
                other => panic!("prefix of {k} bytes of {frame:?}: {other:?}"),
            }
        }
        // A reader given any prefix of the stream waits; the rest completes the frame.
        for k in 0..bytes.len() {
            let mut reader = FrameReader::new();
            assert_eq!(reader.push(&bytes[..k]).unwrap(), k);
            assert_eq!(reader.next_frame().unwrap(), None, "prefix {k}");
            assert!(reader.wanted().unwrap() >= 1);
            assert_eq!(reader.push(&bytes[k..]).unwrap(), bytes.len() - k);
            assert_eq!(reader.next_frame().unwrap(), Some(frame.clone()));
            assert_eq!(reader.next_frame().unwrap(), None);
        }
    }
}

#[test]
fn frame_reader_splits_a_stream_fed_byte_by_byte() {
    let frames = sample_frames();
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend_from_slice(&encode_frame(f).unwrap());
    }
    let mut reader = FrameReader::new();
    let mut out = Vec::new();
    for b in &stream {
        assert_eq!(reader.push(std::slice::from_ref(b)).unwrap(), 1);
        if let Some(f) = reader.next_frame().unwrap() {
            out.push(f);
        }
    }
    assert_eq!(out, frames);
    // Pushing the whole stream at once: push takes only up to the end of the current
    // frame, so the caller loops.
    let mut reader = FrameReader::new();
    let mut rest = &stream[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = reader.push(rest).unwrap();
        rest = &rest[n..];
        while let Some(f) = reader.next_frame().unwrap() {
            out.push(f);
        }
    }
    assert_eq!(out, frames);
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let too_long = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
    assert_eq!(
        frame_len(too_long).err(),
        Some(DecodeError::TooLarge {
            what: "frame",
            got: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    assert_eq!(
        frame_len(u32::MAX.to_be_bytes()).err(),
        Some(DecodeError::TooLarge {
            what: "frame",
            got: u32::MAX as usize,
            max: MAX_FRAME_LEN
        })
    );
    assert_eq!(
        frame_len(u32::try_from(MAX_FRAME_LEN).unwrap().to_be_bytes()).unwrap(),
        MAX_FRAME_LEN
    );
    assert!(matches!(
        frame_len([0; 4]),
        Err(DecodeError::Truncated { .. })
    ));

    // The reader takes the prefix, then refuses to take a single payload byte.
    let mut reader = FrameReader::new();
    assert_eq!(reader.push(&too_long).unwrap(), FRAME_PREFIX_LEN);
    assert!(matches!(reader.wanted(), Err(DecodeError::TooLarge { .. })));
    assert!(matches!(
        reader.push(&[0u8; 1024]),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        reader.next_frame(),
        Err(DecodeError::TooLarge { .. })
    ));
    // Prefix and payload in one push: refused as soon as the prefix is complete.
    let mut stream = too_long.to_vec();
    stream.extend_from_slice(&[0u8; 4096]);
    assert!(matches!(
        FrameReader::new().push(&stream),
        Err(DecodeError::TooLarge { .. })
    ));

    // A payload longer than the maximum is refused by decode_frame before parsing.
    let mut big = payload(&Frame::new(1, FrameBody::Ping));
    big.resize(MAX_FRAME_LEN + 1, 0);
    assert_eq!(
        decode_frame(&big).err(),
        Some(DecodeError::TooLarge {
            what: "frame",
            got: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    // And encode_frame refuses to write one.
    let mut r = rng(119);
    let (alice, bob, mut a, _b) = established(&mut r);
    let mut env = seal(&mut a, &alice, &bob, b"x", &mut r);
    env.body = vec![0u8; MAX_FRAME_LEN + 1];
    assert!(matches!(
        encode_frame(&Frame::new(1, FrameBody::Send { envelope: env })),
        Err(EncodeError::TooLarge { what: "frame", .. })
    ));
}

#[test]
fn garbage_is_refused() {
    let mut r = rng(120);
    let fixed: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\xff",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\xa1\x61v\x01",                    // {"v": 1}
        b"\x83\x01\x02\x03",                 // [1, 2, 3]
        b"\xbf\x61v\x01\xff",                // indefinite {"v": 1}
        b"\x9f\x9f\x9f\x9f\x9f\x9f\x9f\x9f", // nested indefinite arrays, cut short
    ];
    for g in fixed {
        let e = decode_frame(g).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Truncated { .. } | DecodeError::Malformed { .. }
            ),
            "{g:02x?}: {e:?}"
        );
        assert!(Envelope::from_cbor(g).is_err());
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = vec![0x81u8; 100_000];
    assert!(decode_frame(&deep).is_err());
    assert!(Envelope::from_cbor(&deep).is_err());
    // Random bytes.
    for len in [1usize, 7, 64, 1000, 70_000] {
        for _ in 0..20 {
            let mut g = vec![0u8; len];
            r.fill_bytes(&mut g);
            assert!(decode_frame(&g).is_err());
            assert!(Envelope::from_cbor(&g).is_err());
        }
    }
}

#[test]
fn unknown_version_is_refused() {
    let mut f = Frame::new(5, FrameBody::Ping);
    f.v = 2;
    assert_eq!(
        decode_frame(&payload(&f)).err(),
        Some(DecodeError::UnsupportedVersion {
            got: 2,
            supported: PROTOCOL_VERSION
        })
    );
    // Even when the rest would not decode as a version-1 frame.
    let odd = replace(&payload(&f), b"ping", b"pang");
    assert!(matches!(
        decode_frame(&odd),
        Err(DecodeError::UnsupportedVersion { got: 2, .. })
    ));
    // An envelope of another version, standalone and inside a frame.
    let mut r = rng(121);
    let (alice, bob, mut a, _b) = established(&mut r);
    let mut env = seal(&mut a, &alice, &bob, b"x", &mut r);
    env.header.version = 7;
    assert!(matches!(
        Envelope::from_cbor(&env.to_cbor().unwrap()),
        Err(DecodeError::UnsupportedVersion { got: 7, .. })
    ));
    assert!(matches!(
        decode_frame(&payload(&Frame::new(1, FrameBody::Send { envelope: env }))),
        Err(DecodeError::UnsupportedVersion { got: 7, .. })
    ));
}

#[test]
fn unknown_frame_type_is_refused() {
    let ping = payload(&Frame::new(5, FrameBody::Ping));
    assert_eq!(
        decode_frame(&replace(&ping, b"ping", b"pang")).err(),
        Some(DecodeError::UnknownFrameType("pang".to_owned()))
    );
    // A long unknown name is cut to 32 characters in the error.
    let long = "x".repeat(200);
    let mut bytes = ping[..find(&ping, b"ping") - 1].to_vec();
    bytes.extend_from_slice(&[0x78, 200]);
    bytes.extend_from_slice(long.as_bytes());
    bytes.extend_from_slice(&ping[find(&ping, b"ping") + 4..]);
    assert_eq!(
        decode_frame(&bytes).err(),
        Some(DecodeError::UnknownFrameType("x".repeat(32)))
    );
    // A known type with content it does not take is malformed, not unknown.
    let auth = payload(&Frame::new(
        1,
        FrameBody::AuthStart {
            device: sealpost_protocol::DeviceId([3; 16]),
        },
    ));
    let bad = replace(&auth, b"auth_start", b"auth_rsart");
    assert!(matches!(
        decode_frame(&bad),
        Err(DecodeError::UnknownFrameType(t)) if t == "auth_rsart"
    ));
    let wrong_content = replace(&auth, b"\x6aauth_start", b"\x64ping");
    assert!(matches!(
        decode_frame(&wrong_content),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn unknown_envelope_kind_is_refused() {
    for code in [0u16, 10, 255, u16::MAX] {
        assert_eq!(
            EnvelopeKind::try_from(code).err(),
            Some(DecodeError::InvalidField {
                field: "envelope kind",
                reason: "unknown kind code"
            })
        );
    }
    for k in EnvelopeKind::ALL {
        assert_eq!(EnvelopeKind::try_from(k.code()).unwrap(), k);
    }
    let mut r = rng(122);
    let (alice, bob, mut a, _b) = established(&mut r);
    let env = seal(&mut a, &alice, &bob, b"x", &mut r);
    assert_eq!(env.header.kind, EnvelopeKind::Chat);
    let cbor = env.to_cbor().unwrap();
    // "kind": 1  ->  "kind": 10 / 0 / 65535.
    for to in [&[0x0a][..], &[0x00], &[0x19, 0xff, 0xff]] {
        let mut with = b"\x64kind".to_vec();
        with.extend_from_slice(to);
        let bad = replace(&cbor, b"\x64kind\x01", &with);
        match Envelope::from_cbor(&bad) {
            Err(DecodeError::Malformed { detail, .. }) => {
                assert!(detail.contains("unknown envelope kind"), "{detail}")
            }
            other => panic!("kind {to:02x?}: {other:?}"),
        }
        let frame = payload(&Frame::new(
            1,
            FrameBody::Send {
                envelope: env.clone(),
            },
        ));
        let bad_frame = replace(&frame, b"\x64kind\x01", &with);
        assert!(matches!(
            decode_frame(&bad_frame),
            Err(DecodeError::Malformed { .. })
        ));
    }
    // A routing header built with a known kind round-trips.
    let h = RoutingHeader::new(
        alice.identity.device_id(),
        bob.identity.device_id(),
        EnvelopeKind::Approval,
        1,
        &mut r,
    );
    assert!(EnvelopeKind::Approval.is_sensitive());
    assert_eq!(h.ad_bytes()[58..60], [0, 6]);
}

/// Non-canonical CBOR (another encoding of the same envelope) is refused, so an altered
/// byte never decodes to the same value.
#[test]
fn non_canonical_envelope_encodings_are_refused() {
    let mut r = rng(123);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let reply = seal(&mut b, &bob, &alice, b"reply", &mut r);
    a.open(&reply).unwrap();
    let env = seal(&mut a, &alice, &bob, b"canonical", &mut r);
    let cbor = env.to_cbor().unwrap();
    // The key "kind" as a byte string (major type 2) instead of text.
    let as_bytes = replace(&cbor, b"\x64kind", b"\x44kind");
    assert!(matches!(
        Envelope::from_cbor(&as_bytes),
        Err(DecodeError::Malformed { .. })
    ));
    // The kind 1 as a two-byte integer.
    let long_int = replace(&cbor, b"\x64kind\x01", b"\x64kind\x19\x00\x01");
    assert!(matches!(
        Envelope::from_cbor(&long_int),
        Err(DecodeError::Malformed { .. })
    ));
    // Inside the body: the ratchet field "ct" as a byte-string key.
    let mut body_alias = env.clone();
    body_alias.body = replace(&env.body, b"\x62ct", b"\x42ct");
    assert!(matches!(
        b.open(&body_alias),
        Err(DecryptError::Decode(DecodeError::Malformed { .. }))
    ));
    assert_eq!(&b.open(&env).unwrap()[..], b"canonical");
}

/// The relay's delivery path encodes `deliver` without building a frame: the bytes must
/// be exactly those of the frame, and appending keeps what the buffer held.
#[test]
fn deliver_encoded_in_place_matches_the_frame() {
    use rand::SeedableRng;
    use sealpost_protocol::envelope::{Envelope, EnvelopeKind, RoutingHeader};
    use sealpost_protocol::wire::{encode_deliver_into, encode_frame_into};
    use sealpost_protocol::IdentityKeyPair;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let a = IdentityKeyPair::generate(&mut rng);
    let b = IdentityKeyPair::generate(&mut rng);
    for len in [0usize, 1, 23, 24, 255, 256, 1166, 65_535, 65_536, 73_728] {
        let mut body = vec![0u8; len];
        rng.fill_bytes(&mut body);
        let envelope = Envelope {
            header: RoutingHeader::new(
                a.device_id(),
                b.device_id(),
                EnvelopeKind::Chat,
                1_700_000_000_000,
                &mut rng,
            ),
            body,
        };
        let frame = Frame::new(
            0,
            FrameBody::Deliver {
                envelope: envelope.clone(),
            },
        );
        let expected = encode_frame(&frame).unwrap();
        let mut out = b"earlier".to_vec();
        encode_deliver_into(&envelope, &mut out).unwrap();
        assert_eq!(&out[..7], b"earlier");
        assert_eq!(&out[7..], &expected[..], "body of {len} bytes");
        let mut out2 = b"earlier".to_vec();
        encode_frame_into(&frame, &mut out2).unwrap();
        assert_eq!(out, out2);
        let mut reader = FrameReader::new();
        assert_eq!(reader.push(&expected).unwrap(), expected.len());
        assert_eq!(reader.next_frame().unwrap(), Some(frame));
    }
}
