//! `shmpipe bridge FROM TO` between real processes: every line forwarded in order (shm to unix,
//! and with the `zenoh` feature shm to zenoh to shm across four processes); a bridge stopped by
//! SIGTERM drains, closes downstream (whose receiver ends cleanly with exactly what the bridge
//! says it forwarded) and exits 143; a SIGKILLed bridge ends both sides, never a hang; nothing
//! left in `ipcs`.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::Write;
use std::process::ExitStatus;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A Unix endpoint in `dir` whose sender listens (the bridge's TO end; `recv` connects).
fn sock(dir: &SockDir) -> String {
    format!("unix://{}?listen=sender", dir.path("s.sock"))
}

/// Feeds `line-0` .. `line-{n-1}` to `send`'s stdin from a thread, then closes it.
fn feed(send: &mut Proc, n: u64) -> JoinHandle<()> {
    let mut stdin = send.take_stdin();
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::new(&mut stdin);
        for i in 0..n {
            // A writer whose reader has gone (a test killing the pipeline) just stops.
            if writeln!(out, "line-{i}").is_err() {
                return;
            }
        }
        let _ = out.flush();
    })
}

/// Asserts that `out` is `line-0`, `line-1`, ... in order; returns how many.
fn check_lines(out: &[u8]) -> u64 {
    let text = std::str::from_utf8(out).expect("utf-8");
    let mut n = 0u64;
    for line in text.lines() {
        assert_eq!(line, format!("line-{n}"), "line {n}");
        n += 1;
    }
    n
}

/// The count in the bridge's closing stats line (`... N messages, ...`).
fn forwarded(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("shmpipe bridge:"))
        .unwrap_or_else(|| panic!("no stats line in {stderr:?}"));
    let after = line.rsplit(": ").next().unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn shm_to_unix_through_the_bridge_every_line_in_order() {
    const N: u64 = 100_000;
    let ring = Ring::new("br-a");
    let dir = SockDir::new("br-a");
    let to = sock(&dir);
    let mut bridge = Proc::cli(&["bridge", &ring.endpoint(), &to], Stdout::Null);
    let mut recv = Proc::cli(&["recv", &to], Stdout::Collect);
    let mut send = Proc::cli(&["send", &ring.endpoint()], Stdout::Null);
    let feeder = feed(&mut send, N);
    let (status, out) = recv.wait_output(SOON);
    assert!(status.success(), "recv: {status:?}\n{}", recv.stderr_text());
    assert_eq!(check_lines(&out), N);
    feeder.join().unwrap();
    send.wait_success(SOON);
    bridge.wait_success(SOON);
    let said = bridge.stderr_text();
    assert!(said.contains("end of stream"), "{said}");
    assert_eq!(forwarded(&said), N);
    ring.assert_gone("after the pipeline");
}

#[test]
fn a_sigtermed_bridge_drains_closes_downstream_and_says_what_it_forwarded() {
    let ring = Ring::new("br-term");
    let dir = SockDir::new("br-term");
    let to = sock(&dir);
    let mut bridge = Proc::cli(&["bridge", &ring.endpoint(), &to], Stdout::Null);
    let mut recv = Proc::cli(&["recv", &to], Stdout::Collect);
    let mut send = Proc::cli(&["send", &ring.endpoint()], Stdout::Null);
    // More than will pass before the signal: the sender is still sending when the bridge goes.
    let feeder = feed(&mut send, 100_000_000);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a plain signal to our own child.
    assert_eq!(unsafe { libc::kill(bridge.pid, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = bridge.wait(SOON);
    assert!(t0.elapsed() < DEATH_BOUND, "the bridge took {:?}", t0.elapsed());
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        bridge.stderr_text()
    );
    let said = bridge.stderr_text();
    assert!(said.contains("stopped by SIGTERM"), "{said}");
    // Downstream: a clean end of stream, with exactly what the bridge forwarded, in order.
    let (rstatus, out) = recv.wait_output(SOON);
    assert!(rstatus.success(), "recv: {rstatus:?}\n{}", recv.stderr_text());
    let got = check_lines(&out);
    assert!(got > 0, "nothing passed before the signal");
    assert_eq!(got, forwarded(&said));
    // Upstream: the sender sees its receiver gone and fails, never hangs.
    let sstatus = send.wait(SOON);
    assert!(!sstatus.success(), "the sender cannot have sent everything");
    drop(send);
    feeder.join().unwrap();
    ring.assert_gone("after the signalled bridge");
}

/// `recv FROM_TO` ← bridge (`ring` → `to`) ← `send ring`, the bridge SIGKILLed after `settle`:
/// the sender upstream fails and the receiver downstream ends, both within the death bound,
/// with an in-order prefix delivered; nothing of the ring left. Returns the receiver's exit
/// status and stderr.
fn kill_bridge_midstream(ring: &Ring, to: &str, recv_from: &str, settle: Duration) -> (ExitStatus, String) {
    let mut recv = Proc::cli(&["recv", recv_from], Stdout::Collect);
    let bridge = Proc::cli(&["bridge", &ring.endpoint(), to], Stdout::Null);
    let mut send = Proc::cli(&["send", &ring.endpoint()], Stdout::Null);
    let feeder = feed(&mut send, 100_000_000);
    std::thread::sleep(settle);
    bridge.kill();
    let t0 = Instant::now();
    let sstatus = send.wait(SOON);
    assert!(!sstatus.success(), "the sender's receiver died");
    let noticed = t0.elapsed();
    assert!(noticed < DEATH_BOUND, "the sender noticed after {noticed:?}");
    let (rstatus, out) = recv.wait_output(SOON);
    let noticed = t0.elapsed();
    assert!(noticed < DEATH_BOUND, "the receiver noticed after {noticed:?}");
    // What arrived is a prefix, in order (the bridge died with some in its hands).
    assert!(check_lines(&out) > 0, "nothing passed before the kill");
    drop(send);
    feeder.join().unwrap();
    drop(bridge);
    ring.assert_gone("after the killed bridge");
    (rstatus, recv.stderr_text())
}

#[test]
fn a_sigkilled_bridge_ends_both_sides_without_a_hang() {
    let ring = Ring::new("br-kill");
    let dir = SockDir::new("br-kill");
    let to = sock(&dir);
    kill_bridge_midstream(&ring, &to, &to, Duration::from_millis(300));
}

/// shm → bridge → zenoh → bridge → shm, four processes besides the sender and receiver ends:
/// every line, in order, and every process exits 0 at the end of the stream.
#[cfg(feature = "zenoh")]
#[test]
fn shm_to_zenoh_to_shm_across_two_bridges() {
    const N: u64 = 20_000;
    let (a, b) = (Ring::new("br-za"), Ring::new("br-zb"));
    let port = free_port();
    let key = format!("shmpipe-it/{}", unique_name("br-z"));
    let zl = format!("zenoh://{key}?listen=tcp/127.0.0.1:{port}");
    let zc = format!("zenoh://{key}?connect=tcp/127.0.0.1:{port}");
    let mut far = Proc::cli(&["bridge", &zc, &b.endpoint()], Stdout::Null);
    let mut recv = Proc::cli(&["recv", &b.endpoint()], Stdout::Collect);
    let mut near = Proc::cli(&["bridge", &a.endpoint(), &zl], Stdout::Null);
    let mut send = Proc::cli(&["send", &a.endpoint()], Stdout::Null);
    let feeder = feed(&mut send, N);
    let (status, out) = recv.wait_output(SOON);
    assert!(
        status.success(),
        "recv: {status:?}\n{}\nnear: {}\nfar: {}",
        recv.stderr_text(),
        near.stderr_text(),
        far.stderr_text()
    );
    assert_eq!(check_lines(&out), N);
    feeder.join().unwrap();
    send.wait_success(SOON);
    near.wait_success(SOON);
    far.wait_success(SOON);
    assert_eq!(forwarded(&near.stderr_text()), N);
    assert_eq!(forwarded(&far.stderr_text()), N);
    a.assert_gone("after the pipeline");
    b.assert_gone("after the pipeline");
}

/// A bridge from shared memory to Zenoh, SIGKILLed mid-stream: the shm sender upstream and the
/// zenoh receiver downstream both end (the receiver sees the bridge's session gone through the
/// TCP reset), within the death bound, with an in-order prefix delivered; nothing in `ipcs`.
#[cfg(feature = "zenoh")]
#[test]
fn a_sigkilled_bridge_into_zenoh_ends_both_sides() {
    let ring = Ring::new("br-zkill");
    let port = free_port();
    let key = format!("shmpipe-it/{}", unique_name("br-zk"));
    let zl = format!("zenoh://{key}?listen=tcp/127.0.0.1:{port}");
    let zc = format!("zenoh://{key}?connect=tcp/127.0.0.1:{port}");
    // Until lines flow end to end (the zenoh link takes about half a second to match).
    let (rstatus, said) = kill_bridge_midstream(&ring, &zc, &zl, Duration::from_millis(1500));
    // It tells a dead sender from a clean end (no end-of-stream sample came).
    assert!(!rstatus.success(), "recv exited 0 after its sender's SIGKILL");
    assert!(said.contains("died"), "{said}");
}
