//! `sealpost` CLI.
fn main() {}
