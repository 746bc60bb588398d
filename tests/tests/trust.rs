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

/// As [`org_memory_relay`], with an advisor account `adv` whose one device roster version 1
/// lists (peers trust an advisor's devices only if the roster lists them).
async fn org_memory_relay_adv(
    homes: &Path,
) -> (
    TestRelay<sealpost_server::store::memory::MemoryStore>,
    TestOrg,
    Vec<Client>,
    Client,
) {
    let o = TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| c.org_fingerprint = Some(fp)).await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    let (staff, mut advs) = org::staff_with_advisors(&relay, homes, &o, "", &[&adv_id]).await;
    (relay, o, staff, advs.remove(0))
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
    let (mut staff, mut advs) =
        org::staff_with_advisors(&relay, homes.path(), &o, "", &[&adv_id]).await;
    let mut adv = advs.remove(0);
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut alice).await;
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
    org::attest(&mut staff[0], &mut alice).await;

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
    org::attest(&mut staff[0], &mut alice).await;
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
    match ops.approve(&id).await {
        Err(ClientError::NotAllowed(m)) => assert!(
            m.contains("the initiator's account never approves its own request"),
            "{m}"
        ),
        other => panic!("the initiator approved its own request: {other:?}"),
    }
    // Nor does an approval signed by another device of the initiator's account count
    // when it reaches the initiator's collecting device.
    let mut ops2 = org::linked(&relay, ops, &homes.path().join("ops2"), Some(&o)).await;
    org::settle().await;
    let own_account = ops2.sign_approval_for_tests(&request).unwrap();
    ops2.send_content_for_tests(
        &ops_id,
        Content::ApprovalResponse {
            request_id: request.request_id,
            approval: Some(Box::new(own_account)),
            reason: BoundedString::truncating(""),
        },
    )
    .await
    .unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(
        refusals(&ev[0])
            .iter()
            .any(|r| r.contains("an answer from the initiator's account never counts")),
        "{:?}",
        ev[0]
    );
    assert!(ops.approval(&id).unwrap().approvals.is_empty());
    // The roster does not list ops2: until a roster change does, ops's peers refuse its
    // log (the first-contact rule), so it goes again.
    ops.revoke_device(&ops2.device_id(), "test device")
        .await
        .unwrap();
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
    org::attest(&mut staff[0], &mut phone).await;
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
    let (relay, o, mut staff, mut adv) = org_memory_relay_adv(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let adv_id = adv.account().unwrap().clone();
    relay.assign(&alice_id, &adv_id).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;
    // The advisor and the staff member know alice's devices (they verified her log).
    assert_eq!(
        adv.account_devices(&alice_id).await.unwrap().devices.len(),
        1
    );
    staff[0].account_devices(&alice_id).await.unwrap();
    // From now on new devices wait an hour.
    change_roster(&mut staff, 3_600_000).await;
    let mut tablet = org::linked(&relay, &mut phone, &homes.path().join("tablet"), Some(&o)).await;
    let mine = tablet.devices().await.unwrap();
    let t = mine.devices.iter().find(|d| d.this_device).unwrap();
    assert!(t.on_probation);
    // The advisor assigned to alice, and the staff member, are told at once.
    let ev = pump(&mut [&mut adv, &mut staff[0]], 1).await;
    for (who, events) in ["advisor", "staff"].iter().zip(&ev) {
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::DeviceAdded { account, device, probation_until_ms, .. }
                    // In a peer's eyes probation runs from no earlier than when it
                    // first saw the entry (it had pinned alice's log before): a little
                    // later than the relay's append time the tablet counts from.
                    if account == &alice_id
                        && *device == tablet.device_id()
                        && *probation_until_ms >= t.probation_until_ms
                        && *probation_until_ms <= t.probation_until_ms + 60_000
            )),
            "{who}: {events:?}"
        );
    }
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
    assert_eq!(freeze_changes(&ev), vec![true], "{ev:?}");
    let view = staff[0].account_devices(&alice_id).await.unwrap();
    assert!(view.frozen);

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
    let mut old = org::enrolled(&relay, &homes.path().join("old"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut old).await;
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
    // The new device revealed its nonce with that code: the request cannot be offered on
    // again (a challenge picked knowing the nonce could be ground to match another
    // identity's code). The new device starts a new request.
    assert!(matches!(
        staff[0]
            .offer_recovery(
                &alice_id,
                &ticket.link_id,
                "passport checked on video + callback",
            )
            .await,
        Err(ClientError::Net(NetError::Refused {
            code: ErrorCode::Conflict,
            ..
        }))
    ));
    // (Resuming would pick up the refused request again: a new one is started.)
    let ticket = new
        .link_restart(org::relay_info(&relay, Some(&o)), &alice_id)
        .await
        .unwrap();
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
    // Each approver checks the code with the account holder themselves: no approval
    // without it, or with another code.
    assert!(matches!(
        comp.approve(&req.request_id).await,
        Err(ClientError::NotAllowed(_))
    ));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert!(matches!(
        comp.approve_with_code(&req.request_id, Some(wrong)).await,
        Err(ClientError::CodeMismatch)
    ));
    comp.approve_with_code(&req.request_id, Some(&code))
        .await
        .unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(!completed(&ev[0]), "one approval is not enough to recover");
    assert!(matches!(
        new.link_progress(Duration::from_millis(500)).await.unwrap(),
        LinkProgress::Waiting
    ));
    sec.approve_with_code(&req.request_id, Some(&code))
        .await
        .unwrap();
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
    org::attest(&mut staff[0], &mut alice).await;
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

/// A relay configured with another organisation than the one a device pins: enrolling
/// with it is refused before the code is used, and a device already enrolled (pinned
/// before the relay was reconfigured) refuses the other organisation's roster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_from_another_organisation_is_refused() {
    let homes = tempfile::tempdir().unwrap();
    let real = TestOrg::new();
    let forged = TestOrg::new();
    // Alice enrolled (pinning the real organisation) while the relay had none yet.
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |_| {}).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let bob_id = relay.account("bob", Role::Client).await;
    let mut alice =
        org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&real)).await;
    alice.disconnect();
    // The relay is then configured with the attacker's organisation and serves its roster.
    let dir = relay.stop().await;
    let fp = forged.fingerprint();
    let relay = sqlite_relay_in(dir, |c| c.org_fingerprint = Some(fp)).await;
    let _attacker_staff = org::staff(&relay, homes.path(), &forged, "").await;
    alice.relay_override_for_tests(org::relay_info(&relay, Some(&real)));
    alice.connect().await.unwrap();
    let err = alice.roster().await.err();
    assert!(
        matches!(
            err,
            Some(ClientError::Trust(TrustError::RootMismatch { .. }))
        ),
        "{err:?}"
    );
    assert!(alice.cached_roster().is_none());
    assert!(alice
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::TrustRefused { subject, .. } if subject == "roster")));
    // Bob, enrolling now with the real fingerprint, is refused before his code is used.
    let mut bob = Client::init(&homes.path().join("bob"), org::PASS).unwrap();
    let code = relay.code(&bob_id).await;
    let err = bob
        .enroll(org::relay_info(&relay, Some(&real)), &bob_id, &code)
        .await
        .err();
    assert!(
        matches!(err, Some(ClientError::OrgMismatch { .. })),
        "{err:?}"
    );
    assert!(bob.account().is_none());
    assert!(bob.cached_roster().is_none());
}

fn rejected(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Rejected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// The reasons of refusals raised as alarms (a sensitive kind refused for its sender).
fn alarmed(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Rejected {
                reason,
                alarm: true,
                ..
            } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// The envelope kind in the routing header is what the relay applies its rules to
/// (probation, frozen accounts, `send_notice` for notices); the content must travel under
/// exactly the kind it requires. A probation device's approval relabelled as chat passes
/// the relay and is dropped by the recipient for its sender's probation; a notice
/// relabelled as chat (which skips the relay's notice checks) is refused and reported, never
/// shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_under_another_envelope_kind_is_refused_and_reported() {
    use sealpost_protocol::trust::{NoticeAudience, NoticeHeader, SignedNotice, SignerRef};
    use sealpost_protocol::wire::BoundedVec;
    use sealpost_protocol::EnvelopeKind;
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;
    change_roster(&mut staff, 3_600_000).await;
    let mut tablet = org::linked(&relay, &mut phone, &homes.path().join("tablet"), Some(&o)).await;
    assert!(tablet
        .devices()
        .await
        .unwrap()
        .devices
        .iter()
        .any(|d| d.this_device && d.on_probation));
    let _ = phone.receive(true, QUIET).await.unwrap();

    // Approval content from the device on probation, labelled chat: the relay sees a chat
    // and accepts it; the phone drops it for the sender's probation.
    let approval = Content::ApprovalResponse {
        request_id: [7; 16],
        approval: None,
        reason: BoundedString::truncating("approve the transfer"),
    };
    tablet
        .send_relabelled_for_tests(&alice_id, approval.clone(), EnvelopeKind::Chat)
        .await
        .expect("the relay accepts a chat from a device on probation");
    let got = phone.receive(true, QUIET).await.unwrap();
    let reasons = alarmed(&got);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("on probation") && r.contains("approval")),
        "{got:?}"
    );
    assert!(
        !got.iter()
            .any(|e| matches!(e, Event::ApprovalAnswered { .. })),
        "{got:?}"
    );

    // A notice labelled chat goes through plain `send`, past the relay's notice checks
    // (sender, co-signatures, audience): the client refuses it for its label. (A chat
    // first, so the session does not start with the refused envelope.)
    let ops = &mut staff[0];
    let ops_id = ops.account().unwrap().clone();
    ops.send_text(&alice_id, "hello").await.unwrap();
    let got = phone.receive(true, QUIET).await.unwrap();
    assert!(got
        .iter()
        .any(|e| matches!(e, Event::Message { entry } if entry.body == "hello")));
    let header = NoticeHeader::new(
        NoticeCategory::PaymentInstruction,
        NoticeAudience::Client(alice_id.clone()),
        b"pay to account X",
        org::now_ms(),
        SignerRef::new(ops_id, ops.device_id()),
        2,
        &mut OsRng,
    );
    let notice = SignedNotice {
        header,
        signature: [0; 64],
        cosignatures: BoundedVec::new(Vec::new()).unwrap(),
    };
    ops.send_relabelled_for_tests(
        &alice_id,
        Content::Notice {
            notice: Box::new(notice),
            content: b"pay to account X".to_vec(),
        },
        EnvelopeKind::Chat,
    )
    .await
    .expect("the relay accepts a chat");
    let got = phone.receive(true, QUIET).await.unwrap();
    assert!(
        !got.iter().any(|e| matches!(e, Event::Notice { .. })),
        "a relabelled notice was shown: {got:?}"
    );
    assert!(
        rejected(&got).iter().any(|r| r.contains("labelled chat")
            && r.contains("notice")
            && r.contains("must travel as notice")),
        "{got:?}"
    );
    // Correctly labelled traffic still flows.
    ops.send_text(&alice_id, "hello again").await.unwrap();
    let got = phone.receive(true, QUIET).await.unwrap();
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Message { entry } if entry.body == "hello again")),
        "{got:?}"
    );
}

/// One rogue insider (or anyone able to message the initiator) cannot block a request
/// with rejections: only staff of the request's roster whose role the operation accepts
/// may answer, once per account, and rejections are kept apart from approvals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_cannot_crowd_out_approvals() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut alice).await;
    org::settle().await;
    let ops_id = staff[0].account().unwrap().clone();
    // A notice to all clients: one co-signer from operations or compliance (comp).
    let outcome = staff[0]
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
    let id = requests[0].request_id.clone();
    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    let ev = pump(&mut [comp], 1).await;
    assert!(requested(&ev[0]).contains(&id));
    let request_id = comp.approval_record(&id).unwrap().bundle.request.request_id;
    let no = |why: &str| Content::ApprovalResponse {
        request_id,
        approval: None,
        reason: BoundedString::truncating(why),
    };
    // Security's role does not count for this operation; a client is not staff.
    sec.send_content_for_tests(&ops_id, no("no")).await.unwrap();
    alice
        .send_content_for_tests(&ops_id, no("no"))
        .await
        .unwrap();
    // The eligible co-signer floods rejections (more than MAX_REJECTIONS).
    let flood = sealpost_client::approvals::MAX_REJECTIONS + 6;
    for i in 0..flood {
        comp.send_content_for_tests(&ops_id, no(&format!("no {i}")))
            .await
            .unwrap();
    }
    let ev = pump(&mut [ops], 1).await;
    let refused = refusals(&ev[0]);
    assert!(
        refused
            .iter()
            .any(|r| r.contains("security, which the policy does not accept")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r.contains("alice is not a staff account")),
        "{refused:?}"
    );
    assert_eq!(
        refused
            .iter()
            .filter(|r| r.contains("already rejected this request"))
            .count(),
        flood - 1,
        "one rejection per account"
    );
    let answered: Vec<&Event> = ev[0]
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ApprovalAnswered {
                    approved: false,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(ops.approval(&id).unwrap().responses.len(), 1);
    // comp is the only possible co-signer: its rejection leaves the quorum unreachable.
    assert_eq!(ops.approval(&id).unwrap().status, ApprovalStatus::Rejected);
    // The same co-signer then approves (it changed its mind): it counts, and the notice
    // goes out.
    comp.approve(&id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);
    let got = alice.receive(true, QUIET).await.unwrap();
    assert!(
        got.iter().any(|e| matches!(e, Event::Notice { entry }
            if entry.notice.as_ref().is_some_and(|n| n.authenticated))),
        "{got:?}"
    );

    // `reject_approval`: the approver's decision is recorded and the initiator is told,
    // with the reason; it cannot be approved afterwards, nor rejected twice.
    let outcome = ops
        .send_signed_notice(
            NoticeCategory::General,
            NoticeTarget::AllClients,
            "Second",
            "text",
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let second = requests[0].request_id.clone();
    let _ = pump(&mut [comp], 1).await;
    let view = comp
        .reject_approval(&second, "the text is not approved by compliance")
        .await
        .unwrap();
    assert_eq!(view.status, ApprovalStatus::Rejected);
    assert_eq!(view.detail, "the text is not approved by compliance");
    assert!(matches!(
        comp.approve(&second).await,
        Err(ClientError::Invalid(m)) if m.contains("this request is rejected")
    ));
    assert!(matches!(
        comp.reject_approval(&second, "again").await,
        Err(ClientError::Invalid(_))
    ));
    let ev = pump(&mut [ops], 1).await;
    assert!(
        ev[0].iter().any(
            |e| matches!(e, Event::ApprovalAnswered { approver, approved: false, reason, .. }
            if approver.as_str() == "comp" && reason == "the text is not approved by compliance")
        ),
        "{:?}",
        ev[0]
    );
    let mine = ops.approval(&second).unwrap();
    assert_eq!(mine.status, ApprovalStatus::Rejected);
    assert!(mine.detail.contains("rejected by comp"), "{}", mine.detail);
    assert!(mine.approvals.is_empty());
    assert!(mine
        .responses
        .iter()
        .any(|r| !r.approved && r.approver.as_str() == "comp"));
}

/// An approver device holds at most MAX_PENDING_PER_INITIATOR pending requests from one
/// initiator account; more are refused (and reported) until some are settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_initiator_cannot_fill_an_approvers_requests() {
    use sealpost_client::approvals::MAX_PENDING_PER_INITIATOR;
    let homes = tempfile::tempdir().unwrap();
    let (relay, _o, mut staff) = org_memory_relay(homes.path()).await;
    let _alice = relay.account("alice", Role::Client).await;
    let mut ids = Vec::new();
    for i in 0..=MAX_PENDING_PER_INITIATOR {
        let outcome = staff[0]
            .send_signed_notice(
                NoticeCategory::General,
                NoticeTarget::AllClients,
                &format!("notice {i}"),
                "text",
            )
            .await
            .unwrap();
        let NoticeOutcome::Draft { requests, .. } = outcome else {
            panic!("{outcome:?}")
        };
        ids.push(requests[0].request_id.clone());
    }
    let [_, comp, _] = &mut staff[..] else {
        panic!()
    };
    let ev = pump(&mut [comp], 1).await;
    assert_eq!(requested(&ev[0]).len(), MAX_PENDING_PER_INITIATOR);
    let refused = refusals(&ev[0]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains(&format!(
            "ops already has {MAX_PENDING_PER_INITIATOR} requests pending"
        )),
        "{refused:?}"
    );
    // Settling one makes room for the next.
    comp.reject_approval(&ids[0], "no").await.unwrap();
    let outcome = staff[0]
        .send_signed_notice(
            NoticeCategory::General,
            NoticeTarget::AllClients,
            "one more",
            "text",
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let [_, comp, _] = &mut staff[..] else {
        panic!()
    };
    let ev = pump(&mut [comp], 1).await;
    assert_eq!(requested(&ev[0]), vec![requests[0].request_id.clone()]);
}

/// `device_log_changed` is a push: a device that is offline misses it. On reconnecting, a
/// device asks the relay for the lengths of the logs it is told about (its own account's
/// and, for an advisor, its clients') and verifies again those that moved, so the second
/// device of the account and the assigned advisor, both offline while a device was added
/// and the account frozen, are told when they come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_offline_during_a_device_change_are_told_when_they_reconnect() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff, mut adv) = org_memory_relay_adv(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let adv_id = adv.account().unwrap().clone();
    relay.assign(&alice_id, &adv_id).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    let adv_home = homes.path().join("adv");
    org::settle().await;
    let tablet_home = homes.path().join("tablet");
    let mut tablet = org::linked(&relay, &mut phone, &tablet_home, Some(&o)).await;
    assert_eq!(
        adv.account_devices(&alice_id).await.unwrap().devices.len(),
        2
    );
    tablet.devices().await.unwrap();
    let _ = (adv.take_events(), tablet.take_events());
    // Both go offline (the advisor's process even exits; its state is saved).
    tablet.disconnect();
    adv.persist().unwrap();
    drop(adv);

    org::settle().await;
    let laptop = org::linked(&relay, &mut phone, &homes.path().join("laptop"), Some(&o)).await;
    let added = |events: &[Event]| {
        events.iter().any(|e| {
            matches!(e, Event::DeviceAdded { account, device, .. }
                if account == &alice_id && *device == laptop.device_id())
        })
    };

    tablet.connect().await.unwrap();
    let ev = tablet.receive(true, QUIET).await.unwrap();
    assert!(added(&ev), "the tablet is told: {ev:?}");
    let mut adv = Client::open(&adv_home, org::PASS).unwrap();
    adv.connect().await.unwrap();
    let ev = adv.receive(true, QUIET).await.unwrap();
    assert!(added(&ev), "the advisor is told: {ev:?}");
    // Told once: the next connection has nothing new.
    adv.disconnect();
    adv.connect().await.unwrap();
    assert!(!added(&adv.take_events()));

    // The same for a freeze.
    tablet.disconnect();
    adv.disconnect();
    phone.freeze_account("this wasn't me").await.unwrap();
    tablet.connect().await.unwrap();
    assert_eq!(freeze_changes(&tablet.take_events()), vec![true]);
    adv.connect().await.unwrap();
    assert_eq!(freeze_changes(&adv.take_events()), vec![true]);
}

/// A compromised relay that delivers what it would itself refuse: a high-risk notice
/// signed by a real staff device but co-signed by one approver of the two the roster
/// needs, written straight into the relay's storage. The client verifies it, shows it
/// (never drops it silently) and marks it NOT AUTHENTICATED, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_injected_past_the_relay_is_shown_not_authenticated() {
    use sealpost_server::store::{MailboxStore, Quota};
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[0].account().unwrap()).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut alice).await;
    org::settle().await;
    let (ops, rest) = staff.split_at_mut(1);
    let comp = &rest[0];
    let envelopes = ops[0]
        .seal_notice_for_tests(
            &alice_id,
            NoticeCategory::DepositInstruction,
            "New deposit address",
            "Deposit to IBAN XX00 ATTACKER",
            |req| vec![comp.sign_approval_for_tests(req).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(envelopes.len(), 1);
    // The relay would refuse it; a compromised one stores it anyway.
    for env in &envelopes {
        relay
            .relay
            .store
            .enqueue(
                env,
                org::now_ms() + 3_600_000,
                Quota {
                    max_count: 100,
                    max_bytes: 1 << 20,
                },
            )
            .await
            .unwrap();
    }
    let got = alice.receive(true, QUIET).await.unwrap();
    let entry = got
        .iter()
        .find_map(|e| match e {
            Event::Notice { entry } => Some(entry.clone()),
            _ => None,
        })
        .expect("the notice is shown, not dropped");
    assert_eq!(entry.title.as_deref(), Some("New deposit address"));
    let status = entry.notice.expect("a verdict is recorded");
    assert!(!status.authenticated);
    assert!(status.high_risk);
    assert!(
        status.summary.starts_with("⚠ NOT AUTHENTICATED"),
        "{}",
        status.summary
    );
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("high_risk_notice needs 2 approvals, got 1")),
        "{status:?}"
    );
    assert!(status.cosigners.is_empty() && status.signer.is_none());
    // It stays in the history with its verdict.
    assert!(alice
        .history()
        .any(|h| h.notice.as_ref().is_some_and(|n| !n.authenticated)));
}

/// Revoking a device (library): only an active device past its cooling-off may, not this
/// device itself; the revoked device's connections are closed, it cannot authenticate
/// again, and the account's other devices stop encrypting to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_device_removes_it_from_the_account() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff, mut adv) = org_memory_relay_adv(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;
    // New devices wait an hour from now on, so the tablet is certainly still on probation
    // below however slowly this machine runs.
    change_roster(&mut staff, 3_600_000).await;
    let tablet_home = homes.path().join("tablet");
    let mut tablet = org::linked(&relay, &mut phone, &tablet_home, Some(&o)).await;
    // Not this device itself, not an unknown device, and not from a device on probation.
    assert!(matches!(
        phone.revoke_device(&phone.device_id(), "x").await,
        Err(ClientError::Invalid(_))
    ));
    let stranger = IdentityKeyPair::generate(&mut OsRng).device_id();
    assert!(matches!(
        phone.revoke_device(&stranger, "x").await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        tablet.revoke_device(&phone.device_id(), "x").await,
        Err(ClientError::OnProbation { .. })
    ));
    let after = phone
        .revoke_device(&tablet.device_id(), "sold it")
        .await
        .unwrap();
    assert_eq!(after.devices.len(), 1);
    assert!(after.revoked.contains(&tablet.device_id()));
    // The relay closed the tablet's connection and refuses it from now on.
    let err = tablet.receive(false, QUIET).await.err();
    assert!(matches!(err, Some(ClientError::NotConnected)), "{err:?}");
    let err = tablet.connect().await.err();
    assert!(
        matches!(
            err,
            Some(ClientError::Net(NetError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            }))
        ),
        "{err:?}"
    );
    // A message to alice now goes to the phone only.
    let adv_id = adv.account().unwrap().clone();
    relay.assign(&alice_id, &adv_id).await;
    let report = adv.send_text(&alice_id, "statement").await.unwrap();
    assert_eq!(report.devices, 1);
}

/// Enrolment never trusts the relay for the organisation: a relay that has one refuses
/// to be enrolled with without a fingerprint from the user (before the code is used),
/// and one configured with another organisation than the one given is refused. A device
/// enrolled before its relay had an organisation can pin one later, once, if the relay's
/// roster verifies from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_needs_the_organisation_fingerprint_and_a_device_can_pin_one_later() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, _staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let mut c = Client::init(&homes.path().join("alice"), org::PASS).unwrap();
    let code = relay.code(&alice_id).await;
    let err = c
        .enroll(org::relay_info(&relay, None), &alice_id, &code)
        .await
        .err();
    assert!(
        matches!(&err, Some(ClientError::OrgNotPinned { .. })),
        "{err:?}"
    );
    assert!(err.unwrap().to_string().contains("--org"));
    let other = TestOrg::new();
    let err = c
        .enroll(org::relay_info(&relay, Some(&other)), &alice_id, &code)
        .await
        .err();
    assert!(
        matches!(err, Some(ClientError::OrgMismatch { .. })),
        "{err:?}"
    );
    // The code was not used: enrolling with the right fingerprint works.
    c.enroll(org::relay_info(&relay, Some(&o)), &alice_id, &code)
        .await
        .unwrap();
    assert!(matches!(
        c.pin_org(&o.fingerprint().to_hex()).await,
        Err(ClientError::NotAllowed(_))
    ));

    // A device enrolled while its relay had no organisation; the relay is then
    // configured with one and the firm publishes roster version 1.
    let later = TestOrg::new();
    let fp = later.fingerprint();
    let relay2 = sqlite_relay_in(tempfile::tempdir().unwrap(), |_| {}).await;
    let bob_id = relay2.account("bob", Role::Client).await;
    let mut bob = org::enrolled(&relay2, &homes.path().join("bob"), &bob_id, None).await;
    assert!(bob.relay().unwrap().org_fingerprint.is_none());
    bob.disconnect();
    let dir = relay2.stop().await;
    let relay2 = sqlite_relay_in(dir, |c| c.org_fingerprint = Some(fp)).await;
    let _staff2 = org::staff(&relay2, homes.path(), &later, "b.").await;
    bob.relay_override_for_tests(org::relay_info(&relay2, None));
    bob.connect().await.unwrap();
    // Another fingerprint than the relay's organisation: refused, nothing pinned.
    let err = bob.pin_org(&TestOrg::new().fingerprint().to_hex()).await;
    assert!(
        matches!(err, Err(ClientError::OrgMismatch { .. })),
        "{err:?}"
    );
    assert!(bob.relay().unwrap().org_fingerprint.is_none());
    // The right one: pinned, and the roster verifies from it.
    assert_eq!(bob.pin_org(&fp.to_hex()).await.unwrap(), 1);
    assert_eq!(
        bob.relay().unwrap().org_fingerprint.as_deref(),
        Some(fp.to_hex().as_str())
    );
    assert_eq!(bob.cached_roster().unwrap().head().version(), 1);
    // Once only.
    assert!(matches!(
        bob.pin_org(&TestOrg::new().fingerprint().to_hex()).await,
        Err(ClientError::NotAllowed(_))
    ));
}

/// A device-log entry written into the relay's storage behind the clients' backs (as a
/// compromised relay or database would: an `add` of the attacker's key, claiming to be
/// signed by alice's real device) is refused by her peers, which report it and encrypt
/// nothing to the inserted key; the relay itself refuses to authenticate the account's
/// devices while its stored log does not verify, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_device_log_entry_in_the_relay_storage_is_refused_and_reported() {
    use sealpost_protocol::trust::{DeviceAction, EntryAuthorization, LogEntry};
    use sealpost_server::store::{LogEffects, LoggedDevice, TrustStore};

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
    let (mut staff, mut advs) =
        org::staff_with_advisors(&relay, homes.path(), &o, "", &[&adv_id]).await;
    let mut adv = advs.remove(0);
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut alice).await;
    // The advisor verifies alice's one-entry log (and pins its head) by writing to her.
    let report = adv.send_text(&alice_id, "welcome").await.unwrap();
    assert_eq!(report.devices, 1);

    let dir = relay.stop().await;
    let fake = IdentityKeyPair::generate(&mut OsRng);
    {
        let store = sealpost_server::store::sqlite::SqliteStore::open(&walk_for(
            dir.path(),
            "relay.sqlite3",
        ))
        .unwrap();
        let log = store.device_log(&alice_id, 0, 16).await.unwrap();
        assert_eq!(log.len(), 1);
        let mut chain = sealpost_protocol::trust::DeviceLog::new(alice_id.clone());
        for e in log {
            chain.push(e).unwrap();
        }
        let body = chain.next_body(
            org::now_ms(),
            DeviceAction::Add {
                identity: fake.public().clone(),
            },
            "linked by an existing device",
        );
        // The attacker holds no key of alice's: it can only claim her device signed.
        let forged = LogEntry {
            authorization: EntryAuthorization::Device {
                device: alice.device_id(),
                signature: body.sign(&fake),
            },
            subject_signature: Some(body.sign(&fake)),
            body,
        };
        let effects = LogEffects {
            register: Some(LoggedDevice {
                identity: fake.public().clone(),
                added_ms: org::now_ms(),
            }),
            revoke: Vec::new(),
            frozen: false,
        };
        store
            .append_device_log(&forged, &effects, org::now_ms())
            .await
            .unwrap();
        assert_eq!(store.device_log_len(&alice_id).await.unwrap(), 2);
    }
    let relay = sqlite_relay_in(dir, |c| c.org_fingerprint = Some(fp)).await;
    // The relay verifies the account's log before it authenticates any of its devices.
    let conn = relay.connect().await;
    let auth = conn.authenticate(&fake).await;
    assert!(
        matches!(
            auth,
            Err(NetError::Refused {
                code: ErrorCode::Forbidden,
                ref message,
                ..
            }) if message.contains("does not verify")
        ),
        "the device of the forged entry: {auth:?}"
    );
    // The advisor's client refuses the log: nothing is sent, and it says why.
    adv.relay_override_for_tests(org::relay_info(&relay, Some(&o)));
    adv.connect().await.unwrap();
    let sent = adv.send_text(&alice_id, "your statement").await;
    assert!(
        matches!(sent, Err(ClientError::Trust(_))),
        "sent to an account whose log does not verify: {sent:?}"
    );
    let events = adv.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::TrustRefused { subject, .. } if subject == alice_id.as_str()
        )),
        "{events:?}"
    );
    assert!(adv.account_devices(&alice_id).await.is_err());
}

/// A roster change is dated when it is proposed and published only when its quorum
/// approves. An unfreeze approved under the old version in between must not break the
/// account once the new version is out: its device still sends, and the account and staff
/// still verify its log from the pinned root (before the fix, the unfreeze entry fell after
/// the old version's replacement and the log never verified again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfreeze_approved_while_a_roster_change_is_pending_keeps_the_account_working() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let ops_id = staff[0].account().unwrap().clone();
    relay.assign(&alice_id, &ops_id).await;
    relay.assign(&alice_id, staff[2].account().unwrap()).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;

    // ops proposes roster version 2 (dated now, published once approved).
    let head = staff[0].roster().await.unwrap().unwrap().head().clone();
    let next = head
        .next(org::now_ms(), head.staff().to_vec(), head.policy().clone())
        .unwrap();
    let change = staff[0].propose_roster(next).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile alice freezes her account and staff unfreeze it under version 1.
    assert!(phone.freeze_account("this wasn't me").await.unwrap().frozen);
    let unfreeze = staff[0]
        .propose_unfreeze(&alice_id, "verified by phone call")
        .await
        .unwrap();
    let [ops, comp, sec] = &mut staff[..] else {
        panic!("three staff")
    };
    let ev = pump(&mut [comp, sec], 1).await;
    for e in &ev {
        let got = requested(e);
        assert!(
            got.contains(&change.request_id) && got.contains(&unfreeze.request_id),
            "{e:?}"
        );
    }
    comp.approve(&unfreeze.request_id).await.unwrap();
    sec.approve(&unfreeze.request_id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);
    assert!(!phone.devices().await.unwrap().frozen);
    // Then version 2 is approved and published.
    comp.approve(&change.request_id).await.unwrap();
    sec.approve(&change.request_id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);

    // Everyone now holds version 2 and still verifies alice's log.
    for c in [&mut *ops, &mut *comp, &mut *sec, &mut phone] {
        assert_eq!(c.roster().await.unwrap().unwrap().head().version(), 2);
    }
    assert!(!phone.devices().await.unwrap().frozen);
    for c in [&mut *ops, &mut *sec] {
        let view = c.account_devices(&alice_id).await.unwrap();
        assert!(!view.frozen);
        assert_eq!(view.devices.len(), 1);
    }
    // Her device still authenticates and sends; ops reads it without a trust refusal.
    phone.connect().await.unwrap();
    phone.send_text(&ops_id, "thanks").await.unwrap();
    let ev = ops.receive(true, QUIET).await.unwrap();
    assert!(
        !ev.iter().any(|e| matches!(e, Event::TrustRefused { .. })),
        "{ev:?}"
    );
}

/// A notice to all clients reaches every client account, not only those assigned to its
/// sender: the sender lists them all (`list_clients`, staff and advisor devices only),
/// verifies each one's device log and seals for every device in it; the relay accepts it,
/// with its quorum, for an unassigned client; that client verifies the sender and the
/// co-signer (reading the staff member's device log without an assignment) and is not
/// stopped by the delivery receipt it cannot send back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_to_all_clients_reaches_clients_not_assigned_to_its_sender() {
    use sealpost_protocol::wire::FrameBody;
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let ops_id = staff[0].account().unwrap().clone();
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, &ops_id).await;
    // Bob is assigned to nobody; carol only to an advisor.
    let bob_id = relay.account("bob", Role::Client).await;
    let carol_id = relay.account("carol", Role::Client).await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    relay.assign(&carol_id, &adv_id).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut alice).await;
    let mut bob = org::enrolled(&relay, &homes.path().join("bob"), &bob_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut bob).await;
    let mut carol = org::enrolled(&relay, &homes.path().join("carol"), &carol_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut carol).await;
    // A client account without any device: reported as not reached, the rest goes on.
    let dana_id = relay.account("dana", Role::Client).await;

    let outcome = staff[0]
        .send_signed_notice(
            NoticeCategory::General,
            NoticeTarget::AllClients,
            "Maintenance",
            "Trading pauses on Sunday 02:00-03:00 UTC",
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("a notice to all clients went out without its quorum: {outcome:?}")
    };
    let id = requests[0].request_id.clone();
    let [ops, comp, _sec] = &mut staff[..] else {
        panic!()
    };
    let ev = pump(&mut [comp], 1).await;
    assert!(requested(&ev[0]).contains(&id));
    comp.approve(&id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    let summary = ev[0]
        .iter()
        .find_map(|e| match e {
            Event::OperationCompleted { summary, .. } => Some(summary.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not completed: {:?}", ev[0]));
    assert!(
        summary.contains("sent to 3 account(s); 1 failed"),
        "{summary}"
    );

    for (who, client) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        let got = client.receive(true, QUIET).await.unwrap();
        let status = got
            .iter()
            .find_map(|e| match e {
                Event::Notice { entry } if entry.title.as_deref() == Some("Maintenance") => {
                    entry.notice.clone()
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{who} did not get the notice: {got:?}"));
        assert!(status.authenticated, "{who}: {}", status.summary);
        assert_eq!(status.signer.as_ref(), Some(&ops_id), "{who}");
        assert_eq!(status.cosigners.len(), 1, "{who}: {:?}", status.cosigners);
        assert!(
            status.cosigners[0].starts_with(comp.account().unwrap().as_str()),
            "{who}: {:?}",
            status.cosigners
        );
        assert!(rejected(&got).is_empty(), "{who}: {got:?}");
        // Reading it sends read receipts where it can; an unassigned sender is skipped.
        client.mark_read().await.unwrap();
    }

    // The client list: staff and advisor devices only (fresh accounts for raw devices).
    let erin_id = relay.account("erin", Role::Client).await;
    let client_dev = relay.device(&erin_id, 9102).await;
    let desk_id = relay.account("desk", Role::Staff).await;
    let staff_dev = relay.device(&desk_id, 9101).await;
    let listed = staff_dev
        .conn
        .request(FrameBody::ListClients { after: None })
        .await
        .unwrap();
    let FrameBody::Clients { clients, more } = listed else {
        panic!("{listed:?}")
    };
    assert_eq!(
        clients.into_inner(),
        [
            alice_id.clone(),
            bob_id.clone(),
            carol_id.clone(),
            dana_id,
            erin_id
        ]
    );
    assert!(!more);
    match client_dev
        .conn
        .request(FrameBody::ListClients { after: None })
        .await
    {
        Err(NetError::Refused {
            code: ErrorCode::Forbidden,
            message,
            ..
        }) => assert!(message.contains("staff and advisor"), "{message}"),
        other => panic!("a client device listed the clients: {other:?}"),
    }
    // Chat still follows the assignments: ops cannot write to bob.
    match staff[0].send_text(&bob_id, "hello").await {
        Err(ClientError::Net(NetError::Refused {
            code: ErrorCode::Forbidden,
            ..
        })) => {}
        other => panic!("chat to an unassigned client was accepted: {other:?}"),
    }
}

/// Instructions are a sensitive kind end to end: a device past its cooling-off sends one
/// and the advisor sees it as an instruction, apart from chat; a device on probation is
/// refused by its own client, by the relay (an instruction envelope sent past its client's
/// check), and by every receiver (an instruction relabelled as chat, which the relay lets
/// through: the advisor and the account's other device refuse it and report why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_are_refused_from_a_device_on_probation_and_shown_apart_otherwise() {
    use sealpost_client::client::EntryKind;
    use sealpost_protocol::content::InstructionCategory;
    use sealpost_protocol::EnvelopeKind;
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff, mut adv) = org_memory_relay_adv(homes.path()).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let adv_id = adv.account().unwrap().clone();
    relay.assign(&alice_id, &adv_id).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;

    // Past its cooling-off, the phone sends a withdrawal instruction.
    let report = phone
        .send_instruction(
            &adv_id,
            InstructionCategory::Withdrawal,
            "Withdraw 10,000 EUR to my account ending 4411",
        )
        .await
        .unwrap();
    let got = adv.receive(true, QUIET).await.unwrap();
    let entry = got
        .iter()
        .find_map(|e| match e {
            Event::Instruction { entry } => Some(entry.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no instruction: {got:?}"));
    assert_eq!(entry.id, report.message_id);
    assert_eq!(entry.kind, EntryKind::Instruction);
    assert_eq!(entry.instruction, Some(InstructionCategory::Withdrawal));
    assert_eq!(entry.peer, alice_id);
    assert_eq!(entry.body, "Withdraw 10,000 EUR to my account ending 4411");
    assert!(
        !got.iter().any(|e| matches!(e, Event::Message { .. })),
        "an instruction is not chat: {got:?}"
    );
    let kept = adv
        .history()
        .find(|e| e.id == report.message_id)
        .unwrap()
        .clone();
    assert_eq!(kept.kind, EntryKind::Instruction);

    // A new device, on probation for an hour.
    change_roster(&mut staff, 3_600_000).await;
    let mut tablet = org::linked(&relay, &mut phone, &homes.path().join("tablet"), Some(&o)).await;
    let t = tablet.devices().await.unwrap();
    let until = t
        .devices
        .iter()
        .find(|d| d.this_device && d.on_probation)
        .expect("the tablet is on probation")
        .probation_until_ms;
    let _ = phone.receive(true, QUIET).await.unwrap();
    let _ = adv.receive(true, QUIET).await.unwrap();

    // Its own client refuses, before anything leaves the device.
    match tablet
        .send_instruction(
            &adv_id,
            InstructionCategory::StandingInstructionChange,
            "Change my payout address to DE02 1203 0000 0000 2020 51",
        )
        .await
    {
        Err(ClientError::OnProbation { until_ms, refused }) => {
            assert_eq!(until_ms, until);
            assert!(refused.contains("instruction"), "{refused}");
        }
        other => panic!("a device on probation sent an instruction: {other:?}"),
    }
    // Past its client's check, the relay refuses the instruction envelope.
    match tablet
        .send_instruction_unchecked_for_tests(
            &adv_id,
            InstructionCategory::StandingInstructionChange,
            "Change my payout address to DE02 1203 0000 0000 2020 51",
        )
        .await
    {
        Err(ClientError::Net(NetError::Refused {
            code: ErrorCode::Forbidden,
            message,
            ..
        })) => assert!(message.contains("probation"), "{message}"),
        other => panic!("the relay accepted an instruction from a device on probation: {other:?}"),
    }
    // Relabelled as chat, it passes the relay: the advisor and the phone (its sync copy)
    // refuse it for the sender's probation, and report it.
    tablet
        .send_relabelled_for_tests(
            &adv_id,
            Content::Instruction {
                category: InstructionCategory::StandingInstructionChange,
                body: BoundedString::truncating("Change my payout address to DE02 1203"),
            },
            EnvelopeKind::Chat,
        )
        .await
        .expect("the relay accepts a chat from a device on probation");
    for (who, client) in [("advisor", &mut adv), ("phone", &mut phone)] {
        let got = client.receive(true, QUIET).await.unwrap();
        assert!(
            alarmed(&got)
                .iter()
                .any(|r| r.contains("on probation") && r.contains("instruction")),
            "{who}: {got:?}"
        );
        assert!(
            !got.iter().any(|e| matches!(
                e,
                Event::Instruction { .. } | Event::Message { .. } | Event::Synced { .. }
            )),
            "{who} showed it: {got:?}"
        );
    }
    assert!(!adv.history().any(|e| e.body.contains("DE02 1203")));
}

/// Requests do not pile up: a rejection that leaves too few possible approvers rejects
/// the request; the initiator can cancel one (later approvals change nothing); an
/// operation the relay refuses after its quorum (a notice to a client not assigned to the
/// sender) fails, and is carried out by `retry` once the cause is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_rejected_cancelled_and_retried_instead_of_piling_up() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff) = org_memory_relay(homes.path()).await;
    let head = staff[0].roster().await.unwrap().unwrap().head().clone();
    let next = || {
        head.next(
            org::now_ms(),
            head.staff().to_vec(),
            org::quick_policy(org::QUICK_COOLING_OFF_MS),
        )
        .unwrap()
    };
    // Roster change: threshold 2 of compliance and security, i.e. both comp and sec.
    let rejected = staff[0].propose_roster(next()).await.unwrap();
    {
        let [ops, comp, _sec] = &mut staff[..] else {
            panic!()
        };
        pump(&mut [comp], 1).await;
        comp.reject_approval(&rejected.request_id, "not this week")
            .await
            .unwrap();
        pump(&mut [ops], 1).await;
        let v = ops.approval(&rejected.request_id).unwrap();
        assert_eq!(v.status, ApprovalStatus::Rejected, "{v:?}");
        assert!(v.detail.contains("rejected by comp"), "{}", v.detail);
    }
    // Cancelled: both approve afterwards, nothing is published.
    let cancelled = staff[0].propose_roster(next()).await.unwrap();
    let v = staff[0].cancel_approval(&cancelled.request_id).unwrap();
    assert_eq!(v.status, ApprovalStatus::Cancelled);
    {
        let [ops, comp, sec] = &mut staff[..] else {
            panic!()
        };
        pump(&mut [comp, sec], 1).await;
        comp.approve(&cancelled.request_id).await.unwrap();
        sec.approve(&cancelled.request_id).await.unwrap();
        let ev = pump(&mut [ops], 1).await;
        assert!(!completed(&ev[0]), "{:?}", ev[0]);
        assert_eq!(
            ops.approval(&cancelled.request_id).unwrap().status,
            ApprovalStatus::Cancelled
        );
        assert_eq!(ops.roster().await.unwrap().unwrap().head().version(), 1);
        // A request that is not ours cannot be cancelled by an approver.
        let err = comp.cancel_approval(&cancelled.request_id).unwrap_err();
        assert!(matches!(err, ClientError::NotAllowed(_)), "{err:?}");
    }
    // A co-signed notice to a client not assigned to the sender: approved, refused by
    // the relay, failed (not pending); assigned, then retried: delivered.
    let alice_id = relay.account("alice", Role::Client).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut alice).await;
    let outcome = staff[0]
        .send_signed_notice(
            NoticeCategory::DepositInstruction,
            NoticeTarget::Client(alice_id.clone()),
            "New deposit address",
            "From 1 December, deposit to IBAN CH93 0076 2011 6238 5295 7.",
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    pump(&mut [comp, sec], 1).await;
    for r in &requests {
        for approver in [&mut *comp, &mut *sec] {
            if approver.approval(&r.request_id).is_some() {
                approver.approve(&r.request_id).await.unwrap();
            }
        }
    }
    let ev = pump(&mut [ops], 1).await;
    let failed: Vec<&Event> = ev[0]
        .iter()
        .filter(|e| matches!(e, Event::OperationFailed { .. }))
        .collect();
    assert!(
        matches!(
            failed.as_slice(),
            [Event::OperationFailed {
                will_retry: false,
                ..
            }]
        ),
        "{:?}",
        ev[0]
    );
    let id = &requests[0].request_id;
    assert_eq!(ops.approval(id).unwrap().status, ApprovalStatus::Failed);
    relay.assign(&alice_id, ops.account().unwrap()).await;
    let events = ops.retry_approval(id).await.unwrap();
    assert!(completed(&events), "{events:?}");
    assert_eq!(ops.approval(id).unwrap().status, ApprovalStatus::Completed);
    let got = alice.receive(true, Duration::from_secs(2)).await.unwrap();
    assert!(
        got.iter().any(|e| matches!(e, Event::Notice { .. })),
        "{got:?}"
    );
    // Nothing left open on the initiator's side.
    assert!(
        ops.approvals().iter().all(|v| !v.status.is_open()),
        "{:?}",
        ops.approvals()
    );
}

/// A request the relay refuses to carry to any approver (the initiator's device is still
/// in its cooling-off, as every just-enrolled staff device is) is failed, not left
/// pending for ever; once the cooling-off has passed, `retry` sends it and it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_during_the_cooling_off_is_failed_and_sent_again_by_retry() {
    use sealpost_protocol::trust::StaffRole;
    const COOLING_OFF_MS: u64 = 25_000;
    let homes = tempfile::tempdir().unwrap();
    let o = TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| c.org_fingerprint = Some(fp)).await;
    let mut staff = Vec::new();
    for name in ["ops", "comp", "sec"] {
        let id = relay.account(name, Role::Staff).await;
        staff.push(org::enrolled(&relay, &homes.path().join(name), &id, Some(&o)).await);
    }
    let members = [
        (&staff[0], StaffRole::Operations),
        (&staff[1], StaffRole::Compliance),
        (&staff[2], StaffRole::Security),
    ];
    let v1 = o.genesis(&members, org::quick_policy(COOLING_OFF_MS));
    staff[0].publish_signed_roster(v1).await.unwrap();
    let enrolled_at = std::time::Instant::now();
    let head = staff[0].roster().await.unwrap().unwrap().head().clone();
    let next = head
        .next(
            org::now_ms(),
            head.staff().to_vec(),
            org::quick_policy(org::QUICK_COOLING_OFF_MS),
        )
        .unwrap();
    let err = staff[0].propose_roster(next).await.unwrap_err();
    assert!(err.to_string().contains("probation"), "{err}");
    let views = staff[0].approvals();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].status, ApprovalStatus::Failed, "{views:?}");
    assert!(
        views[0].detail.contains("reached no approver"),
        "{}",
        views[0].detail
    );
    let id = views[0].request_id.clone();
    // A retry during the cooling-off fails the same way, and says why.
    let err = staff[0].retry_approval(&id).await.unwrap_err();
    assert!(err.to_string().contains("probation"), "{err}");
    // People are slow: the cooling-off passes.
    let left = Duration::from_millis(COOLING_OFF_MS + 1_000).saturating_sub(enrolled_at.elapsed());
    tokio::time::sleep(left).await;
    staff[0].retry_approval(&id).await.unwrap();
    assert_eq!(
        staff[0].approval(&id).unwrap().status,
        ApprovalStatus::Pending
    );
    let [ops, comp, sec] = &mut staff[..] else {
        panic!()
    };
    let ev = pump(&mut [comp, sec], 1).await;
    assert!(requested(&ev[0]).contains(&id), "{:?}", ev[0]);
    comp.approve(&id).await.unwrap();
    sec.approve(&id).await.unwrap();
    let ev = pump(&mut [ops], 1).await;
    assert!(completed(&ev[0]), "{:?}", ev[0]);
    assert_eq!(ops.roster().await.unwrap().unwrap().head().version(), 2);
}
