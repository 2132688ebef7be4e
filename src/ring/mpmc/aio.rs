//! `recv_async` and `send_async` on the MPMC ends (feature `tokio`): the blocking calls' waits
//! (`take_deadline`, `claim_run_deadline`) with `wait::poll_wait` in place of `wait_until`, plus
//! the pass-on of a wake spent on a cancelled wait ([`PassOn`]). See [`crate::aio`].

use super::*;
use crate::ring::wait::{poll_wait, Parked};
use std::future::poll_fn;

/// An async wait of an MPMC member (its [`Parked`] state) that, if dropped while parked, passes
/// on a wake that may have been spent on it.
///
/// Several members of a role sleep on one doorbell, and a publish (`MpmcCore::publish`) or a
/// free (`MpmcCore::free`) wakes ONE of them (`ring(1)`): whoever is woken is expected to take
/// the message (the slot), and to pass a wake on for what is left behind it
/// (`pass_on_not_empty`, `pass_on_not_full`). A future whose registration was the one woken but
/// which is dropped (cancelled: a `select!` lost, a `timeout` elapsed) before its next poll takes
/// nothing and passes nothing on, so another member asleep on the doorbell (async or blocking)
/// would sleep on until its park slice ends (100 ms) with a message there. So dropping a wait
/// that was parked (bit set, registered) does what a claim does: after deregistering and
/// clearing its own bit, if anyone else sleeps on the doorbell and the head message is ready (the
/// tail slot is free), wake one more.
///
/// Why that condition is enough and cheap:
/// - A wake can only have been spent on us while we were parked: `finish` returns false for a
///   wait that never parked, or that already ended (`Ready`), and then nothing is done.
/// - If it was spent on us, the ringer's publication and the `waiters` value it read (with the
///   other sleeper's bit: the Dekker argument of `ring::wait`) happen before our drop (through
///   the futex wake, the waiter thread's lock and our task's `Waker`), so our loads in
///   `pass_on_*` see both, unless the message was taken (or the sleeper left) meanwhile, and then
///   no wake is owed: whoever took the message passes on for the next one.
/// - A head not yet ready (published out of order) needs no wake: its own publish rings.
/// - Otherwise the cost of a cancelled wait is the publisher's barrier and a load (plus one
///   sequence load if someone sleeps); a wake we did not owe is only a spurious wake-up of a
///   member that then finds a message ready anyway.
///
/// In-process, the waiter thread fires every registration whose word changed, so two async
/// members of one process are both woken anyway; the pass-on matters for members in different
/// processes or waiter threads, and for blocking members.
struct PassOn<'a> {
    parked: Parked<'a>,
    core: &'a MpmcCore,
    role: Role,
}

impl Drop for PassOn<'_> {
    fn drop(&mut self) {
        if self.parked.finish() {
            match self.role {
                Role::Receiver => self.core.pass_on_not_empty(),
                Role::Sender => self.core.pass_on_not_full(),
            }
        }
    }
}

impl Consumer {
    /// Receives the next message into `buf`, waiting without blocking the thread while the ring
    /// is empty: the async form of [`Receiver::recv`], with the same results (`Disconnected`
    /// once every expected sender is gone and the ring drained, a killed sender noticed and its
    /// claimed slot recovered within a park slice, `Corrupted`, `Lost`, `Forked`).
    ///
    /// A message already there is taken at once, as by `try_recv`: no syscall, no registration.
    ///
    /// **Cancel safe**: a message is claimed only by the poll that returns it; a future dropped
    /// before it completes has taken none, and leaves no waiter bit or registration behind. If
    /// the ring's wake-up went to this future and it is dropped instead of polled, it passes the
    /// wake-up on to another waiting receiver (see [`crate::aio`]).
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn recv_async(&mut self, buf: &mut Vec<u8>) -> Result<(), RecvError> {
        let found = match self.try_take() {
            Ok(found) => found,
            Err(TryRecvError::Empty) => self.take_async().await?,
            Err(e) => return Err(RecvTimeoutError::from(e).into()),
        };
        // Nothing awaits from here on: this is the poll that claimed the message.
        if self.copy_out(found, buf) {
            Ok(())
        } else {
            Err(RecvError::Lost)
        }
    }

    /// `take_deadline` without a deadline, awaited.
    async fn take_async(&mut self) -> Result<(u64, usize), RecvError> {
        let core = Arc::clone(&self.core);
        let (me, expect) = (self.me, self.expect_senders);
        let shared = core.shared();
        let mut wait = PassOn {
            parked: Parked::new(&shared.not_empty, waiter_bit(me)).yielding(&self.wait),
            core: &core,
            role: Role::Receiver,
        };
        let r = poll_fn(|cx| {
            poll_wait(
                &mut wait.parked,
                core.tally(Role::Receiver, me),
                cx,
                || take_check(&core, me, expect, false),
                || take_check(&core, me, expect, true),
            )
        })
        .await;
        // Ready: `poll_wait` has ended the wait, so this drop passes nothing on.
        drop(wait);
        match r {
            Ok(found) => Ok(found),
            Err(e) => Err(RecvTimeoutError::from(self.failed(e)).into()),
        }
    }
}

impl Producer {
    /// Sends `msg`, waiting without blocking the thread while the ring is full: the async form of
    /// [`Sender::send`], with the same results (`Disconnected` once every receiver has left or
    /// died, noticed within a park slice, `TooLarge`, `Corrupted`, `Lost`, `Forked`).
    ///
    /// With room in the ring it publishes at once, as `try_send` does: no syscall (but a
    /// wake-up if a receiver sleeps, as for every send), no registration.
    ///
    /// **Cancel safe**: a slot is claimed and the message published only by the poll that
    /// returns; a future dropped before it completes has sent nothing, and leaves no waiter bit
    /// or registration behind. If a freed slot's wake-up went to this future and it is dropped
    /// instead of polled, it passes the wake-up on to another waiting sender.
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), SendError> {
        let pos = match self.try_claim(msg.len()) {
            Ok(pos) => pos,
            Err(TrySendError::Full) => self.claim_async().await?,
            Err(e) => return Err(SendTimeoutError::from(e).into()),
        };
        // Nothing awaits from here on: this is the poll that claimed the slot.
        if self.write(pos, msg) {
            Ok(())
        } else {
            Err(SendError::Lost)
        }
    }

    /// `claim_deadline` without a deadline, awaited (the size was checked by `try_claim`).
    async fn claim_async(&mut self) -> Result<u64, SendError> {
        let core = Arc::clone(&self.core);
        let me = self.me;
        let mut wait = PassOn {
            parked: Parked::new(&core.shared().not_full, waiter_bit(me)).yielding(&self.wait),
            core: &core,
            role: Role::Sender,
        };
        let r = poll_fn(|cx| {
            poll_wait(
                &mut wait.parked,
                core.tally(Role::Sender, me),
                cx,
                || core.room_check(me, 1),
                || core.receivers_check(),
            )
        })
        .await;
        // Ready: `poll_wait` has ended the wait, so this drop passes nothing on.
        drop(wait);
        Ok(self.claim_ended(r)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aio::testing::{poll_once, woken_within, Flag};
    use std::task::Poll;

    fn woken(flag: &Flag) {
        assert!(woken_within(flag, Duration::from_secs(5)), "never woken");
    }

    #[test]
    fn a_pending_recv_is_woken_and_a_dropped_one_leaves_no_bit() {
        let (mut tx, mut rx) = channel(4, 16).unwrap();
        // Parks at the first `Pending` (no yields first): what this test looks at.
        rx.set_wait_strategy(WaitStrategy::park_only());
        let bit = waiter_bit(rx.me);
        let flag = Arc::new(Flag(false.into()));
        let mut buf = Vec::new();
        {
            let mut f = std::pin::pin!(rx.recv_async(&mut buf));
            assert!(poll_once(f.as_mut(), &flag).is_pending());
            tx.try_send(b"hi").unwrap();
            woken(&flag);
            assert_eq!(poll_once(f.as_mut(), &flag), Poll::Ready(Ok(())));
        }
        assert_eq!(buf, b"hi");
        {
            let mut f = std::pin::pin!(rx.recv_async(&mut buf));
            assert!(poll_once(f.as_mut(), &flag).is_pending());
            assert_ne!(tx.core.shared().not_empty.waiter_bits() & bit, 0);
        }
        assert_eq!(
            tx.core.shared().not_empty.waiter_bits() & bit,
            0,
            "a dropped recv_async left its bit"
        );
        drop(tx);
        let mut f = std::pin::pin!(rx.recv_async(&mut buf));
        assert_eq!(
            poll_once(f.as_mut(), &flag),
            Poll::Ready(Err(RecvError::Disconnected))
        );
    }

    #[test]
    fn a_pending_send_dropped_sent_nothing_and_a_woken_one_sends() {
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        while tx.try_send(b"x").is_ok() {}
        let bit = waiter_bit(tx.me);
        let flag = Arc::new(Flag(false.into()));
        {
            let mut f = std::pin::pin!(tx.send_async(b"late"));
            assert!(poll_once(f.as_mut(), &flag).is_pending());
        }
        assert_eq!(rx.core.shared().not_full.waiter_bits() & bit, 0);
        let mut buf = Vec::new();
        {
            let mut f = std::pin::pin!(tx.send_async(b"y"));
            assert!(poll_once(f.as_mut(), &flag).is_pending());
            rx.try_recv(&mut buf).unwrap();
            woken(&flag);
            assert_eq!(poll_once(f.as_mut(), &flag), Poll::Ready(Ok(())));
        }
        let mut got = Vec::new();
        while rx.try_recv(&mut buf).is_ok() {
            got.push(buf.clone());
        }
        assert_eq!(
            got,
            [b"x".to_vec(), b"y".to_vec()],
            "the cancelled send published nothing"
        );
    }

    /// A wait woken and then dropped passes the wake on: a blocking receiver asleep on the same
    /// doorbell is woken although the publisher woke only one sleeper.
    #[test]
    fn a_dropped_parked_recv_passes_a_wake_on_when_a_message_is_ready() {
        let (mut tx, mut rx) = channel(4, 16).unwrap();
        // Parks at the first `Pending` (no yields first): what this test looks at.
        rx.set_wait_strategy(WaitStrategy::park_only());
        let mut other = rx.try_clone().unwrap();
        let other_bit = waiter_bit(other.me);
        let shared_core = Arc::clone(&rx.core);
        let flag = Arc::new(Flag(false.into()));
        let mut buf = Vec::new();
        let mut f = Box::pin(rx.recv_async(&mut buf));
        assert!(poll_once(f.as_mut(), &flag).is_pending());
        let sleeper = std::thread::spawn(move || {
            let mut b = Vec::new();
            other.set_wait_strategy(WaitStrategy::park_only().park_slice(Duration::from_secs(30)));
            let t0 = Instant::now();
            other.recv(&mut b).unwrap();
            (b, t0.elapsed())
        });
        while shared_core.shared().not_empty.waiter_bits() & other_bit == 0 {
            std::thread::yield_now();
        }
        // Wake nobody: publish without ringing, then bump the word as a `wake(1)` spent on the
        // pending future would (its registration fires; the blocking sleeper is not woken).
        let pos = tx.try_claim(2).unwrap();
        tx.core.slots.mark_write(pos);
        assert!(tx.core.publish_quietly(pos, 0, false));
        drop(f);
        let (b, waited) = sleeper.join().unwrap();
        assert!(b.is_empty());
        assert!(
            waited < Duration::from_secs(10),
            "the wake was not passed on: {waited:?}"
        );
    }

    /// The mirror for senders: a parked `send_async` dropped passes on the wake of a freed slot
    /// to a blocking sender asleep on `not_full`.
    #[test]
    fn a_dropped_parked_send_passes_a_wake_on_when_a_slot_is_free() {
        let (mut tx, mut rx) = channel(2, 16).unwrap();
        // Parks at the first `Pending` (no yields first): what this test looks at.
        tx.set_wait_strategy(WaitStrategy::park_only());
        while tx.try_send(b"x").is_ok() {}
        let mut other = tx.try_clone().unwrap();
        let other_bit = waiter_bit(other.me);
        let core = Arc::clone(&tx.core);
        let flag = Arc::new(Flag(false.into()));
        let mut f = Box::pin(tx.send_async(b"a"));
        assert!(poll_once(f.as_mut(), &flag).is_pending());
        let sleeper = std::thread::spawn(move || {
            other.set_wait_strategy(WaitStrategy::park_only().park_slice(Duration::from_secs(30)));
            let t0 = Instant::now();
            other.send(b"b").unwrap();
            t0.elapsed()
        });
        while core.shared().not_full.waiter_bits() & other_bit == 0 {
            std::thread::yield_now();
        }
        // Free a slot without ringing (as if its `wake(1)` went to the pending future).
        let (pos, len) = rx.try_take().unwrap();
        assert_eq!(len, 1);
        assert!(rx.core.free_quietly(pos, pos.wrapping_add(1)));
        drop(f);
        let waited = sleeper.join().unwrap();
        assert!(
            waited < Duration::from_secs(10),
            "the wake was not passed on: {waited:?}"
        );
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while rx.try_recv(&mut buf).is_ok() {
            got.push(buf.clone());
        }
        assert_eq!(
            got,
            [b"x".to_vec(), b"b".to_vec()],
            "the dropped send sent nothing"
        );
    }

    #[test]
    fn the_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        let mut buf = Vec::new();
        send(&rx.recv_async(&mut buf));
        send(&tx.send_async(b"x"));
    }
}
