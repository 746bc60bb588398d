//! # The transparency log: an append-only Merkle log of every trust event and operator
//! action, with signed checkpoints and witness cosignatures
//!
//! Pure, like the rest of the crate: no I/O, no clock.
//!
//! * [`merkle`]: RFC 9162 §2.1 hashing, [`MerkleTree`], inclusion and consistency proofs.
//! * [`note`]: checkpoints (C2SP `tlog-checkpoint`) as signed notes (C2SP `signed-note`),
//!   signed by the relay's [`LogSigner`]; witness cosignatures (C2SP `tlog-cosignature`,
//!   `cosignature/v1`) by a [`WitnessSigner`].
//! * [`leaf`]: the [`LogLeaf`] format (who, when, what; never message content).
//!
//! The roster lists the log key(s), the witness keys and how many witness cosignatures a
//! checkpoint needs before a client accepts it ([`TransparencyPolicy`]), so everything is
//! chained to the organisation root. The specification is `docs/PROTOCOL.md` §20.

pub mod leaf;
pub mod merkle;
pub mod note;

use serde::{Deserialize, Serialize};

use crate::codec::bytes_array;

pub use leaf::{Actor, LeafEvent, LogLeaf, LoggedAction, MAX_LEAF_LEN};
pub use merkle::{
    empty_root, leaf_hash, node_hash, verify_consistency, verify_inclusion, Hash, MerkleTree,
    MAX_PROOF_HASHES,
};
pub use note::{
    Checkpoint, KeyName, LogSigner, NoteKey, NoteSignature, SignedCheckpoint, SignedNote,
    VerifiedCosignature, WitnessSigner, MAX_NOTE_LEN,
};

/// Most log keys a roster lists (a rotation keeps the old one beside the new).
pub const MAX_LOG_KEYS: usize = 4;
/// Most witnesses a roster lists.
pub const MAX_WITNESSES: usize = 16;

/// Why a transparency-log operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlogError {
    /// A tree size beyond the tree.
    #[error("tree size {size} is beyond the tree's {tree} leaves")]
    SizeBeyondTree {
        /// Asked for.
        size: u64,
        /// The tree's size.
        tree: u64,
    },
    /// A leaf index not below the tree size.
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexBeyondSize {
        /// The index.
        index: u64,
        /// The size.
        size: u64,
    },
    /// A proof with more hashes than any tree needs.
    #[error("a proof of {got} hashes, more than the maximum of {max}")]
    ProofTooLong {
        /// Hashes in the proof.
        got: usize,
        /// The bound.
        max: usize,
    },
    /// An inclusion proof did not verify.
    #[error("inclusion proof does not verify: {0}")]
    InclusionProof(&'static str),
    /// A consistency proof did not verify.
    #[error("consistency proof does not verify: {0}")]
    ConsistencyProof(&'static str),
    /// Input larger than its bound.
    #[error("{what} is {got} bytes, more than the maximum of {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The bound.
        max: usize,
    },
    /// More items than the bound.
    #[error("more {what} than the maximum of {max}")]
    TooMany {
        /// What.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// A key name (or origin) that the signed-note format does not allow.
    #[error("invalid key name: {0}")]
    BadKeyName(&'static str),
    /// A public key that is not a valid Ed25519 point.
    #[error("invalid Ed25519 public key")]
    BadPublicKey,
    /// A secret key of the wrong length.
    #[error("invalid Ed25519 secret key")]
    BadSecretKey,
    /// A verifier key string that does not parse.
    #[error("invalid verifier key: {0}")]
    BadVerifierKey(&'static str),
    /// A malformed signed note.
    #[error("malformed signed note: {0}")]
    BadNote(&'static str),
    /// A malformed checkpoint.
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(&'static str),
    /// A signature of a known key that does not verify.
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
    /// No signature by a known log key.
    #[error("the checkpoint carries no signature by a known log key")]
    NoLogSignature,
    /// Fewer verified witness cosignatures than the roster requires.
    #[error("{got} witness cosignatures verify, the roster requires {need}")]
    NotEnoughCosignatures {
        /// Verified.
        got: usize,
        /// Required.
        need: u8,
    },
    /// A leaf that is not the one the proof was asked for.
    #[error("the log's leaf does not match: {0}")]
    LeafMismatch(&'static str),
    /// The roster's transparency policy is not well formed.
    #[error("invalid transparency policy: {0}")]
    BadPolicy(&'static str),
}

/// What the roster says about the transparency log: the relay's log keys (type 0x01, the
/// checkpoint origin is the key's name), the witness keys (cosignature/v1, type 0x04) and
/// how many distinct witnesses must have cosigned a checkpoint before a client accepts it.
///
/// Canonical bytes (appended to the roster's, format 3; see [`crate::trust`]):
/// `u8 log_key_count || for each: u16 len || name || key (32)
///  || u8 witness_count || for each: u16 len || name || key (32) || u8 witness_threshold`,
/// keys and witnesses sorted by name, then key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparencyPolicy {
    /// The relay's log public keys (1..=[`MAX_LOG_KEYS`]).
    pub log_keys: Vec<NoteKey>,
    /// Witness public keys (0..=[`MAX_WITNESSES`]).
    pub witnesses: Vec<NoteKey>,
    /// Distinct witness cosignatures a checkpoint needs (at most the number of witnesses).
    pub witness_threshold: u8,
}

impl TransparencyPolicy {
    /// Sort and check: 1..=4 log keys, at most 16 witnesses, no key or witness name
    /// listed twice, a threshold the witnesses can reach.
    pub fn normalize(&mut self) -> Result<(), TlogError> {
        if self.log_keys.is_empty() || self.log_keys.len() > MAX_LOG_KEYS {
            return Err(TlogError::BadPolicy("1 to 4 log keys"));
        }
        if self.witnesses.len() > MAX_WITNESSES {
            return Err(TlogError::BadPolicy("at most 16 witnesses"));
        }
        let order = |a: &NoteKey, b: &NoteKey| {
            a.name()
                .cmp(b.name())
                .then_with(|| a.public().cmp(b.public()))
        };
        self.log_keys.sort_by(order);
        self.witnesses.sort_by(order);
        if self.log_keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(TlogError::BadPolicy("a log key is listed twice"));
        }
        if self
            .witnesses
            .windows(2)
            .any(|w| w[0].name() == w[1].name())
        {
            return Err(TlogError::BadPolicy("a witness name is listed twice"));
        }
        if usize::from(self.witness_threshold) > self.witnesses.len() {
            return Err(TlogError::BadPolicy(
                "the witness threshold is more than the number of witnesses",
            ));
        }
        Ok(())
    }
}

/// CBOR form of a [`NoteKey`]: `{"name": text, "key": bytes(32)}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteKeyWire {
    name: String,
    #[serde(with = "bytes_array")]
    key: [u8; 32],
}

impl Serialize for NoteKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        NoteKeyWire {
            name: self.name().as_str().to_owned(),
            key: *self.public(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NoteKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = NoteKeyWire::deserialize(d)?;
        let name = KeyName::new(&w.name).map_err(serde::de::Error::custom)?;
        NoteKey::new(name, &w.key).map_err(serde::de::Error::custom)
    }
}

/// A proof that a leaf is in the log at a checkpoint, and that the checkpoint extends an
/// older one the client holds. What [`verify_proof`] checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafProof<'a> {
    /// The leaf bytes.
    pub leaf: &'a [u8],
    /// Its index.
    pub index: u64,
    /// Inclusion proof in the checkpoint's tree.
    pub inclusion: &'a [Hash],
    /// Consistency proof from `old`'s size to the checkpoint's.
    pub consistency: &'a [Hash],
}

/// Verify a leaf proof against a checkpoint already verified (signature and cosignatures)
/// and the older checkpoint the client accepted last (`None`: none yet). Returns the
/// decoded leaf.
pub fn verify_proof(
    proof: &LeafProof<'_>,
    checkpoint: &Checkpoint,
    old: Option<&Checkpoint>,
) -> Result<LogLeaf, TlogError> {
    let leaf = LogLeaf::from_bytes(proof.leaf)
        .map_err(|_| TlogError::LeafMismatch("the leaf does not decode"))?;
    verify_inclusion(
        &leaf_hash(proof.leaf),
        proof.index,
        checkpoint.size,
        proof.inclusion,
        &checkpoint.root,
    )?;
    if let Some(old) = old {
        if old.origin != checkpoint.origin {
            return Err(TlogError::BadCheckpoint("another log's checkpoint"));
        }
        verify_consistency(
            old.size,
            checkpoint.size,
            &old.root,
            &checkpoint.root,
            proof.consistency,
        )?;
    }
    Ok(leaf)
}

/// Most leaves in one `log_leaves` answer.
pub const MAX_LEAVES_PER_FRAME: usize = 256;
/// A `log_leaves` answer stops adding leaves once it holds this many bytes of them.
pub const LEAVES_FRAME_BUDGET: usize = 192 * 1024;
/// Longest signature line in `submit_cosignature`, bytes.
pub const MAX_SIGNATURE_LINE_LEN: usize = 512;

/// A proof hash on the wire: a 32-byte CBOR byte string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProofHash(#[serde(with = "bytes_array")] pub Hash);

/// Leaf bytes on the wire: a CBOR byte string of at most [`MAX_LEAF_LEN`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_bytes::ByteBuf", into = "serde_bytes::ByteBuf")]
pub struct LeafBytes(Vec<u8>);

impl LeafBytes {
    /// Wrap leaf bytes, refusing more than [`MAX_LEAF_LEN`].
    pub fn new(bytes: Vec<u8>) -> Result<Self, crate::DecodeError> {
        if bytes.len() > MAX_LEAF_LEN {
            return Err(crate::DecodeError::TooLarge {
                what: "log leaf",
                got: bytes.len(),
                max: MAX_LEAF_LEN,
            });
        }
        Ok(Self(bytes))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<serde_bytes::ByteBuf> for LeafBytes {
    type Error = crate::DecodeError;
    fn try_from(b: serde_bytes::ByteBuf) -> Result<Self, Self::Error> {
        Self::new(b.into_vec())
    }
}

impl From<LeafBytes> for serde_bytes::ByteBuf {
    fn from(b: LeafBytes) -> Self {
        serde_bytes::ByteBuf::from(b.0)
    }
}

/// Hashes of a proof as plain arrays.
pub fn proof_hashes(p: &[ProofHash]) -> Vec<Hash> {
    p.iter().map(|h| h.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccountId;
    use crate::wire::{decode_frame, encode_frame, BoundedString, BoundedVec, Frame, FrameBody};

    fn round_trip(body: FrameBody) -> FrameBody {
        let bytes = encode_frame(&Frame::new(7, body)).unwrap_or_default();
        let payload = bytes
            .get(crate::wire::FRAME_PREFIX_LEN..)
            .unwrap_or_default();
        match decode_frame(payload) {
            Ok(f) => f.body,
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn the_log_frames_round_trip_and_are_bounded() {
        let account = AccountId::new("alice").unwrap_or_else(|_| unreachable!());
        let bodies = vec![
            FrameBody::GetCheckpoint,
            FrameBody::ProveLogHead {
                account,
                length: 3,
                head: [1; 32],
                old_size: 2,
            },
            FrameBody::ProveRoster {
                version: 2,
                hash: [2; 32],
                old_size: 0,
            },
            FrameBody::GetLogLeaves {
                start: 5,
                count: 10,
            },
            FrameBody::GetConsistency {
                old_size: 1,
                new_size: 9,
            },
            FrameBody::SubmitCosignature {
                size: 9,
                line: BoundedString::truncating("\u{2014} w AAAA"),
            },
            FrameBody::Checkpoint {
                note: BoundedString::truncating("a\n1\nAA==\n\n\u{2014} a AAAA\n"),
            },
            FrameBody::LogProof {
                checkpoint: BoundedString::truncating("x"),
                index: 4,
                leaf: LeafBytes::new(vec![1, 2, 3]).unwrap_or_else(|_| unreachable!()),
                inclusion: BoundedVec::new(vec![ProofHash([3; 32])])
                    .unwrap_or_else(|_| unreachable!()),
                consistency: crate::trust::empty_list(),
            },
            FrameBody::LogLeaves {
                start: 0,
                leaves: BoundedVec::new(vec![
                    LeafBytes::new(vec![9]).unwrap_or_else(|_| unreachable!())
                ])
                .unwrap_or_else(|_| unreachable!()),
                size: 1,
            },
            FrameBody::Consistency {
                old_size: 1,
                new_size: 2,
                proof: crate::trust::empty_list(),
            },
        ];
        for b in bodies {
            assert_eq!(round_trip(b.clone()), b);
        }
        assert!(LeafBytes::new(vec![0; MAX_LEAF_LEN + 1]).is_err());
        // A leaf larger than the bound is refused when decoded.
        let big = serde_bytes::ByteBuf::from(vec![0u8; MAX_LEAF_LEN + 1]);
        let cbor = crate::codec::encode("t", &big, 1 << 20).unwrap_or_default();
        assert!(crate::codec::decode::<LeafBytes>("t", &cbor, 1 << 20).is_err());
    }

    /// The frame examples of docs/PROTOCOL.md §20.6, byte for byte.
    #[test]
    fn the_documented_frame_examples() {
        let account = AccountId::new("alice").unwrap_or_else(|_| unreachable!());
        let cases = [
            (FrameBody::GetCheckpoint, EXAMPLE_GET_CHECKPOINT),
            (
                FrameBody::ProveLogHead {
                    account,
                    length: 2,
                    head: [0xab; 32],
                    old_size: 5,
                },
                EXAMPLE_PROVE_LOG_HEAD,
            ),
            (
                FrameBody::GetLogLeaves {
                    start: 0,
                    count: 100,
                },
                EXAMPLE_GET_LOG_LEAVES,
            ),
        ];
        let got: Vec<(String, &str)> = cases
            .into_iter()
            .map(|(body, want)| {
                let bytes = encode_frame(&Frame::new(7, body)).unwrap_or_default();
                let payload = bytes
                    .get(crate::wire::FRAME_PREFIX_LEN..)
                    .unwrap_or_default();
                println!("{}", hex::encode(payload));
                (hex::encode(payload), want)
            })
            .collect();
        for (got, want) in got {
            assert_eq!(got, want);
        }
    }

    const EXAMPLE_GET_CHECKPOINT: &str =
        "a36176016269640764626f6479a161746e6765745f636865636b706f696e74";
    const EXAMPLE_PROVE_LOG_HEAD: &str = "a36176016269640764626f6479a261746e70726f76655f6c6f675f686561646163a4676163636f756e7465616c696365666c656e6774680264686561645820abababababababababababababababababababababababababababababababab686f6c645f73697a6505";
    const EXAMPLE_GET_LOG_LEAVES: &str =
        "a36176016269640764626f6479a261746e6765745f6c6f675f6c65617665736163a26573746172740065636f756e741864";
}
