//! Waiting: spin briefly, yield, then park on a futex "doorbell" in shared memory.
//!
//! A [`Doorbell`] is a futex word plus a mask of sleepers. The side that makes progress (publishes
//! a message, frees a slot, closes) calls [`Doorbell::ring`], which costs one fence and one load
//! while nobody sleeps: no syscall on the fast path.
//!
//! No lost wakeup (a Dekker pattern): the sleeper sets its bit in `waiters`, fences, reads the
//! word, re-checks its condition, then sleeps only while the word is unchanged. The ringer
//! publishes, fences, then reads `waiters`. The two barriers forbid both sides missing each other:
//! either the sleeper's re-check sees the publication, or the ringer sees the waiter and bumps the
//! word (so a sleep that has not started yet returns at once, and one that has is woken).
//!
//! `waiters` has one bit per end that may sleep on the doorbell (an SPSC role, an MPMC member
//! record), not a count: setting and clearing a bit is idempotent, so a process killed anywhere in
//! [`wait_until`] leaves at worst its own bit set, and whoever finds it dead (or its end closed)
//! clears exactly that bit ([`Doorbell::forget_waiters`], [`Doorbell::retain_waiters`]). A count
//! could not be repaired exactly: a process killed between counting itself and recording that it
//! did would leave the count too high for the ring's life, and every later publish would make a
//! futex syscall for a sleeper that no longer exists.
//!
//! The barriers are asymmetric where the kernel allows (`sys::membarrier`): a registered
//! publisher uses a compiler fence only, and the rare sleeper pays with a `membarrier` syscall
//! that fences every registered process. Under loom both sides use SeqCst fences.

use crate::sync::{fence, spin_loop, yield_now, AtomicU64, FutexWord};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

/// A futex word to sleep on, and who is asleep on it (or about to be): one bit per waiter.
#[repr(C)]
pub(crate) struct Doorbell {
    word: FutexWord,
    /// The bits of the ends asleep here or about to be ([`Tally::bit`]); 0 when nobody is.
    pub(crate) waiters: AtomicU64,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Doorbell {
            word: FutexWord::new(),
            waiters: AtomicU64::new(0),
        }
    }

    /// Clears the bits in `mask`: waiters that cannot be asleep, because their process died or
    /// their end closed (a dead member's bit stays set until then). Idempotent.
    ///
    /// Only for bits whose owner cannot be waiting: clearing a live sleeper's bit would let a
    /// publisher skip its wake (it would then sleep until its park slice ends).
    pub(crate) fn forget_waiters(&self, mask: u64) {
        // Relaxed: only the value matters, and the bits of live waiters are left alone (their own
        // set and clear, and the Dekker fences around them, are unaffected).
        self.waiters.fetch_and(!mask, Relaxed);
    }

    /// Keeps only the bits in `mask` (those of ends that may be waiting here: the live members of
    /// the role that sleeps on this doorbell) and clears the rest, as [`forget_waiters`] does.
    ///
    /// [`forget_waiters`]: Self::forget_waiters
    pub(crate) fn retain_waiters(&self, mask: u64) {
        // Relaxed: as in `forget_waiters`.
        self.waiters.fetch_and(mask, Relaxed);
    }

    /// The waiter bits now (inspection and tests; the handshake is [`has_waiters`]).
    ///
    /// [`has_waiters`]: Self::has_waiters
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn waiter_bits(&self) -> u64 {
        // Relaxed: a snapshot; nothing is read on the strength of it.
        self.waiters.load(Relaxed)
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
/// waiter bit, so the caller must not sleep long.
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
///
/// Built with `--cfg loom`, a wait spins and yields at most once each (a timed wait not at all),
/// and a timed wait times out where it would sleep: see `loom-tests/downstream/README.md`.
#[non_exhaustive]
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

    /// This strategy with `spins` rounds of `spin_loop()` before yielding.
    ///
    /// ```
    /// use shmpipe::WaitStrategy;
    /// use std::time::Duration;
    /// let w = WaitStrategy::default().spins(1000).yields(0).park_slice(Duration::from_millis(50));
    /// assert_eq!((w.spins, w.yields), (1000, 0));
    /// ```
    pub fn spins(mut self, spins: u32) -> Self {
        self.spins = spins;
        self
    }

    /// This strategy with `yields` rounds of `sched_yield()` before parking.
    pub fn yields(mut self, yields: u32) -> Self {
        self.yields = yields;
        self
    }

    /// This strategy with parks of at most `park_slice` each (how often a blocked side
    /// re-checks its peer's liveness).
    pub fn park_slice(mut self, park_slice: Duration) -> Self {
        self.park_slice = park_slice;
        self
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

    /// What a wait in `role` (a sender's for room, a receiver's for a message) adds to, with the
    /// waiter's `bit`.
    pub(crate) fn tally(&self, role: super::Role, bit: u64) -> Tally<'_> {
        Tally {
            waits: match role {
                super::Role::Sender => &self.full_waits,
                super::Role::Receiver => &self.empty_waits,
            },
            parks: &self.parks,
            bit,
        }
    }
}

/// Which counters a wait adds to: the side's wait count and the shared park count.
pub(crate) struct Tally<'a> {
    pub(crate) waits: &'a AtomicU64,
    pub(crate) parks: &'a AtomicU64,
    /// This waiter's own bit in the doorbell's `waiters` (one bit set): its SPSC role's, or its
    /// MPMC member record's. No other end waiting on the same doorbell uses it, so it is set
    /// while this end may sleep and cleared when it stops, and if its process is killed in
    /// between, whoever finds it dead clears it.
    pub(crate) bit: u64,
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
    debug_assert!(tally.bit.is_power_of_two(), "one waiter bit: {:#x}", tally.bit);
    // Relaxed (here and for `parks`): statistics only; nothing is ordered by them.
    tally.waits.fetch_add(1, Relaxed);
    // Under loom a round of either is a loom yield and a re-check: branch points that add no
    // behaviour a park does not have, and the default 128 + 8 exceed loom's branch limit in any
    // model. An untimed wait gets at most one round of each there. A timed one gets none: its
    // one modelled park (a yield, see `deadline_passed`) is then the only turn it gives the other
    // threads before it may time out; with more, a model could reach the timeout only by
    // preempting the peer once per yield, beyond the small preemption bounds models run at.
    let (spins, yields) = if cfg!(loom) {
        match deadline {
            Some(_) => (0, 0),
            None => (strategy.spins.min(1), strategy.yields.min(1)),
        }
    } else {
        (strategy.spins, strategy.yields)
    };
    for _ in 0..spins {
        if let Check::Done(r) = check() {
            return r;
        }
        spin_loop();
    }
    for _ in 0..yields {
        if let Check::Done(r) = check() {
            return r;
        }
        yield_now();
    }
    // Whether this wait has parked with its deadline (under loom, where that only yields).
    let mut parked = false;
    loop {
        let now = Instant::now();
        if deadline_passed(deadline, now, parked) {
            return match check() {
                Check::Done(r) => r,
                Check::NotYet => Err(timeout()),
            };
        }
        // Relaxed: the barrier right after orders setting the bit before the re-check (StoreLoad).
        bell.waiters.fetch_or(tally.bit, Relaxed);
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
            parked = true;
        }
        // Release: nothing depends on it but keeps the bit from clearing before our loads.
        bell.waiters.fetch_and(!tally.bit, Release);
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

/// An async wait's state between polls of [`poll_wait`]: the waiter bit it set and its
/// registration with the waiter service. Dropping it (the wait is over, or its future was
/// dropped) deregisters, synchronously, then clears the bit, so a cancelled wait leaves neither
/// behind.
#[cfg(all(feature = "tokio", not(loom)))]
pub(crate) struct Parked<'a> {
    bell: &'a Doorbell,
    bit: u64,
    /// Whether `bit` is set by this wait.
    bit_set: bool,
    reg: Option<crate::aio::waiter::Registration>,
    /// Polls left that hand the thread back to the executor (and re-check) before the first
    /// registration: [`WaitStrategy::yields`] of the waiting end.
    yields: u32,
    /// Whether this wait has been counted in the ring's wait statistics.
    counted: bool,
}

#[cfg(all(feature = "tokio", not(loom)))]
impl<'a> Parked<'a> {
    /// A wait on `bell` with waiter bit `bit` (one bit set: see [`Tally::bit`]); nothing is set
    /// or registered until [`poll_wait`] parks.
    pub(crate) fn new(bell: &'a Doorbell, bit: u64) -> Self {
        debug_assert!(bit.is_power_of_two(), "one waiter bit: {bit:#x}");
        Parked {
            bell,
            bit,
            bit_set: false,
            reg: None,
            yields: 0,
            counted: false,
        }
    }

    /// This wait, first yielding to the executor `wait.yields` times (re-checking at each poll)
    /// before it sets its bit and registers: the async form of a blocking wait's yields (its spins
    /// are not taken: an executor thread is not ours to spin on).
    pub(crate) fn yielding(mut self, wait: &WaitStrategy) -> Self {
        self.yields = wait.yields;
        self
    }

    /// Ends the wait: deregisters, then clears the bit (as `wait_until` does after each park).
    /// Returns whether the wait was parked (its bit set, registered): a ring since then may have
    /// spent its wake on it (see `ring::mpmc::aio`, which passes such a wake on). Idempotent.
    pub(crate) fn finish(&mut self) -> bool {
        // Deregistration first: its `Drop` returns only when the waiter thread no longer uses the
        // word's address.
        self.reg = None;
        if self.bit_set {
            // Release: as in `wait_until`, keeps the clear after our loads.
            self.bell.waiters.fetch_and(!self.bit, Release);
            self.bit_set = false;
            return true;
        }
        false
    }
}

#[cfg(all(feature = "tokio", not(loom)))]
impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The non-blocking form of [`wait_until`]: one poll of an async wait on `parked`'s doorbell.
///
/// The same handshake minus the sleep: set the waiter bit, the sleeper's barrier, load the word
/// (Acquire), re-check; and instead of `futex_wait`, register (word, value seen, `cx`'s waker)
/// with the waiter service (`aio::waiter`), which wakes the task when the word changes (a ring)
/// or a park slice ends. A later poll finds the registration fired (or still pending: a spurious
/// poll, which re-checks and keeps it), re-checks, and after a slice that found nothing asks
/// `on_slice` (a dead peer), exactly as `wait_until` does after each park. The bit stays set while
/// registered and is cleared when the wait ends (`Ready`, or `parked` dropped).
///
/// No spinning: an executor thread is not ours to spin on. A wait made [`Parked::yielding`]
/// first returns `Pending` with its task woken at once that many times (the executor runs others,
/// or polls it straight back), re-checking at each poll, before it registers. `check` must read
/// the shared state afresh with at least Acquire loads.
#[cfg(all(feature = "tokio", not(loom)))]
pub(crate) fn poll_wait<T, E>(
    parked: &mut Parked<'_>,
    tally: Tally<'_>,
    cx: &mut std::task::Context<'_>,
    mut check: impl FnMut() -> Check<T, E>,
    mut on_slice: impl FnMut() -> Check<T, E>,
) -> std::task::Poll<Result<T, E>> {
    use crate::aio::waiter;
    use std::task::Poll;
    if let Some(reg) = &parked.reg {
        let pending = reg.pending(cx.waker());
        if let Check::Done(r) = check() {
            parked.finish();
            return Poll::Ready(r);
        }
        if pending {
            return Poll::Pending;
        }
        // Fired: the word changed or a slice ended. Nothing yet: is the peer still there?
        parked.reg = None;
        if let Check::Done(r) = on_slice() {
            parked.finish();
            return Poll::Ready(r);
        }
    } else if !parked.bit_set {
        if !parked.counted {
            parked.counted = true;
            // Relaxed: a statistic.
            tally.waits.fetch_add(1, Relaxed);
        } else if let Check::Done(r) = check() {
            // A poll after a yield: the caller's own try is not in front of this one.
            return Poll::Ready(r);
        }
        if parked.yields > 0 {
            // Let the executor run other tasks (or come straight back): cheaper than registering
            // when the peer is about to act, as a blocking wait's `sched_yield` is.
            parked.yields -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
    }
    // Relaxed: the barrier right after orders setting the bit before the re-check (StoreLoad).
    parked.bell.waiters.fetch_or(parked.bit, Relaxed);
    parked.bit_set = true;
    let fenced = sleeper_barrier();
    // Acquire: read the word before re-checking, so a ring after the re-check changes it and the
    // registration below fires at once.
    let seen = parked.bell.word.load(Acquire);
    if let Check::Done(r) = check() {
        parked.finish();
        return Poll::Ready(r);
    }
    // Without the heavy barrier a light publisher may miss our bit: re-check every millisecond.
    let slice = if fenced { waiter::SLICE } else { waiter::POLL };
    // Relaxed: a statistic.
    tally.parks.fetch_add(1, Relaxed);
    let (word, bit) = (
        parked.bell.word.as_atomic(),
        Some((&parked.bell.waiters, parked.bit)),
    );
    // SAFETY: the word and the mask are in the doorbell `parked` borrows, which outlives the
    // registration: `parked` owns it and drops it (synchronously deregistering) first.
    parked.reg = Some(unsafe { waiter::register(word, seen, bit, cx.waker(), slice) });
    Poll::Pending
}

/// Whether a wait's deadline has passed.
///
/// Loom has no clock (`Instant::now()` in a model is the machine's real time, which differs from
/// one run of a model to the next), so under loom no clock is read: a deadline passes once the
/// waiter has parked on it, and a timed park does not sleep, it yields (`FutexWord::wait`). A
/// timed wait in a model is thus a poll that gives the other threads one turn: it returns
/// whatever its last re-check finds, `Timeout` if that is nothing yet. Every run of a model takes
/// the same path, and loom's choice of interleavings decides whether the peer acted in time, so
/// both outcomes are explored. A deadline too far to represent (`None`) is an untimed wait, as
/// outside loom.
#[inline]
fn deadline_passed(deadline: Option<Instant>, now: Instant, parked: bool) -> bool {
    if cfg!(loom) {
        deadline.is_some() && parked
    } else {
        deadline.is_some_and(|d| now >= d)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;

    const A: u64 = 1 << 0;
    const B: u64 = 1 << 5;
    const DEAD: u64 = 1 << 63;

    fn counters() -> WaitCounters {
        WaitCounters::new()
    }

    #[test]
    fn waiter_bits_are_idempotent_and_independent() {
        let bell = Doorbell::new();
        assert!(!bell.has_waiters());
        bell.waiters.fetch_or(A, Relaxed);
        bell.waiters.fetch_or(A, Relaxed);
        bell.waiters.fetch_or(B, Relaxed);
        assert_eq!(bell.waiter_bits(), A | B);
        // Forgetting a bit twice (two survivors finding the same dead waiter) is the same as once,
        // and never touches another waiter's bit: a count could be decremented twice.
        bell.forget_waiters(A);
        bell.forget_waiters(A);
        assert_eq!(bell.waiter_bits(), B);
        assert!(bell.has_waiters());
        // Forgetting a bit that is not set changes nothing.
        bell.forget_waiters(DEAD);
        assert_eq!(bell.waiter_bits(), B);
        bell.retain_waiters(A | B);
        assert_eq!(bell.waiter_bits(), B);
        bell.retain_waiters(A);
        assert_eq!(bell.waiter_bits(), 0);
        assert!(!bell.has_waiters());
    }

    #[test]
    fn a_waiter_sets_its_bit_for_the_recheck_and_clears_only_its_own() {
        let bell = Doorbell::new();
        let c = counters();
        // A waiter killed while parked left its bit: ringing makes a futex call for it.
        bell.waiters.fetch_or(DEAD, Relaxed);
        bell.ring(1, &c.wakes);
        assert_eq!(c.wakes.load(Relaxed), 1);
        // A live waiter times out. At its re-check (the look after the barrier) its own bit is
        // set, so a publisher in between would have seen it; on return only its bit is cleared.
        let seen_at_checks = Cell::new(Vec::new());
        let strategy = WaitStrategy {
            park_slice: Duration::from_millis(2),
            ..WaitStrategy::park_only()
        };
        let r: Result<(), &str> = wait_until(
            &bell,
            Tally {
                waits: &c.empty_waits,
                parks: &c.parks,
                bit: B,
            },
            &strategy,
            Some(Instant::now() + Duration::from_millis(20)),
            || {
                let mut v = seen_at_checks.take();
                v.push(bell.waiter_bits());
                seen_at_checks.set(v);
                Check::NotYet
            },
            || Check::NotYet,
            || "timeout",
        );
        assert_eq!(r, Err("timeout"));
        assert!(c.parks.load(Relaxed) >= 1, "it parked");
        let seen = seen_at_checks.take();
        assert!(
            seen.contains(&(B | DEAD)),
            "a re-check ran with the bit set: {seen:x?}"
        );
        assert!(
            seen.iter().all(|&w| w & DEAD != 0),
            "the other bit is never touched"
        );
        assert_eq!(
            bell.waiter_bits(),
            DEAD,
            "its own bit is cleared, the dead one's kept"
        );
        // Whoever finds the dead waiter clears its bit: ringing is free again.
        bell.forget_waiters(DEAD);
        bell.ring(1, &c.wakes);
        assert_eq!(c.wakes.load(Relaxed), 1);
        assert!(!bell.has_waiters());
    }

    #[test]
    fn a_waiter_killed_at_any_point_leaves_at_most_its_own_bit() {
        // A process can die with its bit set (between setting and clearing it) or clear (before
        // or after): in every case forgetting that one bit restores exactly the other waiters'
        // word. A count had a third state, counted but not yet marked (or unmarked but not yet
        // uncounted), from which nobody could tell that the count was one too high.
        for other in [0, A] {
            for died_with_bit_set in [false, true] {
                let bell = Doorbell::new();
                bell.waiters.fetch_or(other, Relaxed);
                if died_with_bit_set {
                    bell.waiters.fetch_or(B, Relaxed);
                }
                bell.forget_waiters(B);
                assert_eq!(bell.waiter_bits(), other);
                assert_eq!(bell.has_waiters(), other != 0);
            }
        }
    }
}
