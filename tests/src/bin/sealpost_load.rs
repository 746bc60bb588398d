//! `sealpost-load`: a load generator for the Sealpost relay over QUIC on loopback.
//!
//! Throughput/latency mode: sets up `--pairs` (client, advisor) device pairs, each with
//! an enrolled and authenticated device per side, prekeys published and a Double Ratchet
//! session established by a first envelope; then drives sealed envelopes (real
//! `Session::seal` output of a 1 KiB plaintext) from the client device to the advisor
//! device, either closed loop (`--outstanding` sends in flight per connection) or open
//! loop (`--rate` envelopes per second in total), for `--duration` seconds after a
//! `--warmup`. Receivers acknowledge every delivery (fire-and-forget frames). Reports
//! delivered envelopes per second, end-to-end latency (send call start to `Deliver`
//! received) and the relay's RSS.
//!
//! Idle mode (`--idle N`): N enrolled devices hold authenticated idle connections for
//! `--hold` seconds; reports the relay's RSS.
//!
//! With `--store sqlite` (the default) the relay runs as a separate process (the
//! `sealpost-relay-under-test` binary next to this one, or `--relay-bin`), so its RSS is
//! its own; accounts, codes and assignments are written into its database before it
//! starts. With `--store memory` the relay cannot be administered from outside, so it
//! runs in this process on its own Tokio runtime and the RSS reported includes the
//! generator. See `docs/LOAD.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_client::net::{client_endpoint, NetError, RelayAddress, RelayConnection};
use sealpost_protocol::envelope::{EnvelopeKind, MessageId, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::wire::{FrameBody, Role};
use sealpost_protocol::{accept, initiate, Envelope, IdentityKeyPair, PreKeySecrets, Session};
use sealpost_server::config::{Backend, Config};
use sealpost_server::limits::Rate;
use sealpost_server::store::memory::MemoryStore;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::MailboxStore;
use sealpost_server::{admin, Server};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Database file name inside the relay's data directory (as in the relay's main.rs).
const DB_FILE: &str = "relay.sqlite3";
/// Plaintext bytes per envelope.
const PLAINTEXT_LEN: usize = 1024;
/// How long receivers keep draining after the senders stop.
const DRAIN: Duration = Duration::from_secs(5);
/// How long the relay process has to come up.
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at connecting and enrolling one device.
const SETUP_ATTEMPTS: u32 = 3;
/// Open loop: most sends in flight per connection before the generator counts itself late.
const OPEN_LOOP_MAX_INFLIGHT: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// Durable SQLite store; the relay runs as a separate process.
    Sqlite,
    /// In-memory store; the relay runs in this process on its own runtime.
    Memory,
}

#[derive(Parser, Debug)]
#[command(
    name = "sealpost-load",
    about = "Load generator for the Sealpost relay (loopback QUIC)"
)]
struct Cli {
    /// Storage backend of the relay under test.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Device pairs (client device -> advisor device).
    #[arg(long, default_value_t = 64)]
    pairs: usize,
    /// Closed loop: sends in flight per sending connection.
    #[arg(long, default_value_t = 32)]
    outstanding: usize,
    /// Open loop: total target rate, envelopes per second (closed loop when absent).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Idle mode: open this many authenticated idle connections instead.
    #[arg(long)]
    idle: Option<usize>,
    /// Idle mode: seconds to hold the connections before measuring RSS.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Device setups (enrolment, authentication, prekeys) in parallel.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Client UDP endpoints shared by all connections.
    #[arg(long, default_value_t = 8)]
    endpoints: usize,
    /// Relay binary (default: sealpost-relay-under-test or sealpost-relay next to this one).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Relay delivery window (unacknowledged deliveries per device).
    #[arg(long, default_value_t = 256)]
    delivery_window: usize,
    /// Decrypt every delivered envelope at the recipient (costs generator CPU).
    #[arg(long)]
    verify: bool,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Worker threads of the in-process relay's runtime (`--store memory`).
    #[arg(long, default_value_t = 2)]
    relay_threads: usize,
    /// Keep the relay's directory (data, log, config) and print where it is.
    #[arg(long)]
    keep_dir: bool,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.pairs == 0 || cli.outstanding == 0 || cli.endpoints == 0 {
        bail!("--pairs, --outstanding and --endpoints must be positive");
    }
    if !(cli.duration > 0.0 && cli.duration <= 3600.0 && cli.warmup >= 0.0 && cli.warmup <= 600.0) {
        bail!("--duration must be in (0, 3600] and --warmup in [0, 600]");
    }
    if let Some(r) = cli.rate {
        if !(r > 0.0 && r.is_finite()) {
            bail!("--rate must be positive");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&cli))?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The relay under test

/// Administration of the relay's accounts, whichever store it has.
enum Admin {
    Sqlite(SqliteStore),
    Memory(Arc<sealpost_server::relay::Relay<MemoryStore>>),
}

impl Admin {
    async fn account(&self, id: &AccountId, role: Role) -> Result<()> {
        match self {
            Admin::Sqlite(s) => admin::create_account(s, id, role).await?,
            Admin::Memory(r) => admin::create_account(&r.store, id, role).await?,
        }
        Ok(())
    }
    async fn code(&self, id: &AccountId) -> Result<String> {
        Ok(match self {
            Admin::Sqlite(s) => admin::issue_code(s, id, 3600).await?.code,
            Admin::Memory(r) => admin::issue_code(&r.store, id, 3600).await?.code,
        })
    }
    async fn assign(&self, client: &AccountId, staff: &AccountId) -> Result<()> {
        match self {
            Admin::Sqlite(s) => admin::assign(s, client, staff).await?,
            Admin::Memory(r) => admin::assign(&r.store, client, staff).await?,
        }
        Ok(())
    }
}

/// A running relay.
enum RelayUnderTest {
    Process {
        child: Child,
    },
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<Result<()>>>,
    },
}

impl RelayUnderTest {
    fn pid(&self) -> u32 {
        match self {
            RelayUnderTest::Process { child } => child.id(),
            RelayUnderTest::InProcess { .. } => std::process::id(),
        }
    }

    /// Stop it: SIGTERM and a grace period for the process, the shutdown signal in-process.
    fn stop(&mut self) {
        match self {
            RelayUnderTest::Process { child } => {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                let _ = Command::new("kill")
                    .stderr(Stdio::null())
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let deadline = std::time::Instant::now() + Duration::from_secs(15);
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => return,
                        Ok(None) if std::time::Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
            RelayUnderTest::InProcess { stop, thread } => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

impl Drop for RelayUnderTest {
    fn drop(&mut self) {
        self.stop();
    }
}

fn relay_config(cli: &Cli, dir: &Path, listen: SocketAddr) -> Config {
    let mut config = Config::for_tests(dir);
    config.listen = listen;
    config.backend = match cli.store {
        StoreKind::Sqlite => Backend::Sqlite,
        StoreKind::Memory => Backend::Memory,
    };
    let unlimited = Rate::new(1e9, 1e9);
    let l = &mut config.limits;
    l.max_connections = 200_000;
    l.retry_above_connections = 200_000;
    l.mailbox_max_count = 100_000_000;
    l.mailbox_max_bytes = 1 << 40;
    l.send_rate = unlimited;
    l.auth_failures_per_ip = unlimited;
    l.auth_failures_per_device = unlimited;
    l.bundle_fetch_per_device = unlimited;
    l.bundle_fetch_per_pair = unlimited;
    l.rate_limit_max_keys = 1_000_000;
    l.delivery_window = cli.delivery_window;
    l.auth_timeout_secs = 600;
    config
}

/// A free UDP port on loopback (bound and released; the relay binds it right after).
fn free_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

fn find_relay_bin(cli: &Cli) -> Result<PathBuf> {
    if let Some(p) = &cli.relay_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    for name in ["sealpost-relay-under-test", "sealpost-relay"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no relay binary next to {}: build it (cargo build --release -p sealpost-tests --bins) or pass --relay-bin",
        exe.display()
    )
}

/// Spawn the relay binary with `config` and wait until it listens.
async fn spawn_relay_process(
    cli: &Cli,
    config: &Config,
    dir: &Path,
    metrics: Option<SocketAddr>,
) -> Result<(Child, [u8; 32])> {
    let bin = find_relay_bin(cli)?;
    let config_path = dir.join("relay.toml");
    std::fs::write(&config_path, toml::to_string(config)?)?;
    let log_path = dir.join("relay.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&config.data_dir)
        .arg("--listen")
        .arg(config.listen.to_string())
        .arg("--metrics")
        .arg(metrics.map_or_else(|| "off".to_owned(), |a| a.to_string()))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + RELAY_START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the relay exited during start ({status}):\n{log}");
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("listening on") {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("the relay did not start within {RELAY_START_TIMEOUT:?}:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fp_path = config
        .tls
        .dev_dir
        .join(sealpost_server::tls::CA_FINGERPRINT_FILE);
    let fp = std::fs::read_to_string(&fp_path)
        .with_context(|| format!("reading {}", fp_path.display()))?;
    let bytes = hex::decode(fp.trim())?;
    let fp: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("CA fingerprint is not 32 bytes"))?;
    Ok((child, fp))
}

/// The relay's Prometheus metrics, as name (with labels) -> value.
async fn scrape(addr: SocketAddr) -> Result<HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// Storage figures over the measured window, from two scrapes.
#[derive(Debug, Default, serde::Serialize)]
struct StoreFigures {
    commits_per_s: f64,
    writes_per_commit: f64,
    acked_before_write_percent: f64,
    commit_ms_mean: f64,
}

fn store_figures(a: &HashMap<String, f64>, b: &HashMap<String, f64>, secs: f64) -> StoreFigures {
    let d = |k: &str| b.get(k).copied().unwrap_or(0.0) - a.get(k).copied().unwrap_or(0.0);
    let commits = d(sealpost_server::metrics::STORE_COMMITS);
    let writes = d(sealpost_server::metrics::STORE_WRITES);
    let acked = d(sealpost_server::metrics::STORE_ACKED_BEFORE_WRITE);
    let accepted = d(sealpost_server::metrics::ENVELOPES_ACCEPTED);
    let secs_sum = d(&format!(
        "{}_sum",
        sealpost_server::metrics::STORE_COMMIT_SECONDS
    ));
    let secs_count = d(&format!(
        "{}_count",
        sealpost_server::metrics::STORE_COMMIT_SECONDS
    ));
    StoreFigures {
        commits_per_s: commits / secs.max(1e-3),
        writes_per_commit: writes / commits.max(1.0),
        acked_before_write_percent: acked / accepted.max(1.0) * 100.0,
        commit_ms_mean: secs_sum / secs_count.max(1.0) * 1000.0,
    }
}

/// Start a relay with the in-memory store on a runtime (and thread) of its own.
fn start_in_process(
    cli: &Cli,
    config: Config,
) -> Result<(RelayUnderTest, Admin, SocketAddr, [u8; 32])> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.relay_threads.max(1))
        .thread_name("relay")
        .enable_all()
        .build()?;
    let server = {
        let _guard = rt.enter();
        Server::bind(config, MemoryStore::new())?
    };
    let addr = server.local_addr()?;
    let fp = server.ca_fingerprint();
    let relay = server.relay();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("relay-runtime".into())
        .spawn(move || -> Result<()> {
            rt.block_on(server.run(async {
                let _ = rx.await;
            }))?;
            rt.shutdown_timeout(Duration::from_secs(2));
            Ok(())
        })?;
    Ok((
        RelayUnderTest::InProcess {
            stop: Some(tx),
            thread: Some(thread),
        },
        Admin::Memory(relay),
        addr,
        fp,
    ))
}

// ---------------------------------------------------------------------------------------
// /proc

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

fn read_mem(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// User + system CPU time of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------
// Devices

struct Ctx {
    relay: RelayAddress,
    endpoints: Vec<quinn::Endpoint>,
    next_endpoint: AtomicU64,
    /// The separate relay's Prometheus endpoint (its storage counters are reported).
    metrics: Option<SocketAddr>,
}

impl Ctx {
    async fn connect(&self) -> Result<RelayConnection> {
        let i = self.next_endpoint.fetch_add(1, Ordering::Relaxed) as usize % self.endpoints.len();
        let ep = self
            .endpoints
            .get(i)
            .ok_or_else(|| anyhow!("no client endpoint"))?;
        Ok(RelayConnection::connect_on(ep, &self.relay).await?)
    }
}

struct Device {
    account: AccountId,
    identity: IdentityKeyPair,
    prekeys: PreKeySecrets,
    conn: Arc<RelayConnection>,
    rng: StdRng,
}

impl Device {
    fn id(&self) -> DeviceId {
        self.identity.device_id()
    }
}

/// Connect, enrol with `code`, authenticate; publish prekeys if asked.
async fn device(
    ctx: &Ctx,
    account: AccountId,
    code: &str,
    seed: u64,
    prekeys: bool,
) -> Result<Device> {
    let mut rng = StdRng::seed_from_u64(seed);
    let identity = IdentityKeyPair::generate(&mut rng);
    // A connection the relay dropped during its handshake (it gives each handshake 10 s,
    // which an overloaded machine can miss) is retried, a few times at most.
    let mut attempt = 0;
    let conn = loop {
        attempt += 1;
        let conn = match ctx.connect().await {
            Ok(c) => c,
            Err(e) if attempt < SETUP_ATTEMPTS => {
                tracing::debug!(error = %e, "connect failed; retrying");
                continue;
            }
            Err(e) => return Err(e),
        };
        match conn.enroll(&identity, &account, code).await {
            Ok(_) => break conn,
            Err(NetError::Connection(_)) if attempt < SETUP_ATTEMPTS => continue,
            Err(e) => return Err(e).context("enrol"),
        }
    };
    conn.authenticate(&identity).await.context("authenticate")?;
    let mut secrets = PreKeySecrets::new();
    if prekeys {
        let spk = secrets.rotate_signed(&identity, &mut rng);
        let otk = secrets.generate_one_time(&identity, 1, &mut rng);
        let kem = secrets.generate_kem_one_time(&identity, 1, &mut rng);
        let last = secrets.rotate_kem_last_resort(&identity, &mut rng);
        conn.upload_prekeys(Some(spk), otk, kem, Some(last))
            .await
            .context("upload prekeys")?;
    }
    Ok(Device {
        account,
        identity,
        prekeys: secrets,
        conn: Arc::new(conn),
        rng,
    })
}

fn seal(
    session: &mut Session,
    from: DeviceId,
    to: DeviceId,
    plaintext: &[u8],
    rng: &mut StdRng,
) -> Result<Envelope> {
    let header = RoutingHeader::new(
        from,
        to,
        EnvelopeKind::Chat,
        sealpost_server::relay::unix_ms(),
        rng,
    );
    Ok(session.seal(header, plaintext, rng)?)
}

/// The next `Deliver` push within `wait`.
async fn next_envelope(conn: &RelayConnection, wait: Duration) -> Option<Envelope> {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, conn.next_push()).await {
            Ok(Some(FrameBody::Deliver { envelope })) => return Some(envelope),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

struct Pair {
    sender: Device,
    session: Session,
    recipient: Device,
    recipient_session: Session,
}

/// Both devices of pair `i`, with the session established by a first envelope.
async fn setup_pair(ctx: &Ctx, i: usize, codes: (String, String)) -> Result<Pair> {
    let client = AccountId::new(&format!("c{i}"))?;
    let advisor = AccountId::new(&format!("a{i}"))?;
    let mut a = device(ctx, client, &codes.0, 2 * i as u64 + 1, false).await?;
    let mut b = device(ctx, advisor, &codes.1, 2 * i as u64 + 2, true).await?;
    let bundles = a
        .conn
        .fetch_bundles(&b.account)
        .await
        .context("fetch bundles")?;
    let bundle = bundles
        .into_iter()
        .find(|x| x.identity.device_id() == b.id())
        .ok_or_else(|| anyhow!("no bundle for the advisor device"))?;
    let mut session = initiate(&a.identity, &bundle, &mut a.rng)?;
    let first = seal(&mut session, a.id(), b.id(), b"hello", &mut a.rng)?;
    let first_id = first.header.message_id;
    a.conn.send_envelope(first).await.context("first send")?;
    let got = next_envelope(&b.conn, Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow!("first envelope not delivered"))?;
    if got.header.message_id != first_id {
        bail!("unexpected first envelope");
    }
    let (mut recipient_session, _) = accept(&b.identity, &mut b.prekeys, &got)?;
    b.conn.ack(first_id).await?;
    // A reply, so that the sender's session leaves the prekey stage: from now on its
    // envelopes are plain ratchet messages (no identity or KEM ciphertext attached).
    let reply = seal(
        &mut recipient_session,
        b.id(),
        a.id(),
        b"hello back",
        &mut b.rng,
    )?;
    let reply_id = reply.header.message_id;
    b.conn.send_envelope(reply).await.context("reply")?;
    let got = next_envelope(&a.conn, Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow!("reply not delivered"))?;
    if got.header.message_id != reply_id {
        bail!("unexpected reply envelope");
    }
    session.open(&got).context("opening the reply")?;
    a.conn.ack(reply_id).await?;
    Ok(Pair {
        sender: a,
        session,
        recipient: b,
        recipient_session,
    })
}

/// Run `f(i)` for `i in 0..n` with at most `limit` at a time; results in order.
async fn bounded<T, F, Fut>(n: usize, limit: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut put = |done: Result<(usize, Result<T>), tokio::task::JoinError>| -> Result<()> {
        let (i, r) = done?;
        let v = r.with_context(|| format!("item {i}"))?;
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(v);
        }
        Ok(())
    };
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let fut = f(i);
        set.spawn(async move {
            let r = fut.await;
            drop(permit);
            (i, r)
        });
        // Surface failures early rather than after setting everything up.
        while let Some(done) = set.try_join_next() {
            put(done)?;
        }
    }
    while let Some(done) = set.join_next().await {
        put(done)?;
    }
    out.into_iter()
        .map(|v| v.ok_or_else(|| anyhow!("missing result")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    mode: String,
    store: String,
    relay_process: String,
    pairs: usize,
    outstanding: Option<usize>,
    target_rate: Option<f64>,
    duration_s: f64,
    warmup_s: f64,
    plaintext_bytes: usize,
    envelope_body_bytes: usize,
    setup_s: f64,
    /// Sends answered `accepted` within the measured window.
    sent_in_window: u64,
    delivered_in_window: u64,
    delivered_per_s: f64,
    accepted_per_s: f64,
    send_errors: u64,
    first_error: Option<String>,
    undelivered_after_drain: u64,
    latency_samples: usize,
    latency_ms: Option<Latency>,
    idle_connections: Option<usize>,
    relay_pid: u32,
    relay_rss_before_mib: f64,
    relay_rss_mib: f64,
    relay_rss_max_sampled_mib: f64,
    relay_hwm_mib: f64,
    relay_cpu_percent: f64,
    generator_cpu_percent: Option<f64>,
    rss_includes_generator: bool,
    /// The separate relay's storage over the measured window.
    store_figures: Option<StoreFigures>,
    /// /proc/loadavg at the start and the end (other work on the machine skews figures).
    loadavg_start: String,
    loadavg_end: String,
    notes: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

fn latency(mut us: Vec<u32>) -> Option<Latency> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let q = |p: f64| {
        let i = ((us.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(us.len() - 1);
        us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    let mean = us.iter().map(|&v| v as f64).sum::<f64>() / us.len() as f64 / 1000.0;
    Some(Latency {
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        max: q(1.0),
        mean,
    })
}

async fn run(cli: &Cli) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("sealpost-load-")
        .tempdir()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = relay_config(cli, dir.path(), listen);
    std::fs::create_dir_all(&config.data_dir)?;
    let setup_started = Instant::now();
    let loadavg_start = loadavg();

    let idle = cli.idle;
    let n_accounts = idle.unwrap_or(cli.pairs);
    let metrics_addr = match cli.store {
        StoreKind::Sqlite => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            Some(l.local_addr()?)
        }
        StoreKind::Memory => None,
    };
    // The admin handle: the relay's own database (before it starts), or the in-process relay.
    let (admin_handle, mut relay, addr, fp) = match cli.store {
        StoreKind::Sqlite => {
            let store = SqliteStore::open(&config.data_dir.join(DB_FILE))?;
            (Admin::Sqlite(store), None, listen, [0u8; 32])
        }
        StoreKind::Memory => {
            let (relay, admin, addr, fp) = start_in_process(cli, config.clone())?;
            (admin, Some(relay), addr, fp)
        }
    };
    let admin_handle = Arc::new(admin_handle);
    // Accounts, codes and assignments, in parallel (SQLite groups the commits).
    let codes: Vec<(String, String)> = bounded(n_accounts, 256, |i| {
        let admin = admin_handle.clone();
        let idle = idle.is_some();
        async move {
            if idle {
                let id = AccountId::new(&format!("idle{i}"))?;
                admin.account(&id, Role::Client).await?;
                Ok((admin.code(&id).await?, String::new()))
            } else {
                let c = AccountId::new(&format!("c{i}"))?;
                let a = AccountId::new(&format!("a{i}"))?;
                admin.account(&c, Role::Client).await?;
                admin.account(&a, Role::Advisor).await?;
                admin.assign(&c, &a).await?;
                Ok((admin.code(&c).await?, admin.code(&a).await?))
            }
        }
    })
    .await
    .context("creating accounts")?;
    let (relay, addr, fp) = match relay.take() {
        Some(r) => (r, addr, fp),
        None => {
            // Close the database before the relay opens it.
            match Arc::try_unwrap(admin_handle) {
                Ok(Admin::Sqlite(store)) => {
                    store.flush().await?;
                    drop(store);
                }
                Ok(Admin::Memory(_)) => {}
                Err(_) => bail!("internal: admin handle still shared"),
            }
            let (child, fp) = spawn_relay_process(cli, &config, dir.path(), metrics_addr).await?;
            (RelayUnderTest::Process { child }, addr, fp)
        }
    };
    let mut relay = relay;
    let pid = relay.pid();
    let rss_before = read_mem(pid);

    let mut endpoints = Vec::new();
    for _ in 0..cli.endpoints {
        endpoints.push(client_endpoint(addr)?);
    }
    let ctx = Arc::new(Ctx {
        relay: RelayAddress {
            addr,
            server_name: "localhost".into(),
            ca_fingerprint: fp,
        },
        endpoints,
        next_endpoint: AtomicU64::new(0),
        metrics: metrics_addr,
    });

    let codes = Arc::new(codes);
    let mut report = Report {
        store: format!("{:?}", cli.store).to_lowercase(),
        relay_process: match cli.store {
            StoreKind::Sqlite => "separate process".into(),
            StoreKind::Memory => "in-process (own runtime)".into(),
        },
        rss_includes_generator: cli.store == StoreKind::Memory,
        relay_pid: pid,
        relay_rss_before_mib: mib(rss_before.rss_kib),
        plaintext_bytes: PLAINTEXT_LEN,
        ..Report::default()
    };

    let result = match idle {
        Some(n) => run_idle(cli, &ctx, codes, n, pid, setup_started, &mut report).await,
        None => run_load(cli, &ctx, codes, pid, setup_started, &mut report).await,
    };
    relay.stop();
    report.loadavg_start = loadavg_start;
    report.loadavg_end = loadavg();
    if cli.keep_dir {
        let kept = dir.keep();
        report
            .notes
            .push(format!("relay directory kept at {}", kept.display()));
    }
    result?;
    Ok(report)
}

async fn run_idle(
    cli: &Cli,
    ctx: &Arc<Ctx>,
    codes: Arc<Vec<(String, String)>>,
    n: usize,
    pid: u32,
    setup_started: Instant,
    report: &mut Report,
) -> Result<()> {
    report.mode = "idle".into();
    report.idle_connections = Some(n);
    report.pairs = 0;
    let connected = Instant::now();
    let devices = bounded(n, cli.setup_concurrency, |i| {
        let ctx = ctx.clone();
        let codes = codes.clone();
        async move {
            let account = AccountId::new(&format!("idle{i}"))?;
            let code = codes
                .get(i)
                .map(|c| c.0.clone())
                .ok_or_else(|| anyhow!("no code"))?;
            device(&ctx, account, &code, 1_000_000 + i as u64, false).await
        }
    })
    .await
    .context("opening idle connections")?;
    let connect_s = connected.elapsed().as_secs_f64();
    report.setup_s = setup_started.elapsed().as_secs_f64();
    let hold_until = Instant::now() + Duration::from_secs_f64(cli.hold.clamp(0.0, 600.0));
    let mut max_rss = 0;
    while Instant::now() < hold_until {
        max_rss = max_rss.max(read_mem(pid).rss_kib);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mem = read_mem(pid);
    // Check the connections are still alive.
    let alive = devices
        .iter()
        .filter(|d| d.conn.quic().close_reason().is_none())
        .count();
    report.relay_rss_mib = mib(mem.rss_kib);
    report.relay_rss_max_sampled_mib = mib(max_rss.max(mem.rss_kib));
    report.relay_hwm_mib = mib(mem.hwm_kib);
    report.duration_s = cli.hold;
    report.notes.push(format!(
        "{alive} of {n} connections alive after holding; enrolment+authentication of all took {connect_s:.1} s"
    ));
    if n > 0 {
        report.notes.push(format!(
            "relay RSS per connection: {:.1} KiB",
            (mem.rss_kib
                .saturating_sub(kib_from_mib(report.relay_rss_before_mib))) as f64
                / n as f64
        ));
    }
    drop(devices);
    Ok(())
}

fn kib_from_mib(m: f64) -> u64 {
    (m * 1024.0) as u64
}

/// Shared timing of a load run.
struct Clock {
    measure_start: Instant,
    measure_end: Instant,
    stop: AtomicBool,
}

#[derive(Default)]
struct SenderStats {
    sent_in_window: u64,
    errors: u64,
    first_error: Option<String>,
}

#[derive(Default)]
struct ReceiverStats {
    delivered_in_window: u64,
    latencies_us: Vec<u32>,
    body_len: usize,
}

type Inflight = Arc<Mutex<HashMap<MessageId, Instant>>>;

async fn run_load(
    cli: &Cli,
    ctx: &Arc<Ctx>,
    codes: Arc<Vec<(String, String)>>,
    pid: u32,
    setup_started: Instant,
    report: &mut Report,
) -> Result<()> {
    report.mode = match cli.rate {
        Some(_) => "open-loop".into(),
        None => "closed-loop".into(),
    };
    report.pairs = cli.pairs;
    report.outstanding = cli.rate.is_none().then_some(cli.outstanding);
    report.target_rate = cli.rate;
    report.duration_s = cli.duration;
    report.warmup_s = cli.warmup;
    let pairs = bounded(cli.pairs, cli.setup_concurrency, |i| {
        let ctx = ctx.clone();
        let codes = codes.clone();
        async move {
            let c = codes.get(i).cloned().ok_or_else(|| anyhow!("no code"))?;
            setup_pair(&ctx, i, c).await
        }
    })
    .await
    .context("setting up device pairs")?;
    report.setup_s = setup_started.elapsed().as_secs_f64();

    let start = Instant::now() + Duration::from_millis(100);
    let measure_start = start + Duration::from_secs_f64(cli.warmup);
    let measure_end = measure_start + Duration::from_secs_f64(cli.duration);
    let clock = Arc::new(Clock {
        measure_start,
        measure_end,
        stop: AtomicBool::new(false),
    });
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    let per_pair_rate = cli.rate.map(|r| r / cli.pairs as f64);
    for (i, p) in pairs.into_iter().enumerate() {
        let inflight: Inflight = Arc::new(Mutex::new(HashMap::new()));
        let Pair {
            sender,
            session,
            recipient,
            recipient_session,
        } = p;
        let to = recipient.id();
        // Spread the open-loop schedules of the pairs over one period.
        let offset = per_pair_rate
            .map(|r| Duration::from_secs_f64(i as f64 / cli.pairs as f64 / r))
            .unwrap_or_default();
        senders.spawn(send_loop(
            sender,
            session,
            to,
            inflight.clone(),
            clock.clone(),
            start + offset,
            cli.outstanding,
            per_pair_rate,
        ));
        receivers.spawn(receive_loop(
            recipient,
            cli.verify.then_some(recipient_session),
            inflight,
            clock.clone(),
        ));
    }

    // Sample the relay's memory and CPU while the load runs.
    let mut max_rss = 0;
    let mut cpu_at_start = None;
    let mut gen_cpu_at_start = None;
    let mut cpu_at_end = None;
    let mut gen_cpu_at_end = None;
    let mut scraped_at_start = None;
    let self_pid = std::process::id();
    let separate = pid != self_pid;
    while Instant::now() < measure_end {
        let now = Instant::now();
        if cpu_at_start.is_none() && now >= measure_start {
            cpu_at_start = Some((now, cpu_seconds(pid)));
            gen_cpu_at_start = Some(cpu_seconds(self_pid));
            if let Some(m) = ctx.metrics {
                scraped_at_start = scrape(m).await.ok();
            }
        }
        max_rss = max_rss.max(read_mem(pid).rss_kib);
        let next = (now + Duration::from_millis(250)).min(measure_end);
        let next = if cpu_at_start.is_none() {
            next.min(measure_start)
        } else {
            next
        };
        tokio::time::sleep_until(next).await;
    }
    if cpu_at_start.is_none() {
        cpu_at_start = Some((Instant::now(), cpu_seconds(pid)));
        gen_cpu_at_start = Some(cpu_seconds(self_pid));
    }
    cpu_at_end.get_or_insert((Instant::now(), cpu_seconds(pid)));
    gen_cpu_at_end.get_or_insert(cpu_seconds(self_pid));
    if let (Some(m), Some(a)) = (ctx.metrics, &scraped_at_start) {
        if let Ok(b) = scrape(m).await {
            report.store_figures = Some(store_figures(a, &b, cli.duration));
        }
    }
    clock.stop.store(true, Ordering::Release);

    let mut sstats = SenderStats::default();
    while let Some(r) = senders.join_next().await {
        let s = r?;
        sstats.sent_in_window += s.sent_in_window;
        sstats.errors += s.errors;
        if sstats.first_error.is_none() {
            sstats.first_error = s.first_error;
        }
    }
    let mut latencies = Vec::new();
    let mut delivered = 0;
    let mut undelivered = 0u64;
    while let Some(r) = receivers.join_next().await {
        let (s, left) = r?;
        delivered += s.delivered_in_window;
        latencies.extend_from_slice(&s.latencies_us);
        report.envelope_body_bytes = report.envelope_body_bytes.max(s.body_len);
        undelivered += left;
    }
    let mem = read_mem(pid);
    if let (Some((t0, c0)), Some((t1, c1))) = (cpu_at_start, cpu_at_end) {
        let wall = (t1 - t0).as_secs_f64().max(1e-3);
        report.relay_cpu_percent = (c1 - c0) / wall * 100.0;
        if separate {
            if let (Some(g0), Some(g1)) = (gen_cpu_at_start, gen_cpu_at_end) {
                report.generator_cpu_percent = Some((g1 - g0) / wall * 100.0);
            }
        }
    }
    report.sent_in_window = sstats.sent_in_window;
    report.delivered_in_window = delivered;
    report.delivered_per_s = delivered as f64 / cli.duration;
    report.accepted_per_s = sstats.sent_in_window as f64 / cli.duration;
    report.send_errors = sstats.errors;
    report.first_error = sstats.first_error;
    report.undelivered_after_drain = undelivered;
    report.latency_samples = latencies.len();
    report.latency_ms = latency(latencies);
    report.relay_rss_mib = mib(mem.rss_kib);
    report.relay_rss_max_sampled_mib = mib(max_rss.max(mem.rss_kib));
    report.relay_hwm_mib = mib(mem.hwm_kib);
    if !separate {
        report.notes.push(
            "relay runs in this process: RSS and CPU include the load generator; compare throughput only"
                .into(),
        );
    }
    if let Some(rate) = cli.rate {
        let achieved = report.accepted_per_s;
        if achieved < rate * 0.97 {
            report.notes.push(format!(
                "target rate {rate:.0}/s not reached: {achieved:.0}/s accepted"
            ));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one task's whole state, passed once
async fn send_loop(
    mut dev: Device,
    mut session: Session,
    to: DeviceId,
    inflight: Inflight,
    clock: Arc<Clock>,
    start: Instant,
    outstanding: usize,
    rate: Option<f64>,
) -> SenderStats {
    let mut stats = SenderStats::default();
    let from = dev.id();
    let mut plaintext = vec![0u8; PLAINTEXT_LEN];
    rand::RngCore::fill_bytes(&mut dev.rng, &mut plaintext);
    // The sends in flight are futures polled by this task (no task per send): each is
    // one `send` request on the connection, pipelined with the others.
    let conn: &RelayConnection = &dev.conn;
    let mut set = FuturesUnordered::new();
    let period = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let cap = if period.is_some() {
        OPEN_LOOP_MAX_INFLIGHT
    } else {
        outstanding
    };
    let mut next_due = start;
    let mut broken = false;
    // One timer: the start, then (open loop) moved to each next due time.
    let due = tokio::time::sleep_until(start);
    tokio::pin!(due);
    let mut armed = start;
    due.as_mut().await;
    loop {
        let now = Instant::now();
        let sending = !broken && now < clock.measure_end && !clock.stop.load(Ordering::Acquire);
        if sending {
            // Closed loop: fill up to `cap`; open loop: everything due, up to `cap`.
            while set.len() < cap && (period.is_none() || next_due <= now) {
                let env = match seal(&mut session, from, to, &plaintext, &mut dev.rng) {
                    Ok(e) => e,
                    Err(e) => {
                        stats.errors += 1;
                        stats.first_error.get_or_insert(e.to_string());
                        broken = true;
                        break;
                    }
                };
                let id = env.header.message_id;
                let started = Instant::now();
                if let Ok(mut m) = inflight.lock() {
                    m.insert(id, started);
                }
                set.push(async move { (started, conn.send_envelope(env).await) });
                if let Some(p) = period {
                    next_due += p;
                }
            }
        }
        if set.is_empty() && !sending {
            break;
        }
        let done = match (sending, period) {
            (true, Some(_)) if set.len() < cap => {
                let deadline = next_due.min(clock.measure_end);
                if deadline != armed {
                    due.as_mut().reset(deadline);
                    armed = deadline;
                }
                // Both branches are cancel-safe: FuturesUnordered keeps every send that
                // has not finished; the timer is only reset.
                tokio::select! {
                    d = set.next(), if !set.is_empty() => d,
                    _ = due.as_mut() => continue,
                }
            }
            _ => set.next().await,
        };
        let Some(done) = done else { continue };
        match done {
            (_, Ok(_)) => {
                // Accepted (durably stored) within the measured window.
                let at = Instant::now();
                if at >= clock.measure_start && at < clock.measure_end {
                    stats.sent_in_window += 1;
                }
            }
            (_, Err(e)) => {
                stats.errors += 1;
                if matches!(e, NetError::Connection(_) | NetError::Timeout(_)) {
                    broken = true;
                }
                stats.first_error.get_or_insert(e.to_string());
            }
        }
    }
    stats
}

/// Deliveries taken from the connection's push queue at once.
const RECEIVE_BATCH: usize = 256;

/// Receive, time and acknowledge deliveries until the senders stopped and everything in
/// flight arrived, or the drain time ran out. Returns the stats and what never arrived.
async fn receive_loop(
    dev: Device,
    mut session: Option<Session>,
    inflight: Inflight,
    clock: Arc<Clock>,
) -> (ReceiverStats, u64) {
    let mut stats = ReceiverStats::default();
    let hard_end = clock.measure_end + DRAIN + Duration::from_secs(30);
    let mut batch = Vec::with_capacity(RECEIVE_BATCH);
    // Wakes the loop after 100 ms without a push to look at the clock again: one timer
    // that stays armed (moved only when it fires), not one per wait.
    let tick = tokio::time::sleep(Duration::from_millis(100));
    tokio::pin!(tick);
    'receive: loop {
        let now = Instant::now();
        let stopping = clock.stop.load(Ordering::Acquire);
        if stopping {
            let empty = inflight.lock().map(|m| m.is_empty()).unwrap_or(true);
            if empty || now >= clock.measure_end + DRAIN {
                break;
            }
        }
        if now >= hard_end {
            break;
        }
        // Every delivery already queued comes in one go (one wake-up per burst); each is
        // still timed when it is taken, and acknowledged by a frame of its own.
        // next_pushes is cancel-safe: a tick never loses a push.
        tokio::select! {
            n = dev.conn.next_pushes(&mut batch, RECEIVE_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            _ = tick.as_mut() => {
                tick.as_mut().reset(Instant::now() + Duration::from_millis(100));
                continue;
            }
        }
        for push in batch.drain(..) {
            let FrameBody::Deliver { envelope } = push else {
                continue;
            };
            let at = Instant::now();
            let id = envelope.header.message_id;
            let started = inflight.lock().ok().and_then(|mut m| m.remove(&id));
            if let Some(started) = started {
                if started >= clock.measure_start && started < clock.measure_end {
                    let us = (at - started).as_micros().min(u32::MAX as u128) as u32;
                    stats.latencies_us.push(us);
                }
            }
            if at >= clock.measure_start && at < clock.measure_end {
                stats.delivered_in_window += 1;
            }
            stats.body_len = stats.body_len.max(envelope.body.len());
            if let Some(s) = session.as_mut() {
                if s.open(&envelope).is_err() {
                    tracing::warn!("a delivered envelope did not decrypt");
                }
            }
            if dev.conn.ack(id).await.is_err() {
                break 'receive;
            }
        }
    }
    let left = inflight.lock().map(|m| m.len() as u64).unwrap_or(0);
    (stats, left)
}

// ---------------------------------------------------------------------------------------
// Output

fn print_human(r: &Report) {
    println!(
        "sealpost-load: {} mode, {} store, relay {}",
        r.mode, r.store, r.relay_process
    );
    if let Some(n) = r.idle_connections {
        println!(
            "  idle authenticated connections: {n}, held {:.0} s",
            r.duration_s
        );
    } else {
        match (r.outstanding, r.target_rate) {
            (_, Some(rate)) => println!(
                "  {} pairs, target {:.0} envelopes/s in total, {:.0} s measured after {:.0} s warm-up",
                r.pairs, rate, r.duration_s, r.warmup_s
            ),
            (Some(k), None) => println!(
                "  {} pairs, {} sends outstanding per connection, {:.0} s measured after {:.0} s warm-up",
                r.pairs, k, r.duration_s, r.warmup_s
            ),
            _ => {}
        }
        println!(
            "  envelope: {} B plaintext -> {} B sealed body",
            r.plaintext_bytes, r.envelope_body_bytes
        );
        println!(
            "  delivered: {:.0} envelopes/s ({} in window); accepted: {:.0}/s; errors: {}{}",
            r.delivered_per_s,
            r.delivered_in_window,
            r.accepted_per_s,
            r.send_errors,
            r.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        match &r.latency_ms {
            Some(l) => println!(
                "  latency (send start -> delivered), ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, r.latency_samples
            ),
            None => println!("  latency: no samples"),
        }
        if r.undelivered_after_drain > 0 {
            println!(
                "  WARNING: {} envelopes not delivered within the drain time",
                r.undelivered_after_drain
            );
        }
        if let Some(f) = &r.store_figures {
            println!(
                "  relay storage: {:.0} commits/s, {:.1} writes per commit, {:.1} ms per commit; {:.1}% of accepted envelopes acknowledged before they were written",
                f.commits_per_s, f.writes_per_commit, f.commit_ms_mean, f.acked_before_write_percent
            );
        }
        print!("  relay CPU: {:.0}% of one core", r.relay_cpu_percent);
        match r.generator_cpu_percent {
            Some(g) => println!("; generator CPU: {g:.0}%"),
            None => println!(),
        }
    }
    println!(
        "  relay RSS (pid {}{}): {:.1} MiB now, {:.1} MiB max sampled, {:.1} MiB peak (VmHWM); {:.1} MiB before load",
        r.relay_pid,
        if r.rss_includes_generator {
            ", includes the generator"
        } else {
            ""
        },
        r.relay_rss_mib,
        r.relay_rss_max_sampled_mib,
        r.relay_hwm_mib,
        r.relay_rss_before_mib
    );
    println!(
        "  setup: {:.1} s; load average {} at start, {} at end",
        r.setup_s, r.loadavg_start, r.loadavg_end
    );
    for n in &r.notes {
        println!("  note: {n}");
    }
}
