//! Peers in another PID namespace, as containers of one pod are (they share the IPC namespace,
//! not the PID namespace): each peer here runs under `unshare --pid --fork --mount-proc`, where it
//! is pid 1, sees its own `/proc`, and cannot see our pids, nor we its. A live peer there must
//! never be taken for dead (no recycled ring, no message lost, no MPMC member reaped), and its
//! death by SIGKILL must still be noticed within the usual bound, in both roles, for SPSC and
//! MPMC rings and message queues.
//!
//! Needs root for `unshare` (CI runs as root and sets `SHMPIPE_REQUIRE_UNSHARE=1`); skipped, with
//! a line saying so, elsewhere.

mod common;

use common::*;
use shmpipe::ring::mpmc::{Consumer, Producer};
use shmpipe::ring::RingKind;
use shmpipe::transport::msgq::MsgqConfig;
use shmpipe::transport::shm::SegmentAddr;
use shmpipe::{Peer, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("ep_send") => ep_send(),
        Ok("ep_recv") => ep_recv(),
        _ => child_main(),
    }
}

/// Opens the sending end of the endpoint in `RING_ENV`, says `READY <pid as seen here>`, sends
/// `n` messages `<tag>-<seq>`, says `SENT n`, then holds the end until killed (`hold=1`), or
/// waits for `GO`, drops it and says `DONE`.
fn ep_send() {
    let a = Args::from_env();
    let endpoint = std::env::var(RING_ENV).unwrap();
    let mut tx = shmpipe::open_sender(&endpoint).expect("child open_sender");
    tell(&format!("READY {}", std::process::id()));
    let tag = a.get("tag").unwrap_or("m").to_string();
    let n = a.num("n", 0);
    for seq in 0..n {
        if let Err(e) = tx.send_timeout(format!("{tag}-{seq}").as_bytes(), Duration::from_secs(30)) {
            tell(&format!("ERR {e:?} {seq}"));
            return;
        }
    }
    tell(&format!("SENT {n}"));
    if a.flag("hold") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let line = read_line();
    assert_eq!(line, "GO");
    drop(tx);
    tell("DONE");
}

/// Opens the receiving end, says `READY <pid>`, receives until the stream ends (or `n`
/// messages), checking each tag's messages arrive in order, and says `GOT <count> <end>`;
/// with `hold=1` it then holds the end until killed.
fn ep_recv() {
    let a = Args::from_env();
    let endpoint = std::env::var(RING_ENV).unwrap();
    let mut rx = shmpipe::open_receiver(&endpoint).expect("child open_receiver");
    tell(&format!("READY {}", std::process::id()));
    let limit = a.num("n", u64::MAX);
    let mut next = BTreeMap::<String, u64>::new();
    let mut buf = Vec::new();
    let mut count = 0;
    let end = loop {
        if count == limit {
            break "Limit".to_string();
        }
        match rx.recv_timeout(&mut buf, Duration::from_secs(30)) {
            Ok(()) => {
                let text = String::from_utf8(buf.clone()).unwrap();
                let (tag, seq) = text.rsplit_once('-').unwrap();
                let want = next.entry(tag.to_string()).or_insert(0);
                assert_eq!(seq.parse::<u64>().unwrap(), *want, "out of order: {text}");
                *want += 1;
                count += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break "Disconnected".to_string(),
            Err(e) => break format!("{e:?}"),
        }
    };
    tell(&format!("GOT {count} {end}"));
    if a.flag("hold") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn read_line() -> String {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
        std::process::exit(98);
    }
    line.trim().to_string()
}

/// A child in a PID namespace of its own running `role` on `endpoint`; checks that it really is
/// (it sees itself as pid 1, we see it under another pid).
fn namespaced(role: &str, endpoint: &str, args: &[(&str, String)]) -> Proc {
    let mut p = Proc::child_in_pid_namespace(role, endpoint, args);
    let ready = p.expect("READY");
    assert_eq!(ready, ["1"], "the child is pid 1 of its own PID namespace");
    p
}

/// SIGKILLs `p` (the `unshare` process; `--kill-child` takes the namespaced child with it) and
/// reaps it. Returns when the kill was sent.
fn kill_namespace(p: &mut Proc) -> Instant {
    let at = Instant::now();
    p.kill();
    let status = p.wait(SOON);
    assert!(!status.success());
    at
}

/// Asserts that a death at `killed` was noticed (just now) within the bound.
fn assert_noticed(killed: Instant) {
    let lag = killed.elapsed();
    assert!(lag < DEATH_BOUND, "noticed {lag:?} after the kill");
}

fn recv_text(rx: &mut dyn Receiver, buf: &mut Vec<u8>) -> String {
    rx.recv_timeout(buf, SOON).expect("message");
    String::from_utf8(buf.clone()).unwrap()
}

#[test]
fn spsc_sender_in_another_pid_namespace_is_alive_until_killed() {
    if !can_unshare() {
        return;
    }
    let ring = Ring::new("ns-spsc-tx");
    let mut rx = ring.cfg(64, 64).open_receiver().unwrap();
    let mut child = namespaced(
        "ep_send",
        &ring.endpoint(),
        &[("n", "500".into()), ("hold", "1".into())],
    );
    let mut buf = Vec::new();
    for seq in 0..500 {
        assert_eq!(recv_text(&mut rx, &mut buf), format!("m-{seq}"));
    }
    child.expect("SENT");
    // Alive, though its pid means nothing here: waiting times out, it does not disconnect.
    assert_eq!(rx.sender(), Peer::Alive);
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
    assert_eq!(rx.sender(), Peer::Alive);
    let killed = kill_namespace(&mut child);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_noticed(killed);
    assert_eq!(rx.sender(), Peer::Dead);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn spsc_receiver_in_another_pid_namespace_gets_everything_and_its_death_is_noticed() {
    if !can_unshare() {
        return;
    }
    // The reported defect: a sender on the host took the namespaced receiver for dead, recycled
    // its ring and sent into a ring nobody read.
    let ring = Ring::new("ns-spsc-rx");
    let mut child = namespaced("ep_recv", &ring.endpoint(), &[]);
    let mut tx = ring.cfg(16, 64).open_sender().unwrap();
    assert_eq!(tx.receiver(), Peer::Alive);
    for seq in 0..1000 {
        tx.send_timeout(format!("m-{seq}").as_bytes(), SOON).unwrap();
        if seq == 500 {
            // A pause long enough for the namespaced receiver to judge its sender (whose pid it
            // cannot see) while waiting on an empty ring: it must keep waiting.
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    drop(tx);
    assert_eq!(child.expect("GOT"), ["1000", "Disconnected"]);
    child.wait(SOON);
    ring.assert_gone("after both ends closed");

    // Killed while the host sender waits on a full ring: Disconnected within the bound.
    let ring = Ring::new("ns-spsc-rx-kill");
    let mut child = namespaced(
        "ep_recv",
        &ring.endpoint(),
        &[("n", "3".into()), ("hold", "1".into())],
    );
    let mut tx = ring.cfg(4, 64).open_sender().unwrap();
    for seq in 0..7 {
        tx.send_timeout(format!("m-{seq}").as_bytes(), SOON).unwrap();
    }
    assert_eq!(child.expect("GOT"), ["3", "Limit"]);
    // It still holds the ring (its process lingers until killed): the sender fills it and waits.
    let killed = kill_namespace(&mut child);
    let mut sent = 7;
    let r = loop {
        match tx.send_timeout(format!("m-{sent}").as_bytes(), SOON) {
            // The ring (the endpoint's default geometry) holds 66,000 of these.
            Ok(()) if sent < 200_000 => sent += 1,
            r => break r,
        }
    };
    assert_eq!(r, Err(SendTimeoutError::Disconnected), "after {sent} messages");
    assert_noticed(killed);
    assert_eq!(tx.receiver(), Peer::Dead);
}

fn mpmc_endpoint(ring: &Ring) -> String {
    format!("shm://{}?mode=mpmc", ring.name)
}

#[test]
fn mpmc_members_in_other_pid_namespaces_are_never_reaped_alive_and_are_when_killed() {
    if !can_unshare() {
        return;
    }
    let ring = Ring::new("ns-mpmc");
    let cfg = ring.cfg(16, 64).kind(RingKind::Mpmc);
    let mut rx: Consumer = cfg.open_mpmc_receiver().unwrap();
    let endpoint = mpmc_endpoint(&ring);
    let mut a = namespaced(
        "ep_send",
        &endpoint,
        &[("n", "300".into()), ("tag", "a".into()), ("hold", "1".into())],
    );
    let mut b = namespaced(
        "ep_send",
        &endpoint,
        &[("n", "300".into()), ("tag", "b".into()), ("hold", "1".into())],
    );
    let mut next = BTreeMap::<String, u64>::new();
    let mut buf = Vec::new();
    for _ in 0..600 {
        let text = recv_text(&mut rx, &mut buf);
        let (tag, seq) = text.split_once('-').unwrap();
        let want = next.entry(tag.to_string()).or_insert(0);
        assert_eq!(seq.parse::<u64>().unwrap(), *want);
        *want += 1;
    }
    a.expect("SENT");
    b.expect("SENT");
    // Both alive: a slow path that reaps (a timed-out wait runs it) keeps them.
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
    let st = rx.stats();
    assert_eq!((st.senders, st.senders_died), (2, 0), "{st:?}");
    // One killed: reaped within the bound; the other is kept.
    let killed = kill_namespace(&mut a);
    let deadline = Instant::now() + DEATH_BOUND;
    while rx.stats().senders_died == 0 {
        assert!(Instant::now() < deadline, "the killed sender was not reaped");
        let _ = rx.recv_timeout(&mut buf, Duration::from_millis(50));
    }
    assert_noticed(killed);
    let st = rx.stats();
    assert_eq!((st.senders, st.senders_died), (1, 1), "{st:?}");
    kill_namespace(&mut b);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.stats().senders_died, 2);
    drop(rx);
    ring.assert_gone("after the last member left");
}

#[test]
fn mpmc_receiver_in_another_pid_namespace_keeps_a_host_sender_connected() {
    if !can_unshare() {
        return;
    }
    let ring = Ring::new("ns-mpmc-rx");
    let endpoint = mpmc_endpoint(&ring);
    let mut child = namespaced("ep_recv", &endpoint, &[]);
    let cfg = ring.cfg(8, 64).kind(RingKind::Mpmc);
    let mut tx: Producer = cfg.open_mpmc_sender().unwrap();
    for seq in 0..2000 {
        tx.send_timeout(format!("h-{seq}").as_bytes(), SOON).unwrap();
    }
    let st = tx.stats();
    assert_eq!((st.receivers, st.receivers_died), (1, 0), "{st:?}");
    drop(tx);
    assert_eq!(child.expect("GOT"), ["2000", "Disconnected"]);
    child.wait(SOON);
    ring.assert_gone("after the last member left");
}

#[test]
fn msgq_peers_in_another_pid_namespace_are_alive_until_killed() {
    if !can_unshare() {
        return;
    }
    let name = unique_name("ns-msgq");
    let addr = SegmentAddr::Name(name.clone());
    let _cleanup = QueueGuard(addr.key());
    let endpoint = format!("msgq://{name}");
    // Namespaced sender, host receiver: a live sender is waited for, a killed one disconnects.
    let mut rx = MsgqConfig::new(addr.clone()).open_receiver().unwrap();
    let mut child = namespaced("ep_send", &endpoint, &[("n", "200".into()), ("hold", "1".into())]);
    let mut buf = Vec::new();
    for seq in 0..200 {
        assert_eq!(recv_text(&mut rx, &mut buf), format!("m-{seq}"));
    }
    child.expect("SENT");
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
    let killed = kill_namespace(&mut child);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_noticed(killed);
    drop(rx);

    // Namespaced receiver, host sender: everything arrives, then a killed receiver disconnects
    // the sender waiting on a full queue.
    let mut child = namespaced("ep_recv", &endpoint, &[("n", "100".into()), ("hold", "1".into())]);
    let mut tx = MsgqConfig::new(addr.clone()).open_sender().unwrap();
    for seq in 0..100 {
        tx.send_timeout(format!("m-{seq}").as_bytes(), SOON).unwrap();
    }
    assert_eq!(child.expect("GOT"), ["100", "Limit"]);
    let killed = kill_namespace(&mut child);
    let big = vec![7u8; 4000];
    let r = (0..100_000).try_for_each(|_| tx.send_timeout(&big, SOON));
    assert_eq!(r, Err(SendTimeoutError::Disconnected));
    assert_noticed(killed);
}

/// Removes the message queue at a key, and the liveness semaphore set at the same key, on drop.
struct QueueGuard(i32);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        remove_queue_key(self.0);
    }
}

/// A receiver in a PID namespace whose sender (a process of ours, invisible to it) is killed:
/// it receives everything, then `Disconnected` within the bound; until then it waits.
fn namespaced_receiver_notices_its_host_senders_death(endpoint: &str) {
    let mut rx = namespaced("ep_recv", endpoint, &[]);
    let mut tx = Proc::child("ep_send", endpoint, &[("n", "300".into()), ("hold", "1".into())]);
    tx.expect("READY");
    tx.expect("SENT");
    // The sender is alive and silent: the receiver must not end the stream.
    assert_eq!(
        rx.try_line(Duration::from_millis(500)),
        None,
        "the receiver ended early"
    );
    let killed = Instant::now();
    tx.kill();
    tx.wait(SOON);
    assert_eq!(rx.expect("GOT"), ["300", "Disconnected"]);
    assert_noticed(killed);
    rx.wait(SOON);
}

#[test]
fn spsc_receiver_in_a_pid_namespace_notices_the_death_of_a_sender_it_cannot_see() {
    if !can_unshare() {
        return;
    }
    let ring = Ring::new("ns-spsc-judge");
    namespaced_receiver_notices_its_host_senders_death(&ring.endpoint());
    ring.assert_gone("after the receiver left");
}

#[test]
fn mpmc_receiver_in_a_pid_namespace_notices_the_death_of_a_sender_it_cannot_see() {
    if !can_unshare() {
        return;
    }
    let ring = Ring::new("ns-mpmc-judge");
    namespaced_receiver_notices_its_host_senders_death(&mpmc_endpoint(&ring));
    ring.assert_gone("after the receiver left");
}

#[test]
fn msgq_receiver_in_a_pid_namespace_notices_the_death_of_a_sender_it_cannot_see() {
    if !can_unshare() {
        return;
    }
    let name = unique_name("ns-msgq-judge");
    let _cleanup = QueueGuard(SegmentAddr::Name(name.clone()).key());
    namespaced_receiver_notices_its_host_senders_death(&format!("msgq://{name}"));
}

#[test]
fn msgq_sender_in_a_pid_namespace_notices_the_death_of_a_receiver_it_cannot_see() {
    if !can_unshare() {
        return;
    }
    let name = unique_name("ns-msgq-judge-tx");
    let _cleanup = QueueGuard(SegmentAddr::Name(name.clone()).key());
    let endpoint = format!("msgq://{name}");
    // A receiver of ours (invisible to the sender) takes 3 messages and then reads no more.
    let mut rx = Proc::child("ep_recv", &endpoint, &[("n", "3".into()), ("hold", "1".into())]);
    rx.expect("READY");
    let mut tx = namespaced("ep_send", &endpoint, &[("n", "1000000".into())]);
    assert_eq!(rx.expect("GOT"), ["3", "Limit"]);
    // The sender fills the queue and waits: its receiver is alive.
    assert_eq!(
        tx.try_line(Duration::from_millis(500)),
        None,
        "the sender gave up while its receiver lived"
    );
    let killed = Instant::now();
    rx.kill();
    rx.wait(SOON);
    let err = tx.expect("ERR");
    assert_eq!(err[0], "Disconnected", "{err:?}");
    assert_noticed(killed);
    tx.wait(SOON);
}
