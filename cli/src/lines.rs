//! Lines in blocks: splitting what `send` reads from stdin into lines, eight bytes at a time,
//! and writing what `recv` receives to stdout as lines (or raw), through one large buffer.
//!
//! A line is sent as a slice of the block it was read into (no copy), so finding line ends is
//! most of what `send` does per line: a byte-at-a-time search (`iter().position`) costs about
//! 14 ns per line of `seq` output here, this word-at-a-time one about 3 ns, and about 4 GB/s on
//! long lines, with no dependency and no `unsafe`. On the way out, short lines are copied with
//! a few fixed-size moves rather than a `memcpy` call each.

use std::io::{self, Write};

/// `b'\n'` in every byte of a word.
const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;
/// The low seven bits of every byte.
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The top bit of each byte of `word` (little-endian) that is `b'\n'`, and no other bit.
#[inline]
fn newline_bits(word: u64) -> u64 {
    let x = word ^ NEWLINES;
    // A byte of `x` is zero exactly when neither its low seven bits (which, plus 0x7f, carry into
    // the top bit but never out of the byte) nor its top bit are set. Exact for every byte, unlike
    // the shorter `(x - 0x01..) & !x & 0x80..`, whose borrow marks a 0x01 byte above a zero one.
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The positions of the newlines in a byte slice, in order.
#[derive(Clone, Debug)]
pub(crate) struct Newlines<'a> {
    bytes: &'a [u8],
    /// Where the next word to look at starts.
    at: usize,
    /// The newlines of the word before `at` not yet returned, as [`newline_bits`].
    bits: u64,
}

impl<'a> Newlines<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Newlines {
            bytes,
            at: 0,
            bits: 0,
        }
    }
}

impl Iterator for Newlines<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        loop {
            if self.bits != 0 {
                let byte = (self.bits.trailing_zeros() / 8) as usize;
                self.bits &= self.bits - 1;
                return Some(self.at - 8 + byte);
            }
            match self.bytes.get(self.at..self.at + 8) {
                Some(word) => {
                    let word: [u8; 8] = word.try_into().unwrap_or_default();
                    self.bits = newline_bits(u64::from_le_bytes(word));
                    self.at += 8;
                }
                // Fewer than eight bytes left.
                None => {
                    let rest = self.bytes.get(self.at..).unwrap_or_default();
                    let i = self.at + rest.iter().position(|&b| b == b'\n')?;
                    self.at = i + 1;
                    return Some(i);
                }
            }
        }
    }
}

/// The complete lines at the start of a block, without their newlines; what follows the last
/// newline ([`rest`](Self::rest)) is a line whose end has not been read yet.
#[derive(Clone, Debug)]
pub(crate) struct Lines<'a> {
    block: &'a [u8],
    /// Where the next line starts.
    start: usize,
    /// Newlines in `block[searched..]`, relative to `searched`.
    newlines: Newlines<'a>,
    searched: usize,
}

impl<'a> Lines<'a> {
    /// The lines of `block`, whose first `searched` bytes are known to hold no newline (the part
    /// of a line carried over from the block before, searched then).
    pub(crate) fn new(block: &'a [u8], searched: usize) -> Self {
        let searched = searched.min(block.len());
        Lines {
            block,
            start: 0,
            newlines: Newlines::new(&block[searched..]),
            searched,
        }
    }

    /// Where the unfinished line starts: `block[rest()..]` follows the last newline returned
    /// so far (all of them once the iterator is done).
    pub(crate) fn rest(&self) -> usize {
        self.start
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = self.searched + self.newlines.next()?;
        let line = &self.block[self.start..end];
        self.start = end + 1;
        Some(line)
    }
}

/// A writer with a buffer of its own for messages: each followed by a newline
/// ([`line`](Self::line)), or as they are ([`raw`](Self::raw)). As a `BufWriter`, it writes
/// out what is left when dropped, ignoring errors: [`flush`](Self::flush) it to see them.
pub(crate) struct LineWriter<W: Write> {
    buf: Box<[u8]>,
    /// Bytes of `buf` in use.
    len: usize,
    out: W,
}

impl<W: Write> LineWriter<W> {
    /// A writer to `out` that writes once `capacity` bytes (at least 64) are buffered.
    pub(crate) fn new(capacity: usize, out: W) -> Self {
        LineWriter {
            buf: vec![0; capacity.max(64)].into_boxed_slice(),
            len: 0,
            out,
        }
    }

    /// Writes `msg` and a newline.
    #[inline]
    pub(crate) fn line(&mut self, msg: &[u8]) -> io::Result<()> {
        let end = self.len + msg.len();
        match self.buf.get_mut(self.len..=end) {
            Some(dst) => {
                copy_short(&mut dst[..msg.len()], msg);
                dst[msg.len()] = b'\n';
                self.len = end + 1;
                Ok(())
            }
            None => self.line_cold(msg),
        }
    }

    #[cold]
    fn line_cold(&mut self, msg: &[u8]) -> io::Result<()> {
        self.flush()?;
        if msg.len() < self.buf.len() {
            return self.line(msg);
        }
        self.out.write_all(msg)?;
        self.out.write_all(b"\n")
    }

    /// Writes `bytes` as they are: through the buffer while they are small next to it, else
    /// (after what is buffered) straight from `bytes`, saving a copy.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= self.buf.len() / 4 {
            self.flush()?;
            return self.out.write_all(bytes);
        }
        if self.buf.len() - self.len < bytes.len() {
            self.flush()?;
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    /// Writes out what is buffered. On an error, what was written is gone from the buffer and
    /// the rest stays.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.len {
                break Ok(());
            }
            match self.out.write(&self.buf[written..self.len]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.copy_within(written..self.len, 0);
        self.len -= written;
        result
    }
}

/// Writes out what is buffered, ignoring errors, as a `BufWriter` does.
impl<W: Write> Drop for LineWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// `dst.copy_from_slice(src)` (same lengths), with up to 32 bytes copied as two fixed-size,
/// possibly overlapping moves each way instead of a call.
#[inline]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    match n {
        16..=32 => {
            dst[..16].copy_from_slice(&src[..16]);
            dst[n - 16..n].copy_from_slice(&src[n - 16..]);
        }
        8..=15 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..n].copy_from_slice(&src[n - 8..]);
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..n].copy_from_slice(&src[n - 4..]);
        }
        1..=3 => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        0 => {}
        _ => dst.copy_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(bytes: &[u8]) -> Vec<usize> {
        (0..bytes.len()).filter(|&i| bytes[i] == b'\n').collect()
    }

    #[test]
    fn newlines_are_found_exactly_at_every_offset_and_length() {
        // Bytes around '\n' (0x0a) that a borrow or carry could confuse with it: 0x0b after a
        // newline is what the short zero-byte test would flag.
        let alphabet = [b'\n', 0x0b, 0x09, 0x00, 0x8a, 0xff, 0x7f, b'a'];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..80 {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect();
                assert_eq!(
                    Newlines::new(&bytes).collect::<Vec<_>>(),
                    naive(&bytes),
                    "{bytes:x?}"
                );
            }
        }
        let all = [b'\n'; 19];
        assert_eq!(Newlines::new(&all).count(), 19);
    }

    #[test]
    fn short_copies_of_every_length_are_exact() {
        let src: Vec<u8> = (1..=80).collect();
        for n in 0..=80 {
            let mut dst = vec![0u8; n];
            copy_short(&mut dst, &src[..n]);
            assert_eq!(dst, src[..n]);
        }
    }

    /// A sink taking at most 5 bytes a call, failing at call number `fail_at`.
    struct Trickle<'a> {
        got: &'a mut Vec<u8>,
        calls: usize,
        fail_at: usize,
    }

    impl Write for Trickle<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls == self.fail_at {
                return Err(io::Error::other("full"));
            }
            let n = buf.len().min(5);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn trickle(got: &mut Vec<u8>, fail_at: usize) -> Trickle<'_> {
        Trickle {
            got,
            calls: 0,
            fail_at,
        }
    }

    #[test]
    fn the_writer_keeps_order_across_buffer_ends_long_lines_and_raw_bytes() {
        let mut got = Vec::new();
        let mut w = LineWriter::new(64, trickle(&mut got, 0));
        let mut expected = Vec::new();
        let long = vec![b'L'; 100];
        for msg in [&b"one"[..], b"", &[b'x'; 40], &long, b"tail", &[b'y'; 63]] {
            w.raw(msg).unwrap();
            w.line(msg).unwrap();
            expected.extend_from_slice(msg);
            expected.extend_from_slice(msg);
            expected.push(b'\n');
        }
        w.flush().unwrap();
        drop(w);
        assert_eq!(got, expected);
    }

    #[test]
    fn a_failed_flush_keeps_what_was_not_written_and_drop_writes_it() {
        let mut got = Vec::new();
        let mut w = LineWriter::new(64, trickle(&mut got, 2));
        w.line(b"hello world").unwrap();
        assert!(w.flush().is_err());
        assert_eq!(w.out.got, b"hello");
        w.line(b"again").unwrap();
        drop(w);
        assert_eq!(got, b"hello world\nagain\n");
    }

    #[test]
    fn lines_split_at_newlines_and_leave_the_unfinished_rest() {
        let block = b"carried-over\n\nsecond line\nthird\nunfinis";
        let mut lines = Lines::new(block, 7);
        let got: Vec<&[u8]> = lines.by_ref().collect();
        assert_eq!(got, [&b"carried-over"[..], b"", b"second line", b"third"]);
        assert_eq!(&block[lines.rest()..], b"unfinis");
        let mut none = Lines::new(b"no newline yet", 0);
        assert_eq!(none.next(), None);
        assert_eq!(none.rest(), 0);
        let mut ends = Lines::new(b"a\n", 0);
        assert_eq!(ends.next(), Some(&b"a"[..]));
        assert_eq!(ends.next(), None);
        assert_eq!(ends.rest(), 2);
    }
}
