//! System V semaphore sets used as kernel-kept liveness tokens and as a robust lock.
//!
//! A semaphore adjusted with `SEM_UNDO` is put back by the kernel when the process that adjusted
//! it exits, however it exits (SIGKILL included), and only then: the undo list is shared by all
//! threads of a process (pthreads are created with `CLONE_SYSVSEM`), so a process whose main
//! thread ended while other threads run still holds its tokens. A child made by `fork` does not
//! inherit its parent's undo list, so a forked child never holds (or gives back) its parent's
//! tokens. All of this lives in the IPC namespace, not the PID namespace: a process in another
//! PID namespace (a container sharing our IPC namespace) is seen alive or dead exactly as one of
//! ours, with no pid involved.
//!
//! - a *token* `i`: `+1` with `SEM_UNDO` when a member takes its record, `-1` with `SEM_UNDO`
//!   when it leaves cleanly. Value 0 means nobody holding record `i` is alive.
//! - the *lock* (semaphore 0): wait-for-zero and `+1` with `SEM_UNDO` in one atomic `semop`; a
//!   holder that dies releases it through the undo.

use super::cvt;
use std::io;
use std::time::Instant;

/// A semaphore set identifier (`semid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SemId(pub(crate) i32);

/// What `IPC_STAT` reports about a set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SemStat {
    pub(crate) nsems: usize,
    pub(crate) uid: u32,
    pub(crate) cuid: u32,
    pub(crate) mode: u32,
}

/// `semctl`'s fourth argument. Only the integer and buffer members are used.
#[repr(C)]
union SemUn {
    val: libc::c_int,
    buf: *mut libc::semid_ds,
}

/// Creates a new set of `nsems` semaphores (all 0) at `key` (`IPC_PRIVATE` for an anonymous
/// one); with `exclusive`, fails with `EEXIST` if `key` has one already.
pub(crate) fn create(key: i32, nsems: usize, mode: u32, exclusive: bool) -> io::Result<SemId> {
    let mut flags = libc::IPC_CREAT | (mode & 0o777) as libc::c_int;
    if exclusive {
        flags |= libc::IPC_EXCL;
    }
    // SAFETY: semget only reads its scalar arguments.
    cvt(unsafe { libc::semget(key, nsems as libc::c_int, flags) }).map(SemId)
}

/// Finds the existing set at `key` (`ENOENT` if there is none).
pub(crate) fn lookup(key: i32) -> io::Result<SemId> {
    // SAFETY: semget only reads its scalar arguments.
    cvt(unsafe { libc::semget(key, 0, 0) }).map(SemId)
}

/// `IPC_STAT`.
pub(crate) fn stat(id: SemId) -> io::Result<SemStat> {
    // SAFETY: semid_ds is plain old data; all-zero is a valid value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    let arg = SemUn { buf: &mut ds };
    // SAFETY: IPC_STAT writes one semid_ds through `arg.buf`, which points to `ds`.
    cvt(unsafe { libc::semctl(id.0, 0, libc::IPC_STAT, arg) })?;
    Ok(SemStat {
        nsems: ds.sem_nsems as usize,
        uid: ds.sem_perm.uid,
        cuid: ds.sem_perm.cuid,
        mode: ds.sem_perm.mode as u32,
    })
}

/// `IPC_RMID`: the set is gone at once; every blocked `semop` on it fails with `EIDRM`.
pub(crate) fn remove(id: SemId) -> io::Result<()> {
    // SAFETY: IPC_RMID reads no argument beyond the scalars.
    cvt(unsafe { libc::semctl(id.0, 0, libc::IPC_RMID) }).map(drop)
}

/// The value of semaphore `num`.
pub(crate) fn value(id: SemId, num: usize) -> io::Result<u32> {
    // SAFETY: GETVAL reads no argument beyond the scalars.
    cvt(unsafe { libc::semctl(id.0, num as libc::c_int, libc::GETVAL) }).map(|v| v as u32)
}

/// Adds `delta` to semaphore `num` with `SEM_UNDO`, never blocking (a `-1` that would go below 0
/// fails with `EAGAIN` and changes nothing).
pub(crate) fn adjust(id: SemId, num: usize, delta: i16) -> io::Result<()> {
    let mut op = libc::sembuf {
        sem_num: num as libc::c_ushort,
        sem_op: delta,
        sem_flg: (libc::SEM_UNDO | libc::IPC_NOWAIT) as libc::c_short,
    };
    loop {
        // SAFETY: `op` is one valid sembuf; semop reads exactly `1` of them.
        match cvt(unsafe { libc::semop(id.0, &mut op, 1) }) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// One operation of [`apply`]: add `delta` to semaphore `num`, recorded for the kernel to undo
/// at our exit when `undo` is set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub(crate) num: usize,
    pub(crate) delta: i16,
    pub(crate) undo: bool,
}

/// Most operations one [`apply`] takes.
const MAX_OPS: usize = 8;

/// Applies `ops` (at most 8) in one `semop`, never blocking: all of them or, on any error, none
/// (a decrement below 0 fails with `EAGAIN`, a value above `SEMVMX` with `ERANGE`).
pub(crate) fn apply(id: SemId, ops: &[Op]) -> io::Result<()> {
    assert!(
        ops.len() <= MAX_OPS,
        "{} semaphore operations in one call",
        ops.len()
    );
    let mut bufs = [libc::sembuf {
        sem_num: 0,
        sem_op: 0,
        sem_flg: 0,
    }; MAX_OPS];
    for (b, op) in bufs.iter_mut().zip(ops) {
        let undo = if op.undo { libc::SEM_UNDO } else { 0 };
        *b = libc::sembuf {
            sem_num: op.num as libc::c_ushort,
            sem_op: op.delta,
            sem_flg: (undo | libc::IPC_NOWAIT) as libc::c_short,
        };
    }
    loop {
        // SAFETY: `bufs` holds `ops.len()` (at most MAX_OPS) initialised sembufs; semop reads
        // exactly that many.
        match cvt(unsafe { libc::semop(id.0, bufs.as_mut_ptr(), ops.len()) }) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// Takes the lock at semaphore `num` (0 → 1, with `SEM_UNDO`), waiting until `deadline`.
/// `Ok(false)`: still held by someone else at the deadline.
pub(crate) fn lock(id: SemId, num: usize, deadline: Instant) -> io::Result<bool> {
    let mut ops = [
        // Wait until nobody holds it...
        libc::sembuf {
            sem_num: num as libc::c_ushort,
            sem_op: 0,
            sem_flg: 0,
        },
        // ...and, atomically with that, hold it (given back by the kernel if we die).
        libc::sembuf {
            sem_num: num as libc::c_ushort,
            sem_op: 1,
            sem_flg: libc::SEM_UNDO as libc::c_short,
        },
    ];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            ops[0].sem_flg = libc::IPC_NOWAIT as libc::c_short;
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `ops` holds two valid sembufs and semtimedop reads exactly two; `ts` is a valid
        // relative timeout that the call only reads. (The libc crate has no wrapper for it.)
        let ret = unsafe { libc::syscall(libc::SYS_semtimedop, id.0, ops.as_mut_ptr(), 2usize, &ts) };
        match cvt(ret as libc::c_int) {
            Ok(_) => return Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Releases a lock taken with [`lock`] (1 → 0, cancelling the undo).
pub(crate) fn unlock(id: SemId, num: usize) -> io::Result<()> {
    adjust(id, num, -1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Set(SemId);
    impl Drop for Set {
        fn drop(&mut self) {
            let _ = remove(self.0);
        }
    }

    #[test]
    fn tokens_count_and_the_lock_excludes() {
        let set = Set(create(libc::IPC_PRIVATE, 3, 0o600, false).unwrap());
        let id = set.0;
        assert_eq!(stat(id).unwrap().nsems, 3);
        assert_eq!(value(id, 1).unwrap(), 0);
        adjust(id, 1, 1).unwrap();
        assert_eq!(value(id, 1).unwrap(), 1);
        adjust(id, 1, -1).unwrap();
        assert_eq!(value(id, 1).unwrap(), 0);
        // Below zero is refused, not waited for.
        assert_eq!(adjust(id, 1, -1).unwrap_err().raw_os_error(), Some(libc::EAGAIN));

        assert!(lock(id, 0, Instant::now() + Duration::from_secs(1)).unwrap());
        let start = Instant::now();
        assert!(!lock(id, 0, Instant::now() + Duration::from_millis(30)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(!lock(id, 0, Instant::now()).unwrap());
        unlock(id, 0).unwrap();
        assert!(lock(id, 0, Instant::now()).unwrap());
        unlock(id, 0).unwrap();
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let set = Set(create(libc::IPC_PRIVATE, 3, 0o600, false).unwrap());
        let id = set.0;
        let op = |num, delta, undo| Op { num, delta, undo };
        let values = || [0, 1, 2].map(|n| value(id, n).unwrap());
        apply(id, &[op(0, 1, true), op(1, 5, false)]).unwrap();
        assert_eq!(values(), [1, 5, 0]);
        // The second would go below 0: neither is applied.
        let e = apply(id, &[op(0, 1, true), op(2, -1, false)]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        // Above SEMVMX: ERANGE, nothing applied.
        let e = apply(id, &[op(1, 1, false), op(2, 32767, false), op(2, 1, false)]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ERANGE));
        assert_eq!(values(), [1, 5, 0]);
        apply(id, &[op(0, -1, true)]).unwrap();
        assert_eq!(value(id, 0).unwrap(), 0);
    }

    #[test]
    fn a_dead_process_gives_its_tokens_and_lock_back() {
        let set = Set(create(libc::IPC_PRIVATE, 2, 0o600, false).unwrap());
        let id = set.0;
        // SAFETY: the child only makes async-signal-safe syscalls (semop, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = adjust(id, 1, 1).is_ok() && lock(id, 0, Instant::now()).unwrap_or(false);
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(status, 0, "child could not take its token and the lock");
        assert_eq!(value(id, 1).unwrap(), 0, "the token outlived its holder");
        assert_eq!(value(id, 0).unwrap(), 0, "the lock outlived its holder");
    }
}
