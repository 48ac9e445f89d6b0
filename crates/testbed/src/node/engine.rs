//! Removing the agent's containers from the Docker engine.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};

use super::{LABEL, POD_UID_LABEL};

pub(super) async fn remove_labelled(docker: &Docker, id: &str) -> Result<()> {
    remove_by_label(docker, &format!("{LABEL}={id}"), "the agent's containers").await
}

/// Remove every container carrying `label` (`key=value`).
pub(super) async fn remove_by_label(docker: &Docker, label: &str, what: &str) -> Result<()> {
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![label.to_owned()],
            )])),
            ..Default::default()
        }))
        .await
        .with_context(|| format!("listing {what}"))?;
    for c in containers {
        if let Some(cid) = c.id {
            remove_container(docker, &cid).await?;
        }
    }
    Ok(())
}

pub(super) async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_docker_not_found(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing container {id}")),
    }
}

pub(super) fn is_docker_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

pub(super) async fn remove_pod_containers(docker: &Docker, uid: &str) -> Result<()> {
    remove_by_label(
        docker,
        &format!("{POD_UID_LABEL}={uid}"),
        "the pod's containers",
    )
    .await
}
