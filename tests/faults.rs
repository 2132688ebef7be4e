//! Faults across real processes: SIGKILL of either side, stale segments left by dead processes,
//! foreign segments at our key, corrupted headers and indices, permissions, bad endpoints, and
//! opens racing each other. Peers are child processes (this binary re-run in a role, see
//! `tests/common`); foreign and corrupted memory is written through our own libc mapping.

mod common;

use common::*;
use shmpipe::inspect::RingView;
use shmpipe::transport::shm::{SegmentAddr, ShmConfig};
use shmpipe::{
    Error, Peer, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError,
};
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    child_main();
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Endpoint(_) => "Endpoint",
        Error::InvalidConfig(_) => "InvalidConfig",
        Error::Foreign { .. } => "Foreign",
        Error::InUse(_) => "InUse",
        Error::Permission(_) => "Permission",
        Error::Corrupted(_) => "Corrupted",
        Error::Limit(_) => "Limit",
        Error::Io { .. } => "Io",
        _ => "other",
    }
}

/// Kills a child and reaps it, so its attachment is gone.
/// Sends pattern messages (of up to `max` bytes) until a send fails, which must happen within
/// `capacity` messages (the ring's room): returns how many were sent, and the error.
fn fill_until_error(
    tx: &mut shmpipe::transport::shm::ShmSender,
    max: usize,
    capacity: u64,
) -> (u64, SendTimeoutError) {
    let mut buf = Vec::new();
    let mut sent = 0;
    loop {
        pattern(sent, max, &mut buf);
        match tx.send_timeout(&buf, Duration::from_secs(20)) {
            Ok(()) => sent += 1,
            Err(e) => return (sent, e),
        }
        assert!(sent <= capacity, "more messages accepted than the ring holds");
    }
}

fn kill_and_reap(child: &mut Proc) {
    child.kill();
    let status = child.wait(SOON);
    assert!(!status.success());
}

/// Asserts that `r` returned after `cause` and within [`DEATH_BOUND`] of it.
fn assert_noticed(returned: Instant, cause: Instant, what: &str) {
    assert!(returned >= cause, "{what}: reported before it happened");
    let lag = returned - cause;
    assert!(lag < DEATH_BOUND, "{what}: noticed only after {lag:?}");
}

// ---------------------------------------------------------------------------------------------
// Layout: the offsets the corruption tests write to
// ---------------------------------------------------------------------------------------------

#[test]
fn layout_offsets_used_by_these_tests_match_a_live_ring() {
    let ring = Ring::new("layout");
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", "3".into()),
            ("hold", "1".into()),
            ("cap", "4".into()),
            ("max", "16".into()),
        ],
    );
    child.expect("READY");
    child.expect("SENT");
    let seg = RawSeg::attach_key(ring.key);
    assert_eq!(seg.len, ring_size(4, 16));
    assert_eq!(seg.len, 1280 + 5 * 24);
    assert_eq!(seg.stat().shm_perm.mode & 0o777, 0o600, "created 0600");
    assert_eq!(seg.u64(off::MAGIC), MAGIC);
    assert_eq!(seg.u32(off::VERSION), LAYOUT_VERSION);
    assert_eq!(seg.u32(off::KIND), 1);
    assert_eq!(seg.u64(off::CAPACITY), 4);
    assert_eq!(seg.u64(off::MAX_MESSAGE), 16);
    assert_eq!(seg.u64(off::STRIDE), 24);
    assert_eq!(seg.u64(off::SEGMENT_SIZE), seg.len as u64);
    assert_eq!(seg.u32(off::CREATOR_PID), child.pid as u32);
    assert_eq!(seg.u32(off::NAME_LEN), ring.name.len() as u32);
    let tail: usize = (0..3).map(|seq| record(pattern_len(seq, 16))).sum();
    assert_eq!(seg.u64(off::TAIL), tail as u64);
    assert_eq!(seg.u64(off::SENT), 3);
    assert_eq!(seg.u64(off::HEAD), 0);
    assert_eq!(seg.u64(off::RECEIVED), 0);
    assert_eq!(seg.u32(off::LOCK), 0);
    assert_eq!(seg.u32(off::SENDER_STATE), 1);
    assert_eq!(seg.u32(off::SENDER_PID), child.pid as u32);
    assert_eq!(seg.u32(off::RECEIVER_STATE), 0);
    assert_eq!(seg.u64(off::FULL_WAITS), 0, "nobody waited");
    assert_eq!(seg.u64(off::WAKES), 0, "nobody was woken");
    assert_eq!(seg.u64(off::NOT_EMPTY_WAITERS), 0, "nobody waits");
    assert_eq!(seg.u64(off::NOT_FULL_WAITERS), 0, "nobody waits");
    let at = record(pattern_len(0, 16));
    assert_eq!(
        seg.u64(off::SLOTS + at),
        record_word(at as u64, pattern_len(1, 16)),
        "record 1's header word"
    );
    assert_eq!(
        seg.u64(off::SLOTS + tail),
        0,
        "the terminator after the last record"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGKILL
// ---------------------------------------------------------------------------------------------

#[test]
fn sigkill_of_a_stalled_consumer_unblocks_the_producer_blocked_in_send_with_disconnected() {
    const MAX: usize = 32;
    let ring = Ring::new("kill-consumer");
    // The child creates the ring, parks on it while empty, reads 3 messages, then stops reading.
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[
            ("cap", "4".into()),
            ("max", MAX.to_string()),
            ("stall_after", "3".into()),
        ],
    );
    child.expect("READY");
    let mut tx = ring.cfg(4, MAX).open_sender().unwrap();
    let mut buf = Vec::new();
    // What the ring holds besides the 3 the child took (more than 4: the records are dense).
    let fits = spsc_accepts(4, MAX, 3);
    for seq in 0..fits {
        pattern(seq, MAX, &mut buf);
        send_ok(&mut tx, &buf);
    }
    child.expect("STALLED");
    pattern(fits, MAX, &mut buf);
    assert_eq!(tx.try_send(&buf), Err(TrySendError::Full));
    assert_eq!(tx.receiver(), Peer::Alive);
    let pid = child.pid;
    let killer = after(Duration::from_millis(300), move || {
        // SAFETY: plain syscall; the child is not reaped until its guard drops.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let r = tx.send_timeout(&buf, Duration::from_secs(20));
    let returned = Instant::now();
    let killed_at = killer.join().unwrap();
    assert_eq!(r, Err(SendTimeoutError::Disconnected));
    assert_noticed(returned, killed_at, "consumer death");
    assert_eq!(tx.receiver(), Peer::Dead);
    assert_eq!(tx.try_send(&buf), Err(TrySendError::Disconnected));
    kill_and_reap(&mut child);
    assert!(ring.exists(), "the producer is still attached");
    drop(tx);
    ring.assert_gone("after the surviving producer dropped");
}

#[test]
fn consumer_killed_while_parked_on_empty_then_producer_fills_and_blocks_gets_disconnected() {
    const MAX: usize = 32;
    let ring = Ring::new("kill-parked-consumer");
    let mut tx = ring.cfg(4, MAX).open_sender().unwrap();
    // The child receiver parks on the empty ring (60 s recv_timeout).
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[("max", MAX.to_string()), ("wait", "park".into())],
    );
    child.expect("READY");
    assert_eq!(tx.receiver(), Peer::Alive);
    std::thread::sleep(Duration::from_millis(100));
    child.kill();
    let killed_at = Instant::now();
    // Not reaped yet: a zombie must count as dead. The ring has room: sends fill it.
    let (_, r) = fill_until_error(&mut tx, MAX, spsc_accepts(4, MAX, 0));
    assert_eq!(r, SendTimeoutError::Disconnected);
    assert_noticed(Instant::now(), killed_at, "consumer death");
    assert_eq!(tx.receiver(), Peer::Dead);
    kill_and_reap(&mut child);
    drop(tx);
    ring.assert_gone("after the surviving producer dropped");
}

#[test]
fn sigkill_of_the_producer_wakes_the_parked_consumer_with_disconnected_and_dead() {
    const MAX: usize = 64;
    let ring = Ring::new("kill-producer");
    let mut rx = ring.cfg(16, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", "5".into()), ("max", MAX.to_string()), ("hold", "1".into())],
    );
    child.expect("READY");
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..5 {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    child.expect("SENT");
    assert_eq!(rx.sender(), Peer::Alive);
    let pid = child.pid;
    let killer = after(Duration::from_millis(300), move || {
        // SAFETY: plain syscall on our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let r = rx.recv_timeout(&mut buf, Duration::from_secs(20));
    let returned = Instant::now();
    let killed_at = killer.join().unwrap();
    assert_eq!(r, Err(RecvTimeoutError::Disconnected));
    assert_noticed(returned, killed_at, "producer death");
    assert_eq!(rx.sender(), Peer::Dead);
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    kill_and_reap(&mut child);
    drop(rx);
    ring.assert_gone("after the surviving consumer dropped");
}

#[test]
fn everything_a_killed_producer_published_is_drained_before_disconnected() {
    const MAX: usize = 64;
    const N: u64 = 50;
    let ring = Ring::new("kill-producer-drain");
    let mut rx = ring.cfg(64, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", N.to_string()),
            ("max", MAX.to_string()),
            ("hold", "1".into()),
        ],
    );
    child.expect("READY");
    child.expect("SENT");
    kill_and_reap(&mut child);
    assert_eq!(rx.sender(), Peer::Dead);
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..N {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    let t0 = Instant::now();
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert!(t0.elapsed() < DEATH_BOUND);
    assert_eq!(rx.sender(), Peer::Dead);
    drop(rx);
    ring.assert_gone("after the surviving consumer dropped");
}

#[test]
fn a_producer_killed_mid_stream_leaves_an_intact_prefix_then_disconnected() {
    const MAX: usize = 128;
    let ring = Ring::new("kill-mid-stream");
    let mut rx = ring.cfg(8, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", "100000000".into()), ("max", MAX.to_string())],
    );
    child.expect("READY");
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    let mut seq = 0;
    while seq < 2000 {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
        seq += 1;
    }
    kill_and_reap(&mut child);
    let killed_at = Instant::now();
    let end = loop {
        match rx.recv_timeout(&mut buf, SOON) {
            Ok(()) => {
                check_pattern(seq, MAX, &buf, &mut expected);
                seq += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(end, RecvTimeoutError::Disconnected);
    // A ring's worth: at most one message per 8 bytes of its memory.
    let ring_worth = (9 * record(MAX) / 8) as u64;
    assert!(
        seq <= 2000 + ring_worth,
        "at most a ring's worth after the last read: {seq}"
    );
    assert_noticed(Instant::now(), killed_at, "producer death");
    assert_eq!(rx.sender(), Peer::Dead);
    drop(rx);
    ring.assert_gone("after the surviving consumer dropped");
}

// ---------------------------------------------------------------------------------------------
// A peer killed while parked leaves no waiter bit behind
// ---------------------------------------------------------------------------------------------

/// The SPSC waiter bits (`inspect::Counters::parked_senders` / `parked_receivers`).
const SENDER_BIT: u64 = 1;
const RECEIVER_BIT: u64 = 2;

/// The ring's counters as `shmpipe stat` sees them (a read-only attachment).
fn view(ring: &Ring) -> RingView {
    RingView::open(&SegmentAddr::Name(ring.name.clone())).expect("RingView::open")
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_receiver_killed_while_parked_leaves_its_waiter_bit_only_until_the_sender_finds_it_dead() {
    const MAX: usize = 32;
    let ring = Ring::new("kill-parked-rx-bit");
    let mut tx = ring.cfg(4, MAX).open_sender().unwrap();
    let view = view(&ring);
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[("max", MAX.to_string()), ("wait", "park".into())],
    );
    child.expect("READY");
    eventually("the receiver parks", || {
        view.counters().parked_receivers == RECEIVER_BIT
    });
    kill_and_reap(&mut child);
    let before = view.counters();
    assert_eq!(
        (before.parked_receivers, before.parked_senders),
        (RECEIVER_BIT, 0),
        "killed while parked: its bit is still set"
    );
    let seg = RawSeg::attach_key(ring.key);
    assert_eq!(
        seg.u64(off::NOT_EMPTY_WAITERS),
        RECEIVER_BIT,
        "where the layout says"
    );
    drop(seg);
    // Each publish rings for the dead receiver (a futex call) until the ring is full and the
    // sender finds it dead; from then on its bit is gone.
    let (sent, r) = fill_until_error(&mut tx, MAX, spsc_accepts(4, MAX, 0));
    assert_eq!(r, SendTimeoutError::Disconnected);
    assert_eq!(tx.receiver(), Peer::Dead);
    let after = view.counters();
    assert_eq!(
        after.wakes - before.wakes,
        sent,
        "one wake per publish while the bit was set"
    );
    assert_eq!(
        after.parked_receivers, 0,
        "the sender cleared the dead receiver's bit"
    );
    drop(tx);
    assert_eq!(
        view.counters().wakes,
        after.wakes,
        "the sender's close rang nobody"
    );
    drop(view);
    ring.assert_gone("after the surviving producer dropped");
}

#[test]
fn a_sender_killed_while_parked_on_full_leaves_its_waiter_bit_only_until_the_receiver_finds_it_dead() {
    const MAX: usize = 32;
    let ring = Ring::new("kill-parked-tx-bit");
    let mut rx = ring.cfg(4, MAX).open_receiver().unwrap();
    let view = view(&ring);
    // Two more messages than fit: the sender parks on the first of them.
    let fits = spsc_accepts(4, MAX, 0);
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", (fits + 2).to_string()),
            ("cap", "4".into()),
            ("max", MAX.to_string()),
            ("wait", "park".into()),
        ],
    );
    child.expect("READY");
    eventually("the sender parks", || {
        view.counters().parked_senders == SENDER_BIT
    });
    kill_and_reap(&mut child);
    let before = view.counters();
    assert_eq!((before.parked_senders, before.parked_receivers), (SENDER_BIT, 0));
    // Draining frees `fits` records, each a wake for the dead sender (the receiver cannot know yet);
    // once the ring is empty it finds the sender dead and clears the bit.
    let (mut buf, mut expected) = (Vec::new(), Vec::new());
    for seq in 0..fits {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_secs(20)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.sender(), Peer::Dead);
    let after = view.counters();
    assert_eq!(
        after.wakes - before.wakes,
        fits,
        "one wake per freed slot while the bit was set"
    );
    assert_eq!(
        after.parked_senders, 0,
        "the receiver cleared the dead sender's bit"
    );
    drop(rx);
    drop(view);
    ring.assert_gone("after the surviving consumer dropped");
}

#[test]
fn a_sender_killed_while_parked_leaves_no_waiter_bit_for_the_receiver_that_opens_next() {
    const MAX: usize = 32;
    let ring = Ring::new("kill-parked-tx-next-open");
    // No receiver yet: two more messages than fit, and the sender parks on the first of them.
    let fits = spsc_accepts(4, MAX, 0);
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", (fits + 2).to_string()),
            ("cap", "4".into()),
            ("max", MAX.to_string()),
            ("wait", "park".into()),
        ],
    );
    child.expect("READY");
    ring.wait_exists(SOON);
    let view = view(&ring);
    eventually("the sender parks", || {
        view.counters().parked_senders == SENDER_BIT
    });
    kill_and_reap(&mut child);
    assert_eq!(view.counters().parked_senders, SENDER_BIT, "killed while parked");
    // The receiver that comes for the finished stream clears the bit when it opens, so draining
    // makes no futex call at all.
    let mut rx = ring.cfg(4, MAX).open_receiver().unwrap();
    let before = view.counters();
    assert_eq!((before.parked_senders, before.parked_receivers), (0, 0));
    let (mut buf, mut expected) = (Vec::new(), Vec::new());
    for seq in 0..fits {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    let after = view.counters();
    assert_eq!(after.wakes, before.wakes, "draining woke nobody");
    assert_eq!(after.parks, before.parks, "and nobody parked");
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_secs(20)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.sender(), Peer::Dead);
    assert_eq!(view.counters().parked_receivers, 0);
    drop(rx);
    drop(view);
    ring.assert_gone("after the consumer drained the finished stream");
}

// ---------------------------------------------------------------------------------------------
// Stale segments
// ---------------------------------------------------------------------------------------------

/// A ring created by a child holding `side` that was then SIGKILLed: a segment nobody attaches.
fn stale_ring(ring: &Ring, side: &str, cap: usize) -> i32 {
    let mut child = Proc::child(
        "hold",
        &ring.name,
        &[
            ("side", side.into()),
            ("cap", cap.to_string()),
            ("max", "64".into()),
        ],
    );
    child.expect("READY");
    kill_and_reap(&mut child);
    let id = ring.shmid().expect("the killed creator's segment is left behind");
    assert_eq!(stat_id(id).unwrap().shm_nattch, 0);
    id
}

#[test]
fn stale_ring_of_a_killed_lone_sender_is_recycled_by_the_next_receiver() {
    let ring = Ring::new("stale-sender");
    let old = stale_ring(&ring, "sender", 8);
    let mut rx = ring.cfg(16, 64).open_receiver().unwrap();
    assert_eq!(rx.capacity(), 16, "a fresh ring with our geometry");
    assert_ne!(ring.shmid(), Some(old), "a new segment");
    assert!(stat_id(old).is_none(), "the stale segment is gone");
    assert_eq!(rx.sender(), Peer::NotYet);
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    let mut child = Proc::child("sender", &ring.name, &[("n", "100".into()), ("max", "64".into())]);
    child.expect("READY");
    let mut expected = Vec::new();
    for seq in 0..100 {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, 64, &buf, &mut expected);
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.sender(), Peer::Closed);
    child.wait_success(SOON);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn stale_ring_of_a_killed_lone_sender_is_recycled_by_the_next_sender() {
    let ring = Ring::new("stale-sender2");
    let old = stale_ring(&ring, "sender", 8);
    let mut tx = ring.cfg(32, 64).open_sender().unwrap();
    assert_eq!(tx.capacity(), 32);
    assert_ne!(ring.shmid(), Some(old));
    let mut child = Proc::child("receiver", &ring.name, &[("max", "64".into())]);
    child.expect("READY");
    let mut buf = Vec::new();
    for seq in 0..100 {
        pattern(seq, 64, &mut buf);
        send_ok(&mut tx, &buf);
    }
    drop(tx);
    assert_eq!(child.expect("GOT")[0], "100");
    child.wait_success(SOON);
    ring.assert_gone("after both closed");
}

#[test]
fn stale_ring_of_a_killed_lone_receiver_is_recycled() {
    let ring = Ring::new("stale-receiver");
    let old = stale_ring(&ring, "receiver", 8);
    let mut tx = ring.cfg(16, 64).open_sender().unwrap();
    assert_eq!(tx.capacity(), 16);
    assert_eq!(
        tx.receiver(),
        Peer::NotYet,
        "a fresh ring, not the dead receiver's"
    );
    assert_ne!(ring.shmid(), Some(old));
    let mut child = Proc::child("receiver", &ring.name, &[("max", "64".into())]);
    child.expect("READY");
    let mut buf = Vec::new();
    for seq in 0..20 {
        pattern(seq, 64, &mut buf);
        send_ok(&mut tx, &buf);
    }
    drop(tx);
    assert_eq!(child.expect("GOT")[0], "20");
    child.wait_success(SOON);
    ring.assert_gone("after both closed");
}

#[test]
fn stale_ring_of_a_killed_pair_is_recycled_fresh_without_their_messages() {
    let ring = Ring::new("stale-pair");
    let mut receiver = Proc::child(
        "hold",
        &ring.name,
        &[
            ("side", "receiver".into()),
            ("cap", "8".into()),
            ("max", "64".into()),
        ],
    );
    receiver.expect("READY");
    let mut sender = Proc::child(
        "sender",
        &ring.name,
        &[("n", "5".into()), ("max", "64".into()), ("hold", "1".into())],
    );
    sender.expect("READY");
    sender.expect("SENT");
    kill_and_reap(&mut sender);
    kill_and_reap(&mut receiver);
    let old = ring.shmid().unwrap();
    assert_eq!(stat_id(old).unwrap().shm_nattch, 0);
    let mut rx = ring.cfg(16, 64).open_receiver().unwrap();
    assert_eq!(rx.capacity(), 16);
    assert_ne!(ring.shmid(), Some(old));
    let mut buf = Vec::new();
    assert_eq!(
        rx.try_recv(&mut buf),
        Err(TryRecvError::Empty),
        "the dead pair's messages are gone"
    );
    assert_eq!(rx.sender(), Peer::NotYet);
    let mut child = Proc::child("sender", &ring.name, &[("n", "10".into()), ("max", "64".into())]);
    child.expect("READY");
    let mut expected = Vec::new();
    for seq in 0..10 {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, 64, &buf, &mut expected);
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    child.wait_success(SOON);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn unread_messages_of_a_killed_sender_are_drained_by_the_first_receiver() {
    let ring = Ring::new("dead-sender-queue");
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", "20".into()),
            ("cap", "32".into()),
            ("max", "64".into()),
            ("hold", "1".into()),
        ],
    );
    child.expect("READY");
    child.expect("SENT");
    kill_and_reap(&mut child);
    let mut rx = ring.cfg(16, 1024).open_receiver().unwrap();
    assert_eq!(rx.capacity(), 32, "the dead sender's ring, kept for its messages");
    assert_eq!(rx.sender(), Peer::Dead);
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..20 {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, 64, &buf, &mut expected);
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.sender(), Peer::Dead);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn an_open_lock_left_by_a_dead_process_is_taken_over_and_one_held_by_a_live_process_is_not() {
    let ring = Ring::new("open-lock");
    let mut holder = Proc::child(
        "hold",
        &ring.name,
        &[("side", "sender".into()), ("cap", "8".into())],
    );
    holder.expect("READY");
    let set = sems_of(ring.shmid().unwrap()).expect("the ring's semaphore set");
    // A live process holds the lock (semaphore 0 of the ring's set): the open times out.
    let mut locker = LockHolder::start(set);
    let mut cfg = ring.cfg(8, 64);
    cfg.open_timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    match cfg.open_receiver() {
        Err(e @ Error::InUse(_)) => assert!(e.to_string().contains("lock"), "{e}"),
        other => panic!("open with the lock held by a live process: {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(t0.elapsed() < DEATH_BOUND);
    // Its holder is killed: the kernel gives the lock back, and the open goes through.
    locker.kill();
    let mut rx = ring
        .cfg(8, 64)
        .open_receiver()
        .expect("the lock of a killed process is free");
    assert_eq!(sem_value(set, 0), Some(0), "released after the open");
    assert_eq!(rx.sender(), Peer::Alive);
    kill_and_reap(&mut holder);
    let mut buf = Vec::new();
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    drop(rx);
    ring.assert_gone("after the receiver dropped");
    assert_eq!(sem_count(set), None, "the semaphore set goes with the ring");
}

// ---------------------------------------------------------------------------------------------
// Foreign segments at our key
// ---------------------------------------------------------------------------------------------

fn assert_foreign_and_kept(ring: &Ring, id: i32, reason_part: &str) {
    for side in ["sender", "receiver"] {
        let cfg = ring.cfg(8, 64);
        let r = if side == "sender" {
            cfg.open_sender().map(drop)
        } else {
            cfg.open_receiver().map(drop)
        };
        match r {
            Err(e @ Error::Foreign { .. }) => {
                let Error::Foreign { key, reason } = &e else {
                    unreachable!()
                };
                assert_eq!(*key, ring.key);
                assert!(reason.contains(reason_part), "{side}: reason {reason:?}");
                let shown = e.to_string();
                assert!(shown.contains("not shmpipe's for this name"), "{shown}");
                assert!(shown.contains(&format!("{:#x}", ring.key)), "{shown}");
            }
            other => panic!("{side} on a foreign segment: {other:?}"),
        }
        assert_eq!(ring.shmid(), Some(id), "the foreign segment must not be removed");
    }
}

#[test]
fn a_foreign_segment_with_other_magic_is_refused_and_left_alone() {
    let ring = Ring::new("foreign-magic");
    let seg = RawSeg::create(ring.key, 4096, 0o600);
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    seg.write_bytes(0, &garbage);
    let id = seg.id;
    drop(seg);
    assert_foreign_and_kept(&ring, id, "magic");
    // By raw key too (the name check is skipped, the magic is not).
    let raw = ShmConfig::named(&format!("{:#x}", ring.key)).unwrap();
    assert!(matches!(raw.open_sender(), Err(Error::Foreign { .. })));
    let seg = RawSeg::attach_id(id);
    assert_eq!(
        seg.bytes(0, 4096),
        garbage,
        "the foreign segment's contents are untouched"
    );
}

#[test]
fn a_foreign_segment_while_its_owner_is_attached_is_refused_and_left_alone() {
    let ring = Ring::new("foreign-attached");
    let seg = RawSeg::create(ring.key, 64 * 1024, 0o600);
    seg.set_u64(0, 0x0123_4567_89ab_cdef);
    assert_foreign_and_kept(&ring, seg.id, "magic");
    assert_eq!(seg.stat().shm_nattch, 1, "only our own mapping");
}

#[test]
fn a_foreign_segment_too_small_for_a_ring_is_refused_and_left_alone() {
    let ring = Ring::new("foreign-small");
    let id = RawSeg::create(ring.key, 512, 0o600).id;
    assert_foreign_and_kept(&ring, id, "too small");
}

#[test]
fn a_ring_of_another_name_at_our_key_is_foreign() {
    let ring = Ring::new("collision");
    let seg = RawSeg::create(ring.key, ring_size(8, 64), 0o600);
    seg.write_valid_header("someone-else", 8, 64);
    let id = seg.id;
    drop(seg);
    assert_foreign_and_kept(&ring, id, "someone-else");
}

#[test]
fn a_ring_of_another_layout_version_is_foreign_and_another_kind_is_refused() {
    let ring = Ring::new("version");
    let seg = RawSeg::create(ring.key, ring_size(8, 64), 0o600);
    seg.write_valid_header(&ring.name, 8, 64);
    // Version 1: the layout before the counters line moved the slots; 2: before MPMC rings
    // published and freed slots by CAS (a member of that build could rewind a recovered slot).
    let id = seg.id;
    for old in [1, 2] {
        seg.set_u32(off::VERSION, old);
        assert_foreign_and_kept(&ring, id, "version");
    }
    seg.set_u32(off::VERSION, LAYOUT_VERSION);
    seg.set_u32(off::KIND, 2);
    match ring.cfg(8, 64).open_receiver() {
        Err(Error::InvalidConfig(m)) => assert!(m.contains("kind"), "{m}"),
        other => panic!("ring of another kind: {other:?}"),
    }
    assert_eq!(ring.shmid(), Some(id));
}

/// README (Limits): an all-zero header is recycled only when its creating process (`shm_cpid`)
/// is dead and nobody has attached it. Here the creator is alive and merely has not attached
/// yet, exactly the state shmpipe's own creator is in between `shmget(IPC_CREAT | IPC_EXCL)` and
/// `shmat` (`create_new` in src/transport/shm.rs). The open must not destroy it.
#[test]
fn a_zeroed_segment_whose_creator_is_alive_is_not_destroyed_by_an_open() {
    let ring = Ring::new("zero-live-creator");
    let mut creator = Proc::child(
        "raw_create",
        &ring.name,
        &[("cap", "8".into()), ("max", "64".into())],
    );
    let id: i32 = creator.expect("READY")[0].parse().unwrap();
    let st = stat_id(id).unwrap();
    assert_eq!(st.shm_cpid, creator.pid, "the live child created it");
    assert_eq!(st.shm_nattch, 0, "and has not attached it yet");
    let mut cfg = ring.cfg(8, 64);
    cfg.open_timeout = Duration::from_millis(500);
    let opened = cfg.open_receiver();
    let survived = stat_id(id).is_some();
    // Let the creator go on, as shmpipe's creator would after being preempted.
    creator.say("GO");
    let attach = creator.expect("ATTACH").join(" ");
    creator.wait_success(SOON);
    assert!(
        survived,
        "open_receiver removed segment {id} created by live pid {} before it could attach \
         (open returned {:?}; the creator's shmat then said: {attach})",
        creator.pid,
        opened.as_ref().map(|_| "Ok")
    );
    assert_eq!(attach, "ok");
    assert!(
        opened.is_err(),
        "nothing to join: the creator never initialised the ring"
    );
}

/// The documented other half: an all-zero segment whose creator is dead and which nobody has
/// attached is recycled.
#[test]
fn a_zeroed_segment_whose_creator_died_is_recycled() {
    let ring = Ring::new("zero-dead-creator");
    let mut creator = Proc::child(
        "raw_create",
        &ring.name,
        &[("cap", "8".into()), ("max", "64".into())],
    );
    let id: i32 = creator.expect("READY")[0].parse().unwrap();
    kill_and_reap(&mut creator);
    let mut tx = ring.cfg(8, 64).open_sender().unwrap();
    assert!(stat_id(id).is_none(), "the dead creator's segment was recycled");
    let mut child = Proc::child("receiver", &ring.name, &[("max", "64".into())]);
    child.expect("READY");
    let mut buf = Vec::new();
    for seq in 0..10 {
        pattern(seq, 64, &mut buf);
        send_ok(&mut tx, &buf);
    }
    drop(tx);
    assert_eq!(child.expect("GOT")[0], "10");
    child.wait_success(SOON);
    ring.assert_gone("after both closed");
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

#[test]
fn corrupted_header_fields_are_refused_by_a_new_opener_without_panicking() {
    const CAP: usize = 8;
    const MAX: usize = 64;
    let ring = Ring::new("corrupt-header");
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", "3".into()),
            ("cap", CAP.to_string()),
            ("max", MAX.to_string()),
            ("hold", "1".into()),
        ],
    );
    child.expect("READY");
    child.expect("SENT");
    let id = ring.shmid().unwrap();
    let seg = RawSeg::attach_key(ring.key);
    let size = seg.len as u64;
    enum W {
        U64(usize, u64),
        U32(usize, u32),
    }
    let cases: Vec<(&str, W, &str)> = vec![
        ("magic", W::U64(off::MAGIC, 0xdead_beef_dead_beef), "Foreign"),
        ("magic one bit off", W::U64(off::MAGIC, MAGIC ^ 1), "Foreign"),
        ("version", W::U32(off::VERSION, 99), "Foreign"),
        ("kind", W::U32(off::KIND, 7), "InvalidConfig"),
        ("name length", W::U32(off::NAME_LEN, 200), "Foreign"),
        ("name length 0", W::U32(off::NAME_LEN, 0), "Foreign"),
        (
            "capacity not a power of two",
            W::U64(off::CAPACITY, 3),
            "Corrupted",
        ),
        ("capacity 0", W::U64(off::CAPACITY, 0), "Corrupted"),
        ("capacity huge", W::U64(off::CAPACITY, 1 << 40), "Corrupted"),
        ("capacity u64::MAX", W::U64(off::CAPACITY, u64::MAX), "Corrupted"),
        (
            "capacity doubled",
            W::U64(off::CAPACITY, 2 * CAP as u64),
            "Corrupted",
        ),
        ("max message 0", W::U64(off::MAX_MESSAGE, 0), "Corrupted"),
        ("max message huge", W::U64(off::MAX_MESSAGE, 1 << 40), "Corrupted"),
        ("max message bigger", W::U64(off::MAX_MESSAGE, 4096), "Corrupted"),
        ("stride", W::U64(off::STRIDE, 8), "Corrupted"),
        ("stride huge", W::U64(off::STRIDE, u64::MAX), "Corrupted"),
        (
            "segment size +64",
            W::U64(off::SEGMENT_SIZE, size + 64),
            "Corrupted",
        ),
        ("segment size 0", W::U64(off::SEGMENT_SIZE, 0), "Corrupted"),
        (
            "segment size huge",
            W::U64(off::SEGMENT_SIZE, u64::MAX),
            "Corrupted",
        ),
    ];
    for (what, w, expected) in cases {
        let saved = match w {
            W::U64(o, v) => {
                let s = seg.u64(o);
                seg.set_u64(o, v);
                W::U64(o, s)
            }
            W::U32(o, v) => {
                let s = seg.u32(o);
                seg.set_u32(o, v);
                W::U32(o, s)
            }
        };
        for side in ["receiver", "sender"] {
            let mut cfg = ring.cfg(CAP, MAX);
            cfg.open_timeout = Duration::from_millis(500);
            let r = if side == "receiver" {
                cfg.open_receiver().map(drop)
            } else {
                cfg.open_sender().map(drop)
            };
            match r {
                Err(e) => {
                    assert_eq!(kind(&e), expected, "{what} ({side}): {e}");
                    assert!(!e.to_string().is_empty());
                }
                Ok(()) => panic!("{what} ({side}): opened a corrupted ring"),
            }
            assert_eq!(ring.shmid(), Some(id), "{what}: the ring must not be removed");
        }
        match saved {
            W::U64(o, v) => seg.set_u64(o, v),
            W::U32(o, v) => seg.set_u32(o, v),
        }
    }
    // All restored: the ring works and still holds the child's messages.
    let mut rx = ring.cfg(CAP, MAX).open_receiver().expect("restored ring opens");
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..3 {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    assert_eq!(rx.sender(), Peer::Alive);
    drop(seg);
    kill_and_reap(&mut child);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

/// Indices more than a ring apart make `open_receiver` fail with `Corrupted` (checked in
/// `Consumer::new`, after the role was claimed under the lock). The failed open must not leave
/// the receiver role claimed by this process: once the indices are repaired (or for the peer,
/// which would otherwise see a live receiver that never reads) the role must be free.
#[test]
fn an_open_refused_for_corrupted_indices_leaves_the_role_free() {
    let ring = Ring::new("corrupt-indices");
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", "3".into()), ("cap", "8".into()), ("hold", "1".into())],
    );
    child.expect("READY");
    child.expect("SENT");
    let seg = RawSeg::attach_key(ring.key);
    let tail = seg.u64(off::TAIL);
    seg.set_u64(off::TAIL, 1 << 40);
    match ring.cfg(8, 64).open_receiver() {
        Err(Error::Corrupted(c)) => assert!(c.reason.contains("apart"), "{c}"),
        other => panic!("open_receiver with tail far ahead: {other:?}"),
    }
    seg.set_u64(off::TAIL, tail);
    let state = seg.u32(off::RECEIVER_STATE);
    let holder = seg.u32(off::RECEIVER_PID);
    let reopened = ring.cfg(8, 64).open_receiver();
    assert!(
        state == 0 && reopened.is_ok(),
        "after a refused open the receiver role is left {} by pid {holder} (us: {}), and \
         reopening the repaired ring gives {:?}",
        if state == 1 {
            "ATTACHED".to_string()
        } else {
            format!("in state {state}")
        },
        std::process::id(),
        reopened.map(|_| "Ok")
    );
}

#[test]
fn a_zeroed_magic_on_a_ring_in_use_makes_an_opener_give_up_with_in_use_and_keep_it() {
    let ring = Ring::new("zero-magic");
    let mut child = Proc::child(
        "hold",
        &ring.name,
        &[("side", "sender".into()), ("cap", "8".into())],
    );
    child.expect("READY");
    let id = ring.shmid().unwrap();
    let seg = RawSeg::attach_key(ring.key);
    seg.set_u64(off::MAGIC, 0);
    let mut cfg = ring.cfg(8, 64);
    cfg.open_timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    match cfg.open_receiver() {
        Err(Error::InUse(m)) => assert!(m.contains("never initialised"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(t0.elapsed() < DEATH_BOUND);
    assert_eq!(
        ring.shmid(),
        Some(id),
        "a ring attached by a live process is never removed"
    );
}

#[test]
fn a_corrupted_record_header_makes_recv_fail_with_corrupted_and_stay_poisoned() {
    const MAX: usize = 64;
    let ring = Ring::new("corrupt-header");
    let mut rx = ring.cfg(8, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", "3".into()), ("max", MAX.to_string()), ("hold", "1".into())],
    );
    child.expect("READY");
    child.expect("SENT");
    let mut buf = Vec::new();
    recv_ok(&mut rx, &mut buf);
    let seg = RawSeg::attach_key(ring.key);
    // The consumer waits on the header word of the record at its position (no tail index): the
    // second record's header, overwritten with one stamped for a position a lap later (what a
    // stale header would look like), is refused.
    let at = record(pattern_len(0, MAX));
    let good = seg.u64(off::SLOTS + at);
    assert_eq!(
        good,
        record_word(at as u64, pattern_len(1, MAX)),
        "where the layout says"
    );
    let lap = (9 * record(MAX)) as u64;
    seg.set_u64(off::SLOTS + at, record_word(at as u64 + lap, pattern_len(1, MAX)));
    let r = rx.try_recv(&mut buf);
    assert!(
        matches!(&r, Err(TryRecvError::Corrupted(c)) if c.reason.contains("not stamped")),
        "{r:?}"
    );
    assert!(matches!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Corrupted(_))
    ));
    // Poisoned: even with the header put back.
    seg.set_u64(off::SLOTS + at, good);
    let r = rx.try_recv(&mut buf);
    assert!(
        matches!(&r, Err(TryRecvError::Corrupted(c)) if c.to_string().contains("corrupted")),
        "{r:?}"
    );
    drop(seg);
    kill_and_reap(&mut child);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn a_header_corrupted_while_the_consumer_is_parked_is_reported_as_corrupted() {
    let ring = Ring::new("corrupt-header-parked");
    let mut rx = ring.cfg(8, 64).open_receiver().unwrap();
    let mut child = Proc::child("hold", &ring.name, &[("side", "sender".into())]);
    child.expect("READY");
    let key = ring.key;
    let corrupter = after(Duration::from_millis(300), move || {
        // Garbage where the consumer waits for the first record's header.
        RawSeg::attach_key(key).set_u64(off::SLOTS, u64::MAX - 5);
    });
    let mut buf = Vec::new();
    let r = rx.recv_timeout(&mut buf, Duration::from_secs(20));
    let returned = Instant::now();
    let at = corrupter.join().unwrap();
    assert!(matches!(r, Err(RecvTimeoutError::Corrupted(_))), "{r:?}");
    assert_noticed(returned, at, "corrupted header");
    kill_and_reap(&mut child);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn a_corrupted_length_word_is_reported_as_corrupted() {
    const MAX: usize = 16;
    let ring = Ring::new("corrupt-len");
    let mut rx = ring.cfg(4, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", "2".into()), ("max", MAX.to_string()), ("hold", "1".into())],
    );
    child.expect("READY");
    child.expect("SENT");
    let seg = RawSeg::attach_key(ring.key);
    seg.set_u64(off::SLOTS, record_word(0, 9999));
    let mut buf = Vec::new();
    let r = rx.recv_timeout(&mut buf, SOON);
    assert!(
        matches!(&r, Err(RecvTimeoutError::Corrupted(c)) if c.reason.contains("9999")),
        "{r:?}"
    );
    assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Corrupted(_))));
    drop(seg);
    kill_and_reap(&mut child);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn a_corrupted_head_makes_send_fail_with_corrupted() {
    let ring = Ring::new("corrupt-head");
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[
            ("cap", "4".into()),
            ("max", "64".into()),
            ("stall_after", "0".into()),
        ],
    );
    child.expect("READY");
    child.expect("STALLED");
    let mut tx = ring.cfg(4, 64).open_sender().unwrap();
    // 5 records of 72 bytes, less the free header word, in records of 16.
    for _ in 0..(5 * 72 - 8) / 16 {
        tx.try_send(b"m").unwrap();
    }
    assert_eq!(tx.try_send(b"m"), Err(TrySendError::Full));
    let seg = RawSeg::attach_key(ring.key);
    seg.set_u64(off::HEAD, 1000);
    assert!(matches!(tx.try_send(b"m"), Err(TrySendError::Corrupted(_))));
    assert!(matches!(
        tx.send_timeout(b"m", SOON),
        Err(SendTimeoutError::Corrupted(_))
    ));
    drop(seg);
    kill_and_reap(&mut child);
    drop(tx);
    ring.assert_gone("after the sender dropped");
}

// ---------------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------------

fn planted_ring(ring: &Ring, mode: u32) -> i32 {
    let seg = RawSeg::create(ring.key, ring_size(8, 64), mode);
    seg.write_valid_header(&ring.name, 8, 64);
    seg.id
}

#[test]
fn a_world_or_group_writable_segment_is_refused_with_permission_and_kept() {
    for mode in [0o666, 0o622, 0o620, 0o602] {
        let ring = Ring::new(&format!("perm-{mode:o}"));
        let id = planted_ring(&ring, mode);
        for side in ["sender", "receiver"] {
            let cfg = ring.cfg(8, 64);
            let r = if side == "sender" {
                cfg.open_sender().map(drop)
            } else {
                cfg.open_receiver().map(drop)
            };
            match r {
                Err(e @ Error::Permission(_)) => {
                    let m = e.to_string();
                    assert!(m.contains(&format!("{mode:#o}")), "{mode:o} {side}: {m}");
                }
                other => panic!("mode {mode:o}, {side}: {other:?}"),
            }
            assert_eq!(ring.shmid(), Some(id), "a refused segment is not removed");
        }
    }
}

#[test]
fn a_segment_with_the_requested_wider_mode_is_accepted() {
    let ring = Ring::new("perm-wide");
    planted_ring(&ring, 0o660);
    let mut cfg = ring.cfg(8, 64);
    cfg.mode = 0o660;
    // Valid, nobody attached, no role held: stale, recycled with the requested mode.
    let tx = cfg.open_sender().unwrap();
    assert_eq!(ring.stat().unwrap().shm_perm.mode & 0o777, 0o660);
    drop(tx);
    ring.assert_gone("a sender that sent nothing removes the segment");
    // Default mode 0600 creates 0600.
    let tx = ring.cfg(8, 64).open_sender().unwrap();
    assert_eq!(ring.stat().unwrap().shm_perm.mode & 0o777, 0o600);
    drop(tx);
}

#[test]
fn an_invalid_requested_mode_is_refused_before_touching_anything() {
    let ring = Ring::new("perm-invalid");
    for mode in [0o400, 0o1600, 0o200] {
        let mut cfg = ring.cfg(8, 64);
        cfg.mode = mode;
        match cfg.open_sender() {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("mode"), "{m}"),
            other => panic!("mode {mode:o}: {other:?}"),
        }
    }
    ring.assert_gone("nothing was created");
}

#[test]
fn a_segment_owned_by_another_uid_is_refused_unless_allowed() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing a segment's owner needs root");
        return;
    }
    let ring = Ring::new("perm-owner");
    let id = planted_ring(&ring, 0o600);
    let mut ds = stat_id(id).unwrap();
    ds.shm_perm.uid = 65534;
    // SAFETY: `ds` is a valid shmid_ds for IPC_SET.
    assert_eq!(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }, 0);
    match ring.cfg(8, 64).open_receiver() {
        Err(Error::Permission(m)) => assert!(m.contains("65534"), "{m}"),
        other => panic!("segment of another uid: {other:?}"),
    }
    assert_eq!(ring.shmid(), Some(id));
    let mut cfg = ring.cfg(8, 64);
    cfg.allow_other_owner = true;
    let rx = cfg.open_receiver().expect("allowed other owner");
    drop(rx);
}

// ---------------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_endpoints_are_refused_with_a_message_saying_what_was_expected() {
    let ring = Ring::new("endpoints");
    let n = &ring.name;
    let cases: Vec<(String, &str, &[&str])> = vec![
        ("shm://".into(), "Endpoint", &["1 to 64 characters"]),
        ("shm://a/b".into(), "Endpoint", &["\"a/b\"", "1 to 64 characters"]),
        (format!("shm://{}", "a".repeat(65)), "Endpoint", &["1 to 64"]),
        ("shm://bad name".into(), "Endpoint", &["A-Z a-z 0-9"]),
        ("foo://x".into(), "Endpoint", &["\"foo\"", "expected shm://"]),
        ("orders".into(), "Endpoint", &["no scheme", "shm://NAME"]),
        ("shm://0x0".into(), "Endpoint", &["IPC_PRIVATE"]),
        ("shm://0xzz".into(), "Endpoint", &["hex SysV key"]),
        (
            format!("shm://{n}?capacity=3"),
            "InvalidConfig",
            &["power of two", "got 3"],
        ),
        (
            format!("shm://{n}?capacity=0"),
            "InvalidConfig",
            &["power of two", "got 0"],
        ),
        (
            format!("shm://{n}?capacity=lots"),
            "Endpoint",
            &["capacity", "whole number"],
        ),
        (
            format!("shm://{n}?max_message=0"),
            "InvalidConfig",
            &["maximum message size", "got 0"],
        ),
        (format!("shm://{n}?mode=999"), "Endpoint", &["octal"]),
        (
            format!("shm://{n}?wait=sometimes"),
            "Endpoint",
            &["spin, park or adaptive"],
        ),
        (
            format!("shm://{n}?colour=red"),
            "Endpoint",
            &["unknown option", "capacity"],
        ),
        (format!("shm://{n}?capacity"), "Endpoint", &["key=value"]),
    ];
    for (endpoint, expected, parts) in cases {
        for side in ["sender", "receiver"] {
            let r = if side == "sender" {
                shmpipe::open_sender(&endpoint).map(drop)
            } else {
                shmpipe::open_receiver(&endpoint).map(drop)
            };
            let e = r.expect_err(&endpoint);
            assert_eq!(kind(&e), expected, "{endpoint}: {e}");
            let shown = e.to_string();
            let prefix = if expected == "Endpoint" {
                "bad endpoint: "
            } else {
                "invalid configuration: "
            };
            assert!(shown.starts_with(prefix), "{endpoint}: {shown}");
            for p in parts {
                assert!(shown.contains(p), "{endpoint}: {shown:?} should mention {p:?}");
            }
        }
        ring.assert_gone(&format!("{endpoint} must not create a segment"));
    }
    // And a good one works, through the same function.
    let tx = shmpipe::open_sender(&format!("shm://{n}?capacity=4&max_message=8&wait=park")).unwrap();
    assert_eq!(tx.max_message_size(), 8);
}

// ---------------------------------------------------------------------------------------------
// Opens racing each other on a stale ring
// ---------------------------------------------------------------------------------------------

/// A supervisor restarts both ends after a crash: a new sender and a new receiver open the stale
/// ring at the same moment, one in a child process, one here. Both must end up on one working
/// ring (README: "If both processes die, the segment is stale ... and the next `open` of the
/// name recycles it"). Repeated, since the two opens only sometimes overlap.
fn concurrent_reopen_of_stale_ring(stale_side: &str) {
    const TRIALS: usize = 20;
    let child_side = if stale_side == "sender" {
        "sender"
    } else {
        "receiver"
    };
    let mut failures = Vec::new();
    for trial in 0..TRIALS {
        let ring = Ring::new(&format!("race-{stale_side}"));
        stale_ring(&ring, stale_side, 8);
        let mut child = Proc::child(
            "open_on_go",
            &ring.name,
            &[("side", child_side.into()), ("cap", "8".into())],
        );
        child.expect("READY");
        // Both start at the same CLOCK_MONOTONIC instant, ours swept by -40..=+40 µs.
        let start = monotonic_ns() + 5_000_000;
        child.say(&format!("GO {start}"));
        spin_until_ns(start + (trial as u64 % 9) * 10_000 - 40_000);
        let cfg = ring.cfg(8, 64);
        let mut buf = Vec::new();
        let ours = if child_side == "sender" {
            match cfg.open_receiver() {
                Ok(mut rx) => match rx.recv_timeout(&mut buf, Duration::from_secs(1)) {
                    Ok(()) if buf == b"hello" => "Ok".to_string(),
                    r => format!("receiver Ok, then recv {r:?} with sender {:?}", rx.sender()),
                },
                Err(e) => format!("receiver {e:?}"),
            }
        } else {
            match cfg.open_sender() {
                Ok(mut tx) => match tx.send_timeout(b"hello", Duration::from_secs(1)) {
                    Ok(()) => "Ok".to_string(),
                    r => format!("sender Ok, then send {r:?} with receiver {:?}", tx.receiver()),
                },
                Err(e) => format!("sender {e:?}"),
            }
        };
        let opened = child.line(SOON);
        let after_open = if opened == "OPENED Ok" {
            child.line(SOON)
        } else {
            String::new()
        };
        let theirs_ok = opened == "OPENED Ok"
            && (after_open == "SENT Ok(())" || after_open.starts_with("GOT Ok(()) hello"));
        if ours != "Ok" || !theirs_ok {
            failures.push(format!(
                "trial {trial}: child {child_side}: {opened:?} {after_open:?}; here: {ours}"
            ));
        }
        let _ = child.wait(SOON);
    }
    assert!(
        failures.is_empty(),
        "{} of {TRIALS} concurrent reopens of a stale ring failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_new_sender_and_receiver_reopening_a_killed_senders_stale_ring_at_once_both_succeed() {
    concurrent_reopen_of_stale_ring("sender");
}

#[test]
fn a_new_sender_and_receiver_reopening_a_killed_receivers_stale_ring_at_once_both_succeed() {
    concurrent_reopen_of_stale_ring("receiver");
}

// ---------------------------------------------------------------------------------------------
// A paused peer is not a dead one; a dead one is noticed
// ---------------------------------------------------------------------------------------------

/// Whether every thread of `pid` is in state `T` (stopped) per `/proc/PID/task/*/stat`.
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .is_ok_and(|st| st.rfind(')').and_then(|i| st[i + 1..].split_whitespace().next()) == Some("T"))
    })
}

#[test]
fn a_sigstopped_consumer_is_not_dead_and_resumes_after_sigcont() {
    const MAX: usize = 32;
    let ring = Ring::new("sigstop");
    let mut tx = ring.cfg(4, MAX).open_sender().unwrap();
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[("max", MAX.to_string()), ("wait", "park".into())],
    );
    child.expect("READY");
    // SAFETY: plain syscall on our child.
    assert_eq!(unsafe { libc::kill(child.pid, libc::SIGSTOP) }, 0);
    // The group stop reaches each thread only when it next enters the kernel: wait until all
    // of them are stopped, or the receiving thread may still consume a few messages.
    let deadline = Instant::now() + SOON;
    while !all_threads_stopped(child.pid) {
        assert!(Instant::now() < deadline, "the child never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut buf = Vec::new();
    let mut seq = 0;
    let t0 = Instant::now();
    let r = loop {
        pattern(seq, MAX, &mut buf);
        match tx.send_timeout(&buf, Duration::from_millis(1500)) {
            Ok(()) => seq += 1,
            Err(e) => break e,
        }
        assert!(t0.elapsed() < SOON);
    };
    assert_eq!(r, SendTimeoutError::Timeout, "a stopped receiver is not dead");
    assert_eq!(tx.receiver(), Peer::Alive);
    assert!(
        seq <= spsc_accepts(4, MAX, 0),
        "{seq} messages accepted by a ring of 4 whose reader is stopped"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.pid, libc::SIGCONT) }, 0);
    for s in seq..100 {
        pattern(s, MAX, &mut buf);
        send_ok(&mut tx, &buf);
    }
    drop(tx);
    assert_eq!(
        child.expect("GOT"),
        [
            "100".to_string(),
            pattern_checksum(100, MAX).to_string(),
            "Closed".into(),
            "Disconnected".into()
        ]
    );
    child.wait_success(SOON);
    ring.assert_gone("after both closed");
}

#[test]
fn a_ring_too_big_for_the_system_is_refused_with_limit_and_nothing_is_left() {
    let ring = Ring::new("too-big");
    // 2^24 slots of 16 MiB: 256 TiB, more than any machine this runs on can back.
    let cfg = ring.cfg(shmpipe::ring::MAX_CAPACITY, shmpipe::ring::MAX_MESSAGE_LIMIT);
    match cfg.open_sender() {
        Err(e @ Error::Limit(_)) => {
            let m = e.to_string();
            assert!(m.starts_with("system limit: "), "{m}");
            assert!(m.contains("bytes") || m.contains("shm"), "{m}");
        }
        other => panic!("256 TiB ring: {:?}", other.map(|_| "Ok")),
    }
    ring.assert_gone("a refused creation leaves nothing");
}
