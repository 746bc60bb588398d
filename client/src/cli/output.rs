//! Printing: one JSON object per line with `--json`, friendly text otherwise.
//!
//! JSON lines carry an `"event"` key saying what they are: the library's [`Event`]s keep
//! their own tags (`message`, `notice`, `receipt`, `devices_changed`, ...); command
//! results use their own (`whoami`, `sent`, `contact`, ...). Byte identifiers (message
//! and device ids) are printed as lower-case hex.

use sealpost_client::client::{Direction, EntryKind, HistoryEntry};
use sealpost_client::display;
use sealpost_client::Event;
use sealpost_protocol::identity::AccountId;
use serde::Serialize;
use serde_json::Value;

use super::error::CliError;

/// Keys whose values are byte identifiers (serialized by the library as byte strings).
const ID_KEYS: [&str; 6] = [
    "id",
    "message_id",
    "device",
    "message_ids",
    "revoked",
    "initiator_device",
];

/// Where output goes and in which form.
#[derive(Clone, Copy)]
pub struct Out {
    /// One JSON object per line.
    pub json: bool,
}

impl Out {
    /// Print a JSON line (only in JSON mode).
    pub fn json_line(&self, value: Value) {
        if self.json {
            println!("{value}");
        }
    }

    /// Print a text line (only in human mode).
    pub fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }

    /// Print a text line to stderr (only in human mode): progress and status notes.
    pub fn note(&self, text: impl AsRef<str>) {
        if !self.json {
            eprintln!("{}", text.as_ref());
        }
    }

    /// Print a library event: JSON as is, or a readable line (device changes loudly).
    pub fn event(&self, event: &Event, me: Option<&AccountId>) -> Result<(), CliError> {
        if self.json {
            self.json_line(to_json(event)?);
            return Ok(());
        }
        match event {
            Event::Message { entry }
            | Event::Notice { entry }
            | Event::Instruction { entry }
            | Event::Synced { entry } => {
                println!("{}", format_entry(entry));
            }
            Event::Receipt {
                from,
                kind,
                message_ids,
            } => {
                let what = match kind {
                    sealpost_protocol::content::ReceiptKind::Delivered => "delivered to",
                    sealpost_protocol::content::ReceiptKind::Read => "read by",
                };
                let n = message_ids.len();
                println!(
                    "  {n} message{} {what} {from}",
                    if n == 1 { "" } else { "s" }
                );
            }
            Event::DevicesChanged {
                account,
                added,
                removed,
                was_verified,
            } => {
                print_devices_changed(account, added, removed, *was_verified, me);
            }
            Event::Rejected {
                device,
                message_id,
                reason,
                alarm,
            } => {
                if *alarm {
                    // A sensitive kind (an instruction, an approval) refused for its
                    // sender: possibly a device added behind the account's back.
                    eprintln!(
                        "WARNING: REFUSED message {message_id} from device {device}: {}",
                        display::line(reason)
                    );
                } else {
                    eprintln!(
                        "note: dropped message {message_id} from device {device}: {}",
                        display::line(reason)
                    );
                }
            }
            Event::PreKeysPublished {
                one_time,
                kem_one_time,
            } => {
                tracing::debug!(one_time, kem_one_time, "prekeys published");
            }
            Event::UntrustedDevice {
                account,
                device,
                fingerprint,
                seen_in,
            } => {
                let fp = fingerprint.as_deref().unwrap_or("(keys unknown)");
                eprintln!("WARNING: UNTRUSTED DEVICE for {account}: device {device} ({fp}) seen in the relay's {seen_in},");
                eprintln!("WARNING:   but {account}'s signed device log does not list it. Nothing is encrypted to it");
                eprintln!(
                    "WARNING:   and nothing from it is trusted. The relay may be compromised."
                );
                if me == Some(account) {
                    eprintln!("WARNING:   This is YOUR account: if you did not add a device, run `sealpost device freeze` now.");
                } else {
                    eprintln!("WARNING:   Tell {account} and your firm through another channel.");
                }
            }
            Event::DeviceAdded {
                account,
                device,
                fingerprint,
                probation_until_ms,
            } => {
                if me == Some(account) {
                    eprintln!("WARNING: A NEW DEVICE WAS ADDED TO YOUR ACCOUNT {account}:");
                    eprintln!("WARNING:   device {device}  {fingerprint}");
                    eprintln!(
                        "WARNING:   on probation until {} (it cannot send approvals or instructions until then)",
                        time(*probation_until_ms)
                    );
                    eprintln!("WARNING:   If this wasn't you, run `sealpost device freeze` NOW: it revokes the new device");
                    eprintln!("WARNING:   and freezes the account until your firm has checked it.");
                } else {
                    eprintln!(
                        "note: {account} added a device {device} ({fingerprint}); on probation until {}",
                        time(*probation_until_ms)
                    );
                }
            }
            Event::SplitView {
                account,
                reason,
                reported_by_peer,
            } => {
                eprintln!("WARNING: SPLIT VIEW with {account}: the relay showed you and {account} DIFFERENT device logs.");
                eprintln!("WARNING:   {}", display::line(reason));
                if *reported_by_peer {
                    eprintln!(
                        "WARNING:   ({account}'s device detected it and said so in its message.)"
                    );
                }
                eprintln!("WARNING:   A device may have been slipped into one side's view. Approvals, instructions and");
                eprintln!("WARNING:   device changes between you and {account} are refused until the views agree.");
                eprintln!("WARNING:   Check your devices (`sealpost device list`) and call {account} or your firm through another channel.");
            }
            Event::Held {
                device,
                message_id,
                from,
                reason,
            } => {
                eprintln!(
                    "note: message {message_id} from {from} (device {device}) is kept until its sender can be checked: {}",
                    display::line(reason)
                );
            }
            Event::HoldFull {
                device,
                message_id,
                max,
            } => {
                eprintln!(
                    "note: message {message_id} from device {device} stays at the relay: {max} messages already wait for their sender to be checked"
                );
            }
            Event::ArchiveChanged {
                roster_version,
                before,
                after,
                disclosure,
            } => match (before, after) {
                (_, Some(fp)) => {
                    let what = if before.is_some() { "CHANGED" } else { "is" };
                    eprintln!("NOTICE: your firm's compliance archive {what} (roster version {roster_version}):");
                    eprintln!(
                        "NOTICE:   {}",
                        display::line(disclosure.as_deref().unwrap_or_default())
                    );
                    eprintln!("NOTICE:   every message between clients and the firm is also sealed to the firm's archive, fingerprint {fp}");
                }
                (Some(_), None) => {
                    eprintln!("NOTICE: conversations are no longer recorded by the firm's archive (roster version {roster_version}).");
                }
                (None, None) => {}
            },
            Event::ArchiveQueued {
                message_id,
                to,
                waiting,
                reason,
            } => {
                eprintln!(
                    "note: message {message_id} to {to} was sent; its copy for the firm's archive waits on this device ({waiting} waiting): {}",
                    display::line(reason)
                );
            }
            Event::Archived {
                message_id,
                from,
                to,
                kind,
            } => {
                println!("  archived {kind} {message_id} from {from} to {to}");
            }
            Event::SecurityAlert {
                id,
                time_ms,
                severity,
                rule,
                device,
                detail,
            } => {
                eprintln!(
                    "WARNING: SECURITY ALERT from the relay about your account ({severity}, {rule}, event {id}, {}):",
                    time(*time_ms)
                );
                eprintln!("WARNING:   {}", display::line(detail));
                if let Some(d) = device {
                    eprintln!("WARNING:   device concerned: {d}");
                }
                eprintln!("WARNING:   If this was not you, check your devices (`sealpost device list`) and call your firm.");
            }
            Event::FreezeChanged { account, frozen } => {
                if *frozen {
                    eprintln!("WARNING: account {account} is FROZEN: its devices on probation were revoked; staff must unfreeze it.");
                } else {
                    eprintln!("note: account {account} was unfrozen by a staff quorum.");
                }
            }
            Event::TrustRefused { subject, reason } => {
                eprintln!(
                    "WARNING: REFUSED {} from the relay: {}",
                    display::line(subject),
                    display::line(reason)
                );
                eprintln!("WARNING:   The relay may be misbehaving or compromised; the last verified state is kept.");
            }
            Event::RosterUpdated { version } => {
                println!(
                    "  organisation roster updated to version {version} (sealpost org roster show)"
                );
            }
            Event::ApprovalRequested { request } => {
                let v = to_json(request)?;
                let id = v["request_id"].as_str().unwrap_or("?");
                let op = v["operation"].as_str().unwrap_or("?");
                let from = v["initiator"].as_str().unwrap_or("?");
                println!("  APPROVAL REQUESTED by {from}: {op} (request {id})");
                println!("    review it in full: sealpost approvals show {id}");
            }
            Event::ApprovalAnswered {
                request_id,
                approver,
                approved,
                reason,
            } => {
                let what = if *approved { "approved" } else { "REJECTED" };
                let why = if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", display::line(reason))
                };
                println!("  {approver} {what} request {request_id}{why}");
            }
            Event::ApprovalRefused {
                request_id,
                from,
                reason,
            } => {
                eprintln!(
                    "WARNING: refused an approval message from {from} (request {request_id}): {}",
                    display::line(reason)
                );
            }
            Event::OperationCompleted {
                request_id,
                operation,
                summary,
            } => {
                println!(
                    "  quorum reached for request {request_id} ({operation}): {}",
                    display::line(summary)
                );
            }
            Event::OperationFailed {
                request_id,
                operation,
                reason,
                will_retry: true,
            } => {
                eprintln!(
                    "note: request {request_id} ({operation}) reached its quorum; carrying it out failed for now ({}): it is tried again on the next `sealpost approvals list` (or by `listen`) while its approvals last",
                    display::line(reason)
                );
            }
            Event::OperationFailed {
                request_id,
                operation,
                reason,
                will_retry: false,
            } => {
                eprintln!(
                    "WARNING: request {request_id} ({operation}) reached its quorum but could not be carried out: {}",
                    display::line(reason)
                );
                eprintln!(
                    "hint: once the cause is fixed, `sealpost approvals retry {request_id}` tries again (or `approvals cancel` withdraws it)"
                );
            }
        }
        Ok(())
    }
}

fn print_devices_changed(
    account: &AccountId,
    added: &[String],
    removed: &[String],
    was_verified: bool,
    me: Option<&AccountId>,
) {
    let mine = me == Some(account);
    if mine {
        eprintln!("WARNING: the devices of YOUR account {account} changed.");
    } else {
        eprintln!("WARNING: the devices of {account} changed.");
    }
    for fp in added {
        eprintln!("WARNING:   added device   {fp}");
    }
    for fp in removed {
        eprintln!("WARNING:   removed device {fp}");
    }
    if mine && !added.is_empty() {
        eprintln!("WARNING: if you did not add a device yourself, contact your firm at once.");
    }
    if was_verified {
        eprintln!("WARNING: {account} is NO LONGER VERIFIED. Compare safety numbers again: sealpost verify {account}");
    } else if !mine {
        eprintln!("WARNING: check with {account} that this was them: sealpost verify {account}");
    }
}

/// Serialize a library value for a JSON line, with byte identifiers as hex.
pub fn to_json<T: Serialize>(value: &T) -> Result<Value, CliError> {
    let mut v =
        serde_json::to_value(value).map_err(|e| CliError::failure(format!("JSON output: {e}")))?;
    hexify(&mut v);
    Ok(v)
}

/// A JSON object of the library value `value`, with `"event": tag` added.
pub fn tagged<T: Serialize>(tag: &str, value: &T) -> Result<Value, CliError> {
    let mut v = to_json(value)?;
    if let Value::Object(m) = &mut v {
        m.insert("event".into(), Value::String(tag.into()));
    }
    Ok(v)
}

fn as_byte_string(v: &Value) -> Option<String> {
    let Value::Array(items) = v else { return None };
    if items.is_empty() {
        return None;
    }
    let bytes: Option<Vec<u8>> = items
        .iter()
        .map(|i| i.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect();
    bytes.map(hex::encode)
}

fn hexify(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if ID_KEYS.contains(&k.as_str()) {
                    if let Some(h) = as_byte_string(val) {
                        *val = Value::String(h);
                        continue;
                    }
                    if let Value::Array(items) = val {
                        for item in items.iter_mut() {
                            if let Some(h) = as_byte_string(item) {
                                *item = Value::String(h);
                            }
                        }
                        continue;
                    }
                }
                hexify(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hexify),
        _ => {}
    }
}

/// `2025-01-31 12:00:00 UTC`.
pub fn time(ms: u64) -> String {
    sealpost_client::clock::utc(ms)
}

/// Peer text over several lines, control characters escaped, continuation lines indented.
fn indent(text: &str) -> String {
    display::text(text)
        .lines()
        .collect::<Vec<_>>()
        .join("\n      ")
}

/// One history entry as text.
pub fn format_entry(e: &HistoryEntry) -> String {
    let line = format_entry_line(e);
    match e.sender_revoked_ms {
        Some(ms) => format!(
            "{line}\n      (note: sent by a device of {} that has since been revoked, on {}; it says it sent this before)",
            if e.direction == Direction::Out { "yours".to_owned() } else { e.peer.to_string() },
            time(ms)
        ),
        None => line,
    }
}

fn format_entry_line(e: &HistoryEntry) -> String {
    let when = time(e.sent_ms);
    let status = if e.direction == Direction::Out {
        if e.read {
            "  [read]"
        } else if e.delivered {
            "  [delivered]"
        } else {
            "  [sent]"
        }
    } else {
        ""
    };
    match (e.kind, e.direction) {
        (EntryKind::Text, Direction::In) => format!("[{when}] {}: {}", e.peer, indent(&e.body)),
        (EntryKind::Text, Direction::Out) => {
            format!("[{when}] you -> {}: {}{status}", e.peer, indent(&e.body))
        }
        (EntryKind::Instruction, d) => {
            let who = if d == Direction::In {
                format!("from {}", e.peer)
            } else {
                format!("you -> {}", e.peer)
            };
            let category = e.instruction.map_or("instruction", |c| c.name());
            format!(
                "[{when}] INSTRUCTION [{category}] {who}{status}\n      {}",
                indent(&e.body)
            )
        }
        (EntryKind::Notice, d) => {
            let title = display::line(e.title.as_deref().unwrap_or(""));
            let who = if d == Direction::In {
                format!("from {}", e.peer)
            } else {
                format!("you -> {}", e.peer)
            };
            let verdict = match (&e.notice, d) {
                (Some(n), _) if n.authenticated => {
                    format!("\n      [{}]", display::line(&n.summary))
                }
                (Some(n), _) => format!(
                    "\n      !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n      !!! NOT AUTHENTICATED: DO NOT ACT ON THIS NOTICE\n      !!! reason: {}\n      !!! It may not come from your firm. Call your advisor on a number you know.\n      !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
                    display::line(n.reason.as_deref().unwrap_or("it did not verify"))
                ),
                (None, Direction::In) => "\n      !!! NOT AUTHENTICATED: no signature was checked; do not act on this notice".to_owned(),
                (None, Direction::Out) => String::new(),
            };
            let category = match e.notice.as_ref().and_then(|n| n.category) {
                Some(c) if c != sealpost_protocol::trust::NoticeCategory::General => {
                    format!(" [{}]", category_name(c))
                }
                _ => String::new(),
            };
            format!(
                "[{when}] NOTICE{category} {who}: {title}{status}\n      {}{verdict}",
                indent(&e.body)
            )
        }
    }
}

/// The snake_case name of a notice category.
pub fn category_name(c: sealpost_protocol::trust::NoticeCategory) -> &'static str {
    use sealpost_protocol::trust::NoticeCategory as C;
    match c {
        C::General => "general",
        C::PaymentInstruction => "payment_instruction",
        C::DepositInstruction => "deposit_instruction",
        C::AddressChange => "address_change",
        C::SecurityChange => "security_change",
    }
}
