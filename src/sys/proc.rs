//! Process identity and liveness, so a peer's death can be told from a peer that is merely slow.
//!
//! A pid alone is not an identity: pids are recycled. A process is identified by its pid together
//! with its start time (field 22 of `/proc/PID/stat`, in clock ticks since boot), which is what
//! PostgreSQL and systemd also rely on. A zombie (killed but not yet reaped) counts as dead: it can
//! never touch the ring again.

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
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain spaces or ')', so
    // parse from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    // `rest` starts at field 3 (state); start time is field 22, i.e. 19 further on.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
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

/// The identity of the live process `pid` now (`None`: no such process, a zombie, or `/proc`
/// unreadable). For pids learnt from the kernel without a start time (`msg_lspid`): identify once,
/// then `is_alive` tells the process from a later one that reuses its pid.
pub(crate) fn identify(pid: u32) -> Option<ProcessId> {
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    let stat = read_stat(pid)?;
    (stat.state != b'Z' && stat.state != b'X').then_some(ProcessId {
        pid,
        start_time: stat.start_time,
    })
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the process `id` still exists and is not a zombie.
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
            stat.state != b'Z'
                && stat.state != b'X'
                && (id.start_time == 0 || stat.start_time == id.start_time)
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
}
