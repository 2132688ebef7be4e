//! The `Sender` and `Receiver` traits every transport implements.
//!
//! Messages are byte slices. Each trait has one required blocking method taking an optional
//! absolute deadline, from which `send`/`send_timeout` (and `recv`/`recv_timeout`) follow, so a
//! retry inside a transport can never stretch a timeout.

use crate::error::*;
use crate::ring::Peer;
use std::time::{Duration, Instant};

/// The sending end of a channel.
pub trait Sender {
    /// Sends without blocking: `Full` if there is no room now.
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError>;

    /// Sends, waiting for room until `deadline` (`None`: for ever).
    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError>;

    /// The largest message this channel accepts, in bytes.
    fn max_message_size(&self) -> usize;

    /// Sends, waiting while the channel is full.
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_deadline(msg, None).map_err(Into::into)
    }

    /// Sends, waiting at most `timeout` for room.
    fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.send_deadline(msg, Instant::now().checked_add(timeout))
    }

    /// Pushes out anything accepted but not yet handed to the transport (a socket's partly
    /// written frame), waiting until `deadline`. Transports that never hold such data return
    /// `Ok` at once. Dropping a sender also flushes, for a bounded time.
    fn flush_deadline(&mut self, _deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        Ok(())
    }

    /// What this end knows of the receiver, if the transport can tell (shared memory can:
    /// `Closed` versus `Dead` after `Disconnected`); `None` otherwise.
    fn peer(&self) -> Option<Peer> {
        None
    }
}

/// The receiving end of a channel. Received bytes replace the contents of `buf`.
pub trait Receiver {
    /// Receives without blocking: `Empty` if nothing is there now.
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError>;

    /// Receives, waiting until `deadline` (`None`: for ever).
    fn recv_deadline(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>)
        -> Result<(), RecvTimeoutError>;

    /// Receives, waiting while the channel is empty.
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(), RecvError> {
        self.recv_deadline(buf, None).map_err(Into::into)
    }

    /// Receives, waiting at most `timeout`.
    fn recv_timeout(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), RecvTimeoutError> {
        self.recv_deadline(buf, Instant::now().checked_add(timeout))
    }

    /// What this end knows of the sender, if the transport can tell: after `Disconnected`,
    /// `Closed` is a clean end of stream and `Dead` a crashed sender; `None` if unknown.
    fn peer(&self) -> Option<Peer> {
        None
    }
}

impl<S: Sender + ?Sized> Sender for Box<S> {
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        (**self).try_send(msg)
    }
    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        (**self).send_deadline(msg, deadline)
    }
    fn max_message_size(&self) -> usize {
        (**self).max_message_size()
    }
    fn flush_deadline(&mut self, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        (**self).flush_deadline(deadline)
    }
    fn peer(&self) -> Option<Peer> {
        (**self).peer()
    }
}

impl<R: Receiver + ?Sized> Receiver for Box<R> {
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        (**self).try_recv(buf)
    }
    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        (**self).recv_deadline(buf, deadline)
    }
    fn peer(&self) -> Option<Peer> {
        (**self).peer()
    }
}
