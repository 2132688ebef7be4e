//! `recv_async` / `send_async` on message-queue ends (feature `tokio`). A SysV message queue has
//! no descriptor to wait on, so these poll: the non-blocking call, then a tokio sleep, doubling
//! from [`FIRST_PAUSE`] to [`MAX_PAUSE`] while nothing changes. See [`crate::aio`].

use super::*;
use crate::error::{RecvError, SendError};

/// The first pause after a call found nothing to do.
const FIRST_PAUSE: Duration = Duration::from_micros(50);
/// The longest pause: what a message arriving on an idle queue can wait, at most, before it is
/// seen (plus the timer's granularity, 1 ms in tokio).
const MAX_PAUSE: Duration = Duration::from_millis(2);

/// Exponential backoff in tokio's timer.
struct Pause(Duration);

impl Pause {
    fn new() -> Self {
        Pause(FIRST_PAUSE)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_PAUSE);
    }
}

impl MsgqReceiver {
    /// Receives the next message into `buf`, waiting without blocking the thread while the queue
    /// is empty: the async form of [`Receiver::recv`], with the same results (`Disconnected`
    /// after the end of stream once the queue is drained, or once the last sender is found dead).
    ///
    /// There is nothing to wait on in the kernel: while the queue stays empty it tries again
    /// after a sleep in tokio's timer doubling from 50 µs to 2 ms, so a message on an idle queue
    /// is seen up to about 2 ms (plus the timer's 1 ms granularity) late, and an idle wait costs
    /// up to ~500 `msgrcv` calls a second. Must be awaited within a tokio runtime with the time
    /// driver enabled (it panics otherwise).
    ///
    /// **Cancel safe**: the fragments of a long message received so far live in the receiver;
    /// a dropped future has taken no message.
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn recv_async(&mut self, buf: &mut Vec<u8>) -> Result<(), RecvError> {
        let mut pause = Pause::new();
        loop {
            match self.recv_impl(buf, Wait::Now) {
                Err(TryRecvError::Empty) => pause.wait().await,
                r => return r.map_err(|e| RecvTimeoutError::from(e).into()),
            }
        }
    }
}

impl MsgqSender {
    /// Sends `msg`, waiting without blocking the thread while the queue is full: the async form
    /// of [`Sender::send`], with the same results (`Disconnected` once the queue is removed or
    /// the receiver is found dead, `TooLarge`).
    ///
    /// While the queue stays full it tries again after a sleep in tokio's timer doubling from
    /// 50 µs to 2 ms (see [`recv_async`](MsgqReceiver::recv_async) for the cost). Must be awaited
    /// within a tokio runtime with the time driver enabled.
    ///
    /// **Cancellation**: a message of up to [`fragment_size`](Self::fragment_size) bytes is one
    /// `msgsnd`: a dropped future sent it whole or not at all. A longer one is committed by its
    /// first fragment: a future dropped before that sent nothing; one dropped after has sent the
    /// message, and its remaining fragments go out first at the next call or when the sender
    /// drops, as after a blocking send whose deadline passed mid-message. Whether a dropped
    /// future's message was sent: [`messages_sent`](Self::messages_sent) before and after.
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), SendError> {
        let mut pause = Pause::new();
        loop {
            match self.send_impl(msg, Wait::Now) {
                Ok(()) => break,
                Err(TrySendError::Full) => pause.wait().await,
                Err(e) => return Err(SendTimeoutError::from(e).into()),
            }
        }
        // Committed: write the rest of a long message before completing.
        let mut pause = Pause::new();
        loop {
            match self.flush_rest(Wait::Now) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full) => pause.wait().await,
                Err(e) => {
                    if e == TrySendError::Disconnected {
                        self.disconnected = true;
                    }
                    return Err(SendTimeoutError::from(e).into());
                }
            }
        }
    }
}
