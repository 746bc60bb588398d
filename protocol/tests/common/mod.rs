//! Two in-memory parties for protocol tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, RoutingHeader};
use sealpost_protocol::{accept, initiate, IdentityKeyPair, PreKeySecrets, Session};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A device with identity and prekeys.
pub struct Device {
    pub identity: IdentityKeyPair,
    pub prekeys: PreKeySecrets,
}

impl Device {
    pub fn new(rng: &mut StdRng) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeySecrets::new();
        prekeys.rotate_signed(&identity, rng);
        prekeys.generate_one_time(&identity, 5, rng);
        prekeys.generate_kem_one_time(&identity, 3, rng);
        prekeys.rotate_kem_last_resort(&identity, rng);
        Self { identity, prekeys }
    }
}

pub fn header(from: &Device, to: &Device, rng: &mut StdRng) -> RoutingHeader {
    RoutingHeader::new(
        from.identity.device_id(),
        to.identity.device_id(),
        EnvelopeKind::Chat,
        1_700_000_000_000,
        rng,
    )
}

/// Alice initiates with Bob's bundle; returns Alice's session.
pub fn initiate_with(
    alice: &Device,
    bob: &mut Device,
    use_one_time: bool,
    rng: &mut StdRng,
) -> Session {
    let bundle = bob
        .prekeys
        .bundle_for_test(&bob.identity, use_one_time)
        .unwrap();
    initiate(&alice.identity, &bundle, rng).unwrap()
}

/// Full setup: Alice sends "hello", Bob accepts. Returns (alice, bob, first envelope).
pub fn established(rng: &mut StdRng) -> (Device, Device, Session, Session) {
    let alice = Device::new(rng);
    let mut bob = Device::new(rng);
    let mut a = initiate_with(&alice, &mut bob, true, rng);
    let env = a.seal(header(&alice, &bob, rng), b"hello", rng).unwrap();
    let (b, pt) = accept(&bob.identity, &mut bob.prekeys, &env).unwrap();
    assert_eq!(&pt[..], b"hello");
    (alice, bob, a, b)
}

pub fn seal(s: &mut Session, from: &Device, to: &Device, msg: &[u8], rng: &mut StdRng) -> Envelope {
    s.seal(header(from, to, rng), msg, rng).unwrap()
}
