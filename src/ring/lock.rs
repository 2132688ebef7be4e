//! The lock held while a process opens, closes or changes the membership of a ring.
//!
//! A ring in a segment is locked with semaphore 0 of its semaphore set (see `tokens`): the kernel
//! releases it when its holder dies, in any PID namespace, so a crash never leaves a ring locked
//! and a live holder is never robbed. A ring on the heap has all its users in this process and
//! uses the lock word in its control block (a holder recognised by pid and start time).
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
    use crate::ring::tokens::{Tokens, LOCK_SEM};
    use crate::sys::proc::{self, ProcessId};
    use crate::sys::sem;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
    use std::time::{Duration, Instant};

    /// Threads of this process holding or trying to take a ring lock, whatever ring it belongs to.
    /// A lock naming our pid while only the caller is counted was left by a dead process whose pid
    /// we now have. Counted before the CAS, so a thread that just took a lock is always seen.
    static HELD_HERE: AtomicUsize = AtomicUsize::new(0);

    /// A held ring lock; released on drop.
    pub(crate) enum RingLock<'a> {
        /// The lock word of a heap ring, holding our pid.
        Word { word: &'a LockWord, me: u32 },
        /// Semaphore `LOCK_SEM` of a segment ring's set.
        Kernel(sem::SemId),
    }

    impl<'a> RingLock<'a> {
        /// Takes the ring's lock, waiting until `deadline`. `Error::InUse` if it is still held
        /// then; for a segment ring whose semaphore set was removed (the ring was removed),
        /// the `Error::Io` of `semop` (`EIDRM`/`EINVAL`).
        pub(crate) fn acquire(word: &'a LockWord, tokens: Tokens, deadline: Instant) -> Result<Self, Error> {
            match tokens {
                Tokens::Local => Self::acquire_word(word, deadline),
                Tokens::Kernel(set) => match sem::lock(set, LOCK_SEM, deadline) {
                    Ok(true) => {
                        // Acquire: with the kernel's serialisation of the semaphore, what the last
                        // holder did before its release fence is visible to us.
                        std::sync::atomic::fence(Acquire);
                        Ok(RingLock::Kernel(set))
                    }
                    Ok(false) => Err(Error::InUse("the ring's lock is held by another process".into())),
                    Err(e) => Err(crate::transport::sysv::io_err("semtimedop (the ring's lock)")(e)),
                },
            }
        }

        fn acquire_word(word: &'a LockWord, deadline: Instant) -> Result<Self, Error> {
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
            RingLock::Word { word, me: me.pid }
        }
    }

    impl Drop for RingLock<'_> {
        fn drop(&mut self) {
            match *self {
                RingLock::Word { word, me } => {
                    // Relaxed: published by the Release on the pid below.
                    word.start_time.store(0, Relaxed);
                    // Release: our changes under the lock happen before the next holder's Acquire.
                    let _ = word.pid.compare_exchange(me, 0, Release, Relaxed);
                    HELD_HERE.fetch_sub(1, AcqRel);
                }
                // The semaphore operations order our changes under the lock before the next
                // holder's (the kernel serialises them under the set's lock). A set removed
                // meanwhile has no lock left to release.
                RingLock::Kernel(set) => {
                    // Release: pairs with the next holder's Acquire fence.
                    std::sync::atomic::fence(Release);
                    let _ = sem::unlock(set, LOCK_SEM);
                }
            }
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
    pub(crate) fn acquire(
        word: &'a LockWord,
        _tokens: crate::ring::tokens::Tokens,
        _deadline: std::time::Instant,
    ) -> Result<Self, crate::Error> {
        Ok(RingLock {
            _held: word.held.lock().unwrap(),
        })
    }
}
