//! `sealpost`: the Sealpost command-line client.
//!
//! A thin shell over [`sealpost_client::Client`]: every command opens the encrypted
//! device profile (`--home` or `SEALPOST_HOME`, passphrase from `SEALPOST_PASSPHRASE` or
//! a prompt), does one thing, saves, and exits with a documented code (see
//! [`cli::error::Exit`]). `--json` prints one JSON object per line.

mod cli;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The exit-code table, shown in `--help` (and in the README).
const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  generic failure
  2  usage error (bad arguments, no passphrase available)
  3  wrong passphrase
  4  no profile here, or this device is not enrolled yet
  5  the relay could not be reached (the address tried is printed)
  6  refused by the relay (routing policy, quota, rate limit, enrolment code)
  7  verification mismatch: safety number, or the code of a device link
  8  a trust check failed: the relay's certificate does not match the pinned CA, or a
     roster, device log, approval or notice did not verify (the relay may be
     misbehaving, or is not your firm's; nothing was trusted)
  9  the profile is busy: a command that needs it to itself (init, enroll, device link,
     org pin, listen) while `sealpost listen` runs on it, or another process holds it
     (while `listen` runs, the other commands run through it)

Environment:
  SEALPOST_HOME            the profile directory (default: $HOME/.sealpost)
  SEALPOST_PASSPHRASE      the profile passphrase (otherwise asked for without echo)
  SEALPOST_ORG_DIR         the organisation store (`org init`, `org roster sign-genesis`)
  SEALPOST_ORG_PASSPHRASE  its passphrase (otherwise asked for without echo)";

#[derive(Parser)]
#[command(
    name = "sealpost",
    version = env!("SEALPOST_VERSION"),
    about = "Sealpost: end-to-end encrypted messages between a firm and its clients",
    after_long_help = EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command accepts.
#[derive(Args, Clone)]
pub struct GlobalArgs {
    /// Profile directory (default: $HOME/.sealpost).
    #[arg(long, global = true, env = "SEALPOST_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Log to stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// How long to wait for the relay before giving up (seconds, or e.g. `30s`, `2m`).
    #[arg(long, global = true, default_value_t = 15, value_name = "DURATION", value_parser = parse_seconds)]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Create this device's encrypted profile (keys never leave it).
    Init,
    /// Enrol this device into an account with a one-time code from your firm.
    Enroll {
        /// The relay's UDP address, e.g. 127.0.0.1:7443.
        #[arg(long, value_name = "ADDR")]
        relay: String,
        /// The relay's CA fingerprint (64 hex digits; spaces and colons are ignored).
        #[arg(long, value_name = "FINGERPRINT")]
        ca: String,
        /// The name on the relay's certificate.
        #[arg(long, default_value = "localhost", value_name = "NAME")]
        server_name: String,
        /// Your account id.
        #[arg(long, value_name = "ID")]
        account: String,
        /// The one-time enrolment code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The organisation fingerprint (64 hex digits, spaces ignored), given to you by
        /// your firm with the code (`sealpost-relay admin issue-code` prints it). Pinned
        /// for good: every roster, device log, approval and notice is verified from it.
        /// Required when the relay belongs to an organisation: it is never taken from the
        /// relay. A device enrolled before its relay had one pins it with `org pin`.
        #[arg(long, value_name = "FINGERPRINT")]
        org: Option<String>,
    },
    /// Show this device: account, role, device id, fingerprint, relay.
    Whoami,
    /// The accounts you can write to, with their verification status.
    Contacts,
    /// Send a message (or, with --file, an attachment; with --instruction, an instruction).
    Send {
        /// The account to write to.
        account: String,
        /// The message ("-" reads it from standard input); with --file, an optional caption.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file as an attachment (encrypted, streamed, at most 64 MiB).
        #[arg(long, value_name = "PATH", conflicts_with = "instruction")]
        file: Option<PathBuf>,
        /// Send the text as an instruction of this kind, not as chat. Instructions are a
        /// sensitive kind: refused from a device still on probation after it was added,
        /// and from a frozen account.
        #[arg(long, value_enum, value_name = "CATEGORY")]
        instruction: Option<cli::InstructionArg>,
    },
    /// Fetch new messages, show them (notices apart) and send read receipts.
    Inbox {
        /// Show the whole local history, with delivery and read status of what you sent.
        #[arg(long)]
        all: bool,
        /// How long to wait for the relay to hand over the mailbox (seconds, or e.g. `30s`).
        #[arg(long, default_value_t = 10, value_name = "DURATION", value_parser = parse_seconds)]
        wait: u64,
    },
    /// Stay connected and print events as they arrive (Ctrl-C to stop). Meanwhile other
    /// `sealpost` commands on this profile run through it (see --no-socket).
    Listen {
        /// Stop after this many seconds.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_seconds)]
        for_secs: Option<u64>,
        /// Send read receipts for the messages printed.
        #[arg(long)]
        mark_read: bool,
        /// Do not serve other `sealpost` commands on this profile while running (they
        /// then fail with exit 9 until it stops). By default they are forwarded to it over
        /// a socket only your OS user can reach (`$SEALPOST_HOME/agent/sock`).
        #[arg(long)]
        no_socket: bool,
    },
    /// Show the safety number with an account, or confirm it with --confirm.
    Verify {
        /// The account.
        account: String,
        /// The digits the other person read to you; marks the contact verified if they match.
        #[arg(long, value_name = "DIGITS")]
        confirm: Option<String>,
    },
    /// This account's devices, from its verified device log (the same as `device list`).
    Devices,
    /// Download the file attached to a message (see `inbox --all` for message ids),
    /// verifying it; the file appears only if every check passes.
    Download {
        /// The message id (32 hex digits).
        message_id: String,
        /// Where to write the file (default: the sender's file name in the current directory).
        #[arg(long, value_name = "PATH")]
        out: Option<std::path::PathBuf>,
    },
    /// Send an account notice (staff and advisors).
    Notice {
        /// The notice's title.
        #[arg(long)]
        title: String,
        /// The notice's text.
        #[arg(long)]
        body: String,
        /// Recipients (repeat the option for several).
        #[arg(long, value_name = "ACCOUNT", num_args = 1.., required_unless_present = "all_clients", conflicts_with = "all_clients")]
        to: Vec<String>,
        /// Every client account of the relay, assigned to you or not (needs the
        /// co-signers of the roster's `notice_to_all_clients` quorum: the notice becomes a
        /// draft until they approve).
        #[arg(long)]
        all_clients: bool,
        /// What the notice is about. High-risk categories (payment_instruction,
        /// deposit_instruction, address_change, security_change) need the roster's
        /// `high_risk_notice` quorum: the notice becomes a draft that goes to co-signers.
        #[arg(long, value_enum, default_value_t = cli::trust::Category::General)]
        category: cli::trust::Category,
    },
    /// The organisation: its offline root key and its roster (staff, roles, policy).
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// This account's devices: link a new one, confirm it, dismiss requests, list,
    /// revoke, freeze; staff: recover an account, unfreeze it.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Approval requests (the multi-signature): list, show, approve, reject.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Print a shell completion script, e.g. `sealpost completions bash >
    /// ~/.local/share/bash-completion/completions/sealpost`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output, e.g. `sealpost man | man -l -`;
    /// with --out, write one page per command (sealpost.1, sealpost-send.1, ...) into DIR.
    Man {
        /// The directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The firm's verification of a client's first device (with an organisation):
    /// clients see where theirs stands and the code to read aloud; staff list whom they
    /// still have to verify, start a verification and type the code the client reads.
    Attest {
        #[command(subcommand)]
        command: AttestCommand,
    },
    /// The transparency log's witness (security staff): create the witness key the roster
    /// lists, then follow the relay's log, verify every leaf and checkpoint from the
    /// pinned organisation, and cosign what verified; or check the log once.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The security desk (staff whose roster role is security): the relay's security
    /// events.
    Security {
        #[command(subcommand)]
        command: SecurityCommand,
    },
}

/// `sealpost audit ...`
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Create this device's witness key with --name (once), or show it. Its name and key
    /// go into the roster's `[[policy.witness]]` through a roster change.
    WitnessKey {
        /// The witness's name, e.g. witness.security.example (letters, digits, `.`, `-`,
        /// `/`, `_`).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Check now that the relay's transparency log extends the checkpoint this device
    /// holds (devices also check whenever they accept a device-log head or a roster
    /// version, and compare checkpoints in every message). Exit 8 if it does not.
    Check,
    /// Follow the relay's transparency log: download every leaf, check each checkpoint
    /// is the root of exactly those leaves and extends the last one cosigned, check
    /// roster and device-log leaves against what verifies from the pinned organisation,
    /// and cosign. Stops with exit 8, naming the first leaf or checkpoint at fault, when
    /// the log does not verify.
    Follow {
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
        /// Seconds between passes.
        #[arg(long, default_value_t = 5, value_name = "DURATION", value_parser = parse_seconds)]
        interval: u64,
        /// Stop after this long.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_seconds)]
        for_secs: Option<u64>,
    },
}

/// `sealpost security ...`
#[derive(Subcommand)]
pub enum SecurityCommand {
    /// Print the relay's security events as they are raised (metadata only: rule,
    /// severity, account, device, address), after those it has stored; reconnects when
    /// the connection drops and goes on from the last event seen. Ctrl-C to stop.
    Watch {
        /// Start after this event id (0: every stored event).
        #[arg(long, default_value_t = 0, value_name = "ID")]
        since: u64,
        /// Stop after this long (seconds, or e.g. `30s`, `2m`).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_seconds)]
        for_secs: Option<u64>,
    },
}

/// `sealpost attest ...`
#[derive(Subcommand)]
pub enum AttestCommand {
    /// Client: is this account verified by the firm? While it waits, asks for the
    /// verification and, once a staff member has started it, shows the code to read aloud
    /// when they call (`whoami` shows the same).
    Status,
    /// Staff: client accounts still waiting for the firm's verification.
    List,
    /// Staff: start verifying ACCOUNT (picks the challenge its code depends on). Then call
    /// the client: they run `sealpost whoami` and read you the code.
    Begin {
        /// The client account.
        account: String,
    },
    /// Staff: type the code the client read to you on your call. If it matches, this
    /// device signs the attestation and peers trust the account from then on; if not,
    /// the request ends and the client asks again.
    Confirm {
        /// The client account.
        account: String,
        /// The 6 digits the client read.
        #[arg(long, value_name = "DIGITS")]
        code: String,
    },
}

/// `sealpost org ...`
#[derive(Subcommand)]
pub enum OrgCommand {
    /// Create the organisation root key, offline, encrypted under a passphrase
    /// (SEALPOST_ORG_PASSPHRASE or a prompt), and print its fingerprint.
    Init {
        /// The directory of the organisation store (created; keep it offline).
        #[arg(long, env = "SEALPOST_ORG_DIR", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the organisation fingerprint of a store (no passphrase needed).
    Fingerprint {
        /// The directory of the organisation store.
        #[arg(long, env = "SEALPOST_ORG_DIR", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Pin the organisation fingerprint on a device enrolled before its relay had an
    /// organisation (only when none is pinned; never changed afterwards). Get the
    /// fingerprint from your firm out of band; the relay's roster must verify from it.
    Pin {
        /// The organisation fingerprint (64 hex digits, spaces ignored).
        fingerprint: String,
    },
    /// The roster: sign version 1, publish, show, propose and approve changes.
    Roster {
        #[command(subcommand)]
        command: RosterCommand,
    },
}

/// `sealpost org roster ...`
#[derive(Subcommand)]
pub enum RosterCommand {
    /// Offline: sign roster version 1 from a specification file with the root key.
    SignGenesis {
        /// The directory of the organisation store.
        #[arg(long, env = "SEALPOST_ORG_DIR", value_name = "DIR")]
        dir: PathBuf,
        /// The roster specification (TOML: [[staff]] account, role, devices; [policy]).
        #[arg(long, value_name = "SPEC.toml")]
        roster: PathBuf,
        /// Where to write the signed roster (CBOR).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Publish a signed roster version (e.g. roster-v1.cbor) to the relay (staff).
    Publish {
        /// The signed roster file.
        file: PathBuf,
    },
    /// Show the verified roster chain's head: version, staff, roles, policy.
    Show {
        /// Print the head as a specification file (TOML) to edit into the next version.
        #[arg(long)]
        spec: bool,
    },
    /// Propose the next roster version from a specification file; it is published once
    /// the current roster's `roster_change` quorum approves.
    Propose {
        /// The specification of the next version (TOML; `org roster show --spec` is a start).
        #[arg(long, value_name = "SPEC.toml")]
        roster: PathBuf,
        /// Print the differences and stop, without sending anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Approve a roster change (same as `sealpost approvals approve ID`).
    Approve {
        /// The request id (32 hex digits; `sealpost approvals list`).
        request_id: String,
        /// Do not ask for confirmation (scripts).
        #[arg(long)]
        yes: bool,
    },
}

/// `sealpost device ...`
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// On a NEW device: ask to join an account. Shows a 6-digit code; type it on one of
    /// the account's existing devices (`sealpost device confirm`). Waits until then.
    Link {
        /// The account to join.
        #[arg(long, value_name = "ID")]
        account: String,
        /// The relay's UDP address, e.g. 127.0.0.1:7443.
        #[arg(long, value_name = "ADDR")]
        relay: String,
        /// The relay's CA fingerprint (64 hex digits).
        #[arg(long, value_name = "FINGERPRINT")]
        ca: String,
        /// The organisation fingerprint (64 hex digits), as for `enroll`: required when
        /// the relay belongs to an organisation.
        #[arg(long, value_name = "FINGERPRINT")]
        org: Option<String>,
        /// The name on the relay's certificate.
        #[arg(long, default_value = "localhost", value_name = "NAME")]
        server_name: String,
        /// How long to wait for the confirmation (a person on the existing device, or a
        /// recovery's approvers), in seconds. The request outlives it: running `device
        /// link` again (or any command) resumes it, and finishes joining if it was
        /// confirmed meanwhile.
        #[arg(long, default_value_t = 600, value_name = "DURATION", value_parser = parse_seconds)]
        wait: u64,
        /// Start a new request instead of resuming this device's earlier one (needed
        /// after the code was refused as typed wrong: that request cannot be offered on
        /// again).
        #[arg(long)]
        restart: bool,
    },
    /// On an EXISTING device: review a pending link request (the new device's
    /// fingerprint), then type the code the new device shows to add it.
    Confirm {
        /// The link id (32 hex digits) when several are pending.
        #[arg(long, value_name = "ID")]
        link: Option<String>,
        /// For scripts, once this device has made the offer (an earlier `device
        /// confirm`): the code the new device shows. Without it the pending request is
        /// shown, the offer made, and the code read from standard input.
        #[arg(long, value_name = "DIGITS")]
        code: Option<String>,
        /// How long to wait for the new device to show its code (seconds, or e.g. `2m`).
        #[arg(long, default_value_t = 120, value_name = "DURATION", value_parser = parse_seconds)]
        wait: u64,
    },
    /// Dismiss pending link requests to your account that you did not make (`device
    /// confirm` shows them): one (`--link`, a unique prefix is enough) or `--all`.
    Dismiss {
        /// The link id (32 hex digits, or a unique prefix).
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        link: Option<String>,
        /// Every pending request.
        #[arg(long)]
        all: bool,
    },
    /// The devices of an account from its verified device log (default: yours).
    List {
        /// Another account (staff, advisors, contacts).
        #[arg(long, value_name = "ID")]
        account: Option<String>,
    },
    /// Remove one of this account's devices (id or fingerprint prefix from `device list`).
    Revoke {
        /// The device id (32 hex digits) or a unique prefix of it.
        device: String,
        /// Why (kept in the device log).
        #[arg(long, default_value = "", value_name = "TEXT")]
        reason: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal,
        /// e.g. in scripts).
        #[arg(long)]
        yes: bool,
    },
    /// "This wasn't me": freeze this account. Devices still on probation are revoked at
    /// once; staff must unfreeze the account (a quorum).
    Freeze {
        /// Why (kept in the device log).
        #[arg(long, default_value = "this wasn't me", value_name = "TEXT")]
        reason: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal,
        /// e.g. in scripts).
        #[arg(long)]
        yes: bool,
    },
    /// Staff: recover an account whose devices are all lost, after an out-of-band check.
    /// The client's new device runs `device link`; this offers it a recovery, asks for
    /// the code its screen then shows (the client reads it to you on a call you placed),
    /// and asks the roster's quorum to approve.
    Recover {
        /// The client's account.
        #[arg(long, value_name = "ID")]
        account: String,
        /// The link id when several are pending.
        #[arg(long, value_name = "ID")]
        link: Option<String>,
        /// For scripts, once this device has made the offer: the code the client's new
        /// device shows (read to you out of band). Without it the offer is made and the
        /// code is read from standard input.
        #[arg(long, value_name = "DIGITS")]
        code: Option<String>,
        /// Why (kept in the device log).
        #[arg(long, default_value = "account recovery", value_name = "TEXT")]
        reason: String,
        /// How long to wait for the new device to sign the offer (seconds, or e.g. `2m`).
        #[arg(long, default_value_t = 120, value_name = "DURATION", value_parser = parse_seconds)]
        wait: u64,
    },
    /// Staff: ask the roster's quorum to unfreeze an account.
    Unfreeze {
        /// The account.
        #[arg(long, value_name = "ID")]
        account: String,
        /// Why (kept in the device log).
        #[arg(long, default_value = "unfreeze after review", value_name = "TEXT")]
        reason: String,
    },
}

/// `sealpost approvals ...`
#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Requests waiting for you, and your own requests with their progress.
    List {
        /// Include finished, rejected and expired requests.
        #[arg(long)]
        all: bool,
    },
    /// Everything about one request, in full: operation, what exactly is approved,
    /// initiator, expiry, approvals so far.
    Show {
        /// The request id (32 hex digits, or a unique prefix).
        id: String,
    },
    /// Show a request in full, then sign your approval of exactly that content.
    Approve {
        /// The request id (32 hex digits, or a unique prefix).
        id: String,
        /// Do not ask for confirmation (scripts).
        #[arg(long)]
        yes: bool,
        /// For an account recovery: the 6-digit code the account holder reads from their
        /// new device, on a call YOU place to the number on file (asked for if omitted).
        #[arg(long, value_name = "DIGITS")]
        code: Option<String>,
    },
    /// Reject a request (the initiator is told, with your reason).
    Reject {
        /// The request id (32 hex digits, or a unique prefix).
        id: String,
        /// Why.
        #[arg(long, default_value = "", value_name = "TEXT")]
        reason: String,
    },
    /// Withdraw one of your own requests: it is never carried out, and answers that still
    /// arrive change nothing.
    Cancel {
        /// The request id (32 hex digits, or a unique prefix).
        id: String,
    },
    /// Try one of your failed requests again: send it again if it reached no approver, or
    /// carry out its operation again if its quorum is in (approvals must be unexpired).
    Retry {
        /// The request id (32 hex digits, or a unique prefix).
        id: String,
    },
}

/// A reader that went away (`sealpost --json approvals list | head -1`) ends the command
/// quietly, as it does for other Unix tools: Rust's `println!` panics on a closed pipe
/// (SIGPIPE is ignored in Rust programs), so that one panic exits 0 without a message;
/// any other panic is reported as usual. Whatever the command had made durable stays so
/// (state is saved before anything is acknowledged or printed as done).
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// A duration option: whole seconds (`15`) or a humantime duration (`15s`, `2m`, `1h 30m`),
/// as durations are written everywhere else (the relay's configuration, `--ttl`, the
/// roster's `cooling_off`).
fn parse_seconds(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    humantime::parse_duration(t)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 15, 15s or 2m"))
}

fn main() -> std::process::ExitCode {
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as usual; a usage error under `--json` is a JSON
        // error line like every other error (exit 2).
        Err(e) => return cli::usage_error(&e, std::env::args_os().any(|a| a == "--json")),
    };
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "sealpost", &mut script);
            cli::print_generated(&script, cli.global.json)
        }
        Command::Man { out } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            cli::man_pages(cmd, out.as_deref(), cli.global.json)
        }
        command => cli::run(cli.global, command),
    }
}
