//! Image pulls, per the configured policy: every image, a known list, or a
//! real registry's `/v2/` API.

use super::super::hollow;
use crate::Shared;

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
pub(super) async fn image_pulls(shared: &Shared, image: &str) -> Result<(), String> {
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
