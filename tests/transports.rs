//! One behavioural suite for every transport: the same test bodies run against shared memory
//! (`shm://`), a SysV message queue (`msgq://`), a Unix socket (`unix://`) and TCP (`tcp://`),
//! always across real processes. Each behaviour is a function taking a [`Transport`];
//! `per_transport!` turns it into one `#[test]` per transport (`ordering_and_exactly_once::shm`,
//! `::msgq`, `::unix`, `::tcp`), so a failure names the transport.
//!
//! The peer is this test binary re-run as a child (see `child_entry` and the roles below): it
//! gets its role in `SHMPIPE_IT_ROLE`, the endpoint string in `SHMPIPE_IT_RING` and `k=v`
//! arguments in `SHMPIPE_IT_ARGS` (the protocol of `tests/common`), opens its end with nothing
//! but `shmpipe::open_sender`/`open_receiver` on that string, and talks to the test through
//! tagged stdout lines and `GO` lines on stdin.
//!
//! Isolation and cleanup: every test has its own channel ([`Place`]): a fresh ring or queue name
//! (pid + counter), a fresh 0700 directory for the Unix socket, a fresh loopback port for TCP.
//! The place is declared before the ends and the children of a test, so on every exit path
//! (including a failed assertion) the children are killed and reaped first, then the ends drop,
//! then the place removes whatever is left at its key or path. Every blocking call is bounded.

mod common;

use common::{
    check_pattern, checksum, child_watchdog, free_port, pattern, tell, unique_name, Proc, Ring, ARGS_ENV,
    RING_ENV, ROLE_ENV, SOON,
};
use shmpipe::transport::shm::key_for_name;
use shmpipe::{
    Peer, Receiver, RecvTimeoutError, SendError, SendTimeoutError, Sender, TooLarge, TryRecvError,
    TrySendError,
};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Largest message of every channel here (`max_message=`). Over `kernel.msgmax` (8192), so the
/// message queue fragments the longest messages, and over a socket's single write sometimes.
const MAX: usize = 10_000;
/// Slots of a shared-memory ring (`capacity=`).
const CAPACITY: usize = 256;
/// Largest message of the short streams that must fit in every transport's buffers unread
/// (a ring of [`CAPACITY`] slots, a 16 KiB queue, a Unix socket's ~200 kB send buffer).
const SMALL: usize = 64;
/// Messages of those short streams: at most `SHORT * SMALL` = 6.4 kB of payload.
const SHORT: u64 = 100;
/// Bound for a close or a death to turn into `Disconnected`.
const NOTICE: Duration = Duration::from_secs(2);
/// Slack allowed past a timeout (the machine is shared and busy).
const SLACK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Transports and places
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Shm,
    Msgq,
    Unix,
    Tcp,
}

impl Transport {
    fn is_socket(self) -> bool {
        matches!(self, Transport::Unix | Transport::Tcp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Shm => "shm",
            Transport::Msgq => "msgq",
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
        })
    }
}

/// Turns each behaviour `fn name(t: Transport)` into a module `name` with one test per transport.
macro_rules! per_transport {
    ($($behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            use super::Transport;
            #[test]
            fn shm() {
                super::$behaviour(Transport::Shm)
            }
            #[test]
            fn msgq() {
                super::$behaviour(Transport::Msgq)
            }
            #[test]
            fn unix() {
                super::$behaviour(Transport::Unix)
            }
            #[test]
            fn tcp() {
                super::$behaviour(Transport::Tcp)
            }
        }
    )*};
}

per_transport!(
    ordering_and_exactly_once,
    receiver_starts_first,
    sender_starts_first,
    sender_close_lets_receiver_drain,
    receiver_close_disconnects_sender,
    recv_timeout_with_a_silent_sender,
    send_timeout_on_a_full_channel,
    oversize_is_too_large_and_sends_nothing,
    sender_death_drains_then_disconnects,
    receiver_death_disconnects_sender,
    disconnected_is_final,
    peer_tells_close_from_death,
);

/// A SysV message queue key; on drop, whatever queue is at the key is removed.
struct QueueKey(i32);

fn msqid_at(key: i32) -> Option<i32> {
    // SAFETY: msgget only reads its scalar arguments.
    let id = unsafe { libc::msgget(key, 0) };
    (id >= 0).then_some(id)
}

impl Drop for QueueKey {
    fn drop(&mut self) {
        // The queue, then the liveness semaphore set at the same key.
        common::remove_queue_key(self.0);
    }
}

/// A fresh private directory (for a Unix socket), removed with its contents on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Relaxed);
        let dir = PathBuf::from(format!("/tmp/shmpipe-transports-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a place removes when the test ends (each guard is held for its `Drop`).
#[allow(dead_code)]
enum Cleanup {
    Shm(Ring),
    Msgq(QueueKey),
    Dir(TempDir),
    Nothing,
}

/// One test's channel: its endpoint, and the guard that removes what is left of it.
struct Place {
    t: Transport,
    endpoint: String,
    _cleanup: Cleanup,
}

impl Place {
    fn new(t: Transport, tag: &str) -> Place {
        let (endpoint, cleanup) = match t {
            Transport::Shm => {
                let ring = Ring::new(tag);
                (
                    format!("shm://{}?capacity={CAPACITY}&max_message={MAX}", ring.name),
                    Cleanup::Shm(ring),
                )
            }
            Transport::Msgq => {
                let name = unique_name(tag);
                let key = key_for_name(&name);
                assert!(
                    msqid_at(key).is_none(),
                    "a queue already exists at the key of {name}"
                );
                (
                    format!("msgq://{name}?max_message={MAX}"),
                    Cleanup::Msgq(QueueKey(key)),
                )
            }
            Transport::Unix => {
                let dir = TempDir::new();
                let sock = dir.0.join("s.sock");
                (
                    format!("unix://{}?max_message={MAX}", sock.display()),
                    Cleanup::Dir(dir),
                )
            }
            Transport::Tcp => (
                format!("tcp://127.0.0.1:{}?max_message={MAX}", free_port()),
                Cleanup::Nothing,
            ),
        };
        Place {
            t,
            endpoint,
            _cleanup: cleanup,
        }
    }

    fn open_receiver(&self) -> Box<dyn Receiver + Send> {
        shmpipe::open_receiver(&self.endpoint)
            .unwrap_or_else(|e| panic!("{}: open_receiver({}): {e}", self.t, self.endpoint))
    }

    fn open_sender(&self) -> Box<dyn Sender + Send> {
        shmpipe::open_sender(&self.endpoint)
            .unwrap_or_else(|e| panic!("{}: open_sender({}): {e}", self.t, self.endpoint))
    }

    /// Runs this binary as a child in `role` on this place's endpoint.
    fn child(&self, role: &str, args: &[(&str, &str)]) -> Proc {
        let args: Vec<(&str, String)> = args.iter().map(|&(k, v)| (k, v.to_string())).collect();
        Proc::child(role, &self.endpoint, &args)
    }
}

impl Drop for Place {
    /// Before the guard removes it: says (on stderr) if the channel's object outlived both ends,
    /// which the library's own cleanup should have removed.
    fn drop(&mut self) {
        let left = match &self._cleanup {
            Cleanup::Shm(ring) => ring.exists().then(|| format!("segment at key {:#x}", ring.key)),
            Cleanup::Msgq(q) => msqid_at(q.0)
                .map(|id| format!("queue {id} at key {:#x}", q.0))
                .or_else(|| common::semid_at(q.0).map(|id| format!("semaphore set {id} at key {:#x}", q.0))),
            Cleanup::Dir(d) => std::fs::read_dir(&d.0).ok().and_then(|entries| {
                let names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                (!names.is_empty()).then(|| format!("{names:?} in {}", d.0.display()))
            }),
            Cleanup::Nothing => None,
        };
        if let Some(left) = left {
            eprintln!(
                "note: {}: {left} left after both ends were gone; removing it",
                self.t
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// Not a test on its own: the entry point of the child processes (returns at once without
/// `SHMPIPE_IT_ROLE`).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    child_watchdog(Duration::from_secs(120));
    let endpoint = std::env::var(RING_ENV).expect("endpoint");
    let a = Args::from_env();
    match role.as_str() {
        "send" => role_send(&endpoint, &a),
        "recv" => role_recv(&endpoint, &a),
        "report" => role_report(&endpoint),
        other => panic!("unknown child role {other}"),
    }
}

struct Args(Vec<(String, String)>);

impl Args {
    fn from_env() -> Args {
        let s = std::env::var(ARGS_ENV).unwrap_or_default();
        Args(
            s.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn get(&self, k: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map_or("", |(_, v)| v.as_str())
    }

    fn num(&self, k: &str, default: u64) -> u64 {
        match self.get(k) {
            "" => default,
            v => v.parse().unwrap_or_else(|_| panic!("argument {k}={v}")),
        }
    }
}

/// Waits for a `GO` line on stdin; exits if the parent closed it (the parent is gone).
fn wait_go() {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
        std::process::exit(98);
    }
    assert_eq!(line.trim(), "GO", "unexpected command");
}

/// Keeps the process (and whatever it still holds) alive until it is killed.
fn hold() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Says `line` and exits with a failure status.
fn fail(line: &str) -> ! {
    tell(line);
    std::process::exit(3);
}

/// `send`: (with `wait=open`: says `READY`, waits for `GO`), opens the sender, says `OPENED`,
/// sends pattern messages `0..n` (lengths `0..=max`), flushes, says `SENT n`, then per `then`:
/// `close` drops the sender, says `CLOSED` and exits; `close_hold` does the same but stays alive
/// (so a receiver's `Disconnected` can only come from the close); `hold` keeps the sender open
/// until killed; `go_close` waits for `GO`, sends message `n`, drops the sender, says `CLOSED`
/// and stays alive.
fn role_send(endpoint: &str, a: &Args) {
    let (n, max) = (a.num("n", 0), a.num("max", SMALL as u64) as usize);
    if a.get("wait") == "open" {
        tell("READY");
        wait_go();
    }
    let mut tx = shmpipe::open_sender(endpoint).unwrap_or_else(|e| fail(&format!("OPEN_ERR {e}")));
    tell("OPENED");
    let mut buf = Vec::new();
    let mut send = |tx: &mut Box<dyn Sender + Send>, seq: u64| {
        pattern(seq, max, &mut buf);
        if let Err(e) = tx.send_timeout(&buf, SOON) {
            fail(&format!("SEND_ERR {seq} {e:?}"));
        }
    };
    for seq in 0..n {
        send(&mut tx, seq);
    }
    if let Err(e) = tx.flush_deadline(Instant::now().checked_add(SOON)) {
        fail(&format!("FLUSH_ERR {e:?}"));
    }
    tell(&format!("SENT {n}"));
    match a.get("then") {
        "close" => {
            drop(tx);
            tell("CLOSED");
        }
        "close_hold" => {
            drop(tx);
            tell("CLOSED");
            hold();
        }
        "go_close" => {
            wait_go();
            send(&mut tx, n);
            drop(tx);
            tell("CLOSED");
            hold();
        }
        _ => hold(),
    }
}

/// `recv`: (with `wait=open`: says `READY`, waits for `GO`), opens the receiver, says `OPENED`,
/// (with `wait=read`: waits for `GO`), then receives pattern messages (lengths `0..=max`),
/// checking each in order, until the stream ends or `limit` messages, and says
/// `GOT count end` (`end` is `Disconnected`, `Limit` or the error). A wrong message is
/// `MISMATCH seq len expected_len` and exit. After `limit`, per `then`: `close` waits for `GO`,
/// drops the receiver, says `CLOSED` and stays alive; otherwise it holds the receiver until
/// killed.
fn role_recv(endpoint: &str, a: &Args) {
    let (max, limit) = (a.num("max", SMALL as u64) as usize, a.num("limit", u64::MAX));
    if a.get("wait") == "open" {
        tell("READY");
        wait_go();
    }
    let mut rx = shmpipe::open_receiver(endpoint).unwrap_or_else(|e| fail(&format!("OPEN_ERR {e}")));
    tell("OPENED");
    if a.get("wait") == "read" {
        wait_go();
    }
    let (mut buf, mut expected, mut count) = (Vec::new(), Vec::new(), 0u64);
    let end = loop {
        if count == limit {
            break "Limit".to_string();
        }
        match rx.recv_timeout(&mut buf, SOON) {
            Ok(()) => {
                pattern(count, max, &mut expected);
                if buf != expected {
                    fail(&format!("MISMATCH {count} {} {}", buf.len(), expected.len()));
                }
                count += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break "Disconnected".to_string(),
            Err(e) => break format!("{e:?}").replace(' ', "_"),
        }
    };
    tell(&format!("GOT {count} {end}"));
    if count != limit {
        return;
    }
    if a.get("then") == "close" {
        wait_go();
        drop(rx);
        tell("CLOSED");
    }
    hold();
}

/// `report`: opens the receiver, says `OPENED`, then says `MSG len checksum` for every message
/// and `END <error>` when the stream ends.
fn role_report(endpoint: &str) {
    let mut rx = shmpipe::open_receiver(endpoint).unwrap_or_else(|e| fail(&format!("OPEN_ERR {e}")));
    tell("OPENED");
    let mut buf = Vec::new();
    loop {
        match rx.recv_timeout(&mut buf, SOON) {
            Ok(()) => tell(&format!("MSG {} {}", buf.len(), checksum(0, &buf))),
            Err(e) => {
                tell(&format!("END {e:?}"));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parent-side helpers
// ---------------------------------------------------------------------------------------------

/// Receives message `seq` of a pattern stream (lengths `0..=max`) within `bound` and checks it.
fn recv_expect(t: Transport, rx: &mut dyn Receiver, seq: u64, max: usize, bound: Duration, bufs: &mut Bufs) {
    if let Err(e) = rx.recv_timeout(&mut bufs.got, bound) {
        panic!("{t}: message {seq}: {e:?} (waited at most {bound:?})");
    }
    check_pattern(seq, max, &bufs.got, &mut bufs.expected);
}

/// Sends message `seq` of a pattern stream (lengths `0..=max`), bounded.
fn send_expect(t: Transport, tx: &mut dyn Sender, seq: u64, max: usize, bufs: &mut Bufs) {
    pattern(seq, max, &mut bufs.got);
    if let Err(e) = tx.send_timeout(&bufs.got, SOON) {
        panic!("{t}: sending message {seq}: {e:?}");
    }
}

#[derive(Default)]
struct Bufs {
    got: Vec<u8>,
    expected: Vec<u8>,
}

/// The next receive must be `Disconnected`, within [`NOTICE`] of `since`.
fn expect_disconnected(t: Transport, rx: &mut dyn Receiver, since: Instant, what: &str) {
    let mut buf = Vec::new();
    let r = rx.recv_timeout(&mut buf, NOTICE + SLACK);
    let took = since.elapsed();
    assert_eq!(
        r,
        Err(RecvTimeoutError::Disconnected),
        "{t}: {what}: expected Disconnected after the last message, got {r:?} ({} bytes) after {took:?}",
        buf.len()
    );
    assert!(took < NOTICE, "{t}: {what}: Disconnected only after {took:?}");
}

/// Sends (paced, bounded) until `Disconnected`, which must come within [`NOTICE`] of `since`.
/// Returns how many sends were still accepted.
fn send_until_disconnected(t: Transport, tx: &mut dyn Sender, since: Instant, what: &str) -> u64 {
    let msg = [0x5a_u8; SMALL];
    let mut accepted = 0u64;
    loop {
        match tx.send_timeout(&msg, Duration::from_millis(100)) {
            Ok(()) => accepted += 1,
            Err(SendTimeoutError::Disconnected) => break,
            Err(SendTimeoutError::Timeout) => {}
            Err(e) => panic!("{t}: {what}: send after {accepted} accepted: {e:?}"),
        }
        assert!(
            since.elapsed() < NOTICE,
            "{t}: {what}: no Disconnected within {NOTICE:?} ({accepted} sends accepted meanwhile)"
        );
        // A socket learns of the peer's close from its reset; leave it a moment to arrive.
        if t.is_socket() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    accepted
}

/// A `*_timeout` call that returned `Timeout` took at least `timeout`, and not much more.
fn assert_timed_out(t: Transport, what: &str, started: Instant, timeout: Duration) {
    let took = started.elapsed();
    assert!(
        took >= timeout,
        "{t}: {what}: Timeout after {took:?} < {timeout:?}"
    );
    assert!(
        took < timeout + SLACK,
        "{t}: {what}: Timeout after {took:?}, far beyond {timeout:?}"
    );
}

/// Parses the words of a `GOT count end` line.
fn got(words: &[String]) -> (u64, &str) {
    assert_eq!(words.len(), 2, "GOT {words:?}");
    (words[0].parse().expect("GOT count"), words[1].as_str())
}

// ---------------------------------------------------------------------------------------------
// Behaviours
// ---------------------------------------------------------------------------------------------

/// (1) A child sends 20k messages of every length `0..=MAX`, each derived from its sequence
/// number, and closes cleanly (staying alive). We receive each, in order and intact, then
/// `Disconnected`.
fn ordering_and_exactly_once(t: Transport) {
    const N: u64 = 20_000;
    let place = Place::new(t, "order");
    let mut rx = place.open_receiver();
    let mut child = place.child(
        "send",
        &[
            ("n", &N.to_string()),
            ("max", &MAX.to_string()),
            ("then", "close_hold"),
        ],
    );
    let mut bufs = Bufs::default();
    let started = Instant::now();
    for seq in 0..N {
        recv_expect(t, &mut *rx, seq, MAX, SOON, &mut bufs);
    }
    let took = started.elapsed();
    child.expect("OPENED");
    assert_eq!(child.expect("SENT"), [N.to_string()]);
    child.expect("CLOSED");
    expect_disconnected(t, &mut *rx, Instant::now(), "after the sender's close");
    eprintln!("{t}: {N} messages of 0..={MAX} bytes in {took:?}");
}

/// (2a) The child's receiver is open (a socket's is listening) before we open the sender.
fn receiver_starts_first(t: Transport) {
    const N: u64 = 2_000;
    let place = Place::new(t, "rxfirst");
    let mut child = place.child("recv", &[("max", &MAX.to_string())]);
    child.expect("OPENED");
    let mut tx = place.open_sender();
    let mut bufs = Bufs::default();
    for seq in 0..N {
        send_expect(t, &mut *tx, seq, MAX, &mut bufs);
    }
    drop(tx);
    let words = child.expect("GOT");
    assert_eq!(got(&words), (N, "Disconnected"), "{t}: what the child received");
    child.wait_success(SOON);
}

/// (2b) We open the sender (and send the first messages) before the child's receiver exists.
/// A ring or a queue opens at once and holds what is sent; a socket sender keeps trying to
/// connect until the receiver listens.
fn sender_starts_first(t: Transport) {
    const N: u64 = 2_000;
    const EARLY: u64 = 20;
    let place = Place::new(t, "txfirst");
    let mut child = place.child("recv", &[("max", &MAX.to_string()), ("wait", "open")]);
    child.expect("READY");
    let (opened_tx, opened_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let endpoint = place.endpoint.clone();
    // Opens and sends on a thread: a socket sender's open blocks until the receiver listens,
    // and a queue may fill up before the receiver comes.
    std::thread::spawn(move || {
        let r = shmpipe::open_sender(&endpoint)
            .map_err(|e| format!("open_sender: {e}"))
            .and_then(|mut tx| {
                let _ = opened_tx.send(());
                let mut buf = Vec::new();
                for seq in 0..EARLY {
                    pattern(seq, MAX, &mut buf);
                    tx.send_timeout(&buf, SOON)
                        .map_err(|e| format!("early message {seq}: {e:?}"))?;
                }
                Ok(tx)
            });
        let _ = done_tx.send(r);
    });
    let wait = if t.is_socket() {
        Duration::from_millis(300)
    } else {
        SOON
    };
    let opened_alone = opened_rx.recv_timeout(wait).is_ok();
    assert_eq!(
        opened_alone,
        !t.is_socket(),
        "{t}: did the sender open with no receiver there?"
    );
    child.say("GO");
    child.expect("OPENED");
    let mut tx = done_rx
        .recv_timeout(SOON)
        .expect("the opening thread did not finish")
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    let mut bufs = Bufs::default();
    for seq in EARLY..N {
        send_expect(t, &mut *tx, seq, MAX, &mut bufs);
    }
    drop(tx);
    let words = child.expect("GOT");
    assert_eq!(got(&words), (N, "Disconnected"), "{t}: what the child received");
    child.wait_success(SOON);
}

/// (3a) The child sends [`SHORT`] messages and closes its sender (staying alive); only then do we
/// read: all of them, then `Disconnected` at once. Returns the receiver and the child.
fn sender_close_scenario(place: &Place) -> (Box<dyn Receiver + Send>, Proc) {
    let t = place.t;
    let mut rx = place.open_receiver();
    let mut child = place.child("send", &[("n", &SHORT.to_string()), ("then", "close_hold")]);
    child.expect("OPENED");
    assert_eq!(child.expect("SENT"), [SHORT.to_string()]);
    child.expect("CLOSED");
    let mut bufs = Bufs::default();
    for seq in 0..SHORT {
        recv_expect(t, &mut *rx, seq, SMALL, NOTICE, &mut bufs);
    }
    expect_disconnected(t, &mut *rx, Instant::now(), "draining after the sender's close");
    (rx, child)
}

fn sender_close_lets_receiver_drain(t: Transport) {
    let place = Place::new(t, "txclose");
    let _ends = sender_close_scenario(&place);
}

/// (3b) The child receives 10 messages, then closes its receiver (staying alive): our sends turn
/// into `Disconnected` within [`NOTICE`]; at once for all but TCP, which may accept a send or
/// two until the peer's reset arrives. Returns the sender and the child.
fn receiver_close_scenario(place: &Place) -> (Box<dyn Sender + Send>, Proc) {
    const K: u64 = 10;
    let t = place.t;
    let mut child = place.child("recv", &[("limit", &K.to_string()), ("then", "close")]);
    child.expect("OPENED");
    let mut tx = place.open_sender();
    let mut bufs = Bufs::default();
    for seq in 0..K {
        send_expect(t, &mut *tx, seq, SMALL, &mut bufs);
    }
    assert_eq!(got(&child.expect("GOT")), (K, "Limit"));
    child.say("GO");
    child.expect("CLOSED");
    let accepted = send_until_disconnected(t, &mut *tx, Instant::now(), "after the receiver's close");
    let allowed = if t == Transport::Tcp { 2 } else { 0 };
    assert!(
        accepted <= allowed,
        "{t}: {accepted} sends accepted after the receiver closed (at most {allowed} expected)"
    );
    (tx, child)
}

fn receiver_close_disconnects_sender(t: Transport) {
    let place = Place::new(t, "rxclose");
    let _ends = receiver_close_scenario(&place);
}

/// (4) With a live sender that sends nothing, `recv_timeout` returns `Timeout`, never early and
/// not much late; a deadline already past is `Timeout` at once; the channel still works after.
fn recv_timeout_with_a_silent_sender(t: Transport) {
    let place = Place::new(t, "rxtimeout");
    let mut rx = place.open_receiver();
    let mut child = place.child("send", &[("n", "0"), ("then", "go_close")]);
    child.expect("OPENED");
    assert_eq!(child.expect("SENT"), ["0"]);
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv(&mut buf), Err(TryRecvError::Empty), "{t}: try_recv");
    for ms in [0, 20, 150, 400] {
        let timeout = Duration::from_millis(ms);
        let started = Instant::now();
        let r = rx.recv_timeout(&mut buf, timeout);
        assert_eq!(
            r,
            Err(RecvTimeoutError::Timeout),
            "{t}: recv_timeout({timeout:?})"
        );
        assert_timed_out(t, "recv_timeout", started, timeout);
    }
    let past = Instant::now().checked_sub(Duration::from_secs(1));
    let started = Instant::now();
    let r = rx.recv_deadline(&mut buf, past);
    assert_eq!(r, Err(RecvTimeoutError::Timeout), "{t}: recv_deadline(past)");
    assert_timed_out(t, "recv_deadline(past)", started, Duration::ZERO);
    // Not an end: the sender now sends one message and closes.
    child.say("GO");
    let mut bufs = Bufs::default();
    recv_expect(t, &mut *rx, 0, SMALL, SOON, &mut bufs);
    child.expect("CLOSED");
    expect_disconnected(t, &mut *rx, Instant::now(), "after the sender's close");
}

/// (4b) With a live receiver that does not read, the sender fills the channel; then `try_send`
/// is `Full` and `send_timeout` is `Timeout`, never early. Once the receiver reads, it gets every
/// message whose send returned `Ok` (and none that timed out), in order.
fn send_timeout_on_a_full_channel(t: Transport) {
    const FILL_MAX: usize = 2_000;
    let fill_max = FILL_MAX.to_string();
    let place = Place::new(t, "txtimeout");
    let mut child = place.child("recv", &[("max", &fill_max), ("wait", "read")]);
    child.expect("OPENED");
    let mut tx = place.open_sender();
    let mut buf = Vec::new();
    let mut accepted = 0u64;
    // Fill: until a send waits 50 ms in vain (bounded).
    let started = Instant::now();
    loop {
        pattern(accepted, FILL_MAX, &mut buf);
        match tx.send_timeout(&buf, Duration::from_millis(50)) {
            Ok(()) => accepted += 1,
            Err(SendTimeoutError::Timeout) => break,
            Err(e) => panic!("{t}: filling, after {accepted} messages: {e:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20) && accepted < 200_000,
            "{t}: the channel never filled ({accepted} messages)"
        );
    }
    pattern(accepted, FILL_MAX, &mut buf);
    assert_eq!(
        tx.try_send(&buf),
        Err(TrySendError::Full),
        "{t}: try_send when full"
    );
    for ms in [0, 50, 250] {
        let timeout = Duration::from_millis(ms);
        let started = Instant::now();
        let r = tx.send_timeout(&buf, timeout);
        assert_eq!(
            r,
            Err(SendTimeoutError::Timeout),
            "{t}: send_timeout({timeout:?}) when full"
        );
        assert_timed_out(t, "send_timeout", started, timeout);
    }
    let started = Instant::now();
    let r = tx.send_deadline(&buf, Instant::now().checked_sub(Duration::from_secs(1)));
    assert_eq!(
        r,
        Err(SendTimeoutError::Timeout),
        "{t}: send_deadline(past) when full"
    );
    assert_timed_out(t, "send_deadline(past)", started, Duration::ZERO);
    // The receiver reads now; a few more messages go through after the timeouts.
    child.say("GO");
    for _ in 0..10 {
        pattern(accepted, FILL_MAX, &mut buf);
        tx.send_timeout(&buf, SOON)
            .unwrap_or_else(|e| panic!("{t}: sending after the timeouts: {e:?}"));
        accepted += 1;
    }
    drop(tx);
    let words = child.expect("GOT");
    assert_eq!(
        got(&words),
        (accepted, "Disconnected"),
        "{t}: the receiver must get exactly the {accepted} accepted messages"
    );
    child.wait_success(SOON);
    eprintln!("{t}: the channel filled after {} messages", accepted - 10);
}

/// (5) A message of `max_message + 1` bytes (or far more) is `TooLarge` from every send call and
/// sends nothing: the receiver gets exactly the valid messages around the refused ones.
fn oversize_is_too_large_and_sends_nothing(t: Transport) {
    let place = Place::new(t, "oversize");
    let mut child = place.child("report", &[]);
    child.expect("OPENED");
    let mut tx = place.open_sender();
    assert_eq!(tx.max_message_size(), MAX, "{t}: max_message_size");
    let over = vec![0xa5_u8; MAX + 1];
    let huge = vec![0x5a_u8; 4 * MAX];
    let too_large = |len| TooLarge { len, max: MAX };
    let mut sent = Vec::new();
    let mut valid = |tx: &mut Box<dyn Sender + Send>, seq: u64| {
        let mut m = Vec::new();
        pattern(seq, MAX, &mut m);
        tx.send_timeout(&m, SOON)
            .unwrap_or_else(|e| panic!("{t}: valid message {seq}: {e:?}"));
        sent.push(m);
    };
    assert_eq!(
        tx.try_send(&over),
        Err(TrySendError::TooLarge(too_large(MAX + 1))),
        "{t}: try_send"
    );
    valid(&mut tx, 1); // exactly MAX bytes
    assert_eq!(
        tx.send_timeout(&over, Duration::from_secs(1)),
        Err(SendTimeoutError::TooLarge(too_large(MAX + 1))),
        "{t}: send_timeout"
    );
    assert_eq!(
        tx.send(&huge),
        Err(SendError::TooLarge(too_large(4 * MAX))),
        "{t}: send"
    );
    valid(&mut tx, 0); // empty
    assert_eq!(
        tx.send_deadline(&over, None),
        Err(SendTimeoutError::TooLarge(too_large(MAX + 1))),
        "{t}: send_deadline"
    );
    valid(&mut tx, 2);
    assert_eq!(sent[0].len(), MAX);
    assert_eq!(sent[1].len(), 0);
    drop(tx);
    for (i, m) in sent.iter().enumerate() {
        let words = child.expect("MSG");
        assert_eq!(
            words,
            [m.len().to_string(), checksum(0, m).to_string()],
            "{t}: message {i} received (len, checksum)"
        );
    }
    assert_eq!(
        child.expect("END"),
        ["Disconnected"],
        "{t}: after the valid messages"
    );
    child.wait_success(SOON);
}

/// (6) The child sends [`SHORT`] messages, flushes, says so and sleeps; we SIGKILL it without
/// having read anything: we drain all of them, then `Disconnected` within [`NOTICE`] of the kill.
/// Returns the receiver and the (killed) child.
fn sender_death_scenario(place: &Place) -> (Box<dyn Receiver + Send>, Proc) {
    let t = place.t;
    let mut rx = place.open_receiver();
    let mut child = place.child("send", &[("n", &SHORT.to_string()), ("then", "hold")]);
    child.expect("OPENED");
    assert_eq!(child.expect("SENT"), [SHORT.to_string()]);
    child.kill();
    let killed = Instant::now();
    let mut bufs = Bufs::default();
    for seq in 0..SHORT {
        recv_expect(t, &mut *rx, seq, SMALL, NOTICE, &mut bufs);
    }
    expect_disconnected(t, &mut *rx, killed, "after SIGKILL of the sender");
    (rx, child)
}

fn sender_death_drains_then_disconnects(t: Transport) {
    let place = Place::new(t, "txdeath");
    let (_rx, mut child) = sender_death_scenario(&place);
    let status = child.wait(SOON);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

/// (7) The child receives 10 messages (so the transport has seen it receive) and holds its
/// receiver; we SIGKILL it: our sends turn into `Disconnected` within [`NOTICE`] (a ring or a
/// queue first fills up: the dead receiver is noticed when the sender would have to wait).
/// Returns the sender and the (killed) child.
fn receiver_death_scenario(place: &Place) -> (Box<dyn Sender + Send>, Proc) {
    const K: u64 = 10;
    let t = place.t;
    let mut child = place.child("recv", &[("limit", &K.to_string()), ("then", "hold")]);
    child.expect("OPENED");
    let mut tx = place.open_sender();
    let mut bufs = Bufs::default();
    for seq in 0..K {
        send_expect(t, &mut *tx, seq, SMALL, &mut bufs);
    }
    assert_eq!(got(&child.expect("GOT")), (K, "Limit"));
    child.kill();
    let accepted = send_until_disconnected(t, &mut *tx, Instant::now(), "after SIGKILL of the receiver");
    eprintln!("{t}: {accepted} sends accepted after the receiver was killed");
    (tx, child)
}

fn receiver_death_disconnects_sender(t: Transport) {
    let place = Place::new(t, "rxdeath");
    let _ends = receiver_death_scenario(&place);
}

/// (8) After `Disconnected`, `peer()` tells a clean close from a death where the transport can
/// tell (shared memory records both roles' states: `Receiver::peer`/`Sender::peer` must say
/// `Closed` or `Dead`); elsewhere it may say `None`, but never the wrong one. Checked on both
/// ends, through the boxed ends `open_sender`/`open_receiver` return.
fn peer_tells_close_from_death(t: Transport) {
    // Shared memory tells on both ends; a message-queue receiver tells (end-of-stream message
    // versus a dead last sender); the others may say None (unknown).
    let mut wrong = Vec::new();
    let mut check = |what: &str, got: Option<Peer>, want: Peer| {
        let can_tell = t == Transport::Shm || (t == Transport::Msgq && what.starts_with("receiver"));
        let ok = got == Some(want) || (!can_tell && got.is_none());
        if !ok {
            wrong.push(format!("{what}: peer() = {got:?}, expected Some({want:?})"));
        }
    };
    {
        let place = Place::new(t, "peer-rxclose");
        let (tx, _child) = receiver_close_scenario(&place);
        check("sender after the receiver's close", tx.peer(), Peer::Closed);
    }
    {
        let place = Place::new(t, "peer-rxdeath");
        let (tx, _child) = receiver_death_scenario(&place);
        check("sender after the receiver's death", tx.peer(), Peer::Dead);
    }
    {
        let place = Place::new(t, "peer-txclose");
        let (rx, _child) = sender_close_scenario(&place);
        check("receiver after the sender's close", rx.peer(), Peer::Closed);
    }
    {
        let place = Place::new(t, "peer-txdeath");
        let (rx, _child) = sender_death_scenario(&place);
        check("receiver after the sender's death", rx.peer(), Peer::Dead);
    }
    assert!(wrong.is_empty(), "{t}:\n{}", wrong.join("\n"));
}

/// (9) `Disconnected` is final: right after the first one, every later call on that end says
/// `Disconnected` again (never `Empty`/`Full`, which would mean "try again later"), whether the
/// peer closed or died. Checked on both ends, after each of the four ways a channel ends.
fn disconnected_is_final(t: Transport) {
    let mut wrong = Vec::new();
    let mut buf = Vec::new();
    let msg = [1u8; SMALL];
    let quick = Duration::from_millis(50);
    let mut check_sender = |what: &str, tx: &mut dyn Sender| {
        // Back to back, so a rate-limited liveness check cannot hide a lapse.
        let calls = [
            ("try_send", tx.try_send(&msg).map_err(|e| format!("{e:?}"))),
            ("try_send", tx.try_send(&msg).map_err(|e| format!("{e:?}"))),
            (
                "send_timeout",
                tx.send_timeout(&msg, quick).map_err(|e| format!("{e:?}")),
            ),
            ("try_send", tx.try_send(&msg).map_err(|e| format!("{e:?}"))),
            ("try_send", tx.try_send(&msg).map_err(|e| format!("{e:?}"))),
        ];
        for (i, (call, r)) in calls.into_iter().enumerate() {
            if r.as_ref().err().map(String::as_str) != Some("Disconnected") {
                wrong.push(format!("{what}: call {} after it, {call}, = {r:?}", i + 1));
            }
        }
    };
    {
        let place = Place::new(t, "final-rxclose");
        let (mut tx, _child) = receiver_close_scenario(&place);
        check_sender("sender after the receiver's close", &mut *tx);
    }
    {
        let place = Place::new(t, "final-rxdeath");
        let (mut tx, _child) = receiver_death_scenario(&place);
        check_sender("sender after the receiver's death", &mut *tx);
    }
    let mut check_receiver = |what: &str, rx: &mut dyn Receiver| {
        let calls = [
            ("try_recv", rx.try_recv(&mut buf).map_err(|e| format!("{e:?}"))),
            ("try_recv", rx.try_recv(&mut buf).map_err(|e| format!("{e:?}"))),
            (
                "recv_timeout",
                rx.recv_timeout(&mut buf, quick).map_err(|e| format!("{e:?}")),
            ),
            ("try_recv", rx.try_recv(&mut buf).map_err(|e| format!("{e:?}"))),
            ("try_recv", rx.try_recv(&mut buf).map_err(|e| format!("{e:?}"))),
        ];
        for (i, (call, r)) in calls.into_iter().enumerate() {
            if r.as_ref().err().map(String::as_str) != Some("Disconnected") {
                wrong.push(format!("{what}: call {} after it, {call}, = {r:?}", i + 1));
            }
        }
    };
    {
        let place = Place::new(t, "final-txclose");
        let (mut rx, _child) = sender_close_scenario(&place);
        check_receiver("receiver after the sender's close", &mut *rx);
    }
    {
        let place = Place::new(t, "final-txdeath");
        let (mut rx, _child) = sender_death_scenario(&place);
        check_receiver("receiver after the sender's death", &mut *rx);
    }
    assert!(
        wrong.is_empty(),
        "{t}: Disconnected did not stay:\n{}",
        wrong.join("\n")
    );
}
