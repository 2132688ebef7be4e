//! Cross-process tests of the message-queue transport. Child processes are this test binary run
//! again with `CHILD_ENV` set (see `child_main`), or python3 for interoperability. Every test uses
//! a unique queue name and a guard that removes the queue (`IPC_RMID`) and kills its children
//! when the test ends, however it ends.

use shmpipe::transport::msgq::{MsgqConfig, MTYPE_END, MTYPE_MESSAGE};
use shmpipe::transport::shm::key_for_name;
use shmpipe::{
    open_receiver, open_sender, Error, Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    Sender, TryRecvError, TrySendError,
};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SHMPIPE_MSGQ_TEST_CHILD";

/// A unique queue name; removes the queue at its key when dropped.
struct Queue {
    name: String,
    key: i32,
}

impl Queue {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        // Relaxed: only uniqueness matters.
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("it-{tag}-{}-{n}", std::process::id());
        let key = key_for_name(&name);
        Queue { name, key }
    }

    fn endpoint(&self) -> String {
        format!("msgq://{}", self.name)
    }

    fn cfg(&self) -> MsgqConfig {
        MsgqConfig::named(&self.name).unwrap()
    }

    fn msqid(&self) -> Option<i32> {
        // SAFETY: msgget only reads its scalar arguments.
        let id = unsafe { libc::msgget(self.key, 0) };
        (id >= 0).then_some(id)
    }

    /// The liveness semaphore set at the queue's key.
    fn semid(&self) -> Option<i32> {
        // SAFETY: semget only reads its scalar arguments.
        let id = unsafe { libc::semget(self.key, 0, 0) };
        (id >= 0).then_some(id)
    }

    /// (messages queued, last sender pid, last receiver pid).
    fn stat(&self) -> Option<(u64, i32, i32)> {
        let id = self.msqid()?;
        // SAFETY: msqid_ds is plain old data; all-zero is a valid value.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid out-pointer for IPC_STAT.
        let ret = unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) };
        (ret == 0).then_some((ds.msg_qnum as u64, ds.msg_lspid, ds.msg_lrpid))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(id) = self.msqid() {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
        // The liveness semaphore set at the same key.
        if let Some(set) = self.semid() {
            // SAFETY: IPC_RMID reads no argument beyond the scalars.
            unsafe { libc::semctl(set, 0, libc::IPC_RMID) };
        }
    }
}

/// A child process, killed and reaped when dropped.
struct Kid {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Kid {
    /// Runs `child_main` in a new process with `args`.
    fn spawn(args: &[&str]) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_ENV, args.join(" "));
        Self::start(cmd)
    }

    fn python(script: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).args(args);
        Self::start(cmd)
    }

    fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Kid { child, out }
    }

    /// The next line the child prints that is not test-harness noise.
    fn line(&mut self) -> String {
        loop {
            let mut l = String::new();
            if self.out.read_line(&mut l).unwrap() == 0 {
                return String::new();
            }
            if let Some(rest) = l.trim_end().strip_prefix("child:") {
                return rest.strip_prefix(' ').unwrap_or(rest).to_string();
            }
        }
    }

    fn expect(&mut self, what: &str) {
        let l = self.line();
        assert_eq!(l, what, "child said {l:?}");
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn kill(&mut self) {
        // SAFETY: kill only reads its scalar arguments; the pid is our unreaped child.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn wait_ok(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Message `i` of the stream test: its length depends on `i` (empty, small, around msgmax,
/// fragmented), its bytes on `i` and the position.
fn stream_len(i: u64, msgmax: usize) -> usize {
    if i.is_multiple_of(10_000) {
        0
    } else if i % 1000 == 500 {
        20_000 + (i / 1000 % 7) as usize * 9_000
    } else if i % 100 == 7 {
        msgmax - 1 + (i / 100 % 3) as usize
    } else {
        8 + (i.wrapping_mul(2_654_435_761) % 249) as usize
    }
}

fn stream_fill(i: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let seed = (i as u32).wrapping_mul(2_654_435_761);
    out.extend((0..len).map(|j| (seed >> 11) as u8 ^ (j as u8).wrapping_mul(13)));
    if len >= 8 {
        out[..8].copy_from_slice(&i.to_le_bytes());
    }
}

fn msgmax() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/msgmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}

fn say(what: &str) {
    println!("child: {what}");
}

/// Not a test on its own: the entry point of child processes (does nothing without `CHILD_ENV`).
#[test]
fn child_main() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<&str> = spec.split(' ').collect();
    let name = args[1];
    let cfg = MsgqConfig::named(name).unwrap().max_message(200_000);
    match args[0] {
        // Sends the checked stream of `n` messages, then closes cleanly.
        "stream" => {
            let n: u64 = args[2].parse().unwrap();
            let mut tx = cfg.open_sender().unwrap();
            let mut msg = Vec::new();
            for i in 0..n {
                stream_fill(i, stream_len(i, msgmax()), &mut msg);
                tx.send(&msg).unwrap();
            }
            drop(tx);
            say("done");
        }
        // Sends `n` messages and exits without closing (no end of stream, no cleanup).
        "send-crash" => {
            let n: u32 = args[2].parse().unwrap();
            let mut tx = cfg.open_sender().unwrap();
            for i in 0..n {
                tx.send(format!("m{i}").as_bytes()).unwrap();
            }
            say("sent");
            std::process::exit(0);
        }
        // Sends `n` messages and closes cleanly.
        "send-close" => {
            let n: u32 = args[2].parse().unwrap();
            let mut tx = cfg.open_sender().unwrap();
            for i in 0..n {
                tx.send(format!("m{i}").as_bytes()).unwrap();
            }
            drop(tx);
            say("closed");
        }
        // Sends one message, then waits to be killed.
        "send-hang" => {
            let mut tx = cfg.open_sender().unwrap();
            tx.send(b"hello").unwrap();
            say("ready");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Receives one message, then waits to be killed.
        "recv-hang" => {
            let mut rx = cfg.open_receiver().unwrap();
            let mut buf = Vec::new();
            rx.recv(&mut buf).unwrap();
            say(&String::from_utf8_lossy(&buf));
            std::thread::sleep(Duration::from_secs(120));
        }
        // Opens the receiving end, receives nothing, and waits to be killed.
        "recv-idle" => {
            let _rx = cfg.open_receiver().unwrap();
            say("ready");
            std::thread::sleep(Duration::from_secs(120));
        }
        // Receives one message and exits without closing (the queue stays).
        "recv-crash" => {
            let mut rx = cfg.open_receiver().unwrap();
            let mut buf = Vec::new();
            rx.recv(&mut buf).unwrap();
            say(&String::from_utf8_lossy(&buf));
            std::process::exit(0);
        }
        other => panic!("unknown child command {other}"),
    }
}

#[test]
fn a_child_streams_100k_messages_of_varied_sizes_in_order() {
    let q = Queue::new("stream");
    let n: u64 = 100_000;
    let mut rx = q.cfg().max_message(200_000).open_receiver().unwrap();
    let kid = Kid::spawn(&["stream", &q.name, &n.to_string()]);
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let mut fragmented = 0;
    let max = msgmax();
    let start = Instant::now();
    for i in 0..n {
        match rx.recv_timeout(&mut got, Duration::from_secs(30)) {
            Ok(()) => {}
            Err(e) => panic!("message {i}: {e}"),
        }
        stream_fill(i, stream_len(i, max), &mut want);
        assert_eq!(got.len(), want.len(), "length of message {i}");
        assert!(got == want, "bytes of message {i}");
        fragmented += usize::from(got.len() > max);
    }
    let took = start.elapsed();
    assert_eq!(
        rx.recv(&mut got),
        Err(RecvError::Disconnected),
        "clean close after the drain"
    );
    assert_eq!(rx.try_recv(&mut got), Err(TryRecvError::Disconnected));
    kid.wait_ok();
    assert!(fragmented >= 100, "{fragmented} fragmented messages");
    eprintln!("100k messages ({fragmented} fragmented) in {took:?}");
    drop(rx);
    assert!(q.msqid().is_none(), "the receiver removed the queue");
}

#[test]
fn sigkill_of_the_sender_disconnects_a_waiting_receiver() {
    let q = Queue::new("killtx");
    let mut rx = open_receiver(&q.endpoint()).unwrap();
    let mut kid = Kid::spawn(&["send-hang", &q.name]);
    kid.expect("ready");
    let mut buf = Vec::new();
    rx.recv(&mut buf).unwrap();
    assert_eq!(buf, b"hello");
    // A live, silent sender: timeouts are honoured.
    for ms in [10, 150] {
        let t = Duration::from_millis(ms);
        let start = Instant::now();
        assert_eq!(rx.recv_timeout(&mut buf, t), Err(RecvTimeoutError::Timeout));
        let took = start.elapsed();
        assert!(
            took >= t && took < t + Duration::from_millis(100),
            "{took:?} for {t:?}"
        );
    }
    let pid = kid.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        kid.kill();
        Instant::now()
    });
    let res = rx.recv_timeout(&mut buf, Duration::from_secs(10));
    let noticed = Instant::now();
    let killed = killer.join().unwrap();
    assert_eq!(
        res,
        Err(RecvTimeoutError::Disconnected),
        "sender pid {pid} was killed"
    );
    let lag = noticed.saturating_duration_since(killed);
    assert!(lag < Duration::from_secs(1), "noticed after {lag:?}");
    eprintln!("sender death noticed after {lag:?}");
}

#[test]
fn sigkill_of_the_receiver_disconnects_a_sender_blocked_on_a_full_queue() {
    let q = Queue::new("killrx");
    let mut tx = open_sender(&q.endpoint()).unwrap();
    let mut kid = Kid::spawn(&["recv-hang", &q.name]);
    tx.send(b"first").unwrap();
    kid.expect("first");
    let msg = [7u8; 1000];
    while tx.try_send(&msg).is_ok() {}
    assert_eq!(tx.try_send(&msg), Err(TrySendError::Full));
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        kid.kill();
        Instant::now()
    });
    let res = tx.send(&msg);
    let noticed = Instant::now();
    let killed = killer.join().unwrap();
    assert_eq!(res, Err(SendError::Disconnected));
    let lag = noticed.saturating_duration_since(killed);
    assert!(lag < Duration::from_secs(1), "noticed after {lag:?}");
    drop(tx);
    assert!(
        q.msqid().is_none(),
        "the sender removed the queue of its dead receiver"
    );
}

/// The values of the live-receivers and live-senders tokens (semaphores 0 and 1) of `set`.
fn live_tokens(set: i32) -> (i32, i32) {
    // SAFETY: GETVAL reads no argument beyond the scalars.
    let v = |n| unsafe { libc::semctl(set, n, libc::GETVAL) };
    (v(0), v(1))
}

#[test]
fn ends_inherited_by_a_forked_child_refuse_use_and_their_drop_changes_nothing() {
    let q = Queue::new("fork");
    let mut rx = q.cfg().open_receiver().unwrap();
    let mut tx = q.cfg().open_sender().unwrap();
    tx.send(b"before").unwrap();
    let (id, set) = (q.msqid().unwrap(), q.semid().expect("the queue's semaphore set"));
    assert_eq!(live_tokens(set), (1, 1));
    // SAFETY: the child only calls the ends' methods, which refuse before any syscall or lock,
    // drops the ends (which frees their buffers: glibc's malloc is usable in a forked child)
    // and leaves with _exit, running none of the parent's destructors.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut code = 0;
        let mut buf = Vec::new();
        let short = Duration::from_millis(10);
        if tx.try_send(b"child") != Err(TrySendError::Forked) {
            code |= 1;
        }
        if tx.send_timeout(b"child", short) != Err(SendTimeoutError::Forked) {
            code |= 2;
        }
        if rx.try_recv(&mut buf) != Err(TryRecvError::Forked) {
            code |= 4;
        }
        if rx.recv_timeout(&mut buf, short) != Err(RecvTimeoutError::Forked) {
            code |= 8;
        }
        // Dropped here they must not remove the queue (the receiver's drop would), queue an end
        // of stream (the sender's would) or give back tokens (the child holds none: it would
        // give back the parent's).
        drop(tx);
        drop(rx);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child died: status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    assert_eq!(
        code,
        0,
        "not Forked in the child: try_send {}, send_timeout {}, try_recv {}, recv_timeout {}",
        code & 1 != 0,
        code & 2 != 0,
        code & 4 != 0,
        code & 8 != 0
    );
    assert_eq!(q.msqid(), Some(id), "the child's drop removed the queue");
    assert_eq!(q.stat().unwrap().0, 1, "the child queued or took something");
    assert_eq!(q.semid(), Some(set), "the child's drop removed the semaphore set");
    assert_eq!(
        live_tokens(set),
        (1, 1),
        "the child gave back its parent's tokens"
    );
    // The parent's ends work on, end to end.
    let mut buf = Vec::new();
    rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
    assert_eq!(buf, b"before");
    tx.send(b"after").unwrap();
    rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
    assert_eq!(buf, b"after");
    drop(tx);
    assert_eq!(live_tokens(set), (1, 0), "the sender gave its token back");
    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
    assert_eq!(rx.peer(), Some(shmpipe::Peer::Closed));
    drop(rx);
    assert_eq!(q.msqid(), None, "the receiver removed its queue");
    assert_eq!(q.semid(), None, "and its semaphore set");
}

#[test]
fn sigkill_of_a_receiver_that_never_received_disconnects_a_sender_on_a_full_queue() {
    // The kernel records no pid for a receiver until its first msgrcv: only its token tells.
    let q = Queue::new("killidle");
    let mut tx = open_sender(&q.endpoint()).unwrap();
    let mut kid = Kid::spawn(&["recv-idle", &q.name]);
    kid.expect("ready");
    let msg = [7u8; 1000];
    while tx.try_send(&msg).is_ok() {}
    assert_eq!(q.stat().unwrap().2, 0, "no receiver pid recorded");
    // Alive: a full queue is back-pressure.
    assert!(matches!(
        tx.send_timeout(&msg, Duration::from_millis(150)),
        Err(SendTimeoutError::Timeout)
    ));
    kid.kill();
    let killed = Instant::now();
    assert_eq!(tx.send(&msg), Err(SendError::Disconnected));
    let lag = killed.elapsed();
    assert!(lag < Duration::from_secs(1), "noticed after {lag:?}");
    drop(tx);
    assert!(
        q.msqid().is_none() && q.semid().is_none(),
        "the sender removed both"
    );
}

#[test]
fn a_second_receiver_is_refused_while_the_first_lives() {
    let q = Queue::new("tworx");
    let mut tx = q.cfg().open_sender().unwrap();
    let kid = Kid::spawn(&["recv-hang", &q.name]);
    tx.send(b"one").unwrap();
    let mut kid = kid;
    kid.expect("one");
    match q.cfg().open_receiver() {
        Err(Error::InUse(m)) => assert!(m.contains(&kid.pid().to_string()), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn messages_of_a_crashed_sender_are_drained_by_the_first_receiver() {
    let q = Queue::new("crashtx");
    Kid::spawn(&["send-crash", &q.name, "3"]).wait_ok();
    let mut rx = q.cfg().open_receiver().unwrap();
    let mut buf = Vec::new();
    for i in 0..3 {
        rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(buf, format!("m{i}").as_bytes());
    }
    // No end of stream, but the sender is dead.
    let start = Instant::now();
    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[test]
fn a_new_sender_recycles_the_messages_of_a_crashed_sender_nobody_read() {
    let q = Queue::new("crashtx2");
    Kid::spawn(&["send-crash", &q.name, "3"]).wait_ok();
    let old = q.msqid().unwrap();
    let mut tx = q.cfg().open_sender().unwrap();
    assert_ne!(tx.msqid(), old, "a stale queue is recreated");
    assert_eq!(q.stat().unwrap().0, 0);
    tx.send(b"new").unwrap();
}

/// Leaves a queue as a run that crashed on both sides would: messages queued, last sender and
/// last receiver dead, no end of stream.
fn crashed_run(q: &Queue) {
    Kid::spawn(&["send-crash", &q.name, "3"]).wait_ok();
    let mut kid = Kid::spawn(&["recv-crash", &q.name]);
    kid.expect("m0");
    kid.wait_ok();
    let (qnum, lspid, lrpid) = q.stat().unwrap();
    assert_eq!(qnum, 2);
    assert!(lspid > 0 && lrpid > 0);
}

#[test]
fn a_queue_left_by_a_crashed_run_is_recreated_for_either_end() {
    let q = Queue::new("stale");
    crashed_run(&q);
    let old = q.msqid().unwrap();
    let mut rx = q.cfg().open_receiver().unwrap();
    assert_ne!(rx.msqid(), old);
    assert_eq!(rx.try_recv(&mut Vec::new()), Err(TryRecvError::Empty));
    drop(rx);

    crashed_run(&q);
    let old = q.msqid().unwrap();
    let tx = q.cfg().open_sender().unwrap();
    assert_ne!(tx.msqid(), old);
}

#[test]
fn a_finished_stream_after_a_crashed_receiver_is_kept_for_the_next_receiver() {
    let q = Queue::new("finished");
    // A receiver crashes after draining an earlier stream...
    Kid::spawn(&["send-crash", &q.name, "1"]).wait_ok();
    let mut kid = Kid::spawn(&["recv-crash", &q.name]);
    kid.expect("m0");
    kid.wait_ok();
    // ...then a new sender streams and closes cleanly before any receiver comes.
    let mut kid = Kid::spawn(&["send-close", &q.name, "3"]);
    kid.expect("closed");
    kid.wait_ok();
    // Both recorded pids are dead, but an end of stream is pending: not stale.
    match q.cfg().open_sender() {
        Err(Error::InUse(m)) => assert!(m.contains("finished"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut rx = q.cfg().open_receiver().unwrap();
    let mut buf = Vec::new();
    for i in 0..3 {
        rx.recv(&mut buf).unwrap();
        assert_eq!(buf, format!("m{i}").as_bytes());
    }
    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
}

#[test]
fn a_sender_already_dead_at_open_is_not_taken_for_this_runs_sender() {
    let q = Queue::new("deadatopen");
    // An empty queue whose last sender and receiver are dead.
    Kid::spawn(&["send-crash", &q.name, "1"]).wait_ok();
    let mut kid = Kid::spawn(&["recv-crash", &q.name]);
    kid.expect("m0");
    kid.wait_ok();
    assert_eq!(q.stat().unwrap().0, 0);
    let mut rx = q.cfg().open_receiver().unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_millis(200)),
        Err(RecvTimeoutError::Timeout),
        "waits for a sender instead of reporting the old one's death"
    );
    let mut kid = Kid::spawn(&["send-close", &q.name, "2"]);
    for i in 0..2 {
        rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        assert_eq!(buf, format!("m{i}").as_bytes());
    }
    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
    kid.expect("closed");
}

#[test]
fn oversize_is_too_large_and_sends_nothing() {
    let q = Queue::new("oversize");
    let mut tx = open_sender(&format!("{}?max_message=100", q.endpoint())).unwrap();
    assert_eq!(tx.max_message_size(), 100);
    match tx.send(&[1; 101]) {
        Err(SendError::TooLarge(t)) => assert_eq!((t.len, t.max), (101, 100)),
        other => panic!("{other:?}"),
    }
    assert_eq!(q.stat().unwrap().0, 0);
    tx.send(&[1; 100]).unwrap();
    // A receiver with a smaller maximum reports the longer message and drops it.
    let mut rx = open_receiver(&format!("{}?max_message=50", q.endpoint())).unwrap();
    tx.send(b"short").unwrap();
    let mut buf = Vec::new();
    assert!(matches!(rx.recv(&mut buf), Err(RecvError::Corrupted(_))));
    rx.recv(&mut buf).unwrap();
    assert_eq!(buf, b"short");
}

/// python3 with ctypes only: talks to the queue with raw msgsnd/msgrcv, as any SysV client would.
const PY_CTYPES: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.msgget.argtypes = [ctypes.c_int, ctypes.c_int]
libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int]
libc.msgrcv.restype = ctypes.c_ssize_t
CAP = 1 << 20
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * CAP)]
m = Msg()
q = libc.msgget(int(sys.argv[2]), 0)
if q < 0:
    raise OSError(ctypes.get_errno(), "msgget")
def send(t, data):
    m.mtype = t
    ctypes.memmove(ctypes.addressof(m) + Msg.mtext.offset, data, len(data))
    if libc.msgsnd(q, ctypes.byref(m), len(data), 0) != 0:
        raise OSError(ctypes.get_errno(), "msgsnd")
def recv():
    n = libc.msgrcv(q, ctypes.byref(m), CAP, 0, 0)
    if n < 0:
        raise OSError(ctypes.get_errno(), "msgrcv")
    return m.mtype, ctypes.string_at(ctypes.addressof(m) + Msg.mtext.offset, n)
if sys.argv[1] == "send":
    for i in range(100):
        send(1, b"py-%d" % i)
    big = bytes(range(256)) * 100
    for at in range(0, len(big), 8000):
        send(3 if at + 8000 < len(big) else 4, big[at:at + 8000])
    send(1, b"")
    send(2, b"")
else:
    msgs, partial = [], b""
    while True:
        t, data = recv()
        if t == 1:
            msgs.append(data)
        elif t == 3:
            partial += data
        elif t == 4:
            msgs.append(partial + data)
            partial = b""
        elif t == 2:
            break
        else:
            raise SystemExit("unknown type %d" % t)
    for d in msgs:
        print("child: " + d.hex())
    print("child: end")
"#;

fn python_ok() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import ctypes"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3 with ctypes is not available");
    }
    ok
}

#[test]
fn a_plain_sysv_client_in_python_sends_to_us() {
    if !python_ok() {
        return;
    }
    let q = Queue::new("pysend");
    let mut rx = q.cfg().open_receiver().unwrap();
    let kid = Kid::python(PY_CTYPES, &["send", &q.key.to_string()]);
    let mut buf = Vec::new();
    for i in 0..100 {
        rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        assert_eq!(buf, format!("py-{i}").as_bytes());
    }
    rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
    let big: Vec<u8> = (0..25_600).map(|i| i as u8).collect();
    assert!(buf == big, "reassembled fragments");
    rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
    assert!(buf.is_empty());
    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
    kid.wait_ok();
}

#[test]
fn a_plain_sysv_client_in_python_receives_from_us() {
    if !python_ok() {
        return;
    }
    let q = Queue::new("pyrecv");
    let mut tx = q.cfg().max_message(100_000).open_sender().unwrap();
    let mut kid = Kid::python(PY_CTYPES, &["recv", &q.key.to_string()]);
    let mut msgs: Vec<Vec<u8>> = (0..200).map(|i| format!("rust-{i}").into_bytes()).collect();
    msgs.push(Vec::new());
    msgs.push((0..70_000).map(|i| (i % 251) as u8).collect());
    msgs.push(b"last".to_vec());
    for m in &msgs {
        tx.send(m).unwrap();
    }
    drop(tx);
    for (i, m) in msgs.iter().enumerate() {
        let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
        assert!(kid.line() == hex, "message {i} as python received it");
    }
    kid.expect("end");
    kid.wait_ok();
}

#[test]
fn sysv_ipc_interoperates_when_installed() {
    let probe = Command::new("python3").args(["-c", "import sysv_ipc"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            assert!(
                std::env::var_os("SHMPIPE_REQUIRE_PYTHON").is_none(),
                "sysv_ipc is required (SHMPIPE_REQUIRE_PYTHON is set): {why}"
            );
            eprintln!(
                "skipped: python3 cannot import sysv_ipc ({})",
                why.lines().last().unwrap_or("")
            );
            return;
        }
        Err(e) => {
            assert!(
                std::env::var_os("SHMPIPE_REQUIRE_PYTHON").is_none(),
                "python3 is required (SHMPIPE_REQUIRE_PYTHON is set): {e}"
            );
            eprintln!("skipped: python3 not runnable ({e})");
            return;
        }
    }
    let q = Queue::new("sysvipc");
    let mut rx = q.cfg().open_receiver().unwrap();
    let mut tx = q.cfg().open_sender().unwrap();
    tx.send(b"from rust").unwrap();
    let script = format!(
        r#"
import sysv_ipc
mq = sysv_ipc.MessageQueue({key})
msg, t = mq.receive(type=0)
assert (msg, t) == (b"from rust", {one}), (msg, t)
mq.send(b"from python", type={one})
mq.send(b"", type={end})
print("child: ok")
"#,
        key = q.key,
        one = MTYPE_MESSAGE,
        end = MTYPE_END
    );
    let mut kid = Kid::python(&script, &[]);
    kid.expect("ok");
    kid.wait_ok();
    let mut buf = Vec::new();
    rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
    assert_eq!(buf, b"from python");
    assert_eq!(rx.recv(&mut buf), Err(RecvError::Disconnected));
}
