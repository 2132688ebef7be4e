//! `recv_async` / `send_async` on socket ends (feature `tokio`): the non-blocking calls
//! (`MSG_DONTWAIT`, as `try_recv`/`try_send` make them), waiting for readiness in tokio's reactor
//! instead of in `poll(2)` or a blocking call. See [`crate::aio`].
//!
//! The descriptor stays in blocking mode (the blocking calls rely on it): the async path never
//! makes a call that could block, since each of its reads and writes passes `MSG_DONTWAIT`, so it
//! needs no `O_NONBLOCK`. The descriptor is registered with the reactor of the runtime that makes
//! the first async call (edge-triggered, readable and writable), and deregistered before it is
//! closed or replaced (the listener by the accepted stream).

use super::*;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A descriptor registered with tokio's reactor. It does not own the descriptor, which the
/// [`Link`] does; [`Conn::set_link`] drops the registration before the link closes it.
pub(super) struct Registration(AsyncFd<FdNumber>);

struct FdNumber(RawFd);

impl AsRawFd for FdNumber {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Which readiness a call waits for on a connected stream (a listener is waited on for a peer to
/// accept, that is readable, whatever the call).
#[derive(Clone, Copy)]
enum Want {
    Read,
    Write,
}

impl Conn {
    /// Waits until the current descriptor is ready for `want` (registering it on first use), and
    /// clears that readiness: the caller then retries its non-blocking call, and if that finds
    /// nothing again, the next readiness event wakes it. A readiness that came after the call
    /// that found nothing is not lost: the retry sees what it announced. `Ready` also when the
    /// link is closed (the retry reports it).
    ///
    /// Panics outside a tokio runtime with I/O enabled (as tokio's own sockets do).
    fn poll_ready(&mut self, cx: &mut Context<'_>, want: Want) -> Poll<()> {
        let (fd, want) = match &self.link {
            Link::Listening(l) => (l.fd().as_raw_fd(), Want::Read),
            Link::Connected(s) => (s.fd().as_raw_fd(), want),
            Link::Closed => return Poll::Ready(()),
        };
        // `fd` is the open descriptor of `self.link`, which owns it. The registration is dropped
        // before that descriptor is closed or replaced: `Conn::set_link` drops it before every
        // change of the link, and `reg` is `Conn`'s first field, so dropped before `link`.
        // `FdNumber` always returns this same number.
        let reg = match &mut self.reg {
            Some(reg) => reg,
            none => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                // SAFETY: `fd` stays open while registered (above).
                let registered = unsafe { AsyncFd::register_with_interest(FdNumber(fd), interest) };
                match registered {
                    Ok(afd) => none.insert(Registration(afd)),
                    // epoll refused the socket (out of memory): give up on the connection rather
                    // than spin; the retry reports it.
                    Err(_) => {
                        self.set_link(Link::Closed);
                        return Poll::Ready(());
                    }
                }
            }
        };
        let polled = match want {
            Want::Read => ready!(reg.0.poll_read_ready(cx)).map(|mut g| g.clear_ready()),
            Want::Write => ready!(reg.0.poll_write_ready(cx)).map(|mut g| g.clear_ready()),
        };
        if polled.is_err() {
            // The registration's reactor is gone (its runtime shut down): register again, with
            // the current runtime's, on the retry.
            self.reg = None;
        }
        Poll::Ready(())
    }
}

impl SocketReceiver {
    /// Receives the next message into `buf`, waiting in tokio's reactor (no thread, no blocking
    /// call) while none is there: the async form of [`Receiver::recv`], with the same results
    /// (`Disconnected` after the complete frames are drained once the peer closed or died,
    /// `Corrupted` for a truncated or oversized frame). While listening it waits for the peer to
    /// connect, as `recv` does.
    ///
    /// **Cancel safe**: the bytes read so far, a partial frame included, live in the receiver,
    /// not the future; a dropped future has taken no message, and the next call goes on with the
    /// frame in progress.
    ///
    /// Must be awaited within a tokio runtime with I/O enabled (it panics otherwise, as tokio's
    /// sockets do). The socket is registered with the reactor of the first async call's runtime:
    /// make an end's async calls within that one runtime (it is registered again only once that
    /// runtime has shut down).
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn recv_async(&mut self, buf: &mut Vec<u8>) -> Result<(), RecvError> {
        poll_fn(|cx| self.poll_recv(cx, buf)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<Result<(), RecvError>> {
        loop {
            match self.receive(buf, Mode::NoWait) {
                Err(TryRecvError::Empty) => {}
                r => return Poll::Ready(r.map_err(|e| RecvTimeoutError::from(e).into())),
            }
            ready!(self.conn.poll_ready(cx, Want::Read));
        }
    }
}

impl SocketSender {
    /// Sends `msg`, waiting in tokio's reactor while the socket has no room (or, listening, no
    /// peer yet): the async form of [`Sender::send`], with the same results (`Disconnected` once
    /// the peer closed or died, `TooLarge`).
    ///
    /// It runs in two steps, as `send` does: the frame is *accepted* by the first write the
    /// kernel takes any of (after the remainder of an earlier frame is written), then the
    /// future writes the rest of it before completing.
    ///
    /// **Cancellation**: a future dropped before its frame was accepted sent nothing. One dropped
    /// after (while writing the rest) has sent the message: the remainder is kept in the sender
    /// and written first by the next call, by [`flush_async`](Self::flush_async), or at drop, as
    /// after a blocking send whose deadline passed mid-frame. A frame is never cut or repeated.
    /// Whether a dropped future's message was sent: [`messages_sent`](Self::messages_sent)
    /// before and after (not [`pending_bytes`](Self::pending_bytes), which may be the remainder
    /// of an earlier message that the dropped future was still writing out).
    ///
    /// Must be awaited within a tokio runtime with I/O enabled (it panics otherwise), the same
    /// runtime for every async call of this end (see [`SocketReceiver::recv_async`]).
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.check_len(msg).map_err(SendError::TooLarge)?;
        poll_fn(|cx| self.poll_accept(cx, msg)).await?;
        self.flush_async().await
    }

    /// Writes the remainder of a partly written frame (see [`pending_bytes`](Self::pending_bytes)),
    /// waiting in tokio's reactor for room: the async [`flush_deadline`](Self::flush_deadline).
    /// Cancel safe: what a dropped future wrote is written, the rest is still pending.
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn flush_async(&mut self) -> Result<(), SendError> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>, msg: &[u8]) -> Poll<Result<(), SendError>> {
        loop {
            match self.send_now(msg, Mode::NoWait) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(TrySendError::Full) => {}
                Err(e) => return Poll::Ready(Err(SendTimeoutError::from(e).into())),
            }
            ready!(self.conn.poll_ready(cx, Want::Write));
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        loop {
            if self.writer.pending() == 0 {
                return Poll::Ready(Ok(()));
            }
            let State::Ready(stream) = self.conn.state() else {
                return Poll::Ready(Err(SendError::Disconnected));
            };
            let fd = stream.fd();
            match self.writer.flush(|b| send_bytes(fd, b, Mode::NoWait)) {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => {}
                Err(_) => {
                    self.disconnect();
                    return Poll::Ready(Err(SendError::Disconnected));
                }
            }
            ready!(self.conn.poll_ready(cx, Want::Write));
        }
    }
}
