//! # Sealpost relay
//!
//! A QUIC store-and-forward server that carries sealed envelopes between devices and
//! never sees plaintext. The binary (`sealpost-relay`) parses configuration and calls
//! [`Server::bind`] then [`Server::run`] with a shutdown future; tests do the same on
//! port 0 with their own shutdown signal.
//!
//! * [`relay`]: what the relay does with each frame (decisions).
//! * [`conn`]: the per-connection shell (I/O).
//! * [`store`]: narrow storage traits, in-memory and SQLite implementations.
//! * [`policy`], [`limits`]: pure routing policy and rate limits.
//! * [`trust`], [`links`]: the verified roster chain, the per-account device sets the
//!   send rules use, and the pending device-link registry (docs/PROTOCOL.md §19).
//! * [`tls`]: certificates, the development CA, QUIC configuration.
//! * [`admin`]: operator actions (accounts, enrolment codes, assignments);
//!   [`backup`]: online backup and offline restore of the data directory.
//! * [`security`]: the security rules, the events they raise, the live feed and the SIEM
//!   export.
//! * [`metrics`], [`health`]: Prometheus metrics and the operator's HTTP endpoint
//!   (`/metrics`, `/healthz`, `/readyz`).

pub mod admin;
pub mod audit;
pub mod backup;
pub mod config;
pub mod conn;
pub mod health;
pub mod hub;
pub mod limits;
pub mod links;
pub mod metrics;
pub mod policy;
pub mod relay;
pub mod security;
pub mod store;
pub mod tlog;
pub mod tls;
pub mod transfer;
pub mod trust;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use config::Config;
use relay::Relay;
use store::Store;

/// How long shutdown waits for connections to finish their in-flight work.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often expired envelopes are swept and queue gauges refreshed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often the relay looks for accounts the operator disabled (from another process,
/// `sealpost-relay admin disable`) and closes their devices' connections.
pub const DISABLED_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Starting the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// TLS material could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The socket could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Metrics could not be started.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The stored trust state does not verify from the configuration.
    #[error("trust: {0}")]
    Trust(String),
    /// A reload (SIGHUP) was refused; the running configuration is unchanged.
    #[error("reload refused: {0}")]
    Reload(String),
}

/// A bound relay, ready to run.
pub struct Server<S: Store> {
    relay: Arc<Relay<S>>,
    endpoint: quinn::Endpoint,
    ca_fingerprint: [u8; 32],
    /// The operator's HTTP listener and the metrics it renders, if configured.
    http: Option<(
        std::net::TcpListener,
        metrics_exporter_prometheus::PrometheusHandle,
    )>,
    lifecycle: Arc<health::Lifecycle>,
}

impl<S: Store> Server<S> {
    /// Load or generate TLS material, bind the UDP socket and prepare the relay.
    pub fn bind(config: Config, store: S) -> Result<Self, ServerError> {
        config.validate()?;
        let identity = load_identity(&config)?;
        let ca_fingerprint = identity.ca_fingerprint;
        let secrets =
            tls::RelaySecrets::load_or_create(&config.data_dir.join(tls::RELAY_SECRETS_FILE))?;
        let (endpoint_config, server_config) =
            tls::quinn_configs(identity, &secrets, &config.transport)?;
        let socket = bind_udp(config.listen, config.transport.udp_buffer_bytes)
            .map_err(|e| ServerError::Bind(config.listen, e))?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            ServerError::Bind(config.listen, std::io::Error::other("no async runtime"))
        })?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
            .map_err(|e| ServerError::Bind(config.listen, e))?;
        let http = match config.metrics_listen {
            Some(addr) => {
                let handle = metrics::install().map_err(ServerError::Metrics)?;
                metrics::describe();
                let listener =
                    std::net::TcpListener::bind(addr).map_err(|e| ServerError::Bind(addr, e))?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| ServerError::Bind(addr, e))?;
                Some((listener, handle))
            }
            None => None,
        };
        let blob_limits = store::blob::BlobLimits::from_limits(&config.limits);
        let blobs: Arc<dyn store::blob::BlobStore> = match config.backend {
            config::Backend::Sqlite => Arc::new(
                store::blob::FsBlobStore::open(&config.data_dir.join("blobs"), blob_limits)
                    .map_err(store::StoreError::from)?,
            ),
            config::Backend::Memory => Arc::new(store::blob::MemoryBlobStore::new(blob_limits)),
        };
        let log_key = tlog::load_or_create_key(&config.data_dir, &config.log_origin)
            .map_err(|e| ServerError::Trust(e.to_string()))?;
        let events: Arc<dyn store::events::EventStore> = match config.backend {
            config::Backend::Sqlite => Arc::new(store::events::SqliteEventStore::open(
                &config.data_dir.join(store::events::EVENTS_DB_FILE),
            )?),
            config::Backend::Memory => Arc::new(store::events::MemoryEventStore::new(
                usize::try_from(config.security.max_events).unwrap_or(usize::MAX),
            )),
        };
        let relay = Arc::new(
            Relay::new(store, config)
                .with_blobs(blobs)
                .with_log_signer(log_key)
                .with_events(events),
        );
        record_trust_events(&relay);
        Ok(Self {
            relay,
            endpoint,
            ca_fingerprint,
            http,
            lifecycle: Arc::new(health::Lifecycle::default()),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.endpoint.local_addr()
    }

    /// SHA-256 of the CA certificate that clients pin.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.ca_fingerprint
    }

    /// Where the operator's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) listens, if
    /// configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// A handle that replaces the TLS certificate of the running relay.
    pub fn tls_reloader(&self) -> TlsReloader {
        TlsReloader {
            endpoint: self.endpoint.clone(),
            ca_fingerprint: self.ca_fingerprint,
        }
    }

    /// The relay state (for tests and admin actions in-process).
    pub fn relay(&self) -> Arc<Relay<S>> {
        self.relay.clone()
    }

    /// Serve until `shutdown` completes; then stop accepting, let connections finish
    /// their in-flight work (up to [`SHUTDOWN_GRACE`]), close, and flush storage.
    ///
    /// Before accepting anything, the stored roster chain is verified from the configured
    /// organisation fingerprint; a chain that does not verify stops the relay here.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            relay,
            endpoint,
            http,
            lifecycle,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        // The HTTP endpoint outlives the connections: `/readyz` answers 503 while they drain.
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let http_task = match http {
            Some((listener, handle)) => {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|e| ServerError::Metrics(e.to_string()))?;
                let probe_relay = relay.clone();
                let store: health::StoreProbe = Arc::new(move || {
                    let relay = probe_relay.clone();
                    Box::pin(async move { relay.probe_store().await })
                });
                let health = health::Health {
                    metrics: handle,
                    lifecycle: lifecycle.clone(),
                    store,
                };
                Some(tokio::spawn(health::serve(listener, health, http_stop_rx)))
            }
            None => None,
        };
        let version = match relay.load_trust().await {
            Ok(v) => v,
            Err(e) => {
                lifecycle.set(health::Phase::Stopping);
                let _ = http_stop_tx.send(true);
                endpoint.close(conn::close::SHUTDOWN.into(), b"relay failed to start");
                return Err(ServerError::Trust(e));
            }
        };
        match relay.trust.pinned() {
            Some(fp) => {
                info!(org_fingerprint = %fp.to_hex(), roster_version = version, "organisation pinned")
            }
            None => info!(
                "no organisation configured: no roster, no notices, no quorum-carried log entries"
            ),
        }
        // The transparency log: rebuild the tree from the store and record the
        // configuration. A log that does not load (the database was altered) is reported
        // loudly; messaging goes on and the log frames answer with an error.
        match relay.tlog.sync(&relay.store).await {
            Ok(size) => {
                info!(log_key = %relay.tlog.public().to_vkey(), leaves = size, "transparency log loaded");
                let digest = tlog::config_digest(&relay.config);
                if let Err(e) = relay
                    .tlog
                    .record_config(&relay.store, digest, relay::unix_ms())
                    .await
                {
                    warn!(error = %e, "the configuration could not be recorded in the transparency log");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the transparency log does not load: run `sealpost-relay audit verify`")
            }
        }
        let active = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let sweeper = tokio::spawn(sweep(relay.clone(), stop_rx.clone()));
        // Stopped only once the connections are gone, so that what they raise while they
        // drain is still written.
        let (writer_stop_tx, writer_stop_rx) = watch::channel(false);
        let security_writer =
            tokio::spawn(security::write_loop(relay.security.clone(), writer_stop_rx));
        tokio::pin!(shutdown);
        lifecycle.set(health::Phase::Serving);
        match endpoint.local_addr() {
            Ok(addr) => info!(addr = %addr, "relay listening"),
            Err(e) => warn!(error = %e, "relay listening (address unknown)"),
        }
        loop {
            let incoming = tokio::select! {
                _ = &mut shutdown => break,
                i = endpoint.accept() => match i { Some(i) => i, None => break },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let limits = &relay.config.limits;
            let n = active.load(Ordering::Relaxed);
            if n >= limits.max_connections {
                ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "reason" => "max_connections")
                    .increment(1);
                incoming.refuse();
                continue;
            }
            if n >= limits.retry_above_connections && !incoming.remote_address_validated() {
                ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "reason" => "retry").increment(1);
                if incoming.retry().is_err() {
                    warn!("retry was not possible for an incoming connection");
                }
                continue;
            }
            let relay = relay.clone();
            let stop = stop_rx.clone();
            let active = active.clone();
            active.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(metrics::CONNECTIONS).increment(1);
            ::metrics::gauge!(metrics::CONNECTIONS_ACTIVE).increment(1.0);
            tasks.spawn(async move {
                if let Ok(connecting) = incoming.accept() {
                    if let Ok(Ok(conn)) =
                        tokio::time::timeout(Duration::from_secs(10), connecting).await
                    {
                        conn::serve(relay, conn, stop).await;
                    }
                }
                active.fetch_sub(1, Ordering::Relaxed);
                ::metrics::gauge!(metrics::CONNECTIONS_ACTIVE).decrement(1.0);
            });
        }
        lifecycle.set(health::Phase::Stopping);
        info!(
            connections = active.load(Ordering::Relaxed),
            "shutting down: no new connections"
        );
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("connections did not finish within the grace period; closing them");
            tasks.abort_all();
        }
        endpoint.close(conn::close::SHUTDOWN.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        sweeper.abort();
        // The events raised until now are stored and exported before the relay stops.
        let _ = writer_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), security_writer).await;
        let flushed = relay.store.flush().await;
        let _ = http_stop_tx.send(true);
        if let Some(t) = http_task {
            let _ = t.await;
        }
        flushed?;
        info!("relay stopped; storage flushed");
        Ok(())
    }
}

/// The relay's TLS identity from the configuration: the production PEM files, or the
/// development CA in `tls.dev_dir` (generated on first use).
fn load_identity(config: &Config) -> Result<tls::ServerIdentity, ServerError> {
    let identity = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => tls::load_pem(cert, key, config.tls.ca.as_deref())?,
        _ => {
            let (id, created) =
                tls::load_or_generate_dev(&config.tls.dev_dir, &config.tls.dev_names)?;
            let fp = hex::encode(id.ca_fingerprint);
            tls::write_atomic(
                &config.tls.dev_dir.join(tls::CA_FINGERPRINT_FILE),
                format!("{fp}\n").as_bytes(),
                false,
            )?;
            if created {
                info!(dir = %config.tls.dev_dir.display(), "generated a development CA and server certificate");
            }
            id
        }
    };
    Ok(identity)
}

/// Replaces the certificate a running relay presents (SIGHUP in `sealpost-relay`): new
/// connections get the new certificate, open ones keep theirs.
#[derive(Clone)]
pub struct TlsReloader {
    endpoint: quinn::Endpoint,
    ca_fingerprint: [u8; 32],
}

impl TlsReloader {
    /// Load the certificate and key named by `config` again and use them for new
    /// connections. Refused (and nothing changes) if they do not load or chain to another
    /// CA than the one clients pinned: a CA change needs every client's new pin, so it is
    /// a deliberate restart, never a reload.
    pub fn reload(&self, config: &Config) -> Result<(), ServerError> {
        let identity = load_identity(config)?;
        if identity.ca_fingerprint != self.ca_fingerprint {
            return Err(ServerError::Reload(format!(
                "the reloaded certificate chains to CA {}, not to the pinned CA {}: restart the \
                 relay to change CA",
                hex::encode(identity.ca_fingerprint),
                hex::encode(self.ca_fingerprint)
            )));
        }
        let secrets =
            tls::RelaySecrets::load_or_create(&config.data_dir.join(tls::RELAY_SECRETS_FILE))?;
        let (_, server_config) = tls::quinn_configs(identity, &secrets, &config.transport)?;
        self.endpoint.set_server_config(Some(server_config));
        Ok(())
    }
}

/// Bind the relay's UDP socket with the configured buffers (see
/// [`tls::TransportLimits::udp_buffer_bytes`]).
fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Only what the address says: `[::]` does not also take IPv4.
        socket.set_only_v6(true)?;
    }
    // Best effort: the kernel caps them; a smaller buffer still works, with more loss
    // under bursts.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let (recv, send) = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
    // (Linux reports twice the size asked for, to account for its bookkeeping.)
    if recv < buffer {
        tracing::warn!(
            wanted = buffer,
            got = recv,
            "UDP receive buffer smaller than configured (raise net.core.rmem_max)"
        );
    }
    tracing::debug!(recv, send, "UDP socket buffers");
    Ok(socket.into())
}

async fn sweep<S: Store>(relay: Arc<Relay<S>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    let mut disabled_tick = tokio::time::interval(DISABLED_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = disabled_tick.tick() => {
                if let Err(e) = relay.close_disabled().await {
                    warn!(error = %e, "checking for disabled accounts failed");
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        match relay.store.expire(relay::unix_ms()).await {
            Ok(n) if n > 0 => {
                ::metrics::counter!(metrics::ENVELOPES_EXPIRED).increment(n);
                info!(expired = n, "expired undelivered envelopes");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "expiry sweep failed"),
        }
        transfer::expire_blobs(relay.blobs.clone()).await;
        relay.sweep_links();
        if let Ok(stats) = relay.store.queue_stats().await {
            ::metrics::gauge!(metrics::QUEUE_DEPTH).set(stats.count as f64);
            ::metrics::gauge!(metrics::QUEUE_BYTES).set(stats.bytes as f64);
        }
    }
}

/// Security events that concern trust (`security::concerns_trust`) go into the
/// transparency log once stored (docs/OPERATIONS.md, "Security events"): the writer task
/// calls the hook, which appends a `security_event` leaf (rule, severity, account,
/// device; never an address or a detail) in a task of its own. The relay is held weakly,
/// so the hook does not keep it alive.
fn record_trust_events<S: store::Store + 'static>(relay: &Arc<Relay<S>>) {
    let weak = Arc::downgrade(relay);
    relay.security.on_trust_event(Arc::new(move |e| {
        let Some(relay) = weak.upgrade() else { return };
        let leaf = sealpost_protocol::tlog::LogLeaf::new(
            e.time_ms,
            sealpost_protocol::tlog::Actor::Relay,
            sealpost_protocol::tlog::LeafEvent::SecurityEvent {
                rule: sealpost_protocol::wire::BoundedString::truncating(e.rule.as_str()),
                severity: sealpost_protocol::wire::BoundedString::truncating(e.severity.name()),
                account: e.account.clone(),
                device: e.device,
            },
        );
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let now = relay::unix_ms();
            if let Err(err) = relay.tlog.append(&relay.store, &leaf, now).await {
                tracing::warn!(error = %err, "a security event could not be appended to the transparency log");
            }
        });
    }));
}
