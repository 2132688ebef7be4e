//! Endpoint strings, parsed in one place: `SCHEME://ADDRESS?option=value&...`.
//!
//! Supported now:
//! - `shm://NAME` and `shm://0xKEY`, with options `capacity` (messages of the maximum size, power
//!   of two), `bytes` (SPSC: the ring's message memory instead, e.g. `1MiB`), `max_message`
//!   (bytes), `mode` (`spsc`, the default, or `mpmc` for a ring any number of senders and
//!   receivers share; or octal permission bits, e.g. `0660`, also spelled `perm=0660`),
//!   `allow_other_owner` (`true`/`false`), `wait` (`spin`, `park` or the default `adaptive`),
//!   `senders` (MPMC receivers: how many senders must have joined before "no sender left" ends
//!   the stream; default 1); `mode=broadcast` for a publish/subscribe ring
//!   ([`ring::broadcast`](crate::ring::broadcast)) with `overflow` (`block`, the default, or
//!   `overwrite`), `tether` (subscribers: `true`, the default, or `false` for one that never
//!   holds the publisher back), `start` (subscribers: `latest`, the default, or `oldest`) and
//!   `subscribers` (the publisher: how many subscribers must have joined before the first
//!   message goes out; default 0);
//! - `msgq://NAME` and `msgq://0xKEY` (a System V message queue), with options `max_message`,
//!   `mode` and `allow_other_owner`;
//! - `unix:///absolute/path.sock` and `tcp://HOST:PORT` (`tcp://127.0.0.1:8080`,
//!   `tcp://[::1]:9000`, `tcp://localhost:8080`), with options `max_message` (bytes),
//!   `listen` (`receiver`, the default, or `sender`: which end binds and accepts) and
//!   `connect_timeout_ms` (how long the other end retries connecting). See
//!   [`transport::socket`](crate::transport::socket).

use crate::channel::{Receiver, Sender};
use crate::error::Error;
use crate::ring::broadcast::{Overflow, Start};
use crate::ring::{RingKind, WaitStrategy};
use crate::transport::msgq::MsgqConfig;
use crate::transport::shm::{SegmentAddr, ShmConfig};
use crate::transport::socket::{SocketAddress, SocketConfig};

/// A parsed endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Endpoint {
    /// A ring in a System V shared-memory segment.
    Shm(ShmConfig),
    /// A System V message queue.
    Msgq(MsgqConfig),
    /// A Unix-domain or TCP stream socket.
    Socket(SocketConfig),
    /// `auto://NAME`: shared memory if the system allows it, else a message queue, else a Unix
    /// socket.
    Auto(AutoConfig),
    /// `zenoh://KEYEXPR` (feature `zenoh`): Zenoh pub/sub, for peers on other machines.
    #[cfg(feature = "zenoh")]
    Zenoh(crate::transport::zenoh::ZenohConfig),
}

/// `auto://NAME[?capacity=..&max_message=..]`: the first transport this system allows, in the
/// order shared memory (`shm://NAME`), message queue (`msgq://NAME`), Unix socket
/// (`unix://$XDG_RUNTIME_DIR/shmpipe/NAME.sock`, or `/tmp/shmpipe-UID/NAME.sock` without
/// `XDG_RUNTIME_DIR`).
///
/// A transport is passed over only when it is *unavailable*: its object cannot be created for
/// want of permission, a kernel limit, or kernel support (a container with a private, empty IPC
/// namespace, `kernel.shmmni = 0`, seccomp). Any other error (in use, foreign object, corrupted)
/// is returned, since the next transport would not meet the peer either. Both ends must run
/// where the same transports are available, or they will not meet.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct AutoConfig {
    /// The channel's name (the rules of `shm://NAME`).
    pub name: String,
    /// Slots, for shared memory.
    pub capacity: Option<usize>,
    /// Largest message, for every transport.
    pub max_message: Option<usize>,
}

impl AutoConfig {
    /// The candidate endpoints, in order of preference.
    pub fn candidates(&self) -> Result<Vec<Endpoint>, Error> {
        let addr = SegmentAddr::parse(&self.name)?;
        let mut shm = ShmConfig::new(addr.clone());
        shm.capacity = self.capacity.unwrap_or(shm.capacity);
        shm.max_message = self.max_message.unwrap_or(shm.max_message);
        let mut msgq = MsgqConfig::new(addr);
        msgq.max_message = self.max_message.unwrap_or(msgq.max_message);
        let mut sock = SocketConfig::unix(socket_dir()?.join(format!("{}.sock", self.name)));
        sock.max_message = self.max_message.unwrap_or(sock.max_message);
        Ok(vec![
            Endpoint::Shm(shm),
            Endpoint::Msgq(msgq),
            Endpoint::Socket(sock),
        ])
    }

    /// Opens the sending end on the first available transport; also returns which one.
    pub fn open_sender(&self) -> Result<(Box<dyn Sender + Send>, String), Error> {
        self.first_available(Endpoint::open_sender)
    }

    /// Opens the receiving end on the first available transport; also returns which one.
    pub fn open_receiver(&self) -> Result<(Box<dyn Receiver + Send>, String), Error> {
        self.first_available(Endpoint::open_receiver)
    }

    pub(crate) fn first_available<T>(
        &self,
        open: impl Fn(Endpoint) -> Result<T, Error>,
    ) -> Result<(T, String), Error> {
        let mut passed_over = Vec::new();
        for candidate in self.candidates()? {
            let scheme = candidate.scheme();
            let shown = match &candidate {
                Endpoint::Socket(cfg) => cfg.addr.to_string(),
                _ => format!("{scheme}://{}", self.name),
            };
            match open(candidate) {
                Ok(end) => {
                    let mut why = shown;
                    for (s, e) in &passed_over {
                        why.push_str(&format!("; {s}:// unavailable: {e}"));
                    }
                    return Ok((end, why));
                }
                Err(e) if is_unavailable(&e) => passed_over.push((scheme, e)),
                Err(e) => return Err(e),
            }
        }
        let reasons: Vec<String> = passed_over.iter().map(|(s, e)| format!("{s}:// {e}")).collect();
        Err(Error::InUse(format!(
            "no transport is available: {}",
            reasons.join("; ")
        )))
    }
}

/// Whether `e` says the transport cannot be used here at all (as opposed to "not now").
fn is_unavailable(e: &Error) -> bool {
    match e {
        Error::Limit(_) | Error::Permission(_) => true,
        Error::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::ENOSPC | libc::ENOMEM)
        ),
        _ => false,
    }
}

/// The private directory for `auto://` sockets: created 0700 if missing, and refused unless it
/// is ours and private.
fn socket_dir() -> Result<std::path::PathBuf, Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = crate::sys::proc::euid();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d).join("shmpipe"),
        _ => std::path::PathBuf::from(format!("/tmp/shmpipe-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(Error::Io {
                op: "creating the auto:// socket directory",
                source,
            })
        }
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|source| Error::Io {
        op: "inspecting the auto:// socket directory",
        source,
    })?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(Error::Permission(format!(
            "{} must be a directory owned by uid {uid} with mode 0700",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The `key=value` pairs of an endpoint's query string.
fn options(query: &str) -> impl Iterator<Item = Result<(&str, &str), Error>> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        pair.split_once('=')
            .ok_or_else(|| Error::Endpoint(format!("option {pair:?}: expected key=value")))
    })
}

fn parse_mode(v: &str) -> Result<u32, Error> {
    u32::from_str_radix(v, 8)
        .map_err(|_| Error::Endpoint(format!("option mode={v:?}: expected octal bits like 0600")))
}

pub(crate) fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(Error::Endpoint(format!(
            "option {key}={v:?}: expected true or false"
        ))),
    }
}

pub(crate) fn parse_usize(key: &str, v: &str) -> Result<usize, Error> {
    v.parse()
        .map_err(|_| Error::Endpoint(format!("option {key}={v:?}: expected a whole number")))
}

/// A size in bytes: a whole number, optionally with a binary suffix `K`/`KiB`, `M`/`MiB` or
/// `G`/`GiB` (`64K` = 65536). The error says what is wrong, in a sentence.
///
/// ```
/// use shmpipe::endpoint::parse_size;
/// assert_eq!(parse_size("1MiB"), Ok(1 << 20));
/// assert_eq!(parse_size("64K"), Ok(65536));
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert!(parse_size("1.5M").is_err());
/// assert!(parse_size("12Q").unwrap_err().contains("unknown unit \"Q\""));
/// ```
pub fn parse_size(v: &str) -> Result<usize, String> {
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(digits);
    let shift = match unit {
        "" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ if n.is_empty() => return Err("expected a number of bytes, as 65536 or 64K".into()),
        _ => {
            return Err(format!(
                "unknown unit {unit:?}: expected K, KiB, M, MiB, G or GiB"
            ))
        }
    };
    let n: usize = n
        .parse()
        .map_err(|_| String::from("expected a number of bytes, as 65536 or 64K"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{v} bytes is too large"))
}

/// [`parse_size`] for the endpoint option `key`.
fn size_option(key: &str, v: &str) -> Result<usize, Error> {
    parse_size(v).map_err(|why| Error::Endpoint(format!("option {key}={v:?}: {why}")))
}

impl Endpoint {
    /// Parses `shm://NAME`, `msgq://NAME`, `unix:///PATH` or `tcp://HOST:PORT`, each `[?options]`.
    ///
    /// ```
    /// use shmpipe::endpoint::Endpoint;
    /// let Endpoint::Shm(cfg) = Endpoint::parse("shm://orders?capacity=4096&max_message=256").unwrap() else {
    ///     unreachable!()
    /// };
    /// assert_eq!(cfg.capacity, 4096);
    /// let Endpoint::Msgq(cfg) = Endpoint::parse("msgq://orders?max_message=100000&mode=0660").unwrap() else {
    ///     unreachable!()
    /// };
    /// assert_eq!((cfg.max_message, cfg.mode), (100_000, 0o660));
    /// assert!(Endpoint::parse("shm://orders?capacity=lots").is_err());
    /// assert!(Endpoint::parse("orders").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            Error::Endpoint(format!(
                "{s:?} has no scheme; expected shm://NAME, msgq://NAME, unix:///PATH or tcp://HOST:PORT (or shm://0xKEY, msgq://0xKEY)"
            ))
        })?;
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        match scheme {
            "shm" => {
                let mut cfg = ShmConfig::new(SegmentAddr::parse(addr)?);
                for kv in options(query) {
                    let (k, v) = kv?;
                    match k {
                        "capacity" => cfg.capacity = parse_usize(k, v)?,
                        "bytes" => cfg.bytes = Some(size_option(k, v)?),
                        "max_message" => cfg.max_message = parse_usize(k, v)?,
                        "mode" if v == "spsc" => cfg.kind = RingKind::Spsc,
                        "mode" if v == "mpmc" => cfg.kind = RingKind::Mpmc,
                        "mode" if v == "broadcast" => cfg.kind = RingKind::Broadcast,
                        "overflow" => {
                            cfg.overflow = match v {
                                "block" => Overflow::Block,
                                "overwrite" => Overflow::Overwrite,
                                _ => {
                                    return Err(Error::Endpoint(format!(
                                        "option overflow={v:?}: expected block or overwrite"
                                    )))
                                }
                            }
                        }
                        "tether" => cfg.subscription.tethered = parse_bool(k, v)?,
                        "start" => {
                            cfg.subscription.start = match v {
                                "latest" => Start::Latest,
                                "oldest" => Start::Oldest,
                                _ => {
                                    return Err(Error::Endpoint(format!(
                                        "option start={v:?}: expected latest or oldest"
                                    )))
                                }
                            }
                        }
                        "subscribers" => {
                            cfg.expect_subscribers = parse_usize(k, v)?.min(u32::MAX as usize) as u32
                        }
                        "mode" | "perm" => cfg.mode = parse_mode(v)?,
                        "senders" => {
                            cfg.expect_senders = parse_usize(k, v)?.clamp(1, u32::MAX as usize) as u32
                        }
                        "allow_other_owner" => cfg.allow_other_owner = parse_bool(k, v)?,
                        "wait" => {
                            cfg.wait = match v {
                                "spin" => WaitStrategy::spinning(1 << 16),
                                "park" => WaitStrategy::park_only(),
                                "adaptive" => WaitStrategy::default(),
                                _ => {
                                    return Err(Error::Endpoint(format!(
                                        "option wait={v:?}: expected spin, park or adaptive"
                                    )))
                                }
                            }
                        }
                        _ => {
                            return Err(Error::Endpoint(format!(
                                "unknown option {k:?}; shm:// takes capacity, bytes, max_message, mode \
                                 (spsc, mpmc, broadcast or octal bits), perm, senders, overflow, tether, \
                                 start, subscribers, allow_other_owner, wait"
                            )))
                        }
                    }
                }
                Ok(Endpoint::Shm(cfg))
            }
            "msgq" => {
                let mut cfg = MsgqConfig::new(SegmentAddr::parse(addr)?);
                for kv in options(query) {
                    let (k, v) = kv?;
                    match k {
                        "max_message" => cfg.max_message = parse_usize(k, v)?,
                        "mode" => cfg.mode = parse_mode(v)?,
                        "allow_other_owner" => cfg.allow_other_owner = parse_bool(k, v)?,
                        _ => {
                            return Err(Error::Endpoint(format!(
                                "unknown option {k:?}; msgq:// takes max_message, mode, allow_other_owner"
                            )))
                        }
                    }
                }
                Ok(Endpoint::Msgq(cfg))
            }
            #[cfg(feature = "zenoh")]
            "zenoh" => Ok(Endpoint::Zenoh(
                crate::transport::zenoh::ZenohConfig::from_endpoint(addr, query)?,
            )),
            #[cfg(not(feature = "zenoh"))]
            "zenoh" => Err(Error::Endpoint(format!(
                "{s:?}: zenoh:// endpoints need shmpipe built with the `zenoh` feature"
            ))),
            "unix" | "tcp" => Ok(Endpoint::Socket(SocketConfig::from_endpoint(
                scheme, addr, query,
            )?)),
            "auto" => {
                SegmentAddr::parse(addr)?;
                let mut cfg = AutoConfig {
                    name: addr.to_owned(),
                    capacity: None,
                    max_message: None,
                };
                for kv in options(query) {
                    let (k, v) = kv?;
                    match k {
                        "capacity" => cfg.capacity = Some(parse_usize(k, v)?),
                        "max_message" => cfg.max_message = Some(parse_usize(k, v)?),
                        _ => {
                            return Err(Error::Endpoint(format!(
                                "unknown option {k:?}; auto:// takes capacity, max_message"
                            )))
                        }
                    }
                }
                Ok(Endpoint::Auto(cfg))
            }
            other => Err(Error::Endpoint(format!(
                "unsupported scheme {other:?}; expected shm://, msgq://, unix://, tcp:// or auto://"
            ))),
        }
    }
}

impl Endpoint {
    /// The scheme: `shm`, `msgq`, `unix`, `tcp` or `auto`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Endpoint::Shm(_) => "shm",
            Endpoint::Msgq(_) => "msgq",
            Endpoint::Socket(cfg) => match cfg.addr {
                SocketAddress::Unix(_) => "unix",
                SocketAddress::Tcp { .. } => "tcp",
            },
            Endpoint::Auto(_) => "auto",
            #[cfg(feature = "zenoh")]
            Endpoint::Zenoh(_) => "zenoh",
        }
    }

    /// Opens (or creates) the channel and takes its sending end.
    pub fn open_sender(self) -> Result<Box<dyn Sender + Send>, Error> {
        Ok(match self {
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Mpmc => Box::new(cfg.open_mpmc_sender()?),
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Broadcast => Box::new(cfg.open_publisher()?),
            Endpoint::Shm(cfg) => Box::new(cfg.open_sender()?),
            Endpoint::Msgq(cfg) => Box::new(cfg.open_sender()?),
            Endpoint::Socket(cfg) => Box::new(cfg.open_sender()?),
            Endpoint::Auto(cfg) => cfg.open_sender()?.0,
            #[cfg(feature = "zenoh")]
            Endpoint::Zenoh(cfg) => Box::new(cfg.open_sender()?),
        })
    }

    /// Opens (or creates) the channel and takes its receiving end.
    pub fn open_receiver(self) -> Result<Box<dyn Receiver + Send>, Error> {
        Ok(match self {
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Mpmc => Box::new(cfg.open_mpmc_receiver()?),
            Endpoint::Shm(cfg) if cfg.kind == RingKind::Broadcast => Box::new(cfg.open_subscriber()?),
            Endpoint::Shm(cfg) => Box::new(cfg.open_receiver()?),
            Endpoint::Msgq(cfg) => Box::new(cfg.open_receiver()?),
            Endpoint::Socket(cfg) => Box::new(cfg.open_receiver()?),
            Endpoint::Auto(cfg) => cfg.open_receiver()?.0,
            #[cfg(feature = "zenoh")]
            Endpoint::Zenoh(cfg) => Box::new(cfg.open_receiver()?),
        })
    }
}

/// Opens the sending end of the channel at `endpoint` (creating a ring or queue if needed;
/// binding or connecting a socket as its `listen` option says).
pub fn open_sender(endpoint: &str) -> Result<Box<dyn Sender + Send>, Error> {
    Endpoint::parse(endpoint)?.open_sender()
}

/// Opens the receiving end of the channel at `endpoint` (creating a ring or queue if needed;
/// binding or connecting a socket as its `listen` option says).
pub fn open_receiver(endpoint: &str) -> Result<Box<dyn Receiver + Send>, Error> {
    Endpoint::parse(endpoint)?.open_receiver()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        match Endpoint::parse(s) {
            Err(e) => e.to_string(),
            Ok(e) => panic!("{s} parsed as {e:?}"),
        }
    }

    #[test]
    fn msgq_endpoints_parse_with_their_options() {
        let Endpoint::Msgq(cfg) =
            Endpoint::parse("msgq://jobs?max_message=1000000&mode=0660&allow_other_owner=true").unwrap()
        else {
            panic!("not msgq")
        };
        assert_eq!(cfg.addr, SegmentAddr::Name("jobs".into()));
        assert_eq!(
            (cfg.max_message, cfg.mode, cfg.allow_other_owner),
            (1_000_000, 0o660, true)
        );
        let Endpoint::Msgq(cfg) = Endpoint::parse("msgq://0x1234").unwrap() else {
            panic!("not msgq")
        };
        assert_eq!(cfg.addr, SegmentAddr::Key(0x1234));
        assert_eq!(cfg.max_message, crate::transport::msgq::DEFAULT_MAX_MESSAGE);
    }

    #[test]
    fn shm_mode_selects_the_ring_kind_or_the_permissions() {
        let Endpoint::Shm(cfg) = Endpoint::parse("shm://jobs?mode=mpmc&senders=4&perm=0660").unwrap() else {
            panic!("not shm")
        };
        assert_eq!(
            (cfg.kind, cfg.expect_senders, cfg.mode),
            (RingKind::Mpmc, 4, 0o660)
        );
        let Endpoint::Shm(cfg) = Endpoint::parse("shm://jobs?mode=0640").unwrap() else {
            panic!("not shm")
        };
        assert_eq!((cfg.kind, cfg.mode), (RingKind::Spsc, 0o640));
        assert!(err("shm://jobs?mode=fifo").contains("octal"));
        assert!(err("shm://jobs?senders=x").contains("whole number"));
    }

    #[test]
    fn bad_endpoints_say_what_was_expected() {
        assert!(err("msgq://jobs?capacity=8").contains("msgq:// takes max_message"));
        assert!(err("msgq://jobs?mode=rw").contains("octal"));
        assert!(err("msgq://jobs?max_message").contains("key=value"));
        assert!(err("msgq://a/b").contains("characters"));
        assert!(err("foo://x").contains("expected shm://, msgq://, unix://, tcp:// or auto://"));
        assert!(err("jobs").contains("msgq://NAME"));
        assert!(err("tcp://127.0.0.1").contains("HOST:PORT"));
    }
}
