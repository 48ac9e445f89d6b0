//! Scenarios at the library level: `kubemark_deploy`'s functions against two
//! in-process simulators (over real HTTPS), with the event log compared to a
//! snapshot. What the log says is what a user reads, so a change in it shows
//! here as a diff (`UPDATE_EXPECT=1 cargo test -p kubemark-deploy --test
//! scenarios` rewrites the snapshots after a deliberate change).
//!
//! Progress lines depend on timing and are left out; addresses, versions and
//! ports are replaced by names.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use expect_test::{Expect, expect};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kubemark_contract::CancellationToken;
use support::Clusters;

fn check(actual: &str, expect: Expect) {
    expect.assert_eq(actual);
}

/// An error as the CLI shows it: the message, the details, the hint.
fn shown(e: &kubemark_deploy::Error) -> String {
    let mut out = format!("error: {e}\n");
    if let kubemark_deploy::Error::Refused { details, hint, .. } = e {
        for d in details {
            out += &format!("  {d}\n");
        }
        out += &format!("hint: {hint}\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_again_scale_down_and_destroy_as_the_user_reads_it() {
    let c = Clusters::start().await;
    let cancel = CancellationToken::new();
    let outcome = kubemark_deploy::deploy(&c.spec(3), &c.events(), &cancel)
        .await
        .unwrap();
    let summary = outcome.summary.unwrap();
    assert_eq!((summary.wanted, summary.stale_nodes_deleted), (3, 0));
    // What clusterloader2 takes: the master's kubeconfig, the external one as
    // ROOT_KUBECONFIG, the Ready hollow nodes, the master's address.
    let cl2 = outcome.clusterloader2.unwrap();
    assert_eq!((cl2.nodes, cl2.schedulable_nodes), (3, 3));
    assert_eq!(
        cl2.args,
        vec![
            "--provider=kubemark".to_owned(),
            format!(
                "--kubeconfig={}",
                c.master.kubeconfig.canonicalize().unwrap().display()
            ),
            format!(
                "--provider-configs=ROOT_KUBECONFIG={}",
                c.external.kubeconfig.canonicalize().unwrap().display()
            ),
            "--nodes=3".to_owned(),
            "--masterip=127.0.0.1".to_owned(),
        ]
    );
    assert!(cl2.warnings().is_empty(), "{:?}", cl2.warnings());
    check(
        &c.take(),
        expect![[r#"
            == preflight: rendering the manifests and checking both clusters
            warning: the master is at a loopback address (<master>): this works only for pods on the host's network (--allow-loopback-master)
            note: node identity: shared, one credential for every hollow node (the master does not serve rbac.authorization.k8s.io/v1 ClusterRoleBindings or certificates.k8s.io/v1 CertificateSigningRequests; --node-identity per-node asks for per-node anyway)
            note: external cluster <external> (v1.33.0), context sim-external
            note: kubemark master <master> (v1.33.2), context sim-master
            note: clusterloader2 will see 3 schedulable node(s) on the master: 3 hollow, 0 other
            note: room for 132 more hollow-node pods, 3 needed
            == apply: 3 hollow nodes from templates/hollow-node.yaml into namespace kubemark
            applied Namespace kubemark
            note: created namespace kubemark: deploy's own, destroy deletes it
            applied Secret kubeconfig
            applied ReplicationController hollow-node
            == wait: for 3 pods Running and 3 nodes Ready (timeout 120s)
        "#]],
    );

    // Unchanged: nothing is written again.
    kubemark_deploy::deploy(&c.spec(3), &c.events(), &cancel)
        .await
        .unwrap();
    check(
        &c.take(),
        expect![[r#"
            == preflight: rendering the manifests and checking both clusters
            warning: the master is at a loopback address (<master>): this works only for pods on the host's network (--allow-loopback-master)
            note: node identity: shared, one credential for every hollow node (the master does not serve rbac.authorization.k8s.io/v1 ClusterRoleBindings or certificates.k8s.io/v1 CertificateSigningRequests; --node-identity per-node asks for per-node anyway)
            note: external cluster <external> (v1.33.0), context sim-external
            note: kubemark master <master> (v1.33.2), context sim-master
            note: clusterloader2 will see 3 schedulable node(s) on the master: 3 hollow, 0 other
            note: room for 129 more hollow-node pods, 0 needed
            == apply: 3 hollow nodes from templates/hollow-node.yaml into namespace kubemark
            applied Namespace kubemark (unchanged)
            applied Secret kubeconfig (unchanged)
            applied ReplicationController hollow-node (unchanged)
            == wait: for 3 pods Running and 3 nodes Ready (timeout 120s)
        "#]],
    );

    // 3 → 1: the Nodes of the two pods that went are deleted after the wait.
    let outcome = kubemark_deploy::deploy(&c.spec(1), &c.events(), &cancel)
        .await
        .unwrap();
    assert_eq!(outcome.summary.unwrap().stale_nodes_deleted, 2);
    check(
        &c.take(),
        expect![[r#"
            == preflight: rendering the manifests and checking both clusters
            warning: the master is at a loopback address (<master>): this works only for pods on the host's network (--allow-loopback-master)
            note: node identity: shared, one credential for every hollow node (the master does not serve rbac.authorization.k8s.io/v1 ClusterRoleBindings or certificates.k8s.io/v1 CertificateSigningRequests; --node-identity per-node asks for per-node anyway)
            note: external cluster <external> (v1.33.0), context sim-external
            note: kubemark master <master> (v1.33.2), context sim-master
            note: clusterloader2 will see 1 schedulable node(s) on the master: 1 hollow, 0 other
            note: room for 129 more hollow-node pods, 0 needed
            == apply: 1 hollow nodes from templates/hollow-node.yaml into namespace kubemark
            applied Namespace kubemark (unchanged)
            applied Secret kubeconfig (unchanged)
            applied ReplicationController hollow-node
            == wait: for 1 pods Running and 1 nodes Ready (timeout 120s)
            deleted 2 stale hollow Node
        "#]],
    );

    let (external, master) = c.connect().await;
    let status = kubemark_deploy::status::status(&external, &master, "kubemark")
        .await
        .unwrap();
    assert_eq!(
        (status.wanted, status.pods, status.running, status.ready),
        (Some(1), 1, 1, 1)
    );
    let destroyed = kubemark_deploy::destroy::destroy(
        &external,
        &master,
        "kubemark",
        Duration::from_secs(60),
        &c.events(),
        &cancel,
    )
    .await
    .unwrap();
    assert!(
        destroyed.namespace && destroyed.left.is_empty(),
        "{destroyed:?}"
    );
    check(
        &c.take(),
        expect![[r#"
            == destroy: what deploy made for namespace kubemark, on both clusters
            deleted 1 ReplicationController
            deleted 1 Pod
            deleted 1 Secret
            deleted 1 Namespace
            deleted 1 hollow Node
        "#]],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deploy_did_not_make_stops_it_before_any_write() {
    let c = Clusters::start().await;
    let (external, _) = c.connect().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(external.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "kubemark"}})).unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(external.client.clone(), "kubemark");
    let theirs: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubeconfig"},
        "stringData": {"kubeconfig": "someone else's"}
    }))
    .unwrap();
    secrets
        .create(
            &PostParams {
                field_manager: Some("kubectl-create".into()),
                ..PostParams::default()
            },
            &theirs,
        )
        .await
        .unwrap();
    let e = kubemark_deploy::deploy(&c.spec(2), &c.events(), &CancellationToken::new())
        .await
        .unwrap_err();
    check(
        &shown(&e),
        expect![[r#"
        error: 1 object(s) deploy would write already exist in namespace kubemark and are not deploy's
          Secret kubemark/kubeconfig (managed by kubectl-create)
        hint: nothing was changed. Deploy into another --namespace, or move those objects away, or pass --adopt to take them over (deploy then overwrites them and destroy deletes them)
    "#]],
    );
    check(
        &c.take(),
        expect![[r#"
            == preflight: rendering the manifests and checking both clusters
            warning: the master is at a loopback address (<master>): this works only for pods on the host's network (--allow-loopback-master)
            note: node identity: shared, one credential for every hollow node (the master does not serve rbac.authorization.k8s.io/v1 ClusterRoleBindings or certificates.k8s.io/v1 CertificateSigningRequests; --node-identity per-node asks for per-node anyway)
            note: external cluster <external> (v1.33.0), context sim-external
            note: kubemark master <master> (v1.33.2), context sim-master
            note: namespace kubemark exists and deploy did not create it: deploy works in it but does not take it over, and destroy will not delete it
        "#]],
    );
    // Still theirs, and nothing of deploy's was written.
    let secret = secrets.get("kubeconfig").await.unwrap();
    assert!(secret.metadata.labels.is_none_or(|l| l.is_empty()));
    let rcs: Api<k8s_openapi::api::core::v1::ReplicationController> =
        Api::namespaced(external.client.clone(), "kubemark");
    assert!(rcs.get_opt("hollow-node").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_max_is_what_the_external_cluster_holds() {
    let c = Clusters::start().await;
    let n = kubemark_deploy::most_that_fit(&c.spec(1), &c.events())
        .await
        .unwrap();
    // Two simulated workers of 4 CPUs, 16Gi and 110 pods; a hollow-node pod
    // requests 40m + 20m CPU and 100Mi + (100Mi + 50Ki per node) memory: CPU
    // binds first, at 4000m / 60m = 66 pods a worker.
    assert_eq!(n, 2 * (4000 / 60));
    let log = c.take();
    assert!(
        log.starts_with(
            "note: 132 hollow nodes fit on the external cluster (--replicas max): deploying 132\n"
        ),
        "{log}"
    );
    // That many deploy; one more does not fit.
    let outcome = kubemark_deploy::deploy(&c.spec(n), &c.events(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.summary.unwrap().wanted, 132);
    let e = kubemark_deploy::check(&c.spec(n + 1), &c.events())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("room for 0 hollow-node pod(s), 1 needed"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterloader2_is_told_of_schedulable_nodes_that_are_not_hollow() {
    let c = Clusters::with_master_workers(1).await;
    let outcome = kubemark_deploy::deploy(&c.spec(2), &c.events(), &CancellationToken::new())
        .await
        .unwrap();
    let cl2 = outcome.clusterloader2.unwrap();
    assert_eq!((cl2.nodes, cl2.schedulable_nodes), (2, 3));
    assert_eq!(cl2.other_schedulable_nodes.len(), 1);
    let log = c.take();
    assert!(
        log.contains(
            "note: clusterloader2 will see 3 schedulable node(s) on the master: 2 hollow, 1 other"
        ),
        "{log}"
    );
    assert!(
        log.contains("warning: the master already has 1 schedulable node(s) that are not hollow"),
        "{log}"
    );
    assert!(
        log.contains("warning: clusterloader2 will also count 1 schedulable node(s) on the master that are not this deploy's hollow nodes"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterloader2_is_told_of_cordoned_and_tainted_hollow_nodes() {
    let c = Clusters::start().await;
    kubemark_deploy::deploy(&c.spec(2), &c.events(), &CancellationToken::new())
        .await
        .unwrap();
    let (_, master) = c.connect().await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(master.client.clone());
    let names: Vec<String> = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    nodes
        .patch(
            &names[0],
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    c.take();
    // Right after deploy's wait (read from the rows: the cordon shows in Status).
    let cl2 = kubemark_deploy::deploy(&c.spec(2), &c.events(), &CancellationToken::new())
        .await
        .unwrap()
        .clusterloader2
        .unwrap();
    assert_eq!((cl2.nodes, cl2.schedulable_nodes), (2, 1));
    let log = c.take();
    assert!(
        log.contains("only 1 of the 2 Ready hollow nodes are schedulable"),
        "{log}"
    );
    // status reads the Nodes whole: a taint shows too.
    nodes
        .patch(
            &names[1],
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"taints": [{"key": "x", "effect": "NoExecute"}]}}),
            ),
        )
        .await
        .unwrap();
    let (external, master) = c.connect().await;
    let status = kubemark_deploy::status::status(&external, &master, "kubemark")
        .await
        .unwrap();
    assert_eq!(status.clusterloader2.schedulable_nodes, 0);
    // Hollow nodes registered with a NoSchedule taint count as none.
    let mut spec = c.spec(2);
    spec.register_with_taints = Some("dedicated=kubemark:NoSchedule".into());
    let cl2 = kubemark_deploy::deploy(&spec, &c.events(), &CancellationToken::new())
        .await
        .unwrap()
        .clusterloader2
        .unwrap();
    assert_eq!(cl2.schedulable_nodes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_identity_on_a_master_without_tls_bootstrap_is_refused_before_any_write() {
    // The simulator serves no ClusterRoleBindings and no CSRs: as far as it
    // models TLS bootstrap, that is all it can say.
    let c = Clusters::start().await;
    let mut spec = c.spec(2);
    spec.node_identity = kubemark_deploy::identity::NodeIdentity::PerNode;
    let e = kubemark_deploy::deploy(&spec, &c.events(), &CancellationToken::new())
        .await
        .unwrap_err();
    check(
        &shown(&e),
        expect![[r#"
            error: --node-identity per-node: the master does not serve rbac.authorization.k8s.io/v1 ClusterRoleBindings or certificates.k8s.io/v1 CertificateSigningRequests
            hint: per-node identity needs TLS bootstrap on the master; deploy with --node-identity shared
        "#]],
    );
    let (external, _) = c.connect().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(external.client.clone());
    assert!(
        namespaces.get_opt("kubemark").await.unwrap().is_none(),
        "nothing written"
    );
    // Rendering needs no master: the plan shows the bootstrap kubeconfig and
    // the master's objects (a new token, its secret redacted).
    let (plan, _) = kubemark_deploy::render(&spec).unwrap();
    let kinds: Vec<&str> = plan.master.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        ["Secret", "ClusterRoleBinding", "ClusterRoleBinding"]
    );
    let yaml = plan.to_yaml(false);
    assert!(yaml.contains("bootstrap.kubeconfig: '<redacted:"), "{yaml}");
    assert!(
        yaml.contains("--bootstrap-kubeconfig=/kubeconfig/bootstrap.kubeconfig"),
        "{yaml}"
    );
    assert!(
        yaml.contains("--cert-dir=/var/lib/hollow-identity/pki"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("--kubeconfig=/kubeconfig/kubelet.kubeconfig"),
        "{yaml}"
    );
    // The master's objects are in it, the token's secret redacted.
    assert!(
        yaml.contains("# on the kubemark master (per-node identity"),
        "{yaml}"
    );
    assert!(yaml.contains("kind: ClusterRoleBinding"), "{yaml}");
    assert!(
        yaml.contains("token-secret: '<redacted: 16 bytes"),
        "{yaml}"
    );
    let token = match &plan.master[0].value["stringData"]["token-secret"] {
        serde_json::Value::String(t) => t.clone(),
        other => panic!("{other}"),
    };
    assert!(!yaml.contains(&token), "{yaml}");
    assert!(
        !format!("{plan:?}").contains(&token),
        "Debug never shows it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_is_explained_from_a_sample_of_what_the_watches_name() {
    // 30 hollow nodes whose image does not pull: the stall report reads 20 of
    // the 30 pods the pod watch names, not a list of every pod.
    let external = kubemark_sim::Sim::start(kubemark_sim::SimConfig {
        name: "external".into(),
        workers: 2,
        images: kubemark_sim::Images {
            registry: None,
            known: Some(vec!["busybox:1.32".into()]),
        },
        ..kubemark_sim::SimConfig::default()
    })
    .await
    .unwrap();
    let c = Clusters::with_external(external).await;
    let mut spec = c.spec(30);
    spec.timeout = Some(Duration::from_secs(8));
    let stalls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&stalls);
    let events = kubemark_deploy::Events::new(move |e| {
        if let kubemark_deploy::Event::Stalled { diagnosis, .. } = e {
            seen.lock().unwrap().push(diagnosis);
        }
    });
    let e = kubemark_deploy::deploy(&spec, &events, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("0/30 hollow nodes Ready"), "{e}");
    let stalls = stalls.lock().unwrap();
    let first = stalls.first().expect("a stall report before the timeout");
    assert_eq!(
        first[..2],
        [
            "30 pods not Running yet; what a sample of 20 of them says:".to_owned(),
            "20 pods ImagePullBackOff: image 127.0.0.1:5000/kubemark:v1.33.2 cannot be pulled"
                .to_owned(),
        ],
        "{first:#?}"
    );
}
