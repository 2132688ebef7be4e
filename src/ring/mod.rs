//! Ring algorithms: pure code over a control block and slot memory, no syscalls of their own
//! (waiting goes through the futex word in `wait`).
//!
//! The same code runs on a SysV segment (production), on the heap (in-process channels, unit
//! tests, benchmarks) and under loom (where the control block is a `Box` of loom atomics). Where
//! the memory lives is decided by whoever builds the `RingCore`; the algorithms only see
//! validated geometry (capacity, slot size) held in process-local fields, never re-read from
//! shared memory.

pub mod broadcast;
#[cfg(not(loom))]
pub(crate) mod layout;
pub(crate) mod lock;
pub mod mpmc;
pub(crate) mod records;
pub mod spsc;
pub(crate) mod tokens;
pub(crate) mod wait;

use crate::error::{Corrupted, TooLarge, TrySendError};
use crate::sync::{AtomicU32, AtomicU64};
use std::ptr::NonNull;
#[cfg_attr(loom, allow(unused_imports))]
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;
use tokens::Tokens;

pub use wait::WaitStrategy;

/// Bytes before the payload in an SPSC record: its header word (see `spsc::records`).
pub(crate) const SLOT_HEADER: usize = 8;
/// Bytes before the payload in an MPMC slot: the length (u32), padding, and the slot's sequence
/// word (u64, see `mpmc`).
pub(crate) const MPMC_SLOT_HEADER: usize = 16;
/// Bytes before the payload in a broadcast slot: the length (u32), padding, the seqlock's
/// sequence word (u64, see `broadcast`).
pub(crate) const BROADCAST_SLOT_HEADER: usize = 16;
/// Slots are a whole number of cache lines, so neighbours never share one.
pub(crate) const SLOT_ALIGN: usize = 64;
/// Largest capacity a ring may have: slots of an MPMC ring, or messages of the maximum size an
/// SPSC ring holds at once.
pub const MAX_CAPACITY: usize = 1 << 24;
/// Largest capacity of an SPSC ring sized in bytes ([`Geometry::with_bytes`]): many small
/// messages fit where few large ones would.
pub const MAX_SPSC_CAPACITY: usize = 1 << 32;
/// Largest message a ring may be configured for (16 MiB).
pub const MAX_MESSAGE_LIMIT: usize = 16 << 20;

/// How often a `try_` call that finds the ring full/empty checks whether the peer process died
/// (a few syscalls). Blocking calls check after every park slice instead.
pub(crate) const LIVENESS_INTERVAL: Duration = Duration::from_millis(20);

/// Rate limit for liveness checks on the non-blocking paths.
pub(crate) struct LivenessTimer {
    /// When the next check is due, in `sys::clock::coarse_now_ns` nanoseconds; 0 until the
    /// first look.
    next: u64,
}

impl LivenessTimer {
    pub(crate) const fn new() -> Self {
        LivenessTimer { next: 0 }
    }

    /// Whether a liveness check is due (at most one every `LIVENESS_INTERVAL`, give or take the
    /// coarse clock's tick). Read on every `try_` call that finds the ring full or empty, so it
    /// uses the coarse clock (see `sys::clock`), not `Instant`.
    pub(crate) fn due(&mut self) -> bool {
        #[cfg(loom)]
        return false;
        #[cfg(not(loom))]
        {
            let now = crate::sys::clock::coarse_now_ns();
            let interval = LIVENESS_INTERVAL.as_nanos() as u64;
            if self.next == 0 {
                // The first look starts the clock: an end that has just been opened (and whose
                // opening checked the peers) is not due at once.
                self.next = now + interval;
                return false;
            }
            if now < self.next {
                return false;
            }
            self.next = now + interval;
            true
        }
    }
}

/// Error paths, kept out of line so the hot paths stay small enough to inline.
#[cold]
#[inline(never)]
pub(crate) fn cold_clone(c: &Corrupted) -> Corrupted {
    c.clone()
}

#[cold]
#[inline(never)]
pub(crate) fn too_large(len: usize, max: usize) -> TrySendError {
    TrySendError::TooLarge(TooLarge { len, max })
}

/// Under loom, a model that failed unwinds through our drops with no execution running, and
/// touching loom then aborts the test binary; skip the close protocol while panicking there.
pub(crate) fn unwinding_under_loom() -> bool {
    cfg!(loom) && std::thread::panicking()
}

/// Copies `src` to `dst`, inline for up to 64 bytes: a `memcpy` call costs about as many
/// instructions as the whole rest of a send, for a message of a cache line or two.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and must not overlap `src`.
#[inline(always)]
pub(crate) unsafe fn copy_payload(src: &[u8], dst: *mut u8) {
    /// A 16-byte block held in one vector register. (`[u8; 16]` and `u128` blocks went through
    /// the stack or through pairs of general registers.)
    #[cfg(target_arch = "x86_64")]
    type Block16 = std::arch::x86_64::__m128i;
    #[cfg(not(target_arch = "x86_64"))]
    type Block16 = [u8; 16];

    /// Copies `n` bytes, `size_of::<T>() <= n <= 2 * size_of::<T>()`, as two blocks of type `T`
    /// (plain bytes) that overlap in the middle.
    ///
    /// # Safety
    /// As `copy_payload`, for `n` bytes at `s`, with `size_of::<T>() <= n`.
    #[inline(always)]
    unsafe fn two_blocks<T: Copy>(s: *const u8, d: *mut u8, n: usize) {
        let k = std::mem::size_of::<T>();
        // SAFETY: both blocks lie within the `n` bytes at `s` (read) and at `d` (written), since
        // `k <= n`; unaligned accesses are used, and the buffers do not overlap.
        unsafe {
            let first = s.cast::<T>().read_unaligned();
            let last = s.add(n - k).cast::<T>().read_unaligned();
            d.cast::<T>().write_unaligned(first);
            d.add(n - k).cast::<T>().write_unaligned(last);
        }
    }
    let (s, n) = (src.as_ptr(), src.len());
    // The largest inline class first (one range check for up to a cache line), then a small
    // tree: 8 to 16 bytes take two more comparisons, not three.
    // SAFETY: each branch's length condition is `two_blocks`'s (in the 33..64 branch, all four
    // blocks lie within the `n > 32` bytes at `s` and at `dst`); the rest is the caller's contract.
    unsafe {
        if n.wrapping_sub(33) < 32 {
            // The first 32 bytes and the last 32, as four 16-byte blocks.
            let t = s.add(n - 32);
            let a = s.cast::<Block16>().read_unaligned();
            let b = s.add(16).cast::<Block16>().read_unaligned();
            let c = t.cast::<Block16>().read_unaligned();
            let d = t.add(16).cast::<Block16>().read_unaligned();
            let u = dst.add(n - 32);
            dst.cast::<Block16>().write_unaligned(a);
            dst.add(16).cast::<Block16>().write_unaligned(b);
            u.cast::<Block16>().write_unaligned(c);
            u.add(16).cast::<Block16>().write_unaligned(d);
        } else if n <= 16 {
            if n >= 8 {
                two_blocks::<u64>(s, dst, n)
            } else {
                std::ptr::copy_nonoverlapping(s, dst, n)
            }
        } else if n <= 32 {
            two_blocks::<Block16>(s, dst, n)
        } else {
            std::ptr::copy_nonoverlapping(s, dst, n)
        }
    }
}

/// Which ring algorithm a segment holds, fixed when it is created.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RingKind {
    /// One sender and one receiver ([`spsc`]): the fastest ring.
    #[default]
    Spsc,
    /// Any number of senders and receivers ([`mpmc`]), each a process or a thread.
    Mpmc,
    /// One publisher and many subscribers, each receiving every message ([`broadcast`]).
    Broadcast,
}

impl RingKind {
    /// Bytes before the payload in each slot of this kind.
    pub(crate) const fn slot_header(self) -> usize {
        match self {
            RingKind::Spsc => SLOT_HEADER,
            RingKind::Mpmc => MPMC_SLOT_HEADER,
            RingKind::Broadcast => BROADCAST_SLOT_HEADER,
        }
    }

    /// The name used in endpoints (`?mode=`) and messages.
    pub const fn name(self) -> &'static str {
        match self {
            RingKind::Spsc => "spsc",
            RingKind::Mpmc => "mpmc",
            RingKind::Broadcast => "broadcast",
        }
    }
}

impl std::fmt::Display for RingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which end of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Sender,
    Receiver,
}

/// A role's slot in the control block is free (no one has claimed it yet).
pub(crate) const ROLE_VACANT: u32 = 0;
/// A process holds the role.
pub(crate) const ROLE_ATTACHED: u32 = 1;
/// The holder closed cleanly; the role is never taken again in this ring.
pub(crate) const ROLE_CLOSED: u32 = 2;

/// Who holds a role and whether they are still there.
#[repr(C)]
pub(crate) struct RoleRecord {
    /// `ROLE_VACANT`, `ROLE_ATTACHED` or `ROLE_CLOSED`; anything else is corruption.
    pub(crate) state: AtomicU32,
    /// The holder's pid.
    pub(crate) pid: AtomicU32,
    /// The holder's start time (`/proc/PID/stat` field 22), so a recycled pid is not mistaken
    /// for the holder.
    pub(crate) start_time: AtomicU64,
}

/// What a channel end knows about the process at the other end.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Nobody has claimed the role yet.
    NotYet,
    /// Held by a process that is (or may be) alive.
    Alive,
    /// Closed cleanly.
    Closed,
    /// Held by a process that died without closing.
    Dead,
}

impl RoleRecord {
    pub(crate) fn new() -> Self {
        RoleRecord {
            state: AtomicU32::new(ROLE_VACANT),
            pid: AtomicU32::new(0),
            start_time: AtomicU64::new(0),
        }
    }

    /// Records this process as the holder of `role`: takes the role's liveness token first, then
    /// stores the state last with Release, so whoever sees `ROLE_ATTACHED` with Acquire also sees
    /// the pid, and finds the token held (the `semop` returned before the store).
    pub(crate) fn claim(&self, tokens: Tokens, role: Role) -> Result<(), crate::Error> {
        tokens.take(tokens::spsc_record(role))?;
        #[cfg(not(loom))]
        {
            let me = crate::sys::proc::current();
            self.pid.store(me.pid, Relaxed);
            self.start_time.store(me.start_time, Relaxed);
        }
        self.state.store(ROLE_ATTACHED, Release);
        Ok(())
    }

    /// Marks the role closed, then gives its token back. Release: everything the holder published
    /// happens before a peer sees `ROLE_CLOSED`.
    pub(crate) fn close(&self, tokens: Tokens, role: Role) {
        self.state.store(ROLE_CLOSED, Release);
        tokens.give_back(tokens::spsc_record(role));
    }

    /// The holder's state without the liveness check (no syscall).
    pub(crate) fn state(&self) -> u32 {
        // Acquire: pairs with `claim`/`close`.
        self.state.load(Acquire)
    }

    /// Full check, including whether the holder of `role` is alive (one syscall: its token, which
    /// the kernel keeps for any PID namespace; see `tokens`).
    pub(crate) fn peer(&self, tokens: Tokens, role: Role) -> Peer {
        match self.state() {
            ROLE_VACANT => Peer::NotYet,
            ROLE_CLOSED => Peer::Closed,
            // The token was taken before the state was stored (see `claim`), so a holder whose
            // token is gone has died (or gave it back after closing, which we would have seen).
            ROLE_ATTACHED if self.holder_alive(tokens, role) => Peer::Alive,
            ROLE_ATTACHED => {
                // It may have closed between our two looks: closing gives the token back after.
                if self.state() == ROLE_CLOSED {
                    Peer::Closed
                } else {
                    Peer::Dead
                }
            }
            // A value no correct process writes: the peer is not someone we can wait for.
            _ => Peer::Dead,
        }
    }
}

impl RoleRecord {
    fn holder_alive(&self, tokens: Tokens, role: Role) -> bool {
        match tokens {
            // Relaxed: ordered by the caller's Acquire load of the state.
            Tokens::Local => local_holder_alive(self.pid.load(Relaxed), self.start_time.load(Relaxed)),
            #[cfg(not(loom))]
            Tokens::Kernel(_) => tokens
                .held(tokens::spsc_record(role))
                .unwrap_or_else(|| local_holder_alive(self.pid.load(Relaxed), self.start_time.load(Relaxed))),
        }
    }
}

/// Whether the holder of a record of a heap ring (`Tokens::Local`: every holder is this
/// process) is alive: by pid and start time, which unit tests overwrite to play a dead member.
/// Under loom, always.
pub(crate) fn local_holder_alive(_pid: u32, _start_time: u64) -> bool {
    #[cfg(not(loom))]
    {
        let id = crate::sys::proc::ProcessId {
            pid: _pid,
            start_time: _start_time,
        };
        if id.pid == 0 || !crate::sys::proc::is_alive(id) {
            return false;
        }
    }
    true
}

/// A ring's memory on the heap (in-process channels): a control block of type `S` and zeroed
/// slot memory, freed when this is dropped (last, by the core that owns it).
pub(crate) struct HeapMemory<S> {
    shared: NonNull<S>,
    slots: NonNull<[u64]>,
}

// SAFETY: owns two heap allocations; no thread affinity. `S` is a control block of atomics.
unsafe impl<S: Send + Sync> Send for HeapMemory<S> {}
// SAFETY: as above.
unsafe impl<S: Send + Sync> Sync for HeapMemory<S> {}

impl<S> HeapMemory<S> {
    /// Allocates `shared` and `slots_size` zeroed bytes (a multiple of 8), 8-aligned.
    pub(crate) fn new(shared: S, slots_size: usize) -> Self {
        let slots = Box::into_raw(vec![0u64; slots_size / 8].into_boxed_slice());
        HeapMemory {
            shared: NonNull::from(Box::leak(Box::new(shared))),
            // SAFETY: `Box::into_raw` never returns null.
            slots: unsafe { NonNull::new_unchecked(slots) },
        }
    }

    pub(crate) fn shared(&self) -> NonNull<S> {
        self.shared
    }

    /// The start of the slot memory.
    pub(crate) fn slots(&self) -> NonNull<u8> {
        self.slots.cast::<u8>()
    }
}

impl<S> Drop for HeapMemory<S> {
    fn drop(&mut self) {
        // SAFETY: both came from `Box` allocations in `new` and are freed once, here, after every
        // end that used them has gone (the core holding us is dropped last).
        unsafe {
            drop(Box::from_raw(self.shared.as_ptr()));
            drop(Box::from_raw(self.slots.as_ptr()));
        }
    }
}

/// The slots of a ring, addressed by `index & mask` only.
pub(crate) struct Slots {
    base: NonNull<u8>,
    stride: usize,
    mask: u64,
    /// Offset of the payload in a slot: `RingKind::slot_header`.
    payload_at: usize,
    /// Under loom the length words are separate loom atomics.
    #[cfg(loom)]
    lens: Box<[AtomicU32]>,
    /// Under loom, the MPMC sequence words too.
    #[cfg(loom)]
    seqs: Box<[AtomicU64]>,
    /// Under loom, one access marker per slot: loom cannot see plain payload bytes, so every
    /// payload access is also recorded on the slot's marker, and a read and a write of the same
    /// slot that are not ordered by happens-before are reported as a causality violation.
    #[cfg(loom)]
    marks: Box<[loom::cell::UnsafeCell<()>]>,
}

// SAFETY: `Slots` is an address plus geometry; which slot a thread may touch is decided by the
// ring protocol, not by ownership of this struct.
unsafe impl Send for Slots {}
// SAFETY: as above.
unsafe impl Sync for Slots {}

impl Slots {
    /// # Safety
    /// `base` must point to `capacity * stride` bytes, 8-aligned, valid for reads and writes for
    /// as long as this value is used, with `stride` a multiple of 8 and at least
    /// `kind.slot_header()`.
    pub(crate) unsafe fn new(base: NonNull<u8>, capacity: usize, stride: usize, kind: RingKind) -> Self {
        debug_assert!(capacity.is_power_of_two() && stride.is_multiple_of(8) && stride >= kind.slot_header());
        Slots {
            base,
            stride,
            mask: capacity as u64 - 1,
            payload_at: kind.slot_header(),
            #[cfg(loom)]
            lens: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            #[cfg(loom)]
            seqs: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            #[cfg(loom)]
            marks: (0..capacity).map(|_| loom::cell::UnsafeCell::new(())).collect(),
        }
    }

    /// Records a write of the payload for `index` (loom only; free otherwise).
    #[inline]
    pub(crate) fn mark_write(&self, _index: u64) {
        #[cfg(loom)]
        self.marks[(_index & self.mask) as usize].with_mut(|_| ());
    }

    /// Records a read of the payload for `index` (loom only; free otherwise).
    #[inline]
    pub(crate) fn mark_read(&self, _index: u64) {
        #[cfg(loom)]
        self.marks[(_index & self.mask) as usize].with(|_| ());
    }

    #[inline]
    fn offset(&self, index: u64) -> usize {
        // The mask bounds the slot number below `capacity`, whatever `index` is.
        (index & self.mask) as usize * self.stride
    }

    /// The length word of the slot for `index`.
    #[inline]
    pub(crate) fn len_word(&self, index: u64) -> &AtomicU32 {
        #[cfg(loom)]
        {
            &self.lens[(index & self.mask) as usize]
        }
        #[cfg(not(loom))]
        // SAFETY: `offset` is below `capacity * stride`, 8-aligned (stride is a multiple of 8),
        // inside the region promised to `new`; an AtomicU32 may alias memory other processes
        // access atomically.
        unsafe {
            &*self.base.as_ptr().add(self.offset(index)).cast::<AtomicU32>()
        }
    }

    /// The sequence word of the slot for `index` (MPMC slots only: bytes 8..16 of the slot).
    #[inline]
    pub(crate) fn seq_word(&self, index: u64) -> &AtomicU64 {
        debug_assert!(self.payload_at >= MPMC_SLOT_HEADER);
        #[cfg(loom)]
        {
            &self.seqs[(index & self.mask) as usize]
        }
        #[cfg(not(loom))]
        // SAFETY: `offset + 8` is below `capacity * stride` with 8 bytes to spare (an MPMC slot's
        // header is 16 bytes), 8-aligned; an AtomicU64 may alias memory other processes access
        // atomically.
        unsafe {
            &*self.base.as_ptr().add(self.offset(index) + 8).cast::<AtomicU64>()
        }
    }

    /// The payload bytes of the slot for `index`: `stride - slot header` bytes.
    #[inline]
    pub(crate) fn payload(&self, index: u64) -> *mut u8 {
        // SAFETY: as in `len_word`; the payload ends at the slot's end, inside the region.
        unsafe { self.base.as_ptr().add(self.offset(index) + self.payload_at) }
    }
}

/// Capacity and message-size limits of a ring, validated.
///
/// An MPMC ring has `capacity` slots of `max_message` bytes. An SPSC ring stores messages densely
/// (each takes an 8-byte header plus its length rounded up to 8 bytes): `capacity` is how many
/// messages of `max_message` bytes it holds at once at least, and many more small ones fit in
/// the same memory ([`ring_bytes`](Self::ring_bytes)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// MPMC: number of slots, a power of two. SPSC: messages of `max_message` bytes the ring
    /// holds at once, at least.
    pub capacity: usize,
    /// Largest message in bytes.
    pub max_message: usize,
}

/// Bytes an SPSC record of a `len`-byte message takes: header plus payload rounded up to 8.
#[inline(always)]
pub(crate) const fn record_size(len: usize) -> usize {
    SLOT_HEADER + ((len + 7) & !7)
}

impl Geometry {
    /// Checks the limits: capacity a power of two in `2..=MAX_CAPACITY`, max message in
    /// `1..=MAX_MESSAGE_LIMIT`, and ring memory of either kind that fits in `usize`.
    pub fn new(capacity: usize, max_message: usize) -> Result<Self, crate::Error> {
        if !(2..=MAX_CAPACITY).contains(&capacity) || !capacity.is_power_of_two() {
            return Err(crate::Error::InvalidConfig(format!(
                "capacity must be a power of two between 2 and {MAX_CAPACITY}, got {capacity}"
            )));
        }
        let geometry = Geometry::checked(capacity, max_message)?;
        // Cannot fail within the limits above on a 64-bit target (the only kind shmpipe builds
        // for), but a size is never computed unchecked.
        for kind in [RingKind::Spsc, RingKind::Mpmc] {
            geometry.fits(kind)?;
        }
        Ok(geometry)
    }

    /// An SPSC ring of about `bytes` bytes of message memory (rounded down to whole records of
    /// `max_message`, see [`ring_bytes`](Self::ring_bytes)): room for at least two messages of
    /// `max_message` bytes, and for about `bytes / 16` messages of up to 8 bytes.
    ///
    /// ```
    /// use shmpipe::ring::Geometry;
    /// let g = Geometry::with_bytes(1 << 20, 64).unwrap();
    /// assert!(g.ring_bytes() <= 1 << 20);
    /// // Every 8-byte message takes 16 bytes: a 1 MiB ring holds 65533 of them (the memory is
    /// // 14563 records of 72 bytes, a little under 1 MiB, less the free header word).
    /// assert_eq!(g.messages_of(8), 65533);
    /// ```
    pub fn with_bytes(bytes: usize, max_message: usize) -> Result<Self, crate::Error> {
        let record = record_size(max_message.min(MAX_MESSAGE_LIMIT));
        let capacity = (bytes / record).saturating_sub(1);
        if capacity < 1 {
            return Err(crate::Error::InvalidConfig(format!(
                "{bytes} bytes hold no message of {max_message} bytes: an SPSC ring needs at least \
                 {} bytes for that maximum (two records of {record} bytes)",
                2 * record
            )));
        }
        if capacity > MAX_SPSC_CAPACITY {
            return Err(crate::Error::InvalidConfig(format!(
                "{bytes} bytes is more than an SPSC ring may have for {max_message}-byte messages \
                 ({MAX_SPSC_CAPACITY} messages of the maximum size)"
            )));
        }
        let geometry = Geometry::checked(capacity, max_message)?;
        geometry.fits(RingKind::Spsc)?;
        Ok(geometry)
    }

    /// The geometry a validated header of `kind` describes: as [`new`](Self::new) for MPMC; any
    /// capacity in `1..=MAX_SPSC_CAPACITY` for SPSC (rings made by [`with_bytes`](Self::with_bytes)).
    pub(crate) fn for_kind(
        kind: RingKind,
        capacity: usize,
        max_message: usize,
    ) -> Result<Self, crate::Error> {
        match kind {
            RingKind::Mpmc | RingKind::Broadcast => Geometry::new(capacity, max_message),
            RingKind::Spsc if (1..=MAX_SPSC_CAPACITY).contains(&capacity) => {
                let geometry = Geometry::checked(capacity, max_message)?;
                geometry.fits(kind)?;
                Ok(geometry)
            }
            RingKind::Spsc => Err(crate::Error::InvalidConfig(format!(
                "capacity must be between 1 and {MAX_SPSC_CAPACITY}, got {capacity}"
            ))),
        }
    }

    /// The maximum message checked (the capacity is the caller's).
    fn checked(capacity: usize, max_message: usize) -> Result<Self, crate::Error> {
        if !(1..=MAX_MESSAGE_LIMIT).contains(&max_message) {
            return Err(crate::Error::InvalidConfig(format!(
                "maximum message size must be between 1 and {MAX_MESSAGE_LIMIT} bytes, got {max_message}"
            )));
        }
        Ok(Geometry {
            capacity,
            max_message,
        })
    }

    /// Whether this geometry's ring memory of `kind` fits in `usize`.
    fn fits(&self, kind: RingKind) -> Result<(), crate::Error> {
        match self.checked_slots_size_for(kind) {
            Some(_) => Ok(()),
            None => Err(crate::Error::InvalidConfig(format!(
                "{} messages of {} bytes do not fit in the address space",
                self.capacity, self.max_message
            ))),
        }
    }

    /// Bytes of message memory of an SPSC ring: `capacity + 1` records of `max_message` bytes
    /// (the one extra covers the padding a record that does not fit before the end of the
    /// memory leaves there, and the header word the producer zeroes after each message).
    ///
    /// # Panics
    /// If that overflows `usize`, which a geometry made by [`new`](Self::new) or
    /// [`with_bytes`](Self::with_bytes) never does.
    pub fn ring_bytes(&self) -> usize {
        self.slots_size_for(RingKind::Spsc)
    }

    /// How many messages of `len` bytes (at most `max_message`) an empty SPSC ring of this
    /// geometry holds at once, at least.
    pub fn messages_of(&self, len: usize) -> usize {
        // One header word is always kept free (the terminator), and a record may have to skip
        // the end of the memory: at most one record's worth, less 8.
        let record = record_size(len.min(self.max_message));
        (self.ring_bytes() - SLOT_HEADER) / record
    }

    /// Bytes from one MPMC slot to the next, or of an SPSC record of `max_message` bytes.
    ///
    /// # Panics
    /// If that overflows `usize`, which a geometry made by [`new`](Self::new) never does.
    pub fn stride(&self) -> usize {
        self.stride_for(RingKind::Spsc)
    }

    /// Bytes from one slot to the next in a ring of `kind` (SPSC: a record of `max_message`).
    ///
    /// # Panics
    /// If that overflows `usize`, which a geometry made by [`new`](Self::new) never does.
    pub fn stride_for(&self, kind: RingKind) -> usize {
        self.checked_stride_for(kind)
            .expect("slot stride overflows usize (a Geometry not made by Geometry::new)")
    }

    /// Bytes of SPSC ring memory ([`ring_bytes`](Self::ring_bytes)).
    ///
    /// # Panics
    /// If that overflows `usize`, which a geometry made by [`new`](Self::new) never does.
    pub fn slots_size(&self) -> usize {
        self.slots_size_for(RingKind::Spsc)
    }

    /// Bytes of message memory in a ring of `kind`.
    ///
    /// # Panics
    /// If that overflows `usize`, which a geometry made by [`new`](Self::new) never does.
    pub fn slots_size_for(&self, kind: RingKind) -> usize {
        self.checked_slots_size_for(kind)
            .expect("slot memory size overflows usize (a Geometry not made by Geometry::new)")
    }

    /// [`stride_for`](Self::stride_for), or `None` if it overflows `usize`.
    pub(crate) fn checked_stride_for(&self, kind: RingKind) -> Option<usize> {
        let header_and_payload = kind.slot_header().checked_add(self.max_message)?;
        match kind {
            RingKind::Spsc => header_and_payload.checked_next_multiple_of(8),
            RingKind::Mpmc | RingKind::Broadcast => header_and_payload.checked_next_multiple_of(SLOT_ALIGN),
        }
    }

    /// [`slots_size_for`](Self::slots_size_for), or `None` if it overflows `usize`.
    pub(crate) fn checked_slots_size_for(&self, kind: RingKind) -> Option<usize> {
        let stride = self.checked_stride_for(kind)?;
        match kind {
            RingKind::Spsc => self.capacity.checked_add(1)?.checked_mul(stride),
            RingKind::Mpmc | RingKind::Broadcast => self.capacity.checked_mul(stride),
        }
    }
}
