//! The message memory of an SPSC ring: dense variable-length records.
//!
//! ```text
//! position p (bytes, free-running u64)       offset p mod ring_bytes
//! | header word (u64)            | payload, len bytes, zero-padded to 8 | next record ...
//! |  stamp(p) << 32 | (len + 1)  |
//! ```
//!
//! A record takes its 8-byte header plus its length rounded up to 8 bytes (`record_size`), so
//! small messages share cache lines and a ring of `ring_bytes` holds as many as fit. A record
//! never wraps: one that does not fit before the end of the memory is preceded by a *pad*
//! record (`PAD` in the low half) that fills the rest, and starts at offset 0.
//!
//! The header word is the only thing the consumer waits on, and the last thing the producer
//! writes (Release): one cache line per small message, as in the Disruptor or Aeron's log
//! buffers. A word of 0 means "nothing here yet". Before publishing a record, the producer
//! zeroes the header word that follows it (the *terminator*), inside the room it claimed: so
//! when the consumer reaches a position, the word there is either that zero or the header of
//! the record the producer has since published there, never a stale header from an earlier lap
//! or bytes from the middle of an old payload. The stamp (bits 3..35 of the position) lets the
//! consumer check that a header was written for the very position it reads it at; a word that
//! is neither 0 nor stamped for the position is corruption.
//!
//! Offsets are kept by each end in process-local fields, always a multiple of 8 below
//! `ring_bytes`, and a length read from shared memory is checked against the maximum message
//! and the end of the memory before any byte of the payload is addressed.

#[cfg(loom)]
use crate::sync::AtomicU64;
use std::ptr::NonNull;
#[cfg(not(loom))]
use std::sync::atomic::AtomicU64;

/// Bytes of a record's header word.
pub(crate) const HEADER: usize = super::SLOT_HEADER;
/// Low half of a pad record's header word: the rest of the memory, up to its end, is skipped.
pub(crate) const PAD: u32 = u32::MAX;

/// The stamp of position `pos`: its 8-byte unit number, truncated to 32 bits.
#[inline(always)]
pub(crate) const fn stamp(pos: u64) -> u32 {
    (pos >> 3) as u32
}

/// `stamp(pos) << 32`, the high half of a header word at `pos`, for `pos` a multiple of 8 (every
/// record position is): bits 3..35 of `pos` land in bits 32..64 and its zero low bits below them.
#[inline(always)]
pub(crate) const fn stamp_high(pos: u64) -> u64 {
    debug_assert!(pos.is_multiple_of(8));
    pos << 29
}

/// The header word of a record at `pos` (a multiple of 8) holding `len` bytes
/// (`len < u32::MAX - 1`).
#[inline(always)]
pub(crate) const fn message_word(pos: u64, len: usize) -> u64 {
    stamp_high(pos) | (len as u64 + 1)
}

/// The header word of a pad record at `pos`.
#[inline(always)]
pub(crate) const fn pad_word(pos: u64) -> u64 {
    ((stamp(pos) as u64) << 32) | PAD as u64
}

/// The record memory of a ring: `size` bytes at `base`, addressed by offsets that the ends keep
/// below `size` and 8-aligned.
pub(crate) struct Records {
    base: NonNull<u8>,
    size: usize,
    /// Under loom the header words are loom atomics, one per 8-byte word of the memory.
    #[cfg(loom)]
    words: Box<[AtomicU64]>,
    /// Under loom, one access marker per 8-byte word: loom cannot see plain payload bytes, so
    /// every payload access is also recorded on the markers of the words it covers, and a read
    /// and a write of the same word not ordered by happens-before are a causality violation.
    #[cfg(loom)]
    marks: Box<[loom::cell::UnsafeCell<()>]>,
}

// SAFETY: an address and a size; which bytes a thread may touch is decided by the ring protocol.
unsafe impl Send for Records {}
// SAFETY: as above.
unsafe impl Sync for Records {}

impl Records {
    /// # Safety
    /// `base` must point to `size` bytes, 8-aligned, with `size` a multiple of 8, valid for reads
    /// and writes (and accessed by others only atomically or per the ring protocol) for as long
    /// as this value is used.
    pub(crate) unsafe fn new(base: NonNull<u8>, size: usize) -> Self {
        debug_assert!(size.is_multiple_of(8) && size >= 2 * HEADER);
        Records {
            base,
            size,
            #[cfg(loom)]
            words: (0..size / 8).map(|_| AtomicU64::new(0)).collect(),
            #[cfg(loom)]
            marks: (0..size / 8).map(|_| loom::cell::UnsafeCell::new(())).collect(),
        }
    }

    /// A process-local copy (outside loom, where it is only an address and a size).
    #[cfg(not(loom))]
    pub(crate) fn copy(&self) -> Records {
        Records {
            base: self.base,
            size: self.size,
        }
    }

    /// Bytes of record memory.
    #[inline(always)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The header word at `off` (a multiple of 8 below `size`).
    #[inline(always)]
    pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off < self.size);
        #[cfg(loom)]
        {
            &self.words[off / 8]
        }
        #[cfg(not(loom))]
        // SAFETY: `off + 8 <= size` (both multiples of 8, `off < size`: every offset the ends
        // use is kept so, see the module docs), 8-aligned in the memory promised to `new`; an
        // AtomicU64 may alias memory other processes access atomically.
        unsafe {
            &*self.base.as_ptr().add(off).cast::<AtomicU64>()
        }
    }

    /// The payload of the record at `off`; the caller has checked that the record's `len` bytes
    /// end inside the memory (`off + HEADER + len <= size`).
    #[inline(always)]
    pub(crate) fn payload(&self, off: usize) -> *mut u8 {
        // SAFETY: `off + HEADER <= size` (as in `word`), inside the memory promised to `new`.
        unsafe { self.base.as_ptr().add(off + HEADER) }
    }

    /// Records a write of `len` payload bytes of the record at `off` (loom only; free otherwise).
    #[inline(always)]
    pub(crate) fn mark_write(&self, _off: usize, _len: usize) {
        #[cfg(loom)]
        for w in self.payload_words(_off, _len) {
            self.marks[w].with_mut(|_| ());
        }
    }

    /// Records a read of `len` payload bytes of the record at `off` (loom only; free otherwise).
    #[inline(always)]
    pub(crate) fn mark_read(&self, _off: usize, _len: usize) {
        #[cfg(loom)]
        for w in self.payload_words(_off, _len) {
            self.marks[w].with(|_| ());
        }
    }

    /// The 8-byte words the payload of the record at `off` covers (its header's, for an empty
    /// one: a zero-length message still owns its record until it is freed).
    #[cfg(loom)]
    fn payload_words(&self, off: usize, len: usize) -> std::ops::Range<usize> {
        let first = off / 8;
        first..first + 1 + len.div_ceil(8)
    }
}
