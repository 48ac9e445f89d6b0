//! `cargo xtask image`: flags, environment and `kubemark.toml` into a
//! [`kubemark_image::Spec`], then the pipeline, drawn as it runs.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use kubemark_image::error::RemoteCause;
use kubemark_image::oci::{Compression, Platform};
use kubemark_image::{Builder, Credentials, Error, ImageRef, Outcome, Plan, SourceSpec, Spec};

use clap::builder::BoolishValueParser;

use crate::Global;
use crate::config::Given;
use crate::progress::Renderer;
use crate::report::{self, Failure};
mod output;

use output::{print_outcome, print_plan};

use crate::run::{Output, Threads, with_interrupt};

/// Where kubernetes comes from unless told otherwise.
pub const UPSTREAM: &str = "https://github.com/kubernetes/kubernetes.git";
/// Where upstream publishes kubemark images (the frozen `staging-k8s.gcr.io` no longer is).
pub const DEFAULT_REGISTRY: &str = "registry.k8s.io";
/// The image the demo names when no `cargo xtask image` ran (the simulated kubelets pull anything).
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/kubemark:latest";

/// Build the kubemark image from a kubernetes checkout and push it.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Every flag can also be set as KUBEMARK_<FLAG> (e.g. KUBEMARK_REGISTRY) \
or in the [image] table of kubemark.toml (e.g. registry = \"127.0.0.1:5000\"); \
flags win over the environment, which wins over the file."
)]
pub struct Args {
    /// Image tag: the image is REGISTRY/kubemark:TAG. Required.
    #[arg(long, env = "KUBEMARK_TAG")]
    tag: Option<String>,
    /// Registry (and path) to push to, e.g. 127.0.0.1:5000 or gcr.io/my-project. Required unless --no-push.
    #[arg(long, env = "KUBEMARK_REGISTRY")]
    registry: Option<String>,
    /// Kubernetes repository: https, ssh, git:// URL or a local path [default: the upstream GitHub URL].
    #[arg(long, env = "KUBEMARK_KUBERNETES_REPO", value_name = "URL")]
    kubernetes_repo: Option<String>,
    /// Branch, tag or full commit id to build [default: the repository's HEAD].
    #[arg(long = "ref", env = "KUBEMARK_REF", value_name = "REF")]
    git_ref: Option<String>,
    /// Where the kubernetes checkout lives [default: ~/.cache/kubemark/kubernetes].
    #[arg(long, env = "KUBEMARK_SOURCE_DIR", value_name = "DIR")]
    source_dir: Option<PathBuf>,
    /// History depth to fetch; 0 fetches all of it.
    #[arg(long, env = "KUBEMARK_DEPTH", default_value_t = 1)]
    depth: u32,
    /// Build the checkout as it is, without fetching.
    #[arg(long, env = "KUBEMARK_NO_UPDATE", value_parser = BoolishValueParser::new())]
    no_update: bool,
    /// Build a checkout with local changes as it is; the image is labelled dirty.
    #[arg(long, env = "KUBEMARK_ALLOW_DIRTY", value_parser = BoolishValueParser::new())]
    allow_dirty: bool,
    /// Replace the base image (the Dockerfile's final FROM), e.g. a mirror of go-runner.
    #[arg(long, env = "KUBEMARK_BASE_IMAGE", value_name = "IMAGE")]
    base_image: Option<String>,
    /// Who builds and pushes: the Docker engine, or this process (no engine needed;
    /// reproducible layers compressed on every core, pushed through the registry API).
    #[arg(long, value_enum, env = "KUBEMARK_BUILDER", default_value_t = BuilderArg::Engine)]
    builder: BuilderArg,
    /// Layer compression of the pushed image: gzip (every runtime), zstd (containerd 1.5+, Docker 23+), none.
    #[arg(long, value_enum, env = "KUBEMARK_COMPRESSION", default_value_t = CompressionArg::Gzip)]
    compression: CompressionArg,
    /// Build for these platforms (comma-separated, e.g. linux/amd64,linux/arm64): make runs once
    /// per platform, and the tag names an index of the images [default: the host's, or the one
    /// KUBE_BUILD_PLATFORMS names].
    #[arg(
        long,
        env = "KUBEMARK_PLATFORMS",
        value_delimiter = ',',
        value_name = "OS/ARCH"
    )]
    platforms: Vec<String>,
    /// With --builder oci: treat a registry that is not on this machine as insecure, as the
    /// engine means it: HTTPS without verifying its certificate, else plain HTTP (one on this
    /// machine always is).
    #[arg(long, env = "KUBEMARK_INSECURE_REGISTRY", value_parser = BoolishValueParser::new())]
    insecure_registry: bool,
    /// With --builder engine: let the engine push (its own gzip on one core, its proxies and
    /// certs.d) rather than this process through the registry API. Always so for an engine on
    /// containerd's image store.
    #[arg(long, env = "KUBEMARK_ENGINE_PUSH", value_parser = BoolishValueParser::new())]
    engine_push: bool,
    /// Build the image but do not push it.
    #[arg(long, env = "KUBEMARK_NO_PUSH", value_parser = BoolishValueParser::new())]
    no_push: bool,
    /// Build and push even if nothing changed since the last run.
    #[arg(long, env = "KUBEMARK_FORCE", value_parser = BoolishValueParser::new())]
    force: bool,
    /// Check everything and print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Registry user; the password is read from stdin. Default: the Docker config's credentials.
    #[arg(long, env = "KUBEMARK_REGISTRY_USERNAME", value_name = "USER")]
    registry_username: Option<String>,
    /// Result format on stdout.
    #[arg(long, value_enum, env = "KUBEMARK_OUTPUT", default_value_t)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BuilderArg {
    Engine,
    Oci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

pub fn run(args: Args, global: &Global) -> Result<(), Failure> {
    let json = args.output.json();
    let given = &global.given;
    let (spec, dry_run) = spec(args, global).map_err(|f| f.json(json))?;
    let renderer = Renderer::new(global.verbose);
    let events = renderer.events();
    let result = with_interrupt(&renderer, Threads::All, |cancel| {
        let spec = &spec;
        Box::pin(async move {
            let prepared = kubemark_image::preflight(spec, &events).await?;
            if dry_run {
                return Ok(Done::Plan(Box::new(prepared.plan)));
            }
            kubemark_image::execute(spec, prepared, &events, &cancel)
                .await
                .map(|o| Done::Outcome(Box::new(o)))
        })
    })?;
    match result {
        Ok(Done::Plan(plan)) => {
            print_plan(&plan, json);
            Ok(())
        }
        Ok(Done::Outcome(outcome)) => {
            print_outcome(&outcome, json);
            Ok(())
        }
        Err(e) => Err(failure(e, &spec, given).json(json)),
    }
}

enum Done {
    Plan(Box<Plan>),
    Outcome(Box<Outcome>),
}

const TAG: (&str, &str) = ("tag", "KUBEMARK_TAG");
const REGISTRY: (&str, &str) = ("registry", "KUBEMARK_REGISTRY");
const REPO: (&str, &str) = ("kubernetes_repo", "KUBEMARK_KUBERNETES_REPO");

/// The registry and tag the image is named from, each checked and named as given.
fn image_ref(registry: &str, tag: &str, given: &Given) -> Result<ImageRef, Failure> {
    if let Some((scheme, rest)) = registry.split_once("://") {
        return Err(Failure::usage(
            format!(
                "{} `{registry}` is a URL; a registry is host[:port][/path], without a scheme",
                given.origin(REGISTRY.0, REGISTRY.1)
            ),
            format!(
                "drop `{scheme}://`: {}. The engine reaches a registry on this machine over plain HTTP by itself, \
                 any other over HTTPS (or plain HTTP when it is in the engine's insecure-registries)",
                given.with(REGISTRY.0, REGISTRY.1, rest.trim_end_matches('/'))
            ),
        ));
    }
    if let Err(reason) = kubemark_image::reference::check_tag(tag) {
        return Err(Failure::usage(
            format!("{} `{tag}`: the tag {reason}", given.origin(TAG.0, TAG.1)),
            format!("e.g. {}", given.with(TAG.0, TAG.1, "v1.32.0-1")),
        ));
    }
    ImageRef::kubemark(registry, tag).map_err(|e| {
        Failure::usage(
            format!("{} `{registry}`: {e}", given.origin(REGISTRY.0, REGISTRY.1)),
            format!(
                "a registry is host[:port][/path], e.g. {} or {}",
                given.with(REGISTRY.0, REGISTRY.1, "127.0.0.1:5000"),
                given.with(REGISTRY.0, REGISTRY.1, "gcr.io/my-project")
            ),
        )
    })
}

pub fn default_source_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("kubemark").join("kubernetes")
}

/// Layer flags over environment over file over defaults, and check the result.
fn spec(args: Args, global: &Global) -> Result<(Spec, bool), Failure> {
    let given = &global.given;
    let tag = args.tag.ok_or_else(|| {
        Failure::usage(
            "no image tag given",
            format!(
                "pass --tag (e.g. --tag v1.32.0-1), set KUBEMARK_TAG, or set `tag` under [image] in {}",
                given.file().display()
            ),
        )
    })?;
    let registry = match args.registry {
        Some(r) => r,
        None if args.no_push => DEFAULT_REGISTRY.to_owned(),
        None => {
            return Err(Failure::usage(
                "no registry given to push to",
                "pass --registry (e.g. --registry 127.0.0.1:5000), set KUBEMARK_REGISTRY, or pass --no-push to only build",
            ));
        }
    };
    let image = image_ref(&registry, &tag, given)?;
    let credentials = match args.registry_username {
        Some(user) if !args.no_push => Some(read_password(&user)?),
        _ => None,
    };
    if let Some(base) = args.base_image.as_deref()
        && base != "scratch"
        && !base.starts_with("oci:")
        && let Err(e) = ImageRef::parse(base)
    {
        return Err(Failure::usage(
            format!("{}: {e}", given.origin("base_image", "KUBEMARK_BASE_IMAGE")),
            "give an image reference such as 127.0.0.1:5000/go-runner:v2.4.0, `scratch`, or (with --builder oci) a local OCI layout as oci:PATH",
        ));
    }
    let mut platforms: Vec<Platform> = Vec::new();
    for text in args
        .platforms
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
    {
        let platform = Platform::parse(text).map_err(|e| {
            Failure::usage(
                format!("{}: {e}", given.origin("platforms", "KUBEMARK_PLATFORMS")),
                format!(
                    "e.g. {}",
                    given.with("platforms", "KUBEMARK_PLATFORMS", "linux/amd64,linux/arm64")
                ),
            )
        })?;
        const ARCHES: [&str; 8] = [
            "amd64", "arm64", "arm", "ppc64le", "s390x", "386", "riscv64", "loong64",
        ];
        if platform.os != "linux" || !ARCHES.contains(&platform.architecture.as_str()) {
            return Err(Failure::usage(
                format!(
                    "{} `{text}`: kubemark images are built for linux on {}",
                    given.origin("platforms", "KUBEMARK_PLATFORMS"),
                    ARCHES.join(", ")
                ),
                "name platforms as Go does, in lower case: e.g. linux/amd64,linux/arm64",
            ));
        }
        if platform.variant.is_some() {
            return Err(Failure::usage(
                format!(
                    "{} `{text}`: KUBE_BUILD_PLATFORMS takes os/arch, without a variant",
                    given.origin("platforms", "KUBEMARK_PLATFORMS")
                ),
                format!(
                    "write {}/{} (kubernetes builds linux/arm as ARM v7)",
                    platform.os, platform.architecture
                ),
            ));
        }
        if platforms.contains(&platform) {
            return Err(Failure::usage(
                format!(
                    "{} names {platform} twice",
                    given.origin("platforms", "KUBEMARK_PLATFORMS")
                ),
                "name each platform once",
            ));
        }
        platforms.push(platform);
    }
    let source = SourceSpec {
        url: args.kubernetes_repo.unwrap_or_else(|| UPSTREAM.to_owned()),
        git_ref: args.git_ref,
        dir: args.source_dir.unwrap_or_else(default_source_dir),
        depth: args.depth,
        update: !args.no_update,
        allow_dirty: args.allow_dirty,
    };
    if given.explicit("git_ref") && !source.update {
        return Err(Failure::usage(
            format!(
                "{} and {} contradict each other",
                given.origin("git_ref", "KUBEMARK_REF"),
                given.origin("no_update", "KUBEMARK_NO_UPDATE")
            ),
            "drop --no-update to fetch the ref, or drop --ref to build what is checked out",
        ));
    }
    let spec = Spec {
        image,
        source,
        base_image: args.base_image,
        push: !args.no_push,
        force: args.force,
        credentials,
        state_dir: global.state_dir.clone(),
        builder: match args.builder {
            BuilderArg::Engine => Builder::Engine,
            BuilderArg::Oci => Builder::Oci,
        },
        compression: match args.compression {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        },
        platforms,
        insecure_registry: args.insecure_registry,
        engine_push: args.engine_push,
    };
    Ok((spec, args.dry_run))
}

fn read_password(user: &str) -> Result<Credentials, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::usage(
            "--registry-username reads the password from stdin, and stdin is a terminal",
            "pipe it in: `printf %s \"$REGISTRY_PASSWORD\" | cargo xtask image ... --registry-username USER`",
        ));
    }
    let mut password = String::new();
    stdin.lock().read_to_string(&mut password).map_err(|e| {
        Failure::usage(
            format!("cannot read the password from stdin: {e}"),
            "pipe the password on stdin",
        )
    })?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(Failure::usage(
            "--registry-username was given but stdin held no password",
            "pipe the password on stdin",
        ));
    }
    Ok(Credentials::password(user, password))
}

/// The library's error, with what to do about it.
fn failure(e: Error, spec: &Spec, given: &Given) -> Failure {
    let code = if matches!(e, Error::Cancelled) {
        report::INTERRUPTED
    } else if e.is_usage() {
        report::USAGE
    } else {
        report::FAILED
    };
    let registry = spec.image.registry.clone();
    let mut details = Vec::new();
    let mut message = e.to_string();
    let hint: Option<String> = match &e {
        Error::Reference(_) => Some("e.g. --registry 127.0.0.1:5000 --tag v1.32.0-1".into()),
        Error::Usage(_) => None,
        Error::EngineUnreachable { .. } => Some(
            "start the engine (`systemctl start docker`, or run `dockerd`), or point DOCKER_HOST at it: \
             DOCKER_HOST=unix:///path/to/docker.sock or DOCKER_HOST=tcp://host:2375"
                .into(),
        ),
        Error::Engine { .. } => Some("see the engine's log (`journalctl -u docker`)".into()),
        Error::RegistryUnreachable { .. } if spec.builder == Builder::Oci => Some(format!(
            "check that the registry at {registry} runs and that --registry is right; for a registry served over \
             plain HTTP that is not on this machine, pass --insecure-registry"
        )),
        Error::RegistryUnreachable { .. } => Some(format!(
            "check that the registry at {registry} runs and that --registry is right; a registry served over plain \
             HTTP must be in the engine's insecure-registries (loopback addresses are)"
        )),
        Error::RegistryAuthRequired { .. } => Some(format!(
            "run `docker login {registry}`, or pass --registry-username USER with the password on stdin"
        )),
        Error::RegistryAuth { .. } => Some(format!(
            "check the user name and password: `docker login {registry}` again, or pass --registry-username USER \
             with the password on stdin"
        )),
        Error::Registry { .. } => None,
        Error::Credentials { .. } => Some(
            "fix the Docker config (DOCKER_CONFIG or ~/.docker/config.json) or pass --registry-username USER with \
             the password on stdin"
                .into(),
        ),
        Error::RemoteUnreachable { url, cause, .. } => Some(match cause {
            RemoteCause::UntrustedCertificate => {
                "the server's TLS certificate does not verify against this system's CAs (verification stays on); if \
                 a private CA signed it, point SSL_CERT_FILE at a PEM bundle that holds that CA"
                    .into()
            }
            RemoteCause::UnknownHostKey => {
                let (host, port) = ssh_host(url);
                format!(
                    "the ssh host key of {host} is not in ~/.ssh/known_hosts, or differs from it: check the key's \
                     fingerprint with the server's owner, then add it (`ssh-keyscan -p {port} {host} >> \
                     ~/.ssh/known_hosts`)"
                )
            }
            RemoteCause::Authentication => {
                "no credentials were accepted: for ssh, load a key into ssh-agent or put it at ~/.ssh/id_ed25519 \
                 (or id_ecdsa, id_rsa); for https, configure a git credential helper (`git config --global \
                 credential.helper store`)"
                    .into()
            }
            RemoteCause::Other => "check --kubernetes-repo and the network".into(),
        }),
        Error::LocalRepository { url, problem } => {
            message = format!("{} {url}: {problem}", given.origin(REPO.0, REPO.1));
            Some(format!(
                "give the path of a kubernetes clone (`git clone https://github.com/kubernetes/kubernetes`), or a \
                 URL: {} (https, ssh or git://)",
                given.with(REPO.0, REPO.1, UPSTREAM)
            ))
        }
        Error::AddressForm {
            registry, address, ..
        } => {
            message = format!("{} `{registry}`: {e}", given.origin(REGISTRY.0, REGISTRY.1));
            let port = registry
                .split_once(':')
                .map(|(_, port)| format!(":{port}"))
                .unwrap_or_default();
            Some(format!(
                "write the address in full: {}",
                given.with(REGISTRY.0, REGISTRY.1, &format!("{address}{port}"))
            ))
        }
        Error::RefNotFound { similar, .. } => {
            if !similar.is_empty() {
                details.push(format!("similar names: {}", similar.join(", ")));
            }
            Some("pass --ref with a branch, a tag or a full 40-character commit id".into())
        }
        Error::NotACheckout { .. } => {
            Some("pass --source-dir with a kubernetes checkout, or with a new or empty directory to clone into".into())
        }
        Error::NoCheckout { .. } => Some("drop --no-update to clone it, or pass --source-dir with a checkout".into()),
        Error::Dirty { dir, changes } => {
            details.extend(changes.iter().take(20).cloned());
            if changes.len() > 20 {
                details.push(format!("... and {} more", changes.len() - 20));
            }
            Some(format!(
                "commit or stash them (`git -C {} stash --include-untracked`), or pass --allow-dirty to build the \
                 checkout as it is (the image is labelled dirty)",
                dir.display()
            ))
        }
        Error::Git { .. } => None,
        Error::MissingTool { program, .. } => Some(match program.as_str() {
            "go" => "install Go (https://go.dev/doc/install) and put it on PATH".into(),
            other => format!("install {other} (Debian: apt-get install {other}) and put it on PATH"),
        }),
        Error::MakeFailed { log, tail, .. } => {
            details.push(format!("last lines of {}:", log.display()));
            details.extend(tail.iter().map(|l| format!("| {l}")));
            Some(format!("the whole log is {}; -v shows make's output as it runs", log.display()))
        }
        Error::NoBinary { log, .. } => Some(format!(
            "see {}; with KUBE_BUILD_PLATFORMS the binary is in _output/local/bin/OS/ARCH",
            log.display()
        )),
        Error::NoDockerfile { .. } => Some(
            "is --source-dir a kubernetes checkout? The kubemark Dockerfile is in cluster/images/kubemark/".into(),
        ),
        Error::BaseImage { .. } => Some("give --base-image an image reference, e.g. 127.0.0.1:5000/go-runner:v2".into()),
        Error::BuildFailed { .. } if spec.builder == Builder::Oci => Some(
            "change the Dockerfile, or build with --builder engine, which carries out every instruction".into(),
        ),
        Error::BuildFailed { .. } => Some(
            "the engine's message is above; the base image must exist locally or be pullable (see --base-image)"
                .into(),
        ),
        Error::PushFailed { .. } => Some(format!("check that the credentials may push to {}", spec.image.name())),
        Error::Io { .. } => None,
        Error::Locked { .. } => None,
        Error::CheckoutLocked { pid, .. } => Some(format!(
            "two runs on one checkout would build each other's commits: wait for {} to finish, or pass \
             --source-dir with another directory",
            pid.map_or("it".to_owned(), |pid| format!("pid {pid}"))
        )),
        Error::Cancelled => Some("nothing was recorded; run the same command again to continue".into()),
    };
    Failure {
        message,
        details,
        hint,
        code,
        json: false,
    }
}

/// The host and port of an ssh URL (`ssh://user@host:port/path` or `user@host:path`).
fn ssh_host(url: &str) -> (String, u16) {
    let Some(rest) = url.strip_prefix("ssh://") else {
        let before_path = url.split(':').next().unwrap_or_default();
        return (
            before_path
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .to_owned(),
            22,
        );
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !hostport.ends_with(']') => (h, p.parse().unwrap_or(22)),
        _ => (hostport, 22),
    };
    (
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    )
}

#[cfg(test)]
mod tests {
    use super::ssh_host;

    #[test]
    fn ssh_hosts_and_ports_for_the_known_hosts_hint() {
        let h = |u: &str| ssh_host(u);
        assert_eq!(
            h("ssh://git@example.com:2222/k/k.git"),
            ("example.com".into(), 2222)
        );
        assert_eq!(h("ssh://example.com/k"), ("example.com".into(), 22));
        assert_eq!(h("ssh://git@[::1]:2200/k"), ("::1".into(), 2200));
        assert_eq!(h("ssh://[::1]/k"), ("::1".into(), 22));
        assert_eq!(
            h("git@github.com:kubernetes/kubernetes.git"),
            ("github.com".into(), 22)
        );
    }
}
