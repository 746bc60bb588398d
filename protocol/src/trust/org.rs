//! The organisation root: an offline Ed25519 key whose fingerprint every device pins.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::bytes_array;
use crate::crypto;
use crate::error::{DecodeError, PickleError};
use crate::pickle::{self, PickleKey, PickleKind};

use super::error::TrustError;
use super::roster::{Roster, RosterAuthorization, SignedRoster};
use super::{ORG_FINGERPRINT_LABEL, ROSTER_ROOT_LABEL};

/// The organisation root key pair. Created and kept offline by the firm; it signs roster
/// version 1 and nothing else.
///
/// Secret: the signing key is boxed, zeroized on drop, has no `Debug`, and leaves memory
/// only through [`OrgRoot::pickle`].
pub struct OrgRoot {
    signing: Box<SigningKey>,
    public: OrgRootPublic,
}

impl ZeroizeOnDrop for OrgRoot {}

impl OrgRoot {
    /// Generate a fresh root from the caller's RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let signing = Box::new(SigningKey::generate(rng));
        let public = OrgRootPublic(signing.verifying_key());
        Self { signing, public }
    }

    /// The public half (what the roster carries and devices pin by fingerprint).
    pub fn public(&self) -> &OrgRootPublic {
        &self.public
    }

    /// Sign roster version 1 (the only roster the root signs; later versions are
    /// authorised by the previous version's staff quorum).
    pub fn sign_genesis(&self, roster: Roster) -> Result<SignedRoster, TrustError> {
        if roster.version() != 1 || roster.previous().is_some() {
            return Err(TrustError::WrongRosterAuthorization {
                version: roster.version(),
                reason: "the organisation root signs version 1 only",
            });
        }
        let hash = roster.hash();
        let signature = crypto::ed25519_sign(&self.signing, &root_message(&hash.0));
        Ok(SignedRoster::from_parts(
            roster,
            RosterAuthorization::Root {
                root: self.public.clone(),
                signature,
            },
        ))
    }

    /// Seal the root for storage (pickle kind `org root`, see `docs/PROTOCOL.md` §13).
    pub fn pickle<R: RngCore + CryptoRng>(
        &self,
        key: &PickleKey,
        rng: &mut R,
    ) -> Result<Vec<u8>, PickleError> {
        let p = OrgRootPickle {
            ed25519_secret: self.signing.to_bytes(),
        };
        pickle::seal(PickleKind::OrgRoot, &p, key, rng)
    }

    /// Restore a root sealed by [`OrgRoot::pickle`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, PickleError> {
        let p: OrgRootPickle = pickle::open(PickleKind::OrgRoot, bytes, key)?;
        let signing = Box::new(SigningKey::from_bytes(&p.ed25519_secret));
        let public = OrgRootPublic(signing.verifying_key());
        Ok(Self { signing, public })
    }
}

/// The message the root signs: `"Sealpost_Roster_Root_v1" || roster_hash`.
pub(crate) fn root_message(roster_hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROSTER_ROOT_LABEL.len() + 32);
    m.extend_from_slice(ROSTER_ROOT_LABEL);
    m.extend_from_slice(roster_hash);
    m
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct OrgRootPickle {
    #[serde(with = "bytes_array")]
    ed25519_secret: [u8; 32],
}

/// The organisation root's public key. Encoded as a 32-byte CBOR byte string; decoding
/// refuses invalid and small-order points.
#[derive(Clone, PartialEq, Eq)]
pub struct OrgRootPublic(VerifyingKey);

impl OrgRootPublic {
    /// Parse 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        Ok(Self(crypto::ed25519_public(bytes)?))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// `SHA-256("Sealpost_OrgRoot_Fingerprint_v1" || key)`: what devices pin.
    pub fn fingerprint(&self) -> OrgFingerprint {
        OrgFingerprint(crypto::sha256(&[ORG_FINGERPRINT_LABEL, self.as_bytes()]))
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), TrustError> {
        crypto::ed25519_verify(&self.0, message, signature).map_err(|_| TrustError::BadSignature {
            what: "roster v1 root",
            signer: "organisation root".to_owned(),
        })
    }
}

impl fmt::Debug for OrgRootPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgRootPublic({})", self.fingerprint())
    }
}

impl Serialize for OrgRootPublic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for OrgRootPublic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: [u8; 32] = bytes_array::deserialize(d)?;
        OrgRootPublic::from_bytes(&bytes)
            .map_err(|_| serde::de::Error::custom("organisation root: invalid Ed25519 key"))
    }
}

/// The pinned organisation fingerprint: 32 bytes, shown as hex in groups of four.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrgFingerprint(pub [u8; 32]);

impl OrgFingerprint {
    /// Lower-case hex without spaces.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex digits; whitespace and `:` (as in the grouped display form) are
    /// ignored ([`crate::hexid::HexBytes::parse_grouped`]).
    pub fn from_hex(s: &str) -> Result<Self, DecodeError> {
        let fp = crate::hexid::Hex32::parse_grouped(s).map_err(|_| DecodeError::InvalidField {
            field: "organisation fingerprint",
            reason: "must be 64 hex digits",
        })?;
        Ok(Self(fp.0))
    }
}

impl fmt::Display for OrgFingerprint {
    /// Hex in groups of four, e.g. `3f2a 91c0 ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        for (i, chunk) in hex.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for OrgFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn fingerprint_is_labelled_sha256_and_round_trips_through_display() {
        let mut rng = StdRng::seed_from_u64(1);
        let root = OrgRoot::generate(&mut rng);
        let fp = root.public().fingerprint();
        assert_eq!(
            fp.0,
            crypto::sha256(&[b"Sealpost_OrgRoot_Fingerprint_v1", root.public().as_bytes()])
        );
        let shown = fp.to_string();
        assert_eq!(shown.len(), 64 + 15);
        assert_eq!(OrgFingerprint::from_hex(&shown).unwrap(), fp);
        assert!(OrgFingerprint::from_hex("zz").is_err());
    }

    #[test]
    fn pickle_round_trips_and_refuses_other_keys_and_kinds() {
        let mut rng = StdRng::seed_from_u64(2);
        let root = OrgRoot::generate(&mut rng);
        let key = PickleKey::generate(&mut rng);
        let sealed = root.pickle(&key, &mut rng).unwrap();
        let back = OrgRoot::from_pickle(&sealed, &key).unwrap();
        assert_eq!(back.public(), root.public());
        let other = PickleKey::generate(&mut rng);
        assert!(matches!(
            OrgRoot::from_pickle(&sealed, &other),
            Err(PickleError::Authentication)
        ));
        let id = crate::identity::IdentityKeyPair::generate(&mut rng);
        let id_pickle = id.pickle(&key, &mut rng).unwrap();
        assert!(matches!(
            OrgRoot::from_pickle(&id_pickle, &key),
            Err(PickleError::WrongKind { .. })
        ));
    }

    #[test]
    fn public_key_decoding_refuses_small_order_points() {
        let mut identity = [0u8; 32];
        identity[0] = 1; // the neutral element, small order
        assert!(OrgRootPublic::from_bytes(&identity).is_err());
        assert!(OrgRootPublic::from_bytes(&[1u8; 31]).is_err());
    }
}
