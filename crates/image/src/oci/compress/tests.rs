//! The compressor's tests: output identical whatever the threads and write sizes,
//! decoded back by flate2 and the command-line tools, errors and drops handled.
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
