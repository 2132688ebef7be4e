//! Peer baselines from other crates: another shared-memory channel, across the same two
//! processes, measured the same way as ours.
//!
//! `ipmpsc` ([`ipmpsc`] 0.5): a multi-producer, single-consumer ring in a file mapped by both
//! processes with `memmap2`, messages framed by `bincode` (here a `serde_bytes` byte string: an
//! 8-byte length and the bytes), a process-shared pthread mutex taken on every send and every
//! receive, and a process-shared condition variable (`pthread_cond_broadcast` after each) on
//! which an empty receiver or a full sender sleeps: a sleeping transport, like `shm-park`.
//! The receiver reads each message in place (`ZeroCopyContext`) and copies it into a reused
//! buffer, as our transports' `Receiver::recv` does (so both sides of every row copy the
//! payload once: reading only its first 8 bytes in place would flatter large messages). Each ring gets as many bytes as our ring's
//! slots for the same size (capacity x stride), in a file of a private temporary directory that
//! is removed (with the files) when the measurement ends, on every path, and on interruption
//! (see [`TempDir`]).
//!
//! Channels as for our transports: `up` carries the peer's messages (the stream, the pongs),
//! `down` our pings; we create both files before spawning the peer, which opens them.
//!
//! ipmpsc knows nothing of its peer's death: a wait on an empty ring would last forever. So
//! every wait here has a deadline of [`SLICE`], after which the other process is checked
//! (as the raw baselines do), and the whole wait is bounded by [`STALL`]. Its mutex is not
//! robust: a peer killed while holding it would leave us blocked in `pthread_mutex_lock` (the
//! bench's peer is only killed after the measurement, or on an error of ours).

use super::ours::TempDir;
use super::{
    check, ring_capacity, stamp, Ctx, Job, Latencies, Measured, PeerArgs, PeerProc, Scenario, StreamClock,
    PING_SIZE, STALL,
};
use ipmpsc::{Receiver, Sender, SharedRingBuffer};
use serde_bytes::Bytes;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long one wait lasts before the peer is checked.
const SLICE: Duration = Duration::from_millis(100);

/// Ring bytes for messages of `size` bytes: what our ring's slots take for the same size.
fn ring_bytes(size: usize) -> Result<u32, String> {
    let stride = (8 + size).next_multiple_of(64);
    u32::try_from(ring_capacity(size) * stride)
        .map_err(|_| format!("{size} B messages need too large a ring"))
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

fn create(path: &Path, size: usize) -> Result<SharedRingBuffer, String> {
    let p = path_str(path)?;
    SharedRingBuffer::create(p, ring_bytes(size)?).map_err(|e| format!("ipmpsc: creating {p}: {e}"))
}

fn open(path: &str) -> Result<SharedRingBuffer, String> {
    SharedRingBuffer::open(path).map_err(|e| format!("ipmpsc: opening {path}: {e}"))
}

/// Receives one message in place and hands it to `f`; waits in slices of [`SLICE`], calling
/// `alive` after each, for at most [`STALL`].
fn recv_with<R>(
    rx: &mut Receiver,
    alive: &mut dyn FnMut() -> Result<(), String>,
    f: impl FnOnce(&[u8]) -> Result<R, String>,
) -> Result<R, String> {
    let mut since = None;
    loop {
        let mut ctx = rx.zero_copy_context();
        // The slot is released when `ctx` drops, after `f`.
        match ctx.recv_timeout::<&[u8]>(SLICE) {
            Ok(Some(msg)) => return f(msg),
            Ok(None) => {}
            Err(e) => return Err(format!("ipmpsc: receiving: {e}")),
        }
        drop(ctx);
        alive()?;
        if since.get_or_insert_with(Instant::now).elapsed() > STALL {
            return Err(format!("no message for {STALL:?}"));
        }
    }
}

/// Sends `msg`; waits for room as [`recv_with`] waits for a message.
fn send_with(tx: &Sender, msg: &[u8], alive: &mut dyn FnMut() -> Result<(), String>) -> Result<(), String> {
    let mut since = None;
    loop {
        match tx.send_timeout(&Bytes::new(msg), SLICE) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(format!("ipmpsc: sending: {e}")),
        }
        alive()?;
        if since.get_or_insert_with(Instant::now).elapsed() > STALL {
            return Err(format!("no room for {STALL:?}"));
        }
    }
}

pub(super) fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let dir = TempDir::new(&ctx.unique())?;
    let up = dir.path.join("up.ring");
    match job.scenario {
        Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
            Err(super::NOT_CROSSOVER.into())
        }
        Scenario::Throughput => {
            let mut rx = Receiver::new(create(&up, job.size)?);
            let mut peer = PeerProc::spawn(ctx, job, &[path_str(&up)?.to_owned()], &[])?;
            let mut alive = || peer.check_alive();
            let mut clock = StreamClock::new();
            let mut buf = Vec::with_capacity(job.size);
            let n = job.messages;
            for i in 0..n {
                recv_with(&mut rx, &mut alive, |msg| {
                    buf.clear();
                    buf.extend_from_slice(msg);
                    Ok(())
                })
                .map_err(|e| format!("message {i}: {e}"))?;
                clock.mark(i, n);
                check(&buf, job.size, i)?;
            }
            let rate = clock.rate(n)?;
            drop(rx);
            peer.finish()?;
            Ok(Measured::Rate(rate))
        }
        Scenario::Latency => {
            let down = dir.path.join("down.ring");
            let tx = Sender::new(create(&down, PING_SIZE)?);
            let mut rx = Receiver::new(create(&up, PING_SIZE)?);
            let addrs = [path_str(&down)?.to_owned(), path_str(&up)?.to_owned()];
            let mut peer = PeerProc::spawn(ctx, job, &addrs, &[])?;
            let mut alive = || peer.check_alive();
            let mut latencies = Latencies::new();
            for i in 0..job.warmup + job.messages {
                let ping = i.to_le_bytes();
                let t0 = Instant::now();
                send_with(&tx, &ping, &mut alive).map_err(|e| format!("ping {i}: {e}"))?;
                let dt = recv_with(&mut rx, &mut alive, |pong| {
                    let dt = t0.elapsed();
                    check(pong, PING_SIZE, i).map(|()| dt)
                })
                .map_err(|e| format!("pong {i}: {e}"))?;
                if i >= job.warmup {
                    latencies.record_round_trip(dt);
                }
            }
            drop((tx, rx));
            peer.finish()?;
            Ok(Measured::Latency(latencies))
        }
    }
}

/// The peer's side.
pub(super) fn peer(args: &PeerArgs) -> Result<(), String> {
    let parent = args.parent;
    let mut alive = move || {
        // SAFETY: getppid has no arguments and cannot fail.
        if unsafe { libc::getppid() } as u32 == parent {
            Ok(())
        } else {
            Err("the bench process is gone".to_string())
        }
    };
    match (args.scenario, &args.addr[..]) {
        (Scenario::Throughput, [up]) => {
            let tx = Sender::new(open(up)?);
            let mut buf = vec![0xa5u8; args.size];
            for i in 0..args.messages {
                stamp(&mut buf, i);
                send_with(&tx, &buf, &mut alive).map_err(|e| format!("message {i}: {e}"))?;
            }
            Ok(())
        }
        (Scenario::Latency, [down, up]) => {
            let mut rx = Receiver::new(open(down)?);
            let tx = Sender::new(open(up)?);
            for i in 0..args.messages {
                recv_with(&mut rx, &mut alive.clone(), |ping| {
                    send_with(&tx, ping, &mut alive.clone())
                })
                .map_err(|e| format!("round trip {i}: {e}"))?;
            }
            Ok(())
        }
        _ => Err("expected one --addr (throughput) or two (latency)".into()),
    }
}
