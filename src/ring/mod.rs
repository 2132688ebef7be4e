//! Ring algorithms: pure code over a control block and slot memory, no syscalls of their own
//! (waiting goes through the futex word in `wait`).
//!
//! The same code runs on a SysV segment (production), on the heap (in-process channels, unit
//! tests, benchmarks) and under loom (where the control block is a `Box` of loom atomics). Where
//! the memory lives is decided by whoever builds the `RingCore`; the algorithms only see
//! validated geometry (capacity, slot size) held in process-local fields, never re-read from
//! shared memory.

#[cfg(not(loom))]
pub(crate) mod layout;
pub mod spsc;
pub(crate) mod wait;

use crate::sync::{AtomicU32, AtomicU64};
use std::ptr::NonNull;
#[cfg_attr(loom, allow(unused_imports))]
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

pub use wait::WaitStrategy;

/// Bytes before the payload in every slot: the payload length (u32) and padding.
pub(crate) const SLOT_HEADER: usize = 8;
/// Slots are a whole number of cache lines, so neighbours never share one.
pub(crate) const SLOT_ALIGN: usize = 64;
/// Largest capacity (slots) a ring may have.
pub const MAX_CAPACITY: usize = 1 << 24;
/// Largest message a ring may be configured for (16 MiB).
pub const MAX_MESSAGE_LIMIT: usize = 16 << 20;

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

    /// Records this process as the holder. The state is stored last with Release so whoever
    /// sees `ROLE_ATTACHED` with Acquire also sees the pid.
    pub(crate) fn claim(&self) {
        #[cfg(not(loom))]
        {
            let me = crate::sys::proc::current();
            self.pid.store(me.pid, Relaxed);
            self.start_time.store(me.start_time, Relaxed);
        }
        self.state.store(ROLE_ATTACHED, Release);
    }

    /// Marks the role closed. Release: everything the holder published happens before a peer
    /// sees `ROLE_CLOSED`.
    pub(crate) fn close(&self) {
        self.state.store(ROLE_CLOSED, Release);
    }

    /// The holder's state without the liveness check (no syscall).
    pub(crate) fn state(&self) -> u32 {
        // Acquire: pairs with `claim`/`close`.
        self.state.load(Acquire)
    }

    /// Full check, including whether the holder's process still exists (a few syscalls).
    pub(crate) fn peer(&self) -> Peer {
        match self.state() {
            ROLE_VACANT => Peer::NotYet,
            ROLE_CLOSED => Peer::Closed,
            ROLE_ATTACHED => {
                #[cfg(not(loom))]
                {
                    let id = crate::sys::proc::ProcessId {
                        pid: self.pid.load(Relaxed),
                        start_time: self.start_time.load(Relaxed),
                    };
                    // pid 0: claimed but not yet written (cannot be: claim stores the pid
                    // first), or overwritten; give it the benefit of the doubt.
                    if id.pid != 0 && !crate::sys::proc::is_alive(id) {
                        return Peer::Dead;
                    }
                }
                Peer::Alive
            }
            // A value no correct process writes: the peer is not someone we can wait for.
            _ => Peer::Dead,
        }
    }
}

/// The slots of a ring, addressed by `index & mask` only.
pub(crate) struct Slots {
    base: NonNull<u8>,
    stride: usize,
    mask: u64,
    /// Under loom the length words are separate loom atomics.
    #[cfg(loom)]
    lens: Box<[AtomicU32]>,
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
    /// as long as this value is used, with `stride` a multiple of 8 and at least `SLOT_HEADER`.
    pub(crate) unsafe fn new(base: NonNull<u8>, capacity: usize, stride: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && stride.is_multiple_of(8) && stride >= SLOT_HEADER);
        Slots {
            base,
            stride,
            mask: capacity as u64 - 1,
            #[cfg(loom)]
            lens: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
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

    /// The payload bytes of the slot for `index`: `stride - SLOT_HEADER` bytes.
    #[inline]
    pub(crate) fn payload(&self, index: u64) -> *mut u8 {
        // SAFETY: as in `len_word`; the payload ends at the slot's end, inside the region.
        unsafe { self.base.as_ptr().add(self.offset(index) + SLOT_HEADER) }
    }
}

/// Capacity and message-size limits of a ring, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of slots, a power of two.
    pub capacity: usize,
    /// Largest message in bytes.
    pub max_message: usize,
}

impl Geometry {
    /// Checks the limits: capacity a power of two in `2..=MAX_CAPACITY`, max message in
    /// `1..=MAX_MESSAGE_LIMIT`.
    pub fn new(capacity: usize, max_message: usize) -> Result<Self, crate::Error> {
        if !(2..=MAX_CAPACITY).contains(&capacity) || !capacity.is_power_of_two() {
            return Err(crate::Error::InvalidConfig(format!(
                "capacity must be a power of two between 2 and {MAX_CAPACITY}, got {capacity}"
            )));
        }
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

    /// Bytes from one slot to the next: header plus payload, rounded up to a cache line.
    pub fn stride(&self) -> usize {
        (SLOT_HEADER + self.max_message).next_multiple_of(SLOT_ALIGN)
    }

    /// Bytes of slot memory.
    pub fn slots_size(&self) -> usize {
        self.capacity * self.stride()
    }
}
