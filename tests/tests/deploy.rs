//! The deployment files in `deploy/`: the example configuration names every setting and
//! validates; the systemd unit passes `systemd-analyze verify` (where the machine has it)
//! and its command line starts a relay that becomes ready; the container file is
//! well-formed and its entrypoint, with its environment, starts a relay that becomes
//! ready. (Building the image needs a container registry this CI does not reach.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sealpost_server::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_sealpost-relay-under-test");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(file)
}

fn keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            // A rate is one setting ({ per_second, burst }), not two.
            let is_rate = matches!(v, toml::Value::Table(t) if t.contains_key("per_second"));
            if matches!(v, toml::Value::Table(_)) && !is_rate {
                keys(&path, v, out);
            } else {
                out.insert(path);
            }
        }
    }
}

#[test]
fn the_example_configuration_names_every_setting_and_validates() {
    let path = deploy("relay.example.toml");
    let config = Config::from_file(&path).unwrap();
    config.validate().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut example = BTreeSet::new();
    keys("", &toml::from_str(&text).unwrap(), &mut example);
    let mut all = BTreeSet::new();
    keys(
        "",
        &toml::Value::try_from(Config::default()).unwrap(),
        &mut all,
    );
    let missing: Vec<_> = all.difference(&example).collect();
    assert!(
        missing.is_empty(),
        "settings missing from deploy/relay.example.toml: {missing:?}"
    );
    // The optional ones are documented, commented out.
    for optional in ["org_fingerprint", "cert", "key", "ca"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("# {optional} = "))),
            "{optional} is not documented"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Run `argv` (the binary replaced by the one under test) with `env`, wait until `/readyz`
/// answers 200 on `metrics_port`, then SIGTERM it and expect exit 0.
fn starts_and_becomes_ready(argv: &[String], env: &[(String, String)], metrics_port: u16) {
    let mut cmd = Command::new(BIN);
    cmd.args(&argv[1..])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("{argv:?} exited with {status}: {err}");
        }
        if http_get(metrics_port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready, "{argv:?} never became ready");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{argv:?}");
}

/// The example configuration, moved into `dir` (data, certificates) with loopback ports.
fn local_config(dir: &Path, metrics_port: u16) -> PathBuf {
    let text = std::fs::read_to_string(deploy("relay.example.toml"))
        .unwrap()
        .replace("listen = \"0.0.0.0:4433\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "data_dir = \"/var/lib/sealpost\"",
            &format!("data_dir = \"{}\"", dir.join("data").display()),
        )
        .replace(
            "metrics_listen = \"127.0.0.1:9464\"",
            &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        )
        .replace(
            "dev_dir = \"certs/dev\"",
            &format!("dev_dir = \"{}\"", dir.join("certs").display()),
        );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_its_command_starts_a_ready_relay() {
    let unit = std::fs::read_to_string(deploy("sealpost-relay.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let argv: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert_eq!(argv[0], "/usr/local/bin/sealpost-relay");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("KillSignal=SIGTERM"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("sealpost-relay.service");
        std::fs::write(&copy, unit.replace("/usr/local/bin/sealpost-relay", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("systemd-analyze is not installed: unit syntax not verified here");
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = local_config(dir.path(), port);
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| {
            if a == "/etc/sealpost/relay.toml" {
                config.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = if v == "/var/lib/sealpost" {
                dir.path().join("data").display().to_string()
            } else {
                v.to_owned()
            };
            (k.to_owned(), v)
        })
        .collect();
    assert!(env.iter().any(|(k, _)| k == "SEALPOST_RELAY_DATA_DIR"));
    starts_and_becomes_ready(&argv, &env, port);
}

#[test]
fn the_container_file_is_well_formed_and_its_entrypoint_starts_a_ready_relay() {
    let text = std::fs::read_to_string(deploy("Containerfile")).unwrap();
    // Join continuation lines, drop comments.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(t);
            instructions.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "a continuation line runs off the end");
    const KNOWN: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    for i in &instructions {
        let word = i.split_whitespace().next().unwrap();
        assert!(
            KNOWN.contains(&word),
            "unknown instruction {word:?} in {i:?}"
        );
    }
    assert!(instructions[0].starts_with("FROM "), "starts with FROM");
    let user = instructions.iter().rev().find(|i| i.starts_with("USER "));
    assert_eq!(
        user.map(String::as_str),
        Some("USER sealpost"),
        "runs unprivileged"
    );
    // Files it copies from the build context exist.
    for i in instructions
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
    {
        let src = i.split_whitespace().nth(1).unwrap();
        if src != "." {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(src)
                    .exists(),
                "{src} does not exist"
            );
        }
    }
    let entry = instructions
        .iter()
        .find_map(|i| i.strip_prefix("ENTRYPOINT "))
        .unwrap();
    let argv: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(argv[0], "/usr/local/bin/sealpost-relay");
    let mut env: Vec<(String, String)> = Vec::new();
    for i in instructions.iter().filter_map(|i| i.strip_prefix("ENV ")) {
        for kv in i.split_whitespace() {
            let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
            env.push((k.to_owned(), v.to_owned()));
        }
    }
    let expose: Vec<&str> = instructions
        .iter()
        .filter_map(|i| i.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(
        expose.contains(&"4433/udp") && expose.contains(&"9464/tcp"),
        "{expose:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = local_config(dir.path(), port);
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| {
            if a == "/etc/sealpost/relay.toml" {
                config.display().to_string()
            } else {
                a
            }
        })
        .collect();
    // The image's environment, with this machine's directory and loopback ports.
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "SEALPOST_RELAY_DATA_DIR" => (k, dir.path().join("data").display().to_string()),
            "SEALPOST_RELAY_LISTEN" => (k, "127.0.0.1:0".into()),
            "SEALPOST_RELAY_METRICS" => (k, format!("127.0.0.1:{port}")),
            _ => (k, v),
        })
        .collect();
    assert_eq!(env.len(), 3, "{env:?}");
    starts_and_becomes_ready(&argv, &env, port);
}
