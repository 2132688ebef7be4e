//! Fast, crash-safe message passing between processes on one Linux machine.
//! (Full crate docs: see README.)
#![cfg_attr(docsrs, feature(doc_cfg))]

mod channel;
pub mod error;
pub mod ring;
mod sync;
#[cfg(not(loom))]
mod sys;

pub use channel::{Receiver, Sender};
pub use error::{
    Corrupted, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TooLarge, TryRecvError,
    TrySendError,
};
pub use ring::WaitStrategy;
