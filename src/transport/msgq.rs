//! The message-queue transport: a System V message queue (`msgget`, `msgsnd`, `msgrcv`).
//!
//! Slower than the shared-memory ring (each message is copied into and out of the kernel, one
//! syscall each way, and a blocked end polls), but a message is an ordinary SysV message: a
//! client in C, Python (`sysv_ipc`) or any language with `msgsnd`/`msgrcv` reads and writes it
//! directly. `msgq://NAME` uses the same name → key mapping as `shm://NAME`
//! ([`key_for_name`](crate::transport::shm::key_for_name)); message-queue keys are a namespace of
//! their own, so `shm://x` and `msgq://x` never collide.
//!
//! # Wire format
//!
//! The receiver reads with `msgtyp` 0 (the oldest message of any type: FIFO). Types:
//!
//! | mtype | meaning | text |
//! |---|---|---|
//! | 1 | a whole message | the message, as is |
//! | 2 | end of stream: the sender closed cleanly | empty |
//! | 3 | a fragment of a longer message; more follow | the next bytes of the message |
//! | 4 | the final fragment | the last bytes of the message |
//!
//! A message that fits in one `msgsnd` (at most `min(kernel.msgmax, msg_qbytes)` bytes, the
//! *fragment size*; 8192 by default) is one type-1 message, so a foreign client sees exactly the
//! bytes that were sent. A longer one (up to `max_message`, at most 16 MiB) is sent as type-3
//! fragments followed by one type-4 fragment, back to back; receivers must not rely on fragment
//! sizes. A lone type 4 is a whole message. Any other type, a fragmented message cut short by a
//! type 1 or 2, or a message longer than the receiver's `max_message` is reported once as
//! [`Corrupted`] (naming the type or size) and dropped; later messages still flow. Fragments of
//! two senders would interleave: a message longer than the fragment size needs a single sender.
//!
//! # Waiting, and what it costs
//!
//! A `msgsnd`/`msgrcv` that sleeps in the kernel cannot time out, is not woken by its peer's
//! death, and fails with `EINTR` on every signal without being restarted. So every call here uses
//! `IPC_NOWAIT`, and a blocked call polls: 16 immediate retries, 4 after `sched_yield`, then sleeps
//! of 2 µs doubling up to 1 ms, each cut short at the deadline. Timeouts are therefore honoured
//! to within a sleep's timer slack (about 50 µs), `EINTR` is simply the next retry, and every
//! 50 ms of waiting (and at most every 50 ms across `try_` calls) the peer's tokens are read and
//! the queue is `IPC_STAT`ed to check its liveness, so a dead peer is noticed within about 50 ms.
//!
//! The cost is latency after idleness: while messages flow no call ever sleeps, but once a
//! receiver has found the queue empty for about 10 ms it sleeps 1 ms between attempts, so the
//! next message waits up to 1 ms more (0.5 ms on average) than a kernel wake-up would take; a
//! blocked end makes about a thousand cheap syscalls a second, about 1% of a core. (Measured on a
//! 2-core VM: after idling, median 0.4 ms and at most about 1.1 ms from `send` to `recv`; 70 µs
//! while busy.) A blocking `msgrcv` would wake in microseconds but could honour neither a
//! deadline nor a peer's death.
//!
//! # Peer death
//!
//! Each queue has a System V semaphore set at the same key (semaphore keys are a namespace of
//! their own, and a ring's set is `IPC_PRIVATE`, so nothing collides). Every shmpipe end holds a
//! *token* in it for as long as it is open: `+1` with `SEM_UNDO` on the live count of its role
//! (receivers, senders), taken at open, given back at close, and given back by the kernel when
//! its process dies, however it dies (SIGKILL included). The set also counts the ends of each
//! role that ever joined (no undo), and names the queue it belongs to (see Lifecycle). Tokens
//! live in the IPC namespace, not the PID namespace: a peer in another container that shares our
//! IPC namespace, whose pid the kernel shows us as 0, is alive or dead exactly as one of ours.
//!
//! The kernel also records the pid of the last successful `msgsnd` (`msg_lspid`) and `msgrcv`
//! (`msg_lrpid`), translated into the caller's PID namespace (0 if it cannot be seen there).
//! Clients that are not shmpipe (C, Python `sysv_ipc`) take no token: the pid is their only
//! trace, so it stays the fallback. A peer role is judged:
//! - **alive** if one of its ends holds a token, or its recorded pid is a live process;
//! - else **dead** if an end of that role held a token since this end opened (a receiver that
//!   drains what a dead sender left adopts that sender too), or its recorded pid is visible and
//!   dead;
//! - else **not there yet**: waited for.
//!
//! A receiver whose queue is empty, whose senders are dead and which has not seen an end of
//! stream gets `Disconnected` (after everything queued was received; a fragmented message cut
//! short by the death is dropped). A sender waiting on a full queue whose receivers are dead gets
//! `Disconnected`. Both look every 50 ms of waiting, so a death is noticed within about
//! 50 ms, in either role and whichever PID namespaces the two ends are in. A receiver reads the
//! tokens before it `IPC_STAT`s the queue, and a sender gives its token back only after queueing
//! its end of stream: so no sender token at the first look and an empty queue at the second mean
//! that nothing more is coming, and a clean close is never taken for a death. Limits:
//! - a peer already dead when this end opened (the queue outlived an earlier run) is "not there
//!   yet", not dead: the next one is waited for (a live process appearing with its pid counts).
//! - a pid is identified with its start time the first time it is seen, so a reused pid is not
//!   taken for the peer.
//! - a foreign client in another PID namespace has neither a token nor a visible pid: its death
//!   is never noticed (the end waits, as for a peer that has not come), and it is itself taken
//!   for dead if shmpipe ends of its role held tokens since and none is left.
//! - while any end of a role is alive (a shmpipe end by its token, a foreign one by its visible
//!   pid), the role is alive: a receiver shared by a shmpipe sender and a foreign sender waits
//!   for both.
//! - a sender whose receiver died but whose queue is not full keeps sending until it is.
//! - if no set can be used (no semaphore ids left, `kernel.sem`; a set at the key that is not a
//!   queue's of ours, or belongs to another owner; no permission to it), the end works by pids
//!   alone, as before the set existed: a peer in another PID namespace is then waited for.
//!
//! # Fork
//!
//! An end belongs to the process that opened it. In a child made by `fork` (which runs the
//! `pthread_atfork` handler, see `sys::fork`), its copy returns [`Forked`](TrySendError::Forked)
//! from every call, and dropping it does nothing: the queue is not removed, no end of stream is
//! queued, and no token is given back (a child inherits no `SEM_UNDO` adjustment, so it holds
//! none; giving one back would take its parent's). A child that needs the queue opens its own end.
//!
//! # Lifecycle
//!
//! Like the shared-memory ring: open-or-create with `IPC_CREAT | IPC_EXCL`, mode 0600; an
//! existing queue is `IPC_STAT`ed and refused ([`Error::Permission`]) if another uid owns it or it
//! grants write permission beyond the requested `mode`, unless allowed. The receiver removes the
//! queue when it drops. The sender, on drop, finishes any fragmented message (waiting up to
//! `close_timeout`), then removes the queue if its receiver is dead or if it sent nothing and no
//! receiver has come (no token, no recorded pid); otherwise it queues an end of stream (type 2)
//! and leaves the queue, so messages outlive their sender: a sender that closes before its
//! receiver arrives leaves its messages and the end of stream for the next receiver. If the
//! queue stays full for all of `close_timeout`, the end of stream is not queued, and the receiver
//! sees the close as a death once it has drained the queue (the sender's token is gone).
//!
//! The semaphore set (module `tokens`):
//! - the first shmpipe end on a queue without one (its creator, or the first end on a queue a
//!   foreign client or an older shmpipe made) creates it at the queue's key with `IPC_EXCL` and
//!   the open's `mode` (of two racing openers one creates it, the other uses it), then *tags* it
//!   with the queue's id (`msqid + 1`, 11 bits in each of three semaphores) in one `semop`. An
//!   end uses a set only if its tag is its queue's id.
//! - a set tagged with another id was left by a queue that is gone (removed by `ipcrm -q` or a
//!   foreign client, or by an end killed between its two removals): an opener whose own queue
//!   is still at the key removes it and creates a fresh one, so a new queue never inherits old
//!   tokens or counts. (If its queue is no longer at the key, that set may be the set of the
//!   queue that replaced it: the opener starts over instead.)
//! - an untagged set is a creator between `semget` and its `semop`: others wait for its tag, and
//!   remove it as abandoned (its creator died there) only after 500 ms. A creator stalled longer
//!   finds its set gone when it tags it, takes its token, or looks the key up after that, and
//!   starts over.
//! - a set of another size, owned by a uid that is neither the queue's nor ours, or granting
//!   writes the queue does not, is not ours: never used, never removed.
//! - whoever removes a queue removes its set right after, by id (the receiver on drop, a sender
//!   that removes the queue, an opener recycling a stale queue); an end that finds its queue
//!   removed under it removes the set when it closes; otherwise a closing end gives its token
//!   back. A set left without its queue is removed by the next opener at the key.
//!
//! Opening an existing queue (the kernel keeps no roles, so this is decided from `msg_qnum`, the
//! tokens and counts, the two recorded pids, and whether the last message is an end of stream,
//! peeked with `MSG_COPY`; "alive" and "dead" as in Peer death):
//! - a receiver is refused ([`Error::InUse`]) while the last receiver pid is a live process
//!   other than this one. (Only the pid counts here: a receiver that has not received anything
//!   yet, or one we cannot see, can be joined by a second receiver.)
//! - an empty queue is used as it is.
//! - a receiver drains the messages there, unless the queue is *stale*: senders and receivers
//!   dead and no end of stream pending, i.e. left by a run that crashed on both sides. A stale
//!   queue is removed (with its set) and created afresh. A crashed sender's messages that no
//!   receiver has read yet are drained, as a finished stream's are.
//! - a sender is refused while the messages are unread output of a sender that has finished
//!   (end of stream pending), of a live sender, or of a dead sender whose live receiver is still
//!   draining them; when senders and receivers (if any came) are dead and no end of stream is
//!   pending, the queue is stale and recreated.
//!
//! Without `MSG_COPY` (a kernel without `CONFIG_CHECKPOINT_RESTORE`) an end of stream is assumed
//! pending: a stale queue is then drained by the next receiver rather than removed, and senders
//! are refused until it has been.

use crate::channel::{Receiver, Sender};
use crate::error::{
    Corrupted, Error, RecvTimeoutError, SendTimeoutError, TooLarge, TryRecvError, TrySendError,
};
use crate::ring::{Peer, Role, MAX_MESSAGE_LIMIT};
use crate::sys::msgq::{self, show, Limits, MsgBuf, MsqId, Received, RecvFail, SendFail};
use crate::sys::proc::{self, ProcessId};
use crate::sys::sem::SemId;
use crate::transport::shm::SegmentAddr;
use crate::transport::sysv::{check_owner, io_err, is_gone, Owner};
use std::io;
use std::time::{Duration, Instant};
use tokens::{Attached, Counts, Membership, QueueOwner, Verdict};

#[cfg(all(feature = "tokio", not(loom)))]
mod aio;
mod tokens;

/// `mtype` of a whole message.
pub const MTYPE_MESSAGE: i64 = 1;
/// `mtype` of the end of stream a sender queues when it closes cleanly (empty text).
pub const MTYPE_END: i64 = 2;
/// `mtype` of a fragment of a long message, with more to follow.
pub const MTYPE_FRAGMENT: i64 = 3;
/// `mtype` of the final fragment of a long message.
pub const MTYPE_LAST_FRAGMENT: i64 = 4;

/// Default largest message, in bytes. Longer than the usual `kernel.msgmax` (8192), so long
/// messages work out of the box, and small enough to bound a receiver's reassembly buffer.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 10;

/// `kernel.msgmax` when `/proc/sys/kernel/msgmax` cannot be read (the kernel's default).
const FALLBACK_MSGMAX: usize = 8192;
/// How often a waiting end checks its peer's liveness (and how often `try_` calls may).
const LIVENESS_INTERVAL: Duration = Duration::from_millis(50);
/// Polling: immediate retries, then retries after `sched_yield`, then sleeps.
const SPIN_ATTEMPTS: u32 = 16;
const YIELD_ATTEMPTS: u32 = 4;
const FIRST_SLEEP: Duration = Duration::from_micros(2);
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// How to open or create a message queue.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct MsgqConfig {
    /// Where the queue lives: a name (hashed to a key) or a raw key.
    pub addr: SegmentAddr,
    /// Largest message this end sends or accepts (1 to 16 MiB). Unlike a ring's, it is not
    /// stored in the queue: each end applies its own, and a receiver reports a longer message as
    /// [`Corrupted`] and drops it.
    pub max_message: usize,
    /// Permission bits for a new queue (default 0600). An existing queue with write permission
    /// beyond these bits is refused.
    pub mode: u32,
    /// Accept a queue owned by another uid (default: refuse).
    pub allow_other_owner: bool,
    /// How long `open` may retry while other processes create or remove the queue.
    pub open_timeout: Duration,
    /// How long a dropped sender may wait for room to finish a fragmented message and queue its
    /// end of stream.
    pub close_timeout: Duration,
}

impl MsgqConfig {
    /// Defaults for the queue at `addr`: messages of up to 64 KiB, mode 0600.
    pub fn new(addr: SegmentAddr) -> Self {
        MsgqConfig {
            addr,
            max_message: DEFAULT_MAX_MESSAGE,
            mode: 0o600,
            allow_other_owner: false,
            open_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(1),
        }
    }

    /// Defaults for the queue named `name` (see [`SegmentAddr::parse`]).
    pub fn named(name: &str) -> Result<Self, Error> {
        Ok(Self::new(SegmentAddr::parse(name)?))
    }

    /// Sets the largest message.
    pub fn max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// Opens (or creates) the queue and takes its sending end.
    pub fn open_sender(&self) -> Result<MsgqSender, Error> {
        let o = open(self, Role::Sender)?;
        Ok(MsgqSender {
            buf: MsgBuf::with_text_capacity(o.fragment),
            fragment: o.fragment,
            q: o.queue,
            max_message: self.max_message,
            rest: Vec::new(),
            rest_at: 0,
            sent_any: false,
            sent: 0,
            disconnected: false,
            close_timeout: self.close_timeout,
        })
    }

    /// Opens (or creates) the queue and takes its receiving end.
    pub fn open_receiver(&self) -> Result<MsgqReceiver, Error> {
        let o = open(self, Role::Receiver)?;
        Ok(MsgqReceiver {
            buf: MsgBuf::with_text_capacity(o.msgmax),
            text_limit: self.max_message.max(o.msgmax),
            q: o.queue,
            max_message: self.max_message,
            partial: Vec::new(),
            assembly: Assembly::Idle,
            held: None,
            finished: false,
            ended: None,
        })
    }
}

/// What is known of a peer (from its tokens and its pid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    /// Nobody yet (no token since we opened, and pid 0 or a pid already dead when we opened).
    NotYet,
    Alive,
    Dead,
}

/// An open queue and what one end knows about its peer.
#[derive(Debug)]
struct Queue {
    id: MsqId,
    key: i32,
    /// A peer pid that was already dead when this end opened: "no peer yet", until a live
    /// process with that pid appears.
    stale_peer: Option<u32>,
    /// The last peer pid seen, with its start time, so a reused pid is not taken for it.
    peer: Option<ProcessId>,
    /// When the peer's liveness may next be checked.
    next_check: Option<Instant>,
    /// Our token in the queue's semaphore set (`None`: no set could be used; pids only).
    tokens: Option<Membership>,
    /// The process that opened this end (`sys::fork`): a forked child's copy refuses every call
    /// and its drop does nothing.
    owner: u32,
}

impl Queue {
    /// Whether this end was inherited by a forked child (one load of a static, no syscall).
    #[inline]
    fn inherited(&self) -> bool {
        crate::sys::fork::generation() != self.owner
    }

    /// What the tokens say of the peer now. Take it *before* the `IPC_STAT` it is combined with
    /// (see `MsgqReceiver::on_empty`).
    fn tokens_verdict(&mut self) -> Verdict {
        match &mut self.tokens {
            Some(m) => m.verdict(),
            None => Verdict::Unknown,
        }
    }

    /// The peer's state from the tokens' verdict and the pid the kernel recorded for its role: a
    /// token or a live pid is alive; else a peer that held a token (since we opened) is dead;
    /// else the pid decides (a foreign client takes no token).
    fn peer_state(&mut self, tokens: Verdict, pid: u32) -> PeerState {
        if tokens == Verdict::Alive {
            return PeerState::Alive;
        }
        match (self.pid_state(pid), tokens) {
            (PeerState::Alive, _) => PeerState::Alive,
            (_, Verdict::Dead) => PeerState::Dead,
            (by_pid, _) => by_pid,
        }
    }

    /// Closes this end's hold: removes the queue when `remove`, then gives our token back, or
    /// removes the set if the queue is gone (whoever removed it). Call after the last thing this
    /// end queues, so a peer never sees our token gone before our end of stream is there.
    fn close(&mut self, remove: bool) {
        if remove {
            let _ = msgq::remove(self.id);
        }
        let gone = self.is_removed();
        if let Some(m) = &mut self.tokens {
            m.leave(gone);
        }
    }

    /// Whether a liveness check is due; if so, the next one is scheduled.
    fn check_due(&mut self, now: Instant) -> bool {
        if self.next_check.is_some_and(|t| now < t) {
            return false;
        }
        self.next_check = Some(now + LIVENESS_INTERVAL);
        true
    }

    /// The peer's state by the pid alone.
    fn pid_state(&mut self, pid: u32) -> PeerState {
        if pid == 0 {
            return PeerState::NotYet;
        }
        if self.stale_peer == Some(pid) {
            match proc::identify(pid) {
                None => return PeerState::NotYet,
                Some(id) => {
                    self.stale_peer = None;
                    self.peer = Some(id);
                }
            }
        }
        let id = match self.peer {
            Some(p) if p.pid == pid => p,
            _ => {
                let p = proc::identify(pid).unwrap_or(ProcessId { pid, start_time: 0 });
                self.peer = Some(p);
                p
            }
        };
        if proc::is_alive(id) {
            PeerState::Alive
        } else {
            PeerState::Dead
        }
    }

    /// Whether the queue has been removed.
    fn is_removed(&self) -> bool {
        matches!(msgq::stat(self.id), Err(e) if is_gone(&e))
    }
}

/// How long a call may wait.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// Not at all (`try_`).
    Now,
    /// Until the deadline (`None`: for ever).
    Until(Option<Instant>),
}

impl Wait {
    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Now => None,
            Wait::Until(d) => d,
        }
    }

    /// Whether the time to wait is over at `now`.
    fn expired(self, now: Instant) -> bool {
        match self {
            Wait::Now => true,
            Wait::Until(d) => d.is_some_and(|d| now >= d),
        }
    }
}

/// Pauses between `IPC_NOWAIT` attempts: spin, yield, then sleep with exponential backoff.
struct Backoff {
    round: u32,
    sleep: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            round: 0,
            sleep: FIRST_SLEEP,
        }
    }

    /// Pauses, never sleeping past `wake_by`.
    fn pause(&mut self, wake_by: Option<Instant>) {
        self.round += 1;
        if self.round <= SPIN_ATTEMPTS {
            std::hint::spin_loop();
            return;
        }
        if self.round <= SPIN_ATTEMPTS + YIELD_ATTEMPTS {
            std::thread::yield_now();
            return;
        }
        let mut d = self.sleep;
        if let Some(w) = wake_by {
            d = d.min(w.saturating_duration_since(Instant::now()));
        }
        if !d.is_zero() {
            // Not `thread::sleep`, which restarts a sleep a signal interrupts: a signal only
            // makes the next attempt (and the deadline check) come sooner (see `sys::clock::nap`).
            crate::sys::clock::nap(d);
        }
        self.sleep = (self.sleep * 2).min(MAX_SLEEP);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn corrupted(reason: String) -> Corrupted {
    Corrupted { reason }
}

/// The sending end of a message-queue channel.
///
/// A message of up to the fragment size is one `msgsnd`. A longer one is committed once its
/// first fragment is queued: if the rest does not fit before the call's deadline (or at once, for
/// `try_send`), the call still returns `Ok` and the rest goes out first thing in the next call,
/// or when the sender drops. `Full`/`Timeout` always mean that nothing of the message was sent.
#[derive(Debug)]
pub struct MsgqSender {
    q: Queue,
    buf: MsgBuf,
    /// Longest text of one `msgsnd`: `min(kernel.msgmax, msg_qbytes)` at open.
    fragment: usize,
    max_message: usize,
    /// The unsent tail of a committed fragmented message, from `rest_at`.
    rest: Vec<u8>,
    rest_at: usize,
    sent_any: bool,
    /// Messages sent (committed) since open.
    sent: u64,
    disconnected: bool,
    close_timeout: Duration,
}

/// Queues one message of type `mtype`, polling while the queue is full.
fn put(q: &mut Queue, buf: &mut MsgBuf, mtype: i64, text: &[u8], wait: Wait) -> Result<(), TrySendError> {
    let mut backoff = Backoff::new();
    loop {
        match msgq::send(q.id, buf, mtype as libc::c_long, text, true) {
            Ok(()) => return Ok(()),
            Err(SendFail::WouldBlock) => {}
            // Cannot happen with IPC_NOWAIT; retrying keeps the deadline either way.
            Err(SendFail::Interrupted) => continue,
            Err(SendFail::Removed) => return Err(TrySendError::Disconnected),
            Err(SendFail::Invalid) if q.is_removed() => return Err(TrySendError::Disconnected),
            Err(SendFail::Invalid) => {
                return Err(TrySendError::Corrupted(corrupted(format!(
                    "msgsnd refused {} bytes (kernel.msgmax is now {})",
                    text.len(),
                    show(Limits::read().msgmax)
                ))))
            }
            Err(SendFail::Os(e)) => return Err(TrySendError::Corrupted(corrupted(format!("msgsnd: {e}")))),
        }
        // Full: back-pressure, unless the receiver is gone.
        let now = Instant::now();
        if q.check_due(now) {
            let tokens = q.tokens_verdict();
            match msgq::stat(q.id) {
                Err(e) if is_gone(&e) => return Err(TrySendError::Disconnected),
                Ok(st) if q.peer_state(tokens, st.lrpid) == PeerState::Dead => {
                    return Err(TrySendError::Disconnected)
                }
                _ => {}
            }
        }
        if wait.expired(now) {
            return Err(TrySendError::Full);
        }
        backoff.pause(earliest(wait.deadline(), q.next_check));
    }
}

impl MsgqSender {
    /// The queue's SysV key.
    pub fn key(&self) -> i32 {
        self.q.key
    }

    /// The queue's identifier (`msqid`), e.g. for `ipcs -q -i`.
    pub fn msqid(&self) -> i32 {
        self.q.id.0
    }

    /// Longest text of one `msgsnd`; longer messages are fragmented.
    pub fn fragment_size(&self) -> usize {
        self.fragment
    }

    /// Messages sent (committed: a long one once its first fragment is queued) by any call since
    /// this end was opened. After a dropped async send, an unchanged count says that its message
    /// was not sent.
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    fn send_impl(&mut self, msg: &[u8], wait: Wait) -> Result<(), TrySendError> {
        if self.q.inherited() {
            return Err(TrySendError::Forked);
        }
        if self.disconnected {
            return Err(TrySendError::Disconnected);
        }
        if msg.len() > self.max_message {
            return Err(TrySendError::TooLarge(TooLarge {
                len: msg.len(),
                max: self.max_message,
            }));
        }
        let r = self.flush_rest(wait).and_then(|()| self.send_new(msg, wait));
        if r == Err(TrySendError::Disconnected) {
            self.disconnected = true;
        }
        r
    }

    /// Sends the unsent tail of a committed message.
    fn flush_rest(&mut self, wait: Wait) -> Result<(), TrySendError> {
        while self.rest_at < self.rest.len() {
            let end = (self.rest_at + self.fragment).min(self.rest.len());
            let mtype = if end == self.rest.len() {
                MTYPE_LAST_FRAGMENT
            } else {
                MTYPE_FRAGMENT
            };
            put(
                &mut self.q,
                &mut self.buf,
                mtype,
                &self.rest[self.rest_at..end],
                wait,
            )?;
            self.rest_at = end;
        }
        self.rest.clear();
        self.rest_at = 0;
        Ok(())
    }

    fn send_new(&mut self, msg: &[u8], wait: Wait) -> Result<(), TrySendError> {
        if msg.len() <= self.fragment {
            put(&mut self.q, &mut self.buf, MTYPE_MESSAGE, msg, wait)?;
            self.sent_any = true;
            self.sent += 1;
            return Ok(());
        }
        let (first, _) = msg.split_at(self.fragment);
        put(&mut self.q, &mut self.buf, MTYPE_FRAGMENT, first, wait)?;
        self.sent_any = true;
        self.sent += 1;
        // Committed: the rest goes out before anything else, now if there is room in time, else
        // from `rest` at the next call or at drop.
        let mut at = first.len();
        while at < msg.len() {
            let end = (at + self.fragment).min(msg.len());
            let mtype = if end == msg.len() {
                MTYPE_LAST_FRAGMENT
            } else {
                MTYPE_FRAGMENT
            };
            match put(&mut self.q, &mut self.buf, mtype, &msg[at..end], wait) {
                Ok(()) => at = end,
                Err(TrySendError::Full) => {
                    self.rest.clear();
                    self.rest.extend_from_slice(&msg[at..]);
                    self.rest_at = 0;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Sender for MsgqSender {
    fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.send_impl(msg, Wait::Now)
    }

    fn send_deadline(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendTimeoutError> {
        self.send_impl(msg, Wait::Until(deadline)).map_err(Into::into)
    }

    fn max_message_size(&self) -> usize {
        self.max_message
    }
}

impl MsgqSender {
    /// Ends the stream as the sender closes: whether to remove the queue.
    fn finish(&mut self) -> bool {
        let wait = Wait::Until(Instant::now().checked_add(self.close_timeout));
        if !self.disconnected {
            match self.flush_rest(wait) {
                Ok(()) => {}
                Err(TrySendError::Disconnected) => self.disconnected = true,
                // No room in time: the receiver drops the message cut short, and the queue is
                // left as it is (its end of stream would not fit either).
                Err(_) => return false,
            }
        }
        if self.disconnected {
            // Removed already, or the receiver died: nobody will read what is left.
            return true;
        }
        let tokens = self.q.tokens_verdict();
        let Ok(st) = msgq::stat(self.q.id) else {
            return false;
        };
        let remove = match self.q.peer_state(tokens, st.lrpid) {
            PeerState::Dead => true,
            PeerState::NotYet => !self.sent_any && st.qnum == 0,
            PeerState::Alive => false,
        };
        // Without room for it in time the end of stream is not sent; the receiver then learns
        // of the close from our token (or pid) being gone, once it has drained the queue.
        remove || put(&mut self.q, &mut self.buf, MTYPE_END, &[], wait) == Err(TrySendError::Disconnected)
    }
}

impl Drop for MsgqSender {
    fn drop(&mut self) {
        // A forked child's copy: the queue, the stream and the token are the parent's.
        if self.q.inherited() {
            return;
        }
        let remove = self.finish();
        // Our token goes back only now, after the end of stream: a receiver that finds no sender
        // token and an empty queue can then tell that the stream ended.
        self.q.close(remove);
    }
}

/// Where the receiver is in a fragmented message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Assembly {
    Idle,
    /// Fragments are being collected in `partial`.
    Collecting,
    /// A message already reported too long: its fragments are dropped up to the final one.
    Skipping,
}

/// The receiving end of a message-queue channel. Removes the queue when dropped.
#[derive(Debug)]
pub struct MsgqReceiver {
    q: Queue,
    /// Receive buffer: `kernel.msgmax` bytes at open, grown (up to `text_limit`) on `E2BIG`.
    buf: MsgBuf,
    text_limit: usize,
    max_message: usize,
    /// A fragmented message being reassembled.
    partial: Vec<u8>,
    assembly: Assembly,
    /// A message received (its text in `buf`) but handled at the next call.
    held: Option<Received>,
    /// End of stream seen, queue removed, or sender dead: `Disconnected` from now on.
    finished: bool,
    /// How the stream ended, when we know: `Closed` (end of stream) or `Dead` (last sender died).
    ended: Option<Peer>,
}

/// What an empty queue says about the sender.
enum Empty {
    /// A message arrived meanwhile.
    Arrived,
    /// The sender is gone and everything it sent was received.
    SenderGone,
    /// Keep waiting.
    Wait,
}

impl MsgqReceiver {
    /// The queue's SysV key.
    pub fn key(&self) -> i32 {
        self.q.key
    }

    /// The queue's identifier (`msqid`).
    pub fn msqid(&self) -> i32 {
        self.q.id.0
    }

    fn recv_impl(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<(), TryRecvError> {
        if self.q.inherited() {
            return Err(TryRecvError::Forked);
        }
        if self.finished {
            return Err(TryRecvError::Disconnected);
        }
        let r = self.recv_loop(out, wait);
        if r == Err(TryRecvError::Disconnected) {
            self.finished = true;
            self.partial.clear();
            self.assembly = Assembly::Idle;
        }
        r
    }

    fn recv_loop(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<(), TryRecvError> {
        let mut backoff = Backoff::new();
        loop {
            let msg = match self.held.take() {
                Some(m) => m,
                None => match msgq::recv(self.q.id, &mut self.buf, 0, true) {
                    Ok(m) => m,
                    Err(RecvFail::NoMessage) => {
                        let now = Instant::now();
                        if self.q.check_due(now) {
                            match self.on_empty() {
                                Empty::Arrived => continue,
                                Empty::SenderGone => return Err(TryRecvError::Disconnected),
                                Empty::Wait => {}
                            }
                        }
                        if wait.expired(now) {
                            return Err(TryRecvError::Empty);
                        }
                        backoff.pause(earliest(wait.deadline(), self.q.next_check));
                        continue;
                    }
                    Err(RecvFail::TooBig) => {
                        self.on_too_big()?;
                        continue;
                    }
                    Err(RecvFail::Interrupted) => continue,
                    Err(RecvFail::Removed) => return Err(TryRecvError::Disconnected),
                    Err(RecvFail::Invalid) if self.q.is_removed() => return Err(TryRecvError::Disconnected),
                    Err(RecvFail::Os(e)) => {
                        return Err(TryRecvError::Corrupted(corrupted(format!("msgrcv: {e}"))))
                    }
                    Err(RecvFail::Invalid | RecvFail::Unsupported) => {
                        return Err(TryRecvError::Corrupted(corrupted(
                            "msgrcv: invalid argument".into(),
                        )))
                    }
                },
            };
            if self.take(msg, out)? {
                return Ok(());
            }
        }
    }

    fn on_empty(&mut self) -> Empty {
        // The tokens first, then the queue: senders queue everything (their end of stream
        // included) before they give their token back, so if no sender held one at the first
        // look and the queue is empty at the second, nothing more is coming from them.
        let tokens = self.q.tokens_verdict();
        match msgq::stat(self.q.id) {
            Err(e) if is_gone(&e) => Empty::SenderGone,
            Err(_) => Empty::Wait,
            Ok(st) if st.qnum > 0 => Empty::Arrived,
            Ok(st) => match self.q.peer_state(tokens, st.lspid) {
                // The sender may have queued its end of stream and exited between that snapshot
                // and this check: only an empty queue seen *after* its death stays empty.
                PeerState::Dead => match msgq::stat(self.q.id) {
                    Err(e) if is_gone(&e) => Empty::SenderGone,
                    Err(_) => Empty::Wait,
                    Ok(again) if again.qnum > 0 => Empty::Arrived,
                    // Another sender came meanwhile: judge it at the next check.
                    Ok(again) if again.lspid != st.lspid => Empty::Wait,
                    Ok(_) => {
                        self.ended = Some(Peer::Dead);
                        Empty::SenderGone
                    }
                },
                PeerState::NotYet | PeerState::Alive => Empty::Wait,
            },
        }
    }

    /// The next message is longer than the buffer: grow it, or drop a message too long to accept.
    fn on_too_big(&mut self) -> Result<(), TryRecvError> {
        let cap = self.buf.text_capacity();
        if cap < self.text_limit {
            let msgmax = Limits::read()
                .msgmax
                .map_or(0, |m| usize::try_from(m).unwrap_or(usize::MAX));
            self.buf
                .reserve_text(cap.saturating_mul(2).max(msgmax).min(self.text_limit));
            return Ok(());
        }
        match msgq::recv_truncated(self.q.id, &mut self.buf, 0) {
            Ok(m) => {
                self.partial.clear();
                self.assembly = if m.mtype == MTYPE_FRAGMENT {
                    Assembly::Skipping
                } else {
                    Assembly::Idle
                };
                Err(TryRecvError::Corrupted(corrupted(format!(
                    "message of type {} longer than {cap} bytes; dropped it",
                    m.mtype
                ))))
            }
            // Taken by someone else, or the queue is gone: the next attempt tells.
            Err(_) => Ok(()),
        }
    }

    /// Handles one received message: `Ok(true)` when `out` holds a whole message.
    fn take(&mut self, msg: Received, out: &mut Vec<u8>) -> Result<bool, TryRecvError> {
        let mtype = msg.mtype;
        let len = msg.len;
        let max = self.max_message;
        match mtype {
            MTYPE_MESSAGE | MTYPE_END if self.assembly == Assembly::Collecting => {
                let got = self.partial.len();
                self.partial.clear();
                self.assembly = Assembly::Idle;
                self.held = Some(msg);
                Err(TryRecvError::Corrupted(corrupted(format!(
                    "fragmented message cut short after {got} bytes by a message of type {mtype}; dropped it"
                ))))
            }
            MTYPE_MESSAGE => {
                self.assembly = Assembly::Idle;
                if len > max {
                    return Err(TryRecvError::Corrupted(corrupted(format!(
                        "message of {len} bytes exceeds the maximum of {max} bytes; dropped it"
                    ))));
                }
                out.clear();
                out.extend_from_slice(self.buf.text(len));
                Ok(true)
            }
            MTYPE_END => {
                self.ended = Some(Peer::Closed);
                Err(TryRecvError::Disconnected)
            }
            MTYPE_FRAGMENT | MTYPE_LAST_FRAGMENT => {
                let last = mtype == MTYPE_LAST_FRAGMENT;
                if self.assembly == Assembly::Skipping {
                    if last {
                        self.assembly = Assembly::Idle;
                    }
                    return Ok(false);
                }
                let total = self.partial.len() + len;
                if total > max {
                    self.partial.clear();
                    self.assembly = if last { Assembly::Idle } else { Assembly::Skipping };
                    return Err(TryRecvError::Corrupted(corrupted(format!(
                        "fragmented message exceeds the maximum of {max} bytes ({total} so far); dropped it"
                    ))));
                }
                self.partial.extend_from_slice(self.buf.text(len));
                if !last {
                    self.assembly = Assembly::Collecting;
                    return Ok(false);
                }
                self.assembly = Assembly::Idle;
                std::mem::swap(out, &mut self.partial);
                self.partial.clear();
                Ok(true)
            }
            other => Err(TryRecvError::Corrupted(corrupted(format!(
                "message type {other} is not in the wire format (1 to 4); dropped it"
            )))),
        }
    }
}

impl Receiver for MsgqReceiver {
    fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), TryRecvError> {
        self.recv_impl(buf, Wait::Now)
    }

    fn recv_deadline(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvTimeoutError> {
        self.recv_impl(buf, Wait::Until(deadline)).map_err(Into::into)
    }

    /// `Closed` after an end of stream, `Dead` after the last sender was found dead; `None`
    /// while the stream runs, or when it ended otherwise (the queue removed under us).
    fn peer(&self) -> Option<Peer> {
        self.ended
    }
}

impl Drop for MsgqReceiver {
    fn drop(&mut self) {
        // A forked child's copy: the queue is the parent's.
        if self.q.inherited() {
            return;
        }
        // Nobody reads again. A sender still sending gets Disconnected (EIDRM). The set goes
        // with the queue.
        self.q.close(true);
    }
}

fn create_error(e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => Error::Limit(format!(
            "msgget: no message queue ids left (kernel.msgmni = {})",
            show(Limits::read().msgmni)
        )),
        Some(libc::ENOMEM) => Error::Limit("msgget: not enough memory for a new queue".into()),
        _ => io_err("msgget")(e),
    }
}

fn describe(addr: &SegmentAddr) -> String {
    match addr {
        SegmentAddr::Name(n) => format!("queue {n:?} (key {:#x})", addr.key()),
        SegmentAddr::Key(k) => format!("queue at key {k:#x}"),
    }
}

fn alive(pid: u32) -> bool {
    proc::is_alive(ProcessId { pid, start_time: 0 })
}

/// An open queue, and the sizes its ends need.
struct Opened {
    queue: Queue,
    /// Longest text one `msgsnd` may carry here: `min(kernel.msgmax, msg_qbytes)`.
    fragment: usize,
    /// `kernel.msgmax`.
    msgmax: usize,
}

/// One step of `open`: a queue to use (and what we learnt of it), or look again from the start.
enum Step {
    Use(MsqId, Start),
    Retry,
}

/// What an end knows of its peers when it decides to use a queue.
#[derive(Default)]
struct Start {
    /// A peer pid already dead when we looked: "no peer yet" (see `Queue::stale_peer`).
    stale_peer: Option<u32>,
    /// The queue's set and its counts when we looked (`None`: we created the queue, or it had no
    /// set of ours then).
    set: Option<(SemId, Counts)>,
    /// Peers that joined before us and are gone count as ours: a receiver draining what a dead
    /// sender left.
    adopt: bool,
}

fn open(cfg: &MsgqConfig, role: Role) -> Result<Opened, Error> {
    if !(1..=MAX_MESSAGE_LIMIT).contains(&cfg.max_message) {
        return Err(Error::InvalidConfig(format!(
            "maximum message size must be between 1 and {MAX_MESSAGE_LIMIT} bytes, got {}",
            cfg.max_message
        )));
    }
    if cfg.mode & !0o777 != 0 || cfg.mode & 0o600 != 0o600 {
        return Err(Error::InvalidConfig(format!(
            "mode {:#o} must include 0600 and nothing beyond 0777",
            cfg.mode
        )));
    }
    let key = cfg.addr.key();
    let what = describe(&cfg.addr);
    let msgmax = Limits::read()
        .msgmax
        .map_or(FALLBACK_MSGMAX, |m| usize::try_from(m).unwrap_or(usize::MAX))
        .max(1);
    let deadline = Instant::now() + cfg.open_timeout;
    let mut backoff = Duration::from_micros(100);
    loop {
        let (step, created) = match msgq::create_exclusive(key, cfg.mode) {
            Ok(id) => (Step::Use(id, Start::default()), true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                (examine(cfg, &what, key, role, msgmax)?, false)
            }
            Err(e) => return Err(create_error(e)),
        };
        if let Step::Use(id, start) = step {
            match msgq::stat(id) {
                Ok(st) => {
                    let fragment = msgmax.min(usize::try_from(st.qbytes).unwrap_or(usize::MAX));
                    if fragment == 0 {
                        if created {
                            let _ = msgq::remove(id);
                        }
                        let limits = Limits::read();
                        return Err(Error::Limit(format!(
                            "{what} holds 0 bytes (msg_qbytes; kernel.msgmnb = {}, kernel.msgmax = {})",
                            show(limits.msgmnb),
                            show(limits.msgmax)
                        )));
                    }
                    let owner = QueueOwner {
                        uid: st.uid,
                        cuid: st.cuid,
                        mode: st.mode,
                    };
                    let attached = tokens::attach(key, id, &owner, cfg.mode, role, deadline);
                    let tokens = match attached {
                        Ok(Attached::Joined(set, now)) => {
                            // Counts from before we decided, if they are this set's (it can only
                            // have been replaced by `ipcrm -s`).
                            let first = match start.set {
                                Some((s, c)) if s == set => c,
                                _ => now,
                            };
                            Some(Membership::new(set, role, first, now, start.adopt))
                        }
                        Ok(Attached::Without) => None,
                        Ok(Attached::QueueGone) => {
                            retry_after(&mut backoff, deadline, cfg, &what)?;
                            continue;
                        }
                        Err(e) => {
                            if created {
                                let _ = msgq::remove(id);
                                tokens::remove_for(key, id, &owner);
                            }
                            return Err(e);
                        }
                    };
                    let mut queue = Queue {
                        id,
                        key,
                        stale_peer: start.stale_peer,
                        peer: None,
                        next_check: None,
                        tokens,
                        owner: crate::sys::fork::arm(),
                    };
                    // Removed while we joined its set (which may then be one we made for it):
                    // leave (removing that set) and start over.
                    if queue.is_removed() {
                        queue.close(false);
                        retry_after(&mut backoff, deadline, cfg, &what)?;
                        continue;
                    }
                    return Ok(Opened {
                        queue,
                        fragment,
                        msgmax,
                    });
                }
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(io_err("msgctl(IPC_STAT)")(e)),
            }
        }
        retry_after(&mut backoff, deadline, cfg, &what)?;
    }
}

/// Sleeps before `open` looks again, or fails if it has looked for too long.
fn retry_after(backoff: &mut Duration, deadline: Instant, cfg: &MsgqConfig, what: &str) -> Result<(), Error> {
    if Instant::now() >= deadline {
        return Err(Error::InUse(format!(
            "{what} kept changing under us for {:?} (created or removed by others)",
            cfg.open_timeout
        )));
    }
    std::thread::sleep(*backoff);
    *backoff = (*backoff * 2).min(Duration::from_millis(20));
    Ok(())
}

/// Whether the last message in the queue is an end of stream (`None`: the queue changed; look
/// again). Without `MSG_COPY` the answer is "yes", which keeps the queue.
fn end_pending(id: MsqId, qnum: u64, msgmax: usize) -> Option<bool> {
    let mut buf = MsgBuf::with_text_capacity(msgmax);
    match msgq::peek(id, &mut buf, qnum.saturating_sub(1)) {
        Ok(m) => Some(m.mtype == MTYPE_END),
        // An end of stream is empty: a message too long for the buffer is not one.
        Err(RecvFail::TooBig) => Some(false),
        Err(RecvFail::NoMessage | RecvFail::Removed | RecvFail::Invalid | RecvFail::Interrupted) => None,
        Err(RecvFail::Unsupported | RecvFail::Os(_)) => Some(true),
    }
}

/// Decides what to do with the queue that exists at `key`. See the module docs.
fn examine(cfg: &MsgqConfig, what: &str, key: i32, role: Role, msgmax: usize) -> Result<Step, Error> {
    let id = match msgq::lookup(key) {
        Ok(id) => id,
        Err(e) if is_gone(&e) => return Ok(Step::Retry),
        Err(e) => return Err(io_err("msgget")(e)),
    };
    let st = match msgq::stat(id) {
        Ok(st) => st,
        Err(e) if is_gone(&e) => return Ok(Step::Retry),
        Err(e) => return Err(io_err("msgctl(IPC_STAT)")(e)),
    };
    let owner = Owner {
        uid: st.uid,
        cuid: st.cuid,
        mode: st.mode,
    };
    check_owner(what, &owner, cfg.mode, cfg.allow_other_owner)?;
    let set = tokens::find(
        key,
        id,
        &QueueOwner {
            uid: st.uid,
            cuid: st.cuid,
            mode: st.mode,
        },
    );
    let counts = set.map(|(_, c)| c);
    let me = proc::current().pid;
    let (lspid, lrpid) = (st.lspid, st.lrpid);
    let receiver = at_open(counts, Role::Receiver, lrpid);
    // NotYet with messages queued: pid 0 (a sender in another PID namespace) and no token ever
    // (a foreign client, or a shmpipe without tokens). Take it for alive.
    let sender_alive = at_open(counts, Role::Sender, lspid) != PeerState::Dead;
    let refuse = |why: String| Err(Error::InUse(format!("{what}: {why}")));
    // Only by pid, as before tokens: a receiver that has received nothing can be joined.
    if role == Role::Receiver && lrpid != 0 && lrpid != me && alive(lrpid) {
        return refuse(format!("its receiver is held by live pid {lrpid}"));
    }
    if st.qnum == 0 {
        let dead_pid = |pid: u32| (pid != 0 && !alive(pid)).then_some(pid);
        let stale_peer = match role {
            Role::Receiver => dead_pid(lspid),
            Role::Sender => dead_pid(lrpid),
        };
        let start = Start {
            stale_peer,
            set,
            adopt: false,
        };
        return Ok(Step::Use(id, start));
    }
    let Some(finished) = end_pending(id, st.qnum, msgmax) else {
        return Ok(Step::Retry);
    };
    let stale = !sender_alive && receiver != PeerState::Alive && !finished;
    let pid = |p: u32| match p {
        0 => "pid unknown here: another PID namespace".to_string(),
        p => format!("pid {p}"),
    };
    match role {
        Role::Receiver if stale && receiver == PeerState::Dead => {}
        Role::Receiver => {
            let start = Start {
                stale_peer: None,
                set,
                adopt: true,
            };
            return Ok(Step::Use(id, start));
        }
        Role::Sender if finished => {
            return refuse(format!(
                "it holds {} unread messages from a sender that has finished; \
                 receive them first or remove the queue",
                st.qnum
            ))
        }
        Role::Sender if sender_alive => {
            return refuse(format!(
                "its sender is held by a live process ({}; {} messages unread)",
                pid(lspid),
                st.qnum
            ))
        }
        Role::Sender if receiver == PeerState::Alive => {
            return refuse(format!(
                "its previous sender ({}) died with {} messages unread and its receiver \
                 ({}) is still reading them; retry when it has finished",
                pid(lspid),
                st.qnum,
                pid(lrpid)
            ))
        }
        Role::Sender => {}
    }
    // Stale: left by a run whose ends are both gone, with no end of stream. Its set goes too.
    let _ = msgq::remove(id);
    if let Some((set, _)) = set {
        let _ = crate::sys::sem::remove(set);
    }
    Ok(Step::Retry)
}

/// A role's state when a queue is opened, from the set's counts (if it has a set) and the pid
/// the kernel recorded for the role: alive if it holds a token or its pid is alive; dead if its
/// pid is dead, or pid unknown here but shmpipe ends of the role have joined and none is left.
fn at_open(counts: Option<Counts>, role: Role, pid: u32) -> PeerState {
    if counts.is_some_and(|c| c.live(role) > 0) || (pid != 0 && alive(pid)) {
        PeerState::Alive
    } else if pid != 0 || counts.is_some_and(|c| c.joined(role) != 0) {
        PeerState::Dead
    } else {
        PeerState::NotYet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{RecvError, SendError};
    use crate::sys::sem;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique queue name for this test, and a guard that removes the queue at that key when
    /// the test ends, however it ends.
    struct Named {
        name: String,
        key: i32,
    }

    impl Named {
        fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            // Relaxed: only uniqueness matters.
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("ut-{tag}-{}-{n}", std::process::id());
            let key = SegmentAddr::parse(&name).unwrap().key();
            Named { name, key }
        }

        fn cfg(&self) -> MsgqConfig {
            MsgqConfig::named(&self.name).unwrap()
        }

        fn exists(&self) -> bool {
            msgq::lookup(self.key).is_ok()
        }
    }

    impl Drop for Named {
        fn drop(&mut self) {
            if let Ok(id) = msgq::lookup(self.key) {
                let _ = msgq::remove(id);
            }
            // The liveness semaphore set at the same key.
            if let Ok(set) = sem::lookup(self.key) {
                let _ = sem::remove(set);
            }
        }
    }

    fn inject(id: i32, mtype: i64, text: &[u8]) {
        let mut buf = MsgBuf::with_text_capacity(text.len());
        msgq::send(MsqId(id), &mut buf, mtype as libc::c_long, text, true).unwrap();
    }

    fn payload(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
    }

    #[test]
    fn whole_and_fragmented_messages_round_trip_in_order() {
        let t = Named::new("roundtrip");
        let mut rx = t.cfg().max_message(200_000).open_receiver().unwrap();
        let mut tx = t.cfg().max_message(200_000).open_sender().unwrap();
        let f = tx.fragment_size();
        let sizes = [0, 1, 100, f - 1, f, f + 1, 2 * f, 3 * f + 7, 200_000];
        let sender = std::thread::spawn(move || {
            for (i, &len) in sizes.iter().enumerate() {
                tx.send(&payload(i, len)).unwrap();
            }
        });
        let mut buf = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
            assert_eq!(buf.len(), len, "message {i}");
            assert!(buf == payload(i, len), "message {i} has the wrong bytes");
        }
        sender.join().unwrap();
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected), "sticky");
    }

    #[test]
    fn a_message_that_fits_is_one_plain_type_1_message() {
        let t = Named::new("plain");
        let mut tx = t.cfg().open_sender().unwrap();
        tx.send(b"hello").unwrap();
        let mut buf = MsgBuf::with_text_capacity(64);
        let m = msgq::recv(MsqId(tx.msqid()), &mut buf, 0, true).unwrap();
        assert_eq!((m.mtype, buf.text(m.len)), (MTYPE_MESSAGE, &b"hello"[..]));
        assert_eq!(tx.key(), t.key);
    }

    #[test]
    fn too_large_sends_nothing() {
        let t = Named::new("large");
        let mut tx = t.cfg().max_message(100).open_sender().unwrap();
        assert_eq!(tx.max_message_size(), 100);
        let e = tx.try_send(&[0; 101]).unwrap_err();
        assert_eq!(e, TrySendError::TooLarge(TooLarge { len: 101, max: 100 }));
        assert!(matches!(tx.send(&[0; 5000]), Err(SendError::TooLarge(_))));
        assert_eq!(msgq::stat(MsqId(tx.msqid())).unwrap().qnum, 0);
        assert!(t.cfg().max_message(0).open_sender().is_err());
        assert!(t.cfg().max_message(MAX_MESSAGE_LIMIT + 1).open_sender().is_err());
    }

    #[test]
    fn empty_and_timeouts_are_honoured() {
        let t = Named::new("timeout");
        let mut rx = t.cfg().open_receiver().unwrap();
        let _tx = t.cfg().open_sender().unwrap();
        let mut buf = Vec::new();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
        for ms in [0, 1, 30, 120] {
            let timeout = Duration::from_millis(ms);
            let start = Instant::now();
            assert_eq!(rx.recv_timeout(&mut buf, timeout), Err(RecvTimeoutError::Timeout));
            let took = start.elapsed();
            assert!(took >= timeout, "returned early: {took:?} < {timeout:?}");
            assert!(
                took < timeout + Duration::from_millis(100),
                "{took:?} for {timeout:?}"
            );
        }
    }

    #[test]
    fn a_full_queue_is_back_pressure_not_an_error() {
        let t = Named::new("full");
        let mut rx = t.cfg().open_receiver().unwrap();
        let mut tx = t.cfg().open_sender().unwrap();
        let msg = vec![5; 1000];
        let mut sent = 0;
        while tx.try_send(&msg).is_ok() {
            sent += 1;
            assert!(sent < 1_000_000);
        }
        assert_eq!(tx.try_send(&msg), Err(TrySendError::Full));
        let start = Instant::now();
        let timeout = Duration::from_millis(80);
        assert_eq!(tx.send_timeout(&msg, timeout), Err(SendTimeoutError::Timeout));
        let took = start.elapsed();
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(100),
            "{took:?}"
        );
        // A blocked send goes through once the receiver makes room.
        let h = std::thread::spawn(move || {
            tx.send(&msg).unwrap();
            tx
        });
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        let _tx = h.join().unwrap();
        for _ in 0..sent {
            rx.recv(&mut buf).unwrap();
        }
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    }

    #[test]
    fn try_send_commits_a_long_message_and_finishes_it_later() {
        let t = Named::new("commit");
        let mut rx = t.cfg().open_receiver().unwrap();
        let mut tx = t.cfg().open_sender().unwrap();
        let qbytes = msgq::stat(MsqId(tx.msqid())).unwrap().qbytes as usize;
        let big = payload(1, qbytes * 2 + 123);
        // Only part of it fits: still Ok, the rest is pending.
        tx.try_send(&big).unwrap();
        assert_eq!(tx.try_send(b"next"), Err(TrySendError::Full));
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut sent_next = false;
        for _ in 0..1000 {
            match rx.try_recv(&mut buf) {
                Ok(()) => got.push(buf.clone()),
                Err(TryRecvError::Empty) => {}
                Err(e) => panic!("{e}"),
            }
            if !sent_next {
                sent_next = tx.try_send(b"next").is_ok();
            }
            if got.len() == 2 {
                break;
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got[0] == big);
        assert_eq!(got[1], b"next");
    }

    #[test]
    fn unknown_types_are_reported_dropped_and_later_messages_flow() {
        let t = Named::new("unknown");
        let mut rx = t.cfg().open_receiver().unwrap();
        inject(rx.msqid(), 9, b"??");
        inject(rx.msqid(), MTYPE_MESSAGE, b"after");
        let mut buf = Vec::new();
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Corrupted(c)) => assert!(c.reason.contains("type 9"), "{c}"),
            other => panic!("{other:?}"),
        }
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"after");
    }

    #[test]
    fn fragments_cut_short_too_long_or_alone() {
        let t = Named::new("frags");
        let mut rx = t.cfg().max_message(10).open_receiver().unwrap();
        let id = rx.msqid();
        let mut buf = Vec::new();
        // A fragmented message cut short by a whole one: reported, then the whole one.
        inject(id, MTYPE_FRAGMENT, b"ab");
        inject(id, MTYPE_MESSAGE, b"x");
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Corrupted(c)) => assert!(c.reason.contains("cut short"), "{c}"),
            other => panic!("{other:?}"),
        }
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"x");
        // Longer than max_message: reported once, its remaining fragments skipped.
        for _ in 0..3 {
            inject(id, MTYPE_FRAGMENT, b"123456");
        }
        inject(id, MTYPE_LAST_FRAGMENT, b"7");
        inject(id, MTYPE_FRAGMENT, b"12345");
        inject(id, MTYPE_LAST_FRAGMENT, b"67890");
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"1234567890");
        // A lone final fragment is a whole message; a whole message too long is dropped.
        inject(id, MTYPE_LAST_FRAGMENT, b"solo");
        inject(id, MTYPE_MESSAGE, b"01234567890");
        inject(id, MTYPE_MESSAGE, b"ok");
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"solo");
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"ok");
        // An end of stream cutting a message short: reported, then the end.
        inject(id, MTYPE_FRAGMENT, b"ab");
        inject(id, MTYPE_END, b"");
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_message_longer_than_the_receive_buffer_is_received() {
        let t = Named::new("e2big");
        let mut rx = t.cfg().open_receiver().unwrap();
        // Shrink the buffer to force E2BIG: the receiver grows it and takes the message.
        rx.buf = MsgBuf::with_text_capacity(8);
        inject(rx.msqid(), MTYPE_MESSAGE, &[3; 3000]);
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, vec![3; 3000]);
        // Beyond what it accepts: dropped, truncated, without a huge allocation.
        rx.buf = MsgBuf::with_text_capacity(8);
        rx.text_limit = 16;
        inject(rx.msqid(), MTYPE_MESSAGE, &[3; 3000]);
        inject(rx.msqid(), MTYPE_MESSAGE, b"next");
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, b"next");
    }

    #[test]
    fn dropping_the_receiver_removes_the_queue_and_disconnects_the_sender() {
        let t = Named::new("rxdrop");
        let rx = t.cfg().open_receiver().unwrap();
        let mut tx = t.cfg().open_sender().unwrap();
        tx.send(b"unread").unwrap();
        drop(rx);
        assert!(!t.exists());
        assert_eq!(tx.try_send(b"x"), Err(TrySendError::Disconnected));
        assert_eq!(tx.send(b"x"), Err(SendError::Disconnected));
    }

    #[test]
    fn a_sender_that_sent_nothing_to_nobody_removes_the_queue() {
        let t = Named::new("txdrop");
        drop(t.cfg().open_sender().unwrap());
        assert!(!t.exists());
        // A waiting receiver that never received learns of it at once.
        let mut rx = t.cfg().open_receiver().unwrap();
        let tx = t.cfg().open_sender().unwrap();
        drop(tx);
        let mut buf = Vec::new();
        assert_eq!(
            rx.recv_timeout(&mut buf, Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn messages_outlive_their_sender_and_block_a_second_sender() {
        let t = Named::new("outlive");
        let mut tx = t.cfg().open_sender().unwrap();
        for i in 0..3u8 {
            tx.send(&[i; 10]).unwrap();
        }
        drop(tx);
        assert!(t.exists());
        match t.cfg().open_sender() {
            Err(Error::InUse(m)) => assert!(m.contains("finished"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut rx = t.cfg().open_receiver().unwrap();
        let mut buf = Vec::new();
        for i in 0..3u8 {
            rx.recv(&mut buf).unwrap();
            assert_eq!(buf, [i; 10]);
        }
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        drop(rx);
        assert!(!t.exists());
    }

    #[test]
    fn owner_and_mode_are_checked() {
        let t = Named::new("perm");
        let id = msgq::create_exclusive(t.key, 0o622).unwrap();
        match t.cfg().open_receiver() {
            Err(Error::Permission(m)) => assert!(m.contains("0o622"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut cfg = t.cfg();
        cfg.mode = 0o622;
        let _tx = cfg.open_sender().unwrap();
        if proc::euid() != 0 {
            return; // Changing a queue's owner needs root.
        }
        // SAFETY: msqid_ds is plain old data; all-zero is a valid value.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid out-pointer for IPC_STAT.
        assert_eq!(unsafe { libc::msgctl(id.0, libc::IPC_STAT, &mut ds) }, 0);
        ds.msg_perm.uid = 12345;
        ds.msg_perm.mode = 0o600;
        // SAFETY: `ds` is a valid msqid_ds for IPC_SET.
        assert_eq!(unsafe { libc::msgctl(id.0, libc::IPC_SET, &mut ds) }, 0);
        match t.cfg().open_sender() {
            Err(Error::Permission(m)) => assert!(m.contains("uid 12345"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut cfg = t.cfg();
        cfg.allow_other_owner = true;
        drop(cfg.open_receiver().unwrap());
        assert!(!t.exists(), "the receiver removed it");
    }

    fn set_of(q: &Queue) -> sem::SemId {
        q.tokens.as_ref().expect("a semaphore set").set()
    }

    fn live_joined(set: sem::SemId) -> ([u16; 2], [u16; 2]) {
        let c = tokens::counts(set);
        (
            [c.live(Role::Receiver), c.live(Role::Sender)],
            [c.joined(Role::Receiver), c.joined(Role::Sender)],
        )
    }

    #[test]
    fn each_end_holds_a_token_in_the_set_at_the_queue_key_until_it_closes() {
        let t = Named::new("tokens");
        let rx = t.cfg().open_receiver().unwrap();
        let set = set_of(&rx.q);
        assert_eq!(sem::lookup(t.key).unwrap(), set, "the set is at the queue's key");
        let tx = t.cfg().open_sender().unwrap();
        assert_eq!(set_of(&tx.q), set);
        assert_eq!(live_joined(set), ([1, 1], [1, 1]));
        drop(tx);
        assert_eq!(
            live_joined(set),
            ([1, 0], [1, 1]),
            "the sender gave its token back"
        );
        drop(rx);
        assert!(sem::lookup(t.key).is_err(), "the set went with the queue");
    }

    #[test]
    fn a_fresh_queue_never_inherits_a_stale_set() {
        let t = Named::new("staleset");
        // Left at the key by an earlier queue: tagged with its id, a sender token still counted
        // (as if that queue's sender were alive).
        let old = tokens::plant(t.key, Some(MsqId(123_456)), [0, 1], [2, 7]);
        let mut rx = t.cfg().open_receiver().unwrap();
        let set = set_of(&rx.q);
        assert_ne!(set, old);
        assert!(sem::stat(old).is_err(), "the stale set was removed");
        assert_eq!(live_joined(set), ([1, 0], [1, 0]));
        // No sender is taken for alive, or for dead: the receiver waits.
        let mut buf = Vec::new();
        assert_eq!(
            rx.recv_timeout(&mut buf, Duration::from_millis(120)),
            Err(RecvTimeoutError::Timeout)
        );
    }

    #[test]
    fn an_untagged_set_is_waited_for_and_removed_only_when_its_creator_never_tags_it() {
        // Its creator tags it meanwhile: used as it is.
        let t = Named::new("tagging");
        let q = msgq::create_exclusive(t.key, 0o600).unwrap();
        let set = tokens::plant(t.key, None, [0, 0], [0, 0]);
        let tagger = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tokens::tag(set, q);
        });
        let start = Instant::now();
        let tx = t.cfg().open_sender().unwrap();
        tagger.join().unwrap();
        assert_eq!((tx.q.id, set_of(&tx.q)), (q, set));
        assert!(start.elapsed() < tokens::UNTAGGED_GRACE);
        drop(tx);

        // Never tagged (its creator died between semget and semop): removed after the grace.
        let t = Named::new("untagged");
        let old = tokens::plant(t.key, None, [0, 0], [0, 0]);
        let start = Instant::now();
        let rx = t.cfg().open_receiver().unwrap();
        assert!(start.elapsed() >= tokens::UNTAGGED_GRACE);
        assert_ne!(set_of(&rx.q), old);
        assert!(sem::stat(old).is_err());
    }

    #[test]
    fn a_queue_made_without_a_set_gets_one_and_a_foreign_set_is_left_alone() {
        // A queue a foreign client made: the first end makes its set.
        let t = Named::new("noset");
        msgq::create_exclusive(t.key, 0o600).unwrap();
        let tx = t.cfg().open_sender().unwrap();
        assert_eq!(live_joined(set_of(&tx.q)), ([0, 1], [0, 1]));
        drop(tx);

        // Something else's set at the key (another size): not used, not removed; pids only.
        let t = Named::new("foreignset");
        let foreign = sem::create(t.key, 3, 0o600, true).unwrap();
        let mut rx = t.cfg().open_receiver().unwrap();
        let mut tx = t.cfg().open_sender().unwrap();
        assert!(rx.q.tokens.is_none() && tx.q.tokens.is_none());
        tx.send(b"by pids").unwrap();
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        assert_eq!(buf, b"by pids");
        drop(tx);
        assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
        drop(rx);
        assert_eq!(sem::stat(foreign).unwrap().nsems, 3, "left alone");
        let _ = sem::remove(foreign);
    }

    #[test]
    fn a_queue_removed_under_its_ends_takes_its_set_when_they_close() {
        let t = Named::new("ipcrm");
        let mut rx = t.cfg().open_receiver().unwrap();
        let mut tx = t.cfg().open_sender().unwrap();
        let set = set_of(&rx.q);
        // `ipcrm -q`: the queue goes, its set stays.
        msgq::remove(rx.q.id).unwrap();
        assert_eq!(tx.try_send(b"x"), Err(TrySendError::Disconnected));
        drop(tx);
        assert!(
            sem::stat(set).is_err(),
            "the sender removed the set of its removed queue"
        );
        let mut buf = Vec::new();
        assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Disconnected));
        drop(rx);
        assert!(sem::lookup(t.key).is_err());
    }

    #[test]
    fn raw_keys_and_bad_configs() {
        let t = Named::new("rawkey");
        let cfg = MsgqConfig::new(SegmentAddr::Key(t.key));
        let mut rx = cfg.open_receiver().unwrap();
        let mut tx = t.cfg().open_sender().unwrap();
        tx.send(b"k").unwrap();
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        assert_eq!(buf, b"k");
        let mut bad = t.cfg();
        bad.mode = 0o400;
        assert!(matches!(bad.open_sender(), Err(Error::InvalidConfig(_))));
    }
}
