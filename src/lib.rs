//! Fast, crash-safe message passing between processes on one Linux machine.
//!
//! A channel is a lock-free ring of byte messages in a System V shared-memory segment:
//! single-producer single-consumer by default, multi-producer multi-consumer on request (below). The data path is plain loads and stores to shared memory; a futex word
//! in the segment lets an idle side sleep, and is only touched (a syscall) when someone sleeps.
//!
//! ```no_run
//! use shmpipe::{Receiver, Sender};
//!
//! // Process A
//! let mut tx = shmpipe::open_sender("shm://orders")?;
//! tx.send(b"buy 100 @ 42")?;
//!
//! // Process B (either may start first)
//! let mut rx = shmpipe::open_receiver("shm://orders")?;
//! let mut msg = Vec::new();
//! rx.recv(&mut msg)?;
//! assert_eq!(msg, b"buy 100 @ 42");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//! - **FIFO, exactly once**: every message a sender publishes is received once, in order,
//!   unless the receiver leaves (or dies) before reading it.
//! - **Clean close**: dropping the sender lets the receiver drain everything, then get
//!   `Disconnected`; dropping the receiver makes the sender's next call `Disconnected`. A send
//!   that returns `Disconnected` was not received, so resending it elsewhere never duplicates it.
//! - **Crash**: a peer killed by SIGKILL is noticed within a park slice (100 ms by default) by a
//!   blocked side, and turns into `Disconnected` (the receiver still drains what was published).
//!   A message half-written when its sender died was never published and is not seen.
//! - **Containers**: liveness is a token the kernel keeps for each member (a System V semaphore
//!   adjusted with `SEM_UNDO`, given back by the kernel when its process exits), not a pid, so it
//!   holds across PID namespaces: a peer in another container that shares our IPC namespace is
//!   alive exactly while its process is. A stopped (SIGSTOP) peer is alive too.
//! - **fork()**: an end belongs to the process that opened it. In a forked child every call on an
//!   inherited end returns `Forked` (for example [`TrySendError::Forked`]) and dropping it only
//!   detaches, so the parent's channel is untouched; the child opens its own ends.
//! - **No leak**: the last process out removes the segment; a segment orphaned by a crash of
//!   both sides is recycled by the next `open` of that name.
//! - **Hostile memory**: every index and length read from the segment is validated before use;
//!   bad values give [`Corrupted`], never a panic or an access outside the segment. A process
//!   that may write the segment can still change message bytes, lose or duplicate messages, or end
//!   a stream; with such peers prefer the copying calls (`recv`, `try_recv`) to the borrowed views
//!   (`recv_ref`, `reserve`), whose bytes it could change while you read them. Cooperating members
//!   never write behind a live borrowed view. The README's "Trust model" has the whole list.
//!
//! The same ring runs in-process on the heap: [`ring::spsc::channel`].
//!
//! # Many senders and receivers
//! `shm://NAME?mode=mpmc` (or [`transport::shm::ShmConfig::kind`]) creates an MPMC ring that any
//! number of processes share ([`ring::mpmc`]): exactly once, each sender's messages in order at
//! every receiver, and a member killed mid-operation loses at most its own in-flight message
//! (counted in [`ring::mpmc::Stats`]) without wedging the others.
//!
//! # Every subscriber gets every message
//! `shm://NAME?mode=broadcast` creates a publish/subscribe ring ([`ring::broadcast`]): one
//! publisher, up to 64 subscribers joining and leaving at any time, each receiving every message
//! published after it joined, in order. With `overflow=block` (the default) the publisher waits
//! for the slowest live tethered subscriber and nothing is lost; with `overflow=overwrite` it
//! never waits, and a subscriber that falls a ring behind is told exactly how many messages it
//! missed ([`RecvError::Lagged`]).
//!
//! # Typed messages
//! With the non-default feature `bytemuck`, every sender and receiver also sends and receives
//! plain-old-data values as their own bytes (`tx.send_pod(&quote)`, `rx.recv_pod::<Quote>()`,
//! and in place on the SPSC and MPMC rings: `rx.try_recv_pod_ref::<Quote>()`); with `serde`, any
//! serde value in postcard's compact format (`tx.send_value(&order)`,
//! `rx.recv_value::<Order>()`). See `typed` (documented when either feature is enabled).
//!
//! # Which type for which job
//!
//! | job | use |
//! |---|---|
//! | any transport from a URL-like string (`shm://`, `msgq://`, `unix://`, `tcp://`, `auto://`) | [`open_sender`], [`open_receiver`]: boxed [`Sender`] / [`Receiver`] |
//! | one process to one process, fastest | [`transport::shm::ShmConfig`]: [`open_sender`](transport::shm::ShmConfig::open_sender) / [`open_receiver`](transport::shm::ShmConfig::open_receiver) |
//! | many senders and receivers sharing the work | `ShmConfig::kind(RingKind::Mpmc)`: [`open_mpmc_sender`](transport::shm::ShmConfig::open_mpmc_sender) / [`open_mpmc_receiver`](transport::shm::ShmConfig::open_mpmc_receiver) ([`ring::mpmc`]) |
//! | one publisher, every subscriber gets every message | `ShmConfig::kind(RingKind::Broadcast)`: [`open_publisher`](transport::shm::ShmConfig::open_publisher) / [`open_subscriber`](transport::shm::ShmConfig::open_subscriber) ([`ring::broadcast`]) |
//! | write in place, read without a copy | `reserve` / `recv_ref` on [`ring::spsc`] and [`ring::mpmc`] ends |
//! | many small messages at once | [`Sender::send_batch`], [`Receiver::recv_batch`] into a [`Batch`] |
//! | the same rings inside one process (tests, loom models) | [`ring::spsc::channel`], [`ring::mpmc::channel`], [`ring::broadcast::channel`] |
//! | a kernel queue that outlives both processes | [`transport::msgq::MsgqConfig`] |
//! | a peer in another network namespace or on another host | [`transport::socket::SocketConfig`] (`unix://`, `tcp://`) |
//! | many hosts, routers, TLS (feature `zenoh`) | `zenoh://KEYEXPR` (module `transport::zenoh`); `shmpipe bridge` forwards between any two endpoints |
//! | see, watch and clean up rings (what `shmpipe ls`/`stat`/`rm` show) | [`inspect`] |
//! | values instead of bytes: `#[repr(C)]` structs as their bytes, serde values (features `bytemuck`, `serde`) | `send_pod` / `recv_pod` / `try_recv_pod_ref`, `send_value` / `recv_value` (module `typed`) |
//! | what went wrong | [`Error`] (opening) and the per-call errors ([`TrySendError`], [`RecvError`], ...) |
//! | how a blocked call waits (spin, yield, park) | [`WaitStrategy`] |
//! | await instead of blocking, or a `Stream` / `Sink` (feature `tokio`, every transport but `zenoh://`) | `recv_async` / `send_async`, `into_stream` / `into_sink` (module `aio`) |
//!
//! The library depends on `libc` and `crossbeam-utils` only (plus `bytemuck`, or `serde` and
//! `postcard`, `tokio` with `futures-core` and `futures-sink`, or `zenoh`, with the non-default
//! features of those names). The `shmpipe` command-line tool is a
//! separate package (`shmpipe-cli`).

#![cfg_attr(docsrs, feature(doc_cfg))]
// Under `--cfg loom` (loom-tests/) the SysV transports, the liveness checks and the geometry
// helpers they use are compiled out, which leaves parameters and helpers unused there only.
#![cfg_attr(loom, allow(dead_code, unused_variables))]

// The shared layout is 64-bit words (positions, sizes, the waiter mask), and ring sizes up to
// MAX_CAPACITY x (MAX_MESSAGE_LIMIT + slot header) must fit in usize. Every size is also computed
// with checked arithmetic, but a 32-bit build is refused outright rather than half supported.
#[cfg(not(target_pointer_width = "64"))]
compile_error!(
    "shmpipe supports 64-bit targets only (its shared-memory layout and ring sizes assume a 64-bit usize)"
);

#[cfg(all(feature = "tokio", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod aio;
mod channel;
#[cfg(not(loom))]
pub mod endpoint;
pub mod error;
#[cfg(not(loom))]
pub mod inspect;
pub mod ring;
mod sync;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
pub mod transport;
#[cfg(all(not(loom), any(feature = "bytemuck", feature = "serde")))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "bytemuck", feature = "serde"))))]
pub mod typed;

pub use channel::{Batch, BatchIter, Receiver, Sender};
#[cfg(not(loom))]
pub use endpoint::{open_receiver, open_sender};
pub use error::{
    Corrupted, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TooLarge, TryRecvError,
    TrySendError,
};
pub use ring::{Peer, WaitStrategy};
#[cfg(all(not(loom), any(feature = "bytemuck", feature = "serde")))]
pub use typed::TypedRecvError;
#[cfg(all(not(loom), feature = "bytemuck"))]
pub use typed::{PodReceiver, PodSender};
#[cfg(all(not(loom), feature = "serde"))]
pub use typed::{TypedSendError, ValueReceiver, ValueSender};

// The README's Rust blocks run as doc tests: its complete async example is compiled and run; the
// sketches (fragments naming variables they do not declare) are marked `ignore`.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
