//! Pending device links (docs/PROTOCOL.md §19.4): a bounded in-memory registry.
//!
//! A new device asks to join an account (`link_start`), an existing device of the account
//! (or, for a recovery, a staff device) offers it the entry that would add it
//! (`link_offer`), the new device signs that entry (`link_sign`), and the existing device
//! appends it to the account's log. The registry only carries these steps between the
//! devices: nothing in it grants anything (the appended entry is verified on its own), so
//! it lives in memory and pending links lapse when the relay restarts.
//!
//! Bounds: [`MAX_PENDING_LINKS`] open links per account, a configurable total, and a
//! lifetime of [`LINK_LIFETIME_MS`] from `link_start` (completed links stay visible to
//! `link_poll` until then, and count toward the total but not toward the account's four).
//!
//! One open request per (account, identity): a new `link_start` by the same identity for
//! the same account (the caller has checked its signature on this connection, so it
//! proves possession again) replaces the earlier request, which then answers
//! [`LinkError::NotFound`]; an offer made on the old request is dropped with it.

use std::collections::HashMap;

use sealpost_protocol::identity::{AccountId, DeviceId, PublicIdentity};
use sealpost_protocol::trust::{DeviceAction, EntryBody, LinkChallenge};
use sealpost_protocol::wire::{PendingLink, MAX_PENDING_LINKS};

/// How long a link request stays pending after `link_start`.
pub const LINK_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;

/// A link-registry refusal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Unknown or lapsed link id.
    #[error("link request not found (unknown or lapsed)")]
    NotFound,
    /// The account already has its maximum of open link requests.
    #[error("the account already has {max} pending link requests")]
    AccountFull {
        /// The bound.
        max: usize,
    },
    /// The relay holds its maximum of link requests.
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
}

impl Link {
    fn expires_ms(&self) -> u64 {
        self.wire.created_ms.saturating_add(LINK_LIFETIME_MS)
    }
}

/// What [`LinkRegistry::start`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// When the request lapses.
    pub expires_ms: u64,
    /// The earlier open request of the same identity for the account, now dropped.
    pub replaced: Option<[u8; 16]>,
}

/// The registry.
pub struct LinkRegistry {
    links: HashMap<[u8; 16], Link>,
    max_total: usize,
}

impl LinkRegistry {
    /// An empty registry holding at most `max_total` links.
    pub fn new(max_total: usize) -> Self {
        Self {
            links: HashMap::new(),
            max_total: max_total.max(1),
        }
    }

    /// Drop lapsed links.
    pub fn sweep(&mut self, now_ms: u64) {
        self.links.retain(|_, l| l.expires_ms() > now_ms);
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

    /// Register a request under `link_id` (chosen at random by the caller), replacing
    /// this identity's open request for the account if it has one. The caller has checked
    /// that the request comes from `identity`.
    pub fn start(
        &mut self,
        link_id: [u8; 16],
        account: AccountId,
        identity: PublicIdentity,
        now_ms: u64,
    ) -> Result<Started, LinkError> {
        self.sweep(now_ms);
        let replaced = self
            .open_for(&account)
            .find(|l| l.wire.identity == identity)
            .map(|l| l.wire.link_id);
        let others = self.open_for(&account).count() - usize::from(replaced.is_some());
        if others >= MAX_PENDING_LINKS {
            return Err(LinkError::AccountFull {
                max: MAX_PENDING_LINKS,
            });
        }
        let held = self.links.len() - usize::from(replaced.is_some());
        if held >= self.max_total || self.links.contains_key(&link_id) {
            return Err(LinkError::RegistryFull {
                max: self.max_total,
            });
        }
        if let Some(old) = &replaced {
            self.links.remove(old);
        }
        let link = Link {
            wire: PendingLink {
                link_id,
                account,
                identity,
                created_ms: now_ms,
                challenge: None,
                body: None,
                subject_signature: None,
            },
            offered_by: None,
            completed: false,
        };
        let expires_ms = link.expires_ms();
        self.links.insert(link_id, link);
        Ok(Started {
            expires_ms,
            replaced,
        })
    }

    /// A live link.
    pub fn get(&self, link_id: &[u8; 16], now_ms: u64) -> Result<&Link, LinkError> {
        self.links
            .get(link_id)
            .filter(|l| l.expires_ms() > now_ms)
            .ok_or(LinkError::NotFound)
    }

    /// Record an offer (replacing an earlier one and clearing its signature). The caller
    /// has checked who may offer; this checks that the body adds (or recovers) the link's
    /// identity in the link's account.
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
            .filter(|l| l.expires_ms() > now_ms)
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
        link.wire.challenge = Some(challenge);
        link.wire.body = Some(body);
        link.wire.subject_signature = None;
        link.offered_by = Some(by);
        Ok(())
    }

    /// Record the new device's signature over the offered body, after checking it.
    pub fn sign(
        &mut self,
        link_id: &[u8; 16],
        signature: [u8; 64],
        now_ms: u64,
    ) -> Result<(), LinkError> {
        let link = self
            .links
            .get_mut(link_id)
            .filter(|l| l.expires_ms() > now_ms)
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
        link.wire.subject_signature = Some(signature);
        Ok(())
    }

    /// Open requests of `account`, oldest first (at most [`MAX_PENDING_LINKS`]).
    pub fn list(&self, account: &AccountId, now_ms: u64) -> Vec<PendingLink> {
        let mut out: Vec<PendingLink> = self
            .open_for(account)
            .filter(|l| l.expires_ms() > now_ms)
            .map(|l| l.wire.clone())
            .collect();
        out.sort_by_key(|l| (l.created_ms, l.link_id));
        out.truncate(MAX_PENDING_LINKS);
        out
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
        let mut r = LinkRegistry::new(100);
        let a = acct("alice");
        let new = key(1);
        let started = r
            .start([1; 16], a.clone(), new.public().clone(), T0)
            .unwrap();
        assert_eq!(started.expires_ms, T0 + LINK_LIFETIME_MS);
        assert_eq!(started.replaced, None);
        assert_eq!(r.sign(&[1; 16], [0; 64], T0), Err(LinkError::NotOffered));
        let body = add_body(&a, new.public());
        let challenge = LinkChallenge([7; 16]);
        r.offer(&[1; 16], challenge, body.clone(), key(2).device_id(), T0)
            .unwrap();
        // A signature by another key, or over another body, is refused.
        assert_eq!(
            r.sign(&[1; 16], body.sign(&key(3)), T0),
            Err(LinkError::BadSignature)
        );
        let mut other = body.clone();
        other.timestamp_ms += 1;
        assert_eq!(
            r.sign(&[1; 16], other.sign(&new), T0),
            Err(LinkError::BadSignature)
        );
        r.sign(&[1; 16], body.sign(&new), T0).unwrap();
        let listed = r.list(&a, T0);
        assert_eq!(listed.len(), 1);
        assert!(listed[0].subject_signature.is_some());
        // A new offer clears the signature.
        r.offer(&[1; 16], challenge, body.clone(), key(2).device_id(), T0)
            .unwrap();
        assert!(r.list(&a, T0)[0].subject_signature.is_none());
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
        let mut r = LinkRegistry::new(2);
        let a = acct("alice");
        let new = key(1);
        r.start([1; 16], a.clone(), new.public().clone(), T0)
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
        r.start([2; 16], a.clone(), key(3).public().clone(), T0)
            .unwrap();
        let again = r
            .start([3; 16], a.clone(), new.public().clone(), T0 + 5)
            .unwrap();
        assert_eq!(again.replaced, Some([1; 16]));
        assert_eq!(again.expires_ms, T0 + 5 + LINK_LIFETIME_MS);
        assert_eq!(r.get(&[1; 16], T0 + 5).err(), Some(LinkError::NotFound));
        assert_eq!(r.sign(&[1; 16], [0; 64], T0 + 5), Err(LinkError::NotFound));
        let fresh = r.get(&[3; 16], T0 + 5).unwrap();
        assert!(fresh.wire.body.is_none() && fresh.offered_by.is_none());
        assert_eq!(r.len(), 2);
        // A completed request is not replaced (nor would the relay accept a registered
        // device's `link_start`).
        r.complete(&a, new.public());
        assert_eq!(
            r.start([4; 16], a.clone(), new.public().clone(), T0 + 6),
            Err(LinkError::RegistryFull { max: 2 })
        );
        // The same identity for another account is a request of its own.
        let mut big = LinkRegistry::new(10);
        big.start([1; 16], a, new.public().clone(), T0).unwrap();
        let other = big
            .start([2; 16], acct("bob"), new.public().clone(), T0)
            .unwrap();
        assert_eq!(other.replaced, None);
        assert_eq!(big.len(), 2);
    }

    #[test]
    fn offers_must_add_the_links_identity_in_its_account() {
        let mut r = LinkRegistry::new(100);
        let a = acct("alice");
        let new = key(1);
        r.start([1; 16], a.clone(), new.public().clone(), T0)
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
    fn bounds_per_account_total_and_lifetime() {
        let mut r = LinkRegistry::new(6);
        let a = acct("alice");
        for i in 0..MAX_PENDING_LINKS as u8 {
            r.start([i; 16], a.clone(), key(u64::from(i)).public().clone(), T0)
                .unwrap();
        }
        assert_eq!(
            r.start([50; 16], a.clone(), key(50).public().clone(), T0),
            Err(LinkError::AccountFull {
                max: MAX_PENDING_LINKS
            })
        );
        // The same identity starting again replaces its request, even at the bound.
        let again = r
            .start([40; 16], a.clone(), key(0).public().clone(), T0 + 1)
            .unwrap();
        assert_eq!(again.replaced, Some([0; 16]));
        assert_eq!(r.get(&[0; 16], T0 + 1).err(), Some(LinkError::NotFound));
        assert_eq!(r.list(&a, T0 + 1).len(), MAX_PENDING_LINKS);
        let b = acct("bob");
        r.start([60; 16], b.clone(), key(60).public().clone(), T0)
            .unwrap();
        r.start([61; 16], b.clone(), key(61).public().clone(), T0)
            .unwrap();
        assert_eq!(
            r.start([62; 16], b.clone(), key(62).public().clone(), T0),
            Err(LinkError::RegistryFull { max: 6 })
        );
        assert_eq!(r.list(&a, T0).len(), MAX_PENDING_LINKS);
        // Lapse after 24 hours (the replacement's from its own start).
        let later = T0 + 1 + LINK_LIFETIME_MS;
        assert_eq!(r.get(&[1; 16], later).err(), Some(LinkError::NotFound));
        assert!(r.list(&a, later).is_empty());
        r.start([62; 16], b, key(62).public().clone(), later)
            .unwrap();
        assert_eq!(r.len(), 1);
    }
}
