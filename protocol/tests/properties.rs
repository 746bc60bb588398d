//! Property tests of the protocol core: random conversations with loss, reordering and
//! duplication; single-bit tampering of envelopes; pickling mid-conversation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use common::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sealpost_protocol::envelope::Envelope;
use sealpost_protocol::{
    accept, DecryptError, IdentityKeyPair, PickleError, PickleKey, PreKeySecrets, Session,
    SetupError,
};

// ---------------------------------------------------------------------------------------
// Delivery model

/// Why a delivery failed.
#[derive(Debug)]
enum Failure {
    Setup(SetupError),
    Decrypt(DecryptError),
}

impl Failure {
    /// A second delivery of something already decrypted.
    fn is_replay(&self) -> bool {
        matches!(
            self,
            Failure::Decrypt(DecryptError::Replay { .. } | DecryptError::KeyNotHeld)
                | Failure::Setup(SetupError::Replay)
        )
    }
}

/// A device and, once established, its session with the other party.
struct Party {
    dev: Device,
    session: Option<Session>,
}

/// Deliver `env` to `p` the way a client routes envelopes: with no session, `accept`;
/// a prekey envelope whose base key is the session's goes to that session's `open`;
/// an ordinary envelope goes to `open`.
fn receive(p: &mut Party, env: &Envelope) -> Result<Vec<u8>, Failure> {
    let base = env
        .session_base_key()
        .map_err(|e| Failure::Decrypt(DecryptError::Decode(e)))?;
    match (&mut p.session, base) {
        (Some(s), None) => s.open(env).map(|pt| pt.to_vec()).map_err(Failure::Decrypt),
        (Some(s), Some(bk)) if bk == *s.base_key() => {
            s.open(env).map(|pt| pt.to_vec()).map_err(Failure::Decrypt)
        }
        // Another base key: a new session, which never legitimately happens here.
        (Some(_), Some(_)) => match accept(&p.dev.identity, &mut p.dev.prekeys, env) {
            Ok(_) => panic!("a second session was started in a two-party conversation"),
            Err(e) => Err(Failure::Setup(e)),
        },
        (None, _) => {
            let (s, pt) =
                accept(&p.dev.identity, &mut p.dev.prekeys, env).map_err(Failure::Setup)?;
            p.session = Some(s);
            Ok(pt.to_vec())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Held back and delivered with the next burst to the same party (or at the end).
    Delay,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Deliver),
        1 => Just(Fate::Drop),
        1 => Just(Fate::Duplicate),
        1 => Just(Fate::Delay),
    ]
}

#[derive(Clone, Debug)]
struct Turn {
    from_alice: bool,
    fates: Vec<Fate>,
    shuffle_seed: u64,
}

fn turn() -> impl Strategy<Value = Turn> {
    (
        any::<bool>(),
        prop::collection::vec(fate(), 1..12),
        any::<u64>(),
    )
        .prop_map(|(from_alice, fates, shuffle_seed)| Turn {
            from_alice,
            fates,
            shuffle_seed,
        })
}

/// One message in flight.
#[derive(Clone)]
struct InFlight {
    id: usize,
    env: Envelope,
}

/// Two parties, the messages they sent, and what happened to each.
struct World {
    alice: Party,
    bob: Party,
    rng: StdRng,
    texts: Vec<Vec<u8>>,
    dropped: HashSet<usize>,
    delivered: HashSet<usize>,
    to_alice_later: Vec<InFlight>,
    to_bob_later: Vec<InFlight>,
    successes: usize,
    replays: usize,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = rng(seed);
        let alice = Device::new(&mut rng);
        let mut bob = Device::new(&mut rng);
        let a = initiate_with(&alice, &mut bob, seed.is_multiple_of(2), &mut rng);
        Self {
            alice: Party {
                dev: alice,
                session: Some(a),
            },
            bob: Party {
                dev: bob,
                session: None,
            },
            rng,
            texts: Vec::new(),
            dropped: HashSet::new(),
            delivered: HashSet::new(),
            to_alice_later: Vec::new(),
            to_bob_later: Vec::new(),
            successes: 0,
            replays: 0,
        }
    }

    /// `from_alice` seals `fates.len()` messages; they are delivered according to their
    /// fates in an order given by `shuffle_seed`, mixed with messages held back earlier.
    fn burst(&mut self, from_alice: bool, fates: &[Fate], shuffle_seed: u64) {
        let (sender, receiver, later) = if from_alice {
            (&mut self.alice, &mut self.bob, &mut self.to_bob_later)
        } else {
            (&mut self.bob, &mut self.alice, &mut self.to_alice_later)
        };
        let session = sender.session.as_mut().expect("sender has a session");
        let mut deliveries: Vec<InFlight> = std::mem::take(later);
        let mut held = Vec::new();
        for fate in fates {
            let id = self.texts.len();
            let text = format!(
                "message {id} from {}",
                if from_alice { "alice" } else { "bob" }
            )
            .into_bytes();
            let env = seal(session, &sender.dev, &receiver.dev, &text, &mut self.rng);
            assert_eq!(
                env.session_base_key().unwrap().is_some(),
                from_alice && session.awaiting_first_reply(),
                "only the initiator sends prekey messages, and only until its first reply"
            );
            self.texts.push(text);
            let m = InFlight { id, env };
            match fate {
                Fate::Deliver => deliveries.push(m),
                Fate::Drop => {
                    self.dropped.insert(id);
                }
                Fate::Duplicate => {
                    deliveries.push(m.clone());
                    deliveries.push(m);
                }
                Fate::Delay => held.push(m),
            }
        }
        let mut order = rng(shuffle_seed);
        deliveries.shuffle(&mut order);
        *later = held;
        Self::deliver(
            receiver,
            deliveries,
            &self.texts,
            &mut self.delivered,
            &mut self.successes,
            &mut self.replays,
        );
    }

    fn deliver(
        receiver: &mut Party,
        deliveries: Vec<InFlight>,
        texts: &[Vec<u8>],
        delivered: &mut HashSet<usize>,
        successes: &mut usize,
        replays: &mut usize,
    ) {
        for m in deliveries {
            let result = receive(receiver, &m.env);
            if delivered.insert(m.id) {
                match result {
                    Ok(pt) => assert_eq!(pt, texts[m.id], "message {} content", m.id),
                    Err(e) => panic!("first delivery of message {} failed: {e:?}", m.id),
                }
                *successes += 1;
            } else {
                match result {
                    Err(e) if e.is_replay() => *replays += 1,
                    other => panic!("duplicate of message {} was not refused: {other:?}", m.id),
                }
            }
        }
    }

    /// Deliver everything still held back.
    fn flush(&mut self) {
        let to_bob = std::mem::take(&mut self.to_bob_later);
        Self::deliver(
            &mut self.bob,
            to_bob,
            &self.texts,
            &mut self.delivered,
            &mut self.successes,
            &mut self.replays,
        );
        let to_alice = std::mem::take(&mut self.to_alice_later);
        Self::deliver(
            &mut self.alice,
            to_alice,
            &self.texts,
            &mut self.delivered,
            &mut self.successes,
            &mut self.replays,
        );
    }

    /// Every message was delivered exactly once unless dropped.
    fn check_accounting(&self) {
        for id in 0..self.texts.len() {
            assert_ne!(
                self.delivered.contains(&id),
                self.dropped.contains(&id),
                "message {id} must be either delivered or dropped"
            );
        }
        assert_eq!(self.successes, self.delivered.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random turn-taking, bursts reordered, messages dropped, duplicated and delayed.
    #[test]
    fn random_conversations(seed in any::<u64>(), turns in prop::collection::vec(turn(), 1..16)) {
        let mut w = World::new(seed);
        for t in &turns {
            // Bob cannot speak before he holds a session.
            let from_alice = t.from_alice || w.bob.session.is_none();
            w.burst(from_alice, &t.fates, t.shuffle_seed);
        }
        w.flush();
        w.check_accounting();
        // Whatever was lost, the sessions still carry on both ways.
        if w.bob.session.is_none() {
            w.burst(true, &[Fate::Deliver], 0);
        }
        w.burst(false, &[Fate::Deliver, Fate::Deliver], 1);
        w.burst(true, &[Fate::Deliver], 2);
        w.check_accounting();
        prop_assert!(!w.alice.session.as_ref().unwrap().awaiting_first_reply());
    }
}

/// Full-burst reorders of 1,000 messages: the initial burst (which starts the session
/// from whichever prekey message arrives first) and an ordinary burst each way.
#[test]
fn thousand_message_bursts_in_random_order() {
    let mut w = World::new(7);
    let all = vec![Fate::Deliver; 1000];
    w.burst(true, &all, 11);
    w.burst(false, &all, 12);
    w.burst(true, &all, 13);
    w.check_accounting();
    assert_eq!(w.successes, 3000);
    let b = w.bob.session.as_ref().unwrap();
    assert_eq!(b.skipped_key_count(), 0, "every skipped key was used");
    assert_eq!(w.alice.session.as_ref().unwrap().skipped_key_count(), 0);
}

/// A burst of 1,000 with drops, duplicates and delays leaves exactly the dropped keys.
#[test]
fn thousand_message_burst_with_loss() {
    let mut w = World::new(8);
    let mut r = rng(9);
    let fates: Vec<Fate> = (0..1000)
        .map(|i| match i % 10 {
            0 => Fate::Drop,
            1 | 2 => Fate::Duplicate,
            3 => Fate::Delay,
            _ => Fate::Deliver,
        })
        .collect::<Vec<_>>()
        .choose_multiple(&mut r, 1000)
        .copied()
        .collect();
    w.burst(true, &fates, 21);
    w.flush();
    w.check_accounting();
    assert_eq!(w.dropped.len(), 100);
    assert_eq!(w.replays, 200);
    // Keys of dropped messages below the highest delivered index stay skipped.
    let highest = *w.delivered.iter().max().unwrap();
    let pending = w.dropped.iter().filter(|&&d| d < highest).count();
    assert_eq!(w.bob.session.as_ref().unwrap().skipped_key_count(), pending);
}

// ---------------------------------------------------------------------------------------
// Single-bit tampering

/// A flipped copy of `bytes`.
fn flipped(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("sub-slice present")
}

/// Decode a tampered envelope CBOR: either it fails to decode, or it is a different
/// envelope (the encoding is canonical, so no flip yields the same value).
fn decode_tampered(bad: &[u8], original: &Envelope, bit: usize) -> Option<Envelope> {
    let e = Envelope::from_cbor(bad).ok()?;
    assert_ne!(
        &e, original,
        "bit {bit}: another encoding of the same envelope"
    );
    Some(e)
}

/// Bob's side of a fresh session, before he has seen anything: Alice's first envelope.
struct PreKeyFixture {
    alice: Device,
    bob: Device,
    a: Session,
    env: Envelope,
    cbor: Vec<u8>,
}

impl PreKeyFixture {
    fn new(seed: u64) -> Self {
        let mut r = rng(seed);
        let alice = Device::new(&mut r);
        let mut bob = Device::new(&mut r);
        let mut a = initiate_with(&alice, &mut bob, true, &mut r);
        let env = seal(&mut a, &alice, &bob, b"first", &mut r);
        let cbor = env.to_cbor().unwrap();
        Self {
            alice,
            bob,
            a,
            env,
            cbor,
        }
    }

    /// Flip `bit` and hand the result to `accept`: it must be refused.
    fn refuse(&mut self, bit: usize) {
        let bad = flipped(&self.cbor, bit);
        if let Some(e) = decode_tampered(&bad, &self.env, bit) {
            if accept(&self.bob.identity, &mut self.bob.prekeys, &e).is_ok() {
                panic!(
                    "bit {bit} (byte {} = {:#04x}): tampered prekey envelope accepted",
                    bit / 8,
                    self.cbor[bit / 8]
                );
            }
        }
    }

    /// After all the failures, the untouched envelope is accepted and the session works.
    fn finish(mut self) {
        let mut r = rng(99);
        let counts = self.bob.prekeys.one_time_counts();
        assert_eq!(counts, (5, 3), "no prekey was consumed by a failure");
        let (mut b, pt) = accept(&self.bob.identity, &mut self.bob.prekeys, &self.env).unwrap();
        assert_eq!(&pt[..], b"first");
        assert_eq!(self.bob.prekeys.one_time_counts(), (4, 2));
        let reply = seal(&mut b, &self.bob, &self.alice, b"reply", &mut r);
        assert_eq!(&self.a.open(&reply).unwrap()[..], b"reply");
    }
}

/// Every bit of a prekey envelope outside its body (the routing header and the CBOR
/// framing) is flipped in turn and the result handed to `accept`; then a proptest sample
/// of bits inside the body (exhaustive would take minutes in debug builds: every flip
/// that decodes costs four X25519 and an ML-KEM decapsulation).
#[test]
fn bit_flips_of_a_prekey_envelope_are_refused_by_accept() {
    let f = std::cell::RefCell::new(PreKeyFixture::new(31));
    let (body_start, body_end) = {
        let f = f.borrow();
        let start = find(&f.cbor, &f.env.body);
        (start, start + f.env.body.len())
    };
    let total = f.borrow().cbor.len();
    for byte in (0..body_start).chain(body_end..total) {
        for b in 0..8 {
            f.borrow_mut().refuse(byte * 8 + b);
        }
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(body_start * 8..body_end * 8), |bit| {
            f.borrow_mut().refuse(bit);
            Ok(())
        })
        .unwrap();
    f.into_inner().finish();
}

/// An established pair in which Alice sends ordinary (non-prekey) messages.
fn established_ordinary(seed: u64) -> (Device, Device, Session, Session, StdRng) {
    let mut r = rng(seed);
    let (alice, bob, mut a, mut b) = established(&mut r);
    let reply = seal(&mut b, &bob, &alice, b"reply", &mut r);
    a.open(&reply).unwrap();
    assert!(!a.awaiting_first_reply());
    (alice, bob, a, b, r)
}

/// Every bit of an ordinary envelope's CBOR, header and body, flipped in turn: each
/// result fails to decode or fails to open, and the session is unchanged afterwards.
#[test]
fn every_bit_flip_of_an_ordinary_envelope_is_refused() {
    let (alice, bob, mut a, mut b, mut r) = established_ordinary(32);
    // One skipped key pending, so flips also probe the skipped-key path.
    let skipped = seal(&mut a, &alice, &bob, b"skipped", &mut r);
    let env = seal(&mut a, &alice, &bob, b"target", &mut r);
    let cbor = env.to_cbor().unwrap();
    let mut refused = 0;
    for bit in 0..cbor.len() * 8 {
        let bad = flipped(&cbor, bit);
        if let Some(e) = decode_tampered(&bad, &env, bit) {
            assert!(b.open(&e).is_err(), "bit {bit}: tampered envelope opened");
        }
        refused += 1;
    }
    // The body bytes directly, too (the same bytes, via the struct).
    for bit in 0..env.body.len() * 8 {
        let mut e = env.clone();
        e.body = flipped(&env.body, bit);
        assert!(
            b.open(&e).is_err(),
            "body bit {bit}: tampered envelope opened"
        );
        refused += 1;
    }
    assert_eq!(refused, (cbor.len() + env.body.len()) * 8);
    assert_eq!(
        b.skipped_key_count(),
        0,
        "no failure committed a skipped key"
    );
    assert_eq!(&b.open(&env).unwrap()[..], b"target");
    assert_eq!(&b.open(&skipped).unwrap()[..], b"skipped");
    let back = seal(&mut b, &bob, &alice, b"back", &mut r);
    assert_eq!(&a.open(&back).unwrap()[..], b"back");
}

/// Every bit of a later prekey envelope (the initiator still awaits its first reply),
/// routed as a client routes it: to the session when its base key matches, else to
/// `accept`. Each flip is refused and the session carries on.
#[test]
fn every_bit_flip_of_a_routed_prekey_envelope_is_refused() {
    let mut r = rng(33);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let mut a = initiate_with(&alice, &mut bob, false, &mut r);
    let first = seal(&mut a, &alice, &bob, b"first", &mut r);
    let second = seal(&mut a, &alice, &bob, b"second", &mut r);
    let mut bob = Party {
        dev: bob,
        session: None,
    };
    assert_eq!(receive(&mut bob, &first).unwrap(), b"first".to_vec());
    let cbor = second.to_cbor().unwrap();
    for bit in 0..cbor.len() * 8 {
        if let Some(e) = decode_tampered(&flipped(&cbor, bit), &second, bit) {
            if let Ok(pt) = receive(&mut bob, &e) {
                panic!(
                    "bit {bit} (byte {} = {:#04x}): tampered envelope opened as {pt:?}",
                    bit / 8,
                    cbor[bit / 8]
                );
            }
        }
    }
    assert_eq!(receive(&mut bob, &second).unwrap(), b"second".to_vec());
    let s = bob.session.as_mut().unwrap();
    let reply = seal(s, &bob.dev, &alice, b"reply", &mut r);
    assert_eq!(&a.open(&reply).unwrap()[..], b"reply");
}

// ---------------------------------------------------------------------------------------
// State at rest

impl World {
    /// Pickle both sessions under a fresh key and carry on with the restored ones.
    fn repickle(&mut self) {
        let key = PickleKey::generate(&mut self.rng);
        for p in [&mut self.alice, &mut self.bob] {
            if let Some(s) = p.session.take() {
                let skipped = s.skipped_key_count();
                let awaiting = s.awaiting_first_reply();
                let base = *s.base_key();
                let bytes = s.pickle(&key, &mut self.rng).unwrap();
                drop(s);
                let restored = Session::from_pickle(&bytes, &key).unwrap();
                assert_eq!(restored.skipped_key_count(), skipped);
                assert_eq!(restored.awaiting_first_reply(), awaiting);
                assert_eq!(*restored.base_key(), base);
                p.session = Some(restored);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Pickled and restored mid-conversation, with delayed messages (skipped keys)
    /// pending, both sessions carry on.
    #[test]
    fn pickled_mid_conversation_sessions_carry_on(
        seed in any::<u64>(),
        before in prop::collection::vec(turn(), 1..8),
        after in prop::collection::vec(turn(), 0..8),
    ) {
        let mut w = World::new(seed);
        for t in &before {
            let from_alice = t.from_alice || w.bob.session.is_none();
            w.burst(from_alice, &t.fates, t.shuffle_seed);
        }
        w.repickle();
        for t in &after {
            let from_alice = t.from_alice || w.bob.session.is_none();
            w.burst(from_alice, &t.fates, t.shuffle_seed);
        }
        w.flush();
        w.check_accounting();
        w.repickle();
        if w.bob.session.is_none() {
            w.burst(true, &[Fate::Deliver], 0);
        }
        w.burst(false, &[Fate::Deliver], 1);
        w.burst(true, &[Fate::Deliver], 2);
        w.check_accounting();
    }
}

/// Skipped keys survive a pickle: the restored session opens the late messages, each once.
#[test]
fn pickle_with_skipped_keys_pending() {
    let (alice, bob, mut a, mut b, mut r) = established_ordinary(41);
    let envs: Vec<Envelope> = (0..6)
        .map(|i| seal(&mut a, &alice, &bob, format!("m{i}").as_bytes(), &mut r))
        .collect();
    assert_eq!(&b.open(&envs[5]).unwrap()[..], b"m5");
    assert_eq!(&b.open(&envs[2]).unwrap()[..], b"m2");
    assert_eq!(b.skipped_key_count(), 4);
    let key = PickleKey::generate(&mut r);
    let bytes = b.pickle(&key, &mut r).unwrap();
    drop(b);
    let mut b = Session::from_pickle(&bytes, &key).unwrap();
    assert_eq!(b.skipped_key_count(), 4);
    for i in [4, 0, 3, 1] {
        assert_eq!(&b.open(&envs[i]).unwrap()[..], format!("m{i}").as_bytes());
    }
    for e in &envs {
        assert!(matches!(b.open(e), Err(DecryptError::Replay { .. })));
    }
    assert_eq!(b.skipped_key_count(), 0);
    // Restoring the same pickle again brings the used keys back: state at rest must be
    // replaced after each change, which is the caller's duty. The fresh copy still opens.
    let mut again = Session::from_pickle(&bytes, &key).unwrap();
    assert_eq!(&again.open(&envs[0]).unwrap()[..], b"m0");
    let reply = seal(&mut b, &bob, &alice, b"after restore", &mut r);
    assert_eq!(&a.open(&reply).unwrap()[..], b"after restore");
}

/// An initiator pickled before its first reply still sends prekey messages, which the
/// responder accepts.
#[test]
fn pickled_initiator_awaiting_reply() {
    let mut r = rng(42);
    let alice = Device::new(&mut r);
    let mut bob = Device::new(&mut r);
    let mut a = initiate_with(&alice, &mut bob, true, &mut r);
    let lost = seal(&mut a, &alice, &bob, b"lost", &mut r);
    let key = PickleKey::generate(&mut r);
    let bytes = a.pickle(&key, &mut r).unwrap();
    let mut a = Session::from_pickle(&bytes, &key).unwrap();
    assert!(a.awaiting_first_reply());
    let env = seal(&mut a, &alice, &bob, b"after restore", &mut r);
    assert_eq!(
        env.session_base_key().unwrap(),
        lost.session_base_key().unwrap()
    );
    let (mut b, pt) = accept(&bob.identity, &mut bob.prekeys, &env).unwrap();
    assert_eq!(&pt[..], b"after restore");
    assert_eq!(&b.open(&lost).unwrap()[..], b"lost");
}

/// Identity and prekey store pickles round-trip; `accept` works with a restored store,
/// which also remembers accepted base keys; a wrong key is an authentication failure.
#[test]
fn identity_and_prekey_pickles_round_trip() {
    let mut r = rng(43);
    let alice = Device::new(&mut r);
    let bob = Device::new(&mut r);
    let key = PickleKey::generate(&mut r);
    let wrong = PickleKey::generate(&mut r);

    let id_bytes = bob.identity.pickle(&key, &mut r).unwrap();
    let identity = IdentityKeyPair::from_pickle(&id_bytes, &key).unwrap();
    assert_eq!(identity.public(), bob.identity.public());
    assert_eq!(identity.device_id(), bob.identity.device_id());
    let sig = identity.sign(b"same key");
    assert!(bob.identity.public().verify(b"same key", &sig).is_ok());

    let pk_bytes = bob.prekeys.pickle(&key, &mut r).unwrap();
    let prekeys = PreKeySecrets::from_pickle(&pk_bytes, &key).unwrap();
    assert_eq!(prekeys.one_time_counts(), bob.prekeys.one_time_counts());
    assert_eq!(prekeys.current_signed(), bob.prekeys.current_signed());
    assert_eq!(
        prekeys.current_kem_last_resort(),
        bob.prekeys.current_kem_last_resort()
    );
    let mut bob = Device { identity, prekeys };

    // A session set up against the restored store, with a one-time prekey of each kind.
    let mut a = initiate_with(&alice, &mut bob, true, &mut r);
    let env = seal(&mut a, &alice, &bob, b"to the restored device", &mut r);
    let (mut b, pt) = accept(&bob.identity, &mut bob.prekeys, &env).unwrap();
    assert_eq!(&pt[..], b"to the restored device");
    let reply = seal(&mut b, &bob, &alice, b"reply", &mut r);
    assert_eq!(&a.open(&reply).unwrap()[..], b"reply");

    // Consumed prekeys and the accepted base key survive the next pickle.
    let counts = bob.prekeys.one_time_counts();
    let pk_bytes = bob.prekeys.pickle(&key, &mut r).unwrap();
    let mut restored = PreKeySecrets::from_pickle(&pk_bytes, &key).unwrap();
    assert_eq!(restored.one_time_counts(), counts);
    assert!(matches!(
        accept(&bob.identity, &mut restored, &env),
        Err(SetupError::Replay)
    ));

    // Wrong key.
    assert!(matches!(
        IdentityKeyPair::from_pickle(&id_bytes, &wrong),
        Err(PickleError::Authentication)
    ));
    assert!(matches!(
        PreKeySecrets::from_pickle(&pk_bytes, &wrong),
        Err(PickleError::Authentication)
    ));
    let s_bytes = b.pickle(&key, &mut r).unwrap();
    assert!(matches!(
        Session::from_pickle(&s_bytes, &wrong),
        Err(PickleError::Authentication)
    ));
    // A pickle of another kind is refused before decryption.
    assert!(matches!(
        Session::from_pickle(&id_bytes, &key),
        Err(PickleError::WrongKind { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Any single-bit change to a session pickle, and any wrong key, fails to restore.
    #[test]
    fn altered_session_pickles_are_refused(
        bit in any::<prop::sample::Index>(),
        wrong_key in any::<[u8; 32]>(),
    ) {
        let mut r = rng(44);
        let (_alice, _bob, a, _b) = established(&mut r);
        let key = PickleKey::from_bytes([7u8; 32]);
        let bytes = a.pickle(&key, &mut r).unwrap();
        let bit = bit.index(bytes.len() * 8);
        prop_assert!(Session::from_pickle(&flipped(&bytes, bit), &key).is_err());
        prop_assume!(wrong_key != [7u8; 32]);
        prop_assert!(matches!(
            Session::from_pickle(&bytes, &PickleKey::from_bytes(wrong_key)),
            Err(PickleError::Authentication)
        ));
    }
}
