//! Asymmetric memory barriers across processes (`membarrier(2)`), so the publishing side of a
//! doorbell can skip its StoreLoad fence.
//!
//! The doorbell handshake is a Dekker pattern: the publisher stores the index then loads the
//! waiter mask; the sleeper sets its bit in the mask then loads the index. Each side needs a full
//! barrier between its store and its load, or both can miss the other. A full barrier on every
//! message is the ring's largest cost, while sleeping is rare. So a process that has registered
//! with `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` publishes with only a compiler fence, and the
//! side about to sleep issues `MEMBARRIER_CMD_GLOBAL_EXPEDITED`, which makes every running thread
//! of every registered process execute a full barrier before it returns (a thread that is not
//! running passes one at its next context switch). Either the publisher's load comes after that
//! barrier and sees the waiter, or its store was drained by it and the sleeper's re-check sees the
//! index (the same argument as liburcu's and folly's asymmetric fences).
//!
//! Where registration fails (kernel before 4.16, seccomp), or `SHMPIPE_NO_MEMBARRIER` is set in
//! the environment (for A/B measurements), the process keeps the full fence. If the
//! sleeper's barrier fails, a publisher might rely on it; the sleeper then parks in short slices
//! and re-checks, so a wakeup is late, never lost.

use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

const CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
const CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

const UNKNOWN: u8 = 0;
const REGISTERED: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// This process's registration. Reset in a forked child, which must not assume it inherited one.
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

extern "C" fn forget_in_child() {
    // Relaxed: the child is single-threaded at this point.
    STATE.store(UNKNOWN, Relaxed);
}

/// Registers this process (once); returns whether publishers here may use the light fence.
pub(crate) fn register() -> bool {
    // Acquire: pairs with the Release below, from whichever thread registered first.
    match STATE.load(Acquire) {
        REGISTERED => return true,
        UNAVAILABLE => return false,
        _ => {}
    }
    let ok = std::env::var_os("SHMPIPE_NO_MEMBARRIER").is_none()
        // SAFETY: membarrier takes only scalar arguments.
        && unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) } == 0;
    if ok {
        // SAFETY: `forget_in_child` is async-signal-safe (one atomic store), as atfork handlers
        // must be; registering it more than once is harmless.
        unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
    }
    // Release: a thread that sees REGISTERED also sees that the kernel registration happened.
    STATE.store(if ok { REGISTERED } else { UNAVAILABLE }, Release);
    ok
}

/// Whether this process may publish with only a compiler fence (hot path: one load).
#[inline]
pub(crate) fn registered() -> bool {
    // Relaxed: set once before any ring of this process exists (RingCore::new registers).
    STATE.load(Relaxed) == REGISTERED
}

/// Makes every running thread of every registered process execute a full memory barrier.
/// Returns false if the kernel refused.
pub(crate) fn heavy_barrier() -> bool {
    // SAFETY: membarrier takes only scalar arguments.
    unsafe { libc::syscall(libc::SYS_membarrier, CMD_GLOBAL_EXPEDITED, 0, 0) == 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registers_and_barriers_on_linux() {
        // Kernels since 4.16 support it; this machine's does. A refusal must be consistent.
        let ok = super::register();
        assert_eq!(super::registered(), ok);
        if ok {
            assert!(super::heavy_barrier());
        }
    }
}
