//! `cargo xtask image --builder oci` against real parts: `docker-registry` on
//! loopback, `git daemon` serving a fixture repository, and the Docker engine
//! only as the independent judge (pull, export, run under runc) and to build the
//! same image the engine's way for comparison. The OCI builder itself runs with
//! DOCKER_HOST pointing at nothing.

#![allow(clippy::unwrap_used)]

mod support;

use support::{Args, Env, Registry, Upstream, docker, sha256_hex};

/// An environment in which no Docker engine answers.
fn without_engine() -> Env {
    let mut env = Env::new();
    env.set("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    env
}

#[test]
fn the_oci_builder_needs_no_engine_and_makes_the_image_the_engine_makes() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    // A base with a layer of its own, in another repository of the same registry.
    let base = format!("{}/base/busybox:1", registry.addr);
    docker::push_as(docker::busybox_base(), &base);
    let engine_image = format!("{}/kubemark:engine", registry.addr);
    let oci_image = format!("{}/kubemark:oci", registry.addr);
    let _cleanup = docker::Cleanup(vec![base.clone(), engine_image.clone(), oci_image.clone()]);

    let env = without_engine();
    let args = Args::image(&registry.addr, "oci", upstream.url(), &env.path("k"))
        .opt("--base-image", &base)
        .opt("--builder", "oci");
    let run = env.xtask(&args);
    run.assert_code(0)
        .stdout_has(&[&format!("pushed {oci_image}@sha256:")])
        .stderr_has(&[
            "building in this process (--builder oci)",
            ": COPY kubemark /kubemark",
            // The base's layer went registry-side, not through this process.
            "Mounted from base/busybox",
        ]);
    // The same with the engine (after: the base's layer is then in kubemark's repository too).
    let engine_env = Env::new();
    engine_env
        .xtask(
            &Args::image(
                &registry.addr,
                "engine",
                upstream.url(),
                &engine_env.path("k"),
            )
            .opt("--base-image", &base),
        )
        .assert_code(0)
        .stderr_has(&["from the engine, layers gzip-compressed"]);
    // A Docker manifest, as `docker push` writes, over the engine's config byte
    // for byte (its digest is the engine's image ID); the layout keeps nothing.
    let engine_record = engine_env.record();
    let manifest = registry.manifest("kubemark", "engine").unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(manifest["config"]["digest"], engine_record["image_id"]);
    // The base's layer is the base's blob (mounted, or already there), not a
    // copy compressed again.
    let base_manifest = registry.manifest("base/busybox", "1").unwrap();
    assert_eq!(
        manifest["layers"][0]["digest"],
        base_manifest["layers"][0]["digest"]
    );
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let blobs = std::fs::read_dir(engine_env.state().join("oci/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs left in the layout after the engine's push");

    let digest = registry.digest("kubemark", "oci").unwrap();
    let record = env.record();
    assert_eq!(record["digest"], digest.as_str());
    assert_eq!(record["builder"], "oci");
    assert_eq!(record["platforms"][0]["platform"], host_platform());
    // Pushed, the image leaves the local layout: it does not grow by a binary per tag.
    let blobs = std::fs::read_dir(env.state().join("oci/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs left in the layout after the push");

    // Both pull; their filesystems, labels and command are the same.
    docker::rmi(&engine_image);
    docker::rmi(&oci_image);
    docker::pull(&engine_image);
    docker::pull(&oci_image);
    assert_eq!(
        docker::inspect(&engine_image, ".Id"),
        engine_record["image_id"].as_str().unwrap(),
        "pulled back, the engine's image has the ID it was built with"
    );
    assert_eq!(
        docker::filesystem(&oci_image),
        docker::filesystem(&engine_image)
    );
    assert_eq!(docker::labels(&oci_image), docker::labels(&engine_image));
    for field in [
        ".Config.Entrypoint",
        ".Config.Cmd",
        ".Config.Env",
        ".Os",
        ".Architecture",
    ] {
        assert_eq!(
            docker::inspect(&oci_image, field),
            docker::inspect(&engine_image, field),
            "{field}"
        );
    }
    // And run under runc: busybox from the base hashes the binary the layer holds.
    let binary = std::fs::read(env.path("k/_output/bin/kubemark")).unwrap();
    let out = docker::run(&oci_image, Some("/bin/sha256sum"), &["/kubemark"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(sha256_hex(&binary).as_str())
    );
    assert_eq!(docker::run(&oci_image, None, &[]), "kubemark fixture 1");

    // Reproducible: built again from the same inputs, the same digest; nothing re-sent.
    env.xtask(&args.with(&["--force"]))
        .assert_code(0)
        .stderr_has(&["Layer already exists"])
        .stderr_lacks(&["Pushing"]);
    assert_eq!(registry.digest("kubemark", "oci").unwrap(), digest);

    // Nothing changed: up to date, nothing built. Another compression is another image.
    env.xtask(&args)
        .assert_code(0)
        .stdout_has(&["up to date"])
        .stderr_lacks(&["==> image"]);
    env.xtask(&args.with(&["--compression", "zstd"]))
        .assert_code(0)
        .stderr_has(&["==> image"]);
    assert_ne!(registry.digest("kubemark", "oci").unwrap(), digest);
}

#[test]
fn a_loopback_registry_on_https_with_an_untrusted_certificate_is_pushed_to_as_the_engine_would() {
    // The engine treats 127.0.0.0/8 as insecure: HTTPS without verification.
    // Its images are now pushed by this process, which must do the same.
    let registry = Registry::with_untrusted_tls();
    let upstream = Upstream::new();
    let image = format!("{}/kubemark:tls", registry.addr);
    let _cleanup = docker::Cleanup(vec![image.clone()]);
    let env = Env::new();
    env.xtask(&Args::image(
        &registry.addr,
        "tls",
        upstream.url(),
        &env.path("k"),
    ))
    .assert_code(0)
    .stderr_has(&[&format!("to https://{}", registry.addr)]);
    assert_eq!(
        env.record()["digest"],
        registry.digest("kubemark", "tls").unwrap().as_str()
    );
    docker::rmi(&image);
    docker::pull(&image);
    assert_eq!(docker::run(&image, None, &[]), "kubemark fixture 1");
    // The OCI builder the same way.
    let oci_env = without_engine();
    oci_env
        .xtask(
            &Args::image(
                &registry.addr,
                "tls-oci",
                upstream.url(),
                &oci_env.path("k"),
            )
            .opt("--builder", "oci"),
        )
        .assert_code(0);
    assert!(registry.digest("kubemark", "tls-oci").is_some());
}

#[test]
fn ctrl_c_stops_a_push_to_a_registry_that_stopped_answering_at_once_with_either_builder() {
    /// Lets the registry run again however the test ends.
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.0.to_string()])
                .status();
        }
    }
    let registry = Registry::start();
    let upstream = Upstream::new();
    for builder in ["engine", "oci"] {
        let env = if builder == "oci" {
            without_engine()
        } else {
            Env::new()
        };
        let tag = format!("frozen-{builder}");
        let _cleanup = docker::Cleanup(vec![format!("{}/kubemark:{tag}", registry.addr)]);
        let args = Args::image(&registry.addr, &tag, upstream.url(), &env.path("k"))
            .opt("--builder", builder);
        let mut child = env.spawn(&args);
        // Past the preflight (the registry's last use before the push), it stops answering.
        let (building, reader) = support::watch_stderr(&mut child, "==> image");
        building
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the image stage starts");
        support::sh("kill", &["-STOP", &registry.pid().to_string()], None);
        let resume = Resume(registry.pid());
        // The push is under way (or about to be), its request unanswered.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let started = std::time::Instant::now();
        support::sh("kill", &["-INT", &child.id().to_string()], None);
        let status = child.wait().unwrap();
        let seen = reader.join().unwrap();
        assert_eq!(status.code(), Some(130), "{builder}: {seen}");
        assert!(seen.contains("error: cancelled"), "{builder}: {seen}");
        // Not the request's own 30 s timeout.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{builder}: took {:?}",
            started.elapsed()
        );
        drop(resume);
        assert!(!env.has_record());
        assert_eq!(registry.digest("kubemark", &tag), None);
    }
}

/// This machine's platform in Go's names, as the builder records it.
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

#[test]
fn layers_can_be_left_uncompressed_or_zstd_and_a_base_read_from_an_oci_layout() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    let env = without_engine();

    // An image built and not pushed lands in the state directory's OCI layout.
    let base_env = without_engine();
    base_env
        .xtask(
            &Args::image(
                "kubemark-test.local",
                "base",
                upstream.url(),
                &base_env.path("k"),
            )
            .opt("--builder", "oci")
            .flags(&["--no-push"]),
        )
        .assert_code(0)
        .stdout_has(&["built kubemark-test.local/kubemark:base"]);
    let layout = base_env.state().join("oci");
    assert!(layout.join("index.json").is_file());

    // That layout as the base, layers not compressed: its layer is uploaded from it.
    let image = format!("{}/kubemark:plain", registry.addr);
    let _cleanup = docker::Cleanup(vec![image.clone()]);
    env.xtask(
        &Args::image(&registry.addr, "plain", upstream.url(), &env.path("k"))
            .opt("--builder", "oci")
            .opt("--compression", "none")
            .opt("--base-image", format!("oci:{}", layout.display())),
    )
    .assert_code(0);
    let manifest = registry.manifest("kubemark", "plain").unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "the base's layer and ours: {manifest}");
    assert_eq!(
        layers[1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    docker::pull(&image);
    assert_eq!(docker::run(&image, None, &[]), "kubemark fixture 1");
    // The label names the layout's image, not where the layout lies on this machine.
    assert_eq!(
        docker::labels(&image)["org.opencontainers.image.base.name"],
        "oci-layout:kubemark-test.local/kubemark:base"
    );
    // The tool's own layout is pruned by every run: it is no base.
    env.xtask(
        &Args::image(&registry.addr, "own", upstream.url(), &env.path("k"))
            .opt("--builder", "oci")
            .opt(
                "--base-image",
                format!("oci:{}", env.state().join("oci").display()),
            ),
    )
    .assert_code(2)
    .stderr_has(&["is this tool's own layout"]);

    // zstd: the manifest says so, and the blob is a zstd frame.
    env.xtask(
        &Args::image(&registry.addr, "zstd", upstream.url(), &env.path("k"))
            .opt("--builder", "oci")
            .opt("--compression", "zstd"),
    )
    .assert_code(0);
    let manifest = registry.manifest("kubemark", "zstd").unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let blob = support::sh(
        "sh",
        &[
            "-c",
            &format!(
                "curl -sSf http://{}/v2/kubemark/blobs/{} | head -c 4 | od -An -tx1",
                registry.addr,
                layer["digest"].as_str().unwrap()
            ),
        ],
        None,
    );
    assert_eq!(blob.trim(), "28 b5 2f fd", "the zstd magic number");

    // The engine's image, layers left uncompressed: an OCI manifest (Docker's
    // schema 2 has no such layer type) that the engine pulls and runs.
    let engine_env = Env::new();
    let image = format!("{}/kubemark:engine-plain", registry.addr);
    let _cleanup = docker::Cleanup(vec![image.clone()]);
    engine_env
        .xtask(
            &Args::image(
                &registry.addr,
                "engine-plain",
                upstream.url(),
                &engine_env.path("k"),
            )
            .opt("--compression", "none"),
        )
        .assert_code(0);
    let manifest = registry.manifest("kubemark", "engine-plain").unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    docker::rmi(&image);
    docker::pull(&image);
    assert_eq!(docker::run(&image, None, &[]), "kubemark fixture 1");
}

#[test]
fn what_the_oci_builder_cannot_do_is_refused_naming_it_and_nothing_is_pushed() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    upstream
        .fixture
        .write(
            "cluster/images/kubemark/Dockerfile",
            "FROM scratch\nCOPY kubemark /kubemark\nRUN [\"/kubemark\", \"--version\"]\n",
        )
        .unwrap();
    upstream.fixture.commit("a RUN step").unwrap();
    let env = without_engine();
    let args =
        Args::image(&registry.addr, "v1", upstream.url(), &env.path("k")).opt("--builder", "oci");
    env.xtask(&args).assert_code(1).stderr_has(&[
        "Dockerfile line 3: `RUN`: `RUN` is not supported by --builder oci",
        "--builder engine",
    ]);
    assert!(registry.repositories().is_empty());
    assert!(!env.has_record());
    // The second time the checkout is there: refused by the preflight, before make.
    env.xtask(&args)
        .assert_code(1)
        .stderr_has(&["`RUN` is not supported"])
        .stderr_lacks(&["==> make"]);
    // The remote drops the RUN: the checkout's old Dockerfile is not held against it.
    upstream
        .fixture
        .write(
            "cluster/images/kubemark/Dockerfile",
            "FROM scratch\nCOPY kubemark /kubemark\nENTRYPOINT [\"/kubemark\"]\n",
        )
        .unwrap();
    upstream.fixture.commit("no RUN").unwrap();
    env.xtask(
        &Args::image(&registry.addr, "v2", upstream.url(), &env.path("k")).opt("--builder", "oci"),
    )
    .assert_code(0);
    assert!(registry.digest("kubemark", "v2").is_some());
    assert_eq!(registry.digest("kubemark", "v1"), None);

    // What the preflight can read is refused before a clone: a base that is not
    // there, a state folder's `oci` the tool did not make, a platform Go has not.
    let fresh = without_engine();
    let oci = |tag: &str| {
        Args::image(&registry.addr, tag, upstream.url(), &fresh.path("k")).opt("--builder", "oci")
    };
    fresh
        .xtask(
            &oci("v3")
                .opt("--base-image", format!("{}/base:missing", registry.addr))
                .flags(&["--dry-run"]),
        )
        .assert_code(2)
        .stderr_has(&["base:missing", "does not serve it"]);
    std::fs::create_dir_all(fresh.state().join("oci")).unwrap();
    std::fs::write(fresh.state().join("oci/mine"), "a user's file").unwrap();
    fresh
        .xtask(&oci("v3"))
        .assert_code(2)
        .stderr_has(&["this tool did not make it"]);
    assert_eq!(
        std::fs::read_to_string(fresh.state().join("oci/mine")).unwrap(),
        "a user's file"
    );
    fresh
        .xtask(&oci("v3").opt("--platforms", "linux/ARM64"))
        .assert_code(2)
        .stderr_has(&["kubemark images are built for linux on"]);
    assert!(!fresh.path("k").exists(), "nothing was cloned");

    // Choices only the other builder makes are refused up front.
    let engine_env = Env::new();
    engine_env
        .xtask(
            &Args::image(&registry.addr, "v1", upstream.url(), &engine_env.path("k"))
                .opt("--compression", "zstd")
                .flags(&["--engine-push"]),
        )
        .assert_code(2)
        .stderr_has(&["--compression zstd needs this process to push"]);
    fresh
        .xtask(&oci("v3").flags(&["--engine-push"]))
        .assert_code(2)
        .stderr_has(&["--engine-push is for --builder engine"]);
    engine_env
        .xtask(
            &Args::image(&registry.addr, "v1", upstream.url(), &engine_env.path("k"))
                .opt("--base-image", "oci:/tmp"),
        )
        .assert_code(2)
        .stderr_has(&["only --builder oci reads"]);
    engine_env
        .xtask(
            &Args::image(&registry.addr, "v1", upstream.url(), &engine_env.path("k"))
                .opt("--platforms", "linux/arm/v7"),
        )
        .assert_code(2)
        .stderr_has(&["KUBE_BUILD_PLATFORMS takes os/arch", "write linux/arm"]);
    assert!(!engine_env.path("k").exists(), "nothing was cloned");
    // Several platforms through the engine need a scratch base: refused before make
    // once the checkout shows the Dockerfile's base.
    let busybox = Args::image(&registry.addr, "v1", upstream.url(), &env.path("k"))
        .opt("--platforms", "linux/amd64,linux/arm64")
        .opt("--base-image", docker::busybox_base());
    Env::new()
        .xtask(&busybox)
        .assert_code(2)
        .stderr_has(&["--platforms with --builder engine needs a scratch base"])
        .stderr_lacks(&["==> make"]);
    assert_eq!(
        registry.repositories(),
        ["kubemark"],
        "only the v2 pushed above"
    );
}

/// The Go build cache of whoever runs the tests (the xtask runs with a HOME of its own).
fn go_cache() -> String {
    support::sh("go", &["env", "GOCACHE"], None)
}

/// The ELF machine of a binary: 0x3e x86-64, 0xb7 aarch64.
fn elf_machine(binary: &[u8]) -> u16 {
    assert_eq!(&binary[..4], b"\x7fELF");
    u16::from_le_bytes([binary[18], binary[19]])
}

#[test]
fn several_platforms_are_pushed_under_one_index_by_either_builder() {
    let registry = Registry::start();
    let upstream = Upstream::new();
    // The engine's images pushed by this process, or (--engine-push) by the engine.
    for (version, (builder, tag, engine_push)) in [
        ("oci", "multi-oci", false),
        ("engine", "multi-engine", false),
        ("engine", "multi-engine-push", true),
    ]
    .into_iter()
    .enumerate()
    {
        // A binary of its own for each round: no image of one round (the engine's
        // step cache, which the previous round's clean-up may be removing, or a
        // pushed blob) can stand in for another's.
        let version = (version + 2).to_string();
        upstream.fixture.set_version(&version).unwrap();
        upstream
            .fixture
            .commit(&format!("version {version}"))
            .unwrap();
        let mut env = if builder == "oci" {
            without_engine()
        } else {
            Env::new()
        };
        env.set("GOCACHE", &go_cache());
        let image = format!("{}/kubemark:{tag}", registry.addr);
        let mut cleanup = vec![image.clone()];
        if builder == "engine" {
            cleanup.extend(["linux-amd64", "linux-arm64"].map(|p| format!("{image}-{p}")));
        }
        let _cleanup = docker::Cleanup(cleanup);
        let mut args = Args::image(&registry.addr, tag, upstream.url(), &env.path("k"))
            .opt("--builder", builder)
            .opt("--platforms", "linux/amd64,linux/arm64");
        if engine_push {
            args = args.flags(&["--engine-push"]);
        }
        env.xtask(&args)
            .assert_code(0)
            .stderr_has(&[
                "KUBE_BUILD_PLATFORMS=linux/amd64",
                "KUBE_BUILD_PLATFORMS=linux/arm64",
            ])
            .stdout_has(&["linux/amd64 sha256:", "linux/arm64 sha256:"]);

        // The tag names an index of both platforms; the record has its digest and each one's.
        let index = registry.manifest("kubemark", tag).unwrap();
        let record = env.record();
        assert_eq!(
            record["digest"],
            registry.digest("kubemark", tag).unwrap().as_str()
        );
        let entries = index["manifests"].as_array().unwrap();
        let platforms: Vec<String> = entries
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            platforms,
            ["linux/amd64", "linux/arm64"],
            "{builder}: {index}"
        );
        for (entry, recorded) in entries.iter().zip(record["platforms"].as_array().unwrap()) {
            assert_eq!(entry["digest"], recorded["digest"], "{builder}");
        }
        if builder == "engine" {
            assert_eq!(
                index["mediaType"],
                "application/vnd.docker.distribution.manifest.list.v2+json"
            );
            // Pushed by this process, the platforms' images go by digest: no tag
            // but the one asked for. The engine's own push needs a tag for each.
            for p in ["linux-amd64", "linux-arm64"] {
                assert_eq!(
                    registry.digest("kubemark", &format!("{tag}-{p}")).is_some(),
                    engine_push,
                    "{tag}-{p}"
                );
            }
        }

        // Each platform pulls with its own binary; the host's runs.
        docker::rmi(&image);
        sh_ok(&["pull", "--quiet", "--platform", "linux/arm64", &image]);
        assert_eq!(
            docker::inspect(&image, ".Architecture"),
            "arm64",
            "{builder}"
        );
        assert_eq!(
            elf_machine(&docker::read_file(&image, "/kubemark")),
            0xb7,
            "{builder}"
        );
        docker::rmi(&image);
        sh_ok(&["pull", "--quiet", "--platform", "linux/amd64", &image]);
        assert_eq!(
            docker::inspect(&image, ".Architecture"),
            "amd64",
            "{builder}"
        );
        assert_eq!(
            elf_machine(&docker::read_file(&image, "/kubemark")),
            0x3e,
            "{builder}"
        );
        assert_eq!(
            docker::run(&image, None, &[]),
            format!("kubemark fixture {version}"),
            "{builder}"
        );
    }
}

fn sh_ok(args: &[&str]) {
    support::sh("docker", args, None);
}
