//! `shmpipe bench`: each transport measured across processes, next to its raw syscall baseline,
//! in the same run.
//!
//! Every measurement spawns its peer by re-executing this binary as the hidden `bench-peer`
//! subcommand (the pattern of `demo`). The peer asks the kernel to kill it if we die
//! (`PR_SET_PDEATHSIG`), and we kill and reap it on every exit path ([`PeerProc`]).
//!
//! Scenarios:
//! - `throughput`: the peer streams N messages of SIZE bytes, each carrying its sequence number in
//!   its first 8 bytes; we receive and check every one. The clock starts when the first message
//!   arrives (so process start-up and connecting are not counted) and stops at the last:
//!   rate = (N - 1) / elapsed.
//! - `latency`: 8-byte ping-pong, one channel per direction (our transports are one-way); the
//!   one-way latency of an iteration is its round trip / 2, recorded in an HdrHistogram
//!   ([`Latencies`]; p50, p99, p99.9 and max are read from it). Warm-up iterations are not
//!   recorded.
//! - `crossover` (only when asked for): ns per message of open + send N + close, setup
//!   included, for `shm`, `msgq` and `unix` (see [`crossover`]).
//! - `fanout` (only when asked for): one publisher, 1, 2 and 4 subscriber processes of a
//!   broadcast ring (`shm-bcast-block`, `shm-bcast-overwrite`), next to our SPSC ring (`shm`, one
//!   subscriber) and in-process broadcasts (`inproc-bcast`, `inproc-bus`): publisher msgs/s,
//!   one-way latency at each subscriber from a send timestamp in the message, and messages
//!   missed (see [`fanout`]).
//! - `async` (only when asked for): `shm-async`, our ring with the receiving side awaiting
//!   `recv_async` in a tokio current-thread runtime, as a 64 B throughput row beside `shm` and a
//!   latency row beside `shm-park`, with the ratios and their targets printed (see [`aio`]).
//!
//! `--plot FILE.svg` also draws the latency percentile curves and the throughput bars of the
//! run into one SVG (see [`plot`]).
//!
//! Transports (ours, through `Endpoint::parse(..).open_sender()/open_receiver()` and the
//! `Sender`/`Receiver` traits): `shm` (`?wait=spin`), `shm-park` (`?wait=park`: every wait
//! parks on the futex at once, so latency includes a wake-up), `msgq`, `unix`, `tcp`. Raw
//! baselines (libc/std only, see [`raw`]): `raw-atomic`, `raw-atomic-pair`, `raw-futex` (latency
//! only), `raw-msgq`,
//! `raw-unix`, `raw-pipe`, `raw-tcp`. In-process baselines (two threads, throughput only, see
//! [`inproc`]): `inproc-ring`, `inproc-arrayqueue`, `inproc-rtrb`. Another crate's shared-memory
//! channel across the same two processes (see [`ipc_crate`]): `ipmpsc`.

mod aio;
mod cleanup;
mod crossover;
mod fanout;
mod inproc;
mod ipc_crate;
mod mpmc;
mod ours;
mod plot;
mod raw;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What is measured.
///
/// Adding a scenario: a variant here, in [`Scenario::ALL`] and [`Scenario::name`]; whether it
/// runs without `--scenario` ([`Scenario::by_default`]); which transports run it
/// ([`Transport::supports`]); its sizes and message counts in [`run`]; and its measurement in the
/// module of each transport family that runs it (and its peer side). Every one of those is an
/// exhaustive `match`, so the compiler lists what is left to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// A stream of N messages of SIZE bytes from the peer: msgs/s and bytes/s.
    Throughput,
    /// 8-byte ping-pong: one-way latency percentiles.
    Latency,
    /// Open + send N + close, setup included, ns per message, for shm, msgq and unix (only
    /// when asked for).
    Crossover,
    /// 2 producers x 2 consumers of 64-byte messages through one queue: msgs/s (shm-mpmc with
    /// producer processes; inproc-mpmc and inproc-arrayqueue with threads).
    Mpmc,
    /// 1 publisher -> 1, 2, 4 subscribers of 64-byte messages: publisher msgs/s, one-way latency
    /// at each subscriber, messages missed (only when asked for).
    Fanout,
    /// The async receiver (shm-async) beside the blocking rows it replaces, in the shapes above:
    /// 64 B throughput next to shm, 8 B latency next to shm-park, with the ratios and their
    /// targets (only when asked for; --size does not apply).
    Async,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Mpmc,
        Scenario::Fanout,
        Scenario::Crossover,
        Scenario::Async,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::Crossover => "crossover",
            Scenario::Mpmc => "mpmc",
            Scenario::Fanout => "fanout",
            Scenario::Async => "async",
        }
    }

    /// Whether it runs when no `--scenario` is given.
    fn by_default(self) -> bool {
        match self {
            Scenario::Throughput | Scenario::Latency | Scenario::Mpmc => true,
            // Many short runs, a question of its own: only when asked for.
            Scenario::Crossover => false,
            // Up to five busy processes on this machine's CPUs: only when asked for.
            Scenario::Fanout => false,
            // Its latency row alone takes about 5 s (100000 async round trips): only when asked.
            Scenario::Async => false,
        }
    }
}

/// A transport of ours, or a raw baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    /// shm://NAME?wait=spin
    Shm,
    /// shm://NAME?wait=park (wakes through the futex every time)
    ShmPark,
    /// shm://NAME, the receiving side awaiting recv_async in a tokio current-thread runtime
    /// (latency: both receivers; throughput at 64 B: ours, the peer's sender spins as for shm)
    ShmAsync,
    /// shm://NAME?mode=mpmc (mpmc scenario: producer processes, consumer threads)
    ShmMpmc,
    /// Raw: one AtomicU64 in an IPC_PRIVATE segment, both sides spinning (latency only)
    RawAtomic,
    /// Raw: two AtomicU64s on their own cache lines, one per direction, both sides spinning: the
    /// floor of any two one-way channels (latency only)
    RawAtomicPair,
    /// Raw: FUTEX_WAIT/FUTEX_WAKE on shared futex words (latency only)
    RawFutex,
    /// Another crate: an ipmpsc channel (a file-backed ring mapped with memmap2)
    Ipmpsc,
    /// msgq://NAME
    Msgq,
    /// Raw: blocking msgsnd/msgrcv on an IPC_PRIVATE queue
    RawMsgq,
    /// unix:///PATH
    Unix,
    /// Raw: a socketpair, length-prefixed frames with write_all/read_exact
    RawUnix,
    /// Raw: pipe(2)s (one per direction), frames as raw-unix
    RawPipe,
    /// tcp://127.0.0.1:PORT
    Tcp,
    /// Raw: a 127.0.0.1 TCP connection with TCP_NODELAY, frames as raw-unix
    RawTcp,
    /// zenoh://KEY over a 127.0.0.1 TCP link (only in a CLI built with --features zenoh)
    Zenoh,
    /// In-process: our ring on the heap between two threads (throughput only)
    InprocRing,
    /// In-process: crossbeam_queue::ArrayQueue between two threads (throughput, <= 1024 B)
    InprocArrayqueue,
    /// In-process: rtrb::RingBuffer between two threads (throughput, <= 1024 B)
    InprocRtrb,
    /// In-process: our MPMC ring on the heap (mpmc scenario)
    InprocMpmc,
    /// shm://NAME?mode=broadcast&overflow=block (fanout scenario)
    ShmBcastBlock,
    /// shm://NAME?mode=broadcast&overflow=overwrite (fanout scenario)
    ShmBcastOverwrite,
    /// In-process: our broadcast ring on the heap, overflow=block (fanout scenario)
    InprocBcast,
    /// In-process: bus::Bus, one writer thread and N reader threads (fanout scenario)
    InprocBus,
}

impl Transport {
    /// Every transport, in the order of the report: each of ours next to its baseline.
    const ALL: [Transport; 24] = [
        Transport::Shm,
        Transport::ShmPark,
        Transport::ShmAsync,
        Transport::ShmMpmc,
        Transport::RawAtomic,
        Transport::RawAtomicPair,
        Transport::RawFutex,
        Transport::Ipmpsc,
        Transport::Msgq,
        Transport::RawMsgq,
        Transport::Unix,
        Transport::RawUnix,
        Transport::RawPipe,
        Transport::Tcp,
        Transport::RawTcp,
        Transport::Zenoh,
        Transport::InprocRing,
        Transport::InprocArrayqueue,
        Transport::InprocRtrb,
        Transport::InprocMpmc,
        Transport::ShmBcastBlock,
        Transport::ShmBcastOverwrite,
        Transport::InprocBcast,
        Transport::InprocBus,
    ];

    fn name(self) -> &'static str {
        match self {
            Transport::Shm => "shm",
            Transport::ShmPark => "shm-park",
            Transport::ShmAsync => "shm-async",
            Transport::ShmMpmc => "shm-mpmc",
            Transport::RawAtomic => "raw-atomic",
            Transport::RawAtomicPair => "raw-atomic-pair",
            Transport::RawFutex => "raw-futex",
            Transport::Ipmpsc => "ipmpsc",
            Transport::Msgq => "msgq",
            Transport::RawMsgq => "raw-msgq",
            Transport::Unix => "unix",
            Transport::RawUnix => "raw-unix",
            Transport::RawPipe => "raw-pipe",
            Transport::Tcp => "tcp",
            Transport::RawTcp => "raw-tcp",
            Transport::Zenoh => "zenoh",
            Transport::InprocRing => "inproc-ring",
            Transport::InprocArrayqueue => "inproc-arrayqueue",
            Transport::InprocRtrb => "inproc-rtrb",
            Transport::InprocMpmc => "inproc-mpmc",
            Transport::ShmBcastBlock => "shm-bcast-block",
            Transport::ShmBcastOverwrite => "shm-bcast-overwrite",
            Transport::InprocBcast => "inproc-bcast",
            Transport::InprocBus => "inproc-bus",
        }
    }

    /// What kind of row this is, for the plot's colours.
    fn family(self) -> Family {
        if self == Transport::Ipmpsc {
            Family::Crate
        } else if self.is_raw() {
            Family::Raw
        } else if self.is_inproc() {
            Family::Inproc
        } else {
            Family::Ours
        }
    }

    fn is_raw(self) -> bool {
        self.name().starts_with("raw-")
    }

    fn is_inproc(self) -> bool {
        self.name().starts_with("inproc-")
    }

    /// Whether this is run in `scenario` with messages of `size` bytes.
    fn supports(self, scenario: Scenario, size: usize) -> bool {
        let mpmc_only = matches!(self, Transport::ShmMpmc | Transport::InprocMpmc);
        let fanout_only = fanout::TRANSPORTS.contains(&self) && self != Transport::Shm;
        match scenario {
            Scenario::Mpmc => mpmc_only || self == Transport::InprocArrayqueue,
            Scenario::Fanout => fanout::TRANSPORTS.contains(&self),
            _ if mpmc_only || fanout_only => false,
            // Its rows (and their blocking counterparts) are made by the async scenario.
            Scenario::Async => ASYNC_JOBS.iter().any(|&(_, t, s)| t == self && s == size),
            _ if self == Transport::ShmAsync => false,
            // Rows only where the transport is built in.
            _ if self == Transport::Zenoh && !cfg!(feature = "zenoh") => false,
            Scenario::Crossover if self == Transport::Zenoh => false,
            Scenario::Throughput => {
                !matches!(
                    self,
                    Transport::RawAtomic | Transport::RawAtomicPair | Transport::RawFutex
                ) && (!self.is_inproc() || inproc::supports(self, size))
            }
            Scenario::Latency => !self.is_inproc(),
            Scenario::Crossover => crossover::TRANSPORTS.contains(&self),
        }
    }

    /// The raw baseline a transport of ours is compared with.
    fn baseline(self, scenario: Scenario) -> Option<Transport> {
        Some(match (self, scenario) {
            (Transport::Shm, Scenario::Latency) => Transport::RawAtomic,
            (Transport::ShmPark, Scenario::Latency) => Transport::RawFutex,
            // The async receiver next to the blocking one it replaces (issue 16 item 5).
            (Transport::ShmAsync, Scenario::Latency) => Transport::ShmPark,
            (Transport::ShmAsync, Scenario::Throughput) => Transport::Shm,
            // Nothing raw streams through shared memory: the socket pair is the usual alternative.
            (Transport::Shm | Transport::ShmPark, Scenario::Throughput) => Transport::RawUnix,
            (Transport::Msgq, _) => Transport::RawMsgq,
            (Transport::Unix, _) => Transport::RawUnix,
            (Transport::Tcp, _) => Transport::RawTcp,
            // What leaving the host costs, next to the plain loopback TCP it runs on.
            (Transport::Zenoh, _) => Transport::RawTcp,
            // The reference for an MPMC queue, in the same shape.
            (Transport::ShmMpmc | Transport::InprocMpmc, Scenario::Mpmc) => Transport::InprocArrayqueue,
            // The reference for a broadcast ring: our SPSC ring (one subscriber).
            (Transport::ShmBcastBlock | Transport::ShmBcastOverwrite, Scenario::Fanout) => Transport::Shm,
            (Transport::InprocBcast, Scenario::Fanout) => Transport::InprocBus,
            _ => return None,
        })
    }
}

/// The kinds of transport, told apart in the plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// A transport of ours.
    Ours,
    /// A raw syscall baseline.
    Raw,
    /// Two threads of one process.
    Inproc,
    /// Another crate's channel across the same two processes.
    Crate,
}

/// `shmpipe bench` options.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Small counts (throughput 50000 messages, latency 10000 round trips) and throughput sizes
    /// 64 and 1024 only: a few seconds.
    #[arg(long)]
    quick: bool,
    /// Messages per throughput run, and timed round trips per latency run (a tenth more, at
    /// most 10000, are run first as warm-up). Default 1000000 and 100000 (the async scenario's
    /// 64 B streams: 10000000), and a throughput run moves at most 1 GiB of payload (256 MiB
    /// with --quick): 16384 messages of 64 KiB.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    messages: Option<u64>,
    /// Message sizes for the throughput scenario in bytes, at least 8 (repeatable or
    /// comma-separated; default 8,64,1024,65536, with --quick 64,1024). Latency always uses
    /// 8-byte messages.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(8..=(1 << 20)))]
    size: Vec<u32>,
    /// Only these transports and baselines (repeatable or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    transport: Vec<Transport>,
    /// Only these scenarios (repeatable or comma-separated; default throughput and latency).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Print one JSON object per result line instead of the table.
    #[arg(long)]
    json: bool,
    /// Pin this process to the first CPU we may run on and the peer to the second (CPUs 0 and 1
    /// on an unrestricted machine). With fewer than two CPUs available, a warning and no pinning.
    #[arg(long)]
    pin: bool,
    /// Also draw the results into an SVG file: latency percentile curves and throughput bars,
    /// both on log scales (crossover results are not plotted).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// The hidden `bench-peer` subcommand: the other end of one measurement.
#[derive(Args, Debug)]
pub(crate) struct PeerArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    #[arg(long, value_enum)]
    transport: Transport,
    /// Transport-specific addresses: endpoints, SysV ids, a file descriptor or a port.
    #[arg(long)]
    addr: Vec<String>,
    #[arg(long)]
    size: usize,
    /// Messages to send (throughput) or to echo (latency, warm-up included).
    #[arg(long)]
    messages: u64,
    /// Our parent's pid: if it is already gone when we start, we leave.
    #[arg(long)]
    parent: u32,
    #[arg(long)]
    pin_core: Option<usize>,
}

/// Slots of a ring (the `shm` rows and `inproc-ring`) for messages of `size` bytes: 1024 up to
/// 1 KiB, 64 above (a 64 KiB message in 1024 slots would be 64 MiB a ring).
pub(crate) fn ring_capacity(size: usize) -> usize {
    if size <= 1024 {
        1024
    } else {
        64
    }
}

/// Where the throughput and latency code meets a crossover or mpmc job (each dispatched to its
/// own module before it).
const NOT_CROSSOVER: &str = "the crossover, mpmc and fanout scenarios are measured by their own modules";

/// The one message size of the `shm-async` throughput row.
const ASYNC_SIZE: usize = 64;

/// What `--scenario async` runs: the async rows and the blocking rows they are compared with.
const ASYNC_JOBS: [(Scenario, Transport, usize); 4] = [
    (Scenario::Throughput, Transport::Shm, ASYNC_SIZE),
    (Scenario::Throughput, Transport::ShmAsync, ASYNC_SIZE),
    (Scenario::Latency, Transport::ShmPark, PING_SIZE),
    (Scenario::Latency, Transport::ShmAsync, PING_SIZE),
];

/// Messages of the async scenario's throughput rows, unless `--messages` or `--quick` says.
const ASYNC_THROUGHPUT_N: u64 = 10_000_000;

/// Size of a latency message.
const PING_SIZE: usize = 8;
/// How long a peer may take to start and connect, and any single wait may take.
const STALL: Duration = Duration::from_secs(30);
/// How long a peer may take to exit after its last message.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// What one measurement needs from the run.
pub(crate) struct Ctx {
    exe: PathBuf,
    peer_core: Option<usize>,
    seq: std::cell::Cell<u32>,
}

impl Ctx {
    /// A name unique to this run and call: `bench-PID-N`.
    fn unique(&self) -> String {
        let n = self.seq.get();
        self.seq.set(n + 1);
        format!("bench-{}-{n}", std::process::id())
    }
}

/// The peer process of one measurement: killed (if still running) and reaped on drop.
pub(crate) struct PeerProc {
    child: Option<Child>,
    /// Its entry in the interruption clean-up list, left when it is reaped.
    token: cleanup::Token,
}

impl PeerProc {
    /// Spawns `bench-peer`. The descriptors in `inherit_fds` are left open across exec
    /// (everything else we open is close-on-exec).
    fn spawn(ctx: &Ctx, job: &Job, addrs: &[String], inherit_fds: &[RawFd]) -> Result<PeerProc, String> {
        Self::spawn_with(ctx, job, addrs, inherit_fds, Stdio::null())
    }

    /// [`PeerProc::spawn`] with the peer's standard output piped to us ([`PeerProc::take_stdout`]):
    /// the fanout subscribers report through it.
    fn spawn_piped(ctx: &Ctx, job: &Job, addrs: &[String]) -> Result<PeerProc, String> {
        Self::spawn_with(ctx, job, addrs, &[], Stdio::piped())
    }

    fn spawn_with(
        ctx: &Ctx,
        job: &Job,
        addrs: &[String],
        inherit_fds: &[RawFd],
        stdout: Stdio,
    ) -> Result<PeerProc, String> {
        let mut cmd = Command::new(&ctx.exe);
        cmd.args(["bench-peer", "--scenario", job.scenario.name()])
            .args(["--transport", job.transport.name()])
            .args(["--size", &job.size.to_string()])
            .args(["--messages", &job.peer_messages().to_string()])
            .args(["--parent", &std::process::id().to_string()]);
        for a in addrs {
            cmd.arg(format!("--addr={a}"));
        }
        // Several subscribers are not pinned to one CPU: they would take turns on it.
        if let Some(core) = ctx.peer_core.filter(|_| job.subscribers <= 1) {
            cmd.args(["--pin-core", &core.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(stdout);
        if !inherit_fds.is_empty() {
            // Allocated here, in the parent: the child only reads it.
            let fds = inherit_fds.to_vec();
            // SAFETY: the closure runs in the forked child before exec and only calls fcntl,
            // which is async-signal-safe; it allocates nothing and touches no lock.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &fds {
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut reg = cleanup::lock();
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", ctx.exe.display()))?;
        let token = reg.add(cleanup::Resource::Peer(child.id()));
        drop(reg);
        // The leak check in cli/tests/cli_bench.rs reads this to know which processes were ours.
        eprint!(" (peer pid {})", child.id());
        Ok(PeerProc {
            child: Some(child),
            token,
        })
    }

    /// The peer's standard output, if it was piped and not taken yet.
    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Err` if the peer has exited (it should outlive the measurement).
    fn check_alive(&mut self) -> Result<(), String> {
        let mut reg = cleanup::lock();
        let waited = self.child.as_mut().map(Child::try_wait);
        if let Some(Ok(Some(_))) = waited {
            reg.forget(self.token);
        }
        match waited {
            Some(Ok(Some(status))) => Err(format!("the peer process exited early ({status})")),
            Some(Err(e)) => Err(format!("checking the peer process: {e}")),
            _ => Ok(()),
        }
    }

    /// Waits for the peer to exit, successfully, within [`EXIT_WAIT`].
    fn finish(mut self) -> Result<(), String> {
        let mut child = self.child.take().expect("finished twice");
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            let mut reg = cleanup::lock();
            match child.try_wait() {
                Ok(Some(status)) => {
                    reg.forget(self.token);
                    return exit_ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    drop(reg);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    reg.forget(self.token);
                    return Err(format!(
                        "the peer process did not exit within {EXIT_WAIT:?}; killed"
                    ));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    reg.forget(self.token);
                    return Err(format!("waiting for the peer process: {e}"));
                }
            }
        }
    }
}

fn exit_ok(status: ExitStatus) -> Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("the peer process failed ({status})"))
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut reg = cleanup::lock();
            let _ = child.kill();
            let _ = child.wait();
            reg.forget(self.token);
        }
    }
}

/// One measurement to make.
pub(crate) struct Job {
    scenario: Scenario,
    transport: Transport,
    /// Message size in bytes.
    size: usize,
    /// Messages streamed (throughput) or timed round trips (latency).
    messages: u64,
    /// Untimed round trips before the timed ones (latency).
    warmup: u64,
    /// Subscribers (fanout; 0 elsewhere).
    subscribers: usize,
    /// Paced, timestamped messages after the `messages` of the stream (fanout; 0 elsewhere).
    paced: u64,
}

impl Job {
    /// What the peer sends: every message (throughput) or every echo (latency, warm-up too).
    fn peer_messages(&self) -> u64 {
        match self.scenario {
            Scenario::Throughput => self.messages,
            Scenario::Latency => self.warmup + self.messages,
            Scenario::Crossover => self.messages,
            Scenario::Mpmc => (self.messages / mpmc::PRODUCERS as u64).max(1),
            // What each subscriber is sent: the stream, then the paced messages.
            Scenario::Fanout => self.messages + self.paced,
            // Its jobs are throughput and latency jobs.
            Scenario::Async => unreachable!("no job has the async scenario"),
        }
    }
}

/// What one measurement gives.
enum Measured {
    /// Messages per second.
    Rate(f64),
    /// One-way latencies (round trip / 2) of the timed iterations.
    Latency(Latencies),
    /// Nanoseconds per message, setup included (crossover).
    PerMessage(u64),
    /// Fanout: the publisher's rate, and each subscriber's one-way latencies and losses.
    Fanout(f64, Vec<fanout::SubResult>),
}

/// One line of the report.
struct Row {
    scenario: Scenario,
    transport: Transport,
    size: usize,
    messages: u64,
    /// One-way p50, p99, p99.9, max in ns.
    latency: Option<[u64; 4]>,
    /// Every one-way latency recorded, for the plot.
    distribution: Option<Latencies>,
    msgs_per_s: Option<f64>,
    /// Crossover: ns per message, setup included.
    ns_per_msg: Option<u64>,
    /// Fanout: subscribers and what each one saw (empty elsewhere).
    subscribers: Vec<fanout::SubResult>,
}

impl Row {
    fn bytes_per_s(&self) -> Option<f64> {
        self.msgs_per_s.map(|r| r * self.size as f64)
    }

    /// Messages missed, all subscribers counted (fanout).
    fn missed(&self) -> Option<u64> {
        (self.scenario == Scenario::Fanout).then(|| self.subscribers.iter().map(|s| s.missed).sum())
    }

    /// The transport, and for fanout the subscriber count ("shm-bcast-block x4").
    fn label(&self) -> String {
        match self.scenario {
            Scenario::Fanout => format!("{} x{}", self.transport.name(), self.subscribers.len()),
            _ => self.transport.name().to_string(),
        }
    }
}

/// The one-way latencies of a latency run: an HdrHistogram of round trip / 2 in ns, one value
/// per timed iteration (the warm-up ones are never recorded).
pub(crate) struct Latencies(Histogram<u64>);

impl Latencies {
    /// Largest value kept apart: twice [`STALL`] (a longer wait has already failed the run);
    /// anything above is recorded as this.
    const HIGHEST_NS: u64 = 2 * STALL.as_nanos() as u64;
    /// Significant decimal digits: each value is kept to within 0.1%.
    const DIGITS: u8 = 3;

    /// Empty. Allocates the whole histogram (about 200 KiB) now, so recording never does.
    pub(crate) fn new() -> Latencies {
        Latencies(
            Histogram::new_with_bounds(1, Self::HIGHEST_NS, Self::DIGITS).expect("valid histogram bounds"),
        )
    }

    /// Records one iteration's round trip, halved.
    #[inline]
    pub(crate) fn record_round_trip(&mut self, round_trip: Duration) {
        let one_way = (round_trip.as_nanos() / 2).min(u128::from(Self::HIGHEST_NS)) as u64;
        self.0.saturating_record(one_way);
    }

    /// Records one one-way latency measured directly (fanout: send timestamp to arrival).
    #[inline]
    pub(crate) fn record_one_way_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.clamp(1, Self::HIGHEST_NS));
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("histograms of the same bounds");
    }

    /// The recorded values as text, `VALUE:COUNT` pairs separated by spaces (a peer's report).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        for v in self.0.iter_recorded() {
            let _ = write!(out, "{}:{} ", v.value_iterated_to(), v.count_at_value());
        }
        out.pop();
        out
    }

    /// The inverse of [`Latencies::encode`] (each value lands in the bucket it came from).
    pub(crate) fn decode(text: &str) -> Result<Latencies, String> {
        let mut l = Latencies::new();
        for pair in text.split_whitespace() {
            let (v, c) = pair
                .split_once(':')
                .and_then(|(v, c)| Some((v.parse::<u64>().ok()?, c.parse::<u64>().ok()?)))
                .ok_or_else(|| format!("bad latency bucket {pair:?}"))?;
            l.0.saturating_record_n(v, c);
        }
        Ok(l)
    }

    /// The histogram itself.
    fn histogram(&self) -> &Histogram<u64> {
        &self.0
    }

    /// Recorded iterations.
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    /// The one-way latency (ns) below which a `q` fraction of the iterations fall.
    fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// p50, p99, p99.9 and max in ns.
    pub(crate) fn summary(&self) -> [u64; 4] {
        [
            self.quantile(0.50),
            self.quantile(0.99),
            self.quantile(0.999),
            self.0.max(),
        ]
    }
}

/// Stamps a message with its sequence number (its first 8 bytes).
fn stamp(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

/// Checks a received message: its length and sequence number.
fn check(msg: &[u8], size: usize, seq: u64) -> Result<(), String> {
    if msg.len() != size {
        return Err(format!("message {seq}: got {} bytes, expected {size}", msg.len()));
    }
    let got = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
    if got != seq {
        return Err(format!("message {seq}: got message {got} (lost or reordered)"));
    }
    Ok(())
}

/// Times a stream of `n` messages: call `mark(i)` as message `i` arrives.
struct StreamClock {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl StreamClock {
    fn new() -> Self {
        StreamClock {
            first: None,
            last: None,
        }
    }

    #[inline]
    fn mark(&mut self, i: u64, n: u64) {
        if i == 0 {
            self.first = Some(Instant::now());
        }
        if i + 1 == n {
            self.last = Some(Instant::now());
        }
    }

    /// Messages per second between the first and the last arrival.
    fn rate(&self, n: u64) -> Result<f64, String> {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => Ok((n - 1) as f64 / (b - a).as_secs_f64()),
            _ => Err("the stream was too short to time".into()),
        }
    }
}

/// CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit mask; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, inside the mask.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread (and threads and processes it starts later) to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such CPU"));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE, inside the mask.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A progress line on stderr (a terminal) for a measurement that takes over a second: the
/// measurement's label and its elapsed time, rewritten in place with `\r` four times a second.
struct Progress {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
    label: String,
}

impl Progress {
    fn start(label: String, started: Instant) -> Progress {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let line = label.clone();
        let thread = std::thread::spawn(move || {
            let mut printed = false;
            let mut wait = Duration::from_secs(1);
            // Any message or a hang-up (the sender dropped) ends it.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                // \x1b[K: erase to the end of the line (what was printed after the label).
                eprint!("\r{line} ... {:.1} s\x1b[K", started.elapsed().as_secs_f64());
                printed = true;
                wait = Duration::from_millis(250);
            }
            printed
        });
        Progress { stop, thread, label }
    }

    /// Stops the ticking; if it printed, puts the label back alone for the result to follow.
    fn stop(self) {
        drop(self.stop);
        if let Ok(true) = self.thread.join() {
            eprint!("\r{}\x1b[K", self.label);
        }
    }
}

/// `shmpipe bench`.
pub(crate) fn run(args: BenchArgs) -> ExitCode {
    let started = Instant::now();
    if let Err(e) = cleanup::install() {
        eprintln!("shmpipe: bench: setting up clean-up on interruption: {e}");
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("shmpipe: bench: finding this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpus = allowed_cpus();
    let mut peer_core = None;
    let mut pinned = "no".to_string();
    if args.pin {
        if cpus.len() >= 2 {
            match pin_to(cpus[0]) {
                Ok(()) => {
                    peer_core = Some(cpus[1]);
                    pinned = format!("bench on CPU {}, peer on CPU {}", cpus[0], cpus[1]);
                }
                Err(e) => eprintln!("shmpipe: bench: --pin: sched_setaffinity: {e}; not pinning"),
            }
        } else {
            eprintln!(
                "shmpipe: bench: --pin needs two CPUs, but this process may run on {}; not pinning",
                cpus.len()
            );
        }
    }
    if cpus.len() < 2 {
        eprintln!(
            "shmpipe: bench: warning: only {} CPU available: two spinning processes take turns on \
             it, so shm and raw-atomic latencies measure the scheduler, not the transport",
            cpus.len()
        );
    }

    let (throughput_n, latency_n) = match (args.messages, args.quick) {
        (Some(n), _) => (n, n),
        (None, true) => (50_000, 10_000),
        (None, false) => (1_000_000, 100_000),
    };
    let warmup = (latency_n / 10).clamp(1, 10_000);
    // The async scenario's two 64 B streams: long enough that start-up does not weigh in them
    // (1M messages take about 20 ms).
    let async_throughput_n = if args.quick {
        throughput_n
    } else {
        ASYNC_THROUGHPUT_N
    };
    // Without --messages, a throughput run moves at most this much payload.
    let byte_cap: Option<u64> = match (args.messages, args.quick) {
        (Some(_), _) => None,
        (None, true) => Some(256 << 20),
        (None, false) => Some(1 << 30),
    };
    let sizes: Vec<usize> = if !args.size.is_empty() {
        args.size.iter().map(|&s| s as usize).collect()
    } else if args.quick {
        vec![64, 1024]
    } else {
        vec![8, 64, 1024, 65536]
    };
    let msgmax = raw::msgmax();
    let mut jobs = Vec::new();
    for scenario in Scenario::ALL {
        let wanted = if args.scenario.is_empty() {
            scenario.by_default()
        } else {
            args.scenario.contains(&scenario)
        };
        if !wanted {
            continue;
        }
        let sizes = match scenario {
            Scenario::Throughput => sizes.clone(),
            Scenario::Latency => vec![PING_SIZE],
            Scenario::Crossover if args.size.is_empty() => crossover::SIZES.to_vec(),
            Scenario::Crossover => args.size.iter().map(|&s| s as usize).collect(),
            Scenario::Mpmc => vec![mpmc::SIZE],
            Scenario::Fanout => vec![fanout::SIZE],
            Scenario::Async => {
                for (scenario, transport, size) in ASYNC_JOBS {
                    let dup = jobs
                        .iter()
                        .any(|j: &Job| j.scenario == scenario && j.transport == transport && j.size == size);
                    if dup || (!args.transport.is_empty() && !args.transport.contains(&transport)) {
                        continue;
                    }
                    let (messages, warmup) = match scenario {
                        Scenario::Latency => (latency_n, warmup),
                        _ => (args.messages.map_or(async_throughput_n, |n| n), 0),
                    };
                    jobs.push(Job {
                        scenario,
                        transport,
                        size,
                        messages,
                        warmup,
                        subscribers: 0,
                        paced: 0,
                    });
                }
                continue;
            }
        };
        let counts: &[u64] = match scenario {
            Scenario::Crossover => &crossover::COUNTS,
            _ => &[0],
        };
        for (&size, &count) in sizes.iter().flat_map(|s| counts.iter().map(move |c| (s, c))) {
            for transport in Transport::ALL {
                if !transport.supports(scenario, size)
                    || (!args.transport.is_empty() && !args.transport.contains(&transport))
                {
                    continue;
                }
                if transport == Transport::RawMsgq && size > msgmax {
                    // One msgsnd cannot carry it (ours splits it); no line rather than a failure.
                    eprintln!("shmpipe: bench: raw-msgq skips {size} B: above kernel.msgmax ({msgmax} B)");
                    continue;
                }
                let (messages, warmup) = match scenario {
                    Scenario::Throughput => (
                        byte_cap.map_or(throughput_n, |cap| throughput_n.min((cap / size as u64).max(2))),
                        0,
                    ),
                    Scenario::Latency => (latency_n, warmup),
                    Scenario::Crossover => (count, 0),
                    Scenario::Mpmc => (throughput_n, 0),
                    Scenario::Fanout => (throughput_n, 0),
                    Scenario::Async => unreachable!("made above"),
                };
                let (subscriber_counts, paced): (&[usize], u64) = match scenario {
                    Scenario::Fanout => (fanout::subscriber_counts(transport), latency_n),
                    _ => (&[0], 0),
                };
                for &subscribers in subscriber_counts {
                    jobs.push(Job {
                        scenario,
                        transport,
                        size,
                        messages,
                        warmup,
                        subscribers,
                        paced,
                    });
                }
            }
        }
    }
    if jobs.is_empty() {
        eprintln!(
            "shmpipe: bench: nothing to run (raw-atomic, raw-atomic-pair and raw-futex measure latency only, the \
             inproc- baselines throughput only, crossover compares shm, msgq and unix, shm-async runs in \
             --scenario async)"
        );
        return ExitCode::FAILURE;
    }

    let ctx = Ctx {
        exe,
        peer_core,
        seq: std::cell::Cell::new(0),
    };
    let mut rows = Vec::new();
    let mut failed = 0;
    // SAFETY: isatty only inspects descriptor 2.
    let tty = unsafe { libc::isatty(2) } == 1;
    for (i, job) in jobs.iter().enumerate() {
        let label = format!(
            "[{:>2}/{}] {} {} {} B{}",
            i + 1,
            jobs.len(),
            job.scenario.name(),
            job.transport.name(),
            job.size,
            if job.scenario == Scenario::Fanout {
                format!(" x{}", job.subscribers)
            } else {
                String::new()
            }
        );
        eprint!("{label}");
        let t = Instant::now();
        let ticker = tty.then(|| Progress::start(label.clone(), t));
        let result = measure(&ctx, job);
        if let Some(ticker) = ticker {
            ticker.stop();
        }
        let result = result.and_then(|m| match m {
            // Every timed iteration, and only those, is in the histogram.
            Measured::Latency(l) if l.len() != job.messages => Err(format!(
                "{} one-way latencies recorded for {} timed round trips",
                l.len(),
                job.messages
            )),
            m => Ok(m),
        });
        match result {
            Ok(m) => {
                eprintln!(" {:.2} s", t.elapsed().as_secs_f64());
                let (distribution, msgs_per_s, ns_per_msg, subscribers) = match m {
                    Measured::Rate(r) => (None, Some(r), None, Vec::new()),
                    Measured::Latency(l) => (Some(l), None, None, Vec::new()),
                    Measured::PerMessage(ns) => (None, None, Some(ns), Vec::new()),
                    // The row's latencies: every subscriber's together.
                    Measured::Fanout(r, subs) => (Some(fanout::merged(&subs)), Some(r), None, subs),
                };
                rows.push(Row {
                    scenario: job.scenario,
                    transport: job.transport,
                    size: job.size,
                    messages: job.messages,
                    latency: distribution.as_ref().map(Latencies::summary),
                    distribution,
                    msgs_per_s,
                    ns_per_msg,
                    subscribers,
                });
            }
            Err(e) => {
                eprintln!(" FAILED: {e}");
                failed += 1;
            }
        }
    }

    if args.json {
        for row in &rows {
            println!("{}", json_line(row, None));
            for i in 0..row.subscribers.len() {
                println!("{}", json_line(row, Some(i)));
            }
        }
    } else {
        let async_streams = jobs
            .iter()
            .find(|j| j.scenario == Scenario::Throughput && j.transport == Transport::ShmAsync)
            .filter(|j| j.messages != throughput_n)
            .map_or_else(String::new, |j| format!(", the async scenario's {}", j.messages));
        println!(
            "shmpipe bench: {} CPUs allowed, pinned: {pinned}; throughput: {throughput_n} messages per \
             run{}{async_streams}; latency: {latency_n} timed round trips of {PING_SIZE} B after {warmup} warm-up",
            cpus.len(),
            byte_cap.map_or_else(String::new, |c| format!(" (at most {} MiB)", c >> 20)),
        );
        print!("{}", table(&rows));
        print!("{}", fanout::table(&rows, cpus.len(), latency_n));
    }
    // With --json on stderr, so that stdout stays one JSON object a line.
    for line in hot_path_ratios(&rows).into_iter().chain(async_ratios(&rows)) {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    let mut plot_failed = false;
    if let Some(path) = &args.plot {
        match plot::write(path, &rows) {
            Ok(()) => eprintln!("shmpipe bench: plot written to {}", path.display()),
            Err(e) => {
                eprintln!("shmpipe bench: {}: {e}", path.display());
                plot_failed = true;
            }
        }
    }
    eprintln!(
        "shmpipe bench: {} measurements in {:.1} s{}",
        jobs.len(),
        started.elapsed().as_secs_f64(),
        if failed > 0 {
            format!(", {failed} FAILED")
        } else {
            String::new()
        }
    );
    if failed > 0 || plot_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    match job.scenario {
        Scenario::Crossover => return crossover::measure(ctx, job),
        Scenario::Mpmc => return mpmc::measure(ctx, job),
        Scenario::Fanout => return fanout::measure(ctx, job),
        Scenario::Async => return Err("no job has the async scenario".into()),
        _ => {}
    }
    match job.transport.family() {
        Family::Ours => ours::measure(ctx, job),
        Family::Raw => raw::measure(ctx, job),
        Family::Inproc => inproc::measure(ctx, job),
        Family::Crate => ipc_crate::measure(ctx, job),
    }
}

/// The hidden `bench-peer` subcommand.
pub(crate) fn peer(args: PeerArgs) -> ExitCode {
    crate::signals::ignore_terminal_signals();
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // Our parent may have died before the line above: then nobody would ever kill us.
    // SAFETY: getppid has no arguments and cannot fail.
    if unsafe { libc::getppid() } as u32 != args.parent {
        eprintln!("shmpipe bench-peer: parent {} is gone", args.parent);
        return ExitCode::FAILURE;
    }
    if let Some(cpu) = args.pin_core {
        if let Err(e) = pin_to(cpu) {
            eprintln!("shmpipe bench-peer: pinning to CPU {cpu}: {e}");
        }
    }
    let result = if args.scenario == Scenario::Crossover {
        crossover::peer(&args)
    } else if args.scenario == Scenario::Mpmc {
        mpmc::peer(&args)
    } else if args.scenario == Scenario::Fanout {
        fanout::peer(&args)
    } else {
        match args.transport.family() {
            Family::Ours => ours::peer(&args),
            Family::Raw => raw::peer(&args),
            Family::Crate => ipc_crate::peer(&args),
            Family::Inproc => Err("an in-process baseline has no peer".into()),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "shmpipe bench-peer ({} {}): {e}",
                args.scenario.name(),
                args.transport.name()
            );
            ExitCode::FAILURE
        }
    }
}

/// The JSON line of a row, or with `subscriber` of one fanout subscriber: its own latencies
/// and losses, no rate (the publisher's is on the row's line).
fn json_line(row: &Row, subscriber: Option<usize>) -> String {
    fn int(v: Option<u64>) -> String {
        v.map_or_else(|| "null".into(), |v| v.to_string())
    }
    fn float(v: Option<f64>) -> String {
        v.map_or_else(|| "null".into(), |v| format!("{v:.1}"))
    }
    let sub = subscriber.map(|i| &row.subscribers[i]);
    let latency = match sub {
        Some(s) => Some(s.latency.summary()),
        None => row.latency,
    };
    let l = |i: usize| int(latency.map(|l| l[i]));
    let (msgs_per_s, bytes_per_s) = match sub {
        Some(_) => (None, None),
        None => (row.msgs_per_s, row.bytes_per_s()),
    };
    let fanout = row.scenario == Scenario::Fanout;
    format!(
        "{{\"scenario\":\"{}\",\"transport\":\"{}\",\"size\":{},\"messages\":{},\"p50_ns\":{},\
         \"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{},\"msgs_per_s\":{},\"bytes_per_s\":{},\
         \"ns_per_msg\":{},\"subscribers\":{},\"subscriber\":{},\"missed\":{}}}",
        row.scenario.name(),
        row.transport.name(),
        row.size,
        row.messages,
        l(0),
        l(1),
        l(2),
        l(3),
        float(msgs_per_s),
        float(bytes_per_s),
        int(row.ns_per_msg),
        int(fanout.then_some(row.subscribers.len() as u64)),
        int(subscriber.map(|i| i as u64)),
        int(sub.map_or_else(|| row.missed(), |s| Some(s.missed))),
    )
}

/// A ratio as "1.23x", or in scientific notation below 0.1 ("2.10e-3x", not "0.00x").
fn times(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.2e}x")
    } else {
        format!("{r:.2}x")
    }
}

/// The SPSC ring's hot path against its references in the same run, with the targets of issue
/// 11: spinning one-way p50 <= 1.3x `raw-atomic` (and, beside it, the ratio to `raw-atomic-pair`,
/// the floor of two one-way channels); 8 B in-process >= 1.0x `inproc-rtrb`; 8 B across
/// processes >= 0.5x `inproc-rtrb`. A line only for what the run measured.
fn hot_path_ratios(rows: &[Row]) -> Vec<String> {
    let find = |t: Transport, s: Scenario, size: usize| {
        rows.iter()
            .find(move |r| r.transport == t && r.scenario == s && r.size == size)
    };
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let p50 = |t: Transport| {
        find(t, Scenario::Latency, PING_SIZE)
            .and_then(|r| r.latency)
            .map(|l| l[0])
    };
    let rate = |t: Transport| find(t, Scenario::Throughput, 8).and_then(|r| r.msgs_per_s);
    let mut out = Vec::new();
    if let (Some(ours), Some(floor)) = (p50(Transport::Shm), p50(Transport::RawAtomic)) {
        let r = ours as f64 / floor.max(1) as f64;
        let pair = p50(Transport::RawAtomicPair).map_or_else(String::new, |p| {
            format!(
                " ({} raw-atomic-pair, {p} ns)",
                times(ours as f64 / p.max(1) as f64)
            )
        });
        out.push(format!(
            "hot path: latency p50 shm / raw-atomic: {} ({ours} / {floor} ns){pair}; target <= 1.3x: {}",
            times(r),
            met(r <= 1.3)
        ));
    }
    let rtrb = rate(Transport::InprocRtrb);
    for (t, target) in [(Transport::InprocRing, 1.0), (Transport::Shm, 0.5)] {
        if let (Some(ours), Some(rtrb)) = (rate(t), rtrb) {
            let r = ours / rtrb;
            out.push(format!(
                "hot path: throughput 8 B {} / inproc-rtrb: {} ({ours:.0} / {rtrb:.0} msgs/s); target >= {target:.1}x: {}",
                t.name(),
                times(r),
                met(r >= target)
            ));
        }
    }
    out
}

/// The `shm-async` rows against the blocking rows of the same run, with the targets of issue 16
/// item 5: async parked wake p50/p99 <= 2x `shm-park`; async 64 B stream >= 0.5x `shm`.
fn async_ratios(rows: &[Row]) -> Vec<String> {
    let find = |t: Transport, s: Scenario| {
        rows.iter().find(move |r| {
            r.transport == t && r.scenario == s && (s != Scenario::Throughput || r.size == ASYNC_SIZE)
        })
    };
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (
        find(Transport::ShmAsync, Scenario::Latency).and_then(|r| r.latency),
        find(Transport::ShmPark, Scenario::Latency).and_then(|r| r.latency),
    ) {
        let (p50, p99) = (a[0] as f64 / b[0].max(1) as f64, a[1] as f64 / b[1].max(1) as f64);
        out.push(format!(
            "async ratio: latency shm-async / shm-park: p50 {} ({} / {} ns), p99 {} ({} / {} ns); \
             target <= 2x: {}",
            times(p50),
            a[0],
            b[0],
            times(p99),
            a[1],
            b[1],
            met(p50 <= 2.0 && p99 <= 2.0)
        ));
    }
    if let (Some(a), Some(b)) = (
        find(Transport::ShmAsync, Scenario::Throughput).and_then(|r| r.msgs_per_s),
        find(Transport::Shm, Scenario::Throughput).and_then(|r| r.msgs_per_s),
    ) {
        let r = a / b;
        out.push(format!(
            "async ratio: throughput {ASYNC_SIZE} B shm-async / shm: {} ({a:.0} / {b:.0} msgs/s); \
             target >= 0.5x: {}",
            times(r),
            met(r >= 0.5)
        ));
    }
    out
}

/// The row's comparison with its baseline, if both were measured.
fn versus(row: &Row, rows: &[Row]) -> String {
    if row.scenario == Scenario::Fanout {
        return fanout::versus(row, rows);
    }
    let find = |t: Transport| {
        rows.iter()
            .find(|b| b.transport == t && b.scenario == row.scenario && b.size == row.size)
    };
    let mut parts = Vec::new();
    if let Some((base_t, base)) = row
        .transport
        .baseline(row.scenario)
        .and_then(|t| find(t).map(|b| (t, b)))
    {
        match (row.latency, base.latency, row.msgs_per_s, base.msgs_per_s) {
            (Some(l), Some(b), _, _) => parts.push(format!(
                "p50 {:.2}x p99 {:.2}x {}",
                l[0] as f64 / b[0].max(1) as f64,
                l[1] as f64 / b[1].max(1) as f64,
                base_t.name()
            )),
            (_, _, Some(r), Some(b)) => parts.push(format!("{:.2}x {}", r / b, base_t.name())),
            _ => {}
        }
    }
    // The spinning ring also next to the floor of two one-way channels.
    if (row.transport, row.scenario) == (Transport::Shm, Scenario::Latency) {
        if let (Some(l), Some(b)) = (
            row.latency,
            find(Transport::RawAtomicPair).and_then(|b| b.latency),
        ) {
            parts.push(format!(
                "p50 {:.2}x raw-atomic-pair",
                l[0] as f64 / b[0].max(1) as f64
            ));
        }
    }
    // Our ring across processes next to the usual in-process queue, and next to another
    // crate's shared-memory channel between the same two processes.
    if matches!(row.transport, Transport::Shm | Transport::ShmPark) {
        let inproc = find(Transport::InprocArrayqueue).and_then(|b| b.msgs_per_s);
        if let (Some(r), Some(b)) = (row.msgs_per_s, inproc) {
            parts.push(format!("{:.2}x inproc-arrayqueue", r / b));
        }
        if let Some(other) = find(Transport::Ipmpsc) {
            match (row.latency, other.latency, row.msgs_per_s, other.msgs_per_s) {
                (Some(l), Some(b), _, _) => {
                    parts.push(format!("p50 {} ipmpsc", times(l[0] as f64 / b[0].max(1) as f64)))
                }
                (_, _, Some(r), Some(b)) => parts.push(format!("{} ipmpsc", times(r / b))),
                _ => {}
            }
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    if rows.iter().all(|r| r.scenario == Scenario::Crossover) {
        return crossover_table(rows);
    }
    let _ = writeln!(
        out,
        "{:<10} {:<22} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12} {:>9}  vs raw",
        "scenario",
        "transport",
        "size",
        "messages",
        "p50 ns",
        "p99 ns",
        "p99.9 ns",
        "max ns",
        "msgs/s",
        "MB/s"
    );
    let dash = || "-".to_string();
    for row in rows.iter().filter(|r| r.scenario != Scenario::Crossover) {
        let l = |i: usize| row.latency.map_or_else(dash, |l| l[i].to_string());
        let _ = writeln!(
            out,
            "{:<10} {:<22} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12} {:>9}  {}",
            row.scenario.name(),
            row.label(),
            row.size,
            row.messages,
            l(0),
            l(1),
            l(2),
            l(3),
            row.msgs_per_s.map_or_else(dash, |r| format!("{r:.0}")),
            row.bytes_per_s().map_or_else(dash, |b| format!("{:.1}", b / 1e6)),
            versus(row, rows)
        );
    }
    out.push_str(
        "latency: one way = round trip / 2, HdrHistogram percentiles (3 digits), warm-up excluded; MB = 10^6 bytes of payload.\n\
         vs raw: latency = ours / baseline (1.00x: as fast as the raw floor; higher is slower);\n\
         throughput = our msgs/s / baseline msgs/s (higher is faster); shm also / inproc-arrayqueue\n\
         and / ipmpsc (another crate's shared-memory channel, across the same two processes).\n\
         inproc-*: two threads of this process (no peer); arrayqueue and rtrb carry [u8; N],\n\
         N = size rounded up to a power of two, and skip sizes above 1024 B.\n\
         Spinning rows (shm, raw-atomic*, inproc-*) need two idle CPUs.\n",
    );
    if rows.iter().any(|r| r.transport == Transport::ShmAsync) {
        out.push_str(
            "shm-async: the receiving side awaits recv_async in a tokio current-thread runtime (latency: both\n\
             receivers; throughput: ours, the peer's sender spins as for shm); vs: shm-park (latency), shm.\n",
        );
    }
    if rows.iter().any(|r| r.scenario == Scenario::Fanout) {
        out.push_str(
            "fanout: TRANSPORT xN = N subscribers; msgs/s: the publisher's; latency: one way, from a send\n\
             timestamp to each subscriber (see below); vs: broadcast x1 / shm (SPSC), inproc-bcast / inproc-bus.\n",
        );
    }
    out.push_str(&crossover_table(rows));
    out
}

/// The crossover rows as a matrix: size and count down, transports across, the fastest marked.
fn crossover_table(rows: &[Row]) -> String {
    let cross: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Crossover)
        .collect();
    if cross.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncrossover: ns per message of open + send N + close, setup included (median of trials)"
    );
    let _ = write!(out, "{:>6} {:>5}", "size", "N");
    for t in crossover::TRANSPORTS {
        let _ = write!(out, " {:>11}", t.name());
    }
    let _ = writeln!(out, "  fastest");
    let mut keys: Vec<(usize, u64)> = cross.iter().map(|r| (r.size, r.messages)).collect();
    keys.sort_unstable();
    keys.dedup();
    for (size, n) in keys {
        let _ = write!(out, "{size:>6} {n:>5}");
        let mut best: Option<(u64, Transport)> = None;
        for t in crossover::TRANSPORTS {
            let v = cross
                .iter()
                .find(|r| r.transport == t && r.size == size && r.messages == n)
                .and_then(|r| r.ns_per_msg);
            let _ = write!(out, " {:>11}", v.map_or_else(|| "-".into(), |v| v.to_string()));
            if let Some(v) = v {
                if best.is_none_or(|(b, _)| v < b) {
                    best = Some((v, t));
                }
            }
        }
        let _ = writeln!(out, "  {}", best.map_or("-", |(_, t)| t.name()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_command_line() {
        for t in Transport::ALL {
            assert_eq!(Transport::from_str(t.name(), false), Ok(t));
        }
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_str(s.name(), false), Ok(s));
        }
    }

    #[test]
    fn percentiles_are_of_half_round_trips_within_a_thousandth() {
        let mut l = Latencies::new();
        for i in 1..=1000u64 {
            l.record_round_trip(Duration::from_nanos(i * 2));
        }
        assert_eq!(l.len(), 1000);
        assert_eq!(l.summary(), [500, 990, 999, 1000]);
        let mut l = Latencies::new();
        l.record_round_trip(Duration::from_nanos(10));
        assert_eq!(l.summary(), [5, 5, 5, 5]);
    }

    #[test]
    fn large_latencies_keep_three_digits_and_saturate() {
        let mut l = Latencies::new();
        for us in [20_000u64, 21_000, 1_000_000] {
            l.record_round_trip(Duration::from_nanos(2 * us));
        }
        let [p50, _, _, max] = l.summary();
        assert!((21_000..=21_021).contains(&p50), "{p50}");
        assert!((1_000_000..=1_001_000).contains(&max), "{max}");
        l.record_round_trip(Duration::from_secs(3600));
        assert!(l.summary()[3] >= Latencies::HIGHEST_NS);
    }
}
