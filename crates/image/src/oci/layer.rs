//! One `COPY` as one image layer: the files it selects from the build context,
//! written as a reproducible tar (sorted paths, parent directories included,
//! mtime 0, owner root, modes from the context) through the multi-threaded
//! compressor into the layout, with both digests computed on the way.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;

use super::compress::{Compression, Compressor};
use super::layout::{Descriptor, Layout};
use crate::context::{Item, ItemKind};
use crate::error::{Error, Result};
use crate::event::CancellationToken;

/// What one path of the layer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { path: PathBuf, mode: u32, size: u64 },
    Text { text: String, mode: u32 },
    Symlink(PathBuf),
}

/// A written layer: its blob and the digest of its tar (the config's diff_id).
#[derive(Debug, Clone)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: String,
}

/// The paths (relative to `/`, no leading slash) one `COPY sources… dest` writes.
pub fn select(
    items: &[Item],
    sources: &[String],
    dest: &str,
    chmod: Option<u32>,
) -> Result<BTreeMap<String, Node>> {
    let dest_dir = dest.ends_with('/') || sources.len() > 1;
    let dest = normalize(dest);
    let mut nodes = BTreeMap::new();
    // Where folders were copied to: the folders inside them are the source's.
    let mut roots: Vec<String> = Vec::new();
    for source in sources {
        let src = normalize(source);
        if src.split('/').any(|c| c == "..") || source.contains(['*', '?', '[']) {
            return Err(Error::BuildFailed {
                message: format!(
                    "COPY {source}: paths outside the context and wildcards are not supported by --builder oci"
                ),
                step: None,
            });
        }
        let mut found = false;
        for item in items {
            if item.rel == src && matches!(item.kind, ItemKind::Symlink(_)) {
                return Err(Error::BuildFailed {
                    message: format!(
                        "COPY {source}: it is a symlink, which the engine follows and --builder oci does not; copy the file it names"
                    ),
                    step: None,
                });
            }
            let target = if item.rel == src {
                // A file: to `dest`, or into it when `dest` is a folder.
                if dest_dir {
                    join(&dest, item.rel.rsplit('/').next().unwrap_or(&item.rel))
                } else {
                    dest.clone()
                }
            } else if src.is_empty() {
                if !roots.contains(&dest) {
                    roots.push(dest.clone());
                }
                join(&dest, &item.rel)
            } else if let Some(below) = item.rel.strip_prefix(&format!("{src}/")) {
                // A folder: its contents into `dest`.
                if !roots.contains(&dest) {
                    roots.push(dest.clone());
                }
                join(&dest, below)
            } else {
                continue;
            };
            found = true;
            let node = match &item.kind {
                ItemKind::File { path, mode, size } => Node::File {
                    path: path.clone(),
                    mode: chmod.unwrap_or(*mode),
                    size: *size,
                },
                ItemKind::Text(text) => Node::Text {
                    text: text.clone(),
                    mode: chmod.unwrap_or(0o644),
                },
                ItemKind::Symlink(to) => Node::Symlink(to.clone()),
            };
            if target.is_empty() {
                return Err(Error::BuildFailed {
                    message: format!("COPY {source} {dest}: cannot replace the root folder"),
                    step: None,
                });
            }
            nodes.insert(target, node);
        }
        if !found {
            return Err(Error::BuildFailed {
                message: format!("COPY {source}: not found in the build context"),
                step: None,
            });
        }
    }
    // The folders of a copied folder's tree. Folders above a destination are not
    // written: the base's stay as they are (a `/tmp` keeps its mode, as with the
    // engine), and a runtime creates a missing one (0755, root) when it unpacks.
    let inside = |p: &str| {
        roots
            .iter()
            .any(|r| r.is_empty() || p.starts_with(&format!("{r}/")))
    };
    let parents: Vec<String> = nodes
        .keys()
        .flat_map(|path| {
            let parts: Vec<&str> = path.split('/').collect();
            (1..parts.len())
                .map(|n| parts[..n].join("/"))
                .collect::<Vec<_>>()
        })
        .filter(|p| inside(p))
        .collect();
    for parent in parents {
        nodes.entry(parent).or_insert(Node::Dir);
    }
    Ok(nodes)
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Write `nodes` as a layer blob into `layout`.
pub fn write(
    layout: &Layout,
    nodes: &BTreeMap<String, Node>,
    compression: Compression,
    threads: usize,
    cancel: &CancellationToken,
) -> Result<Layer> {
    store(layout, compression, threads, cancel, |out| {
        write_tar(out, nodes, cancel)
    })
}

/// The compressor a layer's bytes are written through into the layout.
pub(super) type Sink = Compressor<io::BufWriter<std::fs::File>>;

/// A new blob of `layout`: what `produce` writes, compressed on `threads` cores
/// into a temporary file (`.layer-*`, which a prune removes if the run dies)
/// renamed to its digest.
pub(super) fn store(
    layout: &Layout,
    compression: Compression,
    threads: usize,
    cancel: &CancellationToken,
    produce: impl FnOnce(Sink) -> io::Result<Sink>,
) -> Result<Layer> {
    let tmp = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(layout.dir.join("blobs/sha256"))
        .map_err(Error::io("creating a layer in", &layout.dir))?;
    let file = tmp
        .reopen()
        .map_err(Error::io("creating a layer in", &layout.dir))?;
    let out = io::BufWriter::with_capacity(1 << 20, file);
    let compressor = Compressor::new(out, compression, threads);
    let written = produce(compressor).and_then(|c| c.finish());
    let (out, digests) = match written {
        Ok(done) => done,
        Err(_) if cancel.is_cancelled() => return Err(Error::Cancelled),
        Err(e) => return Err(Error::io("writing a layer in", &layout.dir)(e)),
    };
    out.into_inner()
        .map_err(|e| Error::io("writing a layer in", &layout.dir)(e.into_error()))?;
    // Readable as the layout's other files are (a temporary file is the owner's only).
    let readable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
    tmp.as_file()
        .set_permissions(readable)
        .map_err(Error::io("writing a layer in", &layout.dir))?;
    let blob = layout.blob_path(&digests.digest);
    tmp.persist(&blob)
        .map_err(|e| Error::io("writing", &blob)(e.error))?;
    Ok(Layer {
        descriptor: Descriptor {
            media_type: compression.media_type().to_owned(),
            digest: digests.digest,
            size: digests.size,
            platform: None,
            annotations: BTreeMap::new(),
        },
        diff_id: digests.diff_id,
    })
}

fn write_tar<W: io::Write>(
    out: W,
    nodes: &BTreeMap<String, Node>,
    cancel: &CancellationToken,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for (path, node) in nodes {
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        match node {
            Node::Dir => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Node::File {
                path: from,
                mode,
                size,
            } => {
                let file = std::fs::File::open(from)?;
                let actual = file.metadata()?.len();
                if actual != *size {
                    return Err(io::Error::other(format!(
                        "{} changed size while the image was built ({size} → {actual} bytes)",
                        from.display()
                    )));
                }
                let mut h = header(tar::EntryType::Regular, *mode, *size);
                tar.append_data(
                    &mut h,
                    path,
                    Cancellable {
                        inner: file,
                        cancel,
                    },
                )?;
            }
            Node::Text { text, mode } => {
                let mut h = header(tar::EntryType::Regular, *mode, text.len() as u64);
                tar.append_data(&mut h, path, text.as_bytes())?;
            }
            Node::Symlink(to) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, path, to)?;
            }
        }
    }
    tar.into_inner()
}

/// The error a cancelled read or write ends with. Not `Interrupted`: `io::copy`
/// and `write_all` retry on that, and a Ctrl-C spun forever.
pub(crate) fn cancelled() -> io::Error {
    io::Error::other("cancelled")
}

/// A reader that fails once the run is cancelled.
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a CancellationToken,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(cancelled());
        }
        self.inner.read(buf)
    }
}

/// The files a layer tar holds, for tests: path → (type, mode, content).
#[cfg(test)]
pub(crate) fn read_tar(bytes: &[u8]) -> Vec<(String, char, u32, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            _ => 'f',
        };
        let mode = entry.header().mode().unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        out.push((path, kind, mode, content));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(rel: &str, text: &str) -> Item {
        Item {
            rel: rel.into(),
            kind: ItemKind::Text(text.into()),
        }
    }

    #[test]
    fn a_cancel_in_the_middle_of_a_copy_ends_it() {
        // The token is cancelled by the first read, as a Ctrl-C in mid-layer.
        struct CancelsOnRead(CancellationToken);
        impl Read for CancelsOnRead {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.cancel();
                buf.fill(1);
                Ok(buf.len())
            }
        }
        let cancel = CancellationToken::new();
        let (done, finished) = std::sync::mpsc::channel();
        let token = cancel.clone();
        std::thread::spawn(move || {
            let mut reader = Cancellable {
                inner: CancelsOnRead(token.clone()),
                cancel: &token,
            };
            let _ = done.send(io::copy(&mut reader, &mut io::sink()).is_err());
        });
        let errored = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("io::copy still running 10 s after the cancel: it retries the error");
        assert!(errored);
    }

    #[test]
    fn copy_selects_files_and_folders_as_the_engine_does() {
        let items = vec![
            item("Dockerfile", "FROM scratch"),
            item("conf/a", "a"),
            item("conf/sub/b", "b"),
            item("kubemark", "bin"),
            Item {
                rel: "link".into(),
                kind: ItemKind::Symlink("kubemark".into()),
            },
        ];
        let paths = |sources: &[&str], dest: &str| -> Vec<String> {
            let sources: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
            select(&items, &sources, dest, None)
                .unwrap()
                .into_keys()
                .collect()
        };
        assert_eq!(paths(&["kubemark"], "/kubemark"), ["kubemark"]);
        // Folders above the destination are left to the base (or the runtime).
        assert_eq!(
            paths(&["./kubemark"], "/usr/local/bin/"),
            ["usr/local/bin/kubemark"]
        );
        assert_eq!(
            paths(&["conf"], "/etc/k"),
            ["etc/k/a", "etc/k/sub", "etc/k/sub/b"]
        );
        assert_eq!(paths(&["conf"], "/"), ["a", "sub", "sub/b"]);
        assert_eq!(paths(&["kubemark", "conf/a"], "/x/"), ["x/a", "x/kubemark"]);
        for (sources, expected) in [
            (vec!["missing"], "not found in the build context"),
            (vec!["../etc/passwd"], "outside the context"),
            (vec!["*.txt"], "wildcards"),
            (vec!["link"], "it is a symlink"),
        ] {
            let sources: Vec<String> = sources.into_iter().map(str::to_owned).collect();
            let e = select(&items, &sources, "/", None).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn layers_are_reproducible_and_hold_what_was_selected() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(&dir.path().join("oci")).unwrap();
        let bin = dir.path().join("bin");
        std::fs::write(&bin, vec![7u8; 300_000]).unwrap();
        let items = vec![Item {
            rel: "kubemark".into(),
            kind: ItemKind::File {
                path: bin.clone(),
                mode: 0o755,
                size: 300_000,
            },
        }];
        let nodes = select(&items, &["kubemark".into()], "/opt/kubemark", None).unwrap();
        let cancel = CancellationToken::new();
        let one = write(&layout, &nodes, Compression::Gzip, 1, &cancel).unwrap();
        let two = write(&layout, &nodes, Compression::Gzip, 2, &cancel).unwrap();
        assert_eq!(one.descriptor, two.descriptor, "same input, same blob");
        let plain = write(&layout, &nodes, Compression::None, 2, &cancel).unwrap();
        assert_eq!(
            plain.diff_id, one.diff_id,
            "the tar is the same whatever the compression"
        );
        assert_eq!(plain.descriptor.digest, plain.diff_id);
        let tar_bytes = std::fs::read(layout.blob_path(&plain.descriptor.digest)).unwrap();
        let entries = read_tar(&tar_bytes);
        let summary: Vec<(String, char, u32, usize)> = entries
            .iter()
            .map(|(p, k, m, c)| (p.clone(), *k, *m, c.len()))
            .collect();
        assert_eq!(summary, [("opt/kubemark".to_owned(), 'f', 0o755, 300_000)]);
        std::fs::write(&bin, vec![8u8; 300_000]).unwrap();
        let changed = write(&layout, &nodes, Compression::Gzip, 2, &cancel).unwrap();
        assert_ne!(changed.diff_id, one.diff_id);

        cancel.cancel();
        assert!(matches!(
            write(&layout, &nodes, Compression::Gzip, 2, &cancel),
            Err(Error::Cancelled)
        ));
    }
}
