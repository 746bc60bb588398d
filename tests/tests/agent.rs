//! `sealpost listen` as the profile's agent: while it runs, the other commands on the
//! same profile are forwarded to it over its Unix socket and behave as when run directly
//! (same output, same exit codes); commands that need the profile to itself are refused
//! with exit 9; a listener killed with SIGKILL leaves a stale socket that breaks nothing.
//! Real processes throughout: the relay and the `sealpost` binary, over real QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
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

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }

    fn events(&self, tag: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["event"] == tag)
            .collect()
    }

    /// The `event` of every JSON line, in order.
    fn shape(&self) -> Vec<String> {
        self.lines()
            .iter()
            .map(|v| v["event"].as_str().unwrap_or("?").to_owned())
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

/// Run `cmd` to completion (writing `input` to its stdin), killing it after `limit`.
fn run_bounded(mut cmd: Command, input: Option<&str>, limit: Duration) -> Ran {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
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

fn admin(config: &Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(RELAY);
    cmd.arg("--config")
        .arg(config)
        .arg("admin")
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn");
    let ran = run_bounded(cmd, None, STEP).ok(&format!("admin {args:?}"));
    ran.lines()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("admin {args:?} printed nothing"))
}

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

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CLI);
        cmd.args(args)
            .env("SEALPOST_HOME", &self.home)
            .env("SEALPOST_PASSPHRASE", &self.passphrase)
            .env_remove("RUST_LOG");
        cmd
    }

    /// Run with `--json`.
    fn run(&self, args: &[&str]) -> Ran {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        run_bounded(self.command(&all), None, STEP)
    }

    /// Run in human mode.
    fn run_human(&self, args: &[&str]) -> Ran {
        run_bounded(self.command(args), None, STEP)
    }

    /// Run with `--json`, without any passphrase in the environment: only a listener can
    /// serve it (directly, the profile cannot be opened: exit 2).
    fn run_no_passphrase(&self, args: &[&str]) -> Ran {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let mut cmd = self.command(&all);
        cmd.env_remove("SEALPOST_PASSPHRASE");
        run_bounded(cmd, None, STEP)
    }

    fn enrol(&self, config: &Path, relay: &RelayProcess, account: &str) {
        self.run(&["init"]).ok("init");
        let issued = admin(config, &["issue-code", account]);
        let code = issued["code"].as_str().unwrap();
        let fp = issued["ca_fingerprint"].as_str().unwrap();
        let addr = relay.addr.to_string();
        let mut args = vec![
            "enroll",
            "--relay",
            &addr,
            "--ca",
            fp,
            "--account",
            account,
            "--code",
            code,
        ];
        if let Some(org) = issued["org_fingerprint"].as_str() {
            args.extend_from_slice(&["--org", org]);
        }
        self.run(&args).ok("enroll");
    }

    /// `listen --json` in the background, with its stdout lines on a channel.
    fn listen(&self) -> (Child, mpsc::Receiver<String>) {
        self.listen_with(&[])
    }

    fn listen_with(&self, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut args = vec!["--json", "listen", "--for", "300"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
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
        (child, rx)
    }

    fn socket(&self) -> PathBuf {
        self.home.join("agent").join("sock")
    }
}

/// Wait (bounded) for a JSON line with `event == tag` from listen; returns it.
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

/// Stop `listen` with SIGTERM (bounded); returns its remaining stdout lines.
fn stop(mut child: Child, rx: &mpsc::Receiver<String>, seen: &mut Vec<String>) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_event(rx, "stopped", seen);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert_eq!(s.code(), Some(0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "listen did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.push(line);
    }
}

fn messages_with(seen: &[String], body: &str) -> usize {
    seen.iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "message" && v["entry"]["body"] == body)
        .count()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn agent_forwarded_commands_behave_as_direct_ones_while_listen_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
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

    // The same commands run directly first, for comparison.
    let whoami_direct = alice.run(&["whoami"]).ok("whoami");
    let inbox_direct = alice.run(&["inbox"]).ok("inbox");
    let contacts_direct = alice.run(&["contacts"]).ok("contacts");
    let approvals_direct = alice.run(&["approvals", "list"]);
    let devices_direct = alice.run(&["device", "list"]).ok("device list");
    let empty_direct = alice.run(&["send", "ann.advisor", " "]);
    assert_eq!(empty_direct.code, 2, "{}", empty_direct.stderr);
    let bad_account_direct = alice.run_human(&["send", "Not Valid!", "hi"]);
    assert_eq!(bad_account_direct.code, 2, "{}", bad_account_direct.stderr);

    let (child, rx) = alice.listen();
    let mut seen = Vec::new();
    wait_for_event(&rx, "connected", &mut seen);

    // The socket: only this user gets in.
    let sock = alice.socket();
    assert!(sock.exists(), "no socket at {}", sock.display());
    assert_eq!(mode(&sock), 0o600, "socket mode");
    assert_eq!(mode(sock.parent().unwrap()), 0o700, "socket directory mode");

    // Forwarded: no passphrase needed, same output as direct.
    let whoami = alice.run_no_passphrase(&["whoami"]).ok("forwarded whoami");
    assert_eq!(whoami.lines(), whoami_direct.lines());
    let inbox = alice.run(&["inbox"]).ok("forwarded inbox");
    assert_eq!(inbox.shape(), inbox_direct.shape());
    assert_eq!(inbox.events("inbox"), inbox_direct.events("inbox"));
    let contacts = alice.run(&["contacts"]).ok("forwarded contacts");
    assert_eq!(contacts.lines(), contacts_direct.lines());
    let approvals = alice.run(&["approvals", "list"]);
    assert_eq!(
        approvals.code, approvals_direct.code,
        "{}",
        approvals.stderr
    );
    assert_eq!(approvals.stdout, approvals_direct.stdout);
    assert_eq!(approvals.stderr, approvals_direct.stderr);
    let devices = alice.run(&["device", "list"]).ok("forwarded device list");
    assert_eq!(devices.lines(), devices_direct.lines());
    // Human output too, line for line.
    let human = alice.run_human(&["whoami"]).ok("forwarded human whoami");
    assert!(
        human.stdout.contains("account:     alice (client)"),
        "{}",
        human.stdout
    );
    assert!(
        human
            .stdout
            .contains(&format!("profile:     {}", alice.home.display())),
        "{}",
        human.stdout
    );

    // Wrong usage: the same exit code and error as direct.
    let empty = alice.run(&["send", "ann.advisor", " "]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    assert_eq!(empty.stderr, empty_direct.stderr);
    let bad_account = alice.run_human(&["send", "Not Valid!", "hi"]);
    assert_eq!(bad_account.code, 2);
    assert_eq!(bad_account.stderr, bad_account_direct.stderr);

    // send: text, text from standard input, an attachment named relative to the
    // command's own directory.
    let sent = alice
        .run_no_passphrase(&["send", "ann.advisor", "hello from alice"])
        .ok("forwarded send");
    assert_eq!(sent.events("sent").len(), 1, "{}", sent.stdout);
    let mut piped = alice.command(&["--json", "send", "ann.advisor", "-"]);
    piped.env_remove("SEALPOST_PASSPHRASE");
    run_bounded(piped, Some("typed into stdin\n"), STEP).ok("forwarded send -");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("report.txt"), b"quarterly numbers").unwrap();
    let mut with_file = alice.command(&[
        "--json",
        "send",
        "ann.advisor",
        "--file",
        "report.txt",
        "the report",
    ]);
    with_file.current_dir(work.path());
    let sent_file = run_bounded(with_file, None, STEP).ok("forwarded send --file");
    assert_eq!(sent_file.events("sent").len(), 1, "{}", sent_file.stdout);
    let got = ann.run(&["inbox"]).ok("ann inbox");
    let bodies: Vec<String> = got
        .events("message")
        .iter()
        .map(|m| m["entry"]["body"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        bodies.contains(&"hello from alice".to_owned()),
        "{bodies:?}"
    );
    assert!(
        bodies.contains(&"typed into stdin".to_owned()),
        "{bodies:?}"
    );
    assert!(
        got.stdout.contains("report.txt"),
        "the attachment did not arrive: {}",
        got.stdout
    );

    // A message to alice while listen runs: listen prints it once, `inbox` shows it
    // once (new), and not again.
    ann.run(&["send", "alice", "while you listen"])
        .ok("ann send");
    let m = wait_for_event(&rx, "message", &mut seen);
    assert_eq!(m["entry"]["body"], "while you listen");
    let inbox = alice.run(&["inbox"]).ok("forwarded inbox");
    let shown = inbox
        .events("message")
        .iter()
        .filter(|v| v["entry"]["body"] == "while you listen")
        .count();
    assert_eq!(shown, 1, "{}", inbox.stdout);
    let again = alice.run(&["inbox"]).ok("forwarded inbox again");
    assert!(again.events("message").is_empty(), "{}", again.stdout);

    // Commands that need the profile to itself: exit 9, saying what to do.
    let init = alice.run_human(&["init"]);
    assert_eq!(init.code, 9, "{}", init.stderr);
    assert!(
        init.stderr.contains("stop `sealpost listen` first"),
        "{}",
        init.stderr
    );
    let enroll = alice.run(&[
        "enroll",
        "--relay",
        "127.0.0.1:1",
        "--ca",
        &"0".repeat(64),
        "--account",
        "alice",
        "--code",
        "X",
    ]);
    assert_eq!(enroll.code, 9, "{}", enroll.stderr);
    let err: Value = serde_json::from_str(enroll.stderr.trim()).unwrap();
    assert_eq!(err["kind"], "profile_busy");
    let second = alice.run_human(&["listen", "--for", "1"]);
    assert_eq!(second.code, 9, "{}", second.stderr);

    stop(child, &rx, &mut seen);
    assert_eq!(messages_with(&seen, "while you listen"), 1, "{seen:?}");
    assert!(!sock.exists(), "listen left its socket behind");

    // The profile is free again: commands run directly.
    let direct = alice.run(&["inbox"]).ok("inbox after listen");
    assert!(direct.events("message").is_empty(), "{}", direct.stdout);
    drop(relay);
}

#[test]
fn agent_socket_left_by_a_killed_listener_breaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
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

    let (mut child, rx) = alice.listen();
    let mut seen = Vec::new();
    wait_for_event(&rx, "connected", &mut seen);
    child.kill().unwrap(); // SIGKILL: no clean-up.
    child.wait().unwrap();
    assert!(
        alice.socket().exists(),
        "the stale socket is the point of this test"
    );

    // The next command finds nobody behind the socket and runs directly.
    let sent = alice
        .run(&["send", "ann.advisor", "after a crash"])
        .ok("send with a stale socket");
    assert_eq!(sent.events("sent").len(), 1);
    let init = alice.run(&["init"]);
    assert_ne!(
        init.code, 9,
        "a stale socket is not a listener: {}",
        init.stderr
    );

    // The next listen replaces the stale socket and serves again.
    let (child, rx) = alice.listen();
    let mut seen = Vec::new();
    wait_for_event(&rx, "connected", &mut seen);
    alice
        .run_no_passphrase(&["whoami"])
        .ok("forwarded whoami after a restart");
    // A forwarded command cut off by its --timeout (the relay stops answering) exits 5
    // as it does directly; the listener recovers and serves the next one.
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(relay.pid().to_string())
            .status()
            .unwrap()
            .success());
    };
    signal("STOP");
    let started = Instant::now();
    let cut = alice.run(&["--timeout", "3", "inbox"]);
    signal("CONT");
    assert_eq!(cut.code, 5, "{}", cut.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err: Value = serde_json::from_str(cut.stderr.trim().lines().last().unwrap()).unwrap();
    assert_eq!(err["kind"], "relay_unreachable");
    ann.run(&["send", "alice", "after the stall"])
        .ok("ann send");
    let got = alice
        .run(&["inbox"])
        .ok("forwarded inbox after a cut-off one");
    let after_stall = got
        .events("message")
        .iter()
        .filter(|m| m["entry"]["body"] == "after the stall")
        .count();
    // Either the listener printed it first (then `inbox` shows it as new) or `inbox`
    // fetched it: shown once in any case.
    assert_eq!(after_stall, 1, "{}", got.stdout);
    stop(child, &rx, &mut seen);

    // `listen --no-socket` serves nothing: the profile is busy (exit 9) until it stops.
    let (child, rx) = alice.listen_with(&["--no-socket"]);
    let mut seen = Vec::new();
    wait_for_event(&rx, "connected", &mut seen);
    assert!(!alice.socket().exists());
    let busy = alice.run(&["whoami"]);
    assert_eq!(busy.code, 9, "{}", busy.stderr);
    stop(child, &rx, &mut seen);
    drop(relay);
}

/// The approvals, forwarded: a staff member keeps `listen` running and lists, shows and
/// approves a roster change through it, typing `yes` at the prompt of the forwarded
/// `approvals approve` (the listener asks the command's terminal, not its own).
#[test]
fn agent_serves_approvals_with_the_prompt_on_the_command_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let org_dir = dir.path().join("org");
    let org_cmd = |args: &[&str]| {
        let mut cmd = Command::new(CLI);
        cmd.arg("--json")
            .args(args)
            .env("SEALPOST_ORG_PASSPHRASE", "organisation root passphrase")
            .env_remove("SEALPOST_PASSPHRASE")
            .env_remove("RUST_LOG");
        run_bounded(cmd, None, STEP)
    };
    let org_dir_s = org_dir.display().to_string();
    let init = org_cmd(&["org", "init", "--dir", &org_dir_s]).ok("org init");
    let org_fp = init.events("org_initialized")[0]["org_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = write_config(dir.path(), None);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("org_fingerprint = \"{org_fp}\"\n{text}")).unwrap();
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    for id in ["ops.alice", "comp.bob", "sec.carol"] {
        admin(&config, &["create-account", id, "--role", "staff"]);
    }
    let users = tempfile::tempdir().unwrap();
    let ops = Device::new(users.path(), "ops");
    let bob = Device::new(users.path(), "bob");
    let carol = Device::new(users.path(), "carol");
    for (d, a) in [
        (&ops, "ops.alice"),
        (&bob, "comp.bob"),
        (&carol, "sec.carol"),
    ] {
        d.enrol(&config, &relay, a);
    }
    let identity = |d: &Device| {
        d.run(&["whoami"]).ok("whoami").events("whoami")[0]["identity"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let identities = [identity(&ops), identity(&bob), identity(&carol)];
    let spec = |cooling: &str| {
        let mut s = format!("[policy]\ncooling_off = \"{cooling}\"\n");
        for ((account, role), id) in [
            ("ops.alice", "operations"),
            ("comp.bob", "compliance"),
            ("sec.carol", "security"),
        ]
        .iter()
        .zip(&identities)
        {
            s.push_str(&format!(
                "\n[[staff]]\naccount = \"{account}\"\nrole = \"{role}\"\ndevices = [\"{id}\"]\n"
            ));
        }
        s
    };
    let spec_path = dir.path().join("roster.toml");
    std::fs::write(&spec_path, spec("2s")).unwrap();
    let v1 = dir.path().join("roster-v1.cbor");
    org_cmd(&[
        "org",
        "roster",
        "sign-genesis",
        "--dir",
        &org_dir_s,
        "--roster",
        &spec_path.display().to_string(),
        "--out",
        &v1.display().to_string(),
    ])
    .ok("sign-genesis");
    ops.run(&["org", "roster", "publish", &v1.display().to_string()])
        .ok("publish");
    std::thread::sleep(Duration::from_millis(2500));

    // comp.bob keeps listen running.
    let (child, rx) = bob.listen();
    let mut seen = Vec::new();
    wait_for_event(&rx, "connected", &mut seen);

    std::fs::write(&spec_path, spec("60s")).unwrap();
    let proposed = ops
        .run(&[
            "org",
            "roster",
            "propose",
            "--roster",
            &spec_path.display().to_string(),
        ])
        .ok("roster propose");
    let rid = proposed.events("roster_proposed")[0]["request"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Forwarded (no passphrase in the environment): list, show, approve.
    let forwarded = |args: &[&str], input: Option<&str>| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let mut cmd = bob.command(&all);
        cmd.env_remove("SEALPOST_PASSPHRASE");
        run_bounded(cmd, input, STEP)
    };
    let listed = forwarded(&["approvals", "list"], None).ok("forwarded approvals list");
    let listed = listed.events("approval");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["request_id"], rid.as_str());
    assert_eq!(listed[0]["status"], "pending");
    let shown = forwarded(&["approvals", "show", &rid[..8]], None).ok("forwarded approvals show");
    assert_eq!(shown.events("approval")[0]["request_id"], rid.as_str());
    // Not "yes": nothing approved, as directly.
    let declined = forwarded(&["approvals", "approve", &rid], Some("no\n"));
    assert_ne!(declined.code, 0, "{}", declined.stdout);
    assert!(
        declined.events("approved").is_empty(),
        "{}",
        declined.stdout
    );
    // "yes" typed on the command's standard input.
    let approved =
        forwarded(&["approvals", "approve", &rid], Some("yes\n")).ok("forwarded approvals approve");
    assert_eq!(approved.events("approved")[0]["request_id"], rid.as_str());
    carol
        .run(&["approvals", "approve", &rid, "--yes"])
        .ok("carol approves");
    let collected = ops.run(&["approvals", "list", "--all"]).ok("collect");
    assert_eq!(
        collected.events("operation_completed").len(),
        1,
        "{}",
        collected.stdout
    );
    let roster = forwarded(&["org", "roster", "show"], None).ok("forwarded roster show");
    assert_eq!(roster.events("roster")[0]["version"], 2);
    stop(child, &rx, &mut seen);
    drop(relay);
}
