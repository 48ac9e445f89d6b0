//! Generated fixture "kubernetes" repositories, and incompressible bulk for them.

use std::io;
use std::path::{Path, PathBuf};

use crate::programs::{require, run};

const FIXTURE_MAKEFILE: &str = r#"# A stand-in for kubernetes' build: honours WHAT=cmd/kubemark only.
.PHONY: all
all:
ifneq ($(WHAT),cmd/kubemark)
	$(error this fixture builds only WHAT=cmd/kubemark, not "$(WHAT)")
endif
ifdef KUBE_BUILD_PLATFORMS
	@echo "+++ [fixture] Building go targets for $(KUBE_BUILD_PLATFORMS): cmd/kubemark"
	@mkdir -p _output/local/bin/$(KUBE_BUILD_PLATFORMS)
	cd cmd/kubemark/go && CGO_ENABLED=0 GOOS=$(word 1,$(subst /, ,$(KUBE_BUILD_PLATFORMS))) \
		GOARCH=$(word 2,$(subst /, ,$(KUBE_BUILD_PLATFORMS))) \
		go build -trimpath -o $(CURDIR)/_output/local/bin/$(KUBE_BUILD_PLATFORMS)/kubemark .
else
	@echo "+++ [fixture] Building go targets for linux/amd64: cmd/kubemark"
	@mkdir -p _output/bin
ifdef KUBEMARK_FIXTURE_BINARY
	cp $(KUBEMARK_FIXTURE_BINARY) _output/bin/kubemark
else
	gcc -static -Os -o _output/bin/kubemark cmd/kubemark/main.c
endif
endif
"#;

/// A generated "kubernetes" repository, committed with the git CLI.
#[derive(Debug)]
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    /// Create the repository at `base/name` with one commit. `make` builds a
    /// static binary printing `kubemark fixture <version>`, or copies the file
    /// named by `KUBEMARK_FIXTURE_BINARY` when that is set.
    pub fn create(base: &Path, name: &str) -> io::Result<Self> {
        require("gcc")?;
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)?;
        let fixture = Self { dir };
        fixture.git(&["init", "--quiet", "--initial-branch=master"])?;
        fixture.git(&["config", "user.email", "fixture@example.com"])?;
        fixture.git(&["config", "user.name", "Fixture"])?;
        // Let clients fetch any commit by id, as GitHub does.
        fixture.git(&["config", "uploadpack.allowAnySHA1InWant", "true"])?;
        fixture.write("Makefile", FIXTURE_MAKEFILE)?;
        fixture.write(".gitignore", "/_output\n")?;
        fixture.write(
            "cluster/images/kubemark/Dockerfile",
            "# The fixture's kubemark image: the static binary alone.\nFROM scratch\nCOPY kubemark /kubemark\nENTRYPOINT [\"/kubemark\"]\n",
        )?;
        fixture.write(
            "cluster/images/kubemark/Makefile",
            "REGISTRY?=staging-k8s.gcr.io\nIMAGE_TAG?=latest\nbuild:\n\tdocker build --pull -t $(REGISTRY)/kubemark:$(IMAGE_TAG) .\n",
        )?;
        fixture.write("cluster/images/kubemark/OWNERS", "approvers:\n- fixture\n")?;
        fixture.set_version("1")?;
        fixture.commit("initial fixture")?;
        Ok(fixture)
    }

    /// Add `files` files of `bytes` incompressible bytes each (in folders of 100)
    /// under `vendor/`, committed in one go: a repository the size of kubernetes'.
    pub fn add_bulk(&self, files: usize, bytes: usize, seed: u64) -> io::Result<()> {
        let mut rng = XorShift(seed | 1);
        let mut buf = vec![0u8; bytes];
        for i in 0..files {
            let dir = self.dir.join(format!("vendor/d{:04}", i / 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(&dir)?;
            }
            rng.fill(&mut buf);
            std::fs::write(dir.join(format!("f{i:06}.dat")), &buf)?;
        }
        self.commit(&format!("{files} files of {bytes} bytes"))?;
        Ok(())
    }

    pub fn git(&self, args: &[&str]) -> io::Result<String> {
        run("git", args, Some(&self.dir))
    }

    pub fn write(&self, path: &str, content: &str) -> io::Result<()> {
        let path = self.dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)
    }

    /// Make the binary print `kubemark fixture <version>`: in C for the host (gcc,
    /// static), and in Go for the platforms `KUBE_BUILD_PLATFORMS` names (cross-compiled,
    /// as kubernetes' build does).
    pub fn set_version(&self, version: &str) -> io::Result<()> {
        self.write(
            "cmd/kubemark/go/go.mod",
            "module example.com/kubemark-fixture\n\ngo 1.22\n",
        )?;
        self.write(
            "cmd/kubemark/go/main.go",
            &format!(
                "package main\n\nimport \"fmt\"\n\nfunc main() {{ fmt.Println(\"kubemark fixture {version}\") }}\n"
            ),
        )?;
        self.write(
            "cmd/kubemark/main.c",
            &format!(
                "#include <stdio.h>\nint main(void) {{ puts(\"kubemark fixture {version}\"); return 0; }}\n"
            ),
        )
    }

    /// Commit everything; return the new HEAD.
    pub fn commit(&self, message: &str) -> io::Result<String> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "--quiet", "-m", message])?;
        self.head()
    }

    pub fn head(&self) -> io::Result<String> {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn tag(&self, name: &str) -> io::Result<()> {
        self.git(&["tag", "-a", name, "-m", name]).map(drop)
    }
}

/// Incompressible bytes, quickly and reproducibly.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
