//! The firm's compliance archive on the devices (issue 11; docs/PROTOCOL.md §22), over
//! real QUIC to a relay on SQLite: every message between a client and the firm is also
//! sealed to the archive device the verified roster names, received there exactly once;
//! an archive identity the relay substitutes is refused; what a device does when the
//! archive cannot take its copy follows the roster (`refuse`: nothing sent; `queue`: the
//! copy waits durably in the profile and is handed over later); the archive's
//! disclosure and a change of it are shown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sealpost_client::archive::ArchivedMessage;
use sealpost_client::client::ClientError;
use sealpost_client::{Client, Event};
use sealpost_protocol::content::Content;
use sealpost_protocol::trust::{ArchiveUnreachable, TrustError};
use sealpost_tests::firm::{firm, DISCLOSURE, WAIT};
use sealpost_tests::org;
use sealpost_tests::texts;

fn text_of(c: &Content) -> Option<&str> {
    match c {
        Content::Text { body } => Some(body.as_str()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_between_a_client_and_the_firm_reaches_the_archive_once() {
    let mut f = firm(ArchiveUnreachable::Refuse, true).await;
    let adv = f.adv.account().unwrap().clone();
    let alice = f.alice.account().unwrap().clone();
    // The disclosure: the client's device shows the archive the roster names.
    let view = f.alice.archive_view().expect("recorded");
    assert_eq!(view.disclosure, DISCLOSURE);
    assert_eq!(view.account, f.archive_account);
    assert_eq!(
        view.fingerprint,
        f.archive
            .as_ref()
            .unwrap()
            .identity()
            .fingerprint()
            .to_string()
    );
    assert!(!f.alice.is_archive_device());

    let sent = f
        .alice
        .send_text(&adv, "please sell 100 XYZ")
        .await
        .unwrap();
    let got = f.adv.receive(true, WAIT).await.unwrap();
    assert_eq!(texts(&got), ["please sell 100 XYZ"]);
    f.adv.send_text(&alice, "done at 41.20").await.unwrap();
    let got = f.alice.receive(true, WAIT).await.unwrap();
    assert_eq!(texts(&got), ["done at 41.20"]);
    // Delivery receipts went both ways in those passes; let the advisor take hers.
    f.adv.receive(true, WAIT).await.unwrap();

    let archived = f.drain_archive().await;
    assert!(f.archive.as_ref().unwrap().is_archive_device());
    let texts_archived: Vec<(&str, &str, &str)> = archived
        .iter()
        .filter_map(|a| text_of(&a.content).map(|t| (a.from.as_str(), a.to.as_str(), t)))
        .collect();
    assert_eq!(
        texts_archived,
        [
            ("alice", "adv", "please sell 100 XYZ"),
            ("adv", "alice", "done at 41.20")
        ]
    );
    let first = archived
        .iter()
        .find(|a| text_of(&a.content) == Some("please sell 100 XYZ"))
        .unwrap();
    assert_eq!(
        first.message_id, sent.message_id,
        "the same id as the original"
    );
    assert_eq!(first.device, f.alice.device_id());
    assert!(!first.original.is_empty());
    // Receipts are archived too, each once.
    let receipts = archived
        .iter()
        .filter(|a| matches!(a.content, Content::Receipt { .. }))
        .count();
    assert!(receipts >= 2, "{archived:?}");
    let mut ids: Vec<_> = archived.iter().map(|a| (a.device, a.message_id)).collect();
    let n = ids.len();
    ids.sort_by_key(|(d, m)| (d.0, m.0));
    ids.dedup();
    assert_eq!(ids.len(), n, "nothing twice");
    // Nothing more on a second pass (acknowledged after the sink took it).
    f.archived.lock().unwrap().clear();
    assert!(f.drain_archive().await.is_empty());
    // Staff between themselves are not recorded (not a client conversation); the archive
    // device itself never is a recipient of ordinary copies.
    assert!(f.adv.archive_queue().is_empty() && f.alice.archive_queue().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_policy_sends_nothing_while_the_archive_cannot_take_its_copy() {
    // The archive account exists but no archive device is enrolled: no bundle.
    let mut f = firm(ArchiveUnreachable::Refuse, false).await;
    let adv = f.adv.account().unwrap().clone();
    let err = f.alice.send_text(&adv, "transfer 5000").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Trust(TrustError::ArchiveSubstituted { offered: 0, .. })
        ),
        "{err:?}"
    );
    let got = f.adv.receive(true, WAIT).await.unwrap();
    assert!(texts(&got).is_empty(), "nothing was sent: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_substituting_the_archive_identity_is_refused() {
    let mut f = firm(ArchiveUnreachable::Refuse, false).await;
    let adv = f.adv.account().unwrap().clone();
    // The relay's operator enrols a device of its own under the archive account.
    let mut fake = Client::init(&f.homes.path().join("fake-archive"), org::PASS).unwrap();
    let code = f.relay.code(&f.archive_account).await;
    fake.enroll(
        org::relay_info(&f.relay, Some(&f.org)),
        &f.archive_account,
        &code,
    )
    .await
    .unwrap();
    let err = f.alice.send_text(&adv, "my password is").await.unwrap_err();
    match err {
        ClientError::Trust(TrustError::ArchiveSubstituted {
            offered,
            fingerprint,
            ..
        }) => {
            assert_eq!(offered, 1);
            assert_ne!(fingerprint, fake.identity().fingerprint().to_string());
        }
        other => panic!("{other:?}"),
    }
    let events = f.alice.take_events();
    assert!(
        events.iter().any(
            |e| matches!(e, Event::UntrustedDevice { device, .. } if *device == fake.device_id())
        ),
        "{events:?}"
    );
    // Nothing reached the advisor, nor the fake archive.
    assert!(texts(&f.adv.receive(true, WAIT).await.unwrap()).is_empty());
    let on_fake = fake.receive(true, WAIT).await.unwrap();
    assert!(
        on_fake.iter().all(|e| !matches!(e, Event::Archived { .. })),
        "{on_fake:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_policy_sends_and_hands_the_copy_over_later_even_after_a_restart() {
    let mut f = firm(ArchiveUnreachable::Queue, false).await;
    let adv = f.adv.account().unwrap().clone();
    let report = f
        .alice
        .send_text(&adv, "queued for the archive")
        .await
        .unwrap();
    assert!(
        report
            .events
            .iter()
            .any(|e| matches!(e, Event::ArchiveQueued { waiting: 1, .. })),
        "{:?}",
        report.events
    );
    assert_eq!(
        texts(&f.adv.receive(true, WAIT).await.unwrap()),
        ["queued for the archive"]
    );
    assert_eq!(f.alice.archive_queue().len(), 1);
    // Durable: the queue is in the profile.
    f.alice.disconnect();
    let home = f.homes.path().join("alice");
    let alice = std::mem::replace(
        &mut f.alice,
        Client::init(&f.homes.path().join("tmp"), org::PASS).unwrap(),
    );
    drop(alice);
    f.alice = Client::open(&home, org::PASS).unwrap();
    assert_eq!(f.alice.archive_queue().len(), 1);
    assert_eq!(f.alice.archive_queue()[0].message_id, report.message_id);
    // The archive device comes: enrolled with the identity the roster names.
    let mut archive = Client::open(&f.homes.path().join("archive"), org::PASS).unwrap();
    let code = f.relay.code(&f.archive_account).await;
    archive
        .enroll(
            org::relay_info(&f.relay, Some(&f.org)),
            &f.archive_account,
            &code,
        )
        .await
        .unwrap();
    let sink = f.archived.clone();
    archive.set_archive_sink(Box::new(move |b: &[ArchivedMessage]| {
        sink.lock().unwrap().extend_from_slice(b);
        Ok(())
    }));
    f.archive = Some(archive);
    // The client's next receive pass hands the queued copy over.
    f.alice.connect().await.unwrap();
    f.alice.receive(true, WAIT).await.unwrap();
    assert!(f.alice.archive_queue().is_empty());
    let archived = f.drain_archive().await;
    assert!(
        archived.iter().any(|a| a.message_id == report.message_id
            && text_of(&a.content) == Some("queued for the archive")),
        "{archived:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_in_the_roster_is_announced_and_shown_with_every_conversation() {
    let mut f = firm(ArchiveUnreachable::Queue, true).await;
    // Enrolment verified roster version 1: the archive was announced on the client (the
    // CLI prints it at enrolment; the library keeps it until asked).
    let announced: Vec<Event> = f
        .alice
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::ArchiveChanged { .. }))
        .collect();
    let fp = f.alice.archive_view().unwrap().fingerprint;
    match announced.as_slice() {
        [Event::ArchiveChanged {
            roster_version: 1,
            before: None,
            after: Some(after),
            disclosure: Some(d),
        }] => {
            assert_eq!(after, &fp);
            assert_eq!(d, DISCLOSURE);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.alice.archive_view().unwrap().unreachable, "queue");
    // The CLI shows it wherever a conversation is: `whoami` and `inbox` (text and JSON).
    let home = f.homes.path().join("alice");
    f.alice.disconnect();
    drop(std::mem::replace(
        &mut f.alice,
        Client::init(&f.homes.path().join("placeholder"), org::PASS).unwrap(),
    ));
    let bin = env!("CARGO_BIN_EXE_sealpost-under-test");
    let (code, out, err) = sealpost_tests::run_cli(bin, &home, &["--json", "whoami"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let who: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(who["archive"]["recorded"], true, "{who}");
    assert_eq!(who["archive"]["fingerprint"], fp.as_str());
    assert_eq!(who["archive"]["disclosure"], DISCLOSURE);
    let (code, out, err) = sealpost_tests::run_cli(bin, &home, &["inbox"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "recorded: {DISCLOSURE} (the firm's archive, fingerprint {fp})"
        )),
        "{out}"
    );
    let (code, out, err) = sealpost_tests::run_cli(bin, &home, &["--json", "inbox"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("\"event\":\"recorded\"") && l.contains(DISCLOSURE)),
        "{out}"
    );
    // A client enrolling with the CLI is told before anything else is possible.
    let carol = f
        .relay
        .account("carol", sealpost_protocol::wire::Role::Client)
        .await;
    f.relay.assign(&carol, f.adv.account().unwrap()).await;
    let carol_home = f.homes.path().join("carol");
    let (code, out, err) = sealpost_tests::run_cli(bin, &carol_home, &["init"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let info = org::relay_info(&f.relay, Some(&f.org));
    let enrol_code = f.relay.code(&carol).await;
    let (code, out, err) = sealpost_tests::run_cli(
        bin,
        &carol_home,
        &[
            "enroll",
            "--relay",
            &info.addr,
            "--ca",
            &info.ca_fingerprint,
            "--org",
            info.org_fingerprint.as_deref().unwrap(),
            "--account",
            "carol",
            "--code",
            &enrol_code,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "recorded: {DISCLOSURE} (the firm's archive, fingerprint {fp})"
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_change_of_the_archive_is_announced_and_followed_not_the_relay() {
    let mut f = firm(ArchiveUnreachable::Queue, true).await;
    let old = f
        .archive
        .as_ref()
        .unwrap()
        .identity()
        .fingerprint()
        .to_string();
    f.alice.take_events();
    f.adv.take_events();
    // Version 2 names another archive device, and `refuse`: through the roster-change
    // quorum (ops proposes, comp and sec approve).
    let new_archive =
        sealpost_protocol::identity::IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    let head = f.staff[0].roster().await.unwrap().unwrap().head().clone();
    let mut policy = head.policy().clone();
    let a = policy.archive.as_mut().unwrap();
    a.identity = new_archive.public().clone();
    a.unreachable = ArchiveUnreachable::Refuse;
    let next = head
        .next(org::now_ms(), head.staff().to_vec(), policy)
        .unwrap();
    let view = f.staff[0].propose_roster(next).await.unwrap();
    for i in [1, 2] {
        f.staff[i].receive(true, WAIT).await.unwrap();
        f.staff[i].approve(&view.request_id).await.unwrap();
    }
    let done = f.staff[0].receive(true, WAIT).await.unwrap();
    assert!(
        done.iter()
            .any(|e| matches!(e, Event::OperationCompleted { .. })),
        "{done:?}"
    );
    // Every device announces it when it verifies version 2.
    let new = new_archive.public().fingerprint().to_string();
    for c in [&mut f.alice, &mut f.adv] {
        c.roster().await.unwrap();
        let announced: Vec<Event> = c
            .take_events()
            .into_iter()
            .filter(|e| matches!(e, Event::ArchiveChanged { .. }))
            .collect();
        match announced.as_slice() {
            [Event::ArchiveChanged {
                roster_version: 2,
                before: Some(b),
                after: Some(a),
                ..
            }] => {
                assert_eq!(b, &old);
                assert_eq!(a, &new);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.archive_view().unwrap().unreachable, "refuse");
    }
    // Devices follow the roster, not the relay: the relay still offers the old archive's
    // device only, and nothing is sealed to it any more.
    let adv = f.adv.account().unwrap().clone();
    let err = f
        .alice
        .send_text(&adv, "after the change")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Trust(TrustError::ArchiveSubstituted { offered: 1, .. })
        ),
        "{err:?}"
    );
}

/// What a peer can send the relay about the archive, refused with its reason: another
/// kind to the archive, an archive copy to anyone else, anything from the archive
/// account, and an anchor from any account but the archive's (docs/PROTOCOL.md §22.2,
/// §22.6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_routes_archive_copies_only_to_the_archive_and_takes_anchors_only_from_it() {
    use sealpost_client::net::NetError;
    use sealpost_protocol::envelope::{Envelope, EnvelopeKind, RoutingHeader};
    use sealpost_protocol::wire::{ErrorCode, Role};
    let f = firm(ArchiveUnreachable::Refuse, false).await;
    let adv_device = f.adv.device_id();
    let mallory_id = f.relay.account("mallory", Role::Client).await;
    f.relay.assign(&mallory_id, f.adv.account().unwrap()).await;
    let mut mallory = f.relay.device(&mallory_id, 31).await;
    let mut archive = f.relay.device(&f.archive_account, 32).await;
    let envelope = |from: &mut sealpost_tests::TestDevice, to, kind| Envelope {
        header: RoutingHeader::new(from.id(), to, kind, org::now_ms(), &mut rand::rngs::OsRng),
        body: vec![0; 64],
    };
    fn refused<T: std::fmt::Debug>(r: Result<T, NetError>, why: &str) {
        match r {
            Err(NetError::Refused {
                code: ErrorCode::Forbidden,
                message,
                ..
            }) => assert!(message.contains(why), "{message}"),
            other => panic!("expected forbidden ({why}): {other:?}"),
        }
    }
    let archive_device = archive.id();
    let e = envelope(&mut mallory, archive_device, EnvelopeKind::Chat);
    refused(
        mallory.conn.send_envelope(e).await,
        "takes only archive copies",
    );
    let e = envelope(&mut mallory, adv_device, EnvelopeKind::Archive);
    refused(
        mallory.conn.send_envelope(e).await,
        "go only to the archive",
    );
    let e = envelope(&mut archive, adv_device, EnvelopeKind::Chat);
    refused(archive.conn.send_envelope(e).await, "sends nothing");
    refused(
        mallory.conn.anchor_archive(3, [1; 32]).await,
        "only the firm's archive",
    );
    // An archive copy to the archive is accepted; so is the archive's own anchor.
    let e = envelope(&mut mallory, archive_device, EnvelopeKind::Archive);
    mallory.conn.send_envelope(e).await.unwrap();
    let index = archive.conn.anchor_archive(3, [1; 32]).await.unwrap();
    use sealpost_server::store::tlog::TlogStore;
    let leaves = f.relay.relay.store.leaves(index, 1).await.unwrap();
    let leaf = sealpost_protocol::tlog::LogLeaf::from_bytes(&leaves[0].1).unwrap();
    assert_eq!(
        leaf.event,
        sealpost_protocol::tlog::LeafEvent::ArchiveHead {
            seq: 3,
            hash: [1; 32]
        }
    );
}
