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

/// A gzip worker: deflates the blocks it is given until the queue closes.
fn gzip_worker(jobs: &Mutex<Receiver<Job>>, abort: &AtomicBool) {
    let mut deflate = flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL), false);
    loop {
        let job = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(Job { mut block, reply }) = job else {
            return;
        };
        if abort.load(Ordering::Relaxed) {
            return;
        }
        let result = deflate_block(&mut deflate, &mut block).map(|()| block);
        let _ = reply.send(result);
    }
}

/// Deflates `block.input` into `block.output` (raw deflate, ended by a sync
/// flush, or by the final block if it is the last) and takes its CRC-32.
fn deflate_block(deflate: &mut flate2::Compress, block: &mut Block) -> io::Result<()> {
    use flate2::{FlushCompress, Status};

    deflate.reset();
    block.crc = crc32fast::Hasher::new();
    block.crc.update(&block.input);
    let input = &block.input;
    let output = &mut block.output;
    output.clear();
    let flush = if block.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut consumed = 0;
    loop {
        let left = input.len() - consumed;
        let want = left + left / 64 + 1024;
        if output.capacity() - output.len() < want {
            output.reserve(want);
        }
        let (total_in, total_out) = (deflate.total_in(), deflate.total_out());
        let status = deflate.compress_vec(&input[consumed..], output, flush)?;
        let took = usize::try_from(deflate.total_in() - total_in)
            .map_err(|_| io::Error::other("deflate took more than it was given"))?;
        consumed += took;
        let progress = took > 0 || deflate.total_out() != total_out;
        let room = output.len() < output.capacity();
        match status {
            Status::StreamEnd => return Ok(()),
            _ if !block.last && consumed == input.len() && room => return Ok(()),
            _ if !progress && room => return Err(io::Error::other("deflate made no progress")),
            _ => {}
        }
    }
}

/// The gzip header: no name, no mtime, XFL 4 (fastest), OS 255 (unknown).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// A writer that hashes and counts what goes through it.
struct Counted<W> {
    inner: W,
    sha: Sha256,
    size: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What the writer thread writes through.
enum Encoder<W: Write> {
    Gzip(Counted<W>, crc32fast::Hasher),
    Zstd(Zstd<W>),
    None(Counted<W>),
}

/// libzstd's streaming compressor with `NbWorkers` ≥ 1, driven so that its
/// output depends on the input alone.
///
/// Jobs of [`BLOCK_SIZE`] (libzstd's default for level 3 is 8 MiB, which
/// took 60 to 110 MB of RSS with two workers; 1 MiB costs 0.6 % of size on
/// the kubemark binary). libzstd cuts its jobs at fixed sizes, but when the
/// input ends on a job's boundary, whether that job ends the frame or an
/// empty block follows depends on how far the workers have got (a job is
/// not started while its table is full). So the frame is never ended
/// without input: the last byte goes in with `ZSTD_e_end`.
struct Zstd<W> {
    cctx: zstd::zstd_safe::CCtx<'static>,
    buffer: Vec<u8>,
    out: Counted<W>,
}

impl<W: Write> Zstd<W> {
    fn new(out: Counted<W>, threads: usize) -> io::Result<Self> {
        use zstd::zstd_safe::{CCtx, CParameter};
        let mut cctx =
            CCtx::try_create().ok_or_else(|| io::Error::other("zstd: no memory for a context"))?;
        let workers = u32::try_from(threads.min(64)).unwrap_or(1);
        let job = u32::try_from(BLOCK_SIZE).unwrap_or(u32::MAX);
        for parameter in [
            CParameter::CompressionLevel(ZSTD_LEVEL),
            CParameter::ChecksumFlag(true),
            CParameter::NbWorkers(workers),
            CParameter::JobSize(job),
        ] {
            cctx.set_parameter(parameter).map_err(zstd_error)?;
        }
        Ok(Zstd {
            cctx,
            buffer: Vec::with_capacity(CCtx::out_size()),
            out,
        })
    }

    /// Compresses `input`; `end` ends the frame.
    fn compress(&mut self, input: &[u8], end: bool) -> io::Result<()> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let directive = if end {
            ZSTD_EndDirective::ZSTD_e_end
        } else {
            ZSTD_EndDirective::ZSTD_e_continue
        };
        let mut input = InBuffer::around(input);
        loop {
            let mut output = OutBuffer::around(&mut self.buffer);
            let left = self
                .cctx
                .compress_stream2(&mut output, &mut input, directive)
                .map_err(zstd_error)?;
            self.out.write_all(output.as_slice())?;
            if input.pos == input.src.len() && (!end || left == 0) {
                return Ok(());
            }
        }
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
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
mod tests {
    use super::*;
    use std::io::Read;

    /// `len` bytes, alternating 256 KiB stretches of text-like (compressible)
    /// and random (incompressible) bytes.
    fn mixed(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let words: [&[u8]; 8] = [
            b"kubemark ",
            b"hollow-node ",
            b"kubelet ",
            b"proxy ",
            b"\x00\x00\x00\x00",
            b"func ",
            b"0123456789",
            b"\n",
        ];
        let mut data = Vec::with_capacity(len + 64);
        let mut stretch = 0;
        while data.len() < len {
            let end = (data.len() + (256 << 10)).min(len);
            if stretch % 2 == 0 {
                while data.len() < end {
                    data.extend_from_slice(words[(next() % 8) as usize]);
                }
            } else {
                while data.len() < end {
                    data.extend_from_slice(&next().to_le_bytes());
                }
            }
            data.truncate(end);
            stretch += 1;
        }
        data
    }

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex(&Sha256::digest(bytes)))
    }

    fn compress(
        input: &[u8],
        compression: Compression,
        threads: usize,
        chunk: usize,
    ) -> (Vec<u8>, Digests) {
        let mut c = Compressor::new(Vec::new(), compression, threads);
        for piece in input.chunks(chunk.max(1)) {
            c.write_all(piece).expect("write");
        }
        c.finish().expect("finish")
    }

    fn decode(blob: &[u8], compression: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        match compression {
            Compression::Gzip => {
                flate2::read::MultiGzDecoder::new(blob)
                    .read_to_end(&mut out)
                    .expect("gunzip");
                let mut single = Vec::new();
                flate2::read::GzDecoder::new(blob)
                    .read_to_end(&mut single)
                    .expect("gunzip");
                assert_eq!(single, out, "one gzip member");
            }
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(blob)
                    .expect("zstd decoder")
                    .read_to_end(&mut out)
                    .expect("unzstd");
            }
            Compression::None => out.extend_from_slice(blob),
        }
        out
    }

    fn check(input: &[u8], blob: &[u8], digests: &Digests, compression: Compression) {
        assert_eq!(decode(blob, compression), input, "{compression} round trip");
        assert_eq!(digests.diff_id, sha(input));
        assert_eq!(digests.input_size, input.len() as u64);
        assert_eq!(digests.digest, sha(blob));
        assert_eq!(digests.size, blob.len() as u64);
    }

    #[test]
    fn same_output_for_any_number_of_threads() {
        let input = mixed(20 << 20, 7);
        for compression in Compression::ALL {
            let (one, digests) = compress(&input, compression, 1, 1 << 16);
            check(&input, &one, &digests, compression);
            for threads in [2, 4] {
                let (blob, d) = compress(&input, compression, threads, 1 << 16);
                assert!(
                    blob == one,
                    "{compression}: {threads} threads differ from 1"
                );
                assert_eq!(d, digests);
            }
            match compression {
                Compression::None => assert_eq!(one.len(), input.len()),
                _ => assert!(
                    one.len() < input.len() * 3 / 4,
                    "{compression}: {}",
                    one.len()
                ),
            }
        }
    }

    #[test]
    fn output_does_not_depend_on_the_writes() {
        let input = mixed(3 * BLOCK_SIZE + 12_345, 3);
        for compression in Compression::ALL {
            let (whole, d) = compress(&input, compression, 2, input.len());
            check(&input, &whole, &d, compression);
            for chunk in [1000, 4096, BLOCK_SIZE + 1] {
                let (blob, _) = compress(&input, compression, 3, chunk);
                assert!(blob == whole, "{compression}: writes of {chunk} bytes");
            }
        }
    }

    #[test]
    fn edge_sizes_round_trip() {
        for len in [
            0,
            1,
            100,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            2 * BLOCK_SIZE,
        ] {
            let input = mixed(len, len as u64);
            for compression in Compression::ALL {
                let (blob, d) = compress(&input, compression, 2, 1 << 16);
                check(&input, &blob, &d, compression);
                let (one, _) = compress(&input, compression, 1, 1 << 16);
                assert!(
                    one == blob,
                    "{compression}, {len} bytes: 1 and 2 threads differ"
                );
            }
        }
    }

    /// libzstd decides whether its last job ends the frame or an empty
    /// block follows it by how far its workers have got, when the input ends
    /// on a job's boundary; the last bytes go in with the end of the frame so
    /// that it cannot.
    #[test]
    fn zstd_output_is_stable_when_the_input_ends_on_a_job() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let input: Vec<u8> = (0..(6 * BLOCK_SIZE / 8))
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        let (first, _) = compress(&input, Compression::Zstd, 1, BLOCK_SIZE);
        for round in 0..12 {
            let (blob, _) = compress(&input, Compression::Zstd, 1 + round % 2, BLOCK_SIZE);
            assert_eq!(blob.len(), first.len(), "round {round}");
            assert!(blob == first, "round {round}");
        }
    }

    #[test]
    fn gzip_header_and_trailer() {
        let input = mixed(BLOCK_SIZE + 10, 11);
        let (blob, _) = compress(&input, Compression::Gzip, 2, 1 << 16);
        assert_eq!(blob[..10], GZIP_HEADER);
        let trailer = &blob[blob.len() - 8..];
        assert_eq!(trailer[..4], crc32fast::hash(&input).to_le_bytes());
        assert_eq!(trailer[4..], (input.len() as u32).to_le_bytes());
    }

    /// The gzip and zstd tools, where present, read the output too.
    #[test]
    fn command_line_tools_decode_it() {
        use std::process::{Command, Stdio};
        let input = mixed(2 * BLOCK_SIZE + 77, 5);
        for (compression, tool) in [(Compression::Gzip, "gzip"), (Compression::Zstd, "zstd")] {
            let (blob, _) = compress(&input, compression, 2, 1 << 16);
            let mut child = Command::new(tool)
                .args(["-dc"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{tool}: {e}; run `cargo xtask ci --provision-only` to install it")
                });
            let mut stdin = child.stdin.take().expect("stdin");
            let feeder = std::thread::spawn(move || stdin.write_all(&blob));
            let output = child.wait_with_output().expect("wait");
            feeder.join().expect("feeder").expect("feed");
            assert!(output.status.success(), "{tool} -dc: {}", output.status);
            assert!(output.stdout == input, "{tool} -dc gives the input back");
        }
    }

    /// Fails every write after `left` bytes.
    #[derive(Debug)]
    struct Failing {
        left: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_error_from_out_comes_back() {
        let input = mixed(16 * BLOCK_SIZE, 9);
        for compression in Compression::ALL {
            for left in [0, 5000, 3 * BLOCK_SIZE / 2] {
                let mut c = Compressor::new(Failing { left }, compression, 2);
                let error = match c.write_all(&input) {
                    Err(e) => e,
                    Ok(()) => c.finish().expect_err("finish fails"),
                };
                assert_eq!(
                    error.kind(),
                    io::ErrorKind::StorageFull,
                    "{compression}, {left}: {error}"
                );
                assert!(error.to_string().contains("disk full"), "{error}");
            }
            // A small input fails at finish.
            let mut c = Compressor::new(Failing { left: 3 }, compression, 2);
            c.write_all(b"0123456789").expect("write");
            let error = c.finish().expect_err("finish fails");
            assert_eq!(
                error.kind(),
                io::ErrorKind::StorageFull,
                "{compression}: {error}"
            );
        }
    }

    #[test]
    fn dropping_without_finish_stops_at_once() {
        let input = mixed(8 * BLOCK_SIZE, 13);
        for compression in Compression::ALL {
            let mut c = Compressor::new(Vec::new(), compression, 2);
            c.write_all(&input).expect("write");
            drop(c);
            let c = Compressor::new(io::sink(), compression, 2);
            drop(c);
        }
    }

    #[test]
    fn names_and_media_types() {
        for compression in Compression::ALL {
            assert_eq!(compression.as_str().parse::<Compression>(), Ok(compression));
            assert_eq!(compression.to_string(), compression.as_str());
            assert_eq!(
                serde_json::to_string(&compression).expect("json"),
                format!("\"{compression}\"")
            );
        }
        assert_eq!(Compression::default(), Compression::Gzip);
        let error = "xz".parse::<Compression>().expect_err("xz");
        assert!(error.contains("gzip, zstd or none"), "{error}");
        assert_eq!(
            Compression::Gzip.media_type(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(
            Compression::Zstd.media_type(),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(
            Compression::None.media_type(),
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(
            Compression::Gzip.docker_media_type(),
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
        );
        assert_eq!(Compression::Zstd.docker_media_type(), None);
        assert_eq!(Compression::None.docker_media_type(), None);
    }
}
