//! The receiving device never loses an accepted message (docs/PROTOCOL.md §18.3): the
//! relay, a separate process, is SIGKILLed at random moments while a device drains its
//! mailbox (the receiving "process" stops at that moment too: its client is dropped and
//! its profile reopened from disk), senders carry on between kills, and every envelope the
//! relay accepted ends up in the receiver's history exactly once. The same with the
//! control-request rate limit lowered until sender checks are refused; and a first
//! message whose sender check failed for a transient reason is shown once the relay
//! answers, and so are the sender's later messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealpost_client::client::{Direction, RelayInfo};
use sealpost_client::{Client, Event};
use sealpost_protocol::envelope::MessageId;
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::Role;
use sealpost_server::admin;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::MailboxStore;
use sealpost_tests::memory_relay;
use sealpost_tests::process::{write_config_with, RelayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");
const PASS: &str = "receive test passphrase";

fn info(relay: &RelayProcess) -> RelayInfo {
    RelayInfo {
        addr: relay.addr.to_string(),
        server_name: "localhost".into(),
        ca_fingerprint: hex::encode(relay.ca_fingerprint),
        org_fingerprint: None,
    }
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    homes: PathBuf,
    receiver: AccountId,
    senders: Vec<(AccountId, String)>,
    receiver_code: String,
}

/// Accounts (one advisor receiving, `n` clients sending) and their enrolment codes,
/// written into the relay's database before it first starts.
async fn setup(n: usize, limits: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), None, limits);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let homes = dir.path().join("homes");
    let store = SqliteStore::open(&dir.path().join("data").join("relay.sqlite3")).unwrap();
    let receiver = AccountId::new("rx.advisor").unwrap();
    admin::create_account(&store, &receiver, Role::Advisor)
        .await
        .unwrap();
    let receiver_code = admin::issue_code(&store, &receiver, 3600)
        .await
        .unwrap()
        .code;
    let mut senders = Vec::new();
    for i in 0..n {
        let a = AccountId::new(&format!("sender{i}")).unwrap();
        admin::create_account(&store, &a, Role::Client)
            .await
            .unwrap();
        admin::assign(&store, &a, &receiver).await.unwrap();
        let code = admin::issue_code(&store, &a, 3600).await.unwrap().code;
        senders.push((a, code));
    }
    store.flush().await.unwrap();
    drop(store);
    Setup {
        dir,
        config,
        homes,
        receiver,
        senders,
        receiver_code,
    }
}

async fn enroll(home: &Path, relay: &RelayProcess, account: &AccountId, code: &str) -> Client {
    let mut c = Client::init(home, PASS).unwrap();
    c.enroll(info(relay), account, code).await.unwrap();
    c
}

/// Incoming history entries of the profile in `home`, counted by message id.
fn history_counts(home: &Path) -> BTreeMap<MessageId, usize> {
    let c = Client::open(home, PASS).unwrap();
    let mut counts = BTreeMap::new();
    for e in c.history().filter(|e| e.direction == Direction::In) {
        *counts.entry(e.id).or_insert(0) += 1;
    }
    counts
}

struct Outcome {
    accepted: Vec<MessageId>,
    held_seen: usize,
}

/// `cycles` kill cycles: in each, the relay starts, the active senders send two messages
/// each while the receiver (reopened from disk) connects and drains, and the relay is
/// SIGKILLed at a random moment; shortly after, the senders and the receiver are stopped
/// wherever they are (a dead relay is otherwise noticed only at the QUIC idle timeout),
/// and the receiver's next cycle reopens its profile from disk. Sender `i`
/// sends its first message in cycle `i * cycles / senders`, so first messages (new
/// sessions) meet the kills too. Then the relay runs undisturbed until the receiver's
/// history holds every accepted message; each must be there exactly once.
async fn kill_cycles(limits: &str, cycles: usize, seed: u64) -> Outcome {
    let s = setup(3, limits).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let rx_home = s.homes.join("rx");
    let relay = RelayProcess::start(Path::new(BIN), &s.config, &[]);
    drop(enroll(&rx_home, &relay, &s.receiver, &s.receiver_code).await);
    let mut senders = Vec::new();
    for (i, (a, code)) in s.senders.iter().enumerate() {
        senders.push(enroll(&s.homes.join(format!("s{i}")), &relay, a, code).await);
    }
    for c in &mut senders {
        c.disconnect();
    }
    relay.kill();
    let receiver = s.receiver.clone();
    let mut accepted: Vec<MessageId> = Vec::new();
    let mut held_seen = 0usize;
    let n_senders = senders.len();
    let started = Instant::now();
    for cycle in 0..cycles {
        let relay = RelayProcess::start(Path::new(BIN), &s.config, &[]);
        let relay_info = info(&relay);
        let active = (0..n_senders)
            .filter(|i| cycle >= i * cycles / n_senders)
            .count();
        let mut batch: Vec<Client> = std::mem::take(&mut senders);
        let to = receiver.clone();
        let ri = relay_info.clone();
        // The kill lands anywhere from before the receiver authenticates to after it
        // drained; both sides stop shortly after it (a dead relay is otherwise only
        // noticed at the QUIC idle timeout).
        let delay = Duration::from_millis(rng.gen_range(100..2500));
        let kill_at = tokio::time::Instant::now() + delay;
        let stop_at = kill_at + Duration::from_millis(300);
        // Every sender on its own task, all at once.
        let send_tasks: Vec<_> = batch
            .drain(..)
            .enumerate()
            .map(|(i, mut c)| {
                let to = to.clone();
                let ri = ri.clone();
                tokio::spawn(async move {
                    let mut ok = Vec::new();
                    if i < active {
                        let _ = tokio::time::timeout_at(stop_at, async {
                            c.relay_override_for_tests(ri);
                            if c.connect().await.is_err() {
                                return;
                            }
                            for k in 0..2 {
                                let text = format!("cycle {cycle} sender {i} message {k}");
                                match c.send_text(&to, &text).await {
                                    Ok(report) => ok.push(report.message_id),
                                    Err(_) => break,
                                }
                            }
                        })
                        .await;
                    }
                    c.disconnect();
                    (c, ok)
                })
            })
            .collect();
        let home = rx_home.clone();
        let ri = relay_info.clone();
        let receive_task = tokio::spawn(async move {
            let mut c = Client::open(&home, PASS).unwrap();
            c.relay_override_for_tests(ri);
            let _ = tokio::time::timeout_at(stop_at, async {
                c.connect().await?;
                c.receive(true, Duration::from_secs(2)).await
            })
            .await;
            // Dropped here whatever happened: the next cycle reopens the profile from
            // disk, as a new `sealpost inbox` would.
            c.held().len()
        });
        tokio::time::sleep_until(kill_at).await;
        relay.kill();
        for t in send_tasks {
            let (c, ok) = t.await.unwrap();
            senders.push(c);
            accepted.extend(ok);
        }
        held_seen += receive_task.await.unwrap();
    }
    eprintln!(
        "{cycles} kill cycles in {:?}: {} messages accepted, {held_seen} holds seen",
        started.elapsed(),
        accepted.len()
    );
    // The relay now runs undisturbed, and answers (the lowered limit, if any, is lifted:
    // under it a device that reconnects for every pass can spend each refill on the
    // connection itself): everything accepted reaches the history.
    let config = write_config_with(s.dir.path(), None, "");
    let relay = RelayProcess::start(Path::new(BIN), &config, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        {
            let mut c = Client::open(&rx_home, PASS).unwrap();
            c.relay_override_for_tests(info(&relay));
            if tokio::time::timeout(Duration::from_secs(20), c.connect())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                if let Ok(Ok(evs)) = tokio::time::timeout(
                    Duration::from_secs(20),
                    c.receive(true, Duration::from_secs(3)),
                )
                .await
                {
                    held_seen += evs
                        .iter()
                        .filter(|e| matches!(e, Event::Held { .. }))
                        .count();
                }
            }
        }
        let counts = history_counts(&rx_home);
        let missing: Vec<&MessageId> = accepted
            .iter()
            .filter(|id| !counts.contains_key(id))
            .collect();
        let twice: Vec<(&MessageId, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "shown more than once: {twice:?}");
        if missing.is_empty() {
            break;
        }
        let held: Vec<MessageId> = Client::open(&rx_home, PASS)
            .unwrap()
            .held()
            .iter()
            .map(|h| h.id)
            .collect();
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted messages never reached the receiver's history: {missing:?} \
             (held: {held:?})",
            missing.len(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let counts = history_counts(&rx_home);
    assert_eq!(
        counts.len(),
        counts.values().filter(|n| **n == 1).count(),
        "every message shown exactly once"
    );
    drop(relay);
    Outcome {
        accepted,
        held_seen,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_while_draining_loses_no_accepted_message() {
    let out = kill_cycles("", 50, 7).await;
    assert!(
        out.accepted.len() >= 60,
        "enough messages got through to mean something: {}",
        out.accepted.len()
    );
}

/// The same with the per-device control-request limit lowered until the receiver's
/// sender checks (device-log fetches) are refused with `rate_limited`: refused checks
/// hold messages, never drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_sender_checks_lose_no_accepted_message() {
    let out = kill_cycles(
        "control_requests_per_device = { per_second = 0.5, burst = 8.0 }\n",
        50,
        11,
    )
    .await;
    assert!(
        out.accepted.len() >= 50,
        "enough messages got through to mean something: {}",
        out.accepted.len()
    );
    assert!(
        out.held_seen > 0,
        "the limit was meant to refuse some sender checks"
    );
}

/// A first message (a new session) whose sender check is refused for a while
/// (`rate_limited`) is held, not dropped: shown once the relay answers, and the sender's
/// later messages are shown too (its base key and session were kept together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_held_by_a_transient_failure_is_shown_with_the_later_ones() {
    use sealpost_server::limits::Rate;
    let homes = tempfile::tempdir().unwrap();
    let relay = memory_relay(|c| {
        // Burst enough for enrolment and a connection; refilled slowly.
        c.limits.control_requests_per_device = Rate::new(1.0, 12.0);
    })
    .await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    let cli_id = relay.account("cli", Role::Client).await;
    relay.assign(&cli_id, &adv_id).await;
    let mut adv =
        sealpost_tests::org::enrolled(&relay, &homes.path().join("adv"), &adv_id, None).await;
    let mut cli =
        sealpost_tests::org::enrolled(&relay, &homes.path().join("cli"), &cli_id, None).await;
    let first = cli.send_text(&adv_id, "first contact").await.unwrap();
    // The advisor spends its control budget: its next device-log fetch is refused.
    let mut refused = false;
    for _ in 0..40 {
        if adv.own_devices().await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the limit never refused a request");
    let got = adv
        .receive(false, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        got.iter().any(
            |e| matches!(e, Event::Held { message_id, .. } if *message_id == first.message_id)
        ),
        "the first message is held while its sender cannot be checked: {got:?}"
    );
    assert!(
        !got.iter()
            .any(|e| matches!(e, Event::Rejected { .. } | Event::Message { .. })),
        "{got:?}"
    );
    assert_eq!(adv.held().len(), 1);
    // Held durably: a restart of the advisor's device keeps it (it was acknowledged).
    drop(adv);
    let mut adv = Client::open(&homes.path().join("adv"), sealpost_tests::org::PASS).unwrap();
    assert_eq!(adv.held().len(), 1);
    // Once the relay answers again, it is shown; so are the later messages.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut later_sent = false;
    let incoming = |c: &Client| -> Vec<String> {
        c.history()
            .filter(|e| e.direction == Direction::In)
            .map(|e| e.body.clone())
            .collect()
    };
    while incoming(&adv).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "shown so far: {:?}, held: {:?}",
            incoming(&adv),
            adv.held()
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        if !later_sent {
            later_sent = cli.send_text(&adv_id, "second").await.is_ok()
                && cli.send_text(&adv_id, "third").await.is_ok();
        }
        match adv.connect().await {
            Ok(()) => {
                let got = adv.receive(false, Duration::from_secs(2)).await;
                eprintln!(
                    "receive: {got:?} held: {:?}",
                    adv.held()
                        .iter()
                        .map(|h| h.reason.clone())
                        .collect::<Vec<_>>()
                );
                adv.disconnect();
            }
            Err(e) => eprintln!("connect: {e}"),
        }
    }
    let mut shown = incoming(&adv);
    shown.sort();
    assert_eq!(shown, vec!["first contact", "second", "third"]);
    assert!(adv.held().is_empty());
    let n = adv
        .history()
        .filter(|e| e.direction == Direction::In)
        .count();
    assert_eq!(n, 3, "each shown exactly once");
}

/// When the hold store is full, a message that needs holding is neither committed nor
/// acknowledged: the relay keeps it and delivers it again on the next connection, and the
/// redelivery (a new session's initial message, whose base key and prekeys were left
/// untouched) opens and is shown then, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hold_store_leaves_messages_unacknowledged_at_the_relay() {
    use sealpost_server::limits::Rate;
    let homes = tempfile::tempdir().unwrap();
    let relay = memory_relay(|c| {
        c.limits.control_requests_per_device = Rate::new(1.0, 12.0);
    })
    .await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    let cli_id = relay.account("cli", Role::Client).await;
    relay.assign(&cli_id, &adv_id).await;
    let mut adv =
        sealpost_tests::org::enrolled(&relay, &homes.path().join("adv"), &adv_id, None).await;
    let mut cli =
        sealpost_tests::org::enrolled(&relay, &homes.path().join("cli"), &cli_id, None).await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(cli.send_text(&adv_id, text).await.unwrap().message_id);
    }
    adv.set_max_held_for_tests(1);
    let mut refused = false;
    for _ in 0..40 {
        if adv.own_devices().await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the limit never refused a request");
    let got = adv
        .receive(false, Duration::from_millis(300))
        .await
        .unwrap();
    let held: Vec<MessageId> = got
        .iter()
        .filter_map(|e| match e {
            Event::Held { message_id, .. } => Some(*message_id),
            _ => None,
        })
        .collect();
    let full: Vec<MessageId> = got
        .iter()
        .filter_map(|e| match e {
            Event::HoldFull { message_id, .. } => Some(*message_id),
            _ => None,
        })
        .collect();
    assert_eq!(held, vec![ids[0]], "{got:?}");
    assert_eq!(full, vec![ids[1], ids[2]], "{got:?}");
    assert_eq!(adv.held().len(), 1);
    // The relay still has the two it was not told to delete.
    adv.disconnect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let incoming = |c: &Client| -> Vec<MessageId> {
        c.history()
            .filter(|e| e.direction == Direction::In)
            .map(|e| e.id)
            .collect()
    };
    while incoming(&adv).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "shown so far: {:?}, held: {:?}",
            incoming(&adv),
            adv.held()
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        if adv.connect().await.is_ok() {
            let _ = adv.receive(true, Duration::from_secs(2)).await;
            adv.disconnect();
        }
    }
    let mut shown = incoming(&adv);
    shown.sort();
    ids.sort();
    assert_eq!(shown, ids, "each shown exactly once");
    assert!(adv.held().is_empty());
}

/// Two devices that write to each other for the first time at the same moment each start
/// a session; each then receives the other's first message and replaces its own session.
/// Messages sealed under the replaced sessions are still in flight: they are opened with
/// the previous session the device keeps (docs/PROTOCOL.md §18.3), never refused, and the
/// conversation goes on in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_first_messages_lose_nothing_on_either_side() {
    const QUIET: Duration = Duration::from_millis(800);
    let homes = tempfile::tempdir().unwrap();
    let relay = memory_relay(|_| {}).await;
    let adv_id = relay.account("adv", Role::Advisor).await;
    let cli_id = relay.account("cli", Role::Client).await;
    relay.assign(&cli_id, &adv_id).await;
    let mut adv =
        sealpost_tests::org::enrolled(&relay, &homes.path().join("adv"), &adv_id, None).await;
    let mut cli =
        sealpost_tests::org::enrolled(&relay, &homes.path().join("cli"), &cli_id, None).await;
    let texts = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message { entry } => Some(entry.body.clone()),
                _ => None,
            })
            .collect()
    };
    let rejected = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Rejected { .. }))
            .count()
    };
    // Both start a session before either has received anything.
    cli.send_text(&adv_id, "c1").await.unwrap();
    adv.send_text(&cli_id, "a1").await.unwrap();
    let got = adv.receive(false, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["c1"], "{got:?}");
    let got = cli.receive(false, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["a1"], "{got:?}");
    // Each now answers; each answer is sealed under a session the other replaced, and
    // both are in flight at once. Then a few rounds more.
    let mut shown_adv = Vec::new();
    let mut shown_cli = Vec::new();
    for round in 2..6 {
        adv.send_text(&cli_id, &format!("a{round}")).await.unwrap();
        cli.send_text(&adv_id, &format!("c{round}")).await.unwrap();
        let got = adv.receive(false, QUIET).await.unwrap();
        assert_eq!(rejected(&got), 0, "round {round}: {got:?}");
        shown_adv.extend(texts(&got));
        let got = cli.receive(false, QUIET).await.unwrap();
        assert_eq!(rejected(&got), 0, "round {round}: {got:?}");
        shown_cli.extend(texts(&got));
    }
    assert_eq!(shown_adv, ["c2", "c3", "c4", "c5"]);
    assert_eq!(shown_cli, ["a2", "a3", "a4", "a5"]);
    // And after a restart of both (the previous sessions are persisted).
    drop(adv);
    drop(cli);
    let mut adv = Client::open(&homes.path().join("adv"), sealpost_tests::org::PASS).unwrap();
    let mut cli = Client::open(&homes.path().join("cli"), sealpost_tests::org::PASS).unwrap();
    adv.connect().await.unwrap();
    cli.connect().await.unwrap();
    adv.send_text(&cli_id, "a6").await.unwrap();
    cli.send_text(&adv_id, "c6").await.unwrap();
    let got = adv.receive(false, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["c6"], "{got:?}");
    let got = cli.receive(false, QUIET).await.unwrap();
    assert_eq!(texts(&got), ["a6"], "{got:?}");
}
