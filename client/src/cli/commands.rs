//! The commands. Each one opens the profile, does its work through the library, prints,
//! and saves; the logic itself lives in [`sealpost_client::Client`].

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sealpost_client::backoff::Backoff;
use sealpost_client::client::{Direction, EntryKind, HistoryEntry, RelayInfo};
use sealpost_client::notices::{NoticeOutcome, NoticeTarget};
pub(super) use sealpost_client::shutdown::stop_signal;
use sealpost_client::{Client, ClientError, Event};
use sealpost_protocol::content::MAX_TEXT_LEN;
use sealpost_protocol::hexid::Hex32;
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::Role;
use serde_json::json;
use tokio::sync::{watch, OwnedMutexGuard};
use tokio::time::Instant;

use super::agent::{Agent, Job};
use super::error::{CliError, Exit};
use super::output::{format_entry, tagged, to_json, Out};
use super::{
    connect, finish, open_enrolled, open_profile, passphrase, relay_addr, with_spinner, Ctx,
};
use crate::Command;

/// How often `listen` checks for a stop request while connected.
const LISTEN_SLICE: Duration = Duration::from_millis(500);

/// Run one command.
pub async fn dispatch(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    match command {
        Command::Init => init(ctx),
        Command::Enroll {
            relay,
            ca,
            server_name,
            account,
            code,
            org,
        } => {
            enroll(
                ctx,
                &relay,
                &ca,
                server_name,
                &account,
                &code,
                org.as_deref(),
            )
            .await
        }
        Command::Whoami => whoami(ctx).await,
        Command::Contacts => contacts(ctx).await,
        Command::Send {
            account,
            text,
            file,
            instruction,
        } => match (file, instruction) {
            (Some(path), _) => send_file(ctx, &account, &path, text.as_deref().unwrap_or("")).await,
            (None, Some(category)) => {
                send_instruction(ctx, &account, category, text.as_deref().unwrap_or("")).await
            }
            (None, None) => send(ctx, &account, text.as_deref().unwrap_or("")).await,
        },
        Command::Inbox { all, wait } => inbox(ctx, all, Duration::from_secs(wait)).await,
        Command::Listen {
            for_secs,
            mark_read,
            no_socket,
        } => listen(ctx, for_secs.map(Duration::from_secs), mark_read, no_socket).await,
        Command::Verify { account, confirm } => verify(ctx, &account, confirm.as_deref()).await,
        // The same command as `device list`: one output, one JSON shape.
        Command::Devices => super::trust::device_list(ctx, None).await,
        Command::Download { message_id, out } => download(ctx, &message_id, out.as_deref()).await,
        Command::Notice {
            title,
            body,
            to,
            all_clients,
            category,
        } => notice(ctx, &title, &body, &to, all_clients, category).await,
        Command::Org { command } => super::trust::org(ctx, command).await,
        Command::Device { command } => super::trust::device(ctx, command).await,
        Command::Approvals { command } => super::trust::approvals(ctx, command).await,
        Command::Attest { command } => super::trust::attest(ctx, command).await,
        Command::Audit { command } => super::audit::audit(ctx, command).await,
        Command::Security { command } => super::security::run(ctx, command).await,
        // Handled in main.rs before any profile is opened.
        Command::Completions { .. } | Command::Man { .. } => Err(CliError::usage(
            "completions and man pages are printed without a profile",
        )),
    }
}

pub fn account_arg(s: &str) -> Result<AccountId, CliError> {
    AccountId::new(s).map_err(|e| CliError::usage(format!("{s:?} is not a valid account id: {e}")))
}

fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Client) => "client",
        Some(Role::Advisor) => "advisor",
        Some(Role::Staff) => "staff",
        None => "unknown",
    }
}

fn print_events(out: Out, events: &[Event], me: Option<&AccountId>) -> Result<(), CliError> {
    for e in events {
        out.event(e, me)?;
    }
    Ok(())
}

fn init(ctx: &Ctx) -> Result<(), CliError> {
    let pass = passphrase(true)?;
    let client = Client::init(&ctx.home, &pass).map_err(|e| CliError::from_client(e, None))?;
    let fp = client.identity().fingerprint().to_string();
    ctx.out.json_line(json!({
        "event": "initialized",
        "home": ctx.home.display().to_string(),
        "device": client.device_id().to_hex(),
        "fingerprint": fp,
    }));
    ctx.out.say(format!(
        "Created a new device profile in {}.",
        ctx.home.display()
    ));
    ctx.out
        .say(format!("  device id:   {}", client.device_id()));
    ctx.out.say(format!("  fingerprint: {fp}"));
    ctx.out
        .say("Next: enrol this device with the code your firm gave you:");
    ctx.out
        .say("  sealpost enroll --relay ADDR --ca FINGERPRINT --account ID --code CODE");
    Ok(())
}

pub fn parse_relay(relay: &str) -> Result<SocketAddr, CliError> {
    let bad = || {
        CliError::usage(format!("--relay {relay:?} is not an address with a port"))
            .hint("for example --relay 127.0.0.1:7443")
    };
    if let Ok(a) = relay.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut addrs = relay.to_socket_addrs().map_err(|_| bad())?;
    addrs.next().ok_or_else(bad)
}

/// `--org`: the organisation fingerprint, 64 hex digits (spaces and colons ignored).
pub fn parse_org(org: &str) -> Result<String, CliError> {
    match Hex32::parse_grouped(org) {
        Ok(fp) => Ok(fp.to_hex()),
        Err(e) => Err(CliError::usage(format!("--org must be the organisation fingerprint: 64 hex digits ({e})"))
            .hint("`sealpost-relay admin issue-code` prints it beside the CA fingerprint; the firm gets it from `sealpost org init`")),
    }
}

pub fn parse_ca(ca: &str) -> Result<String, CliError> {
    match Hex32::parse_grouped(ca) {
        Ok(fp) => Ok(fp.to_hex()),
        Err(e) => Err(CliError::usage(format!(
            "--ca must be the relay's CA fingerprint: 64 hex digits ({e})"
        ))
        .hint(
            "the operator gets it with `sealpost-relay admin ca-fingerprint` or `admin issue-code`",
        )),
    }
}

async fn enroll(
    ctx: &Ctx,
    relay: &str,
    ca: &str,
    server_name: String,
    account: &str,
    code: &str,
    org: Option<&str>,
) -> Result<(), CliError> {
    let addr = parse_relay(relay)?;
    let ca_fingerprint = parse_ca(ca)?;
    let org_fingerprint = org.map(parse_org).transpose()?;
    let account = account_arg(account)?;
    let mut client = open_profile(ctx)?;
    if let Some(existing) = client.account() {
        return Err(CliError::failure(format!(
            "this device is already enrolled as {existing} at {}",
            relay_addr(&client)
        ))
        .hint("use another --home for another account"));
    }
    let at = addr.to_string();
    ctx.budget.set_relay(&at);
    let info = RelayInfo {
        addr: at.clone(),
        server_name,
        ca_fingerprint,
        org_fingerprint: org_fingerprint.clone(),
    };
    let attempt = tokio::time::timeout(ctx.timeout, client.enroll(info, &account, code));
    let role = match with_spinner(ctx.out, format!("enrolling at {at}"), attempt).await {
        Ok(Ok(role)) => role,
        Ok(Err(e)) => return Err(CliError::from_client(e, Some(&at))),
        Err(_) => {
            return Err(CliError::unreachable(
                &at,
                format!("no answer within {} s", ctx.timeout.as_secs()),
            ))
        }
    };
    let fp = client.identity().fingerprint().to_string();
    finish(&mut client).await?;
    ctx.out.json_line(json!({
        "event": "enrolled",
        "account": account.as_str(),
        "role": role,
        "device": client.device_id().to_hex(),
        "fingerprint": fp,
        "relay": at,
        "org_fingerprint": org_fingerprint,
    }));
    ctx.out.say(format!(
        "Enrolled this device as {account} ({}) at {at}.",
        role_name(Some(role))
    ));
    ctx.out.say(format!("  fingerprint: {fp}"));
    match &org_fingerprint {
        Some(o) => ctx.out.say(format!("  organisation (pinned): {o}")),
        None => ctx.out.say("  no organisation pinned: notices, rosters and approvals cannot be verified on this device"),
    }
    say_archive(ctx, &client);
    ctx.out.say("Next: `sealpost contacts` lists whom you can write to; `sealpost verify ACCOUNT` compares safety numbers.");
    Ok(())
}

/// The line every command that shows a contact prints when no organisation is pinned.
pub const TOFU_NOTE: &str = "trust on first use: no organisation pinned (a contact's first devices are taken as the relay serves them; compare safety numbers with `sealpost verify`)";

/// The firm's archive as JSON (`null`: conversations are not recorded).
pub fn archive_json(client: &Client) -> serde_json::Value {
    match client.archive_view() {
        None => serde_json::Value::Null,
        Some(v) => json!({
            "recorded": true,
            "account": v.account.as_str(),
            "fingerprint": v.fingerprint,
            "disclosure": v.disclosure,
            "unreachable": v.unreachable,
            "queued": v.queued,
        }),
    }
}

/// Tell the user, wherever a conversation is shown, that the firm records it (§22):
/// the disclosure and the archive's fingerprint (a JSON line `recorded` with `--json`).
pub fn say_archive(ctx: &Ctx, client: &Client) {
    let Some(v) = client.archive_view() else {
        return;
    };
    ctx.out
        .json_line(json!({"event": "recorded", "archive": archive_json(client)}));
    ctx.out.say(format!(
        "recorded: {} (the firm's archive, fingerprint {})",
        sealpost_client::display::line(&v.disclosure),
        v.fingerprint
    ));
    if v.queued > 0 {
        ctx.out.say(format!(
            "  {} archive cop{} wait on this device for the firm's archive",
            v.queued,
            if v.queued == 1 { "y" } else { "ies" }
        ));
    }
}

/// Say [`TOFU_NOTE`] if `client` trusts on first use.
pub fn say_tofu(ctx: &Ctx, client: &Client) {
    if client.trust_on_first_use() {
        ctx.out.say(TOFU_NOTE);
    }
}

async fn whoami(ctx: &Ctx) -> Result<(), CliError> {
    let mut client = open_profile(ctx)?;
    // With an organisation pinned, where the firm's verification of this account stands
    // (best effort: the rest is local and shown even if the relay cannot be reached).
    let attestation = if client.account().is_some() && client.relay().is_some() {
        match super::trust::attest_status_line(ctx, &mut client).await {
            Ok(v) => Some(v),
            Err(e) => Some((
                json!({"state": "unknown", "error": e.message}),
                format!("verification: unknown ({})", e.message),
            )),
        }
    } else {
        None
    };
    let fp = client.identity().fingerprint().to_string();
    let identity = sealpost_client::org::identity_hex(client.identity());
    let relay = client.relay().map(|r| json!({"addr": r.addr, "server_name": r.server_name, "ca_fingerprint": r.ca_fingerprint, "org_fingerprint": r.org_fingerprint}));
    // The transparency log, as of the roster this device verified last (local).
    let (transparency, transparency_line) = match client.transparency_policy() {
        None => (
            json!({"configured": false}),
            "transparency: the roster names no transparency log".to_owned(),
        ),
        Some(p) => {
            let held = client.checkpoint_size();
            (
                json!({"configured": true, "checkpoint_size": held, "witness_threshold": p.witness_threshold}),
                format!(
                    "transparency: checked in the relay's log (checkpoint of {held} leaves held; {} witness cosignature(s) required)",
                    p.witness_threshold
                ),
            )
        }
    };
    ctx.out.json_line(json!({
        "event": "whoami",
        "home": ctx.home.display().to_string(),
        "enrolled": client.account().is_some(),
        "account": client.account().map(AccountId::as_str),
        "role": client.role(),
        "device": client.device_id().to_hex(),
        "fingerprint": fp,
        "identity": identity,
        "relay": relay,
        "attestation": attestation.as_ref().map(|(j, _)| j.clone()),
        "transparency": transparency,
        "archive": archive_json(&client),
    }));
    match client.account() {
        Some(a) => ctx
            .out
            .say(format!("account:     {a} ({})", role_name(client.role()))),
        None => ctx
            .out
            .say("account:     (not enrolled yet: run `sealpost enroll`)"),
    }
    ctx.out.say(format!("device id:   {}", client.device_id()));
    ctx.out.say(format!("fingerprint: {fp}"));
    ctx.out.say(format!("identity:    {identity}"));
    if let Some(r) = client.relay() {
        ctx.out
            .say(format!("relay:       {} ({})", r.addr, r.server_name));
        if let Some(o) = &r.org_fingerprint {
            ctx.out.say(format!("org:         {o}"));
        }
    }
    ctx.out.say(format!("profile:     {}", ctx.home.display()));
    if let Some((_, line)) = attestation {
        ctx.out.say(line);
    }
    if client
        .relay()
        .and_then(|r| r.org_fingerprint.as_ref())
        .is_some()
    {
        ctx.out.say(transparency_line);
    }
    if let Some(v) = client.archive_view() {
        ctx.out.say(format!(
            "archive:     recorded by the firm's archive {} ({}): {}",
            v.account,
            v.fingerprint,
            sealpost_client::display::line(&v.disclosure)
        ));
    }
    Ok(())
}

async fn contacts(ctx: &Ctx) -> Result<(), CliError> {
    let mut client = open_enrolled(ctx).await?;
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    let reachable = client
        .reachable()
        .await
        .map_err(|e| CliError::from_client(e, Some(&at)))?;
    finish(&mut client).await?;
    let reachable: BTreeSet<AccountId> = reachable.into_iter().map(|(a, _)| a).collect();
    let me = client.account().cloned();
    say_tofu(ctx, &client);
    say_archive(ctx, &client);
    let tofu = client.trust_on_first_use();
    let list: Vec<_> = client
        .contacts()
        .filter(|c| Some(&c.account) != me.as_ref())
        .collect();
    if list.is_empty() {
        ctx.out
            .say("No contacts yet: ask your firm to assign you to an advisor.");
    } else {
        ctx.out.say(format!(
            "{:<32} {:<8} {:<10} status",
            "account", "role", "devices"
        ));
    }
    for c in list {
        let reach = reachable.contains(&c.account);
        let verified = c.verified.is_some();
        ctx.out.json_line(json!({
            "event": "contact",
            "account": c.account.as_str(),
            "role": c.role,
            "reachable": reach,
            "verified": verified,
            "devices": c.devices.len(),
            "trust_on_first_use": tofu,
        }));
        let mut status = if verified {
            "verified".to_owned()
        } else {
            format!("not verified (sealpost verify {})", c.account)
        };
        if !reach {
            status.push_str(", not reachable now");
        }
        let devices = if c.devices.is_empty() {
            "-".to_owned()
        } else {
            c.devices.len().to_string()
        };
        ctx.out.say(format!(
            "{:<32} {:<8} {:<10} {status}",
            c.account.as_str(),
            role_name(c.role),
            devices
        ));
    }
    Ok(())
}

fn read_stdin_text() -> Result<String, CliError> {
    // Forwarded to `sealpost listen`: the standard input of the command.
    if let Some(typed) = super::agent::read_input(MAX_TEXT_LEN as u64 + 1, false) {
        return Ok(typed?.unwrap_or_default().trim_end_matches('\n').to_owned());
    }
    let mut buf = String::new();
    std::io::stdin()
        .take(MAX_TEXT_LEN as u64 + 1)
        .read_to_string(&mut buf)
        .map_err(|e| CliError::failure(format!("reading the message from standard input: {e}")))?;
    Ok(buf.trim_end_matches('\n').to_owned())
}

/// The text argument of `send` (`-`: standard input), refused when empty or longer than
/// [`MAX_TEXT_LEN`]; `what` names it in the error.
fn text_arg(text: &str, what: &str) -> Result<String, CliError> {
    let text = if text == "-" {
        read_stdin_text()?
    } else {
        text.to_owned()
    };
    if text.trim().is_empty() {
        return Err(CliError::usage(format!("the {what} is empty")));
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(CliError::usage(format!(
            "the {what} is {} bytes; at most {MAX_TEXT_LEN} fit",
            text.len()
        )));
    }
    Ok(text)
}

async fn send(ctx: &Ctx, to: &str, text: &str) -> Result<(), CliError> {
    let to = account_arg(to)?;
    let text = text_arg(text, "message")?;
    let mut client = open_enrolled(ctx).await?;
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    say_tofu(ctx, &client);
    let result = client.send_text(&to, &text).await;
    finish(&mut client).await?;
    let report = result.map_err(|e| CliError::from_client(e, Some(&at)))?;
    let me = client.account().cloned();
    if !ctx.out.json {
        print_events(ctx.out, &report.events, me.as_ref())?;
    }
    // Under the roster the message went under (sending refreshes it).
    say_archive(ctx, &client);
    ctx.out.json_line(tagged("sent", &report)?);
    ctx.out.say(format!(
        "Sent to {to} ({} device{}{}).",
        report.devices,
        if report.devices == 1 { "" } else { "s" },
        if report.own_devices > 0 {
            format!(", copied to {} of your other devices", report.own_devices)
        } else {
            String::new()
        }
    ));
    Ok(())
}

/// `send --instruction CATEGORY`: the text goes as an instruction (a sensitive kind).
async fn send_instruction(
    ctx: &Ctx,
    to: &str,
    category: super::InstructionArg,
    text: &str,
) -> Result<(), CliError> {
    let to = account_arg(to)?;
    let text = text_arg(text, "instruction")?;
    let category = category.to_protocol();
    let mut client = open_enrolled(ctx).await?;
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    let result = client.send_instruction(&to, category, &text).await;
    finish(&mut client).await?;
    let report = result.map_err(|e| CliError::from_client(e, Some(&at)))?;
    let me = client.account().cloned();
    if !ctx.out.json {
        print_events(ctx.out, &report.events, me.as_ref())?;
    }
    let mut line = tagged("sent", &report)?;
    if let Some(obj) = line.as_object_mut() {
        obj.insert("instruction".into(), json!(category.name()));
    }
    ctx.out.json_line(line);
    ctx.out.say(format!(
        "Sent {} instruction to {to} ({} device{}).",
        category.name(),
        report.devices,
        if report.devices == 1 { "" } else { "s" }
    ));
    Ok(())
}

async fn send_file(ctx: &Ctx, to: &str, path: &Path, caption: &str) -> Result<(), CliError> {
    let to = account_arg(to)?;
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(CliError::usage(format!("{} is not a file", path.display())));
    }
    if meta.len() > sealpost_protocol::attachment::MAX_ATTACHMENT_LEN {
        return Err(CliError::usage(format!(
            "{} is {} bytes; attachments are at most {} bytes",
            path.display(),
            meta.len(),
            sealpost_protocol::attachment::MAX_ATTACHMENT_LEN
        )));
    }
    let mut client = open_enrolled(ctx).await?;
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    let bar = super::progress_bar(ctx.out, format!("sending {}", path.display()), meta.len());
    let result = client
        .send_file(&to, path, caption, |done, _total| {
            // Bytes moving is the relay answering: the budget counts from the last move.
            ctx.budget.progress();
            if let Some(b) = &bar {
                b.set_position(done);
            }
        })
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    finish(&mut client).await?;
    let report = result.map_err(|e| CliError::from_client(e, Some(&at)))?;
    let me = client.account().cloned();
    if !ctx.out.json {
        print_events(ctx.out, &report.events, me.as_ref())?;
    }
    let mut line = tagged("sent", &report)?;
    if let (Some(obj), Some(info)) = (line.as_object_mut(), client.attachment(&report.message_id)) {
        obj.insert(
            "attachment".into(),
            serde_json::to_value(info).map_err(|e| CliError::failure(e.to_string()))?,
        );
    }
    ctx.out.json_line(line);
    ctx.out.say(format!(
        "Sent {} ({} bytes, encrypted) to {to} ({} device{}).",
        path.display(),
        meta.len(),
        report.devices,
        if report.devices == 1 { "" } else { "s" }
    ));
    Ok(())
}

async fn download(ctx: &Ctx, message_id: &str, out: Option<&Path>) -> Result<(), CliError> {
    let id = sealpost_protocol::MessageId::from_hex(message_id.trim()).map_err(|e| {
        CliError::usage(format!(
            "the message id must be 32 hex digits ({e}; see `sealpost inbox --all --json`)"
        ))
    })?;
    let mut client = open_enrolled(ctx).await?;
    let info = client.attachment(&id).ok_or_else(|| {
        CliError::failure(format!(
            "message {message_id} has no attachment on this device"
        ))
    })?;
    // Only the final path component of the sender's name is used, never a path.
    let default_name = Path::new(&info.file_name)
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_else(|| std::ffi::OsString::from("attachment.bin"));
    let dest = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(default_name));
    if dest.exists() {
        return Err(CliError::usage(format!(
            "{} already exists; choose another --out",
            dest.display()
        )));
    }
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    let bar = super::progress_bar(
        ctx.out,
        format!(
            "fetching {}",
            sealpost_client::display::line(&info.file_name)
        ),
        info.size,
    );
    let result = client
        .download_attachment(&id, &dest, |done, _| {
            ctx.budget.progress();
            if let Some(b) = &bar {
                b.set_position(done);
            }
        })
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    finish(&mut client).await?;
    let info = result.map_err(|e| CliError::from_client(e, Some(&at)))?;
    let mut line = tagged("downloaded", &info)?;
    if let Some(obj) = line.as_object_mut() {
        obj.insert(
            "path".into(),
            serde_json::Value::String(dest.display().to_string()),
        );
    }
    ctx.out.json_line(line);
    ctx.out.say(format!(
        "Saved {} ({} bytes, SHA-256 {} verified).",
        sealpost_client::display::line(&dest.display().to_string()),
        info.size,
        info.sha256
    ));
    Ok(())
}

async fn inbox(ctx: &Ctx, all: bool, wait: Duration) -> Result<(), CliError> {
    let mut client = open_enrolled(ctx).await?;
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    let me = client.account().cloned();
    say_tofu(ctx, &client);
    let received = client.receive(true, wait).await;
    let events = match received {
        Ok(ev) => ev,
        Err(e) => {
            let _ = finish(&mut client).await;
            return Err(CliError::from_client(e, Some(&at)));
        }
    };
    // Device changes and receipts first (warnings loud), then the messages themselves.
    let others: Vec<Event> = events
        .into_iter()
        .filter(|e| {
            !matches!(
                e,
                Event::Message { .. } | Event::Notice { .. } | Event::Instruction { .. }
            )
        })
        .collect();
    print_events(ctx.out, &others, me.as_ref())?;
    // Above the conversation, under the roster receiving verified it against.
    say_archive(ctx, &client);

    let unread: Vec<HistoryEntry> = client
        .history()
        .filter(|e| e.direction == Direction::In && !e.seen_locally)
        .cloned()
        .collect();
    let shown: Vec<HistoryEntry> = if all {
        client.history().cloned().collect()
    } else {
        unread.clone()
    };
    let (texts, rest): (Vec<&HistoryEntry>, Vec<&HistoryEntry>) =
        shown.iter().partition(|e| e.kind == EntryKind::Text);
    let (instructions, notices): (Vec<&HistoryEntry>, Vec<&HistoryEntry>) = rest
        .into_iter()
        .partition(|e| e.kind == EntryKind::Instruction);
    if ctx.out.json {
        for e in texts
            .iter()
            .chain(instructions.iter())
            .chain(notices.iter())
        {
            let line = if all {
                json!({"event": "history", "entry": to_json(e)?})
            } else {
                match e.kind {
                    EntryKind::Text => to_json(&Event::Message {
                        entry: (*e).clone(),
                    })?,
                    EntryKind::Notice => to_json(&Event::Notice {
                        entry: (*e).clone(),
                    })?,
                    EntryKind::Instruction => to_json(&Event::Instruction {
                        entry: (*e).clone(),
                    })?,
                }
            };
            ctx.out.json_line(line);
        }
    } else {
        let what = if all { "" } else { " new" };
        if texts.is_empty() && notices.is_empty() && instructions.is_empty() {
            ctx.out.say(if all {
                "No messages yet."
            } else {
                "No new messages."
            });
        }
        if !texts.is_empty() {
            ctx.out.say(format!("Messages ({}{what})", texts.len()));
            for e in &texts {
                ctx.out.say(format!("  {}", format_entry(e)));
            }
        }
        if !instructions.is_empty() {
            if !texts.is_empty() {
                ctx.out.say("");
            }
            ctx.out
                .say(format!("Instructions ({}{what})", instructions.len()));
            for e in &instructions {
                ctx.out.say(format!("  {}", format_entry(e)));
            }
        }
        if !notices.is_empty() {
            if !texts.is_empty() || !instructions.is_empty() {
                ctx.out.say("");
            }
            ctx.out.say(format!("Notices ({}{what})", notices.len()));
            for e in &notices {
                ctx.out.say(format!("  {}", format_entry(e)));
            }
        }
    }
    let marked = client.mark_read().await;
    let finished = finish(&mut client).await;
    let marked = marked.map_err(|e| CliError::from_client(e, Some(&at)))?;
    finished?;
    let new_texts = unread.iter().filter(|e| e.kind == EntryKind::Text).count();
    let new_instructions = unread
        .iter()
        .filter(|e| e.kind == EntryKind::Instruction)
        .count();
    ctx.out.json_line(json!({
        "event": "inbox",
        "new_messages": new_texts,
        "new_instructions": new_instructions,
        "new_notices": unread.len() - new_texts - new_instructions,
        "marked_read": marked,
    }));
    if marked > 0 {
        ctx.out
            .note(format!("Marked {marked} as read; read receipts sent."));
    }
    Ok(())
}

/// Why `listen` stopped.
enum Stop {
    Signal,
    Time,
}

/// How a pause of `listen` ended.
enum Paused {
    Stop(Stop),
    /// A forwarded command arrived.
    Job(Job),
    Elapsed,
}

/// Sleep until `until`, unless a stop request, the deadline or a forwarded command comes
/// first.
async fn pause(
    until: Instant,
    stop: &mut watch::Receiver<bool>,
    deadline: Option<Instant>,
    agent: &mut Option<Agent>,
) -> Paused {
    let end = deadline.map_or(until, |dl| dl.min(until));
    tokio::select! {
        _ = stop.wait_for(|s| *s) => Paused::Stop(Stop::Signal),
        job = async { match agent { Some(a) => a.next_job().await, None => std::future::pending().await } } => Paused::Job(job),
        _ = tokio::time::sleep_until(end) => {
            if deadline.is_some_and(|dl| Instant::now() >= dl) { Paused::Stop(Stop::Time) } else { Paused::Elapsed }
        }
    }
}

/// Run a forwarded command against `listen`'s client: lent to it, and read again from
/// disk if the command was cut off half-way ([`super::agent::serve`]).
async fn serve_job(
    client: OwnedMutexGuard<Client>,
    job: Job,
    stop: &mut watch::Receiver<bool>,
) -> Result<OwnedMutexGuard<Client>, CliError> {
    let shared = OwnedMutexGuard::mutex(&client).clone();
    drop(client);
    let cut_off = super::agent::serve(job, &shared, stop).await;
    let mut client = shared.lock_owned().await;
    if cut_off {
        client
            .reload()
            .map_err(|e| CliError::from_client(e, None))?;
    }
    Ok(client)
}

async fn listen(
    ctx: &Ctx,
    for_time: Option<Duration>,
    mark_read: bool,
    no_socket: bool,
) -> Result<(), CliError> {
    let client = open_enrolled(ctx)
        .await?
        .into_owned()
        .ok_or_else(|| CliError::failure("`listen` cannot run inside `listen`"))?;
    // Runs until stopped; each connection attempt is bounded by --timeout below.
    ctx.budget.unbounded();
    // Lent to forwarded commands, one at a time, between slices of listening.
    let mut client = Arc::new(tokio::sync::Mutex::new(client)).lock_owned().await;
    let mut agent = if no_socket {
        None
    } else {
        Some(Agent::start(&ctx.home)?)
    };
    let mut stop = stop_signal();
    let deadline = for_time.map(|d| Instant::now() + d);
    let at = relay_addr(&client);
    let me = client.account().cloned();
    let who = me.as_ref().map(AccountId::to_string).unwrap_or_default();
    let mut connected = false;
    let mut ever_connected = false;
    // Pauses between reconnection attempts: exponential with jitter, 500 ms to 30 s.
    let mut backoff = Backoff::reconnect();
    if let Some(a) = &agent {
        ctx.out.note(format!(
            "Other sealpost commands on this profile run through this listener while it runs ({}).",
            a.path().display()
        ));
    }
    let reason = 'listening: loop {
        if *stop.borrow() {
            break Stop::Signal;
        }
        if deadline.is_some_and(|dl| Instant::now() >= dl) {
            break Stop::Time;
        }
        // A forwarded command, between two slices of listening.
        if let Some(job) = agent.as_mut().and_then(Agent::try_job) {
            client = serve_job(client, job, &mut stop).await?;
            match (connected, client.is_connected()) {
                // The command found the relay that this loop was waiting for.
                (false, true) => {
                    connected = true;
                    backoff.reset();
                    ctx.out
                        .json_line(json!({"event": "connected", "relay": at, "account": who}));
                    ctx.out.note(format!("Reconnected to {at}."));
                    ever_connected = true;
                }
                (true, false) => {
                    client.disconnect();
                    connected = false;
                    ctx.out.json_line(json!({"event": "disconnected", "relay": at, "error": "the connection closed"}));
                    ctx.out.note(format!(
                        "connection to {at} lost (the connection closed); reconnecting"
                    ));
                }
                _ => {}
            }
            continue;
        }
        if !connected {
            let attempt = tokio::time::timeout(ctx.timeout, client.connect());
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.wait_for(|s| *s) => break Stop::Signal,
                _ = async { match deadline { Some(dl) => tokio::time::sleep_until(dl).await, None => std::future::pending().await } } => break Stop::Time,
            };
            match result {
                Ok(Ok(())) => {
                    connected = true;
                    backoff.reset();
                    ctx.out
                        .json_line(json!({"event": "connected", "relay": at, "account": who}));
                    if ever_connected {
                        ctx.out.note(format!("Reconnected to {at}."));
                    } else {
                        ctx.out
                            .note(format!("Listening as {who} on {at}. Press Ctrl-C to stop."));
                    }
                    ever_connected = true;
                }
                Ok(Err(ClientError::Net(
                    e @ (sealpost_client::net::NetError::Refused { .. }
                    | sealpost_client::net::NetError::UntrustedRelay(_)),
                ))) => {
                    return Err(CliError::from_client(ClientError::Net(e), Some(&at)));
                }
                Ok(Err(e @ ClientError::State(_))) => {
                    return Err(CliError::from_client(e, Some(&at)))
                }
                other => {
                    client.disconnect();
                    let why = match other {
                        Ok(Err(e)) => CliError::from_client(e, Some(&at)).message,
                        _ => format!("no answer within {} s", ctx.timeout.as_secs()),
                    };
                    let wait = backoff.next_pause();
                    ctx.out.json_line(json!({"event": "reconnecting", "relay": at, "error": why, "retry_in_ms": wait.as_millis() as u64}));
                    ctx.out.note(format!(
                        "relay at {at} unreachable ({why}); retrying in {:.1} s",
                        wait.as_secs_f64()
                    ));
                    let until = Instant::now() + wait;
                    loop {
                        match pause(until, &mut stop, deadline, &mut agent).await {
                            Paused::Stop(s) => break 'listening s,
                            Paused::Job(job) => {
                                client = serve_job(client, job, &mut stop).await?;
                                if client.is_connected() {
                                    break;
                                }
                            }
                            Paused::Elapsed => break,
                        }
                    }
                    if client.is_connected() {
                        connected = true;
                        backoff.reset();
                        ctx.out
                            .json_line(json!({"event": "connected", "relay": at, "account": who}));
                        ctx.out.note(format!("Reconnected to {at}."));
                        ever_connected = true;
                    }
                }
            }
            continue;
        }
        let slice = deadline.map_or(LISTEN_SLICE, |dl| {
            dl.saturating_duration_since(Instant::now())
                .min(LISTEN_SLICE)
        });
        match client.receive(false, slice).await {
            Ok(events) => {
                print_events(ctx.out, &events, me.as_ref())?;
                let any_new = events
                    .iter()
                    .any(|e| matches!(e, Event::Message { .. } | Event::Notice { .. }));
                if mark_read && any_new {
                    if let Err(e) = client.mark_read().await {
                        tracing::debug!(error = %e, "marking read failed");
                    }
                }
            }
            Err(e @ (ClientError::NotConnected | ClientError::Net(_))) => {
                client.disconnect();
                connected = false;
                let why = match e {
                    ClientError::NotConnected => "the connection closed".to_owned(),
                    other => CliError::from_client(other, Some(&at)).message,
                };
                ctx.out
                    .json_line(json!({"event": "disconnected", "relay": at, "error": why}));
                ctx.out
                    .note(format!("connection to {at} lost ({why}); reconnecting"));
            }
            Err(e) => {
                let _ = finish(&mut client).await;
                return Err(CliError::from_client(e, Some(&at)));
            }
        }
    };
    drop(agent);
    finish(&mut client).await?;
    let why = match reason {
        Stop::Signal => "signal",
        Stop::Time => "time",
    };
    ctx.out
        .json_line(json!({"event": "stopped", "reason": why}));
    ctx.out.note("Stopped.");
    Ok(())
}

async fn verify(ctx: &Ctx, account: &str, confirm: Option<&str>) -> Result<(), CliError> {
    let account = account_arg(account)?;
    if let Some(d) = confirm {
        if d.chars().any(|c| !c.is_whitespace() && !c.is_ascii_digit()) {
            return Err(CliError::usage(
                "--confirm takes the digits of the safety number (spaces are fine)",
            ));
        }
    }
    let mut client = open_enrolled(ctx).await?;
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    if let Some(digits) = confirm {
        let matched = client.confirm_safety_number(&account, digits).await;
        finish(&mut client).await?;
        if !matched.map_err(|e| CliError::from_client(e, Some(&at)))? {
            return Err(CliError::new(Exit::Mismatch, format!("the safety number with {account} does NOT match; {account} stays unverified"))
                .hint("compare again, in person or on a call you placed yourself; if they still differ, someone may be intercepting: contact your firm"));
        }
        ctx.out
            .json_line(json!({"event": "verified", "account": account.as_str(), "verified": true}));
        ctx.out.say(format!(
            "The safety numbers match: {account} is now verified."
        ));
        return Ok(());
    }
    let sn = client.safety_number(&account).await;
    finish(&mut client).await?;
    let sn = sn.map_err(|e| CliError::from_client(e, Some(&at)))?;
    let verified = client.is_verified(&account);
    ctx.out.json_line(json!({
        "event": "safety_number",
        "account": account.as_str(),
        "digits": sn.digits(),
        "grouped": sn.grouped(),
        "verified": verified,
    }));
    if !ctx.out.json {
        let grouped = sn.grouped();
        let words: Vec<&str> = grouped.split(' ').collect();
        println!("Safety number with {account}:");
        println!();
        for row in words.chunks(4) {
            println!("    {}", row.join("  "));
        }
        println!();
        println!("Read these digits to {account} on a call or in person; they see the same number on their side.");
        if verified {
            println!("{account} is verified at this number.");
        } else {
            println!("When the digits they read to you match, record it with:");
            println!("    sealpost verify {account} --confirm \"DIGITS THEY READ\"");
        }
    }
    Ok(())
}

async fn notice(
    ctx: &Ctx,
    title: &str,
    body: &str,
    to: &[String],
    all_clients: bool,
    category: super::trust::Category,
) -> Result<(), CliError> {
    let recipients: Vec<AccountId> = to
        .iter()
        .map(|s| account_arg(s))
        .collect::<Result<_, _>>()?;
    if title.trim().is_empty() || body.trim().is_empty() {
        return Err(CliError::usage("a notice needs a --title and a --body"));
    }
    let mut client = open_enrolled(ctx).await?;
    if client.role() == Some(Role::Client) {
        return Err(CliError::new(
            Exit::Refused,
            "only staff and advisors can send notices",
        ));
    }
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    let targets: Vec<NoticeTarget> = if all_clients {
        vec![NoticeTarget::AllClients]
    } else {
        recipients.into_iter().map(NoticeTarget::Client).collect()
    };
    let me = client.account().cloned();
    let mut first_error: Option<CliError> = None;
    let mut failures = 0usize;
    let mut attempts = 0usize;
    for target in &targets {
        let label = match target {
            NoticeTarget::Client(a) => a.to_string(),
            NoticeTarget::AllClients => "all clients".to_owned(),
        };
        let outcome = client
            .send_signed_notice(category.to_protocol(), target.clone(), title, body)
            .await;
        for e in client.take_events() {
            ctx.out.event(&e, me.as_ref())?;
        }
        match outcome {
            Ok(NoticeOutcome::Sent {
                notice_id,
                reports,
                failed,
            }) => {
                for report in &reports {
                    attempts += 1;
                    if !ctx.out.json {
                        print_events(ctx.out, &report.events, me.as_ref())?;
                    }
                    let mut line = tagged("notice_sent", report)?;
                    if let Some(obj) = line.as_object_mut() {
                        obj.insert("notice_id".into(), json!(notice_id));
                    }
                    ctx.out.json_line(line);
                    ctx.out.say(format!(
                        "Notice sent to {} ({} device{}), signed by this device.",
                        report.to,
                        report.devices,
                        if report.devices == 1 { "" } else { "s" }
                    ));
                }
                for (r, why) in failed {
                    attempts += 1;
                    failures += 1;
                    ctx.out.json_line(json!({"event": "notice_failed", "to": r.as_str(), "notice_id": notice_id, "error": why}));
                    ctx.out
                        .note(format!("could not send the notice to {r}: {why}"));
                    first_error.get_or_insert(CliError::failure(why));
                }
            }
            Ok(NoticeOutcome::Draft {
                notice_id,
                requests,
            }) => {
                attempts += 1;
                ctx.out.json_line(json!({
                    "event": "notice_draft",
                    "notice_id": notice_id,
                    "to": label,
                    "category": category.to_protocol(),
                    "requests": requests.iter().map(to_json).collect::<Result<Vec<_>, _>>()?,
                }));
                ctx.out.say(format!(
                    "The notice to {label} is a DRAFT: it needs co-signatures before it is sent."
                ));
                for r in &requests {
                    ctx.out.say(format!(
                        "  request {} ({}): {} approval{} from {}; expires {}",
                        r.request_id,
                        r.operation,
                        r.threshold,
                        if r.threshold == 1 { "" } else { "s" },
                        r.roles.join(", "),
                        super::output::time(r.expires_ms)
                    ));
                }
                ctx.out.say("It went, end-to-end encrypted, to every staff member who may co-sign; they review it with");
                ctx.out.say("`sealpost approvals show ID` and approve it. It is sent automatically once they have:");
                ctx.out.say("run `sealpost approvals list` (or keep `sealpost listen` running) to collect their answers.");
            }
            Err(e) => {
                attempts += 1;
                failures += 1;
                let err = CliError::from_client(e, Some(&at));
                ctx.out.json_line(json!({"event": "notice_failed", "to": label, "error": err.message, "exit_code": err.exit as u8}));
                ctx.out.note(format!(
                    "could not send the notice to {label}: {}",
                    err.message
                ));
                first_error.get_or_insert(err);
            }
        }
    }
    finish(&mut client).await?;
    match first_error {
        Some(e) if attempts <= 1 => Err(e),
        Some(e) => Err(CliError {
            message: format!("{failures} of {attempts} notices not sent: {}", e.message),
            ..e
        }),
        None => Ok(()),
    }
}
