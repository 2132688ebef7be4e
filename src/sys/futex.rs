//! Shared (not `FUTEX_PRIVATE_FLAG`) futex wait and wake on a 32-bit word that may live in a
//! SysV segment mapped at different addresses in different processes: a shared futex is keyed by
//! the backing page and offset, not by the virtual address.
//!
//! Waits take an absolute `CLOCK_MONOTONIC` deadline (`FUTEX_WAIT_BITSET`), so retrying after
//! `EINTR` never stretches a timeout.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

/// Why a [`wait`] returned. Every outcome means "re-check the condition".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken by [`wake`], or spuriously.
    Woken,
    /// The word no longer held the expected value when the kernel looked.
    Changed,
    /// Interrupted by a signal handler.
    Interrupted,
    /// The deadline passed.
    TimedOut,
}

fn monotonic_now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

/// `deadline` as an absolute `CLOCK_MONOTONIC` time. `Instant` reads the same clock, so the only
/// error is the few nanoseconds between the two clock reads.
fn to_timespec(deadline: Instant) -> libc::timespec {
    let left = deadline.saturating_duration_since(Instant::now());
    let now = monotonic_now();
    let mut sec = now
        .tv_sec
        .saturating_add(left.as_secs().min(i64::MAX as u64 / 2) as libc::time_t);
    let mut nsec = now.tv_nsec + left.subsec_nanos() as libc::c_long;
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec = sec.saturating_add(1);
    }
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// Sleeps while `*word == expected`, until woken or until `deadline`.
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Wake {
    let ts = deadline.map(to_timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, 4-byte aligned u32 for the whole call (we hold a reference);
    // `ts_ptr` is null or points at a live timespec. FUTEX_WAIT_BITSET with a full bitset is
    // FUTEX_WAIT with an absolute CLOCK_MONOTONIC timeout.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT_BITSET,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        )
    };
    if ret == 0 {
        return Wake::Woken;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Wake::Changed,
        Some(libc::EINTR) => Wake::Interrupted,
        Some(libc::ETIMEDOUT) => Wake::TimedOut,
        // EFAULT/EINVAL cannot happen for a valid reference; treat anything else as spurious so
        // the caller re-checks its condition and its deadline.
        _ => Wake::Woken,
    }
}

/// Wakes up to `count` waiters on `word`. Returns how many were woken.
pub(crate) fn wake(word: &AtomicU32, count: u32) -> usize {
    let count = count.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: `word` is a valid aligned u32; FUTEX_WAKE does not write to it.
    let ret = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, count) };
    ret.max(0) as usize
}

/// One entry of a `futex_waitv` call (the kernel's `struct futex_waitv`).
#[cfg(feature = "tokio")]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Waitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `FUTEX2_SIZE_U32`: the word is 32 bits.
#[cfg(feature = "tokio")]
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `FUTEX2_PRIVATE`: a process-private futex (keyed by address, not by page).
#[cfg(feature = "tokio")]
const FUTEX2_PRIVATE: u32 = 128;
/// `__NR_futex_waitv` on x86_64 and aarch64 alike (generic syscall table), Linux 5.16.
#[cfg(feature = "tokio")]
const SYS_FUTEX_WAITV: libc::c_long = 449;

#[cfg(feature = "tokio")]
impl Waitv {
    /// Waits while `word == expected`; `private` for a word only this process uses, shared
    /// otherwise (one in a SysV segment that other processes wake).
    pub(crate) fn new(word: &AtomicU32, expected: u32, private: bool) -> Self {
        Waitv {
            val: expected as u64,
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32 | if private { FUTEX2_PRIVATE } else { 0 },
            reserved: 0,
        }
    }
}

/// Why a [`waitv`] returned.
#[cfg(feature = "tokio")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitvOutcome {
    /// Woken on the word at this index (or spuriously).
    Woken(usize),
    /// A word no longer held its expected value when the kernel looked.
    Changed,
    /// Interrupted by a signal handler.
    Interrupted,
    /// The deadline passed.
    TimedOut,
    /// The kernel has no `futex_waitv` (before Linux 5.16, or filtered by seccomp).
    Unsupported,
}

/// `futex_waitv`: sleeps while every word equals its expected value, until one is woken, or until
/// `deadline` (absolute, `CLOCK_MONOTONIC`).
///
/// # Safety
/// Every entry's word must stay mapped (and hold a `u32`) for the whole call.
#[cfg(feature = "tokio")]
pub(crate) unsafe fn waitv(waiters: &[Waitv], deadline: Option<Instant>) -> WaitvOutcome {
    let ts = deadline.map(to_timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `waiters` is a live array of `waiters.len()` kernel-layout entries whose words the
    // caller keeps mapped for the call; `ts_ptr` is null or a live absolute CLOCK_MONOTONIC time.
    let ret = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0 as libc::c_uint,
            ts_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
    if ret >= 0 {
        return WaitvOutcome::Woken(ret as usize);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => WaitvOutcome::Changed,
        Some(libc::EINTR) => WaitvOutcome::Interrupted,
        Some(libc::ETIMEDOUT) => WaitvOutcome::TimedOut,
        Some(libc::ENOSYS) | Some(libc::EPERM) => WaitvOutcome::Unsupported,
        // EFAULT/EINVAL cannot happen for live words and a valid array: treat as spurious, so the
        // caller re-checks every word.
        _ => WaitvOutcome::Woken(0),
    }
}

/// Wakes up to `count` waiters on a process-private `word` (one a [`waitv`] entry made with
/// `private`).
#[cfg(feature = "tokio")]
pub(crate) fn wake_private(word: &AtomicU32, count: u32) {
    let count = count.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: `word` is a valid aligned u32; FUTEX_WAKE does not write to it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn wait_on_a_changed_word_returns_at_once() {
        let w = AtomicU32::new(1);
        assert_eq!(wait(&w, 0, None), Wake::Changed);
    }

    #[test]
    fn wait_honours_an_absolute_deadline() {
        let w = AtomicU32::new(0);
        let start = Instant::now();
        let deadline = start + Duration::from_millis(30);
        assert_eq!(wait(&w, 0, Some(deadline)), Wake::TimedOut);
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn wake_reaches_a_sleeping_waiter() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait(&w2, 0, Some(Instant::now() + Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake(&w, 1);
        t.join().unwrap();
    }
}
