//! Loom models of the shmpipe SPSC and MPMC ring protocols.
//!
//! This crate has no code of its own: the models live in `tests/spsc.rs` and `tests/mpmc.rs` and
//! exercise `shmpipe::ring::spsc` and `shmpipe::ring::mpmc` built with `--cfg loom`, where its atomics, fences and futex come from
//! loom. See `README.md` for what each model covers and how to run them:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release
//! ```
