//! The firm's verification of a client account's first device (docs/PROTOCOL.md
//! §19.10), the "strengthened identity verification" of the brief.
//!
//! With an organisation pinned, peers trust a client account only once a staff member
//! whose role the roster policy names has attested its genesis entry. The staff member
//! checks the person out of band with the link-code exchange (commit, then reveal):
//!
//! 1. the client device commits to a fresh nonce for (account, genesis identity)
//!    ([`Client::attestation_status`], run by `sealpost whoami`);
//! 2. the staff device, having received that commitment, picks a challenge
//!    ([`Client::attest_begin`]) and the staff member calls the client;
//! 3. the client device, having received the challenge, reveals its nonce and shows the
//!    six-digit code, which the client reads aloud;
//! 4. the staff device checks that the nonce opens the commitment it saw in step 2,
//!    computes the code itself and compares it with the digits typed
//!    ([`Client::attest_confirm`]); only if they match does it sign the attestation.
//!
//! Nobody in the middle can substitute another identity and make both codes agree
//! except by a one-in-a-million guess, and the relay never shows the staff member the
//! expected code: the staff device computes it and only compares.

use rand::rngs::OsRng;
use sealpost_protocol::identity::{AccountId, PublicIdentity};
use sealpost_protocol::trust::{
    ClientAttestation, DeviceAction, Digest, LinkChallenge, LinkCode, LinkCommitment, LinkNonce,
    Standing, TrustError,
};
use sealpost_protocol::wire::Role;
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};
use crate::clock::now_ms;

/// Verification requests a staff device keeps open at once.
pub const MAX_ATTEST_OFFERS: usize = 64;
/// A staff device forgets a challenge it picked after this long.
pub const ATTEST_OFFER_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The client side of a verification request, persisted: the nonce is revealed at most
/// once, and never reused after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientNonceRecord {
    /// The nonce.
    pub nonce: LinkNonce,
    /// Its commitment, as sent in `attest_start`.
    pub commitment: LinkCommitment,
    /// The challenge it was revealed for (None: not revealed yet).
    pub revealed_for: Option<LinkChallenge>,
}

/// What a staff device saw and picked for a client's request, persisted until it attests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestOfferRecord {
    /// The client account.
    pub account: AccountId,
    /// The hash of its genesis entry (what the attestation will sign).
    #[serde(with = "serde_bytes")]
    pub genesis: Vec<u8>,
    /// The identity that entry adds.
    pub identity: PublicIdentity,
    /// The client's commitment, as received before the challenge was picked.
    pub commitment: LinkCommitment,
    /// The challenge picked.
    pub challenge: LinkChallenge,
    /// When.
    pub created_ms: u64,
}

/// Attestation state kept in the profile.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AttestRecords {
    /// A client device's current request.
    #[serde(default)]
    pub nonce: Option<ClientNonceRecord>,
    /// A staff device's open challenges.
    #[serde(default)]
    pub offers: Vec<AttestOfferRecord>,
}

/// How this device's own account stands with the firm.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AttestStatus {
    /// No organisation is pinned: peers trust this account on first use.
    TrustOnFirstUse,
    /// The roster lists this account (staff, advisors): nothing to attest.
    Roster,
    /// The firm attested this account's first device.
    Attested {
        /// When.
        attested_ms: u64,
    },
    /// Waiting for the firm's verification: peers refuse this account meanwhile.
    Waiting {
        /// The code to read aloud to the staff member who calls, once they picked their
        /// challenge (None: nobody has yet).
        code: Option<String>,
    },
}

/// A client account awaiting verification, as staff see it.
#[derive(Clone, Debug, Serialize)]
pub struct UnattestedView {
    /// The account.
    pub account: AccountId,
    /// The client has asked (`sealpost whoami`); without a request nothing can be done yet.
    pub requested: bool,
    /// This device picked the challenge: call the client and type the code they read.
    pub challenged_by_me: bool,
    /// A challenge was picked (by this device or another).
    pub challenged: bool,
    /// The client revealed its nonce: the code can be checked now.
    pub code_ready: bool,
}

impl Client {
    /// How this device's own account stands with the firm and, for a client waiting for
    /// verification, moves its request on: asks for verification (a fresh nonce whenever
    /// the previous one was revealed), and once a staff member picked a challenge,
    /// reveals the nonce and returns the code to read aloud.
    pub async fn attestation_status(&mut self) -> Result<AttestStatus, ClientError> {
        let me = self.me()?;
        if !self.pinned_org()? {
            return Ok(AttestStatus::TrustOnFirstUse);
        }
        let (log, _, events) = self.load_log(&me).await?;
        self.events.extend(events);
        match self.trust.own_standing.clone() {
            Some(Ok(Standing::Roster)) => return Ok(AttestStatus::Roster),
            Some(Ok(Standing::Attested { attested_ms })) => {
                if self.attest.nonce.take().is_some() {
                    self.save()?;
                }
                return Ok(AttestStatus::Attested { attested_ms });
            }
            Some(Err(TrustError::NotAttested { .. })) => {}
            Some(Err(e)) => return Err(ClientError::Trust(e)),
            None => return Err(ClientError::Trust(TrustError::NoRoster)),
        }
        if self.role != Some(Role::Client) {
            // The roster does not list this staff account: a roster change must.
            return Err(ClientError::Trust(TrustError::NotAttested { account: me }));
        }
        let Some(DeviceAction::Add { identity }) = log
            .entries
            .as_slice()
            .first()
            .map(|e| e.body.action.clone())
        else {
            return Err(ClientError::Invalid(
                "this account has no device log".into(),
            ));
        };
        let mut state = self.conn()?.attest_poll().await?;
        let live = self
            .attest
            .nonce
            .as_ref()
            .is_some_and(|r| state.commitment == Some(r.commitment));
        if !live {
            let reusable = self
                .attest
                .nonce
                .as_ref()
                .is_some_and(|r| r.revealed_for.is_none());
            if !reusable {
                let nonce = LinkNonce::generate(&mut OsRng);
                let commitment = LinkCommitment::compute(&me, &identity, &nonce);
                self.attest.nonce = Some(ClientNonceRecord {
                    nonce,
                    commitment,
                    revealed_for: None,
                });
                self.save()?;
            }
            let commitment = self
                .attest
                .nonce
                .as_ref()
                .map(|r| r.commitment)
                .ok_or_else(|| ClientError::Invalid("no verification request".into()))?;
            state = self.conn()?.attest_start(commitment).await?;
        }
        if state.attested {
            // Attested meanwhile: the next log fetch carries the attestation.
            let _ = self.load_log(&me).await?;
            if let Some(Ok(Standing::Attested { attested_ms })) = self.trust.own_standing {
                return Ok(AttestStatus::Attested { attested_ms });
            }
        }
        let Some(record) = self.attest.nonce.clone() else {
            return Ok(AttestStatus::Waiting { code: None });
        };
        let challenge = match (record.revealed_for, state.challenge) {
            (Some(c), _) => c,
            (None, None) => return Ok(AttestStatus::Waiting { code: None }),
            (None, Some(c)) => {
                // Recorded before it is sent: this nonce is never revealed again.
                if let Some(r) = self.attest.nonce.as_mut() {
                    r.revealed_for = Some(c);
                }
                self.save()?;
                self.conn()?.attest_reveal(record.nonce).await?;
                c
            }
        };
        let code = LinkCode::compute(&me, &identity, &challenge, &record.nonce);
        Ok(AttestStatus::Waiting {
            code: Some(code.to_string()),
        })
    }

    /// Staff: client accounts awaiting the firm's verification.
    pub async fn unattested(&mut self) -> Result<Vec<UnattestedView>, ClientError> {
        let list = self.conn()?.list_unattested().await?;
        Ok(list
            .into_iter()
            .map(|p| {
                let mine = self.attest.offers.iter().any(|o| {
                    o.account == p.account
                        && Some(o.challenge) == p.challenge
                        && Some(o.commitment) == p.commitment
                });
                UnattestedView {
                    requested: p.commitment.is_some(),
                    challenged_by_me: mine,
                    challenged: p.challenge.is_some(),
                    code_ready: p.nonce.is_some(),
                    account: p.account,
                }
            })
            .collect())
    }

    /// Staff: start verifying `account`: check its log (signatures; its first device is
    /// what will be attested), take the client's commitment and pick a challenge. Then
    /// call the client, who runs `sealpost whoami` and reads the code aloud, and type it
    /// into [`Client::attest_confirm`].
    pub async fn attest_begin(&mut self, account: &AccountId) -> Result<(), ClientError> {
        let (genesis, identity) = self.client_genesis(account).await?;
        let pending = self
            .conn()?
            .list_unattested()
            .await?
            .into_iter()
            .find(|p| &p.account == account)
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "{account} is not waiting for verification (already attested, or not a \
                     client with a device log)"
                ))
            })?;
        let Some(commitment) = pending.commitment else {
            return Err(ClientError::NotFound(format!(
                "{account} has not asked to be verified yet: ask them to run `sealpost whoami`"
            )));
        };
        let now = now_ms();
        self.attest
            .offers
            .retain(|o| &o.account != account && o.created_ms + ATTEST_OFFER_TTL_MS > now);
        if self.attest.offers.len() >= MAX_ATTEST_OFFERS {
            self.attest.offers.remove(0);
        }
        let challenge = LinkChallenge::generate(&mut OsRng);
        self.attest.offers.push(AttestOfferRecord {
            account: account.clone(),
            genesis: genesis.0.to_vec(),
            identity,
            commitment,
            challenge,
            created_ms: now,
        });
        self.save()?;
        self.conn()?.attest_challenge(account, challenge).await?;
        Ok(())
    }

    /// Staff: check the code the client read aloud and, if it matches, sign and submit the
    /// attestation of `account`'s first device. A wrong code ends the request (the client
    /// starts again with a fresh nonce) and returns [`ClientError::CodeMismatch`].
    pub async fn attest_confirm(
        &mut self,
        account: &AccountId,
        typed: &str,
    ) -> Result<ClientAttestation, ClientError> {
        let offer = self
            .attest
            .offers
            .iter()
            .find(|o| &o.account == account)
            .cloned()
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "no verification of {account} started on this device: run `sealpost \
                     attest {account}` first, then call the client"
                ))
            })?;
        let pending = self
            .conn()?
            .list_unattested()
            .await?
            .into_iter()
            .find(|p| &p.account == account)
            .ok_or_else(|| {
                ClientError::NotFound(format!("{account} is not waiting for verification"))
            })?;
        let Some(nonce) = pending.nonce else {
            return Err(ClientError::Invalid(format!(
                "{account} has not revealed its code yet: ask them to run `sealpost whoami` \
                 and read the code it shows"
            )));
        };
        let wrong = |this: &mut Self| {
            this.attest.offers.retain(|o| &o.account != account);
            let _ = this.save();
        };
        // The nonce must open the commitment this device saw before it picked its
        // challenge: a relay cannot swap either after the fact.
        if pending.commitment != Some(offer.commitment)
            || pending.challenge != Some(offer.challenge)
            || !offer.commitment.opens(account, &offer.identity, &nonce)
        {
            wrong(self);
            let _ = self.conn()?.attest_dismiss(account).await;
            return Err(ClientError::Trust(TrustError::AttestationMismatch {
                account: account.clone(),
            }));
        }
        let expected = LinkCode::compute(account, &offer.identity, &offer.challenge, &nonce);
        if !expected.matches(typed) {
            wrong(self);
            let _ = self.conn()?.attest_dismiss(account).await;
            return Err(ClientError::CodeMismatch);
        }
        // The log may not have changed its first entry since the challenge.
        let (genesis, _) = self.client_genesis(account).await?;
        if genesis.0.as_slice() != offer.genesis.as_slice() {
            wrong(self);
            return Err(ClientError::Trust(TrustError::AttestationMismatch {
                account: account.clone(),
            }));
        }
        self.refresh_roster(true).await?;
        let version = self
            .cached_roster()
            .map(|c| c.head().version())
            .ok_or(ClientError::Trust(TrustError::NoRoster))?;
        let me = self.me()?;
        let attestation = ClientAttestation::sign(
            account.clone(),
            genesis,
            now_ms(),
            version,
            me,
            &self.identity,
        );
        self.conn()?.attest_submit(attestation.clone()).await?;
        self.attest.offers.retain(|o| &o.account != account);
        // Forget any verdict cached before the attestation.
        self.trust.clear_sets();
        self.save()?;
        Ok(attestation)
    }

    /// The hash and identity of `account`'s genesis entry, from its log verified for
    /// signatures (not for the first-contact rule, which is what is being established).
    async fn client_genesis(
        &mut self,
        account: &AccountId,
    ) -> Result<(Digest, PublicIdentity), ClientError> {
        self.refresh_roster(false).await?;
        let served = self.conn()?.get_served_log(account).await?;
        served
            .log
            .verify(self.cached_roster(), None, now_ms())
            .map_err(ClientError::Trust)?;
        let first = served
            .log
            .entries
            .as_slice()
            .first()
            .ok_or_else(|| ClientError::NotFound(format!("{account} has no device log")))?;
        let DeviceAction::Add { identity } = &first.body.action else {
            return Err(ClientError::Invalid("a genesis entry adds a device".into()));
        };
        Ok((first.body.hash(), identity.clone()))
    }
}
