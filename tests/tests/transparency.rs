//! The transparency log (issue 10), relay side: a device-log append over real QUIC yields
//! a leaf whose inclusion and consistency proofs verify with the protocol's functions;
//! `sealpost-relay audit verify` passes on an untouched database and names the leaf when
//! a row of the log is edited, deleted or swapped in the SQLite file; `audit export`
//! writes every leaf and the latest checkpoint; `audit key` prints the key checkpoints
//! are signed with.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_client::net::{NetError, RelayConnection};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::tlog::{
    proof_hashes, verify_consistency, verify_proof, LeafEvent, LeafProof, LogLeaf, LoggedAction,
    NoteKey, SignedCheckpoint,
};
use sealpost_protocol::trust::{DeviceAction, DeviceLog, LogEntry};
use sealpost_protocol::wire::{ErrorCode, FrameBody, Role};
use sealpost_protocol::IdentityKeyPair;
use sealpost_tests::process::{write_config, RelayProcess};
use sealpost_tests::{genesis_entry, now_ms, sqlite_relay_in};

const BIN: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");
const DAY: u64 = 24 * 3600 * 1000;

async fn checkpoint(conn: &RelayConnection) -> SignedCheckpoint {
    match conn.request(FrameBody::GetCheckpoint).await.unwrap() {
        FrameBody::Checkpoint { note } => {
            SignedCheckpoint::parse(note.as_str().as_bytes()).unwrap()
        }
        other => panic!("expected a checkpoint, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_log_append_yields_a_leaf_whose_proofs_verify() {
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |_| {}).await;
    let key = relay.relay.tlog.public().clone();
    let alice = relay.account("tl-alice", Role::Client).await;
    let identity = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(1));
    // Past its cooling-off, so that it may freeze the account.
    let genesis_ms = now_ms() - 2 * DAY;
    let dev = relay
        .device_with(
            &alice,
            IdentityKeyPair::generate(&mut StdRng::seed_from_u64(1)),
            genesis_ms,
            StdRng::seed_from_u64(2),
        )
        .await;

    // The first checkpoint the device accepts: signed by the relay's log key.
    let old = checkpoint(&dev.conn).await;
    let old_cp = old.verify_log(std::slice::from_ref(&key)).unwrap().clone();
    // The configuration at start, the account created, the code issued, the code
    // redeemed, the genesis head.
    assert_eq!(old_cp.size, 5);
    // The genesis head is proven too.
    let genesis = genesis_entry(&alice, &identity, genesis_ms);
    let mut log = DeviceLog::new(alice.clone());
    log.push(genesis.clone()).unwrap();

    // A device-log append over QUIC.
    let freeze = LogEntry::signed_by_device(
        log.next_body(now_ms(), DeviceAction::Freeze, "lost phone"),
        &identity,
        None,
    );
    let head = freeze.body.hash().0;
    let answer = dev
        .conn
        .request(FrameBody::AppendDeviceLog {
            entry: Box::new(freeze.clone()),
        })
        .await
        .unwrap();
    assert_eq!(answer, FrameBody::Done);

    // Its proof: the leaf, included in a new checkpoint that extends the old one.
    let answer = dev
        .conn
        .request(FrameBody::ProveLogHead {
            account: alice.clone(),
            length: 2,
            head,
            old_size: old_cp.size,
        })
        .await
        .unwrap();
    let FrameBody::LogProof {
        checkpoint: note,
        index,
        leaf,
        inclusion,
        consistency,
    } = answer
    else {
        panic!("expected a log proof, got {answer:?}")
    };
    let signed = SignedCheckpoint::parse(note.as_str().as_bytes()).unwrap();
    let cp = signed.verify_log(std::slice::from_ref(&key)).unwrap();
    // Leaf 5 is the freeze; the freeze also raises the `account_frozen` security event,
    // which the relay appends to the log right after (in its own task): the checkpoint
    // may already hold it.
    assert!(
        cp.size == 6 || cp.size == 7,
        "checkpoint of {} leaves",
        cp.size
    );
    assert_eq!(index, 5);
    let inclusion = proof_hashes(inclusion.as_slice());
    let consistency = proof_hashes(consistency.as_slice());
    let proof = LeafProof {
        leaf: leaf.as_slice(),
        index,
        inclusion: &inclusion,
        consistency: &consistency,
    };
    let decoded = verify_proof(&proof, cp, Some(&old_cp)).unwrap();
    assert_eq!(
        decoded.event,
        LeafEvent::DeviceLogHead {
            account: alice.clone(),
            length: 2,
            head,
            action: LoggedAction::Freeze,
        }
    );
    assert_eq!(decoded.index, 5);
    // The actor is the device that signed the entry.
    assert_eq!(
        decoded.actor,
        sealpost_protocol::tlog::Actor::Device {
            account: alice.clone(),
            device: identity.device_id()
        }
    );
    // A tampered proof, another old checkpoint or another leaf does not verify.
    let mut bad = inclusion.clone();
    bad[0][0] ^= 1;
    assert!(verify_proof(
        &LeafProof {
            inclusion: &bad,
            ..proof.clone()
        },
        cp,
        Some(&old_cp)
    )
    .is_err());
    let mut forked = old_cp.clone();
    forked.root[0] ^= 1;
    assert!(verify_proof(&proof, cp, Some(&forked)).is_err());
    let other_leaf = LogLeaf::device_log_head(&genesis, genesis_ms)
        .with_index(5)
        .to_bytes()
        .unwrap();
    assert!(verify_proof(
        &LeafProof {
            leaf: &other_leaf,
            ..proof.clone()
        },
        cp,
        None
    )
    .is_err());

    // The genesis head (length 1) is in the log too.
    let answer = dev
        .conn
        .request(FrameBody::ProveLogHead {
            account: alice.clone(),
            length: 1,
            head: genesis.body.hash().0,
            old_size: 0,
        })
        .await
        .unwrap();
    let FrameBody::LogProof {
        checkpoint: note,
        index,
        leaf,
        inclusion,
        ..
    } = answer
    else {
        panic!("{answer:?}")
    };
    // Against the checkpoint of this answer (the log may have grown by the security
    // event since).
    let now = SignedCheckpoint::parse(note.as_str().as_bytes()).unwrap();
    let now_cp = now.verify_log(std::slice::from_ref(&key)).unwrap();
    assert!(now_cp.size >= cp.size);
    let inclusion = proof_hashes(inclusion.as_slice());
    verify_proof(
        &LeafProof {
            leaf: leaf.as_slice(),
            index,
            inclusion: &inclusion,
            consistency: &[],
        },
        now_cp,
        None,
    )
    .unwrap();

    // A head the log does not hold is refused (not found), as is a proof from beyond the
    // tree.
    let err = dev
        .conn
        .request(FrameBody::ProveLogHead {
            account: alice.clone(),
            length: 2,
            head: [7; 32],
            old_size: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Refused {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    let err = dev
        .conn
        .request(FrameBody::ProveLogHead {
            account: alice.clone(),
            length: 2,
            head,
            old_size: 99,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Refused { .. }), "{err:?}");

    // Consistency between any two sizes verifies against the roots of those sizes.
    let answer = dev
        .conn
        .request(FrameBody::GetConsistency {
            old_size: old_cp.size,
            new_size: cp.size,
        })
        .await
        .unwrap();
    let FrameBody::Consistency { proof, .. } = answer else {
        panic!("{answer:?}")
    };
    verify_consistency(
        old_cp.size,
        cp.size,
        &old_cp.root,
        &cp.root,
        &proof_hashes(proof.as_slice()),
    )
    .unwrap();

    // A client may not read the leaves (they name accounts); without witnesses in the
    // roster no cosignature is taken.
    let err = dev
        .conn
        .request(FrameBody::GetLogLeaves {
            start: 0,
            count: 10,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Refused {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{err:?}"
    );
    let err = dev
        .conn
        .request(FrameBody::SubmitCosignature {
            size: cp.size,
            line: sealpost_protocol::wire::BoundedString::truncating("\u{2014} w AAAA"),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Refused {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{err:?}"
    );

    // The freeze raised the `account_frozen` security event, which concerns trust: the
    // relay appends it to the log once stored (leaf 6).
    use sealpost_server::store::tlog::TlogStore;
    let mut leaves = Vec::new();
    for _ in 0..100 {
        leaves = relay.relay.store.leaves(0, 100).await.unwrap();
        if leaves.len() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leaves.len(), 7);
    assert!(matches!(
        LogLeaf::from_bytes(&leaves[6].1).unwrap().event,
        LeafEvent::SecurityEvent { ref rule, ref account, .. }
            if rule.as_str() == "account_frozen" && account.as_ref() == Some(&alice)
    ));
    let before = checkpoint(&dev.conn).await;
    let before = before
        .verify_log(std::slice::from_ref(&key))
        .unwrap()
        .clone();
    assert_eq!(before.size, 7);

    // The tree survives a restart: same root, same proofs.
    let dir = relay.stop().await;
    let relay = sqlite_relay_in(dir, |_| {}).await;
    assert_eq!(relay.relay.tlog.public(), &key);
    let conn = relay.connect().await;
    conn.authenticate(&identity).await.unwrap();
    let again = checkpoint(&conn).await;
    let again = again.verify_log(std::slice::from_ref(&key)).unwrap();
    // The configuration is recorded once at first start, not again when unchanged.
    assert_eq!(again.size, before.size);
    assert_eq!(again.root, before.root);
}

/// `sealpost-relay --config CONFIG ARGS...`: (success, stdout + stderr).
fn relay_cmd(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
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

fn issue_code(config: &Path, account: &str) -> String {
    let (ok, out) = relay_cmd(config, &["admin", "--json", "issue-code", account]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    v["code"].as_str().unwrap().to_owned()
}

/// A copy of the data directory of `from` in a new test directory, with its own config.
fn copy_of(from: &Path) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for name in ["relay.sqlite3", "log-key.bin"] {
        std::fs::copy(from.join("data").join(name), data.join(name)).unwrap();
    }
    (dir, config)
}

/// Open the copied database as whoever holds the file would: triggers dropped.
fn tamper(dir: &Path, sql: &[(&str, Vec<rusqlite::types::Value>)]) {
    let c = rusqlite::Connection::open(dir.join("data").join("relay.sqlite3")).unwrap();
    c.execute_batch("DROP TRIGGER tlog_leaves_no_update; DROP TRIGGER tlog_leaves_no_delete;")
        .unwrap();
    for (q, params) in sql {
        c.execute(q, rusqlite::params_from_iter(params.iter()))
            .unwrap();
    }
}

fn leaves_of(dir: &Path) -> Vec<(i64, Vec<u8>)> {
    let c = rusqlite::Connection::open(dir.join("data").join("relay.sqlite3")).unwrap();
    let mut s = c
        .prepare("SELECT idx, leaf FROM tlog_leaves ORDER BY idx")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_an_edited_deleted_or_swapped_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for (a, role) in [("au-alice", "client"), ("au-bob", "client")] {
        let (ok, out) = relay_cmd(&config, &["admin", "create-account", a, "--role", role]);
        assert!(ok, "{out}");
    }
    let (ok, out) = relay_cmd(&config, &["audit", "key"]);
    assert!(ok, "{out}");
    let key = NoteKey::from_vkey(out.trim()).unwrap();

    let relay = RelayProcess::start(Path::new(BIN), &config, &[]);
    let mut rng = StdRng::seed_from_u64(3);
    let mut last = None;
    for a in ["au-alice", "au-bob"] {
        let code = issue_code(&config, a);
        let identity = IdentityKeyPair::generate(&mut rng);
        let conn = RelayConnection::connect(&relay.address()).await.unwrap();
        conn.enroll(&identity, &AccountId::new(a).unwrap(), &code)
            .await
            .unwrap();
        conn.authenticate(&identity).await.unwrap();
        // A signed checkpoint after each enrolment.
        let cp = checkpoint(&conn).await;
        cp.verify_log(std::slice::from_ref(&key)).unwrap();
        last = Some(cp);
    }
    assert!(relay.log_text().contains("transparency log key"));
    assert_eq!(relay.terminate(Duration::from_secs(20)), Some(0));
    let last = last.unwrap();

    // Untouched: it verifies.
    let (ok, out) = relay_cmd(&config, &["audit", "verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("the transparency log verifies"), "{out}");

    // Every leaf decodes; find alice's genesis head.
    let leaves = leaves_of(dir.path());
    let decoded: Vec<LogLeaf> = leaves
        .iter()
        .map(|(_, b)| LogLeaf::from_bytes(b).unwrap())
        .collect();
    assert!(decoded.len() as u64 >= last.checkpoint.size);
    assert!(decoded.iter().any(|l| matches!(&l.event,
        LeafEvent::AdminCommand { command, .. } if command.as_str() == "create-account")));
    assert!(decoded
        .iter()
        .any(|l| matches!(&l.event, LeafEvent::AccountCreated { account, role: Role::Client } if account.as_str() == "au-bob")));
    let k = decoded
        .iter()
        .position(|l| matches!(&l.event, LeafEvent::DeviceLogHead { account, length: 1, .. } if account.as_str() == "au-alice"))
        .unwrap();
    assert!(k > 0);
    assert!(matches!(
        decoded[k - 1].event,
        LeafEvent::EnrollmentRedeemed { .. }
    ));

    // Edited: alice's head changed (re-encoded, so it decodes and keeps its index).
    let (edited, edited_config) = copy_of(dir.path());
    let mut leaf = decoded[k].clone();
    if let LeafEvent::DeviceLogHead { head, .. } = &mut leaf.event {
        head[0] ^= 1;
    }
    tamper(
        edited.path(),
        &[(
            "UPDATE tlog_leaves SET leaf = ?1 WHERE idx = ?2",
            vec![leaf.to_bytes().unwrap().into(), (k as i64).into()],
        )],
    );
    let (ok, out) = relay_cmd(&edited_config, &["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "does not verify: leaf {k}: device log head of au-alice at length 1"
        )),
        "{out}"
    );
    // The signed checkpoint no longer matches either.
    assert!(out.contains("does not match the recomputed tree"), "{out}");

    // Deleted.
    let (deleted, deleted_config) = copy_of(dir.path());
    tamper(
        deleted.path(),
        &[(
            "DELETE FROM tlog_leaves WHERE idx = ?1",
            vec![(k as i64).into()],
        )],
    );
    let (ok, out) = relay_cmd(&deleted_config, &["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("does not verify: leaf {k} is missing")),
        "{out}"
    );

    // Two rows swapped.
    let (swapped, swapped_config) = copy_of(dir.path());
    tamper(
        swapped.path(),
        &[
            (
                "UPDATE tlog_leaves SET leaf = ?1 WHERE idx = ?2",
                vec![leaves[k].1.clone().into(), ((k - 1) as i64).into()],
            ),
            (
                "UPDATE tlog_leaves SET leaf = ?1 WHERE idx = ?2",
                vec![leaves[k - 1].1.clone().into(), (k as i64).into()],
            ),
        ],
    );
    let (ok, out) = relay_cmd(&swapped_config, &["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "does not verify: leaf {} was written as leaf {k}: moved or reordered",
            k - 1
        )),
        "{out}"
    );

    // The export: one line per leaf, then the latest checkpoint.
    let export = dir.path().join("export.jsonl");
    let (ok, out) = relay_cmd(
        &config,
        &["audit", "export", "--out", export.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), leaves.len() + 1);
    for (i, (_, bytes)) in leaves.iter().enumerate() {
        assert_eq!(lines[i]["index"], i as u64);
        assert_eq!(lines[i]["leaf_hex"], hex::encode(bytes));
        assert_eq!(
            lines[i]["leaf_hash"],
            hex::encode(sealpost_protocol::tlog::leaf_hash(bytes))
        );
        assert!(lines[i]["decoded"].is_object());
    }
    let note = lines.last().unwrap()["checkpoint"].as_str().unwrap();
    let cp = SignedCheckpoint::parse(note.as_bytes()).unwrap();
    cp.verify_log(std::slice::from_ref(&key)).unwrap();
}

/// A witness listed in the roster follows the log as a staff device, recomputes the tree
/// from the leaves, cosigns the checkpoint; the relay stores the cosignature and serves it,
/// and refuses one by a key the roster does not list. The roster version itself is proven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_listed_witness_cosigns_and_the_relay_serves_its_cosignature() {
    use sealpost_protocol::tlog::{KeyName, MerkleTree, TransparencyPolicy, WitnessSigner};
    use sealpost_protocol::trust::{ApprovalPolicy, OrgRoot, Roster, StaffMember, StaffRole};

    let root = OrgRoot::generate(&mut rand::rngs::OsRng);
    let relay = sealpost_tests::memory_relay_with_org(root.public().fingerprint(), |_| {}).await;
    let log_key = relay.relay.tlog.public().clone();
    let mut staff = Vec::new();
    let mut members = Vec::new();
    for (i, (name, role)) in [
        ("w-ops", StaffRole::Operations),
        ("w-comp", StaffRole::Compliance),
        ("w-sec", StaffRole::Security),
    ]
    .into_iter()
    .enumerate()
    {
        let account = relay.account(name, Role::Staff).await;
        let dev = relay.device(&account, 40 + i as u64).await;
        members.push(StaffMember {
            account,
            role,
            devices: vec![dev.identity.public().clone()],
        });
        staff.push(dev);
    }
    let witness = WitnessSigner::generate(
        KeyName::new("witness.example/w1").unwrap(),
        &mut rand::rngs::OsRng,
    );
    let stranger = WitnessSigner::generate(
        KeyName::new("witness.example/w1").unwrap(),
        &mut rand::rngs::OsRng,
    );
    let policy = ApprovalPolicy {
        transparency: Some(TransparencyPolicy {
            log_keys: vec![log_key.clone()],
            witnesses: vec![witness.public().clone()],
            witness_threshold: 1,
        }),
        ..ApprovalPolicy::default()
    };
    let roster = Roster::new(1, None, now_ms() - 1000, members, policy).unwrap();
    let v1 = root.sign_genesis(roster.clone()).unwrap();
    staff[0].conn.publish_roster(v1).await.unwrap();
    let sec = &staff[2].conn;

    // The witness: the checkpoint, signed by the roster's log key, and the leaves, whose
    // tree has exactly the checkpoint's root.
    let signed = checkpoint(sec).await;
    let cp = signed
        .verify_log(std::slice::from_ref(&log_key))
        .unwrap()
        .clone();
    let mut tree = MerkleTree::new();
    while tree.size() < cp.size {
        let answer = sec
            .request(FrameBody::GetLogLeaves {
                start: tree.size(),
                count: 2,
            })
            .await
            .unwrap();
        let FrameBody::LogLeaves {
            start,
            leaves,
            size,
        } = answer
        else {
            panic!("{answer:?}")
        };
        assert_eq!(start, tree.size());
        assert!(size >= cp.size);
        assert!(!leaves.as_slice().is_empty());
        for l in leaves.as_slice() {
            let leaf = LogLeaf::from_bytes(l.as_slice()).unwrap();
            assert_eq!(leaf.index, tree.size());
            tree.push(sealpost_protocol::tlog::leaf_hash(l.as_slice()));
        }
    }
    assert_eq!(tree.root_at(cp.size).unwrap(), cp.root);
    // Not enough cosignatures yet for clients.
    assert!(signed
        .verify(
            std::slice::from_ref(&log_key),
            &[witness.public().clone()],
            1
        )
        .is_err());

    // A cosignature by a key the roster does not list (same name) is refused.
    let bad = stranger.cosign(&cp, now_ms() / 1000);
    let err = sec
        .request(FrameBody::SubmitCosignature {
            size: cp.size,
            line: sealpost_protocol::wire::BoundedString::truncating(&bad.line()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Refused {
                code: ErrorCode::BadFrame,
                ..
            }
        ),
        "{err:?}"
    );
    // The listed witness's is stored and served.
    let good = witness.cosign(&cp, now_ms() / 1000);
    let answer = sec
        .request(FrameBody::SubmitCosignature {
            size: cp.size,
            line: sealpost_protocol::wire::BoundedString::truncating(&good.line()),
        })
        .await
        .unwrap();
    assert_eq!(answer, FrameBody::Done);
    let served = checkpoint(&staff[0].conn).await;
    let verified = served
        .verify(
            std::slice::from_ref(&log_key),
            &[witness.public().clone()],
            1,
        )
        .unwrap();
    assert_eq!(verified, &cp);

    // The roster version is in the log.
    let answer = sec
        .request(FrameBody::ProveRoster {
            version: 1,
            hash: roster.hash().0,
            old_size: 0,
        })
        .await
        .unwrap();
    let FrameBody::LogProof {
        index,
        leaf,
        inclusion,
        ..
    } = answer
    else {
        panic!("{answer:?}")
    };
    let inclusion = proof_hashes(inclusion.as_slice());
    let leaf = verify_proof(
        &LeafProof {
            leaf: leaf.as_slice(),
            index,
            inclusion: &inclusion,
            consistency: &[],
        },
        &cp,
        None,
    )
    .unwrap();
    assert_eq!(
        leaf.event,
        LeafEvent::Roster {
            version: 1,
            hash: roster.hash().0
        }
    );
    assert_eq!(leaf.actor, sealpost_protocol::tlog::Actor::Operator);
}
