//! Ends inherited across `fork()`: every pre-fork server, and every `Command` that forks before
//! it execs, gives its child a copy of each end. The copy belongs to the parent: used in the
//! child it returns `Forked` (touching nothing), dropped there it only detaches, and the parent's
//! channel goes on as if the fork had not happened (no close, no leave, no removal).
//!
//! The forked child runs only the end's methods and `_exit`, and reports what it saw in its exit
//! status (one bit per check that failed).

mod common;

use common::*;
use shmpipe::ring::RingKind;
use shmpipe::{Peer, Receiver, RecvError, SendError, Sender, TryRecvError, TrySendError};
use std::time::Duration;

#[test]
fn child_entry() {
    child_main();
}

#[test]
fn an_spsc_ring_survives_a_forked_child_that_uses_and_drops_both_ends() {
    let ring = Ring::new("fork-spsc");
    let mut rx = ring.cfg(8, 64).open_receiver().unwrap();
    let mut tx = ring.cfg(8, 64).open_sender().unwrap();
    tx.send(b"before").unwrap();
    let code = in_forked_child(|| {
        let mut buf = Vec::new();
        fails(tx.try_send(b"child") == Err(TrySendError::Forked), 0)
            | fails(tx.send(b"child") == Err(SendError::Forked), 1)
            | fails(rx.try_recv(&mut buf) == Err(TryRecvError::Forked), 2)
            | fails(rx.recv(&mut buf) == Err(RecvError::Forked), 3)
            | fails(rx.try_recv_ref().err() == Some(TryRecvError::Forked), 4)
            | fails(buf.is_empty(), 5)
            | {
                drop_inherited(&tx);
                drop_inherited(&rx);
                0
            }
    });
    assert_eq!(code, 0, "the forked child saw other results (bits {code:#b})");
    // The parent's channel is whole: the message sent before the fork is still there, nothing the
    // child tried arrived, both roles are still held, and the segment is still at its key.
    assert!(ring.exists(), "the forked child's drop removed the ring");
    assert_eq!((tx.receiver(), rx.sender()), (Peer::Alive, Peer::Alive));
    let mut buf = Vec::new();
    rx.recv_timeout(&mut buf, SOON).unwrap();
    assert_eq!(buf, b"before");
    tx.send(b"after").unwrap();
    rx.recv_timeout(&mut buf, SOON).unwrap();
    assert_eq!(buf, b"after");
    assert_eq!(
        rx.try_recv(&mut buf),
        Err(TryRecvError::Empty),
        "the child's messages must not arrive"
    );
    drop(tx);
    drop(rx);
    ring.assert_gone("after the parent closed both ends");
}

#[test]
fn a_receiver_in_another_process_keeps_its_stream_when_the_senders_fork_child_exits() {
    // The reported defect: a forked child dropping the inherited sender closed the stream (and
    // removed the ring) under the parent and its receiver.
    let ring = Ring::new("fork-spsc-peer");
    let mut tx = ring.cfg(16, 64).open_sender().unwrap();
    let mut rx = Proc::child("receiver", &ring.name, &[("max", "64".into())]);
    rx.expect("READY");
    let mut buf = Vec::new();
    let mut sum = 0;
    for seq in 0..100 {
        pattern(seq, 64, &mut buf);
        sum = checksum(sum, &buf);
        tx.send_timeout(&buf, SOON).unwrap();
    }
    let code = in_forked_child(|| {
        let ok = tx.try_send(b"x") == Err(TrySendError::Forked);
        drop_inherited(&tx);
        fails(ok, 0)
    });
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_millis(200));
    for seq in 100..200 {
        pattern(seq, 64, &mut buf);
        sum = checksum(sum, &buf);
        tx.send_timeout(&buf, SOON).unwrap();
    }
    drop(tx);
    assert_eq!(
        rx.expect("GOT"),
        [
            "200".to_string(),
            sum.to_string(),
            "Closed".into(),
            "Disconnected".into()
        ]
    );
    rx.wait(SOON);
    ring.assert_gone("after both ends closed");
}

#[test]
fn an_mpmc_ring_keeps_its_members_when_a_forked_child_drops_their_copies() {
    let ring = Ring::new("fork-mpmc");
    let cfg = ring.cfg(8, 64).kind(RingKind::Mpmc);
    let mut rx = cfg.open_mpmc_receiver().unwrap();
    let mut tx = cfg.open_mpmc_sender().unwrap();
    let code = in_forked_child(|| {
        let mut buf = Vec::new();
        let r = fails(tx.try_send(b"child") == Err(TrySendError::Forked), 0)
            | fails(tx.send(b"child") == Err(SendError::Forked), 1)
            | fails(rx.try_recv(&mut buf) == Err(TryRecvError::Forked), 2)
            | fails(rx.recv(&mut buf) == Err(RecvError::Forked), 3);
        drop_inherited(&tx);
        drop_inherited(&rx);
        r
    });
    assert_eq!(code, 0, "the forked child saw other results (bits {code:#b})");
    let st = tx.stats();
    assert_eq!(
        (st.senders, st.receivers, st.senders_died, st.receivers_died),
        (1, 1, 0, 0),
        "{st:?}"
    );
    assert!(ring.exists());
    let mut buf = Vec::new();
    for seq in 0..100u32 {
        tx.send_timeout(&seq.to_le_bytes(), SOON).unwrap();
        rx.recv_timeout(&mut buf, SOON).unwrap();
        assert_eq!(buf, seq.to_le_bytes());
    }
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    drop(tx);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(shmpipe::RecvTimeoutError::Disconnected)
    );
    drop(rx);
    ring.assert_gone("after the last member left");
}
