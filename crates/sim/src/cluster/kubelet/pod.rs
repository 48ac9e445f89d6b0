//! A pod's life on its node: after the kubelet delay, prepare (volumes,
//! images, config references, retried until they work), complete the init
//! containers, then run the containers and restart with back-off whatever
//! exits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::super::hollow;
use super::env::check_config_refs;
use super::images::image_pulls;
use super::status::{Container, PodRun, containers_of, waiting};
use super::volumes::check_volumes;
use crate::Shared;
use crate::meta::{self, idx};

/// A container process's news for its pod's loop.
enum Proc {
    Started(usize),
    Exited(usize, String),
}

pub(super) async fn run_pod(shared: Arc<Shared>, ns: String, name: String, uid: String) {
    let timing = shared.cfg.timing.clone();
    tokio::time::sleep(timing.kubelet_delay).await;
    let Some(pod) = shared
        .store
        .get(idx::PODS, &ns, &name)
        .map(|p| p.value.clone())
    else {
        return;
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let host_ip = shared
        .store
        .get(idx::NODES, "", &node)
        .and_then(|n| {
            n.value
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                .and_then(|x| x["address"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "10.0.0.1".into());
    let n = shared.runtime.next_ip.fetch_add(1, Ordering::Relaxed) + 2;
    let ip = format!("10.{}.{}.{}", 64 + (n >> 16) % 64, (n >> 8) & 255, n & 255);
    let to_container = |c: &Value| Container {
        name: c["name"].as_str().unwrap_or_default().to_owned(),
        image: c["image"].as_str().unwrap_or_default().to_owned(),
        restarts: 0,
        state: waiting("PodInitializing", None),
        last_state: Value::Null,
        ready: false,
        started_at: None,
    };
    let mut run = PodRun {
        init: containers_of(&pod, "initContainers")
            .iter()
            .map(to_container)
            .collect(),
        containers: containers_of(&pod, "containers")
            .iter()
            .map(to_container)
            .collect(),
        shared: Arc::clone(&shared),
        ns,
        name,
        uid,
        node,
        ip,
        host_ip,
        started: meta::now_rfc3339(),
        initialized: false,
    };
    let mut pull_failures: HashMap<String, u32> = HashMap::new();
    // Prepare: volumes, images, config references. Retried until they work.
    loop {
        let Some(pod) = run.current() else { return };
        if let Err(message) = check_volumes(&shared, &pod) {
            run.all_waiting("ContainerCreating", None);
            run.publish();
            run.event(&pod, "Warning", "FailedMount", &message);
            tokio::time::sleep(timing.retry).await;
            continue;
        }
        let mut pull_error = None;
        for c in containers_of(&pod, "initContainers")
            .iter()
            .chain(containers_of(&pod, "containers").iter())
        {
            let image = c["image"].as_str().unwrap_or_default().to_owned();
            if let Err(why) = image_pulls(&shared, &image).await {
                pull_error = Some((
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    image,
                    why,
                ));
                break;
            }
        }
        if let Some((container, image, why)) = pull_error {
            let failures = pull_failures.entry(image.clone()).or_default();
            *failures += 1;
            let (reason, message) = if *failures == 1 {
                (
                    "ErrImagePull",
                    format!("failed to pull and unpack image \"{image}\": {why}"),
                )
            } else {
                (
                    "ImagePullBackOff",
                    format!("Back-off pulling image \"{image}\""),
                )
            };
            run.all_waiting("PodInitializing", None);
            for c in run
                .init
                .iter_mut()
                .chain(run.containers.iter_mut())
                .filter(|c| c.name == container)
            {
                c.state = waiting(reason, Some(&message));
            }
            run.publish();
            run.event(
                &pod,
                "Normal",
                "Pulling",
                &format!("Pulling image \"{image}\""),
            );
            run.event(
                &pod,
                "Warning",
                "Failed",
                &format!("Failed to pull image \"{image}\": {why}"),
            );
            run.event(&pod, "Warning", "Failed", &format!("Error: {reason}"));
            if reason == "ImagePullBackOff" {
                run.event(&pod, "Normal", "BackOff", &message);
            }
            tokio::time::sleep(timing.retry).await;
            continue;
        }
        if let Err((container, message)) = check_config_refs(&shared, &pod) {
            run.all_waiting("PodInitializing", None);
            for c in run.containers.iter_mut().filter(|c| c.name == container) {
                c.state = waiting("CreateContainerConfigError", Some(&message));
            }
            run.publish();
            run.event(&pod, "Warning", "Failed", &format!("Error: {message}"));
            tokio::time::sleep(timing.retry).await;
            continue;
        }
        break;
    }
    let Some(pod) = run.current() else { return };
    let now = meta::now_rfc3339();
    for c in &mut run.init {
        c.state = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}});
        c.ready = true;
        run.shared.logs.append(&run.ns, &run.name, &c.name, "");
    }
    run.initialized = true;
    for c in containers_of(&pod, "initContainers")
        .iter()
        .chain(containers_of(&pod, "containers").iter())
    {
        let image = c["image"].as_str().unwrap_or_default();
        run.event(
            &pod,
            "Normal",
            "Pulled",
            &format!("Container image \"{image}\" already present on machine"),
        );
    }

    // Run the containers; restart with back-off whatever exits.
    let (tx, mut rx) = mpsc::channel::<Proc>(16);
    let specs = containers_of(&pod, "containers");
    // The processes live in this set: when the pod task stops, they stop with it.
    let mut procs = tokio::task::JoinSet::new();
    for (i, spec) in specs.iter().enumerate() {
        start_process(
            &mut procs,
            &shared,
            &pod,
            spec,
            i,
            Duration::ZERO,
            tx.clone(),
        );
    }
    let mut last_exit: HashMap<usize, Instant> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        let Some(pod) = run.current() else { return };
        match msg {
            Proc::Started(i) => {
                let now = meta::now_rfc3339();
                let c = &mut run.containers[i];
                c.state = json!({"running": {"startedAt": now}});
                c.ready = true;
                c.started_at = Some(now);
                let name = c.name.clone();
                run.event(
                    &pod,
                    "Normal",
                    "Created",
                    &format!("Created container: {name}"),
                );
                run.event(
                    &pod,
                    "Normal",
                    "Started",
                    &format!("Started container {name}"),
                );
            }
            Proc::Exited(i, line) => {
                let now = meta::now_rfc3339();
                let c = &mut run.containers[i];
                run.shared.logs.append(&run.ns, &run.name, &c.name, line);
                c.last_state = json!({"terminated": {"exitCode": 255, "reason": "Error",
                    "startedAt": c.started_at.clone().unwrap_or_else(|| now.clone()), "finishedAt": now}});
                c.restarts += 1;
                c.ready = false;
                // Back-off doubles per restart, and resets after a long healthy run.
                let healthy_long = last_exit
                    .get(&i)
                    .is_some_and(|t| t.elapsed() > timing.backoff_max * 2);
                if healthy_long {
                    c.restarts = 1;
                }
                last_exit.insert(i, Instant::now());
                let factor = 2u32.saturating_pow(c.restarts.saturating_sub(1).min(16));
                let delay = (timing.backoff * factor).min(timing.backoff_max);
                let message = format!(
                    "back-off {} restarting failed container={} pod={}_{}({})",
                    meta::human_duration(delay.as_secs() as i64),
                    c.name,
                    run.name,
                    run.ns,
                    run.uid
                );
                c.state = waiting("CrashLoopBackOff", Some(&message));
                let name = c.name.clone();
                run.event(
                    &pod,
                    "Warning",
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        run.name, run.ns, run.uid
                    ),
                );
                start_process(&mut procs, &shared, &pod, &specs[i], i, delay, tx.clone());
            }
        }
        run.publish();
    }
}

/// Start container `i`'s process after `delay`; it reports start and exit.
fn start_process(
    procs: &mut tokio::task::JoinSet<()>,
    shared: &Arc<Shared>,
    pod: &Value,
    container: &Value,
    i: usize,
    delay: Duration,
    tx: mpsc::Sender<Proc>,
) {
    let (shared, pod, container) = (Arc::clone(shared), pod.clone(), container.clone());
    procs.spawn(async move {
        tokio::time::sleep(delay).await;
        // The pod as it is now: a fixed secret is seen on restart.
        let pod = shared
            .store
            .get(idx::PODS, meta::namespace(&pod), meta::name(&pod))
            .map(|p| p.value.clone())
            .unwrap_or(pod);
        if tx.send(Proc::Started(i)).await.is_err() {
            return;
        }
        let process = hollow::prepare(&shared, &pod, &container);
        drop((pod, container));
        let line = process.run(&shared).await;
        let _ = tx.send(Proc::Exited(i, line)).await;
    });
}
