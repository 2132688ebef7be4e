//! Helpers shared by the cross-process integration tests: unique ring names with an RAII guard
//! that removes the SysV segment, a child-process guard that kills and reaps, raw segment access
//! through libc (to plant foreign, hostile or corrupted segments), a deterministic message
//! pattern, and the child roles a test binary runs when it re-executes itself.
//!
//! Child protocol: a test spawns its own binary with `--exact child_entry` and the role in
//! `SHMPIPE_IT_ROLE`; the child prints protocol lines tagged with [`TAG`] on stdout (the test
//! harness prints its own text around them) and reads commands (`GO`) from stdin.
#![allow(dead_code)]

use shmpipe::transport::shm::{key_for_name, ShmConfig};
use shmpipe::{Receiver, RecvTimeoutError, Sender, WaitStrategy};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Env var selecting a child role.
pub const ROLE_ENV: &str = "SHMPIPE_IT_ROLE";
/// Env var with the child's ring name.
pub const RING_ENV: &str = "SHMPIPE_IT_RING";
/// Env var with the child's `key=value` arguments, space separated.
pub const ARGS_ENV: &str = "SHMPIPE_IT_ARGS";
/// Marks protocol lines on a child's stdout.
pub const TAG: &str = "@@shmpipe-it@@ ";

/// Upper bound for anything that "should happen soon" (a child starting, a line arriving).
pub const SOON: Duration = Duration::from_secs(30);
/// Upper bound for a peer's death or close to be noticed (the brief: ~1-2 s; generous slack).
pub const DEATH_BOUND: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Names and the segment guard
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A ring name unique to this process and call: `it-<tag>-<pid>-<n>`, at most 64 characters.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, SeqCst);
    let suffix = format!("-{}-{n}", std::process::id());
    let room = 64 - 3 - suffix.len();
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(room)
        .collect();
    format!("it-{tag}{suffix}")
}

/// The id of the segment at `key`, if there is one.
pub fn shmid_at(key: i32) -> Option<i32> {
    // SAFETY: shmget only reads its scalar arguments.
    let id = unsafe { libc::shmget(key, 0, 0) };
    (id >= 0).then_some(id)
}

/// `IPC_STAT` of a segment id.
pub fn stat_id(id: i32) -> Option<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data; all-zero is valid.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid out-pointer of the type IPC_STAT writes.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
    (r == 0).then_some(ds)
}

/// Removes whatever segment sits at `key` (repeatedly, in case something recreates it), with
/// the semaphore set its header names.
pub fn remove_key(key: i32) {
    for _ in 0..50 {
        let Some(id) = shmid_at(key) else { return };
        remove_sems_of(id);
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// Semaphores in the set of an SPSC / MPMC ring (the lock and one token per member record).
pub const SPSC_SEMS: usize = 3;
pub const MPMC_SEMS: usize = 65;
/// ... and of a broadcast ring: the lock, the publisher's token, one per subscriber record.
pub const BROADCAST_SEMS: usize = 66;

/// The number of semaphores in set `id` (`None`: no such set).
pub fn sem_count(id: i32) -> Option<usize> {
    // SAFETY: semid_ds is plain data; all-zero is valid.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one semid_ds through the pointer, which points to `ds`.
    let r = unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) };
    (r == 0).then_some(ds.sem_nsems as usize)
}

/// The semaphore set the header of segment `id` names, if it names one that exists with a
/// ring's size.
pub fn sems_of(id: i32) -> Option<i32> {
    let len = stat_id(id)?.shm_segsz;
    if len < off::TOKENS + 8 {
        return None;
    }
    // SAFETY: a null address lets the kernel choose; read-only.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if addr as isize == -1 {
        return None;
    }
    // SAFETY: the mapping is at least TOKENS + 8 bytes, 8-aligned there; read atomically.
    let raw = unsafe { (*addr.cast::<u8>().add(off::TOKENS).cast::<AtomicU64>()).load(SeqCst) };
    // SAFETY: detaches the mapping made above.
    unsafe { libc::shmdt(addr) };
    let set = i32::try_from(raw.checked_sub(1)?).ok()?;
    matches!(sem_count(set), Some(SPSC_SEMS | MPMC_SEMS | BROADCAST_SEMS)).then_some(set)
}

/// Removes the semaphore set the header of segment `id` names.
pub fn remove_sems_of(id: i32) {
    if let Some(set) = sems_of(id) {
        // SAFETY: IPC_RMID reads no argument beyond the scalars.
        unsafe { libc::semctl(set, 0, libc::IPC_RMID) };
    }
}

/// The semaphore set at `key`, if there is one (a message queue's liveness set lives at the
/// queue's key).
pub fn semid_at(key: i32) -> Option<i32> {
    // SAFETY: semget only reads its scalar arguments.
    let set = unsafe { libc::semget(key, 0, 0) };
    (set >= 0).then_some(set)
}

/// Removes the semaphore set at `key`, repeatedly, in case something recreates it.
pub fn remove_sem_key(key: i32) {
    for _ in 0..50 {
        let Some(set) = semid_at(key) else { return };
        // SAFETY: IPC_RMID reads no argument beyond the scalars.
        unsafe { libc::semctl(set, 0, libc::IPC_RMID) };
    }
}

/// Removes the message queue at `key` and then its liveness semaphore set (repeatedly, in case
/// something recreates them).
pub fn remove_queue_key(key: i32) {
    for _ in 0..50 {
        // SAFETY: msgget only reads its scalar arguments.
        let id = unsafe { libc::msgget(key, 0) };
        if id < 0 {
            break;
        }
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
    remove_sem_key(key);
}

/// The value of semaphore `num` of set `set`.
pub fn sem_value(set: i32, num: usize) -> Option<i32> {
    // SAFETY: GETVAL reads no argument beyond the scalars.
    let v = unsafe { libc::semctl(set, num as libc::c_int, libc::GETVAL) };
    (v >= 0).then_some(v)
}

/// A ring name and its key. On drop, whatever segment is at the key is removed, so nothing is
/// left behind even when a test fails. Declare it *before* the child guards of a test so the
/// children are killed first (locals drop in reverse order).
pub struct Ring {
    pub name: String,
    pub key: i32,
}

impl Ring {
    pub fn new(tag: &str) -> Ring {
        let name = unique_name(tag);
        let key = key_for_name(&name);
        assert!(
            shmid_at(key).is_none(),
            "a segment already exists at the key of fresh name {name}"
        );
        Ring { name, key }
    }

    pub fn endpoint(&self) -> String {
        format!("shm://{}", self.name)
    }

    /// A config for this ring with the given geometry.
    pub fn cfg(&self, capacity: usize, max_message: usize) -> ShmConfig {
        let mut c = ShmConfig::named(&self.name)
            .unwrap()
            .capacity(capacity)
            .max_message(max_message);
        c.open_timeout = Duration::from_secs(5);
        c
    }

    pub fn shmid(&self) -> Option<i32> {
        shmid_at(self.key)
    }

    pub fn exists(&self) -> bool {
        self.shmid().is_some()
    }

    /// `IPC_STAT` of the segment at the key.
    pub fn stat(&self) -> Option<libc::shmid_ds> {
        self.shmid().and_then(stat_id)
    }

    /// Waits (bounded) until a segment exists at the key.
    pub fn wait_exists(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.exists() {
            assert!(Instant::now() < deadline, "no segment appeared at {}", self.name);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Asserts no segment is at the key any more (what `ipcs -m` would show).
    pub fn assert_gone(&self, context: &str) {
        if let Some(id) = self.shmid() {
            let nattch = stat_id(id).map(|s| s.shm_nattch);
            panic!(
                "{context}: segment {id} still exists at key {:#x} ({}), nattch {nattch:?}",
                self.key, self.name
            );
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        remove_key(self.key);
    }
}

/// The id of the message queue at `key`, if there is one.
pub fn msqid_at(key: i32) -> Option<i32> {
    // SAFETY: msgget only reads its scalar arguments.
    let id = unsafe { libc::msgget(key, 0) };
    (id >= 0).then_some(id)
}

/// A message-queue name whose queue is removed (by key) on drop.
pub struct Queue {
    pub name: String,
    pub key: i32,
}

impl Queue {
    pub fn new(tag: &str) -> Queue {
        let name = unique_name(tag);
        let key = key_for_name(&name);
        assert!(msqid_at(key).is_none(), "a queue already exists at {name}");
        Queue { name, key }
    }

    pub fn endpoint(&self) -> String {
        format!("msgq://{}", self.name)
    }

    pub fn exists(&self) -> bool {
        msqid_at(self.key).is_some()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The queue, then the liveness semaphore set at the same key.
        remove_queue_key(self.key);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw segments
// ---------------------------------------------------------------------------------------------

/// Header field offsets (src/ring/layout.rs, `#[repr(C)] struct Header`).
pub mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const KIND: usize = 12;
    pub const CAPACITY: usize = 16;
    pub const MAX_MESSAGE: usize = 24;
    pub const STRIDE: usize = 32;
    pub const SEGMENT_SIZE: usize = 40;
    pub const CREATOR_UID: usize = 48;
    pub const CREATOR_PID: usize = 52;
    pub const FLAGS: usize = 56;
    pub const NAME_LEN: usize = 60;
    pub const NAME: usize = 64;
    /// 1 + the id of the ring's semaphore set (layout version 3).
    pub const TOKENS: usize = 128;
    /// Control block (`SpscShared`), one 128-byte line per field. Since layout version 4 `TAIL`
    /// and `HEAD` are byte positions in the record memory, each followed by its message count.
    pub const TAIL: usize = 256;
    pub const SENT: usize = TAIL + 8;
    pub const HEAD: usize = 256 + 128;
    pub const RECEIVED: usize = HEAD + 8;
    /// The doorbells (layout version 3): the futex word (u32), 4 bytes of padding, and the mask
    /// of waiters (u64; SPSC: bit 0 the sender, bit 1 the receiver; since version 5, bit 63 of
    /// `NOT_EMPTY_WAITERS` marks a closed receiver).
    pub const NOT_EMPTY: usize = 256 + 2 * 128;
    pub const NOT_EMPTY_WAITERS: usize = NOT_EMPTY + 8;
    pub const NOT_FULL: usize = 256 + 3 * 128;
    pub const NOT_FULL_WAITERS: usize = NOT_FULL + 8;
    pub const LOCK: usize = 256 + 4 * 128;
    pub const SENDER_STATE: usize = 256 + 5 * 128;
    pub const SENDER_PID: usize = SENDER_STATE + 4;
    pub const RECEIVER_STATE: usize = 256 + 6 * 128;
    pub const RECEIVER_PID: usize = RECEIVER_STATE + 4;
    /// Slow-path counters line (since layout version 2): full waits, empty waits, parks, wakes.
    pub const FULL_WAITS: usize = 256 + 7 * 128;
    pub const EMPTY_WAITS: usize = FULL_WAITS + 8;
    pub const PARKS: usize = FULL_WAITS + 16;
    pub const WAKES: usize = FULL_WAITS + 24;
    /// Where the record memory starts (README: "offset 1280 records").
    pub const SLOTS: usize = 1280;
}

/// Broadcast control block offsets (src/ring/broadcast.rs, `#[repr(C)] struct
/// BroadcastShared`, each group a 128-byte `CachePadded` line from `off::TAIL`), checked against
/// a live ring by `tests/broadcast.rs`.
pub mod bc {
    /// Messages published (u64).
    pub const TAIL: usize = 256;
    /// `BroadcastRoster` (the sixth line): policy (u32: 1 block, 2 overwrite), live subscribers,
    /// joined, died (u32 each), the occupied mask and the missed total (u64 each).
    pub const POLICY: usize = 256 + 5 * 128;
    pub const SUBSCRIBERS: usize = POLICY + 4;
    pub const JOINED: usize = POLICY + 8;
    pub const DIED: usize = POLICY + 12;
    pub const MISSED: usize = POLICY + 24;
    /// Subscriber record `i` (a `Sub`, one line each): state (u32: 0 vacant, 1 tethered,
    /// 2 untethered), pid (u32), start time, cursor, missed (u64 each).
    pub const SUBS: usize = 256 + 7 * 128;
    pub const SUB_LINE: usize = 128;
    pub const SUB_CURSOR: usize = 16;
    /// Where the slots start (`layout::BROADCAST_SLOTS_OFFSET`: 64 subscriber lines after the
    /// seven of the control block).
    pub const SLOTS: usize = 256 + (7 + 64) * 128;
    /// In a slot: the length (u32) at 0, the sequence word (u64) at 8, the payload at 16.
    pub const SLOT_SEQ: usize = 8;

    /// Bytes from one slot to the next for `max_message`: header and payload, rounded up to 64.
    pub fn stride(max_message: usize) -> usize {
        (16 + max_message).next_multiple_of(64)
    }

    /// The sequence word of slot `slot`.
    pub fn seq(slot: usize, max_message: usize) -> usize {
        SLOTS + slot * stride(max_message) + SLOT_SEQ
    }

    /// The cursor of subscriber record `index`.
    pub fn cursor(index: usize) -> usize {
        SUBS + index * SUB_LINE + SUB_CURSOR
    }
}

/// The layout version these offsets describe.
pub const LAYOUT_VERSION: u32 = 5;

/// `b"shmpipe\0"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"shmpipe\0");

/// The SPSC header's stride for `max_message`: the record of a message of that size, an 8-byte
/// header word + payload, rounded up to 8.
pub fn stride(max_message: usize) -> usize {
    (8 + max_message).next_multiple_of(8)
}

/// Bytes an SPSC record of a `len`-byte message takes.
pub fn record(len: usize) -> usize {
    stride(len)
}

/// Segment size of an SPSC ring with this geometry: `capacity + 1` records of `max_message`.
pub fn ring_size(capacity: usize, max_message: usize) -> usize {
    off::SLOTS + (capacity + 1) * stride(max_message)
}

/// The header word of an SPSC record at byte position `pos` holding `len` bytes: the position's
/// stamp (`pos >> 3`, 32 bits) over `len + 1`.
pub fn record_word(pos: u64, len: usize) -> u64 {
    ((pos >> 3) as u32 as u64) << 32 | (len as u64 + 1)
}

/// A segment attached through libc, independently of shmpipe, detached on drop.
pub struct RawSeg {
    pub id: i32,
    addr: *mut u8,
    pub len: usize,
}

impl RawSeg {
    /// Creates a new segment at `key` (`IPC_CREAT | IPC_EXCL`) and attaches it.
    pub fn create(key: i32, size: usize, mode: u32) -> RawSeg {
        // SAFETY: scalar arguments only.
        let id = unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode as libc::c_int) };
        assert!(
            id >= 0,
            "shmget(create {key:#x}): {}",
            std::io::Error::last_os_error()
        );
        RawSeg::attach_id(id)
    }

    /// Attaches the segment at `key`.
    pub fn attach_key(key: i32) -> RawSeg {
        let id = shmid_at(key).unwrap_or_else(|| panic!("no segment at key {key:#x}"));
        RawSeg::attach_id(id)
    }

    pub fn attach_id(id: i32) -> RawSeg {
        let len = stat_id(id).expect("IPC_STAT").shm_segsz;
        // SAFETY: a null address lets the kernel choose; flags 0 is read-write.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        assert!(
            addr as isize != -1,
            "shmat({id}): {}",
            std::io::Error::last_os_error()
        );
        RawSeg {
            id,
            addr: addr.cast(),
            len,
        }
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + std::mem::size_of::<T>() <= self.len && offset.is_multiple_of(std::mem::align_of::<T>())
        );
        // SAFETY: in bounds (checked above) of a live mapping.
        unsafe { self.addr.add(offset).cast() }
    }

    pub fn u64(&self, offset: usize) -> u64 {
        // SAFETY: aligned and in bounds (`at`); other processes access it atomically.
        unsafe { (*self.at::<AtomicU64>(offset)).load(SeqCst) }
    }

    pub fn set_u64(&self, offset: usize, v: u64) {
        // SAFETY: as in `u64`.
        unsafe { (*self.at::<AtomicU64>(offset)).store(v, SeqCst) }
    }

    pub fn u32(&self, offset: usize) -> u32 {
        // SAFETY: as in `u64`.
        unsafe { (*self.at::<AtomicU32>(offset)).load(SeqCst) }
    }

    pub fn set_u32(&self, offset: usize, v: u32) {
        // SAFETY: as in `u64`.
        unsafe { (*self.at::<AtomicU32>(offset)).store(v, SeqCst) }
    }

    /// Fills `[offset, offset + bytes.len())` with `bytes`.
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: in bounds of a live mapping; test-only writes racing nothing that matters.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.addr.add(offset), bytes.len()) };
    }

    /// Reads `[offset, offset + len)`.
    pub fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of a live mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.addr.add(offset), v.as_mut_ptr(), len) };
        v
    }

    /// Writes a header a shmpipe ring of this geometry and name would have.
    pub fn write_valid_header(&self, name: &str, capacity: usize, max_message: usize) {
        self.set_u32(off::VERSION, LAYOUT_VERSION);
        self.set_u32(off::KIND, 1);
        self.set_u64(off::CAPACITY, capacity as u64);
        self.set_u64(off::MAX_MESSAGE, max_message as u64);
        self.set_u64(off::STRIDE, stride(max_message) as u64);
        self.set_u64(off::SEGMENT_SIZE, ring_size(capacity, max_message) as u64);
        // SAFETY: no preconditions.
        self.set_u32(off::CREATOR_UID, unsafe { libc::geteuid() });
        self.set_u32(off::CREATOR_PID, std::process::id());
        self.write_bytes(off::NAME, name.as_bytes());
        self.set_u32(off::NAME_LEN, name.len() as u32);
        if self.u64(off::TOKENS) == 0 {
            // The ring's semaphore set (its lock and liveness tokens, all free), removed with the
            // segment by `remove_key`.
            // SAFETY: semget only reads its scalar arguments.
            let set = unsafe { libc::semget(libc::IPC_PRIVATE, SPSC_SEMS as libc::c_int, 0o600) };
            assert!(set >= 0, "semget: {}", std::io::Error::last_os_error());
            self.set_u64(off::TOKENS, set as u64 + 1);
        }
        self.set_u64(off::MAGIC, MAGIC);
    }

    /// `IPC_STAT`.
    pub fn stat(&self) -> libc::shmid_ds {
        stat_id(self.id).expect("IPC_STAT of an attached segment")
    }
}

impl Drop for RawSeg {
    fn drop(&mut self) {
        // SAFETY: `addr` came from a successful shmat and is detached once, here.
        unsafe { libc::shmdt(self.addr.cast()) };
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// What to do with a child's stdout.
pub enum Stdout {
    /// Our own test binary: forward only tagged protocol lines (tag stripped).
    Protocol,
    /// Forward every line (e.g. `shmpipe recv` output, to follow its progress).
    Lines,
    /// Collect every byte; get them with [`Proc::wait_output`].
    Collect,
    /// Pipe it and never read it (so the child blocks once the pipe is full).
    Unread,
    /// Discard.
    Null,
}

/// A child process, killed (SIGKILL) and reaped on drop if still running.
pub struct Proc {
    child: Child,
    pub pid: i32,
    what: String,
    stdin: Option<ChildStdin>,
    lines: Option<mpsc::Receiver<String>>,
    collected: Option<JoinHandle<Vec<u8>>>,
    /// Held, never read: keeps the child's stdout pipe open until we drop.
    unread: Option<ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// The arguments and environment that make this test binary run `child_entry` in `role` on
/// ring `ring` with `args` (`k=v`), added to `cmd` (which runs the binary, or a wrapper of it).
pub fn child_command(cmd: &mut Command, role: &str, ring: &str, args: &[(&str, String)]) {
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_ENV, role)
        .env(RING_ENV, ring)
        .env(
            ARGS_ENV,
            args.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .env("RUST_BACKTRACE", "1");
}

impl Proc {
    /// Spawns `cmd` with piped stdin and stderr, stdout handled per `out`. The child gets
    /// `PR_SET_PDEATHSIG(SIGKILL)` so it cannot outlive a test process that dies abruptly.
    pub fn spawn(mut cmd: Command, out: Stdout) -> Proc {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdout(match out {
            Stdout::Null => Stdio::null(),
            _ => Stdio::piped(),
        });
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let pid = child.id() as i32;
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = {
            let mut pipe = child.stderr.take().unwrap();
            let buf = Arc::clone(&stderr);
            Some(std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }))
        };
        let (mut lines, mut collected, mut unread) = (None, None, None);
        match out {
            Stdout::Protocol | Stdout::Lines => {
                let protocol = matches!(out, Stdout::Protocol);
                let pipe = child.stdout.take().unwrap();
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        let forward = if protocol {
                            line.find(TAG).map(|i| line[i + TAG.len()..].to_string())
                        } else {
                            Some(line)
                        };
                        if let Some(l) = forward {
                            if tx.send(l).is_err() {
                                break;
                            }
                        }
                    }
                });
                lines = Some(rx);
            }
            Stdout::Collect => {
                let mut pipe = child.stdout.take().unwrap();
                collected = Some(std::thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = pipe.read_to_end(&mut v);
                    v
                }));
            }
            Stdout::Unread => unread = child.stdout.take(),
            Stdout::Null => {}
        }
        Proc {
            child,
            pid,
            what,
            stdin,
            lines,
            collected,
            unread,
            stderr,
            stderr_thread,
            status: None,
        }
    }

    /// Re-runs this test binary as a child in `role` on ring `ring`, with `args` (`k=v`).
    pub fn child(role: &str, ring: &str, args: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        child_command(&mut cmd, role, ring, args);
        Proc::spawn(cmd, Stdout::Protocol)
    }

    /// As [`child`](Self::child), but in a PID namespace of its own, as in a container that
    /// shares our IPC namespace but not our PID namespace (`unshare --pid --fork --mount-proc`:
    /// the child is pid 1 there, its `/proc` shows only its namespace, and our pids mean nothing
    /// to it, nor its to us). `--kill-child`: SIGKILL of the returned process (`unshare`) kills
    /// the child with it. Needs root (see [`can_unshare`]).
    pub fn child_in_pid_namespace(role: &str, ring: &str, args: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(std::env::current_exe().unwrap());
        child_command(&mut cmd, role, ring, args);
        Proc::spawn(cmd, Stdout::Protocol)
    }

    /// The `shmpipe` CLI binary with `args`. Only the CLI crate's tests (`cli/tests/`, which
    /// share this module) have the binary: the library's own tests never run it.
    pub fn cli(args: &[&str], out: Stdout) -> Proc {
        let Some(exe) = option_env!("CARGO_BIN_EXE_shmpipe") else {
            panic!("the shmpipe binary is built for the tests of cli/ (shmpipe-cli) only")
        };
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Proc::spawn(cmd, out)
    }

    /// What the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The next stdout line (protocol or plain), waiting at most `timeout`; panics (with the
    /// child's stderr) on timeout or end of output.
    pub fn line(&mut self, timeout: Duration) -> String {
        let rx = self.lines.as_ref().expect("stdout not in line mode");
        match rx.recv_timeout(timeout) {
            Ok(l) => l,
            Err(e) => {
                // Give a dying child's stderr a moment to arrive.
                std::thread::sleep(Duration::from_millis(50));
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "{}: no line within {timeout:?} ({e:?}); status {status:?}; stderr:\n{}",
                    self.what,
                    self.stderr_text()
                )
            }
        }
    }

    /// The next stdout line if one arrives within `timeout`, else `None` (for checking that a
    /// child has *not* said anything yet).
    pub fn try_line(&mut self, timeout: Duration) -> Option<String> {
        let rx = self.lines.as_ref().expect("stdout not in line mode");
        rx.recv_timeout(timeout).ok()
    }

    /// The next protocol line, which must start with `word`; returns the words after it.
    pub fn expect(&mut self, word: &str) -> Vec<String> {
        let line = self.line(SOON);
        let mut parts = line.split_whitespace().map(str::to_string);
        let first = parts.next().unwrap_or_default();
        assert_eq!(
            first,
            word,
            "child said {line:?}; stderr:\n{}",
            self.stderr_text()
        );
        parts.collect()
    }

    /// Writes a line to the child's stdin.
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin closed");
        writeln!(stdin, "{line}").expect("writing to child stdin");
        stdin.flush().unwrap();
    }

    /// Takes the child's stdin (e.g. to feed it from a thread).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin already taken")
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// SIGKILL without reaping (the zombie must already count as dead).
    pub fn kill(&self) {
        // SAFETY: plain syscall on our own, not yet reaped, child.
        let r = unsafe { libc::kill(self.pid, libc::SIGKILL) };
        assert_eq!(r, 0, "kill({}): {}", self.pid, std::io::Error::last_os_error());
    }

    /// Waits at most `timeout` for the child to exit; panics (after killing it) otherwise.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                if let Some(t) = self.stderr_thread.take() {
                    let _ = t.join();
                }
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for exit and returns the status and the collected stdout.
    pub fn wait_output(&mut self, timeout: Duration) -> (ExitStatus, Vec<u8>) {
        let status = self.wait(timeout);
        let out = self
            .collected
            .take()
            .expect("stdout not collected")
            .join()
            .unwrap();
        (status, out)
    }

    /// Waits for a successful exit.
    pub fn wait_success(&mut self, timeout: Duration) {
        let s = self.wait(timeout);
        assert!(
            s.success(),
            "{} failed with {s}; stderr:\n{}",
            self.what,
            self.stderr_text()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `f` on a thread after `delay`, for killing or corrupting while the test thread blocks.
/// Returns the instant just *before* `f` ran: whatever `f` causes happens after it.
pub fn after<F: FnOnce() + Send + 'static>(delay: Duration, f: F) -> JoinHandle<Instant> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let at = Instant::now();
        f();
        at
    })
}

// ---------------------------------------------------------------------------------------------
// The message pattern
// ---------------------------------------------------------------------------------------------

const TABLE_LEN: usize = 1 << 16;

fn table() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..TABLE_LEN * 2)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Length of message `seq` in a stream whose maximum is `max`: spread over `0..=max`.
pub fn pattern_len(seq: u64, max: usize) -> usize {
    match seq % 7 {
        0 => 0,
        1 => max,
        _ => (seq.wrapping_mul(0x9e37_79b9) >> 11) as usize % (max + 1),
    }
}

/// Message `seq`: its first bytes are `seq` (little endian, truncated to the length), the rest
/// windows of a pseudo-random table chosen by `seq`.
pub fn pattern(seq: u64, max: usize, buf: &mut Vec<u8>) {
    let len = pattern_len(seq, max);
    let mut pos = (seq.wrapping_mul(2_654_435_761) % TABLE_LEN as u64) as usize;
    buf.clear();
    // Windows of the table (it is twice TABLE_LEN long), so large messages stay cheap to build.
    while buf.len() < len {
        let take = (len - buf.len()).min(TABLE_LEN);
        buf.extend_from_slice(&table()[pos..pos + take]);
        pos = (pos + 4099) % TABLE_LEN;
    }
    let n = len.min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// Checks that `msg` is message `seq`.
pub fn check_pattern(seq: u64, max: usize, msg: &[u8], expected: &mut Vec<u8>) {
    pattern(seq, max, expected);
    if msg != &expected[..] {
        panic!(
            "message {seq} differs: got {} bytes starting {:02x?}, expected {} bytes starting {:02x?}",
            msg.len(),
            &msg[..msg.len().min(16)],
            expected.len(),
            &expected[..expected.len().min(16)]
        );
    }
}

/// A running checksum over message lengths and contents (FNV-style over 8-byte words).
pub fn checksum(sum: u64, msg: &[u8]) -> u64 {
    let mut h = (sum ^ msg.len() as u64).wrapping_mul(0x0100_0000_01b3);
    for chunk in msg.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The checksum of pattern messages `0..n`.
pub fn pattern_checksum(n: u64, max: usize) -> u64 {
    let mut buf = Vec::new();
    (0..n).fold(0, |sum, seq| {
        pattern(seq, max, &mut buf);
        checksum(sum, &buf)
    })
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// Prints a protocol line for the parent.
pub fn tell(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{TAG}{line}").unwrap();
    out.flush().unwrap();
}

/// Reads one command line from stdin; exits if the parent closed it (the parent is gone).
fn read_command() -> String {
    let mut line = String::new();
    let n = std::io::stdin().read_line(&mut line).unwrap_or(0);
    if n == 0 {
        std::process::exit(98);
    }
    line.trim().to_string()
}

/// Reads one command from stdin, which must be `cmd`.
fn wait_for(cmd: &str) {
    assert_eq!(read_command(), cmd, "unexpected command");
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Busy-waits until `CLOCK_MONOTONIC` reaches `ns` (for starting two processes together).
pub fn spin_until_ns(ns: u64) {
    while monotonic_ns() < ns {
        std::hint::spin_loop();
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The `key=value` arguments a test passes to its child in [`ARGS_ENV`].
pub struct Args(Vec<(String, String)>);

impl Args {
    pub fn from_env() -> Args {
        let s = std::env::var(ARGS_ENV).unwrap_or_default();
        Args(
            s.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
    pub fn num(&self, k: &str, default: u64) -> u64 {
        self.get(k).map_or(default, |v| v.parse().unwrap())
    }
    pub fn opt(&self, k: &str) -> Option<u64> {
        self.get(k).map(|v| v.parse().unwrap())
    }
    pub fn flag(&self, k: &str) -> bool {
        self.get(k) == Some("1")
    }
}

fn child_cfg(ring: &str, a: &Args) -> ShmConfig {
    let mut cfg = ShmConfig::named(ring)
        .unwrap()
        .capacity(a.num("cap", 1024) as usize)
        .max_message(a.num("max", 1024) as usize);
    if a.get("wait") == Some("park") {
        cfg.wait = WaitStrategy::park_only();
    }
    cfg
}

/// Entry point of a child: runs the role named in [`ROLE_ENV`], or returns at once when run as
/// an ordinary test.
pub fn child_main() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    child_watchdog(Duration::from_secs(120));
    let ring = std::env::var(RING_ENV).expect("ring name");
    let a = Args::from_env();
    match role.as_str() {
        "sender" => role_sender(&ring, &a),
        "receiver" => role_receiver(&ring, &a),
        "dump" => role_dump(&ring, &a),
        "hold" => role_hold(&ring, &a),
        "raw_create" => role_raw_create(&ring, &a),
        "open_on_go" => role_open_on_go(&ring, &a),
        other => panic!("unknown child role {other}"),
    }
}

/// Opens the sender, says `READY`, optionally waits for `GO`, sends `n` pattern messages (max
/// `max`), says `SENT n checksum`, then holds the sender (`hold=1`, until killed) or drops it
/// and says `DONE`. `text=1` sends `line-<seq>` instead. With `until_err=1` it keeps sending (bounded) until an error, says
/// `ERR <debug> <receiver peer>`.
fn role_sender(ring: &str, a: &Args) {
    let max = a.num("max", 1024) as usize;
    let mut tx = child_cfg(ring, a).open_sender().expect("child open_sender");
    tell("READY");
    if a.flag("go") {
        wait_for("GO");
    }
    let n = a.num("n", 0);
    let text = a.flag("text");
    let mut buf = Vec::new();
    let mut sum = 0u64;
    for seq in 0..n {
        if text {
            buf.clear();
            buf.extend_from_slice(format!("line-{seq}").as_bytes());
        } else {
            pattern(seq, max, &mut buf);
        }
        sum = checksum(sum, &buf);
        if let Err(e) = tx.send_timeout(&buf, Duration::from_secs(60)) {
            tell(&format!("ERR {e:?} {:?} {seq}", tx.receiver()));
            return;
        }
    }
    tell(&format!("SENT {n} {sum}"));
    if a.flag("until_err") {
        for seq in n.. {
            pattern(seq, max, &mut buf);
            if let Err(e) = tx.send_timeout(&buf, Duration::from_secs(60)) {
                tell(&format!("ERR {e:?} {:?} {seq}", tx.receiver()));
                return;
            }
        }
    }
    if a.flag("hold") {
        sleep_forever();
    }
    drop(tx);
    tell("DONE");
}

/// Opens the receiver, says `READY`, optionally waits for `GO`, then receives and checks pattern
/// messages (max `max`) until `Disconnected` (or `n` messages), saying
/// `GOT count checksum <sender peer> <end>`. `stall_after=K`: after K messages say `STALLED`
/// and stop reading (hold the receiver until killed). `close_after=K`: after K messages say
/// `PAUSED`, wait for `GO`, then drop the receiver and say `CLOSED K`.
fn role_receiver(ring: &str, a: &Args) {
    let max = a.num("max", 1024) as usize;
    let mut rx = child_cfg(ring, a).open_receiver().expect("child open_receiver");
    tell("READY");
    if a.flag("go") {
        wait_for("GO");
    }
    let limit = a.num("n", u64::MAX);
    let stall = a.get("stall_after").map(|v| v.parse::<u64>().unwrap());
    let close = a.get("close_after").map(|v| v.parse::<u64>().unwrap());
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    let mut sum = 0u64;
    let mut count = 0u64;
    let end = loop {
        if stall == Some(count) {
            tell("STALLED");
            sleep_forever();
        }
        if close == Some(count) {
            tell("PAUSED");
            wait_for("GO");
            drop(rx);
            tell(&format!("CLOSED {count}"));
            return;
        }
        if count == limit {
            break "Limit".to_string();
        }
        match rx.recv_timeout(&mut buf, Duration::from_secs(60)) {
            Ok(()) => {
                check_pattern(count, max, &buf, &mut expected);
                sum = checksum(sum, &buf);
                count += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break "Disconnected".to_string(),
            Err(e) => break format!("{e:?}"),
        }
    };
    tell(&format!("GOT {count} {sum} {:?} {end}", rx.sender()));
}

/// Opens the receiver, says `READY`, prints every message as `MSG <hex>` (`MSG -` when empty)
/// until the stream ends, then `END <error> <sender peer>`.
fn role_dump(ring: &str, a: &Args) {
    let mut rx = child_cfg(ring, a).open_receiver().expect("child open_receiver");
    tell("READY");
    let mut buf = Vec::new();
    loop {
        match rx.recv_timeout(&mut buf, Duration::from_secs(60)) {
            Ok(()) => {
                let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
                tell(&format!("MSG {}", if hex.is_empty() { "-" } else { &hex }));
            }
            Err(e) => {
                tell(&format!("END {e:?} {:?}", rx.sender()));
                return;
            }
        }
    }
}

/// Opens `side` (sender or receiver), says `READY`, holds it until killed (or, with `go=1`,
/// until `GO`, then drops it and says `DONE`).
fn role_hold(ring: &str, a: &Args) {
    let cfg = child_cfg(ring, a);
    let end: Box<dyn std::any::Any> = match a.get("side") {
        Some("receiver") => Box::new(cfg.open_receiver().expect("child open_receiver")),
        _ => Box::new(cfg.open_sender().expect("child open_sender")),
    };
    tell("READY");
    if a.flag("go") {
        wait_for("GO");
        drop(end);
        tell("DONE");
        return;
    }
    sleep_forever();
}

/// Says `READY`, waits for `GO <ns>` and then for `CLOCK_MONOTONIC` to reach `ns`, then opens
/// `side` (sender or receiver) and says `OPENED Ok` or
/// `OPENED <error>`. A sender then sends `hello` and says `SENT <result>`; a receiver waits (1 s)
/// for one message and says `GOT <result> <message> <sender peer>`.
fn role_open_on_go(ring: &str, a: &Args) {
    let cfg = child_cfg(ring, a);
    tell("READY");
    let cmd = read_command();
    let at = cmd.strip_prefix("GO ").expect("GO <ns>").parse().unwrap();
    spin_until_ns(at);
    if a.get("side") == Some("receiver") {
        match cfg.open_receiver() {
            Ok(mut rx) => {
                tell("OPENED Ok");
                let mut buf = Vec::new();
                let r = rx.recv_timeout(&mut buf, Duration::from_secs(1));
                tell(&format!(
                    "GOT {r:?} {} {:?}",
                    String::from_utf8_lossy(&buf),
                    rx.sender()
                ));
            }
            Err(e) => tell(&format!("OPENED {e:?}")),
        }
        return;
    }
    match cfg.open_sender() {
        Ok(mut tx) => {
            tell("OPENED Ok");
            let r = tx.send_timeout(b"hello", Duration::from_secs(1));
            tell(&format!("SENT {r:?}"));
        }
        Err(e) => tell(&format!("OPENED {e:?}")),
    }
}

/// Does what shmpipe's creator does first, `shmget(IPC_CREAT | IPC_EXCL)` of a ring-sized
/// segment at the ring's key, and stops there (as if preempted before `shmat`): says
/// `READY <shmid>`, waits for `GO`, then attaches and says `ATTACH ok` or `ATTACH err <errno>`.
fn role_raw_create(ring: &str, a: &Args) {
    let size = ring_size(a.num("cap", 4) as usize, a.num("max", 64) as usize);
    let key = key_for_name(ring);
    // SAFETY: scalar arguments only.
    let id = unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
    tell(&format!("READY {id}"));
    wait_for("GO");
    // SAFETY: null address, read-write.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if addr as isize == -1 {
        tell(&format!("ATTACH err {}", std::io::Error::last_os_error()));
    } else {
        // SAFETY: detaching the mapping we just made.
        unsafe { libc::shmdt(addr) };
        tell("ATTACH ok");
    }
}

/// Receives with a bound, panicking on anything but a message.
pub fn recv_ok(rx: &mut impl Receiver, buf: &mut Vec<u8>) {
    rx.recv_timeout(buf, SOON).expect("recv_timeout");
}

/// Sends with a bound, panicking on failure.
pub fn send_ok(tx: &mut impl Sender, msg: &[u8]) {
    tx.send_timeout(msg, SOON).expect("send_timeout");
}

/// Takes semaphore 0 (a ring's lock) of `set` the way shmpipe does (wait for zero, then +1 with
/// `SEM_UNDO`, in one `semop`), without blocking. False if it is held.
pub fn take_sem_lock(set: i32) -> bool {
    let mut ops = [
        libc::sembuf {
            sem_num: 0,
            sem_op: 0,
            sem_flg: libc::IPC_NOWAIT as libc::c_short,
        },
        libc::sembuf {
            sem_num: 0,
            sem_op: 1,
            sem_flg: libc::SEM_UNDO as libc::c_short,
        },
    ];
    // SAFETY: `ops` holds two valid sembufs and semop reads exactly two.
    unsafe { libc::semop(set, ops.as_mut_ptr(), 2) == 0 }
}

/// Releases a lock taken with [`take_sem_lock`].
pub fn release_sem_lock(set: i32) {
    let mut op = libc::sembuf {
        sem_num: 0,
        sem_op: -1,
        sem_flg: (libc::SEM_UNDO | libc::IPC_NOWAIT) as libc::c_short,
    };
    // SAFETY: one valid sembuf.
    unsafe { libc::semop(set, &mut op, 1) };
}

/// A forked child that takes a ring's lock (semaphore 0 of `set`) and sleeps until killed, which
/// [`kill`](Self::kill) does with SIGKILL (also on drop).
pub struct LockHolder {
    pub pid: libc::pid_t,
}

impl LockHolder {
    pub fn start(set: i32) -> LockHolder {
        // SAFETY: the child makes only async-signal-safe calls (semop, pause, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            if take_sem_lock(set) {
                loop {
                    // SAFETY: waits for a signal; SIGKILL ends us.
                    unsafe { libc::pause() };
                }
            }
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(1) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sem_value(set, 0) != Some(1) {
            assert!(Instant::now() < deadline, "the child never took the lock");
            std::thread::sleep(Duration::from_millis(1));
        }
        LockHolder { pid }
    }

    pub fn kill(&mut self) {
        if self.pid > 0 {
            // SAFETY: our own unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            self.pid = 0;
        }
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this process may make PID namespaces (`unshare --pid`: root, as in CI). Tests that
/// need it say so and skip otherwise; under `SHMPIPE_REQUIRE_UNSHARE=1` (set by CI) they fail.
pub fn can_unshare() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("SHMPIPE_REQUIRE_UNSHARE").is_none(),
            "SHMPIPE_REQUIRE_UNSHARE is set but `unshare --pid --fork --mount-proc` fails here"
        );
        eprintln!("skipped: needs `unshare --pid --fork --mount-proc` (root)");
    }
    ok
}

/// How many of the messages `pattern(0..)` (of up to `max` bytes) an SPSC ring made with
/// `capacity` and `max` accepts in all while its receiver has taken the first `consumed` of them
/// and stopped: the dense layout (each record 8 bytes + the length rounded up to 8, a pad before
/// a record that does not fit before the end, one header word kept free), simulated.
pub fn spsc_accepts(capacity: usize, max: usize, consumed: u64) -> u64 {
    let size = ((capacity + 1) * record(max)) as u64;
    let (mut tail, mut head) = (0u64, 0u64);
    for seq in 0.. {
        if seq == consumed {
            head = tail;
        }
        let rec = record(pattern_len(seq, max)) as u64;
        let off = tail % size;
        let pad = if off + rec > size { size - off } else { 0 };
        if seq >= consumed && tail + pad + rec + 8 - head > size {
            return seq;
        }
        tail += pad + rec;
    }
    unreachable!()
}

/// Stops child `p` with SIGSTOP and waits until it is stopped.
pub fn sigstop(p: &Proc) {
    // SAFETY: a plain syscall on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(p.pid, libc::SIGSTOP) }, 0);
    // Wait until it is really stopped (`T` in /proc/PID/stat).
    let deadline = Instant::now() + SOON;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
        if state == Some(Some('T')) {
            return;
        }
        assert!(Instant::now() < deadline, "child {} never stopped", p.pid);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Resumes child `p` (SIGCONT).
pub fn sigcont(p: &Proc) {
    // SAFETY: as in `sigstop`.
    assert_eq!(unsafe { libc::kill(p.pid, libc::SIGCONT) }, 0);
}

/// In a child process: exit with status 97 after `limit`, whatever happens, so a child never
/// outlives its purpose and a hang shows as exit 97.
pub fn child_watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("child watchdog: exiting after {} s", limit.as_secs());
        std::process::exit(97);
    });
}

/// A loopback TCP port that was free a moment ago (bind port 0, note the port, close).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Forks; the child runs `child` and `_exit`s with what it returns; the parent waits for it and
/// returns that status.
pub fn in_forked_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs only `child` (which uses the inherited ends: malloc, syscalls) and
    // `_exit`, never returning into the test harness; glibc's malloc is safe after fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without running the harness's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Drops this process's copy of `end` as the forked child's own (the child inherited the
/// parent's value by copy, not by Rust move: this is the drop that child would run).
///
/// Only in a forked child that then `_exit`s: the original is never used or dropped again there.
pub fn drop_inherited<T>(end: &T) {
    // SAFETY: in the forked child the bytes of `end` are a private copy of the parent's value;
    // reading them out makes the one owner that is dropped here, and the child `_exit`s without
    // touching the original again, so it is dropped exactly once in this process.
    drop(unsafe { std::ptr::read(end) });
}

/// Bit `bit` set unless `ok`.
pub fn fails(ok: bool, bit: u32) -> i32 {
    if ok {
        0
    } else {
        1 << bit
    }
}

/// A fresh directory for socket files, removed with what is in it on drop.
pub struct SockDir(pub std::path::PathBuf);

impl SockDir {
    pub fn new(tag: &str) -> SockDir {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir(&dir).unwrap();
        SockDir(dir)
    }

    pub fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_string()
    }

    pub fn assert_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "socket files left behind: {left:?}");
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Threads:` of /proc/self/status: this process's OS threads now.
pub fn threads_now() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
