//! Shared helpers for the end-to-end tests: a relay on a loopback port, and devices that
//! enrol, authenticate, publish prekeys and exchange sealed envelopes through it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod firm;
pub mod org;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use sealpost_client::net::{RelayAddress, RelayConnection};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{DeviceAction, DeviceLog, LogEntry, OrgFingerprint};
use sealpost_protocol::wire::{FrameBody, Role};
use sealpost_protocol::{IdentityKeyPair, PreKeySecrets, Session};
use sealpost_server::config::Config;
use sealpost_server::relay::Relay;
use sealpost_server::store::memory::MemoryStore;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::Store;
use sealpost_server::{admin, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A relay running in this process on 127.0.0.1, port 0.
pub struct TestRelay<S: Store> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA fingerprint clients pin.
    pub ca_fingerprint: [u8; 32],
    /// Its state (store, hub, config).
    pub relay: Arc<Relay<S>>,
    /// Its directory (certificates, data).
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), sealpost_server::ServerError>>>,
}

/// Start a relay with the in-memory store.
pub async fn memory_relay(tune: impl FnOnce(&mut Config)) -> TestRelay<MemoryStore> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    tune(&mut config);
    start(config, MemoryStore::new(), dir).await
}

/// Start a relay with the in-memory store, pinned to an organisation.
pub async fn memory_relay_with_org(
    org: OrgFingerprint,
    tune: impl FnOnce(&mut Config),
) -> TestRelay<MemoryStore> {
    memory_relay(|c| {
        c.org_fingerprint = Some(org);
        tune(c);
    })
    .await
}

/// Milliseconds since the Unix epoch.
/// The nonce the raw-connection tests link with (a real client picks a random one).
pub const LINK_NONCE: sealpost_protocol::trust::LinkNonce =
    sealpost_protocol::trust::LinkNonce([0x5a; 32]);

/// The commitment to [`LINK_NONCE`] for `identity` joining `account`.
pub fn link_commitment(
    account: &AccountId,
    identity: &IdentityKeyPair,
) -> sealpost_protocol::trust::LinkCommitment {
    sealpost_protocol::trust::LinkCommitment::compute(account, identity.public(), &LINK_NONCE)
}

/// The code a device linking with [`LINK_NONCE`] shows.
pub fn link_code(
    account: &AccountId,
    identity: &sealpost_protocol::PublicIdentity,
    challenge: &sealpost_protocol::trust::LinkChallenge,
) -> sealpost_protocol::trust::LinkCode {
    sealpost_protocol::trust::LinkCode::compute(account, identity, challenge, &LINK_NONCE)
}

pub fn now_ms() -> u64 {
    sealpost_server::relay::unix_ms()
}

/// Entry 0 of `account`'s device log: `identity` adding itself at `at_ms`.
pub fn genesis_entry(account: &AccountId, identity: &IdentityKeyPair, at_ms: u64) -> LogEntry {
    let body = DeviceLog::new(account.clone()).next_body(
        at_ms,
        DeviceAction::Add {
            identity: identity.public().clone(),
        },
        "enrolment",
    );
    LogEntry::genesis(body, identity)
}

/// Start a relay with SQLite in `dir` (reused across restarts when the same dir is given).
pub async fn sqlite_relay_in(
    dir: tempfile::TempDir,
    tune: impl FnOnce(&mut Config),
) -> TestRelay<SqliteStore> {
    let mut config = Config::for_tests(dir.path());
    config.backend = sealpost_server::config::Backend::Sqlite;
    tune(&mut config);
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let store = SqliteStore::open(&config.data_dir.join("relay.sqlite3")).unwrap();
    start(config, store, dir).await
}

async fn start<S: Store>(config: Config, store: S, dir: tempfile::TempDir) -> TestRelay<S> {
    let server = Server::bind(config, store).unwrap();
    let addr = server.local_addr().unwrap();
    let ca_fingerprint = server.ca_fingerprint();
    let relay = server.relay();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    TestRelay {
        addr,
        ca_fingerprint,
        relay,
        dir,
        stop: Some(tx),
        task: Some(task),
    }
}

impl<S: Store> TestRelay<S> {
    /// How clients reach it.
    pub fn address(&self) -> RelayAddress {
        RelayAddress {
            addr: self.addr,
            server_name: "localhost".into(),
            ca_fingerprint: self.ca_fingerprint,
        }
    }

    /// Create an account.
    pub async fn account(&self, id: &str, role: Role) -> AccountId {
        let id = AccountId::new(id).unwrap();
        admin::create_account(&self.relay.store, &id, role)
            .await
            .unwrap();
        id
    }

    /// Issue an enrolment code.
    pub async fn code(&self, account: &AccountId) -> String {
        admin::issue_code(&self.relay.store, account, 3600)
            .await
            .unwrap()
            .code
    }

    /// Assign a client to staff.
    pub async fn assign(&self, client: &AccountId, staff: &AccountId) {
        admin::assign(&self.relay.store, client, staff)
            .await
            .unwrap();
    }

    /// Connect (not authenticated).
    pub async fn connect(&self) -> RelayConnection {
        RelayConnection::connect(&self.address()).await.unwrap()
    }

    /// Enrol (with a genesis entry dated now) and authenticate a new device of `account`,
    /// with prekeys published.
    pub async fn device(&self, account: &AccountId, seed: u64) -> TestDevice {
        let mut rng = StdRng::seed_from_u64(seed);
        let identity = IdentityKeyPair::generate(&mut rng);
        self.device_with(account, identity, now_ms(), rng).await
    }

    /// An account whose first device, `identity`, enrolled at `genesis_ms`: history
    /// written into the relay's store as the relay wrote it then (the genesis entry dated
    /// and appended at `genesis_ms`, so a date far enough back puts the device past its
    /// cooling-off, which runs from the relay's append time). Then it authenticates and
    /// publishes prekeys. (A device that enrols now with a back-dated genesis entry goes
    /// through `enroll_with_genesis` and is on probation from now.)
    pub async fn device_with(
        &self,
        account: &AccountId,
        identity: IdentityKeyPair,
        genesis_ms: u64,
        mut rng: StdRng,
    ) -> TestDevice {
        let code = self.code(account).await;
        let genesis = genesis_entry(account, &identity, genesis_ms);
        self.relay
            .store
            .enroll_first_device(
                account,
                sealpost_server::relay::enrollment_code_hash(&code),
                identity.public(),
                &genesis,
                genesis_ms,
            )
            .await
            .unwrap();
        let conn = self.connect().await;
        conn.authenticate(&identity).await.unwrap();
        let mut prekeys = PreKeySecrets::new();
        let spk = prekeys.rotate_signed(&identity, &mut rng);
        let otk = prekeys.generate_one_time(&identity, 10, &mut rng);
        let kem = prekeys.generate_kem_one_time(&identity, 5, &mut rng);
        let last = prekeys.rotate_kem_last_resort(&identity, &mut rng);
        conn.upload_prekeys(Some(spk), otk, kem, Some(last))
            .await
            .unwrap();
        TestDevice {
            account: account.clone(),
            identity,
            prekeys,
            conn,
            rng,
        }
    }

    /// Stop it gracefully and wait for `run` to return.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        // Keep the directory alive for a restart.
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl<S: Store> Drop for TestRelay<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A device connected to a test relay.
pub struct TestDevice {
    /// Its account.
    pub account: AccountId,
    /// Its identity.
    pub identity: IdentityKeyPair,
    /// Its prekey secrets.
    pub prekeys: PreKeySecrets,
    /// Its connection.
    pub conn: RelayConnection,
    /// Its RNG.
    pub rng: StdRng,
}

impl TestDevice {
    /// Its device id.
    pub fn id(&self) -> DeviceId {
        self.identity.device_id()
    }

    /// Reconnect (new QUIC connection) and authenticate.
    pub async fn reconnect<S: Store>(&mut self, relay: &TestRelay<S>) {
        self.conn.close();
        self.conn = relay.connect().await;
        self.conn.authenticate(&self.identity).await.unwrap();
    }

    /// Start a session with `peer`'s device by fetching its bundle from the relay.
    pub async fn session_with(&mut self, peer: &TestDevice) -> Session {
        let bundles = self.conn.fetch_bundles(&peer.account).await.unwrap();
        let bundle = bundles
            .into_iter()
            .find(|b| b.identity.device_id() == peer.id())
            .unwrap();
        sealpost_protocol::initiate(&self.identity, &bundle, &mut self.rng).unwrap()
    }

    /// Seal a chat message for `to` in `session`.
    pub fn seal(&mut self, session: &mut Session, to: DeviceId, text: &str) -> Envelope {
        let header = RoutingHeader::new(
            self.id(),
            to,
            EnvelopeKind::Chat,
            1_700_000_000_000,
            &mut self.rng,
        );
        session
            .seal(header, text.as_bytes(), &mut self.rng)
            .unwrap()
    }

    /// The next envelope delivered to this device (within `wait`).
    pub async fn next_envelope(&self, wait: Duration) -> Option<Envelope> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let push = tokio::time::timeout_at(deadline, self.conn.next_push())
                .await
                .ok()??;
            if let FrameBody::Deliver { envelope } = push {
                return Some(envelope);
            }
        }
    }
}

/// The texts of the messages among `events`, in order.
pub fn texts(events: &[sealpost_client::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            sealpost_client::Event::Message { entry } => Some(entry.body.clone()),
            _ => None,
        })
        .collect()
}

/// Run the `sealpost` binary `bin` (a test's `env!("CARGO_BIN_EXE_sealpost-under-test")`)
/// on the profile in `home` with the test passphrase, bounded to 60 s: (exit code,
/// stdout, stderr).
pub async fn run_cli(bin: &str, home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let bin = bin.to_owned();
    let home = home.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args(&args)
                .env("SEALPOST_HOME", &home)
                .env("SEALPOST_PASSPHRASE", org::PASS)
                .env_remove("RUST_LOG")
                .output()
                .unwrap()
        }),
    )
    .await
    .expect("the CLI ran too long")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
