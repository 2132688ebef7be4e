//! Clean-up when the run is interrupted (SIGINT, SIGTERM, SIGHUP): Ctrl-C during a minute-long
//! run must not leave SysV objects behind, and they outlive processes.
//!
//! The RAII guards clean up on every path that unwinds; a signal's default action runs no
//! destructor. So `run` blocks these signals and a thread waits for them with `sigwait`
//! (`crate::signals`). Every live resource is listed in [`REGISTRY`]; on a signal that thread
//! takes the registry's lock (and keeps it: nothing can be created or released meanwhile), kills
//! the peer, removes what is listed, and exits with 128 + the signal's number. Anything that
//! creates or releases a listed resource does so under the lock, so the thread never sees half of
//! a change: a peer is reaped, and a queue removed, in the same critical section as it leaves the
//! list (a reaped pid or a removed queue id could be reused by someone else).
//!
//! The peer ignores SIGINT and SIGHUP (a terminal sends them to the whole process group): it is
//! ours to kill. Only SIGKILL of the bench process escapes this; then the raw segment is still
//! removed (see `raw`), the peer dies with us (`PR_SET_PDEATHSIG`), and the message queues and
//! shared-memory rings of the measurement under way are left behind.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// A resource to release on interruption.
pub(super) enum Resource {
    /// A peer process, to SIGKILL and reap.
    Peer(u32),
    /// A raw message queue, by id.
    Queue(i32),
    /// A shared-memory segment of ours, by key.
    ShmKey(i32),
    /// A message queue of ours, by key.
    MsgqKey(i32),
    /// A directory of socket files.
    Dir(PathBuf),
}

/// The live resources.
pub(super) struct Registry {
    next: u64,
    items: Vec<(u64, Resource)>,
}

/// Identifies a listed resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Token(u64);

impl Registry {
    /// Lists `r`; returns what to [`forget`](Self::forget) it by once it is released.
    pub(super) fn add(&mut self, r: Resource) -> Token {
        self.next += 1;
        self.items.push((self.next, r));
        Token(self.next)
    }

    /// Unlists a released resource.
    pub(super) fn forget(&mut self, token: Token) {
        self.items.retain(|(t, _)| *t != token.0);
    }
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    items: Vec::new(),
});

/// The registry, locked.
pub(super) fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (call it before starting any other) and
/// starts the thread that handles them. Children start with a clean mask (std resets it).
pub(super) fn install() -> std::io::Result<()> {
    crate::signals::handle("bench-signals", |sig| clean_up_and_exit(sig))
}

fn clean_up_and_exit(sig: libc::c_int) -> ! {
    // Held until exit: nothing is created or released from now on.
    let reg = lock();
    for (_, r) in &reg.items {
        if let Resource::Peer(pid) = r {
            // SAFETY: kill only sends a signal; `pid` is an unreaped child of ours (see module
            // docs), so it names no other process.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    for (_, r) in &reg.items {
        match r {
            Resource::Peer(pid) => {
                // Reaped so that it has detached from everything before we remove it.
                // SAFETY: a null status pointer is allowed.
                unsafe { libc::waitpid(*pid as libc::pid_t, std::ptr::null_mut(), 0) };
            }
            Resource::Queue(id) => {
                // SAFETY: IPC_RMID takes no buffer.
                unsafe { libc::msgctl(*id, libc::IPC_RMID, std::ptr::null_mut()) };
            }
            Resource::ShmKey(key) => {
                // SAFETY: shmget and shmctl(IPC_RMID) take only scalars.
                unsafe {
                    let id = libc::shmget(*key, 0, 0);
                    if id >= 0 {
                        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    }
                }
            }
            Resource::MsgqKey(key) => {
                // SAFETY: msgget and msgctl(IPC_RMID) take only scalars.
                unsafe {
                    let id = libc::msgget(*key, 0);
                    if id >= 0 {
                        libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    }
                }
            }
            Resource::Dir(path) => {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
    eprintln!("\nshmpipe bench: interrupted (signal {sig}); peer killed, IPC objects removed");
    std::process::exit(128 + sig);
}
