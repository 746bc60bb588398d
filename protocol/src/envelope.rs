//! The sealed envelope: what the relay may see, and the opaque body it carries.
//!
//! The relay sees the routing header (protocol version, recipient device, sender device,
//! a random 128-bit message id, a timestamp and a kind) and nothing else. The header is
//! bound into every message's associated data, so the relay cannot re-address, re-date
//! or re-label an envelope without the recipient noticing.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::codec::{self, boxed_bytes_array, bytes_array};
use crate::crypto::MLKEM768_CIPHERTEXT_LEN;
use crate::error::{DecodeError, EncodeError};
use crate::identity::{DeviceId, PublicIdentity};
use crate::PROTOCOL_VERSION;

/// Largest plaintext one envelope carries (larger content goes as an attachment).
pub const MAX_PLAINTEXT_LEN: usize = 64 * 1024;
/// Largest envelope body, in bytes (padded plaintext, tag, ratchet header and, for the
/// first messages of a session, the PQXDH initial data).
pub const MAX_BODY_LEN: usize = 72 * 1024;
/// Length of the routing header as bound into associated data.
pub const ROUTING_AD_LEN: usize = 2 + 16 + 16 + 16 + 8 + 2;

/// A random 128-bit message id, chosen by the sender. Also the relay's idempotency key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(#[serde(with = "bytes_array")] pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 32 hex digits ([`crate::hexid::HexBytes`]).
    pub fn from_hex(s: &str) -> Result<Self, crate::hexid::HexError> {
        s.parse::<crate::hexid::Hex16>().map(|h| Self(h.0))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

/// What an envelope carries, as far as the relay needs to know. Encoded as an unsigned
/// integer; unknown values are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum EnvelopeKind {
    /// A chat message.
    Chat = 1,
    /// A delivery or read receipt.
    Receipt = 2,
    /// An account notice from staff.
    Notice = 3,
    /// An attachment descriptor.
    Attachment = 4,
    /// A copy of the sender's own message for its other devices.
    Sync = 5,
    /// An approval or approval request (sensitive).
    Approval = 6,
    /// A device addition, removal or freeze (sensitive).
    DeviceChange = 7,
    /// A payment, deposit or account instruction (sensitive).
    Instruction = 8,
    /// The firm archive's copy of a message between a client and the firm (§22): only to
    /// the archive account the relay's verified roster names.
    Archive = 9,
}

impl EnvelopeKind {
    /// All kinds, in code order.
    pub const ALL: [EnvelopeKind; 9] = [
        Self::Chat,
        Self::Receipt,
        Self::Notice,
        Self::Attachment,
        Self::Sync,
        Self::Approval,
        Self::DeviceChange,
        Self::Instruction,
        Self::Archive,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The kind's name for people and JSON (`chat`, `device_change`, ...), never Rust's
    /// enum name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Receipt => "receipt",
            Self::Notice => "notice",
            Self::Attachment => "attachment",
            Self::Sync => "sync",
            Self::Approval => "approval",
            Self::DeviceChange => "device_change",
            Self::Instruction => "instruction",
            Self::Archive => "archive",
        }
    }

    /// Kinds a device on probation may not send.
    pub fn is_sensitive(self) -> bool {
        matches!(
            self,
            Self::Approval | Self::DeviceChange | Self::Instruction
        )
    }
}

impl TryFrom<u16> for EnvelopeKind {
    type Error = DecodeError;
    fn try_from(v: u16) -> Result<Self, DecodeError> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.code() == v)
            .ok_or(DecodeError::InvalidField {
                field: "envelope kind",
                reason: "unknown kind code",
            })
    }
}

impl Serialize for EnvelopeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.code())
    }
}

impl<'de> Deserialize<'de> for EnvelopeKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u16::deserialize(d)?;
        EnvelopeKind::try_from(v)
            .map_err(|_| serde::de::Error::custom(format!("unknown envelope kind {v}")))
    }
}

/// The routing header: everything the relay sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingHeader {
    /// Protocol version (1).
    pub version: u16,
    /// Recipient device.
    pub recipient: DeviceId,
    /// Sender device.
    pub sender: DeviceId,
    /// Random message id.
    pub message_id: MessageId,
    /// Sender's clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Kind.
    pub kind: EnvelopeKind,
}

impl RoutingHeader {
    /// A header for a new message with a fresh random id.
    pub fn new<R: RngCore + CryptoRng>(
        sender: DeviceId,
        recipient: DeviceId,
        kind: EnvelopeKind,
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            recipient,
            sender,
            message_id: MessageId::random(rng),
            timestamp_ms,
            kind,
        }
    }

    /// The fixed 60-byte encoding bound into associated data:
    /// `version u16 BE || recipient 16 || sender 16 || message id 16 || timestamp u64 BE || kind u16 BE`.
    pub fn ad_bytes(&self) -> [u8; ROUTING_AD_LEN] {
        let mut out = [0u8; ROUTING_AD_LEN];
        out[0..2].copy_from_slice(&self.version.to_be_bytes());
        out[2..18].copy_from_slice(&self.recipient.0);
        out[18..34].copy_from_slice(&self.sender.0);
        out[34..50].copy_from_slice(&self.message_id.0);
        out[50..58].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[58..60].copy_from_slice(&self.kind.code().to_be_bytes());
        out
    }
}

/// A sealed envelope: routing header and opaque body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// What the relay sees.
    pub header: RoutingHeader,
    /// The encrypted body, at most [`MAX_BODY_LEN`] bytes. Its CBOR structure is given in
    /// `docs/PROTOCOL.md`; to the relay it is opaque.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Envelope {
    /// Check the bounds that decoding cannot express (body size, version).
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.header.version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                got: self.header.version,
                supported: PROTOCOL_VERSION,
            });
        }
        if self.body.len() > MAX_BODY_LEN {
            return Err(DecodeError::TooLarge {
                what: "envelope body",
                got: self.body.len(),
                max: MAX_BODY_LEN,
            });
        }
        Ok(())
    }

    /// Encode as standalone CBOR (for storage or fuzzing).
    pub fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode("envelope", self, MAX_BODY_LEN + 1024)
    }

    /// Decode standalone CBOR, with bounds checked.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
        let env: Envelope = codec::decode_canonical("envelope", bytes, MAX_BODY_LEN + 1024)?;
        env.validate()?;
        Ok(env)
    }

    /// If this envelope starts a session, the initiator's base key (which identifies the
    /// session on both sides); `None` for an ordinary message.
    pub fn session_base_key(&self) -> Result<Option<[u8; 32]>, DecodeError> {
        Ok(match Body::decode(&self.body)? {
            Body::PreKey(p) => Some(p.base_key),
            Body::Message(_) => None,
        })
    }
}

/// A Double Ratchet message: the ratchet header in the clear, then the AEAD ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RatchetMessage {
    /// Sender's current ratchet public key.
    #[serde(with = "bytes_array")]
    pub(crate) dh: [u8; 32],
    /// Length of the sender's previous sending chain.
    pub(crate) pn: u32,
    /// Index of this message in the current sending chain.
    pub(crate) n: u32,
    /// ChaCha20-Poly1305 ciphertext and tag of the padded plaintext.
    #[serde(with = "serde_bytes")]
    pub(crate) ct: Vec<u8>,
}

/// The first messages of a session, until the responder answers: PQXDH data plus the
/// ratchet message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreKeyMessage {
    /// Initiator's identity.
    pub(crate) identity: PublicIdentity,
    /// Initiator's ephemeral X25519 key (EK_A), the session's base key.
    #[serde(with = "bytes_array")]
    pub(crate) base_key: [u8; 32],
    /// Id of the responder's signed prekey used.
    pub(crate) signed_prekey_id: u32,
    /// Id of the responder's one-time prekey used, if any.
    pub(crate) one_time_prekey_id: Option<u32>,
    /// Id of the responder's ML-KEM prekey used.
    pub(crate) kem_prekey_id: u32,
    /// ML-KEM-768 ciphertext.
    #[serde(with = "boxed_bytes_array")]
    pub(crate) kem_ciphertext: Box<[u8; MLKEM768_CIPHERTEXT_LEN]>,
    /// The ratchet message.
    pub(crate) message: RatchetMessage,
}

impl PreKeyMessage {
    /// SHA-256 over the PQXDH data other than the identity and base key (which `open`
    /// compares directly). The responder's session remembers it from the accepted
    /// message, so that a later initial message of the session cannot carry altered setup
    /// data unnoticed (the ratchet message's associated data does not cover it).
    pub(crate) fn setup_digest(&self) -> [u8; 32] {
        let mut otk = [0u8; 5];
        if let Some(id) = self.one_time_prekey_id {
            otk[0] = 1;
            otk[1..].copy_from_slice(&id.to_be_bytes());
        }
        crate::crypto::sha256(&[
            b"Sealpost_PreKeySetup_v1",
            &self.signed_prekey_id.to_be_bytes(),
            &otk,
            &self.kem_prekey_id.to_be_bytes(),
            &self.kem_ciphertext[..],
        ])
    }
}

/// An envelope body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) enum Body {
    /// Starts (or continues, until answered) a session.
    #[serde(rename = "prekey")]
    PreKey(Box<PreKeyMessage>),
    /// An ordinary message in an established session.
    #[serde(rename = "message")]
    Message(RatchetMessage),
}

impl Body {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_canonical("envelope body", bytes, MAX_BODY_LEN)
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        // Same bytes as `codec::encode`, written into a buffer sized up front so the
        // ciphertext is copied once instead of through a chain of reallocations.
        let capacity = match self {
            Body::PreKey(p) => p.message.ct.len() + MLKEM768_CIPHERTEXT_LEN + 320,
            Body::Message(m) => m.ct.len() + 96,
        };
        let mut out = Vec::with_capacity(capacity);
        codec::encode_into("envelope body", self, &mut out)?;
        if out.len() > MAX_BODY_LEN {
            return Err(EncodeError::TooLarge {
                what: "envelope body",
                got: out.len(),
                max: MAX_BODY_LEN,
            });
        }
        Ok(out)
    }
}
