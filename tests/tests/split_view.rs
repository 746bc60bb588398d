//! Split views are detected by the devices that talk (docs/PROTOCOL.md §18.7): every
//! message carries the sender's view of both accounts' device-log heads. Here the relay
//! (its store tampered with, as a compromised relay would) keeps showing a peer the old
//! log of an account whose own devices saw a newer one. Both users are warned on their
//! next exchange, sensitive kinds are refused across that pair (by the sender before
//! sending, and by the receiver), the state survives a restart, and it ends once the
//! relay shows both sides the same log again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sealpost_client::{Client, ClientError, Event};
use sealpost_protocol::content::InstructionCategory;
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::Role;
use sealpost_server::store::memory::MemoryStore;
use sealpost_tests::TestRelay;
use sealpost_tests::{memory_relay, org};

const QUIET: Duration = Duration::from_secs(3);
const CLI: &str = env!("CARGO_BIN_EXE_sealpost-under-test");

struct Pair {
    relay: TestRelay<MemoryStore>,
    homes: tempfile::TempDir,
    alice_id: AccountId,
    adv_id: AccountId,
    alice: Client,
    adv: Client,
    /// The advisor's log entry the relay hides.
    hidden: Vec<(sealpost_protocol::trust::LogEntry, u64)>,
}

/// An organisation (short cooling-off), a client and her advisor who exchanged a first
/// message (each pinned the other's one-entry log); then the advisor's log moves on (a
/// freeze, entry 1) and the relay hides that entry from everyone else: it serves the
/// one-entry log from then on.
async fn split_pair() -> Pair {
    let homes = tempfile::tempdir().unwrap();
    let o = org::TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| c.org_fingerprint = Some(fp)).await;
    let alice_id = relay.account("alice", Role::Client).await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    relay.assign(&alice_id, &adv_id).await;
    // With an organisation, the advisor's device is listed in the roster and the client's
    // first device is attested by the firm (first contact, PROTOCOL.md §19.10).
    let (mut staff, mut advs) =
        org::staff_with_advisors(&relay, homes.path(), &o, "", &[&adv_id]).await;
    let mut adv = advs.remove(0);
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut staff[0], &mut alice).await;
    org::settle().await;
    adv.send_text(&alice_id, "hello").await.unwrap();
    let got = alice.receive(true, QUIET).await.unwrap();
    assert!(splits(&got).is_empty(), "{got:?}");
    let got = adv.receive(true, QUIET).await.unwrap();
    assert!(splits(&got).is_empty(), "{got:?}");
    adv.freeze_account("test: a change the relay hides")
        .await
        .unwrap();
    let hidden = relay.relay.store.cut_device_log_for_tests(&adv_id, 1);
    assert_eq!(hidden.len(), 1);
    Pair {
        relay,
        homes,
        alice_id,
        adv_id,
        alice,
        adv,
        hidden,
    }
}

async fn cli(home: std::path::PathBuf, args: &[&str]) -> (i32, String, String) {
    sealpost_tests::run_cli(CLI, &home, args).await
}

fn splits(events: &[Event]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SplitView {
                reason,
                reported_by_peer,
                ..
            } => Some((reason.clone(), *reported_by_peer)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_view_warns_both_users_and_refuses_sensitive_kinds_across_the_pair() {
    let Pair {
        relay,
        homes,
        alice_id,
        adv_id,
        mut alice,
        mut adv,
        hidden,
    } = split_pair().await;

    // The advisor writes; its message says it sees its own log at entry 1. Alice's
    // device refreshes the log before concluding anything, gets entry 0 again: a split.
    adv.send_text(&alice_id, "your statement").await.unwrap();
    let got = alice.receive(true, QUIET).await.unwrap();
    let seen = splits(&got);
    assert_eq!(seen.len(), 1, "alice is warned: {got:?}");
    assert!(!seen[0].1, "alice's own comparison found it");
    assert!(seen[0].0.contains("entry 1"), "{seen:?}");
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Message { entry } if entry.body == "your statement")),
        "chat still flows: {got:?}"
    );
    assert_eq!(alice.split_views().len(), 1);

    // Alice's delivery receipt carries her view and the split: the advisor is warned on
    // this exchange too.
    let got = adv.receive(true, QUIET).await.unwrap();
    let seen = splits(&got);
    assert_eq!(seen.len(), 1, "the advisor is warned: {got:?}");
    assert!(seen[0].1, "reported by alice's device");

    // Sensitive kinds across the pair: alice's client refuses to send an instruction...
    let refused = alice
        .send_instruction(&adv_id, InstructionCategory::Payment, "pay 10 EUR")
        .await;
    assert!(
        matches!(refused, Err(ClientError::NotAllowed(ref m)) if m.contains("split view")),
        "{refused:?}"
    );
    // ...and one sent regardless (past the local check) is refused by the advisor's
    // device, loudly.
    alice
        .send_instruction_unchecked_for_tests(&adv_id, InstructionCategory::Payment, "pay 10 EUR")
        .await
        .unwrap();
    let got = adv.receive(true, QUIET).await.unwrap();
    assert!(
        got.iter().any(|e| matches!(
            e,
            Event::Rejected { reason, alarm: true, .. } if reason.contains("split view")
        )),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|e| matches!(e, Event::Instruction { .. })),
        "{got:?}"
    );

    // The split state is persisted in the profile.
    drop(alice);
    let mut alice = Client::open(&homes.path().join("alice"), org::PASS).unwrap();
    assert_eq!(alice.split_views().len(), 1);
    alice.connect().await.unwrap();

    // The relay serves the real log again: the next exchange finds the views agreeing,
    // and both sides clear the split.
    relay
        .relay
        .store
        .restore_device_log_for_tests(&adv_id, hidden);
    adv.send_text(&alice_id, "all good").await.unwrap();
    alice.receive(true, QUIET).await.unwrap();
    assert!(alice.split_views().is_empty(), "{:?}", alice.split_views());
    adv.receive(true, QUIET).await.unwrap();
    assert!(adv.split_views().is_empty(), "{:?}", adv.split_views());
}

/// `sealpost inbox` says it loudly: `WARNING:` lines in human mode on the side that
/// detects it, and a `split_view` event with `--json` on the side it is reported to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_inbox_prints_the_split_view_warning() {
    let Pair {
        relay: _relay,
        homes,
        alice_id,
        adv_id: _,
        alice,
        mut adv,
        hidden: _,
    } = split_pair().await;
    adv.send_text(&alice_id, "your statement").await.unwrap();
    drop(alice);
    let (code, stdout, stderr) = cli(homes.path().join("alice"), &["inbox"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("WARNING: SPLIT VIEW with adv"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("your statement"), "{stdout}");
    // Alice's delivery receipt told the advisor's device.
    drop(adv);
    let (code, stdout, stderr) = cli(homes.path().join("adv"), &["--json", "inbox"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let event = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "split_view")
        .unwrap_or_else(|| panic!("no split_view event: {stdout}\n{stderr}"));
    assert_eq!(event["account"], "alice");
    assert_eq!(event["reported_by_peer"], true);
}
