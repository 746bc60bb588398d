//! Devices check the transparency log (docs/PROTOCOL.md §21.6-§21.8), over real QUIC with
//! the relay on SQLite: every device-log head and roster version a device accepts is
//! proven in the log, the checkpoint it holds rides in its messages, and a witness
//! (`audit follow`'s pass, run by the security staff member's device) recomputes the log
//! and cosigns it.
//!
//! The attack: the relay's database is edited (a compromised relay, or its operator
//! rewriting history): one leaf of the log is changed, the checkpoints it signed are
//! deleted, and the relay restarts and signs the rewritten log. A device that accepted a
//! checkpoint before the rewrite can no longer be shown anything; a device that had not
//! yet seen the rewritten part accepts it, and the two detect the split after exchanging
//! one message; the witness refuses to cosign and names the fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sealpost_tests::texts;
use std::time::Duration;

use sealpost_client::witness::{WitnessPass, WitnessRun};
use sealpost_client::{Client, ClientError, Event};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::tlog::{KeyName, LogLeaf, NoteKey, TransparencyPolicy};
use sealpost_protocol::trust::{StaffRole, TrustError};
use sealpost_protocol::wire::Role;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_tests::org::{self, TestOrg};
use sealpost_tests::{sqlite_relay_in, TestRelay};
use tokio::sync::{mpsc, watch};

const QUIET: Duration = Duration::from_secs(3);

/// What a witness task reports after each pass.
type PassResult = Result<WitnessPass, String>;

/// Run witness passes every 300 ms on `sec` until told to stop; report each.
fn spawn_witness(
    mut sec: Client,
) -> (
    watch::Sender<bool>,
    mpsc::UnboundedReceiver<PassResult>,
    tokio::task::JoinHandle<Client>,
) {
    let (stop_tx, mut stop) = watch::channel(false);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut run = WitnessRun::default();
        loop {
            if *stop.borrow() {
                break;
            }
            if !sec.is_connected() {
                let _ = sec.connect().await;
            }
            let r = sec.witness_pass(&mut run).await.map_err(|e| e.to_string());
            if r.is_err() {
                sec.disconnect();
            }
            if tx.send(r).is_err() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop.changed() => {}
            }
        }
        sec
    });
    (stop_tx, rx, task)
}

struct World {
    relay: TestRelay<SqliteStore>,
    org: TestOrg,
    homes: tempfile::TempDir,
    ops: Client,
    comp: Client,
    adv: Client,
    alice: Client,
    alice_id: AccountId,
    adv_id: AccountId,
    witness: (
        watch::Sender<bool>,
        mpsc::UnboundedReceiver<PassResult>,
        tokio::task::JoinHandle<Client>,
    ),
}

/// An organisation whose roster names the relay's log key and the security staff
/// member's witness key (`threshold` cosignatures required); a client attested by
/// operations, assigned to an advisor; the witness running.
async fn world(threshold: u8) -> World {
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
    let mut staff = Vec::new();
    for name in ["ops", "comp", "sec"] {
        let id = relay.account(name, Role::Staff).await;
        staff.push(org::enrolled(&relay, &homes.path().join(name), &id, Some(&o)).await);
    }
    let adv = org::enrolled(&relay, &homes.path().join("adv"), &adv_id, Some(&o)).await;
    let (name, key, _) = staff[2].witness_init("witness.sec.test").unwrap();
    let witness_key =
        NoteKey::new(KeyName::new(&name).unwrap(), &hex::decode(key).unwrap()).unwrap();
    let mut policy = org::quick_policy(org::QUICK_COOLING_OFF_MS);
    policy.transparency = Some(TransparencyPolicy {
        log_keys: vec![relay.relay.tlog.public().clone()],
        witnesses: vec![witness_key],
        witness_threshold: threshold,
    });
    let v1 = o.genesis(
        &[
            (&staff[0], StaffRole::Operations),
            (&staff[1], StaffRole::Compliance),
            (&staff[2], StaffRole::Security),
            (&adv, StaffRole::Advisor),
        ],
        policy,
    );
    let sec = staff.pop().unwrap();
    let witness = spawn_witness(sec);
    let mut comp = staff.pop().unwrap();
    let mut ops = staff.pop().unwrap();
    ops.publish_signed_roster(v1).await.unwrap();
    org::settle().await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&o)).await;
    org::attest(&mut ops, &mut alice).await;
    comp.roster().await.unwrap();
    World {
        relay,
        org: o,
        homes,
        ops,
        comp,
        adv,
        alice,
        alice_id,
        adv_id,
        witness,
    }
}

fn splits(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SplitView { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// Wait until the witness has cosigned a checkpoint of at least `size` leaves.
async fn witnessed(rx: &mut mpsc::UnboundedReceiver<PassResult>, size: u64) -> WitnessPass {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout_at(until, rx.recv())
            .await
            .expect("the witness reports within 20 s")
            .expect("the witness runs");
        if let Ok(p) = r {
            if p.size >= size {
                return p;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_hold_proven_checkpoints_and_the_witness_cosigns_them() {
    let mut w = world(1).await;
    // The advisor writes, the client answers: each proves the other's device log.
    w.adv
        .send_text(&w.alice_id, "hello from your advisor")
        .await
        .unwrap();
    let got = w.alice.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["hello from your advisor"], "{got:?}");
    assert!(splits(&got).is_empty(), "{got:?}");
    w.alice.send_text(&w.adv_id, "thanks").await.unwrap();
    let got = w.adv.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["thanks"], "{got:?}");
    assert!(splits(&got).is_empty(), "{got:?}");
    let leaves = w.relay.relay.tlog.sync(&w.relay.relay.store).await.unwrap();
    assert!(
        leaves >= 8,
        "accounts, codes, devices, roster, attestation: {leaves} leaves"
    );
    for (who, c) in [("alice", &w.alice), ("adv", &w.adv), ("ops", &w.ops)] {
        let held = c.checkpoint_size();
        assert!(
            held > 0 && held <= leaves,
            "{who} holds a checkpoint of {held} leaves"
        );
    }
    // The witness verified every leaf and cosigned; clients (threshold 1) accepted only
    // cosigned checkpoints, so what they hold was witnessed.
    let p = witnessed(&mut w.witness.1, leaves).await;
    assert!(p.size >= leaves);
    // Without the witness, a new head cannot be accepted: "try again", not a verdict (the
    // enrolment itself stands; the device verifies its log once the witness cosigned).
    w.witness.0.send(true).unwrap();
    let sec = w.witness.2.await.unwrap();
    let carl_id = w.relay.account("carl", Role::Client).await;
    let mut carl = Client::init(&w.homes.path().join("carl"), org::PASS).unwrap();
    let code = w.relay.code(&carl_id).await;
    let e = carl
        .enroll(org::relay_info(&w.relay, Some(&w.org)), &carl_id, &code)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout(what) if what.contains("witnesses")),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert_eq!(carl.account(), Some(&carl_id), "enrolled all the same");
    let before = carl.checkpoint_size();
    let (_stop, mut reports, _task) = spawn_witness(sec);
    carl.account_devices(&carl_id).await.unwrap();
    assert!(carl.checkpoint_size() > before);
    let p = witnessed(&mut reports, carl.checkpoint_size()).await;
    assert!(p.size >= carl.checkpoint_size());
    // The same from the command line, as security staff run it: the witness as a process
    // (one pass; it has cosigned everything already) and a client's on-demand check.
    _stop.send(true).unwrap();
    drop(_task.await.unwrap());
    drop(w.alice);
    let (code, out, err) = cli(
        &w.homes.path().join("sec"),
        &["--json", "audit", "follow", "--once"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let pass: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(pass["event"], "witness_pass", "{out}");
    assert!(pass["size"].as_u64().unwrap() >= p.size, "{out}");
    let (code, out, err) = cli(&w.homes.path().join("alice"), &["--json", "whoami"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let who: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(who["transparency"]["configured"], true, "{out}");
    assert_eq!(who["transparency"]["witness_threshold"], 1, "{out}");
    assert!(
        who["transparency"]["checkpoint_size"].as_u64().unwrap() > 0,
        "{out}"
    );
    let (code, out, err) = cli(&w.homes.path().join("alice"), &["--json", "audit", "check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"transparency_checked\""), "{out}");
    drop(w.comp);
}

const CLI: &str = env!("CARGO_BIN_EXE_sealpost-under-test");

async fn cli(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    sealpost_tests::run_cli(CLI, home, args).await
}

/// Rewrite leaf `index` of the stopped relay's log (its time moved by a second: the leaf
/// still records the same event, so proofs of that event still "work" for a device that
/// never saw the original) and delete the checkpoints signed before.
fn rewrite_leaf(db: &std::path::Path, index: u64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "DROP TRIGGER IF EXISTS tlog_leaves_no_update;
         DROP TRIGGER IF EXISTS tlog_leaves_no_delete;
         DELETE FROM tlog_checkpoints;",
    )
    .unwrap();
    let bytes: Vec<u8> = c
        .query_row(
            "SELECT leaf FROM tlog_leaves WHERE idx = ?1",
            [index as i64],
            |r| r.get(0),
        )
        .unwrap();
    let mut leaf = LogLeaf::from_bytes(&bytes).unwrap();
    leaf.time_ms += 1000;
    c.execute(
        "UPDATE tlog_leaves SET leaf = ?1 WHERE idx = ?2",
        rusqlite::params![leaf.to_bytes().unwrap(), index as i64],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_log_is_detected_by_the_witness_and_by_two_devices_after_one_message() {
    // Witness cosignatures not required here, so that a device can be shown the rewritten
    // log at all: the witness and the devices each detect it on their own.
    let mut w = world(0).await;
    w.adv.send_text(&w.alice_id, "first").await.unwrap();
    let got = w.alice.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["first"]);
    let alice_held = w.alice.checkpoint_size();
    assert!(alice_held > 0);
    // The advisor's log moves on (a freeze, entry 1): the advisor accepts a larger
    // checkpoint than the client holds. He writes to her before anything else happens.
    w.adv
        .freeze_account("test: the log moves on")
        .await
        .unwrap();
    let adv_held = w.adv.checkpoint_size();
    assert!(adv_held > alice_held, "{adv_held} > {alice_held}");
    let p = witnessed(&mut w.witness.1, adv_held).await;
    assert!(p.size >= adv_held);
    w.adv.send_text(&w.alice_id, "second").await.unwrap();
    // The relay rewrites the last leaf the advisor saw (one the client never saw) and
    // restarts.
    w.witness.0.send(true).unwrap();
    let sec = w.witness.2.await.unwrap();
    let dir = w.relay.stop().await;
    rewrite_leaf(&dir.path().join("data").join("relay.sqlite3"), adv_held - 1);
    let fp = w.org.fingerprint();
    let relay = sqlite_relay_in(dir, |c| c.org_fingerprint = Some(fp)).await;
    for c in [&mut w.alice, &mut w.adv, &mut w.ops] {
        c.relay_override_for_tests(org::relay_info(&relay, Some(&w.org)));
        c.connect().await.unwrap();
    }
    // The witness (its run still holds the leaves it verified) refuses, naming the fault.
    let mut sec = sec;
    sec.relay_override_for_tests(org::relay_info(&relay, Some(&w.org)));
    sec.connect().await.unwrap();
    let mut run = WitnessRun::default();
    let e = sec.witness_pass(&mut run).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Trust(TrustError::Transparency(r)) if r.contains("rewritten") || r.contains("changed")),
        "{e:?}"
    );
    // The client never saw the rewritten leaf: she accepts the rewritten log, and the
    // advisor's message (carrying his checkpoint) shows her the split.
    let got = w.alice.receive(true, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["second"], "{got:?}");
    let s = splits(&got);
    assert_eq!(s.len(), 1, "{got:?}");
    assert!(s[0].contains("transparency log"), "{s:?}");
    // Her answer shows him the split too.
    w.alice
        .send_text(&w.adv_id, "are you there?")
        .await
        .unwrap();
    let got = w.adv.receive(true, QUIET).await.unwrap();
    let s = splits(&got);
    assert_eq!(s.len(), 1, "{got:?}");
    assert!(
        s[0].contains("different logs") || s[0].contains("not a prefix"),
        "{s:?}"
    );
    // Every device that accepted a checkpoint over the rewritten leaf is refused the next
    // time it checks (here on demand, as `sealpost audit check` does); one that had not
    // yet reached it accepts the rewritten log, which is why messages carry checkpoints.
    let e = w.adv.check_transparency().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Trust(TrustError::Transparency(r)) if r.contains("not a prefix") || r.contains("different roots")),
        "{e:?}"
    );
    assert!(w.alice.check_transparency().await.unwrap() >= adv_held);
    drop(w.comp);
    drop(relay);
}
