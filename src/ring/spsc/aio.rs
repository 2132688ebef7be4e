//! `recv_async` and `send_async` on the SPSC ends (feature `tokio`): the blocking calls' waits
//! (`front_deadline`, `claim_deadline`) with `wait::poll_wait` in place of `wait_until`. See
//! [`crate::aio`].

use super::*;
use crate::ring::wait::{poll_wait, Parked};
use std::future::poll_fn;

impl Consumer {
    /// Receives the next message into `buf`, waiting without blocking the thread while the ring
    /// is empty: the async form of [`Receiver::recv`], with the same results (`Disconnected` once
    /// the sender is gone and the ring drained, a killed sender noticed within a park slice,
    /// `Corrupted`, `Forked`).
    ///
    /// A message already there is taken at once, with no syscall and no registration.
    ///
    /// **Cancel safe**: a message is taken only by the poll that returns it; a future dropped
    /// before it completes has taken none, and leaves no waiter bit or registration behind.
    ///
    /// With a timeout: `tokio::time::timeout(d, rx.recv_async(&mut buf)).await` (an elapsed
    /// timeout drops the future, which is cancel safe). See [`crate::aio`].
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn recv_async(&mut self, buf: &mut Vec<u8>) -> Result<(), RecvError> {
        match self.try_front_with(false) {
            Ok(front) => {
                self.copy_out(front, buf);
                return Ok(());
            }
            Err(TryRecvError::Empty) => {}
            Err(e) => return Err(RecvTimeoutError::from(e).into()),
        }
        let core = Arc::clone(&self.core);
        let mut parked = Parked::new(&core.shared().not_empty, RECEIVER_BIT).yielding(&self.wait);
        let found = poll_fn(|cx| {
            poll_wait(
                &mut parked,
                core.shared().counters.tally(Role::Receiver, RECEIVER_BIT),
                cx,
                || self.message_check(),
                || core.sender_check(),
            )
        })
        .await;
        // The wait is over: no registration or bit left while the message is taken.
        drop(parked);
        // Nothing awaits from here on: this is the poll that returns.
        let front = self.after_wait(found)?;
        self.copy_out(front, buf);
        Ok(())
    }
}

impl Producer {
    /// Sends `msg`, waiting without blocking the thread while the ring is full: the async form of
    /// [`Sender::send`], with the same results (`Disconnected` once the receiver has closed or
    /// died, noticed within a park slice, `TooLarge`, `Corrupted`, `Forked`).
    ///
    /// With room in the ring it publishes at once, with no syscall and no registration (a wake-up
    /// only if the receiver sleeps, as for every send).
    ///
    /// **Cancel safe**: the message is published only by the poll that returns; a future dropped
    /// before it completes has sent nothing, and leaves no waiter bit or registration behind.
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), SendError> {
        match self.try_claim_with::<false>(msg.len(), false) {
            Ok(()) => {
                let rec = self.write(msg);
                return Ok(self.publish(rec).map_err(SendTimeoutError::from)?);
            }
            Err(TrySendError::Full) => {}
            Err(e) => return Err(SendTimeoutError::from(e).into()),
        }
        let core = Arc::clone(&self.core);
        let rec = record_size(msg.len());
        let mut parked = Parked::new(&core.shared().not_full, SENDER_BIT).yielding(&self.wait);
        let room = poll_fn(|cx| {
            poll_wait(
                &mut parked,
                core.shared().counters.tally(Role::Sender, SENDER_BIT),
                cx,
                || self.room_check(rec),
                || core.receiver_check(),
            )
        })
        .await;
        drop(parked);
        if room == Err(SendTimeoutError::Disconnected) {
            self.set_disconnected();
        }
        room?;
        // Nothing awaits from here on: this is the poll that returns.
        self.pad_if_needed(rec);
        let rec = self.write(msg);
        Ok(self.publish(rec).map_err(SendTimeoutError::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aio::testing::{poll_once, rt, Flag};
    use std::task::Poll;

    #[test]
    fn a_pending_recv_is_woken_by_a_send_and_a_dropped_one_leaves_no_bit() {
        let (mut tx, mut rx) = channel(4, 16).unwrap();
        // Parks at the first `Pending` (no yields first): what this test looks at.
        rx.set_wait_strategy(WaitStrategy::park_only());
        let flag = Arc::new(Flag(false.into()));
        let mut buf = Vec::new();
        {
            let mut f = std::pin::pin!(rx.recv_async(&mut buf));
            assert!(poll_once(f.as_mut(), &flag).is_pending());
            tx.try_send(b"hi").unwrap();
            let t0 = Instant::now();
            while !flag.0.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(t0.elapsed() < Duration::from_secs(5), "never woken");
                std::thread::yield_now();
            }
            assert_eq!(poll_once(f.as_mut(), &flag), Poll::Ready(Ok(())));
        }
        assert_eq!(buf, b"hi");
        {
            let mut f = std::pin::pin!(rx.recv_async(&mut buf));
            assert!(poll_once(f.as_mut(), &flag).is_pending());
            assert_ne!(rx_bits(&tx), 0);
        }
        assert_eq!(
            rx_bits(&tx) & RECEIVER_BIT,
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
    fn a_pending_recv_yields_as_its_strategy_says_before_it_registers() {
        let (mut tx, mut rx) = channel(4, 16).unwrap();
        rx.set_wait_strategy(WaitStrategy::park_only().yields(3));
        let mut buf = Vec::new();
        let flag = Arc::new(Flag(false.into()));
        let woken = |flag: &Flag| flag.0.swap(false, std::sync::atomic::Ordering::SeqCst);
        {
            let mut f = std::pin::pin!(rx.recv_async(&mut buf));
            for poll in 0..3 {
                assert!(poll_once(f.as_mut(), &flag).is_pending());
                assert!(woken(&flag), "yield {poll}: the task is woken at once");
                assert_eq!(rx_bits(&tx), 0, "yield {poll}: no waiter bit yet");
            }
            assert!(poll_once(f.as_mut(), &flag).is_pending());
            assert!(!woken(&flag), "registered: woken only by a send");
            assert_ne!(rx_bits(&tx) & RECEIVER_BIT, 0);
        }
        // A message sent while it yields is taken at the next poll, with no bit ever set.
        {
            let mut f = std::pin::pin!(rx.recv_async(&mut buf));
            assert!(poll_once(f.as_mut(), &flag).is_pending());
            tx.try_send(b"soon").unwrap();
            assert_eq!(rx_bits(&tx), 0);
            assert_eq!(poll_once(f.as_mut(), &flag), Poll::Ready(Ok(())));
        }
        assert_eq!(buf, b"soon");
    }

    #[test]
    fn a_pending_send_dropped_sent_nothing_and_left_no_bit_and_a_closed_receiver_ends_one() {
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        while tx.try_send(b"x").is_ok() {}
        let mut buf = Vec::new();
        rt().block_on(async {
            let r = tokio::time::timeout(Duration::from_millis(20), tx.send_async(b"late")).await;
            assert!(r.is_err(), "the ring is full");
        });
        assert_eq!(tx.core.shared().not_full.waiter_bits() & SENDER_BIT, 0);
        while rx.try_recv(&mut buf).is_ok() {
            assert_eq!(buf, b"x", "the cancelled send published nothing");
        }
        while tx.try_send(b"x").is_ok() {}
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(rx);
        });
        let r =
            rt().block_on(async { tokio::time::timeout(Duration::from_secs(5), tx.send_async(b"y")).await });
        assert_eq!(r, Ok(Err(SendError::Disconnected)));
        closer.join().unwrap();
    }

    #[test]
    fn a_bad_header_found_after_a_wake_is_corrupted_and_an_inherited_end_is_forked() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let core = Arc::clone(&rx.core);
        let planter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            // A header that would be valid one lap later (a stale or forged record), then a ring.
            let lap = core.records.size() as u64;
            core.records.word(0).store(message_word(lap, 1), Relaxed);
            let shared = core.shared();
            shared.not_empty.wake(1, &shared.counters.wakes);
        });
        let mut buf = Vec::new();
        let r = rt()
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv_async(&mut buf)).await });
        planter.join().unwrap();
        assert!(matches!(r, Ok(Err(RecvError::Corrupted(_)))), "{r:?}");
        assert_eq!(rx_bits(&tx) & RECEIVER_BIT, 0);
        // A forked child's inherited ends (faked: another owner) are refused at once.
        rx.owner = rx.owner.wrapping_add(1);
        tx.owner = tx.owner.wrapping_add(1);
        rt().block_on(async {
            assert_eq!(rx.recv_async(&mut buf).await, Err(RecvError::Forked));
            assert_eq!(tx.send_async(b"z").await, Err(SendError::Forked));
        });
    }

    #[test]
    fn the_futures_are_send_for_a_multi_threaded_runtime() {
        fn send<T: Send>(_: &T) {}
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        let mut buf = Vec::new();
        send(&rx.recv_async(&mut buf));
        send(&tx.send_async(b"x"));
    }

    fn rx_bits(tx: &Producer) -> u64 {
        tx.core.shared().not_empty.waiter_bits()
    }
}
