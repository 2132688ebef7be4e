//! Loom models of the SPSC ring: FIFO exactly-once delivery, the park/wake (doorbell) protocol,
//! disconnect while the peer is parked, the zero-copy reserve/commit and recv_ref paths, and the
//! record layout's own protocol: pad records, the terminator word, batches.
//!
//! Each test is one small model named for the interleaving it is about. Under loom the futex is a
//! Mutex + Condvar per word with no timeout, so a lost wakeup shows up as a loom deadlock.
//!
//! Under `cfg(loom)` the ring's record memory (`ring::records::Records`) models every 8-byte
//! word's header as a loom `AtomicU64` and marks every payload access (and the header word of the
//! record it belongs to) on a per-word loom `UnsafeCell`: a read of a record not ordered after
//! its write, or a write (the next lap's) not ordered after the read, is a loom causality
//! violation. Every received message is also checked for its exact length and bytes, and every
//! header the consumer reads is checked by the ring itself (stamped for its position, or the
//! ring reports `Corrupted`, which the helpers here turn into a panic). With
//! `--cfg shmpipe_loom_weaken` (the header publishing store and the consumer's `head` store made
//! Relaxed) the models that publish or reuse records concurrently fail.
//!
//! Geometry: `channel(2, 8)` is 48 bytes, three 16-byte record positions (offsets 0, 16, 32).
//! Every message of `MSGS` (1 to 4 bytes) takes one 16-byte record, so the ring holds exactly two
//! of them: a third needs its 16 bytes plus the 8-byte terminator after it (`2 * 16 + 24 > 48`).
//! The third message goes to offset 32 and its terminator to offset 0, the first message's header
//! word, so it waits for the first to be freed; the fourth is the first whose record reuses
//! memory a concurrent read used (offset 0, second lap). No pad ever happens there (records of 16
//! bytes in 48): the pad models use `channel_bytes(72, 16)` and `PAD_MSGS`.
#![cfg(loom)]

use loom::thread;
use shmpipe::ring::spsc::{self, Consumer, Producer};
use shmpipe::{
    Batch, Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Sender, TryRecvError,
    TrySendError, WaitStrategy,
};
use shmpipe_loom_tests::{model_capped, End};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Largest message of `channel` (a 16-byte record: 8-byte header, 8 bytes of payload).
const MAX_MESSAGE: usize = 8;

/// Distinct lengths and distinct bytes, so a stale length or a message from the wrong record (or
/// the wrong lap) never compares equal to the expected one. One 16-byte record each.
const MSGS: [&[u8]; 4] = [b"a", b"bc", b"def", b"ghij"];

/// Runs `f` under loom within the preemption bound (`LOOM_MAX_PREEMPTIONS`, 3 when unset).
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    model_capped(None, f)
}

type Tx = End<Producer>;
type Rx = End<Consumer>;

fn channel(capacity: usize) -> (Tx, Rx) {
    let (tx, rx) = spsc::channel(capacity, MAX_MESSAGE).unwrap();
    (End::new(tx), End::new(rx))
}

/// A channel whose blocking calls park on the futex at once, with no spinning or yielding.
fn parking_channel(capacity: usize) -> (Tx, Rx) {
    let (mut tx, mut rx) = channel(capacity);
    tx.set_wait_strategy(WaitStrategy::park_only());
    rx.set_wait_strategy(WaitStrategy::park_only());
    (tx, rx)
}

/// Sends with `try_send`, yielding to the model while the ring is full.
fn send_spinning(tx: &mut Producer, msg: &[u8]) {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return,
            Err(TrySendError::Full) => thread::yield_now(),
            Err(e) => panic!("try_send({msg:?}) failed: {e:?}"),
        }
    }
}

/// Receives with `try_recv`, yielding to the model while the ring is empty.
fn recv_spinning(rx: &mut Consumer, buf: &mut Vec<u8>) {
    loop {
        match rx.try_recv(buf) {
            Ok(()) => return,
            Err(TryRecvError::Empty) => thread::yield_now(),
            Err(e) => panic!("try_recv failed: {e:?}"),
        }
    }
}

/// Checks one received message of `MSGS`: length first (from the header word), then bytes.
#[track_caller]
fn assert_msg(got: &[u8], i: usize) {
    assert_sent(got, &MSGS, i);
}

/// Checks that `got` is message `i` of `sent`: its exact length (read from the record's header
/// word), then its bytes.
#[track_caller]
fn assert_sent(got: &[u8], sent: &[&[u8]], i: usize) {
    let want = sent[i];
    assert_eq!(
        got.len(),
        want.len(),
        "message {i}: length {} read from the record header, {} sent",
        got.len(),
        want.len()
    );
    assert_eq!(got, want, "message {i}: wrong bytes");
}

// ---------------------------------------------------------------------------------------------
// FIFO, exactly once, with wraparound (non-blocking calls on both sides)
// ---------------------------------------------------------------------------------------------

/// Four messages through a ring that holds two: the third waits for the first to be freed (its
/// terminator is the first's header word), the fourth reuses the first's record on the second lap
/// (offset 0), so the consumer must see the second lap's header, length and bytes, in order, each
/// message exactly once, and then nothing more.
#[test]
fn fifo_exactly_once_wraps_at_capacity_two() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let producer = thread::spawn(move || {
            for msg in MSGS {
                send_spinning(&mut tx, msg);
            }
        });
        let mut buf = Vec::new();
        for i in 0..MSGS.len() {
            recv_spinning(&mut rx, &mut buf);
            assert_msg(&buf, i);
        }
        // Never a fifth message, whether or not the producer has gone yet.
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            other => panic!("after the last message: {other:?}, buf {buf:?}"),
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

/// The producer fills the ring (two messages) and tries a third while the consumer drains: the
/// third fits only once the first is freed (its terminator overwrites the first's header word),
/// so `Full` or not, nothing unread is overwritten and every message that went is intact.
#[test]
fn try_send_on_full_ring_reports_full_and_overwrites_nothing() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let producer = thread::spawn(move || {
            tx.try_send(MSGS[0]).unwrap();
            tx.try_send(MSGS[1]).unwrap();
            // The consumer may or may not have freed the first record yet; if not, nothing is
            // written.
            match tx.try_send(MSGS[2]) {
                Ok(()) => true,
                Err(TrySendError::Full) => false,
                Err(e) => panic!("third try_send: {e:?}"),
            }
        });
        let mut buf = Vec::new();
        recv_spinning(&mut rx, &mut buf);
        assert_msg(&buf, 0);
        recv_spinning(&mut rx, &mut buf);
        assert_msg(&buf, 1);
        let sent_third = producer.join().unwrap();
        if sent_third {
            rx.try_recv(&mut buf).unwrap();
            assert_msg(&buf, 2);
        }
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

// ---------------------------------------------------------------------------------------------
// Zero-copy paths: reserve/commit and recv_ref
// ---------------------------------------------------------------------------------------------

/// The producer writes in place through `try_reserve` + `commit`, four messages through a ring
/// that holds two (the fourth reserves the first's record again, on the second lap); the consumer
/// copies them out.
#[test]
fn fifo_reserve_commit_wraps_at_capacity_two() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let producer = thread::spawn(move || {
            for msg in MSGS {
                loop {
                    match tx.try_reserve(msg.len()) {
                        Ok(mut slot) => {
                            slot.copy_from_slice(msg);
                            slot.commit();
                            break;
                        }
                        Err(TrySendError::Full) => thread::yield_now(),
                        Err(e) => panic!("try_reserve: {e:?}"),
                    }
                }
            }
        });
        let mut buf = Vec::new();
        for i in 0..MSGS.len() {
            recv_spinning(&mut rx, &mut buf);
            assert_msg(&buf, i);
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

/// The consumer reads in place through `try_recv_ref`; a record is freed only when its guard
/// drops, and the producer's fourth message reuses the first's record (the third waits for the
/// first guard's drop: its terminator is the first's header word).
#[test]
fn fifo_recv_ref_wraps_at_capacity_two() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let producer = thread::spawn(move || {
            for msg in MSGS {
                send_spinning(&mut tx, msg);
            }
        });
        for i in 0..MSGS.len() {
            loop {
                match rx.try_recv_ref() {
                    Ok(msg) => {
                        assert_msg(&msg, i);
                        break;
                    }
                    Err(TryRecvError::Empty) => thread::yield_now(),
                    Err(e) => panic!("try_recv_ref: {e:?}"),
                }
            }
        }
        producer.join().unwrap();
        assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Disconnected)));
    });
}

/// An abandoned reservation publishes nothing, and `commit_len` publishes only the prefix: the
/// consumer sees exactly the committed messages.
#[test]
fn abandoned_reservation_and_commit_len_publish_exactly_what_was_committed() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let producer = thread::spawn(move || {
            {
                let mut slot = tx.try_reserve(MAX_MESSAGE).unwrap();
                slot.fill(b'x');
                // Dropped uncommitted.
            }
            let mut slot = tx.try_reserve(MAX_MESSAGE).unwrap();
            slot[..2].copy_from_slice(MSGS[1]);
            slot.commit_len(2);
        });
        let mut buf = Vec::new();
        recv_spinning(&mut rx, &mut buf);
        assert_msg(&buf, 1);
        producer.join().unwrap();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

// ---------------------------------------------------------------------------------------------
// Park/wake: a blocked side is always woken (a lost wakeup is a loom deadlock)
// ---------------------------------------------------------------------------------------------

/// The consumer parks in `recv` on an empty ring while the producer publishes one message: the
/// doorbell's waiter count and the producer's fence must not both miss each other.
#[test]
fn recv_parked_on_empty_is_woken_by_send() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || {
            tx.send(MSGS[0]).unwrap();
            tx // Kept alive: the wakeup must come from the message, not from the close.
        });
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        assert_msg(&buf, 0);
        drop(producer.join().unwrap());
    });
}

/// Two messages, two parks: the consumer may park twice (the waiter count goes up and down) and
/// each message must wake it.
#[test]
fn recv_parked_twice_is_woken_by_each_send() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || {
            tx.send(MSGS[0]).unwrap();
            tx.send(MSGS[1]).unwrap();
            tx
        });
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        assert_msg(&buf, 0);
        rx.recv(&mut buf).unwrap();
        assert_msg(&buf, 1);
        drop(producer.join().unwrap());
    });
}

/// The producer parks in `send` on a full ring (two messages, sent beforehand) while the consumer
/// frees the first record with a non-blocking receive (the third message's terminator goes over
/// the first's header word, so the first must be freed).
#[test]
fn send_parked_on_full_is_woken_by_recv() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let producer = thread::spawn(move || {
            tx.send(MSGS[2]).unwrap();
            tx
        });
        let mut buf = Vec::new();
        for i in 0..3 {
            recv_spinning(&mut rx, &mut buf);
            assert_msg(&buf, i);
        }
        drop(producer.join().unwrap());
    });
}

/// Both sides block: the producer parks on full and the consumer parks on empty, each woken only by
/// the other's doorbell. Three messages through a ring that holds two: the third record ends the
/// memory and its terminator is at offset 0, over the first's header.
#[test]
fn send_and_recv_both_parking_wrap_at_capacity_two() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || {
            for msg in &MSGS[..3] {
                tx.send(msg).unwrap();
            }
            tx
        });
        let mut buf = Vec::new();
        for i in 0..3 {
            rx.recv(&mut buf).unwrap();
            assert_msg(&buf, i);
        }
        drop(producer.join().unwrap());
    });
}

/// The consumer parks in `recv_ref` and is woken by a `reserve` + `commit`.
#[test]
fn recv_ref_parked_is_woken_by_reserve_commit() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || {
            let mut slot = tx.reserve(MSGS[2].len()).unwrap();
            slot.copy_from_slice(MSGS[2]);
            slot.commit();
            tx
        });
        {
            let msg = rx.recv_ref().unwrap();
            assert_msg(&msg, 2);
        }
        drop(producer.join().unwrap());
    });
}

/// The producer parks in `reserve` on a full ring and is woken when the consumer drops a
/// `ReadGuard` (the guard, not a copy, frees the record).
#[test]
fn reserve_parked_on_full_is_woken_by_read_guard_drop() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let producer = thread::spawn(move || {
            let mut slot = tx.reserve(MSGS[2].len()).unwrap();
            slot.copy_from_slice(MSGS[2]);
            slot.commit();
            tx
        });
        for i in 0..3 {
            let msg = rx.recv_ref().unwrap();
            assert_msg(&msg, i);
        }
        drop(producer.join().unwrap());
    });
}

/// The spin and yield phases before parking: a waiter that gives up spinning must still get the
/// wakeup, on both doorbells.
#[test]
fn spin_then_yield_then_park_is_woken_on_both_sides() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let strategy = WaitStrategy::default().spins(1).yields(1);
        tx.set_wait_strategy(strategy);
        rx.set_wait_strategy(strategy);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let producer = thread::spawn(move || {
            tx.send(MSGS[2]).unwrap();
            tx
        });
        let mut buf = Vec::new();
        for i in 0..3 {
            rx.recv(&mut buf).unwrap();
            assert_msg(&buf, i);
        }
        drop(producer.join().unwrap());
    });
}

// ---------------------------------------------------------------------------------------------
// Timed waits. Loom has no clock: in a model a deadline passes at the waiter's first park, which
// only yields (see `wait::deadline_passed`), so which of "in time" and "timed out" happens is
// decided by the interleaving, and each model checks that loom explored both.
// ---------------------------------------------------------------------------------------------

/// Counts the runs of a model that ended each way: `[in time, timed out]`. Plain std atomics,
/// outside the model (loom runs one execution at a time), so every access is Relaxed: counts
/// read after the model has returned.
type Outcomes = [AtomicUsize; 2];

fn assert_both_outcomes(outcomes: &Outcomes) {
    // Relaxed: see `Outcomes`.
    let [in_time, timed_out] = [&outcomes[0], &outcomes[1]].map(|n| n.load(Relaxed));
    assert!(
        in_time > 0 && timed_out > 0,
        "both outcomes of the timed wait explored: {in_time} in time, {timed_out} timed out"
    );
}

/// `recv_timeout` on an empty ring (the default wait strategy, cut to one spin and one yield
/// under loom) against a send: it returns the message, or `Timeout` with the message still in
/// the ring, and then a blocking `recv` after the timed-out wait must still be woken by the send
/// (the timed-out waiter left no state behind that swallows the wakeup). The producer is kept
/// alive, so no close can do the waking.
#[test]
fn recv_timeout_gets_the_message_or_times_out_and_loses_nothing() {
    static OUTCOMES: Outcomes = [AtomicUsize::new(0), AtomicUsize::new(0)];
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let producer = thread::spawn(move || {
            tx.send(MSGS[0]).unwrap();
            tx
        });
        let mut buf = Vec::new();
        match rx.recv_timeout(&mut buf, Duration::from_secs(3600)) {
            Ok(()) => OUTCOMES[0].fetch_add(1, Relaxed),
            Err(RecvTimeoutError::Timeout) => {
                rx.recv(&mut buf).unwrap();
                OUTCOMES[1].fetch_add(1, Relaxed)
            }
            Err(e) => panic!("recv_timeout failed: {e:?}"),
        };
        assert_msg(&buf, 0);
        drop(producer.join().unwrap());
    });
    assert_both_outcomes(&OUTCOMES);
}

/// `send_timeout` on a full ring against a consumer taking everything: it sends, or returns
/// `Timeout` having written nothing, and then a blocking `send` must still be woken by a receive.
/// The consumer must get the three messages exactly once, in order.
#[test]
fn send_timeout_sends_or_times_out_and_writes_nothing() {
    static OUTCOMES: Outcomes = [AtomicUsize::new(0), AtomicUsize::new(0)];
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            for i in 0..3 {
                rx.recv(&mut buf).unwrap();
                assert_msg(&buf, i);
            }
            rx
        });
        match tx.send_timeout(MSGS[2], Duration::from_secs(3600)) {
            Ok(()) => OUTCOMES[0].fetch_add(1, Relaxed),
            Err(SendTimeoutError::Timeout) => {
                tx.send(MSGS[2]).unwrap();
                OUTCOMES[1].fetch_add(1, Relaxed)
            }
            Err(e) => panic!("send_timeout failed: {e:?}"),
        };
        drop(consumer.join().unwrap());
    });
    assert_both_outcomes(&OUTCOMES);
}

// ---------------------------------------------------------------------------------------------
// Disconnect while the peer is parked
// ---------------------------------------------------------------------------------------------

/// The consumer parks on an empty ring and the producer is dropped without sending: the close
/// must wake it with `Disconnected`.
#[test]
fn recv_parked_is_woken_by_sender_drop() {
    model(|| {
        let (tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || drop(tx));
        let mut buf = Vec::new();
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        producer.join().unwrap();
    });
}

/// Non-blocking receives racing the sender's last sends and its drop: once `try_recv` says
/// `Disconnected` everything sent before the drop has been received. No fence on the consumer's
/// side here, so only the close's Release (paired with the Acquire load of the role state) makes
/// the last record header visible to the consumer's final re-check.
#[test]
fn try_recv_drains_everything_sent_before_sender_drop() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let producer = thread::spawn(move || {
            tx.try_send(MSGS[0]).unwrap();
            tx.try_send(MSGS[1]).unwrap();
            drop(tx);
        });
        let mut buf = Vec::new();
        let mut received = 0;
        loop {
            match rx.try_recv(&mut buf) {
                Ok(()) => {
                    assert_msg(&buf, received);
                    received += 1;
                }
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(TryRecvError::Disconnected) => break,
                Err(e) => panic!("try_recv: {e:?}"),
            }
        }
        assert_eq!(received, 2, "disconnected before receiving everything sent");
        producer.join().unwrap();
    });
}

/// The producer sends two messages and drops while the consumer is parked: the consumer drains
/// both, in order, and only then gets `Disconnected` (nothing sent before the close is lost, even
/// when the close is seen before the last publication is).
#[test]
fn recv_parked_drains_everything_sent_then_disconnects() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || {
            tx.send(MSGS[0]).unwrap();
            tx.send(MSGS[1]).unwrap();
            drop(tx);
        });
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        assert_msg(&buf, 0);
        rx.recv(&mut buf).unwrap();
        assert_msg(&buf, 1);
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        producer.join().unwrap();
    });
}

/// The same drain through the zero-copy path: `recv_ref` after the sender dropped.
#[test]
fn recv_ref_parked_drains_then_disconnects() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || {
            tx.send(MSGS[3]).unwrap();
            drop(tx);
        });
        {
            let msg = rx.recv_ref().unwrap();
            assert_msg(&msg, 3);
        }
        assert!(matches!(rx.recv_ref(), Err(RecvError::Disconnected)));
        producer.join().unwrap();
    });
}

/// The producer parks in `send` on a full ring and the consumer is dropped without reading: the
/// close must wake it with `Disconnected`.
#[test]
fn send_parked_on_full_is_woken_by_receiver_drop() {
    model(|| {
        let (mut tx, rx) = parking_channel(2);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let consumer = thread::spawn(move || drop(rx));
        assert_eq!(tx.send(MSGS[2]), Err(SendError::Disconnected));
        consumer.join().unwrap();
    });
}

/// A send racing the receiver's close is `Disconnected` only if the receiver did not take its
/// message: the receiver takes what is there (`try_recv`, once) and closes while the producer
/// sends. `Disconnected` for a message that was received would invite the caller to resend it
/// elsewhere: a duplicate. (The downstream loom models found this; before the fix, a send that
/// saw the close after publishing always said `Disconnected`.) With an `Ok`, the message may
/// or may not have been read, as for any message sent just before a receiver leaves.
#[test]
fn send_racing_the_receivers_close_is_disconnected_only_if_its_message_was_not_taken() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            let took = match rx.try_recv(&mut buf) {
                Ok(()) => {
                    assert_eq!(buf, MSGS[0]);
                    true
                }
                Err(TryRecvError::Empty) => false,
                Err(e) => panic!("try_recv: {e:?}"),
            };
            drop(rx);
            took
        });
        let sent = tx.try_send(MSGS[0]);
        let took = consumer.join().unwrap();
        match sent {
            Ok(()) => {}
            Err(TrySendError::Disconnected) => assert!(!took, "Disconnected, but the message was received"),
            Err(e) => panic!("try_send: {e:?}"),
        }
        // Either way the receiver is gone now, and the producer says so.
        assert_eq!(tx.try_send(MSGS[1]), Err(TrySendError::Disconnected));
    });
}

/// The same through `reserve`: no record is handed out after the receiver is gone.
#[test]
fn reserve_parked_on_full_is_woken_by_receiver_drop() {
    model(|| {
        let (mut tx, rx) = parking_channel(2);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let consumer = thread::spawn(move || drop(rx));
        assert!(matches!(tx.reserve(1), Err(SendError::Disconnected)));
        consumer.join().unwrap();
    });
}

/// Both sides park (the producer on full, the consumer on empty) and the producer drops right after
/// its last send: the consumer gets all three messages, in order, then `Disconnected`.
#[test]
fn both_parking_then_sender_drop_drains_all_then_disconnects() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        let producer = thread::spawn(move || {
            for msg in &MSGS[..3] {
                tx.send(msg).unwrap();
            }
            drop(tx);
        });
        let mut buf = Vec::new();
        for i in 0..3 {
            rx.recv(&mut buf).unwrap();
            assert_msg(&buf, i);
        }
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        producer.join().unwrap();
    });
}

/// The consumer takes one message from a full ring and drops while the producer is parked: the
/// producer's pending send may go (the first record is freed) or see the close, but the one after
/// it (ring full again, or closed) must return `Disconnected`, never block for ever.
#[test]
fn send_parked_on_full_sees_receiver_drop_after_it_took_one() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            rx.recv(&mut buf).unwrap();
            assert_msg(&buf, 0);
            drop(rx);
        });
        match tx.send(MSGS[2]) {
            Ok(()) | Err(SendError::Disconnected) => {}
            other => panic!("send after the first record was freed: {other:?}"),
        }
        assert_eq!(tx.send(MSGS[3]), Err(SendError::Disconnected));
        consumer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// The record layout: pad records, the terminator, batches
// ---------------------------------------------------------------------------------------------

/// Largest message of `pad_channel`: records of up to 24 bytes.
const PAD_MAX: usize = 16;

/// Bytes of `pad_channel`'s memory: three records of `PAD_MAX` (`channel_bytes(72, 16)`).
const PAD_RING: usize = 72;

/// Messages whose records (16, 24, 24, 16 and 16 bytes) land everywhere relative to the end of a
/// 72-byte ring. Sent in order from position 0: `abc` at 0, the 12-byte one at 16, the 16-byte
/// one at 40 (ending at 64), then `F` (16 bytes) does not fit in the 8 bytes left: a pad record
/// fills 64..72 and `F` goes to offset 0 (position 72), over `abc`'s record; `GHIJKLMN` follows
/// at offset 16 (position 88). Distinct lengths and first bytes, as `MSGS`.
const PAD_MSGS: [&[u8]; 5] = [b"abc", b"defghijklmno", b"pqrstuvwxyzABCDE", b"F", b"GHIJKLMN"];

/// A 72-byte ring of records of up to 16 bytes (its geometry asserted: the models' positions
/// depend on it).
fn pad_channel() -> (Tx, Rx) {
    let (tx, rx) = spsc::channel_bytes(PAD_RING, PAD_MAX).unwrap();
    assert_eq!(tx.ring_bytes(), PAD_RING);
    (End::new(tx), End::new(rx))
}

/// `try_recv` that must find a message at once: for the records after the first of a batch,
/// which the batch's one publishing store made visible together with the first.
#[track_caller]
fn recv_now(rx: &mut Consumer, buf: &mut Vec<u8>, sent: &[&[u8]], i: usize) {
    match rx.try_recv(buf) {
        Ok(()) => assert_sent(buf, sent, i),
        other => panic!("message {i}: {other:?}, though an earlier message of its batch was received"),
    }
}

/// Wraparound through a pad record, both sides concurrent: the fourth message (`F`) does not fit
/// before the end, so the producer (once `abc` and the 12-byte message are freed: the pad, `F`
/// and its terminator need 32 bytes) publishes a pad over 64..72, having zeroed the word at
/// offset 0 (`abc`'s header from the first lap), and writes `F` over `abc`'s record. The
/// consumer may be reading the 16-byte message meanwhile, then skips the pad and must find `F`
/// (never `abc`'s stale header), then `GHIJKLMN`: FIFO, exactly once, exact bytes.
#[test]
fn fifo_exactly_once_through_a_pad_record() {
    model(|| {
        let (mut tx, mut rx) = pad_channel();
        let producer = thread::spawn(move || {
            for msg in PAD_MSGS {
                send_spinning(&mut tx, msg);
            }
        });
        let mut buf = Vec::new();
        for i in 0..PAD_MSGS.len() {
            recv_spinning(&mut rx, &mut buf);
            assert_sent(&buf, &PAD_MSGS, i);
        }
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            other => panic!("after the last message: {other:?}, buf {buf:?}"),
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

/// The terminator across a lap boundary. Before the threads start, two messages are sent and
/// received: offset 0 and 16 still hold their (first-lap) headers, and both ends are at position
/// 32. Then the consumer spins on the next header while the producer writes `def` at offset 32 (a
/// record that ends the memory: its terminator zeroes offset 0) and `ghij` at offset 0 (position
/// 48, terminator over offset 16). Whenever the consumer reads offset 0 at position 48 it must
/// find 0 (nothing yet) or `ghij`'s header, never the first lap's: a stale header is reported by
/// the ring as `Corrupted` ("not stamped"), which fails the model.
#[test]
fn consumer_spinning_across_the_lap_boundary_never_reads_a_stale_header() {
    model(|| {
        let (mut tx, mut rx) = channel(2);
        let mut buf = Vec::new();
        for i in 0..2 {
            tx.try_send(MSGS[i]).unwrap();
            rx.try_recv(&mut buf).unwrap();
            assert_msg(&buf, i);
        }
        let producer = thread::spawn(move || {
            send_spinning(&mut tx, MSGS[2]);
            send_spinning(&mut tx, MSGS[3]);
            tx // Kept: the consumer's last look below is at a live producer's terminator.
        });
        for i in 2..4 {
            recv_spinning(&mut rx, &mut buf);
            assert_msg(&buf, i);
        }
        // Position 64 (offset 16): the first lap's header there was zeroed by `ghij`'s terminator.
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
        drop(producer.join().unwrap());
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

/// A batch with a pad inside it, against a consumer using `try_recv`. One message is sent and
/// received first (both ends at position 24, the first lap's header left at offset 0). Then
/// `try_send_batch` of three: `abc` at 24, the 16-byte message at 40, and `F`, which does not fit
/// in the 8 bytes left: a pad (not zeroing offset 0: the batch's own record goes there before the
/// batch is published) and `F` at offset 0. All three fit in the empty ring (72 bytes with the
/// terminator), so the batch takes them all, published by one Release store of `abc`'s header.
/// Once the consumer has `abc`, the pad and the rest must be visible at once (no `Empty`, no
/// stale header at offset 0). Then `GHIJKLMN` at offset 16 (position 88), over part of `abc`'s
/// record (24..40), so it waits for `abc` to be freed: that reuse is ordered by `head`.
#[test]
fn batch_send_with_a_pad_inside_is_received_whole_by_try_recv() {
    model(|| {
        let (mut tx, mut rx) = pad_channel();
        let mut buf = Vec::new();
        tx.try_send(PAD_MSGS[1]).unwrap();
        rx.try_recv(&mut buf).unwrap();
        assert_sent(&buf, &PAD_MSGS, 1);
        let sent: [&[u8]; 4] = [PAD_MSGS[0], PAD_MSGS[2], PAD_MSGS[3], PAD_MSGS[4]];
        let producer = thread::spawn(move || {
            assert_eq!(
                tx.try_send_batch(&sent[..3]),
                Ok(3),
                "the empty ring holds the whole batch"
            );
            send_spinning(&mut tx, sent[3]);
        });
        recv_spinning(&mut rx, &mut buf);
        assert_sent(&buf, &sent, 0);
        for i in 1..3 {
            recv_now(&mut rx, &mut buf, &sent, i);
        }
        recv_spinning(&mut rx, &mut buf);
        assert_sent(&buf, &sent, 3);
        producer.join().unwrap();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

/// Batch receives against a producer sending one message at a time through the pad: the consumer
/// takes up to two messages per `try_recv_batch` (one `head` store for each batch), and a batch
/// may skip the pad in its middle (which frees the records before it). The producer's `F` and
/// `GHIJKLMN` reuse the records of `abc` and the 12-byte message, freed by those batch stores.
#[test]
fn try_recv_batch_against_a_producer_through_a_pad_record() {
    model(|| {
        let (mut tx, mut rx) = pad_channel();
        let producer = thread::spawn(move || {
            for msg in PAD_MSGS {
                send_spinning(&mut tx, msg);
            }
        });
        let mut batch = Batch::new();
        let mut received = 0;
        while received < PAD_MSGS.len() {
            match rx.try_recv_batch(&mut batch, 2) {
                Ok(n) => {
                    assert!((1..=2).contains(&n), "a batch of {n} (max 2)");
                    assert_eq!(n, batch.len());
                    for msg in &batch {
                        assert_sent(msg, &PAD_MSGS, received);
                        received += 1;
                    }
                }
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(e) => panic!("try_recv_batch after {received} messages: {e:?}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv_batch(&mut batch, 2), Err(TryRecvError::Disconnected));
    });
}

/// A consumer parked in `recv_batch` is woken by a batch send: two batches of two (one Release
/// store and at most one wake each), into a ring that holds four, so the producer never waits.
/// Each `recv_batch` (max 2) must return exactly one whole batch: when the consumer is woken (or
/// finds) the first record of a batch, the second is already visible. The producer is kept alive:
/// each wake must come from a batch, not from a close.
#[test]
fn recv_batch_parked_is_woken_by_each_batch_send() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(4);
        let producer = thread::spawn(move || {
            assert_eq!(tx.send_batch(&MSGS[..2]), Ok(2));
            assert_eq!(tx.send_batch(&MSGS[2..]), Ok(2));
            tx
        });
        let mut batch = Batch::new();
        for first in [0, 2] {
            assert_eq!(rx.recv_batch(&mut batch, 2), Ok(2), "batch from message {first}");
            for (k, msg) in batch.iter().enumerate() {
                assert_msg(msg, first + k);
            }
        }
        drop(producer.join().unwrap());
    });
}

/// A producer parked on a full ring in `send_batch` is woken by a batch receive. The ring is
/// filled with two messages; the producer blocks sending a batch of two, which needs both records
/// freed (the third record's terminator covers the first's header, the fourth record is the
/// first's). The consumer's `try_recv_batch` takes both with one `head` store and one wake, so the
/// producer, once it sees room, sees room for the whole batch: `Ok(2)`. The consumer then parks in
/// `recv_batch` and gets that batch whole.
#[test]
fn send_batch_parked_on_full_is_woken_by_a_batch_receive() {
    model(|| {
        let (mut tx, mut rx) = parking_channel(2);
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let producer = thread::spawn(move || {
            assert_eq!(
                tx.send_batch(&MSGS[2..]),
                Ok(2),
                "one head store freed both records"
            );
            tx
        });
        let mut batch = Batch::new();
        // Both were sent before the producer thread started.
        assert_eq!(rx.try_recv_batch(&mut batch, 2), Ok(2));
        for (k, msg) in batch.iter().enumerate() {
            assert_msg(msg, k);
        }
        assert_eq!(rx.recv_batch(&mut batch, 2), Ok(2));
        for (k, msg) in batch.iter().enumerate() {
            assert_msg(msg, 2 + k);
        }
        drop(producer.join().unwrap());
    });
}
