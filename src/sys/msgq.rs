//! System V message queues: `msgget`, `msgsnd`, `msgrcv` and `msgctl` (`IPC_STAT`, `IPC_RMID`).
//!
//! A message is `struct msgbuf { long mtype; char mtext[] }`. [`MsgBuf`] is that layout in a
//! reusable buffer of `c_long` words (so `mtype` is aligned), grown only when a longer text is
//! asked for: sending or receiving allocates nothing once the buffer has its size.
//!
//! `msgsnd` and `msgrcv` cannot time out, and the kernel never restarts them after a signal
//! handler runs (they fail with `EINTR` even under `SA_RESTART`). The wrappers report `EINTR` as
//! [`SendFail::Interrupted`] / [`RecvFail::Interrupted`] and leave the retry to the caller, which
//! knows its deadline.

use super::cvt;
use std::io;
use std::mem::size_of;

/// `msgrcv` flag: copy the message at index `msgtyp` without removing it (Linux 3.8+, needs
/// `CONFIG_CHECKPOINT_RESTORE`; `ENOSYS` without it). Not exported by libc for every target.
const MSG_COPY: libc::c_int = 0o40000;

/// Bytes of the `mtype` field that precedes the text.
const TYPE_SIZE: usize = size_of::<libc::c_long>();

/// A queue identifier (`msqid`), valid until the queue is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsqId(pub(crate) i32);

/// What `IPC_STAT` reports about a queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MsqStat {
    /// Messages in the queue.
    pub(crate) qnum: u64,
    /// The queue's capacity in bytes of text (`msg_qbytes`, `kernel.msgmnb` when created).
    pub(crate) qbytes: u64,
    /// Pid of the last successful `msgsnd` (0: none yet).
    pub(crate) lspid: u32,
    /// Pid of the last successful `msgrcv` (0: none yet).
    pub(crate) lrpid: u32,
    pub(crate) uid: u32,
    pub(crate) cuid: u32,
    /// Permission bits.
    pub(crate) mode: u32,
}

/// Why a `msgsnd` did not queue the message.
#[derive(Debug)]
pub(crate) enum SendFail {
    /// `EAGAIN`: no room, and `IPC_NOWAIT` was given.
    WouldBlock,
    /// `EIDRM`: the queue was removed.
    Removed,
    /// `EINVAL`: no queue with this id (removed before the call), or the text is longer than
    /// `kernel.msgmax`.
    Invalid,
    /// `EINTR`: a signal handler ran while waiting for room.
    Interrupted,
    /// Anything else (`EACCES`, `ENOMEM`, ...).
    Os(io::Error),
}

/// Why a `msgrcv` did not deliver a message.
#[derive(Debug)]
pub(crate) enum RecvFail {
    /// `ENOMSG`: nothing of the wanted type, and `IPC_NOWAIT` was given.
    NoMessage,
    /// `E2BIG`: the next message's text is longer than the buffer. It stays in the queue.
    TooBig,
    /// `EIDRM`: the queue was removed.
    Removed,
    /// `EINVAL`: no queue with this id (removed before the call).
    Invalid,
    /// `EINTR`: a signal handler ran while waiting.
    Interrupted,
    /// `ENOSYS`: `MSG_COPY` is not supported by this kernel.
    Unsupported,
    /// Anything else.
    Os(io::Error),
}

/// A received message: its type and the length of its text (in [`MsgBuf::text`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) mtype: i64,
    pub(crate) len: usize,
}

/// A reusable `struct msgbuf`: one `c_long` for `mtype`, then the text.
#[derive(Debug)]
pub(crate) struct MsgBuf {
    words: Vec<libc::c_long>,
}

impl MsgBuf {
    /// A buffer that holds texts of up to `text_capacity` bytes without growing.
    pub(crate) fn with_text_capacity(text_capacity: usize) -> Self {
        let mut buf = MsgBuf { words: vec![0; 1] };
        buf.reserve_text(text_capacity);
        buf
    }

    /// Longest text the buffer holds now.
    pub(crate) fn text_capacity(&self) -> usize {
        (self.words.len() - 1) * TYPE_SIZE
    }

    /// Grows the buffer (never shrinks it) to hold a text of `len` bytes.
    pub(crate) fn reserve_text(&mut self, len: usize) {
        let words = 1 + len.div_ceil(TYPE_SIZE);
        if words > self.words.len() {
            self.words.resize(words, 0);
        }
    }

    /// The whole text area.
    fn text_area(&mut self) -> &mut [u8] {
        let cap = self.text_capacity();
        // SAFETY: `words` holds 1 + cap / TYPE_SIZE initialised words; the text area starts one
        // word in and is `cap` bytes long, inside the allocation. u8 has no alignment or validity
        // requirement, and the slice borrows `self` mutably, so nothing else aliases it.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().add(1).cast::<u8>(), cap) }
    }

    /// The first `len` bytes of the text (as left by the last receive). `len` is clamped to the
    /// capacity.
    pub(crate) fn text(&self, len: usize) -> &[u8] {
        let len = len.min(self.text_capacity());
        // SAFETY: as in `text_area`, for a shared borrow and `len <= cap` bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().add(1).cast::<u8>(), len) }
    }
}

/// Creates a new queue at `key`; fails with `EEXIST` if one is there already.
pub(crate) fn create_exclusive(key: i32, mode: u32) -> io::Result<MsqId> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as libc::c_int;
    // SAFETY: msgget only reads its scalar arguments.
    cvt(unsafe { libc::msgget(key, flags) }).map(MsqId)
}

/// Creates a queue nobody else can find by key (`IPC_PRIVATE`); for tests.
#[cfg(test)]
pub(crate) fn create_private(mode: u32) -> io::Result<MsqId> {
    // SAFETY: msgget only reads its scalar arguments.
    cvt(unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | (mode & 0o777) as libc::c_int) })
        .map(MsqId)
}

/// Finds the existing queue at `key` (`ENOENT` if there is none).
pub(crate) fn lookup(key: i32) -> io::Result<MsqId> {
    // SAFETY: msgget only reads its scalar arguments.
    cvt(unsafe { libc::msgget(key, 0) }).map(MsqId)
}

/// `IPC_STAT`.
pub(crate) fn stat(id: MsqId) -> io::Result<MsqStat> {
    // SAFETY: msqid_ds is plain old data; all-zero is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid out-pointer of the right type for IPC_STAT.
    cvt(unsafe { libc::msgctl(id.0, libc::IPC_STAT, &mut ds) })?;
    Ok(MsqStat {
        qnum: ds.msg_qnum as u64,
        qbytes: ds.msg_qbytes as u64,
        lspid: ds.msg_lspid.max(0) as u32,
        lrpid: ds.msg_lrpid.max(0) as u32,
        uid: ds.msg_perm.uid,
        cuid: ds.msg_perm.cuid,
        mode: ds.msg_perm.mode as u32 & 0o777,
    })
}

/// `IPC_RMID`: the queue and its messages are gone at once; callers blocked in it get `EIDRM`.
pub(crate) fn remove(id: MsqId) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer.
    cvt(unsafe { libc::msgctl(id.0, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// Queues `text` with type `mtype` (>= 1), through `buf`. With `nowait`, a full queue is
/// [`SendFail::WouldBlock`]; without, the call sleeps in the kernel until there is room.
pub(crate) fn send(
    id: MsqId,
    buf: &mut MsgBuf,
    mtype: libc::c_long,
    text: &[u8],
    nowait: bool,
) -> Result<(), SendFail> {
    buf.reserve_text(text.len());
    buf.words[0] = mtype;
    buf.text_area()[..text.len()].copy_from_slice(text);
    let flags = if nowait { libc::IPC_NOWAIT } else { 0 };
    // SAFETY: `buf.words` is a live, aligned `long mtype` followed by at least `text.len()`
    // bytes of text; msgsnd only reads it.
    let ret = unsafe { libc::msgsnd(id.0, buf.words.as_ptr().cast(), text.len(), flags) };
    if ret == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EAGAIN) => SendFail::WouldBlock,
        Some(libc::EIDRM) => SendFail::Removed,
        Some(libc::EINVAL) => SendFail::Invalid,
        Some(libc::EINTR) => SendFail::Interrupted,
        _ => SendFail::Os(e),
    })
}

/// Takes the next message whose type matches `msgtyp` (0: any, FIFO; > 0: that type; < 0: the
/// lowest type <= |msgtyp|) into `buf`. With `nowait`, an empty queue is
/// [`RecvFail::NoMessage`]; without, the call sleeps in the kernel until a message comes.
pub(crate) fn recv(
    id: MsqId,
    buf: &mut MsgBuf,
    msgtyp: libc::c_long,
    nowait: bool,
) -> Result<Received, RecvFail> {
    let flags = if nowait { libc::IPC_NOWAIT } else { 0 };
    raw_recv(id, buf, msgtyp, flags)
}

/// Takes the next message of type `msgtyp` like [`recv`] with `IPC_NOWAIT`, but cuts a text
/// longer than the buffer short (`MSG_NOERROR`) instead of failing: for dropping a message too
/// long to accept. The returned length is the truncated one.
pub(crate) fn recv_truncated(
    id: MsqId,
    buf: &mut MsgBuf,
    msgtyp: libc::c_long,
) -> Result<Received, RecvFail> {
    raw_recv(id, buf, msgtyp, libc::IPC_NOWAIT | libc::MSG_NOERROR)
}

/// Copies the message at `index` (0 = oldest) into `buf` without removing it (`MSG_COPY`).
pub(crate) fn peek(id: MsqId, buf: &mut MsgBuf, index: u64) -> Result<Received, RecvFail> {
    let index = libc::c_long::try_from(index).map_err(|_| RecvFail::NoMessage)?;
    raw_recv(id, buf, index, MSG_COPY | libc::IPC_NOWAIT)
}

fn raw_recv(
    id: MsqId,
    buf: &mut MsgBuf,
    msgtyp: libc::c_long,
    flags: libc::c_int,
) -> Result<Received, RecvFail> {
    let cap = buf.text_capacity();
    // SAFETY: `buf.words` is a live, aligned buffer of one `long` plus `cap` bytes, and msgrcv
    // writes at most `cap` bytes of text after the type.
    let ret = unsafe { libc::msgrcv(id.0, buf.words.as_mut_ptr().cast(), cap, msgtyp, flags) };
    if ret >= 0 {
        // `c_long` is i64 here, i32 on 32-bit targets: the conversion is lossless on both.
        #[allow(clippy::useless_conversion)]
        let mtype = i64::from(buf.words[0]);
        return Ok(Received {
            mtype,
            // The kernel never copies more than `cap` bytes; clamp anyway rather than trust it.
            len: (ret as usize).min(cap),
        });
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::ENOMSG) => RecvFail::NoMessage,
        Some(libc::E2BIG) => RecvFail::TooBig,
        Some(libc::EIDRM) => RecvFail::Removed,
        Some(libc::EINVAL) => RecvFail::Invalid,
        Some(libc::EINTR) => RecvFail::Interrupted,
        Some(libc::ENOSYS) => RecvFail::Unsupported,
        _ => RecvFail::Os(e),
    })
}

/// The kernel's message-queue limits, from `/proc/sys/kernel/` (`None`: unreadable).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// `kernel.msgmax`: longest text one `msgsnd` may carry.
    pub(crate) msgmax: Option<u64>,
    /// `kernel.msgmnb`: the byte capacity (`msg_qbytes`) a new queue gets.
    pub(crate) msgmnb: Option<u64>,
    /// `kernel.msgmni`: how many queues may exist.
    pub(crate) msgmni: Option<u64>,
}

impl Limits {
    /// Reads the three limits now (they can be changed at run time with sysctl).
    pub(crate) fn read() -> Self {
        Limits {
            msgmax: super::shm::kernel_limit("msgmax"),
            msgmnb: super::shm::kernel_limit("msgmnb"),
            msgmni: super::shm::kernel_limit("msgmni"),
        }
    }
}

/// A limit for an error message: its value, or "unknown".
pub(crate) fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private queue, removed when dropped (even when the test fails).
    struct Private(MsqId);

    impl Private {
        fn new() -> Self {
            Private(create_private(0o600).unwrap())
        }
    }

    impl Drop for Private {
        fn drop(&mut self) {
            let _ = remove(self.0);
        }
    }

    #[test]
    fn messages_keep_their_type_and_order() {
        let q = Private::new();
        let mut buf = MsgBuf::with_text_capacity(64);
        send(q.0, &mut buf, 1, b"one", true).unwrap();
        send(q.0, &mut buf, 3, b"", true).unwrap();
        send(q.0, &mut buf, 1, b"three", true).unwrap();
        // By type first: the type-3 message jumps the queue.
        let r = recv(q.0, &mut buf, 3, true).unwrap();
        assert_eq!((r.mtype, r.len), (3, 0));
        // Then FIFO over any type.
        let r = recv(q.0, &mut buf, 0, true).unwrap();
        assert_eq!((r.mtype, buf.text(r.len)), (1, &b"one"[..]));
        let r = recv(q.0, &mut buf, 0, true).unwrap();
        assert_eq!((r.mtype, buf.text(r.len)), (1, &b"three"[..]));
        assert!(matches!(recv(q.0, &mut buf, 0, true), Err(RecvFail::NoMessage)));
    }

    #[test]
    fn a_short_buffer_is_e2big_and_leaves_the_message() {
        let q = Private::new();
        let mut buf = MsgBuf::with_text_capacity(100);
        send(q.0, &mut buf, 1, &[7; 100], true).unwrap();
        let mut small = MsgBuf::with_text_capacity(8);
        assert_eq!(small.text_capacity(), 8);
        assert!(matches!(recv(q.0, &mut small, 0, true), Err(RecvFail::TooBig)));
        small.reserve_text(100);
        let r = recv(q.0, &mut small, 0, true).unwrap();
        assert_eq!(small.text(r.len), &[7; 100][..]);
        // MSG_NOERROR takes a message too long for the buffer, cut short.
        send(q.0, &mut buf, 5, &[9; 100], true).unwrap();
        let mut tiny = MsgBuf::with_text_capacity(8);
        let r = recv_truncated(q.0, &mut tiny, 0).unwrap();
        assert_eq!((r.mtype, tiny.text(r.len)), (5, &[9; 8][..]));
        assert_eq!(stat(q.0).unwrap().qnum, 0);
    }

    #[test]
    fn stat_reports_counts_pids_and_mode() {
        let q = Private::new();
        let mut buf = MsgBuf::with_text_capacity(16);
        let st = stat(q.0).unwrap();
        assert_eq!((st.qnum, st.lspid, st.lrpid), (0, 0, 0));
        assert_eq!(st.mode, 0o600);
        assert_eq!(st.uid, crate::sys::proc::euid());
        send(q.0, &mut buf, 1, b"12345", true).unwrap();
        let me = std::process::id();
        let st = stat(q.0).unwrap();
        assert_eq!((st.qnum, st.lspid, st.lrpid), (1, me, 0));
        if let Some(mnb) = Limits::read().msgmnb {
            assert_eq!(st.qbytes, mnb);
        }
        recv(q.0, &mut buf, 0, true).unwrap();
        assert_eq!(stat(q.0).unwrap().lrpid, me);
    }

    #[test]
    fn a_full_queue_would_block() {
        let q = Private::new();
        let qbytes = stat(q.0).unwrap().qbytes as usize;
        let chunk = Limits::read().msgmax.unwrap_or(8192) as usize;
        let chunk = chunk.min(qbytes);
        let mut buf = MsgBuf::with_text_capacity(chunk);
        let text = vec![1; chunk];
        let mut sent = 0;
        loop {
            match send(q.0, &mut buf, 1, &text, true) {
                Ok(()) => sent += chunk,
                Err(SendFail::WouldBlock) => break,
                Err(e) => panic!("{e:?}"),
            }
            assert!(sent <= qbytes, "queue took more than msg_qbytes");
        }
        assert!(sent + chunk > qbytes);
    }

    #[test]
    fn peek_copies_without_removing() {
        let q = Private::new();
        let mut buf = MsgBuf::with_text_capacity(16);
        send(q.0, &mut buf, 1, b"a", true).unwrap();
        send(q.0, &mut buf, 2, b"", true).unwrap();
        match peek(q.0, &mut buf, 1) {
            Ok(r) => {
                assert_eq!((r.mtype, r.len), (2, 0));
                assert_eq!(stat(q.0).unwrap().qnum, 2);
                assert!(matches!(peek(q.0, &mut buf, 2), Err(RecvFail::NoMessage)));
            }
            Err(RecvFail::Unsupported) => eprintln!("MSG_COPY unsupported by this kernel"),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_removed_queue_is_reported_as_such() {
        let q = create_private(0o600).unwrap();
        remove(q).unwrap();
        let mut buf = MsgBuf::with_text_capacity(16);
        assert!(matches!(
            send(q, &mut buf, 1, b"x", true),
            Err(SendFail::Invalid | SendFail::Removed)
        ));
        assert!(matches!(
            recv(q, &mut buf, 0, true),
            Err(RecvFail::Invalid | RecvFail::Removed)
        ));
        assert!(stat(q).is_err());
    }

    #[test]
    fn removal_wakes_a_blocked_receiver_with_eidrm() {
        let q = create_private(0o600).unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions and cannot fail.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let mut buf = MsgBuf::with_text_capacity(16);
            recv(q, &mut buf, 0, false)
        });
        // Wait until the thread sleeps (in msgrcv), so the removal hits a blocked call.
        let tid = tid_rx.recv().unwrap();
        let stat_path = format!("/proc/self/task/{tid}/stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let s = std::fs::read_to_string(&stat_path).unwrap_or_default();
            let state = s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next());
            if state == Some("S") || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        remove(q).unwrap();
        assert!(matches!(t.join().unwrap(), Err(RecvFail::Removed)));
    }

    #[test]
    fn limits_are_readable() {
        let l = Limits::read();
        assert!(l.msgmax.unwrap() > 0);
        assert!(l.msgmnb.unwrap() > 0);
        assert!(l.msgmni.unwrap() > 0);
        assert_eq!(show(None), "unknown");
    }
}
