//! Loom models of this crate's protocols over shmpipe's in-process rings. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release` (see README.md); without `--cfg loom` this file
//! compiles to nothing.
//!
//! Each model is the protocol's own code (`src/lib.rs`) run in model threads: loom runs it once
//! per interleaving (and per value a load may return under the C11 memory model) within the
//! preemption bound, and fails the test on a panic, a deadlock, or a data race it can see.
#![cfg(loom)]

use loom::thread;
use shmpipe::ring::broadcast::{self, Overflow, Subscription};
use shmpipe::ring::{mpmc, spsc};
use shmpipe_loom_downstream::{fanout, rpc, work};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Runs `f` under loom with the preemption bound from `LOOM_MAX_PREEMPTIONS` (2 when unset),
/// but at most `cap`. Returns how many executions loom explored.
///
/// The counters here and in the models are std atomics outside the model (loom runs one
/// execution at a time, on this thread's behalf), read after the model has returned: every
/// access is Relaxed, as the counts order nothing.
fn model<F>(cap: usize, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(2).min(cap));
    builder.check(move || {
        counter.fetch_add(1, Relaxed);
        f();
    });
    let runs = runs.load(Relaxed);
    let name = std::thread::current().name().unwrap_or("model").to_owned();
    println!(
        "{name}: {runs} executions (preemption bound {:?})",
        builder.preemption_bound
    );
    runs
}

/// Two calls through request and ack rings of one message each (32 bytes: one 16-byte record and
/// the 8-byte terminator after it), so the client's `send_timeout`
/// can find the request ring full and its `recv_timeout` can find no ack yet.
///
/// Every result must be right, the server must serve both and end when the client closes. Over
/// the model loom must also have taken both ways out of the client's timed waits: runs where
/// one timed out (the server had not answered yet) and the client waited again, and runs where
/// none did. In a model a timed wait times out as soon as it would sleep, so which one happens
/// is decided by the interleaving, which loom chooses.
#[test]
fn rpc_client_gets_each_result() {
    static WITH_TIMEOUTS: AtomicUsize = AtomicUsize::new(0);
    static WITHOUT: AtomicUsize = AtomicUsize::new(0);
    let runs = model(usize::MAX, || {
        let (requests_tx, requests_rx) = spsc::channel_bytes(32, 8).unwrap();
        let (acks_tx, acks_rx) = spsc::channel_bytes(32, 8).unwrap();
        let board = Arc::new(rpc::Board::new(2));
        let server = {
            let board = Arc::clone(&board);
            thread::spawn(move || rpc::serve(requests_rx, acks_tx, &board))
        };
        let mut client = rpc::Client::new(requests_tx, acks_rx, board);
        assert_eq!(client.call(3), Ok(9), "call(3)");
        assert_eq!(client.call(4), Ok(16), "call(4)");
        let ticks = client.ticks;
        // Closing the request ring ends the server's `recv` with `Disconnected`.
        drop(client);
        assert_eq!(server.join().unwrap(), Ok(2), "the server's count");
        if ticks > 0 {
            WITH_TIMEOUTS.fetch_add(1, Relaxed);
        } else {
            WITHOUT.fetch_add(1, Relaxed);
        }
    });
    let (with, without) = (WITH_TIMEOUTS.load(Relaxed), WITHOUT.load(Relaxed));
    println!("  {with} runs with a timed-out wait, {without} without");
    assert_eq!(with + without, runs);
    assert!(with > 0 && without > 0, "both outcomes of a timed wait explored");
}

/// One dispatcher, two workers, two jobs through an MPMC ring of two slots: every job is done
/// exactly once, each worker takes its jobs in the order they were sent, and both workers end
/// (`Disconnected`) once the dispatcher has gone and the ring is empty. The workers block in
/// `recv`, on an empty ring or on a slot still being written.
///
/// Three threads on an MPMC ring are expensive to model: this takes 57 thousand executions at
/// a preemption bound of 1, a third job (so that the dispatcher's `send` can block on a full
/// ring) 776 thousand, and a bound of 2 minutes more. So two jobs, capped at 1 (shmpipe's own
/// MPMC models are capped at 1 too).
#[test]
fn work_is_done_exactly_once_by_two_workers() {
    model(1, || {
        let (mut tx, rx) = mpmc::channel(2, 4).unwrap();
        let rx2 = rx.try_clone().unwrap();
        let a = thread::spawn(move || work::work(rx));
        let b = thread::spawn(move || work::work(rx2));
        work::dispatch(&mut tx, &[10, 11]).unwrap();
        drop(tx);
        let (a, b) = (a.join().unwrap().unwrap(), b.join().unwrap().unwrap());
        for done in [&a, &b] {
            assert!(done.windows(2).all(|w| w[0] < w[1]), "in order: {a:?} {b:?}");
        }
        let mut all = [a.clone(), b.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, [10, 11], "exactly once: {a:?} {b:?}");
    });
}

/// A publisher and two subscribers on a broadcast ring of two slots: both get every tick in
/// order, then `Disconnected`. One subscriber blocks in `recv`, the other waits a tick at a time
/// with `recv_timeout` (so it polls: keep to one polling thread per model, see README.md).
///
/// Small on purpose: every payload word of a broadcast slot is a loom atomic, and with three
/// threads a third tick (which makes the publisher wait for the slower subscriber) or a
/// preemption bound of 2 takes minutes, so this is two ticks at a bound of at most 1.
#[test]
fn fanout_every_subscriber_gets_every_tick() {
    model(1, || {
        let (mut tx, a) = broadcast::channel(2, 4, Overflow::Block).unwrap();
        let b = tx.subscribe(Subscription::default()).unwrap();
        let a = thread::spawn(move || fanout::follow(a));
        let b = thread::spawn(move || fanout::follow_in_ticks(b));
        fanout::publish(&mut tx, 2).unwrap();
        drop(tx);
        assert_eq!(a.join().unwrap().unwrap(), [0, 1]);
        assert_eq!(b.join().unwrap().unwrap().0, [0, 1]);
    });
}
