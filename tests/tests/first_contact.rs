//! No device trusted on first sight (docs/PROTOCOL.md §19.10), over real QUIC: with an
//! organisation pinned, a relay that writes its own database and serves, for an account
//! a peer has never contacted, a log whose first entry adds the relay's own device (an
//! advisor, a staff member, a client) is refused by the peer, which sends nothing to that
//! device and accepts nothing from it (once through the CLI binary: exit 8 with the
//! reason); the firm's attestation of a client end to end, a wrong code refused; and
//! cooling-off counted from the relay's append time, not the signer's date.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sealpost_tests::texts;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sealpost_client::client::Event;
use sealpost_client::{AttestStatus, Client, ClientError};
use sealpost_protocol::content::{Content, Message};
use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::trust::{Roster, StaffMember, StaffRole, TrustError};
use sealpost_protocol::wire::{BoundedString, ErrorCode, Role};
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_tests::org::{self, TestOrg, PASS};
use sealpost_tests::*;

const QUIET: Duration = Duration::from_secs(3);
const CLI: &str = env!("CARGO_BIN_EXE_sealpost-under-test");

/// A firm on a SQLite relay: ops (operations), comp, sec and adv (advisor), enrolled;
/// roster version 1 lists them and `extra` (identities of people who have not enrolled
/// yet, with their roles).
struct Firm {
    relay: TestRelay<SqliteStore>,
    org: TestOrg,
    ops: Client,
    adv: Client,
    /// `[comp, sec]`.
    others: Vec<Client>,
}

async fn firm(homes: &Path, extra: &[(&str, Role, StaffRole, &Client)]) -> Firm {
    let o = TestOrg::new();
    let fp = o.fingerprint();
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |c| {
        c.org_fingerprint = Some(fp)
    })
    .await;
    let mut people = Vec::new();
    for (name, role) in [
        ("ops", Role::Staff),
        ("comp", Role::Staff),
        ("sec", Role::Staff),
        ("adv", Role::Advisor),
    ] {
        let id = relay.account(name, role).await;
        people.push(org::enrolled(&relay, &homes.join(name), &id, Some(&o)).await);
    }
    let roles = [
        StaffRole::Operations,
        StaffRole::Compliance,
        StaffRole::Security,
        StaffRole::Advisor,
    ];
    let mut members: Vec<StaffMember> = people
        .iter()
        .zip(roles)
        .map(|(c, role)| StaffMember {
            account: c.account().unwrap().clone(),
            role,
            devices: vec![c.identity().clone()],
        })
        .collect();
    for (name, relay_role, role, profile) in extra {
        relay.account(name, *relay_role).await;
        members.push(StaffMember {
            account: AccountId::new(name).unwrap(),
            role: *role,
            devices: vec![profile.identity().clone()],
        });
    }
    let roster = Roster::new(
        1,
        None,
        org::now_ms() - 1000,
        members,
        org::quick_policy(org::QUICK_COOLING_OFF_MS),
    )
    .unwrap();
    let v1 = o.root.sign_genesis(roster).unwrap();
    people[0].publish_signed_roster(v1).await.unwrap();
    org::settle().await;
    let adv = people.remove(3);
    let ops = people.remove(0);
    Firm {
        relay,
        org: o,
        ops,
        adv,
        others: people,
    }
}

/// `device` (a raw device the relay enrolled for itself) writes a chat message to
/// `to`'s device as if from `from`.
async fn forge_to(device: &mut TestDevice, to: &Client, from: &AccountId, text: &str) {
    let bundle = device
        .conn
        .fetch_bundles(to.account().unwrap())
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.identity.device_id() == to.device_id())
        .unwrap();
    let mut session =
        sealpost_protocol::initiate(&device.identity, &bundle, &mut device.rng).unwrap();
    let message = Message {
        from: from.clone(),
        sent_ms: org::now_ms(),
        content: Content::Text {
            body: BoundedString::truncating(text),
        },
        views: None,
    };
    let header = RoutingHeader::new(
        device.id(),
        to.device_id(),
        EnvelopeKind::Chat,
        org::now_ms(),
        &mut device.rng,
    );
    let env = session
        .seal(header, &message.encode().unwrap(), &mut device.rng)
        .unwrap();
    device.conn.send_envelope(env).await.unwrap();
}

/// Runs the CLI on the profile in `home`; returns (exit code, stdout, stderr).
fn cli(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(CLI)
        .args(args)
        .env("SEALPOST_HOME", home)
        .env("SEALPOST_PASSPHRASE", PASS)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused_by_trust(r: &Result<sealpost_client::SendReport, ClientError>) -> bool {
    matches!(r, Err(ClientError::Trust(_)))
}

/// An advisor and a staff member the roster lists, who have not enrolled yet: the relay
/// enrols its own device as their first one (its database, its enrolment codes). Alice,
/// who never wrote to them, refuses both logs (the CLI exits 8 and says why), sends them
/// nothing and accepts nothing they send. An account the relay calls an advisor but the
/// roster does not list is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabricated_first_devices_of_an_advisor_and_a_staff_member_are_refused() {
    let homes = tempfile::tempdir().unwrap();
    let real_adv2 = Client::init(&homes.path().join("real-adv2"), PASS).unwrap();
    let real_ops2 = Client::init(&homes.path().join("real-ops2"), PASS).unwrap();
    let mut f = firm(
        homes.path(),
        &[
            ("adv2", Role::Advisor, StaffRole::Advisor, &real_adv2),
            ("ops2", Role::Staff, StaffRole::Operations, &real_ops2),
        ],
    )
    .await;
    let alice_id = f.relay.account("alice", Role::Client).await;
    let adv2 = AccountId::new("adv2").unwrap();
    let ops2 = AccountId::new("ops2").unwrap();
    let adv3 = f.relay.account("adv3", Role::Advisor).await;
    for staff in [&adv2, &ops2, &adv3] {
        f.relay.assign(&alice_id, staff).await;
    }
    let alice_home = homes.path().join("alice");
    let mut alice = org::enrolled(&f.relay, &alice_home, &alice_id, Some(&f.org)).await;
    org::attest(&mut f.ops, &mut alice).await;

    // The relay's own devices, first in each log.
    let mut fake_adv2 = f.relay.device(&adv2, 901).await;
    let mut fake_ops2 = f.relay.device(&ops2, 902).await;
    let fake_adv3 = f.relay.device(&adv3, 903).await;

    for (to, fake) in [(&adv2, &fake_adv2), (&adv3, &fake_adv3)] {
        let sent = alice.send_text(to, "my account number is ...").await;
        assert!(refused_by_trust(&sent), "sent to {to}: {sent:?}");
        assert!(
            fake.next_envelope(Duration::from_secs(1)).await.is_none(),
            "nothing reaches the relay's device"
        );
    }
    match alice.send_text(&adv2, "x").await {
        Err(ClientError::Trust(TrustError::DeviceNotInRoster { account, device })) => {
            assert_eq!(account, adv2);
            assert_eq!(device, fake_adv2.id());
        }
        other => panic!("{other:?}"),
    }
    match alice.send_text(&adv3, "x").await {
        Err(ClientError::Trust(TrustError::NotAttested { account })) => assert_eq!(account, adv3),
        other => panic!("{other:?}"),
    }
    let events = alice.take_events();
    assert!(
        events.iter().any(
            |e| matches!(e, Event::TrustRefused { subject, reason } if subject == "adv2" && reason.contains("roster"))
        ),
        "{events:?}"
    );
    // The relay takes no attestation for an account that is not a client.
    assert!(f.ops.attest_begin(&adv3).await.is_err());

    // What the relay's devices send is not accepted as from those accounts.
    forge_to(
        &mut fake_adv2,
        &alice,
        &adv2,
        "please wire the funds to ...",
    )
    .await;
    forge_to(
        &mut fake_ops2,
        &alice,
        &ops2,
        "security check: confirm your code",
    )
    .await;
    let got = alice.receive(true, QUIET).await.unwrap();
    assert!(texts(&got).is_empty(), "{got:?}");
    assert!(
        alice.history().all(|e| e.peer != adv2 && e.peer != ops2),
        "nothing recorded from them"
    );

    // Through the CLI binary: exit 8 (trust), with the reason; nothing sent.
    drop(alice);
    let (code, stdout, stderr) = cli(&alice_home, &["--json", "send", "ops2", "hello"]);
    assert_eq!(code, 8, "stdout: {stdout}\nstderr: {stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains("roster") && all.contains("ops2"),
        "the reason is given: {all}"
    );
    assert!(fake_ops2
        .next_envelope(Duration::from_secs(1))
        .await
        .is_none());
}

/// A client account the relay enrolled its own device into (the real client never
/// enrolled): the advisor refuses it until the firm attests it, sends it nothing and
/// accepts nothing from it (through the CLI: exit 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fabricated_first_device_of_a_client_is_refused_until_attested() {
    let homes = tempfile::tempdir().unwrap();
    let f = firm(homes.path(), &[]).await;
    let carol = f.relay.account("carol", Role::Client).await;
    let adv_id = f.adv.account().unwrap().clone();
    f.relay.assign(&carol, &adv_id).await;
    let mut fake = f.relay.device(&carol, 904).await;
    let mut adv = f.adv;
    let sent = adv.send_text(&carol, "welcome").await;
    assert!(
        matches!(sent, Err(ClientError::Trust(TrustError::NotAttested { ref account })) if account == &carol),
        "{sent:?}"
    );
    assert!(fake.next_envelope(Duration::from_secs(1)).await.is_none());
    forge_to(&mut fake, &adv, &carol, "please change my payout account").await;
    let got = adv.receive(true, QUIET).await.unwrap();
    assert!(texts(&got).is_empty(), "{got:?}");
    assert!(adv.history().all(|e| e.peer != carol));
    // The CLI says it plainly and exits 8.
    drop(adv);
    let (code, stdout, stderr) = cli(&homes.path().join("adv"), &["send", "carol", "hello"]);
    assert_eq!(code, 8, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("waiting for the firm's verification"),
        "{stderr}"
    );
}

/// The attestation end to end: an unattested client is refused by its advisor (and
/// cannot send: it is told it waits for the firm); staff see it in their list; a wrong
/// code is refused and ends the request; with the code the client reads, the staff
/// member attests it and messages flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_trusted_once_staff_attest_it_with_the_code_it_reads() {
    let homes = tempfile::tempdir().unwrap();
    let mut f = firm(homes.path(), &[]).await;
    let bob_id = f.relay.account("bob", Role::Client).await;
    let adv_id = f.adv.account().unwrap().clone();
    f.relay.assign(&bob_id, &adv_id).await;
    let mut bob = org::enrolled(&f.relay, &homes.path().join("bob"), &bob_id, Some(&f.org)).await;

    let sent = f.adv.send_text(&bob_id, "hello bob").await;
    assert!(refused_by_trust(&sent), "{sent:?}");
    let own = bob.send_text(&adv_id, "hello").await;
    assert!(
        matches!(own, Err(ClientError::Trust(TrustError::NotAttested { .. }))),
        "{own:?}"
    );
    // Bob asks; staff see him.
    assert_eq!(
        bob.attestation_status().await.unwrap(),
        AttestStatus::Waiting { code: None }
    );
    let list = f.ops.unattested().await.unwrap();
    let row = list.iter().find(|v| v.account == bob_id).unwrap();
    assert!(row.requested && !row.challenged);

    // A wrong code: refused, the request ends, nothing attested.
    f.ops.attest_begin(&bob_id).await.unwrap();
    let code = match bob.attestation_status().await.unwrap() {
        AttestStatus::Waiting { code: Some(c) } => c,
        other => panic!("{other:?}"),
    };
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    let wrong = format!("{:06}", (digits.parse::<u32>().unwrap() + 1) % 1_000_000);
    assert!(matches!(
        f.ops.attest_confirm(&bob_id, &wrong).await,
        Err(ClientError::CodeMismatch)
    ));
    let list = f.ops.unattested().await.unwrap();
    let row = list.iter().find(|v| v.account == bob_id).unwrap();
    assert!(!row.requested, "the request was ended");
    assert!(refused_by_trust(&f.adv.send_text(&bob_id, "still?").await));

    // The real flow: bob asks again (fresh nonce), staff pick a challenge, bob reads the
    // code, staff type it.
    org::attest(&mut f.ops, &mut bob).await;
    assert!(!f
        .ops
        .unattested()
        .await
        .unwrap()
        .iter()
        .any(|v| v.account == bob_id));
    let report = f.adv.send_text(&bob_id, "welcome, bob").await.unwrap();
    assert_eq!(report.devices, 1);
    let got = bob.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), vec!["welcome, bob".to_owned()]);
    bob.send_text(&adv_id, "thanks").await.unwrap();
    let got = f.adv.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), vec!["thanks".to_owned()]);
}

/// A first device whose genesis entry is dated a day and an hour in the past (the relay
/// allows entries that old here): by its signed date its cooling-off ended an hour ago,
/// but it runs from when the relay appended it. The relay refuses its sensitive kinds and
/// a peer sees it on probation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_dated_in_the_past_is_still_on_probation() {
    use rand::SeedableRng;
    let homes = tempfile::tempdir().unwrap();
    let relay = memory_relay(|c| c.limits.max_log_entry_age_secs = 2 * 24 * 3600).await;
    let dana = relay.account("dana", Role::Client).await;
    let adv = relay.account("adv", Role::Advisor).await;
    relay.assign(&dana, &adv).await;
    let day = sealpost_protocol::trust::DEFAULT_COOLING_OFF_MS;
    let dated = org::now_ms() - day - 3_600_000;
    let before = org::now_ms();
    let identity = sealpost_protocol::IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    // Enrolled now, through the relay, with a genesis entry dated in the past.
    let conn = relay.connect().await;
    let code = relay.code(&dana).await;
    conn.enroll_with_genesis(
        &identity,
        &dana,
        &code,
        genesis_entry(&dana, &identity, dated),
    )
    .await
    .unwrap();
    conn.authenticate(&identity).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut prekeys = sealpost_protocol::PreKeySecrets::new();
    let spk = prekeys.rotate_signed(&identity, &mut rng);
    let otk = prekeys.generate_one_time(&identity, 4, &mut rng);
    let last = prekeys.rotate_kem_last_resort(&identity, &mut rng);
    conn.upload_prekeys(Some(spk), otk, Vec::new(), Some(last))
        .await
        .unwrap();
    let mut device = TestDevice {
        account: dana.clone(),
        identity,
        prekeys,
        conn,
        rng,
    };
    let mut advisor = org::enrolled(&relay, &homes.path().join("adv"), &adv, None).await;

    // The peer: on probation until at least the append time plus the cooling-off.
    let view = advisor.account_devices(&dana).await.unwrap();
    let d = view
        .devices
        .iter()
        .find(|d| d.device == device.id())
        .unwrap();
    assert!(d.on_probation, "{d:?}");
    assert!(d.probation_until_ms >= before + day, "{d:?}");
    assert_eq!(d.added_ms, dated);

    // The relay: an instruction from it is refused (probation), a chat goes through.
    let bundle = device.conn.fetch_bundles(&adv).await.unwrap().remove(0);
    let mut session =
        sealpost_protocol::initiate(&device.identity, &bundle, &mut device.rng).unwrap();
    let header = RoutingHeader::new(
        device.id(),
        advisor.device_id(),
        EnvelopeKind::Instruction,
        org::now_ms(),
        &mut device.rng,
    );
    let env = session
        .seal(header, b"irrelevant", &mut device.rng)
        .unwrap();
    match device.conn.send_envelope(env).await {
        Err(sealpost_client::net::NetError::Refused {
            code: ErrorCode::Forbidden,
            message,
            ..
        }) => assert!(message.contains("probation"), "{message}"),
        other => panic!("an instruction from a device on probation: {other:?}"),
    }
    // The peer: the same instruction relabelled as chat gets past the relay, and the
    // advisor refuses it for the device's probation (not shown, reported).
    let message = Message {
        from: dana.clone(),
        sent_ms: org::now_ms(),
        content: Content::Instruction {
            category: sealpost_protocol::content::InstructionCategory::Withdrawal,
            body: BoundedString::truncating("send everything to ..."),
        },
        views: None,
    };
    let header = RoutingHeader::new(
        device.id(),
        advisor.device_id(),
        EnvelopeKind::Chat,
        org::now_ms(),
        &mut device.rng,
    );
    let env = session
        .seal(header, &message.encode().unwrap(), &mut device.rng)
        .unwrap();
    device.conn.send_envelope(env).await.unwrap();
    let got = advisor.receive(true, QUIET).await.unwrap();
    assert!(
        !got.iter()
            .any(|e| matches!(e, Event::Message { .. } | Event::Instruction { .. })),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Rejected { reason, .. } if reason.contains("probation"))),
        "{got:?}"
    );
}

/// Only a role the roster policy names may attest (advisor and operations by default): a
/// compliance officer's attestation, code and all, is refused by the relay, and the client
/// stays unattested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_by_a_role_the_policy_does_not_name_is_refused() {
    use sealpost_client::net::NetError;
    let homes = tempfile::tempdir().unwrap();
    let mut f = firm(homes.path(), &[]).await;
    let erin_id = f.relay.account("erin", Role::Client).await;
    let adv_id = f.adv.account().unwrap().clone();
    f.relay.assign(&erin_id, &adv_id).await;
    let mut erin =
        org::enrolled(&f.relay, &homes.path().join("erin"), &erin_id, Some(&f.org)).await;
    assert_eq!(
        erin.attestation_status().await.unwrap(),
        AttestStatus::Waiting { code: None }
    );
    let comp = &mut f.others[0];
    comp.attest_begin(&erin_id).await.unwrap();
    let code = match erin.attestation_status().await.unwrap() {
        AttestStatus::Waiting { code: Some(c) } => c,
        other => panic!("{other:?}"),
    };
    match comp.attest_confirm(&erin_id, &code).await {
        Err(ClientError::Net(NetError::Refused {
            code: ErrorCode::Forbidden,
            message,
            ..
        })) => assert!(message.contains("role"), "{message}"),
        other => panic!("a compliance attestation was accepted: {other:?}"),
    }
    assert!(matches!(
        erin.attestation_status().await.unwrap(),
        AttestStatus::Waiting { .. }
    ));
    assert!(refused_by_trust(&f.adv.send_text(&erin_id, "hello").await));
}
