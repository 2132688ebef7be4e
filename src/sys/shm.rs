//! System V shared memory: `shmget`, `shmat`/`shmdt` as an RAII [`Attachment`], and `shmctl`
//! (`IPC_STAT`, `IPC_RMID`).
//!
//! The kernel keeps `shm_nattch` exact even when a process dies by SIGKILL (its mappings are torn
//! down at exit), and `IPC_RMID` only hides the key: the memory lives until the last detach.

use super::cvt;
use std::io;
use std::ptr::NonNull;

/// `shm_perm.mode` bit the kernel sets once `IPC_RMID` was called on a still-attached segment.
pub(crate) const SHM_DEST: u32 = 0o1000;

/// A segment identifier (`shmid`), valid until the segment is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShmId(pub(crate) i32);

/// What `IPC_STAT` reports about a segment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShmStat {
    pub(crate) size: usize,
    pub(crate) nattch: u64,
    pub(crate) uid: u32,
    pub(crate) cuid: u32,
    /// Permission bits plus `SHM_DEST` and friends.
    pub(crate) mode: u32,
    /// The pid that created the segment.
    pub(crate) cpid: u32,
}

/// Creates a new segment at `key`; fails with `EEXIST` if one is there already.
pub(crate) fn create_exclusive(key: i32, size: usize, mode: u32) -> io::Result<ShmId> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as libc::c_int;
    // SAFETY: shmget only reads its scalar arguments.
    cvt(unsafe { libc::shmget(key, size, flags) }).map(ShmId)
}

/// Finds the existing segment at `key` (`ENOENT` if there is none).
pub(crate) fn lookup(key: i32) -> io::Result<ShmId> {
    // SAFETY: shmget only reads its scalar arguments.
    cvt(unsafe { libc::shmget(key, 0, 0) }).map(ShmId)
}

/// `IPC_STAT`.
pub(crate) fn stat(id: ShmId) -> io::Result<ShmStat> {
    // SAFETY: shmid_ds is plain old data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid out-pointer of the right type for IPC_STAT.
    cvt(unsafe { libc::shmctl(id.0, libc::IPC_STAT, &mut ds) })?;
    Ok(ShmStat {
        size: ds.shm_segsz,
        nattch: ds.shm_nattch as u64,
        uid: ds.shm_perm.uid,
        cuid: ds.shm_perm.cuid,
        mode: ds.shm_perm.mode as u32,
        cpid: ds.shm_cpid as u32,
    })
}

/// `IPC_RMID`: the key disappears now; the memory when the last process detaches.
pub(crate) fn remove(id: ShmId) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer.
    cvt(unsafe { libc::shmctl(id.0, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// One attachment (`shmat`) of a segment to this process, detached (`shmdt`) on drop.
#[derive(Debug)]
pub(crate) struct Attachment {
    addr: NonNull<u8>,
    len: usize,
    id: ShmId,
}

// SAFETY: the mapping is process-wide; the handle is just an address and may move between threads.
// All access to the memory goes through atomics or through slots owned by protocol.
unsafe impl Send for Attachment {}
// SAFETY: as above; `&Attachment` only hands out the base address.
unsafe impl Sync for Attachment {}

impl Attachment {
    /// Attaches `id` read-write. `len` is the segment size from `IPC_STAT`, the bound every access
    /// is checked against.
    pub(crate) fn attach(id: ShmId, len: usize) -> io::Result<Self> {
        // SAFETY: a null address lets the kernel choose where to map; flags 0 is read-write.
        let addr = unsafe { libc::shmat(id.0, std::ptr::null(), 0) };
        if addr as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        let addr =
            NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(Attachment { addr, len, id })
    }

    /// Attaches `id` read-only (`SHM_RDONLY`), for looking at a segment without being able to
    /// change it: any store through the mapping faults. Only `Relaxed`/`Acquire` atomic loads of at
    /// most pointer size may be made through it (Rust documents those as valid on read-only
    /// memory); never a read-modify-write.
    pub(crate) fn attach_read_only(id: ShmId, len: usize) -> io::Result<Self> {
        // SAFETY: a null address lets the kernel choose where to map; SHM_RDONLY maps read-only.
        let addr = unsafe { libc::shmat(id.0, std::ptr::null(), libc::SHM_RDONLY) };
        if addr as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        let addr =
            NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(Attachment { addr, len, id })
    }

    /// The segment's base address in this process (page aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// The size the attachment was validated against.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The segment this is an attachment of.
    pub(crate) fn id(&self) -> ShmId {
        self.id
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // SAFETY: `addr` came from a successful shmat and is detached exactly once, here. Nothing
        // borrowed from the mapping outlives `self` (users hold an Arc to it).
        unsafe { libc::shmdt(self.addr.as_ptr().cast()) };
    }
}

/// A system limit, for error messages: `/proc/sys/kernel/NAME`.
pub(crate) fn kernel_limit(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_segment(size: usize) -> ShmId {
        // SAFETY: scalar arguments only.
        ShmId(cvt(unsafe { libc::shmget(libc::IPC_PRIVATE, size, 0o600) }).unwrap())
    }

    #[test]
    fn attach_counts_and_rmid_marks_dest() {
        let id = private_segment(4096);
        let a = Attachment::attach(id, 4096).unwrap();
        let st = stat(id).unwrap();
        assert_eq!(st.nattch, 1);
        assert_eq!(st.size, 4096);
        assert_eq!(st.mode & 0o777, 0o600);
        remove(id).unwrap();
        assert_ne!(stat(id).unwrap().mode & SHM_DEST, 0);
        // The memory stays usable until detach.
        // SAFETY: the attachment is 4096 bytes long and exclusively ours.
        unsafe { a.as_ptr().write(7) };
        drop(a);
        assert!(stat(id).is_err(), "segment is gone after the last detach");
    }
}
