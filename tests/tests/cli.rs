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
        // The organisation fingerprint, printed beside the CA's when the relay has one.
        if let Some(org) = issued["org_fingerprint"].as_str() {
            args.extend_from_slice(&["--org", org]);
        }
        let ran = self.run(&args).ok("enroll");
        let enrolled = &ran.events("enrolled")[0];
        assert_eq!(enrolled["account"], account);
        assert_eq!(enrolled["org_fingerprint"], issued["org_fingerprint"]);
    }

    /// The device identity (`ed25519 || x25519`, hex) as `whoami --json` prints it.
    fn identity(&self) -> String {
        let who = self.run(&["whoami"]).ok("whoami");
        who.events("whoami")[0]["identity"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// The firm's verification of `client` (account `account`) by `staff`, through the CLI:
/// the client asks (`attest status`), the staff member starts (`attest begin`), the
/// client's next `attest status` shows the code it reads aloud, the staff member types it
/// (`attest confirm`); the client is then verified.
fn attest(staff: &Device, client: &Device, account: &str) {
    let asked = client.run(&["attest", "status"]).ok("attest status");
    assert_eq!(
        asked.events("attestation")[0]["state"],
        "waiting",
        "{}",
        asked.stdout
    );
    staff.run(&["attest", "begin", account]).ok("attest begin");
    let shown = client.run(&["attest", "status"]).ok("attest status");
    let code = shown.events("attestation")[0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {}", shown.stdout))
        .to_owned();
    staff
        .run(&["attest", "confirm", account, "--code", &code])
        .ok("attest confirm");
    let done = client.run(&["attest", "status"]).ok("attest status");
    assert_eq!(
        done.events("attestation")[0]["state"],
        "attested",
        "{}",
        done.stdout
    );
}

fn start_relay(dir: &Path) -> (PathBuf, RelayProcess) {
    let config = write_config(dir, None);
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    (config, relay)
}

/// The organisation's offline store, driven through `sealpost org`.
struct Org {
    dir: PathBuf,
    passphrase: String,
}

impl Org {
    fn command(&self, args: &[&str], passphrase: &str) -> Command {
        let mut cmd = Command::new(CLI);
        cmd.arg("--json")
            .args(args)
            .env("SEALPOST_ORG_PASSPHRASE", passphrase)
            .env_remove("SEALPOST_PASSPHRASE")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Ran {
        run_bounded(self.command(args, &self.passphrase), STEP)
    }

    /// `org init`: returns the store and its fingerprint.
    fn init(root: &Path) -> (Self, String) {
        let org = Self {
            dir: root.join("org"),
            passphrase: "organisation root passphrase".into(),
        };
        let dir = org.dir.display().to_string();
        let ran = org.run(&["org", "init", "--dir", &dir]).ok("org init");
        let fp = ran.events("org_initialized")[0]["org_fingerprint"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(fp.len(), 64);
        (org, fp)
    }

    /// Sign roster version 1 from `spec` into `out`.
    fn sign_genesis(&self, spec: &Path, out: &Path) -> Ran {
        let dir = self.dir.display().to_string();
        self.run(&[
            "org",
            "roster",
            "sign-genesis",
            "--dir",
            &dir,
            "--roster",
            &spec.display().to_string(),
            "--out",
            &out.display().to_string(),
        ])
    }
}

/// A relay configured with the organisation fingerprint `org`.
fn start_relay_with_org(dir: &Path, org: &str) -> (PathBuf, RelayProcess) {
    let config = write_config(dir, None);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("org_fingerprint = \"{org}\"\n{text}")).unwrap();
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    (config, relay)
}

/// A roster specification: `(account, role, identity)` per staff member, cooling-off
/// `cooling`, and `policy` (TOML lines for the `[policy]` table) as given.
fn roster_spec(staff: &[(&str, &str, String)], cooling: &str, policy: &str) -> String {
    let mut s = format!("[policy]\ncooling_off = \"{cooling}\"\n{policy}\n");
    for (account, role, identity) in staff {
        s.push_str(&format!(
            "\n[[staff]]\naccount = \"{account}\"\nrole = \"{role}\"\ndevices = [\"{identity}\"]\n"
        ));
    }
    s
}

#[test]
fn cli_end_to_end_messages_receipts_notices_verification_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // Notices are signed under the organisation's roster: the firm creates its root and
    // the relay pins it.
    let (org, org_fp) = Org::init(dir.path());
    let (config, relay) = start_relay_with_org(dir.path(), &org_fp);

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

    // Roster version 1: the staff member and the advisor, every quorum one approval.
    let quorum = "{ threshold = 1, roles = [\"operations\", \"advisor\"] }";
    let policy: String = [
        "account_recovery",
        "unfreeze",
        "roster_change",
        "notice_to_all_clients",
        "high_risk_notice",
    ]
    .iter()
    .map(|op| format!("{op} = {quorum}\n"))
    .collect();
    let spec = roster_spec(
        &[
            ("ops", "operations", ops.identity()),
            ("ann.advisor", "advisor", ann.identity()),
        ],
        "24h",
        &policy,
    );
    let spec_path = dir.path().join("roster.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let v1 = dir.path().join("roster-v1.cbor");
    org.sign_genesis(&spec_path, &v1).ok("sign-genesis");
    ops.run(&["org", "roster", "publish", &v1.display().to_string()])
        .ok("roster publish");
    attest(&ops, &alice, "alice");
    // A wrong code: exit 7, carol stays unverified (ops cannot write to her: exit 8), the
    // request ends; the real flow then succeeds.
    carol.run(&["attest", "status"]).ok("attest status");
    ops.run(&["attest", "begin", "carol"]).ok("attest begin");
    let shown = carol.run(&["attest", "status"]).ok("attest status");
    let code = shown.events("attestation")[0]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    let wrong = format!("{:06}", (digits.parse::<u32>().unwrap() + 1) % 1_000_000);
    let refused = ops.run(&["attest", "confirm", "carol", "--code", &wrong]);
    assert_eq!(refused.code, 7, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("NOT verified"),
        "{}",
        refused.stderr
    );
    let blocked = ops.run(&["send", "carol", "hello"]);
    assert_eq!(blocked.code, 8, "{}", blocked.stderr);
    assert!(
        blocked
            .stderr
            .contains("waiting for the firm's verification"),
        "{}",
        blocked.stderr
    );
    // A co-signed notice to her is refused the same way, up front: not drafted, so no
    // co-signer is asked to approve what could never be delivered.
    let draft = ops.run(&[
        "notice",
        "--to",
        "carol",
        "--category",
        "deposit_instruction",
        "--title",
        "New deposit address",
        "--body",
        "IBAN CH93 0076 2011 6238 5295 7",
    ]);
    assert_eq!(draft.code, 8, "{}\n{}", draft.stdout, draft.stderr);
    assert!(
        draft.stderr.contains("waiting for the firm's verification"),
        "{}",
        draft.stderr
    );
    assert!(draft.events("notice_draft").is_empty(), "{}", draft.stdout);
    attest(&ops, &carol, "carol");

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

    // A staff notice to both clients reaches both, as a notice, signed by the sender
    // (a general notice to named clients needs no co-signers).
    let notice = ops
        .run(&[
            "notice",
            "--title",
            "Deposit address",
            "--body",
            "Our deposit address has not changed.",
            "--to",
            "alice",
            "carol",
        ])
        .ok("notice --to alice carol");
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
        assert_eq!(notices[0]["entry"]["notice"]["authenticated"], true);
        assert_eq!(notices[0]["entry"]["notice"]["signer"], "ops");
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
    assert!(
        human.stdout[notices_at..].contains("Signed by ops (operations)"),
        "{}",
        human.stdout
    );
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

    // devices: this account's one device, marked as this one; `devices` and `device list`
    // print the same single `devices` line (README "JSON output").
    let devices = alice.run(&["devices"]).ok("devices");
    let listed = alice.run(&["device", "list"]).ok("device list");
    assert_eq!(devices.lines(), listed.lines());
    assert_eq!(devices.lines().len(), 1, "{}", devices.stdout);
    let d = &devices.events("devices")[0];
    assert_eq!(d["account"], "alice");
    assert_eq!(d["frozen"], false);
    let list = d["devices"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["this_device"], true);
    assert_eq!(list[0]["device"], who["device"]);
    assert_eq!(list[0]["fingerprint"], who["fingerprint"]);

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

    // An instruction from alice's device, enrolled under a 24-hour cooling-off: refused
    // by her own client before anything is sent (exit 6), saying why and until when.
    let instr = alice.run(&[
        "send",
        "ann.advisor",
        "Change my payout address to DE02 1203 0000 0000 2020 51",
        "--instruction",
        "standing_instruction_change",
    ]);
    assert_eq!(instr.code, 6, "{}", instr.stderr);
    let err: Value = serde_json::from_str(instr.stderr.lines().last().unwrap()).unwrap();
    assert_eq!(err["kind"], "refused");
    assert!(
        err["error"].as_str().unwrap().contains("probation"),
        "{err}"
    );
    assert!(err["probation_until_ms"].as_u64().is_some(), "{err}");
    let human = alice.run_human(&[
        "send",
        "ann.advisor",
        "Withdraw everything",
        "--instruction",
        "withdrawal",
    ]);
    assert_eq!(human.code, 6, "{}", human.stderr);
    assert!(human.stderr.contains("on probation"), "{}", human.stderr);
    let inbox = ann.run(&["inbox"]).ok("inbox after refused instructions");
    assert!(inbox.events("instruction").is_empty(), "{}", inbox.stdout);
    // An unknown category, or an instruction with a file, is a usage error.
    let usage = alice.run_human(&["send", "ann.advisor", "x", "--instruction", "loan"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);

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
    // Without an organisation, every command that shows a contact says how far it is
    // trusted; with --json the contact line carries it.
    for args in [
        &["contacts"][..],
        &["send", "bo.advisor", "hello"],
        &["inbox", "--wait", "1"],
    ] {
        let ran = client.run_human(args).ok("human command");
        assert!(
            ran.stdout
                .contains("trust on first use: no organisation pinned"),
            "{args:?}: {}",
            ran.stdout
        );
    }
    let listed = client.run(&["contacts"]).ok("contacts");
    assert_eq!(listed.events("contact")[0]["trust_on_first_use"], true);

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

/// `sealpost org init` + `roster sign-genesis` + `publish` + `roster show` against a real
/// relay; a high-risk notice becomes a draft that co-signers see in full
/// (`approvals list/show --json`) and approve, after which it goes out co-signed; a new
/// device links through two CLI processes with the code typed on standard input.
#[test]
fn cli_organisation_roster_cosigned_notice_and_device_linking() {
    let dir = tempfile::tempdir().unwrap();
    let (org, org_fp) = Org::init(dir.path());
    // The fingerprint file and `org fingerprint` agree with what init printed.
    let printed = org
        .run(&[
            "org",
            "fingerprint",
            "--dir",
            &org.dir.display().to_string(),
        ])
        .ok("org fingerprint");
    assert_eq!(
        printed.events("org_fingerprint")[0]["org_fingerprint"],
        org_fp.as_str()
    );
    // The root is sealed: a wrong passphrase opens nothing (exit 3), and init refuses to
    // overwrite a store (exit 1).
    let spec_path = dir.path().join("roster.toml");
    std::fs::write(
        &spec_path,
        "[[staff]]\naccount = \"x\"\nrole = \"operations\"\ndevices = [\"00\"]\n",
    )
    .unwrap();
    let bad = org.sign_genesis(&spec_path, &dir.path().join("bad.cbor"));
    assert_eq!(
        bad.code, 2,
        "a malformed spec is a usage error: {}",
        bad.stderr
    );
    assert!(bad.stderr.contains("128 hex digits"), "{}", bad.stderr);
    let again = org.run(&["org", "init", "--dir", &org.dir.display().to_string()]);
    assert_eq!(again.code, 1, "{}", again.stderr);

    let (config, relay) = start_relay_with_org(dir.path(), &org_fp);
    for (id, role) in [
        ("ops.alice", "staff"),
        ("comp.bob", "staff"),
        ("sec.carol", "staff"),
        ("alice", "client"),
    ] {
        admin(&config, &["create-account", id, "--role", role]);
    }
    for staff in ["ops.alice", "comp.bob", "sec.carol"] {
        admin(&config, &["assign", "alice", staff]);
    }
    let users = tempfile::tempdir().unwrap();
    let ops = Device::new(users.path(), "ops");
    let bob = Device::new(users.path(), "bob");
    let carol = Device::new(users.path(), "carol");
    let alice = Device::new(users.path(), "alice");
    for (d, a) in [
        (&ops, "ops.alice"),
        (&bob, "comp.bob"),
        (&carol, "sec.carol"),
        (&alice, "alice"),
    ] {
        d.enrol(&config, &relay, a);
    }

    // Roster version 1 from whoami's identities, signed offline, published by staff.
    let spec = roster_spec(
        &[
            ("ops.alice", "operations", ops.identity()),
            ("comp.bob", "compliance", bob.identity()),
            ("sec.carol", "security", carol.identity()),
        ],
        "2s",
        "",
    );
    std::fs::write(&spec_path, spec).unwrap();
    let wrong = run_bounded(
        org.command(
            &[
                "org",
                "roster",
                "sign-genesis",
                "--dir",
                &org.dir.display().to_string(),
                "--roster",
                &spec_path.display().to_string(),
                "--out",
                &dir.path().join("never.cbor").display().to_string(),
            ],
            "not the organisation passphrase",
        ),
        STEP,
    );
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    assert!(!dir.path().join("never.cbor").exists());
    let v1 = dir.path().join("roster-v1.cbor");
    let signed = org.sign_genesis(&spec_path, &v1).ok("sign-genesis");
    let signed = &signed.events("roster_signed")[0];
    assert_eq!(signed["version"], 1);
    assert_eq!(signed["org_fingerprint"], org_fp.as_str());
    let published = ops
        .run(&["org", "roster", "publish", &v1.display().to_string()])
        .ok("publish");
    assert_eq!(published.events("roster_published")[0]["version"], 1);
    attest(&ops, &alice, "alice");
    // Any device (here the client) verifies it from its pinned fingerprint.
    let shown = alice.run(&["org", "roster", "show"]).ok("roster show");
    let shown = &shown.events("roster")[0];
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["hash"], signed["hash"]);
    assert_eq!(shown["org_fingerprint"], org_fp.as_str());
    assert_eq!(shown["authorized_by"], "organisation root");
    let roles: Vec<(String, String)> = shown["staff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["account"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("comp.bob".to_owned(), "compliance".to_owned()),
            ("ops.alice".into(), "operations".into()),
            ("sec.carol".into(), "security".into())
        ]
    );
    assert_eq!(
        shown["policy"]["quorums"]["high_risk_notice"]["threshold"],
        2
    );
    assert_eq!(shown["policy"]["cooling_off_ms"], 2000);
    // Publishing version 1 again is refused.
    let twice = ops.run(&["org", "roster", "publish", &v1.display().to_string()]);
    assert_ne!(twice.code, 0, "{}", twice.stdout);

    // Past the staff devices' cooling-off, a high-risk notice becomes a draft.
    std::thread::sleep(Duration::from_millis(2500));
    let draft = ops
        .run(&[
            "notice",
            "--to",
            "alice",
            "--category",
            "deposit_instruction",
            "--title",
            "New deposit address",
            "--body",
            "From 1 December, deposit to IBAN CH93 0076 2011 6238 5295 7.",
        ])
        .ok("high-risk notice");
    assert!(draft.events("notice_sent").is_empty(), "{}", draft.stdout);
    let draft = &draft.events("notice_draft")[0];
    assert_eq!(draft["category"], "deposit_instruction");
    let request = draft["requests"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(draft["requests"][0]["operation"], "high_risk_notice");
    // Nothing reached the client yet.
    let early = alice
        .run(&["inbox", "--wait", "2"])
        .ok("inbox before approval");
    assert!(early.events("notice").is_empty(), "{}", early.stdout);

    // A co-signer lists it and sees exactly what is approved.
    let listed = bob.run(&["approvals", "list"]).ok("approvals list");
    let listed = listed.events("approval");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["request_id"], request.as_str());
    assert_eq!(listed[0]["direction"], "incoming");
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(listed[0]["initiator"], "ops.alice");
    assert_eq!(listed[0]["threshold"], 2);
    let shown = bob
        .run(&["approvals", "show", &request[..8]])
        .ok("approvals show");
    let shown = &shown.events("approval")[0];
    assert_eq!(shown["operation"], "high_risk_notice");
    let summary = shown["summary"].as_str().unwrap();
    assert!(
        summary.contains("New deposit address") && summary.contains("CH93 0076 2011 6238 5295 7"),
        "{summary}"
    );
    let human = bob
        .run_human(&["approvals", "show", &request])
        .ok("approvals show (human)");
    assert!(
        human
            .stdout
            .contains("category: deposit_instruction (HIGH RISK)"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("to:       client alice"),
        "{}",
        human.stdout
    );
    // The initiator cannot approve its own request.
    let own = ops.run(&["approvals", "approve", &request, "--yes"]);
    assert_eq!(own.code, 2, "{}", own.stderr);
    // Without --yes, approving needs "yes" typed: no input approves nothing.
    let unconfirmed = bob.run(&["approvals", "approve", &request]);
    assert_ne!(unconfirmed.code, 0, "{}", unconfirmed.stdout);

    for d in [&bob, &carol] {
        let ok = d
            .run(&["approvals", "approve", &request, "--yes"])
            .ok("approve");
        assert_eq!(ok.events("approved")[0]["request_id"], request.as_str());
    }
    // The initiator collects the answers; the quorum sends the notice.
    let collected = ops.run(&["approvals", "list", "--all"]).ok("collect");
    let done = collected.events("operation_completed");
    assert_eq!(done.len(), 1, "{}", collected.stdout);
    assert_eq!(collected.events("approval")[0]["status"], "completed");
    let inbox = alice.run(&["inbox"]).ok("inbox");
    let notices = inbox.events("notice");
    assert_eq!(notices.len(), 1, "{}", inbox.stdout);
    let status = &notices[0]["entry"]["notice"];
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["signer"], "ops.alice");
    let mut cosigners: Vec<&str> = status["cosigners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    cosigners.sort();
    assert_eq!(cosigners, ["comp.bob (compliance)", "sec.carol (security)"]);

    // Linking: the new device asks, the existing one confirms with the code typed on
    // its standard input; a wrong code adds nothing (exit 7).
    let tablet = Device::new(users.path(), "alice-tablet");
    tablet.run(&["init"]).ok("init tablet");
    let ca = hex::encode(relay.ca_fingerprint);
    let addr = relay.addr.to_string();
    let link_args = [
        "--json",
        "device",
        "link",
        "--account",
        "alice",
        "--relay",
        &addr,
        "--ca",
        &ca,
        "--org",
        &org_fp,
        "--wait",
        "60",
    ];
    let link_once = |new: &Device, typed: &dyn Fn(&str) -> String| -> (i32, Vec<String>, Ran) {
        let mut link = new.command(&link_args, &new.passphrase);
        link.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut link = link.spawn().unwrap();
        let rx = line_reader(&mut link);
        let mut seen = Vec::new();
        let started = wait_for_event(&rx, "link_started", &mut seen);
        let fingerprint = started["fingerprint"].as_str().unwrap().to_owned();
        let link_id = started["link_id"].as_str().unwrap().to_owned();
        let mut confirm = alice.command(
            &["--json", "device", "confirm", "--link", &link_id],
            &alice.passphrase,
        );
        confirm
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut confirm = confirm.spawn().unwrap();
        let code = wait_for_event(&rx, "link_code", &mut seen)["code"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(code.len(), 6);
        {
            use std::io::Write;
            let mut stdin = confirm.stdin.take().unwrap();
            writeln!(stdin, "{}", typed(&code)).unwrap();
        }
        let out = confirm.wait_with_output().unwrap();
        let ran = Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // The pending request shown on the existing device names the new device.
        assert!(
            ran.events("pending_link")
                .iter()
                .any(|l| l["link_id"] == link_id.as_str()
                    && l["fingerprint"] == fingerprint.as_str()),
            "{}",
            ran.stdout
        );
        if ran.code != 0 {
            let _ = link.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = link.try_wait().unwrap() {
                break s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = link.kill();
                let _ = link.wait();
                break -1;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        (status, seen, ran)
    };
    // A wrong code: refused, exit 7; the new device is not added (its link is killed).
    let (_, _, wrong) = link_once(&tablet, &|code| {
        let mut c = code.as_bytes().to_vec();
        c[0] = if c[0] == b'1' { b'2' } else { b'1' };
        String::from_utf8(c).unwrap()
    });
    assert_eq!(wrong.code, 7, "{}\n{}", wrong.stdout, wrong.stderr);
    let devices = alice.run(&["device", "list"]).ok("device list");
    assert_eq!(
        devices.events("devices")[0]["devices"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The right code: added, and the new device finishes linking. The tablet starts
    // again at once: its new request replaces the one still pending from the first round.
    let (status, seen, right) = link_once(&tablet, &|code| code.to_owned());
    let right = right.ok("device confirm");
    assert_eq!(status, 0, "device link: {}", seen.join("\n"));
    let added = &right.events("device_confirmed")[0];
    assert_eq!(added["on_probation"], true);
    assert!(
        seen.iter().any(|l| l.contains("\"event\":\"linked\"")),
        "{}",
        seen.join("\n")
    );
    let devices = alice.run(&["device", "list"]).ok("device list");
    let devices = &devices.events("devices")[0];
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2, "{devices}");
    assert_eq!(devices["frozen"], false);
    let who = tablet.run(&["whoami"]).ok("whoami tablet");
    assert_eq!(who.events("whoami")[0]["account"], "alice");

    // A new device whose process ends (lid closed) right after it showed its code, and
    // is confirmed while it is away: `device link` again finishes joining (it is not
    // refused as "already registered").
    let desk = Device::new(users.path(), "alice-desk");
    desk.run(&["init"]).ok("init desk");
    let mut link = desk.command(&link_args, &desk.passphrase);
    link.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut link = link.spawn().unwrap();
    let rx = line_reader(&mut link);
    let mut seen = Vec::new();
    let link_id = wait_for_event(&rx, "link_started", &mut seen)["link_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut confirm = spawn(
        &alice,
        &["--json", "device", "confirm", "--link", &link_id],
        true,
    );
    let code = wait_for_event(&rx, "link_code", &mut seen)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = link.kill();
    let _ = link.wait();
    {
        use std::io::Write;
        let mut stdin = confirm.stdin.take().unwrap();
        writeln!(stdin, "{code}").unwrap();
    }
    output_of(confirm).ok("device confirm (new device away)");
    let again =
        run_bounded(desk.command(&link_args, &desk.passphrase), STEP).ok("device link again");
    assert_eq!(again.events("link_started")[0]["resumed"], true);
    assert_eq!(again.events("linked").len(), 1, "{}", again.stdout);
    let who = desk.run(&["whoami"]).ok("whoami desk");
    assert_eq!(who.events("whoami")[0]["account"], "alice");
}

/// Spawn `args` on `dev` (JSON lines on stdout), with `stdin` piped if asked.
fn spawn(dev: &Device, args: &[&str], stdin: bool) -> Child {
    let mut cmd = dev.command(args, &dev.passphrase);
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// Run the CLI as `dev` on a pseudo-terminal (util-linux `script`), typing `input`; the
/// terminal's output (stdout and stderr together, with CR LF line ends) is `stdout`.
fn on_terminal(dev: &Device, args: &[&str], input: &str) -> Ran {
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let line = std::iter::once(CLI)
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("SEALPOST_HOME", &dev.home)
        .env("SEALPOST_PASSPHRASE", &dev.passphrase)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("util-linux `script` runs the CLI on a terminal");
    let mut stdin = child.stdin.take().unwrap();
    {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    // Standard input stays open until the command ends (`script` ends the session at its EOF).
    let code = wait_exit(&mut child, STEP);
    drop(stdin);
    let mut ran = output_of(child);
    ran.code = code;
    ran.stdout = ran.stdout.replace("\r\n", "\n");
    ran
}

/// Wait (bounded) for `child` to exit; its exit code (-1 if killed).
fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return -1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Collect what a child with piped stdout/stderr printed after it exited.
fn output_of(child: Child) -> Ran {
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Link the new device `new` into `existing`'s account through two CLI processes: `device
/// link` (waiting in the background) and `device confirm` with the code typed on its
/// standard input. Returns the new device's id (hex).
fn link_through_cli(new: &Device, existing: &Device, account: &str, relay: &[&str]) -> String {
    new.run(&["init"]).ok("init");
    let mut args = vec!["--json", "device", "link", "--account", account];
    args.extend_from_slice(relay);
    args.extend_from_slice(&["--wait", "90"]);
    let mut link = spawn(new, &args, false);
    let rx = line_reader(&mut link);
    let mut seen = Vec::new();
    let link_id = wait_for_event(&rx, "link_started", &mut seen)["link_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut confirm = spawn(
        existing,
        &["--json", "device", "confirm", "--link", &link_id],
        true,
    );
    let code = wait_for_event(&rx, "link_code", &mut seen)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    {
        use std::io::Write;
        let mut stdin = confirm.stdin.take().unwrap();
        writeln!(stdin, "{code}").unwrap();
    }
    output_of(confirm).ok("device confirm");
    let linked = wait_for_event(&rx, "linked", &mut seen);
    assert_eq!(wait_exit(&mut link, STEP), 0, "{}", seen.join("\n"));
    linked["device"].as_str().unwrap().to_owned()
}

/// The trust commands end to end through the CLI, against a relay process: enrolment
/// refused without `--org` once the relay has an organisation, and `org pin` on a device
/// enrolled before it had one; a roster change proposed and approved by the quorum
/// (`org roster propose/approve`); `approvals reject`; a device revoked, a freeze that
/// revokes the device on probation and the quorum's unfreeze (`device revoke/freeze/
/// unfreeze`); a recovery (`device recover`) approved by the quorum; `device dismiss`;
/// and peer text with terminal escapes shown escaped in human output.
#[test]
fn cli_trust_commands_roster_change_devices_recovery_rejection_and_safe_output() {
    let dir = tempfile::tempdir().unwrap();
    let (org, org_fp) = Org::init(dir.path());
    // A fixed port, so that the relay restarted with an organisation is where devices
    // enrolled before expect it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = sealpost_tests::process::write_config_with(
        dir.path(),
        None,
        "link_requests_per_ip = { per_second = 100.0, burst = 1000.0 }\n",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&config, text).unwrap();
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    for (id, role) in [
        ("early", "client"),
        ("ops.alice", "staff"),
        ("comp.bob", "staff"),
        ("sec.carol", "staff"),
        ("alice", "client"),
    ] {
        admin(&config, &["create-account", id, "--role", role]);
    }
    for staff in ["ops.alice", "comp.bob", "sec.carol"] {
        admin(&config, &["assign", "alice", staff]);
    }
    let users = tempfile::tempdir().unwrap();
    // A device enrolled while the relay had no organisation.
    let early = Device::new(users.path(), "early");
    early.enrol(&config, &relay, "early");
    relay.terminate(Duration::from_secs(20));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("org_fingerprint = \"{org_fp}\"\n{text}")).unwrap();
    let relay = RelayProcess::start(Path::new(RELAY), &config, &[]);
    let addr = relay.addr.to_string();
    let ca = hex::encode(relay.ca_fingerprint);

    // Enrolling without --org is refused now (exit 2), before the code is used.
    let alice = Device::new(users.path(), "alice");
    alice.run(&["init"]).ok("init");
    let issued = admin(&config, &["issue-code", "alice"]);
    let code = issued["code"].as_str().unwrap();
    let refused = alice.run_human(&[
        "enroll",
        "--relay",
        &addr,
        "--ca",
        &ca,
        "--account",
        "alice",
        "--code",
        code,
    ]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--org") && refused.stderr.contains("out of band"),
        "{}",
        refused.stderr
    );
    // With another organisation than the relay's: a trust failure (exit 8) that names the
    // pinned fingerprint only (the relay's would invite copying it) and says to check it
    // with the firm out of band; the code is not used.
    let other_org = "cd".repeat(32);
    let mismatch = alice.run_human(&[
        "enroll",
        "--relay",
        &addr,
        "--ca",
        &ca,
        "--account",
        "alice",
        "--code",
        code,
        "--org",
        &other_org,
    ]);
    assert_eq!(mismatch.code, 8, "{}", mismatch.stderr);
    assert!(
        mismatch.stderr.contains("different organisation")
            && mismatch.stderr.contains(&other_org)
            && mismatch.stderr.contains("out of band"),
        "{}",
        mismatch.stderr
    );
    assert!(
        !mismatch.stderr.contains(&org_fp),
        "the relay's fingerprint is not printed: {}",
        mismatch.stderr
    );
    alice
        .run(&[
            "enroll",
            "--relay",
            &addr,
            "--ca",
            &ca,
            "--account",
            "alice",
            "--code",
            code,
            "--org",
            &org_fp,
        ])
        .ok("enroll with --org and the same code");
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
    let staff = [
        ("ops.alice", "operations", ops.identity()),
        ("comp.bob", "compliance", bob.identity()),
        ("sec.carol", "security", carol.identity()),
    ];
    let spec_path = dir.path().join("roster.toml");
    std::fs::write(&spec_path, roster_spec(&staff, "2s", "")).unwrap();
    let v1 = dir.path().join("roster-v1.cbor");
    org.sign_genesis(&spec_path, &v1).ok("sign-genesis");
    ops.run(&["org", "roster", "publish", &v1.display().to_string()])
        .ok("publish");
    attest(&ops, &alice, "alice");

    // `org pin` on the early device: another fingerprint is refused (exit 8), the firm's
    // is pinned and the roster verifies from it; it never changes again (exit 6).
    let wrong = early.run_human(&["org", "pin", &"ab".repeat(32)]);
    assert_eq!(wrong.code, 8, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains(&"ab".repeat(32)) && wrong.stderr.contains("out of band"),
        "{}",
        wrong.stderr
    );
    assert!(
        !wrong.stderr.contains(&org_fp),
        "the relay's organisation is not printed: {}",
        wrong.stderr
    );
    let pinned = early.run(&["org", "pin", &org_fp]).ok("org pin");
    let pinned = &pinned.events("org_pinned")[0];
    assert_eq!(pinned["org_fingerprint"], org_fp.as_str());
    assert_eq!(pinned["roster_version"], 1);
    let who = early.run(&["whoami"]).ok("whoami");
    assert!(who.stdout.contains(&org_fp), "{}", who.stdout);
    let again = early.run(&["org", "pin", &org_fp]);
    assert_eq!(again.code, 6, "{}", again.stderr);
    std::thread::sleep(Duration::from_millis(2500));

    // A roster change: ops proposes version 2, compliance and security approve.
    // (A minute's cooling-off for new devices from now on, so the laptop below is still
    // on probation when the account is frozen.)
    std::fs::write(&spec_path, roster_spec(&staff, "60s", "")).unwrap();
    let proposed = ops
        .run(&[
            "org",
            "roster",
            "propose",
            "--roster",
            &spec_path.display().to_string(),
        ])
        .ok("roster propose");
    let proposed = &proposed.events("roster_proposed")[0];
    assert_eq!(proposed["version"], 2);
    let rid = proposed["request"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for d in [&bob, &carol] {
        d.run(&["org", "roster", "approve", &rid, "--yes"])
            .ok("roster approve");
    }
    let collected = ops.run(&["approvals", "list", "--all"]).ok("collect");
    assert_eq!(
        collected.events("operation_completed").len(),
        1,
        "{}",
        collected.stdout
    );
    let shown = alice.run(&["org", "roster", "show"]).ok("roster show");
    assert_eq!(shown.events("roster")[0]["version"], 2);
    assert_eq!(
        shown.events("roster")[0]["policy"]["cooling_off_ms"],
        60_000
    );

    // `approvals reject`, with a reason carrying a terminal escape: the initiator is told,
    // and its human output shows the escape escaped.
    let draft = ops
        .run(&[
            "notice",
            "--to",
            "alice",
            "--category",
            "payment_instruction",
            "--title",
            "Pay",
            "--body",
            "Pay 1M to X",
        ])
        .ok("draft");
    let nid = draft.events("notice_draft")[0]["requests"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rejected = bob
        .run(&[
            "approvals",
            "reject",
            &nid,
            "--reason",
            "\u{1b}[2Jnot verified",
        ])
        .ok("approvals reject");
    assert_eq!(rejected.events("rejected")[0]["status"], "rejected");
    let listed = ops
        .run_human(&["approvals", "list", "--all"])
        .ok("list (human)");
    let printed = format!("{}{}", listed.stdout, listed.stderr);
    assert!(printed.contains("REJECTED"), "{printed}");
    assert!(printed.contains("\\u{1b}[2Jnot verified"), "{printed}");
    assert!(
        !printed.contains('\u{1b}'),
        "a raw escape reached the terminal: {printed:?}"
    );
    let shown = ops
        .run_human(&["approvals", "show", &nid])
        .ok("show (human)");
    assert!(
        shown
            .stdout
            .contains("REJECTED by comp.bob: \\u{1b}[2Jnot verified"),
        "{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains('\u{1b}'));
    // Names as the protocol spells them, never Rust's enum names.
    assert!(
        shown.stdout.contains("category: payment_instruction"),
        "{}",
        shown.stdout
    );
    assert!(
        !shown.stdout.contains("PaymentInstruction"),
        "{}",
        shown.stdout
    );

    // A notice whose title and body carry escapes is shown escaped in the inbox.
    ops.run(&[
        "notice",
        "--to",
        "alice",
        "--title",
        "Hello\u{1b}[31m",
        "--body",
        "line one\nline two\u{1b}]0;owned\u{7}",
    ])
    .ok("notice with escapes");
    let inbox = alice.run_human(&["inbox"]).ok("inbox (human)");
    let printed = format!("{}{}", inbox.stdout, inbox.stderr);
    assert!(printed.contains("Hello\\u{1b}[31m"), "{printed}");
    assert!(
        printed.contains("line two\\u{1b}]0;owned\\u{7}"),
        "{printed}"
    );
    assert!(printed.contains("line one\n"), "{printed}");
    assert!(
        !printed.contains('\u{1b}') && !printed.contains('\u{7}'),
        "{printed:?}"
    );

    // Devices: alice links a tablet, then revokes it.
    let relay_args = ["--relay", &addr, "--ca", &ca, "--org", &org_fp];
    let tablet = Device::new(users.path(), "tablet");
    let tablet_id = link_through_cli(&tablet, &alice, "alice", &relay_args);
    // The tablet writes to ops while it is valid; ops reads it only after the revoke.
    tablet
        .run(&["send", "ops.alice", "sent from the tablet"])
        .ok("send from the tablet");
    let revoked = alice
        .run(&[
            "device",
            "revoke",
            &tablet_id[..8],
            "--reason",
            "sold it",
            "--yes",
        ])
        .ok("device revoke");
    assert_eq!(
        revoked.events("device_revoked")[0]["device"],
        tablet_id.as_str()
    );
    // Queued at the relay before the revoke: shown, with a note, and no alarm about an
    // untrusted device or a compromised relay (PROTOCOL.md §18.3).
    let read = ops.run_human(&["inbox"]).ok("inbox after the revoke");
    assert!(
        read.stdout.contains("sent from the tablet"),
        "{}",
        read.stdout
    );
    assert!(
        read.stdout
            .contains("sent by a device of alice that has since been revoked"),
        "{}",
        read.stdout
    );
    assert!(
        !read.stderr.contains("UNTRUSTED") && !read.stderr.contains("compromised"),
        "{}",
        read.stderr
    );
    let gone = tablet.run(&["inbox", "--wait", "2"]);
    assert_ne!(
        gone.code, 0,
        "a revoked device cannot connect: {}",
        gone.stdout
    );
    // A laptop on probation is revoked by a freeze; the quorum unfreezes the account.
    let laptop = Device::new(users.path(), "laptop");
    let laptop_id = link_through_cli(&laptop, &alice, "alice", &relay_args);
    // On a terminal, `device freeze` asks: anything but "yes" freezes nothing (exit 1);
    // "yes" freezes.
    let declined = on_terminal(&alice, &["device", "freeze"], "no\n");
    assert_eq!(declined.code, 1, "{}", declined.stdout);
    assert!(
        declined.stdout.contains("Type 'yes' to freeze the account"),
        "{}",
        declined.stdout
    );
    assert!(
        declined.stdout.contains("not frozen"),
        "{}",
        declined.stdout
    );
    let list = alice.run(&["device", "list"]).ok("device list");
    assert_eq!(list.events("devices")[0]["frozen"], false);
    let frozen = on_terminal(
        &alice,
        &["--json", "device", "freeze", "--reason", "this wasn't me"],
        "yes\n",
    );
    assert_eq!(frozen.code, 0, "{}", frozen.stdout);
    let frozen: Value = frozen
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v["event"] == "frozen")
        .unwrap_or_else(|| panic!("no frozen event: {}", frozen.stdout));
    let frozen = &frozen;
    assert!(
        frozen["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == laptop_id.as_str()),
        "{frozen}"
    );
    let list = alice.run(&["device", "list"]).ok("device list");
    assert_eq!(list.events("devices")[0]["frozen"], true);
    let unfreeze = ops
        .run(&[
            "device",
            "unfreeze",
            "--account",
            "alice",
            "--reason",
            "called her back",
        ])
        .ok("device unfreeze");
    let uid = unfreeze.events("approval_requested")[0]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for d in [&bob, &carol] {
        d.run(&["approvals", "approve", &uid, "--yes"])
            .ok("approve unfreeze");
    }
    let collected = ops.run(&["approvals", "list"]).ok("collect unfreeze");
    assert_eq!(
        collected.events("operation_completed").len(),
        1,
        "{}",
        collected.stdout
    );
    let list = alice.run(&["device", "list"]).ok("device list");
    assert_eq!(list.events("devices")[0]["frozen"], false);

    // A stranger's link request is dismissed by alice; its `device link` gives up.
    let stranger = Device::new(users.path(), "stranger");
    stranger.run(&["init"]).ok("init stranger");
    let mut args = vec!["--json", "device", "link", "--account", "alice"];
    args.extend_from_slice(&relay_args);
    args.extend_from_slice(&["--wait", "60"]);
    let mut strange = spawn(&stranger, &args, false);
    let srx = line_reader(&mut strange);
    let mut seen = Vec::new();
    let sid = wait_for_event(&srx, "link_started", &mut seen)["link_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Alice did not start it: `device confirm` tells her to dismiss it (as README says),
    // not to freeze; a wrong code adds nothing and says so.
    let mut confirm = spawn(&alice, &["device", "confirm", "--link", &sid], true);
    let shown = wait_for_event(&srx, "link_code", &mut seen)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    {
        use std::io::Write;
        let mut stdin = confirm.stdin.take().unwrap();
        let wrong = if shown == "000000" {
            "000001"
        } else {
            "000000"
        };
        writeln!(stdin, "{wrong}").unwrap();
    }
    let refused = output_of(confirm);
    assert_eq!(refused.code, 7, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stdout
            .contains(&format!("sealpost device dismiss --link {sid}")),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("no device was added")
            && refused
                .stderr
                .contains(&format!("sealpost device dismiss --link {sid}")),
        "{}",
        refused.stderr
    );
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(!said.contains("freeze"), "{said}");
    let dismissed = alice
        .run(&["device", "dismiss", "--all"])
        .ok("device dismiss");
    assert_eq!(
        dismissed.events("link_dismissed")[0]["link_id"],
        sid.as_str()
    );
    let code = wait_exit(&mut strange, STEP);
    assert_ne!(code, 0);
    assert_ne!(
        code, -1,
        "device link gives up once its request is dismissed"
    );

    // Recovery: alice's devices are all lost; her new device asks, ops checks her out of
    // band (the code read to him) and the quorum approves.
    let fresh = Device::new(users.path(), "alice-new");
    fresh.run(&["init"]).ok("init new");
    let mut args = vec!["--json", "device", "link", "--account", "alice"];
    args.extend_from_slice(&relay_args);
    args.extend_from_slice(&["--wait", "120"]);
    let mut link = spawn(&fresh, &args, false);
    let rx = line_reader(&mut link);
    let mut seen = Vec::new();
    let link_id = wait_for_event(&rx, "link_started", &mut seen)["link_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut recover = spawn(
        &ops,
        &[
            "--json",
            "device",
            "recover",
            "--account",
            "alice",
            "--link",
            &link_id,
        ],
        true,
    );
    let offered = wait_for_event(&rx, "link_code", &mut seen);
    assert_eq!(offered["action"], "recover");
    {
        use std::io::Write;
        let mut stdin = recover.stdin.take().unwrap();
        writeln!(stdin, "{}", offered["code"].as_str().unwrap()).unwrap();
    }
    let recovered = output_of(recover).ok("device recover");
    let req = &recovered.events("approval_requested")[0];
    assert_eq!(req["operation"], "account_recovery");
    let recovery_id = req["request_id"].as_str().unwrap().to_owned();
    // Every approver checks the code with alice on a call of their own: without the
    // code, or with another one, nothing is approved.
    let shown = offered["code"].as_str().unwrap().to_owned();
    let without = bob.run(&["approvals", "approve", &recovery_id, "--yes"]);
    assert_ne!(without.code, 0, "{}", without.stdout);
    assert!(
        without.stderr.contains("--code") || without.stdout.contains("--code"),
        "{}{}",
        without.stdout,
        without.stderr
    );
    let wrong = if shown == "000000" {
        "000001"
    } else {
        "000000"
    };
    let mismatch = bob.run(&[
        "approvals",
        "approve",
        &recovery_id,
        "--yes",
        "--code",
        wrong,
    ]);
    assert_eq!(mismatch.code, 7, "{}", mismatch.stdout);
    let e: Value = serde_json::from_str(mismatch.stderr.trim()).unwrap();
    let said = format!("{} {}", e["error"], e["hint"]);
    assert!(
        said.contains("nothing was approved") && said.contains("call the account holder back"),
        "{said}"
    );
    assert!(
        !said.contains("withdrawn") && !said.contains("freeze"),
        "{said}"
    );
    let still = ops.run(&["approvals", "list"]).ok("collect 0");
    assert!(still.events("operation_completed").is_empty());
    // One approval is not enough.
    bob.run(&[
        "approvals",
        "approve",
        &recovery_id,
        "--yes",
        "--code",
        &shown,
    ])
    .ok("approve 1");
    let partial = ops.run(&["approvals", "list"]).ok("collect 1");
    assert!(partial.events("operation_completed").is_empty());
    carol
        .run(&[
            "approvals",
            "approve",
            &recovery_id,
            "--yes",
            "--code",
            &shown,
        ])
        .ok("approve 2");
    let done = ops.run(&["approvals", "list"]).ok("collect 2");
    assert_eq!(
        done.events("operation_completed").len(),
        1,
        "{}",
        done.stdout
    );
    wait_for_event(&rx, "linked", &mut seen);
    assert_eq!(wait_exit(&mut link, STEP), 0);
    let list = fresh.run(&["device", "list"]).ok("device list");
    let devices = &list.events("devices")[0];
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
    assert!(devices["devices"][0]["on_probation"] == true);
    assert!(!devices["revoked"].as_array().unwrap().is_empty());
}

#[test]
fn both_binaries_print_their_version_with_the_commit() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    for bin in [CLI, RELAY] {
        let out = Command::new(bin).arg("--version").output().unwrap();
        assert!(out.status.success(), "{bin} --version");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            text.contains(&format!("{} (commit ", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        // Built from this checkout: the commit is the one checked out (or `unknown` where
        // the build had no git).
        match &head {
            Some(h) if !text.contains("commit unknown") => {
                assert!(text.contains(h.as_str()), "{text} vs HEAD {h}")
            }
            _ => assert!(text.contains("commit "), "{text}"),
        }
    }
}

#[test]
fn a_closed_stdout_ends_quietly_usage_errors_are_json_and_a_busy_profile_has_its_own_code() {
    let dir = tempfile::tempdir().unwrap();
    let org = dir.path().join("org");
    let ok = Command::new(CLI)
        .args(["org", "init", "--dir"])
        .arg(&org)
        .env(
            "SEALPOST_ORG_PASSPHRASE",
            "correct horse battery staple for tests",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The reader is gone before anything is written (`sealpost ... | head -0`).
    let mut child = Command::new(CLI)
        .args(["org", "fingerprint", "--dir"])
        .arg(&org)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "no panic on a closed pipe: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // A usage error under --json is one JSON line, exit 2.
    let out = Command::new(CLI)
        .args(["--json", "send"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["event"], "error");
    assert_eq!(v["kind"], "usage");
    assert!(v["error"].as_str().unwrap().contains("<ACCOUNT>"), "{v}");
    // Without --json, clap's own text.
    let out = Command::new(CLI)
        .args(["send"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error:"));

    // A profile held by another process: exit 9 (not 3, the wrong passphrase's code).
    let home = dir.path().join("alice");
    let init = Command::new(CLI)
        .arg("init")
        .env("SEALPOST_HOME", &home)
        .env(
            "SEALPOST_PASSPHRASE",
            "correct horse battery staple for tests",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // The profile's lock file (client/src/state.rs), held as `sealpost listen` holds it.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(home.join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let out = Command::new(CLI)
        .args(["--json", "whoami"])
        .env("SEALPOST_HOME", &home)
        .env(
            "SEALPOST_PASSPHRASE",
            "correct horse battery staple for tests",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stderr).trim()).unwrap();
    assert_eq!(v["kind"], "profile_busy");
}

/// `--timeout` is one deadline for the whole command's waiting on the relay: with
/// `--timeout 5`, a relay that stops answering (SIGSTOP) right after the command
/// authenticated, in the middle of its requests, ends `inbox` and `send` within 6 s
/// (from the start of the process) with exit 5.
#[test]
fn cli_commands_end_within_their_timeout_when_the_relay_stops_answering_mid_request() {
    let dir = tempfile::tempdir().unwrap();
    let (config, relay) = start_relay(dir.path());
    for (id, role) in [("ann.advisor", "advisor"), ("alice", "client")] {
        admin(&config, &["create-account", id, "--role", role]);
    }
    admin(&config, &["assign", "alice", "ann.advisor"]);
    let users = tempfile::tempdir().unwrap();
    let ann = Device::new(users.path(), "ann");
    let alice = Device::new(users.path(), "alice");
    ann.enrol(&config, &relay, "ann.advisor");
    alice.enrol(&config, &relay, "alice");
    // Mail waiting for alice, so that `inbox` has work to do after it authenticated.
    for i in 0..8 {
        ann.run(&["send", "alice", &format!("message {i}")])
            .ok("send");
    }
    let authentications = |relay: &RelayProcess| {
        relay
            .log_text()
            .lines()
            .filter(|l| l.contains("device authenticated") && l.contains("alice"))
            .count()
    };
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(relay.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    for args in [
        &["inbox"][..],
        &["send", "ann.advisor", "are you there?"][..],
    ] {
        // The command may, rarely, finish before the relay is stopped: then try again.
        let mut stopped_mid_request = false;
        for _attempt in 0..3 {
            let before = authentications(&relay);
            let mut all = vec!["--json", "--timeout", "5"];
            all.extend_from_slice(args);
            let mut cmd = alice.command(&all, &alice.passphrase);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let started = Instant::now();
            let mut child = cmd.spawn().unwrap();
            while authentications(&relay) == before {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "{args:?} never authenticated"
                );
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            signal("-STOP");
            let code = wait_exit(&mut child, Duration::from_secs(30));
            let elapsed = started.elapsed();
            signal("-CONT");
            let ran = output_of(child);
            if code == 0 {
                continue;
            }
            assert_eq!(
                code, 5,
                "{args:?} exits 5 when the relay stops answering:\n{}",
                ran.stderr
            );
            let err: Value = serde_json::from_str(ran.stderr.lines().last().unwrap()).unwrap();
            assert_eq!(err["kind"], "relay_unreachable", "{}", ran.stderr);
            assert!(
                elapsed < Duration::from_secs(6),
                "{args:?} with --timeout 5 took {elapsed:?}"
            );
            stopped_mid_request = true;
            break;
        }
        assert!(
            stopped_mid_request,
            "{args:?} always finished before the relay was stopped"
        );
        // The relay answers again: the command works.
        alice.run(args).ok("after the relay came back");
    }
}

/// A CA pin that does not match the relay's certificate is a trust failure (exit 8), not
/// "is the relay running?" (exit 5): the relay answered, but with a certificate this
/// device does not trust. Nothing was sent: the code still works with the right pin.
#[test]
fn a_ca_pin_that_does_not_match_the_relay_is_a_trust_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (config, relay) = start_relay(dir.path());
    admin(&config, &["create-account", "alice", "--role", "client"]);
    let users = tempfile::tempdir().unwrap();
    let alice = Device::new(users.path(), "alice");
    alice.run(&["init"]).ok("init");
    let issued = admin(&config, &["issue-code", "alice"]);
    let code = issued["code"].as_str().unwrap();
    let right = issued["ca_fingerprint"].as_str().unwrap();
    let mut wrong = hex::decode(right).unwrap();
    wrong[0] ^= 0x01;
    let wrong = hex::encode(wrong);
    let addr = relay.addr.to_string();
    let enrol = |ca: &str, human: bool| {
        let args = [
            "enroll",
            "--relay",
            &addr,
            "--ca",
            ca,
            "--account",
            "alice",
            "--code",
            code,
        ];
        if human {
            alice.run_human(&args)
        } else {
            alice.run(&args)
        }
    };
    let ran = enrol(&wrong, false);
    assert_eq!(ran.code, 8, "{}\n{}", ran.stdout, ran.stderr);
    let v: Value = serde_json::from_str(ran.stderr.trim()).unwrap();
    assert_eq!(v["kind"], "trust_check_failed", "{v}");
    let said = format!("{} {}", v["error"], v["hint"]);
    assert!(said.contains("pinned CA"), "{said}");
    assert!(!said.contains("relay is running"), "{said}");
    let ran = enrol(&wrong, true);
    assert_eq!(ran.code, 8, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("does not match the pinned CA fingerprint"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("running"), "{}", ran.stderr);
    // The relay is up and the code unspent: the right pin enrols.
    let ran = enrol(right, false).ok("enroll with the right CA");
    assert_eq!(ran.events("enrolled")[0]["account"], "alice");
}

/// `device revoke` and `device freeze` cannot be undone by the user: without a terminal
/// they refuse to run unless `--yes` is given (exit 2, naming `--yes`), before anything
/// is opened or sent; on a terminal they ask (`cli_trust_commands_...`).
#[test]
fn device_revoke_and_freeze_need_a_terminal_or_yes() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::new(dir.path(), "nobody");
    for args in [
        vec!["device", "freeze"],
        vec!["device", "revoke", "abcd1234"],
    ] {
        let ran = dev.run_human(&args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.contains("not a terminal"), "{}", ran.stderr);
        assert!(ran.stderr.contains("--yes"), "{}", ran.stderr);
        let ran = dev.run(&args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.stderr);
        let v: Value = serde_json::from_str(ran.stderr.trim()).unwrap();
        assert_eq!(v["kind"], "usage");
        // With --yes the command goes on: here to the missing profile (exit 4).
        let mut with_yes = args.clone();
        with_yes.push("--yes");
        let ran = dev.run_human(&with_yes);
        assert_eq!(ran.code, 4, "{with_yes:?}: {}", ran.stderr);
    }
}

/// Shell completions and man pages, for both binaries: the bash script names the commands
/// and, sourced in bash, completes them; the other shells' scripts are produced; the man
/// page is roff (`.TH`) listing the commands; `man --out DIR` writes one page per command.
#[test]
fn completions_and_man_pages_for_both_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let run = |bin: &str, args: &[&str]| {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        run_bounded(cmd, STEP).ok(&format!("{bin} {args:?}"))
    };
    let bash_ok = Command::new("bash")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    for (bin, name, commands, (word, expected)) in [
        (
            CLI,
            "sealpost",
            &["send", "inbox", "device", "approvals", "completions", "man"][..],
            ("dev", "devices device"),
        ),
        (
            RELAY,
            "sealpost-relay",
            &["run", "config", "admin", "completions", "man"][..],
            ("adm", "admin"),
        ),
    ] {
        let bash = run(bin, &["completions", "bash"]).stdout;
        assert!(
            bash.contains(&format!("complete -F _{}", name.replace('-', "__")))
                || bash.contains(&format!("-F _{} {name}", name.replace('-', "__"))),
            "{name}: {bash}"
        );
        for c in commands {
            assert!(bash.contains(c), "{name} bash completion lacks {c}");
        }
        for shell in ["zsh", "fish", "elvish", "powershell"] {
            let script = run(bin, &["completions", shell]).stdout;
            assert!(script.contains(name), "{name} {shell}: {script}");
            assert!(script.contains("completions"), "{name} {shell}");
        }
        if bash_ok {
            let file = dir.path().join(format!("{name}.bash"));
            std::fs::write(&file, &bash).unwrap();
            let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            // Sourced, it completes the first word.
            let f = name.replace('-', "__");
            let script = format!(
                "source '{}' && COMP_WORDS=({name} {word}) && COMP_CWORD=1 && _{f} {name} {word} {name} && echo \"${{COMPREPLY[@]}}\"",
                file.display()
            );
            let done = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                done.status.success(),
                "{}",
                String::from_utf8_lossy(&done.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&done.stdout).trim(), expected);
        }
        let page = run(bin, &["man"]).stdout;
        assert!(page.contains(&format!(".TH {name} 1")), "{page}");
        assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
        for c in commands {
            assert!(
                page.contains(&format!("{}\\-{c}(1)", name.replace('-', "\\-"))),
                "{name} man page lacks {c}"
            );
        }
        let out = dir.path().join(format!("man-{name}"));
        run(bin, &["man", "--out", &out.display().to_string()]);
        for c in commands {
            let file = out.join(format!("{name}-{c}.1"));
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
            assert!(text.contains(".TH"), "{file:?}");
        }
        assert!(out.join(format!("{name}.1")).exists());
    }
    // Deeper pages too.
    assert!(dir
        .path()
        .join("man-sealpost/sealpost-device-freeze.1")
        .exists());
    assert!(dir
        .path()
        .join("man-sealpost-relay/sealpost-relay-admin-issue-code.1")
        .exists());
}
