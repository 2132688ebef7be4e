//! `shmpipe bridge FROM TO`: forwards every message from one endpoint to another, in order, in
//! batches, with back-pressure end to end (it takes from FROM only what TO has accepted before).
//!
//! It ends when FROM's stream ends (every sender gone and everything received forwarded: it then
//! closes TO, whose receivers see the end of the stream, and exits 0, or 1 if FROM's transport
//! says its sender died), on an error of either end
//! (exit 1, saying how many messages it had taken from FROM but not delivered to TO), or on
//! SIGINT, SIGTERM or SIGHUP: it stops waiting on FROM, forwards what FROM already holds (see
//! below), closes both ends as at a normal end and exits with 128 + the signal. Stats go to stderr at the end, and a progress line every second while
//! stderr is a terminal (or with `--progress`).
//!
//! Exactly once and in order, end to end, when both transports are reliable: each message taken
//! from FROM is handed to TO before the next batch is taken, and a batch TO accepts only in part
//! is resent from where it stopped. What is lost is only what a failure of TO (or the bridge's
//! own SIGKILL) leaves in the bridge's hands, and the first is counted on stderr.
//!
//! The drain after a signal is bounded by `--drain-timeout` (1 s by default), so a bridge fed
//! without pause still stops: it takes from FROM only what is there without waiting, and only
//! until the timeout; what it has taken it still delivers, waiting at most one more timeout for
//! room in TO (else it says how many it could not deliver). What FROM still holds then stays
//! there, or goes with FROM's channel as when any receiver closes.

use crate::signals;
use shmpipe::{Batch, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Messages taken from FROM at once, at most.
const BATCH: usize = 1024;

#[derive(clap::Args)]
pub(crate) struct BridgeArgs {
    /// Where to take messages from: any endpoint (shm://, msgq://, unix://, tcp://, auto://,
    /// zenoh:// with the `zenoh` feature).
    from: String,
    /// Where to forward them: any endpoint.
    to: String,
    /// Print a progress line on stderr every second (the default when stderr is a terminal).
    #[arg(long)]
    progress: bool,
    /// After a signal: how long to go on taking what FROM holds, and then how much longer to
    /// wait for TO to take the last of it, in seconds.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    drain_timeout: f64,
}

/// The running totals.
struct Tally {
    messages: u64,
    bytes: u64,
    /// Broadcast subscribers only: messages FROM's publisher overwrote before we read them.
    lagged: u64,
    start: Instant,
}

impl Tally {
    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let mut s = format!(
            "{} messages, {:.1} MB in {:.1} s ({:.0} msgs/s, {:.1} MB/s)",
            self.messages,
            self.bytes as f64 / 1e6,
            secs,
            self.messages as f64 / secs,
            self.bytes as f64 / 1e6 / secs
        );
        if self.lagged > 0 {
            s += &format!(", {} missed (lagged)", self.lagged);
        }
        s
    }
}

/// Why the bridge stopped.
enum End {
    /// FROM's stream ended.
    Stream,
    /// A signal, after the drain.
    Signal(libc::c_int),
    /// An error; the messages taken from FROM and not delivered.
    Failed(String, usize),
}

pub(crate) fn run(args: BridgeArgs) -> ExitCode {
    let open = || -> Result<_, String> {
        let rx = crate::open_receiver(
            shmpipe::endpoint::Endpoint::parse(&args.from).map_err(|e| format!("{}: {e}", args.from))?,
        )
        .map_err(|e| format!("opening {}: {e}", args.from))?;
        let tx = crate::open_sender(
            shmpipe::endpoint::Endpoint::parse(&args.to).map_err(|e| format!("{}: {e}", args.to))?,
        )
        .map_err(|e| format!("opening {}: {e}", args.to))?;
        Ok((rx, tx))
    };
    let (mut rx, mut tx) = match open() {
        Ok(ends) => ends,
        Err(e) => return crate::fail(e),
    };
    let progress = args.progress || std::io::stderr().is_terminal();
    let drain = Duration::try_from_secs_f64(args.drain_timeout.max(0.0)).unwrap_or(Duration::MAX);
    let mut tally = Tally {
        messages: 0,
        bytes: 0,
        lagged: 0,
        start: Instant::now(),
    };
    let end = forward(&mut *rx, &mut *tx, &mut tally, drain, progress);
    // A stream ended by the sender's death is an error, though everything it sent was forwarded
    // (and TO is still closed cleanly: it has no way to say "died").
    let upstream_died = matches!(end, End::Stream) && rx.peer() == Some(shmpipe::Peer::Dead);
    // TO first: its receivers see the end of the stream (a clean close, also after a signal).
    drop(tx);
    drop(rx);
    if progress {
        eprintln!();
    }
    let stats = tally.line();
    match end {
        End::Stream if upstream_died => {
            eprintln!("shmpipe bridge: the sending process upstream died (everything it sent was forwarded): {stats}");
            ExitCode::FAILURE
        }
        End::Stream => {
            eprintln!("shmpipe bridge: end of stream: {stats}");
            ExitCode::SUCCESS
        }
        End::Signal(sig) => {
            eprintln!("shmpipe bridge: stopped by {}: {stats}", signals::name(sig));
            signals::exit_code(sig)
        }
        End::Failed(why, left) => {
            eprintln!(
                "shmpipe bridge: {why}: {stats}; {left} messages taken from {} not delivered",
                args.from
            );
            ExitCode::FAILURE
        }
    }
}

/// The loop: take a batch from `rx`, hand all of it to `tx`, again.
fn forward(
    rx: &mut dyn Receiver,
    tx: &mut dyn Sender,
    tally: &mut Tally,
    drain: Duration,
    progress: bool,
) -> End {
    let mut batch = Batch::new();
    let mut last_progress = Instant::now();
    // Set by the first signal: from then on FROM is only drained, and TO offered the rest until
    // the deadline.
    let mut stopping: Option<(libc::c_int, Instant)> = None;
    loop {
        if stopping.is_none() {
            if let Some(sig) = signals::caught() {
                stopping = Some((sig, Instant::now() + drain));
            }
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!("\rshmpipe bridge: {}   ", tally.line());
        }
        if let Some((sig, deadline)) = stopping {
            if Instant::now() >= deadline {
                return End::Signal(sig);
            }
        }
        let taken = match rx.try_recv_batch(&mut batch, BATCH) {
            Ok(n) => Ok(n),
            Err(TryRecvError::Empty) => match stopping {
                Some((sig, _)) => return End::Signal(sig),
                None => match rx.recv_batch_deadline(
                    &mut batch,
                    BATCH,
                    Instant::now().checked_add(signals::SLICE),
                ) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    r => r,
                },
            },
            Err(e) => Err(e.into()),
        };
        match taken {
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => return End::Stream,
            Err(RecvTimeoutError::Lagged(n)) => {
                tally.lagged += n;
                continue;
            }
            Err(e) => return End::Failed(format!("receiving: {e}"), 0),
        }
        let msgs: Vec<&[u8]> = batch.iter().collect();
        let mut rest = &msgs[..];
        while !rest.is_empty() {
            let sent = match tx.try_send_batch(rest) {
                Ok(k) => Ok(k),
                Err(TrySendError::Full) => {
                    if stopping.is_none() {
                        if let Some(sig) = signals::caught() {
                            stopping = Some((sig, Instant::now() + drain));
                        }
                    }
                    if let Some((_, deadline)) = stopping {
                        if Instant::now() >= deadline + drain {
                            return End::Failed(
                                format!("the destination took no more within the drain timeout ({drain:?})"),
                                rest.len(),
                            );
                        }
                    }
                    match tx.send_batch_deadline(rest, Instant::now().checked_add(signals::SLICE)) {
                        Err(SendTimeoutError::Timeout) => Ok(0),
                        r => r,
                    }
                }
                Err(e) => Err(e.into()),
            };
            match sent {
                Ok(k) => {
                    tally.messages += k as u64;
                    tally.bytes += rest[..k].iter().map(|m| m.len() as u64).sum::<u64>();
                    rest = &rest[k..];
                }
                Err(e) => return End::Failed(format!("sending: {e}"), rest.len()),
            }
        }
    }
}
