//! Benchmarks of the MPMC ring against same-run baselines, in one process.
//!
//! - `mpmc_throughput_64B/{P}x{C}`: P producer threads and C consumer threads move 64-byte messages
//!   through `ring::mpmc::channel` (the same algorithm and memory layout as `shm://NAME?mode=mpmc`,
//!   on the heap), beside `crossbeam_queue::ArrayQueue<[u8; 64]>` of the same capacity driven the
//!   same way (the reference), and, for 1x1, the SPSC ring (`ring::spsc::channel`).
//!   Producers spin on `try_send`, consumers on `try_recv_ref` (zero copy), and every side yields
//!   its core after 64 failed attempts, so that the 2x2 shape (four threads on this 2-core
//!   machine) measures the queues and not a spinning thread starving the one it waits for.
//! - `mpmc_batch_64B/{P}x{C}`: the MPMC ring between threads as above, with copies on both sides:
//!   `per_message` (`try_send` + `try_recv` into a `Vec`) against `batch16` (`try_send_batch` of
//!   16 + `try_recv_batch` of up to 16 into a `Batch`: one CAS of the shared position and one
//!   doorbell check per run of slots).
//! - `mpmc_pingpong_8B`: round trips between two threads through two queues of the same kind.
//! - `mpmc_one_thread_64B`: one thread sends a message and takes it back, over and over: the
//!   instruction cost of a send and a receive with no cache line moving between cores (the least
//!   noisy number on a shared machine, and the one a change to the fast path shows first).
//!
//! Every consumed message is checked (sequence sums after the clock stops), so a queue that lost
//! or duplicated messages would fail the run. Compare rows of one run only: the machine is shared
//! and noisy, and with more threads than cores the numbers depend on the scheduler.

use criterion::{BenchmarkGroup, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use shmpipe::ring::{mpmc, spsc};
use shmpipe::{Batch, Receiver, Sender, TryRecvError, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const CAPACITY: usize = 1024;
/// Messages per producer per criterion iteration.
const PER_PRODUCER: u64 = 5_000;
/// Payload size; the ring's `max_message` leaves one 128-byte slot per message.
const LEN: usize = 64;

type Msg = [u8; LEN];

/// Spins `attempt` until it succeeds, yielding the core every 64 failures.
#[inline]
fn retry<T>(mut attempt: impl FnMut() -> Option<T>) -> T {
    let mut fails = 0u32;
    loop {
        if let Some(v) = attempt() {
            return v;
        }
        fails += 1;
        if fails.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A queue under test: cloneable handles for each producer and consumer thread.
trait Shape {
    type Tx: Send;
    type Rx: Send;
    fn make(producers: usize, consumers: usize) -> (Vec<Self::Tx>, Vec<Self::Rx>);
    fn push(tx: &mut Self::Tx, msg: &Msg) -> bool;
    /// The sequence number of the message taken, if any; `u64::MAX` when no message will ever
    /// come (every producer gone and the rest taken by other consumers).
    fn pop(rx: &mut Self::Rx) -> Option<u64>;
}

struct Ring;
impl Shape for Ring {
    type Tx = mpmc::Producer;
    type Rx = mpmc::Consumer;
    fn make(p: usize, c: usize) -> (Vec<Self::Tx>, Vec<Self::Rx>) {
        let (tx, rx) = mpmc::channel(CAPACITY, LEN).expect("ring");
        let mut txs: Vec<_> = (1..p).map(|_| tx.try_clone().expect("member")).collect();
        let mut rxs: Vec<_> = (1..c).map(|_| rx.try_clone().expect("member")).collect();
        txs.push(tx);
        rxs.push(rx);
        (txs, rxs)
    }
    #[inline]
    fn push(tx: &mut Self::Tx, msg: &Msg) -> bool {
        tx.try_send(msg).is_ok()
    }
    #[inline]
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        match rx.try_recv_ref() {
            Ok(m) => Some(u64::from_le_bytes(m[..8].try_into().expect("8 bytes"))),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(u64::MAX),
            Err(e) => panic!("recv: {e}"),
        }
    }
}

struct Spsc;
impl Shape for Spsc {
    type Tx = spsc::Producer;
    type Rx = spsc::Consumer;
    fn make(p: usize, c: usize) -> (Vec<Self::Tx>, Vec<Self::Rx>) {
        assert_eq!((p, c), (1, 1), "spsc is one to one");
        let (tx, rx) = spsc::channel(CAPACITY, LEN).expect("ring");
        (vec![tx], vec![rx])
    }
    #[inline]
    fn push(tx: &mut Self::Tx, msg: &Msg) -> bool {
        tx.try_send(msg).is_ok()
    }
    #[inline]
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        match rx.try_recv_ref() {
            Ok(m) => Some(u64::from_le_bytes(m[..8].try_into().expect("8 bytes"))),
            Err(TryRecvError::Empty) => None,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

struct Crossbeam;
impl Shape for Crossbeam {
    type Tx = std::sync::Arc<ArrayQueue<Msg>>;
    type Rx = std::sync::Arc<ArrayQueue<Msg>>;
    fn make(p: usize, c: usize) -> (Vec<Self::Tx>, Vec<Self::Rx>) {
        let q = std::sync::Arc::new(ArrayQueue::new(CAPACITY));
        (vec![q.clone(); p], vec![q; c])
    }
    #[inline]
    fn push(tx: &mut Self::Tx, msg: &Msg) -> bool {
        tx.push(*msg).is_ok()
    }
    #[inline]
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop()
            .map(|m| u64::from_le_bytes(m[..8].try_into().expect("8 bytes")))
    }
}

/// Moves `PER_PRODUCER` messages from each of `p` producers to `c` consumers; returns the time
/// from the common start until the last message was taken.
fn transfer<S: Shape>(p: usize, c: usize) -> Duration {
    let (txs, rxs) = S::make(p, c);
    let total = PER_PRODUCER * p as u64;
    let taken = std::sync::atomic::AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let start = Barrier::new(p + c + 1);
    let (elapsed, sum) = std::thread::scope(|s| {
        let producers: Vec<_> = txs
            .into_iter()
            .enumerate()
            .map(|(id, mut tx)| {
                let start = &start;
                s.spawn(move || {
                    let mut msg = [0u8; LEN];
                    start.wait();
                    for i in 0..PER_PRODUCER {
                        msg[..8].copy_from_slice(&(id as u64 * PER_PRODUCER + i).to_le_bytes());
                        retry(|| S::push(&mut tx, &msg).then_some(()));
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                let (start, taken, done) = (&start, &taken, &done);
                s.spawn(move || {
                    let mut sum = 0u64;
                    start.wait();
                    while !done.load(Ordering::Relaxed) {
                        let got = retry(|| {
                            S::pop(&mut rx).or_else(|| done.load(Ordering::Relaxed).then_some(u64::MAX))
                        });
                        if got == u64::MAX {
                            break;
                        }
                        sum = sum.wrapping_add(got);
                        if taken.fetch_add(1, Ordering::AcqRel) + 1 == total {
                            done.store(true, Ordering::Relaxed);
                        }
                    }
                    sum
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for p in producers {
            p.join().expect("producer");
        }
        let sums: Vec<u64> = consumers
            .into_iter()
            .map(|c| c.join().expect("consumer"))
            .collect();
        (t0.elapsed(), sums.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
    });
    assert_eq!(sum, (0..total).sum::<u64>(), "every message exactly once");
    elapsed
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc_throughput_64B");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (p, cons) in [(1usize, 1usize), (2, 2), (1, 2), (2, 1)] {
        g.throughput(Throughput::Elements(PER_PRODUCER * p as u64));
        bench::<Ring>(&mut g, &format!("shmpipe_mpmc/{p}x{cons}"), p, cons);
        bench::<Crossbeam>(&mut g, &format!("crossbeam_arrayqueue/{p}x{cons}"), p, cons);
        if (p, cons) == (1, 1) {
            bench::<Spsc>(&mut g, "shmpipe_spsc/1x1", 1, 1);
        }
    }
    g.finish();
}

fn bench<S: Shape>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    p: usize,
    c: usize,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| (0..iters).map(|_| transfer::<S>(p, c)).sum())
    });
}

/// Moves `PER_PRODUCER` messages from each of `p` producers to `c` consumers through the MPMC
/// ring, copying them out, `k` at a time with the batch calls (or one at a time with `k` 0);
/// returns the time from the common start until the last message was taken.
fn batch_transfer(p: usize, c: usize, k: usize) -> Duration {
    let (txs, rxs) = Ring::make(p, c);
    let total = PER_PRODUCER * p as u64;
    let taken = std::sync::atomic::AtomicU64::new(0);
    let start = Barrier::new(p + c + 1);
    let (elapsed, sum) = std::thread::scope(|s| {
        let producers: Vec<_> = txs
            .into_iter()
            .enumerate()
            .map(|(id, mut tx)| {
                let start = &start;
                s.spawn(move || {
                    let mut msgs = vec![[0u8; LEN]; k.max(1)];
                    start.wait();
                    let mut i = 0;
                    while i < PER_PRODUCER {
                        let n = (k.max(1) as u64).min(PER_PRODUCER - i) as usize;
                        for (j, m) in msgs[..n].iter_mut().enumerate() {
                            m[..8].copy_from_slice(&(id as u64 * PER_PRODUCER + i + j as u64).to_le_bytes());
                        }
                        let refs: Vec<&[u8]> = msgs[..n].iter().map(|m| &m[..]).collect();
                        i += retry(|| {
                            if k == 0 {
                                tx.try_send(refs[0]).ok().map(|()| 1)
                            } else {
                                match tx.try_send_batch(&refs) {
                                    Ok(n) => Some(n as u64),
                                    Err(TrySendError::Full) => None,
                                    Err(e) => panic!("try_send_batch: {e:?}"),
                                }
                            }
                        });
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                let (start, taken) = (&start, &taken);
                s.spawn(move || {
                    let (mut sum, mut buf, mut batch) = (0u64, Vec::new(), Batch::new());
                    let seq = |m: &[u8]| u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
                    start.wait();
                    while taken.load(Ordering::Relaxed) < total {
                        let got = retry(|| {
                            if taken.load(Ordering::Relaxed) >= total {
                                return Some(0);
                            }
                            let r = if k == 0 {
                                rx.try_recv(&mut buf).map(|()| {
                                    sum = sum.wrapping_add(seq(&buf));
                                    1
                                })
                            } else {
                                rx.try_recv_batch(&mut batch, k).map(|n| {
                                    sum = batch.iter().fold(sum, |a, m| a.wrapping_add(seq(m)));
                                    n as u64
                                })
                            };
                            match r {
                                Ok(n) => Some(n),
                                Err(TryRecvError::Empty) => None,
                                // Every producer gone and drained: another consumer is
                                // counting the last messages it took.
                                Err(TryRecvError::Disconnected) => Some(0),
                                Err(e) => panic!("receive: {e:?}"),
                            }
                        });
                        taken.fetch_add(got, Ordering::AcqRel);
                    }
                    sum
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for p in producers {
            p.join().expect("producer");
        }
        let sums: Vec<u64> = consumers
            .into_iter()
            .map(|c| c.join().expect("consumer"))
            .collect();
        (t0.elapsed(), sums.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
    });
    assert_eq!(sum, (0..total).sum::<u64>(), "every message exactly once");
    elapsed
}

fn batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc_batch_64B");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (p, cons) in [(1usize, 1usize), (2, 2)] {
        g.throughput(Throughput::Elements(PER_PRODUCER * p as u64));
        for (name, k) in [("per_message", 0), ("batch16", 16)] {
            g.bench_function(format!("{name}/{p}x{cons}"), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| batch_transfer(p, cons, k)).sum())
            });
        }
    }
    g.finish();
}

/// Round trips of one 8-byte message between two threads through two queues of kind `S`.
fn pingpong<S: Shape>(rounds: u64) -> Duration {
    let (mut a_tx, mut a_rx) = S::make(1, 1);
    let (mut b_tx, mut b_rx) = S::make(1, 1);
    let (mut to_b, mut from_b) = (a_tx.pop().expect("tx"), b_rx.pop().expect("rx"));
    let (mut b_in, mut b_out) = (a_rx.pop().expect("rx"), b_tx.pop().expect("tx"));
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut msg = [0u8; LEN];
            for _ in 0..rounds {
                let n = retry(|| S::pop(&mut b_in));
                msg[..8].copy_from_slice(&n.to_le_bytes());
                retry(|| S::push(&mut b_out, &msg).then_some(()));
            }
        });
        let mut msg = [0u8; LEN];
        let t0 = Instant::now();
        for i in 0..rounds {
            msg[..8].copy_from_slice(&i.to_le_bytes());
            retry(|| S::push(&mut to_b, &msg).then_some(()));
            assert_eq!(retry(|| S::pop(&mut from_b)), i);
        }
        t0.elapsed()
    })
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc_pingpong");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("shmpipe_mpmc", |b| b.iter_custom(pingpong::<Ring>));
    g.bench_function("crossbeam_arrayqueue", |b| b.iter_custom(pingpong::<Crossbeam>));
    g.bench_function("shmpipe_spsc", |b| b.iter_custom(pingpong::<Spsc>));
    g.finish();
}

/// `rounds` sends, each taken back at once, by one thread through one queue of kind `S`.
fn one_thread<S: Shape>(rounds: u64) -> Duration {
    let (mut txs, mut rxs) = S::make(1, 1);
    let (tx, rx) = (&mut txs[0], &mut rxs[0]);
    let mut msg = [0u8; LEN];
    let t0 = Instant::now();
    for i in 0..rounds {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        assert!(S::push(tx, &msg), "one message in an empty queue");
        assert_eq!(S::pop(rx), Some(i));
    }
    t0.elapsed()
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc_one_thread_64B");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Elements(1));
    g.bench_function("shmpipe_mpmc", |b| b.iter_custom(one_thread::<Ring>));
    g.bench_function("crossbeam_arrayqueue", |b| b.iter_custom(one_thread::<Crossbeam>));
    g.bench_function("shmpipe_spsc", |b| b.iter_custom(one_thread::<Spsc>));
    g.finish();
}

/// The criterion entry point (`criterion_group!` makes an undocumented `pub fn`).
#[allow(missing_docs)]
mod harness {
    criterion::criterion_group!(
        benches,
        super::throughput,
        super::batches,
        super::latency,
        super::uncontended
    );
}

criterion::criterion_main!(harness::benches);
