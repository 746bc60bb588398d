//! Errors, typed by operation. Each says what went wrong and, where it helps, the
//! expected and received values. None carries secret material.

use crate::crypto::CryptoError;

/// Decoding bytes from a peer (a frame, an envelope body, a key) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared or actual length exceeds the bound for this kind of data.
    #[error("{what} is {got} bytes, more than the maximum of {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The bound.
        max: usize,
    },
    /// Fewer bytes than the length prefix announced, or than a minimal frame needs.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The protocol version is not one this implementation speaks.
    #[error("unsupported protocol version {got} (this implementation speaks {supported})")]
    UnsupportedVersion {
        /// The version received.
        got: u16,
        /// The version supported.
        supported: u16,
    },
    /// The frame type is not known.
    #[error("unknown frame type {0:?}")]
    UnknownFrameType(String),
    /// The CBOR is malformed or does not match the expected structure.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The codec's description (no payload bytes).
        detail: String,
    },
    /// A field decoded but its value is not allowed.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// Encoding failed (only on values that exceed a bound).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded value exceeds the bound for its kind.
    #[error("{what} would be {got} bytes, more than the maximum of {max}")]
    TooLarge {
        /// What was being encoded.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The bound.
        max: usize,
    },
    /// The codec refused the value.
    #[error("cannot encode {what}: {detail}")]
    Codec {
        /// What was being encoded.
        what: &'static str,
        /// The codec's description.
        detail: String,
    },
}

/// Setting up a session (PQXDH) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A prekey's signature by the device identity key does not verify.
    #[error("signature on the {which} prekey {id} does not verify")]
    BadPreKeySignature {
        /// Which prekey.
        which: &'static str,
        /// Its id.
        id: u32,
    },
    /// A Diffie-Hellman result was all zeros.
    #[error("low-order X25519 point in {0}")]
    LowOrderPoint(&'static str),
    /// The bundle's device id does not match its identity keys.
    #[error("bundle device id does not match its identity keys")]
    DeviceIdMismatch,
    /// The KEM prekey is malformed.
    #[error("ML-KEM prekey rejected: {0}")]
    BadKemKey(CryptoError),
    /// The responder no longer holds the prekey the initiator used.
    #[error("unknown or already used {which} prekey {id}")]
    UnknownPreKey {
        /// Which prekey.
        which: &'static str,
        /// Its id.
        id: u32,
    },
    /// The initial message is addressed to another device or comes from an unexpected one.
    #[error("initial message is for device {got}, this device is {expected}")]
    WrongRecipient {
        /// This device.
        expected: crate::identity::DeviceId,
        /// The envelope's recipient.
        got: crate::identity::DeviceId,
    },
    /// A session with this base key was already accepted: the initial message is a replay.
    #[error("initial message replayed: a session with this base key was already accepted")]
    Replay,
    /// The envelope is not an initial (prekey) message.
    #[error("envelope does not start a session")]
    NotAPreKeyMessage,
    /// The envelope's sender id does not match the identity in the prekey message.
    #[error("envelope sender does not match the initiator identity")]
    SenderMismatch,
    /// A primitive refused an input.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The body did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The first message did not decrypt.
    #[error("first message: {0}")]
    Decrypt(#[from] DecryptError),
}

/// Encrypting a message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    /// The plaintext exceeds [`crate::envelope::MAX_PLAINTEXT_LEN`].
    #[error("plaintext is {got} bytes, more than the maximum of {max}")]
    PlaintextTooLarge {
        /// Its size.
        got: usize,
        /// The bound.
        max: usize,
    },
    /// The routing header names other devices than this session's.
    #[error("routing header does not match this session's devices")]
    WrongDevices,
    /// The sending chain reached its message limit; the session must be renewed.
    #[error("sending chain exhausted after {0} messages")]
    ChainExhausted(u32),
    /// The remote ratchet key yields a low-order result.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Decrypting a message failed. The session state is unchanged by a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The envelope is addressed to another device.
    #[error("envelope is for device {got}, this device is {expected}")]
    WrongRecipient {
        /// This device.
        expected: crate::identity::DeviceId,
        /// The envelope's recipient.
        got: crate::identity::DeviceId,
    },
    /// The envelope names a sender other than this session's peer.
    #[error("envelope is from device {got}, this session is with {expected}")]
    WrongSender {
        /// The session's peer.
        expected: crate::identity::DeviceId,
        /// The envelope's sender.
        got: crate::identity::DeviceId,
    },
    /// This message was already decrypted (its key was used and erased).
    #[error("replayed message: chain {chain}, index {index} was already decrypted")]
    Replay {
        /// The first bytes of the sender's ratchet key, hex.
        chain: String,
        /// The message index in that chain.
        index: u32,
    },
    /// The message is further ahead in its chain than the skip bound allows.
    #[error("message gap of {got} exceeds the maximum of {max}")]
    TooBigGap {
        /// The gap.
        got: u64,
        /// The bound ([`crate::ratchet::MAX_MESSAGE_GAP`]).
        max: u32,
    },
    /// The message belongs to a chain whose remaining keys were dropped.
    #[error("message key for an old chain is no longer held")]
    KeyNotHeld,
    /// Authentication failed: the envelope was altered, or is not for this session.
    #[error("message authentication failed")]
    Authentication,
    /// The decrypted padding is malformed.
    #[error("malformed padding")]
    BadPadding,
    /// The body did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A primitive refused an input.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// This body is an initial (prekey) message for a session not known here.
    #[error("prekey message for a session this device does not hold")]
    UnknownSession,
}

/// Sealing or opening state at rest failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    /// Wrong key, or the data was altered.
    #[error("state at rest does not authenticate: wrong key or corrupted data")]
    Authentication,
    /// The data is too short or of an unknown format version.
    #[error("state at rest has unknown format (version byte {0})")]
    UnknownFormat(u8),
    /// The data is for another kind of object.
    #[error("state at rest holds a {got}, expected a {expected}")]
    WrongKind {
        /// Expected kind.
        expected: &'static str,
        /// Kind found.
        got: String,
    },
    /// The decrypted contents are inconsistent.
    #[error("state at rest is inconsistent: {0}")]
    Invalid(&'static str),
    /// The decrypted contents did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
