//! The README's walk-through, run as written: every ```sh block from "Using Sealpost" to
//! the end of the compliance archive section, in order, through `bash` against the real
//! `sealpost-relay`, `sealpost` and `sealpost-archiver` binaries, with only ports, codes,
//! fingerprints, ids and paths substituted; every ```text block is checked against the output of the command before
//! it (the lines it shows must appear in that order; timestamps, fingerprints and hex ids
//! are masked), and every command must exit 0. A README that drifts from the code fails
//! here.
//!
//! What a reader does by hand and a script cannot see is written in the README as
//! invisible HTML comments just before a block, one per line:
//!
//! - `<!-- readme-test: background "PATTERN" ready "TEXT" -->`: the block's commands that
//!   contain PATTERN run in the background (another terminal); the walk goes on once their
//!   output contains TEXT. They must exit 0 by themselves (or by Ctrl-C at the end, for the
//!   relay). A later command on the same `SEALPOST_HOME` waits for them to finish.
//! - `<!-- readme-test: restart "PATTERN" ready "TEXT" -->`: the same, after stopping the
//!   running background command that contains PATTERN with Ctrl-C (SIGINT; it must exit 0).
//! - `<!-- readme-test: stdin "PATTERN" "LINE"... -->`: what the reader types at the prompts
//!   of the block's commands that contain PATTERN, one line each (placeholders allowed, and
//!   filled in once the value appears, e.g. the code a waiting `device link` shows).
//! - `<!-- readme-test: file NAME -->` / `append NAME` on a ```toml block: the reader saves
//!   (or appends) the block, placeholders filled in, as NAME in the current directory.
//!
//! Placeholders (`<CA>`, `<ORG>`, `<LOG>`, `<request id>`, `<X's code>`, `<X's identity>`,
//! `<link code>`, `<archive device>`) are filled from what earlier commands printed, and so are the README's
//! literal examples of values that differ on every run (the safety number after
//! `verify --confirm`, the attestation code after `attest confirm --code`, the device id
//! after `device revoke`, the relay's address `127.0.0.1:4433` and `/tmp/sealpost-demo`).
//! When a command is refused because a device is still in the roster's cooling-off
//! (exit 6, "on probation ... until ..."), the test waits until then and runs it again,
//! as the README tells the reader to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const RELAY: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");
const CLI: &str = env!("CARGO_BIN_EXE_sealpost-under-test");
const ARCHIVER: &str = env!("CARGO_BIN_EXE_sealpost-archiver-under-test");
/// Upper bound for any one foreground command (and for a stdin value to appear).
const STEP: Duration = Duration::from_secs(60);
/// Upper bound for a background command to print its ready text, or to finish.
const BACKGROUND: Duration = Duration::from_secs(60);
/// The longest cooling-off wait the walk-through may ask for (its roster says 30 s).
const MAX_COOLING_OFF_WAIT: Duration = Duration::from_secs(75);

/// README lines the test does not run, each with the reason. Keep this short.
const SKIPPED: &[(&str, &str)] = &[(
    "cargo build -p sealpost-server -p sealpost-client -p sealpost-archiver",
    "the test runs under cargo, which has built the same binaries from the same sources \
     (the tests package's `*-under-test` bins); the test's checkout has them in target/debug",
)];

// ---------------------------------------------------------------------------------------
// The README's blocks and annotations.

#[derive(Debug, Clone)]
enum Directive {
    Background { pattern: String, ready: String },
    Restart { pattern: String, ready: String },
    Stdin { pattern: String, lines: Vec<String> },
    File(String),
    Append(String),
}

#[derive(Debug)]
struct Block {
    lang: String,
    /// README line number of the opening fence.
    line: usize,
    /// The block's lines, indentation removed.
    body: Vec<String>,
    directives: Vec<Directive>,
}

/// Words and "quoted strings" (no escapes), as the annotations write them.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let w: String = chars.by_ref().take_while(|&c| c != '"').collect();
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    out
}

fn parse_directive(text: &str, line: usize) -> Directive {
    let w = words(text);
    let bad = || panic!("README line {line}: cannot read the annotation {text:?}");
    match w.first().map(String::as_str) {
        Some("background" | "restart") if w.len() == 4 && w[2] == "ready" => {
            let (pattern, ready) = (w[1].clone(), w[3].clone());
            if w[0] == "background" {
                Directive::Background { pattern, ready }
            } else {
                Directive::Restart { pattern, ready }
            }
        }
        Some("stdin") if w.len() >= 3 => Directive::Stdin {
            pattern: w[1].clone(),
            lines: w[2..].to_vec(),
        },
        Some("file") if w.len() == 2 => Directive::File(w[1].clone()),
        Some("append") if w.len() == 2 => Directive::Append(w[1].clone()),
        _ => bad(),
    }
}

/// The fenced blocks from "## Using Sealpost" up to the next top-level section after
/// the devices section ("## Crates"), with their annotations.
fn parse_readme(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "## Using Sealpost")
        .expect("README has no \"## Using Sealpost\" section");
    let end = lines[start..]
        .iter()
        .position(|l| l.trim() == "## Crates")
        .map(|i| start + i)
        .expect("README has no \"## Crates\" section after the walk-through");
    let mut blocks = Vec::new();
    let mut pending: Vec<Directive> = Vec::new();
    let mut i = start;
    while i < end {
        let raw = lines[i];
        let t = raw.trim();
        if let Some(rest) = t.strip_prefix("<!-- readme-test:") {
            let inner = rest
                .strip_suffix("-->")
                .unwrap_or_else(|| panic!("README line {}: unterminated annotation", i + 1));
            pending.push(parse_directive(inner, i + 1));
        } else if let Some(lang) = t.strip_prefix("```") {
            let indent = raw.len() - raw.trim_start().len();
            let open = i + 1;
            let mut body = Vec::new();
            i += 1;
            while i < end && lines[i].trim() != "```" {
                let l = lines[i];
                let strip = l.len() - l.trim_start().len();
                body.push(l[strip.min(indent)..].to_string());
                i += 1;
            }
            assert!(i < end, "README line {open}: unterminated code block");
            blocks.push(Block {
                lang: lang.trim().to_string(),
                line: open,
                body,
                directives: std::mem::take(&mut pending),
            });
        } else if !t.is_empty() && !pending.is_empty() {
            panic!(
                "README line {}: an annotation must come right before its code block",
                i + 1
            );
        }
        i += 1;
    }
    blocks
}

/// The commands of a ```sh block: comment-only and blank lines dropped, `\` continuations
/// joined; each with its README line number.
fn commands(block: &Block) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (k, l) in block.body.iter().enumerate() {
        let n = block.line + 1 + k;
        let t = l.trim();
        if cur.is_none() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        let (line, mut text) = cur.take().unwrap_or((n, String::new()));
        if let Some(head) = t.strip_suffix('\\') {
            text.push_str(head);
            text.push(' ');
            cur = Some((line, text));
        } else {
            text.push_str(t);
            out.push((line, text));
        }
    }
    assert!(cur.is_none(), "README line {}: dangling `\\`", block.line);
    out
}

/// `text` without a trailing `# comment` (outside quotes).
fn strip_comment(text: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || b[i - 1].is_ascii_whitespace()) => {
                return text[..i].trim_end();
            }
            _ => {}
        }
    }
    text
}

// ---------------------------------------------------------------------------------------
// Comparing outputs.

/// Replace every match of `tpl` (`d` a digit, `h` a lowercase hex digit, anything else
/// itself) not touching other letters or digits with `repl`.
fn mask_template(s: &str, tpl: &str, repl: &str) -> String {
    let b = s.as_bytes();
    let t = tpl.as_bytes();
    let fits = |i: usize| {
        i + t.len() <= b.len()
            && t.iter().zip(&b[i..]).all(|(&p, &c)| match p {
                b'd' => c.is_ascii_digit(),
                b'h' => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
                _ => p == c,
            })
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && b.get(i + t.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric())
    };
    let mut out = String::new();
    let (mut i, mut last) = (0, 0);
    while i < b.len() {
        if s.is_char_boundary(i) && fits(i) {
            out.push_str(&s[last..i]);
            out.push_str(repl);
            i += t.len();
            last = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[last..]);
    out
}

/// Words of 8 or more lowercase hex digits (ids, hashes, identities) as `<hex>`.
fn mask_hex_runs(s: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let hex = word.len() >= 8
            && word
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        out.push_str(if hex { "<hex>" } else { word.as_str() });
        word.clear();
    };
    for c in s.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A line as compared: whitespace collapsed, times, fingerprints and hex ids masked.
fn mask(line: &str) -> String {
    let collapsed = line.split_whitespace().collect::<Vec<_>>().join(" ");
    let fp_tpl = vec!["hhhh"; 16].join(" ");
    let s = mask_template(&collapsed, "dddd-dd-dd dd:dd:dd", "<time>");
    let s = mask_template(&s, &fp_tpl, "<fingerprint>");
    mask_hex_runs(&s)
}

/// The lines of `expected` (a ```text block) must appear in `actual`, in order.
fn check_output(expected: &[String], actual: &str, where_: &str) {
    let want: Vec<String> = expected
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| mask(l))
        .collect();
    let got: Vec<String> = actual.lines().map(mask).collect();
    let mut at = 0;
    for w in &want {
        match got[at..].iter().position(|g| g == w) {
            Some(k) => at += k + 1,
            None => panic!(
                "{where_}: the README shows the line\n    {w}\nbut the command printed (masked):\n{}",
                got.iter()
                    .map(|g| format!("    {g}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Values printed by one command that later ones use.

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Read `output` for values later commands need, into `caps`.
fn capture(output: &str, caps: &mut BTreeMap<String, String>) {
    let mut account: Option<String> = None;
    let mut safety: Vec<String> = Vec::new();
    for line in output.lines() {
        let t = line.trim();
        let toks: Vec<&str> = t.split_whitespace().collect();
        if toks.len() == 4
            && toks
                .iter()
                .all(|w| w.len() == 5 && w.bytes().all(|c| c.is_ascii_digit()))
        {
            safety.extend(toks.iter().map(|s| s.to_string()));
            if safety.len() == 12 {
                caps.insert("safety number".into(), safety.join(" "));
            }
        } else if !t.is_empty() {
            safety.clear();
        }
        let after_colon = t.rsplit_once(": ").map(|(_, v)| v.trim());
        if t.contains("CA fingerprint") {
            if let Some(v) = toks.last().filter(|v| is_hex(v, 64)) {
                caps.insert("CA".into(), v.to_string());
            }
        }
        if t.contains("organisation fingerprint") {
            if let Some(v) = t.split_once(": ").map(|(_, v)| v.replace(' ', "")) {
                if is_hex(&v, 64) {
                    caps.insert("ORG".into(), v);
                }
            }
        }
        // `sealpost-relay audit key`: the log key as a signed-note verifier key,
        // `<origin>+<8 hex>+<base64>`.
        let parts: Vec<&str> = t.split('+').collect();
        if toks.len() == 1
            && parts.len() >= 3
            && is_hex(parts[1], 8)
            && !parts[0].is_empty()
            && t.len() > 60
        {
            caps.insert("LOG".into(), t.to_string());
        }
        if let Some(rest) = t.strip_prefix("enrolment code for ") {
            if let Some((who, code)) = rest.split_once(": ") {
                caps.insert(format!("{who}'s code"), code.trim().to_string());
            }
        }
        if let Some(rest) = t.strip_prefix("account:") {
            account = rest.split_whitespace().next().map(str::to_string);
        }
        // `sealpost-archiver init`: the archive device's identity for the roster.
        if let Some(rest) = t.strip_prefix("device (for the roster's [policy.archive] device):") {
            caps.insert("archive device".into(), rest.trim().to_string());
        }
        if let (Some(rest), Some(who)) = (t.strip_prefix("identity:"), &account) {
            caps.insert(format!("{who}'s identity"), rest.trim().to_string());
        }
        if t.contains("Read this code to the staff member who called you") {
            if let Some(v) = after_colon {
                caps.insert("attestation code".into(), v.to_string());
            }
        }
        if t.contains("Type this code on the existing device")
            || t.contains("Read this code to the staff member recovering your account")
        {
            if let Some(v) = after_colon {
                caps.insert("link code".into(), v.to_string());
            }
        }
        let request = t
            .split_once("Sent for approval as request ")
            .map(|(_, r)| r)
            .or_else(|| t.strip_prefix("request "));
        if let Some(id) = request.and_then(|r| r.split(|c: char| !c.is_ascii_hexdigit()).next()) {
            if is_hex(id, 32) {
                caps.insert("request id".into(), id.to_string());
            }
        }
        if let Some(rest) = t.strip_prefix("Added device ") {
            if let Some(id) = rest.split_whitespace().next().filter(|v| is_hex(v, 32)) {
                caps.insert("new device".into(), id.to_string());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Processes.

struct Output(Arc<Mutex<String>>);

impl Output {
    /// Collect everything `r` produces.
    fn collect(r: impl Read + Send + 'static, into: &Arc<Mutex<String>>) {
        let into = into.clone();
        std::thread::spawn(move || {
            let mut r = r;
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A command running in another terminal. Killed if the test ends early.
struct Background {
    command: String,
    line: usize,
    home: Option<String>,
    child: Child,
    out: Output,
}

/// SIGKILL to `child` and everything it started (its own process group), then reap it.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Background {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

impl Background {
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn must_have_succeeded(&self, status: ExitStatus) {
        // Let the reader threads drain what is left.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            status.success(),
            "README line {}: the background command `{}` ended with {status}:\n{}",
            self.line,
            self.command,
            self.out.text()
        );
    }
}

/// A foreground command's result.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Leading `NAME=value` words of a command line.
fn assignments(cmd: &str) -> Vec<(&str, &str)> {
    cmd.split_whitespace()
        .map_while(|w| {
            let (k, v) = w.split_once('=')?;
            let name_ok = !k.is_empty() && k.bytes().all(|c| c.is_ascii_uppercase() || c == b'_');
            (name_ok && !v.contains(['"', '\''])).then_some((k, v))
        })
        .collect()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The reader's shell: current directory, exported variables, what earlier commands
/// printed, and the other terminals.
struct Walk {
    _dir: tempfile::TempDir,
    demo: PathBuf,
    state: PathBuf,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    relay_addr: String,
    caps: BTreeMap<String, String>,
    background: Vec<Background>,
    started: Instant,
}

impl Walk {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A checkout with the binaries where `cargo build` puts them.
        let checkout = dir.path().join("sealpost");
        let bin = checkout.join("target/debug");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(RELAY, bin.join("sealpost-relay")).unwrap();
        std::os::unix::fs::symlink(CLI, bin.join("sealpost")).unwrap();
        std::os::unix::fs::symlink(ARCHIVER, bin.join("sealpost-archiver")).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let relay_addr = format!("127.0.0.1:{}", free_udp_port());
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        );
        env.insert("HOME".to_string(), home.display().to_string());
        env.insert("LC_ALL".to_string(), "C.UTF-8".to_string());
        // The ports: the relay reads them from its environment, the README's commands
        // get the address substituted.
        env.insert("SEALPOST_RELAY_LISTEN".to_string(), relay_addr.clone());
        env.insert(
            "SEALPOST_RELAY_METRICS".to_string(),
            format!("127.0.0.1:{}", free_tcp_port()),
        );
        Walk {
            demo: dir.path().join("sealpost-demo"),
            state: dir.path().join("shell-state"),
            cwd: checkout,
            env,
            relay_addr,
            caps: BTreeMap::new(),
            background: Vec::new(),
            started: Instant::now(),
            _dir: dir,
        }
    }

    fn log(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Captured values, with those of the background commands (the newest last, and a
    /// link code only from the newest that shows one... or none).
    fn values(&self) -> BTreeMap<String, String> {
        let mut caps = self.caps.clone();
        for bg in &self.background {
            caps.remove("link code");
            capture(&bg.out.text(), &mut caps);
        }
        caps
    }

    /// Fill in `<placeholder>`s; Err(name) for one that has no value (yet).
    fn fill(&self, text: &str) -> Result<String, String> {
        let caps = self.values();
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>').map(|c| open + c) else {
                break;
            };
            let name = &rest[open + 1..close];
            if name.is_empty() || name.contains('<') || name.starts_with(' ') {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
                continue;
            }
            let value = caps.get(name).ok_or_else(|| name.to_string())?;
            out.push_str(&rest[..open]);
            out.push_str(value);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The README's literal examples of per-run values, replaced by this run's.
    fn substitute(&self, line: usize, cmd: &str) -> String {
        let caps = self.values();
        let need = |k: &str| {
            caps.get(k).cloned().unwrap_or_else(|| {
                panic!(
                    "README line {line}: `{cmd}` needs the {k}, which no earlier command printed"
                )
            })
        };
        let mut cmd = strip_comment(cmd)
            .replace("127.0.0.1:4433", &self.relay_addr)
            .replace("/tmp/sealpost-demo", &self.demo.display().to_string());
        // `--confirm "DIGITS"` and `attest confirm ... --code "DIGITS"`: the digits read
        // aloud.
        let quoted_after = |cmd: &str, flag: &str| -> Option<(usize, usize)> {
            let at = cmd.find(flag)? + flag.len();
            let open = at + cmd[at..].find('"')?;
            let close = open + 1 + cmd[open + 1..].find('"')?;
            Some((open, close))
        };
        if let Some((o, c)) = quoted_after(&cmd, "--confirm ") {
            cmd.replace_range(o..=c, &format!("\"{}\"", need("safety number")));
        }
        if cmd.contains("attest confirm") {
            if let Some((o, c)) = quoted_after(&cmd, "--code ") {
                cmd.replace_range(o..=c, &format!("\"{}\"", need("attestation code")));
            }
        }
        if let Some(at) = cmd.find("device revoke ") {
            let start = at + "device revoke ".len();
            let end = cmd[start..].find(' ').map_or(cmd.len(), |e| start + e);
            cmd.replace_range(start..end, &need("new device"));
        }
        self.fill(&cmd).unwrap_or_else(|name| {
            panic!("README line {line}: `{cmd}` needs <{name}>, which no earlier command printed")
        })
    }

    fn bash(&self, script: &str) -> Command {
        let mut c = Command::new("bash");
        // Its own process group, so that a timeout or an early end kills what it started.
        c.process_group(0)
            .arg("-c")
            .arg(script)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(&self.env)
            .env("__SP_STATE", &self.state);
        c
    }

    /// Check the background commands that finished; wait for those that hold `home`.
    fn reap(&mut self, home: Option<&str>) {
        let mut i = 0;
        while i < self.background.len() {
            let bg = &mut self.background[i];
            let status = if home.is_some() && bg.home.as_deref() == home {
                let s = bg.wait_exit(BACKGROUND);
                Some(s.unwrap_or_else(|| {
                    panic!(
                        "README line {}: `{}` did not finish within {BACKGROUND:?}:\n{}",
                        bg.line,
                        bg.command,
                        bg.out.text()
                    )
                }))
            } else {
                bg.child.try_wait().unwrap()
            };
            match status {
                Some(s) => {
                    let bg = self.background.remove(i);
                    bg.must_have_succeeded(s);
                    capture(&bg.out.text(), &mut self.caps);
                    self.caps.remove("link code");
                }
                None => i += 1,
            }
        }
    }

    fn start_background(&mut self, line: usize, cmd: &str, ready: &str) {
        let text = self.substitute(line, cmd);
        let assigned = assignments(&text);
        let home = assigned
            .iter()
            .find(|(k, _)| *k == "SEALPOST_HOME")
            .map(|(_, v)| v.to_string());
        // `exec` after the assignments, so that the process is the command itself.
        let mut tail = text.as_str();
        for _ in &assigned {
            let t = tail.trim_start();
            tail = t.find(char::is_whitespace).map_or("", |e| &t[e..]);
        }
        let head = &text[..text.len() - tail.len()];
        let script = format!("{head} exec {}", tail.trim_start());
        self.log(&format!("line {line}, in the background: {text}"));
        let mut child = self
            .bash(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        Output::collect(child.stdout.take().unwrap(), &out);
        Output::collect(child.stderr.take().unwrap(), &out);
        let mut bg = Background {
            command: text,
            line,
            home,
            child,
            out: Output(out),
        };
        let deadline = Instant::now() + BACKGROUND;
        while !bg.out.text().contains(ready) {
            if let Some(s) = bg.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "README line {line}: `{}` ended ({s}) before printing {ready:?}:\n{}",
                    bg.command,
                    bg.out.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "README line {line}: `{}` did not print {ready:?} within {BACKGROUND:?}:\n{}",
                bg.command,
                bg.out.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.background.push(bg);
    }

    /// Ctrl-C to the background command containing `pattern`; it must exit 0.
    fn interrupt(&mut self, line: usize, pattern: &str) {
        let i = self
            .background
            .iter()
            .position(|b| b.command.contains(pattern))
            .unwrap_or_else(|| {
                panic!("README line {line}: nothing running in the background matches {pattern:?}")
            });
        let mut bg = self.background.remove(i);
        self.log(&format!("Ctrl-C to `{}`", bg.command));
        let sent = Command::new("kill")
            .arg("-INT")
            .arg(bg.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let status = bg.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "`{}` did not stop within 30 s of Ctrl-C:\n{}",
                bg.command,
                bg.out.text()
            )
        });
        bg.must_have_succeeded(status);
    }

    /// Run `text` to completion with `stdin` typed at its prompts; the shell's directory
    /// and exported variables carry over to the next command.
    fn run_once(&mut self, line: usize, text: &str, stdin: Option<&[String]>) -> Ran {
        let script = format!(
            "{text}\n__sp_rc=$?\npwd > \"$__SP_STATE.pwd\" && env -0 > \"$__SP_STATE.env\"\nexit $__sp_rc\n"
        );
        let _ = std::fs::remove_file(self.state.with_extension("pwd"));
        // `device revoke` and `device freeze` ask only a person at a terminal (scripts
        // pass `--yes`): what the reader types reaches them through a pseudo-terminal
        // (util-linux `script`), which merges their stdout and stderr.
        let tty =
            stdin.is_some() && (text.contains("device revoke") || text.contains("device freeze"));
        let mut command = if tty {
            let mut c = self.bash("exec script -qefc 'bash -c \"$__SP_SCRIPT\"' /dev/null");
            c.env("__SP_SCRIPT", &script);
            c
        } else {
            self.bash(&script)
        };
        let mut child = command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        Output::collect(child.stdout.take().unwrap(), &out);
        Output::collect(child.stderr.take().unwrap(), &err);
        let mut input = child.stdin.take();
        let mut to_type: Vec<String> = stdin.map(<[String]>::to_vec).unwrap_or_default();
        to_type.reverse();
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if let Some(next) = to_type.last() {
                // Typed once its value is there (a code appears on another terminal).
                if let Ok(value) = self.fill(next) {
                    let w = input.as_mut().unwrap();
                    let _ = writeln!(w, "{value}");
                    let _ = w.flush();
                    to_type.pop();
                }
            } else if !tty {
                input = None;
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                panic!(
                    "README line {line}: `{text}` did not finish within {STEP:?} (still to type: {to_type:?})\nstdout:\n{}\nstderr:\n{}",
                    out.lock().unwrap(),
                    err.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(input);
        // The readers end with the process's pipes.
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(pwd) = std::fs::read_to_string(self.state.with_extension("pwd")) {
            self.cwd = PathBuf::from(pwd.trim_end());
            let env = std::fs::read(self.state.with_extension("env")).unwrap();
            self.env = env
                .split(|&c| c == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    (!matches!(
                        k,
                        "_" | "SHLVL" | "PWD" | "OLDPWD" | "__SP_STATE" | "__SP_SCRIPT"
                    ))
                    .then(|| (k.to_string(), v.to_string()))
                })
                .collect();
        }
        let mut stdout = out.lock().unwrap().clone();
        let mut stderr = err.lock().unwrap().clone();
        if tty {
            stdout = stdout.replace('\r', "");
            stderr = format!("{stderr}{stdout}");
        }
        Ran {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }

    /// Run one README command; a refusal for a device's cooling-off is waited out and
    /// the command run again, as the README tells the reader.
    fn run(&mut self, line: usize, cmd: &str, stdin: Option<&[String]>) -> Ran {
        let home = assignments(cmd)
            .into_iter()
            .find(|(k, _)| *k == "SEALPOST_HOME")
            .map(|(_, v)| v.to_string());
        self.reap(home.as_deref());
        let text = self.substitute(line, cmd);
        for attempt in 0..3 {
            self.log(&format!("line {line}: {text}"));
            let ran = self.run_once(line, &text, stdin);
            if ran.code == 6 && ran.stderr.contains("on probation") && attempt < 2 {
                let wait = probation_wait(&ran.stderr).unwrap_or_else(|| {
                    panic!(
                        "README line {line}: a probation refusal without a date:\n{}",
                        ran.stderr
                    )
                });
                assert!(
                    wait <= MAX_COOLING_OFF_WAIT,
                    "README line {line}: `{text}` is refused for a cooling-off of {wait:?} more; the walk-through's roster should make that seconds:\n{}",
                    ran.stderr
                );
                self.log(&format!(
                    "  on probation: waiting {:.1}s, as the README says",
                    wait.as_secs_f64()
                ));
                std::thread::sleep(wait);
                continue;
            }
            assert!(
                ran.code == 0,
                "README line {line}: `{text}` exited {}\nstdout:\n{}\nstderr:\n{}",
                ran.code,
                ran.stdout,
                ran.stderr
            );
            capture(&ran.stdout, &mut self.caps);
            capture(&ran.stderr, &mut self.caps);
            return ran;
        }
        unreachable!()
    }
}

/// From "... on probation ... (until 2026-12-07 13:19:29 UTC) ...": how long from now
/// until a second after then.
fn probation_wait(stderr: &str) -> Option<Duration> {
    let at = stderr.find("(until ")? + "(until ".len();
    let stamp = stderr.get(at..at + 19)?;
    let (date, time) = stamp.split_once(' ')?;
    let until = humantime::parse_rfc3339(&format!("{date}T{time}Z")).ok()?;
    let left = until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(left + Duration::from_millis(1500))
}

fn write_block(walk: &Walk, block: &Block, name: &str, append: bool) {
    let text = walk
        .fill(&(block.body.join("\n") + "\n"))
        .unwrap_or_else(|n| {
            panic!(
                "README line {}: the block needs <{n}>, which no earlier command printed",
                block.line
            )
        });
    let path: PathBuf = walk.cwd.join(name);
    walk.log(&format!(
        "line {}: {} {}",
        block.line,
        if append { "append to" } else { "save as" },
        name
    ));
    if append {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("README line {}: {}: {e}", block.line, path.display()));
        write!(f, "\n{text}").unwrap();
    } else {
        std::fs::write(&path, text).unwrap();
    }
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_readme_walkthrough_works_as_written() {
    let blocks = parse_readme(&readme());
    let mut walk = Walk::new();
    let mut last: Option<(usize, String)> = None;
    let mut skipped = Vec::new();
    let mut ran = 0usize;
    for block in &blocks {
        match block.lang.as_str() {
            "sh" => {
                // An annotation that matches none of its block's commands is stale.
                for d in &block.directives {
                    let pattern = match d {
                        Directive::Background { pattern, .. }
                        | Directive::Restart { pattern, .. }
                        | Directive::Stdin { pattern, .. } => pattern,
                        Directive::File(_) | Directive::Append(_) => panic!(
                            "README line {}: `file`/`append` belong on a ```toml block",
                            block.line
                        ),
                    };
                    assert!(
                        commands(block)
                            .iter()
                            .any(|(_, c)| strip_comment(c).contains(pattern.as_str())),
                        "README line {}: the annotation {d:?} matches no command of its block",
                        block.line
                    );
                }
                for (line, cmd) in commands(block) {
                    if let Some((_, why)) = SKIPPED.iter().find(|(s, _)| *s == cmd) {
                        walk.log(&format!("line {line}: skipped `{cmd}`: {why}"));
                        skipped.push(cmd);
                        continue;
                    }
                    let mut background = None;
                    let mut stdin = None;
                    // Annotations match the command, not its comment.
                    let command = strip_comment(&cmd);
                    for d in &block.directives {
                        match d {
                            Directive::Background { pattern, ready }
                                if command.contains(pattern.as_str()) =>
                            {
                                background = Some((ready.clone(), None));
                            }
                            Directive::Restart { pattern, ready }
                                if command.contains(pattern.as_str()) =>
                            {
                                background = Some((ready.clone(), Some(pattern.clone())));
                            }
                            Directive::Stdin { pattern, lines }
                                if command.contains(pattern.as_str()) =>
                            {
                                stdin = Some(lines.clone());
                            }
                            _ => {}
                        }
                    }
                    if let Some((ready, restart)) = background {
                        if let Some(p) = restart {
                            walk.interrupt(line, &p);
                        }
                        walk.start_background(line, &cmd, &ready);
                        last = None;
                    } else {
                        let r = walk.run(line, &cmd, stdin.as_deref());
                        last = Some((line, r.stdout));
                    }
                    ran += 1;
                }
            }
            "text" => {
                let (line, out) = last.as_ref().unwrap_or_else(|| {
                    panic!(
                        "README line {}: a ```text block must follow the command whose output it shows",
                        block.line
                    )
                });
                check_output(
                    &block.body,
                    out,
                    &format!("README line {} (output of line {line})", block.line),
                );
                walk.log(&format!("line {}: output as shown", block.line));
            }
            "toml" => {
                let d = block.directives.first().unwrap_or_else(|| {
                    panic!(
                        "README line {}: a ```toml block needs a `file` or `append` annotation",
                        block.line
                    )
                });
                match d {
                    Directive::File(name) => write_block(&walk, block, name, false),
                    Directive::Append(name) => write_block(&walk, block, name, true),
                    _ => panic!("README line {}: unexpected annotation {d:?}", block.line),
                }
            }
            other => panic!(
                "README line {}: a ```{other} block in the walk-through, which the test cannot run",
                block.line
            ),
        }
    }
    // The README's skipped lines are exactly the named ones (none renamed away).
    assert_eq!(
        skipped.len(),
        SKIPPED.len(),
        "SKIPPED names lines the README no longer has"
    );
    assert!(
        ran > 50,
        "only {ran} README commands ran: did the parser lose blocks?"
    );
    // Every other terminal: waiting commands have finished; the relay stops on Ctrl-C.
    while let Some(i) = walk
        .background
        .iter()
        .position(|b| !b.command.contains("sealpost-relay"))
    {
        let mut bg = walk.background.remove(i);
        let s = bg.wait_exit(BACKGROUND).unwrap_or_else(|| {
            panic!(
                "README line {}: `{}` was still waiting at the end of the walk-through:\n{}",
                bg.line,
                bg.command,
                bg.out.text()
            )
        });
        bg.must_have_succeeded(s);
    }
    walk.interrupt(0, "sealpost-relay");
    walk.log(&format!("{ran} README commands ran"));
}

#[test]
fn masking_keeps_what_the_readme_promises() {
    assert_eq!(
        mask("  [2026-11-25 16:40:17 UTC] you -> alice: Welcome.  [read]"),
        "[<time> UTC] you -> alice: Welcome. [read]"
    );
    assert_eq!(
        mask("quorum reached for request 94fad77a57e146e934b5dec231c0619b (roster_change)"),
        "quorum reached for request <hex> (roster_change)"
    );
    assert_eq!(
        mask("* 1e5c946e432c12b6f2e8780b66d2fba2 83b1 a24e 6c85 020d 9627 d0f1 bc2b 7fce 9c3e 300b 95c8 0bda cfbd 5fc3 ce5e e7db added"),
        "* <hex> <fingerprint> added"
    );
    // Words and counts are compared as they are.
    assert_eq!(mask("Messages (2) deadbeefed"), "Messages (2) <hex>");
    assert_ne!(mask("Messages (2)"), mask("Messages (3)"));
    assert_eq!(
        mask("revoked devices: 2, added"),
        "revoked devices: 2, added"
    );
    assert_eq!(strip_comment("a 'x # y' b   # c"), "a 'x # y' b");
}
