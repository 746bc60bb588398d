//! `sealpost-relay`: the Sealpost relay binary.
//!
//! `sealpost-relay` (or `sealpost-relay run`) starts the relay with the embedded
//! defaults; `sealpost-relay admin ...` manages accounts, enrolment codes and
//! assignments in the same data directory. Configuration: built-in defaults, then a TOML
//! file (`--config`), then environment variables and flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::Role;
use sealpost_server::config::{Backend, Config};
use sealpost_server::store::memory::MemoryStore;
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_server::store::MailboxStore;
use sealpost_server::{admin, tls, Server};

/// Database file name inside the data directory.
const DB_FILE: &str = "relay.sqlite3";

#[derive(Parser, Clone)]
#[command(
    name = "sealpost-relay",
    version = env!("SEALPOST_VERSION"),
    about = "Sealpost relay: QUIC store-and-forward for sealed envelopes"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "SEALPOST_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database, relay secrets).
    #[arg(long, global = true, env = "SEALPOST_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long, env = "SEALPOST_RELAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Prometheus metrics address, or "off".
    #[arg(long, env = "SEALPOST_RELAY_METRICS")]
    metrics: Option<String>,
    /// The organisation fingerprint devices pin (64 hex digits, from `sealpost org init`).
    #[arg(long, global = true, env = "SEALPOST_RELAY_ORG_FINGERPRINT")]
    org_fingerprint: Option<String>,
    /// Keep everything in memory (nothing survives a restart; for trials and benchmarks).
    #[arg(long, env = "SEALPOST_RELAY_MEMORY")]
    memory: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SEALPOST_RELAY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Print the effective configuration as TOML.
    Config,
    /// Print a shell completion script, e.g. `sealpost-relay completions bash >
    /// ~/.local/share/bash-completion/completions/sealpost-relay`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output, e.g. `sealpost-relay man | man -l
    /// -`; with --out, write one page per command into DIR.
    Man {
        /// The directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The transparency log: the log key, an offline verification, an export.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
        /// Print results as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Operator actions on the relay's database.
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
        /// Print results as JSON, one object per line.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Clone, Subcommand)]
enum AuditCommand {
    /// Print the log's public key as the roster's `log_key` wants it
    /// (`<origin>+<key id>+<base64 key>`; created at first use, in the data directory).
    Key,
    /// Recompute the whole transparency log from the database and check it against the
    /// device logs, rosters, attestations and signed checkpoints stored beside it; names
    /// the first entry that does not verify and exits non-zero.
    Verify,
    /// Write the log for an external auditor as JSON lines (docs/OPERATIONS.md).
    Export {
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Client,
    Advisor,
    Staff,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Client => Role::Client,
            RoleArg::Advisor => Role::Advisor,
            RoleArg::Staff => Role::Staff,
        }
    }
}

#[derive(Subcommand, Clone)]
enum AdminCommand {
    /// Create an account.
    CreateAccount {
        /// Account id: a-z, 0-9, '.', '_', '-'.
        id: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Issue a one-time enrolment code (shown once; stored only as a hash).
    IssueCode {
        /// The account.
        account: String,
        /// Lifetime, e.g. "24h", "15m".
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
    },
    /// Assign a client to an advisor or staff account.
    Assign {
        /// The client account.
        client: String,
        /// The advisor or staff account.
        staff: String,
    },
    /// Remove an assignment.
    Unassign {
        /// The client account.
        client: String,
        /// The advisor or staff account.
        staff: String,
    },
    /// List accounts.
    Accounts,
    /// List an account's devices.
    Devices {
        /// The account.
        account: String,
    },
    /// Print the CA fingerprint clients must pin.
    CaFingerprint,
    /// List enrolment codes (ids, expiry, used or not; never the codes themselves).
    Codes {
        /// Only this account's.
        account: Option<String>,
    },
    /// Revoke an account's unused enrolment codes: the one with this id, or all of them.
    RevokeCode {
        /// The account.
        account: String,
        /// The code's id as `admin codes` lists it (at least 4 hex digits); all unused
        /// codes of the account when omitted.
        id: Option<String>,
    },
    /// Disable an account: its devices cannot authenticate, and a running relay closes
    /// their connections within 5 s. Its messages, log and assignments stay.
    Disable {
        /// The account.
        account: String,
    },
    /// Re-enable a disabled account.
    Enable {
        /// The account.
        account: String,
    },
    /// List assignments (client, advisor or staff), all or one account's.
    Assignments {
        /// Only this account's.
        account: Option<String>,
    },
    /// A summary: accounts, devices, open codes, assignments, pending envelopes, roster.
    Status,
    /// Back up the database and attachment blobs into a new directory, while the relay
    /// runs (a consistent snapshot; see docs/OPERATIONS.md "Storage and backups").
    Backup {
        /// Where to write the backup (must not exist, or be empty).
        dir: PathBuf,
    },
    /// Restore a backup into the data directory. The relay must be stopped (this takes
    /// the data directory's lock); the backup is checked against its manifest first.
    Restore {
        /// The backup directory (`admin backup` wrote it).
        dir: PathBuf,
        /// Overwrite the database the data directory already holds.
        #[arg(long)]
        replace: bool,
    },
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = Config::layered(cli.config.as_deref())?;
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = cli.listen {
        config.listen = l;
    }
    match cli.metrics.as_deref() {
        None => {}
        Some("off") => config.metrics_listen = None,
        Some(addr) => {
            config.metrics_listen = Some(
                addr.parse()
                    .context("--metrics must be an address or \"off\"")?,
            )
        }
    }
    if cli.memory {
        config.backend = Backend::Memory;
    }
    if let Some(fp) = &cli.org_fingerprint {
        config.org_fingerprint = Some(sealpost_server::config::parse_org_fingerprint(fp)?);
    }
    config.validate()?;
    Ok(config)
}

/// Replaces the log filter of the running process (SIGHUP).
type LogReload =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter: `RUST_LOG` when set, else the configuration's `log_level`.
fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Logs go to stderr: text (colours only on a terminal) or JSON lines (nothing else is
/// printed then: the start-up banner is a log event too).
fn init_tracing(format: LogFormat, level: &str) -> LogReload {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(level));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    handle
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

fn open_store(config: &Config) -> Result<SqliteStore> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    Ok(SqliteStore::open(&config.data_dir.join(DB_FILE))?)
}

/// Lock file in the data directory: one relay per data directory.
const LOCK_FILE: &str = "relay.lock";

/// Take the data directory for this process: a second relay on the same directory would
/// write the same database and hand out the same sequence numbers. The lock is released
/// when the process exits, however it exits (the kernel drops it).
fn lock_data_dir(config: &Config) -> Result<std::fs::File> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let path = config.data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another sealpost-relay is already running on the data directory {} (it holds {}); \
             stop it first, or give this one its own --data-dir",
            config.data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

async fn run(cli: Cli, config: Config, logs: LogReload) -> Result<()> {
    let fp_path = config.tls.dev_dir.join(tls::CA_FINGERPRINT_FILE);
    match config.backend {
        Backend::Sqlite => {
            let _lock = lock_data_dir(&config)?;
            let store = open_store(&config)?;
            let server = Server::bind(config.clone(), store)?;
            announce(&server, &config, &fp_path, cli.log_format)?;
            let reloads = tokio::spawn(reload_on_sighup(
                cli,
                server.tls_reloader(),
                logs,
                server.relay(),
            ));
            let result = server.run(shutdown_signal()).await;
            reloads.abort();
            result?;
        }
        Backend::Memory => {
            let server = Server::bind(config.clone(), MemoryStore::new())?;
            announce(&server, &config, &fp_path, cli.log_format)?;
            let reloads = tokio::spawn(reload_on_sighup(
                cli,
                server.tls_reloader(),
                logs,
                server.relay(),
            ));
            let result = server.run(shutdown_signal()).await;
            reloads.abort();
            result?;
        }
    }
    Ok(())
}

/// SIGHUP: read the configuration again (file, environment, flags) and apply what can
/// change while the relay runs: the log filter (`log_level`, unless `RUST_LOG` is set) and
/// the TLS certificate and key (same CA). Everything else (addresses, storage, limits, the
/// organisation) needs a restart; a reload that changes it says so in the log. A
/// configuration that does not load or validate is refused and the running one kept.
async fn reload_on_sighup<S: sealpost_server::store::Store>(
    cli: Cli,
    tls: sealpost_server::TlsReloader,
    logs: LogReload,
    relay: std::sync::Arc<sealpost_server::relay::Relay<S>>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be handled; reloads need a restart");
            return;
        };
        let mut running = load_config(&cli).ok();
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reload refused: the configuration does not load; the running one is kept");
                    continue;
                }
            };
            match logs.reload(log_filter(&config.log_level)) {
                Ok(()) => tracing::info!(log_level = %config.log_level, "log filter reloaded"),
                Err(e) => tracing::error!(error = %e, "log filter not reloaded"),
            }
            match tls.reload(&config) {
                Ok(()) => tracing::info!("TLS certificate reloaded (new connections use it)"),
                Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded"),
            }
            if let Some(old) = &running {
                let mut a = old.clone();
                let mut b = config.clone();
                a.log_level.clear();
                b.log_level.clear();
                a.tls = Default::default();
                b.tls = Default::default();
                if toml::to_string(&a).ok() != toml::to_string(&b).ok() {
                    tracing::warn!("settings other than log_level and the TLS files changed: they take effect only after a restart");
                }
            }
            // Record the configuration now in force in the transparency log.
            let digest = sealpost_server::tlog::config_digest(&config);
            if let Err(e) = relay
                .tlog
                .record_config(&relay.store, digest, sealpost_server::relay::unix_ms())
                .await
            {
                tracing::error!(error = %e, "the reloaded configuration could not be recorded in the transparency log");
            }
            running = Some(config);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (cli, tls, logs, relay);
    }
}

fn announce<S: sealpost_server::store::Store>(
    server: &Server<S>,
    config: &Config,
    fp_path: &std::path::Path,
    format: LogFormat,
) -> Result<()> {
    let addr = server.local_addr()?;
    let fp = hex::encode(server.ca_fingerprint());
    if format == LogFormat::Json {
        // Only JSON on stderr: the banner is one log event with its values as fields.
        tracing::info!(
            listen = %addr,
            ca_fingerprint = %fp,
            org_fingerprint = config.org_fingerprint.map(|o| o.to_hex()).unwrap_or_default(),
            data = %match config.backend {
                Backend::Sqlite => config.data_dir.join(DB_FILE).display().to_string(),
                Backend::Memory => "memory".to_owned(),
            },
            metrics = server.metrics_addr().map(|m| m.to_string()).unwrap_or_default(),
            log_key = %server.relay().tlog.public().to_vkey(),
            "sealpost-relay listening"
        );
        return Ok(());
    }
    eprintln!("sealpost-relay listening on {addr} (QUIC, ALPN sealpost/1)");
    eprintln!("CA fingerprint (clients pin this): {fp}");
    if config.tls.cert.is_none() {
        eprintln!("  written to {}", fp_path.display());
    }
    match &config.org_fingerprint {
        Some(org) => eprintln!(
            "organisation fingerprint (devices pin this): {}",
            org.to_hex()
        ),
        None => eprintln!("organisation: none configured (no roster, no notices, no recovery)"),
    }
    match config.backend {
        Backend::Sqlite => eprintln!("data: {}", config.data_dir.join(DB_FILE).display()),
        Backend::Memory => eprintln!("data: in memory (nothing survives a restart)"),
    }
    if let Some(m) = server.metrics_addr() {
        eprintln!("metrics: http://{m}/metrics (health: /healthz, readiness: /readyz)");
    }
    eprintln!(
        "transparency log key (the roster's log_key): {}",
        server.relay().tlog.public().to_vkey()
    );
    Ok(())
}

fn backup_command(config: &Config, action: AdminCommand, json: bool) -> Result<()> {
    if config.backend != Backend::Sqlite {
        bail!("backups are of the SQLite backend's data directory; this relay is configured in memory");
    }
    let (verb, manifest) = match action {
        AdminCommand::Backup { dir } => {
            let m = sealpost_server::backup::backup(
                &config.data_dir,
                &dir,
                env!("SEALPOST_VERSION"),
                sealpost_server::relay::unix_ms(),
            )?;
            ("backup", (m, dir))
        }
        AdminCommand::Restore { dir, replace } => {
            // No relay may run on the directory while it is replaced.
            let _lock = lock_data_dir(config)?;
            let m = sealpost_server::backup::restore(&dir, &config.data_dir, replace)?;
            ("restore", (m, dir))
        }
        _ => bail!("internal: not a backup command"),
    };
    let (m, dir) = manifest;
    if json {
        println!(
            "{}",
            serde_json::json!({"event": verb, "dir": dir.display().to_string(), "data_dir": config.data_dir.display().to_string(), "manifest": m})
        );
    } else if verb == "backup" {
        println!(
            "backed up {} ({} bytes, schema {}, sha256 {}) and {} attachment blobs into {}",
            config.data_dir.join(DB_FILE).display(),
            m.database_bytes,
            m.schema_version,
            m.database_sha256,
            m.blobs,
            dir.display()
        );
    } else {
        println!(
            "restored the backup taken at {} (schema {}, {} blobs) into {}; start the relay to use it",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(m.created_ms)
            ),
            m.schema_version,
            m.blobs,
            config.data_dir.display()
        );
    }
    Ok(())
}

async fn admin_command(config: &Config, action: AdminCommand, json: bool) -> Result<()> {
    if matches!(
        action,
        AdminCommand::Backup { .. } | AdminCommand::Restore { .. }
    ) {
        return backup_command(config, action, json);
    }
    let store = open_store(config)?;
    let account = |s: &str| AccountId::new(s).with_context(|| format!("invalid account id {s:?}"));
    let (command, args) = describe_admin(&action);
    let result = admin_action(config, &store, action, json, account).await;
    // Every admin command that ran against the database is recorded, after it ran (its
    // outcome is not: a failed command changed nothing).
    if result.is_ok() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        admin::record_command(&store, command, &args).await?;
    }
    store.flush().await.ok();
    result
}

/// An admin command's name and arguments for the transparency log (never a secret).
fn describe_admin(action: &AdminCommand) -> (&'static str, Vec<String>) {
    let opt = |o: &Option<String>| o.iter().cloned().collect::<Vec<_>>();
    match action {
        AdminCommand::CreateAccount { id, role } => (
            "create-account",
            vec![
                id.clone(),
                format!("{:?}", Role::from(*role)).to_lowercase(),
            ],
        ),
        AdminCommand::IssueCode { account, ttl } => {
            ("issue-code", vec![account.clone(), ttl.to_string()])
        }
        AdminCommand::Assign { client, staff } => ("assign", vec![client.clone(), staff.clone()]),
        AdminCommand::Unassign { client, staff } => {
            ("unassign", vec![client.clone(), staff.clone()])
        }
        AdminCommand::Accounts => ("accounts", vec![]),
        AdminCommand::Devices { account } => ("devices", vec![account.clone()]),
        AdminCommand::CaFingerprint => ("ca-fingerprint", vec![]),
        AdminCommand::Codes { account } => ("codes", opt(account)),
        AdminCommand::RevokeCode { account, id } => {
            let mut v = vec![account.clone()];
            v.extend(opt(id));
            ("revoke-code", v)
        }
        AdminCommand::Disable { account } => ("disable", vec![account.clone()]),
        AdminCommand::Enable { account } => ("enable", vec![account.clone()]),
        AdminCommand::Assignments { account } => ("assignments", opt(account)),
        AdminCommand::Status => ("status", vec![]),
        AdminCommand::Backup { dir } => ("backup", vec![dir.display().to_string()]),
        AdminCommand::Restore { dir, .. } => ("restore", vec![dir.display().to_string()]),
    }
}

async fn admin_action(
    config: &Config,
    store: &SqliteStore,
    action: AdminCommand,
    json: bool,
    account: impl Fn(&str) -> Result<AccountId>,
) -> Result<()> {
    match action {
        AdminCommand::CreateAccount { id, role } => {
            let id = account(&id)?;
            admin::create_account(store, &id, role.into()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "account_created", "account": id.as_str(), "role": Role::from(role)})
                );
            } else {
                println!("created account {id}");
            }
        }
        AdminCommand::IssueCode { account: a, ttl } => {
            let a = account(&a)?;
            let ttl: Duration = ttl.into();
            let issued = admin::issue_code(store, &a, ttl.as_secs()).await?;
            let fp = std::fs::read_to_string(config.tls.dev_dir.join(tls::CA_FINGERPRINT_FILE))
                .unwrap_or_default();
            let fp = fp.trim();
            let org = config.org_fingerprint.map(|f| f.to_hex());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "enrolment_code", "account": a.as_str(), "code": issued.code, "expires_ms": issued.expires_ms, "ca_fingerprint": fp, "org_fingerprint": org})
                );
            } else {
                println!("enrolment code for {a}: {}", issued.code);
                println!(
                    "valid for {} (until {}); it works once and is shown only now.",
                    humantime::format_duration(ttl),
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(issued.expires_ms)
                    )
                );
                if !fp.is_empty() {
                    println!("CA fingerprint: {fp}");
                }
                match &config.org_fingerprint {
                    Some(org) => println!("organisation fingerprint: {}", org.to_hex()),
                    None => println!("organisation fingerprint: none configured"),
                }
            }
        }
        AdminCommand::Assign { client, staff } => {
            admin::assign(store, &account(&client)?, &account(&staff)?).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "assigned", "client": client, "staff": staff})
                );
            } else {
                println!("assigned {client} to {staff}");
            }
        }
        AdminCommand::Unassign { client, staff } => {
            let existed = admin::unassign(store, &account(&client)?, &account(&staff)?).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "unassigned", "client": client, "staff": staff, "existed": existed})
                );
            } else if existed {
                println!("unassigned {client} from {staff}");
            } else {
                bail!("{client} was not assigned to {staff}");
            }
        }
        AdminCommand::Accounts => {
            for a in admin::accounts(store).await? {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "account", "account": a.id.as_str(), "role": a.role, "created_ms": a.created_ms, "frozen": a.frozen})
                    );
                } else {
                    println!(
                        "{:<32} {:?}{}",
                        a.id.as_str(),
                        a.role,
                        if a.frozen { " (frozen)" } else { "" }
                    );
                }
            }
        }
        AdminCommand::Devices { account: a } => {
            for d in admin::devices(store, &account(&a)?).await? {
                let fp = d.identity.fingerprint().to_string();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "device", "device": d.id.to_hex(), "fingerprint": fp, "enrolled_ms": d.enrolled_ms, "revoked": d.revoked})
                    );
                } else {
                    println!(
                        "{}  {}{}",
                        d.id,
                        fp,
                        if d.revoked { " (revoked)" } else { "" }
                    );
                }
            }
        }
        AdminCommand::Codes { account: a } => {
            let a = a.as_deref().map(account).transpose()?;
            let now = sealpost_server::relay::unix_ms();
            for c in admin::codes(store, a.as_ref()).await? {
                let state = if c.used {
                    "used"
                } else if c.expires_ms <= now {
                    "expired"
                } else {
                    "open"
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "enrolment_code_record", "account": c.account.as_str(), "id": c.id, "expires_ms": c.expires_ms, "state": state})
                    );
                } else {
                    println!(
                        "{:<32} {}  {:<7} expires {}",
                        c.account.as_str(),
                        c.id,
                        state,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_millis(c.expires_ms)
                        )
                    );
                }
            }
        }
        AdminCommand::RevokeCode { account: a, id } => {
            let acc = account(&a)?;
            let n = admin::revoke_codes(store, &acc, id.as_deref()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "codes_revoked", "account": a, "revoked": n})
                );
            } else if n == 0 {
                bail!(
                    "{a} has no unused code{}",
                    id.map(|i| format!(" with id {i}")).unwrap_or_default()
                );
            } else {
                println!("revoked {n} unused enrolment code(s) of {a}");
            }
        }
        AdminCommand::Disable { account: ref a } | AdminCommand::Enable { account: ref a } => {
            let disable = matches!(action, AdminCommand::Disable { .. });
            let changed = admin::set_disabled(store, &account(a)?, disable).await?;
            let word = if disable { "disabled" } else { "enabled" };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": if disable { "account_disabled" } else { "account_enabled" }, "account": a, "changed": changed})
                );
            } else if changed {
                println!("{word} {a}");
            } else {
                println!("{a} was already {word}");
            }
        }
        AdminCommand::Assignments { account: a } => {
            let a = a.as_deref().map(account).transpose()?;
            for (client, staff) in admin::assignments(store, a.as_ref()).await? {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "assignment", "client": client.as_str(), "staff": staff.as_str()})
                    );
                } else {
                    println!("{:<32} -> {}", client.as_str(), staff.as_str());
                }
            }
        }
        AdminCommand::Status => {
            let st = admin::status(store, sealpost_server::relay::unix_ms()).await?;
            if json {
                let mut v = serde_json::to_value(&st)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("event".into(), "status".into());
                }
                println!("{v}");
            } else {
                println!(
                    "accounts: {} clients, {} advisors, {} staff ({} frozen, {} disabled)",
                    st.clients, st.advisors, st.staff, st.frozen, st.disabled
                );
                println!(
                    "devices: {} active, {} revoked",
                    st.active_devices, st.revoked_devices
                );
                println!("open enrolment codes: {}", st.open_codes);
                println!("assignments: {}", st.assignments);
                println!(
                    "pending envelopes: {} ({} bytes)",
                    st.pending_envelopes, st.pending_bytes
                );
                if st.roster_version == 0 {
                    println!("roster: none");
                } else {
                    println!("roster: version {}", st.roster_version);
                }
            }
        }
        AdminCommand::CaFingerprint
        | AdminCommand::Backup { .. }
        | AdminCommand::Restore { .. } => unreachable_in_admin()?,
    }
    Ok(())
}

async fn audit_command(config: &Config, action: AuditCommand, json: bool) -> Result<()> {
    use sealpost_server::tlog::load_or_create_key;
    let key = load_or_create_key(&config.data_dir, &config.log_origin)?;
    match action {
        AuditCommand::Key => {
            let vkey = key.public().to_vkey();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "log_key", "origin": config.log_origin, "log_key": vkey, "public_key_hex": hex::encode(key.public().public())})
                );
            } else {
                println!("{vkey}");
            }
        }
        AuditCommand::Verify => {
            let store = open_store(config)?;
            let report = sealpost_server::audit::verify(&store, Some(key.public())).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} leaves, root {}, {} signed checkpoints checked",
                    report.leaves, report.root, report.checkpoints
                );
                for f in &report.findings {
                    println!("  {}", f.what);
                }
            }
            if let Some(first) = report.findings.first() {
                bail!("the transparency log does not verify: {}", first.what);
            }
            if !json {
                println!("the transparency log verifies");
            }
        }
        AuditCommand::Export { out } => {
            let store = open_store(config)?;
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let n = sealpost_server::audit::export(&store, &mut w).await?;
            std::io::Write::flush(&mut w)?;
            w.into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()
                .with_context(|| format!("writing {}", out.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "exported", "leaves": n, "out": out.display().to_string()})
                );
            } else {
                println!(
                    "exported {n} leaves and the latest checkpoint to {}",
                    out.display()
                );
            }
        }
    }
    Ok(())
}

fn unreachable_in_admin() -> Result<()> {
    bail!("internal: handled before opening the store")
}

/// `completions` and `man`: printed (or written) without a configuration or data
/// directory. A reader that went away (`| head`) ends quietly.
fn generate_docs(command: &Command) -> Result<bool> {
    use clap::CommandFactory;
    use std::io::Write;
    let text = match command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "sealpost-relay", &mut script);
            script
        }
        Command::Man { out: Some(dir) } => {
            std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            eprintln!(
                "Wrote the manual pages into {} (read one with `man -l {}/sealpost-relay.1`).",
                dir.display(),
                dir.display()
            );
            return Ok(true);
        }
        Command::Man { out: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command().disable_help_subcommand(true))
                .render(&mut page)
                .context("cannot render the manual page")?;
            page
        }
        _ => return Ok(false),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(true),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        if generate_docs(command)? {
            return Ok(());
        }
    }
    let config = load_config(&cli);
    let logs = init_tracing(
        cli.log_format,
        config.as_ref().map_or("info", |c| c.log_level.as_str()),
    );
    let config = config?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        None | Some(Command::Run) => runtime.block_on(run(cli.clone(), config, logs)),
        Some(Command::Config) => {
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Some(Command::Audit { action, json }) => {
            if config.backend != Backend::Sqlite {
                bail!("the audit commands read the SQLite database; this relay is configured in memory");
            }
            runtime.block_on(audit_command(&config, action, json))
        }
        Some(Command::Admin {
            action: AdminCommand::CaFingerprint,
            ..
        }) => {
            let path = config.tls.dev_dir.join(tls::CA_FINGERPRINT_FILE);
            let fp = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "{} not found: start the relay once to generate the development CA",
                    path.display()
                )
            })?;
            println!("{}", fp.trim());
            Ok(())
        }
        Some(Command::Admin { action, json }) => {
            runtime.block_on(admin_command(&config, action, json))
        }
        Some(Command::Completions { .. } | Command::Man { .. }) => Ok(()),
    }
}
