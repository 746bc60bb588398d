//! The trust commands: `org` (root key and roster), `device` (linking, revocation,
//! freezing, recovery), `approvals`, and what notices need from them.
//!
//! The offline `org` commands use [`sealpost_client::org`]; everything that talks to the
//! relay goes through [`sealpost_client::Client`].

use std::io::{BufRead, Read};
use std::path::Path;
use std::time::Duration;

use sealpost_client::approvals::{ApprovalDirection, ApprovalStatus, ApprovalView};
use sealpost_client::client::RelayInfo;
use sealpost_client::clock::now_ms;
use sealpost_client::display;
use sealpost_client::net::NetError;
use sealpost_client::org::{self, OrgStore, RosterSpec};
use sealpost_client::trust::{AccountDevices, DeviceView, LinkProgress, PendingLinkView};
use sealpost_client::{Client, ClientError};
use sealpost_protocol::content::{ApprovalSubject, NoticeText};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{
    DeviceAction, NoticeAudience, NoticeCategory, NoticeRisk, Operation, Roster,
};
use sealpost_protocol::wire::ErrorCode;
use serde_json::json;
use tokio::time::Instant;

use super::commands::{account_arg, parse_ca, parse_org, parse_relay};
use super::error::CliError;
use super::output::{tagged as to_json_tagged, time};
use super::{
    connect, finish, open_enrolled, open_profile, passphrase_from, relay_addr, with_spinner, Ctx,
};
use crate::{ApprovalsCommand, AttestCommand, DeviceCommand, OrgCommand, RosterCommand};

/// The organisation passphrase variable.
const ORG_PASSPHRASE: &str = "SEALPOST_ORG_PASSPHRASE";

/// `--category` of `sealpost notice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Category {
    /// An ordinary notice (signed by the sender alone, unless sent to all clients).
    General,
    /// Payment instructions (high risk: co-signed).
    PaymentInstruction,
    /// Deposit instructions (high risk: co-signed).
    DepositInstruction,
    /// A change of address (high risk: co-signed).
    AddressChange,
    /// A security change (high risk: co-signed).
    SecurityChange,
}

impl Category {
    /// The protocol's category.
    pub fn to_protocol(self) -> NoticeCategory {
        match self {
            Self::General => NoticeCategory::General,
            Self::PaymentInstruction => NoticeCategory::PaymentInstruction,
            Self::DepositInstruction => NoticeCategory::DepositInstruction,
            Self::AddressChange => NoticeCategory::AddressChange,
            Self::SecurityChange => NoticeCategory::SecurityChange,
        }
    }
}

/// `org pin`: pin the organisation on a device enrolled before its relay had one.
async fn org_pin(ctx: &Ctx, fingerprint: &str) -> Result<(), CliError> {
    let fingerprint = parse_org(fingerprint)?;
    let (mut client, at) = begin(ctx).await?;
    let result = client.pin_org(&fingerprint).await.map_err(Flow::from);
    let version = end(ctx, &mut client, &at, result).await?;
    ctx.out.json_line(json!({
        "event": "org_pinned",
        "org_fingerprint": fingerprint,
        "roster_version": version,
    }));
    ctx.out.say(format!(
        "Pinned the organisation {fingerprint} on this device, for good."
    ));
    if version == 0 {
        ctx.out
            .say("  The relay serves no roster yet; it will be verified from this fingerprint.");
    } else {
        ctx.out.say(format!(
            "  The relay's roster (version {version}) verifies from it."
        ));
    }
    Ok(())
}

/// `sealpost org ...`
pub async fn org(ctx: &Ctx, command: OrgCommand) -> Result<(), CliError> {
    match command {
        OrgCommand::Init { dir } => org_init(ctx, &dir),
        OrgCommand::Fingerprint { dir } => org_fingerprint(ctx, &dir),
        OrgCommand::Pin { fingerprint } => org_pin(ctx, &fingerprint).await,
        OrgCommand::Roster { command } => match command {
            RosterCommand::SignGenesis { dir, roster, out } => {
                sign_genesis(ctx, &dir, &roster, &out)
            }
            RosterCommand::Publish { file } => roster_publish(ctx, &file).await,
            RosterCommand::Show { spec } => roster_show(ctx, spec).await,
            RosterCommand::Propose { roster, dry_run } => {
                roster_propose(ctx, &roster, dry_run).await
            }
            RosterCommand::Approve { request_id, yes } => {
                approvals(
                    ctx,
                    ApprovalsCommand::Approve {
                        id: request_id,
                        yes,
                        code: None,
                    },
                )
                .await
            }
        },
    }
}

fn org_init(ctx: &Ctx, dir: &Path) -> Result<(), CliError> {
    if dir.join("state.sealed").exists() {
        return Err(CliError::from_org(org::OrgError::Exists(dir.to_owned())));
    }
    let pass = passphrase_from(ORG_PASSPHRASE, "Organisation passphrase", true)?;
    let mut rng = rand::rngs::OsRng;
    let store = OrgStore::init(dir, &pass, now_ms(), &mut rng).map_err(CliError::from_org)?;
    let fp = store.fingerprint();
    let fp_file = dir.join(org::FINGERPRINT_FILE);
    ctx.out.json_line(json!({
        "event": "org_initialized",
        "dir": dir.display().to_string(),
        "org_fingerprint": fp.to_hex(),
        "fingerprint_file": fp_file.display().to_string(),
    }));
    ctx.out.say(format!(
        "Created the organisation root in {} (encrypted under your passphrase).",
        dir.display()
    ));
    ctx.out.say(format!("  organisation fingerprint: {fp}"));
    ctx.out
        .say(format!("  also written to:          {}", fp_file.display()));
    ctx.out
        .say("Keep this directory offline and backed up; the root key never leaves it.");
    ctx.out.say("Next:");
    ctx.out
        .say("  1. set org_fingerprint in the relay's configuration to the fingerprint above;");
    ctx.out.say("  2. write the roster (staff, roles, device identities from `sealpost whoami --json`, policy)");
    ctx.out.say(format!(
        "     and sign it: sealpost org roster sign-genesis --dir {} --roster roster.toml --out roster-v1.cbor",
        dir.display()
    ));
    ctx.out
        .say("  3. publish it from a staff device: sealpost org roster publish roster-v1.cbor");
    Ok(())
}

fn org_fingerprint(ctx: &Ctx, dir: &Path) -> Result<(), CliError> {
    let fp = org::read_fingerprint(dir).map_err(|e| match e {
        org::OrgError::Io(..) if !dir.join("state.sealed").exists() => {
            CliError::from_org(org::OrgError::NoStore(dir.to_owned()))
        }
        other => CliError::from_org(other),
    })?;
    ctx.out
        .json_line(json!({"event": "org_fingerprint", "org_fingerprint": fp.to_hex()}));
    ctx.out.say(format!("organisation fingerprint: {fp}"));
    Ok(())
}

fn sign_genesis(ctx: &Ctx, dir: &Path, spec_path: &Path, out: &Path) -> Result<(), CliError> {
    // Check the specification before asking for the passphrase.
    let spec = RosterSpec::from_file(spec_path).map_err(CliError::from_org)?;
    let roster = spec.genesis(now_ms()).map_err(CliError::from_org)?;
    if out.exists() {
        return Err(CliError::usage(format!(
            "{} already exists; choose another --out",
            out.display()
        )));
    }
    if !dir.join("state.sealed").exists() {
        return Err(CliError::from_org(org::OrgError::NoStore(dir.to_owned())));
    }
    let pass = passphrase_from(ORG_PASSPHRASE, "Organisation passphrase", false)?;
    let store = OrgStore::open(dir, &pass).map_err(CliError::from_org)?;
    let signed = store.sign_genesis(roster).map_err(CliError::from_org)?;
    org::write_signed_roster(out, &signed).map_err(CliError::from_org)?;
    let fp = store.fingerprint();
    let r = &signed.roster;
    ctx.out.json_line(json!({
        "event": "roster_signed",
        "version": r.version(),
        "hash": hex::encode(r.hash().0),
        "org_fingerprint": fp.to_hex(),
        "staff": roster_staff_json(r),
        "policy": policy_json(r),
        "out": out.display().to_string(),
    }));
    ctx.out.say(format!(
        "Signed roster version {} with the organisation root {fp}.",
        r.version()
    ));
    print_roster_text(ctx, r);
    ctx.out.say(format!("Written to {}.", out.display()));
    ctx.out.say(format!(
        "Next: publish it from a staff device listed in it: sealpost org roster publish {}",
        out.display()
    ));
    Ok(())
}

/// The staff of a roster as JSON.
pub fn roster_staff_json(r: &Roster) -> serde_json::Value {
    serde_json::Value::Array(
        r.staff()
            .iter()
            .map(|m| {
                json!({
                    "account": m.account.as_str(),
                    "role": m.role.name(),
                    "devices": m.devices.iter().map(|d| json!({
                        "device": d.device_id().to_hex(),
                        "fingerprint": d.fingerprint().to_string(),
                        "identity": org::identity_hex(d),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The policy of a roster as JSON.
pub fn policy_json(r: &Roster) -> serde_json::Value {
    let p = r.policy();
    let mut quorums = serde_json::Map::new();
    for op in Operation::ALL {
        let q = p.quorum(op);
        quorums.insert(
            op.name().to_owned(),
            json!({
                "threshold": q.threshold,
                "roles": q.roles.roles().iter().map(|r| r.name()).collect::<Vec<_>>(),
            }),
        );
    }
    json!({
        "quorums": quorums,
        "cooling_off_ms": p.cooling_off_ms,
        "sensitive_kinds": p.sensitive_kinds.iter().map(|k| org::kind_name(*k)).collect::<Vec<_>>(),
    })
}

/// The roster in words.
pub fn print_roster_text(ctx: &Ctx, r: &Roster) {
    ctx.out.say(format!(
        "Roster version {} (issued {}, hash {})",
        r.version(),
        time(r.issued_ms()),
        hex::encode(&r.hash().0[..8])
    ));
    ctx.out.say(format!("  Staff ({}):", r.staff().len()));
    for m in r.staff() {
        ctx.out.say(format!(
            "    {:<28} {:<11} {} device{}",
            m.account.as_str(),
            m.role.name(),
            m.devices.len(),
            if m.devices.len() == 1 { "" } else { "s" }
        ));
        for d in &m.devices {
            ctx.out.say(format!("        {}", d.fingerprint()));
        }
    }
    ctx.out
        .say("  Policy (approvals besides the initiator's own):");
    let p = r.policy();
    for op in Operation::ALL {
        ctx.out.say(format!(
            "    {:<22} {}",
            op.name(),
            org::describe_quorum(p.quorum(op))
        ));
    }
    ctx.out.say(format!(
        "    cooling-off            {}",
        org::describe_ms(p.cooling_off_ms)
    ));
    let kinds: Vec<&str> = p
        .sensitive_kinds
        .iter()
        .map(|k| org::kind_name(*k))
        .collect();
    ctx.out.say(format!(
        "    sensitive kinds        {} (refused from devices on probation)",
        kinds.join(", ")
    ));
}

/// An error inside a flow that must still disconnect and save.
enum Flow {
    Client(ClientError),
    Cli(CliError),
}

impl From<ClientError> for Flow {
    fn from(e: ClientError) -> Self {
        Flow::Client(e)
    }
}

impl From<CliError> for Flow {
    fn from(e: CliError) -> Self {
        Flow::Cli(e)
    }
}

/// Open the enrolled profile and connect; returns the client and the relay address.
async fn begin(ctx: &Ctx) -> Result<(super::agent::Lease, String), CliError> {
    let mut client = open_enrolled(ctx).await?;
    connect(ctx, &mut client).await?;
    let at = relay_addr(&client);
    Ok((client, at))
}

/// Disconnect and save whatever happened, print the events the library raised on the
/// way (untrusted devices, refused logs, approvals...), then report `result`.
async fn end<T>(
    ctx: &Ctx,
    client: &mut Client,
    at: &str,
    result: Result<T, Flow>,
) -> Result<T, CliError> {
    let events = client.take_events();
    let me = client.account().cloned();
    let finished = finish(client).await;
    for e in &events {
        ctx.out.event(e, me.as_ref())?;
    }
    let value = result.map_err(|e| match e {
        Flow::Client(e) => CliError::from_client(e, Some(at)),
        Flow::Cli(e) => e,
    })?;
    finished?;
    Ok(value)
}

/// Fetch what waits at the relay (approval requests and answers arrive as messages; an
/// initiator's operation is carried out once its quorum is in) and print the events.
async fn fetch(ctx: &Ctx, client: &mut Client) -> Result<(), Flow> {
    let me = client.account().cloned();
    // The roster first: requests are checked and shown against it.
    client.roster().await?;
    let events = client.receive(true, Duration::from_secs(5)).await?;
    for e in &events {
        ctx.out.event(e, me.as_ref())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// org roster: show, publish, propose
// ---------------------------------------------------------------------------------------

async fn roster_show(ctx: &Ctx, spec: bool) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result: Result<_, Flow> = async {
        let chain = client.roster().await?.ok_or_else(|| {
            Flow::Cli(
                CliError::failure("the relay serves no organisation roster yet").hint(
                    "the firm signs version 1 offline (`sealpost org roster sign-genesis`) and a staff member publishes it (`sealpost org roster publish roster-v1.cbor`)",
                ),
            )
        })?;
        let head = chain.head().clone();
        let head_ref = chain.head_ref();
        let pinned = chain.pinned().to_hex();
        let approvers: Vec<String> = chain
            .change_proof(head.version())
            .map(|p| p.accounts().iter().map(|a| a.as_str().to_owned()).collect())
            .unwrap_or_default();
        Ok((head, head_ref, pinned, approvers))
    }
    .await;
    let (head, head_ref, pinned, approvers) = end(ctx, &mut client, &at, result).await?;
    if spec {
        let text = RosterSpec::from_roster(&head)
            .to_toml()
            .map_err(CliError::from_org)?;
        ctx.out
            .json_line(json!({"event": "roster_spec", "version": head.version(), "spec": text}));
        if !ctx.out.json {
            println!(
                "# Roster version {} as a specification: edit it and run\n# sealpost org roster propose --roster FILE",
                head.version()
            );
            print!("{text}");
        }
        return Ok(());
    }
    ctx.out.json_line(json!({
        "event": "roster",
        "version": head.version(),
        "hash": hex::encode(head_ref.hash.0),
        "issued_ms": head.issued_ms(),
        "org_fingerprint": pinned,
        "authorized_by": if head.version() == 1 { json!("organisation root") } else { json!(approvers) },
        "staff": roster_staff_json(&head),
        "policy": policy_json(&head),
    }));
    ctx.out.say(format!(
        "Verified from the pinned organisation fingerprint {pinned}."
    ));
    print_roster_text(ctx, &head);
    if head.version() == 1 {
        ctx.out.say("  Signed by the organisation root.");
    } else {
        ctx.out
            .say(format!("  Approved by: {}", approvers.join(", ")));
    }
    Ok(())
}

async fn roster_publish(ctx: &Ctx, file: &Path) -> Result<(), CliError> {
    let signed = org::read_signed_roster(file).map_err(CliError::from_org)?;
    let (mut client, at) = begin(ctx).await?;
    let result = client
        .publish_signed_roster(signed)
        .await
        .map_err(Flow::from);
    let version = end(ctx, &mut client, &at, result).await?;
    ctx.out.json_line(json!({"event": "roster_published", "version": version, "file": file.display().to_string()}));
    ctx.out.say(format!(
        "Published roster version {version}; it verified from the pinned organisation fingerprint."
    ));
    ctx.out
        .say("Every device fetches and verifies it; `sealpost org roster show` shows it.");
    Ok(())
}

async fn roster_propose(ctx: &Ctx, spec_path: &Path, dry_run: bool) -> Result<(), CliError> {
    let spec = RosterSpec::from_file(spec_path).map_err(CliError::from_org)?;
    let (mut client, at) = begin(ctx).await?;
    let result: Result<_, Flow> = async {
        let head = client
            .roster()
            .await?
            .map(|c| c.head().clone())
            .ok_or_else(|| {
                Flow::Cli(CliError::failure("there is no roster to change yet").hint(
                    "version 1 is signed offline with `sealpost org roster sign-genesis` and published with `sealpost org roster publish`",
                ))
            })?;
        let next = spec
            .next_of(&head, now_ms())
            .map_err(|e| Flow::Cli(CliError::from_org(e)))?;
        let diff = org::roster_diff(&head, &next);
        if diff.is_empty() {
            return Err(Flow::Cli(CliError::usage(format!(
                "{} describes roster version {} unchanged; nothing to propose",
                spec_path.display(),
                head.version()
            ))));
        }
        let view = if dry_run {
            None
        } else {
            Some(client.propose_roster(next.clone()).await?)
        };
        Ok((head, next, diff, view))
    }
    .await;
    let (head, next, diff, view) = end(ctx, &mut client, &at, result).await?;
    ctx.out.json_line(json!({
        "event": if view.is_some() { "roster_proposed" } else { "roster_diff" },
        "from_version": head.version(),
        "version": next.version(),
        "hash": hex::encode(next.hash().0),
        "changes": super::output::to_json(&diff)?,
        "request": view.as_ref().map(super::output::to_json).transpose()?,
    }));
    ctx.out.say(format!(
        "Roster version {} -> {}:",
        head.version(),
        next.version()
    ));
    for c in &diff {
        ctx.out.say(format!("  {c}"));
    }
    match view {
        None => ctx.out.say("(dry run: nothing was sent)"),
        Some(v) => {
            ctx.out.say(format!(
                "Sent for approval as request {} (needs {} approval{} from {}; expires {}).",
                v.request_id,
                v.threshold,
                if v.threshold == 1 { "" } else { "s" },
                v.roles.join(", "),
                time(v.expires_ms)
            ));
            ctx.out.say("It is published automatically once the quorum approves: run `sealpost approvals list` (or keep `sealpost listen` running) to collect the answers.");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// device
// ---------------------------------------------------------------------------------------

/// `sealpost device ...`
pub async fn device(ctx: &Ctx, command: DeviceCommand) -> Result<(), CliError> {
    match command {
        DeviceCommand::Link {
            account,
            relay,
            ca,
            org,
            server_name,
            wait,
            restart,
        } => {
            let relay = RelayInfo {
                addr: parse_relay(&relay)?.to_string(),
                server_name,
                ca_fingerprint: parse_ca(&ca)?,
                org_fingerprint: org.as_deref().map(parse_org).transpose()?,
            };
            device_link(
                ctx,
                relay,
                &account_arg(&account)?,
                Duration::from_secs(wait),
                restart,
            )
            .await
        }
        DeviceCommand::Confirm { link, code, wait } => {
            let code = code.as_deref().map(check_code).transpose()?;
            device_confirm(ctx, link.as_deref(), code, Duration::from_secs(wait)).await
        }
        DeviceCommand::Dismiss { link, all } => device_dismiss(ctx, link.as_deref(), all).await,
        DeviceCommand::List { account } => {
            let account = account.as_deref().map(account_arg).transpose()?;
            device_list(ctx, account.as_ref()).await
        }
        DeviceCommand::Revoke {
            device,
            reason,
            yes,
        } => device_revoke(ctx, &device, &reason, yes).await,
        DeviceCommand::Freeze { reason, yes } => device_freeze(ctx, &reason, yes).await,
        DeviceCommand::Recover {
            account,
            link,
            code,
            reason,
            wait,
        } => {
            let code = code.as_deref().map(check_code).transpose()?;
            device_recover(
                ctx,
                &account_arg(&account)?,
                link.as_deref(),
                code,
                &reason,
                Duration::from_secs(wait),
            )
            .await
        }
        DeviceCommand::Unfreeze { account, reason } => {
            device_unfreeze(ctx, &account_arg(&account)?, &reason).await
        }
    }
}

fn check_code(code: &str) -> Result<&str, CliError> {
    let digits = code.chars().filter(|c| !c.is_whitespace()).count();
    if digits != 6
        || code
            .chars()
            .any(|c| !c.is_ascii_digit() && !c.is_whitespace())
    {
        return Err(CliError::usage(
            "--code takes the 6 digits the new device shows",
        ));
    }
    Ok(code)
}

async fn device_link(
    ctx: &Ctx,
    relay: RelayInfo,
    account: &AccountId,
    wait: Duration,
    restart: bool,
) -> Result<(), CliError> {
    let mut client = open_profile(ctx)?;
    if let Some(existing) = client.account() {
        return Err(CliError::failure(format!(
            "this device is already enrolled as {existing} at {}",
            relay_addr(&client)
        ))
        .hint("run `sealpost device link` on the NEW device (a fresh `sealpost init` profile)"));
    }
    let at = relay.addr.clone();
    ctx.budget.set_relay(&at);
    let attempt = tokio::time::timeout(ctx.timeout, async {
        if restart {
            client.link_restart(relay, account).await
        } else {
            client.link_start(relay, account).await
        }
    });
    let ticket = match with_spinner(ctx.out, format!("asking {at} to link"), attempt).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(CliError::from_client(e, Some(&at))),
        Err(_) => {
            return Err(CliError::unreachable(
                &at,
                format!("no answer within {} s", ctx.timeout.as_secs()),
            ))
        }
    };
    ctx.out.json_line(to_json_tagged("link_started", &ticket)?);
    if ticket.resumed {
        ctx.out.say(format!(
            "Resuming this device's request to join {account} (started earlier)."
        ));
    } else {
        ctx.out.say(format!(
            "Asked to join {account} as a new device (request {}, lapses {}).",
            ticket.link_id,
            time(ticket.expires_ms)
        ));
    }
    ctx.out.say(format!(
        "  this device's fingerprint: {}",
        ticket.fingerprint
    ));
    ctx.out.say(format!(
        "On one of {account}'s existing devices, run:  sealpost device confirm"
    ));
    ctx.out
        .say("It shows this device's fingerprint: check that it matches the one above.");
    let deadline = Instant::now() + wait;
    let mut shown: Option<String> = None;
    if let Some((code, action)) = client.link_code() {
        // Signed in an earlier run: show the same code again.
        show_link_code(ctx, &ticket.link_id, &code, &action);
        shown = Some(code);
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            client.disconnect();
            return Err(CliError::failure(format!(
                "no existing device of {account} confirmed this device within {} s",
                wait.as_secs()
            ))
            .hint("the request stays open (this profile keeps it): run `sealpost device link` again later, or any command, and this device finishes joining once an existing device has confirmed it"));
        }
        // Waiting for a person; each relay round-trip inside stays bounded by --timeout
        // (the library reconnects as needed while the request lives).
        let slice = left.min(Duration::from_secs(20));
        ctx.budget.waiting_for_person(slice);
        match client.link_progress(slice).await {
            Ok(LinkProgress::Waiting) => {}
            Ok(LinkProgress::Offered { code, action }) => {
                if shown.as_deref() != Some(code.as_str()) {
                    show_link_code(ctx, &ticket.link_id, &code, &action);
                    shown = Some(code);
                }
            }
            Ok(LinkProgress::Completed { role }) => {
                let fp = client.identity().fingerprint().to_string();
                let events = client.take_events();
                let finished = finish(&mut client).await;
                let me = client.account().cloned();
                for e in &events {
                    ctx.out.event(e, me.as_ref())?;
                }
                finished?;
                ctx.out.json_line(json!({
                    "event": "linked",
                    "account": account.as_str(),
                    "role": role,
                    "device": client.device_id().to_hex(),
                    "fingerprint": fp,
                    "relay": at,
                }));
                ctx.out.say(format!(
                    "Linked: this device is now a device of {account} at {at}."
                ));
                ctx.out.say("It is on probation for the roster's cooling-off window: it can read, but cannot send approvals or instructions yet.");
                return Ok(());
            }
            // The library polls well inside the relay's per-address limit for link
            // requests and waits out a `rate_limited` poll itself (§18.6); another
            // request (signing an offer) may still meet the limit when several devices
            // link from one address: wait as told and go on.
            Err(ClientError::Net(NetError::Refused {
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            })) => {
                let pause =
                    Duration::from_millis(retry_after_ms.unwrap_or(1000).clamp(500, 30_000));
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                client.disconnect();
                return Err(CliError::from_client(e, Some(&at)));
            }
        }
    }
}

fn show_link_code(ctx: &Ctx, link_id: &str, code: &str, action: &str) {
    ctx.out.json_line(json!({
        "event": "link_code",
        "link_id": link_id,
        "code": code,
        "action": action,
    }));
    ctx.out.say("");
    if action == "recover" {
        ctx.out.say(format!(
            "    Read this code to the staff member recovering your account:  {code}"
        ));
    } else {
        ctx.out.say(format!(
            "    Type this code on the existing device:  {code}"
        ));
    }
    ctx.out.say("");
    ctx.out.note("waiting for the confirmation...");
}

/// Pick the pending link: `--link` (a unique prefix is enough), or the only one.
fn pick_link<'a>(
    links: &'a [PendingLinkView],
    wanted: Option<&str>,
    account: &AccountId,
) -> Result<&'a PendingLinkView, CliError> {
    match wanted {
        Some(w) => {
            let w = w.trim().to_ascii_lowercase();
            let matching: Vec<&PendingLinkView> =
                links.iter().filter(|l| l.link_id.starts_with(&w)).collect();
            match matching.as_slice() {
                [one] => Ok(one),
                [] => Err(CliError::failure(format!(
                    "no pending link request {w} for {account}"
                ))
                .hint("it may have lapsed (24 hours) or been completed; run without --link to list the pending ones")),
                _ => Err(CliError::usage(format!(
                    "--link {w} matches several requests; give more digits"
                ))),
            }
        }
        None => match links {
            [one] => Ok(one),
            [] => Err(
                CliError::failure(format!("no device is asking to join {account}"))
                    .hint("start `sealpost device link --account ...` on the new device first"),
            ),
            _ => Err(CliError::usage(format!(
                "{} devices are asking to join {account}; choose one with --link ID",
                links.len()
            ))),
        },
    }
}

/// `device dismiss`: dismiss one pending link request of this account, or all.
async fn device_dismiss(ctx: &Ctx, wanted: Option<&str>, all: bool) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let me = client
        .account()
        .cloned()
        .ok_or_else(CliError::not_enrolled)?;
    let result: Result<Vec<PendingLinkView>, Flow> = async {
        let links = client.pending_links(None).await?;
        let chosen: Vec<PendingLinkView> = if all {
            links
        } else {
            vec![pick_link(&links, wanted, &me)?.clone()]
        };
        for l in &chosen {
            client.dismiss_link(&l.link_id).await?;
        }
        Ok(chosen)
    }
    .await;
    let dismissed = end(ctx, &mut client, &at, result).await?;
    for l in &dismissed {
        ctx.out.json_line(to_json_tagged("link_dismissed", l)?);
        ctx.out.say(format!(
            "Dismissed the link request {} (device {}, {}).",
            l.link_id, l.device, l.fingerprint
        ));
    }
    if dismissed.is_empty() {
        ctx.out.say("No pending link requests.");
    } else {
        ctx.out
            .say("If you did not start them, someone knows your account id: tell your firm.");
    }
    Ok(())
}

fn print_links(ctx: &Ctx, links: &[PendingLinkView]) -> Result<(), CliError> {
    for l in links {
        ctx.out.json_line(to_json_tagged("pending_link", l)?);
    }
    if links.len() > 1 {
        ctx.out.say("Pending link requests:");
        for l in links {
            ctx.out.say(format!(
                "  {}  device {}  {}  (asked {})",
                l.link_id,
                l.device,
                l.fingerprint,
                time(l.created_ms)
            ));
        }
    }
    Ok(())
}

/// Read one line from standard input (bounded); `None` at end of input or if empty.
fn read_line(prompt: &str, out: super::output::Out) -> Result<Option<String>, CliError> {
    if !out.json {
        eprint!("{prompt}");
    }
    let mut line = String::new();
    match super::agent::read_input(1024, true) {
        // Forwarded to `sealpost listen`: typed on the terminal of the command.
        Some(typed) => line = typed?.unwrap_or_default(),
        None => {
            std::io::stdin()
                .lock()
                .take(1024)
                .read_line(&mut line)
                .map_err(|e| CliError::failure(format!("reading standard input: {e}")))?;
        }
    }
    let line = line.trim().to_owned();
    Ok((!line.is_empty()).then_some(line))
}

/// Ask the person at the terminal to type `yes` to `question`; true if they did. The
/// approval of a request (`approvals approve`) and the device commands that cannot be
/// undone by the user (`device revoke`, `device freeze`) ask this way.
fn typed_yes(question: &str, action: &str, out: super::output::Out) -> Result<bool, CliError> {
    let answer = read_line(&format!("\n{question} Type 'yes' to {action}: "), out)?;
    Ok(answer.is_some_and(|a| a.eq_ignore_ascii_case("yes")))
}

/// Before an irreversible device command (`command`, e.g. `device freeze`): without
/// `--yes`, it needs a person at a terminal; without one it is a usage error (exit 2)
/// that names `--yes`, checked before anything is sent.
fn needs_terminal_or_yes(command: &str, yes: bool) -> Result<(), CliError> {
    if yes || super::agent::stdin_is_terminal() {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "`sealpost {command}` asks for confirmation, and standard input is not a terminal"
    ))
    .hint(format!(
        "run it in a terminal, or pass --yes to {command} without asking (scripts)"
    )))
}

/// Ask (unless `yes`) before an irreversible device command; `Err` when not confirmed.
fn confirm_device_command(
    ctx: &Ctx,
    yes: bool,
    question: &str,
    action: &str,
    refused: &str,
) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    // Typing is waiting for a person, not for the relay.
    ctx.budget.unbounded();
    let confirmed = typed_yes(question, action, ctx.out)?;
    ctx.budget.restart();
    if confirmed {
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "{refused}: you did not type 'yes'"
        )))
    }
}

/// Read the code from standard input (one line; spaces ignored).
fn read_code(out: super::output::Out, from: &str) -> Result<String, CliError> {
    let line = read_line(
        &format!("Type the 6-digit code {from} (Enter to cancel): "),
        out,
    )?;
    match line {
        Some(l) => Ok(l.chars().filter(|c| !c.is_whitespace()).collect()),
        None => Err(
            CliError::failure("cancelled: no code typed; nothing was added")
                .hint("run the command again once the new device shows its code"),
        ),
    }
}

fn show_link(ctx: &Ctx, link: &PendingLinkView, recovery: bool) {
    if recovery {
        ctx.out.say(format!(
            "A new device asks to join {} (to RECOVER the account):",
            link.account
        ));
    } else {
        ctx.out.say(format!(
            "A NEW DEVICE asks to join your account {}:",
            link.account
        ));
    }
    ctx.out.say(format!("  device id:   {}", link.device));
    ctx.out.say(format!("  fingerprint: {}", link.fingerprint));
    ctx.out
        .say(format!("  asked at:    {}", time(link.created_ms)));
}

async fn device_confirm(
    ctx: &Ctx,
    wanted: Option<&str>,
    code: Option<&str>,
    wait: Duration,
) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let me = client
        .account()
        .cloned()
        .ok_or_else(CliError::not_enrolled)?;
    let result: Result<DeviceView, Flow> = async {
        let links = client.pending_links(None).await?;
        print_links(ctx, &links)?;
        let link = pick_link(&links, wanted, &me)?.clone();
        show_link(ctx, &link, false);
        let typed = match code {
            // Scripts: the offer was made earlier (by this device); the code came from it.
            Some(c) => {
                if !link.offered_by_me {
                    return Err(Flow::Cli(CliError::usage(
                        "--code is only for a link this device has already offered: run `sealpost device confirm` without it (it offers, then asks for the code)",
                    )));
                }
                c.to_owned()
            }
            None => {
                ctx.out.say("Check that this fingerprint is the one the new device prints. If you did not start");
                ctx.out.say(format!("this yourself, do not confirm: press Enter, then run `sealpost device dismiss --link {}`", link.link_id));
                ctx.out.say("and tell your firm (someone knows your account id).");
                let offered = client.offer_link(&link.link_id).await?;
                ctx.out.json_line(to_json_tagged("link_offered", &offered)?);
                ctx.out.note("Offered: the new device now shows a 6-digit code.");
                // Typing the code is waiting for a person, not for the relay.
                ctx.budget.unbounded();
                let typed = read_code(ctx.out, "the new device shows")?;
                ctx.budget.restart();
                typed
            }
        };
        ctx.budget.waiting_for_person(wait);
        match client.confirm_link(&link.link_id, &typed, wait).await {
            Err(ClientError::CodeMismatch) => Err(Flow::Cli(
                CliError::new(
                    super::error::Exit::Mismatch,
                    "the code does NOT match the one the new device shows: no device was added",
                )
                .hint(format!("if you did not start this request yourself, dismiss it with `sealpost device dismiss --link {}` and tell your firm (someone knows your account id); otherwise start again on the new device with `sealpost device link --restart ...` and confirm its new code", link.link_id)),
            )),
            r => Ok(r?),
        }
    }
    .await;
    let added = end(ctx, &mut client, &at, result).await?;
    ctx.out
        .json_line(to_json_tagged("device_confirmed", &added)?);
    ctx.out.say(format!(
        "Added device {} ({}) to {me}.",
        added.device, added.fingerprint
    ));
    ctx.out.say(format!(
        "It is on probation until {}; every other device of {me} has been told.",
        time(added.probation_until_ms)
    ));
    Ok(())
}

fn print_devices(ctx: &Ctx, d: &AccountDevices) -> Result<(), CliError> {
    ctx.out.json_line(to_json_tagged("devices", d)?);
    ctx.out.say(format!(
        "Devices of {} (from its signed device log, {} entr{}){}:",
        d.account,
        d.log_entries,
        if d.log_entries == 1 { "y" } else { "ies" },
        if d.frozen { " -- ACCOUNT FROZEN" } else { "" }
    ));
    for v in &d.devices {
        let probation = if v.on_probation {
            format!("  ON PROBATION until {}", time(v.probation_until_ms))
        } else {
            String::new()
        };
        ctx.out.say(format!(
            "  {} {}  {}  added {}{probation}",
            if v.this_device { "*" } else { " " },
            v.device,
            v.fingerprint,
            time(v.added_ms)
        ));
    }
    if !d.revoked.is_empty() {
        ctx.out
            .say(format!("  revoked devices: {}", d.revoked.len()));
    }
    if d.devices.iter().any(|v| v.this_device) {
        ctx.out.say("(* = this device)");
    }
    if d.frozen {
        ctx.out.say("The account is frozen: staff must unfreeze it (`sealpost device unfreeze`, approved by a quorum).");
    }
    Ok(())
}

/// `sealpost device list` (and `sealpost devices`): an account's devices from its verified
/// log, as one `devices` JSON line.
pub async fn device_list(ctx: &Ctx, account: Option<&AccountId>) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result = match account {
        Some(a) => client.account_devices(a).await,
        None => client.devices().await,
    }
    .map_err(Flow::from);
    let devices = end(ctx, &mut client, &at, result).await?;
    print_devices(ctx, &devices)
}

async fn device_revoke(ctx: &Ctx, wanted: &str, reason: &str, yes: bool) -> Result<(), CliError> {
    let wanted = wanted.trim().to_ascii_lowercase();
    if wanted.len() < 4 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CliError::usage(
            "give the device id (32 hex digits, or at least its first 4) from `sealpost device list`",
        ));
    }
    needs_terminal_or_yes("device revoke", yes)?;
    let (mut client, at) = begin(ctx).await?;
    let result: Result<_, Flow> = async {
        let list = client.devices().await?;
        let matching: Vec<DeviceId> = list
            .devices
            .iter()
            .filter(|v| v.device.to_hex().starts_with(&wanted))
            .map(|v| v.device)
            .collect();
        let device = match matching.as_slice() {
            [one] => *one,
            [] => {
                return Err(Flow::Cli(
                    CliError::failure(format!("no active device {wanted} in this account"))
                        .hint("`sealpost device list` shows the active devices"),
                ))
            }
            _ => {
                return Err(Flow::Cli(CliError::usage(format!(
                    "{wanted} matches several devices; give more digits"
                ))))
            }
        };
        if let Some(v) = list.devices.iter().find(|v| v.device == device) {
            ctx.out.say(format!(
                "Revoke device {} ({}) of {}{}? It is removed from the account for good: its",
                v.device,
                v.fingerprint,
                list.account,
                if v.this_device { ", THIS device" } else { "" }
            ));
            ctx.out.say(
                "connections are closed and it cannot be added back (link a new device instead).",
            );
        }
        confirm_device_command(ctx, yes, "Revoke it?", "revoke it", "not revoked")?;
        let after = client.revoke_device(&device, reason).await?;
        Ok((device, after))
    }
    .await;
    let (device, after) = end(ctx, &mut client, &at, result).await?;
    ctx.out
        .json_line(json!({"event": "device_revoked", "device": device.to_hex()}));
    ctx.out.say(format!(
        "Revoked device {device}; the relay closed its connections."
    ));
    print_devices(ctx, &after)
}

async fn device_freeze(ctx: &Ctx, reason: &str, yes: bool) -> Result<(), CliError> {
    needs_terminal_or_yes("device freeze", yes)?;
    let (mut client, at) = begin(ctx).await?;
    let result = async {
        if !yes {
            let me = client
                .account()
                .map(ToString::to_string)
                .unwrap_or_default();
            ctx.out.say(format!("Freeze account {me}? Every device of it still on probation is revoked at once, and"));
            ctx.out.say("approvals, instructions and new devices are refused until a staff quorum unfreezes it.");
            confirm_device_command(ctx, yes, "Freeze it?", "freeze the account", "not frozen")?;
        }
        Ok::<_, Flow>(client.freeze_account(reason).await?)
    }
    .await;
    let after = end(ctx, &mut client, &at, result).await?;
    ctx.out.json_line(json!({
        "event": "frozen",
        "account": after.account.as_str(),
        "revoked": after.revoked.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
    }));
    ctx.out.say(format!("Account {} is FROZEN.", after.account));
    ctx.out.say("Every device still on probation was revoked. Contact your firm through a channel you trust;");
    ctx.out.say(
        "staff unfreeze the account once they have checked it (that needs several approvals).",
    );
    print_devices(ctx, &after)
}

fn print_request_sent(ctx: &Ctx, v: &ApprovalView) -> Result<(), CliError> {
    ctx.out.json_line(to_json_tagged("approval_requested", v)?);
    ctx.out.say(format!(
        "Sent for approval as request {} ({}; needs {} approval{} from {}; expires {}).",
        v.request_id,
        v.operation,
        v.threshold,
        if v.threshold == 1 { "" } else { "s" },
        v.roles.join(", "),
        time(v.expires_ms)
    ));
    ctx.out.say("It is carried out automatically once the quorum approves: run `sealpost approvals list` (or keep `sealpost listen` running) to collect the answers.");
    Ok(())
}

async fn device_recover(
    ctx: &Ctx,
    account: &AccountId,
    wanted: Option<&str>,
    code: Option<&str>,
    reason: &str,
    wait: Duration,
) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result: Result<ApprovalView, Flow> = async {
        let links = client.pending_links(Some(account)).await?;
        print_links(ctx, &links)?;
        let link = pick_link(&links, wanted, account)?.clone();
        show_link(ctx, &link, true);
        let typed = match code {
            Some(c) => {
                if !link.offered_by_me {
                    return Err(Flow::Cli(CliError::usage(
                        "--code is only for a recovery this device has already offered: run `sealpost device recover --account ...` without it first (it offers, then asks for the code)",
                    )));
                }
                c.to_owned()
            }
            None => {
                let offered = client.offer_recovery(account, &link.link_id, reason).await?;
                ctx.out.json_line(to_json_tagged("link_offered", &offered)?);
                ctx.out.say(format!("Offered a recovery of {account} to this device. Its screen now shows a 6-digit code:"));
                ctx.out.say("ask the client to read it to you, on a call YOU placed to the number on file.");
                // Typing the code is waiting for a person, not for the relay.
                ctx.budget.unbounded();
                let typed = read_code(ctx.out, "the client reads to you")?;
                ctx.budget.restart();
                typed
            }
        };
        ctx.budget.waiting_for_person(wait);
        match client.start_recovery(&link.link_id, &typed, wait).await {
            Err(ClientError::CodeMismatch) => Err(Flow::Cli(
                CliError::new(
                    super::error::Exit::Mismatch,
                    format!("the code does NOT match the one the client's new device shows: no recovery of {account} was started"),
                )
                .hint(format!("call the client back on the number on file (place the call yourself); their new device runs `sealpost device link --restart ...` for a new code, then run `sealpost device recover --account {account}` again")),
            )),
            r => Ok(r?),
        }
    }
    .await;
    let view = end(ctx, &mut client, &at, result).await?;
    print_request_sent(ctx, &view)?;
    ctx.out.say(format!(
        "The recovered device will be on probation until the roster's cooling-off has passed after {} (the approvals' expiry: the recovery may be carried out until then).",
        time(view.expires_ms)
    ));
    Ok(())
}

async fn device_unfreeze(ctx: &Ctx, account: &AccountId, reason: &str) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result = client
        .propose_unfreeze(account, reason)
        .await
        .map_err(Flow::from);
    let view = end(ctx, &mut client, &at, result).await?;
    print_request_sent(ctx, &view)
}

// ---------------------------------------------------------------------------------------
// approvals
// ---------------------------------------------------------------------------------------

/// `sealpost approvals ...`
pub async fn approvals(ctx: &Ctx, command: ApprovalsCommand) -> Result<(), CliError> {
    match command {
        ApprovalsCommand::List { all } => approvals_list(ctx, all).await,
        ApprovalsCommand::Show { id } => approvals_show(ctx, &id).await,
        ApprovalsCommand::Approve { id, yes, code } => {
            approvals_decide(ctx, &id, Decision::Approve { yes, code }).await
        }
        ApprovalsCommand::Reject { id, reason } => {
            approvals_decide(ctx, &id, Decision::Reject { reason }).await
        }
        ApprovalsCommand::Cancel { id } => approvals_cancel(ctx, &id).await,
        ApprovalsCommand::Retry { id } => approvals_retry(ctx, &id).await,
    }
}

/// Withdraw one of this device's own requests.
async fn approvals_cancel(ctx: &Ctx, wanted: &str) -> Result<(), CliError> {
    let mut client = open_enrolled(ctx).await?;
    let id = resolve_request(&client, wanted)?;
    let view = client
        .cancel_approval(&id)
        .map_err(|e| CliError::from_client(e, None))?;
    ctx.out.json_line(to_json_tagged("cancelled", &view)?);
    ctx.out.say(format!(
        "Cancelled request {} ({}): answers that still arrive change nothing. The approvers' devices show it until it expires ({}).",
        view.request_id,
        view.operation,
        time(view.expires_ms)
    ));
    Ok(())
}

/// Try one of this device's failed requests again.
async fn approvals_retry(ctx: &Ctx, wanted: &str) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result: Result<ApprovalView, Flow> = async {
        fetch(ctx, &mut client).await?;
        let id = resolve_request(&client, wanted)?;
        let events = client.retry_approval(&id).await?;
        let me = client.account().cloned();
        for e in &events {
            ctx.out.event(e, me.as_ref())?;
        }
        client
            .approval(&id)
            .ok_or_else(|| Flow::Cli(CliError::failure(format!("no approval request {id}"))))
    }
    .await;
    let view = end(ctx, &mut client, &at, result).await?;
    ctx.out.json_line(to_json_tagged("retried", &view)?);
    let state = match view.status {
        ApprovalStatus::Completed => "carried out".to_owned(),
        ApprovalStatus::Pending => "sent again; waiting for approvals".to_owned(),
        other => status_name(other).to_owned(),
    };
    ctx.out.say(format!(
        "Request {} ({}): {state}{}",
        view.request_id,
        view.operation,
        if view.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", display::line(&view.detail))
        }
    ));
    if view.status == ApprovalStatus::Failed {
        return Err(CliError::failure(format!(
            "request {} failed again: {}",
            view.request_id,
            display::line(&view.detail)
        )));
    }
    Ok(())
}

/// Shown by `approvals list` without `--all`: what still waits for someone, including
/// your own requests that failed or were rejected (retry or cancel them) while they last.
fn is_open(v: &ApprovalView) -> bool {
    let waiting = match v.direction {
        ApprovalDirection::Outgoing => matches!(
            v.status,
            ApprovalStatus::Pending
                | ApprovalStatus::QuorumReached
                | ApprovalStatus::Failed
                | ApprovalStatus::Rejected
        ),
        ApprovalDirection::Incoming => v.status == ApprovalStatus::Pending,
    };
    waiting && v.expires_ms > now_ms()
}

async fn approvals_list(ctx: &Ctx, all: bool) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result = fetch(ctx, &mut client).await;
    end(ctx, &mut client, &at, result).await?;
    let views: Vec<ApprovalView> = client
        .approvals()
        .into_iter()
        .filter(|v| all || is_open(v))
        .collect();
    for v in &views {
        ctx.out.json_line(to_json_tagged("approval", v)?);
    }
    let waiting = views
        .iter()
        .filter(|v| {
            v.direction == ApprovalDirection::Incoming && v.status == ApprovalStatus::Pending
        })
        .count();
    ctx.out
        .json_line(json!({"event": "approvals", "shown": views.len(), "waiting_for_you": waiting}));
    if views.is_empty() {
        ctx.out.say(if all {
            "No approval requests."
        } else {
            "No open approval requests (`--all` shows finished ones)."
        });
        return Ok(());
    }
    ctx.out.say(format!(
        "{:<32}  {:<8}  {:<21}  {:<16}  {:<14}  expires",
        "request", "side", "operation", "initiator", "status"
    ));
    for v in &views {
        let side = match v.direction {
            ApprovalDirection::Incoming => "to you",
            ApprovalDirection::Outgoing => "yours",
        };
        let rejections = v.responses.iter().filter(|r| !r.approved).count();
        let status = match v.direction {
            ApprovalDirection::Outgoing if rejections > 0 => format!(
                "{} ({}/{}, {rejections} rejected)",
                status_name(v.status),
                v.approvals.len(),
                v.threshold
            ),
            ApprovalDirection::Outgoing => format!(
                "{} ({}/{})",
                status_name(v.status),
                v.approvals.len(),
                v.threshold
            ),
            ApprovalDirection::Incoming => status_name(v.status).to_owned(),
        };
        ctx.out.say(format!(
            "{:<32}  {:<8}  {:<21}  {:<16}  {:<14}  {}",
            v.request_id,
            side,
            v.operation,
            v.initiator.as_str(),
            status,
            time(v.expires_ms)
        ));
    }
    let stuck = views
        .iter()
        .filter(|v| {
            v.direction == ApprovalDirection::Outgoing
                && matches!(v.status, ApprovalStatus::Failed | ApprovalStatus::Rejected)
        })
        .count();
    if stuck > 0 {
        ctx.out.say(format!(
            "{stuck} of your requests failed or were rejected: `sealpost approvals show ID` says why; `approvals retry ID` tries a failed one again, `approvals cancel ID` withdraws one."
        ));
    }
    if waiting > 0 {
        ctx.out.say(format!(
            "{waiting} request{} wait{} for your decision: `sealpost approvals show ID`, then `approve ID` or `reject ID`.",
            if waiting == 1 { "" } else { "s" },
            if waiting == 1 { "s" } else { "" }
        ));
    }
    Ok(())
}

fn status_name(s: ApprovalStatus) -> &'static str {
    match s {
        ApprovalStatus::Pending => "pending",
        ApprovalStatus::QuorumReached => "quorum reached",
        ApprovalStatus::Approved => "approved",
        ApprovalStatus::Rejected => "rejected",
        ApprovalStatus::Completed => "completed",
        ApprovalStatus::Failed => "FAILED",
        ApprovalStatus::Expired => "expired",
        ApprovalStatus::Cancelled => "cancelled",
    }
}

/// Resolve a request id (a unique prefix is enough).
fn resolve_request(client: &Client, wanted: &str) -> Result<String, CliError> {
    let w = wanted.trim().to_ascii_lowercase();
    if w.is_empty() || !w.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CliError::usage(
            "a request id is hex digits (see `sealpost approvals list`)",
        ));
    }
    let ids: Vec<String> = client
        .approvals()
        .into_iter()
        .map(|v| v.request_id)
        .filter(|id| id.starts_with(&w))
        .collect();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(
            CliError::failure(format!("no approval request {w} on this device"))
                .hint("`sealpost approvals list --all` lists the requests this device holds"),
        ),
        _ => Err(CliError::usage(format!(
            "{w} matches several requests; give more digits"
        ))),
    }
}

/// Everything about a request, in full: what exactly is signed.
fn print_request(ctx: &Ctx, client: &Client, v: &ApprovalView) -> Result<(), CliError> {
    // A roster change is also shown as what changes against the version it replaces.
    let mut diff: Option<Vec<org::RosterChange>> = None;
    if let Some(rec) = client.approval_record(&v.request_id) {
        if let ApprovalSubject::RosterChange { roster } = &rec.subject {
            if let Some(prev) = client
                .cached_roster()
                .and_then(|c| c.get(roster.version().saturating_sub(1)))
            {
                diff = Some(org::roster_diff(prev, roster));
            }
        }
    }
    let mut line = to_json_tagged("approval", v)?;
    if let (Some(d), Some(obj)) = (&diff, line.as_object_mut()) {
        obj.insert("roster_changes".into(), super::output::to_json(d)?);
    }
    ctx.out.json_line(line);
    if ctx.out.json {
        return Ok(());
    }
    let side = match v.direction {
        ApprovalDirection::Incoming => "asks for YOUR approval",
        ApprovalDirection::Outgoing => "is YOUR request",
    };
    println!("Approval request {} {side}", v.request_id);
    println!("  operation:      {}", v.operation);
    println!(
        "  initiator:      {} (device {})",
        v.initiator, v.initiator_device
    );
    println!("  roster version: {}", v.roster_version);
    println!("  expires:        {}", time(v.expires_ms));
    println!(
        "  quorum:         {} approval{} from {} (the initiator does not count)",
        v.threshold,
        if v.threshold == 1 { "" } else { "s" },
        v.roles.join(", ")
    );
    println!("  status:         {}", status_name(v.status));
    if !v.detail.is_empty() {
        println!("  detail:         {}", display::line(&v.detail));
    }
    if v.direction == ApprovalDirection::Outgoing {
        let names: Vec<&str> = v.approvals.iter().map(AccountId::as_str).collect();
        println!(
            "  approvals:      {}/{} {}",
            v.approvals.len(),
            v.threshold,
            if names.is_empty() {
                String::new()
            } else {
                format!("({})", names.join(", "))
            }
        );
        for r in &v.responses {
            if !r.approved {
                println!(
                    "  REJECTED by {}{}",
                    r.approver,
                    if r.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", display::line(&r.reason))
                    }
                );
            }
        }
    }
    println!("  signed digest:  {}", v.digest);
    println!(
        "  parameters:     {} (digest of what follows)",
        v.parameters
    );
    println!();
    println!("What is approved, in full:");
    let record = client.approval_record(&v.request_id);
    match record.map(|r| &r.subject) {
        Some(ApprovalSubject::Notice { header, content }) => {
            let audience = match &header.audience {
                NoticeAudience::Client(a) => format!("client {a}"),
                NoticeAudience::Segment(seg) => format!("segment {}", display::line(seg.as_str())),
                NoticeAudience::AllClients => "ALL CLIENTS".to_owned(),
            };
            let high = if header.category.risk() == NoticeRisk::HighRisk {
                " (HIGH RISK)"
            } else {
                ""
            };
            println!("  a NOTICE");
            println!(
                "  | category: {}{high}",
                super::output::category_name(header.category)
            );
            println!("  | to:       {audience}");
            println!(
                "  | from:     {} (device {})",
                header.sender.account, header.sender.device
            );
            println!("  | dated:    {}", time(header.sent_ms));
            match NoticeText::decode(content) {
                Ok(t) => {
                    // Peer text: control characters escaped (what is shown is what
                    // is signed).
                    println!("  | title:    {}", display::line(t.title.as_str()));
                    println!("  | body:");
                    for l in display::text(t.body.as_str()).lines() {
                        println!("  |   {l}");
                    }
                }
                Err(e) => println!("  | (the text does not decode: {e}; do not approve)"),
            }
        }
        Some(ApprovalSubject::DeviceLog { entry, link }) => {
            println!("  a DEVICE-LOG ENTRY of account {}", entry.account);
            match &entry.action {
                DeviceAction::Recover { identity } => {
                    println!(
                        "  | action:   RECOVER: revoke every device of {} and add one new device",
                        entry.account
                    );
                    println!("  | device:   {}", identity.device_id());
                    println!(
                        "  | fingerprint of the new device: {}",
                        identity.fingerprint()
                    );
                    println!(
                        "  | check:    {}",
                        if link.is_some() {
                            "approving asks for the code the account holder reads from the new device"
                        } else {
                            "NO LINK CODE IN THIS REQUEST: it cannot be checked; reject it"
                        }
                    );
                }
                DeviceAction::Unfreeze => {
                    println!("  | action:   UNFREEZE the account");
                }
                other => println!("  | action:   {}", other.name()),
            }
            println!(
                "  | entry:    number {} dated {}",
                entry.seq,
                time(entry.timestamp_ms)
            );
            println!("  | reason:   {}", display::line(entry.reason.as_str()));
            println!("  | entry hash: {}", hex::encode(entry.hash().0));
        }
        Some(ApprovalSubject::RosterChange { roster }) => {
            println!("  ROSTER VERSION {}", roster.version());
            if !ctx.out.json {
                print_roster_text(ctx, roster);
            }
        }
        None => {
            for l in v.summary.lines() {
                println!("  | {l}");
            }
        }
    }
    if let Some(d) = diff {
        println!();
        println!("Changes against the current roster:");
        if d.is_empty() {
            println!("  (none: only the version changes)");
        }
        for c in d {
            println!("  {c}");
        }
    }
    Ok(())
}

async fn approvals_show(ctx: &Ctx, wanted: &str) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result = fetch(ctx, &mut client).await;
    end(ctx, &mut client, &at, result).await?;
    let id = resolve_request(&client, wanted)?;
    let view = client
        .approval(&id)
        .ok_or_else(|| CliError::failure(format!("no approval request {id}")))?;
    print_request(ctx, &client, &view)
}

/// An approver typed a recovery code that does not match: nothing was signed, the request
/// still waits (neither an offer withdrawn nor a reason to freeze anything).
fn recovery_code_mismatch(id: &impl std::fmt::Display) -> CliError {
    CliError::new(
        super::error::Exit::Mismatch,
        "the code does NOT match the one the account holder's new device shows: nothing was approved",
    )
    .hint(format!("the request still waits: call the account holder back on the number on file (place the call yourself) and run `sealpost approvals approve {id}` again with the code they read; if the codes keep differing, reject it: someone else may have started this recovery"))
}

enum Decision {
    Approve { yes: bool, code: Option<String> },
    Reject { reason: String },
}

async fn approvals_decide(ctx: &Ctx, wanted: &str, decision: Decision) -> Result<(), CliError> {
    let (mut client, at) = begin(ctx).await?;
    let result: Result<ApprovalView, Flow> = async {
        fetch(ctx, &mut client).await?;
        let id = resolve_request(&client, wanted)?;
        let view = client
            .approval(&id)
            .ok_or_else(|| CliError::failure(format!("no approval request {id}")))?;
        if view.direction == ApprovalDirection::Outgoing {
            return Err(Flow::Cli(CliError::usage(
                "this is your own request: the initiator never approves it (others must)",
            )));
        }
        if view.status != ApprovalStatus::Pending {
            return Err(Flow::Cli(CliError::failure(format!(
                "request {id} is already {}",
                status_name(view.status)
            ))));
        }
        match &decision {
            Decision::Approve { yes, code } => {
                print_request(ctx, &client, &view)?;
                let recovery = view.operation == Operation::AccountRecovery.name();
                let code = match (recovery, code) {
                    (false, _) => None,
                    (true, Some(c)) => Some(c.clone()),
                    (true, None) if *yes => {
                        return Err(Flow::Cli(CliError::usage(
                            "a recovery is approved only with --code: the 6-digit code the account holder reads from their new device, on a call you place to the number on file",
                        )))
                    }
                    (true, None) => {
                        ctx.out.say("\nThis RECOVERY replaces every device of the account. Check it yourself, whoever");
                        ctx.out.say("initiated it: call the account holder on the number on file (place the call");
                        ctx.out.say("yourself; do not use a number or a call offered to you) and ask them to read");
                        ctx.out.say("the 6-digit code their new device shows.");
                        Some(read_code(ctx.out, "the account holder reads to you")?)
                    }
                };
                if !*yes && !typed_yes("Approve exactly this?", "sign your approval", ctx.out)? {
                    return Err(Flow::Cli(CliError::failure(
                        "not approved: you did not type 'yes'",
                    )));
                }
                match client.approve_with_code(&id, code.as_deref()).await {
                    Err(ClientError::CodeMismatch) => Err(Flow::Cli(recovery_code_mismatch(&id))),
                    r => Ok(r?),
                }
            }
            Decision::Reject { reason } => Ok(client.reject_approval(&id, reason).await?),
        }
    }
    .await;
    let view = end(ctx, &mut client, &at, result).await?;
    let (tag, said) = match decision {
        Decision::Approve { .. } => ("approved", "Approved"),
        Decision::Reject { .. } => ("rejected", "Rejected"),
    };
    ctx.out.json_line(to_json_tagged(tag, &view)?);
    ctx.out.say(format!(
        "{said} request {} ({} by {}); the initiator has been told.",
        view.request_id, view.operation, view.initiator
    ));
    Ok(())
}

// ---- attest (the firm's verification of a client's first device) ----

/// Where this account's verification stands, as a JSON value and a line of text; moves a
/// waiting client's request on ([`Client::attestation_status`]). Connects and finishes.
pub async fn attest_status_line(
    ctx: &Ctx,
    client: &mut Client,
) -> Result<(serde_json::Value, String), CliError> {
    use sealpost_client::AttestStatus;
    if client.trust_on_first_use() {
        return Ok((
            json!({"state": "trust_on_first_use"}),
            format!("verification: {}", super::commands::TOFU_NOTE),
        ));
    }
    connect(ctx, client).await?;
    let at = relay_addr(client);
    let status = client.attestation_status().await;
    finish(client).await?;
    let status = status.map_err(|e| CliError::from_client(e, Some(&at)))?;
    let line = match &status {
        AttestStatus::TrustOnFirstUse => format!("verification: {}", super::commands::TOFU_NOTE),
        AttestStatus::Roster => "verification: listed in the organisation's roster".to_owned(),
        AttestStatus::Attested { attested_ms } => format!(
            "verification: verified by the firm on {}",
            time(*attested_ms)
        ),
        AttestStatus::Waiting { code: None } => "verification: WAITING for the firm's verification. Until a staff member has verified you, your advisor and staff cannot write to you nor read what you send. They will call you; run `sealpost whoami` again then to see the code to read them.".to_owned(),
        AttestStatus::Waiting { code: Some(code) } => format!(
            "verification: WAITING for the firm's verification. Read this code to the staff member who called you: {code}"
        ),
    };
    Ok((to_json_tagged("attestation", &status)?, line))
}

/// `sealpost attest ...`
pub async fn attest(ctx: &Ctx, command: AttestCommand) -> Result<(), CliError> {
    match command {
        AttestCommand::Status => {
            let mut client = open_enrolled(ctx).await?;
            let (json, line) = attest_status_line(ctx, &mut client).await?;
            ctx.out.json_line(json);
            ctx.out.say(line);
            Ok(())
        }
        AttestCommand::List => {
            let mut client = open_enrolled(ctx).await?;
            connect(ctx, &mut client).await?;
            let at = relay_addr(&client);
            let list = client.unattested().await;
            finish(&mut client).await?;
            let list = list.map_err(|e| CliError::from_client(e, Some(&at)))?;
            if list.is_empty() {
                ctx.out.say("No client is waiting for verification.");
            }
            for v in &list {
                ctx.out.json_line(to_json_tagged("unattested", v)?);
                let state = if v.code_ready && v.challenged_by_me {
                    "code ready: `sealpost attest confirm ACCOUNT --code DIGITS` with the code they read you"
                } else if v.challenged_by_me {
                    "started by you: call them; they run `sealpost whoami` and read you the code"
                } else if v.challenged {
                    "being verified by another staff device"
                } else if v.requested {
                    "asked to be verified: `sealpost attest begin ACCOUNT`, then call them"
                } else {
                    "has not asked yet (they run `sealpost whoami`)"
                };
                ctx.out.say(format!("{:<32} {state}", v.account.as_str()));
            }
            Ok(())
        }
        AttestCommand::Begin { account } => {
            let account = account_arg(&account)?;
            let mut client = open_enrolled(ctx).await?;
            connect(ctx, &mut client).await?;
            let at = relay_addr(&client);
            let r = client.attest_begin(&account).await;
            finish(&mut client).await?;
            r.map_err(|e| CliError::from_client(e, Some(&at)))?;
            ctx.out
                .json_line(json!({"event": "attest_started", "account": account.as_str()}));
            ctx.out.say(format!(
                "Verification of {account} started. Call them on a number you already know; they run `sealpost whoami` and read you a 6-digit code. Then: sealpost attest confirm {account} --code DIGITS"
            ));
            Ok(())
        }
        AttestCommand::Confirm { account, code } => {
            let account = account_arg(&account)?;
            let code = check_code(&code)?;
            let mut client = open_enrolled(ctx).await?;
            connect(ctx, &mut client).await?;
            let at = relay_addr(&client);
            let r = client.attest_confirm(&account, code).await;
            finish(&mut client).await?;
            let a = r.map_err(|e| match e {
                ClientError::CodeMismatch => CliError::new(
                    super::error::Exit::Mismatch,
                    format!("the code does not match: {account} is NOT verified"),
                )
                .hint(format!("the request was ended: the client runs `sealpost whoami` to ask again, then `sealpost attest begin {account}` and call them again; if the codes keep differing, someone may be in the middle")),
                e => CliError::from_client(e, Some(&at)),
            })?;
            ctx.out.json_line(json!({
                "event": "attested",
                "account": account.as_str(),
                "attested_ms": a.attested_ms,
                "roster_version": a.roster_version,
            }));
            ctx.out.say(format!(
                "{account} is verified: its first device is attested by this device (roster version {}).",
                a.roster_version
            ));
            Ok(())
        }
    }
}
