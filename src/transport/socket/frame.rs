//! Framing: every message is a little-endian `u32` length followed by that many payload bytes.
//!
//! [`FrameReader`] turns whatever a stream delivered into frames, with one reusable buffer (no
//! allocation per message once it has grown to the largest frame seen). [`FrameWriter`] writes a
//! frame with one write (a small frame from one buffer, a large one as header + payload) and keeps
//! what the socket did not take as a pending remainder.

use crate::error::Corrupted;
use std::io::{self, IoSlice, Read};

/// Bytes of the length prefix.
pub(crate) const HEADER: usize = 4;

/// Initial size of the read buffer; it grows to hold the largest frame received.
const INITIAL_READ_BUFFER: usize = 64 * 1024;

/// Bytes received but not yet delivered, and where the next frame starts.
pub(crate) struct FrameReader {
    /// Always fully initialised: `buf.len()` is the buffer's size, not its fill.
    buf: Vec<u8>,
    /// First byte not yet delivered.
    start: usize,
    /// One past the last byte received.
    end: usize,
    /// Largest payload accepted.
    max: usize,
}

impl FrameReader {
    pub(crate) fn new(max: usize) -> Self {
        Self::with_buffer(max, INITIAL_READ_BUFFER)
    }

    /// A reader whose buffer starts at `initial` bytes (tests start small to exercise growth).
    fn with_buffer(max: usize, initial: usize) -> Self {
        FrameReader {
            buf: vec![0; initial],
            start: 0,
            end: 0,
            max,
        }
    }

    /// Largest payload accepted.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The payload length announced by the header at `start`, if the header is complete.
    fn announced(&self) -> Option<usize> {
        if self.end - self.start < HEADER {
            return None;
        }
        let h = self.buf.get(self.start..self.start + HEADER)?;
        Some(u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize)
    }

    /// The next complete frame's payload, consumed; `None` if the buffer holds no complete frame.
    /// A header announcing more than the maximum is an error (and stays one).
    pub(crate) fn next_frame(&mut self) -> Result<Option<&[u8]>, Corrupted> {
        let Some(len) = self.announced() else {
            return Ok(None);
        };
        if len > self.max {
            return Err(Corrupted {
                reason: format!("frame of {len} bytes exceeds the maximum of {} bytes", self.max),
            });
        }
        let begin = self.start + HEADER;
        if self.end - begin < len {
            return Ok(None);
        }
        self.start = begin + len;
        Ok(Some(&self.buf[begin..begin + len]))
    }

    /// Whether `next_frame` has something to say without more bytes: a complete frame, or a
    /// header over the maximum.
    pub(crate) fn has_frame(&self) -> bool {
        self.announced()
            .is_some_and(|len| len > self.max || self.end - self.start - HEADER >= len)
    }

    /// Bytes of an incomplete frame at the end of the stream, and the bytes it needed in all.
    pub(crate) fn partial(&self) -> Option<(usize, usize)> {
        let have = self.end - self.start;
        if have == 0 {
            return None;
        }
        let need = self.announced().map_or(HEADER, |len| HEADER.saturating_add(len));
        Some((have, need))
    }

    /// Forgets everything buffered.
    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Makes room for the rest of the frame in progress: moves it to the front when the space
    /// after it runs short, and grows the buffer to the frame's size (at most header + max).
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let need = self
            .announced()
            .map_or(HEADER, |len| HEADER.saturating_add(len.min(self.max)));
        let tail_space = self.buf.len() - self.end;
        if self.start > 0 && (self.buf.len() - self.start < need || tail_space < self.buf.len() / 4) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.start < need {
            self.buf.resize(self.start + need, 0);
        }
        if self.end == self.buf.len() {
            // Only reached if called while a complete frame is buffered; keep reads non-empty.
            let grown = self.buf.len().saturating_mul(2).max(INITIAL_READ_BUFFER);
            self.buf.resize(grown, 0);
        }
    }

    /// One `read` from `src` into the free space. `Ok(0)` is the end of the stream.
    pub(crate) fn fill_from(&mut self, src: &mut impl Read) -> io::Result<usize> {
        self.make_room();
        let n = src.read(&mut self.buf[self.end..])?;
        // A reader claiming more than it was given is a bug in it; never index past the buffer.
        self.end += n.min(self.buf.len() - self.end);
        Ok(n)
    }
}

/// Frames up to this many payload bytes are copied behind their header into one buffer and
/// written from it: one buffer is a plain `send(2)`, cheaper in the kernel than a two-element
/// `sendmsg(2)` (no message header or iovec array to copy in), which costs more than the copy for
/// a small frame. Larger payloads are written in place, as header + payload.
pub(crate) const SMALL_FRAME: usize = 4096;

/// The unwritten remainder of at most one frame.
#[derive(Default)]
pub(crate) struct FrameWriter {
    pending: Vec<u8>,
    pos: usize,
    /// Where a small frame is assembled (empty between calls; keeps its capacity).
    small: Vec<u8>,
}

impl FrameWriter {
    /// Bytes of a frame accepted but not yet handed to the kernel.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len() - self.pos
    }

    /// Writes as much of the pending remainder as `send` takes now. `Ok(true)` once nothing is
    /// left, `Ok(false)` if `send` would block first.
    pub(crate) fn flush(
        &mut self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        while self.pos < self.pending.len() {
            match send(&[IoSlice::new(&self.pending[self.pos..])]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos = (self.pos + n).min(self.pending.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.pending.clear();
        self.pos = 0;
        Ok(true)
    }

    /// Writes the frame for `msg` with one call to `send` (given one buffer for a frame of at most
    /// `SMALL_FRAME` payload bytes, else two); what it does not take becomes the pending remainder.
    /// `Ok(false)` if nothing was taken (the frame was not accepted). Call only when nothing is
    /// pending, with `msg.len()` checked to fit a `u32`.
    pub(crate) fn write_frame(
        &mut self,
        msg: &[u8],
        send: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        debug_assert_eq!(self.pending(), 0);
        let header = (msg.len() as u32).to_le_bytes();
        let sent = if msg.len() <= SMALL_FRAME {
            self.small.clear();
            self.small.extend_from_slice(&header);
            self.small.extend_from_slice(msg);
            send(&[IoSlice::new(&self.small)])
        } else {
            send(&[IoSlice::new(&header), IoSlice::new(msg)])
        };
        let n = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        if n == 0 {
            // A zero-length write of a non-empty frame would only happen on a broken socket.
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < HEADER + msg.len() {
            self.pending.clear();
            self.pos = 0;
            if n < HEADER {
                self.pending.extend_from_slice(&header[n..]);
                self.pending.extend_from_slice(msg);
            } else {
                self.pending.extend_from_slice(&msg[n - HEADER..]);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// A reader handing out `chunk` bytes per call from a byte string.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// How a decoded stream ended: cleanly (with an incomplete frame's sizes, if any) or corrupted.
    type Ending = Result<Option<(usize, usize)>, Corrupted>;

    /// Decodes everything `src` yields; returns the frames and how it ended.
    fn decode_all(src: &mut impl Read, max: usize) -> (Vec<Vec<u8>>, Ending) {
        let mut r = FrameReader::new(max);
        let mut out = Vec::new();
        loop {
            loop {
                match r.next_frame() {
                    Ok(Some(f)) => out.push(f.to_vec()),
                    Ok(None) => break,
                    Err(c) => return (out, Err(c)),
                }
            }
            if r.fill_from(src).unwrap() == 0 {
                return (out, Ok(r.partial()));
            }
        }
    }

    fn messages() -> Vec<Vec<u8>> {
        (0..200usize)
            .map(|i| (0..(i * 37) % 3000).map(|j| (i + j) as u8).collect())
            .collect()
    }

    #[test]
    fn decodes_any_chunking() {
        let msgs = messages();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| frame(m)).collect();
        for chunk in [1, 2, 3, 5, 4096, 1 << 20] {
            let (got, end) = decode_all(&mut Trickle { data: &stream, chunk }, 4096);
            assert_eq!(got, msgs, "chunk {chunk}");
            assert_eq!(end, Ok(None));
        }
    }

    #[test]
    fn frames_larger_than_the_initial_buffer() {
        let msgs = vec![vec![7u8; 3 * INITIAL_READ_BUFFER], vec![], vec![1, 2, 3]];
        let stream: Vec<u8> = msgs.iter().flat_map(|m| frame(m)).collect();
        let (got, end) = decode_all(
            &mut Trickle {
                data: &stream,
                chunk: 10_000,
            },
            1 << 20,
        );
        assert_eq!(got, msgs);
        assert_eq!(end, Ok(None));
    }

    #[test]
    fn oversize_header_is_corruption_after_earlier_frames() {
        let mut stream = frame(b"one");
        stream.extend(frame(b"two"));
        stream.extend_from_slice(&u32::MAX.to_le_bytes());
        stream.extend_from_slice(b"garbage");
        let (got, end) = decode_all(
            &mut Trickle {
                data: &stream,
                chunk: 1,
            },
            100,
        );
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(
            end.unwrap_err().reason,
            "frame of 4294967295 bytes exceeds the maximum of 100 bytes"
        );
        // One byte over the maximum is already too much; exactly the maximum is fine.
        let (got, end) = decode_all(&mut &frame(&[0; 100])[..], 100);
        assert_eq!((got.len(), end), (1, Ok(None)));
        let (_, end) = decode_all(&mut &frame(&[0; 101])[..], 100);
        assert!(end.is_err());
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let data: Vec<u8> = (0..1000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly small lengths so some garbage decodes as frames.
                    if x.is_multiple_of(3) {
                        0
                    } else {
                        (x >> 32) as u8
                    }
                })
                .collect();
            let (got, _) = decode_all(
                &mut Trickle {
                    data: &data,
                    chunk: (x % 17) as usize + 1,
                },
                64,
            );
            assert!(got.iter().all(|f| f.len() <= 64));
        }
    }

    #[test]
    fn truncated_stream_reports_what_it_had() {
        let mut stream = frame(b"whole");
        stream.extend_from_slice(&frame(b"half a frame")[..7]);
        let (got, end) = decode_all(&mut &stream[..], 100);
        assert_eq!(got, vec![b"whole".to_vec()]);
        assert_eq!(end, Ok(Some((7, 16))));
        // Cut inside the length header.
        let (_, end) = decode_all(&mut &[1u8, 0][..], 100);
        assert_eq!(end, Ok(Some((2, 4))));
    }

    #[test]
    fn one_byte_writes_through_a_socketpair() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let msgs = messages();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| frame(m)).collect();
        let writer = std::thread::spawn(move || {
            for byte in stream {
                a.write_all(&[byte]).unwrap();
            }
        });
        let (got, end) = decode_all(&mut b, 4096);
        writer.join().unwrap();
        assert_eq!(got, msgs);
        assert_eq!(end, Ok(None));
    }

    /// A socket stand-in taking `take` bytes per call and refusing every other call.
    struct Sink {
        wire: Vec<u8>,
        take: usize,
        calls: usize,
    }

    impl Sink {
        fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = self.take;
            for b in bufs {
                let n = left.min(b.len());
                self.wire.extend_from_slice(&b[..n]);
                left -= n;
            }
            Ok(self.take - left)
        }
    }

    #[test]
    fn partial_writes_leave_an_exact_remainder() {
        // The last two straddle SMALL_FRAME: one buffer, then header + payload.
        let msgs = [
            b"hello world".to_vec(),
            Vec::new(),
            vec![9; 50],
            vec![8; SMALL_FRAME],
            vec![7; SMALL_FRAME + 1],
        ];
        for take in [1, 3, 4, 5, 9, 100, SMALL_FRAME + 3, SMALL_FRAME + 5] {
            let mut w = FrameWriter::default();
            let mut sink = Sink {
                wire: Vec::new(),
                take,
                calls: 0,
            };
            for m in &msgs {
                loop {
                    if w.pending() > 0 && !w.flush(|b| sink.send(b)).unwrap() {
                        continue;
                    }
                    if w.write_frame(m, |b| sink.send(b)).unwrap() {
                        break;
                    }
                }
            }
            while w.pending() > 0 {
                w.flush(|b| sink.send(b)).unwrap();
            }
            let (got, end) = decode_all(&mut &sink.wire[..], SMALL_FRAME + 1);
            assert_eq!(got, msgs, "take {take}");
            assert_eq!(end, Ok(None));
        }
        // Would-block before anything is taken: the frame is not accepted and nothing is pending.
        let mut w = FrameWriter::default();
        let refused = w.write_frame(b"x", |_| Err(io::ErrorKind::WouldBlock.into()));
        assert!(!refused.unwrap());
        assert_eq!(w.pending(), 0);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests of [`FrameReader`]: any byte stream, delivered in any chunks, into a buffer
    //! of any starting size, decodes without panicking to exactly the frames (and the same
    //! ending) as a plain reference decoder of the whole stream, and never to a frame over the
    //! maximum.
    use super::*;
    use proptest::prelude::*;

    /// How a decoded stream ended: cleanly (with an incomplete frame's sizes, if any) or corrupted.
    type Ending = Result<Option<(usize, usize)>, Corrupted>;

    /// The obvious decoder, on the whole stream at once.
    fn reference(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, Ending) {
        let mut frames = Vec::new();
        let mut rest = stream;
        loop {
            if rest.len() < HEADER {
                return (frames, Ok((!rest.is_empty()).then_some((rest.len(), HEADER))));
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > max {
                return (
                    frames,
                    Err(Corrupted {
                        reason: format!("frame of {len} bytes exceeds the maximum of {max} bytes"),
                    }),
                );
            }
            if rest.len() - HEADER < len {
                return (frames, Ok(Some((rest.len(), HEADER + len))));
            }
            frames.push(rest[HEADER..HEADER + len].to_vec());
            rest = &rest[HEADER + len..];
        }
    }

    /// Hands out the stream in chunks of the given sizes, cycling through them (a size of 0
    /// stands for 1: a read of 0 bytes would mean the end of the stream).
    struct Chunked<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        next: usize,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let size = self.sizes[self.next % self.sizes.len()].max(1);
            self.next += 1;
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Decodes everything the reader yields, checking each frame against `max` on the way.
    fn decode(
        src: &mut impl Read,
        max: usize,
        initial: usize,
    ) -> Result<(Vec<Vec<u8>>, Ending), TestCaseError> {
        let mut r = FrameReader::with_buffer(max, initial);
        let mut out = Vec::new();
        loop {
            loop {
                match r.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(f.len() <= max, "a frame of {} bytes, max {max}", f.len());
                        out.push(f.to_vec());
                    }
                    Ok(None) => break,
                    Err(c) => return Ok((out, Err(c))),
                }
            }
            if r.fill_from(src).map_err(|e| TestCaseError::fail(e.to_string()))? == 0 {
                return Ok((out, Ok(r.partial())));
            }
        }
    }

    /// Pieces of a stream: well-formed frames (often), bare headers of any length, and noise.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            12 => prop::collection::vec(any::<u8>(), 0..200).prop_map(|p| {
                let mut f = (p.len() as u32).to_le_bytes().to_vec();
                f.extend(p);
                f
            }),
            1 => prop_oneof![any::<u32>(), 0u32..300].prop_map(|n| n.to_le_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..16),
        ]
    }

    fn check(stream: &[u8], sizes: &[usize], max: usize, initial: usize) -> Result<(), TestCaseError> {
        let mut src = Chunked {
            data: stream,
            sizes,
            next: 0,
        };
        let got = decode(&mut src, max, initial)?;
        prop_assert_eq!(got, reference(stream, max));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Streams made of frame-like pieces, so most cases decode several frames before they
        /// end or hit an oversize header.
        #[test]
        fn framed_streams_any_chunking(
            pieces in prop::collection::vec(piece(), 0..16),
            sizes in prop::collection::vec(prop_oneof![3 => 0usize..8, 1 => 0usize..600], 1..8),
            max in prop_oneof![1 => 0usize..4, 2 => 0usize..256, 4 => 256usize..(1 << 16)],
            initial in prop_oneof![2 => 0usize..64, 1 => Just(INITIAL_READ_BUFFER)],
        ) {
            let stream: Vec<u8> = pieces.concat();
            check(&stream, &sizes, max, initial)?;
        }

        /// Arbitrary bytes.
        #[test]
        fn arbitrary_bytes_any_chunking(
            stream in prop::collection::vec(any::<u8>(), 0..512),
            sizes in prop::collection::vec(0usize..64, 1..8),
            max in 0usize..1024,
            initial in 0usize..64,
        ) {
            check(&stream, &sizes, max, initial)?;
        }
    }
}
