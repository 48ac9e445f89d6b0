//! `docker-registry` on a loopback port.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{Guard, free_port, wait_for_port};
use crate::programs::{require, run};

const ACCEPT: &str = "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// A `docker-registry` (distribution 2.8) on a loopback port, with filesystem storage.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub auth: Option<(String, String)>,
    /// Whether it speaks HTTPS (with a certificate the test chose; curl does not verify it).
    pub tls: bool,
    pub dir: PathBuf,
    _child: Guard,
}

impl Registry {
    /// The server's process id (what it started are its descendants).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// Start a registry keeping its data in `dir`; with `auth`, it wants that
    /// user and password (htpasswd, bcrypt).
    pub fn start(dir: &Path, auth: Option<(&str, &str)>) -> io::Result<Self> {
        Self::launch(dir, auth, None)
    }

    /// Start a registry that speaks only HTTPS, with `certificate`.
    pub fn start_tls(dir: &Path, certificate: &crate::k8s::Pem) -> io::Result<Self> {
        Self::launch(dir, None, Some(certificate))
    }

    fn launch(
        dir: &Path,
        auth: Option<(&str, &str)>,
        tls: Option<&crate::k8s::Pem>,
    ) -> io::Result<Self> {
        require("docker-registry")?;
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n",
            dir.join("data").display()
        );
        // Under `http:`, which the text above ends with.
        if let Some(pem) = tls {
            let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
            std::fs::write(&cert, &pem.cert)?;
            std::fs::write(&key, &pem.key)?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, password)) = auth {
            require("htpasswd")?;
            let line = run("htpasswd", &["-Bbn", user, password], None)?;
            let file = dir.join("htpasswd");
            std::fs::write(&file, format!("{line}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kubemark-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        wait_for_port(port, "docker-registry", &mut child)?;
        Ok(Self {
            addr: format!("127.0.0.1:{port}"),
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            tls: tls.is_some(),
            dir: dir.to_owned(),
            _child: Guard(child),
        })
    }

    /// `curl -sS <flags> http(s)://<addr><path>` with the registry's credentials.
    fn curl(&self, flags: &[&str], path: &str) -> io::Result<std::process::Output> {
        let mut command = Command::new("curl");
        command.arg("-sS").args(flags);
        if let Some((u, p)) = &self.auth {
            command.arg("-u").arg(format!("{u}:{p}"));
        }
        let scheme = if self.tls { "https" } else { "http" };
        if self.tls {
            command.arg("-k");
        }
        command
            .arg(format!("{scheme}://{}{path}", self.addr))
            .output()
    }

    /// The manifest (or index) `reference` of `repository` as served: its JSON, or `None`.
    pub fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> io::Result<Option<serde_json::Value>> {
        let output = self.curl(
            &["-f", "-H", ACCEPT],
            &format!("/v2/{repository}/manifests/{reference}"),
        )?;
        if !output.status.success() {
            return Ok(None);
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(io::Error::other)
    }

    /// The repositories the registry holds (`/v2/_catalog`); an error when it does
    /// not answer, so that "nothing was pushed" is never read from a dead registry.
    pub fn repositories(&self) -> io::Result<Vec<String>> {
        let output = self.curl(&["-f"], "/v2/_catalog")?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "the registry did not answer /v2/_catalog: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let catalog: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(io::Error::other)?;
        Ok(catalog["repositories"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect())
    }

    /// The digest the tag names (read with curl, asked as the engine asks: every
    /// manifest type), if any.
    pub fn digest(&self, repository: &str, tag: &str) -> io::Result<Option<String>> {
        let output = self.curl(
            &["-I", "-H", ACCEPT],
            &format!("/v2/{repository}/manifests/{tag}"),
        )?;
        let head = String::from_utf8_lossy(&output.stdout).to_string();
        // `HTTP/1.1 200 OK`, or `HTTP/2 200` over TLS.
        if head.split_whitespace().nth(1) != Some("200") {
            return Ok(None);
        }
        Ok(head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_owned())
        }))
    }
}
