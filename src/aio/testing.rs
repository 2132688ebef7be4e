//! Helpers shared by the unit tests of the async ends (`ring::*::aio`, `aio::*`).

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A waker that records being woken.
pub(crate) struct Flag(pub(crate) AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

/// Polls `f` once with `flag`'s waker.
pub(crate) fn poll_once<F: std::future::Future>(
    f: std::pin::Pin<&mut F>,
    flag: &Arc<Flag>,
) -> Poll<F::Output> {
    let waker = Waker::from(Arc::clone(flag));
    f.poll(&mut Context::from_waker(&waker))
}

/// Whether `flag` is woken within `limit`.
pub(crate) fn woken_within(flag: &Flag, limit: Duration) -> bool {
    let t0 = Instant::now();
    while !flag.0.load(SeqCst) {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// A current-thread runtime with I/O and time.
pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
