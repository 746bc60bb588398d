//! Arbitrary bytes through the transparency log's parsers and proof verifiers
//! (docs/PROTOCOL.md §20): a signed note or checkpoint, a leaf, and proofs with arbitrary
//! sizes and hashes. Nothing panics; a parsed checkpoint prints back to a note that parses
//! to the same value; a decoded leaf re-encodes to exactly the input (canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_protocol::tlog::{verify_consistency, verify_inclusion, LogLeaf, SignedCheckpoint};

fuzz_target!(|data: &[u8]| {
    if let Ok(cp) = SignedCheckpoint::parse(data) {
        let again = SignedCheckpoint::parse(cp.to_text().as_bytes()).expect("a parsed note reparses");
        assert_eq!(again, cp);
    }
    if let Ok(leaf) = LogLeaf::from_bytes(data) {
        assert_eq!(leaf.to_bytes().expect("a decoded leaf re-encodes"), data);
    }
    if data.len() >= 16 {
        let (sizes, rest) = data.split_at(16);
        let a = u64::from_be_bytes(sizes[..8].try_into().unwrap_or_default());
        let b = u64::from_be_bytes(sizes[8..].try_into().unwrap_or_default());
        let hashes: Vec<[u8; 32]> = rest
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or_default())
            .collect();
        let first = hashes.first().copied().unwrap_or_default();
        let _ = verify_inclusion(&first, a, b, &hashes, &first);
        let _ = verify_consistency(a, b, &first, &first, &hashes);
    }
});
