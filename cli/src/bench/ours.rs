//! Our transports, driven only through `Endpoint` and the `Sender`/`Receiver` traits.
//!
//! Channels: `up` carries the peer's messages to us (the throughput stream and the latency
//! pongs), `down` our pings to the peer. We open our ends before spawning the peer; for sockets
//! we listen on both (`down` gets `listen=sender`), so the peer only ever connects.

use super::cleanup::{self, Resource, Token};
use super::{
    check, stamp, Ctx, Job, Latencies, Measured, PeerArgs, PeerProc, Scenario, StreamClock, Transport, STALL,
};
use shmpipe::endpoint::Endpoint;
use shmpipe::transport::shm::key_for_name;
use shmpipe::{Receiver, Sender, TryRecvError};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Instant;

type Tx = Box<dyn Sender + Send>;
type Rx = Box<dyn Receiver + Send>;

/// A private directory for Unix socket files, removed with everything in it on drop.
pub(super) struct TempDir {
    pub(super) path: PathBuf,
    token: Token,
}

impl TempDir {
    pub(super) fn new(name: &str) -> Result<TempDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("shmpipe-{name}"));
        let mut reg = cleanup::lock();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let token = reg.add(Resource::Dir(path.clone()));
        Ok(TempDir { path, token })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let mut reg = cleanup::lock();
        let _ = std::fs::remove_dir_all(&self.path);
        reg.forget(self.token);
    }
}

/// The `up` and `down` endpoints of one measurement, and what must outlive them.
struct Endpoints {
    up: String,
    down: String,
    _dir: Option<TempDir>,
    /// The SysV keys of the rings or queues, listed for removal on interruption (the ends remove
    /// them themselves when dropped, before this is).
    keys: Vec<Token>,
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        let mut reg = cleanup::lock();
        for t in self.keys.drain(..) {
            reg.forget(t);
        }
    }
}

/// Lists the keys of channels `NAME-up` and `NAME-down` (before they exist).
fn list_keys(name: &str, shm: bool) -> Vec<Token> {
    let mut reg = cleanup::lock();
    ["up", "down"]
        .iter()
        .map(|dir| {
            let key = key_for_name(&format!("{name}-{dir}"));
            reg.add(if shm {
                Resource::ShmKey(key)
            } else {
                Resource::MsgqKey(key)
            })
        })
        .collect()
}

/// Free TCP ports on 127.0.0.1, found by binding port 0 (all held at once, so they differ) and
/// released for the transport to bind. Another process could take one in between: unlikely.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding a free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("finding a free port: {e}"))
}

fn endpoints(ctx: &Ctx, job: &Job) -> Result<Endpoints, String> {
    let name = ctx.unique();
    let size = job.size;
    let capacity = super::ring_capacity(size);
    let ring = |dir: &str, wait: &str| {
        format!("shm://{name}-{dir}?capacity={capacity}&max_message={size}&wait={wait}")
    };
    let queue = |dir: &str| format!("msgq://{name}-{dir}?max_message={size}");
    Ok(match job.transport {
        Transport::Shm => Endpoints {
            up: ring("up", "spin"),
            down: ring("down", "spin"),
            _dir: None,
            keys: list_keys(&name, true),
        },
        // Async receivers; the streaming sender spins as for `shm`, and the pings' sends never
        // wait (see `aio`).
        Transport::ShmAsync if job.scenario == Scenario::Throughput => Endpoints {
            up: ring("up", "spin"),
            down: ring("down", "spin"),
            _dir: None,
            keys: list_keys(&name, true),
        },
        Transport::ShmPark | Transport::ShmAsync => Endpoints {
            up: ring("up", "park"),
            down: ring("down", "park"),
            _dir: None,
            keys: list_keys(&name, true),
        },
        Transport::Msgq => Endpoints {
            up: queue("up"),
            down: queue("down"),
            _dir: None,
            keys: list_keys(&name, false),
        },
        Transport::Unix => {
            let dir = TempDir::new(&name)?;
            let sock = |d: &str| format!("unix://{}/{d}.sock?max_message={size}", dir.path.display());
            Endpoints {
                up: sock("up"),
                down: sock("down") + "&listen=sender",
                _dir: Some(dir),
                keys: Vec::new(),
            }
        }
        Transport::Tcp => {
            let ports = free_ports(2)?;
            let sock = |p: u16| format!("tcp://127.0.0.1:{p}?max_message={size}");
            Endpoints {
                up: sock(ports[0]),
                down: sock(ports[1]) + "&listen=sender",
                _dir: None,
                keys: Vec::new(),
            }
        }
        // The receiving side of each direction listens; the peer's ends connect (`for_peer`).
        Transport::Zenoh => {
            let ports = free_ports(2)?;
            let key = |d: &str, p: u16| {
                format!("zenoh://shmpipe-bench/{name}-{d}?listen=tcp/127.0.0.1:{p}&max_message={size}")
            };
            Endpoints {
                up: key("up", ports[0]),
                down: key("down", ports[1]),
                _dir: None,
                keys: Vec::new(),
            }
        }
        t => unreachable!("{} is not ours", t.name()),
    })
}

/// The endpoint as the peer process opens it: the same, but a `zenoh://` one connects to the
/// locator this process listens on (two sessions cannot both listen on it).
fn for_peer(endpoint: &str) -> String {
    if endpoint.starts_with("zenoh://") {
        endpoint.replacen("?listen=", "?connect=", 1)
    } else {
        endpoint.to_owned()
    }
}

pub(super) fn open_tx(endpoint: &str) -> Result<Tx, String> {
    Endpoint::parse(endpoint)
        .and_then(Endpoint::open_sender)
        .map_err(|e| format!("opening {endpoint}: {e}"))
}

pub(super) fn open_rx(endpoint: &str) -> Result<Rx, String> {
    Endpoint::parse(endpoint)
        .and_then(Endpoint::open_receiver)
        .map_err(|e| format!("opening {endpoint}: {e}"))
}

pub(super) fn measure(ctx: &Ctx, job: &Job) -> Result<Measured, String> {
    let eps = endpoints(ctx, job)?;
    match job.scenario {
        Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
            Err(super::NOT_CROSSOVER.into())
        }
        Scenario::Throughput if job.transport == Transport::ShmAsync => {
            let mut rx = super::aio::open_rx(&eps.up)?;
            let peer = PeerProc::spawn(ctx, job, std::slice::from_ref(&eps.up), &[])?;
            let rate = super::aio::receive_stream(&mut rx, job.size, job.messages)?;
            drop(rx);
            peer.finish()?;
            Ok(Measured::Rate(rate))
        }
        Scenario::Latency if job.transport == Transport::ShmAsync => {
            let mut tx = super::aio::open_tx(&eps.down)?;
            let mut rx = super::aio::open_rx(&eps.up)?;
            let peer = PeerProc::spawn(ctx, job, &[eps.down.clone(), eps.up.clone()], &[])?;
            let latencies = super::aio::ping(&mut tx, &mut rx, job.warmup, job.messages)?;
            drop((tx, rx));
            peer.finish()?;
            Ok(Measured::Latency(latencies))
        }
        Scenario::Throughput => {
            let mut rx = open_rx(&eps.up)?;
            let peer = PeerProc::spawn(ctx, job, &[for_peer(&eps.up)], &[])?;
            let rate = receive_stream(&mut rx, job.size, job.messages)?;
            drop(rx);
            peer.finish()?;
            Ok(Measured::Rate(rate))
        }
        Scenario::Latency => {
            let mut tx = open_tx(&eps.down)?;
            let mut rx = open_rx(&eps.up)?;
            let peer = PeerProc::spawn(ctx, job, &[for_peer(&eps.down), for_peer(&eps.up)], &[])?;
            let latencies = ping(&mut tx, &mut rx, job.warmup, job.messages)?;
            drop((tx, rx));
            peer.finish()?;
            Ok(Measured::Latency(latencies))
        }
    }
}

/// Receives and checks `n` messages; returns messages per second.
fn receive_stream(rx: &mut Rx, size: usize, n: u64) -> Result<f64, String> {
    let mut buf = Vec::with_capacity(size);
    let mut clock = StreamClock::new();
    for i in 0..n {
        // Take what is there without a clock read; block (with a deadline, in case the peer
        // never comes) only when the channel is empty.
        match rx.try_recv(&mut buf) {
            Ok(()) => {}
            Err(TryRecvError::Empty) => rx
                .recv_timeout(&mut buf, STALL)
                .map_err(|e| format!("receiving message {i}: {e}"))?,
            Err(e) => return Err(format!("receiving message {i}: {e}")),
        }
        clock.mark(i, n);
        check(&buf, size, i)?;
    }
    clock.rate(n)
}

/// `warmup` then `n` timed round trips; returns the timed ones, halved.
fn ping(tx: &mut Tx, rx: &mut Rx, warmup: u64, n: u64) -> Result<Latencies, String> {
    let mut latencies = Latencies::new();
    let mut buf = Vec::with_capacity(super::PING_SIZE);
    for i in 0..warmup + n {
        let msg = i.to_le_bytes();
        // Warm-up waits have deadlines, in case the peer never comes; once it has answered,
        // the transports notice its death themselves, and the timed loop waits without one.
        let warm = i < warmup.max(1);
        let t0 = Instant::now();
        if warm {
            tx.send_timeout(&msg, STALL)
                .map_err(|e| format!("sending ping {i}: {e}"))?;
            rx.recv_timeout(&mut buf, STALL)
                .map_err(|e| format!("receiving pong {i}: {e}"))?;
        } else {
            tx.send(&msg).map_err(|e| format!("sending ping {i}: {e}"))?;
            rx.recv(&mut buf)
                .map_err(|e| format!("receiving pong {i}: {e}"))?;
        }
        let dt = t0.elapsed();
        check(&buf, super::PING_SIZE, i)?;
        if i >= warmup {
            latencies.record_round_trip(dt);
        }
    }
    Ok(latencies)
}

/// The peer's side.
pub(super) fn peer(args: &PeerArgs) -> Result<(), String> {
    match args.scenario {
        Scenario::Crossover | Scenario::Mpmc | Scenario::Fanout | Scenario::Async => {
            Err(super::NOT_CROSSOVER.into())
        }
        Scenario::Throughput => {
            let [up] = &args.addr[..] else {
                return Err("expected one --addr".into());
            };
            if args.transport == Transport::ShmAsync {
                return super::aio::send_stream(args, up);
            }
            let mut tx = open_tx(up)?;
            let mut buf = vec![0xa5u8; args.size];
            for i in 0..args.messages {
                stamp(&mut buf, i);
                tx.send(&buf).map_err(|e| format!("sending message {i}: {e}"))?;
            }
            tx.flush_deadline(None).map_err(|e| format!("flushing: {e}"))
        }
        Scenario::Latency => {
            let [down, up] = &args.addr[..] else {
                return Err("expected two --addr".into());
            };
            if args.transport == Transport::ShmAsync {
                return super::aio::echo(args, down, up);
            }
            let mut rx = open_rx(down)?;
            let mut tx = open_tx(up)?;
            let mut buf = Vec::with_capacity(args.size);
            for i in 0..args.messages {
                rx.recv(&mut buf)
                    .map_err(|e| format!("receiving ping {i}: {e}"))?;
                tx.send(&buf).map_err(|e| format!("sending pong {i}: {e}"))?;
            }
            tx.flush_deadline(None).map_err(|e| format!("flushing: {e}"))
        }
    }
}
