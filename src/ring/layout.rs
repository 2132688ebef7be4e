//! The layout of a ring's SysV segment and the validation of its header.
//!
//! ```text
//! offset 0     Header (256 bytes): magic, layout version, kind, geometry, creator, flags, name
//! offset 256   control block (SpscShared): producer, consumer, doorbell, lock, role and counter
//!              lines, 128 B each
//! SLOTS_OFFSET slots: capacity x stride bytes; each slot = u32 length, 4 bytes pad, payload
//! ```
//!
//! Every header field is an atomic read once at attach into a local [`Layout`] and validated
//! there; after that the ring uses only the local copy, so later corruption of the header cannot
//! move an access outside the segment.

use super::spsc::SpscShared;
use super::Geometry;
use crate::error::{Corrupted, Error};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// "shmpipe\0" read as a little-endian u64; the first field of every ring.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"shmpipe\0");
/// Bumped on every incompatible change of this layout (2: the counters line moved the slots).
pub(crate) const LAYOUT_VERSION: u32 = 2;
/// `Header::kind` of an SPSC ring.
pub(crate) const KIND_SPSC: u32 = 1;
/// Longest ring name stored in the header.
pub const MAX_NAME_LEN: usize = 64;
/// `Header::flags` bit: the segment is being removed; anyone who finds it must not use it.
pub(crate) const FLAG_RECYCLED: u32 = 1;

pub(crate) const HEADER_SIZE: usize = 256;
pub(crate) const CONTROL_OFFSET: usize = HEADER_SIZE;
pub(crate) const SLOTS_OFFSET: usize = (CONTROL_OFFSET + size_of::<SpscShared>()).next_multiple_of(128);

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
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(SLOTS_OFFSET % 128 == 0);
#[cfg(target_arch = "x86_64")]
const _: () = assert!(SLOTS_OFFSET == 1280);

/// What the header says, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) geometry: Geometry,
    pub(crate) size: usize,
    pub(crate) name: String,
    pub(crate) creator_pid: u32,
}

/// Total segment size for `geometry`.
pub(crate) fn segment_size(geometry: &Geometry) -> usize {
    SLOTS_OFFSET + geometry.slots_size()
}

/// Why a header was not accepted.
pub(crate) enum HeaderCheck {
    /// The creator has not finished writing it.
    NotReady,
    /// Not ours.
    Reject(Error),
}

impl Header {
    /// Writes a fresh header for a segment nobody else can use yet (magic last).
    pub(crate) fn init(&self, geometry: &Geometry, name: &str, uid: u32, pid: u32) {
        self.version.store(LAYOUT_VERSION, Relaxed);
        self.kind.store(KIND_SPSC, Relaxed);
        self.capacity.store(geometry.capacity as u64, Relaxed);
        self.max_message.store(geometry.max_message as u64, Relaxed);
        self.stride.store(geometry.stride() as u64, Relaxed);
        self.segment_size.store(segment_size(geometry) as u64, Relaxed);
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

    /// The stored name (lossy, for messages and listing).
    pub(crate) fn name(&self) -> String {
        let len = (self.name_len.load(Relaxed) as usize).min(MAX_NAME_LEN);
        let bytes: Vec<u8> = self.name[..len].iter().map(|b| b.load(Relaxed)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Reads and validates the header of a segment of `actual_size` bytes found at `key`.
    /// `expect_name` is `None` when the user addressed the ring by raw key.
    pub(crate) fn validate(
        &self,
        key: i32,
        expect_name: Option<&str>,
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
        let kind = self.kind.load(Relaxed);
        if kind != KIND_SPSC {
            return Err(HeaderCheck::Reject(Error::InvalidConfig(format!(
                "ring {name:?} is of kind {kind}, opened as spsc"
            ))));
        }
        let capacity = self.capacity.load(Relaxed);
        let max_message = self.max_message.load(Relaxed);
        let geometry = usize::try_from(capacity)
            .ok()
            .zip(usize::try_from(max_message).ok())
            .and_then(|(c, m)| Geometry::new(c, m).ok())
            .ok_or_else(|| {
                corrupt(format!(
                    "capacity {capacity} / max message {max_message} out of range"
                ))
            })?;
        let stride = self.stride.load(Relaxed);
        if stride != geometry.stride() as u64 {
            return Err(corrupt(format!(
                "slot stride {stride}, expected {}",
                geometry.stride()
            )));
        }
        let size = segment_size(&geometry);
        let recorded = self.segment_size.load(Relaxed);
        if recorded != size as u64 || size > actual_size {
            return Err(corrupt(format!(
                "header describes {recorded} bytes (geometry needs {size}), segment has {actual_size}"
            )));
        }
        Ok(Layout {
            geometry,
            size,
            name,
            creator_pid: self.creator_pid.load(Relaxed),
        })
    }
}
