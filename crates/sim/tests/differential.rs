//! The simulator measured against the real API server: one kubectl session
//! and one kube-rs session (the calls deploy and destroy make), each run against the simulator and against a real
//! kube-apiserver v1.37.2 (with its controller-manager), their outputs
//! normalised (ages, resource versions, UIDs, times) and compared step by step.
//! A difference fails the test unless it is listed in [`KNOWN`] with its
//! reason, and every listed difference is also in `crates/sim/README.md`.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::{Kubectl, sim};
use kubemark_testbed::k8s::{Binaries, Config, ControlPlane};

/// Steps whose output differs between the two servers on purpose, and why.
/// Keep in step with "Measured against the real API server" in crates/sim/README.md.
const KNOWN: &[(&str, &str)] = &[];

/// A UUID (8-4-4-4-12 hex digits), wherever it stands in `word`.
fn without_uuids(word: &str) -> String {
    let bytes = word.as_bytes();
    let shape = [8, 4, 4, 4, 12];
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let mut j = i;
        let mut ok = true;
        for (n, len) in shape.iter().enumerate() {
            let end = j + len;
            if end > bytes.len() || !bytes[j..end].iter().all(u8::is_ascii_hexdigit) {
                ok = false;
                break;
            }
            j = end;
            if n < 4 {
                if bytes.get(j) != Some(&b'-') {
                    ok = false;
                    break;
                }
                j += 1;
            }
        }
        if ok {
            out.push_str("<uid>");
            i = j;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// Ages (`5s`, `2m3s`) and UIDs vary by run.
fn normalise(text: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split_whitespace()
            .map(without_uuids)
            .map(|w| {
                let age = w.len() <= 8
                    && w.chars().next().is_some_and(|c| c.is_ascii_digit())
                    && w.chars().all(|c| c.is_ascii_digit() || "smhd".contains(c))
                    && w.chars().any(|c| "smhd".contains(c));
                if age {
                    "<age>".to_owned()
                } else {
                    w.to_owned()
                }
            })
            .collect();
        out.push(words.join(" "));
    }
    out.join("\n")
}

/// The kubectl session: what a user of the setup guide types, and the errors
/// scripts read. Each step: (name, normalised exit code + stdout + stderr).
async fn kubectl_session(k: &Kubectl) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: diff\ndata:\n  a: b\n";
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: diff\ndatta:\n  a: b\n";
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: hollow-node\n  namespace: diff\nspec:\n  replicas: 0\n  selector:\n    name: hollow-node\n  template:\n    metadata:\n      labels:\n        name: hollow-node\n    spec:\n      containers:\n      - name: c\n        image: 127.0.0.1:5000/kubemark:v1\n";
    let steps: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        ("create ns", vec!["create", "ns", "diff"], None),
        ("create ns again", vec!["create", "ns", "diff"], None),
        (
            "create configmap",
            vec![
                "-n",
                "diff",
                "create",
                "configmap",
                "node-configmap",
                "--from-literal=kernel.monitor={}",
            ],
            None,
        ),
        (
            "create secret",
            vec![
                "-n",
                "diff",
                "create",
                "secret",
                "generic",
                "s",
                "--from-literal=a=b",
                "--from-literal=c=d",
            ],
            None,
        ),
        ("get secret", vec!["-n", "diff", "get", "secret", "s"], None),
        (
            "get secret json data",
            vec!["-n", "diff", "get", "secret", "s", "-o", "jsonpath={.data}"],
            None,
        ),
        (
            "get missing pod",
            vec!["-n", "diff", "get", "pod", "nope"],
            None,
        ),
        (
            "apply server-side",
            vec!["apply", "--server-side", "-f", "-"],
            Some(cm),
        ),
        (
            "apply server-side again",
            vec!["apply", "--server-side", "-f", "-"],
            Some(cm),
        ),
        (
            "apply with another manager",
            vec!["apply", "--server-side", "--field-manager=other", "-f", "-"],
            Some(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: diff\ndata:\n  a: c\n",
            ),
        ),
        (
            "apply an unknown field",
            vec!["apply", "--server-side", "-f", "-"],
            Some(bad),
        ),
        (
            "apply an RC",
            vec!["apply", "--server-side", "-f", "-"],
            Some(rc),
        ),
        ("get rc", vec!["-n", "diff", "get", "rc"], None),
        (
            "scale rc",
            vec!["-n", "diff", "scale", "rc", "hollow-node", "--replicas=0"],
            None,
        ),
        ("get ns", vec!["get", "ns", "diff"], None),
        (
            "delete configmap",
            vec!["-n", "diff", "delete", "configmap", "node-configmap"],
            None,
        ),
        (
            "delete missing",
            vec!["-n", "diff", "delete", "configmap", "node-configmap"],
            None,
        ),
        (
            "delete rc",
            vec!["-n", "diff", "delete", "rc", "hollow-node"],
            None,
        ),
    ];
    for (name, args, stdin) in steps {
        let out = k.run_stdin(&args, stdin).await;
        seen.push((
            name.to_owned(),
            normalise(&format!(
                "exit {}\n{}\n{}",
                out.code, out.stdout, out.stderr
            )),
        ));
    }
    seen
}

async fn client(path: &Path) -> kube::Client {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn outcome<T>(r: Result<T, kube::Error>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", ok(v)),
        Err(kube::Error::Api(s)) => format!("error {} {} {}", s.code, s.reason, s.message),
        Err(e) => format!("client error {e}"),
    }
}

/// The kube-rs session: the calls deploy and destroy make, as they see them.
async fn kube_session(path: &Path) -> Vec<(String, String)> {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
    let c = client(path).await;
    let mut seen: Vec<(String, String)> = Vec::new();
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube", "annotations": {"kubemark.dev/created-by": "kubemark-deploy"}}
    }))
    .unwrap();
    let post = PostParams {
        field_manager: Some("kubemark-deploy".into()),
        ..PostParams::default()
    };
    seen.push((
        "create namespace".into(),
        outcome(namespaces.create(&post, &ns).await, |n| {
            format!("{:?}", n.metadata.annotations)
        }),
    ));
    seen.push((
        "create namespace again".into(),
        outcome(namespaces.create(&post, &ns).await, |_| String::new()),
    ));
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "kube");
    seen.push((
        "get a missing configmap".into(),
        outcome(cms.get_opt("nope").await, |o| format!("{}", o.is_some())),
    ));
    let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeconfig", "namespace": "kube"}, "data": {"a": "b"}});
    let ours = PatchParams::apply("kubemark-deploy").force();
    let first = cms.patch("kubeconfig", &ours, &Patch::Apply(&body)).await;
    let rv = first
        .as_ref()
        .ok()
        .and_then(|c| c.metadata.resource_version.clone());
    seen.push((
        "apply".into(),
        outcome(first, |c| {
            format!(
                "managers {:?}",
                c.metadata
                    .managed_fields
                    .iter()
                    .flatten()
                    .map(|m| (m.manager.clone(), m.operation.clone()))
                    .collect::<Vec<_>>()
            )
        }),
    ));
    seen.push((
        "apply again".into(),
        outcome(
            cms.patch("kubeconfig", &ours, &Patch::Apply(&body)).await,
            |c| format!("same resourceVersion {}", c.metadata.resource_version == rv),
        ),
    ));
    let other = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeconfig", "namespace": "kube"}, "data": {"a": "c"}});
    seen.push((
        "apply conflicting".into(),
        outcome(
            cms.patch(
                "kubeconfig",
                &PatchParams::apply("other"),
                &Patch::Apply(&other),
            )
            .await,
            |_| String::new(),
        ),
    ));
    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("00000000-0000-0000-0000-000000000000".into()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    seen.push((
        "delete with another UID".into(),
        outcome(cms.delete("kubeconfig", &wrong_uid).await, |_| {
            String::new()
        })
        // The UIDs in the message differ by run.
        .split(": UID in precondition")
        .next()
        .unwrap_or_default()
        .to_owned(),
    ));
    for name in ["a", "b", "c"] {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "kube", "labels": {"k": "v"}}});
        cms.patch(name, &ours, &Patch::Apply(&body)).await.unwrap();
    }
    let page = cms
        .list(&ListParams::default().labels("k=v").limit(2))
        .await;
    seen.push((
        "list a page of 2".into(),
        outcome(page, |l| {
            format!(
                "{} items, more: {}",
                l.items.len(),
                l.metadata.continue_.is_some_and(|c| !c.is_empty())
            )
        }),
    ));
    seen.push((
        "delete".into(),
        outcome(
            cms.delete("kubeconfig", &DeleteParams::background()).await,
            |_| String::new(),
        ),
    ));
    seen.push((
        "delete missing".into(),
        outcome(
            cms.delete("kubeconfig", &DeleteParams::background()).await,
            |_| String::new(),
        ),
    ));
    seen.push((
        "delete namespace".into(),
        outcome(
            namespaces.delete("kube", &DeleteParams::background()).await,
            |e| format!("{}", e.is_left()),
        ),
    ));
    seen.into_iter().map(|(k, v)| (k, normalise(&v))).collect()
}

async fn real(bin: Binaries) -> ControlPlane {
    tokio::task::spawn_blocking(move || {
        ControlPlane::start(
            &bin,
            Config {
                name: "differential".into(),
                address: IpAddr::from([127, 0, 0, 1]),
                controllers: true,
            },
        )
        .unwrap()
    })
    .await
    .unwrap()
}

fn compare(what: &str, simulated: &[(String, String)], real: &[(String, String)]) {
    let mut unexplained = Vec::new();
    for ((step, s), (_, r)) in simulated.iter().zip(real) {
        if s == r {
            assert!(
                !KNOWN.iter().any(|(k, _)| k == step),
                "{what}: `{step}` is listed as a known difference but no longer differs: remove it from KNOWN and the README"
            );
            continue;
        }
        if !KNOWN.iter().any(|(k, _)| k == step) {
            unexplained.push(format!(
                "{what} step `{step}`:\n  simulator: {s:?}\n  real:      {r:?}"
            ));
        }
    }
    assert!(
        unexplained.is_empty(),
        "the simulator differs from kube-apiserver v1.37.2:\n{}",
        unexplained.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_and_kube_rs_see_the_simulator_as_they_see_a_real_api_server() {
    let Some(bin) = Binaries::for_tests() else {
        return;
    };
    let real = real(bin).await;
    let dir = tempfile::tempdir().unwrap();
    let simulated = sim("differential", 0, dir.path()).await;
    let on_sim = kubectl_session(&Kubectl::new(&simulated.kubeconfig)).await;
    let on_real = kubectl_session(&Kubectl::new(&real.admin_kubeconfig)).await;
    compare("kubectl", &on_sim, &on_real);
    let on_sim = kube_session(&simulated.kubeconfig).await;
    let on_real = kube_session(&real.admin_kubeconfig).await;
    compare("kube-rs", &on_sim, &on_real);
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for (step, _) in KNOWN {
        assert!(
            readme.contains(step),
            "`{step}` is not in crates/sim/README.md"
        );
    }
    drop(real);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
