//! `sealpost-archiver` as a process (issue 11): a conversation with text both ways, an
//! attachment, a notice, an instruction and receipts lands in the archive once each,
//! readable with the archive key only and absent from every file the relay writes; the
//! archiver stopped while the conversation goes on, and killed with SIGKILL in the middle
//! of ingesting, misses nothing and holds nothing twice; a record edited, deleted or
//! reordered in the store is named by `verify`; past its retention a record becomes a
//! tombstone unless a legal hold covers it; searches and exports are recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sealpost_protocol::content::InstructionCategory;
use sealpost_protocol::trust::ArchiveUnreachable;
use sealpost_tests::firm::{firm_for, Firm, WAIT};
use sealpost_tests::org;

const BIN: &str = env!("CARGO_BIN_EXE_sealpost-archiver-under-test");

/// Run the archiver to completion (bounded to 120 s): (exit code, stdout, stderr). The
/// output is read while it runs (a full pipe would stall it).
fn archiver(home: &Path, args: &[&str]) -> (i32, String, String) {
    let child = spawn(home, args);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("sealpost-archiver {args:?} ran too long");
        }
    }
}

fn spawn(home: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .env("SEALPOST_PASSPHRASE", org::PASS)
        .env_remove("SEALPOST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn archiver_async(home: &Path, args: &[&str]) -> (i32, String, String) {
    let home = home.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        archiver(&home, &args)
    })
    .await
    .unwrap()
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An archiver home with its device enrolled in `f`'s archive account.
struct Archiver {
    home: PathBuf,
    _dir: tempfile::TempDir,
}

/// `init` an archiver, and a firm whose roster names its device.
async fn setup(unreachable: ArchiveUnreachable) -> (Firm, Archiver) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("archiver");
    let (code, out, err) = archiver_async(&home, &["--json", "init"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let init = &json_lines(&out)[0];
    let identity =
        sealpost_client::org::parse_identity_hex(init["device"].as_str().unwrap()).unwrap();
    // The key file is the firm's, owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.join("archive.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let f = firm_for(unreachable, identity).await;
    let code = f.relay.code(&f.archive_account).await;
    let info = org::relay_info(&f.relay, Some(&f.org));
    let (rc, out, err) = archiver_async(
        &home,
        &[
            "enroll",
            "--relay",
            &info.addr,
            "--ca",
            &info.ca_fingerprint,
            "--account",
            f.archive_account.as_str(),
            "--code",
            &code,
            "--org",
            info.org_fingerprint.as_deref().unwrap(),
        ],
    )
    .await;
    assert_eq!(rc, 0, "{out}{err}");
    (f, Archiver { home, _dir: dir })
}

/// Every message record in the archive (search, newest first), as (sender, kind, text).
async fn archived(a: &Archiver) -> Vec<(String, String, String)> {
    let (code, out, err) = archiver_async(
        &a.home,
        &["--json", "search", "--actor", "test", "--limit", "1000"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    json_lines(&out)
        .iter()
        .map(|h| {
            (
                h["meta"]["sender_account"].as_str().unwrap().to_owned(),
                h["meta"]["kind"].as_str().unwrap().to_owned(),
                h["snippet"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_is_archived_once_and_survives_stops_and_sigkill() {
    let (mut f, a) = setup(ArchiveUnreachable::Refuse).await;
    let adv = f.adv.account().unwrap().clone();
    let alice = f.alice.account().unwrap().clone();
    let canary = format!("canary-{}", hex::encode(rand::random::<[u8; 8]>()));
    // Past alice's cooling-off (instructions are a sensitive kind).
    org::settle().await;

    // The archiver runs while the conversation starts.
    let running = spawn(&a.home, &["run"]);
    f.alice
        .send_text(&adv, &format!("hello {canary}"))
        .await
        .unwrap();
    f.adv.receive(true, WAIT).await.unwrap();
    f.adv.send_text(&alice, "hello back").await.unwrap();
    f.adv
        .send_notice(&alice, "Statement", &format!("your statement {canary}"))
        .await
        .unwrap();
    // A notice to all clients, co-signed by compliance (its quorum), sent by operations.
    let outcome = f.staff[0]
        .send_signed_notice(
            sealpost_protocol::trust::NoticeCategory::General,
            sealpost_client::notices::NoticeTarget::AllClients,
            "Maintenance",
            &format!("trading pauses on Sunday {canary}"),
        )
        .await
        .unwrap();
    let sealpost_client::notices::NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("a notice to all clients needs its co-signer: {outcome:?}")
    };
    f.staff[1].receive(true, WAIT).await.unwrap();
    for r in &requests {
        f.staff[1].approve(&r.request_id).await.unwrap();
    }
    f.staff[0].receive(true, WAIT).await.unwrap();
    let file = f.homes.path().join("report.pdf");
    std::fs::write(&file, format!("%PDF-1.4 {canary}").repeat(100)).unwrap();
    f.alice
        .send_file(&adv, &file, "the report", |_, _| {})
        .await
        .unwrap();
    f.alice
        .send_instruction(&adv, InstructionCategory::Payment, "pay 100 to ACME")
        .await
        .unwrap();
    f.alice.receive(true, WAIT).await.unwrap();
    f.adv.receive(true, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Stopped while the conversation goes on, as a service manager stops it (SIGTERM):
    // it ends cleanly between receive passes and says what it archived.
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(running.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let pid = running.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || running.wait_with_output()),
    )
    .await;
    let Ok(out) = waited else {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("sealpost-archiver run did not stop within 30 s of SIGTERM");
    };
    let out = out.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Receiving archive copies as archive from ")
            && stdout.contains("Archived ")
            && stdout.contains(" new record(s); chain head "),
        "{stdout}"
    );
    for i in 0..5 {
        f.alice
            .send_text(&adv, &format!("while stopped {i}"))
            .await
            .unwrap();
    }
    let (code, out, err) = archiver_async(&a.home, &["--json", "run", "--once"]).await;
    assert_eq!(code, 0, "{out}{err}");

    // SIGKILL in the middle of ingesting a burst.
    for i in 0..150 {
        f.alice
            .send_text(&adv, &format!("burst {i}"))
            .await
            .unwrap();
    }
    let mut running = spawn(&a.home, &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.kill().unwrap(); // SIGKILL
    running.wait().unwrap();
    let (code, out, err) = archiver_async(&a.home, &["--json", "run", "--once"]).await;
    assert_eq!(code, 0, "{out}{err}");

    let all = archived(&a).await;
    let count =
        |pred: &dyn Fn(&(String, String, String)) -> bool| all.iter().filter(|r| pred(r)).count();
    assert_eq!(
        count(&|r| r.2.starts_with("hello ") && r.0 == "alice"),
        1,
        "{all:?}"
    );
    assert_eq!(count(&|r| r.2 == "hello back"), 1);
    assert_eq!(
        count(&|r| r.1 == "notice" && r.2.contains("your statement")),
        1
    );
    assert_eq!(
        count(&|r| r.1 == "notice" && r.0 == "ops" && r.2.contains("trading pauses")),
        1,
        "the co-signed notice to all clients: {all:?}"
    );
    assert_eq!(
        count(&|r| r.1 == "attachment" && r.2.contains("report.pdf")),
        1
    );
    assert_eq!(
        count(&|r| r.1 == "instruction" && r.2.contains("pay 100 to ACME")),
        1
    );
    assert!(count(&|r| r.1.starts_with("receipt.")) >= 1, "{all:?}");
    for i in 0..5 {
        assert_eq!(
            count(&|r| r.2 == format!("while stopped {i}")),
            1,
            "while stopped {i}"
        );
    }
    for i in 0..150 {
        assert_eq!(
            count(&|r| r.2 == format!("burst {i}")),
            1,
            "burst {i}: {all:?}"
        );
    }
    // The chain verifies; the attachment's bytes are in the archive (export holds them).
    let (code, out, err) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // The head was anchored in the relay's transparency log by the last `run --once`,
    // with the archive device as the actor; `anchor` anchors the current head.
    let (code, out, err) = archiver_async(&a.home, &["--json", "anchor"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let anchored = &json_lines(&out)[0];
    use sealpost_server::store::tlog::TlogStore;
    let leaves = f.relay.relay.store.leaves(0, 100_000).await.unwrap();
    let anchors: Vec<(u64, [u8; 32])> = leaves
        .iter()
        .filter_map(|(_, b)| {
            let leaf = sealpost_protocol::tlog::LogLeaf::from_bytes(b).unwrap();
            match leaf.event {
                sealpost_protocol::tlog::LeafEvent::ArchiveHead { seq, hash } => {
                    assert!(matches!(
                        leaf.actor,
                        sealpost_protocol::tlog::Actor::Device { ref account, .. } if account == &f.archive_account
                    ));
                    Some((seq, hash))
                }
                _ => None,
            }
        })
        .collect();
    assert!(anchors.len() >= 2, "{anchors:?}");
    let last = anchors.last().unwrap();
    assert_eq!(last.0, anchored["seq"].as_u64().unwrap());
    assert_eq!(
        anchored["leaf_index"].as_u64().unwrap() as usize,
        leaves.len() - 1,
        "the newest leaf"
    );
    let export = a.home.join("export-1");
    let (code, out, err) = archiver_async(
        &a.home,
        &[
            "--json",
            "export",
            "--actor",
            "compliance-officer",
            "--out",
            export.to_str().unwrap(),
            "--client",
            "alice",
            "--firm",
            "adv",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let attachments: Vec<_> = walk(&export.join("attachments"));
    assert_eq!(attachments.len(), 1, "{attachments:?}");
    assert!(std::fs::read(&attachments[0])
        .unwrap()
        .starts_with(b"%PDF-1.4 canary-"));
    let (code, out, err) =
        archiver_async(&a.home, &["verify-export", export.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");

    // The archive's files hold no plaintext; the relay's files hold none of it either.
    for p in walk(&a.home) {
        if p.starts_with(&export) {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{} holds the canary",
            p.display()
        );
    }
    let relay_dir = f.relay.dir.path().to_owned();
    for p in walk(&relay_dir) {
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "the relay's {} holds the canary",
            p.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_record_edited_deleted_or_reordered() {
    let (mut f, a) = setup(ArchiveUnreachable::Queue).await;
    let adv = f.adv.account().unwrap().clone();
    for i in 0..4 {
        f.alice.send_text(&adv, &format!("m{i}")).await.unwrap();
    }
    let (code, out, err) = archiver_async(&a.home, &["run", "--once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 0);
    let key = std::fs::read_to_string(a.home.join("archive.key")).unwrap();
    let db = a.home.join("archive.db");
    let open = || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(&format!("PRAGMA key = \"x'{}'\";", key.trim()))
            .unwrap();
        c
    };
    // Edited: record 2's body.
    {
        let c = open();
        let body: String = c
            .query_row("SELECT body FROM records WHERE seq = 2", [], |r| r.get(0))
            .unwrap();
        c.execute(
            "UPDATE records SET body = ?1 WHERE seq = 2",
            [body.replacen("alice", "mallory", 1)],
        )
        .unwrap();
    }
    let (code, _, err) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("record: 2"), "{err}");
    // Deleted: record 3 (after restoring 2 by a fresh archive is not possible: the chain
    // is broken at 2 first, so delete in a second archive's copy of the scenario).
    drop(f);
    let (mut f, a) = setup(ArchiveUnreachable::Queue).await;
    let adv = f.adv.account().unwrap().clone();
    for i in 0..4 {
        f.alice.send_text(&adv, &format!("m{i}")).await.unwrap();
    }
    let (code, _, _) = archiver_async(&a.home, &["run", "--once"]).await;
    assert_eq!(code, 0);
    let key = std::fs::read_to_string(a.home.join("archive.key")).unwrap();
    let c = rusqlite::Connection::open(a.home.join("archive.db")).unwrap();
    c.execute_batch(&format!("PRAGMA key = \"x'{}'\";", key.trim()))
        .unwrap();
    // The search index edited so that a search misses a message: the chain verifies,
    // the index does not (exit 8, saying so); `reindex` mends it from the contents.
    let seq: i64 = c
        .query_row("SELECT seq FROM content WHERE text = 'm1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    c.execute(
        "INSERT INTO message_fts (message_fts, rowid, text) VALUES ('delete', ?1, 'm1')",
        [seq],
    )
    .unwrap();
    let hits = |out: &str| json_lines(out).len();
    let search = ["--json", "search", "--actor", "t", "--text", "m1"];
    let (code, out, err) = archiver_async(&a.home, &search).await;
    assert_eq!((code, hits(&out)), (0, 0), "{out}{err}");
    let (code, _, err) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("search index does not match") && err.contains("reindex"),
        "{err}"
    );
    let (code, out, err) = archiver_async(&a.home, &["reindex"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = archiver_async(&a.home, &search).await;
    assert_eq!((code, hits(&out)), (0, 1), "{out}{err}");
    // Reordered: records 2 and 3 swap places.
    c.execute_batch(
        "UPDATE records SET seq = -2 WHERE seq = 2;
         UPDATE records SET seq = 2 WHERE seq = 3;
         UPDATE records SET seq = 3 WHERE seq = -2;",
    )
    .unwrap();
    drop(c);
    let (code, _, err) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("record: 2"), "{err}");
    let c = rusqlite::Connection::open(a.home.join("archive.db")).unwrap();
    c.execute_batch(&format!("PRAGMA key = \"x'{}'\";", key.trim()))
        .unwrap();
    c.execute_batch(
        "UPDATE records SET seq = -2 WHERE seq = 2;
         UPDATE records SET seq = 2 WHERE seq = 3;
         UPDATE records SET seq = 3 WHERE seq = -2;
         DELETE FROM records WHERE seq = 3;",
    )
    .unwrap();
    drop(c);
    let (code, _, err) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("record: 3") || err.contains("record: 4"),
        "{err}"
    );
    // Without the key, the store does not open at all.
    std::fs::write(a.home.join("archive.key"), format!("{}\n", "00".repeat(32))).unwrap();
    let (code, _, err) = archiver_async(&a.home, &["verify"]).await;
    assert_ne!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_retention_a_record_becomes_a_tombstone_unless_a_legal_hold_covers_it() {
    let (mut f, a) = setup(ArchiveUnreachable::Queue).await;
    let adv = f.adv.account().unwrap().clone();
    f.alice.send_text(&adv, "kept under hold").await.unwrap();
    let (code, _, _) = archiver_async(&a.home, &["run", "--once"]).await;
    assert_eq!(code, 0);
    // Retention of 0 days: everything is past it.
    std::fs::write(
        a.home.join("archiver.toml"),
        "[retention]\ndefault_days = 0\n",
    )
    .unwrap();
    let (code, out, err) = archiver_async(
        &a.home,
        &[
            "hold",
            "place",
            "--actor",
            "counsel",
            "--name",
            "case-17",
            "--reason",
            "litigation",
            "--client",
            "alice",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = archiver_async(&a.home, &["--json", "sweep", "--actor", "ops"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_lines(&out)[0]["deleted"], 0, "{out}");
    assert!(archived(&a).await.iter().any(|r| r.2 == "kept under hold"));
    let (code, out, err) = archiver_async(
        &a.home,
        &[
            "hold", "release", "--actor", "counsel", "--name", "case-17", "--reason", "closed",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = archiver_async(&a.home, &["--json", "sweep", "--actor", "ops"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        json_lines(&out)[0]["deleted"].as_u64().unwrap() >= 1,
        "{out}"
    );
    assert!(!archived(&a).await.iter().any(|r| r.2 == "kept under hold"));
    // The chain still verifies, with the tombstones in it.
    let (code, out, err) = archiver_async(&a.home, &["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    drop(f);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_shows_a_clients_terminal_escapes_escaped() {
    let (mut f, a) = setup(ArchiveUnreachable::Queue).await;
    let adv = f.adv.account().unwrap().clone();
    // A client's text that would clear the officer's screen and recolour what follows.
    f.alice
        .send_text(&adv, "payment cleared \u{1b}[2J\u{1b}[32mapproved")
        .await
        .unwrap();
    let (code, out, err) = archiver_async(&a.home, &["run", "--once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) =
        archiver_async(&a.home, &["search", "--actor", "t", "--text", "cleared"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains('\u{1b}'),
        "a raw escape reached the terminal: {out:?}"
    );
    assert!(
        out.contains("payment cleared \\u{1b}[2J\\u{1b}[32mapproved"),
        "{out:?}"
    );
    assert!(out.contains("1 result(s)"), "{out:?}");
}
