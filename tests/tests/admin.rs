//! `sealpost-relay admin`: every `--json` line names its `event`; online backup of a
//! running relay and a restore into a fresh data directory (accounts, devices and an
//! envelope pending at backup time come back; what happened after the backup does not; a
//! running relay's directory and an altered backup are refused).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_client::net::RelayConnection;
use sealpost_protocol::envelope::{EnvelopeKind, RoutingHeader};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::{FrameBody, Role};
use sealpost_protocol::{IdentityKeyPair, PreKeySecrets};
use sealpost_server::admin;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::MailboxStore;
use sealpost_tests::process::{write_config, RelayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");

/// `sealpost-relay --config CONFIG admin ARGS...`: (success, stdout + stderr).
fn admin_cmd(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("admin")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_restores_into_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let client = AccountId::new("backup-client").unwrap();
    let advisor = AccountId::new("backup-advisor").unwrap();
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
    let relay = RelayProcess::start(Path::new(BIN), &config, &[]);
    let mut rng = StdRng::seed_from_u64(9);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = IdentityKeyPair::generate(&mut rng);
    let ca = RelayConnection::connect(&relay.address()).await.unwrap();
    ca.enroll(&alice, &client, &code_a).await.unwrap();
    ca.authenticate(&alice).await.unwrap();
    let cb = RelayConnection::connect(&relay.address()).await.unwrap();
    cb.enroll(&bob, &advisor, &code_b).await.unwrap();
    cb.authenticate(&bob).await.unwrap();
    let mut bob_prekeys = PreKeySecrets::new();
    let spk = bob_prekeys.rotate_signed(&bob, &mut rng);
    let kem = bob_prekeys.rotate_kem_last_resort(&bob, &mut rng);
    cb.upload_prekeys(Some(spk), vec![], vec![], Some(kem))
        .await
        .unwrap();
    cb.close();
    // One envelope pending for bob when the backup is taken.
    let bundle = ca
        .fetch_bundles(&advisor)
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let mut session = sealpost_protocol::initiate(&alice, &bundle, &mut rng).unwrap();
    let header = RoutingHeader::new(
        alice.device_id(),
        bob.device_id(),
        EnvelopeKind::Chat,
        1_700_000_000_000,
        &mut rng,
    );
    let before = session
        .seal(header, b"sent before the backup", &mut rng)
        .unwrap();
    let before_id = ca.send_envelope(before).await.unwrap();

    // The backup, while the relay runs and keeps accepting.
    let backup = dir.path().join("backup-1");
    let (ok, out) = admin_cmd(&config, &["--json", "backup", backup.to_str().unwrap()]);
    assert!(ok, "{out}");
    let event: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(event["event"], "backup");
    assert!(event["manifest"]["database_bytes"].as_u64().unwrap() > 0);
    assert!(backup.join("BACKUP.json").exists());
    // A second backup into the same (now non-empty) directory is refused.
    let (ok, out) = admin_cmd(&config, &["backup", backup.to_str().unwrap()]);
    assert!(!ok && out.contains("not empty"), "{out}");
    // After the backup: another account, and a second envelope.
    let (ok, out) = admin_cmd(
        &config,
        &["create-account", "after-backup", "--role", "client"],
    );
    assert!(ok, "{out}");
    let header = RoutingHeader::new(
        alice.device_id(),
        bob.device_id(),
        EnvelopeKind::Chat,
        1_700_000_000_001,
        &mut rng,
    );
    let after = session
        .seal(header, b"sent after the backup", &mut rng)
        .unwrap();
    let after_id = ca.send_envelope(after).await.unwrap();
    ca.close();
    let log = relay.log.clone();
    let code = tokio::task::spawn_blocking(move || relay.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", log.lock().unwrap());

    // Restore into a fresh data directory (same certificates, so the CA pin holds).
    let dir2 = tempfile::tempdir().unwrap();
    let config2 = write_config(dir2.path(), None);
    std::fs::write(
        &config2,
        std::fs::read_to_string(&config2).unwrap().replace(
            &dir2.path().join("certs").display().to_string(),
            &dir.path().join("certs").display().to_string(),
        ),
    )
    .unwrap();
    let (ok, out) = admin_cmd(&config2, &["restore", backup.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("restored the backup"), "{out}");
    let relay2 = RelayProcess::start(Path::new(BIN), &config2, &[]);
    // Restoring over a running relay is refused by its lock.
    let (ok, out) = admin_cmd(
        &config2,
        &["restore", "--replace", backup.to_str().unwrap()],
    );
    assert!(!ok && out.contains("already running"), "{out}");
    // What the backup held is there: the accounts, both devices, the pending envelope;
    // what came after is not.
    let (ok, accounts) = admin_cmd(&config2, &["accounts"]);
    assert!(ok, "{accounts}");
    assert!(accounts.contains("backup-client") && accounts.contains("backup-advisor"));
    assert!(!accounts.contains("after-backup"), "{accounts}");
    let cb = RelayConnection::connect(&relay2.address()).await.unwrap();
    cb.authenticate(&bob).await.unwrap();
    cb.request(FrameBody::Drain).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(push)) = tokio::time::timeout(Duration::from_secs(3), cb.next_push()).await {
        match push {
            FrameBody::Deliver { envelope } => got.push(envelope.header.message_id),
            FrameBody::MailboxEmpty => break,
            _ => {}
        }
    }
    assert_eq!(
        got,
        vec![before_id],
        "only the envelope pending at backup time"
    );
    assert_ne!(before_id, after_id);
    drop(cb);
    drop(relay2);

    // An altered backup is refused before anything is written.
    let db = backup.join("relay.sqlite3");
    let mut bytes = std::fs::read(&db).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&db, bytes).unwrap();
    let dir3 = tempfile::tempdir().unwrap();
    let config3 = write_config(dir3.path(), None);
    let (ok, out) = admin_cmd(&config3, &["restore", backup.to_str().unwrap()]);
    assert!(!ok && out.contains("does not match its manifest"), "{out}");
    assert!(!dir3.path().join("data").join("relay.sqlite3").exists());
}

#[test]
fn every_admin_json_line_names_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let mut expect = vec![
        (
            vec!["create-account", "ann.advisor", "--role", "advisor"],
            "account_created",
        ),
        (
            vec!["create-account", "alice", "--role", "client"],
            "account_created",
        ),
        (vec!["assign", "alice", "ann.advisor"], "assigned"),
        (vec!["issue-code", "alice"], "enrolment_code"),
        (vec!["accounts"], "account"),
        (vec!["devices", "alice"], "device"),
        (vec!["unassign", "alice", "ann.advisor"], "unassigned"),
    ];
    for (args, event) in expect.drain(..) {
        let mut full = vec!["--json"];
        full.extend(args.iter().copied());
        let (ok, out) = admin_cmd(&config, &full);
        assert!(ok, "{args:?}: {out}");
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"));
            assert_eq!(v["event"], event, "{args:?}: {line}");
        }
    }
}

#[test]
fn nested_settings_come_from_the_environment_and_unknown_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config).arg("config");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&[
        // A duration under its name of earlier versions, in seconds; and one written
        // as durations are now.
        ("SEALPOST_RELAY_LIMITS__AUTH_TIMEOUT_SECS", "77"),
        ("SEALPOST_RELAY_LIMITS__ENVELOPE_TTL", "2d"),
        (
            "SEALPOST_RELAY_LIMITS__CONTROL_REQUESTS_PER_DEVICE__PER_SECOND",
            "3.5",
        ),
        ("SEALPOST_RELAY_LOG_LEVEL", "warn"),
        ("SEALPOST_RELAY_METRICS", "off"),
    ]);
    assert!(ok, "{err}");
    let effective: sealpost_server::config::Config = toml::from_str(&out).unwrap();
    // The environment wins over the file and the defaults, key by key.
    assert_eq!(effective.limits.auth_timeout_secs, 77);
    assert_eq!(effective.limits.envelope_ttl_secs, 2 * 24 * 3600);
    assert!(out.contains("auth_timeout = \"1m 17s\""), "{out}");
    assert_eq!(effective.limits.control_requests_per_device.per_second, 3.5);
    assert_eq!(
        effective.limits.control_requests_per_device.burst,
        sealpost_server::config::Limits::default()
            .control_requests_per_device
            .burst
    );
    assert_eq!(effective.log_level, "warn");
    assert_eq!(effective.metrics_listen, None);
    // From the file, untouched.
    assert_eq!(effective.limits.send_rate.per_second, 100000.0);
    let (ok, _, err) = run(&[("SEALPOST_RELAY_LIMITS__NO_SUCH_SETTING", "1")]);
    assert!(!ok && err.contains("no_such_setting"), "{err}");
    let (ok, _, err) = run(&[("SEALPOST_RELAY_LIMITS__AUTH_TIMEOUT_SECS", "soon")]);
    assert!(
        !ok && err.contains("AUTH_TIMEOUT") && err.contains("not a duration"),
        "{err}"
    );
    // And what does not validate is refused with the setting named.
    let (ok, _, err) = run(&[("SEALPOST_RELAY_LIMITS__ENVELOPE_TTL_SECS", "0")]);
    assert!(!ok && err.contains("envelope_ttl"), "{err}");
}

/// One JSON line of `admin --json ARGS`.
fn admin_json(config: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (ok, out) = admin_cmd(config, &full);
    assert!(ok, "{args:?}: {out}");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_revoke_codes_disable_accounts_and_see_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    for (a, role) in [
        ("ann.advisor", "advisor"),
        ("alice", "client"),
        ("bob", "client"),
    ] {
        admin_json(&config, &["create-account", a, "--role", role]);
    }
    admin_json(&config, &["assign", "alice", "ann.advisor"]);
    admin_json(&config, &["assign", "bob", "ann.advisor"]);
    let first = admin_json(&config, &["issue-code", "alice"])[0]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = admin_json(&config, &["issue-code", "alice"])[0]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_code = admin_json(&config, &["issue-code", "bob"])[0]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = admin_json(&config, &["codes", "alice"]);
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|c| c["state"] == "open"
        && c["event"] == "enrolment_code_record"
        && c["id"].as_str().unwrap().len() == 12));
    // The listing never shows a code.
    let (_, text) = admin_cmd(&config, &["codes"]);
    assert!(!text.contains(&first) && !text.contains(&second), "{text}");
    // Revoke the first code by its id: the id is the start of the stored hash.
    let hash = hex::encode(sealpost_server::relay::enrollment_code_hash(&first));
    let revoked = admin_json(&config, &["revoke-code", "alice", &hash[..8]]);
    assert_eq!(revoked[0]["revoked"], 1);
    let (ok, out) = admin_cmd(&config, &["revoke-code", "alice", "zz"]);
    assert!(!ok && out.contains("hex digits"), "{out}");
    assert_eq!(
        admin_json(&config, &["assignments"])
            .iter()
            .map(|a| (
                a["client"].as_str().unwrap().to_owned(),
                a["staff"].as_str().unwrap().to_owned()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("alice".to_owned(), "ann.advisor".to_owned()),
            ("bob".to_owned(), "ann.advisor".to_owned())
        ]
    );
    assert_eq!(admin_json(&config, &["assignments", "bob"]).len(), 1);

    let relay = RelayProcess::start(Path::new(BIN), &config, &[]);
    let mut rng = StdRng::seed_from_u64(21);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let c = RelayConnection::connect(&relay.address()).await.unwrap();
    let refused = c
        .enroll(&alice_id, &AccountId::new("alice").unwrap(), &first)
        .await
        .unwrap_err();
    assert!(
        format!("{refused}").contains("enrolment code is unknown"),
        "the revoked code no longer enrols: {refused}"
    );
    c.enroll(&alice_id, &AccountId::new("alice").unwrap(), &second)
        .await
        .unwrap();
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let b = RelayConnection::connect(&relay.address()).await.unwrap();
    b.enroll(&bob_id, &AccountId::new("bob").unwrap(), &bob_code)
        .await
        .unwrap();
    b.authenticate(&bob_id).await.unwrap();

    let status = &admin_json(&config, &["status"])[0];
    assert_eq!(status["event"], "status");
    assert_eq!(status["clients"], 2);
    assert_eq!(status["advisors"], 1);
    assert_eq!(status["active_devices"], 2);
    assert_eq!(status["open_codes"], 0);
    assert_eq!(status["assignments"], 2);

    // Disabled from this (other) process: bob's open connection is closed by the relay
    // within its check interval, and bob cannot authenticate again until re-enabled.
    let d = admin_json(&config, &["disable", "bob"]);
    assert_eq!(
        (d[0]["event"].as_str(), d[0]["changed"].as_bool()),
        (Some("account_disabled"), Some(true))
    );
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while b.request(FrameBody::Ping).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "bob's connection was not closed");
    let b2 = RelayConnection::connect(&relay.address()).await.unwrap();
    let err = b2.authenticate(&bob_id).await.unwrap_err();
    assert!(format!("{err}").contains("disabled"), "{err}");
    assert_eq!(admin_json(&config, &["status"])[0]["disabled"], 1);
    admin_json(&config, &["enable", "bob"]);
    let b3 = RelayConnection::connect(&relay.address()).await.unwrap();
    b3.authenticate(&bob_id).await.unwrap();
    // Alice was never touched.
    c.authenticate(&alice_id).await.unwrap();
}

/// Refusals reach the operator's log at the default level, with their reason and who was
/// refused, and a peer cannot flood the log: past `MAX_LOGGED_REFUSALS` on one connection
/// they are counted in one line when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_with_their_reason_and_bounded_per_connection() {
    use sealpost_server::conn::MAX_LOGGED_REFUSALS;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let relay = RelayProcess::start(Path::new(BIN), &config, &[]);
    let c = RelayConnection::connect(&relay.address()).await.unwrap();
    let extra = 7;
    for _ in 0..MAX_LOGGED_REFUSALS + extra {
        let err = c.request(FrameBody::ListContacts).await.unwrap_err();
        assert!(format!("{err}").contains("unauthenticated"), "{err}");
    }
    drop(c);
    let wanted = format!("not_logged={extra}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !relay.log_text().contains(&wanted) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = relay.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refused.len(), MAX_LOGGED_REFUSALS as usize, "{log}");
    assert!(
        refused
            .iter()
            .all(|l| l.contains("code=\"unauthenticated\"") || l.contains("code=unauthenticated")),
        "{refused:?}"
    );
    assert!(refused[0].contains(" INFO "), "{}", refused[0]);
    assert!(log.contains(&wanted), "{log}");
}
