//! Single-producer single-consumer ring of variable-length messages in fixed-size slots.
//!
//! Invariants, with `head` and `tail` free-running u64 counters (they never wrap in practice):
//! - `0 <= tail - head <= capacity`; slot `i & (capacity - 1)` holds message `i` for
//!   `head <= i < tail`. Only the producer writes `tail`, only the consumer writes `head`.
//! - Every index read from shared memory is checked against the invariant before use, and a slot
//!   is only ever addressed through the mask, so a corrupted index yields [`Corrupted`], never an
//!   out-of-bounds access. A length word is checked against the maximum before it is used.
//! - Each side keeps its own index locally (the shared copy is only published) and caches the
//!   other side's, reloading it only when the ring looks full or empty (as rtrb does), so in
//!   steady streaming each side touches the other's cache line once per lap, not per message.
//! - The per-message paths read process-local copies of the geometry and addresses (`Hot`), and
//!   a stopped end is caught by the same size/room/fill checks every message makes anyway (its
//!   gates are closed), with everything else out of line. `examples/insn_count.rs` counts the
//!   instructions per message (callgrind) against rtrb.

use super::lock::LockWord;
use super::tokens::{self, Tokens};
use super::wait::{wait_until, Check, Doorbell, Tally, WaitCounters};
use super::{
    cold_clone, copy_payload, too_large, unwinding_under_loom, Geometry, HeapMemory, LivenessTimer, Peer,
    RingKind, Role, RoleRecord, Slots, WaitStrategy, ROLE_CLOSED,
};
use crate::channel::{Receiver, Sender};
use crate::error::*;
use crate::sync::{AtomicU32, AtomicU64, PUBLISH};
use crossbeam_utils::CachePadded;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The control block of an SPSC ring: each group on its own 128-byte line (the adjacent-line
/// prefetcher pairs 64-byte lines), so the producer's and consumer's hot stores never share one.
///
/// All-zero bytes are a valid initial state (a fresh SysV segment is zero-filled).
#[repr(C)]
pub(crate) struct SpscShared {
    /// Producer line: the next index to publish.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Consumer line: the next index to consume.
    pub(crate) head: CachePadded<AtomicU64>,
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

impl SpscShared {
    pub(crate) fn new() -> Self {
        SpscShared {
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            not_empty: CachePadded::new(Doorbell::new()),
            not_full: CachePadded::new(Doorbell::new()),
            lock: CachePadded::new(LockWord::new()),
            sender: CachePadded::new(RoleRecord::new()),
            receiver: CachePadded::new(RoleRecord::new()),
            counters: CachePadded::new(WaitCounters::new()),
        }
    }

    /// Reads both indices (Acquire: whatever was published before them is visible) and checks
    /// the ring invariant `0 <= tail - head <= capacity`.
    pub(crate) fn indices(&self, capacity: usize) -> Result<(u64, u64), Corrupted> {
        let (head, tail) = (self.head.load(Acquire), self.tail.load(Acquire));
        if tail.wrapping_sub(head) > capacity as u64 {
            return Err(Corrupted {
                reason: format!("indices head={head} tail={tail} are more than a ring apart"),
            });
        }
        Ok((head, tail))
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
    slots: Slots,
    geometry: Geometry,
    /// `backing.tokens()`, asked once.
    tokens: Tokens,
    /// Owns the memory `shared` and `slots` point into; dropped last.
    backing: Box<dyn Backing>,
}

// SAFETY: the pointers refer to memory owned by `backing` (Send + Sync) and accessed only through
// atomics or through slots the ring protocol assigns to one side at a time.
unsafe impl Send for RingCore {}
// SAFETY: as above.
unsafe impl Sync for RingCore {}

impl RingCore {
    /// # Safety
    /// `shared` must point to a valid `SpscShared` and the slots to `geometry.slots_size()` bytes
    /// laid out as `Slots::new` requires, both kept alive and mapped by `backing`.
    pub(crate) unsafe fn new(
        shared: NonNull<SpscShared>,
        slots: Slots,
        geometry: Geometry,
        backing: Box<dyn Backing>,
    ) -> Self {
        #[cfg(not(loom))]
        crate::sys::membarrier::register();
        RingCore {
            shared,
            slots,
            geometry,
            tokens: backing.tokens(),
            backing,
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
}

impl Backing for HeapMemory<SpscShared> {}

/// Creates an in-process SPSC channel on the heap: the same ring as the shared-memory transport,
/// without the segment. Useful on its own, and how the algorithm is tested and benchmarked.
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
    let geometry = Geometry::new(capacity, max_message)?;
    let memory = HeapMemory::new(SpscShared::new(), geometry.slots_size());
    // SAFETY: the slot memory is slots_size bytes, 8-aligned, zeroed; stride is a multiple of
    // 64. The memory moves into the core (its backing), which frees it last.
    let core = unsafe {
        let slot_mem = Slots::new(
            memory.slots(),
            geometry.capacity,
            geometry.stride(),
            RingKind::Spsc,
        );
        RingCore::new(memory.shared(), slot_mem, geometry, Box::new(memory))
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
    /// The hot path's gates: the geometry's capacity and maximum message size while the end
    /// works, 0 once it has stopped (`Producer::stop` closes both, `Consumer::poison` the
    /// capacity), so that the room, size and fill checks every message makes anyway also stop a
    /// stopped end, whose slow paths then say why. Everything else reads `core.geometry`.
    capacity: u64,
    max_message: usize,
    /// Outside loom, a copy of `core.slots` (an address and the geometry, nothing owned), so a
    /// slot's address costs no `Arc` dereference either. Under loom `Slots` also owns the
    /// modelled length words and access markers, so the ends use the core's (`slots()`).
    #[cfg(not(loom))]
    slots: Slots,
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
            capacity: core.geometry.capacity as u64,
            max_message: core.geometry.max_message,
            // SAFETY: the same memory and geometry as `core.slots`, for which `RingCore::new`'s
            // caller met `Slots::new`'s contract; the end holding this keeps the core alive.
            #[cfg(not(loom))]
            slots: unsafe {
                Slots::new(
                    core.slots.base,
                    core.geometry.capacity,
                    core.slots.stride,
                    RingKind::Spsc,
                )
            },
        }
    }

    #[inline]
    fn shared(&self) -> &SpscShared {
        // SAFETY: valid while the core lives (the contract of `RingCore::new`), and the end that
        // holds this `Hot` holds an `Arc` of that core.
        unsafe { self.shared.as_ref() }
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
    /// Our index: authoritative; the shared copy is only ever written from it.
    tail: u64,
    /// Last `head` seen; the true one is the same or further on.
    cached_head: u64,
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
        let (head, tail) = core.shared().indices(core.geometry.capacity)?;
        Ok(Producer {
            hot: Hot::new(&core),
            core,
            tail,
            cached_head: head,
            wait: WaitStrategy::default(),
            stopped: None,
            liveness: LivenessTimer::new(),
            owner: tokens::owner(),
        })
    }

    /// The ring's slots: `Hot`'s copy outside loom, the core's under it.
    #[inline(always)]
    fn slots(&self) -> &Slots {
        #[cfg(not(loom))]
        return &self.hot.slots;
        #[cfg(loom)]
        &self.core.slots
    }

    /// Sets how [`send`](Sender::send) and [`reserve`](Self::reserve) wait for room.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
    }

    /// The receiver's state, including whether its process died (a few syscalls).
    pub fn receiver(&self) -> Peer {
        self.core.peer_of(Role::Receiver)
    }

    /// Poisons this end: a consumer index that no correct consumer could have written.
    #[cold]
    #[inline(never)]
    fn index_fault(&mut self, head: u64) -> Corrupted {
        let (tail, cap) = (self.tail, self.core.geometry.capacity);
        let c = Corrupted {
            reason: format!("consumer index {head} is not within {cap} of producer index {tail}"),
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
        self.hot.capacity = 0;
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

    /// Whether a slot is free, reloading the consumer's index only when the cached one says full.
    #[inline]
    fn has_room(&mut self) -> Result<bool, Corrupted> {
        let cap = self.core.geometry.capacity as u64;
        if self.tail.wrapping_sub(self.cached_head) < cap {
            return Ok(true);
        }
        // Acquire: pairs with the consumer's release of `head`; its reads of the slot we are about
        // to overwrite happen before our writes.
        let head = self.hot.shared().head.load(Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > cap {
            return Err(self.index_fault(head));
        }
        self.cached_head = head;
        Ok(used < cap)
    }

    /// One non-blocking attempt; `Full` means wait and retry.
    #[inline]
    fn try_claim(&mut self, len: usize) -> Result<(), TrySendError> {
        // A stopped end fails one of the gates (`Hot`): 0 bytes fit, but no slot is free. An
        // inherited one (a forked child's) is refused before it touches the ring.
        if len > self.hot.max_message || tokens::inherited(self.owner) {
            return Err(self.refusal(len));
        }
        if self.hot.shared().receiver.state() == ROLE_CLOSED {
            return Err(self.refusal(len));
        }
        // The cached `head` says there is room (the common case), or a reload of it does: settled
        // with plain booleans, not `has_room`'s `Result`, which the compiler would build in memory.
        if self.tail.wrapping_sub(self.cached_head) < self.hot.capacity || self.reload_head() {
            return Ok(());
        }
        Err(self.no_room(len))
    }

    /// `try_claim` when the cached `head` says full (once a lap while streaming): whether there is
    /// room after reloading it. False also for a stopped end, or a bad index (which stops it).
    #[inline(never)]
    fn reload_head(&mut self) -> bool {
        self.stopped.is_none() && matches!(self.has_room(), Ok(true))
    }

    /// `try_claim` found no room: why. The end's own state, or `Full` unless the receiver died.
    #[cold]
    #[inline(never)]
    fn no_room(&mut self, len: usize) -> TrySendError {
        if self.stopped.is_some() {
            return self.refusal(len);
        }
        if self.liveness.due() && self.core.peer_of(Role::Receiver) == Peer::Dead {
            self.set_disconnected();
            return TrySendError::Disconnected;
        }
        TrySendError::Full
    }

    fn claim_deadline(&mut self, len: usize, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        let r = self.claim_deadline_inner(len, deadline);
        if r == Err(SendTimeoutError::Disconnected) {
            self.set_disconnected();
        }
        r
    }

    fn claim_deadline_inner(
        &mut self,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError> {
        match self.try_claim(len) {
            Err(TrySendError::Full) => {}
            r => return r.map_err(Into::into),
        }
        let core = Arc::clone(&self.core);
        let wait = self.wait;
        wait_until(
            &core.shared().not_full,
            Tally {
                waits: &core.shared().counters.full_waits,
                parks: &core.shared().counters.parks,
                bit: SENDER_BIT,
            },
            &wait,
            deadline,
            || match self.has_room() {
                Ok(true) => Check::Done(Ok(())),
                Ok(false) if core.shared().receiver.state() == ROLE_CLOSED => {
                    Check::Done(Err(SendTimeoutError::Disconnected))
                }
                Ok(false) => Check::NotYet,
                Err(c) => Check::Done(Err(SendTimeoutError::Corrupted(c))),
            },
            || match core.peer_of(Role::Receiver) {
                Peer::Dead | Peer::Closed => Check::Done(Err(SendTimeoutError::Disconnected)),
                Peer::NotYet if core.backing.unreachable() => {
                    Check::Done(Err(SendTimeoutError::Disconnected))
                }
                Peer::Alive | Peer::NotYet => Check::NotYet,
            },
            || SendTimeoutError::Timeout,
        )
    }

    /// Publishes the claimed slot `at` with `len` bytes of payload already written.
    #[inline]
    fn publish(&mut self, at: Claimed, len: usize) {
        // SAFETY: `at` is `self.slot()` (see `write` and `guard`): the length word of the slot at
        // `tail` and the control block, in the core that `self` keeps alive.
        let (len_word, shared) = unsafe { (at.len_word.as_ref(), at.shared.as_ref()) };
        // Relaxed: ordered before the consumer's read by the `tail` store below.
        len_word.store(len as u32, Relaxed);
        self.tail = self.tail.wrapping_add(1);
        // PUBLISH (Release): the slot's length and bytes happen before the consumer's Acquire
        // load of `tail` that finds them.
        shared.tail.store(self.tail, PUBLISH);
        shared.not_empty.ring(1, &shared.counters.wakes);
    }

    /// The claimed slot at `tail`, addressed once per message.
    #[inline]
    fn slot(&self) -> Claimed {
        let slots = self.slots();
        Claimed {
            len_word: NonNull::from(slots.len_word(self.tail)),
            payload: slots.payload(self.tail),
            shared: self.hot.shared,
        }
    }

    #[inline]
    fn guard(&mut self, len: usize) -> WriteGuard<'_> {
        let at = self.slot();
        WriteGuard {
            producer: self,
            len,
            at,
        }
    }

    /// Reserves a slot for a message of `len` bytes without blocking. Write into the guard, then
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
        self.try_claim(len)?;
        Ok(self.guard(len))
    }

    /// Reserves a slot, waiting while the ring is full.
    pub fn reserve(&mut self, len: usize) -> Result<WriteGuard<'_>, SendError> {
        self.claim_deadline(len, None)?;
        Ok(self.guard(len))
    }

    /// Reserves a slot, waiting at most `timeout` while the ring is full.
    pub fn reserve_timeout(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<WriteGuard<'_>, SendTimeoutError> {
        self.claim_deadline(len, Instant::now().checked_add(timeout))?;
        Ok(self.guard(len))
    }

    #[inline]
    fn write(&mut self, msg: &[u8]) {
        self.slots().mark_write(self.tail);
        // Every address before the copy: after it, they would be reloaded from memory.
        let at = self.slot();
        // A hostile process could write the slot concurrently: that changes bytes, never where.
        // SAFETY: the slot at `tail` is ours (claimed: `tail - head < capacity`), its payload holds
        // max_message >= msg.len() bytes, and the consumer reads it only after `publish`.
        unsafe { copy_payload(msg, at.payload) };
        self.publish(at, msg.len());
    }
}

impl Sender for Producer {
    #[inline]
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.try_claim(msg.len())?;
        self.write(msg);
        Ok(())
    }

    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        self.claim_deadline(msg.len(), deadline)?;
        self.write(msg);
        Ok(())
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
        shared.not_empty.ring(u32::MAX, &shared.counters.wakes);
        self.core.backing.on_close(Role::Sender, shared);
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// A reserved slot being written. Derefs to the message bytes (`len` long).
///
/// The bytes are the shared segment itself, not yet visible to receivers: no cooperating member
/// reads or writes them before the commit. A process that may write the segment but does not
/// follow the protocol can read or change them meanwhile (see the README's "Trust model").
pub struct WriteGuard<'a> {
    producer: &'a mut Producer,
    len: usize,
    /// The slot (`Producer::slot`), addressed once.
    at: Claimed,
}

/// Where a producer's claimed slot is: the addresses `publish` needs, computed before the payload
/// is written so that they stay in registers. All point into the producer's core.
#[derive(Clone, Copy)]
struct Claimed {
    len_word: NonNull<AtomicU32>,
    payload: *mut u8,
    shared: NonNull<SpscShared>,
}

// SAFETY: a `WriteGuard` is a `&mut Producer` (Send + Sync) plus addresses into that producer's
// core, used only through the guard's `&self`/`&mut self`: nothing a `&mut Producer` would not
// allow. (The raw pointers alone would make it neither.)
unsafe impl Send for WriteGuard<'_> {}
// SAFETY: as above; through `&WriteGuard` only `deref` reads the slot.
unsafe impl Sync for WriteGuard<'_> {}

impl WriteGuard<'_> {
    /// Publishes the message.
    #[inline]
    pub fn commit(self) {
        let (at, len) = (self.at, self.len);
        self.producer.publish(at, len);
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
        // SAFETY: the claimed slot's payload holds at least `len` (<= max_message) initialised
        // bytes (segments and heap rings start zeroed) and is ours until published.
        unsafe { std::slice::from_raw_parts(self.at.payload, self.len) }
    }
}

impl DerefMut for WriteGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.producer.slots().mark_write(self.producer.tail);
        // SAFETY: as in `deref`; `&mut self` makes this the only reference into the slot here.
        unsafe { std::slice::from_raw_parts_mut(self.at.payload, self.len) }
    }
}

/// The receiving end of an SPSC ring.
pub struct Consumer {
    core: Arc<RingCore>,
    head: u64,
    cached_tail: u64,
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
    /// Takes over the receiving end of `core`, whose receiver role the caller has claimed.
    pub(crate) fn new(core: Arc<RingCore>) -> Result<Self, Corrupted> {
        let (head, tail) = core.shared().indices(core.geometry.capacity)?;
        Ok(Consumer {
            hot: Hot::new(&core),
            core,
            head,
            cached_tail: tail,
            wait: WaitStrategy::default(),
            fault: None,
            liveness: LivenessTimer::new(),
            sender_gone: false,
            owner: tokens::owner(),
        })
    }

    /// The ring's slots: `Hot`'s copy outside loom, the core's under it.
    #[inline(always)]
    fn slots(&self) -> &Slots {
        #[cfg(not(loom))]
        return &self.hot.slots;
        #[cfg(loom)]
        &self.core.slots
    }

    /// Sets how [`recv`](Receiver::recv) and [`recv_ref`](Self::recv_ref) wait for messages.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
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

    /// Poisons this end: a producer index that no correct producer could have written.
    #[cold]
    #[inline(never)]
    fn index_fault(&mut self, tail: u64) -> Corrupted {
        let (head, cap) = (self.head, self.core.geometry.capacity);
        self.poison(format!(
            "producer index {tail} is not within {cap} of consumer index {head}"
        ))
    }

    /// Poisons this end: a length word over the maximum.
    #[cold]
    #[inline(never)]
    fn length_fault(&mut self, len: usize) -> Corrupted {
        let max = self.core.geometry.max_message;
        self.poison(format!(
            "slot length {len} exceeds the maximum message size {max}"
        ))
    }

    /// Poisons this end for good. Closes the hot path's gate (`Hot`) and forgets the cached
    /// `tail`, so every later `try_front` reaches `nothing_yet`, which checks `fault`.
    fn poison(&mut self, reason: String) -> Corrupted {
        let c = Corrupted { reason };
        self.fault = Some(c.clone());
        self.cached_tail = self.head;
        self.hot.capacity = 0;
        c
    }

    /// Whether a message is waiting, reloading the producer's index only when the cache says empty.
    #[inline]
    fn has_message(&mut self) -> Result<bool, Corrupted> {
        if self.head != self.cached_tail {
            return Ok(true);
        }
        // Acquire: pairs with the producer's publishing store; the slot's contents are visible.
        let tail = self.hot.shared().tail.load(Acquire);
        let avail = tail.wrapping_sub(self.head);
        let cap = self.core.geometry.capacity as u64;
        if avail > cap {
            return Err(self.index_fault(tail));
        }
        self.cached_tail = tail;
        Ok(avail != 0)
    }

    /// The message at `head`: its length, validated, and where its payload is.
    #[inline]
    fn front(&mut self) -> Result<Front, Corrupted> {
        let slots = self.slots();
        let payload = slots.payload(self.head);
        // Relaxed: ordered by the Acquire load of `tail` that found this slot full.
        let len = slots.len_word(self.head).load(Relaxed) as usize;
        if len > self.hot.max_message {
            return Err(self.length_fault(len));
        }
        Ok(Front { len, payload })
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
        // make every slot we free from now on a futex call.
        self.core.shared().forget_waiter(Role::Sender);
        // The sender's last publication happened before it closed (Release/Acquire on the role
        // state) or before it died; look once more so nothing it sent is lost.
        if self.has_message()? {
            return Ok(true);
        }
        self.sender_gone = true;
        Err(TryRecvError::Disconnected)
    }

    #[inline(always)]
    fn try_front(&mut self) -> Result<Front, TryRecvError> {
        // A poisoned end never passes `poll` (see `poison`); an inherited one is refused before
        // it touches the ring.
        if !self.poll() || tokens::inherited(self.owner) {
            self.nothing_yet()?;
        }
        Ok(self.front()?)
    }

    /// `has_message` for the hot path: true if the cached `tail` or a fresh load of it shows a
    /// message at `head`. False means "ask `has_message`": the ring looked empty, or the index was
    /// bad (which `has_message` reports).
    #[inline(always)]
    fn poll(&mut self) -> bool {
        let head = self.head;
        if head != self.cached_tail {
            return true;
        }
        // Acquire: pairs with the producer's publishing store; the slot's contents are visible.
        let tail = self.hot.shared().tail.load(Acquire);
        // 1..=capacity messages waiting, in one comparison: 0 and anything over the capacity
        // both wrap to at least the capacity.
        if tail.wrapping_sub(head).wrapping_sub(1) < self.hot.capacity {
            self.cached_tail = tail;
            return true;
        }
        false
    }

    /// `try_front` found the ring empty (or a bad index, or the end poisoned): `Empty`, unless the
    /// sender is gone, or a message arrived meanwhile (`Ok`).
    #[cold]
    #[inline(never)]
    fn nothing_yet(&mut self) -> Result<(), TryRecvError> {
        if tokens::inherited(self.owner) {
            return Err(TryRecvError::Forked);
        }
        if let Some(c) = &self.fault {
            return Err(TryRecvError::Corrupted(cold_clone(c)));
        }
        if self.has_message()? {
            return Ok(());
        }
        let due = self.liveness.due();
        self.empty_or_gone(due)?;
        Ok(())
    }

    fn front_deadline(&mut self, deadline: Option<Instant>) -> Result<Front, RecvTimeoutError> {
        match self.try_front() {
            Err(TryRecvError::Empty) => {}
            r => return r.map_err(Into::into),
        }
        let core = Arc::clone(&self.core);
        let wait = self.wait;
        let found = wait_until(
            &core.shared().not_empty,
            Tally {
                waits: &core.shared().counters.empty_waits,
                parks: &core.shared().counters.parks,
                bit: RECEIVER_BIT,
            },
            &wait,
            deadline,
            || match self.has_message() {
                Ok(true) => Check::Done(Ok(())),
                Ok(false) => match self.empty_or_gone(false) {
                    Ok(_) => Check::Done(Ok(())),
                    Err(TryRecvError::Empty) => Check::NotYet,
                    Err(e) => Check::Done(Err(e.into())),
                },
                Err(c) => Check::Done(Err(RecvTimeoutError::Corrupted(c))),
            },
            || match core.peer_of(Role::Sender) {
                Peer::Dead | Peer::Closed => Check::Done(Ok(())),
                // Nobody can find the ring any more, so no sender will ever come.
                Peer::NotYet if core.backing.unreachable() => {
                    Check::Done(Err(RecvTimeoutError::Disconnected))
                }
                Peer::Alive | Peer::NotYet => Check::NotYet,
            },
            || RecvTimeoutError::Timeout,
        );
        if let Err(RecvTimeoutError::Disconnected) = found {
            self.sender_gone = true;
        }
        found?;
        // Either a message is there, or the sender is gone: decide which, once.
        if !self.has_message()? {
            self.empty_or_gone(true)?;
        }
        Ok(self.front()?)
    }

    /// Frees the slot at `head` for the producer.
    #[inline]
    fn release(&mut self) {
        let shared = self.hot.shared();
        self.head = self.head.wrapping_add(1);
        // PUBLISH (Release): our reads of the slot happen before the producer reuses it.
        shared.head.store(self.head, PUBLISH);
        shared.not_full.ring(1, &shared.counters.wakes);
    }

    #[inline]
    fn guard(&mut self, front: Front) -> ReadGuard<'_> {
        ReadGuard {
            consumer: self,
            len: front.len,
            payload: front.payload,
        }
    }

    /// Borrows the next message in place, without blocking; its slot is freed when the guard drops.
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

    #[inline]
    fn copy_out(&mut self, front: Front, buf: &mut Vec<u8>) {
        let msg = self.guard(front);
        buf.clear();
        buf.reserve(msg.len());
        // `copy_payload` rather than `extend_from_slice`: a short message without a memcpy call.
        // SAFETY: after `reserve`, `buf`'s allocation has room for `msg.len()` bytes at its start
        // (length 0), and is not the ring's memory, so the two do not overlap; `copy_payload`
        // initialises exactly those bytes before `set_len` says so.
        unsafe {
            copy_payload(&msg, buf.as_mut_ptr());
            buf.set_len(msg.len());
        }
    }
}

/// The message at a consumer's `head`: validated length and payload address.
struct Front {
    len: usize,
    payload: *mut u8,
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
        shared.not_full.ring(u32::MAX, &shared.counters.wakes);
        self.core.backing.on_close(Role::Receiver, shared);
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// A received message borrowed in place. Derefs to its bytes; the slot is freed on drop.
///
/// # Trust
/// The bytes are the shared segment itself. No cooperating member writes this slot until the
/// guard drops: the producer side only reuses a slot once it is freed (by this guard's drop), and
/// another member recovers a claimed slot only when the kernel says the claimant's process died.
/// A process that may write the segment but does not follow the protocol (buggy or hostile) can
/// change the bytes while you read them; with such peers copy the message out (or use `recv`)
/// before deciding anything from it. See the README's "Trust model".
pub struct ReadGuard<'a> {
    consumer: &'a mut Consumer,
    len: usize,
    /// The payload of the slot at `head` (`Consumer::front`).
    payload: *mut u8,
}

// SAFETY: a `ReadGuard` is a `&mut Consumer` (Send + Sync) plus the address of the slot at its
// `head`, used only through the guard: nothing a `&mut Consumer` would not allow.
unsafe impl Send for ReadGuard<'_> {}
// SAFETY: as above; through `&ReadGuard` the slot is only read.
unsafe impl Sync for ReadGuard<'_> {}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.consumer.slots().mark_read(self.consumer.head);
        // SAFETY: `payload` is the slot at `head`, which is published (head < tail, seen with
        // Acquire) and stays ours until `release`; `len` was checked against max_message, and the
        // payload area is at least that long.
        unsafe { std::slice::from_raw_parts(self.payload, self.len) }
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.consumer.release();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

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
    fn corrupted_tail_is_reported_not_followed() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        tx.core.shared().tail.store(1 << 40, Relaxed);
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        // Poisoned from now on.
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
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
        tx.core.shared().head.store(1 << 40, Relaxed);
        assert!(matches!(tx.try_send(b"c"), Err(TrySendError::Corrupted(_))));
        tx.core.shared().head.store(2, Relaxed);
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
        rx.core.slots.len_word(0).store(9999, Relaxed);
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        // Messages 1 and 2 are still there and valid, but the end is poisoned.
        rx.core.slots.len_word(0).store(1, Relaxed);
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Corrupted(_))));
        assert!(matches!(rx.recv(&mut buf), Err(RecvError::Corrupted(_))));
    }

    #[test]
    fn corrupted_length_is_reported() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        rx.core.slots.len_word(0).store(9999, Relaxed);
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
    }
}
