//! Exit codes and the translation of library errors into friendly, actionable messages.

use sealpost_client::net::NetError;
use sealpost_client::org::OrgError;
use sealpost_client::state::StateError;
use sealpost_client::ClientError;
use sealpost_protocol::wire::ErrorCode;
use serde_json::{Map, Value};

use super::output::time;

/// The documented exit codes (also in `--help` and the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: anything not covered below.
    Failure = 1,
    /// 2: bad arguments, no passphrase available.
    Usage = 2,
    /// 3: wrong passphrase, or the profile is locked by another process.
    Passphrase = 3,
    /// 4: no profile, or not enrolled.
    NotEnrolled = 4,
    /// 5: the relay could not be reached.
    Unreachable = 5,
    /// 6: the relay refused (policy, quota, rate limit, enrolment code).
    Refused = 6,
    /// 7: the safety numbers, or a device-link code, do not match.
    Mismatch = 7,
    /// 8: the relay's certificate does not match the pinned CA, or a roster, device log,
    /// approval or notice failed verification.
    Trust = 8,
    /// 9: the profile (or the organisation store) is in use by another sealpost process.
    Busy = 9,
}

impl Exit {
    /// A short machine-readable name, for `--json` errors.
    pub fn kind(self) -> &'static str {
        match self {
            Exit::Failure => "failure",
            Exit::Usage => "usage",
            Exit::Passphrase => "passphrase",
            Exit::NotEnrolled => "not_enrolled",
            Exit::Unreachable => "relay_unreachable",
            Exit::Refused => "refused",
            Exit::Mismatch => "verification_mismatch",
            Exit::Trust => "trust_check_failed",
            Exit::Busy => "profile_busy",
        }
    }
}

/// A failure of a command: what to say, what to suggest, how to exit.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// Machine-readable details, added to the `--json` error line (for example
    /// `probation_until_ms`).
    pub details: Map<String, Value>,
}

impl CliError {
    /// A failure with `exit` and `message`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: None,
            details: Map::new(),
        }
    }

    /// Add a machine-readable detail for `--json`.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// This device is on probation until `until_ms` (ms since the Unix epoch) and may not
    /// do `refused`: said as a duration and a UTC time; `--json` has the milliseconds.
    pub fn on_probation(until_ms: u64, refused: &str, now_ms: u64) -> Self {
        let left = until_ms.saturating_sub(now_ms);
        // Whole minutes (at least one) read better than "23h 59m 59s 412ms".
        let minutes = left.div_ceil(60_000).max(1);
        let left_text =
            humantime::format_duration(std::time::Duration::from_secs(minutes * 60)).to_string();
        Self::new(
            Exit::Refused,
            format!(
                "not allowed: this device is on probation for about {left_text} more (until {}) and may not {refused} until then",
                time(until_ms)
            ),
        )
        .hint("a new device's cooling-off lets it read at once but keeps it from approving or instructing; use an older device of the account, or wait")
        .detail("probation_until_ms", until_ms)
        .detail("probation_left_ms", left)
    }

    /// Add a suggestion.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// A generic failure.
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }

    /// The relay at `addr` did not answer.
    pub fn unreachable(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            Exit::Unreachable,
            format!("could not reach the relay at {addr}: {detail}"),
        )
        .hint("check that the relay is running and that the address and CA fingerprint are right")
    }

    /// Translate a library error; `relay` is the address in use, if known.
    pub fn from_client(e: ClientError, relay: Option<&str>) -> Self {
        let at = relay.unwrap_or("(unknown address)");
        match e {
            ClientError::State(s) => Self::from_state(s),
            ClientError::NotEnrolled => Self::not_enrolled(),
            ClientError::NotConnected => Self::new(
                Exit::Unreachable,
                format!("lost the connection to the relay at {at}"),
            )
            .hint("try again; if it keeps happening, check that the relay is running"),
            ClientError::NoDevices(a) => Self::failure(format!("{a} has no enrolled device yet"))
                .hint(format!(
                    "{a} must enrol a device before you can write to them"
                )),
            ClientError::Invalid(m) => Self::failure(m),
            ClientError::Protocol(m) => Self::failure(format!("protocol error: {m}")),
            ClientError::Attachment(m) => Self::failure(format!("attachment: {m}")).hint(
                "nothing was saved; if this repeats, the file may have been altered at the relay",
            ),
            ClientError::Net(n) => Self::from_net(n, at),
            ClientError::Trust(t @ sealpost_protocol::trust::TrustError::NotAttested { .. }) => {
                Self::new(Exit::Trust, format!("trust check failed: {t}"))
                    .hint("the firm verifies each client's first device by a phone call before anyone may write to or read from it: a client runs `sealpost whoami` to ask and, once called, to see the code to read; staff run `sealpost attest list`")
            }
            ClientError::Trust(t) => Self::new(Exit::Trust, format!("trust check failed: {t}"))
                .hint("nothing was trusted or changed; if this repeats, the relay may be misbehaving: tell your firm's security team"),
            ClientError::NoRoster(m) => Self::failure(format!("no organisation roster: {m}"))
                .hint("the firm publishes roster version 1 with `sealpost org roster publish`; devices must be enrolled with `--org`"),
            ClientError::NotAllowed(m) => Self::new(Exit::Refused, format!("not allowed: {m}")),
            e @ ClientError::ArchiveUnavailable(_) => Self::new(Exit::Unreachable, e.to_string())
                .hint("your firm records every conversation with clients (see `sealpost whoami`); try again in a moment, and tell your firm if it keeps failing"),
            ClientError::OnProbation { until_ms, refused } => {
                Self::on_probation(until_ms, &refused, sealpost_client::clock::now_ms())
            }
            ClientError::CodeMismatch => Self::new(
                Exit::Mismatch,
                "the code does NOT match the one the new device shows: no device was added",
            )
            .hint("if you did not start this request yourself, dismiss it with `sealpost device dismiss --link ID` and tell your firm (someone knows your account id); otherwise start again on the new device with `sealpost device link --restart ...` and confirm its new code"),
            ClientError::Timeout(what) => Self::failure(format!("timed out waiting for {what}"))
                .hint("try again, with a longer --wait if the command has one"),
            ClientError::NotFound(m) => Self::failure(format!("not found: {m}")),
            e @ ClientError::OrgNotPinned { .. } => Self::usage(e.to_string()).hint(
                "ask your firm for the organisation fingerprint (64 hex digits) through a channel \
                 other than this relay, and run the command again with --org FINGERPRINT",
            ),
            e @ ClientError::OrgMismatch { .. } => Self::new(Exit::Trust, e.to_string()).hint(
                "check the organisation fingerprint with your firm out of band (a phone call to a \
                 number you already know, not one this relay gave you); if yours is right, this \
                 relay may be an impostor: do not use the fingerprint it announces",
            ),
        }
    }

    /// Translate an organisation-tooling error.
    pub fn from_org(e: OrgError) -> Self {
        match e {
            OrgError::NoStore(dir) => Self::new(
                Exit::NotEnrolled,
                format!("no organisation store in {}", dir.display()),
            )
            .hint(format!("create one with `sealpost org init --dir {}`", dir.display())),
            OrgError::Exists(dir) => Self::failure(format!(
                "{} already holds a Sealpost store; refusing to overwrite it",
                dir.display()
            ))
            .hint("choose another --dir; an organisation root is created once"),
            OrgError::WrongPassphrase => Self::new(Exit::Passphrase, "wrong passphrase for the organisation store")
                .hint("check SEALPOST_ORG_PASSPHRASE, or type the passphrase chosen at `sealpost org init`"),
            OrgError::Locked(dir) => Self::new(
                Exit::Busy,
                format!("the organisation store in {} is in use by another process", dir.display()),
            ),
            e @ OrgError::WeakPassphrase => Self::usage(e.to_string()),
            e @ OrgError::Spec { .. } => Self::usage(e.to_string())
                .hint("see `sealpost org roster sign-genesis --help` and README.md (Organisation setup) for the format"),
            e @ OrgError::SignedRosterFile { .. } => Self::usage(e.to_string()),
            e @ OrgError::Trust(_) => Self::usage(e.to_string()),
            e @ (OrgError::Damaged(..) | OrgError::Io(..)) => Self::failure(e.to_string()),
        }
    }

    fn from_state(s: StateError) -> Self {
        match s {
            StateError::WrongPassphrase => Self::new(Exit::Passphrase, "wrong passphrase")
                .hint("check SEALPOST_PASSPHRASE, or type the passphrase you chose at `sealpost init`"),
            StateError::Locked(dir) => Self::new(
                Exit::Busy,
                format!("the profile in {} is in use by another sealpost process", dir.display()),
            )
            .hint("stop the other process (for example a running `sealpost listen`) and try again"),
            StateError::NoProfile(dir) => {
                Self::new(Exit::NotEnrolled, format!("no Sealpost profile in {}", dir.display())).hint(
                    "create one with `sealpost init`, then enrol it with `sealpost enroll --relay ADDR --ca FINGERPRINT --account ID --code CODE`",
                )
            }
            StateError::Exists(dir) => Self::failure(format!("a Sealpost profile already exists in {}", dir.display()))
                .hint("use it as it is, or choose another directory with --home"),
            StateError::WeakPassphrase => Self::usage(StateError::WeakPassphrase.to_string()),
            other => Self::failure(other.to_string()),
        }
    }

    fn from_net(n: NetError, at: &str) -> Self {
        match n {
            NetError::Connection(d) => Self::unreachable(at, d),
            NetError::Timeout(d) => Self::unreachable(
                at,
                format!("no answer within {}", humantime::format_duration(d)),
            ),
            NetError::Tls(d) => Self::unreachable(at, format!("TLS: {d}")),
            NetError::UntrustedRelay(why) => Self::new(
                Exit::Trust,
                format!(
                    "the relay at {at} answered, but its certificate does not match the pinned CA fingerprint ({why}); nothing was sent"
                ),
            )
            .hint("check the CA fingerprint (--ca) with your firm out of band; if it is right, whoever answers at this address is not your firm's relay: tell your firm's security team"),
            NetError::Refused {
                code,
                message,
                retry_after_ms,
            } => {
                let e = Self::new(Exit::Refused, format!("the relay refused: {message}"));
                match code {
                    ErrorCode::EnrollmentRefused => Self::new(
                        Exit::Refused,
                        format!("the relay refused the enrolment code: {message}"),
                    )
                    .hint("codes work once and expire; ask your firm for a new one"),
                    ErrorCode::AuthFailed => Self::new(
                        Exit::Refused,
                        format!("the relay did not accept this device: {message}"),
                    )
                    .hint("the device may have been removed from the account; contact your firm"),
                    ErrorCode::Forbidden => e.hint("the routing policy does not allow this; `sealpost contacts` lists whom you can write to"),
                    ErrorCode::RateLimited => match retry_after_ms {
                        Some(ms) => e.hint(format!("rate limited: try again in {:.1} s", ms as f64 / 1000.0)),
                        None => e.hint("rate limited: try again later"),
                    },
                    ErrorCode::QuotaExceeded => e.hint("the recipient's mailbox is full; try again once they have read their messages"),
                    ErrorCode::NotFound => e.hint("check the account id; `sealpost contacts` lists whom you can write to"),
                    ErrorCode::Conflict => e.hint("something already in progress conflicts with this: finish it or let it lapse, then try again"),
                    _ => e,
                }
            }
            other => Self::failure(other.to_string()),
        }
    }

    /// This device is not enrolled.
    pub fn not_enrolled() -> Self {
        Self::new(Exit::NotEnrolled, "this device is not enrolled yet").hint(
            "ask your firm for an enrolment code, then run `sealpost enroll --relay ADDR --ca FINGERPRINT --account ID --code CODE`",
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn probation_is_said_as_a_duration_and_a_utc_time_with_the_ms_in_json() {
        let now = 1_800_000_000_000;
        let until = now + 3_600_000 + 30_000;
        let e = CliError::from_client(
            ClientError::OnProbation {
                until_ms: until,
                refused: "send approval messages".into(),
            },
            None,
        );
        assert_eq!(e.exit, Exit::Refused);
        assert!(!e.message.contains(&until.to_string()), "{}", e.message);
        assert!(
            e.message.contains("send approval messages"),
            "{}",
            e.message
        );
        assert_eq!(e.details["probation_until_ms"], until);
        let e = CliError::on_probation(until, "send approval messages", now);
        assert!(e.message.contains("about 1h 1m more"), "{}", e.message);
        assert!(
            e.message.contains("(until 2027-01-15 09:00:30 UTC)"),
            "{}",
            e.message
        );
        assert_eq!(e.details["probation_until_ms"], until);
        assert_eq!(e.details["probation_left_ms"], 3_630_000);
        // Past its end (a clock skew): never "0s".
        let e = CliError::on_probation(now, "x", now + 5);
        assert!(e.message.contains("about 1m more"), "{}", e.message);
    }
}
