//! The shell of the device's transparency-log checks (docs/PROTOCOL.md §21.6, §21.7):
//! ask the relay for proofs and checkpoints, let [`crate::transparency`] decide, keep the
//! checkpoint it accepts.

use std::time::Duration;

use sealpost_protocol::content::CheckpointView;
use sealpost_protocol::tlog::TransparencyPolicy;
use sealpost_protocol::trust::TrustError;

use crate::client::{Client, ClientError, Event};
use crate::transparency::{
    check_consistency, check_leaf_proof, compare_checkpoints, verify_checkpoint, CheckpointCompare,
    Claim, TransparencyFailure,
};

/// How often a device asks again while the relay's checkpoint lacks the witness
/// cosignatures the roster requires (witnesses cosign within seconds when they run).
pub const WITNESS_WAIT_STEP: Duration = Duration::from_millis(500);
/// How many times it asks before giving up for now ("try again": not a verdict).
pub const MAX_WITNESS_WAITS: u32 = 20;
/// Checkpoints of other devices proven to be prefixes of this device's, remembered (in
/// memory) so that a peer whose checkpoint lags is not proven again on every message; the
/// smallest is forgotten first.
pub const MAX_PROVEN_PREFIXES: usize = 256;

impl Client {
    /// The transparency policy of the verified roster head: the log keys, witnesses and
    /// cosignature threshold. `None`: no organisation, or its roster names no log (then
    /// nothing is checked against a log, and `whoami` says so).
    ///
    /// A device that is itself one of the listed witnesses does not wait for witness
    /// cosignatures: it verifies the whole log itself (`sealpost audit follow`), and the
    /// checkpoints it accepts are the ones it cosigns.
    pub fn transparency_policy(&self) -> Option<TransparencyPolicy> {
        let policy = self
            .trust
            .chain()
            .and_then(|c| c.head().policy().transparency.clone())?;
        Some(self.as_checked_here(policy))
    }

    /// `policy` as this device applies it: a listed witness does not wait for witnesses.
    pub(crate) fn as_checked_here(&self, mut policy: TransparencyPolicy) -> TransparencyPolicy {
        if let Ok(Some((name, key))) = self.witness_key() {
            if policy
                .witnesses
                .iter()
                .any(|w| w.name().as_str() == name && hex::encode(w.public()) == key)
            {
                policy.witness_threshold = 0;
            }
        }
        policy
    }

    /// The size of the transparency-log checkpoint this device accepted last (0: none).
    pub fn checkpoint_size(&self) -> u64 {
        self.trust
            .checkpoint
            .as_ref()
            .map_or(0, |c| c.checkpoint.size)
    }

    fn transparency_refused(&mut self, reason: String) -> ClientError {
        self.events.push(Event::TrustRefused {
            subject: "transparency log".into(),
            reason: reason.clone(),
        });
        ClientError::Trust(TrustError::Transparency(reason))
    }

    /// Have the relay prove `claim` in the transparency log under `policy` (the roster
    /// that lists the log), against the checkpoint this device holds; keep the newer
    /// checkpoint (saved with the caller's next save). A proof that fails is a trust
    /// failure; a checkpoint not yet cosigned by enough witnesses is waited for (bounded),
    /// then "try again".
    pub(crate) async fn prove_in_log(
        &mut self,
        policy: &TransparencyPolicy,
        claim: Claim,
    ) -> Result<(), ClientError> {
        let held = self.trust.checkpoint.as_ref().map(|c| c.checkpoint.clone());
        let old_size = held.as_ref().map_or(0, |c| c.size);
        for attempt in 0..=MAX_WITNESS_WAITS {
            let answer = self.conn()?.prove(&claim, old_size).await?;
            match check_leaf_proof(policy, held.as_ref(), &answer.as_answer(), &claim) {
                Ok(signed) => {
                    if held
                        .as_ref()
                        .is_none_or(|h| signed.checkpoint.size > h.size)
                    {
                        self.trust.checkpoint = Some(signed);
                    }
                    return Ok(());
                }
                Err(TransparencyFailure::NotWitnessed { .. }) if attempt < MAX_WITNESS_WAITS => {
                    tokio::time::sleep(WITNESS_WAIT_STEP).await;
                }
                Err(TransparencyFailure::NotWitnessed { .. }) => break,
                Err(TransparencyFailure::Refused(reason)) => {
                    return Err(self.transparency_refused(reason))
                }
            }
        }
        Err(ClientError::Timeout(
            "the witnesses to cosign the transparency log's checkpoint",
        ))
    }

    /// Fetch the relay's latest checkpoint and accept it if it extends the held one
    /// (consistency proof). `Ok(None)`: accepted (or nothing newer); `Ok(Some(reason))`:
    /// the relay's log does not extend what this device accepted (a trust failure,
    /// reported); `Err`: could not be checked now.
    async fn refresh_checkpoint(
        &mut self,
        policy: &TransparencyPolicy,
    ) -> Result<Option<String>, String> {
        let conn = self.conn().map_err(|e| e.to_string())?;
        let note = conn.checkpoint().await.map_err(|e| e.to_string())?;
        let signed = match verify_checkpoint(policy, &note) {
            Ok(s) => s,
            Err(e @ TransparencyFailure::NotWitnessed { .. }) => return Err(e.to_string()),
            Err(TransparencyFailure::Refused(r)) => return Ok(Some(r)),
        };
        let new = &signed.checkpoint;
        if let Some(held) = self.trust.checkpoint.as_ref().map(|c| c.checkpoint.clone()) {
            if new.size < held.size {
                return Ok(Some(format!(
                    "the relay's latest checkpoint has {} leaves, fewer than the {} this device \
                     accepted (a rolled-back log)",
                    new.size, held.size
                )));
            }
            if new.size == held.size {
                if new.root != held.root {
                    return Ok(Some(format!(
                        "the relay signed two checkpoints of {} leaves with different roots",
                        new.size
                    )));
                }
                return Ok(None);
            }
            let proof = self
                .conn()
                .map_err(|e| e.to_string())?
                .consistency(held.size, new.size)
                .await
                .map_err(|e| e.to_string())?;
            let as_view = CheckpointView {
                size: held.size,
                root: held.root,
            };
            if let Err(r) = check_consistency(&as_view, new, &proof) {
                return Ok(Some(r));
            }
        }
        self.trust.checkpoint = Some(signed);
        Ok(None)
    }

    /// Check now that the relay's latest checkpoint extends the one this device holds
    /// (`sealpost audit check`); returns the size of the checkpoint held afterwards. A log
    /// that does not extend it is a trust failure (exit 8), reported.
    pub async fn check_transparency(&mut self) -> Result<u64, ClientError> {
        self.refresh_roster(true).await?;
        let policy = self.transparency_policy().ok_or_else(|| {
            ClientError::NoRoster("the roster names no transparency log (policy.log_key)".into())
        })?;
        match self.refresh_checkpoint(&policy).await {
            Ok(None) => {
                self.save()?;
                Ok(self.checkpoint_size())
            }
            Ok(Some(reason)) => Err(self.transparency_refused(reason)),
            Err(e) => Err(ClientError::Protocol(format!(
                "the transparency log could not be checked now: {e}"
            ))),
        }
    }

    /// Compare the sender's checkpoint in a message with this device's (§21.7): `Ok(None)`
    /// when they are consistent (or nothing to compare), `Ok(Some(reason))` for a split
    /// view, `Err` when a proof needed to decide could not be had now (the message waits).
    pub(crate) async fn compare_checkpoint(
        &mut self,
        sender: Option<&CheckpointView>,
    ) -> Result<Option<String>, String> {
        let (Some(policy), Some(theirs)) = (self.transparency_policy(), sender) else {
            return Ok(None);
        };
        let mut check = compare_checkpoints(
            Some(theirs),
            self.trust.checkpoint.as_ref().map(|c| &c.checkpoint),
        );
        if self.trust.checkpoint.is_none() || check == CheckpointCompare::Behind {
            if let Some(split) = self.refresh_checkpoint(&policy).await? {
                return Ok(Some(split));
            }
            check = compare_checkpoints(
                Some(theirs),
                self.trust.checkpoint.as_ref().map(|c| &c.checkpoint),
            );
            if check == CheckpointCompare::Behind {
                return Ok(Some(format!(
                    "the sender holds a transparency-log checkpoint of {} leaves, and the relay's \
                     latest for this device has {}: the relay showed the two devices different \
                     logs",
                    theirs.size,
                    self.checkpoint_size()
                )));
            }
        }
        match check {
            CheckpointCompare::Agree | CheckpointCompare::Behind => Ok(None),
            CheckpointCompare::Split(reason) => Ok(Some(reason)),
            CheckpointCompare::NeedProof { old_size, new_size } => {
                // Proven once, a prefix of the held checkpoint stays a prefix of every
                // checkpoint accepted later (each extends the one before): a sender whose
                // checkpoint lags costs one request, not one per message.
                let key = (theirs.size, theirs.root);
                if self.trust.proven_prefixes.contains(&key) {
                    return Ok(None);
                }
                let proof = self
                    .conn()
                    .map_err(|e| e.to_string())?
                    .consistency(old_size, new_size)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(mine) = self.trust.checkpoint.as_ref().map(|c| c.checkpoint.clone())
                else {
                    return Ok(None);
                };
                let split = check_consistency(theirs, &mine, &proof).err();
                if split.is_none() {
                    if self.trust.proven_prefixes.len() >= MAX_PROVEN_PREFIXES {
                        self.trust.proven_prefixes.pop_first();
                    }
                    self.trust.proven_prefixes.insert(key);
                }
                Ok(split)
            }
        }
    }
}
