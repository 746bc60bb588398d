//! The relay's trust rules over real QUIC on loopback, driven with raw frames
//! (docs/PROTOCOL.md §19): enrolment by code only for an account's first device, linking,
//! device-log appends and their effects (registration, revocation, freeze), the send rules
//! (probation, frozen accounts, inactive devices), notices and their quorum and audience,
//! and the roster chain (rollback, forgery, restart). Objects are built with the trust
//! core, as a client would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_client::net::{NetError, RelayConnection};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{
    Approval, ApprovalBundle, ApprovalPolicy, ApprovalRequest, DeviceAction, EntryAuthorization,
    LinkChallenge, LogEntry, NoticeAudience, NoticeCategory, NoticeHeader, Operation,
    OrgFingerprint, OrgRoot, Roster, SignedNotice, SignedRoster, SignerRef, StaffMember, StaffRole,
};
use sealpost_protocol::wire::{BoundedString, ErrorCode, FrameBody, Role};
use sealpost_protocol::{IdentityKeyPair, PreKeySecrets, Session};
use sealpost_server::store::{AccountStore, Store, TrustStore};
use sealpost_tests::*;

const WAIT: Duration = Duration::from_secs(10);
const DAY: u64 = 24 * 60 * 60 * 1000;
const HOUR: u64 = 60 * 60 * 1000;

fn refused(r: Result<impl std::fmt::Debug, NetError>) -> ErrorCode {
    match r {
        Err(NetError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn refusal(r: Result<impl std::fmt::Debug, NetError>) -> (ErrorCode, String) {
    match r {
        Err(NetError::Refused { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn acct(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

/// Relays in these tests accept entries dated up to 30 days back, so devices can be
/// enrolled "two days ago", past their cooling-off.
fn lenient(c: &mut sealpost_server::config::Config) {
    c.limits.max_log_entry_age_secs = 30 * 24 * 3600;
}

// ---------------------------------------------------------------------------------------
// An organisation: a root, four staff accounts with one device each, roster version 1.

struct Staff {
    account: AccountId,
    role: StaffRole,
    /// Keys are derived from this seed (identity key pairs are not `Clone`).
    seed: u64,
    keys: IdentityKeyPair,
}

impl Staff {
    fn signer(&self) -> SignerRef {
        SignerRef::new(self.account.clone(), self.keys.device_id())
    }
    fn member(&self) -> StaffMember {
        StaffMember {
            account: self.account.clone(),
            role: self.role,
            devices: vec![self.keys.public().clone()],
        }
    }
    fn relay_role(&self) -> Role {
        if self.role == StaffRole::Advisor {
            Role::Advisor
        } else {
            Role::Staff
        }
    }
}

struct Org {
    rng: StdRng,
    root: OrgRoot,
    /// 0 ops.alice (operations), 1 sec.bob (security), 2 comp.carol (compliance),
    /// 3 adv.dave (advisor).
    staff: Vec<Staff>,
    v1: SignedRoster,
    issued_ms: u64,
}

impl Org {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let root = OrgRoot::generate(&mut rng);
        let staff: Vec<Staff> = [
            ("ops.alice", StaffRole::Operations),
            ("sec.bob", StaffRole::Security),
            ("comp.carol", StaffRole::Compliance),
            ("adv.dave", StaffRole::Advisor),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (a, role))| {
            let seed = seed * 100 + i as u64;
            Staff {
                account: acct(a),
                role,
                seed,
                keys: IdentityKeyPair::generate(&mut StdRng::seed_from_u64(seed)),
            }
        })
        .collect();
        let issued_ms = now_ms() - 2 * DAY;
        let members = staff.iter().map(Staff::member).collect();
        let roster = Roster::new(1, None, issued_ms, members, ApprovalPolicy::default()).unwrap();
        let v1 = root.sign_genesis(roster).unwrap();
        Self {
            rng,
            root,
            staff,
            v1,
            issued_ms,
        }
    }

    fn fingerprint(&self) -> OrgFingerprint {
        self.root.public().fingerprint()
    }

    /// A bundle for `op` over `params` under roster `version`, initiated by
    /// `staff[initiator]` and approved by each of `approvers`.
    fn bundle(
        &mut self,
        op: Operation,
        params: Vec<u8>,
        version: u64,
        initiator: usize,
        approvers: &[usize],
    ) -> ApprovalBundle {
        self.bundle_expiring(op, params, version, initiator, approvers, now_ms() + HOUR)
    }

    /// As [`Org::bundle`], with the request expiring at `expires_ms`.
    fn bundle_expiring(
        &mut self,
        op: Operation,
        params: Vec<u8>,
        version: u64,
        initiator: usize,
        approvers: &[usize],
        expires_ms: u64,
    ) -> ApprovalBundle {
        let request = ApprovalRequest::new(
            op,
            params,
            version,
            expires_ms,
            self.staff[initiator].signer(),
            &mut self.rng,
        )
        .unwrap();
        let mut bundle =
            ApprovalBundle::initiate(request.clone(), &self.staff[initiator].keys).unwrap();
        for &a in approvers {
            let s = &self.staff[a];
            bundle
                .push(Approval::sign(&request, s.account.clone(), &s.keys))
                .unwrap();
        }
        bundle
    }

    /// Create the staff accounts on `relay` and enrol their devices (past cooling-off).
    async fn enrol_staff<S: Store>(&self, relay: &TestRelay<S>) -> Vec<TestDevice> {
        let mut out = Vec::new();
        for (i, s) in self.staff.iter().enumerate() {
            relay.account(s.account.as_str(), s.relay_role()).await;
            let keys = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(s.seed));
            out.push(
                relay
                    .device_with(
                        &s.account,
                        keys,
                        now_ms() - 2 * DAY,
                        StdRng::seed_from_u64(900 + i as u64),
                    )
                    .await,
            );
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Seal `text` for `to` as an envelope of `kind`.
fn seal_kind(
    dev: &mut TestDevice,
    session: &mut Session,
    to: DeviceId,
    kind: EnvelopeKind,
    text: &[u8],
) -> Envelope {
    let header = RoutingHeader::new(dev.id(), to, kind, now_ms(), &mut dev.rng);
    session.seal(header, text, &mut dev.rng).unwrap()
}

async fn send(dev: &TestDevice, env: Envelope) -> Result<FrameBody, NetError> {
    dev.conn.request(FrameBody::Send { envelope: env }).await
}

/// The next `device_log_changed` push on `conn` (skipping others), within `WAIT`.
async fn next_log_change(conn: &RelayConnection) -> Option<(AccountId, u64, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let push = tokio::time::timeout_at(deadline, conn.next_push())
            .await
            .ok()??;
        if let FrameBody::DeviceLogChanged {
            account,
            seq,
            action,
        } = push
        {
            return Some((account, seq, action.as_str().to_owned()));
        }
    }
}

/// Whether the relay closed `conn` (its pushes end) within `WAIT`.
async fn closed_by_relay(conn: &RelayConnection) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.next_push()).await {
            Err(_) => return false,
            Ok(None) => return true,
            Ok(Some(_)) => {}
        }
    }
}

/// A linked device: the whole §19.4 flow, `existing` adding a new identity to its
/// account. Returns the new device, authenticated, with prekeys published.
async fn link_device<S: Store>(
    relay: &TestRelay<S>,
    existing: &TestDevice,
    seed: u64,
) -> TestDevice {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = IdentityKeyPair::generate(&mut rng);
    let account = existing.account.clone();
    let n = relay.connect().await;
    let (link_id, _) = n
        .link_start(&keys, &account, link_commitment(&account, &keys))
        .await
        .unwrap();
    let log = existing.conn.get_device_log(&account).await.unwrap();
    let challenge = LinkChallenge::generate(&mut rng);
    let body = log.next_body(
        now_ms(),
        DeviceAction::Add {
            identity: keys.public().clone(),
        },
        "second device",
    );
    existing
        .conn
        .link_offer(link_id, challenge, body.clone())
        .await
        .unwrap();
    let state = n.link_poll(link_id).await.unwrap();
    assert_eq!(state.body.as_ref(), Some(&body));
    n.link_sign(link_id, body.sign(&keys), LINK_NONCE)
        .await
        .unwrap();
    let links = existing.conn.list_links(&account).await.unwrap();
    let subject_signature = links
        .iter()
        .find(|l| l.link_id == link_id)
        .and_then(|l| l.subject_signature)
        .unwrap();
    let entry = LogEntry {
        authorization: EntryAuthorization::Device {
            device: existing.id(),
            signature: body.sign(&existing.identity),
        },
        body,
        subject_signature: Some(subject_signature),
    };
    existing.conn.append_device_log(entry).await.unwrap();
    assert!(n.link_poll(link_id).await.unwrap().completed);
    n.authenticate(&keys).await.unwrap();
    let mut prekeys = PreKeySecrets::new();
    let spk = prekeys.rotate_signed(&keys, &mut rng);
    let last = prekeys.rotate_kem_last_resort(&keys, &mut rng);
    n.upload_prekeys(Some(spk), vec![], vec![], Some(last))
        .await
        .unwrap();
    TestDevice {
        account,
        identity: keys,
        prekeys,
        conn: n,
        rng,
    }
}

/// An org relay with staff enrolled and roster version 1 published by ops.alice.
async fn org_relay(
    seed: u64,
) -> (
    Org,
    TestRelay<sealpost_server::store::memory::MemoryStore>,
    Vec<TestDevice>,
) {
    let org = Org::new(seed);
    let relay = memory_relay_with_org(org.fingerprint(), lenient).await;
    let staff = org.enrol_staff(&relay).await;
    staff[0].conn.publish_roster(org.v1.clone()).await.unwrap();
    (org, relay, staff)
}

// ---------------------------------------------------------------------------------------
// Enrolment

#[tokio::test]
async fn an_enrolment_code_only_creates_an_accounts_first_device() {
    let relay = memory_relay(|_| {}).await;
    let alice = relay.account("alice", Role::Client).await;
    let first = relay.device(&alice, 1).await;
    let log = first.conn.get_device_log(&alice).await.unwrap();
    assert_eq!(log.entries.as_slice().len(), 1);
    log.verify(None, None, now_ms()).unwrap();

    // A valid code for the same account no longer enrols anyone.
    let code = relay.code(&alice).await;
    let second = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(2));
    let c = relay.connect().await;
    let (code_err, message) = refusal(
        c.enroll_with_genesis(
            &second,
            &alice,
            &code,
            genesis_entry(&alice, &second, now_ms()),
        )
        .await,
    );
    assert_eq!(code_err, ErrorCode::EnrollmentRefused);
    assert!(message.contains("already has a device"), "{message}");
    assert_eq!(
        refused(c.authenticate(&second).await),
        ErrorCode::AuthFailed
    );
    assert_eq!(relay.relay.store.device_log_len(&alice).await.unwrap(), 1);
}

#[tokio::test]
async fn a_bad_or_stale_genesis_entry_is_refused_and_keeps_the_code() {
    let relay = memory_relay(|_| {}).await;
    let bob = relay.account("bob", Role::Client).await;
    let code = relay.code(&bob).await;
    let keys = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(3));
    let other = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(4));
    let c = relay.connect().await;
    // Adds another identity than the one enrolling.
    assert_eq!(
        refused(
            c.enroll_with_genesis(&keys, &bob, &code, genesis_entry(&bob, &other, now_ms()))
                .await
        ),
        ErrorCode::Forbidden
    );
    // For another account.
    assert_eq!(
        refused(
            c.enroll_with_genesis(
                &keys,
                &bob,
                &code,
                genesis_entry(&acct("carl"), &keys, now_ms())
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    // Signed by someone else than the device it adds.
    let mut forged = genesis_entry(&bob, &keys, now_ms());
    forged.subject_signature = Some(forged.body.sign(&other));
    assert_eq!(
        refused(c.enroll_with_genesis(&keys, &bob, &code, forged).await),
        ErrorCode::Forbidden
    );
    // Back-dated past the relay's freshness bound (1 hour by default): it would skip the
    // cooling-off.
    let (code_err, message) = refusal(
        c.enroll_with_genesis(
            &keys,
            &bob,
            &code,
            genesis_entry(&bob, &keys, now_ms() - 2 * DAY),
        )
        .await,
    );
    assert_eq!(code_err, ErrorCode::Forbidden);
    assert!(message.contains("before it reached the relay"), "{message}");
    // The code was not consumed by any of these.
    c.enroll_with_genesis(&keys, &bob, &code, genesis_entry(&bob, &keys, now_ms()))
        .await
        .unwrap();
    c.authenticate(&keys).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Linking

#[tokio::test]
async fn the_full_link_flow_adds_a_device_that_then_authenticates() {
    let relay = memory_relay(lenient).await;
    let alice = relay.account("alice", Role::Client).await;
    let advisor = relay.account("adv.x", Role::Advisor).await;
    relay.assign(&alice, &advisor).await;
    let existing = relay
        .device_with(
            &alice,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(10)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(10),
        )
        .await;
    let adv = relay.device(&advisor, 11).await;

    let mut rng = StdRng::seed_from_u64(12);
    let new = IdentityKeyPair::generate(&mut rng);
    let n = relay.connect().await;
    // Not registered yet: it cannot authenticate.
    assert_eq!(refused(n.authenticate(&new).await), ErrorCode::AuthFailed);
    let n = relay.connect().await;
    let (link_id, expires_ms) = n
        .link_start(&new, &alice, link_commitment(&alice, &new))
        .await
        .unwrap();
    // Linking is interactive: a request nobody offers on lapses after an hour.
    assert!(expires_ms > now_ms() + HOUR - 60_000 && expires_ms <= now_ms() + HOUR);
    let pending = existing.conn.list_links(&alice).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(&pending[0].identity, new.public());
    assert!(pending[0].body.is_none());
    let state = n.link_poll(link_id).await.unwrap();
    assert!(state.challenge.is_none() && !state.completed);

    // Another client may not see or answer the request.
    let mallory_acct = relay.account("mallory", Role::Client).await;
    let mallory = relay.device(&mallory_acct, 13).await;
    assert_eq!(
        refused(mallory.conn.list_links(&alice).await),
        ErrorCode::Forbidden
    );

    let log = existing.conn.get_device_log(&alice).await.unwrap();
    let challenge = LinkChallenge::generate(&mut rng);
    let body = log.next_body(
        now_ms(),
        DeviceAction::Add {
            identity: new.public().clone(),
        },
        "laptop",
    );
    assert_eq!(
        refused(
            mallory
                .conn
                .link_offer(link_id, challenge, body.clone())
                .await
        ),
        ErrorCode::Forbidden
    );
    existing
        .conn
        .link_offer(link_id, challenge, body.clone())
        .await
        .unwrap();

    // The new device sees the offer and shows its code; both sides compute the same.
    let state = n.link_poll(link_id).await.unwrap();
    assert_eq!(state.challenge, Some(challenge));
    assert_eq!(state.body.as_ref(), Some(&body));
    let shown = link_code(&alice, new.public(), &challenge);

    // A signature by another key, or over another body, is refused.
    let impostor = IdentityKeyPair::generate(&mut rng);
    assert_eq!(
        refused(n.link_sign(link_id, body.sign(&impostor), LINK_NONCE).await),
        ErrorCode::Forbidden
    );
    let mut other_body = body.clone();
    other_body.timestamp_ms += 1;
    assert_eq!(
        refused(
            n.link_sign(link_id, other_body.sign(&new), LINK_NONCE)
                .await
        ),
        ErrorCode::Forbidden
    );
    // A nonce that does not open the commitment made in link_start is refused.
    assert_eq!(
        refused(
            n.link_sign(
                link_id,
                body.sign(&new),
                sealpost_protocol::trust::LinkNonce([1; 32])
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    assert!(existing.conn.list_links(&alice).await.unwrap()[0]
        .nonce
        .is_none());
    n.link_sign(link_id, body.sign(&new), LINK_NONCE)
        .await
        .unwrap();
    // Once the nonce is revealed, no new offer can be made on this request (a challenge
    // picked knowing the nonce could be ground to match another code).
    assert_eq!(
        refused(
            existing
                .conn
                .link_offer(
                    link_id,
                    sealpost_protocol::trust::LinkChallenge([3; 16]),
                    body.clone()
                )
                .await
        ),
        ErrorCode::Conflict
    );

    let links = existing.conn.list_links(&alice).await.unwrap();
    assert_eq!(links[0].nonce, Some(LINK_NONCE));
    assert_eq!(links[0].challenge, Some(challenge));
    let subject_signature = links[0].subject_signature.unwrap();
    let typed = link_code(&alice, &links[0].identity, &challenge);
    assert!(typed.matches(shown.digits()));

    // Forged appends: without the new device's signature, or signed by a device that is
    // not in the log, or with a bad signature.
    let unsigned = LogEntry {
        body: body.clone(),
        authorization: EntryAuthorization::Device {
            device: existing.id(),
            signature: body.sign(&existing.identity),
        },
        subject_signature: None,
    };
    assert_eq!(
        refused(existing.conn.append_device_log(unsigned).await),
        ErrorCode::Forbidden
    );
    let self_signed = LogEntry {
        body: body.clone(),
        authorization: EntryAuthorization::Device {
            device: new.device_id(),
            signature: body.sign(&new),
        },
        subject_signature: Some(subject_signature),
    };
    assert_eq!(
        refused(existing.conn.append_device_log(self_signed).await),
        ErrorCode::Forbidden
    );
    let bad_sig = LogEntry {
        body: body.clone(),
        authorization: EntryAuthorization::Device {
            device: existing.id(),
            signature: other_body.sign(&existing.identity),
        },
        subject_signature: Some(subject_signature),
    };
    assert_eq!(
        refused(existing.conn.append_device_log(bad_sig).await),
        ErrorCode::Forbidden
    );
    let mut wrong_seq = body.clone();
    wrong_seq.seq = 5;
    let gap = LogEntry::signed_by_device(wrong_seq, &existing.identity, Some(&new));
    assert_eq!(
        refused(existing.conn.append_device_log(gap).await),
        ErrorCode::Conflict
    );
    assert_eq!(refused(n.authenticate(&new).await), ErrorCode::AuthFailed);

    // The real entry.
    let n = relay.connect().await;
    let entry = LogEntry {
        body: body.clone(),
        authorization: EntryAuthorization::Device {
            device: existing.id(),
            signature: body.sign(&existing.identity),
        },
        subject_signature: Some(subject_signature),
    };
    existing.conn.append_device_log(entry).await.unwrap();
    assert!(n.link_poll(link_id).await.unwrap().completed);
    assert!(existing.conn.list_links(&alice).await.unwrap().is_empty());
    assert_eq!(
        n.authenticate(&new).await.unwrap(),
        (alice.clone(), Role::Client)
    );

    // The account's devices and its advisor are told.
    assert_eq!(
        next_log_change(&existing.conn).await,
        Some((alice.clone(), 1, "add".to_owned()))
    );
    assert_eq!(
        next_log_change(&adv.conn).await,
        Some((alice.clone(), 1, "add".to_owned()))
    );
    // The log verifies and lists both devices, the new one on probation.
    let log = n.get_device_log(&alice).await.unwrap();
    let set = log.verify(None, None, now_ms()).unwrap();
    assert_eq!(set.devices.len(), 2);
    assert!(set.device(&new.device_id()).unwrap().on_probation);
    // Unknown link ids are not found.
    assert_eq!(refused(n.link_poll([0; 16]).await), ErrorCode::NotFound);
}

#[tokio::test]
async fn a_new_link_start_replaces_the_devices_earlier_pending_request() {
    let relay = memory_relay(lenient).await;
    let alice = relay.account("alice", Role::Client).await;
    let existing = relay
        .device_with(
            &alice,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(30)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(30),
        )
        .await;
    let mut rng = StdRng::seed_from_u64(31);
    let new = IdentityKeyPair::generate(&mut rng);
    let first = relay.connect().await;
    let (old_id, _) = first
        .link_start(&new, &alice, link_commitment(&alice, &new))
        .await
        .unwrap();
    let log = existing.conn.get_device_log(&alice).await.unwrap();
    let body = log.next_body(
        now_ms(),
        DeviceAction::Add {
            identity: new.public().clone(),
        },
        "laptop",
    );
    existing
        .conn
        .link_offer(old_id, LinkChallenge::generate(&mut rng), body.clone())
        .await
        .unwrap();

    // The device starts again (say its first process died) on a new connection: the
    // earlier request is replaced, not refused as a duplicate.
    let second = relay.connect().await;
    let (new_id, expires_ms) = second
        .link_start(&new, &alice, link_commitment(&alice, &new))
        .await
        .unwrap();
    assert_ne!(new_id, old_id);
    assert!(expires_ms > now_ms() + HOUR - 60_000);
    assert_eq!(refused(first.link_poll(old_id).await), ErrorCode::NotFound);
    assert_eq!(refused(second.link_poll(old_id).await), ErrorCode::NotFound);
    assert_eq!(
        refused(second.link_sign(old_id, body.sign(&new), LINK_NONCE).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(
            existing
                .conn
                .link_offer(old_id, LinkChallenge::generate(&mut rng), body.clone())
                .await
        ),
        ErrorCode::NotFound
    );
    let state = second.link_poll(new_id).await.unwrap();
    assert!(state.challenge.is_none() && state.body.is_none() && !state.completed);
    let pending = existing.conn.list_links(&alice).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].link_id, new_id);
    assert_eq!(&pending[0].identity, new.public());
    assert!(pending[0].body.is_none());

    // The new request goes through.
    let challenge = LinkChallenge::generate(&mut rng);
    existing
        .conn
        .link_offer(new_id, challenge, body.clone())
        .await
        .unwrap();
    second
        .link_sign(new_id, body.sign(&new), LINK_NONCE)
        .await
        .unwrap();
    let entry = LogEntry::signed_by_device(body, &existing.identity, Some(&new));
    existing.conn.append_device_log(entry).await.unwrap();
    assert!(second.link_poll(new_id).await.unwrap().completed);

    // Only the identity itself can replace its request: another key's `link_start` for
    // the account is a request of its own.
    let other = IdentityKeyPair::generate(&mut rng);
    let third = relay.connect().await;
    let (other_id, _) = third
        .link_start(&other, &alice, link_commitment(&alice, &other))
        .await
        .unwrap();
    let fourth = relay.connect().await;
    let (another_id, _) = fourth
        .link_start(
            &IdentityKeyPair::generate(&mut rng),
            &alice,
            link_commitment(&alice, &IdentityKeyPair::generate(&mut rng)),
        )
        .await
        .unwrap();
    assert_ne!(other_id, another_id);
    assert!(third.link_poll(other_id).await.unwrap().challenge.is_none());
    assert_eq!(existing.conn.list_links(&alice).await.unwrap().len(), 2);
}

/// The linking device's poll schedule and the relay's per-address limit on link requests
/// agree by design: with the default limit, one device (or two at once from one
/// address) polling for the whole 24 hours an offered link request lives (a recovery
/// waiting for its approvals) is never refused.
#[test]
fn the_link_poll_schedule_stays_inside_the_relays_default_limit() {
    use sealpost_client::trust::{link_poll_delay, LINK_POLL_FAST_FOR, LINK_POLL_SLOW_INTERVAL};
    use sealpost_server::limits::TokenBucket;
    let rate = sealpost_server::config::Limits::default().link_requests_per_ip;
    assert!(
        1000.0 / LINK_POLL_SLOW_INTERVAL.as_millis() as f64 <= rate.per_second / 3.0,
        "the slow polls are at most a third of the relay's sustained rate"
    );
    let lifetime = sealpost_server::links::OFFERED_LINK_LIFETIME_MS;
    for devices in [1u64, 2] {
        let mut bucket = TokenBucket::new(rate, 0);
        // (next request at, started at), one per device; each starts with `link_start`.
        let mut next: Vec<(u64, u64)> = (0..devices).map(|d| (d * 7, d * 7)).collect();
        bucket.try_take(devices as f64, 0).unwrap();
        let mut polls = 0u64;
        let mut fast = 0u64;
        loop {
            let (i, &(at, started)) = next
                .iter()
                .enumerate()
                .min_by_key(|(_, (at, _))| *at)
                .unwrap();
            if at > lifetime {
                break;
            }
            bucket.try_take(1.0, at).unwrap_or_else(|wait| {
                panic!("{devices} device(s): poll {polls} at {at} ms refused ({wait} ms)")
            });
            polls += 1;
            let since = Duration::from_millis(at - started);
            if since < LINK_POLL_FAST_FOR {
                fast += 1;
            }
            next[i].0 = at + link_poll_delay(since).as_millis() as u64;
        }
        assert!(fast <= devices * 10, "{fast} fast polls");
        assert!(polls > devices * 20_000, "{polls} polls in 24 h");
    }
}

/// Anyone who knows an account id can start link requests; a flood must not lock the
/// account out of linking (or recovery). A new request beyond the account's four evicts
/// the oldest one nobody has offered on, so the account's own request, once its existing
/// device has offered on it, survives the flood; a device of the account can dismiss
/// requests; only when all four carry offers (which only the account's devices or staff
/// can make) is a new one refused. The relay-wide bound evicts the same way, and requests
/// nobody offers on lapse after `link_lifetime_secs`.
#[tokio::test]
async fn a_link_flood_cannot_lock_an_account_out() {
    let relay = memory_relay(|c| {
        lenient(c);
        c.limits.max_pending_links = 6;
        c.limits.link_requests_per_ip = sealpost_server::limits::Rate::new(100.0, 1000.0);
    })
    .await;
    let alice = relay.account("alice", Role::Client).await;
    let bob = relay.account("bob", Role::Client).await;
    let existing = relay
        .device_with(
            &alice,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(20)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(20),
        )
        .await;
    let bobs = relay
        .device_with(
            &bob,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(19)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(19),
        )
        .await;
    let mut rng = StdRng::seed_from_u64(21);
    // Alice's real new device asks first, and her phone offers on it.
    let laptop = IdentityKeyPair::generate(&mut rng);
    let lc = relay.connect().await;
    let (laptop_link, _) = lc
        .link_start(&laptop, &alice, link_commitment(&alice, &laptop))
        .await
        .unwrap();
    let log = existing.conn.get_device_log(&alice).await.unwrap();
    let body = log.next_body(
        now_ms(),
        DeviceAction::Add {
            identity: laptop.public().clone(),
        },
        "laptop",
    );
    existing
        .conn
        .link_offer(laptop_link, LinkChallenge::generate(&mut rng), body.clone())
        .await
        .unwrap();
    // A flood of requests for her account: each one beyond four evicts the oldest
    // request without an offer; none is refused, and the offered one stays.
    let mut flood = Vec::new();
    for _ in 0..2 * sealpost_protocol::wire::MAX_PENDING_LINKS {
        let c = relay.connect().await;
        let (id, _) = c
            .link_start(
                &IdentityKeyPair::generate(&mut rng),
                &alice,
                link_commitment(&alice, &IdentityKeyPair::generate(&mut rng)),
            )
            .await
            .unwrap();
        flood.push((c, id));
    }
    let pending = existing.conn.list_links(&alice).await.unwrap();
    assert_eq!(pending.len(), sealpost_protocol::wire::MAX_PENDING_LINKS);
    assert!(pending.iter().any(|l| l.link_id == laptop_link));
    assert_eq!(
        refused(flood[0].0.link_poll(flood[0].1).await),
        ErrorCode::NotFound,
        "the oldest flood request was evicted"
    );
    assert!(lc.link_poll(laptop_link).await.unwrap().body.is_some());
    // Her phone dismisses a flood request; another account's device cannot.
    let (ref last_conn, last_id) = flood[flood.len() - 1];
    assert_eq!(
        refused(bobs.conn.dismiss_link(last_id).await),
        ErrorCode::NotFound
    );
    existing.conn.dismiss_link(last_id).await.unwrap();
    assert_eq!(
        refused(last_conn.link_poll(last_id).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        existing.conn.list_links(&alice).await.unwrap().len(),
        sealpost_protocol::wire::MAX_PENDING_LINKS - 1
    );
    // The real link completes despite the flood.
    lc.link_sign(laptop_link, body.sign(&laptop), LINK_NONCE)
        .await
        .unwrap();
    let entry = LogEntry::signed_by_device(body, &existing.identity, Some(&laptop));
    existing.conn.append_device_log(entry).await.unwrap();
    assert!(lc.link_poll(laptop_link).await.unwrap().completed);

    // The relay-wide bound (6 here) evicts too: requests for bob push out the oldest
    // requests without an offer, wherever they are.
    let mut bob_links = Vec::new();
    for _ in 0..4 {
        let c = relay.connect().await;
        let (id, _) = c
            .link_start(
                &IdentityKeyPair::generate(&mut rng),
                &bob,
                link_commitment(&bob, &IdentityKeyPair::generate(&mut rng)),
            )
            .await
            .unwrap();
        bob_links.push((c, id));
    }
    assert_eq!(bobs.conn.list_links(&bob).await.unwrap().len(), 4);
    assert!(existing.conn.list_links(&alice).await.unwrap().len() <= 2);

    // When every slot of an account carries an offer, a new request is refused.
    for (c, id) in &bob_links {
        let identity = bobs
            .conn
            .list_links(&bob)
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.link_id == *id)
            .unwrap()
            .identity;
        let log = bobs.conn.get_device_log(&bob).await.unwrap();
        let body = log.next_body(now_ms(), DeviceAction::Add { identity }, "");
        bobs.conn
            .link_offer(*id, LinkChallenge::generate(&mut rng), body)
            .await
            .unwrap();
        let _ = c;
    }
    let c = relay.connect().await;
    let (code, message) = refusal(
        c.link_start(
            &IdentityKeyPair::generate(&mut rng),
            &bob,
            link_commitment(&bob, &IdentityKeyPair::generate(&mut rng)),
        )
        .await,
    );
    assert_eq!(code, ErrorCode::QuotaExceeded);
    assert!(message.contains("offer"), "{message}");

    // A signature made for another connection is refused.
    let other = relay.connect().await;
    let keys = IdentityKeyPair::generate(&mut rng);
    let signature = keys.sign(&sealpost_protocol::wire::link_signature_message(
        other.exporter(),
        &alice,
    ));
    assert_eq!(
        refused(
            c.request(FrameBody::LinkStart {
                account: alice.clone(),
                identity: keys.public().clone(),
                commitment: link_commitment(&alice, &keys),
                signature,
            })
            .await
        ),
        ErrorCode::AuthFailed
    );
}

/// Requests nobody offered on lapse after `limits.link_lifetime_secs` (1 s here); an
/// offered one lives on (a recovery waits for its approvals).
#[tokio::test]
async fn link_requests_without_an_offer_lapse_after_the_configured_lifetime() {
    let relay = memory_relay(|c| {
        lenient(c);
        c.limits.link_lifetime_secs = 1;
    })
    .await;
    let alice = relay.account("alice", Role::Client).await;
    let existing = relay
        .device_with(
            &alice,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(25)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(25),
        )
        .await;
    let mut rng = StdRng::seed_from_u64(26);
    let idle_keys = IdentityKeyPair::generate(&mut rng);
    let offered_keys = IdentityKeyPair::generate(&mut rng);
    let c1 = relay.connect().await;
    let (idle, expires_ms) = c1
        .link_start(&idle_keys, &alice, link_commitment(&alice, &idle_keys))
        .await
        .unwrap();
    assert!(expires_ms <= now_ms() + 1_000);
    let c2 = relay.connect().await;
    let (offered, _) = c2
        .link_start(
            &offered_keys,
            &alice,
            link_commitment(&alice, &offered_keys),
        )
        .await
        .unwrap();
    let log = existing.conn.get_device_log(&alice).await.unwrap();
    let body = log.next_body(
        now_ms(),
        DeviceAction::Add {
            identity: offered_keys.public().clone(),
        },
        "",
    );
    existing
        .conn
        .link_offer(offered, LinkChallenge::generate(&mut rng), body)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(refused(c1.link_poll(idle).await), ErrorCode::NotFound);
    assert!(c2.link_poll(offered).await.unwrap().body.is_some());
    let pending = existing.conn.list_links(&alice).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].link_id, offered);
}

// ---------------------------------------------------------------------------------------
// Probation, freeze, unfreeze

#[tokio::test]
async fn probation_freeze_and_quorum_unfreeze() {
    let (mut org, relay, mut staff) = org_relay(30).await;
    let client = relay.account("client1", Role::Client).await;
    relay.assign(&client, &org.staff[3].account).await;
    let mut existing = relay
        .device_with(
            &client,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(31)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(31),
        )
        .await;
    let mut newer = link_device(&relay, &existing, 32).await;
    // The assigned advisor reaches the new device, so its connection holds the recipient in
    // its policy cache. Two envelopes sealed now; the second is sent after the freeze.
    let mut to_newer = staff[3].session_with(&newer).await;
    let before_freeze = seal_kind(
        &mut staff[3],
        &mut to_newer,
        newer.id(),
        EnvelopeKind::Chat,
        b"welcome",
    );
    let after_freeze = seal_kind(
        &mut staff[3],
        &mut to_newer,
        newer.id(),
        EnvelopeKind::Chat,
        b"still there?",
    );
    assert!(matches!(
        send(&staff[3], before_freeze).await.unwrap(),
        FrameBody::Accepted { .. }
    ));
    // The account's other device and its assigned advisor are told at once.
    assert_eq!(
        next_log_change(&existing.conn).await,
        Some((client.clone(), 1, "add".to_owned()))
    );
    let adv = &staff[3];
    assert_eq!(
        next_log_change(&adv.conn).await,
        Some((client.clone(), 1, "add".to_owned()))
    );

    // The new device is on probation: chat is fine, approvals and instructions are not.
    let mut s = newer.session_with(&existing).await;
    let chat = seal_kind(&mut newer, &mut s, existing.id(), EnvelopeKind::Chat, b"hi");
    assert!(matches!(
        send(&newer, chat).await.unwrap(),
        FrameBody::Accepted { .. }
    ));
    for kind in [
        EnvelopeKind::Approval,
        EnvelopeKind::Instruction,
        EnvelopeKind::DeviceChange,
    ] {
        let env = seal_kind(&mut newer, &mut s, existing.id(), kind, b"pay 1M to X");
        let (code, message) = refusal(send(&newer, env).await);
        assert_eq!(code, ErrorCode::Forbidden, "{kind:?}");
        assert!(message.contains("probation"), "{message}");
    }
    // The device past its cooling-off may send them.
    let mut s2 = existing.session_with(&newer).await;
    let env = seal_kind(
        &mut existing,
        &mut s2,
        newer.id(),
        EnvelopeKind::Instruction,
        b"ok",
    );
    assert!(matches!(
        send(&existing, env).await.unwrap(),
        FrameBody::Accepted { .. }
    ));

    // "This wasn't me": the existing device freezes the account.
    let log = existing.conn.get_device_log(&client).await.unwrap();
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms(), DeviceAction::Freeze, "this wasn't me"),
        &existing.identity,
        None,
    );
    existing.conn.append_device_log(freeze).await.unwrap();
    // The probation device is revoked: its connection is closed, it cannot come back.
    assert!(closed_by_relay(&newer.conn).await, "connection closed");
    // No cached answer outlives the revocation: the advisor's connection, which reached the
    // device seconds ago, is refused at once (the policy cache holds answers for 30 s).
    assert_eq!(
        refusal(send(&staff[3], after_freeze).await).0,
        ErrorCode::NotFound
    );
    let c = relay.connect().await;
    assert_eq!(
        refused(c.authenticate(&newer.identity).await),
        ErrorCode::AuthFailed
    );
    assert_eq!(
        next_log_change(&existing.conn).await,
        Some((client.clone(), 2, "freeze".to_owned()))
    );
    assert_eq!(
        next_log_change(&adv.conn).await,
        Some((client.clone(), 2, "freeze".to_owned()))
    );
    assert!(
        relay
            .relay
            .store
            .account(&client)
            .await
            .unwrap()
            .unwrap()
            .frozen
    );
    let devices = existing.conn.list_devices(&client).await.unwrap();
    assert_eq!(devices.len(), 1, "the revoked device is no longer listed");

    // Frozen: no sensitive kinds from any device, but the client can still talk to its
    // advisor.
    let mut sa = existing.session_with(adv).await;
    let env = seal_kind(
        &mut existing,
        &mut sa,
        adv.id(),
        EnvelopeKind::Instruction,
        b"x",
    );
    let (code, message) = refusal(send(&existing, env).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("frozen"), "{message}");
    let env = seal_kind(
        &mut existing,
        &mut sa,
        adv.id(),
        EnvelopeKind::Chat,
        b"help",
    );
    assert!(matches!(
        send(&existing, env).await.unwrap(),
        FrameBody::Accepted { .. }
    ));

    // Unfreezing needs the roster's quorum (two approvers besides the initiator).
    let log = existing.conn.get_device_log(&client).await.unwrap();
    let body = log.next_body(now_ms(), DeviceAction::Unfreeze, "checked by phone");
    let alone = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[]);
    let one = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[1]);
    for bundle in [alone, one] {
        let entry = LogEntry::with_quorum(body.clone(), bundle, None);
        let (code, message) = refusal(staff[0].conn.append_device_log(entry).await);
        assert_eq!(code, ErrorCode::Forbidden);
        assert!(
            message.contains("quorum") || message.contains("approv"),
            "{message}"
        );
    }
    // A device of the account cannot unfreeze on its own either.
    let by_device = LogEntry::signed_by_device(body.clone(), &existing.identity, None);
    assert_eq!(
        refused(existing.conn.append_device_log(by_device).await),
        ErrorCode::Forbidden
    );
    assert!(
        relay
            .relay
            .store
            .account(&client)
            .await
            .unwrap()
            .unwrap()
            .frozen
    );
    let quorum = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[1, 2]);
    staff[0]
        .conn
        .append_device_log(LogEntry::with_quorum(body, quorum, None))
        .await
        .unwrap();
    assert!(
        !relay
            .relay
            .store
            .account(&client)
            .await
            .unwrap()
            .unwrap()
            .frozen
    );
    assert_eq!(
        next_log_change(&existing.conn).await,
        Some((client.clone(), 3, "unfreeze".to_owned()))
    );
    let env = seal_kind(
        &mut existing,
        &mut sa,
        adv.id(),
        EnvelopeKind::Instruction,
        b"y",
    );
    assert!(matches!(
        send(&existing, env).await.unwrap(),
        FrameBody::Accepted { .. }
    ));
}

#[tokio::test]
async fn without_an_organisation_quorum_entries_and_notices_are_refused() {
    let relay = memory_relay(lenient).await;
    let client = relay.account("c", Role::Client).await;
    let ops = relay.account("ops", Role::Staff).await;
    relay.assign(&client, &ops).await;
    let dev = relay
        .device_with(
            &client,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(40)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(40),
        )
        .await;
    let mut staff = relay.device(&ops, 41).await;
    let log = dev.conn.get_device_log(&client).await.unwrap();
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms(), DeviceAction::Freeze, ""),
        &dev.identity,
        None,
    );
    dev.conn.append_device_log(freeze).await.unwrap();
    let mut org = Org::new(42);
    let mut log = dev.conn.get_device_log(&client).await.unwrap();
    let body = log.next_body(now_ms(), DeviceAction::Unfreeze, "");
    let bundle = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[1, 2]);
    let entry = LogEntry::with_quorum(body, bundle, None);
    assert_eq!(
        refused(staff.conn.append_device_log(entry.clone()).await),
        ErrorCode::Forbidden
    );
    log.push(entry).unwrap();
    // No roster to serve, none to publish.
    assert!(staff.conn.get_roster(0).await.unwrap().is_empty());
    assert_eq!(
        refused(staff.conn.publish_roster(org.v1.clone()).await),
        ErrorCode::Forbidden
    );
    // Notices cannot be verified.
    let mut s = staff.session_with(&dev).await;
    let env = seal_kind(&mut staff, &mut s, dev.id(), EnvelopeKind::Notice, b"n");
    let header = NoticeHeader::new(
        NoticeCategory::General,
        NoticeAudience::Client(client.clone()),
        b"n",
        now_ms(),
        SignerRef::new(ops.clone(), staff.id()),
        1,
        &mut org.rng,
    );
    let notice = SignedNotice::sign(header, &staff.identity).unwrap();
    assert_eq!(
        refused(staff.conn.send_notice(env, notice).await),
        ErrorCode::Forbidden
    );
}

// ---------------------------------------------------------------------------------------
// Notices

#[tokio::test]
async fn notices_need_their_quorum_and_their_audience() {
    let (mut org, relay, mut staff) = org_relay(50).await;
    let c1 = relay.account("client1", Role::Client).await;
    let c2 = relay.account("client2", Role::Client).await;
    let ops = org.staff[0].account.clone();
    relay.assign(&c1, &ops).await;
    relay.assign(&c2, &ops).await;
    let mut d1 = relay.device(&c1, 51).await;
    let d2 = relay.device(&c2, 52).await;
    let sender = &mut staff[0];
    let mut s1 = sender.session_with(&d1).await;
    let mut s2 = sender.session_with(&d2).await;
    let signer = org.staff[0].signer();

    let notice_for = |org: &mut Org, category, audience: NoticeAudience, content: &[u8]| {
        let header = NoticeHeader::new(
            category,
            audience,
            content,
            now_ms(),
            signer.clone(),
            1,
            &mut org.rng,
        );
        SignedNotice::sign(header, &org.staff[0].keys).unwrap()
    };

    // A general notice to client1, signed by its sender: accepted.
    let general = notice_for(
        &mut org,
        NoticeCategory::General,
        NoticeAudience::Client(c1.clone()),
        b"statement ready",
    );
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"statement");
    sender.conn.send_notice(env, general.clone()).await.unwrap();
    assert!(d1.next_envelope(WAIT).await.is_some());

    // The same notice delivered to client2 (not its audience): refused.
    let env = seal_kind(sender, &mut s2, d2.id(), EnvelopeKind::Notice, b"statement");
    let (code, message) = refusal(sender.conn.send_notice(env, general.clone()).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("audience"), "{message}");

    // A notice envelope through plain `send`: refused.
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"sneaky");
    let (code, message) = refusal(send(sender, env).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("send_notice"), "{message}");

    // A high-risk notice without co-signatures, or with too few: refused.
    let mut risky = notice_for(
        &mut org,
        NoticeCategory::DepositInstruction,
        NoticeAudience::Client(c1.clone()),
        b"new deposit address",
    );
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"addr");
    assert_eq!(
        refused(sender.conn.send_notice(env, risky.clone()).await),
        ErrorCode::Forbidden
    );
    let digest = risky.header.digest().0.to_vec();
    let mut one = risky.clone();
    one.add_cosignatures(org.bundle(Operation::HighRiskNotice, digest.clone(), 1, 0, &[1]))
        .unwrap();
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"addr");
    assert_eq!(
        refused(sender.conn.send_notice(env, one).await),
        ErrorCode::Forbidden
    );
    // With the quorum (security and compliance besides the initiator): accepted.
    risky
        .add_cosignatures(org.bundle(Operation::HighRiskNotice, digest, 1, 0, &[1, 2]))
        .unwrap();
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"addr");
    sender.conn.send_notice(env, risky.clone()).await.unwrap();

    // Someone else's notice (ops.alice's, carried by sec.bob's device): refused.
    relay.assign(&c1, &org.staff[1].account).await;
    let bob = &mut staff[1];
    let mut sb = bob.session_with(&d1).await;
    let env = seal_kind(bob, &mut sb, d1.id(), EnvelopeKind::Notice, b"relay");
    let (code, message) = refusal(bob.conn.send_notice(env, risky).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("authenticated device"), "{message}");

    // A client cannot send notices at all, even a well-formed one of its own.
    let mut sc = d1.session_with(&staff[0]).await;
    let header = NoticeHeader::new(
        NoticeCategory::General,
        NoticeAudience::Client(c1.clone()),
        b"fake",
        now_ms(),
        SignerRef::new(c1.clone(), d1.id()),
        1,
        &mut org.rng,
    );
    let fake = SignedNotice::sign(header, &d1.identity).unwrap();
    let to = staff[0].id();
    let env = seal_kind(&mut d1, &mut sc, to, EnvelopeKind::Notice, b"fake");
    let (code, message) = refusal(d1.conn.send_notice(env, fake).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("staff"), "{message}");
}

/// The relay itself refuses every kind of bad approval (the clients' refusals are tested in
/// tests/tests/trust.rs): expired, for other content, from the initiator, doubled, from a
/// role the policy does not accept, and a forged signature; the same notice with a valid
/// quorum is then accepted.
#[tokio::test]
async fn the_relay_refuses_bad_approvals_on_a_high_risk_notice() {
    let (mut org, relay, mut staff) = org_relay(55).await;
    let c1 = relay.account("client1", Role::Client).await;
    let ops = org.staff[0].account.clone();
    relay.assign(&c1, &ops).await;
    let d1 = relay.device(&c1, 56).await;
    let sender = &mut staff[0];
    let mut s1 = sender.session_with(&d1).await;
    let header = NoticeHeader::new(
        NoticeCategory::PaymentInstruction,
        NoticeAudience::Client(c1.clone()),
        b"pay to the new account",
        now_ms(),
        org.staff[0].signer(),
        1,
        &mut org.rng,
    );
    let notice = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    let digest = notice.header.digest().0.to_vec();

    // A bundle built by hand: `expires_ms`, `params` and the approvers chosen per case.
    let build = |org: &mut Org, params: Vec<u8>, expires_ms: u64, approvers: &[usize]| {
        let request = ApprovalRequest::new(
            Operation::HighRiskNotice,
            params,
            1,
            expires_ms,
            org.staff[0].signer(),
            &mut org.rng,
        )
        .unwrap();
        let mut bundle = ApprovalBundle::initiate(request.clone(), &org.staff[0].keys).unwrap();
        for &a in approvers {
            let s = &org.staff[a];
            bundle
                .push(Approval::sign(&request, s.account.clone(), &s.keys))
                .unwrap();
        }
        bundle
    };
    let later = now_ms() + HOUR;
    let mut forged = build(&mut org, digest.clone(), later, &[1, 2]);
    forged.approvals = {
        let mut v = forged.approvals.clone().into_inner();
        v[1].signature[0] ^= 1;
        sealpost_protocol::wire::BoundedVec::new(v).unwrap()
    };
    let cases: Vec<(&str, ApprovalBundle, &str)> = vec![
        (
            "expired",
            build(&mut org, digest.clone(), now_ms() - 60_000, &[1, 2]),
            "expired",
        ),
        (
            "other content",
            build(&mut org, vec![0x55; 32], later, &[1, 2]),
            "parameters",
        ),
        (
            "from the initiator",
            build(&mut org, digest.clone(), later, &[0, 1]),
            "initiator",
        ),
        (
            "doubled",
            build(&mut org, digest.clone(), later, &[1, 1]),
            "counts once",
        ),
        (
            "wrong role (advisor)",
            build(&mut org, digest.clone(), later, &[1, 3]),
            "does not accept",
        ),
        ("forged signature", forged, "signature"),
    ];
    for (what, bundle, expect) in cases {
        let mut n = notice.clone();
        n.add_cosignatures(bundle).unwrap();
        let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"pay");
        let (code, message) = refusal(sender.conn.send_notice(env, n).await);
        assert_eq!(code, ErrorCode::Forbidden, "{what}");
        assert!(
            message.contains(expect),
            "{what}: expected {expect:?} in {message:?}"
        );
    }
    // Nothing reached the client; the valid quorum then goes through.
    assert!(d1.next_envelope(Duration::from_millis(300)).await.is_none());
    let mut good = notice.clone();
    good.add_cosignatures(build(&mut org, digest, later, &[1, 2]))
        .unwrap();
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"pay");
    sender.conn.send_notice(env, good).await.unwrap();
    assert!(d1.next_envelope(WAIT).await.is_some());
}

/// A notice to all clients needs the roster's `notice_to_all_clients` quorum (one
/// co-signer from operations or compliance besides the sender): refused without it or with
/// a co-signer of the wrong role, and delivered to every client with it, assigned to the
/// sender or not (client3 is assigned to nobody); a staff account is not in its audience.
#[tokio::test]
async fn a_notice_to_all_clients_needs_its_quorum_and_reaches_every_client() {
    let (mut org, relay, mut staff) = org_relay(53).await;
    let c1 = relay.account("client1", Role::Client).await;
    let c2 = relay.account("client2", Role::Client).await;
    let ops = org.staff[0].account.clone();
    relay.assign(&c1, &ops).await;
    relay.assign(&c2, &ops).await;
    let c3 = relay.account("client3", Role::Client).await;
    let d1 = relay.device(&c1, 531).await;
    let d2 = relay.device(&c2, 532).await;
    let d3 = relay.device(&c3, 533).await;
    let header = NoticeHeader::new(
        NoticeCategory::General,
        NoticeAudience::AllClients,
        b"maintenance on Sunday",
        now_ms(),
        org.staff[0].signer(),
        1,
        &mut org.rng,
    );
    let notice = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    let digest = notice.header.digest().0.to_vec();
    let (first, rest) = staff.split_at_mut(1);
    let sender = &mut first[0];
    let bob = &rest[0];
    let mut s1 = sender.session_with(&d1).await;
    let mut s2 = sender.session_with(&d2).await;
    // A roster staff device reads the bundles of a client not assigned to it.
    let mut s3 = sender.session_with(&d3).await;

    // Signed by its sender alone: refused for every client.
    for (s, to) in [(&mut s1, d1.id()), (&mut s2, d2.id()), (&mut s3, d3.id())] {
        let env = seal_kind(sender, s, to, EnvelopeKind::Notice, b"maint");
        let (code, message) = refusal(sender.conn.send_notice(env, notice.clone()).await);
        assert_eq!(code, ErrorCode::Forbidden);
        assert!(
            message.contains("needs co-signatures for notice_to_all_clients"),
            "{message}"
        );
    }
    // Co-signed by security, whose role this quorum does not accept: refused.
    let mut wrong = notice.clone();
    wrong
        .add_cosignatures(org.bundle(Operation::NoticeToAllClients, digest.clone(), 1, 0, &[1]))
        .unwrap();
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"maint");
    let (code, message) = refusal(sender.conn.send_notice(env, wrong).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("does not accept"), "{message}");
    assert!(d1.next_envelope(Duration::from_millis(300)).await.is_none());
    assert!(d2.next_envelope(Duration::from_millis(300)).await.is_none());

    // Co-signed by compliance: delivered to every client.
    let mut good = notice.clone();
    good.add_cosignatures(org.bundle(Operation::NoticeToAllClients, digest, 1, 0, &[2]))
        .unwrap();
    for (s, to) in [(&mut s1, d1.id()), (&mut s2, d2.id()), (&mut s3, d3.id())] {
        let env = seal_kind(sender, s, to, EnvelopeKind::Notice, b"maint");
        sender.conn.send_notice(env, good.clone()).await.unwrap();
    }
    let got1 = d1
        .next_envelope(WAIT)
        .await
        .expect("client1 gets the notice");
    let got2 = d2
        .next_envelope(WAIT)
        .await
        .expect("client2 gets the notice");
    let got3 = d3
        .next_envelope(WAIT)
        .await
        .expect("client3, not assigned to the sender, gets the notice");
    assert_eq!(got1.header.kind, EnvelopeKind::Notice);
    assert_eq!(got2.header.kind, EnvelopeKind::Notice);
    assert_eq!(got3.header.kind, EnvelopeKind::Notice);
    // Only the notice to all clients reaches an unassigned client: chat is refused, and
    // so is a notice addressed to client3 alone.
    let chat = seal_kind(sender, &mut s3, d3.id(), EnvelopeKind::Chat, b"hello");
    let (code, message) = refusal(send(sender, chat).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("not assigned"), "{message}");
    let single = SignedNotice::sign(
        NoticeHeader::new(
            NoticeCategory::General,
            NoticeAudience::Client(c3.clone()),
            b"hi",
            now_ms(),
            org.staff[0].signer(),
            1,
            &mut org.rng,
        ),
        &org.staff[0].keys,
    )
    .unwrap();
    let env = seal_kind(sender, &mut s3, d3.id(), EnvelopeKind::Notice, b"hi");
    let (code, message) = refusal(sender.conn.send_notice(env, single).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("not assigned"), "{message}");
    // "All clients" does not include another staff account's devices.
    let mut sb = sender.session_with(bob).await;
    let env = seal_kind(sender, &mut sb, bob.id(), EnvelopeKind::Notice, b"maint");
    let (code, message) = refusal(sender.conn.send_notice(env, good).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("audience"), "{message}");
}

/// The arrival rule: approvals valid at the date their object was signed (which its
/// signers choose) must also be unexpired by the relay's clock when the operation
/// arrives; otherwise an approved notice could be sent again, or an approved roster
/// version or unfreeze carried out, long after the approvers' consent lapsed.
#[tokio::test]
async fn approvals_must_be_unexpired_when_the_operation_reaches_the_relay() {
    let (mut org, relay, mut staff) = org_relay(57).await;
    let c1 = relay.account("client1", Role::Client).await;
    let ops = org.staff[0].account.clone();
    relay.assign(&c1, &ops).await;
    let d1 = relay
        .device_with(
            &c1,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(58)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(58),
        )
        .await;
    let chain = sealpost_protocol::trust::RosterChain::verify(
        &org.fingerprint(),
        vec![org.v1.clone()],
        None,
        now_ms(),
    )
    .unwrap();

    // A high-risk notice dated two hours ago, co-signed by a quorum whose request expired
    // an hour ago: valid at its date (what a client checks), expired on arrival.
    let header = NoticeHeader::new(
        NoticeCategory::PaymentInstruction,
        NoticeAudience::Client(c1.clone()),
        b"pay to the new account",
        now_ms() - 2 * HOUR,
        org.staff[0].signer(),
        1,
        &mut org.rng,
    );
    let base = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    let digest = base.header.digest().0.to_vec();
    let mut replayed = base.clone();
    replayed
        .add_cosignatures(org.bundle_expiring(
            Operation::HighRiskNotice,
            digest.clone(),
            1,
            0,
            &[1, 2],
            now_ms() - HOUR,
        ))
        .unwrap();
    replayed.verify_header(&chain, None, now_ms()).unwrap();
    let sender = &mut staff[0];
    let mut s1 = sender.session_with(&d1).await;
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"pay");
    let (code, message) = refusal(sender.conn.send_notice(env, replayed).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("high_risk_notice approvals expired")
            && message.contains("before the operation reached the relay"),
        "{message}"
    );
    assert!(d1.next_envelope(Duration::from_millis(300)).await.is_none());
    // The same notice with approvals still valid goes through.
    let mut fresh = base;
    fresh
        .add_cosignatures(org.bundle(Operation::HighRiskNotice, digest, 1, 0, &[1, 2]))
        .unwrap();
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"pay");
    sender.conn.send_notice(env, fresh).await.unwrap();
    assert!(d1.next_envelope(WAIT).await.is_some());

    // An unfreeze approved two hours ago whose approvals expired an hour ago.
    let log = d1.conn.get_device_log(&c1).await.unwrap();
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms() - 3 * HOUR, DeviceAction::Freeze, "this wasn't me"),
        &d1.identity,
        None,
    );
    d1.conn.append_device_log(freeze).await.unwrap();
    let log = d1.conn.get_device_log(&c1).await.unwrap();
    let body = log.next_body(now_ms() - 2 * HOUR, DeviceAction::Unfreeze, "checked");
    let late = org.bundle_expiring(
        Operation::Unfreeze,
        body.hash().0.to_vec(),
        1,
        0,
        &[1, 2],
        now_ms() - HOUR,
    );
    let (code, message) = refusal(
        staff[0]
            .conn
            .append_device_log(LogEntry::with_quorum(body.clone(), late, None))
            .await,
    );
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("unfreeze approvals expired"), "{message}");
    assert!(
        relay
            .relay
            .store
            .account(&c1)
            .await
            .unwrap()
            .unwrap()
            .frozen
    );
    let ok = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[1, 2]);
    staff[0]
        .conn
        .append_device_log(LogEntry::with_quorum(body, ok, None))
        .await
        .unwrap();
    assert!(
        !relay
            .relay
            .store
            .account(&c1)
            .await
            .unwrap()
            .unwrap()
            .frozen
    );

    // A roster version approved two hours ago, published after its approvals expired.
    let members: Vec<StaffMember> = org.staff.iter().map(Staff::member).collect();
    let v2 = org
        .v1
        .roster
        .next(now_ms() - 2 * HOUR, members, ApprovalPolicy::default())
        .unwrap();
    let hash = v2.hash().0.to_vec();
    let late = org.bundle_expiring(
        Operation::RosterChange,
        hash.clone(),
        1,
        0,
        &[1, 2],
        now_ms() - HOUR,
    );
    let stale = SignedRoster::with_quorum(v2.clone(), late);
    // Valid in a chain (what clients check, at `issued_ms`), refused on arrival.
    let mut c = chain.clone();
    c.extend(vec![stale.clone()], now_ms()).unwrap();
    let (code, message) = refusal(staff[0].conn.publish_roster(stale).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("roster_change approvals expired"),
        "{message}"
    );
    assert_eq!(staff[0].conn.get_roster_after(0).await.unwrap().1, 1);
    let good = org.bundle(Operation::RosterChange, hash, 1, 0, &[1, 2]);
    staff[0]
        .conn
        .publish_roster(SignedRoster::with_quorum(v2, good))
        .await
        .unwrap();
    assert_eq!(staff[0].conn.get_roster_after(0).await.unwrap().1, 2);
}

/// Authenticate `keys` on a new connection and publish prekeys.
async fn authenticated<S: Store>(
    relay: &TestRelay<S>,
    account: &AccountId,
    keys: IdentityKeyPair,
    mut rng: StdRng,
) -> TestDevice {
    let conn = relay.connect().await;
    conn.authenticate(&keys).await.unwrap();
    let mut prekeys = PreKeySecrets::new();
    let spk = prekeys.rotate_signed(&keys, &mut rng);
    let otk = prekeys.generate_one_time(&keys, 5, &mut rng);
    let last = prekeys.rotate_kem_last_resort(&keys, &mut rng);
    conn.upload_prekeys(Some(spk), otk, vec![], Some(last))
        .await
        .unwrap();
    TestDevice {
        account: account.clone(),
        identity: keys,
        prekeys,
        conn,
        rng,
    }
}

/// Recovery at the relay: handed over on the link it was offered on (`link_authorize`),
/// refused with no approvals, with one approval of the two the roster needs, and with
/// approvals that expired before it arrived; never appended with `append_device_log`;
/// appended only when the recovered device completes it (`link_complete`), so the old
/// devices stay until then. The recovered device's cooling-off runs from the approvals'
/// expiry, not from the entry's date (which the initiator chose two days earlier), so the
/// relay refuses its sensitive kinds for a full cooling-off after the last moment the
/// entry could have been appended.
#[tokio::test]
async fn recovery_needs_the_quorum_at_the_relay_and_cools_off_from_the_approvals_expiry() {
    let (mut org, relay, staff) = org_relay(35).await;
    let client = relay.account("client3", Role::Client).await;
    relay.assign(&client, &org.staff[0].account).await;
    let lost = relay
        .device_with(
            &client,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(36)),
            now_ms() - 3 * DAY,
            StdRng::seed_from_u64(36),
        )
        .await;
    let lost_id = lost.id();
    let log = lost.conn.get_device_log(&client).await.unwrap();
    drop(lost);
    let new_keys = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(37));
    let body = log.next_body(
        now_ms() - 2 * DAY,
        DeviceAction::Recover {
            identity: new_keys.public().clone(),
        },
        "lost phone, passport checked",
    );
    let n = relay.connect().await;
    let (link_id, _) = n
        .link_start(&new_keys, &client, link_commitment(&client, &new_keys))
        .await
        .unwrap();
    let challenge = LinkChallenge([3; 16]);
    staff[0]
        .conn
        .link_offer(link_id, challenge, body.clone())
        .await
        .unwrap();
    n.link_sign(link_id, body.sign(&new_keys), LINK_NONCE)
        .await
        .unwrap();
    let params = body.hash().0.to_vec();
    for (approvers, got) in [(&[][..], 0), (&[1][..], 1)] {
        let b = org.bundle(Operation::AccountRecovery, params.clone(), 1, 0, approvers);
        let entry = LogEntry::with_quorum(body.clone(), b, Some(&new_keys));
        let (code, message) = refusal(staff[0].conn.link_authorize(link_id, entry).await);
        assert_eq!(code, ErrorCode::Forbidden);
        assert!(
            message.contains(&format!("account_recovery needs 2 approvals, got {got}")),
            "{message}"
        );
    }
    let expired = org.bundle_expiring(
        Operation::AccountRecovery,
        params.clone(),
        1,
        0,
        &[1, 2],
        now_ms() - HOUR,
    );
    let entry = LogEntry::with_quorum(body.clone(), expired, Some(&new_keys));
    let (code, message) = refusal(staff[0].conn.link_authorize(link_id, entry).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("account_recovery approvals expired"),
        "{message}"
    );
    // Nothing authorised, nothing to complete.
    assert_eq!(
        refused(n.link_complete(&new_keys, link_id).await),
        ErrorCode::Conflict
    );

    // The quorum, valid for another hour. Appending it directly is refused: a recovery
    // revokes every other device, so only the recovered device completes it.
    let expires = now_ms() + HOUR;
    let b = org.bundle_expiring(Operation::AccountRecovery, params, 1, 0, &[1, 2], expires);
    let entry = LogEntry::with_quorum(body, b, Some(&new_keys));
    let (code, message) = refusal(staff[0].conn.append_device_log(entry.clone()).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("link_authorize"), "{message}");
    // Only staff authorise; another entry than the one offered is refused.
    let mut other = entry.clone();
    other.body.reason = BoundedString::truncating("something else");
    assert_eq!(
        refused(staff[0].conn.link_authorize(link_id, other).await),
        ErrorCode::Forbidden
    );
    staff[0].conn.link_authorize(link_id, entry).await.unwrap();
    // Authorised, not appended: the old device is still the account's device.
    assert_eq!(relay.relay.store.device_log_len(&client).await.unwrap(), 1);
    let c = relay.connect().await;
    assert_eq!(
        refused(c.authenticate(&new_keys).await),
        ErrorCode::AuthFailed
    );
    let state = n.link_poll(link_id).await.unwrap();
    assert!(state.ready && !state.completed);
    // Only the recovered device completes it, on its own connection.
    let other_keys = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(39));
    assert_eq!(
        refused(
            relay
                .connect()
                .await
                .link_complete(&other_keys, link_id)
                .await
        ),
        ErrorCode::AuthFailed
    );
    n.link_complete(&new_keys, link_id).await.unwrap();
    assert_eq!(relay.relay.store.device_log_len(&client).await.unwrap(), 2);
    let c = relay.connect().await;
    assert_eq!(
        refused(
            c.authenticate(&IdentityKeyPair::generate(&mut StdRng::seed_from_u64(36)))
                .await
        ),
        ErrorCode::AuthFailed,
        "the lost device {lost_id} is revoked"
    );
    let mut recovered = authenticated(&relay, &client, new_keys, StdRng::seed_from_u64(38)).await;
    let chain = sealpost_protocol::trust::RosterChain::verify(
        &org.fingerprint(),
        vec![org.v1.clone()],
        None,
        now_ms(),
    )
    .unwrap();
    let set = recovered
        .conn
        .get_device_log(&client)
        .await
        .unwrap()
        .verify(Some(&chain), None, now_ms())
        .unwrap();
    let d = set.device(&recovered.id()).unwrap();
    assert_eq!(d.probation_until_ms, expires + DAY);
    assert!(d.on_probation, "dated two days ago, yet still cooling off");
    // The relay refuses its sensitive kinds; chat is fine.
    let mut s = recovered.session_with(&staff[0]).await;
    let to = staff[0].id();
    let env = seal_kind(
        &mut recovered,
        &mut s,
        to,
        EnvelopeKind::Approval,
        b"approve",
    );
    let (code, message) = refusal(send(&recovered, env).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("probation"), "{message}");
    let env = seal_kind(
        &mut recovered,
        &mut s,
        to,
        EnvelopeKind::Chat,
        b"hello again",
    );
    assert!(matches!(
        send(&recovered, env).await.unwrap(),
        FrameBody::Accepted { .. }
    ));
}

// ---------------------------------------------------------------------------------------
// Roster chain

#[tokio::test]
async fn roster_forgery_rollback_and_forks_are_refused_and_the_chain_survives_restarts() {
    let mut org = Org::new(60);
    let fp = org.fingerprint();
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |c| {
        c.org_fingerprint = Some(fp);
        lenient(c);
    })
    .await;
    let staff = org.enrol_staff(&relay).await;
    let client = relay.account("client1", Role::Client).await;
    let cdev = relay
        .device_with(
            &client,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(61)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(61),
        )
        .await;
    assert_eq!(cdev.conn.get_roster_after(0).await.unwrap(), (vec![], 0));

    // Clients do not publish; a version 1 under another root is refused.
    assert_eq!(
        refused(cdev.conn.publish_roster(org.v1.clone()).await),
        ErrorCode::Forbidden
    );
    let other_root = OrgRoot::generate(&mut org.rng);
    let fake_v1 = other_root.sign_genesis(org.v1.roster.clone()).unwrap();
    assert_eq!(
        refused(staff[0].conn.publish_roster(fake_v1).await),
        ErrorCode::Forbidden
    );
    staff[0].conn.publish_roster(org.v1.clone()).await.unwrap();
    // Publishing the same version again is a harmless retry.
    staff[1].conn.publish_roster(org.v1.clone()).await.unwrap();

    // Version 2 drops the advisor. Forged: too few approvals, approvals for other
    // content, or signed by the root instead of the quorum.
    let members: Vec<StaffMember> = org.staff[..3].iter().map(Staff::member).collect();
    let v2 = org
        .v1
        .roster
        .next(org.issued_ms + DAY, members, ApprovalPolicy::default())
        .unwrap();
    let hash = v2.hash().0.to_vec();
    let weak = org.bundle(Operation::RosterChange, hash.clone(), 1, 0, &[1]);
    let (code, message) = refusal(
        staff[0]
            .conn
            .publish_roster(SignedRoster::with_quorum(v2.clone(), weak))
            .await,
    );
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("roster refused"), "{message}");
    let elsewhere = org.bundle(Operation::RosterChange, vec![7; 32], 1, 0, &[1, 2]);
    assert_eq!(
        refused(
            staff[0]
                .conn
                .publish_roster(SignedRoster::with_quorum(v2.clone(), elsewhere))
                .await
        ),
        ErrorCode::Forbidden
    );
    let wrong_role = org.bundle(Operation::RosterChange, hash.clone(), 1, 1, &[3, 0]);
    let (code, message) = refusal(
        staff[0]
            .conn
            .publish_roster(SignedRoster::with_quorum(v2.clone(), wrong_role))
            .await,
    );
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("adv.dave is advisor, which the policy does not accept"),
        "{message}"
    );
    // A version that skips ahead.
    let v3_alone = v2
        .next(
            org.issued_ms + DAY,
            org.staff[..3].iter().map(Staff::member).collect(),
            ApprovalPolicy::default(),
        )
        .unwrap();
    let b = org.bundle(
        Operation::RosterChange,
        v3_alone.hash().0.to_vec(),
        2,
        0,
        &[1, 2],
    );
    assert_eq!(
        refused(
            staff[0]
                .conn
                .publish_roster(SignedRoster::with_quorum(v3_alone, b))
                .await
        ),
        ErrorCode::Conflict
    );
    // The quorum (security and compliance besides the initiator) publishes version 2.
    let good = org.bundle(Operation::RosterChange, hash, 1, 0, &[1, 2]);
    let signed_v2 = SignedRoster::with_quorum(v2, good);
    staff[0]
        .conn
        .publish_roster(signed_v2.clone())
        .await
        .unwrap();
    // Another version 2 (a fork), or version 1 again with other content (a rollback),
    // are refused.
    let fork = org
        .v1
        .roster
        .next(
            org.issued_ms + DAY,
            org.staff.iter().map(Staff::member).collect(),
            ApprovalPolicy::default(),
        )
        .unwrap();
    let fb = org.bundle(
        Operation::RosterChange,
        fork.hash().0.to_vec(),
        1,
        0,
        &[1, 2],
    );
    assert_eq!(
        refused(
            staff[0]
                .conn
                .publish_roster(SignedRoster::with_quorum(fork, fb))
                .await
        ),
        ErrorCode::Conflict
    );
    let older = Roster::new(
        1,
        None,
        org.issued_ms - DAY,
        org.staff.iter().map(Staff::member).collect(),
        ApprovalPolicy::default(),
    )
    .unwrap();
    let rollback = org.root.sign_genesis(older).unwrap();
    assert_eq!(
        refused(staff[0].conn.publish_roster(rollback).await),
        ErrorCode::Conflict
    );

    // What the relay serves verifies from the pin.
    let (links, latest) = cdev.conn.get_roster_after(0).await.unwrap();
    assert_eq!(latest, 2);
    assert_eq!(links, vec![org.v1.clone(), signed_v2.clone()]);
    sealpost_protocol::trust::RosterChain::verify(&fp, links, None, now_ms()).unwrap();
    let (after_one, _) = cdev.conn.get_roster_after(1).await.unwrap();
    assert_eq!(after_one, vec![signed_v2.clone()]);

    // An acknowledged device-log append survives a restart too.
    let linked = link_device(&relay, &cdev, 62).await;
    // link_device derives the new device's keys from its seed (first draw).
    let linked_keys = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(62));
    assert_eq!(linked_keys.device_id(), linked.id());
    drop(linked);
    drop(staff);
    drop(cdev);
    let dir = relay.stop().await;

    let relay = sqlite_relay_in(dir, |c| {
        c.org_fingerprint = Some(fp);
        lenient(c);
    })
    .await;
    let c = relay.connect().await;
    assert_eq!(c.authenticate(&linked_keys).await.unwrap().0, client);
    assert_eq!(c.get_roster_after(0).await.unwrap().1, 2);
    let log = c.get_device_log(&client).await.unwrap();
    assert_eq!(log.entries.as_slice().len(), 2);
    drop(c);
    let dir = relay.stop().await;

    // Restarted with another organisation's fingerprint, the stored chain does not
    // verify: the relay refuses to start.
    let mut config = sealpost_server::config::Config::for_tests(dir.path());
    config.backend = sealpost_server::config::Backend::Sqlite;
    config.org_fingerprint = Some(other_root.public().fingerprint());
    let store =
        sealpost_server::store::sqlite::SqliteStore::open(&config.data_dir.join("relay.sqlite3"))
            .unwrap();
    let server = sealpost_server::Server::bind(config, store).unwrap();
    let result = tokio::time::timeout(WAIT, server.run(std::future::pending()))
        .await
        .expect("run returns at once");
    match result {
        Err(sealpost_server::ServerError::Trust(message)) => {
            assert!(message.contains("does not verify"), "{message}");
        }
        other => panic!("expected a trust error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Roster changes while other operations are pending

/// The roster chain the relay serves, verified from the pin as a client would.
async fn served_chain(org: &Org, dev: &TestDevice) -> sealpost_protocol::trust::RosterChain {
    let (links, _) = dev.conn.get_roster_after(0).await.unwrap();
    sealpost_protocol::trust::RosterChain::verify(&org.fingerprint(), links, None, now_ms())
        .unwrap()
}

/// A roster change is dated when it is proposed and published only once its quorum
/// approves. Meanwhile an account is unfrozen under the old version: that entry must stay
/// valid after the new version is published, or the account's append-only log would never
/// verify again (its devices locked out at the relay, its peers refusing it). Once the new
/// version is published, the relay refuses new objects under the old one with `conflict`.
#[tokio::test]
async fn an_unfreeze_approved_while_a_roster_change_was_pending_survives_its_publication() {
    const MIN: u64 = 60 * 1000;
    let (mut org, relay, mut staff) = org_relay(70).await;
    let client = relay.account("client7", Role::Client).await;
    relay.assign(&client, &org.staff[0].account).await;
    let mut phone = relay
        .device_with(
            &client,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(71)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(71),
        )
        .await;

    // Two hours ago staff proposed v2 (issued_ms = the proposal time).
    let members: Vec<StaffMember> = org.staff.iter().map(Staff::member).collect();
    let v2 = org
        .v1
        .roster
        .next(now_ms() - 2 * HOUR, members, ApprovalPolicy::default())
        .unwrap();
    // 100 minutes ago the client froze its account ("this wasn't me"); 90 minutes ago
    // staff unfroze it under v1, the head at the time.
    let log = phone.conn.get_device_log(&client).await.unwrap();
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms() - 100 * MIN, DeviceAction::Freeze, "this wasn't me"),
        &phone.identity,
        None,
    );
    phone.conn.append_device_log(freeze).await.unwrap();
    let log = phone.conn.get_device_log(&client).await.unwrap();
    let body = log.next_body(now_ms() - 90 * MIN, DeviceAction::Unfreeze, "checked");
    let quorum = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[1, 2]);
    staff[0]
        .conn
        .append_device_log(LogEntry::with_quorum(body, quorum, None))
        .await
        .unwrap();
    // Now v2's approvals are complete (its request expires in two hours) and it is
    // published.
    let b2 = org.bundle_expiring(
        Operation::RosterChange,
        v2.hash().0.to_vec(),
        1,
        0,
        &[1, 2],
        now_ms() + 2 * HOUR,
    );
    staff[0]
        .conn
        .publish_roster(SignedRoster::with_quorum(v2, b2))
        .await
        .unwrap();
    let chain = served_chain(&org, &staff[0]).await;
    assert_eq!(chain.head().version(), 2);

    // The account still works at the relay: its device authenticates on a new
    // connection and may send sensitive kinds (unfrozen).
    phone.reconnect(&relay).await;
    let mut s = phone.session_with(&staff[0]).await;
    let to = staff[0].id();
    let env = seal_kind(&mut phone, &mut s, to, EnvelopeKind::Instruction, b"sell");
    assert!(matches!(
        send(&phone, env).await.unwrap(),
        FrameBody::Accepted { .. }
    ));
    // And its peers still verify its log from the pinned root, now and much later.
    let log = staff[0].conn.get_device_log(&client).await.unwrap();
    let set = log.verify(Some(&chain), None, now_ms()).unwrap();
    assert!(!set.frozen);
    assert!(set.device(&phone.id()).is_some());
    assert!(log.verify(Some(&chain), None, now_ms() + 60 * DAY).is_ok());

    // From now on, new objects under v1 are refused with a conflict that says what to do.
    let log = phone.conn.get_device_log(&client).await.unwrap();
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms(), DeviceAction::Freeze, "again"),
        &phone.identity,
        None,
    );
    phone.conn.append_device_log(freeze).await.unwrap();
    let log = phone.conn.get_device_log(&client).await.unwrap();
    let body = log.next_body(now_ms(), DeviceAction::Unfreeze, "checked again");
    let under_v1 = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[1, 2]);
    let (code, message) = refusal(
        staff[0]
            .conn
            .append_device_log(LogEntry::with_quorum(body.clone(), under_v1, None))
            .await,
    );
    assert_eq!(code, ErrorCode::Conflict);
    assert!(
        message.contains("roster version 1")
            && message.contains("current roster is version 2")
            && message.contains("refresh the roster"),
        "{message}"
    );
    let header = NoticeHeader::new(
        NoticeCategory::General,
        NoticeAudience::Client(client.clone()),
        b"statement ready",
        now_ms(),
        org.staff[0].signer(),
        1,
        &mut org.rng,
    );
    let old_notice = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    let sender = &mut staff[0];
    let mut sp = sender.session_with(&phone).await;
    let env = seal_kind(sender, &mut sp, phone.id(), EnvelopeKind::Notice, b"stmt");
    let (code, message) = refusal(sender.conn.send_notice(env, old_notice).await);
    assert_eq!(code, ErrorCode::Conflict);
    assert!(message.contains("refresh the roster"), "{message}");
    // Under v2 both go through.
    let under_v2 = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 2, 0, &[1, 2]);
    staff[0]
        .conn
        .append_device_log(LogEntry::with_quorum(body, under_v2, None))
        .await
        .unwrap();
    let header = NoticeHeader::new(
        NoticeCategory::General,
        NoticeAudience::Client(client.clone()),
        b"statement ready",
        now_ms(),
        org.staff[0].signer(),
        2,
        &mut org.rng,
    );
    let notice = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    let sender = &mut staff[0];
    let env = seal_kind(sender, &mut sp, phone.id(), EnvelopeKind::Notice, b"stmt");
    sender.conn.send_notice(env, notice).await.unwrap();
    let log = staff[1].conn.get_device_log(&client).await.unwrap();
    assert!(!log.verify(Some(&chain), None, now_ms()).unwrap().frozen);
}

// ---------------------------------------------------------------------------------------
// Staff devices removed from their own accounts

/// The roster is the authority on who may approve (clients check it alone), but the
/// relay also refuses approvals from a staff device revoked in its own account's device
/// log, or from a frozen staff account: defence in depth until the roster changes.
#[tokio::test]
async fn approvals_from_a_revoked_or_frozen_staff_device_do_not_count_at_the_relay() {
    let (mut org, relay, mut staff) = org_relay(75).await;
    let client = relay.account("client8", Role::Client).await;
    relay.assign(&client, &org.staff[0].account).await;
    let phone = relay
        .device_with(
            &client,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(76)),
            now_ms() - 2 * DAY,
            StdRng::seed_from_u64(76),
        )
        .await;
    let log = phone.conn.get_device_log(&client).await.unwrap();
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms(), DeviceAction::Freeze, "this wasn't me"),
        &phone.identity,
        None,
    );
    phone.conn.append_device_log(freeze).await.unwrap();
    let sender = &mut staff[0];
    let mut sp = sender.session_with(&phone).await;

    // sec.bob's phone is stolen: he revokes it in his own account's log (the roster
    // change that removes it has not been approved yet).
    let bob = &staff[1];
    let bob_account = org.staff[1].account.clone();
    let log = bob.conn.get_device_log(&bob_account).await.unwrap();
    let remove = LogEntry::signed_by_device(
        log.next_body(
            now_ms(),
            DeviceAction::Remove { device: bob.id() },
            "phone stolen",
        ),
        &bob.identity,
        None,
    );
    bob.conn.append_device_log(remove).await.unwrap();

    // An unfreeze approved by the stolen device and comp.carol: refused, nothing changes.
    let log = phone.conn.get_device_log(&client).await.unwrap();
    let body = log.next_body(now_ms(), DeviceAction::Unfreeze, "checked");
    let with_bob = org.bundle(Operation::Unfreeze, body.hash().0.to_vec(), 1, 0, &[1, 2]);
    let entry = LogEntry::with_quorum(body.clone(), with_bob.clone(), None);
    let (code, message) = refusal(staff[0].conn.append_device_log(entry.clone()).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("unfreeze approver sec.bob")
            && message.contains("revoked in its account's device log"),
        "{message}"
    );
    assert!(
        relay
            .relay
            .store
            .account(&client)
            .await
            .unwrap()
            .unwrap()
            .frozen
    );
    // The roster still lists the device, so the protocol alone (what clients check)
    // would count it: the roster must be changed to remove it (docs/SECURITY.md).
    let chain = served_chain(&org, &staff[0]).await;
    let mut offline = log.clone();
    offline.push(entry).unwrap();
    assert!(!offline.verify(Some(&chain), None, now_ms()).unwrap().frozen);

    // A high-risk notice co-signed by the stolen device: refused as well.
    let header = NoticeHeader::new(
        NoticeCategory::PaymentInstruction,
        NoticeAudience::Client(client.clone()),
        b"pay to the new account",
        now_ms(),
        org.staff[0].signer(),
        1,
        &mut org.rng,
    );
    let mut notice = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    notice
        .add_cosignatures(org.bundle(
            Operation::HighRiskNotice,
            notice.header.digest().0.to_vec(),
            1,
            0,
            &[1, 2],
        ))
        .unwrap();
    let sender = &mut staff[0];
    let env = seal_kind(sender, &mut sp, phone.id(), EnvelopeKind::Notice, b"pay");
    let (code, message) = refusal(sender.conn.send_notice(env, notice).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("revoked"), "{message}");
    assert!(phone
        .next_envelope(Duration::from_millis(300))
        .await
        .is_none());

    // comp.carol freezes her own account: her approvals stop counting too.
    let carol = &staff[2];
    let carol_account = org.staff[2].account.clone();
    let log = carol.conn.get_device_log(&carol_account).await.unwrap();
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms(), DeviceAction::Freeze, "this wasn't me"),
        &carol.identity,
        None,
    );
    carol.conn.append_device_log(freeze).await.unwrap();
    let header = NoticeHeader::new(
        NoticeCategory::General,
        NoticeAudience::AllClients,
        b"maintenance on Sunday",
        now_ms(),
        org.staff[0].signer(),
        1,
        &mut org.rng,
    );
    let mut all = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    all.add_cosignatures(org.bundle(
        Operation::NoticeToAllClients,
        all.header.digest().0.to_vec(),
        1,
        0,
        &[2],
    ))
    .unwrap();
    let sender = &mut staff[0];
    let env = seal_kind(sender, &mut sp, phone.id(), EnvelopeKind::Notice, b"maint");
    let (code, message) = refusal(sender.conn.send_notice(env, all).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("comp.carol") && message.contains("frozen account"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------
// Segment notices

/// A segment is only a name: nothing signed lists its members. A segment notice therefore
/// needs the all-clients quorum at the relay (and at every client), and like every notice
/// reaches only clients assigned to its sender.
#[tokio::test]
async fn a_segment_notice_needs_the_all_clients_quorum() {
    let (mut org, relay, mut staff) = org_relay(80).await;
    let c1 = relay.account("client1", Role::Client).await;
    let c2 = relay.account("client2", Role::Client).await;
    relay.assign(&c1, &org.staff[0].account).await;
    let d1 = relay.device(&c1, 81).await;
    let d2 = relay.device(&c2, 82).await;
    let segment = NoticeAudience::Segment(sealpost_protocol::wire::BoundedString::truncating(
        "eu-retail",
    ));
    let header = NoticeHeader::new(
        NoticeCategory::General,
        segment,
        b"new fee schedule",
        now_ms(),
        org.staff[0].signer(),
        1,
        &mut org.rng,
    );
    let alone = SignedNotice::sign(header, &org.staff[0].keys).unwrap();
    let sender = &mut staff[0];
    let mut s1 = sender.session_with(&d1).await;

    // The sender cannot fetch the unassigned client's prekeys, so an envelope "for" it
    // is one sealed for client1 with its recipient rewritten (the relay never opens it).
    let for_d2 = |sender: &mut TestDevice, s1: &mut Session| {
        let mut env = seal_kind(sender, s1, d1.id(), EnvelopeKind::Notice, b"fees");
        env.header.recipient = d2.id();
        env
    };

    // Signed by its sender alone: refused for the unassigned client and for the
    // assigned one alike.
    for unassigned in [true, false] {
        let env = if unassigned {
            for_d2(sender, &mut s1)
        } else {
            seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"fees")
        };
        let (code, message) = refusal(sender.conn.send_notice(env, alone.clone()).await);
        assert_eq!(code, ErrorCode::Forbidden);
        assert!(
            message.contains("needs co-signatures for notice_to_all_clients"),
            "{message}"
        );
    }
    assert!(d1.next_envelope(Duration::from_millis(300)).await.is_none());
    assert!(d2.next_envelope(Duration::from_millis(300)).await.is_none());

    // Co-signed by compliance: delivered to the assigned client, still refused for a
    // client not assigned to the sender.
    let mut approved = alone.clone();
    approved
        .add_cosignatures(org.bundle(
            Operation::NoticeToAllClients,
            alone.header.digest().0.to_vec(),
            1,
            0,
            &[2],
        ))
        .unwrap();
    let env = for_d2(sender, &mut s1);
    let (code, message) = refusal(sender.conn.send_notice(env, approved.clone()).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("not assigned"), "{message}");
    assert!(d2.next_envelope(Duration::from_millis(300)).await.is_none());
    let env = seal_kind(sender, &mut s1, d1.id(), EnvelopeKind::Notice, b"fees");
    sender.conn.send_notice(env, approved).await.unwrap();
    assert!(d1.next_envelope(WAIT).await.is_some());
}

/// `list_clients`: every client account (assigned or not, no other role), ascending,
/// `MAX_CLIENTS_PER_FRAME` per page with `more` while further ones follow; staff and
/// advisor devices only; charged to the per-device control-request rate.
#[tokio::test]
async fn list_clients_pages_every_client_for_staff_only_and_is_rate_limited() {
    use sealpost_protocol::wire::MAX_CLIENTS_PER_FRAME;
    let relay = memory_relay(|c| {
        c.limits.control_requests_per_device = sealpost_server::limits::Rate::new(0.01, 6.0);
    })
    .await;
    let n = MAX_CLIENTS_PER_FRAME + 5;
    let mut expected = Vec::with_capacity(n);
    for i in 0..n {
        expected.push(relay.account(&format!("c{i:05}"), Role::Client).await);
    }
    let ops = relay.account("ops", Role::Staff).await;
    let adv = relay.account("adv", Role::Advisor).await;
    let ops_dev = relay.device(&ops, 71).await;
    let adv_dev = relay.device(&adv, 72).await;
    let client_dev = relay.device(&expected[3], 73).await;

    let page = |after: Option<AccountId>| FrameBody::ListClients { after };
    let FrameBody::Clients { clients, more } = ops_dev.conn.request(page(None)).await.unwrap()
    else {
        panic!("not a clients frame")
    };
    assert!(more);
    let first = clients.into_inner();
    assert_eq!(first.len(), MAX_CLIENTS_PER_FRAME);
    let last = first.last().cloned();
    let FrameBody::Clients { clients, more } = ops_dev.conn.request(page(last)).await.unwrap()
    else {
        panic!("not a clients frame")
    };
    assert!(!more);
    let mut all = first;
    all.extend(clients.into_inner());
    assert_eq!(
        all, expected,
        "every client once, in order; no staff or advisor"
    );
    // An advisor device may list them too.
    assert!(matches!(
        adv_dev.conn.request(page(None)).await.unwrap(),
        FrameBody::Clients { .. }
    ));
    // A client device may not.
    let (code, message) = refusal(client_dev.conn.request(page(None)).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("staff and advisor"), "{message}");
    // The control-request rate: enrolment's upload and two pages took three of six.
    let mut limited = false;
    for _ in 0..4 {
        match ops_dev.conn.request(page(None)).await {
            Ok(FrameBody::Clients { .. }) => {}
            Err(NetError::Refused {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(ms),
                ..
            }) => {
                assert!(ms > 0);
                limited = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        limited,
        "list_clients is rate limited like other directory requests"
    );
}
