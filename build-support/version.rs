//! Build script shared by the relay, the client and the test package (which builds both
//! binaries from their own `main.rs`): sets `SEALPOST_COMMIT` (the git commit, or
//! `unknown` outside a git checkout) and `SEALPOST_VERSION` (`0.1.0 (commit abc123)`), used
//! by `--version` and the relay's `sealpost_build_info` metric.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".into());
    println!("cargo:rustc-env=SEALPOST_COMMIT={commit}");
    println!("cargo:rustc-env=SEALPOST_VERSION={version} (commit {commit})");
    // Run again when HEAD moves (a commit, a checkout).
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
