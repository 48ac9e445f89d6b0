//! End-to-end tests of `cargo xtask image` against real parts: the Docker
//! engine, `docker-registry` on loopback, and `git daemon` serving a generated
//! fixture repository. The Docker CLI and the git CLI check the results.

#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;
use std::path::Path;

use support::{
    Args, Env, Fixture, GitHttps, GitSsh, Registry, SshAgent, Upstream, docker, sh, sha256_hex,
};

fn git_status(dir: &Path) -> String {
    sh("git", &["status", "--porcelain", "--ignored=no"], Some(dir))
}

/// `HEAD` of the checkout in `dir`.
fn git_head(dir: &Path) -> String {
    sh("git", &["rev-parse", "HEAD"], Some(dir))
}

fn is_shallow(dir: &Path) -> bool {
    sh("git", &["rev-parse", "--is-shallow-repository"], Some(dir)) == "true"
}

/// `image --no-push` of `url` into `src` as `kubemark-test.local/kubemark:<tag>`.
fn build_from(url: impl AsRef<OsStr>, src: &Path, tag: &str) -> Args {
    Args::image("kubemark-test.local", tag, url, src).flags(&["--no-push"])
}

/// `image --no-push` of `url` into `src` as `kubemark:v1`, with no registry.
fn build_unnamed(url: &str, src: &Path) -> Args {
    Args::new(&["image", "--no-push", "--tag", "v1"])
        .opt("--kubernetes-repo", url)
        .opt("--source-dir", src)
}

/// An image that is built and not pushed, under a tag of its own: `prefix`
/// and a free port. Removed on drop.
struct Local {
    tag: String,
    /// `kubemark-test.local/kubemark:<tag>`.
    image: String,
    _cleanup: docker::Cleanup,
}

fn local_image(prefix: &str) -> Local {
    let tag = format!("{prefix}{}", support::free_port());
    let image = format!("kubemark-test.local/kubemark:{tag}");
    Local {
        tag,
        _cleanup: docker::Cleanup(vec![image.clone()]),
        image,
    }
}

#[test]
fn fresh_clone_is_built_pushed_and_pulled_back_then_updates_are_picked_up() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    let env = Env::new();
    let src = env.path("src/kubernetes");
    let url = upstream.url();
    let image = format!("{}/kubemark:v1", registry.addr);
    let _cleanup = docker::Cleanup(vec![image.clone()]);
    let args = Args::image(&registry.addr, "v1", &url, &src);

    // Fresh clone → image pushed.
    let run = env.xtask(&args);
    run.assert_code(0)
        .stdout_has(&[&format!("pushed {image}@sha256:")])
        .stderr_has(&["==> source: cloning", ": COPY kubemark /kubemark"]);
    assert!(
        run.stderr.contains("receiving objects") || run.stderr.contains("received "),
        "transfer progress is logged: {}",
        run.stderr
    );
    let head1 = upstream.fixture.head().unwrap();
    let record = env.record();
    assert_eq!(record["ref"], image.as_str());
    assert_eq!(record["commit"], head1.as_str());
    assert_eq!(record["dirty"], false);
    let digest1 = registry
        .digest("kubemark", "v1")
        .expect("the registry serves the tag");
    assert_eq!(record["digest"], digest1.as_str());
    assert_eq!(record["image"], format!("{image}@{digest1}").as_str());

    // The checkout: shallow, one commit, clean, no stray binary copied into the context.
    assert_eq!(git_head(&src), head1);
    assert!(is_shallow(&src));
    assert_eq!(git_status(&src), "");
    assert!(!src.join("cluster/images/kubemark/kubemark").exists());
    let binary = std::fs::read(src.join("_output/bin/kubemark")).unwrap();
    assert_eq!(record["binary_sha256"], sha256_hex(&binary).as_str());

    // Pull it back: /kubemark is the binary, the labels tell where it came from.
    docker::rmi(&image);
    docker::pull(&image);
    assert_eq!(
        sha256_hex(&docker::read_file(&image, "/kubemark")),
        sha256_hex(&binary)
    );
    let labels = docker::labels(&image);
    assert_eq!(labels["org.opencontainers.image.revision"], head1);
    assert_eq!(labels["org.opencontainers.image.source"], url);
    assert_eq!(labels["org.opencontainers.image.version"], &head1[..12]);
    assert_eq!(labels["dev.kubemark.dirty"], "false");
    assert_eq!(docker::run(&image, None, &[]), "kubemark fixture 1");

    // Second run: nothing changed, nothing done (no build).
    let run = env.xtask(&args.with(&["--output", "json"]));
    run.assert_code(0).stderr_lacks(&["==> image"]);
    let out = run.json();
    assert_eq!(out["status"], "up-to-date");
    assert_eq!(out["digest"], digest1.as_str());
    assert_eq!(registry.digest("kubemark", "v1").unwrap(), digest1);

    // A new upstream commit is picked up.
    upstream.fixture.set_version("2").unwrap();
    let head2 = upstream.fixture.commit("version 2").unwrap();
    env.xtask(&args)
        .assert_code(0)
        .stderr_has(&["==> source: updating"]);
    let record = env.record();
    assert_eq!(record["commit"], head2.as_str());
    let digest2 = registry.digest("kubemark", "v1").unwrap();
    assert_ne!(digest2, digest1);
    assert_eq!(record["digest"], digest2.as_str());
    assert_eq!(git_head(&src), head2);
    docker::rmi(&image);
    docker::pull(&image);
    assert_eq!(docker::run(&image, None, &[]), "kubemark fixture 2");

    // --force rebuilds and pushes although nothing changed.
    env.xtask(&args.with(&["--force"]))
        .assert_code(0)
        .stderr_has(&["==> push"]);
}

#[test]
fn a_tag_and_a_commit_can_be_asked_for() {
    let upstream = Upstream::new();
    let env = Env::new();
    upstream.fixture.tag("v1.0.0").unwrap();
    let tagged = upstream.fixture.head().unwrap();
    upstream.fixture.set_version("2").unwrap();
    let later = upstream.fixture.commit("version 2").unwrap();
    upstream.fixture.set_version("3").unwrap();
    let tip = upstream.fixture.commit("version 3").unwrap();
    assert_ne!(later, tip);
    let src = env.path("k");
    let local = local_image("t");
    let image = &local.image;
    let base = build_from(upstream.url(), &src, &local.tag);

    env.xtask(&base.with(&["--ref", "v1.0.0"]))
        .assert_code(0)
        .stdout_has(&[&format!("built {image}")]);
    let record = env.record();
    assert_eq!(record["commit"], tagged.as_str());
    assert_eq!(record["version"], "v1.0.0");
    assert_eq!(
        docker::labels(image)["org.opencontainers.image.version"],
        "v1.0.0"
    );
    assert_eq!(docker::run(image, None, &[]), "kubemark fixture 1");

    // A commit that is not the tip of any branch, by its full id.
    env.xtask(&base.with(&["--ref", &later])).assert_code(0);
    assert_eq!(env.record()["commit"], later.as_str());
    assert_eq!(git_head(&src), later);
    assert_eq!(docker::run(image, None, &[]), "kubemark fixture 2");

    // --no-update builds what is checked out, whatever upstream has.
    env.xtask(&base.with(&["--no-update"]))
        .assert_code(0)
        .stderr_has(&["as it is"]);
    assert_eq!(env.record()["commit"], later.as_str());

    // A ref that does not exist: usage error, similar names, nothing changed.
    env.xtask(&base.with(&["--ref", "v1.0"]))
        .assert_code(2)
        .stderr_has(&["`v1.0` is not a branch, tag or commit", "v1.0.0"]);
    assert_eq!(git_head(&src), later);
}

#[test]
fn a_local_path_works_as_the_repository() {
    let upstream = Upstream::new();
    let env = Env::new();
    let src = env.path("k");
    let local = local_image("p");
    env.xtask(&build_from(&upstream.fixture.dir, &src, &local.tag))
        .assert_code(0);
    assert_eq!(
        env.record()["commit"],
        upstream.fixture.head().unwrap().as_str()
    );
    assert!(docker::exists(&local.image));

    // The user's clone as its own checkout: refused, left on its branch.
    let branch = || {
        sh(
            "git",
            &["symbolic-ref", "--short", "HEAD"],
            Some(&upstream.fixture.dir),
        )
    };
    assert_eq!(branch(), "master");
    env.xtask(&build_from(
        &upstream.fixture.dir,
        &upstream.fixture.dir,
        &local.tag,
    ))
    .assert_code(2)
    .stderr_has(&["it is also the checkout to build", "--no-update"]);
    assert_eq!(branch(), "master");
}

#[test]
fn a_local_repository_path_that_is_missing_or_not_a_repository_is_refused_first() {
    let mut env = Env::new();
    let src = env.path("k");
    let tag = format!("r{}", support::free_port());
    let not_a_repository = env.path("just-files");
    std::fs::create_dir_all(&not_a_repository).unwrap();
    std::fs::write(not_a_repository.join("README"), "not a repository\n").unwrap();
    let a_file = not_a_repository.join("README");
    let missing = "/nonexistent/kubernetes".to_owned();
    let file_url = format!("file://{}", env.path("gone").display());
    for (repo, problem) in [
        (missing.as_str(), "no such directory"),
        (file_url.as_str(), "no such directory"),
        (not_a_repository.to_str().unwrap(), "not a git repository"),
        (a_file.to_str().unwrap(), "a file, not a directory"),
    ] {
        for extra in [&[][..], &["--dry-run"][..]] {
            // The hint says what to give instead: a kubernetes clone or a URL.
            env.xtask(&build_from(repo, &src, &tag).flags(extra))
                .assert_code(2)
                .stderr_has(&[
                    &format!("error: --kubernetes-repo {repo}: {problem}"),
                    "a kubernetes clone",
                    "URL",
                ])
                .stderr_lacks(&["unsupported URL protocol"]);
            assert!(!src.exists(), "nothing is cloned");
            assert!(!env.has_record());
        }
    }
    // Named as it was given: the variable.
    env.set("KUBEMARK_KUBERNETES_REPO", &missing);
    let args = Args::new(&["image", "--no-push", "--tag", &tag]).opt("--source-dir", &src);
    env.xtask(&args).assert_code(2).stderr_has(&[&format!(
        "error: KUBEMARK_KUBERNETES_REPO {missing}: no such directory"
    )]);
    assert!(!src.exists());
}

#[test]
fn https_clones_and_updates_with_a_private_ca_and_an_untrusted_certificate_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    let fixture = Fixture::create(&repos, "kubernetes").unwrap();
    let server = GitHttps::start(&repos, &dir.path().join("https"), None).unwrap();
    let url = server.url("kubernetes");
    let mut env = Env::new();
    let src = env.path("k");
    let local = local_image("h");
    let image = &local.image;
    let args = build_from(&url, &src, &local.tag);

    // The throw-away CA is not trusted: refused, verification stays on, nothing made.
    // The hint names the fix.
    env.xtask(&args).assert_code(1).stderr_has(&[
        &format!("cannot reach the kubernetes repository {url}"),
        "certificate",
        "SSL_CERT_FILE",
    ]);
    assert!(!src.exists(), "nothing is cloned");
    assert!(!docker::exists(image));

    // Trusted through SSL_CERT_FILE: a shallow clone over smart HTTP, then an update.
    env.set("SSL_CERT_FILE", server.ca.to_str().unwrap());
    env.xtask(&args).assert_code(0);
    assert_eq!(env.record()["commit"], fixture.head().unwrap().as_str());
    assert!(is_shallow(&src));
    assert_eq!(docker::run(image, None, &[]), "kubemark fixture 1");
    fixture.set_version("2").unwrap();
    let next = fixture.commit("version 2").unwrap();
    env.xtask(&args).assert_code(0);
    assert_eq!(env.record()["commit"], next.as_str());
    assert_eq!(git_head(&src), next);
    assert_eq!(docker::run(image, None, &[]), "kubemark fixture 2");
}

#[test]
fn https_credentials_come_from_git_credential_helpers_and_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    let fixture = Fixture::create(&repos, "kubernetes").unwrap();
    let password = "s3cret-git-pass";
    let server = GitHttps::start(
        &repos,
        &dir.path().join("https"),
        Some(("builder", password)),
    )
    .unwrap();
    let url = server.url("kubernetes");
    let mut env = Env::new();
    env.set("SSL_CERT_FILE", server.ca.to_str().unwrap());
    let src = env.path("k");
    let local = local_image("c");
    let args = build_from(&url, &src, &local.tag);

    // No helper: refused, saying where credentials come from.
    env.xtask(&args)
        .assert_code(1)
        .stderr_has(&["credential helper"]);
    assert!(!src.exists(), "nothing is cloned");

    // git's own `store` helper, configured in ~/.gitconfig as a user would.
    let home = env.path("home");
    std::fs::write(home.join(".gitconfig"), "[credential]\n\thelper = store\n").unwrap();
    std::fs::write(
        home.join(".git-credentials"),
        format!("https://builder:{password}@127.0.0.1:{}\n", server.port),
    )
    .unwrap();
    let run = env.xtask(&args.with(&["-v"]));
    run.assert_code(0);
    assert_eq!(env.record()["commit"], fixture.head().unwrap().as_str());
    assert!(docker::exists(&local.image));
    // The password is never printed or labelled.
    run.never_prints(&[password]);
    let labels = serde_json::to_string(&docker::labels(&local.image)).unwrap();
    assert!(!labels.contains(password), "the password is never labelled");
}

#[test]
fn ssh_clones_with_a_key_file_or_an_agent_and_refuses_unknown_or_changed_host_keys() {
    let dir = tempfile::tempdir().unwrap();
    let repos = dir.path().join("repos");
    let fixture = Fixture::create(&repos, "kubernetes").unwrap();
    let mut env = Env::new();
    let home = env.path("home");
    let server = GitSsh::start(&repos, &dir.path().join("ssh"), &home).unwrap();
    // No ssh agent: the key in ~/.ssh is what authenticates.
    env.set(
        "SSH_AUTH_SOCK",
        dir.path().join("no-agent").to_str().unwrap(),
    );
    let src = env.path("k");
    let local = local_image("s");
    let image = &local.image;
    let args = build_from(server.url("kubernetes"), &src, &local.tag);
    let known_hosts = home.join(".ssh").join("known_hosts");

    // A host not in ~/.ssh/known_hosts: refused, with the command that adds it.
    env.xtask(&args).assert_code(1).stderr_has(&[
        "hostkey",
        &format!("ssh-keyscan -p {} 127.0.0.1", server.port),
    ]);
    assert!(!src.exists(), "nothing is cloned");

    // Known: cloned with the key from ~/.ssh.
    std::fs::write(&known_hosts, &server.known_hosts_line).unwrap();
    env.xtask(&args).assert_code(0);
    let first = fixture.head().unwrap();
    assert_eq!(env.record()["commit"], first.as_str());
    assert_eq!(docker::run(image, None, &[]), "kubemark fixture 1");

    // The host key changed (or a man in the middle): refused, the checkout untouched.
    let other = dir.path().join("other_host_key");
    kubemark_testbed::ssh_keygen(&other).unwrap();
    let line =
        kubemark_testbed::known_hosts_line(server.port, &other.with_extension("pub")).unwrap();
    std::fs::write(&known_hosts, line).unwrap();
    fixture.set_version("2").unwrap();
    fixture.commit("version 2").unwrap();
    env.xtask(&args).assert_code(1).stderr_has(&["hostkey"]);
    assert_eq!(git_head(&src), first);
    assert_eq!(env.record()["commit"], first.as_str());

    // Without a key the server accepts: said so, with where keys are looked for.
    std::fs::write(&known_hosts, &server.known_hosts_line).unwrap();
    let key = dir.path().join("agent_key");
    std::fs::rename(home.join(".ssh").join("id_ed25519"), &key).unwrap();
    env.xtask(&args)
        .assert_code(1)
        .stderr_has(&["~/.ssh/id_ed25519"]);
    assert_eq!(git_head(&src), first);

    // The key held by an ssh agent only: the update goes through.
    let agent = SshAgent::start(&dir.path().join("agent.sock")).unwrap();
    agent.add(&key).unwrap();
    env.set("SSH_AUTH_SOCK", agent.socket.to_str().unwrap());
    env.xtask(&args).assert_code(0);
    let second = fixture.head().unwrap();
    assert_ne!(second, first);
    assert_eq!(git_head(&src), second);
    assert_eq!(docker::run(image, None, &[]), "kubemark fixture 2");
}

#[test]
fn checkout_applies_eol_attributes_like_git() {
    let upstream = Upstream::new();
    upstream
        .fixture
        .write(".gitattributes", "*.txt text eol=crlf\n")
        .unwrap();
    upstream.fixture.write("notes.txt", "a\nb\n").unwrap();
    upstream.fixture.commit("crlf notes").unwrap();
    let env = Env::new();
    let src = env.path("k");
    let url = upstream.url();
    let local = local_image("c");
    env.xtask(&build_from(&url, &src, &local.tag))
        .assert_code(0);
    let by_git = env.path("by-git");
    sh(
        "git",
        &["clone", "--quiet", &url, by_git.to_str().unwrap()],
        None,
    );
    assert_eq!(
        std::fs::read(by_git.join("notes.txt")).unwrap(),
        b"a\r\nb\r\n"
    );
    assert_eq!(std::fs::read(src.join("notes.txt")).unwrap(), b"a\r\nb\r\n");
    assert_eq!(git_status(&src), "");
}

#[test]
fn a_dirty_checkout_is_refused_and_left_untouched_unless_allowed() {
    let upstream = Upstream::new();
    let env = Env::new();
    let src = env.path("k");
    let local = local_image("d");
    let args = build_from(upstream.url(), &src, &local.tag);
    env.xtask(&args).assert_code(0);
    let head = upstream.fixture.head().unwrap();

    // Local edits, and a new upstream commit that would touch the same file.
    let edited = "#include <stdio.h>\nint main(void) { puts(\"my local work\"); return 0; }\n";
    std::fs::write(src.join("cmd/kubemark/main.c"), edited).unwrap();
    std::fs::write(src.join("notes.txt"), "untracked notes\n").unwrap();
    upstream.fixture.set_version("2").unwrap();
    upstream.fixture.commit("version 2").unwrap();

    env.xtask(&args).assert_code(1).stderr_has(&[
        "has 2 local change(s); nothing was touched",
        " M cmd/kubemark/main.c",
        "?? notes.txt",
        "--allow-dirty",
    ]);
    assert_eq!(
        std::fs::read_to_string(src.join("cmd/kubemark/main.c")).unwrap(),
        edited
    );
    assert_eq!(
        std::fs::read_to_string(src.join("notes.txt")).unwrap(),
        "untracked notes\n"
    );
    assert_eq!(git_head(&src), head);

    // --allow-dirty builds the tree as it is and marks the image.
    env.xtask(&args.with(&["--allow-dirty"]))
        .assert_code(0)
        .stderr_has(&["marked dirty"]);
    let record = env.record();
    assert_eq!(record["dirty"], true);
    assert!(record["version"].as_str().unwrap().ends_with("-dirty"));
    assert_eq!(docker::labels(&local.image)["dev.kubemark.dirty"], "true");
    assert_eq!(docker::run(&local.image, None, &[]), "my local work");
    assert_eq!(
        std::fs::read_to_string(src.join("cmd/kubemark/main.c")).unwrap(),
        edited
    );
    assert_eq!(git_head(&src), head);
}

#[test]
fn a_failing_make_shows_the_end_of_its_log() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    upstream
        .fixture
        .write("cmd/kubemark/main.c", "int main(void) { this is not C }\n")
        .unwrap();
    upstream.fixture.commit("broken").unwrap();
    let env = Env::new();
    let src = env.path("k");
    let log = env.state().join("make.log");
    // gcc's error is in the tail; the whole log is named.
    env.xtask(&Args::image(&registry.addr, "v1", upstream.url(), &src))
        .assert_code(1)
        .stderr_has(&[
            "`make all WHAT=cmd/kubemark` failed (exit status: 2)",
            "last lines of",
            "| cmd/kubemark/main.c:1",
            log.to_str().unwrap(),
        ]);
    assert!(std::fs::read_to_string(&log).unwrap().contains("error"));
    assert_eq!(
        registry.digest("kubemark", "v1"),
        None,
        "nothing was pushed"
    );
    assert!(!env.has_record());
}

#[test]
fn missing_tools_and_a_missing_binary_are_explained() {
    let upstream = Upstream::new();
    let env = Env::new();
    let src = env.path("k");
    let url = upstream.url();
    let tag = format!("m{}", support::free_port());
    let base = build_from(&url, &src, &tag);

    // No make on PATH: refused before anything is cloned.
    let empty = env.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let mut no_make = Env::new();
    no_make.set("PATH", empty.to_str().unwrap());
    no_make
        .xtask(&base)
        .assert_code(1)
        .stderr_has(&["`make` is not on PATH"]);
    assert!(!src.exists());

    // A Go module (as kubernetes is) needs go: make alone is not enough.
    let make_only = env.path("make-only");
    std::fs::create_dir_all(&make_only).unwrap();
    std::os::unix::fs::symlink(kubemark_image_make(), make_only.join("make")).unwrap();
    upstream
        .fixture
        .write("go.mod", "module k8s.io/kubernetes\n\ngo 1.22\n")
        .unwrap();
    upstream.fixture.commit("a go module").unwrap();
    let mut no_go = Env::new();
    no_go.set("PATH", make_only.to_str().unwrap());
    no_go
        .xtask(&base)
        .assert_code(1)
        .stderr_has(&["`go` is not on PATH", "is a Go module"]);

    // make succeeds but writes no binary (in a new checkout: the one above is a Go module).
    upstream.fixture.git(&["rm", "--quiet", "go.mod"]).unwrap();
    upstream
        .fixture
        .write("Makefile", "all:\n\t@echo nothing to build\n")
        .unwrap();
    upstream
        .fixture
        .commit("a Makefile that builds nothing")
        .unwrap();
    env.xtask(&build_from(&url, &env.path("k2"), &tag))
        .assert_code(1)
        .stderr_has(&["succeeded but did not produce", "_output/bin/kubemark"]);
}

fn kubemark_image_make() -> String {
    sh("sh", &["-c", "command -v make"], None)
}

#[test]
fn engine_build_errors_are_reported_with_their_step() {
    let upstream = Upstream::new();
    upstream
        .fixture
        .write(
            "cluster/images/kubemark/Dockerfile",
            "FROM scratch\nCOPY kubemark /kubemark\nCOPY no-such-file /etc/no-such-file\n",
        )
        .unwrap();
    upstream
        .fixture
        .commit("a Dockerfile that cannot build")
        .unwrap();
    let env = Env::new();
    let src = env.path("k");
    let local = local_image("e");
    // -v shows make's output.
    env.xtask(&build_from(upstream.url(), &src, &local.tag).flags(&["-v"]))
        .assert_code(1)
        .stderr_has(&[
            "the image build failed at `COPY no-such-file /etc/no-such-file`",
            "no-such-file",
            "make| +++ [fixture] Building",
        ]);
    assert!(!docker::exists(&local.image));
}

#[test]
fn ctrl_c_or_sigterm_stops_the_run_with_130_kills_make_and_records_nothing() {
    let upstream = Upstream::new();
    upstream.fixture.write(
        "Makefile",
        "all:\n\t@echo building slowly\n\tsleep 60 # kubemark-test-slow-make\n\tmkdir -p _output/bin && cp /bin/true _output/bin/kubemark\n",
    )
    .unwrap();
    upstream.fixture.commit("a slow build").unwrap();
    // SIGTERM is what a cancelled CI job or `timeout` sends: the same stop as Ctrl-C.
    for signal in ["-INT", "-TERM"] {
        let env = Env::new();
        let src = env.path("k");
        let mut child = env.spawn(&build_unnamed(&upstream.url(), &src));
        let (make_started, reader) = support::watch_stderr(&mut child, "==> make");
        make_started
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("make starts");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let started = std::time::Instant::now();
        sh("kill", &[signal, &child.id().to_string()], None);
        let status = child.wait().unwrap();
        let seen = reader.join().unwrap();
        assert_eq!(status.code(), Some(130), "{signal}: {seen}");
        assert!(seen.contains("interrupted: stopping"), "{seen}");
        assert!(seen.contains("error: cancelled"), "{seen}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "make was stopped, not waited for"
        );
        // No make left behind to race the next run on _output.
        let left = std::process::Command::new("pgrep")
            .args(["-f", "kubemark-test-slow-make"])
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "{signal}: make still runs: {:?}",
            left
        );
        assert!(!env.has_record());
        // The checkout is complete and clean: the next run picks up from there.
        assert_eq!(git_status(&src), "");
    }
}

#[test]
fn one_run_at_a_time_per_checkout_whatever_the_state_directory() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    upstream.fixture.tag("v1.0.0").unwrap();
    // A slow build, so that the second run comes while the first one holds the checkout.
    upstream
        .fixture
        .write(
            "Makefile",
            "all:\n\t@echo building slowly\n\tsleep 4\n\tmkdir -p _output/bin\n\tgcc -static -Os -o _output/bin/kubemark cmd/kubemark/main.c\n",
        )
        .unwrap();
    upstream.fixture.set_version("2").unwrap();
    let head = upstream.fixture.commit("version 2, built slowly").unwrap();
    let (first, second) = (Env::new(), Env::new());
    assert_ne!(first.state(), second.state());
    let src = first.path("src/kubernetes");
    let url = upstream.url();
    let run_args = |tag: &str, git_ref: &str| {
        Args::image(&registry.addr, tag, &url, &src).opt("--ref", git_ref)
    };
    let image_a = format!("{}/kubemark:a", registry.addr);
    let _cleanup = docker::Cleanup(vec![
        image_a.clone(),
        format!("{}/kubemark:b", registry.addr),
    ]);

    let mut a = first.spawn(&run_args("a", "master"));
    let (make_started, reader) = support::watch_stderr(&mut a, "==> make");
    make_started
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the first run gets to make");

    // Another state directory, the same checkout, another ref: refused at once.
    let started = std::time::Instant::now();
    let args_b = run_args("b", "v1.0.0");
    let b = second.xtask(&args_b);
    b.assert_code(1);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "refused at once, not after waiting: {:?}",
        started.elapsed()
    );
    // The hint names --source-dir.
    b.stderr_has(&[
        &format!(
            "another run (pid {}) is using the kubernetes checkout {}",
            a.id(),
            src.display()
        ),
        "--source-dir",
    ]);
    assert!(!second.has_record());

    // The first run is not disturbed: its commit, its binary, under its label.
    let status = a.wait().unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{seen}");
    assert_eq!(first.record()["commit"], head.as_str());
    assert_eq!(git_head(&src), head);
    assert_eq!(
        registry.digest("kubemark", "b"),
        None,
        "the second run pushed nothing"
    );
    docker::rmi(&image_a);
    docker::pull(&image_a);
    assert_eq!(
        docker::labels(&image_a)["org.opencontainers.image.revision"],
        head
    );
    assert_eq!(docker::run(&image_a, None, &[]), "kubemark fixture 2");

    // Once it is done, the checkout is free again.
    second.xtask(&args_b).assert_code(0);
    assert_eq!(second.record()["version"], "v1.0.0");
}

#[test]
fn an_unreachable_engine_is_explained_before_anything_changes() {
    let upstream = Upstream::new();
    let mut env = Env::new();
    env.set("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let src = env.path("k");
    let args = build_unnamed(&upstream.url(), &src);
    env.xtask(&args).assert_code(1).stderr_has(&[
        "cannot reach the Docker engine at unix:///nonexistent/docker.sock",
        "DOCKER_HOST",
    ]);
    assert!(!src.exists(), "nothing was cloned");

    env.vars.clear();
    env.set("DOCKER_HOST", "tcp://127.0.0.1:1");
    env.xtask(&args)
        .assert_code(1)
        .stderr_has(&["cannot reach the Docker engine at tcp://127.0.0.1:1"]);
}

#[test]
fn registry_credentials_are_checked_first_and_never_printed() {
    let registry = Registry::with_auth("kubemark", "right-password");
    let upstream = Upstream::new();
    let env = Env::new();
    let src = env.path("k");
    let url = upstream.url();
    let image = format!("{}/kubemark:v1", registry.addr);
    let _cleanup = docker::Cleanup(vec![
        image.clone(),
        format!("{}/kubemark:v2", registry.addr),
    ]);
    let args = Args::image(&registry.addr, "v1", &url, &src);

    // No credentials at all.
    env.xtask(&args).assert_code(1).stderr_has(&[
        "requires credentials and none were found",
        &format!("docker login {}", registry.addr),
    ]);
    assert!(!src.exists(), "nothing was cloned");

    // A wrong password on stdin.
    let with_user = args.with(&["--registry-username", "kubemark"]);
    env.xtask_with_stdin(&with_user, Some("wrong-password-xyz\n"))
        .assert_code(1)
        .stderr_has(&["rejected the credentials of user `kubemark` from --registry-username"])
        .never_prints(&["wrong-password-xyz"]);
    assert!(!src.exists(), "nothing was cloned");

    // The right one: pushed.
    env.xtask_with_stdin(&with_user, Some("right-password\n"))
        .assert_code(0)
        .never_prints(&["right-password"]);
    assert_eq!(
        registry.digest("kubemark", "v1").as_deref(),
        env.record()["digest"].as_str()
    );

    // Credentials from the Docker config, as `docker login` stores them.
    std::fs::write(
        env.path("docker/config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"a3ViZW1hcms6cmlnaHQtcGFzc3dvcmQ="}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    env.xtask(&Args::image(&registry.addr, "v2", &url, &src))
        .assert_code(0)
        .stderr_has(&["the Docker config"]);
    assert!(registry.digest("kubemark", "v2").is_some());
}

#[test]
fn a_registry_spelled_localhost_in_capitals_is_pushed_to_and_127_1_is_refused_with_its_full_form() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    let env = Env::new();
    let src = env.path("k");
    let url = upstream.url();
    let port = registry.addr.rsplit(':').next().unwrap();
    let spelled = format!("LOCALHOST:{port}");
    let image = format!("{spelled}/kubemark:v1");
    let _cleanup = docker::Cleanup(vec![image.clone()]);
    // Reached over plain HTTP, as the engine reaches it.
    env.xtask(&Args::image(&spelled, "v1", &url, &src))
        .assert_code(0)
        .stderr_has(&[&format!("registry http://{spelled} answers")]);
    let digest = registry
        .digest("kubemark", "v1")
        .expect("the registry serves the tag");
    assert_eq!(env.record()["digest"], digest.as_str());
    assert_eq!(env.record()["ref"], image.as_str());

    // `127.1` is 127.0.0.1 to the C resolver, but the engine (Go's resolver)
    // looks it up as a name and fails, after the build. Refused first, said so;
    // nothing built.
    let short = format!("127.1:{port}");
    let short_image = format!("{short}/kubemark:v1");
    let _cleanup_short = docker::Cleanup(vec![short_image.clone()]);
    env.xtask(&Args::image(&short, "v1", &url, &src))
        .assert_code(2)
        .stderr_has(&[
            &format!(
                "error: --registry `{short}`: the registry host `127.1` is 127.0.0.1 to C programs, but the Docker \
                 engine reads only a.b.c.d addresses"
            ),
            &format!("write the address in full: --registry 127.0.0.1:{port}"),
        ])
        .stderr_lacks(&["==> image"]);
    assert!(!docker::exists(&short_image));
    assert_eq!(
        env.record()["ref"],
        image.as_str(),
        "the record is the last push's"
    );
}

#[test]
fn bad_input_is_a_usage_error_and_changes_nothing() {
    let env = Env::new();
    let src = env.path("k");
    let src = src.to_str().unwrap();
    for (args, expect) in [
        (vec!["--registry", "127.0.0.1:5000"], "no image tag given"),
        (vec!["--tag", "v1"], "no registry given"),
        (
            vec!["--tag=-v1", "--registry", "127.0.0.1:5000"],
            "--tag `-v1`: the tag starts with `-`",
        ),
        (
            vec!["--tag", "v1/x", "--registry", "127.0.0.1:5000"],
            "--tag `v1/x`: the tag contains `/`",
        ),
        (
            vec!["--tag", "v1", "--registry", "bad host:5000"],
            "--registry `bad host:5000`: invalid image reference `bad host:5000/kubemark:v1`: it contains ' '",
        ),
        (
            vec!["--tag", "v1", "--registry", "r.io:http"],
            "the registry port `http` is not a number",
        ),
        (
            vec!["--tag", "v1", "--no-push", "--base-image", "Not/A Ref"],
            "--base-image",
        ),
        (
            vec!["--tag", "v1", "--no-push", "--ref", "master", "--no-update"],
            "contradict",
        ),
        (
            vec!["--tag", "v1", "--no-push", "--depth", "many"],
            "invalid value 'many'",
        ),
    ] {
        let all = [&["image", "--source-dir", src][..], &args[..]].concat();
        env.xtask(&all).assert_code(2).stderr_has(&[expect]);
        assert!(!Path::new(src).exists());
    }
    // A settings file with a typo names it.
    std::fs::write(env.path("kubemark.toml"), "[image]\nregistri = \"x\"\n").unwrap();
    env.xtask(&["image", "--tag", "v1"])
        .assert_code(2)
        .stderr_has(&["registri"]);
}

#[test]
fn a_registry_given_as_a_url_is_refused_naming_where_it_was_given() {
    let mut env = Env::new();
    let src = env.path("k");
    let src = src.to_str().unwrap();
    for extra in [&["--no-push"][..], &["--dry-run"][..], &[][..]] {
        let args = [
            &[
                "image",
                "--source-dir",
                src,
                "--registry",
                "http://x",
                "--tag",
                "v1",
            ][..],
            extra,
        ]
        .concat();
        env.xtask(&args)
            .assert_code(2)
            .stderr_has(&[
                "error: --registry `http://x` is a URL; a registry is host[:port][/path], without a scheme",
                "drop `http://`: --registry x",
            ])
            .stderr_lacks(&["is not a number"]);
    }
    let dry_run = ["image", "--source-dir", src, "--tag", "v1", "--dry-run"];
    env.set("KUBEMARK_REGISTRY", "https://127.0.0.1:5000/team");
    env.xtask(&dry_run).assert_code(2).stderr_has(&[
        "error: KUBEMARK_REGISTRY `https://127.0.0.1:5000/team` is a URL",
        "drop `https://`: KUBEMARK_REGISTRY=127.0.0.1:5000/team",
    ]);
    env.vars.clear();
    std::fs::write(
        env.path("kubemark.toml"),
        "[image]\nregistry = \"http://r.example\"\n",
    )
    .unwrap();
    env.xtask(&dry_run).assert_code(2).stderr_has(&[
        &format!(
            "error: registry under [image] in {} `http://r.example` is a URL",
            env.path("kubemark.toml").display()
        ),
        "drop `http://`: registry = \"r.example\"",
    ]);
    assert!(!Path::new(src).exists());
}

#[test]
fn settings_follow_flags_then_environment_then_file() {
    let upstream = Upstream::new();
    let mut env = Env::new();
    let src = env.path("k");
    std::fs::write(
        env.path("kubemark.toml"),
        format!(
            "[image]\ntag = \"from-file\"\nregistry = \"file.example\"\nno-push = true\nkubernetes-repo = \"{}\"\nsource-dir = \"{}\"\n",
            upstream.url(),
            src.display()
        ),
    )
    .unwrap();
    let plan = |env: &Env, extra: &[&str]| {
        let run = env.xtask(&[&["image", "--dry-run", "--output", "json"][..], extra].concat());
        run.assert_code(0);
        run.json()
    };
    let p = plan(&env, &[]);
    assert_eq!(p["image"], "file.example/kubemark:from-file");
    assert_eq!(p["push"], serde_json::Value::Null);
    assert_eq!(p["source"]["action"], "clone");
    env.set("KUBEMARK_TAG", "from-env");
    assert_eq!(plan(&env, &[])["image"], "file.example/kubemark:from-env");
    assert_eq!(
        plan(&env, &["--tag", "from-flag"])["image"],
        "file.example/kubemark:from-flag"
    );
    // A boolean in the environment as shells write one (`1`, `yes`, `on`), not only `true`.
    std::fs::write(
        env.path("kubemark.toml"),
        format!(
            "[image]\nregistry = \"file.example\"\nkubernetes-repo = \"{}\"\nsource-dir = \"{}\"\n",
            upstream.url(),
            src.display()
        ),
    )
    .unwrap();
    env.set("KUBEMARK_NO_PUSH", "1");
    assert_eq!(plan(&env, &[])["push"], serde_json::Value::Null);
    env.set("KUBEMARK_NO_PUSH", "maybe");
    env.xtask(&["image", "--dry-run"])
        .assert_code(2)
        .stderr_has(&["invalid value 'maybe' for '--no-push'"]);
    // The dry run changed nothing.
    assert!(!src.exists());
    assert!(!env.has_record());
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    let env = Env::new();
    let src = env.path("k");
    let url = upstream.url();
    let args =
        Args::image(&registry.addr, "v1", &url, &src).flags(&["--dry-run", "--ref", "master"]);
    env.xtask(&args).assert_code(0).stdout_has(&[
        "plan (dry run, nothing was changed)",
        &format!(
            "clone master (refs/heads/master at {})",
            upstream.fixture.head().unwrap()
        ),
        &format!("push:    to http://{} anonymously", registry.addr),
    ]);
    assert!(!src.exists());
    assert_eq!(registry.digest("kubemark", "v1"), None);
    assert!(!env.has_record());
}

#[test]
fn base_image_override_rewrites_from() {
    let upstream = Upstream::new();
    let env = Env::new();
    let base = docker::busybox_base();
    let src = env.path("k");
    let local = local_image("b");
    let image = &local.image;
    env.xtask(&build_from(upstream.url(), &src, &local.tag).opt("--base-image", base))
        .assert_code(0);
    let binary = std::fs::read(src.join("_output/bin/kubemark")).unwrap();
    // busybox from the base image hashes /kubemark inside the image.
    let out = docker::run(image, Some("/bin/sha256sum"), &["/kubemark"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(sha256_hex(&binary).as_str())
    );
    assert_eq!(
        docker::labels(image)["org.opencontainers.image.base.name"],
        base
    );
    // The checkout's Dockerfile is untouched.
    assert_eq!(git_status(&src), "");
}

#[test]
fn release_workflow_passes_actionlint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let workflow = root.join(".github/workflows/release.yml");
    let text = std::fs::read_to_string(&workflow).unwrap();
    assert!(
        text.contains("cargo xtask image --tag"),
        "the release job runs the image task"
    );
    assert!(
        text.contains("tags:") && text.contains("v*"),
        "it runs on v* tags"
    );
    let actionlint = std::env::var("KUBEMARK_ACTIONLINT").unwrap_or_else(|_| "actionlint".into());
    let output = std::process::Command::new(&actionlint)
        .arg(&workflow)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| {
            panic!("{actionlint}: {e}; run `cargo xtask ci --provision-only` to install it")
        });
    assert!(
        output.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
