//! Instructions per message of the SPSC ring against rtrb (and the MPMC ring against ArrayQueue), for callgrind (repeatable counts, unlike
//! wall time on a noisy machine).
//!
//! One thread, one message in flight: each iteration sends one 64-byte message and receives it
//! at once, through
//! - `shm_send_recv_ref`: `spsc::channel(1024, 64)`, `try_send(&[u8; 64])` + `try_recv_ref()`;
//! - `shm_reserve_recv_ref`: the same ring, `try_reserve(64)` + copy + `commit()` + `try_recv_ref()`;
//! - `rtrb_push_pop`: `rtrb::RingBuffer::<[u8; 64]>::new(1024)`, `push` + `pop`;
//! - `shm_send_recv_ref_8b` and `rtrb_push_pop_8b`: the same with 8-byte messages;
//! - `shm_send_recv_ref_runtime_len` and `shm_send_recv_ref_8b_runtime_len`: the same two with
//!   the length hidden from the compiler as well. The rows above pass our sender a `&[u8; N]`
//!   whose bytes went through `black_box`, as the rtrb rows pass theirs: the compiler knows the
//!   length (for rtrb it is the element type's), so the copy is specialised to it; here it must
//!   dispatch on a length known only at run time, as for a sender of variable-size messages;
//! - `shm_batch_8b`: 8-byte messages 16 at a time, `try_send_batch` + `try_recv_batch` (a copy
//!   into a reused `Batch`), per message;
//! - `mpmc_send_recv_ref`: the MPMC ring, `mpmc::channel(1024, 64)`, `try_send` + `try_recv_ref`;
//! - `mpmc_send_recv_copy`: the MPMC ring, `try_send` + `try_recv(&mut Vec)` (a copy out, as a
//!   batch receive makes);
//! - `mpmc_batch16_send_recv`: the MPMC ring, 16 messages at a time, `try_send_batch` of 16 +
//!   `try_recv_batch(&mut Batch, 16)`: one claim of the shared position and one doorbell check
//!   per 16 messages on each side (the iteration count is still messages);
//! - `shm_send_recv_copy`: the SPSC ring's copy path, `try_send` + `try_recv(&mut Vec)`;
//! - `bcast_send_recv_copy` (twice: `overflow=block`, then `overwrite`): the broadcast ring with
//!   one subscriber, `try_send` + `try_recv(&mut Vec)` (it has no borrowed reads);
//! - `arrayqueue_push_pop`: `crossbeam_queue::ArrayQueue::<[u8; 64]>::new(1024)`, `push` + `pop`
//!   (the MPMC reference);
//! - `shm_send_recv_blocking_8b`: the blocking calls each side of a ping-pong makes,
//!   `send(&[u8; 8])` then `recv(&mut Vec)`, with the message always there (so no waiting): the
//!   code on the path of `shmpipe bench --scenario latency`, without its cache misses.
//!
//! Each runs in its own `#[inline(never)]` function, so its inclusive cost divided by the number
//! of iterations is its instructions per message (setup is outside the functions). Run:
//!
//! ```sh
//! export CARGO_TARGET_DIR=/work/target-perf   # or wherever yours is
//! cargo build --release --example insn_count
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/insn.out \
//!     $CARGO_TARGET_DIR/release/examples/insn_count 1000000
//! callgrind_annotate --inclusive=yes /tmp/insn.out | grep -E 'insn_count::(shm|rtrb|mpmc|arrayqueue)_'
//! ```
//!
//! and divide each `Ir` by the iteration count (1000000 here). For the line by line picture,
//! `callgrind_annotate --auto=yes --include=src/ring /tmp/insn.out`.
//! Without valgrind the program prints wall time per message, which is only a sanity check.

use shmpipe::ring::{broadcast, mpmc, spsc};
use shmpipe::{Batch, Receiver, Sender};
use std::hint::black_box;
use std::time::Instant;

const CAPACITY: usize = 1024;
type Msg = [u8; 64];
/// Messages per batch in `shm_batch_8b` and `mpmc_batch16_send_recv`.
const BATCH: usize = 16;

#[inline(never)]
fn shm_send_recv_ref(tx: &mut spsc::Producer, rx: &mut spsc::Consumer, n: u64) {
    let mut msg: Msg = [7; 64];
    for i in 0..n {
        msg[0] = i as u8;
        // `&[u8; 64]` through `black_box`, then the slice: its bytes are opaque to the compiler but
        // not its length, as for rtrb's `[u8; 64]` (the `_runtime_len` rows hide the length too).
        let m: &Msg = black_box(&msg);
        tx.try_send(m).unwrap();
        let g = rx.try_recv_ref().unwrap();
        black_box(&*g);
    }
}

#[inline(never)]
fn shm_send_recv_ref_8b(tx: &mut spsc::Producer, rx: &mut spsc::Consumer, n: u64) {
    for i in 0..n {
        let bytes = i.to_le_bytes();
        let m: &[u8; 8] = black_box(&bytes);
        tx.try_send(m).unwrap();
        let g = rx.try_recv_ref().unwrap();
        black_box(&*g);
    }
}

/// `shm_send_recv_ref` with the length hidden from the compiler too (a `&[u8]` through
/// `black_box`): a sender whose message sizes are only known at run time.
#[inline(never)]
fn shm_send_recv_ref_runtime_len(tx: &mut spsc::Producer, rx: &mut spsc::Consumer, n: u64) {
    let mut msg: Msg = [7; 64];
    for i in 0..n {
        msg[0] = i as u8;
        tx.try_send(black_box(&msg[..])).unwrap();
        let g = rx.try_recv_ref().unwrap();
        black_box(&*g);
    }
}

/// `shm_send_recv_ref_8b` with the length hidden, as above.
#[inline(never)]
fn shm_send_recv_ref_8b_runtime_len(tx: &mut spsc::Producer, rx: &mut spsc::Consumer, n: u64) {
    for i in 0..n {
        tx.try_send(black_box(&i.to_le_bytes()[..])).unwrap();
        let g = rx.try_recv_ref().unwrap();
        black_box(&*g);
    }
}

/// 8-byte messages, `BATCH` at a time: `try_send_batch` then `try_recv_batch` (n messages in all).
#[inline(never)]
fn shm_batch_8b(tx: &mut spsc::Producer, rx: &mut spsc::Consumer, batch: &mut Batch, n: u64) {
    let mut msgs = [[0u8; 8]; BATCH];
    for round in 0..n / BATCH as u64 {
        for (j, m) in msgs.iter_mut().enumerate() {
            *m = (round * BATCH as u64 + j as u64).to_le_bytes();
        }
        let slices: [&[u8]; BATCH] = std::array::from_fn(|j| &msgs[j][..]);
        assert_eq!(tx.try_send_batch(black_box(&slices)).unwrap(), BATCH);
        assert_eq!(rx.try_recv_batch(batch, BATCH).unwrap(), BATCH);
        black_box(&*batch);
    }
}

#[inline(never)]
fn rtrb_push_pop_8b(tx: &mut rtrb::Producer<[u8; 8]>, rx: &mut rtrb::Consumer<[u8; 8]>, n: u64) {
    for i in 0..n {
        tx.push(*black_box(&i.to_le_bytes())).unwrap();
        let m = rx.pop().unwrap();
        black_box(&m);
    }
}

#[inline(never)]
fn shm_reserve_recv_ref(tx: &mut spsc::Producer, rx: &mut spsc::Consumer, n: u64) {
    let mut msg: Msg = [7; 64];
    for i in 0..n {
        msg[0] = i as u8;
        let mut w = tx.try_reserve(64).unwrap();
        w.copy_from_slice(black_box(&msg));
        w.commit();
        let g = rx.try_recv_ref().unwrap();
        black_box(&*g);
    }
}

#[inline(never)]
fn rtrb_push_pop(tx: &mut rtrb::Producer<Msg>, rx: &mut rtrb::Consumer<Msg>, n: u64) {
    let mut msg: Msg = [7; 64];
    for i in 0..n {
        msg[0] = i as u8;
        tx.push(*black_box(&msg)).unwrap();
        let m = rx.pop().unwrap();
        black_box(&m);
    }
}

#[inline(never)]
fn mpmc_send_recv_ref(tx: &mut mpmc::Producer, rx: &mut mpmc::Consumer, n: u64) {
    let mut msg: Msg = [7; 64];
    for i in 0..n {
        msg[0] = i as u8;
        tx.try_send(black_box(&msg)).unwrap();
        let g = rx.try_recv_ref().unwrap();
        black_box(&*g);
    }
}

#[inline(never)]
fn mpmc_send_recv_copy(tx: &mut mpmc::Producer, rx: &mut mpmc::Consumer, n: u64) {
    let mut msg: Msg = [7; 64];
    let mut buf = Vec::with_capacity(64);
    for i in 0..n {
        msg[0] = i as u8;
        tx.try_send(black_box(&msg)).unwrap();
        rx.try_recv(&mut buf).unwrap();
        black_box(&buf);
    }
}

#[inline(never)]
fn mpmc_batch16_send_recv(tx: &mut mpmc::Producer, rx: &mut mpmc::Consumer, n: u64) {
    let mut msgs = [[7u8; 64]; BATCH];
    let mut batch = Batch::with_capacity(BATCH, BATCH * 64);
    for i in 0..n / BATCH as u64 {
        msgs[0][0] = i as u8;
        let refs: [&[u8]; BATCH] = std::array::from_fn(|j| &msgs[j][..]);
        assert_eq!(tx.try_send_batch(black_box(&refs)), Ok(BATCH));
        assert_eq!(rx.try_recv_batch(&mut batch, BATCH), Ok(BATCH));
        black_box(&batch);
    }
}

/// The SPSC ring's copy path (`try_send` + `try_recv` into a `Vec`), the reference for the
/// broadcast rows below, which have no borrowed reads.
#[inline(never)]
fn shm_send_recv_copy(tx: &mut spsc::Producer, rx: &mut spsc::Consumer, n: u64) {
    let mut msg: Msg = [7; 64];
    let mut buf = Vec::with_capacity(64);
    for i in 0..n {
        msg[0] = i as u8;
        tx.try_send(black_box(&msg)).unwrap();
        rx.try_recv(&mut buf).unwrap();
        black_box(&buf);
    }
}

/// The broadcast ring with one subscriber: `try_send` + `try_recv` (a copy: slots are seqlocks).
#[inline(never)]
fn bcast_send_recv_copy(tx: &mut broadcast::Publisher, rx: &mut broadcast::Subscriber, n: u64) {
    let mut msg: Msg = [7; 64];
    let mut buf = Vec::with_capacity(64);
    for i in 0..n {
        msg[0] = i as u8;
        tx.try_send(black_box(&msg)).unwrap();
        rx.try_recv(&mut buf).unwrap();
        black_box(&buf);
    }
}

#[inline(never)]
fn arrayqueue_push_pop(q: &crossbeam_queue::ArrayQueue<Msg>, n: u64) {
    let mut msg: Msg = [7; 64];
    for i in 0..n {
        msg[0] = i as u8;
        q.push(*black_box(&msg)).unwrap();
        let m = q.pop().unwrap();
        black_box(&m);
    }
}

#[inline(never)]
fn shm_send_recv_blocking_8b(tx: &mut dyn Sender, rx: &mut dyn Receiver, n: u64) {
    let mut buf = Vec::with_capacity(8);
    for i in 0..n {
        tx.send(black_box(&i.to_le_bytes())).unwrap();
        rx.recv(&mut buf).unwrap();
        black_box(&buf);
    }
}

fn per_msg(name: &str, n: u64, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("{name:22} {ns:7.2} ns/msg (wall time; use callgrind for instruction counts)");
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |s| s.parse().expect("iterations"));
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        per_msg("shm_send_recv_ref", n, || shm_send_recv_ref(&mut tx, &mut rx, n));
    }
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        per_msg("shm_send_recv_ref_8b", n, || {
            shm_send_recv_ref_8b(&mut tx, &mut rx, n)
        });
    }
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        per_msg("shm_send_recv_ref_runtime_len", n, || {
            shm_send_recv_ref_runtime_len(&mut tx, &mut rx, n)
        });
    }
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        per_msg("shm_send_recv_ref_8b_runtime_len", n, || {
            shm_send_recv_ref_8b_runtime_len(&mut tx, &mut rx, n)
        });
    }
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        per_msg("shm_send_recv_copy", n, || {
            shm_send_recv_copy(&mut tx, &mut rx, n)
        });
    }
    for (name, overflow) in [
        ("bcast_block_copy", broadcast::Overflow::Block),
        ("bcast_overwrite_copy", broadcast::Overflow::Overwrite),
    ] {
        let (mut tx, mut rx) = broadcast::channel(CAPACITY, 64, overflow).unwrap();
        per_msg(name, n, || bcast_send_recv_copy(&mut tx, &mut rx, n));
    }
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        let mut batch = Batch::with_capacity(BATCH, BATCH * 8);
        per_msg("shm_batch_8b", n, || {
            shm_batch_8b(&mut tx, &mut rx, &mut batch, n)
        });
    }
    {
        let (mut tx, mut rx) = rtrb::RingBuffer::<[u8; 8]>::new(CAPACITY);
        per_msg("rtrb_push_pop_8b", n, || rtrb_push_pop_8b(&mut tx, &mut rx, n));
    }
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        per_msg("shm_reserve_recv_ref", n, || {
            shm_reserve_recv_ref(&mut tx, &mut rx, n)
        });
    }
    {
        let (mut tx, mut rx) = spsc::channel(CAPACITY, 64).unwrap();
        per_msg("shm_send_recv_blocking_8b", n, || {
            shm_send_recv_blocking_8b(&mut tx, &mut rx, n)
        });
    }
    {
        let (mut tx, mut rx) = rtrb::RingBuffer::<Msg>::new(CAPACITY);
        per_msg("rtrb_push_pop", n, || rtrb_push_pop(&mut tx, &mut rx, n));
    }
    {
        let (mut tx, mut rx) = mpmc::channel(CAPACITY, 64).unwrap();
        per_msg("mpmc_send_recv_ref", n, || {
            mpmc_send_recv_ref(&mut tx, &mut rx, n)
        });
    }
    {
        let (mut tx, mut rx) = mpmc::channel(CAPACITY, 64).unwrap();
        per_msg("mpmc_send_recv_copy", n, || {
            mpmc_send_recv_copy(&mut tx, &mut rx, n)
        });
    }
    {
        let (mut tx, mut rx) = mpmc::channel(CAPACITY, 64).unwrap();
        per_msg("mpmc_batch16_send_recv", n, || {
            mpmc_batch16_send_recv(&mut tx, &mut rx, n)
        });
    }
    {
        let q = crossbeam_queue::ArrayQueue::<Msg>::new(CAPACITY);
        per_msg("arrayqueue_push_pop", n, || arrayqueue_push_pop(&q, n));
    }
}
