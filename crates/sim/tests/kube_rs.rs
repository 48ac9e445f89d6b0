//! kube-rs (the workspace's version) against the simulator: server-side apply,
//! and a watcher + reflector that survive watch cuts and a 410 Gone.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_sim_client::client;

mod kube_sim_client {
    use kube::Client;
    use kube::config::{KubeConfigOptions, Kubeconfig};

    pub async fn client(path: &std::path::Path) -> Client {
        let kubeconfig = Kubeconfig::read_from(path).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        Client::try_from(config).unwrap()
    }
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "w"},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patch_apply_creates_keeps_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let sim = common::sim("external", 1, dir.path()).await;
    let client = client(&sim.kubeconfig).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "w"}})).unwrap(),
        )
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "w");
    let mine = PatchParams::apply("kubemark-deploy");
    let first = api
        .patch("c", &mine, &Patch::Apply(cm("c", &[("a", "1")])))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    let again = api
        .patch("c", &mine, &Patch::Apply(cm("c", &[("a", "1")])))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version.unwrap(),
        rv,
        "an identical apply changes nothing"
    );
    let managers = first.metadata.managed_fields.unwrap();
    assert_eq!(managers[0].manager.as_deref(), Some("kubemark-deploy"));
    assert_eq!(managers[0].operation.as_deref(), Some("Apply"));

    let theirs = PatchParams::apply("someone-else");
    let err = api
        .patch("c", &theirs, &Patch::Apply(cm("c", &[("a", "2")])))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert!(
                status.message.contains("kubemark-deploy"),
                "{}",
                status.message
            );
        }
        other => panic!("{other:?}"),
    }
    let forced = api
        .patch(
            "c",
            &theirs.clone().force(),
            &Patch::Apply(cm("c", &[("a", "2")])),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["a"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_and_reflector_survive_cuts_and_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config("external", 1, dir.path());
    // Every watch ends after 3 events: the watcher must resume again and again.
    config.faults.watch_max_events = Some(3);
    // And only the last 2 changes are kept: a resume that fell behind gets 410 Gone.
    config.history = 2;
    let sim = kubemark_sim::Sim::start(config).await.unwrap();
    let client = client(&sim.kubeconfig).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "w"}})).unwrap(),
        )
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "w");

    let (reader, writer) = reflector::store::<ConfigMap>();
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&inits);
    let stream = watcher(api.clone(), watcher::Config::default().any_semantic())
        .map(move |e| {
            if matches!(e, Ok(watcher::Event::Init)) {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            e
        })
        .reflect(writer)
        .applied_objects()
        .boxed();
    let driver = tokio::spawn(async move {
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            let _ = item;
        }
    });
    let pp = PostParams::default();
    for i in 0..10 {
        api.create(&pp, &cm(&format!("c{i}"), &[("i", &i.to_string())]))
            .await
            .unwrap();
    }
    common::eventually("10 in the reflector", Duration::from_secs(20), || async {
        reader.state().len() == 10
    })
    .await;

    // A burst of 10 changes at once: the open watch delivers 3 and is cut; by then its
    // version is far older than the 2 changes kept, so resuming gets 410 Gone and the
    // watcher must list again.
    let inits_before = inits.load(std::sync::atomic::Ordering::SeqCst);
    for i in 10..20 {
        let value = serde_json::to_value(cm(&format!("c{i}"), &[("i", &i.to_string())])).unwrap();
        sim.store()
            .create(kubemark_sim::meta::idx::CONFIGMAPS, value)
            .unwrap();
    }
    api.delete("c0", &Default::default()).await.unwrap();
    common::eventually("19 in the reflector", Duration::from_secs(30), || async {
        let state = reader.state();
        state.len() == 19
            && !state
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some("c0"))
    })
    .await;
    assert!(
        inits.load(std::sync::atomic::Ordering::SeqCst) > inits_before,
        "a 410 made the watcher list again"
    );
    let listed = api.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 19);
    driver.abort();
}
