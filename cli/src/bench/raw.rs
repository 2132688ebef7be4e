//! The raw baselines: the same measurements written directly against libc and std, with none of
//! our machinery (no headers, no validation, no liveness checks on the fast path).
//!
//! - `raw-atomic` (latency): one `AtomicU64` in an `IPC_PRIVATE` SysV segment; we store `2i+1`,
//!   the peer spins until it sees it and stores `2i+2`, we spin until we see that. Both sides
//!   busy-wait: the floor of any cross-process hand-off on this machine.
//! - `raw-futex` (latency): two shared futex words in the same kind of segment, one per direction;
//!   each side stores the sequence number, `FUTEX_WAKE`s unconditionally, and `FUTEX_WAIT`s for the
//!   answer as soon as it is not already there (no spinning): the floor of a sleeping hand-off.
//! - `raw-msgq`: blocking `msgsnd`/`msgrcv` on an `IPC_PRIVATE` queue; latency pings are mtype 1
//!   and pongs mtype 2 on the one queue.
//! - `raw-unix` (a `socketpair` whose other end the peer inherits) and `raw-tcp` (127.0.0.1,
//!   `TCP_NODELAY` on both ends): frames of a little-endian u32 length and the payload, each
//!   written with one `write_all` and read with `read_exact` through a 64 KiB `BufReader` (our
//!   socket transport likewise writes a frame at once and reads what is there into a buffer).
//! - `raw-pipe`: `std::io::pipe` pairs (`pipe2(O_CLOEXEC)`), one per direction; the peer inherits
//!   its ends (close-on-exec cleared in the child only) and gets their numbers on the command
//!   line; frames as `raw-unix`. The throughput pipe is grown to 1 MiB (`F_SETPIPE_SZ`, best
//!   effort), as a socket's buffer holds several large frames. Pipes have no timeouts: a peer that dies is seen as end of file
//!   (or `EPIPE`), but one that hangs alive blocks the measurement until it is killed.
//!
//! Cleanup: segments and queues are `IPC_RMID`ed by RAII guards on every path. A segment is
//! even removed as soon as we have attached it (Linux keeps a removed segment alive while it is
//! attached and still lets the peer attach it by id), so not even our SIGKILL leaks it. A peer
//! blocked in `msgrcv`/`msgsnd` is killed with us (`PR_SET_PDEATHSIG`); while *we* block in
//! `msgrcv`, a watchdog thread removes the queue if the peer dies, which wakes us with `EIDRM`.

use super::cleanup::{self, Resource, Token};
use super::{
    check, stamp, Ctx, Job, Latencies, Measured, PeerArgs, PeerProc, Scenario, StreamClock, Transport,
    PING_SIZE, STALL,
};
use std::hint::spin_loop;
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

// ---------------------------------------------------------------------------------------------
// Shared memory: the segment, spinning, futexes
// ---------------------------------------------------------------------------------------------

/// Bytes in a baseline segment.
const SEGMENT_SIZE: usize = 4096;
/// Offsets of the words in it, each on its own cache line pair.
const ATOMIC_AT: usize = 0;
const PING_FUTEX_AT: usize = 128;
const PONG_FUTEX_AT: usize = 256;
/// `raw-atomic-pair`: one word per direction.
const PING_WORD_AT: usize = 384;
const PONG_WORD_AT: usize = 512;

/// An attached SysV segment. The creator's guard removes it; everyone's detaches it.
struct Segment {
    id: i32,
    addr: NonNull<u8>,
    owner: bool,
}

impl Segment {
    /// Creates an `IPC_PRIVATE` segment, attaches it, and marks it for removal at once.
    fn create_private() -> Result<Segment, String> {
        // Held until the segment is marked for removal, so an interruption cannot come between.
        let _reg = cleanup::lock();
        // SAFETY: shmget takes only scalar arguments.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, SEGMENT_SIZE, libc::IPC_CREAT | 0o600) };
        if id < 0 {
            return Err(os_err("shmget(IPC_PRIVATE)"));
        }
        let seg = match Segment::attach_id(id) {
            Ok(addr) => Segment {
                id,
                addr,
                owner: true,
            },
            Err(e) => {
                remove_segment(id);
                return Err(e);
            }
        };
        // It lives on while attached, and Linux lets the peer attach it by id after this.
        remove_segment(id);
        Ok(seg)
    }

    /// Attaches the segment the parent created.
    fn attach(id: i32) -> Result<Segment, String> {
        Ok(Segment {
            id,
            addr: Segment::attach_id(id)?,
            owner: false,
        })
    }

    fn attach_id(id: i32) -> Result<NonNull<u8>, String> {
        // SAFETY: shmat with a null address lets the kernel choose where to map; nothing of
        // ours is at that address. The result is checked before use.
        let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if p as isize == -1 {
            return Err(os_err(&format!("shmat({id})")));
        }
        let mut size_check: libc::shmid_ds = {
            // SAFETY: shmid_ds is a plain C struct of integers; all zeroes is a valid value.
            unsafe { std::mem::zeroed() }
        };
        // SAFETY: `size_check` is a valid, writable shmid_ds.
        let stat = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut size_check) };
        if stat != 0 || size_check.shm_segsz < SEGMENT_SIZE {
            let e = os_err(&format!("segment {id} is not a bench segment"));
            // SAFETY: `p` was returned by shmat just above and is not used after this.
            unsafe { libc::shmdt(p) };
            return Err(e);
        }
        NonNull::new(p.cast::<u8>()).ok_or_else(|| "shmat returned null".into())
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= SEGMENT_SIZE);
        // Every bit pattern is a valid u64, and both processes only access the word atomically.
        // SAFETY: the attachment is page aligned and SEGMENT_SIZE bytes long (checked at attach),
        // so `offset` (8-aligned, in bounds) is a valid AtomicU64 while `self` is attached.
        unsafe { &*self.addr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= SEGMENT_SIZE);
        // SAFETY: as in `u64_at`, for a 4-aligned in-bounds u32.
        unsafe { &*self.addr.as_ptr().add(offset).cast::<AtomicU32>() }
    }
}

fn remove_segment(id: i32) {
    // SAFETY: IPC_RMID takes no buffer; a removed or foreign id only makes it fail.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.owner {
            // Already done at creation; repeated here so that removal never depends on it.
            remove_segment(self.id);
        }
        // SAFETY: `addr` came from shmat and no reference into it outlives `self`.
        unsafe { libc::shmdt(self.addr.as_ptr().cast()) };
    }
}

/// Busy-waits until `done`. Every 4096 rounds (far longer than an answer from a running peer
/// takes), yields the CPU (so a single-CPU machine still makes progress), checks that the peer
/// lives, and gives up after [`STALL`] without an answer.
fn spin_until(
    mut done: impl FnMut() -> bool,
    alive: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let mut rounds: u32 = 0;
    let mut since = None;
    loop {
        if done() {
            return Ok(());
        }
        spin_loop();
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(4096) {
            alive()?;
            std::thread::yield_now();
            if since.get_or_insert_with(Instant::now).elapsed() > STALL {
                return Err(format!("no answer for {STALL:?}"));
            }
        }
    }
}

/// `FUTEX_WAIT` (shared: the words are in a segment mapped by two processes) while `*word ==
/// expected`, for at most `timeout`. Returns whether it timed out.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the whole call and `ts` a live timespec;
    // FUTEX_WAIT only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
    r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not write to it.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// Sleeps on `word` until it holds `target`, checking the peer after every 100 ms asleep.
fn futex_wait_for(
    word: &AtomicU32,
    target: u32,
    alive: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let mut since = None;
    loop {
        let v = word.load(Acquire);
        if v == target {
            return Ok(());
        }
        if futex_wait(word, v, Duration::from_millis(100)) {
            alive()?;
            if since.get_or_insert_with(Instant::now).elapsed() > STALL {
                return Err(format!("no answer for {STALL:?}"));
            }
        }
    }
}

/// The peer's liveness check: whether our parent is still the one that started us.
fn parent_alive(parent: u32) -> impl FnMut() -> Result<(), String> {
    move || {
        // SAFETY: getppid has no arguments and cannot fail.
        if unsafe { libc::getppid() } as u32 == parent {
            Ok(())
        } else {
            Err("the bench process is gone".into())
        }
    }
}

fn atomic_latency(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let seg = Segment::create_private()?;
    let mut peer = PeerProc::spawn(ctx, job, &[seg.id.to_string()], &[])?;
    let word = seg.u64_at(ATOMIC_AT);
    let mut alive = || peer.check_alive();
    let mut latencies = Latencies::new();
    for i in 0..job.warmup + job.messages {
        let t0 = Instant::now();
        word.store(2 * i + 1, Release);
        spin_until(|| word.load(Acquire) == 2 * i + 2, &mut alive)?;
        let dt = t0.elapsed();
        if i >= job.warmup {
            latencies.record_round_trip(dt);
        }
    }
    peer.finish()?;
    Ok(Measured::Latency(latencies))
}

/// `raw-atomic-pair`: the ping in one word, the pong in another, each on its own cache-line pair
/// and written by one side only. Any two one-way channels (such as two SPSC rings) need at least
/// this: each hop is a store into a line the other side has cached (an invalidation) and that
/// side's miss on it, where `raw-atomic` moves one line back and forth.
fn atomic_pair_latency(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let seg = Segment::create_private()?;
    let mut peer = PeerProc::spawn(ctx, job, &[seg.id.to_string()], &[])?;
    let (ping, pong) = (seg.u64_at(PING_WORD_AT), seg.u64_at(PONG_WORD_AT));
    let mut alive = || peer.check_alive();
    let mut latencies = Latencies::new();
    for i in 0..job.warmup + job.messages {
        let t0 = Instant::now();
        ping.store(i + 1, Release);
        spin_until(|| pong.load(Acquire) == i + 1, &mut alive)?;
        let dt = t0.elapsed();
        if i >= job.warmup {
            latencies.record_round_trip(dt);
        }
    }
    peer.finish()?;
    Ok(Measured::Latency(latencies))
}

fn futex_latency(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let seg = Segment::create_private()?;
    let mut peer = PeerProc::spawn(ctx, job, &[seg.id.to_string()], &[])?;
    let (ping, pong) = (seg.u32_at(PING_FUTEX_AT), seg.u32_at(PONG_FUTEX_AT));
    let mut alive = || peer.check_alive();
    let mut latencies = Latencies::new();
    for i in 0..job.warmup + job.messages {
        // Wraps after 2^32 round trips, harmlessly: only equality with the last value counts.
        let seq = (i as u32).wrapping_add(1);
        let t0 = Instant::now();
        ping.store(seq, Release);
        futex_wake(ping);
        futex_wait_for(pong, seq, &mut alive)?;
        let dt = t0.elapsed();
        if i >= job.warmup {
            latencies.record_round_trip(dt);
        }
    }
    peer.finish()?;
    Ok(Measured::Latency(latencies))
}

// ---------------------------------------------------------------------------------------------
// Message queue
// ---------------------------------------------------------------------------------------------

/// A SysV message queue; the creator's guard removes it (once, whoever asks first).
struct MsgQueue {
    id: i32,
    /// The creator's entry in the interruption clean-up list; `None` in the peer.
    token: Option<Token>,
    removed: AtomicBool,
}

impl MsgQueue {
    fn create_private() -> Result<MsgQueue, String> {
        let mut reg = cleanup::lock();
        // SAFETY: msgget takes only scalar arguments.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        if id < 0 {
            return Err(os_err("msgget(IPC_PRIVATE)"));
        }
        Ok(MsgQueue {
            id,
            token: Some(reg.add(Resource::Queue(id))),
            removed: AtomicBool::new(false),
        })
    }

    fn open(id: i32) -> MsgQueue {
        MsgQueue {
            id,
            token: None,
            removed: AtomicBool::new(false),
        }
    }

    /// Removes the queue (the creator's only), at most once: ids are reused, so a second
    /// `IPC_RMID` could hit someone else's queue.
    fn remove(&self) {
        let Some(token) = self.token else { return };
        let mut reg = cleanup::lock();
        if !self.removed.swap(true, Release) {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::msgctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
            reg.forget(token);
        }
    }

    /// Blocking `msgsnd` of `buf`'s text as `mtype`.
    fn send(&self, buf: &mut MsgBuf, mtype: libc::c_long) -> Result<(), String> {
        buf.words[0] = mtype;
        loop {
            // SAFETY: `buf.words` starts with the mtype and holds at least `buf.size` bytes of
            // text after it (see MsgBuf::new); msgsnd only reads them.
            let r = unsafe { libc::msgsnd(self.id, buf.words.as_ptr().cast(), buf.size, 0) };
            if r == 0 {
                return Ok(());
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(os_err("msgsnd"));
            }
        }
    }

    /// Blocking `msgrcv` of the oldest message of `mtype` into `buf`; returns its length.
    fn recv(&self, buf: &mut MsgBuf, mtype: libc::c_long) -> Result<usize, String> {
        loop {
            // SAFETY: `buf.words` has room for the mtype and `buf.size` bytes of text; msgrcv
            // writes at most that (a longer message fails with E2BIG).
            let r = unsafe { libc::msgrcv(self.id, buf.words.as_mut_ptr().cast(), buf.size, mtype, 0) };
            if r >= 0 {
                return Ok(r as usize);
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EIDRM | libc::EINVAL) => {
                    return Err("msgrcv: the queue was removed (the peer died)".into())
                }
                _ => return Err(os_err("msgrcv")),
            }
        }
    }
}

impl Drop for MsgQueue {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A `struct msgbuf` with `size` bytes of text: a `c_long` mtype, then the text.
struct MsgBuf {
    words: Vec<libc::c_long>,
    size: usize,
}

impl MsgBuf {
    fn new(size: usize) -> MsgBuf {
        let word = std::mem::size_of::<libc::c_long>();
        MsgBuf {
            words: vec![0; 1 + size.div_ceil(word)],
            size,
        }
    }

    fn text(&self) -> &[u8] {
        // SAFETY: words[1..] are initialised and span at least `size` bytes; u8 has no
        // alignment or validity requirement; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().add(1).cast::<u8>(), self.size) }
    }

    fn text_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `text`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().add(1).cast::<u8>(), self.size) }
    }
}

/// Removes `queue` if process `pid` (our peer) terminates other than by exiting 0, waking
/// anything blocked on the queue with `EIDRM`. A detached thread that ends when the peer does
/// (and the peer always ends: we kill it on every path).
fn remove_if_peer_fails(pid: u32, queue: Arc<MsgQueue>) {
    std::thread::spawn(move || {
        // SAFETY: siginfo_t is a plain C struct; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `info` is a valid, writable siginfo_t. WNOWAIT leaves the child to be
            // reaped by PeerProc, as usual.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 {
                break;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return; // ECHILD: already reaped, by PeerProc, which is done waiting for it.
            }
        }
        // SAFETY: waitid succeeded for a child, so the union holds the SIGCHLD fields.
        let status = unsafe { info.si_status() };
        if !(info.si_code == libc::CLD_EXITED && status == 0) {
            queue.remove();
        }
    });
}

/// `kernel.msgmax`: the longest text one `msgsnd` may carry (the kernel's default, 8192, if it
/// cannot be read).
pub(super) fn msgmax() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/msgmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}

fn msgq_measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let queue = Arc::new(MsgQueue::create_private()?);
    let result = (|| -> Result<Measured, String> {
        let peer = PeerProc::spawn(ctx, job, &[queue.id.to_string()], &[])?;
        remove_if_peer_fails(peer.pid(), Arc::clone(&queue));
        let measured = match job.scenario {
            Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
                return Err(super::NOT_CROSSOVER.into())
            }
            Scenario::Throughput => {
                let mut buf = MsgBuf::new(job.size);
                let mut clock = StreamClock::new();
                for i in 0..job.messages {
                    let len = queue.recv(&mut buf, 1)?;
                    clock.mark(i, job.messages);
                    check(&buf.text()[..len], job.size, i)?;
                }
                Measured::Rate(clock.rate(job.messages)?)
            }
            Scenario::Latency => {
                let mut ping = MsgBuf::new(PING_SIZE);
                let mut pong = MsgBuf::new(PING_SIZE);
                let mut latencies = Latencies::new();
                for i in 0..job.warmup + job.messages {
                    stamp(ping.text_mut(), i);
                    let t0 = Instant::now();
                    queue.send(&mut ping, 1)?;
                    let len = queue.recv(&mut pong, 2)?;
                    let dt = t0.elapsed();
                    check(&pong.text()[..len], PING_SIZE, i)?;
                    if i >= job.warmup {
                        latencies.record_round_trip(dt);
                    }
                }
                Measured::Latency(latencies)
            }
        };
        peer.finish()?;
        Ok(measured)
    })();
    // Now, not when the watchdog's reference goes away.
    queue.remove();
    result
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

/// Receives `n` frames of `size` bytes; returns messages per second.
fn stream_receive(stream: impl Read, size: usize, n: u64) -> Result<f64, String> {
    let mut r = BufReader::with_capacity(1 << 16, stream);
    let mut len = [0u8; 4];
    let mut buf = vec![0u8; size];
    let mut clock = StreamClock::new();
    for i in 0..n {
        r.read_exact(&mut len)
            .and_then(|()| {
                let l = u32::from_le_bytes(len) as usize;
                if l != size {
                    return Err(io::Error::other(format!("a frame of {l} bytes, expected {size}")));
                }
                r.read_exact(&mut buf)
            })
            .map_err(|e| format!("reading message {i}: {e}"))?;
        clock.mark(i, n);
        check(&buf, size, i)?;
    }
    clock.rate(n)
}

/// Sends `n` frames of `size` bytes, one `write_all` each.
fn stream_send(mut w: impl Write, size: usize, n: u64) -> Result<(), String> {
    let mut frame = vec![0xa5u8; 4 + size];
    frame[..4].copy_from_slice(&(size as u32).to_le_bytes());
    for i in 0..n {
        stamp(&mut frame[4..], i);
        w.write_all(&frame)
            .map_err(|e| format!("writing message {i}: {e}"))?;
    }
    w.flush().map_err(|e| format!("flushing: {e}"))
}

fn ping_frame(seq: u64) -> [u8; 4 + PING_SIZE] {
    let mut f = [0u8; 4 + PING_SIZE];
    f[..4].copy_from_slice(&(PING_SIZE as u32).to_le_bytes());
    stamp(&mut f[4..], seq);
    f
}

/// `warmup` then `n` timed round trips of ping frames; returns the timed ones, halved.
fn stream_ping(r: impl Read, mut w: impl Write, warmup: u64, n: u64) -> Result<Latencies, String> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut latencies = Latencies::new();
    let mut answer = [0u8; 4 + PING_SIZE];
    for i in 0..warmup + n {
        let frame = ping_frame(i);
        let t0 = Instant::now();
        w.write_all(&frame)
            .and_then(|()| r.read_exact(&mut answer))
            .map_err(|e| format!("round trip {i}: {e}"))?;
        let dt = t0.elapsed();
        if answer != frame {
            return Err(format!("round trip {i}: a wrong answer"));
        }
        if i >= warmup {
            latencies.record_round_trip(dt);
        }
    }
    Ok(latencies)
}

/// The peer's side of `stream_ping`: echoes `n` frames.
fn stream_echo(r: impl Read, mut w: impl Write, n: u64) -> Result<(), String> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut frame = [0u8; 4 + PING_SIZE];
    for i in 0..n {
        r.read_exact(&mut frame)
            .and_then(|()| w.write_all(&frame))
            .map_err(|e| format!("round trip {i}: {e}"))?;
    }
    Ok(())
}

fn socket_measure<S>(job: &Job, stream: &S, peer: PeerProc) -> Result<Measured, String>
where
    for<'a> &'a S: Read + Write,
{
    let measured = match job.scenario {
        Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
            return Err(super::NOT_CROSSOVER.into())
        }
        Scenario::Throughput => Measured::Rate(stream_receive(stream, job.size, job.messages)?),
        Scenario::Latency => Measured::Latency(stream_ping(stream, stream, job.warmup, job.messages)?),
    };
    peer.finish()?;
    Ok(measured)
}

fn unix_measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let fd = theirs.as_raw_fd();
    let peer = PeerProc::spawn(ctx, job, &[fd.to_string()], &[fd])?;
    drop(theirs);
    ours.set_read_timeout(Some(STALL))
        .and_then(|()| ours.set_write_timeout(Some(STALL)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    socket_measure(job, &ours, peer)
}

/// Bytes a `raw-pipe` stream pipe is asked to hold (the default 64 KiB holds no 64 KiB frame):
/// the usual `fs.pipe-max-size`.
const PIPE_SIZE: libc::c_int = 1 << 20;

fn pipe_measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let (up_r, up_w) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let measured = match job.scenario {
        Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
            return Err(super::NOT_CROSSOVER.into())
        }
        Scenario::Throughput => {
            // Best effort: an unprivileged process may be refused more than fs.pipe-max-size.
            // SAFETY: F_SETPIPE_SZ takes an int and only resizes the pipe's buffer.
            unsafe { libc::fcntl(up_w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            let fd = up_w.as_raw_fd();
            let peer = PeerProc::spawn(ctx, job, &[fd.to_string()], &[fd])?;
            // Ours closed, so the peer's death is end of file.
            drop(up_w);
            let rate = stream_receive(&up_r, job.size, job.messages)?;
            (peer, Measured::Rate(rate))
        }
        Scenario::Latency => {
            let (down_r, down_w) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
            let fds = [down_r.as_raw_fd(), up_w.as_raw_fd()];
            let peer = PeerProc::spawn(ctx, job, &fds.map(|f| f.to_string()), &fds)?;
            drop((down_r, up_w));
            let latencies = stream_ping(&up_r, &down_w, job.warmup, job.messages)?;
            (peer, Measured::Latency(latencies))
        }
    };
    let (peer, measured) = measured;
    peer.finish()?;
    Ok(measured)
}

/// Takes ownership of descriptor `arg` (a decimal number), inherited from the bench process.
pub(super) fn inherited_fd(arg: &str) -> Result<OwnedFd, String> {
    let fd: i32 = arg.parse().map_err(|_| format!("bad --addr {arg:?}"))?;
    if fd < 0 {
        return Err(format!("bad --addr {arg:?}"));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed fd makes it fail.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(os_err(&format!("inherited descriptor {fd}")));
    }
    // SAFETY: `fd` is open (checked above): the parent's end, inherited across exec, and nothing
    // else in this process owns or closes it (each --addr is taken once).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn tcp_measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("tcp bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("tcp local address: {e}"))?
        .port();
    let mut peer = PeerProc::spawn(ctx, job, &[port.to_string()], &[])?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("tcp listener: {e}"))?;
    let deadline = Instant::now() + STALL;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                peer.check_alive()?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("tcp accept: {e}")),
        }
    };
    drop(listener);
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.set_read_timeout(Some(STALL)))
        .and_then(|()| stream.set_write_timeout(Some(STALL)))
        .map_err(|e| format!("tcp socket options: {e}"))?;
    socket_measure(job, &stream, peer)
}

fn socket_peer<S>(args: &PeerArgs, stream: &S) -> Result<(), String>
where
    for<'a> &'a S: Read + Write,
{
    match args.scenario {
        Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
            Err(super::NOT_CROSSOVER.into())
        }
        Scenario::Throughput => stream_send(stream, args.size, args.messages),
        Scenario::Latency => stream_echo(stream, stream, args.messages),
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

pub(super) fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    match job.transport {
        Transport::RawAtomic => atomic_latency(ctx, job),
        Transport::RawAtomicPair => atomic_pair_latency(ctx, job),
        Transport::RawFutex => futex_latency(ctx, job),
        Transport::RawMsgq => msgq_measure(ctx, job),
        Transport::RawUnix => unix_measure(ctx, job),
        Transport::RawPipe => pipe_measure(ctx, job),
        Transport::RawTcp => tcp_measure(ctx, job),
        t => unreachable!("{} is not a baseline", t.name()),
    }
}

fn one_addr<T: std::str::FromStr>(args: &PeerArgs) -> Result<T, String> {
    match &args.addr[..] {
        [a] => a.parse().map_err(|_| format!("bad --addr {a:?}")),
        _ => Err("expected one --addr".into()),
    }
}

/// The peer's side of a baseline.
pub(super) fn peer(args: &PeerArgs) -> Result<(), String> {
    let mut alive = parent_alive(args.parent);
    match args.transport {
        Transport::RawAtomic => {
            let seg = Segment::attach(one_addr(args)?)?;
            let word = seg.u64_at(ATOMIC_AT);
            for i in 0..args.messages {
                spin_until(|| word.load(Acquire) == 2 * i + 1, &mut alive)?;
                word.store(2 * i + 2, Release);
            }
            Ok(())
        }
        Transport::RawAtomicPair => {
            let seg = Segment::attach(one_addr(args)?)?;
            let (ping, pong) = (seg.u64_at(PING_WORD_AT), seg.u64_at(PONG_WORD_AT));
            for i in 0..args.messages {
                spin_until(|| ping.load(Acquire) == i + 1, &mut alive)?;
                pong.store(i + 1, Release);
            }
            Ok(())
        }
        Transport::RawFutex => {
            let seg = Segment::attach(one_addr(args)?)?;
            let (ping, pong) = (seg.u32_at(PING_FUTEX_AT), seg.u32_at(PONG_FUTEX_AT));
            for i in 0..args.messages {
                let seq = (i as u32).wrapping_add(1);
                futex_wait_for(ping, seq, &mut alive)?;
                pong.store(seq, Release);
                futex_wake(pong);
            }
            Ok(())
        }
        Transport::RawMsgq => {
            let queue = MsgQueue::open(one_addr(args)?);
            match args.scenario {
                Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
                    return Err(super::NOT_CROSSOVER.into())
                }
                Scenario::Throughput => {
                    let mut buf = MsgBuf::new(args.size);
                    buf.text_mut().fill(0xa5);
                    for i in 0..args.messages {
                        stamp(buf.text_mut(), i);
                        queue.send(&mut buf, 1)?;
                    }
                }
                Scenario::Latency => {
                    let mut buf = MsgBuf::new(PING_SIZE);
                    for _ in 0..args.messages {
                        let len = queue.recv(&mut buf, 1)?;
                        buf.size = len;
                        queue.send(&mut buf, 2)?;
                        buf.size = PING_SIZE;
                    }
                }
            }
            Ok(())
        }
        Transport::RawUnix => {
            let fd: i32 = one_addr(args)?;
            // SAFETY: F_GETFD only reads the descriptor's flags; a closed fd makes it fail.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                return Err(os_err(&format!("inherited socket {fd}")));
            }
            // SAFETY: `fd` is open (checked above): the parent's socketpair end, inherited
            // across exec, and nothing else in this process owns or closes it.
            let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
            socket_peer(args, &stream)
        }
        Transport::RawPipe => match (args.scenario, &args.addr[..]) {
            (Scenario::Throughput, [up]) => {
                stream_send(io::PipeWriter::from(inherited_fd(up)?), args.size, args.messages)
            }
            (Scenario::Latency, [down, up]) if down != up => {
                let r = io::PipeReader::from(inherited_fd(down)?);
                let w = io::PipeWriter::from(inherited_fd(up)?);
                stream_echo(r, w, args.messages)
            }
            _ => Err("expected one --addr (throughput) or two (latency)".into()),
        },
        Transport::RawTcp => {
            let port: u16 = one_addr(args)?;
            let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            socket_peer(args, &stream)
        }
        t => Err(format!("{} is not a baseline", t.name())),
    }
}
