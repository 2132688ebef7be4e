//! Async ends (feature `tokio`): await a message or room without a thread per waiter, on every
//! transport (the SPSC, MPMC and broadcast rings, message queues, Unix/TCP sockets), and
//! `Stream`/`Sink` adapters over any of them.
//!
//! What exists now:
//! - **SPSC ring** (in-process [`ring::spsc::channel`] and shared-memory
//!   [`ShmConfig::open_sender`] / [`open_receiver`]): [`Consumer::recv_async`] and
//!   [`Producer::send_async`], woken by shared `futex_waitv` waiter threads (below). They need
//!   only a `Waker`, any executor.
//! - **Sockets**: [`SocketReceiver::recv_async`], [`SocketSender::send_async`] and
//!   [`SocketSender::flush_async`], woken by tokio's reactor (the socket is registered as an
//!   `AsyncFd` on the first async call; every read and write passes `MSG_DONTWAIT`, so the
//!   descriptor stays in blocking mode for the blocking calls, which mix freely with these).
//!   Await them in a tokio runtime with I/O enabled, one runtime per end (the one registered).
//! - **Message queues**: [`MsgqReceiver::recv_async`] and [`MsgqSender::send_async`], which
//!   poll (the kernel has nothing to wait on), sleeping in tokio's timer from 50 µs doubling to
//!   2 ms: a message reaching an idle queue is seen up to ~2 ms (plus the timer's 1 ms tick)
//!   late. Await them in a tokio runtime with the time driver enabled.
//! - **MPMC ring** ([`ShmConfig::open_mpmc_sender`] / [`open_mpmc_receiver`], `shm://…?mode=mpmc`):
//!   [`mpmc::Consumer::recv_async`] and [`mpmc::Producer::send_async`], woken by the same waiter
//!   threads. A wake-up spent on a future that is then dropped unpolled is passed on to another
//!   waiting member (the ring wakes one sleeper per message or freed slot).
//! - **Broadcast ring** ([`ShmConfig::open_publisher`] / [`open_subscriber`],
//!   `shm://…?mode=broadcast`): [`broadcast::Subscriber::recv_async`] and
//!   [`broadcast::Publisher::send_async`], woken by the same waiter threads (each subscriber has
//!   its own waiter bit; a publication wakes them all).
//! - **Any of them**: the object-safe traits [`AsyncReceiver`] / [`AsyncSender`] (boxed futures,
//!   one allocation per call), and [`open_async_receiver`] / [`open_async_sender`] for
//!   every endpoint (`shm://` of any mode, `msgq://`, `unix://`, `tcp://`, `auto://`).
//! - **Streams and sinks**: [`AsyncReceiver::into_stream`] ([`RecvStream`], a
//!   `futures_core::Stream` of `Result<Vec<u8>, RecvError>` that ends at the end of the stream)
//!   and [`AsyncSender::into_sink`] ([`SendSink`], a `futures_sink::Sink` of any `AsRef<[u8]>`),
//!   at an allocation per message.
//!
//! Each tries first: a message (or room) already there costs what `try_recv` (`try_send`) costs.
//! Results are the blocking calls': `Disconnected` after everything sent is drained, a killed
//! peer noticed (sockets at once, message queues within their 50 ms liveness check, the ring
//! within a park slice of 100 ms), `Corrupted`, `TooLarge`, `Forked`. For a timeout, wrap the
//! future: `tokio::time::timeout(d, rx.recv_async(&mut buf))`; there is no `recv_async_timeout`.
//!
//! # Cancellation
//! - A dropped `recv_async` has taken no message, on every transport: what it read of a message
//!   (a socket's partial frame, a message queue's fragments) is kept in the receiver, and the
//!   next call goes on with it. An elapsed `timeout` or a lost `select!` branch loses nothing.
//! - A dropped SPSC or MPMC `send_async` sent nothing and left no waiter bit or registration. A socket
//!   `send_async` dropped before the kernel took any of its frame sent nothing; dropped after,
//!   the message is sent: the rest of the frame stays in the sender and is written first by the
//!   next call, [`SocketSender::flush_async`], or drop, as after a blocking send whose deadline
//!   passed mid-frame. A message-queue message longer than one `msgsnd` is likewise committed by
//!   its first fragment. No message is ever cut or repeated. Whether a dropped future sent its
//!   message: [`AsyncSender::messages_sent`] (or the ends' own `messages_sent`) before and
//!   after. (`pending_bytes() > 0` does not say: the remainder may be an earlier message's.)
//!
//! # How a waiting ring future is woken
//! A ring end that finds nothing first yields to the executor as many times as its
//! [`WaitStrategy::yields`](crate::WaitStrategy) says (8 by default, none with
//! `WaitStrategy::park_only()` or `?wait=park`): it returns `Pending` with its task woken at
//! once, and re-checks when polled again. A blocking wait spins first; an executor thread is not
//! ours to spin on, but a yield lets other tasks run and costs a trip through the scheduler, less
//! than a registration (a `membarrier`, a wake of the waiter thread, and a futex wake by the
//! peer) when the peer is about to act.
//! Then a pending end does the blocking end's doorbell handshake (sets its waiter bit, the sleeper's
//! barrier, reads the futex word, re-checks), then registers (word, value, `Waker`) with a
//! process-wide waiter thread instead of sleeping. That thread sleeps in one `futex_waitv` call
//! on up to 127 rings' words at once (plus a control word), and wakes a task's `Waker` when its
//! ring's doorbell is rung, or after a park slice so the task re-checks its peer's liveness. The
//! publisher's side is unchanged: no syscall while nobody waits. A process has
//! `ceil(rings awaited at once / 127)` such threads at most, started on demand (none until the
//! first wait). Without `futex_waitv` (Linux before 5.16) the thread polls every millisecond.
//!
//! The SPSC futures need no particular runtime (only their `Waker`). The feature makes tokio
//! (features `net`, `rt` and `time`, no defaults) a dependency, for the sockets' reactor and the
//! message queues' timer; without it the library depends on `libc` and `crossbeam-utils` only.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use shmpipe::ring::spsc;
//!
//! let (mut tx, mut rx) = spsc::channel(4, 64).unwrap();
//! // A sender on another thread (or, with `ShmConfig`, in another process).
//! let sender = std::thread::spawn(move || {
//!     use shmpipe::Sender;
//!     for i in 0..100u32 {
//!         tx.send(&i.to_le_bytes()).unwrap();
//!     }
//! });
//! let mut buf = Vec::new();
//! let mut n = 0u32;
//! while rx.recv_async(&mut buf).await.is_ok() {
//!     assert_eq!(buf, n.to_le_bytes());
//!     n += 1;
//! }
//! // The sender dropped its end: the ring is drained, then `Disconnected`.
//! assert_eq!(n, 100);
//! sender.join().unwrap();
//!
//! // A timeout wraps the (cancel-safe) future.
//! let (_tx, mut rx) = spsc::channel(4, 64).unwrap();
//! let r = tokio::time::timeout(std::time::Duration::from_millis(10), rx.recv_async(&mut buf)).await;
//! assert!(r.is_err(), "nothing was sent");
//! # }
//! ```
//!
//! Any transport through an endpoint, here a Unix socket (the receiver listens):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use shmpipe::aio::{open_async_receiver, AsyncReceiver};
//! use shmpipe::Sender;
//!
//! let dir = std::env::temp_dir().join(format!("shmpipe-aio-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let endpoint = format!("unix://{}", dir.join("s.sock").display());
//! let mut rx = open_async_receiver(&endpoint).unwrap();
//! let sender = std::thread::spawn(move || {
//!     let mut tx = shmpipe::open_sender(&endpoint).unwrap();
//!     tx.send(b"hello").unwrap();
//! });
//! let mut buf = Vec::new();
//! rx.recv_async(&mut buf).await.unwrap();
//! assert_eq!(buf, b"hello");
//! assert_eq!(rx.recv_async(&mut buf).await, Err(shmpipe::RecvError::Disconnected));
//! sender.join().unwrap();
//! # drop(rx);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # }
//! ```
//!
//! [`ring::spsc::channel`]: crate::ring::spsc::channel
//! [`ShmConfig::open_sender`]: crate::transport::shm::ShmConfig::open_sender
//! [`open_receiver`]: crate::transport::shm::ShmConfig::open_receiver
//! [`Consumer::recv_async`]: crate::ring::spsc::Consumer::recv_async
//! [`Producer::send_async`]: crate::ring::spsc::Producer::send_async
//! [`ShmConfig::open_mpmc_sender`]: crate::transport::shm::ShmConfig::open_mpmc_sender
//! [`open_mpmc_receiver`]: crate::transport::shm::ShmConfig::open_mpmc_receiver
//! [`ShmConfig::open_publisher`]: crate::transport::shm::ShmConfig::open_publisher
//! [`open_subscriber`]: crate::transport::shm::ShmConfig::open_subscriber
//! [`broadcast::Subscriber::recv_async`]: crate::ring::broadcast::Subscriber::recv_async
//! [`broadcast::Publisher::send_async`]: crate::ring::broadcast::Publisher::send_async
//! [`mpmc::Consumer::recv_async`]: crate::ring::mpmc::Consumer::recv_async
//! [`mpmc::Producer::send_async`]: crate::ring::mpmc::Producer::send_async
//! [`SocketReceiver::recv_async`]: crate::transport::socket::SocketReceiver::recv_async
//! [`SocketSender::send_async`]: crate::transport::socket::SocketSender::send_async
//! [`SocketSender::flush_async`]: crate::transport::socket::SocketSender::flush_async
//! [`MsgqReceiver::recv_async`]: crate::transport::msgq::MsgqReceiver::recv_async
//! [`MsgqSender::send_async`]: crate::transport::msgq::MsgqSender::send_async

mod stream;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod waiter;

pub use stream::{RecvStream, SendSink};

use crate::endpoint::Endpoint;
use crate::error::{Error, RecvError, SendError};
use crate::ring::spsc::{Consumer, Producer};
use crate::ring::RingKind;
use crate::ring::{broadcast, mpmc};
use crate::transport::msgq::{MsgqReceiver, MsgqSender};
use crate::transport::socket::{SocketReceiver, SocketSender};
use std::future::Future;
use std::pin::Pin;

/// The future of [`AsyncReceiver::recv_async`]: boxed, so that the trait can be used as
/// `dyn AsyncReceiver`.
pub type RecvFuture<'a> = Pin<Box<dyn Future<Output = Result<(), RecvError>> + Send + 'a>>;
/// The future of [`AsyncSender::send_async`]: boxed, so that the trait can be used as
/// `dyn AsyncSender`.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// The receiving end of any transport, awaited: what [`open_async_receiver`] returns.
///
/// Implemented by the SPSC [`Consumer`], the MPMC [`mpmc::Consumer`], the
/// [`broadcast::Subscriber`], [`MsgqReceiver`] and [`SocketReceiver`], whose own
/// (inherent) `recv_async` methods return the same future unboxed; the trait's costs one
/// allocation per call. Each type's `recv_async` documents how it waits and why it is cancel
/// safe (a dropped future has taken no message).
pub trait AsyncReceiver {
    /// Receives the next message into `buf`, waiting without blocking the thread: the async
    /// [`Receiver::recv`](crate::Receiver::recv), with its results (`Disconnected` once the
    /// sender is gone and everything sent is drained).
    fn recv_async<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> RecvFuture<'a>;

    /// This end's messages as a [`Stream`](futures_core::Stream) of `Result<Vec<u8>,
    /// RecvError>`, ending after the end of the stream: see [`RecvStream`].
    fn into_stream(self) -> RecvStream<Self>
    where
        Self: Sized + Send + 'static,
    {
        RecvStream::new(self)
    }
}

/// The sending end of any transport, awaited: what [`open_async_sender`] returns.
///
/// Implemented by the SPSC [`Producer`], the MPMC [`mpmc::Producer`], the
/// [`broadcast::Publisher`], [`MsgqSender`] and [`SocketSender`], whose own
/// (inherent) `send_async` methods return the same future unboxed; each documents what a dropped
/// future has sent (nothing, or, once a long message is committed, all of it).
pub trait AsyncSender {
    /// Sends `msg`, waiting without blocking the thread while there is no room: the async
    /// [`Sender::send`](crate::Sender::send), with its results.
    fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a>;

    /// Messages this end has sent since it was opened, by any call, where a dropped
    /// `send_async` may have sent its message (sockets, message queues): compare the count
    /// before and after to learn whether it did. `None` where a dropped `send_async` never sent
    /// (the SPSC and MPMC rings).
    fn messages_sent(&self) -> Option<u64> {
        None
    }

    /// This end as a [`Sink`](futures_sink::Sink) of messages (`AsRef<[u8]>`), whose close
    /// drops the end: see [`SendSink`].
    fn into_sink(self) -> SendSink<Self>
    where
        Self: Sized + Send + 'static,
    {
        SendSink::new(self)
    }
}

impl<T: AsyncReceiver + ?Sized> AsyncReceiver for Box<T> {
    fn recv_async<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> RecvFuture<'a> {
        (**self).recv_async(buf)
    }
}

impl<T: AsyncSender + ?Sized> AsyncSender for Box<T> {
    fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a> {
        (**self).send_async(msg)
    }
    fn messages_sent(&self) -> Option<u64> {
        (**self).messages_sent()
    }
}

impl AsyncReceiver for Consumer {
    fn recv_async<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> RecvFuture<'a> {
        Box::pin(Consumer::recv_async(self, buf))
    }
}

impl AsyncSender for Producer {
    fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a> {
        Box::pin(Producer::send_async(self, msg))
    }
}

impl AsyncReceiver for mpmc::Consumer {
    fn recv_async<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> RecvFuture<'a> {
        Box::pin(mpmc::Consumer::recv_async(self, buf))
    }
}

impl AsyncSender for mpmc::Producer {
    fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a> {
        Box::pin(mpmc::Producer::send_async(self, msg))
    }
}

impl AsyncReceiver for broadcast::Subscriber {
    fn recv_async<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> RecvFuture<'a> {
        Box::pin(broadcast::Subscriber::recv_async(self, buf))
    }
}

impl AsyncSender for broadcast::Publisher {
    fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a> {
        Box::pin(broadcast::Publisher::send_async(self, msg))
    }
}

impl AsyncReceiver for MsgqReceiver {
    fn recv_async<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> RecvFuture<'a> {
        Box::pin(MsgqReceiver::recv_async(self, buf))
    }
}

impl AsyncSender for MsgqSender {
    fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a> {
        Box::pin(MsgqSender::send_async(self, msg))
    }
    fn messages_sent(&self) -> Option<u64> {
        Some(MsgqSender::messages_sent(self))
    }
}

impl AsyncReceiver for SocketReceiver {
    fn recv_async<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> RecvFuture<'a> {
        Box::pin(SocketReceiver::recv_async(self, buf))
    }
}

impl AsyncSender for SocketSender {
    fn send_async<'a>(&'a mut self, msg: &'a [u8]) -> SendFuture<'a> {
        Box::pin(SocketSender::send_async(self, msg))
    }
    fn messages_sent(&self) -> Option<u64> {
        Some(SocketSender::messages_sent(self))
    }
}

/// `zenoh://` has blocking ends only: Zenoh refuses tokio's current-thread runtime.
#[cfg(feature = "zenoh")]
fn no_async_zenoh() -> Error {
    Error::InvalidConfig(
        "zenoh:// has no async ends (Zenoh refuses tokio's current-thread runtime); use the \
         blocking ends on a thread of their own (tokio::task::spawn_blocking on a multi-thread runtime)"
            .into(),
    )
}

impl Endpoint {
    /// Opens (or creates) the channel and takes its receiving end, to be awaited. See
    /// [`open_async_receiver`].
    pub fn open_async_receiver(self) -> Result<Box<dyn AsyncReceiver + Send>, Error> {
        Ok(match self {
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Mpmc => Box::new(cfg.open_mpmc_receiver()?),
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Broadcast => Box::new(cfg.open_subscriber()?),
            Endpoint::Shm(cfg) => Box::new(cfg.open_receiver()?),
            Endpoint::Msgq(cfg) => Box::new(cfg.open_receiver()?),
            Endpoint::Socket(cfg) => Box::new(cfg.open_receiver()?),
            Endpoint::Auto(cfg) => cfg.first_available(Endpoint::open_async_receiver)?.0,
            #[cfg(feature = "zenoh")]
            Endpoint::Zenoh(_) => return Err(no_async_zenoh()),
        })
    }

    /// Opens (or creates) the channel and takes its sending end, to be awaited. See
    /// [`open_async_sender`].
    pub fn open_async_sender(self) -> Result<Box<dyn AsyncSender + Send>, Error> {
        Ok(match self {
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Mpmc => Box::new(cfg.open_mpmc_sender()?),
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Broadcast => Box::new(cfg.open_publisher()?),
            Endpoint::Shm(cfg) => Box::new(cfg.open_sender()?),
            Endpoint::Msgq(cfg) => Box::new(cfg.open_sender()?),
            Endpoint::Socket(cfg) => Box::new(cfg.open_sender()?),
            Endpoint::Auto(cfg) => cfg.first_available(Endpoint::open_async_sender)?.0,
            #[cfg(feature = "zenoh")]
            Endpoint::Zenoh(_) => return Err(no_async_zenoh()),
        })
    }
}

/// Opens the receiving end of the channel at `endpoint`, to be awaited: as
/// [`open_receiver`](crate::open_receiver), for every endpoint: `shm://` (SPSC, MPMC and
/// broadcast rings: a subscriber), `msgq://`, `unix://`, `tcp://` and `auto://`.
pub fn open_async_receiver(endpoint: &str) -> Result<Box<dyn AsyncReceiver + Send>, Error> {
    Endpoint::parse(endpoint)?.open_async_receiver()
}

/// Opens the sending end of the channel at `endpoint`, to be awaited: as
/// [`open_sender`](crate::open_sender), for the same endpoints as [`open_async_receiver`].
pub fn open_async_sender(endpoint: &str) -> Result<Box<dyn AsyncSender + Send>, Error> {
    Endpoint::parse(endpoint)?.open_async_sender()
}
