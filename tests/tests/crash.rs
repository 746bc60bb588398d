//! Crash safety: the relay process is SIGKILLed repeatedly while a client sends. Every
//! envelope the relay acknowledged must reach the recipient's application exactly once
//! (the application deduplicates by message id, as the client library does), and neither
//! the relay's files nor its logs may contain any plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealpost_client::net::{RelayAddress, RelayConnection};
use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::{FrameBody, Role};
use sealpost_protocol::{IdentityKeyPair, MessageId, PreKeySecrets, Session};
use sealpost_server::admin;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::MailboxStore;
use sealpost_tests::process::{write_config, write_config_with, RelayProcess};
use sealpost_tests::{link_commitment, LINK_NONCE};
use tokio::sync::watch;

const KILLS: usize = 5;
const BIN: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");

async fn connect_auth(
    addr: &watch::Receiver<RelayAddress>,
    id: &IdentityKeyPair,
    deadline: Instant,
) -> RelayConnection {
    loop {
        assert!(
            Instant::now() < deadline,
            "could not reconnect to the relay in time"
        );
        let a = addr.borrow().clone();
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(3), RelayConnection::connect(&a)).await
        {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(3), c.authenticate(id)).await
            {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn plaintext(i: u32) -> String {
    format!("crash-test plaintext number {i:06} SECRET-MARKER-7f3a")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn scan_dir(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            hits.extend(scan_dir(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p) {
            if contains(&bytes, needle) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_sending_loses_nothing_acknowledged() {
    let deadline = Instant::now() + Duration::from_secs(120);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();

    // Operator setup, directly in the database before the relay starts.
    let client = AccountId::new("crash-client").unwrap();
    let advisor = AccountId::new("crash-advisor").unwrap();
    let (code_a, code_b) = {
        let store = SqliteStore::open(&dir.path().join("data").join("relay.sqlite3")).unwrap();
        admin::create_account(&store, &client, Role::Client)
            .await
            .unwrap();
        admin::create_account(&store, &advisor, Role::Advisor)
            .await
            .unwrap();
        admin::assign(&store, &client, &advisor).await.unwrap();
        let a = admin::issue_code(&store, &client, 3600).await.unwrap().code;
        let b = admin::issue_code(&store, &advisor, 3600)
            .await
            .unwrap()
            .code;
        store.flush().await.unwrap();
        (a, b)
    };

    let mut relay = RelayProcess::start(Path::new(BIN), &config, &[("RUST_LOG", "debug")]);
    let (addr_tx, addr_rx) = watch::channel(relay.address());
    let mut logs = String::new();

    let mut rng = StdRng::seed_from_u64(42);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = IdentityKeyPair::generate(&mut rng);
    let bob_device = bob.device_id();
    let mut bob_prekeys = PreKeySecrets::new();
    {
        let ca = RelayConnection::connect(&relay.address()).await.unwrap();
        ca.enroll(&alice, &client, &code_a).await.unwrap();
        let cb = RelayConnection::connect(&relay.address()).await.unwrap();
        cb.enroll(&bob, &advisor, &code_b).await.unwrap();
        cb.authenticate(&bob).await.unwrap();
        let spk = bob_prekeys.rotate_signed(&bob, &mut rng);
        let otk = bob_prekeys.generate_one_time(&bob, 5, &mut rng);
        let kem = bob_prekeys.rotate_kem_last_resort(&bob, &mut rng);
        cb.upload_prekeys(Some(spk), otk, vec![], Some(kem))
            .await
            .unwrap();
    }

    // Sender: seal and send one envelope at a time; record those the relay accepted;
    // after a failure, reconnect and resend the same envelope (same message id).
    let acked: Arc<Mutex<BTreeMap<MessageId, u32>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sender = {
        let addr = addr_rx.clone();
        let acked = acked.clone();
        let client = advisor.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            let mut conn = connect_auth(&addr, &alice, deadline).await;
            let bundle = conn
                .fetch_bundles(&client)
                .await
                .unwrap()
                .into_iter()
                .next()
                .unwrap();
            let mut session: Session =
                sealpost_protocol::initiate(&alice, &bundle, &mut rng).unwrap();
            let mut i = 0u32;
            while !*stop_rx.borrow() && Instant::now() < deadline {
                let header = RoutingHeader::new(
                    alice.device_id(),
                    bob_device,
                    EnvelopeKind::Chat,
                    1_700_000_000_000,
                    &mut rng,
                );
                let env = session
                    .seal(header, plaintext(i).as_bytes(), &mut rng)
                    .unwrap();
                loop {
                    match tokio::time::timeout(
                        Duration::from_secs(3),
                        conn.send_envelope(env.clone()),
                    )
                    .await
                    {
                        Ok(Ok(id)) => {
                            acked.lock().unwrap().insert(id, i);
                            break;
                        }
                        _ => conn = connect_auth(&addr, &alice, deadline).await,
                    }
                }
                i += 1;
            }
            i
        })
    };

    // Recipient application: deduplicate by message id, decrypt, acknowledge.
    let delivered: Arc<Mutex<BTreeMap<MessageId, String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let raw_deliveries = Arc::new(Mutex::new(0usize));
    let recipient = {
        let addr = addr_rx.clone();
        let delivered = delivered.clone();
        let raw = raw_deliveries.clone();
        let (done_tx, done_rx) = (stop_tx.clone(), ());
        let _ = (done_tx, done_rx);
        tokio::spawn(async move {
            let mut conn = connect_auth(&addr, &bob, deadline).await;
            let mut session: Option<Session> = None;
            let mut seen = HashSet::new();
            while Instant::now() < deadline {
                let push = tokio::time::timeout(Duration::from_secs(2), conn.next_push()).await;
                let envelope = match push {
                    Ok(Some(FrameBody::Deliver { envelope })) => envelope,
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        conn = connect_auth(&addr, &bob, deadline).await;
                        continue;
                    }
                    Err(_) => {
                        // Quiet: make sure the connection is alive.
                        if tokio::time::timeout(
                            Duration::from_secs(2),
                            conn.request(FrameBody::Ping),
                        )
                        .await
                        .map(|r| r.is_err())
                        .unwrap_or(true)
                        {
                            conn = connect_auth(&addr, &bob, deadline).await;
                        }
                        continue;
                    }
                };
                *raw.lock().unwrap() += 1;
                let id = envelope.header.message_id;
                if seen.insert(id) {
                    let pt = match &mut session {
                        None => {
                            let (s, pt) =
                                sealpost_protocol::accept(&bob, &mut bob_prekeys, &envelope)
                                    .unwrap();
                            session = Some(s);
                            pt
                        }
                        Some(s) => s.open(&envelope).unwrap(),
                    };
                    let text = String::from_utf8(pt.to_vec()).unwrap();
                    assert!(delivered.lock().unwrap().insert(id, text).is_none());
                }
                let _ = conn.ack(id).await;
            }
        })
    };

    // Kill the relay repeatedly while traffic flows.
    let mut kill_rng = StdRng::seed_from_u64(99);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(kill_rng.gen_range(400..900))).await;
        logs.push_str(&relay.log_text());
        relay.kill();
        relay = RelayProcess::start(Path::new(BIN), &config, &[("RUST_LOG", "debug")]);
        addr_tx.send(relay.address()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .unwrap()
        .unwrap();

    // Wait until everything acknowledged has reached the application.
    let acked: BTreeMap<MessageId, u32> = acked.lock().unwrap().clone();
    let wait_until = Instant::now() + Duration::from_secs(30);
    loop {
        let have = delivered.lock().unwrap().len();
        if acked
            .keys()
            .all(|k| delivered.lock().unwrap().contains_key(k))
            || Instant::now() > wait_until
        {
            let _ = have;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    recipient.abort();
    logs.push_str(&relay.log_text());

    let delivered = delivered.lock().unwrap().clone();
    assert!(
        acked.len() >= 20,
        "the test must exercise real traffic (acked {})",
        acked.len()
    );
    for (id, i) in &acked {
        assert_eq!(
            delivered.get(id),
            Some(&plaintext(*i)),
            "acknowledged message {i} delivered with its content"
        );
    }
    assert!(
        delivered.len() as u32 <= sent,
        "nothing delivered that was not sent"
    );
    let raw = *raw_deliveries.lock().unwrap();
    eprintln!("sent {sent}, acknowledged {}, delivered to app {}, raw deliveries {raw} (redeliveries deduplicated)", acked.len(), delivered.len());

    // The relay never saw plaintext: not in its files, not in its logs.
    relay.kill();
    let marker = b"SECRET-MARKER-7f3a";
    assert_eq!(
        scan_dir(dir.path(), marker),
        Vec::<String>::new(),
        "no plaintext in the relay's files"
    );
    assert!(
        !contains(logs.as_bytes(), marker),
        "no plaintext in the relay's logs"
    );
    assert!(
        logs.contains("device authenticated"),
        "debug logs were captured"
    );
}

/// A device-log append the relay acknowledged (`done`) survives a SIGKILL right after it:
/// the linked device authenticates after the restart and the log holds both entries. The
/// pending link itself lived in memory and is gone. The organisation fingerprint is
/// configured through the environment and announced at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_device_log_append_survives_sigkill() {
    use sealpost_protocol::trust::{DeviceAction, LinkChallenge, LogEntry, OrgRoot};
    use sealpost_protocol::wire::ErrorCode;
    use sealpost_tests::{genesis_entry, now_ms};

    const DAY: u64 = 24 * 60 * 60 * 1000;
    let dir = tempfile::tempdir().unwrap();
    // A device enrolled "two days ago" (the relay's records say so: its cooling-off runs
    // from the relay's append time) is past its cooling-off and may link others.
    let config = write_config_with(dir.path(), None, "max_log_entry_age_secs = 2592000\n");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let account = AccountId::new("kill-client").unwrap();
    let mut rng = StdRng::seed_from_u64(77);
    let existing = IdentityKeyPair::generate(&mut rng);
    {
        use sealpost_server::store::TrustStore;
        let store = SqliteStore::open(&dir.path().join("data").join("relay.sqlite3")).unwrap();
        admin::create_account(&store, &account, Role::Client)
            .await
            .unwrap();
        let c = admin::issue_code(&store, &account, 3600)
            .await
            .unwrap()
            .code;
        let then = now_ms() - 2 * DAY;
        store
            .enroll_first_device(
                &account,
                sealpost_server::relay::enrollment_code_hash(&c),
                existing.public(),
                &genesis_entry(&account, &existing, then),
                then,
            )
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let org = OrgRoot::generate(&mut rng).public().fingerprint().to_hex();
    let env = [("SEALPOST_RELAY_ORG_FINGERPRINT", org.as_str())];
    let relay = RelayProcess::start(Path::new(BIN), &config, &env);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.log_text().contains(&org) {
        assert!(Instant::now() < deadline, "org fingerprint not announced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let ce = RelayConnection::connect(&relay.address()).await.unwrap();
    ce.authenticate(&existing).await.unwrap();
    let new = IdentityKeyPair::generate(&mut rng);
    let cn = RelayConnection::connect(&relay.address()).await.unwrap();
    let (link_id, _) = cn
        .link_start(&new, &account, link_commitment(&account, &new))
        .await
        .unwrap();
    let log = ce.get_device_log(&account).await.unwrap();
    let body = log.next_body(
        now_ms(),
        DeviceAction::Add {
            identity: new.public().clone(),
        },
        "phone",
    );
    ce.link_offer(link_id, LinkChallenge::generate(&mut rng), body.clone())
        .await
        .unwrap();
    cn.link_sign(link_id, body.sign(&new), LINK_NONCE)
        .await
        .unwrap();
    ce.append_device_log(LogEntry::signed_by_device(body, &existing, Some(&new)))
        .await
        .unwrap();
    // Acknowledged: kill at once.
    relay.kill();

    let relay = RelayProcess::start(Path::new(BIN), &config, &env);
    let c = RelayConnection::connect(&relay.address()).await.unwrap();
    assert_eq!(c.authenticate(&new).await.unwrap().0, account);
    let log = c.get_device_log(&account).await.unwrap();
    assert_eq!(log.entries.as_slice().len(), 2);
    let set = log.verify(None, None, now_ms()).unwrap();
    assert_eq!(set.devices.len(), 2);
    match c.link_poll(link_id).await {
        Err(sealpost_client::net::NetError::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::NotFound, "pending links lapse on restart")
        }
        other => panic!("expected not_found, got {other:?}"),
    }
}
