//! Device identities, accounts, fingerprints and safety numbers.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::bytes_array;
use crate::crypto::{self, CryptoError};
use crate::error::DecodeError;

/// Domain label for device ids.
const DEVICE_ID_LABEL: &[u8] = b"Sealpost_DeviceId_v1";
/// Domain label for fingerprints.
const FINGERPRINT_LABEL: &[u8] = b"Sealpost_Fingerprint_v1";
/// Version prefix of the safety-number computation.
const SAFETY_NUMBER_VERSION: [u8; 2] = [0, 1];
/// SHA-512 iterations per safety-number half (as in Signal).
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5200;
/// Longest account id, in bytes.
pub const MAX_ACCOUNT_ID_LEN: usize = 64;
/// Most devices in one safety-number computation (and per account).
pub const MAX_DEVICES_PER_ACCOUNT: usize = 16;

/// A device's identity key pair: an Ed25519 signing key and an X25519 key.
///
/// Secret: zeroized on drop, no `Debug`, serialised only through [`crate::pickle`].
pub struct IdentityKeyPair {
    signing: SigningKey,
    dh: x25519_dalek::StaticSecret,
    public: PublicIdentity,
}

impl ZeroizeOnDrop for IdentityKeyPair {}

impl IdentityKeyPair {
    /// Generate a fresh identity from the caller's RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let signing = SigningKey::generate(rng);
        let (dh, dh_public) = crypto::x25519_generate(rng);
        let public = PublicIdentity::from_parts(signing.verifying_key(), dh_public);
        Self {
            signing,
            dh,
            public,
        }
    }

    /// Rebuild from the two 32-byte secrets (used when opening a pickle).
    pub(crate) fn from_secrets(signing: &[u8; 32], dh: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(signing);
        let dh = x25519_dalek::StaticSecret::from(*dh);
        let public =
            PublicIdentity::from_parts(signing.verifying_key(), x25519_dalek::PublicKey::from(&dh));
        Self {
            signing,
            dh,
            public,
        }
    }

    /// The two secrets, for the pickle only.
    pub(crate) fn secret_bytes(&self) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        (
            Zeroizing::new(self.signing.to_bytes()),
            Zeroizing::new(self.dh.to_bytes()),
        )
    }

    /// The public half.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.public.device_id()
    }

    /// Sign `message` with the identity key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        crypto::ed25519_sign(&self.signing, message)
    }

    pub(crate) fn dh_secret(&self) -> &x25519_dalek::StaticSecret {
        &self.dh
    }
}

/// The public identity of a device: Ed25519 verifying key and X25519 key.
///
/// Decoding checks that the Ed25519 key is a valid point not of small order.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    signing: VerifyingKey,
    dh: x25519_dalek::PublicKey,
    device_id: DeviceId,
}

impl PublicIdentity {
    fn from_parts(signing: VerifyingKey, dh: x25519_dalek::PublicKey) -> Self {
        let device_id = DeviceId::derive(signing.as_bytes(), dh.as_bytes());
        Self {
            signing,
            dh,
            device_id,
        }
    }

    /// Parse from the two public keys.
    pub fn from_bytes(signing: &[u8; 32], dh: &[u8; 32]) -> Result<Self, CryptoError> {
        let signing = crypto::ed25519_public(signing)?;
        Ok(Self::from_parts(
            signing,
            x25519_dalek::PublicKey::from(*dh),
        ))
    }

    /// The Ed25519 verifying key.
    pub fn signing_key(&self) -> &VerifyingKey {
        &self.signing
    }

    /// The Ed25519 key as bytes.
    pub fn signing_bytes(&self) -> &[u8; 32] {
        self.signing.as_bytes()
    }

    /// The X25519 key.
    pub fn dh_key(&self) -> &x25519_dalek::PublicKey {
        &self.dh
    }

    /// The X25519 key as bytes.
    pub fn dh_bytes(&self) -> &[u8; 32] {
        self.dh.as_bytes()
    }

    /// The device id derived from both keys.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// Verify `signature` over `message` by this identity.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        crypto::ed25519_verify(&self.signing, message, signature)
    }

    /// SHA-256 fingerprint over both public keys.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(crypto::sha256(&[
            FINGERPRINT_LABEL,
            self.signing_bytes(),
            self.dh_bytes(),
        ]))
    }

    /// The 64 bytes `ed25519 || x25519`, as bound into associated data.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.signing_bytes());
        out[32..].copy_from_slice(self.dh_bytes());
        out
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({})", self.device_id)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicIdentityWire {
    #[serde(with = "bytes_array")]
    ed25519: [u8; 32],
    #[serde(with = "bytes_array")]
    x25519: [u8; 32],
}

impl Serialize for PublicIdentity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PublicIdentityWire {
            ed25519: *self.signing_bytes(),
            x25519: *self.dh_bytes(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PublicIdentity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = PublicIdentityWire::deserialize(d)?;
        PublicIdentity::from_bytes(&w.ed25519, &w.x25519)
            .map_err(|_| serde::de::Error::custom("identity: invalid Ed25519 public key"))
    }
}

/// A device id: the first 16 bytes of SHA-256("Sealpost_DeviceId_v1" || ed25519 || x25519).
///
/// Derived from the keys, so the relay cannot attach other keys to an existing id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(#[serde(with = "bytes_array")] pub [u8; 16]);

impl DeviceId {
    fn derive(ed: &[u8; 32], x: &[u8; 32]) -> Self {
        let h = crypto::sha256(&[DEVICE_ID_LABEL, ed, x]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[..16]);
        Self(id)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 32 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, DecodeError> {
        let id: crate::hexid::Hex16 = s.parse().map_err(|_| DecodeError::InvalidField {
            field: "device id",
            reason: "must be 32 hex digits",
        })?;
        Ok(Self(id.0))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.to_hex())
    }
}

/// A stable account id: 1 to 64 bytes of `a-z`, `0-9`, `.`, `_`, `-`, starting with a
/// letter or digit. Chosen by the operator when the account is created; never reused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// Parse and validate.
    pub fn new(s: &str) -> Result<Self, DecodeError> {
        Self::try_from(s.to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = DecodeError;
    fn try_from(s: String) -> Result<Self, DecodeError> {
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_ACCOUNT_ID_LEN {
            return Err(DecodeError::InvalidField {
                field: "account id",
                reason: "must be 1 to 64 characters",
            });
        }
        let ok_char = |c: &u8| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        };
        if !bytes.iter().all(ok_char) || !bytes[0].is_ascii_alphanumeric() {
            return Err(DecodeError::InvalidField {
                field: "account id",
                reason: "only a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            });
        }
        Ok(Self(s))
    }
}

impl From<AccountId> for String {
    fn from(a: AccountId) -> String {
        a.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.0)
    }
}

/// SHA-256 fingerprint of a device identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    /// Hex in groups of four, e.g. `3f2a 91c0 ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode(self.0);
        for (i, chunk) in hex.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A Signal-style safety number: 60 decimal digits, the same on both sides.
///
/// Each party's half is 30 digits computed from its account id and its devices' public
/// keys (sorted, so device order does not matter); the two halves are sorted and
/// concatenated, so the result does not depend on who computes it.
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// Compute the safety number between two parties.
    pub fn compute(
        a: (&AccountId, &[PublicIdentity]),
        b: (&AccountId, &[PublicIdentity]),
    ) -> Result<Self, DecodeError> {
        let mut ha = Self::half(a.0, a.1)?;
        let mut hb = Self::half(b.0, b.1)?;
        if hb < ha {
            std::mem::swap(&mut ha, &mut hb);
        }
        Ok(Self(format!("{ha}{hb}")))
    }

    fn half(account: &AccountId, devices: &[PublicIdentity]) -> Result<String, DecodeError> {
        use sha2::{Digest, Sha512};
        if devices.is_empty() || devices.len() > MAX_DEVICES_PER_ACCOUNT {
            return Err(DecodeError::InvalidField {
                field: "devices",
                reason: "a safety number needs 1 to 16 devices per party",
            });
        }
        let mut keys: Vec<[u8; 64]> = devices.iter().map(PublicIdentity::to_bytes).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut key_material = Vec::with_capacity(keys.len() * 64);
        for k in &keys {
            key_material.extend_from_slice(k);
        }
        let mut hash = {
            let mut h = Sha512::new();
            h.update(SAFETY_NUMBER_VERSION);
            h.update(&key_material);
            h.update(account.as_str().as_bytes());
            h.finalize()
        };
        for _ in 1..SAFETY_NUMBER_ITERATIONS {
            let mut h = Sha512::new();
            h.update(hash);
            h.update(&key_material);
            hash = h.finalize();
        }
        let mut out = String::with_capacity(30);
        for chunk in hash[..30].chunks(5) {
            let mut v: u64 = 0;
            for b in chunk {
                v = (v << 8) | u64::from(*b);
            }
            out.push_str(&format!("{:05}", v % 100_000));
        }
        Ok(out)
    }

    /// The 60 digits.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// Twelve groups of five digits, for display.
    pub fn grouped(&self) -> String {
        self.0
            .as_bytes()
            .chunks(5)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grouped())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.grouped())
    }
}

/// Zeroize helper for the pickle of an identity.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityPickle {
    #[serde(with = "bytes_array")]
    pub(crate) ed25519_secret: [u8; 32],
    #[serde(with = "bytes_array")]
    pub(crate) x25519_secret: [u8; 32],
}
