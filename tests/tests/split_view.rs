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
use sealpost_protocol::wire::Role;
use sealpost_tests::{memory_relay, org};

const QUIET: Duration = Duration::from_secs(3);

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
    let homes = tempfile::tempdir().unwrap();
    // An organisation whose roster has a short cooling-off, so that the advisor's first
    // device may change its log (and alice's may send instructions) after a moment.
    let o = org::TestOrg::new();
    let fp = o.fingerprint();
    let relay = memory_relay(|c| c.org_fingerprint = Some(fp)).await;
    let _staff = org::staff(&relay, homes.path(), &o, "").await;
    let alice_id = relay.account("alice", Role::Client).await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    relay.assign(&alice_id, &adv_id).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    let mut adv = org::enrolled(&relay, &homes.path().join("adv"), &adv_id, Some(&o)).await;
    org::settle().await;

    // A first exchange: each side verifies (and pins) the other's one-entry log, and
    // the views agree.
    adv.send_text(&alice_id, "hello").await.unwrap();
    let got = alice.receive(true, QUIET).await.unwrap();
    assert!(splits(&got).is_empty(), "{got:?}");
    let got = adv.receive(true, QUIET).await.unwrap();
    assert!(splits(&got).is_empty(), "{got:?}");

    // The advisor's log moves on (a freeze, entry 1), and the relay then hides that entry
    // from everyone else: from now on it serves the one-entry log.
    adv.freeze_account("test: a change the relay hides")
        .await
        .unwrap();
    let hidden = relay.relay.store.cut_device_log_for_tests(&adv_id, 1);
    assert_eq!(hidden.len(), 1);

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
