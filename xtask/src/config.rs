//! Settings from `kubemark.toml` (at the workspace root, or `--config`), and the
//! precedence every task follows: flags win over `KUBEMARK_*` variables, which
//! win over the file, which wins over the built-in defaults.

use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::report::Failure;

/// The workspace this xtask was built in.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// `target/kubemark` of the workspace (honouring `CARGO_TARGET_DIR`).
pub fn default_state_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("kubemark")
}

/// The `[image]` table.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSettings {
    pub tag: Option<String>,
    pub registry: Option<String>,
    pub kubernetes_repo: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub source_dir: Option<PathBuf>,
    pub depth: Option<u32>,
    pub no_update: Option<bool>,
    pub allow_dirty: Option<bool>,
    pub base_image: Option<String>,
    pub no_push: Option<bool>,
    pub force: Option<bool>,
    pub registry_username: Option<String>,
    pub output: Option<String>,
}

/// The `[deploy]` table (also read by `demo`, `status`, `destroy`, `render`).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeploySettings {
    pub external_kubeconfig: Option<PathBuf>,
    pub external_context: Option<String>,
    pub master_kubeconfig: Option<PathBuf>,
    pub master_context: Option<String>,
    pub namespace: Option<String>,
    pub replicas: Option<u32>,
    pub image: Option<String>,
    pub template: Option<String>,
    pub set: Option<std::collections::BTreeMap<String, String>>,
    pub kubelet_cpu: Option<String>,
    pub kubelet_memory: Option<String>,
    pub proxy_cpu: Option<String>,
    pub proxy_memory: Option<String>,
    pub npd_cpu: Option<String>,
    pub npd_memory: Option<String>,
    pub node_labels: Option<String>,
    pub register_with_taints: Option<String>,
    pub max_pods: Option<u32>,
    pub extended_resources: Option<String>,
    pub timeout: Option<String>,
    pub no_wait: Option<bool>,
    pub allow_loopback_master: Option<bool>,
    pub skip_capacity_check: Option<bool>,
    pub adopt: Option<bool>,
    pub output: Option<String>,
}

/// The whole file.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub image: ImageSettings,
    #[serde(default)]
    pub deploy: DeploySettings,
    /// Where the settings came from, for messages.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl Settings {
    /// Read `explicit`, or `kubemark.toml` at the workspace root if it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Self, Failure> {
        let (path, required) = match explicit {
            Some(p) => (p.to_owned(), true),
            None => (workspace_root().join("kubemark.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(e) => {
                return Err(Failure::usage(
                    format!("cannot read the settings file {}: {e}", path.display()),
                    "pass --config with a readable file, or unset KUBEMARK_CONFIG",
                ));
            }
        };
        let mut settings: Settings = toml::from_str(&text).map_err(|e| {
            Failure::usage(
                format!("the settings file {} is not valid: {}", path.display(), e.message()),
                "keys go in an [image] or [deploy] table and are the long flag names, e.g. `registry = \"127.0.0.1:5000\"`",
            )
        })?;
        settings.path = Some(path);
        Ok(settings)
    }
}

/// Whether the user set `id` on the command line or through its variable.
pub fn explicit(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.try_get_raw(id).ok().and(matches.value_source(id)),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// How the user gave the value of `id`, for messages: `--max-pods`,
/// `KUBEMARK_MAX_PODS`, or `max-pods in kubemark.toml` (the file's own name).
pub fn origin(
    matches: Option<&ArgMatches>,
    id: &str,
    env: &str,
    file: &Settings,
    table: &str,
) -> String {
    let flag = id.replace('_', "-");
    let source = matches.and_then(|m| m.try_get_raw(id).ok().and(m.value_source(id)));
    match source {
        Some(ValueSource::EnvVariable) => env.to_owned(),
        Some(ValueSource::CommandLine) => format!("--{flag}"),
        _ => match &file.path {
            Some(path) => format!("{flag} under [{table}] in {}", path.display()),
            None => format!("--{flag}"),
        },
    }
}

/// A switch: the flag or variable when given, else the file, else off.
pub fn switch(matches: &ArgMatches, id: &str, flag: bool, file: Option<bool>) -> bool {
    if explicit(matches, id) {
        flag
    } else {
        file.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    struct T {
        #[arg(long, env = "KUBEMARK_TEST_SWITCH_NEVER_SET")]
        on: bool,
    }

    #[test]
    fn switches_layer() {
        let m = T::command().get_matches_from(["t"]);
        let t = T::from_arg_matches(&m).unwrap();
        assert!(!switch(&m, "on", t.on, None));
        assert!(switch(&m, "on", t.on, Some(true)));
        let m = T::command().get_matches_from(["t", "--on"]);
        let t = T::from_arg_matches(&m).unwrap();
        assert!(switch(&m, "on", t.on, Some(false)));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubemark.toml");
        std::fs::write(&path, "[image]\nregistri = \"x\"\n").unwrap();
        let e = Settings::load(Some(&path)).unwrap_err();
        assert!(e.message.contains("registri"), "{}", e.message);
        std::fs::write(
            &path,
            "[image]\nregistry = \"r.io\"\ndepth = 3\nno-push = true\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.image.registry.as_deref(), Some("r.io"));
        assert_eq!(s.image.depth, Some(3));
        assert_eq!(s.image.no_push, Some(true));
    }
}
