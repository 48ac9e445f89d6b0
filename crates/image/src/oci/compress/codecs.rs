//! The codecs behind the compressor: the gzip workers (raw deflate of one block,
//! ended by a sync flush) and the writer thread's encoder (zstd through
//! `zstd_safe`, or the blocks as they come).

use super::*;

/// A gzip worker: deflates the blocks it is given until the queue closes.
pub(super) fn gzip_worker(jobs: &Mutex<Receiver<Job>>, abort: &AtomicBool) {
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
pub(super) fn deflate_block(deflate: &mut flate2::Compress, block: &mut Block) -> io::Result<()> {
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
pub(super) const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// A writer that hashes and counts what goes through it.
pub(super) struct Counted<W> {
    pub(super) inner: W,
    pub(super) sha: Sha256,
    pub(super) size: u64,
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
pub(super) enum Encoder<W: Write> {
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
pub(super) struct Zstd<W> {
    pub(super) cctx: zstd::zstd_safe::CCtx<'static>,
    pub(super) buffer: Vec<u8>,
    pub(super) out: Counted<W>,
}

impl<W: Write> Zstd<W> {
    pub(super) fn new(out: Counted<W>, threads: usize) -> io::Result<Self> {
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
    pub(super) fn compress(&mut self, input: &[u8], end: bool) -> io::Result<()> {
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

pub(super) fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}
