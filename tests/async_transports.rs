//! Async ends of every transport through `shmpipe::aio::open_async_receiver` /
//! `open_async_sender` (feature `tokio`), across real processes: 20k checked messages each way
//! over unix, tcp and msgq (the child uses the blocking ends); a `select!` loop cancelling
//! `recv_async` on a unix socket while 64 KiB frames arrive in pieces; a peer's SIGKILL while
//! awaiting; 64 unix receivers awaited on one current-thread runtime with no extra thread;
//! broadcast rings (two async subscriber streams, an async publisher's sink); the `Stream`/`Sink`
//! adapters over every transport both ways; async ends across PID namespaces (a killed sender
//! there noticed here, a receiver there woken from here); a multi-thread runtime awaiting every
//! transport at once; blocking and async calls mixed on one end and on one ring. The peers are
//! this test binary re-run as a child (see `tests/common`).
#![cfg(feature = "tokio")]

mod common;

use common::*;
use shmpipe::aio::{open_async_receiver, open_async_sender, AsyncReceiver, AsyncSender};
use shmpipe::{Receiver, RecvError, SendError, Sender};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    child_watchdog(Duration::from_secs(120));
    let target = std::env::var(RING_ENV).expect("endpoint");
    let a = Args::from_env();
    match role.as_str() {
        "send" => child_send(&target, &a),
        "recv" => child_recv(&target, &a),
        "raw_unix" => child_raw_unix(&target, &a),
        "many_receivers" => child_many_receivers(&target, &a),
        "async_recv" => child_async_recv(&target, &a),
        other => panic!("unknown role {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Children (blocking ends, or raw frames)

/// Sends `n` pattern messages of up to `max` bytes (with `tagged`, each its sequence number as 8
/// bytes) with the blocking end, then (with `hold`) waits to be killed.
fn child_send(endpoint: &str, a: &Args) {
    let max = a.num("max", 1024) as usize;
    let mut tx = shmpipe::open_sender(endpoint).expect("child open_sender");
    tell("READY");
    let mut buf = Vec::new();
    for seq in 0..a.num("n", 0) {
        if a.flag("tagged") {
            buf.clear();
            buf.extend_from_slice(&seq.to_le_bytes());
        } else {
            pattern(seq, max, &mut buf);
        }
        tx.send(&buf).expect("child send");
    }
    tx.flush_deadline(None).expect("child flush");
    tell("SENT");
    if a.flag("hold") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Receives pattern messages with the blocking end until `Disconnected`, checking each.
fn child_recv(endpoint: &str, a: &Args) {
    let max = a.num("max", 1024) as usize;
    let mut rx = shmpipe::open_receiver(endpoint).expect("child open_receiver");
    tell("READY");
    let (mut buf, mut expected) = (Vec::new(), Vec::new());
    let mut count = 0u64;
    loop {
        match rx.recv(&mut buf) {
            Ok(()) => {
                check_pattern(count, max, &buf, &mut expected);
                count += 1;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("child recv: {e:?}"),
        }
    }
    tell(&format!("GOT {count}"));
}

/// As `child_recv`, with the async end awaited in a current-thread runtime of the child's own.
fn child_async_recv(endpoint: &str, a: &Args) {
    let max = a.num("max", 1024) as usize;
    let mut rx = open_async_receiver(endpoint).expect("child open_async_receiver");
    tell("READY");
    let count = current_thread().block_on(async {
        let (mut buf, mut expected) = (Vec::new(), Vec::new());
        let mut count = 0u64;
        loop {
            match rx.recv_async(&mut buf).await {
                Ok(()) => {
                    check_pattern(count, max, &buf, &mut expected);
                    count += 1;
                }
                Err(RecvError::Disconnected) => return count,
                Err(e) => panic!("child recv_async: {e:?} after {count}"),
            }
        }
    });
    tell(&format!("GOT {count}"));
}

/// Message `seq` of the cancellation test: `len` bytes, its sequence number first.
fn big(seq: u64, len: usize) -> Vec<u8> {
    let mut m = vec![(seq as u8) ^ 0xa5; len];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m[len - 8..].copy_from_slice(&seq.to_le_bytes());
    m
}

/// Writes `n` frames of `len` bytes in the documented wire format (u32 LE length, payload) on a
/// plain Unix stream, each in two writes, pausing 2 ms between the halves of every 8th frame: a
/// receiver then regularly holds a partial frame while it waits.
fn child_raw_unix(path: &str, a: &Args) {
    let (n, len) = (a.num("n", 0), a.num("len", 65536) as usize);
    let t0 = Instant::now();
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("connect {path}: {e}"),
        }
    };
    tell("READY");
    for seq in 0..n {
        let mut frame = (len as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&big(seq, len));
        let cut = 4 + len / 3;
        s.write_all(&frame[..cut]).unwrap();
        if seq % 8 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        s.write_all(&frame[cut..]).unwrap();
    }
    tell("SENT");
}

/// Opens `k` unix receivers `DIR/rI.sock` through `open_async_receiver`, then awaits `n`
/// messages on each as 64 tasks of one current-thread runtime; says the thread counts.
fn child_many_receivers(dir: &str, a: &Args) {
    let (k, n, max) = (a.num("k", 64), a.num("n", 0), a.num("max", 256) as usize);
    let before = threads_now();
    let rt = current_thread();
    let receivers: Vec<_> = (0..k)
        .map(|i| open_async_receiver(&format!("unix://{dir}/r{i}.sock")).expect("open"))
        .collect();
    tell("READY");
    let peak = rt.block_on(async {
        let tasks: Vec<_> = receivers
            .into_iter()
            .map(|mut rx| {
                tokio::spawn(async move {
                    let (mut buf, mut expected) = (Vec::new(), Vec::new());
                    let mut peak = 0;
                    for seq in 0..n {
                        rx.recv_async(&mut buf).await.expect("recv_async");
                        check_pattern(seq, max, &buf, &mut expected);
                        peak = peak.max(threads_now());
                    }
                    assert_eq!(rx.recv_async(&mut buf).await, Err(RecvError::Disconnected));
                    peak
                })
            })
            .collect();
        let mut peak = 0;
        for t in tasks {
            peak = peak.max(t.await.unwrap());
        }
        peak
    });
    tell(&format!("THREADS {before} {peak}"));
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An endpoint of each kind, and what must be kept alive (and cleaned) with it.
enum Place {
    /// A shared-memory ring, and the query that says its kind (`mode=...`).
    Shm(Ring, &'static str),
    Unix(SockDir),
    Tcp(u16),
    Msgq(Queue),
}

impl Place {
    fn new(scheme: &str, tag: &str) -> Place {
        match scheme {
            "unix" => Place::Unix(SockDir::new(tag)),
            "tcp" => Place::Tcp(free_port()),
            "msgq" => Place::Msgq(Queue::new(tag)),
            "shm" => Place::Shm(Ring::new(tag), "mode=spsc"),
            "mpmc" => Place::Shm(Ring::new(tag), "mode=mpmc"),
            // Its publisher waits for its first subscriber, who then misses nothing.
            "broadcast" => Place::Shm(Ring::new(tag), "mode=broadcast&subscribers=1"),
            _ => unreachable!(),
        }
    }

    fn endpoint(&self, max: usize) -> String {
        match self {
            Place::Shm(r, mode) => format!("shm://{}?{mode}&capacity=64&max_message={max}", r.name),
            Place::Unix(d) => format!("unix://{}?max_message={max}", d.path("s.sock")),
            Place::Tcp(port) => format!("tcp://127.0.0.1:{port}?max_message={max}"),
            Place::Msgq(q) => format!("{}?max_message={max}", q.endpoint()),
        }
    }

    fn assert_clean(&self) {
        match self {
            Place::Shm(r, _) => r.assert_gone("after both ends"),
            Place::Unix(d) => d.assert_empty(),
            Place::Tcp(_) => {}
            Place::Msgq(q) => assert!(!q.exists(), "queue {} left behind", q.name),
        }
    }
}

const BULK: u64 = 20_000;
const BULK_MAX: usize = 2000;

/// A blocking child sends `BULK` messages; they are awaited here with `recv_async`.
fn child_to_parent(scheme: &str) {
    let place = Place::new(scheme, &format!("a2-c2p-{scheme}"));
    let ep = place.endpoint(BULK_MAX);
    let mut rx = open_async_receiver(&ep).unwrap();
    let mut child = Proc::child(
        "send",
        &ep,
        &[("n", BULK.to_string()), ("max", BULK_MAX.to_string())],
    );
    child.expect("READY");
    let count = current_thread().block_on(async {
        let (mut buf, mut expected) = (Vec::new(), Vec::new());
        let mut count = 0u64;
        loop {
            match tokio::time::timeout(SOON, rx.recv_async(&mut buf))
                .await
                .expect("stalled")
            {
                Ok(()) => {
                    check_pattern(count, BULK_MAX, &buf, &mut expected);
                    count += 1;
                }
                Err(RecvError::Disconnected) => break count,
                Err(e) => panic!("recv_async: {e:?} after {count}"),
            }
        }
    });
    assert_eq!(count, BULK);
    child.wait_success(SOON);
    drop(rx);
    place.assert_clean();
}

/// `BULK` messages are sent here with `send_async` to a blocking child, which checks them.
fn parent_to_child(scheme: &str) {
    let place = Place::new(scheme, &format!("a2-p2c-{scheme}"));
    let ep = place.endpoint(BULK_MAX);
    let mut child = Proc::child("recv", &ep, &[("max", BULK_MAX.to_string())]);
    child.expect("READY");
    let mut tx = open_async_sender(&ep).unwrap();
    current_thread().block_on(async {
        let mut buf = Vec::new();
        for seq in 0..BULK {
            pattern(seq, BULK_MAX, &mut buf);
            tokio::time::timeout(SOON, tx.send_async(&buf))
                .await
                .expect("stalled")
                .unwrap_or_else(|e| panic!("send_async {seq}: {e:?}"));
        }
    });
    drop(tx);
    assert_eq!(child.expect("GOT"), [BULK.to_string()]);
    child.wait_success(SOON);
    place.assert_clean();
}

#[test]
fn unix_20k_messages_child_to_parent_through_recv_async() {
    child_to_parent("unix");
}

#[test]
fn tcp_20k_messages_child_to_parent_through_recv_async() {
    child_to_parent("tcp");
}

#[test]
fn msgq_20k_messages_child_to_parent_through_recv_async() {
    child_to_parent("msgq");
}

#[test]
fn unix_20k_messages_parent_to_child_through_send_async() {
    parent_to_child("unix");
}

#[test]
fn tcp_20k_messages_parent_to_child_through_send_async() {
    parent_to_child("tcp");
}

#[test]
fn msgq_20k_messages_parent_to_child_through_send_async() {
    parent_to_child("msgq");
}

/// `recv_async` raced against a 300 µs sleep in `select!`, 10k frames of 64 KiB written in two
/// pieces (some 2 ms apart): many cancellations fall while a frame is half received, and no byte
/// is lost or repeated.
#[test]
fn unix_recv_async_cancelled_in_select_loses_and_duplicates_nothing() {
    const N: u64 = 10_000;
    const LEN: usize = 64 * 1024;
    let dir = SockDir::new("a2-cancel");
    let path = dir.path("s.sock");
    let mut rx = open_async_receiver(&format!("unix://{path}?max_message={LEN}")).unwrap();
    let mut child = Proc::child(
        "raw_unix",
        &path,
        &[("n", N.to_string()), ("len", LEN.to_string())],
    );
    child.expect("READY");
    let (count, cancelled) = current_thread().block_on(async {
        let mut buf = Vec::new();
        let (mut count, mut cancelled) = (0u64, 0u64);
        let t0 = Instant::now();
        loop {
            assert!(t0.elapsed() < SOON, "stalled after {count}");
            tokio::select! {
                r = rx.recv_async(&mut buf) => match r {
                    Ok(()) => {
                        assert!(buf == big(count, LEN), "message {count} differs (starts {:02x?})", &buf[..8]);
                        count += 1;
                    }
                    Err(RecvError::Disconnected) => break (count, cancelled),
                    Err(e) => panic!("recv_async: {e:?} after {count}"),
                },
                _ = tokio::time::sleep(Duration::from_micros(300)) => cancelled += 1,
            }
        }
    });
    eprintln!("cancellation test: {count} messages, {cancelled} cancelled recv_async futures");
    assert_eq!(count, N);
    assert!(
        cancelled >= 200,
        "only {cancelled} cancellations: the test did not test"
    );
    child.wait_success(SOON);
    drop(rx);
    dir.assert_empty();
}

/// A peer killed while the other end awaits: `Disconnected` within 2 s.
fn killed_peer_ends_recv_async(scheme: &str) {
    let place = Place::new(scheme, &format!("a2-kill-{scheme}"));
    let ep = place.endpoint(256);
    let mut rx = open_async_receiver(&ep).unwrap();
    let mut child = Proc::child(
        "send",
        &ep,
        &[("n", "10".into()), ("max", "256".into()), ("hold", "1".into())],
    );
    child.expect("READY");
    child.expect("SENT");
    let pid = child.pid;
    let rt = current_thread();
    let (took, r) = rt.block_on(async {
        let mut buf = Vec::new();
        for _ in 0..10 {
            rx.recv_async(&mut buf).await.unwrap();
        }
        // Awaiting, with nothing more to come, when the child is killed.
        let killer = after(Duration::from_millis(100), move || {
            // SAFETY: plain syscall on our own child, not yet reaped.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        });
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv_async(&mut buf)).await;
        let killed_at = killer.join().unwrap();
        (killed_at.elapsed(), r)
    });
    assert_eq!(r, Ok(Err(RecvError::Disconnected)), "{scheme}");
    eprintln!("{scheme}: killed sender noticed {took:?} after the kill");
    assert!(
        took < Duration::from_secs(2),
        "{scheme}: noticed {took:?} after the kill"
    );
    let _ = child.wait(SOON);
    drop(rx);
    place.assert_clean();
}

#[test]
fn unix_sigkilled_sender_ends_recv_async_with_disconnected() {
    killed_peer_ends_recv_async("unix");
}

#[test]
fn tcp_sigkilled_sender_ends_recv_async_with_disconnected() {
    killed_peer_ends_recv_async("tcp");
}

#[test]
fn msgq_sigkilled_sender_ends_recv_async_with_disconnected() {
    killed_peer_ends_recv_async("msgq");
}

/// A receiver killed while `send_async` waits for room on a full unix socket: `Disconnected`.
#[test]
fn unix_sigkilled_receiver_ends_a_waiting_send_async() {
    let dir = SockDir::new("a2-kill-rx");
    let ep = format!("unix://{}?max_message=65536", dir.path("s.sock"));
    let mut child = Proc::child("recv", &ep, &[("max", "65536".into())]);
    child.expect("READY");
    // SIGSTOP: the child reads nothing more, so the socket fills.
    // SAFETY: plain syscall on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.pid, libc::SIGSTOP) }, 0);
    let mut tx = open_async_sender(&ep).unwrap();
    let pid = child.pid;
    let r = current_thread().block_on(async {
        let msg = vec![7u8; 65536];
        let killer = after(Duration::from_millis(300), move || {
            // SAFETY: plain syscall on our own child, not yet reaped.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        });
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                tx.send_async(&msg).await?;
            }
        })
        .await;
        let killed_at = killer.join().unwrap();
        assert!(killed_at.elapsed() < Duration::from_secs(2));
        r
    });
    assert_eq!(r, Ok(Err::<(), _>(SendError::Disconnected)));
    let _ = child.wait(SOON);
}

/// 64 unix receivers awaited at once by one current-thread runtime in a child: its thread count
/// rises by at most 2 (the reactor needs no thread of its own).
#[test]
fn sixty_four_unix_receivers_on_one_thread() {
    const K: usize = 64;
    const N: u64 = 200;
    const MAX: usize = 256;
    let dir = SockDir::new("a2-many");
    let dir_path = dir.0.to_str().unwrap().to_string();
    let mut child = Proc::child(
        "many_receivers",
        &dir_path,
        &[
            ("k", K.to_string()),
            ("n", N.to_string()),
            ("max", MAX.to_string()),
        ],
    );
    child.expect("READY");
    let mut senders: Vec<_> = (0..K)
        .map(|i| shmpipe::open_sender(&format!("unix://{dir_path}/r{i}.sock?max_message={MAX}")).unwrap())
        .collect();
    let mut buf = Vec::new();
    for seq in 0..N {
        pattern(seq, MAX, &mut buf);
        for tx in &mut senders {
            tx.send(&buf).unwrap();
        }
    }
    drop(senders);
    let said = child.expect("THREADS");
    let (before, peak): (usize, usize) = (said[0].parse().unwrap(), said[1].parse().unwrap());
    eprintln!("64 receivers: threads {before} before the runtime, {peak} at most while awaiting");
    assert!(peak <= before + 2, "threads rose from {before} to {peak}");
    child.wait_success(SOON);
    dir.assert_empty();
}

/// One blocking publisher process, two async subscribers here, each read as a `Stream`: both get
/// every message in order, and both streams end after the publisher's drop (its end of stream).
#[test]
fn broadcast_a_blocking_publisher_child_streams_to_two_async_subscriber_streams() {
    use futures_util::StreamExt;
    let ring = Ring::new("a2-bc-streams");
    let ep = format!(
        "shm://{}?mode=broadcast&subscribers=2&capacity=64&max_message={BULK_MAX}",
        ring.name
    );
    let a = open_async_receiver(&ep).unwrap().into_stream();
    let b = open_async_receiver(&ep).unwrap().into_stream();
    let mut child = Proc::child(
        "send",
        &ep,
        &[("n", BULK.to_string()), ("max", BULK_MAX.to_string())],
    );
    child.expect("READY");
    let check = |stream: shmpipe::aio::RecvStream<Box<dyn AsyncReceiver + Send>>| async move {
        let mut expected = Vec::new();
        let mut count = 0u64;
        let mut stream = std::pin::pin!(stream);
        while let Some(m) = tokio::time::timeout(SOON, stream.next()).await.expect("stalled") {
            check_pattern(count, BULK_MAX, &m.unwrap(), &mut expected);
            count += 1;
        }
        count
    };
    let (na, nb) = current_thread().block_on(async { tokio::join!(check(a), check(b)) });
    assert_eq!((na, nb), (BULK, BULK));
    child.wait_success(SOON);
    ring.assert_gone("after the publisher and both streams");
}

/// An async publisher here, fed through its `Sink`, and a blocking subscriber in a child that
/// is pid 1 of its own PID namespace (where it can): everything arrives, the sink's close is the
/// end of the stream, and the ring is gone after both.
#[test]
fn broadcast_an_async_publisher_sink_feeds_a_subscriber_in_another_pid_namespace() {
    let place = Place::new("broadcast", "a2-bc-sink");
    let ep = place.endpoint(BULK_MAX);
    let args = [("max", BULK_MAX.to_string())];
    let mut child = if can_unshare() {
        Proc::child_in_pid_namespace("recv", &ep, &args)
    } else {
        Proc::child("recv", &ep, &args)
    };
    child.expect("READY");
    sink_all(&ep, BULK);
    assert_eq!(child.expect("GOT"), [BULK.to_string()]);
    child.wait_success(SOON);
    place.assert_clean();
}

/// Sends `n` pattern messages to `ep` through `open_async_sender(..).into_sink()`, then closes
/// the sink.
fn sink_all(ep: &str, n: u64) {
    use futures_util::SinkExt;
    let mut sink = open_async_sender(ep).unwrap().into_sink();
    current_thread().block_on(async {
        let mut buf = Vec::new();
        for seq in 0..n {
            pattern(seq, BULK_MAX, &mut buf);
            tokio::time::timeout(SOON, sink.send(&buf))
                .await
                .expect("stalled")
                .unwrap_or_else(|e| panic!("sink send {seq}: {e:?}"));
        }
        sink.close().await.unwrap();
        assert_eq!(sink.send(b"after").await, Err(SendError::Disconnected));
    });
}

/// Every transport through the `Sink` one way and the `Stream` the other, a blocking child at the
/// far end: all checked, in order, each stream ended by the far end's close.
#[test]
fn sink_and_stream_carry_every_transport_both_ways() {
    use futures_util::StreamExt;
    const N: u64 = 3000;
    for scheme in ["shm", "mpmc", "broadcast", "msgq", "unix", "tcp"] {
        let place = Place::new(scheme, &format!("a2-ss-{scheme}"));
        let ep = place.endpoint(BULK_MAX);
        let mut child = Proc::child("recv", &ep, &[("max", BULK_MAX.to_string())]);
        child.expect("READY");
        sink_all(&ep, N);
        assert_eq!(child.expect("GOT"), [N.to_string()], "{scheme}");
        child.wait_success(SOON);
        place.assert_clean();

        let place = Place::new(scheme, &format!("a2-ss2-{scheme}"));
        let ep = place.endpoint(BULK_MAX);
        let stream = open_async_receiver(&ep).unwrap().into_stream();
        let mut child = Proc::child(
            "send",
            &ep,
            &[("n", N.to_string()), ("max", BULK_MAX.to_string())],
        );
        child.expect("READY");
        let count = current_thread().block_on(async {
            let mut stream = std::pin::pin!(stream);
            let (mut count, mut expected) = (0u64, Vec::new());
            while let Some(m) = tokio::time::timeout(SOON, stream.next()).await.expect("stalled") {
                let m = m.unwrap_or_else(|e| panic!("{scheme}: {e:?} after {count}"));
                check_pattern(count, BULK_MAX, &m, &mut expected);
                count += 1;
            }
            count
        });
        assert_eq!(count, N, "{scheme}");
        child.wait_success(SOON);
        place.assert_clean();
    }
}

/// An async receiver whose sender is pid 1 of another PID namespace: the stream, then the
/// sender's SIGKILL noticed within the death bound (its pid means nothing here; the kernel's
/// SEM_UNDO tokens do). Then the other way round: an async receiver in the namespace is woken
/// by a sender here, across the namespace, and sees the end of the stream.
#[test]
fn async_ends_across_pid_namespaces_stream_and_notice_a_killed_peer() {
    if !can_unshare() {
        return;
    }
    const N: u64 = 5000;
    for scheme in ["shm", "mpmc", "broadcast"] {
        let place = Place::new(scheme, &format!("a2-ns-{scheme}"));
        let ep = place.endpoint(BULK_MAX);
        let mut rx = open_async_receiver(&ep).unwrap();
        let child = Proc::child_in_pid_namespace(
            "send",
            &ep,
            &[
                ("n", N.to_string()),
                ("max", BULK_MAX.to_string()),
                ("hold", "1".into()),
            ],
        );
        let mut child = child;
        child.expect("READY");
        current_thread().block_on(async {
            let (mut buf, mut expected) = (Vec::new(), Vec::new());
            for seq in 0..N {
                tokio::time::timeout(SOON, rx.recv_async(&mut buf))
                    .await
                    .expect("stalled")
                    .unwrap_or_else(|e| panic!("{scheme} {seq}: {e:?}"));
                check_pattern(seq, BULK_MAX, &buf, &mut expected);
            }
            child.expect("SENT");
            // Still alive: a wait times out rather than ending.
            let r = tokio::time::timeout(Duration::from_millis(300), rx.recv_async(&mut buf)).await;
            assert!(r.is_err(), "{scheme}: {r:?} while the sender lives");
            child.kill();
            let t0 = Instant::now();
            let r = tokio::time::timeout(SOON, rx.recv_async(&mut buf))
                .await
                .expect("stalled");
            assert_eq!(r, Err(RecvError::Disconnected), "{scheme}");
            assert!(
                t0.elapsed() < DEATH_BOUND,
                "{scheme}: noticed after {:?}",
                t0.elapsed()
            );
        });
        drop(rx);
        place.assert_clean();

        let place = Place::new(scheme, &format!("a2-ns2-{scheme}"));
        let ep = place.endpoint(BULK_MAX);
        let mut child = Proc::child_in_pid_namespace("async_recv", &ep, &[("max", BULK_MAX.to_string())]);
        child.expect("READY");
        let mut tx = shmpipe::open_sender(&ep).unwrap();
        let mut buf = Vec::new();
        for seq in 0..N {
            pattern(seq, BULK_MAX, &mut buf);
            tx.send(&buf).unwrap();
            if seq % 500 == 0 {
                // Let the child's receiver park, so the next message is a wake across namespaces.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop(tx);
        assert_eq!(child.expect("GOT"), [N.to_string()], "{scheme}");
        child.wait_success(SOON);
        place.assert_clean();
    }
}

/// A multi-thread runtime (2 workers) awaiting six channels at once, one of each kind, each fed
/// by a blocking child: the tasks are spawned (so their futures are `Send`) and may move between
/// the workers between polls; every message arrives checked and in order, every stream ends.
#[test]
fn a_multi_thread_runtime_awaits_every_transport_at_once() {
    const N: u64 = 3000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schemes: [&'static str; 6] = ["shm", "mpmc", "broadcast", "msgq", "unix", "tcp"];
    let places: Vec<Place> = schemes
        .iter()
        .map(|s| Place::new(s, &format!("a2-mt-{s}")))
        .collect();
    let mut children = Vec::new();
    let mut tasks = Vec::new();
    for (&scheme, place) in schemes.iter().zip(&places) {
        let ep = place.endpoint(BULK_MAX);
        let mut rx = open_async_receiver(&ep).unwrap();
        tasks.push(rt.spawn(async move {
            let (mut buf, mut expected) = (Vec::new(), Vec::new());
            let mut count = 0u64;
            loop {
                match rx.recv_async(&mut buf).await {
                    Ok(()) => {
                        check_pattern(count, BULK_MAX, &buf, &mut expected);
                        count += 1;
                    }
                    Err(RecvError::Disconnected) => return count,
                    Err(e) => panic!("{scheme}: {e:?} after {count}"),
                }
            }
        }));
        let args = [("n", N.to_string()), ("max", BULK_MAX.to_string())];
        children.push(Proc::child("send", &ep, &args));
    }
    for child in &mut children {
        child.expect("READY");
    }
    let counts = rt.block_on(async {
        let mut counts = Vec::new();
        for t in tasks {
            counts.push(tokio::time::timeout(SOON, t).await.expect("stalled").unwrap());
        }
        counts
    });
    assert_eq!(counts, vec![N; schemes.len()]);
    for mut child in children {
        child.wait_success(SOON);
    }
    drop(rt);
    for place in &places {
        place.assert_clean();
    }
}

/// Blocking and async calls on one end, taking turns: the SPSC receiver here takes every third
/// message with the blocking `recv_timeout` and the others with `recv_async`, from a blocking
/// child; and the MPMC ring has one async and one blocking receiver in this process sharing the
/// stream (each message exactly once between them).
#[test]
fn blocking_and_async_calls_mix_on_one_end_and_on_one_ring() {
    use shmpipe::transport::shm::ShmConfig;
    const N: u64 = 5000;
    let place = Place::new("shm", "a2-mix");
    let ep = place.endpoint(BULK_MAX);
    let Ok(shmpipe::endpoint::Endpoint::Shm(cfg)) = shmpipe::endpoint::Endpoint::parse(&ep) else {
        panic!("{ep}")
    };
    let mut rx = cfg.open_receiver().unwrap();
    let mut child = Proc::child(
        "send",
        &ep,
        &[("n", N.to_string()), ("max", BULK_MAX.to_string())],
    );
    child.expect("READY");
    current_thread().block_on(async {
        let (mut buf, mut expected) = (Vec::new(), Vec::new());
        for seq in 0..N {
            if seq % 3 == 0 {
                rx.recv_timeout(&mut buf, SOON).unwrap();
            } else {
                rx.recv_async(&mut buf).await.unwrap();
            }
            check_pattern(seq, BULK_MAX, &buf, &mut expected);
        }
        assert_eq!(rx.recv_async(&mut buf).await, Err(RecvError::Disconnected));
    });
    child.wait_success(SOON);
    drop(rx);
    place.assert_clean();

    let ring = Ring::new("a2-mix-mpmc");
    let cfg = ShmConfig::named(&ring.name)
        .unwrap()
        .kind(shmpipe::ring::RingKind::Mpmc)
        .capacity(64)
        .max_message(64);
    let mut async_rx = cfg.open_mpmc_receiver().unwrap();
    let mut blocking_rx = cfg.open_mpmc_receiver().unwrap();
    let mut child = Proc::child(
        "send",
        &format!("shm://{}?mode=mpmc", ring.name),
        &[("n", N.to_string()), ("tagged", "1".into())],
    );
    child.expect("READY");
    let blocking = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while blocking_rx.recv(&mut buf).is_ok() {
            got.push(u64::from_le_bytes(buf[..8].try_into().unwrap()));
        }
        got
    });
    let mut got = current_thread().block_on(async {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while async_rx.recv_async(&mut buf).await.is_ok() {
            got.push(u64::from_le_bytes(buf[..8].try_into().unwrap()));
        }
        got
    });
    let async_count = got.len();
    got.extend(blocking.join().unwrap());
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "each message exactly once");
    eprintln!("async receiver took {async_count} of {N}");
    child.wait_success(SOON);
    drop(async_rx);
    ring.assert_gone("after the mixed receivers");
}

/// `send_async` of 256 KiB frames (more than a Unix socket buffers) cancelled by a 1 ms timeout
/// while a slow reader drains: a future dropped before its frame was accepted sent nothing, one
/// dropped after sent it (the rest pending, written first by the next call), and
/// `messages_sent()` tells which; the reader gets exactly the sent messages, in order, none cut.
#[test]
fn unix_send_async_cancelled_mid_frame_sends_whole_frames_once() {
    use shmpipe::transport::socket::SocketConfig;
    const N: u64 = 300;
    const LEN: usize = 256 * 1024;
    let dir = SockDir::new("a2-send-cancel");
    let cfg = SocketConfig::unix(dir.path("s.sock")).max_message(LEN);
    let mut rx = cfg.open_receiver().unwrap();
    let mut tx = cfg.open_sender().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match rx.recv(&mut buf) {
                Ok(()) => {
                    let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    assert!(buf == big(seq, LEN), "message {seq} cut or altered");
                    got.push(seq);
                    std::thread::sleep(Duration::from_millis(4));
                }
                Err(RecvError::Disconnected) => return got,
                Err(e) => panic!("recv: {e:?}"),
            }
        }
    });
    let (sent, dropped_unsent, dropped_accepted) = current_thread().block_on(async {
        let (mut sent, mut unsent, mut accepted) = (Vec::new(), 0u64, 0u64);
        for seq in 0..N {
            let msg = big(seq, LEN);
            let before = tx.messages_sent();
            match tokio::time::timeout(Duration::from_millis(1), tx.send_async(&msg)).await {
                Ok(r) => {
                    r.unwrap();
                    sent.push(seq);
                }
                Err(_) if tx.messages_sent() == before + 1 => {
                    assert!(tx.pending_bytes() > 0, "accepted, and cancelled while writing it");
                    accepted += 1;
                    sent.push(seq);
                }
                Err(_) => {
                    assert_eq!(tx.messages_sent(), before);
                    unsent += 1;
                }
            }
        }
        tx.flush_async().await.unwrap();
        (sent, unsent, accepted)
    });
    drop(tx);
    let got = reader.join().unwrap();
    eprintln!(
        "send cancellation: {} sent, {dropped_accepted} dropped after acceptance, {dropped_unsent} dropped before",
        sent.len()
    );
    assert_eq!(got, sent);
    assert!(
        dropped_accepted >= 10,
        "only {dropped_accepted} futures dropped mid-frame"
    );
    dir.assert_empty();
}

/// `listen=sender`: an async sender that listens waits (in the reactor, on its listener) for the
/// receiver to connect; an async receiver that connects to a listening blocking sender.
#[test]
fn unix_async_ends_on_the_listening_and_the_connecting_side() {
    const N: u64 = 1000;
    let dir = SockDir::new("a2-listen");
    let ep = format!("unix://{}?listen=sender&max_message=512", dir.path("s.sock"));
    let mut tx = open_async_sender(&ep).unwrap();
    let ep2 = ep.clone();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let mut rx = shmpipe::open_receiver(&ep2).unwrap();
        let (mut buf, mut expected) = (Vec::new(), Vec::new());
        let mut n = 0;
        while rx.recv(&mut buf).is_ok() {
            check_pattern(n, 512, &buf, &mut expected);
            n += 1;
        }
        n
    });
    current_thread().block_on(async {
        let mut buf = Vec::new();
        for seq in 0..N {
            pattern(seq, 512, &mut buf);
            tokio::time::timeout(SOON, tx.send_async(&buf))
                .await
                .unwrap()
                .unwrap();
        }
    });
    drop(tx);
    assert_eq!(reader.join().unwrap(), N);

    let ep = format!("unix://{}?listen=sender&max_message=512", dir.path("t.sock"));
    let mut tx = shmpipe::open_sender(&ep).unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for seq in 0..N {
            pattern(seq, 512, &mut buf);
            tx.send(&buf).unwrap();
        }
    });
    let mut rx = open_async_receiver(&ep).unwrap();
    let n = current_thread().block_on(async {
        let (mut buf, mut expected) = (Vec::new(), Vec::new());
        let mut n = 0;
        loop {
            match tokio::time::timeout(SOON, rx.recv_async(&mut buf)).await.unwrap() {
                Ok(()) => check_pattern(n, 512, &buf, &mut expected),
                Err(RecvError::Disconnected) => break n,
                Err(e) => panic!("recv_async: {e:?}"),
            }
            n += 1;
        }
    });
    assert_eq!(n, N);
    writer.join().unwrap();
    drop(rx);
    dir.assert_empty();
}
