//! `shmpipe send` and `shmpipe recv` stopped by SIGINT, SIGTERM or SIGHUP, between real
//! processes: each closes as a clean drop would (a receiver leaves and removes its ring or
//! queue; a sender ends its stream, so its receiver drains and exits 0), exits with
//! 128 + the signal, and leaves nothing in `ipcs -m` / `ipcs -q`, whether it was waiting on its
//! channel, on stdin, on a full ring or on a stdout nobody reads, or streaming.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use shmpipe::inspect;
use shmpipe::transport::shm::key_for_name;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How soon a signalled end must have exited: the brief's ~2 s, with the suite's slack for a
/// debug build on a busy machine.
const STOP_BOUND: Duration = DEATH_BOUND;

/// Lines sent before any signal; the receiver must have printed them all.
const FIRST: u64 = 100;

/// A Unix socket path, removed on drop.
struct SockPath(PathBuf);

impl SockPath {
    fn new() -> SockPath {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Relaxed);
        SockPath(std::env::temp_dir().join(format!("shmpipe-it-sig-{}-{n}.sock", std::process::id())))
    }
}

impl Drop for SockPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The channel a test runs on, holding the guard that removes whatever is left of it.
enum Chan {
    Shm(Ring, &'static str),
    Msgq(Queue),
    Unix(SockPath),
    Tcp(u16),
}

impl Chan {
    fn shm(tag: &str) -> Chan {
        Chan::Shm(Ring::new(tag), "")
    }

    fn mpmc(tag: &str) -> Chan {
        Chan::Shm(Ring::new(tag), "?mode=mpmc")
    }

    fn msgq(tag: &str) -> Chan {
        Chan::Msgq(Queue::new(tag))
    }

    fn unix() -> Chan {
        Chan::Unix(SockPath::new())
    }

    /// A loopback port that was free a moment ago (see tests/socket.rs).
    fn tcp() -> Chan {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Chan::Tcp(l.local_addr().unwrap().port())
    }

    fn endpoint(&self) -> String {
        match self {
            Chan::Shm(r, query) => format!("{}{query}", r.endpoint()),
            Chan::Msgq(q) => q.endpoint(),
            Chan::Unix(p) => format!("unix://{}", p.0.display()),
            Chan::Tcp(port) => format!("tcp://127.0.0.1:{port}"),
        }
    }

    /// Waits until the receiver `rx` has opened the channel: it holds the ring's receiving role,
    /// or its queue or socket file exists. (A TCP listener cannot be probed without becoming
    /// its peer: nothing to wait for.)
    fn wait_open(&self, rx: &Proc) {
        let deadline = Instant::now() + SOON;
        loop {
            let open = match self {
                Chan::Shm(r, _) => inspect::rings().unwrap().iter().any(|i| {
                    i.key == r.key
                        && if i.kind == "mpmc" {
                            i.members.1 > 0
                        } else {
                            i.receiver.peer == shmpipe::Peer::Alive && i.receiver.pid == rx.pid as u32
                        }
                }),
                Chan::Msgq(q) => q.exists(),
                Chan::Unix(p) => p.0.exists(),
                Chan::Tcp(_) => true,
            };
            if open {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not open {}; stderr:\n{}",
                self.endpoint(),
                rx.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asserts that nothing of the channel is left: no segment or queue at its key, no socket
    /// file.
    fn assert_gone(&self, context: &str) {
        match self {
            Chan::Shm(r, _) => r.assert_gone(context),
            Chan::Msgq(q) => assert!(!q.exists(), "{context}: queue {} left behind", q.name),
            Chan::Unix(p) => assert!(!p.0.exists(), "{context}: {} left behind", p.0.display()),
            Chan::Tcp(_) => {}
        }
    }
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: kill only sends a signal; `p` is our child, not reaped yet.
    let r = unsafe { libc::kill(p.pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({}, {sig}): {}",
        p.pid,
        std::io::Error::last_os_error()
    );
}

/// `p` exited by itself with `code` (not killed by a signal), within [`STOP_BOUND`].
fn assert_exits(p: &mut Proc, code: i32, what: &str) -> ExitStatus {
    let status = p.wait(STOP_BOUND);
    assert_eq!(
        (status.code(), status.signal()),
        (Some(code), None),
        "{what}: {status}; stderr:\n{}",
        p.stderr_text()
    );
    status
}

/// `start..=end` as lines, one write, flushed.
fn write_lines(stdin: &mut ChildStdin, start: u64, end: u64) {
    let mut v = Vec::new();
    for i in start..=end {
        writeln!(v, "{i}").unwrap();
    }
    stdin.write_all(&v).unwrap();
    stdin.flush().unwrap();
}

/// Writes lines from `start` on a thread for as long as the child reads them (at most
/// `start + n`), and then keeps the pipe open (returning it): an end of input would end the
/// sender cleanly, not by its signal.
fn stream_lines(mut stdin: ChildStdin, start: u64, n: u64) -> JoinHandle<ChildStdin> {
    std::thread::spawn(move || {
        let mut chunk = Vec::new();
        for i in start..start + n {
            writeln!(chunk, "{i}").unwrap();
            if chunk.len() >= 4096 {
                // The sender stopped reading and exited: done.
                if stdin.write_all(&chunk).is_err() {
                    break;
                }
                chunk.clear();
            }
        }
        stdin
    })
}

/// The number in a sender's "stream closed after N messages".
fn sent_count(tx: &Proc) -> u64 {
    let err = tx.stderr_text();
    err.split("stream closed after ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no message count in the sender's stderr:\n{err}"))
}

/// The receiver's remaining lines (it has exited), which must be `from`, `from + 1`, ...
/// Returns how many.
fn rest_in_order(rx: &mut Proc, from: u64) -> u64 {
    let mut n = 0;
    while let Some(line) = rx.try_line(SOON) {
        assert_eq!(line, (from + n).to_string(), "line {} of the receiver", from + n);
        n += 1;
    }
    n
}

/// A receiver and a sender on `chan`, with the first [`FIRST`] lines through. With `group`, both
/// are in a process group of their own, led by the receiver (as a shell's pipeline job is).
fn streaming_pair(chan: &Chan, group: bool) -> (Proc, Proc, ChildStdin) {
    let ep = chan.endpoint();
    let cli = |args: &[&str], pgid: Option<i32>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmpipe"));
        cmd.args(args);
        if let Some(pgid) = pgid {
            cmd.process_group(pgid);
        }
        cmd
    };
    let mut rx = Proc::spawn(cli(&["recv", &ep], group.then_some(0)), Stdout::Lines);
    chan.wait_open(&rx);
    let send = cli(&["send", &ep], group.then_some(rx.pid));
    let mut tx = Proc::spawn(send, Stdout::Null);
    let mut stdin = tx.take_stdin();
    write_lines(&mut stdin, 1, FIRST);
    for i in 1..=FIRST {
        assert_eq!(rx.line(SOON), i.to_string());
    }
    (rx, tx, stdin)
}

// ---------------------------------------------------------------------------------------------
// A receiver alone

fn lone_receiver(chan: Chan, sig: i32) {
    let ep = chan.endpoint();
    let mut rx = Proc::cli(&["recv", &ep], Stdout::Collect);
    chan.wait_open(&rx);
    signal(&rx, sig);
    assert_exits(&mut rx, 128 + sig, "signalled receiver");
    let (_, out) = rx.wait_output(SOON);
    assert!(out.is_empty(), "printed {out:?}");
    chan.assert_gone("after the receiver's signal");
}

#[test]
fn lone_receiver_sigint_leaves_no_segment() {
    lone_receiver(Chan::shm("sig-lone-int"), libc::SIGINT);
}

#[test]
fn lone_receiver_sigterm_leaves_no_segment() {
    lone_receiver(Chan::shm("sig-lone-term"), libc::SIGTERM);
}

#[test]
fn lone_receiver_sighup_leaves_no_segment() {
    lone_receiver(Chan::shm("sig-lone-hup"), libc::SIGHUP);
}

#[test]
fn lone_mpmc_receiver_sigterm_leaves_no_segment() {
    lone_receiver(Chan::mpmc("sig-lone-mpmc"), libc::SIGTERM);
}

#[test]
fn lone_msgq_receiver_sigint_leaves_no_queue() {
    lone_receiver(Chan::msgq("sig-lone-msgq"), libc::SIGINT);
}

#[test]
fn lone_unix_receiver_sighup_leaves_no_socket_file() {
    lone_receiver(Chan::unix(), libc::SIGHUP);
}

// ---------------------------------------------------------------------------------------------
// The sender signalled: the receiver drains and sees the end of stream

/// The sender is signalled while waiting on stdin (`streaming` false) or while lines flow; the
/// receiver must print exactly the lines the sender says it sent, in order, then exit 0.
fn sender_signalled(chan: Chan, sig: i32, streaming: bool) {
    let (mut rx, mut tx, stdin) = streaming_pair(&chan, false);
    // Idle: stdin stays open (an end of input would end the sender cleanly), with nothing new.
    let (feeder, _idle_stdin) = if streaming {
        (Some(stream_lines(stdin, FIRST + 1, 1_000_000)), None)
    } else {
        (None, Some(stdin))
    };
    if streaming {
        // Let some of the stream through first.
        assert_eq!(rx.line(SOON), (FIRST + 1).to_string());
    }
    signal(&tx, sig);
    assert_exits(&mut tx, 128 + sig, "signalled sender");
    let sent = sent_count(&tx);
    // Draining what is left can take a while in a debug build: SOON, not STOP_BOUND.
    let status = rx.wait(SOON);
    assert!(
        status.success(),
        "receiver: {status}; stderr:\n{}sender's:\n{}",
        rx.stderr_text(),
        tx.stderr_text()
    );
    let first_rest = if streaming { FIRST + 2 } else { FIRST + 1 };
    let rest = rest_in_order(&mut rx, first_rest);
    assert_eq!(
        first_rest - 1 + rest,
        sent,
        "the receiver printed lines 1..={} of the {sent} sent",
        first_rest - 1 + rest
    );
    if streaming {
        assert!(sent > FIRST, "the sender was streaming");
    } else {
        assert_eq!(sent, FIRST);
    }
    drop(feeder.map(|f| f.join().unwrap()));
    chan.assert_gone("after the stream ended");
}

#[test]
fn idle_sender_sigint_ends_stream() {
    sender_signalled(Chan::shm("sig-idle-int"), libc::SIGINT, false);
}

#[test]
fn idle_sender_sigterm_ends_stream() {
    sender_signalled(Chan::shm("sig-idle-term"), libc::SIGTERM, false);
}

#[test]
fn idle_sender_sighup_ends_stream() {
    sender_signalled(Chan::shm("sig-idle-hup"), libc::SIGHUP, false);
}

#[test]
fn streaming_sender_sigterm_ends_stream() {
    sender_signalled(Chan::shm("sig-stream-term"), libc::SIGTERM, true);
}

/// A byte pipe (`send --chunk`, `recv --raw`) ends the same way: the receiver writes exactly a
/// prefix of the sender's input, all the sender sent, and exits 0.
#[test]
fn streaming_byte_pipe_sender_sigint_ends_stream_with_a_prefix_of_its_input() {
    /// The input's byte at `offset`: a pattern that no chunk boundary lines up with.
    fn byte(offset: usize) -> u8 {
        (offset % 251) as u8
    }
    let chan = Chan::shm("sig-bytes");
    let ep = chan.endpoint();
    let mut rx = Proc::cli(&["recv", &ep, "--raw"], Stdout::Collect);
    chan.wait_open(&rx);
    let mut tx = Proc::cli(&["send", &ep, "--chunk", "1K"], Stdout::Null);
    let mut stdin = tx.take_stdin();
    // Writes the pattern until the sender stops reading; the pipe then stays open until the
    // test ends (an end of input would end the sender cleanly, not by its signal).
    let feeder = std::thread::spawn(move || {
        let mut block = vec![0u8; 1 << 20];
        for offset in (0..).step_by(block.len()) {
            block
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = byte(offset + i));
            if stdin.write_all(&block).is_err() {
                break;
            }
        }
        stdin
    });
    std::thread::sleep(Duration::from_millis(200));
    signal(&tx, libc::SIGINT);
    assert_exits(&mut tx, 128 + libc::SIGINT, "signalled sender");
    let sent = sent_count(&tx);
    let (status, out) = rx.wait_output(SOON);
    assert!(
        status.success(),
        "receiver: {status}; stderr:\n{}",
        rx.stderr_text()
    );
    assert!(
        sent > 0 && !out.is_empty(),
        "{sent} messages, {} bytes",
        out.len()
    );
    if let Some(at) = (0..out.len()).find(|&i| out[i] != byte(i)) {
        panic!("the receiver's {} bytes differ from the input at {at}", out.len());
    }
    drop(feeder.join().unwrap());
    chan.assert_gone("after the stream ended");
}

#[test]
fn streaming_mpmc_sender_sighup_ends_stream() {
    sender_signalled(Chan::mpmc("sig-stream-mpmc"), libc::SIGHUP, true);
}

#[test]
fn streaming_msgq_sender_sigint_ends_stream() {
    sender_signalled(Chan::msgq("sig-stream-msgq"), libc::SIGINT, true);
}

#[test]
fn streaming_unix_sender_sigterm_ends_stream() {
    sender_signalled(Chan::unix(), libc::SIGTERM, true);
}

#[test]
fn streaming_tcp_sender_sigint_ends_stream() {
    sender_signalled(Chan::tcp(), libc::SIGINT, true);
}

// ---------------------------------------------------------------------------------------------
// Both signalled while lines flow

/// Both are signalled at once, as a terminal signals a pipeline: one kill of their process group
/// (two kills in turn would let the second end see the first leave before its own signal).
fn both_signalled(chan: Chan, sig: i32) {
    let (mut rx, mut tx, stdin) = streaming_pair(&chan, true);
    let feeder = stream_lines(stdin, FIRST + 1, 1_000_000);
    assert_eq!(rx.line(SOON), (FIRST + 1).to_string());
    // SAFETY: kill only sends a signal; the group is the receiver's, made of our two children.
    let r = unsafe { libc::kill(-rx.pid, sig) };
    assert_eq!(
        r,
        0,
        "kill(-{}, {sig}): {}",
        rx.pid,
        std::io::Error::last_os_error()
    );
    assert_exits(&mut tx, 128 + sig, "signalled sender");
    // Each exits by its own signal, even one that saw its peer leave first.
    assert_exits(&mut rx, 128 + sig, "signalled receiver");
    let sent = sent_count(&tx);
    let printed = FIRST + 1 + rest_in_order(&mut rx, FIRST + 2);
    assert!(printed <= sent, "printed {printed} lines of {sent} sent");
    drop(feeder.join().unwrap());
    chan.assert_gone("after both ends were signalled");
}

#[test]
fn both_sigint_leave_nothing() {
    both_signalled(Chan::shm("sig-both-int"), libc::SIGINT);
}

#[test]
fn both_sigterm_leave_nothing() {
    both_signalled(Chan::shm("sig-both-term"), libc::SIGTERM);
}

#[test]
fn both_sighup_leave_nothing() {
    both_signalled(Chan::shm("sig-both-hup"), libc::SIGHUP);
}

#[test]
fn both_msgq_sigterm_leave_nothing() {
    both_signalled(Chan::msgq("sig-both-msgq"), libc::SIGTERM);
}

// ---------------------------------------------------------------------------------------------
// Both blocked outside the happy path

/// Nobody reads the receiver's stdout: it blocks writing it, the ring fills, and the sender
/// blocks on the full ring. Each still stops at once on its signal.
#[test]
fn ends_blocked_on_full_ring_and_stdout_stop() {
    let chan = Chan::shm("sig-blocked");
    let Chan::Shm(ring, _) = &chan else { unreachable!() };
    let ep = chan.endpoint();
    let mut rx = Proc::cli(&["recv", &ep], Stdout::Unread);
    chan.wait_open(&rx);
    let mut tx = Proc::cli(&["send", &ep], Stdout::Null);
    let feeder = stream_lines(tx.take_stdin(), 1, 10_000_000);
    // Stuck: the ring is full and the receiver takes nothing off it for a while (its stdout
    // pipe is full), not just behind for a moment.
    let deadline = Instant::now() + SOON;
    // (Full: nothing goes in or out while messages wait; how many fit depends on their lengths.)
    let (mut last, mut still) = ((u64::MAX, u64::MAX), 0);
    while still < 5 {
        let info = inspect::rings().unwrap().into_iter().find(|i| i.key == ring.key);
        let (waiting, now) = info.map_or((false, (0, 0)), |i| {
            (
                i.unread.is_some_and(|n| n > 0),
                (i.counters.messages_in, i.counters.messages_out),
            )
        });
        still = if waiting && now == last { still + 1 } else { 0 };
        last = now;
        assert!(Instant::now() < deadline, "the ring never stayed full");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&tx, libc::SIGTERM);
    assert_exits(&mut tx, 128 + libc::SIGTERM, "sender blocked on a full ring");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        ring.exists(),
        "the receiver, blocked on stdout, still holds its ring; state {:?}; stderr:\n{}",
        std::fs::read_to_string(format!("/proc/{}/stat", rx.pid)),
        rx.stderr_text()
    );
    signal(&rx, libc::SIGINT);
    assert_exits(&mut rx, 128 + libc::SIGINT, "receiver blocked writing stdout");
    drop(feeder.join().unwrap());
    chan.assert_gone("after both ends were signalled");
}

// ---------------------------------------------------------------------------------------------
// The other long-running commands

/// `shmpipe demo` signalled mid-stream stops its producer child, leaves its ring and exits 130.
#[test]
fn demo_sigint_stops_its_producer_and_leaves_nothing() {
    // Declared first, dropped last: after the processes are killed.
    let ring: Ring;
    let mut demo = Proc::cli(&["demo", "--messages", "4000000000"], Stdout::Collect);
    let name = format!("demo-{}", demo.pid);
    ring = Ring {
        key: key_for_name(&name),
        name,
    };
    // Streaming: the producer holds the sending role.
    let deadline = Instant::now() + SOON;
    let producer = loop {
        let info = inspect::rings().unwrap().into_iter().find(|i| i.key == ring.key);
        if let Some(i) = info.filter(|i| i.sender.peer == shmpipe::Peer::Alive && i.counters.messages_out > 0)
        {
            break i.sender.pid;
        }
        assert!(
            Instant::now() < deadline,
            "the demo never streamed; stderr:\n{}",
            demo.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    signal(&demo, libc::SIGINT);
    assert_exits(&mut demo, 128 + libc::SIGINT, "signalled demo");
    let (_, out) = demo.wait_output(SOON);
    assert!(out.is_empty(), "no report for a stopped demo: {out:?}");
    ring.assert_gone("after the demo's signal");
    assert!(
        !std::path::Path::new(&format!("/proc/{producer}")).exists(),
        "the producer {producer} outlived the demo"
    );
}

/// Removes, on drop, whatever is at the keys of the rings a soak run names `NAME-PID-N`.
struct SoakRings {
    name: String,
    pid: i32,
}

impl SoakRings {
    fn keys(&self) -> impl Iterator<Item = i32> + '_ {
        (0..1000).map(|n| key_for_name(&format!("{}-{}-{n}", self.name, self.pid)))
    }
}

impl Drop for SoakRings {
    fn drop(&mut self) {
        for key in self.keys() {
            remove_key(key);
        }
    }
}

/// `shmpipe soak` signalled mid-run ends as at the end of its duration (the last pair closes,
/// the report says no error and no leak), exits 143, and leaves nothing.
#[test]
fn soak_sigterm_ends_the_run_cleanly() {
    let soak_rings: SoakRings;
    let name = unique_name("sig-soak");
    let ep = format!("shm://{name}");
    let args = [
        "soak",
        "--duration",
        "600",
        "--kill-every",
        "100",
        "--endpoint",
        &ep,
        "--json",
    ];
    let mut soak = Proc::cli(&args, Stdout::Collect);
    soak_rings = SoakRings { name, pid: soak.pid };
    // A few epochs in, with kills.
    let third = key_for_name(&format!("{}-{}-2", soak_rings.name, soak.pid));
    let deadline = Instant::now() + SOON;
    while shmid_at(third).is_none() {
        assert!(Instant::now() < deadline, "the soak never reached its third pair");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&soak, libc::SIGTERM);
    // The last pair gets the soak's own stall bound to finish.
    let status = soak.wait(SOON);
    let (_, out) = soak.wait_output(SOON);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{status}; stderr:\n{}",
        soak.stderr_text()
    );
    assert!(
        out.contains("\"errors\":0,") && out.contains("\"leaked\":0,") && out.contains("\"ok\":true"),
        "report: {out}; stderr:\n{}",
        soak.stderr_text()
    );
    for key in soak_rings.keys() {
        assert_eq!(shmid_at(key), None, "a soak ring is left at key {key:#x}");
    }
}
