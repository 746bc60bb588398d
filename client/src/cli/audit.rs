//! `sealpost audit ...`: the witness of the transparency log (docs/PROTOCOL.md §21.8).

use std::time::Duration;

use sealpost_client::witness::WitnessRun;
use sealpost_client::ClientError;
use serde_json::json;
use tokio::time::Instant;

use super::error::CliError;
use super::{connect, finish, open_enrolled, relay_addr, Ctx};
use crate::AuditCommand;

/// `sealpost audit ...`
pub async fn audit(ctx: &Ctx, command: AuditCommand) -> Result<(), CliError> {
    match command {
        AuditCommand::WitnessKey { name } => {
            let mut client = open_enrolled(ctx).await?;
            let (name, key, vkey) =
                match name {
                    Some(n) => client
                        .witness_init(&n)
                        .map_err(|e| CliError::from_client(e, None))?,
                    None => match client
                        .witness_key()
                        .map_err(|e| CliError::from_client(e, None))?
                    {
                        Some((name, key)) => (name, key, String::new()),
                        None => return Err(CliError::usage(
                            "this device holds no witness key: create one with `sealpost audit \
                             witness-key --name NAME` (for example witness.security.example)",
                        )),
                    },
                };
            ctx.out
                .json_line(json!({"event": "witness_key", "name": name, "key": key}));
            ctx.out.say(format!(
                "Witness key {name}: {key}\nList it in the roster (a roster change):\n  \
                 [[policy.witness]]\n  name = \"{name}\"\n  key = \"{key}\""
            ));
            if !vkey.is_empty() {
                ctx.out.note(format!("signed-note verifier key: {vkey}"));
            }
            Ok(())
        }
        AuditCommand::Check => {
            let mut client = open_enrolled(ctx).await?;
            connect(ctx, &mut client).await?;
            let at = relay_addr(&client);
            let r = client.check_transparency().await;
            finish(&mut client).await?;
            let size = r.map_err(|e| CliError::from_client(e, Some(&at)))?;
            ctx.out
                .json_line(json!({"event": "transparency_checked", "size": size}));
            ctx.out.say(format!(
                "The relay's transparency log extends the checkpoint this device holds ({size} leaves)."
            ));
            Ok(())
        }
        AuditCommand::Follow {
            once,
            interval,
            for_secs,
        } => follow(ctx, once, Duration::from_secs(interval.max(1)), for_secs).await,
    }
}

/// Follow the log: one pass, then one every `interval`, until stopped (or `for_secs`).
/// A log that does not verify stops the witness with exit 8: nothing more is cosigned.
async fn follow(
    ctx: &Ctx,
    once: bool,
    interval: Duration,
    for_secs: Option<u64>,
) -> Result<(), CliError> {
    let mut client = open_enrolled(ctx).await?;
    if !once {
        // Runs until stopped; each pass is bounded by --timeout below.
        ctx.budget.unbounded();
    }
    let at = relay_addr(&client);
    let deadline = for_secs.map(|s| Instant::now() + Duration::from_secs(s));
    let mut run = WitnessRun::default();
    loop {
        if !client.is_connected() {
            if let Err(e) = connect(ctx, &mut client).await {
                if once {
                    return Err(e);
                }
                ctx.out
                    .json_line(json!({"event": "reconnecting", "relay": at, "error": e.message}));
                ctx.out.note(format!(
                    "relay at {at} unreachable ({}); retrying",
                    e.message
                ));
            }
        }
        if client.is_connected() {
            let pass = tokio::time::timeout(
                ctx.timeout.max(Duration::from_secs(30)),
                client.witness_pass(&mut run),
            )
            .await;
            match pass {
                Ok(Ok(p)) => {
                    ctx.out.json_line(json!({
                        "event": "witness_pass",
                        "size": p.size,
                        "root": p.root,
                        "verified": p.verified,
                        "cosigned": p.cosigned,
                    }));
                    if p.cosigned {
                        ctx.out.say(format!(
                            "checkpoint of {} leaves verified ({} new) and cosigned (root {})",
                            p.size, p.verified, p.root
                        ));
                    }
                }
                Ok(Err(e @ ClientError::Trust(_))) => {
                    let err = CliError::from_client(e, Some(&at));
                    ctx.out.json_line(
                        json!({"event": "witness_alarm", "relay": at, "reason": err.message}),
                    );
                    finish(&mut client).await.ok();
                    return Err(err);
                }
                Ok(Err(e)) if once || !e.is_transient() => {
                    finish(&mut client).await.ok();
                    return Err(CliError::from_client(e, Some(&at)));
                }
                Ok(Err(e)) => {
                    client.disconnect();
                    let err = CliError::from_client(e, Some(&at));
                    ctx.out
                        .note(format!("witness pass failed ({}); retrying", err.message));
                }
                Err(_) => {
                    client.disconnect();
                    if once {
                        return Err(CliError::unreachable(&at, "no answer in time"));
                    }
                }
            }
        }
        if once || deadline.is_some_and(|d| Instant::now() + interval > d) {
            break;
        }
        tokio::time::sleep(interval).await;
    }
    finish(&mut client).await
}
