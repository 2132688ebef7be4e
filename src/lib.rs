//! Fast, crash-safe message passing between processes on one Linux machine.
//! (Full crate docs: see README.)
#![cfg_attr(docsrs, feature(doc_cfg))]

mod channel;
#[cfg(not(loom))]
pub mod endpoint;
pub mod error;
pub mod ring;
mod sync;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
pub mod transport;

pub use channel::{Receiver, Sender};
#[cfg(not(loom))]
pub use endpoint::{open_receiver, open_sender};
pub use error::{
    Corrupted, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TooLarge, TryRecvError,
    TrySendError,
};
pub use ring::{Peer, WaitStrategy};
