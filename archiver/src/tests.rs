//! Store-level tests on real SQLCipher files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const T0: u64 = 1_765_000_000_000;

#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: ArchiveKey,
    clock: TestClock,
}

impl Fixture {
    fn new() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("archive.db");
        Ok(Fixture {
            _dir: dir,
            path,
            key: ArchiveKey::from_bytes([0x42; 32]),
            clock: TestClock(Arc::new(AtomicU64::new(T0))),
        })
    }

    fn open(&self) -> Result<Archive, ArchiveError> {
        self.open_with(RetentionPolicy::default())
    }

    fn open_with(&self, retention: RetentionPolicy) -> Result<Archive, ArchiveError> {
        Archive::open_with(
            &self.path,
            &self.key,
            ArchiveOptions {
                retention,
                clock: Box::new(self.clock.clone()),
                ..ArchiveOptions::default()
            },
        )
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A plain rusqlite connection to the same file, keyed: the tamperer's view.
    fn raw(&self) -> Result<rusqlite::Connection, rusqlite::Error> {
        let c = rusqlite::Connection::open(&self.path)?;
        c.execute_batch(&self.key.pragma())?;
        Ok(c)
    }
}

fn item(n: u32, client: &str, firm: &str, text: &str) -> NewRecord {
    NewRecord {
        source_id: format!("dev-{client}/msg-{n}").into_bytes(),
        class: RecordClass::Message,
        sent_ms: T0 + u64::from(n) * 1000,
        client_account: client.into(),
        firm_account: firm.into(),
        sender_account: client.into(),
        sender_device: "a1b2c3d4".into(),
        direction: Direction::ClientToFirm,
        kind: "text".into(),
        text: text.into(),
        attachments: vec![],
        original: format!("original bytes of message {n}: {text}").into_bytes(),
    }
}

fn five(a: &mut Archive) -> Result<Vec<Ingested>, ArchiveError> {
    a.ingest_batch(&[
        item(1, "alice", "bob", "hello bob"),
        item(2, "alice", "bob", "please wire funds"),
        item(3, "carol", "bob", "new deposit address"),
        item(4, "alice", "dave", "quarterly report"),
        item(5, "carol", "bob", "thanks"),
    ])
}

#[test]
fn wrong_key_is_a_typed_error() -> TestResult {
    let f = Fixture::new()?;
    {
        let mut a = f.open()?;
        five(&mut a)?;
    }
    let wrong = ArchiveKey::from_bytes([0x43; 32]);
    match Archive::open(&f.path, &wrong) {
        Err(ArchiveError::WrongKey { path }) => assert_eq!(path, f.path),
        other => return Err(format!("expected WrongKey, got {other:?}").into()),
    }
    // The right key still opens it.
    assert_eq!(f.open()?.head()?.seq, 5);
    Ok(())
}

#[test]
fn no_plaintext_in_the_files() -> TestResult {
    let f = Fixture::new()?;
    let canary = "CANARY-7f3e9b2a-plaintext";
    let mut rec = item(1, "alice-canary-acct", "bob", &format!("text {canary}"));
    rec.original = format!("orig {canary}").into_bytes();
    rec.attachments = vec![Attachment {
        name: format!("{canary}.pdf"),
        mime: "application/pdf".into(),
        bytes: format!("attachment {canary}").into_bytes(),
    }];
    let mut a = f.open()?;
    a.ingest(&rec)?;
    a.search(
        "officer",
        &SearchQuery {
            text: Some(canary.into()),
            ..SearchQuery::default()
        },
    )?;
    // While open (WAL not yet checkpointed) and after close.
    let check = |when: &str| -> TestResult {
        let mut files = 0;
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", f.path.display()));
            if let Ok(bytes) = std::fs::read(&p) {
                files += 1;
                for needle in [canary.as_bytes(), b"alice-canary-acct", b"SQLite format 3"] {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle),
                        "{when}: {} holds {:?}",
                        p.display(),
                        String::from_utf8_lossy(needle)
                    );
                }
            }
        }
        assert!(files >= 1);
        Ok(())
    };
    let wal = PathBuf::from(format!("{}-wal", f.path.display()));
    assert!(std::fs::metadata(&wal)?.len() > 0, "the WAL holds the data");
    check("open")?;
    drop(a);
    check("closed")?;
    // And it is all there for the key holder.
    let a = f.open()?;
    let c = a.content(1)?.ok_or("content")?;
    assert!(c.text.contains(canary));
    assert_eq!(c.attachments.len(), 1);
    Ok(())
}

#[test]
fn ingest_is_exactly_once() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    let first = five(&mut a)?;
    assert_eq!(
        first
            .iter()
            .map(|i| (i.seq, i.duplicate))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, false), (4, false), (5, false)]
    );
    // Redelivery after a crash: the same batch again, plus one new item and an
    // in-batch duplicate.
    let again = a.ingest_batch(&[
        item(2, "alice", "bob", "please wire funds"),
        item(6, "alice", "bob", "new one"),
        item(6, "alice", "bob", "new one"),
    ])?;
    assert_eq!(again[0].seq, 2);
    assert!(again[0].duplicate);
    assert_eq!(again[0].hash, first[1].hash);
    assert_eq!((again[1].seq, again[1].duplicate), (6, false));
    assert_eq!((again[2].seq, again[2].duplicate), (6, true));
    assert_eq!(a.head()?.seq, 6);
    assert_eq!(a.seq_of_source(b"dev-alice/msg-6")?, Some(6));
    // Survives reopening.
    drop(a);
    let mut a = f.open()?;
    assert!(a.ingest(&item(1, "alice", "bob", "hello bob"))?.duplicate);
    assert_eq!(a.head()?.seq, 6);
    a.verify()?;
    Ok(())
}

#[test]
fn chain_links_and_head() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    assert_eq!(
        a.head()?,
        Head {
            seq: 0,
            hash: GENESIS_PREV_HASH
        }
    );
    let done = five(&mut a)?;
    let mut prev = GENESIS_PREV_HASH;
    for (i, d) in done.iter().enumerate() {
        let r = a.record(d.seq)?.ok_or("record")?;
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.prev_hash, prev);
        assert_eq!(r.hash, d.hash);
        assert_eq!(r.computed_hash(), r.hash);
        assert_eq!(r.recorded_ms, T0);
        prev = r.hash;
    }
    let head = a.head()?;
    assert_eq!(head.seq, 5);
    assert_eq!(head.hash, prev);
    let anchor = a.anchor("archiver", "transparency-log", "leaf 17")?;
    assert_eq!(anchor, 6);
    match a.record(6)?.ok_or("anchor")?.body {
        RecordBody::Anchor {
            head_seq,
            head_hash,
            ..
        } => assert_eq!((head_seq, head_hash), (5, prev)),
        other => return Err(format!("not an anchor: {other:?}").into()),
    }
    let listed = a.records(2, 3)?;
    assert_eq!(
        listed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(listed[0].hash, done[1].hash);
    assert!(a.records(100, 10)?.is_empty());
    assert!(matches!(
        a.records(1, limits::MAX_LIST_RECORDS + 1),
        Err(ArchiveError::TooLarge { .. })
    ));
    let s = a.verify()?;
    assert_eq!(s.records, 6);
    assert_eq!(s.contents_checked, 5);
    assert_eq!(s.head, a.head()?);
    Ok(())
}

fn broken_at(a: &Archive) -> Result<(u64, Problem), Box<dyn std::error::Error>> {
    match a.verify() {
        Err(VerifyError::Broken { seq, problem }) => Ok((seq, problem)),
        other => Err(format!("expected a broken chain, got {other:?}").into()),
    }
}

#[test]
fn verify_names_an_edited_record() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    let n = f.raw()?.execute(
        "UPDATE records SET body = replace(body, 'dave', 'mallory') WHERE seq = 4",
        [],
    )?;
    assert_eq!(n, 1);
    assert_eq!(broken_at(&a)?, (4, Problem::Edited));
    Ok(())
}

#[test]
fn verify_names_an_edited_time() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    f.raw()?.execute(
        "UPDATE records SET recorded_ms = recorded_ms - 1 WHERE seq = 2",
        [],
    )?;
    assert_eq!(broken_at(&a)?, (2, Problem::Edited));
    Ok(())
}

#[test]
fn verify_names_a_deleted_record() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    f.raw()?.execute("DELETE FROM records WHERE seq = 3", [])?;
    assert_eq!(
        broken_at(&a)?,
        (
            3,
            Problem::Missing {
                expected: 3,
                found: 4
            }
        )
    );
    Ok(())
}

#[test]
fn verify_names_an_inserted_record_zero() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    f.raw()?.execute(
        "INSERT INTO records SELECT 0, kind, recorded_ms, body, prev_hash, hash FROM records WHERE seq = 1",
        [],
    )?;
    let (seq, problem) = broken_at(&a)?;
    assert_eq!(seq, 1);
    assert!(matches!(problem, Problem::Undecodable(_)), "{problem}");
    Ok(())
}

#[test]
fn verify_names_reordered_records() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    let raw = f.raw()?;
    // Swap the rows of records 2 and 3 (every column but the key).
    raw.execute_batch(
        "UPDATE records SET seq = -2 WHERE seq = 2;
         UPDATE records SET seq = 2 WHERE seq = 3;
         UPDATE records SET seq = 3 WHERE seq = -2;",
    )?;
    assert_eq!(broken_at(&a)?, (2, Problem::Reordered { links_to: 3 }));
    Ok(())
}

#[test]
fn verify_names_changed_or_deleted_content_and_index_edits() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    let raw = f.raw()?;
    raw.execute("UPDATE content SET original = x'00' WHERE seq = 4", [])?;
    assert_eq!(broken_at(&a)?, (4, Problem::ContentChanged));
    raw.execute(
        "UPDATE content SET text = 'sell everything' WHERE seq = 2",
        [],
    )?;
    assert_eq!(broken_at(&a)?, (2, Problem::ContentChanged));
    raw.execute("DELETE FROM content WHERE seq = 1", [])?;
    assert_eq!(broken_at(&a)?, (1, Problem::ContentMissing));

    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    f.raw()?
        .execute("UPDATE messages SET client = 'mallory' WHERE seq = 3", [])?;
    assert_eq!(broken_at(&a)?, (3, Problem::IndexMismatch("client")));

    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    f.raw()?.execute(
        "INSERT INTO content (seq, text, original) VALUES (99, 'hidden', x'00')",
        [],
    )?;
    assert_eq!(
        broken_at(&a)?,
        (
            99,
            Problem::IndexMismatch("content row without a message record")
        )
    );
    Ok(())
}

#[test]
fn verify_names_a_forged_tombstone() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open_with(RetentionPolicy {
        default_days: 1,
        ..RetentionPolicy::default()
    })?;
    five(&mut a)?;
    let report = a.sweep(T0 + 2 * DAY_MS, "sweeper")?;
    assert_eq!(report.deleted.len(), 5);
    a.verify()?;
    // Restoring the content of a tombstoned record is caught too.
    f.raw()?.execute(
        "INSERT INTO content (seq, text, original) VALUES (2, 'back', x'00')",
        [],
    )?;
    assert_eq!(
        broken_at(&a)?,
        (2, Problem::ContentNotDeleted { tombstone: 7 })
    );
    Ok(())
}

#[test]
fn retention_tombstones_unless_held() -> TestResult {
    let f = Fixture::new()?;
    let mut policy = RetentionPolicy::default();
    policy.classes.insert(RecordClass::Receipt, 30);
    let mut a = f.open_with(policy)?;
    five(&mut a)?;
    let mut receipt = item(6, "alice", "bob", "read");
    receipt.class = RecordClass::Receipt;
    a.ingest(&receipt)?;

    // Within retention: nothing happens.
    let r = a.sweep(T0 + 31 * DAY_MS, "sweeper")?;
    assert_eq!(r.deleted, vec![(6, 7)], "only the 30-day receipt expired");
    assert!(a.content(6)?.is_none());
    assert!(a.content(1)?.is_some());

    // A hold on alice's records, placed before seven years pass.
    let hold_seq = a.place_hold(
        "compliance-carol",
        "case-2031-17",
        "SEC inquiry 17",
        HoldScope::Client {
            account: "alice".into(),
        },
    )?;
    assert!(matches!(
        a.place_hold("x", "case-2031-17", "dup", HoldScope::All),
        Err(ArchiveError::HoldExists(_))
    ));
    let holds = a.holds()?;
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].placed_seq, hold_seq);
    assert_eq!(holds[0].placed_by, "compliance-carol");

    let eight_years = T0 + 8 * 365 * DAY_MS;
    let r = a.sweep(eight_years, "sweeper")?;
    // carol's 3 and 5 are deleted; alice's 1, 2, 4 are held.
    assert_eq!(
        r.deleted.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![3, 5]
    );
    assert_eq!(r.held, 3);
    assert!(!r.more);
    for seq in [1, 2, 4] {
        assert!(a.content(seq)?.is_some(), "{seq} is held");
    }
    for (target, tomb) in &r.deleted {
        assert!(a.content(*target)?.is_none());
        let meta = match a.record(*target)?.ok_or("record")?.body {
            RecordBody::Message(m) => m,
            other => return Err(format!("{other:?}").into()),
        };
        match a.record(*tomb)?.ok_or("tombstone")?.body {
            RecordBody::Tombstone {
                target: t,
                content_digest,
                class,
                actor,
                ..
            } => {
                assert_eq!(t, *target);
                assert_eq!(content_digest, meta.content_digest);
                assert_eq!(class, RecordClass::Message);
                assert_eq!(actor, "sweeper");
            }
            other => return Err(format!("not a tombstone: {other:?}").into()),
        }
    }
    // Deleted text is no longer searchable.
    let hits = a.search(
        "officer",
        &SearchQuery {
            text: Some("deposit".into()),
            ..SearchQuery::default()
        },
    )?;
    assert!(hits.hits.is_empty());
    a.verify()?;

    // Release: the next sweep deletes alice's records.
    assert!(matches!(
        a.release_hold("x", "no-such-hold", "r"),
        Err(ArchiveError::NoSuchHold(_))
    ));
    a.release_hold("compliance-carol", "case-2031-17", "inquiry closed")?;
    assert!(a.holds()?.is_empty());
    let r = a.sweep(eight_years, "sweeper")?;
    assert_eq!(
        r.deleted.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    assert_eq!(r.held, 0);
    let s = a.verify()?;
    assert_eq!(s.tombstones, 6);
    assert_eq!(s.contents_checked, 0);
    // A second sweep has nothing left to do.
    assert_eq!(a.sweep(eight_years, "sweeper")?, SweepReport::default());
    Ok(())
}

#[test]
fn date_range_and_all_holds() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open_with(RetentionPolicy {
        default_days: 1,
        ..RetentionPolicy::default()
    })?;
    five(&mut a)?;
    a.place_hold(
        "c",
        "range",
        "r",
        HoldScope::DateRange {
            from_ms: T0 + 2000,
            to_ms: T0 + 4000,
        },
    )?;
    let r = a.sweep(T0 + 2 * DAY_MS, "s")?;
    assert_eq!(
        r.deleted.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![1, 4, 5]
    );
    a.place_hold("c", "everything", "r", HoldScope::All)?;
    a.release_hold("c", "range", "done")?;
    assert!(a.sweep(T0 + 2 * DAY_MS, "s")?.deleted.is_empty());
    a.verify()?;
    Ok(())
}

#[test]
fn retention_policy_from_toml() -> TestResult {
    let p: RetentionPolicy = toml::from_str("default_days = 3650\n[classes]\nreceipt = 365\n")?;
    assert_eq!(p.days(RecordClass::Receipt), 365);
    assert_eq!(p.days(RecordClass::Notice), 3650);
    let d: RetentionPolicy = toml::from_str("")?;
    assert_eq!(d.days(RecordClass::Message), DEFAULT_RETENTION_DAYS);
    assert!(toml::from_str::<RetentionPolicy>("[classes]\nchat = 1\n").is_err());
    assert!(toml::from_str::<RetentionPolicy>("default_dayz = 1\n").is_err());
    let too_long = RetentionPolicy {
        default_days: 1_000_000,
        ..RetentionPolicy::default()
    };
    assert!(matches!(
        too_long.validate(),
        Err(ArchiveError::TooLarge { .. })
    ));
    Ok(())
}

#[test]
fn search_filters_and_audit() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    let seqs = |r: &SearchResults| r.hits.iter().map(|h| h.seq).collect::<Vec<_>>();

    let r = a.search(
        "officer-1",
        &SearchQuery {
            client: Some("alice".into()),
            ..SearchQuery::default()
        },
    )?;
    assert_eq!(seqs(&r), vec![4, 2, 1]);
    assert_eq!(r.audit_seq, 6);
    match a.record(6)?.ok_or("audit")?.body {
        RecordBody::Search {
            actor,
            query,
            results,
        } => {
            assert_eq!(actor, "officer-1");
            assert_eq!(query.client.as_deref(), Some("alice"));
            assert_eq!(results, 3);
        }
        other => return Err(format!("not a search record: {other:?}").into()),
    }

    let r = a.search(
        "o",
        &SearchQuery {
            firm: Some("bob".into()),
            order: SearchOrder::Oldest,
            ..SearchQuery::default()
        },
    )?;
    assert_eq!(seqs(&r), vec![1, 2, 3, 5]);

    let r = a.search(
        "o",
        &SearchQuery {
            from_ms: Some(T0 + 2000),
            to_ms: Some(T0 + 4000),
            ..SearchQuery::default()
        },
    )?;
    assert_eq!(seqs(&r), vec![3, 2]);

    let r = a.search(
        "o",
        &SearchQuery {
            text: Some("WIRE".into()),
            ..SearchQuery::default()
        },
    )?;
    assert_eq!(seqs(&r), vec![2]);
    assert_eq!(r.hits[0].snippet.as_deref(), Some("please wire funds"));
    assert_eq!(r.hits[0].meta.client_account, "alice");

    let r = a.search(
        "o",
        &SearchQuery {
            text: Some("dep*".into()),
            client: Some("carol".into()),
            order: SearchOrder::Relevance,
            ..SearchQuery::default()
        },
    )?;
    assert_eq!(seqs(&r), vec![3]);
    assert!(r.hits[0].score.is_some());

    // FTS5 syntax is taken literally, not interpreted.
    let r = a.search(
        "o",
        &SearchQuery {
            text: Some("NEAR( \"bob".into()),
            ..SearchQuery::default()
        },
    )?;
    assert!(r.hits.is_empty());

    let r = a.search(
        "o",
        &SearchQuery {
            limit: 2,
            ..SearchQuery::default()
        },
    )?;
    assert_eq!(seqs(&r), vec![5, 4]);

    assert!(matches!(
        a.search(
            "o",
            &SearchQuery {
                limit: limits::MAX_SEARCH_RESULTS + 1,
                ..SearchQuery::default()
            }
        ),
        Err(ArchiveError::TooLarge { .. })
    ));
    assert!(matches!(
        a.search("", &SearchQuery::default()),
        Err(ArchiveError::Invalid { what: "actor", .. })
    ));
    a.verify()?;
    Ok(())
}

#[test]
fn bounds_are_enforced() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    let mut r = item(1, "alice", "bob", "x");
    r.attachments = (0..=limits::MAX_ATTACHMENTS)
        .map(|i| Attachment {
            name: format!("{i}"),
            mime: "text/plain".into(),
            bytes: vec![],
        })
        .collect();
    assert!(matches!(
        a.ingest(&r),
        Err(ArchiveError::TooLarge {
            what: "attachments",
            ..
        })
    ));
    let mut r = item(1, "alice", "bob", "x");
    r.source_id.clear();
    assert!(matches!(
        a.ingest(&r),
        Err(ArchiveError::Invalid {
            what: "source_id",
            ..
        })
    ));
    let r = item(1, "alice", "bob", &"x".repeat(limits::MAX_TEXT_LEN + 1));
    assert!(matches!(a.ingest(&r), Err(ArchiveError::TooLarge { .. })));
    let batch: Vec<NewRecord> = (0..=limits::MAX_BATCH as u32)
        .map(|i| item(i, "a", "b", ""))
        .collect();
    assert!(matches!(
        a.ingest_batch(&batch),
        Err(ArchiveError::TooLarge {
            what: "batch size",
            ..
        })
    ));
    // One bad item fails the whole batch: nothing written.
    let mut bad = item(2, "alice", "bob", "y");
    bad.kind = "k".repeat(limits::MAX_KIND_LEN + 1);
    assert!(a
        .ingest_batch(&[item(1, "alice", "bob", "ok"), bad])
        .is_err());
    assert_eq!(a.head()?.seq, 0);
    Ok(())
}

fn exported(f: &Fixture) -> Result<(Archive, PathBuf, ExportReport), Box<dyn std::error::Error>> {
    let mut a = f.open()?;
    let mut r1 = item(
        1,
        "alice",
        "bob",
        "<script>alert('x')</script> & hello\nFrom here on",
    );
    r1.attachments = vec![
        Attachment {
            name: "statement.pdf".into(),
            mime: "application/pdf".into(),
            bytes: b"%PDF-1.4 fake but real bytes".to_vec(),
        },
        Attachment {
            name: "notes \"q\".txt".into(),
            mime: "text/plain\r\nBcc: evil@example.com".into(),
            bytes: b"line one\nline two".to_vec(),
        },
    ];
    let mut r2 = item(2, "alice", "bob", "Your new deposit address is X");
    r2.direction = Direction::FirmToClient;
    r2.sender_account = "bob".into();
    r2.class = RecordClass::Notice;
    a.ingest_batch(&[
        r1,
        item(3, "carol", "bob", "other conversation"),
        r2,
        item(4, "alice", "dave", "other advisor"),
    ])?;
    let dir = f.dir().join("export-1");
    let rep = a.export(
        "compliance-carol",
        &ExportScope::Conversation {
            client: "alice".into(),
            firm: "bob".into(),
            from_ms: None,
            to_ms: None,
        },
        &dir,
    )?;
    Ok((a, dir, rep))
}

#[test]
fn export_a_conversation_and_verify_it() -> TestResult {
    let f = Fixture::new()?;
    let (a, dir, rep) = exported(&f)?;
    assert_eq!(rep.records, 2);
    assert_eq!(rep.audit_seq, 5);
    match a.record(5)?.ok_or("export record")?.body {
        RecordBody::Export {
            actor,
            records,
            manifest_sha256,
            ..
        } => {
            assert_eq!(actor, "compliance-carol");
            assert_eq!(records, 2);
            assert_eq!(manifest_sha256, rep.manifest_sha256);
        }
        other => return Err(format!("not an export record: {other:?}").into()),
    }
    let v = verify_export(&dir)?;
    assert_eq!(v.records, 2);
    assert_eq!(v.contents, 2);
    assert_eq!(v.links, 3, "records 1..=3, 2 only as a link");
    assert_eq!(v.manifest_sha256, rep.manifest_sha256);

    // The files.
    for p in [
        "messages/1.eml",
        "messages/3.eml",
        "originals/1.bin",
        "originals/3.bin",
        "texts/1.txt",
        "attachments/1/0.bin",
        "attachments/1/1.bin",
        "mailbox.mbox",
        "index.html",
        "manifest.json",
    ] {
        assert!(dir.join(p).is_file(), "{p}");
    }
    assert!(!dir.join("messages/2.eml").exists());
    assert_eq!(
        std::fs::read(dir.join("originals/1.bin"))?,
        b"original bytes of message 1: <script>alert('x')</script> & hello\nFrom here on"
    );
    let eml = std::fs::read_to_string(dir.join("messages/1.eml"))?;
    let r1 = a.record(1)?.ok_or("r1")?;
    for h in [
        "Date: ".to_string(),
        "From: ".to_string(),
        "To: ".to_string(),
        "Subject: ".to_string(),
        "Message-ID: <sealpost-1-".to_string(),
        "X-Sealpost-Seq: 1\r\n".to_string(),
        format!("X-Sealpost-Hash: {}\r\n", hex::encode(r1.hash)),
        "multipart/mixed".to_string(),
        "application/pdf".to_string(),
        "statement.pdf".to_string(),
    ] {
        assert!(eml.contains(&h), "eml lacks {h:?}:\n{eml}");
    }
    assert!(eml.contains("alice@archive.sealpost.invalid"));
    assert!(eml.contains("bob@archive.sealpost.invalid"));
    assert!(
        !eml.contains("Bcc: evil"),
        "MIME type cannot inject a header"
    );
    let mbox = std::fs::read_to_string(dir.join("mailbox.mbox"))?;
    assert_eq!(mbox.matches("\nX-Sealpost-Seq: ").count(), 2);
    assert!(mbox.starts_with("From alice@archive.sealpost.invalid "));
    let html = std::fs::read_to_string(dir.join("index.html"))?;
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; hello"));
    assert!(!html.contains("<script>"));
    assert!(html.contains("Your new deposit address is X"));

    // A non-empty directory is refused.
    let mut a = a;
    assert!(matches!(
        a.export("x", &ExportScope::Seq { from: 1, to: 2 }, &dir),
        Err(ArchiveError::ExportDirNotEmpty(_))
    ));
    a.verify()?;
    Ok(())
}

#[test]
fn verify_export_names_the_first_bad_file_or_record() -> TestResult {
    let f = Fixture::new()?;
    let (_a, dir, _) = exported(&f)?;
    // A changed attachment: named by file.
    let att = dir.join("attachments/1/0.bin");
    let good = std::fs::read(&att)?;
    std::fs::write(&att, b"%PDF-1.4 FAKE but real bytes")?;
    match verify_export(&dir) {
        Err(ExportVerifyError::File { path, .. }) => assert_eq!(path, "attachments/1/0.bin"),
        other => return Err(format!("expected a bad file, got {other:?}").into()),
    }
    std::fs::write(&att, &good)?;
    verify_export(&dir)?;

    // A changed text whose new SHA-256 is written into the manifest: the content
    // digest names the record.
    let mpath = dir.join("manifest.json");
    let original_manifest = std::fs::read(&mpath)?;
    let mut m: Manifest = serde_json::from_slice(&original_manifest)?;
    let new_text = b"Your new deposit address is Y";
    std::fs::write(dir.join("texts/3.txt"), new_text)?;
    for file in &mut m.files {
        if file.path == "texts/3.txt" {
            file.sha256 =
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(new_text))
                    .into();
            file.size = new_text.len() as u64;
        }
    }
    std::fs::write(&mpath, serde_json::to_vec(&m)?)?;
    match verify_export(&dir) {
        Err(ExportVerifyError::Record { seq, problem }) => {
            assert_eq!(seq, 3);
            assert!(problem.contains("content digest"), "{problem}");
        }
        other => return Err(format!("expected a bad record, got {other:?}").into()),
    }

    std::fs::write(dir.join("texts/3.txt"), b"Your new deposit address is X")?;
    std::fs::write(&mpath, &original_manifest)?;
    verify_export(&dir)?;

    // Edited metadata in the manifest: the record hash names it.
    let mut m: Manifest = serde_json::from_slice(&original_manifest)?;
    if let RecordBody::Message(meta) = &mut m.records[0].record.body {
        meta.sent_ms += 1;
    }
    std::fs::write(&mpath, serde_json::to_vec(&m)?)?;
    match verify_export(&dir) {
        Err(ExportVerifyError::Record { seq, problem }) => {
            assert_eq!(seq, 1);
            assert!(problem.contains("edited"), "{problem}");
        }
        other => return Err(format!("expected a bad record, got {other:?}").into()),
    }

    // A path escaping the directory.
    let mut m: Manifest = serde_json::from_slice(&original_manifest)?;
    m.files[0].path = "../outside".into();
    std::fs::write(&mpath, serde_json::to_vec(&m)?)?;
    match verify_export(&dir) {
        Err(ExportVerifyError::File { path, problem }) => {
            assert_eq!(path, "../outside");
            assert!(problem.contains("unsafe"));
        }
        other => return Err(format!("expected an unsafe path, got {other:?}").into()),
    }
    std::fs::write(&mpath, b"{not json")?;
    assert!(matches!(
        verify_export(&dir),
        Err(ExportVerifyError::Manifest(_))
    ));
    Ok(())
}

#[test]
fn export_after_retention_and_by_seq() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open_with(RetentionPolicy {
        default_days: 1,
        ..RetentionPolicy::default()
    })?;
    five(&mut a)?;
    a.place_hold(
        "c",
        "h",
        "r",
        HoldScope::Client {
            account: "carol".into(),
        },
    )?;
    a.sweep(T0 + 2 * DAY_MS, "sweeper")?;
    let dir = f.dir().join("by-seq");
    let rep = a.export("auditor", &ExportScope::Seq { from: 1, to: 9 }, &dir)?;
    assert_eq!(rep.records, 9, "5 messages, a hold, 3 tombstones");
    let m: Manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    assert_eq!(m.records[0].content, ContentState::Deleted);
    assert_eq!(m.records[0].tombstone_seq, Some(7));
    assert_eq!(m.records[2].content, ContentState::Present);
    assert_eq!(m.records[5].content, ContentState::None);
    let v = verify_export(&dir)?;
    assert_eq!((v.records, v.contents), (9, 2));
    let eml = std::fs::read_to_string(dir.join("messages/1.eml"))?;
    assert!(eml.contains("content deleted at the end of retention"));
    assert!(matches!(
        a.export(
            "auditor",
            &ExportScope::Dates {
                from_ms: 1,
                to_ms: 2
            },
            &f.dir().join("e")
        ),
        Err(ArchiveError::NothingToExport)
    ));
    a.verify()?;
    Ok(())
}

#[test]
fn archive_can_move_to_another_thread() -> TestResult {
    fn assert_send<T: Send>() {}
    assert_send::<Archive>();
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    let head = std::thread::spawn(move || a.head())
        .join()
        .map_err(|_| "thread")??;
    assert_eq!(head.seq, 5);
    Ok(())
}

const CRASH_ENV: &str = "SEALPOST_ARCHIVER_CRASH_CHILD";
const CRASH_BATCHES: u32 = 100;
const CRASH_BATCH: u32 = 200;

fn crash_batch(b: u32) -> Vec<NewRecord> {
    (0..CRASH_BATCH)
        .map(|i| item(b * CRASH_BATCH + i, "alice", "bob", "crash test message"))
        .collect()
}

/// The child half of `sigkill_mid_ingest_loses_nothing_and_duplicates_nothing`: does
/// nothing unless that test started this process.
#[test]
fn crash_child() -> TestResult {
    let Ok(path) = std::env::var(CRASH_ENV) else {
        return Ok(());
    };
    let key = ArchiveKey::from_bytes([0x42; 32]);
    let mut a = Archive::open(Path::new(&path), &key)?;
    for b in 0..CRASH_BATCHES {
        a.ingest_batch(&crash_batch(b))?;
        // Slow enough that the parent's kill lands mid-way (most likely inside a
        // transaction: a batch takes longer than this pause).
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(())
}

#[test]
fn sigkill_mid_ingest_loses_nothing_and_duplicates_nothing() -> TestResult {
    let f = Fixture::new()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "tests::crash_child", "--nocapture"])
        .env(CRASH_ENV, &f.path)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    // Wait until the child is well into ingesting, then SIGKILL it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if let Ok(a) = f.open() {
            if a.head().map(|h| h.seq).unwrap_or(0) >= u64::from(CRASH_BATCH) * 10 {
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            return Err("the child never got going".into());
        }
    }
    child.kill()?;
    let status = child.wait()?;
    assert!(!status.success(), "killed, not finished");

    let mut a = f.open()?;
    let seen = a.verify()?.records;
    assert_eq!(
        seen % u64::from(CRASH_BATCH),
        0,
        "a batch is all or nothing"
    );
    assert!(
        seen < u64::from(CRASH_BATCHES * CRASH_BATCH),
        "killed mid-way"
    );
    // Redelivery of everything: the archived part is recognised, the rest added.
    let mut new = 0u64;
    for b in 0..CRASH_BATCHES {
        for r in a.ingest_batch(&crash_batch(b))? {
            if !r.duplicate {
                new += 1;
            }
        }
    }
    let total = u64::from(CRASH_BATCHES * CRASH_BATCH);
    assert_eq!(seen + new, total);
    let s = a.verify()?;
    assert_eq!(s.records, total);
    let distinct: i64 =
        f.raw()?
            .query_row("SELECT count(DISTINCT source_id) FROM messages", [], |r| {
                r.get(0)
            })?;
    assert_eq!(distinct as u64, total);
    Ok(())
}

/// Record numbers of the messages a text search finds.
fn found(a: &mut Archive, words: &str) -> Result<Vec<u64>, ArchiveError> {
    let r = a.search(
        "officer",
        &SearchQuery {
            text: Some(words.into()),
            order: SearchOrder::Oldest,
            ..SearchQuery::default()
        },
    )?;
    Ok(r.hits.iter().map(|h| h.seq).collect())
}

#[test]
fn verify_finds_a_search_index_that_hides_or_invents_records_and_reindex_mends_it() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    a.verify()?;
    assert_eq!(found(&mut a, "wire funds")?, vec![2]);

    // Someone with the key removes record 2's words from the index: the chain and the
    // contents still verify, but a search would no longer find it. verify says so.
    let raw = f.raw()?;
    raw.execute(
        "INSERT INTO message_fts (message_fts, rowid, text) VALUES ('delete', 2, 'please wire funds')",
        [],
    )?;
    assert_eq!(found(&mut a, "wire funds")?, Vec::<u64>::new());
    match a.verify() {
        Err(VerifyError::SearchIndex) => {}
        other => return Err(format!("a hiding index passed: {other:?}").into()),
    }
    a.reindex()?;
    a.verify()?;
    assert_eq!(found(&mut a, "wire funds")?, vec![2]);

    // Words a record does not hold, added to the index, are found too.
    raw.execute(
        "INSERT INTO message_fts (rowid, text) VALUES (3, 'offshore')",
        [],
    )?;
    match a.verify() {
        Err(VerifyError::SearchIndex) => {}
        other => return Err(format!("an inventing index passed: {other:?}").into()),
    }
    a.reindex()?;
    a.verify()?;
    assert_eq!(found(&mut a, "offshore")?, Vec::<u64>::new());

    // The index is never rebuilt from contents that do not verify.
    raw.execute(
        "UPDATE content SET text = 'nothing to see' WHERE seq = 2",
        [],
    )?;
    match a.reindex() {
        Err(VerifyError::Broken {
            seq: 2,
            problem: Problem::ContentChanged,
        }) => {}
        other => return Err(format!("reindexed over changed content: {other:?}").into()),
    }
    Ok(())
}

#[test]
fn a_schema_1_store_gets_a_checkable_search_index_when_opened() -> TestResult {
    let f = Fixture::new()?;
    {
        let mut a = f.open()?;
        five(&mut a)?;
    }
    // As schema 1 left it: a contentless index of the non-empty texts.
    {
        let raw = f.raw()?;
        raw.execute_batch(
            "DROP TABLE message_fts;
             CREATE VIRTUAL TABLE message_fts USING fts5(
                 text, content='', tokenize='unicode61 remove_diacritics 2');
             INSERT INTO message_fts (rowid, text) SELECT seq, text FROM content WHERE text != '';
             PRAGMA user_version = 1;",
        )?;
    }
    let mut a = f.open()?;
    let raw = f.raw()?;
    let version: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    assert_eq!(version, SCHEMA_VERSION);
    let sql: String = raw.query_row(
        "SELECT sql FROM sqlite_master WHERE name = 'message_fts'",
        [],
        |r| r.get(0),
    )?;
    assert!(sql.contains("content='content'"), "{sql}");
    a.verify()?;
    assert_eq!(found(&mut a, "deposit")?, vec![3]);
    // And it is checked from now on.
    raw.execute(
        "INSERT INTO message_fts (message_fts, rowid, text) VALUES ('delete', 3, 'new deposit address')",
        [],
    )?;
    assert!(matches!(a.verify(), Err(VerifyError::SearchIndex)));
    Ok(())
}

#[test]
fn a_failed_export_leaves_no_files_and_no_audit_record() -> TestResult {
    let f = Fixture::new()?;
    let mut a = f.open()?;
    five(&mut a)?;
    let head = a.head()?;
    let leftovers = |f: &Fixture| -> Result<Vec<String>, std::io::Error> {
        let mut names: Vec<String> = std::fs::read_dir(f.dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("export"))
            .collect();
        names.sort();
        Ok(names)
    };
    // Nothing to export: no directory is created.
    let dir = f.dir().join("export-none");
    assert!(matches!(
        a.export(
            "x",
            &ExportScope::Conversation {
                client: "nobody".into(),
                firm: "bob".into(),
                from_ms: None,
                to_ms: None
            },
            &dir
        ),
        Err(ArchiveError::NothingToExport)
    ));
    assert_eq!(leftovers(&f)?, Vec::<String>::new());
    // Failing midway (record 4's body made unreadable after records 1-3 were written):
    // the files written so far are removed, and the chain records no export.
    f.raw()?
        .execute("UPDATE records SET body = '{' WHERE seq = 4", [])?;
    let dir = f.dir().join("export-broken");
    assert!(a
        .export("x", &ExportScope::Seq { from: 1, to: 5 }, &dir)
        .is_err());
    assert_eq!(leftovers(&f)?, Vec::<String>::new());
    assert_eq!(a.head()?, head);
    // A successful export appears at its name, with its record, and nothing else.
    let dir = f.dir().join("export-ok");
    let r = a.export("x", &ExportScope::Seq { from: 1, to: 3 }, &dir)?;
    assert_eq!(r.audit_seq, head.seq + 1);
    assert_eq!(leftovers(&f)?, vec!["export-ok".to_string()]);
    verify_export(&dir)?;
    Ok(())
}
