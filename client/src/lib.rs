//! # Sealpost client library
//!
//! What every Sealpost device runs:
//!
//! * [`net`]: the QUIC connection to the relay, with the relay's CA pinned and
//!   authentication bound to the TLS channel.
//! * [`state`]: the device's local state in one directory, encrypted at rest under a key
//!   derived from a passphrase with Argon2id, written atomically.
//! * [`client`]: sessions per peer device, fan-out to every device of an account and to
//!   this account's other devices, receipts, deduplication, device-change detection,
//!   prekey upkeep.
//! * [`org`]: the organisation's offline tooling: the root key store (encrypted at rest)
//!   and roster specification files.
//!
//! The `sealpost` CLI (`src/main.rs`) is a thin shell over [`client::Client`].

pub mod attachments;
pub mod client;
pub mod net;
pub mod org;
pub mod state;

pub use client::{Client, ClientError, Event, SendReport};
