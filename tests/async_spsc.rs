//! The async SPSC ends (`recv_async`, `send_async`, feature `tokio`) across real processes: bulk
//! transfer both ways (against the blocking ends of a child), cancellation under `select!`, 256
//! rings awaited on one thread with at most 3 waiter threads, and a peer's SIGKILL while
//! awaiting. The peers are this test binary re-run as a child (see `tests/common`).
#![cfg(feature = "tokio")]

mod common;

use common::*;
use shmpipe::transport::shm::{key_for_name, ShmConfig};
use shmpipe::{RecvError, SendError};
use std::io::BufRead;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("many_receiver") => many_receiver(),
        Ok("many_sender") => many_sender(),
        Ok("paced_sender") => paced_sender(),
        _ => child_main(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` to completion, counting the polls that returned `Pending` (the future waited).
async fn counting_pending<F: std::future::Future>(f: F, pending: &mut u64) -> F::Output {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        let r = f.as_mut().poll(cx);
        if r.is_pending() {
            *pending += 1;
        }
        r
    })
    .await
}

fn read_line() -> String {
    let mut l = String::new();
    std::io::stdin().lock().read_line(&mut l).unwrap();
    l.trim().to_string()
}

#[test]
fn hundred_thousand_messages_from_a_blocking_child_arrive_through_recv_async() {
    const N: u64 = 100_000;
    const MAX: usize = 200;
    let ring = Ring::new("async-c2p");
    let mut rx = ring.cfg(64, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", N.to_string()),
            ("max", MAX.to_string()),
            ("cap", "64".into()),
        ],
    );
    child.expect("READY");
    let (count, pending) = runtime().block_on(async {
        let (mut buf, mut expected) = (Vec::new(), Vec::new());
        let (mut count, mut pending) = (0u64, 0u64);
        loop {
            match counting_pending(rx.recv_async(&mut buf), &mut pending).await {
                Ok(()) => {
                    check_pattern(count, MAX, &buf, &mut expected);
                    count += 1;
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("recv_async after {count}: {e:?}"),
            }
        }
        (count, pending)
    });
    eprintln!("recv_async: {count} messages, {pending} pending polls");
    assert_eq!(count, N, "every message once, in order, then Disconnected");
    assert!(
        pending > 0,
        "recv_async never waited: the test tested only the fast path"
    );
    child.expect("SENT");
    child.expect("DONE");
    child.wait_success(SOON);
    drop(rx);
    ring.assert_gone("after both ends closed");
}

#[test]
fn send_async_on_a_small_ring_parks_on_full_and_a_blocking_child_gets_everything() {
    const N: u64 = 100_000;
    const MAX: usize = 64;
    let ring = Ring::new("async-p2c");
    let mut tx = ring.cfg(4, MAX).open_sender().unwrap();
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[("max", MAX.to_string()), ("cap", "4".into())],
    );
    child.expect("READY");
    let pending = runtime().block_on(async {
        let mut buf = Vec::new();
        let mut pending = 0;
        for seq in 0..N {
            pattern(seq, MAX, &mut buf);
            counting_pending(tx.send_async(&buf), &mut pending)
                .await
                .unwrap_or_else(|e| panic!("send_async {seq}: {e:?}"));
        }
        pending
    });
    eprintln!("send_async: {N} messages, {pending} pending polls");
    assert!(pending > 0, "send_async never waited on the 4-message ring");
    drop(tx);
    let got = child.expect("GOT");
    assert_eq!(got[0], N.to_string(), "child: {got:?}");
    assert_eq!(got[1], pattern_checksum(N, MAX).to_string(), "checksum: {got:?}");
    assert_eq!(got[3], "Disconnected", "child: {got:?}");
    child.wait_success(SOON);
    ring.assert_gone("after both ends closed");
}

/// Child role: opens the sender (`cap`, `max`), says `READY`, sends `n` pattern messages in bursts
/// of `burst` with a pause of `pause_us` after each (so the receiver often finds the ring empty
/// and waits), drops it and says `DONE`.
fn paced_sender() {
    child_watchdog(Duration::from_secs(120));
    let ring = std::env::var(RING_ENV).unwrap();
    let a = Args::from_env();
    let max = a.num("max", 1024) as usize;
    let mut c = ShmConfig::named(&ring)
        .unwrap()
        .capacity(a.num("cap", 8) as usize)
        .max_message(max);
    c.open_timeout = Duration::from_secs(5);
    let mut tx = c.open_sender().expect("open_sender");
    tell("READY");
    let (n, burst, pause) = (a.num("n", 0), a.num("burst", 64), a.num("pause_us", 100));
    let mut buf = Vec::new();
    for seq in 0..n {
        pattern(seq, max, &mut buf);
        shmpipe::Sender::send_timeout(&mut tx, &buf, Duration::from_secs(60)).expect("send");
        if seq % burst == burst - 1 {
            std::thread::sleep(Duration::from_micros(pause));
        }
    }
    drop(tx);
    tell("DONE");
}

#[test]
fn recv_async_cancelled_by_select_loses_and_duplicates_nothing() {
    const N: u64 = 20_000;
    const MAX: usize = 100;
    let ring = Ring::new("async-cancel");
    let mut rx = ring.cfg(8, MAX).open_receiver().unwrap();
    // Bursts of 32 and pauses longer than the select's sleep: the receiver waits, and is
    // cancelled, at least once in each of the 625 pauses.
    let mut child = Proc::child(
        "paced_sender",
        &ring.name,
        &[
            ("n", N.to_string()),
            ("max", MAX.to_string()),
            ("cap", "8".into()),
            ("burst", "32".into()),
            ("pause_us", "2000".into()),
        ],
    );
    child.expect("READY");
    let (count, cancels) = runtime().block_on(async {
        let (mut buf, mut expected) = (Vec::new(), Vec::new());
        let (mut count, mut cancels, mut i) = (0u64, 0u64, 0u64);
        loop {
            i += 1;
            // Alternately a yield (cancels any recv that is pending at its first poll, after one
            // spurious re-poll) and a short sleep (cancels a registration that is armed).
            let r = if i % 2 == 0 {
                tokio::select! {
                    biased;
                    r = rx.recv_async(&mut buf) => Some(r),
                    _ = tokio::task::yield_now() => None,
                }
            } else {
                tokio::select! {
                    biased;
                    r = rx.recv_async(&mut buf) => Some(r),
                    _ = tokio::time::sleep(Duration::from_micros(200)) => None,
                }
            };
            match r {
                None => cancels += 1,
                Some(Ok(())) => {
                    check_pattern(count, MAX, &buf, &mut expected);
                    count += 1;
                }
                Some(Err(RecvError::Disconnected)) => break,
                Some(Err(e)) => panic!("recv_async after {count}: {e:?}"),
            }
        }
        (count, cancels)
    });
    eprintln!("{count} messages, {cancels} cancelled recv_async futures");
    assert_eq!(count, N, "every message once, in order");
    assert!(cancels >= 300, "only {cancels} recv_async were cancelled");
    child.expect("DONE");
    child.wait_success(SOON);
}

const MANY: usize = 256;
const SENDERS: usize = 4;
const PER_RING: u64 = 200;
const MANY_MAX: usize = 64;

fn many_cfg(name: &str) -> ShmConfig {
    let mut c = ShmConfig::named(name).unwrap().capacity(8).max_message(MANY_MAX);
    c.open_timeout = Duration::from_secs(5);
    c
}

/// Child role: opens receivers `<base>-0..<base>-255`, awaits all of them on one thread, says
/// `PENDING <threads before> <threads while pending>` once all are pending, then receives
/// `PER_RING` pattern messages from each and `Disconnected`, and says `GOT <total>`.
fn many_receiver() {
    child_watchdog(Duration::from_secs(120));
    let base = std::env::var(RING_ENV).unwrap();
    let rxs: Vec<_> = (0..MANY)
        .map(|i| {
            many_cfg(&format!("{base}-{i}"))
                .open_receiver()
                .expect("open_receiver")
        })
        .collect();
    let rt = runtime();
    let before = threads_now();
    let local = tokio::task::LocalSet::new();
    let total = local.block_on(&rt, async move {
        let tasks: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                tokio::task::spawn_local(async move {
                    let (mut buf, mut expected) = (Vec::new(), Vec::new());
                    let mut n = 0u64;
                    loop {
                        match rx.recv_async(&mut buf).await {
                            Ok(()) => {
                                check_pattern(n, MANY_MAX, &buf, &mut expected);
                                n += 1;
                            }
                            Err(RecvError::Disconnected) => return n,
                            Err(e) => panic!("recv_async: {e:?}"),
                        }
                    }
                })
            })
            .collect();
        // Every task runs to its first pending `recv_async` (nothing has been sent).
        tokio::time::sleep(Duration::from_millis(300)).await;
        tell(&format!("PENDING {before} {}", threads_now()));
        let mut total = 0;
        for t in tasks {
            let n = t.await.unwrap();
            assert_eq!(n, PER_RING);
            total += n;
        }
        total
    });
    tell(&format!("GOT {total}"));
}

/// Child role: opens senders for rings `first..first+count` of `<base>`, says `READY`, waits for
/// `GO`, sends `PER_RING` pattern messages to each (round robin, blocking), drops them, `DONE`.
fn many_sender() {
    child_watchdog(Duration::from_secs(120));
    let base = std::env::var(RING_ENV).unwrap();
    let a = Args::from_env();
    let (first, count) = (a.num("first", 0) as usize, a.num("count", 0) as usize);
    let mut txs: Vec<_> = (first..first + count)
        .map(|i| {
            many_cfg(&format!("{base}-{i}"))
                .open_sender()
                .expect("open_sender")
        })
        .collect();
    tell("READY");
    assert_eq!(read_line(), "GO");
    let mut buf = Vec::new();
    for seq in 0..PER_RING {
        pattern(seq, MANY_MAX, &mut buf);
        for tx in &mut txs {
            shmpipe::Sender::send_timeout(tx, &buf, Duration::from_secs(60)).expect("send");
        }
    }
    drop(txs);
    tell("DONE");
}

#[test]
fn two_hundred_fifty_six_rings_awaited_on_one_thread_use_at_most_three_waiter_threads() {
    let base = unique_name("many");
    // Removes every ring's segment however the test ends (declared before the children).
    let _rings: Vec<Ring> = (0..MANY)
        .map(|i| {
            let name = format!("{base}-{i}");
            Ring {
                key: key_for_name(&name),
                name,
            }
        })
        .collect();
    let mut rx = Proc::child("many_receiver", &base, &[]);
    let pending = rx.expect("PENDING");
    let (before, during): (usize, usize) = (pending[0].parse().unwrap(), pending[1].parse().unwrap());
    eprintln!("threads of the awaiting process: {before} before, {during} with {MANY} recv_async pending");
    assert!(
        during <= before + MANY.div_ceil(127),
        "{MANY} pending recv_async took {} threads ({before} -> {during}), more than {}",
        during - before.min(during),
        MANY.div_ceil(127)
    );
    let per = MANY / SENDERS;
    let mut senders: Vec<Proc> = (0..SENDERS)
        .map(|s| {
            Proc::child(
                "many_sender",
                &base,
                &[("first", (s * per).to_string()), ("count", per.to_string())],
            )
        })
        .collect();
    for s in &mut senders {
        s.expect("READY");
    }
    for s in &mut senders {
        s.say("GO");
    }
    for s in &mut senders {
        s.expect("DONE");
        s.wait_success(SOON);
    }
    let got = rx.expect("GOT");
    assert_eq!(got[0], (MANY as u64 * PER_RING).to_string());
    rx.wait_success(SOON);
    for r in &_rings {
        r.assert_gone("after every end closed");
    }
}

#[test]
fn a_sender_killed_while_recv_async_waits_is_disconnected_within_two_seconds() {
    const MAX: usize = 64;
    let ring = Ring::new("async-kill-tx");
    let mut rx = ring.cfg(8, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", "5".into()),
            ("max", MAX.to_string()),
            ("cap", "8".into()),
            ("hold", "1".into()),
        ],
    );
    child.expect("READY");
    child.expect("SENT");
    let pid = child.pid;
    runtime().block_on(async {
        let mut buf = Vec::new();
        for _ in 0..5 {
            rx.recv_async(&mut buf).await.unwrap();
        }
        let killed = after(Duration::from_millis(200), move || {
            // SAFETY: plain syscall on our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv_async(&mut buf)).await;
        let at = Instant::now();
        let killed_at = killed.join().unwrap();
        let took = at.duration_since(killed_at);
        assert_eq!(r, Ok(Err(RecvError::Disconnected)), "after {took:?}");
        assert!(took <= Duration::from_secs(2), "the kill took {took:?} to notice");
        eprintln!("sender's SIGKILL noticed by recv_async after {took:?}");
    });
}

#[test]
fn a_receiver_killed_while_send_async_waits_on_a_full_ring_is_disconnected_within_two_seconds() {
    const MAX: usize = 64;
    let ring = Ring::new("async-kill-rx");
    let mut tx = ring.cfg(4, MAX).open_sender().unwrap();
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[
            ("max", MAX.to_string()),
            ("cap", "4".into()),
            ("stall_after", "3".into()),
        ],
    );
    child.expect("READY");
    let pid = child.pid;
    runtime().block_on(async {
        let mut buf = Vec::new();
        let mut seq = 0;
        // Fill the ring behind the stalled receiver: the next send waits.
        loop {
            pattern(seq, MAX, &mut buf);
            let r = tokio::time::timeout(Duration::from_millis(500), tx.send_async(&buf)).await;
            match r {
                Ok(Ok(())) => seq += 1,
                Ok(Err(e)) => panic!("send_async {seq}: {e:?}"),
                Err(_) => break,
            }
        }
        let killed = after(Duration::from_millis(200), move || {
            // SAFETY: plain syscall on our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let r = tokio::time::timeout(Duration::from_secs(10), tx.send_async(&buf)).await;
        let at = Instant::now();
        let took = at.duration_since(killed.join().unwrap());
        assert_eq!(r, Ok(Err(SendError::Disconnected)), "after {took:?}");
        assert!(took <= Duration::from_secs(2), "the kill took {took:?} to notice");
        eprintln!("receiver's SIGKILL noticed by send_async after {took:?} ({seq} sent)");
    });
    child.expect("STALLED");
}
