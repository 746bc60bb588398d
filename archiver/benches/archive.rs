//! Ingest throughput and search latency of the archive store.
//!
//! `cargo bench -p sealpost-archiver --bench archive`
//!
//! `ingest/batch/1000` is the archiver's normal path (one transaction, durable on return);
//! criterion reports it as elements (messages) per second. `ingest/single` is one
//! message per transaction (an fsync each). The search benches run over a store of
//! `SEARCH_STORE` messages; for one million, see `examples/scale.rs`.

// A benchmark fails loudly on setup errors.
#![allow(clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sealpost_archiver::*;

const SEARCH_STORE: u64 = 50_000;
const WORDS: [&str; 16] = [
    "wire",
    "transfer",
    "deposit",
    "address",
    "account",
    "please",
    "funds",
    "sell",
    "buy",
    "report",
    "statement",
    "withdrawal",
    "approve",
    "urgent",
    "thanks",
    "quarterly",
];

fn message(n: u64) -> NewRecord {
    // ~20 words of text and a ~300-byte original, like a chat message.
    let mut text = String::with_capacity(160);
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..20 {
        if i > 0 {
            text.push(' ');
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = WORDS[(x % WORDS.len() as u64) as usize];
        text.push_str(w);
        if x.is_multiple_of(5) {
            text.push_str(&format!("{}", x % 997));
        }
    }
    let client = format!("client-{:05}", n % 2_000);
    let firm = format!("advisor-{:03}", n % 50);
    NewRecord {
        source_id: format!("device-{:08x}/msg-{n}", n % 4096).into_bytes(),
        class: RecordClass::Message,
        sent_ms: 1_700_000_000_000 + n * 1_000,
        sender_account: client.clone(),
        client_account: client,
        firm_account: firm,
        sender_device: "a1b2c3d4e5f60718a1b2c3d4e5f60718".into(),
        direction: Direction::ClientToFirm,
        kind: "text".into(),
        original: format!("{{\"v\":1,\"kind\":\"text\",\"n\":{n},\"body\":\"{text}\"}}")
            .into_bytes(),
        text,
        attachments: vec![],
    }
}

fn ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ArchiveKey::generate();
    let mut archive = Archive::open(&dir.path().join("bench.db"), &key).expect("open");
    let next = Cell::new(0u64);
    let mut g = c.benchmark_group("ingest");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    for batch in [100u64, 1_000] {
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    let start = next.get();
                    next.set(start + batch);
                    (start..start + batch).map(message).collect::<Vec<_>>()
                },
                |items| {
                    let out = archive.ingest_batch(&items).expect("ingest");
                    assert!(out.iter().all(|i| !i.duplicate));
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |b| {
        b.iter_batched(
            || {
                let n = next.get();
                next.set(n + 1);
                message(n)
            },
            |item| archive.ingest(&item).expect("ingest"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn search(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ArchiveKey::generate();
    let mut archive = Archive::open(&dir.path().join("bench.db"), &key).expect("open");
    let mut n = 0;
    while n < SEARCH_STORE {
        let items: Vec<NewRecord> = (n..n + 1_000).map(message).collect();
        archive.ingest_batch(&items).expect("fill");
        n += 1_000;
    }
    let mut g = c.benchmark_group("search");
    g.sample_size(30);
    let queries = [
        (
            "text_newest_50",
            SearchQuery {
                text: Some("withdrawal".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text_client",
            SearchQuery {
                text: Some("deposit".into()),
                client: Some("client-00042".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text_bm25_50",
            SearchQuery {
                text: Some("urgent approve".into()),
                order: SearchOrder::Relevance,
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "client_newest_100",
            SearchQuery {
                client: Some("client-01234".into()),
                limit: 100,
                ..Default::default()
            },
        ),
    ];
    for (name, q) in &queries {
        g.bench_function(*name, |b| {
            b.iter(|| archive.search("bench", q).expect("search"))
        });
    }
    g.finish();
}

criterion_group!(benches, ingest, search);
criterion_main!(benches);
