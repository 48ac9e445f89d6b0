//! The Dockerfile as the OCI builder reads it: the instructions the kubemark
//! Dockerfile uses (`ARG`, one `FROM`, `COPY`, `LABEL`, `ENTRYPOINT`, `CMD`,
//! and `ENV`/`USER`, which only change the config), with the engine's quoting
//! and `$VAR` rules. Anything else is refused by name and line, before anything
//! is built: a build that silently skipped a `RUN` would push a broken image.

use std::collections::BTreeMap;

mod words;

use words::{substitute, words};

use super::layout::Platform;
use crate::error::{Error, Result};

/// What the build does, read from the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The base image as written after substitution: `scratch`, a reference, or `oci:PATH`.
    pub base: String,
    /// `FROM --platform=...`, if given.
    pub platform: Option<String>,
    pub steps: Vec<Step>,
}

/// One instruction after `FROM`, its variables substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Copy context paths to `dest` in the image (one layer).
    Copy {
        sources: Vec<String>,
        dest: String,
        chmod: Option<u32>,
        /// The instruction as written, for the image's history.
        text: String,
    },
    Label(Vec<(String, String)>),
    Env(Vec<(String, String)>),
    Entrypoint(Vec<String>),
    Cmd(Vec<String>),
    User(String),
}

/// Instructions this builder carries out, for messages.
pub const SUPPORTED: &str = "ARG, FROM, COPY, LABEL, ENV, USER, ENTRYPOINT and CMD";

/// What a Dockerfile's variables start from.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The platform built: BuildKit's automatic `TARGET*`/`BUILD*` arguments, and
    /// what `FROM --platform` must name.
    pub platform: &'a Platform,
    /// The base image's environment (`config.Env`), in scope after `FROM` as the
    /// engine has it (`ENV PATH=/opt/bin:$PATH`). Empty until the base is known:
    /// only the base's name is read from such a parse.
    pub base_env: &'a [String],
}

/// What docker sets for an image whose base has no PATH.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Read `text` (a Dockerfile) into a [`Recipe`]; refuse what this builder cannot do.
pub fn parse(text: &str, scope: Scope<'_>) -> Result<Recipe> {
    let refuse = |line: usize, message: String| Error::BuildFailed {
        message: format!("Dockerfile line {line}: {message}"),
        step: None,
    };
    let target = scope.platform;
    let host = Platform::host();
    let mut global_args: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in [
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
        ("BUILDPLATFORM", host.to_string()),
        ("BUILDOS", host.os.clone()),
        ("BUILDARCH", host.architecture.clone()),
        ("BUILDVARIANT", String::new()),
    ] {
        global_args.insert(name.to_owned(), value);
    }
    let mut from: Option<(String, Option<String>)> = None;
    // Variables visible after FROM: the base's environment, ARGs declared there, ENVs.
    let mut vars: BTreeMap<String, String> = scope
        .base_env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if !vars.contains_key("PATH") {
        let (k, v) = DEFAULT_PATH.split_once('=').unwrap_or_default();
        vars.insert(k.to_owned(), v.to_owned());
    }
    let mut steps = Vec::new();
    for (number, line) in logical_lines(text).map_err(|(n, m)| refuse(n, m))? {
        let (keyword, rest) = match line.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (line.as_str(), ""),
        };
        let keyword = keyword.to_ascii_uppercase();
        let at = |message: String| refuse(number, format!("`{keyword}`: {message}"));
        if from.is_none() && keyword != "ARG" && keyword != "FROM" {
            return Err(at("only ARG may come before the first FROM".into()));
        }
        match keyword.as_str() {
            "ARG" => {
                let in_scope = if from.is_none() { &global_args } else { &vars };
                for word in words(rest, in_scope, true).map_err(at)? {
                    let (name, default) = match word.split_once('=') {
                        Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                        None => (word.clone(), None),
                    };
                    if name.is_empty() {
                        return Err(at(format!("`{word}` names no argument")));
                    }
                    let scope = if from.is_none() {
                        &mut global_args
                    } else {
                        &mut vars
                    };
                    match default {
                        Some(value) => {
                            scope.insert(name, value);
                        }
                        None => {
                            // Redeclared after FROM: the global value comes back in scope.
                            let value = global_args.get(&name).cloned().unwrap_or_default();
                            let scope = if from.is_none() {
                                &mut global_args
                            } else {
                                &mut vars
                            };
                            scope.entry(name).or_insert(value);
                        }
                    }
                }
            }
            "FROM" => {
                if from.is_some() {
                    return Err(at(
                        "multi-stage builds are not supported by --builder oci; use --builder engine"
                            .into(),
                    ));
                }
                let words = words(rest, &global_args, true).map_err(at)?;
                let mut platform = None;
                let mut image = None;
                let mut iter = words.into_iter();
                while let Some(word) = iter.next() {
                    if let Some(value) = word.strip_prefix("--platform=") {
                        platform = Some(value.to_owned());
                    } else if word.starts_with("--") {
                        return Err(at(format!(
                            "the flag `{word}` is not supported by --builder oci; use --builder engine"
                        )));
                    } else if image.is_none() {
                        image = Some(word);
                    } else if word.eq_ignore_ascii_case("as") {
                        iter.next();
                    } else {
                        return Err(at(format!("unexpected `{word}`")));
                    }
                }
                let image = image
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| at("names no image (is a build argument empty?)".into()))?;
                if let Some(p) = &platform {
                    let asked = Platform::parse(p).map_err(at)?;
                    if !asked.serves(target) || asked.variant != target.variant {
                        return Err(at(format!(
                            "--platform={p} differs from the platform built, {target}: --builder oci builds each platform's image from that platform's base"
                        )));
                    }
                }
                from = Some((image, platform));
            }
            "ADD" => {
                return Err(at(
                    "ADD is not supported by --builder oci (it fetches URLs and unpacks archives); use COPY"
                        .into(),
                ));
            }
            "COPY" => {
                // Flags first (`--chmod=...`), then the JSON or the shell form.
                let mut flags = Vec::new();
                let mut rest = rest;
                while rest.starts_with("--") {
                    let (flag, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    flags.push(substitute(flag, &vars).map_err(at)?);
                    rest = after.trim_start();
                }
                let args = if rest.starts_with('[') {
                    json_array(rest)
                        .map_err(at)?
                        .into_iter()
                        .map(|w| substitute(&w, &vars))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(at)?
                } else {
                    if rest.contains("<<") {
                        return Err(at("here-documents are not supported".into()));
                    }
                    words(rest, &vars, true).map_err(at)?
                };
                let mut args = args;
                let mut chmod = None;
                for flag in flags {
                    if let Some(mode) = flag.strip_prefix("--chmod=") {
                        chmod = Some(
                            u32::from_str_radix(mode, 8)
                                .map_err(|_| at(format!("--chmod={mode} is not an octal mode")))?,
                        );
                    } else if flag == "--link" || flag == "--link=true" {
                        // Same layer contents either way.
                    } else if flag == "--chown=0:0"
                        || flag == "--chown=root:root"
                        || flag == "--chown=root"
                        || flag == "--chown=0"
                    {
                        // Files are owned by root in any case.
                    } else {
                        return Err(at(format!(
                            "the flag `{flag}` is not supported by --builder oci; use --builder engine"
                        )));
                    }
                }
                if args.len() < 2 {
                    return Err(at("needs at least one source and a destination".into()));
                }
                let dest = args.pop().unwrap_or_default();
                if args.len() > 1 && !dest.ends_with('/') {
                    return Err(at(format!(
                        "with several sources the destination must end with `/`, not `{dest}`"
                    )));
                }
                steps.push(Step::Copy {
                    sources: args,
                    dest,
                    chmod,
                    text: line.clone(),
                });
            }
            "LABEL" => steps.push(Step::Label(pairs(rest, &vars).map_err(at)?)),
            "ENV" => {
                let pairs = pairs(rest, &vars).map_err(at)?;
                for (k, v) in &pairs {
                    vars.insert(k.clone(), v.clone());
                }
                steps.push(Step::Env(pairs));
            }
            "USER" => steps.push(Step::User(substitute(rest, &vars).map_err(at)?)),
            "ENTRYPOINT" => steps.push(Step::Entrypoint(command(rest).map_err(at)?)),
            "CMD" => steps.push(Step::Cmd(command(rest).map_err(at)?)),
            other => {
                return Err(at(format!(
                    "`{other}` is not supported by --builder oci (it carries out {SUPPORTED}); use --builder engine"
                )));
            }
        }
    }
    let (base, platform) = from.ok_or_else(|| refuse(0, "the Dockerfile has no FROM".into()))?;
    Ok(Recipe {
        base,
        platform,
        steps,
    })
}

/// The instructions, continuation lines joined and comments dropped, with their first line's number.
fn logical_lines(text: &str) -> std::result::Result<Vec<(usize, String)>, (usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut directives = true;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = raw.trim();
        if directives
            && let Some(directive) = trimmed.strip_prefix('#')
            && let Some((key, value)) = directive.split_once('=')
        {
            let key = key.trim().to_ascii_lowercase();
            if key == "escape" && value.trim() != "\\" {
                return Err((
                    number,
                    "the parser directive `escape` must be `\\` for --builder oci".into(),
                ));
            }
            if key == "escape" || key == "syntax" || key == "check" {
                continue;
            }
        }
        directives = false;
        // Comment and empty lines are dropped, inside a continued instruction too.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        // As the engine does: the escaped newline is removed and the lines joined as
        // they are (`COPY kube\` + `mark` is `COPY kubemark`).
        let line = raw.trim_end();
        let (body, continues) = match line.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (line, false),
        };
        match &mut current {
            Some((_, text)) => text.push_str(body),
            None => current = Some((number, body.trim_start().to_owned())),
        }
        if !continues && let Some(done) = current.take() {
            out.push(done);
        }
    }
    if let Some(done) = current.take() {
        out.push(done);
    }
    Ok(out)
}

/// `ENTRYPOINT ["a","b"]` or the shell form, which runs under `/bin/sh -c`.
fn command(rest: &str) -> Result<Vec<String>, String> {
    if rest.starts_with('[')
        && let Ok(words) = json_array(rest)
    {
        return Ok(words);
    }
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_owned()])
}

fn json_array(rest: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(rest)
        .map_err(|e| format!("`{rest}` is not a JSON array of strings: {e}"))
}

/// `k=v k2="v 2"`, or the legacy `key value` form.
fn pairs(rest: &str, vars: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    let words = words(rest, vars, true)?;
    let first_has_equals = words.first().is_some_and(|w| w.contains('='));
    if !first_has_equals {
        // Legacy: the first word is the key, the rest of the line its value.
        let (key, value) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("`{rest}` has no value"))?;
        let key = words.first().cloned().unwrap_or_else(|| key.to_owned());
        return Ok(vec![(key, substitute(value.trim(), vars)?)]);
    }
    words
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("`{w}` is not key=value"))
        })
        .map(|p| match p {
            Ok((k, _)) if k.is_empty() => Err("a key=value pair has no key".to_owned()),
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        Platform::parse("linux/amd64").unwrap()
    }

    fn p(text: &str) -> Result<Recipe> {
        parse(
            text,
            Scope {
                platform: &amd64(),
                base_env: &[],
            },
        )
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn the_kubemark_dockerfile_and_the_engine_paths_label_line() {
        let text = "# Copyright\n\nFROM registry.k8s.io/build-image/go-runner:v2.3.1\n\nCOPY kubemark /kubemark\nLABEL \"a.b\"=\"plain\" \\\n      \"c\"=\"q\\\"uote \\$HOME \\\\\"\n";
        let recipe = p(text).unwrap();
        assert_eq!(recipe.base, "registry.k8s.io/build-image/go-runner:v2.3.1");
        assert_eq!(
            recipe.steps,
            vec![
                Step::Copy {
                    sources: vec!["kubemark".into()],
                    dest: "/kubemark".into(),
                    chmod: None,
                    text: "COPY kubemark /kubemark".into()
                },
                Step::Label(vec![
                    ("a.b".into(), "plain".into()),
                    ("c".into(), "q\"uote $HOME \\".into())
                ]),
            ]
        );
    }

    #[test]
    fn args_before_from_and_variables_after_it() {
        let text = "ARG BASE=scratch\nARG TAG\nFROM ${BASE} AS final\nARG BASE\nENV DIR=/opt/k HOME=\"/root dir\"\nCOPY --chmod=0755 [\"kubemark\", \"$DIR/\"]\nLABEL from=$BASE empty=${TAG:-none}\nLABEL old style value\nENTRYPOINT [\"/kubemark\"]\nCMD --morph=kubelet\nUSER 65532\n";
        let recipe = p(text).unwrap();
        assert_eq!(recipe.base, "scratch");
        assert_eq!(
            recipe.steps,
            vec![
                Step::Env(vec![
                    ("DIR".into(), "/opt/k".into()),
                    ("HOME".into(), "/root dir".into())
                ]),
                Step::Copy {
                    sources: vec!["kubemark".into()],
                    dest: "/opt/k/".into(),
                    chmod: Some(0o755),
                    text: "COPY --chmod=0755 [\"kubemark\", \"$DIR/\"]".into()
                },
                Step::Label(vec![
                    ("from".into(), "scratch".into()),
                    ("empty".into(), "none".into())
                ]),
                Step::Label(vec![("old".into(), "style value".into())]),
                Step::Entrypoint(vec!["/kubemark".into()]),
                Step::Cmd(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "--morph=kubelet".into()
                ]),
                Step::User("65532".into()),
            ]
        );
        let platform = p("FROM --platform=linux/amd64 scratch\n").unwrap();
        assert_eq!(platform.platform.as_deref(), Some("linux/amd64"));
        let platform = p("FROM --platform=$TARGETPLATFORM scratch\n").unwrap();
        assert_eq!(platform.platform.as_deref(), Some("linux/amd64"));
    }

    #[test]
    fn variables_are_the_engines_base_env_arg_defaults_and_continuations_too() {
        let text = "ARG REG=example.com\nARG IMG=${REG}/base:1\nFROM $IMG\nARG X=1\nARG X=2\nENV PATH=/opt/bin:$PATH LANG=$LANG\n# a comment inside\nCOPY kube\\\n\n# ignored\nmark /k$X\nLABEL arch=$TARGETARCH\n";
        let recipe = parse(
            text,
            Scope {
                platform: &amd64(),
                base_env: &["PATH=/go/bin:/usr/bin".into(), "LANG=C.UTF-8".into()],
            },
        )
        .unwrap();
        assert_eq!(recipe.base, "example.com/base:1");
        assert_eq!(
            recipe.steps,
            vec![
                Step::Env(vec![
                    ("PATH".into(), "/opt/bin:/go/bin:/usr/bin".into()),
                    ("LANG".into(), "C.UTF-8".into())
                ]),
                Step::Copy {
                    sources: vec!["kubemark".into()],
                    dest: "/k2".into(),
                    chmod: None,
                    text: "COPY kubemark /k$X".into()
                },
                // Automatic arguments are global: in scope after FROM only when declared.
                Step::Label(vec![("arch".into(), String::new())]),
            ]
        );
        // Without a base PATH, the default one is what `$PATH` says.
        let recipe = p("FROM scratch\nARG TARGETARCH\nENV PATH=/x:$PATH A=$TARGETARCH\n").unwrap();
        assert_eq!(
            recipe.steps,
            vec![Step::Env(vec![
                (
                    "PATH".into(),
                    "/x:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                ),
                ("A".into(), "amd64".into())
            ])]
        );
    }

    #[test]
    fn what_it_cannot_do_is_refused_by_name_and_line() {
        for (text, expected) in [
            (
                "FROM scratch\nRUN make\n",
                "line 2: `RUN`: `RUN` is not supported",
            ),
            ("FROM a\nFROM b\n", "line 2: `FROM`: multi-stage builds"),
            ("COPY a /a\n", "line 1: `COPY`: only ARG may come before"),
            ("FROM scratch\nADD x.tgz /\n", "`ADD`: ADD is not supported"),
            (
                "FROM scratch\nCOPY --from=build /a /a\n",
                "`--from=build` is not supported",
            ),
            ("FROM scratch\nCOPY a b /c\n", "must end with `/`"),
            ("FROM scratch\nCOPY <<EOF /a\n", "here-documents"),
            ("ARG B\nFROM $B\n", "names no image"),
            (
                "# escape=`\nFROM scratch\n",
                "line 1: the parser directive `escape`",
            ),
            ("", "has no FROM"),
            (
                "FROM --platform=linux/arm64 scratch\n",
                "--platform=linux/arm64 differs from the platform built, linux/amd64",
            ),
            ("FROM scratch\nLABEL =v\n", "has no key"),
            ("FROM scratch\nWORKDIR /x\n", "`WORKDIR` is not supported"),
            (
                "FROM scratch\nLABEL a=b stray\n",
                "`stray` is not key=value",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
