//! Store throughput: envelopes enqueued per second by 64 concurrent enqueuers (1 KiB
//! bodies), SQLite (durable, group commit) against the in-memory store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::wire::Role;
use sealpost_protocol::IdentityKeyPair;
use sealpost_server::store::memory::MemoryStore;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::{Quota, Store};

const ENQUEUERS: usize = 64;
const PER_ENQUEUER: usize = 32;
const BODY: usize = 1024;
const T0: u64 = 1_700_000_000_000;
const QUOTA: Quota = Quota {
    max_count: u64::MAX,
    max_bytes: u64::MAX,
};

async fn enroll<S: Store>(store: &S, account: &AccountId, rng: &mut StdRng) -> DeviceId {
    let keys = IdentityKeyPair::generate(rng);
    let mut code = [0u8; 32];
    rng.fill_bytes(&mut code);
    store
        .add_enrollment_code(account, code, u64::MAX)
        .await
        .unwrap();
    store
        .redeem_enrollment(account, code, keys.public(), T0)
        .await
        .unwrap()
        .id
}

/// A recipient device per enqueuer (one account each: the device cap is per account),
/// and eight sender devices.
async fn setup<S: Store>(store: &S, rng: &mut StdRng) -> Vec<(DeviceId, DeviceId)> {
    let staff = AccountId::new("bench-staff").unwrap();
    store.create_account(&staff, Role::Staff, T0).await.unwrap();
    let mut senders = Vec::new();
    for _ in 0..8 {
        senders.push(enroll(store, &staff, rng).await);
    }
    let mut pairs = Vec::new();
    for i in 0..ENQUEUERS {
        let client = AccountId::new(&format!("bench-{i}")).unwrap();
        store
            .create_account(&client, Role::Client, T0)
            .await
            .unwrap();
        pairs.push((senders[i % 8], enroll(store, &client, rng).await));
    }
    pairs
}

/// Enqueue `ENQUEUERS * PER_ENQUEUER` envelopes from 64 tasks; returns the time taken.
async fn round<S: Store>(
    store: &Arc<S>,
    pairs: &[(DeviceId, DeviceId)],
    rng: &mut StdRng,
) -> Duration {
    let batches: Vec<Vec<Envelope>> = pairs
        .iter()
        .map(|(from, to)| {
            (0..PER_ENQUEUER)
                .map(|_| {
                    let header = RoutingHeader::new(*from, *to, EnvelopeKind::Chat, T0, rng);
                    let mut body = vec![0u8; BODY];
                    rng.fill_bytes(&mut body);
                    Envelope { header, body }
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|envs| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                for e in envs {
                    store.enqueue(&e, T0 + 1, QUOTA).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    // Keep the database small between rounds (not timed).
    store.expire(u64::MAX).await.unwrap();
    elapsed
}

fn bench_store<S: Store>(c: &mut Criterion, name: &str, store: S) -> Arc<S> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(store);
    let mut rng = StdRng::seed_from_u64(1);
    let pairs = rt.block_on(setup(&*store, &mut rng));
    let mut group = c.benchmark_group("store_enqueue_64_concurrent_1KiB");
    group.throughput(Throughput::Elements((ENQUEUERS * PER_ENQUEUER) as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += round(&store, &pairs, &mut rng).await;
                }
                total
            })
        })
    });
    group.finish();
    store
}

fn store_enqueue(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("bench.sqlite3")).unwrap();
    let sqlite = bench_store(c, "sqlite", sqlite);
    let stats = sqlite.write_stats();
    eprintln!(
        "sqlite group commit: {} writes in {} commits ({:.1} per commit)",
        stats.ops,
        stats.commits,
        stats.ops as f64 / stats.commits.max(1) as f64
    );
    bench_store(c, "memory", MemoryStore::new());
    drop(sqlite);
}

criterion_group!(benches, store_enqueue);
criterion_main!(benches);
