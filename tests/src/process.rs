//! The relay as a separate process, for crash (SIGKILL), signal and metrics tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealpost_client::net::RelayAddress;

/// A relay child process.
pub struct RelayProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its CA fingerprint.
    pub ca_fingerprint: [u8; 32],
    /// Everything it wrote to stderr so far (logs).
    pub log: Arc<Mutex<String>>,
}

/// Write a relay configuration for a test directory: dev certificates in `dir/certs`,
/// data in `dir/data`, high limits, metrics at the given address or off.
pub fn write_config(dir: &Path, metrics: Option<SocketAddr>) -> PathBuf {
    write_config_with(dir, metrics, "")
}

/// [`write_config`] with extra `[limits]` lines (each ending in a newline), for example
/// `"max_log_entry_age_secs = 2592000\n"`.
pub fn write_config_with(dir: &Path, metrics: Option<SocketAddr>, limits_extra: &str) -> PathBuf {
    let metrics_line = match metrics {
        Some(m) => format!("metrics_listen = \"{m}\"\n"),
        // Tests run in parallel and the default metrics port is fixed.
        None => "metrics_listen = \"off\"\n".to_owned(),
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n{metrics_line}backend = \"sqlite\"\n\n[tls]\ndev_dir = \"{certs}\"\n\n[limits]\nsend_rate = {{ per_second = 100000.0, burst = 100000.0 }}\nauth_failures_per_ip = {{ per_second = 1000.0, burst = 1000.0 }}\n{limits_extra}",
        data = dir.join("data").display(),
        certs = dir.join("certs").display(),
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

impl RelayProcess {
    /// Start `bin` with `config`, wait until it listens (at most 30 s).
    pub fn start(bin: &Path, config: &Path, extra_env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !extra_env.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, [u8; 32])>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut addr = None;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix("sealpost-relay listening on ") {
                        addr = rest
                            .split_whitespace()
                            .next()
                            .and_then(|a| a.parse::<SocketAddr>().ok());
                    }
                    if let Some(fp) = line.strip_prefix("CA fingerprint (clients pin this): ") {
                        let mut out = [0u8; 32];
                        if let (Some(a), Ok(())) = (addr, hex::decode_to_slice(fp.trim(), &mut out))
                        {
                            let _ = tx.send((a, out));
                        }
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let (addr, ca_fingerprint) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "relay did not start; log:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        Self {
            child,
            addr,
            ca_fingerprint,
            log,
        }
    }

    /// How clients reach it.
    pub fn address(&self) -> RelayAddress {
        RelayAddress {
            addr: self.addr,
            server_name: "localhost".into(),
            ca_fingerprint: self.ca_fingerprint,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL it and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM and wait (at most `within`) for it to exit; returns its exit code.
    pub fn terminate(mut self, within: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
