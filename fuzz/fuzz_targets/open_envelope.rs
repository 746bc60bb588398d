//! Arbitrary bytes as a standalone envelope, opened by a fixed established session and
//! handed to `accept` of a fixed device. Nothing may panic; anything that opens must be
//! addressed from Alice (or a valid new initiator) to Bob.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sealpost_fuzz::{fixture, restore, Fixture};
use sealpost_protocol::accept;
use sealpost_protocol::envelope::Envelope;

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let f = FIXTURE.get_or_init(|| fixture().expect("fixture"));
    let Ok(env) = Envelope::from_cbor(data) else {
        return;
    };
    let Some((mut session, mut prekeys)) = restore(f) else {
        panic!("fixture pickles do not restore")
    };
    let _ = env.session_base_key();
    if session.open(&env).is_ok() {
        assert_eq!(env.header.recipient, f.bob.device_id());
        assert_eq!(env.header.sender, session.remote_device());
    }
    if let Ok((s, _)) = accept(&f.bob, &mut prekeys, &env) {
        assert_eq!(env.header.recipient, f.bob.device_id());
        assert_eq!(env.header.sender, s.remote_device());
        // The same initial message never opens a second session.
        assert!(accept(&f.bob, &mut prekeys, &env).is_err());
    }
});
