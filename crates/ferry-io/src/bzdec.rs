//! A fast bzip2 decoder, written from the bzip2 file format (the counterpart of [`bzenc`](crate::bzenc)).
//!
//! [`decode_stream`] turns exactly one complete bzip2 stream (`BZh1`..`BZh9`, its blocks, the end-of-stream marker
//! and the combined CRC, padded to a byte) into its plain bytes, at most `max_out` of them. Per block: the 48-bit
//! block magic, the block CRC, the (obsolete, still supported) randomised bit, `origPtr`, the 16x16 bitmap of bytes
//! in use, 2-6 Huffman tables with MTF-coded selectors and delta-coded code lengths; the symbols are decoded with a
//! 10-bit first-level lookup table (longer codes, rare, by canonical code ranges), RUNA/RUNB zero runs expanded,
//! the move-to-front undone on a 256-byte list; then the inverse Burrows–Wheeler transform (bzip2's `tt` vector:
//! a counting sort links each position to the next, the walk follows the links) feeds the run-length-1 decoding
//! (4 equal bytes and a count) straight into the output, and the block's CRC (slice-by-8) and the stream's
//! combined CRC are checked.
//!
//! Nothing here trusts the input: every count, length, index and table is validated, reads past the end of the
//! input yield zero bits and are reported as truncation, so a corrupt or hostile stream gives a [`DecodeError`],
//! never a panic, a hang or unbounded memory (the output is capped; the working memory is one `u32` per byte of
//! block size, at most 3.6 MB, kept per thread for reuse).

use std::cell::RefCell;
use std::fmt;

const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
const END_MAGIC: u64 = 0x1772_4538_5090;
/// Bits of the first-level Huffman lookup table: codes up to this long are decoded by one table read.
const FAST_BITS: u32 = 10;
const MAX_CODE_LEN: u32 = 20;
const MAX_GROUPS: usize = 6;
const MAX_ALPHA: usize = 258;
/// libbz2 1.0.8 reads more selectors than this but uses only these (more cannot be needed: 900,000 / 50 + 2).
const MAX_SELECTORS: usize = 18_002;
const GROUP_SIZE: u32 = 50;

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// Is this the output cap, rather than bad input?
    #[cfg(test)]
    pub(crate) fn is_cap(&self) -> bool {
        self.0 == CAP
    }
}

const CAP: &str = "decompressed size exceeds the cap";
const TRUNCATED: &str = "truncated bzip2 stream";

type Result<T> = std::result::Result<T, DecodeError>;

fn fail<T>(msg: &'static str) -> Result<T> {
    Err(DecodeError(msg))
}

/// Decodes exactly one complete bzip2 stream that spans all of `input` (up to 7 padding bits at the end), producing
/// at most `max_out` bytes.
pub fn decode_stream(input: &[u8], max_out: usize) -> Result<Vec<u8>> {
    thread_local! {
        static SCRATCH: RefCell<(Vec<u32>, Vec<Vec<u8>>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            let (tt, segs) = &mut *s;
            decode_with(input, max_out, tt, segs)
        }
        Err(_) => decode_with(input, max_out, &mut Vec::new(), &mut Vec::new()),
    })
}

fn decode_with(input: &[u8], max_out: usize, tt: &mut Vec<u32>, segs: &mut Vec<Vec<u8>>) -> Result<Vec<u8>> {
    let mut bits = Bits::new(input);
    if bits.get(24) != 0x42_5A68 {
        return fail("not a bzip2 stream (no BZh header)");
    }
    let level = bits.get(8).wrapping_sub(u32::from(b'0'));
    if !(1..=9).contains(&level) {
        return fail("bad bzip2 block size in the stream header");
    }
    let block_max = level as usize * 100_000;
    if tt.len() < block_max {
        tt.resize(block_max, 0);
    }
    let tt = tt.get_mut(..block_max).ok_or(DecodeError("internal: scratch too small"))?;

    let mut out = Vec::with_capacity(input.len().saturating_mul(5).clamp(1 << 16, 8 << 20).min(max_out));
    let mut block = Block::new();
    let mut combined: u32 = 0;
    loop {
        let magic = (u64::from(bits.get(24)) << 24) | u64::from(bits.get(24));
        if magic == END_MAGIC {
            let stored = bits.get(32);
            let used = bits.consumed_bits().div_ceil(8);
            if used > input.len() {
                return fail(TRUNCATED);
            }
            if stored != combined {
                return fail("bzip2 stream CRC mismatch");
            }
            if used != input.len() {
                return fail("data after the end of the bzip2 stream");
            }
            return Ok(out);
        }
        if magic != BLOCK_MAGIC {
            return if bits.overrun() { fail(TRUNCATED) } else { fail("bad bzip2 block magic") };
        }
        let stored = bits.get(32);
        let start = out.len();
        block.decode(&mut bits, tt, segs, &mut out, max_out)?;
        let crc = crc32(out.get(start..).unwrap_or_default());
        if crc != stored {
            return fail("bzip2 block CRC mismatch");
        }
        combined = combined.rotate_left(1) ^ crc;
    }
}

/// Most-significant-bit-first bit reader; the bits past the end of the input read as zeros (see [`Bits::overrun`]).
struct Bits<'a> {
    data: &'a [u8],
    /// Next byte to load (may pass `data.len()`: zero padding).
    pos: usize,
    /// The next `count` bits, from the top; the bits below are either zero or the input's next bits.
    buf: u64,
    count: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, buf: 0, count: 0 }
    }

    /// Loads at least 56 bits.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(chunk) = self.data.get(self.pos..).and_then(|s| s.first_chunk::<8>()) {
            self.buf |= u64::from_be_bytes(*chunk) >> self.count;
            let bytes = (63 - self.count) >> 3;
            self.pos += bytes as usize;
            self.count += bytes << 3;
        } else {
            self.refill_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_slow(&mut self) {
        while self.count <= 56 {
            let b = self.data.get(self.pos).copied().unwrap_or(0);
            self.buf |= u64::from(b) << (56 - self.count);
            self.pos += 1;
            self.count += 8;
        }
    }

    /// The next `n` bits (1..=32).
    #[inline(always)]
    fn get(&mut self, n: u32) -> u32 {
        if self.count < n {
            self.refill();
        }
        let v = (self.buf >> (64 - n)) as u32;
        self.consume(n);
        v
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }

    fn consumed_bits(&self) -> usize {
        self.pos * 8 - self.count as usize
    }

    /// Has more been read than the input holds?
    fn overrun(&self) -> bool {
        self.consumed_bits() > self.data.len() * 8
    }
}

/// One Huffman table: a first-level lookup of [`FAST_BITS`] bits, and canonical code ranges for longer codes.
struct Table {
    /// `symbol | length << 9`, or 0 where the code is longer than [`FAST_BITS`] (or invalid).
    fast: [u16; 1 << FAST_BITS],
    /// Per code length: the first canonical code, how many codes, and where their symbols start in `perm`.
    first: [u32; MAX_CODE_LEN as usize + 1],
    count: [u32; MAX_CODE_LEN as usize + 1],
    offset: [u32; MAX_CODE_LEN as usize + 1],
    /// Symbols ordered by (code length, symbol).
    perm: [u16; MAX_ALPHA],
}

impl Table {
    fn new() -> Self {
        Self {
            fast: [0; 1 << FAST_BITS],
            first: [0; MAX_CODE_LEN as usize + 1],
            count: [0; MAX_CODE_LEN as usize + 1],
            offset: [0; MAX_CODE_LEN as usize + 1],
            perm: [0; MAX_ALPHA],
        }
    }

    /// Builds the canonical code bzip2 assigns to `lens` (each 1..=20): codes in order of length, then of symbol.
    fn build(&mut self, lens: &[u8]) -> Result<()> {
        self.count = [0; MAX_CODE_LEN as usize + 1];
        for &l in lens {
            let c = self.count.get_mut(usize::from(l)).ok_or(DecodeError("bad Huffman code length"))?;
            *c += 1;
        }
        let mut code: u32 = 0;
        let mut off: u32 = 0;
        for l in 1..=MAX_CODE_LEN as usize {
            self.first[l] = code;
            self.offset[l] = off;
            code += self.count[l];
            off += self.count[l];
            if code > 1 << l {
                return fail("oversubscribed Huffman code");
            }
            code <<= 1;
        }
        let mut next = self.offset;
        for (sym, &l) in lens.iter().enumerate() {
            let slot = next.get_mut(usize::from(l)).ok_or(DecodeError("bad Huffman code length"))?;
            let p = self.perm.get_mut(*slot as usize).ok_or(DecodeError("bad Huffman table"))?;
            *p = sym as u16;
            *slot += 1;
        }
        self.fast = [0; 1 << FAST_BITS];
        for l in 1..=FAST_BITS as usize {
            let span = 1usize << (FAST_BITS as usize - l);
            for k in 0..self.count[l] {
                let sym = self.perm[(self.offset[l] + k) as usize];
                let code = (self.first[l] + k) as usize;
                let from = code << (FAST_BITS as usize - l);
                let entries = self.fast.get_mut(from..from + span).ok_or(DecodeError("bad Huffman table"))?;
                entries.fill(sym | (l as u16) << 9);
            }
        }
        Ok(())
    }

    /// Decodes one symbol.
    #[inline(always)]
    fn decode(&self, bits: &mut Bits<'_>) -> Result<u32> {
        if bits.count < MAX_CODE_LEN {
            bits.refill();
        }
        let e = self.fast[(bits.buf >> (64 - FAST_BITS)) as usize];
        if e != 0 {
            bits.consume(u32::from(e >> 9));
            return Ok(u32::from(e & 0x1ff));
        }
        self.decode_long(bits)
    }

    #[cold]
    #[inline(never)]
    fn decode_long(&self, bits: &mut Bits<'_>) -> Result<u32> {
        for l in FAST_BITS + 1..=MAX_CODE_LEN {
            let v = (bits.buf >> (64 - l)) as u32;
            let d = v.wrapping_sub(self.first[l as usize]);
            if d < self.count[l as usize] {
                bits.consume(l);
                let sym = self.perm.get((self.offset[l as usize] + d) as usize);
                return sym.map(|&s| u32::from(s)).ok_or(DecodeError("bad Huffman table"));
            }
        }
        fail("invalid Huffman code")
    }
}

/// Per-block working state, reused from block to block.
struct Block {
    tables: Vec<Table>,
    selectors: Vec<u8>,
}

impl Block {
    fn new() -> Self {
        Self { tables: (0..MAX_GROUPS).map(|_| Table::new()).collect(), selectors: Vec::new() }
    }

    /// Decodes one block (after its magic and CRC), appending its bytes to `out`.
    fn decode(
        &mut self,
        bits: &mut Bits<'_>,
        tt: &mut [u32],
        segs: &mut Vec<Vec<u8>>,
        out: &mut Vec<u8>,
        max_out: usize,
    ) -> Result<()> {
        let block_max = tt.len();
        let randomised = bits.get(1) != 0;
        let orig_ptr = bits.get(24) as usize;

        // The bytes in use: a 16-bit map of 16-byte ranges, then a 16-bit map of each range in use.
        let used16 = bits.get(16);
        let mut mtf = [0u8; 256];
        let mut n_in_use = 0usize;
        for i in 0..16 {
            if used16 & (0x8000 >> i) != 0 {
                let map = bits.get(16);
                for j in 0..16 {
                    if map & (0x8000 >> j) != 0 {
                        mtf[n_in_use] = (i * 16 + j) as u8;
                        n_in_use += 1;
                    }
                }
            }
        }
        if n_in_use == 0 {
            return fail("bzip2 block uses no bytes");
        }
        let alpha = n_in_use + 2;

        let n_groups = bits.get(3) as usize;
        if !(2..=MAX_GROUPS).contains(&n_groups) {
            return fail("bad number of Huffman tables");
        }
        let n_selectors = bits.get(15) as usize;
        if n_selectors == 0 {
            return fail("no Huffman table selectors");
        }
        let mut order = [0u8, 1, 2, 3, 4, 5];
        self.selectors.clear();
        for i in 0..n_selectors {
            let mut j = 0usize;
            while bits.get(1) != 0 {
                j += 1;
                if j >= n_groups {
                    return fail("bad Huffman table selector");
                }
            }
            let v = order[j];
            order.copy_within(0..j, 1);
            order[0] = v;
            if i < MAX_SELECTORS {
                self.selectors.push(v);
            }
        }

        let mut lens = [0u8; MAX_ALPHA];
        for table in self.tables.iter_mut().take(n_groups) {
            let mut cur = bits.get(5);
            for len in lens.iter_mut().take(alpha) {
                loop {
                    if !(1..=MAX_CODE_LEN).contains(&cur) {
                        return fail("bad Huffman code length");
                    }
                    if bits.get(1) == 0 {
                        break;
                    }
                    if bits.get(1) == 0 {
                        cur += 1;
                    } else {
                        cur -= 1;
                    }
                }
                *len = cur as u8;
            }
            table.build(&lens[..alpha])?;
            if bits.overrun() {
                return fail(TRUNCATED);
            }
        }

        // The symbols: RUNA/RUNB runs of the front byte, move-to-front positions, end of block.
        let eob = (n_in_use + 1) as u32;
        let mut counts = [0u32; 256];
        let mut n = 0usize;
        let mut run: u32 = 0;
        let mut run_bit: u32 = 0;
        let mut next_selector = 0usize;
        let mut left: u32 = 0;
        let mut table = &self.tables[0];
        loop {
            if left == 0 {
                let Some(&s) = self.selectors.get(next_selector) else {
                    return if bits.overrun() { fail(TRUNCATED) } else { fail("bzip2 block runs past its selectors") };
                };
                next_selector += 1;
                table = &self.tables[usize::from(s)];
                left = GROUP_SIZE;
            }
            left -= 1;
            let sym = table.decode(bits)?;
            if sym <= 1 {
                if run_bit > 20 {
                    return fail("bzip2 zero run too long");
                }
                run += (sym + 1) << run_bit;
                run_bit += 1;
                continue;
            }
            if run > 0 {
                let r = run as usize;
                if r > block_max - n {
                    return fail("bzip2 block longer than its stated size");
                }
                let b = mtf[0];
                tt[n..n + r].fill(u32::from(b));
                counts[usize::from(b)] += run;
                n += r;
                run = 0;
                run_bit = 0;
            }
            if sym == eob {
                break;
            }
            if n >= block_max {
                return fail("bzip2 block longer than its stated size");
            }
            // sym 2..=n_in_use: move-to-front position sym - 1
            let k = (sym - 1) as u8;
            let v = mtf[usize::from(k)];
            mtf_shift(&mut mtf, k);
            mtf[0] = v;
            tt[n] = u32::from(v);
            counts[usize::from(v)] += 1;
            n += 1;
        }
        if bits.overrun() {
            return fail(TRUNCATED);
        }
        if orig_ptr >= n {
            return fail("bad bzip2 origPtr");
        }

        // Inverse BWT: link each position to the next one in the original order.
        let mut next = [0u32; 256];
        let mut sum = 0u32;
        for (nx, &c) in next.iter_mut().zip(counts.iter()) {
            *nx = sum;
            sum += c;
        }
        let tt = &mut tt[..n];
        for i in 0..n {
            let b = (tt[i] & 0xff) as usize;
            let j = next[b] as usize;
            next[b] += 1;
            tt[j] |= (i as u32) << 8;
        }
        let first = tt[orig_ptr] >> 8;
        if randomised { unrle_randomised(tt, first, out, max_out) } else { unrle(tt, first, segs, out, max_out) }
    }
}

/// Moves `mtf[0..k]` one place up.
#[inline(always)]
fn mtf_shift(mtf: &mut [u8; 256], k: u8) {
    let k = usize::from(k);
    if k <= 16 {
        let mut i = k;
        while i > 0 {
            mtf[i] = mtf[i - 1];
            i -= 1;
        }
    } else {
        mtf.copy_within(0..k, 1);
    }
}

/// The run-length-1 decoder's state: the last byte (256: none) and how many times in a row it came.
struct Rle1 {
    last: u32,
    run: u32,
}

impl Rle1 {
    #[inline(always)]
    fn push(&mut self, b: u32, out: &mut Vec<u8>, max_out: usize) -> Result<()> {
        if self.run == 4 {
            push_run(out, self.last as u8, b as usize, max_out)?;
            self.run = 0;
            self.last = 256;
            return Ok(());
        }
        if b == self.last {
            self.run += 1;
        } else {
            self.last = b;
            self.run = 1;
        }
        if out.len() >= max_out {
            return fail(CAP);
        }
        out.push(b as u8);
        Ok(())
    }
}

/// Marks a segment's first position in `tt` (bits 28-31 are free: positions take 20 bits, bytes 8).
const MARK: u32 = 1 << 31;
/// How many segments are walked at once.
const WALKERS: usize = 8;

/// Walks the BWT links from `first` and undoes the run-length-1 coding into `out` (at most `max_out` bytes in all).
///
/// The walk is one long chain of dependent reads scattered over `tt` (up to 3.6 MB, past the L2 cache): most of the
/// decoder's time, spent waiting for memory. So the chain is cut at up to 64 marked positions (`first` and
/// evenly spaced ones) into segments, and [`WALKERS`] segments are walked at once, their reads overlapping; the
/// segments are then put back in chain order (each ends where the next one starts). A corrupt block whose links
/// do not form one cycle through all `n` positions is refused.
fn unrle(tt: &mut [u32], first: u32, segs: &mut Vec<Vec<u8>>, out: &mut Vec<u8>, max_out: usize) -> Result<()> {
    let n = tt.len();
    let bad = || DecodeError("bad bzip2 block (BWT links)");
    let k = (n / 8_192).clamp(1, 64);
    let mut starts: Vec<u32> = (1..k).map(|i| (i * n / k) as u32).filter(|&p| p != first).collect();
    starts.insert(0, first);
    starts.dedup();
    for &p in &starts {
        *tt.get_mut(p as usize).ok_or_else(bad)? |= MARK;
    }
    if segs.len() < starts.len() {
        segs.resize_with(starts.len(), Vec::new);
    }
    let mut ends = vec![u32::MAX; starts.len()];
    for seg in segs.iter_mut() {
        seg.clear();
    }
    // Walkers: (position, segment); segment usize::MAX = idle.
    let mut pos = [0u32; WALKERS];
    let mut seg_of = [usize::MAX; WALKERS];
    let mut next_seg = 0usize;
    let mut active = 0usize;
    loop {
        for w in 0..WALKERS {
            if seg_of[w] == usize::MAX && next_seg < starts.len() {
                // start a segment: its first byte, then on to the next link
                let e = tt[starts[next_seg] as usize];
                segs[next_seg].push(e as u8);
                pos[w] = (e & !MARK) >> 8;
                seg_of[w] = next_seg;
                next_seg += 1;
                active += 1;
            }
        }
        if active == 0 {
            break;
        }
        for w in 0..WALKERS {
            let s = seg_of[w];
            if s == usize::MAX {
                continue;
            }
            let e = *tt.get(pos[w] as usize).ok_or_else(bad)?;
            if e & MARK != 0 {
                ends[s] = pos[w];
                seg_of[w] = usize::MAX;
                active -= 1;
                continue;
            }
            segs[s].push(e as u8);
            pos[w] = e >> 8;
        }
    }
    // Back in chain order: from `first`'s segment, each to the one starting where it ended, n bytes in all.
    let mut rle = Rle1 { last: 256, run: 0 };
    let mut s = 0usize;
    let mut total = 0usize;
    for _ in 0..starts.len() {
        let seg = segs.get(s).ok_or_else(bad)?;
        total += seg.len();
        for &b in seg {
            rle.push(u32::from(b), out, max_out)?;
        }
        let end = ends[s];
        if end == first {
            break;
        }
        s = starts.iter().position(|&p| p == end).ok_or_else(bad)?;
    }
    if total != n {
        return Err(bad());
    }
    Ok(())
}

/// [`unrle`] for a randomised block (old encoders): each byte of the BWT output is first de-randomised.
fn unrle_randomised(tt: &[u32], mut pos: u32, out: &mut Vec<u8>, max_out: usize) -> Result<()> {
    let mut last: u32 = 256;
    let mut run: u32 = 0;
    let mut to_go: u32 = 0;
    let mut r_pos = 0usize;
    for _ in 0..tt.len() {
        let e = *tt.get(pos as usize).ok_or(DecodeError("bad bzip2 block"))?;
        pos = e >> 8;
        if to_go == 0 {
            to_go = u32::from(crate::bzrand::RNUMS[r_pos]);
            r_pos = (r_pos + 1) % crate::bzrand::RNUMS.len();
        }
        to_go -= 1;
        let b = (e & 0xff) ^ u32::from(to_go == 1);
        if run == 4 {
            push_run(out, last as u8, b as usize, max_out)?;
            run = 0;
            last = 256;
            continue;
        }
        if b == last {
            run += 1;
        } else {
            last = b;
            run = 1;
        }
        if out.len() >= max_out {
            return fail(CAP);
        }
        out.push(b as u8);
    }
    Ok(())
}

#[inline(always)]
fn push_run(out: &mut Vec<u8>, b: u8, count: usize, max_out: usize) -> Result<()> {
    if count > max_out - out.len() {
        return fail(CAP);
    }
    out.resize(out.len() + count, b);
    Ok(())
}

/// bzip2's CRC-32 (polynomial 0x04C11DB7, most significant bit first), slice-by-8.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c: u32 = 0xFFFF_FFFF;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let hi = c ^ u32::from_be_bytes([ch[0], ch[1], ch[2], ch[3]]);
        c = CRC[7][(hi >> 24) as usize]
            ^ CRC[6][(hi >> 16) as u8 as usize]
            ^ CRC[5][(hi >> 8) as u8 as usize]
            ^ CRC[4][hi as u8 as usize]
            ^ CRC[3][usize::from(ch[4])]
            ^ CRC[2][usize::from(ch[5])]
            ^ CRC[1][usize::from(ch[6])]
            ^ CRC[0][usize::from(ch[7])];
    }
    for &b in chunks.remainder() {
        c = (c << 8) ^ CRC[0][usize::from((c >> 24) as u8 ^ b)];
    }
    !c
}

/// `CRC[0]` is the byte-at-a-time table; `CRC[k][b]` is `CRC[0][b]` followed by `k` zero bytes.
static CRC: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let p = t[k - 1][i];
            t[k][i] = (p << 8) ^ t[0][(p >> 24) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::Path;
    use std::process::Command;

    use crate::testdata::{Rng, csv as text};

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        (0..len).map(|_| (r.next() >> 32) as u8).collect()
    }

    /// Runs of every length from 1 to ~1,000 (many over 255, the run-length-1 coding's limit), of varying bytes.
    fn runs(len: usize) -> Vec<u8> {
        let mut r = Rng(7);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = match r.next() % 4 {
                0 => 1 + (r.next() % 3) as usize,
                1 => 4 + (r.next() % 4) as usize,
                2 => 250 + (r.next() % 12) as usize,
                _ => (r.next() % 1_000) as usize,
            };
            let b = (r.next() % 5) as u8 + b'a';
            out.extend(std::iter::repeat_n(b, n.min(len - out.len())));
        }
        out
    }

    /// The data sets every encoder is checked on.
    fn data_sets() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("empty", Vec::new()),
            ("one byte", vec![b'x']),
            ("four equal bytes", b"aaaa".to_vec()),
            ("five equal bytes", b"aaaaa".to_vec()),
            ("text", text(300_000)),
            ("noise", noise(120_000, 3)),
            ("runs", runs(400_000)),
            ("one byte 900k", vec![b'z'; 900_000]),
            ("all bytes", (0..=255u8).cycle().take(70_000).collect()),
        ]
    }

    #[allow(clippy::disallowed_methods)] // the reference decoder
    fn libbz2(bz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        bzip2::read::MultiBzDecoder::new(bz).read_to_end(&mut out).unwrap();
        out
    }

    fn libbz2_compress(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn check(name: &str, bz: &[u8], data: &[u8]) {
        match decode_stream(bz, usize::MAX) {
            Ok(out) => assert!(out == data, "{name}: wrong output ({} bytes, want {})", out.len(), data.len()),
            Err(e) => panic!("{name}: {e}"),
        }
    }

    #[test]
    fn crc_matches_the_byte_at_a_time_definition() {
        let data = noise(1_000, 9);
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 1_000] {
            let mut c = 0xFFFF_FFFFu32;
            for &b in &data[..len] {
                c = (c << 8) ^ CRC[0][usize::from((c >> 24) as u8 ^ b)];
            }
            assert_eq!(crc32(&data[..len]), !c, "len {len}");
        }
        assert_eq!(crc32(b"123456789"), 0xFC89_1918); // CRC-32/BZIP2 check value
    }

    #[test]
    fn reads_our_encoder() {
        for (name, data) in data_sets() {
            let bz = crate::bzenc::compress_stream(&data).unwrap();
            check(name, &bz, &data);
        }
        // several blocks, with a run across each block end
        let mut data = text(899_990);
        data.extend(std::iter::repeat_n(b'q', 700));
        data.extend(text(1_000_000));
        let bz = crate::bzenc::compress_stream(&data).unwrap();
        check("multi-block", &bz, &data);
    }

    #[test]
    fn reads_libbz2_at_every_level() {
        for level in 1..=9 {
            for (name, data) in data_sets() {
                let bz = libbz2_compress(&data, level);
                check(&format!("{name}, level {level}"), &bz, &data);
            }
        }
        // level 1: 100 kB blocks, so several blocks, and runs spanning block ends
        let mut data = runs(150_000);
        data.extend(text(150_000));
        data.extend(std::iter::repeat_n(0u8, 90_000));
        let bz = libbz2_compress(&data, 1);
        check("multi-block level 1", &bz, &data);
    }

    #[test]
    fn reads_debian_bzip2() {
        let tool = Path::new("/usr/bin/bzip2");
        if !tool.exists() {
            println!("skipped: /usr/bin/bzip2 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut sets = data_sets();
        let mut big = text(1_200_000);
        big.extend(runs(300_000));
        sets.push(("multi-block", big));
        for (name, data) in sets {
            let plain = dir.path().join("in");
            std::fs::write(&plain, &data).unwrap();
            for level in ["-1", "-9"] {
                let out = Command::new(tool).args([level, "-c"]).arg(&plain).output().unwrap();
                assert!(out.status.success());
                check(&format!("{name}, bzip2 {level}"), &out.stdout, &data);
            }
        }
    }

    #[test]
    fn reads_randomised_blocks() {
        for (name, data) in data_sets() {
            let bz = crate::bzenc::compress_stream_randomised(&data).unwrap();
            assert!(libbz2(&bz) == data, "{name}: the randomised fixture is not what libbz2 reads");
            check(&format!("{name}, randomised"), &bz, &data);
        }
        // Debian's bunzip2 agrees that the fixture is a valid randomised stream
        let tool = Path::new("/usr/bin/bzip2");
        if tool.exists() {
            let dir = tempfile::tempdir().unwrap();
            let data = runs(300_000);
            let path = dir.path().join("r.bz2");
            std::fs::write(&path, crate::bzenc::compress_stream_randomised(&data).unwrap()).unwrap();
            let out = Command::new(tool).arg("-dc").arg(&path).output().unwrap();
            assert!(out.status.success());
            assert!(out.stdout == data);
        }
    }

    #[test]
    fn output_cap_is_honoured() {
        for (name, data) in [("text", text(50_000)), ("runs", runs(50_000)), ("zeros", vec![0u8; 2_000_000])] {
            let bz = crate::bzenc::compress_stream(&data).unwrap();
            assert!(decode_stream(&bz, data.len()).unwrap() == data, "{name}");
            let err = decode_stream(&bz, data.len() - 1).unwrap_err();
            assert!(err.is_cap(), "{name}: {err}");
            assert!(decode_stream(&bz, 0).unwrap_err().is_cap());
        }
        assert!(decode_stream(&crate::bzenc::compress_stream(b"").unwrap(), 0).unwrap().is_empty());
    }

    #[test]
    fn one_stream_exactly() {
        let data = text(20_000);
        let bz = crate::bzenc::compress_stream(&data).unwrap();
        let mut two = bz.clone();
        two.extend_from_slice(&bz);
        assert!(decode_stream(&two, usize::MAX).is_err(), "a second stream is not part of this one");
        let mut tail = bz.clone();
        tail.push(0);
        assert!(decode_stream(&tail, usize::MAX).is_err(), "trailing byte");
        for junk in [&b""[..], b"B", b"BZh", b"BZh0", b"BZh9", b"BZhA1AY&SY", b"not bzip2 at all"] {
            assert!(decode_stream(junk, usize::MAX).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let data = text(30_000);
        for bz in [crate::bzenc::compress_stream(&data).unwrap(), libbz2_compress(&data, 1)] {
            for cut in 0..bz.len() {
                let r = decode_stream(&bz[..cut], usize::MAX);
                assert!(r.is_err(), "cut at {cut} of {} decoded", bz.len());
            }
            check("whole", &bz, &data);
        }
    }

    #[test]
    fn corruption_is_an_error_or_the_exact_output_never_a_panic() {
        let mut rng = Rng(0x5EED);
        let sets = [text(20_000), runs(20_000), noise(5_000, 11), vec![b'a'; 50_000]];
        let mut errors = 0;
        let mut tries = 0;
        for data in &sets {
            for bz in [crate::bzenc::compress_stream(data).unwrap(), libbz2_compress(data, 1)] {
                for _ in 0..1_000 {
                    let mut bad = bz.clone();
                    for _ in 0..1 + rng.next() % 3 {
                        let at = (rng.next() % bad.len() as u64) as usize;
                        bad[at] ^= 1 << (rng.next() % 8);
                        if rng.next().is_multiple_of(4) {
                            bad[at] = (rng.next() >> 40) as u8; // or a whole random byte
                        }
                    }
                    tries += 1;
                    match decode_stream(&bad, 4 << 20) {
                        Ok(out) => assert!(&out == data, "a corrupt stream decoded to different data"),
                        Err(_) => errors += 1,
                    }
                }
            }
        }
        assert!(errors > tries / 2, "{errors} errors in {tries} corrupt streams");
        // pure garbage after a valid header and block magic
        for seed in 1..200u64 {
            let mut g = b"BZh91AY&SY".to_vec();
            g.extend(noise(2_000, seed));
            assert!(decode_stream(&g, 4 << 20).is_err());
        }
    }
}
