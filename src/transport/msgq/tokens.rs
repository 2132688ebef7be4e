//! The semaphore set at a queue's key: liveness the kernel keeps for the queue's shmpipe ends,
//! whatever PID namespace they live in (see `sys::sem` for what `SEM_UNDO` guarantees).
//!
//! Semaphore keys are a namespace of their own (apart from message-queue and shm keys), so the set
//! lives at the queue's own key. Its semaphores:
//!
//! | # | what | adjusted |
//! |---|---|---|
//! | 0 | live receivers | `+1`/`-1` with `SEM_UNDO` (a token) |
//! | 1 | live senders | `+1`/`-1` with `SEM_UNDO` (a token) |
//! | 2 | receivers joined | `+1` per join, no undo, wraps from 32767 to 1 |
//! | 3 | senders joined | `+1` per join, no undo, wraps from 32767 to 1 |
//! | 4-6 | the tag: `msqid + 1`, 11 bits each | written once, by the set's creator |
//!
//! An end takes its token and bumps its role's `joined` in one `semop` and gives the token back
//! when it closes; the kernel gives it back when the process dies. Its peers read the counters
//! with `GETVAL`, `joined` before `live` (see [`read_counts`]).
//!
//! # Which queue a set belongs to
//!
//! A set outlives its queue when the queue is removed by someone who does not remove the set (a
//! foreign client, `ipcrm -q`, a crash between the two removals), and a new queue at the key must
//! not inherit its counts. So a set carries the id of its queue (the tag): an opener uses the set
//! at the key only if its tag is its queue's id. A set tagged with another id belonged to a queue
//! that is gone (ids are not reused while the key has a queue); the opener checks its own queue
//! is still at the key (else that set may be its successor's) and removes the set. No set at the
//! key: the opener creates one (`IPC_EXCL`: of two racing openers one creates, the other uses it)
//! and tags it in one `semop`. That makes an untagged set a creator between those two calls:
//! others wait for its tag, and remove it only if none comes within [`UNTAGGED_GRACE`] (its creator
//! died there). A creator stalled longer than that finds its set gone when it tags it or takes its
//! token, or when it looks the key up after its token, and starts over.
//!
//! Whoever removes a queue removes its set afterwards (by id: it can only be that queue's), and
//! an end that finds its queue gone when it closes removes the set too.

use crate::ring::Role;
use crate::sys::msgq::{self, MsqId};
use crate::sys::sem::{self, Op, SemId};
use crate::transport::sysv::is_gone;
use std::io;
use std::time::{Duration, Instant};

/// Semaphores in the set.
pub(crate) const NSEMS: usize = 7;
/// The first of the three tag semaphores.
const TAG: usize = 4;
const TAG_BITS: u32 = 11;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// The largest value of a semaphore (Linux's `SEMVMX`).
const SEMVMX: i16 = 32767;
/// How long a set may stay untagged (its creator between `semget` and its first `semop`) before
/// it is taken for abandoned by a creator that died there.
pub(crate) const UNTAGGED_GRACE: Duration = Duration::from_millis(500);

/// Index of a role's counters.
fn slot(role: Role) -> usize {
    match role {
        Role::Receiver => 0,
        Role::Sender => 1,
    }
}

fn other(role: Role) -> Role {
    match role {
        Role::Receiver => Role::Sender,
        Role::Sender => Role::Receiver,
    }
}

/// What the set says of both roles, at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counts {
    live: [u16; 2],
    joined: [u16; 2],
}

impl Counts {
    /// Ends of `role` alive now (holding a token).
    pub(crate) fn live(&self, role: Role) -> u16 {
        self.live[slot(role)]
    }

    /// How many ends of `role` ever joined (modulo 32767: compare for change, not order).
    pub(crate) fn joined(&self, role: Role) -> u16 {
        self.joined[slot(role)]
    }
}

/// The tag of queue `q`: `q + 1` in three 11-bit parts (a msqid is below 2^31), never all 0.
fn tag_of(q: MsqId) -> [u16; 3] {
    let t = q.0 as u32 as u64 + 1;
    [0, 1, 2].map(|i| ((t >> (TAG_BITS * i)) & TAG_MASK) as u16)
}

fn get(set: SemId, num: usize) -> io::Result<u16> {
    sem::value(set, num).map(|v| v as u16)
}

/// Both roles' counters, one `GETVAL` each (not a snapshot; `GETALL` would be, but writes as many
/// values as the set *now* has, which a buffer sized beforehand cannot be sure of). `joined` is
/// read before `live`: an end takes its token and counts its join in one `semop`, so an end
/// that joins between the reads shows as live, and no read order can show a live end's join
/// without its token (which would be taken for an end that joined and died).
fn read_counts(set: SemId) -> io::Result<Counts> {
    let joined = [get(set, 2)?, get(set, 3)?];
    let live = [get(set, 0)?, get(set, 1)?];
    Ok(Counts { live, joined })
}

/// Reads of the tag before it is taken for unreadable (someone keeps rewriting it).
const TAG_READS: usize = 8;

/// The tag, read until two reads in a row agree (`None`: they never did). It is written once, in
/// one `semop`: a read that straddles that write may see some parts and not others, but two
/// reads in a row cannot both straddle it, and a straddling read differs from the next unless it
/// saw the whole tag.
fn read_tag(set: SemId) -> io::Result<Option<[u16; 3]>> {
    let read = || -> io::Result<[u16; 3]> { Ok([get(set, TAG)?, get(set, TAG + 1)?, get(set, TAG + 2)?]) };
    let mut last = read()?;
    for _ in 1..TAG_READS {
        let now = read()?;
        if now == last {
            return Ok(Some(now));
        }
        last = now;
    }
    Ok(None)
}

/// What the set at the key is to queue `q`.
enum Found {
    /// Tagged with `q`: its set.
    Ours(Counts),
    /// Tagged with another queue's id: left over from a queue that is gone.
    Stale,
    /// Not tagged yet: its creator is between `semget` and its first `semop` (or died there).
    Untagged,
    /// Not a set of ours: another size, or owned by a uid that neither the queue nor we are, or
    /// granting writes the queue does not. Never used, never removed.
    Foreign,
    /// Removed meanwhile.
    Gone,
}

/// Who the queue belongs to: a set must belong to the same uid (or ours) and grant no more.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueOwner {
    pub(crate) uid: u32,
    pub(crate) cuid: u32,
    pub(crate) mode: u32,
}

fn judge(set: SemId, q: MsqId, owner: &QueueOwner) -> Found {
    let st = match sem::stat(set) {
        Ok(st) => st,
        Err(e) if is_gone(&e) => return Found::Gone,
        Err(_) => return Found::Foreign,
    };
    // The queue's owner's, or ours (a set we could have made ourselves).
    let me = crate::sys::proc::euid();
    let same_owner = [st.uid, st.cuid]
        .iter()
        .any(|u| *u == owner.uid || *u == owner.cuid || *u == me);
    if st.nsems != NSEMS || !same_owner || st.mode & 0o022 & !owner.mode != 0 {
        return Found::Foreign;
    }
    let tag = match read_tag(set) {
        Ok(Some(tag)) => tag,
        Ok(None) => return Found::Foreign,
        Err(e) if is_gone(&e) => return Found::Gone,
        Err(_) => return Found::Foreign,
    };
    if tag == [0; 3] {
        return Found::Untagged;
    }
    if tag != tag_of(q) {
        return Found::Stale;
    }
    match read_counts(set) {
        Ok(c) => Found::Ours(c),
        Err(e) if is_gone(&e) => Found::Gone,
        Err(_) => Found::Foreign,
    }
}

/// The set of queue `q` and a snapshot of it, if the key has one (nothing is created or removed).
pub(crate) fn find(key: i32, q: MsqId, owner: &QueueOwner) -> Option<(SemId, Counts)> {
    let set = sem::lookup(key).ok()?;
    match judge(set, q, owner) {
        Found::Ours(c) => Some((set, c)),
        _ => None,
    }
}

/// What [`attach`] got.
pub(crate) enum Attached {
    /// The set of our queue, our token in it taken, and a snapshot taken right after.
    Joined(SemId, Counts),
    /// No set can be used (a foreign one at the key, no ids left, no permission...): liveness by
    /// pids only.
    Without,
    /// Our queue is no longer at the key: open again.
    QueueGone,
}

/// Finds or makes the set of queue `q` at `key` and takes `role`'s token in it. See the module
/// docs for how sets left by earlier queues and racing openers are handled.
pub(crate) fn attach(
    key: i32,
    q: MsqId,
    owner: &QueueOwner,
    mode: u32,
    role: Role,
    deadline: Instant,
) -> Result<Attached, crate::Error> {
    // The untagged set we are waiting on, and since when.
    let mut untagged: Option<(SemId, Instant)> = None;
    loop {
        if Instant::now() >= deadline {
            return Ok(Attached::Without);
        }
        let set = match sem::lookup(key) {
            Ok(set) => set,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => match create(key, q, mode) {
                Created::Set(set) => set,
                Created::Retry => continue,
                Created::Without => return Ok(Attached::Without),
            },
            Err(_) => return Ok(Attached::Without),
        };
        match judge(set, q, owner) {
            Found::Ours(_) => {}
            Found::Foreign => return Ok(Attached::Without),
            Found::Gone => continue,
            Found::Untagged => {
                let now = Instant::now();
                match untagged {
                    Some((s, since)) if s == set => {
                        if now.duration_since(since) >= UNTAGGED_GRACE {
                            // Its creator died between semget and tagging it.
                            if !removed(set) {
                                return Ok(Attached::Without);
                            }
                            untagged = None;
                        } else {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    _ => untagged = Some((set, now)),
                }
                continue;
            }
            Found::Stale => {
                // Only while our queue is still the one at the key: otherwise the set may be
                // that of the queue that replaced ours.
                match msgq::lookup(key) {
                    Ok(id) if id == q => {
                        if !removed(set) {
                            return Ok(Attached::Without);
                        }
                        continue;
                    }
                    Ok(_) => return Ok(Attached::QueueGone),
                    Err(e) if is_gone(&e) => return Ok(Attached::QueueGone),
                    Err(_) => return Ok(Attached::Without),
                }
            }
        }
        match take(set, role) {
            Ok(()) => {}
            Err(e) if is_gone(&e) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                return Err(crate::Error::Limit(format!(
                    "the liveness semaphore set of the queue at key {key:#x} counts 32767 live \
                     ends of this role (or this process holds 32767 of them)"
                )))
            }
            Err(_) => return Ok(Attached::Without),
        }
        // A creator stalled past the grace may have had its set removed as abandoned after it
        // tagged it: then its token went with it. Look again.
        let counts = match sem::lookup(key) {
            Ok(s) if s == set => read_counts(set),
            Ok(_) => Err(io::Error::from_raw_os_error(libc::EIDRM)),
            Err(e) => Err(e),
        };
        match counts {
            Ok(counts) => return Ok(Attached::Joined(set, counts)),
            Err(e) => {
                give_back(set, role);
                if !is_gone(&e) {
                    return Ok(Attached::Without);
                }
            }
        }
    }
}

/// Removes a set that is not (or no longer) any live queue's: whether it is gone now.
fn removed(set: SemId) -> bool {
    match sem::remove(set) {
        Ok(()) => true,
        Err(e) => is_gone(&e),
    }
}

/// Gives `role`'s token back (nothing if the set is gone).
fn give_back(set: SemId, role: Role) {
    let _ = sem::apply(
        set,
        &[Op {
            num: slot(role),
            delta: -1,
            undo: true,
        }],
    );
}

enum Created {
    Set(SemId),
    Retry,
    Without,
}

/// Creates the set at `key` (`IPC_EXCL`) and tags it with `q`, in one `semop`.
fn create(key: i32, q: MsqId, mode: u32) -> Created {
    let set = match sem::create(key, NSEMS, mode, true) {
        Ok(set) => set,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Created::Retry,
        Err(_) => return Created::Without,
    };
    let tag = tag_of(q);
    let mut ops = [Op {
        num: 0,
        delta: 0,
        undo: false,
    }; 3];
    let mut n = 0;
    for (i, part) in tag.iter().enumerate() {
        if *part != 0 {
            ops[n] = Op {
                num: TAG + i,
                delta: *part as i16,
                undo: false,
            };
            n += 1;
        }
    }
    match sem::apply(set, &ops[..n]) {
        Ok(()) => Created::Set(set),
        // Taken for abandoned and removed (we stalled past the grace): start over.
        Err(e) if is_gone(&e) => Created::Retry,
        Err(_) => {
            let _ = sem::remove(set);
            Created::Without
        }
    }
}

/// Takes `role`'s token and counts the join, in one `semop`.
fn take(set: SemId, role: Role) -> io::Result<()> {
    let live = Op {
        num: slot(role),
        delta: 1,
        undo: true,
    };
    let joined = 2 + slot(role);
    match sem::apply(
        set,
        &[
            live,
            Op {
                num: joined,
                delta: 1,
                undo: false,
            },
        ],
    ) {
        // `joined` may be at the maximum: wrap it to 1 instead (this fails with EAGAIN if it was
        // not, i.e. if `live` was the one out of range).
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => sem::apply(
            set,
            &[
                live,
                Op {
                    num: joined,
                    delta: -(SEMVMX - 1),
                    undo: false,
                },
            ],
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EAGAIN) => io::Error::from_raw_os_error(libc::ERANGE),
            _ => e,
        }),
        r => r,
    }
}

/// What the tokens say of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A peer holds a token.
    Alive,
    /// No token is held, and a peer of ours held one: every shmpipe peer is gone.
    Dead,
    /// Nothing to go by (no shmpipe peer joined since we opened, or the set cannot be read).
    Unknown,
}

/// One end's membership of the set.
#[derive(Debug)]
pub(crate) struct Membership {
    set: SemId,
    role: Role,
    /// Whether we hold our token (given back once, at close).
    held: bool,
    /// The peer role's `joined` when we first looked: a change means a peer joined since.
    baseline: u16,
    /// A peer has been seen holding a token since we opened (or was adopted at open).
    seen: bool,
}

impl Membership {
    /// `first`: the earliest snapshot of the set this open took (before deciding to use the
    /// queue), `joined`: the one right after our join. With `adopt`, peers that joined before us
    /// and are gone count as ours (a receiver draining messages a dead sender left).
    pub(crate) fn new(set: SemId, role: Role, first: Counts, joined: Counts, adopt: bool) -> Self {
        let peer = other(role);
        Membership {
            set,
            role,
            held: true,
            baseline: first.joined(peer),
            seen: first.live(peer) > 0 || joined.live(peer) > 0 || (adopt && first.joined(peer) != 0),
        }
    }

    /// The peer role's state by the tokens now: two `GETVAL`s, `joined` before `live` (see
    /// [`read_counts`]).
    pub(crate) fn verdict(&mut self) -> Verdict {
        let peer = slot(other(self.role));
        let Ok(joined) = get(self.set, 2 + peer) else {
            return Verdict::Unknown;
        };
        let Ok(live) = get(self.set, peer) else {
            return Verdict::Unknown;
        };
        if live > 0 {
            self.seen = true;
            Verdict::Alive
        } else if self.seen || joined != self.baseline {
            Verdict::Dead
        } else {
            Verdict::Unknown
        }
    }

    /// Closes: removes the set if its queue is gone (it can only be that queue's), else gives our
    /// token back. Call after everything this end queues is queued.
    pub(crate) fn leave(&mut self, queue_gone: bool) {
        if !self.held {
            return;
        }
        self.held = false;
        if queue_gone {
            let _ = sem::remove(self.set);
        } else {
            give_back(self.set, self.role);
        }
    }

    #[cfg(test)]
    pub(crate) fn set(&self) -> SemId {
        self.set
    }
}

/// Removes the set at `key` if it is queue `q`'s (for a queue removed without an end of ours).
pub(crate) fn remove_for(key: i32, q: MsqId, owner: &QueueOwner) {
    if let Some((set, _)) = find(key, q, owner) {
        let _ = sem::remove(set);
    }
}

/// Makes a set at `key` as someone else would have left it: tagged for `tag` (or not yet
/// tagged), with these counts (no undo: they stay).
#[cfg(test)]
pub(crate) fn plant(key: i32, tag: Option<MsqId>, live: [u16; 2], joined: [u16; 2]) -> SemId {
    let set = sem::create(key, NSEMS, 0o600, true).unwrap();
    let mut values = [live[0], live[1], joined[0], joined[1], 0, 0, 0];
    if let Some(q) = tag {
        values[TAG..].copy_from_slice(&tag_of(q));
    }
    let ops: Vec<Op> = (0..NSEMS)
        .filter(|&n| values[n] != 0)
        .map(|n| Op {
            num: n,
            delta: values[n] as i16,
            undo: false,
        })
        .collect();
    if !ops.is_empty() {
        sem::apply(set, &ops).unwrap();
    }
    set
}

/// Tags `set` for `q`, as its creator does.
#[cfg(test)]
pub(crate) fn tag(set: SemId, q: MsqId) {
    let ops: Vec<Op> = tag_of(q)
        .iter()
        .enumerate()
        .filter(|(_, p)| **p != 0)
        .map(|(i, p)| Op {
            num: TAG + i,
            delta: *p as i16,
            undo: false,
        })
        .collect();
    sem::apply(set, &ops).unwrap();
}

/// The counts of `set`, for tests.
#[cfg(test)]
pub(crate) fn counts(set: SemId) -> Counts {
    read_counts(set).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rm(SemId);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = sem::remove(self.0);
        }
    }

    #[test]
    fn joins_wrap_and_verdicts_follow_the_tokens() {
        let set = plant(libc::IPC_PRIVATE, None, [0, 0], [0, SEMVMX as u16]);
        let _rm = Rm(set);
        // A receiver that opened before any sender came.
        let before = read_counts(set).unwrap();
        let mut rx = Membership::new(set, Role::Receiver, before, before, false);
        assert_eq!(rx.verdict(), Verdict::Unknown);
        // `joined` is at the maximum: it wraps to 1.
        take(set, Role::Sender).unwrap();
        let c = read_counts(set).unwrap();
        assert_eq!((c.live(Role::Sender), c.joined(Role::Sender)), (1, 1));
        assert_eq!(rx.verdict(), Verdict::Alive);
        give_back(set, Role::Sender);
        assert_eq!(rx.verdict(), Verdict::Dead);
        // Gone before we opened: nothing to go by, unless adopted (a receiver draining it).
        let after = read_counts(set).unwrap();
        let mut late = Membership::new(set, Role::Receiver, after, after, false);
        assert_eq!(late.verdict(), Verdict::Unknown);
        let mut adopting = Membership::new(set, Role::Receiver, after, after, true);
        assert_eq!(adopting.verdict(), Verdict::Dead);
        // A sender that joins and dies without ever being seen alive still changed `joined`.
        take(set, Role::Sender).unwrap();
        give_back(set, Role::Sender);
        assert_eq!(late.verdict(), Verdict::Dead);
    }

    #[test]
    fn tags_are_never_zero_and_tell_ids_apart() {
        assert_ne!(tag_of(MsqId(0)), [0; 3]);
        assert_eq!(tag_of(MsqId(0)), [1, 0, 0]);
        assert_ne!(tag_of(MsqId(i32::MAX)), [0; 3]);
        assert!(tag_of(MsqId(i32::MAX)).iter().all(|p| *p <= TAG_MASK as u16));
        assert_ne!(tag_of(MsqId(2047)), tag_of(MsqId(2046)));
        assert_ne!(tag_of(MsqId(1 << 22)), tag_of(MsqId(0)));
    }
}
