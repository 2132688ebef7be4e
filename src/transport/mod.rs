//! Transports: each turns an address into a [`Sender`](crate::Sender) / [`Receiver`](crate::Receiver).

#[cfg(not(loom))]
pub mod msgq;
#[cfg(not(loom))]
pub mod shm;
#[cfg(not(loom))]
pub mod socket;
#[cfg(not(loom))]
pub(crate) mod sysv;
#[cfg(all(feature = "zenoh", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "zenoh")))]
pub mod zenoh;
