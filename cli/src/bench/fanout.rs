//! The `fanout` scenario: one publisher, N subscribers (1, 2 and 4), messages of [`SIZE`] bytes;
//! every subscriber gets every message (or, under `overflow=overwrite`, is told how many it
//! missed).
//!
//! One run has two phases, measured separately (a stream that fills the ring would make the
//! latency the time a message spends queued behind a ring's worth of others):
//! 1. **Stream**: `messages` messages flat out. Publisher msgs/s = (N - 1) / (last send - first
//!    send), on the publisher's clock (the first send waits until the subscribers are there).
//! 2. **Paced**: `paced` messages (the latency scenario's count), one every [`GAP`], each
//!    carrying its send time (`CLOCK_MONOTONIC`, read just before the send) in bytes 8..16. Each
//!    subscriber reads the clock as the message arrives and records arrival - send, a one-way
//!    latency, in its own HdrHistogram ([`Latencies`]); no round trip is halved here. Both
//!    processes read the same clock, so no offset is involved; a clock read (about 20-60 ns on
//!    this VM) is included once.
//!
//! Every message carries its sequence number in bytes 0..8; each subscriber checks that they
//! follow one another, a reported lag (`Lagged(k)`) skipping exactly k, and that received +
//! missed = everything sent.
//!
//! Transports:
//! - `shm-bcast-block`, `shm-bcast-overwrite`: `shm://NAME?mode=broadcast&overflow=...`. This
//!   process publishes (`subscribers=N`: the first message waits for all of them); each
//!   subscriber is a `bench-peer` process. A peer prints `ready` once subscribed and, at the end
//!   of the stream, `result RECEIVED MISSED` and its histogram on its standard output.
//! - `shm`: our SPSC ring the same way, one subscriber: the reference (the target is a
//!   broadcast ring within 1.2x of it, throughput and latency, with one subscriber).
//! - `inproc-bcast`: our broadcast ring on the heap (`overflow=block`), subscriber threads.
//! - `inproc-bus`: [`bus::Bus`] (lossless; its writer waits for the slowest reader), reader
//!   threads: another crate's in-process broadcast.
//!
//! Every ring has [`CAPACITY`] slots and the default wait strategy (spin briefly, yield, then
//! park): with more busy processes than CPUs (4 subscribers and the publisher on 2 CPUs),
//! spinning would only take the CPU from the process waited for. Several subscribers are never
//! pinned (`--pin` pins only a single subscriber): they take turns on the CPUs, and their
//! latencies then include the scheduler.

use super::cleanup::{self, Resource};
use super::{
    ours, Ctx, Job, Latencies, Measured, PeerArgs, PeerProc, Row, Scenario, StreamClock, Transport, STALL,
};
use shmpipe::ring::broadcast::{self, Overflow, Subscription};
use shmpipe::transport::shm::key_for_name;
use shmpipe::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::sync::Barrier;
use std::time::Duration;

/// The message size.
pub(super) const SIZE: usize = 64;
/// Slots of every ring (and of the bus).
const CAPACITY: usize = 1024;
/// Time between two paced messages.
const GAP: Duration = Duration::from_micros(20);

/// The transports of the scenario, in the report's order.
pub(super) const TRANSPORTS: [Transport; 5] = [
    Transport::Shm,
    Transport::ShmBcastBlock,
    Transport::ShmBcastOverwrite,
    Transport::InprocBcast,
    Transport::InprocBus,
];

/// How many subscribers `transport` is run with.
pub(super) fn subscriber_counts(transport: Transport) -> &'static [usize] {
    match transport {
        // SPSC: one receiver, by construction.
        Transport::Shm => &[1],
        _ => &[1, 2, 4],
    }
}

/// What one subscriber saw.
pub(crate) struct SubResult {
    /// One-way latencies of the paced messages.
    pub(super) latency: Latencies,
    /// Messages received.
    pub(super) received: u64,
    /// Messages missed (lapped, under `overwrite`).
    pub(super) missed: u64,
}

/// Every subscriber's latencies in one histogram.
pub(super) fn merged(subs: &[SubResult]) -> Latencies {
    let mut all = Latencies::new();
    for s in subs {
        all.merge(&s.latency);
    }
    all
}

/// `CLOCK_MONOTONIC` in ns: the same clock in every process (and `Instant`'s).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Message `seq`, sent at `sent_ns` (0: not timed).
fn fill(buf: &mut [u8], seq: u64, sent_ns: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sent_ns.to_le_bytes());
}

/// The publisher's side: `n` messages flat out, then `paced` timestamped ones, one every
/// [`GAP`] (yielding the CPU while it waits). `send(msg, i)` sends message `i`. Returns the
/// stream's msgs/s.
fn publish(
    n: u64,
    paced: u64,
    mut send: impl FnMut(&[u8], u64) -> Result<(), String>,
) -> Result<f64, String> {
    let mut msg = [0xa5u8; SIZE];
    let mut clock = StreamClock::new();
    for i in 0..n {
        fill(&mut msg, i, 0);
        send(&msg, i)?;
        clock.mark(i, n);
    }
    let rate = clock.rate(n)?;
    let gap = GAP.as_nanos() as u64;
    for j in 0..paced {
        let sent = now_ns();
        fill(&mut msg, n + j, sent);
        send(&msg, n + j)?;
        while now_ns() < sent + gap {
            std::thread::yield_now();
        }
    }
    Ok(rate)
}

/// What a subscriber's receive gave.
enum Got {
    /// A message, in the buffer.
    Msg,
    /// Lapped: this many messages were missed.
    Lagged(u64),
    /// The publisher is gone and everything was read.
    End,
}

/// The subscriber's side: receives until the end of the stream of `total` messages, checks the
/// order and counts, and records the latency of every timestamped message.
fn subscribe(
    total: u64,
    mut recv: impl FnMut(&mut Vec<u8>) -> Result<Got, String>,
) -> Result<SubResult, String> {
    let mut buf = Vec::with_capacity(SIZE);
    let mut r = SubResult {
        latency: Latencies::new(),
        received: 0,
        missed: 0,
    };
    let mut next = 0u64;
    loop {
        match recv(&mut buf)? {
            Got::Msg => {}
            Got::Lagged(k) => {
                r.missed += k;
                next += k;
                continue;
            }
            Got::End => break,
        }
        let arrived = now_ns();
        if buf.len() != SIZE {
            return Err(format!("message {next}: {} bytes, expected {SIZE}", buf.len()));
        }
        let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let sent = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        if seq != next {
            return Err(format!(
                "message {seq} where {next} was due (lost, reordered or a wrong lag count)"
            ));
        }
        next += 1;
        r.received += 1;
        if sent != 0 {
            r.latency.record_one_way_ns(arrived.saturating_sub(sent));
        }
    }
    if r.received + r.missed != total {
        return Err(format!(
            "{} received + {} missed of {total} sent",
            r.received, r.missed
        ));
    }
    Ok(r)
}

/// One receive from one of our rings: what is there, else a wait of at most [`STALL`].
fn recv_ours<R: Receiver + ?Sized>(rx: &mut R, buf: &mut Vec<u8>) -> Result<Got, String> {
    match rx.try_recv(buf) {
        Ok(()) => Ok(Got::Msg),
        Err(TryRecvError::Empty) => match rx.recv_timeout(buf, STALL) {
            Ok(()) => Ok(Got::Msg),
            Err(RecvTimeoutError::Lagged(k)) => Ok(Got::Lagged(k)),
            Err(RecvTimeoutError::Disconnected) => Ok(Got::End),
            Err(e) => Err(format!("receiving: {e}")),
        },
        Err(TryRecvError::Lagged(k)) => Ok(Got::Lagged(k)),
        Err(TryRecvError::Disconnected) => Ok(Got::End),
        Err(e) => Err(format!("receiving: {e}")),
    }
}

/// One send into one of our rings: at once if there is room, else a wait of at most [`STALL`].
fn send_ours<S: Sender + ?Sized>(tx: &mut S, msg: &[u8], i: u64) -> Result<(), String> {
    match tx.try_send(msg) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full) => tx
            .send_timeout(msg, STALL)
            .map_err(|e| format!("sending message {i}: {e}")),
        Err(e) => Err(format!("sending message {i}: {e}")),
    }
}

pub(super) fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    match job.transport {
        Transport::Shm | Transport::ShmBcastBlock | Transport::ShmBcastOverwrite => {
            across_processes(ctx, job)
        }
        Transport::InprocBcast => in_process_ring(job),
        Transport::InprocBus => in_process_bus(job),
        t => Err(format!("{} does not run the fanout scenario", t.name())),
    }
}

/// The publisher's and the subscribers' endpoints.
fn endpoints(job: &Job, name: &str) -> (String, String) {
    let ring = format!("shm://{name}?capacity={CAPACITY}&max_message={}", job.size);
    let overflow = match job.transport {
        Transport::ShmBcastBlock => Overflow::Block,
        Transport::ShmBcastOverwrite => Overflow::Overwrite,
        _ => return (ring.clone(), ring),
    };
    let sub = format!("{ring}&mode=broadcast&overflow={overflow}");
    (format!("{sub}&subscribers={}", job.subscribers), sub)
}

/// Reads one line of a subscriber's report.
fn read_line(out: &mut impl BufRead, i: usize) -> Result<String, String> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(0) => Err(format!(
            "subscriber {i} ended without a report (its error is above)"
        )),
        Ok(_) => Ok(line.trim_end().to_string()),
        Err(e) => Err(format!("reading subscriber {i}'s report: {e}")),
    }
}

fn across_processes(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let name = ctx.unique();
    let key = cleanup::lock().add(Resource::ShmKey(key_for_name(&name)));
    let (pub_ep, sub_ep) = endpoints(job, &name);
    let result = (|| {
        let mut tx = ours::open_tx(&pub_ep)?;
        let mut peers = (0..job.subscribers)
            .map(|_| PeerProc::spawn_piped(ctx, job, std::slice::from_ref(&sub_ep)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outs: Vec<_> = peers
            .iter_mut()
            .map(|p| BufReader::new(p.take_stdout().expect("piped")))
            .collect();
        // Every subscriber is there before the clock can start (the SPSC ring does not wait
        // for its receiver as a broadcast publisher does).
        for (i, out) in outs.iter_mut().enumerate() {
            let line = read_line(out, i)?;
            if line != "ready" {
                return Err(format!("subscriber {i}: {line:?} where \"ready\" was expected"));
            }
        }
        let rate = publish(job.messages, job.paced, |msg, i| send_ours(&mut *tx, msg, i))?;
        drop(tx);
        let mut subs = Vec::new();
        for (i, out) in outs.iter_mut().enumerate() {
            let line = read_line(out, i)?;
            subs.push(parse_report(&line).map_err(|e| format!("subscriber {i}: {e}"))?);
        }
        for p in peers {
            p.finish()?;
        }
        Ok(Measured::Fanout(rate, subs))
    })();
    cleanup::lock().forget(key);
    result
}

/// `result RECEIVED MISSED VALUE:COUNT ...`
fn parse_report(line: &str) -> Result<SubResult, String> {
    let bad = || format!("a report that does not parse: {line:?}");
    let rest = line.strip_prefix("result ").ok_or_else(bad)?;
    let mut it = rest.splitn(3, ' ');
    let mut num = || it.next().and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
    let (received, missed) = (num()?, num()?);
    let latency = Latencies::decode(it.next().unwrap_or(""))?;
    Ok(SubResult {
        latency,
        received,
        missed,
    })
}

/// The peer: one subscriber, reporting on its standard output.
pub(super) fn peer(args: &PeerArgs) -> Result<(), String> {
    let [ep] = &args.addr[..] else {
        return Err("expected one --addr".into());
    };
    let mut rx = ours::open_rx(ep)?;
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| format!("writing to the bench: {e}");
    writeln!(out, "ready").and_then(|()| out.flush()).map_err(io)?;
    let r = subscribe(args.messages, |buf| recv_ours(&mut *rx, buf))?;
    drop(rx);
    writeln!(out, "result {} {} {}", r.received, r.missed, r.latency.encode())
        .and_then(|()| out.flush())
        .map_err(io)
}

/// Runs `publish` on this thread through `tx` (`send` sending for it) and a subscriber thread
/// for each of `rxs` (`recv` receiving for it), all starting together. `tx` is dropped after
/// the last message (or an error): the end of the stream for the subscribers.
fn threads<T, R: Send>(
    job: &Job,
    mut tx: T,
    send: impl Fn(&mut T, &[u8], u64) -> Result<(), String>,
    rxs: Vec<R>,
    recv: impl Fn(&mut R, &mut Vec<u8>) -> Result<Got, String> + Sync,
) -> Result<Measured, String> {
    let total = job.messages + job.paced;
    let start = Barrier::new(rxs.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                let (start, recv) = (&start, &recv);
                s.spawn(move || {
                    start.wait();
                    subscribe(total, |buf| recv(&mut rx, buf))
                })
            })
            .collect();
        start.wait();
        let rate = publish(job.messages, job.paced, |msg, i| send(&mut tx, msg, i));
        drop(tx);
        let subs = handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a subscriber thread panicked".to_string())?)
            .collect::<Result<Vec<_>, _>>();
        Ok(Measured::Fanout(rate?, subs?))
    })
}

fn in_process_ring(job: &Job) -> Result<Measured, String> {
    let (tx, first) = broadcast::channel(CAPACITY, job.size, Overflow::Block)
        .map_err(|e| format!("broadcast::channel: {e}"))?;
    let mut rxs = vec![first];
    for _ in 1..job.subscribers {
        rxs.push(
            tx.subscribe(Subscription::default())
                .map_err(|e| format!("subscribing: {e}"))?,
        );
    }
    threads(job, tx, send_ours, rxs, recv_ours)
}

fn in_process_bus(job: &Job) -> Result<Measured, String> {
    let mut bus = bus::Bus::<[u8; SIZE]>::new(CAPACITY);
    let rxs: Vec<_> = (0..job.subscribers).map(|_| bus.add_rx()).collect();
    threads(
        job,
        bus,
        |bus, msg, _| {
            let msg: [u8; SIZE] = msg.try_into().expect("SIZE bytes");
            // Lossless: waits for the slowest reader when full.
            if let Err(msg) = bus.try_broadcast(msg) {
                bus.broadcast(msg);
            }
            Ok(())
        },
        rxs,
        |rx, buf| {
            let m = match rx.try_recv() {
                Ok(m) => m,
                Err(std::sync::mpsc::TryRecvError::Empty) => match rx.recv_timeout(STALL) {
                    Ok(m) => m,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(Got::End),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        return Err(format!("no message for {STALL:?}"))
                    }
                },
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(Got::End),
            };
            buf.clear();
            buf.extend_from_slice(&m);
            Ok(Got::Msg)
        },
    )
}

/// The fanout row's comparisons: with one subscriber, the broadcast ring against our SPSC ring
/// (throughput and latency); in process, our ring against `bus` with as many subscribers.
pub(super) fn versus(row: &Row, rows: &[Row]) -> String {
    let n = row.subscribers.len();
    let base = match row.transport {
        Transport::ShmBcastBlock | Transport::ShmBcastOverwrite if n == 1 => Transport::Shm,
        Transport::InprocBcast => Transport::InprocBus,
        _ => return "-".into(),
    };
    let Some(b) = rows
        .iter()
        .find(|b| b.scenario == Scenario::Fanout && b.transport == base && b.subscribers.len() == n)
    else {
        return "-".into();
    };
    match (row.msgs_per_s, b.msgs_per_s, row.latency, b.latency) {
        (Some(r), Some(br), Some(l), Some(bl)) => format!(
            "{:.2}x msgs/s, p50 {:.2}x p99 {:.2}x {}",
            r / br,
            l[0] as f64 / bl[0].max(1) as f64,
            l[1] as f64 / bl[1].max(1) as f64,
            base.name()
        ),
        _ => "-".into(),
    }
}

/// The fanout section of the report: every subscriber's latencies and losses, the one-subscriber
/// ratio against SPSC, and how crowded the CPUs were.
pub(super) fn table(rows: &[Row], cpus: usize, paced: u64) -> String {
    let fan: Vec<&Row> = rows.iter().filter(|r| r.scenario == Scenario::Fanout).collect();
    if fan.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfanout: 1 publisher -> N subscribers, {SIZE} B, {CAPACITY} slots, default wait (spin, \
         yield, park).\n  msgs/s: the publisher's, over the stream sent flat out; latency: one way, \
         send timestamp in the message\n  to arrival (CLOCK_MONOTONIC), of {paced} messages paced \
         one every {} µs, at each subscriber.",
        GAP.as_micros()
    );
    let _ = writeln!(
        out,
        "{:<22} {:>4} {:>8} {:>8} {:>9} {:>10} {:>8}",
        "transport", "sub", "p50 ns", "p99 ns", "max ns", "received", "missed"
    );
    for row in &fan {
        for (i, s) in row.subscribers.iter().enumerate() {
            let [p50, p99, _, max] = s.latency.summary();
            let _ = writeln!(
                out,
                "{:<22} {:>4} {:>8} {:>8} {:>9} {:>10} {:>8}",
                row.label(),
                i,
                p50,
                p99,
                max,
                s.received,
                s.missed
            );
        }
    }
    let find = |t: Transport| fan.iter().find(|r| r.transport == t && r.subscribers.len() == 1);
    if let Some(spsc) = find(Transport::Shm) {
        for t in [Transport::ShmBcastBlock, Transport::ShmBcastOverwrite] {
            let Some(bc) = find(t) else { continue };
            if let (Some(r), Some(b), Some(l), Some(bl)) =
                (bc.msgs_per_s, spsc.msgs_per_s, bc.latency, spsc.latency)
            {
                let (thr, p50, p99) = (
                    r / b,
                    l[0] as f64 / bl[0].max(1) as f64,
                    l[1] as f64 / bl[1].max(1) as f64,
                );
                // Within 1.2x: throughput at least 1/1.2 of SPSC's, latency at most 1.2x.
                let met = thr >= 1.0 / 1.2 && p50 <= 1.2 && p99 <= 1.2;
                let _ = writeln!(
                    out,
                    "1 subscriber, {} / shm (SPSC): msgs/s {thr:.2}x (target >= 0.83x), latency p50 \
                     {p50:.2}x p99 {p99:.2}x (target <= 1.2x): {}",
                    t.name(),
                    if met { "within 1.2x" } else { "NOT within 1.2x" }
                );
            }
        }
    }
    let most = fan.iter().map(|r| r.subscribers.len()).max().unwrap_or(0);
    if most + 1 > cpus {
        let _ = writeln!(
            out,
            "note: {cpus} CPUs for 1 publisher + up to {most} subscribers: with more busy \
             processes (or threads) than CPUs they take turns, so those rows' msgs/s and latencies \
             include the scheduler (a lapped subscriber under overwrite is usually one that was \
             not running)."
        );
    }
    out
}
