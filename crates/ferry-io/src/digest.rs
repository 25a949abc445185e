//! MD5 and SHA-256 of a byte stream, computed while it passes through.
//!
//! The manifest of every batch carries the size, MD5 and SHA-256 of each plain (uncompressed)
//! file, so the Connector hashes CSV on its way into the bzip2 compressor ([`HashingWriter`]) and
//! the App hashes it on its way out of the decompressor ([`HashingReader`]). Both are plain
//! pass-throughs: they hash exactly the bytes the inner writer accepted or the inner reader
//! returned, never more, so a short write or read cannot skew the digests. [`Digester`] is the same
//! thing for callers that push chunks themselves (e.g. async streams).

use std::io::{self, Read, Write};

use md5::Md5;
use sha2::{Digest, Sha256};

/// Size and checksums of a byte stream, with lower-case hex digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Number of bytes hashed.
    pub bytes: u64,
    /// MD5, 32 lower-case hex digits.
    pub md5: String,
    /// SHA-256, 64 lower-case hex digits.
    pub sha256: String,
}

impl Digests {
    /// Digests of an in-memory buffer.
    pub fn of(data: &[u8]) -> Self {
        let mut d = Digester::new();
        d.update(data);
        d.finish()
    }
}

/// Size and SHA-256 (64 lower-case hex digits) of the regular file at `path`, refused if it is a symbolic link. This is how a batch's compressed files are measured: the Connector writes the result into
/// the manifest, the Comms server measures again at completion and before and after relaying.
pub fn file_sha256(path: &std::path::Path) -> io::Result<(u64, String)> {
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut r = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let got = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Some(chunk) = buf.get(..got) else { break };
        sha.update(chunk);
        n += got as u64;
    }
    Ok((n, hex::encode(sha.finalize())))
}

/// Incremental MD5 + SHA-256 + byte count.
#[derive(Clone, Default)]
pub struct Digester {
    md5: Md5,
    sha256: Sha256,
    bytes: u64,
}

impl Digester {
    /// A digester that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data` to both hashes.
    pub fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.sha256.update(data);
        self.bytes += data.len() as u64;
    }

    /// The digests of everything fed so far.
    pub fn finish(self) -> Digests {
        Digests {
            bytes: self.bytes,
            md5: hex::encode(self.md5.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
        }
    }
}

/// A [`Write`] pass-through that hashes every byte the inner writer accepts.
pub struct HashingWriter<W> {
    inner: W,
    digester: Digester,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, digester: Digester::new() }
    }

    /// The inner writer, e.g. to reach a compressor's statistics.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer (not flushed) and the digests of what went through.
    pub fn finish(self) -> (W, Digests) {
        (self.inner, self.digester.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n.min(buf.len())]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Read`] pass-through that hashes every byte the inner reader returns.
pub struct HashingReader<R> {
    inner: R,
    digester: Digester,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner, digester: Digester::new() }
    }

    /// Digests of what has been read so far.
    pub fn digests(&self) -> Digests {
        self.digester.clone().finish()
    }

    /// Digests of everything read, consuming the reader.
    pub fn into_digests(self) -> Digests {
        self.digester.finish()
    }

    /// The inner reader and the digests of what was read.
    pub fn into_parts(self) -> (R, Digests) {
        (self.inner, self.digester.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n.min(buf.len())]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    /// Accepts at most 2 bytes per call, like a pipe under pressure.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(2);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn known_vectors() {
        let d = Digests::of(b"abc");
        assert_eq!(d.bytes, 3);
        assert_eq!(d.md5, ABC_MD5);
        assert_eq!(d.sha256, ABC_SHA256);
        let empty = Digests::of(b"");
        assert_eq!(empty.md5, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(empty.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn writer_hashes_only_what_the_inner_writer_took() {
        let mut w = HashingWriter::new(Trickle(Vec::new()));
        assert_eq!(w.write(b"abcdef").unwrap(), 2);
        w.write_all(b"c").unwrap();
        let (inner, d) = w.finish();
        assert_eq!(inner.0, b"abc");
        assert_eq!(d, Digests::of(b"abc"));
        assert_eq!(d.md5, ABC_MD5);
    }

    #[test]
    fn reader_hashes_what_it_returns() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut r = HashingReader::new(&data[..]);
        let mut half = vec![0u8; 1000];
        r.read_exact(&mut half).unwrap();
        assert_eq!(r.digests(), Digests::of(&data[..1000]));
        io::copy(&mut r, &mut io::sink()).unwrap();
        let d = r.into_digests();
        assert_eq!(d.bytes, data.len() as u64);
        assert_eq!(d, Digests::of(&data));
    }
}
