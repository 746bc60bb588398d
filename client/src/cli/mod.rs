//! The `sealpost` CLI: argument handling lives in `main.rs`, the commands here.

// First: its `println!`-family macros are used by everything below.
#[macro_use]
pub mod agent;
pub mod audit;
pub mod commands;
pub mod error;
pub mod output;
pub mod security;
pub mod trust;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sealpost_client::Client;
use serde_json::json;
use zeroize::Zeroizing;

use crate::{Command, GlobalArgs};
use error::{CliError, Exit};
use output::Out;

/// `--instruction` of `sealpost send`: what kind of instruction the text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum InstructionArg {
    /// Pay an amount to a third party.
    Payment,
    /// Withdraw funds to your own external account.
    Withdrawal,
    /// Move funds or assets between your accounts or positions.
    Transfer,
    /// Change a standing instruction (a payout address, a beneficiary, a recurring payment).
    StandingInstructionChange,
}

impl InstructionArg {
    /// The protocol's category.
    pub fn to_protocol(self) -> sealpost_protocol::content::InstructionCategory {
        use sealpost_protocol::content::InstructionCategory as C;
        match self {
            Self::Payment => C::Payment,
            Self::Withdrawal => C::Withdrawal,
            Self::Transfer => C::Transfer,
            Self::StandingInstructionChange => C::StandingInstructionChange,
        }
    }
}

/// Everything a command needs besides its own arguments.
pub struct Ctx {
    /// The profile directory.
    pub home: PathBuf,
    /// Output mode.
    pub out: Out,
    /// `--timeout`: the whole command's budget for waiting on the relay.
    pub timeout: Duration,
    /// The deadline that budget sets ([`RelayBudget`]).
    pub budget: RelayBudget,
    /// The open profile of the `sealpost listen` that serves this command when it was
    /// forwarded ([`agent`]); `None`: the command opens the profile itself.
    pub lent: Option<Arc<tokio::sync::Mutex<Client>>>,
}

/// `--timeout` as one deadline for a whole command's waiting on the relay: connecting,
/// reconnecting, retries and every request. [`run`] races the command against it and
/// ends it with exit 5 ([`error::Exit::Unreachable`]) when it passes. Waiting for a
/// person (a new device's confirmation, a code, a recovery's approvals, `listen`) is not
/// waiting on the relay: those flows move the deadline to the end of the slice they wait
/// for ([`RelayBudget::waiting_for_person`]), plus `--timeout` for the relay round-trips
/// inside it, so each round-trip stays bounded.
pub struct RelayBudget {
    timeout: Duration,
    /// The relay's address, once known (for the message).
    relay: std::sync::Mutex<Option<String>>,
    /// `None`: unbounded (a command that runs until stopped).
    deadline: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

impl RelayBudget {
    fn new(timeout: Duration) -> Self {
        let (deadline, _) = tokio::sync::watch::channel(None);
        let b = Self {
            timeout,
            relay: std::sync::Mutex::new(None),
            deadline,
        };
        b.restart();
        b
    }

    /// The relay the command talks to (named when the budget runs out).
    pub fn set_relay(&self, addr: &str) {
        if let Ok(mut r) = self.relay.lock() {
            *r = Some(addr.to_owned());
        }
    }

    /// The error when the budget ran out.
    fn expired_error(&self) -> CliError {
        let detail = format!("no answer within --timeout {} s", self.timeout.as_secs());
        let relay = self.relay.lock().ok().and_then(|r| r.clone());
        match relay {
            Some(addr) => CliError::unreachable(&addr, detail),
            None => CliError::new(error::Exit::Unreachable, format!("the relay gave {detail}")),
        }
        .hint("check that the relay is running and reachable, or give a longer --timeout; nothing the relay had not confirmed was lost: run the command again")
    }

    /// The budget starts again now (after a passphrase prompt: typing is not waiting on
    /// the relay).
    pub fn restart(&self) {
        let at = tokio::time::Instant::now() + self.timeout;
        self.deadline.send_replace(Some(at));
    }

    /// The command waits up to `slice` for a person: the deadline moves to the end of the
    /// slice plus `--timeout` (never earlier than it was).
    pub fn waiting_for_person(&self, slice: Duration) {
        let at = tokio::time::Instant::now() + slice + self.timeout;
        self.deadline.send_modify(|d| {
            if d.is_some_and(|d| d < at) {
                *d = Some(at);
            }
        });
    }

    /// Data moved (an attachment's bytes): the relay is answering, so a long transfer is
    /// not cut off; the budget counts from now (never earlier than it was).
    pub fn progress(&self) {
        self.waiting_for_person(Duration::ZERO);
    }

    /// No deadline any more (`listen`, which runs until stopped and bounds each
    /// connection attempt by `--timeout` itself).
    pub fn unbounded(&self) {
        self.deadline.send_replace(None);
    }

    /// Resolves when the deadline passes.
    async fn expired(&self) {
        let mut rx = self.deadline.subscribe();
        loop {
            let current = *rx.borrow_and_update();
            match current {
                Some(at) if tokio::time::Instant::now() >= at => return,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// Run a parsed command line; returns the process exit code.
pub fn run(global: GlobalArgs, command: Command) -> ExitCode {
    init_tracing(global.verbose);
    let out = Out { json: global.json };
    let result = match home_dir(global.home) {
        // While `sealpost listen` runs on the profile, commands go to it ([`agent`]).
        Ok(home) => match agent::route(&command) {
            agent::Route::Forward => match agent::forward(&home) {
                Some(code) => return code,
                None => Ok(home),
            },
            agent::Route::Exclusive => agent::refuse_if_listening(&home, &command).map(|()| home),
            agent::Route::Local => Ok(home),
        },
        Err(e) => Err(e),
    };
    let result = match result {
        Ok(home) => {
            // `listen` serves commands typed elsewhere (and changes into their
            // directory for them): its own paths must not depend on its directory.
            let home = match &command {
                Command::Listen { .. } => std::path::absolute(&home).unwrap_or(home),
                _ => home,
            };
            let timeout = Duration::from_secs(global.timeout.max(1));
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async {
                    let ctx = Ctx {
                        home,
                        out,
                        timeout,
                        budget: RelayBudget::new(timeout),
                        lent: None,
                    };
                    tokio::select! {
                        biased;
                        r = commands::dispatch(&ctx, command) => r,
                        () = ctx.budget.expired() => Err(ctx.budget.expired_error()),
                    }
                }),
                Err(e) => Err(CliError::failure(format!("cannot start the runtime: {e}"))),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(out, &e);
            ExitCode::from(e.exit as u8)
        }
    }
}

/// A command line clap could not parse (or `--help`/`--version`): printed as clap prints it,
/// except that under `--json` an error is one JSON line on stderr with the kind `usage`.
pub fn usage_error(e: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !json {
        let _ = e.print();
        return if informational && e.kind() != ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(Exit::Usage as u8)
        };
    }
    let rendered = e.render().to_string();
    // The error without the usage and help lines, on one line.
    let message = rendered
        .split("\n\nUsage:")
        .next()
        .unwrap_or("usage error")
        .trim_start_matches("error: ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let v = json!({
        "event": "error",
        "error": message,
        "hint": "run `sealpost --help` or `sealpost COMMAND --help`",
        "kind": Exit::Usage.kind(),
        "exit_code": Exit::Usage as u8,
        "usage": rendered,
    });
    eprintln!("{v}");
    ExitCode::from(Exit::Usage as u8)
}

/// Write generated text (a completion script, a man page) to standard output; a reader
/// that went away ends quietly, as elsewhere.
pub fn print_generated(bytes: &[u8], json: bool) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let e = CliError::failure(format!("cannot write to standard output: {e}"));
            report(Out { json }, &e);
            ExitCode::from(e.exit as u8)
        }
    }
}

/// `sealpost man`: the top page (which lists the commands) to standard output, or with
/// `out` one page per command written into that directory.
pub fn man_pages(cmd: clap::Command, out: Option<&Path>, json: bool) -> ExitCode {
    let result = match out {
        None => {
            let mut page = Vec::new();
            // As `generate_to` does for the pages it writes: no `help` pseudo-command.
            let cmd = cmd.disable_help_subcommand(true);
            match clap_mangen::Man::new(cmd).render(&mut page) {
                Ok(()) => return print_generated(&page, json),
                Err(e) => Err(CliError::failure(format!(
                    "cannot render the manual page: {e}"
                ))),
            }
        }
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map_err(|e| {
                CliError::failure(format!(
                    "cannot write the manual pages into {}: {e}",
                    dir.display()
                ))
            }),
    };
    let out_mode = Out { json };
    match result {
        Ok(()) => {
            let dir = out.map(|d| d.display().to_string()).unwrap_or_default();
            out_mode.json_line(json!({"event": "man_pages_written", "dir": dir}));
            out_mode.note(format!(
                "Wrote the manual pages into {dir} (read one with `man -l {dir}/sealpost.1`)."
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(out_mode, &e);
            ExitCode::from(e.exit as u8)
        }
    }
}

fn report(out: Out, e: &CliError) {
    if out.json {
        let mut v = json!({
            "event": "error",
            "error": e.message,
            "hint": e.hint,
            "kind": e.exit.kind(),
            "exit_code": e.exit as u8,
        });
        if let Some(map) = v.as_object_mut() {
            for (k, d) in &e.details {
                map.entry(k.clone()).or_insert_with(|| d.clone());
            }
        }
        eprintln!("{v}");
    } else {
        eprintln!("error: {}", e.message);
        if let Some(h) = &e.hint {
            eprintln!("hint: {h}");
        }
    }
}

fn init_tracing(verbose: u8) {
    if verbose == 0 {
        return;
    }
    let level = if verbose == 1 { "debug" } else { "trace" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("sealpost={level},sealpost_client={level},warn"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn home_dir(given: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(h) = given {
        return Ok(h);
    }
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h).join(".sealpost")),
        _ => Err(
            CliError::usage("cannot tell where the profile lives: HOME is not set")
                .hint("pass --home DIR or set SEALPOST_HOME"),
        ),
    }
}

/// The passphrase: `SEALPOST_PASSPHRASE`, or a prompt without echo (twice with `confirm`).
pub fn passphrase(confirm: bool) -> Result<Zeroizing<String>, CliError> {
    passphrase_from("SEALPOST_PASSPHRASE", "Passphrase", confirm)
}

/// A passphrase from the environment variable `var`, or a prompt without echo (twice
/// with `confirm`).
pub fn passphrase_from(
    var: &str,
    prompt: &str,
    confirm: bool,
) -> Result<Zeroizing<String>, CliError> {
    if let Some(p) = std::env::var_os(var) {
        return p
            .into_string()
            .map(Zeroizing::new)
            .map_err(|_| CliError::usage(format!("{var} is not valid UTF-8")));
    }
    if !std::io::stdin().is_terminal() && !Path::new("/dev/tty").exists() {
        return Err(no_passphrase(var));
    }
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("{prompt}: ")).map_err(|_| no_passphrase(var))?,
    );
    if confirm {
        let second = Zeroizing::new(
            rpassword::prompt_password(format!("{prompt} again: "))
                .map_err(|_| no_passphrase(var))?,
        );
        if *first != *second {
            return Err(CliError::usage("the two passphrases differ").hint("run the command again"));
        }
    }
    Ok(first)
}

fn no_passphrase(var: &str) -> CliError {
    CliError::usage(format!(
        "no passphrase: standard input is not a terminal and {var} is not set"
    ))
    .hint(format!("set {var}, or run the command in a terminal"))
}

/// Open the profile (asking for the passphrase), without requiring enrolment; or, for a
/// command forwarded to `sealpost listen`, borrow the listener's open profile.
pub fn open_profile(ctx: &Ctx) -> Result<agent::Lease, CliError> {
    if let Some(shared) = &ctx.lent {
        let client = shared
            .clone()
            .try_lock_owned()
            .map_err(|_| CliError::new(Exit::Busy, "the listener's profile is already in use"))?;
        if let Some(r) = client.relay() {
            ctx.budget.set_relay(&r.addr);
        }
        return Ok(agent::Lease::Lent(client));
    }
    if !ctx.home.exists() {
        return Err(CliError::from_client(
            sealpost_client::state::StateError::NoProfile(ctx.home.clone()).into(),
            None,
        ));
    }
    let pass = passphrase(false)?;
    ctx.budget.restart();
    let client = Client::open(&ctx.home, &pass).map_err(|e| CliError::from_client(e, None))?;
    if let Some(r) = client.relay() {
        ctx.budget.set_relay(&r.addr);
    } else if let Some((_, at)) = client.pending_link() {
        ctx.budget.set_relay(at);
    }
    Ok(agent::Lease::Own(Box::new(client)))
}

/// Open the profile and require an enrolled device. A profile whose link request (a
/// new device waiting to join an account, `device link`) was confirmed or recovered while
/// it was offline finishes joining here first.
pub async fn open_enrolled(ctx: &Ctx) -> Result<agent::Lease, CliError> {
    let mut client = open_profile(ctx)?;
    if client.account().is_none() {
        if let Some((account, at)) = client
            .pending_link()
            .map(|(a, at)| (a.clone(), at.to_owned()))
        {
            // One look at the request (a poll, and completing it if it is ready), not a
            // wait: `device link` is the command that waits.
            match client
                .link_progress(ctx.timeout.min(Duration::from_secs(2)))
                .await
            {
                Ok(sealpost_client::trust::LinkProgress::Completed { .. }) => {
                    for e in client.take_events() {
                        ctx.out.event(&e, Some(&account))?;
                    }
                    ctx.out.json_line(json!({
                        "event": "linked",
                        "account": account.as_str(),
                        "device": client.device_id().to_hex(),
                        "relay": at,
                    }));
                    ctx.out.note(format!(
                        "this device's request to join {account} was completed while it was away: it is now a device of {account}"
                    ));
                }
                Ok(sealpost_client::trust::LinkProgress::Offered { code, .. }) => {
                    client.disconnect();
                    return Err(CliError::not_enrolled().hint(format!(
                        "this device asked to join {account} and waits for the confirmation: the code to give is {code}; `sealpost device link --account {account} ...` waits for it"
                    )));
                }
                Ok(sealpost_client::trust::LinkProgress::Waiting) => {
                    client.disconnect();
                    return Err(CliError::not_enrolled().hint(format!(
                        "this device asked to join {account} and waits for the confirmation: run `sealpost device link --account {account} ...` again to see where it stands"
                    )));
                }
                Err(e) => {
                    client.disconnect();
                    return Err(CliError::from_client(e, Some(&at)));
                }
            }
        }
    }
    if client.account().is_none() || client.relay().is_none() {
        return Err(CliError::not_enrolled());
    }
    Ok(client)
}

/// The relay address of an enrolled client, for messages.
pub fn relay_addr(client: &Client) -> String {
    client
        .relay()
        .map(|r| r.addr.clone())
        .unwrap_or_else(|| "(not enrolled)".into())
}

/// A spinner on stderr while `fut` runs, in human mode on a terminal only.
pub async fn with_spinner<F: std::future::Future>(out: Out, message: String, fut: F) -> F::Output {
    if out.json || agent::forwarded() || !std::io::stderr().is_terminal() {
        return fut.await;
    }
    let pb =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
        pb.set_style(style);
    }
    pb.set_message(message);
    pb.enable_steady_tick(Duration::from_millis(100));
    let r = fut.await;
    pb.finish_and_clear();
    r
}

/// A byte progress bar on stderr (human mode on a terminal); `None` otherwise.
pub fn progress_bar(out: Out, message: String, total: u64) -> Option<indicatif::ProgressBar> {
    if out.json || agent::forwarded() || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(message);
    Some(pb)
}

/// Connect and authenticate, bounded by the `--timeout`.
pub async fn connect(ctx: &Ctx, client: &mut Client) -> Result<(), CliError> {
    // A forwarded command uses the listener's connection.
    if agent::forwarded() && client.is_connected() {
        return Ok(());
    }
    let addr = relay_addr(client);
    let attempt = tokio::time::timeout(ctx.timeout, client.connect());
    match with_spinner(ctx.out, format!("connecting to {addr}"), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CliError::from_client(e, Some(&addr))),
        Err(_) => {
            client.disconnect();
            Err(CliError::unreachable(
                &addr,
                format!("no answer within {} s", ctx.timeout.as_secs()),
            ))
        }
    }
}

/// Disconnect politely, give the close a moment to leave, and save.
pub async fn finish(client: &mut Client) -> Result<(), CliError> {
    // A forwarded command leaves the listener's connection open, for the listener.
    if agent::forwarded() {
        return client.persist().map_err(|e| CliError::from_client(e, None));
    }
    client.disconnect();
    // Let the QUIC close frame go out before the runtime stops, so the relay does not
    // keep the connection until its idle timeout.
    tokio::time::sleep(Duration::from_millis(30)).await;
    client.persist().map_err(|e| CliError::from_client(e, None))
}
