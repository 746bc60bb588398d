//! The client library end to end over real QUIC: enrolment, conversations online and
//! offline with receipts, several devices per account, staff notices, device changes,
//! policy, and what the relay's disk holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sealpost_tests::texts;
use std::path::Path;
use std::time::Duration;

use sealpost_client::client::{Direction, EntryKind, Event, RelayInfo};
use sealpost_client::net::NetError;
use sealpost_client::{Client, ClientError};
use sealpost_protocol::content::ReceiptKind;
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::{ErrorCode, Role};
use sealpost_server::store::Store;
use sealpost_tests::*;

const PASS: &str = "correct horse battery";
const QUIET: Duration = Duration::from_secs(5);

fn relay_info<S: Store>(relay: &TestRelay<S>) -> RelayInfo {
    RelayInfo {
        addr: relay.addr.to_string(),
        server_name: "localhost".into(),
        ca_fingerprint: hex::encode(relay.ca_fingerprint),
        org_fingerprint: None,
    }
}

/// A relay pinned to a fresh organisation whose roster (three staff accounts, `prefix`ed,
/// and the advisor accounts `advisors`, each with one enrolled device) has a short
/// cooling-off, so a first device can link a second one during the test. Returns the
/// staff (`[ops, comp, sec]`) and the advisors' clients.
async fn org_relay(
    homes: &Path,
    prefix: &str,
    advisors: &[&str],
) -> (
    TestRelay<sealpost_server::store::memory::MemoryStore>,
    org::TestOrg,
    Vec<Client>,
    Vec<Client>,
) {
    let o = org::TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| c.org_fingerprint = Some(fp)).await;
    let mut ids = Vec::new();
    for a in advisors {
        ids.push(relay.account(a, Role::Advisor).await);
    }
    let refs: Vec<&AccountId> = ids.iter().collect();
    let (staff, advs) = org::staff_with_advisors(&relay, homes, &o, prefix, &refs).await;
    (relay, o, staff, advs)
}

async fn enrolled<S: Store>(relay: &TestRelay<S>, home: &Path, account: &AccountId) -> Client {
    let mut c = Client::init(home, PASS).unwrap();
    let code = relay.code(account).await;
    c.enroll(relay_info(relay), account, &code).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_advisor_converse_online_and_offline_with_receipts() {
    let relay = memory_relay(|_| {}).await;
    let homes = tempfile::tempdir().unwrap();
    let alice_id = relay.account("alice", Role::Client).await;
    let bob_id = relay.account("bob.advisor", Role::Advisor).await;
    relay.assign(&alice_id, &bob_id).await;
    let mut alice = enrolled(&relay, &homes.path().join("alice"), &alice_id).await;
    let mut bob = enrolled(&relay, &homes.path().join("bob"), &bob_id).await;

    // Online: both connected.
    let sent = alice
        .send_text(&bob_id, "Please confirm my new deposit address")
        .await
        .unwrap();
    assert_eq!(sent.devices, 1);
    let got = bob.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), vec!["Please confirm my new deposit address"]);
    // Alice gets the delivery receipt bob's client sent automatically.
    let got = alice.receive(true, QUIET).await.unwrap();
    assert!(got.iter().any(|e| matches!(e, Event::Receipt { kind: ReceiptKind::Delivered, message_ids, .. } if message_ids.contains(&sent.message_id))));
    // Bob reads it: a read receipt.
    assert_eq!(bob.mark_read().await.unwrap(), 1);
    let _ = alice.receive(true, QUIET).await.unwrap();
    let entry = alice.history().find(|e| e.id == sent.message_id).unwrap();
    assert!(
        entry.delivered && entry.read,
        "delivered and read receipts recorded"
    );

    // Offline: alice goes away; bob writes twice; alice reopens her profile and reads.
    drop(alice);
    bob.send_text(&alice_id, "Confirmed by phone.")
        .await
        .unwrap();
    bob.send_text(&alice_id, "Anything else?").await.unwrap();
    let mut alice = Client::open(&homes.path().join("alice"), PASS).unwrap();
    alice.connect().await.unwrap();
    let got = alice.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), vec!["Confirmed by phone.", "Anything else?"]);
    let reply = alice.send_text(&bob_id, "No, thank you").await.unwrap();
    let got = bob.receive(true, QUIET).await.unwrap();
    assert!(texts(&got).contains(&"No, thank you".to_string()));
    assert!(bob
        .history()
        .any(|e| e.id == reply.message_id && e.direction == Direction::In));

    // Redelivery never shows a message twice: reopen and receive again.
    drop(alice);
    let mut alice = Client::open(&homes.path().join("alice"), PASS).unwrap();
    alice.connect().await.unwrap();
    let again = alice.receive(true, Duration::from_secs(2)).await.unwrap();
    assert!(texts(&again).is_empty(), "nothing shown twice: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_sees_both_sides() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, mut staff, mut advs) = org_relay(homes.path(), "s.", &["dan"]).await;
    let carol_id = relay.account("carol", Role::Client).await;
    let mut dan = advs.remove(0);
    let dan_id = dan.account().unwrap().clone();
    relay.assign(&carol_id, &dan_id).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &carol_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut phone).await;
    org::settle().await;
    // A second device joins through the link flow (an enrolment code only creates the
    // first device of an account).
    let mut laptop = org::linked(&relay, &mut phone, &homes.path().join("laptop"), Some(&o)).await;

    let out = phone.send_text(&dan_id, "from my phone").await.unwrap();
    assert_eq!(out.own_devices, 1, "a sync copy went to the laptop");
    let got = dan.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), vec!["from my phone"]);
    dan.send_text(&carol_id, "to both devices").await.unwrap();

    let got = laptop.receive(true, QUIET).await.unwrap();
    let synced: Vec<_> = got
        .iter()
        .filter_map(|e| {
            if let Event::Synced { entry } = e {
                Some(entry.body.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        synced,
        vec!["from my phone"],
        "the laptop sees what the phone sent"
    );
    assert_eq!(texts(&got), vec!["to both devices"], "and what dan sent");
    let got = phone.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), vec!["to both devices"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linking_device_waits_out_the_relays_link_rate_limit() {
    use sealpost_client::LinkProgress;
    // A relay far stricter than the default: the fast polls alone exceed its burst.
    let homes = tempfile::tempdir().unwrap();
    let o = org::TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| {
        c.org_fingerprint = Some(fp);
        c.limits.link_requests_per_ip = sealpost_server::limits::Rate::new(1.0, 4.0);
    })
    .await;
    let _staff = org::staff(&relay, homes.path(), &o, "r.").await;
    let erin_id = relay.account("erin", Role::Client).await;
    let mut phone = org::enrolled(&relay, &homes.path().join("phone"), &erin_id, Some(&o)).await;
    org::settle().await;
    let mut laptop = Client::init(&homes.path().join("laptop"), PASS).unwrap();
    let ticket = laptop
        .link_start(org::relay_info(&relay, Some(&o)), &erin_id)
        .await
        .unwrap();
    // Nobody answers for a while: the device keeps polling, waiting out `rate_limited`
    // answers as they come, and reports that it is still waiting.
    let waited = laptop.link_progress(Duration::from_secs(4)).await;
    assert!(
        matches!(waited, Ok(LinkProgress::Waiting)),
        "expected to be still waiting, got {waited:?}"
    );
    phone.offer_link(&ticket.link_id).await.unwrap();
    let code = match laptop.link_progress(Duration::from_secs(20)).await.unwrap() {
        LinkProgress::Offered { code, .. } => code,
        other => panic!("expected an offer, got {other:?}"),
    };
    phone
        .confirm_link(&ticket.link_id, &code, Duration::from_secs(20))
        .await
        .unwrap();
    match laptop.link_progress(Duration::from_secs(20)).await.unwrap() {
        LinkProgress::Completed { .. } => {}
        other => panic!("expected completion, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_notices_reach_one_several_and_all_clients() {
    let homes = tempfile::tempdir().unwrap();
    let (relay, o, staff_members, _) = org_relay(homes.path(), "", &[]).await;
    let mut staff = staff_members.into_iter().next().unwrap();
    let ops = staff.account().unwrap().clone();
    let mut clients = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let id = relay.account(name, Role::Client).await;
        relay.assign(&id, &ops).await;
        let mut c = org::enrolled(&relay, &homes.path().join(name), &id, Some(&o)).await;
        org::attest(&mut staff, &mut c).await;
        clients.push((id.clone(), c));
    }
    // One.
    staff
        .send_notice(
            &clients[0].0,
            "Statement",
            "Your October statement is ready",
        )
        .await
        .unwrap();
    // All (reachable clients).
    let all: Vec<AccountId> = staff
        .reachable()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, r)| *r == Role::Client)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(all.len(), 3);
    for c in &all {
        staff
            .send_notice(c, "Maintenance", "Trading pauses Sunday 02:00-03:00 UTC")
            .await
            .unwrap();
    }
    for (i, (_, c)) in clients.iter_mut().enumerate() {
        let got = c.receive(true, QUIET).await.unwrap();
        let notices: Vec<_> = got
            .iter()
            .filter_map(|e| {
                if let Event::Notice { entry } = e {
                    let status = entry.notice.as_ref().unwrap();
                    assert!(status.authenticated, "{}", status.summary);
                    assert_eq!(status.signer.as_ref(), Some(&ops));
                    Some((entry.title.clone().unwrap(), entry.kind))
                } else {
                    None
                }
            })
            .collect();
        let expected = if i == 0 {
            vec!["Statement", "Maintenance"]
        } else {
            vec!["Maintenance"]
        };
        assert_eq!(
            notices.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
            expected
        );
        assert!(notices.iter().all(|n| n.1 == EntryKind::Notice));
        assert!(texts(&got).is_empty(), "notices are kept apart from chat");
    }
    // A client cannot send notices.
    assert!(matches!(
        clients[1].1.send_notice(&ops, "x", "y").await,
        Err(ClientError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_of_a_verified_contact_is_reported_and_unverifies_it() {
    let homes = tempfile::tempdir().unwrap();
    // Erin is the advisor (the roster lists her device); fay, the client whose account
    // gains a device, was verified by the firm.
    let (relay, o, mut staff, mut advs) = org_relay(homes.path(), "s.", &["erin"]).await;
    let mut erin = advs.remove(0);
    let erin_id = erin.account().unwrap().clone();
    let fay_id = relay.account("fay", Role::Client).await;
    relay.assign(&fay_id, &erin_id).await;
    let mut fay = org::enrolled(&relay, &homes.path().join("fay"), &fay_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut fay).await;
    erin.send_text(&fay_id, "hi").await.unwrap();
    let _ = fay.receive(true, QUIET).await.unwrap();
    let sn_erin = erin.mark_verified(&fay_id).await.unwrap();
    let sn_fay = fay.safety_number(&erin_id).await.unwrap();
    assert_eq!(
        sn_erin.digits(),
        sn_fay.digits(),
        "both sides compute the same safety number"
    );
    assert_eq!(sn_erin.digits().len(), 60);
    assert!(erin.is_verified(&fay_id));

    // Fay's account gains a device (new identity keys), linked by her first device.
    org::settle().await;
    let _fay2 = org::linked(&relay, &mut fay, &homes.path().join("fay2"), Some(&o)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The next message from erin refreshes the directory after the cache period; force it
    // through the safety number, which always refreshes.
    let sn_now = erin.safety_number(&fay_id).await.unwrap();
    assert_ne!(
        sn_now.digits(),
        sn_erin.digits(),
        "the safety number covers every device"
    );
    assert!(
        !erin.is_verified(&fay_id),
        "a verified contact whose devices changed is no longer verified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_change_is_reported_as_an_event_when_sending() {
    let homes = tempfile::tempdir().unwrap();
    // Gil is the advisor; hal, the client whose account gains a device, was verified.
    let (relay, o, mut staff, mut advs) = org_relay(homes.path(), "s.", &["gil"]).await;
    let mut gil = advs.remove(0);
    let gil_id = gil.account().unwrap().clone();
    let hal_id = relay.account("hal", Role::Client).await;
    relay.assign(&hal_id, &gil_id).await;
    let mut hal = org::enrolled(&relay, &homes.path().join("hal"), &hal_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut hal).await;
    gil.send_text(&hal_id, "first").await.unwrap();
    gil.mark_verified(&hal_id).await.unwrap();
    org::settle().await;
    let _hal2 = org::linked(&relay, &mut hal, &homes.path().join("hal2"), Some(&o)).await;
    // Reopen so the cached device list is stale.
    drop(gil);
    let mut gil = Client::open(&homes.path().join("gil"), PASS).unwrap();
    gil.connect().await.unwrap();
    let report = gil.send_text(&hal_id, "second").await.unwrap();
    assert_eq!(report.devices, 2, "the new device gets the message too");
    assert!(
        report.events.iter().any(|e| matches!(e, Event::DevicesChanged { account, added, was_verified: true, .. } if account == &hal_id && added.len() == 1)),
        "{:?}",
        report.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_reach_another_client() {
    let relay = memory_relay(|_| {}).await;
    let homes = tempfile::tempdir().unwrap();
    let a_id = relay.account("ivy", Role::Client).await;
    let b_id = relay.account("jon", Role::Client).await;
    let mut a = enrolled(&relay, &homes.path().join("ivy"), &a_id).await;
    let _b = enrolled(&relay, &homes.path().join("jon"), &b_id).await;
    match a.send_text(&b_id, "hello stranger").await {
        Err(ClientError::Net(NetError::Refused {
            code: ErrorCode::Forbidden,
            ..
        })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_disk_holds_no_plaintext() {
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |_| {}).await;
    let homes = tempfile::tempdir().unwrap();
    let k_id = relay.account("kim", Role::Client).await;
    let l_id = relay.account("lou", Role::Advisor).await;
    relay.assign(&k_id, &l_id).await;
    let mut k = enrolled(&relay, &homes.path().join("kim"), &k_id).await;
    let l = enrolled(&relay, &homes.path().join("lou"), &l_id).await;
    drop(l);
    let secret = "wire 250000 EUR to IBAN DE89370400440532013000 MARKER-b41c";
    k.send_text(&l_id, secret).await.unwrap();
    k.send_text(&l_id, &format!("{secret} (again)"))
        .await
        .unwrap();
    let dir = relay.stop().await;
    let mut hits = Vec::new();
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        if bytes.windows(11).any(|w| w == b"MARKER-b41c")
            || bytes.windows(22).any(|w| w == b"DE89370400440532013000")
        {
            hits.push(entry.display().to_string());
        }
    }
    assert!(hits.is_empty(), "plaintext found in {hits:?}");
    // The client's own profile is encrypted too.
    for entry in walk(&homes.path().join("kim")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"MARKER-b41c"),
            "plaintext in the client's profile: {}",
            entry.display()
        );
    }
    // And the envelopes really were stored: the relay restarts and delivers them.
    let relay = sqlite_relay_in(dir, |_| {}).await;
    let mut l = Client::open(&homes.path().join("lou"), PASS).unwrap();
    l.relay_override_for_tests(relay_info(&relay));
    l.connect().await.unwrap();
    let got = l.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got).len(), 2);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_wrong_passphrase_is_a_clear_error() {
    let homes = tempfile::tempdir().unwrap();
    let home = homes.path().join("m");
    drop(Client::init(&home, PASS).unwrap());
    match Client::open(&home, "not the passphrase") {
        Err(ClientError::State(sealpost_client::state::StateError::WrongPassphrase)) => {}
        Err(other) => panic!("expected WrongPassphrase, got {other}"),
        Ok(_) => panic!("opened with a wrong passphrase"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_claiming_another_account_is_rejected() {
    use sealpost_protocol::content::{Content, Message};
    use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};
    use sealpost_protocol::wire::BoundedString;

    let relay = memory_relay(|_| {}).await;
    let homes = tempfile::tempdir().unwrap();
    let nia_id = relay.account("nia", Role::Client).await;
    let mal_id = relay.account("mal.advisor", Role::Advisor).await;
    let boss_id = relay.account("boss.advisor", Role::Advisor).await;
    relay.assign(&nia_id, &mal_id).await;
    relay.assign(&nia_id, &boss_id).await;
    let mut nia = enrolled(&relay, &homes.path().join("nia"), &nia_id).await;
    let _boss = enrolled(&relay, &homes.path().join("boss"), &boss_id).await;
    // A device of mal.advisor writes as if it were boss.advisor.
    let mut mal = relay.device(&mal_id, 77).await;
    let bundle = mal.conn.fetch_bundles(&nia_id).await.unwrap().remove(0);
    let mut session = sealpost_protocol::initiate(&mal.identity, &bundle, &mut mal.rng).unwrap();
    let forged = Message {
        from: boss_id.clone(),
        sent_ms: 1,
        views: None,
        content: Content::Text {
            body: BoundedString::truncating("New deposit address: ..."),
        },
    };
    let header = RoutingHeader::new(
        mal.id(),
        nia.device_id(),
        EnvelopeKind::Chat,
        1,
        &mut mal.rng,
    );
    let env = session
        .seal(header, &forged.encode().unwrap(), &mut mal.rng)
        .unwrap();
    mal.conn.send_envelope(env).await.unwrap();

    let got = nia.receive(true, QUIET).await.unwrap();
    assert!(
        texts(&got).is_empty(),
        "the forged message is not shown: {got:?}"
    );
    assert!(
        got.iter().any(
            |e| matches!(e, Event::Rejected { reason, .. } if reason.contains("boss.advisor"))
        ),
        "{got:?}"
    );
    assert!(
        nia.history().all(|e| e.peer != boss_id),
        "nothing recorded as from boss.advisor"
    );
    // It was acknowledged (dropped), so it does not come back.
    drop(nia);
    let mut nia = Client::open(&homes.path().join("nia"), PASS).unwrap();
    nia.connect().await.unwrap();
    let again = nia.receive(true, Duration::from_secs(2)).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
}
