//! Endpoint strings, parsed in one place: `SCHEME://ADDRESS?option=value&...`.
//!
//! Supported now:
//! - `shm://NAME` and `shm://0xKEY`, with options `capacity` (slots, power of two),
//!   `max_message` (bytes), `mode` (octal permission bits, e.g. `0660`), `allow_other_owner`
//!   (`true`/`false`), `wait` (`spin`, `park` or the default `adaptive`).
//! - `unix:///absolute/path.sock` and `tcp://HOST:PORT` (`tcp://127.0.0.1:8080`,
//!   `tcp://[::1]:9000`, `tcp://localhost:8080`), with options `max_message` (bytes),
//!   `listen` (`receiver`, the default, or `sender`: which end binds and accepts) and
//!   `connect_timeout_ms` (how long the other end retries connecting). See
//!   [`transport::socket`](crate::transport::socket).

use crate::channel::{Receiver, Sender};
use crate::error::Error;
use crate::ring::WaitStrategy;
use crate::transport::shm::{SegmentAddr, ShmConfig};
use crate::transport::socket::SocketConfig;

/// A parsed endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Endpoint {
    /// A ring in a System V shared-memory segment.
    Shm(ShmConfig),
    /// A Unix-domain or TCP stream socket.
    Socket(SocketConfig),
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
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

impl Endpoint {
    /// Parses `shm://NAME[?options]`, `unix:///PATH[?options]` or `tcp://HOST:PORT[?options]`.
    ///
    /// ```
    /// use shmpipe::endpoint::Endpoint;
    /// let Endpoint::Shm(cfg) = Endpoint::parse("shm://orders?capacity=4096&max_message=256").unwrap() else {
    ///     unreachable!()
    /// };
    /// assert_eq!(cfg.capacity, 4096);
    /// assert!(Endpoint::parse("shm://orders?capacity=lots").is_err());
    /// assert!(Endpoint::parse("orders").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            Error::Endpoint(format!(
                "{s:?} has no scheme; expected shm://NAME, shm://0xKEY, unix:///PATH or tcp://HOST:PORT"
            ))
        })?;
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        match scheme {
            "shm" => {
                let mut cfg = ShmConfig::new(SegmentAddr::parse(addr)?);
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| Error::Endpoint(format!("option {pair:?}: expected key=value")))?;
                    match k {
                        "capacity" => cfg.capacity = parse_usize(k, v)?,
                        "max_message" => cfg.max_message = parse_usize(k, v)?,
                        "mode" => {
                            cfg.mode = u32::from_str_radix(v, 8).map_err(|_| {
                                Error::Endpoint(format!("option mode={v:?}: expected octal bits like 0600"))
                            })?
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
                                "unknown option {k:?}; shm:// takes capacity, max_message, mode, \
                                 allow_other_owner, wait"
                            )))
                        }
                    }
                }
                Ok(Endpoint::Shm(cfg))
            }
            "unix" | "tcp" => Ok(Endpoint::Socket(SocketConfig::from_endpoint(
                scheme, addr, query,
            )?)),
            other => Err(Error::Endpoint(format!(
                "unsupported scheme {other:?}; expected shm://, unix:// or tcp://"
            ))),
        }
    }
}

/// Opens the sending end of the channel at `endpoint` (creating a ring if needed; binding or
/// connecting a socket as its `listen` option says).
pub fn open_sender(endpoint: &str) -> Result<Box<dyn Sender + Send>, Error> {
    match Endpoint::parse(endpoint)? {
        Endpoint::Shm(cfg) => Ok(Box::new(cfg.open_sender()?)),
        Endpoint::Socket(cfg) => Ok(Box::new(cfg.open_sender()?)),
    }
}

/// Opens the receiving end of the channel at `endpoint` (creating a ring if needed; binding or
/// connecting a socket as its `listen` option says).
pub fn open_receiver(endpoint: &str) -> Result<Box<dyn Receiver + Send>, Error> {
    match Endpoint::parse(endpoint)? {
        Endpoint::Shm(cfg) => Ok(Box::new(cfg.open_receiver()?)),
        Endpoint::Socket(cfg) => Ok(Box::new(cfg.open_receiver()?)),
    }
}
