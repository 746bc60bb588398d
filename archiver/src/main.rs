//! `sealpost-archiver`: the firm's compliance archive (docs/OPERATIONS.md, "The
//! compliance archive"; docs/PROTOCOL.md §22).
//!
//! One directory (`--home`) holds the archive device's encrypted profile (`profile/`,
//! under `SEALPOST_PASSPHRASE`), the archive key (`archive.key`, 0600: the key the
//! store is encrypted under, held by the firm, never seen by the relay) and the store
//! (`archive.db`, SQLCipher). `run` receives archive copies from the relay and commits
//! each batch to the store before the relay is told it arrived.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sealpost_archiver::{
    Archive, ArchiveKey, Attachment, Direction, ExportScope, HoldScope, NewRecord, RecordClass,
    SearchOrder, SearchQuery,
};
use sealpost_client::archive::{ArchiveSink, ArchivedMessage};
use sealpost_client::client::RelayInfo;
use sealpost_client::{display, Client};
use sealpost_protocol::content::{Content, NoticeText, ReceiptKind};
use sealpost_protocol::identity::AccountId;
use serde_json::json;

/// Exit codes (as `sealpost`'s where they overlap).
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 5;
const EXIT_TRUST: u8 = 8;

/// How long one receive pass of `run` listens (also how often it checks for Ctrl-C).
const PASS: Duration = Duration::from_millis(500);
/// The longest `run --once` waits for the relay to say the mailbox is drained.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// Pause before reconnecting after a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "sealpost-archiver",
    version,
    about = "The firm's compliance archive for Sealpost"
)]
struct Cli {
    /// The archiver's directory (profile, archive key, store).
    #[arg(
        long,
        env = "SEALPOST_ARCHIVER_HOME",
        global = true,
        default_value = "."
    )]
    home: PathBuf,
    /// Print JSON lines instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the archive device's profile (passphrase: SEALPOST_PASSPHRASE), the
    /// archive key (archive.key, 0600) and the empty store.
    Init,
    /// Print the archive device's identity for the roster's [policy.archive] `device`.
    Fingerprint,
    /// Enrol the archive device with an enrolment code for the archive account.
    Enroll {
        /// Relay address (host:port).
        #[arg(long)]
        relay: String,
        /// The relay CA's SHA-256 fingerprint (64 hex digits).
        #[arg(long)]
        ca: String,
        /// The name in the relay's certificate.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// The archive account.
        #[arg(long)]
        account: String,
        /// The enrolment code.
        #[arg(long)]
        code: String,
        /// The organisation fingerprint to pin (from the firm, out of band).
        #[arg(long)]
        org: String,
    },
    /// Receive archive copies and commit them to the store (until stopped, or `--for`).
    Run {
        /// Stop after this long (e.g. `30s`); default: run until killed.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        for_: Option<Duration>,
        /// Take what is waiting at the relay, then stop.
        #[arg(long)]
        once: bool,
        /// Anchor the chain head in the relay's transparency log at most this often
        /// (when it moved); `0s` never.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
        anchor_every: Duration,
    },
    /// Anchor the chain head in the relay's transparency log now (§22.6).
    Anchor,
    /// Check the whole chain; names the first record that does not verify (exit 8).
    Verify,
    /// Rebuild the search index from the archived contents, after checking them against
    /// the chain (when `verify` says the index does not match them).
    Reindex,
    /// The chain's head (sequence number and hash), for anchoring.
    Head,
    /// Search the archive (recorded in the chain with who searched).
    Search {
        /// Who searches (recorded).
        #[arg(long)]
        actor: String,
        #[command(flatten)]
        filter: Filter,
        /// Words that must all occur.
        #[arg(long)]
        text: Option<String>,
        /// At most this many results.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Export a conversation or a date range to a directory (EML, MBOX, HTML, originals,
    /// manifest.json); recorded in the chain with who exported.
    Export {
        /// Who exports (recorded).
        #[arg(long)]
        actor: String,
        /// The directory to create.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        filter: Filter,
    },
    /// Check an export directory against its manifest (no key needed).
    VerifyExport {
        /// The export directory.
        dir: PathBuf,
    },
    /// Legal holds.
    #[command(subcommand)]
    Hold(HoldCmd),
    /// Delete the content of records past their retention (not under a legal hold),
    /// leaving a tombstone in the chain.
    Sweep {
        /// Who runs it (recorded).
        #[arg(long)]
        actor: String,
    },
}

/// Which records: a client, a firm-side account, and when they were sent.
#[derive(clap::Args)]
struct Filter {
    /// The client account.
    #[arg(long)]
    client: Option<String>,
    /// The firm-side account.
    #[arg(long)]
    firm: Option<String>,
    /// Sent at or after (RFC 3339, e.g. 2026-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_ms)]
    from: Option<u64>,
    /// Sent before (RFC 3339).
    #[arg(long, value_parser = parse_ms)]
    to: Option<u64>,
}

/// An RFC 3339 time as Unix milliseconds.
fn parse_ms(s: &str) -> Result<u64, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e} (write 2026-01-31T00:00:00Z)"))
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
}

#[derive(Subcommand)]
enum HoldCmd {
    /// Place a hold (one of --client, --firm, --from/--to, --all).
    Place {
        /// Who places it (recorded).
        #[arg(long)]
        actor: String,
        /// Its name (unique among holds in force).
        #[arg(long)]
        name: String,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        filter: Filter,
        /// Everything.
        #[arg(long)]
        all: bool,
    },
    /// Release a hold.
    Release {
        /// Who releases it (recorded).
        #[arg(long)]
        actor: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// The holds in force.
    List,
}

/// A failure: what to say and how to exit.
struct Fail(u8, String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(EXIT_FAILURE, e.to_string())
    }
}

fn usage(m: impl Into<String>) -> Fail {
    Fail(EXIT_USAGE, m.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEALPOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

struct Paths {
    home: PathBuf,
    profile: PathBuf,
    key: PathBuf,
    store: PathBuf,
    settings: PathBuf,
}

fn paths(home: &Path) -> Paths {
    Paths {
        home: home.to_path_buf(),
        profile: home.join("profile"),
        key: home.join("archive.key"),
        store: home.join("archive.db"),
        settings: home.join("archiver.toml"),
    }
}

fn passphrase() -> Result<String, Fail> {
    std::env::var("SEALPOST_PASSPHRASE")
        .map_err(|_| usage("set SEALPOST_PASSPHRASE to the archive device profile's passphrase"))
}

/// `archiver.toml` in the home directory (optional): the retention per record class and
/// the mail domain of exports.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    retention: Option<sealpost_archiver::RetentionPolicy>,
    #[serde(default)]
    mail_domain: Option<String>,
}

fn open_store(p: &Paths) -> Result<Archive, Fail> {
    if !p.key.exists() && !p.store.exists() {
        return Err(Fail(
            EXIT_FAILURE,
            format!(
                "no archive in {} (create one with `sealpost-archiver --home DIR init`, or name its directory with --home)",
                p.home.display()
            ),
        ));
    }
    let key = ArchiveKey::load(&p.key).map_err(|e| Fail(EXIT_FAILURE, e.to_string()))?;
    let settings: Settings = match std::fs::read_to_string(&p.settings) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| usage(format!("{}: {e}", p.settings.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settings::default(),
        Err(e) => return Err(e.into()),
    };
    let mut options = sealpost_archiver::ArchiveOptions::default();
    if let Some(r) = settings.retention {
        r.validate()?;
        options.retention = r;
    }
    if let Some(d) = settings.mail_domain {
        options.mail_domain = d;
    }
    Ok(Archive::open_with(&p.store, &key, options)?)
}

fn say(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let p = paths(&cli.home);
    let json = cli.json;
    match cli.cmd {
        Cmd::Init => {
            let pass = passphrase()?;
            std::fs::create_dir_all(&cli.home)?;
            if p.key.exists() || p.store.exists() {
                return Err(Fail(
                    EXIT_FAILURE,
                    format!(
                        "{} already holds an archive; refusing to overwrite it",
                        cli.home.display()
                    ),
                ));
            }
            let client = Client::init(&p.profile, &pass)?;
            let key = ArchiveKey::write_new_file(&p.key)?;
            let archive = Archive::open(&p.store, &key)?;
            drop(archive);
            let identity = sealpost_client::org::identity_hex(client.identity());
            say(
                json,
                json!({"event": "initialised", "home": cli.home.display().to_string(), "device": identity, "fingerprint": client.identity().fingerprint().to_string()}),
                || {
                    format!(
                        "Archive initialised in {}.\n  device (for the roster's [policy.archive] device): {identity}\n  fingerprint: {}\n  archive key: {} (back it up apart from the store: without it the store cannot be read)",
                        cli.home.display(),
                        client.identity().fingerprint(),
                        p.key.display()
                    )
                },
            );
            Ok(())
        }
        Cmd::Fingerprint => {
            let client = Client::open(&p.profile, &passphrase()?)?;
            let identity = sealpost_client::org::identity_hex(client.identity());
            say(
                json,
                json!({"device": identity, "fingerprint": client.identity().fingerprint().to_string()}),
                || {
                    format!(
                        "device: {identity}\nfingerprint: {}",
                        client.identity().fingerprint()
                    )
                },
            );
            Ok(())
        }
        Cmd::Enroll {
            relay,
            ca,
            server_name,
            account,
            code,
            org,
        } => {
            let mut client = Client::open(&p.profile, &passphrase()?)?;
            let account = AccountId::new(&account).map_err(|e| usage(format!("--account: {e}")))?;
            let info = RelayInfo {
                addr: relay.clone(),
                server_name,
                ca_fingerprint: ca,
                org_fingerprint: Some(org),
            };
            client.enroll(info, &account, &code).await.map_err(|e| {
                Fail(
                    EXIT_UNREACHABLE,
                    format!("enrolment at {relay} failed: {e}"),
                )
            })?;
            client.disconnect();
            say(
                json,
                json!({"event": "enrolled", "account": account.as_str()}),
                || format!("The archive device is enrolled as {account}."),
            );
            Ok(())
        }
        Cmd::Run {
            for_,
            once,
            anchor_every,
        } => receive_loop(&p, json, for_, once, anchor_every).await,
        Cmd::Anchor => {
            let archive = Arc::new(Mutex::new(open_store(&p)?));
            let mut client = Client::open(&p.profile, &passphrase()?)?;
            client
                .connect()
                .await
                .map_err(|e| Fail(EXIT_UNREACHABLE, format!("could not reach the relay: {e}")))?;
            client.roster().await?;
            let done = anchor(&mut client, &archive).await?;
            client.disconnect();
            let (seq, index) = done.ok_or_else(|| {
                Fail(
                    EXIT_FAILURE,
                    "the archive is empty: nothing to anchor".into(),
                )
            })?;
            say(
                json,
                json!({"event": "anchored", "seq": seq, "leaf_index": index}),
                || {
                    format!(
                        "Record {seq} anchored as leaf {index} of the relay's transparency log."
                    )
                },
            );
            Ok(())
        }
        Cmd::Verify => {
            let archive = open_store(&p)?;
            match archive.verify() {
                Ok(s) => {
                    say(
                        json,
                        json!({"event": "verified", "records": s.records, "head_seq": s.head.seq, "head_hash": hex::encode(s.head.hash)}),
                        || {
                            format!(
                                "The chain verifies: {} records, head {} {}",
                                s.records,
                                s.head.seq,
                                hex::encode(s.head.hash)
                            )
                        },
                    );
                    Ok(())
                }
                Err(e) => Err(not_verified("the archive does not verify", &e)),
            }
        }
        Cmd::Reindex => {
            let mut archive = open_store(&p)?;
            match archive.reindex() {
                Ok(s) => {
                    say(
                        json,
                        json!({"event": "reindexed", "records": s.records, "contents": s.contents_checked}),
                        || {
                            format!(
                                "The search index was rebuilt from {} verified contents ({} records checked).",
                                s.contents_checked, s.records
                            )
                        },
                    );
                    Ok(())
                }
                Err(e) => Err(not_verified(
                    "the archive does not verify, so its index was not rebuilt",
                    &e,
                )),
            }
        }
        Cmd::Head => {
            let archive = open_store(&p)?;
            let h = archive.head()?;
            say(
                json,
                json!({"seq": h.seq, "hash": hex::encode(h.hash)}),
                || format!("{} {}", h.seq, hex::encode(h.hash)),
            );
            Ok(())
        }
        Cmd::Search {
            actor,
            filter,
            text,
            limit,
        } => {
            let mut archive = open_store(&p)?;
            let query = SearchQuery {
                client: filter.client,
                firm: filter.firm,
                from_ms: filter.from,
                to_ms: filter.to,
                text,
                order: SearchOrder::Newest,
                limit,
            };
            let r = archive.search(&actor, &query)?;
            for h in &r.hits {
                say(json, serde_json::to_value(h)?, || {
                    format!(
                        "#{} [{}] {} -> {} [{}] {}",
                        h.seq,
                        sealpost_client::clock::utc(h.meta.sent_ms),
                        h.meta.sender_account,
                        if h.meta.sender_account == h.meta.client_account {
                            &h.meta.firm_account
                        } else {
                            &h.meta.client_account
                        },
                        h.meta.kind,
                        // What a client wrote: control characters escaped.
                        h.snippet.as_deref().map_or_else(
                            || "(deleted at the end of retention)".to_owned(),
                            display::line
                        )
                    )
                });
            }
            if !json {
                println!(
                    "{} result(s); this search is record {} of the chain",
                    r.hits.len(),
                    r.audit_seq
                );
            }
            Ok(())
        }
        Cmd::Export { actor, out, filter } => {
            let (from_ms, to_ms) = (filter.from, filter.to);
            let scope = match (filter.client, filter.firm) {
                (Some(client), Some(firm)) => ExportScope::Conversation {
                    client,
                    firm,
                    from_ms,
                    to_ms,
                },
                (None, None) => match (from_ms, to_ms) {
                    (Some(from_ms), Some(to_ms)) => ExportScope::Dates { from_ms, to_ms },
                    _ => {
                        return Err(usage(
                            "export needs --client and --firm, or --from and --to",
                        ))
                    }
                },
                _ => return Err(usage("--client and --firm go together")),
            };
            let mut archive = open_store(&p)?;
            let r = archive.export(&actor, &scope, &out)?;
            say(
                json,
                json!({"event": "exported", "dir": r.dir.display().to_string(), "records": r.records, "files": r.files, "manifest_sha256": hex::encode(r.manifest_sha256), "audit_seq": r.audit_seq}),
                || {
                    format!("Exported {} record(s), {} file(s) to {} (manifest SHA-256 {}; recorded as record {})", r.records, r.files, r.dir.display(), hex::encode(r.manifest_sha256), r.audit_seq)
                },
            );
            Ok(())
        }
        Cmd::VerifyExport { dir } => match sealpost_archiver::verify_export(&dir) {
            Ok(r) => {
                say(
                    json,
                    json!({"event": "export_verified", "records": r.records, "files": r.files, "links": r.links, "manifest_sha256": hex::encode(r.manifest_sha256)}),
                    || {
                        format!("The export verifies: {} records, {} files, {} chain links (manifest SHA-256 {})", r.records, r.files, r.links, hex::encode(r.manifest_sha256))
                    },
                );
                Ok(())
            }
            Err(e) => Err(Fail(EXIT_TRUST, format!("the export does not verify: {e}"))),
        },
        Cmd::Hold(h) => hold(&p, json, h),
        Cmd::Sweep { actor } => {
            let mut archive = open_store(&p)?;
            let now = sealpost_client::clock::now_ms();
            let r = archive.sweep(now, &actor)?;
            say(
                json,
                json!({"event": "swept", "deleted": r.deleted.len(), "held": r.held, "more": r.more}),
                || {
                    format!("{} record(s) past retention deleted (tombstones left in the chain); {} kept under legal holds{}", r.deleted.len(), r.held, if r.more { "; run again for more" } else { "" })
                },
            );
            Ok(())
        }
    }
}

/// A failed verification: exit 8, naming the first bad record when there is one.
fn not_verified(what: &str, e: &sealpost_archiver::VerifyError) -> Fail {
    let first = e
        .seq()
        .map(|s| format!(" (first bad record: {s})"))
        .unwrap_or_default();
    Fail(EXIT_TRUST, format!("{what}: {e}{first}"))
}

fn hold(p: &Paths, json: bool, h: HoldCmd) -> Result<(), Fail> {
    let mut archive = open_store(p)?;
    match h {
        HoldCmd::Place {
            actor,
            name,
            reason,
            filter,
            all,
        } => {
            let scope = match (filter.client, filter.firm, filter.from, filter.to, all) {
                (Some(account), None, None, None, false) => HoldScope::Client { account },
                (None, Some(account), None, None, false) => HoldScope::Firm { account },
                (None, None, Some(from_ms), Some(to_ms), false) => {
                    HoldScope::DateRange { from_ms, to_ms }
                }
                (None, None, None, None, true) => HoldScope::All,
                _ => {
                    return Err(usage(
                        "name exactly one of --client, --firm, --from with --to, --all",
                    ))
                }
            };
            let seq = archive.place_hold(&actor, &name, &reason, scope)?;
            say(
                json,
                json!({"event": "hold_placed", "name": name, "seq": seq}),
                || format!("Legal hold {name:?} placed (record {seq})."),
            );
        }
        HoldCmd::Release {
            actor,
            name,
            reason,
        } => {
            let seq = archive.release_hold(&actor, &name, &reason)?;
            say(
                json,
                json!({"event": "hold_released", "name": name, "seq": seq}),
                || format!("Legal hold {name:?} released (record {seq})."),
            );
        }
        HoldCmd::List => {
            for h in archive.holds()? {
                say(json, serde_json::to_value(&h)?, || {
                    format!(
                        "{}: {}, placed by {} at {} (record {}): {}",
                        display::line(&h.name),
                        describe_scope(&h.scope),
                        display::line(&h.placed_by),
                        sealpost_client::clock::utc(h.placed_ms),
                        h.placed_seq,
                        display::line(&h.reason)
                    )
                });
            }
        }
    }
    Ok(())
}

/// What a hold covers, as a reader says it.
fn describe_scope(scope: &HoldScope) -> String {
    match scope {
        HoldScope::Client { account } => format!("every record of client {account}"),
        HoldScope::Firm { account } => format!("every record of firm account {account}"),
        HoldScope::DateRange { from_ms, to_ms } => format!(
            "every record sent from {} to {}",
            sealpost_client::clock::utc(*from_ms),
            sealpost_client::clock::utc(*to_ms)
        ),
        HoldScope::All => "every record".into(),
    }
}

/// The record the store keeps for an archive copy.
fn to_record(m: &ArchivedMessage) -> NewRecord {
    let mut source_id = Vec::with_capacity(32);
    source_id.extend_from_slice(&m.device.0);
    source_id.extend_from_slice(&m.message_id.0);
    let (class, kind, mut text) = describe(&m.content);
    let mut attachments = Vec::new();
    if let (Content::Attachment { descriptor, .. }, Some(bytes)) = (&m.content, &m.attachment) {
        attachments.push(Attachment {
            name: descriptor.file_name.as_str().to_owned(),
            mime: descriptor.media_type.as_str().to_owned(),
            bytes: bytes.clone(),
        });
    }
    if let Some(e) = &m.attachment_error {
        text.push_str(&format!(" [the file's bytes are not in the archive: {e}]"));
    }
    NewRecord {
        source_id,
        class,
        sent_ms: m.sent_ms,
        client_account: m.client_account.as_str().to_owned(),
        firm_account: m.firm_account.as_str().to_owned(),
        sender_account: m.from.as_str().to_owned(),
        sender_device: m.device.to_hex(),
        direction: if m.from == m.client_account {
            Direction::ClientToFirm
        } else {
            Direction::FirmToClient
        },
        kind,
        text,
        attachments,
        original: m.original.clone(),
    }
}

/// Class, kind and searchable text of a content.
fn describe(c: &Content) -> (RecordClass, String, String) {
    match c {
        Content::Text { body } => (
            RecordClass::Message,
            "text".into(),
            body.as_str().to_owned(),
        ),
        Content::Instruction { category, body } => (
            RecordClass::Instruction,
            "instruction".into(),
            format!("[{}] {}", category.name(), body.as_str()),
        ),
        Content::Notice { content, .. } => {
            let text = match NoticeText::decode(content) {
                Ok(t) => format!("{}\n\n{}", t.title.as_str(), t.body.as_str()),
                Err(e) => format!("(undecodable notice: {e})"),
            };
            (RecordClass::Notice, "notice".into(), text)
        }
        Content::Attachment {
            descriptor,
            caption,
        } => (
            RecordClass::Attachment,
            "attachment".into(),
            format!(
                "{} [file {} ({} bytes, {})]",
                caption.as_str(),
                descriptor.file_name.as_str(),
                descriptor.size,
                descriptor.media_type.as_str()
            ),
        ),
        Content::Receipt { kind, message_ids } => (
            RecordClass::Receipt,
            match kind {
                ReceiptKind::Delivered => "receipt.delivered".into(),
                ReceiptKind::Read => "receipt.read".into(),
            },
            message_ids
                .as_slice()
                .iter()
                .map(|id| id.to_hex())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => (RecordClass::Message, other.name().into(), String::new()),
    }
}

/// Anchor the store's head in the relay's transparency log, then record the anchor in the
/// chain: `(anchored seq, leaf index)`, or `None` for an empty store.
async fn anchor(
    client: &mut Client,
    archive: &Arc<Mutex<Archive>>,
) -> Result<Option<(u64, u64)>, Fail> {
    let head = lock_store(archive).head()?;
    if head.seq == 0 {
        return Ok(None);
    }
    let index = client
        .anchor_archive_head(head.seq, head.hash)
        .await
        .map_err(|e| Fail(EXIT_UNREACHABLE, format!("anchoring failed: {e}")))?;
    lock_store(archive).anchor(
        "sealpost-archiver",
        "relay transparency log",
        &format!("leaf {index} anchors record {}", head.seq),
    )?;
    Ok(Some((head.seq, index)))
}

fn lock_store(archive: &Arc<Mutex<Archive>>) -> std::sync::MutexGuard<'_, Archive> {
    match archive.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The store as the device's archive sink: a batch is one transaction, durable when it
/// returns; a copy already archived (same device and message id) is not written again.
fn sink(archive: Arc<Mutex<Archive>>, ingested: Arc<AtomicU64>) -> ArchiveSink {
    Box::new(move |batch: &[ArchivedMessage]| {
        let records: Vec<NewRecord> = batch.iter().map(to_record).collect();
        let mut store = match archive.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let done = store.ingest_batch(&records).map_err(|e| e.to_string())?;
        let new = done.iter().filter(|d| !d.duplicate).count() as u64;
        ingested.fetch_add(new, Ordering::Relaxed);
        Ok(())
    })
}

/// Sleep `d`, or less if a stop is requested.
async fn pause(d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// `run`: connect, receive, commit to the store before acknowledging; reconnect on a
/// lost connection (a transient failure is "try again", never a verdict).
async fn receive_loop(
    p: &Paths,
    json: bool,
    for_: Option<Duration>,
    once: bool,
    anchor_every: Duration,
) -> Result<(), Fail> {
    let archive = Arc::new(Mutex::new(open_store(p)?));
    let mut client = Client::open(&p.profile, &passphrase()?)?;
    if client.account().is_none() {
        return Err(usage(
            "the archive device is not enrolled (run `sealpost-archiver enroll`)",
        ));
    }
    let ingested = Arc::new(AtomicU64::new(0));
    client.set_archive_sink(sink(archive.clone(), ingested.clone()));
    let started = Instant::now();
    let deadline = for_.map(|d| started + d);
    let mut connected_once = false;
    // Ctrl-C or SIGTERM: `run` stops between receive passes (what was committed is
    // acknowledged; what was not is delivered again on the next run).
    let mut stop = sealpost_client::shutdown::stop_signal();
    // The head last anchored (its record is followed by the anchor's own record).
    let mut anchored_through = lock_store(&archive).head()?.seq;
    let mut last_anchor: Option<Instant> = None;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || *stop.borrow() {
            break;
        }
        if !client.is_connected() {
            match client.connect().await {
                Ok(()) => {}
                Err(e) => {
                    if once && !connected_once {
                        return Err(Fail(
                            EXIT_UNREACHABLE,
                            format!("could not reach the relay: {e}"),
                        ));
                    }
                    tracing::warn!(error = %e, "relay unreachable; trying again");
                    pause(RECONNECT_PAUSE, &mut stop).await;
                    continue;
                }
            }
            // Under the newest verified roster (the archive it names is this device).
            if let Err(e) = client.roster().await {
                if matches!(e, sealpost_client::client::ClientError::Trust(_)) {
                    return Err(Fail(EXIT_TRUST, format!("the roster does not verify: {e}")));
                }
                tracing::warn!(error = %e, "roster not refreshed; trying again");
                client.disconnect();
                pause(RECONNECT_PAUSE, &mut stop).await;
                continue;
            }
            if !client.is_archive_device() {
                return Err(Fail(
                    EXIT_TRUST,
                    "the verified roster does not name this device as the firm's archive".into(),
                ));
            }
            if !connected_once {
                connected_once = true;
                let account = client
                    .account()
                    .map(|a| a.as_str().to_owned())
                    .unwrap_or_default();
                let relay = client.relay().map(|r| r.addr.clone()).unwrap_or_default();
                let head = lock_store(&archive).head()?;
                say(
                    json,
                    json!({"event": "connected", "account": account, "relay": relay, "head_seq": head.seq}),
                    || {
                        format!(
                            "Receiving archive copies as {account} from {relay} (chain head: record {}).{}",
                            head.seq,
                            if once { "" } else { " Ctrl-C stops." }
                        )
                    },
                );
            }
        }
        let pass = if once { DRAIN_WAIT } else { PASS };
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(pass),
            None => pass,
        };
        match client.receive(once, wait).await {
            Ok(events) => {
                for e in events {
                    if let sealpost_client::Event::Archived { .. } = e {
                        continue;
                    }
                    if json {
                        println!("{}", serde_json::to_string(&e).unwrap_or_default());
                    }
                }
                // The head is read only when an anchor is due (not on every 500 ms pass).
                let due = !anchor_every.is_zero()
                    && (once || last_anchor.is_none_or(|t| t.elapsed() >= anchor_every));
                if due && lock_store(&archive).head()?.seq > anchored_through + 1 {
                    match anchor(&mut client, &archive).await {
                        Ok(Some((seq, index))) => {
                            anchored_through = seq + 1;
                            last_anchor = Some(Instant::now());
                            if json {
                                println!(
                                    "{}",
                                    json!({"event": "anchored", "seq": seq, "leaf_index": index})
                                );
                            }
                        }
                        Ok(None) => {}
                        Err(Fail(_, e)) => {
                            tracing::warn!(error = %e, "anchoring the chain head failed; trying again later")
                        }
                    }
                }
                if once {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "receive pass failed; reconnecting");
                client.disconnect();
                // What was not committed stays unacknowledged at the relay; start again
                // from the profile on disk.
                let pass = passphrase()?;
                drop(client);
                client = Client::open(&p.profile, &pass)?;
                client.set_archive_sink(sink(archive.clone(), ingested.clone()));
                pause(RECONNECT_PAUSE, &mut stop).await;
            }
        }
    }
    client.disconnect();
    let n = ingested.load(Ordering::Relaxed);
    let head = archive
        .lock()
        .map_err(|_| Fail(EXIT_FAILURE, "store lock poisoned".into()))?
        .head()?;
    say(
        json,
        json!({"event": "stopped", "ingested": n, "head_seq": head.seq, "head_hash": hex::encode(head.hash)}),
        || {
            format!(
                "Archived {n} new record(s); chain head {} {}",
                head.seq,
                hex::encode(head.hash)
            )
        },
    );
    Ok(())
}
