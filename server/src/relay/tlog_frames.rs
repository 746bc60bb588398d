//! The transparency-log frames (docs/PROTOCOL.md §20): the latest checkpoint, proofs of
//! device-log heads and roster versions, leaves for witnesses and auditors, consistency
//! proofs, and witness cosignatures. The decisions live in `crate::tlog`; this is the
//! shell that turns them into frames.

use sealpost_protocol::identity::AccountId;
use sealpost_protocol::tlog::{LeafBytes, ProofHash, LEAVES_FRAME_BUDGET, MAX_LEAVES_PER_FRAME};
use sealpost_protocol::wire::{BoundedString, BoundedVec, ErrorCode, FrameBody, Role};
use tracing::{info, warn};

use super::{refuse, reply, store_failure, unix_ms, Authenticated, Handled, Relay};
use crate::store::Store;
use crate::tlog::{LogError, Proof};

fn log_failure(id: u64, e: &LogError) -> Handled {
    match e {
        LogError::Store(s) => store_failure(id, s),
        LogError::NotLogged(what) => refuse(
            id,
            ErrorCode::NotFound,
            &format!("the log holds no leaf for {what}"),
        ),
        LogError::Tlog(t) => refuse(id, ErrorCode::BadFrame, &t.to_string()),
        LogError::BadLeaf { .. }
        | LogError::Missing { .. }
        | LogError::Conflict { .. }
        | LogError::Key { .. } => {
            warn!(error = %e, "transparency log failure");
            refuse(id, ErrorCode::Internal, "transparency log unavailable")
        }
    }
}

fn hashes(
    v: Vec<[u8; 32]>,
) -> Option<BoundedVec<ProofHash, { sealpost_protocol::tlog::MAX_PROOF_HASHES }>> {
    BoundedVec::new(v.into_iter().map(ProofHash).collect()).ok()
}

fn proof_frame(id: u64, p: Proof) -> Handled {
    let (Some(inclusion), Some(consistency)) = (hashes(p.inclusion), hashes(p.consistency)) else {
        return refuse(id, ErrorCode::Internal, "proof longer than the bound");
    };
    let Ok(leaf) = LeafBytes::new(p.leaf) else {
        return refuse(id, ErrorCode::Internal, "stored leaf larger than the bound");
    };
    reply(
        id,
        FrameBody::LogProof {
            checkpoint: BoundedString::truncating(&p.checkpoint.to_text()),
            index: p.index,
            leaf,
            inclusion,
            consistency,
        },
    )
}

impl<S: Store> Relay<S> {
    pub(super) async fn get_checkpoint(&self, id: u64) -> Handled {
        match self.tlog.checkpoint(&self.store, unix_ms()).await {
            Ok(c) => reply(
                id,
                FrameBody::Checkpoint {
                    note: BoundedString::truncating(&c.to_text()),
                },
            ),
            Err(e) => log_failure(id, &e),
        }
    }

    pub(super) async fn prove_log_head(
        &self,
        id: u64,
        account: AccountId,
        length: u64,
        head: [u8; 32],
        old_size: u64,
    ) -> Handled {
        match self
            .tlog
            .prove_head(&self.store, &account, length, head, old_size, unix_ms())
            .await
        {
            Ok(p) => proof_frame(id, p),
            Err(e) => log_failure(id, &e),
        }
    }

    pub(super) async fn prove_roster(
        &self,
        id: u64,
        version: u64,
        hash: [u8; 32],
        old_size: u64,
    ) -> Handled {
        match self
            .tlog
            .prove_roster(&self.store, version, hash, old_size, unix_ms())
            .await
        {
            Ok(p) => proof_frame(id, p),
            Err(e) => log_failure(id, &e),
        }
    }

    /// Leaves for witnesses and auditors: staff accounts only (the leaves name accounts
    /// and devices).
    pub(super) async fn get_log_leaves(
        &self,
        me: &Authenticated,
        id: u64,
        start: u64,
        count: u16,
    ) -> Handled {
        match self.store.account(&me.account).await {
            Ok(Some(a)) if a.role == Role::Staff => {}
            Ok(_) => {
                return refuse(
                    id,
                    ErrorCode::Forbidden,
                    "only staff accounts read the log's leaves",
                )
            }
            Err(e) => return store_failure(id, &e),
        }
        let size = match self.tlog.sync(&self.store).await {
            Ok(s) => s,
            Err(e) => return log_failure(id, &e),
        };
        let want = usize::from(count).min(MAX_LEAVES_PER_FRAME);
        let leaves = match self.store.leaves(start, want).await {
            Ok(l) => l,
            Err(e) => return store_failure(id, &e),
        };
        let mut out = Vec::with_capacity(leaves.len());
        let mut bytes = 0usize;
        for (i, (stored, leaf)) in leaves.into_iter().enumerate() {
            if stored != start + i as u64 {
                return log_failure(
                    id,
                    &LogError::Missing {
                        index: start + i as u64,
                    },
                );
            }
            if !out.is_empty() && bytes + leaf.len() > LEAVES_FRAME_BUDGET {
                break;
            }
            bytes += leaf.len();
            match LeafBytes::new(leaf) {
                Ok(l) => out.push(l),
                Err(_) => return refuse(id, ErrorCode::Internal, "stored leaf too large"),
            }
        }
        match BoundedVec::new(out) {
            Ok(leaves) => reply(
                id,
                FrameBody::LogLeaves {
                    start,
                    leaves,
                    size,
                },
            ),
            Err(_) => refuse(id, ErrorCode::Internal, "too many leaves"),
        }
    }

    pub(super) async fn get_consistency(&self, id: u64, old_size: u64, new_size: u64) -> Handled {
        match self.tlog.consistency(&self.store, old_size, new_size).await {
            Ok(p) => match hashes(p) {
                Some(proof) => reply(
                    id,
                    FrameBody::Consistency {
                        old_size,
                        new_size,
                        proof,
                    },
                ),
                None => refuse(id, ErrorCode::Internal, "proof longer than the bound"),
            },
            Err(e) => log_failure(id, &e),
        }
    }

    pub(super) async fn submit_cosignature(
        &self,
        me: &Authenticated,
        id: u64,
        size: u64,
        line: &str,
    ) -> Handled {
        let chain = self.trust.chain();
        let policy = chain
            .as_ref()
            .and_then(|c| c.head().policy().transparency.clone());
        if policy.is_none() {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "the roster lists no witnesses for this log",
            );
        }
        match self
            .tlog
            .add_cosignature(&self.store, policy.as_ref(), size, line, unix_ms())
            .await
        {
            Ok(()) => {
                info!(device = %me.device, size, "witness cosignature stored");
                reply(id, FrameBody::Done)
            }
            Err(e) => log_failure(id, &e),
        }
    }
}
