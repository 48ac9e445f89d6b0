//! The real Kubernetes components the tests run (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubemark), built from Kubernetes'
//! own Go modules (`crates/testbed/k8s`) into `target/k8s/bin`, static
//! (`CGO_ENABLED=0`). Built once and reused while the module's files and the
//! Go version are unchanged (a stamp beside the binaries records both).

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::report::Failure;

/// The Kubernetes release the module requires; the binaries report it.
pub const VERSION: &str = "v1.37.2";

/// The components, as `crates/testbed/k8s/cmd/<name>`.
const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubemark",
];

/// `go` on PATH, else where Go's own installer puts it.
fn go_binary() -> &'static str {
    if kubemark_image::make::find_on_path("go").is_some() {
        "go"
    } else if Path::new("/usr/local/go/bin/go").exists() {
        "/usr/local/go/bin/go"
    } else {
        "go"
    }
}

fn go_version() -> Result<String, Failure> {
    duct::cmd!(go_binary(), "version").read().map_err(|e| {
        Failure::failed(format!("`go version` failed: {e}")).with_hint(
            "the real tier builds Kubernetes from its Go modules: install Go 1.26 and put `go` on PATH",
        )
    })
}

/// What the build depends on: every file of the module, and the Go version.
fn fingerprint(module: &Path, go: &str) -> Result<String, Failure> {
    let mut files = vec![module.join("go.mod"), module.join("go.sum")];
    for c in COMPONENTS {
        files.push(module.join("cmd").join(c).join("main.go"));
    }
    let mut hash = Sha256::new();
    hash.update(go.as_bytes());
    for f in &files {
        let bytes = std::fs::read(f)
            .map_err(|e| Failure::failed(format!("reading {}: {e}", f.display())))?;
        hash.update(
            f.strip_prefix(module)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        hash.update(&bytes);
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// Build the components into `target/k8s/bin` unless they are there and current.
pub fn build(root: &Path) -> Result<PathBuf, Failure> {
    let module = root.join("crates/testbed/k8s");
    let bin = root.join("target/k8s/bin");
    let stamp = bin.join(".stamp");
    let go = go_version()?;
    let want = fingerprint(&module, &go)?;
    let have = std::fs::read_to_string(&stamp).unwrap_or_default();
    if have.trim() == want && COMPONENTS.iter().all(|c| bin.join(c).is_file()) {
        eprintln!(
            "==> ci: Kubernetes {VERSION} components are current in {}",
            bin.display()
        );
        return Ok(bin);
    }
    std::fs::create_dir_all(&bin)?;
    let _ = std::fs::remove_file(&stamp);
    eprintln!(
        "==> ci: building etcd and Kubernetes {VERSION} (kube-apiserver, kube-controller-manager, kube-scheduler, kubemark) from their Go modules into {}",
        bin.display()
    );
    let started = Instant::now();
    let minor = VERSION
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .unwrap_or("0");
    let ldflags = format!(
        "-s -w -X k8s.io/component-base/version.gitVersion={VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor={minor} -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion={VERSION} -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor={minor}"
    );
    let out = format!("{}/", bin.display());
    let output = duct::cmd(
        go_binary(),
        [
            "build",
            "-trimpath",
            "-ldflags",
            &ldflags,
            "-o",
            &out,
            "./cmd/...",
        ],
    )
    .dir(&module)
    .env("CGO_ENABLED", "0")
    .env("GOFLAGS", "-mod=readonly")
    .unchecked()
    .run()?;
    if !output.status.success() {
        return Err(Failure::failed(format!(
            "building the Kubernetes components failed ({})",
            output.status
        ))
        .with_hint(format!(
            "the output above says why; the module is {} (go.mod names the release)",
            module.display()
        )));
    }
    std::fs::write(&stamp, format!("{want}\n"))?;
    let sizes: Vec<String> = COMPONENTS
        .iter()
        .map(|c| {
            let mb = std::fs::metadata(bin.join(c)).map_or(0, |m| m.len()) as f64 / 1_048_576.0;
            format!("{c} {mb:.0} MiB")
        })
        .collect();
    eprintln!(
        "==> ci: built in {:.0}s: {}",
        started.elapsed().as_secs_f64(),
        sizes.join(", ")
    );
    Ok(bin)
}
