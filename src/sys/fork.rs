//! Which process an end belongs to, cheaply enough to ask on every message.
//!
//! A child made by `fork` inherits every end by value, but not the right to use it: the parent
//! may go on using the same ring, and an SPSC ring with two producers is corrupted. The child
//! handler of `pthread_atfork` bumps a process-wide generation; an end records the generation it
//! was opened in, and one load of a static tells it apart from an inherited copy, with no
//! syscall (`getpid` is one since glibc 2.25).
//!
//! `fork` and `system` run the handlers; `posix_spawn` and `vfork` children exec without touching
//! our ends, so they need none.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Once;

static GENERATION: AtomicU32 = AtomicU32::new(0);
static ARMED: Once = Once::new();

extern "C" fn in_child() {
    // Relaxed: the child has one thread when the handler runs; later threads see it through the
    // happens-before of their spawning.
    GENERATION.fetch_add(1, Relaxed);
}

/// Installs the fork handler (once per process) and returns this process's generation, to be
/// recorded by an end when it is opened.
pub(crate) fn arm() -> u32 {
    ARMED.call_once(|| {
        // SAFETY: `in_child` is an `extern "C" fn()` that only bumps an atomic, which is
        // async-signal-safe as the child handler of a fork must be; the others are none.
        let ret = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        // ENOMEM is the only documented failure; without the handler a forked child's ends would
        // not be refused, so this is worth a loud failure rather than a silent one.
        assert_eq!(ret, 0, "pthread_atfork failed: {ret}");
    });
    generation()
}

/// This process's generation: differs from the one an end recorded iff the end was inherited.
#[inline(always)]
pub(crate) fn generation() -> u32 {
    // Relaxed: written only in a forked child before it has other threads.
    GENERATION.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_has_another_generation() {
        let mine = arm();
        assert_eq!(generation(), mine);
        // SAFETY: the child only reads an atomic and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if generation() != mine { 0 } else { 1 };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(status, 0, "the child saw its parent's generation");
        assert_eq!(generation(), mine, "the parent's generation changed");
    }
}
