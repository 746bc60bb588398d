//! Linking and recovery at human speed (docs/PROTOCOL.md §19.4, §19.5), over real QUIC:
//! a new device waits for a person for minutes, longer than the relay's authentication
//! timeout, and finishes on its own, also when it was offline at the moment it was
//! confirmed; a recovery is appended only when the recovered device completes it, so the
//! old devices work until the new one does.
//!
//! The relay's authentication timeout is lowered to 20 s here (from 30 s) and every wait
//! is longer than that: the waits are the real minutes people take (2 and 5 minutes).
//! Waiting is sleeping and polling on the client's own schedule (every 3 s), not busy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sealpost_tests::texts;
use std::time::Duration;

use sealpost_client::client::Event;
use sealpost_client::net::NetError;
use sealpost_client::{Client, ClientError, LinkProgress};
use sealpost_protocol::wire::{ErrorCode, Role};
use sealpost_protocol::IdentityKeyPair;
use sealpost_tests::org::{self, TestOrg, PASS};
use sealpost_tests::*;

/// The relay's authentication timeout in these tests (every wait below is longer).
const AUTH_TIMEOUT_SECS: u64 = 20;
const QUIET: Duration = Duration::from_secs(3);

fn completed(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::OperationCompleted { .. }))
}

/// Receive until `pred` holds for what arrived (bounded: `rounds` drains).
async fn receive_until(
    c: &mut Client,
    rounds: usize,
    pred: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.extend(c.receive(true, QUIET).await.unwrap());
        if pred(&all) {
            break;
        }
    }
    all
}

/// The new device waits `total` for a person, as `sealpost device link` does: calls of
/// at most 30 s, each answering that it is still waiting.
async fn wait_for_person(new: &mut Client, total: Duration) {
    let until = tokio::time::Instant::now() + total;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let r = new.link_progress(left.min(Duration::from_secs(30))).await;
        assert!(
            matches!(r, Ok(LinkProgress::Waiting)),
            "expected the new device to be still waiting, got {r:?}"
        );
    }
}

async fn org_relay(
    homes: &std::path::Path,
) -> (
    TestRelay<sealpost_server::store::memory::MemoryStore>,
    TestOrg,
    Vec<Client>,
) {
    let o = TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| {
        c.org_fingerprint = Some(fp);
        c.limits.auth_timeout_secs = AUTH_TIMEOUT_SECS;
    })
    .await;
    let staff = org::staff(&relay, homes, &o, "").await;
    (relay, o, staff)
}

/// The relay closes a connection that neither authenticates nor waits on a link request
/// after its authentication timeout, and keeps one that waits on an open link request
/// (the request's lifetime bounds it); once the request is gone, the timeout applies
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_keeps_a_connection_waiting_on_a_link_request_past_the_auth_timeout() {
    let relay = memory_relay(|c| c.limits.auth_timeout_secs = AUTH_TIMEOUT_SECS).await;
    let alice = relay.account("alice", Role::Client).await;
    let phone = relay.device(&alice, 1).await;
    let new = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    let idle = relay.connect().await;
    let waiting = relay.connect().await;
    let (link_id, _) = waiting
        .link_start(&new, &alice, link_commitment(&alice, &new))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(AUTH_TIMEOUT_SECS + 8)).await;
    // The idle connection was closed; the waiting one still answers.
    assert!(
        matches!(idle.link_poll(link_id).await, Err(NetError::Connection(_))),
        "an unauthenticated connection without a link request is closed"
    );
    let state = waiting.link_poll(link_id).await.unwrap();
    assert!(!state.completed);
    // A device of the account dismisses the request: the connection is closed at the
    // next expiry of the authentication timeout.
    phone.conn.dismiss_link(link_id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(AUTH_TIMEOUT_SECS + 8)).await;
    assert!(
        matches!(
            waiting.link_poll(link_id).await,
            Err(NetError::Connection(_))
        ),
        "once the request is gone the authentication timeout applies again"
    );
}

/// A link confirmed two minutes after it was started: the new device kept waiting (the
/// relay's authentication timeout is 20 s), becomes a device of the account, and sends
/// and receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_confirmed_two_minutes_after_it_was_started_completes() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_relay(homes.path()).await;
    let ops_id = staff[0].account().unwrap().clone();
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, &ops_id).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;

    let mut laptop = Client::init(&homes.path().join("laptop"), PASS).unwrap();
    let ticket = laptop
        .link_start(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
    assert!(!ticket.resumed);
    // Two minutes pass before the user gets to the phone.
    wait_for_person(&mut laptop, Duration::from_secs(120)).await;
    phone.offer_link(&ticket.link_id).await.unwrap();
    let code = match laptop.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Offered { code, .. } => code,
        other => panic!("expected an offer, got {other:?}"),
    };
    phone
        .confirm_link(&ticket.link_id, &code, Duration::from_secs(30))
        .await
        .unwrap();
    match laptop.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Completed { role } => assert_eq!(role, Role::Client),
        other => panic!("expected completion, got {other:?}"),
    }
    // The laptop works: it sends, and it receives.
    laptop
        .send_text(&ops_id, "hello from the new laptop")
        .await
        .unwrap();
    let got = receive_until(&mut staff[0], 5, |e| !texts(e).is_empty()).await;
    assert_eq!(texts(&got), vec!["hello from the new laptop"]);
    staff[0].send_text(&alice_id, "welcome").await.unwrap();
    let got = receive_until(&mut laptop, 5, |e| !texts(e).is_empty()).await;
    assert_eq!(texts(&got), vec!["welcome"]);
}

/// The new device is offline (its process gone) when the existing device confirms it.
/// When it comes back (`sealpost device link` again), it resumes its request, learns the
/// confirmation and finishes joining, instead of being refused as "already registered".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_confirmed_while_the_new_device_was_offline_completes_when_it_comes_back() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_relay(homes.path()).await;
    let ops_id = staff[0].account().unwrap().clone();
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, &ops_id).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;

    let home = homes.path().join("laptop");
    let mut laptop = Client::init(&home, PASS).unwrap();
    let ticket = laptop
        .link_start(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
    phone.offer_link(&ticket.link_id).await.unwrap();
    let code = match laptop.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Offered { code, .. } => code,
        other => panic!("expected an offer, got {other:?}"),
    };
    // The laptop's process ends (lid closed) right after it showed the code.
    drop(laptop);
    phone
        .confirm_link(&ticket.link_id, &code, Duration::from_secs(30))
        .await
        .unwrap();
    // Later than the relay's authentication timeout, the laptop comes back.
    tokio::time::sleep(Duration::from_secs(AUTH_TIMEOUT_SECS + 5)).await;
    let mut laptop = Client::open(&home, PASS).unwrap();
    assert!(laptop.account().is_none());
    assert_eq!(
        laptop.pending_link().map(|(a, _)| a.clone()),
        Some(alice_id.clone())
    );
    let again = laptop
        .link_start(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
    assert!(again.resumed);
    assert_eq!(again.link_id, ticket.link_id);
    match laptop.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Completed { .. } => {}
        other => panic!("expected completion, got {other:?}"),
    }
    assert_eq!(laptop.account(), Some(&alice_id));
    assert!(laptop.pending_link().is_none());
    laptop.send_text(&ops_id, "back online").await.unwrap();
    let got = receive_until(&mut staff[0], 5, |e| !texts(e).is_empty()).await;
    assert_eq!(texts(&got), vec!["back online"]);

    // The relay forgot the request (it keeps link requests in memory; here the profile
    // lost it): a device whose identity is registered already authenticates instead of
    // being refused.
    let home2 = homes.path().join("tablet");
    let mut tablet = Client::init(&home2, PASS).unwrap();
    let t2 = tablet
        .link_start(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
    phone.offer_link(&t2.link_id).await.unwrap();
    let code = match tablet.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Offered { code, .. } => code,
        other => panic!("expected an offer, got {other:?}"),
    };
    drop(tablet);
    phone
        .confirm_link(&t2.link_id, &code, Duration::from_secs(30))
        .await
        .unwrap();
    let mut tablet = Client::open(&home2, PASS).unwrap();
    // A fresh request: the relay answers that this identity is registered.
    let t3 = tablet
        .link_restart(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
    assert!(t3.resumed);
    match tablet.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Completed { .. } => {}
        other => panic!("expected completion, got {other:?}"),
    }
}

/// A recovery approved five minutes after it was requested (the approvers phone the
/// client): the new device waits all along; the old device keeps working during the wait
/// and after the quorum is reached while the new device is offline; the new device, back
/// online, completes the recovery; only then is the old device revoked, and the new one
/// sends and receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_approved_five_minutes_after_it_was_requested_never_leaves_the_account_deviceless(
) {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_relay(homes.path()).await;
    let ops_id = staff[0].account().unwrap().clone();
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, &ops_id).await;
    // Alice still has her old phone (she reports it as being stolen, say); she gets a
    // new one and asks the firm to recover her account onto it.
    let mut old = org::enrolled(&relay, &homes.path().join("old"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut old).await;
    let old_device = old.device_id();

    let home = homes.path().join("new");
    let mut new = Client::init(&home, PASS).unwrap();
    let ticket = new
        .link_start(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
    staff[0]
        .offer_recovery(&alice_id, &ticket.link_id, "passport checked on video")
        .await
        .unwrap();
    let code = match new.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Offered { code, action } => {
            assert_eq!(action, "recover");
            code
        }
        other => panic!("{other:?}"),
    };
    let req = staff[0]
        .start_recovery(&ticket.link_id, &code, Duration::from_secs(30))
        .await
        .unwrap();
    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    for approver in [&mut *comp, &mut *sec] {
        for _ in 0..5 {
            approver.receive(true, QUIET).await.unwrap();
            if approver.approval(&req.request_id).is_some() {
                break;
            }
        }
    }
    comp.approve_with_code(&req.request_id, Some(&code))
        .await
        .unwrap();
    let ev = receive_until(ops, 3, |e| {
        e.iter()
            .any(|e| matches!(e, Event::ApprovalAnswered { .. }))
    })
    .await;
    assert!(!completed(&ev), "one approval is not enough");

    // The second approver reaches the client by phone only after five minutes. The new
    // device waits all along (longer than the relay's authentication timeout many
    // times); half-way, the old device sends a message as usual.
    wait_for_person(&mut new, Duration::from_secs(150)).await;
    old.send_text(&ops_id, "still using my old phone")
        .await
        .unwrap();
    let got = receive_until(ops, 5, |e| !texts(e).is_empty()).await;
    assert_eq!(texts(&got), vec!["still using my old phone"]);
    wait_for_person(&mut new, Duration::from_secs(150)).await;

    // The new device goes offline just before the quorum is reached.
    drop(new);
    sec.approve_with_code(&req.request_id, Some(&code))
        .await
        .unwrap();
    let ev = receive_until(ops, 5, completed).await;
    assert!(completed(&ev), "{ev:?}");
    // The quorum is reached and handed over, but the new device has not completed it:
    // the old device is still the account's device and works.
    old.send_text(&ops_id, "the new phone is off")
        .await
        .unwrap();
    let got = receive_until(ops, 5, |e| !texts(e).is_empty()).await;
    assert_eq!(texts(&got), vec!["the new phone is off"]);
    let devices = old.devices().await.unwrap();
    assert_eq!(devices.devices.len(), 1);
    assert_eq!(devices.devices[0].device, old_device);

    // The new device comes back (any command, or `device link` again): it completes the
    // recovery and becomes the account's device; the old one is revoked at that moment.
    let mut new = Client::open(&home, PASS).unwrap();
    match new.link_progress(Duration::from_secs(30)).await.unwrap() {
        LinkProgress::Completed { role } => assert_eq!(role, Role::Client),
        other => panic!("expected completion, got {other:?}"),
    }
    let devices = new.devices().await.unwrap();
    assert_eq!(devices.devices.len(), 1);
    assert_eq!(devices.devices[0].device, new.device_id());
    assert!(devices.revoked.contains(&old_device));
    old.disconnect();
    assert!(
        matches!(
            old.connect().await,
            Err(ClientError::Net(NetError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            }))
        ),
        "the old device is revoked once the new one completed"
    );
    // The new device works: it sends and receives.
    new.send_text(&ops_id, "recovered").await.unwrap();
    let got = receive_until(ops, 5, |e| !texts(e).is_empty()).await;
    assert_eq!(texts(&got), vec!["recovered"]);
    ops.send_text(&alice_id, "welcome back").await.unwrap();
    let got = receive_until(&mut new, 5, |e| !texts(e).is_empty()).await;
    assert_eq!(texts(&got), vec!["welcome back"]);
}
