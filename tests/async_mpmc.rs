//! The async MPMC ends (`recv_async`, `send_async`, feature `tokio`) across real processes:
//! exactly once with two producer processes and two async consumers, the pass-on of a wake spent
//! on a cancelled future (to an async and to a blocking consumer in other processes), an async
//! producer parked on a full ring, a SIGKILLed peer, and `open_async_*` with `mode=mpmc`. The
//! peers are this test binary re-run as a child (see `tests/common`).
#![cfg(feature = "tokio")]

mod common;

use common::*;
use shmpipe::aio::{open_async_receiver, open_async_sender};
use shmpipe::ring::mpmc;
use shmpipe::ring::RingKind;
use shmpipe::transport::shm::ShmConfig;
use shmpipe::{RecvError, SendError, Sender};
use std::future::Future;
use std::io::BufRead;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

const MAX: usize = 64;

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    child_watchdog(Duration::from_secs(120));
    let ring = std::env::var(RING_ENV).expect("ring name");
    let a = Args::from_env();
    match role.as_str() {
        "prod" => role_prod(&ring, &a),
        "cons" => role_cons(&ring, &a),
        "drain" => role_drain(&ring, &a),
        other => panic!("unknown child role {other}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn mcfg(ring: &str, cap: usize) -> ShmConfig {
    let mut cfg = ShmConfig::named(ring)
        .unwrap()
        .capacity(cap)
        .max_message(MAX)
        .kind(RingKind::Mpmc);
    cfg.open_timeout = Duration::from_secs(5);
    cfg
}

fn read_line() -> String {
    let mut l = String::new();
    if std::io::stdin().lock().read_line(&mut l).unwrap_or(0) == 0 {
        std::process::exit(98);
    }
    l.trim().to_string()
}

fn tagged(id: u32, seq: u32) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[..4].copy_from_slice(&id.to_le_bytes());
    m[4..].copy_from_slice(&seq.to_le_bytes());
    m
}

fn untag(m: &[u8]) -> (u32, u32) {
    assert_eq!(m.len(), 8, "a tagged message");
    (
        u32::from_le_bytes(m[..4].try_into().unwrap()),
        u32::from_le_bytes(m[4..].try_into().unwrap()),
    )
}

/// A blocking producer: `id`, `n` tagged messages after `GO`, then `DONE` and exit; `hold=1`
/// keeps the sender after `DONE` (until killed).
fn role_prod(ring: &str, a: &Args) {
    let id = a.num("id", 0) as u32;
    let mut tx = mcfg(ring, a.num("cap", 64) as usize)
        .open_mpmc_sender()
        .expect("child open_mpmc_sender");
    tell("READY");
    assert_eq!(read_line(), "GO");
    for seq in 0..a.num("n", 0) as u32 {
        send_ok(&mut tx, &tagged(id, seq));
    }
    tell("DONE");
    if a.flag("hold") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Counts wakes and remembers whether it was woken.
struct Flag(AtomicBool, Waker);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
        self.1.wake_by_ref();
    }
}

/// Polls `f` until its waker is first woken, then drops it unpolled (a cancellation right after
/// the wake-up, before the poll that would take the message). `Ok(output)` if `f` completed
/// without being woken (it found its result at once), `Err(())` once cancelled.
async fn cancel_on_wake<F: Future>(f: F) -> Result<F::Output, ()> {
    let mut f = Box::pin(f);
    let mut flag: Option<Arc<Flag>> = None;
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        if let Some(fl) = &flag {
            if fl.0.load(SeqCst) {
                return Poll::Ready(Err(()));
            }
        }
        let fl = Arc::new(Flag(AtomicBool::new(false), cx.waker().clone()));
        let waker = Waker::from(Arc::clone(&fl));
        flag = Some(fl);
        match Pin::as_mut(&mut f).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(r) => Poll::Ready(Ok(r)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A consumer: after `GO`, one receive. `async=1` awaits `recv_async` (else blocking `recv`);
/// `cancel=1` (async only) cancels it when first woken and says `CANCELLED`; otherwise says
/// `GOT <id> <seq>`. Says `PARKED` once the first poll is pending (async), `WAITING` just
/// before a blocking `recv`. Then waits for `END` and exits.
fn role_cons(ring: &str, a: &Args) {
    let mut rx = mcfg(ring, 64)
        .open_mpmc_receiver()
        .expect("child open_mpmc_receiver");
    tell("READY");
    assert_eq!(read_line(), "GO");
    let mut buf = Vec::new();
    if a.flag("async") {
        runtime().block_on(async {
            let mut told = false;
            let f = rx.recv_async(&mut buf);
            let mut f = std::pin::pin!(f);
            let polled = std::future::poll_fn(|cx| {
                let r = f.as_mut().poll(cx);
                if r.is_pending() && !told {
                    tell("PARKED");
                    told = true;
                }
                r
            });
            if a.flag("cancel") {
                match cancel_on_wake(polled).await {
                    Ok(r) => panic!("completed without a wake: {r:?}"),
                    Err(()) => tell("CANCELLED"),
                }
            } else {
                polled.await.expect("recv_async");
            }
        });
        if !a.flag("cancel") {
            let (id, seq) = untag(&buf);
            tell(&format!("GOT {id} {seq}"));
        }
    } else {
        let mut w = shmpipe::WaitStrategy::default();
        w.park_slice = Duration::from_millis(100);
        rx.set_wait_strategy(w);
        tell("WAITING");
        recv_ok(&mut rx, &mut buf);
        let (id, seq) = untag(&buf);
        tell(&format!("GOT {id} {seq}"));
    }
    assert_eq!(read_line(), "END");
}

/// A blocking consumer: after `GO`, receives `n` messages, says `GOT n`; `hold=1` then keeps
/// the receiver until killed, else waits for `END`.
fn role_drain(ring: &str, a: &Args) {
    let mut rx = mcfg(ring, a.num("cap", 4) as usize)
        .open_mpmc_receiver()
        .expect("child open_mpmc_receiver");
    tell("READY");
    assert_eq!(read_line(), "GO");
    let mut buf = Vec::new();
    let n = a.num("n", 0);
    for _ in 0..n {
        recv_ok(&mut rx, &mut buf);
    }
    tell(&format!("GOT {n}"));
    if a.flag("hold") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    assert_eq!(read_line(), "END");
}

#[test]
fn two_producer_processes_two_async_consumers_exactly_once_in_producer_order() {
    const N: u32 = 10_000;
    let ring = Ring::new("amp-once");
    let open = || {
        let mut rx = mcfg(&ring.name, 64).open_mpmc_receiver().unwrap();
        rx.set_expect_senders(2);
        rx
    };
    let (mut rx0, mut rx1) = (open(), open());
    let mut prods: Vec<Proc> = (0..2)
        .map(|id| {
            Proc::child(
                "prod",
                &ring.name,
                &[("id", id.to_string()), ("n", N.to_string())],
            )
        })
        .collect();
    for p in &mut prods {
        p.expect("READY");
    }
    for p in &mut prods {
        p.say("GO");
    }
    async fn consume(rx: &mut mpmc::Consumer) -> Vec<(u32, u32)> {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match rx.recv_async(&mut buf).await {
                Ok(()) => got.push(untag(&buf)),
                Err(RecvError::Disconnected) => return got,
                Err(e) => panic!("recv_async: {e:?}"),
            }
        }
    }
    let (a, b) = runtime().block_on(async {
        tokio::time::timeout(SOON, async { tokio::join!(consume(&mut rx0), consume(&mut rx1)) })
            .await
            .expect("consumers finished")
    });
    for p in &mut prods {
        p.expect("DONE");
        p.wait_success(SOON);
    }
    for got in [&a, &b] {
        for id in 0..2 {
            let seqs: Vec<u32> = got.iter().filter(|m| m.0 == id).map(|m| m.1).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "producer {id}'s order");
        }
    }
    let mut all: Vec<(u32, u32)> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    let expected: Vec<(u32, u32)> = (0..2).flat_map(|id| (0..N).map(move |s| (id, s))).collect();
    assert_eq!(all.len(), expected.len(), "each message once");
    assert_eq!(all, expected, "union == sent");
    eprintln!(
        "exactly once: consumer 0 got {}, consumer 1 got {}",
        a.len(),
        b.len()
    );
    drop((rx0, rx1));
    drop(prods);
    ring.assert_gone("after the test");
}

/// Consumer A (async, in a child) parks first; consumer B (`other_async`: async or blocking, in
/// another child) parks after it, so the futex wakes A's waiter thread (FIFO). A is cancelled
/// on that wake; the message must reach B well within B's 100 ms park slice.
fn pass_on(other_async: bool) -> Duration {
    let ring = Ring::new(if other_async { "amp-pass-a" } else { "amp-pass-b" });
    let mut tx = mcfg(&ring.name, 64).open_mpmc_sender().unwrap();
    let mut a = Proc::child(
        "cons",
        &ring.name,
        &[("async", "1".into()), ("cancel", "1".into())],
    );
    a.expect("READY");
    let mut b = Proc::child(
        "cons",
        &ring.name,
        &[("async", if other_async { "1" } else { "0" }.into())],
    );
    b.expect("READY");
    a.say("GO");
    a.expect("PARKED");
    // A's waiter thread queues on the word (it rebuilds its array when poked).
    std::thread::sleep(Duration::from_millis(5));
    b.say("GO");
    b.expect(if other_async { "PARKED" } else { "WAITING" });
    // The blocking B spins and yields briefly, then parks.
    std::thread::sleep(Duration::from_millis(10));
    let t0 = Instant::now();
    tx.send(&tagged(7, 1)).unwrap();
    let got = b.expect("GOT");
    let latency = t0.elapsed();
    assert_eq!(got, ["7", "1"]);
    a.expect("CANCELLED");
    a.say("END");
    b.say("END");
    a.wait_success(SOON);
    b.wait_success(SOON);
    eprintln!(
        "pass-on to {} consumer: {latency:?}",
        if other_async { "an async" } else { "a blocking" }
    );
    assert!(
        latency < Duration::from_millis(50),
        "the wake was not passed on: {latency:?}"
    );
    drop(tx);
    drop((a, b));
    ring.assert_gone("after the test");
    latency
}

#[test]
fn a_cancelled_woken_async_consumer_passes_the_wake_to_another_async_consumer() {
    pass_on(true);
}

#[test]
fn a_cancelled_woken_async_consumer_passes_the_wake_to_a_blocking_consumer() {
    pass_on(false);
}

#[test]
fn an_async_producer_parked_on_a_full_ring_is_woken_by_a_consumer_process() {
    let ring = Ring::new("amp-full");
    let mut tx = mcfg(&ring.name, 4).open_mpmc_sender().unwrap();
    let mut c = Proc::child("drain", &ring.name, &[("n", "20".into()), ("cap", "4".into())]);
    c.expect("READY");
    while tx.try_send(&tagged(0, 0)).is_ok() {}
    let pending = runtime().block_on(async {
        let mut pending = 0;
        let mut go = Some(&mut c);
        for seq in 0..16 {
            let msg = tagged(0, seq);
            let f = tx.send_async(&msg);
            let mut f = std::pin::pin!(f);
            let r = tokio::time::timeout(
                SOON,
                std::future::poll_fn(|cx| {
                    let r = f.as_mut().poll(cx);
                    if r.is_pending() {
                        pending += 1;
                        if let Some(c) = go.take() {
                            c.say("GO");
                        }
                    }
                    r
                }),
            )
            .await;
            assert_eq!(r, Ok(Ok(())));
        }
        pending
    });
    assert!(pending >= 1, "the producer never waited");
    c.expect("GOT");
    c.say("END");
    c.wait_success(SOON);
    drop(tx);
    drop(c);
    ring.assert_gone("after the test");
}

#[test]
fn a_sigkilled_peer_ends_the_async_wait_with_disconnected() {
    // A killed sender: the async receiver gets Disconnected.
    let ring = Ring::new("amp-kill-s");
    let mut rx = mcfg(&ring.name, 8).open_mpmc_receiver().unwrap();
    let mut p = Proc::child("prod", &ring.name, &[("n", "0".into()), ("hold", "1".into())]);
    p.expect("READY");
    p.say("GO");
    p.expect("DONE");
    let mut buf = Vec::new();
    let r = runtime().block_on(async {
        let killer = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            p.kill();
            Instant::now()
        };
        let (killed, r) = tokio::join!(
            killer,
            tokio::time::timeout(Duration::from_secs(5), rx.recv_async(&mut buf))
        );
        (killed.elapsed(), r)
    });
    assert_eq!(r.1, Ok(Err(RecvError::Disconnected)));
    assert!(r.0 < Duration::from_secs(2), "noticed after {:?}", r.0);
    drop(rx);
    drop(p);
    ring.assert_gone("after the killed sender");

    // A killed receiver: the async sender parked on a full ring gets Disconnected.
    let ring = Ring::new("amp-kill-r");
    let mut tx = mcfg(&ring.name, 4).open_mpmc_sender().unwrap();
    let mut c = Proc::child("drain", &ring.name, &[("n", "0".into()), ("hold", "1".into())]);
    c.expect("READY");
    c.say("GO");
    c.expect("GOT");
    while tx.try_send(&tagged(0, 0)).is_ok() {}
    let late = tagged(0, 1);
    let r = runtime().block_on(async {
        let killer = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.kill();
            Instant::now()
        };
        let (killed, r) = tokio::join!(
            killer,
            tokio::time::timeout(Duration::from_secs(5), tx.send_async(&late))
        );
        (killed.elapsed(), r)
    });
    assert_eq!(r.1, Ok(Err(SendError::Disconnected)));
    assert!(r.0 < Duration::from_secs(2), "noticed after {:?}", r.0);
    drop(tx);
    drop(c);
    ring.assert_gone("after the killed receiver");
}

#[test]
fn open_async_endpoints_accept_mode_mpmc() {
    let ring = Ring::new("amp-ep");
    let endpoint = format!("shm://{}?mode=mpmc", ring.name);
    let mut rx = open_async_receiver(&endpoint).unwrap();
    let mut rx2 = open_async_receiver(&endpoint).unwrap();
    let mut tx = open_async_sender(&endpoint).unwrap();
    assert_eq!(tx.messages_sent(), None);
    runtime().block_on(async {
        let mut buf = Vec::new();
        tx.send_async(b"one").await.unwrap();
        tx.send_async(b"two").await.unwrap();
        let mut got = Vec::new();
        rx.recv_async(&mut buf).await.unwrap();
        got.push(buf.clone());
        rx2.recv_async(&mut buf).await.unwrap();
        got.push(buf.clone());
        got.sort();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
        drop(tx);
        assert_eq!(rx.recv_async(&mut buf).await, Err(RecvError::Disconnected));
    });
    drop((rx, rx2));
    ring.assert_gone("after the endpoints");
}
