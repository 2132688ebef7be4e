//! Process identity and liveness, so a peer's death can be told from a peer that is merely slow.
//!
//! A pid alone is not an identity: pids are recycled. A process is identified by its pid together
//! with its start time (field 22 of `/proc/PID/stat`, in clock ticks since boot), which is what
//! PostgreSQL and systemd also rely on. A zombie (killed but not yet reaped) counts as dead: it can
//! never touch the ring again. But `/proc/PID/stat` describes the thread-group leader only, and a
//! leader whose thread exited (`pthread_exit` in `main`, or the `exit` syscall) shows as a zombie
//! while the process's other threads run on: a process counts as dead only when none of its
//! threads is alive (`/proc/PID/task`).

use std::fs;

/// A process's identity: pid and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessId {
    pub(crate) pid: u32,
    pub(crate) start_time: u64,
}

/// What `/proc/PID/stat` says of a process.
struct ProcStat {
    state: u8,
    start_time: u64,
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may itself contain spaces or ')', so
    // parse from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    // `rest` starts at field 3 (state); start time is field 22, i.e. 19 further on.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Whether a thread in this state has exited: a zombie (`Z`) or dead (`X`, being reaped).
fn exited(state: u8) -> bool {
    state == b'Z' || state == b'X'
}

/// Whether process `pid`, whose `/proc/PID/stat` (its leader's) says `stat`, has a live thread:
/// the leader itself, or, when the leader has exited but the process has not, another thread.
/// The task list is read only in the rare case of an exited leader. Unreadable: the leader's word.
fn has_live_thread(pid: u32, stat: &ProcStat) -> bool {
    if !exited(stat.state) {
        return true;
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let name = task.file_name();
        name.to_str()
            .and_then(|tid| tid.parse::<u32>().ok())
            .is_some_and(|tid| tid != pid)
            && fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|text| parse_stat(&text))
                .is_some_and(|s| !exited(s.state))
    })
}

/// This process's identity (its start time read from `/proc` once per pid: a forked child
/// reads its own).
pub(crate) fn current() -> ProcessId {
    use std::sync::atomic::{
        AtomicU32, AtomicU64,
        Ordering::{Acquire, Relaxed, Release},
    };
    static PID: AtomicU32 = AtomicU32::new(0);
    static START: AtomicU64 = AtomicU64::new(0);
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() } as u32;
    // Acquire: pairs with the Release below; the start time stored before it is ours.
    if PID.load(Acquire) == pid {
        // Relaxed: ordered by the Acquire above.
        return ProcessId {
            pid,
            start_time: START.load(Relaxed),
        };
    }
    let start_time = read_stat(pid).map_or(0, |s| s.start_time);
    if start_time != 0 {
        // Relaxed, then Release: whoever sees our pid sees this start time. Threads racing here
        // store the same values (a forked child has one thread until it makes more).
        START.store(start_time, Relaxed);
        PID.store(pid, Release);
    }
    ProcessId { pid, start_time }
}

/// The identity of the live process `pid` now (`None`: no such process, a zombie whose threads
/// have all exited, or `/proc` unreadable). For pids learnt from the kernel without a start time (`msg_lspid`): identify once,
/// then `is_alive` tells the process from a later one that reuses its pid.
pub(crate) fn identify(pid: u32) -> Option<ProcessId> {
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    let stat = read_stat(pid)?;
    has_live_thread(pid, &stat).then_some(ProcessId {
        pid,
        start_time: stat.start_time,
    })
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the process `id` still exists and is not a zombie (a live thread besides an exited
/// leader counts as alive: see the module docs).
///
/// `start_time == 0` means "unknown" and trusts the pid alone. When `/proc` cannot be read (a
/// hidepid mount) the answer falls back to `kill(pid, 0)`, which errs towards "alive": a false
/// "alive" costs a timeout, a false "dead" would lose messages.
pub(crate) fn is_alive(id: ProcessId) -> bool {
    if id.pid == 0 || id.pid > i32::MAX as u32 {
        return false;
    }
    // Ourselves (members of an in-process ring, threads of this process): no syscall.
    let me = current();
    if id.pid == me.pid && me.start_time != 0 {
        return id.start_time == 0 || id.start_time == me.start_time;
    }
    // SAFETY: signal 0 performs only the existence and permission check; it sends nothing.
    let ret = unsafe { libc::kill(id.pid as libc::pid_t, 0) };
    if ret == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match read_stat(id.pid) {
        Some(stat) => {
            (id.start_time == 0 || stat.start_time == id.start_time) && has_live_thread(id.pid, &stat)
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_has_a_start_time() {
        let me = current();
        assert!(me.start_time > 0);
        assert!(is_alive(me));
    }

    #[test]
    fn identify_finds_live_processes_only() {
        assert_eq!(identify(current().pid), Some(current()));
        assert_eq!(identify(0), None);
        assert_eq!(identify(u32::MAX), None);
    }

    #[test]
    fn a_recycled_pid_is_not_the_same_process() {
        let me = current();
        assert!(!is_alive(ProcessId {
            pid: me.pid,
            start_time: me.start_time + 1
        }));
    }

    #[test]
    fn a_reaped_child_and_a_zombie_are_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId {
            pid: child.id(),
            start_time: 0,
        };
        // Wait until it has exited but do not reap it: a zombie must count as dead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read_stat(id.pid).map(|s| s.state) != Some(b'Z') && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!is_alive(id));
        child.wait().unwrap();
        assert!(!is_alive(id));
    }

    /// Set in the child of `a_process_whose_main_thread_exited_lives_while_another_thread_runs`.
    const MAIN_EXITS_ENV: &str = "SHMPIPE_TEST_MAIN_THREAD_EXITS";

    /// Not a test of its own: run as a child process (this test binary, with `MAIN_EXITS_ENV`) it
    /// ends its main thread and keeps another thread running until killed (at most a minute).
    #[test]
    fn main_thread_exits_child() {
        if std::env::var_os(MAIN_EXITS_ENV).is_none() {
            return;
        }
        let keeper = std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(60));
            std::process::exit(3);
        });
        /// Ends the calling thread only (not the process): the raw `exit` syscall, which is
        /// async-signal-safe.
        extern "C" fn exit_this_thread(_signal: libc::c_int) {
            // SAFETY: SYS_exit takes a status and ends the calling thread; nothing of ours is
            // left half done on it (it is the harness's main thread, waiting for results).
            unsafe { libc::syscall(libc::SYS_exit, 0) };
        }
        // SAFETY: getpid and gettid have no preconditions.
        let (pid, tid) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as libc::pid_t) };
        if pid == tid {
            // The harness runs this test on the main thread: end it here.
            exit_this_thread(0);
        }
        // On a harness thread: make the main thread end itself, in a signal handler.
        let handler: extern "C" fn(libc::c_int) = exit_this_thread;
        // SAFETY: the handler is async-signal-safe (one syscall); tgkill targets our own main
        // thread (tid == pid), which nothing else in this process expects to keep.
        unsafe {
            libc::signal(libc::SIGUSR1, handler as libc::sighandler_t);
            libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGUSR1);
        }
        let _ = keeper.join();
    }

    /// Kills and reaps the child on drop, so a failing test leaves no process behind.
    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The number of threads `/proc/PID/task` lists.
    fn threads(pid: u32) -> usize {
        fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
    }

    #[test]
    fn a_process_whose_main_thread_exited_lives_while_another_thread_runs() {
        use std::os::unix::process::CommandExt;
        use std::time::{Duration, Instant};
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "sys::proc::tests::main_thread_exits_child",
            "--test-threads=1",
            "-q",
        ])
        .env(MAIN_EXITS_ENV, "1")
        .stdout(std::process::Stdio::null());
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = KillOnDrop(cmd.spawn().unwrap());
        let pid = child.0.id();
        // Until its main thread has exited (state Z) with the other thread still listed.
        let deadline = Instant::now() + Duration::from_secs(20);
        let stat = loop {
            let stat = read_stat(pid).expect("the child's /proc/PID/stat");
            if stat.state == b'Z' && threads(pid) >= 2 {
                break stat;
            }
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "the child exited before its main thread alone did"
            );
            assert!(Instant::now() < deadline, "the child's main thread never exited");
            std::thread::sleep(Duration::from_millis(2));
        };
        let id = ProcessId {
            pid,
            start_time: stat.start_time,
        };
        assert!(
            is_alive(id),
            "a zombie leader with a running thread is a live process"
        );
        assert!(is_alive(ProcessId { pid, start_time: 0 }));
        assert_eq!(identify(pid), Some(id));
        assert!(!is_alive(ProcessId {
            pid,
            start_time: stat.start_time + 1
        }));
        // Killed: every thread exits, the leader stays a zombie until reaped, and it is dead.
        child.0.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // (Both views settle: while the killed threads exit, one read of a task's stat can fail
        // where the next, an instant later, still finds the thread.)
        while is_alive(id) || identify(pid).is_some() {
            assert!(Instant::now() < deadline, "still alive 5 s after SIGKILL");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(read_stat(pid).map(|s| s.state), Some(b'Z'), "not reaped yet");
        assert_eq!(identify(pid), None);
        child.0.wait().unwrap();
        assert!(!is_alive(id));
    }
}
