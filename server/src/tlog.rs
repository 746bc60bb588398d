//! The relay's transparency log: the in-memory Merkle tree over the stored leaves, the
//! log key that signs checkpoints, and the answers to the log frames.
//!
//! The store is the truth ([`crate::store::tlog::TlogStore`]); the tree here is a cache of
//! its leaf hashes, caught up ([`Tlog::sync`]) before every checkpoint or proof and
//! rebuilt from the store at start. Leaves of trust changes are written by the store in
//! the change's own transaction, so the per-envelope path never touches the log, and a
//! checkpoint is signed only when one is asked for and the tree has grown.

use std::collections::HashMap;
use std::path::Path;

use sealpost_protocol::identity::AccountId;
use sealpost_protocol::tlog::{
    Hash, KeyName, LeafEvent, LogLeaf, LogSigner, MerkleTree, NoteKey, NoteSignature,
    SignedCheckpoint, TlogError, TransparencyPolicy,
};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::store::tlog::{TlogStore, MAX_LEAVES_PER_READ};
use crate::store::StoreError;

/// The log key's file in the data directory (the 32-byte Ed25519 seed, mode 0600).
pub const LOG_KEY_FILE: &str = "log-key.bin";
/// The default checkpoint origin (the log key's name) when the configuration names none.
pub const DEFAULT_LOG_ORIGIN: &str = "sealpost-relay/log";

/// A log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A protocol-level check failed (a proof asked for beyond the tree, a bad
    /// cosignature).
    #[error(transparent)]
    Tlog(#[from] TlogError),
    /// No leaf records what was asked.
    #[error("the log holds no leaf for {0}")]
    NotLogged(String),
    /// A stored leaf does not decode (the database was altered: run `audit verify`).
    #[error("leaf {index} in the database does not decode")]
    BadLeaf {
        /// Its index.
        index: u64,
    },
    /// A leaf is missing from the database (a row was deleted: run `audit verify`).
    #[error("leaf {index} is missing from the database")]
    Missing {
        /// Its index.
        index: u64,
    },
    /// A stored checkpoint of this size has another root than the tree (the database was
    /// altered: run `audit verify`).
    #[error("the stored checkpoint of size {size} has another root than the log")]
    Conflict {
        /// Its size.
        size: u64,
    },
    /// The log key file is unusable.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Load the relay's log key from `data_dir`, creating it (0600) at first start.
pub fn load_or_create_key(data_dir: &Path, origin: &str) -> Result<LogSigner, LogError> {
    let path = data_dir.join(LOG_KEY_FILE);
    let key_err = |reason: String| LogError::Key {
        path: path.display().to_string(),
        reason,
    };
    let name = KeyName::new(origin).map_err(|e| key_err(format!("log origin {origin:?}: {e}")))?;
    if path.exists() {
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| key_err(e.to_string()))?);
        return LogSigner::from_seed(name, &bytes)
            .map_err(|_| key_err("must hold exactly 32 bytes".into()));
    }
    let signer = LogSigner::generate(name, &mut rand::rngs::OsRng);
    crate::tls::write_atomic(&path, &signer.to_seed()[..], true)
        .map_err(|e| key_err(e.to_string()))?;
    Ok(signer)
}

/// SHA-256 of the configuration as TOML (what `sealpost-relay config` prints): the
/// digest a `config_changed` leaf records.
pub fn config_digest(config: &crate::Config) -> [u8; 32] {
    let text = toml::to_string(config).unwrap_or_default();
    sealpost_protocol::crypto::sha256(&[text.as_bytes()])
}

/// What a leaf can be found by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LeafKey {
    Head(AccountId, u64, [u8; 32]),
    Roster(u64, [u8; 32]),
}

fn leaf_key(leaf: &LogLeaf) -> Option<LeafKey> {
    match &leaf.event {
        LeafEvent::DeviceLogHead {
            account,
            length,
            head,
            ..
        } => Some(LeafKey::Head(account.clone(), *length, *head)),
        LeafEvent::Roster { version, hash } => Some(LeafKey::Roster(*version, *hash)),
        _ => None,
    }
}

struct TreeState {
    tree: MerkleTree,
    /// Where the device-log heads and roster versions are.
    index: HashMap<LeafKey, u64>,
    /// The latest checkpoint signed (or read back from the store).
    latest: Option<SignedCheckpoint>,
    /// The newest checkpoint whose cosignatures met the roster's `witness_threshold` when
    /// the last of them arrived (none since start): proofs are given against it when it
    /// holds the leaf, so that devices need not wait for the witnesses to cosign the very
    /// latest checkpoint.
    witnessed: Option<SignedCheckpoint>,
    /// The configuration digest the last `config_changed` leaf recorded.
    config: Option<[u8; 32]>,
}

/// A leaf with its inclusion proof in a checkpoint, and a consistency proof.
#[derive(Clone, Debug)]
pub struct Proof {
    /// The checkpoint (signed note, with the stored cosignatures).
    pub checkpoint: SignedCheckpoint,
    /// The leaf's index.
    pub index: u64,
    /// The leaf bytes.
    pub leaf: Vec<u8>,
    /// Inclusion proof in the checkpoint's tree.
    pub inclusion: Vec<Hash>,
    /// Consistency proof from the asked size (empty for 0).
    pub consistency: Vec<Hash>,
}

/// The relay's log.
pub struct Tlog {
    signer: LogSigner,
    state: Mutex<TreeState>,
}

impl Tlog {
    /// A log signing with `signer`; the tree is filled from the store by [`Tlog::sync`].
    pub fn new(signer: LogSigner) -> Self {
        Self {
            signer,
            state: Mutex::new(TreeState {
                tree: MerkleTree::new(),
                index: HashMap::new(),
                latest: None,
                witnessed: None,
                config: None,
            }),
        }
    }

    /// The log's public key (what the roster's `log_key` must list).
    pub fn public(&self) -> &NoteKey {
        self.signer.public()
    }

    /// Catch the tree up with the store's leaves; returns the size.
    pub async fn sync<S: TlogStore>(&self, store: &S) -> Result<u64, LogError> {
        let mut st = self.state.lock().await;
        sync_locked(&mut st, store).await
    }

    /// Append a leaf that no trust change carries (operator actions, configuration
    /// changes, security events); returns its index.
    pub async fn append<S: TlogStore>(
        &self,
        store: &S,
        leaf: &LogLeaf,
        now_ms: u64,
    ) -> Result<u64, LogError> {
        let index = store.append_leaf(leaf, now_ms).await?;
        self.sync(store).await?;
        Ok(index)
    }

    /// Record the running configuration (at start and after a reload): a
    /// `config_changed` leaf when its digest differs from the last one recorded. Returns
    /// whether a leaf was appended.
    pub async fn record_config<S: TlogStore>(
        &self,
        store: &S,
        digest: [u8; 32],
        now_ms: u64,
    ) -> Result<bool, LogError> {
        let mut st = self.state.lock().await;
        sync_locked(&mut st, store).await?;
        if st.config == Some(digest) {
            return Ok(false);
        }
        let leaf = LogLeaf::new(
            now_ms,
            sealpost_protocol::tlog::Actor::Operator,
            LeafEvent::ConfigChanged { digest },
        );
        store.append_leaf(&leaf, now_ms).await?;
        sync_locked(&mut st, store).await?;
        Ok(true)
    }

    /// The latest checkpoint, signing (and storing) a new one first if the tree grew.
    pub async fn checkpoint<S: TlogStore>(
        &self,
        store: &S,
        now_ms: u64,
    ) -> Result<SignedCheckpoint, LogError> {
        let mut st = self.state.lock().await;
        self.checkpoint_locked(&mut st, store, now_ms).await
    }

    async fn checkpoint_locked<S: TlogStore>(
        &self,
        st: &mut TreeState,
        store: &S,
        now_ms: u64,
    ) -> Result<SignedCheckpoint, LogError> {
        let size = sync_locked(st, store).await?;
        if st.latest.is_none() {
            if let Some((_, note)) = store.latest_checkpoint().await? {
                st.latest = SignedCheckpoint::parse(note.as_bytes()).ok();
            }
        }
        match &st.latest {
            Some(c) if c.checkpoint.size == size && c.checkpoint.root == st.tree.root() => {
                // Cosignatures may have been added since: read the stored note again.
                if let Some(note) = store.checkpoint(size).await? {
                    if let Ok(stored) = SignedCheckpoint::parse(note.as_bytes()) {
                        st.latest = Some(stored);
                    }
                }
            }
            _ => {
                // Never replace a stored checkpoint of this size that has another root:
                // it is evidence (the database was altered; `audit verify` says where).
                if let Some(note) = store.checkpoint(size).await? {
                    let same = SignedCheckpoint::parse(note.as_bytes())
                        .is_ok_and(|c| c.checkpoint.root == st.tree.root());
                    if !same {
                        return Err(LogError::Conflict { size });
                    }
                }
                let signed = self.signer.sign(size, st.tree.root());
                store
                    .put_checkpoint(size, &signed.to_text(), now_ms)
                    .await?;
                st.latest = Some(signed);
            }
        }
        st.latest
            .clone()
            .ok_or_else(|| LogError::NotLogged("a checkpoint".into()))
    }

    /// Prove the leaf recording that `account`'s device log had `length` entries ending
    /// in `head`, against the latest checkpoint, with a consistency proof from `old_size`.
    pub async fn prove_head<S: TlogStore>(
        &self,
        store: &S,
        account: &AccountId,
        length: u64,
        head: [u8; 32],
        old_size: u64,
        now_ms: u64,
    ) -> Result<Proof, LogError> {
        let key = LeafKey::Head(account.clone(), length, head);
        self.prove(store, key, old_size, now_ms).await
    }

    /// Prove the leaf recording roster `version` with `hash`.
    pub async fn prove_roster<S: TlogStore>(
        &self,
        store: &S,
        version: u64,
        hash: [u8; 32],
        old_size: u64,
        now_ms: u64,
    ) -> Result<Proof, LogError> {
        self.prove(store, LeafKey::Roster(version, hash), old_size, now_ms)
            .await
    }

    async fn prove<S: TlogStore>(
        &self,
        store: &S,
        key: LeafKey,
        old_size: u64,
        now_ms: u64,
    ) -> Result<Proof, LogError> {
        let mut st = self.state.lock().await;
        let latest = self.checkpoint_locked(&mut st, store, now_ms).await?;
        let Some(&index) = st.index.get(&key) else {
            return Err(LogError::NotLogged(match key {
                LeafKey::Head(a, n, _) => format!("device log head {a} at length {n}"),
                LeafKey::Roster(v, _) => format!("roster version {v}"),
            }));
        };
        // The newest witnessed checkpoint if it holds the leaf and extends the device's
        // (a device that requires cosignatures accepts it at once), else the latest.
        let checkpoint = match &st.witnessed {
            Some(w)
                if w.checkpoint.size > index
                    && w.checkpoint.size >= old_size
                    && st.tree.root_at(w.checkpoint.size).ok() == Some(w.checkpoint.root) =>
            {
                w.clone()
            }
            _ => latest,
        };
        let size = checkpoint.checkpoint.size;
        let inclusion = st.tree.inclusion_proof(index, size)?;
        let consistency = st.tree.consistency_proof(old_size, size)?;
        drop(st);
        let leaf = match store.leaves(index, 1).await?.into_iter().next() {
            Some((i, leaf)) if i == index => leaf,
            _ => return Err(LogError::Missing { index }),
        };
        Ok(Proof {
            checkpoint,
            index,
            leaf,
            inclusion,
            consistency,
        })
    }

    /// A consistency proof between two sizes within the latest checkpoint.
    pub async fn consistency<S: TlogStore>(
        &self,
        store: &S,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, LogError> {
        let mut st = self.state.lock().await;
        sync_locked(&mut st, store).await?;
        Ok(st.tree.consistency_proof(old_size, new_size)?)
    }

    /// Check a witness cosignature line for the stored checkpoint of size `size` against
    /// the roster's witnesses and store it. Decision in [`check_cosignature`].
    pub async fn add_cosignature<S: TlogStore>(
        &self,
        store: &S,
        policy: Option<&TransparencyPolicy>,
        size: u64,
        line: &str,
        now_ms: u64,
    ) -> Result<(), LogError> {
        let mut st = self.state.lock().await;
        let Some(note) = store.checkpoint(size).await? else {
            return Err(LogError::NotLogged(format!("a checkpoint of size {size}")));
        };
        let mut signed = SignedCheckpoint::parse(note.as_bytes())?;
        let sig = check_cosignature(&signed, policy, line)?;
        signed.add_cosignature(sig)?;
        store
            .put_checkpoint(size, &signed.to_text(), now_ms)
            .await?;
        if let Some(p) = policy {
            let enough = signed
                .verify_cosignatures(&p.witnesses)
                .is_ok_and(|v| v.len() >= usize::from(p.witness_threshold));
            if enough
                && st
                    .witnessed
                    .as_ref()
                    .is_none_or(|w| w.checkpoint.size <= size)
            {
                st.witnessed = Some(signed.clone());
            }
        }
        if st
            .latest
            .as_ref()
            .is_some_and(|l| l.checkpoint.size == size)
        {
            st.latest = Some(signed);
        }
        Ok(())
    }
}

/// Parse a cosignature line and verify it for `signed` with the roster's witness keys.
pub fn check_cosignature(
    signed: &SignedCheckpoint,
    policy: Option<&TransparencyPolicy>,
    line: &str,
) -> Result<NoteSignature, TlogError> {
    let witnesses = policy.map(|p| p.witnesses.as_slice()).unwrap_or_default();
    // Parse the line as the only signature of a note with the checkpoint's text.
    let mut text = signed.note.text.clone();
    text.push('\n');
    text.push_str(line.trim_end_matches('\n'));
    text.push('\n');
    let note = sealpost_protocol::tlog::SignedNote::parse(text.as_bytes())?;
    let [sig] = note.signatures.as_slice() else {
        return Err(TlogError::BadNote("exactly one signature line"));
    };
    let sig = sig.clone();
    let one = SignedCheckpoint {
        checkpoint: signed.checkpoint.clone(),
        note,
    };
    if one.verify_cosignatures(witnesses)?.is_empty() {
        return Err(TlogError::BadSignature(format!(
            "{} (not a witness the roster lists)",
            sig.name
        )));
    }
    Ok(sig)
}

async fn sync_locked<S: TlogStore>(st: &mut TreeState, store: &S) -> Result<u64, LogError> {
    loop {
        let start = st.tree.size();
        let batch = store.leaves(start, MAX_LEAVES_PER_READ).await?;
        if batch.is_empty() {
            return Ok(start);
        }
        for (i, (stored, leaf)) in batch.iter().enumerate() {
            let index = start + i as u64;
            if *stored != index {
                return Err(LogError::Missing { index });
            }
            let decoded = LogLeaf::from_bytes(leaf).map_err(|_| LogError::BadLeaf { index })?;
            if decoded.index != index {
                return Err(LogError::BadLeaf { index });
            }
            if let Some(key) = leaf_key(&decoded) {
                st.index.entry(key).or_insert(index);
            }
            if let LeafEvent::ConfigChanged { digest } = decoded.event {
                st.config = Some(digest);
            }
            st.tree.push(sealpost_protocol::tlog::leaf_hash(leaf));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::memory::MemoryStore;
    use sealpost_protocol::tlog::{Actor, WitnessSigner};

    fn signer() -> LogSigner {
        LogSigner::generate(KeyName::new("t/log").unwrap(), &mut rand::rngs::OsRng)
    }

    #[tokio::test]
    async fn checkpoints_are_signed_lazily_and_never_replaced_by_another_root() {
        let store = MemoryStore::new();
        let log = Tlog::new(signer());
        for i in 0..3 {
            let leaf = LogLeaf::admin_command(i, "status", &[]);
            assert_eq!(log.append(&store, &leaf, i).await.unwrap(), i);
        }
        let a = log.checkpoint(&store, 10).await.unwrap();
        assert_eq!(a.checkpoint.size, 3);
        // Asked again without growth: the same checkpoint, nothing new stored.
        let b = log.checkpoint(&store, 11).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(store.checkpoints_after(None, 10).await.unwrap().len(), 1);
        // A fresh relay over a store whose stored checkpoint of the current size has
        // another root refuses to sign over it.
        store
            .put_checkpoint(3, &signer().sign(3, [9; 32]).to_text(), 12)
            .await
            .unwrap();
        let fresh = Tlog::new(signer());
        assert!(matches!(
            fresh.checkpoint(&store, 13).await,
            Err(LogError::Conflict { size: 3 })
        ));
    }

    #[tokio::test]
    async fn the_configuration_is_recorded_when_it_changes() {
        let store = MemoryStore::new();
        let log = Tlog::new(signer());
        assert!(log.record_config(&store, [1; 32], 1).await.unwrap());
        assert!(!log.record_config(&store, [1; 32], 2).await.unwrap());
        // A restarted relay knows the last digest from the leaves.
        let again = Tlog::new(signer());
        assert!(!again.record_config(&store, [1; 32], 3).await.unwrap());
        assert!(again.record_config(&store, [2; 32], 4).await.unwrap());
        assert_eq!(store.leaf_count().await.unwrap(), 2);
        let leaves = store.leaves(0, 10).await.unwrap();
        let last = LogLeaf::from_bytes(&leaves[1].1).unwrap();
        assert_eq!(last.actor, Actor::Operator);
        assert_eq!(last.event, LeafEvent::ConfigChanged { digest: [2; 32] });
    }

    #[tokio::test]
    async fn proofs_use_the_newest_witnessed_checkpoint_that_holds_the_leaf() {
        use sealpost_protocol::tlog::LoggedAction;
        let store = MemoryStore::new();
        let log = Tlog::new(signer());
        let w = WitnessSigner::generate(KeyName::new("w/1").unwrap(), &mut rand::rngs::OsRng);
        let policy = TransparencyPolicy {
            log_keys: vec![log.public().clone()],
            witnesses: vec![w.public().clone()],
            witness_threshold: 1,
        };
        let alice = AccountId::new("alice").unwrap();
        let head = |n: u64| {
            LogLeaf::new(
                n,
                Actor::Relay,
                LeafEvent::DeviceLogHead {
                    account: alice.clone(),
                    length: n,
                    head: [n as u8; 32],
                    action: LoggedAction::Add,
                },
            )
        };
        log.append(&store, &head(1), 1).await.unwrap();
        log.append(&store, &head(2), 2).await.unwrap();
        // The witness cosigns the checkpoint of 2 leaves; then the log grows.
        let cp2 = log.checkpoint(&store, 3).await.unwrap();
        let line = w.cosign(&cp2.checkpoint, 1_700_000_000).line();
        log.add_cosignature(&store, Some(&policy), 2, &line, 4)
            .await
            .unwrap();
        log.append(&store, &head(3), 5).await.unwrap();
        // A leaf the witnessed checkpoint holds: proven against it (cosigned).
        let p = log
            .prove_head(&store, &alice, 2, [2; 32], 0, 6)
            .await
            .unwrap();
        assert_eq!(p.checkpoint.checkpoint.size, 2);
        p.checkpoint
            .verify(&policy.log_keys, &policy.witnesses, 1)
            .unwrap();
        // A newer leaf, or a device that already holds a larger checkpoint: the latest.
        let p = log
            .prove_head(&store, &alice, 3, [3; 32], 0, 7)
            .await
            .unwrap();
        assert_eq!(p.checkpoint.checkpoint.size, 3);
        let p = log
            .prove_head(&store, &alice, 1, [1; 32], 3, 8)
            .await
            .unwrap();
        assert_eq!(p.checkpoint.checkpoint.size, 3);
    }

    #[test]
    fn a_cosignature_must_come_from_a_listed_witness() {
        let log = signer();
        let cp = log.sign(5, [3; 32]);
        let w = WitnessSigner::generate(KeyName::new("w/1").unwrap(), &mut rand::rngs::OsRng);
        let policy = TransparencyPolicy {
            log_keys: vec![log.public().clone()],
            witnesses: vec![w.public().clone()],
            witness_threshold: 1,
        };
        let line = w.cosign(&cp.checkpoint, 100).line();
        assert!(check_cosignature(&cp, Some(&policy), &line).is_ok());
        assert!(check_cosignature(&cp, None, &line).is_err());
        // Over another checkpoint, or two lines, or garbage: refused.
        let other = log.sign(6, [3; 32]);
        assert!(check_cosignature(&other, Some(&policy), &line).is_err());
        let two = format!("{line}{line}");
        assert!(check_cosignature(&cp, Some(&policy), &two).is_err());
        assert!(check_cosignature(&cp, Some(&policy), "hello").is_err());
    }
}
