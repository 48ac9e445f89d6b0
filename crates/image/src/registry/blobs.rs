//! Blobs and manifests through the registry API (distribution spec): existence
//! checks, cross-repository mounts, chunked uploads streamed from a file or from
//! another registry, and manifests read and written. The OCI builder pushes with
//! these; the engine builder's multi-platform index is written with them too.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{MANIFEST_TYPES, Registry, error_chain};
use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events};

/// Media types of the documents this crate reads and writes.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

    /// Whether `media_type` is a list of per-platform manifests.
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_LIST
    }
}

/// Bytes per PATCH of a chunked upload.
const UPLOAD_CHUNK: u64 = 32 * 1024 * 1024;
/// Time one chunk may take: a 32 MiB chunk at 0.5 MB/s.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(120);

/// A manifest (or index) as the registry served it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub bytes: Bytes,
    /// `sha256:…` of `bytes`.
    pub digest: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::context::hex(&Sha256::digest(bytes)))
}

impl Registry {
    fn fail(&self, doing: String) -> impl Fn(String) -> Error + '_ {
        move |reason| Error::Registry {
            registry: self.host.clone(),
            doing: doing.clone(),
            reason,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An upload's `Location`, absolute (a relative one is read against the URL
    /// that answered, as RFC 7231 says).
    fn location(&self, response: &reqwest::Response) -> Result<String, String> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("the registry answered without a Location")?;
        response
            .url()
            .join(location)
            .map(String::from)
            .map_err(|e| format!("the registry answered with the Location `{location}`: {e}"))
    }

    /// Whether `repository` already holds the blob.
    pub async fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool> {
        let fail = self.fail(format!("checking for {digest} in {repository}"));
        let response = self
            .send(|| {
                self.client
                    .head(self.url(&format!("/v2/{repository}/blobs/{digest}")))
            })
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(fail(format!("HTTP {s}"))),
        }
    }

    /// Mount `digest` from `from` (same registry) into `repository`: `true` when the
    /// registry did; `false` when it would not (the upload it opened instead is cancelled).
    pub async fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<bool> {
        let fail = self.fail(format!("mounting {digest} from {from} into {repository}"));
        let response = self
            .send(|| {
                self.client
                    .post(self.url(&format!("/v2/{repository}/blobs/uploads/")))
                    .query(&[("mount", digest), ("from", from)])
                    .header(CONTENT_LENGTH, 0)
            })
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(location) = self.location(&response) {
                    let _ = self.send(|| self.client.delete(&location)).await;
                }
                Ok(false)
            }
            // Token auth may not grant a read of `from`: upload instead.
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(false),
            s => Err(fail(format!("HTTP {s}"))),
        }
    }

    /// Upload the blob `digest` (`size` bytes) from `file` in chunks.
    pub async fn upload_file(
        &self,
        repository: &str,
        digest: &str,
        file: &Path,
        events: &Events,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(Error::io("reading", file))?
            .len();
        let mut offset = 0u64;
        let mut location = self.start_upload(repository, digest).await?;
        let fail = self.fail(format!("uploading {digest} to {repository}"));
        // An empty blob is sent by the final PUT alone (a PATCH of no bytes has no range).
        while offset < size {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let len = UPLOAD_CHUNK.min(size - offset);
            // A body made anew for each attempt (a refused token means sending it again).
            let body = || file_chunk(file, offset, len);
            location = self
                .patch(&location, offset, len, body)
                .await
                .map_err(&fail)?;
            offset += len;
            events.emit(Event::PushLayer {
                layer: short(digest),
                status: "Pushing".into(),
                current: offset,
                total: size,
            });
        }
        self.finish_upload(&location, digest, repository).await
    }

    /// Copy the blob `digest` from `source`'s `from` repository into `repository`,
    /// streamed chunk by chunk (never whole in memory).
    pub async fn copy_blob(
        &self,
        repository: &str,
        digest: &str,
        source: &Registry,
        from: &str,
        events: &Events,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let read_fail = source.fail(format!("reading {digest} from {from}"));
        let response = source
            .send(|| {
                source
                    .client
                    .get(source.url(&format!("/v2/{from}/blobs/{digest}")))
                    .timeout(Duration::from_secs(3600))
            })
            .await
            .map_err(|e| read_fail(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(read_fail(format!("HTTP {}", response.status())));
        }
        let total = response.content_length().unwrap_or(0);
        let mut stream = response.bytes_stream();
        let mut location = self.start_upload(repository, digest).await?;
        let fail = self.fail(format!("uploading {digest} to {repository}"));
        let (mut offset, mut pending) = (0u64, Vec::with_capacity(1 << 20));
        let mut hasher = Sha256::new();
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let next = stream.next().await;
            if let Some(piece) = &next {
                let piece = piece.as_ref().map_err(|e| read_fail(error_chain(e)))?;
                hasher.update(piece);
                pending.extend_from_slice(piece);
            }
            if pending.len() as u64 >= UPLOAD_CHUNK / 4 || (next.is_none() && !pending.is_empty()) {
                let len = pending.len() as u64;
                let chunk = Bytes::from(std::mem::take(&mut pending));
                location = self
                    .patch(&location, offset, len, || {
                        reqwest::Body::from(chunk.clone())
                    })
                    .await
                    .map_err(&fail)?;
                offset += len;
                events.emit(Event::PushLayer {
                    layer: short(digest),
                    status: "Copying".into(),
                    current: offset,
                    total,
                });
            }
            if next.is_none() {
                break;
            }
        }
        let got = format!("sha256:{}", crate::context::hex(&hasher.finalize()));
        if got != digest {
            return Err(read_fail(format!("the blob read has digest {got}")));
        }
        self.finish_upload(&location, digest, repository).await
    }

    async fn start_upload(&self, repository: &str, digest: &str) -> Result<String> {
        let fail = self.fail(format!("starting an upload of {digest} to {repository}"));
        let response = self
            .send(|| {
                self.client
                    .post(self.url(&format!("/v2/{repository}/blobs/uploads/")))
                    .header(CONTENT_LENGTH, 0)
            })
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        match response.status() {
            StatusCode::ACCEPTED => self.location(&response).map_err(&fail),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(fail(format!(
                "HTTP {}: the credentials may not push to {repository}",
                response.status()
            ))),
            s => Err(fail(format!("HTTP {s}"))),
        }
    }

    async fn patch(
        &self,
        location: &str,
        offset: u64,
        len: u64,
        body: impl Fn() -> reqwest::Body,
    ) -> Result<String, String> {
        let end = (offset + len).saturating_sub(1);
        let response = self
            .send(|| {
                self.client
                    .patch(location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{offset}-{end}"))
                    .header(CONTENT_LENGTH, len)
                    .timeout(CHUNK_TIMEOUT)
                    .body(body())
            })
            .await
            .map_err(|e| error_chain(&e))?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(format!(
                "HTTP {} for bytes {offset}-{end}",
                response.status()
            ));
        }
        self.location(&response)
    }

    async fn finish_upload(&self, location: &str, digest: &str, repository: &str) -> Result<()> {
        let fail = self.fail(format!("finishing the upload of {digest} to {repository}"));
        let separator = if location.contains('?') { '&' } else { '?' };
        let response = self
            .send(|| {
                self.client
                    .put(format!("{location}{separator}digest={digest}"))
                    .header(CONTENT_LENGTH, 0)
            })
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            s => Err(fail(format!(
                "HTTP {s}: {}",
                response.text().await.unwrap_or_default().trim()
            ))),
        }
    }

    /// Store `bytes` as the manifest `reference` (a tag or digest) of `repository`;
    /// return its digest, checked against what the registry says it stored.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<String> {
        let digest = sha256(&bytes);
        let body = Bytes::from(bytes);
        let fail = self.fail(format!("storing the manifest {repository}:{reference}"));
        let response = self
            .send(|| {
                self.client
                    .put(self.url(&format!("/v2/{repository}/manifests/{reference}")))
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        if response.status() != StatusCode::CREATED {
            return Err(fail(format!(
                "HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default().trim()
            )));
        }
        match response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(served) if served != digest => Err(fail(format!(
                "it stored {served}, but the manifest sent has digest {digest}"
            ))),
            _ => Ok(digest),
        }
    }

    /// The manifest `reference` of `repository`, `None` when there is none.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>> {
        let fail = self.fail(format!("reading the manifest {repository}:{reference}"));
        let response = self
            .send(|| {
                self.client
                    .get(self.url(&format!("/v2/{repository}/manifests/{reference}")))
                    .header(ACCEPT, MANIFEST_TYPES)
            })
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {}
            s => return Err(fail(format!("HTTP {s}"))),
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response.bytes().await.map_err(|e| fail(error_chain(&e)))?;
        let digest = sha256(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(fail(format!("it served a manifest with digest {digest}")));
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
                .unwrap_or_default()
        } else {
            media_type
        };
        Ok(Some(Manifest {
            media_type,
            bytes,
            digest,
        }))
    }

    /// A small blob (an image config) read whole, its digest checked.
    pub async fn get_blob(&self, repository: &str, digest: &str) -> Result<Bytes> {
        let fail = self.fail(format!("reading {digest} from {repository}"));
        let response = self
            .send(|| {
                self.client
                    .get(self.url(&format!("/v2/{repository}/blobs/{digest}")))
            })
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        let bytes = response.bytes().await.map_err(|e| fail(error_chain(&e)))?;
        let got = sha256(&bytes);
        if got != digest {
            return Err(fail(format!("it served a blob with digest {got}")));
        }
        Ok(bytes)
    }
}

/// `len` bytes of `file` from `offset`, streamed (a failure to read ends the body
/// with that error, and the PATCH with it).
fn file_chunk(file: &Path, offset: u64, len: u64) -> reqwest::Body {
    use std::io::Seek;
    let opened = std::fs::File::open(file).and_then(|mut f| {
        f.seek(std::io::SeekFrom::Start(offset))?;
        Ok(f)
    });
    match opened {
        Ok(f) => {
            let chunk = tokio::fs::File::from_std(f).take(len);
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(chunk, 1 << 20))
        }
        Err(e) => {
            reqwest::Body::wrap_stream(futures_util::stream::once(
                async move { Err::<Bytes, _>(e) },
            ))
        }
    }
}

/// `sha256:0123456789ab…` → `0123456789ab`, as the engine names layers.
pub(crate) fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}
