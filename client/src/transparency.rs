//! The device's side of the transparency log (docs/PROTOCOL.md §21.6): decisions only, no
//! I/O. The shell ([`crate::Client`]) asks the relay for proofs and persists what these
//! functions return.
//!
//! * When the device accepts a device-log head or a roster version, the relay must prove
//!   that the log holds the leaf recording exactly it ([`check_leaf_proof`]): the leaf's
//!   inclusion in a checkpoint signed by a log key the verified roster lists (with the
//!   roster's number of witness cosignatures), and the checkpoint's consistency with the
//!   last one this device accepted. The device then keeps the newer checkpoint.
//! * Every message carries the sender's checkpoint (size and root, [`CheckpointView`]);
//!   the recipient compares it with its own ([`compare_checkpoints`]) and, when the sizes
//!   differ, has the relay prove that the smaller is a prefix of the larger. A relay that
//!   showed two devices different logs cannot produce that proof: the two devices detect
//!   it after one message.

use sealpost_protocol::content::CheckpointView;
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::tlog::{
    verify_consistency, verify_proof, Checkpoint, Hash, LeafEvent, LeafProof, SignedCheckpoint,
    TlogError, TransparencyPolicy,
};

/// What a leaf must record for the device to accept a head or a roster version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// An account's device log with `length` entries whose last entry hashes to `head`.
    LogHead {
        /// The account.
        account: AccountId,
        /// Entries in the log.
        length: u64,
        /// The last entry's hash.
        head: Hash,
    },
    /// Roster `version` with `hash`.
    Roster {
        /// The version.
        version: u64,
        /// Its hash.
        hash: Hash,
    },
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::LogHead {
                account,
                length,
                head,
            } => write!(
                f,
                "the device log of {account} with {length} entries ending in {}",
                hex::encode(head)
            ),
            Claim::Roster { version, hash } => {
                write!(f, "roster version {version} ({})", hex::encode(hash))
            }
        }
    }
}

/// The relay's answer to `prove_log_head` / `prove_roster`, as received.
#[derive(Clone, Debug)]
pub struct ProofAnswer<'a> {
    /// The checkpoint note text.
    pub checkpoint: &'a str,
    /// The leaf's index.
    pub index: u64,
    /// The leaf bytes.
    pub leaf: &'a [u8],
    /// Inclusion proof.
    pub inclusion: &'a [Hash],
    /// Consistency proof from the held checkpoint's size.
    pub consistency: &'a [Hash],
}

/// Why a proof was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransparencyFailure {
    /// The checkpoint lacks the witness cosignatures the roster requires: not (yet) a
    /// verdict on the relay; the device waits for the witnesses and asks again.
    #[error(
        "the transparency log's checkpoint has {got} witness cosignatures and the roster \
         requires {need}; try again once the witnesses have cosigned"
    )]
    NotWitnessed {
        /// Verified cosignatures.
        got: usize,
        /// Required.
        need: u8,
    },
    /// The relay's log does not prove what it served: a trust failure.
    #[error("{0}")]
    Refused(String),
}

fn refused(claim: &Claim, what: impl std::fmt::Display) -> TransparencyFailure {
    TransparencyFailure::Refused(format!(
        "the transparency log does not prove {claim}: {what}"
    ))
}

/// Verify a checkpoint note against the roster's policy: signed by one of its log keys,
/// with at least its threshold of witness cosignatures.
pub fn verify_checkpoint(
    policy: &TransparencyPolicy,
    note: &str,
) -> Result<SignedCheckpoint, TransparencyFailure> {
    let signed = SignedCheckpoint::parse(note.as_bytes()).map_err(|e| {
        TransparencyFailure::Refused(format!("the log's checkpoint does not parse: {e}"))
    })?;
    match signed.verify(
        &policy.log_keys,
        &policy.witnesses,
        policy.witness_threshold,
    ) {
        Ok(_) => Ok(signed),
        Err(TlogError::NotEnoughCosignatures { got, need }) => {
            Err(TransparencyFailure::NotWitnessed { got, need })
        }
        Err(e) => Err(TransparencyFailure::Refused(format!(
            "the log's checkpoint does not verify against the roster's log keys: {e}"
        ))),
    }
}

/// Check a proof that the log records `claim`, against the checkpoint this device holds
/// (`held`, None before the first). Returns the checkpoint the answer proves against:
/// the device keeps it if it is larger than `held`.
pub fn check_leaf_proof(
    policy: &TransparencyPolicy,
    held: Option<&Checkpoint>,
    answer: &ProofAnswer<'_>,
    claim: &Claim,
) -> Result<SignedCheckpoint, TransparencyFailure> {
    let signed = verify_checkpoint(policy, answer.checkpoint)?;
    let cp = &signed.checkpoint;
    if let Some(h) = held {
        if cp.size < h.size {
            return Err(refused(
                claim,
                format_args!(
                    "the relay proves against a checkpoint of {} leaves, older than the {} \
                     this device accepted (a rolled-back log)",
                    cp.size, h.size
                ),
            ));
        }
    }
    let leaf = verify_proof(
        &LeafProof {
            leaf: answer.leaf,
            index: answer.index,
            inclusion: answer.inclusion,
            consistency: answer.consistency,
        },
        cp,
        held,
    )
    .map_err(|e| {
        let what = match &e {
            TlogError::ConsistencyProof(_) => format!(
                "its checkpoint of {} leaves is not an extension of the one of {} leaves \
                 this device accepted ({e}): the relay showed this device another log",
                cp.size,
                held.map_or(0, |h| h.size)
            ),
            _ => e.to_string(),
        };
        refused(claim, what)
    })?;
    let matches = match (&leaf.event, claim) {
        (
            LeafEvent::DeviceLogHead {
                account,
                length,
                head,
                ..
            },
            Claim::LogHead {
                account: a,
                length: l,
                head: h,
            },
        ) => account == a && length == l && head == h,
        (
            LeafEvent::Roster { version, hash },
            Claim::Roster {
                version: v,
                hash: h,
            },
        ) => version == v && hash == h,
        _ => false,
    };
    if !matches {
        return Err(refused(
            claim,
            format_args!("leaf {} records something else", answer.index),
        ));
    }
    Ok(signed)
}

/// What this device puts in a message: its checkpoint's size and root.
pub fn view_of(held: Option<&Checkpoint>) -> Option<CheckpointView> {
    held.map(|c| CheckpointView {
        size: c.size,
        root: c.root,
    })
}

/// How a sender's checkpoint compares with this device's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointCompare {
    /// Nothing to compare (either side holds none), or the same checkpoint.
    Agree,
    /// Same size, another root: the relay showed the two devices different logs.
    Split(String),
    /// Different sizes: the relay must prove that the smaller is a prefix of the larger
    /// (`get_consistency`), then [`check_consistency`] decides.
    NeedProof {
        /// The smaller size.
        old_size: u64,
        /// The larger size.
        new_size: u64,
    },
    /// The sender holds a larger checkpoint than this device: refresh this device's (a
    /// proof against the relay's latest) before comparing.
    Behind,
}

/// Compare the sender's checkpoint with this device's.
pub fn compare_checkpoints(
    sender: Option<&CheckpointView>,
    mine: Option<&Checkpoint>,
) -> CheckpointCompare {
    let (Some(s), Some(m)) = (sender, mine) else {
        return CheckpointCompare::Agree;
    };
    if s.size == m.size {
        if s.root == m.root {
            return CheckpointCompare::Agree;
        }
        return CheckpointCompare::Split(split_reason(s.size, &s.root, &m.root));
    }
    if s.size > m.size {
        return CheckpointCompare::Behind;
    }
    CheckpointCompare::NeedProof {
        old_size: s.size,
        new_size: m.size,
    }
}

fn split_reason(size: u64, theirs: &Hash, mine: &Hash) -> String {
    format!(
        "the transparency log of {size} leaves has root {} for the sender and {} for this \
         device: the relay showed the two devices different logs",
        hex::encode(theirs),
        hex::encode(mine)
    )
}

/// Decide a consistency proof between the sender's checkpoint (the smaller) and this
/// device's (the larger): `Ok` if the sender's log is a prefix of this device's, else the
/// split-view reason.
pub fn check_consistency(
    sender: &CheckpointView,
    mine: &Checkpoint,
    proof: &[Hash],
) -> Result<(), String> {
    verify_consistency(sender.size, mine.size, &sender.root, &mine.root, proof).map_err(|e| {
        format!(
            "the sender's transparency log of {} leaves (root {}) is not a prefix of this \
             device's of {} leaves ({e}): the relay showed the two devices different logs",
            sender.size,
            hex::encode(sender.root),
            mine.size
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;
    use sealpost_protocol::tlog::{
        leaf_hash, Actor, KeyName, LogLeaf, LogSigner, MerkleTree, WitnessSigner,
    };

    fn acct(s: &str) -> AccountId {
        AccountId::new(s).unwrap()
    }

    struct Log {
        signer: LogSigner,
        leaves: Vec<Vec<u8>>,
        tree: MerkleTree,
    }

    impl Log {
        fn new() -> Self {
            Self {
                signer: LogSigner::generate(KeyName::new("relay.test/log").unwrap(), &mut OsRng),
                leaves: Vec::new(),
                tree: MerkleTree::new(),
            }
        }
        fn push(&mut self, event: LeafEvent) -> u64 {
            let bytes = LogLeaf::new(1, Actor::Relay, event).to_bytes().unwrap();
            let i = self.tree.push(leaf_hash(&bytes));
            self.leaves.push(bytes);
            i
        }
        fn head(&mut self, account: &str, length: u64, byte: u8) -> u64 {
            self.push(LeafEvent::DeviceLogHead {
                account: acct(account),
                length,
                head: [byte; 32],
                action: sealpost_protocol::tlog::LoggedAction::Add,
            })
        }
        fn checkpoint(&self) -> SignedCheckpoint {
            self.signer.sign(self.tree.size(), self.tree.root())
        }
        fn policy(
            &self,
            witnesses: Vec<sealpost_protocol::tlog::NoteKey>,
            t: u8,
        ) -> TransparencyPolicy {
            TransparencyPolicy {
                log_keys: vec![self.signer.public().clone()],
                witnesses,
                witness_threshold: t,
            }
        }
    }

    fn prove(
        log: &Log,
        index: u64,
        held: Option<&Checkpoint>,
        claim: &Claim,
        policy: &TransparencyPolicy,
        note: &str,
    ) -> Result<SignedCheckpoint, TransparencyFailure> {
        let size = log.tree.size();
        let inclusion = log.tree.inclusion_proof(index, size).unwrap();
        let consistency = match held {
            Some(h) if h.size > 0 && h.size < size => {
                log.tree.consistency_proof(h.size, size).unwrap()
            }
            _ => Vec::new(),
        };
        check_leaf_proof(
            policy,
            held,
            &ProofAnswer {
                checkpoint: note,
                index,
                leaf: &log.leaves[index as usize],
                inclusion: &inclusion,
                consistency: &consistency,
            },
            claim,
        )
    }

    #[test]
    fn a_proven_head_is_accepted_and_anything_else_refused() {
        let mut log = Log::new();
        log.head("alice", 1, 1);
        let i = log.head("bob", 1, 2);
        log.push(LeafEvent::Roster {
            version: 1,
            hash: [9; 32],
        });
        let policy = log.policy(Vec::new(), 0);
        let note = log.checkpoint().to_text();
        let claim = Claim::LogHead {
            account: acct("bob"),
            length: 1,
            head: [2; 32],
        };
        let cp = prove(&log, i, None, &claim, &policy, &note).unwrap();
        assert_eq!(cp.checkpoint.size, 3);
        // Another head, another account, or another leaf's index: refused.
        for wrong in [
            Claim::LogHead {
                account: acct("bob"),
                length: 1,
                head: [3; 32],
            },
            Claim::LogHead {
                account: acct("alice"),
                length: 1,
                head: [2; 32],
            },
            Claim::Roster {
                version: 1,
                hash: [2; 32],
            },
        ] {
            let e = prove(&log, i, None, &wrong, &policy, &note).unwrap_err();
            assert!(
                matches!(e, TransparencyFailure::Refused(ref r) if r.contains("records something else")),
                "{e}"
            );
        }
        // A checkpoint signed by a key the roster does not list: refused.
        let other = Log::new();
        let bad_policy = other.policy(Vec::new(), 0);
        let e = prove(&log, i, None, &claim, &bad_policy, &note).unwrap_err();
        assert!(matches!(e, TransparencyFailure::Refused(_)), "{e}");
    }

    #[test]
    fn a_fork_or_rollback_against_the_held_checkpoint_is_refused() {
        let mut log = Log::new();
        log.head("alice", 1, 1);
        log.head("alice", 2, 2);
        let policy = log.policy(Vec::new(), 0);
        let held = log.checkpoint().checkpoint;
        // The honest log grows: accepted with a consistency proof.
        let i = log.head("bob", 1, 3);
        let note = log.checkpoint().to_text();
        let claim = Claim::LogHead {
            account: acct("bob"),
            length: 1,
            head: [3; 32],
        };
        prove(&log, i, Some(&held), &claim, &policy, &note).unwrap();

        // A fork: same key, a log whose first leaves differ, shown to this device.
        let mut fork = Log {
            signer: LogSigner::from_seed(
                KeyName::new("relay.test/log").unwrap(),
                log.signer.to_seed().as_slice(),
            )
            .unwrap(),
            leaves: Vec::new(),
            tree: MerkleTree::new(),
        };
        fork.head("alice", 1, 1);
        fork.head("alice", 2, 0xee);
        let j = fork.head("bob", 1, 3);
        let fnote = fork.checkpoint().to_text();
        let e = prove(&fork, j, Some(&held), &claim, &policy, &fnote).unwrap_err();
        assert!(
            matches!(e, TransparencyFailure::Refused(ref r) if r.contains("not an extension")),
            "{e}"
        );

        // A rollback: a checkpoint smaller than the held one.
        let newer = log.checkpoint().checkpoint;
        let mut small = Log {
            signer: fork.signer,
            leaves: log.leaves[..2].to_vec(),
            tree: MerkleTree::from_leaf_hashes(log.leaves[..2].iter().map(|l| leaf_hash(l))),
        };
        let snote = small.checkpoint().to_text();
        let claim0 = Claim::LogHead {
            account: acct("alice"),
            length: 1,
            head: [1; 32],
        };
        let e = prove(&small, 0, Some(&newer), &claim0, &policy, &snote).unwrap_err();
        assert!(
            matches!(e, TransparencyFailure::Refused(ref r) if r.contains("rolled-back")),
            "{e}"
        );
        small.head("x", 1, 1);
    }

    #[test]
    fn witness_cosignatures_are_required_when_the_roster_says_so() {
        let mut log = Log::new();
        let i = log.head("alice", 1, 1);
        let w = WitnessSigner::generate(KeyName::new("witness.one").unwrap(), &mut OsRng);
        let policy = log.policy(vec![w.public().clone()], 1);
        let claim = Claim::LogHead {
            account: acct("alice"),
            length: 1,
            head: [1; 32],
        };
        let mut signed = log.checkpoint();
        let e = prove(&log, i, None, &claim, &policy, &signed.to_text()).unwrap_err();
        assert_eq!(e, TransparencyFailure::NotWitnessed { got: 0, need: 1 });
        let cosig = w.cosign(&signed.checkpoint, 1_700_000_000);
        signed.add_cosignature(cosig).unwrap();
        prove(&log, i, None, &claim, &policy, &signed.to_text()).unwrap();
    }

    #[test]
    fn checkpoints_in_messages_agree_need_a_proof_or_split() {
        let mut log = Log::new();
        log.head("alice", 1, 1);
        let small = log.checkpoint().checkpoint;
        log.head("alice", 2, 2);
        log.head("bob", 1, 3);
        let big = log.checkpoint().checkpoint;
        let v_small = view_of(Some(&small)).unwrap();
        assert_eq!(
            compare_checkpoints(None, Some(&big)),
            CheckpointCompare::Agree
        );
        assert_eq!(
            compare_checkpoints(Some(&v_small), Some(&small)),
            CheckpointCompare::Agree
        );
        assert_eq!(
            compare_checkpoints(view_of(Some(&big)).as_ref(), Some(&small)),
            CheckpointCompare::Behind
        );
        assert_eq!(
            compare_checkpoints(Some(&v_small), Some(&big)),
            CheckpointCompare::NeedProof {
                old_size: 1,
                new_size: 3
            }
        );
        let proof = log.tree.consistency_proof(1, 3).unwrap();
        check_consistency(&v_small, &big, &proof).unwrap();
        // A sender shown another first leaf: same size, other root = split; a proof
        // from the honest log does not make it a prefix.
        let forged = CheckpointView {
            size: 1,
            root: [7; 32],
        };
        assert!(matches!(
            compare_checkpoints(Some(&forged), Some(&small)),
            CheckpointCompare::Split(_)
        ));
        assert!(check_consistency(&forged, &big, &proof).is_err());
    }
}
