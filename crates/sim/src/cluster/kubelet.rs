//! The kubelets of every node: after a delay, a bound pod's volumes are
//! mounted (a missing secret or configmap leaves it `ContainerCreating` with
//! `FailedMount` events), its images pulled (else `ErrImagePull` then
//! `ImagePullBackOff`), its config references resolved (else
//! `CreateContainerConfigError`), init containers complete, and containers run.
//! A container whose process exits (a hollow node that cannot reach its
//! master) restarts with back-off: `CrashLoopBackOff`, with its log kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::scheduler::set_condition;
use super::{Feed, hollow, is_deleting, lock, next, record_event};
use crate::Shared;
use crate::meta::{self, idx};

fn bound(pod: &Value) -> bool {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
        && !is_deleting(pod)
}

fn ensure_task(shared: &Arc<Shared>, pod: &Value) {
    let key = (meta::namespace(pod).to_owned(), meta::name(pod).to_owned());
    let mut pods = lock(&shared.runtime.pods);
    if pods.contains_key(&key) {
        return;
    }
    let uid = meta::meta_str(pod, "uid").unwrap_or_default().to_owned();
    let task = tokio::spawn(run_pod(
        Arc::clone(shared),
        key.0.clone(),
        key.1.clone(),
        uid,
    ));
    pods.insert(key, task.abort_handle());
}

fn stop_task(shared: &Shared, ns: &str, name: &str) {
    if let Some(task) = lock(&shared.runtime.pods).remove(&(ns.to_owned(), name.to_owned())) {
        task.abort();
    }
    shared.logs.forget_pod(ns, name);
}

pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.store.subscribe();
    let resync = |shared: &Arc<Shared>| {
        let pods = shared.store.list(idx::PODS, None).0;
        let live: std::collections::HashSet<(String, String)> = pods
            .iter()
            .map(|p| {
                (
                    meta::namespace(&p.value).to_owned(),
                    meta::name(&p.value).to_owned(),
                )
            })
            .collect();
        let gone: Vec<(String, String)> = lock(&shared.runtime.pods)
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            stop_task(shared, &ns, &name);
        }
        for p in pods.iter().filter(|p| bound(&p.value)) {
            ensure_task(shared, &p.value);
        }
    };
    resync(&shared);
    loop {
        match next(&mut rx, None).await {
            Some(Feed::Change(c)) if c.res == idx::PODS => {
                let v = &c.obj.value;
                if c.kind == crate::store::ChangeType::Deleted {
                    stop_task(&shared, meta::namespace(v), meta::name(v));
                } else if bound(v) {
                    ensure_task(&shared, v);
                }
            }
            Some(Feed::Change(_)) => {}
            Some(Feed::Resync) => resync(&shared),
            Some(Feed::Closed) | None => return,
        }
    }
}

/// What a container is doing, as the pod status shows it.
#[derive(Debug, Clone)]
struct Container {
    name: String,
    image: String,
    restarts: u32,
    state: Value,
    last_state: Value,
    ready: bool,
    started_at: Option<String>,
}

fn waiting(reason: &str, message: Option<&str>) -> Value {
    match message {
        Some(m) => json!({"waiting": {"reason": reason, "message": m}}),
        None => json!({"waiting": {"reason": reason}}),
    }
}

fn containers_of(pod: &Value, field: &str) -> Vec<Value> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

struct PodRun {
    shared: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    node: String,
    ip: String,
    host_ip: String,
    started: String,
    init: Vec<Container>,
    containers: Vec<Container>,
    initialized: bool,
}

impl PodRun {
    fn current(&self) -> Option<Value> {
        let pod = self.shared.store.get(idx::PODS, &self.ns, &self.name)?;
        (meta::meta_str(&pod.value, "uid") == Some(self.uid.as_str()) && !is_deleting(&pod.value))
            .then(|| pod.value.clone())
    }

    fn event(&self, pod: &Value, kind: &str, reason: &str, message: &str) {
        record_event(
            &self.shared,
            pod,
            kind,
            reason,
            message,
            "kubelet",
            Some(&self.node),
        );
    }

    fn container_status(c: &Container) -> Value {
        let mut s = json!({
            "name": c.name,
            "image": c.image,
            "imageID": format!("{}@sha256:{:064x}", c.image.split(':').next().unwrap_or_default(), 0),
            "ready": c.ready,
            "restartCount": c.restarts,
            "started": c.state.get("running").is_some(),
            "state": c.state,
        });
        if c.state.get("running").is_some() || c.state.get("terminated").is_some() {
            s["containerID"] = json!(format!(
                "containerd://{:064x}",
                c.name.len() as u64 + u64::from(c.restarts)
            ));
        }
        if !c.last_state.is_null() {
            s["lastState"] = c.last_state.clone();
        } else {
            s["lastState"] = json!({});
        }
        s
    }

    /// Write the pod's status from the containers' states.
    fn publish(&self) {
        let all_ready = !self.containers.is_empty() && self.containers.iter().all(|c| c.ready);
        let running = self
            .containers
            .iter()
            .any(|c| c.state.get("running").is_some() || c.restarts > 0);
        let phase = if running { "Running" } else { "Pending" };
        let now = meta::now_rfc3339();
        let tf = |b: bool| if b { "True" } else { "False" };
        let mut status = json!({
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": self.started,
            "qosClass": "Burstable",
            "containerStatuses": self.containers.iter().map(Self::container_status).collect::<Vec<_>>(),
        });
        if self.initialized
            || self
                .containers
                .iter()
                .any(|c| c.state.get("running").is_some())
        {
            status["podIP"] = json!(self.ip);
            status["podIPs"] = json!([{"ip": self.ip}]);
        }
        if !self.init.is_empty() {
            status["initContainerStatuses"] = json!(
                self.init
                    .iter()
                    .map(Self::container_status)
                    .collect::<Vec<_>>()
            );
        }
        let not_ready_reason =
            |names: Vec<&str>| format!("containers with unready status: [{}]", names.join(" "));
        let unready: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let conditions = [
            json!({"type": "PodReadyToStartContainers", "status": tf(self.initialized), "lastProbeTime": null, "lastTransitionTime": now}),
            json!({"type": "Initialized", "status": tf(self.initialized), "lastProbeTime": null, "lastTransitionTime": now}),
            if all_ready {
                json!({"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
            } else {
                json!({"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": not_ready_reason(unready.clone()), "lastProbeTime": null, "lastTransitionTime": now})
            },
            if all_ready {
                json!({"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
            } else {
                json!({"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "message": not_ready_reason(unready), "lastProbeTime": null, "lastTransitionTime": now})
            },
        ];
        let _ = self
            .shared
            .store
            .modify(idx::PODS, &self.ns, &self.name, None, |pod| {
                if meta::meta_str(pod, "uid") != Some(self.uid.as_str()) {
                    return Err(crate::store::ApiError::conflict(
                        idx::PODS,
                        &self.name,
                        "uid changed",
                    ));
                }
                let scheduled = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
                    .cloned();
                let old_conditions = pod.pointer("/status/conditions").cloned();
                let mut next = json!({"status": status});
                if let Some(old) = old_conditions {
                    next["status"]["conditions"] = old;
                }
                for c in conditions {
                    set_condition(&mut next, c);
                }
                if let Some(s) = scheduled {
                    set_condition(&mut next, s);
                }
                pod["status"] = next["status"].take();
                Ok(())
            });
    }

    fn all_waiting(&mut self, reason: &str, message: Option<&str>) {
        for c in self.init.iter_mut().chain(self.containers.iter_mut()) {
            c.state = waiting(reason, message);
            c.ready = false;
        }
    }
}

/// A container process's news for its pod's loop.
enum Proc {
    Started(usize),
    Exited(usize, String),
}

async fn run_pod(shared: Arc<Shared>, ns: String, name: String, uid: String) {
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

/// A mounted file's bytes: the volume mount whose path holds `path`, then the
/// secret or configmap key behind it.
pub(crate) fn read_mounted(
    shared: &Shared,
    pod: &Value,
    container: &Value,
    path: &str,
) -> Result<Vec<u8>, String> {
    let missing = || format!("open {path}: no such file or directory");
    let mounts = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mount = mounts
        .iter()
        .filter_map(|m| {
            let mp = m["mountPath"].as_str()?.trim_end_matches('/');
            let rest = path.strip_prefix(mp)?.strip_prefix('/')?;
            Some((m, rest.to_owned(), mp.len()))
        })
        .max_by_key(|(_, _, len)| *len)
        .ok_or_else(missing)?;
    let (m, rest, _) = mount;
    let rest = match m["subPath"].as_str() {
        Some(sub) if !sub.is_empty() => format!("{sub}/{rest}"),
        _ => rest,
    };
    let volume = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|v| v.iter().find(|v| v["name"] == m["name"]))
        .ok_or_else(missing)?;
    let ns = meta::namespace(pod);
    let engine = base64::engine::general_purpose::STANDARD;
    let lookup = |source: &Value, res: usize, name_field: &str| -> Result<Vec<u8>, String> {
        let name = source[name_field].as_str().unwrap_or_default();
        let obj = shared.store.get(res, ns, name).ok_or_else(missing)?;
        let key = match source["items"].as_array() {
            Some(items) => items
                .iter()
                .find(|i| i["path"].as_str() == Some(rest.as_str()))
                .and_then(|i| i["key"].as_str())
                .ok_or_else(missing)?
                .to_owned(),
            None => rest.clone(),
        };
        if let Some(v) = obj.value.pointer(&format!(
            "/data/{}",
            key.replace('~', "~0").replace('/', "~1")
        )) {
            let s = v.as_str().unwrap_or_default();
            return if res == idx::SECRETS {
                engine.decode(s).map_err(|_| missing())
            } else {
                Ok(s.as_bytes().to_vec())
            };
        }
        Err(missing())
    };
    if volume.get("secret").is_some() {
        lookup(&volume["secret"], idx::SECRETS, "secretName")
    } else if volume.get("configMap").is_some() {
        lookup(&volume["configMap"], idx::CONFIGMAPS, "name")
    } else {
        Err(missing())
    }
}

/// Every secret and configmap volume must exist (unless optional), with the keys its items name.
fn check_volumes(shared: &Shared, pod: &Value) -> Result<(), String> {
    let ns = meta::namespace(pod);
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = v["name"].as_str().unwrap_or_default();
        let (source, res, field, what) = if let Some(s) = v.get("secret") {
            (s, idx::SECRETS, "secretName", "secret")
        } else if let Some(c) = v.get("configMap") {
            (c, idx::CONFIGMAPS, "name", "configmap")
        } else {
            continue;
        };
        let optional = source["optional"].as_bool() == Some(true);
        let name = source[field].as_str().unwrap_or_default();
        let Some(obj) = shared.store.get(res, ns, name) else {
            if optional {
                continue;
            }
            return Err(format!(
                "MountVolume.SetUp failed for volume \"{vname}\" : {what} \"{name}\" not found"
            ));
        };
        for item in source["items"].as_array().into_iter().flatten() {
            let key = item["key"].as_str().unwrap_or_default();
            let present = obj
                .value
                .pointer("/data")
                .and_then(|d| d.get(key))
                .is_some()
                || obj
                    .value
                    .pointer("/binaryData")
                    .and_then(|d| d.get(key))
                    .is_some();
            if !present && !optional {
                let kind = if res == idx::SECRETS {
                    "secret"
                } else {
                    "configmap"
                };
                let key_kind = if res == idx::SECRETS {
                    "secret key"
                } else {
                    "config key"
                };
                return Err(format!(
                    "MountVolume.SetUp failed for volume \"{vname}\" : {kind} references non-existent {key_kind}: {key}"
                ));
            }
        }
    }
    Ok(())
}

/// Environment references to configmaps and secrets: the container and the error.
fn check_config_refs(shared: &Shared, pod: &Value) -> Result<(), (String, String)> {
    let ns = meta::namespace(pod);
    for c in containers_of(pod, "containers")
        .iter()
        .chain(containers_of(pod, "initContainers").iter())
    {
        let cname = c["name"].as_str().unwrap_or_default().to_owned();
        for e in c["env"].as_array().into_iter().flatten() {
            for (field, res, what, kind) in [
                ("configMapKeyRef", idx::CONFIGMAPS, "configmap", "ConfigMap"),
                ("secretKeyRef", idx::SECRETS, "secret", "Secret"),
            ] {
                let Some(r) = e.pointer(&format!("/valueFrom/{field}")) else {
                    continue;
                };
                if r["optional"].as_bool() == Some(true) {
                    continue;
                }
                let name = r["name"].as_str().unwrap_or_default();
                let key = r["key"].as_str().unwrap_or_default();
                match shared.store.get(res, ns, name) {
                    None => return Err((cname, format!("{what} \"{name}\" not found"))),
                    Some(obj)
                        if obj
                            .value
                            .pointer("/data")
                            .and_then(|d| d.get(key))
                            .is_none() =>
                    {
                        return Err((
                            cname,
                            format!("couldn't find key {key} in {kind} {ns}/{name}"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            for (field, res, what) in [
                ("configMapRef", idx::CONFIGMAPS, "configmap"),
                ("secretRef", idx::SECRETS, "secret"),
            ] {
                let Some(r) = e.get(field) else { continue };
                let name = r["name"].as_str().unwrap_or_default();
                if r["optional"].as_bool() != Some(true)
                    && shared.store.get(res, ns, name).is_none()
                {
                    return Err((cname, format!("{what} \"{name}\" not found")));
                }
            }
        }
    }
    Ok(())
}

fn normalize(image: &str) -> String {
    let image = image.strip_prefix("docker.io/").unwrap_or(image);
    let image = image.strip_prefix("library/").unwrap_or(image);
    if image
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':') || last.contains('@'))
    {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// Whether the image can be pulled, per the configured policy; the error says why not.
async fn image_pulls(shared: &Shared, image: &str) -> Result<(), String> {
    let images = &shared.cfg.images;
    if let Some(registry) = &images.registry {
        let host = registry
            .split("://")
            .nth(1)
            .unwrap_or(registry)
            .trim_end_matches('/');
        if let Some(path) = image.strip_prefix(&format!("{host}/")) {
            let (repo, reference) = match path.split_once('@') {
                Some((r, d)) => (r.to_owned(), d.to_owned()),
                None => match path.rsplit_once(':') {
                    Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
                    _ => (path.to_owned(), "latest".to_owned()),
                },
            };
            let url = format!(
                "{}/v2/{repo}/manifests/{reference}",
                registry.trim_end_matches('/')
            );
            let response = hollow::registry_client()
                .head(&url)
                .header(
                    "accept",
                    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json",
                )
                .send()
                .await
                .map_err(|e| format!("failed to resolve reference \"{image}\": {e}"))?;
            return match response.status().as_u16() {
                200 => Ok(()),
                404 => Err(format!(
                    "failed to resolve reference \"{image}\": {image}: not found"
                )),
                401 | 403 => Err(format!(
                    "failed to resolve reference \"{image}\": pull access denied, repository does not exist or may require authorization"
                )),
                code => Err(format!(
                    "failed to resolve reference \"{image}\": unexpected status from HEAD request: {code}"
                )),
            };
        }
    }
    match &images.known {
        Some(known) if !known.iter().any(|k| normalize(k) == normalize(image)) => Err(format!(
            "failed to resolve reference \"{image}\": {image}: not found"
        )),
        _ => Ok(()),
    }
}
