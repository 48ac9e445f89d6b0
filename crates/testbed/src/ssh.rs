//! Git over ssh: key pairs, `known_hosts` lines, an `ssh-agent` and an `sshd`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{Guard, free_port, wait_for_port};
use crate::programs::{require, require_file, run};

/// A new ed25519 key pair without a passphrase: `file` and `file.pub`.
pub fn ssh_keygen(file: &Path) -> io::Result<()> {
    let file = file.display().to_string();
    let args = [
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "kubemark-testbed",
        "-f",
        &file,
    ];
    run("ssh-keygen", &args, None).map(drop)
}

/// The `known_hosts` line saying that 127.0.0.1:`port` has the key in `public_key_file`.
pub fn known_hosts_line(port: u16, public_key_file: &Path) -> io::Result<String> {
    let public = std::fs::read_to_string(public_key_file)?;
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    Ok(format!("[127.0.0.1]:{port} {}\n", key.join(" ")))
}

/// An `ssh-agent` of its own on `socket`, stopped when dropped.
#[derive(Debug)]
pub struct SshAgent {
    pub socket: PathBuf,
    _child: Guard,
}

impl SshAgent {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    pub fn start(socket: &Path) -> io::Result<Self> {
        require("ssh-agent")?;
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let guard = Guard(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "ssh-agent did not create its socket within 10s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            socket: socket.to_owned(),
            _child: guard,
        })
    }

    /// `ssh-add` the private key in `file`.
    pub fn add(&self, file: &Path) -> io::Result<()> {
        let output = Command::new("ssh-add")
            .arg(file)
            .env("SSH_AUTH_SOCK", &self.socket)
            .stdin(Stdio::null())
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ssh-add {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

/// Every repository under a base directory over `ssh://USER@127.0.0.1:PORT/<base>/<name>`:
/// an `sshd` of its own (the current user only, public keys only) with a host key
/// made for it, and a client key in `<home>/.ssh/id_ed25519` that it accepts.
#[derive(Debug)]
pub struct GitSsh {
    pub port: u16,
    base: PathBuf,
    user: String,
    /// The `known_hosts` line of this server's host key.
    pub known_hosts_line: String,
    _child: Guard,
}

impl GitSsh {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// Serve `base`; `dir` holds the configuration and keys; `home` gets the client key.
    pub fn start(base: &Path, dir: &Path, home: &Path) -> io::Result<Self> {
        const SSHD: &str = "/usr/sbin/sshd";
        require_file(SSHD, "openssh-server")?;
        require("ssh-keygen")?;
        std::fs::create_dir_all(dir)?;
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh)?;
        let host_key = dir.join("host_key");
        ssh_keygen(&host_key)?;
        let client_key = ssh.join("id_ed25519");
        ssh_keygen(&client_key)?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(ssh.join("id_ed25519.pub"), &authorized)?;
        let user = run("id", &["-un"], None)?;
        let root = run("id", &["-u"], None)? == "0";
        if root {
            // sshd's privilege separation directory (Debian's service creates it at boot).
            std::fs::create_dir_all("/run/sshd")?;
        }
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {authorized}\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAllowUsers {user}\nStrictModes no\nUsePAM no\nPidFile none\n",
            host = host_key.display(),
            authorized = authorized.display(),
        );
        let conf = dir.join("sshd_config");
        std::fs::write(&conf, config)?;
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log"))?)
            .spawn()?;
        wait_for_port(port, "sshd", &mut child)?;
        Ok(Self {
            port,
            base: base.to_owned(),
            user,
            known_hosts_line: known_hosts_line(port, &dir.join("host_key.pub"))?,
            _child: Guard(child),
        })
    }

    /// `ssh://USER@127.0.0.1:PORT/<base>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            self.base.join(name).display()
        )
    }
}
