//! Thin, safe wrappers over the kernel interfaces shmpipe uses. This is the only module that
//! calls libc: everything above it works with typed results and RAII handles.
//!
//! Invariant: every wrapper reports `errno` as an [`std::io::Error`] and retries `EINTR` itself
//! where retrying cannot change the meaning of the call.

pub(crate) mod clock;
pub(crate) mod fork;
pub(crate) mod futex;
pub(crate) mod membarrier;
pub(crate) mod msgq;
pub(crate) mod proc;
pub(crate) mod sem;
pub(crate) mod shm;
pub(crate) mod socket;

use std::io;

/// Converts a `-1` return into the thread's `errno`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
