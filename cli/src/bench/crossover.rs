//! The `crossover` scenario: where message passing beats shared memory once setting up the
//! channel is counted.
//!
//! For a transport, a size and a count N, one trial is: the peer opens a fresh receiving end
//! (creating the ring or queue, or listening on the socket) and says it is ready; then, timed,
//! we open the sending end (`shmget`/`shmat` of the ring, `msgget` of the queue, `connect` of the
//! socket), send N messages, flush and close it, and wait for the peer's word that it received
//! and checked all N. The result is that time / N in ns, the median over the trials (200 trials
//! of 1 message, fewer of more, at least 5). The peer removes the channel after the timed part.
//!
//! Peer and bench talk over two pipes the peer inherits: trial numbers one way, one byte per
//! step (`r` ready, `d` done, `c` closed) the other. The ready/done hand-offs are in every
//! transport's time alike (a pipe wake-up, a few µs): they weigh on N = 1 most.
//!
//! Not run by default (only with `--scenario crossover`); `--messages` does not apply (the counts
//! are 1, 10, 100, 1000); `--size` replaces the default sizes 8, 1024, 65536.

use super::cleanup::{self, Resource};
use super::ours::{open_rx, open_tx, TempDir};
use super::raw::inherited_fd;
use super::{check, ring_capacity, stamp, Ctx, Job, Measured, PeerArgs, PeerProc, Transport, STALL};
use shmpipe::transport::shm::key_for_name;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Default sizes.
pub(super) const SIZES: [usize; 3] = [8, 1024, 65536];
/// Messages per trial.
pub(super) const COUNTS: [u64; 4] = [1, 10, 100, 1000];
/// The transports compared.
pub(super) const TRANSPORTS: [Transport; 3] = [Transport::Shm, Transport::Msgq, Transport::Unix];

/// Trials of `n` messages.
fn trials(n: u64) -> u64 {
    (1000 / n.max(1)).clamp(5, 200)
}

/// The endpoint of trial `k`; `base` is a unique name, or for `unix` a private directory.
fn endpoint(t: Transport, base: &str, k: u64, size: usize) -> Result<String, String> {
    Ok(match t {
        Transport::Shm => format!(
            "shm://{base}-{k}?capacity={}&max_message={size}",
            ring_capacity(size)
        ),
        Transport::Msgq => format!("msgq://{base}-{k}?max_message={size}"),
        Transport::Unix => format!("unix://{base}/{k}.sock?max_message={size}"),
        t => return Err(format!("{} is not compared in crossover", t.name())),
    })
}

fn read_byte(r: &mut impl Read, expected: u8, trial: u64) -> Result<(), String> {
    let mut b = [0u8];
    r.read_exact(&mut b)
        .map_err(|e| format!("trial {trial}: waiting for the peer: {e}"))?;
    if b[0] != expected {
        return Err(format!(
            "trial {trial}: the peer said {:?}, expected {:?}",
            b[0] as char, expected as char
        ));
    }
    Ok(())
}

pub(super) fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let name = ctx.unique();
    let dir = match job.transport {
        Transport::Unix => Some(TempDir::new(&name)?),
        _ => None,
    };
    let base = dir
        .as_ref()
        .map_or_else(|| name.clone(), |d| d.path.display().to_string());
    let n = job.messages;
    let (cmd_r, mut cmd_w) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (mut ack_r, ack_w) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let fds = [cmd_r.as_raw_fd(), ack_w.as_raw_fd()];
    let addrs = [base.clone(), fds[0].to_string(), fds[1].to_string()];
    let peer = PeerProc::spawn(ctx, job, &addrs, &fds)?;
    // Ours closed, so the peer's death is end of file.
    drop((cmd_r, ack_w));
    let mut msg = vec![0xa5u8; job.size];
    let mut per_msg = Vec::new();
    for k in 0..trials(n) {
        let ep = endpoint(job.transport, &base, k, job.size)?;
        // Listed for removal on interruption while the peer may hold it.
        let token = match job.transport {
            Transport::Shm => Some(Resource::ShmKey(key_for_name(&format!("{base}-{k}")))),
            Transport::Msgq => Some(Resource::MsgqKey(key_for_name(&format!("{base}-{k}")))),
            _ => None,
        }
        .map(|r| cleanup::lock().add(r));
        let trial = (|| {
            cmd_w
                .write_all(&k.to_le_bytes())
                .map_err(|e| format!("trial {k}: telling the peer: {e}"))?;
            read_byte(&mut ack_r, b'r', k)?;
            let t0 = Instant::now();
            let mut tx = open_tx(&ep)?;
            for i in 0..n {
                stamp(&mut msg, i);
                tx.send_timeout(&msg, STALL)
                    .map_err(|e| format!("trial {k}: sending message {i}: {e}"))?;
            }
            tx.flush_deadline(Some(Instant::now() + STALL))
                .map_err(|e| format!("trial {k}: flushing: {e}"))?;
            drop(tx);
            read_byte(&mut ack_r, b'd', k)?;
            let dt = t0.elapsed();
            read_byte(&mut ack_r, b'c', k)?;
            Ok::<_, String>(dt)
        })();
        if let Some(token) = token {
            cleanup::lock().forget(token);
        }
        per_msg.push(trial?.as_nanos() as u64 / n);
    }
    // End of file for the peer: it exits.
    drop(cmd_w);
    peer.finish()?;
    per_msg.sort_unstable();
    Ok(Measured::PerMessage(per_msg[per_msg.len() / 2]))
}

/// The peer's side: one receiving end per trial number read.
pub(super) fn peer(args: &PeerArgs) -> Result<(), String> {
    let [base, cmd, ack] = &args.addr[..] else {
        return Err("expected three --addr".into());
    };
    let mut cmd = io::PipeReader::from(inherited_fd(cmd)?);
    let mut ack = io::PipeWriter::from(inherited_fd(ack)?);
    let mut say = |b: u8| ack.write_all(&[b]).map_err(|e| format!("answering: {e}"));
    let mut buf = Vec::with_capacity(args.size);
    loop {
        let mut k = [0u8; 8];
        match cmd.read_exact(&mut k) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading the next trial: {e}")),
        }
        let k = u64::from_le_bytes(k);
        let mut rx = open_rx(&endpoint(args.transport, base, k, args.size)?)?;
        say(b'r')?;
        for i in 0..args.messages {
            rx.recv_timeout(&mut buf, STALL)
                .map_err(|e| format!("trial {k}: receiving message {i}: {e}"))?;
            check(&buf, args.size, i)?;
        }
        say(b'd')?;
        drop(rx);
        say(b'c')?;
    }
}
