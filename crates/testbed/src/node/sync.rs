//! The pod sync loop: a watch of the pods bound to a node, one worker per pod.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bollard::query_parameters::StopContainerOptions;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::TICK;
use super::engine::remove_pod_containers;
use super::runtime::{Shared, is_api, now, stopped};

/// Watch the pods bound to `node`; one worker per pod.
pub(super) async fn watch_pods(
    shared: Arc<Shared>,
    client: Client,
    node: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            () = stopped(&mut shutdown) => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            event = events.next() => event,
        };
        let apply = |pod: Pod,
                     workers: &mut HashMap<String, watch::Sender<Pod>>,
                     running: &mut tokio::task::JoinSet<()>| {
            let Some(uid) = pod.uid() else { return };
            if let Some(tx) = workers.get(&uid) {
                let _ = tx.send(pod);
                return;
            }
            let (tx, rx) = watch::channel(pod);
            workers.insert(uid.clone(), tx);
            running.spawn(pod_worker(
                shared.clone(),
                client.clone(),
                node.clone(),
                uid,
                rx,
                shutdown.clone(),
            ));
        };
        match event {
            None => break,
            Some(Err(e)) => shared.log.line(format!("node {node}: watching pods: {e}")),
            Some(Ok(Event::Apply(pod))) => apply(pod, &mut workers, &mut running),
            Some(Ok(Event::Delete(pod))) => {
                if let Some(uid) = pod.uid() {
                    workers.remove(&uid);
                }
            }
            Some(Ok(Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(Event::InitApply(pod))) => {
                if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.uid()) {
                    seen.insert(uid);
                }
                apply(pod, &mut workers, &mut running);
            }
            Some(Ok(Event::InitDone)) => {
                if let Some(seen) = listed.take() {
                    workers.retain(|uid, _| seen.contains(uid));
                }
            }
        }
    }
    // Workers see the shutdown too; wait for them before the agent sweeps.
    while running.join_next().await.is_some() {}
}

/// The back-off of one container's restarts or image pulls.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) delay: Option<Duration>,
    pub(super) until: Option<Instant>,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            delay: None,
            until: None,
        }
    }

    pub(super) fn waiting(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }

    /// Start (or lengthen) the back-off.
    pub(super) fn fail(&mut self, first: Duration, max: Duration) {
        let delay = self.delay.map_or(first, |d| (d * 2).min(max));
        self.delay = Some(delay);
        self.until = Some(Instant::now() + delay);
    }
}

/// One container of the pod as the worker tracks it.
#[derive(Debug)]
pub(super) struct Ctr {
    pub(super) spec: Container,
    pub(super) init: bool,
    /// The engine's container of the current attempt.
    pub(super) id: Option<String>,
    pub(super) image_id: String,
    pub(super) restarts: i32,
    /// The pod status `state` and `lastState`.
    pub(super) state: Value,
    pub(super) last: Value,
    pub(super) ready: bool,
    /// Terminated and not to be restarted (or an init container that completed).
    pub(super) done: bool,
    pub(super) exit_code: Option<i64>,
    pub(super) backoff: Backoff,
    pub(super) pulled: bool,
}

/// Run one pod until it is deleted or the agent stops.
pub(super) async fn pod_worker(
    shared: Arc<Shared>,
    client: Client,
    node: String,
    uid: String,
    mut updates: watch::Receiver<Pod>,
    mut shutdown: watch::Receiver<bool>,
) {
    let pod = updates.borrow_and_update().clone();
    let mut worker = PodWorker::new(shared.clone(), client, node, uid, pod);
    let label = worker.label();
    shared.log.line(format!("pod {label}: started"));
    loop {
        if worker.pod.metadata.deletion_timestamp.is_some() {
            worker.finalise(true).await;
            return;
        }
        if let Err(e) = worker.step().await {
            shared.log.line(format!("pod {label}: {e:#}"));
        }
        if let Err(e) = worker.report().await {
            shared.log.line(format!("pod {label}: {e:#}"));
        }
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => return,
            changed = updates.changed() => match changed {
                Ok(()) => worker.pod = updates.borrow_and_update().clone(),
                // The pod is gone from the API (deleted with grace period 0 elsewhere).
                Err(_) => {
                    worker.finalise(false).await;
                    return;
                }
            },
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

pub(super) struct PodWorker {
    pub(super) shared: Arc<Shared>,
    pub(super) client: Client,
    pub(super) node: String,
    pub(super) uid: String,
    pub(super) pod: Pod,
    pub(super) dir: PathBuf,
    pub(super) volumes: Option<HashMap<String, (PathBuf, bool)>>,
    pub(super) volume_error: Option<String>,
    pub(super) volume_backoff: Backoff,
    pub(super) sandbox: Option<(String, String)>,
    pub(super) ctrs: Vec<Ctr>,
    pub(super) start_time: String,
    pub(super) transitions: HashMap<&'static str, (bool, String)>,
    pub(super) reported: Option<Value>,
}

impl PodWorker {
    pub(super) fn new(
        shared: Arc<Shared>,
        client: Client,
        node: String,
        uid: String,
        pod: Pod,
    ) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let ctrs = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c, true))
            .chain(spec.containers.into_iter().map(|c| (c, false)))
            .map(|(spec, init)| Ctr {
                spec,
                init,
                id: None,
                image_id: String::new(),
                restarts: 0,
                state: json!({"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}}),
                last: json!({}),
                ready: false,
                done: false,
                exit_code: None,
                backoff: Backoff::new(),
                pulled: false,
            })
            .collect::<Vec<_>>();
        let dir = shared.dir.join("pods").join(&uid);
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(now, |t| t.0.to_string());
        Self {
            shared,
            client,
            node,
            uid,
            pod,
            dir,
            volumes: None,
            volume_error: None,
            volume_backoff: Backoff::new(),
            sandbox: None,
            ctrs,
            start_time,
            transitions: HashMap::new(),
            reported: None,
        }
    }

    pub(super) fn label(&self) -> String {
        format!(
            "{}/{}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        )
    }

    pub(super) fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// One pass: volumes, sandbox, the next init container or every container.
    pub(super) async fn step(&mut self) -> Result<()> {
        if self.terminal() {
            return Ok(());
        }
        if self.volumes.is_none() {
            if self.volume_backoff.waiting() {
                return Ok(());
            }
            match self.prepare_volumes().await {
                Ok(volumes) => {
                    self.volumes = Some(volumes);
                    self.volume_error = None;
                }
                Err(e) => {
                    let backoff = self.shared.config.backoff.min(Duration::from_secs(2));
                    self.volume_backoff
                        .fail(backoff, self.shared.config.max_backoff);
                    self.volume_error = Some(format!("{e:#}"));
                    return Err(e.context("preparing volumes"));
                }
            }
        }
        if self.sandbox.is_none() {
            self.sandbox = Some(self.start_sandbox().await.context("starting the sandbox")?);
        }
        let policy = self.restart_policy();
        if let Some(i) = self.ctrs.iter().position(|c| c.init && !c.done) {
            return self.drive(i, &policy).await;
        }
        for i in 0..self.ctrs.len() {
            if !self.ctrs[i].init
                && let Err(e) = self.drive(i, &policy).await
            {
                self.shared.log.line(format!("pod {}: {e:#}", self.label()));
            }
        }
        Ok(())
    }

    /// Stop and remove the pod's containers and directory; with `delete`, then
    /// delete the pod with grace period 0 (it is being deleted gracefully).
    pub(super) async fn finalise(&mut self, delete: bool) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(0)
            .clamp(0, 300);
        let docker = self.shared.docker.clone();
        let ids: Vec<String> = self.ctrs.iter().filter_map(|c| c.id.clone()).collect();
        let stops = ids.iter().map(|id| {
            docker.stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(i32::try_from(grace).unwrap_or(30)),
                    ..Default::default()
                }),
            )
        });
        let _ = futures_util::future::join_all(stops).await;
        if let Err(e) = remove_pod_containers(&docker, &self.uid).await {
            self.shared.log.line(format!("pod {}: {e:#}", self.label()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.shared
            .log
            .line(format!("pod {}: containers removed", self.label()));
        if !delete {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        let mut params = DeleteParams::default().grace_period(0);
        params.preconditions = Some(Preconditions {
            uid: Some(self.uid.clone()),
            resource_version: None,
        });
        // A few attempts: nothing else would delete the pod once this worker is gone.
        for attempt in 1..=5 {
            match api.delete(&self.pod.name_any(), &params).await {
                Ok(_) => {
                    self.shared
                        .log
                        .line(format!("pod {}: deleted", self.label()));
                    return;
                }
                // Gone already, or another pod of that name (the precondition failed).
                Err(e) if is_api(&e, 404) || is_api(&e, 409) => return,
                Err(e) => {
                    self.shared.log.line(format!(
                        "pod {}: deleting it (attempt {attempt}): {e}",
                        self.label()
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
