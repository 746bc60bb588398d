//! Trust end to end over real QUIC, through the client library (docs/PROTOCOL.md §19): a
//! device inserted behind the clients' backs, the staff quorum for notices, roster
//! changes, recovery and unfreezing, refused approvals, cooling-off and freezing, and a
//! roster rollback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use rand::rngs::OsRng;
use sealpost_client::client::Event;
use sealpost_client::net::NetError;
use sealpost_client::{
    ApprovalStatus, Client, ClientError, LinkProgress, NoticeOutcome, NoticeTarget,
};
use sealpost_protocol::content::Content;
use sealpost_protocol::trust::{NoticeCategory, TrustError};
use sealpost_protocol::wire::{BoundedString, ErrorCode, Role};
use sealpost_protocol::IdentityKeyPair;
use sealpost_tests::org::{self, TestOrg};
use sealpost_tests::*;

const QUIET: Duration = Duration::from_secs(3);

/// Receive on every client in turn, `rounds` times; all events per client.
async fn pump(clients: &mut [&mut Client], rounds: usize) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = clients.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, c) in clients.iter_mut().enumerate() {
            out[i].extend(c.receive(true, QUIET).await.unwrap());
        }
    }
    out
}

fn requested(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ApprovalRequested { request } => Some(request.request_id.clone()),
            _ => None,
        })
        .collect()
}

fn refusals(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ApprovalRefused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn completed(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::OperationCompleted { .. }))
}

async fn org_memory_relay(
    homes: &Path,
) -> (
    TestRelay<sealpost_server::store::memory::MemoryStore>,
    TestOrg,
    Vec<Client>,
) {
    let o = TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| c.org_fingerprint = Some(fp)).await;
    let staff = org::staff(&relay, homes, &o, "").await;
    (relay, o, staff)
}

/// Change the roster through the quorum: ops proposes version n+1 with `cooling_off_ms`,
/// comp and sec approve. Returns the new version.
async fn change_roster(staff: &mut [Client], cooling_off_ms: u64) -> u64 {
    let head = staff[0].roster().await.unwrap().unwrap().head().clone();
    let next = head
        .next(
            org::now_ms(),
            head.staff().to_vec(),
            org::quick_policy(cooling_off_ms),
        )
        .unwrap();
    let view = staff[0].propose_roster(next).await.unwrap();
    let [ops, comp, sec] = staff else {
        panic!("three staff")
    };
    let ev = pump(&mut [comp, sec], 1).await;
    assert!(requested(&ev[0]).contains(&view.request_id));
    comp.approve(&view.request_id).await.unwrap();
    sec.approve(&view.request_id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);
    let v = ops.roster().await.unwrap().unwrap().head().version();
    assert_eq!(v, head.version() + 1);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_written_into_the_relay_storage_is_refused_and_reported() {
    let homes = tempfile::tempdir().unwrap();
    let o = TestOrg::new();
    let fp = o.fingerprint();
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |c| {
        c.org_fingerprint = Some(fp)
    })
    .await;
    let alice_id = relay.account("alice", Role::Client).await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    relay.assign(&alice_id, &adv_id).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    let mut adv = org::enrolled(&relay, &homes.path().join("adv"), &adv_id, Some(&o)).await;
    adv.send_text(&alice_id, "welcome").await.unwrap();
    assert_eq!(alice.receive(true, QUIET).await.unwrap().len(), 1);

    // Behind everyone's back: a device row for alice, with keys the attacker holds.
    let dir = relay.stop().await;
    let fake = IdentityKeyPair::generate(&mut OsRng);
    {
        let db = rusqlite::Connection::open(dir.path().join("data").join("relay.sqlite3"))
            .or_else(|_| {
                let p = walk_for(dir.path(), "relay.sqlite3");
                rusqlite::Connection::open(p)
            })
            .unwrap();
        db.execute(
            "INSERT INTO devices (id, account, ed25519, x25519, enrolled_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                fake.device_id().to_hex(),
                alice_id.as_str(),
                fake.public().signing_bytes().to_vec(),
                fake.public().dh_bytes().to_vec(),
                org::now_ms() as i64,
            ],
        )
        .unwrap();
    }
    let relay = sqlite_relay_in(dir, |c| c.org_fingerprint = Some(fp)).await;
    // The relay itself refuses to authenticate a device its account's log does not list
    // (defence in depth); it still lists it in its directory, as a compromised relay would.
    let conn = relay.connect().await;
    match conn.authenticate(&fake).await {
        Err(NetError::Refused {
            code: ErrorCode::AuthFailed,
            ..
        }) => {}
        other => panic!("the inserted device authenticated: {other:?}"),
    }
    for c in [&mut alice, &mut adv] {
        c.relay_override_for_tests(org::relay_info(&relay, Some(&o)));
        c.connect().await.unwrap();
    }
    // The advisor writes to alice: only her real device gets a copy; the fake one is
    // reported, never encrypted to.
    let report = adv.send_text(&alice_id, "your statement").await.unwrap();
    assert_eq!(report.devices, 1, "only the device in alice's log");
    assert!(
        report.events.iter().any(|e| matches!(e, Event::UntrustedDevice { account, device, .. } if account == &alice_id && *device == fake.device_id())),
        "{:?}",
        report.events
    );
    // Alice's own device sees it in her account too.
    let devices = alice.devices().await.unwrap();
    assert_eq!(devices.devices.len(), 1);
    let evs = alice.take_events();
    assert!(
        evs.iter().any(
            |e| matches!(e, Event::UntrustedDevice { device, .. } if *device == fake.device_id())
        ),
        "{evs:?}"
    );
    // And the advisor's client never lists it as one of alice's devices.
    let view = adv.account_devices(&alice_id).await.unwrap();
    assert_eq!(view.devices.len(), 1);
    assert!(view.devices.iter().all(|d| d.device != fake.device_id()));
    let got = alice.receive(true, QUIET).await.unwrap();
    assert!(got
        .iter()
        .any(|e| matches!(e, Event::Message { entry } if entry.body == "your statement")));
}

fn walk_for(dir: &Path, name: &str) -> std::path::PathBuf {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            let found = walk_for(&p, name);
            if found.exists() {
                return found;
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return p;
        }
    }
    dir.join("missing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_risk_notice_goes_out_only_with_the_quorum_and_shows_its_cosigners() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;

    // One staff member alone: a draft, nothing reaches the client.
    let outcome = staff[0]
        .send_signed_notice(
            NoticeCategory::DepositInstruction,
            NoticeTarget::Client(alice_id.clone()),
            "New deposit address",
            "From 1 March deposit to DE89 3704 0044 0532 0130 00",
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("a high-risk notice was sent without co-signers: {outcome:?}")
    };
    assert_eq!(requests.len(), 1);
    let id = requests[0].request_id.clone();
    let got = alice.receive(true, QUIET).await.unwrap();
    assert!(
        !got.iter().any(|e| matches!(e, Event::Notice { .. })),
        "{got:?}"
    );

    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    let ev = pump(&mut [comp, sec], 1).await;
    assert!(requested(&ev[0]).contains(&id) && requested(&ev[1]).contains(&id));
    // The approver sees the content in full before signing.
    let shown = comp.approval(&id).unwrap();
    assert!(shown.summary.contains("DE89 3704"), "{}", shown.summary);
    comp.approve(&id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(!completed(&ev[0]), "one approval of two is not a quorum");
    assert_eq!(ops.approval(&id).unwrap().status, ApprovalStatus::Pending);
    sec.approve(&id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);

    let got = alice.receive(true, QUIET).await.unwrap();
    let status = got
        .iter()
        .find_map(|e| match e {
            Event::Notice { entry } => entry.notice.clone(),
            _ => None,
        })
        .expect("the co-signed notice arrives");
    assert!(status.authenticated, "{}", status.summary);
    assert!(status.high_risk);
    assert_eq!(status.signer.as_ref(), ops.account());
    assert_eq!(status.cosigners.len(), 2, "{:?}", status.cosigners);
    assert!(
        status.summary.contains("co-signed by"),
        "{}",
        status.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roster_changes_only_with_the_quorum_and_bad_approvals_are_refused() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    let head = staff[0].roster().await.unwrap().unwrap().head().clone();
    let next = head
        .next(
            org::now_ms(),
            head.staff().to_vec(),
            org::quick_policy(3_600_000),
        )
        .unwrap();
    let view = staff[0].propose_roster(next).await.unwrap();
    let id = view.request_id.clone();
    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    let ev = pump(&mut [comp, sec], 1).await;
    assert!(requested(&ev[0]).contains(&id));
    let request = comp.approval_record(&id).unwrap().bundle.request.clone();
    let ops_id = ops.account().unwrap().clone();

    // The initiator cannot approve its own request (and would not count if it did: the
    // relay test `the_relay_refuses_bad_approvals_on_a_high_risk_notice` shows the relay
    // refusing such a bundle).
    let own = ops.approve(&id).await;
    assert!(
        own.is_err(),
        "the initiator approved its own request: {own:?}"
    );
    // For other content: comp signs a request that differs in one field.
    let mut other = request.clone();
    other.expires_ms -= 1;
    let forged = comp.sign_approval_for_tests(&other).unwrap();
    comp.send_content_for_tests(
        &ops_id,
        Content::ApprovalResponse {
            request_id: request.request_id,
            approval: Some(Box::new(forged)),
            reason: BoundedString::truncating(""),
        },
    )
    .await
    .unwrap();
    // A valid approval, then the same account again.
    comp.approve(&id).await.unwrap();
    let again = comp.sign_approval_for_tests(&request).unwrap();
    comp.send_content_for_tests(
        &ops_id,
        Content::ApprovalResponse {
            request_id: request.request_id,
            approval: Some(Box::new(again)),
            reason: BoundedString::truncating(""),
        },
    )
    .await
    .unwrap();
    let ev = pump(&mut [ops], 1).await;
    let refused = refusals(&ev[0]);
    assert!(
        refused.iter().any(|r| r.contains("other content")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|r| r.contains("already approved")),
        "{refused:?}"
    );
    assert!(!completed(&ev[0]), "one approver is not the quorum");
    assert_eq!(ops.roster().await.unwrap().unwrap().head().version(), 1);

    // The quorum: sec approves, the roster is published, every client verifies it.
    sec.approve(&id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);
    assert_eq!(alice.roster().await.unwrap().unwrap().head().version(), 2);

    // Wrong role: a notice to all clients takes operations or compliance co-signers;
    // security's approval does not count.
    let outcome = ops
        .send_signed_notice(
            NoticeCategory::General,
            NoticeTarget::AllClients,
            "Maintenance",
            "Sunday 02:00 UTC",
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let nid = requests[0].request_id.clone();
    let ev = pump(&mut [comp, sec], 1).await;
    assert!(requested(&ev[0]).contains(&nid));
    assert!(
        !requested(&ev[1]).contains(&nid),
        "security is not asked for this quorum"
    );
    let nreq = comp.approval_record(&nid).unwrap().bundle.request.clone();
    let wrong_role = sec.sign_approval_for_tests(&nreq).unwrap();
    sec.send_content_for_tests(
        &ops_id,
        Content::ApprovalResponse {
            request_id: nreq.request_id,
            approval: Some(Box::new(wrong_role)),
            reason: BoundedString::truncating(""),
        },
    )
    .await
    .unwrap();
    let ev = pump(&mut [ops], 1).await;
    let refused = refusals(&ev[0]);
    assert!(
        refused.iter().any(|r| r.contains("does not accept")),
        "{refused:?}"
    );
    assert!(!completed(&ev[0]));

    // Expired: a request valid for one second, approved too late.
    ops.set_approval_validity(1_000).unwrap();
    let head = ops.roster().await.unwrap().unwrap().head().clone();
    let next = head
        .next(
            org::now_ms(),
            head.staff().to_vec(),
            org::quick_policy(3_600_000),
        )
        .unwrap();
    let late = ops.propose_roster(next).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let ev = pump(&mut [comp], 1).await;
    assert!(
        !requested(&ev[0]).contains(&late.request_id),
        "an expired request is not offered for approval"
    );
    assert!(
        refusals(&ev[0]).iter().any(|r| r.contains("expired")),
        "{:?}",
        ev[0]
    );
    let _ = &o;
}

fn devices_added(events: &[Event]) -> Vec<sealpost_protocol::identity::DeviceId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::DeviceAdded { device, .. } => Some(*device),
            _ => None,
        })
        .collect()
}

fn freeze_changes(events: &[Event]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::FreezeChanged { frozen, .. } => Some(*frozen),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_freeze_events_are_told_once_and_not_for_ones_own_add() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let phone_home = homes.path().join("phone");
    let mut phone = org::enrolled(&relay, &phone_home, &alice_id, Some(&o)).await;
    org::settle().await;
    let _ = phone.take_events();

    // The phone confirms the tablet: no warning to the phone about the device it added.
    let mut tablet = org::linked(&relay, &mut phone, &homes.path().join("tablet"), Some(&o)).await;
    let ev = phone.take_events();
    assert!(devices_added(&ev).is_empty(), "{ev:?}");
    assert!(
        !ev.iter().any(|e| matches!(e, Event::DevicesChanged { .. })),
        "{ev:?}"
    );
    phone.devices().await.unwrap();
    assert!(devices_added(&phone.take_events()).is_empty());

    // An add the phone did not sign is still told to it (and not to the tablet, which
    // signed it).
    org::settle().await;
    let laptop = org::linked(&relay, &mut tablet, &homes.path().join("laptop"), Some(&o)).await;
    assert!(devices_added(&tablet.take_events()).is_empty());
    phone.devices().await.unwrap();
    assert_eq!(
        devices_added(&phone.take_events()),
        vec![laptop.device_id()]
    );

    // A freeze is told once per change, also across runs: not again on every command
    // while the account stays frozen.
    phone.freeze_account("this wasn't me").await.unwrap();
    let _ = phone.take_events();
    phone.devices().await.unwrap();
    assert!(freeze_changes(&phone.take_events()).is_empty());
    tablet.devices().await.unwrap();
    assert_eq!(freeze_changes(&tablet.take_events()), vec![true]);
    tablet.devices().await.unwrap();
    assert!(freeze_changes(&tablet.take_events()).is_empty());
    drop(phone);
    let mut phone = Client::open(&phone_home, org::PASS).unwrap();
    phone.connect().await.unwrap();
    phone.devices().await.unwrap();
    assert!(freeze_changes(&phone.take_events()).is_empty());
    staff[0].account_devices(&alice_id).await.unwrap();
    assert_eq!(freeze_changes(&staff[0].take_events()), vec![true]);
    staff[0].account_devices(&alice_id).await.unwrap();
    assert!(freeze_changes(&staff[0].take_events()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probation_freeze_and_unfreeze_with_the_quorum() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::settle().await;
    // From now on new devices wait an hour.
    change_roster(&mut staff, 3_600_000).await;
    let mut tablet = org::linked(&relay, &mut phone, &homes.path().join("tablet"), Some(&o)).await;
    let mine = tablet.devices().await.unwrap();
    let t = mine.devices.iter().find(|d| d.this_device).unwrap();
    assert!(t.on_probation);
    // The assigned staff member is told at once.
    let ev = pump(&mut [&mut staff[0]], 1).await;
    let _ = ev;
    let staff_view = staff[0].account_devices(&alice_id).await.unwrap();
    assert_eq!(staff_view.devices.len(), 2);
    // A device on probation cannot change the account.
    match tablet.freeze_account("test").await {
        Err(ClientError::OnProbation { until_ms, refused }) => {
            assert_eq!(until_ms, t.probation_until_ms);
            assert!(refused.contains("devices"), "{refused}");
        }
        other => panic!("a device on probation froze the account: {other:?}"),
    }
    // "This wasn't me": the phone freezes; the tablet is revoked.
    let after = phone.freeze_account("this wasn't me").await.unwrap();
    assert!(after.frozen);
    assert_eq!(after.devices.len(), 1);
    assert!(after.revoked.contains(&tablet.device_id()));
    let ev = staff[0].receive(true, QUIET).await.unwrap();
    let view = staff[0].account_devices(&alice_id).await.unwrap();
    assert!(view.frozen, "{ev:?}");

    // Unfreeze needs the quorum: ops proposes, one approval is not enough.
    let req = staff[0]
        .propose_unfreeze(&alice_id, "verified by phone call")
        .await
        .unwrap();
    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    let _ = pump(&mut [comp, sec], 1).await;
    comp.approve(&req.request_id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(!completed(&ev[0]));
    assert!(phone.devices().await.unwrap().frozen);
    sec.approve(&req.request_id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);
    assert!(!phone.devices().await.unwrap().frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_needs_the_quorum_and_the_code() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let old = org::enrolled(&relay, &homes.path().join("old"), &alice_id, Some(&o)).await;
    let old_device = old.device_id();
    drop(old); // lost

    let mut new = Client::init(&homes.path().join("new"), org::PASS).unwrap();
    let ticket = new
        .link_start(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
    let links = staff[0].pending_links(Some(&alice_id)).await.unwrap();
    assert_eq!(links.len(), 1);
    staff[0]
        .offer_recovery(
            &alice_id,
            &ticket.link_id,
            "passport checked on video + callback",
        )
        .await
        .unwrap();
    let code = match new.link_progress(Duration::from_secs(10)).await.unwrap() {
        LinkProgress::Offered { code, action } => {
            assert_eq!(action, "recover");
            code
        }
        other => panic!("{other:?}"),
    };
    // A wrong code withdraws the offer.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert!(matches!(
        staff[0]
            .start_recovery(&ticket.link_id, wrong, Duration::from_secs(5))
            .await,
        Err(ClientError::CodeMismatch)
    ));
    staff[0]
        .offer_recovery(
            &alice_id,
            &ticket.link_id,
            "passport checked on video + callback",
        )
        .await
        .unwrap();
    let code = match new.link_progress(Duration::from_secs(10)).await.unwrap() {
        LinkProgress::Offered { code, .. } => code,
        other => panic!("{other:?}"),
    };
    let req = staff[0]
        .start_recovery(&ticket.link_id, &code, Duration::from_secs(10))
        .await
        .unwrap();
    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    let _ = pump(&mut [comp, sec], 1).await;
    assert!(comp
        .approval(&req.request_id)
        .unwrap()
        .summary
        .contains("RECOVER"));
    comp.approve(&req.request_id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(!completed(&ev[0]), "one approval is not enough to recover");
    assert!(matches!(
        new.link_progress(Duration::from_millis(500)).await.unwrap(),
        LinkProgress::Waiting
    ));
    sec.approve(&req.request_id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);
    match new.link_progress(Duration::from_secs(10)).await.unwrap() {
        LinkProgress::Completed { role } => assert_eq!(role, Role::Client),
        other => panic!("{other:?}"),
    }
    let devices = new.devices().await.unwrap();
    assert_eq!(devices.devices.len(), 1);
    assert!(devices.revoked.contains(&old_device));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_rollback_is_refused_by_the_client() {
    let homes = tempfile::tempdir().unwrap();
    let o = TestOrg::new();
    let fp = o.fingerprint();
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |c| {
        c.org_fingerprint = Some(fp)
    })
    .await;
    let mut staff = org::staff(&relay, homes.path(), &o, "").await;
    let alice_id = relay.account("alice", Role::Client).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    change_roster(&mut staff, 60_000).await;
    assert_eq!(alice.roster().await.unwrap().unwrap().head().version(), 2);
    drop(staff);

    // The relay's storage loses version 2 (a restore from an old backup, or an attack).
    let dir = relay.stop().await;
    {
        let db = rusqlite::Connection::open(walk_for(dir.path(), "relay.sqlite3")).unwrap();
        let n = db
            .execute("DELETE FROM roster_versions WHERE version = 2", [])
            .unwrap();
        assert_eq!(n, 1);
    }
    let relay = sqlite_relay_in(dir, |c| c.org_fingerprint = Some(fp)).await;
    alice.relay_override_for_tests(org::relay_info(&relay, Some(&o)));
    // Reconnecting works; the roster it is served is refused as a rollback.
    let r = alice.connect().await;
    let _ = r;
    let err = alice.roster().await.err();
    assert!(
        matches!(
            err,
            Some(ClientError::Trust(TrustError::RosterRollback {
                held: 2,
                got: 1
            }))
        ),
        "{err:?}"
    );
    let evs = alice.take_events();
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::TrustRefused { subject, .. } if subject == "roster")),
        "{evs:?}"
    );
    // The verified head stays at version 2.
    assert_eq!(alice.cached_roster().unwrap().head().version(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_from_another_organisation_is_refused() {
    let homes = tempfile::tempdir().unwrap();
    let real = TestOrg::new();
    let forged = TestOrg::new();
    let fp = forged.fingerprint();
    // The relay is configured with the attacker's organisation and serves its roster.
    let relay = memory_relay(|c| c.org_fingerprint = Some(fp)).await;
    let _attacker_staff = org::staff(&relay, homes.path(), &forged, "").await;
    let alice_id = relay.account("alice", Role::Client).await;
    // Alice pinned the real organisation at enrolment.
    let mut alice = Client::init(&homes.path().join("alice"), org::PASS).unwrap();
    let code = relay.code(&alice_id).await;
    let err = alice
        .enroll(org::relay_info(&relay, Some(&real)), &alice_id, &code)
        .await
        .err();
    assert!(
        matches!(
            err,
            Some(ClientError::Trust(TrustError::RootMismatch { .. }))
        ),
        "{err:?}"
    );
    assert!(alice.cached_roster().is_none());
}
