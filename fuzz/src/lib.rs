//! Fixed, deterministic protocol state shared by the fuzz targets and the seed-corpus
//! generator: Bob's established session with Alice and Bob's prekey store, kept as
//! pickles so that every fuzz input starts from the same state.

use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, RoutingHeader};
use sealpost_protocol::{accept, initiate, IdentityKeyPair, PickleKey, PreKeySecrets, Session};

/// Everything a target needs, plus valid envelopes to seed the corpus with.
pub struct Fixture {
    /// Bob's identity.
    pub bob: IdentityKeyPair,
    /// Bob's session with Alice, pickled under [`Fixture::key`].
    pub session: Vec<u8>,
    /// Bob's prekey store, pickled under [`Fixture::key`].
    pub prekeys: Vec<u8>,
    /// Envelopes Bob's session or `accept` would take: a later prekey message, ordinary
    /// messages from Alice, and a prekey message from Carol starting a new session.
    pub samples: Vec<Envelope>,
}

/// The pickle key of the fixture.
pub fn key() -> PickleKey {
    PickleKey::from_bytes([0x5e; 32])
}

fn header(from: &IdentityKeyPair, to: &IdentityKeyPair, rng: &mut StdRng) -> RoutingHeader {
    RoutingHeader::new(
        from.device_id(),
        to.device_id(),
        EnvelopeKind::Chat,
        1_700_000_000_000,
        rng,
    )
}

/// Build the fixture. Returns `None` only if the protocol refuses its own happy path.
pub fn fixture() -> Option<Fixture> {
    let mut rng = StdRng::seed_from_u64(0x5ea1);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = IdentityKeyPair::generate(&mut rng);
    let carol = IdentityKeyPair::generate(&mut rng);
    let mut store = PreKeySecrets::new();
    store.rotate_signed(&bob, &mut rng);
    store.generate_one_time(&bob, 2, &mut rng);
    store.generate_kem_one_time(&bob, 1, &mut rng);
    store.rotate_kem_last_resort(&bob, &mut rng);

    let bundle = store.bundle_for_test(&bob, true)?;
    let mut a = initiate(&alice, &bundle, &mut rng).ok()?;
    let first = a
        .seal(header(&alice, &bob, &mut rng), b"hello", &mut rng)
        .ok()?;
    let second = a
        .seal(
            header(&alice, &bob, &mut rng),
            b"second prekey message",
            &mut rng,
        )
        .ok()?;
    let (mut b, _) = accept(&bob, &mut store, &first).ok()?;
    let reply = b
        .seal(header(&bob, &alice, &mut rng), b"reply", &mut rng)
        .ok()?;
    a.open(&reply).ok()?;
    let key = key();
    let session = b.pickle(&key, &mut rng).ok()?;
    let prekeys = store.pickle(&key, &mut rng).ok()?;

    let mut samples = vec![second];
    for text in [&b"ordinary"[..], b"", &[0x42; 300][..]] {
        samples.push(
            a.seal(header(&alice, &bob, &mut rng), text, &mut rng)
                .ok()?,
        );
    }
    // Carol starts a session with Bob (last-resort KEM prekey, no one-time prekey).
    let bundle = store.bundle_for_test(&bob, false)?;
    let mut c = initiate(&carol, &bundle, &mut rng).ok()?;
    samples.push(
        c.seal(header(&carol, &bob, &mut rng), b"from carol", &mut rng)
            .ok()?,
    );
    Some(Fixture {
        bob,
        session,
        prekeys,
        samples,
    })
}

/// Bob's session and prekey store, fresh from the pickles.
pub fn restore(f: &Fixture) -> Option<(Session, PreKeySecrets)> {
    let key = key();
    Some((
        Session::from_pickle(&f.session, &key).ok()?,
        PreKeySecrets::from_pickle(&f.prekeys, &key).ok()?,
    ))
}
