//! Loom models of the broadcast ring: every subscriber gets every message in order under
//! `Overflow::Block` (the publisher waits for the slowest tethered subscriber and never
//! overwrites an unread slot), exact `Lagged` counts and no torn or stale message under
//! `Overflow::Overwrite` (the seqlock slots), a subscriber leaving or joining while the publisher
//! is at its limit, the end of the stream, and the park/wake protocol on both doorbells.
//!
//! Under `cfg(loom)` every word of the slots (sequence, length, payload words) is a loom atomic
//! of its own (`BcSlots`), so a subscriber that reads a slot it is not ordered after may read an
//! older value of any word: the initial 0 or the previous lap's message. Every message here is
//! two payload words long, has its own length, and every byte of it names it, so a stale length,
//! a stale word or a torn copy (words of two laps) never passes `identify`. The futex is a Mutex
//! + Condvar per word with no timeout: a lost wakeup shows up as a loom deadlock.
//!
//! Geometry: capacity 2 (message `p` in slot `p % 2`), so the third message is the first to
//! reuse a slot. With `--cfg shmpipe_loom_weaken` the store of a slot's completing sequence
//! (`Publisher::write`) is Relaxed, and the models that read slots concurrently with their
//! writing must fail.
#![cfg(loom)]

use loom::thread;
use shmpipe::ring::broadcast::{self, Overflow, Publisher, Start, Subscriber, Subscription};
use shmpipe::{Receiver, RecvError, Sender, TryRecvError, TrySendError, WaitStrategy};
use shmpipe_loom_tests::{model_capped, End};

/// Largest message: two payload words.
const MAX_MESSAGE: usize = 16;

/// Slots in every model: the third message reuses the first one's slot.
const CAPACITY: usize = 2;

type Tx = End<Publisher>;
type Rx = End<Subscriber>;

/// Runs `f` under loom within the preemption bound (`LOOM_MAX_PREEMPTIONS`, 3 when unset). The
/// models with three threads (two subscribers and the publisher) are capped at bound 1, as the
/// MPMC models are (at bound 2 the smaller of them explores a million interleavings in 80 s),
/// and the largest two-thread model at 2.
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    model_capped(None, f)
}

/// Message `i`: `9 + i % 4` bytes (two payload words), every one of them `b'A' + i`. Messages
/// two apart (the same slot, one lap apart) differ in length and in every byte.
fn msg(i: usize) -> Vec<u8> {
    vec![b'A' + i as u8; 9 + i % 4]
}

/// Which message `got` is, checked for its exact length and every byte (a stale length word or
/// a torn copy, with a word of another lap or the initial zeros, fails here).
#[track_caller]
fn identify(got: &[u8]) -> usize {
    let first = *got
        .first()
        .unwrap_or_else(|| panic!("an empty message was received (a stale length word)"));
    assert!(
        first >= b'A' && first < b'A' + 16,
        "received {got:?}, which the publisher never sent (stale or torn)"
    );
    let i = usize::from(first - b'A');
    assert_eq!(got, &msg(i)[..], "message {i}: wrong length or torn bytes");
    i
}

/// A ring with the default tethered subscriber `channel` returns, both ends parking at once
/// (no spinning or yielding) in their blocking calls.
fn channel(overflow: Overflow) -> (Tx, Rx) {
    let (mut tx, mut rx) = broadcast::channel(CAPACITY, MAX_MESSAGE, overflow).unwrap();
    tx.set_wait_strategy(WaitStrategy::park_only());
    rx.set_wait_strategy(WaitStrategy::park_only());
    (End::new(tx), End::new(rx))
}

/// Another subscriber of `tx`'s ring, parking at once (it inherits the publisher's strategy).
fn subscribe(tx: &Publisher, tethered: bool, start: Start) -> Rx {
    End::new(
        tx.subscribe(Subscription::default().tethered(tethered).start(start))
            .unwrap(),
    )
}

/// Sends messages `range` with the blocking `send`.
fn send_blocking(tx: &mut Publisher, range: std::ops::Range<usize>) {
    for i in range {
        if let Err(e) = tx.send(&msg(i)) {
            panic!("send of message {i} failed: {e:?}");
        }
    }
}

/// Sends messages `range` with `try_send`, each of which must go at once (never `Full`).
fn send_never_full(tx: &mut Publisher, range: std::ops::Range<usize>) {
    for i in range {
        if let Err(e) = tx.try_send(&msg(i)) {
            panic!("try_send of message {i}: {e:?}, but this publisher must never wait");
        }
    }
}

/// What a subscriber saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Msg(usize),
    Lagged(u64),
}

/// Receives with `try_recv` (yielding while empty) until `Disconnected`.
fn drain_spinning(rx: &mut Subscriber) -> Vec<Seen> {
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    loop {
        match rx.try_recv(&mut buf) {
            Ok(()) => seen.push(Seen::Msg(identify(&buf))),
            Err(TryRecvError::Lagged(n)) => seen.push(Seen::Lagged(n)),
            Err(TryRecvError::Empty) => thread::yield_now(),
            Err(TryRecvError::Disconnected) => break,
            Err(e) => panic!("try_recv failed: {e:?} (seen so far: {seen:?})"),
        }
    }
    // The end of the stream stays the end.
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    seen
}

/// Receives with the blocking `recv` until `Disconnected`.
fn drain_blocking(rx: &mut Subscriber) -> Vec<Seen> {
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    loop {
        match rx.recv(&mut buf) {
            Ok(()) => seen.push(Seen::Msg(identify(&buf))),
            Err(RecvError::Lagged(n)) => seen.push(Seen::Lagged(n)),
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("recv failed: {e:?} (seen so far: {seen:?})"),
        }
    }
    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
    seen
}

/// Receives one message with `try_recv`, yielding while empty (a lag is a failure).
fn recv_one_spinning(rx: &mut Subscriber) -> usize {
    let mut buf = Vec::new();
    loop {
        match rx.try_recv(&mut buf) {
            Ok(()) => return identify(&buf),
            Err(TryRecvError::Empty) => thread::yield_now(),
            Err(e) => panic!("try_recv failed: {e:?}"),
        }
    }
}

/// Lossless: exactly messages `range`, in order, nothing missed.
#[track_caller]
fn assert_all(seen: &[Seen], range: std::ops::Range<usize>) {
    let want: Vec<Seen> = range.map(Seen::Msg).collect();
    assert_eq!(seen, want, "not every message exactly once, in order");
}

/// Lossy, from position `from` to `published`: each message received is the one at the
/// subscriber's position (so strictly increasing, nothing skipped unannounced), each lag is
/// positive and moves the position by exactly its count, and received + missed covers every
/// position. Returns the messages missed.
#[track_caller]
fn assert_exact_lags(seen: &[Seen], from: usize, published: usize) -> u64 {
    let mut next = from;
    let mut missed = 0;
    for s in seen {
        match *s {
            Seen::Msg(i) => {
                assert_eq!(i, next, "message {i} at position {next} (seen: {seen:?})");
                next += 1;
            }
            Seen::Lagged(n) => {
                assert!(n > 0, "Lagged(0) (seen: {seen:?})");
                next += n as usize;
                missed += n;
            }
        }
    }
    assert_eq!(next, published, "received + missed != published (seen: {seen:?})");
    missed
}

// ---------------------------------------------------------------------------------------------
// Overflow::Block: lossless, in order, wraparound
// ---------------------------------------------------------------------------------------------

/// One publisher sends three messages through two slots (the third reuses the first one's slot,
/// so the publisher waits for both subscribers to read message 0), two subscribers parked in
/// `recv`: each gets all three, in order, intact, then `Disconnected`.
#[test]
fn block_two_parked_subscribers_each_get_every_message_in_order() {
    model_capped(Some(1), || {
        let (mut tx, mut a) = channel(Overflow::Block);
        let mut b = subscribe(&tx, true, Start::Latest);
        let other = thread::spawn(move || drain_blocking(&mut b));
        let publisher = thread::spawn(move || send_blocking(&mut tx, 0..3));
        let got = drain_blocking(&mut a);
        assert_all(&got, 0..3);
        assert_all(&other.join().unwrap(), 0..3);
        publisher.join().unwrap();
    });
}

/// Four messages through two slots: the publisher (parking when full) must wait for the slower
/// of two subscribers, one parked in `recv`, one polling with `try_recv`, and never overwrite a
/// slot either has not read (a tethered subscriber is never `Lagged`, and reads every message
/// with its own length and bytes).
#[test]
fn block_wraparound_waits_for_the_slowest_subscriber_and_overwrites_nothing_unread() {
    model_capped(Some(1), || {
        let (mut tx, mut a) = channel(Overflow::Block);
        let mut b = subscribe(&tx, true, Start::Latest);
        let other = thread::spawn(move || drain_blocking(&mut b));
        let publisher = thread::spawn(move || send_blocking(&mut tx, 0..4));
        assert_all(&drain_spinning(&mut a), 0..4);
        assert_all(&other.join().unwrap(), 0..4);
        publisher.join().unwrap();
    });
}

/// The same wraparound with one subscriber polling and the publisher polling `try_send` in
/// turn is not possible in loom (two pollers starve each other); here the publisher polls and
/// the one subscriber parks in `recv`: four messages through two slots, each intact, in order.
#[test]
fn block_polling_publisher_never_overwrites_what_a_parked_subscriber_has_not_read() {
    model(|| {
        let (mut tx, mut rx) = channel(Overflow::Block);
        let publisher = thread::spawn(move || {
            for i in 0..4 {
                loop {
                    match tx.try_send(&msg(i)) {
                        Ok(()) => break,
                        Err(TrySendError::Full) => thread::yield_now(),
                        Err(e) => panic!("try_send of message {i} failed: {e:?}"),
                    }
                }
            }
        });
        assert_all(&drain_blocking(&mut rx), 0..4);
        publisher.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Overflow::Overwrite and untethered subscribers: exact lag counts, no torn or stale message
// ---------------------------------------------------------------------------------------------

/// The publisher never waits and sends three messages through two slots (the third overwrites
/// the first) while the subscriber polls: if it is lapped it is told exactly how many it missed,
/// every message it gets is the one at its position (intact: the seqlock throws away a copy
/// overwritten under it), and received + missed is three.
#[test]
fn overwrite_lapped_subscriber_gets_exact_lag_counts_and_no_torn_message() {
    model(|| {
        let (mut tx, mut rx) = channel(Overflow::Overwrite);
        let publisher = thread::spawn(move || send_never_full(&mut tx, 0..3));
        let seen = drain_spinning(&mut rx);
        let missed = assert_exact_lags(&seen, 0, 3);
        assert_eq!(rx.missed(), missed);
        assert_eq!(rx.stats().missed, missed);
        publisher.join().unwrap();
    });
}

/// Under `Block`, an untethered subscriber never holds the publisher back: with the only
/// tethered subscriber gone, `try_send` of three messages through two slots never says `Full`,
/// and the untethered one, polling, gets exact lag counts and intact messages.
#[test]
fn block_untethered_subscriber_never_blocks_the_publisher_and_gets_exact_lags() {
    model(|| {
        let (mut tx, tethered) = channel(Overflow::Block);
        let mut rx = subscribe(&tx, false, Start::Latest);
        drop(tethered);
        let publisher = thread::spawn(move || send_never_full(&mut tx, 0..3));
        let seen = drain_spinning(&mut rx);
        let missed = assert_exact_lags(&seen, 0, 3);
        assert_eq!(rx.missed(), missed);
        publisher.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Membership changes while the publisher waits
// ---------------------------------------------------------------------------------------------

/// The publisher parks on a full ring held back by one tethered subscriber, which reads message
/// 0 and then leaves (dropped) without reading message 1: that must release the publisher,
/// which then sends two more into a ring nobody holds back.
#[test]
fn block_subscriber_leaving_releases_the_parked_publisher() {
    model(|| {
        let (mut tx, mut rx) = channel(Overflow::Block);
        let publisher = thread::spawn(move || {
            send_blocking(&mut tx, 0..4);
            tx
        });
        assert_eq!(recv_one_spinning(&mut rx), 0);
        drop(rx);
        let tx = publisher.join().unwrap();
        assert_eq!(tx.stats().subscribers, 0);
    });
}

/// A late joiner (`Start::Latest`) races the publisher's limit: the ring's only subscriber left
/// before the publisher started, so the publisher sends three messages through two slots with a
/// limit taken from an empty roster, and must notice the joiner (the StoreLoad handshake of
/// "Joining" in `ring::broadcast`) before it overwrites a slot the joiner has not read. Whatever
/// position the joiner starts at (between what was published before it called `subscribe` and
/// what was published when that returned), it gets every message from there on, in order,
/// intact, never `Lagged`, then `Disconnected`.
#[test]
fn block_late_joiner_racing_the_publisher_loses_nothing_from_its_start() {
    model(|| {
        let (mut tx, first) = channel(Overflow::Block);
        let joiner = tx.joiner();
        drop(first);
        let publisher = thread::spawn(move || send_blocking(&mut tx, 0..3));
        let before = joiner.stats().published as usize;
        let mut rx = End::new(joiner.subscribe(Subscription::default()).unwrap());
        let after = rx.stats().published as usize;
        rx.set_wait_strategy(WaitStrategy::park_only());
        let seen = drain_blocking(&mut rx);
        let from = match seen.first() {
            Some(&Seen::Msg(i)) => i,
            None => 3,
            Some(s) => panic!("the late joiner's first call: {s:?}"),
        };
        assert!(
            before <= from && from <= after,
            "started at {from}, joined between {before} and {after} published (seen: {seen:?})"
        );
        assert_all(&seen, from..3);
        publisher.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Park/wake and the end of the stream
// ---------------------------------------------------------------------------------------------

/// A subscriber parked in `recv` is woken by each of two sends, with the publisher kept alive
/// until it has both (so no close can rescue a lost wakeup: that would be a loom deadlock).
#[test]
fn recv_parked_is_woken_by_each_send() {
    model(|| {
        let (mut tx, mut rx) = channel(Overflow::Block);
        let publisher = thread::spawn(move || {
            send_never_full(&mut tx, 0..2);
            tx
        });
        let mut buf = Vec::new();
        for i in 0..2 {
            rx.recv(&mut buf).unwrap();
            assert_eq!(identify(&buf), i);
        }
        let tx = publisher.join().unwrap();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    });
}

/// End of stream: the publisher sends two messages and leaves at once; the subscriber, polling,
/// is never told `Disconnected` before it has drained both, and is told it for ever after.
#[test]
fn publisher_drop_subscriber_drains_everything_then_disconnects() {
    model(|| {
        let (mut tx, mut rx) = channel(Overflow::Block);
        let publisher = thread::spawn(move || {
            send_never_full(&mut tx, 0..2);
            drop(tx);
        });
        assert_all(&drain_spinning(&mut rx), 0..2);
        publisher.join().unwrap();
    });
}

/// End of stream under `Overwrite` with a lap: three messages through two slots, then the
/// publisher leaves; the parked subscriber drains what is left (message 0 possibly lost, told
/// exactly), then `Disconnected`.
#[test]
fn overwrite_publisher_drop_parked_subscriber_drains_then_disconnects() {
    model_capped(Some(2), || {
        let (mut tx, mut rx) = channel(Overflow::Overwrite);
        let publisher = thread::spawn(move || {
            send_never_full(&mut tx, 0..3);
            drop(tx);
        });
        let seen = drain_blocking(&mut rx);
        assert_exact_lags(&seen, 0, 3);
        publisher.join().unwrap();
    });
}
