//! Server processes: free ports, waiting for a server to listen, and killing
//! a server with every process it started (found through `/proc`).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A free loopback port (another process may take it first; tests accept that).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_for_port(port: u16, what: &str, child: &mut Child) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "{what} exited early with {status}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::other(format!(
        "{what} did not listen on port {port} within 20s"
    )))
}

/// A server process, killed when dropped together with every process it started
/// (git-daemon's and lighttpd's children, sshd's per-connection sessions).
///
/// The server stays in the test's process group, so that whatever kills the
/// test's group (nextest on a timeout, Ctrl-C on a terminal) kills it too; on
/// drop, its process tree is found through `/proc` and killed.
#[derive(Debug)]
pub(crate) struct Guard(pub(crate) Child);

impl Guard {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        kill_tree(self.0.id());
        let _ = self.0.wait();
    }
}

/// Kill `root` and all its descendants. The tree is frozen first (SIGSTOP, from
/// the root down, each process seen stopped before its children are listed) so
/// that nothing forks while it is collected, and a child whose parent died
/// first is not lost to init; then every process in it gets SIGKILL.
pub fn kill_tree(root: u32) {
    use rustix::process::{Pid, Signal, kill_process};
    let signal = |pid: u32, signal: Signal| {
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, signal);
        }
    };
    let mut tree = Vec::new();
    let mut next = vec![root];
    while !next.is_empty() {
        for &pid in &next {
            signal(pid, Signal::STOP);
        }
        for &pid in &next {
            wait_until_stopped(pid);
        }
        tree.extend_from_slice(&next);
        next = processes()
            .into_iter()
            .filter(|p| tree.contains(&p.ppid) && !tree.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
    }
    for pid in tree {
        signal(pid, Signal::KILL);
    }
}

/// Wait (at most a second) until `pid` is stopped, dead or gone.
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match Proc::read(pid) {
            Some(p) if p.is_alive() && !matches!(p.state, 'T' | 't') => {
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => return,
        }
    }
}

/// A process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `D`, `T` (stopped), `Z` (zombie: dead, not yet reaped), ...
    pub state: char,
}

impl Proc {
    /// Read `/proc/<pid>/stat`; `None` when there is no such process.
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(Self { pid, ppid, state })
    }

    /// Whether it still runs (a zombie has ended: it only waits to be reaped).
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Every process on the machine.
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(Proc::read)
        .collect()
}

/// `pid` and every process it started, directly or not, that is still its descendant.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let all = processes();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    tree
}

/// Whether the process `pid` is alive (not gone, not a zombie).
pub fn is_alive(pid: u32) -> bool {
    Proc::read(pid).is_some_and(|p| p.is_alive())
}

/// The last `lines` lines of a log file (nothing when it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
