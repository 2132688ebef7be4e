//! Stream-socket transports: Unix-domain (`unix:///path/to.sock`) and TCP (`tcp://HOST:PORT`).
//!
//! Slower than shared memory (every message is copied through the kernel, a syscall per send and
//! per batch of receives), but the peer may be on another machine or written in any language.
//!
//! # Wire format
//!
//! A stream of frames, nothing else: no handshake, no version, no trailer. Each frame is
//!
//! ```text
//! +----------------------------+-----------------------+
//! | length: u32, little-endian | payload: length bytes |
//! +----------------------------+-----------------------+
//! ```
//!
//! so `b"hi"` is `02 00 00 00 68 69` and an empty message is `00 00 00 00`. The stream ends with
//! a clean close after the last frame. A peer in Python 3, stdlib only:
//!
//! ```text
//! import socket, struct
//! s = socket.create_connection(("127.0.0.1", 8080))   # or AF_UNIX and s.connect(path)
//! def send_msg(payload):
//!     s.sendall(struct.pack("<I", len(payload)) + payload)
//! def recv_exact(n):
//!     b = b""
//!     while len(b) < n:
//!         c = s.recv(n - len(b))
//!         if not c: raise EOFError("stream closed")
//!         b += c
//!     return b
//! def recv_msg():
//!     return recv_exact(struct.unpack("<I", recv_exact(4))[0])
//! ```
//!
//! # Who listens
//!
//! By default the **receiver listens** (binds, then accepts exactly one connection) and the
//! **sender connects**; the endpoint option `listen=sender` ([`Listen::Sender`]) swaps them. The
//! connecting side retries a refused or not-yet-existing address with backoff (1 ms doubling to
//! 100 ms) for up to `connect_timeout` (default 10 s, option `connect_timeout_ms`), so either side
//! may start first. Opening the listening side never waits: it binds and returns, and accepts
//! its peer lazily, so until the peer has connected a listening receiver's `try_recv` says
//! `Empty` and a listening sender's `try_send` says `Full` (their blocking forms wait for it).
//! Once it has its peer, the listener stops listening (a Unix listener removes its socket file
//! first): a second connector is refused, and retries until its `connect_timeout`. (One attempt
//! to a foreign Unix listener whose accept queue is full can block past `connect_timeout`; a
//! shmpipe listener's queue does not fill in normal use.)
//!
//! # Semantics
//!
//! - **Order**: frames arrive in order, each once, as TCP and Unix stream sockets guarantee.
//! - **`try_send` never blocks.** Each frame is written with one non-blocking (`MSG_DONTWAIT`)
//!   call: a frame of up to 4 KiB is copied behind its header and written with `send`, a larger
//!   one in place with a two-part `sendmsg`. A frame the kernel took only part of is *accepted*:
//!   its remainder is kept (at most one frame's) and written first by the next call, by
//!   [`SocketSender::flush_deadline`], or when the sender drops (waiting at most
//!   `close_timeout`, default 1 s). While a remainder cannot be written, `try_send` returns
//!   `Full` and accepts nothing. The blocking forms also push out the remainder of the frame they
//!   wrote before returning (when the deadline passes first, the frame is still accepted and `Ok`
//!   is returned).
//! - **`try_recv`** reads whatever the socket has (one non-blocking `recv`) into a reusable buffer
//!   and returns one complete frame, or `Empty`. Frames already in the buffer cost no syscall.
//! - **Waiting** costs what it costs a plain blocking socket where it can: the socket itself is in
//!   blocking mode, and `send`/`recv` without a deadline make one blocking call, which the kernel
//!   returns from when there is room or data. A receive with a deadline at least 100 ms away
//!   waits in a blocking `recv` bounded by the socket's read timeout (`SO_RCVTIMEO`, set to end
//!   at least 25 ms before the deadline, and reset only when it no longer fits, so a loop of
//!   `recv_timeout(same)` sets it once); the rest of the way, shorter deadlines, sends with a
//!   deadline and a listening end waiting for its peer use `poll(2)`, to the millisecond.
//! - **Size**: a message over the sender's `max_message` (default 1 MiB) is `TooLarge` and
//!   nothing is written. A receiver reading a length over *its* `max_message` returns
//!   `Corrupted("frame of N bytes exceeds the maximum of M bytes")` after delivering every frame
//!   before it, closes the connection, and returns `Disconnected` from then on. Give both sides
//!   the same maximum; the receiver's bounds its memory (its buffer grows to the largest frame).
//! - **End of stream**: a clean close between frames lets the receiver drain everything, then
//!   returns `Disconnected`. A close in the middle of a frame is
//!   `Corrupted("truncated frame: ...")` once, then `Disconnected`. A reset connection
//!   (`ECONNRESET`) delivers the complete frames already received, then `Disconnected`. A peer
//!   killed by a signal is a close done by its kernel: noticed at once.
//! - **A closed receiver** makes a send fail with `Disconnected` (`EPIPE`/`ECONNRESET`). On a Unix
//!   socket that is the next send; on TCP a send or two may still be accepted into the kernel
//!   and lost, until the peer's reset arrives. Every write error is `Disconnected`.
//! - **SIGPIPE**: every write is `sendmsg(..., MSG_NOSIGNAL)`, so writing to a closed peer returns
//!   `EPIPE` and never raises `SIGPIPE`, whatever the process's disposition for it; nothing here
//!   relies on the Rust runtime having set SIGPIPE to ignored.
//! - **TCP** connections have `TCP_NODELAY` set on both ends. There is no authentication: bind
//!   TCP to loopback unless the network is trusted.
//!
//! # Unix socket files
//!
//! The listener's socket file has mode 0600 from the moment it can be reached: it is bound
//! inside a fresh 0700 directory next to the target, chmod-ed there, then hard-linked into place
//! (see the `unix` module source). A socket file left by a crashed run is *stale*: a connect to it
//! is refused, so it is removed and replaced. A file someone is listening on is never touched
//! (`Error::InUse`), nor is anything that is not a socket. The listener removes its file when it
//! accepts its peer or is dropped (only if the file is still its own). A listener killed by
//! SIGKILL leaves its file behind, stale, for the next listener to replace; one killed in the
//! microseconds between `bind` and `link` also leaves an empty `.spXXXXXXXX` directory.
//! Paths must be absolute and at most 107 bytes, and the parent directory must allow hard links
//! and the creation of a directory (the staged path, `PARENT/.spXXXXXXXX/s`, must also fit).

#[cfg(all(feature = "tokio", not(loom)))]
mod aio;
mod frame;
mod unix;

use crate::channel::{Receiver, Sender};
use crate::error::*;
use crate::sys::socket::{self as sys, POLLIN, POLLOUT};
use frame::{FrameReader, FrameWriter};
use std::fmt;
use std::io::{self, IoSlice, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use unix::UnixListenerFile;

/// Default largest message, in bytes (1 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Largest `max_message` the wire format can carry (the length prefix is a `u32`).
pub const MAX_MESSAGE_LIMIT: usize = u32::MAX as usize;
/// Default time the connecting side keeps retrying.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a dropped sender spends writing the remainder of a partly written frame.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a socket channel lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketAddress {
    /// `unix:///path/to.sock`: an absolute path of at most 107 bytes.
    Unix(PathBuf),
    /// `tcp://HOST:PORT`: a host name or IP address (IPv6 in brackets in the endpoint) and a
    /// non-zero port.
    Tcp {
        /// Host name or IP address, without brackets.
        host: String,
        /// Port, not 0.
        port: u16,
    },
}

impl fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketAddress::Unix(p) => write!(f, "unix://{}", p.display()),
            SocketAddress::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            SocketAddress::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

impl SocketAddress {
    /// Parses the part of an endpoint after `unix://` or `tcp://` (`scheme` is `unix` or `tcp`).
    ///
    /// ```
    /// use shmpipe::transport::socket::SocketAddress;
    /// assert_eq!(
    ///     SocketAddress::parse("tcp", "[::1]:9000").unwrap(),
    ///     SocketAddress::Tcp { host: "::1".into(), port: 9000 }
    /// );
    /// assert!(SocketAddress::parse("tcp", "127.0.0.1").is_err());
    /// assert!(SocketAddress::parse("unix", "relative/path").is_err());
    /// ```
    pub fn parse(scheme: &str, addr: &str) -> Result<Self, Error> {
        match scheme {
            "unix" => {
                let path = Path::new(addr);
                check_unix_path(path).map_err(Error::Endpoint)?;
                Ok(SocketAddress::Unix(path.to_owned()))
            }
            "tcp" => parse_tcp(addr),
            _ => Err(Error::Endpoint(format!(
                "unsupported socket scheme {scheme:?}; expected unix or tcp"
            ))),
        }
    }
}

fn check_unix_path(path: &Path) -> Result<(), String> {
    let s = path.as_os_str();
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!(
            "unix socket path {shown:?} is not absolute; expected unix:///path/to.sock"
        ));
    }
    if path.file_name().is_none() || s.as_encoded_bytes().ends_with(b"/") {
        return Err(format!(
            "unix socket path {shown:?} names no file; expected unix:///path/to.sock"
        ));
    }
    if s.as_encoded_bytes().contains(&0) {
        return Err(format!("unix socket path {shown:?} contains a NUL byte"));
    }
    if s.len() > unix::MAX_PATH {
        return Err(format!(
            "unix socket path {shown:?} is {} bytes; the limit is {}",
            s.len(),
            unix::MAX_PATH
        ));
    }
    Ok(())
}

fn parse_tcp(addr: &str) -> Result<SocketAddress, Error> {
    let expected = || {
        Error::Endpoint(format!(
            "tcp://{addr}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:8080 or tcp://[::1]:9000"
        ))
    };
    let (host, port) = match addr.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(expected)?;
            (host, after.strip_prefix(':').ok_or_else(expected)?)
        }
        None => {
            let (host, port) = addr.rsplit_once(':').ok_or_else(expected)?;
            if host.contains(':') {
                return Err(Error::Endpoint(format!(
                    "tcp://{addr}: an IPv6 address goes in brackets, e.g. tcp://[::1]:9000"
                )));
            }
            (host, port)
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '[' | ']' | '@')) {
        return Err(expected());
    }
    let port: u16 = port.parse().map_err(|_| expected())?;
    if port == 0 {
        return Err(Error::Endpoint(format!(
            "tcp://{addr}: port 0 cannot be agreed on by both sides; give a fixed port"
        )));
    }
    Ok(SocketAddress::Tcp {
        host: host.to_owned(),
        port,
    })
}

/// Which end of a socket channel listens (binds and accepts one connection); the other connects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Listen {
    /// The receiver listens, the sender connects (the default): a server collecting a stream.
    #[default]
    Receiver,
    /// The sender listens, the receiver connects: a server publishing a stream.
    Sender,
}

/// How to open a socket channel. See the [module documentation](self) for the semantics.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct SocketConfig {
    /// Where the channel lives.
    pub addr: SocketAddress,
    /// Largest message in bytes, `1..=MAX_MESSAGE_LIMIT` (default 1 MiB). A sender refuses
    /// longer messages; a receiver treats a longer frame as corruption.
    pub max_message: usize,
    /// Which end listens.
    pub listen: Listen,
    /// How long the connecting end retries before `open` fails.
    pub connect_timeout: Duration,
    /// How long a dropped sender spends writing the remainder of a partly written frame.
    pub close_timeout: Duration,
}

impl SocketConfig {
    /// Defaults for `addr`: messages up to 1 MiB, the receiver listens, 10 s to connect.
    pub fn new(addr: SocketAddress) -> Self {
        SocketConfig {
            addr,
            max_message: DEFAULT_MAX_MESSAGE,
            listen: Listen::Receiver,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }

    /// Defaults for the Unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::new(SocketAddress::Unix(path.into()))
    }

    /// Defaults for TCP to `host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Self::new(SocketAddress::Tcp {
            host: host.into(),
            port,
        })
    }

    /// Parses `unix:///path?options` or `tcp://HOST:PORT?options`, split by the caller into
    /// scheme, address and query. Options: `max_message` (bytes), `listen` (`receiver` or
    /// `sender`), `connect_timeout_ms`.
    pub(crate) fn from_endpoint(scheme: &str, addr: &str, query: &str) -> Result<Self, Error> {
        let mut cfg = SocketConfig::new(SocketAddress::parse(scheme, addr)?);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::Endpoint(format!("option {pair:?}: expected key=value")))?;
            match k {
                "max_message" => cfg.max_message = crate::endpoint::parse_usize(k, v)?,
                "listen" => {
                    cfg.listen = match v {
                        "receiver" => Listen::Receiver,
                        "sender" => Listen::Sender,
                        _ => {
                            return Err(Error::Endpoint(format!(
                                "option listen={v:?}: expected receiver or sender"
                            )))
                        }
                    }
                }
                "connect_timeout_ms" => {
                    cfg.connect_timeout = Duration::from_millis(crate::endpoint::parse_usize(k, v)? as u64)
                }
                _ => {
                    return Err(Error::Endpoint(format!(
                        "unknown option {k:?}; {scheme}:// takes max_message, listen, connect_timeout_ms"
                    )))
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets the largest message.
    pub fn max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// Sets which end listens.
    pub fn listen(mut self, listen: Listen) -> Self {
        self.listen = listen;
        self
    }

    /// Sets how long the connecting end retries.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_MESSAGE_LIMIT).contains(&self.max_message) {
            return Err(Error::InvalidConfig(format!(
                "maximum message size must be between 1 and {MAX_MESSAGE_LIMIT} bytes, got {}",
                self.max_message
            )));
        }
        match &self.addr {
            SocketAddress::Unix(p) => check_unix_path(p).map_err(Error::InvalidConfig),
            SocketAddress::Tcp { port: 0, .. } => {
                Err(Error::InvalidConfig("tcp port 0 cannot be agreed on".into()))
            }
            SocketAddress::Tcp { .. } => Ok(()),
        }
    }

    fn open(&self, listens: bool) -> Result<Conn, Error> {
        self.validate()?;
        let link = if listens {
            Link::Listening(Listener::bind(&self.addr)?)
        } else {
            Link::Connected(connect(&self.addr, self.connect_timeout)?)
        };
        Ok(Conn {
            #[cfg(all(feature = "tokio", not(loom)))]
            reg: None,
            link,
            addr: self.addr.clone(),
        })
    }

    /// Opens the sending end: connects (retrying up to `connect_timeout`), or with
    /// [`Listen::Sender`] binds and returns at once, accepting the receiver when it comes.
    pub fn open_sender(&self) -> Result<SocketSender, Error> {
        Ok(SocketSender {
            conn: self.open(self.listen == Listen::Sender)?,
            writer: FrameWriter::default(),
            sent: 0,
            max: self.max_message,
            close_timeout: self.close_timeout,
        })
    }

    /// Opens the receiving end: binds and returns at once, accepting the sender when it comes,
    /// or with [`Listen::Sender`] connects (retrying up to `connect_timeout`).
    pub fn open_receiver(&self) -> Result<SocketReceiver, Error> {
        Ok(SocketReceiver {
            conn: self.open(self.listen == Listen::Receiver)?,
            reader: FrameReader::new(self.max_message),
            reset: false,
            drained: false,
            read_timeout: None,
        })
    }
}

fn io_error(op: &'static str, addr: &SocketAddress, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Error::Permission(format!("{op} {addr}: {e}")),
        _ => Error::Io {
            op,
            source: io::Error::new(e.kind(), format!("{addr}: {e}")),
        },
    }
}

fn resolve(addr: &SocketAddress) -> Result<Vec<SocketAddr>, Error> {
    let SocketAddress::Tcp { host, port } = addr else {
        return Ok(Vec::new());
    };
    let addrs: Vec<SocketAddr> = (host.as_str(), *port)
        .to_socket_addrs()
        .map_err(|e| io_error("resolve", addr, e))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Io {
            op: "resolve",
            source: io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address")),
        });
    }
    Ok(addrs)
}

/// A connected stream.
///
/// The socket is in *blocking* mode, and each call says whether it may wait: the non-blocking
/// operations (`try_send`, `try_recv`, flushing) pass `MSG_DONTWAIT`, and a `send` or `recv`
/// without a deadline makes one blocking call, so that waiting for room or for data costs that
/// one call (as it does a plain blocking socket) instead of a failed attempt, a `poll` and a retry.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }

    fn tcp(s: TcpStream) -> io::Result<Self> {
        s.set_nodelay(true)?;
        s.set_nonblocking(false)?;
        Ok(Stream::Tcp(s))
    }

    fn unix(s: UnixStream) -> io::Result<Self> {
        s.set_nonblocking(false)?;
        Ok(Stream::Unix(s))
    }

    /// Bounds how long a blocking read waits (`SO_RCVTIMEO`; `None`: for ever).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

/// A receive whose deadline is at least this far off waits in a blocking read bounded by the
/// socket's read timeout, not in `poll`; closer deadlines are left to `poll`, which keeps them to
/// the millisecond.
const READ_TIMEOUT_FROM: Duration = Duration::from_millis(100);
/// How far before the deadline such a read timeout ends at the latest: the kernel rounds it up to
/// whole clock ticks (up to 10 ms), and the rest of the wait is left to `poll`.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_millis(25);

/// Whether a call on a [`Stream`] may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `MSG_DONTWAIT`: `WouldBlock` instead of waiting.
    NoWait,
    /// Wait as long as it takes (a call without a deadline).
    Wait,
}

impl Mode {
    fn flags(self) -> libc::c_int {
        match self {
            Mode::NoWait => libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            Mode::Wait => libc::MSG_NOSIGNAL,
        }
    }
}

/// Writes `bufs` to the stream, always with `MSG_NOSIGNAL` (a closed peer is `EPIPE`, never
/// `SIGPIPE`), retrying `EINTR` when nothing was written. One buffer (every small frame, see
/// `frame::SMALL_FRAME`) goes through `send(2)`; several through `sendmsg(2)`
/// (`sys::send_nosignal` when it must not block).
fn send_bytes(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>], mode: Mode) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    if bufs.len() > 1 && mode == Mode::NoWait {
        return sys::send_nosignal(fd, bufs);
    }
    loop {
        let n = if let [one] = bufs {
            // SAFETY: `one` is a live buffer of `one.len()` initialised bytes for the whole call;
            // send only reads it.
            unsafe { libc::send(fd.as_raw_fd(), one.as_ptr().cast(), one.len(), mode.flags()) }
        } else {
            // SAFETY: msghdr is plain data (pointers and integers); all-zero is a valid, empty
            // value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            // IoSlice is documented to be ABI-compatible with `struct iovec` on Unix.
            msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
            msg.msg_iovlen = bufs.len() as _;
            // SAFETY: `msg` points at `bufs.len()` iovecs borrowed for the duration of the call,
            // with no name and no control data; sendmsg only reads them.
            unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, mode.flags()) }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A [`Stream`] read with `recv(2)` in the given mode (`Interrupted` is returned, not retried).
struct Recv<'a>(&'a Stream, Mode);

impl Read for Recv<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes for the whole call.
        let n = unsafe {
            libc::recv(
                self.0.fd().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                self.1.flags() & !libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// A bound, listening socket waiting for its one peer.
enum Listener {
    Unix(UnixListenerFile),
    Tcp(TcpListener),
}

impl Listener {
    fn bind(addr: &SocketAddress) -> Result<Self, Error> {
        match addr {
            SocketAddress::Unix(path) => Ok(Listener::Unix(UnixListenerFile::bind(path)?)),
            SocketAddress::Tcp { .. } => {
                let l = TcpListener::bind(resolve(addr)?.as_slice()).map_err(|e| match e.kind() {
                    io::ErrorKind::AddrInUse => Error::InUse(format!("{addr}: address already in use")),
                    _ => io_error("bind", addr, e),
                })?;
                l.set_nonblocking(true).map_err(|e| io_error("bind", addr, e))?;
                Ok(Listener::Tcp(l))
            }
        }
    }

    /// The peer, if one is waiting.
    fn accept(&self) -> io::Result<Option<Stream>> {
        match self {
            Listener::Unix(l) => l.accept()?.map(Stream::unix).transpose(),
            Listener::Tcp(l) => loop {
                match l.accept() {
                    Ok((s, _)) => return Stream::tcp(s).map(Some),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if unix::is_transient_accept_error(&e) => continue,
                    Err(e) => return Err(e),
                }
            },
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

/// Connects to `addr`, retrying refused and missing addresses with backoff until `timeout`.
fn connect(addr: &SocketAddress, timeout: Duration) -> Result<Stream, Error> {
    let start = Instant::now();
    let deadline = start.checked_add(timeout);
    let tcp_addrs = resolve(addr)?;
    let mut backoff = Duration::from_millis(1);
    loop {
        let err = match connect_once(addr, &tcp_addrs, deadline) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let retry = matches!(
            err.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::NotFound
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::Interrupted
        );
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if !retry {
            return Err(io_error("connect", addr, err));
        }
        if left == Some(Duration::ZERO) {
            return Err(Error::Io {
                op: "connect",
                source: io::Error::new(
                    err.kind(),
                    format!("{addr}: {err} (retried for {:?})", start.elapsed()),
                ),
            });
        }
        std::thread::sleep(left.map_or(backoff, |l| l.min(backoff)));
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// One connection attempt (to each resolved address in turn, for TCP).
fn connect_once(
    addr: &SocketAddress,
    tcp_addrs: &[SocketAddr],
    deadline: Option<Instant>,
) -> io::Result<Stream> {
    match addr {
        SocketAddress::Unix(path) => Stream::unix(UnixStream::connect(path)?),
        SocketAddress::Tcp { .. } => {
            let mut last = io::Error::from(io::ErrorKind::NotFound);
            for a in tcp_addrs {
                let left = deadline.map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1))
                });
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                match TcpStream::connect_timeout(a, left) {
                    Ok(s) => return Stream::tcp(s),
                    // Prefer reporting (and retrying on) a refusal over, say, an unreachable
                    // IPv6 twin of a name.
                    Err(e) if last.kind() != io::ErrorKind::ConnectionRefused => last = e,
                    Err(_) => {}
                }
            }
            Err(last)
        }
    }
}

/// The connection: listening for the peer, connected, or closed for good.
enum Link {
    Listening(Listener),
    Connected(Stream),
    Closed,
}

/// What a call can do with the connection now.
enum State<'a> {
    Ready(&'a mut Stream),
    /// Listening, and no peer has come yet.
    Waiting,
    Closed,
}

/// Whether a wait saw something happen or ran into its deadline.
#[derive(PartialEq, Eq)]
enum Wait {
    Ready,
    TimedOut,
}

struct Conn {
    /// The async calls' registration of the current descriptor (listener or stream) with tokio's
    /// reactor. Declared first, so dropped before the descriptor closes; every change of `link`
    /// drops it first too (see `set_link`).
    #[cfg(all(feature = "tokio", not(loom)))]
    reg: Option<aio::Registration>,
    link: Link,
    addr: SocketAddress,
}

impl Conn {
    /// Accepts the peer if we listen and it has come; then says what can be done.
    fn state(&mut self) -> State<'_> {
        if let Link::Listening(l) = &self.link {
            match l.accept() {
                Ok(Some(s)) => self.set_link(Link::Connected(s)),
                Ok(None) => return State::Waiting,
                // The listener itself failed; no peer will ever come.
                Err(_) => self.set_link(Link::Closed),
            }
        }
        match &mut self.link {
            Link::Connected(s) => State::Ready(s),
            Link::Listening(_) => State::Waiting,
            Link::Closed => State::Closed,
        }
    }

    /// Waits for `events` on the stream (for a peer, if still listening) until `deadline`.
    fn wait(&mut self, events: libc::c_short, deadline: Option<Instant>) -> Wait {
        let polled = match &self.link {
            Link::Listening(l) => sys::poll_until(l.fd(), POLLIN, deadline),
            Link::Connected(s) => sys::poll_until(s.fd(), events, deadline),
            Link::Closed => return Wait::Ready,
        };
        match polled {
            Ok(Some(_)) => Wait::Ready,
            Ok(None) => Wait::TimedOut,
            // poll itself failed (out of memory): give up on the connection rather than spin.
            Err(_) => {
                self.set_link(Link::Closed);
                Wait::Ready
            }
        }
    }

    fn close(&mut self) {
        self.set_link(Link::Closed);
    }

    /// Replaces the link (closing the old descriptor), after dropping the async registration of
    /// that descriptor: it must leave the reactor before its number can be reused.
    fn set_link(&mut self, link: Link) {
        #[cfg(all(feature = "tokio", not(loom)))]
        {
            self.reg = None;
        }
        self.link = link;
    }

    fn connected(&mut self) -> Option<&mut Stream> {
        match &mut self.link {
            Link::Connected(s) => Some(s),
            _ => None,
        }
    }

    fn describe(&self) -> &'static str {
        match self.link {
            Link::Listening(_) => "listening",
            Link::Connected(_) => "connected",
            Link::Closed => "closed",
        }
    }
}

/// The sending end of a socket channel.
pub struct SocketSender {
    conn: Conn,
    writer: FrameWriter,
    /// Frames accepted since open.
    sent: u64,
    max: usize,
    close_timeout: Duration,
}

impl SocketSender {
    fn check_len(&self, msg: &[u8]) -> Result<(), TooLarge> {
        if msg.len() > self.max {
            return Err(TooLarge {
                len: msg.len(),
                max: self.max,
            });
        }
        Ok(())
    }

    /// Bytes of an accepted frame not yet handed to the kernel (see the module docs).
    pub fn pending_bytes(&self) -> usize {
        self.writer.pending()
    }

    /// Messages sent (their frames accepted, the rest of the last one perhaps still pending) by
    /// any call since this end was opened. After a dropped async send, an unchanged count says
    /// that its message was not sent.
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    /// Writes the remainder of a partly written frame, waiting until `deadline`; `Timeout` if
    /// some of it is still pending then. `flush_deadline(Some(Instant::now()))` never blocks.
    pub fn flush_deadline(&mut self, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        // Without a deadline the writes themselves wait (see `Stream`).
        let mode = if deadline.is_none() {
            Mode::Wait
        } else {
            Mode::NoWait
        };
        loop {
            if self.writer.pending() == 0 {
                return Ok(());
            }
            let State::Ready(stream) = self.conn.state() else {
                return Err(SendTimeoutError::Disconnected);
            };
            let fd = stream.fd();
            match self.writer.flush(|b| send_bytes(fd, b, mode)) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(_) => {
                    self.disconnect();
                    return Err(SendTimeoutError::Disconnected);
                }
            }
            if self.conn.wait(POLLOUT, deadline) == Wait::TimedOut {
                return Err(SendTimeoutError::Timeout);
            }
        }
    }

    fn disconnect(&mut self) {
        self.conn.close();
        self.writer = FrameWriter::default();
    }

    /// `try_send`, or with `Mode::Wait` the same but waiting in the writes for room (once
    /// connected): `Full` then only means the peer has not connected yet.
    fn send_now(&mut self, msg: &[u8], mode: Mode) -> Result<(), TrySendError> {
        self.check_len(msg).map_err(TrySendError::TooLarge)?;
        let stream = match self.conn.state() {
            State::Ready(s) => s,
            State::Waiting => return Err(TrySendError::Full),
            State::Closed => return Err(TrySendError::Disconnected),
        };
        let fd = stream.fd();
        let written = match self.writer.flush(|b| send_bytes(fd, b, mode)) {
            Ok(true) => self.writer.write_frame(msg, |b| send_bytes(fd, b, mode)),
            other => other.map(|_| false),
        };
        match written {
            Ok(true) => {
                self.sent += 1;
                Ok(())
            }
            Ok(false) => Err(TrySendError::Full),
            Err(_) => {
                self.disconnect();
                Err(TrySendError::Disconnected)
            }
        }
    }
}

impl Sender for SocketSender {
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.send_now(msg, Mode::NoWait)
    }

    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        self.check_len(msg).map_err(SendTimeoutError::TooLarge)?;
        // Without a deadline, one blocking write waits for room (see `Stream`); with one, a
        // non-blocking write and `poll` until the deadline.
        let mode = if deadline.is_none() {
            Mode::Wait
        } else {
            Mode::NoWait
        };
        loop {
            match self.send_now(msg, mode) {
                Ok(()) => break,
                Err(TrySendError::Full) => {
                    if self.conn.wait(POLLOUT, deadline) == Wait::TimedOut {
                        return Err(SendTimeoutError::Timeout);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The frame is accepted; push out what the kernel did not take yet. If the deadline
        // passes first the rest stays pending, and the frame still counts as sent.
        match self.flush_deadline(deadline) {
            Ok(()) | Err(SendTimeoutError::Timeout) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn max_message_size(&self) -> usize {
        self.max
    }

    fn flush_deadline(&mut self, deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        SocketSender::flush_deadline(self, deadline)
    }
}

impl Drop for SocketSender {
    fn drop(&mut self) {
        if self.writer.pending() > 0 {
            let _ = self.flush_deadline(Instant::now().checked_add(self.close_timeout));
        }
    }
}

impl fmt::Debug for SocketSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketSender")
            .field("addr", &self.conn.addr)
            .field("state", &self.conn.describe())
            .field("pending", &self.writer.pending())
            .field("max_message", &self.max)
            .finish()
    }
}

/// The receiving end of a socket channel.
pub struct SocketReceiver {
    conn: Conn,
    reader: FrameReader,
    /// The connection was reset: an incomplete last frame is dropped, not reported.
    reset: bool,
    /// The last read found nothing to read (`WouldBlock`), and nothing was read since: a wait
    /// can go straight to `poll` instead of trying that read again first.
    drained: bool,
    /// The read timeout set on the socket (`None`: none, as a new socket has); see `read_mode`.
    read_timeout: Option<Duration>,
}

impl SocketReceiver {
    /// The largest frame this receiver accepts.
    pub fn max_message_size(&self) -> usize {
        self.reader.max()
    }

    /// How a receive waiting until `deadline` reads: `Mode::Wait`, a blocking read (which is how
    /// a plain blocking socket waits: one call), or `Mode::NoWait`, then `poll`. Without a
    /// deadline, a blocking read with no read timeout. With a deadline at least
    /// `READ_TIMEOUT_FROM` away, a blocking read whose read timeout ends at least
    /// `READ_TIMEOUT_MARGIN` before it; the timeout is set (a syscall) only when the one already
    /// set does not fit (ends too late, or before half the time left), so repeated receives with
    /// the same timeout reuse it. Otherwise, or while not connected, `poll`.
    fn read_mode(&mut self, deadline: Option<Instant>) -> Mode {
        let want = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left < READ_TIMEOUT_FROM {
                    return Mode::NoWait;
                }
                let limit = left - READ_TIMEOUT_MARGIN;
                match self.read_timeout {
                    Some(t) if t <= limit && t >= limit / 2 => return Mode::Wait,
                    // Whole milliseconds, rounded down: the next call's `limit` is a little
                    // shorter, and usually still fits.
                    _ => Some(Duration::from_millis(limit.as_millis() as u64)),
                }
            }
        };
        let Some(stream) = self.conn.connected() else {
            return Mode::NoWait;
        };
        if want != self.read_timeout {
            if stream.set_read_timeout(want).is_err() {
                return Mode::NoWait;
            }
            self.read_timeout = want;
        }
        Mode::Wait
    }

    /// The stream has ended and no complete frame is left.
    fn end_of_stream(&mut self) -> TryRecvError {
        let partial = self.reader.partial();
        self.reader.clear();
        match partial {
            Some((have, need)) if !self.reset => TryRecvError::Corrupted(Corrupted {
                reason: format!("truncated frame: the stream ended after {have} of its {need} bytes"),
            }),
            _ => TryRecvError::Disconnected,
        }
    }
}

impl SocketReceiver {
    /// `try_recv`, or with `Mode::Wait` the same but waiting in the read for data (once
    /// connected): `Empty` then only means the peer has not connected yet.
    fn receive(&mut self, buf: &mut Vec<u8>, mode: Mode) -> Result<(), TryRecvError> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => {
                    buf.clear();
                    buf.extend_from_slice(frame);
                    return Ok(());
                }
                Ok(None) => {}
                Err(c) => {
                    // Nothing after a bad length can be trusted: close, and say so once.
                    self.conn.close();
                    self.reader.clear();
                    return Err(TryRecvError::Corrupted(c));
                }
            }
            let stream = match self.conn.state() {
                State::Ready(s) => s,
                State::Waiting => return Err(TryRecvError::Empty),
                State::Closed => return Err(self.end_of_stream()),
            };
            match self.reader.fill_from(&mut Recv(stream, mode)) {
                Ok(0) => {
                    self.conn.close();
                    return Err(self.end_of_stream());
                }
                Ok(_) => self.drained = false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return Err(TryRecvError::Empty);
                }
                // A blocking read's caller re-checks its deadline before reading again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted && mode == Mode::Wait => {
                    return Err(TryRecvError::Empty)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Reset (or another read error): deliver the complete frames already
                    // buffered, then Disconnected.
                    self.conn.close();
                    self.reset = true;
                }
            }
        }
    }
}

impl Receiver for SocketReceiver {
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        self.receive(buf, Mode::NoWait)
    }

    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        loop {
            let mode = self.read_mode(deadline);
            // Before a `poll`, a read that just found nothing (typically the caller's own
            // `try_recv`) is not repeated: `poll` returns at once if data came meanwhile.
            if mode == Mode::Wait || !self.drained || self.reader.has_frame() {
                match self.receive(buf, mode) {
                    Err(TryRecvError::Empty) => {}
                    other => return other.map_err(Into::into),
                }
                if mode == Mode::Wait && self.conn.connected().is_some() {
                    // The read's timeout ran out, or a signal came: look at the deadline again.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(RecvTimeoutError::Timeout);
                    }
                    continue;
                }
            }
            if self.conn.wait(POLLIN, deadline) == Wait::TimedOut {
                return Err(RecvTimeoutError::Timeout);
            }
            // Readable, hung up or failed: the next read says which.
            self.drained = false;
        }
    }
}

impl fmt::Debug for SocketReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketReceiver")
            .field("addr", &self.conn.addr)
            .field("state", &self.conn.describe())
            .field("max_message", &self.reader.max())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    fn parse(s: &str) -> Result<SocketConfig, Error> {
        match Endpoint::parse(s)? {
            Endpoint::Socket(cfg) => Ok(cfg),
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    fn endpoint_error(s: &str) -> String {
        match parse(s) {
            Err(Error::Endpoint(m)) => m,
            other => panic!("{s}: expected an endpoint error, got {other:?}"),
        }
    }

    /// A fresh directory, removed when this is dropped.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A Unix-socket pair in a fresh directory.
    fn pair(tag: &str) -> (SocketSender, SocketReceiver, TempDir) {
        let dir = std::env::temp_dir().join(format!("shmpipe-m-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let cfg = SocketConfig::unix(dir.join("s.sock"));
        let rx = cfg.open_receiver().unwrap();
        let tx = cfg.open_sender().unwrap();
        (tx, rx, TempDir(dir))
    }

    #[test]
    fn receive_deadlines_hold_whichever_way_the_receiver_waits() {
        let (tx, mut rx, _dir) = pair("deadlines");
        let mut m = Vec::new();
        // Polled only (< READ_TIMEOUT_FROM), then a read timeout plus poll for the rest.
        for ms in [30, 150, 400] {
            let t = Duration::from_millis(ms);
            let start = Instant::now();
            assert_eq!(rx.recv_timeout(&mut m, t), Err(RecvTimeoutError::Timeout));
            let took = start.elapsed();
            assert!(
                took >= t && took < t + Duration::from_secs(1),
                "{took:?} for {t:?}"
            );
        }
        // A long read timeout is set and kept; a message ends the wait at once.
        let mut tx = tx;
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            tx.send(b"late").unwrap();
            tx
        });
        let start = Instant::now();
        rx.recv_timeout(&mut m, Duration::from_secs(20)).unwrap();
        assert_eq!(m, b"late");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(rx.read_timeout.is_some());
        // No deadline: the read timeout is cleared, and the read waits as long as it takes.
        let mut tx = late.join().unwrap();
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            tx.send(b"later").unwrap();
            tx
        });
        rx.recv(&mut m).unwrap();
        assert_eq!(m, b"later");
        assert_eq!(rx.read_timeout, None);
        drop(later.join().unwrap());
    }

    #[test]
    fn send_without_deadline_waits_in_the_write_for_room() {
        let (mut tx, mut rx, _dir) = pair("blocking-send");
        let chunk: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
        let mut sent = 0u32;
        // Connect, then fill the kernel's buffers.
        assert_eq!(rx.try_recv(&mut Vec::new()), Err(TryRecvError::Empty));
        while tx.try_send(&chunk).is_ok() {
            sent += 1;
        }
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut m = Vec::new();
            for _ in 0..sent + 2 {
                rx.recv(&mut m).unwrap();
                assert_eq!(m, (0..60_000u32).map(|i| i as u8).collect::<Vec<u8>>());
            }
            rx
        });
        // Blocks until the reader makes room, then writes the whole frame.
        tx.send(&chunk).unwrap();
        assert_eq!(tx.pending_bytes(), 0);
        tx.send(&chunk).unwrap();
        drop(reader.join().unwrap());
    }

    #[test]
    fn endpoints_parse() {
        let c = parse("unix:///tmp/x.sock").unwrap();
        assert_eq!(c.addr, SocketAddress::Unix("/tmp/x.sock".into()));
        assert_eq!(c.max_message, DEFAULT_MAX_MESSAGE);
        assert_eq!(c.listen, Listen::Receiver);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let c = parse("tcp://127.0.0.1:8080?max_message=64&listen=sender&connect_timeout_ms=250").unwrap();
        assert_eq!(
            c.addr,
            SocketAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(
            (c.max_message, c.listen, c.connect_timeout),
            (64, Listen::Sender, Duration::from_millis(250))
        );
        let c = parse("tcp://[::1]:9000").unwrap();
        assert_eq!(c.addr.to_string(), "tcp://[::1]:9000");
        let c = parse("tcp://localhost:8080?listen=receiver").unwrap();
        assert_eq!(c.addr.to_string(), "tcp://localhost:8080");
    }

    #[test]
    fn malformed_endpoints_say_what_was_expected() {
        for (s, want) in [
            ("tcp://127.0.0.1", "expected tcp://HOST:PORT"),
            ("tcp://:80", "expected tcp://HOST:PORT"),
            ("tcp://127.0.0.1:", "expected tcp://HOST:PORT"),
            ("tcp://127.0.0.1:99999", "expected tcp://HOST:PORT"),
            ("tcp://127.0.0.1:80/x", "expected tcp://HOST:PORT"),
            ("tcp://[::1]", "expected tcp://HOST:PORT"),
            ("tcp://::1:80", "an IPv6 address goes in brackets"),
            ("tcp://127.0.0.1:0", "port 0"),
            ("unix://relative/path", "not absolute"),
            ("unix://", "not absolute"),
            ("unix:///tmp/dir/", "names no file"),
            ("unix:///tmp/x.sock?colour=blue", "unknown option \"colour\""),
            ("unix:///tmp/x.sock?listen=both", "expected receiver or sender"),
            ("unix:///tmp/x.sock?max_message=big", "expected a whole number"),
            ("tcp://127.0.0.1:1?connect_timeout_ms", "expected key=value"),
        ] {
            let m = endpoint_error(s);
            assert!(m.contains(want), "{s}: {m:?} does not say {want:?}");
        }
        let long = format!("unix:///tmp/{}", "a".repeat(120));
        assert!(endpoint_error(&long).contains("the limit is 107"));
        assert!(matches!(
            parse("unix:///tmp/x.sock?max_message=0"),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            Endpoint::parse("udp://127.0.0.1:80"),
            Err(Error::Endpoint(m)) if m.contains("unix://, tcp:// or auto://")
        ));
    }
}
