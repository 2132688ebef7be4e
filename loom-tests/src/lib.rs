//! Loom models of the shmpipe SPSC, MPMC and broadcast ring protocols.
//!
//! This crate has no code of its own: the models live in `tests/spsc.rs`, `tests/mpmc.rs` and
//! `tests/broadcast.rs` and exercise `shmpipe::ring::{spsc, mpmc, broadcast}` built with
//! `--cfg loom`, where its atomics, fences and futex come from loom. See `README.md` for what each model covers and how to run them:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release
//! ```
//!
//! What the model files share lives here: [`model_capped`] (run a model, print how many
//! interleavings it explored) and [`End`] (a channel end that is leaked, not dropped, while its
//! thread unwinds from a loom panic).

#[cfg(loom)]
pub use shared::*;

#[cfg(loom)]
mod shared {
    use std::mem::ManuallyDrop;
    use std::ops::{Deref, DerefMut};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    /// Runs `f` under loom with the preemption bound from `LOOM_MAX_PREEMPTIONS` (3 when unset),
    /// but at most `cap`, and prints how many interleavings it explored (shown with
    /// `--nocapture`). The other `LOOM_*` variables (`LOOM_LOG`, ...) work as with `loom::model`.
    pub fn model_capped<F>(cap: Option<usize>, f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&runs);
        let body = move || {
            counter.fetch_add(1, Relaxed);
            f();
        };
        let mut builder = loom::model::Builder::new();
        let bound = builder.preemption_bound.unwrap_or(3);
        builder.preemption_bound = Some(cap.map_or(bound, |cap| bound.min(cap)));
        let bound = builder.preemption_bound;
        builder.check(body);
        // The test harness names each test's thread after the test.
        let name = std::thread::current().name().unwrap_or("model").to_owned();
        println!(
            "{name}: {} interleavings explored (preemption bound {bound:?})",
            runs.load(Relaxed)
        );
    }

    /// A channel end that is not dropped while its thread unwinds from a panic.
    ///
    /// When loom finds a deadlock it panics from inside its scheduler and unwinds every model
    /// thread; an end's `Drop` (mark closed or leave, ring the doorbells) would then touch loom
    /// atomics with no execution running, panic again and abort the whole test binary, hiding the
    /// deadlock report and every other test's result. On a panic the end is leaked instead; on
    /// the normal path it drops as usual.
    pub struct End<T>(ManuallyDrop<T>);

    impl<T> End<T> {
        pub fn new(t: T) -> Self {
            End(ManuallyDrop::new(t))
        }
    }

    impl<T> Drop for End<T> {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: dropped exactly once, here, and never used again.
                unsafe { ManuallyDrop::drop(&mut self.0) }
            }
        }
    }

    impl<T> Deref for End<T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }

    impl<T> DerefMut for End<T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.0
        }
    }
}
