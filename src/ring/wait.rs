//! Waiting: spin briefly, yield, then park on a futex "doorbell" in shared memory.
//!
//! A [`Doorbell`] is a futex word plus a count of sleepers. The side that makes progress (publishes
//! a message, frees a slot, closes) calls [`Doorbell::ring`], which costs one fence and one load
//! while nobody sleeps: no syscall on the fast path.
//!
//! No lost wakeup (a Dekker pattern): the sleeper increments `waiters`, fences, reads the word,
//! re-checks its condition, then sleeps only while the word is unchanged. The ringer publishes,
//! fences, then reads `waiters`. The two barriers forbid both sides missing each other: either
//! the sleeper's re-check sees the publication, or the ringer sees the waiter and bumps the word
//! (so a sleep that has not started yet returns at once, and one that has is woken).
//!
//! The barriers are asymmetric where the kernel allows (`sys::membarrier`): a registered
//! publisher uses a compiler fence only, and the rare sleeper pays with a `membarrier` syscall
//! that fences every registered process. Under loom both sides use SeqCst fences.

use crate::sync::{fence, spin_loop, yield_now, AtomicU32, AtomicU64, FutexWord};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

/// A futex word to sleep on, and how many are asleep (or about to be).
#[repr(C)]
pub(crate) struct Doorbell {
    word: FutexWord,
    pub(crate) waiters: AtomicU32,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Doorbell {
            word: FutexWord::new(),
            waiters: AtomicU32::new(0),
        }
    }

    /// Takes back the count of a waiter that died while counted (see [`Tally::mark`]).
    pub(crate) fn forget_waiter(&self) {
        // Relaxed: only the value matters; a saturating decrement, so a bad mark cannot wrap it.
        let _ = self.waiters.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Called after publishing progress: wakes sleepers if there are any, counting the wake in
    /// `wakes` (the slow path only).
    #[inline]
    pub(crate) fn ring(&self, n: u32, wakes: &AtomicU64) {
        if self.has_waiters() {
            self.wake(n, wakes);
        }
    }

    /// Whether anyone sleeps (or is about to), after the publisher's barrier: the handshake of
    /// [`ring`](Self::ring), for a caller that decides afterwards whether to [`wake`](Self::wake).
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        // StoreLoad between the caller's publishing store and the `waiters` load; pairs with the
        // sleeper's barrier in `wait_until`. See the module docs.
        publisher_barrier();
        // Relaxed: the fence above provides the ordering.
        self.waiters.load(Relaxed) != 0
    }

    /// Wakes up to `n` sleepers (after [`has_waiters`](Self::has_waiters) said there are some).
    /// Out of line, so the fast path of `ring` stays a few instructions that leave the caller's
    /// registers alone.
    #[cold]
    #[inline(never)]
    pub(crate) fn wake(&self, n: u32, wakes: &AtomicU64) {
        // Relaxed: a statistic; nothing is ordered by it.
        wakes.fetch_add(1, Relaxed);
        self.word.bump_and_wake(n);
    }
}

/// The publisher's half of the handshake: a full fence, or only a compiler fence when this
/// process is registered for `membarrier` and the sleeper supplies the barrier (see
/// `sys::membarrier`). Loom models the symmetric version only.
#[inline]
fn publisher_barrier() {
    // Written as "fence unless registered" rather than "if registered, compiler fence; else
    // fence": the same barriers, but the registered case then falls through the branch (one
    // instruction less per message than with the two-armed form).
    #[cfg(not(loom))]
    {
        if !crate::sys::membarrier::registered() {
            fence(SeqCst);
        }
        std::sync::atomic::compiler_fence(SeqCst);
    }
    #[cfg(loom)]
    fence(SeqCst);
}

/// The sleeper's half: a full fence, plus `membarrier` so that light publishers are fenced too.
/// Returns false when the barrier could not be issued: a publisher may then have missed our
/// waiter count, so the caller must not sleep long.
#[inline]
fn sleeper_barrier() -> bool {
    fence(SeqCst);
    #[cfg(not(loom))]
    return crate::sys::membarrier::heavy_barrier();
    #[cfg(loom)]
    true
}

/// How long to spin and yield before parking.
///
/// Spinning buys latency with CPU: with fewer cores than busy threads a spinning waiter only delays
/// the peer it waits for, so the default is short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStrategy {
    /// Rounds of `spin_loop()` before yielding.
    pub spins: u32,
    /// Rounds of `sched_yield()` before parking on the futex.
    pub yields: u32,
    /// Longest single park. After each, a blocked side re-checks whether its peer process is still
    /// alive, so this bounds how long a peer's crash takes to notice.
    pub park_slice: Duration,
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy {
            spins: 128,
            yields: 8,
            park_slice: Duration::from_millis(100),
        }
    }
}

impl WaitStrategy {
    /// Never spins or yields: park at once (lowest CPU use, wake latency of a futex).
    pub fn park_only() -> Self {
        WaitStrategy {
            spins: 0,
            yields: 0,
            ..Self::default()
        }
    }

    /// Spins for up to `spins` rounds before parking (lowest latency when a core is free).
    pub fn spinning(spins: u32) -> Self {
        WaitStrategy {
            spins,
            ..Self::default()
        }
    }
}

/// Slow-path statistics of a ring, on their own line at the end of the control block: how often
/// each side had to wait and how often futex calls were made. Never touched on the fast path.
#[repr(C)]
pub(crate) struct WaitCounters {
    /// The producer found the ring full and went to wait (spin, yield or park).
    pub(crate) full_waits: AtomicU64,
    /// The consumer found the ring empty and went to wait.
    pub(crate) empty_waits: AtomicU64,
    /// Futex waits entered (by either side).
    pub(crate) parks: AtomicU64,
    /// Futex wakes issued (by either side).
    pub(crate) wakes: AtomicU64,
}

impl WaitCounters {
    pub(crate) fn new() -> Self {
        WaitCounters {
            full_waits: AtomicU64::new(0),
            empty_waits: AtomicU64::new(0),
            parks: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
        }
    }
}

/// Which counters a wait adds to: the side's wait count and the shared park count.
pub(crate) struct Tally<'a> {
    pub(crate) waits: &'a AtomicU64,
    pub(crate) parks: &'a AtomicU64,
    /// A member of a shared ring: set to 1 while this waiter is counted in the doorbell's
    /// `waiters`, so that if its process is killed while parked, whoever reaps it can take the
    /// count back ([`Doorbell::forget_waiter`]). Otherwise every later publish would make a futex
    /// syscall for a sleeper that no longer exists.
    pub(crate) mark: Option<&'a AtomicU32>,
}

/// The outcome of one look at the condition being waited for.
pub(crate) enum Check<T, E> {
    /// The wait is over, with this result.
    Done(Result<T, E>),
    /// Not yet.
    NotYet,
}

/// Waits until `check` is done, the deadline passes (`Err(timeout())`), or a park slice ends and
/// `on_slice` reports a result (a dead peer).
///
/// `check` must read the shared state afresh with at least Acquire loads each time.
pub(crate) fn wait_until<T, E>(
    bell: &Doorbell,
    tally: Tally<'_>,
    strategy: &WaitStrategy,
    deadline: Option<Instant>,
    mut check: impl FnMut() -> Check<T, E>,
    mut on_slice: impl FnMut() -> Check<T, E>,
    timeout: impl Fn() -> E,
) -> Result<T, E> {
    // Relaxed (here and for `parks`): statistics only; nothing is ordered by them.
    tally.waits.fetch_add(1, Relaxed);
    for _ in 0..strategy.spins {
        if let Check::Done(r) = check() {
            return r;
        }
        spin_loop();
    }
    for _ in 0..strategy.yields {
        if let Check::Done(r) = check() {
            return r;
        }
        yield_now();
    }
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return match check() {
                Check::Done(r) => r,
                Check::NotYet => Err(timeout()),
            };
        }
        // Relaxed increment: the barrier right after orders it before the re-check (StoreLoad).
        bell.waiters.fetch_add(1, Relaxed);
        // Relaxed (both marks): read only by a reaper after this process died.
        if let Some(mark) = tally.mark {
            mark.store(1, Relaxed);
        }
        let fenced = sleeper_barrier();
        // Acquire: read the word before re-checking, so a ring that happens after the re-check
        // changes it and the sleep below returns at once.
        let seen = bell.word.load(Acquire);
        let result = check();
        if let Check::NotYet = result {
            // Without the heavy barrier a light publisher may miss us: re-check every millisecond.
            let slice = if fenced {
                strategy.park_slice
            } else {
                Duration::from_millis(1)
            };
            let slice_end = if cfg!(loom) { None } else { now.checked_add(slice) };
            let until = match (deadline, slice_end) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            tally.parks.fetch_add(1, Relaxed);
            bell.word.wait(seen, until);
        }
        if let Some(mark) = tally.mark {
            mark.store(0, Relaxed);
        }
        // Release: nothing depends on it but keeps the count from moving before our loads.
        bell.waiters.fetch_sub(1, Release);
        if let Check::Done(r) = result {
            return r;
        }
        if let Check::Done(r) = check() {
            return r;
        }
        if let Check::Done(r) = on_slice() {
            return r;
        }
    }
}
