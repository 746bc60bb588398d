//! Durable storage, expiry, graceful shutdown on SIGTERM, and the metrics endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use sealpost_protocol::wire::Role;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::MailboxStore;
use sealpost_server::{admin, relay::unix_ms};
use sealpost_tests::process::{write_config, RelayProcess};
use sealpost_tests::*;

const WAIT: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");

#[tokio::test]
async fn pending_envelopes_and_enrolments_survive_a_restart() {
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |_| {}).await;
    let client = relay.account("rita", Role::Client).await;
    let advisor = relay.account("sam", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 21).await;
    let mut b = relay.device(&advisor, 22).await;
    b.conn.close();
    let mut s = a.session_with(&b).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let env = a.seal(&mut s, b.id(), &format!("durable {i}"));
        ids.push(env.header.message_id);
        a.conn.send_envelope(env).await.unwrap();
    }
    let fp = relay.ca_fingerprint;
    let dir = relay.stop().await;

    let relay = sqlite_relay_in(dir, |_| {}).await;
    assert_eq!(
        relay.ca_fingerprint, fp,
        "the development CA is reused, so pins stay valid"
    );
    b.reconnect(&relay).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(
            b.next_envelope(WAIT)
                .await
                .expect("delivered after restart")
                .header
                .message_id,
        );
    }
    assert_eq!(got, ids);
}

#[tokio::test]
async fn undelivered_envelopes_expire() {
    let relay = memory_relay(|c| c.limits.envelope_ttl_secs = 1).await;
    let client = relay.account("tina", Role::Client).await;
    let advisor = relay.account("umar", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 23).await;
    let mut b = relay.device(&advisor, 24).await;
    b.conn.close();
    let mut s = a.session_with(&b).await;
    let env = a.seal(&mut s, b.id(), "short-lived");
    a.conn.send_envelope(env).await.unwrap();
    assert_eq!(
        relay.relay.store.expire(unix_ms()).await.unwrap(),
        0,
        "not yet"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        relay.relay.store.expire(unix_ms()).await.unwrap(),
        1,
        "expired after its TTL"
    );
    b.reconnect(&relay).await;
    assert!(b.next_envelope(Duration::from_millis(500)).await.is_none());
}

fn free_tcp_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_tcp_port();
    let config = write_config(dir.path(), Some(metrics));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let client = sealpost_protocol::AccountId::new("vera").unwrap();
    let code = {
        let store = SqliteStore::open(&dir.path().join("data").join("relay.sqlite3")).unwrap();
        admin::create_account(&store, &client, Role::Client)
            .await
            .unwrap();
        let c = admin::issue_code(&store, &client, 600).await.unwrap().code;
        store.flush().await.unwrap();
        c
    };
    let relay = RelayProcess::start(Path::new(BIN), &config, &[]);
    let id = sealpost_protocol::IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    let conn = sealpost_client::net::RelayConnection::connect(&relay.address())
        .await
        .unwrap();
    conn.enroll(&id, &client, &code).await.unwrap();
    conn.authenticate(&id).await.unwrap();
    // A failed authentication shows up in the counters.
    let bad = sealpost_client::net::RelayConnection::connect(&relay.address())
        .await
        .unwrap();
    let mallory = sealpost_protocol::IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    assert!(bad.authenticate(&mallory).await.is_err());

    let body = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics"))
        .await
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for name in [
        "sealpost_connections_total",
        "sealpost_connections_active",
        "sealpost_devices_authenticated",
        "sealpost_auth_failures_total",
        "sealpost_bytes_received_total",
        "sealpost_request_seconds",
    ] {
        assert!(body.contains(name), "metric {name} missing from:\n{body}");
    }
    assert!(
        !body.contains(&hex::encode(id.public().signing_bytes())),
        "no key material in metrics"
    );
    // Process metrics and the build (version and commit) are in the exposition.
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
    assert!(body.contains("process_cpu_seconds_total"), "{body}");
    let build = body
        .lines()
        .find(|l| l.starts_with("sealpost_build_info{"))
        .unwrap_or_else(|| panic!("no sealpost_build_info in:\n{body}"));
    assert!(build.contains("commit=\""), "{build}");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.ends_with(" 1"), "{build}");
    // Liveness and readiness on the same listener; other paths are not the metrics.
    let get = |path: &'static str| async move {
        tokio::task::spawn_blocking(move || http_get(metrics, path))
            .await
            .unwrap()
    };
    let healthz = get("/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert!(healthz.ends_with("ok\n"), "{healthz}");
    let readyz = get("/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(readyz.ends_with("ready\n"), "{readyz}");
    let other = get("/").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    assert!(!other.contains("sealpost_connections_total"), "{other}");

    drop(conn);
    drop(bad);
    let log = relay.log.clone();
    let code = tokio::task::spawn_blocking(move || relay.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "exit 0 after SIGTERM; log:\n{}",
        log.lock().unwrap()
    );
    let log = log.lock().unwrap().clone();
    assert!(log.contains("shutdown signal received"), "{log}");
    assert!(log.contains("storage flushed"), "{log}");
}

/// Wait (bounded) until `relay`'s log contains `needle`.
fn wait_for_log(relay: &RelayProcess, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if relay.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_per_data_directory_and_sighup_reloads_without_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let relay = RelayProcess::start(Path::new(BIN), &config, &[]);

    // A second relay on the same data directory is refused, and says why.
    let second = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another sealpost-relay is already running on the data directory"),
        "{err}"
    );

    // SIGHUP reloads the log filter and the certificate; the relay keeps serving.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            "backend = \"sqlite\"\n",
            "backend = \"sqlite\"\nlog_level = \"info,sealpost_server=debug\"\n",
        ),
    )
    .unwrap();
    let hup = |pid: u32| {
        assert!(std::process::Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success())
    };
    hup(relay.pid());
    assert!(
        wait_for_log(&relay, "TLS certificate reloaded"),
        "{}",
        relay.log_text()
    );
    assert!(wait_for_log(&relay, "log filter reloaded"));
    let conn = sealpost_client::net::RelayConnection::connect(&relay.address())
        .await
        .unwrap();
    assert!(conn.get_org().await.is_ok(), "still serving after SIGHUP");
    // RUST_LOG=info is set for the test relay, so it still wins over log_level.
    // A setting that needs a restart is reported as such.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("[limits]\n", "[limits]\nmax_bad_frames = 3\n"),
    )
    .unwrap();
    hup(relay.pid());
    assert!(
        wait_for_log(&relay, "take effect only after a restart"),
        "{}",
        relay.log_text()
    );
    // A configuration that does not validate is refused; the relay goes on.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("[limits]\n", "[limits]\nenvelope_ttl_secs = 0\n"),
    )
    .unwrap();
    hup(relay.pid());
    assert!(
        wait_for_log(&relay, "reload refused"),
        "{}",
        relay.log_text()
    );
    assert!(conn.get_org().await.is_ok(), "still serving");
    drop(conn);
    let log = relay.log.clone();
    let code = tokio::task::spawn_blocking(move || relay.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", log.lock().unwrap());
    // The lock went with the process: the directory can be used again.
    let config = write_config(dir.path(), None);
    let again = RelayProcess::start(Path::new(BIN), &config, &[]);
    drop(again);
}

#[test]
fn json_logs_are_only_json_and_text_logs_have_no_colour_off_a_terminal() {
    use std::io::BufRead;
    for format in ["json", "text"] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), None);
        let mut child = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("--log-format")
            .arg(format)
            .env("RUST_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    let done = l.contains("relay listening");
                    lines.push(l);
                    if done {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            lines.iter().any(|l| l.contains("relay listening")),
            "{format}: {lines:?}"
        );
        for l in &lines {
            assert!(!l.contains('\u{1b}'), "{format}: colour code in {l:?}");
            if format == "json" {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
                assert!(v.get("level").is_some(), "{l}");
            }
        }
        if format == "json" {
            let banner = lines
                .iter()
                .find(|l| l.contains("sealpost-relay listening"))
                .unwrap_or_else(|| panic!("{lines:?}"));
            let v: serde_json::Value = serde_json::from_str(banner).unwrap();
            assert_eq!(
                v["fields"]["ca_fingerprint"].as_str().map(str::len),
                Some(64),
                "{banner}"
            );
        }
    }
}
