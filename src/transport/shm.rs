//! The shared-memory transport: an SPSC ring in a System V segment.
//!
//! Lifecycle, PostgreSQL-style (`sysv_shmem.c`): create with `IPC_CREAT | IPC_EXCL`, mode 0600.
//! On `EEXIST`, `IPC_STAT` the segment, refuse it if its owner or permissions are not acceptable,
//! attach, and trust nothing until the header validates (magic, layout version, name, geometry
//! against the real segment size). Then, under a small lock word in the segment whose holder is
//! recorded by pid (so a holder killed inside it is detected and the lock taken over):
//!
//! - a segment nobody else has attached (`shm_nattch == 1`, just us) is *stale* and recycled:
//!   flagged `RECYCLED`, `IPC_RMID`, and created afresh. The one exception is a stream whose
//!   sender finished (closed or died) before any receiver came: a receiver claims it and drains it.
//! - otherwise the role asked for is claimed if vacant, and refused as in use if held.
//!
//! Who removes the segment: the receiver, always, when it drops (nobody will read again); the
//! sender when it drops after the receiver is gone, or when nothing was sent and no receiver ever
//! came. A sender that leaves unread messages and no receiver leaves the segment for the next
//! receiver, as a message queue would. When both ends die, the segment is stale and the next
//! `open` recycles it.

use crate::error::Error;
use crate::inspect::RingStatus;
use crate::ring::broadcast::{
    self, BcSlots, BroadcastBacking, BroadcastCore, BroadcastShared, Overflow, Subscription, MAX_SUBSCRIBERS,
};
use crate::ring::layout::{self, Header, HeaderCheck, Layout, FLAG_RECYCLED, MAX_NAME_LEN};
use crate::ring::lock::RingLock;
use crate::ring::mpmc::MAX_MEMBERS;
use crate::ring::mpmc::{self, MpmcBacking, MpmcCore, MpmcShared};
use crate::ring::records::Records;
use crate::ring::spsc::{Backing, Consumer, Producer, RingCore, SpscShared};
use crate::ring::tokens::{self, Tokens, LOCK_SEM};
use crate::ring::{Geometry, Peer, RingKind, Role, Slots, WaitStrategy};
use crate::sys::proc::{self, ProcessId};
use crate::sys::sem::{self, SemId};
use crate::sys::shm::{self, Attachment, ShmId, SHM_DEST};
use crate::transport::sysv::{check_owner, io_err, is_gone, Owner};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sending end of a shared-memory channel.
pub type ShmSender = Producer;
/// The receiving end of a shared-memory channel.
pub type ShmReceiver = Consumer;

/// Default number of slots.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Default largest message, in bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 1024;

/// Where a ring lives: a name (hashed to a SysV key) or a raw key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentAddr {
    /// `shm://NAME`: 1 to 64 bytes of `[A-Za-z0-9._-]`, key = [`key_for_name`].
    Name(String),
    /// `shm://0xKEY`: a raw, non-zero SysV key. The header's name is not checked.
    Key(i32),
}

impl SegmentAddr {
    /// Parses the part of an endpoint after `shm://`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            let key = u32::from_str_radix(hex, 16)
                .map_err(|_| Error::Endpoint(format!("{s:?} is not a hex SysV key like 0x1234abcd")))?;
            if key == 0 {
                return Err(Error::Endpoint(
                    "key 0x0 is IPC_PRIVATE and cannot be shared".into(),
                ));
            }
            return Ok(SegmentAddr::Key(key as i32));
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.chars().all(valid) {
            return Err(Error::Endpoint(format!(
                "ring name {s:?} must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
            )));
        }
        Ok(SegmentAddr::Name(s.to_owned()))
    }

    /// The SysV key.
    pub fn key(&self) -> i32 {
        match self {
            SegmentAddr::Name(n) => key_for_name(n),
            SegmentAddr::Key(k) => *k,
        }
    }

    fn header_name(&self) -> String {
        match self {
            SegmentAddr::Name(n) => n.clone(),
            SegmentAddr::Key(k) => format!("{:#010x}", *k as u32),
        }
    }
}

/// The documented name → key mapping: 32-bit FNV-1a of `"shmpipe:" + name`, top bit cleared
/// (keys print as positive numbers), and 0 (IPC_PRIVATE) mapped to 1.
pub fn key_for_name(name: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in b"shmpipe:".iter().chain(name.as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    match (h & 0x7fff_ffff) as i32 {
        0 => 1,
        k => k,
    }
}

/// How to open or create a shared-memory ring.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct ShmConfig {
    /// Where the ring lives.
    pub addr: SegmentAddr,
    /// A ring this call creates holds at least this many messages of `max_message` bytes
    /// (MPMC: exactly, in as many slots; a power of two). An existing ring keeps its own.
    pub capacity: usize,
    /// SPSC only: size a ring this call creates by its message memory instead, in bytes
    /// ([`Geometry::with_bytes`]; `capacity` is then ignored). Small messages are stored densely:
    /// 1 MiB holds about 65,500 messages of up to 8 bytes.
    pub bytes: Option<usize>,
    /// Largest message in a ring this call creates. An existing ring keeps its own; see
    /// [`Sender::max_message_size`](crate::Sender::max_message_size).
    pub max_message: usize,
    /// Permission bits for a new segment (default 0600). An existing segment with write
    /// permission beyond these bits is refused.
    pub mode: u32,
    /// Accept a segment owned by another uid (default: refuse).
    pub allow_other_owner: bool,
    /// How blocking calls wait.
    pub wait: WaitStrategy,
    /// How long `open` may retry while another process is creating, recycling or closing the ring.
    pub open_timeout: Duration,
    /// The ring algorithm of a ring this call creates (default SPSC). Opening an existing ring
    /// of the other kind is an [`Error::InvalidConfig`].
    pub kind: RingKind,
    /// MPMC receivers: the end of the stream is when at least this many senders have joined and
    /// none is left (default 1). See [`mpmc::Consumer::set_expect_senders`].
    pub expect_senders: u32,
    /// Broadcast rings: what the publisher of a ring this call creates does when the slowest
    /// subscriber is a ring behind (default [`Overflow::Block`]). Opening an existing ring with
    /// the other policy is an [`Error::InvalidConfig`].
    pub overflow: Overflow,
    /// Broadcast subscribers: tethered or not, and where to start.
    pub subscription: Subscription,
    /// Broadcast publishers: wait until this many subscribers have joined before the first
    /// message goes out (default 0). See [`broadcast::Publisher::set_expect_subscribers`].
    pub expect_subscribers: u32,
}

impl ShmConfig {
    /// Defaults for the ring at `addr`: 1024 slots of up to 1024 bytes, mode 0600.
    pub fn new(addr: SegmentAddr) -> Self {
        ShmConfig {
            addr,
            capacity: DEFAULT_CAPACITY,
            bytes: None,
            max_message: DEFAULT_MAX_MESSAGE,
            mode: 0o600,
            allow_other_owner: false,
            wait: WaitStrategy::default(),
            open_timeout: Duration::from_secs(5),
            kind: RingKind::Spsc,
            expect_senders: 1,
            overflow: Overflow::Block,
            subscription: Subscription::default(),
            expect_subscribers: 0,
        }
    }

    /// Defaults for the ring named `name` (see [`SegmentAddr::parse`]).
    pub fn named(name: &str) -> Result<Self, Error> {
        Ok(Self::new(SegmentAddr::parse(name)?))
    }

    /// Sets the capacity (messages of the maximum size) for a ring this call creates.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// SPSC: sizes a ring this call creates by its message memory, in bytes (see
    /// [`bytes`](Self::bytes)).
    ///
    /// ```
    /// use shmpipe::transport::shm::ShmConfig;
    /// let cfg = ShmConfig::named("ticks").unwrap().ring_bytes(1 << 20).max_message(64);
    /// assert!(cfg.geometry().unwrap().messages_of(8) > 65_000);
    /// ```
    pub fn ring_bytes(mut self, bytes: usize) -> Self {
        self.bytes = Some(bytes);
        self
    }

    /// The geometry of a ring this call would create, checked.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        match (self.bytes, self.kind) {
            (None, _) => Geometry::new(self.capacity, self.max_message),
            (Some(bytes), RingKind::Spsc) => Geometry::with_bytes(bytes, self.max_message),
            (Some(_), kind) => Err(Error::InvalidConfig(format!(
                "a ring's size in bytes applies to SPSC rings; an {kind} ring has `capacity` slots"
            ))),
        }
    }

    /// Sets the largest message for a ring this call creates.
    pub fn max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// Sets the ring algorithm for a ring this call creates.
    pub fn kind(mut self, kind: RingKind) -> Self {
        self.kind = kind;
        self
    }

    /// Opens (or creates) the SPSC ring and takes its sending end.
    pub fn open_sender(&self) -> Result<ShmSender, Error> {
        let core = open(self.as_kind(RingKind::Spsc)?, Role::Sender)?.spsc();
        let mut tx = Producer::new(core).map_err(Error::Corrupted)?;
        tx.set_wait_strategy(self.wait);
        Ok(tx)
    }

    /// Opens (or creates) the SPSC ring and takes its receiving end.
    pub fn open_receiver(&self) -> Result<ShmReceiver, Error> {
        let core = open(self.as_kind(RingKind::Spsc)?, Role::Receiver)?.spsc();
        let mut rx = Consumer::new(core).map_err(Error::Corrupted)?;
        rx.set_wait_strategy(self.wait);
        Ok(rx)
    }

    /// Opens (or creates) the MPMC ring and joins it as one more sender.
    ///
    /// ```no_run
    /// use shmpipe::{transport::shm::ShmConfig, ring::RingKind, Sender};
    /// let mut tx = ShmConfig::named("jobs")?.kind(RingKind::Mpmc).open_mpmc_sender()?;
    /// tx.send(b"job 1")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_mpmc_sender(&self) -> Result<mpmc::Producer, Error> {
        let (core, me) = open(self.as_kind(RingKind::Mpmc)?, Role::Sender)?.mpmc();
        let mut tx = mpmc::Producer::joined(core, me);
        tx.set_wait_strategy(self.wait);
        Ok(tx)
    }

    /// Opens (or creates) the MPMC ring and joins it as one more receiver.
    pub fn open_mpmc_receiver(&self) -> Result<mpmc::Consumer, Error> {
        let (core, me) = open(self.as_kind(RingKind::Mpmc)?, Role::Receiver)?.mpmc();
        let mut rx = mpmc::Consumer::joined(core, me);
        rx.set_wait_strategy(self.wait);
        rx.set_expect_senders(self.expect_senders);
        Ok(rx)
    }

    /// Opens (or creates) the broadcast ring and takes its publishing end (one at a time).
    ///
    /// ```no_run
    /// use shmpipe::{transport::shm::ShmConfig, ring::RingKind, Sender};
    /// let mut tx = ShmConfig::named("quotes")?.kind(RingKind::Broadcast).open_publisher()?;
    /// tx.send(b"EURUSD 1.0842")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_publisher(&self) -> Result<broadcast::Publisher, Error> {
        let (core, _, _, _) = open(self.as_kind(RingKind::Broadcast)?, Role::Sender)?.broadcast();
        let mut tx = broadcast::Publisher::joined(core, self.expect_subscribers);
        tx.set_wait_strategy(self.wait);
        Ok(tx)
    }

    /// Opens (or creates) the broadcast ring and joins it as one more subscriber
    /// ([`subscription`](Self::subscription) says how).
    pub fn open_subscriber(&self) -> Result<broadcast::Subscriber, Error> {
        let (core, me, pos, window) = open(self.as_kind(RingKind::Broadcast)?, Role::Receiver)?.broadcast();
        let mut rx = broadcast::Subscriber::joined(core, me, pos, window, self.subscription.tethered);
        rx.set_wait_strategy(self.wait);
        Ok(rx)
    }

    /// This configuration, checked to be for a ring of `kind`.
    fn as_kind(&self, kind: RingKind) -> Result<&Self, Error> {
        // The message names both kinds (it used to name the configured one twice, which did not
        // say what the caller had asked for).
        let methods = |k: RingKind| match k {
            RingKind::Spsc => "open_sender / open_receiver",
            RingKind::Mpmc => "open_mpmc_sender / open_mpmc_receiver",
            RingKind::Broadcast => "open_publisher / open_subscriber",
        };
        if self.kind != kind {
            return Err(Error::InvalidConfig(format!(
                "{} needs a configuration for an {kind} ring, this one is for an {} ring (open it with \
                 {}, or set ShmConfig::kind to {kind}, or use an endpoint)",
                methods(kind),
                self.kind,
                methods(self.kind)
            )));
        }
        Ok(self)
    }
}

/// An attached ring segment: owns the attachment that the ring's pointers point into, and knows
/// the ring's semaphore set (its lock and liveness tokens, see `ring::tokens`).
pub(crate) struct SegmentBacking {
    pub(crate) att: Attachment,
    /// `None` only while looking at a header that is not validated yet.
    pub(crate) sems: Option<SemId>,
}

impl SegmentBacking {
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the attachment is at least HEADER_SIZE bytes (checked before construction),
        // page aligned, and Header is all atomics, valid for any bytes.
        unsafe { &*self.att.as_ptr().cast::<Header>() }
    }

    /// The SPSC control block. Only for a segment whose header validated as SPSC.
    pub(crate) fn shared(&self) -> &SpscShared {
        // SAFETY: the attachment covers the control block (size validated against the layout),
        // CONTROL_OFFSET is 128-aligned, and SpscShared is atomics only, valid for any bytes.
        unsafe { &*self.att.as_ptr().add(layout::CONTROL_OFFSET).cast::<SpscShared>() }
    }

    /// The MPMC control block. Only for a segment whose header validated as MPMC (which makes
    /// the attachment at least `MPMC_SLOTS_OFFSET` bytes).
    pub(crate) fn mpmc_shared(&self) -> &MpmcShared {
        assert!(self.att.len() >= layout::MPMC_SLOTS_OFFSET, "validated as mpmc");
        // SAFETY: the attachment covers the control block (checked above), CONTROL_OFFSET is
        // 128-aligned, and MpmcShared is atomics only, valid for any bytes.
        unsafe { &*self.att.as_ptr().add(layout::CONTROL_OFFSET).cast::<MpmcShared>() }
    }

    /// The broadcast control block. Only for a segment whose header validated as broadcast.
    pub(crate) fn broadcast_shared(&self) -> &BroadcastShared {
        assert!(
            self.att.len() >= layout::BROADCAST_SLOTS_OFFSET,
            "validated as broadcast"
        );
        // SAFETY: the attachment covers the control block (checked above), CONTROL_OFFSET is
        // 128-aligned, and BroadcastShared is atomics only, valid for any bytes.
        unsafe {
            &*self
                .att
                .as_ptr()
                .add(layout::CONTROL_OFFSET)
                .cast::<BroadcastShared>()
        }
    }

    /// Flags the segment so nobody adopts it, then removes its key and its semaphore set. Needs a
    /// read-write attachment.
    pub(crate) fn retire(&self) {
        // Release: pairs with the Acquire in `attach_existing` under the lock.
        self.header().flags.fetch_or(FLAG_RECYCLED, Release);
        // Already removed (EIDRM/EINVAL) is fine: the goal is that it is gone.
        let _ = shm::remove(self.att.id());
        if let Some(set) = self.sems {
            let _ = sem::remove(set);
        }
    }

    pub(crate) fn tokens_of(&self) -> Tokens {
        self.sems.map_or(Tokens::Local, Tokens::Kernel)
    }

    /// The lock word of the ring's control block (only heap rings lock it; see `ring::lock`).
    fn lock_word(&self, kind: RingKind) -> &crate::ring::lock::LockWord {
        match kind {
            RingKind::Spsc => &self.shared().lock,
            RingKind::Mpmc => &self.mpmc_shared().lock,
            RingKind::Broadcast => &self.broadcast_shared().lock,
        }
    }

    /// Takes the ring's lock.
    pub(crate) fn lock(&self, kind: RingKind, deadline: Instant) -> Result<RingLock<'_>, Error> {
        RingLock::acquire(self.lock_word(kind), self.tokens_of(), deadline)
    }
}

impl Drop for SegmentBacking {
    /// The last one out of a segment that was removed by other means than ours (`ipcrm -m`,
    /// `shmctl(IPC_RMID)`) removes its semaphore set too, which nothing else would.
    fn drop(&mut self) {
        let Some(set) = self.sems else { return };
        if let Ok(st) = shm::stat(self.att.id()) {
            if st.mode & SHM_DEST != 0 && st.nattch <= 1 {
                let _ = sem::remove(set);
            }
        }
    }
}

impl Backing for SegmentBacking {
    fn on_close(&self, role: Role, shared: &SpscShared) {
        // Best effort: if the lock cannot be had (a hostile holder), deciding without it can at
        // worst remove a ring a newcomer was about to join; it then retries and creates afresh.
        let _lock = self
            .lock(RingKind::Spsc, Instant::now() + Duration::from_secs(1))
            .ok();
        let remove = match role {
            Role::Receiver => true,
            Role::Sender => match shared.receiver.peer(self.tokens_of(), Role::Receiver) {
                Peer::Alive => false,
                Peer::NotYet => shared.tail.pos.load(Acquire) == shared.head.pos.load(Acquire),
                Peer::Closed | Peer::Dead => true,
            },
        };
        if remove {
            self.retire();
        }
    }

    fn unreachable(&self) -> bool {
        self.removed()
    }

    fn tokens(&self) -> Tokens {
        self.tokens_of()
    }
}

impl SegmentBacking {
    /// Removed (IPC_RMID by `shmpipe rm --force`, `ipcrm`, ...): the key now leads elsewhere.
    fn removed(&self) -> bool {
        shm::stat(self.att.id()).map_or(true, |st| st.mode & SHM_DEST != 0)
    }
}

impl MpmcBacking for SegmentBacking {
    fn on_leave(&self, shared: &MpmcShared) {
        shared.reap(self.tokens_of());
        if mpmc_abandoned(shared) {
            self.retire();
        }
    }

    fn unreachable(&self) -> bool {
        self.removed()
    }

    fn tokens(&self) -> Tokens {
        self.tokens_of()
    }
}

impl BroadcastBacking for SegmentBacking {
    fn on_leave(&self, shared: &BroadcastShared) {
        shared.reap(self.tokens_of());
        if broadcast_abandoned(shared, self.tokens_of()) {
            self.retire();
        }
    }

    fn unreachable(&self) -> bool {
        self.removed()
    }

    fn tokens(&self) -> Tokens {
        self.tokens_of()
    }
}

/// Whether nobody will use a broadcast ring again: no live subscriber and no live publisher.
/// (A newcomer starts at the next message, so a finished stream is not kept for anyone.) Called
/// under the lock, after reaping.
fn broadcast_abandoned(shared: &BroadcastShared, tokens: Tokens) -> bool {
    shared.census().0 == 0 && shared.publisher.peer(tokens, Role::Sender) != Peer::Alive
}

/// Whether nobody will use an MPMC ring again: no live member, and not a finished stream whose
/// messages await their first receiver (kept, as a message queue would keep them). Called under
/// the lock, after reaping.
fn mpmc_abandoned(shared: &MpmcShared) -> bool {
    let c = shared.census();
    if c.senders + c.receivers > 0 {
        return false;
    }
    let unread = shared
        .positions(usize::MAX)
        .map_or(0, |(dequeue, enqueue)| enqueue.wrapping_sub(dequeue));
    !(unread > 0 && c.receivers_joined == 0)
}

/// One step of `open`: done, or look again from the start (the segment changed under us).
enum Step {
    Done(Opened),
    Retry,
}

/// An opened ring of either kind (an MPMC one with the member record we joined).
enum Opened {
    Spsc(Arc<RingCore>),
    Mpmc(Arc<MpmcCore>, usize),
    /// With the subscriber record joined, its start and the end of its join window.
    Broadcast(Arc<BroadcastCore>, Joined),
}

/// Where a joining member stands: its record, and for a broadcast subscriber its start
/// position and the end of its join window (see `ring::broadcast`).
#[derive(Clone, Copy, Debug, Default)]
struct Joined {
    member: usize,
    pos: u64,
    window: u64,
    /// A broadcast ring's policy, as read (once) and validated under the lock.
    overflow: Overflow,
}

impl From<usize> for Joined {
    fn from(member: usize) -> Self {
        Joined {
            member,
            ..Joined::default()
        }
    }
}

impl Opened {
    fn spsc(self) -> Arc<RingCore> {
        match self {
            Opened::Spsc(core) => core,
            _ => unreachable!("opened with kind spsc"),
        }
    }

    fn mpmc(self) -> (Arc<MpmcCore>, usize) {
        match self {
            Opened::Mpmc(core, me) => (core, me),
            _ => unreachable!("opened with kind mpmc"),
        }
    }

    fn broadcast(self) -> (Arc<BroadcastCore>, usize, u64, u64) {
        match self {
            Opened::Broadcast(core, j) => (core, j.member, j.pos, j.window),
            _ => unreachable!("opened with kind broadcast"),
        }
    }
}

fn open(cfg: &ShmConfig, role: Role) -> Result<Opened, Error> {
    let geometry = cfg.geometry()?;
    if cfg.mode & !0o777 != 0 || cfg.mode & 0o600 != 0o600 {
        return Err(Error::InvalidConfig(format!(
            "mode {:#o} must include 0600 and nothing beyond 0777",
            cfg.mode
        )));
    }
    let size = layout::segment_size(cfg.kind, &geometry).ok_or_else(|| {
        Error::InvalidConfig(format!(
            "a ring of {} slots of {} bytes does not fit in the address space",
            geometry.capacity, geometry.max_message
        ))
    })?;
    let key = cfg.addr.key();
    let deadline = Instant::now() + cfg.open_timeout;
    let mut backoff = Duration::from_micros(100);
    loop {
        let step = match shm::create_exclusive(key, size, cfg.mode) {
            Ok(id) => create_new(cfg, id, &geometry, size, role)?,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => attach_existing(cfg, key, role, deadline)?,
            Err(e) => return Err(create_error(e, size)),
        };
        match step {
            Step::Done(core) => return Ok(core),
            Step::Retry if Instant::now() < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(20));
            }
            Step::Retry => {
                return Err(Error::InUse(format!(
                "ring at key {key:#x} kept changing under us for {:?} (created, removed or closed by others)",
                cfg.open_timeout
            )))
            }
        }
    }
}

fn create_error(e: io::Error, size: usize) -> Error {
    let limit = |name: &str| shm::kernel_limit(name).map_or("unknown".to_string(), |v| v.to_string());
    match e.raw_os_error() {
        Some(libc::EINVAL) => Error::Limit(format!(
            "shmget refused {size} bytes: outside kernel.shmmin..kernel.shmmax (shmmax = {})",
            limit("shmmax")
        )),
        Some(libc::ENOSPC) => Error::Limit(format!(
            "shmget: no segment ids or shared memory left (kernel.shmmni = {}, kernel.shmall = {} pages)",
            limit("shmmni"),
            limit("shmall")
        )),
        Some(libc::ENOMEM) => Error::Limit(format!("shmget: not enough memory for {size} bytes")),
        _ => io_err("shmget")(e),
    }
}

/// The ring in `att`, of the validated `layout`; `member` is the MPMC record we joined.
fn build_core(backing: SegmentBacking, layout: &Layout, joined: Joined) -> Opened {
    assert!(
        layout.size <= backing.att.len(),
        "layout validated against the attachment's size"
    );
    let base = backing.att.as_ptr();
    let backing = Box::new(backing);
    let (kind, g) = (layout.kind, layout.geometry);
    // The attachment holds at least `layout.size` bytes (checked against IPC_STAT), so the
    // control block and the capacity * stride slot bytes of this kind lie inside it. It moves
    // into the backing, which the core keeps (and so the mapping) for as long as it lives. An
    // MPMC or broadcast ring's stride is a multiple of 64 and covers its slot header, an SPSC
    // ring's record memory (`ring_bytes`) is a multiple of 8; the slot memory of every kind is
    // only accessed atomically or as the ring protocol assigns it.
    // SAFETY: both offsets are in bounds and 128-aligned in a page-aligned mapping (above).
    unsafe {
        let memory = NonNull::new_unchecked(base.add(layout::slots_offset(kind)));
        let control = base.add(layout::CONTROL_OFFSET);
        match kind {
            RingKind::Spsc => Opened::Spsc(Arc::new(RingCore::new(
                NonNull::new_unchecked(control.cast::<SpscShared>()),
                Records::new(memory, g.ring_bytes()),
                g,
                backing,
            ))),
            RingKind::Mpmc => Opened::Mpmc(
                Arc::new(MpmcCore::new(
                    NonNull::new_unchecked(control.cast::<MpmcShared>()),
                    Slots::new(memory, g.capacity, g.stride_for(kind), kind),
                    g,
                    backing,
                )),
                joined.member,
            ),
            RingKind::Broadcast => Opened::Broadcast(
                Arc::new(BroadcastCore::new(
                    NonNull::new_unchecked(control.cast::<BroadcastShared>()),
                    BcSlots::new(memory, g.capacity, g.stride_for(kind)),
                    g,
                    joined.overflow,
                    backing,
                )),
                joined,
            ),
        }
    }
}

/// Semaphores in the set of a ring of `kind`: the lock and one token per member record.
fn set_size(kind: RingKind) -> usize {
    tokens::set_size(match kind {
        RingKind::Spsc => 2,
        RingKind::Mpmc => MAX_MEMBERS,
        // The publisher's token, then one per subscriber record.
        RingKind::Broadcast => 1 + MAX_SUBSCRIBERS,
    })
}

/// We created the segment of `size` bytes (`layout::segment_size` of the geometry): nobody can use
/// it before the magic is stored. We make the ring's semaphore set, take its lock and record it in
/// the header first (so an opener that finds the header not ready waits on the lock, and takes it
/// over if we die), claim our role, and publish the header last.
fn create_new(
    cfg: &ShmConfig,
    id: ShmId,
    geometry: &Geometry,
    size: usize,
    role: Role,
) -> Result<Step, Error> {
    let kind = cfg.kind;
    let att = match Attachment::attach(id, size) {
        Ok(a) => a,
        // Removed between our shmget and shmat, by an opener that took it for a dead creator's.
        Err(e) if is_gone(&e) => return Ok(Step::Retry),
        Err(e) => {
            let _ = shm::remove(id);
            return Err(io_err("shmat")(e));
        }
    };
    let set = match sem::create(libc::IPC_PRIVATE, set_size(kind), cfg.mode, false) {
        Ok(set) => set,
        Err(e) => {
            let _ = shm::remove(id);
            return Err(sem_create_error(e, set_size(kind)));
        }
    };
    let backing = SegmentBacking { att, sems: Some(set) };
    let lock = match backing.lock(kind, Instant::now() + Duration::from_secs(1)) {
        Ok(lock) => lock,
        Err(e) => {
            backing.retire();
            return Err(e);
        }
    };
    backing.header().set_sems(set.0);
    let me = proc::current();
    let member = match kind {
        RingKind::Spsc => backing
            .shared()
            .role(role)
            .claim(Tokens::Kernel(set), role)
            .map(|()| Joined::from(0)),
        RingKind::Mpmc => backing
            .mpmc_shared()
            .join(role, Tokens::Kernel(set))
            .map(Joined::from),
        RingKind::Broadcast => {
            let shared = backing.broadcast_shared();
            shared.set_policy(cfg.overflow);
            join_broadcast(shared, Tokens::Kernel(set), role, cfg, geometry, cfg.overflow)
        }
    };
    let member = match member {
        Ok(member) => member,
        Err(e) => {
            drop(lock);
            backing.retire();
            return Err(e);
        }
    };
    let name = cfg.addr.header_name();
    backing
        .header()
        .init(kind, geometry, size, &name, proc::euid(), me.pid);
    // An opener that found the segment before we had attached may have taken it for a dead
    // creator's and removed it: then start over on a fresh one.
    if shm::stat(id).map_or(true, |st| st.mode & SHM_DEST != 0) {
        drop(lock);
        backing.retire();
        return Ok(Step::Retry);
    }
    drop(lock);
    let layout = Layout {
        kind,
        geometry: *geometry,
        size,
        name,
        creator_pid: me.pid,
        sems: set.0,
    };
    Ok(Step::Done(build_core(backing, &layout, member)))
}

fn sem_create_error(e: io::Error, nsems: usize) -> Error {
    let limit = |name: &str| std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).unwrap_or_default();
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EINVAL) => Error::Limit(format!(
            "semget refused a set of {nsems} semaphores (each ring has one, for its lock and its \
             members' liveness): kernel.sem (SEMMSL SEMMNS SEMOPM SEMMNI) = {}",
            limit("sem").trim()
        )),
        Some(libc::ENOMEM) => Error::Limit("semget: not enough memory for a semaphore set".into()),
        _ => io_err("semget")(e),
    }
}

/// The ring's semaphore set as its validated header names it, checked against the kernel: it
/// exists, has the size a ring of this kind needs, and belongs to the segment's owner (a hostile
/// header could otherwise name somebody else's set, and we would remove it with the ring).
pub(crate) fn ring_sems(layout: &Layout, seg: &Owner) -> Result<SemId, Error> {
    let set = SemId(layout.sems);
    let bad = |why: String| {
        Error::Corrupted(crate::Corrupted {
            reason: format!("ring {:?}: its semaphore set {} {why}", layout.name, layout.sems),
        })
    };
    match sem::stat(set) {
        Ok(st) if st.nsems != set_size(layout.kind) => Err(bad(format!(
            "has {} semaphores, a {} ring's has {}",
            st.nsems,
            layout.kind,
            set_size(layout.kind)
        ))),
        Ok(st) if ![st.uid, st.cuid].iter().any(|u| *u == seg.uid || *u == seg.cuid) => Err(bad(format!(
            "belongs to uid {} (created by {}), the segment to uid {} (created by {})",
            st.uid, st.cuid, seg.uid, seg.cuid
        ))),
        Ok(_) => Ok(set),
        Err(e) if is_gone(&e) => Err(bad("does not exist (removed with `ipcrm -s`?)".into())),
        Err(e) => Err(io_err("semctl(IPC_STAT)")(e)),
    }
}

/// How long an opener waits for a creator it cannot see (in another PID namespace) to get from
/// its `shmget` to recording the semaphore set (three syscalls), before taking it for dead.
const INVISIBLE_CREATOR_GRACE: Duration = Duration::from_secs(1);

fn attach_existing(cfg: &ShmConfig, key: i32, role: Role, deadline: Instant) -> Result<Step, Error> {
    let id = match shm::lookup(key) {
        Ok(id) => id,
        Err(e) if is_gone(&e) => return Ok(Step::Retry),
        Err(e) => return Err(io_err("shmget")(e)),
    };
    let st = match shm::stat(id) {
        Ok(st) => st,
        Err(e) if is_gone(&e) => return Ok(Step::Retry),
        Err(e) => return Err(io_err("shmctl(IPC_STAT)")(e)),
    };
    let owner = Owner {
        uid: st.uid,
        cuid: st.cuid,
        mode: st.mode,
    };
    check_owner(
        &format!("segment at key {key:#x}"),
        &owner,
        cfg.mode,
        cfg.allow_other_owner,
    )?;
    if st.size < layout::SLOTS_OFFSET {
        return Err(Error::Foreign {
            key,
            reason: format!("segment of {} bytes is too small for a ring", st.size),
        });
    }
    let att = match Attachment::attach(id, st.size) {
        Ok(a) => a,
        Err(e) if is_gone(&e) => return Ok(Step::Retry),
        Err(e) => return Err(io_err("shmat")(e)),
    };
    let mut backing = SegmentBacking { att, sems: None };
    let expect_name = match &cfg.addr {
        SegmentAddr::Name(n) => Some(n.as_str()),
        SegmentAddr::Key(_) => None,
    };
    let first_look = Instant::now();
    let layout = loop {
        match backing
            .header()
            .validate(key, expect_name, Some(cfg.kind), st.size)
        {
            Ok(layout) => break layout,
            Err(HeaderCheck::Reject(e)) => return Err(e),
            Err(HeaderCheck::NotReady) => match creation_stalled(&backing, id, first_look, deadline)? {
                Stalled::Wait => std::thread::sleep(Duration::from_millis(1)),
                Stalled::Retry => return Ok(Step::Retry),
                Stalled::Timeout => {
                    return Err(Error::InUse(format!(
                        "segment at key {key:#x} was never initialised by its creator (pid {})",
                        st.cpid
                    )))
                }
            },
        }
    };
    backing.sems = match ring_sems(&layout, &owner) {
        Ok(set) => Some(set),
        // Retired (set removed) since we read the header: look again.
        Err(_) if backing.header().flags.load(Acquire) & FLAG_RECYCLED != 0 => return Ok(Step::Retry),
        Err(e) => return Err(e),
    };
    let lock = match backing.lock(layout.kind, deadline) {
        Ok(lock) => lock,
        // The set was removed with its ring since we read the header: look again.
        Err(Error::Io { source, .. }) if is_gone(&source) => return Ok(Step::Retry),
        Err(e) => return Err(e),
    };
    // Acquire: pairs with `retire`'s Release; a ring being removed is never adopted.
    if backing.header().flags.load(Acquire) & FLAG_RECYCLED != 0 {
        // Its retirer removes segment and set; finish that for it (it may have died midway).
        drop(lock);
        backing.retire();
        return Ok(Step::Retry);
    }
    match shm::stat(id) {
        Ok(st) if st.mode & SHM_DEST == 0 => {}
        Ok(_) => return Ok(Step::Retry),
        Err(e) if is_gone(&e) => return Ok(Step::Retry),
        Err(e) => return Err(io_err("shmctl(IPC_STAT)")(e)),
    }
    let decision = match layout.kind {
        RingKind::Spsc => decide_spsc(&backing, &layout, role)?,
        RingKind::Mpmc => decide_mpmc(&backing, &layout, role)?,
        RingKind::Broadcast => decide_broadcast(&backing, &layout, role, cfg)?,
    };
    match decision {
        (Decision::Claim, member) => {
            drop(lock);
            Ok(Step::Done(build_core(backing, &layout, member)))
        }
        (Decision::Recycle, _) => {
            drop(lock);
            backing.retire();
            Ok(Step::Retry)
        }
        (Decision::Refuse(why), _) => Err(Error::InUse(format!("{} ({why})", layout.name))),
    }
}

/// What to do about a header that is not ready yet.
enum Stalled {
    /// Its creator may still be writing it.
    Wait,
    /// Its creator died before finishing: the segment (and set) were removed; start over.
    Retry,
    /// Its creator holds on for longer than we may wait.
    Timeout,
}

/// A header is not ready: is its creator still at work? Once the creator has recorded the
/// semaphore set, it holds the set's lock until the header is published, so whoever gets the lock
/// while the header is still not ready knows the creator died (the kernel released its lock).
/// Before that, the creator is identified by `shm_cpid`, which the kernel reports as 0 for a
/// process in another PID namespace: such a creator gets a grace period instead.
fn creation_stalled(
    backing: &SegmentBacking,
    id: ShmId,
    first_look: Instant,
    deadline: Instant,
) -> Result<Stalled, Error> {
    let gone = |backing: &SegmentBacking| {
        let _ = shm::remove(id);
        if let Some(set) = backing.header().sems() {
            let _ = sem::remove(SemId(set));
        }
        Ok(Stalled::Retry)
    };
    if let Some(set) = backing.header().sems() {
        // A set we cannot stat or that has the wrong size is not a creator's lock to wait on.
        let set = SemId(set);
        let kinds = [RingKind::Spsc, RingKind::Mpmc, RingKind::Broadcast];
        let Some(nsems) = sem::stat(set)
            .ok()
            .map(|st| st.nsems)
            .filter(|n| kinds.iter().any(|&k| set_size(k) == *n))
        else {
            return Ok(Stalled::Retry);
        };
        let wait = (Instant::now() + Duration::from_millis(10)).min(deadline);
        return match sem::lock(set, LOCK_SEM, wait) {
            Ok(true) => {
                // The lock is ours: release it. If the header is still not published and no
                // live process holds a token, the creator died holding the lock (it takes its
                // token before publishing). A token held means a live ring whose header was
                // damaged: never removed, waited for until the deadline.
                let published = backing.header().magic.load(Acquire) != 0;
                let held = (1..nsems).any(|n| !matches!(sem::value(set, n), Ok(0) | Err(_)));
                let _ = sem::unlock(set, LOCK_SEM);
                if published {
                    Ok(Stalled::Wait)
                } else if held && Instant::now() >= deadline {
                    Ok(Stalled::Timeout)
                } else if held {
                    Ok(Stalled::Wait)
                } else {
                    gone(backing)
                }
            }
            Ok(false) if Instant::now() >= deadline => Ok(Stalled::Timeout),
            Ok(false) => Ok(Stalled::Wait),
            Err(_) => Ok(Stalled::Retry),
        };
    }
    let st = match shm::stat(id) {
        Ok(st) => st,
        Err(_) => return Ok(Stalled::Retry),
    };
    // Attached by someone besides us: the creator got past shmat and is writing the header.
    if st.nattch <= 1 {
        let creator_dead = match st.cpid {
            0 => first_look.elapsed() >= INVISIBLE_CREATOR_GRACE,
            pid => !proc::is_alive(ProcessId { pid, start_time: 0 }),
        };
        if creator_dead {
            // If the creator was merely slow, its shmat now fails (or its final check sees the
            // segment removed) and it starts over: removing never loses a ring in use.
            return gone(backing);
        }
    }
    if Instant::now() >= deadline {
        return Ok(Stalled::Timeout);
    }
    Ok(Stalled::Wait)
}

fn corrupted_ring(layout: &Layout) -> impl FnOnce(crate::Corrupted) -> Error + '_ {
    |mut c| {
        c.reason = format!("ring {:?}: {}", layout.name, c.reason);
        Error::Corrupted(c)
    }
}

/// Under the lock: claim the SPSC role (then the role is ours), recycle, or refuse.
fn decide_spsc(backing: &SegmentBacking, layout: &Layout, role: Role) -> Result<(Decision, Joined), Error> {
    let shared = backing.shared();
    let (mine, theirs) = match role {
        Role::Sender => (&shared.sender, &shared.receiver),
        Role::Receiver => (&shared.receiver, &shared.sender),
    };
    // Checked before claiming, so a refused open leaves the role free.
    let unread = shared
        .indices(layout.geometry.ring_bytes())
        .map_err(corrupted_ring(layout))?
        .unread;
    let tokens = backing.tokens_of();
    let their_state = theirs.peer(tokens, other(role));
    let decision = decide(
        role,
        mine.peer(tokens, role),
        their_state,
        mine.pid.load(Relaxed),
        unread,
    );
    if decision == Decision::Claim {
        // Neither the role's previous holder (if any: it closed or died) nor a closed or dead
        // peer can be asleep on the ring: clear any waiter bit one of them left by being killed
        // while parked, before the stream resumes (else every message would make a futex call).
        shared.forget_waiter(role);
        if matches!(their_state, Peer::Closed | Peer::Dead) {
            shared.forget_waiter(other(role));
        }
        mine.claim(tokens, role)?;
    }
    Ok((decision, Joined::default()))
}

/// Under the lock: join the MPMC ring (then the returned member record is ours) or recycle it.
/// Dead members are reaped first; a ring with no live member is stale unless it holds a finished
/// stream awaiting its first receiver.
fn decide_mpmc(backing: &SegmentBacking, layout: &Layout, role: Role) -> Result<(Decision, Joined), Error> {
    let shared = backing.mpmc_shared();
    shared
        .positions(layout.geometry.capacity)
        .map_err(corrupted_ring(layout))?;
    shared.reap(backing.tokens_of());
    if mpmc_abandoned(shared) {
        return Ok((Decision::Recycle, Joined::default()));
    }
    Ok((Decision::Claim, shared.join(role, backing.tokens_of())?.into()))
}

/// Takes the broadcast `role` for this process: the publisher's role record, or a subscriber
/// record placed as `cfg.subscription` asks. Caller holds the lock.
fn join_broadcast(
    shared: &BroadcastShared,
    tokens: Tokens,
    role: Role,
    cfg: &ShmConfig,
    geometry: &Geometry,
    overflow: Overflow,
) -> Result<Joined, Error> {
    match role {
        Role::Sender => shared.publisher.claim(tokens, Role::Sender).map(|()| Joined {
            overflow,
            ..Joined::default()
        }),
        Role::Receiver => {
            let (member, pos, window) = shared.join(tokens, cfg.subscription, geometry.capacity as u64)?;
            Ok(Joined {
                member,
                pos,
                window,
                overflow,
            })
        }
    }
}

/// Under the lock: take the publisher's role (one at a time) or join as a subscriber, recycle
/// an abandoned ring, or refuse. Dead subscribers are reaped first.
fn decide_broadcast(
    backing: &SegmentBacking,
    layout: &Layout,
    role: Role,
    cfg: &ShmConfig,
) -> Result<(Decision, Joined), Error> {
    let shared = backing.broadcast_shared();
    let tokens = backing.tokens_of();
    let overflow = shared.policy().map_err(corrupted_ring(layout))?;
    if overflow != cfg.overflow {
        // Lossless and lossy are different promises: a subscriber that asked for one must not
        // silently get the other, whoever created the ring.
        return Err(Error::InvalidConfig(format!(
            "ring {:?} is a broadcast ring with overflow={overflow}, opened with overflow={} (the \
             policy is fixed when a ring is created)",
            layout.name, cfg.overflow
        )));
    }
    shared.reap(tokens);
    let publisher = shared.publisher.peer(tokens, Role::Sender);
    let subscribers = shared.census().0;
    let decision = match (role, publisher) {
        (Role::Sender, Peer::Alive) => Decision::Refuse(format!(
            "its publisher is live pid {} (one publisher at a time)",
            shared.publisher.pid.load(Relaxed)
        )),
        (Role::Sender, Peer::Closed | Peer::Dead) if subscribers > 0 => Decision::Refuse(format!(
            "its previous publisher is gone and {subscribers} subscribers are still attached; retry \
             when they have finished"
        )),
        (Role::Sender, Peer::Closed | Peer::Dead) => Decision::Recycle,
        _ if broadcast_abandoned(shared, tokens) => Decision::Recycle,
        _ => Decision::Claim,
    };
    let joined = match decision {
        Decision::Claim => join_broadcast(shared, tokens, role, cfg, &layout.geometry, overflow)?,
        _ => Joined::default(),
    };
    Ok((decision, joined))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Claim,
    Recycle,
    Refuse(String),
}

/// The other end of a channel.
fn other(role: Role) -> Role {
    match role {
        Role::Sender => Role::Receiver,
        Role::Receiver => Role::Sender,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Sender => "sender",
        Role::Receiver => "receiver",
    }
}

/// What to do with an existing, valid ring, decided under its lock from who holds the roles.
///
/// Not from `shm_nattch`: a process in the middle of its own `open` is attached too, and taking
/// it for a live peer made two openers of a stale ring end up on different rings. An opener
/// that is attached but has not claimed anything yet finds the `RECYCLED` flag under the lock
/// and starts over, so both meet again on the fresh ring.
fn decide(role: Role, mine: Peer, theirs: Peer, mine_pid: u32, unread: u64) -> Decision {
    match (mine, theirs) {
        (Peer::Alive, _) => Decision::Refuse(format!(
            "its {} is held by live pid {mine_pid}",
            role_name(role),
        )),
        (Peer::NotYet, Peer::Alive) => Decision::Claim,
        // A stream whose sender finished (or died) before any receiver came: drain it.
        (Peer::NotYet, Peer::Closed | Peer::Dead) if role == Role::Receiver && unread > 0 => Decision::Claim,
        (Peer::Closed | Peer::Dead, Peer::NotYet) if role == Role::Sender && unread > 0 => {
            Decision::Refuse(format!(
                "it holds {unread} unread messages from a previous sender; receive them first or remove the ring"
            ))
        }
        (Peer::Closed | Peer::Dead, Peer::Alive) => Decision::Refuse(format!(
            "its previous {} is gone and its peer is still attached; retry when the peer has finished",
            role_name(role)
        )),
        // Nobody alive holds either role and nothing is waiting to be read: stale.
        _ => Decision::Recycle,
    }
}

/// What an existing ring is, from its roles and unread count, as `decide` would treat it: `Live`
/// while a live process holds a role; `Pending` for a finished stream with unread messages that
/// awaits a receiver (a receiver would claim it, a sender is refused); otherwise `Stale`: exactly
/// the cases where the next open, by either role, recycles it.
pub(crate) fn status(sender: Peer, receiver: Peer, unread: u64) -> RingStatus {
    match (sender, receiver) {
        (Peer::Alive, _) | (_, Peer::Alive) => RingStatus::Live,
        (Peer::Closed | Peer::Dead, Peer::NotYet) if unread > 0 => RingStatus::Pending,
        _ => RingStatus::Stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_agrees_with_what_the_next_open_would_do() {
        let peers = [Peer::NotYet, Peer::Alive, Peer::Closed, Peer::Dead];
        for s in peers {
            for r in peers {
                for unread in [0, 3] {
                    let by_sender = decide(Role::Sender, s, r, 1, unread);
                    let by_receiver = decide(Role::Receiver, r, s, 1, unread);
                    let recycles = by_sender == Decision::Recycle && by_receiver == Decision::Recycle;
                    let st = status(s, r, unread);
                    let why = format!("sender {s:?} receiver {r:?} unread {unread}: {st:?}");
                    assert_eq!(st == RingStatus::Stale, recycles, "{why}");
                    if st == RingStatus::Pending {
                        assert_eq!(by_receiver, Decision::Claim, "{why}");
                        assert!(matches!(by_sender, Decision::Refuse(_)), "{why}");
                    }
                }
            }
        }
    }

    #[test]
    fn name_to_key_is_stable_and_nonzero() {
        assert_eq!(key_for_name("orders"), key_for_name("orders"));
        assert_ne!(key_for_name("orders"), key_for_name("orders2"));
        assert!(key_for_name("x") > 0);
    }

    #[test]
    fn addresses_parse_or_say_what_was_expected() {
        assert_eq!(SegmentAddr::parse("0x1f").unwrap(), SegmentAddr::Key(0x1f));
        assert!(SegmentAddr::parse("0x0").is_err());
        assert!(SegmentAddr::parse("0xzz").is_err());
        assert!(SegmentAddr::parse("").is_err());
        assert!(SegmentAddr::parse("a/b").is_err());
        assert!(SegmentAddr::parse(&"a".repeat(65)).is_err());
        assert_eq!(
            SegmentAddr::parse("jobs.v1_x-2").unwrap(),
            SegmentAddr::Name("jobs.v1_x-2".into())
        );
    }
}
