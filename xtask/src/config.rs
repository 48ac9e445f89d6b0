//! `kubemark.toml` (at the workspace root, or `--config`) and the one rule of
//! precedence: the file's values become the defaults of the matching flags, so
//! clap's own order holds for every task: a flag wins over its `KUBEMARK_*`
//! variable, which wins over the file, which wins over the built-in default.
//! Keys are the long flag names, in an `[image]` or `[deploy]` table.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

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

/// The tables of the file, and which subcommands take their keys.
const TABLES: [(&str, &[&str]); 2] = [("image", &["image"]), ("deploy", &["deploy"])];

/// Flags a file may not set: each run decides them itself.
const PER_RUN: [&str; 3] = ["dry_run", "show_secrets", "help"];

/// Keys that are not a flag's default: `[deploy.set]` adds to `--set`.
const MERGED: [(&str, &str); 1] = [("deploy", "set")];

/// Keys of `deploy` that its subcommands do not share (destroy's `--timeout`
/// is how long to wait for deletions, not for a bring-up).
const NOT_INHERITED: [(&str, &str); 1] = [("destroy", "timeout")];

/// The settings file as read: tables of keys, and where it came from.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    table: toml::Table,
    /// Where the settings came from, for messages.
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
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            Failure::usage(
                format!(
                    "the settings file {} is not valid TOML: {}",
                    path.display(),
                    e.message()
                ),
                HINT,
            )
        })?;
        Ok(Self {
            table,
            path: Some(path),
        })
    }

    /// The value of `key` (as written in the file, `kebab-case`) in `[table]`.
    pub fn get(&self, table: &str, key: &str) -> Option<&toml::Value> {
        self.table.get(table)?.as_table()?.get(key)
    }

    /// A path under `[table]`.
    pub fn path_of(&self, table: &str, key: &str) -> Option<PathBuf> {
        self.get(table, key)?.as_str().map(PathBuf::from)
    }

    /// `[deploy.set]`: placeholder values, added to `--set`.
    pub fn sets(&self) -> Result<Vec<(String, String)>, Failure> {
        let Some(value) = self.get("deploy", "set") else {
            return Ok(Vec::new());
        };
        let bad = || self.invalid("deploy", "set", "is a table of placeholder = \"value\"");
        let table = value.as_table().ok_or_else(bad)?;
        table
            .iter()
            .map(|(k, v)| Ok((k.clone(), scalar(v).ok_or_else(bad)?)))
            .collect()
    }

    fn describe(&self) -> String {
        self.path.as_ref().map_or_else(
            || "the settings file".to_owned(),
            |p| p.display().to_string(),
        )
    }

    fn invalid(&self, table: &str, key: &str, why: &str) -> Failure {
        Failure::usage(
            format!("{key} under [{table}] in {} {why}", self.describe()),
            HINT,
        )
    }

    /// The command with every key of the file as the default of its flag.
    /// Unknown tables and keys, and values the flag would refuse, are errors
    /// that name the key and the file (before anything runs).
    pub fn apply(&self, mut cli: Command) -> Result<Command, Failure> {
        for (name, value) in &self.table {
            let Some((table, subcommands)) = TABLES.iter().find(|(t, _)| t == name) else {
                return Err(Failure::usage(
                    format!(
                        "the settings file {} has a table [{name}]; it knows [image] and [deploy]",
                        self.describe()
                    ),
                    HINT,
                ));
            };
            let keys = value.as_table().ok_or_else(|| {
                Failure::usage(
                    format!("{name} in {} is not a table", self.describe()),
                    HINT,
                )
            })?;
            for sub in *subcommands {
                let mut command = cli.find_subcommand(sub).cloned().unwrap_or_default();
                for (key, value) in keys {
                    if MERGED.contains(&(table, key.as_str())) {
                        continue;
                    }
                    command = self.default_of(command, table, key, value, true)?;
                }
                cli = cli.mut_subcommand(sub, |_| command);
            }
        }
        Ok(cli)
    }

    /// `command` with `key`'s value as its flag's default, and the same in
    /// its subcommands that take the flag (`deploy status`, `deploy render`).
    fn default_of(
        &self,
        command: Command,
        table: &str,
        key: &str,
        value: &toml::Value,
        required: bool,
    ) -> Result<Command, Failure> {
        // A key is a flag's long name, exactly (`max-pods`, not `max_pods`).
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key) && !PER_RUN.contains(&a.get_id().as_str()))
            .cloned();
        let mut command = match arg {
            Some(arg) => {
                let id = arg.get_id().as_str().to_owned();
                let text = self.checked(&arg, table, key, value)?;
                if matches!(arg.get_action(), ArgAction::SetTrue) {
                    // A switch the file turns on, the command line turns off
                    // with `--flag=false` (flag > env > file holds for switches).
                    command.mut_arg(&id, |a| {
                        a.action(ArgAction::Set)
                            .num_args(0..=1)
                            .require_equals(true)
                            .default_missing_value("true")
                            .default_value(text)
                    })
                } else {
                    command.mut_arg(&id, |a| a.default_value(text))
                }
            }
            None if required => {
                let mut known: Vec<String> = command
                    .get_arguments()
                    .filter(|a| a.get_long().is_some() && !PER_RUN.contains(&a.get_id().as_str()))
                    .filter(|a| !a.is_global_set())
                    .filter_map(|a| a.get_long().map(str::to_owned))
                    .collect();
                known.extend(
                    MERGED
                        .iter()
                        .filter(|(t, _)| *t == table)
                        .map(|(_, k)| (*k).to_owned()),
                );
                known.sort();
                return Err(Failure::usage(
                    format!(
                        "the settings file {} is not valid: unknown key `{key}` under [{table}]",
                        self.describe()
                    ),
                    format!(
                        "the keys of [{table}] are its flags' long names: {}",
                        known.join(", ")
                    ),
                ));
            }
            None => command,
        };
        let subs: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for sub in subs {
            if NOT_INHERITED.contains(&(sub.as_str(), key)) {
                continue;
            }
            let inner = command.find_subcommand(&sub).cloned().unwrap_or_default();
            let inner = self.default_of(inner, table, key, value, false)?;
            command = command.mut_subcommand(&sub, |_| inner);
        }
        Ok(command)
    }

    /// The file's value as the flag's text, refused as the flag would refuse it.
    fn checked(
        &self,
        arg: &Arg,
        table: &str,
        key: &str,
        value: &toml::Value,
    ) -> Result<String, Failure> {
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match (switch, value) {
            (true, toml::Value::Boolean(b)) => return Ok(b.to_string()),
            (true, _) => return Err(self.invalid(table, key, "is a switch: true or false")),
            (false, toml::Value::Boolean(_)) => {
                return Err(self.invalid(table, key, "takes a value, not true or false"));
            }
            _ => {}
        }
        let text = scalar(value)
            .ok_or_else(|| self.invalid(table, key, "takes one value (a string or a number)"))?;
        // The flag's own parser, alone: what it refuses on the command line it
        // refuses here, named as the file's key.
        let probe = Command::new("file")
            .no_binary_name(true)
            .arg(
                Arg::new("value")
                    .long("value")
                    .num_args(1)
                    .allow_hyphen_values(true)
                    .value_parser(arg.get_value_parser().clone()),
            )
            .try_get_matches_from([OsString::from("--value"), OsString::from(&text)]);
        if let Err(e) = probe {
            let why = match std::error::Error::source(&e) {
                Some(source) => source.to_string(),
                None => {
                    let valid: Vec<String> = arg
                        .get_possible_values()
                        .iter()
                        .map(|v| v.get_name().to_owned())
                        .collect();
                    format!("expected one of {}", valid.join(", "))
                }
            };
            return Err(self.invalid(table, key, &format!("`{text}` is not valid: {why}")));
        }
        Ok(text)
    }
}

const HINT: &str = "keys go in an [image] or [deploy] table and are the long flag names, e.g. `registry = \"127.0.0.1:5000\"`";

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// `--config FILE`, `--config=FILE` or `KUBEMARK_CONFIG`, read before the
/// command line is parsed (the file gives the parser its defaults).
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("KUBEMARK_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// How the task's flags were given: for messages that name an input as the
/// user gave it (`--max-pods`, `KUBEMARK_MAX_PODS`, `max-pods under [deploy]
/// in FILE`).
#[derive(Debug, Clone, Default)]
pub struct Given {
    matches: ArgMatches,
    table: &'static str,
    file: Option<PathBuf>,
    keys: Vec<String>,
}

impl Given {
    /// The innermost subcommand's matches (`deploy render` → render's).
    pub fn new(matches: &ArgMatches, settings: &Settings) -> Self {
        let mut leaf = matches;
        let mut table = "";
        while let Some((name, sub)) = leaf.subcommand() {
            if let Some((t, _)) = TABLES.iter().find(|(_, subs)| subs.contains(&name)) {
                table = t;
            }
            leaf = sub;
        }
        let keys = settings
            .table
            .get(table)
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        Self {
            matches: leaf.clone(),
            table,
            file: settings.path.clone(),
            keys,
        }
    }

    pub fn source(&self, id: &str) -> Option<ValueSource> {
        self.matches
            .try_get_raw(id)
            .ok()
            .and(self.matches.value_source(id))
    }

    /// Whether `id` came from the command line or its variable.
    pub fn explicit(&self, id: &str) -> bool {
        matches!(
            self.source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }

    /// Whether `id` was given on this command line.
    pub fn on_command_line(&self, id: &str) -> bool {
        self.source(id) == Some(ValueSource::CommandLine)
    }

    /// The file key of `id`, if the file set it.
    fn key(&self, id: &str) -> Option<String> {
        let flag = if id == "git_ref" {
            "ref".to_owned()
        } else {
            id.replace('_', "-")
        };
        self.keys.contains(&flag).then_some(flag)
    }

    /// `--flag`, the variable `env`, or `flag under [table] in FILE`.
    pub fn origin(&self, id: &str, env: &str) -> String {
        let flag = if id == "git_ref" {
            "ref".to_owned()
        } else {
            id.replace('_', "-")
        };
        match self.source(id) {
            Some(ValueSource::EnvVariable) if !env.is_empty() => env.to_owned(),
            Some(ValueSource::DefaultValue) => match (self.key(id), &self.file) {
                (Some(key), Some(path)) => {
                    format!("{key} under [{}] in {}", self.table, path.display())
                }
                _ => format!("--{flag}"),
            },
            _ => format!("--{flag}"),
        }
    }

    /// `value` written where the user wrote `id`: `--registry VALUE`,
    /// `KUBEMARK_REGISTRY=VALUE`, or `registry = "VALUE"` in the file.
    pub fn with(&self, id: &str, env: &str, value: &str) -> String {
        let flag = id.replace('_', "-");
        match self.source(id) {
            Some(ValueSource::EnvVariable) => format!("{env}={value}"),
            Some(ValueSource::DefaultValue) if self.key(id).is_some() => {
                format!("{flag} = \"{value}\"")
            }
            _ => format!("--{flag} {value}"),
        }
    }

    /// The settings file named in hints.
    pub fn file(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| workspace_root().join("kubemark.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        task: Task,
    }

    #[derive(Debug, Subcommand)]
    enum Task {
        Image {
            #[arg(long, env = "KUBEMARK_TEST_NEVER_SET_ON")]
            on: bool,
            #[arg(long, env = "KUBEMARK_TEST_NEVER_SET_DEPTH")]
            depth: Option<u32>,
            #[arg(long)]
            tag: Option<String>,
        },
    }

    fn settings(text: &str) -> (tempfile::TempDir, Result<Settings, Failure>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubemark.toml");
        std::fs::write(&path, text).unwrap();
        let s = Settings::load(Some(&path));
        (dir, s)
    }

    fn parse(settings: &Settings, args: &[&str]) -> Result<(T, Given), Failure> {
        let cmd = settings.apply(T::command())?;
        let m = cmd.try_get_matches_from(args).unwrap();
        Ok((T::from_arg_matches(&m).unwrap(), Given::new(&m, settings)))
    }

    #[test]
    fn the_file_is_the_default_and_flags_win() {
        let (_d, s) = settings("[image]\non = true\ndepth = 3\ntag = \"file\"\n");
        let s = s.unwrap();
        let (t, given) = parse(&s, &["t", "image"]).unwrap();
        let Task::Image { on, depth, tag } = t.task;
        assert!(on);
        assert_eq!((depth, tag.as_deref()), (Some(3), Some("file")));
        assert!(
            given
                .origin("tag", "KUBEMARK_TAG")
                .starts_with("tag under [image] in ")
        );
        assert_eq!(given.with("tag", "KUBEMARK_TAG", "x"), "tag = \"x\"");
        let (t, given) = parse(&s, &["t", "image", "--tag", "flag", "--depth", "0"]).unwrap();
        let Task::Image { depth, tag, .. } = t.task;
        assert_eq!((depth, tag.as_deref()), (Some(0), Some("flag")));
        assert_eq!(given.origin("tag", "KUBEMARK_TAG"), "--tag");
        assert!(given.explicit("depth"));
    }

    #[test]
    fn a_switch_the_file_turns_on_a_flag_turns_off() {
        let (_d, s) = settings("[image]\non = true\n");
        let s = s.unwrap();
        let on = |args: &[&str]| {
            let (t, _) = parse(&s, args).unwrap();
            let Task::Image { on, .. } = t.task;
            on
        };
        assert!(on(&["t", "image"]));
        assert!(!on(&["t", "image", "--on=false"]));
        assert!(on(&["t", "image", "--on"]));
    }

    #[test]
    fn what_the_file_gets_wrong_is_named_before_anything_runs() {
        for (text, expect) in [
            (
                "[image]\nregistri = \"x\"\n",
                "unknown key `registri` under [image]",
            ),
            ("[image]\ndepth = \"deep\"\n", "depth under [image] in"),
            ("[image]\non = \"yes\"\n", "is a switch"),
            ("[image]\ntag = true\n", "takes a value"),
            ("[image]\ntag = [1]\n", "takes one value"),
            ("[images]\ntag = \"x\"\n", "has a table [images]"),
            ("[image]\ndry-run = true\n", "unknown key `dry-run`"),
            ("[image]\nmax_depth = 1\n", "unknown key `max_depth`"),
            ("[image]\ntag_ = \"x\"\n", "unknown key `tag_`"),
            ("image = 3\n", "is not a table"),
            ("[image\n", "not valid TOML"),
        ] {
            let (_d, s) = settings(text);
            let e = s
                .and_then(|s| parse(&s, &["t", "image"]).map(|_| ()))
                .unwrap_err();
            assert!(e.message.contains(expect), "{text}: {}", e.message);
        }
    }

    #[test]
    fn the_config_path_is_read_before_parsing() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["x", "deploy", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path(&args(&["x", "--config=b.toml", "image"])),
            Some(PathBuf::from("b.toml"))
        );
    }
}
