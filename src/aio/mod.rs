//! Async ends (feature `tokio`): await a message or room in the ring without a thread per waiter.
//!
//! What exists now, on the **SPSC ring** (in-process [`ring::spsc::channel`] and shared-memory
//! [`ShmConfig::open_sender`] / [`open_receiver`]):
//! - [`Consumer::recv_async`]`(&mut buf).await`, the async [`Receiver::recv`];
//! - [`Producer::send_async`]`(&msg).await`, the async [`Sender::send`].
//!
//! Both try first: a message (or room) already there costs what `try_recv` (`try_send`) costs, no
//! syscall and no registration. Both are cancel safe: a dropped future took (sent) nothing, and
//! left no waiter bit or registration behind. Results are the blocking calls': `Disconnected`
//! after the ring is drained, a killed peer noticed within a park slice (100 ms), `Corrupted`,
//! `Forked`. For a timeout, wrap the future: `tokio::time::timeout(d, rx.recv_async(&mut buf))`
//! (cancel safety makes an elapsed timeout lose nothing); there is no `recv_async_timeout`.
//!
//! Not yet: MPMC and broadcast ends, msgq and socket transports, the boxed `Sender`/`Receiver`
//! traits, `Stream`/`Sink` adapters.
//!
//! # How a waiting future is woken
//! A pending end does the blocking end's doorbell handshake (sets its waiter bit, the sleeper's
//! barrier, reads the futex word, re-checks), then registers (word, value, `Waker`) with a
//! process-wide waiter thread instead of sleeping. That thread sleeps in one `futex_waitv` call
//! on up to 127 rings' words at once (plus a control word), and wakes a task's `Waker` when its
//! ring's doorbell is rung, or after a park slice so the task re-checks its peer's liveness. The
//! publisher's side is unchanged: no syscall while nobody waits. A process has
//! `ceil(rings awaited at once / 127)` such threads at most, started on demand (none until the
//! first wait). Without `futex_waitv` (Linux before 5.16) the thread polls every millisecond.
//!
//! The futures need no particular runtime (only their `Waker`); the feature is named after the
//! runtime they are tested with, which is not a dependency of this crate.
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
//! [`ring::spsc::channel`]: crate::ring::spsc::channel
//! [`ShmConfig::open_sender`]: crate::transport::shm::ShmConfig::open_sender
//! [`open_receiver`]: crate::transport::shm::ShmConfig::open_receiver
//! [`Consumer::recv_async`]: crate::ring::spsc::Consumer::recv_async
//! [`Producer::send_async`]: crate::ring::spsc::Producer::send_async
//! [`Receiver::recv`]: crate::Receiver::recv
//! [`Sender::send`]: crate::Sender::send

pub(crate) mod waiter;
