//! Loom models of the MPMC ring: exactly-once delivery with several producers and consumers, each
//! producer's order kept, the park/wake protocol with several waiters on one doorbell, disconnect
//! when the last sender (or receiver) leaves, the zero-copy reserve/commit, tombstone and
//! recv_ref paths, and batches (a run of slots claimed with one CAS, one doorbell check per
//! batch).
//!
//! Under loom the futex is a Mutex + Condvar per word with no timeout that wakes exactly as many
//! sleepers as asked (`notify_one` per wake), so a lost wakeup, also one hidden among several
//! waiters, shows up as a loom deadlock. Member liveness is always "alive" and the ring lock is a
//! loom mutex, so nothing is recovered from a dead member; the "robbed member" models force a
//! recovery of a live member's claim (a false death verdict) through the `recover_as_if_dead`
//! test hook, racing the member's own publish or free.
//!
//! Every received message is identified by its first byte and then checked for its exact length
//! and bytes: each message has its own length, so a length word read stale (`--cfg
//! shmpipe_loom_weaken` makes the publishing sequence store Relaxed) never matches.
#![cfg(loom)]

use loom::thread;
use shmpipe::ring::mpmc::{self, Consumer, Producer};
use shmpipe::{Batch, Error, Receiver, RecvError, SendError, Sender, TryRecvError, WaitStrategy};
use shmpipe_loom_tests::{model_capped, End};

/// Largest message in every model (one slot).
const MAX_MESSAGE: usize = 8;

/// Every message has its own first byte and its own length, so a stale length, a message from
/// the wrong slot or the wrong lap never matches. Models refer to messages by index.
const MSGS: [&[u8]; 4] = [b"a", b"bcd", b"ef", b"ghij"];

// Every MPMC model has three or four threads and the ring does several times the atomic
// operations of the SPSC one per message (member announcements, the census of senders, the
// doorbell handshake), so the state space grows fast with the preemption bound: at 2 the
// three-thread models explore from 40 thousand to over 500 thousand interleavings (minutes each
// on two cores) and the four-thread ones do not finish in ten minutes. To keep the suite within a
// few minutes every model here runs through `model_capped(Some(1), ...)` (but the two small
// robbed-member models, at 2 and 3); `LOOM_MAX_PREEMPTIONS` lowers it further.

type Tx = End<Producer>;
type Rx = End<Consumer>;

fn end<T>(t: T) -> End<T> {
    End::new(t)
}

/// A ring of `capacity` slots with `senders` producers and `receivers` consumers, all joined before
/// any model thread starts (so "every sender gone" means the last of these left).
fn channel(capacity: usize, senders: usize, receivers: usize) -> (Vec<Tx>, Vec<Rx>) {
    let (tx, rx) = mpmc::channel(capacity, MAX_MESSAGE).unwrap();
    let mut txs = Vec::new();
    for _ in 1..senders {
        txs.push(end(tx.try_clone().unwrap()));
    }
    txs.insert(0, end(tx));
    let mut rxs = Vec::new();
    for _ in 1..receivers {
        rxs.push(end(rx.try_clone().unwrap()));
    }
    rxs.insert(0, end(rx));
    (txs, rxs)
}

/// The same, every end parking on the futex at once (no spinning or yielding).
fn parking_channel(capacity: usize, senders: usize, receivers: usize) -> (Vec<Tx>, Vec<Rx>) {
    let (mut txs, mut rxs) = channel(capacity, senders, receivers);
    for tx in &mut txs {
        tx.set_wait_strategy(WaitStrategy::park_only());
    }
    for rx in &mut rxs {
        rx.set_wait_strategy(WaitStrategy::park_only());
    }
    (txs, rxs)
}

/// Which message `got` is (its index in `MSGS`), checked for its exact length and bytes.
#[track_caller]
fn identify(got: &[u8]) -> usize {
    let first = *got
        .first()
        .unwrap_or_else(|| panic!("an empty message was received"));
    let Some(i) = MSGS.iter().position(|m| m[0] == first) else {
        panic!("received {got:?}, which no producer sent");
    };
    let want = MSGS[i];
    assert_eq!(
        got.len(),
        want.len(),
        "message {i}: length {} read from the slot, {} sent",
        got.len(),
        want.len()
    );
    assert_eq!(got, want, "message {i}: wrong bytes");
    i
}

/// Receives with `try_recv` (yielding while the ring is empty) until `Disconnected`; returns the
/// messages received, in order.
fn recv_all_spinning(rx: &mut Consumer) -> Vec<usize> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    loop {
        match rx.try_recv(&mut buf) {
            Ok(()) => got.push(identify(&buf)),
            Err(TryRecvError::Empty) => thread::yield_now(),
            Err(TryRecvError::Disconnected) => return got,
            Err(e) => panic!("try_recv failed: {e:?}"),
        }
    }
}

/// Sends with the blocking `send`.
fn send_blocking(tx: &mut Producer, msg: &[u8]) {
    if let Err(e) = tx.send(msg) {
        panic!("send({msg:?}) failed: {e:?}");
    }
}

/// Receives with the blocking `recv` until `Disconnected`.
fn recv_all_blocking(rx: &mut Consumer) -> Vec<usize> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    loop {
        match rx.recv(&mut buf) {
            Ok(()) => got.push(identify(&buf)),
            Err(RecvError::Disconnected) => return got,
            Err(e) => panic!("recv failed: {e:?}"),
        }
    }
}

/// Checks what the consumers received against what was sent (`sent[p]`: the messages producer
/// `p` sent, in order): together they received every message exactly once, and each consumer
/// received each producer's messages in the order sent.
#[track_caller]
fn assert_exactly_once(received: &[Vec<usize>], sent: &[&[usize]]) {
    let mut all: Vec<usize> = received.iter().flatten().copied().collect();
    all.sort_unstable();
    let mut want: Vec<usize> = sent.iter().flat_map(|s| s.iter().copied()).collect();
    want.sort_unstable();
    assert_eq!(
        all, want,
        "not every message exactly once (received: {received:?})"
    );
    for (c, got) in received.iter().enumerate() {
        for (p, order) in sent.iter().enumerate() {
            let seen: Vec<usize> = got.iter().copied().filter(|m| order.contains(m)).collect();
            let in_order: Vec<usize> = order.iter().copied().filter(|m| seen.contains(m)).collect();
            assert_eq!(
                seen, in_order,
                "consumer {c} received producer {p}'s messages out of order (received: {received:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exactly once, per-producer order, wraparound
//
// Loom does not schedule fairly: two threads that poll and `yield_now` can be run in turn for ever
// while a third, which they wait for, never runs (loom reports "exceeded maximum number of
// branches"). So in every model at most one thread polls with `try_`; the others block (park on
// the futex, modelled as a condvar, so they are not runnable while they wait).
// ---------------------------------------------------------------------------------------------

/// Two producers race for positions, two messages each through two slots (each slot reused, a
/// producer parking when the ring is full): the one consumer, polling with `try_recv`, receives
/// all four exactly once, each producer's pair in order, then `Disconnected` once both left.
#[test]
fn two_producers_one_consumer_exactly_once_in_producer_order() {
    const SENT: [&[usize]; 2] = [&[0, 1], &[2, 3]];
    model_capped(Some(1), || {
        let (txs, mut rxs) = parking_channel(2, 2, 1);
        let producers: Vec<_> = txs
            .into_iter()
            .zip(SENT)
            .map(|(mut tx, msgs)| {
                thread::spawn(move || {
                    for &m in msgs {
                        send_blocking(&mut tx, MSGS[m]);
                    }
                })
            })
            .collect();
        let got = recv_all_spinning(&mut rxs[0]);
        for p in producers {
            p.join().unwrap();
        }
        assert_exactly_once(&[got], &SENT);
    });
}

/// One producer polling with `try_send`, three messages through two slots; two consumers blocked
/// in `recv` until `Disconnected`: together they receive each message once, each in the
/// producer's order.
#[test]
fn one_producer_two_consumers_exactly_once_in_order() {
    const SENT: [&[usize]; 1] = [&[0, 1, 2]];
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 1, 2);
        let mut tx = txs.pop().unwrap();
        let mut rx1 = rxs.pop().unwrap();
        let producer = thread::spawn(move || {
            for &m in SENT[0] {
                send_blocking(&mut tx, MSGS[m]);
            }
        });
        let consumer = thread::spawn(move || recv_all_blocking(&mut rx1));
        let got0 = recv_all_blocking(&mut rxs[0]);
        let got1 = consumer.join().unwrap();
        producer.join().unwrap();
        assert_exactly_once(&[got0, got1], &SENT);
    });
}

/// Two producers and two consumers (one polling with `try_recv`, one blocked in `recv`) on two
/// slots, one message per producer (so `try_send` never finds the ring full): each message is
/// received exactly once. Four threads: this model is only tractable at a preemption bound of 1.
#[test]
fn two_producers_two_consumers_exactly_once() {
    const SENT: [&[usize]; 2] = [&[0], &[2]];
    model_capped(Some(1), || {
        let (txs, mut rxs) = parking_channel(2, 2, 2);
        let mut rx1 = rxs.pop().unwrap();
        let producers: Vec<_> = txs
            .into_iter()
            .zip(SENT)
            .map(|(mut tx, msgs)| thread::spawn(move || tx.try_send(MSGS[msgs[0]]).unwrap()))
            .collect();
        let consumer = thread::spawn(move || recv_all_blocking(&mut rx1));
        let got0 = recv_all_spinning(&mut rxs[0]);
        let got1 = consumer.join().unwrap();
        for p in producers {
            p.join().unwrap();
        }
        assert_exactly_once(&[got0, got1], &SENT);
    });
}

// ---------------------------------------------------------------------------------------------
// Park/wake with several waiters on one doorbell (a lost wakeup is a loom deadlock)
// ---------------------------------------------------------------------------------------------

/// Two consumers parked on an empty ring; the producer sends two messages and drops. Both
/// messages are received, once each, and both consumers then get `Disconnected`.
#[test]
fn two_parked_consumers_receive_both_messages_then_disconnect() {
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 1, 2);
        let mut tx = txs.pop().unwrap();
        let mut rx1 = rxs.pop().unwrap();
        let producer = thread::spawn(move || {
            send_blocking(&mut tx, MSGS[0]);
            send_blocking(&mut tx, MSGS[1]);
            drop(tx);
        });
        let consumer = thread::spawn(move || recv_all_blocking(&mut rx1));
        let got0 = recv_all_blocking(&mut rxs[0]);
        let got1 = consumer.join().unwrap();
        producer.join().unwrap();
        assert_exactly_once(&[got0, got1], &[&[0, 1]]);
    });
}

/// Two consumers parked, each waiting for exactly one message; two producers publish one each
/// and stay attached (no close to wake anyone). Each publication wakes one sleeper, so each
/// message must reach a consumer even when the two are published out of position order.
#[test]
fn two_parked_consumers_each_woken_for_one_message_of_two_producers() {
    model_capped(Some(1), || {
        let (txs, mut rxs) = parking_channel(2, 2, 2);
        let mut rx1 = rxs.pop().unwrap();
        let producers: Vec<_> = txs
            .into_iter()
            .zip([0, 2])
            .map(|(mut tx, m)| {
                thread::spawn(move || {
                    // Never full: two messages in two slots.
                    tx.try_send(MSGS[m]).unwrap();
                    tx
                })
            })
            .collect();
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            rx1.recv(&mut buf).unwrap();
            (identify(&buf), rx1)
        });
        let mut buf = Vec::new();
        rxs[0].recv(&mut buf).unwrap();
        let got0 = identify(&buf);
        let (got1, rx1) = consumer.join().unwrap();
        let txs: Vec<Tx> = producers.into_iter().map(|p| p.join().unwrap()).collect();
        assert_exactly_once(&[vec![got0], vec![got1]], &[&[0], &[2]]);
        drop(rx1);
        drop(txs);
    });
}

/// Two producers parked on a full ring (two messages already in it), one message each; the one
/// consumer frees slots in order with `recv`. Every message arrives once, each producer's after
/// the ones already there.
#[test]
fn two_parked_producers_woken_by_frees() {
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 2, 1);
        txs[0].try_send(MSGS[0]).unwrap();
        txs[1].try_send(MSGS[2]).unwrap();
        let producers: Vec<_> = txs
            .into_iter()
            .zip([1, 3])
            .map(|(mut tx, m)| thread::spawn(move || send_blocking(&mut tx, MSGS[m])))
            .collect();
        let got = recv_all_blocking(&mut rxs[0]);
        for p in producers {
            p.join().unwrap();
        }
        assert_exactly_once(&[got], &[&[0, 1], &[2, 3]]);
    });
}

/// Two producers parked on a full ring, one message each, while two consumers each take one of
/// the two queued messages, so the slots may be freed out of position order; the producers stay
/// attached. Each free wakes one sleeper: both parked sends must complete, and the two new
/// messages are then received.
#[test]
fn two_parked_producers_woken_by_frees_of_two_consumers() {
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 2, 2);
        txs[0].try_send(MSGS[0]).unwrap();
        txs[1].try_send(MSGS[2]).unwrap();
        let mut rx1 = rxs.pop().unwrap();
        let producers: Vec<_> = txs
            .into_iter()
            .zip([1, 3])
            .map(|(mut tx, m)| {
                thread::spawn(move || {
                    send_blocking(&mut tx, MSGS[m]);
                    tx
                })
            })
            .collect();
        let consumer = thread::spawn(move || {
            let msg = rx1.recv_ref().unwrap();
            let got = identify(&msg);
            drop(msg);
            (got, rx1)
        });
        let mut buf = Vec::new();
        rxs[0].recv(&mut buf).unwrap();
        let mut got0 = vec![identify(&buf)];
        let (got1, rx1) = consumer.join().unwrap();
        let txs: Vec<Tx> = producers.into_iter().map(|p| p.join().unwrap()).collect();
        for _ in 0..2 {
            rxs[0].try_recv(&mut buf).unwrap();
            got0.push(identify(&buf));
        }
        assert_exactly_once(&[got0, vec![got1]], &[&[0, 1], &[2, 3]]);
        drop(txs);
        drop(rx1);
    });
}

/// A consumer parks on an empty ring while another thread changes the membership under the ring
/// lock: a new member joins (which clears the waiter bits of the record it takes), then a join
/// finds the table full (`MAX_MEMBERS` is 4 under loom) and reaps (which clears every waiter bit
/// but those of live members). Neither may touch the parked consumer's bit: the one publication
/// must still wake it. Nobody leaves before it has its message, so no close rings to rescue a
/// lost wake. The consumer is the model's main thread, so parking before the membership changes
/// and the publication costs no preemption.
#[test]
fn joining_and_reaping_while_a_consumer_parks_lose_no_wake() {
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 1, 2);
        let mut tx = txs.pop().unwrap();
        let rx1 = rxs.pop().unwrap();
        let joiner = thread::spawn(move || {
            // The fourth member: the table is now full.
            let third = end(rx1.try_clone().unwrap());
            // No vacant record: the join reaps first, finds every member alive, and fails.
            assert!(matches!(rx1.try_clone(), Err(Error::Limit(_))));
            (rx1, third)
        });
        let producer = thread::spawn(move || {
            tx.try_send(MSGS[0]).unwrap();
            tx
        });
        let mut buf = Vec::new();
        rxs[0].recv(&mut buf).unwrap();
        assert_eq!(identify(&buf), 0);
        let (rx1, third) = joiner.join().unwrap();
        let tx = producer.join().unwrap();
        drop((rxs, rx1, third, tx));
    });
}

// ---------------------------------------------------------------------------------------------
// Disconnect
// ---------------------------------------------------------------------------------------------

/// Two senders: the first drops without sending, the second sends one message and then drops.
/// The parked consumer must get that message (the first drop is not the end), then
/// `Disconnected`.
#[test]
fn first_of_two_senders_dropping_does_not_disconnect() {
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 2, 1);
        let mut tx1 = txs.pop().unwrap();
        let tx0 = txs.pop().unwrap();
        let dropper = thread::spawn(move || drop(tx0));
        let sender = thread::spawn(move || {
            send_blocking(&mut tx1, MSGS[1]);
            drop(tx1);
        });
        let mut buf = Vec::new();
        assert_eq!(
            rxs[0].recv(&mut buf),
            Ok(()),
            "disconnected while a sender was left"
        );
        assert_eq!(identify(&buf), 1);
        assert_eq!(rxs[0].recv(&mut buf), Err(RecvError::Disconnected));
        dropper.join().unwrap();
        sender.join().unwrap();
    });
}

/// Two consumers parked on an empty ring; the two senders drop (in two threads) without sending:
/// both consumers are woken with `Disconnected`.
#[test]
fn two_parked_consumers_woken_by_last_sender_drop() {
    model_capped(Some(1), || {
        let (txs, mut rxs) = parking_channel(2, 2, 2);
        let mut rx1 = rxs.pop().unwrap();
        let droppers: Vec<_> = txs
            .into_iter()
            .map(|tx| thread::spawn(move || drop(tx)))
            .collect();
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            assert_eq!(rx1.recv(&mut buf), Err(RecvError::Disconnected));
        });
        let mut buf = Vec::new();
        assert_eq!(rxs[0].recv(&mut buf), Err(RecvError::Disconnected));
        consumer.join().unwrap();
        for d in droppers {
            d.join().unwrap();
        }
    });
}

/// Two producers parked on a full ring; the two receivers drop (in two threads) without reading:
/// both producers are woken with `Disconnected` (the ring stays full, so no send can succeed).
#[test]
fn two_parked_producers_woken_by_last_receiver_drop() {
    model_capped(Some(1), || {
        let (mut txs, rxs) = parking_channel(2, 2, 2);
        txs[0].try_send(MSGS[0]).unwrap();
        txs[1].try_send(MSGS[2]).unwrap();
        let mut tx1 = txs.pop().unwrap();
        let droppers: Vec<_> = rxs
            .into_iter()
            .map(|rx| thread::spawn(move || drop(rx)))
            .collect();
        let producer = thread::spawn(move || {
            assert_eq!(tx1.send(MSGS[3]), Err(SendError::Disconnected));
        });
        assert!(matches!(txs[0].reserve(1), Err(SendError::Disconnected)));
        producer.join().unwrap();
        for d in droppers {
            d.join().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Zero-copy: reserve/commit, tombstones, recv_ref
// ---------------------------------------------------------------------------------------------

/// One producer drops a reservation uncommitted (a tombstone) and then commits a second one
/// (reusing a slot: capacity 2, parking in `reserve` if full); the other commits one with
/// `commit_len`. The consumer, polling with `try_recv_ref`, sees exactly the two committed
/// messages, never the tombstone, and the discard is counted.
#[test]
fn uncommitted_reservation_is_skipped_and_commits_are_received() {
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 2, 1);
        let mut tx1 = txs.pop().unwrap();
        let mut tx0 = txs.pop().unwrap();
        let p0 = thread::spawn(move || {
            {
                let mut slot = tx0.try_reserve(MAX_MESSAGE).unwrap();
                slot.fill(b'x');
                // Dropped uncommitted: a tombstone.
            }
            let mut slot = tx0.reserve(MSGS[1].len()).unwrap();
            slot.copy_from_slice(MSGS[1]);
            slot.commit().unwrap();
        });
        let p1 = thread::spawn(move || {
            let mut slot = tx1.reserve(MAX_MESSAGE).unwrap();
            slot[..MSGS[2].len()].copy_from_slice(MSGS[2]);
            slot.commit_len(MSGS[2].len()).unwrap();
        });
        let mut got = Vec::new();
        loop {
            match rxs[0].try_recv_ref() {
                Ok(msg) => got.push(identify(&msg)),
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(TryRecvError::Disconnected) => break,
                Err(e) => panic!("try_recv_ref: {e:?}"),
            }
        }
        p0.join().unwrap();
        p1.join().unwrap();
        assert_exactly_once(&[got], &[&[1], &[2]]);
        assert_eq!(rxs[0].stats().discarded, 1);
    });
}

/// One producer polls three messages in with `try_send` (two slots); two consumers blocked in
/// `recv_ref` read each in place. The slot is freed only when the guard drops, so the third
/// message waits for the first guard; every message is read once, intact.
#[test]
fn two_consumers_recv_ref_in_place_exactly_once() {
    const SENT: [&[usize]; 1] = [&[1, 2, 3]];
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 1, 2);
        let mut tx = txs.pop().unwrap();
        let mut rx1 = rxs.pop().unwrap();
        let producer = thread::spawn(move || {
            for &m in SENT[0] {
                send_blocking(&mut tx, MSGS[m]);
            }
        });
        let recv_refs = |rx: &mut Consumer| {
            let mut got = Vec::new();
            loop {
                match rx.recv_ref() {
                    Ok(msg) => got.push(identify(&msg)),
                    Err(RecvError::Disconnected) => return got,
                    Err(e) => panic!("recv_ref: {e:?}"),
                }
            }
        };
        let consumer = thread::spawn(move || recv_refs(&mut rx1));
        let got0 = recv_refs(&mut rxs[0]);
        let got1 = consumer.join().unwrap();
        producer.join().unwrap();
        assert_exactly_once(&[got0, got1], &SENT);
    });
}

// ---------------------------------------------------------------------------------------------
// A member wrongly taken for dead (its claim recovered while it is alive), racing its own
// publish or free. `recover_as_if_dead` is the recovery a stalled member of the other role
// runs, without the liveness question: the false verdict on demand.
// ---------------------------------------------------------------------------------------------

/// Producer A reserves position 0 and writes its message; the consumer, taking A for dead,
/// tombstones the slot (if A has not published yet) and then receives until the end; A commits,
/// and sends the message again if the commit says `Lost`. After A is done, producer B sends two
/// messages, the second through slot 0 again. Exactly one of the recovery's CAS and A's commit
/// wins: if the commit is `Ok` nothing was recovered, if it is `Lost` the slot was tombstoned
/// (counted `lost`) and A's CAS wrote nothing (counted `robbed`). Either way every message
/// (A's once, however often it was sent) is received exactly once, and slot 0 keeps working.
/// A store instead of the CAS revives the tombstone (a message delivered and counted lost) or
/// rewinds the slot after the tombstone was freed, and B and the consumer wait on it for ever.
/// B starts after A's commit: a robbed producer's bytes racing the next lap's writer are a
/// window the CAS cannot close (see the ring's docs), not what this model checks.
#[test]
fn producer_robbed_of_its_reservation_publishes_nothing_and_the_ring_flows_on() {
    // Bound 2: 34 thousand interleavings, about 15 s (bound 3 passes too, in minutes).
    model_capped(Some(2), || {
        let (mut txs, mut rxs) = parking_channel(2, 2, 1);
        let mut b = txs.pop().unwrap();
        let mut a = txs.pop().unwrap();
        let mut rx = rxs.pop().unwrap();
        let committer = thread::spawn(move || {
            let mut slot = a.try_reserve(MSGS[0].len()).unwrap();
            slot.copy_from_slice(MSGS[0]);
            let committed = slot.commit();
            if committed == Err(SendError::Lost) {
                send_blocking(&mut a, MSGS[0]);
            }
            (committed, a)
        });
        let consumer = thread::spawn(move || {
            rx.recover_as_if_dead();
            let got = recv_all_blocking(&mut rx);
            (got, rx)
        });
        let (committed, a) = committer.join().unwrap();
        send_blocking(&mut b, MSGS[2]);
        send_blocking(&mut b, MSGS[3]);
        let stats = b.stats();
        drop(b);
        drop(a);
        let (got, rx) = consumer.join().unwrap();
        assert_exactly_once(&[got], &[&[0], &[2, 3]]);
        match committed {
            Ok(()) => assert_eq!((stats.lost, stats.robbed), (0, 0), "{stats:?}"),
            Err(SendError::Lost) => assert_eq!((stats.lost, stats.robbed), (1, 1), "{stats:?}"),
            Err(e) => panic!("commit: {e:?}"),
        }
        assert_eq!(stats.discarded, 0, "{stats:?}");
        drop(rx);
    });
}

/// Two messages fill the ring; consumer C1 borrows message 0 in place, reads it, and then drops
/// the guard (frees the slot), while the producer, started once C1 has read the bytes, takes C1
/// for dead, frees slot 0 itself (if C1 has not yet) and sends message 2 into it. Exactly one of
/// the two frees wins: if the producer's recovery did, C1's drop writes nothing (`robbed`) and
/// the recovery counted the message `dropped`. Consumer C2 then receives messages 1 and 2,
/// exactly once. A store instead of the CAS in C1's free rewinds slot 0 under message 2 (it is
/// never received).
#[test]
fn consumer_robbed_of_its_read_guard_frees_nothing_and_the_ring_flows_on() {
    // Small enough for the full bound (3: 11 thousand interleavings, a few seconds).
    model_capped(None, || {
        let (mut txs, mut rxs) = parking_channel(2, 1, 2);
        let mut tx = txs.pop().unwrap();
        let mut c2 = rxs.pop().unwrap();
        let mut c1 = rxs.pop().unwrap();
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let holder = thread::spawn(move || {
            let msg = c1.try_recv_ref().unwrap();
            let got = identify(&msg);
            // Spawned after the bytes were read, so that the next lap's write into this slot
            // cannot race the read: what this model checks is the free.
            let producer = thread::spawn(move || {
                let recovered = tx.recover_as_if_dead();
                send_blocking(&mut tx, MSGS[2]);
                drop(tx);
                recovered
            });
            drop(msg);
            (got, c1, producer)
        });
        let (got1, c1, producer) = holder.join().unwrap();
        let got2 = recv_all_blocking(&mut c2);
        let recovered = producer.join().unwrap();
        assert_exactly_once(&[vec![got1], got2], &[&[0, 1, 2]]);
        let stats = c2.stats();
        let want = if recovered { (1, 1) } else { (0, 0) };
        assert_eq!((stats.dropped, stats.robbed), want, "{stats:?}");
        drop(c1);
    });
}

// ---------------------------------------------------------------------------------------------
// Batches: a run of slots claimed with one CAS of the shared position, each slot published or
// freed by its own CAS, one doorbell check per batch
// ---------------------------------------------------------------------------------------------

/// Sends `msgs` (indices into `MSGS`) with the blocking `send_batch`, looping on the rest.
fn send_all_in_batches(tx: &mut Producer, msgs: &[usize]) {
    let msgs: Vec<&[u8]> = msgs.iter().map(|&m| MSGS[m]).collect();
    let mut rest = &msgs[..];
    while !rest.is_empty() {
        match tx.send_batch(rest) {
            Ok(n) if (1..=rest.len()).contains(&n) => rest = &rest[n..],
            r => panic!("send_batch({rest:?}): {r:?}"),
        }
    }
}

/// Receives with the blocking `recv_batch` (at most `max` a call) until `Disconnected`.
fn recv_all_in_batches(rx: &mut Consumer, max: usize) -> Vec<usize> {
    let mut batch = Batch::new();
    let mut got = Vec::new();
    loop {
        match rx.recv_batch(&mut batch, max) {
            Ok(n) => {
                assert!((1..=max).contains(&n), "recv_batch returned {n} (max {max})");
                assert_eq!(n, batch.len());
                got.extend(batch.iter().map(identify));
            }
            Err(RecvError::Disconnected) => return got,
            Err(e) => panic!("recv_batch failed: {e:?}"),
        }
    }
}

/// Producer A sends three messages with `send_batch` (a run of two slots when the ring is empty,
/// the third wrapping around to slot 0 once it is freed), producer B one with `send`; the
/// consumer, blocked in `recv_batch` of up to two, receives them in runs. Everyone parks at once
/// when full or empty, and each side checks for sleepers once per batch, so a wake lost to the
/// batching is a deadlock. Every message is received exactly once, A's in order.
#[test]
fn batching_and_single_producers_to_a_batching_consumer_exactly_once() {
    const SENT: [&[usize]; 2] = [&[0, 1, 3], &[2]];
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 2, 1);
        let mut b = txs.pop().unwrap();
        let mut a = txs.pop().unwrap();
        let batcher = thread::spawn(move || send_all_in_batches(&mut a, SENT[0]));
        let single = thread::spawn(move || send_blocking(&mut b, MSGS[SENT[1][0]]));
        let got = recv_all_in_batches(&mut rxs[0], 2);
        batcher.join().unwrap();
        single.join().unwrap();
        assert_exactly_once(&[got], &SENT);
    });
}

/// A producer sends four messages through two slots in batches while two consumers take them,
/// one with `recv_batch` (runs of up to two), one with `recv`: together they receive each once,
/// each in the producer's order, and the slots a batch frees (with one wake for the run) let the
/// parked producer on.
#[test]
fn batching_producer_to_a_batching_and_a_single_consumer_exactly_once() {
    const SENT: [&[usize]; 1] = [&[0, 1, 2, 3]];
    model_capped(Some(1), || {
        let (mut txs, mut rxs) = parking_channel(2, 1, 2);
        let mut tx = txs.pop().unwrap();
        let mut single = rxs.pop().unwrap();
        let producer = thread::spawn(move || send_all_in_batches(&mut tx, SENT[0]));
        let consumer = thread::spawn(move || recv_all_blocking(&mut single));
        let got0 = recv_all_in_batches(&mut rxs[0], 2);
        let got1 = consumer.join().unwrap();
        producer.join().unwrap();
        assert_exactly_once(&[got0, got1], &SENT);
    });
}

/// The ring is full (two messages sent before the threads start); the producer parks in
/// `send_batch` of two more, and the consumer takes messages with `recv_batch` until it has all
/// four. Nobody leaves before that, so no close wakes anyone: the consumer's one wake for the
/// run of slots it frees must bring the producer, and the producer's one wake for its run must
/// bring the consumer if it parked meanwhile.
#[test]
fn batches_wake_each_other_with_no_close_to_rescue_a_lost_wake() {
    // Two threads: small enough for the full bound.
    model_capped(None, || {
        let (mut txs, mut rxs) = parking_channel(2, 1, 1);
        let mut tx = txs.pop().unwrap();
        tx.try_send(MSGS[0]).unwrap();
        tx.try_send(MSGS[1]).unwrap();
        let producer = thread::spawn(move || {
            send_all_in_batches(&mut tx, &[2, 3]);
            tx
        });
        let mut batch = Batch::new();
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = rxs[0].recv_batch(&mut batch, 2).unwrap();
            assert!((1..=2).contains(&n));
            got.extend(batch.iter().map(identify));
        }
        let tx = producer.join().unwrap();
        assert_exactly_once(&[got], &[&[0, 1, 2, 3]]);
        drop(tx);
    });
}
