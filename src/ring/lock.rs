//! The lock word in a ring's control block, held while a process opens, closes or changes the
//! membership of the ring. A holder that died inside it (SIGKILL mid-open) is recognised by pid
//! and start time, and the lock taken over, so a crash never leaves a ring locked.
//!
//! Only slow paths take it (open, close, reaping dead members); the data path never does.

use crate::sync::{AtomicU32, AtomicU64};

/// The holder's pid (0: free) and its start time (0: not written yet), so a holder that died and
/// whose pid was reused is still recognised as gone.
#[repr(C)]
pub(crate) struct LockWord {
    pub(crate) pid: AtomicU32,
    pub(crate) start_time: AtomicU64,
    /// Under loom the lock is this mutex (see `RingLock` below); the words above stay unused.
    #[cfg(loom)]
    held: loom::sync::Mutex<()>,
}

impl LockWord {
    pub(crate) fn new() -> Self {
        LockWord {
            pid: AtomicU32::new(0),
            start_time: AtomicU64::new(0),
            #[cfg(loom)]
            held: loom::sync::Mutex::new(()),
        }
    }
}

#[cfg(not(loom))]
pub(crate) use real::RingLock;

#[cfg(not(loom))]
mod real {
    use super::LockWord;
    use crate::error::Error;
    use crate::sys::proc::{self, ProcessId};
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
    use std::time::{Duration, Instant};

    /// Threads of this process holding or trying to take a ring lock, whatever ring it belongs to.
    /// A lock naming our pid while only the caller is counted was left by a dead process whose pid
    /// we now have. Counted before the CAS, so a thread that just took a lock is always seen.
    static HELD_HERE: AtomicUsize = AtomicUsize::new(0);

    /// A held ring lock; released on drop.
    pub(crate) struct RingLock<'a> {
        word: &'a LockWord,
        me: u32,
    }

    impl<'a> RingLock<'a> {
        pub(crate) fn acquire(word: &'a LockWord, deadline: Instant) -> Result<Self, Error> {
            let me = proc::current();
            // AcqRel: ordered with the counts of other threads of ours (see `gone` below).
            HELD_HERE.fetch_add(1, AcqRel);
            loop {
                // Acquire: what the previous holder did under the lock is visible to us.
                match word.pid.compare_exchange(0, me.pid, Acquire, Relaxed) {
                    Ok(_) => return Ok(Self::held(word, me)),
                    Err(holder) => {
                        // Acquire: reading a holder's pid (a CAS continuing the last release's
                        // release sequence) shows its start time or the 0 the last release left,
                        // never an older holder's.
                        let start_time = word.start_time.load(Acquire);
                        let gone = if holder == me.pid {
                            // Another thread of ours may hold it; a dead namesake cannot.
                            (start_time != 0 && start_time != me.start_time)
                                || (start_time == 0 && HELD_HERE.load(Acquire) == 1)
                        } else {
                            !proc::is_alive(ProcessId {
                                pid: holder,
                                start_time,
                            })
                        };
                        if gone
                            && word
                                .pid
                                .compare_exchange(holder, me.pid, Acquire, Relaxed)
                                .is_ok()
                        {
                            return Ok(Self::held(word, me));
                        }
                        if Instant::now() >= deadline {
                            HELD_HERE.fetch_sub(1, AcqRel);
                            return Err(Error::InUse(format!("the ring's lock is held by pid {holder}")));
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
        }

        fn held(word: &'a LockWord, me: ProcessId) -> Self {
            // Release: pairs with the Acquire load in `acquire` of whoever finds the lock held.
            word.start_time.store(me.start_time, Release);
            RingLock { word, me: me.pid }
        }
    }

    impl Drop for RingLock<'_> {
        fn drop(&mut self) {
            // Relaxed: published by the Release on the pid below.
            self.word.start_time.store(0, Relaxed);
            // Release: our changes under the lock happen before the next holder's Acquire.
            let _ = self.word.pid.compare_exchange(self.me, 0, Release, Relaxed);
            HELD_HERE.fetch_sub(1, AcqRel);
        }
    }
}

/// Under loom: a plain mutex (every modelled thread is one live process, so there is no dead
/// holder to take over from). Not a spin lock: loom does not schedule fairly, and with three or
/// more threads two that spin and yield can be run in turn for ever while the holder never runs
/// again, which loom reports as "exceeded maximum number of branches". A waiter blocked on a
/// mutex is not runnable, so the holder always gets to release it.
#[cfg(loom)]
pub(crate) struct RingLock<'a> {
    _held: loom::sync::MutexGuard<'a, ()>,
}

#[cfg(loom)]
impl<'a> RingLock<'a> {
    pub(crate) fn acquire(word: &'a LockWord, _deadline: std::time::Instant) -> Result<Self, crate::Error> {
        Ok(RingLock {
            _held: word.held.lock().unwrap(),
        })
    }
}
