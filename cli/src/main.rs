//! `shmpipe`: send stdin lines through a ring, receive them to stdout, run the demo, list, remove
//! and watch rings.
//!
//! Exit codes: 0 for a clean end; 1 for an error (bad endpoint, oversize line, peer died, ...);
//! 2 for bad usage (from clap); 128 + the signal's number for a run ended by SIGINT, SIGTERM or
//! SIGHUP (after closing its channel ends as at a normal end, see `signals`).

use clap::{Args, Parser, Subcommand};
use lines::{LineWriter, Lines};
use shmpipe::endpoint::{parse_size, Endpoint};
use shmpipe::transport::shm::ShmConfig;
use shmpipe::{
    Peer, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError, WaitStrategy,
};
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod bench;
mod bridge;
mod lines;
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
    /// Send each line of stdin (without its newline) as one message, or with --chunk stdin's
    /// bytes as they come; close cleanly at EOF, or on SIGINT, SIGTERM or SIGHUP (then exit
    /// 128 + the signal).
    Send {
        /// Where to send: shm://NAME, msgq://NAME, unix:///PATH or tcp://HOST:PORT
        endpoint: String,
        /// Send stdin as a byte stream, not lines: messages of at most SIZE bytes, cut anywhere
        /// (a byte pipe, with `recv --raw` at the other end). Bytes, or with a suffix K, KiB, M
        /// or MiB (64K is a good size); at most the channel's largest message, which a channel
        /// this command creates is given unless --max-message says otherwise.
        #[arg(long, value_name = "SIZE", value_parser = parse_chunk)]
        chunk: Option<usize>,
        #[command(flatten)]
        ring: RingArgs,
    },
    /// Print each message received, followed by a newline (with --raw: as it is); exit at end of
    /// stream, or on SIGINT, SIGTERM or SIGHUP (leaving the channel; exit 128 + the signal).
    Recv {
        /// Where to receive from: shm://NAME, msgq://NAME, unix:///PATH or tcp://HOST:PORT
        endpoint: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Write each message's bytes as they are, without a newline after each: the other end
        /// of `send --chunk`. A channel this command creates takes messages of up to 64 KiB
        /// unless --max-message says otherwise.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        ring: RingArgs,
    },
    /// Forward every message from one endpoint to another (shm:// to unix://, zenoh:// to
    /// shm:// ...), in order, in batches, with back-pressure end to end; close TO at the end of
    /// FROM's stream. On SIGINT, SIGTERM or SIGHUP: forward what FROM holds, close, exit
    /// 128 + the signal. Stats on stderr at the end.
    Bridge(bridge::BridgeArgs),
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
    /// Messages of the maximum size the ring holds at least (power of two; shm:// only).
    #[arg(long)]
    capacity: Option<usize>,
    /// Size an SPSC ring by its message memory instead, e.g. 1M (shm:// only): small messages
    /// are stored densely, 1M holds about 65,500 messages of up to 8 bytes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    bytes: Option<usize>,
    /// Largest message in bytes, or with a suffix K, KiB, M or MiB (every transport).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
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
                if let Some(b) = self.bytes {
                    cfg.bytes = Some(b);
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
        if self.bytes.is_some() {
            return Err(shm_only("--bytes"));
        }
        if self.wait.is_some() {
            return Err(shm_only("--wait"));
        }
        Ok(ep)
    }

    /// The endpoint, with these settings applied and, unless `--max-message` was given, room for
    /// messages of at least `bytes` (for a channel this command creates).
    fn endpoint_with_room(&self, endpoint: &str, bytes: usize) -> Result<Endpoint, shmpipe::Error> {
        let mut ep = self.endpoint(endpoint)?;
        if self.max_message.is_none() {
            match &mut ep {
                Endpoint::Shm(cfg) => cfg.max_message = cfg.max_message.max(bytes),
                Endpoint::Msgq(cfg) => cfg.max_message = cfg.max_message.max(bytes),
                Endpoint::Socket(cfg) => cfg.max_message = cfg.max_message.max(bytes),
                Endpoint::Auto(cfg) if bytes > 0 => {
                    cfg.max_message = Some(cfg.max_message.unwrap_or(0).max(bytes))
                }
                _ => {}
            }
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

/// A `--chunk` size: [`parse_size`], at least one byte.
fn parse_chunk(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err("a chunk must be at least 1 byte".into()),
        n => Ok(n),
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
        Command::Send { .. }
            | Command::Recv { .. }
            | Command::Bridge(_)
            | Command::Demo { .. }
            | Command::DemoProducer { .. }
    ) {
        if let Err(e) = signals::record() {
            return fail(format_args!("setting up clean-up on signals: {e}"));
        }
    }
    let result = match cli.command {
        Command::Send {
            endpoint,
            chunk,
            ring,
        } => ring
            .endpoint_with_room(&endpoint, chunk.unwrap_or(0))
            .and_then(open_sender)
            .map(|tx| run_send(tx, chunk)),
        Command::Recv {
            endpoint,
            count,
            raw,
            ring,
        } => ring
            .endpoint_with_room(&endpoint, if raw { RAW_MESSAGE } else { 0 })
            .and_then(open_receiver)
            .map(|rx| run_recv(rx, count, raw)),
        Command::Bridge(args) => return bridge::run(args),
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

/// Writes `line` to stderr in one `write` (a line shorter than `PIPE_BUF` is then never cut by
/// another process's writes to the same pipe, as `eprintln!`'s several writes can be: both ends
/// of `auto://` say which transport they chose at the same moment).
fn say_whole_line(line: &str) {
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Opens the sending end; for `auto://`, says on stderr which transport it chose.
fn open_sender(ep: Endpoint) -> Result<Box<dyn Sender + Send>, shmpipe::Error> {
    match ep {
        Endpoint::Auto(auto) => auto.open_sender().map(|(tx, chosen)| {
            say_whole_line(&format!("shmpipe: auto://{}: using {chosen}\n", auto.name));
            tx
        }),
        ep => ep.open_sender(),
    }
}

/// Opens the receiving end; for `auto://`, says on stderr which transport it chose.
fn open_receiver(ep: Endpoint) -> Result<Box<dyn Receiver + Send>, shmpipe::Error> {
    match ep {
        Endpoint::Auto(auto) => auto.open_receiver().map(|(rx, chosen)| {
            say_whole_line(&format!("shmpipe: auto://{}: using {chosen}\n", auto.name));
            rx
        }),
        ep => ep.open_receiver(),
    }
}

/// Bytes `send` reads from stdin at a time (more while one line is longer), and the buffer
/// `recv` writes stdout through: large enough that a syscall costs next to nothing per line.
const BLOCK: usize = 256 << 10;

/// Messages handed to one batch send, or taken by one batch receive, at most.
const BATCH: usize = 1024;

/// The largest message of a channel that `recv --raw` creates without `--max-message`: the
/// `send --chunk` size we suggest, so a byte pipe needs no options at either end.
const RAW_MESSAGE: usize = 64 << 10;

/// How a send or receive ended, other than with its message.
enum Stop<E> {
    /// A signal was recorded while waiting.
    Signal(libc::c_int),
    /// The channel's error (never a timeout).
    Error(E),
}

/// Calls `call` with a deadline [`signals::SLICE`] away until it ends other than by timing out,
/// or a signal is recorded: a blocking call that a signal interrupts within a slice.
fn in_slices<T, E>(
    mut call: impl FnMut(Option<Instant>) -> Result<T, E>,
    timed_out: fn(&E) -> bool,
) -> Result<T, Stop<E>> {
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

/// Sends every message of `msgs` in order, in batches of up to [`BATCH`], counting each one
/// sent in `sent`; interruptible by a signal while it waits for room.
fn send_all<'a>(
    tx: &mut dyn Sender,
    mut msgs: impl Iterator<Item = &'a [u8]>,
    sent: &mut u64,
) -> Result<(), Stop<SendTimeoutError>> {
    let mut batch: Vec<&[u8]> = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        batch.extend(msgs.by_ref().take(BATCH));
        if batch.is_empty() {
            return Ok(());
        }
        let mut rest = &batch[..];
        while !rest.is_empty() {
            // The fast path, without reading the clock.
            let n = match tx.try_send_batch(rest) {
                Ok(n) => n,
                Err(TrySendError::Full) => in_slices(
                    |deadline| tx.send_batch_deadline(rest, deadline),
                    |e| matches!(e, SendTimeoutError::Timeout),
                )?,
                Err(e) => return Err(Stop::Error(e.into())),
            };
            *sent += n as u64;
            rest = &rest[n..];
        }
    }
}

/// `tx.flush_deadline(None)`, interruptible by a signal.
fn flush(tx: &mut dyn Sender) -> Result<(), Stop<SendTimeoutError>> {
    in_slices(
        |deadline| tx.flush_deadline(deadline),
        |e| matches!(e, SendTimeoutError::Timeout),
    )
}

impl Stop<SendTimeoutError> {
    /// This end of a send, said for the user: how far the stream got and, for `lines`, which
    /// line could not be sent.
    fn described(self, tx: &dyn Sender, sent: u64, lines: bool) -> Stop<String> {
        match self {
            Stop::Signal(sig) => Stop::Signal(sig),
            Stop::Error(SendTimeoutError::Disconnected) => {
                let why = match tx.peer() {
                    Some(Peer::Dead) => "the receiving process died",
                    _ => "the receiver closed the channel",
                };
                Stop::Error(format!("{why} after {sent} messages"))
            }
            Stop::Error(e) if lines => Stop::Error(format!("line {}: {e}", sent + 1)),
            Stop::Error(e) => Stop::Error(format!("after {sent} messages: {e}")),
        }
    }
}

/// One read of stdin (0 at EOF); cut short once a signal is recorded.
fn read_stdin(buf: &mut [u8]) -> Result<usize, Stop<String>> {
    io::Read::read(&mut signals::Stdin, buf).map_err(|e| Stop::Error(format!("reading stdin: {e}")))
}

/// The end of a run stopped by `sig`, once its channel end is dropped.
fn interrupted(sig: libc::c_int, what: std::fmt::Arguments) -> ExitCode {
    eprintln!("shmpipe: {}: {what}", signals::name(sig));
    signals::exit_code(sig)
}

/// `send`: stdin's lines, or with `chunk` its bytes, as messages until EOF.
fn run_send(mut tx: Box<dyn Sender + Send>, chunk: Option<usize>) -> ExitCode {
    let mut sent: u64 = 0;
    let end = match chunk {
        None => send_lines(&mut *tx, &mut sent),
        Some(size) if size > tx.max_message_size() => {
            return fail(format_args!(
                "--chunk {size} is larger than the channel's largest message, {} bytes (a \
                 channel keeps the size it was created with: create it with a larger \
                 --max-message, or use a smaller --chunk)",
                tx.max_message_size()
            ))
        }
        Some(size) => send_chunks(&mut *tx, size, &mut sent),
    };
    let sig = match end {
        // Dropping `tx` closes the stream cleanly.
        Ok(()) => return ExitCode::SUCCESS,
        Err(Stop::Signal(sig)) => sig,
        // An error that came with a signal (a receiver that left because it was signalled too,
        // a read of stdin cut short) is the signal's end.
        Err(Stop::Error(e)) => match signals::stopped_by() {
            Some(sig) => sig,
            None => return fail(e),
        },
    };
    // Closes the stream, as at EOF: the receiver gets what was sent, then the end.
    drop(tx);
    interrupted(sig, format_args!("stream closed after {sent} messages"))
}

/// Sends each line of stdin, without its newline, as one message, and flushes at EOF. Lines are
/// sent in batches straight out of the block they were read into; a line that runs past the
/// end of a block is carried to the front of the buffer, which grows while one line fills it,
/// up to one byte more than the largest message.
fn send_lines(tx: &mut dyn Sender, sent: &mut u64) -> Result<(), Stop<String>> {
    let max = tx.max_message_size();
    let mut buf = vec![0u8; BLOCK];
    // buf[..carried]: the start of a line whose end is still to be read (it holds no newline).
    let mut carried = 0;
    loop {
        if let Some(sig) = signals::caught() {
            return Err(Stop::Signal(sig));
        }
        if carried == buf.len() {
            if carried > max {
                // Every line before it was sent; its end need not be read to know it is too long.
                return Err(Stop::Error(format!(
                    "line {}: message of more than {max} bytes exceeds the maximum of {max} bytes",
                    *sent + 1
                )));
            }
            buf.resize(carried.saturating_mul(2).min(max.saturating_add(1)), 0);
        }
        let read = read_stdin(&mut buf[carried..])?;
        let end = carried + read;
        let mut lines = Lines::new(&buf[..end], carried);
        send_all(tx, &mut lines, sent).map_err(|s| s.described(tx, *sent, true))?;
        let rest = lines.rest();
        if read == 0 {
            // EOF: a last line without a newline is a line too.
            if rest < end {
                send_all(tx, std::iter::once(&buf[rest..end]), sent)
                    .map_err(|s| s.described(tx, *sent, true))?;
            }
            return flush(tx).map_err(|s| s.described(tx, *sent, false));
        }
        buf.copy_within(rest..end, 0);
        carried = end - rest;
    }
}

/// Sends stdin's bytes in messages of at most `size` bytes, as they are read (a read that
/// returns less than `size` is sent as it is, so the stream never waits for more input), and
/// flushes at EOF.
fn send_chunks(tx: &mut dyn Sender, size: usize, sent: &mut u64) -> Result<(), Stop<String>> {
    let mut buf = vec![0u8; BLOCK.max(size)];
    loop {
        if let Some(sig) = signals::caught() {
            return Err(Stop::Signal(sig));
        }
        let read = read_stdin(&mut buf)?;
        if read == 0 {
            return flush(tx).map_err(|s| s.described(tx, *sent, false));
        }
        send_all(tx, buf[..read].chunks(size), sent).map_err(|s| s.described(tx, *sent, false))?;
    }
}

/// Messages a broadcast subscriber missed when lapped (`overflow=overwrite`, or
/// `tether=false`): said on stderr at most once a second (a subscriber that cannot keep up is
/// lapped again and again, by a few messages each time), and once more at the end; the stream
/// goes on from the oldest message still in the ring.
struct LagReport {
    unreported: u64,
    total: u64,
    last: Option<Instant>,
}

impl LagReport {
    fn add(&mut self, missed: u64) {
        self.unreported += missed;
        self.total += missed;
        if self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            self.report();
        }
    }

    fn report(&mut self) {
        if self.unreported > 0 {
            eprintln!(
                "shmpipe recv: lagged behind the publisher: {} messages missed ({} in all)",
                self.unreported, self.total
            );
            self.unreported = 0;
            self.last = Some(Instant::now());
        }
    }
}

/// `recv`: messages to stdout until the end of the stream, or `count` of them; each followed by
/// a newline, or with `raw` as they are.
fn run_recv(mut rx: Box<dyn Receiver + Send>, count: Option<u64>, raw: bool) -> ExitCode {
    let mut out = LineWriter::new(BLOCK, signals::Stdout);
    let mut received: u64 = 0;
    let limit = count.unwrap_or(u64::MAX);
    // Messages to take at once: as many as make about a block's bytes (messages the size of the
    // last batch's), so large messages are written while still in cache; one at first, so a
    // full ring of large messages is not copied out whole (64 MiB for 64 KiB messages).
    let mut take = 1;
    let mut lag = LagReport {
        unreported: 0,
        total: 0,
        last: None,
    };
    let stdout_failed = |e: io::Error| match signals::caught() {
        Some(sig) => Stop::Signal(sig),
        None => Stop::Error(e),
    };
    let end = loop {
        // Never more than `--count` leaves: the batch takes at most what is left of it.
        let max = match limit - received {
            0 => break Ok(()),
            left => left.min(take as u64) as usize,
        };
        if let Some(sig) = signals::caught() {
            break Err(Stop::Signal(sig));
        }
        // Drain without blocking while messages are there; flush before sleeping so a
        // reader downstream sees every message that has arrived. Found empty, look once more
        // after giving the processor away: a sender sharing it (a pipeline on few cores) is
        // often in the middle of a batch, and flushing at every such gap means small writes,
        // each waking the reader downstream. On 2 cores, `seq 1 10000000 | shmpipe send` with
        // `shmpipe recv | wc -l` woke wc about 9000 times without this look, 1000 to 2000 with
        // it, and used about a sixth less CPU.
        // Each message goes straight from the ring (in place, on shared memory) into `out`.
        let mut sink = Sink {
            out: &mut out,
            raw,
            bytes: 0,
            failed: None,
        };
        let mut taken = rx.try_recv_each(max, &mut |msg| sink.put(msg));
        if let Err(TryRecvError::Empty) = taken {
            std::thread::yield_now();
            taken = rx.try_recv_each(max, &mut |msg| sink.put(msg));
        }
        let n = match taken {
            Ok(n) => n,
            Err(TryRecvError::Empty) => {
                if let Err(e) = sink.out.flush() {
                    break Err(stdout_failed(e));
                }
                let waited = in_slices(
                    |deadline| rx.recv_each_deadline(max, deadline, &mut |msg| sink.put(msg)),
                    |e| matches!(e, RecvTimeoutError::Timeout),
                );
                match waited {
                    Ok(n) => n,
                    Err(Stop::Error(RecvTimeoutError::Lagged(missed))) => {
                        lag.add(missed);
                        continue;
                    }
                    Err(Stop::Error(RecvTimeoutError::Disconnected)) => break Ok(()),
                    Err(Stop::Error(e)) => return fail(e),
                    Err(Stop::Signal(sig)) => break Err(Stop::Signal(sig)),
                }
            }
            Err(TryRecvError::Disconnected) => break Ok(()),
            Err(TryRecvError::Lagged(missed)) => {
                lag.add(missed);
                continue;
            }
            Err(e) => return fail(e),
        };
        let (bytes, failed) = (sink.bytes, sink.failed);
        received += n as u64;
        take = (BLOCK / (bytes / n.max(1)).max(1)).clamp(1, BATCH);
        if let Some(e) = failed {
            break Err(stdout_failed(e));
        }
    };
    lag.report();
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

/// Where `recv` puts each message it is handed: into `out`, as a line or (`raw`) as it is,
/// counting the bytes; the first write error is kept (later messages are dropped with it).
struct Sink<'a, W: Write> {
    out: &'a mut LineWriter<W>,
    raw: bool,
    bytes: usize,
    failed: Option<io::Error>,
}

impl<W: Write> Sink<'_, W> {
    fn put(&mut self, msg: &[u8]) {
        self.bytes += msg.len();
        if self.failed.is_none() {
            let r = if self.raw {
                self.out.raw(msg)
            } else {
                self.out.line(msg)
            };
            self.failed = r.err();
        }
    }
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
            bytes: None,
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
            bytes: None,
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
