//! What the two System V transports (`shm`, `msgq`) share: how an existing object's owner and
//! permissions are judged before any byte of it is trusted, and how `errno`s are named.

use crate::error::Error;
use crate::sys::proc;
use std::io;

/// The ownership facts `IPC_STAT` gives for any SysV object.
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) cuid: u32,
    pub(crate) mode: u32,
}

/// Refuses an object owned (or created) by another uid unless `allow_other_owner`, and one whose
/// mode lets others write beyond `requested_mode` (a squatter pre-creating our key 0666 could
/// otherwise feed us anything). `what` names the object in the message.
pub(crate) fn check_owner(
    what: &str,
    st: &Owner,
    requested_mode: u32,
    allow_other_owner: bool,
) -> Result<(), Error> {
    let me = proc::euid();
    if !allow_other_owner && (st.uid != me || st.cuid != me) {
        return Err(Error::Permission(format!(
            "{what} is owned by uid {} (created by uid {}), we are uid {me}; \
             set allow_other_owner to accept it",
            st.uid, st.cuid
        )));
    }
    if st.mode & 0o022 & !requested_mode != 0 {
        return Err(Error::Permission(format!(
            "{what} has mode {:#o}, which lets others write beyond the requested {requested_mode:#o}",
            st.mode & 0o777
        )));
    }
    Ok(())
}

/// The object was removed (or never existed) between two of our calls: look again.
pub(crate) fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EIDRM) | Some(libc::ENOENT)
    )
}

/// Names a failed call; permission errors become `Error::Permission`.
pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| match source.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Error::Permission(format!(
            "{op}: {source} (the object belongs to another user or mode)"
        )),
        _ => Error::Io { op, source },
    }
}
