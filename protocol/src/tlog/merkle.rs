//! RFC 9162 §2.1 Merkle tree hashing, inclusion and consistency proofs.
//!
//! ```text
//! leaf hash = SHA-256(0x00 || leaf bytes)
//! node hash = SHA-256(0x01 || left || right)
//! MTH({})       = SHA-256("")
//! MTH({d0})     = leaf hash of d0
//! MTH(D[n])     = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
//! ```
//!
//! Generation ([`MerkleTree::inclusion_proof`], [`MerkleTree::consistency_proof`]) follows
//! RFC 9162 §2.1.3.1 and §2.1.4.1 (RFC 6962 `PATH` and `SUBPROOF`); verification
//! ([`verify_inclusion`], [`verify_consistency`]) follows §2.1.3.2 and §2.1.4.2. These are
//! tree algorithms over SHA-256 (from the `sha2` crate), not a cryptographic primitive;
//! the tests check them against the RFC 6962 vectors other implementations use.

use sha2::{Digest as _, Sha256};

use super::TlogError;

/// A SHA-256 value in the tree.
pub type Hash = [u8; 32];

/// Most hashes in a proof: a tree of at most 2^63 leaves has proofs of at most 63 hashes
/// (inclusion) or 64 (consistency, with the prepended old root).
pub const MAX_PROOF_HASHES: usize = 64;

/// `SHA-256("")`, the root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// An append-only tree of leaf hashes that keeps, for every level `k`, the hashes of the
/// complete, aligned subtrees of `2^k` leaves: about two hashes (64 bytes) per leaf. Any
/// root or proof then costs O(log² n) hash operations instead of O(n). The caller bounds
/// the number of leaves (the relay's `MAX_LOG_LEAVES`).
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    /// `levels[0]` are the leaf hashes; `levels[k][i]` is `MTH(D[i·2^k : (i+1)·2^k])`.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of these leaf hashes.
    pub fn from_leaf_hashes(hashes: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Self::new();
        for h in hashes {
            t.push(h);
        }
        t
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Append a leaf hash; returns its index.
    pub fn push(&mut self, leaf: Hash) -> u64 {
        let index = self.size();
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            // A right child completes its parent.
            if row.len() % 2 == 1 {
                break;
            }
            let n = row.len();
            hash = node_hash(&row[n - 2], &row[n - 1]);
            level += 1;
        }
        index
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
    }

    /// `MTH(D[start:end])` for `start < end <= size`, computed from stored subtrees.
    fn range_hash(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            if let Some(h) = self
                .levels
                .get(level)
                .and_then(|row| row.get((start >> level) as usize))
            {
                return *h;
            }
        }
        // Unreachable for a power-of-two aligned range within the tree, which is always
        // stored; otherwise split as RFC 9162 does.
        let k = if n >= 2 { split(n) } else { 1 };
        node_hash(
            &self.range_hash(start, start + k),
            &self.range_hash(start + k, end),
        )
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, TlogError> {
        if size > self.size() {
            return Err(TlogError::SizeBeyondTree {
                size,
                tree: self.size(),
            });
        }
        Ok(if size == 0 {
            empty_root()
        } else {
            self.range_hash(0, size)
        })
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or_else(|_| empty_root())
    }

    /// The inclusion proof (audit path) of leaf `index` in the tree of the first `size`
    /// leaves, leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TlogError> {
        if size > self.size() {
            return Err(TlogError::SizeBeyondTree {
                size,
                tree: self.size(),
            });
        }
        if index >= size {
            return Err(TlogError::IndexBeyondSize { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// RFC 9162 `PATH(m, D[start:end])`, appended to `out` deepest first.
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.range_hash(start, start + k));
        }
    }

    /// The consistency proof from the tree of the first `old_size` leaves to that of the
    /// first `new_size` leaves (`old_size <= new_size <= size`); empty when `old_size` is
    /// 0 or equal to `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, TlogError> {
        if new_size > self.size() {
            return Err(TlogError::SizeBeyondTree {
                size: new_size,
                tree: self.size(),
            });
        }
        if old_size > new_size {
            return Err(TlogError::SizeBeyondTree {
                size: old_size,
                tree: new_size,
            });
        }
        let mut proof = Vec::new();
        if old_size > 0 && old_size < new_size {
            self.subproof(old_size, 0, new_size, true, &mut proof);
        }
        Ok(proof)
    }

    /// RFC 9162 `SUBPROOF(m, D[start:end], b)`.
    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.range_hash(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.range_hash(start, start + k));
        }
    }
}

/// Verify that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves whose root
/// is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), TlogError> {
    if index >= size {
        return Err(TlogError::IndexBeyondSize { index, size });
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(TlogError::ProofTooLong {
            got: proof.len(),
            max: MAX_PROOF_HASHES,
        });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(TlogError::InclusionProof("proof longer than the path"));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(TlogError::InclusionProof("proof shorter than the path"));
    }
    if r != *root {
        return Err(TlogError::InclusionProof("the proof leads to another root"));
    }
    Ok(())
}

/// Verify that the tree of `new_size` leaves with root `new_root` extends the tree of
/// `old_size` leaves with root `old_root` (RFC 9162 §2.1.4.2). A tree is consistent with
/// itself (empty proof, equal roots) and every tree extends the empty tree (empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), TlogError> {
    if old_size > new_size {
        return Err(TlogError::ConsistencyProof("the old tree is larger"));
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(TlogError::ProofTooLong {
            got: proof.len(),
            max: MAX_PROOF_HASHES,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(TlogError::ConsistencyProof(
                "a proof between equal sizes must be empty",
            ));
        }
        if old_root != new_root {
            return Err(TlogError::ConsistencyProof(
                "two different roots for the same size",
            ));
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(TlogError::ConsistencyProof(
                "a proof from the empty tree must be empty",
            ));
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(TlogError::ConsistencyProof("empty proof"));
    }
    // Prepend the old root when the old tree is a complete subtree.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.iter());
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (first, rest) = match path.split_first() {
        Some(x) => x,
        None => return Err(TlogError::ConsistencyProof("empty proof")),
    };
    let mut fr = **first;
    let mut sr = **first;
    for c in rest {
        if snode == 0 {
            return Err(TlogError::ConsistencyProof("proof longer than the path"));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(TlogError::ConsistencyProof("proof shorter than the path"));
    }
    if fr != *old_root {
        return Err(TlogError::ConsistencyProof(
            "the proof does not lead to the old root",
        ));
    }
    if sr != *new_root {
        return Err(TlogError::ConsistencyProof(
            "the proof does not lead to the new root",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        let v = hex::decode(s).unwrap_or_default();
        let mut out = [0u8; 32];
        out.copy_from_slice(&v);
        out
    }

    /// RFC 6962 test leaves (certificate-transparency-go, transparency-dev/merkle).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// Roots of sizes 0..=8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn reference() -> MerkleTree {
        MerkleTree::from_leaf_hashes(
            LEAVES
                .iter()
                .map(|l| leaf_hash(&hex::decode(l).unwrap_or_default())),
        )
    }

    #[test]
    fn roots_match_rfc6962_vectors() {
        let t = reference();
        assert_eq!(hex::encode(MerkleTree::new().root()), ROOTS[0]);
        for (size, want) in ROOTS.iter().enumerate() {
            assert_eq!(
                hex::encode(t.root_at(size as u64).unwrap_or([0; 32])),
                *want,
                "size {size}"
            );
        }
        assert!(t.root_at(9).is_err());
    }

    #[test]
    fn inclusion_proofs_match_rfc6962_vectors() {
        let t = reference();
        let cases: [(u64, u64, &[&str]); 3] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (0, 1, &[]),
        ];
        for (index, size, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            let got = t.inclusion_proof(index, size).unwrap_or_default();
            assert_eq!(got, want, "inclusion {index}/{size}");
            let leaf = t.leaf(index).unwrap_or([0; 32]);
            let root = h(ROOTS[size as usize]);
            assert!(verify_inclusion(&leaf, index, size, &want, &root).is_ok());
        }
    }

    #[test]
    fn consistency_proofs_match_rfc6962_vectors() {
        let t = reference();
        let cases: [(u64, u64, &[&str]); 3] = [
            (
                2,
                8,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(
                t.consistency_proof(old, new).unwrap_or_default(),
                want,
                "consistency {old}->{new}"
            );
            let (r1, r2) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
            assert!(verify_consistency(old, new, &r1, &r2, &want).is_ok());
            assert!(verify_consistency(old, new, &r2, &r1, &want).is_err());
        }
    }

    #[test]
    fn degenerate_consistency_cases() {
        let t = reference();
        let r4 = t.root_at(4).unwrap_or_default();
        let r5 = t.root_at(5).unwrap_or_default();
        assert!(verify_consistency(4, 4, &r4, &r4, &[]).is_ok());
        assert!(verify_consistency(4, 4, &r4, &r5, &[]).is_err());
        assert!(verify_consistency(4, 4, &r4, &r4, &[[0; 32]]).is_err());
        assert!(verify_consistency(0, 8, &empty_root(), &r5, &[]).is_ok());
        assert!(verify_consistency(0, 8, &empty_root(), &r5, &[[0; 32]]).is_err());
        assert!(verify_consistency(5, 4, &r5, &r4, &[]).is_err());
        assert!(verify_consistency(4, 5, &r4, &r5, &[]).is_err());
        assert!(verify_inclusion(&[0; 32], 8, 8, &[], &r4).is_err());
        assert!(t.inclusion_proof(8, 8).is_err());
        assert!(t.inclusion_proof(0, 9).is_err());
        assert!(t.consistency_proof(5, 3).is_err());
        assert!(t.consistency_proof(0, 9).is_err());
        assert!(verify_inclusion(&[0; 32], 0, 1, &[[0; 32]; 65], &r4).is_err());
    }

    fn tree_of(n: u64) -> MerkleTree {
        MerkleTree::from_leaf_hashes((0..n).map(|i| leaf_hash(&i.to_be_bytes())))
    }

    /// Root computed from the definition over the leaf slice (no stored levels).
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn stored_levels_agree_with_the_definition_for_every_size_to_70() {
        let t = tree_of(70);
        let leaves: Vec<Hash> = (0..70).filter_map(|i| t.leaf(i)).collect();
        for n in 0..=70u64 {
            assert_eq!(
                t.root_at(n).unwrap_or_default(),
                naive_root(&leaves[..n as usize])
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_inclusion_proof_verifies_and_tampered_ones_fail(
            size in 1u64..300, index_seed in any::<u64>(), flip in any::<(usize, usize, u8)>()
        ) {
            let t = tree_of(size);
            let index = index_seed % size;
            let root = t.root_at(size).unwrap_or_default();
            let leaf = t.leaf(index).unwrap_or_default();
            let proof = t.inclusion_proof(index, size).unwrap_or_default();
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_ok());
            // Another leaf, index or size fails.
            let other = leaf_hash(b"not in the tree");
            prop_assert!(verify_inclusion(&other, index, size, &proof, &root).is_err());
            if size > 1 {
                let wrong = (index + 1) % size;
                prop_assert!(verify_inclusion(&leaf, wrong, size, &proof, &root).is_err());
            }
            // (The same proof with another size can still reach this root, e.g. leaf 0
            // of 3 and of 4; the root is bound to its size by the signed checkpoint.)
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let (i, byte, bit) = (flip.0 % bad.len(), flip.1 % 32, 1u8 << (flip.2 % 8));
                bad[i][byte] ^= bit;
                prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
                let short = &proof[..proof.len() - 1];
                prop_assert!(verify_inclusion(&leaf, index, size, short, &root).is_err());
            }
            let mut long = proof.clone();
            long.push([0xab; 32]);
            prop_assert!(verify_inclusion(&leaf, index, size, &long, &root).is_err());
        }

        #[test]
        fn every_consistency_proof_verifies_and_tampered_ones_fail(
            new_size in 1u64..300, old_seed in any::<u64>(), flip in any::<(usize, usize, u8)>()
        ) {
            let t = tree_of(new_size);
            let old_size = old_seed % (new_size + 1);
            let old_root = t.root_at(old_size).unwrap_or_default();
            let new_root = t.root_at(new_size).unwrap_or_default();
            let proof = t.consistency_proof(old_size, new_size).unwrap_or_default();
            prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &proof).is_ok());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let (i, byte, bit) = (flip.0 % bad.len(), flip.1 % 32, 1u8 << (flip.2 % 8));
                bad[i][byte] ^= bit;
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &bad).is_err());
                let short = &proof[..proof.len() - 1];
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, short).is_err());
                let mut long = proof.clone();
                long.push([0xcd; 32]);
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &long).is_err());
            }
            if old_size > 0 && old_size < new_size {
                // A forked history: the old tree with one leaf replaced.
                let mut forked = tree_of(old_size - 1);
                forked.push(leaf_hash(b"forked"));
                let forked_root = forked.root();
                prop_assert!(verify_consistency(old_size, new_size, &forked_root, &new_root, &proof).is_err());
                let mut bad_new = new_root;
                bad_new[0] ^= 1;
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &bad_new, &proof).is_err());
            }
        }
    }
}
