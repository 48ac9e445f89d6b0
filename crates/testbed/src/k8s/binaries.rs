//! Where the built Kubernetes components are.

use std::path::{Path, PathBuf};

/// The components the `k8s` module runs, by file name.
pub const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubemark",
];

/// Where the built components are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// `KUBEMARK_K8S_BIN`, else `target/k8s/bin` of this workspace; `None` when
    /// a component is missing there (`cargo xtask ci` builds them).
    pub fn find() -> Option<Self> {
        let dir = std::env::var_os("KUBEMARK_K8S_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/k8s/bin"));
        COMPONENTS
            .iter()
            .all(|c| dir.join(c).is_file())
            .then_some(Self { dir })
    }

    /// For a test: the components, or `None` and a printed `SKIPPED` line when
    /// nobody built them. Under `KUBEMARK_REQUIRE_REAL` (set by `cargo xtask
    /// ci`, which builds them) a missing component fails the test instead.
    #[allow(
        clippy::print_stderr,
        reason = "a test that skips says so on stderr, where the test runner shows it"
    )]
    pub fn for_tests() -> Option<Self> {
        let found = Self::find();
        if found.is_none() {
            assert!(
                std::env::var_os("KUBEMARK_REQUIRE_REAL").is_none(),
                "the real tier is required (KUBEMARK_REQUIRE_REAL) but target/k8s/bin lacks a component: `cargo xtask ci --provision-only` builds them"
            );
            eprintln!(
                "SKIPPED: no Kubernetes components in target/k8s/bin (`cargo xtask ci --provision-only` builds them)"
            );
        }
        found
    }

    pub fn path(&self, component: &str) -> PathBuf {
        self.dir.join(component)
    }
}
