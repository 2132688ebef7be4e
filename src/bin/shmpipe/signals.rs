//! SIGINT, SIGTERM and SIGHUP: ending a run as cleanly as its normal end.
//!
//! A signal's default action runs no destructor, and SysV objects outlive processes. So a
//! command that holds them blocks these signals in its main thread before starting any other
//! (every thread inherits the mask; children start with a clean one, std resets it) and a thread
//! waits for them with `sigwait` ([`handle`]). `bench` cleans up from that thread and exits (see
//! `bench/cleanup.rs`).

use std::io;

/// The signals that end a run.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (call it before starting any other) and
/// starts a thread named `name` that calls `on_signal` with each one as it arrives.
pub(crate) fn handle(name: &str, mut on_signal: impl FnMut(libc::c_int) + Send + 'static) -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised sigset_t; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` is initialised and `sig` a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                on_signal(sig);
            }
        })?;
    Ok(())
}

/// In a child that its parent stops: leave terminal-generated signals (a terminal sends them to
/// the whole process group) to the parent.
pub(crate) fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; it only changes this process's disposition.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}
