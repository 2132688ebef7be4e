//! The socket calls std does not offer: `poll(2)` against an absolute deadline, `sendmsg(2)` with
//! `MSG_NOSIGNAL`, and a liveness probe of a Unix socket path made from a recognisable address.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

pub(crate) use libc::{POLLIN, POLLOUT};

/// Waits until `fd` reports one of `events` (or an error or hangup, which poll always reports),
/// or until `deadline` (`None`: for ever). Returns the reported events, or `None` once the
/// deadline has passed. The timeout is rounded up to whole milliseconds, so this never returns
/// `None` early; `EINTR` and early wakeups poll again for the time left to the same deadline.
pub(crate) fn poll_until(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> io::Result<Option<libc::c_short>> {
    loop {
        let timeout_ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ms = left.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd that outlives the call, and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n > 0 {
            return Ok(Some(pfd.revents));
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}

/// `sendmsg(fd, bufs, MSG_NOSIGNAL | MSG_DONTWAIT)`: writes what the socket takes now, never
/// blocks, and reports a closed peer as `EPIPE` instead of raising `SIGPIPE` (whatever the
/// process's SIGPIPE disposition). Retries `EINTR`.
pub(crate) fn send_nosignal(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data (pointers and integers); all-zero is a valid, empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is documented to be ABI-compatible with `struct iovec` on Unix.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    msg.msg_iovlen = bufs.len() as _;
    loop {
        // SAFETY: `msg` points at `bufs.len()` iovecs borrowed for the duration of the call, with
        // no name and no control data; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A `sockaddr_un` holding `path` (abstract if it starts with a NUL byte), and its length.
fn sockaddr_un(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value (and NUL-terminates the path).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Keep one byte for the terminating NUL of a pathname.
    if path.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    let offset = std::mem::size_of::<libc::sockaddr_un>() - addr.sun_path.len();
    Ok((addr, (offset + path.len()) as libc::socklen_t))
}

/// Connects to the Unix socket at `path` from a socket bound to the abstract address `tag`
/// (without its leading NUL), then closes. A shmpipe listener recognises such a peer by its
/// address and discards it instead of taking it for its one connection. Non-blocking: a live
/// listener whose backlog is full answers `EAGAIN`, which is an error here too.
pub(crate) fn probe_unix(path: &Path, tag: &[u8]) -> io::Result<()> {
    // SAFETY: socket takes only scalar arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor socket just returned to us and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut local_name = Vec::with_capacity(tag.len() + 1);
    local_name.push(0);
    local_name.extend_from_slice(tag);
    let (local, local_len) = sockaddr_un(&local_name)?;
    // SAFETY: `local` is an initialised sockaddr_un and `local_len` is within its size.
    let ret = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            std::ptr::addr_of!(local).cast::<libc::sockaddr>(),
            local_len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let (remote, remote_len) = sockaddr_un(path.as_os_str().as_bytes())?;
    // SAFETY: `remote` is an initialised, NUL-terminated sockaddr_un and `remote_len` is within
    // its size.
    let ret = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            std::ptr::addr_of!(remote).cast::<libc::sockaddr>(),
            remote_len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    extern "C" fn do_nothing(_: libc::c_int) {}

    #[test]
    fn poll_keeps_its_absolute_deadline_through_signals() {
        // SAFETY: installs, for SIGUSR1 (which nothing else in this test process uses), a handler
        // that does nothing and so is async-signal-safe; `sa` is fully initialised (zeroed, then
        // an empty mask). Without SA_RESTART, and poll is never restarted anyway: it sees EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = do_nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
        let (a, _b) = UnixStream::pair().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Duration::from_millis(300);
        let poller = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            let start = Instant::now();
            let r = poll_until(a.as_fd(), POLLIN, Some(start + t)).unwrap();
            (r, start.elapsed())
        });
        let thread = rx.recv().unwrap();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: the thread is not joined until after the last signal, so its id is valid.
            unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        }
        let (r, took) = poller.join().unwrap();
        assert_eq!(r, None);
        assert!(took >= t && took < t + Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn ready_and_past_deadlines() {
        let (a, mut b) = UnixStream::pair().unwrap();
        // A deadline already past still reports what is ready, and times out at once otherwise.
        assert_eq!(poll_until(a.as_fd(), POLLIN, Some(Instant::now())).unwrap(), None);
        std::io::Write::write_all(&mut b, b"x").unwrap();
        let r = poll_until(a.as_fd(), POLLIN, Some(Instant::now())).unwrap();
        assert!(r.is_some_and(|ev| ev & POLLIN != 0));
        // A closed peer: writing gives EPIPE, never SIGPIPE.
        drop(b);
        let e = send_nosignal(a.as_fd(), &[IoSlice::new(b"y")]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
