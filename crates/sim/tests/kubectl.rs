//! Fidelity, checked by the independent client: kubectl 1.32 against the
//! simulator over HTTPS prints what it would print against a real cluster.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Kubectl, eventually, hollow_rc, sim};

fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_prints_the_columns_scripts_read() {
    let dir = tempfile::tempdir().unwrap();
    let external = sim("external", 3, dir.path()).await;
    let k = Kubectl::new(&external.kubeconfig);

    let nodes = k.run(&["get", "nodes"]).await.ok();
    assert_eq!(
        header(&nodes),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    );
    assert!(nodes.contains("worker-1   Ready    <none>"), "{nodes}");
    let ns = k.run(&["get", "ns"]).await.ok();
    assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"]);
    assert!(ns.contains("kube-system") && ns.contains("Active"), "{ns}");

    k.run(&["create", "ns", "kubemark"]).await.ok();
    k.run(&[
        "create",
        "configmap",
        "node-configmap",
        "-n",
        "kubemark",
        "--from-literal=kernel.monitor={}",
    ])
    .await
    .ok();
    k.run(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "kubemark",
        "--from-literal=a=b",
        "--from-literal=c=d",
    ])
    .await
    .ok();
    let all = k
        .run(&[
            "get",
            "ns,secrets,configmaps,rc,pods,nodes",
            "-n",
            "kubemark",
        ])
        .await
        .ok();
    assert!(all.contains("namespace/kubemark"), "{all}");
    assert!(all.contains("NAME       TYPE     DATA   AGE"), "{all}");
    assert!(all.contains("secret/s   Opaque   2"), "{all}");
    assert!(all.contains("configmap/node-configmap   1"), "{all}");
    assert!(all.contains("node/worker-3"), "{all}");

    let json: serde_json::Value = serde_json::from_str(
        &k.run(&[
            "get",
            "ns,secrets,configmaps,rc,pods,nodes",
            "-n",
            "kubemark",
            "-o",
            "json",
        ])
        .await
        .ok(),
    )
    .unwrap();
    assert_eq!(json["kind"], "List");
    let kinds: Vec<&str> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"Namespace")
            && kinds.contains(&"Secret")
            && kinds.contains(&"ConfigMap")
            && kinds.contains(&"Node"),
        "{kinds:?}"
    );
    let secret = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "Secret")
        .unwrap();
    assert_eq!(secret["data"]["a"], "Yg==");

    // Errors read as they would from a real server.
    let missing = k.run(&["get", "pod", "nope", "-n", "kubemark"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("Error from server (NotFound): pods \"nope\" not found"),
        "{}",
        missing.stderr
    );
    let twice = k.run(&["create", "ns", "kubemark"]).await;
    assert!(
        twice
            .stderr
            .contains("Error from server (AlreadyExists): namespaces \"kubemark\" already exists"),
        "{}",
        twice.stderr
    );
    let unknown = k
        .run_stdin(
            &["apply", "--server-side", "-f", "-"],
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: kubemark\ndatta:\n  a: b\n"),
        )
        .await;
    assert_ne!(unknown.code, 0);
    assert!(
        unknown
            .stderr
            .contains(".datta: field not declared in schema"),
        "{}",
        unknown.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_the_server_does_not_know_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let external = sim("external", 1, dir.path()).await;
    let text = std::fs::read_to_string(&external.kubeconfig)
        .unwrap()
        .replace(&external.token, "wrong-token");
    let bad = dir.path().join("bad.kubeconfig");
    std::fs::write(&bad, text).unwrap();
    let out = Kubectl::new(&bad).run(&["get", "pods"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("Unauthorized") || out.stderr.contains("You must be logged in"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kubemark_workflow_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let external = sim("external", 3, dir.path()).await;
    let master = sim("master", 0, dir.path()).await;
    let ext = Kubectl::new(&external.kubeconfig);
    let mas = Kubectl::new(&master.kubeconfig);

    // Step 2.i of the setup guide.
    ext.run(&["create", "ns", "kubemark"]).await.ok();
    let from_file = |key: &str| format!("--from-file={key}={}", master.kubeconfig.display());
    ext.run(&[
        "create",
        "secret",
        "generic",
        "kubeconfig",
        "--type=Opaque",
        "-n",
        "kubemark",
        &from_file("kubelet.kubeconfig"),
        &from_file("kubeproxy.kubeconfig"),
    ])
    .await
    .ok();

    // Step 2.ii, server-side; the second apply changes nothing.
    let rc = hollow_rc(
        "kubemark",
        3,
        "127.0.0.1:5000/kubemark:v1.33.0",
        "kubelet.kubeconfig",
    );
    let applied = ext
        .run_stdin(&["apply", "--server-side", "-f", "-"], Some(&rc))
        .await
        .ok();
    assert!(
        applied.contains("replicationcontroller/hollow-node serverside-applied"),
        "{applied}"
    );

    // Pods run on the external cluster; hollow nodes turn Ready on the master.
    eventually("3 hollow nodes", Duration::from_secs(30), || async {
        mas.run(&["get", "nodes", "-l", "kubemark=true", "-o", "name"])
            .await
            .stdout
            .lines()
            .count()
            == 3
    })
    .await;
    let ready = mas
        .run(&[
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            "--timeout=30s",
        ])
        .await
        .ok();
    assert_eq!(
        ready
            .lines()
            .filter(|l| l.ends_with("condition met"))
            .count(),
        3,
        "{ready}"
    );
    let pods = ext.run(&["get", "pods", "-n", "kubemark"]).await.ok();
    assert_eq!(
        header(&pods),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert_eq!(
        pods.lines()
            .filter(|l| l.contains("1/1     Running   0"))
            .count(),
        3,
        "{pods}"
    );
    let nodes = mas.run(&["get", "nodes"]).await.ok();
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" Ready ")).count(),
        3,
        "{nodes}"
    );

    // Once settled, a second identical apply changes nothing: no new resourceVersion.
    let rv = || async {
        ext.run(&[
            "get",
            "rc",
            "hollow-node",
            "-n",
            "kubemark",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .await
        .ok()
    };
    eventually(
        "the RC reports 3 ready",
        Duration::from_secs(10),
        || async {
            ext.run(&[
                "get",
                "rc",
                "hollow-node",
                "-n",
                "kubemark",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ])
            .await
            .stdout
                == "3"
        },
    )
    .await;
    let before = rv().await;
    ext.run_stdin(&["apply", "--server-side", "-f", "-"], Some(&rc))
        .await
        .ok();
    assert_eq!(rv().await, before, "a second identical apply is a no-op");

    // kubectl logs shows the hollow kubelet's own words.
    let pod = ext
        .run(&[
            "get",
            "pods",
            "-n",
            "kubemark",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await
        .ok();
    let logs = ext.run(&["logs", "-n", "kubemark", &pod]).await.ok();
    assert!(logs.contains("Successfully registered node"), "{logs}");

    // Scale.
    ext.run(&[
        "scale",
        "rc",
        "hollow-node",
        "-n",
        "kubemark",
        "--replicas=5",
    ])
    .await
    .ok();
    eventually("5 Ready hollow nodes", Duration::from_secs(30), || async {
        mas.run(&["get", "nodes", "--no-headers"])
            .await
            .stdout
            .lines()
            .filter(|l| l.contains(" Ready "))
            .count()
            == 5
    })
    .await;

    // A watch ends by --request-timeout and prints what it saw.
    let watched = ext
        .run(&[
            "get",
            "pods",
            "-n",
            "kubemark",
            "--watch",
            "--request-timeout=2s",
        ])
        .await;
    assert_eq!(
        watched
            .stdout
            .lines()
            .filter(|l| l.contains("Running"))
            .count(),
        5,
        "{watched:?}"
    );

    // Cascading delete: the RC's pods go with it.
    ext.run(&["delete", "rc", "hollow-node", "-n", "kubemark"])
        .await
        .ok();
    eventually("pods gone", Duration::from_secs(20), || async {
        ext.run(&["get", "pods", "-n", "kubemark", "-o", "name"])
            .await
            .stdout
            .trim()
            .is_empty()
    })
    .await;
    ext.run(&["delete", "ns", "kubemark"]).await.ok();
    let ns = ext.run(&["get", "ns", "-o", "name"]).await.ok();
    assert!(!ns.contains("kubemark"), "{ns}");

    // With their pods gone, the hollow nodes stop heartbeating and turn Unknown.
    eventually("nodes NotReady", Duration::from_secs(20), || async {
        let out = mas.run(&["get", "nodes", "--no-headers"]).await.stdout;
        out.lines().count() == 5 && out.lines().all(|l| l.contains("NotReady"))
    })
    .await;
}
