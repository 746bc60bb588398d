//! # Sealpost protocol core
//!
//! Everything a Sealpost device and the relay agree on, with no I/O: no sockets, no
//! files, no clock and no global RNG. Callers pass in bytes, the time and a
//! [`rand_core::CryptoRng`], so every part can be exercised with two in-memory parties.
//!
//! * [`identity`]: device identities (Ed25519 + X25519), device and account ids,
//!   fingerprints and safety numbers.
//! * [`prekeys`]: signed X25519 prekeys, one-time X25519 and ML-KEM-768 prekeys, bundles.
//! * [`handshake`]: PQXDH-style hybrid session setup.
//! * [`ratchet`]: the Double Ratchet session.
//! * [`envelope`]: the sealed envelope and its routing header; [`padding`]: length buckets.
//! * [`wire`]: the versioned CBOR frames between a device and the relay.
//! * [`pickle`]: encrypted state at rest.
//! * [`attachment`]: chunked STREAM encryption of attachments (files stored as relay blobs).
//! * [`tlog`]: the transparency log (RFC 9162 Merkle tree, signed checkpoints, leaves).
//! * [`hexid`]: ids and fingerprints written as hex, one parser.
//! * [`crypto`]: typed wrappers over the primitives; [`codec`]: the one CBOR module.
//!
//! The full specification is `docs/PROTOCOL.md` in the repository.

#![warn(missing_docs)]

pub mod attachment;
pub mod codec;
pub mod content;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod handshake;
pub mod hexid;
pub mod identity;
pub mod padding;
pub mod pickle;
pub mod prekeys;
pub mod ratchet;
pub mod tlog;
pub mod trust;
pub mod wire;

/// The protocol version this crate speaks, in frames and envelopes.
pub const PROTOCOL_VERSION: u16 = 1;

pub use envelope::{Envelope, EnvelopeKind, MessageId, RoutingHeader};
pub use error::{DecodeError, DecryptError, EncodeError, EncryptError, PickleError, SetupError};
pub use handshake::{accept, accept_staged, initiate, PreKeyUse};
pub use identity::{AccountId, DeviceId, IdentityKeyPair, PublicIdentity, SafetyNumber};
pub use pickle::PickleKey;
pub use prekeys::{PreKeyBundle, PreKeySecrets};
pub use ratchet::Session;
