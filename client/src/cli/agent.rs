//! `sealpost listen` as the profile's agent, the way ssh-agent or signal-cli's daemon
//! work: while it runs it holds the profile (its lock, its unlocked keys, the relay
//! connection), and the other `sealpost` commands run on the same profile are forwarded to
//! it over a Unix socket instead of failing with "profile busy".
//!
//! ```text
//! <home>/agent/        0700, created by `listen` while it holds the profile lock
//! <home>/agent/sock    0600, the socket; only the profile's OS user gets through
//! ```
//!
//! The listener checks every connection's peer uid (SO_PEERCRED) against its own and
//! refuses others; the directory's and socket's modes already keep other users out.
//!
//! Protocol: length-delimited frames ([`LengthDelimitedCodec`], at most
//! [`MAX_AGENT_FRAME`] bytes) carrying one JSON object each. The thin client sends
//! [`ToAgent::Run`] with its command line (as typed: the listener parses it with the same
//! parser), its working directory and whether its standard input is a terminal; the
//! listener answers [`FromAgent::Started`], the command's output lines as they are printed
//! ([`FromAgent::Stdout`], [`FromAgent::Stderr`]: human or JSON, exactly what the command
//! prints when run directly), requests for typed input ([`FromAgent::ReadInput`], answered
//! with [`ToAgent::Input`]: the prompts of `approvals approve` and `device confirm`, a
//! message read from standard input with `send ACCOUNT -`) and finally the exit code
//! ([`FromAgent::Exit`]), which the thin client exits with.
//!
//! The listener runs forwarded commands one at a time, between two slices of its own
//! receive loop, against its own open [`Client`] (lent through [`Lease`]): the same
//! connection, the same in-memory state, so nothing arrives twice and nothing is
//! acknowledged twice. A forwarded command is bounded by its own `--timeout` as when run
//! directly; one that is cut off (timeout, the thin client went away, listen stopped)
//! leaves the listener to read its state again from disk ([`Client::reload`]), which is
//! what a direct command's process exit amounts to.
//!
//! Output is printed through the crate's `println!`-family macros defined here, which
//! send to the forwarded command's client when one is being served (a task-local) and
//! print as usual otherwise.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use sealpost_client::Client;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedMutexGuard, Semaphore};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::error::{CliError, Exit};
use super::output::Out;
use super::{Ctx, RelayBudget};
use crate::{AuditCommand, Command, DeviceCommand, OrgCommand, RosterCommand};

/// `println!` for the CLI: to the forwarded command's client while one is served.
macro_rules! println {
    () => {
        $crate::cli::agent::emit(false, ::std::string::String::from("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::agent::emit(false, ::std::format!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// `print!` for the CLI (see [`println!`]).
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::agent::emit(false, ::std::format!($($arg)*))
    };
}

/// `eprintln!` for the CLI (see [`println!`]).
macro_rules! eprintln {
    () => {
        $crate::cli::agent::emit(true, ::std::string::String::from("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::agent::emit(true, ::std::format!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// `eprint!` for the CLI (see [`println!`]).
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::cli::agent::emit(true, ::std::format!($($arg)*))
    };
}

/// Largest frame on the agent socket, either way (a command line, a piece of output, a
/// typed answer).
pub const MAX_AGENT_FRAME: usize = 1024 * 1024;
/// Output is sent in pieces of at most this many bytes (well under [`MAX_AGENT_FRAME`]
/// once escaped as JSON).
const OUTPUT_PIECE: usize = 128 * 1024;
/// Thin clients connected at once; more are told to try again (exit 9).
pub const MAX_AGENT_CLIENTS: usize = 8;
/// How long a connected thin client has to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// How long a forwarded command waits for an answer typed on its client's terminal.
const INPUT_WAIT: Duration = Duration::from_secs(600);
/// Largest typed input the thin client sends back (a line, or a message from stdin).
const MAX_INPUT: u64 = 512 * 1024;
/// The directory and the socket inside the profile directory.
const AGENT_DIR: &str = "agent";
const SOCKET_NAME: &str = "sock";
/// Version of the socket protocol; a listener of another version refuses.
const PROTOCOL_VERSION: u32 = 1;

/// From the thin client to the listener.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToAgent {
    /// Is a listener there? (Answered with [`FromAgent::Pong`].)
    Ping,
    /// Run this command line.
    Run {
        version: u32,
        /// The arguments after the program name, as typed.
        argv: Vec<String>,
        /// The thin client's working directory (relative paths are relative to it).
        cwd: PathBuf,
        /// The profile directory as the thin client names it (shown by `whoami`).
        home: PathBuf,
        /// Whether the thin client's standard input is a terminal.
        stdin_terminal: bool,
    },
    /// The answer to [`FromAgent::ReadInput`]; `None` at end of input.
    Input { data: Option<String> },
}

/// From the listener to the thin client.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromAgent {
    Pong {
        pid: u32,
    },
    /// The command started: from here on, it may have done something.
    Started,
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// Read standard input: one line (`line`) or up to end of input, at most `max` bytes.
    ReadInput {
        max: u64,
        line: bool,
    },
    Exit {
        code: u8,
    },
}

// ---------------------------------------------------------------------------------------
// Routing: which commands are forwarded
// ---------------------------------------------------------------------------------------

/// What a command needs of the profile.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// It does not use the profile (the organisation's offline store): runs here.
    Local,
    /// It needs the profile to itself (creates, enrols, links or re-pins it, or is
    /// `listen`): refused while a listener runs.
    Exclusive,
    /// It works on the open profile: forwarded to a running listener.
    Forward,
}

/// How `command` is run while a listener holds the profile.
pub fn route(command: &Command) -> Route {
    match command {
        Command::Init | Command::Enroll { .. } | Command::Listen { .. } => Route::Exclusive,
        Command::Audit {
            command: AuditCommand::Follow { .. },
        } => Route::Exclusive,
        Command::Device {
            command: DeviceCommand::Link { .. },
        } => Route::Exclusive,
        Command::Org { command } => match command {
            OrgCommand::Init { .. } | OrgCommand::Fingerprint { .. } => Route::Local,
            OrgCommand::Pin { .. } => Route::Exclusive,
            OrgCommand::Roster { command } => match command {
                RosterCommand::SignGenesis { .. } => Route::Local,
                _ => Route::Forward,
            },
        },
        _ => Route::Forward,
    }
}

/// The command's name for messages.
fn name(command: &Command) -> &'static str {
    match command {
        Command::Init => "init",
        Command::Enroll { .. } => "enroll",
        Command::Listen { .. } => "listen",
        Command::Audit {
            command: AuditCommand::Follow { .. },
        } => "audit follow",
        Command::Device {
            command: DeviceCommand::Link { .. },
        } => "device link",
        Command::Org {
            command: OrgCommand::Pin { .. },
        } => "org pin",
        _ => "this command",
    }
}

fn socket_path(home: &Path) -> PathBuf {
    home.join(AGENT_DIR).join(SOCKET_NAME)
}

fn frames(stream: UnixStream) -> Framed<UnixStream, LengthDelimitedCodec> {
    Framed::new(
        stream,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_AGENT_FRAME)
            .new_codec(),
    )
}

fn encode<T: Serialize>(v: &T) -> Option<bytes::Bytes> {
    serde_json::to_vec(v).ok().map(bytes::Bytes::from)
}

// ---------------------------------------------------------------------------------------
// The thin client
// ---------------------------------------------------------------------------------------

/// Before a command that needs the profile to itself: refused (exit 9) while a listener
/// runs on it.
pub fn refuse_if_listening(home: &Path, command: &Command) -> Result<(), CliError> {
    let Some(pid) = listener_pid(home) else {
        return Ok(());
    };
    let what = name(command);
    let message = if matches!(command, Command::Listen { .. }) {
        format!(
            "`sealpost listen` (pid {pid}) is already running on the profile in {}",
            home.display()
        )
    } else {
        format!(
            "`sealpost {what}` needs the profile in {} to itself, and `sealpost listen` (pid {pid}) is using it",
            home.display()
        )
    };
    Err(CliError::new(Exit::Busy, message)
        .hint("stop `sealpost listen` first (Ctrl-C, or `kill PID`), then run the command again")
        .detail("listener_pid", pid))
}

/// The pid of the listener serving `home`, if one answers on its socket.
fn listener_pid(home: &Path) -> Option<u32> {
    let path = socket_path(home);
    if !path.exists() {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let stream = UnixStream::connect(&path).await.ok()?;
        let mut framed = frames(stream);
        framed.send(encode(&ToAgent::Ping)?).await.ok()?;
        let answer = tokio::time::timeout(REQUEST_WAIT, framed.next())
            .await
            .ok()??
            .ok()?;
        match serde_json::from_slice(&answer).ok()? {
            FromAgent::Pong { pid } => Some(pid),
            _ => None,
        }
    })
}

/// Forward the command line to the listener serving `home`, if one runs; returns the exit
/// code to exit with, or `None` to run the command here (no listener answers: none runs,
/// or its socket is stale).
pub fn forward(home: &Path) -> Option<ExitCode> {
    let path = socket_path(home);
    if !path.exists() {
        return None;
    }
    // Arguments that are not UTF-8 cannot be forwarded: run here (and meet the lock).
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string().ok())
        .collect::<Option<_>>()?;
    let cwd = std::env::current_dir().ok()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async move {
        let stream = UnixStream::connect(&path).await.ok()?;
        let mut framed = frames(stream);
        let run = ToAgent::Run {
            version: PROTOCOL_VERSION,
            argv,
            cwd,
            home: home.to_path_buf(),
            stdin_terminal: std::io::stdin().is_terminal(),
        };
        framed.send(encode(&run)?).await.ok()?;
        let mut started = false;
        loop {
            let frame = match framed.next().await {
                Some(Ok(f)) => f,
                // The listener went away before it started the command (it stopped, or
                // the socket was stale): nothing was done, run the command here.
                _ if !started => return None,
                _ => return Some(lost_listener()),
            };
            let Ok(msg) = serde_json::from_slice::<FromAgent>(&frame) else {
                return Some(lost_listener());
            };
            match msg {
                FromAgent::Started => started = true,
                FromAgent::Stdout { text } => {
                    let mut out = std::io::stdout().lock();
                    if out
                        .write_all(text.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        // The reader went away (`| head -1`): end quietly, as when the
                        // command runs here (see `quiet_on_closed_stdout`).
                        return Some(ExitCode::SUCCESS);
                    }
                }
                FromAgent::Stderr { text } => {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
                }
                FromAgent::ReadInput { max, line } => {
                    let data = read_stdin(max.min(MAX_INPUT), line);
                    framed.send(encode(&ToAgent::Input { data })?).await.ok()?;
                }
                FromAgent::Exit { code } => return Some(ExitCode::from(code)),
                FromAgent::Pong { .. } => return Some(lost_listener()),
            }
        }
    })
}

fn lost_listener() -> ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "error: lost `sealpost listen` while it ran the command; it may or may not have been done\nhint: check with `sealpost inbox --all` or `sealpost approvals list` before running it again"
    );
    ExitCode::from(Exit::Failure as u8)
}

/// Read standard input for the listener: a line, or up to end of input; `None` at end of
/// input (or on a read error).
fn read_stdin(max: u64, line: bool) -> Option<String> {
    let mut buf = Vec::new();
    let stdin = std::io::stdin();
    let mut limited = stdin.lock().take(max);
    let n = if line {
        std::io::BufRead::read_until(&mut limited, b'\n', &mut buf).ok()?
    } else {
        limited.read_to_end(&mut buf).ok()?
    };
    if n == 0 && line {
        return None;
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

// ---------------------------------------------------------------------------------------
// Output and input of a forwarded command
// ---------------------------------------------------------------------------------------

/// The forwarded command being served (a task-local of the listener's task while it runs).
struct Forwarded {
    out: mpsc::UnboundedSender<FromAgent>,
    input: std::sync::Mutex<std::sync::mpsc::Receiver<Option<String>>>,
    stdin_terminal: bool,
}

tokio::task_local! {
    static FORWARDED: Forwarded;
}

/// Print `text` to stdout (or stderr): the forwarded command's client's while one is
/// served, this process's otherwise. Used by the `println!` family of this crate.
pub fn emit(stderr: bool, text: String) {
    let sent = FORWARDED.try_with(|f| {
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(OUTPUT_PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            let text = piece.to_owned();
            // A client that went away drops what is left; the command is cut off.
            let _ = f.out.send(if stderr {
                FromAgent::Stderr { text }
            } else {
                FromAgent::Stdout { text }
            });
            rest = tail;
        }
    });
    if sent.is_err() {
        if stderr {
            ::std::eprint!("{text}");
        } else {
            ::std::print!("{text}");
        }
    }
}

/// Whether the command runs forwarded, for a listener.
pub fn forwarded() -> bool {
    FORWARDED.try_with(|_| ()).is_ok()
}

/// Whether the standard input of the person running the command is a terminal (for a
/// confirmation asked only on a terminal): the thin client's when forwarded.
pub fn stdin_is_terminal() -> bool {
    FORWARDED
        .try_with(|f| f.stdin_terminal)
        .unwrap_or_else(|_| std::io::stdin().is_terminal())
}

/// Read standard input when forwarded: from the thin client (one line, or to end of input,
/// at most `max` bytes). `None` when not forwarded (read it here).
pub fn read_input(max: u64, line: bool) -> Option<Result<Option<String>, CliError>> {
    FORWARDED
        .try_with(|f| {
            let gone = || CliError::failure("the command's terminal went away");
            if f.out.send(FromAgent::ReadInput { max, line }).is_err() {
                return Err(gone());
            }
            let input = f.input.lock().map_err(|_| gone())?;
            // The listener's loop waits for the person to type: blocking its thread is
            // the point (one command at a time); bounded.
            match input.recv_timeout(INPUT_WAIT) {
                Ok(data) => Ok(data),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(CliError::failure(format!(
                    "nothing typed within {} s",
                    INPUT_WAIT.as_secs()
                ))
                .hint("run the command again")),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
            }
        })
        .ok()
}

/// The profile as a command holds it: opened by the command itself, or lent by the
/// listener that serves the forwarded command (and handed back when dropped).
pub enum Lease {
    Own(Box<Client>),
    Lent(OwnedMutexGuard<Client>),
}

impl Lease {
    /// The client, when the command opened it itself.
    pub fn into_owned(self) -> Option<Client> {
        match self {
            Lease::Own(c) => Some(*c),
            Lease::Lent(_) => None,
        }
    }
}

impl std::ops::Deref for Lease {
    type Target = Client;
    fn deref(&self) -> &Client {
        match self {
            Lease::Own(c) => c,
            Lease::Lent(g) => g,
        }
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Client {
        match self {
            Lease::Own(c) => c,
            Lease::Lent(g) => &mut *g,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The listener's side
// ---------------------------------------------------------------------------------------

/// A forwarded command waiting to be run.
pub struct Job {
    argv: Vec<String>,
    cwd: PathBuf,
    home: PathBuf,
    stdin_terminal: bool,
    out: mpsc::UnboundedSender<FromAgent>,
    input: std::sync::mpsc::Receiver<Option<String>>,
}

/// The socket of a running listener; removed when dropped.
pub struct Agent {
    jobs: mpsc::Receiver<Job>,
    path: PathBuf,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Agent {
    /// Create the socket for the profile in `home`. The caller holds the profile's lock,
    /// so a socket file found there is stale (its listener was killed) and replaced.
    pub fn start(home: &Path) -> Result<Agent, CliError> {
        let uid = rustix::process::geteuid().as_raw();
        let dir = home.join(AGENT_DIR);
        let fail = |what: &str, e: std::io::Error| {
            CliError::failure(format!("{what} {}: {e}", dir.display())).hint(
                "or run `sealpost listen --no-socket` (other commands then wait until it stops)",
            )
        };
        match std::fs::symlink_metadata(&dir) {
            Ok(m) => {
                if !m.is_dir() || m.uid() != uid {
                    return Err(CliError::failure(format!(
                        "{} is not a directory of yours; refusing to put the agent socket there",
                        dir.display()
                    ))
                    .hint("remove it, or run `sealpost listen --no-socket`"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| fail("cannot create", e))?;
            }
            Err(e) => return Err(fail("cannot inspect", e)),
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail("cannot restrict", e))?;
        let path = dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "replaced a stale agent socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("cannot remove the stale socket in", e)),
        }
        let listener = UnixListener::bind(&path).map_err(|e| fail("cannot listen in", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail("cannot restrict the socket in", e))?;
        let (tx, jobs) = mpsc::channel(MAX_AGENT_CLIENTS);
        let accept = tokio::spawn(accept_loop(listener, uid, tx));
        Ok(Agent { jobs, path, accept })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A forwarded command waiting, if any.
    pub fn try_job(&mut self) -> Option<Job> {
        self.jobs.try_recv().ok()
    }

    /// The next forwarded command (pending for ever if the socket closed).
    pub async fn next_job(&mut self) -> Job {
        match self.jobs.recv().await {
            Some(j) => j,
            None => std::future::pending().await,
        }
    }
}

async fn accept_loop(listener: UnixListener, uid: u32, jobs: mpsc::Sender<Job>) {
    let slots = Arc::new(Semaphore::new(MAX_AGENT_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "agent socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Only this user: the directory's mode says so, the kernel's word confirms it.
        match stream.peer_cred() {
            Ok(c) if c.uid() == uid => {}
            other => {
                tracing::warn!(peer = ?other.map(|c| c.uid()).ok(), "agent socket: refused a connection from another user");
                continue;
            }
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut framed = frames(stream);
                let _ = send_all(
                    &mut framed,
                    [
                        FromAgent::Stderr {
                            text: format!("error: `sealpost listen` is already serving {MAX_AGENT_CLIENTS} commands\nhint: try again in a moment\n"),
                        },
                        FromAgent::Exit {
                            code: Exit::Busy as u8,
                        },
                    ],
                )
                .await;
            });
            continue;
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            connection(frames(stream), jobs).await;
            drop(slot);
        });
    }
}

async fn send_all(
    framed: &mut Framed<UnixStream, LengthDelimitedCodec>,
    msgs: impl IntoIterator<Item = FromAgent>,
) -> Option<()> {
    for m in msgs {
        framed.send(encode(&m)?).await.ok()?;
    }
    Some(())
}

/// One thin client: its request goes to the listener's loop; its output comes back.
async fn connection(mut framed: Framed<UnixStream, LengthDelimitedCodec>, jobs: mpsc::Sender<Job>) {
    let first = match tokio::time::timeout(REQUEST_WAIT, framed.next()).await {
        Ok(Some(Ok(f))) => f,
        _ => return,
    };
    let (argv, cwd, home, stdin_terminal) = match serde_json::from_slice::<ToAgent>(&first) {
        Ok(ToAgent::Ping) => {
            let _ = send_all(
                &mut framed,
                [FromAgent::Pong {
                    pid: std::process::id(),
                }],
            )
            .await;
            return;
        }
        Ok(ToAgent::Run {
            version,
            argv,
            cwd,
            home,
            stdin_terminal,
        }) if version == PROTOCOL_VERSION => (argv, cwd, home, stdin_terminal),
        _ => {
            let _ = send_all(
                &mut framed,
                [
                    FromAgent::Started,
                    FromAgent::Stderr {
                        text: "error: the running `sealpost listen` does not understand this request (another version?)\nhint: restart `sealpost listen`\n".into(),
                    },
                    FromAgent::Exit {
                        code: Exit::Failure as u8,
                    },
                ],
            )
            .await;
            return;
        }
    };
    // Unbounded: the command prints from synchronous code and must not block or lose a
    // line; what one command prints is bounded by the profile's own bounds (history,
    // contacts, requests), and this task writes it out as it comes.
    let (out, mut out_rx) = mpsc::unbounded_channel();
    let (input_tx, input) = std::sync::mpsc::sync_channel(1);
    let job = Job {
        argv,
        cwd,
        home,
        stdin_terminal,
        out,
        input,
    };
    if jobs.send(job).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            msg = out_rx.recv() => {
                // `None`: the listener dropped the job unstarted (it stopped); the thin
                // client then runs the command itself.
                let Some(msg) = msg else { return };
                let last = matches!(msg, FromAgent::Exit { .. });
                if send_all(&mut framed, [msg]).await.is_none() || last {
                    return;
                }
            }
            frame = framed.next() => {
                match frame.map(|f| f.ok().and_then(|f| serde_json::from_slice::<ToAgent>(&f).ok())) {
                    Some(Some(ToAgent::Input { data })) => {
                        // One answer per request; anything more is dropped.
                        let _ = input_tx.try_send(data);
                    }
                    // The thin client went away (or spoke nonsense): dropping `out_rx`
                    // cuts the command off.
                    _ => return,
                }
            }
        }
    }
}

/// Run a forwarded command against the listener's client (`shared`, which the caller has
/// unlocked), bounded by the command's `--timeout`, the client going away and `stop`.
/// Returns whether the command was cut off half-way (the caller then reloads the client
/// from disk).
pub async fn serve(
    job: Job,
    shared: &Arc<tokio::sync::Mutex<Client>>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Job {
        argv,
        cwd,
        home,
        stdin_terminal,
        out,
        input,
    } = job;
    let _ = out.send(FromAgent::Started);
    let forwarded = Forwarded {
        out: out.clone(),
        input: std::sync::Mutex::new(input),
        stdin_terminal,
    };
    let (code, cut_off) = FORWARDED
        .scope(
            forwarded,
            run_forwarded(argv, &cwd, home, shared, stop, &out),
        )
        .await;
    let _ = out.send(FromAgent::Exit { code });
    cut_off
}

async fn run_forwarded(
    argv: Vec<String>,
    cwd: &Path,
    home: PathBuf,
    shared: &Arc<tokio::sync::Mutex<Client>>,
    stop: &mut watch::Receiver<bool>,
    out: &mpsc::UnboundedSender<FromAgent>,
) -> (u8, bool) {
    let cli = match crate::Cli::try_parse_from(std::iter::once("sealpost".to_owned()).chain(argv)) {
        Ok(c) => c,
        Err(e) => {
            // The thin client parsed the same line; only a different version parses it
            // differently.
            eprint!("{}", e.render());
            return (Exit::Usage as u8, false);
        }
    };
    let json = cli.global.json;
    let report = |e: &CliError| {
        super::report(Out { json }, e);
        e.exit as u8
    };
    if route(&cli.command) != Route::Forward {
        let e = CliError::new(
            Exit::Busy,
            format!(
                "`sealpost {}` needs the profile to itself, and `sealpost listen` is using it",
                name(&cli.command)
            ),
        )
        .hint("stop `sealpost listen` first, then run the command again");
        return (report(&e), false);
    }
    // Relative paths (`send --file`, `download --out`, roster files) mean what they mean
    // where the command was typed. The listener's own paths are absolute, and it runs one
    // command at a time, so changing its directory for the command is safe.
    let here = std::env::current_dir().ok();
    if let Err(e) = std::env::set_current_dir(cwd) {
        let e = CliError::failure(format!(
            "`sealpost listen` cannot work in {}: {e}",
            cwd.display()
        ));
        return (report(&e), false);
    }
    let timeout = Duration::from_secs(cli.global.timeout.max(1));
    let ctx = Ctx {
        home,
        out: Out { json },
        timeout,
        budget: RelayBudget::new(timeout),
        lent: Some(shared.clone()),
    };
    // Boxed: `listen` is itself a command (refused above, but the types recurse).
    let command: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CliError>> + '_>> =
        Box::pin(super::commands::dispatch(&ctx, cli.command));
    /// How a forwarded command ended.
    enum End {
        Done(Result<(), CliError>),
        /// Cut off half-way, with what to say (nothing when its client went away).
        Cut(Option<CliError>),
    }
    let end = tokio::select! {
        biased;
        r = command => End::Done(r),
        () = ctx.budget.expired() => End::Cut(Some(ctx.budget.expired_error())),
        () = out.closed() => End::Cut(None),
        _ = stop.wait_for(|s| *s) => End::Cut(Some(
            CliError::failure("`sealpost listen` stopped while it ran the command; it may or may not have been done")
                .hint("check with `sealpost inbox --all` or `sealpost approvals list` before running it again"),
        )),
    };
    if let Some(here) = here {
        let _ = std::env::set_current_dir(here);
    }
    match end {
        End::Done(Ok(())) => (0, false),
        End::Done(Err(e)) => (report(&e), false),
        End::Cut(Some(e)) => (report(&e), true),
        End::Cut(None) => (Exit::Failure as u8, true),
    }
}
