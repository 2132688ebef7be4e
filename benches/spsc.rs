//! Benchmarks of the SPSC ring against same-run baselines.
//!
//! - `spsc_throughput_64B`: two threads in one process stream messages through the in-process heap
//!   ring (`ring::spsc::channel`, the same algorithm as the shared-memory transport), the producer
//!   spinning on `try_send` (or `try_reserve`), the consumer on `try_recv_ref` (zero copy) — beside
//!   `crossbeam_queue::ArrayQueue<[u8; 64]>` and `rtrb::RingBuffer<[u8; 64]>` of the same capacity
//!   driven the same way. `shmpipe_stride64` uses `max_message` 56 (8-byte slot header + 56 bytes:
//!   one 64-byte line per message, like the `[u8; 64]` baselines); `shmpipe_stride128` sends real
//!   64-byte payloads, which need a two-line slot.
//! - `pingpong_8B`: round trips of an 8-byte message between this process and a child process
//!   (we spin on our receive throughout):
//!   - `shm_spin`: two shared-memory rings, the child spinning too (`WaitStrategy::spinning`);
//!   - `shm_child_park_only`: the child parks at once when its ring is empty
//!     (`WaitStrategy::park_only`), back to back: the cost of the futex calls on that path;
//!   - `shm_child_parked_wake`: the same, but the child is given time to fall asleep before each
//!     ping, so every round trip includes waking a parked receiver;
//!   - `unix_socket`: the baseline, a `UnixStream` with blocking `write_all`/`read_exact`.
//!
//! The child is this very binary, re-executed with `SHMPIPE_BENCH_CHILD` set (see `main`). It is
//! always reaped (killed if it does not leave on its own) and the rings, named after our pid, are
//! removed: `ipcs -m` must be empty after a run, including `cargo bench --bench spsc -- --test`.
//!
//! NOISE: this was written for a 2-core machine. Both benchmarks keep two threads (or processes)
//! spinning, one per core, so anything else running (criterion's own analysis, the OS, another
//! build) steals a core from one side and shows up as outliers; spinning ping-pong results are
//! only meaningful with both cores otherwise idle. Threads are not pinned. Measurement times are
//! short so the whole run stays under two minutes; raise them (`--measurement-time`) for
//! tighter numbers. Streaming throughput is bimodal on such a machine (a consumer that keeps up
//! runs in lock step with the producer, paying a cache-line transfer per message; one that falls
//! behind takes messages in batches), which shows as wide confidence intervals: compare rows of
//! the same run, never across runs.

use criterion::{BenchmarkGroup, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use shmpipe::ring::spsc;
use shmpipe::transport::shm::{ShmConfig, ShmReceiver, ShmSender};
use shmpipe::{Sender, TryRecvError, TrySendError, WaitStrategy};
use std::hint::spin_loop;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Set in a child process: what it should do instead of benchmarking.
const CHILD_ENV: &str = "SHMPIPE_BENCH_CHILD";

/// Slots in every queue of the throughput benchmark.
const CAPACITY: usize = 1024;
/// Messages per criterion iteration in the throughput benchmark.
const MSGS_PER_ITER: u64 = 10_000;
/// Ping-pong message size.
const PING_LEN: usize = 8;
/// Spin rounds before a spinning side of the ping-pong yields and parks.
const PING_SPINS: u32 = 200_000;
/// Untimed pause before each round trip of `shm_child_parked_wake`, long enough for the child to
/// be asleep on its futex. Criterion sizes runs by the timed part only, so this benchmark takes
/// a few times its measurement time.
const IDLE_GAP: Duration = Duration::from_micros(10);
/// How long a child may take to start, or to leave once told to.
const CHILD_GRACE: Duration = Duration::from_secs(5);

type Msg = [u8; 64];

// ---------------------------------------------------------------------------------------------
// Throughput: two threads, one process.
// ---------------------------------------------------------------------------------------------

/// Runs `produce(total)` on this thread and `consume(total)` on another, both released together
/// from a spin barrier (so neither pays a futex wake inside the timed region), and returns the
/// time from the release until the consumer has taken the last message. `consume` returns the
/// sum of the sequence numbers it saw, checked after the clock has stopped.
fn timed_transfer(
    total: u64,
    produce: impl FnOnce(u64),
    consume: impl FnOnce(u64) -> u64 + Send,
) -> Duration {
    let ready = AtomicBool::new(false);
    let go = AtomicBool::new(false);
    let (elapsed, sum) = std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            ready.store(true, Ordering::Release);
            while !go.load(Ordering::Acquire) {
                spin_loop();
            }
            let sum = consume(total);
            (Instant::now(), sum)
        });
        while !ready.load(Ordering::Acquire) {
            spin_loop();
        }
        let start = Instant::now();
        go.store(true, Ordering::Release);
        produce(total);
        let (end, sum) = consumer.join().expect("consumer thread panicked");
        (end - start, sum)
    });
    assert_eq!(
        sum,
        total * (total.saturating_sub(1)) / 2,
        "messages lost or reordered"
    );
    elapsed
}

/// A 64-byte message whose first 8 bytes are `seq`.
#[inline(always)]
fn stamped(seq: u64) -> Msg {
    let mut m = [0xa5u8; 64];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m
}

#[inline(always)]
fn seq_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("message shorter than 8 bytes"))
}

/// Consumer side for the ring: zero-copy borrow, read the sequence number, release the slot.
fn ring_consume(rx: &mut spsc::Consumer, total: u64) -> u64 {
    let mut sum = 0u64;
    let mut got = 0;
    while got < total {
        match rx.try_recv_ref() {
            Ok(m) => {
                sum = sum.wrapping_add(seq_of(&m));
                got += 1;
            }
            Err(TryRecvError::Empty) => spin_loop(),
            Err(e) => panic!("try_recv_ref: {e:?}"),
        }
    }
    sum
}

fn bench_ring(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    max_message: usize,
) {
    let (mut tx, mut rx) = spsc::channel(CAPACITY, max_message).expect("channel");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_transfer(
                iters * MSGS_PER_ITER,
                |total| {
                    for i in 0..total {
                        let m = stamped(i);
                        loop {
                            match tx.try_send(&m[..max_message]) {
                                Ok(()) => break,
                                Err(TrySendError::Full) => spin_loop(),
                                Err(e) => panic!("try_send: {e:?}"),
                            }
                        }
                    }
                },
                |total| ring_consume(&mut rx, total),
            )
        })
    });
}

/// The ring with a zero-copy producer too: reserve the slot, write the message in place, commit.
fn bench_ring_reserve(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str) {
    const LEN: usize = 56;
    let (mut tx, mut rx) = spsc::channel(CAPACITY, LEN).expect("channel");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_transfer(
                iters * MSGS_PER_ITER,
                |total| {
                    for i in 0..total {
                        loop {
                            match tx.try_reserve(LEN) {
                                Ok(mut slot) => {
                                    slot.copy_from_slice(&stamped(i)[..LEN]);
                                    slot.commit();
                                    break;
                                }
                                Err(TrySendError::Full) => spin_loop(),
                                Err(e) => panic!("try_reserve: {e:?}"),
                            }
                        }
                    }
                },
                |total| ring_consume(&mut rx, total),
            )
        })
    });
}

fn bench_array_queue(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let q = ArrayQueue::<Msg>::new(CAPACITY);
    group.bench_function("crossbeam_ArrayQueue", |b| {
        b.iter_custom(|iters| {
            timed_transfer(
                iters * MSGS_PER_ITER,
                |total| {
                    for i in 0..total {
                        let mut m = stamped(i);
                        while let Err(back) = q.push(m) {
                            m = back;
                            spin_loop();
                        }
                    }
                },
                |total| {
                    let mut sum = 0u64;
                    let mut got = 0;
                    while got < total {
                        match q.pop() {
                            Some(m) => {
                                sum = sum.wrapping_add(seq_of(&m));
                                got += 1;
                            }
                            None => spin_loop(),
                        }
                    }
                    sum
                },
            )
        })
    });
}

fn bench_rtrb(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let (mut tx, mut rx) = rtrb::RingBuffer::<Msg>::new(CAPACITY);
    group.bench_function("rtrb", |b| {
        b.iter_custom(|iters| {
            timed_transfer(
                iters * MSGS_PER_ITER,
                |total| {
                    for i in 0..total {
                        let mut m = stamped(i);
                        while let Err(rtrb::PushError::Full(back)) = tx.push(m) {
                            m = back;
                            spin_loop();
                        }
                    }
                },
                |total| {
                    let mut sum = 0u64;
                    let mut got = 0;
                    while got < total {
                        match rx.pop() {
                            Ok(m) => {
                                sum = sum.wrapping_add(seq_of(&m));
                                got += 1;
                            }
                            Err(_) => spin_loop(),
                        }
                    }
                    sum
                },
            )
        })
    });
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc_throughput_64B");
    group.throughput(Throughput::Elements(MSGS_PER_ITER));
    group.sample_size(30);
    bench_ring(&mut group, "shmpipe_stride64", 56);
    bench_ring(&mut group, "shmpipe_stride128", 64);
    bench_ring_reserve(&mut group, "shmpipe_reserve_stride64");
    bench_array_queue(&mut group);
    bench_rtrb(&mut group);
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Ping-pong: two processes.
// ---------------------------------------------------------------------------------------------

/// A name no other run (or other benchmark in this run) uses.
fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "shmpipe-bench-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn ring_config(name: &str) -> ShmConfig {
    ShmConfig::named(name)
        .expect("ring name")
        .capacity(64)
        .max_message(PING_LEN)
}

fn spawn_child(spec: &str) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .env(CHILD_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the echo child")
}

/// Waits up to `grace` for `child` to exit, then kills it; either way it is reaped.
fn reap(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child echoing over shared memory: we send on `ping`, it answers on `pong`.
struct ShmEcho {
    ping: Option<ShmSender>,
    pong: Option<ShmReceiver>,
    child: Child,
}

impl ShmEcho {
    /// Creates both rings (so they exist, with our ends claimed, before the child looks), starts
    /// the child and waits for its first echo.
    fn start(child_parks: bool) -> Self {
        let base = unique_name(if child_parks { "park" } else { "spin" });
        let ping = ring_config(&format!("{base}-ping"))
            .open_sender()
            .expect("open ping sender");
        let mut pong = ring_config(&format!("{base}-pong"))
            .open_receiver()
            .expect("open pong receiver");
        pong.set_wait_strategy(WaitStrategy::spinning(PING_SPINS));
        let mode = if child_parks { "park" } else { "spin" };
        let child = spawn_child(&format!("shm:{mode}:{base}"));
        let mut echo = ShmEcho {
            ping: Some(ping),
            pong: Some(pong),
            child,
        };
        let (ping, pong) = echo.ends();
        ping.send(&u64::MAX.to_le_bytes()).expect("first ping");
        let first = pong
            .recv_ref_timeout(CHILD_GRACE)
            .expect("no echo from the child");
        assert_eq!(seq_of(&first), u64::MAX);
        drop(first);
        echo
    }

    fn ends(&mut self) -> (&mut ShmSender, &mut ShmReceiver) {
        (
            self.ping.as_mut().expect("live"),
            self.pong.as_mut().expect("live"),
        )
    }

    fn round_trips(&mut self, iters: u64) -> Duration {
        let (ping, pong) = self.ends();
        let start = Instant::now();
        for i in 0..iters {
            ping.send(&i.to_le_bytes()).expect("ping");
            let echoed = pong.recv_ref().expect("pong");
            debug_assert_eq!(seq_of(&echoed), i);
        }
        start.elapsed()
    }

    /// Like `round_trips`, but before each (timed) round trip we spin, untimed, for `IDLE_GAP`,
    /// so a parking child is surely asleep on its futex when the ping comes: each round trip
    /// then includes one futex wake and the child's trip back onto a CPU. Timing each round trip
    /// alone adds two clock reads (some tens of ns) to every sample.
    fn round_trips_after_idle(&mut self, iters: u64) -> Duration {
        let (ping, pong) = self.ends();
        let mut timed = Duration::ZERO;
        for i in 0..iters {
            let idle_until = Instant::now() + IDLE_GAP;
            while Instant::now() < idle_until {
                spin_loop();
            }
            let start = Instant::now();
            ping.send(&i.to_le_bytes()).expect("ping");
            let echoed = pong.recv_ref().expect("pong");
            timed += start.elapsed();
            debug_assert_eq!(seq_of(&echoed), i);
        }
        timed
    }
}

impl Drop for ShmEcho {
    fn drop(&mut self) {
        // The receiver always removes its segment, so `pong` goes at once. Then one more ping
        // wakes the child, which finds `pong` closed and leaves; its `ping` receiver removes
        // `ping`. Only then does our `ping` sender go: if the child had to be killed, the sender
        // sees its receiver dead and removes the segment itself.
        drop(self.pong.take());
        if let Some(ping) = self.ping.as_mut() {
            let _ = ping.try_send(&[0; PING_LEN]);
        }
        reap(&mut self.child, CHILD_GRACE);
        drop(self.ping.take());
    }
}

/// A child echoing over a Unix socket.
struct UnixEcho {
    stream: Option<UnixStream>,
    child: Child,
}

impl UnixEcho {
    fn start() -> Self {
        let path = std::env::temp_dir().join(format!("{}.sock", unique_name("unix")));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind unix socket");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let mut child = spawn_child(&format!("unix:{}", path.display()));
        let deadline = Instant::now() + CHILD_GRACE;
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        break Err(format!("echo child exited early: {status}"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => break Err(format!("accept: {e}")),
            }
        };
        let _ = std::fs::remove_file(&path);
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                reap(&mut child, Duration::ZERO);
                panic!("{e}");
            }
        };
        stream.set_nonblocking(false).expect("blocking stream");
        UnixEcho {
            stream: Some(stream),
            child,
        }
    }

    fn round_trips(&mut self, iters: u64) -> Duration {
        let s = self.stream.as_mut().expect("live");
        let mut buf = [0u8; PING_LEN];
        let start = Instant::now();
        for i in 0..iters {
            s.write_all(&i.to_le_bytes()).expect("write");
            s.read_exact(&mut buf).expect("read");
            debug_assert_eq!(u64::from_le_bytes(buf), i);
        }
        start.elapsed()
    }
}

impl Drop for UnixEcho {
    fn drop(&mut self) {
        // Closing our end gives the child EOF, and it leaves.
        drop(self.stream.take());
        reap(&mut self.child, CHILD_GRACE);
    }
}

fn pingpong(c: &mut Criterion) {
    let mut group = c.benchmark_group("pingpong_8B");
    // Children are started on first use, so a filtered-out benchmark starts none, and stopped
    // when the group is done (or when a panic unwinds through here).
    let mut shm_spin: Option<ShmEcho> = None;
    group.bench_function("shm_spin", |b| {
        let echo = shm_spin.get_or_insert_with(|| ShmEcho::start(false));
        b.iter_custom(|iters| echo.round_trips(iters))
    });
    drop(shm_spin);
    // The child parks (`park_only`) as soon as it finds `ping` empty. Back to back, the next ping
    // often arrives before it is really asleep, so this mostly shows the cost of the futex calls
    // on that path; `shm_child_parked_wake` lets it fall asleep first and shows the wake latency.
    let mut shm_park: Option<ShmEcho> = None;
    group.bench_function("shm_child_park_only", |b| {
        let echo = shm_park.get_or_insert_with(|| ShmEcho::start(true));
        b.iter_custom(|iters| echo.round_trips(iters))
    });
    group.bench_function("shm_child_parked_wake", |b| {
        let echo = shm_park.get_or_insert_with(|| ShmEcho::start(true));
        b.iter_custom(|iters| echo.round_trips_after_idle(iters))
    });
    drop(shm_park);
    let mut unix: Option<UnixEcho> = None;
    group.bench_function("unix_socket", |b| {
        let echo = unix.get_or_insert_with(UnixEcho::start);
        b.iter_custom(|iters| echo.round_trips(iters))
    });
    drop(unix);
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// The echo children.
// ---------------------------------------------------------------------------------------------

/// Echoes pings from `<base>-ping` to `<base>-pong` until either ring disconnects.
fn echo_shm(base: &str, park: bool) {
    let wait = if park {
        WaitStrategy::park_only()
    } else {
        WaitStrategy::spinning(PING_SPINS)
    };
    let mut ping = ring_config(&format!("{base}-ping"))
        .open_receiver()
        .expect("child: open ping");
    let mut pong = ring_config(&format!("{base}-pong"))
        .open_sender()
        .expect("child: open pong");
    // The parent claimed its ends before starting us. If it did not (it died, and we just
    // created fresh rings), leave at once; dropping our ends removes what we created.
    if ping.sender() != shmpipe::Peer::Alive || pong.receiver() != shmpipe::Peer::Alive {
        return;
    }
    ping.set_wait_strategy(wait);
    pong.set_wait_strategy(wait);
    let mut buf = [0u8; PING_LEN];
    loop {
        match ping.recv_ref() {
            Ok(m) => buf.copy_from_slice(&m),
            Err(_) => return,
        }
        if pong.send(&buf).is_err() {
            return;
        }
    }
}

/// Echoes 8-byte messages on the socket at `path` until EOF.
fn echo_unix(path: &str) {
    let mut s = UnixStream::connect(path).expect("child: connect");
    let mut buf = [0u8; PING_LEN];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            return;
        }
    }
}

fn run_child(spec: &str) {
    match spec.split_once(':') {
        Some(("shm", rest)) => match rest.split_once(':') {
            Some(("spin", base)) => echo_shm(base, false),
            Some(("park", base)) => echo_shm(base, true),
            _ => panic!("bad {CHILD_ENV}={spec:?}"),
        },
        Some(("unix", path)) => echo_unix(path),
        _ => panic!("bad {CHILD_ENV}={spec:?}"),
    }
}

/// The criterion entry point (`criterion_group!` makes an undocumented `pub fn`).
#[allow(missing_docs)]
mod harness {
    use super::{pingpong, throughput, Criterion, Duration};
    criterion::criterion_group! {
        name = benches;
        config = Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        targets = throughput, pingpong
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        run_child(&spec);
        return;
    }
    harness::benches();
    Criterion::default().configure_from_args().final_summary();
}
