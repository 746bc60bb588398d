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
  3  wrong passphrase, or the profile is in use by another sealpost process
  4  no profile here, or this device is not enrolled yet
  5  the relay could not be reached (the address tried is printed)
  6  refused by the relay (routing policy, quota, rate limit, enrolment code)
  7  safety-number verification mismatch

Environment:
  SEALPOST_HOME        the profile directory (default: $HOME/.sealpost)
  SEALPOST_PASSPHRASE  the profile passphrase (otherwise asked for without echo)";

#[derive(Parser)]
#[command(
    name = "sealpost",
    version,
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
    /// Seconds to wait for the relay before giving up on a connection.
    #[arg(long, global = true, default_value_t = 15, value_name = "SECONDS")]
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
    },
    /// Show this device: account, role, device id, fingerprint, relay.
    Whoami,
    /// The accounts you can write to, with their verification status.
    Contacts,
    /// Send a message (or, with --file, an attachment).
    Send {
        /// The account to write to.
        account: String,
        /// The message ("-" reads it from standard input); with --file, an optional caption.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file as an attachment (encrypted, streamed, at most 64 MiB).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Fetch new messages, show them (notices apart) and send read receipts.
    Inbox {
        /// Show the whole local history, with delivery and read status of what you sent.
        #[arg(long)]
        all: bool,
        /// Seconds to wait for the relay to hand over the mailbox.
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        wait: u64,
    },
    /// Stay connected and print events as they arrive (Ctrl-C to stop).
    Listen {
        /// Stop after this many seconds.
        #[arg(long = "for", value_name = "SECONDS")]
        for_secs: Option<u64>,
        /// Send read receipts for the messages printed.
        #[arg(long)]
        mark_read: bool,
    },
    /// Show the safety number with an account, or confirm it with --confirm.
    Verify {
        /// The account.
        account: String,
        /// The digits the other person read to you; marks the contact verified if they match.
        #[arg(long, value_name = "DIGITS")]
        confirm: Option<String>,
    },
    /// This account's devices, with fingerprints.
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
        /// Every client account you can reach.
        #[arg(long)]
        all_clients: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::run(cli.global, cli.command)
}
