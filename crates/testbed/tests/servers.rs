//! Every server the testbed starts is gone, with everything it started, once
//! the value that started it is dropped: nothing is left listening after a test.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use kubemark_testbed::{
    Fixture, GitDaemon, GitHttps, GitSsh, Registry, SshAgent, is_alive, process_tree,
};

/// Wait until `pid` has started at least `count - 1` descendants; return its tree.
fn tree_of_at_least(pid: u32, count: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tree = process_tree(pid);
        if tree.len() >= count || Instant::now() > deadline {
            return tree;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes of `tree` still alive a while after the drop (a killed
/// process takes a moment to end), with their command lines.
fn survivors(tree: &[u32]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = tree.iter().copied().filter(|p| is_alive(*p)).collect();
        if alive.is_empty() || Instant::now() > deadline {
            return alive
                .iter()
                .map(|pid| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    format!(
                        "{pid}: {}",
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    )
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn git_daemon_and_every_process_it_started_are_gone_after_drop() {
    let dir = tempfile::tempdir().unwrap();
    Fixture::create(dir.path(), "kubernetes").unwrap();
    let daemon = GitDaemon::start(dir.path()).unwrap();
    let port = daemon.port;
    kubemark_testbed::run("git", &["ls-remote", &daemon.url("kubernetes")], None).unwrap();
    // A client that connected and said nothing yet: the daemon serves it in a child of its own.
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let tree = tree_of_at_least(daemon.pid(), 2);
    assert!(
        tree.len() >= 2,
        "the daemon serves the open connection in a child: {tree:?}"
    );

    drop(daemon);
    let left = survivors(&tree);
    assert!(
        left.is_empty(),
        "still running after the GitDaemon was dropped: {left:?}"
    );
    assert!(!listening(port), "nothing listens on {port} any more");
    drop(client);
}

#[test]
fn registry_https_ssh_servers_and_the_agent_are_gone_after_drop() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    Fixture::create(&repos, "kubernetes").unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None).unwrap();
    let https = GitHttps::start(&repos, &dir.path().join("https"), None).unwrap();
    let home = dir.path().join("home");
    let ssh = GitSsh::start(&repos, &dir.path().join("ssh"), &home).unwrap();
    let agent = SshAgent::start(&dir.path().join("agent.sock")).unwrap();
    // An ssh client connected to sshd: sshd serves it in children (in a session of their own).
    let _ssh_client = TcpStream::connect(("127.0.0.1", ssh.port)).unwrap();
    let ssh_tree = tree_of_at_least(ssh.pid(), 2);
    let ports = [
        registry.addr.rsplit(':').next().unwrap().parse().unwrap(),
        https.port,
        ssh.port,
    ];
    let mut trees = Vec::new();
    for pid in [registry.pid(), https.pid(), agent.pid()] {
        trees.extend(process_tree(pid));
    }
    trees.extend(ssh_tree);

    drop((registry, https, ssh, agent));
    let left = survivors(&trees);
    assert!(left.is_empty(), "still running after the drop: {left:?}");
    for port in ports {
        assert!(!listening(port), "nothing listens on {port} any more");
    }
}
