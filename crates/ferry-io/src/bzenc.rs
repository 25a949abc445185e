//! A fast level-9 bzip2 encoder, written from the bzip2 file format.
//!
//! The costly step of bzip2 is the Burrows–Wheeler transform, which sorts the *cyclic rotations*
//! of a block. We get it from a suffix array built by `libsais` (MIT/Apache-2.0, the fastest
//! suffix sorter we measured): a Lyndon word's rotations sort in the same order as its suffixes,
//! so each block is first rotated to its least rotation (which is a Lyndon word when the block is
//! not periodic; periodic blocks are reduced to their root). The rest — run-length coding of
//! runs of 4–255 bytes, move-to-front with RUNA/RUNB zero runs, 2–6 Huffman tables chosen per
//! group of 50 symbols, block and stream CRCs — follows the format directly.
//!
//! [`compress_stream`] turns a byte slice into one complete bzip2 stream (`BZh9`, blocks of at
//! most 899,981 run-length-coded bytes, the end-of-stream marker). The output is what `bunzip2`
//! and `bzip2::read::MultiBzDecoder` read; the tests check both.

/// Largest run-length-coded block at level 9 (bzip2 leaves 19 bytes of slack under 900,000).
const MAX_BLOCK: usize = 900_000 - 19;
/// Symbols per Huffman-table selector.
const GROUP: usize = 50;
/// Longest Huffman code we make (the format allows 20; bzip2 makes at most 17).
const MAX_CODE_LEN: u8 = 17;
/// Table-refinement passes over a block (bzip2 does 4).
const ITERATIONS: usize = 4;

/// Compresses `data` into one complete level-9 bzip2 stream. `None` only if the suffix sorter
/// reports an error (it does not on valid input); the caller then falls back to libbz2.
pub fn compress_stream(data: &[u8]) -> Option<Vec<u8>> {
    compress_with(data, false)
}

/// [`compress_stream`] with every block randomised, as bzip2 0.9.0 and older did for very repetitive blocks (the
/// bit is obsolete, but decoders must still read it): the decoder tests need such streams.
#[cfg(test)]
pub(crate) fn compress_stream_randomised(data: &[u8]) -> Option<Vec<u8>> {
    compress_with(data, true)
}

fn compress_with(data: &[u8], randomise: bool) -> Option<Vec<u8>> {
    let mut out = BitWriter::with_capacity(data.len() / 3 + 64);
    out.put(8, u32::from(b'B'));
    out.put(8, u32::from(b'Z'));
    out.put(8, u32::from(b'h'));
    out.put(8, u32::from(b'9'));
    let mut combined: u32 = 0;
    let mut block = Vec::with_capacity(MAX_BLOCK);
    let mut work = Work::default();
    let mut pos = 0;
    while pos < data.len() {
        let (used, crc) = rle1(&data[pos..], &mut block);
        pos += used;
        combined = combined.rotate_left(1) ^ crc;
        if randomise {
            randomise_block(&mut block);
        }
        write_block(&block, crc, randomise, &mut work, &mut out)?;
    }
    out.put(24, 0x17_7245);
    out.put(24, 0x38_5090);
    out.put(32, combined);
    Some(out.finish())
}

/// Run-length codes as much of `data` as fits one block into `block` (runs of 4..=255 equal
/// bytes become the 4 bytes and a count 0..=251). Returns the input bytes consumed and their CRC.
fn rle1(data: &[u8], block: &mut Vec<u8>) -> (usize, u32) {
    block.clear();
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if i + 1 >= data.len() || data[i + 1] != b {
            // the common case: a run of one
            if block.len() >= MAX_BLOCK {
                break;
            }
            block.push(b);
            i += 1;
            continue;
        }
        let mut run = 2;
        while run < 255 && i + run < data.len() && data[i + run] == b {
            run += 1;
        }
        let need = if run >= 4 { 5 } else { run };
        if block.len() + need > MAX_BLOCK {
            break;
        }
        if run >= 4 {
            block.extend_from_slice(&[b, b, b, b, (run - 4) as u8]);
        } else {
            block.extend(std::iter::repeat_n(b, run));
        }
        i += run;
    }
    let mut crc = Crc::new();
    crc.update(&data[..i]);
    (i, crc.finish())
}

/// Scratch space reused from block to block.
#[derive(Default)]
struct Work {
    rotated: Vec<u8>,
    sa: Vec<i32>,
    bwt: Vec<u8>,
    mtf: Vec<u16>,
}

/// XORs the block with bzip2's randomisation mask (its own inverse).
fn randomise_block(block: &mut [u8]) {
    let (mut to_go, mut r_pos) = (0u32, 0usize);
    for b in block.iter_mut() {
        if to_go == 0 {
            to_go = u32::from(crate::bzrand::RNUMS[r_pos]);
            r_pos = (r_pos + 1) % crate::bzrand::RNUMS.len();
        }
        to_go -= 1;
        *b ^= u8::from(to_go == 1);
    }
}

fn write_block(block: &[u8], crc: u32, randomised: bool, work: &mut Work, out: &mut BitWriter) -> Option<()> {
    let n = block.len();
    work.bwt.clear();
    work.bwt.resize(n, 0);
    let orig_ptr = bwt(block, &mut work.bwt, &mut work.rotated, &mut work.sa)?;

    // Symbols in use, and the byte -> index map.
    let mut in_use = [false; 256];
    for &b in block {
        in_use[usize::from(b)] = true;
    }
    let mut unseq = [0u8; 256];
    let mut n_in_use = 0usize;
    for (b, &used) in in_use.iter().enumerate() {
        if used {
            unseq[b] = n_in_use as u8;
            n_in_use += 1;
        }
    }
    let alpha = n_in_use + 2;
    let eob = (n_in_use + 1) as u16;

    // Move-to-front and RUNA/RUNB coding of zero runs.
    let mut freq = [0u32; 258];
    let mtf = &mut work.mtf;
    mtf.clear();
    let mut order = [0u8; 256];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u8;
    }
    let mut zeros: u32 = 0;
    for &b in work.bwt.iter() {
        let s = unseq[usize::from(b)];
        if order[0] == s {
            zeros += 1;
            continue;
        }
        if zeros > 0 {
            push_zero_run(zeros, mtf, &mut freq);
            zeros = 0;
        }
        // move s to the front
        let mut j = 1;
        let mut prev = order[0];
        while order[j] != s {
            std::mem::swap(&mut order[j], &mut prev);
            j += 1;
        }
        order[j] = prev;
        order[0] = s;
        let sym = (j + 1) as u16;
        mtf.push(sym);
        freq[usize::from(sym)] += 1;
    }
    if zeros > 0 {
        push_zero_run(zeros, mtf, &mut freq);
    }
    mtf.push(eob);
    freq[usize::from(eob)] += 1;

    let (tables, selectors) = choose_tables(mtf, &freq[..alpha], alpha);
    let n_groups = tables.len();

    // Block header.
    out.put(24, 0x31_4159);
    out.put(24, 0x26_5359);
    out.put(32, crc);
    out.put(1, u32::from(randomised));
    out.put(24, orig_ptr as u32);
    let mut used16 = 0u32;
    for i in 0..16 {
        if in_use[i * 16..i * 16 + 16].iter().any(|&u| u) {
            used16 |= 1 << (15 - i);
        }
    }
    out.put(16, used16);
    for i in 0..16 {
        if used16 & (1 << (15 - i)) != 0 {
            let mut bits = 0u32;
            for j in 0..16 {
                if in_use[i * 16 + j] {
                    bits |= 1 << (15 - j);
                }
            }
            out.put(16, bits);
        }
    }
    out.put(3, n_groups as u32);
    out.put(15, selectors.len() as u32);
    let mut sel_order: Vec<u8> = (0..n_groups as u8).collect();
    for &s in &selectors {
        let j = sel_order.iter().position(|&t| t == s).unwrap_or(0);
        sel_order[..=j].rotate_right(1);
        for _ in 0..j {
            out.put(1, 1);
        }
        out.put(1, 0);
    }
    for t in &tables {
        let mut cur = u32::from(t.len[0]);
        out.put(5, cur);
        for &l in &t.len[..alpha] {
            let l = u32::from(l);
            while cur < l {
                out.put(2, 2);
                cur += 1;
            }
            while cur > l {
                out.put(2, 3);
                cur -= 1;
            }
            out.put(1, 0);
        }
    }
    // Data.
    for (g, chunk) in mtf.chunks(GROUP).enumerate() {
        let t = &tables[usize::from(selectors[g])];
        for &s in chunk {
            let s = usize::from(s);
            out.put(u32::from(t.len[s]), t.code[s]);
        }
    }
    Some(())
}

/// Appends a run of `n` (>= 1) MTF zeros as RUNA (0) / RUNB (1) digits, bijective base 2.
fn push_zero_run(mut n: u32, mtf: &mut Vec<u16>, freq: &mut [u32; 258]) {
    n -= 1;
    loop {
        let sym = (n & 1) as u16;
        mtf.push(sym);
        freq[usize::from(sym)] += 1;
        if n < 2 {
            break;
        }
        n = (n - 2) / 2;
    }
}

/// The cyclic-rotation BWT of `s` into `out`; returns the row of `s` itself (bzip2's origPtr).
fn bwt(s: &[u8], out: &mut [u8], rotated: &mut Vec<u8>, sa: &mut Vec<i32>) -> Option<usize> {
    let n = s.len();
    if n == 1 {
        out[0] = s[0];
        return Some(0);
    }
    rotated.clear();
    rotated.extend_from_slice(s);
    rotated.extend_from_slice(s);
    let (start, period) = least_rotation(rotated);
    if let Some(p) = period {
        // s is its first p bytes repeated n/p times: each row of the root's matrix stands for
        // n/p equal rows, with equal last bytes.
        let k = n / p;
        let mut root = vec![0u8; p];
        let ptr = bwt(&s[..p], &mut root, rotated, sa)?;
        for (i, &b) in root.iter().enumerate() {
            out[i * k..(i + 1) * k].fill(b);
        }
        return Some(ptr * k);
    }
    // w = s rotated to start at `start`: a Lyndon word, whose rotations sort like its suffixes.
    let w = &rotated[start..start + n];
    sa.clear();
    sa.resize(n, 0);
    let n32 = i32::try_from(n).ok()?;
    // SAFETY: `w` holds n bytes and `sa` n i32s, as libsais requires with fs = 0; freq may
    // be null.
    let rc = unsafe { libsais_sys::libsais::libsais(w.as_ptr(), sa.as_mut_ptr(), n32, 0, std::ptr::null_mut()) };
    if rc != 0 {
        return None;
    }
    // s begins at offset (n - start) % n of w.
    let s_at = ((n - start) % n) as i32;
    let mut orig = None;
    for (k, (&i, o)) in sa.iter().zip(out.iter_mut()).enumerate() {
        let i = i as usize;
        *o = w[if i == 0 { n - 1 } else { i - 1 }];
        if i as i32 == s_at {
            orig = Some(k);
        }
    }
    orig
}

/// The start of the least cyclic rotation of `s`, and the (cyclic) period of `s` if it is a
/// proper power (two distinct rotations are equal). `dbl` is `s` twice over.
///
/// The least rotation starts with the least byte, so a tournament among the positions of that
/// byte finds it, usually after a few bytes per comparison (text: one candidate per line). When
/// comparisons run long (highly repetitive data), the linear-time scan takes over.
fn least_rotation(dbl: &[u8]) -> (usize, Option<usize>) {
    let n = dbl.len() / 2;
    let s = &dbl[..n];
    let Some(&c) = s.iter().min() else { return (0, None) };
    let mut best = s.iter().position(|&b| b == c).unwrap_or(0);
    let mut budget = 2 * n;
    for p in best + 1..n {
        if s[p] != c {
            continue;
        }
        let m = mismatch(&dbl[p..p + n], &dbl[best..best + n]);
        if m >= n {
            // the first occurrence of the least rotation is `best`; it comes back at p
            return (best, Some(gcd(p - best, n)));
        }
        if dbl[p + m] < dbl[best + m] {
            best = p;
        }
        budget = match budget.checked_sub(m + 8) {
            Some(b) => b,
            None => return least_rotation_linear(dbl),
        };
    }
    (best, None)
}

/// [`least_rotation`] by the classic two-candidate scan: linear time whatever the data.
fn least_rotation_linear(dbl: &[u8]) -> (usize, Option<usize>) {
    let n = dbl.len() / 2;
    let (mut i, mut j) = (0usize, 1usize);
    while i < n && j < n {
        let m = mismatch(&dbl[i..i + n], &dbl[j..j + n]);
        if m >= n {
            // rotations i and j are equal: s repeats with period gcd(|i - j|, n) < n
            return (i.min(j), Some(gcd(i.abs_diff(j), n)));
        }
        if dbl[i + m] > dbl[j + m] {
            i += m + 1;
        } else {
            j += m + 1;
        }
        if i == j {
            j += 1;
        }
    }
    (i.min(j), None)
}

/// Index of the first byte where `a` and `b` (of equal length) differ, or their length.
#[inline]
fn mismatch(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let mut k = 0;
    while k + 8 <= len {
        let x = u64::from_le_bytes(a[k..k + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(b[k..k + 8].try_into().unwrap_or_default());
        if x != y {
            return k + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        k += 8;
    }
    while k < len && a[k] == b[k] {
        k += 1;
    }
    k
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

struct Table {
    len: [u8; 258],
    code: [u32; 258],
}

/// Picks 2..=6 Huffman tables and a table per group of 50 symbols (bzip2's scheme: tables start
/// on contiguous frequency bands, then each pass assigns every group to its cheapest table and
/// rebuilds the tables from the groups they got).
fn choose_tables(mtf: &[u16], freq: &[u32], alpha: usize) -> (Vec<Table>, Vec<u8>) {
    let n_mtf = mtf.len();
    let n_groups = match n_mtf {
        0..200 => 2,
        200..600 => 3,
        600..1200 => 4,
        1200..2400 => 5,
        _ => 6,
    };
    let mut lens = vec![[0u8; 258]; n_groups];
    // Initial tables: band t gets short codes for its symbols.
    let mut rem: u64 = n_mtf as u64;
    let mut gs = 0usize;
    for part in (1..=n_groups).rev() {
        let target = rem / part as u64;
        let mut ge = gs;
        let mut acc: u64 = 0;
        while ge < alpha && (acc < target || ge == gs) {
            acc += u64::from(freq[ge]);
            ge += 1;
        }
        // ge is one past the band's end
        if ge > gs + 1 && part != n_groups && part != 1 && (n_groups - part) % 2 == 1 {
            ge -= 1;
            acc -= u64::from(freq[ge]);
        }
        for (v, l) in lens[part - 1][..alpha].iter_mut().enumerate() {
            *l = if v >= gs && v < ge { 0 } else { 15 };
        }
        gs = ge;
        rem = rem.saturating_sub(acc);
    }

    let n_sel = n_mtf.div_ceil(GROUP);
    let mut selectors = vec![0u8; n_sel];
    let mut packed = vec![0u64; alpha];
    let mut tfreq = vec![[0u32; 258]; n_groups];
    for _ in 0..ITERATIONS {
        for (v, p) in packed.iter_mut().enumerate() {
            let mut x = 0u64;
            for (t, l) in lens.iter().enumerate() {
                x |= u64::from(l[v]) << (10 * t);
            }
            *p = x;
        }
        for f in tfreq.iter_mut() {
            f.fill(0);
        }
        for (g, chunk) in mtf.chunks(GROUP).enumerate() {
            let mut cost = 0u64;
            for &s in chunk {
                cost += packed[usize::from(s)];
            }
            let mut best = 0;
            let mut best_cost = u64::MAX;
            for t in 0..n_groups {
                let c = (cost >> (10 * t)) & 0x3ff;
                if c < best_cost {
                    best_cost = c;
                    best = t;
                }
            }
            selectors[g] = best as u8;
            let f = &mut tfreq[best];
            for &s in chunk {
                f[usize::from(s)] += 1;
            }
        }
        for (l, f) in lens.iter_mut().zip(tfreq.iter()) {
            code_lengths(&f[..alpha], &mut l[..alpha], MAX_CODE_LEN);
        }
    }
    let tables = lens
        .into_iter()
        .map(|len| {
            let mut code = [0u32; 258];
            let mut next = 0u32;
            for l in 1..=MAX_CODE_LEN {
                for v in 0..alpha {
                    if len[v] == l {
                        code[v] = next;
                        next += 1;
                    }
                }
                next <<= 1;
            }
            Table { len, code }
        })
        .collect();
    (tables, selectors)
}

/// Huffman code lengths for `freq` (zero counts as one, so every symbol gets a code), at most
/// `max` bits: when the tree is too deep, the weights are flattened and the tree rebuilt.
fn code_lengths(freq: &[u32], len: &mut [u8], max: u8) {
    let n = freq.len();
    let mut w: Vec<u64> = freq.iter().map(|&f| u64::from(f.max(1)) << 8).collect();
    loop {
        // Two-queue Huffman over symbols sorted by weight; weights carry depth in the low byte
        // so that ties prefer shallower trees (as bzip2 does).
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by_key(|&i| w[i]);
        let mut parent = vec![0usize; 2 * n];
        let mut nodes: Vec<u64> = idx.iter().map(|&i| w[i]).collect();
        let mut leaf = 0usize;
        let mut inner = n;
        let pick = |nodes: &Vec<u64>, leaf: &mut usize, inner: &mut usize| -> usize {
            if *leaf < n && (*inner >= nodes.len() || nodes[*leaf] <= nodes[*inner]) {
                *leaf += 1;
                *leaf - 1
            } else {
                *inner += 1;
                *inner - 1
            }
        };
        while nodes.len() < 2 * n - 1 {
            let a = pick(&nodes, &mut leaf, &mut inner);
            let b = pick(&nodes, &mut leaf, &mut inner);
            let (wa, wb) = (nodes[a], nodes[b]);
            let depth = (wa & 0xff).max(wb & 0xff) + 1;
            let id = nodes.len();
            nodes.push(((wa & !0xff) + (wb & !0xff)) | depth);
            parent[a] = id;
            parent[b] = id;
        }
        let root = nodes.len() - 1;
        let mut depth = vec![0u8; nodes.len()];
        let mut too_long = false;
        for id in (0..root).rev() {
            depth[id] = depth[parent[id]].saturating_add(1);
        }
        for (k, &i) in idx.iter().enumerate() {
            len[i] = depth[k];
            if depth[k] > max {
                too_long = true;
            }
        }
        if !too_long {
            return;
        }
        for x in w.iter_mut() {
            let f = *x >> 8;
            *x = (1 + f / 2) << 8;
        }
    }
}

/// bzip2's CRC-32 (polynomial 0x04C11DB7, most significant bit first).
struct Crc(u32);

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

impl Crc {
    fn new() -> Self {
        Self(0xFFFF_FFFF)
    }
    fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = (c << 8) ^ CRC_TABLE[((c >> 24) as u8 ^ b) as usize];
        }
        self.0 = c;
    }
    fn finish(&self) -> u32 {
        !self.0
    }
}

/// Most-significant-bit-first bit writer.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    bits: u32,
}

impl BitWriter {
    fn with_capacity(cap: usize) -> Self {
        Self { out: Vec::with_capacity(cap), acc: 0, bits: 0 }
    }
    /// Appends the low `n` (<= 32) bits of `v`.
    #[inline]
    fn put(&mut self, n: u32, v: u32) {
        self.acc = (self.acc << n) | u64::from(v);
        self.bits += n;
        if self.bits >= 32 {
            self.bits -= 32;
            self.out.extend_from_slice(&((self.acc >> self.bits) as u32).to_be_bytes());
        }
    }
    fn finish(mut self) -> Vec<u8> {
        while self.bits >= 8 {
            self.bits -= 8;
            self.out.push((self.acc >> self.bits) as u8);
        }
        if self.bits > 0 {
            self.out.push((self.acc << (8 - self.bits)) as u8);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::Path;
    use std::process::{Command, Stdio};

    use crate::testdata::{Rng, csv};

    fn random_bytes(len: usize, alphabet: u64, rng: &mut Rng) -> Vec<u8> {
        (0..len).map(|_| rng.below(alphabet) as u8).collect()
    }

    #[allow(clippy::disallowed_methods)] // the reference decoder, to check the encoder against
    fn decode(bz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        bzip2::read::MultiBzDecoder::new(bz).read_to_end(&mut out).unwrap();
        out
    }

    /// Compresses every case as its own stream, checks each with `MultiBzDecoder`, then has
    /// Debian's `bunzip2` test and decompress their concatenation (one multi-stream file).
    fn round_trip(cases: &[Vec<u8>]) {
        let mut all_bz = Vec::new();
        let mut all = Vec::new();
        for (i, data) in cases.iter().enumerate() {
            let bz = compress_stream(data).unwrap();
            assert!(bz.starts_with(b"BZh9"));
            assert!(decode(&bz) == *data, "case {i} ({} bytes) does not round-trip", data.len());
            all_bz.extend_from_slice(&bz);
            all.extend_from_slice(data);
        }
        let bunzip2 = Path::new("/usr/bin/bunzip2");
        if !bunzip2.exists() {
            println!("skipped the bunzip2 check: /usr/bin/bunzip2 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cases.bz2");
        std::fs::write(&file, &all_bz).unwrap();
        let t = Command::new(bunzip2).arg("-t").arg(&file).output().unwrap();
        assert!(t.status.success(), "bunzip2 -t: {}", String::from_utf8_lossy(&t.stderr));
        let mut child = Command::new(bunzip2).arg("-c").arg(&file).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        assert!(child.wait().unwrap().success());
        assert!(out == all, "bunzip2 output differs ({} bytes, want {})", out.len(), all.len());
    }

    /// The BWT as its definition says: sort all rotations, take the last column.
    fn naive_bwt(s: &[u8]) -> (Vec<u8>, usize) {
        let n = s.len();
        let mut rows: Vec<usize> = (0..n).collect();
        rows.sort_by(|&a, &b| {
            let ra = s[a..].iter().chain(&s[..a]);
            let rb = s[b..].iter().chain(&s[..b]);
            ra.cmp(rb)
        });
        let last = rows.iter().map(|&r| s[(r + n - 1) % n]).collect();
        // any row equal to s itself will do; report the first
        let rot = |r: usize| s[r..].iter().chain(&s[..r]).copied().collect::<Vec<u8>>();
        let ptr = rows.iter().position(|&r| rot(r) == s).unwrap();
        (last, ptr)
    }

    #[test]
    fn bwt_matches_sorting_rotations() {
        let mut rng = Rng(0x5eed_1234);
        let mut inputs: Vec<Vec<u8>> =
            vec![b"banana".to_vec(), b"abab".to_vec(), b"aaaa".to_vec(), b"x".to_vec(), b"abcabcab".to_vec()];
        for _ in 0..400 {
            let len = 1 + rng.below(40) as usize;
            let alphabet = 1 + rng.below(4);
            let unit = random_bytes(len, alphabet, &mut rng);
            let reps = 1 + rng.below(4) as usize;
            inputs.push(unit.repeat(reps));
        }
        let (mut rotated, mut sa) = (Vec::new(), Vec::new());
        for s in inputs {
            let mut out = vec![0u8; s.len()];
            let ptr = bwt(&s, &mut out, &mut rotated, &mut sa).unwrap();
            let (want, _) = naive_bwt(&s);
            assert_eq!(out, want, "BWT of {s:?}");
            let rot: Vec<u8> = {
                // the row at ptr must be s itself: check via the naive sorted order
                let n = s.len();
                let mut rows: Vec<usize> = (0..n).collect();
                rows.sort_by(|&a, &b| s[a..].iter().chain(&s[..a]).cmp(s[b..].iter().chain(&s[..b])));
                let r = rows[ptr];
                s[r..].iter().chain(&s[..r]).copied().collect()
            };
            assert_eq!(rot, s, "origPtr of {s:?}");
        }
    }

    #[test]
    fn least_rotation_tournament_agrees_with_linear_scan() {
        let mut rng = Rng(7);
        for round in 0..500 {
            let len = 1 + rng.below(300) as usize;
            let s: Vec<u8> = match round % 3 {
                0 => random_bytes(len, 1 + rng.below(3), &mut rng),
                // long near-repeats: the tournament runs out of budget and falls back
                1 => {
                    let mut v = vec![b'a'; len];
                    v[rng.below(len as u64) as usize] = b'b';
                    v.repeat(1 + rng.below(3) as usize)
                }
                _ => random_bytes(len, 256, &mut rng),
            };
            let dbl = [s.as_slice(), s.as_slice()].concat();
            let (a, pa) = least_rotation(&dbl);
            let (b, pb) = least_rotation_linear(&dbl);
            assert_eq!(pa.is_some(), pb.is_some(), "{s:?}");
            if let (Some(pa), Some(pb)) = (pa, pb) {
                // both are periods of s: s is a power of its first gcd bytes
                let g = gcd(pa, pb);
                assert!(s.chunks(g).all(|c| c == &s[..g]), "{s:?}");
            } else {
                assert_eq!(a, b, "{s:?}");
            }
        }
    }

    #[test]
    fn edge_cases_round_trip() {
        let mut rng = Rng(42);
        let mut cases = vec![Vec::new(), vec![0], vec![255], b"ab".to_vec()];
        // runs around the run-length limits: 1..=6, 250..=260, 4 * 255 +- 2
        for len in (1..=6).chain(250..=260).chain(1018..=1022) {
            cases.push(vec![b'a'; len]);
            let mut mixed = vec![b'x'; len];
            mixed.extend(std::iter::repeat_n(b'y', 4));
            mixed.push(b'z');
            cases.push(mixed);
        }
        // all-same bytes over several blocks: periodic blocks after run-length coding
        cases.push(vec![7u8; 3_000_000]);
        // runs of exactly four (run-length coding grows them by 5/4) across a block boundary
        cases.push((0..1_000_000u32).flat_map(|i| [(i % 200) as u8; 4]).collect());
        // periodic data
        cases.push(b"abc".repeat(400_000));
        cases.push(b"0123456789,".repeat(100_003));
        // random bytes: incompressible, and cut exactly at the block size (no runs: every byte
        // stays one byte)
        let no_runs: Vec<u8> = (0..MAX_BLOCK + 1).map(|i| (i % 251) as u8 ^ (rng.below(2) as u8 * 0x80)).collect();
        for len in [MAX_BLOCK - 1, MAX_BLOCK, MAX_BLOCK + 1] {
            cases.push(no_runs[..len].to_vec());
        }
        cases.push(random_bytes(1_000_000, 256, &mut rng));
        cases.push(csv(2_500_000));
        round_trip(&cases);
    }

    #[test]
    fn random_sizes_and_seeds_round_trip() {
        let mut rng = Rng(0xfeed_beef);
        let mut cases = Vec::new();
        for _ in 0..60 {
            let len = match rng.below(3) {
                0 => rng.below(100) as usize,
                1 => rng.below(5_000) as usize,
                _ => rng.below(200_000) as usize,
            };
            let alphabet = [1, 2, 3, 4, 16, 256][rng.below(6) as usize];
            let data = match rng.below(3) {
                0 => random_bytes(len, alphabet, &mut rng),
                1 => {
                    // runs of random length
                    let mut v = Vec::with_capacity(len);
                    while v.len() < len {
                        let b = rng.below(alphabet) as u8;
                        let run = 1 + rng.below(300) as usize;
                        v.extend(std::iter::repeat_n(b, run.min(len - v.len())));
                    }
                    v
                }
                _ => {
                    let start = rng.below(1000) as usize;
                    csv(start + len)[start..].to_vec()
                }
            };
            cases.push(data);
        }
        round_trip(&cases);
    }

    #[test]
    fn ratio_matches_libbz2() {
        let data = csv(1_500_000);
        let ours = compress_stream(&data).unwrap().len();
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(9));
        enc.write_all(&data).unwrap();
        let theirs = enc.finish().unwrap().len();
        assert!(ours * 100 <= theirs * 102, "ours {ours} bytes, libbz2 {theirs}");
    }
}
