//! Attachments: files (account statements, PDFs) encrypted on the device and stored by the
//! relay as opaque blobs. No I/O: callers push bytes in and take bytes out.
//!
//! Each attachment gets a fresh random 32-byte key and a random 128-bit blob id. The file
//! is cut into plaintext chunks of [`CHUNK_LEN`] bytes (the last one shorter, possibly
//! empty for an empty file) and each chunk is sealed with ChaCha20-Poly1305 in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and
//! its Nonce-Reuse Misuse-Resistance", CRYPTO 2015):
//!
//! * nonce (12 bytes) = chunk index as an 11-byte big-endian integer || last-chunk flag
//!   (`0x01` on the final chunk, `0x00` otherwise);
//! * associated data = `"Sealpost_Attachment_v1" || blob_id` (22 + 16 bytes).
//!
//! Reordered chunks fail because the index is in the nonce; a stream cut at a chunk
//! boundary fails because its new last chunk was sealed without the last-chunk flag;
//! chunks appended after the real last chunk fail the same way; a blob moved to another
//! id fails because the id is in the associated data. The [`AttachmentDescriptor`] (key,
//! sizes, SHA-256 of the plaintext, name, media type) travels inside the end-to-end
//! encrypted message and is never shown to the relay; the receiver checks the sizes and
//! the hash once the last chunk has been opened.
//!
//! The specification is section "Attachments" of `docs/PROTOCOL.md`.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{self, bytes_array};
use crate::crypto::{self, AEAD_KEY_LEN, AEAD_NONCE_LEN, AEAD_TAG_LEN};
use crate::error::{DecodeError, EncodeError};
use crate::wire::{BoundedString, MAX_BLOB_CHUNK_LEN, MAX_BLOB_LEN};

/// Plaintext bytes per chunk (every chunk but the last is exactly this long).
pub const CHUNK_LEN: usize = 64 * 1024;
/// Ciphertext bytes per full chunk (plaintext plus the Poly1305 tag).
pub const SEALED_CHUNK_LEN: usize = CHUNK_LEN + AEAD_TAG_LEN;
/// Largest attachment plaintext: its ciphertext is exactly [`MAX_BLOB_LEN`] bytes
/// (64 MiB minus one tag per 64 KiB chunk, i.e. 64 MiB − 16 KiB).
pub const MAX_ATTACHMENT_LEN: u64 =
    MAX_BLOB_LEN - (MAX_BLOB_LEN / CHUNK_LEN as u64) * AEAD_TAG_LEN as u64;
/// Longest file name in a descriptor, bytes of UTF-8.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// Longest media type in a descriptor, bytes (RFC 6838 allows 127 + "/" + 127).
pub const MAX_MEDIA_TYPE_LEN: usize = 255;
/// Largest CBOR encoding of a descriptor accepted by [`AttachmentDescriptor::from_cbor`].
pub const MAX_DESCRIPTOR_LEN: usize = 1024;
/// Domain label at the start of every chunk's associated data.
pub const ATTACHMENT_AD_LABEL: &[u8] = b"Sealpost_Attachment_v1";
/// Length of a blob id.
pub const BLOB_ID_LEN: usize = 16;

// The largest sealed chunk fits in one `blob_chunk` frame.
const _: () = assert!(SEALED_CHUNK_LEN <= MAX_BLOB_CHUNK_LEN);

/// An attachment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    /// The plaintext is larger than [`MAX_ATTACHMENT_LEN`] (or a ciphertext larger than
    /// [`MAX_BLOB_LEN`]).
    #[error("attachment of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The size given.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// A chunk failed authentication: altered, reordered, from another blob or key, or a
    /// non-final chunk presented as final (truncation).
    #[error("attachment chunk {chunk} failed authentication")]
    Tampered {
        /// Index of the chunk.
        chunk: u64,
    },
    /// The ciphertext ended before the last chunk.
    #[error("attachment ciphertext truncated: {got} of {expected} bytes")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// More ciphertext arrived than the descriptor announces.
    #[error("attachment ciphertext longer than its descriptor says ({expected} bytes)")]
    Extended {
        /// Bytes expected.
        expected: u64,
    },
    /// A size disagrees with what was announced.
    #[error("attachment size mismatch: expected {expected} bytes, got {got}")]
    SizeMismatch {
        /// The announced size.
        expected: u64,
        /// The actual size.
        got: u64,
    },
    /// The decrypted plaintext does not have the SHA-256 the descriptor carries.
    #[error("attachment plaintext does not match its SHA-256")]
    HashMismatch,
    /// The descriptor is inconsistent (for example its ciphertext size does not follow from
    /// its plaintext size).
    #[error("invalid attachment descriptor: {0}")]
    BadDescriptor(&'static str),
    /// The AEAD refused its input (cannot happen for chunks within the bounds).
    #[error("attachment encryption failed")]
    Crypto,
}

/// A 32-byte attachment key. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AttachmentKey(#[serde(with = "bytes_array")] [u8; AEAD_KEY_LEN]);

impl AttachmentKey {
    /// A fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut k = [0u8; AEAD_KEY_LEN];
        rng.fill_bytes(&mut k);
        let key = Self(k);
        k.zeroize();
        key
    }

    /// A key from its bytes (tests and test vectors).
    pub fn from_bytes(bytes: [u8; AEAD_KEY_LEN]) -> Self {
        Self(bytes)
    }

    fn bytes(&self) -> &[u8; AEAD_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachmentKey(<redacted>)")
    }
}

impl PartialEq for AttachmentKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for AttachmentKey {}

/// Everything a recipient needs to fetch and decrypt an attachment. Sent inside the
/// end-to-end encrypted message, never to the relay. CBOR map with the field names below.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentDescriptor {
    /// The relay's name for the ciphertext (random).
    #[serde(with = "bytes_array")]
    pub blob_id: [u8; BLOB_ID_LEN],
    /// The attachment key.
    pub key: AttachmentKey,
    /// Plaintext length, bytes.
    pub size: u64,
    /// Ciphertext length, bytes (follows from `size`; checked).
    pub ciphertext_size: u64,
    /// SHA-256 of the whole plaintext.
    #[serde(with = "bytes_array")]
    pub sha256: [u8; 32],
    /// File name as shown to the user (not a path; the receiver sanitises it).
    pub file_name: BoundedString<MAX_FILE_NAME_LEN>,
    /// Media type, e.g. `application/pdf`.
    pub media_type: BoundedString<MAX_MEDIA_TYPE_LEN>,
}

impl AttachmentDescriptor {
    /// Check the internal consistency of the sizes.
    pub fn validate(&self) -> Result<(), AttachmentError> {
        if self.size > MAX_ATTACHMENT_LEN {
            return Err(AttachmentError::TooLarge {
                size: self.size,
                max: MAX_ATTACHMENT_LEN,
            });
        }
        if ciphertext_len(self.size)? != self.ciphertext_size {
            return Err(AttachmentError::BadDescriptor(
                "ciphertext size does not follow from the plaintext size",
            ));
        }
        Ok(())
    }

    /// CBOR encoding (to put inside an end-to-end encrypted message).
    pub fn to_cbor(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        codec::encode("attachment descriptor", self, MAX_DESCRIPTOR_LEN).map(Zeroizing::new)
    }

    /// Decode and validate a descriptor.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
        let d: Self = codec::decode("attachment descriptor", bytes, MAX_DESCRIPTOR_LEN)?;
        d.validate().map_err(|e| DecodeError::Malformed {
            what: "attachment descriptor",
            detail: e.to_string(),
        })?;
        Ok(d)
    }
}

/// Number of chunks of a plaintext of `size` bytes (at least 1: an empty file is one empty
/// final chunk).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_LEN as u64).max(1)
}

/// Ciphertext length of a plaintext of `size` bytes.
pub fn ciphertext_len(size: u64) -> Result<u64, AttachmentError> {
    if size > MAX_ATTACHMENT_LEN {
        return Err(AttachmentError::TooLarge {
            size,
            max: MAX_ATTACHMENT_LEN,
        });
    }
    Ok(size + chunk_count(size) * AEAD_TAG_LEN as u64)
}

/// Plaintext length of chunk `index` of a `size`-byte plaintext.
fn plain_chunk_len(size: u64, index: u64) -> usize {
    let start = index.saturating_mul(CHUNK_LEN as u64);
    size.saturating_sub(start).min(CHUNK_LEN as u64) as usize
}

/// The STREAM nonce of chunk `index`: 11-byte big-endian index || last-chunk flag.
pub fn chunk_nonce(index: u64, last: bool) -> [u8; AEAD_NONCE_LEN] {
    let mut n = [0u8; AEAD_NONCE_LEN];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// The associated data of every chunk of `blob_id`.
pub fn chunk_ad(blob_id: &[u8; BLOB_ID_LEN]) -> [u8; 38] {
    let mut ad = [0u8; 38];
    ad[..22].copy_from_slice(ATTACHMENT_AD_LABEL);
    ad[22..].copy_from_slice(blob_id);
    ad
}

/// Seal one chunk (at most [`CHUNK_LEN`] bytes).
pub fn seal_chunk(
    key: &AttachmentKey,
    blob_id: &[u8; BLOB_ID_LEN],
    index: u64,
    last: bool,
    plaintext: &[u8],
) -> Result<Vec<u8>, AttachmentError> {
    if plaintext.len() > CHUNK_LEN {
        return Err(AttachmentError::TooLarge {
            size: plaintext.len() as u64,
            max: CHUNK_LEN as u64,
        });
    }
    let mut buf = Vec::with_capacity(plaintext.len() + AEAD_TAG_LEN);
    buf.extend_from_slice(plaintext);
    crypto::aead_seal(
        key.bytes(),
        &chunk_nonce(index, last),
        &chunk_ad(blob_id),
        &mut buf,
    )
    .map_err(|_| AttachmentError::Crypto)?;
    Ok(buf)
}

/// Open one sealed chunk.
pub fn open_chunk(
    key: &AttachmentKey,
    blob_id: &[u8; BLOB_ID_LEN],
    index: u64,
    last: bool,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
    if sealed.len() > SEALED_CHUNK_LEN || sealed.len() < AEAD_TAG_LEN {
        return Err(AttachmentError::Tampered { chunk: index });
    }
    let mut buf = Zeroizing::new(sealed.to_vec());
    crypto::aead_open(
        key.bytes(),
        &chunk_nonce(index, last),
        &chunk_ad(blob_id),
        &mut buf,
    )
    .map_err(|_| AttachmentError::Tampered { chunk: index })?;
    Ok(buf)
}

/// Streaming encryption of one attachment whose plaintext size is known up front.
///
/// Push plaintext in pieces of any size; every completed chunk comes back sealed, in order.
/// [`Encryptor::finish`] checks that exactly the announced number of bytes was pushed and
/// returns the descriptor.
pub struct Encryptor {
    key: AttachmentKey,
    blob_id: [u8; BLOB_ID_LEN],
    size: u64,
    pushed: u64,
    index: u64,
    chunks: u64,
    buf: Zeroizing<Vec<u8>>,
    hash: Sha256,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("blob_id", &hex::encode(self.blob_id))
            .field("size", &self.size)
            .field("pushed", &self.pushed)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Start encrypting a plaintext of `size` bytes under a fresh random key and blob id.
    pub fn new<R: RngCore + CryptoRng>(rng: &mut R, size: u64) -> Result<Self, AttachmentError> {
        let key = AttachmentKey::generate(rng);
        let mut blob_id = [0u8; BLOB_ID_LEN];
        rng.fill_bytes(&mut blob_id);
        Self::with_key(key, blob_id, size)
    }

    /// Start with a given key and blob id (tests and test vectors; real callers use
    /// [`Encryptor::new`] so that every attachment has a fresh key).
    pub fn with_key(
        key: AttachmentKey,
        blob_id: [u8; BLOB_ID_LEN],
        size: u64,
    ) -> Result<Self, AttachmentError> {
        ciphertext_len(size)?;
        Ok(Self {
            key,
            blob_id,
            size,
            pushed: 0,
            index: 0,
            chunks: chunk_count(size),
            buf: Zeroizing::new(Vec::with_capacity(CHUNK_LEN)),
            hash: Sha256::new(),
        })
    }

    /// The blob id.
    pub fn blob_id(&self) -> [u8; BLOB_ID_LEN] {
        self.blob_id
    }

    /// Total ciphertext length (what the relay is told in `blob_upload`).
    pub fn ciphertext_size(&self) -> u64 {
        self.size + self.chunks * AEAD_TAG_LEN as u64
    }

    /// Plaintext bytes pushed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Push plaintext; returns the chunks completed by it, sealed, in order. Pushing more
    /// than the announced size is [`AttachmentError::SizeMismatch`].
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, AttachmentError> {
        let after = self.pushed.saturating_add(data.len() as u64);
        if after > self.size {
            return Err(AttachmentError::SizeMismatch {
                expected: self.size,
                got: after,
            });
        }
        self.pushed = after;
        self.hash.update(data);
        let mut out = Vec::new();
        while !data.is_empty() {
            let want = plain_chunk_len(self.size, self.index) - self.buf.len();
            let n = want.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == plain_chunk_len(self.size, self.index) {
                out.push(self.seal_buffered()?);
            }
        }
        Ok(out)
    }

    fn seal_buffered(&mut self) -> Result<Vec<u8>, AttachmentError> {
        let last = self.index + 1 == self.chunks;
        let sealed = seal_chunk(&self.key, &self.blob_id, self.index, last, &self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(sealed)
    }

    /// Finish: the sealed chunks still owed (only the single empty chunk of an empty file)
    /// and the descriptor. Fewer bytes pushed than announced is
    /// [`AttachmentError::SizeMismatch`].
    pub fn finish(
        mut self,
        file_name: &str,
        media_type: &str,
    ) -> Result<(Vec<Vec<u8>>, AttachmentDescriptor), AttachmentError> {
        if self.pushed != self.size {
            return Err(AttachmentError::SizeMismatch {
                expected: self.size,
                got: self.pushed,
            });
        }
        let mut rest = Vec::new();
        while self.index < self.chunks {
            rest.push(self.seal_buffered()?);
        }
        let ciphertext_size = self.ciphertext_size();
        let hash = std::mem::take(&mut self.hash);
        let descriptor = AttachmentDescriptor {
            blob_id: self.blob_id,
            key: self.key.clone(),
            size: self.size,
            ciphertext_size,
            sha256: hash.finalize().into(),
            file_name: BoundedString::truncating(file_name),
            media_type: BoundedString::truncating(media_type),
        };
        Ok((rest, descriptor))
    }
}

/// Streaming decryption and verification of one attachment.
///
/// Push ciphertext in pieces of any size (the relay's `blob_chunk` frames need not line up
/// with sealed chunks); authenticated plaintext comes back chunk by chunk, in order.
/// [`Decryptor::finish`] checks that the last chunk arrived and that the plaintext has the
/// size and SHA-256 of the descriptor. Until `finish` succeeds, treat the output as
/// provisional.
pub struct Decryptor {
    key: AttachmentKey,
    blob_id: [u8; BLOB_ID_LEN],
    size: u64,
    ciphertext_size: u64,
    sha256: [u8; 32],
    received: u64,
    produced: u64,
    index: u64,
    chunks: u64,
    buf: Vec<u8>,
    hash: Sha256,
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("blob_id", &hex::encode(self.blob_id))
            .field("ciphertext_size", &self.ciphertext_size)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// Start decrypting the blob `descriptor` names.
    pub fn new(descriptor: &AttachmentDescriptor) -> Result<Self, AttachmentError> {
        descriptor.validate()?;
        Ok(Self {
            key: descriptor.key.clone(),
            blob_id: descriptor.blob_id,
            size: descriptor.size,
            ciphertext_size: descriptor.ciphertext_size,
            sha256: descriptor.sha256,
            received: 0,
            produced: 0,
            index: 0,
            chunks: chunk_count(descriptor.size),
            buf: Vec::with_capacity(SEALED_CHUNK_LEN),
            hash: Sha256::new(),
        })
    }

    /// Ciphertext bytes pushed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Push ciphertext; returns the plaintext of the chunks it completed.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
        let after = self.received.saturating_add(data.len() as u64);
        if after > self.ciphertext_size {
            return Err(AttachmentError::Extended {
                expected: self.ciphertext_size,
            });
        }
        self.received = after;
        let mut out = Zeroizing::new(Vec::new());
        while !data.is_empty() {
            let sealed_len = plain_chunk_len(self.size, self.index) + AEAD_TAG_LEN;
            let n = (sealed_len - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == sealed_len {
                let last = self.index + 1 == self.chunks;
                let plain = open_chunk(&self.key, &self.blob_id, self.index, last, &self.buf)?;
                self.buf.clear();
                self.index += 1;
                self.hash.update(&plain[..]);
                self.produced += plain.len() as u64;
                out.extend_from_slice(&plain);
            }
        }
        Ok(out)
    }

    /// Check that everything arrived and matches the descriptor.
    pub fn finish(mut self) -> Result<(), AttachmentError> {
        if self.index < self.chunks || self.received < self.ciphertext_size {
            return Err(AttachmentError::Truncated {
                got: self.received,
                expected: self.ciphertext_size,
            });
        }
        if self.produced != self.size {
            return Err(AttachmentError::SizeMismatch {
                expected: self.size,
                got: self.produced,
            });
        }
        let hash: [u8; 32] = std::mem::take(&mut self.hash).finalize().into();
        if !bool::from(hash.ct_eq(&self.sha256)) {
            return Err(AttachmentError::HashMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    }

    /// Encrypt `plain`, pushing it in pieces of `piece` bytes.
    fn encrypt(plain: &[u8], piece: usize) -> (Vec<Vec<u8>>, AttachmentDescriptor) {
        let mut rng = StdRng::seed_from_u64(7);
        let mut enc = Encryptor::new(&mut rng, plain.len() as u64).unwrap();
        let mut chunks = Vec::new();
        for p in plain.chunks(piece.max(1)) {
            chunks.extend(enc.push(p).unwrap());
        }
        let (rest, d) = enc.finish("statement.pdf", "application/pdf").unwrap();
        chunks.extend(rest);
        (chunks, d)
    }

    fn decrypt(
        d: &AttachmentDescriptor,
        ct: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, AttachmentError> {
        let mut dec = Decryptor::new(d)?;
        let mut out = Vec::new();
        for p in ct.chunks(piece.max(1)) {
            out.extend_from_slice(&dec.push(p)?);
        }
        dec.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trip_at_chunk_boundaries_and_piece_sizes() {
        for len in [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            3 * CHUNK_LEN,
            3 * CHUNK_LEN + 17,
        ] {
            let plain = random(len, len as u64);
            for piece in [1000, CHUNK_LEN, 100_000] {
                let (chunks, d) = encrypt(&plain, piece);
                assert_eq!(chunks.len() as u64, chunk_count(len as u64));
                let ct: Vec<u8> = chunks.concat();
                assert_eq!(ct.len() as u64, d.ciphertext_size);
                assert_eq!(d.ciphertext_size, ciphertext_len(len as u64).unwrap());
                assert!(chunks.iter().all(|c| c.len() <= MAX_BLOB_CHUNK_LEN));
                assert_eq!(d.sha256, crypto::sha256(&[&plain]));
                for dpiece in [7, 4096, SEALED_CHUNK_LEN, 1 << 20] {
                    assert_eq!(decrypt(&d, &ct, dpiece).unwrap(), plain, "len {len}");
                }
            }
        }
    }

    #[test]
    fn nonce_layout_and_associated_data() {
        assert_eq!(chunk_nonce(0, false), [0u8; 12]);
        assert_eq!(
            chunk_nonce(0x0102_0304_0506_0708, true),
            [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1]
        );
        let ad = chunk_ad(&[0xAB; 16]);
        assert_eq!(&ad[..22], b"Sealpost_Attachment_v1");
        assert_eq!(&ad[22..], &[0xAB; 16]);
        // A chunk sealed by hand with the documented layout opens with the decryptor.
        let key = AttachmentKey::from_bytes([9; 32]);
        let blob_id = [3u8; 16];
        let plain = b"hello attachment".to_vec();
        let mut buf = plain.clone();
        crypto::aead_seal(&[9; 32], &chunk_nonce(0, true), &ad_for(&blob_id), &mut buf).unwrap();
        let d = AttachmentDescriptor {
            blob_id,
            key,
            size: plain.len() as u64,
            ciphertext_size: plain.len() as u64 + 16,
            sha256: crypto::sha256(&[&plain]),
            file_name: BoundedString::truncating("a.txt"),
            media_type: BoundedString::truncating("text/plain"),
        };
        assert_eq!(decrypt(&d, &buf, 5).unwrap(), plain);
    }

    fn ad_for(blob_id: &[u8; 16]) -> Vec<u8> {
        [ATTACHMENT_AD_LABEL, &blob_id[..]].concat()
    }

    #[test]
    fn size_bounds() {
        assert_eq!(MAX_ATTACHMENT_LEN, 64 * 1024 * 1024 - 16 * 1024);
        assert_eq!(ciphertext_len(MAX_ATTACHMENT_LEN).unwrap(), MAX_BLOB_LEN);
        assert!(matches!(
            ciphertext_len(MAX_ATTACHMENT_LEN + 1),
            Err(AttachmentError::TooLarge { .. })
        ));
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(
            Encryptor::new(&mut rng, MAX_ATTACHMENT_LEN + 1),
            Err(AttachmentError::TooLarge { .. })
        ));
        assert_eq!(ciphertext_len(0).unwrap(), 16);
        assert_eq!(
            ciphertext_len(CHUNK_LEN as u64).unwrap(),
            CHUNK_LEN as u64 + 16
        );
        assert_eq!(
            ciphertext_len(CHUNK_LEN as u64 + 1).unwrap(),
            CHUNK_LEN as u64 + 33
        );
    }

    #[test]
    fn every_flipped_bit_position_class_is_detected() {
        let plain = random(3 * CHUNK_LEN + 100, 2);
        let (chunks, d) = encrypt(&plain, CHUNK_LEN);
        let ct = chunks.concat();
        for (pos, chunk) in [
            (0, 0),
            (100, 0),
            (SEALED_CHUNK_LEN - 1, 0),
            (SEALED_CHUNK_LEN + 5, 1),
            (3 * SEALED_CHUNK_LEN + 3, 3),
            (ct.len() - 1, 3),
        ] {
            let mut bad = ct.clone();
            bad[pos] ^= 0x01;
            assert_eq!(
                decrypt(&d, &bad, 1000),
                Err(AttachmentError::Tampered { chunk })
            );
        }
    }

    #[test]
    fn reordered_chunks_are_detected() {
        let plain = random(3 * CHUNK_LEN, 3);
        let (mut chunks, d) = encrypt(&plain, CHUNK_LEN);
        chunks.swap(0, 1);
        assert_eq!(
            decrypt(&d, &chunks.concat(), 999),
            Err(AttachmentError::Tampered { chunk: 0 })
        );
    }

    #[test]
    fn truncation_is_detected_even_with_a_matching_descriptor() {
        let plain = random(3 * CHUNK_LEN, 4);
        let (chunks, d) = encrypt(&plain, CHUNK_LEN);
        // Missing the last chunk against the true descriptor: truncated.
        let short = chunks[..2].concat();
        assert!(matches!(
            decrypt(&d, &short, 4096),
            Err(AttachmentError::Truncated { .. })
        ));
        // A descriptor whose sizes were altered to match the cut stream (hash kept): the
        // new last chunk was not sealed as last, so STREAM refuses it.
        let mut lying = d.clone();
        lying.size = 2 * CHUNK_LEN as u64;
        lying.ciphertext_size = ciphertext_len(lying.size).unwrap();
        assert_eq!(
            decrypt(&lying, &short, 4096),
            Err(AttachmentError::Tampered { chunk: 1 })
        );
    }

    #[test]
    fn extension_is_detected() {
        let plain = random(2 * CHUNK_LEN, 5);
        let (chunks, d) = encrypt(&plain, CHUNK_LEN);
        // One byte more than announced.
        let mut long = chunks.concat();
        long.push(0);
        assert!(matches!(
            decrypt(&d, &long, 4096),
            Err(AttachmentError::Extended { .. })
        ));
        // A sealed chunk appended after the real last one, with a descriptor that
        // announces it: the old last chunk now sits at a non-final position and fails.
        let extra = seal_chunk(&d.key, &d.blob_id, 2, true, &random(10, 6)).unwrap();
        let mut longer = d.clone();
        longer.size += 10;
        longer.ciphertext_size = ciphertext_len(longer.size).unwrap();
        let mut ct = chunks.concat();
        ct.extend_from_slice(&extra);
        assert_eq!(
            decrypt(&longer, &ct, 4096),
            Err(AttachmentError::Tampered { chunk: 1 })
        );
    }

    #[test]
    fn wrong_blob_id_key_or_hash_is_detected() {
        let plain = random(CHUNK_LEN + 5, 9);
        let (chunks, d) = encrypt(&plain, CHUNK_LEN);
        let ct = chunks.concat();
        let mut other_id = d.clone();
        other_id.blob_id[0] ^= 1;
        assert_eq!(
            decrypt(&other_id, &ct, 4096),
            Err(AttachmentError::Tampered { chunk: 0 })
        );
        let mut other_key = d.clone();
        other_key.key = AttachmentKey::from_bytes([1; 32]);
        assert_eq!(
            decrypt(&other_key, &ct, 4096),
            Err(AttachmentError::Tampered { chunk: 0 })
        );
        let mut other_hash = d.clone();
        other_hash.sha256[31] ^= 1;
        assert_eq!(
            decrypt(&other_hash, &ct, 4096),
            Err(AttachmentError::HashMismatch)
        );
    }

    #[test]
    fn encryptor_checks_the_announced_size() {
        let mut rng = StdRng::seed_from_u64(10);
        let mut enc = Encryptor::new(&mut rng, 10).unwrap();
        assert!(matches!(
            enc.push(&[0u8; 11]),
            Err(AttachmentError::SizeMismatch { .. })
        ));
        let mut enc = Encryptor::new(&mut rng, 10).unwrap();
        enc.push(&[0u8; 9]).unwrap();
        assert!(matches!(
            enc.finish("x", "y"),
            Err(AttachmentError::SizeMismatch {
                expected: 10,
                got: 9
            })
        ));
    }

    #[test]
    fn fresh_key_and_blob_id_per_attachment() {
        let mut rng = StdRng::seed_from_u64(11);
        let a = Encryptor::new(&mut rng, 1).unwrap();
        let b = Encryptor::new(&mut rng, 1).unwrap();
        assert_ne!(a.blob_id(), b.blob_id());
        let (_, da) = a.finish_for_test();
        let (_, db) = b.finish_for_test();
        assert_ne!(da.key, db.key);
    }

    impl Encryptor {
        fn finish_for_test(mut self) -> (Vec<Vec<u8>>, AttachmentDescriptor) {
            let mut c = self.push(&[0]).unwrap();
            let (rest, d) = self.finish("f", "t").unwrap();
            c.extend(rest);
            (c, d)
        }
    }

    #[test]
    fn descriptor_cbor_round_trip_bounds_and_debug() {
        let plain = random(1234, 12);
        let (_, d) = encrypt(&plain, 100);
        let bytes = d.to_cbor().unwrap();
        let back = AttachmentDescriptor::from_cbor(&bytes).unwrap();
        assert_eq!(back, d);
        // Field names as documented.
        let v: serde_cbor::Value = serde_cbor::from_slice(&bytes).unwrap();
        let serde_cbor::Value::Map(m) = v else {
            panic!("not a map")
        };
        let keys: Vec<String> = m
            .keys()
            .map(|k| match k {
                serde_cbor::Value::Text(t) => t.clone(),
                other => panic!("key {other:?}"),
            })
            .collect();
        for k in [
            "blob_id",
            "key",
            "size",
            "ciphertext_size",
            "sha256",
            "file_name",
            "media_type",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k}");
        }
        // Debug never shows the key.
        let dbg = format!("{d:?}");
        assert!(dbg.contains("redacted"));
        let key_hex = hex::encode(d.key.bytes());
        assert!(!dbg.contains(&key_hex));
        assert!(!dbg.contains(&format!("{:?}", d.key.bytes())));
        // Inconsistent sizes are refused.
        let mut bad = d.clone();
        bad.ciphertext_size += 1;
        assert!(AttachmentDescriptor::from_cbor(&bad.to_cbor().unwrap()).is_err());
        // Over-long names are refused on decode.
        let long = "n".repeat(MAX_FILE_NAME_LEN + 1);
        let truncated = BoundedString::<MAX_FILE_NAME_LEN>::truncating(&long);
        assert_eq!(truncated.as_str().len(), MAX_FILE_NAME_LEN);
        assert!(BoundedString::<MAX_FILE_NAME_LEN>::try_from(long).is_err());
    }
}
