//! Every public error type. Per-operation enums in the style of crossbeam-channel (a `try_` call
//! can say `Full`, a blocking call cannot), plus [`Error`] for opening and configuring.
//!
//! Display messages are short, lowercase and say what happened; the variants carry the numbers.

use std::fmt;
use std::io;

/// A message longer than the channel's maximum. Nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// Length of the rejected message in bytes.
    pub len: usize,
    /// The channel's maximum message length in bytes.
    pub max: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message of {} bytes exceeds the maximum of {} bytes",
            self.len, self.max
        )
    }
}

/// Data from the other side failed validation: another process wrote something no correct peer
/// would (shared-memory indices or lengths, a malformed frame or message type). What was received
/// before it is never lost. A shared-memory ring is poisoned by it (every later call returns it
/// again); a stream transport says in its docs whether it can go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupted {
    /// What was found wrong.
    pub reason: String,
}

impl fmt::Display for Corrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corrupted: {}", self.reason)
    }
}

macro_rules! error_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident $(($inner:ty))? => $msg:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant $(($inner))?),*
        }

        impl fmt::Display for $name {
            #[allow(unused_variables)]
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $(error_enum!(@pat $name $variant $(e $inner)?) => error_enum!(@msg f $msg $(e $inner)?)),*
                }
            }
        }

        impl std::error::Error for $name {}
    };
    (@pat $name:ident $variant:ident $e:ident $inner:ty) => { $name::$variant($e) };
    (@pat $name:ident $variant:ident) => { $name::$variant };
    (@msg $f:ident $msg:literal $e:ident $inner:ty) => {
        if $msg.is_empty() { fmt::Display::fmt($e, $f) } else { write!($f, "{} {}", $msg, $e) }
    };
    (@msg $f:ident $msg:literal) => { $f.write_str($msg) };
}

error_enum! {
    /// Why [`Sender::try_send`](crate::Sender::try_send) failed.
    TrySendError {
        /// The channel is full; try again later.
        Full => "sending on a full channel",
        /// The receiver is gone (closed, or its process died); nothing more will be read.
        Disconnected => "sending on a disconnected channel",
        /// MPMC rings only: this sender was wrongly taken for dead (a false liveness verdict, e.g. its member
        /// record overwritten by another process) while it held its slot, and another member recovered the
        /// slot. The message was not delivered: the slot was skipped, counted in
        /// [`Stats::lost`](crate::ring::mpmc::Stats::lost) by the member that recovered it, and this sender
        /// finding out is counted in [`Stats::robbed`](crate::ring::mpmc::Stats::robbed). Sending it again
        /// cannot duplicate it; the sender stays usable.
        Lost => "message lost: this sender was taken for dead and its slot recovered; nothing was delivered",
        /// The message is longer than the channel allows.
        TooLarge(TooLarge) => "",
        /// The shared state failed validation.
        Corrupted(Corrupted) => "",
        /// This end was inherited across `fork()`: it belongs to the process that opened it,
        /// and a child may only drop it (which detaches, nothing more). Open a new end instead.
        Forked => "end used in a forked child; only the process that opened it may use it",
    }
}

error_enum! {
    /// Why [`Sender::send`](crate::Sender::send) failed.
    SendError {
        /// The receiver is gone (closed, or its process died); nothing more will be read.
        Disconnected => "sending on a disconnected channel",
        /// MPMC rings only: this sender was wrongly taken for dead (a false liveness verdict, e.g. its member
        /// record overwritten by another process) while it held its slot, and another member recovered the
        /// slot. The message was not delivered: the slot was skipped, counted in
        /// [`Stats::lost`](crate::ring::mpmc::Stats::lost) by the member that recovered it, and this sender
        /// finding out is counted in [`Stats::robbed`](crate::ring::mpmc::Stats::robbed). Sending it again
        /// cannot duplicate it; the sender stays usable.
        Lost => "message lost: this sender was taken for dead and its slot recovered; nothing was delivered",
        /// The message is longer than the channel allows.
        TooLarge(TooLarge) => "",
        /// The shared state failed validation.
        Corrupted(Corrupted) => "",
        /// This end was inherited across `fork()`: it belongs to the process that opened it,
        /// and a child may only drop it (which detaches, nothing more). Open a new end instead.
        Forked => "end used in a forked child; only the process that opened it may use it",
    }
}

error_enum! {
    /// Why [`Sender::send_timeout`](crate::Sender::send_timeout) failed.
    SendTimeoutError {
        /// The channel stayed full until the deadline.
        Timeout => "timed out waiting on a full channel",
        /// The receiver is gone (closed, or its process died); nothing more will be read.
        Disconnected => "sending on a disconnected channel",
        /// MPMC rings only: this sender was wrongly taken for dead (a false liveness verdict, e.g. its member
        /// record overwritten by another process) while it held its slot, and another member recovered the
        /// slot. The message was not delivered: the slot was skipped, counted in
        /// [`Stats::lost`](crate::ring::mpmc::Stats::lost) by the member that recovered it, and this sender
        /// finding out is counted in [`Stats::robbed`](crate::ring::mpmc::Stats::robbed). Sending it again
        /// cannot duplicate it; the sender stays usable.
        Lost => "message lost: this sender was taken for dead and its slot recovered; nothing was delivered",
        /// The message is longer than the channel allows.
        TooLarge(TooLarge) => "",
        /// The shared state failed validation.
        Corrupted(Corrupted) => "",
        /// This end was inherited across `fork()`: it belongs to the process that opened it,
        /// and a child may only drop it (which detaches, nothing more). Open a new end instead.
        Forked => "end used in a forked child; only the process that opened it may use it",
    }
}

error_enum! {
    /// Why [`Receiver::try_recv`](crate::Receiver::try_recv) failed.
    TryRecvError {
        /// Nothing to receive now.
        Empty => "receiving on an empty channel",
        /// The sender is gone and everything it sent has been received.
        Disconnected => "receiving on an empty and disconnected channel",
        /// MPMC rings only: this receiver was wrongly taken for dead (a false liveness verdict, e.g. its
        /// member record overwritten by another process) while it was copying a message out, and another
        /// member freed the message's slot (counted in [`Stats::dropped`](crate::ring::mpmc::Stats::dropped);
        /// this receiver finding out in [`Stats::robbed`](crate::ring::mpmc::Stats::robbed)). The message is
        /// not returned: a producer may already have been writing the next one over it. The receiver stays
        /// usable; the next call goes on.
        Lost => "message lost: this receiver was taken for dead and the message it was reading recovered",
        /// Broadcast rings only: this subscriber fell more than a ring behind and skipped ahead to the
        /// oldest message still there; this many messages were never delivered to it (an exact count).
        /// The subscriber stays usable: the next call returns the next message.
        Lagged(u64) => "subscriber lapped by the publisher; messages missed:",
        /// The shared state failed validation.
        Corrupted(Corrupted) => "",
        /// This end was inherited across `fork()`: it belongs to the process that opened it,
        /// and a child may only drop it (which detaches, nothing more). Open a new end instead.
        Forked => "end used in a forked child; only the process that opened it may use it",
    }
}

error_enum! {
    /// Why [`Receiver::recv`](crate::Receiver::recv) failed.
    RecvError {
        /// The sender is gone and everything it sent has been received.
        Disconnected => "receiving on an empty and disconnected channel",
        /// MPMC rings only: this receiver was wrongly taken for dead (a false liveness verdict, e.g. its
        /// member record overwritten by another process) while it was copying a message out, and another
        /// member freed the message's slot (counted in [`Stats::dropped`](crate::ring::mpmc::Stats::dropped);
        /// this receiver finding out in [`Stats::robbed`](crate::ring::mpmc::Stats::robbed)). The message is
        /// not returned: a producer may already have been writing the next one over it. The receiver stays
        /// usable; the next call goes on.
        Lost => "message lost: this receiver was taken for dead and the message it was reading recovered",
        /// Broadcast rings only: this subscriber fell more than a ring behind and skipped ahead to the
        /// oldest message still there; this many messages were never delivered to it (an exact count).
        /// The subscriber stays usable: the next call returns the next message.
        Lagged(u64) => "subscriber lapped by the publisher; messages missed:",
        /// The shared state failed validation.
        Corrupted(Corrupted) => "",
        /// This end was inherited across `fork()`: it belongs to the process that opened it,
        /// and a child may only drop it (which detaches, nothing more). Open a new end instead.
        Forked => "end used in a forked child; only the process that opened it may use it",
    }
}

error_enum! {
    /// Why [`Receiver::recv_timeout`](crate::Receiver::recv_timeout) failed.
    RecvTimeoutError {
        /// Nothing arrived before the deadline.
        Timeout => "timed out waiting on an empty channel",
        /// The sender is gone and everything it sent has been received.
        Disconnected => "receiving on an empty and disconnected channel",
        /// MPMC rings only: this receiver was wrongly taken for dead (a false liveness verdict, e.g. its
        /// member record overwritten by another process) while it was copying a message out, and another
        /// member freed the message's slot (counted in [`Stats::dropped`](crate::ring::mpmc::Stats::dropped);
        /// this receiver finding out in [`Stats::robbed`](crate::ring::mpmc::Stats::robbed)). The message is
        /// not returned: a producer may already have been writing the next one over it. The receiver stays
        /// usable; the next call goes on.
        Lost => "message lost: this receiver was taken for dead and the message it was reading recovered",
        /// Broadcast rings only: this subscriber fell more than a ring behind and skipped ahead to the
        /// oldest message still there; this many messages were never delivered to it (an exact count).
        /// The subscriber stays usable: the next call returns the next message.
        Lagged(u64) => "subscriber lapped by the publisher; messages missed:",
        /// The shared state failed validation.
        Corrupted(Corrupted) => "",
        /// This end was inherited across `fork()`: it belongs to the process that opened it,
        /// and a child may only drop it (which detaches, nothing more). Open a new end instead.
        Forked => "end used in a forked child; only the process that opened it may use it",
    }
}

impl From<SendTimeoutError> for SendError {
    fn from(e: SendTimeoutError) -> Self {
        match e {
            // A send without deadline never times out; Disconnected is the honest fallback.
            SendTimeoutError::Timeout | SendTimeoutError::Disconnected => SendError::Disconnected,
            SendTimeoutError::Lost => SendError::Lost,
            SendTimeoutError::TooLarge(t) => SendError::TooLarge(t),
            SendTimeoutError::Corrupted(c) => SendError::Corrupted(c),
            SendTimeoutError::Forked => SendError::Forked,
        }
    }
}

impl From<TrySendError> for SendTimeoutError {
    fn from(e: TrySendError) -> Self {
        match e {
            TrySendError::Full => SendTimeoutError::Timeout,
            TrySendError::Disconnected => SendTimeoutError::Disconnected,
            TrySendError::Lost => SendTimeoutError::Lost,
            TrySendError::TooLarge(t) => SendTimeoutError::TooLarge(t),
            TrySendError::Corrupted(c) => SendTimeoutError::Corrupted(c),
            TrySendError::Forked => SendTimeoutError::Forked,
        }
    }
}

impl From<RecvTimeoutError> for RecvError {
    fn from(e: RecvTimeoutError) -> Self {
        match e {
            RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected => RecvError::Disconnected,
            RecvTimeoutError::Lost => RecvError::Lost,
            RecvTimeoutError::Lagged(n) => RecvError::Lagged(n),
            RecvTimeoutError::Corrupted(c) => RecvError::Corrupted(c),
            RecvTimeoutError::Forked => RecvError::Forked,
        }
    }
}

impl From<TryRecvError> for RecvTimeoutError {
    fn from(e: TryRecvError) -> Self {
        match e {
            TryRecvError::Empty => RecvTimeoutError::Timeout,
            TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            TryRecvError::Lost => RecvTimeoutError::Lost,
            TryRecvError::Lagged(n) => RecvTimeoutError::Lagged(n),
            TryRecvError::Corrupted(c) => RecvTimeoutError::Corrupted(c),
            TryRecvError::Forked => RecvTimeoutError::Forked,
        }
    }
}

macro_rules! from_corrupted {
    ($($t:ident),*) => {$(
        impl From<Corrupted> for $t {
            fn from(c: Corrupted) -> Self {
                $t::Corrupted(c)
            }
        }
    )*};
}
from_corrupted!(
    TrySendError,
    SendError,
    SendTimeoutError,
    TryRecvError,
    RecvError,
    RecvTimeoutError
);

/// Why opening, creating or configuring a channel failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint string is malformed; the message says what was expected.
    Endpoint(String),
    /// A configuration value is out of range (capacity not a power of two, size zero, ...).
    InvalidConfig(String),
    /// The object at our key was not created by shmpipe for this name: it is never used.
    Foreign {
        /// The SysV key.
        key: i32,
        /// What did not match.
        reason: String,
    },
    /// The channel exists and the role asked for is held by a live process (or the stream is in
    /// a state that cannot take this role now).
    InUse(String),
    /// The object's owner or permissions are not what we accept.
    Permission(String),
    /// A header or other shared state failed validation.
    Corrupted(Corrupted),
    /// A system limit was hit; the message names it.
    Limit(String),
    /// A system call failed.
    Io {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Endpoint(m) => write!(f, "bad endpoint: {m}"),
            Error::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            Error::Foreign { key, reason } => {
                write!(
                    f,
                    "object at key {key:#x} is not shmpipe's for this name ({reason}); refusing to use it"
                )
            }
            Error::InUse(m) => write!(f, "in use: {m}"),
            Error::Permission(m) => write!(f, "permission refused: {m}"),
            Error::Corrupted(c) => fmt::Display::fmt(c, f),
            Error::Limit(m) => write!(f, "system limit: {m}"),
            Error::Io { op, source } => write!(f, "{op} failed: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Corrupted> for Error {
    fn from(c: Corrupted) -> Self {
        Error::Corrupted(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_messages_are_short_and_specific() {
        assert_eq!(TrySendError::Full.to_string(), "sending on a full channel");
        assert_eq!(
            SendError::TooLarge(TooLarge { len: 10, max: 4 }).to_string(),
            "message of 10 bytes exceeds the maximum of 4 bytes"
        );
        let c = Corrupted {
            reason: "tail ran ahead".into(),
        };
        assert_eq!(RecvError::Corrupted(c).to_string(), "corrupted: tail ran ahead");
        assert_eq!(
            RecvTimeoutError::Timeout.to_string(),
            "timed out waiting on an empty channel"
        );
    }
}
