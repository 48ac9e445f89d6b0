//! The programs the testbed runs: whether they are installed, and running one.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether `program` is on PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

pub(crate) fn require(program: &str) -> io::Result<()> {
    if installed(program) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{program}` is not installed; run `cargo xtask ci --provision-only` first"
        )))
    }
}

/// Run a command and return its trimmed stdout; its output is in the error if it fails.
pub fn run(program: &str, args: &[&str], dir: Option<&Path>) -> io::Result<String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .map_err(|e| io::Error::other(format!("{program}: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

pub(crate) fn require_file(path: &str, package: &str) -> io::Result<()> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{path} is missing (Debian package {package}); run `cargo xtask ci --provision-only` first"
        )))
    }
}
