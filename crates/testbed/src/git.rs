//! Git servers: `git daemon` over `git://`, and `git http-backend` behind
//! lighttpd over https.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::{Guard, free_port, wait_for_port};
use crate::programs::{require, require_file, run};

/// `git-daemon` serving every repository under a base directory over `git://`.
#[derive(Debug)]
pub struct GitDaemon {
    pub port: u16,
    _child: Guard,
}

impl GitDaemon {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    pub fn start(base: &Path) -> io::Result<Self> {
        let port = free_port()?;
        // git-daemon itself, not `git daemon`: `git` would run it as a child
        // and wait, and killing `git` would leave the daemon listening.
        let mut child = Command::new(git_exec_path()?.join("git-daemon"))
            .args([
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                "--export-all",
                "--informative-errors",
            ])
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for_port(port, "git daemon", &mut child)?;
        Ok(Self {
            port,
            _child: Guard(child),
        })
    }

    /// `git://127.0.0.1:PORT/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

/// The git server programs `git http-backend` and `git-upload-pack`.
fn git_exec_path() -> io::Result<PathBuf> {
    Ok(PathBuf::from(run("git", &["--exec-path"], None)?))
}

/// Every repository under a base directory over `https://127.0.0.1:PORT/git/<name>`:
/// `lighttpd` running `git http-backend` as CGI (git's smart HTTP protocol), with a
/// server certificate for 127.0.0.1 signed by a CA made for this instance.
#[derive(Debug)]
pub struct GitHttps {
    pub port: u16,
    /// The CA that signed the server's certificate (PEM), for `SSL_CERT_FILE`.
    pub ca: PathBuf,
    _child: Guard,
}

impl GitHttps {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// Serve `base`; `dir` holds the configuration, keys and logs. With
    /// `auth`, every request wants that user and password (Basic, htpasswd).
    pub fn start(base: &Path, dir: &Path, auth: Option<(&str, &str)>) -> io::Result<Self> {
        require_file("/usr/sbin/lighttpd", "lighttpd")?;
        require_file("/usr/lib/lighttpd/mod_openssl.so", "lighttpd-mod-openssl")?;
        require("openssl")?;
        let backend = git_exec_path()?.join("git-http-backend");
        std::fs::create_dir_all(dir.join("www"))?;
        let path = |name: &str| dir.join(name).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_args = [
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=kubemark testbed CA"],
        ];
        let mut args: Vec<&str> = ca_args.concat();
        let (ca_key, ca) = (path("ca.key"), path("ca.pem"));
        args.extend(["-keyout", &ca_key, "-out", &ca]);
        run("openssl", &args, None)?;
        let (key, cert) = (path("server.key"), path("server.pem"));
        let mut args: Vec<&str> = [
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=127.0.0.1"],
        ]
        .concat();
        args.extend([
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            &key,
            "-out",
            &cert,
        ]);
        run("openssl", &args, None)?;
        let port = free_port()?;
        let protect = match auth {
            Some((user, password)) => {
                require("htpasswd")?;
                let users = path("htpasswd");
                run("htpasswd", &["-cbm", &users, user, password], None)?;
                format!(
                    r#"auth.backend = "htpasswd"
auth.backend.htpasswd.userfile = "{users}"
auth.require = ("/git" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
"#
                )
            }
            None => String::new(),
        };
        let config = format!(
            r#"server.document-root = "{www}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{log}"
server.modules = ("mod_auth", "mod_authn_file", "mod_alias", "mod_setenv", "mod_cgi", "mod_openssl")
{protect}
ssl.engine = "enable"
ssl.pemfile = "{cert}"
ssl.privkey = "{key}"
alias.url = ("/git" => "{backend}")
$HTTP["url"] =~ "^/git" {{
  cgi.assign = ("" => "")
  setenv.set-environment = ("GIT_PROJECT_ROOT" => "{base}", "GIT_HTTP_EXPORT_ALL" => "1")
}}
"#,
            www = path("www"),
            log = path("error.log"),
            backend = backend.display(),
            base = base.display(),
        );
        let conf = dir.join("lighttpd.conf");
        std::fs::write(&conf, config)?;
        let mut child = Command::new("/usr/sbin/lighttpd")
            .arg("-D")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for_port(port, "lighttpd", &mut child)?;
        Ok(Self {
            port,
            ca: PathBuf::from(ca),
            _child: Guard(child),
        })
    }

    /// `https://127.0.0.1:PORT/git/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/git/{name}", self.port)
    }
}
