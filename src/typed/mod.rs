//! Typed messages: values instead of byte slices, on every transport.
//!
//! Two encodings, each behind a non-default cargo feature, each as a pair of extension traits
//! implemented for every [`Sender`](crate::Sender) and [`Receiver`](crate::Receiver) (shared
//! memory SPSC, MPMC and broadcast rings, message queues, Unix and TCP sockets, and the
//! `Box<dyn Sender>` / `Box<dyn Receiver>` of [`open_sender`](crate::open_sender) and
//! [`open_receiver`](crate::open_receiver)):
//!
//! - **Plain old data** (feature `bytemuck`): [`PodSender::send_pod`] sends a value's own bytes
//!   (`bytemuck::bytes_of`, no encoding and no intermediate copy), and
//!   [`PodReceiver::recv_pod`] reads them back into a `T`, checking only the length. A message
//!   is exactly `size_of::<T>()` bytes in the sender's memory layout: use `#[repr(C)]` types
//!   with explicit padding, and peers of the same endianness (every Linux target this crate
//!   builds for that shares a machine's memory is one). The SPSC and MPMC rings also lend a
//!   received value in place: [`spsc::Consumer::try_recv_pod_ref`] and
//!   [`mpmc::Consumer::try_recv_pod_ref`] return a [`PodRef`] that derefs to `&T`.
//! - **serde values** (feature `serde`): [`ValueSender::send_value`] encodes any
//!   `Serialize` value with [postcard](https://docs.rs/postcard) (compact, non self-describing,
//!   with a [documented, stable wire format](https://postcard.jamesmunns.com/wire-format)) and
//!   [`ValueReceiver::recv_value`] decodes it into a `T: DeserializeOwned`.
//!
//! Each method comes in the four forms of the byte traits: `try_` (never blocks), plain (waits
//! while the channel is full or empty), `_timeout` and `_deadline`.
//!
//! # Errors
//! Sending plain data fails only as sending bytes does ([`SendError`](crate::SendError) and
//! friends). Encoding a serde value can also fail ([`TypedSendError::Encode`]); a value whose
//! encoding is longer than the channel's maximum is the usual `TooLarge`. Every typed receive
//! returns a [`TypedRecvError`] wrapping the receive's own error (`Channel`) or saying that the
//! message received is not a `T` (`WrongSize`, `Decode`). Such a message is **consumed**: the
//! bytes are dropped (the error carries the type name and the lengths), nothing else is lost,
//! and the next call receives the next message.
//!
//! # Buffers
//! The typed calls reuse one scratch buffer per thread for the bytes they send or receive, so
//! after the first message of a given size they allocate nothing; a buffer grown past 64 KiB by
//! a large message is freed rather than kept.
//!
//! [`spsc::Consumer::try_recv_pod_ref`]: crate::ring::spsc::Consumer::try_recv_pod_ref
//! [`mpmc::Consumer::try_recv_pod_ref`]: crate::ring::mpmc::Consumer::try_recv_pod_ref
#![cfg_attr(
    all(feature = "bytemuck", feature = "serde"),
    doc = r#"
# Example

```
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use shmpipe::ring::spsc;
use shmpipe::typed::{PodReceiver, PodSender, ValueReceiver, ValueSender};

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Quote {
    price: u64,
    qty: u32,
    venue: u16,
    _pad: [u8; 2],
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Order {
    Limit { symbol: String, price: u64 },
    Cancel(u64),
}

let (mut tx, mut rx) = spsc::channel(16, 256)?;
let quote = Quote { price: 42_000, qty: 100, venue: 3, _pad: [0; 2] };
tx.send_pod(&quote)?;
assert_eq!(rx.recv_pod::<Quote>()?, quote);

tx.send_value(&Order::Limit { symbol: "ACME".into(), price: 41_900 })?;
assert_eq!(
    rx.recv_value::<Order>()?,
    Order::Limit { symbol: "ACME".into(), price: 41_900 }
);
# Ok::<(), Box<dyn std::error::Error>>(())
```
"#
)]

use std::cell::Cell;
use std::fmt;

#[cfg(feature = "bytemuck")]
mod pod;
#[cfg(feature = "serde")]
mod value;

#[cfg(feature = "bytemuck")]
pub use pod::{PodReceiver, PodRef, PodSender};
#[cfg(feature = "serde")]
pub use value::{TypedSendError, ValueReceiver, ValueSender};

/// Why a typed receive ([`PodReceiver::recv_pod`], [`ValueReceiver::recv_value`], ...) failed.
///
/// `E` is the error of the byte receive it is made of: [`TryRecvError`](crate::TryRecvError)
/// for the `try_` forms, [`RecvError`](crate::RecvError) for the blocking ones and
/// [`RecvTimeoutError`](crate::RecvTimeoutError) for the `_timeout` and `_deadline` ones.
///
/// Every variant but `Channel` means a message *was* received and is gone: nothing else is lost,
/// and the next call receives the next message.
///
/// ```
/// use shmpipe::typed::TypedRecvError;
/// use shmpipe::TryRecvError;
///
/// let e: TypedRecvError<TryRecvError> = TryRecvError::Empty.into();
/// assert_eq!(e.to_string(), "receiving on an empty channel");
/// let e = TypedRecvError::<TryRecvError>::WrongSize { type_name: "app::Quote", expected: 16, got: 3 };
/// assert_eq!(
///     e.to_string(),
///     "received a 3-byte message where a `app::Quote` of 16 bytes was expected; the message was dropped"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TypedRecvError<E> {
    /// The receive itself failed (empty, timed out, disconnected, ...): nothing was received.
    Channel(E),
    /// A message was received whose length is not that of a `type_name`: for plain old data, a
    /// message of `got` bytes where `size_of::<T>()` (`expected`) were due; for a serde value, a
    /// message of `got` bytes that holds a whole `type_name` in its first `expected` bytes and
    /// then more. The message was consumed.
    WrongSize {
        /// The type asked for ([`std::any::type_name`]).
        type_name: &'static str,
        /// Bytes a `type_name` takes.
        expected: usize,
        /// Bytes the message had.
        got: usize,
    },
    /// A message was received that does not decode as a `type_name` (postcard reports
    /// `error`). The message was consumed.
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    Decode {
        /// The type asked for ([`std::any::type_name`]).
        type_name: &'static str,
        /// Bytes the message had.
        len: usize,
        /// What postcard found wrong.
        error: postcard::Error,
    },
}

impl<E> From<E> for TypedRecvError<E> {
    fn from(e: E) -> Self {
        TypedRecvError::Channel(e)
    }
}

impl<E: fmt::Display> fmt::Display for TypedRecvError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedRecvError::Channel(e) => fmt::Display::fmt(e, f),
            TypedRecvError::WrongSize {
                type_name,
                expected,
                got,
            } => write!(
                f,
                "received a {got}-byte message where a `{type_name}` of {expected} bytes was expected; \
                 the message was dropped"
            ),
            #[cfg(feature = "serde")]
            TypedRecvError::Decode {
                type_name,
                len,
                error,
            } => write!(
                f,
                "received a {len}-byte message that does not decode as a `{type_name}` ({error}); \
                 the message was dropped"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for TypedRecvError<E> {
    /// `Channel` is transparent (its error's own source); the other variants have none: what
    /// was wrong is in their message and fields.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TypedRecvError::Channel(e) => e.source(),
            _ => None,
        }
    }
}

/// Bytes of scratch buffer a thread keeps between typed calls; a larger one is freed.
const KEEP: usize = 64 * 1024;

thread_local! {
    /// The buffer the typed calls of this thread encode into and receive into.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer (empty, with whatever capacity it has kept).
/// Reentrant: a nested call (a `Serialize` impl that sends) gets a fresh buffer, as does a call
/// while the thread's locals are being destroyed.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP {
        buf.clear();
        let _ = SCRATCH.try_with(|s| s.set(buf));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_reused_and_reentrant_and_large_ones_are_freed() {
        let cap = with_scratch(|b| {
            b.extend_from_slice(&[1; 100]);
            // Nested: a fresh, empty buffer.
            with_scratch(|inner| assert!(inner.is_empty()));
            b.capacity()
        });
        with_scratch(|b| {
            assert!(b.is_empty());
            assert_eq!(b.capacity(), cap);
            b.resize(KEEP + 1, 0);
        });
        with_scratch(|b| assert!(b.capacity() <= KEEP));
    }
}
