//! A streaming async receiver against the blocking one, in one process: a producer thread sends
//! 5M 64-byte messages through `spsc::channel(1024, 64)` with the blocking `send`, and the
//! receiver takes them with `recv` (blocking) or awaits `recv_async` in a current-thread tokio
//! runtime, first with the default `WaitStrategy` (8 yields to the executor before registering
//! with the waiter thread) and then with none (`park_only`: a registration each time the ring is
//! found empty). The receiver does little per message, so it outruns the sender and keeps
//! finding the ring empty, where the wait strategy decides. Prints the median messages per second of each over 7 rounds, taken in turns:
//!
//! ```sh
//! cargo run --release --example async_stream --features tokio
//! ```
//!
//! Two threads busy at once: on a 2-core machine, run it idle.

use shmpipe::ring::spsc;
use shmpipe::{Receiver, Sender, WaitStrategy};
use std::time::Instant;

const N: u64 = 2_000_000;
const ROUNDS: usize = 7;

/// One transfer of `N` messages; returns messages per second.
fn run(wait: WaitStrategy, asynchronous: bool) -> f64 {
    let (mut tx, mut rx) = spsc::channel(1024, 64).expect("a ring");
    rx.set_wait_strategy(wait);
    let producer = std::thread::spawn(move || {
        let mut msg = [0u8; 64];
        for i in 0..N {
            msg[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(&msg).expect("send");
        }
    });
    let mut buf = Vec::with_capacity(64);
    let t0 = Instant::now();
    // Every 4096th message is checked: the receiver should outrun the sender (as a service
    // taking a feed at the sender's pace does), so that it keeps finding the ring empty.
    let check = |i: u64, buf: &[u8]| {
        if i.is_multiple_of(4096) || i == N - 1 {
            assert_eq!(buf[..8], i.to_le_bytes(), "message {i}");
        }
    };
    if asynchronous {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            for i in 0..N {
                rx.recv_async(&mut buf).await.expect("recv_async");
                check(i, &buf);
            }
        });
    } else {
        for i in 0..N {
            rx.recv(&mut buf).expect("recv");
            check(i, &buf);
        }
    }
    let rate = N as f64 / t0.elapsed().as_secs_f64();
    producer.join().expect("the producer");
    rate
}

fn main() {
    let rows: [(&str, WaitStrategy, bool); 3] = [
        ("blocking recv (default)", WaitStrategy::default(), false),
        ("recv_async (default: 8 yields)", WaitStrategy::default(), true),
        ("recv_async (park_only: none)", WaitStrategy::park_only(), true),
    ];
    // The rows take turns, round after round, so that a noisy stretch hits them all.
    let mut rates = vec![Vec::new(); rows.len()];
    for _ in 0..ROUNDS {
        for (row, &(_, wait, asynchronous)) in rows.iter().enumerate() {
            rates[row].push(run(wait, asynchronous));
        }
    }
    println!("{N} messages of 64 B, {ROUNDS} rounds; M msgs/s: median (min-max)");
    for ((name, ..), mut r) in rows.iter().zip(rates) {
        r.sort_by(f64::total_cmp);
        let m = |x: f64| x / 1e6;
        println!(
            "{name:<32} {:>6.1} ({:.1}-{:.1})",
            m(r[r.len() / 2]),
            m(r[0]),
            m(r[r.len() - 1])
        );
    }
}
