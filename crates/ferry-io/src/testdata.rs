//! Test data shared by the unit tests of the bzip2 encoder and decoder (compiled for tests only).

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` bytes of text like an extract: numbered CSV lines.
pub(crate) fn csv(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        let line = format!(
            "{i},ITEM-{:05},LOC-{},2026-{:02}-{:02},{}.{:02}\n",
            i % 977,
            i % 13,
            1 + i % 12,
            1 + i % 28,
            i * 7 % 1000,
            i % 100
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}
