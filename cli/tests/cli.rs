//! The `shmpipe` command-line tool between real processes: `send` and `recv` round trips
//! (either one started first), end-of-stream and error exits, peer death, oversize lines, bad
//! endpoints. Peers are the CLI binary itself, this test binary re-run in a role (see
//! `tests/common`), or this process through the library.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use shmpipe::{Peer, SendTimeoutError, Sender};
use std::io::Write;
use std::process::ChildStdin;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    child_main();
}

/// Generous bound for a CLI run over a million lines in a debug build on a busy 2-core box.
const LONG: Duration = Duration::from_secs(120);

/// `seq 1 n` output.
fn seq_lines(n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=n {
        writeln!(v, "{i}").unwrap();
    }
    v
}

/// Feeds `data` into a child's stdin on a thread, then closes it.
fn feed(mut stdin: ChildStdin, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // A child that died early closes the pipe: the test's own assertions report it.
        let _ = stdin.write_all(&data);
    })
}

/// Compares outputs without dumping megabytes on failure.
fn assert_same_bytes(got: &[u8], expected: &[u8]) {
    if got != expected {
        let at = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        let around = |v: &[u8]| {
            String::from_utf8_lossy(&v[at.saturating_sub(20)..(at + 20).min(v.len())]).into_owned()
        };
        panic!(
            "output differs at byte {at} (got {} bytes, expected {}): got {:?}, expected {:?}",
            got.len(),
            expected.len(),
            around(got),
            around(expected)
        );
    }
}

fn million_line_round_trip(receiver_first: bool, send_wait: &str, recv_wait: &str) {
    let ring = Ring::new(if receiver_first {
        "cli-rx-first"
    } else {
        "cli-tx-first"
    });
    let ep = ring.endpoint();
    let input = seq_lines(1_000_000);
    let send_args = ["send", ep.as_str(), "--wait", send_wait];
    let recv_args = ["recv", ep.as_str(), "--wait", recv_wait];
    let (mut send, mut recv, feeder);
    if receiver_first {
        recv = Proc::cli(&recv_args, Stdout::Collect);
        ring.wait_exists(SOON);
        send = Proc::cli(&send_args, Stdout::Null);
        feeder = feed(send.take_stdin(), input.clone());
    } else {
        send = Proc::cli(&send_args, Stdout::Null);
        feeder = feed(send.take_stdin(), input.clone());
        ring.wait_exists(SOON);
        // Let the sender fill the ring and block on it with no receiver yet.
        std::thread::sleep(Duration::from_millis(200));
        recv = Proc::cli(&recv_args, Stdout::Collect);
    }
    send.wait_success(LONG);
    feeder.join().unwrap();
    let (status, out) = recv.wait_output(LONG);
    assert!(
        status.success(),
        "recv: {status}; stderr:\n{}",
        recv.stderr_text()
    );
    assert_eq!(
        recv.stderr_text(),
        "",
        "a clean end of stream prints nothing to stderr"
    );
    assert_same_bytes(&out, &input);
    ring.assert_gone("after send and recv exited");
}

#[test]
fn cli_round_trip_of_a_million_lines_receiver_started_first() {
    million_line_round_trip(true, "adaptive", "park");
}

#[test]
fn cli_round_trip_of_a_million_lines_sender_started_first() {
    million_line_round_trip(false, "park", "adaptive");
}

#[test]
fn cli_round_trip_with_spinning_waits() {
    let ring = Ring::new("cli-spin");
    let ep = ring.endpoint();
    let input = seq_lines(20_000);
    let mut recv = Proc::cli(
        &["recv", &ep, "--wait", "spin", "--capacity", "16"],
        Stdout::Collect,
    );
    ring.wait_exists(SOON);
    let mut send = Proc::cli(&["send", &ep, "--wait", "spin"], Stdout::Null);
    let feeder = feed(send.take_stdin(), input.clone());
    send.wait_success(LONG);
    feeder.join().unwrap();
    let (status, out) = recv.wait_output(LONG);
    assert!(status.success());
    assert_same_bytes(&out, &input);
    ring.assert_gone("after send and recv exited");
}

#[test]
fn cli_lines_are_messages_byte_for_byte_including_empty_and_binary_lines() {
    let ring = Ring::new("cli-bytes");
    let ep = ring.endpoint();
    let input: Vec<u8> = b"a\n\n\xff\xfe\x00binary\r\n  spaces  \nlast-without-newline".to_vec();
    let mut send = Proc::cli(&["send", &ep], Stdout::Null);
    feed(send.take_stdin(), input.clone()).join().unwrap();
    send.wait_success(SOON);
    let mut recv = Proc::cli(&["recv", &ep], Stdout::Collect);
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "{}", recv.stderr_text());
    // Every message is printed with a newline, so only the last line gains one.
    let mut expected = input;
    expected.push(b'\n');
    assert_same_bytes(&out, &expected);
    ring.assert_gone("after recv drained and exited");
}

#[test]
fn cli_messages_of_a_finished_sender_wait_for_the_receiver() {
    let ring = Ring::new("cli-queue");
    let ep = ring.endpoint();
    let mut send = Proc::cli(&["send", &ep], Stdout::Null);
    feed(send.take_stdin(), seq_lines(10)).join().unwrap();
    send.wait_success(SOON);
    assert!(ring.exists(), "unread messages keep the ring");
    // A second sender is refused while they are unread.
    let mut second = Proc::cli(&["send", &ep], Stdout::Null);
    second.close_stdin();
    let status = second.wait(SOON);
    assert_eq!(status.code(), Some(1));
    assert!(
        second.stderr_text().contains("in use"),
        "{}",
        second.stderr_text()
    );
    let mut recv = Proc::cli(&["recv", &ep], Stdout::Collect);
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "{}", recv.stderr_text());
    assert_same_bytes(&out, &seq_lines(10));
    ring.assert_gone("after recv drained and exited");
}

#[test]
fn cli_send_with_empty_input_exits_0_and_leaves_no_segment() {
    let ring = Ring::new("cli-empty");
    let mut send = Proc::cli(&["send", &ring.endpoint()], Stdout::Null);
    send.close_stdin();
    send.wait_success(SOON);
    assert_eq!(send.stderr_text(), "");
    ring.assert_gone("a sender that sent nothing and had no receiver");
}

#[test]
fn cli_recv_count_exits_after_n_and_the_sender_is_told_the_receiver_closed() {
    let ring = Ring::new("cli-count");
    let ep = ring.endpoint();
    // Two records of 16 bytes (for lines of up to 8 bytes) and the free header word.
    let mut recv = Proc::cli(
        &[
            "recv",
            &ep,
            "--count",
            "3",
            "--capacity",
            "2",
            "--max-message",
            "8",
        ],
        Stdout::Collect,
    );
    ring.wait_exists(SOON);
    let mut send = Proc::cli(&["send", &ep], Stdout::Null);
    let feeder = feed(send.take_stdin(), seq_lines(10));
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "{}", recv.stderr_text());
    assert_same_bytes(&out, b"1\n2\n3\n");
    // At most 3 read + 2 in the ring: the sender cannot finish 10 lines.
    let status = send.wait(SOON);
    feeder.join().unwrap();
    assert_eq!(status.code(), Some(1), "{}", send.stderr_text());
    let err = send.stderr_text();
    assert!(err.contains("receiver closed the channel"), "{err}");
    ring.assert_gone("after both exited");
}

#[test]
fn cli_send_of_a_too_long_line_fails_after_sending_the_lines_before_it() {
    let ring = Ring::new("cli-oversize");
    let ep = ring.endpoint();
    let mut recv = Proc::cli(&["recv", &ep, "--max-message", "8"], Stdout::Collect);
    ring.wait_exists(SOON);
    let mut send = Proc::cli(&["send", &ep], Stdout::Null);
    feed(send.take_stdin(), b"a\n12345678\n123456789\nccc\n".to_vec())
        .join()
        .unwrap();
    let status = send.wait(SOON);
    assert_eq!(status.code(), Some(1));
    let err = send.stderr_text();
    for part in ["line 3", "9 bytes", "maximum of 8 bytes"] {
        assert!(err.contains(part), "stderr {err:?} should mention {part:?}");
    }
    // The receiver got the lines before it, then a clean end of stream (the sender closed).
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "{}", recv.stderr_text());
    assert_same_bytes(&out, b"a\n12345678\n");
    ring.assert_gone("after both exited");
}

#[test]
fn cli_recv_exits_1_saying_the_sender_died_when_the_sender_is_sigkilled() {
    let ring = Ring::new("cli-sender-dies");
    let mut recv = Proc::cli(&["recv", &ring.endpoint()], Stdout::Lines);
    ring.wait_exists(SOON);
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", "5".into()), ("text", "1".into()), ("hold", "1".into())],
    );
    child.expect("READY");
    for i in 0..5 {
        assert_eq!(recv.line(SOON), format!("line-{i}"));
    }
    child.expect("SENT");
    child.kill();
    let killed = Instant::now();
    let status = recv.wait(SOON);
    assert!(
        killed.elapsed() < DEATH_BOUND,
        "recv noticed after {:?}",
        killed.elapsed()
    );
    assert_eq!(status.code(), Some(1));
    let err = recv.stderr_text();
    assert!(err.contains("sending process died"), "{err}");
    assert!(err.contains("after 5 messages"), "{err}");
    ring.assert_gone("after recv exited");
}

#[test]
fn cli_recv_drains_a_killed_senders_messages_then_exits_1() {
    let ring = Ring::new("cli-dead-queue");
    let mut child = Proc::child(
        "sender",
        &ring.name,
        &[("n", "7".into()), ("text", "1".into()), ("hold", "1".into())],
    );
    child.expect("READY");
    child.expect("SENT");
    child.kill();
    child.wait(SOON);
    let mut recv = Proc::cli(&["recv", &ring.endpoint()], Stdout::Collect);
    let (status, out) = recv.wait_output(SOON);
    let expected: String = (0..7).map(|i| format!("line-{i}\n")).collect();
    assert_same_bytes(&out, expected.as_bytes());
    assert_eq!(status.code(), Some(1));
    let err = recv.stderr_text();
    assert!(err.contains("sending process died after 7 messages"), "{err}");
    ring.assert_gone("after recv exited");
}

#[test]
fn cli_send_exits_1_saying_the_receiver_died_when_the_receiver_is_sigkilled() {
    let ring = Ring::new("cli-receiver-dies");
    // A receiver that never reads: the sender fills the ring and blocks. 5 records of 1024
    // bytes, less the free header word, hold 319 lines of up to 8 bytes (16 bytes each).
    let fits = (5 * record(1024) - 8) / 16;
    let mut child = Proc::child(
        "hold",
        &ring.name,
        &[("side", "receiver".into()), ("cap", "4".into())],
    );
    child.expect("READY");
    let mut send = Proc::cli(&["send", &ring.endpoint()], Stdout::Null);
    let feeder = feed(send.take_stdin(), seq_lines(1000));
    let seg = RawSeg::attach_key(ring.key);
    let deadline = Instant::now() + SOON;
    while seg.u64(off::SENT) < fits as u64 {
        assert!(Instant::now() < deadline, "the sender never filled the ring");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(seg);
    std::thread::sleep(Duration::from_millis(100));
    assert!(send.stderr_text().is_empty());
    child.kill();
    let killed = Instant::now();
    let status = send.wait(SOON);
    assert!(
        killed.elapsed() < DEATH_BOUND,
        "send noticed after {:?}",
        killed.elapsed()
    );
    feeder.join().unwrap();
    assert_eq!(status.code(), Some(1));
    let err = send.stderr_text();
    assert!(
        err.contains(&format!("receiving process died after {fits} messages")),
        "{err}"
    );
    ring.assert_gone("after send exited");
}

#[test]
fn a_cli_receiver_blocked_on_its_stdout_is_sigkilled_and_the_blocked_producer_gets_disconnected() {
    let ring = Ring::new("cli-rx-killed");
    // The receiver creates a 4-slot ring; nobody reads its stdout, so once the pipe is full it
    // stops consuming and the ring fills.
    let recv = Proc::cli(
        &[
            "recv",
            &ring.endpoint(),
            "--capacity",
            "4",
            "--count",
            "100000000",
        ],
        Stdout::Unread,
    );
    ring.wait_exists(SOON);
    let mut tx = ring.cfg(4, 1024).open_sender().unwrap();
    assert_eq!(tx.capacity(), 4);
    let msg = vec![b'x'; 1000];
    let deadline = Instant::now() + SOON;
    loop {
        match tx.send_timeout(&msg, Duration::from_millis(200)) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(Instant::now() < deadline, "the receiver never stopped consuming");
    }
    assert_eq!(tx.receiver(), Peer::Alive);
    let pid = recv.pid;
    let killer = after(Duration::from_millis(300), move || {
        // SAFETY: plain syscall on our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let r = tx.send_timeout(&msg, Duration::from_secs(20));
    let returned = Instant::now();
    let killed_at = killer.join().unwrap();
    assert_eq!(r, Err(SendTimeoutError::Disconnected));
    assert!(returned >= killed_at);
    assert!(
        returned - killed_at < DEATH_BOUND,
        "noticed after {:?}",
        returned - killed_at
    );
    assert_eq!(tx.receiver(), Peer::Dead);
    drop(recv);
    drop(tx);
    ring.assert_gone("after the surviving producer dropped");
}

#[test]
fn cli_bad_endpoints_and_options_exit_1_with_a_message_and_create_nothing() {
    let ring = Ring::new("cli-bad");
    let n = ring.name.clone();
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (vec!["shm://".into()], &["bad endpoint", "1 to 64 characters"]),
        (vec!["shm://a/b".into()], &["bad endpoint", "\"a/b\""]),
        (
            vec!["foo://x".into()],
            &["bad endpoint", "unsupported scheme \"foo\"", "shm://"],
        ),
        (vec!["orders".into()], &["bad endpoint", "no scheme"]),
        (
            vec![format!("shm://{n}?capacity=3")],
            &["invalid configuration", "power of two", "got 3"],
        ),
        (
            vec![format!("shm://{n}?capacity=0")],
            &["invalid configuration", "power of two", "got 0"],
        ),
        (
            vec![format!("shm://{n}?bogus=1")],
            &["bad endpoint", "unknown option \"bogus\""],
        ),
        (
            vec![format!("shm://{n}"), "--capacity".into(), "3".into()],
            &["invalid configuration", "got 3"],
        ),
        (
            vec![format!("shm://{n}"), "--max-message".into(), "0".into()],
            &["invalid configuration", "got 0"],
        ),
        (
            vec![format!("shm://{n}"), "--wait".into(), "sometimes".into()],
            &["adaptive, spin or park"],
        ),
    ];
    for (args, parts) in cases {
        for cmd in ["send", "recv"] {
            let mut all = vec![cmd];
            all.extend(args.iter().map(String::as_str));
            let mut p = Proc::cli(&all, Stdout::Collect);
            p.close_stdin();
            let (status, out) = p.wait_output(SOON);
            let err = p.stderr_text();
            assert_eq!(status.code(), Some(1), "{all:?}: {err}");
            assert!(out.is_empty(), "{all:?}");
            assert!(err.starts_with("shmpipe: "), "{all:?}: {err}");
            for part in parts {
                assert!(
                    err.contains(part),
                    "{all:?}: stderr {err:?} should mention {part:?}"
                );
            }
        }
        ring.assert_gone(&format!("{args:?} must not create a segment"));
    }
    // Usage errors are clap's: exit 2.
    for args in [
        &["send"][..],
        &["recv", "shm://x", "--count", "lots"],
        &["frobnicate"],
    ] {
        let mut p = Proc::cli(args, Stdout::Null);
        p.close_stdin();
        assert_eq!(p.wait(SOON).code(), Some(2), "{args:?}: {}", p.stderr_text());
    }
}

#[test]
fn cli_round_trip_on_a_ring_with_a_name_of_the_maximum_64_characters() {
    let base = Ring::new("max-name");
    let mut name = base.name.clone();
    while name.len() < 64 {
        name.push('x');
    }
    let ring = Ring {
        key: shmpipe::transport::shm::key_for_name(&name),
        name,
    };
    assert!(!ring.exists());
    let ep = ring.endpoint();
    let mut send = Proc::cli(&["send", &ep], Stdout::Null);
    feed(send.take_stdin(), b"one\ntwo\nthree\n".to_vec())
        .join()
        .unwrap();
    send.wait_success(SOON);
    let mut recv = Proc::cli(&["recv", &ep], Stdout::Collect);
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "{}", recv.stderr_text());
    assert_same_bytes(&out, b"one\ntwo\nthree\n");
    ring.assert_gone("after recv exited");
    let mut long = Proc::cli(&["send", &format!("{ep}y")], Stdout::Null);
    long.close_stdin();
    assert_eq!(long.wait(SOON).code(), Some(1), "65 characters are refused");
}

#[test]
fn cli_demo_streams_checked_messages_through_a_child_and_leaves_no_segment() {
    let mut demo = Proc::cli(&["demo", "--messages", "20000", "--size", "32"], Stdout::Collect);
    let key = shmpipe::transport::shm::key_for_name(&format!("demo-{}", demo.pid));
    let (status, out) = demo.wait_output(LONG);
    remove_key_after_check(key);
    assert!(status.success(), "{}", demo.stderr_text());
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("20000 messages of 32 bytes"), "{out}");
    assert!(out.contains("none lost or reordered"), "{out}");
}

/// Asserts no segment is left at `key`, removing it if one is (so a failure leaks nothing).
fn remove_key_after_check(key: i32) {
    let left = shmid_at(key);
    remove_key(key);
    assert_eq!(left, None, "the demo left its segment behind");
}

/// Deterministic pseudo-random bytes (xorshift), for inputs that are not made of lines.
fn noise(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Sends `input` with `send_args`, then receives it with `recv_args` and returns the output
/// (checking both exit 0 and the ring is gone). The sender finishes first: its messages wait
/// in the ring, so the ring needs room for all of them (or the receiver started first).
fn round_trip(ring: &Ring, input: Vec<u8>, send_args: &[&str], recv_args: &[&str]) -> Vec<u8> {
    let ep = ring.endpoint();
    let mut recv_all = vec!["recv", ep.as_str()];
    recv_all.extend(recv_args);
    let mut recv = Proc::cli(&recv_all, Stdout::Collect);
    ring.wait_exists(SOON);
    let mut send_all = vec!["send", ep.as_str()];
    send_all.extend(send_args);
    let mut send = Proc::cli(&send_all, Stdout::Null);
    let feeder = feed(send.take_stdin(), input);
    send.wait_success(LONG);
    feeder.join().unwrap();
    let (status, out) = recv.wait_output(LONG);
    assert!(
        status.success(),
        "recv: {status}; stderr:\n{}",
        recv.stderr_text()
    );
    assert_eq!(recv.stderr_text(), "");
    assert_eq!(send.stderr_text(), "");
    ring.assert_gone("after send and recv exited");
    out
}

#[test]
fn cli_lines_round_trip_exactly_across_many_read_blocks() {
    // 300k lines of 0 to ~1000 bytes (empty ones included), megabytes of input, so lines cross
    // the ends of send's read blocks everywhere; the last line has no newline.
    let mut next = noise(11);
    let mut input = Vec::new();
    for i in 0..300_000u64 {
        let r = next();
        let len = match r % 16 {
            0 => 0,
            1 => (r >> 8) as usize % 1000,
            _ => (r >> 8) as usize % 24,
        };
        input.extend((0..len).map(|j| b'!' + ((i as usize + j) % 90) as u8));
        input.push(b'\n');
    }
    input.extend_from_slice(b"the last line, without a newline");
    assert!(input.len() > 4 << 20, "{} bytes", input.len());
    let ring = Ring::new("cli-blocks");
    let out = round_trip(&ring, input.clone(), &[], &[]);
    let mut expected = input;
    expected.push(b'\n');
    assert_same_bytes(&out, &expected);
}

#[test]
fn cli_chunk_and_raw_round_trip_binary_bytes_exactly() {
    let mut next = noise(7);
    // Zero bytes, newlines, every byte value; not a multiple of any chunk; no trailing newline.
    let mut binary: Vec<u8> = (0..3_000_001).map(|_| (next() >> 24) as u8).collect();
    binary[1000..1200].fill(0);
    *binary.last_mut().unwrap() = b'x';
    for (chunk, input) in [
        ("1000", binary.clone()),
        ("64K", binary.clone()),
        ("1", b"\x00a\nb\x00".to_vec()),
        ("4KiB", Vec::new()),
    ] {
        let ring = Ring::new("cli-raw");
        let out = round_trip(&ring, input.clone(), &["--chunk", chunk], &["--raw"]);
        assert_same_bytes(&out, &input);
    }
    // The same, sender first: the ring it creates takes its chunks; then a lines receiver shows
    // the message boundaries (1000-byte chunks, the last one short).
    let ring = Ring::new("cli-raw-lines");
    let ep = ring.endpoint();
    let mut send = Proc::cli(
        &["send", &ep, "--chunk", "1000", "--capacity", "4096"],
        Stdout::Null,
    );
    feed(send.take_stdin(), binary[..2500].to_vec()).join().unwrap();
    send.wait_success(SOON);
    let mut recv = Proc::cli(&["recv", &ep], Stdout::Collect);
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "{}", recv.stderr_text());
    let mut expected = Vec::new();
    for part in binary[..2500].chunks(1000) {
        expected.extend_from_slice(part);
        expected.push(b'\n');
    }
    assert_same_bytes(&out, &expected);
    ring.assert_gone("after recv drained and exited");
}

#[test]
fn cli_bad_chunk_sizes_are_usage_errors_and_a_chunk_larger_than_the_ring_fails_clearly() {
    let ring = Ring::new("cli-bad-chunk");
    let ep = ring.endpoint();
    // Not a size: clap's usage error, exit 2, naming the option; nothing is created.
    for (value, says) in [
        ("0", "at least 1 byte"),
        ("lots", "expected a number of bytes"),
        ("12Q", "unknown unit \"Q\""),
        ("-5", "expected a number of bytes"),
        ("64KB", "unknown unit \"KB\""),
        ("", "expected a number of bytes"),
    ] {
        let mut p = Proc::cli(&["send", &ep, &format!("--chunk={value}")], Stdout::Null);
        p.close_stdin();
        let status = p.wait(SOON);
        let err = p.stderr_text();
        assert_eq!(status.code(), Some(2), "--chunk {value:?}: {err}");
        assert!(err.contains("--chunk"), "--chunk {value:?}: {err}");
        assert!(
            err.contains(says),
            "--chunk {value:?}: {err:?} should say {says:?}"
        );
        ring.assert_gone(&format!("--chunk {value:?} must not create a ring"));
    }
    let mut p = Proc::cli(&["send", &ep, "--chunk"], Stdout::Null);
    p.close_stdin();
    assert_eq!(p.wait(SOON).code(), Some(2), "--chunk needs a value");
    // A chunk larger than the channel's largest message is known once the channel is open:
    // exit 1, saying both sizes; the ring it made is removed.
    let mut p = Proc::cli(
        &["send", &ep, "--chunk", "2K", "--max-message", "1K"],
        Stdout::Null,
    );
    p.close_stdin();
    let status = p.wait(SOON);
    let err = p.stderr_text();
    assert_eq!(status.code(), Some(1), "{err}");
    for part in [
        "--chunk 2048 is larger",
        "largest message, 1024 bytes",
        "--max-message",
    ] {
        assert!(err.contains(part), "{err:?} should mention {part:?}");
    }
    ring.assert_gone("a sender that refused its chunk size");
    // The same against a ring a receiver created: the receiver sees a clean, empty stream.
    let mut recv = Proc::cli(&["recv", &ep, "--raw", "--max-message", "100"], Stdout::Collect);
    ring.wait_exists(SOON);
    let mut p = Proc::cli(&["send", &ep, "--chunk", "64K"], Stdout::Null);
    p.close_stdin();
    assert_eq!(p.wait(SOON).code(), Some(1));
    assert!(
        p.stderr_text().contains("largest message, 100 bytes"),
        "{}",
        p.stderr_text()
    );
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "{}", recv.stderr_text());
    assert!(out.is_empty());
    ring.assert_gone("after both exited");
}

#[test]
fn cli_recv_count_takes_exactly_n_messages_from_a_full_ring() {
    // 1000 messages wait in the ring when the receiver comes: a batch could take them all, but
    // --count takes exactly its number, in lines and in raw mode.
    for (count, raw) in [("700", false), ("1", false), ("999", true)] {
        let ring = Ring::new("cli-count-batch");
        let ep = ring.endpoint();
        let mut send = Proc::cli(&["send", &ep], Stdout::Null);
        feed(send.take_stdin(), seq_lines(1000)).join().unwrap();
        send.wait_success(SOON);
        let mut args = vec!["recv", ep.as_str(), "--count", count];
        if raw {
            args.push("--raw");
        }
        let mut recv = Proc::cli(&args, Stdout::Collect);
        let (status, out) = recv.wait_output(SOON);
        assert!(status.success(), "{}", recv.stderr_text());
        let n: u64 = count.parse().unwrap();
        let mut expected = seq_lines(n);
        if raw {
            expected.retain(|&b| b != b'\n');
        }
        assert_same_bytes(&out, &expected);
        ring.assert_gone("the receiver left, taking the ring with it");
    }
}

#[test]
fn cli_an_over_long_line_after_many_is_reported_by_number_and_every_line_before_it_arrives() {
    // Far into the input, past several read blocks: a line one byte too long, then one longer
    // than a whole read block (found too long before its end is read).
    for (long, says) in [
        (
            vec![b'x'; 1025],
            "message of 1025 bytes exceeds the maximum of 1024 bytes",
        ),
        (
            vec![b'y'; 600_000],
            "message of more than 1024 bytes exceeds the maximum of 1024 bytes",
        ),
    ] {
        let ring = Ring::new("cli-long-line");
        let ep = ring.endpoint();
        let before = seq_lines(100_000);
        let mut input = before.clone();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nnever sent\n");
        let mut recv = Proc::cli(&["recv", &ep], Stdout::Collect);
        ring.wait_exists(SOON);
        let mut send = Proc::cli(&["send", &ep], Stdout::Null);
        let feeder = feed(send.take_stdin(), input);
        let status = send.wait(LONG);
        feeder.join().unwrap();
        let err = send.stderr_text();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(err.contains("line 100001: "), "{err}");
        assert!(err.contains(says), "{err:?} should say {says:?}");
        let (status, out) = recv.wait_output(LONG);
        assert!(status.success(), "{}", recv.stderr_text());
        assert_same_bytes(&out, &before);
        ring.assert_gone("after both exited");
    }
    // A line longer than a read block but within the largest message is one message.
    let ring = Ring::new("cli-long-ok");
    let mut long = vec![b'z'; 700_000];
    long.extend_from_slice(b"\nshort\n");
    let out = round_trip(
        &ring,
        long.clone(),
        &[],
        &["--max-message", "1M", "--capacity", "4"],
    );
    assert_same_bytes(&out, &long);
}
