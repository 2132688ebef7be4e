//! The socket transports (`unix://`, `tcp://`) across real processes: children are this test
//! binary re-run with an environment variable selecting their role (see `child_process_entry`),
//! and Python 3 (stdlib only) peers that speak the documented wire format.
//!
//! Every test uses its own socket path (in its own temporary directory) or port, and RAII guards
//! remove directories and kill children even when an assertion fails.

use shmpipe::transport::socket::{Listen, SocketConfig};
use shmpipe::{
    Error, Receiver, RecvError, RecvTimeoutError, SendTimeoutError, Sender, TooLarge, TryRecvError,
    TrySendError,
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "SHMPIPE_SOCKET_TEST_ROLE";
const ENDPOINT_ENV: &str = "SHMPIPE_SOCKET_TEST_ENDPOINT";
const COUNT_ENV: &str = "SHMPIPE_SOCKET_TEST_COUNT";
/// Prefix of the lines a child prints for its parent (the test harness prints its own lines too).
const SAY: &str = "CHILD:";

/// Messages in the long cross-process streams.
const STREAM: u64 = 100_000;

// ---------------------------------------------------------------------------------------------
// Messages

/// Message `i` of a stream: mostly small, every 10th up to 5 kB, every 1000th 200 kB (so frames
/// span many reads and partial writes). Starts with `i` (when long enough), then a fill byte.
fn msg(i: u64) -> Vec<u8> {
    let len = match i % 1000 {
        999 => 200_000,
        r if r % 10 == 5 => (i as usize * 131) % 5000,
        _ => (i as usize * 7) % 65,
    };
    small_or_sized(i, len)
}

/// Message `i` of a short stream that fits in a socket buffer: at most 64 bytes.
fn small_msg(i: u64) -> Vec<u8> {
    small_or_sized(i, (i as usize * 7) % 65)
}

fn small_or_sized(i: u64, len: usize) -> Vec<u8> {
    let mut m = vec![(i as u8) ^ 0x5a; len];
    let id = i.to_le_bytes();
    let n = len.min(8);
    m[..n].copy_from_slice(&id[..n]);
    m
}

/// The messages the Python peers send and expect; `PY_MSG` below is the same function.
fn py_msg(i: u64) -> Vec<u8> {
    let len = match i {
        500 => 300_000,
        _ if i.is_multiple_of(10) => 0,
        _ => (i as usize * 37) % 3000,
    };
    (0..len).map(|j| ((i as usize * 7 + j) % 251) as u8).collect()
}

const PY_MSG: &str = r#"
def py_msg(i):
    n = 300000 if i == 500 else 0 if i % 10 == 0 else (i * 37) % 3000
    return bytes((i * 7 + j) % 251 for j in range(n))
"#;

// ---------------------------------------------------------------------------------------------
// Fixtures

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private temporary directory, removed (with everything in it) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shmpipe-sock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("s.sock")
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.sock().display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that was free a moment ago: bind port 0, read the port the kernel chose, and
/// close. Another process could take it before the test binds it again; the kernel hands out
/// ephemeral ports in rotation, so that is unlikely, and it would fail loudly (InUse), not
/// silently.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where a test runs its channel.
enum Place {
    Unix(TempDir),
    Tcp(u16),
}

impl Place {
    fn unix() -> Self {
        Place::Unix(TempDir::new())
    }

    fn tcp() -> Self {
        Place::Tcp(free_port())
    }

    fn endpoint(&self) -> String {
        match self {
            Place::Unix(d) => d.endpoint(),
            Place::Tcp(port) => format!("tcp://127.0.0.1:{port}"),
        }
    }

    fn config(&self) -> SocketConfig {
        match self {
            Place::Unix(d) => SocketConfig::unix(d.sock()),
            Place::Tcp(port) => SocketConfig::tcp("127.0.0.1", *port),
        }
    }

    /// For the Python scripts: `unix PATH` or `tcp HOST:PORT`.
    fn py_args(&self) -> [String; 2] {
        match self {
            Place::Unix(d) => ["unix".into(), d.sock().display().to_string()],
            Place::Tcp(port) => ["tcp".into(), format!("127.0.0.1:{port}")],
        }
    }
}

/// A child process, killed and reaped on drop unless already waited for. Its stdout is read by
/// a thread, so waiting for a line can time out instead of hanging the test.
struct ChildGuard {
    child: Child,
    said: mpsc::Receiver<String>,
}

impl ChildGuard {
    /// Re-runs this test binary as a child with `role`.
    fn spawn(role: &str, endpoint: &str, count: u64) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "child_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env(ENDPOINT_ENV, endpoint)
        .env(COUNT_ENV, count.to_string());
        Self::start(cmd)
    }

    fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, said) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // The harness may have printed "test child_process_entry ... " on the same line.
                if let Some((_, what)) = line.split_once(SAY) {
                    if tx.send(what.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        ChildGuard { child, said }
    }

    /// The next line the child says (its `CHILD:` lines, prefix removed), within 60 s.
    fn next_said(&mut self) -> String {
        match self.said.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the child said nothing for 60 s"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the child's stdout ended before it said anything more")
            }
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the child and asserts it exited 0.
    fn wait_success(&mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn python() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import socket, struct"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("SHMPIPE_REQUIRE_PYTHON").is_none(),
            "python3 is required (SHMPIPE_REQUIRE_PYTHON is set) but not found"
        );
        eprintln!("python3 not found: skipping");
    }
    ok
}

/// Runs a Python script (after the shared helpers) with `args`.
fn spawn_python(script: &str, args: &[String]) -> ChildGuard {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(format!("{PY_PRELUDE}{PY_MSG}{script}"))
        .args(args);
    ChildGuard::start(cmd)
}

const PY_PRELUDE: &str = r#"
import socket, struct, sys, time
def connect(kind, addr):
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr)
        return s
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)))
def send_frame(s, payload):
    s.sendall(struct.pack("<I", len(payload)) + payload)
def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None if not b else b"TRUNCATED"
        b += c
    return b
def say(x):
    print("CHILD:" + str(x), flush=True)
"#;

fn assert_msg(got: &[u8], want: &[u8], i: u64) {
    if got != want {
        panic!(
            "message {i}: got {} bytes starting {:?}, expected {} bytes starting {:?}",
            got.len(),
            &got[..got.len().min(8)],
            want.len(),
            &want[..want.len().min(8)]
        );
    }
}

fn env_count() -> u64 {
    std::env::var(COUNT_ENV).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Child roles

/// Does nothing in a normal test run; in a child (`ROLE_ENV` set) plays its role and exits.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    // Die with the test process, even if it is killed before its guards can run.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes scalar arguments and only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let endpoint = std::env::var(ENDPOINT_ENV).unwrap();
    let count = env_count();
    let say = |s: &str| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{SAY}{s}").unwrap();
        out.flush().unwrap();
    };
    match role.as_str() {
        // Send `count` stream messages, then close cleanly.
        "send" => {
            let mut tx = shmpipe::open_sender(&endpoint).unwrap();
            for i in 0..count {
                tx.send(&msg(i)).unwrap();
            }
        }
        // The same with try_send only: retried on Full (a frame's remainder may be pending).
        "try-send" => {
            let mut tx = shmpipe::open_sender(&endpoint).unwrap();
            let mut full = 0u64;
            for i in 0..count {
                let m = msg(i);
                loop {
                    match tx.try_send(&m) {
                        Ok(()) => break,
                        Err(TrySendError::Full) => {
                            full += 1;
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("message {i}: {e}"),
                    }
                }
            }
            say(&format!("full {full}"));
        }
        // Send `count` small messages, say so, then wait to be killed.
        "send-then-wait" => {
            let mut tx = shmpipe::open_sender(&endpoint).unwrap();
            for i in 0..count {
                tx.send(&small_msg(i)).unwrap();
            }
            say("sent");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Send stream messages until killed.
        "stream-forever" => {
            let mut tx = shmpipe::open_sender(&endpoint).unwrap();
            for i in 0.. {
                tx.send(&msg(i)).unwrap();
            }
        }
        // Open a listening receiver, say so, and wait to be killed (leaving its socket file).
        "listen-then-wait" => {
            let _rx = shmpipe::open_receiver(&endpoint).unwrap();
            say("listening");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Listen, then report the first message received.
        "recv-one" => {
            let mut rx = shmpipe::open_receiver(&endpoint).unwrap();
            say("listening");
            let mut m = Vec::new();
            rx.recv(&mut m).unwrap();
            say(&String::from_utf8_lossy(&m));
        }
        // Receive and check `count` stream messages, then expect a clean end.
        "recv-verify" => {
            let mut rx = shmpipe::open_receiver(&endpoint).unwrap();
            let mut m = Vec::new();
            for i in 0..count {
                rx.recv(&mut m).unwrap();
                assert_msg(&m, &msg(i), i);
            }
            assert_eq!(rx.recv(&mut m), Err(RecvError::Disconnected));
            say(&format!("ok {count}"));
        }
        // With SIGPIPE at its default (terminate), send until the receiver goes away: the send
        // must fail with Disconnected instead of the process dying.
        "send-until-disconnected" => {
            // SAFETY: setting a signal disposition to SIG_DFL installs no handler; this child
            // process is single-threaded apart from the test harness, which does not use SIGPIPE.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            let mut tx = shmpipe::open_sender(&endpoint).unwrap();
            let mut sent = 0u64;
            loop {
                match tx.send_timeout(&small_msg(sent), Duration::from_secs(10)) {
                    Ok(()) => sent += 1,
                    Err(SendTimeoutError::Disconnected) => break,
                    Err(e) => panic!("send: {e}"),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            say(&format!("disconnected after {sent}"));
        }
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Streams across processes

/// A child sends `STREAM` messages; we check every one, then the clean end.
fn stream_from_child(place: Place, sender_first: bool) {
    stream_from_child_role(place, sender_first, "send");
}

fn stream_from_child_role(place: Place, sender_first: bool, role: &str) {
    let endpoint = place.endpoint();
    let (mut child, mut rx);
    if sender_first {
        child = ChildGuard::spawn(role, &endpoint, STREAM);
        // Let it try (and be refused) a few times before we listen.
        std::thread::sleep(Duration::from_millis(300));
        rx = shmpipe::open_receiver(&endpoint).unwrap();
    } else {
        rx = shmpipe::open_receiver(&endpoint).unwrap();
        child = ChildGuard::spawn(role, &endpoint, STREAM);
    }
    let mut m = Vec::new();
    for i in 0..STREAM {
        rx.recv_timeout(&mut m, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_msg(&m, &msg(i), i);
    }
    assert_eq!(
        rx.recv_timeout(&mut m, Duration::from_secs(10)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(rx.try_recv(&mut m), Err(TryRecvError::Disconnected));
    child.wait_success();
    if role == "try-send" {
        let said = child.next_said();
        eprintln!("try_send child said: {said} (times it saw Full)");
        assert!(said.starts_with("full "), "{said}");
    }
}

#[test]
fn unix_100k_messages_receiver_first() {
    stream_from_child(Place::unix(), false);
}

#[test]
fn unix_100k_messages_sender_first() {
    stream_from_child(Place::unix(), true);
}

#[test]
fn tcp_100k_messages_receiver_first() {
    stream_from_child(Place::tcp(), false);
}

#[test]
fn tcp_100k_messages_sender_first() {
    stream_from_child(Place::tcp(), true);
}

/// The non-blocking path across processes: the child only ever calls try_send, which leaves
/// partly written frames pending and reports Full until they can be flushed.
#[test]
fn unix_100k_messages_with_try_send() {
    stream_from_child_role(Place::unix(), false, "try-send");
}

#[test]
fn tcp_100k_messages_with_try_send() {
    stream_from_child_role(Place::tcp(), false, "try-send");
}

/// With `listen=sender` we listen and send; the child connects, checks everything and the end.
fn stream_to_child_listening_sender(place: Place) {
    let endpoint = format!("{}?listen=sender", place.endpoint());
    let mut tx = shmpipe::open_sender(&endpoint).unwrap();
    // Nobody has connected yet: try_send cannot block and says Full.
    assert_eq!(tx.try_send(b"x"), Err(TrySendError::Full));
    let mut child = ChildGuard::spawn("recv-verify", &endpoint, STREAM);
    for i in 0..STREAM {
        tx.send_timeout(&msg(i), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    drop(tx);
    assert_eq!(child.next_said(), format!("ok {STREAM}"));
    child.wait_success();
}

#[test]
fn unix_listening_sender_streams_to_child() {
    stream_to_child_listening_sender(Place::unix());
}

#[test]
fn tcp_listening_sender_streams_to_child() {
    stream_to_child_listening_sender(Place::tcp());
}

// ---------------------------------------------------------------------------------------------
// Crashes and closes

/// The child sends 100 small messages (all buffered in the kernel: a Unix socket charges each
/// small write about 1 kB of its ~200 kB buffer) and is SIGKILLed before we read any: we drain
/// all 100, then get Disconnected promptly.
fn sigkill_after_send(place: Place) {
    let endpoint = place.endpoint();
    let mut rx = shmpipe::open_receiver(&endpoint).unwrap();
    let mut child = ChildGuard::spawn("send-then-wait", &endpoint, 100);
    assert_eq!(child.next_said(), "sent");
    child.kill();
    let killed = Instant::now();
    let mut m = Vec::new();
    for i in 0..100 {
        rx.recv_timeout(&mut m, Duration::from_secs(2)).unwrap();
        assert_msg(&m, &small_msg(i), i);
    }
    assert_eq!(
        rx.recv_timeout(&mut m, Duration::from_secs(5)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed.elapsed()
    );
}

#[test]
fn unix_sigkill_of_sender_drains_then_disconnects() {
    sigkill_after_send(Place::unix());
}

#[test]
fn tcp_sigkill_of_sender_drains_then_disconnects() {
    sigkill_after_send(Place::tcp());
}

/// The child streams until SIGKILLed mid-stream: what we got is an exact prefix, and the end is
/// Disconnected (or, if it died inside a frame, one truncated-frame Corrupted first).
fn sigkill_mid_stream(place: Place) {
    let endpoint = place.endpoint();
    let mut rx = shmpipe::open_receiver(&endpoint).unwrap();
    let mut child = ChildGuard::spawn("stream-forever", &endpoint, 0);
    let mut m = Vec::new();
    let mut i = 0;
    while i < 3000 {
        rx.recv_timeout(&mut m, Duration::from_secs(10)).unwrap();
        assert_msg(&m, &msg(i), i);
        i += 1;
    }
    child.kill();
    let killed = Instant::now();
    loop {
        match rx.recv_timeout(&mut m, Duration::from_secs(5)) {
            Ok(()) => {
                assert_msg(&m, &msg(i), i);
                i += 1;
            }
            Err(RecvTimeoutError::Corrupted(c)) => {
                assert!(c.reason.starts_with("truncated frame"), "{c}");
                assert_eq!(
                    rx.recv_timeout(&mut m, Duration::from_secs(1)),
                    Err(RecvTimeoutError::Disconnected)
                );
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("after the kill: {e}"),
        }
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed.elapsed()
    );
}

#[test]
fn unix_sigkill_mid_stream_leaves_an_exact_prefix() {
    sigkill_mid_stream(Place::unix());
}

#[test]
fn tcp_sigkill_mid_stream_leaves_an_exact_prefix() {
    sigkill_mid_stream(Place::tcp());
}

/// The child sends with SIGPIPE at its default; we read a few messages and close. Its sends must
/// turn into Disconnected (the process is not killed by SIGPIPE).
fn receiver_close_is_disconnected_without_sigpipe(place: Place) {
    let endpoint = place.endpoint();
    let mut rx = shmpipe::open_receiver(&endpoint).unwrap();
    let mut child = ChildGuard::spawn("send-until-disconnected", &endpoint, 0);
    let mut m = Vec::new();
    for i in 0..10 {
        rx.recv_timeout(&mut m, Duration::from_secs(10)).unwrap();
        assert_msg(&m, &small_msg(i), i);
    }
    drop(rx);
    let said = child.next_said();
    assert!(said.starts_with("disconnected after "), "{said}");
    child.wait_success();
}

#[test]
fn unix_receiver_close_disconnects_sender_without_sigpipe() {
    receiver_close_is_disconnected_without_sigpipe(Place::unix());
}

#[test]
fn tcp_receiver_close_disconnects_sender_without_sigpipe() {
    receiver_close_is_disconnected_without_sigpipe(Place::tcp());
}

#[test]
fn unix_sender_sees_closed_receiver_on_next_send() {
    let place = Place::unix();
    let mut rx = shmpipe::open_receiver(&place.endpoint()).unwrap();
    let mut tx = shmpipe::open_sender(&place.endpoint()).unwrap();
    tx.send(b"one").unwrap();
    let mut m = Vec::new();
    rx.recv(&mut m).unwrap();
    drop(rx);
    assert_eq!(tx.try_send(b"two"), Err(TrySendError::Disconnected));
    assert_eq!(tx.try_send(b"three"), Err(TrySendError::Disconnected));
}

// ---------------------------------------------------------------------------------------------
// Socket files

#[test]
fn unix_socket_file_is_private_and_goes_away() {
    let dir = TempDir::new();
    let path = dir.sock();
    let mut rx = shmpipe::open_receiver(&dir.endpoint()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    // Once the peer is accepted, the listener stops listening and removes its file.
    let mut tx = shmpipe::open_sender(&dir.endpoint()).unwrap();
    tx.send(b"hi").unwrap();
    let mut m = Vec::new();
    rx.recv(&mut m).unwrap();
    assert!(!path.exists());
    // A listener that never got a peer removes its file when dropped.
    let rx2 = shmpipe::open_receiver(&dir.endpoint()).unwrap();
    assert!(path.exists());
    drop(rx2);
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn stale_socket_file_from_a_killed_listener_is_replaced() {
    let dir = TempDir::new();
    let mut child = ChildGuard::spawn("listen-then-wait", &dir.endpoint(), 0);
    assert_eq!(child.next_said(), "listening");
    child.kill();
    assert!(dir.sock().exists(), "a SIGKILLed listener leaves its file");
    let mut rx = shmpipe::open_receiver(&dir.endpoint()).unwrap();
    let mut tx = shmpipe::open_sender(&dir.endpoint()).unwrap();
    tx.send(b"after the crash").unwrap();
    let mut m = Vec::new();
    rx.recv_timeout(&mut m, Duration::from_secs(5)).unwrap();
    assert_eq!(m, b"after the crash");
}

#[test]
fn live_listener_is_in_use_and_not_disturbed() {
    let dir = TempDir::new();
    let mut child = ChildGuard::spawn("recv-one", &dir.endpoint(), 0);
    assert_eq!(child.next_said(), "listening");
    let ino = std::fs::symlink_metadata(dir.sock()).unwrap().ino();
    for _ in 0..3 {
        match shmpipe::open_receiver(&dir.endpoint()) {
            Err(Error::InUse(m)) => assert!(m.contains("live process"), "{m}"),
            Err(e) => panic!("expected InUse, got {e:?}"),
            Ok(_) => panic!("expected InUse, got a second receiver"),
        }
    }
    assert_eq!(std::fs::symlink_metadata(dir.sock()).unwrap().ino(), ino);
    // Our probes were not taken for the child's one connection: a real sender still gets through.
    let mut tx = shmpipe::open_sender(&dir.endpoint()).unwrap();
    tx.send(b"still listening").unwrap();
    assert_eq!(child.next_said(), "still listening");
    child.wait_success();
}

#[test]
fn tcp_port_in_use_is_in_use() {
    let place = Place::tcp();
    let _rx = shmpipe::open_receiver(&place.endpoint()).unwrap();
    assert!(matches!(
        shmpipe::open_receiver(&place.endpoint()),
        Err(Error::InUse(_))
    ));
}

#[test]
fn connector_gives_up_after_connect_timeout() {
    let place = Place::unix();
    let start = Instant::now();
    let err = shmpipe::open_sender(&format!("{}?connect_timeout_ms=300", place.endpoint()))
        .err()
        .expect("nobody listens");
    let took = start.elapsed();
    assert!(matches!(err, Error::Io { op: "connect", .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let place = Place::tcp();
    let err = shmpipe::open_sender(&format!("{}?connect_timeout_ms=200", place.endpoint()))
        .err()
        .expect("nobody listens");
    assert!(
        err.to_string().starts_with("connect failed: tcp://127.0.0.1:"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts, sizes, partial writes (in one process)

fn assert_took(start: Instant, timeout: Duration) {
    let took = start.elapsed();
    // Never early; late only by scheduling (the machine may be busy).
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "{took:?} for {timeout:?}"
    );
}

#[test]
fn timeouts_are_honoured() {
    for place in [Place::unix(), Place::tcp()] {
        let t = Duration::from_millis(150);
        let mut m = Vec::new();
        // A listening receiver with no sender yet.
        let mut rx = place.config().open_receiver().unwrap();
        assert_eq!(rx.try_recv(&mut m), Err(TryRecvError::Empty));
        let start = Instant::now();
        assert_eq!(rx.recv_timeout(&mut m, t), Err(RecvTimeoutError::Timeout));
        assert_took(start, t);
        // Connected, nothing sent.
        let mut tx = place.config().open_sender().unwrap();
        let start = Instant::now();
        assert_eq!(rx.recv_timeout(&mut m, t), Err(RecvTimeoutError::Timeout));
        assert_took(start, t);
        // A receiver that does not read: the sender fills the kernel's buffers, then Full/Timeout.
        let chunk = vec![1u8; 60_000];
        while tx.try_send(&chunk).is_ok() {}
        assert_eq!(tx.try_send(&chunk), Err(TrySendError::Full));
        let start = Instant::now();
        assert_eq!(tx.send_timeout(&chunk, t), Err(SendTimeoutError::Timeout));
        assert_took(start, t);
        // A deadline already past still takes what is ready.
        assert!(rx.recv_timeout(&mut m, Duration::ZERO).is_ok());
        assert_eq!(m.len(), 60_000);
    }
    // A listening sender with no receiver yet.
    let place = Place::unix();
    let mut tx = place.config().listen(Listen::Sender).open_sender().unwrap();
    let t = Duration::from_millis(150);
    let start = Instant::now();
    assert_eq!(tx.send_timeout(b"x", t), Err(SendTimeoutError::Timeout));
    assert_took(start, t);
}

#[test]
fn oversize_is_too_large_and_writes_nothing() {
    let place = Place::unix();
    let mut rx = shmpipe::open_receiver(&format!("{}?max_message=100", place.endpoint())).unwrap();
    let mut tx = shmpipe::open_sender(&format!("{}?max_message=100", place.endpoint())).unwrap();
    assert_eq!(tx.max_message_size(), 100);
    let too_large = TooLarge { len: 101, max: 100 };
    assert_eq!(tx.try_send(&[0; 101]), Err(TrySendError::TooLarge(too_large)));
    assert_eq!(
        tx.send_timeout(&[0; 101], Duration::from_secs(1)),
        Err(SendTimeoutError::TooLarge(too_large))
    );
    tx.send(&[7; 100]).unwrap();
    tx.send(b"").unwrap();
    let mut m = Vec::new();
    rx.recv(&mut m).unwrap();
    assert_eq!(m, [7; 100]);
    rx.recv(&mut m).unwrap();
    assert_eq!(m, b"");
    drop(tx);
    assert_eq!(rx.recv(&mut m), Err(RecvError::Disconnected));
}

#[test]
fn frame_over_the_receivers_maximum_is_corrupted_then_disconnected() {
    let place = Place::tcp();
    let mut rx = place.config().max_message(10).open_receiver().unwrap();
    let mut tx = place.config().max_message(1000).open_sender().unwrap();
    tx.send(b"small").unwrap();
    tx.send(&[1; 50]).unwrap();
    tx.send(b"after").unwrap();
    let mut m = Vec::new();
    rx.recv(&mut m).unwrap();
    assert_eq!(m, b"small");
    match rx.recv(&mut m) {
        Err(RecvError::Corrupted(c)) => {
            assert_eq!(
                c.to_string(),
                "corrupted: frame of 50 bytes exceeds the maximum of 10 bytes"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.recv(&mut m), Err(RecvError::Disconnected));
    assert_eq!(rx.try_recv(&mut m), Err(TryRecvError::Disconnected));
    // The sender learns of it as a closed receiver (a send or two may still be buffered on TCP).
    let start = Instant::now();
    while tx.send(b"more") != Err(shmpipe::SendError::Disconnected) {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn partially_written_frame_is_pending_then_completed() {
    let place = Place::unix();
    let cfg = place.config().max_message(16 << 20);
    let mut rx = cfg.open_receiver().unwrap();
    let mut tx = cfg.open_sender().unwrap();
    let big: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 253) as u8).collect();
    // Far more than a socket buffer: accepted, with most of it pending, without blocking.
    let start = Instant::now();
    tx.try_send(&big).unwrap();
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(tx.pending_bytes() > 0);
    assert_eq!(tx.try_send(b"next"), Err(TrySendError::Full));
    assert_eq!(
        tx.flush_deadline(Some(Instant::now())),
        Err(SendTimeoutError::Timeout)
    );
    let reader = std::thread::spawn(move || {
        let mut m = Vec::new();
        let mut got = Vec::new();
        for _ in 0..3 {
            rx.recv_timeout(&mut m, Duration::from_secs(10)).unwrap();
            got.push(m.clone());
        }
        (got, rx.recv_timeout(&mut m, Duration::from_secs(10)))
    });
    tx.flush_deadline(None).unwrap();
    assert_eq!(tx.pending_bytes(), 0);
    tx.send(b"next").unwrap();
    // A sender dropped with a remainder pending finishes it first (within its close timeout).
    tx.try_send(&big).unwrap();
    drop(tx);
    let (got, end) = reader.join().unwrap();
    assert!(got[0] == big && got[1] == b"next" && got[2] == big);
    assert_eq!(end, Err(RecvTimeoutError::Disconnected));
}

#[test]
fn hostnames_and_ipv6_work() {
    let port = free_port();
    let mut rx = shmpipe::open_receiver(&format!("tcp://localhost:{port}")).unwrap();
    let mut tx = shmpipe::open_sender(&format!("tcp://localhost:{port}")).unwrap();
    tx.send(b"by name").unwrap();
    let mut m = Vec::new();
    rx.recv(&mut m).unwrap();
    assert_eq!(m, b"by name");
    // IPv6 loopback, where the machine has it.
    let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback: skipping that part");
        return;
    };
    let port = l.local_addr().unwrap().port();
    drop(l);
    let ep = format!("tcp://[::1]:{port}");
    let mut rx = shmpipe::open_receiver(&ep).unwrap();
    let mut tx = shmpipe::open_sender(&ep).unwrap();
    tx.send(b"over ::1").unwrap();
    rx.recv(&mut m).unwrap();
    assert_eq!(m, b"over ::1");
}

// ---------------------------------------------------------------------------------------------
// Python peers

const PY_SEND: &str = r#"
s = connect(sys.argv[1], sys.argv[2])
for i in range(int(sys.argv[3])):
    send_frame(s, py_msg(i))
s.close()
say("done")
"#;

const PY_RECV: &str = r#"
s = connect(sys.argv[1], sys.argv[2])
i = 0
while True:
    h = recv_exact(s, 4)
    if h is None:
        break
    if h == b"TRUNCATED":
        say("truncated header"); sys.exit(1)
    m = recv_exact(s, struct.unpack("<I", h)[0])
    if m != py_msg(i):
        say("bad message %d" % i); sys.exit(1)
    i += 1
say("ok %d" % i)
"#;

const PY_GARBAGE: &str = r#"
s = connect(sys.argv[1], sys.argv[2])
for i in range(3):
    send_frame(s, py_msg(i))
s.sendall(struct.pack("<I", 0xFFFFFFF0) + b"junk" * 100)
time.sleep(0.3)
s.close()
"#;

const PY_TRUNCATED: &str = r#"
s = connect(sys.argv[1], sys.argv[2])
for i in range(2):
    send_frame(s, py_msg(i))
s.sendall(struct.pack("<I", 100) + b"0123456789")
s.close()
"#;

fn python_sends_to_our_receiver(place: Place) {
    let mut rx = shmpipe::open_receiver(&place.endpoint()).unwrap();
    let n = 1000;
    let [kind, addr] = place.py_args();
    let mut py = spawn_python(PY_SEND, &[kind, addr, n.to_string()]);
    let mut m = Vec::new();
    for i in 0..n {
        rx.recv_timeout(&mut m, Duration::from_secs(20)).unwrap();
        assert_msg(&m, &py_msg(i), i);
    }
    assert_eq!(
        rx.recv_timeout(&mut m, Duration::from_secs(10)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(py.next_said(), "done");
    py.wait_success();
}

fn python_receives_from_our_sender(place: Place) {
    let endpoint = format!("{}?listen=sender", place.endpoint());
    let mut tx = shmpipe::open_sender(&endpoint).unwrap();
    let n = 1000;
    let [kind, addr] = place.py_args();
    let mut py = spawn_python(PY_RECV, &[kind, addr]);
    for i in 0..n {
        tx.send_timeout(&py_msg(i), Duration::from_secs(20)).unwrap();
    }
    drop(tx);
    assert_eq!(py.next_said(), format!("ok {n}"));
    py.wait_success();
}

fn python_garbage_is_corrupted(place: Place) {
    let mut rx = shmpipe::open_receiver(&place.endpoint()).unwrap();
    let [kind, addr] = place.py_args();
    let _py = spawn_python(PY_GARBAGE, &[kind, addr]);
    let mut m = Vec::new();
    for i in 0..3 {
        rx.recv_timeout(&mut m, Duration::from_secs(10)).unwrap();
        assert_msg(&m, &py_msg(i), i);
    }
    match rx.recv_timeout(&mut m, Duration::from_secs(10)) {
        Err(RecvTimeoutError::Corrupted(c)) => assert_eq!(
            c.reason,
            "frame of 4294967280 bytes exceeds the maximum of 1048576 bytes"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.try_recv(&mut m), Err(TryRecvError::Disconnected));
    assert_eq!(
        rx.recv_timeout(&mut m, Duration::from_secs(1)),
        Err(RecvTimeoutError::Disconnected)
    );
}

fn python_truncated_frame(place: Place) {
    let mut rx = shmpipe::open_receiver(&place.endpoint()).unwrap();
    let [kind, addr] = place.py_args();
    let _py = spawn_python(PY_TRUNCATED, &[kind, addr]);
    let mut m = Vec::new();
    for i in 0..2 {
        rx.recv_timeout(&mut m, Duration::from_secs(10)).unwrap();
        assert_msg(&m, &py_msg(i), i);
    }
    match rx.recv_timeout(&mut m, Duration::from_secs(10)) {
        Err(RecvTimeoutError::Corrupted(c)) => assert_eq!(
            c.reason,
            "truncated frame: the stream ended after 14 of its 104 bytes"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.try_recv(&mut m), Err(TryRecvError::Disconnected));
}

#[test]
fn python_client_sends_over_unix() {
    if python() {
        python_sends_to_our_receiver(Place::unix());
    }
}

#[test]
fn python_client_sends_over_tcp() {
    if python() {
        python_sends_to_our_receiver(Place::tcp());
    }
}

#[test]
fn python_client_receives_over_unix() {
    if python() {
        python_receives_from_our_sender(Place::unix());
    }
}

#[test]
fn python_client_receives_over_tcp() {
    if python() {
        python_receives_from_our_sender(Place::tcp());
    }
}

#[test]
fn python_garbage_length_is_corrupted_over_unix() {
    if python() {
        python_garbage_is_corrupted(Place::unix());
    }
}

#[test]
fn python_garbage_length_is_corrupted_over_tcp() {
    if python() {
        python_garbage_is_corrupted(Place::tcp());
    }
}

#[test]
fn python_truncated_frame_is_corrupted() {
    if python() {
        python_truncated_frame(Place::unix());
        python_truncated_frame(Place::tcp());
    }
}
