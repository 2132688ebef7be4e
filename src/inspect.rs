//! Looking at this crate's SysV objects on the machine without trusting them: what `shmpipe ls`,
//! `rm` and `stat` are built on.
//!
//! Segments are found in `/proc/sysvipc/shm`, attached read-only (`SHM_RDONLY`) and only if they
//! are ours (owned or created by our uid, or we are root), and reported only when the header
//! validates as a shmpipe ring (magic, layout version, kind, geometry against the real size).
//! Every value read from a segment is a snapshot another process may be changing: indices are
//! checked against the ring invariant before they are shown as a count.
//!
//! Message queues carry no header, so one of ours cannot be told from a foreign one by its
//! content; [`queues`] lists them with what the kernel says.

use crate::error::Error;
use crate::ring::layout::{self, HeaderCheck, Layout, FLAG_RECYCLED};
use crate::ring::mpmc;
use crate::ring::tokens::Tokens;
use crate::ring::RingKind;
use crate::ring::{Peer, Role};
use crate::sys::proc;
use crate::sys::shm::{self, Attachment, ShmId, SHM_DEST};
use crate::sys::{msgq, proc::euid};
use crate::transport::shm::{status, SegmentAddr, SegmentBacking};
use crate::transport::sysv::{io_err, is_gone};
use std::collections::HashMap;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::{Duration, Instant};

/// What a ring is to an operator.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingStatus {
    /// A live process holds a role.
    Live,
    /// Nobody alive holds a role and nothing is waiting for a receiver: the next open of either
    /// role recycles it, and `shmpipe rm --stale` removes it.
    Stale,
    /// A finished (closed or dead) sender left unread messages for a receiver still to come.
    Pending,
    /// Nobody alive holds a role and the indices break the ring invariant: opens refuse it.
    Corrupted,
    /// Flagged for removal; openers will not use it.
    Removing,
}

impl RingStatus {
    /// Lower-case name, as `shmpipe ls` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            RingStatus::Live => "live",
            RingStatus::Stale => "stale",
            RingStatus::Pending => "pending",
            RingStatus::Corrupted => "corrupted",
            RingStatus::Removing => "removing",
        }
    }
}

/// Lower-case name of a role's state: vacant, alive, closed or dead.
pub fn peer_name(peer: Peer) -> &'static str {
    match peer {
        Peer::NotYet => "vacant",
        Peer::Alive => "alive",
        Peer::Closed => "closed",
        Peer::Dead => "dead",
    }
}

/// One role (sender or receiver) of a ring.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleInfo {
    /// Its state, including whether the holder's process is still alive.
    pub peer: Peer,
    /// The (last) holder's pid, 0 if none.
    pub pid: u32,
}

/// Counters of a ring, read from its control block.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages published (the producer index).
    pub messages_in: u64,
    /// Messages consumed (the consumer index).
    pub messages_out: u64,
    /// Times the producer found the ring full and waited.
    pub full_waits: u64,
    /// Times the consumer found the ring empty and waited.
    pub empty_waits: u64,
    /// Futex waits entered.
    pub parks: u64,
    /// Futex wakes issued.
    pub wakes: u64,
    /// The senders asleep on the ring's not-full doorbell or about to be, one bit each (SPSC:
    /// bit 0 is the sender; MPMC: bit `i` is member record `i`). While it is non-zero every slot
    /// freed makes a futex wake. The bit of a sender killed while parked stays set until a
    /// survivor finds it dead (MPMC: reaps it; SPSC: the receiver sees it dead, or the next open).
    pub parked_senders: u64,
    /// The same for receivers, on the not-empty doorbell (SPSC: bit 1 is the receiver).
    pub parked_receivers: u64,
    /// MPMC rings: slots recovered from members that died holding them (a producer's unpublished
    /// slot skipped, or a consumer's unfreed message dropped). `None` for SPSC rings, where a
    /// dead peer ends the channel instead.
    pub recovered: Option<u64>,
    /// MPMC rings: members that were taken for dead while holding a slot, came back and found
    /// it recovered (a false liveness verdict, e.g. a member record overwritten by another
    /// process); they wrote nothing to it. Their messages are among `recovered`. `None` for
    /// SPSC rings.
    pub robbed: Option<u64>,
    /// Broadcast rings: messages that lapped subscribers missed, all counted. `None` for the
    /// other kinds.
    pub missed: Option<u64>,
}

/// A shmpipe ring found on the machine.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct RingInfo {
    /// The name in its header (a raw-key ring's name is its key in hex).
    pub name: String,
    /// SysV key.
    pub key: i32,
    /// SysV segment id.
    pub id: i32,
    /// Ring kind; `"spsc"`, `"mpmc"` or `"broadcast"`.
    pub kind: &'static str,
    /// Live senders and receivers attached (MPMC rings; SPSC rings have at most one each).
    pub members: (u32, u32),
    /// Slots.
    pub capacity: usize,
    /// Largest message in bytes.
    pub max_message: usize,
    /// Bytes of message memory: SPSC rings, the records (a message takes 8 bytes plus its length
    /// rounded up to 8, so `capacity` counts messages of `max_message` bytes and more smaller
    /// ones fit); MPMC and broadcast rings, `capacity` slots.
    pub data_bytes: usize,
    /// Messages published and not yet consumed; `None` when the indices are corrupted.
    pub unread: Option<u64>,
    /// Processes attached (`shm_nattch`), not counting the one inspecting.
    pub attached: u64,
    /// Owner uid.
    pub uid: u32,
    /// The sending role.
    pub sender: RoleInfo,
    /// The receiving role.
    pub receiver: RoleInfo,
    /// What it is.
    pub status: RingStatus,
    /// Its counters.
    pub counters: Counters,
    /// Broadcast rings: the policy (`"block"` or `"overwrite"`; `None` if corrupted, and for
    /// the other kinds).
    pub overflow: Option<&'static str>,
    /// Broadcast rings: every subscriber attached (pid, alive or dead, lag, missed). Empty for
    /// the other kinds. For a broadcast ring `sender` is the publisher, `receiver` sums up the
    /// subscribers, and `members` is (live publishers, live subscribers).
    pub subscribers: Vec<crate::ring::broadcast::SubscriberInfo>,
}

/// A segment that is not (or not yet, or not visibly) a shmpipe ring.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct OtherSegment {
    /// SysV key.
    pub key: i32,
    /// SysV segment id.
    pub id: i32,
    /// Size in bytes.
    pub size: usize,
    /// Owner uid.
    pub uid: u32,
    /// Processes attached.
    pub attached: u64,
    /// Why it is not listed as a ring.
    pub reason: String,
}

/// A shared-memory segment in `/proc/sysvipc/shm`.
#[derive(Clone, Debug)]
// A listing holds a few of these, built once: not worth a box in the public type.
#[allow(clippy::large_enum_variant)]
pub enum Segment {
    /// A ring of ours.
    Ring(RingInfo),
    /// Anything else (foreign, someone else's, unreadable, not initialised).
    Other(OtherSegment),
}

/// A SysV message queue.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct QueueInfo {
    /// SysV key.
    pub key: i32,
    /// SysV queue id.
    pub id: i32,
    /// Messages queued.
    pub qnum: u64,
    /// Bytes queued.
    pub cbytes: u64,
    /// Capacity in bytes (`msg_qbytes`), if `IPC_STAT` was allowed.
    pub qbytes: Option<u64>,
    /// Owner uid.
    pub uid: u32,
    /// Last sender's pid (0: none yet) and whether it is alive.
    pub lspid: (u32, bool),
    /// Last receiver's pid (0: none yet) and whether it is alive.
    pub lrpid: (u32, bool),
    /// What can and cannot be said about it.
    pub note: &'static str,
}

/// The rows of a `/proc/sysvipc/*` table as column name → value.
fn proc_table(path: &str) -> Result<Vec<HashMap<String, String>>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "reading /proc/sysvipc",
        source,
    })?;
    let mut lines = text.lines();
    let names: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok(lines
        .map(|l| {
            names
                .iter()
                .cloned()
                .zip(l.split_whitespace().map(str::to_string))
                .collect()
        })
        .collect())
}

fn field<T: std::str::FromStr>(row: &HashMap<String, String>, name: &str) -> Option<T> {
    row.get(name)?.parse().ok()
}

/// Whether we may look at (and remove) an object owned by `uid`, created by `cuid`.
fn ours(uid: u32, cuid: u32) -> bool {
    let me = euid();
    me == 0 || uid == me || cuid == me
}

/// Every shared-memory segment with a key (`IPC_PRIVATE` and removed ones are skipped): our rings
/// as [`Segment::Ring`], anything else as [`Segment::Other`].
pub fn segments() -> Result<Vec<Segment>, Error> {
    let mut out = Vec::new();
    for row in proc_table("/proc/sysvipc/shm")? {
        let (Some(key), Some(id)) = (field::<i64>(&row, "key"), field::<i32>(&row, "shmid")) else {
            continue;
        };
        let key = key as i32;
        if key == 0 {
            continue;
        }
        let other = |reason: String| {
            Segment::Other(OtherSegment {
                key,
                id,
                size: field(&row, "size").unwrap_or(0),
                uid: field(&row, "uid").unwrap_or(u32::MAX),
                attached: field(&row, "nattch").unwrap_or(0),
                reason,
            })
        };
        let (uid, cuid) = (
            field(&row, "uid").unwrap_or(u32::MAX),
            field(&row, "cuid").unwrap_or(u32::MAX),
        );
        if !ours(uid, cuid) {
            out.push(other(format!("owned by uid {uid}, not ours")));
            continue;
        }
        match RingView::attach(key, ShmId(id), None) {
            Ok(view) => out.push(Segment::Ring(view.info())),
            // Removed between the listing and now: not there any more.
            Err(Error::Io { source, .. }) if is_gone(&source) => {}
            Err(e) => out.push(other(e.to_string())),
        }
    }
    Ok(out)
}

/// Our rings only (see [`segments`]).
pub fn rings() -> Result<Vec<RingInfo>, Error> {
    Ok(segments()?
        .into_iter()
        .filter_map(|s| match s {
            Segment::Ring(r) => Some(r),
            Segment::Other(_) => None,
        })
        .collect())
}

/// Message queues: those owned (or created) by our uid, or every one with `all`.
pub fn queues(all: bool) -> Result<Vec<QueueInfo>, Error> {
    let alive = |pid: u32| proc::identify(pid).is_some();
    let mut out = Vec::new();
    for row in proc_table("/proc/sysvipc/msg")? {
        let (Some(key), Some(id)) = (field::<i64>(&row, "key"), field::<i32>(&row, "msqid")) else {
            continue;
        };
        let (uid, cuid) = (
            field(&row, "uid").unwrap_or(u32::MAX),
            field(&row, "cuid").unwrap_or(u32::MAX),
        );
        if !all && !ours(uid, cuid) {
            continue;
        }
        let (lspid, lrpid) = (
            field(&row, "lspid").unwrap_or(0),
            field(&row, "lrpid").unwrap_or(0),
        );
        out.push(QueueInfo {
            key: key as i32,
            id,
            qnum: field(&row, "qnum").unwrap_or(0),
            cbytes: field(&row, "cbytes").unwrap_or(0),
            qbytes: msgq::stat(msgq::MsqId(id)).ok().map(|s| s.qbytes),
            uid,
            lspid: (lspid, alive(lspid)),
            lrpid: (lrpid, alive(lrpid)),
            note: "a queue has no header: not verified as shmpipe's",
        });
    }
    Ok(out)
}

/// A ring attached read-only, to read its state as often as wanted (`shmpipe stat`).
pub struct RingView {
    backing: SegmentBacking,
    layout: Layout,
    key: i32,
}

impl std::fmt::Debug for RingView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingView")
            .field("name", &self.layout.name)
            .field("key", &self.key)
            .finish()
    }
}

impl RingView {
    /// Attaches the ring at `addr` read-only. Refuses a segment of another uid (unless we are
    /// root) and anything whose header does not validate as a ring of that name.
    pub fn open(addr: &SegmentAddr) -> Result<RingView, Error> {
        let (key, id) = find(addr)?;
        Self::attach(key, id, expected_name(addr))
    }

    /// Attaches `id` (found at `key`) read-only and validates it; `expect` is the name it must
    /// carry, if any.
    fn attach(key: i32, id: ShmId, expect: Option<&str>) -> Result<RingView, Error> {
        let (backing, layout) = attach_ring(key, id, expect, Access::ReadOnly)?;
        Ok(RingView { backing, layout, key })
    }

    /// The ring's name.
    pub fn name(&self) -> &str {
        &self.layout.name
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        counters(&self.backing, &self.layout)
    }

    /// Everything about the ring now (a few syscalls: liveness of the role holders, `IPC_STAT`).
    pub fn info(&self) -> RingInfo {
        let id = self.backing.att.id();
        let st = shm::stat(id).ok();
        let removed = st.is_none_or(|s| s.mode & SHM_DEST != 0);
        ring_info(
            &self.backing,
            &self.layout,
            self.key,
            removed,
            st.map_or((0, 0), |s| (s.nattch, s.uid)),
        )
    }
}

fn counters(backing: &SegmentBacking, layout: &Layout) -> Counters {
    // Relaxed: a snapshot for display; nothing is read on the strength of these values.
    let mut missed = None;
    let (messages_in, messages_out, c, recovered, robbed, bells, not_sleepers) = match layout.kind {
        RingKind::Spsc => {
            let shared = backing.shared();
            (
                shared.tail.count.load(Relaxed),
                shared.head.count.load(Relaxed),
                &*shared.counters,
                None,
                None,
                (&*shared.not_full, &*shared.not_empty),
                // A closed receiver's mark, not a parked receiver.
                crate::ring::spsc::RECEIVER_CLOSED,
            )
        }
        RingKind::Broadcast => {
            let shared = backing.broadcast_shared();
            let tail = shared.tail.load(Relaxed);
            missed = Some(shared.roster.missed.load(Relaxed));
            // Consumed: as far as the slowest subscriber has read (all of it with none).
            let slowest = shared
                .subscribers(backing.tokens_of())
                .iter()
                .map(|s| tail.saturating_sub(s.lag))
                .min()
                .unwrap_or(tail);
            (
                tail,
                slowest,
                &*shared.counters,
                None,
                None,
                (&*shared.not_full, &*shared.not_empty),
                0,
            )
        }
        RingKind::Mpmc => {
            let shared = backing.mpmc_shared();
            let l = &shared.losses;
            (
                shared.enqueue.load(Relaxed),
                shared.dequeue.load(Relaxed),
                &*shared.counters,
                Some(l.lost.load(Relaxed).wrapping_add(l.dropped.load(Relaxed))),
                Some(l.robbed.load(Relaxed)),
                (&*shared.not_full, &*shared.not_empty),
                0,
            )
        }
    };
    Counters {
        messages_in,
        messages_out,
        full_waits: c.full_waits.load(Relaxed),
        empty_waits: c.empty_waits.load(Relaxed),
        parks: c.parks.load(Relaxed),
        wakes: c.wakes.load(Relaxed),
        parked_senders: bells.0.waiter_bits(),
        parked_receivers: bells.1.waiter_bits() & !not_sleepers,
        recovered,
        robbed,
        missed,
    }
}

fn role(record: &crate::ring::RoleRecord, tokens: Tokens, which: Role) -> RoleInfo {
    RoleInfo {
        peer: record.peer(tokens, which),
        // Relaxed: `peer()` loaded the state with Acquire, which orders this load after it.
        pid: record.pid.load(Relaxed),
    }
}

/// Reads a validated ring's state; `nattch_uid` from an `IPC_STAT` made while we are attached.
fn ring_info(
    backing: &SegmentBacking,
    layout: &Layout,
    key: i32,
    removed: bool,
    nattch_uid: (u64, u32),
) -> RingInfo {
    let cap = layout.geometry.capacity;
    let (mut overflow, mut subscribers) = (None, Vec::new());
    let (unread, sender, receiver, members, pending) = match layout.kind {
        RingKind::Broadcast => {
            let shared = backing.broadcast_shared();
            let tokens = backing.tokens_of();
            overflow = shared.policy().ok().map(|o| o.name());
            subscribers = shared.subscribers(tokens);
            let (_, joined, died) = shared.census();
            let live = subscribers.iter().filter(|s| s.alive).count() as u32;
            let publisher = role(&shared.publisher, tokens, Role::Sender);
            // Summed up: alive if any is; else dead if a record still names a dead process
            // (not reaped yet) or one was reaped; else closed (all left) or vacant.
            let dead = subscribers.iter().find(|s| !s.alive);
            let receiver = match (subscribers.iter().find(|s| s.alive), dead) {
                (Some(s), _) => RoleInfo {
                    peer: Peer::Alive,
                    pid: s.pid,
                },
                (None, Some(s)) => RoleInfo {
                    peer: Peer::Dead,
                    pid: s.pid,
                },
                (None, None) => RoleInfo {
                    peer: mpmc::peer_state(0, joined, died),
                    pid: 0,
                },
            };
            // Unread: what the slowest live subscriber can still read (a lapped one, no more
            // than the ring holds).
            let slowest = subscribers.iter().filter(|s| s.alive).map(|s| s.lag).max();
            let unread = overflow.map(|_| slowest.unwrap_or(0).min(cap as u64));
            let alive = u32::from(publisher.peer == Peer::Alive);
            // Never pending: a newcomer starts at the next message, so nothing waits for one.
            (unread, publisher, receiver, (alive, live), Some(false))
        }
        RingKind::Spsc => {
            let shared = backing.shared();
            let unread = shared
                .indices(layout.geometry.ring_bytes())
                .ok()
                .map(|ix| ix.unread);
            let tokens = backing.tokens_of();
            let (sender, receiver) = (
                role(&shared.sender, tokens, Role::Sender),
                role(&shared.receiver, tokens, Role::Receiver),
            );
            let alive = |r: RoleInfo| u32::from(r.peer == Peer::Alive);
            (unread, sender, receiver, (alive(sender), alive(receiver)), None)
        }
        RingKind::Mpmc => {
            let shared = backing.mpmc_shared();
            let unread = shared.positions(cap).ok().map(|(d, e)| e.wrapping_sub(d));
            let (live, c) = (shared.live_members(backing.tokens_of()), shared.census());
            let summary = |live: u32, pid: u32, joined: u32, died: u32| RoleInfo {
                peer: if live > 0 {
                    Peer::Alive
                } else {
                    mpmc::peer_state(0, joined, died)
                },
                pid,
            };
            let sender = summary(live.senders, live.sender_pid, c.senders_joined, c.senders_died);
            let receiver = summary(
                live.receivers,
                live.receiver_pid,
                c.receivers_joined,
                c.receivers_died,
            );
            // As `transport::shm` decides: with nobody alive, a ring is kept only for a finished
            // stream whose messages await their first receiver.
            let pending = unread.map(|n| n > 0 && c.receivers_joined == 0);
            (unread, sender, receiver, (live.senders, live.receivers), pending)
        }
    };
    // Acquire: pairs with `retire`'s Release, as the opener's check does.
    let recycled = backing.header().flags.load(Acquire) & FLAG_RECYCLED != 0;
    let st = if recycled || removed {
        RingStatus::Removing
    } else {
        match (unread, pending) {
            _ if members.0 + members.1 > 0 && layout.kind != RingKind::Spsc => RingStatus::Live,
            (Some(_), Some(true)) => RingStatus::Pending,
            (Some(_), Some(false)) => RingStatus::Stale,
            (Some(n), None) => status(sender.peer, receiver.peer, n),
            (None, _) if sender.peer == Peer::Alive || receiver.peer == Peer::Alive => RingStatus::Live,
            (None, _) => RingStatus::Corrupted,
        }
    };
    RingInfo {
        name: layout.name.clone(),
        key,
        id: backing.att.id().0,
        kind: layout.kind.name(),
        members,
        capacity: layout.geometry.capacity,
        max_message: layout.geometry.max_message,
        // Checked against the segment's real size when it was attached: this cannot overflow.
        data_bytes: layout.geometry.checked_slots_size_for(layout.kind).unwrap_or(0),
        unread,
        attached: nattch_uid.0.saturating_sub(1),
        uid: nattch_uid.1,
        sender,
        receiver,
        status: st,
        counters: counters(backing, layout),
        overflow,
        subscribers,
    }
}

/// The segment at `addr`'s key.
fn find(addr: &SegmentAddr) -> Result<(i32, ShmId), Error> {
    let key = addr.key();
    let id = shm::lookup(key).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::Endpoint(format!("no ring at key {key:#x}")),
        _ => io_err("shmget")(e),
    })?;
    Ok((key, id))
}

/// The name a ring found by `addr` must carry: none for a raw key.
fn expected_name(addr: &SegmentAddr) -> Option<&str> {
    match addr {
        SegmentAddr::Name(n) => Some(n.as_str()),
        SegmentAddr::Key(_) => None,
    }
}

/// How [`attach_ring`] maps a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// To look (`ls`, `stat`).
    ReadOnly,
    /// To flag it recycled before removing it (`rm`).
    ReadWrite,
}

/// Attaches the segment `id` found at `key` and validates it as a ring (named `expect`, if
/// given), after refusing one that is not ours (unless we are root) or too small to hold a ring.
fn attach_ring(
    key: i32,
    id: ShmId,
    expect: Option<&str>,
    access: Access,
) -> Result<(SegmentBacking, Layout), Error> {
    let st = shm::stat(id).map_err(io_err("shmctl(IPC_STAT)"))?;
    if !ours(st.uid, st.cuid) {
        return Err(Error::Permission(format!(
            "segment at key {key:#x} is owned by uid {}, we are uid {}",
            st.uid,
            euid()
        )));
    }
    if st.size < layout::SLOTS_OFFSET {
        return Err(Error::Foreign {
            key,
            reason: format!("segment of {} bytes is too small for a ring", st.size),
        });
    }
    let att = match access {
        Access::ReadOnly => Attachment::attach_read_only(id, st.size),
        Access::ReadWrite => Attachment::attach(id, st.size),
    }
    .map_err(io_err("shmat"))?;
    let mut backing = SegmentBacking { att, sems: None };
    match backing.header().validate(key, expect, None, st.size) {
        Ok(layout) => {
            // Without its semaphore set (removed by hand), liveness falls back to pids.
            backing.sems = crate::transport::shm::ring_sems(
                &layout,
                &crate::transport::sysv::Owner {
                    uid: st.uid,
                    cuid: st.cuid,
                    mode: st.mode,
                },
            )
            .ok();
            Ok((backing, layout))
        }
        Err(HeaderCheck::Reject(e)) => Err(e),
        Err(HeaderCheck::NotReady) => Err(Error::InUse(format!(
            "segment at key {key:#x} has no header yet (being created, or its creator pid {} died first)",
            st.cpid
        ))),
    }
}

/// Which rings [`remove`] may remove.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Any ring no live process holds a role of (stale, pending or corrupted).
    Unheld,
    /// Only a stale ring.
    StaleOnly,
    /// Whatever its state, even while a live process holds a role.
    Force,
}

/// Removes the ring at `addr` the way its last user would: under its open lock, flags it
/// `RECYCLED` (so an opener that already found it starts over) and `IPC_RMID`s it. The state is
/// judged under the lock; a ring `rule` does not allow is left alone with `InUse`. Returns the
/// ring as it was just before removal.
pub fn remove(addr: &SegmentAddr, rule: Removal) -> Result<RingInfo, Error> {
    let (key, id) = find(addr)?;
    remove_id(key, id, expected_name(addr), rule)
}

fn remove_id(key: i32, id: ShmId, expect: Option<&str>, rule: Removal) -> Result<RingInfo, Error> {
    let (backing, layout) = attach_ring(key, id, expect, Access::ReadWrite)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let lock = match backing.lock(layout.kind, deadline) {
        Ok(l) => Some(l),
        Err(_) if rule == Removal::Force => None,
        Err(e) => return Err(e),
    };
    let st = shm::stat(id).map_err(io_err("shmctl(IPC_STAT)"))?;
    let info = ring_info(
        &backing,
        &layout,
        key,
        st.mode & SHM_DEST != 0,
        (st.nattch, st.uid),
    );
    let allowed = match rule {
        Removal::Force => true,
        Removal::StaleOnly => info.status == RingStatus::Stale,
        Removal::Unheld => info.status != RingStatus::Live,
    };
    if !allowed {
        let holders: Vec<String> = [("sender", info.sender), ("receiver", info.receiver)]
            .iter()
            .filter(|(_, r)| r.peer == Peer::Alive)
            .map(|(what, r)| format!("{what} pid {}", r.pid))
            .collect();
        let why = if holders.is_empty() {
            format!("it is {}", info.status.as_str())
        } else {
            format!("held by live {}", holders.join(" and "))
        };
        return Err(Error::InUse(format!("ring {:?} not removed: {why}", info.name)));
    }
    backing.retire();
    drop(lock);
    Ok(info)
}

/// What [`remove_stale`] did.
#[non_exhaustive]
#[derive(Debug, Default)]
pub struct StaleRemoval {
    /// The rings removed, as they were just before.
    pub removed: Vec<RingInfo>,
    /// Stale rings that could not be removed, and why.
    pub failed: Vec<(RingInfo, Error)>,
}

/// Removes every stale ring of ours (whose name starts with `prefix`, if given), each judged
/// again under its lock: one that became live or pending meanwhile is left alone (and not
/// reported as failed).
pub fn remove_stale(prefix: Option<&str>) -> Result<StaleRemoval, Error> {
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    for ring in rings()? {
        if ring.status != RingStatus::Stale || prefix.is_some_and(|p| !ring.name.starts_with(p)) {
            continue;
        }
        match remove_id(ring.key, ShmId(ring.id), Some(&ring.name), Removal::StaleOnly) {
            Ok(info) => removed.push(info),
            // Removed by someone else meanwhile: nothing left to do.
            Err(Error::Io { source, .. }) if is_gone(&source) => {}
            // No longer stale (an opener took it over): not ours to remove.
            Err(Error::InUse(_)) => {}
            Err(e) => failed.push((ring, e)),
        }
    }
    Ok(StaleRemoval { removed, failed })
}

/// A stable, printable form of a key.
pub fn key_hex(key: i32) -> String {
    format!("{:#010x}", key as u32)
}
