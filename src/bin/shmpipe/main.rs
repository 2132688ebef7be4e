//! `shmpipe`: send stdin lines through a ring, receive them to stdout, run the demo, list, remove
//! and watch rings.
//!
//! Exit codes: 0 for a clean end; 1 for an error (bad endpoint, oversize line, peer died, ...);
//! 2 for bad usage (from clap); 128 + the signal's number for a run ended by SIGINT, SIGTERM or
//! SIGHUP (after closing its channel ends as at a normal end, see `signals`).

use clap::{Args, Parser, Subcommand};
use shmpipe::endpoint::Endpoint;
use shmpipe::transport::shm::ShmConfig;
use shmpipe::{
    Peer, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError, WaitStrategy,
};
use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

mod bench;
mod ops;
mod signals;
mod soak;

#[derive(Parser)]
#[command(
    name = "shmpipe",
    version,
    about = "Move messages between processes through shared memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send each line of stdin (without its newline) as one message; close cleanly at EOF, or on
    /// SIGINT, SIGTERM or SIGHUP (then exit 128 + the signal).
    Send {
        /// Where to send: shm://NAME, msgq://NAME, unix:///PATH or tcp://HOST:PORT
        endpoint: String,
        #[command(flatten)]
        ring: RingArgs,
    },
    /// Print each message received, followed by a newline; exit at end of stream, or on SIGINT,
    /// SIGTERM or SIGHUP (leaving the channel; exit 128 + the signal).
    Recv {
        /// Where to receive from: shm://NAME, msgq://NAME, unix:///PATH or tcp://HOST:PORT
        endpoint: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        ring: RingArgs,
    },
    /// Stream messages to a child process through a ring and check every one (a demo and
    /// smoke benchmark); a Unix socket pair carries the same stream as the baseline.
    Demo {
        /// Messages to stream.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Bytes per message (at least 8).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// (internal) the demo's producer process.
    #[command(hide = true)]
    DemoProducer {
        endpoint: String,
        messages: u64,
        size: usize,
    },
    /// Measure throughput and latency of every transport across processes, each next to its raw
    /// syscall baseline (atomics, futex, msgsnd/msgrcv, sockets) from the same run.
    Bench(bench::BenchArgs),
    /// (internal) the benchmark's peer process.
    #[command(hide = true)]
    BenchPeer(bench::PeerArgs),
    /// List this user's rings (validated, read-only) and message queues, with their state:
    /// live, stale (the next open recycles it), pending (unread messages await a receiver).
    Ls(ops::LsArgs),
    /// Remove a ring that no live process holds (or, with --force, any), or every stale one.
    Rm(ops::RmArgs),
    /// Print a ring's counters every interval: messages in/out, unread, waits, parks, wakes.
    Stat(ops::StatArgs),
    /// Stream checksummed messages between two child processes for a while, SIGKILL one of them
    /// now and then and restart the pair on a new ring; check every message, and that no SysV
    /// object is left behind.
    Soak(soak::SoakArgs),
    /// (internal) the soak's producer process.
    #[command(hide = true)]
    SoakProducer(soak::ChildArgs),
    /// (internal) the soak's consumer process.
    #[command(hide = true)]
    SoakConsumer(soak::ChildArgs),
}

/// Settings for a channel this command creates (an existing ring keeps its own). They override
/// the same options given in the endpoint's query string.
#[derive(Args)]
struct RingArgs {
    /// Slots in the ring (power of two; shm:// only).
    #[arg(long)]
    capacity: Option<usize>,
    /// Largest message in bytes (every transport).
    #[arg(long)]
    max_message: Option<usize>,
    /// How to wait: adaptive (spin, then park), spin, or park (shm:// only).
    #[arg(long)]
    wait: Option<String>,
}

impl RingArgs {
    /// The endpoint, with these settings applied.
    fn endpoint(&self, endpoint: &str) -> Result<Endpoint, shmpipe::Error> {
        let mut ep = Endpoint::parse(endpoint)?;
        let shm_only = |what: &str| {
            shmpipe::Error::InvalidConfig(format!("{what} applies to shm:// endpoints only, not {endpoint}"))
        };
        match &mut ep {
            Endpoint::Shm(cfg) => {
                if let Some(c) = self.capacity {
                    cfg.capacity = c;
                }
                if let Some(m) = self.max_message {
                    cfg.max_message = m;
                }
                if let Some(w) = &self.wait {
                    cfg.wait = match w.as_str() {
                        "spin" => WaitStrategy::spinning(1 << 16),
                        "park" => WaitStrategy::park_only(),
                        "adaptive" => WaitStrategy::default(),
                        _ => {
                            return Err(shmpipe::Error::InvalidConfig(format!(
                                "--wait {w}: expected adaptive, spin or park"
                            )))
                        }
                    };
                }
                return Ok(ep);
            }
            Endpoint::Msgq(cfg) => cfg.max_message = self.max_message.unwrap_or(cfg.max_message),
            Endpoint::Socket(cfg) => cfg.max_message = self.max_message.unwrap_or(cfg.max_message),
            Endpoint::Auto(cfg) => {
                cfg.max_message = self.max_message.or(cfg.max_message);
                cfg.capacity = self.capacity.or(cfg.capacity);
                return Ok(ep);
            }
            _ => {}
        }
        if self.capacity.is_some() {
            return Err(shm_only("--capacity"));
        }
        if self.wait.is_some() {
            return Err(shm_only("--wait"));
        }
        Ok(ep)
    }

    fn config(&self, endpoint: &str) -> Result<ShmConfig, shmpipe::Error> {
        match self.endpoint(endpoint)? {
            Endpoint::Shm(cfg) => Ok(cfg),
            _ => Err(shmpipe::Error::Endpoint(format!(
                "{endpoint}: expected shm://NAME"
            ))),
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("shmpipe: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before opening anything, and before any other thread starts.
    if matches!(
        cli.command,
        Command::Send { .. } | Command::Recv { .. } | Command::Demo { .. } | Command::DemoProducer { .. }
    ) {
        if let Err(e) = signals::record() {
            return fail(format_args!("setting up clean-up on signals: {e}"));
        }
    }
    let result = match cli.command {
        Command::Send { endpoint, ring } => ring.endpoint(&endpoint).and_then(open_sender).map(run_send),
        Command::Recv {
            endpoint,
            count,
            ring,
        } => ring
            .endpoint(&endpoint)
            .and_then(open_receiver)
            .map(|rx| run_recv(rx, count)),
        Command::Demo { messages, size } => return demo::run(messages, size),
        Command::DemoProducer {
            endpoint,
            messages,
            size,
        } => return demo::produce(&endpoint, messages, size),
        Command::Bench(args) => return bench::run(args),
        Command::BenchPeer(args) => return bench::peer(args),
        Command::Ls(args) => return ops::ls(args),
        Command::Rm(args) => return ops::rm(args),
        Command::Stat(args) => return ops::stat(args),
        Command::Soak(args) => return soak::run(args),
        Command::SoakProducer(args) => return soak::produce(args),
        Command::SoakConsumer(args) => return soak::consume(args),
    };
    result.unwrap_or_else(fail)
}

/// Opens the sending end; for `auto://`, says on stderr which transport it chose.
fn open_sender(ep: Endpoint) -> Result<Box<dyn Sender + Send>, shmpipe::Error> {
    match ep {
        Endpoint::Auto(auto) => auto.open_sender().map(|(tx, chosen)| {
            eprintln!("shmpipe: auto://{}: using {chosen}", auto.name);
            tx
        }),
        ep => ep.open_sender(),
    }
}

/// Opens the receiving end; for `auto://`, says on stderr which transport it chose.
fn open_receiver(ep: Endpoint) -> Result<Box<dyn Receiver + Send>, shmpipe::Error> {
    match ep {
        Endpoint::Auto(auto) => auto.open_receiver().map(|(rx, chosen)| {
            eprintln!("shmpipe: auto://{}: using {chosen}", auto.name);
            rx
        }),
        ep => ep.open_receiver(),
    }
}

/// How a send or receive ended, other than with its message.
enum Stop<E> {
    /// A signal was recorded while waiting.
    Signal(libc::c_int),
    /// The channel's error (never a timeout).
    Error(E),
}

/// Calls `call` with a deadline [`signals::SLICE`] away until it ends other than by timing out,
/// or a signal is recorded: a blocking call that a signal interrupts within a slice.
fn in_slices<E>(
    mut call: impl FnMut(Option<Instant>) -> Result<(), E>,
    timed_out: fn(&E) -> bool,
) -> Result<(), Stop<E>> {
    loop {
        if let Some(sig) = signals::caught() {
            return Err(Stop::Signal(sig));
        }
        match call(Instant::now().checked_add(signals::SLICE)) {
            Err(e) if timed_out(&e) => {}
            r => return r.map_err(Stop::Error),
        }
    }
}

/// `tx.send(msg)`, interruptible by a signal while it waits.
fn send(tx: &mut dyn Sender, msg: &[u8]) -> Result<(), Stop<SendTimeoutError>> {
    // The fast path, without reading the clock.
    match tx.try_send(msg) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full) => in_slices(
            |deadline| tx.send_deadline(msg, deadline),
            |e| matches!(e, SendTimeoutError::Timeout),
        ),
        Err(e) => Err(Stop::Error(e.into())),
    }
}

/// `tx.flush_deadline(None)`, interruptible by a signal.
fn flush(tx: &mut dyn Sender) -> Result<(), Stop<SendTimeoutError>> {
    in_slices(
        |deadline| tx.flush_deadline(deadline),
        |e| matches!(e, SendTimeoutError::Timeout),
    )
}

/// `rx.recv(buf)`, interruptible by a signal.
fn recv(rx: &mut dyn Receiver, buf: &mut Vec<u8>) -> Result<(), Stop<RecvTimeoutError>> {
    in_slices(
        |deadline| rx.recv_deadline(buf, deadline),
        |e| matches!(e, RecvTimeoutError::Timeout),
    )
}

/// The end of a run stopped by `sig`, once its channel end is dropped.
fn interrupted(sig: libc::c_int, what: std::fmt::Arguments) -> ExitCode {
    eprintln!("shmpipe: {}: {what}", signals::name(sig));
    signals::exit_code(sig)
}

fn run_send(mut tx: Box<dyn Sender + Send>) -> ExitCode {
    let mut input = io::BufReader::with_capacity(1 << 16, signals::Stdin);
    let mut line = Vec::new();
    let mut sent: u64 = 0;
    // Ok: stopped by a signal; Err: failed.
    let end = loop {
        if let Some(sig) = signals::caught() {
            break Ok(sig);
        }
        line.clear();
        match input.read_until(b'\n', &mut line) {
            // EOF: push out anything still buffered, then dropping `tx` closes the stream cleanly.
            Ok(0) => match flush(&mut *tx) {
                Ok(()) => return ExitCode::SUCCESS,
                Err(Stop::Signal(sig)) => break Ok(sig),
                Err(Stop::Error(e)) => break Err(format!("after {sent} messages: {e}")),
            },
            Ok(_) => {}
            Err(e) => break Err(format!("reading stdin: {e}")),
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        match send(&mut *tx, &line) {
            Ok(()) => sent += 1,
            Err(Stop::Signal(sig)) => break Ok(sig),
            Err(Stop::Error(SendTimeoutError::Disconnected)) => {
                let why = match tx.peer() {
                    Some(Peer::Dead) => "the receiving process died",
                    _ => "the receiver closed the channel",
                };
                break Err(format!("{why} after {sent} messages"));
            }
            Err(Stop::Error(e)) => break Err(format!("line {}: {e}", sent + 1)),
        }
    };
    // An error that came with a signal (a receiver that left because it was signalled too, a
    // read of stdin cut short) is the signal's end.
    let sig = match end.or_else(|e| signals::stopped_by().ok_or(e)) {
        Ok(sig) => sig,
        Err(e) => return fail(e),
    };
    // Closes the stream, as at EOF: the receiver gets what was sent, then the end.
    drop(tx);
    interrupted(sig, format_args!("stream closed after {sent} messages"))
}

fn run_recv(mut rx: Box<dyn Receiver + Send>, count: Option<u64>) -> ExitCode {
    let mut out = BufWriter::with_capacity(1 << 16, signals::Stdout);
    let mut received: u64 = 0;
    let limit = count.unwrap_or(u64::MAX);
    let mut msg = Vec::new();
    let stdout_failed = |e: io::Error| match signals::caught() {
        Some(sig) => Stop::Signal(sig),
        None => Stop::Error(e),
    };
    let end = loop {
        if received == limit {
            break Ok(());
        }
        if let Some(sig) = signals::caught() {
            break Err(Stop::Signal(sig));
        }
        // Drain without blocking while messages are there; flush before sleeping so a
        // reader downstream sees every message that has arrived.
        match rx.try_recv(&mut msg) {
            Ok(()) => {}
            Err(TryRecvError::Empty) => {
                if let Err(e) = out.flush() {
                    break Err(stdout_failed(e));
                }
                match recv(&mut *rx, &mut msg) {
                    Ok(()) => {}
                    Err(Stop::Error(RecvTimeoutError::Disconnected)) => break Ok(()),
                    Err(Stop::Error(e)) => return fail(e),
                    Err(Stop::Signal(sig)) => break Err(Stop::Signal(sig)),
                }
            }
            Err(TryRecvError::Disconnected) => break Ok(()),
            Err(e) => return fail(e),
        }
        if let Err(e) = out.write_all(&msg).and_then(|()| out.write_all(b"\n")) {
            break Err(stdout_failed(e));
        }
        received += 1;
    };
    // What was taken off the channel is written out, unless stdout blocks after a signal.
    let flushed = out.flush();
    // A signal wins over an end of stream or an error that came with it.
    let sig = match (end, signals::stopped_by()) {
        (Err(Stop::Signal(sig)), _) | (_, Some(sig)) => sig,
        (Err(Stop::Error(e)), None) => return fail(format_args!("writing stdout: {e}")),
        (Ok(()), None) => {
            if let Err(e) = flushed {
                return fail(format_args!("writing stdout: {e}"));
            }
            if received < limit && rx.peer() == Some(Peer::Dead) {
                return fail(format_args!(
                    "the sending process died after {received} messages (all received)"
                ));
            }
            return ExitCode::SUCCESS;
        }
    };
    // Leaves the channel, as at a normal end (a ring or queue is removed).
    drop(rx);
    interrupted(sig, format_args!("left the channel after {received} messages"))
}

mod demo {
    //! The end-to-end demo: a child process streams numbered messages, we check each one.
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    fn message(i: u64, buf: &mut [u8]) {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        for (j, b) in buf[8..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_add(j as u8);
        }
    }

    pub(super) fn produce(endpoint: &str, messages: u64, size: usize) -> ExitCode {
        let args = super::RingArgs {
            capacity: None,
            max_message: Some(size),
            wait: None,
        };
        let mut tx = match args.config(endpoint).and_then(|c| c.open_sender()) {
            Ok(tx) => tx,
            Err(e) => return fail(e),
        };
        let mut buf = vec![0u8; size];
        for i in 0..messages {
            message(i, &mut buf);
            let sent = match signals::caught() {
                Some(sig) => Err(Stop::Signal(sig)),
                None => send(&mut tx, &buf),
            };
            match sent {
                Ok(()) => {}
                // The parent stops us (or the terminal did): close the stream, quietly.
                Err(Stop::Signal(sig)) => {
                    drop(tx);
                    return signals::exit_code(sig);
                }
                Err(Stop::Error(e)) => match signals::stopped_by() {
                    Some(sig) => return signals::exit_code(sig),
                    None => return fail(e),
                },
            }
        }
        ExitCode::SUCCESS
    }

    /// Whether `msg` is message `i` (`expected` is scratch space).
    fn is_message(i: u64, msg: &[u8], expected: &mut [u8]) -> bool {
        message(i, expected);
        msg == expected
    }

    pub(super) fn run(messages: u64, size: usize) -> ExitCode {
        if size < 8 {
            return fail("--size must be at least 8 (each message carries its sequence number)");
        }
        let endpoint = format!("shm://demo-{}", std::process::id());
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => return fail(e),
        };
        let cfg = match (super::RingArgs {
            capacity: None,
            max_message: Some(size),
            wait: None,
        })
        .config(&endpoint)
        {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let mut rx = match cfg.open_receiver() {
            Ok(rx) => rx,
            Err(e) => return fail(e),
        };
        let start = Instant::now();
        let mut child = match Command::new(&exe)
            .args([
                "demo-producer",
                &endpoint,
                &messages.to_string(),
                &size.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return fail(format_args!("spawning the producer: {e}")),
        };
        let mut expected = vec![0u8; size];
        let mut got = 0u64;
        let damaged = |got| fail(format_args!("message {got} arrived damaged or out of order"));
        let stopped = loop {
            if let Some(sig) = signals::caught() {
                break Some(sig);
            }
            match rx.try_recv_ref() {
                Ok(msg) if is_message(got, &msg, &mut expected) => {
                    got += 1;
                    continue;
                }
                Ok(_) => return damaged(got),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => break None,
                Err(e) => return fail(e),
            }
            // Empty: wait in slices, looking for a signal between them.
            match rx.recv_ref_timeout(signals::SLICE) {
                Ok(msg) if is_message(got, &msg, &mut expected) => got += 1,
                Ok(_) => return damaged(got),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break None,
                Err(e) => return fail(e),
            }
        };
        if let Some(sig) = stopped {
            // The producer closes its end, then we leave ours (removing the ring).
            // SAFETY: kill only sends a signal; the child is not reaped yet, so its pid names no
            // other process.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
            drop(rx);
            return interrupted(
                sig,
                format_args!("demo stopped after {got} of {messages} messages"),
            );
        }
        let shm_time = start.elapsed();
        let status = child.wait();
        drop(rx);
        if got != messages || !status.is_ok_and(|s| s.success()) {
            return fail(format_args!("received {got} of {messages} messages"));
        }
        let baseline = match socket_baseline(messages, size) {
            Ok(t) => t,
            Err(e) => return fail(format_args!("socket baseline: {e}")),
        };
        // A signal during the baseline (which holds no SysV object) is honoured here.
        if let Some(sig) = signals::caught() {
            return interrupted(sig, format_args!("demo stopped during the socket baseline"));
        }
        let rate = |t: std::time::Duration| messages as f64 / t.as_secs_f64();
        println!(
            "{messages} messages of {size} bytes from a child process, each checked, none lost or reordered"
        );
        println!(
            "  shm ring     {:>8.1} ms  {:>12.0} msg/s  (process start included)",
            shm_time.as_secs_f64() * 1e3,
            rate(shm_time)
        );
        println!(
            "  unix socket  {:>8.1} ms  {:>12.0} msg/s  (same stream, two threads, length-prefixed)",
            baseline.as_secs_f64() * 1e3,
            rate(baseline)
        );
        ExitCode::SUCCESS
    }

    /// The same stream over a Unix socket pair with length-prefixed frames, in two threads.
    fn socket_baseline(messages: u64, size: usize) -> io::Result<std::time::Duration> {
        use std::io::Read;
        let (a, mut b) = UnixStream::pair()?;
        let start = Instant::now();
        let writer = std::thread::spawn(move || -> io::Result<()> {
            let mut w = io::BufWriter::new(a);
            let mut buf = vec![0u8; size];
            for i in 0..messages {
                message(i, &mut buf);
                w.write_all(&(size as u32).to_le_bytes())?;
                w.write_all(&buf)?;
            }
            w.flush()
        });
        let mut r = io::BufReader::new(&mut b);
        let mut len = [0u8; 4];
        let mut buf = vec![0u8; size];
        let mut expected = vec![0u8; size];
        for i in 0..messages {
            r.read_exact(&mut len)?;
            r.read_exact(&mut buf[..u32::from_le_bytes(len) as usize])?;
            message(i, &mut expected);
            if buf != expected {
                return Err(io::Error::other("baseline stream damaged"));
            }
        }
        writer.join().map_err(|_| io::Error::other("writer panicked"))??;
        Ok(start.elapsed())
    }
}
