//! In-process baselines of the throughput scenario: two threads of this process, no peer
//! process, no syscalls on the fast path. They show what the cross-process rows pay for crossing
//! a process boundary (and, for `shm`, what our ring costs next to the usual in-process queues).
//!
//! Each streams the same N messages of SIZE bytes (sequence number in the first 8), the
//! producer retrying a non-blocking push while the queue is full and the consumer a
//! non-blocking pop while it is empty (spinning, yielding every 4096 rounds so a single CPU
//! still progresses). The clock is the one of the other rows: first to last arrival. With
//! `--pin`, the consumer runs on our CPU and the producer on the peer's.
//!
//! - `inproc-ring`: [`shmpipe::ring::spsc::channel`] (our ring on the heap), `try_send` /
//!   `try_recv_ref`; capacity as the `shm` rows ([`ring_capacity`]), messages of exactly SIZE
//!   bytes; any size.
//! - `inproc-arrayqueue` ([`crossbeam_queue::ArrayQueue`]) and `inproc-rtrb`
//!   ([`rtrb::RingBuffer`]), capacity 1024: these carry a fixed-size element, `[u8; N]` with N
//!   the SIZE rounded up to a power of two (8 to 1024), so a SIZE that is not a power of two
//!   moves up to twice its bytes. SIZEs above 1024 B are not run (no result line): an element
//!   that large would be a different benchmark (a copy into the queue's heap slots of the whole
//!   element on every push), not this one's baseline.

use super::{check, pin_to, ring_capacity, stamp, Ctx, Job, Measured, StreamClock, Transport, STALL};
use crossbeam_queue::ArrayQueue;
use shmpipe::ring::spsc;
use shmpipe::{Sender, TryRecvError, TrySendError};
use std::hint::spin_loop;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::Instant;

/// Slots of the fixed-element queues.
const CAPACITY: usize = 1024;
/// Largest message the fixed-element queues are run with.
pub(super) const MAX_FIXED: usize = 1024;

/// Whether `transport` (one of ours) is run for messages of `size` bytes.
pub(super) fn supports(transport: Transport, size: usize) -> bool {
    transport == Transport::InprocRing || size <= MAX_FIXED
}

/// Sets a flag when dropped: on every way out of the producer thread.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Release);
    }
}

/// Streams `n` messages between two threads. `push(i)` tries to send message `i` (`Ok(false)`:
/// full); `pop(i)` tries to receive and check message `i` (`Ok(false)`: empty). Returns msgs/s.
fn drive<P, C>(core: Option<usize>, n: u64, mut push: P, mut pop: C) -> Result<f64, String>
where
    P: FnMut(u64) -> Result<bool, String> + Send,
    C: FnMut(u64) -> Result<bool, String>,
{
    let stop = AtomicBool::new(false);
    let producer_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let _done = SetOnDrop(&producer_done);
            if let Some(cpu) = core {
                pin_to(cpu).map_err(|e| format!("pinning the producer to CPU {cpu}: {e}"))?;
            }
            for i in 0..n {
                let mut rounds: u32 = 0;
                while !push(i)? {
                    spin_loop();
                    rounds = rounds.wrapping_add(1);
                    if rounds.is_multiple_of(4096) {
                        if stop.load(Acquire) {
                            return Ok(());
                        }
                        std::thread::yield_now();
                    }
                }
            }
            Ok::<(), String>(())
        });
        let consumed = (|| {
            let mut clock = StreamClock::new();
            for i in 0..n {
                let mut rounds: u32 = 0;
                let mut since = None;
                loop {
                    // Read before trying: if it was set and the queue is still empty, nothing more
                    // will come.
                    let done = producer_done.load(Acquire);
                    if pop(i)? {
                        break;
                    }
                    if done {
                        return Err(format!("the producer stopped before message {i}"));
                    }
                    spin_loop();
                    rounds = rounds.wrapping_add(1);
                    if rounds.is_multiple_of(4096) {
                        std::thread::yield_now();
                        if since.get_or_insert_with(Instant::now).elapsed() > STALL {
                            return Err(format!("no message {i} for {STALL:?}"));
                        }
                    }
                }
                clock.mark(i, n);
            }
            clock.rate(n)
        })();
        stop.store(true, Release);
        let produced = producer
            .join()
            .map_err(|_| "the producer thread panicked".to_string())
            .and_then(|r| r);
        // The producer's own error first: the consumer only sees that it stopped.
        produced?;
        consumed
    })
}

fn ring(core: Option<usize>, size: usize, n: u64) -> Result<f64, String> {
    let (mut tx, mut rx) =
        spsc::channel(ring_capacity(size), size).map_err(|e| format!("spsc::channel: {e}"))?;
    let mut msg = vec![0xa5u8; size];
    drive(
        core,
        n,
        move |i| {
            stamp(&mut msg, i);
            match tx.try_send(&msg) {
                Ok(()) => Ok(true),
                Err(TrySendError::Full) => Ok(false),
                Err(e) => Err(format!("sending message {i}: {e}")),
            }
        },
        |i| match rx.try_recv_ref() {
            Ok(m) => check(&m, size, i).map(|()| true),
            Err(TryRecvError::Empty) => Ok(false),
            Err(e) => Err(format!("receiving message {i}: {e}")),
        },
    )
}

fn array_queue<const N: usize>(core: Option<usize>, size: usize, n: u64) -> Result<f64, String> {
    let q = ArrayQueue::<[u8; N]>::new(CAPACITY);
    let mut msg = [0xa5u8; N];
    drive(
        core,
        n,
        |i| {
            stamp(&mut msg, i);
            Ok(q.push(msg).is_ok())
        },
        |i| match q.pop() {
            Some(m) => check(&m[..size], size, i).map(|()| true),
            None => Ok(false),
        },
    )
}

fn rtrb_queue<const N: usize>(core: Option<usize>, size: usize, n: u64) -> Result<f64, String> {
    let (mut tx, mut rx) = rtrb::RingBuffer::<[u8; N]>::new(CAPACITY);
    let mut msg = [0xa5u8; N];
    drive(
        core,
        n,
        move |i| {
            stamp(&mut msg, i);
            Ok(tx.push(msg).is_ok())
        },
        |i| match rx.pop() {
            Ok(m) => check(&m[..size], size, i).map(|()| true),
            Err(_) => Ok(false),
        },
    )
}

/// Runs `$f::<N>(core, size, n)` with N the size class of `size`.
macro_rules! by_class {
    ($f:ident, $core:expr, $size:expr, $n:expr) => {{
        let (core, size, n): (Option<usize>, usize, u64) = ($core, $size, $n);
        match size.max(8).next_power_of_two() {
            8 => $f::<8>(core, size, n),
            16 => $f::<16>(core, size, n),
            32 => $f::<32>(core, size, n),
            64 => $f::<64>(core, size, n),
            128 => $f::<128>(core, size, n),
            256 => $f::<256>(core, size, n),
            512 => $f::<512>(core, size, n),
            1024 => $f::<1024>(core, size, n),
            _ => Err(format!(
                "{size} B is above the {MAX_FIXED} B of the fixed-element queues"
            )),
        }
    }};
}

pub(super) fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let core = ctx.peer_core;
    let rate = match job.transport {
        Transport::InprocRing => ring(core, job.size, job.messages)?,
        Transport::InprocArrayqueue => by_class!(array_queue, core, job.size, job.messages)?,
        Transport::InprocRtrb => by_class!(rtrb_queue, core, job.size, job.messages)?,
        t => return Err(format!("{} is not an in-process baseline", t.name())),
    };
    Ok(Measured::Rate(rate))
}
