//! The same protocols run for real, with std threads and the real clock (a plain `cargo test`;
//! `tests/models.rs` is the loom side). These pass with the `wrong-protocol` feature too on
//! x86-64, whose stores are seen in program order: the bug needs a weaker machine, a compiler
//! reordering, or loom.
#![cfg(not(loom))]

use shmpipe::ring::broadcast::{self, Overflow, Subscription};
use shmpipe::ring::{mpmc, spsc};
use shmpipe_loom_downstream::{fanout, rpc, work};
use std::sync::Arc;
use std::thread;

#[test]
fn rpc_client_gets_each_result() {
    const CALLS: u32 = 1000;
    let (requests_tx, requests_rx) = spsc::channel_bytes(32, 8).unwrap();
    let (acks_tx, acks_rx) = spsc::channel_bytes(32, 8).unwrap();
    let board = Arc::new(rpc::Board::new(CALLS as usize));
    let server = {
        let board = Arc::clone(&board);
        thread::spawn(move || rpc::serve(requests_rx, acks_tx, &board))
    };
    let mut client = rpc::Client::new(requests_tx, acks_rx, Arc::clone(&board));
    for x in 0..CALLS {
        assert_eq!(client.call(x), Ok(u64::from(x) * u64::from(x)), "call({x})");
    }
    drop(client);
    assert_eq!(server.join().unwrap(), Ok(CALLS));
    assert_eq!(board.finished(), u64::from(CALLS));
}

#[test]
fn work_is_done_exactly_once_by_two_workers() {
    let jobs: Vec<u32> = (0..1000).collect();
    let (mut tx, rx) = mpmc::channel(4, 4).unwrap();
    let rx2 = rx.try_clone().unwrap();
    let a = thread::spawn(move || work::work(rx));
    let b = thread::spawn(move || work::work(rx2));
    work::dispatch(&mut tx, &jobs).unwrap();
    drop(tx);
    let (a, b) = (a.join().unwrap().unwrap(), b.join().unwrap().unwrap());
    let mut all = [a, b].concat();
    all.sort_unstable();
    assert_eq!(all, jobs);
}

#[test]
fn fanout_every_subscriber_gets_every_tick() {
    let (mut tx, a) = broadcast::channel(4, 4, Overflow::Block).unwrap();
    let b = tx.subscribe(Subscription::default()).unwrap();
    let a = thread::spawn(move || fanout::follow(a));
    let b = thread::spawn(move || fanout::follow_in_ticks(b));
    fanout::publish(&mut tx, 1000).unwrap();
    drop(tx);
    let all: Vec<u32> = (0..1000).collect();
    assert_eq!(a.join().unwrap().unwrap(), all);
    assert_eq!(b.join().unwrap().unwrap().0, all);
}

/// What `README.md` says of the model's small rings: `channel_bytes(32, 8)` holds one message of
/// up to 8 bytes at a time.
#[test]
fn a_32_byte_ring_holds_one_message() {
    use shmpipe::{Receiver, Sender, TrySendError};
    let (mut tx, mut rx) = spsc::channel_bytes(32, 8).unwrap();
    for msg in [&b"a"[..], b"12345678"] {
        tx.try_send(msg).unwrap();
        assert_eq!(tx.try_send(b"b"), Err(TrySendError::Full));
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, msg);
    }
}
