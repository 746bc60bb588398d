//! TLS material: the development CA generated on first start, production PEM files,
//! the relay's persistent QUIC secrets, and the rustls/quinn server configuration.
//!
//! TLS 1.3 only, ALPN `sealpost/1`, no 0-RTT (`max_early_data_size = 0`), so nothing
//! that changes state can be replayed by the network.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sealpost_protocol::wire::ALPN;
use zeroize::Zeroizing;

/// File names in the development certificate directory.
pub const DEV_CA_CERT: &str = "ca.pem";
/// The development CA's private key (only ever needed to issue the dev server cert).
pub const DEV_CA_KEY: &str = "ca.key.pem";
/// The server certificate.
pub const DEV_SERVER_CERT: &str = "server.pem";
/// The server key.
pub const DEV_SERVER_KEY: &str = "server.key.pem";
/// The CA fingerprint clients pin (hex SHA-256 of the CA certificate DER).
pub const CA_FINGERPRINT_FILE: &str = "ca.fingerprint";
/// The relay's persistent QUIC secrets (stateless-reset key and address-validation token key).
pub const RELAY_SECRETS_FILE: &str = "relay-secrets.bin";

/// A TLS setup failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The relay secrets file is malformed.
    #[error("{0}: must hold exactly 64 bytes")]
    BadSecrets(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Certificates and key the relay serves.
pub struct ServerIdentity {
    /// The chain: server certificate first, then the CA (so clients can pin the CA by
    /// fingerprint without holding its file).
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the CA certificate's DER, which clients pin.
    pub ca_fingerprint: [u8; 32],
}

/// SHA-256 of a certificate's DER encoding.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    sealpost_protocol::crypto::sha256(&[cert.as_ref()])
}

/// Write `data` to `path` atomically (temp file, fsync, rename, fsync the directory),
/// with mode 0600 on Unix when `private`.
pub fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), TlsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let _ = private;
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Load the development CA and server certificate from `dir`, generating them on first
/// start. `names` are the DNS names and IP addresses the server certificate covers.
/// Returns the identity and whether it was newly generated.
pub fn load_or_generate_dev(
    dir: &Path,
    names: &[String],
) -> Result<(ServerIdentity, bool), TlsError> {
    let files = [DEV_CA_CERT, DEV_CA_KEY, DEV_SERVER_CERT, DEV_SERVER_KEY];
    if files.iter().all(|f| dir.join(f).exists()) {
        let id = load_pem(
            &dir.join(DEV_SERVER_CERT),
            &dir.join(DEV_SERVER_KEY),
            Some(&dir.join(DEV_CA_CERT)),
        )?;
        return Ok((id, false));
    }
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sealpost Development CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sealpost-relay");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    write_atomic(&dir.join(DEV_CA_CERT), ca_cert.pem().as_bytes(), false)?;
    write_atomic(
        &dir.join(DEV_CA_KEY),
        Zeroizing::new(ca_key.serialize_pem()).as_bytes(),
        true,
    )?;
    write_atomic(&dir.join(DEV_SERVER_CERT), cert.pem().as_bytes(), false)?;
    write_atomic(
        &dir.join(DEV_SERVER_KEY),
        Zeroizing::new(key.serialize_pem()).as_bytes(),
        true,
    )?;
    let id = load_pem(
        &dir.join(DEV_SERVER_CERT),
        &dir.join(DEV_SERVER_KEY),
        Some(&dir.join(DEV_CA_CERT)),
    )?;
    Ok((id, true))
}

/// Load a production identity from PEM files: `cert` holds the server certificate and
/// any intermediates; `ca`, if given, is appended to the chain and is what clients pin
/// (otherwise the last certificate of `cert` is taken as the pinned CA).
pub fn load_pem(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<ServerIdentity, TlsError> {
    let read_certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(p)
            .map_err(|e| TlsError::Pem {
                path: p.to_owned(),
                what: e.to_string(),
            })?
            .collect();
        let certs = certs.map_err(|e| TlsError::Pem {
            path: p.to_owned(),
            what: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: p.to_owned(),
                what: "no certificate found".into(),
            });
        }
        Ok(certs)
    };
    let mut chain = read_certs(cert)?;
    if let Some(ca) = ca {
        let ca_certs = read_certs(ca)?;
        chain.extend(ca_certs.into_iter().take(1));
    }
    let pinned = chain.last().cloned().ok_or(TlsError::Pem {
        path: cert.to_owned(),
        what: "empty chain".into(),
    })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        what: e.to_string(),
    })?;
    Ok(ServerIdentity {
        ca_fingerprint: fingerprint(&pinned),
        chain,
        key,
    })
}

/// The relay's persistent QUIC secrets: 32 bytes for the stateless-reset HMAC key and
/// 32 for the address-validation token key. Kept across restarts so that resets and
/// Retry tokens issued before a restart stay valid.
pub struct RelaySecrets(Zeroizing<[u8; 64]>);

impl RelaySecrets {
    /// Load from `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, TlsError> {
        if path.exists() {
            let bytes = Zeroizing::new(fs::read(path).map_err(io_err(path))?);
            let arr: [u8; 64] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| TlsError::BadSecrets(path.to_owned()))?;
            return Ok(Self(Zeroizing::new(arr)));
        }
        let mut arr = Zeroizing::new([0u8; 64]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut arr[..]);
        write_atomic(path, &arr[..], true)?;
        Ok(Self(arr))
    }

    fn reset_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0[..32])
    }

    fn token_key(&self) -> ring::hkdf::Prk {
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"sealpost-relay-token-key")
            .extract(&self.0[32..])
    }
}

/// QUIC transport limits.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportLimits {
    /// Concurrent bidirectional streams a device may open.
    pub max_concurrent_bidi_streams: u32,
    /// Concurrent unidirectional streams a device may open.
    pub max_concurrent_uni_streams: u32,
    /// Per-stream receive window, bytes.
    pub stream_receive_window: u32,
    /// Per-connection receive window, bytes.
    pub receive_window: u32,
    /// Per-connection send window, bytes.
    pub send_window: u64,
    /// Idle timeout (a duration, as everywhere in the configuration).
    #[serde(
        rename = "idle_timeout",
        alias = "idle_timeout_secs",
        with = "crate::config::duration_secs"
    )]
    pub idle_timeout_secs: u64,
    /// Keep-alive interval the relay sends (`"0s"` = none; clients keep alive).
    #[serde(
        rename = "keep_alive",
        alias = "keep_alive_secs",
        with = "crate::config::duration_secs"
    )]
    pub keep_alive_secs: u64,
    /// Receive and send buffer of the UDP socket, bytes. The kernel's default (about
    /// 200 KiB on Linux) drops datagrams as soon as a burst outruns the relay for a few
    /// milliseconds, and QUIC then retransmits and backs off; the kernel caps the value
    /// at `net.core.rmem_max` / `wmem_max` (the relay logs what it got).
    pub udp_buffer_bytes: usize,
    /// Ack-eliciting packets the relay asks a device to receive before it must send an
    /// ACK (QUIC ACK frequency; ACKs still go out within the max ACK delay). Fewer
    /// ACK-only packets under load; 1 is QUIC's usual every-other-packet.
    pub ack_eliciting_threshold: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_concurrent_bidi_streams: 4,
            max_concurrent_uni_streams: 0,
            stream_receive_window: 1024 * 1024,
            receive_window: 4 * 1024 * 1024,
            send_window: 4 * 1024 * 1024,
            idle_timeout_secs: 60,
            keep_alive_secs: 0,
            udp_buffer_bytes: 4 * 1024 * 1024,
            ack_eliciting_threshold: 8,
        }
    }
}

/// Build the quinn endpoint and server configurations.
pub fn quinn_configs(
    identity: ServerIdentity,
    secrets: &RelaySecrets,
    limits: &TransportLimits,
) -> Result<(quinn::EndpointConfig, quinn::ServerConfig), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: nothing a client sends can be replayed by the network.
    tls.max_early_data_size = 0;
    tls.send_half_rtt_data = false;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Pem {
            path: PathBuf::from("<tls>"),
            what: e.to_string(),
        })?;

    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_concurrent_bidi_streams.into())
        .max_concurrent_uni_streams(limits.max_concurrent_uni_streams.into())
        .stream_receive_window(limits.stream_receive_window.into())
        .receive_window(limits.receive_window.into())
        .send_window(limits.send_window)
        .max_idle_timeout(
            quinn::IdleTimeout::try_from(Duration::from_secs(
                limits.idle_timeout_secs.clamp(1, 3600),
            ))
            .ok(),
        )
        .keep_alive_interval(
            (limits.keep_alive_secs > 0).then(|| Duration::from_secs(limits.keep_alive_secs)),
        );

    let mut ack_frequency = quinn::AckFrequencyConfig::default();
    ack_frequency.ack_eliciting_threshold(limits.ack_eliciting_threshold.max(1).into());
    transport.ack_frequency_config(Some(ack_frequency));

    let mut server = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(secrets.token_key()));
    server.transport_config(Arc::new(transport));
    server.migration(true);
    server.retry_token_lifetime(Duration::from_secs(30));
    let endpoint = quinn::EndpointConfig::new(Arc::new(secrets.reset_key()));
    Ok((endpoint, server))
}
