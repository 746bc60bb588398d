//! Thin, typed wrappers over the primitives Sealpost uses.
//!
//! Every cryptographic operation of the protocol goes through this module, and so do the
//! published test vectors (RFC 7748, 8439, 5869, 8032 and Wycheproof), so a vector that
//! passes exercises exactly the code path the protocol runs. Nothing here implements a
//! primitive: X25519 and Ed25519 come from dalek, ChaCha20-Poly1305, HKDF, HMAC and SHA-2
//! from RustCrypto, ML-KEM-768 from RustCrypto's `ml-kem`.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncapsulateDeterministic, EncodedSizeUser, KemCore, MlKem768};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an X25519 key or shared secret.
pub const X25519_LEN: usize = 32;
/// Length of a ChaCha20-Poly1305 key.
pub const AEAD_KEY_LEN: usize = 32;
/// Length of a ChaCha20-Poly1305 nonce.
pub const AEAD_NONCE_LEN: usize = 12;
/// Length of a Poly1305 tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Length of an Ed25519 public key.
pub const ED25519_PUBLIC_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// Length of an encoded ML-KEM-768 encapsulation (public) key.
pub const MLKEM768_PUBLIC_LEN: usize = 1184;
/// Length of an encoded ML-KEM-768 decapsulation (secret) key.
pub const MLKEM768_SECRET_LEN: usize = 2400;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM shared secret.
pub const MLKEM_SHARED_LEN: usize = 32;
/// Largest output HKDF-SHA256 can produce (255 blocks of 32 bytes, RFC 5869 section 2.3).
pub const HKDF_SHA256_MAX_OUTPUT: usize = 255 * 32;

/// A primitive refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// An input had the wrong length.
    #[error("{what} must be {expected} bytes, got {got}")]
    BadLength {
        /// Which input.
        what: &'static str,
        /// The length the primitive needs.
        expected: usize,
        /// The length it was given.
        got: usize,
    },
    /// X25519 produced the all-zero output: the peer's point has small order.
    #[error("X25519 result is all zeros (low-order public key)")]
    LowOrderPoint,
    /// AEAD authentication failed.
    #[error("authentication tag mismatch")]
    AeadTag,
    /// An Ed25519 public key does not decode to a usable point.
    #[error("invalid Ed25519 public key")]
    BadVerifyingKey,
    /// An Ed25519 signature did not verify.
    #[error("Ed25519 signature does not verify")]
    BadSignature,
    /// HKDF was asked for more than 255 blocks.
    #[error("HKDF output of {0} bytes exceeds the maximum of {HKDF_SHA256_MAX_OUTPUT}")]
    HkdfOutputTooLong(usize),
    /// An ML-KEM encapsulation key failed the FIPS 203 modulus check.
    #[error("ML-KEM-768 encapsulation key fails the FIPS 203 modulus check")]
    BadKemPublicKey,
    /// An encoded ML-KEM decapsulation key failed the FIPS 203 section 7.3 input check
    /// (its embedded encapsulation key or the hash of it is wrong).
    #[error("ML-KEM-768 decapsulation key fails the FIPS 203 input check")]
    BadKemSecretKey,
}

fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], CryptoError> {
    bytes.try_into().map_err(|_| CryptoError::BadLength {
        what,
        expected: N,
        got: bytes.len(),
    })
}

// ---------------------------------------------------------------------------------------
// X25519

/// X25519(scalar, point) as used by the protocol: the shared secret, or
/// [`CryptoError::LowOrderPoint`] if the result is all zeros (RFC 7748 section 6.1).
pub fn x25519(
    secret: &x25519_dalek::StaticSecret,
    public: &x25519_dalek::PublicKey,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let shared = secret.diffie_hellman(public);
    if !shared.was_contributory() {
        return Err(CryptoError::LowOrderPoint);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// [`x25519`] on raw byte strings, checking their lengths (used for test vectors).
pub fn x25519_bytes(scalar: &[u8], point: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut k: [u8; 32] = fixed("X25519 scalar", scalar)?;
    let u: [u8; 32] = fixed("X25519 public key", point)?;
    let secret = x25519_dalek::StaticSecret::from(k);
    k.zeroize();
    x25519(&secret, &x25519_dalek::PublicKey::from(u))
}

/// Generate an X25519 key pair from the caller's RNG.
pub fn x25519_generate<R: RngCore + CryptoRng>(
    rng: &mut R,
) -> (x25519_dalek::StaticSecret, x25519_dalek::PublicKey) {
    let secret = x25519_dalek::StaticSecret::random_from_rng(rng);
    let public = x25519_dalek::PublicKey::from(&secret);
    (secret, public)
}

// ---------------------------------------------------------------------------------------
// ChaCha20-Poly1305 (RFC 8439)

/// Encrypt `buffer` in place and append the tag.
pub fn aead_seal(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; AEAD_NONCE_LEN],
    aad: &[u8],
    buffer: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .encrypt_in_place(nonce.into(), aad, buffer)
        .map_err(|_| CryptoError::BadLength {
            what: "AEAD plaintext",
            expected: 1 << 38,
            got: buffer.len(),
        })
}

/// Verify the tag at the end of `buffer` and decrypt in place (the tag is removed).
/// On failure `buffer` is left unchanged in length but its contents are unspecified.
pub fn aead_open(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; AEAD_NONCE_LEN],
    aad: &[u8],
    buffer: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    if buffer.len() < AEAD_TAG_LEN {
        return Err(CryptoError::AeadTag);
    }
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place(nonce.into(), aad, buffer)
        .map_err(|_| CryptoError::AeadTag)
}

/// [`aead_seal`] with key and nonce given as slices, checking their lengths.
pub fn aead_seal_slices(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = Zeroizing::new(fixed::<AEAD_KEY_LEN>("AEAD key", key)?);
    let nonce = fixed::<AEAD_NONCE_LEN>("AEAD nonce", nonce)?;
    let mut buffer = Vec::with_capacity(plaintext.len() + AEAD_TAG_LEN);
    buffer.extend_from_slice(plaintext);
    aead_seal(&key, &nonce, aad, &mut buffer)?;
    Ok(buffer)
}

/// [`aead_open`] with key and nonce given as slices, checking their lengths.
pub fn aead_open_slices(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let key = Zeroizing::new(fixed::<AEAD_KEY_LEN>("AEAD key", key)?);
    let nonce = fixed::<AEAD_NONCE_LEN>("AEAD nonce", nonce)?;
    let mut buffer = Zeroizing::new(ciphertext_and_tag.to_vec());
    aead_open(&key, &nonce, aad, &mut buffer)?;
    Ok(buffer)
}

// ---------------------------------------------------------------------------------------
// HKDF-SHA256 (RFC 5869) and HMAC-SHA256

/// HKDF-SHA256: extract with `salt` (an absent salt is 32 zero bytes), expand with `info`
/// into `out`.
pub fn hkdf_sha256(
    salt: Option<&[u8]>,
    ikm: &[u8],
    info: &[&[u8]],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    if out.len() > HKDF_SHA256_MAX_OUTPUT {
        return Err(CryptoError::HkdfOutputTooLong(out.len()));
    }
    let hk = hkdf::Hkdf::<Sha256>::new(salt, ikm);
    hk.expand_multi_info(info, out)
        .map_err(|_| CryptoError::HkdfOutputTooLong(out.len()))
}

/// HMAC-SHA256(key, data).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; the error arm cannot occur for HMAC.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0u8; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// One symmetric-ratchet step (Double Ratchet KDF_CK): the message key is
/// HMAC-SHA256(ck, 0x01) and the next chain key HMAC-SHA256(ck, 0x02).
///
/// The keyed HMAC state is computed once and cloned for both outputs.
pub fn chain_step(chain_key: &[u8; 32]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let keyed = match <Hmac<Sha256> as Mac>::new_from_slice(chain_key) {
        Ok(mac) => mac,
        Err(_) => return (Zeroizing::new([0u8; 32]), Zeroizing::new([0u8; 32])),
    };
    let mut mk_mac = keyed.clone();
    mk_mac.update(&[0x01]);
    let mut ck_mac = keyed;
    ck_mac.update(&[0x02]);
    let mut message_key = Zeroizing::new([0u8; 32]);
    let mut next_chain = Zeroizing::new([0u8; 32]);
    message_key.copy_from_slice(&mk_mac.finalize().into_bytes());
    next_chain.copy_from_slice(&ck_mac.finalize().into_bytes());
    (message_key, next_chain)
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

// ---------------------------------------------------------------------------------------
// Ed25519 (RFC 8032)

/// Parse an Ed25519 public key, rejecting encodings that are not a point and points of
/// small order (which would let a signature verify for any message).
pub fn ed25519_public(bytes: &[u8]) -> Result<VerifyingKey, CryptoError> {
    let arr: [u8; 32] = fixed("Ed25519 public key", bytes)?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| CryptoError::BadVerifyingKey)?;
    if key.is_weak() {
        return Err(CryptoError::BadVerifyingKey);
    }
    Ok(key)
}

/// Verify an Ed25519 signature with the strict rules (canonical S, no small-order R or A).
pub fn ed25519_verify(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    let sig: [u8; 64] = fixed("Ed25519 signature", signature)?;
    let sig = Signature::from_bytes(&sig);
    key.verify_strict(message, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// [`ed25519_verify`] with the public key as bytes (used for test vectors).
pub fn ed25519_verify_bytes(
    public: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    ed25519_verify(&ed25519_public(public)?, message, signature)
}

/// Sign with Ed25519.
pub fn ed25519_sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    key.sign(message).to_bytes()
}

/// An Ed25519 signing key from its 32-byte seed (RFC 8032 secret key).
pub fn ed25519_from_seed(seed: &[u8]) -> Result<SigningKey, CryptoError> {
    let mut arr: [u8; 32] = fixed("Ed25519 secret key", seed)?;
    let key = SigningKey::from_bytes(&arr);
    arr.zeroize();
    Ok(key)
}

// ---------------------------------------------------------------------------------------
// ML-KEM-768 (FIPS 203)

/// An ML-KEM-768 decapsulation key. Zeroized on drop; no `Debug`.
pub struct KemSecret(Box<<MlKem768 as KemCore>::DecapsulationKey>);

impl ZeroizeOnDrop for KemSecret {}

impl KemSecret {
    /// Its encoded form (FIPS 203 `dk`), for the encrypted state at rest only.
    pub(crate) fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.as_bytes().to_vec())
    }

    /// Restore from the encoded form written by [`KemSecret::to_bytes`].
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr = ml_kem::Encoded::<<MlKem768 as KemCore>::DecapsulationKey>::try_from(bytes)
            .map_err(|_| CryptoError::BadLength {
                what: "ML-KEM-768 decapsulation key",
                expected: MLKEM768_SECRET_LEN,
                got: bytes.len(),
            })?;
        Ok(Self(Box::new(
            <MlKem768 as KemCore>::DecapsulationKey::from_bytes(&arr),
        )))
    }

    /// Known-answer-test entry point: the encoded decapsulation key (FIPS 203 `dk`), so
    /// key-generation vectors can compare it byte for byte. The protocol never exports a
    /// secret key in the clear; its own state goes through the encrypted pickle.
    pub fn encoded_for_kat(&self) -> Zeroizing<Vec<u8>> {
        self.to_bytes()
    }

    /// The encoded encapsulation (public) key.
    pub fn public_bytes(&self) -> Vec<u8> {
        self.0.encapsulation_key().as_bytes().to_vec()
    }

    /// Decapsulate a ciphertext. ML-KEM uses implicit rejection: a tampered ciphertext
    /// yields an unrelated shared secret, so the failure surfaces when the AEAD check fails.
    pub fn decapsulate(&self, ciphertext: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let ct = ml_kem::Ciphertext::<MlKem768>::try_from(ciphertext).map_err(|_| {
            CryptoError::BadLength {
                what: "ML-KEM-768 ciphertext",
                expected: MLKEM768_CIPHERTEXT_LEN,
                got: ciphertext.len(),
            }
        })?;
        let ss = self.0.decapsulate(&ct).map_err(|()| CryptoError::AeadTag)?;
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&ss);
        Ok(out)
    }
}

/// Generate an ML-KEM-768 key pair: the secret and the encoded public key.
pub fn mlkem768_generate<R: RngCore + CryptoRng>(
    rng: &mut R,
) -> (KemSecret, Box<[u8; MLKEM768_PUBLIC_LEN]>) {
    let (dk, ek) = MlKem768::generate(rng);
    kem_pair(dk, &ek)
}

fn kem_pair(
    dk: <MlKem768 as KemCore>::DecapsulationKey,
    ek: &<MlKem768 as KemCore>::EncapsulationKey,
) -> (KemSecret, Box<[u8; MLKEM768_PUBLIC_LEN]>) {
    let mut public = Box::new([0u8; MLKEM768_PUBLIC_LEN]);
    public.copy_from_slice(&ek.as_bytes());
    (KemSecret(Box::new(dk)), public)
}

/// Length of the ML-KEM key-generation seed `d || z` (FIPS 203 `ML-KEM.KeyGen_internal`).
pub const MLKEM_SEED_LEN: usize = 64;

/// Known-answer-test entry point: the ML-KEM-768 key pair FIPS 203
/// `ML-KEM.KeyGen_internal(d, z)` derives from the 64-byte seed `d || z`.
///
/// The protocol itself only uses [`mlkem768_generate`]; this runs the same key generation
/// with caller-chosen randomness so published vectors can check it byte for byte.
pub fn mlkem768_generate_from_seed(
    seed: &[u8],
) -> Result<(KemSecret, Box<[u8; MLKEM768_PUBLIC_LEN]>), CryptoError> {
    let seed = Zeroizing::new(fixed::<MLKEM_SEED_LEN>("ML-KEM-768 seed", seed)?);
    let (d, z) = seed.split_at(32);
    let mut d = ml_kem::B32::try_from(d).map_err(|_| CryptoError::BadLength {
        what: "ML-KEM-768 seed",
        expected: MLKEM_SEED_LEN,
        got: seed.len(),
    })?;
    let mut z = ml_kem::B32::try_from(z).map_err(|_| CryptoError::BadLength {
        what: "ML-KEM-768 seed",
        expected: MLKEM_SEED_LEN,
        got: seed.len(),
    })?;
    let (dk, ek) = MlKem768::generate_deterministic(&d, &z);
    d.as_mut_slice().zeroize();
    z.as_mut_slice().zeroize();
    Ok(kem_pair(dk, &ek))
}

/// Parse an encoded ML-KEM-768 decapsulation key (FIPS 203 `dk`) that did not come from
/// this process's own encrypted state (known-answer tests, imports), applying the FIPS 203
/// section 7.3 decapsulation-key checks: the length, and the hash check (the embedded
/// `H(ek)` must be the hash of the embedded `ek`), plus the section 7.2 modulus check on
/// that embedded `ek`.
pub fn mlkem768_secret_from_bytes(bytes: &[u8]) -> Result<KemSecret, CryptoError> {
    let secret = KemSecret::from_bytes(bytes)?;
    // dk = dk_pke (384k bytes) || ek (384k + 32) || H(ek) (32) || z (32), with k = 3.
    let embedded = bytes
        .get(1152..1152 + MLKEM768_PUBLIC_LEN)
        .ok_or(CryptoError::BadKemSecretKey)?;
    let ek = mlkem768_public(embedded).map_err(|_| CryptoError::BadKemSecretKey)?;
    // `EncapsulationKey` equality compares the key and its hash: `ek` carries H(ek)
    // recomputed from the embedded key, the parsed secret the hash stored in `dk`.
    if *secret.0.encapsulation_key() != ek {
        return Err(CryptoError::BadKemSecretKey);
    }
    Ok(secret)
}

/// Parse an ML-KEM-768 encapsulation key, applying the FIPS 203 section 7.2 modulus check
/// (decoding then re-encoding must give the same bytes).
pub fn mlkem768_public(
    bytes: &[u8],
) -> Result<<MlKem768 as KemCore>::EncapsulationKey, CryptoError> {
    let arr = ml_kem::Encoded::<<MlKem768 as KemCore>::EncapsulationKey>::try_from(bytes).map_err(
        |_| CryptoError::BadLength {
            what: "ML-KEM-768 encapsulation key",
            expected: MLKEM768_PUBLIC_LEN,
            got: bytes.len(),
        },
    )?;
    let ek = <MlKem768 as KemCore>::EncapsulationKey::from_bytes(&arr);
    if ek.as_bytes() != arr {
        return Err(CryptoError::BadKemPublicKey);
    }
    Ok(ek)
}

/// An ML-KEM-768 ciphertext.
pub type KemCiphertext = Box<[u8; MLKEM768_CIPHERTEXT_LEN]>;

/// Encapsulate to an encoded ML-KEM-768 public key: (ciphertext, shared secret).
pub fn mlkem768_encapsulate<R: RngCore + CryptoRng>(
    public: &[u8],
    rng: &mut R,
) -> Result<(KemCiphertext, Zeroizing<[u8; 32]>), CryptoError> {
    let ek = mlkem768_public(public)?;
    let (ct, ss) = ek
        .encapsulate(rng)
        .map_err(|()| CryptoError::BadKemPublicKey)?;
    let mut ciphertext = Box::new([0u8; MLKEM768_CIPHERTEXT_LEN]);
    ciphertext.copy_from_slice(&ct);
    let mut shared = Zeroizing::new([0u8; 32]);
    shared.copy_from_slice(&ss);
    Ok((ciphertext, shared))
}

/// Known-answer-test entry point: [`mlkem768_encapsulate`] with the 32-byte message `m`
/// (FIPS 203 `ML-KEM.Encaps_internal`) given instead of drawn from an RNG. Same parsing and
/// modulus check as the production function. Never use it with anything but test vectors:
/// ML-KEM is only secure when `m` is fresh randomness.
pub fn mlkem768_encapsulate_deterministic(
    public: &[u8],
    m: &[u8],
) -> Result<(KemCiphertext, Zeroizing<[u8; 32]>), CryptoError> {
    let ek = mlkem768_public(public)?;
    let m = ml_kem::B32::try_from(m).map_err(|_| CryptoError::BadLength {
        what: "ML-KEM-768 encapsulation message",
        expected: 32,
        got: m.len(),
    })?;
    let (ct, ss) = ek
        .encapsulate_deterministic(&m)
        .map_err(|()| CryptoError::BadKemPublicKey)?;
    let mut ciphertext = Box::new([0u8; MLKEM768_CIPHERTEXT_LEN]);
    ciphertext.copy_from_slice(&ct);
    let mut shared = Zeroizing::new([0u8; 32]);
    shared.copy_from_slice(&ss);
    Ok((ciphertext, shared))
}
