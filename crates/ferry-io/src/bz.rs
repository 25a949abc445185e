//! Parallel bzip2 compression, and size-capped multi-stream decompression.
//!
//! bzip2 is the slowest stage of the upstream pipeline (level 9 with libbz2: ~8.5 MB/s per core; our own encoder,
//! `bzenc`, about twice that; decompression ~11-14 MB/s per core, the largest part of the App's import), so
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

// ---------------------------------------------------------------------------------------------------------------
// Parallel decompression of multi-stream input.

/// Most compressed bytes one stream may span for [`parallel_decoder`] to decode it on its own: past this without
/// finding the next stream's start (a single-stream file, as `bzip2` or `lbzip2` write), the rest is decoded
/// sequentially, so memory stays bounded.
pub const MAX_SEGMENT_IN: usize = 4 << 20;
/// Most plain bytes one stream may produce in [`parallel_decoder`] (ours produce at most [`CHUNK_SIZE`]); a stream
/// that produces more sends the rest of the input to the sequential decoder, which the cap then stops.
pub const MAX_SEGMENT_OUT: usize = 4 << 20;
/// Bytes read from the input at a time while looking for stream starts.
const READ_SIZE: usize = 256 << 10;

/// Why a segment could not be decoded on its own: the rest of the input, from its start, is decoded sequentially,
/// which reports a real error precisely (or proves that the stream start was a false one).
#[derive(Debug)]
struct SegmentFailed;

type SegJob = (u64, Arc<Vec<u8>>);
type SegDone = (u64, Result<Vec<u8>, SegmentFailed>);

/// Is `b` the start of a bzip2 stream: `BZh1`..`BZh9` and the magic of a block (or of an empty stream's end)?
fn is_stream_start(b: &[u8]) -> bool {
    const BLOCK: &[u8; 6] = b"\x31\x41\x59\x26\x53\x59";
    const END: &[u8; 6] = b"\x17\x72\x45\x38\x50\x90";
    match b.get(..10) {
        Some([b'B', b'Z', b'h', level, magic @ ..]) => {
            (b'1'..=b'9').contains(level) && (magic == BLOCK || magic == END)
        }
        _ => false,
    }
}

/// The first stream start at or after `from` and before `to`.
fn find_stream_start(buf: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut i = from;
    while i < to {
        let k = buf.get(i..to)?.iter().position(|&b| b == b'B')?;
        if buf.get(i + k..).is_some_and(is_stream_start) {
            return Some(i + k);
        }
        i += k + 1;
    }
    None
}

/// Decode exactly one complete stream that spans exactly `input`, producing at most `max_out` bytes, with our own
/// decoder ([`crate::bzdec`], faster than libbz2); any failure sends the caller to the sequential libbz2 decoder,
/// which reports the error precisely.
fn decode_segment(input: &[u8], max_out: usize) -> Result<Vec<u8>, SegmentFailed> {
    crate::bzdec::decode_stream(input, max_out).map_err(|_| SegmentFailed)
}

fn segment_worker(jobs: &Mutex<mpsc::Receiver<SegJob>>, done: &mpsc::Sender<SegDone>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, input)) = job else { return };
        let out =
            catch_unwind(AssertUnwindSafe(|| decode_segment(&input, MAX_SEGMENT_OUT))).unwrap_or(Err(SegmentFailed));
        if done.send((seq, out)).is_err() {
            return;
        }
    }
}

/// A reader of (multi-stream) bzip2 data that decodes its streams on several threads, with the same output, cap
/// and errors as [`capped_decoder`]; see [`parallel_decoder`].
pub struct ParallelBzDecoder<R: Read> {
    state: DecState<R>,
    produced: u64,
    max_out: u64,
}

enum DecState<R: Read> {
    Parallel(Box<Segments<R>>),
    Sequential(CappedDecoder<io::Chain<io::Cursor<Vec<u8>>, R>>),
    /// Only while switching from one to the other, or after the input failed.
    Gone,
}

/// The parallel state: the input cut into streams, decoded by a pool, delivered in order.
struct Segments<R> {
    input: Option<R>,
    eof: bool,
    /// Input from the start of the segment being collected.
    buf: Vec<u8>,
    /// `buf[1..scanned]` holds no stream start.
    scanned: usize,
    /// No further segment can be cut: the rest goes to the sequential decoder once `pending` is delivered.
    stuck: bool,
    submitted_any: bool,
    jobs: Option<mpsc::Sender<SegJob>>,
    results: mpsc::Receiver<SegDone>,
    /// Segments submitted and not yet delivered, in order, with their input (for a fallback).
    pending: std::collections::VecDeque<(u64, Arc<Vec<u8>>)>,
    ready: BTreeMap<u64, Result<Vec<u8>, SegmentFailed>>,
    next_seq: u64,
    max_in_flight: usize,
    out: Vec<u8>,
    out_pos: usize,
}

enum Next {
    /// `out` holds the next segment's output (maybe empty).
    Got,
    Eof,
    /// Decode these bytes, then the rest of the input, sequentially.
    Fallback(Vec<u8>),
}

/// Decompresses every bzip2 stream of `r` on `threads` threads (0 = the number of cores), producing at most
/// `max_out` bytes: the output, the cap and the errors are those of [`capped_decoder`].
///
/// The input is cut where a byte-aligned stream header (`BZh1`-`BZh9` followed by a block magic) begins — the
/// streams [`ParallelBzWriter`] and `pbzip2` write — and each piece is decoded on its own, at most `2 × threads`
/// pieces in flight. A piece must decode to exactly one complete stream spanning exactly that piece, of at most
/// [`MAX_SEGMENT_OUT`] bytes; otherwise (a false header inside compressed data, corrupt or truncated input, a
/// single-stream file with no header within [`MAX_SEGMENT_IN`] bytes) everything from that piece's start on is
/// decoded sequentially by [`capped_decoder`], which reports the error, if any, as it would have. Memory stays
/// bounded by `2 × threads × (MAX_SEGMENT_IN + MAX_SEGMENT_OUT)`.
#[allow(clippy::disallowed_methods)] // no decoder is created here; the fallback is the capped one
pub fn parallel_decoder<R: Read>(r: R, max_out: u64, threads: usize) -> ParallelBzDecoder<R> {
    let threads = match threads {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (job_tx, job_rx) = mpsc::channel::<SegJob>();
    let (done_tx, results) = mpsc::channel::<SegDone>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let workers = (0..threads)
        .filter(|i| {
            let (jobs, done) = (Arc::clone(&job_rx), done_tx.clone());
            thread::Builder::new()
                .name(format!("ferry-bunzip2-{i}"))
                .spawn(move || segment_worker(&jobs, &done))
                .is_ok()
        })
        .count();
    let segments = Segments {
        input: Some(r),
        eof: false,
        buf: Vec::new(),
        scanned: 1,
        // without a worker, everything is decoded sequentially
        stuck: workers == 0,
        submitted_any: false,
        jobs: (workers > 0).then_some(job_tx),
        results,
        pending: std::collections::VecDeque::new(),
        ready: BTreeMap::new(),
        next_seq: 0,
        max_in_flight: 2 * workers.max(1),
        out: Vec::new(),
        out_pos: 0,
    };
    ParallelBzDecoder { state: DecState::Parallel(Box::new(segments)), produced: 0, max_out }
}

impl<R: Read> Segments<R> {
    /// Read input and submit segments until enough are in flight, the input ends, or no segment can be cut.
    fn fill(&mut self) -> io::Result<()> {
        while self.pending.len() < self.max_in_flight && !self.stuck {
            if self.buf.len() >= 10 {
                if !is_stream_start(&self.buf) {
                    self.stuck = true;
                    break;
                }
                let from = self.scanned.max(1);
                let to = self.buf.len() - 9;
                if let Some(i) = find_stream_start(&self.buf, from, to) {
                    let rest = self.buf.split_off(i);
                    let seg = std::mem::replace(&mut self.buf, rest);
                    self.submit(seg)?;
                    self.scanned = 1;
                    continue;
                }
                self.scanned = to.max(1);
            }
            if self.eof {
                if !self.buf.is_empty() && is_stream_start(&self.buf) {
                    let seg = std::mem::take(&mut self.buf);
                    self.submit(seg)?;
                } else if !self.buf.is_empty() || !self.submitted_any {
                    self.stuck = true;
                }
                break;
            }
            if self.buf.len() > MAX_SEGMENT_IN {
                self.stuck = true;
                break;
            }
            let Some(input) = self.input.as_mut() else { break };
            let len = self.buf.len();
            self.buf.resize(len + READ_SIZE, 0);
            let got = loop {
                match input.read(&mut self.buf[len..]) {
                    Ok(n) => break Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                }
            };
            self.buf.truncate(len + *got.as_ref().unwrap_or(&0));
            if got? == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    fn submit(&mut self, seg: Vec<u8>) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.submitted_any = true;
        let seg = Arc::new(seg);
        let tx = self.jobs.as_ref().ok_or_else(decoders_gone)?;
        tx.send((seq, Arc::clone(&seg))).map_err(|_| decoders_gone())?;
        self.pending.push_back((seq, seg));
        Ok(())
    }

    fn next_output(&mut self) -> io::Result<Next> {
        self.fill()?;
        let Some(&(seq, _)) = self.pending.front() else {
            if self.eof && self.buf.is_empty() && self.submitted_any && !self.stuck {
                return Ok(Next::Eof);
            }
            return Ok(Next::Fallback(std::mem::take(&mut self.buf)));
        };
        while !self.ready.contains_key(&seq) {
            let (s, r) = self.results.recv().map_err(|_| decoders_gone())?;
            self.ready.insert(s, r);
        }
        let result = self.ready.remove(&seq).unwrap_or(Err(SegmentFailed));
        let Some((_, input)) = self.pending.pop_front() else { return Err(decoders_gone()) };
        match result {
            Ok(out) => {
                self.out = out;
                self.out_pos = 0;
                // keep the pool busy while the caller consumes this segment
                self.fill()?;
                Ok(Next::Got)
            }
            Err(SegmentFailed) => {
                self.jobs = None;
                let mut bytes = Arc::unwrap_or_clone(input);
                for (_, seg) in self.pending.drain(..) {
                    bytes.extend_from_slice(&seg);
                }
                bytes.append(&mut self.buf);
                self.ready.clear();
                Ok(Next::Fallback(bytes))
            }
        }
    }
}

fn decoders_gone() -> io::Error {
    io::Error::other("the bzip2 decompression threads stopped unexpectedly; try again")
}

fn cap_exceeded(max_out: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "decompressed size exceeds the cap of {max_out} bytes (possible bzip2 bomb); raise the limit only if \
             this file is expected to be that large"
        ),
    )
}

impl<R: Read> ParallelBzDecoder<R> {
    /// Bytes decompressed (delivered) so far.
    pub fn decompressed_bytes(&self) -> u64 {
        match &self.state {
            DecState::Sequential(d) => d.decompressed_bytes(),
            _ => self.produced,
        }
    }

    /// Whether the decoder gave up cutting the input and decodes the rest sequentially.
    pub fn is_sequential(&self) -> bool {
        matches!(self.state, DecState::Sequential(_))
    }
}

impl<R: Read> Read for ParallelBzDecoder<R> {
    #[allow(clippy::disallowed_methods)] // the capped fallback: the cap is carried over in `produced`
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let seg = match &mut self.state {
                DecState::Sequential(d) => return d.read(buf),
                DecState::Gone => return Err(io::Error::other("the bzip2 input failed earlier; start again")),
                DecState::Parallel(seg) => seg,
            };
            if seg.out_pos < seg.out.len() {
                let left = self.max_out - self.produced;
                if left == 0 {
                    return Err(cap_exceeded(self.max_out));
                }
                let avail = &seg.out[seg.out_pos..];
                let n = buf.len().min(avail.len()).min(usize::try_from(left).unwrap_or(usize::MAX));
                buf[..n].copy_from_slice(&avail[..n]);
                seg.out_pos += n;
                self.produced += n as u64;
                return Ok(n);
            }
            let next = seg.next_output();
            match next {
                Ok(Next::Got) => {}
                Ok(Next::Eof) => return Ok(0),
                Ok(Next::Fallback(bytes)) => {
                    let DecState::Parallel(mut seg) = std::mem::replace(&mut self.state, DecState::Gone) else {
                        return Err(decoders_gone());
                    };
                    seg.jobs = None;
                    let Some(input) = seg.input.take() else { return Err(decoders_gone()) };
                    let inner = MultiBzDecoder::new(io::Cursor::new(bytes).chain(input));
                    self.state =
                        DecState::Sequential(CappedDecoder { inner, produced: self.produced, max_out: self.max_out });
                }
                Err(e) => {
                    self.state = DecState::Gone;
                    return Err(e);
                }
            }
        }
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

    // ---- parallel_decoder ----

    fn par(bz: &[u8], max_out: u64, threads: usize) -> (io::Result<Vec<u8>>, bool) {
        let mut d = parallel_decoder(bz, max_out, threads);
        let mut out = Vec::new();
        let r = d.read_to_end(&mut out).map(|_| out);
        (r, d.is_sequential())
    }

    fn seq(bz: &[u8], max_out: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        capped_decoder(bz, max_out).read_to_end(&mut out).map(|_| out)
    }

    /// Pseudo-random bytes: bzip2 cannot shrink them.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn parallel_decoder_matches_sequential_on_our_streams() {
        for (len, chunk) in [(0, 1_000), (1, 1_000), (200_000, 1_000), (2 * CHUNK_SIZE + 12_345, CHUNK_SIZE)] {
            let data = sample(len);
            let bz = compress(&data, 2, chunk);
            for threads in [1, 2, 3] {
                let (out, sequential) = par(&bz, u64::MAX, threads);
                assert_eq!(out.unwrap(), data, "len {len} threads {threads}");
                assert!(!sequential, "our streams must be decoded in parallel (len {len})");
            }
            // the cap: exact size is fine, one byte less is refused with the sequential decoder's message
            assert_eq!(par(&bz, data.len() as u64, 2).0.unwrap(), data);
            if !data.is_empty() {
                let cap = data.len() as u64 - 1;
                let mut d = parallel_decoder(&bz[..], cap, 2);
                let err = d.read_to_end(&mut Vec::new()).unwrap_err();
                let want = seq(&bz, cap).unwrap_err();
                assert_eq!(err.kind(), want.kind());
                assert_eq!(err.to_string(), want.to_string());
                assert_eq!(d.decompressed_bytes(), cap);
            }
        }
    }

    #[test]
    fn parallel_decoder_reads_debian_bzip2_and_lbzip2_output() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(3 * CHUNK_SIZE + 4_321);
        let plain = dir.path().join("x.csv");
        std::fs::write(&plain, &data).unwrap();
        let mut tried = 0;
        for (tool, args) in [
            ("/usr/bin/bzip2", &["-9", "-c"][..]),
            ("/usr/bin/bzip2", &["-1", "-c"][..]),
            ("/usr/bin/lbzip2", &["-9", "-c", "-n", "2"][..]),
            ("/usr/bin/pbzip2", &["-9", "-c", "-p2"][..]),
        ] {
            if !Path::new(tool).exists() {
                println!("skipped: {tool} is not installed");
                continue;
            }
            tried += 1;
            let out = Command::new(tool).args(args).arg(&plain).output().unwrap();
            assert!(out.status.success(), "{tool} failed");
            let bz = out.stdout;
            // and the same tool's output twice, concatenated: a multi-stream file from Debian's tools
            let mut twice = bz.clone();
            twice.extend_from_slice(&bz);
            let mut data2 = data.clone();
            data2.extend_from_slice(&data);
            for threads in [1, 2] {
                assert_eq!(par(&bz, u64::MAX, threads).0.unwrap(), data, "{tool} {args:?}");
                assert_eq!(par(&twice, u64::MAX, threads).0.unwrap(), data2, "{tool} {args:?} twice");
            }
            assert_eq!(seq(&twice, u64::MAX).unwrap(), data2);
            // Debian's bunzip2 reads what we wrote, and we read what it decompresses the same
            let ours = compress(&data, 2, 100_000);
            let ours_path = dir.path().join("ours.bz2");
            std::fs::write(&ours_path, &ours).unwrap();
            if tool.ends_with("/bzip2") {
                let back = Command::new(tool).arg("-dc").arg(&ours_path).output().unwrap();
                assert_eq!(back.stdout, par(&ours, u64::MAX, 2).0.unwrap());
            }
        }
        if tried == 0 {
            println!("skipped: neither bzip2 nor lbzip2 is installed");
        }
    }

    #[test]
    fn parallel_decoder_falls_back_on_a_long_single_stream() {
        // one stream longer than MAX_SEGMENT_IN: no cut is found, the rest is decoded sequentially
        let data = noise(MAX_SEGMENT_IN + 300_000);
        let bz = compress_chunk(&data, Compression::new(1)).unwrap();
        assert!(bz.len() > MAX_SEGMENT_IN);
        let mut stream = compress(&sample(5_000), 1, 1_000); // and a few short streams before it
        let mut want = sample(5_000);
        stream.extend_from_slice(&bz);
        want.extend_from_slice(&data);
        let (out, sequential) = par(&stream, u64::MAX, 2);
        assert!(out.unwrap() == want);
        assert!(sequential);
    }

    #[test]
    fn parallel_decoder_refuses_bombs_and_bad_input_like_the_sequential_one() {
        // a bomb: one stream expanding past MAX_SEGMENT_OUT goes to the capped sequential decoder
        let zeros = vec![0u8; 64 << 20];
        let bomb = compress_chunk(&zeros, Compression::new(9)).unwrap();
        let mut d = parallel_decoder(&bomb[..], 1 << 20, 2);
        let err = io::copy(&mut d, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("possible bzip2 bomb"), "{err}");
        assert_eq!(d.decompressed_bytes(), 1 << 20);
        // many small streams over the cap: stopped at the cap in parallel mode
        let data = sample(300_000);
        let bz = compress(&data, 2, 1_000);
        let mut d = parallel_decoder(&bz[..], 100_000, 2);
        let err = io::copy(&mut d, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("exceeds the cap of 100000 bytes"), "{err}");
        assert_eq!(d.decompressed_bytes(), 100_000);

        let data = sample(30_000);
        let bz = compress(&data, 2, 10_000);
        let starts = stream_starts(&bz);
        // truncated anywhere: the same error as sequential decoding
        for cut in [starts[0] + 50, starts[1] + 50, starts[2] + 50, bz.len() - 3, 2, 0] {
            let Err(err) = par(&bz[..cut], u64::MAX, 2).0 else { panic!("cut at {cut} decoded without error") };
            let want = seq(&bz[..cut], u64::MAX).unwrap_err();
            assert_eq!(err.kind(), want.kind(), "cut at {cut}: {err}");
            assert_eq!(err.to_string(), want.to_string(), "cut at {cut}");
        }
        // cut exactly between streams: valid, as for the sequential decoder (the manifest's digests catch it)
        assert_eq!(par(&bz[..starts[2]], u64::MAX, 2).0.unwrap(), seq(&bz[..starts[2]], u64::MAX).unwrap());
        // corrupt bytes in each stream, a fake stream header inside a stream, and trailing garbage
        for at in [starts[0] + 40, starts[1] + 40, starts[2] + 40, bz.len() - 2] {
            let mut bad = bz.clone();
            bad[at] ^= 0x55;
            let Err(err) = par(&bad, u64::MAX, 2).0 else { panic!("corrupt at {at} decoded without error") };
            assert_eq!(err.kind(), seq(&bad, u64::MAX).unwrap_err().kind(), "corrupt at {at}");
            let mut fake = bz.clone();
            fake[starts[1] + 30..starts[1] + 40].copy_from_slice(b"BZh91AY&SY");
            let Err(err) = par(&fake, u64::MAX, 2).0 else { panic!("a fake header decoded without error") };
            assert_eq!(err.kind(), seq(&fake, u64::MAX).unwrap_err().kind());
        }
        for tail in [&b"BZh91AY&SY garbage"[..], b"xyz", b"BZh"] {
            let mut t = bz.clone();
            t.extend_from_slice(tail);
            assert!(par(&t, u64::MAX, 2).0.is_err(), "tail {tail:?}");
            assert!(seq(&t, u64::MAX).is_err());
        }
        for junk in [&b""[..], b"not bzip2 at all", b"BZh9"] {
            let err = par(junk, 100, 2).0.unwrap_err();
            assert_eq!(err.kind(), seq(junk, 100).unwrap_err().kind(), "{junk:?}");
        }
    }
}
