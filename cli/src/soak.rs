//! `shmpipe soak`: a long run of checked traffic between two child processes, with random
//! SIGKILLs, that must end with no damaged, reordered or duplicated message and no SysV object
//! left behind.
//!
//! Each *epoch* is one producer and one consumer (this binary re-executed as the hidden
//! `soak-producer` and `soak-consumer` subcommands, as `demo` and `bench` do) on a ring of its
//! own, `NAME-PID-N`; the epoch number is the stream id. Every message is
//! `stream id (u64 LE) | sequence (u64 LE) | payload | CRC-32 of all before it (u32 LE)`, with a
//! payload of 0 to [`MAX_PAYLOAD`] bytes drawn from a PRNG seeded by `--seed` and the stream id.
//! The consumer checks every message (checksum, stream id, sequence exactly one more than the
//! last) and both children report their counts on stdout every [`REPORT_EVERY`].
//!
//! Every `--kill-every` ms on average (uniformly 0.5 to 1.5 times it) and once the consumer has
//! received something, the producer, the consumer or (one time in ten) both are SIGKILLed. The
//! survivor must notice (the consumer drains and gets `Disconnected` with a dead peer; the
//! producer gets `Disconnected` once the ring is full) and exit, removing the ring as it drops.
//! If the ring's SysV object is still there afterwards (always, when both were killed), the old
//! name is reopened as a receiver and dropped, which must recycle and remove it. Then a new epoch
//! starts on a new name. Messages a killed stream sent but that were never received are counted
//! as "lost at kills", which is not an error; everywhere else, sent must equal received.
//!
//! Watchdogs: an epoch whose consumer makes no progress for [`STALL`], or a survivor that does
//! not exit within [`STALL`], is a hang (an error; the processes are killed); and the whole run
//! is abandoned (children killed, exit 1) if it outlives its duration by [`RUN_GRACE`].
//!
//! At the end, any entry of `/proc/sysvipc/shm`, `/proc/sysvipc/msg` or `/proc/sysvipc/sem` (a
//! message queue's liveness semaphore set lives at the queue's key; a ring's set is private, key
//! 0) whose key is that of a name used is a leak. Exit 0 only with no error and no leak.
//!
//! SIGINT, SIGTERM or SIGHUP ends the run early the same way (the last pair closes cleanly, the
//! report includes the leak check), then exits with 128 + the signal. The children ignore
//! SIGINT and SIGHUP, which a terminal sends to the whole process group: stopping them is ours.

use clap::Args;
use shmpipe::endpoint::Endpoint;
use shmpipe::transport::shm::key_for_name;
use shmpipe::{Peer, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes before the payload: stream id and sequence.
const HEAD: usize = 16;
/// Bytes after the payload: the CRC-32.
const TAIL: usize = 4;
/// Largest payload; the largest message (1020 bytes) fits the default ring's 1024.
const MAX_PAYLOAD: usize = 1000;
/// Largest message.
const MAX_MESSAGE: usize = HEAD + MAX_PAYLOAD + TAIL;
/// How often each child reports its counts.
const REPORT_EVERY: Duration = Duration::from_millis(20);
/// No progress for this long is a hang.
const STALL: Duration = Duration::from_secs(10);
/// The whole run is abandoned this long after its duration.
const RUN_GRACE: Duration = Duration::from_secs(120);

/// `shmpipe soak` options.
#[derive(Args, Debug)]
pub(crate) struct SoakArgs {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// shm://NAME or msgq://NAME (options allowed): each producer/consumer pair gets its own
    /// ring NAME-PID-N.
    #[arg(long, default_value = "shm://soak")]
    endpoint: String,
    /// Mean milliseconds between kills (each interval uniformly 0.5 to 1.5 times it); 0: none.
    #[arg(long, default_value_t = 1000)]
    kill_every: u64,
    /// Seed of every random choice and payload (default: from the clock; it is reported).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// The hidden `soak-producer` / `soak-consumer` subcommands.
#[derive(Args, Debug)]
pub(crate) struct ChildArgs {
    endpoint: String,
    #[arg(long)]
    stream: u64,
    #[arg(long)]
    seed: u64,
    /// Our parent's pid: if it is already gone when we start, we leave.
    #[arg(long)]
    parent: u32,
}

// ---------------------------------------------------------------------------------------------
// Messages

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), one table lookup per byte.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// SplitMix64: small, fast, and good enough for lengths, payloads and choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// The generator of stream `stream` under `seed`.
    fn for_stream(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }
}

/// Writes message `seq` of `stream` into `buf`.
fn build(buf: &mut Vec<u8>, stream: u64, seq: u64, rng: &mut Rng) {
    buf.clear();
    buf.extend_from_slice(&stream.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    let len = rng.below(MAX_PAYLOAD as u64 + 1) as usize;
    while buf.len() < HEAD + len {
        let word = rng.next().to_le_bytes();
        let n = (HEAD + len - buf.len()).min(8);
        buf.extend_from_slice(&word[..n]);
    }
    let crc = crc32(buf);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// `(stream, sequence)` of a message whose checksum holds; `None` if it is damaged.
fn verify(msg: &[u8]) -> Option<(u64, u64)> {
    if msg.len() < HEAD + TAIL {
        return None;
    }
    let (body, tail) = msg.split_at(msg.len() - TAIL);
    if crc32(body) != u32::from_le_bytes(tail.try_into().ok()?) {
        return None;
    }
    let stream = u64::from_le_bytes(body[..8].try_into().ok()?);
    let seq = u64::from_le_bytes(body[8..16].try_into().ok()?);
    Some((stream, seq))
}

/// What a consumer has checked so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Checked {
    /// Messages received (damaged ones included).
    received: u64,
    bytes: u64,
    /// One past the highest sequence received: the next one expected.
    next: u64,
    /// Damaged messages.
    checksum: u64,
    /// Sequence gaps (a message lost with both ends alive) and messages of another stream.
    order: u64,
    /// Sequences at or below one already received.
    duplicate: u64,
}

impl Checked {
    fn check(&mut self, msg: &[u8], stream: u64) {
        self.received += 1;
        self.bytes += msg.len() as u64;
        match verify(msg) {
            None => self.checksum += 1,
            Some((s, _)) if s != stream => self.order += 1,
            Some((_, seq)) if seq < self.next => self.duplicate += 1,
            Some((_, seq)) => {
                if seq > self.next {
                    self.order += 1;
                }
                self.next = seq + 1;
            }
        }
    }

    fn errors(&self) -> u64 {
        self.checksum + self.order + self.duplicate
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what} {} {} {} {} {} {}",
            self.received, self.bytes, self.next, self.checksum, self.order, self.duplicate
        )
    }

    /// Parses the numbers of [`line`](Self::line) (after its first word).
    fn parse(words: &[&str]) -> Option<Checked> {
        let n: Vec<u64> = words
            .iter()
            .take(6)
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        let [received, bytes, next, checksum, order, duplicate] = n[..] else {
            return None;
        };
        Some(Checked {
            received,
            bytes,
            next,
            checksum,
            order,
            duplicate,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The children

/// The epoch's endpoint with room for our largest message.
fn child_endpoint(endpoint: &str) -> Result<Endpoint, shmpipe::Error> {
    let mut ep = Endpoint::parse(endpoint)?;
    match &mut ep {
        Endpoint::Shm(cfg) => cfg.max_message = cfg.max_message.max(MAX_MESSAGE),
        Endpoint::Msgq(cfg) => cfg.max_message = cfg.max_message.max(MAX_MESSAGE),
        _ => {}
    }
    Ok(ep)
}

/// Dies with the parent, and leaves Ctrl-C and hang-ups to it (it ends the run cleanly); `false`
/// if the parent is already gone.
fn tie_to_parent(parent: u32) -> bool {
    crate::signals::ignore_terminal_signals();
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::getppid() as u32 == parent }
}

fn child_fail(who: &str, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("shmpipe {who}: {msg}");
    ExitCode::FAILURE
}

/// The hidden `soak-producer`: sends stream `--stream` until stdin closes, or until the consumer
/// is gone. Reports `sent N BYTES` as it goes and `done N BYTES closed|disconnected` at the end.
pub(crate) fn produce(args: ChildArgs) -> ExitCode {
    const WHO: &str = "soak-producer";
    if !tie_to_parent(args.parent) {
        return child_fail(WHO, "the soak process is gone");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::clone(&stop);
    // The driver closes our stdin to end the stream cleanly.
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        stop_reader.store(true, Relaxed);
    });
    let mut tx = match child_endpoint(&args.endpoint).and_then(|ep| ep.open_sender()) {
        Ok(tx) => tx,
        Err(e) => return child_fail(WHO, format_args!("opening {}: {e}", args.endpoint)),
    };
    let mut out = io::stdout().lock();
    let mut rng = Rng::for_stream(args.seed, args.stream);
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    let (mut sent, mut bytes) = (0u64, 0u64);
    let mut pending = false;
    let mut last_report = Instant::now();
    let end = loop {
        if stop.load(Relaxed) {
            break "closed";
        }
        if !pending {
            build(&mut buf, args.stream, sent, &mut rng);
            pending = true;
        }
        match tx.send_timeout(&buf, REPORT_EVERY) {
            Ok(()) => {
                sent += 1;
                bytes += buf.len() as u64;
                pending = false;
            }
            Err(SendTimeoutError::Timeout) => {}
            Err(SendTimeoutError::Disconnected) => break "disconnected",
            Err(e) => {
                let _ = writeln!(out, "sent {sent} {bytes}");
                return child_fail(WHO, format_args!("after {sent} messages: {e}"));
            }
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            if writeln!(out, "sent {sent} {bytes}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return child_fail(WHO, "the soak process stopped listening");
            }
        }
    };
    if end == "closed" {
        if let Err(e) = tx.flush_deadline(Instant::now().checked_add(STALL)) {
            return child_fail(WHO, format_args!("flushing after {sent} messages: {e}"));
        }
    }
    drop(tx);
    let _ = writeln!(out, "done {sent} {bytes} {end}").and_then(|()| out.flush());
    ExitCode::SUCCESS
}

/// The hidden `soak-consumer`: receives and checks stream `--stream` until the producer is gone.
/// Reports `recv ...` ([`Checked::line`]) as it goes and `done ... closed|dead|gone` at the end.
pub(crate) fn consume(args: ChildArgs) -> ExitCode {
    const WHO: &str = "soak-consumer";
    if !tie_to_parent(args.parent) {
        return child_fail(WHO, "the soak process is gone");
    }
    let mut rx = match child_endpoint(&args.endpoint).and_then(|ep| ep.open_receiver()) {
        Ok(rx) => rx,
        Err(e) => return child_fail(WHO, format_args!("opening {}: {e}", args.endpoint)),
    };
    let mut out = io::stdout().lock();
    let mut checked = Checked::default();
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    let mut last_report = Instant::now();
    let end = loop {
        match rx.recv_timeout(&mut buf, REPORT_EVERY) {
            Ok(()) => checked.check(&buf, args.stream),
            Err(RecvTimeoutError::Timeout) => {}
            // `gone`: the transport cannot tell a clean close from a death (msgq's receiver).
            Err(RecvTimeoutError::Disconnected) => match rx.peer() {
                Some(Peer::Dead) => break "dead",
                None => break "gone",
                Some(_) => break "closed",
            },
            Err(e) => {
                let _ = writeln!(out, "{}", checked.line("recv"));
                return child_fail(WHO, format_args!("after {} messages: {e}", checked.received));
            }
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            if writeln!(out, "{}", checked.line("recv"))
                .and_then(|()| out.flush())
                .is_err()
            {
                return child_fail(WHO, "the soak process stopped listening");
            }
        }
    };
    drop(rx);
    let _ = writeln!(out, "{} {end}", checked.line("done")).and_then(|()| out.flush());
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// The driver

/// Pids of our live children, for the run watchdog. A pid leaves the list when it is reaped,
/// under the lock, so the watchdog never signals a reused pid.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

/// One child: killed (if still running) and reaped on drop.
struct Proc {
    role: Role,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Exit status once reaped: `Some(true)` for success, `Some(false)` for anything else.
    exited: Option<bool>,
    killed: bool,
}

/// A line a child printed.
struct Line {
    role: Role,
    text: String,
}

impl Proc {
    fn spawn(
        role: Role,
        exe: &std::path::Path,
        endpoint: &str,
        stream: u64,
        seed: u64,
        lines: &mpsc::Sender<Line>,
    ) -> Result<Proc, String> {
        let sub = match role {
            Role::Producer => "soak-producer",
            Role::Consumer => "soak-consumer",
        };
        let mut cmd = Command::new(exe);
        cmd.args([sub, endpoint])
            .args(["--stream", &stream.to_string(), "--seed", &seed.to_string()])
            .args(["--parent", &std::process::id().to_string()])
            .stdout(Stdio::piped())
            .stdin(if role == Role::Producer {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut list = live();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning the {}: {e}", role.name()))?;
        list.push(child.id());
        drop(list);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let lines = lines.clone();
        let reader = std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for text in BufReader::new(stdout).lines() {
                let Ok(text) = text else { return };
                if lines.send(Line { role, text }).is_err() {
                    return;
                }
            }
        });
        Ok(Proc {
            role,
            child: Some(child),
            stdin,
            reader: Some(reader),
            exited: None,
            killed: false,
        })
    }

    /// Reaps the child if it has exited; `true` once it has.
    fn poll(&mut self) -> bool {
        if self.exited.is_some() {
            return true;
        }
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let mut list = live();
        match child.try_wait() {
            Ok(None) => false,
            done => {
                self.exited = Some(matches!(done, Ok(Some(s)) if s.success()));
                let pid = child.id();
                list.retain(|p| *p != pid);
                true
            }
        }
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exited.is_none() {
                let _ = child.kill();
                self.killed = true;
            }
        }
    }

    /// Kills, reaps, and waits for the reader to see the end of the child's output.
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut list = live();
            if self.exited.is_none() {
                let _ = child.kill();
                let status = child.wait();
                self.exited = Some(matches!(status, Ok(s) if s.success()));
            }
            let pid = child.id();
            list.retain(|p| *p != pid);
        }
        self.stdin = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.reap();
    }
}

/// What the producer last said.
#[derive(Default)]
struct Sent {
    sent: u64,
    /// `closed` or `disconnected`, once it is done.
    end: Option<String>,
}

/// What the consumer last said.
#[derive(Default)]
struct Received {
    /// Whether the consumer said anything yet: it only does once it has opened the ring.
    opened: bool,
    checked: Checked,
    /// `closed`, `dead` or `gone`, once it is done.
    end: Option<String>,
}

/// One producer/consumer pair on one ring.
struct Epoch {
    stream: u64,
    name: String,
    endpoint: String,
    producer: Proc,
    consumer: Proc,
    lines: mpsc::Receiver<Line>,
    sent: Sent,
    received: Received,
    /// Consumer progress (`next`), and when it last moved.
    progress: (u64, Instant),
}

impl Epoch {
    /// Takes in what the children printed, waiting at most `wait` for the first line.
    fn drain(&mut self, wait: Duration) {
        let mut next = self.lines.recv_timeout(wait).ok();
        while let Some(line) = next {
            let words: Vec<&str> = line.text.split_whitespace().collect();
            match (line.role, words.first().copied()) {
                (Role::Producer, Some(w @ ("sent" | "done"))) => {
                    if let Some(n) = words.get(1).and_then(|n| n.parse().ok()) {
                        self.sent.sent = n;
                    }
                    if w == "done" {
                        self.sent.end = Some(words.get(3).unwrap_or(&"?").to_string());
                    }
                }
                (Role::Consumer, Some(w @ ("recv" | "done"))) => {
                    self.received.opened = true;
                    if let Some(c) = Checked::parse(&words[1..]) {
                        self.received.checked = c;
                    }
                    if w == "done" {
                        self.received.end = Some(words.get(7).unwrap_or(&"?").to_string());
                    }
                }
                _ => eprintln!(
                    "shmpipe soak: unexpected line from the {}: {}",
                    line.role.name(),
                    line.text
                ),
            }
            next = self.lines.try_recv().ok();
        }
        let now = Instant::now();
        if self.received.checked.next != self.progress.0 {
            self.progress = (self.received.checked.next, now);
        }
    }

    /// Waits, for at most [`STALL`], until the consumer has opened the ring (or has exited). A
    /// producer closed before that may have created the ring and removed it again (it sent
    /// nothing and saw no receiver), and the consumer would then wait for ever on a new one.
    fn wait_consumer_open(&mut self) {
        let deadline = Instant::now() + STALL;
        while !self.received.opened && !self.consumer.poll() && Instant::now() < deadline {
            self.drain(Duration::from_millis(5));
        }
    }

    /// Waits for both children to exit, for at most [`STALL`]; `false` if one had to be killed.
    fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + STALL;
        loop {
            self.drain(Duration::from_millis(5));
            let done = self.producer.poll() & self.consumer.poll();
            if done {
                break;
            }
            if Instant::now() >= deadline {
                self.producer.kill();
                self.consumer.kill();
                self.producer.reap();
                self.consumer.reap();
                self.drain(Duration::ZERO);
                return false;
            }
        }
        self.producer.reap();
        self.consumer.reap();
        self.drain(Duration::ZERO);
        true
    }
}

/// The run's totals.
#[derive(Default)]
struct Totals {
    messages: u64,
    bytes: u64,
    kills_producer: u64,
    kills_consumer: u64,
    kills_both: u64,
    restarts: u64,
    epochs: u64,
    err_checksum: u64,
    err_order: u64,
    err_duplicate: u64,
    /// Messages missing from a stream none of whose processes was killed.
    err_lost: u64,
    err_hang: u64,
    /// A child that failed, or ended the wrong way.
    err_child: u64,
    /// A stale ring that reopening did not remove.
    err_stale: u64,
    lost_at_kills: u64,
    recycled: u64,
    leaked: u64,
}

impl Totals {
    fn kills(&self) -> u64 {
        self.kills_producer + self.kills_consumer + self.kills_both
    }

    fn errors(&self) -> u64 {
        self.err_checksum
            + self.err_order
            + self.err_duplicate
            + self.err_lost
            + self.err_hang
            + self.err_child
            + self.err_stale
    }
}

/// The base endpoint, split: scheme, name, and `?options` (or "").
fn split_endpoint(endpoint: &str) -> Result<(&str, &str, &str), String> {
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| format!("{endpoint}: expected shm://NAME or msgq://NAME"))?;
    if !matches!(scheme, "shm" | "msgq") {
        return Err(format!(
            "{endpoint}: soak runs on shm:// and msgq:// (the leak check counts SysV objects)"
        ));
    }
    let (name, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if name.starts_with("0x") || name.starts_with("0X") {
        return Err(format!("{endpoint}: soak needs a NAME, not a raw key"));
    }
    Ok((scheme, name, query))
}

/// Keys of SysV objects listed in `/proc/sysvipc/{shm,msg,sem}`.
fn sysv_keys() -> Result<Vec<i32>, String> {
    let mut keys = Vec::new();
    for file in ["/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem"] {
        let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
        keys.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next()?.parse::<i32>().ok()),
        );
    }
    Ok(keys)
}

struct Driver {
    exe: std::path::PathBuf,
    scheme: String,
    base: String,
    query: String,
    seed: u64,
    rng: Rng,
    names: Vec<String>,
    totals: Totals,
}

impl Driver {
    fn start_epoch(&mut self) -> Result<Epoch, String> {
        let stream = self.totals.epochs;
        self.totals.epochs += 1;
        let name = format!("{}-{}-{stream}", self.base, std::process::id());
        let endpoint = format!("{}://{name}{}", self.scheme, self.query);
        self.names.push(name.clone());
        let (tx, rx) = mpsc::channel();
        let consumer = Proc::spawn(Role::Consumer, &self.exe, &endpoint, stream, self.seed, &tx)?;
        let producer = Proc::spawn(Role::Producer, &self.exe, &endpoint, stream, self.seed, &tx)?;
        Ok(Epoch {
            stream,
            name,
            endpoint,
            producer,
            consumer,
            lines: rx,
            sent: Sent::default(),
            received: Received::default(),
            progress: (0, Instant::now()),
        })
    }

    /// Accounts for a finished epoch (both children reaped); `clean` if nothing was killed.
    fn finish_epoch(&mut self, e: &Epoch, clean: bool) {
        let t = &mut self.totals;
        let c = e.received.checked;
        t.messages += c.received;
        t.bytes += c.bytes;
        t.err_checksum += c.checksum;
        t.err_order += c.order;
        t.err_duplicate += c.duplicate;
        let sent = e.sent.sent.max(c.next);
        let lost = sent - c.next;
        let complain = |what: String| {
            eprintln!("shmpipe soak: stream {} ({}): {what}", e.stream, e.endpoint);
        };
        if c.errors() > 0 {
            complain(format!(
                "{} damaged, {} out of order, {} duplicated",
                c.checksum, c.order, c.duplicate
            ));
        }
        if clean {
            t.err_lost += lost;
            if lost > 0 {
                complain(format!("{lost} of {sent} messages lost with no process killed"));
            }
            let ok = e.producer.exited == Some(true)
                && e.consumer.exited == Some(true)
                && e.sent.end.as_deref() == Some("closed")
                && matches!(e.received.end.as_deref(), Some("closed" | "gone"));
            if !ok {
                t.err_child += 1;
                complain(format!(
                    "expected a clean close; producer {:?} ended {:?}, consumer {:?} ended {:?}",
                    e.producer.exited, e.sent.end, e.consumer.exited, e.received.end
                ));
            }
        } else {
            t.lost_at_kills += lost;
            // The survivor must have noticed the death and left cleanly.
            for (p, end, want) in [
                (&e.producer, &e.sent.end, &["disconnected"][..]),
                (&e.consumer, &e.received.end, &["dead", "gone"][..]),
            ] {
                let ended_right = end.as_deref().is_some_and(|end| want.contains(&end));
                if !p.killed && (p.exited != Some(true) || !ended_right) {
                    t.err_child += 1;
                    complain(format!(
                        "the surviving {} exited {:?} and ended {end:?}, expected {want:?}",
                        p.role.name(),
                        p.exited
                    ));
                }
            }
        }
        self.check_stale(e);
    }

    /// If the epoch's SysV object is still there, reopening its name must recycle it.
    fn check_stale(&mut self, e: &Epoch) {
        let key = key_for_name(&e.name);
        let present = || sysv_keys().map(|keys| keys.contains(&key)).unwrap_or(false);
        if !present() {
            return;
        }
        match Endpoint::parse(&e.endpoint)
            .and_then(|ep| match ep {
                Endpoint::Shm(mut cfg) => {
                    cfg.max_message = cfg.max_message.max(MAX_MESSAGE);
                    Endpoint::Shm(cfg).open_receiver()
                }
                ep => ep.open_receiver(),
            })
            .map(drop)
        {
            Ok(()) if !present() => self.totals.recycled += 1,
            Ok(()) => {
                self.totals.err_stale += 1;
                eprintln!(
                    "shmpipe soak: {} was reopened and dropped but is still there",
                    e.endpoint
                );
            }
            Err(err) => {
                self.totals.err_stale += 1;
                eprintln!("shmpipe soak: reopening the stale {}: {err}", e.endpoint);
            }
        }
    }

    /// Milliseconds to the next kill.
    fn kill_interval(&mut self, every: u64) -> Duration {
        Duration::from_millis(every / 2 + self.rng.below(every.max(1)))
    }
}

/// `shmpipe soak`.
pub(crate) fn run(args: SoakArgs) -> ExitCode {
    // Before any thread or child starts.
    if let Err(e) = crate::signals::record() {
        eprintln!("shmpipe soak: setting up clean-up on signals: {e}");
        return ExitCode::FAILURE;
    }
    match soak(&args) {
        Ok((totals, elapsed, desc)) => {
            let ok = totals.errors() == 0 && totals.leaked == 0;
            if args.json {
                println!("{}", json(&totals, elapsed, &desc));
            } else {
                print!("{}", report(&totals, elapsed, &desc));
                println!("result: {}", if ok { "ok" } else { "FAILED" });
            }
            if let Some(sig) = crate::signals::caught() {
                eprintln!(
                    "shmpipe soak: {}: the run was cut short, and ended as at its end",
                    crate::signals::name(sig)
                );
                return crate::signals::exit_code(sig);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("shmpipe soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the run was: endpoint pattern, seed, kill interval.
struct Desc {
    endpoint: String,
    seed: u64,
    kill_every: u64,
}

fn soak(args: &SoakArgs) -> Result<(Totals, Duration, Desc), String> {
    let (scheme, base, query) = split_endpoint(&args.endpoint)?;
    // NAME-PID-N must still be a valid name.
    let longest = format!("{base}-{}-{}", u32::MAX, u64::MAX);
    Endpoint::parse(&format!("{scheme}://{longest}{query}")).map_err(|e| {
        format!(
            "{}: the name is too long or invalid for NAME-PID-N: {e}",
            args.endpoint
        )
    })?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let mut d = Driver {
        exe,
        scheme: scheme.to_owned(),
        base: base.to_owned(),
        query: query.to_owned(),
        seed,
        rng: Rng::for_stream(seed, u64::MAX),
        names: Vec::new(),
        totals: Totals::default(),
    };
    let duration = Duration::from_secs(args.duration);
    let start = Instant::now();
    let end = start + duration;

    // Run watchdog: whatever happens below, the run ends.
    let watchdog_deadline = end + RUN_GRACE;
    std::thread::spawn(move || {
        while Instant::now() < watchdog_deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let list = live();
        for pid in list.iter() {
            // SAFETY: kill only sends a signal; `pid` is an unreaped child of ours (pids leave
            // LIVE when reaped, under this lock), so it names no other process.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        eprintln!("shmpipe soak: watchdog: the run outlived its duration by {RUN_GRACE:?}; children killed");
        std::process::exit(1);
    });

    let mut next_kill = (args.kill_every > 0).then(|| start + d.kill_interval(args.kill_every));
    let mut epoch = Some(d.start_epoch()?);
    while let Some(e) = epoch.as_mut() {
        e.drain(Duration::from_millis(10));
        let now = Instant::now();
        // SIGINT, SIGTERM or SIGHUP: end now, as at the end of the duration.
        if now >= end || crate::signals::caught().is_some() {
            break;
        }
        // A child that exits on its own, or a consumer that stops progressing, ends the epoch.
        let exited = e.producer.poll() | e.consumer.poll();
        let stalled = now.duration_since(e.progress.1) >= STALL;
        let kill_due = next_kill.is_some_and(|k| now >= k);
        if !(exited || stalled || kill_due) {
            continue;
        }
        if kill_due && !exited && !stalled && e.received.checked.received == 0 {
            // Kill only during traffic: both ends have attached.
            continue;
        }
        let mut e = epoch.take().expect("checked above");
        if exited {
            // Unexpected: neither was asked to stop.
            d.totals.err_child += 1;
            eprintln!(
                "shmpipe soak: stream {}: a child exited on its own (producer {:?}, consumer {:?})",
                e.stream, e.producer.exited, e.consumer.exited
            );
            e.producer.kill();
            e.consumer.kill();
        } else if stalled {
            d.totals.err_hang += 1;
            eprintln!(
                "shmpipe soak: stream {}: hang: the consumer made no progress for {STALL:?} at {}",
                e.stream, e.received.checked.next
            );
            e.producer.kill();
            e.consumer.kill();
        } else {
            match d.rng.below(10) {
                0 => {
                    d.totals.kills_both += 1;
                    d.totals.restarts += 2;
                    e.producer.kill();
                    e.consumer.kill();
                }
                n if n % 2 == 1 => {
                    d.totals.kills_producer += 1;
                    d.totals.restarts += 1;
                    e.producer.kill();
                }
                _ => {
                    d.totals.kills_consumer += 1;
                    d.totals.restarts += 1;
                    e.consumer.kill();
                }
            }
            next_kill = Some(now + d.kill_interval(args.kill_every));
        }
        if !e.wait_exit() {
            d.totals.err_hang += 1;
            eprintln!(
                "shmpipe soak: stream {}: the survivor did not exit within {STALL:?}",
                e.stream
            );
        }
        d.finish_epoch(&e, false);
        drop(e);
        if Instant::now() < end && crate::signals::caught().is_none() {
            epoch = Some(d.start_epoch()?);
        }
    }
    // The end: close the producer's stdin, so it stops and closes the stream cleanly (once the
    // consumer is there: the end, a signal's included, can come just after the pair started).
    if let Some(mut e) = epoch.take() {
        e.wait_consumer_open();
        e.producer.stdin = None;
        let clean = e.wait_exit();
        if !clean {
            d.totals.err_hang += 1;
            eprintln!(
                "shmpipe soak: stream {}: the last pair did not finish within {STALL:?}",
                e.stream
            );
        }
        d.finish_epoch(&e, clean);
    }
    let elapsed = start.elapsed();
    // Leaks: any object still at a key of ours.
    let ours: std::collections::HashSet<i32> = d.names.iter().map(|n| key_for_name(n)).collect();
    let keys = sysv_keys()?;
    d.totals.leaked = keys.iter().filter(|k| ours.contains(k)).count() as u64;
    let desc = Desc {
        endpoint: format!("{scheme}://{base}-{}-N{query}", std::process::id()),
        seed,
        kill_every: args.kill_every,
    };
    Ok((d.totals, elapsed, desc))
}

fn report(t: &Totals, elapsed: Duration, desc: &Desc) -> String {
    let mib = t.bytes as f64 / (1 << 20) as f64;
    let secs = elapsed.as_secs_f64();
    format!(
        "soak {} (seed {}, a kill every {} ms on average)\n\
         \x20 duration          {secs:.1} s\n\
         \x20 messages checked  {} ({mib:.1} MiB; {:.0} msg/s)\n\
         \x20 kills             {} (producer {}, consumer {}, both {}); restarts {}; rings {}\n\
         \x20 errors            {} (checksum {}, order {}, duplicate {}, lost {}, hang {}, child {}, stale {})\n\
         \x20 lost at kills     {} (sent by a killed pair, never received; not an error)\n\
         \x20 stale recycled    {} (rings left by a kill, removed by reopening the old name)\n\
         \x20 leaked objects    {}\n",
        desc.endpoint,
        desc.seed,
        desc.kill_every,
        t.messages,
        t.messages as f64 / secs.max(1e-9),
        t.kills(),
        t.kills_producer,
        t.kills_consumer,
        t.kills_both,
        t.restarts,
        t.epochs,
        t.errors(),
        t.err_checksum,
        t.err_order,
        t.err_duplicate,
        t.err_lost,
        t.err_hang,
        t.err_child,
        t.err_stale,
        t.lost_at_kills,
        t.recycled,
        t.leaked,
    )
}

fn json(t: &Totals, elapsed: Duration, desc: &Desc) -> String {
    let ep: String = desc
        .endpoint
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!(
        "{{\"endpoint\":\"{ep}\",\"seed\":{},\"kill_every_ms\":{},\"duration_s\":{:.3},\
         \"messages\":{},\"bytes\":{},\"kills\":{},\"kills_producer\":{},\"kills_consumer\":{},\
         \"kills_both\":{},\"restarts\":{},\"rings\":{},\"errors\":{},\"errors_checksum\":{},\
         \"errors_order\":{},\"errors_duplicate\":{},\"errors_lost\":{},\"errors_hang\":{},\
         \"errors_child\":{},\"errors_stale\":{},\"lost_at_kills\":{},\"stale_recycled\":{},\
         \"leaked\":{},\"ok\":{}}}",
        desc.seed,
        desc.kill_every,
        elapsed.as_secs_f64(),
        t.messages,
        t.bytes,
        t.kills(),
        t.kills_producer,
        t.kills_consumer,
        t.kills_both,
        t.restarts,
        t.epochs,
        t.errors(),
        t.err_checksum,
        t.err_order,
        t.err_duplicate,
        t.err_lost,
        t.err_hang,
        t.err_child,
        t.err_stale,
        t.lost_at_kills,
        t.recycled,
        t.leaked,
        t.errors() == 0 && t.leaked == 0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn messages_verify_and_damage_is_caught() {
        let mut rng = Rng::for_stream(7, 3);
        let mut buf = Vec::new();
        for seq in 0..200 {
            build(&mut buf, 3, seq, &mut rng);
            assert!(buf.len() >= HEAD + TAIL && buf.len() <= MAX_MESSAGE);
            assert_eq!(verify(&buf), Some((3, seq)));
            let i = rng.below(buf.len() as u64) as usize;
            buf[i] ^= 1 << rng.below(8);
            assert_eq!(verify(&buf), None, "a flipped bit at {i} of {}", buf.len());
        }
        assert_eq!(verify(&[0; 19]), None);
    }

    #[test]
    fn checker_counts_gaps_duplicates_and_strangers() {
        let mut rng = Rng(1);
        let mut msg = |stream, seq| {
            let mut b = Vec::new();
            build(&mut b, stream, seq, &mut rng);
            b
        };
        let mut c = Checked::default();
        for seq in [0, 1, 2, 2, 1, 5, 6] {
            c.check(&msg(9, seq), 9);
        }
        c.check(&msg(8, 7), 9);
        c.check(&[1, 2, 3], 9);
        assert_eq!(
            (c.received, c.next, c.duplicate, c.order, c.checksum),
            (9, 7, 2, 2, 1)
        );
        let line = c.line("recv");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(Checked::parse(&words[1..]), Some(c));
    }
}
