//! `Stream` and `Sink` adapters over any async end: [`RecvStream`] and [`SendSink`].

use super::{AsyncReceiver, AsyncSender};
use crate::error::{RecvError, SendError};
use futures_core::{FusedStream, Stream};
use futures_sink::Sink;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A receive in progress: owns the end and its buffer, and gives both back with the result.
type Recv<R> = Pin<Box<dyn Future<Output = (R, Vec<u8>, Result<(), RecvError>)> + Send>>;
/// A send in progress, likewise.
type Send_<S> = Pin<Box<dyn Future<Output = (S, Vec<u8>, Result<(), SendError>)> + Send>>;

enum RecvState<R> {
    Idle(R, Vec<u8>),
    Receiving(Recv<R>),
    Ended,
}

/// The messages of a receiving end as a [`Stream`] of `Result<Vec<u8>, RecvError>`: made by
/// [`AsyncReceiver::into_stream`] (or [`RecvStream::new`]).
///
/// - Each item is one message, in order, exactly once.
/// - The stream ends (`None`) when the sender is gone and everything it sent has been received
///   ([`RecvError::Disconnected`] is the end, not an item).
/// - [`RecvError::Lagged`] (a broadcast subscriber lapped) and [`RecvError::Lost`] are items,
///   and the stream goes on; after [`RecvError::Corrupted`] or [`RecvError::Forked`], which no
///   later call would clear, it ends.
/// - Dropping the stream (or a `next()` future) between messages loses none: a wait in
///   progress is the receiver's cancel-safe `recv_async`.
///
/// Each message costs an allocation for its `Vec` and one for the boxed wait; a loop over
/// [`AsyncReceiver::recv_async`] with one reused buffer is the allocation-free form.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use futures_util::StreamExt;
/// use shmpipe::aio::AsyncReceiver;
/// use shmpipe::ring::spsc;
/// use shmpipe::Sender;
///
/// let (mut tx, rx) = spsc::channel(4, 64).unwrap();
/// let sender = std::thread::spawn(move || {
///     for word in ["one", "two", "three"] {
///         tx.send(word.as_bytes()).unwrap();
///     }
/// });
/// let got: Vec<_> = rx.into_stream().map(|m| m.unwrap()).collect().await;
/// assert_eq!(got, [&b"one"[..], b"two", b"three"]);
/// sender.join().unwrap();
/// # }
/// ```
pub struct RecvStream<R> {
    state: RecvState<R>,
}

impl<R: AsyncReceiver + Send + 'static> RecvStream<R> {
    /// The messages of `rx`.
    pub fn new(rx: R) -> Self {
        RecvStream {
            state: RecvState::Idle(rx, Vec::new()),
        }
    }

    /// The receiver back, unless a wait is in progress (the stream was polled and the poll was
    /// `Pending`) or the stream has ended.
    pub fn into_inner(self) -> Option<R> {
        match self.state {
            RecvState::Idle(rx, _) => Some(rx),
            _ => None,
        }
    }
}

impl<R: AsyncReceiver + Send + 'static> Stream for RecvStream<R> {
    type Item = Result<Vec<u8>, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, RecvState::Ended) {
                RecvState::Ended => return Poll::Ready(None),
                RecvState::Idle(mut rx, mut buf) => {
                    this.state = RecvState::Receiving(Box::pin(async move {
                        let r = rx.recv_async(&mut buf).await;
                        (rx, buf, r)
                    }));
                }
                RecvState::Receiving(mut wait) => {
                    let Poll::Ready((rx, buf, r)) = wait.as_mut().poll(cx) else {
                        this.state = RecvState::Receiving(wait);
                        return Poll::Pending;
                    };
                    return Poll::Ready(match r {
                        Ok(()) => {
                            // The message goes out as the item; the next one gets a fresh buffer
                            // of the same capacity.
                            let next = Vec::with_capacity(buf.capacity());
                            this.state = RecvState::Idle(rx, next);
                            Some(Ok(buf))
                        }
                        Err(RecvError::Disconnected) => None,
                        Err(e @ (RecvError::Lagged(_) | RecvError::Lost)) => {
                            this.state = RecvState::Idle(rx, buf);
                            Some(Err(e))
                        }
                        Err(e) => Some(Err(e)),
                    });
                }
            }
        }
    }
}

impl<R: AsyncReceiver + Send + 'static> FusedStream for RecvStream<R> {
    fn is_terminated(&self) -> bool {
        matches!(self.state, RecvState::Ended)
    }
}

// Nothing in a `RecvStream` is pinned in place: the receiver moves in and out of the boxed wait
// (which is pinned on the heap), so the stream may move between polls whatever `R` is.
impl<R> Unpin for RecvStream<R> {}

impl<R> std::fmt::Debug for RecvStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            RecvState::Idle(..) => "idle",
            RecvState::Receiving(_) => "receiving",
            RecvState::Ended => "ended",
        };
        f.debug_struct("RecvStream").field("state", &state).finish()
    }
}

enum SendState<S> {
    Idle(S, Vec<u8>),
    Sending(Send_<S>),
    Closed,
}

/// A sending end as a [`Sink`] of messages (anything `AsRef<[u8]>`: `&[u8]`, `Vec<u8>`, `&str`,
/// `[u8; N]` ...): made by [`AsyncSender::into_sink`] (or [`SendSink::new`]). Its own
/// [`close`](SendSink::close) and [`flush`](SendSink::flush) take precedence over `SinkExt`'s,
/// which would need the message type spelled out.
///
/// - `start_send` copies the message into the sink's buffer; the send itself (the end's
///   `send_async`, waiting while there is no room) runs in the next `poll_ready`, `poll_flush`
///   or `poll_close`. One message is in flight at a time, so `SinkExt::send` returns once the
///   message is sent, as `send_async` does.
/// - `poll_close` sends what is in flight, then drops the end: its receivers see the end of the
///   stream (`Disconnected`) once they have drained it.
/// - A send error is returned by the poll that finishes it, and the message was not sent
///   (`TooLarge`, `Disconnected` ...); the sink stays usable after `TooLarge`. Dropping the sink
///   with a message in flight is dropping that `send_async` future (see its cancel safety).
///
/// Each message costs a copy into the buffer and one allocation for the boxed send.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use futures_util::SinkExt;
/// use shmpipe::aio::AsyncSender;
/// use shmpipe::ring::spsc;
/// use shmpipe::Receiver;
///
/// let (tx, mut rx) = spsc::channel(2, 64).unwrap();
/// let receiver = std::thread::spawn(move || {
///     let (mut buf, mut n) = (Vec::new(), 0);
///     while rx.recv(&mut buf).is_ok() {
///         n += 1;
///     }
///     n
/// });
/// let mut sink = tx.into_sink();
/// for i in 0..100u32 {
///     sink.send(i.to_le_bytes()).await.unwrap(); // waits while the ring is full
/// }
/// sink.close().await.unwrap(); // the receiver's end of stream
/// assert_eq!(receiver.join().unwrap(), 100);
/// # }
/// ```
pub struct SendSink<S> {
    state: SendState<S>,
}

impl<S: AsyncSender + Send + 'static> SendSink<S> {
    /// `tx` as a sink.
    pub fn new(tx: S) -> Self {
        SendSink {
            state: SendState::Idle(tx, Vec::new()),
        }
    }

    /// Sends what is in flight, then drops the end (the receivers' end of stream): the
    /// `Sink::poll_close`, as a method of its own so that `sink.close().await` needs no message
    /// type (the sink takes any `AsRef<[u8]>`, and `SinkExt::close` would ask which).
    pub async fn close(&mut self) -> Result<(), SendError> {
        std::future::poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// Sends what is in flight: the `Sink::poll_flush`, as `close` is.
    pub async fn flush(&mut self) -> Result<(), SendError> {
        std::future::poll_fn(|cx| self.poll_sent(cx)).await
    }

    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let r = ready!(self.poll_sent(cx));
        // Dropping the end is its close: the receivers' end of stream.
        self.state = SendState::Closed;
        Poll::Ready(r)
    }

    /// The sender back, unless a send is in flight or the sink is closed.
    pub fn into_inner(self) -> Option<S> {
        match self.state {
            SendState::Idle(tx, _) => Some(tx),
            _ => None,
        }
    }

    /// Drives the send in flight, if any, to its end.
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let SendState::Sending(send) = &mut self.state else {
            return Poll::Ready(Ok(()));
        };
        let (tx, buf, r) = ready!(send.as_mut().poll(cx));
        self.state = SendState::Idle(tx, buf);
        Poll::Ready(r)
    }
}

impl<S: AsyncSender + Send + 'static, M: AsRef<[u8]>> Sink<M> for SendSink<S> {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = self.get_mut();
        if let SendState::Closed = this.state {
            return Poll::Ready(Err(SendError::Disconnected));
        }
        this.poll_sent(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: M) -> Result<(), SendError> {
        let this = self.get_mut();
        match std::mem::replace(&mut this.state, SendState::Closed) {
            SendState::Idle(mut tx, mut buf) => {
                buf.clear();
                buf.extend_from_slice(msg.as_ref());
                this.state = SendState::Sending(Box::pin(async move {
                    let r = tx.send_async(&buf).await;
                    (tx, buf, r)
                }));
                Ok(())
            }
            SendState::Closed => Err(SendError::Disconnected),
            SendState::Sending(before) => {
                // A caller that skipped `poll_ready` (the `Sink` contract's misuse): this message
                // goes after the one in flight, and only if that one was sent.
                let msg = msg.as_ref().to_vec();
                this.state = SendState::Sending(Box::pin(async move {
                    let (mut tx, buf, r) = before.await;
                    if r.is_err() {
                        return (tx, buf, r);
                    }
                    let r = tx.send_async(&msg).await;
                    (tx, buf, r)
                }));
                Ok(())
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut().poll_sent(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut().poll_closed(cx)
    }
}

// As for `RecvStream`: the sender is never pinned in place.
impl<S> Unpin for SendSink<S> {}

impl<S> std::fmt::Debug for SendSink<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            SendState::Idle(..) => "idle",
            SendState::Sending(_) => "sending",
            SendState::Closed => "closed",
        };
        f.debug_struct("SendSink").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aio::testing::rt;
    use crate::channel::{Receiver, Sender};
    use crate::ring::broadcast::{self, Overflow};
    use crate::ring::spsc;
    use futures_util::{SinkExt, StreamExt};

    #[test]
    fn a_lapped_subscriber_stream_yields_the_lag_then_goes_on_and_ends_with_the_publisher() {
        let (mut tx, rx) = broadcast::channel(4, 8, Overflow::Overwrite).unwrap();
        for i in 0..10u8 {
            tx.try_send(&[i]).unwrap();
        }
        drop(tx);
        let got: Vec<_> = rt().block_on(rx.into_stream().collect());
        let want: Vec<Result<Vec<u8>, RecvError>> = std::iter::once(Err(RecvError::Lagged(6)))
            .chain((6..10u8).map(|i| Ok(vec![i])))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_forked_receiver_stream_yields_the_error_once_then_ends() {
        let (_tx, mut rx) = spsc::channel(4, 8).unwrap();
        rx.pretend_forked();
        let mut stream = rx.into_stream();
        rt().block_on(async {
            assert_eq!(stream.next().await, Some(Err(RecvError::Forked)));
            assert_eq!(stream.next().await, None);
        });
        assert!(stream.is_terminated());
    }

    #[test]
    fn a_sink_sends_in_order_waits_for_room_and_queues_a_send_that_skipped_poll_ready() {
        let (tx, mut rx) = spsc::channel(2, 8).unwrap();
        let mut sink = tx.into_sink();
        rt().block_on(async {
            sink.send(b"a").await.unwrap();
            sink.send(b"b").await.unwrap();
            // Full now: the next send waits until the receiver takes one.
            let r = tokio::time::timeout(std::time::Duration::from_millis(20), sink.send(b"c")).await;
            assert!(r.is_err(), "the ring is full");
        });
        // The timed-out `send` left "c" in flight (the sink's, not the caller's): it goes next.
        let mut buf = Vec::new();
        for want in [b"a", b"b"] {
            rx.try_recv(&mut buf).unwrap();
            assert_eq!(buf, want);
        }
        // `start_send` without `poll_ready` (a contract breach) queues after the send in flight.
        Pin::new(&mut sink).start_send(b"d").unwrap();
        rt().block_on(sink.flush()).unwrap();
        let mut got = Vec::new();
        while rx.try_recv(&mut buf).is_ok() {
            got.push(buf.clone());
        }
        assert_eq!(got, [b"c".to_vec(), b"d".to_vec()]);
        rt().block_on(sink.close()).unwrap();
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        assert!(sink.into_inner().is_none(), "closed");
    }
}
