//! The layout of a ring's SysV segment and the validation of its header.
//!
//! ```text
//! offset 0     Header (256 bytes): magic, layout version, kind, geometry, creator, flags, name
//! offset 256   control block, 128-byte lines:
//!              spsc: SpscShared (producer, consumer, doorbells, lock, roles, counters)
//!              mpmc: MpmcShared (positions, doorbells, lock, roster, counters, member table)
//!              broadcast: BroadcastShared (tail, doorbells, lock, publisher, roster, counters,
//!              subscriber table)
//! slots_offset spsc: records, (capacity + 1) x stride bytes (`ring::records`): each an 8-byte
//!              header word (stamp, length) and the payload rounded up to 8 bytes; stride is
//!              the record of a `max_message` message
//!              mpmc: slots, capacity x stride bytes; each slot = u32 length, 4 bytes pad,
//!              u64 sequence word, payload
//!              broadcast: as mpmc (the sequence word is a seqlock, see `ring::broadcast`)
//! ```
//!
//! Every header field is an atomic read once at attach into a local [`Layout`] and validated
//! there; after that the ring uses only the local copy, so later corruption of the header cannot
//! move an access outside the segment.

use super::broadcast::BroadcastShared;
use super::mpmc::MpmcShared;
use super::spsc::SpscShared;
use super::{Geometry, RingKind};
use crate::error::{Corrupted, Error};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// "shmpipe\0" read as a little-endian u64; the first field of every ring.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"shmpipe\0");
/// Bumped on every incompatible change of this layout (2: the counters line moved the slots;
/// 3: liveness by the semaphore set named in `Header::tokens`, not by pid; a doorbell's waiter
/// count became a 64-bit mask of waiters, one bit per role or member record, and the MPMC member
/// record lost its `parked` mark; MPMC `publish` and `free` became CASes, and `robbed` joined the
/// loss counters in their line's spare bytes: a version-2 member would rewind a slot recovered
/// from it, so the two must not share a ring; 4: SPSC messages are dense records published by
/// their own header word, and its indices are byte positions with message counts beside them;
/// an MPMC member record announces a run of positions (`claim_more`, in the record's spare
/// bytes) claimed by one CAS: a version-3 member would take every slot of a live member's run but
/// the first for a dead member's and recover it); 5: an SPSC receiver's close also sets
/// `RECEIVER_CLOSED` in the `not_empty` doorbell's mask, and the producer no longer reads the
/// receiver's role before each send, only that mask after it: a version-4 receiver would close
/// without the mark, and a version-5 sender would keep sending into its ring until it filled).
pub(crate) const LAYOUT_VERSION: u32 = 5;
/// `Header::kind` of an SPSC ring.
pub(crate) const KIND_SPSC: u32 = 1;
/// `Header::kind` of an MPMC ring.
pub(crate) const KIND_MPMC: u32 = 2;
/// `Header::kind` of a broadcast ring (new kinds need no new version: an older build refuses
/// a kind it does not know as a configuration mismatch).
pub(crate) const KIND_BROADCAST: u32 = 3;
/// Longest ring name stored in the header.
pub const MAX_NAME_LEN: usize = 64;
/// `Header::flags` bit: the segment is being removed; anyone who finds it must not use it.
pub(crate) const FLAG_RECYCLED: u32 = 1;

pub(crate) const HEADER_SIZE: usize = 256;
pub(crate) const CONTROL_OFFSET: usize = HEADER_SIZE;
/// Where an SPSC ring's slots start (and the smallest segment that can be a ring).
pub(crate) const SLOTS_OFFSET: usize = (CONTROL_OFFSET + size_of::<SpscShared>()).next_multiple_of(128);
/// Where an MPMC ring's slots start.
pub(crate) const MPMC_SLOTS_OFFSET: usize = (CONTROL_OFFSET + size_of::<MpmcShared>()).next_multiple_of(128);
/// Where a broadcast ring's slots start.
pub(crate) const BROADCAST_SLOTS_OFFSET: usize =
    (CONTROL_OFFSET + size_of::<BroadcastShared>()).next_multiple_of(128);

/// Where the slots of a ring of `kind` start.
pub(crate) const fn slots_offset(kind: RingKind) -> usize {
    match kind {
        RingKind::Spsc => SLOTS_OFFSET,
        RingKind::Mpmc => MPMC_SLOTS_OFFSET,
        RingKind::Broadcast => BROADCAST_SLOTS_OFFSET,
    }
}

const fn kind_code(kind: RingKind) -> u32 {
    match kind {
        RingKind::Spsc => KIND_SPSC,
        RingKind::Mpmc => KIND_MPMC,
        RingKind::Broadcast => KIND_BROADCAST,
    }
}

/// The first 256 bytes of a segment.
#[repr(C)]
pub(crate) struct Header {
    /// `MAGIC` once initialised (stored last, with Release); 0 while the creator is still writing.
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) kind: AtomicU32,
    pub(crate) capacity: AtomicU64,
    pub(crate) max_message: AtomicU64,
    pub(crate) stride: AtomicU64,
    pub(crate) segment_size: AtomicU64,
    pub(crate) creator_uid: AtomicU32,
    pub(crate) creator_pid: AtomicU32,
    pub(crate) flags: AtomicU32,
    pub(crate) name_len: AtomicU32,
    pub(crate) name: [AtomicU8; MAX_NAME_LEN],
    /// 1 + the id of the ring's SysV semaphore set (its lock and its members' liveness tokens,
    /// see `ring::tokens`); 0 until the creator has made it. Written before the magic, with
    /// Release, so an opener that finds the header not ready yet can still wait on the lock.
    pub(crate) tokens: AtomicU64,
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(SLOTS_OFFSET.is_multiple_of(128) && MPMC_SLOTS_OFFSET.is_multiple_of(128));
const _: () = assert!(SLOTS_OFFSET <= MPMC_SLOTS_OFFSET && SLOTS_OFFSET <= BROADCAST_SLOTS_OFFSET);
const _: () = assert!(BROADCAST_SLOTS_OFFSET.is_multiple_of(128));
#[cfg(target_arch = "x86_64")]
const _: () = assert!(SLOTS_OFFSET == 1280);

/// What the header says, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) kind: RingKind,
    pub(crate) geometry: Geometry,
    pub(crate) size: usize,
    pub(crate) name: String,
    pub(crate) creator_pid: u32,
    /// The semaphore set id the header names (unchecked: see `transport::shm::ring_sems`).
    pub(crate) sems: i32,
}

/// Total segment size of a ring of `kind` with `geometry`, or `None` if it overflows `usize`
/// (it cannot for a geometry from `Geometry::new` on a 64-bit target; checked all the same).
pub(crate) fn segment_size(kind: RingKind, geometry: &Geometry) -> Option<usize> {
    geometry
        .checked_slots_size_for(kind)?
        .checked_add(slots_offset(kind))
}

/// The segment size a header's raw `capacity` and `stride` describe, checked: `None` if it
/// overflows (a 64-bit product, then `usize`).
fn raw_segment_size(kind: RingKind, capacity: u64, stride: u64) -> Option<usize> {
    let units = match kind {
        // One record more than the capacity (see `Geometry::ring_bytes`).
        RingKind::Spsc => capacity.checked_add(1)?,
        RingKind::Mpmc | RingKind::Broadcast => capacity,
    };
    let bytes = units
        .checked_mul(stride)?
        .checked_add(slots_offset(kind) as u64)?;
    usize::try_from(bytes).ok()
}

/// Why a header was not accepted.
pub(crate) enum HeaderCheck {
    /// The creator has not finished writing it.
    NotReady,
    /// Not ours.
    Reject(Error),
}

impl Header {
    /// Writes a fresh header for a segment of `size` bytes (`segment_size(kind, geometry)`) that
    /// nobody else can use yet (magic last).
    pub(crate) fn init(
        &self,
        kind: RingKind,
        geometry: &Geometry,
        size: usize,
        name: &str,
        uid: u32,
        pid: u32,
    ) {
        self.version.store(LAYOUT_VERSION, Relaxed);
        self.kind.store(kind_code(kind), Relaxed);
        self.capacity.store(geometry.capacity as u64, Relaxed);
        self.max_message.store(geometry.max_message as u64, Relaxed);
        self.stride.store(geometry.stride_for(kind) as u64, Relaxed);
        self.segment_size.store(size as u64, Relaxed);
        self.creator_uid.store(uid, Relaxed);
        self.creator_pid.store(pid, Relaxed);
        let bytes = name.as_bytes();
        for (cell, b) in self.name.iter().zip(bytes) {
            cell.store(*b, Relaxed);
        }
        self.name_len.store(bytes.len().min(MAX_NAME_LEN) as u32, Relaxed);
        // Release: everything above is visible to whoever sees the magic with Acquire.
        self.magic.store(MAGIC, Release);
    }

    /// Records the ring's semaphore set (by its creator, before `init`).
    pub(crate) fn set_sems(&self, id: i32) {
        // Release: pairs with the Acquire in `sems` of an opener that finds the header not ready.
        self.tokens.store(id as u64 + 1, Release);
    }

    /// The semaphore set the header names, if any (a valid id is 0..=i32::MAX).
    pub(crate) fn sems(&self) -> Option<i32> {
        // Acquire: pairs with `set_sems`.
        let raw = self.tokens.load(Acquire);
        raw.checked_sub(1).and_then(|id| i32::try_from(id).ok())
    }

    /// The stored name (lossy, for messages and listing).
    pub(crate) fn name(&self) -> String {
        let len = (self.name_len.load(Relaxed) as usize).min(MAX_NAME_LEN);
        let bytes: Vec<u8> = self.name[..len].iter().map(|b| b.load(Relaxed)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Reads and validates the header of a segment of `actual_size` bytes found at `key`.
    /// `expect_name` is `None` when the user addressed the ring by raw key; `expect_kind` is
    /// `None` when any kind will do (listing).
    pub(crate) fn validate(
        &self,
        key: i32,
        expect_name: Option<&str>,
        expect_kind: Option<RingKind>,
        actual_size: usize,
    ) -> Result<Layout, HeaderCheck> {
        let foreign = |reason: String| HeaderCheck::Reject(Error::Foreign { key, reason });
        let corrupt = |reason: String| HeaderCheck::Reject(Error::Corrupted(Corrupted { reason }));
        // Acquire: pairs with the Release in `init`.
        match self.magic.load(Acquire) {
            0 => return Err(HeaderCheck::NotReady),
            MAGIC => {}
            other => return Err(foreign(format!("magic {other:#018x}"))),
        }
        let name = self.name();
        if let Some(expected) = expect_name {
            if name != expected {
                return Err(foreign(format!(
                    "it belongs to ring {name:?}, not {expected:?} (hash collision)"
                )));
            }
        }
        let version = self.version.load(Relaxed);
        if version != LAYOUT_VERSION {
            return Err(foreign(format!(
                "layout version {version}, this build speaks {LAYOUT_VERSION}"
            )));
        }
        let kind = match self.kind.load(Relaxed) {
            KIND_SPSC => RingKind::Spsc,
            KIND_MPMC => RingKind::Mpmc,
            KIND_BROADCAST => RingKind::Broadcast,
            // A kind this build does not know (a newer shmpipe's, say) is a ring of another
            // kind, refused as a configuration mismatch as before MPMC existed, not reported
            // as corrupted (tests/faults.rs relies on this).
            other => {
                return Err(HeaderCheck::Reject(Error::InvalidConfig(format!(
                    "ring {name:?} is of unknown kind {other}; this build knows spsc ({KIND_SPSC}), \
                     mpmc ({KIND_MPMC}) and broadcast ({KIND_BROADCAST})"
                ))))
            }
        };
        if let Some(expected) = expect_kind.filter(|&k| k != kind) {
            // Names the word "kind" and both kinds: the mismatch is the whole story.
            return Err(HeaderCheck::Reject(Error::InvalidConfig(format!(
                "ring {name:?} is of kind {kind}, opened as {expected} (the kind, mode=spsc, \
                 mode=mpmc or mode=broadcast, is fixed when a ring is created)"
            ))));
        }
        // Relaxed (the geometry fields): ordered by the Acquire load of the magic above.
        let capacity = self.capacity.load(Relaxed);
        let max_message = self.max_message.load(Relaxed);
        let stride = self.stride.load(Relaxed);
        // The size the raw fields describe, before anything else is derived from them: a product
        // that overflows is corruption, never a wrapped (small) size.
        if raw_segment_size(kind, capacity, stride).is_none() {
            return Err(corrupt(format!(
                "{capacity} slots of {stride} bytes overflow the address space"
            )));
        }
        let geometry = usize::try_from(capacity)
            .ok()
            .zip(usize::try_from(max_message).ok())
            .and_then(|(c, m)| Geometry::for_kind(kind, c, m).ok())
            .ok_or_else(|| {
                corrupt(format!(
                    "capacity {capacity} / max message {max_message} out of range"
                ))
            })?;
        // `Geometry::for_kind` checked that the stride and memory of this geometry fit in usize.
        let expected_stride = geometry.stride_for(kind);
        if stride != expected_stride as u64 {
            return Err(corrupt(format!(
                "slot stride {stride}, expected {expected_stride}"
            )));
        }
        let size = segment_size(kind, &geometry)
            .ok_or_else(|| corrupt(format!("capacity {capacity} x stride {stride} overflows")))?;
        let recorded = self.segment_size.load(Relaxed);
        if recorded != size as u64 || size > actual_size {
            return Err(corrupt(format!(
                "header describes {recorded} bytes (geometry needs {size}), segment has {actual_size}"
            )));
        }
        Ok(Layout {
            kind,
            geometry,
            size,
            name,
            creator_pid: self.creator_pid.load(Relaxed),
            sems: self
                .sems()
                .ok_or_else(|| corrupt("no semaphore set recorded".into()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{MAX_CAPACITY, MAX_MESSAGE_LIMIT};

    /// A header as `init` writes it for `kind` with `geometry`, name "x".
    fn header(kind: RingKind, geometry: &Geometry) -> Header {
        let h = Header {
            magic: AtomicU64::new(0),
            version: AtomicU32::new(0),
            kind: AtomicU32::new(0),
            capacity: AtomicU64::new(0),
            max_message: AtomicU64::new(0),
            stride: AtomicU64::new(0),
            segment_size: AtomicU64::new(0),
            creator_uid: AtomicU32::new(0),
            creator_pid: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            name_len: AtomicU32::new(0),
            name: std::array::from_fn(|_| AtomicU8::new(0)),
            tokens: AtomicU64::new(1),
        };
        let size = segment_size(kind, geometry).unwrap();
        h.init(kind, geometry, size, "x", 0, 1);
        h
    }

    fn reason(r: Result<Layout, HeaderCheck>) -> String {
        match r {
            Err(HeaderCheck::Reject(Error::Corrupted(c))) => c.reason,
            Err(HeaderCheck::Reject(e)) => panic!("rejected, but not as corrupted: {e:?}"),
            Err(HeaderCheck::NotReady) => panic!("not ready"),
            Ok(layout) => panic!("accepted: {layout:?}"),
        }
    }

    #[test]
    fn a_header_whose_size_product_overflows_is_corrupted_not_wrapped() {
        for kind in [RingKind::Spsc, RingKind::Mpmc, RingKind::Broadcast] {
            let g = Geometry::new(4, 64).unwrap();
            let h = header(kind, &g);
            let size = segment_size(kind, &g).unwrap();
            assert!(h.validate(1, Some("x"), Some(kind), size).is_ok());
            // 2^33 slots of 2^31 bytes: exactly 2^64, which wraps to 0 (a size that would fit in
            // any segment) with unchecked 64-bit arithmetic.
            h.capacity.store(1 << 33, Relaxed);
            h.stride.store(1 << 31, Relaxed);
            assert_eq!((1u64 << 33).wrapping_mul(1 << 31), 0);
            let why = reason(h.validate(1, Some("x"), Some(kind), usize::MAX));
            assert!(why.contains("overflow"), "{kind}: {why}");
            // Every large product, not only the one that wraps to 0.
            h.capacity.store(u64::MAX, Relaxed);
            h.stride.store(3, Relaxed);
            let why = reason(h.validate(1, Some("x"), Some(kind), usize::MAX));
            assert!(why.contains("overflow"), "{kind}: {why}");
            // The product fits, but adding the control block does not.
            h.capacity.store(1, Relaxed);
            h.stride.store(u64::MAX - 100, Relaxed);
            let why = reason(h.validate(1, Some("x"), Some(kind), usize::MAX));
            assert!(why.contains("overflow"), "{kind}: {why}");
        }
    }

    #[test]
    fn sizes_are_checked_for_any_geometry_and_fit_at_the_limits() {
        // The largest geometry `new` accepts: every size fits, exactly as wide arithmetic says.
        let g = Geometry::new(MAX_CAPACITY, MAX_MESSAGE_LIMIT).unwrap();
        for kind in [RingKind::Spsc, RingKind::Mpmc] {
            let units = g.capacity as u128 + u128::from(kind == RingKind::Spsc);
            let wide = slots_offset(kind) as u128 + units * g.stride_for(kind) as u128;
            assert_eq!(segment_size(kind, &g).map(|s| s as u128), Some(wide));
        }
        // One built by hand, past the limits: the checked sizes say so, and the public ones
        // panic rather than wrap.
        let huge = Geometry {
            capacity: 1 << 62,
            max_message: 1 << 20,
        };
        assert_eq!(huge.checked_slots_size_for(RingKind::Spsc), None);
        assert_eq!(segment_size(RingKind::Mpmc, &huge), None);
        assert!(std::panic::catch_unwind(|| huge.slots_size()).is_err());
        let wide = Geometry {
            capacity: 2,
            max_message: usize::MAX - 8,
        };
        assert_eq!(wide.checked_stride_for(RingKind::Mpmc), None);
        assert!(std::panic::catch_unwind(|| wide.stride()).is_err());
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests of [`Header::validate`]: whatever another process wrote into the header,
    //! and whatever size the segment really has, validation never panics, and a layout it accepts
    //! fits in the segment.
    use super::*;
    use proptest::prelude::*;

    /// 256 bytes, aligned for a [`Header`].
    #[repr(C)]
    struct RawHeader([AtomicU64; HEADER_SIZE / 8]);

    const _: () = assert!(size_of::<RawHeader>() == HEADER_SIZE);
    const _: () = assert!(align_of::<RawHeader>() >= align_of::<Header>());

    impl RawHeader {
        fn new(bytes: &[u8; HEADER_SIZE]) -> Self {
            RawHeader(std::array::from_fn(|i| {
                let word: [u8; 8] = bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes");
                AtomicU64::new(u64::from_ne_bytes(word))
            }))
        }

        fn header(&self) -> &Header {
            // The reference borrows `self`, and the memory is only ever accessed through atomics.
            // SAFETY: `Header` is `repr(C)` atomics only (every bit pattern valid), no larger than
            // `RawHeader` and no more aligned (both asserted above).
            unsafe { &*(self as *const RawHeader).cast::<Header>() }
        }
    }

    /// What the test checks about any outcome of `validate`.
    fn check(header: &Header, expect_name: Option<&str>, actual_size: usize) -> Result<(), TestCaseError> {
        match header.validate(0x1234, expect_name, None, actual_size) {
            Err(_) => {}
            Ok(layout) => {
                let g = &layout.geometry;
                prop_assert!(layout.size <= actual_size, "{layout:?} in {actual_size} bytes");
                let kind = layout.kind;
                prop_assert_eq!(Some(layout.size), segment_size(kind, g));
                match kind {
                    RingKind::Mpmc | RingKind::Broadcast => {
                        prop_assert!(g.capacity.is_power_of_two() && g.capacity >= 2)
                    }
                    RingKind::Spsc => prop_assert!(g.capacity >= 1),
                }
                prop_assert!(g.stride_for(kind) >= g.max_message + kind.slot_header());
                // Every slot, payload included, lies inside the segment.
                let units = g.capacity as u128 + u128::from(kind == RingKind::Spsc);
                let end = slots_offset(kind) as u128 + units * g.stride_for(kind) as u128;
                prop_assert!(end <= actual_size as u128);
                prop_assert!(layout.name.len() <= 4 * MAX_NAME_LEN);
                if let Some(name) = expect_name {
                    prop_assert_eq!(&layout.name, name);
                }
            }
        }
        Ok(())
    }

    /// Sizes near the interesting boundaries, and anything.
    fn size_like() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u32..=26).prop_map(|s| 1u64 << s),
            (1u32..=26).prop_map(|s| (1u64 << s) - 1),
            (1u32..=26).prop_map(|s| (1u64 << s) + 1),
            0u64..100_000,
            any::<u64>(),
            Just(u64::MAX),
            Just(0),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any 256 bytes at all (mostly rejected at the magic).
        #[test]
        fn arbitrary_bytes(bytes in prop::array::uniform32(any::<[u8; 8]>()), actual in any::<usize>()) {
            let flat: [u8; HEADER_SIZE] = std::array::from_fn(|i| bytes[i / 8][i % 8]);
            let raw = RawHeader::new(&flat);
            check(raw.header(), None, actual)?;
            check(raw.header(), Some("x"), actual)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Random bytes with each field either right, nearly right, or arbitrary, so that the
        /// checks past the magic are reached (and passed) often.
        #[test]
        fn plausible_headers(
            noise in prop::array::uniform32(any::<[u8; 8]>()),
            magic in prop_oneof![4 => Just(MAGIC), 1 => Just(0u64), 1 => any::<u64>()],
            version in prop_oneof![4 => Just(LAYOUT_VERSION), 1 => any::<u32>()],
            kind in prop_oneof![2 => Just(KIND_SPSC), 2 => Just(KIND_MPMC), 2 => Just(KIND_BROADCAST), 1 => any::<u32>()],
            capacity in prop_oneof![3 => (1u32..=24).prop_map(|s| 1u64 << s), 1 => size_like()],
            max_message in prop_oneof![3 => 1u64..70_000, 1 => size_like()],
            stride in prop_oneof![3 => Just(None), 1 => size_like().prop_map(Some)],
            recorded in prop_oneof![3 => Just(None), 1 => size_like().prop_map(Some)],
            name_len in prop_oneof![3 => 0u32..=64, 1 => any::<u32>()],
            use_name in any::<bool>(),
            actual in prop_oneof![
                2 => Just(None),
                1 => (-4096i64..=4096).prop_map(Some),
                1 => any::<usize>().prop_map(|a| Some(a as i64)),
            ],
        ) {
            let flat: [u8; HEADER_SIZE] = std::array::from_fn(|i| noise[i / 8][i % 8]);
            let raw = RawHeader::new(&flat);
            let h = raw.header();
            h.magic.store(magic, Relaxed);
            h.version.store(version, Relaxed);
            h.kind.store(kind, Relaxed);
            h.capacity.store(capacity, Relaxed);
            h.max_message.store(max_message, Relaxed);
            h.name_len.store(name_len, Relaxed);
            // The stride and size the geometry would need, if it is one (or arbitrary ones).
            let as_kind = match kind {
                KIND_MPMC => RingKind::Mpmc,
                KIND_BROADCAST => RingKind::Broadcast,
                _ => RingKind::Spsc,
            };
            let geometry = usize::try_from(capacity)
                .ok()
                .zip(usize::try_from(max_message).ok())
                .and_then(|(c, m)| super::Geometry::for_kind(as_kind, c, m).ok());
            let right_stride = geometry.as_ref().map_or(0, |g| g.stride_for(as_kind) as u64);
            let right_size = geometry.as_ref().and_then(|g| segment_size(as_kind, g)).map_or(0, |s| s as u64);
            h.stride.store(stride.unwrap_or(right_stride), Relaxed);
            h.segment_size.store(recorded.unwrap_or(right_size), Relaxed);
            // The segment: exactly the size needed, or off by a little, or anything.
            let actual = match actual {
                None => right_size as usize,
                Some(d) if d.unsigned_abs() <= 4096 => (right_size as i64).saturating_add(d).max(0) as usize,
                Some(a) => a as usize,
            };
            let name = h.name();
            check(h, use_name.then_some(name.as_str()), actual)?;
        }
    }
}
