//! `sealpost-relay audit`: verify the transparency log offline from the database, and
//! export it for an external auditor.
//!
//! [`verify`] recomputes every leaf hash and the tree, decodes every leaf, checks that the
//! device-log heads, roster versions and attestations the leaves record are exactly the
//! ones the store holds (and that every stored one has its leaf, in order), and that every
//! stored checkpoint is signed by the log key and has the root of the recomputed tree at
//! its size. It stops at nothing: every finding is reported, the first one named first.

use std::collections::{BTreeMap, HashMap};

use sealpost_protocol::identity::AccountId;
use sealpost_protocol::tlog::{
    leaf_hash, LeafEvent, LogLeaf, MerkleTree, NoteKey, SignedCheckpoint,
};
use serde::Serialize;

use crate::store::tlog::MAX_LEAVES_PER_READ;
use crate::store::{Store, StoreError, MAX_STORED_LOG_ENTRIES};

/// Most findings kept (the first is the one that matters; the rest give context).
pub const MAX_FINDINGS: usize = 100;
/// Checkpoints read per call.
const CHECKPOINTS_PER_READ: usize = 1024;

/// One thing that does not verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The leaf it concerns, if one (its index).
    pub leaf: Option<u64>,
    /// What does not verify.
    pub what: String,
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Leaves read.
    pub leaves: u64,
    /// The recomputed root of all of them (hex).
    pub root: String,
    /// Stored checkpoints checked.
    pub checkpoints: u64,
    /// What does not verify, in the order found (leaves in index order first).
    pub findings: Vec<Finding>,
}

impl Report {
    fn find(&mut self, leaf: Option<u64>, what: String) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding { leaf, what });
        }
    }

    /// Whether everything verified.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Verify the whole log against the store. `log_key`: the relay's log public key (from
/// its key file) to check checkpoint signatures with.
pub async fn verify<S: Store>(store: &S, log_key: Option<&NoteKey>) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let mut tree = MerkleTree::new();
    // What the leaves record, with the leaf index.
    let mut heads: HashMap<(AccountId, u64), ([u8; 32], u64)> = HashMap::new();
    let mut next_len: HashMap<AccountId, u64> = HashMap::new();
    let mut rosters: BTreeMap<u64, ([u8; 32], u64)> = BTreeMap::new();
    let mut attestations: HashMap<AccountId, ([u8; 32], u64)> = HashMap::new();
    let mut expected = 0u64;
    loop {
        let batch = store.leaves(expected, MAX_LEAVES_PER_READ).await?;
        if batch.is_empty() {
            break;
        }
        for (index, bytes) in batch {
            while expected < index {
                report.find(
                    Some(expected),
                    format!("leaf {expected} is missing (deleted)"),
                );
                // A missing leaf has no hash; the rest of the tree cannot match any
                // checkpoint beyond it, which the checkpoint check reports.
                tree.push([0u8; 32]);
                expected += 1;
            }
            expected = index + 1;
            tree.push(leaf_hash(&bytes));
            let leaf = match LogLeaf::from_bytes(&bytes) {
                Ok(l) => l,
                Err(e) => {
                    report.find(Some(index), format!("leaf {index} does not decode: {e}"));
                    continue;
                }
            };
            if leaf.index != index {
                report.find(
                    Some(index),
                    format!(
                        "leaf {index} was written as leaf {}: moved or reordered",
                        leaf.index
                    ),
                );
            }
            match leaf.event {
                LeafEvent::DeviceLogHead {
                    account,
                    length,
                    head,
                    ..
                } => {
                    let want = next_len.get(&account).copied().unwrap_or(0) + 1;
                    if length != want {
                        report.find(
                            Some(index),
                            format!(
                                "leaf {index}: device log head of {account} at length {length} is out of order (the log's next length is {want})"
                            ),
                        );
                    }
                    next_len.insert(account.clone(), length.max(want.saturating_sub(1)));
                    if heads
                        .insert((account.clone(), length), (head, index))
                        .is_some()
                    {
                        report.find(
                            Some(index),
                            format!("leaf {index}: a second leaf for {account} at length {length}"),
                        );
                    }
                }
                LeafEvent::Roster { version, hash } => {
                    let want = rosters.keys().next_back().map_or(1, |v| v + 1);
                    if version != want {
                        report.find(
                            Some(index),
                            format!("leaf {index}: roster version {version} out of order (expected {want})"),
                        );
                    }
                    rosters.insert(version, (hash, index));
                }
                LeafEvent::Attestation { account, hash, .. } => {
                    attestations.insert(account, (hash, index));
                }
                _ => {}
            }
        }
    }
    report.leaves = expected;
    report.root = hex::encode(tree.root());

    // Every device-log entry in the store has its leaf, with its head.
    for account in store.list_accounts().await? {
        let entries = store
            .device_log(&account.id, 0, MAX_STORED_LOG_ENTRIES as usize)
            .await?;
        for (i, entry) in entries.iter().enumerate() {
            let length = i as u64 + 1;
            let head = entry.body.hash().0;
            match heads.remove(&(account.id.clone(), length)) {
                None => report.find(
                    None,
                    format!(
                        "device log of {} entry {i} (length {length}) has no leaf in the log",
                        account.id
                    ),
                ),
                Some((h, index)) if h != head => report.find(
                    Some(index),
                    format!(
                        "leaf {index}: device log head of {} at length {length} is {} but the stored log's is {}",
                        account.id,
                        hex::encode(h),
                        hex::encode(head)
                    ),
                ),
                Some(_) => {}
            }
        }
        if let Some(a) = store.attestation(&account.id).await? {
            match attestations.remove(&account.id) {
                None => report.find(
                    None,
                    format!("the attestation of {} has no leaf in the log", account.id),
                ),
                Some((h, index)) if h != a.digest().0 => report.find(
                    Some(index),
                    format!(
                        "leaf {index}: the attestation of {} does not match the stored one",
                        account.id
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for ((account, length), (_, index)) in heads {
        report.find(
            Some(index),
            format!("leaf {index}: device log head of {account} at length {length} is not in the stored log"),
        );
    }
    for (account, (_, index)) in attestations {
        report.find(
            Some(index),
            format!("leaf {index}: attestation of {account} is not stored"),
        );
    }
    // Every stored roster version has its leaf.
    let mut after = 0;
    loop {
        let links = store.rosters_after(after, 64).await?;
        if links.is_empty() {
            break;
        }
        for link in links {
            let v = link.roster.version();
            after = v;
            match rosters.remove(&v) {
                None => report.find(None, format!("roster version {v} has no leaf in the log")),
                Some((h, index)) if h != link.roster.hash().0 => report.find(
                    Some(index),
                    format!(
                        "leaf {index}: roster version {v}'s hash does not match the stored roster"
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for (v, (_, index)) in rosters {
        report.find(
            Some(index),
            format!("leaf {index}: roster version {v} is not stored"),
        );
    }

    // Every stored checkpoint: signed by the log key, root = recomputed root at its size.
    let mut after = None;
    loop {
        let cps = store.checkpoints_after(after, CHECKPOINTS_PER_READ).await?;
        if cps.is_empty() {
            break;
        }
        for (size, note) in cps {
            after = Some(size);
            report.checkpoints += 1;
            let signed = match SignedCheckpoint::parse(note.as_bytes()) {
                Ok(s) => s,
                Err(e) => {
                    report.find(
                        None,
                        format!("checkpoint of size {size} does not parse: {e}"),
                    );
                    continue;
                }
            };
            if let Some(key) = log_key {
                if let Err(e) = signed.verify_log(std::slice::from_ref(key)) {
                    report.find(None, format!("checkpoint of size {size}: {e}"));
                }
            }
            if signed.checkpoint.size != size {
                report.find(
                    None,
                    format!(
                        "checkpoint stored as size {size} says size {}",
                        signed.checkpoint.size
                    ),
                );
                continue;
            }
            match tree.root_at(size) {
                Ok(root) if root == signed.checkpoint.root => {}
                Ok(_) => report.find(
                    size.checked_sub(1),
                    format!(
                        "checkpoint of size {size} (signed) does not match the recomputed tree: a leaf below index {size} was changed, removed or reordered"
                    ),
                ),
                Err(_) => report.find(
                    None,
                    format!("checkpoint of size {size} is beyond the {} leaves in the database: leaves were removed", report.leaves),
                ),
            }
        }
    }
    // Leaf findings first, in index order (a checkpoint finding names the range).
    report.findings.sort_by_key(|f| f.leaf.unwrap_or(u64::MAX));
    Ok(report)
}

/// One line of `audit export` (JSON lines).
#[derive(Serialize)]
pub struct ExportLine {
    /// The leaf index.
    pub index: u64,
    /// The leaf bytes, hex.
    pub leaf_hex: String,
    /// `SHA-256(0x00 || leaf)`, hex.
    pub leaf_hash: String,
    /// The decoded leaf (null if it does not decode).
    pub decoded: Option<LogLeaf>,
}

/// Write the log as JSON lines: one [`ExportLine`] per leaf, then
/// `{"checkpoint": "<signed note text>"}` with the latest stored checkpoint. Returns the
/// number of leaves written.
pub async fn export<S: Store, W: std::io::Write>(
    store: &S,
    out: &mut W,
) -> Result<u64, ExportError> {
    let mut next = 0u64;
    loop {
        let batch = store.leaves(next, MAX_LEAVES_PER_READ).await?;
        if batch.is_empty() {
            break;
        }
        for (index, bytes) in batch {
            next = index + 1;
            let line = ExportLine {
                index,
                leaf_hex: hex::encode(&bytes),
                leaf_hash: hex::encode(leaf_hash(&bytes)),
                decoded: LogLeaf::from_bytes(&bytes).ok(),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    if let Some((_, note)) = store.latest_checkpoint().await? {
        serde_json::to_writer(&mut *out, &serde_json::json!({ "checkpoint": note }))?;
        out.write_all(b"\n")?;
    }
    Ok(next)
}

/// `audit export` failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Encoding JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}
