//! SIGINT, SIGTERM and SIGHUP: ending a run as cleanly as its normal end.
//!
//! A signal's default action runs no destructor, and SysV objects outlive processes: a receiver
//! stopped by Ctrl-C would leave its ring in `ipcs -m`. So a command that holds channel ends
//! blocks these signals in its main thread before starting any other (every thread inherits the
//! mask; children start with a clean one, std resets it) and a thread waits for them with
//! `sigwait` ([`handle`]). `bench` cleans up from that thread and exits (see `bench/cleanup.rs`).
//! `send`, `recv`, `demo` and `soak` only record the signal ([`record`]): their main loop looks
//! at [`caught`] between messages and between short slices ([`SLICE`]) of any wait on a channel,
//! drops its ends as at a normal end (a receiver removes its ring, a sender marks its stream
//! closed), and exits with 128 + the signal's number ([`exit_code`]), as shells expect.
//!
//! Reading stdin and writing stdout can block for ever (nobody types, nobody reads). [`Stdin`]
//! and [`Stdout`] are the raw descriptors, and once a signal is recorded, the signal thread
//! interrupts the main thread whenever it is inside one of their calls: `pthread_kill` of
//! [`KICK`], whose handler does nothing and is installed without `SA_RESTART`, so the call fails
//! with `EINTR`, which they then report as [`stopped`]. A kick can land just before the call
//! starts, so it is repeated every 10 ms while the main thread is in such a call (repetition, not
//! memory ordering, is what makes it arrive). Every library call retries `EINTR`, should a kick
//! reach one. No kick is sent before a signal: until then the fast path pays a relaxed load per
//! message and two relaxed stores per read or write of stdio, nothing else.

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// The signals that end a run.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How long a wait on a channel lasts before the loop looks for a signal again.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// Interrupts the main thread's blocked read of stdin or write of stdout. SIGURG: ignored by
/// default, so one from elsewhere before we install our handler does nothing either.
const KICK: libc::c_int = libc::SIGURG;

/// The first signal recorded; 0 for none.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// Whether the main thread is in (or about to enter) a read of [`Stdin`] or a write of
/// [`Stdout`], which the signal thread then interrupts.
static IN_STDIO: AtomicBool = AtomicBool::new(false);

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

/// Records the first of SIGINT, SIGTERM and SIGHUP for [`caught`] (later ones are ignored), and
/// from then on interrupts this thread's blocked [`Stdin`] and [`Stdout`] calls. Call it from the
/// main thread, before starting any other.
pub(crate) fn record() -> io::Result<()> {
    // SAFETY: pthread_self has no preconditions.
    let main = unsafe { libc::pthread_self() };
    handle("shmpipe-signals", move |sig| {
        if CAUGHT
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        // SAFETY: sigaction is plain data (all-zero is valid); the handler does nothing, so it
        // is async-signal-safe, and without SA_RESTART a blocked read or write fails with EINTR.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = do_nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(KICK, &act, std::ptr::null_mut());
        }
        // Until the process exits; later signals stay pending, unheeded. A call made after the
        // signal still runs (a receiver writes out what it has taken off its channel); only
        // one that blocks is cut short.
        loop {
            if IN_STDIO.load(Ordering::Relaxed) {
                // SAFETY: `main` is the main thread, which lives as long as the process.
                unsafe { libc::pthread_kill(main, KICK) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

extern "C" fn do_nothing(_: libc::c_int) {}

/// The signal recorded, if any (see [`record`]).
pub(crate) fn caught() -> Option<libc::c_int> {
    match CAUGHT.load(Ordering::Relaxed) {
        0 => None,
        sig => Some(sig),
    }
}

/// The signal recorded or, failing that, one of ours sent but not yet taken by the signal thread
/// (it stays pending until that thread runs, which a busy machine can delay): for a path that
/// ends the run anyway (an end of stream, an error, as when the peer was signalled too) and
/// chooses the exit status. Only one taken but not yet recorded, an instant's window, escapes.
pub(crate) fn stopped_by() -> Option<libc::c_int> {
    caught().or_else(|| {
        // SAFETY: sigset_t is plain data; sigpending fills it (all-zero is a valid start).
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid out-pointer.
        if unsafe { libc::sigpending(&mut set) } != 0 {
            return None;
        }
        SIGNALS.into_iter().find(|&sig| {
            // SAFETY: `set` was filled by sigpending.
            unsafe { libc::sigismember(&set, sig) == 1 }
        })
    })
}

/// The exit status for a run ended by `sig`: 128 + its number.
pub(crate) fn exit_code(sig: libc::c_int) -> ExitCode {
    ExitCode::from((128 + sig) as u8)
}

/// The signal's name, for messages.
pub(crate) fn name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// In a child that its parent stops: leave terminal-generated signals (a terminal sends them to
/// the whole process group) to the parent.
pub(crate) fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; it only changes this process's disposition.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// The error of a [`Stdin`] or [`Stdout`] call cut short by a recorded signal.
pub(crate) fn stopped() -> io::Error {
    io::Error::other("stopped by a signal")
}

/// One read or write on a raw descriptor, retried on `EINTR` unless a signal was recorded. A
/// closed descriptor (`EBADF`) reads as EOF and swallows writes, as std's stdio does.
fn stdio_call(mut call: impl FnMut() -> isize, if_closed: usize) -> io::Result<usize> {
    loop {
        IN_STDIO.store(true, Ordering::Relaxed);
        let n = call();
        let err = io::Error::last_os_error();
        IN_STDIO.store(false, Ordering::Relaxed);
        if n >= 0 {
            return Ok(n as usize);
        }
        match err.kind() {
            io::ErrorKind::Interrupted if caught().is_some() => return Err(stopped()),
            io::ErrorKind::Interrupted => {}
            _ if err.raw_os_error() == Some(libc::EBADF) => return Ok(if_closed),
            _ => return Err(err),
        }
    }
}

/// Standard input, unbuffered; a blocked read ends with [`stopped`] once a signal is recorded.
pub(crate) struct Stdin;

impl io::Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        stdio_call(
            || {
                // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
                unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) }
            },
            0,
        )
    }
}

/// Standard output, unbuffered; a blocked write ends with [`stopped`] once a signal is recorded.
pub(crate) struct Stdout;

impl io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        stdio_call(
            || {
                // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
                unsafe { libc::write(libc::STDOUT_FILENO, buf.as_ptr().cast(), buf.len()) }
            },
            buf.len(),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
