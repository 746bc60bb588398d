//! Arbitrary bytes as a stream of length-prefixed frames (through `FrameReader`) and as
//! one frame payload (through `decode_frame`). Nothing may panic, and a frame that decodes
//! must survive `encode_frame` and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_protocol::wire::{decode_frame, encode_frame, Frame, FrameReader, FRAME_PREFIX_LEN};

fn round_trip(frame: &Frame) {
    let bytes = match encode_frame(frame) {
        Ok(b) => b,
        Err(e) => panic!("a decoded frame does not re-encode: {e}"),
    };
    match decode_frame(&bytes[FRAME_PREFIX_LEN..]) {
        Ok(again) => assert_eq!(&again, frame, "re-encoded frame decodes differently"),
        Err(e) => panic!("a re-encoded frame does not decode: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        round_trip(&frame);
    }
    let mut reader = FrameReader::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Ok(n) = reader.push(rest) else { return };
        rest = &rest[n..];
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => round_trip(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if n == 0 {
            return;
        }
    }
});
