//! `zenoh://` (feature `zenoh`) across real processes, over loopback with explicit `listen` /
//! `connect` locators (no scouting): 100k checked messages in order; back-pressure from a
//! SIGSTOPped receiver (the sender waits, nothing is lost); a SIGKILLed sender (the receiver
//! drains, then `Disconnected`, never a hang); a SIGKILLed receiver (the sender `Disconnected`).
//! The peers are this test binary re-run as a child (see `tests/common`).
#![cfg(feature = "zenoh")]

mod common;

use common::*;
use shmpipe::{Peer, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX: usize = 256;

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    child_watchdog(Duration::from_secs(120));
    let endpoint = std::env::var(RING_ENV).expect("endpoint");
    let a = Args::from_env();
    match role.as_str() {
        "zsend" => child_send(&endpoint, &a),
        "zrecv" => child_recv(&endpoint, &a),
        other => panic!("unknown role {other}"),
    }
}

/// Sends `n` pattern messages, says `SENT n`, then holds (with `hold`) or drops the sender.
fn child_send(endpoint: &str, a: &Args) {
    let mut tx = shmpipe::open_sender(endpoint).expect("child open_sender");
    tell("READY");
    let mut buf = Vec::new();
    let n = a.num("n", 0);
    for seq in 0..n {
        pattern(seq, MAX, &mut buf);
        tx.send_timeout(&buf, SOON).expect("child send");
    }
    tell(&format!("SENT {n}"));
    if a.flag("hold") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Receives and checks pattern messages until the end of the stream; says `GOT count`.
fn child_recv(endpoint: &str, a: &Args) {
    let mut rx = shmpipe::open_receiver(endpoint).expect("child open_receiver");
    tell("READY");
    let (mut buf, mut expected) = (Vec::new(), Vec::new());
    let mut count = 0u64;
    let pace = a.num("pace_every", 0);
    loop {
        match rx.recv_timeout(&mut buf, SOON) {
            Ok(()) => {
                check_pattern(count, MAX, &buf, &mut expected);
                count += 1;
                if pace > 0 && count.is_multiple_of(pace) {
                    tell(&format!("AT {count}"));
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("child recv after {count}: {e:?}"),
        }
    }
    tell(&format!("GOT {count}"));
}

/// A `zenoh://` endpoint pair on a fresh loopback port: (listening side, connecting side).
fn endpoints(tag: &str) -> (String, String) {
    let port = free_port();
    let key = format!("shmpipe-it/{}", unique_name(tag));
    (
        format!("zenoh://{key}?listen=tcp/127.0.0.1:{port}&max_message={MAX}"),
        format!("zenoh://{key}?connect=tcp/127.0.0.1:{port}&max_message={MAX}"),
    )
}

#[test]
fn a_hundred_thousand_messages_arrive_in_order_and_the_stream_ends() {
    const N: u64 = 100_000;
    let (listen, connect) = endpoints("z-bulk");
    let mut rx = shmpipe::open_receiver(&listen).unwrap();
    let mut child = Proc::child("zsend", &connect, &[("n", N.to_string())]);
    child.expect("READY");
    let (mut buf, mut expected) = (Vec::new(), Vec::new());
    for seq in 0..N {
        rx.recv_timeout(&mut buf, SOON)
            .unwrap_or_else(|e| panic!("message {seq}: {e:?}"));
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    assert_eq!(child.expect("SENT"), [N.to_string()]);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.peer(), Some(Peer::Closed), "a clean end of stream");
    child.wait_success(SOON);
}

#[test]
fn a_stopped_receiver_holds_the_sender_back_and_loses_nothing() {
    const N: u64 = 60_000;
    let (listen, connect) = endpoints("z-stop");
    let mut child = Proc::child("zrecv", &listen, &[("pace_every", "1000".into())]);
    child.expect("READY");
    let mut tx = shmpipe::open_sender(&connect).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let sender = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for seq in 0..N {
            pattern(seq, MAX, &mut buf);
            tx.send_timeout(&buf, SOON).unwrap();
            counter.store(seq + 1, Relaxed);
        }
        tx
    });
    child.expect("AT");
    sigstop(&child);
    // Let the buffers (the receiver's, both sockets', Zenoh's queues) fill; then the sender must
    // stand still.
    let mut last = sent.load(Relaxed);
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = sent.load(Relaxed);
        if now == last {
            break;
        }
        last = now;
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the sender never stopped: {now} sent"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let held = sent.load(Relaxed);
    assert_eq!(held, last, "the sender went on while the receiver was stopped");
    assert!(
        held < N,
        "everything fitted in the buffers; the test needs more messages"
    );
    eprintln!("the sender stopped after {held} of {N} while the receiver was stopped");
    sigcont(&child);
    let tx = sender.join().unwrap();
    drop(tx);
    loop {
        let line = child.line(SOON);
        if let Some(got) = line.strip_prefix("GOT ") {
            assert_eq!(got, N.to_string(), "every message, in order, once");
            break;
        }
        assert!(line.starts_with("AT "), "child said {line:?}");
    }
    child.wait_success(SOON);
}

#[test]
fn a_killed_sender_ends_the_stream_after_the_drain_and_a_killed_receiver_ends_the_sender() {
    const N: u64 = 2000;
    let (listen, connect) = endpoints("z-kill");
    let mut rx = shmpipe::open_receiver(&listen).unwrap();
    let mut child = Proc::child("zsend", &connect, &[("n", N.to_string()), ("hold", "1".into())]);
    child.expect("READY");
    assert_eq!(child.expect("SENT"), [N.to_string()]);
    let (mut buf, mut expected) = (Vec::new(), Vec::new());
    for seq in 0..N {
        rx.recv_timeout(&mut buf, SOON).unwrap();
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    // Alive and silent: a wait times out.
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
    child.kill();
    let t0 = Instant::now();
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert!(t0.elapsed() < DEATH_BOUND, "noticed after {:?}", t0.elapsed());
    assert_eq!(rx.peer(), Some(Peer::Dead), "no end-of-stream sample came");
    drop(child);
    drop(rx);

    // The other way: the receiver is killed while the sender streams.
    let (listen, connect) = endpoints("z-kill-rx");
    let mut child = Proc::child("zrecv", &listen, &[("pace_every", "1000".into())]);
    child.expect("READY");
    let mut tx = shmpipe::open_sender(&connect).unwrap();
    let mut buf = Vec::new();
    let mut seq = 0;
    while seq < 2000 {
        pattern(seq, MAX, &mut buf);
        tx.send_timeout(&buf, SOON).unwrap();
        seq += 1;
    }
    child.expect("AT");
    child.kill();
    let t0 = Instant::now();
    let end = loop {
        pattern(seq, MAX, &mut buf);
        match tx.send_timeout(&buf, SOON) {
            Ok(()) => seq += 1,
            Err(e) => break e,
        }
        assert!(t0.elapsed() < SOON, "the sender never noticed");
    };
    assert_eq!(end, SendTimeoutError::Disconnected);
    assert!(t0.elapsed() < DEATH_BOUND, "noticed after {:?}", t0.elapsed());
}

#[test]
fn bad_zenoh_endpoints_and_oversize_messages_are_typed_errors() {
    for bad in [
        "zenoh://a/b?mode=router",
        "zenoh://a/b?colour=blue",
        "zenoh://a/b?max_message=0",
        "zenoh://a/b?mode=client",
        "zenoh://?listen=tcp/127.0.0.1:1",
    ] {
        assert!(shmpipe::open_sender(bad).is_err(), "{bad}");
    }
    let e = shmpipe::open_sender("zenoh://a/*")
        .err()
        .expect("wildcard sender");
    assert!(e.to_string().contains("wildcards"), "{e}");
    let (listen, _) = endpoints("z-big");
    let mut tx = shmpipe::open_sender(&listen).unwrap();
    assert!(matches!(
        tx.try_send(&[0u8; MAX + 1]),
        Err(shmpipe::TrySendError::TooLarge(_))
    ));
    // No subscriber yet: nothing to publish to.
    assert_eq!(tx.try_send(b"x"), Err(shmpipe::TrySendError::Full));
    assert_eq!(
        tx.send_timeout(b"x", Duration::from_millis(100)),
        Err(SendTimeoutError::Timeout)
    );
}

/// Ends inherited across fork(): every call in the child is `Forked` and its drops leave the
/// parent's session alone (Zenoh's threads do not exist in the child); the parent's stream goes
/// on and ends cleanly.
#[test]
fn ends_inherited_across_fork_are_refused_and_the_parents_stream_goes_on() {
    use shmpipe::{RecvError, SendError, TryRecvError, TrySendError};
    let (listen, connect) = endpoints("z-fork");
    let mut rx = shmpipe::open_receiver(&listen).unwrap();
    let mut tx = shmpipe::open_sender(&connect).unwrap();
    tx.send_timeout(b"before", SOON).unwrap();
    let code = in_forked_child(|| {
        let mut buf = Vec::new();
        fails(tx.try_send(b"child") == Err(TrySendError::Forked), 0)
            | fails(tx.send(b"child") == Err(SendError::Forked), 1)
            | fails(rx.try_recv(&mut buf) == Err(TryRecvError::Forked), 2)
            | fails(rx.recv(&mut buf) == Err(RecvError::Forked), 3)
            | {
                drop_inherited(&tx);
                drop_inherited(&rx);
                0
            }
    });
    assert_eq!(code, 0, "the forked child saw other results (bits {code:#b})");
    let mut buf = Vec::new();
    rx.recv_timeout(&mut buf, SOON).unwrap();
    assert_eq!(buf, b"before");
    tx.send_timeout(b"after", SOON).unwrap();
    rx.recv_timeout(&mut buf, SOON).unwrap();
    assert_eq!(buf, b"after", "nothing the child tried arrived");
    drop(tx);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.peer(), Some(Peer::Closed));
}
