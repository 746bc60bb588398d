//! End-to-end tests of the `sealpost` CLI: the relay runs as a process, the operator
//! creates accounts and codes with `sealpost-relay admin ... --json`, and every user
//! action goes through the CLI binary with `--json`, `SEALPOST_HOME` and
//! `SEALPOST_PASSPHRASE`, exactly as a script would drive it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sealpost_tests::process::{write_config, RelayProcess};
use serde_json::Value;

const RELAY: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");
const CLI: &str = env!("CARGO_BIN_EXE_sealpost-under-test");
/// Upper bound for any single CLI or admin invocation.
const STEP: Duration = Duration::from_secs(60);

/// What a finished process produced.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The JSON lines of stdout.
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }

    /// The JSON lines whose `event` is `tag`.
    fn events(&self, tag: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["event"] == tag)
            .collect()
    }

    fn ok(self, what: &str) -> Self {
        assert_eq!(
            self.code, 0,
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Run `cmd` to completion, killing it if it takes longer than `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Ran {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// The operator: `sealpost-relay --config CFG admin ARGS --json`, one JSON line back.
fn admin(config: &Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(RELAY);
    cmd.arg("--config")
        .arg(config)
        .arg("admin")
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn");
    let ran = run_bounded(cmd, STEP).ok(&format!("admin {args:?}"));
    ran.lines()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("admin {args:?} printed nothing"))
}

/// One device's profile, driven through the CLI.
struct Device {
    home: PathBuf,
    passphrase: String,
}

impl Device {
    fn new(root: &Path, name: &str) -> Self {
        Self {
            home: root.join(name),
            passphrase: format!("{name} passphrase for tests"),
        }
    }

    fn command(&self, args: &[&str], passphrase: &str) -> Command {
        let mut cmd = Command::new(CLI);
        cmd.args(args)
            .env("SEALPOST_HOME", &self.home)
            .env("SEALPOST_PASSPHRASE", passphrase)
            .env_remove("RUST_LOG");
        cmd
    }

    /// Run with `--json`.
    fn run(&self, args: &[&str]) -> Ran {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        run_bounded(self.command(&all, &self.passphrase), STEP)
    }

    /// Run in human mode (for the wording of errors).
    fn run_human(&self, args: &[&str]) -> Ran {
        run_bounded(self.command(args, &self.passphrase), STEP)
    }

    /// `init` then `enroll` with a fresh code from the operator.
    fn enrol(&self, config: &Path, relay: &RelayProcess, account: &str) {
        let init = self.run(&["init"]).ok("init");
        assert_eq!(init.events("initialized").len(), 1, "{}", init.stdout);
        let issued = admin(config, &["issue-code", account]);
        let code = issued["code"].as_str().unwrap();
        let fp = issued["ca_fingerprint"].as_str().unwrap();
        assert_eq!(
            fp,
            hex::encode(relay.ca_fingerprint),
            "issue-code prints the pinned CA"
        );
        let addr = relay.addr.to_string();
        let ran = self
            .run(&[
                "enroll",
                "--relay",
                &addr,
                "--ca",
                fp,
                "--account",
                account,
                "--code",
                code,
            ])
            .ok("enroll");
        let enrolled = &ran.events("enrolled")[0];
        assert_eq!(enrolled["account"], account);
    }
}

fn start_relay(dir: &Path) -> (PathBuf, RelayProcess) {
    let config = write_config(dir, None);
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    (config, relay)
}

#[test]
fn cli_end_to_end_messages_receipts_notices_verification_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (config, relay) = start_relay(dir.path());

    // The operator creates an advisor, a staff member and two clients, and assigns them.
    for (id, role) in [
        ("ann.advisor", "advisor"),
        ("ops", "staff"),
        ("alice", "client"),
        ("carol", "client"),
    ] {
        let v = admin(&config, &["create-account", id, "--role", role]);
        assert_eq!(v["account"], id);
    }
    for (client, staff) in [("alice", "ann.advisor"), ("alice", "ops"), ("carol", "ops")] {
        admin(&config, &["assign", client, staff]);
    }

    let users = tempfile::tempdir().unwrap();
    let ann = Device::new(users.path(), "ann");
    let ops = Device::new(users.path(), "ops");
    let alice = Device::new(users.path(), "alice");
    let carol = Device::new(users.path(), "carol");
    ann.enrol(&config, &relay, "ann.advisor");
    ops.enrol(&config, &relay, "ops");
    alice.enrol(&config, &relay, "alice");
    carol.enrol(&config, &relay, "carol");

    // whoami: account, role, device and fingerprint.
    let who = alice.run(&["whoami"]).ok("whoami");
    let who = &who.events("whoami")[0];
    assert_eq!(who["account"], "alice");
    assert_eq!(who["role"], "client");
    assert_eq!(who["enrolled"], true);
    assert_eq!(who["device"].as_str().unwrap().len(), 32);
    assert!(!who["fingerprint"].as_str().unwrap().is_empty());
    assert_eq!(who["relay"]["addr"], relay.addr.to_string());
    // The relay lists the same device and fingerprint for the account.
    let listed = admin(&config, &["devices", "alice"]);
    assert_eq!(listed["device"], who["device"]);
    assert_eq!(listed["fingerprint"], who["fingerprint"]);

    // contacts: the advisor and the staff member, reachable, unverified.
    let contacts = alice.run(&["contacts"]).ok("contacts");
    let mut names: Vec<String> = contacts
        .events("contact")
        .iter()
        .map(|c| {
            assert_eq!(c["reachable"], true);
            assert_eq!(c["verified"], false);
            c["account"].as_str().unwrap().to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["ann.advisor", "ops"]);

    // The advisor writes first; the client reads it with inbox.
    let sent = ann
        .run(&["send", "alice", "Welcome, Alice. Your account is ready."])
        .ok("send");
    let sent = &sent.events("sent")[0];
    assert_eq!(sent["to"], "alice");
    assert_eq!(sent["devices"], 1);
    let first_id = sent["message_id"].as_str().unwrap().to_owned();
    assert_eq!(first_id.len(), 32);

    let inbox = alice.run(&["inbox"]).ok("inbox");
    let messages = inbox.events("message");
    assert_eq!(messages.len(), 1, "{}", inbox.stdout);
    assert_eq!(
        messages[0]["entry"]["body"],
        "Welcome, Alice. Your account is ready."
    );
    assert_eq!(messages[0]["entry"]["peer"], "ann.advisor");
    assert_eq!(messages[0]["entry"]["id"], first_id.as_str());
    assert!(inbox.events("notice").is_empty());
    assert_eq!(inbox.events("inbox")[0]["marked_read"], 1);
    // Read once: a second inbox shows nothing new.
    let again = alice.run(&["inbox"]).ok("inbox again");
    assert!(again.events("message").is_empty(), "{}", again.stdout);

    // The client answers; the advisor's history shows the reply and the receipts.
    alice
        .run(&["send", "ann.advisor", "Thank you, Ann."])
        .ok("reply");
    let history = ann.run(&["inbox", "--all"]).ok("inbox --all");
    let entries: Vec<Value> = history
        .events("history")
        .into_iter()
        .map(|h| h["entry"].clone())
        .collect();
    let out = entries
        .iter()
        .find(|e| e["id"] == first_id.as_str())
        .unwrap_or_else(|| panic!("sent message not in history: {}", history.stdout));
    assert_eq!(out["direction"], "out");
    assert_eq!(out["delivered"], true, "{}", history.stdout);
    assert_eq!(out["read"], true, "{}", history.stdout);
    let reply = entries
        .iter()
        .find(|e| e["direction"] == "in")
        .unwrap_or_else(|| panic!("reply not in history: {}", history.stdout));
    assert_eq!(reply["body"], "Thank you, Ann.");
    assert_eq!(reply["peer"], "alice");
    let kinds: Vec<Value> = history
        .events("receipt")
        .iter()
        .map(|r| r["kind"].clone())
        .collect();
    assert!(kinds.contains(&Value::from("delivered")), "{kinds:?}");
    assert!(kinds.contains(&Value::from("read")), "{kinds:?}");

    // A staff notice to every client reaches both, as a notice.
    let notice = ops
        .run(&[
            "notice",
            "--title",
            "Deposit address",
            "--body",
            "Our deposit address has not changed.",
            "--all-clients",
        ])
        .ok("notice --all-clients");
    let mut to: Vec<String> = notice
        .events("notice_sent")
        .iter()
        .map(|n| n["to"].as_str().unwrap().to_owned())
        .collect();
    to.sort();
    assert_eq!(to, ["alice", "carol"]);
    for client in [&alice, &carol] {
        let inbox = client.run(&["inbox"]).ok("inbox (notice)");
        let notices = inbox.events("notice");
        assert_eq!(notices.len(), 1, "{}", inbox.stdout);
        assert_eq!(notices[0]["entry"]["title"], "Deposit address");
        assert_eq!(
            notices[0]["entry"]["body"],
            "Our deposit address has not changed."
        );
        assert_eq!(notices[0]["entry"]["peer"], "ops");
        assert_eq!(notices[0]["entry"]["kind"], "notice");
        assert!(inbox.events("message").is_empty(), "{}", inbox.stdout);
    }
    // Human inbox --all keeps notices in their own section.
    let human = alice
        .run_human(&["inbox", "--all"])
        .ok("inbox --all (human)");
    let messages_at = human.stdout.find("Messages (").unwrap();
    let notices_at = human.stdout.find("Notices (").unwrap();
    assert!(messages_at < notices_at, "{}", human.stdout);
    assert!(human.stdout[notices_at..].contains("Deposit address"));
    assert!(!human.stdout[..notices_at].contains("Deposit address"));

    // Safety numbers: the same 60 digits on both sides.
    let mine = alice.run(&["verify", "ann.advisor"]).ok("verify");
    let theirs = ann.run(&["verify", "alice"]).ok("verify (other side)");
    let digits = mine.events("safety_number")[0]["digits"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(digits.len(), 60);
    assert!(digits.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(theirs.events("safety_number")[0]["digits"], digits.as_str());
    let grouped = mine.events("safety_number")[0]["grouped"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(grouped.split(' ').count(), 12);

    // A wrong number exits 7 and leaves the contact unverified.
    let mut wrong = digits.clone().into_bytes();
    wrong[0] = if wrong[0] == b'1' { b'2' } else { b'1' };
    let wrong = String::from_utf8(wrong).unwrap();
    let mismatch = alice.run_human(&["verify", "ann.advisor", "--confirm", &wrong]);
    assert_eq!(mismatch.code, 7, "{}", mismatch.stderr);
    assert!(
        mismatch.stderr.contains("does NOT match"),
        "{}",
        mismatch.stderr
    );
    let status = alice.run(&["verify", "ann.advisor"]).ok("verify");
    assert_eq!(status.events("safety_number")[0]["verified"], false);

    // The right one (read aloud in groups: whitespace is ignored) marks it verified.
    let ok = alice
        .run(&["verify", "ann.advisor", "--confirm", &grouped])
        .ok("verify --confirm");
    assert_eq!(ok.events("verified")[0]["verified"], true);
    let contacts = alice.run(&["contacts"]).ok("contacts");
    let ann_contact = contacts
        .events("contact")
        .into_iter()
        .find(|c| c["account"] == "ann.advisor")
        .unwrap();
    assert_eq!(ann_contact["verified"], true);

    // devices: this account's one device, marked as this one.
    let devices = alice.run(&["devices"]).ok("devices");
    let devices = devices.events("device");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["this_device"], true);
    assert_eq!(devices[0]["device"], who["device"]);

    // Wrong passphrase: exit 3, said plainly.
    let wrong_pass = run_bounded(alice.command(&["whoami"], "not the passphrase"), STEP);
    assert_eq!(wrong_pass.code, 3, "{}", wrong_pass.stderr);
    assert!(
        wrong_pass.stderr.contains("wrong passphrase"),
        "{}",
        wrong_pass.stderr
    );
    assert!(!wrong_pass.stderr.contains("not the passphrase"));

    // A client writing to another client: refused by the relay, exit 6, clear message.
    let refused = alice.run_human(&["send", "carol", "hello Carol"]);
    assert_eq!(refused.code, 6, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("a client cannot message another client"),
        "{}",
        refused.stderr
    );
    // The same in JSON: an error object with the code and kind.
    let refused = alice.run(&["send", "carol", "hello Carol"]);
    assert_eq!(refused.code, 6);
    let err: Value = serde_json::from_str(refused.stderr.lines().last().unwrap()).unwrap();
    assert_eq!(err["event"], "error");
    assert_eq!(err["kind"], "refused");
    assert_eq!(err["exit_code"], 6);

    // Clients cannot send notices (exit 6).
    let notice = alice.run(&["notice", "--title", "t", "--body", "b", "--to", "carol"]);
    assert_eq!(notice.code, 6, "{}", notice.stderr);

    // No profile / not enrolled: exit 4 with directions.
    let nobody = Device::new(users.path(), "nobody");
    let none = nobody.run_human(&["whoami"]);
    assert_eq!(none.code, 4, "{}", none.stderr);
    assert!(none.stderr.contains("sealpost init"), "{}", none.stderr);
    nobody.run(&["init"]).ok("init");
    let unenrolled = nobody.run_human(&["send", "ann.advisor", "hi"]);
    assert_eq!(unenrolled.code, 4, "{}", unenrolled.stderr);
    assert!(
        unenrolled.stderr.contains("sealpost enroll"),
        "{}",
        unenrolled.stderr
    );

    // Usage errors exit 2.
    let usage = alice.run_human(&["send"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let usage = alice.run_human(&["notice", "--title", "t", "--body", "b"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);

    // The relay goes away: exit 5, naming the address that was tried.
    let addr = relay.addr.to_string();
    relay.kill();
    let down = alice.run_human(&["--timeout", "2", "send", "ann.advisor", "anyone there?"]);
    assert_eq!(down.code, 5, "{}", down.stderr);
    assert!(down.stderr.contains(&addr), "{}", down.stderr);
}

/// Read a child's stdout lines on a thread.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait (bounded) for a JSON line with `event == tag`; returns it.
fn wait_for_event(rx: &mpsc::Receiver<String>, tag: &str, seen: &mut Vec<String>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("listen printed non-JSON {line:?}: {e}"));
                if v["event"] == tag {
                    return v;
                }
            }
            Err(_) => panic!("no {tag:?} event from listen; saw:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn cli_listen_prints_events_reconnects_after_a_relay_restart_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, so that the restarted relay is where the clients expect it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(dir.path(), None);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&config, text).unwrap();
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    admin(
        &config,
        &["create-account", "ann.advisor", "--role", "advisor"],
    );
    admin(&config, &["create-account", "alice", "--role", "client"]);
    admin(&config, &["assign", "alice", "ann.advisor"]);
    let users = tempfile::tempdir().unwrap();
    let ann = Device::new(users.path(), "ann");
    let alice = Device::new(users.path(), "alice");
    ann.enrol(&config, &relay, "ann.advisor");
    alice.enrol(&config, &relay, "alice");

    let mut listen = alice.command(&["--json", "listen", "--for", "120"], &alice.passphrase);
    let mut child = listen
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_reader(&mut child);
    let mut seen = Vec::new();
    wait_for_event(&rx, "connected", &mut seen);

    ann.run(&["send", "alice", "before the restart"])
        .ok("send 1");
    let m = wait_for_event(&rx, "message", &mut seen);
    assert_eq!(m["entry"]["body"], "before the restart");

    // The relay restarts (same port, same data and CA); listen notices and reconnects.
    assert_eq!(relay.terminate(Duration::from_secs(20)), Some(0));
    wait_for_event(&rx, "disconnected", &mut seen);
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    wait_for_event(&rx, "connected", &mut seen);
    ann.run(&["send", "alice", "after the restart"])
        .ok("send 2");
    let m = wait_for_event(&rx, "message", &mut seen);
    assert_eq!(m["entry"]["body"], "after the restart");

    // SIGTERM: a clean stop, exit 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = wait_for_event(&rx, "stopped", &mut seen);
    assert_eq!(stopped["reason"], "signal");
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("listen did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    drop(relay);
}

#[test]
fn cli_attachment_of_several_mib_arrives_intact_and_a_tampered_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, relay) = start_relay(dir.path());
    admin(
        &config,
        &["create-account", "bo.advisor", "--role", "advisor"],
    );
    admin(&config, &["create-account", "cy", "--role", "client"]);
    admin(&config, &["assign", "cy", "bo.advisor"]);
    let advisor = Device::new(dir.path(), "bo");
    let client = Device::new(dir.path(), "cy");
    advisor.enrol(&config, &relay, "bo.advisor");
    client.enrol(&config, &relay, "cy");

    // A 3 MiB "statement" with a marker inside, deterministic content.
    let marker = b"ATTACHMENT-PLAINTEXT-MARKER-91ac";
    let mut data = Vec::with_capacity(3 * 1024 * 1024 + 7);
    let mut x: u32 = 0x1234_5678;
    while data.len() < 3 * 1024 * 1024 + 7 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(3 * 1024 * 1024 + 7);
    data[1_000_000..1_000_000 + marker.len()].copy_from_slice(marker);
    let file = dir.path().join("statement-q3.pdf");
    std::fs::write(&file, &data).unwrap();

    let sent = client
        .run(&[
            "send",
            "bo.advisor",
            "--file",
            file.to_str().unwrap(),
            "Q3 statement",
        ])
        .ok("send --file");
    let ev = &sent.events("sent")[0];
    assert_eq!(
        ev["attachment"]["size"],
        data.len() as u64,
        "{}",
        sent.stdout
    );
    assert_eq!(ev["attachment"]["file_name"], "statement-q3.pdf");

    let inbox = advisor.run(&["inbox"]).ok("inbox");
    let msg = inbox
        .events("message")
        .into_iter()
        .find(|m| !m["entry"]["attachment"].is_null())
        .unwrap_or_else(|| panic!("no attachment in {}", inbox.stdout));
    assert_eq!(msg["entry"]["attachment"]["media_type"], "application/pdf");
    assert!(msg["entry"]["body"]
        .as_str()
        .unwrap()
        .starts_with("Q3 statement"));
    let id = msg["entry"]["id"].as_str().unwrap().to_owned();

    let out = dir.path().join("received.pdf");
    let got = advisor
        .run(&["download", &id, "--out", out.to_str().unwrap()])
        .ok("download");
    assert_eq!(got.events("downloaded").len(), 1, "{}", got.stdout);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        data,
        "the file arrives intact"
    );

    // The relay's disk holds only ciphertext.
    let blobs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("data").join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut stored = std::fs::read(&blobs[0]).unwrap();
    assert!(
        !stored.windows(marker.len()).any(|w| w == marker),
        "no plaintext in the blob"
    );

    // Tamper with one chunk at the relay: the download is refused and leaves no file.
    stored[70_000] ^= 0x01;
    std::fs::write(&blobs[0], &stored).unwrap();
    let out2 = dir.path().join("tampered.pdf");
    let bad = advisor.run(&["download", &id, "--out", out2.to_str().unwrap()]);
    assert_ne!(
        bad.code, 0,
        "a tampered attachment must be refused: {}",
        bad.stdout
    );
    assert!(bad.stderr.contains("attachment"), "{}", bad.stderr);
    assert!(
        !out2.exists(),
        "nothing is written for a tampered attachment"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tampered"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary file left: {leftovers:?}"
    );
}
