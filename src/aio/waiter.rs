//! The waiter service: a few process-wide threads that sleep on many futex words at once
//! (`futex_waitv`) for the async ends, and wake their tasks' `Waker`s.
//!
//! Each thread (a *shard*) serves at most [`PER_THREAD`] registrations: `futex_waitv` takes at
//! most 128 words, and index 0 is the shard's own process-private control word, which a
//! registration or deregistration bumps and wakes so the thread rebuilds its array. Threads are
//! started on demand and never stopped (an idle one sleeps on its control word only); a process
//! waiting on `n` rings at once has `ceil(n / 127)` of them at its peak.
//!
//! A registration is (word, expected value, `Waker`). The thread wakes the `Waker` and drops the
//! entry when the word no longer holds the value (the ring's doorbell was rung), and also when the
//! entry has been registered for a park slice ([`SLICE`], 100 ms, as the blocking ends' default
//! `WaitStrategy::park_slice`): the woken task then re-checks its peer's liveness, which bounds
//! how long a peer's SIGKILL takes to notice exactly as for a blocking end.
//!
//! **Lifetime of the words.** The words live in a SysV segment that the ring end owning the
//! registration keeps attached; the thread copies their addresses into its `futex_waitv` array.
//! Deregistration is synchronous: [`Registration`]'s `Drop` does not return while the thread may
//! still pass the word's address to the kernel. Every array the thread builds has a sequence
//! number, and each entry records the last one it was copied into (`armed`); the thread publishes
//! `finished` (under the shard's lock) once the `futex_waitv` call with that array has returned.
//! A drop removes its entry under the lock (so no later array contains it) and, if an array that
//! is or may still be in use contains it (`armed > finished`), bumps and wakes the control word
//! and waits on a condition variable until `finished >= armed`. The thread reads a registered
//! word itself only under the lock while the entry is present, when its end is alive too. The
//! cost is a round trip to the thread when a still-armed wait is cancelled (a dropped future), a
//! few microseconds; the alternative, an `Arc` of the ring in each entry, would let the waiter
//! thread drop the last reference to a ring and detach (or remove) its segment late, after its
//! ends have all gone, which `ipcs` and the ring's open/close protocol would notice.
//!
//! The waiter thread never waits for itself: it sets `finished` to the array just used before it
//! wakes (and drops) any `Waker`, so a future dropped on the waiter thread (a `Waker` that owned
//! its task) finds every entry of the shard with `armed <= finished` and does not block.
//!
//! **Without `futex_waitv`** (Linux before 5.16, or a seccomp filter that refuses it) a shard
//! falls back to polling: it sleeps on its control word for at most [`POLL`] (1 ms) at a time and
//! compares every registered word with its expected value after each sleep. Correct, with up to a
//! millisecond of added latency and a thousand wake-ups a second while anything is registered.
//!
//! **fork()**: the threads do not exist in a forked child, and a lock one of them (or another
//! thread) held at the fork stays held there for ever. The service remembers the fork
//! generation it started them in (`sys::fork`, not the pid, which a child in a PID namespace of
//! its own may share with its parent) and is found without a lock; a child that registers
//! installs a service and threads of its own (the inherited ones are leaked, never touched), and
//! an inherited registration is treated as fired and dropped without touching its shard.

use crate::sys::futex::{self, Waitv, WaitvOutcome};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Registrations per waiter thread: `futex_waitv` takes 128 words, one is the control word.
pub(crate) const PER_THREAD: usize = 127;
/// How long a registration waits before its task is woken to re-check its peer's liveness.
pub(crate) const SLICE: Duration = Duration::from_millis(100);
/// The polling interval without `futex_waitv`, and the slice of a registration made when the
/// sleeper's barrier failed (a publisher may have missed its waiter bit).
pub(crate) const POLL: Duration = Duration::from_millis(1);

struct Entry {
    id: u64,
    /// The word's address: valid while the entry is in `entries` (see the module docs).
    word: *const AtomicU32,
    expected: u32,
    waker: Waker,
    /// When the task is woken anyway (the end of its park slice).
    deadline: Instant,
    /// The sequence number of the last array this entry was copied into; 0 for none.
    armed: u64,
    /// The waiter's bit in its ring's waiter mask (and the mask's address, valid as `word` is),
    /// cleared when the entry fires: see [`register`].
    bit: Option<(*const AtomicU64, u64)>,
}

struct State {
    entries: Vec<Entry>,
    /// The sequence number of the last array built.
    built: u64,
    /// Every array up to this sequence number is no longer in use (its `futex_waitv` returned).
    finished: u64,
    next_id: u64,
}

// SAFETY: `Entry::word` and `Entry::bit`'s mask are only addresses: they are dereferenced by the
// waiter thread only under the shard's lock while the entry is present, which the registering end
// guarantees is mapped (its `Registration` removes the entry, under the lock, before it goes).
unsafe impl Send for State {}

struct Shard {
    /// The control word: bumped and woken (private futex) whenever `entries` changes.
    ctl: AtomicU32,
    state: Mutex<State>,
    /// Signalled when `finished` moves on.
    finished: Condvar,
}

impl Shard {
    /// Starts a shard's thread; `waitv` false forces the polling fallback (tests).
    fn start(waitv: bool) -> Arc<Shard> {
        let shard = Arc::new(Shard {
            ctl: AtomicU32::new(0),
            state: Mutex::new(State {
                entries: Vec::with_capacity(PER_THREAD),
                built: 0,
                finished: 0,
                next_id: 1,
            }),
            finished: Condvar::new(),
        });
        let s = Arc::clone(&shard);
        std::thread::Builder::new()
            .name("shmpipe-waiter".into())
            .spawn(move || s.run(waitv))
            .expect("shmpipe: cannot start the async waiter thread");
        shard
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a Waker's clone panicking) leaves the state consistent:
        // every mutation is a single push or removal.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the thread rebuild its array: bump the control word and wake it.
    fn poke(&self) {
        // Release: pairs with the thread's Acquire load before it builds an array; the change to
        // `entries` (made under the lock) is what matters, the value only has to differ.
        self.ctl.fetch_add(1, Release);
        futex::wake_private(&self.ctl, 1);
    }

    fn run(&self, mut supported: bool) {
        let mut waitv: Vec<Waitv> = Vec::with_capacity(PER_THREAD + 1);
        let mut fire: Vec<Waker> = Vec::new();
        loop {
            // Acquire: read before the array is built, so a change made after it (which bumps the
            // word) makes the wait below return at once.
            let ctl = self.ctl.load(Acquire);
            let (seq, deadline) = {
                let mut st = self.lock();
                st.built += 1;
                let seq = st.built;
                waitv.clear();
                waitv.push(Waitv::new(&self.ctl, ctl, true));
                let mut deadline: Option<Instant> = None;
                for e in st.entries.iter_mut() {
                    e.armed = seq;
                    // SAFETY: the entry is present, so its word is mapped (module docs).
                    waitv.push(Waitv::new(unsafe { &*e.word }, e.expected, false));
                    deadline = Some(deadline.map_or(e.deadline, |d| d.min(e.deadline)));
                }
                (seq, deadline)
            };
            if supported {
                // SAFETY: every word in `waitv` stays mapped until `finished` reaches `seq`
                // below: a registration copied into this array is not dropped before then.
                match unsafe { futex::waitv(&waitv, deadline) } {
                    WaitvOutcome::Unsupported => supported = false,
                    WaitvOutcome::Woken(_)
                    | WaitvOutcome::Changed
                    | WaitvOutcome::Interrupted
                    | WaitvOutcome::TimedOut => {}
                }
            }
            if !supported {
                let poll = Instant::now() + POLL;
                futex::wait(&self.ctl, ctl, Some(deadline.map_or(poll, |d| d.min(poll))));
            }
            let now = Instant::now();
            {
                let mut st = self.lock();
                st.finished = seq;
                self.finished.notify_all();
                // Fire the entries whose word changed or whose slice is over, whatever woke us:
                // a wake (`Woken(i)`) says which word only for one of possibly several.
                st.entries.retain_mut(|e| {
                    // Acquire: the task re-checks the ring itself; this only decides to wake it.
                    // SAFETY: the entry is present, so its word is mapped (module docs).
                    let changed = unsafe { &*e.word }.load(Acquire) != e.expected;
                    if changed || now >= e.deadline {
                        if let Some((mask, bit)) = e.bit {
                            // Release, as a blocking sleeper's clear after its wake: after our
                            // loads. The task re-checks after this and sets it again before it
                            // registers again (see `register`).
                            // SAFETY: the entry is present, so its ring is mapped (module docs).
                            unsafe { &*mask }.fetch_and(!bit, Release);
                        }
                        fire.push(e.waker.clone());
                        false
                    } else {
                        true
                    }
                });
            }
            for w in fire.drain(..) {
                w.wake();
            }
        }
    }
}

/// The service of one process: its shards.
struct Service {
    /// The fork generation (`sys::fork`) of the process that installed it.
    generation: u32,
    shards: Mutex<Vec<Arc<Shard>>>,
}

/// This process's service, a leaked `Box` (never freed). Read without a lock: a forked child
/// whose parent had another thread inside a lock (the service's or a shard's) at the fork would
/// block for ever on it, so a child never touches its parent's service: its first registration
/// installs a service of its own (the parent's is leaked, with its shards).
static SERVICE: AtomicPtr<Service> = AtomicPtr::new(std::ptr::null_mut());

/// The service of the process of fork generation `generation` (`sys::fork`, not a pid: a forked
/// child can have its parent's pid in a PID namespace of its own), installed if this is its
/// first registration.
fn service(generation: u32) -> &'static Service {
    loop {
        // Acquire: the service behind the pointer is initialised (pairs with the Release below).
        let cur = SERVICE.load(Acquire);
        // SAFETY: a non-null pointer is a leaked `Box<Service>` (below), never freed.
        if let Some(s) = unsafe { cur.as_ref() } {
            if s.generation == generation {
                return s;
            }
        }
        let new = Box::into_raw(Box::new(Service {
            generation,
            shards: Mutex::new(Vec::new()),
        }));
        // Release on success: publishes the initialised service; Acquire on failure, as above.
        match SERVICE.compare_exchange(cur, new, AcqRel, Acquire) {
            // SAFETY: `new` is a leaked `Box`, installed now and never freed.
            Ok(_) => return unsafe { &*new },
            // Another thread of this process installed one first: use that one.
            // SAFETY: `new` was never shared; freed once, here.
            Err(_) => drop(unsafe { Box::from_raw(new) }),
        }
    }
}

/// A registered wait; dropping it deregisters synchronously (see the module docs).
pub(crate) struct Registration {
    shard: Arc<Shard>,
    id: u64,
    /// The fork generation it was made in: another one means it was inherited.
    generation: u32,
}

/// Registers a wait on `word` while it holds `expected`: `waker` is woken once the word changes
/// or after `slice`, whichever is first, and the registration then ends by itself.
///
/// With `bit` = (mask, bit), the waiter thread clears `bit` in `mask` (the ring's waiter bits)
/// when it fires the entry, before it wakes the task, as a blocking sleeper clears its own bit
/// the moment its futex wait returns. Left to the task, the bit would stay set for two
/// hand-offs (this thread, then the executor's), and a publisher streaming meanwhile makes a
/// futex wake per message (measured: ~60 per park). The task re-checks once woken, and sets the
/// bit again before it registers again, so no ring is missed.
///
/// # Safety
/// `word` (and `bit`'s mask) must stay mapped until the returned registration is dropped.
pub(crate) unsafe fn register(
    word: &AtomicU32,
    expected: u32,
    bit: Option<(&AtomicU64, u64)>,
    waker: &Waker,
    slice: Duration,
) -> Registration {
    let generation = crate::sys::fork::arm();
    let shard = {
        let mut shards = service(generation)
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match shards.iter().find(|s| s.lock().entries.len() < PER_THREAD) {
            Some(s) => Arc::clone(s),
            None => {
                let s = Shard::start(true);
                shards.push(Arc::clone(&s));
                s
            }
        }
        // (The shards' lock is held until here, so two registrations cannot both take a shard's
        // last place.)
    };
    // SAFETY: the caller's promise.
    unsafe { add(shard, word, expected, bit, waker, slice) }
}

/// [`register`] on `shard`.
///
/// # Safety
/// As for [`register`].
unsafe fn add(
    shard: Arc<Shard>,
    word: &AtomicU32,
    expected: u32,
    bit: Option<(&AtomicU64, u64)>,
    waker: &Waker,
    slice: Duration,
) -> Registration {
    let id = {
        let mut st = shard.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.entries.push(Entry {
            id,
            word: word as *const AtomicU32,
            expected,
            waker: waker.clone(),
            deadline: Instant::now() + slice,
            armed: 0,
            bit: bit.map(|(mask, bit)| (mask as *const AtomicU64, bit)),
        });
        id
    };
    shard.poke();
    Registration {
        shard,
        id,
        generation: crate::sys::fork::arm(),
    }
}

impl Registration {
    /// Whether the wait is still registered (not yet woken); if so, its waker becomes `waker`.
    pub(crate) fn pending(&self, waker: &Waker) -> bool {
        if crate::sys::fork::generation() != self.generation {
            // Inherited across fork(): no thread serves it here (and its shard's lock may be
            // held for ever). Fired, as far as this process is concerned.
            return false;
        }
        let mut st = self.shard.lock();
        match st.entries.iter_mut().find(|e| e.id == self.id) {
            Some(e) => {
                e.waker.clone_from(waker);
                true
            }
            None => false,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if crate::sys::fork::generation() != self.generation {
            // Inherited across fork(): no thread uses it here.
            return;
        }
        let mut st = self.shard.lock();
        let Some(i) = st.entries.iter().position(|e| e.id == self.id) else {
            // Fired: the thread removed it after the wait that used it returned.
            return;
        };
        let armed = st.entries.swap_remove(i).armed;
        if armed > st.finished {
            self.shard.poke();
            while st.finished < armed {
                st = self.shard.finished.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aio::testing::{woken_within, Flag};
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;

    /// Both modes: a changed word wakes its task (with a futex wake in `futex_waitv` mode; with
    /// none at all when polling), a registration ends after its slice, and a dropped armed one
    /// returns only once the thread no longer waits with its address.
    fn exercise(waitv: bool) {
        let shard = Shard::start(waitv);
        let word = Box::new(AtomicU32::new(7));
        // The ring's waiter mask: our bit (4) and another waiter's (2).
        let mask = Box::new(AtomicU64::new(0b110));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        let bit = Some((&*mask, 0b100));
        // SAFETY: `word` and `mask` outlive the registration (dropped below, before them).
        let reg = unsafe { add(Arc::clone(&shard), &word, 7, bit, &waker, Duration::from_secs(60)) };
        std::thread::sleep(Duration::from_millis(20));
        assert!(reg.pending(&waker) && !flag.0.load(SeqCst));
        assert_eq!(
            mask.load(SeqCst),
            0b110,
            "the bit stays while the wait is registered"
        );
        word.store(8, SeqCst);
        if waitv {
            futex::wake(&word, 1);
        }
        assert!(
            woken_within(&flag, Duration::from_secs(5)),
            "a changed word did not wake"
        );
        assert!(!reg.pending(&waker), "a fired registration ends");
        assert_eq!(
            mask.load(SeqCst),
            0b010,
            "firing clears our bit, only ours, before the wake"
        );
        drop(reg);

        // The slice ends a registration whose word never changes.
        flag.0.store(false, SeqCst);
        // SAFETY: as above.
        let reg = unsafe {
            add(
                Arc::clone(&shard),
                &word,
                8,
                None,
                &waker,
                Duration::from_millis(30),
            )
        };
        assert!(
            woken_within(&flag, Duration::from_secs(5)),
            "the slice did not end"
        );
        drop(reg);

        // A drop of an armed registration (in the array the thread is waiting with) returns only
        // once that wait has returned.
        let mut in_use = 0;
        for _ in 0..100 {
            // SAFETY: as above.
            let reg = unsafe {
                add(
                    Arc::clone(&shard),
                    &word,
                    8,
                    None,
                    &waker,
                    Duration::from_secs(60),
                )
            };
            let armed = loop {
                let st = shard.lock();
                let armed = st.entries[0].armed;
                if armed != 0 {
                    in_use += usize::from(st.finished < armed);
                    break armed;
                }
                drop(st);
                std::thread::yield_now();
            };
            drop(reg);
            let st = shard.lock();
            assert!(st.entries.is_empty());
            assert!(
                st.finished >= armed,
                "a dropped registration's word may still be in use"
            );
        }
        assert!(
            in_use > 0,
            "no drop found its word in use: the check checked nothing"
        );
        drop(word);
    }

    #[test]
    fn futex_waitv_mode_wakes_times_out_and_deregisters_synchronously() {
        exercise(true);
    }

    #[test]
    fn the_polling_fallback_wakes_times_out_and_deregisters_synchronously() {
        exercise(false);
    }

    /// A fork while another thread holds the service's lock: the child's first registration
    /// must not wait for a lock no thread of its own will ever release, and must be served by a
    /// waiter thread of its own.
    #[test]
    fn a_forked_child_registers_while_the_parent_holds_the_service_lock() {
        let word = Box::new(AtomicU32::new(1));
        let waker = Waker::from(Arc::new(Flag(AtomicBool::new(false))));
        // The parent's service exists (a registration made and dropped) ...
        // SAFETY: `word` outlives the registration, dropped at once.
        drop(unsafe { register(&word, 0, None, &waker, SLICE) });
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        // ... and another thread holds its lock across the fork.
        let holder = std::thread::spawn(move || {
            let _held = service(crate::sys::fork::arm()).shards.lock().unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().ok();
        });
        locked_rx.recv().unwrap();
        // SAFETY: the child only registers a wait, waits for its wake and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let flag = Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(Arc::clone(&flag));
            // SAFETY: `word` outlives the registration (the child exits holding it).
            let reg = unsafe { register(&word, 1, None, &waker, Duration::from_secs(60)) };
            word.store(2, SeqCst);
            futex::wake(&word, 1);
            let code = if woken_within(&flag, Duration::from_secs(5)) {
                0
            } else {
                3
            };
            std::mem::forget(reg);
            // SAFETY: ends the child without running the parent's atexit handlers or tests.
            unsafe { libc::_exit(code) };
        }
        let t0 = Instant::now();
        let status = loop {
            let mut status = 0;
            // SAFETY: our own child; a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break Some(status);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                // SAFETY: our own, unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: as above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let status = status.expect("the forked child hung registering a wait");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the forked child's wait was not served: status {status:#x}"
        );
    }
}
