//! # Sealpost client library
//!
//! What every Sealpost device runs. This version holds the relay connection
//! ([`net`]); sessions, local encrypted state and the CLI build on it.

pub mod net;
