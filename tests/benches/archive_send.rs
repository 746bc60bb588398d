//! What the compliance archive costs a sender (issue 11): `Client::send_text` from a
//! client to her advisor over real QUIC to a relay on SQLite, with the roster naming an
//! archive and without one. Under `refuse` the archive's copy must be accepted before the
//! recipient's copy leaves (one more durable round trip to the relay); under `queue` it
//! is saved with the message and goes beside the recipient's copy. Both firms are set up in the same run; criterion
//! reports each, and their ratio is the archive's cost on the send path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sealpost_protocol::trust::ArchiveUnreachable;
use sealpost_server::limits::Rate;
use sealpost_tests::firm::{firm_tuned, Firm};

fn generous(c: &mut sealpost_server::config::Config) {
    c.limits.send_rate = Rate::new(1_000_000.0, 1_000_000.0);
    c.limits.mailbox_max_count = 10_000_000;
    c.limits.mailbox_max_bytes = 1 << 34;
}

fn send_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut firms: Vec<(&str, Firm)> = rt.block_on(async {
        vec![
            ("without_archive", firm_tuned(None, generous).await),
            (
                "with_archive_refuse",
                firm_tuned(Some(ArchiveUnreachable::Refuse), generous).await,
            ),
            (
                "with_archive_queue",
                firm_tuned(Some(ArchiveUnreachable::Queue), generous).await,
            ),
        ]
    });
    let mut group = c.benchmark_group("send_text_1kib");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(10));
    let text = "x".repeat(1024);
    // First with the advisor and the archive connected but not reading (the relay holds
    // what it hands an online device up to ONLINE_HOLD for its acknowledgement before
    // writing it, and the sender's `accepted` waits for one or the other), then with
    // both offline (written after BATCH_LINGER).
    for offline in [false, true] {
        for (name, f) in firms.iter_mut() {
            if offline {
                f.adv.disconnect();
                if let Some(a) = f.archive.as_mut() {
                    a.disconnect();
                }
            }
            let name = format!("{name}{}", if offline { "_recipients_offline" } else { "" });
            bench_one(&mut group, &rt, &name, f, &text);
        }
    }
    group.finish();
}

fn bench_one(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    f: &mut Firm,
    text: &str,
) {
    {
        let adv = f.adv.account().unwrap().clone();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        f.alice.send_text(&adv, text).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
}

criterion_group!(benches, send_path);
criterion_main!(benches);
