//! `sealpost-relay` binary.
fn main() {}
