//! `make all WHAT=cmd/kubemark` in the checkout: the user's environment passes
//! through, every line goes to a log file and out as an event.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events};

/// How many lines of the log an error shows.
const TAIL_LINES: usize = 25;

/// The binary `make` produced, and where to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub path: PathBuf,
    /// `os/arch` when `KUBE_BUILD_PLATFORMS` chose a single platform.
    pub platform: Option<String>,
}

/// Find `program` on PATH, as the shell would.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Check that the tools the build needs are installed: `make`, and `go` when the
/// checkout is a Go module (as kubernetes is).
pub fn check_tools(checkout: &Path) -> Result<()> {
    if find_on_path("make").is_none() {
        return Err(Error::MissingTool {
            program: "make".into(),
            needed_for: "build cmd/kubemark".into(),
        });
    }
    if checkout.join("go.mod").exists() && find_on_path("go").is_none() {
        return Err(Error::MissingTool {
            program: "go".into(),
            needed_for: format!("build cmd/kubemark ({} is a Go module)", checkout.display()),
        });
    }
    Ok(())
}

/// The platform `KUBE_BUILD_PLATFORMS` asks for, if it names exactly one.
pub fn requested_platform() -> Result<Option<String>> {
    let Ok(value) = std::env::var("KUBE_BUILD_PLATFORMS") else {
        return Ok(None);
    };
    let platforms: Vec<&str> = value.split_whitespace().collect();
    match platforms.as_slice() {
        [] => Ok(None),
        [one] if one.split('/').count() == 2 => Ok(Some((*one).to_owned())),
        _ => Err(Error::Usage(format!(
            "KUBE_BUILD_PLATFORMS=`{value}`: an image holds one binary, so name exactly one platform such as linux/amd64, or pass --platforms {} to build one image each under one index",
            platforms.join(",")
        ))),
    }
}

/// Run make for `platform` (`os/arch`, passed as `KUBE_BUILD_PLATFORMS`; `None`:
/// make's default, the host's), streaming its output to `log` and to events;
/// return the binary.
pub fn run(
    checkout: &Path,
    log: &Path,
    platform: Option<&str>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Binary> {
    let platform = platform.map(str::to_owned);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let mut log_file =
        std::fs::File::create(log).map_err(Error::io("creating the build log", log))?;
    let mut command = duct::cmd("make", ["all", "WHAT=cmd/kubemark"]).dir(checkout);
    command = match &platform {
        Some(p) => command.env("KUBE_BUILD_PLATFORMS", p),
        None => command.env_remove("KUBE_BUILD_PLATFORMS"),
    };
    let handle = command
        .stderr_to_stdout()
        .stdin_null()
        .unchecked()
        // Its own process group, so that cancelling stops make and every compiler it started.
        .before_spawn(|command| {
            std::os::unix::process::CommandExt::process_group(command, 0);
            Ok(())
        })
        .reader()
        .map_err(|e| Error::MissingTool {
            program: "make".into(),
            needed_for: format!("build cmd/kubemark ({e})"),
        })?;
    let group = handle.pids().first().copied();
    let guard = crate::event::on_cancel(cancel, move || {
        if let Some(pid) = group.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
    });
    let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
    let mut reader = BufReader::new(&handle);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(Error::io("reading make's output for", log))?;
        if n == 0 {
            break;
        }
        log_file
            .write_all(&line)
            .map_err(Error::io("writing", log))?;
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.clone());
        events.emit(Event::MakeOutput(text));
    }
    drop(guard);
    log_file.flush().map_err(Error::io("writing", log))?;
    let status = handle
        .try_wait()
        .map_err(Error::io("waiting for make in", checkout))?
        .map(|output| output.status);
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    match status {
        Some(status) if status.success() => {}
        other => {
            return Err(Error::MakeFailed {
                status: other.map_or("no exit status".into(), |s| s.to_string()),
                log: log.to_owned(),
                tail: tail.into_iter().collect(),
            });
        }
    }
    let binary = match &platform {
        Some(p) => checkout.join("_output/local/bin").join(p).join("kubemark"),
        None => checkout.join("_output/bin/kubemark"),
    };
    if !binary.is_file() {
        return Err(Error::NoBinary {
            binary,
            log: log.to_owned(),
        });
    }
    Ok(Binary {
        path: binary,
        platform,
    })
}
