//! The `mpmc` scenario: [`PRODUCERS`] producers and [`CONSUMERS`] consumers share one queue;
//! messages per second from the first arrival (at any consumer) to the last.
//!
//! - `shm-mpmc`: `shm://NAME?mode=mpmc`. Each producer is a `bench-peer` process sending its share
//!   of the messages; the consumers are threads of this process, each its own member of the ring
//!   (its own `open`, as separate processes would be).
//! - `inproc-mpmc`: the same ring on the heap ([`shmpipe::ring::mpmc::channel`]), all threads of
//!   this process.
//! - `inproc-arrayqueue`: `crossbeam_queue::ArrayQueue<[u8; 64]>` of the same capacity, all
//!   threads of this process: the reference.
//!
//! Every side of every queue waits the same way ([`backoff`]): `try_` calls, spinning, yielding
//! the CPU every 64 failures (four busy threads on this 2-CPU machine), never parking.
//!
//! Every message carries its producer and its number within that producer; every consumer checks
//! that each producer's numbers only grow, and the run fails unless the consumers together got
//! each message exactly once.

use super::cleanup::{self, Resource};
use super::{ours, Ctx, Job, Measured, PeerArgs, PeerProc, Transport, STALL};
use crossbeam_queue::ArrayQueue;
use shmpipe::ring::mpmc;
use shmpipe::transport::shm::key_for_name;
use shmpipe::{Sender, TryRecvError, TrySendError};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::Instant;

/// Producers of every mpmc measurement.
pub(super) const PRODUCERS: usize = 2;
/// Consumers of every mpmc measurement.
pub(super) const CONSUMERS: usize = 2;
/// Slots.
const CAPACITY: usize = 1024;
/// The message size (a fixed element for ArrayQueue).
pub(super) const SIZE: usize = 64;

/// Fills `buf` with producer `p`'s message `i`.
fn tag(buf: &mut [u8], p: usize, i: u64) {
    buf[..8].copy_from_slice(&i.to_le_bytes());
    buf[8..16].copy_from_slice(&(p as u64).to_le_bytes());
}

/// What one consumer saw.
#[derive(Default)]
struct Seen {
    first: Option<Instant>,
    last: Option<Instant>,
    /// Per producer: how many, and the last number.
    count: [u64; PRODUCERS],
    next: [u64; PRODUCERS],
}

impl Seen {
    /// Checks and counts one message.
    fn take(&mut self, msg: &[u8]) -> Result<(), String> {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        if msg.len() != SIZE {
            return Err(format!("a message of {} bytes, expected {SIZE}", msg.len()));
        }
        let i = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
        let p = u64::from_le_bytes(msg[8..16].try_into().expect("8 bytes")) as usize;
        if p >= PRODUCERS {
            return Err(format!("a message from producer {p} of {PRODUCERS}"));
        }
        if i < self.next[p] {
            return Err(format!(
                "producer {p}: message {i} after {} (out of order or duplicated)",
                self.next[p] - 1
            ));
        }
        self.next[p] = i + 1;
        self.count[p] += 1;
        Ok(())
    }
}

/// Combines the consumers' views: every producer's `per` messages exactly once; msgs/s.
fn rate(seen: Vec<Seen>, per: u64) -> Result<f64, String> {
    for p in 0..PRODUCERS {
        let got: u64 = seen.iter().map(|s| s.count[p]).sum();
        if got != per {
            return Err(format!("producer {p}: {got} messages received, {per} sent"));
        }
    }
    let first = seen.iter().filter_map(|s| s.first).min();
    let last = seen.iter().filter_map(|s| s.last).max();
    match (first, last) {
        (Some(a), Some(b)) if b > a => Ok((per * PRODUCERS as u64 - 1) as f64 / (b - a).as_secs_f64()),
        _ => Err("the stream was too short to time".into()),
    }
}

pub(super) fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let per = (job.messages / PRODUCERS as u64).max(1);
    let seen = match job.transport {
        Transport::ShmMpmc => across_processes(ctx, job)?,
        Transport::InprocMpmc => in_process_ring(per)?,
        Transport::InprocArrayqueue => in_process_array_queue(per)?,
        t => return Err(format!("{} does not run the mpmc scenario", t.name())),
    };
    rate(seen, per).map(Measured::Rate)
}

fn across_processes(ctx: &Ctx, job: &Job) -> Result<Vec<Seen>, String> {
    let name = ctx.unique();
    let key = cleanup::lock().add(Resource::ShmKey(key_for_name(&name)));
    let ep = format!(
        "shm://{name}?mode=mpmc&senders={PRODUCERS}&capacity={CAPACITY}&max_message={}",
        job.size
    );
    let result = (|| {
        let receivers = (0..CONSUMERS)
            .map(|_| ours::open_rx(&ep))
            .collect::<Result<Vec<_>, _>>()?;
        let peers = (0..PRODUCERS)
            .map(|p| PeerProc::spawn(ctx, job, &[ep.clone(), p.to_string()], &[]))
            .collect::<Result<Vec<_>, _>>()?;
        let seen = std::thread::scope(|s| {
            let handles: Vec<_> = receivers
                .into_iter()
                .map(|mut rx| {
                    s.spawn(move || {
                        let mut seen = Seen::default();
                        let mut buf = Vec::with_capacity(SIZE);
                        let (mut fails, mut idle_since) = (0u32, None::<Instant>);
                        loop {
                            match rx.try_recv(&mut buf) {
                                Ok(()) => {
                                    seen.take(&buf)?;
                                    idle_since = None;
                                }
                                Err(TryRecvError::Empty) => {
                                    backoff(&mut fails);
                                    if idle_since.get_or_insert_with(Instant::now).elapsed() > STALL {
                                        return Err(format!("no message for {STALL:?}"));
                                    }
                                }
                                Err(TryRecvError::Disconnected) => return Ok(seen),
                                Err(e) => return Err(format!("receiving: {e}")),
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| "a consumer thread panicked".to_string())?)
                .collect::<Result<Vec<_>, String>>()
        });
        for peer in peers {
            peer.finish()?;
        }
        seen
    })();
    cleanup::lock().forget(key);
    result
}

/// The peer: producer number `--addr[1]` sends its share.
pub(super) fn peer(args: &PeerArgs) -> Result<(), String> {
    let [ep, p] = &args.addr[..] else {
        return Err("expected --addr=ENDPOINT --addr=PRODUCER".into());
    };
    let p: usize = p.parse().map_err(|_| format!("producer number {p:?}"))?;
    let mut tx = ours::open_tx(ep)?;
    let mut buf = vec![0x5au8; args.size];
    let mut fails = 0;
    for i in 0..args.messages {
        tag(&mut buf, p, i);
        let since = Instant::now();
        loop {
            match tx.try_send(&buf) {
                Ok(()) => break,
                Err(TrySendError::Full) if since.elapsed() < STALL => backoff(&mut fails),
                Err(e) => return Err(format!("sending message {i}: {e}")),
            }
        }
    }
    Ok(())
}

/// The waiting of every side of every mpmc measurement (the same for every queue): spin, and
/// yield the core every 64 failed tries (more busy threads than CPUs here). No parking: this
/// scenario compares the queues, not the futex.
fn backoff(fails: &mut u32) {
    *fails += 1;
    if fails.is_multiple_of(64) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Runs a producer thread for each of `txs` calling `push(tx, msg)` until it succeeds for each
/// of its `per` messages, and a consumer thread for each of `rxs` calling `pop(rx, seen)`
/// (`Ok(false)`: nothing there) until every message is taken. Spinning sides yield every 64
/// failed tries (more threads than CPUs here).
fn threads<T: Send, R: Send>(
    per: u64,
    txs: Vec<T>,
    rxs: Vec<R>,
    push: impl Fn(&mut T, &[u8]) -> bool + Sync,
    pop: impl Fn(&mut R, &mut Seen) -> Result<bool, String> + Sync,
) -> Result<Vec<Seen>, String> {
    let total = per * txs.len() as u64;
    let taken = AtomicU64::new(0);
    let start = Barrier::new(txs.len() + rxs.len());
    std::thread::scope(|s| {
        for (p, mut tx) in txs.into_iter().enumerate() {
            let (push, start) = (&push, &start);
            s.spawn(move || {
                let mut buf = [0x5au8; SIZE];
                let mut fails = 0;
                start.wait();
                for i in 0..per {
                    tag(&mut buf, p, i);
                    while !push(&mut tx, &buf) {
                        backoff(&mut fails);
                    }
                }
            });
        }
        let consumers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                let (pop, start, taken) = (&pop, &start, &taken);
                s.spawn(move || {
                    let mut seen = Seen::default();
                    let mut fails = 0;
                    start.wait();
                    while taken.load(Relaxed) < total {
                        if pop(&mut rx, &mut seen)? {
                            taken.fetch_add(1, Relaxed);
                        } else {
                            backoff(&mut fails);
                        }
                    }
                    Ok(seen)
                })
            })
            .collect();
        consumers
            .into_iter()
            .map(|h| h.join().map_err(|_| "a consumer thread panicked".to_string())?)
            .collect()
    })
}

fn in_process_ring(per: u64) -> Result<Vec<Seen>, String> {
    let (tx, rx) = mpmc::channel(CAPACITY, SIZE).map_err(|e| format!("mpmc::channel: {e}"))?;
    let mut txs = (1..PRODUCERS)
        .map(|_| tx.try_clone())
        .collect::<Result<Vec<_>, _>>();
    let mut rxs = (1..CONSUMERS)
        .map(|_| rx.try_clone())
        .collect::<Result<Vec<_>, _>>();
    if let (Ok(txs), Ok(rxs)) = (&mut txs, &mut rxs) {
        txs.push(tx);
        rxs.push(rx);
    }
    let (txs, rxs) = (txs.map_err(|e| e.to_string())?, rxs.map_err(|e| e.to_string())?);
    threads(
        per,
        txs,
        rxs,
        |tx, msg| tx.try_send(msg).is_ok(),
        |rx, seen| match rx.try_recv_ref() {
            Ok(m) => seen.take(&m).map(|()| true),
            // Disconnected: the producers are done and another consumer holds the last messages;
            // the loop ends when it has counted them.
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Ok(false),
            Err(e) => Err(format!("receiving: {e}")),
        },
    )
}

fn in_process_array_queue(per: u64) -> Result<Vec<Seen>, String> {
    let q = ArrayQueue::<[u8; SIZE]>::new(CAPACITY);
    threads(
        per,
        vec![&q; PRODUCERS],
        vec![&q; CONSUMERS],
        |q, msg| q.push(msg.try_into().expect("SIZE bytes")).is_ok(),
        |q, seen| match q.pop() {
            Some(m) => seen.take(&m).map(|()| true),
            None => Ok(false),
        },
    )
}
