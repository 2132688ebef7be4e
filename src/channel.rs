//! The `Sender` and `Receiver` traits every transport implements.
//!
//! Messages are byte slices. Each trait has one required blocking method taking an optional
//! absolute deadline, from which `send`/`send_timeout` (and `recv`/`recv_timeout`) follow, so a
//! retry inside a transport can never stretch a timeout.

use crate::error::*;
use crate::ring::Peer;
use std::time::{Duration, Instant};

/// Messages gathered into one buffer: what [`Receiver::recv_batch`] fills. Reuse one across
/// calls; it keeps its allocations.
///
/// ```
/// use shmpipe::Batch;
/// let mut batch = Batch::new();
/// batch.push(b"one");
/// batch.push(b"");
/// batch.push(b"three");
/// assert_eq!(batch.len(), 3);
/// assert_eq!(batch.iter().collect::<Vec<_>>(), [&b"one"[..], b"", b"three"]);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Every message's bytes, back to back.
    bytes: Vec<u8>,
    /// Where each message ends in `bytes`.
    ends: Vec<usize>,
    /// A message being received by the default `recv_batch` methods, before it is pushed.
    scratch: Vec<u8>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// An empty batch with room for `messages` messages of `bytes` bytes in total.
    pub fn with_capacity(messages: usize, bytes: usize) -> Self {
        Batch {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(messages),
            scratch: Vec::new(),
        }
    }

    /// Appends a copy of `msg`.
    #[inline]
    pub fn push(&mut self, msg: &[u8]) {
        self.bytes.extend_from_slice(msg);
        self.ends.push(self.bytes.len());
    }

    /// Appends a message of `len` bytes written in place by `write` (given exactly `len` bytes,
    /// zeroed only where it is new memory), without an intermediate buffer.
    #[inline]
    pub fn push_with(&mut self, len: usize, write: impl FnOnce(&mut [u8])) {
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        write(&mut self.bytes[start..]);
        self.ends.push(self.bytes.len());
    }

    /// Appends a copy of the `len` bytes at `src` (memory another process may be writing, such as
    /// a ring slot), without zeroing the room first as [`push_with`](Self::push_with) does.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes and must not point into this batch.
    #[inline]
    pub(crate) unsafe fn push_copy(&mut self, src: *const u8, len: usize) {
        self.bytes.reserve(len);
        let start = self.bytes.len();
        // SAFETY: after `reserve` the allocation has room for `len` bytes at `start`, which
        // `copy_payload` initialises (from `src`, valid and not overlapping by the caller's
        // contract) before `set_len` says so.
        unsafe {
            crate::ring::copy_payload(
                std::slice::from_raw_parts(src, len),
                self.bytes.as_mut_ptr().add(start),
            );
            self.bytes.set_len(start + len);
        }
        self.ends.push(self.bytes.len());
    }

    /// Keeps the first `messages` messages (all if there are fewer) and removes the rest.
    pub(crate) fn truncate(&mut self, messages: usize) {
        if messages < self.ends.len() {
            self.bytes
                .truncate(if messages == 0 { 0 } else { self.ends[messages - 1] });
            self.ends.truncate(messages);
        }
    }

    /// Removes every message (keeping the allocations).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no messages.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total bytes of all messages.
    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Every message's bytes, back to back in order, with nothing between them: what a byte
    /// stream cut into these messages was (`shmpipe recv --raw` writes it in one call).
    ///
    /// ```
    /// let mut batch = shmpipe::Batch::new();
    /// batch.push(b"ab");
    /// batch.push(b"");
    /// batch.push(b"c");
    /// assert_eq!(batch.as_bytes(), b"abc");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Message `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    /// The messages in order.
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            bytes: &self.bytes,
            ends: self.ends.iter(),
            start: 0,
        }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("messages", &self.len())
            .field("bytes", &self.total_bytes())
            .finish()
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = &'a [u8];
    type IntoIter = BatchIter<'a>;
    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

/// The messages of a [`Batch`], in order.
#[derive(Clone, Debug)]
pub struct BatchIter<'a> {
    bytes: &'a [u8],
    ends: std::slice::Iter<'a, usize>,
    start: usize,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = &'a [u8];
    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = *self.ends.next()?;
        let msg = &self.bytes[self.start..end];
        self.start = end;
        Some(msg)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

/// The sending end of a channel.
pub trait Sender {
    /// Sends without blocking: `Full` if there is no room now.
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError>;

    /// Sends, waiting for room until `deadline` (`None`: for ever).
    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError>;

    /// The largest message this channel accepts, in bytes.
    fn max_message_size(&self) -> usize;

    /// Sends, waiting while the channel is full.
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_deadline(msg, None).map_err(Into::into)
    }

    /// Sends, waiting at most `timeout` for room.
    fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.send_deadline(msg, Instant::now().checked_add(timeout))
    }

    /// Sends a prefix of `msgs` without blocking: as many as there is room for now, in order,
    /// published together where the transport can (one index publication and at most one
    /// wake-up for the lot on a shared-memory ring). `Ok(n)` with `n >= 1` says the first `n`
    /// were sent; the rest were not touched. An error says none was: `Full` if the first does
    /// not fit now, or why the first cannot be sent (`TooLarge`, `Disconnected`, ...). A
    /// message that cannot be sent after others that can ends the prefix; the next call
    /// reports it. An empty `msgs` returns `Ok(0)`.
    ///
    /// ```
    /// use shmpipe::{ring::spsc, Batch, Receiver, Sender};
    /// let (mut tx, mut rx) = spsc::channel(64, 16).unwrap();
    /// let lines: Vec<&[u8]> = vec![b"a", b"bb", b"ccc"];
    /// let mut rest = &lines[..];
    /// while !rest.is_empty() {
    ///     let n = tx.send_batch(rest).unwrap();
    ///     rest = &rest[n..];
    /// }
    /// let mut batch = Batch::new();
    /// assert_eq!(rx.recv_batch(&mut batch, 10).unwrap(), 3);
    /// assert_eq!(batch.get(2), Some(&b"ccc"[..]));
    /// ```
    fn try_send_batch(&mut self, msgs: &[&[u8]]) -> Result<usize, TrySendError> {
        let mut sent = 0;
        for msg in msgs {
            match self.try_send(msg) {
                Ok(()) => sent += 1,
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Sends a prefix of `msgs`, waiting until `deadline` for room for the first: then as
    /// [`try_send_batch`](Self::try_send_batch), `Ok(n)` with `n >= 1` (for a non-empty `msgs`).
    fn send_batch_deadline(
        &mut self,
        msgs: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<usize, SendTimeoutError> {
        match self.try_send_batch(msgs) {
            Err(TrySendError::Full) => {}
            r => return r.map_err(Into::into),
        }
        self.send_deadline(msgs[0], deadline)?;
        Ok(1 + self.try_send_batch(&msgs[1..]).unwrap_or(0))
    }

    /// Sends a prefix of `msgs`, waiting while the channel is full; see
    /// [`try_send_batch`](Self::try_send_batch). Loop on the rest to send them all.
    fn send_batch(&mut self, msgs: &[&[u8]]) -> Result<usize, SendError> {
        self.send_batch_deadline(msgs, None).map_err(Into::into)
    }

    /// Pushes out anything accepted but not yet handed to the transport (a socket's partly
    /// written frame), waiting until `deadline`. Transports that never hold such data return
    /// `Ok` at once. Dropping a sender also flushes, for a bounded time.
    fn flush_deadline(&mut self, _deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        Ok(())
    }

    /// What this end knows of the receiver, if the transport can tell (shared memory can:
    /// `Closed` versus `Dead` after `Disconnected`); `None` otherwise.
    fn peer(&self) -> Option<Peer> {
        None
    }
}

/// The receiving end of a channel. Received bytes replace the contents of `buf`.
pub trait Receiver {
    /// Receives without blocking: `Empty` if nothing is there now.
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError>;

    /// Receives, waiting until `deadline` (`None`: for ever).
    fn recv_deadline(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>)
        -> Result<(), RecvTimeoutError>;

    /// Receives, waiting while the channel is empty.
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(), RecvError> {
        self.recv_deadline(buf, None).map_err(Into::into)
    }

    /// Receives, waiting at most `timeout`.
    fn recv_timeout(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), RecvTimeoutError> {
        self.recv_deadline(buf, Instant::now().checked_add(timeout))
    }

    /// Receives up to `max` messages that are there now into `batch` (cleared first), without
    /// blocking, releasing their room together where the transport can (one index publication
    /// and at most one wake-up on a shared-memory ring). `Ok(n)` with `1 <= n <= max`, or
    /// `Empty` (a `max` of 0 counts as 1), `Disconnected` after the last message, ...; an
    /// error after some messages were taken is held back until the next call, so nothing
    /// received is lost.
    fn try_recv_batch(&mut self, batch: &mut Batch, max: usize) -> Result<usize, TryRecvError> {
        batch.clear();
        let max = max.max(1);
        let mut scratch = std::mem::take(&mut batch.scratch);
        let first = self.try_recv(&mut scratch);
        if first.is_ok() {
            batch.push(&scratch);
            take_more(self, batch, max, &mut scratch);
        }
        batch.scratch = scratch;
        first.map(|()| batch.len())
    }

    /// Receives up to `max` messages into `batch` (cleared first), waiting until `deadline` for
    /// the first: then as [`try_recv_batch`](Self::try_recv_batch), `Ok(n)` with `n >= 1`.
    fn recv_batch_deadline(
        &mut self,
        batch: &mut Batch,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvTimeoutError> {
        batch.clear();
        let max = max.max(1);
        let mut scratch = std::mem::take(&mut batch.scratch);
        let first = self.recv_deadline(&mut scratch, deadline);
        if first.is_ok() {
            batch.push(&scratch);
            take_more(self, batch, max, &mut scratch);
        }
        batch.scratch = scratch;
        first.map(|()| batch.len())
    }

    /// Hands up to `max` messages that are there now to `f`, in order, without blocking, and
    /// without copying them where the transport can: on a shared-memory SPSC ring `f` reads each
    /// message in place (as [`recv_ref`](crate::ring::spsc::Consumer::recv_ref) does, with the
    /// same trust caveats) and their room is freed together afterwards (one index publication,
    /// at most one wake-up). `Ok(n)` with `1 <= n <= max` (a `max` of 0 counts as 1), or the
    /// error of [`try_recv`](Self::try_recv) for the first; an error after some messages is left
    /// for the next call. If `f` panics, the messages it was given count as received.
    ///
    /// ```
    /// use shmpipe::{ring::spsc, Receiver, Sender};
    /// let (mut tx, mut rx) = spsc::channel(8, 16).unwrap();
    /// tx.send_batch(&[b"one", b"two", b"three"]).unwrap();
    /// let mut total = 0;
    /// assert_eq!(rx.try_recv_each(10, &mut |msg| total += msg.len()), Ok(3));
    /// assert_eq!(total, 11);
    /// ```
    fn try_recv_each(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> Result<usize, TryRecvError> {
        let mut buf = Vec::new();
        self.try_recv(&mut buf)?;
        Ok(visit_more(self, buf, max, f))
    }

    /// [`try_recv_each`](Self::try_recv_each), waiting until `deadline` for the first message.
    fn recv_each_deadline(
        &mut self,
        max: usize,
        deadline: Option<Instant>,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RecvTimeoutError> {
        let mut buf = Vec::new();
        self.recv_deadline(&mut buf, deadline)?;
        Ok(visit_more(self, buf, max, f))
    }

    /// Receives up to `max` messages into `batch`, waiting while the channel is empty; see
    /// [`try_recv_batch`](Self::try_recv_batch).
    fn recv_batch(&mut self, batch: &mut Batch, max: usize) -> Result<usize, RecvError> {
        self.recv_batch_deadline(batch, max, None).map_err(Into::into)
    }

    /// What this end knows of the sender, if the transport can tell: after `Disconnected`,
    /// `Closed` is a clean end of stream and `Dead` a crashed sender; `None` if unknown.
    fn peer(&self) -> Option<Peer> {
        None
    }
}

/// The default batch receives after their first message: whatever else is there now, up to
/// `max` in all. An error stops it and is left for the next call (every end repeats its errors).
fn take_more<R: Receiver + ?Sized>(rx: &mut R, batch: &mut Batch, max: usize, scratch: &mut Vec<u8>) {
    while batch.len() < max && rx.try_recv(scratch).is_ok() {
        batch.push(scratch);
    }
}

/// The default `recv_each` methods after their first message (in `buf`): hands it to `f`, then
/// whatever else is there now, up to `max` in all; returns how many. An error stops it and is left
/// for the next call.
fn visit_more<R: Receiver + ?Sized>(
    rx: &mut R,
    mut buf: Vec<u8>,
    max: usize,
    f: &mut dyn FnMut(&[u8]),
) -> usize {
    f(&buf);
    let mut n = 1;
    while n < max && rx.try_recv(&mut buf).is_ok() {
        f(&buf);
        n += 1;
    }
    n
}

impl<S: Sender + ?Sized> Sender for Box<S> {
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        (**self).try_send(msg)
    }
    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        (**self).send_deadline(msg, deadline)
    }
    fn max_message_size(&self) -> usize {
        (**self).max_message_size()
    }
    fn flush_deadline(&mut self, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        (**self).flush_deadline(deadline)
    }
    fn try_send_batch(&mut self, msgs: &[&[u8]]) -> Result<usize, TrySendError> {
        (**self).try_send_batch(msgs)
    }
    fn send_batch_deadline(
        &mut self,
        msgs: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<usize, SendTimeoutError> {
        (**self).send_batch_deadline(msgs, deadline)
    }
    fn peer(&self) -> Option<Peer> {
        (**self).peer()
    }
}

impl<R: Receiver + ?Sized> Receiver for Box<R> {
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        (**self).try_recv(buf)
    }
    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        (**self).recv_deadline(buf, deadline)
    }
    fn try_recv_batch(&mut self, batch: &mut Batch, max: usize) -> Result<usize, TryRecvError> {
        (**self).try_recv_batch(batch, max)
    }
    fn try_recv_each(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> Result<usize, TryRecvError> {
        (**self).try_recv_each(max, f)
    }
    fn recv_each_deadline(
        &mut self,
        max: usize,
        deadline: Option<Instant>,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RecvTimeoutError> {
        (**self).recv_each_deadline(max, deadline, f)
    }
    fn recv_batch_deadline(
        &mut self,
        batch: &mut Batch,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvTimeoutError> {
        (**self).recv_batch_deadline(batch, max, deadline)
    }
    fn peer(&self) -> Option<Peer> {
        (**self).peer()
    }
}
