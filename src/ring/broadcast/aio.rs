//! `recv_async` and `send_async` on the broadcast ends (feature `tokio`): the blocking calls'
//! waits (`recv_inner`, `room_deadline`) with `wait::poll_wait` in place of `wait_until`. See
//! [`crate::aio`].

use super::*;
use crate::ring::wait::{poll_wait, Parked};
use std::future::poll_fn;

impl Subscriber {
    /// Receives the next message into `buf`, waiting without blocking the thread while there is
    /// none: the async form of [`Receiver::recv`], with the same results (`Lagged(n)` when the
    /// publisher overwrote `n` messages this subscriber had not read, after which it reads on
    /// from the oldest still there; `Disconnected` once the publisher is gone and everything it
    /// published is read; a killed publisher noticed within a park slice; `Corrupted`, `Forked`).
    ///
    /// A message already there is taken at once, with no syscall and no registration.
    ///
    /// **Cancel safe**: a message is taken (this subscriber's cursor moved) only by the poll that
    /// returns it; a future dropped before it completes has taken none, and leaves no waiter bit
    /// or registration behind. A tethered subscriber waiting here holds the publisher back as a
    /// blocked one does, no more.
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn recv_async(&mut self, buf: &mut Vec<u8>) -> Result<(), RecvError> {
        loop {
            match self.try_take::<false>(buf, false) {
                Err(TryRecvError::Empty) => {}
                r => return r.map(drop).map_err(|e| RecvTimeoutError::from(e).into()),
            }
            let core = Arc::clone(&self.core);
            let bit = sub_bit(self.me);
            let mut parked = Parked::new(&core.shared().not_empty, bit).yielding(&self.wait);
            let found = poll_fn(|cx| {
                poll_wait(
                    &mut parked,
                    core.shared().counters.tally(Role::Receiver, bit),
                    cx,
                    || self.message_check(),
                    || core.publisher_check(),
                )
            })
            .await;
            // The wait is over: no registration or bit left while the message is taken.
            drop(parked);
            if found? {
                self.done = true;
                return Err(RecvError::Disconnected);
            }
            // Nothing awaits from here to a return: this is the poll that takes the message.
            match self.try_take::<false>(buf, true) {
                Err(TryRecvError::Empty) => continue,
                r => return r.map(drop).map_err(|e| RecvTimeoutError::from(e).into()),
            }
        }
    }
}

impl Publisher {
    /// Publishes `msg`, waiting without blocking the thread while a tethered subscriber of an
    /// `overflow=block` ring has not read the slot it would overwrite: the async form of
    /// [`Sender::send`], with the same results (`TooLarge`, `Corrupted`, `Forked`; a tethered
    /// subscriber that was killed stops holding it back within the liveness bound). Under
    /// `overflow=overwrite` it never waits.
    ///
    /// **Cancel safe**: the message is published only by the poll that returns; a future dropped
    /// before it completes has published nothing, and leaves no waiter bit or registration
    /// behind.
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), SendError> {
        match self.try_room(msg.len(), false) {
            Ok(()) => {
                self.write(msg);
                return Ok(());
            }
            Err(TrySendError::Full) => {}
            Err(e) => return Err(SendTimeoutError::from(e).into()),
        }
        let core = Arc::clone(&self.core);
        let mut parked = Parked::new(&core.shared().not_full, PUBLISHER_BIT).yielding(&self.wait);
        let room = poll_fn(|cx| {
            poll_wait(
                &mut parked,
                core.shared().counters.tally(Role::Sender, PUBLISHER_BIT),
                cx,
                || self.room_check(),
                || core.reap_check(),
            )
        })
        .await;
        drop(parked);
        room?;
        // Nothing awaits from here on: this is the poll that returns.
        self.write(msg);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aio::testing::rt;

    #[test]
    fn two_async_subscribers_get_every_message_and_the_end_of_the_stream() {
        let (mut tx, rx) = channel(4, 16, Overflow::Block).unwrap();
        let other = tx.subscribe(Subscription::default()).unwrap();
        let publisher = std::thread::spawn(move || {
            for i in 0..1000u32 {
                tx.send(&i.to_le_bytes()).unwrap();
            }
        });
        rt().block_on(async {
            let read = |sub: &'static str, mut s: Subscriber| async move {
                let mut buf = Vec::new();
                let mut n = 0u32;
                loop {
                    match s.recv_async(&mut buf).await {
                        Ok(()) => {
                            assert_eq!(buf, n.to_le_bytes(), "{sub}");
                            n += 1;
                        }
                        Err(RecvError::Disconnected) => return n,
                        Err(e) => panic!("{sub}: {e:?}"),
                    }
                }
            };
            let (a, b) = tokio::join!(read("a", rx), read("b", other));
            assert_eq!((a, b), (1000, 1000));
        });
        publisher.join().unwrap();
    }

    #[test]
    fn a_blocked_async_publisher_waits_for_a_tethered_subscriber_and_a_dropped_send_sent_nothing() {
        let (mut tx, mut rx) = channel(2, 8, Overflow::Block).unwrap();
        while tx.try_send(b"x").is_ok() {}
        rt().block_on(async {
            let r = tokio::time::timeout(Duration::from_millis(20), tx.send_async(b"late")).await;
            assert!(r.is_err(), "the subscriber has read nothing");
        });
        assert_eq!(tx.core.shared().not_full.waiter_bits() & PUBLISHER_BIT, 0);
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            while rx.recv(&mut buf).is_ok() {
                got.push(buf.clone());
            }
            got
        });
        rt().block_on(async {
            for _ in 0..10 {
                tx.send_async(b"y").await.unwrap();
            }
        });
        drop(tx);
        let got = reader.join().unwrap();
        let xs = got.iter().take_while(|m| m.as_slice() == b"x").count();
        assert!(xs >= 1, "{got:?}");
        assert_eq!(
            &got[xs..],
            vec![b"y".to_vec(); 10],
            "the cancelled send published nothing"
        );
    }

    #[test]
    fn an_overwritten_async_subscriber_is_told_how_many_it_missed() {
        let (mut tx, mut rx) = channel(4, 8, Overflow::Overwrite).unwrap();
        for i in 0..10u8 {
            tx.try_send(&[i]).unwrap();
        }
        let mut buf = Vec::new();
        rt().block_on(async {
            assert_eq!(rx.recv_async(&mut buf).await, Err(RecvError::Lagged(6)));
            for i in 6..10u8 {
                rx.recv_async(&mut buf).await.unwrap();
                assert_eq!(buf, [i]);
            }
            let r = tokio::time::timeout(Duration::from_millis(20), rx.recv_async(&mut buf)).await;
            assert!(r.is_err(), "nothing more was published");
        });
        assert_eq!(tx.core.shared().not_empty.waiter_bits() & sub_bit(rx.me), 0);
    }
}
