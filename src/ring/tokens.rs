//! Liveness that the kernel keeps: how a ring tells a member that died from one that is alive,
//! whatever PID namespace either lives in, and whatever a forked child does.
//!
//! A ring in a segment has a System V semaphore set of its own (its id is in the header):
//! semaphore 0 is the ring's lock, semaphore `1 + i` is the *token* of member record `i` (SPSC:
//! record 0 the sender, 1 the receiver). A process takes a record's token (`+1` with `SEM_UNDO`)
//! before it publishes the record, and gives it back after it vacates it; the kernel gives back
//! the tokens and the lock of a process that exits without doing so (see `sys::sem`). So a
//! record whose holder's token is 0 belongs to a dead process, and nothing else is: no pid, no
//! `/proc`, nothing a PID namespace hides. A forked child inherits no token, so it can neither
//! keep its parent's records alive nor give them back.
//!
//! Rings on the heap (in-process channels) and under loom have every member in this process:
//! [`Tokens::Local`], every member alive, and the ring's lock word in the control block.

use super::Role;

/// How the members of a ring are known to be alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tokens {
    /// Every member is in this process (heap rings, loom models).
    Local,
    /// The ring's semaphore set.
    #[cfg(not(loom))]
    Kernel(crate::sys::sem::SemId),
}

/// The semaphore that is the ring's lock.
pub(crate) const LOCK_SEM: usize = 0;

/// Semaphores in the set of a ring with `records` member records: the lock and one token each.
pub(crate) const fn set_size(records: usize) -> usize {
    1 + records
}

/// The record an SPSC role's token belongs to.
pub(crate) const fn spsc_record(role: Role) -> usize {
    match role {
        Role::Sender => 0,
        Role::Receiver => 1,
    }
}

impl Tokens {
    /// Takes record `record`'s token for this process. Call before publishing the record.
    pub(crate) fn take(self, record: usize) -> Result<(), crate::Error> {
        match self {
            Tokens::Local => Ok(()),
            #[cfg(not(loom))]
            Tokens::Kernel(set) => {
                crate::sys::sem::adjust(set, 1 + record, 1).map_err(|e| match e.raw_os_error() {
                    Some(libc::ERANGE) => crate::Error::Limit(format!(
                        "liveness token {record} of the ring is at the kernel's maximum (32767): \
                     something other than shmpipe is adjusting its semaphore set"
                    )),
                    _ => crate::transport::sysv::io_err("semop (take a liveness token)")(e),
                })
            }
        }
    }

    /// Gives record `record`'s token back. Call after vacating the record. Best effort: a set
    /// removed with its ring has nothing left to give back to.
    pub(crate) fn give_back(self, record: usize) {
        match self {
            Tokens::Local => {}
            #[cfg(not(loom))]
            Tokens::Kernel(set) => {
                let _ = crate::sys::sem::adjust(set, 1 + record, -1);
            }
        }
    }

    /// Whether some live process holds record `record`'s token (one syscall). `None` when the set
    /// is gone (removed with its ring by `rm --force` or `ipcrm -s` while we still use it): then
    /// the caller falls back to the holder's pid, which is right within one PID namespace. When
    /// the kernel cannot say for another reason (we may not read the set), the answer is "alive":
    /// a false "alive" costs a timeout, a false "dead" would lose messages.
    pub(crate) fn held(self, record: usize) -> Option<bool> {
        match self {
            Tokens::Local => Some(true),
            #[cfg(not(loom))]
            Tokens::Kernel(set) => match crate::sys::sem::value(set, 1 + record) {
                Ok(n) => Some(n > 0),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIDRM | libc::EINVAL)) => None,
                Err(_) => Some(true),
            },
        }
    }
}

/// Records the process an end is opened in (see `sys::fork`).
#[inline]
pub(crate) fn owner() -> u32 {
    #[cfg(not(loom))]
    return crate::sys::fork::arm();
    #[cfg(loom)]
    0
}

/// Whether an end recorded by [`owner`] is used in a process forked from its owner.
#[inline(always)]
pub(crate) fn inherited(owner: u32) -> bool {
    #[cfg(not(loom))]
    return crate::sys::fork::generation() != owner;
    #[cfg(loom)]
    {
        let _ = owner;
        false
    }
}
