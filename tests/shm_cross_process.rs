//! The shared-memory ring between real processes, through the library API: bulk transfer with
//! every byte checked, wraparound, full/empty and timeouts, clean close in both directions,
//! roles held by live processes, oversize messages. The peer is always a child process: this
//! test binary re-run in a role (see `tests/common`).

mod common;

use common::*;
use shmpipe::{
    Peer, Receiver, RecvTimeoutError, SendError, SendTimeoutError, Sender, TooLarge, TryRecvError,
    TrySendError,
};
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    child_main();
}

/// Checks that a `*_timeout` call that expired took at least its timeout and not absurdly long.
fn assert_expired_in_bounds(started: Instant, timeout: Duration) {
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout,
        "returned Timeout after {elapsed:?} < {timeout:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_secs(2),
        "returned Timeout after {elapsed:?}, far beyond {timeout:?}"
    );
}

#[test]
fn million_messages_from_a_child_arrive_complete_in_order_byte_for_byte() {
    const N: u64 = 1_000_000;
    const MAX: usize = 200;
    let ring = Ring::new("million-c2p");
    let mut rx = ring.cfg(1024, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", N.to_string()), ("max", MAX.to_string())],
    );
    child.expect("READY");
    let mut expected = Vec::new();
    let mut sum = 0u64;
    let (mut empties, mut fulls) = (0u64, 0u64);
    for seq in 0..N {
        let msg = rx
            .recv_ref_timeout(SOON)
            .unwrap_or_else(|e| panic!("message {seq}: {e:?}"));
        check_pattern(seq, MAX, &msg, &mut expected);
        sum = checksum(sum, &msg);
        empties += u64::from(msg.is_empty());
        fulls += u64::from(msg.len() == MAX);
    }
    assert!(empties > 0 && fulls > 0, "sizes must span 0..=max");
    let mut buf = Vec::new();
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    assert_eq!(rx.sender(), Peer::Closed);
    assert_eq!(child.expect("SENT"), [N.to_string(), sum.to_string()]);
    child.expect("DONE");
    child.wait_success(SOON);
    assert!(ring.exists(), "the receiver is still open");
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn million_messages_to_a_child_arrive_complete_in_order_byte_for_byte() {
    const N: u64 = 1_000_000;
    const MAX: usize = 100;
    let ring = Ring::new("million-p2c");
    let mut tx = ring.cfg(512, MAX).open_sender().unwrap();
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[("max", MAX.to_string()), ("wait", "park".into())],
    );
    child.expect("READY");
    let mut buf = Vec::new();
    let mut sum = 0u64;
    for seq in 0..N {
        pattern(seq, MAX, &mut buf);
        sum = checksum(sum, &buf);
        tx.send_timeout(&buf, SOON)
            .unwrap_or_else(|e| panic!("message {seq}: {e:?}"));
    }
    drop(tx);
    assert_eq!(
        child.expect("GOT"),
        [
            N.to_string(),
            sum.to_string(),
            "Closed".into(),
            "Disconnected".into()
        ]
    );
    child.wait_success(SOON);
    ring.assert_gone("after both ends closed");
}

fn wraparound(capacity: usize) {
    const N: u64 = 50_000;
    const MAX: usize = 64;
    let ring = Ring::new(&format!("wrap-{capacity}"));
    let mut rx = ring.cfg(capacity, MAX).open_receiver().unwrap();
    assert_eq!(rx.capacity(), capacity);
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", N.to_string()), ("max", MAX.to_string())],
    );
    child.expect("READY");
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..N {
        rx.recv_timeout(&mut buf, SOON)
            .unwrap_or_else(|e| panic!("message {seq}: {e:?}"));
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(
        child.expect("SENT"),
        [N.to_string(), pattern_checksum(N, MAX).to_string()]
    );
    child.wait_success(SOON);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn wraparound_with_capacity_2_keeps_order_across_processes() {
    wraparound(2);
}

#[test]
fn wraparound_with_capacity_4_keeps_order_across_processes() {
    wraparound(4);
}

#[test]
fn full_ring_across_processes_try_send_full_and_send_timeout_expires() {
    const MAX: usize = 64;
    let ring = Ring::new("full");
    // The child creates the ring (4 slots) and does not read until told.
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[("cap", "4".into()), ("max", MAX.to_string()), ("go", "1".into())],
    );
    child.expect("READY");
    // An existing ring keeps its own geometry.
    let mut tx = ring.cfg(1024, 1024).open_sender().unwrap();
    assert_eq!(tx.capacity(), 4);
    assert_eq!(tx.max_message_size(), MAX);
    assert_eq!(tx.receiver(), Peer::Alive);
    let mut buf = Vec::new();
    // At least 4 messages of MAX bytes; more of these, which are shorter on average.
    let fits = spsc_accepts(4, MAX, 0);
    assert!(fits >= 4);
    for seq in 0..fits {
        pattern(seq, MAX, &mut buf);
        tx.try_send(&buf).unwrap();
    }
    pattern(fits, MAX, &mut buf);
    assert_eq!(tx.try_send(&buf), Err(TrySendError::Full));
    assert_eq!(tx.try_send(&buf), Err(TrySendError::Full));
    for timeout in [Duration::from_millis(50), Duration::from_millis(300)] {
        let t0 = Instant::now();
        assert_eq!(tx.send_timeout(&buf, timeout), Err(SendTimeoutError::Timeout));
        assert_expired_in_bounds(t0, timeout);
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_millis(200);
    assert_eq!(
        tx.send_deadline(&buf, Some(deadline)),
        Err(SendTimeoutError::Timeout)
    );
    assert!(Instant::now() >= deadline);
    let t0 = Instant::now();
    assert!(matches!(
        // No room for the next message, so none for one of the maximum size either.
        tx.reserve_timeout(MAX, Duration::from_millis(100)),
        Err(SendTimeoutError::Timeout)
    ));
    assert_expired_in_bounds(t0, Duration::from_millis(100));
    // Still alive and still full: nothing was lost or half-written by the failed attempts.
    assert_eq!(tx.receiver(), Peer::Alive);
    child.say("GO");
    for seq in fits..2000 {
        pattern(seq, MAX, &mut buf);
        send_ok(&mut tx, &buf);
    }
    drop(tx);
    assert_eq!(
        child.expect("GOT"),
        [
            "2000".into(),
            pattern_checksum(2000, MAX).to_string(),
            "Closed".into(),
            "Disconnected".into()
        ]
    );
    child.wait_success(SOON);
    ring.assert_gone("after both ends closed");
}

#[test]
fn empty_ring_across_processes_try_recv_empty_and_recv_timeout_expires() {
    const MAX: usize = 64;
    const N: u64 = 300;
    let ring = Ring::new("empty");
    let mut rx = ring.cfg(8, MAX).open_receiver().unwrap();
    let mut buf = Vec::new();
    // No sender yet: empty, not disconnected.
    assert_eq!(rx.sender(), Peer::NotYet);
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    let t0 = Instant::now();
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    );
    assert_expired_in_bounds(t0, Duration::from_millis(100));
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", N.to_string()), ("max", MAX.to_string()), ("go", "1".into())],
    );
    child.expect("READY");
    assert_eq!(rx.sender(), Peer::Alive);
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    for timeout in [Duration::from_millis(50), Duration::from_millis(300)] {
        let t0 = Instant::now();
        assert_eq!(rx.recv_timeout(&mut buf, timeout), Err(RecvTimeoutError::Timeout));
        assert_expired_in_bounds(t0, timeout);
    }
    let t0 = Instant::now();
    assert!(matches!(
        rx.recv_ref_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert_expired_in_bounds(t0, Duration::from_millis(100));
    assert_eq!(rx.sender(), Peer::Alive);
    child.say("GO");
    let mut expected = Vec::new();
    for seq in 0..N {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.sender(), Peer::Closed);
    child.expect("SENT");
    child.expect("DONE");
    child.wait_success(SOON);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn sender_that_finished_is_drained_completely_then_disconnected_closed() {
    const MAX: usize = 32;
    const N: u64 = 500;
    let ring = Ring::new("drain-closed");
    let mut rx = ring.cfg(1024, MAX).open_receiver().unwrap();
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", N.to_string()), ("max", MAX.to_string())],
    );
    // The child sends everything, closes and exits before we read a single message.
    child.expect("READY");
    child.expect("SENT");
    child.expect("DONE");
    child.wait_success(SOON);
    assert_eq!(rx.sender(), Peer::Closed);
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..N {
        rx.try_recv(&mut buf)
            .unwrap_or_else(|e| panic!("message {seq} of a closed sender: {e:?}"));
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    let t0 = Instant::now();
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert!(t0.elapsed() < DEATH_BOUND, "Disconnected must be immediate");
    assert_eq!(rx.sender(), Peer::Closed);
    assert!(ring.exists(), "the receiver is still open");
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn receiver_that_closes_disconnects_a_sender_blocked_on_a_full_ring() {
    const MAX: usize = 16;
    let ring = Ring::new("rx-close");
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[
            ("cap", "4".into()),
            ("max", MAX.to_string()),
            ("close_after", "10".into()),
        ],
    );
    child.expect("READY");
    let mut tx = ring.cfg(4, MAX).open_sender().unwrap();
    let mut buf = Vec::new();
    // 10 are read, the rest fill the ring.
    let fits = spsc_accepts(4, MAX, 10);
    for seq in 0..fits {
        pattern(seq, MAX, &mut buf);
        send_ok(&mut tx, &buf);
    }
    child.expect("PAUSED");
    pattern(fits, MAX, &mut buf);
    assert_eq!(tx.try_send(&buf), Err(TrySendError::Full));
    // Block in send; the child closes its receiver 300 ms later.
    let mut stdin = child.take_stdin();
    let closer = after(Duration::from_millis(300), move || {
        use std::io::Write;
        stdin.write_all(b"GO\n").unwrap();
    });
    let r = tx.send_timeout(&buf, Duration::from_secs(20));
    let returned = Instant::now();
    let go_at = closer.join().unwrap();
    assert_eq!(r, Err(SendTimeoutError::Disconnected));
    assert!(
        returned >= go_at,
        "send reported Disconnected before the receiver closed"
    );
    assert!(
        returned - go_at < DEATH_BOUND,
        "close noticed after {:?}",
        returned - go_at
    );
    assert_eq!(child.expect("CLOSED"), ["10"]);
    assert_eq!(tx.receiver(), Peer::Closed);
    assert_eq!(tx.try_send(b"x"), Err(TrySendError::Disconnected));
    assert_eq!(tx.send(b"x"), Err(SendError::Disconnected));
    child.wait_success(SOON);
    // The receiver removes the segment when it closes, even while the sender is attached.
    ring.assert_gone("after the receiver closed");
    drop(tx);
    ring.assert_gone("after both ends closed");
}

#[test]
fn messages_of_a_sender_that_finished_before_any_receiver_wait_for_the_receiver() {
    const MAX: usize = 48;
    const N: u64 = 100;
    let ring = Ring::new("queue");
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", N.to_string()),
            ("max", MAX.to_string()),
            ("cap", "128".into()),
        ],
    );
    child.expect("READY");
    child.expect("SENT");
    child.expect("DONE");
    child.wait_success(SOON);
    assert!(
        ring.exists(),
        "unread messages keep the segment for the next receiver"
    );
    // A second sender is refused while those messages are unread.
    match ring.cfg(128, MAX).open_sender() {
        Err(shmpipe::Error::InUse(m)) => assert!(m.contains("unread"), "{m}"),
        other => panic!("second sender: {other:?}"),
    }
    let mut rx = ring.cfg(1024, 1024).open_receiver().unwrap();
    assert_eq!(rx.capacity(), 128);
    assert_eq!(rx.sender(), Peer::Closed);
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..N {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    drop(rx);
    ring.assert_gone("after the receiver drained and dropped");
}

#[test]
fn a_sender_that_sent_nothing_and_had_no_receiver_removes_the_segment() {
    let ring = Ring::new("nothing-sent");
    let mut child = Proc::child("sender", &ring.name, &[("n", "0".into()), ("go", "1".into())]);
    child.expect("READY");
    assert!(ring.exists());
    child.say("GO");
    child.expect("SENT");
    child.expect("DONE");
    child.wait_success(SOON);
    ring.assert_gone("after a sender with nothing sent closed");
}

#[test]
fn a_role_held_by_a_live_process_is_refused_and_the_other_role_is_joinable() {
    let ring = Ring::new("in-use");
    let mut child = Proc::child(
        "hold",
        &ring.name,
        &[("side", "sender".into()), ("go", "1".into()), ("cap", "8".into())],
    );
    child.expect("READY");
    let pid = child.pid.to_string();
    match ring.cfg(8, 64).open_sender() {
        Err(e @ shmpipe::Error::InUse(_)) => {
            let m = e.to_string();
            assert!(m.contains(&pid), "InUse should name the holder pid {pid}: {m}");
        }
        other => panic!("second sender while a live one holds the role: {other:?}"),
    }
    assert!(ring.exists(), "a refused open must not remove the ring");
    let mut rx = ring.cfg(8, 64).open_receiver().unwrap();
    assert_eq!(rx.sender(), Peer::Alive);
    // Our own process now holds the receiver: a second one is refused too.
    match ring.cfg(8, 64).open_receiver() {
        Err(shmpipe::Error::InUse(m)) => {
            assert!(m.contains(&std::process::id().to_string()), "{m}")
        }
        other => panic!("second receiver: {other:?}"),
    }
    child.say("GO");
    child.expect("DONE");
    child.wait_success(SOON);
    let mut buf = Vec::new();
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.sender(), Peer::Closed);
    drop(rx);
    ring.assert_gone("after the receiver dropped");
}

#[test]
fn oversize_messages_are_refused_with_too_large_and_nothing_is_written() {
    const MAX: usize = 16;
    let ring = Ring::new("oversize");
    let mut child = Proc::child(
        "dump",
        &ring.name,
        &[("cap", "8".into()), ("max", MAX.to_string())],
    );
    child.expect("READY");
    let mut tx = ring.cfg(8, 1024).open_sender().unwrap();
    assert_eq!(tx.max_message_size(), MAX);
    let big = TooLarge { len: 17, max: MAX };
    send_ok(&mut tx, b"before");
    assert_eq!(tx.try_send(&[1; 17]), Err(TrySendError::TooLarge(big)));
    assert_eq!(tx.send(&[2; 17]), Err(SendError::TooLarge(big)));
    assert_eq!(
        tx.send_timeout(&[3; 1000], Duration::from_secs(1)),
        Err(SendTimeoutError::TooLarge(TooLarge { len: 1000, max: MAX }))
    );
    assert!(matches!(tx.try_reserve(17), Err(TrySendError::TooLarge(t)) if t == big));
    assert!(matches!(tx.reserve(17), Err(SendError::TooLarge(t)) if t == big));
    assert_eq!(
        SendError::TooLarge(big).to_string(),
        "message of 17 bytes exceeds the maximum of 16 bytes"
    );
    send_ok(&mut tx, b"");
    send_ok(&mut tx, &[9; MAX]);
    // An uncommitted reservation publishes nothing; a committed one is seen in full.
    {
        let mut slot = tx.reserve_timeout(5, SOON).unwrap();
        slot.copy_from_slice(b"ghost");
    }
    let mut slot = tx.reserve_timeout(5, SOON).unwrap();
    slot.copy_from_slice(b"after");
    slot.commit();
    drop(tx);
    let mut got = Vec::new();
    loop {
        let line = child.line(SOON);
        if line.starts_with("END") {
            assert_eq!(line, "END Disconnected Closed");
            break;
        }
        got.push(line);
    }
    let hex = |b: &[u8]| format!("MSG {}", b.iter().map(|x| format!("{x:02x}")).collect::<String>());
    assert_eq!(
        got,
        [hex(b"before"), "MSG -".into(), hex(&[9; MAX]), hex(b"after")]
    );
    child.wait_success(SOON);
    ring.assert_gone("after both ends closed");
}

#[test]
fn large_messages_up_to_4_mib_cross_intact() {
    const MAX: usize = 4 << 20;
    const N: u64 = 24;
    let ring = Ring::new("large");
    let mut rx = ring.cfg(2, MAX).open_receiver().unwrap();
    assert_eq!(ring.stat().unwrap().shm_segsz, ring_size(2, MAX));
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", N.to_string()), ("max", MAX.to_string())],
    );
    child.expect("READY");
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..N {
        recv_ok(&mut rx, &mut buf);
        check_pattern(seq, MAX, &buf, &mut expected);
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
fn a_receiver_addressing_the_ring_by_raw_key_meets_a_sender_using_its_name() {
    let ring = Ring::new("raw-key");
    // The sender creates the ring by name (a ring created by raw key has no name to match).
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[
            ("n", "50".into()),
            ("cap", "8".into()),
            ("max", "64".into()),
            ("go", "1".into()),
        ],
    );
    child.expect("READY");
    let raw = format!("shm://{:#010x}", ring.key);
    let mut rx = shmpipe::open_receiver(&raw).unwrap();
    child.say("GO");
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..50 {
        rx.recv_timeout(&mut buf, SOON).unwrap();
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
fn a_deadline_already_past_times_out_at_once_on_a_full_ring_and_succeeds_with_room() {
    let ring = Ring::new("past-deadline");
    let mut child = Proc::child(
        "receiver",
        &ring.name,
        &[("cap", "2".into()), ("max", "64".into()), ("go", "1".into())],
    );
    child.expect("READY");
    let mut tx = ring.cfg(2, 64).open_sender().unwrap();
    let past = Instant::now() - Duration::from_millis(5);
    let mut buf = Vec::new();
    let fits = spsc_accepts(2, 64, 0);
    for seq in 0..fits {
        pattern(seq, 64, &mut buf);
        assert_eq!(tx.send_deadline(&buf, Some(past)), Ok(()), "room: no wait needed");
    }
    pattern(fits, 64, &mut buf);
    let t0 = Instant::now();
    assert_eq!(tx.send_deadline(&buf, Some(past)), Err(SendTimeoutError::Timeout));
    assert_eq!(
        tx.send_timeout(&buf, Duration::ZERO),
        Err(SendTimeoutError::Timeout)
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    child.say("GO");
    send_ok(&mut tx, &buf);
    drop(tx);
    assert_eq!(child.expect("GOT")[0], (fits + 1).to_string());
    child.wait_success(SOON);
    ring.assert_gone("after both closed");
}

/// `bytes=` sizes an SPSC ring by its message memory: small messages are stored densely (a
/// 1 MiB ring holds at least 40,000 8-byte ones, 65,535 in fact), across processes.
#[test]
fn a_ring_sized_in_bytes_holds_small_messages_densely_across_processes() {
    const MAX: usize = 8;
    let ring = Ring::new("bytes");
    let endpoint = format!("{}?bytes=1MiB&max_message={MAX}", ring.endpoint());
    let mut tx = shmpipe::open_sender(&endpoint).unwrap();
    let size = ring.stat().unwrap().shm_segsz;
    assert!(size <= off::SLOTS + (1 << 20), "segment of {size} bytes");
    let mut buf = Vec::new();
    let mut sent = 0;
    loop {
        pattern(sent, MAX, &mut buf);
        match tx.try_send(&buf) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full) => break,
            Err(e) => panic!("message {sent}: {e:?}"),
        }
    }
    assert!(
        sent >= 40_000,
        "a 1 MiB ring took {sent} messages of up to 8 bytes"
    );
    // Records of 8 and 16 bytes (lengths 0..=8): at least one per 16 bytes.
    assert!(sent >= ((size - off::SLOTS - 8) / 16) as u64, "{sent}");
    let mut child = Proc::child("receiver", &ring.name, &[("max", MAX.to_string())]);
    child.expect("READY");
    drop(tx);
    assert_eq!(
        child.expect("GOT"),
        [
            sent.to_string(),
            pattern_checksum(sent, MAX).to_string(),
            "Closed".into(),
            "Disconnected".into()
        ]
    );
    child.wait_success(SOON);
    ring.assert_gone("after both ends closed");
}
