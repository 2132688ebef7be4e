//! Single-producer single-consumer ring of variable-length messages stored densely.
//!
//! The message memory holds records (see `records`): an 8-byte header word, written last with
//! Release, then the payload rounded up to 8 bytes. The consumer waits on the header word of the
//! record at its own position, so a small message costs one cache line transfer, and the ring
//! holds as many messages as fit in its bytes, not a fixed number of `max_message` slots.
//!
//! Invariants, with `head` and `tail` free-running u64 byte positions (they never wrap in
//! practice) and `ring_bytes` the size of the memory:
//! - `0 <= tail - head <= ring_bytes`; the records between them are published and unread. Only
//!   the producer writes `tail` and the records' header words, only the consumer `head`.
//! - Each end keeps its own position and its offset (`position mod ring_bytes`, a multiple of 8
//!   below `ring_bytes`) locally; the shared copies are published for the other side and for
//!   `shmpipe stat`. The producer reads `head` only when its cached copy says there is no room
//!   (as rtrb does), so in steady streaming each side touches the other's index line once per lap.
//! - The producer claims room for a record plus one header word after it, which it zeroes
//!   before publishing (the terminator): the consumer never mistakes stale bytes for a record.
//! - A header word read from shared memory is validated (its stamp names the position it was
//!   read at, its length is at most `max_message` and ends inside the memory) before anything is
//!   derived from it; anything else is [`Corrupted`], never an out-of-bounds access.
//! - The per-message paths read process-local copies of the geometry and addresses (`Hot`), and
//!   a stopped end is caught by the same size/room/validity checks every message makes anyway
//!   (its gates are closed), with everything else out of line. `examples/insn_count.rs` counts
//!   the instructions per message (callgrind) against rtrb.
//! - A send learns that the receiver has closed from the doorbell check it makes after publishing
//!   anyway (`RECEIVER_CLOSED`), not from a load of the receiver's role before it: a close that
//!   happens before a send still makes it `Disconnected` (its record went into a ring that no
//!   receiver will claim again), but a send whose message the receiver took before closing is
//!   `Ok` (the receiver's last `head` says which; found by the downstream loom models). A reservation, whose commit cannot report it, checks the role
//!   first, and a full ring checks it in its slow path.
//! - Batches ([`Sender::try_send_batch`], [`Receiver::try_recv_batch`]) publish many records with
//!   one Release store of the first one's header (the others are written before it), one store
//!   of each index and at most one wake-up.

#[cfg(all(feature = "tokio", not(loom)))]
mod aio;

use super::lock::LockWord;
use super::records::{self, message_word, pad_word, Records, HEADER, PAD};
use super::tokens::{self, Tokens};
use super::wait::{wait_until, Check, Doorbell, WaitCounters};
use super::{
    cold_clone, copy_payload, record_size, too_large, unwinding_under_loom, Geometry, HeapMemory,
    LivenessTimer, Peer, Role, RoleRecord, WaitStrategy, ROLE_CLOSED,
};
use crate::channel::{Batch, Receiver, Sender};
use crate::error::*;
use crate::sync::{fence, AtomicU64, PUBLISH};
use crossbeam_utils::CachePadded;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One end's published index: its byte position and how many messages it has passed.
#[repr(C)]
pub(crate) struct Cursor {
    /// Byte position (`tail` or `head`).
    pub(crate) pos: AtomicU64,
    /// Messages published (producer) or consumed (consumer): for `shmpipe stat` and for deciding
    /// whether a finished stream still holds unread messages.
    pub(crate) count: AtomicU64,
}

impl Cursor {
    fn new() -> Self {
        Cursor {
            pos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// The control block of an SPSC ring: each group on its own 128-byte line (the adjacent-line
/// prefetcher pairs 64-byte lines), so the producer's and consumer's hot stores never share one.
///
/// All-zero bytes are a valid initial state (a fresh SysV segment is zero-filled).
#[repr(C)]
pub(crate) struct SpscShared {
    /// Producer line: the next position to publish at, and messages published.
    pub(crate) tail: CachePadded<Cursor>,
    /// Consumer line: the next position to consume, and messages consumed.
    pub(crate) head: CachePadded<Cursor>,
    /// The consumer sleeps here while the ring is empty.
    pub(crate) not_empty: CachePadded<Doorbell>,
    /// The producer sleeps here while the ring is full.
    pub(crate) not_full: CachePadded<Doorbell>,
    /// pid of the process opening or closing the ring (0 if none); see `transport::shm`.
    pub(crate) lock: CachePadded<LockWord>,
    pub(crate) sender: CachePadded<RoleRecord>,
    pub(crate) receiver: CachePadded<RoleRecord>,
    /// Slow-path statistics (`shmpipe stat`). Last, so adding it moved no other field.
    pub(crate) counters: CachePadded<WaitCounters>,
}

/// What a ring's two published indices say, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Indices {
    pub(crate) head: u64,
    pub(crate) tail: u64,
    /// Messages published and not consumed.
    pub(crate) unread: u64,
}

impl SpscShared {
    pub(crate) fn new() -> Self {
        SpscShared {
            tail: CachePadded::new(Cursor::new()),
            head: CachePadded::new(Cursor::new()),
            not_empty: CachePadded::new(Doorbell::new()),
            not_full: CachePadded::new(Doorbell::new()),
            lock: CachePadded::new(LockWord::new()),
            sender: CachePadded::new(RoleRecord::new()),
            receiver: CachePadded::new(RoleRecord::new()),
            counters: CachePadded::new(WaitCounters::new()),
        }
    }

    /// Reads both indices and counts (Acquire: whatever was published before them is visible)
    /// and checks the ring invariant: `0 <= tail - head <= ring_bytes`, and no more messages
    /// unread than fit in those bytes (a record takes at least 8).
    pub(crate) fn indices(&self, ring_bytes: usize) -> Result<Indices, Corrupted> {
        let (head, tail) = (self.head.pos.load(Acquire), self.tail.pos.load(Acquire));
        let (consumed, published) = (self.head.count.load(Acquire), self.tail.count.load(Acquire));
        let used = tail.wrapping_sub(head);
        if used > ring_bytes as u64 {
            return Err(Corrupted {
                reason: format!(
                    "indices head={head} tail={tail} are more than a ring ({ring_bytes} bytes) apart"
                ),
            });
        }
        let unread = published.wrapping_sub(consumed);
        if unread > used / HEADER as u64 || !(head | tail).is_multiple_of(8) {
            return Err(Corrupted {
                reason: format!(
                    "{unread} unread messages (published {published}, consumed {consumed}) do not fit \
                     between positions {head} and {tail}"
                ),
            });
        }
        Ok(Indices { head, tail, unread })
    }

    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn role(&self, role: Role) -> &RoleRecord {
        match role {
            Role::Sender => &self.sender,
            Role::Receiver => &self.receiver,
        }
    }

    /// Clears `role`'s waiter bit on the doorbell it sleeps on: for a role whose holder cannot be
    /// waiting (its process died, its end closed, or it is being claimed anew), so that a holder
    /// killed while parked does not leave every later ring of that doorbell making a futex call.
    pub(crate) fn forget_waiter(&self, role: Role) {
        match role {
            Role::Sender => self.not_full.forget_waiters(SENDER_BIT),
            Role::Receiver => self.not_empty.forget_waiters(RECEIVER_BIT),
        }
    }
}

/// The sender's bit in `not_full.waiters` (the only doorbell it sleeps on).
pub(crate) const SENDER_BIT: u64 = 1 << 0;
/// The receiver's bit in `not_empty.waiters`. A bit per role rather than a shared one, so that the
/// two words are never mistaken for each other in `shmpipe stat` or a debugger.
pub(crate) const RECEIVER_BIT: u64 = 1 << 1;
/// Set in `not_empty.waiters` by the receiver's close, after its role says closed, and never
/// cleared (a ring whose receiver closed is never claimed again: the next open recycles it). Not a
/// sleeper: it makes the producer's doorbell check after each publication, a load it makes anyway,
/// take its slow path, which stops the producer. So a send never loads the receiver's state on its
/// fast path, and a close that happens before a send still makes that send `Disconnected`.
pub(crate) const RECEIVER_CLOSED: u64 = 1 << 63;

/// Where a ring's memory lives, and what happens when one of its ends closes.
pub(crate) trait Backing: Send + Sync {
    /// Called when `role`'s end drops, after it marked itself closed and woke its peer.
    fn on_close(&self, _role: Role, _shared: &SpscShared) {}

    /// Whether the memory can no longer be found by a peer (a segment removed out of band). Asked
    /// after a park slice while the peer has not come yet: then it never will.
    fn unreachable(&self) -> bool {
        false
    }

    /// How the ends' liveness is known (see `tokens`).
    fn tokens(&self) -> Tokens {
        Tokens::Local
    }
}

/// A ring's memory and validated geometry, shared by its ends in this process.
pub(crate) struct RingCore {
    shared: NonNull<SpscShared>,
    records: Records,
    geometry: Geometry,
    /// `backing.tokens()`, asked once.
    tokens: Tokens,
    /// Owns the memory `shared` and `records` point into; dropped last.
    backing: Box<dyn Backing>,
}

// SAFETY: the pointers refer to memory owned by `backing` (Send + Sync) and accessed only through
// atomics or through records the ring protocol assigns to one side at a time.
unsafe impl Send for RingCore {}
// SAFETY: as above.
unsafe impl Sync for RingCore {}

impl RingCore {
    /// # Safety
    /// `shared` must point to a valid `SpscShared` and `records` to `geometry.ring_bytes()` bytes
    /// as `Records::new` requires, both kept alive and mapped by `backing`.
    pub(crate) unsafe fn new(
        shared: NonNull<SpscShared>,
        records: Records,
        geometry: Geometry,
        backing: Box<dyn Backing>,
    ) -> Self {
        debug_assert_eq!(records.size(), geometry.ring_bytes());
        #[cfg(not(loom))]
        crate::sys::membarrier::register();
        RingCore {
            shared,
            records,
            geometry,
            tokens: backing.tokens(),
            backing,
        }
    }

    /// The check a sender's wait makes after each park slice: `Disconnected` once the receiver
    /// has closed or died, or no receiver can come any more.
    pub(crate) fn receiver_check(&self) -> Check<(), SendTimeoutError> {
        match self.peer_of(Role::Receiver) {
            Peer::Dead | Peer::Closed => Check::Done(Err(SendTimeoutError::Disconnected)),
            Peer::NotYet if self.backing.unreachable() => Check::Done(Err(SendTimeoutError::Disconnected)),
            Peer::Alive | Peer::NotYet => Check::NotYet,
        }
    }

    /// The check a receiver's wait makes after each park slice: done once the sender has closed
    /// or died (whether anything is left to read is decided after the wait), `Disconnected` if
    /// nobody can find the ring any more, so no sender will ever come.
    fn sender_check(&self) -> Check<Option<Front>, RecvTimeoutError> {
        match self.peer_of(Role::Sender) {
            Peer::Dead | Peer::Closed => Check::Done(Ok(None)),
            Peer::NotYet if self.backing.unreachable() => Check::Done(Err(RecvTimeoutError::Disconnected)),
            Peer::Alive | Peer::NotYet => Check::NotYet,
        }
    }

    /// The state of `role`'s holder, including whether its process is alive (one syscall).
    pub(crate) fn peer_of(&self, role: Role) -> Peer {
        self.shared().role(role).peer(self.tokens, role)
    }

    pub(crate) fn shared(&self) -> &SpscShared {
        // SAFETY: valid for our lifetime by the contract of `new`.
        unsafe { self.shared.as_ref() }
    }

    /// The checked indices (one end's starting point).
    fn indices(&self) -> Result<Indices, Corrupted> {
        self.shared().indices(self.records.size())
    }
}

impl Backing for HeapMemory<SpscShared> {}

/// Creates an in-process SPSC channel on the heap: the same ring as the shared-memory transport,
/// without the segment. Useful on its own, and how the algorithm is tested and benchmarked.
/// It holds at least `capacity` messages of `max_message` bytes, and more smaller ones.
///
/// ```
/// use shmpipe::{ring::spsc, Receiver, Sender};
/// let (mut tx, mut rx) = spsc::channel(8, 64).unwrap();
/// tx.send(b"hello").unwrap();
/// let mut buf = Vec::new();
/// rx.recv(&mut buf).unwrap();
/// assert_eq!(buf, b"hello");
/// ```
pub fn channel(capacity: usize, max_message: usize) -> Result<(Producer, Consumer), crate::Error> {
    channel_with(Geometry::new(capacity, max_message)?)
}

/// [`channel`] with `bytes` of message memory ([`Geometry::with_bytes`]).
///
/// ```
/// use shmpipe::{ring::spsc, Sender, TrySendError};
/// let (mut tx, _rx) = spsc::channel_bytes(1 << 20, 1024).unwrap();
/// let mut sent = 0;
/// while tx.try_send(&[7; 8]) != Err(TrySendError::Full) {
///     sent += 1;
/// }
/// assert!(sent >= 40_000, "1 MiB holds {sent} 8-byte messages");
/// ```
pub fn channel_bytes(bytes: usize, max_message: usize) -> Result<(Producer, Consumer), crate::Error> {
    channel_with(Geometry::with_bytes(bytes, max_message)?)
}

fn channel_with(geometry: Geometry) -> Result<(Producer, Consumer), crate::Error> {
    let size = geometry.ring_bytes();
    let memory = HeapMemory::new(SpscShared::new(), size);
    // SAFETY: the record memory is `size` bytes (a multiple of 8), 8-aligned, zeroed. The memory
    // moves into the core (its backing), which frees it last.
    let core = unsafe {
        let records = Records::new(memory.slots(), size);
        RingCore::new(memory.shared(), records, geometry, Box::new(memory))
    };
    let core = Arc::new(core);
    core.shared().sender.claim(Tokens::Local, Role::Sender)?;
    core.shared().receiver.claim(Tokens::Local, Role::Receiver)?;
    let tx = Producer::new(Arc::clone(&core)).map_err(crate::Error::Corrupted)?;
    let rx = Consumer::new(core).map_err(crate::Error::Corrupted)?;
    Ok((tx, rx))
}

/// What every message reads from its `RingCore`, copied into each end when it is made, so the
/// hot paths reach it without an `Arc` dereference and keep it in registers across the payload
/// copy. `shared` points into memory that the `Arc<RingCore>` held by the same end keeps alive
/// (so this is only ever used through that end).
struct Hot {
    shared: NonNull<SpscShared>,
    /// The hot path's gates: the ring's size and maximum message size while the end works, 0
    /// once it has stopped (`Producer::stop` closes both, `Consumer::poison` the size limit), so
    /// that the room, size and validity checks every message makes anyway also stop a stopped
    /// end, whose slow paths then say why. Everything else reads `core.geometry`.
    size: u64,
    max_message: usize,
    /// Outside loom, a copy of `core.records` (an address and a size, nothing owned), so a
    /// record's address costs no `Arc` dereference either. Under loom `Records` also owns the
    /// modelled header words and access markers, so the ends use the core's (`records()`).
    #[cfg(not(loom))]
    records: Records,
}

// SAFETY: `Hot` is a shared reference to `SpscShared` (atomics only, so `Sync`) whose lifetime
// the end's `Arc<RingCore>` (Send + Sync) enforces, plus plain numbers.
unsafe impl Send for Hot {}
// SAFETY: as above.
unsafe impl Sync for Hot {}

impl Hot {
    fn new(core: &RingCore) -> Self {
        Hot {
            shared: core.shared,
            size: core.records.size() as u64,
            max_message: core.geometry.max_message,
            #[cfg(not(loom))]
            records: core.records.copy(),
        }
    }

    #[inline]
    fn shared(&self) -> &SpscShared {
        // SAFETY: valid while the core lives (the contract of `RingCore::new`), and the end that
        // holds this `Hot` holds an `Arc` of that core.
        unsafe { self.shared.as_ref() }
    }
}

/// The offset after a record of `rec` bytes at `off` in a memory of `size` bytes (`off + rec <=
/// size`): 0 where the record ends the memory.
#[inline(always)]
fn next_offset(off: usize, rec: usize, size: usize) -> usize {
    let next = off + rec;
    if next == size {
        0
    } else {
        next
    }
}

/// Why a producer refuses every further call.
enum Stopped {
    /// The receiver is gone for good (`Disconnected` was returned).
    Disconnected,
    /// A bad index was seen: poisoned.
    Corrupted(Corrupted),
}

/// The sending end of an SPSC ring. See the [crate docs](crate) for the guarantees.
pub struct Producer {
    core: Arc<RingCore>,
    /// Our position: authoritative; the shared copy is only ever written from it.
    tail: u64,
    /// `tail mod ring_bytes`.
    tail_off: usize,
    /// Messages published.
    sent: u64,
    /// Last `head` seen; the true one is the same or further on.
    cached_head: u64,
    /// The position a record may end at without a look at `head` or a pad: the end of the
    /// current lap of the memory, or `cached_head + ring_bytes - HEADER` (room for the
    /// terminator), whichever comes first. 0 once the end has stopped: nothing fits, and the
    /// slow path says why. One comparison per message.
    limit: u64,
    /// What every message reads from the core, copied here (no `Arc` dereference per message).
    hot: Hot,
    wait: WaitStrategy,
    /// Set once this end has returned `Corrupted` or `Disconnected`: it stays that way.
    stopped: Option<Stopped>,
    liveness: LivenessTimer,
    /// The process this end belongs to (`tokens::owner`): in a forked child it refuses every
    /// call and its drop only detaches.
    owner: u32,
}

impl Producer {
    /// Takes over the sending end of `core`, whose sender role the caller has claimed.
    pub(crate) fn new(core: Arc<RingCore>) -> Result<Self, Corrupted> {
        let ix = core.indices()?;
        let mut producer = Producer {
            hot: Hot::new(&core),
            tail: ix.tail,
            tail_off: (ix.tail % core.records.size() as u64) as usize,
            sent: core.shared().tail.count.load(Relaxed),
            cached_head: ix.head,
            limit: 0,
            core,
            wait: WaitStrategy::default(),
            stopped: None,
            liveness: LivenessTimer::new(),
            owner: tokens::owner(),
        };
        producer.set_limit();
        Ok(producer)
    }

    /// Recomputes `limit` after `cached_head` or the lap changed (or keeps it 0 when stopped).
    #[inline]
    fn set_limit(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        let size = self.hot.size;
        let lap_end = self.tail - self.tail_off as u64 + size;
        self.limit = lap_end.min(self.cached_head + size - HEADER as u64);
    }

    /// The ring's records: `Hot`'s copy outside loom, the core's under it.
    #[inline(always)]
    fn records(&self) -> &Records {
        #[cfg(not(loom))]
        return &self.hot.records;
        #[cfg(loom)]
        &self.core.records
    }

    /// Sets how [`send`](Sender::send) and [`reserve`](Self::reserve) wait for room.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// How many messages of the maximum size the ring holds at once, at least (more smaller
    /// ones fit: see [`ring_bytes`](Self::ring_bytes)).
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
    }

    /// Bytes of message memory (each message takes 8 bytes plus its length rounded up to 8).
    pub fn ring_bytes(&self) -> usize {
        self.core.records.size()
    }

    /// The receiver's state, including whether its process died (a few syscalls).
    pub fn receiver(&self) -> Peer {
        self.core.peer_of(Role::Receiver)
    }

    /// Poisons this end: a consumer index that no correct consumer could have written.
    #[cold]
    #[inline(never)]
    fn index_fault(&mut self, head: u64) -> Corrupted {
        let (tail, size) = (self.tail, self.core.records.size());
        let c = Corrupted {
            reason: format!("consumer index {head} is not within {size} bytes of producer index {tail}"),
        };
        self.stop(Stopped::Corrupted(c.clone()));
        c
    }

    /// Stops this end for good (a poisoned end stays poisoned): closes the hot path's gates, so
    /// every later `try_claim` reaches a slow path that checks `stopped` (see `Hot`).
    fn stop(&mut self, why: Stopped) {
        if !matches!(self.stopped, Some(Stopped::Corrupted(_))) {
            self.stopped = Some(why);
        }
        self.limit = 0;
        self.hot.max_message = 0;
    }

    /// Why `try_claim` refuses a message of `len` bytes, checked in its order: a poisoned end,
    /// then the size, then a stopped end or a closed receiver. Called by each of its slow paths,
    /// which is how a stopped end (whose gates are closed) gets its answer.
    #[cold]
    #[inline(never)]
    fn refusal(&self, len: usize) -> TrySendError {
        let max = self.core.geometry.max_message;
        match &self.stopped {
            _ if tokens::inherited(self.owner) => TrySendError::Forked,
            Some(Stopped::Corrupted(c)) => TrySendError::Corrupted(c.clone()),
            _ if len > max => too_large(len, max),
            _ => TrySendError::Disconnected,
        }
    }

    /// Marks the receiver gone for good (unless this end is already poisoned). The receiver is
    /// closed or dead, so it cannot be parked: its waiter bit is cleared in case it was killed
    /// while parked.
    fn set_disconnected(&mut self) {
        self.stop(Stopped::Disconnected);
        self.hot.shared().forget_waiter(Role::Receiver);
    }

    /// Bytes a record of `rec` bytes at `tail` needs: itself, a pad before it if it does not fit
    /// before the end of the memory, and the terminator word after it.
    #[inline(always)]
    fn needed(&self, rec: usize) -> u64 {
        let size = self.hot.size as usize;
        let pad = if self.tail_off + rec > size {
            size - self.tail_off
        } else {
            0
        };
        (pad + rec + HEADER) as u64
    }

    /// Whether a record of `rec` bytes fits, reloading the consumer's index only when the cached
    /// one says no. `Ok(false)` also for a stopped end (its size gate is 0).
    #[inline]
    fn has_room(&mut self, rec: usize) -> Result<bool, Corrupted> {
        if self.stopped.is_some() {
            return Ok(false);
        }
        let need = self.needed(rec);
        if self.tail.wrapping_sub(self.cached_head) + need <= self.hot.size {
            return Ok(true);
        }
        // Acquire: pairs with the consumer's release of `head`; its reads of the records we are
        // about to overwrite happen before our writes.
        let head = self.hot.shared().head.pos.load(Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.hot.size || !head.is_multiple_of(8) {
            return Err(self.index_fault(head));
        }
        self.cached_head = head;
        self.set_limit();
        Ok(used + need <= self.hot.size)
    }

    /// One non-blocking attempt to make room for a message of `len` bytes at `tail`, with the
    /// record starting at `tail_off` (a pad before it, if one was needed, is published); `Full`
    /// means wait and retry.
    #[inline(always)]
    fn try_claim<const RESERVE: bool>(&mut self, len: usize) -> Result<(), TrySendError> {
        self.try_claim_with::<RESERVE>(len, true)
    }

    /// `try_claim`; `liveness` false for a blocking call, whose wait checks the receiver after
    /// each park slice instead (and must not read the clock first, see `Consumer::try_front_with`).
    #[inline(always)]
    fn try_claim_with<const RESERVE: bool>(
        &mut self,
        len: usize,
        liveness: bool,
    ) -> Result<(), TrySendError> {
        // A stopped end fails one of the gates (`Hot`): 0 bytes fit, and no room is left. An
        // inherited one (a forked child's) is refused before it touches the ring.
        if len > self.hot.max_message || tokens::inherited(self.owner) {
            return Err(self.refusal(len));
        }
        // A send does not check for a closed receiver here: its doorbell check after publishing
        // finds `RECEIVER_CLOSED` (see `publish`), and a full ring says so in `no_room`. A
        // reservation (`RESERVE`) must: its commit cannot report `Disconnected`.
        if RESERVE && self.hot.shared().receiver.state() == ROLE_CLOSED {
            return Err(self.refusal(len));
        }
        // The record fits before the end of the memory and the cached `head` says there is room
        // (the common case): one comparison (see `limit`), the rest out of line.
        if self.tail + record_size(len) as u64 <= self.limit {
            return Ok(());
        }
        self.claim_slow(len, liveness)
    }

    /// `try_claim` when the record must skip the end of the memory, or the cached `head` says
    /// there is no room (once a lap while streaming).
    #[inline(never)]
    fn claim_slow(&mut self, len: usize, liveness: bool) -> Result<(), TrySendError> {
        match self.has_room(record_size(len)) {
            Ok(true) => {
                self.pad_if_needed(record_size(len));
                Ok(())
            }
            Ok(false) => Err(self.no_room(len, liveness)),
            Err(c) => Err(TrySendError::Corrupted(c)),
        }
    }

    /// Publishes a pad record over the rest of the memory if a record of `rec` bytes does not fit
    /// before its end (room for both, and the terminator, has been checked).
    fn pad_if_needed(&mut self, rec: usize) {
        let size = self.hot.size as usize;
        if self.tail_off + rec <= size {
            return;
        }
        let pad = size - self.tail_off;
        let records = self.records();
        // Relaxed: ordered before the consumer's read by the pad's publishing store below.
        records.word(0).store(0, Relaxed);
        // PUBLISH (Release): the zeroed word at offset 0 happens before the consumer, having
        // skipped the pad, reads it.
        records.word(self.tail_off).store(pad_word(self.tail), PUBLISH);
        self.tail = self.tail.wrapping_add(pad as u64);
        self.tail_off = 0;
        self.set_limit();
        // Relaxed: for `stat` and the next open's checks, which read it under the ring lock.
        self.hot.shared().tail.pos.store(self.tail, Relaxed);
    }

    /// `try_claim` found no room: why. The end's own state, or `Full` unless the receiver died.
    #[cold]
    #[inline(never)]
    fn no_room(&mut self, len: usize, liveness: bool) -> TrySendError {
        if self.stopped.is_some() {
            return self.refusal(len);
        }
        if self.hot.shared().receiver.state() == ROLE_CLOSED {
            self.set_disconnected();
            return TrySendError::Disconnected;
        }
        if liveness && self.liveness.due() && self.core.peer_of(Role::Receiver) == Peer::Dead {
            self.set_disconnected();
            return TrySendError::Disconnected;
        }
        TrySendError::Full
    }

    /// Room for a message of `len` bytes at `tail`, waiting until `deadline` while the ring is
    /// full. `Disconnected` stops this end.
    #[inline(always)]
    fn claim_deadline<const RESERVE: bool>(
        &mut self,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError> {
        match self.try_claim_with::<RESERVE>(len, false) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full) => self.claim_wait(len, deadline),
            Err(e) => Err(self.claim_refused(e)),
        }
    }

    /// `claim_deadline` was refused without waiting.
    #[cold]
    #[inline(never)]
    fn claim_refused(&mut self, e: TrySendError) -> SendTimeoutError {
        if e == TrySendError::Disconnected {
            self.set_disconnected();
        }
        e.into()
    }

    /// `claim_deadline` found the ring full: waits for room, and stops this end if the receiver
    /// turns out gone. Out of line, so that the wait's code does not weigh on the registers and
    /// size of every send that finds room.
    #[inline(never)]
    fn claim_wait(&mut self, len: usize, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        let r = self.claim_wait_inner(len, deadline);
        if r == Err(SendTimeoutError::Disconnected) {
            self.set_disconnected();
        }
        r
    }

    fn claim_wait_inner(&mut self, len: usize, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        let core = Arc::clone(&self.core);
        let wait = self.wait;
        let rec = record_size(len);
        wait_until(
            &core.shared().not_full,
            core.shared().counters.tally(Role::Sender, SENDER_BIT),
            &wait,
            deadline,
            || self.room_check(rec),
            || core.receiver_check(),
            || SendTimeoutError::Timeout,
        )?;
        self.pad_if_needed(rec);
        Ok(())
    }

    /// The check of a wait for room for a record of `rec` bytes (blocking or async): done once
    /// it fits, or the receiver has closed (a pad, if one is needed, is the caller's to write).
    #[inline(always)]
    fn room_check(&mut self, rec: usize) -> Check<(), SendTimeoutError> {
        match self.has_room(rec) {
            Ok(true) => Check::Done(Ok(())),
            Ok(false) if self.hot.shared().receiver.state() == ROLE_CLOSED => {
                Check::Done(Err(SendTimeoutError::Disconnected))
            }
            Ok(false) => Check::NotYet,
            Err(c) => Check::Done(Err(SendTimeoutError::Corrupted(c))),
        }
    }

    /// Writes the record of the claimed message at `tail` (`len` bytes of payload already in
    /// place) and the terminator after it, and moves `tail` on; its header is stored with
    /// `order` (Release for a record published on its own; Relaxed for one of a batch that a
    /// later Release publishes). Returns the record's header word and offset.
    #[inline(always)]
    fn finish_record(&mut self, len: usize) -> (u64, usize) {
        let rec = record_size(len);
        let off = self.tail_off;
        let word = message_word(self.tail, len);
        self.tail = self.tail.wrapping_add(rec as u64);
        self.sent = self.sent.wrapping_add(1);
        let next = off + rec;
        if next == self.hot.size as usize {
            // The record ends the memory: the terminator and the next lap start at offset 0.
            self.tail_off = 0;
            self.set_limit();
        } else {
            self.tail_off = next;
        }
        // Relaxed: ordered before the consumer's read by the publishing store of this record's
        // (or its batch's first) header, which comes after it.
        self.records().word(self.tail_off).store(0, Relaxed);
        (word, off)
    }

    /// Publishes what `finish_record` (or a batch of them) wrote: the first record's header with
    /// Release, the indices, and a wake-up if the consumer sleeps.
    ///
    /// `Err(Disconnected)` if the doorbell showed that the receiver has closed (`RECEIVER_CLOSED`)
    /// without reading the first record published here: it will never be read (no receiver claims
    /// the ring again), and this end has stopped. If the receiver read it before it closed, the
    /// send succeeded (`Ok`, and the next call is `Disconnected`).
    #[inline(always)]
    fn publish(&mut self, first: (u64, usize)) -> Result<(), TrySendError> {
        let (word, off) = first;
        // PUBLISH (Release): the payloads, the later records of a batch and the terminator
        // happen before the consumer's Acquire load of this word that finds them.
        self.records().word(off).store(word, PUBLISH);
        let shared = self.hot.shared();
        // Relaxed: nothing is read on the strength of these but statistics and the next open's
        // decisions, made under the ring lock after this end closed (its Release).
        shared.tail.pos.store(self.tail, Relaxed);
        shared.tail.count.store(self.sent, Relaxed);
        if shared.not_empty.has_waiters() {
            return self.publish_slow(off);
        }
        Ok(())
    }

    /// The doorbell check after a publication (whose first record is at offset `off`) found a bit
    /// set: wake the receiver if it sleeps, stop if it has closed.
    #[cold]
    #[inline(never)]
    fn publish_slow(&mut self, off: usize) -> Result<(), TrySendError> {
        let shared = self.hot.shared();
        let bits = shared.not_empty.waiter_bits();
        if bits & RECEIVER_BIT != 0 {
            shared.not_empty.wake(1, &shared.counters.wakes);
        }
        if bits & RECEIVER_CLOSED != 0 {
            // Did the receiver take what we published before it closed? Its last `head` says:
            // `Disconnected` for a message it took would invite a resend, a duplicate. Acquire:
            // pairs with the Release of the close's `fetch_or`, after its last `head` store. A
            // hostile `head` can only change the answer, and is used for nothing else.
            fence(Acquire);
            let head = shared.head.pos.load(Relaxed);
            let first = self.first_position(off);
            self.set_disconnected();
            if head.wrapping_sub(first) as i64 > 0 {
                return Ok(());
            }
            return Err(TrySendError::Disconnected);
        }
        Ok(())
    }

    /// The position of the record at offset `off` published last: the one before `tail` (at most
    /// a ring's size before it) at that offset.
    fn first_position(&self, off: usize) -> u64 {
        let size = self.hot.size;
        let back = self.tail.wrapping_sub(off as u64) % size;
        self.tail.wrapping_sub(if back == 0 { size } else { back })
    }

    #[inline]
    fn guard(&mut self, len: usize) -> WriteGuard<'_> {
        let payload = self.records().payload(self.tail_off);
        WriteGuard {
            producer: self,
            len,
            payload,
        }
    }

    /// Reserves room for a message of `len` bytes without blocking. Write into the guard, then
    /// [`commit`](WriteGuard::commit); dropping the guard uncommitted publishes nothing.
    ///
    /// ```
    /// use shmpipe::{ring::spsc, Receiver};
    /// let (mut tx, mut rx) = spsc::channel(4, 16).unwrap();
    /// let mut slot = tx.try_reserve(5).unwrap();
    /// slot.copy_from_slice(b"hello");
    /// slot.commit();
    /// assert_eq!(&*rx.try_recv_ref().unwrap(), b"hello");
    /// ```
    pub fn try_reserve(&mut self, len: usize) -> Result<WriteGuard<'_>, TrySendError> {
        self.try_claim::<true>(len)?;
        Ok(self.guard(len))
    }

    /// Reserves room, waiting while the ring is full.
    pub fn reserve(&mut self, len: usize) -> Result<WriteGuard<'_>, SendError> {
        self.claim_deadline::<true>(len, None)?;
        Ok(self.guard(len))
    }

    /// Reserves room, waiting at most `timeout` while the ring is full.
    pub fn reserve_timeout(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<WriteGuard<'_>, SendTimeoutError> {
        self.claim_deadline::<true>(len, Instant::now().checked_add(timeout))?;
        Ok(self.guard(len))
    }

    /// Copies `msg` into the claimed record at `tail` and finishes it (unpublished).
    #[inline(always)]
    fn write(&mut self, msg: &[u8]) -> (u64, usize) {
        let records = self.records();
        records.mark_write(self.tail_off, msg.len());
        // A hostile process could write the memory concurrently: that changes bytes, never where.
        // SAFETY: the record at `tail_off` is ours (claimed: room for it and its terminator, and
        // it ends before the end of the memory), its payload holds `msg.len()` bytes, and the
        // consumer reads it only after `publish`.
        unsafe { copy_payload(msg, records.payload(self.tail_off)) };
        self.finish_record(msg.len())
    }

    /// After the first message of a batch is claimed and written (`first`): writes as many of
    /// `rest` as there is room for, then publishes them all. Returns how many of `rest` went, or
    /// `Disconnected` if the receiver has closed (see `publish`).
    fn write_rest_and_publish(&mut self, first: (u64, usize), rest: &[&[u8]]) -> Result<usize, TrySendError> {
        let mut n = 0;
        for msg in rest {
            if msg.len() > self.hot.max_message {
                break;
            }
            let rec = record_size(msg.len());
            if self.tail + rec as u64 > self.limit {
                match self.has_room(rec) {
                    Ok(true) => {}
                    // A bad index stopped this end: its next call says so.
                    Ok(false) | Err(_) => break,
                }
                let size = self.hot.size as usize;
                if self.tail_off + rec > size {
                    // A pad inside the batch, published by the first record's header like the
                    // rest (so the word at offset 0 needs no zeroing: the record written there
                    // next stores its header before that publication).
                    // Relaxed: ordered by that publishing store, which comes after it.
                    self.records()
                        .word(self.tail_off)
                        .store(pad_word(self.tail), Relaxed);
                    self.tail = self.tail.wrapping_add((size - self.tail_off) as u64);
                    self.tail_off = 0;
                    self.set_limit();
                }
            }
            let (word, off) = self.write(msg);
            // Relaxed: published by the first record's header (see `publish`).
            self.records().word(off).store(word, Relaxed);
            n += 1;
        }
        self.publish(first)?;
        Ok(n)
    }
}

impl Sender for Producer {
    #[inline(always)]
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.try_claim::<false>(msg.len())?;
        let rec = self.write(msg);
        self.publish(rec)
    }

    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        self.claim_deadline::<false>(msg.len(), deadline)?;
        let rec = self.write(msg);
        Ok(self.publish(rec)?)
    }

    /// One Release store publishes the whole prefix (see the module docs), with one store of
    /// `tail` and at most one wake-up.
    fn try_send_batch(&mut self, msgs: &[&[u8]]) -> Result<usize, TrySendError> {
        let Some((first, rest)) = msgs.split_first() else {
            return Ok(0);
        };
        self.try_claim::<false>(first.len())?;
        let rec = self.write(first);
        Ok(1 + self.write_rest_and_publish(rec, rest)?)
    }

    fn send_batch_deadline(
        &mut self,
        msgs: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<usize, SendTimeoutError> {
        let Some((first, rest)) = msgs.split_first() else {
            return Ok(0);
        };
        self.claim_deadline::<false>(first.len(), deadline)?;
        let rec = self.write(first);
        Ok(1 + self.write_rest_and_publish(rec, rest)?)
    }

    fn max_message_size(&self) -> usize {
        self.core.geometry.max_message
    }

    fn peer(&self) -> Option<Peer> {
        Some(self.receiver())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if unwinding_under_loom() {
            return;
        }
        // In a forked child: detach only (the parent still uses the ring).
        if tokens::inherited(self.owner) {
            return;
        }
        let shared = self.core.shared();
        shared.sender.close(self.core.tokens, Role::Sender);
        // A wake only for a sleeping receiver: `RECEIVER_CLOSED` is not one.
        if shared.not_empty.has_waiters() && shared.not_empty.waiter_bits() & RECEIVER_BIT != 0 {
            shared.not_empty.wake(u32::MAX, &shared.counters.wakes);
        }
        self.core.backing.on_close(Role::Sender, shared);
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("sent", &self.sent)
            .field("ring_bytes", &self.ring_bytes())
            .finish()
    }
}

/// Reserved room being written. Derefs to the message bytes (`len` long).
///
/// The bytes are the shared segment itself, not yet visible to receivers: no cooperating member
/// reads or writes them before the commit. A process that may write the segment but does not
/// follow the protocol can read or change them meanwhile (see the README's "Trust model").
pub struct WriteGuard<'a> {
    producer: &'a mut Producer,
    len: usize,
    /// The payload of the record at the producer's `tail_off`, addressed once.
    payload: *mut u8,
}

// SAFETY: a `WriteGuard` is a `&mut Producer` (Send + Sync) plus an address into that producer's
// core, used only through the guard's `&self`/`&mut self`: nothing a `&mut Producer` would not
// allow. (The raw pointer alone would make it neither.)
unsafe impl Send for WriteGuard<'_> {}
// SAFETY: as above; through `&WriteGuard` only `deref` reads the record.
unsafe impl Sync for WriteGuard<'_> {}

impl WriteGuard<'_> {
    /// Publishes the message.
    #[inline]
    pub fn commit(self) {
        let len = self.len;
        let rec = self.producer.finish_record(len);
        // `Disconnected` only if the receiver closed after the reservation was handed out (it
        // checked): the producer has stopped, and its next call says so.
        let _ = self.producer.publish(rec);
    }

    /// Publishes only the first `len` bytes (at most the reserved length).
    pub fn commit_len(mut self, len: usize) {
        self.len = self.len.min(len);
        self.commit();
    }
}

impl Deref for WriteGuard<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: the claimed record's payload holds at least `len` bytes inside the memory, all
        // initialised (segments and heap rings start zeroed), ours until published.
        unsafe { std::slice::from_raw_parts(self.payload, self.len) }
    }
}

impl DerefMut for WriteGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        let p = &*self.producer;
        p.records().mark_write(p.tail_off, self.len);
        // SAFETY: as in `deref`; `&mut self` makes this the only reference into the record here.
        unsafe { std::slice::from_raw_parts_mut(self.payload, self.len) }
    }
}

/// The receiving end of an SPSC ring.
pub struct Consumer {
    core: Arc<RingCore>,
    /// Our position: authoritative; the shared copy is only ever written from it.
    head: u64,
    /// `head mod ring_bytes`.
    head_off: usize,
    /// Messages consumed.
    received: u64,
    /// What every message reads from the core, copied here (no `Arc` dereference per message).
    hot: Hot,
    wait: WaitStrategy,
    fault: Option<Corrupted>,
    liveness: LivenessTimer,
    /// `Disconnected` was returned: the sender is gone and the ring drained, for good.
    sender_gone: bool,
    /// The process this end belongs to, as for `Producer::owner`.
    owner: u32,
}

impl Consumer {
    /// Makes this end act as if inherited across `fork()` (another owner), for tests outside
    /// this module (the async stream adapter's).
    #[cfg(all(test, feature = "tokio"))]
    pub(crate) fn pretend_forked(&mut self) {
        self.owner = self.owner.wrapping_add(1);
    }

    /// Takes over the receiving end of `core`, whose receiver role the caller has claimed.
    pub(crate) fn new(core: Arc<RingCore>) -> Result<Self, Corrupted> {
        let ix = core.indices()?;
        Ok(Consumer {
            hot: Hot::new(&core),
            head: ix.head,
            head_off: (ix.head % core.records.size() as u64) as usize,
            received: core.shared().head.count.load(Relaxed),
            core,
            wait: WaitStrategy::default(),
            fault: None,
            liveness: LivenessTimer::new(),
            sender_gone: false,
            owner: tokens::owner(),
        })
    }

    /// The ring's records: `Hot`'s copy outside loom, the core's under it.
    #[inline(always)]
    fn records(&self) -> &Records {
        #[cfg(not(loom))]
        return &self.hot.records;
        #[cfg(loom)]
        &self.core.records
    }

    /// Sets how [`recv`](Receiver::recv) and [`recv_ref`](Self::recv_ref) wait for messages.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// How many messages of the maximum size the ring holds at once, at least.
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
    }

    /// Bytes of message memory.
    pub fn ring_bytes(&self) -> usize {
        self.core.records.size()
    }

    /// The largest message the ring holds.
    pub fn max_message_size(&self) -> usize {
        self.core.geometry.max_message
    }

    /// The sender's state: after `Disconnected`, `Closed` means a clean end of stream and `Dead`
    /// that the sending process died.
    pub fn sender(&self) -> Peer {
        self.core.peer_of(Role::Sender)
    }

    /// Poisons this end for good. Closes the hot path's gate (`Hot`), so every later `try_front`
    /// reaches `front_slow`, which checks `fault`.
    #[cold]
    #[inline(never)]
    fn poison(&mut self, reason: String) -> Corrupted {
        let c = Corrupted { reason };
        self.fault = Some(c.clone());
        self.hot.size = 0;
        c
    }

    /// The message whose header `word` was read at `head_off`, if the word is a valid message
    /// header for our position (anything else, `front_slow` sorts out): stamped for `head`, at
    /// most `max_message` bytes, ending inside the memory. A poisoned end's gate (size 0) fails.
    #[inline(always)]
    fn valid(&self, word: u64) -> Option<Front> {
        // With our stamp xored out, a header stamped for `head` leaves `len + 1` (below 2^32) and
        // anything else has bits above 32 set. So one comparison of `x - 1` against the maximum
        // checks the stamp and the length: 0 (nothing yet), a `PAD` low half (2^32 - 2 after the
        // subtraction), a zero low half (wraps to u64::MAX) and any other stamp all exceed it
        // (`max_message <= MAX_MESSAGE_LIMIT`, far below 2^32 - 2).
        let len = (word ^ records::stamp_high(self.head)).wrapping_sub(1);
        let off = self.head_off;
        if len <= self.hot.max_message as u64 && off as u64 + HEADER as u64 + len <= self.hot.size {
            Some(Front {
                len: len as usize,
                off,
            })
        } else {
            None
        }
    }

    /// The header word at our position. Acquire: pairs with the producer's publishing store;
    /// the record's payload (and a batch's later records) are visible.
    #[inline(always)]
    fn header(&self) -> u64 {
        self.records().word(self.head_off).load(Acquire)
    }

    /// The message at `head`, if one is there: skips a pad record, and poisons this end on a
    /// header no correct producer writes. Inline where nothing or a valid header is there (a
    /// waiting receiver's every look), the rest out of line.
    #[inline(always)]
    fn peek(&mut self) -> Result<Option<Front>, Corrupted> {
        let word = self.header();
        if word == 0 {
            return Ok(None);
        }
        if let Some(front) = self.valid(word) {
            return Ok(Some(front));
        }
        self.peek_slow(word)
    }

    /// `peek` found a header `word` that is neither nothing nor a valid message: a pad (skipped,
    /// and the record after it looked at), or one no correct producer writes (poisoned).
    #[cold]
    #[inline(never)]
    fn peek_slow(&mut self, mut word: u64) -> Result<Option<Front>, Corrupted> {
        loop {
            let (off, size) = (self.head_off, self.core.records.size());
            let stamped = (word >> 32) as u32 == records::stamp(self.head);
            // A pad at offset 0 would skip a whole lap: no producer writes one.
            if stamped && word as u32 == PAD && off != 0 {
                self.skip_pad();
                word = self.header();
                if word == 0 {
                    return Ok(None);
                }
                if let Some(front) = self.valid(word) {
                    return Ok(Some(front));
                }
                continue;
            }
            let len = (word as u32).wrapping_sub(1) as usize;
            let max = self.core.geometry.max_message;
            return Err(self.poison(if !stamped {
                format!(
                    "record header {word:#018x} at position {} is not stamped for it (stale or overwritten)",
                    self.head
                )
            } else if len > max {
                format!("record length {len} exceeds the maximum message size {max}")
            } else {
                format!("a record of {len} bytes at offset {off} runs past the end of the {size}-byte ring")
            }));
        }
    }

    /// Moves past the pad record at `head` (the rest of the memory) and frees it.
    #[cold]
    fn skip_pad(&mut self) {
        let size = self.core.records.size();
        self.head = self.head.wrapping_add((size - self.head_off) as u64);
        self.head_off = 0;
        self.publish_head();
    }

    /// Empty, or disconnected if the sender is gone: `Ok(true)` means a message arrived meanwhile.
    fn empty_or_gone(&mut self, check_liveness: bool) -> Result<bool, TryRecvError> {
        let sender = &self.core.shared().sender;
        let gone = self.sender_gone
            || match sender.state() {
                ROLE_CLOSED => true,
                _ => check_liveness && self.core.peer_of(Role::Sender) == Peer::Dead,
            };
        if !gone {
            return Err(TryRecvError::Empty);
        }
        // A closed or dead sender cannot be parked: if it was killed while parked, its bit would
        // make every record we free from now on a futex call.
        self.core.shared().forget_waiter(Role::Sender);
        // The sender's last publication happened before it closed (Release/Acquire on the role
        // state) or before it died; look once more so nothing it sent is lost.
        if self.peek()?.is_some() {
            return Ok(true);
        }
        self.sender_gone = true;
        Err(TryRecvError::Disconnected)
    }

    /// The message at `head`, without blocking (a `try_` call: found empty, it checks whether the
    /// sender died, at most every `LIVENESS_INTERVAL`).
    #[inline(always)]
    fn try_front(&mut self) -> Result<Front, TryRecvError> {
        self.try_front_with(true)
    }

    /// `try_front`; `liveness` false for a blocking call, whose wait checks the sender after each
    /// park slice instead (and which must not read the clock before it waits: 60 ns here, a third
    /// of a one-way hand-over).
    #[inline(always)]
    fn try_front_with(&mut self, liveness: bool) -> Result<Front, TryRecvError> {
        // An inherited end is refused before it touches the ring; a poisoned one fails `valid`.
        if !tokens::inherited(self.owner) {
            if let Some(front) = self.valid(self.header()) {
                return Ok(front);
            }
        }
        self.front_slow(liveness)
    }

    /// `try_front` found no valid message at `head` (or the end is inherited or poisoned):
    /// `Empty`, unless a pad hid the message or the sender is gone.
    #[cold]
    #[inline(never)]
    fn front_slow(&mut self, liveness: bool) -> Result<Front, TryRecvError> {
        if tokens::inherited(self.owner) {
            return Err(TryRecvError::Forked);
        }
        if let Some(c) = &self.fault {
            return Err(TryRecvError::Corrupted(cold_clone(c)));
        }
        if let Some(front) = self.peek()? {
            return Ok(front);
        }
        let due = liveness && self.liveness.due();
        self.empty_or_gone(due)?;
        // `empty_or_gone` saw a message arrive.
        self.peek()?.ok_or(TryRecvError::Empty)
    }

    #[inline(always)]
    fn front_deadline(&mut self, deadline: Option<Instant>) -> Result<Front, RecvTimeoutError> {
        match self.try_front_with(false) {
            Err(TryRecvError::Empty) => self.front_wait(deadline),
            r => r.map_err(Into::into),
        }
    }

    /// `front_deadline` found the ring empty: waits for a message. Out of line, as `claim_wait`.
    #[inline(never)]
    fn front_wait(&mut self, deadline: Option<Instant>) -> Result<Front, RecvTimeoutError> {
        let core = Arc::clone(&self.core);
        let wait = self.wait;
        let found = wait_until(
            &core.shared().not_empty,
            core.shared().counters.tally(Role::Receiver, RECEIVER_BIT),
            &wait,
            deadline,
            || self.message_check(),
            || core.sender_check(),
            || RecvTimeoutError::Timeout,
        );
        self.after_wait(found)
    }

    /// The check of a wait for a message (blocking or async): done with the message at `head`
    /// once one is there (so the waiter need not look again), or with none once the sender is
    /// gone (`after_wait` then decides, once).
    #[inline(always)]
    fn message_check(&mut self) -> Check<Option<Front>, RecvTimeoutError> {
        match self.peek() {
            Ok(Some(front)) => Check::Done(Ok(Some(front))),
            Ok(None) => match self.empty_or_gone(false) {
                // A message arrived meanwhile.
                Ok(_) => Check::Done(Ok(None)),
                Err(TryRecvError::Empty) => Check::NotYet,
                Err(e) => Check::Done(Err(e.into())),
            },
            Err(c) => Check::Done(Err(RecvTimeoutError::Corrupted(c))),
        }
    }

    /// The message a wait for one (`message_check`, `RingCore::sender_check`) ended with, or why
    /// there is none.
    fn after_wait(
        &mut self,
        found: Result<Option<Front>, RecvTimeoutError>,
    ) -> Result<Front, RecvTimeoutError> {
        if let Err(RecvTimeoutError::Disconnected) = found {
            self.sender_gone = true;
        }
        if let Some(front) = found? {
            return Ok(front);
        }
        // Either a message is there, or the sender is gone: decide which, once.
        match self.peek()? {
            Some(front) => Ok(front),
            None => {
                self.empty_or_gone(true)?;
                Ok(self.peek()?.ok_or(RecvTimeoutError::Disconnected)?)
            }
        }
    }

    /// Moves past the record `front` (at `head`) without publishing.
    #[inline(always)]
    fn advance(&mut self, front: Front) {
        let rec = record_size(front.len);
        self.head = self.head.wrapping_add(rec as u64);
        self.head_off = next_offset(front.off, rec, self.core_size());
        self.received = self.received.wrapping_add(1);
    }

    /// The memory's size, from `Hot` (whose gate is only ever closed on a poisoned end, which
    /// advances no more).
    #[inline(always)]
    fn core_size(&self) -> usize {
        self.hot.size as usize
    }

    /// Frees everything before `head` for the producer.
    #[inline(always)]
    fn publish_head(&mut self) {
        let shared = self.hot.shared();
        // PUBLISH (Release): our reads of the records happen before the producer reuses them.
        shared.head.pos.store(self.head, PUBLISH);
        // Relaxed: statistics and the next open's decisions, made under the ring lock.
        shared.head.count.store(self.received, Relaxed);
        shared.not_full.ring(1, &shared.counters.wakes);
    }

    /// Frees the record `front` at `head` for the producer.
    #[inline]
    fn release(&mut self, front: Front) {
        self.advance(front);
        self.publish_head();
    }

    #[inline]
    fn guard(&mut self, front: Front) -> ReadGuard<'_> {
        let payload = self.records().payload(front.off);
        ReadGuard {
            consumer: self,
            front,
            payload,
        }
    }

    /// Borrows the next message in place, without blocking; its record is freed when the guard
    /// drops.
    #[inline]
    pub fn try_recv_ref(&mut self) -> Result<ReadGuard<'_>, TryRecvError> {
        let front = self.try_front()?;
        Ok(self.guard(front))
    }

    /// Borrows the next message in place, waiting while the ring is empty.
    pub fn recv_ref(&mut self) -> Result<ReadGuard<'_>, RecvError> {
        let front = self.front_deadline(None)?;
        Ok(self.guard(front))
    }

    /// Borrows the next message in place, waiting at most `timeout`.
    pub fn recv_ref_timeout(&mut self, timeout: Duration) -> Result<ReadGuard<'_>, RecvTimeoutError> {
        let front = self.front_deadline(Instant::now().checked_add(timeout))?;
        Ok(self.guard(front))
    }

    /// The payload of `front`, borrowed from the memory (ours until `head` passes it).
    #[inline(always)]
    fn bytes(&self, front: Front) -> &[u8] {
        let records = self.records();
        records.mark_read(front.off, front.len);
        // SAFETY: `front` is the record at `head`, published (its header seen with Acquire) and
        // ours until `head` is published past it; `valid` checked that its `len` bytes end
        // inside the memory.
        unsafe { std::slice::from_raw_parts(records.payload(front.off), front.len) }
    }

    #[inline]
    fn copy_out(&mut self, front: Front, buf: &mut Vec<u8>) {
        let msg = self.bytes(front);
        buf.clear();
        buf.reserve(msg.len());
        // `copy_payload` rather than `extend_from_slice`: a short message without a memcpy call.
        // SAFETY: after `reserve`, `buf`'s allocation has room for `msg.len()` bytes at its start
        // (length 0), and is not the ring's memory, so the two do not overlap; `copy_payload`
        // initialises exactly those bytes before `set_len` says so.
        unsafe {
            copy_payload(msg, buf.as_mut_ptr());
            buf.set_len(msg.len());
        }
        self.release(front);
    }

    /// Hands `first` and the messages after it, up to `max` in all, to `f` in place, then frees
    /// them all with one publication of `head`. Returns how many.
    #[inline]
    fn visit(&mut self, first: Front, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let mut front = first;
        let mut n = 0;
        loop {
            // Moved past before `f` runs: if it panics, what it was given counts as received
            // (and is freed by the next publication of `head`).
            self.advance(front);
            n += 1;
            f(self.bytes(front));
            if n >= max {
                break;
            }
            front = match self.valid(self.header()) {
                Some(f) => f,
                // Nothing more, a pad (skipped), or a bad header (reported by the next call).
                None => match self.peek() {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(_) => break,
                },
            };
        }
        self.publish_head();
        n
    }

    /// Copies `first` and the messages after it, up to `max` in all, into `batch`, then frees
    /// them all with one publication of `head`.
    fn take_batch(&mut self, first: Front, batch: &mut Batch, max: usize) {
        self.visit(first, max, |msg| {
            // SAFETY: `msg` is a record's payload in the ring's memory, not the batch's.
            unsafe { batch.push_copy(msg.as_ptr(), msg.len()) }
        });
    }
}

/// The message at a consumer's `head`: its validated length and its record's offset.
#[derive(Clone, Copy)]
struct Front {
    len: usize,
    off: usize,
}

impl Receiver for Consumer {
    #[inline]
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        let front = self.try_front()?;
        self.copy_out(front, buf);
        Ok(())
    }

    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        let front = self.front_deadline(deadline)?;
        self.copy_out(front, buf);
        Ok(())
    }

    /// Frees the whole batch with one store of `head` and at most one wake-up.
    fn try_recv_batch(&mut self, batch: &mut Batch, max: usize) -> Result<usize, TryRecvError> {
        batch.clear();
        let front = self.try_front()?;
        self.take_batch(front, batch, max.max(1));
        Ok(batch.len())
    }

    fn recv_batch_deadline(
        &mut self,
        batch: &mut Batch,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvTimeoutError> {
        batch.clear();
        let front = self.front_deadline(deadline)?;
        self.take_batch(front, batch, max.max(1));
        Ok(batch.len())
    }

    /// In place, freed with one store of `head` and at most one wake-up.
    fn try_recv_each(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> Result<usize, TryRecvError> {
        let front = self.try_front()?;
        Ok(self.visit(front, max.max(1), f))
    }

    fn recv_each_deadline(
        &mut self,
        max: usize,
        deadline: Option<Instant>,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RecvTimeoutError> {
        let front = self.front_deadline(deadline)?;
        Ok(self.visit(front, max.max(1), f))
    }

    fn peer(&self) -> Option<Peer> {
        Some(self.sender())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if unwinding_under_loom() {
            return;
        }
        // In a forked child: detach only (the parent still uses the ring).
        if tokens::inherited(self.owner) {
            return;
        }
        let shared = self.core.shared();
        shared.receiver.close(self.core.tokens, Role::Receiver);
        // Release: a send that finds the bit reads our last `head` after it (`publish_slow`), to
        // tell whether we took its message before closing. A send that this close happens
        // before sees the bit (coherence), and one racing the close may not, exactly as with the
        // role's state.
        shared.not_empty.waiters.fetch_or(RECEIVER_CLOSED, Release);
        shared.not_full.ring(u32::MAX, &shared.counters.wakes);
        self.core.backing.on_close(Role::Receiver, shared);
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("received", &self.received)
            .field("ring_bytes", &self.ring_bytes())
            .finish()
    }
}

/// A received message borrowed in place. Derefs to its bytes; the record is freed on drop.
///
/// # Trust
/// The bytes are the shared segment itself. No cooperating member writes this record until the
/// guard drops: the producer only reuses memory once the consumer's index has passed it (which
/// this guard's drop does). A process that may write the segment but does not follow the
/// protocol (buggy or hostile) can change the bytes while you read them; with such peers copy the
/// message out (or use `recv`) before deciding anything from it. See the README's "Trust model".
pub struct ReadGuard<'a> {
    consumer: &'a mut Consumer,
    front: Front,
    /// The payload of the record at `head`, addressed once.
    payload: *mut u8,
}

// SAFETY: a `ReadGuard` is a `&mut Consumer` (Send + Sync) plus the address of the record at its
// `head`, used only through the guard: nothing a `&mut Consumer` would not allow.
unsafe impl Send for ReadGuard<'_> {}
// SAFETY: as above; through `&ReadGuard` the record is only read.
unsafe impl Sync for ReadGuard<'_> {}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.consumer.records().mark_read(self.front.off, self.front.len);
        // SAFETY: `payload` is the record at `head`, published (its header seen with Acquire)
        // and ours until `release`; `valid` checked that its `len` bytes end inside the memory.
        unsafe { std::slice::from_raw_parts(self.payload, self.front.len) }
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.consumer.release(self.front);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Batch;

    #[test]
    fn fifo_with_wraparound_and_varied_lengths() {
        let (mut tx, mut rx) = channel(4, 32).unwrap();
        let mut buf = Vec::new();
        for round in 0..50u32 {
            for i in 0..3u32 {
                let n = round * 3 + i;
                let msg = vec![n as u8; (n % 33) as usize];
                tx.try_send(&msg).unwrap();
            }
            for i in 0..3u32 {
                let n = round * 3 + i;
                rx.try_recv(&mut buf).unwrap();
                assert_eq!(buf, vec![n as u8; (n % 33) as usize]);
            }
        }
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    }

    #[test]
    fn full_then_room_again() {
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        tx.try_send(b"a").unwrap();
        tx.try_send(b"b").unwrap();
        assert_eq!(tx.try_send(b"c"), Err(TrySendError::Full));
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        tx.try_send(b"c").unwrap();
    }

    #[test]
    fn oversize_is_rejected_and_writes_nothing() {
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        assert_eq!(
            tx.try_send(&[0; 9]),
            Err(TrySendError::TooLarge(TooLarge { len: 9, max: 8 }))
        );
        let mut buf = Vec::new();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
        tx.try_send(&[1; 8]).unwrap();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [1; 8]);
    }

    #[test]
    fn bad_geometry_is_rejected() {
        assert!(channel(0, 8).is_err());
        assert!(channel(3, 8).is_err());
        assert!(channel(4, 0).is_err());
        assert!(channel(4, super::super::MAX_MESSAGE_LIMIT + 1).is_err());
    }

    #[test]
    fn dropping_sender_drains_then_disconnects() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.send(b"x").unwrap();
        drop(tx);
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        assert_eq!(buf, b"x");
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
    }

    #[test]
    fn dropping_receiver_disconnects_sender() {
        let (mut tx, rx) = channel(4, 8).unwrap();
        drop(rx);
        assert_eq!(tx.send(b"x"), Err(SendError::Disconnected));
    }

    #[test]
    fn every_kind_of_send_after_the_receiver_closed_is_disconnected_without_a_wake() {
        // The receiver's close is seen through the doorbell mask after publishing
        // (`RECEIVER_CLOSED`), through the role before reserving.
        type Send = fn(&mut Producer) -> Result<(), TrySendError>;
        let sends: [(&str, Send); 4] = [
            ("try_send", |tx| tx.try_send(b"x")),
            ("try_send_batch", |tx| {
                tx.try_send_batch(&[b"x", b"y"]).map(|_| ())
            }),
            ("send", |tx| tx.send(b"x").map_err(|_| TrySendError::Disconnected)),
            ("try_reserve", |tx| tx.try_reserve(1).map(|_| ())),
        ];
        for (name, send) in sends {
            let (mut tx, rx) = channel(4, 8).unwrap();
            tx.try_send(b"before").unwrap();
            drop(rx);
            let shared = tx.core.shared();
            assert_eq!(shared.not_empty.waiter_bits(), RECEIVER_CLOSED, "{name}");
            assert_eq!(send(&mut tx), Err(TrySendError::Disconnected), "{name}");
            assert_eq!(tx.try_send(b"z"), Err(TrySendError::Disconnected), "{name}");
            assert!(
                matches!(tx.try_reserve(1), Err(TrySendError::Disconnected)),
                "{name}"
            );
            let wakes = &tx.core.shared().counters.wakes;
            assert_eq!(wakes.load(Relaxed), 0, "{name}: the mark is not a sleeper");
            let core = Arc::clone(&tx.core);
            drop(tx);
            assert_eq!(
                core.shared().counters.wakes.load(Relaxed),
                0,
                "{name}: nor on drop"
            );
        }
        // A reservation handed out before the close: its commit cannot say so, the next call does.
        let (mut tx, rx) = channel(4, 8).unwrap();
        let mut w = tx.try_reserve(1).unwrap();
        w[0] = 1;
        drop(rx);
        w.commit();
        assert_eq!(tx.try_send(b"z"), Err(TrySendError::Disconnected));
        // And a full ring reports the close, not Full.
        let (mut tx, rx) = channel(2, 8).unwrap();
        while tx.try_send(b"f").is_ok() {}
        drop(rx);
        assert_eq!(tx.try_send(b"f"), Err(TrySendError::Disconnected));
    }

    #[test]
    fn uncommitted_reservation_publishes_nothing() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        {
            let mut g = tx.try_reserve(3).unwrap();
            g.copy_from_slice(b"abc");
        }
        assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Empty)));
        let mut g = tx.try_reserve(8).unwrap();
        g[..2].copy_from_slice(b"hi");
        g.commit_len(2);
        assert_eq!(&*rx.try_recv_ref().unwrap(), b"hi");
    }

    #[test]
    fn timeouts_expire_and_blocking_calls_wake() {
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        let mut buf = Vec::new();
        let t0 = Instant::now();
        assert_eq!(
            rx.recv_timeout(&mut buf, Duration::from_millis(30)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(t0.elapsed() >= Duration::from_millis(30));
        tx.send(b"1").unwrap();
        tx.send(b"2").unwrap();
        assert_eq!(
            tx.send_timeout(b"3", Duration::from_millis(10)),
            Err(SendTimeoutError::Timeout)
        );
        let t = std::thread::spawn(move || {
            rx.set_wait_strategy(WaitStrategy::park_only());
            let mut buf = Vec::new();
            let mut got = Vec::new();
            while rx.recv(&mut buf).is_ok() {
                got.push(buf.clone());
            }
            got
        });
        tx.set_wait_strategy(WaitStrategy::park_only());
        for i in 3..1000u32 {
            tx.send(&i.to_le_bytes()).unwrap();
        }
        drop(tx);
        let got = t.join().unwrap();
        assert_eq!(got.len(), 999);
        assert_eq!(got[998], 999u32.to_le_bytes());
    }

    #[test]
    fn a_header_not_stamped_for_its_position_is_reported_not_followed() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        // A header that would be valid one lap later (a stale or forged record).
        let lap = rx.ring_bytes() as u64;
        rx.core.records.word(0).store(message_word(lap, 1), Relaxed);
        let mut buf = Vec::new();
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Corrupted(c)) => assert!(c.reason.contains("not stamped"), "{c}"),
            other => panic!("{other:?}"),
        }
        // Poisoned from now on, even with the right header back.
        rx.core.records.word(0).store(message_word(0, 1), Relaxed);
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
    }

    #[test]
    fn every_header_word_but_a_valid_one_for_the_position_is_refused() {
        // `valid` checks the stamp and the length with one comparison (the stamp xored out); each
        // of these words must still reach `peek`'s checks and poison the consumer. Read at
        // position 16, so the expected stamp is not 0.
        let pos = 16u64;
        let stamp = (records::stamp(pos) as u64) << 32;
        let cases = [
            (stamp, "exceeds"),                         // a zero low half: length -1
            (stamp | 10, "exceeds"),                    // length 9 > max 8
            (stamp | (u32::MAX as u64 - 1), "exceeds"), // the largest non-pad length
            (stamp | (1 << 63) | 2, "not stamped"),     // the stamp's top bit differs
            ((stamp ^ (1 << 32)) | 2, "not stamped"),   // its bottom bit differs
        ];
        for (word, why) in cases {
            let (mut tx, mut rx) = channel(4, 8).unwrap();
            let mut buf = Vec::new();
            tx.try_send(b"a").unwrap();
            rx.try_recv(&mut buf).unwrap();
            tx.try_send(b"b").unwrap();
            rx.core.records.word(pos as usize).store(word, Relaxed);
            match rx.try_recv(&mut buf) {
                Err(TryRecvError::Corrupted(c)) => assert!(c.reason.contains(why), "{word:#x}: {c}"),
                other => panic!("{word:#x}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_shared_tail_the_consumer_does_not_need_is_not_followed() {
        // The consumer reads only record headers: a corrupted `tail` changes nothing for it (the
        // next open's checks report it, see tests/faults.rs).
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        tx.core.shared().tail.pos.store(1 << 40, Relaxed);
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"a");
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
        assert!(rx.core.indices().is_err());
    }

    #[test]
    fn records_pad_to_the_end_of_the_memory_and_wrap_without_splitting() {
        // 3 records of 40 bytes: 120 bytes. Messages of 24 bytes (32-byte records) and 1 byte
        // (16) land everywhere relative to the end, so many are preceded by a pad.
        let (mut tx, mut rx) = channel(2, 32).unwrap();
        assert_eq!(tx.ring_bytes(), 120);
        let mut buf = Vec::new();
        let mut next = 0u32;
        for round in 0..200u32 {
            let burst = 1 + round % 3;
            let mut sent = 0;
            for _ in 0..burst {
                let len = [24, 1, 32, 0, 9][(next % 5) as usize];
                let msg: Vec<u8> = (0..len).map(|i| (next as usize * 31 + i) as u8).collect();
                match tx.try_send(&msg) {
                    Ok(()) => {
                        next += 1;
                        sent += 1;
                    }
                    Err(TrySendError::Full) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
            assert!(sent >= 1, "an empty ring takes any message");
            let first = next - sent;
            for n in first..next {
                rx.try_recv(&mut buf).unwrap();
                let len = [24, 1, 32, 0, 9][(n % 5) as usize];
                let want: Vec<u8> = (0..len).map(|i| (n as usize * 31 + i) as u8).collect();
                assert_eq!(buf, want, "message {n}");
            }
            assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
        }
        let ix = tx.core.indices().unwrap();
        assert_eq!(ix.unread, 0);
        assert_eq!(tx.core.shared().tail.count.load(Relaxed), u64::from(next));
        assert!(ix.tail > 50 * 120, "many laps: {ix:?}");
    }

    #[test]
    fn small_messages_are_dense() {
        // A 1 MiB ring holds 65535 8-byte messages (16 bytes each, one header word kept free).
        let (mut tx, mut rx) = channel_bytes(1 << 20, 1024).unwrap();
        assert!(tx.ring_bytes() <= 1 << 20);
        let mut n = 0u64;
        while tx.try_send(&n.to_le_bytes()).is_ok() {
            n += 1;
        }
        assert!(n >= 40_000, "{n}");
        assert_eq!(n as usize, tx.core.geometry.messages_of(8));
        let mut buf = Vec::new();
        for i in 0..n {
            rx.try_recv(&mut buf).unwrap();
            assert_eq!(buf, i.to_le_bytes());
        }
    }

    #[test]
    fn batches_publish_once_and_keep_order_across_the_end() {
        let (mut tx, mut rx) = channel(4, 64).unwrap();
        let msgs: Vec<Vec<u8>> = (0..1000u32).map(|i| vec![i as u8; (i % 65) as usize]).collect();
        let mut sent = 0;
        let mut got = 0;
        let mut batch = Batch::new();
        while got < msgs.len() {
            let rest: Vec<&[u8]> = msgs[sent..].iter().map(|m| &m[..]).collect();
            if !rest.is_empty() {
                match tx.try_send_batch(&rest) {
                    Ok(n) => {
                        assert!(n >= 1);
                        sent += n;
                    }
                    Err(TrySendError::Full) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            match rx.try_recv_batch(&mut batch, 7) {
                Ok(n) => {
                    assert!((1..=7).contains(&n));
                    for m in &batch {
                        assert_eq!(m, &msgs[got][..], "message {got}");
                        got += 1;
                    }
                }
                Err(TryRecvError::Empty) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(tx.core.shared().head.count.load(Relaxed), 1000);
    }

    #[test]
    fn a_batch_stops_before_an_oversize_message_which_the_next_call_reports() {
        let (mut tx, mut rx) = channel(8, 8).unwrap();
        let big = [0u8; 9];
        let msgs: [&[u8]; 4] = [b"a", b"b", &big, b"c"];
        assert_eq!(tx.try_send_batch(&msgs), Ok(2));
        assert_eq!(
            tx.try_send_batch(&msgs[2..]),
            Err(TrySendError::TooLarge(TooLarge { len: 9, max: 8 }))
        );
        assert_eq!(tx.try_send_batch(&msgs[3..]), Ok(1));
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 10), Ok(3));
        assert_eq!(batch.iter().collect::<Vec<_>>(), [&b"a"[..], b"b", b"c"]);
        drop(tx);
        assert_eq!(rx.try_recv_batch(&mut batch, 10), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn ends_and_guards_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Producer>();
        check::<Consumer>();
        check::<WriteGuard<'static>>();
        check::<ReadGuard<'static>>();
    }

    #[test]
    fn every_length_round_trips_byte_for_byte() {
        // `copy_payload` has a branch per size class (overlapping blocks); each byte distinct.
        let (mut tx, mut rx) = channel(4, 200).unwrap();
        for len in 0..=200usize {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            tx.try_send(&msg).unwrap();
            assert_eq!(&*rx.try_recv_ref().unwrap(), &msg[..], "length {len}");
            let mut w = tx.try_reserve(len).unwrap();
            w.copy_from_slice(&msg);
            w.commit();
            let mut buf = Vec::new();
            rx.try_recv(&mut buf).unwrap();
            assert_eq!(buf, msg, "length {len}, reserved");
        }
    }

    #[test]
    fn corrupted_head_poisons_the_producer_for_every_later_call() {
        let (mut tx, _rx) = channel(2, 8).unwrap();
        tx.try_send(b"a").unwrap();
        tx.try_send(b"b").unwrap();
        // Full: the next call reloads `head` and finds it impossible.
        tx.core.shared().head.pos.store(1 << 40, Relaxed);
        assert!(matches!(tx.try_send(b"c"), Err(TrySendError::Corrupted(_))));
        tx.core.shared().head.pos.store(32, Relaxed);
        // Room again in shared memory, but poisoned: Corrupted first, whatever the size.
        assert!(matches!(tx.try_send(b""), Err(TrySendError::Corrupted(_))));
        assert!(matches!(tx.try_send(&[0; 9]), Err(TrySendError::Corrupted(_))));
        assert!(matches!(tx.try_reserve(1), Err(TrySendError::Corrupted(_))));
        assert!(matches!(tx.send(b"c"), Err(SendError::Corrupted(_))));
        assert_eq!(tx.max_message_size(), 8);
    }

    #[test]
    fn disconnected_producer_keeps_its_answers_in_order() {
        let (mut tx, rx) = channel(4, 8).unwrap();
        drop(rx);
        assert_eq!(tx.send(b"x"), Err(SendError::Disconnected));
        // Stopped: the size check still comes first, then Disconnected, for good.
        assert_eq!(
            tx.try_send(&[0; 9]),
            Err(TrySendError::TooLarge(TooLarge { len: 9, max: 8 }))
        );
        assert_eq!(tx.try_send(b""), Err(TrySendError::Disconnected));
        assert_eq!(tx.try_send(b"y"), Err(TrySendError::Disconnected));
    }

    #[test]
    fn corrupted_length_poisons_even_with_messages_cached() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        tx.try_send(b"b").unwrap();
        tx.try_send(b"c").unwrap();
        rx.core.records.word(0).store(message_word(0, 9999), Relaxed);
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        // Messages 1 and 2 are still there and valid, but the end is poisoned.
        rx.core.records.word(0).store(message_word(0, 1), Relaxed);
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Corrupted(_))));
        assert!(matches!(rx.recv(&mut buf), Err(RecvError::Corrupted(_))));
    }

    #[test]
    fn corrupted_length_is_reported() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        rx.core.records.word(0).store(message_word(0, 9999), Relaxed);
        let mut buf = Vec::new();
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Corrupted(c)) => assert!(c.reason.contains("exceeds the maximum"), "{c}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_running_past_the_end_is_reported() {
        // 48 bytes, records of 1-byte messages take 16: the third ends the memory exactly.
        let (mut tx, mut rx) = channel_bytes(48, 8).unwrap();
        assert_eq!(rx.ring_bytes(), 48);
        let mut buf = Vec::new();
        for _ in 0..3 {
            tx.try_send(b"x").unwrap();
            rx.try_recv(&mut buf).unwrap();
        }
        assert_eq!((rx.head, rx.head_off), (48, 0));
        // A header at the last word (position 88, offset 40) claiming 8 bytes, a legal length
        // whose payload would end 8 bytes past the memory.
        rx.head = 88;
        rx.head_off = 40;
        rx.core.records.word(40).store(message_word(88, 8), Relaxed);
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Corrupted(c)) => assert!(c.reason.contains("past the end"), "{c}"),
            other => panic!("{other:?}"),
        }
    }
}
