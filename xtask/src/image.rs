//! `cargo xtask image`: flags, environment and `kubemark.toml` into a
//! [`kubemark_image::Spec`], then the pipeline, drawn as it runs.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::ArgMatches;
use clap::parser::ValueSource;
use kubemark_image::error::RemoteCause;
use kubemark_image::{
    CancellationToken, Credentials, Error, ImageRef, Outcome, Plan, SourceSpec, Spec, Status,
};

use crate::Global;
use crate::config::{Settings, explicit, origin, switch};
use crate::progress::Renderer;
use crate::report::{self, Failure};

/// Where kubernetes comes from unless told otherwise.
pub const UPSTREAM: &str = "https://github.com/kubernetes/kubernetes.git";
/// Where upstream publishes kubemark images (the frozen `staging-k8s.gcr.io` no longer is).
pub const DEFAULT_REGISTRY: &str = "registry.k8s.io";
/// The image the demo names when no `cargo xtask image` ran (the simulated kubelets pull anything).
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/kubemark:latest";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

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
    /// History depth to fetch; 0 fetches all of it [default: 1].
    #[arg(long, env = "KUBEMARK_DEPTH")]
    depth: Option<u32>,
    /// Build the checkout as it is, without fetching.
    #[arg(long, env = "KUBEMARK_NO_UPDATE")]
    no_update: bool,
    /// Build a checkout with local changes as it is; the image is labelled dirty.
    #[arg(long, env = "KUBEMARK_ALLOW_DIRTY")]
    allow_dirty: bool,
    /// Replace the base image (the Dockerfile's final FROM), e.g. a mirror of go-runner.
    #[arg(long, env = "KUBEMARK_BASE_IMAGE", value_name = "IMAGE")]
    base_image: Option<String>,
    /// Build the image but do not push it.
    #[arg(long, env = "KUBEMARK_NO_PUSH")]
    no_push: bool,
    /// Build and push even if nothing changed since the last run.
    #[arg(long, env = "KUBEMARK_FORCE")]
    force: bool,
    /// Check everything and print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Registry user; the password is read from stdin. Default: the Docker config's credentials.
    #[arg(long, env = "KUBEMARK_REGISTRY_USERNAME", value_name = "USER")]
    registry_username: Option<String>,
    /// Result format on stdout.
    #[arg(long, value_enum, env = "KUBEMARK_OUTPUT")]
    output: Option<Output>,
}

pub fn run(args: Args, matches: &ArgMatches, global: &Global) -> Result<(), Failure> {
    let file = &global.settings.image;
    let output = match (args.output, &file.output) {
        (Some(o), _) => o,
        (None, Some(text)) => match text.as_str() {
            "json" => Output::Json,
            "text" => Output::Text,
            other => {
                return Err(Failure::usage(
                    format!("output = \"{other}\" in the settings file is not a format"),
                    "use \"text\" or \"json\"",
                ));
            }
        },
        (None, None) => Output::Text,
    };
    let json = output == Output::Json;
    let given = Inputs::of(matches, &global.settings);
    let spec = spec(args, matches, global, &given).map_err(|f| f.json(json))?;
    let (spec, dry_run) = spec;

    let renderer = Renderer::new(global.verbose);
    let events = renderer.events();
    let cancel = CancellationToken::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let interrupt = {
            let cancel = cancel.clone();
            let renderer = renderer.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    renderer.line(
                        "interrupted: stopping at the next safe point (Ctrl-C again to quit now)",
                    );
                    cancel.cancel();
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(i32::from(report::INTERRUPTED));
                    }
                }
            })
        };
        let prepared = kubemark_image::preflight(&spec, &events).await;
        let result = match prepared {
            Ok(prepared) if dry_run => Ok(Done::Plan(Box::new(prepared.plan))),
            Ok(prepared) => kubemark_image::execute(&spec, prepared, &events, &cancel)
                .await
                .map(|o| Done::Outcome(Box::new(o))),
            Err(e) => Err(e),
        };
        interrupt.abort();
        result
    });
    renderer.finish();
    match result {
        Ok(Done::Plan(plan)) => {
            print_plan(&plan, json);
            Ok(())
        }
        Ok(Done::Outcome(outcome)) => {
            print_outcome(&outcome, json);
            Ok(())
        }
        Err(e) => Err(failure(e, &spec, &given).json(json)),
    }
}

enum Done {
    Plan(Box<Plan>),
    Outcome(Box<Outcome>),
}

/// How the user gave an input, for messages that name it as it was given.
#[derive(Debug, Clone)]
struct Given {
    /// `--registry`, `KUBEMARK_REGISTRY`, or `registry under [image] in FILE`.
    name: String,
    flag: String,
    env: &'static str,
    source: Option<ValueSource>,
}

impl Given {
    fn of(matches: &ArgMatches, id: &str, env: &'static str, settings: &Settings) -> Self {
        Self {
            name: origin(Some(matches), id, env, settings, "image"),
            flag: id.replace('_', "-"),
            env,
            source: matches.try_get_raw(id).ok().and(matches.value_source(id)),
        }
    }

    /// `value` written where the user wrote this input: `--registry VALUE`,
    /// `KUBEMARK_REGISTRY=VALUE`, or `registry = "VALUE"` in the file.
    fn with(&self, value: &str) -> String {
        match self.source {
            Some(ValueSource::EnvVariable) => format!("{}={value}", self.env),
            Some(ValueSource::CommandLine) => format!("--{} {value}", self.flag),
            _ if self.name.starts_with("--") => format!("--{} {value}", self.flag),
            _ => format!("{} = \"{value}\"", self.flag),
        }
    }
}

/// The inputs errors name.
#[derive(Debug, Clone)]
struct Inputs {
    tag: Given,
    registry: Given,
    kubernetes_repo: Given,
}

impl Inputs {
    fn of(matches: &ArgMatches, settings: &Settings) -> Self {
        Self {
            tag: Given::of(matches, "tag", "KUBEMARK_TAG", settings),
            registry: Given::of(matches, "registry", "KUBEMARK_REGISTRY", settings),
            kubernetes_repo: Given::of(
                matches,
                "kubernetes_repo",
                "KUBEMARK_KUBERNETES_REPO",
                settings,
            ),
        }
    }
}

/// The registry and tag the image is named from, each checked and named as given.
fn image_ref(registry: &str, tag: &str, given: &Inputs) -> Result<ImageRef, Failure> {
    if let Some((scheme, rest)) = registry.split_once("://") {
        return Err(Failure::usage(
            format!(
                "{} `{registry}` is a URL; a registry is host[:port][/path], without a scheme",
                given.registry.name
            ),
            format!(
                "drop `{scheme}://`: {}. The engine reaches a registry on this machine over plain HTTP by itself, \
                 any other over HTTPS (or plain HTTP when it is in the engine's insecure-registries)",
                given.registry.with(rest.trim_end_matches('/'))
            ),
        ));
    }
    if let Err(reason) = kubemark_image::reference::check_tag(tag) {
        return Err(Failure::usage(
            format!("{} `{tag}`: the tag {reason}", given.tag.name),
            format!("e.g. {}", given.tag.with("v1.32.0-1")),
        ));
    }
    ImageRef::kubemark(registry, tag).map_err(|e| {
        Failure::usage(
            format!("{} `{registry}`: {e}", given.registry.name),
            format!(
                "a registry is host[:port][/path], e.g. {} or {}",
                given.registry.with("127.0.0.1:5000"),
                given.registry.with("gcr.io/my-project")
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
fn spec(
    args: Args,
    matches: &ArgMatches,
    global: &Global,
    given: &Inputs,
) -> Result<(Spec, bool), Failure> {
    let file = global.settings.image.clone();
    let settings_file = global
        .settings
        .path
        .clone()
        .unwrap_or_else(|| crate::config::workspace_root().join("kubemark.toml"));
    let from_file = format!(
        ", or set `tag` under [image] in {}",
        settings_file.display()
    );
    let tag = args.tag.or(file.tag).ok_or_else(|| {
        Failure::usage(
            "no image tag given",
            format!("pass --tag (e.g. --tag v1.32.0-1), set KUBEMARK_TAG{from_file}"),
        )
    })?;
    let no_push = switch(matches, "no_push", args.no_push, file.no_push);
    let registry = match args.registry.or(file.registry) {
        Some(r) => r,
        None if no_push => DEFAULT_REGISTRY.to_owned(),
        None => {
            return Err(Failure::usage(
                "no registry given to push to",
                "pass --registry (e.g. --registry 127.0.0.1:5000), set KUBEMARK_REGISTRY, or pass --no-push to only build",
            ));
        }
    };
    let image = image_ref(&registry, &tag, given)?;
    let depth = args.depth.or(file.depth).unwrap_or(1);
    let username = args.registry_username.or(file.registry_username);
    let credentials = match username {
        Some(user) if !no_push => Some(read_password(&user)?),
        _ => None,
    };
    if let Some(base) = args.base_image.as_deref().or(file.base_image.as_deref())
        && base != "scratch"
        && let Err(e) = ImageRef::parse(base)
    {
        return Err(Failure::usage(
            format!("--base-image: {e}"),
            "give an image reference such as 127.0.0.1:5000/go-runner:v2.4.0 or `scratch`",
        ));
    }
    let source = SourceSpec {
        url: args
            .kubernetes_repo
            .or(file.kubernetes_repo)
            .unwrap_or_else(|| UPSTREAM.to_owned()),
        git_ref: args.git_ref.or(file.git_ref),
        dir: args
            .source_dir
            .or(file.source_dir)
            .unwrap_or_else(default_source_dir),
        depth,
        update: !switch(matches, "no_update", args.no_update, file.no_update),
        allow_dirty: switch(matches, "allow_dirty", args.allow_dirty, file.allow_dirty),
    };
    if explicit(matches, "git_ref") && !source.update {
        return Err(Failure::usage(
            "--ref and --no-update contradict each other",
            "drop --no-update to fetch the ref, or drop --ref to build what is checked out",
        ));
    }
    let spec = Spec {
        image,
        source,
        base_image: args.base_image.or(file.base_image),
        push: !no_push,
        force: switch(matches, "force", args.force, file.force),
        credentials,
        state_dir: global.state_dir.clone(),
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

fn print_plan(plan: &Plan, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(plan).unwrap_or_default());
        return;
    }
    let s = &plan.source;
    println!("plan (dry run, nothing was changed):");
    println!("  image:   {}", plan.image);
    println!("  engine:  {}", plan.engine);
    let what = match &s.git_ref {
        Some(r) => format!(
            "{} ({} at {})",
            r.asked,
            r.refname.as_deref().unwrap_or("commit"),
            r.commit.as_deref().unwrap_or("?")
        ),
        None => "what is checked out".into(),
    };
    println!(
        "  source:  {} {} of {} into {} (depth {})",
        s.action,
        what,
        s.repository,
        s.dir.display(),
        s.depth
    );
    for change in &s.changes {
        println!("           local change: {change}");
    }
    println!(
        "  build:   {} (log: {})",
        plan.build.command,
        plan.build.log.display()
    );
    println!(
        "  image:   {}{}",
        plan.build.dockerfile.display(),
        plan.build
            .base_image
            .as_ref()
            .map(|b| format!(" with FROM {b}"))
            .unwrap_or_default()
    );
    match &plan.push {
        Some(p) => println!("  push:    to {} {}", p.registry, p.auth),
        None => println!("  push:    no (--no-push)"),
    }
    println!("  record:  {}", plan.record.display());
}

fn print_outcome(outcome: &Outcome, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(outcome).unwrap_or_default()
        );
        return;
    }
    let r = &outcome.record;
    match outcome.status {
        Status::UpToDate => println!(
            "up to date: {} (nothing changed since the last run)",
            r.image
        ),
        Status::Pushed => println!("pushed {}", r.image),
        Status::Built => println!("built {} (not pushed)", r.image),
    }
    println!(
        "  commit {} version {}{}",
        r.commit,
        r.version,
        if r.dirty { " (dirty)" } else { "" }
    );
    println!("  record {}", outcome.record_path.display());
}

/// The library's error, with what to do about it.
fn failure(e: Error, spec: &Spec, given: &Inputs) -> Failure {
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
            message = format!("{} {url}: {problem}", given.kubernetes_repo.name);
            Some(format!(
                "give the path of a kubernetes clone (`git clone https://github.com/kubernetes/kubernetes`), or a \
                 URL: {} (https, ssh or git://)",
                given.kubernetes_repo.with(UPSTREAM)
            ))
        }
        Error::AddressForm {
            registry, address, ..
        } => {
            message = format!("{} `{registry}`: {e}", given.registry.name);
            let port = registry
                .split_once(':')
                .map(|(_, port)| format!(":{port}"))
                .unwrap_or_default();
            Some(format!(
                "write the address in full: {}",
                given.registry.with(&format!("{address}{port}"))
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
