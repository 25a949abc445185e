//! Parallel bzip2 compression, and size-capped multi-stream decompression.
//!
//! bzip2 is the slowest stage of the upstream pipeline (~8.5 MB/s per core at level 9), so
//! [`ParallelBzWriter`] cuts its input into [`CHUNK_SIZE`] chunks, compresses each chunk as an
//! *independent* bzip2 stream on a pool of threads, and writes the streams to the inner writer in
//! input order. The concatenation is a multi-stream `.bz2` file — the shape `pbzip2` writes —
//! which `bunzip2` and [`bzip2::read::MultiBzDecoder`] read as one. At most `2 × threads` chunks
//! are in flight, so memory stays constant whatever the input size.
//!
//! [`capped_decoder`] is how untrusted `.bz2` data must be read: it reads every stream, refuses to
//! produce more than a given number of bytes (a bzip2 bomb expands ~1:45,000), and turns truncated
//! or corrupt input into an error instead of a short read. A file cut exactly between two streams
//! is still a valid multi-stream file; the checksums in the manifest catch that case.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use bzip2::Compression;
use bzip2::read::MultiBzDecoder;
use bzip2::write::BzEncoder;

/// Bytes of input per independent bzip2 stream (the size of one level-9 bzip2 block).
pub const CHUNK_SIZE: usize = 900_000;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A [`Write`] that bzip2-compresses on several threads; see the [module docs](self).
///
/// Call [`finish`](Self::finish) at the end: dropping the writer loses the last chunk.
/// [`flush`](Write::flush) writes out the chunks that are already compressed and flushes the inner
/// writer, but does not cut the current chunk short (that would hurt the compression ratio).
pub struct ParallelBzWriter<W: Write> {
    inner: W,
    level: Compression,
    chunk_size: usize,
    buf: Vec<u8>,
    /// `None` when no worker thread could be started: chunks are then compressed inline.
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<Done>,
    workers: Vec<thread::JoinHandle<()>>,
    /// Compressed chunks that arrived ahead of their turn.
    ready: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    next_to_write: u64,
    max_in_flight: usize,
    failed: bool,
}

impl<W: Write> ParallelBzWriter<W> {
    /// Compresses into `inner` at bzip2 `level` (clamped to 1..=9; the CLI default is 9) on
    /// `threads` threads (0 = the number of available cores).
    pub fn new(inner: W, level: u32, threads: usize) -> Self {
        Self::with_chunk_size(inner, level, threads, CHUNK_SIZE)
    }

    fn with_chunk_size(inner: W, level: u32, threads: usize, chunk_size: usize) -> Self {
        let threads = match threads {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let level = Compression::new(level.clamp(1, 9));
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (done_tx, results) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers: Vec<_> = (0..threads)
            .filter_map(|i| {
                let (jobs, done) = (Arc::clone(&job_rx), done_tx.clone());
                thread::Builder::new().name(format!("ferry-bzip2-{i}")).spawn(move || worker(&jobs, &done, level)).ok()
            })
            .collect();
        Self {
            inner,
            level,
            chunk_size,
            buf: Vec::with_capacity(chunk_size),
            jobs: (!workers.is_empty()).then_some(job_tx),
            results,
            max_in_flight: 2 * workers.len().max(1),
            workers,
            ready: BTreeMap::new(),
            next_seq: 0,
            next_to_write: 0,
            failed: false,
        }
    }

    /// Compresses the buffered tail, waits for every chunk, writes them out, flushes and returns
    /// the inner writer. Empty input still yields one (empty) bzip2 stream, a valid `.bz2` file.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        if !self.buf.is_empty() || self.next_seq == 0 {
            let tail = std::mem::take(&mut self.buf);
            self.guard(|s| s.submit(tail))?;
        }
        self.jobs = None; // workers exit once the queue is empty
        while self.in_flight() > 0 {
            self.guard(Self::wait_one)?;
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn in_flight(&self) -> usize {
        (self.next_seq - self.next_to_write) as usize
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("the bzip2 writer already failed; discard this output and start again"));
        }
        Ok(())
    }

    /// Runs `f`, poisoning the writer if it fails (a chunk may have been lost).
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        let r = f(self);
        self.failed |= r.is_err();
        r
    }

    fn submit(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        while self.in_flight() >= self.max_in_flight {
            self.wait_one()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        match &self.jobs {
            Some(tx) => tx.send((seq, chunk)).map_err(|_| workers_gone())?,
            None => {
                let out = compress_chunk(&chunk, self.level);
                self.accept(seq, out)?;
            }
        }
        // Write out whatever is already done, so output streams while input arrives.
        while let Ok((seq, out)) = self.results.try_recv() {
            self.accept(seq, out)?;
        }
        Ok(())
    }

    fn wait_one(&mut self) -> io::Result<()> {
        let (seq, out) = self.results.recv().map_err(|_| workers_gone())?;
        self.accept(seq, out)
    }

    fn accept(&mut self, seq: u64, out: io::Result<Vec<u8>>) -> io::Result<()> {
        self.ready.insert(seq, out?);
        while let Some(data) = self.ready.remove(&self.next_to_write) {
            self.inner.write_all(&data)?;
            self.next_to_write += 1;
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelBzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        let n = data.len().min(self.chunk_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk_size {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size));
            self.guard(|s| s.submit(chunk))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.guard(|s| {
            while let Ok((seq, out)) = s.results.try_recv() {
                s.accept(seq, out)?;
            }
            s.inner.flush()
        })
    }
}

fn worker(jobs: &Mutex<mpsc::Receiver<Job>>, done: &mpsc::Sender<Done>, level: Compression) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, chunk)) = job else { return };
        let out = catch_unwind(AssertUnwindSafe(|| compress_chunk(&chunk, level)))
            .unwrap_or_else(|_| Err(io::Error::other("a bzip2 compression thread panicked")));
        if done.send((seq, out)).is_err() {
            return;
        }
    }
}

fn compress_chunk(chunk: &[u8], level: Compression) -> io::Result<Vec<u8>> {
    // Level 9 (the default) goes through our own encoder, ~2x faster than libbz2; the libbz2
    // port stays for the other levels and in case our encoder ever fails on a chunk.
    if level.level() == 9
        && let Ok(Some(out)) = catch_unwind(|| crate::bzenc::compress_stream(chunk))
    {
        return Ok(out);
    }
    let mut enc = BzEncoder::new(Vec::with_capacity(chunk.len() / 3 + 64), level);
    enc.write_all(chunk)?;
    enc.finish()
}

fn workers_gone() -> io::Error {
    io::Error::other("the bzip2 compression threads stopped unexpectedly; try again")
}

/// Compresses the file `src` into `dst` (created or truncated) with [`ParallelBzWriter`], syncs
/// it to disk and returns the compressed size in bytes.
pub fn compress_file(src: &Path, dst: &Path, level: u32, threads: usize) -> io::Result<u64> {
    let mut input = File::open(src)?;
    let mut w = ParallelBzWriter::new(File::create(dst)?, level, threads);
    io::copy(&mut input, &mut w)?;
    let out = w.finish()?;
    out.sync_all()?;
    Ok(out.metadata()?.len())
}

/// A reader of (multi-stream) bzip2 data whose output is capped; see [`capped_decoder`].
pub struct CappedDecoder<R: Read> {
    inner: MultiBzDecoder<R>,
    produced: u64,
    max_out: u64,
}

/// Decompresses every bzip2 stream of `r`, producing at most `max_out` bytes.
///
/// Reading past the cap fails with [`io::ErrorKind::InvalidData`] ("decompressed size exceeds the
/// cap …"); input that ends mid-stream fails with [`io::ErrorKind::UnexpectedEof`] ("truncated
/// bzip2 stream"); corrupt input fails with [`io::ErrorKind::InvalidData`]. Output of exactly
/// `max_out` bytes is fine.
#[allow(clippy::disallowed_methods)] // the one place the uncapped decoder is wrapped
pub fn capped_decoder<R: Read>(r: R, max_out: u64) -> CappedDecoder<R> {
    CappedDecoder { inner: MultiBzDecoder::new(r), produced: 0, max_out }
}

impl<R: Read> CappedDecoder<R> {
    /// Bytes decompressed so far.
    pub fn decompressed_bytes(&self) -> u64 {
        self.produced
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated bzip2 stream: the file is incomplete; fetch or upload it again",
            ),
            io::ErrorKind::InvalidInput => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt bzip2 data ({e}); fetch or upload the file again"),
            ),
            _ => e,
        })
    }
}

impl<R: Read> Read for CappedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.max_out - self.produced;
        if left == 0 {
            // At the cap: fine if the data ends here, a bomb if it goes on.
            let mut probe = [0u8; 1];
            return match self.read_inner(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "decompressed size exceeds the cap of {} bytes (possible bzip2 bomb); \
                         raise the limit only if this file is expected to be that large",
                        self.max_out
                    ),
                )),
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.read_inner(&mut buf[..want])?;
        self.produced += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Compressible but order-sensitive text: every line is numbered.
    fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("{i};ITEM-{};LOC-{};{}\n", i % 977, i % 13, i * 7).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn compress(data: &[u8], threads: usize, chunk: usize) -> Vec<u8> {
        let mut w = ParallelBzWriter::with_chunk_size(Vec::new(), 9, threads, chunk);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[allow(clippy::disallowed_methods)] // the reference decoder, to check the writer's output against
    fn decompress_all(bz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MultiBzDecoder::new(bz).read_to_end(&mut out).unwrap();
        out
    }

    /// Positions of the bzip2 stream headers ("BZh9" + block magic).
    fn stream_starts(bz: &[u8]) -> Vec<usize> {
        let magic = b"BZh9\x31\x41\x59\x26\x53\x59";
        let empty = b"BZh9\x17\x72\x45\x38\x50\x90";
        (0..bz.len().saturating_sub(9)).filter(|&i| &bz[i..i + 10] == magic || &bz[i..i + 10] == empty).collect()
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // shows what a single-stream decoder would make of the output
    fn many_small_chunks_come_out_in_order() {
        let data = sample(200_000);
        let bz = compress(&data, 4, 1_000);
        assert_eq!(decompress_all(&bz), data);
        // Independent streams: a single-stream decoder stops after the first chunk.
        let mut first = Vec::new();
        bzip2::read::BzDecoder::new(&bz[..]).read_to_end(&mut first).unwrap();
        assert_eq!(first, &data[..1_000]);
        assert_eq!(stream_starts(&bz).len(), 200);
    }

    #[test]
    fn full_size_chunks_round_trip() {
        let data = sample(2 * CHUNK_SIZE + 12_345);
        let mut w = ParallelBzWriter::new(Vec::new(), 9, 0);
        for piece in data.chunks(64 * 1024) {
            w.write_all(piece).unwrap();
        }
        let bz = w.finish().unwrap();
        assert_eq!(stream_starts(&bz).len(), 3);
        assert_eq!(decompress_all(&bz), data);
    }

    #[test]
    fn output_streams_and_in_flight_is_bounded() {
        let data = sample(400_000);
        let mut w = ParallelBzWriter::with_chunk_size(Vec::new(), 1, 2, 1_000);
        for piece in data.chunks(1_000) {
            w.write_all(piece).unwrap();
            assert!(w.in_flight() <= 4, "in flight: {}", w.in_flight());
            assert!(w.ready.len() <= 4);
        }
        // Most chunks must already be written out before finish.
        assert!(w.inner.len() > 10_000, "output was held back: {} bytes", w.inner.len());
        assert_eq!(decompress_all(&w.finish().unwrap()), data);
    }

    #[test]
    fn inline_mode_and_odd_levels_work() {
        let data = sample(10_000);
        for level in [0, 1, 9, 42] {
            let mut w = ParallelBzWriter::with_chunk_size(Vec::new(), level, 1, 3_000);
            w.jobs = None; // as if no thread could be started
            w.write_all(&data).unwrap();
            assert_eq!(decompress_all(&w.finish().unwrap()), data);
        }
    }

    #[test]
    fn empty_input_is_one_valid_empty_stream() {
        let bz = ParallelBzWriter::new(Vec::new(), 9, 2).finish().unwrap();
        assert!(bz.starts_with(b"BZh9"));
        assert!(decompress_all(&bz).is_empty());
        let mut out = Vec::new();
        capped_decoder(&bz[..], 0).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn debian_bzip2_reads_our_output() {
        let bzip2 = Path::new("/usr/bin/bzip2");
        if !bzip2.exists() {
            println!("skipped: /usr/bin/bzip2 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in [("empty", Vec::new()), ("multi", sample(2 * CHUNK_SIZE + 777))] {
            let src = dir.path().join(format!("{name}.csv"));
            let dst = dir.path().join(format!("{name}.csv.bz2"));
            std::fs::write(&src, &data).unwrap();
            let size = compress_file(&src, &dst, 9, 0).unwrap();
            assert_eq!(size, std::fs::metadata(&dst).unwrap().len());
            let t = Command::new(bzip2).arg("-t").arg(&dst).status().unwrap();
            assert!(t.success(), "bzip2 -t rejected {name}");
            let out = Command::new(bzip2).arg("-dc").arg(&dst).output().unwrap();
            assert!(out.status.success());
            assert_eq!(out.stdout, data, "bzip2 -dc output differs for {name}");
        }
    }

    #[test]
    fn cap_allows_exact_size_and_refuses_one_byte_more() {
        let data = sample(50_000);
        let bz = compress(&data, 2, 7_000);
        let mut out = Vec::new();
        capped_decoder(&bz[..], data.len() as u64).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        let mut d = capped_decoder(&bz[..], data.len() as u64 - 1);
        let err = d.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&format!("exceeds the cap of {} bytes", data.len() - 1)));
        assert_eq!(d.decompressed_bytes(), data.len() as u64 - 1);
    }

    #[test]
    fn bomb_is_stopped_early() {
        // 64 MiB of zeros compress to ~100 bytes.
        let zeros = vec![0u8; 64 << 20];
        let bz = compress_chunk(&zeros, Compression::new(9)).unwrap();
        assert!(bz.len() < 1_000);
        let mut d = capped_decoder(&bz[..], 1 << 20);
        let err = io::copy(&mut d, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("possible bzip2 bomb"), "{err}");
        assert!(d.decompressed_bytes() <= 1 << 20);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_short_read() {
        let data = sample(30_000);
        let bz = compress(&data, 2, 10_000);
        let starts = stream_starts(&bz);
        assert_eq!(starts.len(), 3);
        // Cut inside the first, the second (multi-stream case) and the last stream, and just
        // before the end-of-stream trailer.
        let cuts = [starts[0] + 50, starts[1] + 50, starts[2] + 50, bz.len() - 3, 2];
        for cut in cuts {
            let err = capped_decoder(&bz[..cut], u64::MAX).read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {err}");
            assert!(err.to_string().contains("truncated bzip2 stream"));
        }
        let err = capped_decoder(&b""[..], 10).read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let data = sample(30_000);
        let mut bz = compress(&data, 1, 10_000);
        let mid = bz.len() / 2;
        bz[mid] ^= 0x55;
        let err = capped_decoder(&bz[..], u64::MAX).read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

        let mut garbage = b"BZh9".to_vec();
        garbage.extend((0..5_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        assert!(capped_decoder(&garbage[..], u64::MAX).read_to_end(&mut Vec::new()).is_err());
        assert!(capped_decoder(&b"not bzip2 at all"[..], 100).read_to_end(&mut Vec::new()).is_err());
    }
}
