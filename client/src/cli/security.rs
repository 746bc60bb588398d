//! `sealpost security ...`: the security desk's view of the relay's security events.

use std::time::Duration;

use sealpost_client::backoff::Backoff;
use sealpost_client::net::NetError;
use sealpost_client::{Client, ClientError};
use sealpost_protocol::wire::SecurityEventInfo;
use serde_json::json;
use tokio::time::Instant;

use super::commands::stop_signal;
use super::error::CliError;
use super::{open_enrolled, relay_addr, Ctx};
use crate::SecurityCommand;

/// Consecutive failed attempts to reach the relay after which `security watch` gives up
/// (exit 5); a successful watch resets the count.
pub const MAX_RECONNECT_ATTEMPTS: u32 = 10;

/// Run a `security` subcommand.
pub async fn run(ctx: &Ctx, command: SecurityCommand) -> Result<(), CliError> {
    match command {
        SecurityCommand::Watch { since, for_secs } => {
            watch(ctx, since, for_secs.map(Duration::from_secs)).await
        }
    }
}

/// One event as a JSON object with the `event` key `security_event` (the same fields as
/// the relay's SIEM lines; the device id in hex).
pub fn event_json(e: &SecurityEventInfo) -> serde_json::Value {
    json!({
        "event": "security_event",
        "id": e.id,
        // Milliseconds, as the relay's SIEM line writes it (`security::json_line` in the
        // server, which the client cannot call: the shape is kept the same by hand and
        // pinned in tests/tests/security_events.rs).
        "time": humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms)
        )
        .to_string(),
        "time_ms": e.time_ms,
        "severity": e.severity.name(),
        "rule": e.rule.as_str(),
        "account": e.account.as_ref().map(|a| a.as_str()),
        "device": e.device.map(|d| d.to_hex()),
        "address": e.address.as_ref().map(|a| a.as_str()),
        "detail": e.detail.as_str(),
    })
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn print(ctx: &Ctx, e: &SecurityEventInfo) {
    if ctx.out.json {
        ctx.out.json_line(event_json(e));
        return;
    }
    let mut line = format!(
        "{} {:<8} {} #{}",
        rfc3339(e.time_ms),
        e.severity.name().to_uppercase(),
        e.rule.as_str(),
        e.id
    );
    if let Some(a) = &e.account {
        line.push_str(&format!(" account={a}"));
    }
    if let Some(d) = &e.device {
        line.push_str(&format!(" device={}", d.to_hex()));
    }
    if let Some(a) = &e.address {
        line.push_str(&format!(" address={}", a.as_str()));
    }
    line.push_str(&format!(": {}", e.detail.as_str()));
    ctx.out.say(line);
}

/// A failure worth another attempt (the connection, a timeout, `rate_limited`).
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Net(n) => n.is_transient(),
        ClientError::NotConnected => true,
        _ => false,
    }
}

enum Ended {
    /// Ctrl-C or `--for`.
    Stopped,
    /// The connection dropped: reconnect.
    Lost(String),
}

/// Catch up from `last` and follow the feed until the connection drops or the command is
/// stopped.
async fn watch_once(
    ctx: &Ctx,
    client: &mut Client,
    last: &mut u64,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    deadline: Option<Instant>,
    at: &str,
    attempts: &mut u32,
) -> Result<Ended, CliError> {
    let until = async {
        match deadline {
            Some(dl) => tokio::time::sleep_until(dl).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    if !client.is_connected() {
        let connect = tokio::time::timeout(ctx.timeout, client.connect());
        let r = tokio::select! {
            r = connect => r,
            _ = stop.wait_for(|s| *s) => return Ok(Ended::Stopped),
            () = &mut until => return Ok(Ended::Stopped),
        };
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) if transient(&e) => return Ok(Ended::Lost(e.to_string())),
            Ok(Err(e)) => return Err(CliError::from_client(e, Some(at))),
            Err(_) => {
                client.disconnect();
                return Ok(Ended::Lost(format!(
                    "no answer within {} s",
                    ctx.timeout.as_secs()
                )));
            }
        }
    }
    // The stored events first, page by page, then the live feed.
    loop {
        match client.security_watch(*last).await {
            Ok((events, more)) => {
                for e in &events {
                    print(ctx, e);
                    *last = e.id;
                }
                if !more {
                    break;
                }
            }
            Err(e) if transient(&e) => {
                client.disconnect();
                return Ok(Ended::Lost(e.to_string()));
            }
            Err(e @ ClientError::Net(NetError::Refused { .. })) => {
                return Err(CliError::from_client(e, Some(at))
                    .hint("only devices of staff whose role in the roster is security may watch security events"));
            }
            Err(e) => return Err(CliError::from_client(e, Some(at))),
        }
    }
    *attempts = 0;
    ctx.out
        .json_line(json!({"event": "watching", "relay": at, "since": *last}));
    ctx.out.note(format!(
        "Watching security events on {at} (after #{}). Press Ctrl-C to stop.",
        *last
    ));
    loop {
        tokio::select! {
            ev = client.next_security_event() => match ev {
                Ok(Some(e)) => {
                    if e.id > *last {
                        print(ctx, &e);
                        *last = e.id;
                    }
                }
                Ok(None) | Err(_) => {
                    client.disconnect();
                    return Ok(Ended::Lost("the connection closed".into()));
                }
            },
            _ = stop.wait_for(|s| *s) => return Ok(Ended::Stopped),
            () = &mut until => return Ok(Ended::Stopped),
        }
    }
}

async fn watch(ctx: &Ctx, since: u64, for_time: Option<Duration>) -> Result<(), CliError> {
    let mut client = open_enrolled(ctx)
        .await?
        .into_owned()
        .ok_or_else(|| CliError::failure("`security watch` cannot run inside `listen`"))?;
    // Runs until stopped; each connection attempt is bounded by --timeout.
    ctx.budget.unbounded();
    let deadline = for_time.map(|d| Instant::now() + d);
    let mut stop = stop_signal();
    let at = relay_addr(&client);
    let mut last = since;
    let mut attempts = 0u32;
    let mut backoff = Backoff::reconnect();
    loop {
        match watch_once(
            ctx,
            &mut client,
            &mut last,
            &mut stop,
            deadline,
            &at,
            &mut attempts,
        )
        .await?
        {
            Ended::Stopped => break,
            Ended::Lost(why) => {
                if attempts == 0 {
                    // The last attempt got as far as watching: start the pauses over.
                    backoff.reset();
                }
                attempts += 1;
                ctx.out.json_line(
                    json!({"event": "disconnected", "relay": at, "error": why, "attempt": attempts}),
                );
                ctx.out
                    .note(format!("connection to {at} lost ({why}); reconnecting"));
                if attempts >= MAX_RECONNECT_ATTEMPTS {
                    return Err(CliError::unreachable(
                        &at,
                        format!("{attempts} attempts in a row failed; last: {why}"),
                    ));
                }
                let pause = backoff.next_pause();
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
    }
    client.disconnect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    client.persist().map_err(|e| CliError::from_client(e, None))
}
