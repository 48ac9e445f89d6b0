//! `deploy doctor`, each check against two in-process simulators: what it
//! finds, the fix it names, and what `--repair` deletes (and nothing else).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubemark_contract::CancellationToken;
use kubemark_deploy::doctor::{self, Patient, Report, Severity};
use kubemark_deploy::{Choice, Cluster};
use serde_json::json;
use support::Clusters;

async fn examine(
    external: &Cluster,
    master: &Cluster,
    pod: Option<&k8s_openapi::api::core::v1::PodSpec>,
    repair: bool,
) -> Report {
    doctor::examine(&Patient {
        external,
        master,
        namespace: "kubemark",
        pod,
        grace: Duration::from_secs(60),
        repair,
        cancel: CancellationToken::new(),
    })
    .await
    .unwrap()
}

/// The Node's kubelet stopped reporting ten minutes ago (the simulated one
/// reports every five minutes: this status stays while a test looks).
async fn not_ready_for_ten_minutes(nodes: &Api<Node>, name: &str) {
    let ten_minutes_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600);
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "lastTransitionTime": ten_minutes_ago.to_string(),
                "lastHeartbeatTime": ten_minutes_ago.to_string(),
            }]}})),
        )
        .await
        .unwrap();
}

fn checks(report: &Report, check: &str) -> Vec<(Severity, String)> {
    report
        .findings
        .iter()
        .filter(|f| f.check == check)
        .map(|f| (f.severity, format!("{} | fix: {}", f.what, f.fix)))
        .collect()
}

async fn create<K>(api: &Api<K>, value: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(value).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_passes_every_check() {
    let c = Clusters::start().await;
    let (plan, _) = kubemark_deploy::render(&c.spec(2)).unwrap();
    let (external, master) = c.connect().await;
    let report = examine(&external, &master, Some(&plan.pod), false).await;
    assert!(report.findings.is_empty(), "{report:#?}");
    assert_eq!(
        report.passed,
        vec![
            "daemonsets",
            "image-service",
            "pod-security",
            "master-nodes",
            "stuck"
        ]
    );
    // Before any deploy, without a plan, the template checks say why they did not run.
    let report = examine(&external, &master, None, false).await;
    assert!(
        report.skipped[0].contains("no hollow-node ReplicationController"),
        "{report:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_that_would_land_on_hollow_nodes_are_named_with_the_fix() {
    let c = Clusters::start().await;
    let (external, master) = c.connect().await;
    let ds: Api<DaemonSet> = Api::namespaced(master.client.clone(), "default");
    let template =
        |spec: serde_json::Value| json!({"metadata": {"labels": {"app": "x"}}, "spec": spec});
    create(
        &ds,
        json!({
            "metadata": {"name": "node-exporter"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template(json!({
                "containers": [{"name": "c", "image": "exporter"}],
                "nodeSelector": {"kubernetes.io/os": "linux"}
            }))}
        }),
    )
    .await;
    create(&ds, json!({
        "metadata": {"name": "kept-off"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template(json!({
            "containers": [{"name": "c", "image": "x"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubemark.dev/hollow-node", "operator": "DoesNotExist"}]}
            ]}}}
        }))}
    })).await;
    let (plan, _) = kubemark_deploy::render(&c.spec(2)).unwrap();
    let report = examine(&external, &master, Some(&plan.pod), false).await;
    let found = checks(&report, "daemonsets");
    assert_eq!(found.len(), 1, "{report:#?}");
    assert_eq!(found[0].0, Severity::Warning);
    assert!(
        found[0].1.starts_with(
            "DaemonSet default/node-exporter on the master places a pod on every hollow node"
        ),
        "{}",
        found[0].1
    );
    assert!(
        found[0]
            .1
            .contains("--register-with-taints kubemark.dev/hollow=true:NoSchedule"),
        "{}",
        found[0].1
    );

    // Registered with a taint it does not tolerate, it stays off them.
    let mut spec = c.spec(2);
    spec.register_with_taints = Some("kubemark.dev/hollow=true:NoSchedule".into());
    let (plan, _) = kubemark_deploy::render(&spec).unwrap();
    let report = examine(&external, &master, Some(&plan.pod), false).await;
    assert!(checks(&report, "daemonsets").is_empty(), "{report:#?}");

    // Preflight runs the doctor: deploy warns, and goes on.
    kubemark_deploy::check(&c.spec(2), &c.events())
        .await
        .unwrap();
    let log = c.take();
    assert!(
        log.contains("warning: doctor (daemonsets): DaemonSet default/node-exporter"),
        "{log}"
    );
}

/// The project's template without `--use-host-image-service=false`, with or
/// without the containerd socket mounted.
fn template_using_the_host_image_service(dir: &std::path::Path, mount_socket: bool) -> Choice {
    let text = include_str!("../../../templates/hollow-node.yaml")
        .replace("\"--use-host-image-service=false\",", "");
    let text = if mount_socket {
        text.replace(
            "      - name: logs-volume\n        hostPath:\n          path: /var/log\n",
            "      - name: logs-volume\n        hostPath:\n          path: /var/log\n      - name: containerd\n        hostPath:\n          path: /run/containerd/containerd.sock\n",
        )
    } else {
        text
    };
    let path = dir.join(format!("template-{mount_socket}.yaml"));
    std::fs::write(&path, text).unwrap();
    Choice::File(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_image_service_without_its_socket_is_a_problem() {
    let c = Clusters::start().await;
    let (external, master) = c.connect().await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = c.spec(1);
    spec.template = template_using_the_host_image_service(dir.path(), false);
    let (plan, _) = kubemark_deploy::render(&spec).unwrap();
    let report = examine(&external, &master, Some(&plan.pod), false).await;
    let found = checks(&report, "image-service");
    assert_eq!(found.len(), 1, "{report:#?}");
    assert_eq!(found[0].0, Severity::Problem);
    assert!(
        found[0].1.contains(
            "mounts no containerd.sock socket for the 2 external node(s) running containerd"
        ),
        "{}",
        found[0].1
    );
    assert!(found[0].1.contains("kubernetes#115203"), "{}", found[0].1);
    assert!(
        found[0].1.contains("--use-host-image-service=false"),
        "{}",
        found[0].1
    );

    spec.template = template_using_the_host_image_service(dir.path(), true);
    let (plan, _) = kubemark_deploy::render(&spec).unwrap();
    let report = examine(&external, &master, Some(&plan.pod), false).await;
    assert!(checks(&report, "image-service").is_empty(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_security_level_that_rejects_the_template_is_a_problem() {
    let c = Clusters::start().await;
    let (external, master) = c.connect().await;
    let namespaces: Api<Namespace> = Api::all(external.client.clone());
    create(
        &namespaces,
        json!({"metadata": {"name": "kubemark", "labels": {
            "pod-security.kubernetes.io/enforce": "baseline"
        }}}),
    )
    .await;
    let (plan, _) = kubemark_deploy::render(&c.spec(1)).unwrap();
    let report = examine(&external, &master, Some(&plan.pod), false).await;
    let found = checks(&report, "pod-security");
    assert_eq!(found.len(), 1, "{report:#?}");
    assert_eq!(found[0].0, Severity::Problem);
    assert!(
        found[0].1.starts_with("namespace kubemark enforces the PodSecurity level `baseline`, which rejects the hollow-node pod: container init-inotify-limit is privileged"),
        "{}",
        found[0].1
    );
    assert!(
        found[0]
            .1
            .contains("pod-security.kubernetes.io/enforce=privileged"),
        "{}",
        found[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_nodes_with_hollow_names_or_not_ready_are_named() {
    let c = Clusters::start().await;
    let (external, master) = c.connect().await;
    let nodes: Api<Node> = Api::all(master.client.clone());
    create(&nodes, json!({"metadata": {"name": "hollow-node-zzzzz"}})).await;
    create(&nodes, json!({"metadata": {"name": "hollow-node-other", "labels": {"kubemark.dev/hollow-node": "elsewhere"}}})).await;
    let report = examine(&external, &master, None, false).await;
    let found = checks(&report, "master-nodes");
    assert_eq!(found.len(), 2, "{report:#?}");
    assert!(found[0].1.starts_with("2 Node(s) on the master have hollow-node names but are not this deploy's: hollow-node-other (deploy's, namespace elsewhere), hollow-node-zzzzz (not deploy's)"), "{}", found[0].1);
    // Neither reports Ready.
    assert!(found[1].1.starts_with("2 Node(s) on the master that are not this deploy's hollow nodes are NotReady: hollow-node-other, hollow-node-zzzzz"), "{}", found[1].1);
    assert!(found.iter().all(|(s, _)| *s == Severity::Warning));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pod_under_a_not_ready_node_is_stuck_and_repair_replaces_only_it() {
    let c = Clusters::start().await;
    let cancel = CancellationToken::new();
    kubemark_deploy::deploy(&c.spec(2), &c.events(), &cancel)
        .await
        .unwrap();
    let (external, master) = c.connect().await;
    let nodes: Api<Node> = Api::all(master.client.clone());
    let hollow = nodes.list(&Default::default()).await.unwrap().items;
    assert_eq!(hollow.len(), 2);
    let (stuck, healthy) = (hollow[0].name_any(), hollow[1].name_any());
    not_ready_for_ten_minutes(&nodes, &stuck).await;
    let report = examine(&external, &master, None, false).await;
    let found = checks(&report, "stuck");
    assert_eq!(found.len(), 1, "{report:#?}");
    assert_eq!(found[0].0, Severity::Problem);
    assert!(
        found[0].1.starts_with(&format!(
            "pod {stuck} is Running but its Node has been NotReady for 60"
        )),
        "{}",
        found[0].1
    );
    assert!(
        found[0].1.contains("cargo xtask deploy doctor --repair"),
        "{}",
        found[0].1
    );
    assert_eq!(report.problems(), 1);

    let pods: Api<Pod> = Api::namespaced(external.client.clone(), "kubemark");
    let old_uid = pods.get(&stuck).await.unwrap().uid();
    let report = examine(&external, &master, None, true).await;
    assert_eq!(
        report.repaired,
        vec![format!("Pod {stuck}"), format!("Node {stuck}")]
    );
    assert_eq!(report.problems(), 0, "{report:#?}");
    assert!(
        nodes.get_opt(&healthy).await.unwrap().is_some(),
        "the healthy node stays"
    );
    assert!(
        pods.get_opt(&healthy).await.unwrap().is_some(),
        "its pod too"
    );
    let gone = pods.get_opt(&stuck).await.unwrap();
    assert!(gone.is_none_or(|p| p.uid() != old_uid || p.metadata.deletion_timestamp.is_some()));
    // The ReplicationController replaces it, and deploy finds all Ready again.
    let outcome = kubemark_deploy::deploy(&c.spec(2), &c.events(), &cancel)
        .await
        .unwrap();
    assert_eq!(outcome.summary.unwrap().wanted, 2);
    let report = examine(&external, &master, None, false).await;
    assert!(report.findings.is_empty(), "{report:#?}");
}

/// Somebody's own ReplicationController made from deploy's template (as
/// `deploy render` prints it), in deploy's namespace, its pods carrying
/// deploy's labels too: one of its pods Running under a Node NotReady for ten
/// minutes. `ours`: whether deploy's own RC is there as well.
async fn theirs_stuck(c: &Clusters, ours: bool) -> (Cluster, Cluster, Pod, Node) {
    let (external, master) = c.connect().await;
    if ours {
        kubemark_deploy::deploy(&c.spec(1), &c.events(), &CancellationToken::new())
            .await
            .unwrap();
    } else {
        let namespaces: Api<Namespace> = Api::all(external.client.clone());
        create(&namespaces, json!({"metadata": {"name": "kubemark"}})).await;
    }
    let (plan, _) = kubemark_deploy::render(&c.spec(1)).unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(external.client.clone(), "kubemark");
    if !ours {
        create(&secrets, plan.secrets[0].value.clone()).await;
    }
    let rcs: Api<k8s_openapi::api::core::v1::ReplicationController> =
        Api::namespaced(external.client.clone(), "kubemark");
    let mut rc = plan.rc.value.clone();
    rc["metadata"]["name"] = json!("theirs");
    rc["spec"]["selector"] = json!({"owner": "them"});
    rc["spec"]["template"]["metadata"]["labels"] = json!({"name": "hollow-node", "owner": "them"});
    rcs.create(
        &PostParams {
            field_manager: Some("kubectl-create".into()),
            ..PostParams::default()
        },
        &serde_json::from_value(rc).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(external.client.clone(), "kubemark");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let theirs = ListParams::default().labels("owner=them");
    let pod = loop {
        assert!(std::time::Instant::now() < deadline, "their pod never ran");
        let running = pods
            .list(&theirs)
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if let Some(p) = running {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let nodes: Api<Node> = Api::all(master.client.clone());
    let name = pod.name_any();
    let node = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "their hollow node never registered"
        );
        if let Some(n) = nodes.get_opt(&name).await.unwrap() {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    not_ready_for_ten_minutes(&nodes, &name).await;
    (external, master, pod, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_never_touches_pods_of_a_hollow_node_rc_deploy_did_not_make() {
    for ours in [false, true] {
        let c = Clusters::start().await;
        let (external, master, pod, node) = theirs_stuck(&c, ours).await;
        let report = examine(&external, &master, None, true).await;
        assert!(report.repaired.is_empty(), "ours: {ours}: {report:#?}");
        let pods: Api<Pod> = Api::namespaced(external.client.clone(), "kubemark");
        let nodes: Api<Node> = Api::all(master.client.clone());
        let name = pod.name_any();
        assert_eq!(
            pods.get(&name).await.unwrap().uid(),
            pod.uid(),
            "their pod stays"
        );
        assert_eq!(
            nodes.get(&name).await.unwrap().uid(),
            node.uid(),
            "its Node stays"
        );
    }
}
