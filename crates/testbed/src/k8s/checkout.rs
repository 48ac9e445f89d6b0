//! A fixture "kubernetes" checkout that builds the real kubemark.

use std::io;
use std::path::Path;

/// The Makefile of a fixture checkout whose `make all WHAT=cmd/kubemark`
/// builds the real kubemark (Kubernetes v1.37.2's `cmd/kubemark/app`) with Go,
/// static, from the module in the checkout (a copy of `crates/testbed/k8s`).
const REAL_KUBEMARK_MAKEFILE: &str = r#"# A stand-in for kubernetes' build that builds the real kubemark with Go.
.PHONY: all
all:
ifneq ($(WHAT),cmd/kubemark)
	$(error this fixture builds only WHAT=cmd/kubemark, not "$(WHAT)")
endif
	@echo "+++ [fixture] Building go targets for linux/amd64: cmd/kubemark (Kubernetes v1.37.2)"
	@mkdir -p _output/bin
	CGO_ENABLED=0 GOFLAGS=-mod=readonly GOCACHE=$(KUBEMARK_GOCACHE) GOMODCACHE=$(KUBEMARK_GOMODCACHE) $(KUBEMARK_GO) build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" -o _output/bin/kubemark ./cmd/kubemark
"#;

/// A fixture "kubernetes" checkout at `base/name` whose `make all
/// WHAT=cmd/kubemark` builds the real kubemark binary (Go and the module cache
/// that `cargo xtask ci` filled; about 20 s with a warm Go build cache), and
/// whose image is that binary `FROM scratch` with what upstream's distroless
/// base (go-runner) gives it and the real hollow kubelet needs: a `/tmp` (it
/// exits with "Can't make a temp rootdir" otherwise) and an `/etc/passwd` (its
/// user-namespace manager reads it: "open /etc/passwd: no such file").
pub fn real_kubemark_checkout(base: &Path, name: &str) -> io::Result<crate::Fixture> {
    let fixture = crate::Fixture::create(base, name)?;
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s");
    for file in ["go.mod", "go.sum", "cmd/kubemark/main.go"] {
        let text = std::fs::read_to_string(module.join(file))?;
        fixture.write(file, &text)?;
    }
    // The Go caches of whoever builds the test (a test's HOME is a fresh
    // directory: with it, every run would download and compile all of Kubernetes).
    // `go` on PATH, else where Go's installer puts it (make runs with the
    // environment of whoever runs `cargo xtask image`).
    let go = if crate::installed("go") {
        "go"
    } else {
        "/usr/local/go/bin/go"
    };
    let go_env = crate::run(go, &["env", "GOCACHE", "GOMODCACHE"], None)?;
    let mut caches = go_env.lines();
    let (cache, modcache) = (
        caches.next().unwrap_or_default(),
        caches.next().unwrap_or_default(),
    );
    fixture.write(
        "Makefile",
        &format!(
            "KUBEMARK_GO ?= {go}\nKUBEMARK_GOCACHE ?= {cache}\nKUBEMARK_GOMODCACHE ?= {modcache}\n{REAL_KUBEMARK_MAKEFILE}"
        ),
    )?;
    let image = "cluster/images/kubemark";
    fixture.write(&format!("{image}/tmp/.keep"), "")?;
    fixture.write(
        &format!("{image}/etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    )?;
    fixture.write(
        &format!("{image}/etc/group"),
        "root:x:0:\nnogroup:x:65534:\n",
    )?;
    fixture.write(
        &format!("{image}/Dockerfile"),
        "# The real kubemark with the little of a distroless base it needs.\nFROM scratch\nCOPY tmp /tmp\nCOPY etc /etc\nCOPY kubemark /kubemark\nENTRYPOINT [\"/kubemark\"]\n",
    )?;
    fixture.commit("build the real kubemark of Kubernetes v1.37.2")?;
    Ok(fixture)
}
