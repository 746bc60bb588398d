//! State at rest: the only way secrets leave memory.
//!
//! Live types (`Session`, `IdentityKeyPair`, `PreKeySecrets`) never implement
//! `Serialize`. Their `pickle` methods build a private serialisable form, encode it as
//! CBOR and encrypt it with ChaCha20-Poly1305 under a caller-given 32-byte key:
//!
//! ```text
//! pickle = format (1 byte, = 1) || kind (1 byte) || nonce (12 bytes, random) || ciphertext || tag
//! AD     = "Sealpost_Pickle_v1" || format || kind
//! ```
//!
//! How the key is obtained (Argon2id from a passphrase, a keychain, an HSM) is the
//! caller's concern.

use rand_core::{CryptoRng, RngCore};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::codec;
use crate::crypto::{self, AEAD_NONCE_LEN};
use crate::error::PickleError;
use crate::identity::{IdentityKeyPair, IdentityPickle};
use crate::prekeys::{
    KemPickle, KemPreKey, KemPreKeySecret, PreKeySecrets, PreKeySecretsPickle, SignedPreKey,
    X25519Pickle, X25519PreKeySecret,
};

/// Format version of pickles written by this implementation.
pub const PICKLE_FORMAT: u8 = 1;
/// Largest pickle accepted.
pub const MAX_PICKLE_LEN: usize = 16 * 1024 * 1024;
const PICKLE_AD_LABEL: &[u8] = b"Sealpost_Pickle_v1";
const HEADER_LEN: usize = 2 + AEAD_NONCE_LEN;

/// The key pickles are encrypted under. Secret: zeroized on drop, no `Debug`.
pub struct PickleKey(Box<[u8; 32]>);

impl ZeroizeOnDrop for PickleKey {}

impl Drop for PickleKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.0.zeroize();
    }
}

impl PickleKey {
    /// Wrap 32 key bytes (for example from Argon2id).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut b = bytes;
        let key = Self(Box::new(b));
        zeroize::Zeroize::zeroize(&mut b);
        key
    }

    /// A second copy of this key (for a second handle on the same open profile), copied
    /// from heap to heap so no stray copy is left on the stack.
    pub fn duplicate(&self) -> Self {
        let mut k = Box::new([0u8; 32]);
        k.copy_from_slice(&self.0[..]);
        Self(k)
    }

    /// A fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut k = Box::new([0u8; 32]);
        rng.fill_bytes(&mut k[..]);
        Self(k)
    }
}

/// What a pickle holds; written in its second byte and bound into its AD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PickleKind {
    /// An [`IdentityKeyPair`].
    Identity = 1,
    /// A [`PreKeySecrets`] store.
    PreKeys = 2,
    /// A [`crate::ratchet::Session`].
    Session = 3,
    /// An organisation root key ([`crate::trust::OrgRoot`]).
    OrgRoot = 4,
    /// Application state of a client (contacts, history), opaque to this crate.
    Application = 16,
}

impl PickleKind {
    fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::PreKeys => "prekey store",
            Self::Session => "session",
            Self::OrgRoot => "organisation root",
            Self::Application => "application state",
        }
    }
}

/// Encode `value` and encrypt it as a pickle of `kind`.
pub fn seal<T: Serialize, R: RngCore + CryptoRng>(
    kind: PickleKind,
    value: &T,
    key: &PickleKey,
    rng: &mut R,
) -> Result<Vec<u8>, PickleError> {
    let plain = Zeroizing::new(codec::encode(
        kind.name(),
        value,
        MAX_PICKLE_LEN - HEADER_LEN - 16,
    )?);
    seal_bytes(kind, &plain, key, rng)
}

/// Encrypt raw bytes as a pickle of `kind`.
pub fn seal_bytes<R: RngCore + CryptoRng>(
    kind: PickleKind,
    plaintext: &[u8],
    key: &PickleKey,
    rng: &mut R,
) -> Result<Vec<u8>, PickleError> {
    let mut nonce = [0u8; AEAD_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut buf = Vec::with_capacity(plaintext.len() + crypto::AEAD_TAG_LEN);
    buf.extend_from_slice(plaintext);
    crypto::aead_seal(&key.0, &nonce, &ad(kind as u8), &mut buf)
        .map_err(|_| PickleError::Invalid("too large to encrypt"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + buf.len());
    out.push(PICKLE_FORMAT);
    out.push(kind as u8);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypt a pickle of `kind` to raw bytes.
pub fn open_bytes(
    kind: PickleKind,
    bytes: &[u8],
    key: &PickleKey,
) -> Result<Zeroizing<Vec<u8>>, PickleError> {
    if bytes.len() > MAX_PICKLE_LEN {
        return Err(PickleError::Invalid("larger than the maximum pickle size"));
    }
    if bytes.len() < HEADER_LEN + crypto::AEAD_TAG_LEN {
        return Err(PickleError::UnknownFormat(
            bytes.first().copied().unwrap_or(0),
        ));
    }
    if bytes[0] != PICKLE_FORMAT {
        return Err(PickleError::UnknownFormat(bytes[0]));
    }
    if bytes[1] != kind as u8 {
        return Err(PickleError::WrongKind {
            expected: kind.name(),
            got: format!("kind {}", bytes[1]),
        });
    }
    let mut nonce = [0u8; AEAD_NONCE_LEN];
    nonce.copy_from_slice(&bytes[2..HEADER_LEN]);
    let mut buf = Zeroizing::new(bytes[HEADER_LEN..].to_vec());
    crypto::aead_open(&key.0, &nonce, &ad(kind as u8), &mut buf)
        .map_err(|_| PickleError::Authentication)?;
    Ok(buf)
}

/// Decrypt and decode a pickle of `kind`.
pub fn open<T: DeserializeOwned>(
    kind: PickleKind,
    bytes: &[u8],
    key: &PickleKey,
) -> Result<T, PickleError> {
    let plain = open_bytes(kind, bytes, key)?;
    Ok(codec::decode(kind.name(), &plain, MAX_PICKLE_LEN)?)
}

fn ad(kind: u8) -> [u8; 20] {
    let mut ad = [0u8; 20];
    ad[..18].copy_from_slice(PICKLE_AD_LABEL);
    ad[18] = PICKLE_FORMAT;
    ad[19] = kind;
    ad
}

impl IdentityKeyPair {
    /// Seal this identity for storage.
    pub fn pickle<R: RngCore + CryptoRng>(
        &self,
        key: &PickleKey,
        rng: &mut R,
    ) -> Result<Vec<u8>, PickleError> {
        let (ed, x) = self.secret_bytes();
        let p = IdentityPickle {
            ed25519_secret: *ed,
            x25519_secret: *x,
        };
        seal(PickleKind::Identity, &p, key, rng)
    }

    /// Restore an identity sealed by [`IdentityKeyPair::pickle`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, PickleError> {
        let p: IdentityPickle = open(PickleKind::Identity, bytes, key)?;
        Ok(Self::from_secrets(&p.ed25519_secret, &p.x25519_secret))
    }
}

impl PreKeySecrets {
    /// Seal this store for storage.
    pub fn pickle<R: RngCore + CryptoRng>(
        &self,
        key: &PickleKey,
        rng: &mut R,
    ) -> Result<Vec<u8>, PickleError> {
        let x = |kind: u8, s: &X25519PreKeySecret| X25519Pickle {
            kind,
            id: s.public.id,
            secret: s.secret.to_bytes(),
            signature: s.public.signature,
        };
        let mut x25519: Vec<X25519Pickle> = self.signed.iter().map(|s| x(1, s)).collect();
        x25519.extend(self.one_time.values().map(|s| x(2, s)));
        let k = |s: &KemPreKeySecret| KemPickle {
            id: s.public.id,
            last_resort: s.public.last_resort,
            secret: s.secret.to_bytes().to_vec(),
            signature: s.public.signature,
        };
        let mut kem: Vec<KemPickle> = self.kem_last_resort.iter().map(k).collect();
        kem.extend(self.kem_one_time.values().map(k));
        let p = PreKeySecretsPickle {
            x25519,
            kem,
            next_id: self.next_id,
            seen_base_keys: self
                .seen_base_keys
                .iter()
                .map(|k| crate::prekeys::SeenKey(*k))
                .collect(),
        };
        seal(PickleKind::PreKeys, &p, key, rng)
    }

    /// Restore a store sealed by [`PreKeySecrets::pickle`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, PickleError> {
        let p: PreKeySecretsPickle = open(PickleKind::PreKeys, bytes, key)?;
        let mut store = PreKeySecrets::new();
        store.next_id = p.next_id;
        for e in &p.x25519 {
            let secret = x25519_dalek::StaticSecret::from(e.secret);
            let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
            let held = X25519PreKeySecret {
                secret,
                public: SignedPreKey {
                    id: e.id,
                    public,
                    signature: e.signature,
                },
            };
            match e.kind {
                1 => store.signed.push(held),
                2 => {
                    store.one_time.insert(e.id, held);
                }
                _ => return Err(PickleError::Invalid("unknown X25519 prekey kind")),
            }
        }
        for e in &p.kem {
            let secret = crypto::KemSecret::from_bytes(&e.secret)
                .map_err(|_| PickleError::Invalid("ML-KEM secret"))?;
            let mut public = Box::new([0u8; crypto::MLKEM768_PUBLIC_LEN]);
            public.copy_from_slice(&secret.public_bytes());
            let held = KemPreKeySecret {
                secret,
                public: KemPreKey {
                    id: e.id,
                    last_resort: e.last_resort,
                    public,
                    signature: e.signature,
                },
            };
            if e.last_resort {
                store.kem_last_resort.push(held);
            } else {
                store.kem_one_time.insert(e.id, held);
            }
        }
        store.seen_base_keys = p.seen_base_keys.iter().map(|k| k.0).collect();
        Ok(store)
    }
}
