//! `shm-async`: our shared-memory ring with the receiving side awaiting
//! `Consumer::recv_async` in a tokio current-thread runtime (woken through the library's
//! `futex_waitv` waiter thread), next to the blocking rows of the same run.
//!
//! - `latency`: the ping-pong of `shm-park`, but both receiving sides (our pongs, the peer's
//!   pings) await `recv_async` in a current-thread runtime; sends are the blocking `send` (the
//!   ring always has room). Each one-way latency is one async wake, compared with `shm-park`,
//!   where each is one futex park wake.
//! - `throughput` (64 B only): the peer streams flat out with the blocking, spinning sender of
//!   the `shm` row; we await `recv_async` for every message. Compared with `shm`, whose receiver
//!   spins.
//!
//! The ends are the concrete `Consumer`/`Producer` (unboxed futures), opened from the same
//! `shm://` endpoints as the other rows.

use super::{check, stamp, Latencies, PeerArgs, StreamClock, PING_SIZE, STALL};
use shmpipe::endpoint::Endpoint;
use shmpipe::transport::shm::{ShmConfig, ShmReceiver, ShmSender};
use shmpipe::Sender;
use std::time::Instant;
use tokio::runtime::Runtime;
use tokio::time::timeout;

fn config(endpoint: &str) -> Result<ShmConfig, String> {
    match Endpoint::parse(endpoint) {
        Ok(Endpoint::Shm(cfg)) => Ok(cfg),
        Ok(_) => Err(format!("{endpoint}: not a shm:// endpoint")),
        Err(e) => Err(format!("parsing {endpoint}: {e}")),
    }
}

pub(super) fn open_rx(endpoint: &str) -> Result<ShmReceiver, String> {
    config(endpoint)?
        .open_receiver()
        .map_err(|e| format!("opening {endpoint}: {e}"))
}

pub(super) fn open_tx(endpoint: &str) -> Result<ShmSender, String> {
    config(endpoint)?
        .open_sender()
        .map_err(|e| format!("opening {endpoint}: {e}"))
}

/// A current-thread runtime (the timer only for the start-up deadlines; the ring's futures need
/// no driver, only their `Waker`).
fn runtime() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("building a tokio runtime: {e}"))
}

/// Awaits and checks `n` messages; returns messages per second.
pub(super) fn receive_stream(rx: &mut ShmReceiver, size: usize, n: u64) -> Result<f64, String> {
    runtime()?.block_on(async {
        let mut buf = Vec::with_capacity(size);
        let mut clock = StreamClock::new();
        for i in 0..n {
            // The first message has a deadline, in case the peer never comes; after it, a dead
            // peer is noticed by the ring within a park slice.
            let r = if i == 0 {
                timeout(STALL, rx.recv_async(&mut buf))
                    .await
                    .map_err(|_| format!("no message within {STALL:?}"))?
            } else {
                rx.recv_async(&mut buf).await
            };
            r.map_err(|e| format!("receiving message {i}: {e}"))?;
            clock.mark(i, n);
            check(&buf, size, i)?;
        }
        clock.rate(n)
    })
}

/// `warmup` then `n` timed round trips, awaiting each pong; returns the timed ones, halved.
pub(super) fn ping(
    tx: &mut ShmSender,
    rx: &mut ShmReceiver,
    warmup: u64,
    n: u64,
) -> Result<Latencies, String> {
    runtime()?.block_on(async {
        let mut latencies = Latencies::new();
        let mut buf = Vec::with_capacity(PING_SIZE);
        for i in 0..warmup + n {
            let msg = i.to_le_bytes();
            let warm = i < warmup.max(1);
            let t0 = Instant::now();
            tx.send(&msg).map_err(|e| format!("sending ping {i}: {e}"))?;
            let r = if warm {
                timeout(STALL, rx.recv_async(&mut buf))
                    .await
                    .map_err(|_| format!("no pong {i} within {STALL:?}"))?
            } else {
                rx.recv_async(&mut buf).await
            };
            let dt = t0.elapsed();
            r.map_err(|e| format!("receiving pong {i}: {e}"))?;
            check(&buf, PING_SIZE, i)?;
            if i >= warmup {
                latencies.record_round_trip(dt);
            }
        }
        Ok(latencies)
    })
}

/// The peer's side of the throughput scenario: the blocking sender, as for `shm`.
pub(super) fn send_stream(args: &PeerArgs, up: &str) -> Result<(), String> {
    let mut tx = open_tx(up)?;
    let mut buf = vec![0xa5u8; args.size];
    for i in 0..args.messages {
        stamp(&mut buf, i);
        tx.send(&buf).map_err(|e| format!("sending message {i}: {e}"))?;
    }
    tx.flush_deadline(None).map_err(|e| format!("flushing: {e}"))
}

/// The peer's side of the latency scenario: awaits each ping, echoes it.
pub(super) fn echo(args: &PeerArgs, down: &str, up: &str) -> Result<(), String> {
    let mut rx = open_rx(down)?;
    let mut tx = open_tx(up)?;
    runtime()?.block_on(async {
        let mut buf = Vec::with_capacity(args.size);
        for i in 0..args.messages {
            rx.recv_async(&mut buf)
                .await
                .map_err(|e| format!("receiving ping {i}: {e}"))?;
            tx.send(&buf).map_err(|e| format!("sending pong {i}: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    tx.flush_deadline(None).map_err(|e| format!("flushing: {e}"))
}
