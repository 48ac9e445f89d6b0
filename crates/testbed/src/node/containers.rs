//! The pod's containers: the sandbox, images, create, start, observe and restart.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions};
use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;

use super::engine::{is_docker_not_found, remove_container};
use super::environment::expand;
use super::runtime::now;
use super::sync::{Backoff, Ctr, PodWorker};
use super::volumes::relative;
use super::{LABEL, PAUSE_IMAGE, POD_UID_LABEL};

impl Ctr {
    /// Back off (from `first`, doubling up to `max`), waiting with `reason` and `message`.
    fn back_off(&mut self, first: Duration, max: Duration, reason: &str, message: String) {
        self.backoff.fail(first, max);
        self.state = json!({"waiting": {"reason": reason, "message": message}});
    }
}

impl PodWorker {
    /// Advance container `i`: start it when due, observe its exit, restart it.
    pub(super) async fn drive(&mut self, i: usize, policy: &str) -> Result<()> {
        let (first, max) = (self.shared.config.backoff, self.shared.config.max_backoff);
        let docker = self.shared.docker.clone();
        let Some(id) = self.ctrs[i].id.clone() else {
            if self.ctrs[i].done || self.ctrs[i].backoff.waiting() {
                let c = &mut self.ctrs[i];
                if c.state["waiting"]["reason"] == "ErrImagePull" {
                    c.state["waiting"]["reason"] = json!("ImagePullBackOff");
                }
                return Ok(());
            }
            return self.start_container(i).await;
        };
        let inspect = match docker.inspect_container(&id, None).await {
            Ok(i) => i,
            Err(e) if is_docker_not_found(&e) => {
                // Removed behind our back: count it as a failure and start anew.
                let c = &mut self.ctrs[i];
                c.id = None;
                c.exit_code = Some(137);
                c.backoff.fail(first, max);
                return Ok(());
            }
            Err(e) => return Err(e).context("inspecting a container"),
        };
        let state = inspect.state.unwrap_or_default();
        if state.running == Some(true) {
            let c = &mut self.ctrs[i];
            c.state = json!({"running": {"startedAt": state.started_at.unwrap_or_else(now)}});
            c.ready = !c.init;
            return Ok(());
        }
        let code = state.exit_code.unwrap_or(-1);
        let message = self.termination_message(i);
        let c = &mut self.ctrs[i];
        let reason = if state.oom_killed == Some(true) {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let mut terminated = json!({
            "exitCode": code,
            "reason": reason,
            "startedAt": state.started_at.clone().unwrap_or_else(now),
            "finishedAt": state.finished_at.clone().unwrap_or_else(now),
            "containerID": format!("docker://{id}"),
        });
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        c.ready = false;
        c.exit_code = Some(code);
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => !c.init || code != 0,
        };
        if c.init && code == 0 {
            c.done = true;
            c.state = json!({ "terminated": terminated });
            return Ok(());
        }
        if !restart {
            c.done = true;
            c.state = json!({ "terminated": terminated });
            return Ok(());
        }
        // Kubelet resets the back-off of a container that ran for 10 minutes.
        let ran_long = state
            .started_at
            .as_deref()
            .and_then(|s| s.parse::<Timestamp>().ok())
            .is_some_and(|t| Timestamp::now().duration_since(t).as_secs() > 600);
        if ran_long {
            c.backoff = Backoff::new();
        }
        c.backoff.fail(first, max);
        c.last = json!({ "terminated": terminated });
        c.state = json!({"waiting": {
            "reason": "CrashLoopBackOff",
            "message": format!("back-off restarting failed container {} in pod {}", c.spec.name, self.pod.name_any()),
        }});
        c.id = None;
        remove_container(&docker, &id).await?;
        c.restarts += 1;
        Ok(())
    }

    /// What the current attempt of container `i` wrote to its termination message file.
    pub(super) fn termination_message(&self, i: usize) -> String {
        let c = &self.ctrs[i];
        let file = self
            .dir
            .join("termination")
            .join(format!("{}-{}", c.spec.name, c.restarts));
        let mut text = std::fs::read_to_string(file).unwrap_or_default();
        if text.len() > 4096 {
            let mut end = 4096;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }

    pub(super) async fn start_container(&mut self, i: usize) -> Result<()> {
        let (first, max) = (self.shared.config.backoff, self.shared.config.max_backoff);
        let docker = self.shared.docker.clone();
        let spec = self.ctrs[i].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        if !self.ctrs[i].pulled {
            if let Err(e) = self.ensure_image(&spec).await {
                let reason = if spec.image_pull_policy.as_deref() == Some("Never") {
                    "ErrImageNeverPull"
                } else {
                    "ErrImagePull"
                };
                self.ctrs[i].back_off(first, max, reason, format!("{e:#}"));
                return Err(e.context(format!("image {image} of container {}", spec.name)));
            }
            self.ctrs[i].pulled = true;
        }
        let body = match self.container_body(i).await {
            Ok(body) => body,
            Err(e) => {
                self.ctrs[i].back_off(
                    first.min(Duration::from_secs(2)),
                    max,
                    "CreateContainerConfigError",
                    format!("{e:#}"),
                );
                return Err(e.context(format!("configuring container {}", spec.name)));
            }
        };
        let name = format!(
            "k8s_{}_{}_{}_{}_{}_{}",
            spec.name,
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.uid,
            self.ctrs[i].restarts,
            self.shared.id
        );
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await;
        let id = match created {
            Ok(r) => r.id,
            Err(e) => {
                // A leftover of an attempt whose removal failed: remove it, retry next tick.
                let _ = remove_container(&docker, &name).await;
                self.ctrs[i].back_off(
                    first.min(Duration::from_secs(2)),
                    max,
                    "CreateContainerError",
                    e.to_string(),
                );
                return Err(e).with_context(|| format!("creating container {}", spec.name));
            }
        };
        if let Ok(inspect) = docker.inspect_container(&id, None).await {
            self.ctrs[i].image_id = inspect
                .image
                .map(|i| format!("docker://{i}"))
                .unwrap_or_default();
        }
        self.ctrs[i].id = Some(id.clone());
        if let Err(e) = docker.start_container(&id, None).await {
            // Observed as a failed attempt on the next inspect (exit code 128 and the message).
            let c = &mut self.ctrs[i];
            c.state = json!({"waiting": {"reason": "RunContainerError", "message": e.to_string()}});
            return Err(e).with_context(|| format!("starting container {}", spec.name));
        }
        self.shared.log.line(format!(
            "pod {}: started container {} ({})",
            self.label(),
            spec.name,
            &id[..12.min(id.len())]
        ));
        Ok(())
    }

    pub(super) async fn ensure_image(&self, spec: &Container) -> Result<()> {
        let image = spec
            .image
            .clone()
            .ok_or_else(|| anyhow!("the container has no image"))?;
        let docker = &self.shared.docker;
        let policy = spec.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present = docker.inspect_image(&image).await.is_ok();
        match policy {
            "Never" if present => return Ok(()),
            "Never" => bail!("image {image} is not present and the pull policy is Never"),
            "IfNotPresent" if present => return Ok(()),
            _ => {}
        }
        let last = image.rsplit('/').next().unwrap_or(&image);
        let reference = if image.contains('@') || last.contains(':') {
            image.clone()
        } else {
            format!("{image}:latest")
        };
        self.shared.log.line(format!("pulling {reference}"));
        docker
            .create_image(
                Some(CreateImageOptions {
                    from_image: Some(reference.clone()),
                    ..Default::default()
                }),
                None,
                None,
            )
            .try_collect::<Vec<_>>()
            .await
            .with_context(|| format!("pulling {reference}"))?;
        Ok(())
    }

    pub(super) async fn start_sandbox(&mut self) -> Result<(String, String)> {
        let docker = &self.shared.docker;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let mut hostname = spec.hostname.unwrap_or_else(|| self.pod.name_any());
        hostname.truncate(63);
        let name = format!(
            "k8s_POD_{}_{}_{}_{}",
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.uid,
            self.shared.id
        );
        let _ = remove_container(docker, &name).await;
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(PAUSE_IMAGE.into()),
                    entrypoint: Some(vec!["/pause".into()]),
                    hostname: Some(hostname),
                    labels: Some(self.labels("POD")),
                    host_config: Some(HostConfig {
                        network_mode: Some(self.shared.network.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .context("creating the sandbox container")?;
        docker
            .start_container(&created.id, None)
            .await
            .context("starting the sandbox container")?;
        let inspect = docker
            .inspect_container(&created.id, None)
            .await
            .context("inspecting the sandbox container")?;
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&self.shared.network).cloned())
            .and_then(|e| e.ip_address)
            .unwrap_or_default();
        self.shared
            .log
            .line(format!("pod {}: sandbox up, IP {ip}", self.label()));
        Ok((created.id, ip))
    }

    pub(super) fn labels(&self, container: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL.to_owned(), self.shared.id.clone()),
            (POD_UID_LABEL.to_owned(), self.uid.clone()),
            ("io.kubernetes.pod.name".to_owned(), self.pod.name_any()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                self.pod.namespace().unwrap_or_default(),
            ),
            (
                "io.kubernetes.container.name".to_owned(),
                container.to_owned(),
            ),
        ])
    }

    /// The engine's configuration of container `i`.
    pub(super) async fn container_body(&self, i: usize) -> Result<ContainerCreateBody> {
        let spec = &self.ctrs[i].spec;
        let env = self.environment(spec).await?;
        let lookup: HashMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let expand_all = |list: &Option<Vec<String>>| {
            list.as_ref()
                .map(|l| l.iter().map(|s| expand(s, &lookup)).collect())
        };
        let volumes = self
            .volumes
            .as_ref()
            .ok_or_else(|| anyhow!("volumes are not ready"))?;
        let mut binds = Vec::new();
        for mount in spec.volume_mounts.iter().flatten() {
            let (dir, read_only) = volumes
                .get(&mount.name)
                .ok_or_else(|| anyhow!("volume mount {} names no volume of the pod", mount.name))?;
            let mut source = dir.clone();
            if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(relative(sub)?);
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .with_context(|| format!("creating subPath {}", source.display()))?;
                }
            }
            let ro = *read_only || mount.read_only == Some(true);
            binds.push(format!(
                "{}:{}:{}",
                source.display(),
                mount.mount_path,
                if ro { "ro" } else { "rw" }
            ));
        }
        let message_path = spec
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let termination = self.dir.join("termination");
        std::fs::create_dir_all(&termination).context("creating the termination message dir")?;
        // One file per attempt, read when the attempt ends.
        let message_file = termination.join(format!("{}-{}", spec.name, self.ctrs[i].restarts));
        std::fs::write(&message_file, "").context("creating the termination message file")?;
        if !message_path.is_empty() {
            binds.push(format!("{}:{message_path}:rw", message_file.display()));
        }
        let security = spec.security_context.clone().unwrap_or_default();
        let pod_security = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let user = security.run_as_user.or(pod_security.run_as_user);
        let group = security.run_as_group.or(pod_security.run_as_group);
        let user = match (user, group) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(g)) => Some(format!("0:{g}")),
            (None, None) => None,
        };
        let (sandbox, _) = self
            .sandbox
            .as_ref()
            .ok_or_else(|| anyhow!("the sandbox is not running"))?;
        Ok(ContainerCreateBody {
            image: spec.image.clone(),
            entrypoint: expand_all(&spec.command),
            cmd: expand_all(&spec.args),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            user,
            tty: spec.tty,
            open_stdin: spec.stdin,
            labels: Some(self.labels(&spec.name)),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(format!("container:{sandbox}")),
                privileged: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}
