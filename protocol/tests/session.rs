//! Sessions between two in-memory parties: setup, conversation, negative cases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use sealpost_protocol::{accept, initiate, DecryptError, PickleKey, Session, SetupError};

#[test]
fn conversation_both_ways() {
    let mut r = rng(1);
    let (alice, bob, mut a, mut b) = established(&mut r);
    for round in 0..5 {
        for i in 0..3 {
            let m = format!("a->b {round} {i}");
            let env = seal(&mut a, &alice, &bob, m.as_bytes(), &mut r);
            assert_eq!(&b.open(&env).unwrap()[..], m.as_bytes());
        }
        let m = format!("b->a {round}");
        let env = seal(&mut b, &bob, &alice, m.as_bytes(), &mut r);
        assert_eq!(&a.open(&env).unwrap()[..], m.as_bytes());
        assert!(!a.awaiting_first_reply());
    }
}

#[test]
fn replay_is_rejected_with_its_own_error() {
    let mut r = rng(2);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let env = seal(&mut a, &alice, &bob, b"once", &mut r);
    b.open(&env).unwrap();
    assert!(matches!(b.open(&env), Err(DecryptError::Replay { .. })));
}

#[test]
fn initial_message_replay_is_rejected() {
    let mut r = rng(3);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    // No one-time prekey: the last-resort KEM prekey stays, so only the base-key record stops a replay.
    let mut a = initiate_with(&alice, &mut bob, false, &mut r);
    let env = seal(&mut a, &alice, &bob, b"first", &mut r);
    let (mut b, _) = accept(&bob.identity, &mut bob.prekeys, &env).unwrap();
    assert!(matches!(
        accept(&bob.identity, &mut bob.prekeys, &env),
        Err(SetupError::Replay)
    ));
    assert!(matches!(b.open(&env), Err(DecryptError::Replay { .. })));
}

#[test]
fn out_of_order_and_lost_first_message() {
    let mut r = rng(4);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let mut a = initiate_with(&alice, &mut bob, true, &mut r);
    let e1 = seal(&mut a, &alice, &bob, b"1", &mut r);
    let e2 = seal(&mut a, &alice, &bob, b"2", &mut r);
    let e3 = seal(&mut a, &alice, &bob, b"3", &mut r);
    // The first message is delayed; the third starts the session.
    let (mut b, pt) = accept(&bob.identity, &mut bob.prekeys, &e3).unwrap();
    assert_eq!(&pt[..], b"3");
    assert_eq!(e1.session_base_key().unwrap(), Some(*b.base_key()));
    assert_eq!(&b.open(&e1).unwrap()[..], b"1");
    assert_eq!(&b.open(&e2).unwrap()[..], b"2");
}

#[test]
fn pickle_roundtrip_carries_on() {
    let mut r = rng(5);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let key = PickleKey::generate(&mut r);
    let skipped = seal(&mut a, &alice, &bob, b"skipped", &mut r);
    let later = seal(&mut a, &alice, &bob, b"later", &mut r);
    assert_eq!(&b.open(&later).unwrap()[..], b"later");
    let bytes = b.pickle(&key, &mut r).unwrap();
    let mut b2 = Session::from_pickle(&bytes, &key).unwrap();
    assert_eq!(&b2.open(&skipped).unwrap()[..], b"skipped");
    let reply = seal(&mut b2, &bob, &alice, b"reply", &mut r);
    assert_eq!(&a.open(&reply).unwrap()[..], b"reply");
    let wrong = PickleKey::generate(&mut r);
    assert!(Session::from_pickle(&bytes, &wrong).is_err());
}

#[test]
fn bad_prekey_signature_is_refused() {
    let mut r = rng(6);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let mut bundle = bob.prekeys.bundle_for_test(&bob.identity, true).unwrap();
    bundle.signed_prekey.signature[0] ^= 1;
    assert!(matches!(
        initiate(&alice.identity, &bundle, &mut r),
        Err(SetupError::BadPreKeySignature { .. })
    ));
}
