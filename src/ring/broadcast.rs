//! Broadcast ring: one publisher, up to [`MAX_SUBSCRIBERS`] subscribers, each of which receives
//! every message at its own pace (market data fanned out to several strategies; a pipeline stage
//! teed to a recorder and a monitor). Subscribers join and leave at any time.
//!
//! # Layout and algorithm
//! `capacity` fixed slots (a power of two) of `max_message` bytes, as the MPMC ring's: a length
//! word, a sequence word and the payload. Message `p` (positions count messages from 0) lives in
//! slot `p % capacity`. Its sequence word says what the slot holds:
//!
//! ```text
//! 0           never written
//! 2p + 1      message p is being written
//! 2p + 2      message p is complete
//! ```
//!
//! The publisher writes a message as a seqlock writer does (the odd value, a Release fence, the
//! payload and length, then the even value with Release), then stores `tail = p + 1` (Release)
//! for newcomers, `stat` and the end of the stream. A subscriber at position `p` waits on the
//! sequence word of its own slot, not on `tail`: one cache line per message, as in the SPSC
//! ring. It copies the message out, then re-reads the sequence word after an Acquire fence: if
//! it changed, the slot was overwritten under the copy and the copy is thrown away. A sequence
//! beyond `2p + 2` means the subscriber was lapped.
//!
//! Slots are fixed rather than dense records (as the SPSC ring has): a lapped subscriber must
//! find the oldest message still in the ring from its sequence number alone, and a writer must
//! never put a record boundary where a reader expects a header.
//!
//! # Policies
//! - [`Overflow::Block`] (lossless): every subscriber record holds the subscriber's cursor (the
//!   next position it reads). The publisher may write position `q` while `q < min + capacity`,
//!   `min` the smallest cursor of the live *tethered* subscribers, which it caches and recomputes
//!   only when it reaches the cached limit (a scan of the occupied records). A subscriber killed
//!   by SIGKILL (its liveness token given back by the kernel, see `tokens`) is reaped by the
//!   waiting publisher after a park slice, so it holds the publisher back for at most that long.
//!   An *untethered* subscriber ([`Subscription::tethered`] false) never holds the publisher
//!   back: when lapped it skips ahead, as under `Overwrite`.
//! - [`Overflow::Overwrite`] (lossy): the publisher never waits. A lapped subscriber skips to the
//!   oldest message that may still be there and is told exactly how many it missed
//!   ([`RecvError::Lagged`]): if the slot of position `p` holds position `q > p` (being written
//!   or complete), every position up to `q - capacity` has been overwritten (the publisher
//!   writes in order), and `q + 1 - capacity` has not been touched yet. The count is exact.
//!
//! # Joining
//! A subscriber joins under the ring lock: it stores its cursor, then its state (Release), sets
//! its bit in the roster's `occupied` mask, and then, after a SeqCst fence, reads `tail` again.
//! The publisher recomputes its limit after a SeqCst fence too. So either the publisher's scan
//! sees the new cursor, or the newcomer's second read of `tail` sees every position the publisher
//! had reached at its scan (and a limit from that scan never lets it overwrite a position at or
//! after that `tail`). A subscriber that starts at the latest message starts at that second
//! `tail`; one that starts at the oldest ([`Start::Oldest`]) may find messages below it
//! overwritten while the publisher still works from a limit computed before it joined: those are
//! skipped silently (they were never retained for it), and from the second `tail` on a tethered
//! subscriber of a `Block` ring loses nothing.
//!
//! # End of stream
//! The publisher closes its role record (Release). A subscriber that finds its slot not ready
//! and the publisher closed (or dead) reads `tail` (Acquire): below it there are still messages
//! to drain; at it, the stream is over ([`RecvError::Disconnected`]). A publisher killed while
//! writing leaves `tail` before its half-written message, which is never seen.
//!
//! # Validation
//! Everything read from the segment decides only *whether* to read a slot, never *where*: slot
//! numbers are positions masked by the local capacity. A sequence that is not for the slot
//! (wrong residue), a length over the maximum in a complete slot, a cursor past the publisher's
//! position or a `tail` behind a subscriber's cursor is [`Corrupted`].

use super::lock::{LockWord, RingLock};
use super::tokens::{self, Tokens};
use super::wait::{wait_until, Check, Doorbell, WaitCounters};
use super::{
    cold_clone, too_large, unwinding_under_loom, Geometry, HeapMemory, LivenessTimer, Peer, Role, RoleRecord,
    WaitStrategy, ROLE_CLOSED,
};
use crate::channel::{Batch, Receiver, Sender};
use crate::error::*;
use crate::sync::{fence, AtomicU32, AtomicU64, PUBLISH};
use crossbeam_utils::CachePadded;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most subscribers a broadcast ring can have at once.
pub const MAX_SUBSCRIBERS: usize = if cfg!(loom) { 4 } else { 64 };

const _: () = assert!(MAX_SUBSCRIBERS.is_power_of_two() && MAX_SUBSCRIBERS <= u64::BITS as usize);

// Bytes before the payload in a slot: the length (u32), padding, the sequence word (u64).
use super::BROADCAST_SLOT_HEADER as SLOT_HEADER;

#[cfg(all(feature = "tokio", not(loom)))]
mod aio;

/// What the publisher does when the slowest subscriber is a whole ring behind.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Wait (spin, then park) until the slowest live tethered subscriber catches up: lossless.
    #[default]
    Block,
    /// Never wait: overwrite the oldest message; a lapped subscriber is told how many it missed.
    Overwrite,
}

impl Overflow {
    /// The name used in endpoints (`?overflow=`).
    pub const fn name(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::Overwrite => "overwrite",
        }
    }

    const fn code(self) -> u32 {
        match self {
            Overflow::Block => 1,
            Overflow::Overwrite => 2,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Overflow::Block),
            2 => Some(Overflow::Overwrite),
            _ => None,
        }
    }
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a new subscriber starts reading.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Start {
    /// At the next message published after it joined.
    #[default]
    Latest,
    /// At the oldest message still in the ring (up to `capacity` messages back).
    Oldest,
}

/// How a subscriber joins a broadcast ring.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// Whether this subscriber holds an [`Overflow::Block`] publisher back (default true). An
    /// untethered subscriber never slows the publisher: when lapped, it skips ahead and is told
    /// how many messages it missed, as under [`Overflow::Overwrite`].
    pub tethered: bool,
    /// Where it starts (default [`Start::Latest`]).
    pub start: Start,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            tethered: true,
            start: Start::Latest,
        }
    }
}

impl Subscription {
    /// This subscription, tethered or not (see [`tethered`](Self::tethered)).
    ///
    /// ```
    /// use shmpipe::ring::broadcast::{Start, Subscription};
    /// let monitor = Subscription::default().tethered(false).start(Start::Oldest);
    /// assert!(!monitor.tethered);
    /// ```
    pub fn tethered(mut self, tethered: bool) -> Self {
        self.tethered = tethered;
        self
    }

    /// This subscription, starting at `start`.
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }
}

const VACANT: u32 = 0;
const TETHERED: u32 = 1;
const UNTETHERED: u32 = 2;

/// The publisher's bit in `not_full.waiters` (it is the only one sleeping there).
const PUBLISHER_BIT: u64 = 1;

/// The waiter bit of subscriber record `index` in `not_empty.waiters`.
#[inline]
fn sub_bit(index: usize) -> u64 {
    1 << (index % MAX_SUBSCRIBERS)
}

/// One subscriber. Its owner writes `cursor` and `missed`; the rest changes under the ring lock.
#[repr(C)]
pub(crate) struct Sub {
    /// `VACANT`, `TETHERED` or `UNTETHERED`.
    pub(crate) state: AtomicU32,
    pub(crate) pid: AtomicU32,
    pub(crate) start_time: AtomicU64,
    /// The next position this subscriber reads.
    pub(crate) cursor: AtomicU64,
    /// Messages it missed (lapped), in all.
    pub(crate) missed: AtomicU64,
}

/// Who is attached and what was lost, on one line.
#[repr(C)]
pub(crate) struct BroadcastRoster {
    /// [`Overflow::code`] of the ring, stored by its creator before the header; fixed after.
    pub(crate) policy: AtomicU32,
    /// Live subscribers as last counted (under the lock).
    pub(crate) subscribers: AtomicU32,
    /// Subscribers that ever joined, and those found dead (reaped) rather than leaving.
    pub(crate) joined: AtomicU32,
    pub(crate) died: AtomicU32,
    /// One bit per subscriber record in use: the publisher scans only these.
    pub(crate) occupied: AtomicU64,
    /// Messages missed by lapped subscribers, all counted (the sum of their `missed`).
    pub(crate) missed: AtomicU64,
}

/// The control block of a broadcast ring, each group on its own 128-byte line. All-zero bytes
/// are a valid initial state but for `roster.policy`, which the creator stores.
#[repr(C)]
pub(crate) struct BroadcastShared {
    /// Messages published: the next position the publisher writes. For newcomers, the end of
    /// the stream and inspection; subscribers wait on their slot, not on this.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Subscribers sleep here while their next slot is not ready.
    pub(crate) not_empty: CachePadded<Doorbell>,
    /// The publisher sleeps here while the ring is full (`Block`) or too few subscribers joined.
    pub(crate) not_full: CachePadded<Doorbell>,
    pub(crate) lock: CachePadded<LockWord>,
    pub(crate) publisher: CachePadded<RoleRecord>,
    pub(crate) roster: CachePadded<BroadcastRoster>,
    pub(crate) counters: CachePadded<WaitCounters>,
    pub(crate) subs: [CachePadded<Sub>; MAX_SUBSCRIBERS],
}

impl BroadcastShared {
    pub(crate) fn new(overflow: Overflow) -> Self {
        BroadcastShared {
            tail: CachePadded::new(AtomicU64::new(0)),
            not_empty: CachePadded::new(Doorbell::new()),
            not_full: CachePadded::new(Doorbell::new()),
            lock: CachePadded::new(LockWord::new()),
            publisher: CachePadded::new(RoleRecord::new()),
            roster: CachePadded::new(BroadcastRoster {
                policy: AtomicU32::new(overflow.code()),
                subscribers: AtomicU32::new(0),
                joined: AtomicU32::new(0),
                died: AtomicU32::new(0),
                occupied: AtomicU64::new(0),
                missed: AtomicU64::new(0),
            }),
            counters: CachePadded::new(WaitCounters::new()),
            subs: std::array::from_fn(|_| {
                CachePadded::new(Sub {
                    state: AtomicU32::new(VACANT),
                    pid: AtomicU32::new(0),
                    start_time: AtomicU64::new(0),
                    cursor: AtomicU64::new(0),
                    missed: AtomicU64::new(0),
                })
            }),
        }
    }

    /// Records the ring's policy (its creator, before publishing the header).
    pub(crate) fn set_policy(&self, overflow: Overflow) {
        // Relaxed: published with the header by its Release store of the magic.
        self.roster.policy.store(overflow.code(), Relaxed);
    }

    /// The ring's policy, checked.
    pub(crate) fn policy(&self) -> Result<Overflow, Corrupted> {
        // Relaxed: stored before the header was published, which the caller acquired.
        let code = self.roster.policy.load(Relaxed);
        Overflow::from_code(code).ok_or_else(|| Corrupted {
            reason: format!("broadcast policy {code} is neither block (1) nor overwrite (2)"),
        })
    }

    /// Messages published so far.
    pub(crate) fn published(&self) -> u64 {
        // Acquire: pairs with the publisher's Release store; what it wrote before is visible.
        self.tail.load(Acquire)
    }

    /// Takes a vacant subscriber record for this process and places its cursor (see the module
    /// docs, "Joining"). Caller holds the ring lock. Returns the record, the position to start
    /// at, and the end of the join window (positions below it may be overwritten unannounced).
    pub(crate) fn join(
        &self,
        tokens: Tokens,
        sub: Subscription,
        capacity: u64,
    ) -> Result<(usize, u64, u64), crate::Error> {
        for pass in 0..2 {
            let free = self.subs.iter().position(|s| s.state.load(Acquire) == VACANT);
            if let Some(index) = free {
                let s = &self.subs[index];
                // The token first: whoever sees the record in use sees it held (see `tokens`).
                tokens.take(1 + index)?;
                #[cfg(not(loom))]
                {
                    let me = crate::sys::proc::current();
                    s.pid.store(me.pid, Relaxed);
                    s.start_time.store(me.start_time, Relaxed);
                }
                // Nobody owns a vacant record's waiter bit.
                self.not_empty.forget_waiters(sub_bit(index));
                let first = self.published();
                let start = match sub.start {
                    Start::Latest => first,
                    // The slot of `first` may be being overwritten now: the one after is the
                    // oldest that may still be there.
                    Start::Oldest => first.saturating_sub(capacity - 1),
                };
                // Relaxed: published by the Release store of the state below.
                s.cursor.store(start, Relaxed);
                s.missed.store(0, Relaxed);
                s.state
                    .store(if sub.tethered { TETHERED } else { UNTETHERED }, Release);
                // Release: pairs with the publisher's Acquire load in `limit_scan`.
                self.roster.occupied.fetch_or(sub_bit(index), Release);
                // StoreLoad against the publisher's scan (see the module docs, "Joining").
                fence(SeqCst);
                let safe = self.published();
                let start = match sub.start {
                    Start::Latest => {
                        // Release: our state is published before the cursor's new value.
                        s.cursor.store(safe, Release);
                        safe
                    }
                    Start::Oldest => start,
                };
                // Release: pairs with `census`.
                self.roster.joined.fetch_add(1, Release);
                self.recount();
                self.not_full.ring(1, &self.counters.wakes);
                return Ok((index, start, safe));
            }
            if pass == 0 {
                self.reap(tokens);
            }
        }
        Err(crate::Error::Limit(format!(
            "the ring already has {MAX_SUBSCRIBERS} subscribers"
        )))
    }

    /// Gives up subscriber record `index`, then its token. Caller holds the ring lock (or could
    /// not get it: best effort).
    fn leave(&self, index: usize, tokens: Tokens) {
        let s = &self.subs[index % MAX_SUBSCRIBERS];
        // Only if it still looks like ours (a corrupted table may say otherwise).
        if matches!(s.state.load(Acquire), TETHERED | UNTETHERED) {
            // Release: everything we did happens before a publisher that sees us gone.
            s.state.store(VACANT, Release);
        }
        self.roster.occupied.fetch_and(!sub_bit(index), Release);
        self.not_empty.forget_waiters(sub_bit(index));
        tokens.give_back(1 + index);
        self.recount();
    }

    /// Vacates the records of subscribers whose process died, and recounts. Caller holds the
    /// lock. Returns how many were reaped.
    pub(crate) fn reap(&self, tokens: Tokens) -> u32 {
        let mut reaped = 0;
        for (index, s) in self.subs.iter().enumerate() {
            match s.state.load(Acquire) {
                VACANT => continue,
                TETHERED | UNTETHERED if sub_alive(s, index, tokens) => continue,
                TETHERED | UNTETHERED => {
                    // Relaxed: a statistic, published with the counts by `recount`.
                    self.roster.died.fetch_add(1, Relaxed);
                    reaped += 1;
                }
                // No correct process writes anything else: free the record.
                _ => {}
            }
            s.state.store(VACANT, Release);
            self.roster.occupied.fetch_and(!sub_bit(index), Release);
            // A subscriber killed while parked leaves its bit set: every publish would then
            // make a futex call.
            self.not_empty.forget_waiters(sub_bit(index));
        }
        self.recount();
        reaped
    }

    /// Recounts the live records into the roster (never adjusted, always recomputed).
    fn recount(&self) {
        let live = self
            .subs
            .iter()
            .filter(|s| matches!(s.state.load(Acquire), TETHERED | UNTETHERED))
            .count() as u32;
        // Release: pairs with `census`.
        self.roster.subscribers.store(live, Release);
    }

    /// Live subscribers as last counted, and how many ever joined / died.
    pub(crate) fn census(&self) -> (u32, u32, u32) {
        // Acquire: pairs with the Release stores of `recount` and `join`.
        (
            self.roster.subscribers.load(Acquire),
            self.roster.joined.load(Acquire),
            self.roster.died.load(Relaxed),
        )
    }

    /// Every subscriber record in use, with whether its process is alive (a syscall each).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn subscribers(&self, tokens: Tokens) -> Vec<SubscriberInfo> {
        let tail = self.published();
        let mut out = Vec::new();
        for (index, s) in self.subs.iter().enumerate() {
            let tethered = match s.state.load(Acquire) {
                TETHERED => true,
                UNTETHERED => false,
                _ => continue,
            };
            // Relaxed: a snapshot for display, ordered after the Acquire of the state.
            let cursor = s.cursor.load(Relaxed);
            out.push(SubscriberInfo {
                index,
                pid: s.pid.load(Relaxed),
                alive: sub_alive(s, index, tokens),
                tethered,
                lag: tail.saturating_sub(cursor),
                missed: s.missed.load(Relaxed),
            });
        }
        out
    }
}

/// Whether the process holding subscriber record `index` is alive: its token (see `tokens`), or
/// in a heap ring its pid and start time (which unit tests overwrite to play a dead one).
fn sub_alive(s: &Sub, index: usize, tokens: Tokens) -> bool {
    match tokens {
        // Relaxed: ordered by the caller's Acquire load of the state.
        Tokens::Local => super::local_holder_alive(s.pid.load(Relaxed), s.start_time.load(Relaxed)),
        #[cfg(not(loom))]
        Tokens::Kernel(_) => tokens
            .held(1 + index)
            .unwrap_or_else(|| super::local_holder_alive(s.pid.load(Relaxed), s.start_time.load(Relaxed))),
    }
}

/// One subscriber, as `shmpipe stat` shows it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Its record in the ring.
    pub index: usize,
    /// Its process.
    pub pid: u32,
    /// Whether that process is alive (a dead one is reaped when the publisher next waits).
    pub alive: bool,
    /// Whether it holds an [`Overflow::Block`] publisher back.
    pub tethered: bool,
    /// Messages published that it has not read yet.
    pub lag: u64,
    /// Messages it missed (lapped).
    pub missed: u64,
}

/// A snapshot of a broadcast ring.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages published.
    pub published: u64,
    /// Subscribers attached now (dead ones are removed when noticed).
    pub subscribers: u32,
    /// Subscribers that ever joined.
    pub joined: u32,
    /// Subscribers found dead (killed without leaving).
    pub died: u32,
    /// Messages missed by lapped subscribers, all counted.
    pub missed: u64,
}

/// The slots of a broadcast ring: a length word, a sequence word and payload words each.
pub(crate) struct BcSlots {
    base: NonNull<u8>,
    stride: usize,
    mask: u64,
    /// Payload words per slot.
    words: usize,
    /// Under loom every word of the slots is a loom atomic of its own.
    #[cfg(loom)]
    seqs: Box<[AtomicU64]>,
    #[cfg(loom)]
    lens: Box<[AtomicU32]>,
    #[cfg(loom)]
    data: Box<[AtomicU64]>,
}

// SAFETY: an address plus geometry; every access to the memory is atomic.
unsafe impl Send for BcSlots {}
// SAFETY: as above.
unsafe impl Sync for BcSlots {}

impl BcSlots {
    /// # Safety
    /// `base` must point to `capacity * stride` bytes, 8-aligned, valid for reads and writes for
    /// as long as this value is used, accessed by everyone only atomically; `capacity` a power of
    /// two, `stride` a multiple of 8 and more than `SLOT_HEADER`.
    pub(crate) unsafe fn new(base: NonNull<u8>, capacity: usize, stride: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && stride.is_multiple_of(8) && stride > SLOT_HEADER);
        let words = (stride - SLOT_HEADER) / 8;
        BcSlots {
            base,
            stride,
            mask: capacity as u64 - 1,
            words,
            #[cfg(loom)]
            seqs: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            #[cfg(loom)]
            lens: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            #[cfg(loom)]
            data: (0..capacity * words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    fn slot(&self, pos: u64) -> usize {
        // The mask bounds the slot number below `capacity`, whatever `pos` is.
        (pos & self.mask) as usize
    }

    /// The sequence word of the slot of `pos`.
    #[inline]
    fn seq(&self, pos: u64) -> &AtomicU64 {
        #[cfg(loom)]
        return &self.seqs[self.slot(pos)];
        #[cfg(not(loom))]
        // SAFETY: slot * stride + 8 is inside the `capacity * stride` bytes promised to `new`,
        // 8-aligned (stride is a multiple of 8); an AtomicU64 may alias memory other processes
        // access atomically.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.slot(pos) * self.stride + 8)
                .cast::<AtomicU64>()
        }
    }

    /// The length word of the slot of `pos`.
    #[inline]
    fn len(&self, pos: u64) -> &AtomicU32 {
        #[cfg(loom)]
        return &self.lens[self.slot(pos)];
        #[cfg(not(loom))]
        // SAFETY: as in `seq`, at the slot's start.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.slot(pos) * self.stride)
                .cast::<AtomicU32>()
        }
    }

    /// The payload words of the slot of `pos` (`words` of them).
    #[inline]
    fn payload(&self, pos: u64) -> &[AtomicU64] {
        #[cfg(loom)]
        return &self.data[self.slot(pos) * self.words..][..self.words];
        #[cfg(not(loom))]
        // SAFETY: the payload is the `stride - SLOT_HEADER` bytes after the slot header, inside
        // the memory promised to `new`, 8-aligned; atomics may alias memory other processes
        // access atomically.
        unsafe {
            let at = self.base.as_ptr().add(self.slot(pos) * self.stride + SLOT_HEADER);
            std::slice::from_raw_parts(at.cast::<AtomicU64>(), self.words)
        }
    }
}

/// Stores `msg` into `words` (at least `msg.len()` bytes of them), a word at a time.
#[inline]
fn store_words(words: &[AtomicU64], msg: &[u8]) {
    let (full, rest) = (msg.len() / 8, msg.len() % 8);
    let src = msg.as_ptr();
    let full_words = &words[..full.min(words.len())];
    for (i, w) in full_words.iter().enumerate() {
        // SAFETY: `i < full`, so the 8 bytes at `i * 8` lie inside `msg`; unaligned read.
        let v = unsafe { src.add(i * 8).cast::<u64>().read_unaligned() };
        // Relaxed: ordered by the seqlock's fence and the Release store of the sequence.
        w.store(v, Relaxed);
    }
    if let (true, Some(w)) = (rest > 0, words.get(full)) {
        let mut bytes = [0u8; 8];
        bytes[..rest].copy_from_slice(&msg[full * 8..]);
        // Relaxed: as above.
        w.store(u64::from_ne_bytes(bytes), Relaxed);
    }
}

/// Copies `len` bytes (at most the words' size) out of `words` into `buf`, replacing its
/// contents: a word at a time, straight into the `Vec`'s memory.
#[inline]
fn load_words(words: &[AtomicU64], len: usize, buf: &mut Vec<u8>) {
    let n = len.div_ceil(8).min(words.len());
    buf.clear();
    buf.reserve(n * 8);
    let dst = buf.as_mut_ptr();
    for (i, w) in words[..n].iter().enumerate() {
        // Relaxed: ordered by the Acquire load of the sequence and the fence after the copy.
        let bytes = w.load(Relaxed).to_ne_bytes();
        // SAFETY: `i < n` and the capacity is at least `n * 8` bytes (reserved above, on an
        // empty `Vec`); an unaligned write of plain bytes.
        unsafe { dst.add(i * 8).cast::<[u8; 8]>().write_unaligned(bytes) };
    }
    // SAFETY: the first `n * 8` bytes were written above, and `len.min(n * 8)` is no more.
    unsafe { buf.set_len(len.min(n * 8)) };
}

/// Where a broadcast ring's memory lives, and what happens when a member leaves.
pub(crate) trait BroadcastBacking: Send + Sync {
    /// Called under the ring lock after the publisher closed or a subscriber left.
    fn on_leave(&self, _shared: &BroadcastShared) {}

    /// Whether the memory can no longer be found by newcomers (segment removed out of band).
    fn unreachable(&self) -> bool {
        false
    }

    /// How the members' liveness is known (see `tokens`).
    fn tokens(&self) -> Tokens {
        Tokens::Local
    }
}

impl BroadcastBacking for HeapMemory<BroadcastShared> {}

/// A ring's memory and validated geometry, shared by the ends in this process.
pub(crate) struct BroadcastCore {
    shared: NonNull<BroadcastShared>,
    slots: BcSlots,
    geometry: Geometry,
    cap: u64,
    overflow: Overflow,
    /// `backing.tokens()`, asked once.
    tokens: Tokens,
    /// Owns the memory `shared` and `slots` point into; dropped last.
    backing: Box<dyn BroadcastBacking>,
}

// SAFETY: the pointers refer to memory owned by `backing` (Send + Sync), accessed only through
// atomics.
unsafe impl Send for BroadcastCore {}
// SAFETY: as above.
unsafe impl Sync for BroadcastCore {}

impl BroadcastCore {
    /// # Safety
    /// `shared` must point to a valid `BroadcastShared` and `slots` to `geometry.capacity` slots
    /// of the broadcast stride, both kept alive and mapped by `backing`.
    pub(crate) unsafe fn new(
        shared: NonNull<BroadcastShared>,
        slots: BcSlots,
        geometry: Geometry,
        overflow: Overflow,
        backing: Box<dyn BroadcastBacking>,
    ) -> Self {
        #[cfg(not(loom))]
        crate::sys::membarrier::register();
        BroadcastCore {
            shared,
            slots,
            geometry,
            cap: geometry.capacity as u64,
            overflow,
            tokens: backing.tokens(),
            backing,
        }
    }

    pub(crate) fn shared(&self) -> &BroadcastShared {
        // SAFETY: valid for our lifetime by the contract of `new`.
        unsafe { self.shared.as_ref() }
    }

    /// The check a waiting publisher makes after each park slice: a tethered subscriber that
    /// died holds it back until it is reaped, so reap; the wait goes on (room is `room_check`'s).
    fn reap_check<T, E>(&self) -> Check<T, E> {
        self.maintain();
        Check::NotYet
    }

    /// The check a waiting subscriber makes after each park slice: done once the publisher has
    /// closed or died (`Ok(false)`: look again), or, with `Ok(true)`, when no publisher ever
    /// came and nobody can find the ring any more, so none will.
    fn publisher_check(&self) -> Check<bool, RecvTimeoutError> {
        match self.publisher_peer() {
            Peer::Dead | Peer::Closed => Check::Done(Ok(false)),
            Peer::NotYet if self.backing.unreachable() => Check::Done(Ok(true)),
            Peer::Alive | Peer::NotYet => Check::NotYet,
        }
    }

    fn publisher_peer(&self) -> Peer {
        self.shared().publisher.peer(self.tokens, Role::Sender)
    }

    fn stats(&self) -> Stats {
        let shared = self.shared();
        let (subscribers, joined, died) = shared.census();
        Stats {
            published: shared.published(),
            subscribers,
            joined,
            died,
            // Relaxed: a statistic.
            missed: shared.roster.missed.load(Relaxed),
        }
    }

    /// Reaps dead subscribers if the lock is free (one try: whoever holds it is doing
    /// membership work already).
    fn maintain(&self) {
        let shared = self.shared();
        if let Ok(_lock) = RingLock::acquire(&shared.lock, self.tokens, Instant::now()) {
            shared.reap(self.tokens);
        }
    }

    /// Joins as a subscriber under the ring lock.
    fn join(&self, sub: Subscription) -> Result<(usize, u64, u64), crate::Error> {
        let shared = self.shared();
        let _lock = RingLock::acquire(&shared.lock, self.tokens, Instant::now() + Duration::from_secs(5))?;
        shared.join(self.tokens, sub, self.cap)
    }

    /// Leaves as subscriber `index`, tells the backing, wakes the publisher.
    fn leave(&self, index: usize) {
        let shared = self.shared();
        {
            // Best effort without the lock (a hostile holder): the next reap recounts.
            let _lock =
                RingLock::acquire(&shared.lock, self.tokens, Instant::now() + Duration::from_secs(1)).ok();
            shared.leave(index, self.tokens);
            self.backing.on_leave(shared);
        }
        shared.not_full.ring(1, &shared.counters.wakes);
    }
}

/// Creates an in-process broadcast ring on the heap (the same ring as
/// `shm://NAME?mode=broadcast`, without the segment) with `capacity` slots (a power of two) of up
/// to `max_message` bytes, and returns its publisher and a first, tethered subscriber. More
/// subscribers come from [`Publisher::subscribe`].
///
/// ```
/// use shmpipe::ring::broadcast::{self, Overflow, Subscription};
/// use shmpipe::{Receiver, Sender};
/// let (mut tx, mut a) = broadcast::channel(8, 64, Overflow::Block).unwrap();
/// let mut b = tx.subscribe(Subscription::default()).unwrap();
/// tx.send(b"tick").unwrap();
/// let mut buf = Vec::new();
/// a.recv(&mut buf).unwrap();
/// assert_eq!(buf, b"tick");
/// b.recv(&mut buf).unwrap();
/// assert_eq!(buf, b"tick");
/// ```
pub fn channel(
    capacity: usize,
    max_message: usize,
    overflow: Overflow,
) -> Result<(Publisher, Subscriber), crate::Error> {
    let geometry = Geometry::new(capacity, max_message)?;
    let stride = stride(&geometry);
    let memory = HeapMemory::new(BroadcastShared::new(overflow), capacity * stride);
    // SAFETY: the slot memory is `capacity * stride` zeroed bytes, 8-aligned; it moves into the
    // core (its backing), which frees it last.
    let core = unsafe {
        let slots = BcSlots::new(memory.slots(), capacity, stride);
        BroadcastCore::new(memory.shared(), slots, geometry, overflow, Box::new(memory))
    };
    let core = Arc::new(core);
    core.shared().publisher.claim(Tokens::Local, Role::Sender)?;
    let publisher = Publisher::joined(Arc::clone(&core), 0);
    let subscriber = Subscriber::join(core, Subscription::default())?;
    Ok((publisher, subscriber))
}

/// Bytes from one slot to the next: header and payload, rounded up to a cache line.
pub(crate) fn stride(geometry: &Geometry) -> usize {
    geometry.stride_for(super::RingKind::Broadcast)
}

/// The publishing end of a broadcast ring.
pub struct Publisher {
    core: Arc<BroadcastCore>,
    /// The next position to write: authoritative; `tail` is only ever written from it.
    pos: u64,
    /// Positions below this may be written without a look at the subscribers: the slowest
    /// tethered cursor (or `pos`, with none) plus `capacity`, as last computed; `u64::MAX` for
    /// `Overwrite` once enough subscribers joined; 0 until then, and once stopped.
    limit: u64,
    /// Subscribers that must have joined before the first message is published.
    expect: u32,
    wait: WaitStrategy,
    fault: Option<Corrupted>,
    liveness: LivenessTimer,
    /// The process this end belongs to (`tokens::owner`).
    owner: u32,
}

impl Publisher {
    /// Takes over the publishing end of `core`, whose publisher role the caller has claimed.
    pub(crate) fn joined(core: Arc<BroadcastCore>, expect: u32) -> Self {
        let pos = core.shared().published();
        Publisher {
            core,
            pos,
            limit: 0,
            expect,
            wait: WaitStrategy::default(),
            fault: None,
            liveness: LivenessTimer::new(),
            owner: tokens::owner(),
        }
    }

    /// A new subscriber of this (in-process) ring.
    pub fn subscribe(&self, sub: Subscription) -> Result<Subscriber, crate::Error> {
        let mut s = Subscriber::join(Arc::clone(&self.core), sub)?;
        s.wait = self.wait;
        Ok(s)
    }

    /// A handle that subscribes from another thread while this publisher sends (loom models
    /// only: a late joiner racing the publisher; `subscribe` needs the publisher itself).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn joiner(&self) -> Joiner {
        Joiner(Arc::clone(&self.core))
    }

    /// Sets how blocking calls wait for room (and for subscribers).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Waits until at least `n` subscribers have joined (ever) before the first message goes
    /// out: a stream that must not start before its subscribers are there. Default 0. Until
    /// then `try_send` returns `Full` (under either policy) and `send` waits.
    pub fn set_expect_subscribers(&mut self, n: u32) {
        self.expect = n;
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
    }

    /// The ring's policy.
    pub fn overflow(&self) -> Overflow {
        self.core.overflow
    }

    /// Membership and losses.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// The subscribers attached now (a syscall each, to check they are alive).
    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        self.core.shared().subscribers(self.core.tokens)
    }

    /// Recomputes `limit`: the slowest live tethered subscriber's cursor (or our position, with
    /// none) plus `capacity`. Returns whether `pos` may be written now.
    #[cold]
    #[inline(never)]
    fn refresh_limit(&mut self) -> Result<bool, Corrupted> {
        if let Some(c) = &self.fault {
            return Err(cold_clone(c));
        }
        let shared = self.core.shared();
        if self.expect > 0 && shared.census().1 < self.expect {
            return Ok(false);
        }
        if self.core.overflow == Overflow::Overwrite {
            self.limit = u64::MAX;
            return Ok(true);
        }
        // StoreLoad against a joining subscriber (see the module docs, "Joining").
        fence(SeqCst);
        let (pos, cap) = (self.pos, self.core.cap);
        let mut min = pos;
        // Acquire: pairs with the Release in `join`; a set bit shows the record's state.
        let mut occupied = shared.roster.occupied.load(Acquire);
        while occupied != 0 {
            let index = occupied.trailing_zeros() as usize;
            occupied &= occupied - 1;
            let s = &shared.subs[index % MAX_SUBSCRIBERS];
            // Acquire (both): the subscriber's reads of a slot happen before we overwrite it
            // (its cursor store is Release).
            if s.state.load(Acquire) != TETHERED {
                continue;
            }
            let cursor = s.cursor.load(Acquire);
            if cursor > pos {
                let c = Corrupted {
                    reason: format!(
                        "subscriber {index}'s cursor {cursor} is past the publisher's position {pos}"
                    ),
                };
                self.fault = Some(c.clone());
                self.limit = 0;
                return Err(c);
            }
            // A cursor more than a ring behind (a subscriber that joined at the oldest message
            // and was overwritten before we saw it) holds us back by a ring, no more: it skips.
            min = min.min(cursor.max(pos.saturating_sub(cap)));
        }
        self.limit = min + cap;
        Ok(pos < self.limit)
    }

    /// Why a message of `len` bytes cannot go out now, in order: fork, poison, size.
    #[cold]
    #[inline(never)]
    fn refusal(&self, len: usize) -> Option<TrySendError> {
        if tokens::inherited(self.owner) {
            return Some(TrySendError::Forked);
        }
        if let Some(c) = &self.fault {
            return Some(TrySendError::Corrupted(c.clone()));
        }
        let max = self.core.geometry.max_message;
        (len > max).then(|| too_large(len, max))
    }

    /// Room for one message now, or `Full`. One comparison while the cached limit allows it.
    #[inline]
    fn try_room(&mut self, len: usize, liveness: bool) -> Result<(), TrySendError> {
        if self.pos < self.limit && len <= self.core.geometry.max_message && !tokens::inherited(self.owner) {
            return Ok(());
        }
        self.room_slow(len, liveness)
    }

    #[cold]
    #[inline(never)]
    fn room_slow(&mut self, len: usize, liveness: bool) -> Result<(), TrySendError> {
        if let Some(e) = self.refusal(len) {
            return Err(e);
        }
        if self.refresh_limit()? {
            return Ok(());
        }
        if liveness && self.liveness.due() {
            self.core.maintain();
            if self.refresh_limit()? {
                return Ok(());
            }
        }
        Err(TrySendError::Full)
    }

    /// Room for one message, waiting until `deadline`.
    fn room_deadline(&mut self, len: usize, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        match self.try_room(len, false) {
            Err(TrySendError::Full) => {}
            r => return r.map_err(Into::into),
        }
        let core = Arc::clone(&self.core);
        let wait = self.wait;
        wait_until(
            &core.shared().not_full,
            core.shared().counters.tally(Role::Sender, PUBLISHER_BIT),
            &wait,
            deadline,
            || self.room_check(),
            || core.reap_check(),
            || SendTimeoutError::Timeout,
        )
    }

    /// The check of a wait for room (blocking or async): done once the slot to write is free.
    fn room_check(&mut self) -> Check<(), SendTimeoutError> {
        match self.refresh_limit() {
            Ok(true) => Check::Done(Ok(())),
            Ok(false) => Check::NotYet,
            Err(c) => Check::Done(Err(SendTimeoutError::Corrupted(c))),
        }
    }

    /// Writes `msg` at `pos` and publishes it. The caller checked the room and the size.
    #[inline]
    fn write(&mut self, msg: &[u8]) {
        let (pos, slots) = (self.pos, &self.core.slots);
        let seq = slots.seq(pos);
        // Then a Release fence: a seqlock writer's opening. A subscriber that reads any payload
        // word below reads this odd value (or later) on its second look at the sequence.
        //
        // Release, not Relaxed (found by the loom models): a lapped subscriber that reads this
        // odd value checks it against `tail` (`skip`), and must then see the `tail` we stored
        // before it (at least `pos`). With a Relaxed store, a subscriber at position 0 of a
        // 2-slot ring could read position 4's odd value in slot 0 and then the `tail` of 1 (the
        // store of `tail` after message 3 not yet visible to it: C11 allows it, and so does
        // ARMv8, where a later plain store may become visible before an earlier store-release),
        // and poison itself with "slot sequence for position 4 is more than a ring past the
        // published 1". On x86 a Release store is the same plain store.
        seq.store(pos.wrapping_mul(2).wrapping_add(1), Release);
        fence(Release);
        store_words(slots.payload(pos), msg);
        // Relaxed: published by the Release store of the sequence below.
        slots.len(pos).store(msg.len() as u32, Relaxed);
        // PUBLISH (Release): the payload and length happen before a subscriber that sees the
        // message complete.
        seq.store(pos.wrapping_mul(2).wrapping_add(2), PUBLISH);
        self.pos = pos.wrapping_add(1);
        let shared = self.core.shared();
        // Release: a newcomer or a subscriber at the end of the stream that reads `tail` sees
        // the message complete.
        shared.tail.store(self.pos, Release);
        shared.not_empty.ring(u32::MAX, &shared.counters.wakes);
    }
}

impl Sender for Publisher {
    #[inline]
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.try_room(msg.len(), true)?;
        self.write(msg);
        Ok(())
    }

    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        self.room_deadline(msg.len(), deadline)?;
        self.write(msg);
        Ok(())
    }

    fn max_message_size(&self) -> usize {
        self.core.geometry.max_message
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if unwinding_under_loom() || tokens::inherited(self.owner) {
            // In a forked child: detach only (the parent is still the publisher).
            return;
        }
        let core = &self.core;
        let shared = core.shared();
        shared.publisher.close(core.tokens, Role::Sender);
        shared.not_empty.ring(u32::MAX, &shared.counters.wakes);
        let _lock =
            RingLock::acquire(&shared.lock, core.tokens, Instant::now() + Duration::from_secs(1)).ok();
        core.backing.on_leave(shared);
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("broadcast::Publisher")
            .field("published", &self.pos)
            .field("capacity", &self.capacity())
            .field("overflow", &self.core.overflow)
            .finish()
    }
}

/// Subscribes to a ring from a thread other than its publisher's (loom models only, see
/// [`Publisher::joiner`]).
#[cfg(loom)]
#[doc(hidden)]
pub struct Joiner(Arc<BroadcastCore>);

#[cfg(loom)]
impl Joiner {
    /// As [`Publisher::subscribe`], with the default wait strategy.
    pub fn subscribe(&self, sub: Subscription) -> Result<Subscriber, crate::Error> {
        Subscriber::join(Arc::clone(&self.0), sub)
    }

    /// The ring's statistics (as [`Publisher::stats`]).
    pub fn stats(&self) -> Stats {
        self.0.stats()
    }
}

/// What a subscriber found at its position.
enum Look {
    /// The message is complete.
    Ready,
    /// Not written yet (or being written).
    NotYet,
    /// Overwritten: the slot holds position `q` (> ours).
    Lapped(u64),
}

/// A receiving end of a broadcast ring: every message published after it joined, in order.
pub struct Subscriber {
    core: Arc<BroadcastCore>,
    /// Our record.
    me: usize,
    /// The next position to read: authoritative; the record's cursor is written from it.
    pos: u64,
    /// Positions below this may have been overwritten before the publisher saw us (a join at
    /// the oldest message): skipped silently, not counted as missed.
    window_end: u64,
    tethered: bool,
    wait: WaitStrategy,
    fault: Option<Corrupted>,
    liveness: LivenessTimer,
    /// `Disconnected` was returned: the publisher is gone and everything drained.
    done: bool,
    /// Messages this subscriber missed.
    missed: u64,
    /// Messages missed during a batch call that had already taken some: reported as `Lagged` by
    /// the next call, so no count is lost.
    pending_lag: u64,
    /// A buffer reused by the batch calls that hand messages to a closure.
    scratch: Vec<u8>,
    owner: u32,
}

impl Subscriber {
    fn join(core: Arc<BroadcastCore>, sub: Subscription) -> Result<Self, crate::Error> {
        let (me, pos, window_end) = core.join(sub)?;
        Ok(Subscriber::joined(core, me, pos, window_end, sub.tethered))
    }

    /// Takes over subscriber record `me` of `core`, joined (by the caller, under the lock) at
    /// `pos`.
    pub(crate) fn joined(
        core: Arc<BroadcastCore>,
        me: usize,
        pos: u64,
        window_end: u64,
        tethered: bool,
    ) -> Self {
        Subscriber {
            core,
            me,
            pos,
            window_end,
            tethered,
            wait: WaitStrategy::default(),
            fault: None,
            liveness: LivenessTimer::new(),
            done: false,
            missed: 0,
            pending_lag: 0,
            scratch: Vec::new(),
            owner: tokens::owner(),
        }
    }

    /// Sets how blocking calls wait for messages.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
    }

    /// The ring's policy.
    pub fn overflow(&self) -> Overflow {
        self.core.overflow
    }

    /// Whether this subscriber holds a `Block` publisher back.
    pub fn is_tethered(&self) -> bool {
        self.tethered
    }

    /// Messages this subscriber missed in all (each was reported by a [`RecvError::Lagged`]).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Messages published that this subscriber has not read yet.
    pub fn lag(&self) -> u64 {
        self.core.shared().published().saturating_sub(self.pos)
    }

    /// The publisher's state: after `Disconnected`, `Closed` is a clean end of stream and
    /// `Dead` a publisher that died.
    pub fn publisher(&self) -> Peer {
        self.core.publisher_peer()
    }

    /// Membership and losses of the ring.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    #[cold]
    #[inline(never)]
    fn poison(&mut self, reason: String) -> Corrupted {
        let c = Corrupted { reason };
        self.fault = Some(c.clone());
        c
    }

    /// What the slot at our position holds. Acquire: a complete message's payload is visible.
    #[inline]
    fn look(&mut self) -> Result<Look, Corrupted> {
        let pos = self.pos;
        let seq = self.core.slots.seq(pos).load(Acquire);
        self.classify(pos, seq)
    }

    #[inline]
    fn classify(&mut self, pos: u64, seq: u64) -> Result<Look, Corrupted> {
        let want = pos.wrapping_mul(2).wrapping_add(2);
        if seq == want {
            return Ok(Look::Ready);
        }
        if seq == 0 {
            return Ok(Look::NotYet);
        }
        let at = (seq - 1) / 2;
        if at & (self.core.cap - 1) != pos & (self.core.cap - 1) {
            return Err(self.poison(format!(
                "slot {} holds sequence {seq:#x}, which is not for that slot (capacity {})",
                pos & (self.core.cap - 1),
                self.core.cap
            )));
        }
        Ok(if seq < want {
            Look::NotYet
        } else {
            Look::Lapped(at)
        })
    }

    /// We were lapped: the slot of our position holds position `at`. Moves to the oldest
    /// message that may still be there and returns how many were skipped (0 inside the join
    /// window, where nothing is counted).
    #[cold]
    #[inline(never)]
    fn skip(&mut self, at: u64) -> Result<u64, Corrupted> {
        // Acquire: the sequence word that showed `at` was read before this fence (Acquire in
        // `look`, but Relaxed on the second look after a copy). If its store was the publisher's
        // (Release, odd or even), the `tail` it stored before that (at least `at`) is visible
        // below, so the check against `tail` never fires for a correct publisher (see `write`).
        fence(Acquire);
        let tail = self.core.shared().published();
        let cap = self.core.cap;
        // `at` is being written or complete, so the publisher reached it: a hostile value far
        // ahead would otherwise send us past every message to come.
        if at > tail.saturating_add(cap) {
            return Err(self.poison(format!(
                "slot sequence for position {at} is more than a ring past the published {tail}"
            )));
        }
        // Every position up to `at - capacity` is overwritten, so the oldest that may be there is
        // at least `at + 1 - capacity`; and at least `tail - capacity`, the oldest of the last
        // `capacity` published (whose slot the publisher's next message overwrites: if it has
        // begun, the next look laps again, by one). Jumping by `tail` rather than by `at` alone
        // takes a subscriber lapped many times over back in one step, not one slot at a time.
        let next = (at + 1 - cap).max(tail.saturating_sub(cap));
        let skipped = next - self.pos;
        let silent = self.tethered && self.core.overflow == Overflow::Block && self.pos < self.window_end;
        self.pos = next;
        self.store_cursor();
        if silent {
            return Ok(0);
        }
        self.missed += skipped;
        let shared = self.core.shared();
        // Relaxed: statistics.
        shared.subs[self.me % MAX_SUBSCRIBERS]
            .missed
            .fetch_add(skipped, Relaxed);
        shared.roster.missed.fetch_add(skipped, Relaxed);
        Ok(skipped)
    }

    #[inline]
    fn store_cursor(&self) {
        let shared = self.core.shared();
        // Release: our reads of every slot before `pos` happen before the publisher, seeing
        // the cursor, overwrites them.
        shared.subs[self.me % MAX_SUBSCRIBERS]
            .cursor
            .store(self.pos, Release);
        if self.tethered && self.core.overflow == Overflow::Block {
            shared.not_full.ring(1, &shared.counters.wakes);
        }
    }

    /// One attempt to take the message at our position into `buf`, or, with `BORROW`, to find
    /// it complete and leave it in its slot (the caller lends it out and advances when done).
    /// Returns its length.
    #[inline]
    fn try_take<const BORROW: bool>(
        &mut self,
        buf: &mut Vec<u8>,
        liveness: bool,
    ) -> Result<usize, TryRecvError> {
        if tokens::inherited(self.owner) {
            return Err(TryRecvError::Forked);
        }
        if let Some(c) = &self.fault {
            return Err(TryRecvError::Corrupted(cold_clone(c)));
        }
        if self.pending_lag > 0 {
            return Err(TryRecvError::Lagged(std::mem::take(&mut self.pending_lag)));
        }
        loop {
            let pos = self.pos;
            match self.look()? {
                Look::Ready => {
                    let slots = &self.core.slots;
                    // Relaxed: ordered by the Acquire load of the sequence in `look`.
                    let len = slots.len(pos).load(Relaxed) as usize;
                    let max = self.core.geometry.max_message;
                    if BORROW {
                        // Lent in place (`borrowable`): nobody writes the slot until our
                        // cursor moves past it, so there is no second look.
                        if len > max {
                            return Err(TryRecvError::Corrupted(
                                self.poison(format!("message length {len} exceeds the maximum {max}")),
                            ));
                        }
                        return Ok(len);
                    }
                    load_words(slots.payload(pos), len.min(max), buf);
                    // Acquire: the copy above happens before the second look at the sequence;
                    // if the publisher overwrote any word we read, we see its odd value or later.
                    fence(Acquire);
                    // Relaxed: ordered by the fence.
                    let again = slots.seq(pos).load(Relaxed);
                    if again == pos.wrapping_mul(2).wrapping_add(2) {
                        if len > max {
                            return Err(TryRecvError::Corrupted(
                                self.poison(format!("message length {len} exceeds the maximum {max}")),
                            ));
                        }
                        self.pos = pos.wrapping_add(1);
                        self.store_cursor();
                        return Ok(len);
                    }
                    buf.clear();
                    match self.classify(pos, again)? {
                        Look::Lapped(at) => match self.skip(at)? {
                            0 => continue,
                            n => return Err(TryRecvError::Lagged(n)),
                        },
                        // A sequence that went back: no correct publisher does that.
                        _ => {
                            return Err(TryRecvError::Corrupted(self.poison(format!(
                                "slot sequence of position {pos} went back to {again:#x}"
                            ))))
                        }
                    }
                }
                Look::Lapped(at) => match self.skip(at)? {
                    0 => continue,
                    n => return Err(TryRecvError::Lagged(n)),
                },
                Look::NotYet => {
                    let due = liveness && self.liveness.due();
                    if self.gone(due)? {
                        self.done = true;
                        return Err(TryRecvError::Disconnected);
                    }
                    // Not over: empty, unless the message arrived meanwhile (or the publisher
                    // is gone and more remains, which `gone` checked is there).
                    if let Look::NotYet = self.look()? {
                        return Err(TryRecvError::Empty);
                    }
                }
            }
        }
    }

    /// Our slot is not ready: whether the stream is over (publisher closed or, when `check`,
    /// dead; and everything it published read). `Ok(false)` when it may go on, or when the
    /// publisher is gone but messages remain (the caller looks again).
    fn gone(&mut self, check: bool) -> Result<bool, Corrupted> {
        if self.done {
            return Ok(true);
        }
        let shared = self.core.shared();
        let over = match shared.publisher.state() {
            ROLE_CLOSED => true,
            _ => check && self.core.publisher_peer() == Peer::Dead,
        };
        if !over {
            return Ok(false);
        }
        // Acquire (in `published`): after the publisher closed (its Release on the state), its
        // last `tail`.
        let tail = shared.published();
        if tail < self.pos {
            return Err(self.poison(format!(
                "the publisher's final position {tail} is behind this subscriber's {}",
                self.pos
            )));
        }
        if tail == self.pos {
            return Ok(true);
        }
        // Messages remain: they must be complete (the publisher stored `tail` after each).
        match self.look()? {
            Look::NotYet => Err(self.poison(format!(
                "position {} is below the published {tail} but its slot is not complete",
                self.pos
            ))),
            _ => Ok(false),
        }
    }

    /// Whether a wait for our slot is over (something to take, or the stream ended).
    fn ready(&mut self) -> Result<bool, Corrupted> {
        Ok(!matches!(self.look()?, Look::NotYet) || self.gone(false)?)
    }

    /// The check of a wait for a message (blocking or async): done (`Ok(false)`: look again)
    /// once our slot holds something or the stream ended, as `BroadcastCore::publisher_check`.
    fn message_check(&mut self) -> Check<bool, RecvTimeoutError> {
        match self.ready() {
            Ok(true) => Check::Done(Ok(false)),
            Ok(false) => Check::NotYet,
            Err(c) => Check::Done(Err(RecvTimeoutError::Corrupted(c))),
        }
    }

    fn recv_inner<const BORROW: bool>(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvTimeoutError> {
        loop {
            match self.try_take::<BORROW>(buf, false) {
                Err(TryRecvError::Empty) => {}
                r => return r.map_err(Into::into),
            }
            let core = Arc::clone(&self.core);
            let wait = self.wait;
            let ended = wait_until(
                &core.shared().not_empty,
                core.shared().counters.tally(Role::Receiver, sub_bit(self.me)),
                &wait,
                deadline,
                || self.message_check(),
                || core.publisher_check(),
                || RecvTimeoutError::Timeout,
            )?;
            if ended {
                self.done = true;
                return Err(RecvTimeoutError::Disconnected);
            }
            match self.try_take::<BORROW>(buf, true) {
                Err(TryRecvError::Empty) => continue,
                r => return r.map_err(Into::into),
            }
        }
    }

    /// Whether the message at our position may be lent in place: only a tethered subscriber of
    /// an `Overflow::Block` ring past its join window holds the publisher off its slot until
    /// its cursor moves. (Under loom the payload words are loom atomics: always a copy.)
    fn borrowable(&self) -> bool {
        !cfg!(loom) && self.tethered && self.core.overflow == Overflow::Block && self.pos >= self.window_end
    }

    /// The guard for a message `try_take::<BORROW>` found (`in_place`) or copied into `scratch`.
    fn guard(&mut self, len: usize, in_place: bool) -> ReadGuard<'_> {
        ReadGuard {
            sub: self,
            len,
            in_place,
        }
    }

    /// Receives without blocking and without a copy where that is safe: a tethered subscriber of
    /// an `overflow=block` ring reads the message in its slot (the publisher cannot overwrite it
    /// until the guard is dropped, which moves this subscriber on); otherwise, under
    /// `overflow=overwrite`, untethered, or in the join window of `Start::Oldest`, the message is
    /// copied into a buffer the guard lends ([`ReadGuard::is_in_place`] says which). Errors as
    /// [`try_recv`](Receiver::try_recv).
    ///
    /// Holding the guard holds an `overflow=block` publisher back, as an unread message does.
    ///
    /// ```
    /// use shmpipe::ring::broadcast::{self, Overflow};
    /// use shmpipe::Sender;
    /// let (mut tx, mut rx) = broadcast::channel(4, 16, Overflow::Block).unwrap();
    /// tx.send(b"tick").unwrap();
    /// let msg = rx.try_recv_ref().unwrap();
    /// assert_eq!(&*msg, b"tick");
    /// assert!(msg.is_in_place());
    /// ```
    pub fn try_recv_ref(&mut self) -> Result<ReadGuard<'_>, TryRecvError> {
        let in_place = self.borrowable();
        let mut buf = std::mem::take(&mut self.scratch);
        let r = if in_place {
            self.try_take::<true>(&mut buf, true)
        } else {
            self.try_take::<false>(&mut buf, true)
        };
        self.scratch = buf;
        Ok(self.guard(r?, in_place))
    }

    /// As [`try_recv_ref`](Self::try_recv_ref), waiting while there is nothing to take.
    pub fn recv_ref(&mut self) -> Result<ReadGuard<'_>, RecvError> {
        self.recv_ref_deadline(None).map_err(Into::into)
    }

    /// As [`try_recv_ref`](Self::try_recv_ref), waiting at most `timeout`.
    pub fn recv_ref_timeout(&mut self, timeout: Duration) -> Result<ReadGuard<'_>, RecvTimeoutError> {
        self.recv_ref_deadline(Instant::now().checked_add(timeout))
    }

    fn recv_ref_deadline(&mut self, deadline: Option<Instant>) -> Result<ReadGuard<'_>, RecvTimeoutError> {
        let in_place = self.borrowable();
        let mut buf = std::mem::take(&mut self.scratch);
        let r = if in_place {
            self.recv_inner::<true>(&mut buf, deadline)
        } else {
            self.recv_inner::<false>(&mut buf, deadline)
        };
        self.scratch = buf;
        Ok(self.guard(r?, in_place))
    }
}

/// A received broadcast message, lent by [`Subscriber::try_recv_ref`] and its blocking forms:
/// in its slot when that is safe ([`is_in_place`](Self::is_in_place)), else a copy. Dropping it
/// moves the subscriber on (and, for a message in place, lets the publisher reuse the slot).
pub struct ReadGuard<'a> {
    sub: &'a mut Subscriber,
    len: usize,
    in_place: bool,
}

impl ReadGuard<'_> {
    /// Whether the message is read in its slot (no copy): a tethered subscriber of an
    /// `overflow=block` ring, past its join window.
    pub fn is_in_place(&self) -> bool {
        self.in_place
    }
}

impl std::ops::Deref for ReadGuard<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if !self.in_place {
            return &self.sub.scratch;
        }
        // The message is complete (its sequence was read with Acquire after the publisher's
        // Release), and nobody writes its words while the guard lives: the ring is
        // `Overflow::Block`, and this tethered subscriber's cursor, which the publisher waits on,
        // stays at this position until the guard drops. Other subscribers only read them.
        let words = self.sub.core.slots.payload(self.sub.pos);
        // SAFETY: `len <= max_message <= stride - SLOT_HEADER` bytes of payload words, not
        // written while we read them (above).
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        if self.in_place {
            self.sub.pos = self.sub.pos.wrapping_add(1);
            self.sub.store_cursor();
        }
    }
}

impl std::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGuard")
            .field("len", &self.len)
            .field("in_place", &self.in_place)
            .finish()
    }
}

impl Subscriber {
    /// After a batch call's first message: whatever else is there now, up to `max` in all,
    /// each handed to `f`. A lag found on the way is kept for the next call (`pending_lag`);
    /// any other error stops it and comes again at the next call.
    fn take_more(&mut self, buf: &mut Vec<u8>, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        f(buf);
        let mut n = 1;
        while n < max {
            match self.try_take::<false>(buf, false) {
                Ok(_) => f(buf),
                Err(TryRecvError::Lagged(missed)) => {
                    self.pending_lag = missed;
                    break;
                }
                Err(_) => break,
            }
            n += 1;
        }
        n
    }
}

impl Receiver for Subscriber {
    #[inline]
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        self.try_take::<false>(buf, true).map(drop)
    }

    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        self.recv_inner::<false>(buf, deadline).map(drop)
    }

    fn try_recv_batch(&mut self, batch: &mut Batch, max: usize) -> Result<usize, TryRecvError> {
        batch.clear();
        self.try_recv_each(max, &mut |m| batch.push(m))
    }

    fn recv_batch_deadline(
        &mut self,
        batch: &mut Batch,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvTimeoutError> {
        batch.clear();
        self.recv_each_deadline(max, deadline, &mut |m| batch.push(m))
    }

    fn try_recv_each(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> Result<usize, TryRecvError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = self
            .try_take::<false>(&mut buf, true)
            .map(|_| self.take_more(&mut buf, max.max(1), f));
        self.scratch = buf;
        r
    }

    fn recv_each_deadline(
        &mut self,
        max: usize,
        deadline: Option<Instant>,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RecvTimeoutError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = self
            .recv_inner::<false>(&mut buf, deadline)
            .map(|_| self.take_more(&mut buf, max.max(1), f));
        self.scratch = buf;
        r
    }

    fn peer(&self) -> Option<Peer> {
        Some(self.publisher())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if unwinding_under_loom() || tokens::inherited(self.owner) {
            return;
        }
        self.core.leave(self.me);
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("broadcast::Subscriber")
            .field("record", &self.me)
            .field("position", &self.pos)
            .field("tethered", &self.tethered)
            .field("missed", &self.missed)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn msg(i: u64) -> [u8; 12] {
        let mut m = [0u8; 12];
        m[..8].copy_from_slice(&i.to_le_bytes());
        m[8..].copy_from_slice(&(i as u32 ^ 0xa5a5_a5a5).to_le_bytes());
        m
    }

    fn seq_of(buf: &[u8]) -> u64 {
        assert_eq!(buf.len(), 12, "length");
        let i = u64::from_le_bytes(buf[..8].try_into().unwrap());
        assert_eq!(
            buf[8..],
            (i as u32 ^ 0xa5a5_a5a5).to_le_bytes(),
            "message {i} is torn"
        );
        i
    }

    #[test]
    fn every_subscriber_gets_every_message_in_order_across_threads() {
        let (mut tx, a) = channel(16, 64, Overflow::Block).unwrap();
        let subs: Vec<Subscriber> = std::iter::once(a)
            .chain((0..2).map(|_| tx.subscribe(Subscription::default()).unwrap()))
            .collect();
        const N: u64 = 20_000;
        let handles: Vec<_> = subs
            .into_iter()
            .map(|mut rx| {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    for i in 0..N {
                        rx.recv(&mut buf).unwrap();
                        assert_eq!(seq_of(&buf), i);
                    }
                    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
                    assert_eq!(rx.publisher(), Peer::Closed);
                    rx.missed()
                })
            })
            .collect();
        for i in 0..N {
            tx.send(&msg(i)).unwrap();
        }
        drop(tx);
        for h in handles {
            assert_eq!(h.join().unwrap(), 0);
        }
    }

    #[test]
    fn borrowed_reads_are_in_place_only_where_the_slot_cannot_be_overwritten() {
        let (mut tx, mut rx) = channel(4, 16, Overflow::Block).unwrap();
        let mut loose = tx.subscribe(Subscription::default().tethered(false)).unwrap();
        for i in 0..4 {
            tx.try_send(&msg(i)).unwrap();
        }
        {
            // Tethered, block: in its slot, and holding the publisher off it.
            let g = rx.try_recv_ref().unwrap();
            assert!(g.is_in_place());
            assert_eq!(seq_of(&g), 0);
            assert_eq!(tx.try_send(&msg(4)), Err(TrySendError::Full));
            // Untethered: a copy (its slot may be overwritten under it).
            let c = loose.try_recv_ref().unwrap();
            assert!(!c.is_in_place());
            assert_eq!(seq_of(&c), 0);
            assert_eq!(seq_of(&g), 0, "the borrowed message is unchanged");
        }
        // The guard's drop moved the subscriber on and freed the slot.
        tx.try_send(&msg(4)).unwrap();
        for i in 1..5 {
            let g = rx.recv_ref_timeout(Duration::from_secs(5)).unwrap();
            assert!(g.is_in_place());
            assert_eq!(seq_of(&g), i);
        }
        assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Empty)));
        drop(tx);
        assert!(matches!(rx.recv_ref(), Err(RecvError::Disconnected)));

        // Overwrite: always a copy, lags counted as by `try_recv`.
        let (mut tx, mut rx) = channel(4, 16, Overflow::Overwrite).unwrap();
        for i in 0..10 {
            tx.try_send(&msg(i)).unwrap();
        }
        assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Lagged(6))));
        let g = rx.try_recv_ref().unwrap();
        assert!(!g.is_in_place());
        assert_eq!(seq_of(&g), 6);
    }

    #[test]
    fn block_waits_for_the_slowest_tethered_subscriber_only() {
        let (mut tx, mut slow) = channel(4, 16, Overflow::Block).unwrap();
        let mut loose = tx
            .subscribe(Subscription {
                tethered: false,
                ..Subscription::default()
            })
            .unwrap();
        for i in 0..4 {
            tx.try_send(&msg(i)).unwrap();
        }
        assert_eq!(tx.try_send(&msg(4)), Err(TrySendError::Full));
        let mut buf = Vec::new();
        for i in 0..4 {
            loose.try_recv(&mut buf).unwrap();
            assert_eq!(seq_of(&buf), i);
        }
        // The untethered one read everything: still full, for the tethered one.
        assert_eq!(tx.try_send(&msg(4)), Err(TrySendError::Full));
        slow.try_recv(&mut buf).unwrap();
        assert_eq!(seq_of(&buf), 0);
        tx.try_send(&msg(4)).unwrap();
        assert_eq!(tx.try_send(&msg(5)), Err(TrySendError::Full));
        loose.try_recv(&mut buf).unwrap();
        assert_eq!(seq_of(&buf), 4);
        assert_eq!(loose.try_recv(&mut buf), Err(TryRecvError::Empty));
        // The tethered one leaving frees the publisher.
        drop(slow);
        for i in 5..40 {
            tx.try_send(&msg(i)).unwrap();
        }
        // The untethered one was lapped: told exactly how many it missed, then goes on.
        let Err(TryRecvError::Lagged(missed)) = loose.try_recv(&mut buf) else {
            panic!("not lagged")
        };
        loose.try_recv(&mut buf).unwrap();
        assert_eq!(seq_of(&buf), 5 + missed);
        assert_eq!(tx.stats().missed, missed);
        assert_eq!(loose.missed(), missed);
    }

    #[test]
    fn overwrite_never_waits_and_counts_what_a_lapped_subscriber_missed_exactly() {
        let cap = 8;
        let (mut tx, mut rx) = channel(cap, 16, Overflow::Overwrite).unwrap();
        let mut buf = Vec::new();
        let mut next = 0;
        let mut missed_total = 0;
        let mut published = 0u64;
        for round in 0..50u64 {
            // Publish a burst of 0..3 laps, then read a little.
            for _ in 0..(round * 7) % (3 * cap as u64) {
                tx.try_send(&msg(published)).unwrap();
                published += 1;
            }
            for _ in 0..3 {
                match rx.try_recv(&mut buf) {
                    Ok(()) => {
                        assert_eq!(seq_of(&buf), next, "in order, nothing skipped unannounced");
                        next += 1;
                    }
                    Err(TryRecvError::Lagged(n)) => {
                        missed_total += n;
                        next += n;
                    }
                    Err(TryRecvError::Empty) => assert_eq!(next, published),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        loop {
            match rx.try_recv(&mut buf) {
                Ok(()) => {
                    assert_eq!(seq_of(&buf), next);
                    next += 1;
                }
                Err(TryRecvError::Lagged(n)) => {
                    missed_total += n;
                    next += n;
                }
                Err(TryRecvError::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(next, published);
        assert!(missed_total > 0);
        assert_eq!(rx.missed(), missed_total);
        assert_eq!(tx.stats().missed, missed_total);
    }

    #[test]
    fn a_lapped_subscriber_resumes_at_the_oldest_message_still_there() {
        let (mut tx, mut rx) = channel(8, 16, Overflow::Overwrite).unwrap();
        for i in 0..24 {
            tx.try_send(&msg(i)).unwrap();
        }
        let mut buf = Vec::new();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Lagged(16)));
        for i in 16..24 {
            rx.try_recv(&mut buf).unwrap();
            assert_eq!(seq_of(&buf), i);
        }
    }

    #[test]
    fn late_subscribers_start_at_the_next_or_the_oldest_message() {
        let (mut tx, _first) = channel(8, 16, Overflow::Overwrite).unwrap();
        for i in 0..20 {
            tx.try_send(&msg(i)).unwrap();
        }
        let mut latest = tx.subscribe(Subscription::default()).unwrap();
        let mut oldest = tx
            .subscribe(Subscription {
                start: Start::Oldest,
                ..Subscription::default()
            })
            .unwrap();
        tx.try_send(&msg(20)).unwrap();
        let mut buf = Vec::new();
        latest.try_recv(&mut buf).unwrap();
        assert_eq!(seq_of(&buf), 20);
        // Joined when 20 were published: 13..19 (the oldest that cannot be being overwritten).
        // Message 20 overwrote 12's slot since, not 13's.
        for i in 13..=20 {
            oldest.try_recv(&mut buf).unwrap();
            assert_eq!(seq_of(&buf), i);
        }
        assert_eq!(oldest.try_recv(&mut buf), Err(TryRecvError::Empty));
    }

    #[test]
    fn the_stream_ends_after_the_last_message_and_batches_keep_lag_counts() {
        let (mut tx, mut rx) = channel(8, 16, Overflow::Overwrite).unwrap();
        for i in 0..4 {
            tx.try_send(&msg(i)).unwrap();
        }
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 2), Ok(2));
        assert_eq!(rx.try_recv_batch(&mut batch, 10), Ok(2));
        assert_eq!(seq_of(batch.get(1).unwrap()), 3);
        // Lapped in the middle of a batch: the messages before it come now, the count next.
        for i in 4..6 {
            tx.try_send(&msg(i)).unwrap();
        }
        let mut seen = Vec::new();
        let r = rx.try_recv_each(1, &mut |m| seen.push(seq_of(m)));
        assert_eq!((r, &seen[..]), (Ok(1), &[4][..]));
        for i in 6..30 {
            tx.try_send(&msg(i)).unwrap();
        }
        let r = rx.try_recv_each(100, &mut |m| seen.push(seq_of(m)));
        assert!(matches!(r, Ok(1) | Err(TryRecvError::Lagged(_))), "{r:?}");
        let mut missed = 0;
        let mut buf = Vec::new();
        loop {
            match rx.try_recv(&mut buf) {
                Ok(()) => seen.push(seq_of(&buf)),
                Err(TryRecvError::Lagged(n)) => missed += n,
                Err(TryRecvError::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        if let Err(TryRecvError::Lagged(n)) = r {
            missed += n;
        }
        assert_eq!(seen.len() as u64 + missed, 30 - 4);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        drop(tx);
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_dead_tethered_subscriber_stops_holding_the_publisher_back() {
        let (mut tx, rx) = channel(4, 16, Overflow::Block).unwrap();
        tx.set_wait_strategy(WaitStrategy {
            park_slice: Duration::from_millis(10),
            ..WaitStrategy::default()
        });
        for i in 0..4 {
            tx.send(&msg(i)).unwrap();
        }
        assert_eq!(
            tx.send_timeout(&msg(4), Duration::from_millis(30)),
            Err(SendTimeoutError::Timeout)
        );
        // Play a subscriber whose process died: no pid.
        tx.core.shared().subs[rx.me].pid.store(0, Relaxed);
        tx.send_timeout(&msg(4), Duration::from_secs(5)).unwrap();
        assert_eq!(tx.stats().died, 1);
        assert_eq!(tx.stats().subscribers, 0);
        std::mem::forget(rx);
    }

    #[test]
    fn corrupted_sequences_and_cursors_are_reported_not_followed() {
        let (mut tx, mut rx) = channel(4, 16, Overflow::Block).unwrap();
        tx.try_send(&msg(0)).unwrap();
        // A sequence that belongs to another slot.
        tx.core.slots.seq(0).store(4, Relaxed); // position 1's, in slot 0
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        // A cursor past the publisher's position.
        let (mut tx, rx) = channel(4, 16, Overflow::Block).unwrap();
        for i in 0..4 {
            tx.try_send(&msg(i)).unwrap();
        }
        tx.core.shared().subs[rx.me].cursor.store(1 << 40, Relaxed);
        assert!(matches!(tx.try_send(&msg(4)), Err(TrySendError::Corrupted(_))));
        // A complete slot with an impossible length.
        let (mut tx, mut rx) = channel(4, 16, Overflow::Overwrite).unwrap();
        tx.try_send(&msg(0)).unwrap();
        tx.core.slots.len(0).store(1 << 30, Relaxed);
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        // A lap far past anything published.
        let (mut tx, mut rx) = channel(4, 16, Overflow::Overwrite).unwrap();
        tx.try_send(&msg(0)).unwrap();
        tx.core.slots.seq(0).store(2 * (1 << 40) + 2, Relaxed);
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
    }

    #[test]
    fn oversize_messages_are_refused_and_nothing_is_published() {
        let (mut tx, mut rx) = channel(4, 16, Overflow::Block).unwrap();
        assert_eq!(
            tx.try_send(&[0; 17]),
            Err(TrySendError::TooLarge(TooLarge { len: 17, max: 16 }))
        );
        tx.try_send(&[7; 16]).unwrap();
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [7; 16]);
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    }
}
