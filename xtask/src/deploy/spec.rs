//! The flags of `cargo xtask deploy` into a [`Spec`]: every value checked
//! and, when refused, named as the user gave it (`--replicas`,
//! `KUBEMARK_REPLICAS`, `replicas under [deploy] in FILE`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kubemark_contract::{ImageRef, Quantity};
use kubemark_deploy::{Choice, Resources, Source, Spec};

use super::{ClusterArgs, DeployArgs, NodeIdentityArg};
use crate::Global;
use crate::report::Failure;
use kubemark_deploy::identity::NodeIdentity;

pub struct Clusters {
    pub external: Source,
    pub master: Source,
    pub namespace: String,
}

pub fn clusters(c: &ClusterArgs, global: &Global) -> Result<Clusters, Failure> {
    let master = c.master_kubeconfig.clone().ok_or_else(|| {
        Failure::usage(
            "no kubeconfig for the kubemark master",
            "pass --master-kubeconfig FILE (or set KUBEMARK_MASTER_KUBECONFIG, or master-kubeconfig under [deploy] in kubemark.toml)",
        )
    })?;
    let namespace = c.namespace.clone().unwrap_or_else(|| "kubemark".into());
    kubemark_deploy::plan::check_namespace(&namespace).map_err(|e| {
        Failure::usage(
            format!(
                "{}: {e}",
                global.given.origin("namespace", "KUBEMARK_NAMESPACE")
            ),
            "e.g. --namespace kubemark (the default)",
        )
    })?;
    Ok(Clusters {
        external: Source {
            path: c.external_kubeconfig.clone(),
            context: c.external_context.clone(),
        },
        master: Source {
            path: Some(master),
            context: c.master_context.clone(),
        },
        namespace,
    })
}

/// `40m` → 40, `0.5` → 500, `1` → 1000.
fn millicpu(flag: &str, q: &str) -> Result<u64, Failure> {
    match Quantity::parse(q) {
        Ok(cores) if !cores.is_negative() && !Quantity::is_binary_text(q) => {
            Ok(u64::try_from(cores.milli()).unwrap_or(u64::MAX))
        }
        _ => Err(Failure::usage(
            format!("{flag} `{q}` is not a CPU quantity"),
            "e.g. 40m, 0.5 or 1",
        )),
    }
}

/// `100Mi` → 102400, `50M` → 48829 (Ki, rounded up).
fn mem_ki(flag: &str, q: &str) -> Result<u64, Failure> {
    match Quantity::parse(q) {
        Ok(bytes) if !bytes.is_negative() && !q.trim_end().ends_with('m') => {
            Ok(u64::try_from(bytes.value())
                .unwrap_or(u64::MAX)
                .div_ceil(1024))
        }
        _ => Err(Failure::usage(
            format!("{flag} `{q}` is not a memory quantity"),
            "e.g. 100Mi, 50M or 1Gi",
        )),
    }
}

/// `600`, `90s`, `10m`, `1h`; more than zero. `origin` names the input
/// (`--timeout`, `KUBEMARK_TIMEOUT`, the file).
pub fn duration(origin: &str, text: &str) -> Result<Duration, Failure> {
    let bad = || {
        Failure::usage(
            format!("{origin} `{text}` is not a duration"),
            "e.g. 600, 90s, 10m or 1h",
        )
    };
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(Failure::usage(
            format!("{origin} {text}: a timeout of zero would fail before anything could happen"),
            "give a time to wait, e.g. 90s or 10m",
        ));
    }
    // A week is longer than any bring-up; beyond it is a typo (and would overflow a clock).
    const WEEK: u64 = 7 * 24 * 3600;
    if secs > WEEK {
        return Err(Failure::usage(
            format!("{origin} {text}: longer than a week"),
            "give at most 168h; deploy can be run again to wait more",
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn pairs(flag: &str, text: &str) -> Result<Vec<(String, String)>, Failure> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                Failure::usage(
                    format!("{flag}: `{p}` is not key=value"),
                    "e.g. zone=a,tier=hollow".to_owned(),
                )
            })?;
            let ok = |s: &str| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            };
            if k.is_empty() || !ok(k) || !ok(v) {
                return Err(Failure::usage(
                    format!("{flag}: `{p}` is not a valid label"),
                    "keys and values are letters, digits, '-', '_', '.' (and '/' in keys)",
                ));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The last image `cargo xtask image` recorded (`None`: there is no record).
pub fn recorded_image(state_dir: &std::path::Path) -> Option<Result<ImageRef, Failure>> {
    match kubemark_contract::Record::latest_image(state_dir) {
        Ok(image) => image.map(Ok),
        Err(e) => Some(Err(Failure::usage(
            e.to_string(),
            "pass --image REF, or run `cargo xtask image` again to rewrite it",
        ))),
    }
}

/// A whole number from a flag, variable or file, named as the user gave it.
fn count(text: &str, origin: &str, what: &str, max: u64) -> Result<u64, Failure> {
    let hint = if what == "hollow nodes" {
        format!("give a whole number from 0 to {max}, or `max` for as many as fit")
    } else {
        format!("give a whole number from 0 to {max}")
    };
    match text.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err(Failure::usage(
            format!("{origin} {text}: {what} cannot be negative"),
            hint,
        )),
        Ok(n) if n > i128::from(max) => Err(Failure::usage(
            format!(
                "{origin} {text}: more {what} than a ReplicationController can hold (at most {max})"
            ),
            hint,
        )),
        Ok(n) => Ok(n as u64),
        Err(_) => Err(Failure::usage(
            format!("{origin} `{text}` is not a number of {what}"),
            hint,
        )),
    }
}

/// Placeholders deploy fills from flags: `--set` may not change them.
const FROM_FLAGS: [(&str, &str); 6] = [
    ("namespace", "--namespace"),
    ("numreplicas", "--replicas"),
    ("kubemark_image", "--image"),
    ("kubemark_image_registry", "--image (or --registry)"),
    ("kubemark_image_tag", "--image (or --tag)"),
    (
        "hollow_node_labels",
        "--node-labels (deploy's own label on the hollow nodes is how status and destroy find them)",
    ),
];

/// The spec, and whether `--replicas max` asked for as many as fit (the
/// spec's count is then found against the cluster, before the deploy).
pub fn spec(a: &DeployArgs, global: &Global) -> Result<(Spec, bool), Failure> {
    let given = &global.given;
    let from = |id: &str, env: &str| given.origin(id, env);
    let c = clusters(&a.cluster, global)?;
    let Some(replicas) = &a.replicas else {
        return Err(Failure::usage(
            "how many hollow nodes? no --replicas given",
            "pass --replicas N (or set KUBEMARK_REPLICAS, or replicas under [deploy] in kubemark.toml)",
        ));
    };
    let max = replicas.trim() == "max";
    let replicas = if max {
        1
    } else {
        count(
            replicas,
            &from("replicas", "KUBEMARK_REPLICAS"),
            "hollow nodes",
            u64::from(kubemark_deploy::plan::MAX_REPLICAS),
        )? as u32
    };
    let max_pods = a
        .max_pods
        .as_ref()
        .map(|text| {
            count(
                text,
                &from("max_pods", "KUBEMARK_MAX_PODS"),
                "pods",
                1_000_000,
            )
        })
        .transpose()?
        .map(|n| n as u32);
    let image = match (&a.image, &a.registry, &a.tag) {
        (Some(image), _, _) => ImageRef::parse(image).map_err(|e| {
            Failure::usage(
                format!("{}: {e}", from("image", "KUBEMARK_IMAGE")),
                "give REGISTRY/kubemark:TAG (or @sha256:DIGEST), e.g. 127.0.0.1:5000/kubemark:v1",
            )
        })?,
        (None, Some(registry), Some(tag)) => ImageRef::kubemark(registry, tag).map_err(|e| {
            Failure::usage(
                format!("--registry {registry} --tag {tag}: {e}"),
                "give --registry HOST[:PORT][/PATH] and a tag, e.g. --registry 127.0.0.1:5000 --tag v1",
            )
        })?,
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(Failure::usage("--registry and --tag go together", "pass both, or --image REF"));
        }
        (None, None, None) => recorded_image(&global.state_dir).unwrap_or_else(|| {
            Err(Failure::usage(
                "no kubemark image given",
                format!(
                    "pass --image REF (or --registry and --tag), or build one with `cargo xtask image` (it records {})",
                    kubemark_contract::record::latest_path(&global.state_dir).display()
                ),
            ))
        })?,
    };
    let template = match a.template.as_deref() {
        None | Some("simplified") => Choice::Simplified,
        Some("upstream") => Choice::Upstream(
            a.source_dir
                .clone()
                .or_else(|| global.settings.path_of("image", "source-dir"))
                .unwrap_or_else(crate::image::default_source_dir),
        ),
        Some(path) => Choice::File(PathBuf::from(path)),
    };
    let sets = sets(&a.sets, global)?;
    // These have no variable: a flag, or the file.
    let q = |id: &str, v: &Option<String>, conv: fn(&str, &str) -> Result<u64, Failure>| {
        v.as_deref().map(|q| conv(&from(id, ""), q)).transpose()
    };
    let resources = Resources {
        kubelet_millicpu: q("kubelet_cpu", &a.kubelet_cpu, millicpu)?,
        kubelet_mem_ki: q("kubelet_memory", &a.kubelet_memory, mem_ki)?,
        proxy_millicpu: q("proxy_cpu", &a.proxy_cpu, millicpu)?,
        proxy_mem_ki: q("proxy_memory", &a.proxy_memory, mem_ki)?,
        npd_millicpu: q("npd_cpu", &a.npd_cpu, millicpu)?,
        npd_mem_ki: q("npd_memory", &a.npd_memory, mem_ki)?,
    };
    let labels_origin = from("node_labels", "KUBEMARK_NODE_LABELS");
    let node_labels = pairs(&labels_origin, a.node_labels.as_deref().unwrap_or_default())?;
    if let Some((k, _)) = node_labels
        .iter()
        .find(|(k, _)| k.starts_with("kubemark.dev/"))
    {
        return Err(Failure::usage(
            format!(
                "{labels_origin}: `{k}` is deploy's own label (it is how status and destroy find the hollow nodes)"
            ),
            "choose a key outside kubemark.dev/, e.g. --node-labels tier=hollow",
        ));
    }
    if let Some(t) = &a.register_with_taints {
        taints(
            &from("register_with_taints", "KUBEMARK_REGISTER_WITH_TAINTS"),
            t,
        )?;
    }
    if let Some(e) = &a.extended_resources {
        pairs(
            &from("extended_resources", "KUBEMARK_EXTENDED_RESOURCES"),
            e,
        )?;
    }
    let timeout = a
        .timeout
        .as_deref()
        .map(|t| duration(&from("timeout", "KUBEMARK_TIMEOUT"), t))
        .transpose()?;
    if a.adopt && !given.on_command_line("adopt") {
        // Taking over other people's objects should be a decision of this run.
        eprintln!(
            "warning: --adopt is on through {}: every deploy with these settings takes over objects with deploy's names, and destroy then deletes them",
            from("adopt", "KUBEMARK_ADOPT")
        );
    }
    Ok((
        Spec {
            external: c.external,
            master: c.master,
            namespace: c.namespace,
            replicas,
            image,
            template,
            sets,
            resources,
            node_labels,
            register_with_taints: a.register_with_taints.clone(),
            max_pods,
            extended_resources: a.extended_resources.clone(),
            timeout,
            wait: !a.no_wait,
            allow_loopback_master: a.allow_loopback_master,
            skip_capacity_check: a.skip_capacity_check,
            adopt: a.adopt,
            node_identity: match a.node_identity {
                NodeIdentityArg::Auto => NodeIdentity::Auto,
                NodeIdentityArg::Shared => NodeIdentity::Shared,
                NodeIdentityArg::PerNode => NodeIdentity::PerNode,
            },
        },
        max,
    ))
}

/// `[deploy.set]` of the file, then `--set` (which wins, key by key); each a
/// placeholder name deploy does not fill itself.
fn sets(flags: &[String], global: &Global) -> Result<BTreeMap<String, String>, Failure> {
    let mut sets: BTreeMap<String, String> = global.settings.sets()?.into_iter().collect();
    for s in flags {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            Failure::usage(
                format!("--set `{s}` is not key=value"),
                "e.g. --set init_image=busybox:1.36",
            )
        })?;
        sets.insert(k.to_owned(), v.to_owned());
    }
    for k in sets.keys() {
        let identifier = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(Failure::usage(
                format!("--set: `{k}` is not a placeholder name"),
                "placeholder names are letters, digits and _",
            ));
        }
        if let Some((_, flag)) = FROM_FLAGS.iter().find(|(name, _)| name == k) {
            return Err(Failure::usage(
                format!(
                    "--set {k}=...: deploy fills `{k}` itself, so setting it would be ignored or break status and destroy"
                ),
                format!("use {flag}"),
            ));
        }
    }
    Ok(sets)
}

/// `key=value:Effect,...`
fn taints(origin: &str, text: &str) -> Result<(), Failure> {
    for taint in text.split(',') {
        let effect = taint.rsplit_once(':').map(|(_, e)| e);
        if !matches!(
            effect,
            Some("NoSchedule" | "PreferNoSchedule" | "NoExecute")
        ) {
            return Err(Failure::usage(
                format!("{origin}: `{taint}` is not key=value:Effect"),
                "Effect is NoSchedule, PreferNoSchedule or NoExecute, e.g. kubemark=true:NoSchedule",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_durations() {
        assert_eq!(millicpu("x", "40m").unwrap(), 40);
        assert_eq!(millicpu("x", "0.5").unwrap(), 500);
        assert!(millicpu("x", "lots").is_err());
        assert_eq!(mem_ki("x", "100Mi").unwrap(), 102_400);
        assert_eq!(mem_ki("x", "50M").unwrap(), 48_829);
        assert!(mem_ki("x", "5Qi").is_err());
        assert!(mem_ki("x", "500m").is_err());
        assert!(millicpu("x", "1Gi").is_err());
        assert!(millicpu("x", "-1").is_err());
        assert_eq!(duration("--t", "10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("--t", "90").unwrap(), Duration::from_secs(90));
        assert!(duration("--t", "soon").is_err());
        assert!(
            duration("--t", "10000000000000000000h").is_err(),
            "no overflow"
        );
        assert!(duration("--t", "169h").is_err());
        assert!(duration("--t", "168h").is_ok());
        let zero = duration("KUBEMARK_TIMEOUT", "0s").unwrap_err();
        assert!(
            zero.message.contains("KUBEMARK_TIMEOUT 0s"),
            "{}",
            zero.message
        );
        for (text, expect) in [
            ("-1", "cannot be negative"),
            ("3000000000", "at most 2147483647"),
            ("many", "`many` is not a number"),
        ] {
            let e = count(text, "KUBEMARK_REPLICAS", "hollow nodes", 2_147_483_647).unwrap_err();
            assert!(e.message.contains(expect), "{text}: {}", e.message);
            assert!(e.message.starts_with("KUBEMARK_REPLICAS"), "{}", e.message);
        }
        assert_eq!(count("7", "--replicas", "hollow nodes", 10).unwrap(), 7);
        assert_eq!(
            pairs("l", "a=b,c/d=e").unwrap(),
            vec![("a".into(), "b".into()), ("c/d".into(), "e".into())]
        );
        assert!(pairs("l", "a").is_err());
        assert!(pairs("l", "a=\"b\"").is_err());
    }
}
