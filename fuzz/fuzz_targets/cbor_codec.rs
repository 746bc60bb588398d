//! Arbitrary bytes through the standalone envelope codec: decoding never panics, and the
//! encoding is canonical, so whatever decodes re-encodes to exactly the input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_protocol::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_cbor(data) {
        let again = env.to_cbor().expect("a decoded envelope re-encodes");
        assert_eq!(again, data, "decoding accepted a non-canonical encoding");
        assert!(env.validate().is_ok());
        let _ = env.session_base_key();
    }
});
