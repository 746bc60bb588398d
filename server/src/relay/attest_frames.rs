//! The firm's attestation of client accounts' first devices (docs/PROTOCOL.md §19.10):
//! the client's verification request (commit, then reveal after the staff member's
//! challenge), the staff's list of clients still to verify, and the signed attestation,
//! verified here and stored durably.
//!
//! Pending requests live in memory ([`AttestRegistry`]): after a restart a client simply
//! asks again with a fresh nonce. Attestations are stored (`TrustStore::put_attestation`)
//! and served with the first page of the account's device log.

use std::collections::HashMap;

use sealpost_protocol::identity::AccountId;
use sealpost_protocol::trust::{
    ClientAttestation, DeviceAction, LinkChallenge, LinkCommitment, LinkNonce,
};
use sealpost_protocol::wire::{
    BoundedVec, ErrorCode, FrameBody, PendingAttestation, Role, MAX_UNATTESTED_PER_FRAME,
};
use tracing::info;

use super::{refuse, reply, store_failure, unix_ms, Authenticated, Handled, Relay};
use crate::store::{Store, StoreError};

/// Most pending verification requests held at once (one per client account).
pub const MAX_PENDING_ATTESTATIONS: usize = 65_536;
/// A pending request lapses after this long without an attestation.
pub const ATTEST_REQUEST_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// One client account's pending verification request.
#[derive(Clone, Debug)]
struct Request {
    commitment: LinkCommitment,
    challenge: Option<LinkChallenge>,
    nonce: Option<LinkNonce>,
    created_ms: u64,
}

/// Pending requests by account (bounded; lapsed ones are dropped when room is needed).
#[derive(Default)]
pub struct AttestRegistry {
    pending: HashMap<AccountId, Request>,
}

impl AttestRegistry {
    fn get(&self, account: &AccountId, now: u64) -> Option<&Request> {
        self.pending
            .get(account)
            .filter(|r| r.created_ms.saturating_add(ATTEST_REQUEST_TTL_MS) > now)
    }
}

fn is_staff(role: Role) -> bool {
    matches!(role, Role::Staff | Role::Advisor)
}

impl<S: Store> Relay<S> {
    fn with_attest<T>(&self, f: impl FnOnce(&mut AttestRegistry) -> T) -> T {
        match self.attest.lock() {
            Ok(mut a) => f(&mut a),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// The refusal when this relay has no organisation roster (attestations chain to
    /// its root), if so.
    fn without_org(&self, id: u64) -> Option<Handled> {
        if self.trust.pinned().is_none() || self.trust.chain().is_none() {
            return Some(refuse(
                id,
                ErrorCode::Forbidden,
                "this relay has no organisation roster: there is nothing to attest with \
                 (clients keep trust on first use)",
            ));
        }
        None
    }

    async fn attest_state(&self, id: u64, account: &AccountId) -> Handled {
        let attested = match self.store.attestation(account).await {
            Ok(a) => a.is_some(),
            Err(e) => return store_failure(id, &e),
        };
        let now = unix_ms();
        let (commitment, challenge, revealed) = self.with_attest(|r| {
            r.get(account, now).map_or((None, None, false), |q| {
                (Some(q.commitment), q.challenge, q.nonce.is_some())
            })
        });
        reply(
            id,
            FrameBody::AttestState {
                commitment,
                challenge,
                revealed,
                attested,
            },
        )
    }

    /// `attest_start`: a client device asks to be verified.
    pub(super) async fn attest_start(
        &self,
        me: &Authenticated,
        id: u64,
        commitment: LinkCommitment,
    ) -> Handled {
        if me.role != Role::Client {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "only client accounts are attested (staff are listed in the roster)",
            );
        }
        if let Some(h) = self.without_org(id) {
            return h;
        }
        match self.store.attestation(&me.account).await {
            Ok(Some(_)) => return self.attest_state(id, &me.account).await,
            Ok(None) => {}
            Err(e) => return store_failure(id, &e),
        }
        let now = unix_ms();
        let stored = self.with_attest(|r| {
            if r.pending.len() >= MAX_PENDING_ATTESTATIONS && !r.pending.contains_key(&me.account) {
                r.pending
                    .retain(|_, q| q.created_ms.saturating_add(ATTEST_REQUEST_TTL_MS) > now);
                if r.pending.len() >= MAX_PENDING_ATTESTATIONS {
                    return false;
                }
            }
            r.pending.insert(
                me.account.clone(),
                Request {
                    commitment,
                    challenge: None,
                    nonce: None,
                    created_ms: now,
                },
            );
            true
        });
        if !stored {
            return refuse(
                id,
                ErrorCode::QuotaExceeded,
                "too many clients are waiting for verification; try again later",
            );
        }
        info!(account = %me.account, "attestation requested");
        self.attest_state(id, &me.account).await
    }

    /// `attest_poll`.
    pub(super) async fn attest_poll(&self, me: &Authenticated, id: u64) -> Handled {
        self.attest_state(id, &me.account).await
    }

    /// `attest_reveal`: the nonce, only once a challenge was picked; it must open the
    /// request's commitment for the identity of the account's genesis entry.
    pub(super) async fn attest_reveal(
        &self,
        me: &Authenticated,
        id: u64,
        nonce: LinkNonce,
    ) -> Handled {
        let genesis = match self.store.device_log(&me.account, 0, 1).await {
            Ok(e) => e.into_iter().next(),
            Err(e) => return store_failure(id, &e),
        };
        let Some(DeviceAction::Add { identity }) = genesis.map(|g| g.body.action) else {
            return refuse(id, ErrorCode::NotFound, "the account has no device log");
        };
        let now = unix_ms();
        let outcome = self.with_attest(|r| {
            let Some(q) = r
                .pending
                .get_mut(&me.account)
                .filter(|q| q.created_ms.saturating_add(ATTEST_REQUEST_TTL_MS) > now)
            else {
                return Err((ErrorCode::NotFound, "no pending verification request"));
            };
            if q.challenge.is_none() {
                return Err((
                    ErrorCode::Conflict,
                    "no staff member has picked a challenge yet: reveal only after it",
                ));
            }
            if q.nonce.is_some() {
                return Ok(());
            }
            if !q.commitment.opens(&me.account, &identity, &nonce) {
                return Err((
                    ErrorCode::Forbidden,
                    "the nonce does not open the request's commitment",
                ));
            }
            q.nonce = Some(nonce);
            Ok(())
        });
        match outcome {
            Ok(()) => self.attest_state(id, &me.account).await,
            Err((code, why)) => refuse(id, code, why),
        }
    }

    /// `list_unattested` (staff).
    pub(super) async fn list_unattested(
        &self,
        me: &Authenticated,
        id: u64,
        after: Option<AccountId>,
    ) -> Handled {
        if !is_staff(me.role) {
            return refuse(id, ErrorCode::Forbidden, "staff and advisor devices only");
        }
        let mut accounts = match self
            .store
            .unattested_clients_after(after.as_ref(), MAX_UNATTESTED_PER_FRAME + 1)
            .await
        {
            Ok(a) => a,
            Err(e) => return store_failure(id, &e),
        };
        let more = accounts.len() > MAX_UNATTESTED_PER_FRAME;
        accounts.truncate(MAX_UNATTESTED_PER_FRAME);
        let now = unix_ms();
        let clients = self.with_attest(|r| {
            accounts
                .into_iter()
                .map(|account| {
                    let q = r.get(&account, now);
                    PendingAttestation {
                        commitment: q.map(|q| q.commitment),
                        challenge: q.and_then(|q| q.challenge),
                        nonce: q.and_then(|q| q.nonce),
                        account,
                    }
                })
                .collect::<Vec<_>>()
        });
        match BoundedVec::new(clients) {
            Ok(clients) => reply(id, FrameBody::Unattested { clients, more }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many clients"),
        }
    }

    /// `attest_challenge` (staff): only for a pending request without a challenge.
    pub(super) fn attest_challenge(
        &self,
        me: &Authenticated,
        id: u64,
        account: AccountId,
        challenge: LinkChallenge,
    ) -> Handled {
        if !is_staff(me.role) {
            return refuse(id, ErrorCode::Forbidden, "staff and advisor devices only");
        }
        let now = unix_ms();
        let outcome = self.with_attest(|r| {
            let Some(q) = r
                .pending
                .get_mut(&account)
                .filter(|q| q.created_ms.saturating_add(ATTEST_REQUEST_TTL_MS) > now)
            else {
                return Err((
                    ErrorCode::NotFound,
                    "the client has not asked to be verified (it runs `sealpost whoami`)",
                ));
            };
            if q.challenge.is_some_and(|c| c != challenge) {
                return Err((
                    ErrorCode::Conflict,
                    "another staff device already picked a challenge for this client; \
                     dismiss the request first",
                ));
            }
            q.challenge = Some(challenge);
            Ok(())
        });
        match outcome {
            Ok(()) => {
                info!(account = %account, by = %me.device, "attestation challenge picked");
                reply(id, FrameBody::Done)
            }
            Err((code, why)) => refuse(id, code, why),
        }
    }

    /// `attest_dismiss` (staff): end a pending request.
    pub(super) fn attest_dismiss(
        &self,
        me: &Authenticated,
        id: u64,
        account: AccountId,
    ) -> Handled {
        if !is_staff(me.role) {
            return refuse(id, ErrorCode::Forbidden, "staff and advisor devices only");
        }
        let removed = self.with_attest(|r| r.pending.remove(&account).is_some());
        if !removed {
            return refuse(id, ErrorCode::NotFound, "no pending verification request");
        }
        info!(account = %account, by = %me.device, "attestation request dismissed");
        reply(id, FrameBody::Done)
    }

    /// `attest_submit` (staff): verify the attestation from the roster (signed by this
    /// device, listed in the current roster under a role the policy allows, over the
    /// client's genesis entry, dated now) and store it durably.
    pub(super) async fn attest_submit(
        &self,
        me: &Authenticated,
        id: u64,
        attestation: ClientAttestation,
    ) -> Handled {
        if !is_staff(me.role) {
            return refuse(id, ErrorCode::Forbidden, "staff and advisor devices only");
        }
        if let Some(h) = self.without_org(id) {
            return h;
        }
        let Some(chain) = self.trust.chain() else {
            return refuse(id, ErrorCode::Forbidden, "no roster");
        };
        if attestation.attester.account != me.account || attestation.attester.device != me.device {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "an attestation is submitted by the device that signed it",
            );
        }
        let head = chain.head().version();
        if attestation.roster_version != head {
            self.trust_refused("attestation");
            return refuse(
                id,
                ErrorCode::Conflict,
                &format!(
                    "the attestation names roster version {}, but the current roster is \
                     version {head}: refresh the roster and sign again",
                    attestation.roster_version
                ),
            );
        }
        let now = unix_ms();
        let max_age = self
            .config
            .limits
            .max_log_entry_age_secs
            .saturating_mul(1000);
        if attestation.attested_ms.saturating_add(max_age) < now {
            self.trust_refused("attestation");
            return refuse(
                id,
                ErrorCode::Forbidden,
                "the attestation is dated too long before it reached the relay",
            );
        }
        let account = attestation.account.clone();
        match self.store.account(&account).await {
            Ok(Some(a)) if a.role == Role::Client => {}
            Ok(Some(_)) => {
                return refuse(
                    id,
                    ErrorCode::Forbidden,
                    "only client accounts are attested (staff and advisors are listed in the \
                     roster)",
                )
            }
            Ok(None) => return refuse(id, ErrorCode::NotFound, "account not found"),
            Err(e) => return store_failure(id, &e),
        }
        let genesis = match self.store.device_log(&account, 0, 1).await {
            Ok(e) => e.into_iter().next(),
            Err(e) => return store_failure(id, &e),
        };
        let Some(genesis) = genesis else {
            return refuse(id, ErrorCode::NotFound, "the account has no device log");
        };
        if let Err(e) = attestation.verify(&chain, &account, &genesis.body.hash(), now) {
            self.trust_refused("attestation");
            return refuse(
                id,
                ErrorCode::Forbidden,
                &format!("attestation refused: {e}"),
            );
        }
        match self.store.put_attestation(&attestation, now).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return refuse(id, ErrorCode::Conflict, "the account is already attested")
            }
            Err(e) => return store_failure(id, &e),
        }
        self.with_attest(|r| r.pending.remove(&account));
        // Its first device's probation now runs from no earlier than the attestation.
        self.trust.forget(&account);
        info!(account = %account, by = %me.device, "client attested");
        reply(id, FrameBody::Done)
    }
}
