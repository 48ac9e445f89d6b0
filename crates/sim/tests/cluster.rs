//! The simulated cluster's behaviour, seen through kube-rs over HTTPS:
//! scheduling, image pulls, mounts, config references, hollow nodes that
//! crash-loop with their reason, garbage collection, injected faults.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod, ReplicationController, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy};
use kube::{Client, Config};
use serde_json::json;

async fn client(path: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

fn pod(name: &str, image: &str, extra: serde_json::Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": image}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn waiting_reason(api: &Api<Pod>, name: &str) -> Option<(String, String)> {
    let p = api.get(name).await.ok()?;
    let statuses = p.status?.container_statuses?;
    let w = statuses.first()?.state.clone()?.waiting?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_that_fits_nowhere_is_unschedulable_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config("external", 2, dir.path());
    config.worker_cpu = "500m".into();
    let sim = kubemark_sim::Sim::start(config).await.unwrap();
    let client = client(&sim.kubeconfig).await;
    namespace(&client, "s").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "s");
    let big = pod("big", "busybox", json!({}));
    let mut big_json = serde_json::to_value(&big).unwrap();
    big_json["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(big_json).unwrap(),
    )
    .await
    .unwrap();
    common::eventually("Unschedulable", Duration::from_secs(10), || async {
        let p = pods.get("big").await.unwrap();
        p.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref().is_some_and(|m| {
                        m.starts_with("0/2 nodes are available: 2 Insufficient cpu")
                    })
            })
    })
    .await;
    let events = events_for(&client, "s", "big").await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "FailedScheduling" && m.contains("Insufficient cpu")),
        "{events:?}"
    );
    // A pod that fits is bound and runs.
    pods.create(&PostParams::default(), &pod("small", "busybox", json!({})))
        .await
        .unwrap();
    common::eventually("small running", Duration::from_secs(10), || async {
        pods.get("small")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_failures_read_like_a_real_kubelet() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config("external", 1, dir.path());
    config.images.known = Some(vec!["busybox".into(), "registry.k8s.io/pause:3.10".into()]);
    let sim = kubemark_sim::Sim::start(config).await.unwrap();
    let client = client(&sim.kubeconfig).await;
    namespace(&client, "k").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "k");
    let pp = PostParams::default();

    // An image nobody has.
    pods.create(&pp, &pod("pull", "example.com/nope:1", json!({})))
        .await
        .unwrap();
    common::eventually("ImagePullBackOff", Duration::from_secs(10), || async {
        waiting_reason(&pods, "pull")
            .await
            .is_some_and(|(r, m)| r == "ImagePullBackOff" && m.contains("example.com/nope:1"))
    })
    .await;
    let events = events_for(&client, "k", "pull").await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "Failed"
                && m.starts_with("Failed to pull image \"example.com/nope:1\"")),
        "{events:?}"
    );

    // A secret volume whose secret is missing: ContainerCreating until it appears.
    let volumes =
        json!({"volumes": [{"name": "kubeconfig", "secret": {"secretName": "kubeconfig"}}]});
    pods.create(&pp, &pod("mount", "busybox", volumes))
        .await
        .unwrap();
    common::eventually("ContainerCreating", Duration::from_secs(10), || async {
        waiting_reason(&pods, "mount")
            .await
            .is_some_and(|(r, _)| r == "ContainerCreating")
    })
    .await;
    let events = events_for(&client, "k", "mount").await;
    assert!(
        events.iter().any(|(r, m)| r == "FailedMount" && m == "MountVolume.SetUp failed for volume \"kubeconfig\" : secret \"kubeconfig\" not found"),
        "{events:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "k");
    secrets
        .create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": "kubeconfig"}, "stringData": {"k": "v"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    common::eventually("mount running", Duration::from_secs(10), || async {
        pods.get("mount")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    })
    .await;

    // A config reference to a configmap that does not exist.
    let env = json!({"containers": [{"name": "c", "image": "busybox", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}]});
    pods.create(&pp, &pod("config", "busybox", env))
        .await
        .unwrap();
    common::eventually(
        "CreateContainerConfigError",
        Duration::from_secs(10),
        || async {
            waiting_reason(&pods, "config").await
                == Some((
                    "CreateContainerConfigError".into(),
                    "configmap \"cfg\" not found".into(),
                ))
        },
    )
    .await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "k");
    maps.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"other": "v"}}))
            .unwrap(),
    )
    .await
    .unwrap();
    common::eventually("missing key", Duration::from_secs(10), || async {
        waiting_reason(&pods, "config")
            .await
            .is_some_and(|(_, m)| m == "couldn't find key k in ConfigMap k/cfg")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_nodes_that_cannot_reach_their_master_crash_loop_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let external = common::sim("external", 2, dir.path()).await;
    let master = common::sim("master", 0, dir.path()).await;
    let client = client(&external.kubeconfig).await;
    namespace(&client, "kubemark").await;
    let good = std::fs::read_to_string(&master.kubeconfig).unwrap();
    let closed_port = kubemark_testbed::free_port().unwrap();
    let unreachable = good.replace(&master.url, &format!("https://127.0.0.1:{closed_port}"));
    let wrong_token = good.replace(&master.token, "not-the-token");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kubemark");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "kubeconfig"}, "stringData": {
                "unreachable.kubeconfig": unreachable, "wrong.kubeconfig": wrong_token, "kubelet.kubeconfig": good}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), "kubemark");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kubemark");
    for (key, expect) in [
        ("unreachable.kubeconfig", "connect: connection refused"),
        ("wrong.kubeconfig", "Unauthorized"),
    ] {
        let rc: ReplicationController =
            serde_yaml::from_str(&common::hollow_rc("kubemark", 1, "kubemark:v1", key)).unwrap();
        rcs.create(&PostParams::default(), &rc).await.unwrap();
        common::eventually("CrashLoopBackOff", Duration::from_secs(15), || async {
            let list = pods
                .list(&ListParams::default().labels("name=hollow-node"))
                .await
                .unwrap();
            list.items.iter().any(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.restart_count >= 1
                                && c.state
                                    .as_ref()
                                    .and_then(|s| s.waiting.as_ref())
                                    .and_then(|w| w.reason.as_deref())
                                    == Some("CrashLoopBackOff")
                        })
                    })
            })
        })
        .await;
        let name = pods
            .list(&ListParams::default().labels("name=hollow-node"))
            .await
            .unwrap()
            .items[0]
            .metadata
            .name
            .clone()
            .unwrap();
        let logs = pods.logs(&name, &LogParams::default()).await.unwrap();
        assert!(logs.contains(expect), "{key}: {logs}");
        rcs.delete("hollow-node", &DeleteParams::default())
            .await
            .unwrap();
        common::eventually("pods gone", Duration::from_secs(10), || async {
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        })
        .await;
    }
    assert_eq!(
        master.store().count(kubemark_sim::meta::idx::NODES),
        0,
        "no node registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_take_their_dependents_with_them_unless_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let sim = common::sim("external", 2, dir.path()).await;
    let client = client(&sim.kubeconfig).await;
    namespace(&client, "g").await;
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), "g");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "g");
    let make = |name: &str| -> ReplicationController {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"replicas": 2, "selector": {"app": name},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
        .unwrap()
    };
    let count = |app: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    for name in ["orphan", "fg"] {
        rcs.create(&PostParams::default(), &make(name))
            .await
            .unwrap();
    }
    common::eventually("4 pods", Duration::from_secs(10), || async {
        count("orphan").await == 2 && count("fg").await == 2
    })
    .await;

    let orphan = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    rcs.delete("orphan", &orphan).await.unwrap();
    common::eventually(
        "the RC goes, its pods stay without owner",
        Duration::from_secs(10),
        || async {
            let left = pods
                .list(&ListParams::default().labels("app=orphan"))
                .await
                .unwrap()
                .items;
            rcs.get_opt("orphan").await.unwrap().is_none()
                && left.len() == 2
                && left.iter().all(|p| {
                    p.metadata
                        .owner_references
                        .as_ref()
                        .is_none_or(Vec::is_empty)
                })
        },
    )
    .await;

    let foreground = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    rcs.delete("fg", &foreground).await.unwrap();
    common::eventually(
        "pods first, then the RC",
        Duration::from_secs(10),
        || async { count("fg").await == 0 && rcs.get_opt("fg").await.unwrap().is_none() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_faults_answer_like_an_overloaded_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config("external", 1, dir.path());
    config.faults.errors =
        kubemark_sim::Faults::parse_errors("list:pods:429:1,get:nodes:503:1").unwrap();
    let sim = kubemark_sim::Sim::start(config).await.unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(sim.ca_pem.as_ref().unwrap().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let get = |path: &str| {
        http.get(format!("{}{path}", sim.url))
            .bearer_auth(&sim.token)
            .send()
    };
    let r = get("/api/v1/pods").await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("TooManyRequests"))
    );
    assert_eq!(
        get("/api/v1/nodes/worker-1")
            .await
            .unwrap()
            .status()
            .as_u16(),
        503
    );
    assert_eq!(
        get("/api/v1/nodes").await.unwrap().status().as_u16(),
        200,
        "list nodes is not affected"
    );
    assert_eq!(
        get("/api/v1/namespaces").await.unwrap().status().as_u16(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kubelet_can_ask_a_real_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = kubemark_testbed::Registry::start(&dir.path().join("registry"), None).unwrap();
    // Push a tiny image with the Docker CLI (imported from a one-file tar).
    let image = format!("{}/kubemark:sim-test", registry.addr);
    let tar = dir.path().join("rootfs.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "hello", &b"hello"[..]).unwrap();
        b.finish().unwrap();
    }
    kubemark_testbed::run("docker", &["import", tar.to_str().unwrap(), &image], None).unwrap();
    kubemark_testbed::run("docker", &["push", "--quiet", &image], None).unwrap();
    let _ = kubemark_testbed::run("docker", &["rmi", &image], None);

    let mut config = common::config("external", 1, dir.path());
    config.images.registry = Some(format!("http://{}", registry.addr));
    let sim = kubemark_sim::Sim::start(config).await.unwrap();
    let client = client(&sim.kubeconfig).await;
    namespace(&client, "r").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "r");
    pods.create(&PostParams::default(), &pod("there", &image, json!({})))
        .await
        .unwrap();
    let missing = format!("{}/kubemark:not-pushed", registry.addr);
    pods.create(&PostParams::default(), &pod("missing", &missing, json!({})))
        .await
        .unwrap();
    common::eventually(
        "the pushed image runs, the other does not pull",
        Duration::from_secs(15),
        || async {
            pods.get("there")
                .await
                .unwrap()
                .status
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running")
                && waiting_reason(&pods, "missing")
                    .await
                    .is_some_and(|(r, _)| r == "ImagePullBackOff" || r == "ErrImagePull")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_page_of_a_list_reports_the_first_pages_version() {
    let dir = tempfile::tempdir().unwrap();
    let sim = common::sim("external", 1, dir.path()).await;
    let client = client(&sim.kubeconfig).await;
    namespace(&client, "p").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "p");
    for i in 0..10 {
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let first = maps.list(&ListParams::default().limit(4)).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    // A change while the client pages: the next page still says the first page's version,
    // so a watch from it replays the change.
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "during"}})).unwrap(),
    )
    .await
    .unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    let second = maps
        .list(&ListParams::default().limit(4).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let (backlog, _) = {
        let start = sim
            .store()
            .watch_from(kubemark_sim::meta::idx::CONFIGMAPS, rv.parse().unwrap())
            .unwrap();
        (start.backlog, start.rv)
    };
    assert!(
        backlog
            .iter()
            .any(|c| c.obj.value["metadata"]["name"] == "during")
    );
}
