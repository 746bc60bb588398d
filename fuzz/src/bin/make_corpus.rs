//! Write seed inputs for the fuzz targets: valid envelopes of the fixture (standalone
//! CBOR) and valid frames (with their length prefix).
//!
//! Usage, from `fuzz/`: `cargo run --bin make_corpus` (creates `corpus/<target>/seed-*`).

use std::fs;
use std::path::Path;

use sealpost_fuzz::fixture;
use sealpost_protocol::wire::{encode_frame, Frame, FrameBody};

fn write(target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let f = fixture().ok_or("fixture")?;
    for (i, env) in f.samples.iter().enumerate() {
        let cbor = env.to_cbor()?;
        write("open_envelope", &format!("seed-envelope-{i}"), &cbor)?;
        write("cbor_codec", &format!("seed-envelope-{i}"), &cbor)?;
        let frame = encode_frame(&Frame::new(
            i as u64,
            FrameBody::Deliver {
                envelope: env.clone(),
            },
        ))?;
        write("decode_frame", &format!("seed-deliver-{i}"), &frame)?;
    }
    let mut stream = Vec::new();
    for (i, body) in [FrameBody::Ping, FrameBody::Pong].into_iter().enumerate() {
        let frame = encode_frame(&Frame::new(i as u64, body))?;
        write("decode_frame", &format!("seed-small-{i}"), &frame)?;
        write("decode_frame", &format!("seed-payload-{i}"), &frame[4..])?;
        stream.extend_from_slice(&frame);
    }
    write("decode_frame", "seed-stream", &stream)?;
    println!("seed corpus written under fuzz/corpus/");
    Ok(())
}
