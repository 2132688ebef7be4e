//! `zenoh://KEYEXPR` (feature `zenoh`): a channel over [Zenoh](https://zenoh.io) pub/sub, for
//! peers on other machines, through Zenoh's links, routers, TLS and authentication.
//!
//! A [`ZenohSender`] publishes each message as one sample on the key expression, reliably, with
//! congestion control `Block` (a slow receiver holds the sender back: nothing is dropped); a
//! [`ZenohReceiver`] subscribes to it. Options (in the endpoint's query):
//! - `connect=LOCATOR` and `listen=LOCATOR` (each repeatable), Zenoh locators such as
//!   `tcp/127.0.0.1:7447` or `tls/host:7447`; by default a peer connects nowhere and listens
//!   nowhere, so give at least one of them to one end (or `scouting=true`).
//! - `mode=peer|client` (default `peer`; a client needs `connect=` to a router).
//! - `scouting=true` turns on multicast and gossip scouting (off by default: only the links you
//!   name exist).
//! - `config=PATH`: a Zenoh JSON5 configuration file (TLS, authentication, routers ...) that the
//!   options above are then applied to.
//! - `max_message=BYTES` (default 1 MiB): a sender refuses longer messages with `TooLarge`.
//! - `lease=MS`: Zenoh's link lease (default 10 s): how long a peer may be silent (hung, or a
//!   receiver stalled with a full buffer) before its link is dropped.
//!
//! # Wire format and end of stream
//! Each sample's payload is a 16-byte header, the sender's 64-bit random id and the message's
//! sequence number (both little endian), then the message. The sender's last sample, sent when
//! it is dropped, has sequence number `u64::MAX` and no message: the in-band end of stream,
//! behind every message on the same reliable link (the session is then closed, which flushes
//! it). Each sender also declares a liveliness token, `shmpipe-live/KEYEXPR/ID`.
//!
//! A receiver returns `Disconnected` once it has seen at least one sender, every sender it has
//! seen has ended (its end-of-stream sample, or its liveliness token gone: a killed process,
//! noticed by the link's TCP reset at once, a hung one after the lease), and everything
//! received is drained. Before any sender appears it waits, as a shared-memory receiver does.
//!
//! Zenoh's reliability holds within one link session: a link dropped and re-established (a
//! receiver stalled longer than the lease) can lose samples without an error. The sequence
//! numbers make that visible: the receiver returns [`RecvError::Lagged`]`(n)` (as a lapped
//! broadcast subscriber does) with the number of a sender's messages it never got, then goes on.
//!
//! A sender waits for its first subscriber (`try_send` is `Full` until one matches, so nothing
//! is published into the void); once it has had one and none is left, it is `Disconnected`. A
//! `send_timeout`'s deadline bounds that wait, not a publication held back by the link's flow
//! control (which waits for the receiver for up to 10 minutes, then drops the link).
//!
//! **fork()**: an end inherited by a forked child returns `Forked` from every call there, and
//! its drop leaves the parent's session untouched (the child has none of Zenoh's threads; the
//! copy is leaked, not closed), as for the other transports.
//!
//! Zenoh runs its own threads (about eight per process); these ends are blocking and need no
//! runtime. Async ends are not offered: Zenoh refuses tokio's current-thread runtime.

use crate::channel::{Receiver, Sender};
use crate::error::*;
use crate::ring::Peer;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};
use zenoh::handlers::FifoChannelHandler;
use zenoh::liveliness::LivelinessToken;
use zenoh::matching::{MatchingListener, MatchingStatus};
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::CongestionControl;
use zenoh::sample::{Sample, SampleKind};
use zenoh::{Session, Wait};

/// Default largest message: 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Bytes before each message in a sample: the sender's id and the sequence number.
pub const HEADER: usize = 16;
/// The sequence number of a sender's end-of-stream sample.
pub const END_OF_STREAM: u64 = u64::MAX;
/// Most senders a receiver keeps track of: a peer inventing sender ids cannot make it grow
/// without bound (a sample from one more is `Corrupted`).
pub const MAX_SENDERS: usize = 1024;
/// Samples a receiver buffers before Zenoh's link stops reading (the back-pressure point).
const BUFFERED: usize = 1024;
/// How long a blocked publication waits for the receiver before Zenoh drops the link (µs).
const BLOCK_BEFORE_CLOSE_US: u64 = 600_000_000;

/// Zenoh's session mode.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A peer: links to other peers directly (and to routers).
    Peer,
    /// A client: talks through one router (`connect=`).
    Client,
}

/// How to open a Zenoh channel: see the [module documentation](self).
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct ZenohConfig {
    /// The key expression: concrete for a sender; a receiver may use wildcards (`md/*`).
    pub key: String,
    /// Locators to connect to.
    pub connect: Vec<String>,
    /// Locators to listen on.
    pub listen: Vec<String>,
    /// Peer or client.
    pub mode: Mode,
    /// Multicast and gossip scouting (default off).
    pub scouting: bool,
    /// A Zenoh JSON5 configuration file to start from.
    pub config_file: Option<String>,
    /// Largest message in bytes (default 1 MiB).
    pub max_message: usize,
    /// The link lease in milliseconds (`None`: Zenoh's default, 10 s).
    pub lease_ms: Option<u64>,
}

impl ZenohConfig {
    /// Defaults for `key`: a peer, no links, no scouting, messages up to 1 MiB.
    pub fn new(key: impl Into<String>) -> Self {
        ZenohConfig {
            key: key.into(),
            connect: Vec::new(),
            listen: Vec::new(),
            mode: Mode::Peer,
            scouting: false,
            config_file: None,
            max_message: DEFAULT_MAX_MESSAGE,
            lease_ms: None,
        }
    }

    /// Parses the address and query of a `zenoh://KEYEXPR?...` endpoint.
    pub(crate) fn from_endpoint(addr: &str, query: &str) -> Result<Self, Error> {
        let key = zenoh::key_expr::KeyExpr::try_from(addr.to_owned())
            .map_err(|e| Error::Endpoint(format!("zenoh://{addr}: not a key expression: {e}")))?;
        let mut cfg = ZenohConfig::new(key.as_str());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::Endpoint(format!("option {pair:?}: expected key=value")))?;
            match k {
                "connect" => cfg.connect.push(v.to_owned()),
                "listen" => cfg.listen.push(v.to_owned()),
                "mode" => {
                    cfg.mode = match v {
                        "peer" => Mode::Peer,
                        "client" => Mode::Client,
                        _ => return Err(Error::Endpoint(format!("option mode={v:?}: expected peer or client"))),
                    }
                }
                "scouting" => cfg.scouting = crate::endpoint::parse_bool(k, v)?,
                "config" => cfg.config_file = Some(v.to_owned()),
                "max_message" => cfg.max_message = crate::endpoint::parse_usize(k, v)?,
                "lease" => cfg.lease_ms = Some(crate::endpoint::parse_usize(k, v)? as u64),
                _ => {
                    return Err(Error::Endpoint(format!(
                        "unknown option {k:?}; zenoh:// takes connect, listen, mode, scouting, config, max_message, lease"
                    )))
                }
            }
        }
        if cfg.max_message == 0 {
            return Err(Error::InvalidConfig("max_message must be at least 1".into()));
        }
        if cfg.mode == Mode::Client && cfg.connect.is_empty() && cfg.config_file.is_none() {
            return Err(Error::InvalidConfig(
                "zenoh:// mode=client needs connect= (a router's locator)".into(),
            ));
        }
        Ok(cfg)
    }

    /// The Zenoh configuration of a session for this channel.
    fn zenoh_config(&self) -> Result<zenoh::Config, Error> {
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::InvalidConfig(format!("zenoh {what}: {e}"));
        let mut c = match &self.config_file {
            Some(path) => zenoh::Config::from_file(path).map_err(|e| bad("config file", &e))?,
            None => zenoh::Config::default(),
        };
        let json = |v: &[String]| {
            let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", quoted.join(","))
        };
        let mode = match self.mode {
            Mode::Peer => r#""peer""#,
            Mode::Client => r#""client""#,
        };
        let mut set = |key: &str, value: &str| c.insert_json5(key, value).map_err(|e| bad(key, &e));
        set("mode", mode)?;
        // A peer listens on every interface by default: only the links asked for exist.
        if self.config_file.is_none() || !self.listen.is_empty() {
            set("listen/endpoints", &json(&self.listen))?;
        }
        if self.config_file.is_none() || !self.connect.is_empty() {
            set("connect/endpoints", &json(&self.connect))?;
        }
        if self.config_file.is_none() || self.scouting {
            let on = if self.scouting { "true" } else { "false" };
            set("scouting/multicast/enabled", on)?;
            set("scouting/gossip/enabled", on)?;
        }
        // A blocked publication (the receiver's buffer full) waits this long before Zenoh drops
        // the link; the default (5 s) would turn a short stall into silent loss. (-1, "for
        // ever", panics in zenoh 1.10.)
        set(
            "transport/link/tx/queue/congestion_control/block/wait_before_close",
            &BLOCK_BEFORE_CLOSE_US.to_string(),
        )?;
        if let Some(ms) = self.lease_ms {
            set("transport/link/tx/lease", &ms.to_string())?;
        }
        Ok(c)
    }

    fn open_session(&self) -> Result<Session, Error> {
        zenoh::open(self.zenoh_config()?).wait().map_err(|e| Error::Io {
            op: "opening a zenoh session",
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Opens a session and declares a publisher on the key expression.
    pub fn open_sender(&self) -> Result<ZenohSender, Error> {
        let key = zenoh::key_expr::KeyExpr::try_from(self.key.clone())
            .map_err(|e| Error::Endpoint(format!("zenoh://{}: {e}", self.key)))?;
        if key.as_str().contains('*') || key.as_str().contains('$') {
            return Err(Error::Endpoint(format!(
                "zenoh://{}: a sender needs a key without wildcards",
                self.key
            )));
        }
        let failed = |op: &'static str| {
            move |e: zenoh::Error| Error::Io {
                op,
                source: std::io::Error::other(e.to_string()),
            }
        };
        let session = self.open_session()?;
        let id = random_id();
        let token = session
            .liveliness()
            .declare_token(format!("shmpipe-live/{}/{id:016x}", self.key))
            .wait()
            .map_err(failed("declaring a zenoh liveliness token"))?;
        let publisher = session
            .declare_publisher(key)
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(failed("declaring a zenoh publisher"))?;
        let matching = publisher
            .matching_listener()
            .wait()
            .map_err(failed("declaring a zenoh matching listener"))?;
        let matched = publisher
            .matching_status()
            .wait()
            .map_err(failed("asking a zenoh publisher's matching status"))?
            .matching();
        Ok(ZenohSender {
            link: ManuallyDrop::new(SenderLink {
                publisher,
                matching,
                _token: token,
                session,
            }),
            generation: crate::sys::fork::arm(),
            matched,
            had_subscriber: matched,
            id,
            seq: 0,
            sent: 0,
            max_message: self.max_message,
        })
    }

    /// Opens a session and subscribes to the key expression.
    pub fn open_receiver(&self) -> Result<ZenohReceiver, Error> {
        let failed = |op: &'static str| {
            move |e: zenoh::Error| Error::Io {
                op,
                source: std::io::Error::other(e.to_string()),
            }
        };
        let session = self.open_session()?;
        let data = session
            .declare_subscriber(self.key.clone())
            .with(zenoh::handlers::FifoChannel::new(BUFFERED))
            .wait()
            .map_err(failed("declaring a zenoh subscriber"))?;
        let live = session
            .liveliness()
            .declare_subscriber(format!("shmpipe-live/{}/*", self.key))
            .history(true)
            .with(zenoh::handlers::FifoChannel::new(256))
            .wait()
            .map_err(failed("declaring a zenoh liveliness subscriber"))?;
        Ok(ZenohReceiver {
            link: ManuallyDrop::new(ReceiverLink { data, live, session }),
            generation: crate::sys::fork::arm(),
            senders: HashMap::new(),
            held: None,
        })
    }
}

/// A random sender id: the clock and the pid, mixed (distinct senders, not a secret).
fn random_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The sending end of a `zenoh://` channel: see the [module documentation](self).
pub struct ZenohSender {
    /// The Zenoh objects: dropped by our `Drop` in the process that opened them, leaked in a
    /// forked child (Zenoh's threads do not exist there; undeclaring would wait on them).
    link: ManuallyDrop<SenderLink>,
    /// The fork generation (`sys::fork`) it was opened in: another one means inherited.
    generation: u32,
    /// Whether a subscriber matches now (as the matching listener last said).
    matched: bool,
    /// Whether one ever did: after that, none left is `Disconnected`.
    had_subscriber: bool,
    id: u64,
    seq: u64,
    sent: u64,
    max_message: usize,
}

struct SenderLink {
    publisher: Publisher<'static>,
    matching: MatchingListener<FifoChannelHandler<MatchingStatus>>,
    _token: LivelinessToken,
    session: Session,
}

impl ZenohSender {
    /// Messages sent so far.
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    /// Applies the matching listener's news, without waiting.
    fn refresh(&mut self) {
        while let Ok(Some(status)) = self.link.matching.try_recv() {
            self.matched = status.matching();
            self.had_subscriber |= self.matched;
        }
    }

    /// Room to publish: a subscriber matches.
    fn ready(&mut self, len: usize) -> Result<(), TrySendError> {
        if crate::sys::fork::generation() != self.generation {
            return Err(TrySendError::Forked);
        }
        if len > self.max_message {
            return Err(TrySendError::TooLarge(TooLarge {
                len,
                max: self.max_message,
            }));
        }
        self.refresh();
        match (self.matched, self.had_subscriber) {
            (true, _) => Ok(()),
            (false, true) => Err(TrySendError::Disconnected),
            (false, false) => Err(TrySendError::Full),
        }
    }

    fn publish(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        let mut sample = Vec::with_capacity(HEADER + msg.len());
        sample.extend_from_slice(&self.id.to_le_bytes());
        sample.extend_from_slice(&self.seq.to_le_bytes());
        sample.extend_from_slice(msg);
        self.link
            .publisher
            .put(sample)
            .wait()
            .map_err(|_| TrySendError::Disconnected)?;
        self.seq += 1;
        self.sent += 1;
        Ok(())
    }
}

impl Sender for ZenohSender {
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.ready(msg.len())?;
        self.publish(msg)
    }

    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        loop {
            match self.ready(msg.len()) {
                Ok(()) => return Ok(self.publish(msg)?),
                Err(TrySendError::Full) => {}
                Err(e) => return Err(e.into()),
            }
            // No subscriber yet: wait for the matching listener's news.
            let status = match deadline {
                Some(d) if Instant::now() >= d => return Err(SendTimeoutError::Timeout),
                Some(d) => self.link.matching.recv_deadline(d),
                None => self.link.matching.recv().map(Some),
            };
            match status {
                Ok(Some(s)) => {
                    self.matched = s.matching();
                    self.had_subscriber |= self.matched;
                }
                Ok(None) => {}
                Err(_) => return Err(SendTimeoutError::Disconnected),
            }
        }
    }

    fn max_message_size(&self) -> usize {
        self.max_message
    }
}

impl Drop for ZenohSender {
    fn drop(&mut self) {
        if crate::sys::fork::generation() != self.generation {
            // Inherited across fork(): the parent's stream goes on; leak this copy untouched.
            return;
        }
        // SAFETY: `drop` runs once, and `link` is not used after this.
        let link = unsafe { ManuallyDrop::take(&mut self.link) };
        // The end of stream, in band, then a close that flushes it (and everything before it)
        // before the liveliness token goes.
        let mut eos = Vec::with_capacity(HEADER);
        eos.extend_from_slice(&self.id.to_le_bytes());
        eos.extend_from_slice(&END_OF_STREAM.to_le_bytes());
        let _ = link.publisher.put(eos).wait();
        let _ = link.session.close().wait();
    }
}

impl std::fmt::Debug for ZenohSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZenohSender")
            .field("id", &format_args!("{:016x}", self.id))
            .field("sent", &self.sent)
            .field("matched", &self.matched)
            .finish()
    }
}

/// What a receiver knows of one sender.
struct SenderState {
    /// The sequence number expected next.
    next: u64,
    /// Its end of stream arrived, or its liveliness token went.
    ended: bool,
    /// Its end of stream arrived (a clean close, not a death).
    closed: bool,
}

impl SenderState {
    fn new() -> Self {
        SenderState {
            next: 0,
            ended: false,
            closed: false,
        }
    }
}

/// The receiving end of a `zenoh://` channel: see the [module documentation](self).
pub struct ZenohReceiver {
    /// As the sender's: leaked in a forked child.
    link: ManuallyDrop<ReceiverLink>,
    /// The fork generation it was opened in.
    generation: u32,
    /// Senders seen, by id.
    senders: HashMap<u64, SenderState>,
    /// A message held back while a gap before it was reported (`Lagged`).
    held: Option<Vec<u8>>,
}

struct ReceiverLink {
    data: Subscriber<FifoChannelHandler<Sample>>,
    live: Subscriber<FifoChannelHandler<Sample>>,
    session: Session,
}

impl ZenohReceiver {
    /// Takes in the liveliness news: senders appearing and going.
    fn watch(&mut self) {
        while let Ok(Some(s)) = self.link.live.try_recv() {
            let key = s.key_expr().as_str();
            let Some(id) = key
                .rsplit('/')
                .next()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            if self.senders.len() >= MAX_SENDERS && !self.senders.contains_key(&id) {
                // Past the bound: a token we cannot track (its data samples are refused).
                continue;
            }
            let state = self.senders.entry(id).or_insert(SenderState::new());
            // (A token's news after its end of stream changes nothing: it closed.)
            state.ended = state.closed || s.kind() == SampleKind::Delete;
        }
    }

    /// Every sender seen has ended (and at least one was seen).
    fn all_ended(&self) -> bool {
        !self.senders.is_empty() && self.senders.values().all(|s| s.ended)
    }

    /// Takes in one sample: `Ok(true)` with a message in `buf`; `Ok(false)` for a sender's end
    /// of stream or a repeat; `Lagged(n)` for a gap of `n` before a message, which is then held
    /// for the next call.
    fn take(&mut self, sample: Sample, buf: &mut Vec<u8>) -> Result<bool, TryRecvError> {
        let payload = sample.payload().to_bytes();
        if payload.len() < HEADER {
            return Err(TryRecvError::Corrupted(Corrupted {
                reason: format!(
                    "a zenoh sample of {} bytes, shorter than the 16-byte header",
                    payload.len()
                ),
            }));
        }
        let id = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
        if self.senders.len() >= MAX_SENDERS && !self.senders.contains_key(&id) {
            return Err(TryRecvError::Corrupted(Corrupted {
                reason: format!("a sample from a sender beyond the {MAX_SENDERS} this receiver tracks"),
            }));
        }
        let state = self.senders.entry(id).or_insert(SenderState::new());
        if seq == END_OF_STREAM {
            state.ended = true;
            state.closed = true;
            return Ok(false);
        }
        if seq < state.next {
            // Repeated (or from before a restart of this receiver's view): already delivered.
            return Ok(false);
        }
        let gap = seq - state.next;
        state.next = seq + 1;
        buf.clear();
        buf.extend_from_slice(&payload[HEADER..]);
        if gap > 0 {
            self.held = Some(std::mem::take(buf));
            return Err(TryRecvError::Lagged(gap));
        }
        Ok(true)
    }

    /// One sample if there is one now, or the end of the stream.
    fn poll(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        if crate::sys::fork::generation() != self.generation {
            return Err(TryRecvError::Forked);
        }
        if let Some(held) = self.held.take() {
            *buf = held;
            return Ok(());
        }
        loop {
            match self.link.data.try_recv() {
                Ok(Some(sample)) => {
                    if self.take(sample, buf)? {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    self.watch();
                    // Empty, and nobody will send more: drained.
                    return Err(if self.all_ended() {
                        TryRecvError::Disconnected
                    } else {
                        TryRecvError::Empty
                    });
                }
                Err(_) => return Err(TryRecvError::Disconnected),
            }
        }
    }
}

/// How long a waiting receiver sleeps on its data channel before it looks at the senders'
/// liveliness again.
const LOOK: Duration = Duration::from_millis(20);

impl Receiver for ZenohReceiver {
    /// `NotYet` before any sender was seen, `Alive` while one has not ended, then `Closed` if
    /// every sender sent its end of stream, `Dead` if one's liveliness token went without it.
    fn peer(&self) -> Option<Peer> {
        Some(if self.senders.is_empty() {
            Peer::NotYet
        } else if !self.all_ended() {
            Peer::Alive
        } else if self.senders.values().all(|s| s.closed) {
            Peer::Closed
        } else {
            Peer::Dead
        })
    }

    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        self.poll(buf)
    }

    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        loop {
            match self.poll(buf) {
                Err(TryRecvError::Empty) => {}
                r => return r.map_err(Into::into),
            }
            let now = Instant::now();
            let until = match deadline {
                Some(d) if now >= d => return Err(RecvTimeoutError::Timeout),
                Some(d) => d.min(now + LOOK),
                None => now + LOOK,
            };
            match self.link.data.recv_deadline(until) {
                Ok(Some(sample)) => {
                    if self.take(sample, buf)? {
                        return Ok(());
                    }
                }
                Ok(None) => {}
                Err(_) => return Err(RecvTimeoutError::Disconnected),
            }
        }
    }
}

impl Drop for ZenohReceiver {
    fn drop(&mut self) {
        if crate::sys::fork::generation() != self.generation {
            // Inherited across fork(): leak this copy untouched (see `ZenohSender`'s drop).
            return;
        }
        // SAFETY: `drop` runs once, and `link` is not used after this.
        let link = unsafe { ManuallyDrop::take(&mut self.link) };
        let _ = link.session.close().wait();
    }
}

impl std::fmt::Debug for ZenohReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZenohReceiver")
            .field("senders", &self.senders.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a loopback port")
            .port()
    }

    /// A raw Zenoh publisher on `key` (no header of ours), once a subscriber matches it.
    fn matched_publisher<'a>(session: &'a Session, key: &str) -> Publisher<'a> {
        let publisher = session
            .declare_publisher(key.to_string())
            .congestion_control(CongestionControl::Block)
            .wait()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !publisher.matching_status().wait().unwrap().matching() {
            assert!(Instant::now() < deadline, "never matched");
            std::thread::sleep(Duration::from_millis(10));
        }
        publisher
    }

    /// A hand-made sender (a raw Zenoh publisher writing our header) skips sequence numbers 2-4,
    /// repeats 1 and sends its end of stream: the receiver reports the gap exactly, drops the
    /// repeat, and ends the stream.
    #[test]
    fn a_gap_in_a_senders_sequence_is_lagged_and_a_repeat_is_dropped() {
        let port = free_port();
        let key = format!("shmpipe-unit/gap-{}", std::process::id());
        let rx_cfg = ZenohConfig::from_endpoint(&key, &format!("listen=tcp/127.0.0.1:{port}")).unwrap();
        let mut rx = rx_cfg.open_receiver().unwrap();
        let tx_cfg = ZenohConfig::from_endpoint(&key, &format!("connect=tcp/127.0.0.1:{port}")).unwrap();
        let session = tx_cfg.open_session().unwrap();
        let publisher = matched_publisher(&session, &key);
        let sample = |seq: u64, body: &[u8]| {
            let mut v = 7u64.to_le_bytes().to_vec();
            v.extend_from_slice(&seq.to_le_bytes());
            v.extend_from_slice(body);
            v
        };
        for (seq, body) in [(0, &b"zero"[..]), (1, b"one"), (1, b"one again"), (5, b"five")] {
            publisher.put(sample(seq, body)).wait().unwrap();
        }
        publisher.put(vec![1u8; 3]).wait().unwrap();
        publisher.put(sample(END_OF_STREAM, b"")).wait().unwrap();
        let mut buf = Vec::new();
        let t = Duration::from_secs(20);
        rx.recv_timeout(&mut buf, t).unwrap();
        assert_eq!(buf, b"zero");
        rx.recv_timeout(&mut buf, t).unwrap();
        assert_eq!(buf, b"one");
        assert_eq!(rx.recv_timeout(&mut buf, t), Err(RecvTimeoutError::Lagged(3)));
        rx.recv_timeout(&mut buf, t).unwrap();
        assert_eq!(buf, b"five");
        // A sample too short for the header is corrupt (and consumed: the next call goes on).
        assert!(matches!(
            rx.recv_timeout(&mut buf, t),
            Err(RecvTimeoutError::Corrupted(_))
        ));
        // Sender 7 ended in band, and it is the only one seen.
        assert_eq!(rx.recv_timeout(&mut buf, t), Err(RecvTimeoutError::Disconnected));
        session.close().wait().unwrap();
    }

    /// A peer inventing sender ids: the receiver tracks at most `MAX_SENDERS`, and a sample
    /// from one more is `Corrupted`, not more memory.
    #[test]
    fn a_flood_of_sender_ids_is_bounded() {
        let port = free_port();
        let key = format!("shmpipe-unit/flood-{}", std::process::id());
        let mut rx = ZenohConfig::from_endpoint(&key, &format!("listen=tcp/127.0.0.1:{port}"))
            .unwrap()
            .open_receiver()
            .unwrap();
        let session = ZenohConfig::from_endpoint(&key, &format!("connect=tcp/127.0.0.1:{port}"))
            .unwrap()
            .open_session()
            .unwrap();
        let publisher = matched_publisher(&session, &key);
        let receiving = std::thread::spawn(move || {
            let mut buf = Vec::new();
            for n in 0..MAX_SENDERS {
                rx.recv_timeout(&mut buf, Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("sender {n}: {e:?}"));
            }
            rx.recv_timeout(&mut buf, Duration::from_secs(20))
        });
        for id in 0..=MAX_SENDERS as u64 {
            let mut v = id.to_le_bytes().to_vec();
            v.extend_from_slice(&0u64.to_le_bytes());
            publisher.put(v).wait().unwrap();
        }
        assert!(matches!(
            receiving.join().unwrap(),
            Err(RecvTimeoutError::Corrupted(_))
        ));
        session.close().wait().unwrap();
    }

    #[test]
    fn endpoint_options_reach_the_config() {
        let cfg = ZenohConfig::from_endpoint(
            "md/eurusd",
            "connect=tcp/10.0.0.1:7447&connect=tcp/10.0.0.2:7447&mode=client&lease=2000&max_message=64",
        )
        .unwrap();
        assert_eq!(cfg.connect, ["tcp/10.0.0.1:7447", "tcp/10.0.0.2:7447"]);
        assert_eq!(
            (cfg.mode, cfg.lease_ms, cfg.max_message),
            (Mode::Client, Some(2000), 64)
        );
        assert!(cfg.zenoh_config().is_ok());
        assert!(
            ZenohConfig::from_endpoint("a//b", "").is_err(),
            "not a key expression"
        );
    }
}
