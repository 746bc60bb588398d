//! A witness of the transparency log (docs/PROTOCOL.md §21.8): `sealpost audit follow`.
//!
//! A witness is a staff device (security staff, or a service run for them) that holds a
//! witness key the roster lists. It follows the relay's log: it downloads every leaf,
//! recomputes the tree, checks that each checkpoint the relay signs is the root of
//! exactly those leaves and extends the last one it cosigned, checks what the leaves claim
//! against objects verified from the pinned organisation fingerprint (roster versions
//! against the verified roster chain, device-log heads against the verified device logs),
//! and only then cosigns the checkpoint and hands the cosignature to the relay. Clients
//! whose roster requires cosignatures accept only checkpoints witnessed this way.
//!
//! The witness's state is the last checkpoint it cosigned (size and root, kept in the
//! profile): a relay that later serves a log whose first leaves differ is caught on the
//! next pass, even across restarts of the witness.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use sealpost_protocol::identity::AccountId;
use sealpost_protocol::tlog::{
    leaf_hash, KeyName, LeafEvent, LogLeaf, MerkleTree, SignedCheckpoint, WitnessSigner,
};
use sealpost_protocol::trust::EntryTimes;

use crate::client::{Client, ClientError};
use crate::clock::now_ms;

/// Leaves asked for per `get_log_leaves` request.
pub const LEAVES_PER_REQUEST: u16 = 256;
/// Leaves one pass verifies at most (a larger backlog is taken over several passes; the
/// witness cosigns only a checkpoint whose every leaf it verified).
pub const MAX_LEAVES_PER_PASS: u64 = 1_000_000;
/// Device logs one pass fetches at most to check device-log-head leaves.
pub const MAX_LOGS_PER_PASS: usize = 4096;

/// The witness key, as kept in the (encrypted) profile. Zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct WitnessKeyRecord {
    /// The key's name (what the roster lists).
    #[zeroize(skip)]
    pub name: String,
    /// The Ed25519 seed.
    #[serde(with = "serde_bytes")]
    seed: Vec<u8>,
    /// The last checkpoint this witness cosigned: size and root.
    #[zeroize(skip)]
    #[serde(default)]
    pub cosigned: Option<(u64, [u8; 32])>,
}

impl std::fmt::Debug for WitnessKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            name,
            seed: _,
            cosigned,
        } = self;
        f.debug_struct("WitnessKeyRecord")
            .field("name", name)
            .field("cosigned", cosigned)
            .finish_non_exhaustive()
    }
}

impl WitnessKeyRecord {
    fn signer(&self) -> Result<WitnessSigner, ClientError> {
        let name = KeyName::new(&self.name).map_err(|e| ClientError::Invalid(e.to_string()))?;
        WitnessSigner::from_seed(name, &self.seed).map_err(|e| ClientError::Invalid(e.to_string()))
    }
}

/// What one pass of the witness did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WitnessPass {
    /// Leaves in the checkpoint it examined.
    pub size: u64,
    /// Its root, hex.
    pub root: String,
    /// Leaves verified in this pass (from the last cosigned size, or all of them on the
    /// first pass of a run).
    pub verified: u64,
    /// Whether it cosigned the checkpoint now (false: already cosigned it).
    pub cosigned: bool,
}

/// Why a witness refused the log. Each names the first leaf or checkpoint at fault.
fn refused(reason: String) -> ClientError {
    ClientError::Trust(sealpost_protocol::trust::TrustError::Transparency(reason))
}

/// The in-memory side of a running witness: every leaf hash seen, in order.
#[derive(Default)]
pub struct WitnessRun {
    tree: MerkleTree,
}

impl Client {
    /// Create this device's witness key (once): its verifier key, which the roster's
    /// `[[policy.witness]]` lists (`name`, and `key` as 64 hex digits), is returned as
    /// `(name, hex key, signed-note vkey)`.
    pub fn witness_init(&mut self, name: &str) -> Result<(String, String, String), ClientError> {
        if self.witness.is_some() {
            return Err(ClientError::NotAllowed(
                "this device already holds a witness key; it is listed in the roster and \
                 never replaced in place"
                    .into(),
            ));
        }
        let key_name = KeyName::new(name).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let signer = WitnessSigner::generate(key_name, &mut rand::rngs::OsRng);
        let public = signer.public().clone();
        self.witness = Some(WitnessKeyRecord {
            name: name.to_owned(),
            seed: signer.to_seed().to_vec(),
            cosigned: None,
        });
        self.save()?;
        Ok((
            name.to_owned(),
            hex::encode(public.public()),
            public.to_vkey(),
        ))
    }

    /// The witness key's name and verifier key, if this device holds one.
    pub fn witness_key(&self) -> Result<Option<(String, String)>, ClientError> {
        match &self.witness {
            None => Ok(None),
            Some(w) => {
                let s = w.signer()?;
                Ok(Some((w.name.clone(), hex::encode(s.public().public()))))
            }
        }
    }

    /// One pass of the witness: catch up with the relay's log, verify it, cosign its
    /// latest checkpoint. A trust failure names the first leaf or checkpoint that does not
    /// verify (exit 8); nothing is cosigned then.
    pub async fn witness_pass(&mut self, run: &mut WitnessRun) -> Result<WitnessPass, ClientError> {
        let record = self.witness.clone().ok_or_else(|| {
            ClientError::NotAllowed(
                "this device holds no witness key (create one with `sealpost audit witness-key`)"
                    .into(),
            )
        })?;
        let signer = record.signer()?;
        // The roster must list this witness and the log key.
        self.refresh_roster(true).await?;
        let policy = self.transparency_policy().ok_or_else(|| {
            ClientError::NoRoster("the roster names no transparency log (policy.log_key)".into())
        })?;
        if !policy.witnesses.iter().any(|w| w == signer.public()) {
            return Err(ClientError::NotAllowed(format!(
                "the roster does not list the witness key {} ({}): add it under \
                 [[policy.witness]] through a roster change",
                record.name,
                hex::encode(signer.public().public())
            )));
        }
        let note = self.conn()?.checkpoint().await?;
        let signed = SignedCheckpoint::parse(note.as_bytes())
            .map_err(|e| refused(format!("the relay's checkpoint does not parse: {e}")))?;
        signed.verify_log(&policy.log_keys).map_err(|e| {
            refused(format!(
                "the relay's checkpoint is not signed by the roster's log key: {e}"
            ))
        })?;
        let cp = signed.checkpoint.clone();
        if let Some((size, _)) = record.cosigned {
            if cp.size < size {
                return Err(refused(format!(
                    "the relay's checkpoint has {} leaves, fewer than the {size} this witness \
                     cosigned (a rolled-back log)",
                    cp.size
                )));
            }
        }
        if cp.size > run.tree.size().saturating_add(MAX_LEAVES_PER_PASS) {
            return Err(ClientError::Invalid(format!(
                "the log has {} leaves; this witness verifies at most {MAX_LEAVES_PER_PASS} per \
                 pass",
                cp.size
            )));
        }
        // Download and verify every leaf not seen in this run.
        let from = run.tree.size();
        let mut leaves: Vec<(u64, LogLeaf)> = Vec::new();
        while run.tree.size() < cp.size {
            let start = run.tree.size();
            let want = u16::try_from(cp.size - start)
                .unwrap_or(LEAVES_PER_REQUEST)
                .min(LEAVES_PER_REQUEST);
            let (page, _) = self.conn()?.log_leaves(start, want).await?;
            if page.is_empty() {
                return Err(refused(format!(
                    "the relay serves no leaf {start} of a log whose checkpoint has {} leaves",
                    cp.size
                )));
            }
            for bytes in page.into_iter().take(usize::from(want)) {
                let index = run.tree.size();
                let leaf = LogLeaf::from_bytes(&bytes).map_err(|e| {
                    refused(format!(
                        "leaf {index} of the transparency log does not decode: {e}"
                    ))
                })?;
                if leaf.index != index {
                    return Err(refused(format!(
                        "leaf {index} of the transparency log says it is leaf {}: leaves were \
                         moved or reordered",
                        leaf.index
                    )));
                }
                run.tree.push(leaf_hash(&bytes));
                leaves.push((index, leaf));
            }
        }
        // The checkpoint must be exactly the root of these leaves, and extend what this
        // witness cosigned before.
        let root = run
            .tree
            .root_at(cp.size)
            .map_err(|e| refused(format!("cannot recompute the tree: {e}")))?;
        if root != cp.root {
            return Err(refused(format!(
                "the relay's checkpoint of {} leaves has root {}, and its leaves hash to {}: a \
                 leaf was changed, removed or reordered",
                cp.size,
                hex::encode(cp.root),
                hex::encode(root)
            )));
        }
        if let Some((size, old_root)) = record.cosigned {
            let recomputed = run
                .tree
                .root_at(size)
                .map_err(|e| refused(format!("cannot recompute the tree: {e}")))?;
            if recomputed != old_root {
                return Err(refused(format!(
                    "the first {size} leaves of the relay's log hash to {}, not to the root {} \
                     this witness cosigned: the log was rewritten",
                    hex::encode(recomputed),
                    hex::encode(old_root)
                )));
            }
        }
        self.check_leaves(&leaves).await?;
        let already = record.cosigned == Some((cp.size, cp.root));
        if !already {
            let sig = signer.cosign(&cp, now_ms() / 1000);
            self.conn()?
                .submit_cosignature(cp.size, &sig.line())
                .await?;
            if let Some(w) = self.witness.as_mut() {
                w.cosigned = Some((cp.size, cp.root));
            }
            self.save()?;
        }
        Ok(WitnessPass {
            size: cp.size,
            root: hex::encode(cp.root),
            verified: cp.size - from,
            cosigned: !already,
        })
    }

    /// Check what the leaves claim against objects verified from the pinned organisation
    /// fingerprint: every roster leaf against the verified chain, every device-log head
    /// against the account's verified log (its entry at that length must hash to it).
    async fn check_leaves(&mut self, leaves: &[(u64, LogLeaf)]) -> Result<(), ClientError> {
        let mut heads: BTreeMap<AccountId, Vec<(u64, u64, [u8; 32])>> = BTreeMap::new();
        for (index, leaf) in leaves {
            match &leaf.event {
                LeafEvent::Roster { version, hash } => {
                    let chain = self.trust.chain().ok_or_else(|| {
                        ClientError::NoRoster("the relay serves no roster".into())
                    })?;
                    match chain.get(*version) {
                        Some(r) if r.hash().0 == *hash => {}
                        Some(r) => {
                            return Err(refused(format!(
                                "leaf {index} records roster version {version} with hash {}, \
                                 and the verified roster chain has {}",
                                hex::encode(hash),
                                r.hash().to_hex()
                            )))
                        }
                        None => {
                            return Err(refused(format!(
                                "leaf {index} records roster version {version}, which the \
                                 verified roster chain does not hold"
                            )))
                        }
                    }
                }
                LeafEvent::DeviceLogHead {
                    account,
                    length,
                    head,
                    ..
                } => heads
                    .entry(account.clone())
                    .or_default()
                    .push((*index, *length, *head)),
                _ => {}
            }
        }
        if heads.len() > MAX_LOGS_PER_PASS {
            return Err(ClientError::Invalid(format!(
                "{} device logs changed; this witness checks at most {MAX_LOGS_PER_PASS} per pass",
                heads.len()
            )));
        }
        for (account, claims) in heads {
            // The log's signatures and authorisations, verified from the pinned
            // organisation (the first-contact rule is a device's decision to trust an
            // account, not a property of the log: an account awaiting attestation still
            // has a well-signed log).
            let served = self.conn()?.get_served_log(&account).await?;
            let times = EntryTimes {
                appended_ms: served.appended_ms.clone(),
                first_seen_ms: BTreeMap::new(),
                attested_ms: None,
            };
            served
                .log
                .verify_timed(self.trust.chain(), None, now_ms(), &times)
                .map_err(|e| {
                    refused(format!("the device log of {account} does not verify: {e}"))
                })?;
            let entries = served.log.entries.as_slice();
            for (index, length, head) in claims {
                let at = usize::try_from(length.saturating_sub(1)).unwrap_or(usize::MAX);
                match entries.get(at) {
                    Some(e) if length > 0 && e.body.hash().0 == head => {}
                    _ => {
                        return Err(refused(format!(
                            "leaf {index} records the device log of {account} with {length} \
                             entries ending in {}, which its verified log does not hold",
                            hex::encode(head)
                        )))
                    }
                }
            }
        }
        Ok(())
    }
}
