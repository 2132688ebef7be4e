//! Multi-producer multi-consumer ring of variable-length messages in fixed-size slots, shared by
//! any number of sending and receiving processes (or threads), that survives a member's SIGKILL.
//!
//! # Algorithm
//! Dmitry Vyukov's bounded MPMC queue (as in crossbeam's `ArrayQueue`): two free-running u64
//! positions, `enqueue` and `dequeue`, and in every slot a sequence word saying which position
//! the slot is ready for. For position `p` in slot `p % capacity`:
//!
//! ```text
//! seq == p              free: a producer may claim p (CAS enqueue p -> p+1), write, then
//!                       CAS seq p -> p+1
//! seq == p + 1          published: a consumer may claim p (CAS dequeue p -> p+1), read, then
//!                       CAS seq p+1 -> p + capacity (free for the next lap)
//! seq == TOMB | (p + 1) published, but empty: consumers skip it (a reservation dropped without
//!                       commit, or the slot of a producer that died holding it)
//! ```
//!
//! (Crossbeam stores the sequence after the write and the read; here both are CASes from the
//! value the claim found, see "A member wrongly taken for dead" below.)
//!
//! The sequence is stored relative to the slot number (`seq - slot`), so zeroed memory (a fresh
//! segment) is the initial state: slot `i` free for position `i`.
//!
//! Messages of one producer are received in the order sent by every consumer (positions claimed
//! by one producer increase, and so do the positions one consumer claims); across consumers
//! there is no order.
//!
//! # A member killed mid-operation
//! A naive Vyukov queue wedges when a producer dies between claiming a position and publishing
//! it (every consumer waits on that slot forever), or a consumer dies between claiming a message
//! and freeing its slot (producers wait at that slot a lap later). Here every member announces
//! the position it is about to claim in its own record (`Member::claim`, stored before the CAS
//! that claims it, published by that CAS's Release), and clears it when an attempt ends without a
//! claim. A side stalled on a slot (after a park slice, or every `LIVENESS_INTERVAL` for `try_`
//! calls) looks at the members of the other role: if no *live* member announces the stalled
//! position, the member that claimed it is dead (or left without publishing), and the slot is
//! recovered with one CAS on its sequence from the exact stalled value:
//!
//! - a producer's claimed, unwritten slot becomes a tombstone (consumers skip it) and
//!   `lost` counts it;
//! - a consumer's claimed, unreleased slot is freed for the next lap and `dropped` counts it.
//!
//! The CAS cannot succeed on a slot that has moved on, so a slow live member is never robbed: a
//! live claimant is always visible (its announcement happens before its claiming CAS, which
//! happens before the stalled side's Acquire load of the position that proves the claim).
//!
//! Guarantee: every message a live producer publishes is received exactly once, unless every
//! receiver leaves; a producer that dies loses at most the one message it was writing (or the
//! unpublished rest of a batch), a consumer that dies at most the one it was reading (or the
//! unfreed rest of a batch); both losses are counted ([`Stats`]).
//!
//! # Batches
//! `try_send_batch` and `try_recv_batch` (and their blocking forms) claim a *run* of consecutive
//! positions with one CAS of `enqueue` / `dequeue` (as DPDK's `rte_ring` bulk calls do): the run
//! is the slots from the position on that are free (published) at the time of the look, at most
//! the batch's size. A slot seen free stays free until its position is claimed, and claiming it
//! moves the position, which fails the CAS, so every slot of a won run is ours. Each slot is then
//! still published (freed) by its own CAS, exactly as a single message's: that keeps the two
//! guarantees above per slot. What a batch saves is the shared position's CAS (the contended
//! line) and the sender's checks per message, and the doorbell: one check for sleepers per batch
//! (a syscall only if someone sleeps), after the last slot.
//!
//! The member record announces the run: `claim` its first position and `claim_more` how many
//! follow, both stored before the claiming CAS, so the argument above holds for every slot of it
//! (`covers`); `claim_more` goes back to 0 (a Release store) once every slot of the run is
//! published or freed. A member killed in the middle of a batch leaves a run whose published
//! (freed) slots are a prefix: recovery starts at the stalled slot and goes on over the following
//! ones while they are stalled and no live member announces them, so the run is recovered in one
//! slow path, not one park slice per slot. A batch whose slot was recovered from it (a false
//! verdict) stops there: the rest of its run is published as tombstones (counted `discarded`), so
//! what it reports sent is a prefix; a receiver drops that slot's message and reports
//! [`RecvError::Lost`] (at its next call if it took other messages in this one), as it does
//! `Corrupted` for a message with an impossible length.
//!
//! # A member wrongly taken for dead
//! The liveness verdict can be wrong (a member record overwritten by another process, say, or a pid
//! check fooled). The member then comes back to a slot that was recovered and has moved on
//! (tombstoned, freed, perhaps reused for the next lap). So `publish` and `free` are CASes too,
//! from the exact value the claim left (`p`, free for this lap; `p + 1`, published, with `TOMB` for
//! a tombstone) to the next (`p + 1`; `p + capacity`): against a recovered slot they fail and write
//! nothing, where a store would rewind the slot and wedge the ring. `robbed` counts each time
//! ([`Stats::robbed`]). The message is lost, and was already counted by the member that recovered
//! the slot (`lost` for a producer's, `dropped` for a consumer's). The member is told: `send`,
//! `try_send` and `WriteGuard::commit` return [`SendError::Lost`], `recv` and `try_recv` return
//! [`RecvError::Lost`] (not the bytes they copied, which the next lap's producer may have been
//! overwriting), and a `ReadGuard`, whose bytes were already shown in place, frees nothing on drop.
//!
//! What a robbed producer wrote before its CAS cannot be taken back: its bytes and length word
//! may land in the slot's next message. For `send` that takes a claim recovered during the call
//! (claim, copy, CAS); a `WriteGuard`'s commit looks at the sequence before it stores the length
//! word, so a guard robbed while it was held (its bytes written through it) adds nothing more.
//!
//! # Membership
//! A table of [`MAX_MEMBERS`] records in the control block says who is attached, as what, with
//! pid and start time. Joining, leaving and reaping dead members happen under the ring's lock
//! word (`ring::lock`), which also recounts the live senders and receivers from the table, so the
//! counts are corrected when a member dies without leaving. Receivers get `Disconnected` once at
//! least `expect_senders` senders (default 1) have joined, none is left, and the ring is drained;
//! senders get `Disconnected` once a receiver has joined and none is left.

#[cfg(all(feature = "tokio", not(loom)))]
mod aio;

use super::lock::{LockWord, RingLock};
use super::tokens::{self, Tokens};
use super::wait::{wait_until, Check, Doorbell, Tally, WaitCounters};
use super::{
    cold_clone, copy_payload, too_large, unwinding_under_loom, Geometry, HeapMemory, LivenessTimer, Peer,
    RingKind, Role, Slots, WaitStrategy,
};
use crate::channel::{Batch, Receiver, Sender};
use crate::error::*;
use crate::sync::{AtomicU32, AtomicU64, PUBLISH};
use crossbeam_utils::CachePadded;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most members (senders plus receivers) a ring can have at once.
pub const MAX_MEMBERS: usize = if cfg!(loom) { 4 } else { 64 };

const _: () = assert!(MAX_MEMBERS.is_power_of_two());
// One waiter bit per member record in a doorbell's `waiters` word (`waiter_bit`).
const _: () = assert!(MAX_MEMBERS <= u64::BITS as usize);

/// The waiter bit of member record `index` in the `waiters` word of the doorbell its role sleeps
/// on (`not_full` for senders, `not_empty` for receivers).
#[inline]
pub(crate) fn waiter_bit(index: usize) -> u64 {
    1 << (index % MAX_MEMBERS)
}

/// Sequence flag: the published slot carries no message.
const TOMB: u64 = 1 << 63;

const VACANT: u32 = 0;
const SENDER: u32 = 1;
const RECEIVER: u32 = 2;

fn role_code(role: Role) -> u32 {
    match role {
        Role::Sender => SENDER,
        Role::Receiver => RECEIVER,
    }
}

/// One member of the ring. Its owner writes `claim` on every operation; the rest changes only
/// under the ring lock.
#[repr(C)]
pub(crate) struct Member {
    /// `VACANT`, `SENDER` or `RECEIVER`.
    pub(crate) role: AtomicU32,
    pub(crate) pid: AtomicU32,
    pub(crate) start_time: AtomicU64,
    /// 1 + the (first) position this member is claiming or holds; 0 when it holds none.
    pub(crate) claim: AtomicU64,
    /// How many positions after the first the claim covers: 0 for one slot, `k - 1` while a
    /// batch claims `k` (see `covers`). Nonzero only from a batch's announcement until every slot
    /// of it is published or freed, so a one-slot claim never has to store it.
    pub(crate) claim_more: AtomicU64,
}

/// Whether a member record announcing `claim` (1 + the first position, 0 for none) and
/// `claim_more` (positions after the first) covers `pos`. Both are untrusted: they only decide
/// whether a stalled slot is left alone, never where memory is accessed, and a live member that
/// announces too much can only delay the recovery of slots it could hold anyway.
#[inline]
fn covers(claim: u64, claim_more: u64, pos: u64) -> bool {
    claim != 0 && pos.wrapping_sub(claim - 1) <= claim_more
}

/// Who is attached, counted from the member table under the lock.
#[repr(C)]
pub(crate) struct Roster {
    pub(crate) senders: AtomicU32,
    pub(crate) receivers: AtomicU32,
    /// How many senders / receivers ever joined.
    pub(crate) senders_joined: AtomicU32,
    pub(crate) receivers_joined: AtomicU32,
    /// How many were found dead (reaped) rather than leaving.
    pub(crate) senders_died: AtomicU32,
    pub(crate) receivers_died: AtomicU32,
}

/// What recovery and validation had to throw away, for [`Stats`] and `shmpipe stat`.
#[repr(C)]
pub(crate) struct LossCounters {
    /// Slots claimed by a producer that died (or left) before publishing: skipped.
    pub(crate) lost: AtomicU64,
    /// Messages claimed by a consumer that died before freeing the slot.
    pub(crate) dropped: AtomicU64,
    /// Reservations dropped without commit.
    pub(crate) discarded: AtomicU64,
    /// Messages with an impossible length word, skipped and reported as `Corrupted`.
    pub(crate) corrupt: AtomicU64,
    /// Members that came back to a slot recovered from them (they were alive after all) and
    /// wrote nothing (`publish` and `free` are CASes from the exact value the claim left).
    pub(crate) robbed: AtomicU64,
}

// The loss counters share one 128-byte line: a new one must not move what follows.
const _: () = assert!(size_of::<LossCounters>() <= 128);

/// The control block of an MPMC ring, each group on its own 128-byte line. All-zero bytes are a
/// valid initial state.
#[repr(C)]
pub(crate) struct MpmcShared {
    pub(crate) enqueue: CachePadded<AtomicU64>,
    pub(crate) dequeue: CachePadded<AtomicU64>,
    /// Receivers sleep here while the ring is empty.
    pub(crate) not_empty: CachePadded<Doorbell>,
    /// Senders sleep here while the ring is full.
    pub(crate) not_full: CachePadded<Doorbell>,
    pub(crate) lock: CachePadded<LockWord>,
    pub(crate) roster: CachePadded<Roster>,
    pub(crate) counters: CachePadded<WaitCounters>,
    pub(crate) losses: CachePadded<LossCounters>,
    pub(crate) members: [CachePadded<Member>; MAX_MEMBERS],
}

impl MpmcShared {
    pub(crate) fn new() -> Self {
        MpmcShared {
            enqueue: CachePadded::new(AtomicU64::new(0)),
            dequeue: CachePadded::new(AtomicU64::new(0)),
            not_empty: CachePadded::new(Doorbell::new()),
            not_full: CachePadded::new(Doorbell::new()),
            lock: CachePadded::new(LockWord::new()),
            roster: CachePadded::new(Roster {
                senders: AtomicU32::new(0),
                receivers: AtomicU32::new(0),
                senders_joined: AtomicU32::new(0),
                receivers_joined: AtomicU32::new(0),
                senders_died: AtomicU32::new(0),
                receivers_died: AtomicU32::new(0),
            }),
            counters: CachePadded::new(WaitCounters::new()),
            losses: CachePadded::new(LossCounters {
                lost: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
                robbed: AtomicU64::new(0),
            }),
            members: std::array::from_fn(|_| {
                CachePadded::new(Member {
                    role: AtomicU32::new(VACANT),
                    pid: AtomicU32::new(0),
                    start_time: AtomicU64::new(0),
                    claim: AtomicU64::new(0),
                    claim_more: AtomicU64::new(0),
                })
            }),
        }
    }

    /// Reads both positions (Acquire) and checks `0 <= enqueue - dequeue <= capacity`.
    pub(crate) fn positions(&self, capacity: usize) -> Result<(u64, u64), Corrupted> {
        let (dequeue, enqueue) = (self.dequeue.load(Acquire), self.enqueue.load(Acquire));
        if enqueue.wrapping_sub(dequeue) > capacity as u64 {
            return Err(Corrupted {
                reason: format!("positions dequeue={dequeue} enqueue={enqueue} are more than a ring apart"),
            });
        }
        Ok((dequeue, enqueue))
    }

    /// Live senders and receivers as last counted, and how many of each ever joined.
    pub(crate) fn census(&self) -> Census {
        let r = &self.roster;
        // Acquire: pairs with the Release stores of the counts (in `recount`), so whatever a
        // member did before leaving is visible to whoever sees it gone.
        Census {
            senders: r.senders.load(Acquire),
            receivers: r.receivers.load(Acquire),
            senders_joined: r.senders_joined.load(Acquire),
            receivers_joined: r.receivers_joined.load(Acquire),
            senders_died: r.senders_died.load(Relaxed),
            receivers_died: r.receivers_died.load(Relaxed),
        }
    }

    /// Whether every receiver that joined has gone (none may have joined yet: then false). One
    /// load while receivers are attached: this is on every send.
    #[inline]
    pub(crate) fn receivers_gone(&self) -> bool {
        // Acquire: pairs with the Release stores of `recount`.
        self.roster.receivers.load(Acquire) == 0 && self.roster.receivers_joined.load(Acquire) > 0
    }

    /// Takes a vacant member record for this process. Caller holds the ring lock.
    pub(crate) fn join(&self, role: Role, tokens: Tokens) -> Result<usize, crate::Error> {
        for pass in 0..2 {
            if let Some(index) = self.members.iter().position(|m| m.role.load(Acquire) == VACANT) {
                let m = &self.members[index];
                // The token first: whoever sees the record's role sees it held (see `tokens`).
                tokens.take(index)?;
                #[cfg(not(loom))]
                {
                    let me = crate::sys::proc::current();
                    m.pid.store(me.pid, Relaxed);
                    m.start_time.store(me.start_time, Relaxed);
                }
                // Relaxed (all four): published by the Release store of the role below.
                m.claim.store(0, Relaxed);
                m.claim_more.store(0, Relaxed);
                // The record was vacant, so nobody owns its waiter bits: a bit still set (left by
                // a corrupted word) would only cost futex calls until the next reap.
                let bit = waiter_bit(index);
                self.not_empty.forget_waiters(bit);
                self.not_full.forget_waiters(bit);
                m.role.store(role_code(role), Release);
                let joined = match role {
                    Role::Sender => &self.roster.senders_joined,
                    Role::Receiver => &self.roster.receivers_joined,
                };
                // Release: pairs with `census`.
                joined.fetch_add(1, Release);
                self.recount();
                return Ok(index);
            }
            if pass == 0 {
                self.reap(tokens);
            }
        }
        Err(crate::Error::Limit(format!(
            "the ring already has {MAX_MEMBERS} senders and receivers attached"
        )))
    }

    /// Gives up a member record, then its token. Caller holds the ring lock (or could not get it:
    /// best effort).
    fn leave(&self, index: usize, role: Role, tokens: Tokens) {
        let m = &self.members[index];
        // Only if the record is still ours (a corrupted table may say otherwise).
        if m.role.load(Acquire) == role_code(role) {
            // Release: everything we published happens before a member that sees us gone.
            m.role.store(VACANT, Release);
        }
        tokens.give_back(index);
        self.recount();
    }

    /// Vacates the records of members whose process died, and recounts. Caller holds the lock.
    /// Returns how many were reaped.
    ///
    /// Also clears every waiter bit that no live member owns: a member killed while parked (or
    /// anywhere between setting its bit and clearing it) leaves its bit set, and every publish
    /// (or free) would then make a futex call for a sleeper that no longer exists. The bit is
    /// cleared before the record can be reused (`join` takes the lock too).
    pub(crate) fn reap(&self, tokens: Tokens) -> u32 {
        let mut reaped = 0;
        // The bits that may stay: those of the live members of the role sleeping on each bell.
        let (mut senders, mut receivers) = (0u64, 0u64);
        for (index, m) in self.members.iter().enumerate() {
            let role = m.role.load(Acquire);
            let (died, live) = match role {
                VACANT => continue,
                SENDER => (&self.roster.senders_died, &mut senders),
                RECEIVER => (&self.roster.receivers_died, &mut receivers),
                // No correct process writes this: free the record.
                _ => {
                    m.role.store(VACANT, Release);
                    continue;
                }
            };
            if member_alive(m, index, tokens) {
                *live |= waiter_bit(index);
            } else {
                m.role.store(VACANT, Release);
                // Relaxed: a statistic, published with the counts by `recount`.
                died.fetch_add(1, Relaxed);
                reaped += 1;
            }
        }
        // A live member's bit is kept even while it sets or clears it concurrently (these are
        // single atomic RMWs); a member that dies after being found alive is cleared next time.
        self.not_full.retain_waiters(senders);
        self.not_empty.retain_waiters(receivers);
        self.recount();
        reaped
    }

    /// Counts the live records of each role into the roster (self-healing: a count is never
    /// adjusted, always recomputed).
    fn recount(&self) {
        let (mut senders, mut receivers) = (0, 0);
        for m in self.members.iter() {
            match m.role.load(Acquire) {
                SENDER => senders += 1,
                RECEIVER => receivers += 1,
                _ => {}
            }
        }
        // Release: pairs with `census`.
        self.roster.senders.store(senders, Release);
        self.roster.receivers.store(receivers, Release);
    }

    /// Live members of each role right now (checking their processes, writing nothing: usable on
    /// a read-only attachment), with one live pid of each.
    // Used by `inspect`, which loom builds leave out.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn live_members(&self, tokens: Tokens) -> LiveMembers {
        let mut live = LiveMembers::default();
        for (index, m) in self.members.iter().enumerate() {
            let (count, pid) = match m.role.load(Acquire) {
                SENDER => (&mut live.senders, &mut live.sender_pid),
                RECEIVER => (&mut live.receivers, &mut live.receiver_pid),
                _ => continue,
            };
            if member_alive(m, index, tokens) {
                *count += 1;
                // Relaxed: ordered by the Acquire load of the role.
                *pid = m.pid.load(Relaxed);
            }
        }
        live
    }

    /// Whether a live member of `role` announces a claim (of one slot or of a batch's run)
    /// that covers position `pos`.
    fn live_claimant(&self, role: Role, pos: u64, tokens: Tokens) -> bool {
        self.members.iter().enumerate().any(|(index, m)| {
            // Acquire (all): a claimant's announcement (both words) is ordered before its
            // claiming CAS, which the caller has seen, so neither is read older than that claim;
            // a batch's range withdrawn after publishing (a Release store) shows the publications.
            m.role.load(Acquire) == role_code(role)
                && covers(m.claim.load(Acquire), m.claim_more.load(Acquire), pos)
                && member_alive(m, index, tokens)
        })
    }
}

/// Whether the process holding member record `index` is alive: its token, kept by the kernel
/// (see `tokens`; the holder took it before publishing the record, which the caller's Acquire
/// load of the role has seen). In a heap ring (`Tokens::Local`) every member is a thread of
/// ours, recorded by pid and start time, which unit tests overwrite to play a dead member.
fn member_alive(m: &Member, index: usize, tokens: Tokens) -> bool {
    match tokens {
        // Relaxed: ordered by the caller's Acquire load of the role.
        Tokens::Local => super::local_holder_alive(m.pid.load(Relaxed), m.start_time.load(Relaxed)),
        #[cfg(not(loom))]
        // A set removed under us (`rm --force`): the pid, as heap rings do.
        Tokens::Kernel(_) => tokens
            .held(index)
            .unwrap_or_else(|| super::local_holder_alive(m.pid.load(Relaxed), m.start_time.load(Relaxed))),
    }
}

/// Live members found by [`MpmcShared::live_members`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct LiveMembers {
    pub(crate) senders: u32,
    pub(crate) receivers: u32,
    /// The pid of a live sender / receiver (the last found), 0 if none.
    pub(crate) sender_pid: u32,
    pub(crate) receiver_pid: u32,
}

/// Live and total members, from the roster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Census {
    pub(crate) senders: u32,
    pub(crate) receivers: u32,
    pub(crate) senders_joined: u32,
    pub(crate) receivers_joined: u32,
    pub(crate) senders_died: u32,
    pub(crate) receivers_died: u32,
}

/// A snapshot of an MPMC ring's membership and losses.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Senders attached now (dead ones are removed when noticed).
    pub senders: u32,
    /// Receivers attached now.
    pub receivers: u32,
    /// Senders found dead (killed without leaving).
    pub senders_died: u32,
    /// Receivers found dead.
    pub receivers_died: u32,
    /// Slots a dead producer had claimed and never published: skipped.
    pub lost: u64,
    /// Messages a dead consumer had claimed and never finished: gone.
    pub dropped: u64,
    /// Reservations dropped without commit.
    pub discarded: u64,
    /// Messages skipped for an impossible length word.
    pub corrupt: u64,
    /// Members that were taken for dead while holding a slot and came back to find it recovered
    /// (a false liveness verdict, e.g. a member record overwritten): they wrote nothing to it. A
    /// sender's message is then in `lost` and its call returned [`SendError::Lost`]; a
    /// receiver's in `dropped`, and `recv` returned [`RecvError::Lost`] (a `recv_ref` guard had
    /// already shown the message in place: its drop frees nothing). Never counted for a member
    /// that really died.
    pub robbed: u64,
}

/// Where an MPMC ring's memory lives, and what happens when a member leaves.
pub(crate) trait MpmcBacking: Send + Sync {
    /// Called under the ring lock after a member left (its record vacated and counted).
    fn on_leave(&self, _shared: &MpmcShared) {}

    /// Whether the memory can no longer be found by newcomers (segment removed out of band).
    fn unreachable(&self) -> bool {
        false
    }

    /// How the members' liveness is known (see `tokens`).
    fn tokens(&self) -> Tokens {
        Tokens::Local
    }
}

/// A ring's memory and validated geometry, shared by the ends in this process.
pub(crate) struct MpmcCore {
    shared: NonNull<MpmcShared>,
    slots: Slots,
    geometry: Geometry,
    cap: u64,
    /// `backing.tokens()`, asked once.
    tokens: Tokens,
    /// Owns the memory `shared` and `slots` point into; dropped last.
    backing: Box<dyn MpmcBacking>,
}

// SAFETY: the pointers refer to memory owned by `backing` (Send + Sync) and accessed only through
// atomics or through slots the ring protocol assigns to one member at a time.
unsafe impl Send for MpmcCore {}
// SAFETY: as above.
unsafe impl Sync for MpmcCore {}

impl MpmcCore {
    /// What a wait of member `me` in `role` counts on the ring's statistics line, and its bit.
    pub(crate) fn tally(&self, role: Role, me: usize) -> Tally<'_> {
        self.shared().counters.tally(role, waiter_bit(me))
    }

    /// The check of a sender's wait for room (blocking or async): done with a run of up to
    /// `max` free slots claimed for member `me`, or once every receiver is gone.
    pub(crate) fn room_check(&self, me: usize, max: u64) -> Check<(u64, u64), SendTimeoutError> {
        match self.claim_free_run(me, max) {
            Ok(Some(run)) => Check::Done(Ok(run)),
            Ok(None) if self.shared().receivers_gone() => Check::Done(Err(SendTimeoutError::Disconnected)),
            Ok(None) => Check::NotYet,
            Err(c) => Check::Done(Err(SendTimeoutError::Corrupted(c))),
        }
    }

    /// The check a sender's wait makes after each park slice: reaps dead receivers (and
    /// recovers what they held), then `Disconnected` once every receiver is gone, or none ever
    /// joined and nobody can find the ring any more.
    pub(crate) fn receivers_check<T>(&self) -> Check<T, SendTimeoutError> {
        self.maintain(Role::Sender);
        let shared = self.shared();
        if shared.receivers_gone() || (shared.census().receivers_joined == 0 && self.backing.unreachable()) {
            Check::Done(Err(SendTimeoutError::Disconnected))
        } else {
            Check::NotYet
        }
    }

    /// # Safety
    /// `shared` must point to a valid `MpmcShared` and `slots` to `geometry.capacity` MPMC slots,
    /// both kept alive and mapped by `backing`.
    pub(crate) unsafe fn new(
        shared: NonNull<MpmcShared>,
        slots: Slots,
        geometry: Geometry,
        backing: Box<dyn MpmcBacking>,
    ) -> Self {
        #[cfg(not(loom))]
        crate::sys::membarrier::register();
        MpmcCore {
            shared,
            slots,
            geometry,
            cap: geometry.capacity as u64,
            tokens: backing.tokens(),
            backing,
        }
    }

    pub(crate) fn shared(&self) -> &MpmcShared {
        // SAFETY: valid for our lifetime by the contract of `new`.
        unsafe { self.shared.as_ref() }
    }

    #[inline]
    fn member(&self, index: usize) -> &Member {
        // `index` came from `join` (so it is in range); the modulo (a mask) only spares the
        // bounds check on every message.
        &self.shared().members[index % MAX_MEMBERS]
    }

    /// The logical sequence of the slot for `pos` (stored relative to the slot number).
    #[inline]
    fn seq(&self, pos: u64) -> u64 {
        // Acquire: a published sequence makes the slot's contents visible (pairs with PUBLISH).
        decode(self.slots.seq_word(pos).load(Acquire), pos & (self.cap - 1))
    }

    /// Whether the slot of `pos` is still free for `pos`: a producer's claim on it has not been
    /// recovered (see `publish_guarded`).
    #[inline(always)]
    fn still_free(&self, pos: u64) -> bool {
        // Relaxed: only an early look, deciding nothing that the CAS in `publish` does not decide
        // again; coherence keeps it from reading older than the `pos` our claim acquired.
        decode(self.slots.seq_word(pos).load(Relaxed), pos & (self.cap - 1)) == pos
    }

    /// Replaces the logical sequence `current` of the slot for `pos` by `new` (with `success`
    /// ordering), if it is still exactly `current`; writes nothing otherwise.
    #[inline(always)]
    fn cas_seq(&self, pos: u64, current: u64, new: u64, success: std::sync::atomic::Ordering) -> bool {
        let slot = pos & (self.cap - 1);
        // Relaxed on failure: the caller then writes nothing and reads nothing on its strength.
        self.slots
            .seq_word(pos)
            .compare_exchange(encode(current, slot), encode(new, slot), success, Relaxed)
            .is_ok()
    }

    /// A member found the slot it held recovered by another member that wrongly took it for dead:
    /// it writes nothing there. Counted;
    /// returns false for the caller to pass on.
    #[cold]
    #[inline(never)]
    fn robbed(&self) -> bool {
        // Relaxed: a statistic.
        self.shared().losses.robbed.fetch_add(1, Relaxed);
        false
    }

    #[cold]
    #[inline(never)]
    fn corrupt_positions(&self, what: &str, pos: u64, seq: u64) -> Corrupted {
        Corrupted {
            reason: format!(
                "{what} position {pos} and slot sequence {:#x} are inconsistent (capacity {})",
                seq, self.cap
            ),
        }
    }

    /// One attempt by member `me` to claim a free slot: `Ok(None)` when the ring is full.
    #[cfg(test)]
    fn claim_free(&self, me: usize) -> Result<Option<u64>, Corrupted> {
        Ok(self.claim_free_run(me, 1)?.map(|(pos, _)| pos))
    }

    /// One attempt by member `me` to claim a run of free slots, at most `max` (1 to capacity),
    /// with one CAS of `enqueue`: `Ok(Some((first position, how many)))`, `Ok(None)` when the ring
    /// is full. With `max` 1 (a constant at every one-slot caller) this is the one-slot claim and
    /// the run's code folds away.
    #[inline(always)]
    fn claim_free_run(&self, me: usize, max: u64) -> Result<Option<(u64, u64)>, Corrupted> {
        debug_assert!((1..=self.cap).contains(&max));
        let shared = self.shared();
        let record = self.member(me);
        // Acquire (here, on a failed CAS and on the reload below), not Relaxed: every position we
        // try must come with a lower bound on its slot's sequence. Reading `enqueue == pos` with
        // Acquire synchronises with the CAS that claimed `pos - capacity` (all claiming CASes form
        // one release sequence), made after its claimant acquired the slot's sequence
        // `pos - capacity`; so the sequence we load is at least that, and the branches below
        // cover every value from there on. With a Relaxed position the sequence can be read more
        // than a lap stale (loom finds it: a consumer at dequeue 2 reading slot 0's initial 0),
        // and a correct ring is reported corrupted and the end poisoned. The same holds for every
        // slot of a run: `pos + i - capacity` was claimed before `pos` too.
        let mut pos = shared.enqueue.load(Acquire);
        let mut announced = false;
        loop {
            let seq = self.seq(pos);
            if seq == pos {
                // The run: the free slots that follow. A slot seen free stays free until its
                // position is claimed, which moves `enqueue` past `pos` and fails our CAS; a slot
                // seen in any other state ends the run (still in use, or `pos` is stale, and then
                // the CAS fails too). Acquire (`seq`): the last lap's reads of each slot happen
                // before our writes.
                let mut n = 1;
                while n < max && self.seq(pos.wrapping_add(n)) == pos.wrapping_add(n) {
                    n += 1;
                }
                // Relaxed (both): published by the Release of the claiming CAS below. A
                // one-slot claim leaves `claim_more` at 0 (see `Member::claim_more`).
                if max > 1 {
                    record.claim_more.store(n - 1, Relaxed);
                }
                record.claim.store(pos.wrapping_add(1), Relaxed);
                announced = true;
                // Release: our announcement happens before anyone who sees the new position.
                match shared
                    .enqueue
                    .compare_exchange_weak(pos, pos.wrapping_add(n), Release, Acquire)
                {
                    Ok(_) => {
                        self.pass_on_not_full();
                        return Ok(Some((pos, n)));
                    }
                    Err(now) => pos = now,
                }
            } else if (seq & !TOMB).wrapping_sub(pos) as i64 > 0 {
                // The slot is further on than `pos`: our position is stale (we may have been
                // preempted for laps). Someone claimed `pos` and the position moved on (their
                // claiming CAS happened before the sequence we acquired), so a reload differs.
                // Coherence guarantees the newer value (see above); Acquire for the lower bound
                // on the next slot's sequence (see the first load).
                let now = shared.enqueue.load(Acquire);
                if now == pos {
                    return Err(self.corrupt_positions("enqueue", pos, seq));
                }
                pos = now;
            } else if seq == pos.wrapping_sub(self.cap)
                || seq & !TOMB == pos.wrapping_sub(self.cap).wrapping_add(1)
            {
                // Last lap's message is being written, or is still there: full.
                if announced {
                    // Relaxed: withdrawing only lets recovery proceed sooner; nothing is ordered.
                    record.claim.store(0, Relaxed);
                    if max > 1 {
                        record.claim_more.store(0, Relaxed);
                    }
                }
                return Ok(None);
            } else {
                return Err(self.corrupt_positions("enqueue", pos, seq));
            }
        }
    }

    /// One attempt by member `me` to claim a published message: `Ok(None)` when none is ready.
    /// Tombstones are claimed, freed and skipped here.
    #[inline(always)]
    fn claim_ready(&self, me: usize) -> Result<Option<(u64, usize)>, TakeError> {
        let shared = self.shared();
        let claim = &self.member(me).claim;
        // Acquire (here, on a failed CAS and on the reloads below), as in `claim_free_run`: reading
        // `dequeue == pos` synchronises with the CAS that claimed `pos - capacity`, made after
        // its claimant acquired the slot published (`pos - capacity + 1`), so the sequence we load
        // is at least that. With a Relaxed position loom finds a consumer reading a sequence a
        // whole lap stale and reporting a correct ring corrupted.
        let mut pos = shared.dequeue.load(Acquire);
        let mut announced = false;
        loop {
            let seq = self.seq(pos);
            if seq & !TOMB == pos.wrapping_add(1) {
                // Relaxed: published by the Release of the claiming CAS below.
                claim.store(pos.wrapping_add(1), Relaxed);
                announced = true;
                // Release: our announcement happens before anyone who sees the new position.
                match shared
                    .dequeue
                    .compare_exchange_weak(pos, pos.wrapping_add(1), Release, Acquire)
                {
                    Ok(_) if seq & TOMB != 0 => {
                        // Nothing to do if this fails: the tombstone was freed for us (counted).
                        self.free(pos, seq);
                        // Reloaded with Acquire rather than `pos + 1`: our CAS (Release only) gives
                        // no lower bound on the next slot's sequence; an Acquire load that reads
                        // our CAS or a later one synchronises with every earlier claim.
                        pos = shared.dequeue.load(Acquire);
                    }
                    Ok(_) => {
                        // Relaxed: ordered by the Acquire load of the sequence that found it published.
                        let len = self.slots.len_word(pos).load(Relaxed) as usize;
                        if len > self.geometry.max_message {
                            return Err(self.skip_bad_length(pos, len));
                        }
                        self.pass_on_not_empty();
                        return Ok(Some((pos, len)));
                    }
                    Err(now) => pos = now,
                }
            } else if seq == pos || seq & !TOMB == pos.wrapping_sub(self.cap).wrapping_add(1) {
                // Not yet written (or last lap's message not yet freed): nothing here for us.
                if announced {
                    // Relaxed: withdrawing only lets recovery proceed sooner.
                    claim.store(0, Relaxed);
                }
                return Ok(None);
            } else if (seq & !TOMB).wrapping_sub(pos) as i64 > 1 {
                // The slot is further on than `pos`: our position is stale (see `claim_free_run`).
                // Coherence guarantees the newer value; Acquire as above (see `claim_free_run`).
                let now = shared.dequeue.load(Acquire);
                if now == pos {
                    return Err(TakeError::Index(self.corrupt_positions("dequeue", pos, seq)));
                }
                pos = now;
            } else {
                return Err(TakeError::Index(self.corrupt_positions("dequeue", pos, seq)));
            }
        }
    }

    /// One attempt by member `me` to claim a run of published slots (messages and tombstones
    /// alike), at most `max` (1 to capacity), with one CAS of `dequeue`:
    /// `Ok(Some((first position, how many)))`, `Ok(None)` when the slot at `dequeue` is not
    /// ready. The caller reads, checks and frees each slot (`Consumer::drain_run`). Orderings
    /// and the classification of the first slot's sequence as in `claim_ready`; the run's
    /// further slots as in `claim_free_run`.
    fn claim_ready_run(&self, me: usize, max: u64) -> Result<Option<(u64, u64)>, Corrupted> {
        debug_assert!((1..=self.cap).contains(&max));
        let shared = self.shared();
        let record = self.member(me);
        let mut pos = shared.dequeue.load(Acquire);
        let mut announced = false;
        loop {
            let seq = self.seq(pos);
            if seq & !TOMB == pos.wrapping_add(1) {
                // A slot seen published stays so until its position is claimed (which fails our
                // CAS); any other state ends the run. Acquire (`seq`): each slot's contents
                // happen before our reads.
                let mut n = 1;
                while n < max && self.seq(pos.wrapping_add(n)) & !TOMB == pos.wrapping_add(n + 1) {
                    n += 1;
                }
                // Relaxed (both): published by the Release of the claiming CAS below.
                record.claim_more.store(n - 1, Relaxed);
                record.claim.store(pos.wrapping_add(1), Relaxed);
                announced = true;
                // Release: our announcement happens before anyone who sees the new position.
                match shared
                    .dequeue
                    .compare_exchange_weak(pos, pos.wrapping_add(n), Release, Acquire)
                {
                    Ok(_) => {
                        self.pass_on_not_empty();
                        return Ok(Some((pos, n)));
                    }
                    Err(now) => pos = now,
                }
            } else if seq == pos || seq & !TOMB == pos.wrapping_sub(self.cap).wrapping_add(1) {
                if announced {
                    // Relaxed: withdrawing only lets recovery proceed sooner.
                    record.claim.store(0, Relaxed);
                    record.claim_more.store(0, Relaxed);
                }
                return Ok(None);
            } else if (seq & !TOMB).wrapping_sub(pos) as i64 > 1 {
                // Stale `pos` (see `claim_ready`).
                let now = shared.dequeue.load(Acquire);
                if now == pos {
                    return Err(self.corrupt_positions("dequeue", pos, seq));
                }
                pos = now;
            } else {
                return Err(self.corrupt_positions("dequeue", pos, seq));
            }
        }
    }

    /// Ends a batch's claim of a run: every slot of it has been published or freed (or found
    /// recovered from us). Release: a member that reads the range withdrawn and then looks at
    /// one of its slots finds what we wrote there, so it cannot take a slot of ours for a dead
    /// member's by a view of our record newer than its view of the slot.
    #[inline]
    fn end_run(&self, me: usize) {
        self.member(me).claim_more.store(0, Release);
    }

    /// Frees the claimed slot `pos`, whose length word is impossible, and says so.
    #[cold]
    #[inline(never)]
    fn skip_bad_length(&self, pos: u64, len: usize) -> TakeError {
        self.free(pos, pos.wrapping_add(1));
        // Relaxed: a statistic.
        self.shared().losses.corrupt.fetch_add(1, Relaxed);
        TakeError::Message(Corrupted {
            reason: format!(
                "message at position {pos} has length {len}, over the maximum {}; skipped",
                self.geometry.max_message
            ),
        })
    }

    /// After claiming a message: if receivers sleep and the message now at the head is ready,
    /// wake one more.
    ///
    /// Each publication wakes one sleeper, and a sleeper only looks at the head. When messages
    /// are published out of position order (two producers: `p + 1` before `p`), the wake for
    /// `p + 1` finds the head `p` unwritten and goes back to sleep; the wake for `p` then brings
    /// one receiver for two messages, and `p + 1` would wait, with receivers asleep, for a
    /// publication that never comes (a park slice later in production, for ever under loom,
    /// which found it: `two_parked_consumers_each_woken_for_one_message_of_two_producers`).
    /// Whoever claims a message therefore passes the wake on while a ready one is left behind it,
    /// one per claim, so a run of ready messages wakes as many receivers as it holds.
    ///
    /// The barrier in `has_waiters` (as in `Doorbell::ring`) orders our claim before the
    /// `waiters` load, and makes the head's publication visible here if its own wake was spent
    /// on a sleeper that then went back to sleep (that sleeper's fence came before the head's
    /// publisher's, which comes before ours).
    #[inline]
    fn pass_on_not_empty(&self) {
        let shared = self.shared();
        if !shared.not_empty.has_waiters() {
            return;
        }
        // Acquire: as for every position we look at (see `claim_ready`).
        let head = shared.dequeue.load(Acquire);
        if self.seq(head) & !TOMB == head.wrapping_add(1) {
            shared.not_empty.wake(1, &shared.counters.wakes);
        }
    }

    /// After claiming a free slot: if senders sleep and the slot now at the tail is free, wake
    /// one more. The mirror of `pass_on_not_empty`: slots freed out of position order (two
    /// consumers) spend a wake on a sender that finds the tail's slot still in use.
    #[inline]
    fn pass_on_not_full(&self) {
        let shared = self.shared();
        if !shared.not_full.has_waiters() {
            return;
        }
        // Acquire: as for every position we look at (see `claim_free_run`).
        let tail = shared.enqueue.load(Acquire);
        if self.seq(tail) == tail {
            shared.not_full.wake(1, &shared.counters.wakes);
        }
    }

    /// Publishes the claimed slot `pos` with `len` bytes written (or as a tombstone). Returns
    /// false, having published nothing, if the slot was recovered from us: a member took us for
    /// dead and tombstoned it (counted in `lost` there, and here in `robbed`).
    ///
    /// A CAS from `pos` (free for this lap), not a store: a recovered slot has moved on (the
    /// tombstone, then a consumer freed it, then later laps), and storing `pos + 1` over that would
    /// rewind it and wedge the ring. What we wrote before the CAS (bytes, then the length word)
    /// cannot be taken back. `send` claims, copies and publishes in one call, so that is a claim
    /// recovered during the call; a `WriteGuard` is held for as long as its owner likes, so its
    /// commit looks first (`publish_guarded`).
    #[inline]
    fn publish(&self, pos: u64, len: usize, tomb: bool) -> bool {
        if !self.publish_quietly(pos, len, tomb) {
            return false;
        }
        let shared = self.shared();
        shared.not_empty.ring(1, &shared.counters.wakes);
        true
    }

    /// `publish` without the doorbell: a batch rings it once, after its last slot.
    #[inline(always)]
    fn publish_quietly(&self, pos: u64, len: usize, tomb: bool) -> bool {
        // Relaxed: ordered before the consumer's read by the sequence CAS below.
        self.slots.len_word(pos).store(len as u32, Relaxed);
        let seq = pos.wrapping_add(1) | if tomb { TOMB } else { 0 };
        // PUBLISH (Release) on success: the slot's length and bytes happen before the consumer's
        // Acquire load of the sequence that finds them.
        if !self.cas_seq(pos, pos, seq, PUBLISH) {
            return self.robbed();
        }
        true
    }

    /// `publish` for a `WriteGuard`'s commit or drop: looks at the sequence first, so that a
    /// claim recovered while the guard was held (its bytes already written through it) does not
    /// get the length word written too. Only an early look; the CAS in `publish` decides.
    #[inline]
    fn publish_guarded(&self, pos: u64, len: usize, tomb: bool) -> bool {
        if !self.still_free(pos) {
            return self.robbed();
        }
        self.publish(pos, len, tomb)
    }

    /// Frees the claimed slot `pos`, found published as `published` (`pos + 1`, with `TOMB` for
    /// a tombstone), for the next lap. Returns false, having written nothing, if the slot was
    /// recovered from us: a member took us for dead and freed it (counted in `dropped` there, and
    /// here in `robbed`); a producer may already have written the next lap into it.
    ///
    /// A CAS from the published value, not a store, for the same reason as in `publish`.
    #[inline]
    fn free(&self, pos: u64, published: u64) -> bool {
        if !self.free_quietly(pos, published) {
            return false;
        }
        let shared = self.shared();
        shared.not_full.ring(1, &shared.counters.wakes);
        true
    }

    /// `free` without the doorbell: a batch rings it once, after its last slot.
    #[inline(always)]
    fn free_quietly(&self, pos: u64, published: u64) -> bool {
        // PUBLISH (Release) on success: our reads of the slot happen before a producer reuses it.
        if !self.cas_seq(pos, published, pos.wrapping_add(self.cap), PUBLISH) {
            return self.robbed();
        }
        true
    }

    /// Slow path of a stalled member of `role`: reaps dead members (if the lock is free: one
    /// try, never a wait, since whoever holds it is doing membership work already) and recovers
    /// the slot the other role stalled. Returns whether a slot was recovered.
    fn maintain(&self, role: Role) -> bool {
        let shared = self.shared();
        if let Ok(_lock) = RingLock::acquire(&shared.lock, self.tokens, Instant::now()) {
            shared.reap(self.tokens);
        }
        match role {
            Role::Receiver => self.recover_unpublished(true),
            Role::Sender => self.recover_unfreed(true),
        }
    }

    /// A consumer stalled at `dequeue` on a slot a producer claimed but never published: if no
    /// live producer announces it, tombstone it; and so on for the slots after it (a producer
    /// killed in a batch leaves a run of claimed, unpublished slots: they are recovered in one
    /// go, not one per park slice). `check_live` false skips that question and recovers one slot
    /// only (a test hook's false death verdict, see `Consumer::recover_as_if_dead`).
    fn recover_unpublished(&self, check_live: bool) -> bool {
        let shared = self.shared();
        let head = shared.dequeue.load(Acquire);
        let mut recovered = 0;
        // At most a lap: a run is never longer.
        while recovered < self.cap {
            let pos = head.wrapping_add(recovered);
            // Free for `pos`, so not yet published for it (and not consumed: a consumer claims
            // only published slots, and a sequence never goes back).
            if self.seq(pos) != pos {
                break;
            }
            // Acquire: if `pos` was claimed, we synchronise with the claiming CAS (or a later one
            // in its release sequence), so the claimant's announcement is visible to
            // `live_claimant`.
            let enqueue = shared.enqueue.load(Acquire);
            let claimed = enqueue.wrapping_sub(pos);
            if claimed == 0 || claimed > self.cap {
                break;
            }
            if check_live && shared.live_claimant(Role::Sender, pos, self.tokens) {
                break;
            }
            // AcqRel: acquires what the stalled member left, releases the slot's new state.
            if !self.cas_seq(pos, pos, TOMB | pos.wrapping_add(1), AcqRel) {
                break;
            }
            // Relaxed: a statistic.
            shared.losses.lost.fetch_add(1, Relaxed);
            recovered += 1;
            if !check_live {
                break;
            }
        }
        if recovered == 0 {
            return false;
        }
        // One wake: the receiver skips every tombstone, and passes a wake on for what follows.
        shared.not_empty.ring(1, &shared.counters.wakes);
        true
    }

    /// A producer stalled at `enqueue` on a slot whose message a consumer claimed a lap ago and
    /// never freed: if no live consumer announces it, free it; and so on for the slots after it
    /// (a consumer killed in a batch). `check_live` as in `recover_unpublished` (see
    /// `Producer::recover_as_if_dead`).
    fn recover_unfreed(&self, check_live: bool) -> bool {
        let shared = self.shared();
        let tail = shared.enqueue.load(Acquire);
        let mut recovered = 0;
        while recovered < self.cap {
            let pos = tail.wrapping_add(recovered);
            let last_lap = pos.wrapping_sub(self.cap);
            let seq = self.seq(pos);
            if seq & !TOMB != last_lap.wrapping_add(1) {
                break;
            }
            // Acquire: as in `recover_unpublished`, for the consumer's claiming CAS.
            let dequeue = shared.dequeue.load(Acquire);
            let past = dequeue.wrapping_sub(last_lap);
            if past == 0 || past > self.cap {
                break;
            }
            if check_live && shared.live_claimant(Role::Receiver, last_lap, self.tokens) {
                break;
            }
            // AcqRel: acquires what the stalled member left, releases the slot's new state.
            if !self.cas_seq(pos, seq, pos, AcqRel) {
                break;
            }
            if seq & TOMB == 0 {
                // Relaxed: a statistic.
                shared.losses.dropped.fetch_add(1, Relaxed);
            }
            recovered += 1;
            if !check_live {
                break;
            }
        }
        if recovered == 0 {
            return false;
        }
        shared.not_full.ring(1, &shared.counters.wakes);
        true
    }

    fn stats(&self) -> Stats {
        let shared = self.shared();
        let c = shared.census();
        let l = &shared.losses;
        // Relaxed: statistics.
        Stats {
            senders: c.senders,
            receivers: c.receivers,
            senders_died: c.senders_died,
            receivers_died: c.receivers_died,
            lost: l.lost.load(Relaxed),
            dropped: l.dropped.load(Relaxed),
            discarded: l.discarded.load(Relaxed),
            corrupt: l.corrupt.load(Relaxed),
            robbed: l.robbed.load(Relaxed),
        }
    }

    /// Joins the ring as `role` under its lock.
    fn join(&self, role: Role) -> Result<usize, crate::Error> {
        let shared = self.shared();
        let _lock = RingLock::acquire(&shared.lock, self.tokens, Instant::now() + Duration::from_secs(5))?;
        shared.join(role, self.tokens)
    }

    /// Leaves the ring (record vacated, counts updated, backing told), then wakes every sleeper
    /// so they re-check the counts.
    fn leave(&self, index: usize, role: Role) {
        let shared = self.shared();
        {
            // Best effort: if the lock cannot be had (a hostile holder), leave without it; the
            // counts are recomputed by the next member who reaps.
            let _lock =
                RingLock::acquire(&shared.lock, self.tokens, Instant::now() + Duration::from_secs(1)).ok();
            shared.leave(index, role, self.tokens);
            self.backing.on_leave(shared);
        }
        shared.not_empty.ring(u32::MAX, &shared.counters.wakes);
        shared.not_full.ring(u32::MAX, &shared.counters.wakes);
    }
}

/// Sequence words are stored minus the slot number, so that zeroed memory means "slot `i` free
/// for position `i`". Every sequence a correct ring stores for slot `i` is `i + k * capacity` or
/// one more, so at least `i`: the subtraction never borrows from the tombstone bit, and adding
/// the slot back never carries into it while positions stay below 2^63 - capacity (centuries).
/// A corrupted word decodes to some value the classification in `claim_*` rejects.
#[inline]
fn encode(seq: u64, slot: u64) -> u64 {
    seq.wrapping_sub(slot)
}

#[inline]
fn decode(raw: u64, slot: u64) -> u64 {
    raw.wrapping_add(slot)
}

impl MpmcBacking for HeapMemory<MpmcShared> {}

/// Creates an in-process MPMC channel on the heap: the same ring as `shm://NAME?mode=mpmc`,
/// without the segment. More ends come from [`Producer::try_clone`] and
/// [`Consumer::try_clone`] (at most [`MAX_MEMBERS`] in all).
///
/// ```
/// use shmpipe::{ring::mpmc, Receiver, Sender};
/// let (mut tx, mut rx) = mpmc::channel(8, 64).unwrap();
/// let mut tx2 = tx.try_clone().unwrap();
/// tx.send(b"from one").unwrap();
/// tx2.send(b"from two").unwrap();
/// let mut buf = Vec::new();
/// rx.recv(&mut buf).unwrap();
/// assert_eq!(buf, b"from one");
/// rx.recv(&mut buf).unwrap();
/// assert_eq!(buf, b"from two");
/// ```
pub fn channel(capacity: usize, max_message: usize) -> Result<(Producer, Consumer), crate::Error> {
    let geometry = Geometry::new(capacity, max_message)?;
    let memory = HeapMemory::new(MpmcShared::new(), geometry.slots_size_for(RingKind::Mpmc));
    // SAFETY: the slot memory is the slots' size, 8-aligned, zeroed (the initial state); stride
    // is a multiple of 64. The memory moves into the core (its backing), which frees it last.
    let core = unsafe {
        let slot_mem = Slots::new(
            memory.slots(),
            geometry.capacity,
            geometry.stride_for(RingKind::Mpmc),
            RingKind::Mpmc,
        );
        MpmcCore::new(memory.shared(), slot_mem, geometry, Box::new(memory))
    };
    let core = Arc::new(core);
    let tx = Producer::join(Arc::clone(&core))?;
    let rx = Consumer::join(core)?;
    Ok((tx, rx))
}

/// A sending member of an MPMC ring.
///
/// Sends return `Ok` only for a message published. If this sender is taken for dead while it
/// holds its slot (a false liveness verdict: see "A member wrongly taken for dead" in the module
/// docs) and the slot is recovered, the send (or [`WriteGuard::commit`]) returns
/// [`SendError::Lost`] (`TrySendError::Lost`, `SendTimeoutError::Lost`): nothing was delivered,
/// the message may be sent again, and the sender stays usable.
pub struct Producer {
    core: Arc<MpmcCore>,
    me: usize,
    wait: WaitStrategy,
    fault: Option<Corrupted>,
    liveness: LivenessTimer,
    /// `Disconnected` was returned: every receiver is gone, for good.
    disconnected: bool,
    /// The process this end belongs to (`tokens::owner`): in a forked child it refuses every
    /// call and its drop only detaches.
    owner: u32,
}

impl Producer {
    /// Joins `core` as a sender (takes the ring lock).
    pub(crate) fn join(core: Arc<MpmcCore>) -> Result<Self, crate::Error> {
        let me = core.join(Role::Sender)?;
        Ok(Self::joined(core, me))
    }

    /// Wraps the member record `me` the caller already joined as a sender.
    pub(crate) fn joined(core: Arc<MpmcCore>, me: usize) -> Self {
        Producer {
            core,
            me,
            wait: WaitStrategy::default(),
            fault: None,
            liveness: LivenessTimer::new(),
            disconnected: false,
            owner: tokens::owner(),
        }
    }

    /// Another sender on the same ring (a new member; fails when the ring has [`MAX_MEMBERS`]).
    pub fn try_clone(&self) -> Result<Self, crate::Error> {
        let mut p = Self::join(Arc::clone(&self.core))?;
        p.wait = self.wait;
        Ok(p)
    }

    /// Sets how [`send`](Sender::send) and [`reserve`](Self::reserve) wait for room.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
    }

    /// Membership and loss counters of the ring.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Test hook (unit tests and loom builds only): a false death verdict on demand. Does what a
    /// sender stalled at `enqueue` does when no live receiver announces the message a lap behind
    /// it, without asking: a claimed, unfreed message there is freed (and counted `dropped`)
    /// even though its receiver is alive. Returns whether a slot was recovered.
    #[cfg(any(test, loom))]
    #[doc(hidden)]
    pub fn recover_as_if_dead(&self) -> bool {
        self.core.recover_unfreed(false)
    }

    /// Whether every receiver that joined has gone (none may have joined yet: then false).
    #[inline]
    fn receivers_gone(&self) -> bool {
        self.core.shared().receivers_gone()
    }

    #[cold]
    #[inline(never)]
    fn poison(&mut self, c: Corrupted) -> Corrupted {
        self.fault = Some(c.clone());
        c
    }

    /// One non-blocking attempt; `Full` means wait and retry.
    #[inline]
    fn try_claim(&mut self, len: usize) -> Result<u64, TrySendError> {
        Ok(self.try_claim_run(len, 1)?.0)
    }

    /// One non-blocking attempt to claim a run of up to `max` slots (1 to capacity), the first for
    /// a message of `len` bytes; `Full` means wait and retry.
    #[inline(always)]
    fn try_claim_run(&mut self, len: usize, max: u64) -> Result<(u64, u64), TrySendError> {
        if tokens::inherited(self.owner) {
            return Err(TrySendError::Forked);
        }
        if let Some(c) = &self.fault {
            return Err(TrySendError::Corrupted(cold_clone(c)));
        }
        let largest = self.core.geometry.max_message;
        if len > largest {
            return Err(too_large(len, largest));
        }
        if self.disconnected || self.receivers_gone() {
            self.disconnected = true;
            return Err(TrySendError::Disconnected);
        }
        match self.core.claim_free_run(self.me, max) {
            Ok(Some(run)) => return Ok(run),
            Ok(None) => {}
            Err(c) => return Err(TrySendError::Corrupted(self.poison(c))),
        }
        if self.liveness.due() {
            self.core.maintain(Role::Sender);
            if self.receivers_gone() {
                self.disconnected = true;
                return Err(TrySendError::Disconnected);
            }
        }
        Err(TrySendError::Full)
    }

    fn claim_deadline(&mut self, len: usize, deadline: Option<Instant>) -> Result<u64, SendTimeoutError> {
        Ok(self.claim_run_deadline(len, 1, deadline)?.0)
    }

    /// Claims a run of up to `max` slots (1 to capacity), the first for a message of `len`
    /// bytes, waiting until `deadline` for the first.
    fn claim_run_deadline(
        &mut self,
        len: usize,
        max: u64,
        deadline: Option<Instant>,
    ) -> Result<(u64, u64), SendTimeoutError> {
        match self.try_claim_run(len, max) {
            Err(TrySendError::Full) => self.claim_run_wait(max, deadline),
            r => r.map_err(Into::into),
        }
    }

    /// `claim_run_deadline` found the ring full: waits for room. Out of line, so that the wait's
    /// code does not weigh on every send that finds room.
    #[inline(never)]
    fn claim_run_wait(
        &mut self,
        max: u64,
        deadline: Option<Instant>,
    ) -> Result<(u64, u64), SendTimeoutError> {
        let core = Arc::clone(&self.core);
        let me = self.me;
        let r = wait_until(
            &core.shared().not_full,
            core.tally(Role::Sender, me),
            &self.wait,
            deadline,
            || core.room_check(me, max),
            || core.receivers_check(),
            || SendTimeoutError::Timeout,
        );
        self.claim_ended(r)
    }

    /// What a wait for room (`claim_run_deadline`, `claim_async`) ended with, recorded: a
    /// disconnected or poisoned end stays so.
    fn claim_ended<T>(&mut self, r: Result<T, SendTimeoutError>) -> Result<T, SendTimeoutError> {
        match &r {
            Err(SendTimeoutError::Disconnected) => self.disconnected = true,
            Err(SendTimeoutError::Corrupted(c)) => self.fault = Some(c.clone()),
            _ => {}
        }
        r
    }

    /// Writes `msg` into the claimed slot `pos` and publishes it. False if the slot was recovered
    /// from us (nothing published): see `MpmcCore::publish`. Always inline: a call costs about 8
    /// instructions per message, and LLVM's heuristic stopped inlining it once `copy_payload`
    /// grew a branch.
    #[inline(always)]
    fn write(&mut self, pos: u64, msg: &[u8]) -> bool {
        self.core.slots.mark_write(pos);
        // A hostile process could write the slot concurrently: that changes bytes, never where.
        // SAFETY: the slot for `pos` is ours (we won its position while it was free), its payload
        // holds max_message >= msg.len() bytes, not overlapping `msg` (the caller's memory), and
        // consumers read it only after `publish`.
        unsafe { copy_payload(msg, self.core.slots.payload(pos)) };
        self.core.publish(pos, msg.len(), false)
    }

    /// The messages a batch may claim slots for: the longest prefix of `msgs` (at most a lap)
    /// whose messages fit in a slot, but at least the first (whose size `try_claim_run` checks,
    /// so that a batch starting with a message too large reports it).
    fn batch_prefix(&self, msgs: &[&[u8]]) -> u64 {
        let max = self.core.geometry.max_message;
        let fit = msgs
            .iter()
            .take(self.core.geometry.capacity)
            .skip(1)
            .take_while(|m| m.len() <= max)
            .count();
        1 + fit as u64
    }

    /// Writes `msgs` (one per slot) into the claimed run starting at `pos` and publishes them in
    /// order, then rings the doorbell once for them all. Returns how many were published: all,
    /// unless a slot was recovered from us (we were taken for dead, see `MpmcCore::publish`).
    /// Then the messages from that one on are not sent: the slots left of our run are published
    /// as tombstones (counted `discarded`), so that what was sent stays a prefix, and the caller
    /// may send the rest again without duplicating any.
    fn write_run(&mut self, pos: u64, msgs: &[&[u8]]) -> usize {
        let core = &*self.core;
        let mut sent = 0;
        let mut robbed = false;
        for (i, msg) in msgs.iter().enumerate() {
            let at = pos.wrapping_add(i as u64);
            if !robbed {
                // A batch holds its claim longer than a send: look before writing each slot, so
                // that a slot recovered from us meanwhile gets none of our bytes (the CAS in
                // `publish_quietly` still decides).
                if core.still_free(at) {
                    core.slots.mark_write(at);
                    // Sizes: `try_claim_run` checked the first message, `batch_prefix` the rest.
                    // SAFETY: the slot for `at` is ours (our run won its position while free), its
                    // payload holds max_message >= msg.len() bytes and does not overlap `msg`.
                    unsafe { copy_payload(msg, core.slots.payload(at)) };
                    if core.publish_quietly(at, msg.len(), false) {
                        sent += 1;
                        continue;
                    }
                } else {
                    core.robbed();
                }
                robbed = true;
            } else if core.cas_seq(at, at, TOMB | at.wrapping_add(1), PUBLISH) {
                // Relaxed: a statistic.
                core.shared().losses.discarded.fetch_add(1, Relaxed);
            } else {
                core.robbed();
            }
        }
        if msgs.len() > 1 {
            core.end_run(self.me);
        }
        let shared = core.shared();
        shared.not_empty.ring(1, &shared.counters.wakes);
        sent
    }

    /// Reserves a slot for a message of `len` bytes without blocking. Write into the guard, then
    /// [`commit`](WriteGuard::commit); dropping it uncommitted publishes an empty slot that
    /// receivers skip (the position is already taken). Receivers wait at this slot until it is
    /// committed or dropped, so keep the guard briefly.
    pub fn try_reserve(&mut self, len: usize) -> Result<WriteGuard<'_>, TrySendError> {
        let pos = self.try_claim(len)?;
        Ok(WriteGuard {
            producer: self,
            pos,
            len,
            done: false,
        })
    }

    /// Reserves a slot, waiting while the ring is full.
    pub fn reserve(&mut self, len: usize) -> Result<WriteGuard<'_>, SendError> {
        let pos = self.claim_deadline(len, None)?;
        Ok(WriteGuard {
            producer: self,
            pos,
            len,
            done: false,
        })
    }
}

impl Sender for Producer {
    #[inline(always)]
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        let pos = self.try_claim(msg.len())?;
        if self.write(pos, msg) {
            Ok(())
        } else {
            Err(TrySendError::Lost)
        }
    }

    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        let pos = self.claim_deadline(msg.len(), deadline)?;
        if self.write(pos, msg) {
            Ok(())
        } else {
            Err(SendTimeoutError::Lost)
        }
    }

    fn max_message_size(&self) -> usize {
        self.core.geometry.max_message
    }

    /// Claims a run of free slots for the prefix with one CAS of the shared position, writes and
    /// publishes each, and rings the doorbell once (a syscall only if a receiver sleeps).
    /// `TrySendError::Lost` only if the first message's slot was recovered from us (this sender
    /// was taken for dead); a later one's just ends the prefix.
    fn try_send_batch(&mut self, msgs: &[&[u8]]) -> Result<usize, TrySendError> {
        let Some(first) = msgs.first() else {
            return Ok(0);
        };
        let (pos, n) = self.try_claim_run(first.len(), self.batch_prefix(msgs))?;
        match self.write_run(pos, &msgs[..n as usize]) {
            0 => Err(TrySendError::Lost),
            sent => Ok(sent),
        }
    }

    fn send_batch_deadline(
        &mut self,
        msgs: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<usize, SendTimeoutError> {
        let Some(first) = msgs.first() else {
            return Ok(0);
        };
        let (pos, n) = self.claim_run_deadline(first.len(), self.batch_prefix(msgs), deadline)?;
        match self.write_run(pos, &msgs[..n as usize]) {
            0 => Err(SendTimeoutError::Lost),
            sent => Ok(sent),
        }
    }

    fn peer(&self) -> Option<Peer> {
        let c = self.core.shared().census();
        Some(peer_state(c.receivers, c.receivers_joined, c.receivers_died))
    }
}

/// The state of "the other side" of an MPMC ring, summarised from its members.
pub(crate) fn peer_state(live: u32, joined: u32, died: u32) -> Peer {
    match (live, joined, died) {
        (0, 0, _) => Peer::NotYet,
        (0, _, 0) => Peer::Closed,
        (0, _, _) => Peer::Dead,
        _ => Peer::Alive,
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if unwinding_under_loom() {
            return;
        }
        // In a forked child: detach only (the parent is still the member).
        if !tokens::inherited(self.owner) {
            self.core.leave(self.me, Role::Sender);
        }
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpmc::Producer")
            .field("member", &self.me)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// A reserved slot being written. Derefs to the message bytes (`len` long).
///
/// The bytes are the shared segment itself, not yet visible to receivers: no cooperating member
/// reads or writes them before the commit. A process that may write the segment but does not
/// follow the protocol can read or change them meanwhile (see the README's "Trust model").
pub struct WriteGuard<'a> {
    producer: &'a mut Producer,
    pos: u64,
    len: usize,
    done: bool,
}

impl WriteGuard<'_> {
    /// Publishes the message.
    ///
    /// The only error is [`SendError::Lost`]: this sender was taken for dead while it held the
    /// guard (a false liveness verdict; a live member is never robbed otherwise) and the slot
    /// was recovered. Nothing was published, and the message may be sent again.
    pub fn commit(mut self) -> Result<(), SendError> {
        self.done = true;
        if self.producer.core.publish_guarded(self.pos, self.len, false) {
            Ok(())
        } else {
            Err(SendError::Lost)
        }
    }

    /// Publishes only the first `len` bytes (at most the reserved length). Errors as
    /// [`commit`](Self::commit).
    pub fn commit_len(mut self, len: usize) -> Result<(), SendError> {
        self.len = self.len.min(len);
        self.commit()
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.done && !unwinding_under_loom() {
            let core = &self.producer.core;
            if core.publish_guarded(self.pos, 0, true) {
                // Relaxed: a statistic. A slot recovered from us is not counted: it is in `lost`.
                core.shared().losses.discarded.fetch_add(1, Relaxed);
            }
        }
    }
}

impl Deref for WriteGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the claimed slot's payload holds at least `len` (<= max_message) initialised
        // bytes (segments and heap rings start zeroed) and is ours until published.
        unsafe { std::slice::from_raw_parts(self.producer.core.slots.payload(self.pos), self.len) }
    }
}

impl DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.producer.core.slots.mark_write(self.pos);
        // SAFETY: as in `deref`; `&mut self` makes this the only reference into the slot here.
        unsafe { std::slice::from_raw_parts_mut(self.producer.core.slots.payload(self.pos), self.len) }
    }
}

/// A receiving member of an MPMC ring.
///
/// If this receiver is taken for dead while it copies a message out (a false liveness verdict:
/// see "A member wrongly taken for dead" in the module docs) and the message's slot is freed
/// under it, `recv` returns [`RecvError::Lost`] (`TryRecvError::Lost`, `RecvTimeoutError::Lost`)
/// instead of bytes the next lap's producer may have overwritten; the next call goes on.
pub struct Consumer {
    core: Arc<MpmcCore>,
    me: usize,
    wait: WaitStrategy,
    fault: Option<Corrupted>,
    liveness: LivenessTimer,
    /// Senders to see join before "no sender left" means the end.
    expect_senders: u32,
    /// `Disconnected` was returned: the senders are gone and the ring drained, for good.
    senders_gone: bool,
    /// An error met by a batch receive after it had taken messages (a corrupted message
    /// skipped, or `Lost`), reported by the next call.
    held: Option<TryRecvError>,
    /// The process this end belongs to, as for `Producer::owner`.
    owner: u32,
}

impl Consumer {
    /// Joins `core` as a receiver (takes the ring lock).
    pub(crate) fn join(core: Arc<MpmcCore>) -> Result<Self, crate::Error> {
        let me = core.join(Role::Receiver)?;
        Ok(Self::joined(core, me))
    }

    /// Wraps the member record `me` the caller already joined as a receiver.
    pub(crate) fn joined(core: Arc<MpmcCore>, me: usize) -> Self {
        Consumer {
            core,
            me,
            wait: WaitStrategy::default(),
            fault: None,
            liveness: LivenessTimer::new(),
            expect_senders: 1,
            senders_gone: false,
            held: None,
            owner: tokens::owner(),
        }
    }

    /// Another receiver on the same ring (a new member; fails when the ring has [`MAX_MEMBERS`]).
    pub fn try_clone(&self) -> Result<Self, crate::Error> {
        let mut c = Self::join(Arc::clone(&self.core))?;
        c.wait = self.wait;
        c.expect_senders = self.expect_senders;
        Ok(c)
    }

    /// Sets how blocking calls wait for messages.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// `Disconnected` only once at least `n` senders have joined the ring (over its lifetime)
    /// and none is left. Default 1. Use the number of producers a pipeline starts, so that a
    /// receiver does not end when the first one finishes before the others have joined.
    pub fn set_expect_senders(&mut self, n: u32) {
        self.expect_senders = n.max(1);
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.core.geometry.capacity
    }

    /// The largest message the ring holds.
    pub fn max_message_size(&self) -> usize {
        self.core.geometry.max_message
    }

    /// Membership and loss counters of the ring.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Test hook (unit tests and loom builds only): a false death verdict on demand. Does what a
    /// receiver stalled at `dequeue` does when no live sender announces the slot there, without
    /// asking: a claimed, unpublished slot is tombstoned (and counted `lost`) even though its
    /// sender is alive. Returns whether a slot was recovered.
    #[cfg(any(test, loom))]
    #[doc(hidden)]
    pub fn recover_as_if_dead(&self) -> bool {
        self.core.recover_unpublished(false)
    }

    /// One attempt; on "nothing ready", decides between `Empty` and `Disconnected`, running
    /// the recovery slow path when `slow` (or when every sender is gone).
    fn take(&mut self, slow: bool) -> Result<(u64, usize), TryRecvError> {
        if tokens::inherited(self.owner) {
            return Err(TryRecvError::Forked);
        }
        if let Some(c) = &self.fault {
            return Err(TryRecvError::Corrupted(cold_clone(c)));
        }
        if let Some(e) = self.held.take() {
            return Err(e);
        }
        if self.senders_gone {
            return Err(TryRecvError::Disconnected);
        }
        // A recovery makes a tombstone we then skip: at most a few rounds.
        for _ in 0..4 {
            match take_once(&self.core, self.me, self.expect_senders, slow) {
                Ok(Taken::Message(pos, len)) => return Ok((pos, len)),
                Ok(Taken::Retry) => continue,
                Ok(Taken::Empty) => return Err(TryRecvError::Empty),
                Ok(Taken::Gone) => return Err(self.failed(TakeError::Gone)),
                Err(e) => return Err(self.failed(e)),
            }
        }
        Err(TryRecvError::Empty)
    }

    /// Whether the fast path may claim: no fault, no held error, not the end, not a forked copy.
    #[inline(always)]
    fn fast(&self) -> bool {
        self.fault.is_none() && self.held.is_none() && !self.senders_gone && !tokens::inherited(self.owner)
    }

    #[inline(always)]
    fn try_take(&mut self) -> Result<(u64, usize), TryRecvError> {
        if self.fast() {
            match self.core.claim_ready(self.me) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(e) => return Err(self.failed(e)),
            }
        }
        let slow = self.liveness.due();
        self.take(slow)
    }

    /// A bad message is skipped (the next call goes on); inconsistent positions poison this end.
    #[cold]
    fn failed(&mut self, e: TakeError) -> TryRecvError {
        match e {
            TakeError::Index(c) => {
                self.fault = Some(c.clone());
                TryRecvError::Corrupted(c)
            }
            TakeError::Message(c) => TryRecvError::Corrupted(c),
            TakeError::Gone => {
                self.senders_gone = true;
                TryRecvError::Disconnected
            }
            TakeError::Timeout => TryRecvError::Empty,
        }
    }

    fn take_deadline(&mut self, deadline: Option<Instant>) -> Result<(u64, usize), RecvTimeoutError> {
        match self.try_take() {
            Err(TryRecvError::Empty) => self.take_wait(deadline),
            r => r.map_err(Into::into),
        }
    }

    /// `take_deadline` found the ring empty: waits for a message. Out of line, as
    /// `Producer::claim_run_wait`.
    #[inline(never)]
    fn take_wait(&mut self, deadline: Option<Instant>) -> Result<(u64, usize), RecvTimeoutError> {
        let core = Arc::clone(&self.core);
        let (me, expect) = (self.me, self.expect_senders);
        let r = wait_until(
            &core.shared().not_empty,
            core.tally(Role::Receiver, me),
            &self.wait,
            deadline,
            || take_check(&core, me, expect, false),
            || take_check(&core, me, expect, true),
            || TakeError::Timeout,
        );
        match r {
            Ok(found) => Ok(found),
            Err(TakeError::Timeout) => Err(RecvTimeoutError::Timeout),
            Err(e) => Err(self.failed(e).into()),
        }
    }

    fn guard(&mut self, (pos, len): (u64, usize)) -> ReadGuard<'_> {
        ReadGuard {
            consumer: self,
            pos,
            len,
        }
    }

    /// Borrows the next message in place, without blocking; its slot is freed when the guard
    /// drops (producers wait at that slot a lap later until then).
    #[inline]
    pub fn try_recv_ref(&mut self) -> Result<ReadGuard<'_>, TryRecvError> {
        let found = self.try_take()?;
        Ok(self.guard(found))
    }

    /// Borrows the next message in place, waiting while the ring is empty.
    pub fn recv_ref(&mut self) -> Result<ReadGuard<'_>, RecvError> {
        let found = self.take_deadline(None)?;
        Ok(self.guard(found))
    }

    /// Borrows the next message in place, waiting at most `timeout`.
    pub fn recv_ref_timeout(&mut self, timeout: Duration) -> Result<ReadGuard<'_>, RecvTimeoutError> {
        let found = self.take_deadline(Instant::now().checked_add(timeout))?;
        Ok(self.guard(found))
    }

    /// Copies the claimed message `found` into `buf` and frees its slot. False, with `buf`
    /// emptied, if the slot was recovered from us meanwhile (see `MpmcCore::free`): what we
    /// copied may be torn by the next lap's producer, and the message is counted as dropped.
    #[inline]
    fn copy_out(&mut self, found: (u64, usize), buf: &mut Vec<u8>) -> bool {
        let msg = self.guard(found);
        buf.clear();
        buf.reserve(msg.len());
        // SAFETY: after `reserve`, `buf`'s allocation has room for `msg.len()` bytes at its start
        // (length 0) and is not the ring's memory; `copy_payload` initialises exactly those bytes
        // before `set_len` says so.
        unsafe {
            copy_payload(&msg, buf.as_mut_ptr());
            buf.set_len(msg.len());
        }
        if msg.release() {
            true
        } else {
            buf.clear();
            false
        }
    }
}

impl Consumer {
    /// Reads, checks and frees each slot of the run `(pos, n)` this member claimed, appending its
    /// messages to `batch`, and rings the doorbell once for the lot. Tombstones are skipped. A
    /// message with an impossible length is skipped and counted (`corrupt`); one whose slot was
    /// recovered from us (this receiver was taken for dead) is not delivered (see
    /// `MpmcCore::free`): the first such error is held for the caller (`held`).
    fn drain_run(&mut self, (pos, n): (u64, u64), batch: &mut Batch) {
        let core = &*self.core;
        let mut error = None;
        for at in (0..n).map(|i| pos.wrapping_add(i)) {
            let seq = core.seq(at);
            if seq & !TOMB != at.wrapping_add(1) {
                // Recovered from us before we looked: gone (perhaps a tombstone; we cannot tell).
                core.robbed();
                error.get_or_insert(TryRecvError::Lost);
                continue;
            }
            if seq & TOMB != 0 {
                // Nothing lost if this fails: the tombstone was freed for us (counted).
                core.free_quietly(at, seq);
                continue;
            }
            // Relaxed: ordered by the Acquire load of the sequence that found it published.
            let len = core.slots.len_word(at).load(Relaxed) as usize;
            if len > core.geometry.max_message {
                core.free_quietly(at, seq);
                // Relaxed: a statistic.
                core.shared().losses.corrupt.fetch_add(1, Relaxed);
                error.get_or_insert_with(|| {
                    TryRecvError::Corrupted(Corrupted {
                        reason: format!(
                            "message at position {at} has length {len}, over the maximum {}; skipped",
                            core.geometry.max_message
                        ),
                    })
                });
                continue;
            }
            core.slots.mark_read(at);
            // SAFETY: the slot is ours until freed below (claimed published, its sequence seen
            // with Acquire); `len` <= max_message, which its payload holds; the batch is our
            // own memory.
            unsafe { batch.push_copy(core.slots.payload(at), len) };
            if !core.free_quietly(at, seq) {
                // Freed under us: what we copied may be torn by the next lap's producer.
                batch.truncate(batch.len() - 1);
                error.get_or_insert(TryRecvError::Lost);
            }
        }
        if n > 1 {
            core.end_run(self.me);
        }
        let shared = core.shared();
        shared.not_full.ring(1, &shared.counters.wakes);
        if let Some(e) = error {
            self.held.get_or_insert(e);
        }
    }

    /// A batch receive: `first` finds the first slot to take (without or with waiting; it is
    /// asked only while the batch is empty), then runs are claimed while they are there, up to
    /// `max` messages. An error held from before is returned first; one met after messages were
    /// taken is held for the next call.
    fn recv_batch_with<E: From<TryRecvError>>(
        &mut self,
        batch: &mut Batch,
        max: usize,
        mut first: impl FnMut(&mut Self) -> Result<(u64, usize), E>,
    ) -> Result<usize, E> {
        batch.clear();
        let max = max.clamp(1, self.core.geometry.capacity);
        loop {
            let want = (max - batch.len()) as u64;
            let run = if self.fast() {
                match self.core.claim_ready_run(self.me, want) {
                    Ok(run) => run,
                    Err(c) => return Err(self.failed(TakeError::Index(c)).into()),
                }
            } else {
                None
            };
            let run = match run {
                Some(run) => run,
                None if !batch.is_empty() => break,
                // `take` and `take_deadline` report a held error, the end, a fault, and skip
                // tombstones; the slot they return is ours, a message of a checked length.
                None => (first(self)?.0, 1),
            };
            self.drain_run(run, batch);
            if batch.len() == max || self.held.is_some() {
                break;
            }
        }
        match batch.len() {
            0 => Err(self.held.take().map_or(TryRecvError::Empty, |e| e).into()),
            n => Ok(n),
        }
    }
}

/// What one look at the ring found.
enum Taken {
    Message(u64, usize),
    /// A stalled slot was recovered: look again.
    Retry,
    Empty,
    /// Every sender gone and the ring drained.
    Gone,
}

/// Why a blocking receive ended without a message.
enum TakeError {
    /// Positions are inconsistent: this end is poisoned.
    Index(Corrupted),
    /// One message was bad and has been skipped.
    Message(Corrupted),
    Gone,
    Timeout,
}

/// The check of a receiver's wait (blocking or async): `take_once`, done with a message or once
/// every sender is gone. After a park slice (`slice`), it also recovers stalled slots, and ends
/// the wait if no sender ever joined and nobody can find the ring any more.
fn take_check(
    core: &MpmcCore,
    me: usize,
    expect_senders: u32,
    slice: bool,
) -> Check<(u64, usize), TakeError> {
    match take_once(core, me, expect_senders, slice) {
        Ok(Taken::Message(pos, len)) => Check::Done(Ok((pos, len))),
        Ok(Taken::Gone) => Check::Done(Err(TakeError::Gone)),
        Ok(Taken::Retry | Taken::Empty)
            if slice && core.shared().census().senders_joined == 0 && core.backing.unreachable() =>
        {
            Check::Done(Err(TakeError::Gone))
        }
        Ok(Taken::Retry | Taken::Empty) => Check::NotYet,
        Err(e) => Check::Done(Err(e)),
    }
}

fn take_once(core: &MpmcCore, me: usize, expect_senders: u32, slow: bool) -> Result<Taken, TakeError> {
    if let Some((pos, len)) = core.claim_ready(me)? {
        return Ok(Taken::Message(pos, len));
    }
    if slow && core.maintain(Role::Receiver) {
        return Ok(Taken::Retry);
    }
    let shared = core.shared();
    let c = shared.census();
    if c.senders != 0 || c.senders_joined < expect_senders {
        return Ok(Taken::Empty);
    }
    // Every sender is gone: what they published is visible (their leaving, seen through the
    // counts, happened after it). Drained?
    let (dequeue, enqueue) = shared
        .positions(core.geometry.capacity)
        .map_err(TakeError::Index)?;
    if dequeue == enqueue {
        return Ok(Taken::Gone);
    }
    // Something is left: a message just published, or a slot a dead sender claimed.
    match core.claim_ready(me)? {
        Some((pos, len)) => Ok(Taken::Message(pos, len)),
        None if core.recover_unpublished(true) => Ok(Taken::Retry),
        None => Ok(Taken::Empty),
    }
}

impl Receiver for Consumer {
    #[inline]
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        let found = self.try_take()?;
        if self.copy_out(found, buf) {
            Ok(())
        } else {
            Err(TryRecvError::Lost)
        }
    }

    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        let found = self.take_deadline(deadline)?;
        if self.copy_out(found, buf) {
            Ok(())
        } else {
            Err(RecvTimeoutError::Lost)
        }
    }

    /// Claims runs of published slots with one CAS of the shared position each, copies the
    /// messages out and frees their slots, and rings the doorbell once per run (a syscall only if
    /// a sender sleeps).
    ///
    /// A run claimed is drained whole, so an error inside it (a message with an impossible length,
    /// skipped and counted; `Lost` for a message whose slot was recovered because this receiver
    /// was taken for dead) is held for the next call when messages were taken, and the messages
    /// after it in the run are in this batch: the error is reported after them.
    fn try_recv_batch(&mut self, batch: &mut Batch, max: usize) -> Result<usize, TryRecvError> {
        self.recv_batch_with(batch, max, |rx| {
            let slow = rx.liveness.due();
            rx.take(slow)
        })
    }

    /// As [`try_recv_batch`](Receiver::try_recv_batch), waiting until `deadline` for the first
    /// message.
    fn recv_batch_deadline(
        &mut self,
        batch: &mut Batch,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvTimeoutError> {
        self.recv_batch_with(batch, max, |rx| rx.take_deadline(deadline))
    }

    fn peer(&self) -> Option<Peer> {
        let c = self.core.shared().census();
        Some(peer_state(c.senders, c.senders_joined, c.senders_died))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if unwinding_under_loom() {
            return;
        }
        // In a forked child: detach only (the parent is still the member).
        if !tokens::inherited(self.owner) {
            self.core.leave(self.me, Role::Receiver);
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpmc::Consumer")
            .field("member", &self.me)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// A received message borrowed in place. Derefs to its bytes; the slot is freed on drop (unless
/// it was recovered meanwhile because this receiver was taken for dead: then nothing is written,
/// and [`Stats::robbed`] counts it).
///
/// # Trust
/// The bytes are the shared segment itself. No cooperating member writes this slot until the
/// guard drops: the producer side only reuses a slot once it is freed (by this guard's drop), and
/// another member recovers a claimed slot only when the kernel says the claimant's process died.
/// A process that may write the segment but does not follow the protocol (buggy or hostile) can
/// change the bytes while you read them; with such peers copy the message out (or use `recv`)
/// before deciding anything from it. See the README's "Trust model".
pub struct ReadGuard<'a> {
    consumer: &'a mut Consumer,
    pos: u64,
    len: usize,
}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.consumer.core.slots.mark_read(self.pos);
        // SAFETY: we claimed the published slot for `pos` (its sequence seen with Acquire) and it
        // stays ours until `free`; `len` was checked against max_message, and the payload area is
        // at least that long.
        unsafe { std::slice::from_raw_parts(self.consumer.core.slots.payload(self.pos), self.len) }
    }
}

impl ReadGuard<'_> {
    /// Frees the slot now; false if it was recovered from us (see `MpmcCore::free`).
    #[inline]
    fn release(self) -> bool {
        let guard = std::mem::ManuallyDrop::new(self);
        guard.consumer.core.free(guard.pos, guard.pos.wrapping_add(1))
    }
}

impl Drop for ReadGuard<'_> {
    /// Frees the slot. If it was recovered from us meanwhile (this receiver was taken for dead),
    /// nothing is written: the slot may hold the next lap's message by now; `robbed` counts it.
    #[inline]
    fn drop(&mut self) {
        self.consumer.core.free(self.pos, self.pos.wrapping_add(1));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// What each receiver thread got, as (producer, index) pairs: every producer's `0..n`
    /// exactly once in the union, and each producer's messages in order at each receiver.
    fn assert_each_once_in_order(
        receivers: Vec<std::thread::JoinHandle<Vec<(u32, u32)>>>,
        producers: u32,
        n: u32,
    ) {
        let mut all = Vec::new();
        for h in receivers {
            let got = h.join().unwrap();
            let mut last = vec![None::<u32>; producers as usize];
            for &(p, i) in &got {
                let prev = &mut last[p as usize];
                assert!(prev.is_none_or(|x| x < i), "producer {p}: {i} after {prev:?}");
                *prev = Some(i);
            }
            all.extend(got);
        }
        all.sort_unstable();
        let expected: Vec<(u32, u32)> = (0..producers).flat_map(|p| (0..n).map(move |i| (p, i))).collect();
        assert_eq!(all.len(), expected.len());
        assert!(all == expected, "the union is not exactly the messages sent");
    }

    #[test]
    fn sequence_encoding_round_trips_and_zero_is_free() {
        for slot in [0u64, 1, 7, 1023] {
            for seq in [
                0u64,
                1,
                slot,
                slot + 1,
                1 << 40,
                (1 << 63) - 1,
                TOMB | 5,
                TOMB | slot,
            ] {
                assert_eq!(decode(encode(seq, slot), slot), seq, "seq {seq:#x} slot {slot}");
            }
            assert_eq!(
                decode(0, slot),
                slot,
                "zeroed slot {slot} is free for its own position"
            );
        }
    }

    #[test]
    fn fifo_with_wraparound_and_varied_lengths() {
        let (mut tx, mut rx) = channel(4, 32).unwrap();
        let mut buf = Vec::new();
        for round in 0..50u32 {
            for i in 0..3u32 {
                let n = round * 3 + i;
                tx.try_send(&vec![n as u8; (n % 33) as usize]).unwrap();
            }
            for i in 0..3u32 {
                let n = round * 3 + i;
                rx.try_recv(&mut buf).unwrap();
                assert_eq!(buf, vec![n as u8; (n % 33) as usize]);
            }
        }
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    }

    #[test]
    fn full_then_room_again_and_oversize_rejected() {
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        assert_eq!(
            tx.try_send(&[0; 9]),
            Err(TrySendError::TooLarge(TooLarge { len: 9, max: 8 }))
        );
        tx.try_send(b"a").unwrap();
        tx.try_send(b"b").unwrap();
        assert_eq!(tx.try_send(b"c"), Err(TrySendError::Full));
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"a");
        tx.try_send(b"c").unwrap();
    }

    #[test]
    fn uncommitted_reservation_is_skipped_and_counted() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        {
            let mut g = tx.try_reserve(3).unwrap();
            g.copy_from_slice(b"abc");
        }
        let mut g = tx.try_reserve(8).unwrap();
        g[..2].copy_from_slice(b"hi");
        g.commit_len(2).unwrap();
        assert_eq!(&*rx.try_recv_ref().unwrap(), b"hi");
        assert!(matches!(rx.try_recv_ref(), Err(TryRecvError::Empty)));
        assert_eq!(rx.stats().discarded, 1);
    }

    #[test]
    fn last_sender_leaving_disconnects_after_drain() {
        let (tx, mut rx) = channel(4, 8).unwrap();
        let mut tx2 = tx.try_clone().unwrap();
        drop(tx);
        tx2.send(b"x").unwrap();
        let mut buf = Vec::new();
        assert_eq!(rx.try_recv(&mut buf), Ok(()));
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
        drop(tx2);
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        assert_eq!(rx.peer(), Some(Peer::Closed));
    }

    #[test]
    fn expect_senders_waits_for_the_others() {
        let (tx, mut rx) = channel(4, 8).unwrap();
        rx.set_expect_senders(2);
        let tx2 = tx.try_clone().unwrap();
        drop(tx);
        drop(tx2);
        let mut buf = Vec::new();
        // Two joined and left: the end.
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
        let (tx, mut rx) = channel(4, 8).unwrap();
        rx.set_expect_senders(2);
        drop(tx);
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    }

    #[test]
    fn last_receiver_leaving_disconnects_senders() {
        let (mut tx, rx) = channel(4, 8).unwrap();
        let rx2 = rx.try_clone().unwrap();
        drop(rx);
        tx.send(b"x").unwrap();
        drop(rx2);
        assert_eq!(tx.send(b"y"), Err(SendError::Disconnected));
    }

    #[test]
    fn member_table_full_is_a_limit_error() {
        let (tx, _rx) = channel(4, 8).unwrap();
        let mut more = Vec::new();
        while more.len() < MAX_MEMBERS - 2 {
            more.push(tx.try_clone().unwrap());
        }
        assert!(matches!(tx.try_clone(), Err(crate::Error::Limit(_))));
        more.pop();
        assert!(tx.try_clone().is_ok());
    }

    #[test]
    fn stalled_claim_of_a_vanished_producer_is_skipped_and_counted() {
        // A producer that claims a slot and then leaves without publishing (as a killed process
        // would, except that here it leaves its record too): the consumer recovers the slot.
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let ghost = tx.try_clone().unwrap();
        let pos = ghost.core.claim_free(ghost.me).unwrap().unwrap();
        assert_eq!(pos, 0);
        // Leave without publishing.
        drop(ghost);
        tx.send(b"after").unwrap();
        let mut buf = Vec::new();
        rx.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap();
        assert_eq!(buf, b"after");
        assert_eq!(rx.stats().lost, 1);
    }

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_dead_member_is_reaped_with_its_waiter_bit_and_its_stalled_claim() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let ghost = rx.try_clone().unwrap();
        let shared = rx.core.shared();
        // The ghost "dies" parked on not_empty while holding message 0 (claimed, never freed).
        tx.try_send(b"m0").unwrap();
        let (pos, _) = ghost.core.claim_ready(ghost.me).ok().flatten().unwrap();
        let record = ghost.core.member(ghost.me);
        record.pid.store(dead_pid(), Relaxed);
        let ghost_bit = waiter_bit(ghost.me);
        shared.not_empty.waiters.fetch_or(ghost_bit, Relaxed);
        std::mem::forget(ghost);
        assert_eq!(rx.stats().receivers, 2);
        // Every publish now makes a futex wake for a sleeper that no longer exists.
        let wakes = shared.counters.wakes.load(Relaxed);
        tx.try_send(b"m1").unwrap();
        assert_eq!(shared.counters.wakes.load(Relaxed), wakes + 1);
        {
            let _lock = RingLock::acquire(
                &shared.lock,
                Tokens::Local,
                Instant::now() + Duration::from_secs(1),
            )
            .unwrap();
            assert_eq!(shared.reap(Tokens::Local), 1);
        }
        assert_eq!(
            shared.not_empty.waiter_bits(),
            0,
            "the dead sleeper's bit is cleared"
        );
        tx.try_send(b"m2").unwrap();
        assert_eq!(
            shared.counters.wakes.load(Relaxed),
            wakes + 1,
            "no wake once reaped"
        );
        let st = rx.stats();
        assert_eq!((st.receivers, st.receivers_died), (1, 1));
        // Fill the ring: the producer stalls at the slot the ghost held, then recovers it.
        tx.try_send(b"m3").unwrap();
        assert_eq!(pos, 0);
        tx.send_timeout(b"m4", Duration::from_secs(2)).unwrap();
        assert_eq!(tx.stats().dropped, 1);
        let mut buf = Vec::new();
        for m in [b"m1", b"m2", b"m3", b"m4"] {
            rx.try_recv(&mut buf).unwrap();
            assert_eq!(buf, m);
        }
    }

    /// Sends `n` one-byte messages `first..first + n` through `tx`, taking each back from `rx`
    /// (laps of the ring, so every slot is reused): each arrives once, in order. A wedged ring
    /// fails here within a second instead of hanging.
    fn flows(tx: &mut Producer, rx: &mut Consumer, first: u8, n: u8) {
        let mut buf = Vec::new();
        for i in first..first + n {
            tx.send_timeout(&[i], Duration::from_secs(1))
                .unwrap_or_else(|e| panic!("send {i}: {e:?} ({:?})", tx.stats()));
            rx.recv_timeout(&mut buf, Duration::from_secs(1))
                .unwrap_or_else(|e| panic!("recv {i}: {e:?} ({:?})", rx.stats()));
            assert_eq!(buf, [i], "message {i}");
        }
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    }

    /// Receives with `try_recv` until `Empty`.
    fn drain(rx: &mut Consumer) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match rx.try_recv(&mut buf) {
                Ok(()) => got.push(buf.clone()),
                Err(TryRecvError::Empty) => return got,
                Err(e) => panic!("try_recv: {e:?} after {got:?} ({:?})", rx.stats()),
            }
        }
    }

    #[test]
    fn a_sender_robbed_of_its_reservation_publishes_nothing_after_the_slot_moved_on() {
        // The producer reserves position 0; a receiver takes it for dead and tombstones the slot;
        // the ring moves on (the tombstone is skipped, slot 0 is reused for position 4); then the
        // producer commits. A store of sequence 1 would rewind slot 0 under the message at 4: it
        // and the one a lap later would never be delivered and a sender would find the ring
        // corrupted. The commit must fail and write nothing.
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let mut tx2 = tx.try_clone().unwrap();
        let mut g = tx.try_reserve(3).unwrap();
        g.copy_from_slice(b"old");
        assert!(rx.recover_as_if_dead());
        tx2.try_send(&[1]).unwrap();
        assert_eq!(drain(&mut rx), [[1]]);
        for i in 2..=4 {
            tx2.try_send(&[i]).unwrap();
        }
        assert_eq!(g.commit(), Err(SendError::Lost));
        assert_eq!(drain(&mut rx), [[2], [3], [4]]);
        let st = rx.stats();
        assert_eq!(
            (st.lost, st.robbed, st.discarded, st.dropped),
            (1, 1, 0, 0),
            "{st:?}"
        );
        // The robbed sender is still a sender, and every slot goes on working.
        flows(&mut tx, &mut rx, 10, 9);
        flows(&mut tx2, &mut rx, 20, 9);
    }

    #[test]
    fn a_sender_robbed_before_its_tombstone_was_skipped_does_not_revive_it() {
        // A store of sequence 1 over the tombstone would deliver the message the recovering
        // receiver already counted lost (and that the sender could not know was delivered).
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let mut g = tx.try_reserve(3).unwrap();
        g.copy_from_slice(b"old");
        assert!(rx.recover_as_if_dead());
        assert_eq!(g.commit_len(2), Err(SendError::Lost));
        assert_eq!(drain(&mut rx), Vec::<Vec<u8>>::new());
        let st = rx.stats();
        assert_eq!((st.lost, st.robbed), (1, 1), "{st:?}");
        flows(&mut tx, &mut rx, 0, 9);
    }

    #[test]
    fn a_robbed_send_does_not_rewind_and_a_robbed_abandoned_reservation_is_not_discarded() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let mut tx2 = tx.try_clone().unwrap();
        // `send`'s own path: claimed, taken for dead (the tombstone skipped and slot 0 freed for
        // position 4), then the copy and the publish. A store of sequence 1 would rewind slot 0
        // and the other sender would find the ring full at position 4 for ever.
        let pos = tx.core.claim_free(tx.me).unwrap().unwrap();
        assert!(rx.recover_as_if_dead());
        tx2.try_send(&[1]).unwrap();
        assert_eq!(drain(&mut rx), [[1]]);
        assert!(!tx.write(pos, b"XXXXXXX"));
        for m in [&b"2"[..], b"3", b"four"] {
            tx2.try_send(m).unwrap();
        }
        assert_eq!(drain(&mut rx), [&b"2"[..], b"3", b"four"]);
        // An abandoned reservation whose slot was recovered publishes no tombstone over it.
        let g = tx.try_reserve(3).unwrap();
        assert!(rx.recover_as_if_dead());
        drop(g);
        let st = rx.stats();
        assert_eq!((st.lost, st.robbed, st.discarded), (2, 2, 0), "{st:?}");
        flows(&mut tx, &mut rx, 10, 9);
    }

    #[test]
    fn a_receiver_robbed_of_its_message_frees_nothing() {
        // A receiver holds message 0 in place; a sender takes it for dead and frees the slot, and
        // reuses it for message 4; then the guard drops. A store of "free for position 4" would
        // rewind the slot under message 4: it would never be delivered, and receivers would wait
        // at position 4 for ever (its sender, alive, still announces it).
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let mut rx2 = rx.try_clone().unwrap();
        for i in 0..4 {
            tx.try_send(&[i]).unwrap();
        }
        let g = rx2.try_recv_ref().unwrap();
        assert_eq!(*g, [0]);
        assert!(tx.recover_as_if_dead());
        tx.try_send(&[4]).unwrap();
        drop(g);
        assert_eq!(drain(&mut rx), [[1], [2], [3], [4]]);
        let st = rx.stats();
        assert_eq!((st.dropped, st.robbed, st.lost), (1, 1, 0), "{st:?}");
        flows(&mut tx, &mut rx2, 10, 9);
        flows(&mut tx, &mut rx, 20, 9);
    }

    #[test]
    fn a_receiver_robbed_while_copying_out_returns_lost_not_the_bytes() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let mut rx2 = rx.try_clone().unwrap();
        for i in 0..4 {
            tx.try_send(&[i]).unwrap();
        }
        // `recv`'s own path: claimed, taken for dead, slot reused, then the copy and the free.
        let found = rx2.core.claim_ready(rx2.me).ok().flatten().unwrap();
        assert!(tx.recover_as_if_dead());
        tx.try_send(b"four").unwrap();
        let mut buf = b"stale".to_vec();
        assert!(!rx2.copy_out(found, &mut buf));
        assert!(buf.is_empty(), "possibly torn bytes handed out: {buf:?}");
        assert_eq!(
            drain(&mut rx),
            [
                b"\x01".to_vec(),
                b"\x02".to_vec(),
                b"\x03".to_vec(),
                b"four".to_vec()
            ]
        );
        let st = rx.stats();
        assert_eq!((st.dropped, st.robbed), (1, 1), "{st:?}");
        flows(&mut tx, &mut rx2, 10, 9);
    }

    #[test]
    fn reap_keeps_exactly_the_waiter_bits_of_live_members_on_their_roles_doorbells() {
        let (tx, rx) = channel(4, 8).unwrap();
        let ghost = rx.try_clone().unwrap();
        let shared = rx.core.shared();
        ghost.core.member(ghost.me).pid.store(dead_pid(), Relaxed);
        let (t, r, g) = (waiter_bit(tx.me), waiter_bit(rx.me), waiter_bit(ghost.me));
        let ghost_index = ghost.me;
        std::mem::forget(ghost);
        let vacant = waiter_bit(MAX_MEMBERS - 1);
        assert_eq!((t | r | g).count_ones(), 3, "one bit per member");
        // The live members parked on their own doorbells; the ghost killed while parked; a vacant
        // record's bit and each live member's bit on the other role's doorbell (corruption).
        shared.not_full.waiters.store(t | r | g | vacant, Relaxed);
        shared.not_empty.waiters.store(t | r | g | vacant, Relaxed);
        {
            let _lock = RingLock::acquire(
                &shared.lock,
                Tokens::Local,
                Instant::now() + Duration::from_secs(1),
            )
            .unwrap();
            assert_eq!(shared.reap(Tokens::Local), 1);
        }
        assert_eq!(shared.not_full.waiter_bits(), t, "live senders' bits only");
        assert_eq!(shared.not_empty.waiter_bits(), r, "live receivers' bits only");
        // The ghost's record is reused with its bits clear, whatever the word said.
        shared.not_empty.waiters.fetch_or(g, Relaxed);
        let again = rx.try_clone().unwrap();
        assert_eq!(again.me, ghost_index, "the lowest vacant record");
        assert_eq!(shared.not_empty.waiter_bits(), r);
    }

    #[test]
    fn corrupted_length_skips_one_message_only() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        tx.try_send(b"b").unwrap();
        rx.core.slots.len_word(0).store(9999, Relaxed);
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"b");
        assert_eq!(rx.stats().corrupt, 1);
    }

    #[test]
    fn corrupted_position_is_reported_not_followed() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        tx.try_send(b"a").unwrap();
        rx.core.shared().dequeue.store(1 << 40, Relaxed);
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
    }

    /// The messages of a batch, as vectors.
    fn messages(batch: &Batch) -> Vec<Vec<u8>> {
        batch.iter().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn a_batch_sends_the_prefix_that_fits_and_a_batch_receive_takes_what_is_there() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let mut batch = Batch::new();
        assert_eq!(tx.try_send_batch(&[]), Ok(0));
        tx.try_send(b"0").unwrap();
        let msgs: [&[u8]; 5] = [b"1", b"22", b"333", b"4444", b"5"];
        // Three slots left: the first three are sent, in one claim, and the rest untouched.
        assert_eq!(tx.try_send_batch(&msgs), Ok(3));
        assert_eq!(tx.try_send_batch(&msgs[3..]), Err(TrySendError::Full));
        assert_eq!(rx.try_recv_batch(&mut batch, 2), Ok(2));
        assert_eq!(messages(&batch), [&b"0"[..], b"1"]);
        // Two slots again, the run wrapping around the end of the ring.
        assert_eq!(tx.try_send_batch(&msgs[3..]), Ok(2));
        assert_eq!(rx.try_recv_batch(&mut batch, 100), Ok(4));
        assert_eq!(messages(&batch), [&b"22"[..], b"333", b"4444", b"5"]);
        assert_eq!(rx.try_recv_batch(&mut batch, 100), Err(TryRecvError::Empty));
        assert!(batch.is_empty(), "cleared even when nothing is taken");
        // A `max` of 0 counts as 1.
        tx.try_send_batch(&msgs[..2]).unwrap();
        assert_eq!(rx.try_recv_batch(&mut batch, 0), Ok(1));
        assert_eq!(rx.recv_batch_timeout_for_test(&mut batch, 8), Ok(1));
        assert_eq!(messages(&batch), [b"22"]);
        let st = rx.stats();
        assert_eq!(
            (st.lost, st.dropped, st.discarded, st.robbed),
            (0, 0, 0, 0),
            "{st:?}"
        );
    }

    impl Consumer {
        /// `recv_batch_deadline` with a second's deadline.
        fn recv_batch_timeout_for_test(
            &mut self,
            batch: &mut Batch,
            max: usize,
        ) -> Result<usize, RecvTimeoutError> {
            self.recv_batch_deadline(batch, max, Some(Instant::now() + Duration::from_secs(1)))
        }
    }

    #[test]
    fn a_message_too_large_ends_the_prefix_and_the_next_call_reports_it() {
        let (mut tx, mut rx) = channel(8, 4).unwrap();
        let big = [9u8; 5];
        let msgs: [&[u8]; 4] = [b"a", b"bb", &big, b"c"];
        assert_eq!(tx.try_send_batch(&msgs), Ok(2));
        let too_large = TrySendError::TooLarge(TooLarge { len: 5, max: 4 });
        assert_eq!(tx.try_send_batch(&msgs[2..]), Err(too_large.clone()));
        assert_eq!(
            tx.send_batch_deadline(&msgs[2..], None),
            Err(SendTimeoutError::TooLarge(TooLarge { len: 5, max: 4 }))
        );
        assert_eq!(tx.send_batch(&msgs[3..]), Ok(1));
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 10), Ok(3));
        assert_eq!(messages(&batch), [&b"a"[..], b"bb", b"c"]);
        let st = rx.stats();
        assert_eq!(
            (st.discarded, st.lost),
            (0, 0),
            "nothing claimed for the refused message"
        );
    }

    #[test]
    fn a_blocked_batch_send_waits_for_room_for_its_first_message() {
        let (mut tx, mut rx) = channel(2, 8).unwrap();
        let msgs: [&[u8]; 3] = [b"a", b"b", b"c"];
        assert_eq!(tx.send_batch(&msgs), Ok(2));
        let soon = Some(Instant::now() + Duration::from_millis(30));
        assert_eq!(
            tx.send_batch_deadline(&msgs[2..], soon),
            Err(SendTimeoutError::Timeout)
        );
        let receiver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut batch = Batch::new();
            let mut got = Vec::new();
            while got.len() < 3 {
                rx.recv_batch(&mut batch, 2).unwrap();
                got.extend(messages(&batch));
            }
            got
        });
        assert_eq!(tx.send_batch(&msgs[2..]), Ok(1));
        assert_eq!(receiver.join().unwrap(), [b"a", b"b", b"c"]);
    }

    #[test]
    fn batch_receives_drain_then_report_disconnected() {
        let (mut tx, mut rx) = channel(8, 8).unwrap();
        let mut rx2 = rx.try_clone().unwrap();
        let msgs: [&[u8]; 3] = [b"x", b"y", b"z"];
        assert_eq!(tx.try_send_batch(&msgs), Ok(3));
        drop(tx);
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 2), Ok(2));
        assert_eq!(rx2.recv_batch(&mut batch, 5), Ok(1));
        assert_eq!(messages(&batch), [b"z"]);
        assert_eq!(rx.try_recv_batch(&mut batch, 5), Err(TryRecvError::Disconnected));
        assert_eq!(rx.recv_batch(&mut batch, 5), Err(RecvError::Disconnected));
        assert_eq!(
            rx2.recv_batch_timeout_for_test(&mut batch, 5),
            Err(RecvTimeoutError::Disconnected)
        );
        assert_eq!(rx.peer(), Some(Peer::Closed));
    }

    #[test]
    fn a_corrupted_message_in_a_run_is_skipped_and_reported_by_the_next_call() {
        let (mut tx, mut rx) = channel(8, 8).unwrap();
        let msgs: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
        tx.try_send_batch(&msgs).unwrap();
        rx.core.slots.len_word(1).store(9999, Relaxed);
        let mut batch = Batch::new();
        // The whole run was claimed: the messages after the bad one come with this call.
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Ok(3));
        assert_eq!(messages(&batch), [b"a", b"c", b"d"]);
        assert!(matches!(
            rx.try_recv_batch(&mut batch, 8),
            Err(TryRecvError::Corrupted(_))
        ));
        assert!(batch.is_empty());
        // Reported once, and the end is not poisoned.
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Err(TryRecvError::Empty));
        tx.try_send(b"e").unwrap();
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"e");
        // First in the run: reported at once when nothing else is there.
        tx.try_send(b"f").unwrap();
        rx.core.slots.len_word(5).store(9999, Relaxed);
        assert!(matches!(
            rx.try_recv_batch(&mut batch, 8),
            Err(TryRecvError::Corrupted(_))
        ));
        assert_eq!(rx.stats().corrupt, 2);
    }

    #[test]
    fn tombstones_inside_a_run_are_skipped() {
        let (mut tx, mut rx) = channel(8, 8).unwrap();
        drop(tx.try_reserve(1).unwrap());
        tx.try_send(b"a").unwrap();
        drop(tx.try_reserve(1).unwrap());
        drop(tx.try_reserve(1).unwrap());
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Ok(1));
        assert_eq!(messages(&batch), [b"a"]);
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Err(TryRecvError::Empty));
        assert_eq!(rx.stats().discarded, 3);
        flows(&mut tx, &mut rx, 0, 20);
    }

    #[test]
    fn a_producer_dead_mid_batch_has_the_rest_of_its_run_recovered_at_once() {
        // A producer claims a run of four slots, publishes two and dies: a blocked receiver takes
        // those two, then recovers the other two together (one park slice, not one each).
        let (mut tx, mut rx) = channel(8, 8).unwrap();
        let mut ghost = tx.try_clone().unwrap();
        let (pos, n) = ghost.try_claim_run(1, 4).unwrap();
        assert_eq!((pos, n), (0, 4));
        assert_eq!(ghost.write_run(0, &[b"g0", b"g1"]), 2);
        // Its record still announces the run of four when it dies.
        ghost.core.member(ghost.me).claim_more.store(3, Relaxed);
        ghost.core.member(ghost.me).pid.store(dead_pid(), Relaxed);
        std::mem::forget(ghost);
        tx.try_send(b"live").unwrap();
        let mut batch = Batch::new();
        rx.set_wait_strategy(WaitStrategy {
            park_slice: Duration::from_millis(20),
            ..WaitStrategy::default()
        });
        assert_eq!(rx.recv_batch_timeout_for_test(&mut batch, 8), Ok(2));
        assert_eq!(messages(&batch), [b"g0", b"g1"]);
        let t = Instant::now();
        assert_eq!(rx.recv_batch_timeout_for_test(&mut batch, 8), Ok(1));
        assert_eq!(messages(&batch), [b"live"]);
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        let st = rx.stats();
        assert_eq!((st.lost, st.senders_died, st.robbed), (2, 1, 0), "{st:?}");
        flows(&mut tx, &mut rx, 0, 20);
    }

    #[test]
    fn a_consumer_dead_mid_batch_has_its_unfreed_run_recovered_at_once() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let ghost = rx.try_clone().unwrap();
        for i in 0..4 {
            tx.try_send(&[i]).unwrap();
        }
        // The ghost claims all four and dies before freeing any.
        let run = ghost.core.claim_ready_run(ghost.me, 4).unwrap().unwrap();
        assert_eq!(run, (0, 4));
        ghost.core.member(ghost.me).pid.store(dead_pid(), Relaxed);
        std::mem::forget(ghost);
        assert_eq!(tx.try_send(b"x"), Err(TrySendError::Full));
        let msgs: [&[u8]; 4] = [b"4", b"5", b"6", b"7"];
        // Blocked: the first park slice's recovery frees the whole run, and the batch takes it.
        assert_eq!(tx.send_batch(&msgs), Ok(4));
        let st = tx.stats();
        assert_eq!((st.dropped, st.receivers_died, st.robbed), (4, 1, 0), "{st:?}");
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Ok(4));
        assert_eq!(messages(&batch), msgs);
        flows(&mut tx, &mut rx, 0, 20);
    }

    #[test]
    fn a_live_batch_claim_is_never_recovered() {
        // Both roles: a live member's run, announced in its record, is left alone by the other
        // role's recovery, at every slot of it.
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let (pos, n) = tx.try_claim_run(1, 4).unwrap();
        assert_eq!((pos, n), (0, 4));
        assert!(!rx.core.recover_unpublished(true));
        assert_eq!(tx.write_run(0, &[b"a", b"b", b"c", b"d"]), 4);
        let run = rx.core.claim_ready_run(rx.me, 4).unwrap().unwrap();
        assert!(!tx.core.recover_unfreed(true));
        let mut batch = Batch::new();
        rx.drain_run(run, &mut batch);
        assert_eq!(messages(&batch), [b"a", b"b", b"c", b"d"]);
        let st = rx.stats();
        assert_eq!((st.lost, st.dropped, st.robbed), (0, 0, 0), "{st:?}");
        flows(&mut tx, &mut rx, 0, 20);
    }

    #[test]
    fn a_batch_sender_robbed_mid_run_sends_a_prefix_and_the_rest_is_not_delivered() {
        let (mut tx, mut rx) = channel(8, 8).unwrap();
        let (pos, n) = tx.try_claim_run(1, 3).unwrap();
        assert_eq!((pos, n), (0, 3));
        // What a recovery that took us for dead does to the second slot of our run.
        assert!(rx.core.cas_seq(1, 1, TOMB | 2, AcqRel));
        assert_eq!(tx.write_run(0, &[b"a", b"b", b"c"]), 1);
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Ok(1));
        assert_eq!(messages(&batch), [b"a"]);
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Err(TryRecvError::Empty));
        let st = rx.stats();
        // The slot after the robbed one was published as a tombstone by the sender itself.
        assert_eq!((st.robbed, st.discarded), (1, 1), "{st:?}");
        assert_eq!(
            tx.core.member(tx.me).claim_more.load(Relaxed),
            0,
            "the run's range withdrawn"
        );
        flows(&mut tx, &mut rx, 0, 20);
    }

    #[test]
    fn a_batch_sender_taken_for_dead_finds_its_run_recovered_and_sends_nothing() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let (pos, n) = tx.try_claim_run(1, 3).unwrap();
        assert_eq!((pos, n), (0, 3));
        let record = tx.core.member(tx.me);
        let pid = record.pid.load(Relaxed);
        record.pid.store(dead_pid(), Relaxed);
        // One recovery takes the whole run.
        assert!(rx.core.recover_unpublished(true));
        assert!(!rx.core.recover_unpublished(true));
        record.pid.store(pid, Relaxed);
        let msgs: [&[u8]; 3] = [b"a", b"b", b"c"];
        assert_eq!(tx.write_run(pos, &msgs), 0);
        let mut batch = Batch::new();
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Err(TryRecvError::Empty));
        let st = rx.stats();
        assert_eq!((st.lost, st.robbed, st.discarded), (3, 3, 0), "{st:?}");
        // The sender goes on, and the same messages can be sent again.
        assert_eq!(tx.try_send_batch(&msgs), Ok(3));
        assert_eq!(rx.try_recv_batch(&mut batch, 8), Ok(3));
        assert_eq!(messages(&batch), msgs);
        flows(&mut tx, &mut rx, 0, 20);
    }

    #[test]
    fn a_batch_receiver_robbed_of_a_slot_delivers_the_rest_and_reports_lost_next() {
        let (mut tx, mut rx) = channel(4, 8).unwrap();
        let mut rx2 = rx.try_clone().unwrap();
        for i in 0..4 {
            tx.try_send(&[i]).unwrap();
        }
        let run = rx2.core.claim_ready_run(rx2.me, 4).unwrap().unwrap();
        assert_eq!(run, (0, 4));
        // Taken for dead: the slot at the head of the run is freed and reused under it.
        assert!(tx.recover_as_if_dead());
        tx.try_send(b"four").unwrap();
        let mut batch = Batch::new();
        rx2.drain_run(run, &mut batch);
        assert_eq!(messages(&batch), [[1], [2], [3]]);
        assert_eq!(rx2.try_recv_batch(&mut batch, 8), Err(TryRecvError::Lost));
        assert_eq!(rx2.try_recv_batch(&mut batch, 8), Ok(1));
        assert_eq!(messages(&batch), [b"four"]);
        let st = rx.stats();
        assert_eq!((st.dropped, st.robbed), (1, 1), "{st:?}");
        flows(&mut tx, &mut rx2, 10, 9);
        flows(&mut tx, &mut rx, 20, 9);
    }

    #[test]
    fn batches_across_threads_exactly_once_in_producer_order() {
        const P: u32 = 3;
        const C: usize = 3;
        const N: u32 = 20_000;
        let (tx, rx) = channel(16, 16).unwrap();
        let mut receivers = Vec::new();
        for c in 0..C {
            let mut rx = rx.try_clone().unwrap();
            rx.set_expect_senders(P);
            receivers.push(std::thread::spawn(move || {
                let mut batch = Batch::new();
                let mut got = Vec::new();
                let mut buf = Vec::new();
                let mut round = 0usize;
                loop {
                    round += 1;
                    // Batch receives of varied sizes, blocking and not, and single ones.
                    let more = match (round + c) % 4 {
                        0 => match rx.try_recv_batch(&mut batch, round % 7 + 1) {
                            Ok(_) => true,
                            Err(TryRecvError::Empty) => {
                                std::thread::yield_now();
                                true
                            }
                            Err(TryRecvError::Disconnected) => false,
                            Err(e) => panic!("receiver {c}: {e:?}"),
                        },
                        1 => match rx.recv(&mut buf) {
                            Ok(()) => {
                                batch.clear();
                                batch.push(&buf);
                                true
                            }
                            Err(RecvError::Disconnected) => false,
                            Err(e) => panic!("receiver {c}: {e:?}"),
                        },
                        _ => match rx.recv_batch(&mut batch, round % 11 + 1) {
                            Ok(_) => true,
                            Err(RecvError::Disconnected) => false,
                            Err(e) => panic!("receiver {c}: {e:?}"),
                        },
                    };
                    if !more {
                        return got;
                    }
                    got.extend(batch.iter().map(|m| {
                        let p = u32::from_le_bytes(m[..4].try_into().unwrap());
                        let i = u32::from_le_bytes(m[4..8].try_into().unwrap());
                        (p, i)
                    }));
                }
            }));
        }
        drop(rx);
        let mut senders = Vec::new();
        for p in 0..P {
            let mut tx = tx.try_clone().unwrap();
            senders.push(std::thread::spawn(move || {
                let all: Vec<[u8; 8]> = (0..N)
                    .map(|i| {
                        let mut m = [0u8; 8];
                        m[..4].copy_from_slice(&p.to_le_bytes());
                        m[4..].copy_from_slice(&i.to_le_bytes());
                        m
                    })
                    .collect();
                let refs: Vec<&[u8]> = all.iter().map(|m| &m[..]).collect();
                let mut rest = &refs[..];
                let mut round = 0usize;
                while !rest.is_empty() {
                    round += 1;
                    let want = (round * (p as usize + 1)) % 23 + 1;
                    let chunk = &rest[..want.min(rest.len())];
                    let sent = if p == 0 && round.is_multiple_of(3) {
                        tx.send(chunk[0]).map(|()| 1).unwrap()
                    } else if round.is_multiple_of(2) {
                        match tx.try_send_batch(chunk) {
                            Ok(n) => n,
                            Err(TrySendError::Full) => {
                                std::thread::yield_now();
                                0
                            }
                            Err(e) => panic!("sender {p}: {e:?}"),
                        }
                    } else {
                        tx.send_batch(chunk).unwrap()
                    };
                    assert!(sent <= chunk.len());
                    rest = &rest[sent..];
                }
            }));
        }
        drop(tx);
        for s in senders {
            s.join().unwrap();
        }
        assert_each_once_in_order(receivers, P, N);
    }

    #[test]
    fn threads_exactly_once_with_per_producer_order() {
        const P: u32 = 3;
        const C: usize = 3;
        const N: u32 = 20_000;
        let (tx, rx) = channel(8, 16).unwrap();
        let mut handles = Vec::new();
        for c in 0..C {
            let mut rx = rx.try_clone().unwrap();
            rx.set_expect_senders(P);
            let _ = c;
            handles.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut got = Vec::new();
                while rx.recv(&mut buf).is_ok() {
                    let p = u32::from_le_bytes(buf[..4].try_into().unwrap());
                    let i = u32::from_le_bytes(buf[4..8].try_into().unwrap());
                    got.push((p, i));
                }
                got
            }));
        }
        drop(rx);
        let mut senders = Vec::new();
        for p in 0..P {
            let mut tx = tx.try_clone().unwrap();
            senders.push(std::thread::spawn(move || {
                for i in 0..N {
                    let mut m = [0u8; 8];
                    m[..4].copy_from_slice(&p.to_le_bytes());
                    m[4..].copy_from_slice(&i.to_le_bytes());
                    tx.send(&m).unwrap();
                }
            }));
        }
        drop(tx);
        for s in senders {
            s.join().unwrap();
        }
        assert_each_once_in_order(handles, P, N);
    }
}
