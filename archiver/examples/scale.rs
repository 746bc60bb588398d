//! Fills a temporary archive with synthetic messages and times ingest, searches and
//! `verify` at that scale.
//!
//! ```text
//! cargo run --release -p sealpost-archiver --example scale -- --records 1000000
//! ```
//!
//! Options: `--records N` (default 1,000,000), `--batch N` (default 1,000),
//! `--dir PATH` (keep the database there instead of a temporary directory),
//! `--no-verify` (skip the whole-store verify at the end), `--cache-mib N` (page
//! cache), `--wal-pages N` (WAL auto-checkpoint threshold).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sealpost_archiver::*;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CLIENTS: u32 = 2_000;
const ADVISORS: u32 = 50;
const T0: u64 = 1_700_000_000_000;

/// A vocabulary of made-up words, drawn with a skewed distribution so some words are
/// very common and most are rare, like real text.
struct Vocab(Vec<String>);

impl Vocab {
    fn new(rng: &mut StdRng, n: usize) -> Vocab {
        const SYL: [&str; 24] = [
            "ka", "lo", "mi", "ren", "sto", "va", "qui", "bel", "dor", "fen", "gal", "hor", "jin",
            "mar", "nel", "pra", "sul", "tor", "ul", "wex", "yor", "zan", "cet", "dri",
        ];
        let mut words: Vec<String> = [
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
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        while words.len() < n {
            let k = rng.gen_range(2..5);
            words.push((0..k).map(|_| SYL[rng.gen_range(0..SYL.len())]).collect());
        }
        Vocab(words)
    }

    fn word(&self, rng: &mut StdRng) -> &str {
        let x: f64 = rng.gen();
        let i = ((x * x * x) * self.0.len() as f64) as usize;
        &self.0[i.min(self.0.len() - 1)]
    }
}

fn message(rng: &mut StdRng, vocab: &Vocab, n: u64) -> NewRecord {
    let client = rng.gen_range(0..CLIENTS);
    let advisor = client % ADVISORS;
    let to_firm = rng.gen_bool(0.5);
    let words = rng.gen_range(8..30);
    let mut text = String::with_capacity(words * 7);
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(vocab.word(rng));
    }
    if n % 100_000 == 7 {
        text.push_str(" needle-in-haystack");
    }
    let client = format!("client-{client:05}");
    let firm = format!("advisor-{advisor:03}");
    let original = format!("{{\"kind\":\"text\",\"n\":{n},\"body\":\"{text}\"}}").into_bytes();
    NewRecord {
        source_id: format!("device-{:08x}/msg-{n}", n % 4096).into_bytes(),
        class: RecordClass::Message,
        sent_ms: T0 + n * 1_000,
        sender_account: if to_firm {
            client.clone()
        } else {
            firm.clone()
        },
        client_account: client,
        firm_account: firm,
        sender_device: "a1b2c3d4e5f60718".into(),
        direction: if to_firm {
            Direction::ClientToFirm
        } else {
            Direction::FirmToClient
        },
        kind: "text".into(),
        text,
        attachments: vec![],
        original,
    }
}

fn main() -> Result<()> {
    let mut records: u64 = 1_000_000;
    let mut batch: usize = 1_000;
    let mut dir: Option<PathBuf> = None;
    let mut verify = true;
    let mut cache_mib: Option<u32> = None;
    let mut wal_pages: Option<u32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => records = args.next().ok_or("--records N")?.parse()?,
            "--batch" => batch = args.next().ok_or("--batch N")?.parse()?,
            "--dir" => dir = Some(args.next().ok_or("--dir PATH")?.into()),
            "--no-verify" => verify = false,
            "--cache-mib" => cache_mib = Some(args.next().ok_or("--cache-mib N")?.parse()?),
            "--wal-pages" => wal_pages = Some(args.next().ok_or("--wal-pages N")?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let tmp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("scale.db");
    let key = ArchiveKey::generate();
    let mut options = ArchiveOptions::default();
    if let Some(m) = cache_mib {
        options.cache_size_kib = m * 1024;
    }
    if let Some(p) = wal_pages {
        options.wal_autocheckpoint_pages = p;
    }
    println!(
        "page cache {} MiB, WAL checkpoint every {} pages",
        options.cache_size_kib / 1024,
        options.wal_autocheckpoint_pages
    );
    let mut archive = Archive::open_with(&path, &key, options)?;
    let start_seq = archive.head()?.seq;
    let mut rng = StdRng::seed_from_u64(17);
    let vocab = Vocab::new(&mut rng, 20_000);

    println!(
        "filling {records} messages in batches of {batch} into {}",
        path.display()
    );
    let t = Instant::now();
    let mut gen_time = Duration::ZERO;
    let mut n = start_seq;
    let end = start_seq + records;
    while n < end {
        let g = Instant::now();
        let take = (end - n).min(batch as u64);
        let items: Vec<NewRecord> = (n..n + take)
            .map(|i| message(&mut rng, &vocab, i))
            .collect();
        gen_time += g.elapsed();
        archive.ingest_batch(&items)?;
        n += take;
        if n.is_multiple_of(100_000) {
            let secs = (t.elapsed() - gen_time).as_secs_f64();
            println!(
                "  {n:>9} records, {:.0} msgs/s (ingest only)",
                (n - start_seq) as f64 / secs
            );
        }
    }
    let ingest = t.elapsed() - gen_time;
    println!(
        "ingest: {records} messages in {:.1} s = {:.0} msgs/s (generation excluded)",
        ingest.as_secs_f64(),
        records as f64 / ingest.as_secs_f64()
    );
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum();
    println!("database size: {:.0} MiB", size as f64 / 1048576.0);

    let queries: Vec<(&str, SearchQuery)> = vec![
        (
            "text, common word, newest 50",
            SearchQuery {
                text: Some("wire".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text, two words, newest 50",
            SearchQuery {
                text: Some("wire transfer".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text, rare word",
            SearchQuery {
                text: Some("needle-in-haystack".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text, prefix, newest 50",
            SearchQuery {
                text: Some("withdr*".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text + client",
            SearchQuery {
                text: Some("deposit".into()),
                client: Some("client-00042".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text + advisor + date range",
            SearchQuery {
                text: Some("funds".into()),
                firm: Some("advisor-007".into()),
                from_ms: Some(T0 + 200_000_000),
                to_ms: Some(T0 + 500_000_000),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text, common word, bm25 top 50",
            SearchQuery {
                text: Some("wire".into()),
                order: SearchOrder::Relevance,
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "text, two words, bm25 top 50",
            SearchQuery {
                text: Some("wire transfer".into()),
                order: SearchOrder::Relevance,
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "client only, newest 100",
            SearchQuery {
                client: Some("client-01234".into()),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "date range only, oldest 100",
            SearchQuery {
                from_ms: Some(T0 + 300_000_000),
                to_ms: Some(T0 + 300_500_000),
                order: SearchOrder::Oldest,
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "text, common word, max results",
            SearchQuery {
                text: Some("please".into()),
                limit: 0,
                ..Default::default()
            },
        ),
    ];
    println!(
        "searches over {} records (each also appends its durable audit record); 7 runs each:",
        archive.head()?.seq
    );
    for (name, q) in &queries {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let r = archive.search("scale-bench", q)?;
            times.push(t.elapsed());
            hits = r.hits.len();
        }
        times.sort();
        println!(
            "  {name:<34} {hits:>5} hits  median {:>7.2} ms  max {:>7.2} ms",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        archive.anchor("scale-bench", "none", "durable append baseline")?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "  {:<34}        median {:>7.2} ms  max {:>7.2} ms",
        "(one durable audit append alone)",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    if verify {
        let t = Instant::now();
        let s = archive.verify()?;
        println!(
            "verify: {} records, {} contents in {:.1} s",
            s.records,
            s.contents_checked,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
