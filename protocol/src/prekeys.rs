//! Prekeys: what a device publishes so that others can start a session while it is
//! offline, and the secrets it keeps to answer them.
//!
//! Every prekey, including one-time X25519 prekeys, is signed by the device's Ed25519
//! identity key over `"Sealpost_PreKey_v1" || kind || id (u32 BE) || public key`.

use std::collections::BTreeMap;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::{boxed_bytes_array, bytes_array};
use crate::crypto::{self, KemSecret, MLKEM768_PUBLIC_LEN};
use crate::error::SetupError;
use crate::identity::{IdentityKeyPair, PublicIdentity};

/// Domain label of prekey signatures.
pub const PREKEY_SIGNATURE_LABEL: &[u8] = b"Sealpost_PreKey_v1";
/// Most one-time X25519 prekeys a device holds secrets for.
pub const MAX_ONE_TIME_PREKEYS: usize = 500;
/// Most one-time ML-KEM prekeys a device holds secrets for.
pub const MAX_KEM_ONE_TIME_PREKEYS: usize = 200;
/// Signed prekeys (and last-resort KEM prekeys) kept after rotation, so that initial
/// messages sent to the previous one still open.
pub const MAX_RETIRED_SIGNED_PREKEYS: usize = 2;

/// What a prekey signature covers: the kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PreKeyKind {
    /// The medium-term signed X25519 prekey.
    Signed = 1,
    /// A one-time X25519 prekey.
    OneTime = 2,
    /// A one-time ML-KEM-768 prekey.
    KemOneTime = 3,
    /// The last-resort ML-KEM-768 prekey (reused until replaced).
    KemLastResort = 4,
}

/// The bytes a prekey signature covers.
pub fn prekey_signature_message(kind: PreKeyKind, id: u32, public: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(PREKEY_SIGNATURE_LABEL.len() + 5 + public.len());
    m.extend_from_slice(PREKEY_SIGNATURE_LABEL);
    m.push(kind as u8);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(public);
    m
}

/// A signed X25519 prekey (public).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPreKey {
    /// Id, unique per device.
    pub id: u32,
    /// X25519 public key.
    #[serde(with = "bytes_array")]
    pub public: [u8; 32],
    /// Ed25519 signature by the identity key.
    #[serde(with = "bytes_array")]
    pub signature: [u8; 64],
}

/// A one-time X25519 prekey (public). Same layout as [`SignedPreKey`], other kind byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneTimePreKey {
    /// Id, unique per device.
    pub id: u32,
    /// X25519 public key.
    #[serde(with = "bytes_array")]
    pub public: [u8; 32],
    /// Ed25519 signature by the identity key.
    #[serde(with = "bytes_array")]
    pub signature: [u8; 64],
}

/// A signed ML-KEM-768 prekey (public): one-time, or the last-resort one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KemPreKey {
    /// Id, unique per device.
    pub id: u32,
    /// True for the last-resort prekey.
    pub last_resort: bool,
    /// Encoded encapsulation key (1184 bytes).
    #[serde(with = "boxed_bytes_array")]
    pub public: Box<[u8; MLKEM768_PUBLIC_LEN]>,
    /// Ed25519 signature by the identity key.
    #[serde(with = "bytes_array")]
    pub signature: [u8; 64],
}

impl std::fmt::Debug for KemPreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KemPreKey")
            .field("id", &self.id)
            .field("last_resort", &self.last_resort)
            .finish_non_exhaustive()
    }
}

impl SignedPreKey {
    /// Verify the signature by `identity`.
    pub fn verify(&self, identity: &PublicIdentity) -> Result<(), SetupError> {
        let m = prekey_signature_message(PreKeyKind::Signed, self.id, &self.public);
        identity
            .verify(&m, &self.signature)
            .map_err(|_| SetupError::BadPreKeySignature {
                which: "signed",
                id: self.id,
            })
    }
}

impl OneTimePreKey {
    /// Verify the signature by `identity`.
    pub fn verify(&self, identity: &PublicIdentity) -> Result<(), SetupError> {
        let m = prekey_signature_message(PreKeyKind::OneTime, self.id, &self.public);
        identity
            .verify(&m, &self.signature)
            .map_err(|_| SetupError::BadPreKeySignature {
                which: "one-time",
                id: self.id,
            })
    }
}

impl KemPreKey {
    /// The kind byte its signature covers.
    pub fn kind(&self) -> PreKeyKind {
        if self.last_resort {
            PreKeyKind::KemLastResort
        } else {
            PreKeyKind::KemOneTime
        }
    }

    /// Verify the signature by `identity`.
    pub fn verify(&self, identity: &PublicIdentity) -> Result<(), SetupError> {
        let m = prekey_signature_message(self.kind(), self.id, &self.public[..]);
        identity
            .verify(&m, &self.signature)
            .map_err(|_| SetupError::BadPreKeySignature {
                which: "ML-KEM",
                id: self.id,
            })
    }
}

/// What the relay hands out for one device: enough to start a session with it offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreKeyBundle {
    /// The device's identity.
    pub identity: PublicIdentity,
    /// Its current signed prekey.
    pub signed_prekey: SignedPreKey,
    /// A one-time prekey, if any were left.
    pub one_time_prekey: Option<OneTimePreKey>,
    /// A one-time ML-KEM prekey, or the last-resort one.
    pub kem_prekey: KemPreKey,
}

impl PreKeyBundle {
    /// Verify every signature in the bundle against its identity.
    pub fn verify(&self) -> Result<(), SetupError> {
        self.signed_prekey.verify(&self.identity)?;
        if let Some(otk) = &self.one_time_prekey {
            otk.verify(&self.identity)?;
        }
        self.kem_prekey.verify(&self.identity)?;
        Ok(())
    }
}

/// A held X25519 prekey secret.
#[derive(Clone)]
pub(crate) struct X25519PreKeySecret {
    pub(crate) secret: x25519_dalek::StaticSecret,
    pub(crate) public: SignedPreKey,
}

/// A held ML-KEM prekey secret.
pub(crate) struct KemPreKeySecret {
    pub(crate) secret: KemSecret,
    pub(crate) public: KemPreKey,
}

/// The prekey secrets a device holds. Secret: no `Debug`, zeroized on drop (each key
/// type zeroizes itself), serialised only through [`crate::pickle`].
#[derive(Default)]
pub struct PreKeySecrets {
    /// Current signed prekey first, then retired ones.
    pub(crate) signed: Vec<X25519PreKeySecret>,
    pub(crate) one_time: BTreeMap<u32, X25519PreKeySecret>,
    pub(crate) kem_one_time: BTreeMap<u32, KemPreKeySecret>,
    /// Current last-resort KEM prekey first, then retired ones.
    pub(crate) kem_last_resort: Vec<KemPreKeySecret>,
    pub(crate) next_id: u32,
    /// Base keys of sessions accepted, newest last, so a replayed initial message cannot
    /// open a second session.
    pub(crate) seen_base_keys: std::collections::VecDeque<[u8; 32]>,
}

/// Base keys remembered to refuse replayed initial messages.
pub const MAX_SEEN_BASE_KEYS: usize = 4096;

impl PreKeySecrets {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            next_id: 1,
            ..Self::default()
        }
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Generate a new signed prekey and make it current; the oldest retired one beyond
    /// [`MAX_RETIRED_SIGNED_PREKEYS`] is erased.
    pub fn rotate_signed<R: RngCore + CryptoRng>(
        &mut self,
        identity: &IdentityKeyPair,
        rng: &mut R,
    ) -> SignedPreKey {
        let id = self.take_id();
        let (secret, public) = crypto::x25519_generate(rng);
        let m = prekey_signature_message(PreKeyKind::Signed, id, public.as_bytes());
        let spk = SignedPreKey {
            id,
            public: public.to_bytes(),
            signature: identity.sign(&m),
        };
        self.signed.insert(
            0,
            X25519PreKeySecret {
                secret,
                public: spk.clone(),
            },
        );
        self.signed.truncate(1 + MAX_RETIRED_SIGNED_PREKEYS);
        spk
    }

    /// Generate up to `count` one-time X25519 prekeys. At most [`MAX_ONE_TIME_PREKEYS`]
    /// secrets are held: to make room, the oldest (handed out long ago and never used)
    /// are erased first.
    pub fn generate_one_time<R: RngCore + CryptoRng>(
        &mut self,
        identity: &IdentityKeyPair,
        count: usize,
        rng: &mut R,
    ) -> Vec<OneTimePreKey> {
        let count = count.min(MAX_ONE_TIME_PREKEYS);
        while self.one_time.len() + count > MAX_ONE_TIME_PREKEYS {
            if self.one_time.pop_first().is_none() {
                break;
            }
        }
        let room = MAX_ONE_TIME_PREKEYS.saturating_sub(self.one_time.len());
        (0..count.min(room))
            .map(|_| {
                let id = self.take_id();
                let (secret, public) = crypto::x25519_generate(rng);
                let m = prekey_signature_message(PreKeyKind::OneTime, id, public.as_bytes());
                let signature = identity.sign(&m);
                let spk = SignedPreKey {
                    id,
                    public: public.to_bytes(),
                    signature,
                };
                self.one_time.insert(
                    id,
                    X25519PreKeySecret {
                        secret,
                        public: spk,
                    },
                );
                OneTimePreKey {
                    id,
                    public: public.to_bytes(),
                    signature,
                }
            })
            .collect()
    }

    /// Generate up to `count` one-time ML-KEM-768 prekeys, erasing the oldest held ones
    /// to stay within [`MAX_KEM_ONE_TIME_PREKEYS`].
    pub fn generate_kem_one_time<R: RngCore + CryptoRng>(
        &mut self,
        identity: &IdentityKeyPair,
        count: usize,
        rng: &mut R,
    ) -> Vec<KemPreKey> {
        let count = count.min(MAX_KEM_ONE_TIME_PREKEYS);
        while self.kem_one_time.len() + count > MAX_KEM_ONE_TIME_PREKEYS {
            if self.kem_one_time.pop_first().is_none() {
                break;
            }
        }
        let room = MAX_KEM_ONE_TIME_PREKEYS.saturating_sub(self.kem_one_time.len());
        (0..count.min(room))
            .map(|_| {
                let id = self.take_id();
                let kp = Self::kem_prekey(identity, id, false, rng);
                let public = kp.public.clone();
                self.kem_one_time.insert(id, kp);
                public
            })
            .collect()
    }

    /// Generate a new last-resort ML-KEM-768 prekey and make it current.
    pub fn rotate_kem_last_resort<R: RngCore + CryptoRng>(
        &mut self,
        identity: &IdentityKeyPair,
        rng: &mut R,
    ) -> KemPreKey {
        let id = self.take_id();
        let kp = Self::kem_prekey(identity, id, true, rng);
        let public = kp.public.clone();
        self.kem_last_resort.insert(0, kp);
        self.kem_last_resort
            .truncate(1 + MAX_RETIRED_SIGNED_PREKEYS);
        public
    }

    fn kem_prekey<R: RngCore + CryptoRng>(
        identity: &IdentityKeyPair,
        id: u32,
        last_resort: bool,
        rng: &mut R,
    ) -> KemPreKeySecret {
        let (secret, public) = crypto::mlkem768_generate(rng);
        let kind = if last_resort {
            PreKeyKind::KemLastResort
        } else {
            PreKeyKind::KemOneTime
        };
        let m = prekey_signature_message(kind, id, &public[..]);
        let signature = identity.sign(&m);
        KemPreKeySecret {
            secret,
            public: KemPreKey {
                id,
                last_resort,
                public,
                signature,
            },
        }
    }

    /// The current signed prekey, if one was generated.
    pub fn current_signed(&self) -> Option<&SignedPreKey> {
        self.signed.first().map(|s| &s.public)
    }

    /// The current last-resort KEM prekey, if one was generated.
    pub fn current_kem_last_resort(&self) -> Option<&KemPreKey> {
        self.kem_last_resort.first().map(|s| &s.public)
    }

    /// Number of one-time X25519 and ML-KEM prekey secrets held.
    pub fn one_time_counts(&self) -> (usize, usize) {
        (self.one_time.len(), self.kem_one_time.len())
    }

    /// A bundle built from local secrets, taking (and removing) one one-time prekey of
    /// each kind if available. Used for tests and by a relay-less peer.
    pub fn bundle_for_test(
        &mut self,
        identity: &IdentityKeyPair,
        use_one_time: bool,
    ) -> Option<PreKeyBundle> {
        let signed_prekey = self.current_signed()?.clone();
        let one_time_prekey = if use_one_time {
            self.one_time.values().next().map(|s| OneTimePreKey {
                id: s.public.id,
                public: s.public.public,
                signature: s.public.signature,
            })
        } else {
            None
        };
        let kem_prekey = match self.kem_one_time.values().next() {
            Some(k) if use_one_time => k.public.clone(),
            _ => self.current_kem_last_resort()?.clone(),
        };
        Some(PreKeyBundle {
            identity: identity.public().clone(),
            signed_prekey,
            one_time_prekey,
            kem_prekey,
        })
    }

    pub(crate) fn find_signed(&self, id: u32) -> Option<&X25519PreKeySecret> {
        self.signed.iter().find(|s| s.public.id == id)
    }

    pub(crate) fn find_kem(&self, id: u32) -> Option<&KemPreKeySecret> {
        self.kem_one_time
            .get(&id)
            .or_else(|| self.kem_last_resort.iter().find(|k| k.public.id == id))
    }

    pub(crate) fn seen_base_key(&self, base_key: &[u8; 32]) -> bool {
        self.seen_base_keys.iter().any(|k| k == base_key)
    }

    /// Erase the one-time prekeys an accepted session used and remember its base key
    /// (call it when that session is kept; see [`crate::handshake::accept_staged`]).
    pub fn consume(&mut self, used: crate::handshake::PreKeyUse) {
        if self.seen_base_key(&used.base_key) {
            return;
        }
        if self.seen_base_keys.len() >= MAX_SEEN_BASE_KEYS {
            self.seen_base_keys.pop_front();
        }
        self.seen_base_keys.push_back(used.base_key);
        if let Some(id) = used.one_time {
            self.one_time.remove(&id);
        }
        self.kem_one_time.remove(&used.kem);
    }
}

/// Serialised form of [`PreKeySecrets`], only ever written encrypted.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreKeySecretsPickle {
    pub(crate) x25519: Vec<X25519Pickle>,
    pub(crate) kem: Vec<KemPickle>,
    pub(crate) next_id: u32,
    pub(crate) seen_base_keys: Vec<SeenKey>,
}

/// A remembered base key.
#[derive(Serialize, Deserialize, Zeroize, Clone, Copy)]
#[serde(transparent)]
pub(crate) struct SeenKey(#[serde(with = "bytes_array")] pub(crate) [u8; 32]);

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(crate) struct X25519Pickle {
    /// 1 signed, 2 one-time.
    pub(crate) kind: u8,
    pub(crate) id: u32,
    #[serde(with = "bytes_array")]
    pub(crate) secret: [u8; 32],
    #[serde(with = "bytes_array")]
    pub(crate) signature: [u8; 64],
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(crate) struct KemPickle {
    pub(crate) id: u32,
    pub(crate) last_resort: bool,
    #[serde(with = "serde_bytes")]
    pub(crate) secret: Vec<u8>,
    #[serde(with = "bytes_array")]
    pub(crate) signature: [u8; 64],
}
