//! Pending device links (docs/PROTOCOL.md §19.4): a bounded in-memory registry.
//!
//! A new device asks to join an account (`link_start`), an existing device of the account
//! (or, for a recovery, a staff device) offers it the entry that would add it
//! (`link_offer`), the new device signs that entry (`link_sign`), and the existing device
//! appends it to the account's log. The registry only carries these steps between the
//! devices: nothing in it grants anything (the appended entry is verified on its own), so
//! it lives in memory and pending links lapse when the relay restarts.
//!
//! Anyone who knows an account id can start a request, so the registry is built so that a
//! flood cannot lock an account out of linking or recovery:
//!
//! * **Short lifetime.** Linking is interactive: a request nobody has offered on lapses
//!   after the configured lifetime (`limits.link_lifetime_secs`, default 1 hour). Once a
//!   device of the account (or, for a recovery, a staff device) has offered on it, it
//!   lives [`OFFERED_LINK_LIFETIME_MS`] from the offer, so a recovery can wait for its
//!   approvals. Only those trusted parties can offer.
//! * **Eviction, not refusal.** An account has at most [`MAX_PENDING_LINKS`] open
//!   requests; a new one beyond that evicts the account's oldest request that has no
//!   offer. The registry holds a configurable total; a new request beyond it evicts the
//!   oldest request (any account) that has no offer or is completed. Only when every
//!   slot holds an offered request is a new one refused, and only trusted parties can
//!   make that happen. Requests before authentication are also limited per address
//!   (`limits.link_requests_per_ip`).
//! * **Dismissal.** A device of the account can dismiss a pending request
//!   ([`LinkRegistry::dismiss`]), and a new `link_start` by the same identity for the same
//!   account (the caller has checked its signature on this connection, so it proves
//!   possession again) replaces its earlier request, which then answers
//!   [`LinkError::NotFound`]; an offer made on the old request is dropped with it.

use std::collections::HashMap;

use sealpost_protocol::identity::{AccountId, DeviceId, PublicIdentity};
use sealpost_protocol::trust::{
    DeviceAction, EntryAuthorization, EntryBody, LinkChallenge, LinkCommitment, LinkNonce, LogEntry,
};
use sealpost_protocol::wire::{PendingLink, MAX_PENDING_LINKS};

/// Default lifetime of a link request nobody has offered on (`limits.link_lifetime_secs`).
pub const DEFAULT_LINK_LIFETIME_MS: u64 = 60 * 60 * 1000;
/// How long a link request lives after an offer (an add by a device of the account, or a
/// recovery offered by staff, which may wait for its approvals).
pub const OFFERED_LINK_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;

/// A link-registry refusal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Unknown or lapsed link id.
    #[error("link request not found (unknown, lapsed, dismissed or replaced)")]
    NotFound,
    /// The account's pending requests all carry offers: none can be evicted.
    #[error(
        "the account already has {max} pending link requests, each with an offer from one of \
         its devices or from staff; complete or dismiss one first"
    )]
    AccountFull {
        /// The bound.
        max: usize,
    },
    /// The relay's pending requests all carry offers: none can be evicted.
    #[error("the relay holds {max} pending link requests; retry later")]
    RegistryFull {
        /// The bound.
        max: usize,
    },
    /// Nothing was offered yet.
    #[error("no entry has been offered for this link request yet")]
    NotOffered,
    /// The link was completed already.
    #[error("the link request was already completed")]
    Completed,
    /// The offered body is not an add or recover of the link's identity in its account.
    #[error("the offered entry must add or recover the requesting device in its account")]
    WrongBody,
    /// The new device's signature does not verify over the offered entry.
    #[error("the signature does not verify for the link's device over the offered entry")]
    BadSignature,
    /// The revealed nonce does not open the commitment made in `link_start`.
    #[error("the nonce does not open the commitment this link request was started with")]
    BadNonce,
    /// The authorised entry is not the recovery offered on this link, carried by a
    /// quorum and signed by the new device.
    #[error(
        "the authorised entry must be the recovery offered on this link, carried by a staff \
         quorum and signed by the new device"
    )]
    NotTheOffer,
    /// Nothing authorised yet: a recovery is completed only once its quorum approved it.
    #[error("no staff quorum has authorised this recovery yet")]
    NotAuthorized,
    /// The new device already revealed its nonce for the current offer: a new offer would
    /// be picked knowing it, so it is refused; the new device starts a new request.
    #[error(
        "the new device has already signed the offered entry and revealed its nonce; a new \
         offer needs a new link request from the new device"
    )]
    AlreadySigned,
}

/// One link request.
#[derive(Clone, Debug)]
pub struct Link {
    /// What `list_links` shows.
    pub wire: PendingLink,
    /// The device that made the current offer.
    pub offered_by: Option<DeviceId>,
    /// The entry was appended.
    pub completed: bool,
    /// A recovery's whole entry, authorised by its quorum (`link_authorize`): appended
    /// when the new device completes it (`link_complete`).
    pub authorized: Option<LogEntry>,
    /// When it lapses.
    pub expires_ms: u64,
}

impl Link {
    /// May a new request push this one out? Requests nobody trusted has offered on, and
    /// completed ones (their device can authenticate already).
    fn evictable(&self) -> bool {
        self.completed || self.offered_by.is_none()
    }
}

/// What [`LinkRegistry::start`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// When the request lapses unless someone offers on it.
    pub expires_ms: u64,
    /// The earlier open request of the same identity for the account, now dropped.
    pub replaced: Option<[u8; 16]>,
    /// Requests evicted to make room (oldest without an offer), now dropped.
    pub evicted: Vec<[u8; 16]>,
}

/// The registry.
pub struct LinkRegistry {
    links: HashMap<[u8; 16], Link>,
    max_total: usize,
    lifetime_ms: u64,
}

impl LinkRegistry {
    /// An empty registry holding at most `max_total` links; a request nobody offers on
    /// lapses `lifetime_ms` after it was started.
    pub fn new(max_total: usize, lifetime_ms: u64) -> Self {
        Self {
            links: HashMap::new(),
            max_total: max_total.max(1),
            lifetime_ms: lifetime_ms.max(1),
        }
    }

    /// Drop lapsed links.
    pub fn sweep(&mut self, now_ms: u64) {
        self.links.retain(|_, l| l.expires_ms > now_ms);
    }

    /// Links held (open and completed).
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    fn open_for<'a>(&'a self, account: &'a AccountId) -> impl Iterator<Item = &'a Link> + 'a {
        self.links
            .values()
            .filter(move |l| !l.completed && &l.wire.account == account)
    }

    /// The oldest link matching `pred` that may be evicted (not `keep`).
    fn oldest_evictable(
        &self,
        keep: Option<[u8; 16]>,
        pred: impl Fn(&Link) -> bool,
    ) -> Option<[u8; 16]> {
        self.links
            .values()
            .filter(|l| Some(l.wire.link_id) != keep && l.evictable() && pred(l))
            .min_by_key(|l| (l.wire.created_ms, l.wire.link_id))
            .map(|l| l.wire.link_id)
    }

    /// Register a request under `link_id` (chosen at random by the caller), replacing
    /// this identity's open request for the account if it has one, and evicting the
    /// oldest request without an offer when the account's or the relay's bound is
    /// reached. The caller has checked that the request comes from `identity`.
    pub fn start(
        &mut self,
        link_id: [u8; 16],
        account: AccountId,
        identity: PublicIdentity,
        commitment: LinkCommitment,
        now_ms: u64,
    ) -> Result<Started, LinkError> {
        self.sweep(now_ms);
        if self.links.contains_key(&link_id) {
            return Err(LinkError::RegistryFull {
                max: self.max_total,
            });
        }
        let replaced = self
            .open_for(&account)
            .find(|l| l.wire.identity == identity)
            .map(|l| l.wire.link_id);
        let mut evicted = Vec::new();
        let others = self.open_for(&account).count() - usize::from(replaced.is_some());
        if others >= MAX_PENDING_LINKS {
            let victim = self
                .oldest_evictable(replaced, |l| !l.completed && l.wire.account == account)
                .ok_or(LinkError::AccountFull {
                    max: MAX_PENDING_LINKS,
                })?;
            evicted.push(victim);
        }
        let held = self.links.len() - usize::from(replaced.is_some()) - evicted.len();
        if held >= self.max_total {
            let chosen = evicted.first().copied();
            let victim = self
                .oldest_evictable(replaced, |l| Some(l.wire.link_id) != chosen)
                .ok_or(LinkError::RegistryFull {
                    max: self.max_total,
                })?;
            evicted.push(victim);
        }
        for id in replaced.iter().chain(evicted.iter()) {
            self.links.remove(id);
        }
        let expires_ms = now_ms.saturating_add(self.lifetime_ms);
        let link = Link {
            wire: PendingLink {
                link_id,
                account,
                identity,
                commitment,
                created_ms: now_ms,
                challenge: None,
                body: None,
                subject_signature: None,
                nonce: None,
            },
            offered_by: None,
            completed: false,
            authorized: None,
            expires_ms,
        };
        self.links.insert(link_id, link);
        Ok(Started {
            expires_ms,
            replaced,
            evicted,
        })
    }

    /// A live link.
    pub fn get(&self, link_id: &[u8; 16], now_ms: u64) -> Result<&Link, LinkError> {
        self.links
            .get(link_id)
            .filter(|l| l.expires_ms > now_ms)
            .ok_or(LinkError::NotFound)
    }

    /// Record an offer (replacing an earlier one and clearing its signature); the link
    /// then lives [`OFFERED_LINK_LIFETIME_MS`] from now and is no longer evicted. The
    /// caller has checked who may offer; this checks that the body adds (or recovers) the
    /// link's identity in the link's account.
    pub fn offer(
        &mut self,
        link_id: &[u8; 16],
        challenge: LinkChallenge,
        body: EntryBody,
        by: DeviceId,
        now_ms: u64,
    ) -> Result<(), LinkError> {
        let link = self
            .links
            .get_mut(link_id)
            .filter(|l| l.expires_ms > now_ms)
            .ok_or(LinkError::NotFound)?;
        if link.completed {
            return Err(LinkError::Completed);
        }
        let subject = match &body.action {
            DeviceAction::Add { identity } | DeviceAction::Recover { identity } => identity,
            _ => return Err(LinkError::WrongBody),
        };
        if subject != &link.wire.identity || body.account != link.wire.account {
            return Err(LinkError::WrongBody);
        }
        if link.wire.nonce.is_some() {
            return Err(LinkError::AlreadySigned);
        }
        link.wire.challenge = Some(challenge);
        link.wire.body = Some(body);
        link.wire.subject_signature = None;
        link.offered_by = Some(by);
        link.expires_ms = link
            .expires_ms
            .max(now_ms.saturating_add(OFFERED_LINK_LIFETIME_MS));
        Ok(())
    }

    /// Record the new device's signature over the offered body and the nonce it reveals,
    /// after checking both.
    pub fn sign(
        &mut self,
        link_id: &[u8; 16],
        signature: [u8; 64],
        nonce: LinkNonce,
        now_ms: u64,
    ) -> Result<(), LinkError> {
        let link = self
            .links
            .get_mut(link_id)
            .filter(|l| l.expires_ms > now_ms)
            .ok_or(LinkError::NotFound)?;
        if link.completed {
            return Err(LinkError::Completed);
        }
        let Some(body) = &link.wire.body else {
            return Err(LinkError::NotOffered);
        };
        if !body.is_signed_by(&link.wire.identity, &signature) {
            return Err(LinkError::BadSignature);
        }
        if !link
            .wire
            .commitment
            .opens(&link.wire.account, &link.wire.identity, &nonce)
        {
            return Err(LinkError::BadNonce);
        }
        if link.wire.nonce.is_some_and(|n| n != nonce) {
            return Err(LinkError::BadNonce);
        }
        link.wire.subject_signature = Some(signature);
        link.wire.nonce = Some(nonce);
        Ok(())
    }

    /// Record the quorum-carried entry that recovers the link's device (its offered
    /// `recover` body, signed by the new device), to be appended when the new device
    /// completes it. The caller has checked who authorises and that the entry verifies.
    pub fn authorize(
        &mut self,
        link_id: &[u8; 16],
        entry: LogEntry,
        now_ms: u64,
    ) -> Result<(), LinkError> {
        let link = self
            .links
            .get_mut(link_id)
            .filter(|l| l.expires_ms > now_ms)
            .ok_or(LinkError::NotFound)?;
        if link.completed {
            return Err(LinkError::Completed);
        }
        let matches = link.wire.body.as_ref() == Some(&entry.body)
            && matches!(entry.body.action, DeviceAction::Recover { .. })
            && matches!(entry.authorization, EntryAuthorization::Quorum(_))
            && link.wire.subject_signature.is_some()
            && entry.subject_signature == link.wire.subject_signature;
        if !matches {
            return Err(LinkError::NotTheOffer);
        }
        link.authorized = Some(entry);
        Ok(())
    }

    /// The entry authorised for the link, and the identity that must complete it.
    pub fn authorized(
        &self,
        link_id: &[u8; 16],
        now_ms: u64,
    ) -> Result<(LogEntry, PublicIdentity), LinkError> {
        let link = self.get(link_id, now_ms)?;
        if link.completed {
            return Err(LinkError::Completed);
        }
        let entry = link.authorized.clone().ok_or(LinkError::NotAuthorized)?;
        Ok((entry, link.wire.identity.clone()))
    }

    /// Whether a connection waiting on `link_id` may keep waiting: `None` once the link
    /// is gone (lapsed, dismissed, replaced, evicted), else whether it completed.
    pub fn waiting(&self, link_id: &[u8; 16], now_ms: u64) -> Option<bool> {
        self.get(link_id, now_ms).ok().map(|l| l.completed)
    }

    /// Dismiss an open request of `account` (a device of the account decided it is not
    /// wanted). `NotFound` if there is no such open request.
    pub fn dismiss(
        &mut self,
        link_id: &[u8; 16],
        account: &AccountId,
        now_ms: u64,
    ) -> Result<(), LinkError> {
        let open = self
            .links
            .get(link_id)
            .is_some_and(|l| l.expires_ms > now_ms && !l.completed && &l.wire.account == account);
        if !open {
            return Err(LinkError::NotFound);
        }
        self.links.remove(link_id);
        Ok(())
    }

    /// Open requests of `account`, oldest first (at most [`MAX_PENDING_LINKS`]).
    pub fn list(&self, account: &AccountId, now_ms: u64) -> Vec<PendingLink> {
        let mut out: Vec<PendingLink> = self
            .open_for(account)
            .filter(|l| l.expires_ms > now_ms)
            .map(|l| l.wire.clone())
            .collect();
        out.sort_by_key(|l| (l.created_ms, l.link_id));
        out.truncate(MAX_PENDING_LINKS);
        out
    }

    /// Drop every request of `account`, open or offered (a security measure,
    /// `require_fresh_link_code`: a device that wants to join starts again, and the code
    /// of the new request differs). Returns how many were dropped.
    pub fn drop_account(&mut self, account: &AccountId) -> usize {
        let before = self.links.len();
        self.links
            .retain(|_, l| l.completed || &l.wire.account != account);
        before - self.links.len()
    }

    /// Mark the open requests of `identity` in `account` completed (its entry was
    /// appended); returns how many.
    pub fn complete(&mut self, account: &AccountId, identity: &PublicIdentity) -> usize {
        let mut n = 0;
        for l in self.links.values_mut() {
            if !l.completed && &l.wire.account == account && &l.wire.identity == identity {
                l.completed = true;
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use sealpost_protocol::trust::DeviceLog;
    use sealpost_protocol::IdentityKeyPair;

    const T0: u64 = 1_704_067_200_000;
    const LIFE: u64 = DEFAULT_LINK_LIFETIME_MS;
    const NONCE: LinkNonce = LinkNonce([9; 32]);

    /// A commitment no nonce opens (for tests that never reach `sign`).
    fn cm() -> LinkCommitment {
        LinkCommitment([0; 32])
    }

    fn acct(s: &str) -> AccountId {
        AccountId::new(s).unwrap()
    }

    fn key(seed: u64) -> IdentityKeyPair {
        IdentityKeyPair::generate(&mut StdRng::seed_from_u64(seed))
    }

    fn add_body(account: &AccountId, identity: &PublicIdentity) -> EntryBody {
        DeviceLog::new(account.clone()).next_body(
            T0,
            DeviceAction::Add {
                identity: identity.clone(),
            },
            "link",
        )
    }

    #[test]
    fn the_full_flow_offer_sign_complete() {
        let mut r = LinkRegistry::new(100, LIFE);
        let a = acct("alice");
        let new = key(1);
        let commitment = LinkCommitment::compute(&a, new.public(), &NONCE);
        let started = r
            .start([1; 16], a.clone(), new.public().clone(), commitment, T0)
            .unwrap();
        assert_eq!(started.expires_ms, T0 + LIFE);
        assert_eq!(started.replaced, None);
        assert_eq!(
            r.sign(&[1; 16], [0; 64], NONCE, T0),
            Err(LinkError::NotOffered)
        );
        let body = add_body(&a, new.public());
        let challenge = LinkChallenge([7; 16]);
        r.offer(&[1; 16], challenge, body.clone(), key(2).device_id(), T0)
            .unwrap();
        // A new offer before the nonce is revealed replaces the first.
        r.offer(&[1; 16], challenge, body.clone(), key(2).device_id(), T0)
            .unwrap();
        // A signature by another key, or over another body, is refused.
        assert_eq!(
            r.sign(&[1; 16], body.sign(&key(3)), NONCE, T0),
            Err(LinkError::BadSignature)
        );
        let mut other = body.clone();
        other.timestamp_ms += 1;
        assert_eq!(
            r.sign(&[1; 16], other.sign(&new), NONCE, T0),
            Err(LinkError::BadSignature)
        );
        // A nonce that does not open the commitment is refused.
        assert_eq!(
            r.sign(&[1; 16], body.sign(&new), LinkNonce([8; 32]), T0),
            Err(LinkError::BadNonce)
        );
        assert!(r.list(&a, T0)[0].nonce.is_none());
        r.sign(&[1; 16], body.sign(&new), NONCE, T0).unwrap();
        let listed = r.list(&a, T0);
        assert_eq!(listed.len(), 1);
        assert!(listed[0].subject_signature.is_some());
        assert_eq!(listed[0].nonce, Some(NONCE));
        // Once the nonce is out, no new offer: it could be picked knowing the nonce.
        assert_eq!(
            r.offer(
                &[1; 16],
                LinkChallenge([8; 16]),
                body.clone(),
                key(2).device_id(),
                T0
            ),
            Err(LinkError::AlreadySigned)
        );
        assert_eq!(r.complete(&a, new.public()), 1);
        assert!(r.list(&a, T0).is_empty());
        assert!(r.get(&[1; 16], T0).unwrap().completed);
        assert_eq!(
            r.offer(&[1; 16], challenge, body, key(2).device_id(), T0),
            Err(LinkError::Completed)
        );
    }

    #[test]
    fn starting_again_replaces_the_identitys_open_request_and_drops_its_offer() {
        let mut r = LinkRegistry::new(2, LIFE);
        let a = acct("alice");
        let new = key(1);
        r.start([1; 16], a.clone(), new.public().clone(), cm(), T0)
            .unwrap();
        let body = add_body(&a, new.public());
        r.offer(
            &[1; 16],
            LinkChallenge([7; 16]),
            body,
            key(2).device_id(),
            T0,
        )
        .unwrap();
        // Another identity does not replace it; a full registry still takes the
        // replacement (it frees the old slot).
        r.start([2; 16], a.clone(), key(3).public().clone(), cm(), T0)
            .unwrap();
        let again = r
            .start([3; 16], a.clone(), new.public().clone(), cm(), T0 + 5)
            .unwrap();
        assert_eq!(again.replaced, Some([1; 16]));
        assert_eq!(again.expires_ms, T0 + 5 + LIFE);
        assert_eq!(r.get(&[1; 16], T0 + 5).err(), Some(LinkError::NotFound));
        assert_eq!(
            r.sign(&[1; 16], [0; 64], NONCE, T0 + 5),
            Err(LinkError::NotFound)
        );
        let fresh = r.get(&[3; 16], T0 + 5).unwrap();
        assert!(fresh.wire.body.is_none() && fresh.offered_by.is_none());
        assert_eq!(r.len(), 2);
        // A completed request is not replaced (nor would the relay accept a registered
        // device's `link_start`): a new one is a request of its own, and the full
        // registry evicts its oldest request without an offer to hold it.
        r.complete(&a, new.public());
        let s = r
            .start([4; 16], a.clone(), new.public().clone(), cm(), T0 + 6)
            .unwrap();
        assert_eq!(s.replaced, None);
        assert_eq!(s.evicted, vec![[2; 16]]);
        assert!(r.get(&[3; 16], T0 + 6).unwrap().completed);
        // The same identity for another account is a request of its own.
        let mut big = LinkRegistry::new(10, LIFE);
        big.start([1; 16], a, new.public().clone(), cm(), T0)
            .unwrap();
        let other = big
            .start([2; 16], acct("bob"), new.public().clone(), cm(), T0)
            .unwrap();
        assert_eq!(other.replaced, None);
        assert_eq!(big.len(), 2);
    }

    #[test]
    fn offers_must_add_the_links_identity_in_its_account() {
        let mut r = LinkRegistry::new(100, LIFE);
        let a = acct("alice");
        let new = key(1);
        r.start([1; 16], a.clone(), new.public().clone(), cm(), T0)
            .unwrap();
        let by = key(2).device_id();
        let c = LinkChallenge([0; 16]);
        assert_eq!(
            r.offer(&[1; 16], c, add_body(&a, key(9).public()), by, T0),
            Err(LinkError::WrongBody)
        );
        assert_eq!(
            r.offer(&[1; 16], c, add_body(&acct("bob"), new.public()), by, T0),
            Err(LinkError::WrongBody)
        );
        let freeze = DeviceLog::new(a.clone()).next_body(T0, DeviceAction::Freeze, "");
        assert_eq!(
            r.offer(&[1; 16], c, freeze, by, T0),
            Err(LinkError::WrongBody)
        );
        assert_eq!(
            r.offer(&[2; 16], c, add_body(&a, new.public()), by, T0),
            Err(LinkError::NotFound)
        );
    }

    #[test]
    fn a_full_account_evicts_its_oldest_request_without_an_offer() {
        let mut r = LinkRegistry::new(100, LIFE);
        let a = acct("alice");
        for i in 0..MAX_PENDING_LINKS as u8 {
            r.start(
                [i; 16],
                a.clone(),
                key(u64::from(i)).public().clone(),
                cm(),
                T0 + u64::from(i),
            )
            .unwrap();
        }
        // Request 0 has an offer from one of the account's devices: it is kept.
        let body = add_body(&a, key(0).public());
        r.offer(
            &[0; 16],
            LinkChallenge([1; 16]),
            body,
            key(99).device_id(),
            T0 + 10,
        )
        .unwrap();
        // A flood does not refuse the next request: it evicts the oldest one nobody
        // offered on (request 1), then the next oldest, and so on.
        let s = r
            .start([50; 16], a.clone(), key(50).public().clone(), cm(), T0 + 20)
            .unwrap();
        assert_eq!(s.evicted, vec![[1; 16]]);
        assert_eq!(r.get(&[1; 16], T0 + 20).err(), Some(LinkError::NotFound));
        let s = r
            .start([51; 16], a.clone(), key(51).public().clone(), cm(), T0 + 21)
            .unwrap();
        assert_eq!(s.evicted, vec![[2; 16]]);
        assert!(
            r.get(&[0; 16], T0 + 21).is_ok(),
            "the offered request stays"
        );
        assert_eq!(r.list(&a, T0 + 21).len(), MAX_PENDING_LINKS);
        // The same identity starting again replaces its request without evicting.
        let again = r
            .start([52; 16], a.clone(), key(51).public().clone(), cm(), T0 + 22)
            .unwrap();
        assert_eq!(again.replaced, Some([51; 16]));
        assert!(again.evicted.is_empty());
        // Only when every slot holds an offer (which only the account's devices or
        // staff can make) is a request refused.
        for id in [[3; 16], [50; 16], [52; 16]] {
            let identity = r.get(&id, T0 + 23).unwrap().wire.identity.clone();
            r.offer(
                &id,
                LinkChallenge([1; 16]),
                add_body(&a, &identity),
                key(99).device_id(),
                T0 + 23,
            )
            .unwrap();
        }
        assert_eq!(
            r.start([60; 16], a.clone(), key(60).public().clone(), cm(), T0 + 24),
            Err(LinkError::AccountFull {
                max: MAX_PENDING_LINKS
            })
        );
        // A device of the account dismisses one; there is room again.
        r.dismiss(&[3; 16], &a, T0 + 25).unwrap();
        assert_eq!(r.dismiss(&[3; 16], &a, T0 + 25), Err(LinkError::NotFound));
        assert_eq!(
            r.dismiss(&[50; 16], &acct("mallory"), T0 + 25),
            Err(LinkError::NotFound),
            "only for its own account"
        );
        r.start([60; 16], a.clone(), key(60).public().clone(), cm(), T0 + 26)
            .unwrap();
    }

    #[test]
    fn a_full_registry_evicts_the_oldest_request_without_an_offer() {
        let mut r = LinkRegistry::new(3, LIFE);
        let (a, b) = (acct("alice"), acct("bob"));
        r.start([1; 16], a.clone(), key(1).public().clone(), cm(), T0)
            .unwrap();
        r.start([2; 16], b.clone(), key(2).public().clone(), cm(), T0 + 1)
            .unwrap();
        r.start([3; 16], b.clone(), key(3).public().clone(), cm(), T0 + 2)
            .unwrap();
        r.offer(
            &[1; 16],
            LinkChallenge([0; 16]),
            add_body(&a, key(1).public()),
            key(9).device_id(),
            T0 + 3,
        )
        .unwrap();
        let s = r
            .start(
                [4; 16],
                acct("carol"),
                key(4).public().clone(),
                cm(),
                T0 + 4,
            )
            .unwrap();
        assert_eq!(s.evicted, vec![[2; 16]], "alice's offered request is kept");
        assert_eq!(r.len(), 3);
        // A completed request goes before an open one.
        r.complete(&a, key(1).public());
        let s = r
            .start([5; 16], acct("dave"), key(5).public().clone(), cm(), T0 + 5)
            .unwrap();
        assert_eq!(s.evicted, vec![[1; 16]]);
    }

    #[test]
    fn a_recovery_is_authorised_only_as_offered_and_signed_then_completed_by_its_device() {
        use sealpost_protocol::trust::{ApprovalBundle, ApprovalRequest, Operation, SignerRef};
        let mut r = LinkRegistry::new(10, LIFE);
        let a = acct("alice");
        let new = key(1);
        let commitment = LinkCommitment::compute(&a, new.public(), &NONCE);
        r.start([1; 16], a.clone(), new.public().clone(), commitment, T0)
            .unwrap();
        assert_eq!(r.waiting(&[1; 16], T0), Some(false));
        assert_eq!(r.waiting(&[9; 16], T0), None);
        let body = DeviceLog::new(a.clone()).next_body(
            T0,
            DeviceAction::Recover {
                identity: new.public().clone(),
            },
            "lost phone",
        );
        let staff = key(2);
        let request = ApprovalRequest::new(
            Operation::AccountRecovery,
            body.hash().0.to_vec(),
            1,
            T0 + LIFE,
            SignerRef::new(acct("ops"), staff.device_id()),
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
        let bundle = ApprovalBundle::initiate(request, &staff).unwrap();
        let entry = LogEntry::with_quorum(body.clone(), bundle.clone(), Some(&new));
        // Nothing offered, then offered but not signed by the new device: refused.
        assert_eq!(
            r.authorize(&[1; 16], entry.clone(), T0),
            Err(LinkError::NotTheOffer)
        );
        r.offer(
            &[1; 16],
            LinkChallenge([7; 16]),
            body.clone(),
            staff.device_id(),
            T0,
        )
        .unwrap();
        assert_eq!(
            r.authorize(&[1; 16], entry.clone(), T0),
            Err(LinkError::NotTheOffer)
        );
        r.sign(&[1; 16], body.sign(&new), NONCE, T0).unwrap();
        assert_eq!(
            r.authorized(&[1; 16], T0).err(),
            Some(LinkError::NotAuthorized)
        );
        // Without the new device's signature, or for another body: refused.
        let unsigned = LogEntry::with_quorum(body.clone(), bundle.clone(), None);
        assert_eq!(
            r.authorize(&[1; 16], unsigned, T0),
            Err(LinkError::NotTheOffer)
        );
        let mut other = entry.clone();
        other.body.timestamp_ms += 1;
        assert_eq!(
            r.authorize(&[1; 16], other, T0),
            Err(LinkError::NotTheOffer)
        );
        r.authorize(&[1; 16], entry.clone(), T0).unwrap();
        let (kept, identity) = r.authorized(&[1; 16], T0).unwrap();
        assert_eq!(kept, entry);
        assert_eq!(&identity, new.public());
        // Appended (the relay marks it completed): nothing more to complete; a waiting
        // connection gets its last period to authenticate.
        assert_eq!(r.complete(&a, new.public()), 1);
        assert_eq!(r.waiting(&[1; 16], T0), Some(true));
        assert_eq!(r.authorized(&[1; 16], T0).err(), Some(LinkError::Completed));
        assert_eq!(r.waiting(&[1; 16], T0 + OFFERED_LINK_LIFETIME_MS + 1), None);
    }

    #[test]
    fn requests_lapse_after_the_lifetime_unless_offered() {
        let life = 60_000;
        let mut r = LinkRegistry::new(10, life);
        let a = acct("alice");
        let s = r
            .start([1; 16], a.clone(), key(1).public().clone(), cm(), T0)
            .unwrap();
        assert_eq!(s.expires_ms, T0 + life);
        r.start([2; 16], a.clone(), key(2).public().clone(), cm(), T0)
            .unwrap();
        r.offer(
            &[2; 16],
            LinkChallenge([0; 16]),
            add_body(&a, key(2).public()),
            key(9).device_id(),
            T0 + 10,
        )
        .unwrap();
        assert_eq!(r.get(&[1; 16], T0 + life).err(), Some(LinkError::NotFound));
        assert!(r.list(&a, T0 + life).iter().all(|l| l.link_id == [2; 16]));
        // Offered: it waits for a recovery's approvals.
        let offered = r.get(&[2; 16], T0 + life).unwrap();
        assert_eq!(offered.expires_ms, T0 + 10 + OFFERED_LINK_LIFETIME_MS);
        r.sweep(T0 + 10 + OFFERED_LINK_LIFETIME_MS);
        assert!(r.is_empty());
    }
}
