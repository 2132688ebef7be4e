//! Plain-old-data values as their own bytes (feature `bytemuck`).

use super::{with_scratch, TypedRecvError};
use crate::error::*;
use crate::ring::{broadcast, mpmc, spsc};
use crate::{Receiver, Sender};
use bytemuck::{AnyBitPattern, NoUninit};
use std::any::type_name;
use std::fmt;
use std::mem::size_of;
use std::ops::Deref;
use std::time::{Duration, Instant};

/// Sending plain-old-data values as their own bytes, on every [`Sender`].
///
/// `send_pod(&v)` sends exactly the `size_of::<T>()` bytes of `v`, as they are in memory
/// ([`bytemuck::bytes_of`]): no encoding, and no copy but the transport's own (on a ring, straight
/// from `v` into the slot). `T` is any [`NoUninit`] type (every [`Pod`](bytemuck::Pod) type, and
/// also `bool`, `char` or fieldless `#[repr(u8)]` enums deriving `NoUninit`): bytes without
/// padding, which could leak whatever was in memory. For a struct, use `#[repr(C)]` and make
/// padding an explicit field. The receiver must read the same layout
/// ([`PodReceiver::recv_pod`]): same type, same endianness.
///
/// Errors are those of the byte forms; a `T` larger than the channel's maximum message is
/// `TooLarge`.
///
/// ```
/// use bytemuck::{Pod, Zeroable};
/// use shmpipe::ring::spsc;
/// use shmpipe::typed::{PodReceiver, PodSender};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[repr(C)]
/// struct Quote {
///     price: u64,
///     qty: u32,
///     venue: u16,
///     _pad: [u8; 2], // padding made explicit: 16 bytes, no uninitialised ones
/// }
///
/// let (mut tx, mut rx) = spsc::channel(16, 64)?;
/// let q = Quote { price: 42_000, qty: 100, venue: 3, _pad: [0; 2] };
/// tx.send_pod(&q)?;
/// tx.try_send_pod(&7u32)?;
/// assert_eq!(rx.recv_pod::<Quote>()?, q);
/// assert_eq!(rx.try_recv_pod::<u32>()?, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "bytemuck")))]
pub trait PodSender: Sender {
    /// Sends `value`'s bytes without blocking: `Full` if there is no room now.
    fn try_send_pod<T: NoUninit>(&mut self, value: &T) -> Result<(), TrySendError> {
        self.try_send(bytemuck::bytes_of(value))
    }

    /// Sends `value`'s bytes, waiting while the channel is full.
    fn send_pod<T: NoUninit>(&mut self, value: &T) -> Result<(), SendError> {
        self.send(bytemuck::bytes_of(value))
    }

    /// Sends `value`'s bytes, waiting at most `timeout` for room.
    fn send_pod_timeout<T: NoUninit>(
        &mut self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        self.send_timeout(bytemuck::bytes_of(value), timeout)
    }

    /// Sends `value`'s bytes, waiting for room until `deadline` (`None`: for ever).
    fn send_pod_deadline<T: NoUninit>(
        &mut self,
        value: &T,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError> {
        self.send_deadline(bytemuck::bytes_of(value), deadline)
    }
}

impl<S: Sender + ?Sized> PodSender for S {}

/// Receiving plain-old-data values sent as their own bytes, on every [`Receiver`].
///
/// `recv_pod::<T>()` receives a message and, if it is exactly `size_of::<T>()` bytes long,
/// returns it as a `T` (copied out with [`bytemuck::pod_read_unaligned`], so the message's
/// alignment does not matter). `T` is any [`AnyBitPattern`] type (every
/// [`Pod`](bytemuck::Pod) type): one that every byte pattern is a valid value of, since the
/// bytes come from another process. A message of any other length is
/// [`TypedRecvError::WrongSize`], naming `T` and both lengths; that message is consumed, and
/// the next call receives the next one.
///
/// On the SPSC and MPMC rings, [`spsc::Consumer::try_recv_pod_ref`] and
/// [`mpmc::Consumer::try_recv_pod_ref`] read the value in place instead.
///
/// ```
/// use shmpipe::ring::spsc;
/// use shmpipe::typed::{PodReceiver, PodSender, TypedRecvError};
/// use shmpipe::{Sender, TryRecvError};
///
/// let (mut tx, mut rx) = spsc::channel(16, 64)?;
/// tx.send(b"abc")?;                   // not a u64
/// tx.send_pod(&42u64)?;
/// match rx.try_recv_pod::<u64>() {
///     Err(TypedRecvError::WrongSize { type_name: "u64", expected: 8, got: 3 }) => {}
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(rx.try_recv_pod::<u64>()?, 42);  // the next message is still there
/// assert_eq!(rx.try_recv_pod::<u64>(), Err(TypedRecvError::Channel(TryRecvError::Empty)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "bytemuck")))]
pub trait PodReceiver: Receiver {
    /// Receives a `T` without blocking: `Channel(Empty)` if nothing is there now.
    fn try_recv_pod<T: AnyBitPattern>(&mut self) -> Result<T, TypedRecvError<TryRecvError>> {
        with_scratch(|buf| {
            self.try_recv(buf)?;
            read_pod(buf)
        })
    }

    /// Receives a `T`, waiting while the channel is empty.
    fn recv_pod<T: AnyBitPattern>(&mut self) -> Result<T, TypedRecvError<RecvError>> {
        with_scratch(|buf| {
            self.recv(buf)?;
            read_pod(buf)
        })
    }

    /// Receives a `T`, waiting at most `timeout`.
    fn recv_pod_timeout<T: AnyBitPattern>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, TypedRecvError<RecvTimeoutError>> {
        self.recv_pod_deadline(Instant::now().checked_add(timeout))
    }

    /// Receives a `T`, waiting until `deadline` (`None`: for ever).
    fn recv_pod_deadline<T: AnyBitPattern>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<T, TypedRecvError<RecvTimeoutError>> {
        with_scratch(|buf| {
            self.recv_deadline(buf, deadline)?;
            read_pod(buf)
        })
    }
}

impl<R: Receiver + ?Sized> PodReceiver for R {}

/// The error for a message of `got` bytes received for a `T`.
fn wrong_size<T, E>(got: usize) -> TypedRecvError<E> {
    TypedRecvError::WrongSize {
        type_name: type_name::<T>(),
        expected: size_of::<T>(),
        got,
    }
}

/// `msg` as a `T`, whatever its alignment, if it is exactly a `T` long.
fn read_pod<T: AnyBitPattern, E>(msg: &[u8]) -> Result<T, TypedRecvError<E>> {
    bytemuck::try_pod_read_unaligned(msg).map_err(|_| wrong_size::<T, E>(msg.len()))
}

/// A plain-old-data value received in place from a shared-memory ring: derefs to `&T`; the
/// message's room is freed when it drops (as with the byte guard `G` it holds, which it gets
/// from [`spsc::Consumer::try_recv_pod_ref`], [`mpmc::Consumer::try_recv_pod_ref`] or
/// [`broadcast::Subscriber::try_recv_pod_ref`]; a broadcast subscriber lends the message in
/// place only where its slot cannot be overwritten, else a copy: see
/// [`broadcast::Subscriber::try_recv_ref`]).
///
/// # Alignment
/// A `T` is lent in place when the message's bytes are aligned for it. Ring payloads start on
/// 8-byte boundaries, so every type aligned to at most 8 (on x86-64 every struct of integers
/// up to `u64`, floats and arrays of them) is always read in place. A more strictly aligned type
/// (containing `u128` or SIMD types, or `#[repr(align(16))]`) is in place only when its slot
/// happens to be aligned for it; otherwise the guard holds a copy (made with
/// [`bytemuck::pod_read_unaligned`]) and derefs to that, still holding the message until it
/// drops. [`is_in_place`](Self::is_in_place) tells which. Never a misaligned reference, and never
/// an error for alignment.
///
/// # Trust
/// In place, the `T` is the shared segment itself, with the same caveat as the byte guards: no
/// cooperating process writes it while the guard lives, but a process that can write the
/// segment without following the protocol could change it as you read it (every value it could
/// make is still a valid `T`). With such peers copy it out (`*guard`) before deciding anything,
/// or use [`PodReceiver::recv_pod`]. See the README's "Trust model".
///
/// ```
/// use shmpipe::ring::spsc;
/// use shmpipe::typed::PodSender;
///
/// let (mut tx, mut rx) = spsc::channel(16, 64)?;
/// tx.send_pod(&[1u64, 2, 3])?;
/// let v = rx.try_recv_pod_ref::<[u64; 3]>()?;
/// assert!(v.is_in_place());              // 8-byte alignment: always in place on a ring
/// assert_eq!(v.iter().sum::<u64>(), 6);  // read straight from the ring's memory
/// drop(v);                               // frees the message's room
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "bytemuck")))]
pub struct PodRef<G, T> {
    /// The byte guard, whose bytes are exactly a `T` long and do not move while it lives.
    guard: G,
    /// `None`: the guard's bytes are aligned for `T`, which is read in place. `Some`: they were
    /// not, and this is their copy.
    copy: Option<T>,
}

impl<G: Deref<Target = [u8]>, T: AnyBitPattern> PodRef<G, T> {
    /// Wraps a received message's guard, checking its length and noting its alignment. A
    /// message of the wrong length is dropped with its guard (consumed).
    fn new<E>(guard: G) -> Result<Self, TypedRecvError<E>> {
        let bytes: &[u8] = &guard;
        if bytes.len() != size_of::<T>() {
            return Err(wrong_size::<T, E>(bytes.len()));
        }
        let copy = if bytes.as_ptr().cast::<T>().is_aligned() {
            None
        } else {
            Some(read_pod::<T, E>(bytes)?)
        };
        Ok(PodRef { guard, copy })
    }
}

impl<G, T> PodRef<G, T> {
    /// Whether the value is read in place from the guard's bytes (true unless `T` is aligned to
    /// more than 8 bytes and those bytes are not aligned for it: then it is a copy). The bytes
    /// are the ring's memory, except from a broadcast subscriber that could not lend the slot
    /// itself ([`broadcast::ReadGuard::is_in_place`]).
    pub fn is_in_place(&self) -> bool {
        self.copy.is_none()
    }
}

impl<G: Deref<Target = [u8]>, T: AnyBitPattern> Deref for PodRef<G, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match &self.copy {
            Some(copy) => copy,
            // Checked in `new`: the guard's bytes, which are the same on every deref of it (an
            // address and a length fixed when it was made), are a `T` long and aligned for it.
            // `from_bytes` checks both again (two comparisons) and cannot fail here.
            None => bytemuck::from_bytes(&self.guard),
        }
    }
}

impl<G: Deref<Target = [u8]>, T: AnyBitPattern + fmt::Debug> fmt::Debug for PodRef<G, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodRef")
            .field("value", &**self)
            .field("in_place", &self.is_in_place())
            .finish()
    }
}

/// The in-place `recv_pod` forms of a ring's receiving end `$end`, whose byte guard is `$guard`.
macro_rules! pod_ref_methods {
    ($end:ty, $guard:ident, $ring:literal, $make:literal) => {
        /// Plain-old-data values read in place (feature `bytemuck`).
        impl $end {
            /// Borrows the next message as a `T` (see [`PodRef`]), without blocking:
            /// `Channel(Empty)` if nothing is there now. A message that is not
            /// `size_of::<T>()` bytes long is [`TypedRecvError::WrongSize`] and consumed.
            ///
            /// ```
            #[doc = concat!("use shmpipe::ring::", $ring, ";")]
            /// use shmpipe::typed::PodSender;
            ///
            #[doc = concat!("let (mut tx, mut rx) = ", $make, "?;")]
            /// tx.send_pod(&[1u32, 2])?;
            /// assert_eq!(*rx.try_recv_pod_ref::<[u32; 2]>()?, [1, 2]);
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            #[cfg_attr(docsrs, doc(cfg(feature = "bytemuck")))]
            pub fn try_recv_pod_ref<T: AnyBitPattern>(
                &mut self,
            ) -> Result<PodRef<$guard<'_>, T>, TypedRecvError<TryRecvError>> {
                PodRef::new(self.try_recv_ref()?)
            }

            /// Borrows the next message as a `T`, waiting while there is none; see
            /// [`try_recv_pod_ref`](Self::try_recv_pod_ref).
            #[cfg_attr(docsrs, doc(cfg(feature = "bytemuck")))]
            pub fn recv_pod_ref<T: AnyBitPattern>(
                &mut self,
            ) -> Result<PodRef<$guard<'_>, T>, TypedRecvError<RecvError>> {
                PodRef::new(self.recv_ref()?)
            }

            /// Borrows the next message as a `T`, waiting at most `timeout`; see
            /// [`try_recv_pod_ref`](Self::try_recv_pod_ref).
            #[cfg_attr(docsrs, doc(cfg(feature = "bytemuck")))]
            pub fn recv_pod_ref_timeout<T: AnyBitPattern>(
                &mut self,
                timeout: Duration,
            ) -> Result<PodRef<$guard<'_>, T>, TypedRecvError<RecvTimeoutError>> {
                PodRef::new(self.recv_ref_timeout(timeout)?)
            }
        }
    };
}

use broadcast::ReadGuard as BroadcastGuard;
use mpmc::ReadGuard as MpmcGuard;
use spsc::ReadGuard as SpscGuard;
pod_ref_methods!(spsc::Consumer, SpscGuard, "spsc", "spsc::channel(16, 64)");
pod_ref_methods!(mpmc::Consumer, MpmcGuard, "mpmc", "mpmc::channel(16, 64)");
pod_ref_methods!(
    broadcast::Subscriber,
    BroadcastGuard,
    "broadcast",
    "broadcast::channel(16, 64, broadcast::Overflow::Block)"
);
