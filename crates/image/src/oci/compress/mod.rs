//! Compresses an image layer as it is written: a [`Write`] adaptor that
//! spreads the work over several threads, keeps memory bounded, computes the
//! layer's digests on the way, and gives byte-identical output for the same
//! input whatever the number of threads (so a rebuilt layer keeps its digest
//! and the registry keeps its blob).
//!
//! The input is cut into [`BLOCK_SIZE`] blocks whatever the sizes of the
//! writes (and [`Write::flush`] cuts nothing), so the output depends on the
//! bytes alone. A pool of blocks (`2 × threads + 2` for gzip, 3 otherwise)
//! bounds what is in flight; the caller blocks when they are all taken.
//!
//! - gzip, pigz-style: each block is deflated on its own by a worker (raw
//!   deflate ended by a sync flush, the last one by the final block) and the
//!   pieces, joined in order, make one deflate stream in one gzip member, with
//!   the blocks' CRC-32s combined for the trailer. The header is fixed (no
//!   name, mtime 0, OS 255).
//! - zstd: libzstd's own workers, with `NbWorkers` ≥ 1 even for one thread
//!   (its multithreaded output is the same for any number of workers, but
//!   differs from its single-threaded mode), and 1 MiB jobs; see `Zstd` for
//!   the one place where libzstd's output could depend on timing.
//! - none: the input as it is.
//!
//! One writer thread takes the blocks in order: it hashes the input (the
//! diff ID), hands zstd its input, hashes and writes the output. So the
//! caller's thread only copies bytes into blocks. (Hashing the input on the
//! caller's thread instead made no difference that the noise let through on
//! two cores: SHA-256 runs at ~1.5 GB/s here, and the writer thread would
//! only become the bottleneck past ~8 cores of level-1 deflate.)
//!
//! Measured on the 2-core development VM in the dev profile (the hot
//! dependencies at opt-level 3), MB/s of input, median of 5 runs, for the
//! 91 MB kubemark binary and for 100 MiB of random bytes:
//!
//! | | binary, 1 / 2 threads | output | random, 1 / 2 threads | peak RSS |
//! |---|---|---|---|---|
//! | gzip (miniz_oxide, level 1) | 145–163 / 257–264 | 31.7 MB | 136 / 198 | 16 MB |
//! | zstd (level 3, 1 MiB jobs) | 226 / 270 | 23.5 MB | 619 / 553 | 21 MB |
//! | none | 1450 | 91.1 MB | 1450 | 6 MB |
//! | `docker push` (Go's gzip, level 6, 1 thread) | 32–37 | 26.0 MB | 57 | |
//!
//! The deflate backend and level, by the same measure (binary at 1 / 2
//! threads, its output; random at 2 threads): system zlib level 1 112 / 188,
//! 28.9 MB, random 88; zlib-rs level 1 196 / 298, 34.5 MB, random 135 and
//! 5.5 % bigger than its input; zlib-rs level 2 120 / 198, 28.6 MB, random
//! 93; miniz_oxide level 2 93 / 140, 28.0 MB; level 3 62 / 107, 26.3 MB.
//! miniz_oxide level 1 is the fastest on incompressible data and second on
//! the binary, and, unlike the system's zlib (whose bytes change with the
//! distribution: some ship zlib-ng in its place), it is pinned by Cargo.lock
//! so the layer's digest is too. zstd level 1 would give 375 / 420 MB/s and
//! 25.8 MB; level 3 is zstd's default, and already faster than gzip here.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use sha2::{Digest, Sha256};

use crate::context::hex;

mod codecs;

use codecs::{Counted, Encoder, GZIP_HEADER, Zstd, gzip_worker};

/// The input is compressed in blocks of this many bytes.
pub const BLOCK_SIZE: usize = 1 << 20;

/// The deflate level.
pub const GZIP_LEVEL: u32 = 1;

/// The zstd level.
pub const ZSTD_LEVEL: i32 = 3;

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, the one every registry and runtime reads.
    #[default]
    Gzip,
    /// zstd: smaller and faster, read by containerd ≥ 1.5 and recent Docker.
    Zstd,
    /// Not compressed.
    None,
}

impl Compression {
    /// Every value, in the order [`FromStr`] lists them.
    pub const ALL: [Compression; 3] = [Compression::Gzip, Compression::Zstd, Compression::None];

    /// The name `FromStr` reads: `gzip`, `zstd` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    /// What a layer compressed so is: `gzip-compressed`, `uncompressed`.
    pub fn describe(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip-compressed",
            Compression::Zstd => "zstd-compressed",
            Compression::None => "uncompressed",
        }
    }

    /// The OCI media type of a layer compressed so.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// The Docker (schema 2) media type of a layer compressed so, if Docker
    /// has one: only gzip.
    pub fn docker_media_type(self) -> Option<&'static str> {
        match self {
            Compression::Gzip => Some("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Compression::Zstd | Compression::None => None,
        }
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown compression {s:?}: expected gzip, zstd or none"))
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The digests of one compressed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// `sha256:<hex>` of the uncompressed input.
    pub diff_id: String,
    /// Bytes of uncompressed input.
    pub input_size: u64,
    /// `sha256:<hex>` of the compressed output (the blob).
    pub digest: String,
    /// Bytes of compressed output.
    pub size: u64,
}

/// A `Write` that compresses what it is given with `threads` threads into
/// `out`, and gives back `out` and the [`Digests`] on [`finish`](Self::finish).
///
/// An error from `out` or a worker comes back from a later `write` or from
/// `finish`. Dropping it without `finish` tells the threads to stop and
/// does not wait for them: nothing is written to `out` after the write under
/// way, and the stream is left unfinished.
pub struct Compressor<W: Write + Send + 'static> {
    compression: Compression,
    threads: usize,
    /// The block being filled.
    current: Option<Block>,
    /// Blocks the writer thread is done with.
    free: Receiver<Block>,
    /// Blocks made so far, and at most.
    allocated: usize,
    capacity: usize,
    /// To the writer thread, in order.
    to_sink: Option<Sender<Msg>>,
    /// To the gzip workers.
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    sink: Option<JoinHandle<io::Result<(W, Digests)>>>,
    abort: Arc<AtomicBool>,
    /// The error that stopped the compressor, to repeat.
    failure: Option<(io::ErrorKind, String)>,
}

/// A block of input, and its deflated form (gzip only).
struct Block {
    input: Vec<u8>,
    output: Vec<u8>,
    crc: crc32fast::Hasher,
    last: bool,
}

/// A block for a gzip worker, and where its result goes.
struct Job {
    block: Block,
    reply: SyncSender<io::Result<Block>>,
}

/// What the writer thread takes, in order.
enum Msg {
    /// A block to hash and write (zstd, none).
    Ready(Block),
    /// A block a gzip worker deflates.
    Pending(Receiver<io::Result<Block>>),
}

impl<W: Write + Send + 'static> Compressor<W> {
    /// Starts the threads: `threads` gzip workers or libzstd workers (0 is
    /// taken as 1), and the writer thread, which owns `out`.
    pub fn new(out: W, compression: Compression, threads: usize) -> Self {
        let threads = threads.max(1);
        let abort = Arc::new(AtomicBool::new(false));
        let (to_sink, sink_rx) = mpsc::channel();
        let (free_tx, free) = mpsc::channel();
        let capacity = match compression {
            Compression::Gzip => 2 * threads + 2,
            Compression::Zstd | Compression::None => 3,
        };
        let mut this = Compressor {
            compression,
            threads,
            current: None,
            free,
            allocated: 0,
            capacity,
            to_sink: Some(to_sink),
            jobs: None,
            workers: Vec::new(),
            sink: None,
            abort,
            failure: None,
        };
        if compression == Compression::Gzip {
            let (jobs_tx, jobs_rx) = mpsc::channel();
            let jobs_rx = Arc::new(Mutex::new(jobs_rx));
            for i in 0..threads {
                let jobs_rx = Arc::clone(&jobs_rx);
                let abort = Arc::clone(&this.abort);
                let spawned = thread::Builder::new()
                    .name(format!("gzip-{i}"))
                    .spawn(move || gzip_worker(&jobs_rx, &abort));
                match spawned {
                    Ok(handle) => this.workers.push(handle),
                    Err(e) => {
                        this.failure = Some((e.kind(), format!("starting a gzip thread: {e}")));
                        return this;
                    }
                }
            }
            this.jobs = Some(jobs_tx);
        }
        let abort = Arc::clone(&this.abort);
        let spawned = thread::Builder::new()
            .name("layer-writer".into())
            .spawn(move || sink(out, compression, threads, &sink_rx, &free_tx, &abort));
        match spawned {
            Ok(handle) => this.sink = Some(handle),
            Err(e) => {
                this.failure = Some((e.kind(), format!("starting the layer writer thread: {e}")))
            }
        }
        this
    }

    /// Compresses what is left, waits for the threads, flushes `out` and
    /// gives it back with the digests.
    pub fn finish(mut self) -> io::Result<(W, Digests)> {
        let block = match self.current.take() {
            Some(block) => block,
            None => self.take_block()?,
        };
        self.dispatch(block, true)?;
        self.to_sink = None;
        self.jobs = None;
        let result = match self.sink.take() {
            Some(sink) => join(sink),
            None => Err(self.failure()),
        };
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        result
    }

    /// A free block: one given back by the writer thread, a new one while
    /// fewer than `capacity` exist, else the next one given back.
    fn take_block(&mut self) -> io::Result<Block> {
        if self.failure.is_some() {
            return Err(self.failure());
        }
        let block = match self.free.try_recv() {
            Ok(block) => Some(block),
            Err(TryRecvError::Empty) if self.allocated < self.capacity => {
                self.allocated += 1;
                return Ok(Block {
                    input: Vec::with_capacity(BLOCK_SIZE),
                    output: Vec::new(),
                    crc: crc32fast::Hasher::new(),
                    last: false,
                });
            }
            Err(TryRecvError::Empty) => self.free.recv().ok(),
            Err(TryRecvError::Disconnected) => None,
        };
        match block {
            Some(mut block) => {
                block.input.clear();
                Ok(block)
            }
            None => Err(self.fail()),
        }
    }

    /// Sends a full (or the last) block on its way.
    fn dispatch(&mut self, mut block: Block, last: bool) -> io::Result<()> {
        block.last = last;
        let sent = match (&self.to_sink, &self.jobs) {
            (Some(to_sink), Some(jobs)) => {
                let (reply, result) = mpsc::sync_channel(1);
                jobs.send(Job { block, reply }).is_ok()
                    && to_sink.send(Msg::Pending(result)).is_ok()
            }
            (Some(to_sink), None) => to_sink.send(Msg::Ready(block)).is_ok(),
            (None, _) => false,
        };
        if sent { Ok(()) } else { Err(self.fail()) }
    }

    /// The writer thread has stopped before the end: its error, kept to be
    /// repeated.
    fn fail(&mut self) -> io::Error {
        if self.failure.is_none() {
            // Closing its queue ends the writer thread if it is still waiting.
            self.to_sink = None;
            self.jobs = None;
            let error = match self.sink.take() {
                Some(sink) => match join(sink) {
                    Err(e) => e,
                    Ok(_) => io::Error::other("the layer writer thread stopped early"),
                },
                None => io::Error::other("the layer writer thread is gone"),
            };
            self.failure = Some((error.kind(), error.to_string()));
        }
        self.failure()
    }

    fn failure(&self) -> io::Error {
        match &self.failure {
            Some((kind, message)) => io::Error::new(*kind, message.clone()),
            None => io::Error::other("the layer compressor failed"),
        }
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        while written < buf.len() {
            let block = match self.current.take() {
                Some(block) if block.input.len() < BLOCK_SIZE => Ok(block),
                Some(full) => self.dispatch(full, false).and_then(|()| self.take_block()),
                None => self.take_block(),
            };
            let block = match block {
                Ok(block) => self.current.insert(block),
                Err(e) if written == 0 => return Err(e),
                Err(_) => break,
            };
            let n = (BLOCK_SIZE - block.input.len()).min(buf.len() - written);
            block.input.extend_from_slice(&buf[written..written + n]);
            written += n;
        }
        Ok(written)
    }

    /// Only reports an earlier failure: a partial block is not cut short, so
    /// that the output does not depend on when the caller flushes.
    fn flush(&mut self) -> io::Result<()> {
        match self.failure {
            Some(_) => Err(self.failure()),
            None => Ok(()),
        }
    }
}

impl<W: Write + Send + 'static> Drop for Compressor<W> {
    fn drop(&mut self) {
        if self.sink.is_some() {
            self.abort.store(true, Ordering::Relaxed);
        }
        self.to_sink = None;
        self.jobs = None;
    }
}

impl<W: Write + Send + 'static> fmt::Debug for Compressor<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("compression", &self.compression)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

fn join<W>(sink: JoinHandle<io::Result<(W, Digests)>>) -> io::Result<(W, Digests)> {
    sink.join()
        .unwrap_or_else(|_| Err(io::Error::other("the layer writer thread panicked")))
}

fn aborted() -> io::Error {
    io::Error::other("the layer compressor was dropped before finish")
}

/// The writer thread: takes the blocks in order, hashes the input, writes
/// the output, gives the blocks back; then ends the stream.
fn sink<W: Write>(
    out: W,
    compression: Compression,
    threads: usize,
    blocks: &Receiver<Msg>,
    free: &Sender<Block>,
    abort: &AtomicBool,
) -> io::Result<(W, Digests)> {
    let mut out = Counted {
        inner: out,
        sha: Sha256::new(),
        size: 0,
    };
    let mut encoder = match compression {
        Compression::Gzip => {
            out.write_all(&GZIP_HEADER)?;
            Encoder::Gzip(out, crc32fast::Hasher::new())
        }
        Compression::Zstd => Encoder::Zstd(Zstd::new(out, threads)?),
        Compression::None => Encoder::None(out),
    };
    let mut diff_id = Sha256::new();
    let mut input_size = 0u64;
    loop {
        let block = match blocks.recv().map_err(|_| aborted())? {
            Msg::Ready(block) => block,
            Msg::Pending(result) => result
                .recv()
                .map_err(|_| io::Error::other("a gzip thread stopped"))??,
        };
        if abort.load(Ordering::Relaxed) {
            return Err(aborted());
        }
        input_size += block.input.len() as u64;
        match &mut encoder {
            Encoder::Gzip(out, crc) => {
                diff_id.update(&block.input);
                crc.combine(&block.crc);
                out.write_all(&block.output)?;
            }
            Encoder::Zstd(zstd) => {
                diff_id.update(&block.input);
                if block.last {
                    // The end of the frame goes with the last byte: see `Zstd`.
                    let (head, tail) = block.input.split_at(block.input.len().saturating_sub(1));
                    zstd.compress(head, false)?;
                    zstd.compress(tail, true)?;
                } else {
                    zstd.compress(&block.input, false)?;
                }
            }
            Encoder::None(out) => out.write_all(&block.input)?,
        }
        let last = block.last;
        let _ = free.send(block);
        if last {
            break;
        }
    }
    let (out, diff_id) = match encoder {
        Encoder::Gzip(mut out, crc) => {
            out.write_all(&crc.finalize().to_le_bytes())?;
            // ISIZE: the input's size modulo 2^32.
            out.write_all(&(input_size as u32).to_le_bytes())?;
            (out, Some(diff_id))
        }
        Encoder::Zstd(zstd) => (zstd.out, Some(diff_id)),
        Encoder::None(out) => (out, None),
    };
    let Counted {
        mut inner,
        sha,
        size,
    } = out;
    inner.flush()?;
    let digest = format!("sha256:{}", hex(&sha.finalize()));
    let diff_id = match diff_id {
        Some(sha) => format!("sha256:{}", hex(&sha.finalize())),
        None => digest.clone(),
    };
    Ok((
        inner,
        Digests {
            diff_id,
            input_size,
            digest,
            size,
        },
    ))
}

#[cfg(test)]
mod tests;
