//! The image's build context: the checkout's `cluster/images/kubemark/` folder
//! (its Dockerfile's `FROM` optionally rewritten) plus the freshly built binary,
//! streamed to the engine as a tar in bounded chunks. Nothing is copied into the
//! checkout, and the whole tar is never in memory.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::event::{CancellationToken, Event, Events};

mod dockerfile;

use dockerfile::label_instruction;
pub use dockerfile::{final_from, rewrite_from};

/// Where the kubemark Dockerfile lives in a kubernetes checkout.
pub const CONTEXT_DIR: &str = "cluster/images/kubemark";
/// Size of the chunks streamed to the engine.
const CHUNK: usize = 256 * 1024;

/// One regular file or symlink of the context folder.
#[derive(Debug, Clone)]
struct Entry {
    rel: String,
    abs: PathBuf,
    mode: u32,
    size: u64,
    link: Option<PathBuf>,
}

/// The build context, described but not yet read in full.
#[derive(Debug, Clone)]
pub struct Context {
    pub dir: PathBuf,
    /// The Dockerfile as sent (with the `FROM` rewritten when asked).
    pub dockerfile: String,
    /// The final stage's base image as the Dockerfile names it.
    pub base: String,
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub binary_size: u64,
    /// sha256 over every entry's path, mode and content: equal digests, equal contexts.
    pub digest: String,
    entries: Vec<Entry>,
    /// A `LABEL` instruction appended to the Dockerfile as sent.
    label_line: String,
}

/// A file of the build context, as `COPY` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The path in the context, `/`-separated, relative.
    pub rel: String,
    pub kind: ItemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    File {
        path: PathBuf,
        mode: u32,
        size: u64,
    },
    Symlink(PathBuf),
    /// The Dockerfile as sent.
    Text(String),
}

impl Context {
    /// Every file of the context as the engine receives it (Dockerfile, the folder's
    /// other files, the built binary as `kubemark`), sorted by path.
    pub fn items(&self) -> Vec<Item> {
        let mut items = vec![Item {
            rel: "Dockerfile".into(),
            kind: ItemKind::Text(self.dockerfile_sent()),
        }];
        items.extend(self.entries.iter().map(|e| Item {
            rel: e.rel.clone(),
            kind: match &e.link {
                Some(target) => ItemKind::Symlink(target.clone()),
                None => ItemKind::File {
                    path: e.abs.clone(),
                    mode: e.mode,
                    size: e.size,
                },
            },
        }));
        items.push(Item {
            rel: "kubemark".into(),
            kind: ItemKind::File {
                path: self.binary.clone(),
                mode: 0o755,
                size: self.binary_size,
            },
        });
        items.sort_by(|a, b| a.rel.cmp(&b.rel));
        items
    }

    /// Read the context folder of `checkout`, rewrite the base image if asked, hash everything.
    pub fn prepare(checkout: &Path, binary: &Path, base_image: Option<&str>) -> Result<Self> {
        let dir = checkout.join(CONTEXT_DIR);
        let dockerfile_path = dir.join("Dockerfile");
        if !dockerfile_path.is_file() {
            return Err(Error::NoDockerfile { dir });
        }
        let original = std::fs::read_to_string(&dockerfile_path)
            .map_err(Error::io("reading", &dockerfile_path))?;
        // A byte-order mark, as some editors write: the engine reads past it.
        let original = original
            .strip_prefix('\u{feff}')
            .map(str::to_owned)
            .unwrap_or(original);
        let (dockerfile, base) = match base_image {
            Some(image) => rewrite_from(&original, image)?,
            None => {
                let base = final_from(&original).ok_or_else(|| Error::BuildFailed {
                    message: format!("{} has no FROM line", dockerfile_path.display()),
                    step: None,
                })?;
                (original.clone(), base)
            }
        };
        let mut entries = Vec::new();
        walk(&dir, &dir, &mut entries)?;
        entries.retain(|e| e.rel != "Dockerfile" && e.rel != "kubemark");
        entries.sort_by(|a, b| a.rel.cmp(&b.rel));

        let mut whole = Sha256::new();
        let mut add = |rel: &str, mode: u32, content_hash: &str| {
            whole.update(format!("{rel}\0{mode:o}\0{content_hash}\n"));
        };
        add(
            "Dockerfile",
            0o644,
            &hex(&Sha256::digest(dockerfile.as_bytes())),
        );
        for entry in &entries {
            let hash = match &entry.link {
                Some(target) => hex(&Sha256::digest(target.to_string_lossy().as_bytes())),
                None => sha256_file(&entry.abs)?,
            };
            add(&entry.rel, entry.mode, &hash);
        }
        let binary_sha256 = sha256_file(binary)?;
        let binary_size = binary
            .metadata()
            .map_err(Error::io("reading", binary))?
            .len();
        add("kubemark", 0o755, &binary_sha256);
        Ok(Self {
            dir,
            dockerfile,
            base,
            binary: binary.to_owned(),
            binary_sha256,
            binary_size,
            digest: format!("sha256:{}", hex(&whole.finalize())),
            entries,
            label_line: String::new(),
        })
    }

    /// Label the image through one `LABEL` instruction appended to the Dockerfile.
    /// (The engine's `labels` parameter adds one build step, and one layer commit,
    /// per label: eight labels made a build eight times slower.)
    pub fn set_labels<'a>(&mut self, labels: impl IntoIterator<Item = (&'a String, &'a String)>) {
        self.label_line = label_instruction(labels);
    }

    /// The Dockerfile as the engine receives it.
    pub fn dockerfile_sent(&self) -> String {
        let mut text = self.dockerfile.clone();
        if !self.label_line.is_empty() {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&self.label_line);
        }
        text
    }

    /// Write the context as a tar: Dockerfile, the folder's other files, `/kubemark`.
    pub fn write_tar(&self, out: impl Write) -> io::Result<()> {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        let header = |size: u64, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h
        };
        let dockerfile = self.dockerfile_sent();
        let mut h = header(dockerfile.len() as u64, 0o644);
        tar.append_data(&mut h, "Dockerfile", dockerfile.as_bytes())?;
        for entry in &self.entries {
            match &entry.link {
                Some(target) => {
                    let mut h = header(0, 0o777);
                    h.set_entry_type(tar::EntryType::Symlink);
                    tar.append_link(&mut h, &entry.rel, target)?;
                }
                None => {
                    let mut h = header(entry.size, entry.mode);
                    tar.append_data(&mut h, &entry.rel, std::fs::File::open(&entry.abs)?)?;
                }
            }
        }
        let file = std::fs::File::open(&self.binary)?;
        let size = file.metadata()?.len();
        let mut h = header(size, 0o755);
        tar.append_data(&mut h, "kubemark", file)?;
        tar.into_inner()?.flush()
    }

    /// Stream the tar in chunks of [`CHUNK`] bytes through a bounded channel:
    /// at most a few chunks are in memory at once, whatever the binary's size.
    pub fn stream(
        self: std::sync::Arc<Self>,
        events: Events,
        cancel: CancellationToken,
    ) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        tokio::task::spawn_blocking(move || {
            let mut writer = ChannelWriter {
                tx: tx.clone(),
                buf: BytesMut::with_capacity(CHUNK),
                sent: 0,
                last_event: Instant::now(),
                events,
                cancel,
            };
            let result = self.write_tar(&mut writer).and_then(|()| writer.finish());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    sent: u64,
    last_event: Instant,
    events: Events,
    cancel: CancellationToken,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(crate::oci::layer::cancelled());
        }
        let chunk = self.buf.split().freeze();
        self.sent += chunk.len() as u64;
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the build context",
            )
        })?;
        self.buf.reserve(CHUNK);
        if self.last_event.elapsed() >= Duration::from_millis(100) {
            self.last_event = Instant::now();
            self.events.emit(Event::ContextSent { bytes: self.sent });
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.events.emit(Event::ContextSent { bytes: self.sent });
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let read = std::fs::read_dir(dir).map_err(Error::io("reading", dir))?;
    for item in read {
        let item = item.map_err(Error::io("reading", dir))?;
        let path = item.path();
        let meta = std::fs::symlink_metadata(&path).map_err(Error::io("reading", &path))?;
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(Error::io("reading", &path))?;
            out.push(Entry {
                rel,
                abs: path,
                mode: 0o777,
                size: 0,
                link: Some(target),
            });
        } else if meta.is_file() {
            out.push(Entry {
                rel,
                abs: path,
                mode: meta.permissions().mode() & 0o7777,
                size: meta.len(),
                link: None,
            });
        }
    }
    Ok(())
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(Error::io("reading", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(Error::io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = "# Copyright\n\nFROM registry.k8s.io/build-image/go-runner:v2.3.1-go1.22.0-bookworm.0\n\nCOPY kubemark /kubemark\n";

    /// A checkout whose context folder holds `dockerfile`, and a built binary beside it:
    /// (the checkout, its context folder, the binary).
    fn checkout(dockerfile: &str, binary: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join(CONTEXT_DIR);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let bin = dir.path().join("bin");
        std::fs::write(&bin, binary).unwrap();
        (dir, ctx, bin)
    }

    #[test]
    fn labels_become_one_quoted_instruction() {
        let (dir, _, bin) = checkout("FROM scratch\nCOPY kubemark /kubemark", b"x");
        let mut c = Context::prepare(dir.path(), &bin, None).unwrap();
        let labels = std::collections::BTreeMap::from([
            ("a.b".to_owned(), "plain".to_owned()),
            ("c".to_owned(), "q\"uote $HOME \\".to_owned()),
        ]);
        c.set_labels(&labels);
        assert_eq!(
            c.dockerfile_sent(),
            "FROM scratch\nCOPY kubemark /kubemark\nLABEL \"a.b\"=\"plain\" \\\n      \"c\"=\"q\\\"uote \\$HOME \\\\\"\n"
        );
    }

    #[test]
    fn tar_holds_dockerfile_files_and_binary() {
        let (dir, ctx, bin) = checkout(UPSTREAM, &vec![7u8; 3 * CHUNK + 5]);
        std::fs::create_dir_all(ctx.join("sub")).unwrap();
        std::fs::write(ctx.join("sub/extra"), "x").unwrap();
        std::fs::write(ctx.join("kubemark"), "stale copy").unwrap();

        let c = Context::prepare(dir.path(), &bin, Some("scratch")).unwrap();
        assert_eq!(c.base, "scratch");
        let mut tar_bytes = Vec::new();
        c.write_tar(&mut tar_bytes).unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            if path == "kubemark" {
                assert_eq!(
                    content.len(),
                    3 * CHUNK + 5,
                    "the built binary, not the stale copy"
                );
                assert_eq!(entry.header().mode().unwrap(), 0o755);
            }
            if path == "Dockerfile" {
                assert!(String::from_utf8(content).unwrap().contains("FROM scratch"));
            }
            seen.push(path);
        }
        assert_eq!(seen, ["Dockerfile", "sub/extra", "kubemark"]);

        let same = Context::prepare(dir.path(), &bin, Some("scratch")).unwrap();
        assert_eq!(same.digest, c.digest);
        std::fs::write(&bin, vec![8u8; 10]).unwrap();
        let changed = Context::prepare(dir.path(), &bin, Some("scratch")).unwrap();
        assert_ne!(changed.digest, c.digest);
    }

    #[tokio::test]
    async fn a_cancel_while_streaming_ends_the_stream_with_an_error() {
        use futures_util::StreamExt;
        let binary = vec![3u8; 8 * CHUNK];
        let (dir, _, bin) = checkout("FROM scratch\nCOPY kubemark /kubemark\n", &binary);
        let c = std::sync::Arc::new(Context::prepare(dir.path(), &bin, None).unwrap());
        let cancel = CancellationToken::new();
        let mut stream = std::pin::pin!(c.stream(Events::discard(), cancel.clone()));
        assert!(stream.next().await.unwrap().is_ok());
        cancel.cancel();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut failed = false;
            while let Some(chunk) = stream.next().await {
                failed |= chunk.is_err();
            }
            failed
        })
        .await
        .expect("the stream still runs 10 s after the cancel (a write retried forever)");
        assert!(ended, "the stream ends with the cancellation's error");
    }

    #[tokio::test]
    async fn stream_yields_the_same_bytes_in_bounded_chunks() {
        use futures_util::StreamExt;
        let binary: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let (dir, _, bin) = checkout("FROM scratch\nCOPY kubemark /kubemark\n", &binary);
        let c = std::sync::Arc::new(Context::prepare(dir.path(), &bin, None).unwrap());
        let mut expected = Vec::new();
        c.write_tar(&mut expected).unwrap();
        let mut got = Vec::new();
        let mut stream = std::pin::pin!(
            c.clone()
                .stream(Events::discard(), CancellationToken::new())
        );
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, expected);
    }
}
