//! Relay configuration: built-in defaults, overridden by a TOML file, overridden by
//! environment variables and flags (see `main.rs`). Every bound a peer can push against
//! is here, with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use sealpost_protocol::trust::OrgFingerprint;

use crate::limits::Rate;
use crate::tls::TransportLimits;

/// Where the TLS identity comes from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Directory of the development CA and server certificate, generated on first start
    /// when `cert` and `key` are not set.
    pub dev_dir: PathBuf,
    /// Names (DNS or IP) the development server certificate covers.
    pub dev_names: Vec<String>,
    /// Production: PEM server certificate (and intermediates).
    pub cert: Option<PathBuf>,
    /// Production: PEM private key.
    pub key: Option<PathBuf>,
    /// Production: PEM CA certificate clients pin (appended to the chain).
    pub ca: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            dev_dir: PathBuf::from("certs/dev"),
            dev_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            cert: None,
            key: None,
            ca: None,
        }
    }
}

/// Storage backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Embedded SQLite in the data directory (durable; the default).
    Sqlite,
    /// In memory (tests and benchmarks; loses everything on exit).
    Memory,
}

/// Limits on what peers may do.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most concurrent connections; further ones are refused.
    pub max_connections: usize,
    /// Above this many connections, unvalidated addresses must complete a Retry first.
    pub retry_above_connections: usize,
    /// Largest envelope body accepted, bytes (at most the protocol's MAX_BODY_LEN).
    pub max_envelope_bytes: usize,
    /// Most pending envelopes per recipient device.
    pub mailbox_max_count: u64,
    /// Most pending body bytes per recipient device.
    pub mailbox_max_bytes: u64,
    /// How long an undelivered envelope is kept (default 30 days). Like every duration in
    /// the configuration: a string such as `"30d"`, `"90s"` or `"1h 30m"` (humantime), or
    /// a number of seconds; the key's older name with `_secs` is still read.
    #[serde(
        rename = "envelope_ttl",
        alias = "envelope_ttl_secs",
        with = "crate::config::duration_secs"
    )]
    pub envelope_ttl_secs: u64,
    /// Envelopes a device may send.
    pub send_rate: Rate,
    /// Failed authentications or enrolments per remote IP address.
    pub auth_failures_per_ip: Rate,
    /// Failed authentications per device.
    pub auth_failures_per_device: Rate,
    /// Bundle fetches per requesting device.
    pub bundle_fetch_per_device: Rate,
    /// Bundle fetches per (requesting device, target account).
    pub bundle_fetch_per_pair: Rate,
    /// Other requests of an authenticated device (prekey uploads, device and contact
    /// lists, drains); `send` and `ack` have `send_rate` and the delivery window.
    pub control_requests_per_device: Rate,
    /// Distinct keys each rate limiter tracks at most.
    pub rate_limit_max_keys: usize,
    /// When a device's one-time prekeys fall below this, it is told to upload more.
    pub prekey_low_watermark: u32,
    /// Envelopes delivered to a device and not yet acknowledged, at most.
    pub delivery_window: usize,
    /// Undecodable frames tolerated on one connection before it is closed.
    pub max_bad_frames: u32,
    /// How long a new connection has to open its control stream.
    #[serde(
        rename = "stream_open_timeout",
        alias = "stream_open_timeout_secs",
        with = "crate::config::duration_secs"
    )]
    pub stream_open_timeout_secs: u64,
    /// How long a connection has to authenticate.
    #[serde(
        rename = "auth_timeout",
        alias = "auth_timeout_secs",
        with = "crate::config::duration_secs"
    )]
    pub auth_timeout_secs: u64,
    /// Most attachment bytes stored (and reserved by uploads in progress) on this relay.
    pub blob_max_total_bytes: u64,
    /// Attachment transfer streams open at once on one connection.
    pub blob_transfers_per_connection: usize,
    /// How long an attachment transfer may go without progress before it is reset.
    #[serde(
        rename = "blob_idle_timeout",
        alias = "blob_idle_timeout_secs",
        with = "crate::config::duration_secs"
    )]
    pub blob_idle_timeout_secs: u64,
    /// Requests before authentication that concern device linking (`link_start`,
    /// `link_poll`, `link_sign`), per remote IP address. The reference client's poll
    /// schedule (`sealpost_client::trust::link_poll_delay`: 300 ms for 3 s, then every
    /// 3 s) is sized for the default, 1 a second with a burst of 30 (docs/PROTOCOL.md
    /// §18.6).
    pub link_requests_per_ip: Rate,
    /// Pending link requests held at once, all accounts together (each account has at
    /// most `MAX_PENDING_LINKS`, 4). A new request beyond either bound evicts the oldest
    /// request that no device of its account (or, for a recovery, no staff device) has
    /// offered on.
    pub max_pending_links: usize,
    /// How long a link request lives while nobody has offered on it (linking is
    /// interactive); once offered it lives 24 hours from the offer, so a recovery can wait
    /// for its approvals. At most 24 hours.
    #[serde(
        rename = "link_lifetime",
        alias = "link_lifetime_secs",
        with = "crate::config::duration_secs"
    )]
    pub link_lifetime_secs: u64,
    /// Oldest a device-signed log entry (or an enrolment's genesis entry) may be when it
    /// reaches the relay. Entries are dated by their signers and a device's
    /// cooling-off runs from that date, so this bounds how much of the cooling-off a
    /// back-dated entry can skip. Quorum-carried entries (recovery, unfreeze) are bounded
    /// by the expiry of their approvals instead.
    #[serde(
        rename = "max_log_entry_age",
        alias = "max_log_entry_age_secs",
        with = "crate::config::duration_secs"
    )]
    pub max_log_entry_age_secs: u64,
    /// Accounts whose verified device set the relay keeps in memory for the send rules.
    pub trust_cache_accounts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            retry_above_connections: 5_000,
            max_envelope_bytes: sealpost_protocol::envelope::MAX_BODY_LEN,
            mailbox_max_count: 10_000,
            mailbox_max_bytes: 64 * 1024 * 1024,
            envelope_ttl_secs: 30 * 24 * 3600,
            send_rate: Rate::new(200.0, 2000.0),
            auth_failures_per_ip: Rate::new(0.2, 20.0),
            auth_failures_per_device: Rate::new(0.1, 5.0),
            bundle_fetch_per_device: Rate::new(5.0, 100.0),
            bundle_fetch_per_pair: Rate::new(0.5, 20.0),
            control_requests_per_device: Rate::new(10.0, 100.0),
            rate_limit_max_keys: 100_000,
            prekey_low_watermark: 20,
            delivery_window: 256,
            max_bad_frames: 16,
            stream_open_timeout_secs: 10,
            auth_timeout_secs: 30,
            blob_max_total_bytes: 10 * 1024 * 1024 * 1024,
            blob_transfers_per_connection: 3,
            blob_idle_timeout_secs: 30,
            link_requests_per_ip: Rate::new(1.0, 30.0),
            max_pending_links: 10_000,
            link_lifetime_secs: 3600,
            max_log_entry_age_secs: 3600,
            trust_cache_accounts: 100_000,
        }
    }
}

/// The relay's configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address QUIC listens on.
    pub listen: SocketAddr,
    /// Data directory (database, relay secrets).
    pub data_dir: PathBuf,
    /// Prometheus metrics HTTP address (keep it local); `"off"` disables metrics.
    #[serde(with = "metrics_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Storage backend.
    pub backend: Backend,
    /// TLS identity.
    pub tls: TlsConfig,
    /// QUIC transport limits.
    pub transport: TransportLimits,
    /// Peer limits.
    pub limits: Limits,
    /// The organisation fingerprint (64 hex digits) every device pins: the relay verifies
    /// the roster chain from it. Without one the relay serves no roster and refuses
    /// `publish_roster`, `send_notice` and quorum-carried log entries (docs/OPERATIONS.md).
    #[serde(with = "org_fp", skip_serializing_if = "Option::is_none")]
    pub org_fingerprint: Option<OrgFingerprint>,
    /// What the relay logs: a `tracing` filter such as `info` or
    /// `info,sealpost_server::conn=debug` (`RUST_LOG`, when set, takes precedence).
    /// Re-read on SIGHUP.
    pub log_level: String,
    /// The transparency log's origin: the first line of its checkpoints and the name of
    /// its signing key (a schema-less URL such as `relay.example.com/log`). The key is
    /// `log-key.bin` in the data directory; `sealpost-relay audit key` prints it for the
    /// roster's `log_key`.
    pub log_origin: String,
    /// Security events: the rules, their retention, the SIEM export
    /// (docs/OPERATIONS.md, "Security events").
    pub security: crate::security::SecurityConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            data_dir: PathBuf::from("data"),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            backend: Backend::Sqlite,
            tls: TlsConfig::default(),
            transport: TransportLimits::default(),
            limits: Limits::default(),
            org_fingerprint: None,
            log_level: "info".into(),
            log_origin: crate::tlog::DEFAULT_LOG_ORIGIN.into(),
            security: crate::security::SecurityConfig::default(),
        }
    }
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Parsing failed.
    #[error("{0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The file or an environment variable does not fit the settings (unknown key,
    /// wrong type); the message names the key and where it came from.
    #[error("configuration: {0}")]
    Layer(String),
}

/// Prefix of the environment variables that set configuration keys; nested keys are
/// joined with `__`: `SEALPOST_RELAY_LIMITS__AUTH_TIMEOUT_SECS=60`,
/// `SEALPOST_RELAY_LIMITS__SEND_RATE__PER_SECOND=50`, `SEALPOST_RELAY_TLS__CERT=/etc/...`.
pub const ENV_PREFIX: &str = "SEALPOST_RELAY_";

/// Variables with [`ENV_PREFIX`] that are command-line options of the binary, not keys of
/// the configuration (lower-cased, without the prefix).
const ENV_NOT_KEYS: &[&str] = &[
    "config",
    "metrics",
    "memory",
    "log_format",
    "org_fingerprint",
];

impl Config {
    /// The configuration in layers: the built-in defaults, then the TOML file (if any),
    /// then every `SEALPOST_RELAY_*` environment variable naming a key ([`ENV_PREFIX`];
    /// `data_dir`, `listen` and `log_level` at the top, nested keys with `__`). Unknown
    /// keys, in the file or the environment, are refused. Not validated: call
    /// [`Config::validate`].
    pub fn layered(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        use figment::providers::{Env, Format, Serialized, Toml};
        let mut figment = figment::Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // Read it ourselves so that a missing file is an error, not an empty layer.
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
            let mut table = toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError::Parse(path.to_owned(), e))?;
            // Duration keys of earlier versions (`auth_timeout_secs = 30`) are read under
            // their names of now, so that the defaults layer does not hold both.
            for (section, old, new) in RENAMED_DURATIONS {
                if let Some(toml::Value::Table(t)) = table.get_mut(section) {
                    if let Some(v) = t.remove(old) {
                        if t.contains_key(new) {
                            return Err(ConfigError::Layer(format!(
                                "{}: {section}.{old} and {section}.{new} are the same setting; \
                                 keep {new}",
                                path.display()
                            )));
                        }
                        t.insert(new.to_owned(), v);
                    }
                }
            }
            let text = toml::to_string(&table)
                .map_err(|e| ConfigError::Layer(format!("{}: {e}", path.display())))?;
            figment = figment.merge(Toml::string(&text));
        }
        let env = Env::prefixed(ENV_PREFIX)
            .split("__")
            .map(|key| {
                for (section, old, new) in RENAMED_DURATIONS {
                    if key
                        .as_str()
                        .eq_ignore_ascii_case(&format!("{section}.{old}"))
                    {
                        return format!("{section}.{new}").into();
                    }
                }
                key.into()
            })
            .filter(|key| !ENV_NOT_KEYS.contains(&key.as_str().to_ascii_lowercase().as_str()));
        figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Layer(e.to_string()))
    }

    /// Read a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e))
    }

    /// Check values that would make the relay unsafe or unusable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = sealpost_protocol::tlog::KeyName::new(&self.log_origin) {
            return Err(ConfigError::Invalid(format!(
                "log_origin {:?}: {e} (write a schema-less URL such as \"relay.example.com/log\")",
                self.log_origin
            )));
        }
        let l = &self.limits;
        for (name, rate) in [
            ("send_rate", l.send_rate),
            ("auth_failures_per_ip", l.auth_failures_per_ip),
            ("auth_failures_per_device", l.auth_failures_per_device),
            ("bundle_fetch_per_device", l.bundle_fetch_per_device),
            ("bundle_fetch_per_pair", l.bundle_fetch_per_pair),
            ("control_requests_per_device", l.control_requests_per_device),
            ("link_requests_per_ip", l.link_requests_per_ip),
        ] {
            let sensible = rate.per_second.is_finite()
                && rate.per_second > 0.0
                && rate.burst.is_finite()
                && rate.burst >= 1.0;
            if !sensible {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} needs per_second > 0 and burst >= 1 (finite numbers), got \
                     per_second = {}, burst = {}",
                    rate.per_second, rate.burst
                )));
            }
        }
        for (name, secs) in [
            ("envelope_ttl", l.envelope_ttl_secs),
            ("auth_timeout", l.auth_timeout_secs),
            ("stream_open_timeout", l.stream_open_timeout_secs),
            ("max_log_entry_age", l.max_log_entry_age_secs),
        ] {
            if secs == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} must be at least one second"
                )));
            }
        }
        if l.mailbox_max_count == 0 || l.mailbox_max_bytes == 0 || l.rate_limit_max_keys == 0 {
            return Err(ConfigError::Invalid(
                "limits.mailbox_max_count, limits.mailbox_max_bytes and limits.rate_limit_max_keys \
                 must be positive"
                    .into(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(ConfigError::Invalid(format!(
                "log_level {:?} is not a tracing filter (e.g. \"info\" or \"info,sealpost_server=debug\")",
                self.log_level
            )));
        }
        if l.max_envelope_bytes == 0
            || l.max_envelope_bytes > sealpost_protocol::envelope::MAX_BODY_LEN
        {
            return Err(ConfigError::Invalid(format!(
                "limits.max_envelope_bytes must be 1..={}",
                sealpost_protocol::envelope::MAX_BODY_LEN
            )));
        }
        if l.delivery_window == 0 || l.delivery_window > 65_536 {
            return Err(ConfigError::Invalid(
                "limits.delivery_window must be 1..=65536".into(),
            ));
        }
        if l.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_connections must be positive".into(),
            ));
        }
        if l.blob_transfers_per_connection == 0 || l.blob_idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "limits.blob_transfers_per_connection and limits.blob_idle_timeout must be positive"
                    .into(),
            ));
        }
        if l.max_pending_links == 0 || l.trust_cache_accounts == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_pending_links and limits.trust_cache_accounts must be positive".into(),
            ));
        }
        if l.link_lifetime_secs == 0 || l.link_lifetime_secs > 86_400 {
            return Err(ConfigError::Invalid(
                "limits.link_lifetime must be 1s..=24h".into(),
            ));
        }
        self.security.check().map_err(ConfigError::Invalid)?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key must be set together".into(),
            ));
        }
        Ok(())
    }

    /// A configuration for tests: loopback port 0, in-memory store unless a data
    /// directory is used, no metrics listener, dev certificates under `dir`.
    pub fn for_tests(dir: &std::path::Path) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.join("data"),
            metrics_listen: None,
            backend: Backend::Memory,
            tls: TlsConfig {
                dev_dir: dir.join("certs"),
                ..TlsConfig::default()
            },
            ..Self::default()
        }
    }
}

/// Parse an organisation fingerprint as given in TOML, the environment or a flag.
pub fn parse_org_fingerprint(text: &str) -> Result<OrgFingerprint, ConfigError> {
    OrgFingerprint::from_hex(text).map_err(|_| {
        ConfigError::Invalid(
            "org_fingerprint must be 64 hex digits (spaces allowed), as `sealpost org init` prints it"
                .into(),
        )
    })
}

/// Duration settings renamed when durations came to be written as strings: (section,
/// name before, name now). The names before are still read.
const RENAMED_DURATIONS: [(&str, &str, &str); 8] = [
    ("limits", "envelope_ttl_secs", "envelope_ttl"),
    ("limits", "stream_open_timeout_secs", "stream_open_timeout"),
    ("limits", "auth_timeout_secs", "auth_timeout"),
    ("limits", "blob_idle_timeout_secs", "blob_idle_timeout"),
    ("limits", "link_lifetime_secs", "link_lifetime"),
    ("limits", "max_log_entry_age_secs", "max_log_entry_age"),
    ("transport", "idle_timeout_secs", "idle_timeout"),
    ("transport", "keep_alive_secs", "keep_alive"),
];

/// Durations in the configuration: written as humantime strings (`"30d"`, `"90s"`,
/// `"1h 30m"`), read from such a string or from a whole number of seconds (the form of
/// earlier versions, whose keys ended in `_secs`). Kept as whole seconds.
pub(crate) mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(Duration::from_secs(*secs)).to_string())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Seconds(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Written::deserialize(d)? {
            Written::Seconds(n) => Ok(n),
            Written::Text(t) => match t.trim().parse::<u64>() {
                // An environment variable arrives as text.
                Ok(n) => Ok(n),
                Err(_) => humantime::parse_duration(t.trim())
                    .map(|d| d.as_secs())
                    .map_err(|e| {
                        serde::de::Error::custom(format!(
                            "{t:?} is not a duration ({e}); write e.g. \"30d\", \"90s\" or \"1h 30m\""
                        ))
                    }),
            },
        }
    }
}

/// `org_fingerprint` in TOML: 64 hex digits.
mod org_fp {
    use sealpost_protocol::trust::OrgFingerprint;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<OrgFingerprint>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(fp) => s.serialize_str(&fp.to_hex()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OrgFingerprint>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_org_fingerprint(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// `metrics_listen` in TOML: an address, or `"off"`.
mod metrics_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "metrics_listen must be an address or \"off\", got {text:?}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsensical_values_are_refused_at_start_with_the_setting_named() {
        assert!(Config::default().validate().is_ok());
        assert!(Config::for_tests(std::path::Path::new("/tmp"))
            .validate()
            .is_ok());
        for (toml_text, named) in [
            ("[limits]\nenvelope_ttl_secs = 0\n", "envelope_ttl"),
            ("[limits]\nenvelope_ttl = \"0s\"\n", "envelope_ttl"),
            ("[limits]\nenvelope_ttl = \"fortnight\"\n", "envelope_ttl"),
            ("[limits]\nauth_timeout_secs = 0\n", "auth_timeout"),
            (
                "[limits]\nsend_rate = { per_second = -5.0, burst = 10.0 }\n",
                "send_rate",
            ),
            (
                "[limits]\ncontrol_requests_per_device = { per_second = 1.0, burst = 0.0 }\n",
                "control_requests_per_device",
            ),
            (
                "[limits]\nlink_requests_per_ip = { per_second = nan, burst = 3.0 }\n",
                "link_requests_per_ip",
            ),
            ("[limits]\nmailbox_max_count = 0\n", "mailbox_max_count"),
            ("log_level = \"info,=[\"\n", "log_level"),
            ("log_origin = \"my relay\"\n", "log_origin"),
            ("log_origin = \"\"\n", "log_origin"),
            (
                "[security.rules.bundle_fetch_burst]\nthreshold = 0\n",
                "bundle_fetch_burst",
            ),
            (
                "[security.rules.auth_failures_account]\nwindow = \"0s\"\n",
                "auth_failures_account",
            ),
            (
                "[security.rules.no_such_rule]\nthreshold = 1\n",
                "no_such_rule",
            ),
            ("[security]\nretention = \"0s\"\n", "retention"),
            ("[security]\nmax_events = 0\n", "max_events"),
        ] {
            // Refused when read (not a duration) or when checked (zero).
            let err = match toml::from_str::<Config>(toml_text) {
                Ok(c) => c.validate().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(named), "{toml_text}: {err}");
        }
    }

    #[test]
    fn metrics_can_be_switched_off_in_toml_and_defaults_round_trip() {
        let c: Config = toml::from_str("metrics_listen = \"off\"\n").unwrap();
        assert_eq!(c.metrics_listen, None);
        let c: Config = toml::from_str("metrics_listen = \"127.0.0.1:9999\"\n").unwrap();
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9999)))
        );
        assert!(toml::from_str::<Config>("metrics_listen = \"nonsense\"\n").is_err());
        let text = toml::to_string(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.metrics_listen, Config::default().metrics_listen);
        assert_eq!(
            back.limits.control_requests_per_device,
            Limits::default().control_requests_per_device
        );
        assert_eq!(back.org_fingerprint, None);
    }

    #[test]
    fn a_security_rule_table_changes_only_the_keys_it_names_and_round_trips() {
        use crate::security::{Measure, Measures, Rule, RuleSettings};
        let c: Config = toml::from_str(
            "[security]\nsiem_file = \"/tmp/siem.jsonl\"\n\
             [security.rules.auth_failures_account]\nthreshold = 3\nwindow = \"2m\"\n\
             measure = \"hold_sensitive\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let s = c.security.rules.get(Rule::AuthFailuresAccount);
        assert_eq!((s.threshold, s.window), (3, 120));
        assert_eq!(s.measure, Measures::NONE.with(Measure::HoldSensitive));
        assert_eq!(
            s.severity,
            RuleSettings::default_for(Rule::AuthFailuresAccount).severity
        );
        assert_eq!(
            c.security.rules.get(Rule::RateLimited),
            RuleSettings::default_for(Rule::RateLimited)
        );
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.security, c.security);
        // Several measures as a list; "none" among them counts for nothing; an unknown
        // name is refused.
        let c: Config = toml::from_str(
            "[security.rules.recovery_requested]\n\
             measure = [\"notify_devices\", \"hold_sensitive\", \"none\"]\n",
        )
        .unwrap();
        let m = c.security.rules.get(Rule::RecoveryRequested).measure;
        assert!(m.contains(Measure::NotifyDevices) && m.contains(Measure::HoldSensitive));
        assert!(!m.contains(Measure::RequireFreshLinkCode));
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.security, c.security);
        assert!(toml::from_str::<Config>(
            "[security.rules.recovery_requested]\nmeasure = \"call_the_police\"\n"
        )
        .is_err());
    }

    #[test]
    fn org_fingerprint_parses_from_toml_and_round_trips() {
        let hex = "0123456789abcdef".repeat(4);
        let c: Config = toml::from_str(&format!("org_fingerprint = \"{hex}\"\n")).unwrap();
        assert_eq!(c.org_fingerprint.map(|f| f.to_hex()), Some(hex.clone()));
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.org_fingerprint, c.org_fingerprint);
        // The grouped display form is accepted too.
        let grouped = hex
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        let c: Config = toml::from_str(&format!("org_fingerprint = \"{grouped}\"\n")).unwrap();
        assert_eq!(c.org_fingerprint.map(|f| f.to_hex()), Some(hex));
        assert!(toml::from_str::<Config>("org_fingerprint = \"abcd\"\n").is_err());
        assert!(parse_org_fingerprint(&"zz".repeat(32)).is_err());
    }
}
