//! serde values in postcard's format (feature `serde`).

use super::{with_scratch, TypedRecvError};
use crate::error::*;
use crate::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::type_name;
use std::fmt;
use std::time::{Duration, Instant};

/// Why a serde send ([`ValueSender::send_value`], ...) failed.
///
/// `E` is the error of the byte send it is made of: [`TrySendError`], [`SendError`] or
/// [`SendTimeoutError`]. An encoding longer than the channel's maximum message is that error's
/// `TooLarge` (`Channel(SendError::TooLarge(..))`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub enum TypedSendError<E> {
    /// The send itself failed (full, timed out, disconnected, too large, ...).
    Channel(E),
    /// The value could not be encoded (its `Serialize` impl failed, or gave a sequence of unknown
    /// length, which postcard cannot encode). Nothing was sent.
    Encode {
        /// The type of the value ([`std::any::type_name`]).
        type_name: &'static str,
        /// What postcard reported.
        error: postcard::Error,
    },
}

impl<E> From<E> for TypedSendError<E> {
    fn from(e: E) -> Self {
        TypedSendError::Channel(e)
    }
}

impl<E: fmt::Display> fmt::Display for TypedSendError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedSendError::Channel(e) => fmt::Display::fmt(e, f),
            TypedSendError::Encode { type_name, error } => {
                write!(f, "cannot encode a `{type_name}` ({error}); nothing was sent")
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for TypedSendError<E> {
    /// `Channel` is transparent (its error's own source); `Encode` has none: postcard's error is
    /// in its message and its `error` field.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TypedSendError::Channel(e) => e.source(),
            TypedSendError::Encode { .. } => None,
        }
    }
}

/// Sending serde values, encoded with [postcard](https://docs.rs/postcard), on every [`Sender`].
///
/// Each value is one message: its postcard encoding ([wire
/// format](https://postcard.jamesmunns.com/wire-format): varint integers, length-prefixed
/// strings and sequences, enum variants by index, struct fields in order and unnamed). It is
/// compact and stable, but not self-describing: the receiver must decode the same type (or one
/// with the same shape). For peers in other languages prefer plain-old-data values
/// ([`PodSender`](super::PodSender)) or raw bytes.
///
/// The value is encoded into this thread's scratch buffer (no allocation once it has grown),
/// then sent; an encoding longer than the channel's maximum is the send's `TooLarge`.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use shmpipe::ring::spsc;
/// use shmpipe::typed::{ValueReceiver, ValueSender};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Fill {
///     symbol: String,
///     legs: Vec<(u64, u32)>,
/// }
///
/// let (mut tx, mut rx) = spsc::channel(16, 256)?;
/// let fill = Fill { symbol: "ACME".into(), legs: vec![(42_000, 100), (42_001, 5)] };
/// tx.send_value(&fill)?;
/// tx.try_send_value("a str, received as a String")?;
/// assert_eq!(rx.recv_value::<Fill>()?, fill);
/// assert_eq!(rx.try_recv_value::<String>()?, "a str, received as a String");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub trait ValueSender: Sender {
    /// Encodes and sends `value` without blocking: `Channel(Full)` if there is no room now.
    fn try_send_value<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), TypedSendError<TrySendError>> {
        with_scratch(|buf| {
            encode(value, buf)?;
            Ok(self.try_send(buf)?)
        })
    }

    /// Encodes and sends `value`, waiting while the channel is full.
    fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TypedSendError<SendError>> {
        with_scratch(|buf| {
            encode(value, buf)?;
            Ok(self.send(buf)?)
        })
    }

    /// Encodes and sends `value`, waiting at most `timeout` for room.
    fn send_value_timeout<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), TypedSendError<SendTimeoutError>> {
        self.send_value_deadline(value, Instant::now().checked_add(timeout))
    }

    /// Encodes and sends `value`, waiting for room until `deadline` (`None`: for ever).
    fn send_value_deadline<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        deadline: Option<Instant>,
    ) -> Result<(), TypedSendError<SendTimeoutError>> {
        with_scratch(|buf| {
            encode(value, buf)?;
            Ok(self.send_deadline(buf, deadline)?)
        })
    }
}

impl<S: Sender + ?Sized> ValueSender for S {}

/// Receiving serde values sent by a [`ValueSender`], on every [`Receiver`].
///
/// A message must hold exactly one postcard encoding of a `T`: one that does not decode is
/// [`TypedRecvError::Decode`] (naming `T`, with postcard's error), and one with bytes left over
/// after a whole `T` is [`TypedRecvError::WrongSize`] (likely another type). Either way that
/// message is consumed, and the next call receives the next one. The message is copied out of
/// the channel first (into this thread's scratch buffer), so a value is never decoded from memory
/// another process could still be writing.
///
/// ```
/// use shmpipe::ring::spsc;
/// use shmpipe::typed::{TypedRecvError, ValueReceiver, ValueSender};
///
/// let (mut tx, mut rx) = spsc::channel(16, 64)?;
/// tx.send_value(&(1u8, 2u8))?;
/// tx.send_value(&true)?;
/// // Two bytes are not one bool: the first is, then one is left over.
/// assert!(matches!(rx.try_recv_value::<bool>(), Err(TypedRecvError::WrongSize { .. })));
/// assert!(rx.try_recv_value::<bool>()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub trait ValueReceiver: Receiver {
    /// Receives and decodes a `T` without blocking: `Channel(Empty)` if nothing is there now.
    fn try_recv_value<T: DeserializeOwned>(&mut self) -> Result<T, TypedRecvError<TryRecvError>> {
        with_scratch(|buf| {
            self.try_recv(buf)?;
            decode(buf)
        })
    }

    /// Receives and decodes a `T`, waiting while the channel is empty.
    fn recv_value<T: DeserializeOwned>(&mut self) -> Result<T, TypedRecvError<RecvError>> {
        with_scratch(|buf| {
            self.recv(buf)?;
            decode(buf)
        })
    }

    /// Receives and decodes a `T`, waiting at most `timeout`.
    fn recv_value_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, TypedRecvError<RecvTimeoutError>> {
        self.recv_value_deadline(Instant::now().checked_add(timeout))
    }

    /// Receives and decodes a `T`, waiting until `deadline` (`None`: for ever).
    fn recv_value_deadline<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<T, TypedRecvError<RecvTimeoutError>> {
        with_scratch(|buf| {
            self.recv_deadline(buf, deadline)?;
            decode(buf)
        })
    }
}

impl<R: Receiver + ?Sized> ValueReceiver for R {}

/// Appends postcard's output to a `Vec` it borrows (`to_extend` takes its writer by value).
struct Sink<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Sink<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// Encodes `value` into `buf` (empty).
fn encode<T: Serialize + ?Sized, E>(value: &T, buf: &mut Vec<u8>) -> Result<(), TypedSendError<E>> {
    postcard::to_extend(value, Sink(buf))
        .map(drop)
        .map_err(|error| TypedSendError::Encode {
            type_name: type_name::<T>(),
            error,
        })
}

/// `msg` decoded as a whole `T`.
fn decode<T: DeserializeOwned, E>(msg: &[u8]) -> Result<T, TypedRecvError<E>> {
    match postcard::take_from_bytes::<T>(msg) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(TypedRecvError::WrongSize {
            type_name: type_name::<T>(),
            expected: msg.len() - rest.len(),
            got: msg.len(),
        }),
        Err(error) => Err(TypedRecvError::Decode {
            type_name: type_name::<T>(),
            len: msg.len(),
            error,
        }),
    }
}
