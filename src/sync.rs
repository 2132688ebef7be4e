//! The one place that chooses between real and modelled synchronisation (tokio's loom shim).
//! Under `cfg(loom)` atomics, fences and the futex come from loom, the futex modelled as a
//! Mutex + Condvar per word (the kernel's hash-bucket lock makes "compare and sleep" atomic with
//! respect to wake, and the mutex plays that part). Everything else imports from here.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};

use std::sync::atomic::Ordering;
use std::time::Instant;

/// The ordering of the store that publishes a message (producer) or frees its room (consumer):
/// an SPSC record's header word (or a pad's) and the SPSC consumer's `head`, an MPMC slot's
/// sequence. `Release` pairs with the other side's `Acquire` load of the same word: the bytes are
/// written (or read) before the word says so. Built with `--cfg loom --cfg shmpipe_loom_weaken`
/// it is `Relaxed`, and the loom models must then fail; that is how we know they have teeth.
///
/// A `--cfg` rather than a Cargo feature, so that no crate in a dependency graph can weaken a
/// production build (features are unified across the graph); and only together with `loom`.
pub(crate) const PUBLISH: Ordering = if cfg!(all(loom, shmpipe_loom_weaken)) {
    Ordering::Relaxed
} else {
    Ordering::Release
};

#[cfg(all(shmpipe_loom_weaken, not(loom)))]
compile_error!(
    "--cfg shmpipe_loom_weaken weakens the ring's publishing stores for the loom models only: \
     build with --cfg loom as well (see loom-tests/README.md), never a production build"
);

/// A busy-wait hint; under loom a yield, so the model checker can run the other thread.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::hint::spin_loop();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Gives the CPU to another runnable thread.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// A 32-bit word that threads (and processes) can sleep on until it changes.
///
/// Outside loom it is exactly an `AtomicU32` (so it can live in a shared segment) and sleeping is
/// a shared futex.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct FutexWord(AtomicU32);

#[cfg(not(loom))]
impl FutexWord {
    pub(crate) fn new() -> Self {
        FutexWord(AtomicU32::new(0))
    }

    pub(crate) fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }

    /// Changes the word (so a sleeper about to sleep sees it changed) and wakes up to `n` sleepers.
    pub(crate) fn bump_and_wake(&self, n: u32) {
        // Release: pairs with the sleeper's load of the word; the real data is ordered by the
        // ring's own indices, this only has to change the value.
        self.0.fetch_add(1, Ordering::Release);
        crate::sys::futex::wake(&self.0, n);
    }

    /// Sleeps while the word equals `expected`, at most until `deadline`.
    pub(crate) fn wait(&self, expected: u32, deadline: Option<Instant>) {
        crate::sys::futex::wait(&self.0, expected, deadline);
    }

    /// The word itself, for the async waiter service (`aio::waiter`).
    #[cfg(feature = "tokio")]
    pub(crate) fn as_atomic(&self) -> &AtomicU32 {
        &self.0
    }
}

/// Under loom: the word, plus a mutex and condvar standing in for the kernel's futex queue.
#[cfg(loom)]
pub(crate) struct FutexWord {
    word: AtomicU32,
    lock: loom::sync::Mutex<()>,
    cond: loom::sync::Condvar,
}

#[cfg(loom)]
impl FutexWord {
    pub(crate) fn new() -> Self {
        FutexWord {
            word: AtomicU32::new(0),
            lock: loom::sync::Mutex::new(()),
            cond: loom::sync::Condvar::new(),
        }
    }

    pub(crate) fn load(&self, order: Ordering) -> u32 {
        self.word.load(order)
    }

    /// Wakes up to `n` sleepers, as `FUTEX_WAKE` does: `notify_one` `n` times (loom's condvar
    /// wakes its waiters in FIFO order, and a notify with nobody waiting is lost, like a futex
    /// wake), or `notify_all` for `u32::MAX`. Waking exactly as many as asked matters: a ring that
    /// wakes one waiter per message would have a lost wakeup among several waiters hidden by a
    /// model that woke them all.
    pub(crate) fn bump_and_wake(&self, n: u32) {
        self.word.fetch_add(1, Ordering::Release);
        let _bucket = self.lock.lock().unwrap();
        if n == u32::MAX {
            self.cond.notify_all();
        } else {
            for _ in 0..n {
                self.cond.notify_one();
            }
        }
    }

    /// Loom has no clock, and its `Condvar::wait_timeout` never times out. An untimed sleep
    /// (`deadline` `None`) waits for a notification only, so a lost wakeup shows up as a
    /// deadlock. A timed one does not sleep at all: it yields, so the other threads run, and its
    /// deadline counts as passed (`wait::deadline_passed`): a timed wait in a model times out
    /// instead of sleeping, rather than deadlocking where real time would have ended it.
    pub(crate) fn wait(&self, expected: u32, deadline: Option<Instant>) {
        if deadline.is_some() {
            loom::thread::yield_now();
            return;
        }
        let bucket = self.lock.lock().unwrap();
        if self.word.load(Ordering::Acquire) == expected {
            drop(self.cond.wait(bucket).unwrap());
        }
    }
}
