//! `shmpipe`: send stdin lines through a ring, receive them to stdout, run the demo, list, remove
//! and watch rings.
//!
//! Exit codes: 0 for a clean end; 1 for an error (bad endpoint, oversize line, peer died, ...);
//! 2 for bad usage (from clap).

use clap::{Args, Parser, Subcommand};
use shmpipe::endpoint::Endpoint;
use shmpipe::transport::shm::ShmConfig;
use shmpipe::{Peer, Receiver, RecvError, SendError, Sender, TryRecvError, WaitStrategy};
use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

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
    /// Send each line of stdin (without its newline) as one message; close cleanly at EOF.
    Send {
        /// Where to send: shm://NAME, msgq://NAME, unix:///PATH or tcp://HOST:PORT
        endpoint: String,
        #[command(flatten)]
        ring: RingArgs,
    },
    /// Print each message received, followed by a newline; exit at end of stream.
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

fn run_send(mut tx: Box<dyn Sender + Send>) -> ExitCode {
    let stdin = io::stdin();
    let mut input = io::BufReader::with_capacity(1 << 16, stdin.lock());
    let mut line = Vec::new();
    let mut sent: u64 = 0;
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            // EOF: push out anything still buffered, then dropping `tx` closes the stream cleanly.
            Ok(0) => {
                return match tx.flush_deadline(None) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(format_args!("after {sent} messages: {e}")),
                }
            }
            Ok(_) => {}
            Err(e) => return fail(format_args!("reading stdin: {e}")),
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        match tx.send(&line) {
            Ok(()) => sent += 1,
            Err(SendError::Disconnected) => {
                let why = match tx.peer() {
                    Some(Peer::Dead) => "the receiving process died",
                    _ => "the receiver closed the channel",
                };
                return fail(format_args!("{why} after {sent} messages"));
            }
            Err(e) => return fail(format_args!("line {}: {e}", sent + 1)),
        }
    }
}

fn run_recv(mut rx: Box<dyn Receiver + Send>, count: Option<u64>) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut received: u64 = 0;
    let limit = count.unwrap_or(u64::MAX);
    let mut msg = Vec::new();
    while received < limit {
        // Drain without blocking while messages are there; flush before sleeping so a
        // reader downstream sees every message that has arrived.
        match rx.try_recv(&mut msg) {
            Ok(()) => {}
            Err(TryRecvError::Empty) => {
                if let Err(e) = out.flush() {
                    return fail(format_args!("writing stdout: {e}"));
                }
                match rx.recv(&mut msg) {
                    Ok(()) => {}
                    Err(RecvError::Disconnected) => break,
                    Err(e) => return fail(e),
                }
            }
            Err(TryRecvError::Disconnected) => break,
            Err(e) => return fail(e),
        }
        if let Err(e) = out.write_all(&msg).and_then(|()| out.write_all(b"\n")) {
            return fail(format_args!("writing stdout: {e}"));
        }
        received += 1;
    }
    if let Err(e) = out.flush() {
        return fail(format_args!("writing stdout: {e}"));
    }
    if received < limit && rx.peer() == Some(Peer::Dead) {
        return fail(format_args!(
            "the sending process died after {received} messages (all received)"
        ));
    }
    ExitCode::SUCCESS
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
            if let Err(e) = tx.send(&buf) {
                return fail(e);
            }
        }
        ExitCode::SUCCESS
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
        loop {
            match rx.recv_ref() {
                Ok(msg) => {
                    message(got, &mut expected);
                    if *msg != expected[..] {
                        return fail(format_args!("message {got} arrived damaged or out of order"));
                    }
                    got += 1;
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => return fail(e),
            }
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
