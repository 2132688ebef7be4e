//! Typed messages (`shmpipe::typed`, features `bytemuck` and `serde`) across real processes:
//! plain-old-data structs over every transport, wrong-size messages, in-place reads (aligned and
//! not), serde values and their decode failures, and a Python peer using `struct`.
//!
//! Children are this test binary re-run (`child_entry`, with the role in `SHMPIPE_IT_ROLE`, the
//! endpoint in `SHMPIPE_IT_RING` and `k=v` arguments in `SHMPIPE_IT_ARGS`: the protocol of
//! `tests/common`); they open their end with `shmpipe::open_sender`, so the typed calls run on
//! the `Box<dyn Sender>` every transport gives. Each test has its own place (a unique ring or
//! queue name, a private directory for a Unix socket, a fresh loopback port), declared before
//! the ends and children so that on every exit path the children are killed first and then the
//! segment, queue or directory is removed.
//!
//! Without both features this file compiles to nothing.
#![cfg(all(feature = "bytemuck", feature = "serde"))]

mod common;

use bytemuck::{Pod, Zeroable};
use common::{child_watchdog, free_port, tell, Proc, Queue, Ring, ARGS_ENV, RING_ENV, ROLE_ENV, SOON};
use serde::{Deserialize, Serialize, Serializer};
use shmpipe::ring::{mpmc, spsc, RingKind};
use shmpipe::typed::{PodReceiver, PodSender, TypedRecvError, TypedSendError, ValueReceiver, ValueSender};
use shmpipe::{
    Receiver, RecvError, RecvTimeoutError, SendError, Sender, TooLarge, TryRecvError, TrySendError,
};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Messages of the long plain-data streams.
const N: u64 = 10_000;
/// Largest message of every channel here.
const MAX: usize = 1024;

// ---------------------------------------------------------------------------------------------
// The types
// ---------------------------------------------------------------------------------------------

/// A quote as a C struct: mixed field sizes, its two bytes of tail padding an explicit field
/// (so every byte is initialised and it is `Pod`). Python: `struct.pack('<QIH2x', ...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Quote {
    price: u64,
    qty: u32,
    venue: u16,
    _pad: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<Quote>() == 16 && std::mem::align_of::<Quote>() == 8);

/// Quote `i`: every field different per message, with high bytes set.
fn quote(i: u64) -> Quote {
    Quote {
        price: 0x0123_4567_0000_0000 | i,
        qty: 0xa5a5_0000 | i as u32,
        venue: (i as u16).rotate_left(5),
        _pad: [0; 2],
    }
}

/// Checks `q` against quote `i`, field by field.
fn check_quote(i: u64, q: &Quote) {
    let want = quote(i);
    assert_eq!(q.price, want.price, "message {i}: price");
    assert_eq!(q.qty, want.qty, "message {i}: qty");
    assert_eq!(q.venue, want.venue, "message {i}: venue");
    assert_eq!(q._pad, [0; 2], "message {i}: padding");
}

/// A type aligned to 16: in a ring whose payloads start 8-aligned, only some slots suit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C, align(16))]
struct Wide {
    lo: u64,
    hi: u64,
}

/// A serde value with a string, a vector, an option and an enum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    symbol: String,
    legs: Vec<Leg>,
    side: Side,
    note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Leg {
    price: i64,
    qty: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Side {
    Buy,
    Sell { reason: String },
    Cross(u32, i16),
}

/// Order `i`.
fn order(i: u64) -> Order {
    Order {
        id: i * 1_000_003,
        symbol: format!("SYM{i}-é"),
        legs: (0..i % 4)
            .map(|k| Leg {
                price: -(i as i64) * 100 + k as i64,
                qty: k as u32 * 7,
            })
            .collect(),
        side: match i % 3 {
            0 => Side::Buy,
            1 => Side::Sell {
                reason: "x".repeat(i as usize % 50),
            },
            _ => Side::Cross(i as u32, -(i as i16)),
        },
        note: i.is_multiple_of(2).then(|| format!("note {i}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Places
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Spsc,
    Mpmc,
    Broadcast,
    Msgq,
    Unix,
    Tcp,
}

/// A fresh private directory (for a Unix socket), removed with its contents on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/shmpipe-typed-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a place removes when its test ends (held for its `Drop`).
#[allow(dead_code)]
enum Cleanup {
    Ring(Ring),
    Queue(Queue),
    Dir(TempDir),
    Nothing,
}

/// One test's channel: its endpoint and the guard that removes whatever is left of it.
struct Place {
    t: Transport,
    endpoint: String,
    cleanup: Cleanup,
}

impl Place {
    fn new(t: Transport, tag: &str) -> Place {
        let tag = format!("typed-{tag}-{t:?}");
        let ring = |mode: &str| {
            let ring = Ring::new(&tag);
            let endpoint = format!("shm://{}?mode={mode}&capacity=256&max_message={MAX}", ring.name);
            (endpoint, Cleanup::Ring(ring))
        };
        let (endpoint, cleanup) = match t {
            Transport::Spsc => ring("spsc"),
            Transport::Mpmc => ring("mpmc"),
            Transport::Broadcast => ring("broadcast"),
            Transport::Msgq => {
                let q = Queue::new(&tag);
                (format!("msgq://{}?max_message={MAX}", q.name), Cleanup::Queue(q))
            }
            Transport::Unix => {
                let dir = TempDir::new();
                let sock = dir.0.join("s.sock");
                (
                    format!("unix://{}?max_message={MAX}", sock.display()),
                    Cleanup::Dir(dir),
                )
            }
            Transport::Tcp => (
                format!("tcp://127.0.0.1:{}?max_message={MAX}", free_port()),
                Cleanup::Nothing,
            ),
        };
        Place { t, endpoint, cleanup }
    }

    fn ring(&self) -> &Ring {
        match &self.cleanup {
            Cleanup::Ring(r) => r,
            _ => panic!("{:?} is not a ring", self.t),
        }
    }

    fn open_receiver(&self) -> Box<dyn Receiver + Send> {
        shmpipe::open_receiver(&self.endpoint)
            .unwrap_or_else(|e| panic!("{:?}: open_receiver({}): {e}", self.t, self.endpoint))
    }

    /// Runs this binary as a child in `role` on this place's endpoint.
    fn child(&self, role: &str, args: &[(&str, u64)]) -> Proc {
        let args: Vec<(&str, String)> = args.iter().map(|&(k, v)| (k, v.to_string())).collect();
        Proc::child(role, &self.endpoint, &args)
    }
}

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

/// Not a test on its own: the entry point of the child processes (returns at once without
/// `SHMPIPE_IT_ROLE`).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    child_watchdog(Duration::from_secs(120));
    let endpoint = std::env::var(RING_ENV).expect("endpoint");
    let args = std::env::var(ARGS_ENV).unwrap_or_default();
    let arg = |k: &str| -> u64 {
        args.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .map_or(0, |(_, v)| v.parse().unwrap())
    };
    let mut tx = shmpipe::open_sender(&endpoint).unwrap_or_else(|e| fail(&format!("OPEN_ERR {e}")));
    match role.as_str() {
        "pod_send" => pod_send(&mut tx, arg("n"), arg("bad") == 1),
        "value_send" => value_send(&mut tx, arg("n"), arg("bad") == 1),
        other => panic!("unknown child role {other}"),
    }
    if let Err(e) = tx.flush_deadline(Instant::now().checked_add(SOON)) {
        fail(&format!("FLUSH_ERR {e:?}"));
    }
    drop(tx);
    tell("CLOSED");
}

/// Says `line` and exits with a failure status.
fn fail(line: &str) -> ! {
    tell(line);
    std::process::exit(3);
}

/// The junk message sent after quote `i` when asked: 5 or 17 bytes, never a `Quote`.
fn junk(i: u64) -> Vec<u8> {
    vec![0xee; if i.is_multiple_of(2) { 5 } else { 17 }]
}

/// `pod_send`: quotes `0..n` with `send_pod`; with `bad=1`, [`junk`] after each but the last.
fn pod_send(tx: &mut Box<dyn Sender + Send>, n: u64, bad: bool) {
    for i in 0..n {
        if let Err(e) = tx.send_pod_timeout(&quote(i), SOON) {
            fail(&format!("SEND_ERR {i} {e:?}"));
        }
        if bad && i + 1 < n {
            if let Err(e) = tx.send_timeout(&junk(i), SOON) {
                fail(&format!("SEND_ERR junk {i} {e:?}"));
            }
        }
    }
}

/// The junk message sent after order `i` when asked: for order 0, bytes that do not decode as
/// an `Order` (a varint cut short); for the others, a whole order with a byte after it.
fn value_junk(i: u64) -> Vec<u8> {
    if i == 0 {
        vec![0xff, 0xff, 0xff]
    } else {
        let mut v = postcard_bytes(&order(i));
        v.push(0);
        v
    }
}

/// The postcard encoding of `v`, as `send_value` sends it (seen through an in-process ring).
fn postcard_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    let (mut tx, mut rx) = spsc::channel(2, 4096).unwrap();
    tx.send_value(v).unwrap();
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    buf
}

/// `value_send`: orders `0..n` with `send_value`; with `bad=1`, [`value_junk`] after each but
/// the last.
fn value_send(tx: &mut Box<dyn Sender + Send>, n: u64, bad: bool) {
    for i in 0..n {
        if let Err(e) = tx.send_value_timeout(&order(i), SOON) {
            fail(&format!("SEND_ERR {i} {e:?}"));
        }
        if bad && i + 1 < n {
            if let Err(e) = tx.send_timeout(&value_junk(i), SOON) {
                fail(&format!("SEND_ERR junk {i} {e:?}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plain old data across processes
// ---------------------------------------------------------------------------------------------

/// 10k quotes from a child's `send_pod` to our `recv_pod_timeout`, in order, field by field,
/// then the end of the stream.
fn pod_stream(t: Transport) {
    let place = Place::new(t, "pod");
    let mut rx = place.open_receiver();
    let mut child = place.child("pod_send", &[("n", N)]);
    for i in 0..N {
        match rx.recv_pod_timeout::<Quote>(SOON) {
            Ok(q) => check_quote(i, &q),
            Err(e) => panic!("{t:?}: message {i}: {e}; child stderr:\n{}", child.stderr_text()),
        }
    }
    assert_eq!(
        rx.recv_pod_timeout::<Quote>(SOON),
        Err(TypedRecvError::Channel(RecvTimeoutError::Disconnected))
    );
    assert_eq!(child.line(SOON), "CLOSED");
    child.wait_success(SOON);
}

#[test]
fn pod_stream_spsc() {
    pod_stream(Transport::Spsc)
}

#[test]
fn pod_stream_mpmc() {
    pod_stream(Transport::Mpmc)
}

#[test]
fn pod_stream_broadcast() {
    pod_stream(Transport::Broadcast)
}

#[test]
fn pod_stream_msgq() {
    pod_stream(Transport::Msgq)
}

#[test]
fn pod_stream_unix() {
    pod_stream(Transport::Unix)
}

#[test]
fn pod_stream_tcp() {
    pod_stream(Transport::Tcp)
}

/// Checks that `r` is the wrong-size error for the junk after quote `i`.
fn assert_wrong_size<E: std::fmt::Debug + std::fmt::Display, T>(r: Result<T, TypedRecvError<E>>, i: u64) {
    let got = junk(i).len();
    match r {
        Err(e @ TypedRecvError::WrongSize { .. }) => {
            let TypedRecvError::WrongSize {
                type_name,
                expected,
                got: len,
            } = &e
            else {
                unreachable!()
            };
            assert!(type_name.ends_with("Quote"), "{type_name}");
            assert_eq!((*expected, *len), (16, got));
            assert_eq!(
                e.to_string(),
                format!(
                    "received a {got}-byte message where a `{type_name}` of 16 bytes was expected; \
                     the message was dropped"
                )
            );
        }
        Err(e) => panic!("junk after {i}: {e:?}"),
        Ok(_) => panic!("junk after {i}: received as a value"),
    }
}

/// Quotes with a wrong-size message after each: each is the typed error, and the quote after it
/// is still received.
fn pod_wrong_size(t: Transport) {
    let place = Place::new(t, "podbad");
    let mut rx = place.open_receiver();
    let n = 20;
    let mut child = place.child("pod_send", &[("n", n), ("bad", 1)]);
    for i in 0..n {
        check_quote(i, &rx.recv_pod_timeout::<Quote>(SOON).unwrap());
        if i + 1 < n {
            assert_wrong_size(rx.recv_pod_timeout::<Quote>(SOON), i);
        }
    }
    assert_eq!(
        rx.recv_pod_timeout::<Quote>(SOON),
        Err(TypedRecvError::Channel(RecvTimeoutError::Disconnected))
    );
    child.wait_success(SOON);
}

#[test]
fn pod_wrong_size_spsc() {
    pod_wrong_size(Transport::Spsc)
}

#[test]
fn pod_wrong_size_msgq() {
    pod_wrong_size(Transport::Msgq)
}

#[test]
fn pod_wrong_size_unix() {
    pod_wrong_size(Transport::Unix)
}

/// The same stream read in place from the shared-memory SPSC ring with `recv_pod_ref_timeout`:
/// a `Quote` (8-aligned) is always lent in place.
#[test]
fn pod_ref_across_processes_spsc() {
    let place = Place::new(Transport::Spsc, "podref");
    let mut rx = place.ring().cfg(256, MAX).open_receiver().unwrap();
    let n = 1000;
    let mut child = place.child("pod_send", &[("n", n), ("bad", 1)]);
    for i in 0..n {
        let q = rx.recv_pod_ref_timeout::<Quote>(SOON).unwrap();
        assert!(q.is_in_place(), "message {i}");
        check_quote(i, &q);
        drop(q);
        if i + 1 < n {
            assert_wrong_size(rx.recv_pod_ref_timeout::<Quote>(SOON), i);
        }
    }
    assert!(matches!(
        rx.recv_pod_ref_timeout::<Quote>(SOON),
        Err(TypedRecvError::Channel(RecvTimeoutError::Disconnected))
    ));
    child.wait_success(SOON);
}

/// ... and from the MPMC ring.
#[test]
fn pod_ref_across_processes_mpmc() {
    let place = Place::new(Transport::Mpmc, "podref");
    let mut rx = place
        .ring()
        .cfg(256, MAX)
        .kind(RingKind::Mpmc)
        .open_mpmc_receiver()
        .unwrap();
    let n = 1000;
    let mut child = place.child("pod_send", &[("n", n), ("bad", 1)]);
    for i in 0..n {
        let q = rx.recv_pod_ref_timeout::<Quote>(SOON).unwrap();
        assert!(q.is_in_place(), "message {i}");
        check_quote(i, &q);
        drop(q);
        if i + 1 < n {
            assert_wrong_size(rx.recv_pod_ref_timeout::<Quote>(SOON), i);
        }
    }
    child.wait_success(SOON);
    assert!(matches!(
        rx.recv_pod_ref_timeout::<Quote>(SOON),
        Err(TypedRecvError::Channel(RecvTimeoutError::Disconnected))
    ));
}

// ---------------------------------------------------------------------------------------------
// In-place reads and alignment (in process)
// ---------------------------------------------------------------------------------------------

/// A 16-aligned type on an SPSC ring, whose 16-byte messages take 24-byte records: their
/// payloads alternate between 16-aligned and not. Both are read right: in place, or copied.
#[test]
fn pod_ref_misaligned_is_copied_and_aligned_is_in_place() {
    let (mut tx, mut rx) = spsc::channel(64, 64).unwrap();
    let (mut in_place, mut copied) = (0, 0);
    for round in 0..20u64 {
        for k in 0..3 {
            let i = round * 3 + k;
            tx.try_send_pod(&Wide { lo: i, hi: !i }).unwrap();
        }
        for k in 0..3 {
            let i = round * 3 + k;
            let w = rx.try_recv_pod_ref::<Wide>().unwrap();
            assert_eq!(*w, Wide { lo: i, hi: !i });
            // What `Deref` gives is a properly aligned `&Wide` either way.
            assert!((&*w as *const Wide).is_aligned());
            if w.is_in_place() {
                in_place += 1;
            } else {
                copied += 1;
            }
        }
    }
    assert!(in_place > 0 && copied > 0, "in place {in_place}, copied {copied}");
    assert!(matches!(
        rx.try_recv_pod_ref::<Wide>(),
        Err(TypedRecvError::Channel(TryRecvError::Empty))
    ));
}

/// The copying receive does not care about alignment at all, and the MPMC ring's in-place read
/// of a 16-aligned type is right whichever way its slots fall.
#[test]
fn pod_alignment_on_mpmc_and_copying_receives() {
    let (mut tx, mut rx) = mpmc::channel(8, 64).unwrap();
    for i in 0..40u64 {
        tx.try_send_pod(&Wide { lo: i, hi: i << 32 }).unwrap();
        if i.is_multiple_of(2) {
            assert_eq!(
                *rx.try_recv_pod_ref::<Wide>().unwrap(),
                Wide { lo: i, hi: i << 32 }
            );
        } else {
            assert_eq!(rx.try_recv_pod::<Wide>().unwrap(), Wide { lo: i, hi: i << 32 });
        }
    }
    let (mut tx, mut rx) = spsc::channel(8, 64).unwrap();
    for i in 0..40u64 {
        tx.try_send_pod(&Wide { lo: i, hi: 7 }).unwrap();
        assert_eq!(rx.try_recv_pod::<Wide>().unwrap(), Wide { lo: i, hi: 7 });
    }
}

/// A wrong-size message read in place is consumed with the error; the next one is there.
#[test]
fn pod_ref_wrong_size_is_consumed() {
    let (mut tx, mut rx) = spsc::channel(8, 64).unwrap();
    tx.try_send(b"short").unwrap();
    tx.try_send_pod(&quote(1)).unwrap();
    assert_wrong_size(rx.try_recv_pod_ref::<Quote>(), 0);
    check_quote(1, &rx.try_recv_pod_ref::<Quote>().unwrap());
    assert!(matches!(
        rx.try_recv_pod_ref::<Quote>(),
        Err(TypedRecvError::Channel(TryRecvError::Empty))
    ));

    let (mut tx, mut rx) = mpmc::channel(8, 64).unwrap();
    tx.try_send(&junk(1)).unwrap();
    tx.try_send_pod(&quote(2)).unwrap();
    assert_wrong_size(rx.try_recv_pod_ref::<Quote>(), 1);
    check_quote(2, &rx.try_recv_pod_ref::<Quote>().unwrap());
}

/// A held `PodRef` holds its message: the ring's room comes back when it drops.
#[test]
fn pod_ref_frees_its_room_on_drop() {
    let (mut tx, mut rx) = mpmc::channel(2, 16).unwrap();
    tx.try_send_pod(&quote(0)).unwrap();
    tx.try_send_pod(&quote(1)).unwrap();
    assert_eq!(tx.try_send_pod(&quote(2)), Err(TrySendError::Full));
    let q = rx.try_recv_pod_ref::<Quote>().unwrap();
    check_quote(0, &q);
    assert_eq!(tx.try_send_pod(&quote(2)), Err(TrySendError::Full));
    drop(q);
    tx.try_send_pod(&quote(2)).unwrap();
}

/// The other forms: timeouts, empty, too large, unit and arrays, and `Box<dyn _>`.
#[test]
fn pod_forms_and_errors() {
    let (tx, rx) = spsc::channel(8, 16).unwrap();
    let (mut tx, mut rx): (Box<dyn Sender>, Box<dyn Receiver>) = (Box::new(tx), Box::new(rx));
    assert_eq!(
        rx.try_recv_pod::<u64>(),
        Err(TypedRecvError::Channel(TryRecvError::Empty))
    );
    let t0 = Instant::now();
    assert_eq!(
        rx.recv_pod_timeout::<u64>(Duration::from_millis(20)),
        Err(TypedRecvError::Channel(RecvTimeoutError::Timeout))
    );
    assert!(t0.elapsed() >= Duration::from_millis(20));
    assert_eq!(
        tx.send_pod(&[0u64; 3]),
        Err(SendError::TooLarge(TooLarge { len: 24, max: 16 }))
    );
    tx.send_pod(&()).unwrap();
    tx.send_pod_timeout(&[1u32, 2, 3, 4], SOON).unwrap();
    tx.send_pod_deadline(&-5i16, None).unwrap();
    rx.recv_pod::<()>().unwrap();
    assert_eq!(rx.recv_pod_deadline::<[u32; 4]>(None).unwrap(), [1, 2, 3, 4]);
    // Two bytes, received as a u32: wrong size, named.
    match rx.recv_pod::<u32>() {
        Err(TypedRecvError::WrongSize {
            type_name: "u32",
            expected: 4,
            got: 2,
        }) => {}
        other => panic!("{other:?}"),
    }
    drop(tx);
    assert_eq!(
        rx.recv_pod::<u32>(),
        Err(TypedRecvError::Channel(RecvError::Disconnected))
    );
}

// ---------------------------------------------------------------------------------------------
// serde values
// ---------------------------------------------------------------------------------------------

/// Orders from a child's `send_value`, with junk after each: a message that does not decode
/// (the error names `Order` and postcard's complaint) and whole orders with a byte left over
/// (wrong size); the order after each is still received.
fn value_round_trip(t: Transport) {
    let place = Place::new(t, "value");
    let mut rx = place.open_receiver();
    let n = 200;
    let mut child = place.child("value_send", &[("n", n), ("bad", 1)]);
    for i in 0..n {
        match rx.recv_value_timeout::<Order>(SOON) {
            Ok(o) => assert_eq!(o, order(i), "message {i}"),
            Err(e) => panic!("{t:?}: message {i}: {e}; child stderr:\n{}", child.stderr_text()),
        }
        if i + 1 == n {
            break;
        }
        let junk_len = value_junk(i).len();
        match rx.recv_value_timeout::<Order>(SOON) {
            Err(e @ TypedRecvError::Decode { .. }) if i == 0 => {
                let TypedRecvError::Decode {
                    type_name,
                    len,
                    error,
                } = &e
                else {
                    unreachable!()
                };
                assert!(type_name.ends_with("Order"), "{type_name}");
                assert_eq!(*len, 3);
                assert_eq!(format!("{error:?}"), "DeserializeUnexpectedEnd");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "received a 3-byte message that does not decode as a `{type_name}` \
                         (Hit the end of buffer, expected more data); the message was dropped"
                    )
                );
            }
            Err(TypedRecvError::WrongSize {
                type_name,
                expected,
                got,
            }) if i > 0 => {
                assert!(type_name.ends_with("Order"), "{type_name}");
                assert_eq!((expected, got), (junk_len - 1, junk_len));
            }
            other => panic!("{t:?}: junk after {i}: {other:?}"),
        }
    }
    assert_eq!(
        rx.recv_value_timeout::<Order>(SOON),
        Err(TypedRecvError::Channel(RecvTimeoutError::Disconnected))
    );
    child.wait_success(SOON);
}

#[test]
fn value_round_trip_spsc() {
    value_round_trip(Transport::Spsc)
}

#[test]
fn value_round_trip_tcp() {
    value_round_trip(Transport::Tcp)
}

#[test]
fn value_round_trip_msgq() {
    value_round_trip(Transport::Msgq)
}

/// A sequence postcard cannot encode (no length up front).
struct Unsized;

impl Serialize for Unsized {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..3u8).filter(|_| true))
    }
}

/// Encoding failures, too-large values, the other forms, and decode errors in process.
#[test]
fn value_forms_and_errors() {
    let (mut tx, mut rx) = spsc::channel(8, 64).unwrap();
    match tx.send_value(&Unsized) {
        Err(e @ TypedSendError::Encode { .. }) => {
            let TypedSendError::Encode { type_name, error } = &e else {
                unreachable!()
            };
            assert!(type_name.ends_with("Unsized"), "{type_name}");
            assert_eq!(format!("{error:?}"), "SerializeSeqLengthUnknown");
            assert!(e.to_string().starts_with("cannot encode a `"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rx.try_recv_value::<Vec<u8>>(),
        Err(TypedRecvError::Channel(TryRecvError::Empty))
    );
    // 100 bytes and a one-byte length: 101 bytes.
    assert_eq!(
        tx.send_value(&vec![7u8; 100]),
        Err(TypedSendError::Channel(SendError::TooLarge(TooLarge {
            len: 101,
            max: 64
        })))
    );
    tx.try_send_value("hello").unwrap();
    tx.send_value_timeout(&Some(-1i64), SOON).unwrap();
    tx.send_value_deadline(&(1u8, String::from("x")), None).unwrap();
    tx.send_value(&300u16).unwrap();
    assert_eq!(rx.try_recv_value::<String>().unwrap(), "hello");
    assert_eq!(rx.recv_value_timeout::<Option<i64>>(SOON).unwrap(), Some(-1));
    assert_eq!(
        rx.recv_value_deadline::<(u8, String)>(None).unwrap(),
        (1, "x".to_string())
    );
    // 300 as a varint (two bytes) is not a bool.
    match rx.recv_value::<bool>() {
        Err(TypedRecvError::Decode {
            type_name: "bool",
            len: 2,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rx.try_recv_value::<bool>(),
        Err(TypedRecvError::Channel(TryRecvError::Empty))
    );
    drop(tx);
    assert_eq!(
        rx.recv_value::<bool>(),
        Err(TypedRecvError::Channel(RecvError::Disconnected))
    );
}

/// Errors are `std::error::Error`s that `?` turns into a `Box<dyn Error>`.
#[test]
fn typed_errors_box() -> Result<(), Box<dyn std::error::Error>> {
    let (mut tx, mut rx) = spsc::channel(8, 64)?;
    tx.send_value(&order(5))?;
    tx.send_pod(&quote(5))?;
    assert_eq!(rx.recv_value::<Order>()?, order(5));
    check_quote(5, &rx.recv_pod::<Quote>()?);
    let e: Box<dyn std::error::Error> = rx.try_recv_pod::<Quote>().unwrap_err().into();
    assert_eq!(e.to_string(), "receiving on an empty channel");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A Python peer (README, "Socket wire format")
// ---------------------------------------------------------------------------------------------

/// Python's `struct.pack('<QIH2x', price, qty, venue)` is a `Quote`, both ways, over Unix
/// sockets (framed as the README says). Skipped without `python3`, unless
/// `SHMPIPE_REQUIRE_PYTHON` is set (as CI does).
#[test]
fn python_peer_reads_and_writes_quotes() {
    if !Command::new("python3")
        .args(["-c", "import socket, struct"])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            std::env::var_os("SHMPIPE_REQUIRE_PYTHON").is_none(),
            "python3 is required (SHMPIPE_REQUIRE_PYTHON is set) but not found"
        );
        eprintln!("python3 not found: skipping");
        return;
    }
    let dir = TempDir::new();
    let (to_us, from_us) = (dir.0.join("in.sock"), dir.0.join("out.sock"));
    let mut rx = shmpipe::open_receiver(&format!("unix://{}", to_us.display())).unwrap();
    let mut tx = shmpipe::open_sender(&format!("unix://{}?listen=sender", from_us.display())).unwrap();
    let script = r#"
import socket, struct, sys

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("stream closed")
        buf += chunk
    return buf

s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
for i in range(3):
    payload = struct.pack("<QIH2x", 0x0123456700000000 | i, 0xa5a50000 | i, (i << 5) & 0xffff)
    s.sendall(struct.pack("<I", len(payload)) + payload)
s.close()

s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[2])
n = struct.unpack("<I", recv_exact(s, 4))[0]
price, qty, venue = struct.unpack("<QIH2x", recv_exact(s, n))
print(f"{price} {qty} {venue}", flush=True)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(&to_us).arg(&from_us);
    let mut py = Proc::spawn(cmd, common::Stdout::Collect);
    for i in 0..3 {
        check_quote(i, &rx.recv_pod_timeout::<Quote>(SOON).unwrap());
    }
    tx.send_pod_timeout(&quote(9), SOON).unwrap();
    tx.flush_deadline(Instant::now().checked_add(SOON)).unwrap();
    let (status, out) = py.wait_output(SOON);
    assert!(
        status.success(),
        "python: {status}; stderr:\n{}",
        py.stderr_text()
    );
    let q = quote(9);
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        format!("{} {} {}", q.price, q.qty, q.venue)
    );
}
