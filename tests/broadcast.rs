//! The broadcast ring (`shm://NAME?mode=broadcast`) between real processes: subscribers (and
//! sometimes the publisher) are child processes (this test binary re-run in a role, see
//! `tests/common`); the test orchestrates, stops, kills and corrupts.
//!
//! - 1 publisher x 4 subscriber processes: every subscriber gets exactly the published stream;
//! - `overflow=block`: a subscriber SIGKILLed mid-stream is reaped, the publisher goes on;
//! - late joins at the latest and at the oldest message;
//! - `overflow=overwrite`: a SIGSTOPped subscriber never holds the publisher, and
//!   received + missed == published exactly, also for a slow subscriber lapped while it copies;
//! - `tether=false` on a block ring;
//! - corruption through a raw attachment: `Corrupted`, never a crash or a hang;
//! - PID namespaces and fork();
//! - one publisher at a time, the policy fixed at creation.
//!
//! Every test checks that the segment and its semaphore set are gone at its end.

mod common;

use common::*;
use shmpipe::ring::broadcast::{Overflow, Publisher, Start, Subscriber};
use shmpipe::ring::RingKind;
use shmpipe::transport::shm::ShmConfig;
use shmpipe::{
    Error, Peer, Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Sender, TryRecvError,
    TrySendError,
};
use std::collections::HashMap;
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Largest message of every ring here.
const MAX: usize = 128;
/// Bytes before the payload: sequence number (u64 LE), payload checksum (u32 LE).
const HEAD: usize = 12;

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    if !role.starts_with("b_") {
        return child_main();
    }
    child_watchdog(Duration::from_secs(100));
    let ring = std::env::var(RING_ENV).expect("ring name");
    let a = Args::from_env();
    match role.as_str() {
        "b_pub" => role_pub(&ring, &a),
        "b_sub" => role_sub(&ring, &a),
        "b_open" => role_open(&ring, &a),
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

/// The heavy tests take turns: on two cores, running them together only makes each slower and
/// the timing bounds of the others meaningless.
fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

fn payload_len(seq: u64) -> usize {
    (seq as usize).wrapping_mul(37) % (MAX - HEAD + 1)
}

fn payload_byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(131) as usize).wrapping_add(i * 29) as u8
}

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Message `seq`: its number, the checksum of its payload, a payload of varied length (0..=116).
fn encode(seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend((0..payload_len(seq)).map(|i| payload_byte(seq, i)));
    let sum = fnv(&out[HEAD..]);
    out[8..12].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a received message byte for byte (a torn copy fails here) and returns its number.
fn decode(msg: &[u8]) -> Result<u64, String> {
    if msg.len() < HEAD {
        return Err(format!("message of {} bytes has no header", msg.len()));
    }
    let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
    let sum = u32::from_le_bytes(msg[8..12].try_into().unwrap());
    let payload = &msg[HEAD..];
    if payload.len() != payload_len(seq) || fnv(payload) != sum {
        return Err(format!("message {seq} is torn or damaged ({} bytes)", msg.len()));
    }
    if payload
        .iter()
        .enumerate()
        .any(|(i, &b)| b != payload_byte(seq, i))
    {
        return Err(format!("message {seq} has the wrong payload"));
    }
    Ok(seq)
}

/// The running checksum of messages `from..to`, as a subscriber that got exactly those computes.
fn stream_sum(from: u64, to: u64) -> u64 {
    let mut buf = Vec::new();
    (from..to).fold(0, |sum, seq| {
        encode(seq, &mut buf);
        checksum(sum, &buf)
    })
}

/// `key=value` words of a protocol line, by key.
fn kv(words: &[String]) -> HashMap<String, String> {
    words
        .iter()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(m: &HashMap<String, String>, k: &str) -> u64 {
    m.get(k)
        .unwrap_or_else(|| panic!("no {k} in {m:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} in {m:?} is not a number"))
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// The broadcast config of a child: `cap`, `overflow=overwrite`, `untethered=1`,
/// `start=oldest`, `subs=N` (the publisher waits for N), `slice=ms` (park slice).
fn bcfg(ring: &str, a: &Args) -> ShmConfig {
    let mut cfg = ShmConfig::named(ring)
        .unwrap()
        .capacity(a.num("cap", 64) as usize)
        .max_message(MAX)
        .kind(RingKind::Broadcast);
    cfg.open_timeout = Duration::from_secs(10);
    if a.get("overflow") == Some("overwrite") {
        cfg.overflow = Overflow::Overwrite;
    }
    cfg.subscription.tethered = !a.flag("untethered");
    if a.get("start") == Some("oldest") {
        cfg.subscription.start = Start::Oldest;
    }
    cfg.expect_subscribers = a.num("subs", 0) as u32;
    if let Some(ms) = a.opt("slice") {
        cfg.wait.park_slice = Duration::from_millis(ms);
    }
    cfg
}

fn read_line() -> String {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
        std::process::exit(98);
    }
    line.trim().to_string()
}

fn wait_go() {
    assert_eq!(read_line(), "GO", "unexpected command");
}

/// Opens the publisher, says `READY`, publishes messages `0..n` (`try=1`: all but the first with
/// `try_send`, saying `ERR` at the first refusal, for a publisher that must never wait), then says
/// `SENT n=.. sum=.. ms=..` and its stats, drops the publisher and says `DONE`. `pause_at=K`:
/// after K messages says `AT K` and waits for `GO`.
fn role_pub(ring: &str, a: &Args) {
    let mut tx = bcfg(ring, a).open_publisher().expect("child open_publisher");
    tell("READY");
    let n = a.num("n", 0);
    let pause = a.opt("pause_at");
    let only_try = a.flag("try");
    let mut buf = Vec::new();
    let mut sum = 0;
    let t0 = Instant::now();
    for seq in 0..n {
        if pause == Some(seq) {
            tell(&format!("AT {seq}"));
            wait_go();
        }
        encode(seq, &mut buf);
        sum = checksum(sum, &buf);
        // The first message waits for the `subs` subscribers (`try_send` says Full until then).
        let r = if only_try && seq > 0 {
            tx.try_send(&buf).map_err(|e| format!("{e:?}"))
        } else {
            tx.send_timeout(&buf, Duration::from_secs(60))
                .map_err(|e| format!("{e:?}"))
        };
        if let Err(e) = r {
            tell(&format!("ERR {e} at={seq}"));
            return;
        }
    }
    let ms = t0.elapsed().as_millis();
    let st = tx.stats();
    tell(&format!(
        "SENT n={n} sum={sum} ms={ms} subscribers={} joined={} died={} missed={}",
        st.subscribers, st.joined, st.died, st.missed
    ));
    drop(tx);
    tell("DONE");
}

/// Opens a subscriber, says `READY`, then receives until the stream ends, checking every
/// message (byte for byte) and that each is exactly the one expected: the next after the
/// previous, or after a `Lagged(n)` the previous + 1 + n. The first message sets the start
/// (unless `from=K` says where, for a subscriber lapped before its first message). Says
/// `GOT count=.. sum=.. first=.. last=.. missed=.. lags=.. own=.. end=.. publisher=..`
/// (`own`: the subscriber's own `missed()`), or `ERR ...` on a wrong message.
/// `at=K`: says `AT K` after K messages. `stall_after=K`: after K messages says `STALLED` and
/// holds the subscriber without reading, until killed. `slow=K`: sleeps 1 ms every K messages.
/// `until=K`: stops (`end=Until`) once message K - 1 was received or skipped, with the
/// publisher still there.
fn role_sub(ring: &str, a: &Args) {
    let mut rx = bcfg(ring, a).open_subscriber().expect("child open_subscriber");
    tell(&format!("READY {}", std::process::id()));
    let at = a.opt("at");
    let stall = a.opt("stall_after");
    let slow = a.opt("slow");
    let until = a.opt("until");
    let borrow = a.opt("borrow") == Some(1);
    let mut in_place = 0u64;
    let mut expected = a.opt("from");
    let (mut count, mut sum, mut missed, mut lags) = (0u64, 0u64, 0u64, 0u64);
    let (mut first, mut last) = (None, None);
    let mut buf = Vec::new();
    let end = loop {
        if stall == Some(count) {
            tell("STALLED");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if until.is_some() && expected >= until {
            break "Until".to_string();
        }
        let r = if borrow {
            // The zero-copy form: the message in its slot where that is safe, else a copy.
            rx.recv_ref_timeout(Duration::from_secs(60)).map(|g| {
                in_place += u64::from(g.is_in_place());
                buf.clear();
                buf.extend_from_slice(&g);
            })
        } else {
            rx.recv_timeout(&mut buf, Duration::from_secs(60))
        };
        match r {
            Ok(()) => {
                let seq = match decode(&buf) {
                    Ok(seq) => seq,
                    Err(e) => {
                        tell(&format!("ERR {e} after={count}"));
                        return;
                    }
                };
                if expected.is_some_and(|want| want != seq) {
                    tell(&format!(
                        "ERR order: got {seq}, expected {} after={count}",
                        expected.unwrap()
                    ));
                    return;
                }
                first.get_or_insert(seq);
                last = Some(seq);
                expected = Some(seq + 1);
                sum = checksum(sum, &buf);
                count += 1;
                if at == Some(count) {
                    tell(&format!("AT {count}"));
                }
                if slow.is_some_and(|k| count.is_multiple_of(k)) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(RecvTimeoutError::Lagged(n)) => {
                let Some(want) = expected else {
                    tell("ERR lagged before the first message without from=");
                    return;
                };
                if n == 0 {
                    tell("ERR Lagged(0)");
                    return;
                }
                expected = Some(want + n);
                missed += n;
                lags += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break "Disconnected".to_string(),
            Err(e) => break format!("{e:?}").replace(' ', "_"),
        }
    };
    let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    tell(&format!(
        "GOT count={count} sum={sum} first={} last={} missed={missed} lags={lags} own={} end={end} \
         in_place={in_place} publisher={:?}",
        show(first),
        show(last),
        rx.missed(),
        rx.publisher()
    ));
}

/// Opens `side` (publisher or subscriber), says `OPENED Ok` or `OPENED <error variant>`, then
/// (if it opened) waits for `GO`, drops it and says `DONE`.
fn role_open(ring: &str, a: &Args) {
    let cfg = bcfg(ring, a);
    let end: Result<Box<dyn std::any::Any>, Error> = match a.get("side") {
        Some("subscriber") => cfg
            .open_subscriber()
            .map(|s| Box::new(s) as Box<dyn std::any::Any>),
        _ => cfg
            .open_publisher()
            .map(|p| Box::new(p) as Box<dyn std::any::Any>),
    };
    match end {
        Ok(end) => {
            tell("OPENED Ok");
            wait_go();
            drop(end);
            tell("DONE");
        }
        Err(e) => {
            let variant = format!("{e:?}");
            let variant = variant.split(['(', ' ', '{']).next().unwrap().to_string();
            tell(&format!("OPENED {variant} {}", e.to_string().replace('\n', " ")));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test helpers
// ---------------------------------------------------------------------------------------------

fn args(list: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    list.to_vec()
}

/// A child in `role` on `ring`.
fn spawn(role: &str, ring: &Ring, a: &[(&'static str, String)]) -> Proc {
    Proc::child(role, &ring.name, a)
}

/// A subscriber child, opened (its `READY` seen).
fn subscriber(ring: &Ring, a: &[(&'static str, String)]) -> Proc {
    let mut p = spawn("b_sub", ring, a);
    p.expect("READY");
    p
}

/// The parent's config for `ring`.
fn cfg(ring: &Ring, cap: usize, overflow: Overflow) -> ShmConfig {
    let mut c = ring.cfg(cap, MAX).kind(RingKind::Broadcast);
    c.overflow = overflow;
    c
}

/// The `GOT` report of a subscriber child, by key.
fn got(p: &mut Proc) -> HashMap<String, String> {
    let line = p.line(SOON);
    assert!(
        line.starts_with("GOT "),
        "subscriber said {line:?}; stderr:\n{}",
        p.stderr_text()
    );
    kv(&line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
}

/// Asserts a subscriber got exactly messages `from..to`, in order, nothing missed, then the
/// end of the stream from a publisher that closed.
fn assert_exact(m: &HashMap<String, String>, from: u64, to: u64) {
    assert_eq!(num(m, "count"), to - from, "{m:?}");
    assert_eq!(num(m, "first"), from, "{m:?}");
    assert_eq!(num(m, "last"), to - 1, "{m:?}");
    assert_eq!(num(m, "missed"), 0, "{m:?}");
    assert_eq!(num(m, "sum"), stream_sum(from, to), "{m:?}");
    assert_eq!(m["end"], "Disconnected", "{m:?}");
    assert_eq!(m["publisher"], "Closed", "{m:?}");
}

/// The semaphore set of the live ring `ring` (to check it goes with the ring).
fn sem_set(ring: &Ring) -> i32 {
    let id = ring.shmid().expect("the ring exists");
    sems_of(id).expect("the ring's semaphore set")
}

/// What `ipcs` would show of the ring: nothing, neither the segment nor its semaphore set.
fn assert_no_ipc(ring: &Ring, set: i32, context: &str) {
    // The last member's drop removes both, but a child's exit is asynchronous to our `wait`
    // only until it is reaped; allow a moment for a segment a child removed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (ring.exists() || sem_count(set).is_some()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    ring.assert_gone(context);
    assert_eq!(sem_count(set), None, "{context}: semaphore set {set} left behind");
}

/// Publishes `from..to` with `send_timeout`.
fn publish(tx: &mut Publisher, from: u64, to: u64) {
    let mut buf = Vec::new();
    for seq in from..to {
        encode(seq, &mut buf);
        tx.send_timeout(&buf, SOON)
            .unwrap_or_else(|e| panic!("publishing {seq}: {e:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_offsets_in_tests_common_match_a_live_ring() {
    // The corruption tests below write through these offsets: check them first.
    let ring = Ring::new("bc-offsets");
    let mut tx = cfg(&ring, 8, Overflow::Overwrite).open_publisher().unwrap();
    let mut c = cfg(&ring, 8, Overflow::Overwrite);
    c.subscription.tethered = false;
    let mut rx = c.open_subscriber().unwrap();
    let set = sem_set(&ring);
    publish(&mut tx, 0, 11);
    let mut buf = Vec::new();
    // Joined at 0, lapped: 3..11 are the last 8 (capacity), 0..3 missed.
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Lagged(3)));
    let raw = RawSeg::attach_key(ring.key);
    assert_eq!(raw.u64(bc::TAIL), 11);
    assert_eq!(raw.u32(bc::POLICY), 2);
    assert_eq!(
        (raw.u32(bc::SUBSCRIBERS), raw.u32(bc::JOINED), raw.u32(bc::DIED)),
        (1, 1, 0)
    );
    assert_eq!(raw.u64(bc::MISSED), 3);
    assert_eq!(raw.u32(bc::SUBS), 2, "record 0 is untethered");
    assert_eq!(raw.u32(bc::SUBS + 4), std::process::id());
    assert_eq!(raw.u64(bc::cursor(0)), 3);
    for p in 3..11u64 {
        assert_eq!(raw.u64(bc::seq(p as usize % 8, MAX)), 2 * p + 2, "slot of {p}");
    }
    let len = raw.u32(bc::SLOTS + 3 * bc::stride(MAX)) as usize;
    let mut want = Vec::new();
    encode(3, &mut want);
    assert_eq!(len, want.len());
    assert_eq!(raw.bytes(bc::SLOTS + 3 * bc::stride(MAX) + 16, len), want);
    assert_eq!(raw.len, bc::SLOTS + 8 * bc::stride(MAX));
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(decode(&buf), Ok(3));
    drop(raw);
    drop(rx);
    drop(tx);
    assert_no_ipc(&ring, set, "after both ends left");
}

#[test]
fn four_subscriber_processes_each_get_the_whole_stream_in_order() {
    let _heavy = heavy();
    const N: u64 = 200_000;
    let ring = Ring::new("bc-fanout");
    let cap = ("cap", "256".to_string());
    let mut publisher = spawn(
        "b_pub",
        &ring,
        &args(&[("n", N.to_string()), ("subs", "4".into()), cap.clone()]),
    );
    publisher.expect("READY");
    let set = sem_set(&ring);
    // Two of them read with `recv_ref_timeout`: on a block ring, in place every time.
    let mut subs: Vec<Proc> = (0..4)
        .map(|i| subscriber(&ring, &[cap.clone(), ("borrow", u64::from(i < 2).to_string())]))
        .collect();
    let t0 = Instant::now();
    let line = publisher.line(Duration::from_secs(120));
    let sent = kv(&line.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    assert!(line.starts_with("SENT "), "publisher said {line:?}");
    publisher.expect("DONE");
    publisher.wait_success(SOON);
    eprintln!("{N} messages to 4 subscriber processes in {:?}", t0.elapsed());
    assert_eq!(num(&sent, "sum"), stream_sum(0, N));
    assert_eq!(
        (num(&sent, "joined"), num(&sent, "died"), num(&sent, "missed")),
        (4, 0, 0)
    );
    for (i, s) in subs.iter_mut().enumerate() {
        let m = got(s);
        assert_exact(&m, 0, N);
        assert_eq!(num(&m, "own"), 0);
        assert_eq!(num(&m, "in_place"), if i < 2 { N } else { 0 }, "subscriber {i}");
        s.wait_success(SOON);
    }
    assert_no_ipc(&ring, set, "after the publisher and every subscriber left");
}

/// The published position, read through a raw attachment while the ring lives.
fn tail_of(ring: &Ring) -> u64 {
    RawSeg::attach_key(ring.key).u64(bc::TAIL)
}

/// Waits (at most `bound`) until the ring has published more than `past`; returns how long.
fn until_published_past(ring: &Ring, past: u64, bound: Duration) -> Duration {
    let raw = RawSeg::attach_key(ring.key);
    let t0 = Instant::now();
    while raw.u64(bc::TAIL) <= past {
        assert!(
            t0.elapsed() < bound,
            "the publisher is still held at {} after {bound:?}",
            raw.u64(bc::TAIL)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t0.elapsed()
}

/// Publishes `0..n` on a thread; the channel says when it finished.
fn publish_on_thread(
    mut tx: Publisher,
    n: u64,
) -> (std::thread::JoinHandle<Publisher>, mpsc::Receiver<Instant>) {
    let (done_tx, done) = mpsc::channel();
    let h = std::thread::spawn(move || {
        publish(&mut tx, 0, n);
        let _ = done_tx.send(Instant::now());
        tx
    });
    (h, done)
}

/// The kill test, with `victim` spawned by `spawn_sub` (here or in a PID namespace).
fn killed_subscriber_is_reaped(tag: &str, spawn_sub: fn(&Ring, &[(&'static str, String)]) -> Proc) {
    const N: u64 = 20_000;
    const CAP: u64 = 64;
    const STALL: u64 = 1000;
    let ring = Ring::new(tag);
    let mut c = cfg(&ring, CAP as usize, Overflow::Block);
    c.expect_subscribers = 3;
    let tx = c.open_publisher().unwrap();
    let set = sem_set(&ring);
    let mut a = spawn_sub(&ring, &[]);
    let mut b = spawn_sub(&ring, &[]);
    let mut victim = spawn_sub(&ring, &args(&[("stall_after", STALL.to_string())]));
    let (publisher, done) = publish_on_thread(tx, N);
    victim.expect("STALLED");
    // The victim holds the publisher a ring past its cursor (the others keep up).
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        done.try_recv().is_err(),
        "the publisher finished past a stalled subscriber"
    );
    let held = tail_of(&ring);
    assert!(
        held <= STALL + CAP,
        "published {held} past a subscriber at {STALL}"
    );
    victim.kill();
    victim.wait(SOON);
    // Reaped after a park slice (100 ms by default): the publisher moves on.
    let lag = until_published_past(&ring, STALL + CAP, DEATH_BOUND);
    eprintln!("the publisher went on {lag:?} after the kill");
    done.recv_timeout(Duration::from_secs(60))
        .expect("the publisher finished");
    let tx = publisher.join().unwrap();
    let st = tx.stats();
    assert_eq!(
        (st.published, st.subscribers, st.joined, st.died, st.missed),
        (N, 2, 3, 1, 0),
        "{st:?}"
    );
    drop(tx);
    for s in [&mut a, &mut b] {
        assert_exact(&got(s), 0, N);
        s.wait_success(SOON);
    }
    assert_no_ipc(&ring, set, "after the publisher and the subscribers left");
}

#[test]
fn a_subscriber_killed_mid_stream_does_not_wedge_a_blocking_publisher() {
    killed_subscriber_is_reaped("bc-kill", subscriber);
}

#[test]
fn late_subscribers_get_a_contiguous_suffix_from_the_latest_or_the_oldest_message() {
    const CAP: u64 = 64;
    const K: u64 = 2000;
    const S: u64 = 4000;
    const N: u64 = 8000;
    let ring = Ring::new("bc-late");
    let mut c = cfg(&ring, CAP as usize, Overflow::Block);
    c.expect_subscribers = 1;
    let mut tx = c.open_publisher().unwrap();
    let set = sem_set(&ring);
    let mut early = subscriber(&ring, &[]);
    publish(&mut tx, 0, K);
    // Joined while the publisher waits at K: exact starts. The oldest-starter reads what the
    // ring still holds (the slot of K - 64 is the next to be overwritten, so from K - 63)
    // before the stream goes on.
    let mut latest = subscriber(&ring, &[]);
    let mut oldest = subscriber(
        &ring,
        &args(&[("start", "oldest".into()), ("at", (CAP - 1).to_string())]),
    );
    oldest.expect("AT");
    publish(&mut tx, K, S);
    // Joined while the stream flows.
    let mut latest2 = spawn("b_sub", &ring, &[]);
    let mut oldest2 = spawn("b_sub", &ring, &args(&[("start", "oldest".into())]));
    let mut buf = Vec::new();
    let mut seq = S;
    let mut ready = 0;
    while ready < 2 {
        ready += [&mut latest2, &mut oldest2]
            .into_iter()
            .filter_map(|p| p.try_line(Duration::ZERO))
            .inspect(|l| assert!(l.starts_with("READY"), "{l}"))
            .count();
        assert!(
            seq < N - CAP,
            "the stream ended before the late subscribers joined"
        );
        encode(seq, &mut buf);
        tx.send_timeout(&buf, SOON).unwrap();
        seq += 1;
    }
    let joined_by = seq;
    publish(&mut tx, seq, N);
    assert_eq!(tx.stats().joined, 5);
    drop(tx);
    assert_exact(&got(&mut early), 0, N);
    assert_exact(&got(&mut latest), K, N);
    assert_exact(&got(&mut oldest), K - (CAP - 1), N);
    let m = got(&mut latest2);
    let first = num(&m, "first");
    assert!(
        (S..=joined_by).contains(&first),
        "{m:?}: joined in {S}..={joined_by}"
    );
    assert_exact(&m, first, N);
    let m = got(&mut oldest2);
    let first = num(&m, "first");
    assert!(
        (S + 1 - CAP..=joined_by).contains(&first),
        "{m:?}: joined in {S}..={joined_by}, at most {CAP} back"
    );
    assert_exact(&m, first, N);
    for p in [early, latest, oldest, latest2, oldest2].iter_mut() {
        p.wait_success(SOON);
    }
    assert_no_ipc(&ring, set, "after everyone left");
}

/// Subscriber args for an exact count from 0 of a stream of `n` that may lap it.
fn lossy(n: u64, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v = args(&[("from", "0".into()), ("until", n.to_string())]);
    v.extend_from_slice(more);
    v
}

#[test]
fn overwrite_never_waits_for_a_stopped_subscriber_and_counts_what_it_missed_exactly() {
    const CAP: u64 = 64;
    const K: u64 = 32;
    const N: u64 = 50_000;
    let ring = Ring::new("bc-stop");
    let mut c = cfg(&ring, CAP as usize, Overflow::Overwrite);
    c.expect_subscribers = 2;
    let mut tx = c.open_publisher().unwrap();
    let set = sem_set(&ring);
    let ow = ("overflow", "overwrite".to_string());
    let mut stopped = subscriber(&ring, &lossy(N, &[ow.clone(), ("at", K.to_string())]));
    let mut running = subscriber(&ring, &lossy(N, std::slice::from_ref(&ow)));
    let mut buf = Vec::new();
    let mut send = |tx: &mut Publisher, seq: u64| {
        encode(seq, &mut buf);
        // Never Full: the publisher never waits.
        tx.try_send(&buf)
            .unwrap_or_else(|e| panic!("publishing {seq}: {e:?}"));
    };
    for seq in 0..K {
        send(&mut tx, seq);
    }
    stopped.expect("AT");
    sigstop(&stopped);
    let t0 = Instant::now();
    for seq in K..N {
        send(&mut tx, seq);
    }
    eprintln!(
        "published {} while a subscriber was stopped in {:?}",
        N - K,
        t0.elapsed()
    );
    sigcont(&stopped);
    // Resumed after the stream ended: it misses all but the last ring, exactly.
    let m = got(&mut stopped);
    assert_eq!(
        (num(&m, "count"), num(&m, "missed"), num(&m, "lags")),
        (K + CAP, N - K - CAP, 1),
        "{m:?}"
    );
    assert_eq!((num(&m, "first"), num(&m, "last")), (0, N - 1), "{m:?}");
    assert_eq!(num(&m, "own"), num(&m, "missed"));
    assert_eq!(m["end"], "Until");
    let r = got(&mut running);
    assert_eq!(num(&r, "count") + num(&r, "missed"), N, "{r:?}");
    assert_eq!(
        (num(&r, "last"), num(&r, "own")),
        (N - 1, num(&r, "missed")),
        "{r:?}"
    );
    // The ring's total is the sum of both.
    let st = tx.stats();
    assert_eq!(st.missed, num(&m, "missed") + num(&r, "missed"), "{st:?}");
    stopped.wait_success(SOON);
    running.wait_success(SOON);
    drop(tx);
    assert_no_ipc(&ring, set, "after everyone left");
}

#[test]
fn overwrite_subscribers_lapped_while_copying_never_see_a_torn_message() {
    let _heavy = heavy();
    const N: u64 = 100_000;
    let ring = Ring::new("bc-torn");
    let ow = ("overflow", "overwrite".to_string());
    let cap = ("cap", "8".to_string());
    let mut publisher = spawn(
        "b_pub",
        &ring,
        &args(&[
            ("n", N.to_string()),
            ("subs", "3".into()),
            ("try", "1".into()),
            ow.clone(),
            cap.clone(),
        ]),
    );
    publisher.expect("READY");
    let set = sem_set(&ring);
    let from = ("from", "0".to_string());
    let mut subs = [
        subscriber(&ring, &args(&[ow.clone(), cap.clone(), from.clone()])),
        subscriber(
            &ring,
            &args(&[ow.clone(), cap.clone(), from.clone(), ("slow", "97".into())]),
        ),
        subscriber(
            &ring,
            &args(&[ow.clone(), cap.clone(), from.clone(), ("slow", "5".into())]),
        ),
    ];
    let sent = publisher.expect("SENT");
    assert_eq!(sent[0], format!("n={N}"), "{sent:?}");
    publisher.expect("DONE");
    publisher.wait_success(SOON);
    for s in &mut subs {
        let m = got(s);
        // Every message checked byte for byte; each the one expected after the last lag.
        assert_eq!(num(&m, "count") + num(&m, "missed"), N, "{m:?}");
        assert_eq!(num(&m, "last"), N - 1, "{m:?}");
        assert_eq!(num(&m, "own"), num(&m, "missed"), "{m:?}");
        assert_eq!(m["end"], "Disconnected", "{m:?}");
        eprintln!(
            "received {} missed {} in {} lags",
            m["count"], m["missed"], m["lags"]
        );
        s.wait_success(SOON);
    }
    assert_no_ipc(&ring, set, "after everyone left");
}

#[test]
fn an_untethered_subscriber_stopped_does_not_hold_a_blocking_publisher_back() {
    const CAP: u64 = 64;
    const K: u64 = 10;
    const N: u64 = 20_000;
    let ring = Ring::new("bc-untethered");
    let mut c = cfg(&ring, CAP as usize, Overflow::Block);
    c.expect_subscribers = 2;
    let mut tx = c.open_publisher().unwrap();
    let set = sem_set(&ring);
    let mut tethered = subscriber(&ring, &[]);
    let mut loose = subscriber(
        &ring,
        &lossy(N, &[("untethered", "1".into()), ("at", K.to_string())]),
    );
    publish(&mut tx, 0, K);
    loose.expect("AT");
    sigstop(&loose);
    // Would time out (SOON) if the stopped subscriber held it.
    publish(&mut tx, K, N);
    sigcont(&loose);
    let m = got(&mut loose);
    assert_eq!(
        (num(&m, "count"), num(&m, "missed"), num(&m, "last")),
        (K + CAP, N - K - CAP, N - 1),
        "{m:?}"
    );
    assert_eq!(num(&m, "own"), num(&m, "missed"));
    assert_eq!(tx.stats().missed, N - K - CAP);
    loose.wait_success(SOON);
    drop(tx);
    assert_exact(&got(&mut tethered), 0, N);
    tethered.wait_success(SOON);
    assert_no_ipc(&ring, set, "after everyone left");
}

/// A child subscriber waiting in `recv` finds slot 0 holding `bad` (written through a raw
/// attachment): it must report `Corrupted` within a few park slices, not crash or wait on.
fn waiting_subscriber_reports_a_bad_sequence(tag: &str, bad: u64) {
    const CAP: usize = 8;
    let ring = Ring::new(tag);
    let mut c = cfg(&ring, CAP, Overflow::Overwrite);
    c.expect_subscribers = 1;
    let mut tx = c.open_publisher().unwrap();
    let set = sem_set(&ring);
    let mut sub = subscriber(
        &ring,
        &args(&[("overflow", "overwrite".into()), ("at", "8".into())]),
    );
    publish(&mut tx, 0, 8);
    sub.expect("AT");
    // It now waits for position 8, in slot 0.
    std::thread::sleep(Duration::from_millis(50));
    let raw = RawSeg::attach_key(ring.key);
    assert_eq!(raw.u64(bc::seq(0, MAX)), 2);
    let t0 = Instant::now();
    raw.set_u64(bc::seq(0, MAX), bad);
    let m = got(&mut sub);
    assert!(m["end"].starts_with("Corrupted"), "{m:?}");
    assert_eq!(num(&m, "count"), 8, "{m:?}");
    assert!(t0.elapsed() < DEATH_BOUND, "noticed after {:?}", t0.elapsed());
    sub.wait_success(SOON);
    drop(raw);
    drop(tx);
    assert_no_ipc(&ring, set, "after a corrupted ring's members left");
}

#[test]
fn a_sequence_word_for_another_slot_is_corrupted() {
    // Position 9's "complete" value in slot 0 (position 9 lives in slot 1).
    waiting_subscriber_reports_a_bad_sequence("bc-bad-seq", 2 * 9 + 2);
}

#[test]
fn a_sequence_word_laps_far_beyond_the_publisher_is_corrupted() {
    // Slot 0's residue, a million laps ahead: followed, it would skip every message to come.
    waiting_subscriber_reports_a_bad_sequence("bc-far-lap", 2 * (8 << 20) + 2);
}

#[test]
fn a_subscriber_cursor_past_the_tail_is_corrupted_for_the_publisher() {
    const CAP: usize = 8;
    let ring = Ring::new("bc-bad-cursor");
    let mut c = cfg(&ring, CAP, Overflow::Block);
    c.expect_subscribers = 1;
    let mut tx = c.open_publisher().unwrap();
    let set = sem_set(&ring);
    // It stops reading at 3, so that no store of its own replaces the bad cursor.
    let mut sub = subscriber(&ring, &args(&[("stall_after", "3".into())]));
    publish(&mut tx, 0, 3);
    sub.expect("STALLED");
    let raw = RawSeg::attach_key(ring.key);
    // Record 0 is the child's (tethered, its pid), at 3.
    assert_eq!((raw.u32(bc::SUBS), raw.u32(bc::SUBS + 4)), (1, sub.pid as u32));
    assert_eq!(raw.u64(bc::cursor(0)), 3);
    raw.set_u64(bc::cursor(0), 1 << 40);
    // The publisher recomputes its limit when it reaches the cached one (within a ring).
    let mut buf = Vec::new();
    let mut seq = 3;
    let err = loop {
        encode(seq, &mut buf);
        match tx.try_send(&buf) {
            Ok(()) => seq += 1,
            Err(e) => break e,
        }
        assert!(seq < 3 + 2 * CAP as u64, "never noticed");
    };
    assert!(matches!(err, TrySendError::Corrupted(_)), "{err:?}");
    let t0 = Instant::now();
    let r = tx.send_timeout(&buf, SOON);
    assert!(matches!(r, Err(SendTimeoutError::Corrupted(_))), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a corrupted ring made send wait"
    );
    // Nothing past the refusal went out; the publisher leaves (its subscriber killed first:
    // the last one out removes the ring).
    assert_eq!(raw.u64(bc::TAIL), seq);
    sub.kill();
    sub.wait(SOON);
    drop(tx);
    drop(raw);
    assert_no_ipc(&ring, set, "after both left");
}

#[test]
fn a_tail_behind_a_subscriber_after_the_publisher_closed_is_corrupted() {
    let ring = Ring::new("bc-bad-tail");
    let mut publisher = spawn("b_pub", &ring, &args(&[("n", "5".into()), ("subs", "1".into())]));
    publisher.expect("READY");
    let set = sem_set(&ring);
    let mut rx = cfg(&ring, 64, Overflow::Block).open_subscriber().unwrap();
    let mut buf = Vec::new();
    for seq in 0..5 {
        rx.recv_timeout(&mut buf, SOON).unwrap();
        assert_eq!(decode(&buf), Ok(seq));
    }
    publisher.expect("SENT");
    publisher.expect("DONE");
    publisher.wait_success(SOON);
    let raw = RawSeg::attach_key(ring.key);
    raw.set_u64(bc::TAIL, 2);
    let t0 = Instant::now();
    let r = rx.recv_timeout(&mut buf, SOON);
    assert!(matches!(r, Err(RecvTimeoutError::Corrupted(_))), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    // Poisoned from then on, in every call.
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Corrupted(_))));
    drop(raw);
    drop(rx);
    assert_no_ipc(&ring, set, "after the subscriber left");
}

#[test]
fn an_invalid_policy_word_is_corrupted_for_every_opener() {
    let ring = Ring::new("bc-bad-policy");
    let mut tx = cfg(&ring, 8, Overflow::Block).open_publisher().unwrap();
    let set = sem_set(&ring);
    let raw = RawSeg::attach_key(ring.key);
    assert_eq!(raw.u32(bc::POLICY), 1);
    raw.set_u32(bc::POLICY, 7);
    for side in ["subscriber", "publisher"] {
        let mut p = spawn("b_open", &ring, &args(&[("side", side.into())]));
        let words = p.expect("OPENED");
        assert_eq!(words[0], "Corrupted", "{side}: {words:?}");
        p.wait_success(SOON);
    }
    // (Nor does `shmpipe stat` crash on it: cli/tests/cli_broadcast.rs.)
    // The live publisher goes on (it validated the policy when it opened).
    tx.send_timeout(b"still here", SOON).unwrap();
    drop(raw);
    drop(tx);
    assert_no_ipc(&ring, set, "after the publisher left");
}

#[test]
fn one_publisher_at_a_time_and_the_policy_is_the_rings() {
    let ring = Ring::new("bc-inuse");
    let tx = cfg(&ring, 8, Overflow::Block).open_publisher().unwrap();
    let set = sem_set(&ring);
    let open = |side: &str, more: &[(&'static str, String)]| {
        let mut a = args(&[("side", side.to_string()), ("cap", "8".into())]);
        a.extend_from_slice(more);
        let mut p = spawn("b_open", &ring, &a);
        let words = p.expect("OPENED");
        (p, words)
    };
    let (mut p, words) = open("publisher", &[]);
    assert_eq!(words[0], "InUse", "{words:?}");
    p.wait_success(SOON);
    let ow = ("overflow", "overwrite".to_string());
    for side in ["publisher", "subscriber"] {
        let (mut p, words) = open(side, std::slice::from_ref(&ow));
        assert_eq!(words[0], "InvalidConfig", "{side}: {words:?}");
        p.wait_success(SOON);
    }
    // Refused opens took nothing: one live subscriber joins as the first.
    let (mut sub, words) = open("subscriber", &[]);
    assert_eq!(words, ["Ok"]);
    let st = tx.stats();
    assert_eq!((st.subscribers, st.joined, st.died), (1, 1, 0), "{st:?}");
    // The publisher gone, its subscriber still there: a new publisher waits for it to finish.
    drop(tx);
    let (mut p, words) = open("publisher", &[]);
    assert_eq!(words[0], "InUse", "{words:?}");
    p.wait_success(SOON);
    assert!(ring.exists());
    sub.say("GO");
    sub.expect("DONE");
    sub.wait_success(SOON);
    assert_no_ipc(&ring, set, "after the last member left");
    // And a new publisher makes a new ring, with the other policy if it likes.
    let tx = cfg(&ring, 8, Overflow::Overwrite).open_publisher().unwrap();
    assert_eq!(tx.overflow(), Overflow::Overwrite);
    let set = sem_set(&ring);
    drop(tx);
    assert_no_ipc(&ring, set, "after the new publisher left");
}

/// A subscriber child in a PID namespace of its own (it is pid 1 there).
fn namespaced_subscriber(ring: &Ring, a: &[(&'static str, String)]) -> Proc {
    let mut p = Proc::child_in_pid_namespace("b_sub", &ring.name, a);
    assert_eq!(
        p.expect("READY"),
        ["1"],
        "the child is pid 1 of its own namespace"
    );
    p
}

#[test]
fn subscribers_in_another_pid_namespace_get_the_stream_and_a_killed_one_is_reaped() {
    if !can_unshare() {
        return;
    }
    killed_subscriber_is_reaped("bc-ns-kill", namespaced_subscriber);
}

#[test]
fn a_publisher_in_another_pid_namespace_is_alive_until_it_closes() {
    if !can_unshare() {
        return;
    }
    const N: u64 = 5000;
    let ring = Ring::new("bc-ns-pub");
    let mut publisher = Proc::child_in_pid_namespace(
        "b_pub",
        &ring.name,
        &args(&[
            ("n", N.to_string()),
            ("subs", "1".into()),
            ("pause_at", "100".into()),
        ]),
    );
    publisher.expect("READY");
    let set = sem_set(&ring);
    let mut rx = cfg(&ring, 64, Overflow::Block).open_subscriber().unwrap();
    let mut buf = Vec::new();
    for seq in 0..100 {
        rx.recv_timeout(&mut buf, SOON).unwrap();
        assert_eq!(decode(&buf), Ok(seq));
    }
    publisher.expect("AT");
    // Its pid means nothing here; it must not be taken for dead while it waits.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.publisher(), Peer::Alive);
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    publisher.say("GO");
    for seq in 100..N {
        rx.recv_timeout(&mut buf, SOON).unwrap();
        assert_eq!(decode(&buf), Ok(seq));
    }
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.publisher(), Peer::Closed);
    publisher.wait_success(SOON);
    drop(rx);
    assert_no_ipc(&ring, set, "after both left");
}

#[test]
fn a_forked_childs_copies_return_forked_and_their_drop_disturbs_nothing() {
    let ring = Ring::new("bc-fork");
    let mut c = cfg(&ring, 8, Overflow::Block);
    c.expect_subscribers = 2;
    let mut tx = c.open_publisher().unwrap();
    let set = sem_set(&ring);
    let mut rx: Subscriber = cfg(&ring, 8, Overflow::Block).open_subscriber().unwrap();
    let mut other = subscriber(&ring, &[]);
    publish(&mut tx, 0, 3);
    let code = in_forked_child(|| {
        let mut buf = Vec::new();
        let r = fails(tx.try_send(b"child") == Err(TrySendError::Forked), 0)
            | fails(tx.send(b"child") == Err(SendError::Forked), 1)
            | fails(rx.try_recv(&mut buf) == Err(TryRecvError::Forked), 2)
            | fails(rx.recv(&mut buf) == Err(RecvError::Forked), 3)
            | fails(buf.is_empty(), 4);
        drop_inherited(&tx);
        drop_inherited(&rx);
        r
    });
    assert_eq!(code, 0, "the forked child saw other results (bits {code:#b})");
    // Nothing left, closed or died: the parent's publisher and subscriber go on.
    let st = tx.stats();
    assert_eq!((st.subscribers, st.joined, st.died), (2, 2, 0), "{st:?}");
    assert_eq!(rx.publisher(), Peer::Alive);
    assert!(ring.exists());
    // (One at a time: our own subscriber is tethered to an 8-slot ring.)
    let mut buf = Vec::new();
    for seq in 0..100 {
        if seq >= 3 {
            publish(&mut tx, seq, seq + 1);
        }
        rx.recv_timeout(&mut buf, SOON).unwrap();
        assert_eq!(decode(&buf), Ok(seq));
    }
    drop(tx);
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_exact(&got(&mut other), 0, 100);
    other.wait_success(SOON);
    drop(rx);
    assert_no_ipc(&ring, set, "after everyone left");
}

#[test]
fn a_publisher_killed_mid_stream_ends_every_subscribers_stream_after_a_gapless_drain() {
    let ring = Ring::new("bc-pub-killed");
    let mut publisher = spawn(
        "b_pub",
        &ring,
        &args(&[("n", "10000000".into()), ("subs", "2".into())]),
    );
    publisher.expect("READY");
    let set = sem_set(&ring);
    let mut subs = [subscriber(&ring, &[]), subscriber(&ring, &[])];
    until_published_past(&ring, 5000, SOON);
    let killed = Instant::now();
    publisher.kill();
    publisher.wait(SOON);
    let tail = tail_of(&ring);
    for s in &mut subs {
        let m = got(s);
        let lag = killed.elapsed();
        assert!(lag < DEATH_BOUND, "the end was noticed {lag:?} after the kill");
        // Everything published before the death, nothing torn, then the end.
        assert_eq!((num(&m, "first"), num(&m, "count")), (0, tail), "{m:?}");
        assert_eq!(num(&m, "sum"), stream_sum(0, tail), "{m:?}");
        assert_eq!(
            (m["end"].as_str(), m["publisher"].as_str()),
            ("Disconnected", "Dead")
        );
        s.wait_success(SOON);
    }
    assert_no_ipc(&ring, set, "after the subscribers of a dead publisher left");
}

#[test]
fn a_ring_whose_members_were_all_killed_is_recycled_by_the_next_opener() {
    let ring = Ring::new("bc-stale");
    let mut publisher = spawn(
        "b_pub",
        &ring,
        &args(&[
            ("n", "20".into()),
            ("subs", "1".into()),
            ("pause_at", "10".into()),
        ]),
    );
    publisher.expect("READY");
    let old_id = ring.shmid().unwrap();
    let old_set = sem_set(&ring);
    let mut sub = subscriber(&ring, &args(&[("stall_after", "5".into())]));
    publisher.expect("AT");
    sub.expect("STALLED");
    publisher.kill();
    sub.kill();
    publisher.wait(SOON);
    sub.wait(SOON);
    assert_eq!(ring.shmid(), Some(old_id), "nobody removed it yet");
    // The next opener finds no live member: a fresh ring, the old set removed with the old one.
    let mut rx = cfg(&ring, 64, Overflow::Block).open_subscriber().unwrap();
    assert_ne!(ring.shmid(), Some(old_id));
    assert_eq!(sem_count(old_set), None, "the stale ring's semaphore set is left");
    let set = sem_set(&ring);
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty));
    assert_eq!(rx.stats().published, 0);
    drop(rx);
    assert_no_ipc(&ring, set, "after the new subscriber left");
}
