//! The `shmpipe` CLI on broadcast rings (`shm://NAME?mode=broadcast`), between real processes:
//! several `recv`s each print the whole stream and exit 0 at its end; a lagging `recv` on an
//! `overflow=overwrite` ring says on stderr how many messages it missed and carries on; `ls`,
//! `stat` and `rm --stale` know the kind.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use shmpipe::ring::broadcast::Overflow;
use shmpipe::ring::RingKind;
use shmpipe::transport::shm::ShmConfig;
use shmpipe::Sender;
use std::io::Write;
use std::process::{ChildStdin, ExitStatus};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    child_main();
}

const LONG: Duration = Duration::from_secs(120);

fn seq_lines(from: u64, to: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for i in from..=to {
        writeln!(v, "{i}").unwrap();
    }
    v
}

fn feed(mut stdin: ChildStdin, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // A child that died early closes the pipe: the test's own assertions report it.
        let _ = stdin.write_all(&data);
    })
}

fn cli(args: &[&str]) -> (ExitStatus, String, String) {
    let mut p = Proc::cli(args, Stdout::Collect);
    let (status, out) = p.wait_output(SOON);
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        p.stderr_text(),
    )
}

/// `shmpipe ls --json`, the line of ring `name`, if listed.
fn ls_line(name: &str) -> Option<String> {
    let (status, out, err) = cli(&["ls", "--json"]);
    assert!(status.success(), "ls --json failed: {err}");
    let want = format!("\"name\":\"{name}\"");
    out.lines().find(|l| l.contains(&want)).map(str::to_string)
}

/// Waits (bounded) until ring `name` lists `n` subscribers, and returns its `ls --json` line.
fn wait_subscribers(name: &str, n: usize) -> String {
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(line) = ls_line(name) {
            if line.matches("\"record\":").count() == n {
                return line;
            }
        }
        assert!(Instant::now() < deadline, "{name} never had {n} subscribers");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: kill only reads its scalar arguments; the pid is our own child's, not yet reaped.
    assert_eq!(unsafe { libc::kill(p.pid, sig) }, 0);
}

#[test]
fn every_recv_prints_the_whole_stream_and_exits_at_its_end() {
    let ring = Ring::new("clibc-fanout");
    let ep = format!("{}?mode=broadcast&capacity=64", ring.endpoint());
    let mut a = Proc::cli(&["recv", &ep], Stdout::Collect);
    let mut b = Proc::cli(&["recv", &format!("{ep}&tether=false")], Stdout::Collect);
    let mut c = Proc::cli(&["recv", &ep], Stdout::Collect);
    // The publisher starts when all three have joined: nobody misses the beginning.
    let mut send = Proc::cli(&["send", &format!("{ep}&subscribers=3")], Stdout::Null);
    let input = seq_lines(1, 200_000);
    let feeder = feed(send.take_stdin(), input.clone());
    send.wait_success(LONG);
    feeder.join().unwrap();
    for (who, p) in [("a", &mut a), ("c", &mut c)] {
        let (status, out) = p.wait_output(LONG);
        assert!(status.success(), "recv {who}: {status}: {}", p.stderr_text());
        assert_eq!(
            p.stderr_text(),
            "",
            "recv {who}: a tethered subscriber misses nothing"
        );
        assert!(out == input, "recv {who} got {} bytes, not the stream", out.len());
    }
    // The untethered one may have been lapped: what it printed is in order, and what it did
    // not print it said it missed, exactly.
    let (status, out) = b.wait_output(LONG);
    assert!(status.success(), "recv b: {status}: {}", b.stderr_text());
    let got: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(got.last(), Some(&200_000));
    assert_eq!(got.len() as u64 + missed_in_all(&b.stderr_text()), 200_000);
    ring.assert_gone("after the publisher and every subscriber exited");
}

/// The last running total a `recv` printed for lag (`... (N in all)`), 0 if none.
fn missed_in_all(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            let rest = l.strip_prefix("shmpipe recv: lagged behind the publisher: ")?;
            let total = rest.split('(').nth(1)?.split_whitespace().next()?;
            total.parse().ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_stopped_recv_on_an_overwrite_ring_reports_what_it_missed_and_carries_on() {
    let ring = Ring::new("clibc-lag");
    let ep = format!("{}?mode=broadcast&overflow=overwrite&capacity=8", ring.endpoint());
    let mut rx = Proc::cli(&["recv", &ep], Stdout::Collect);
    wait_subscribers(&ring.name, 1);
    signal(&rx, libc::SIGSTOP);
    // The publisher never waits for it: the whole stream goes out while it is stopped.
    let mut send = Proc::cli(&["send", &ep], Stdout::Null);
    let feeder = feed(send.take_stdin(), seq_lines(1, 1000));
    send.wait_success(LONG);
    feeder.join().unwrap();
    signal(&rx, libc::SIGCONT);
    let (status, out) = rx.wait_output(LONG);
    let err = rx.stderr_text();
    assert!(status.success(), "recv: {status}: {err}");
    let got: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    // At most a ring's worth was still there; everything else was reported missed, exactly.
    assert!(!got.is_empty() && got.len() <= 8, "{got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert_eq!(got.last(), Some(&1000));
    assert_eq!(got.len() as u64 + missed_in_all(&err), 1000, "{err}");
    ring.assert_gone("after both exited");
}

#[test]
fn ls_and_stat_show_the_subscribers_and_rm_stale_removes_a_ring_whose_members_died() {
    let ring = Ring::new("clibc-ops");
    let ep = format!("{}?mode=broadcast&capacity=16", ring.endpoint());
    let mut tethered = Proc::cli(&["recv", &ep], Stdout::Null);
    let mut loose = Proc::cli(&["recv", &format!("{ep}&tether=false")], Stdout::Null);
    let line = wait_subscribers(&ring.name, 2);
    assert!(line.contains("\"kind\":\"broadcast\""), "{line}");
    assert!(line.contains("\"overflow\":\"block\""), "{line}");
    assert!(line.contains("\"status\":\"live\""), "{line}");
    for p in [&tethered, &loose] {
        assert!(
            line.contains(&format!("\"pid\":{},\"alive\":true", p.pid)),
            "{line}"
        );
    }
    assert_eq!(line.matches("\"tethered\":false").count(), 1, "{line}");
    let (status, out, err) = cli(&["stat", &ring.name, "--count", "1"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("broadcast overflow=block capacity 16"), "{out}");
    assert_eq!(out.matches("#   subscriber").count(), 2, "{out}");
    assert!(
        out.contains(&format!("pid {} alive untethered", loose.pid)),
        "{out}"
    );

    tethered.kill();
    loose.kill();
    let _ = tethered.wait(SOON);
    let _ = loose.wait(SOON);
    let line = ls_line(&ring.name).expect("a ring whose members died is still there");
    assert!(line.contains("\"status\":\"stale\""), "{line}");
    assert!(line.contains("\"receiver\":{\"state\":\"dead\""), "{line}");
    let (status, out, err) = cli(&["rm", "--stale", "--prefix", &ring.name]);
    assert!(status.success(), "{err}");
    assert!(out.contains(&format!("removed {}", ring.name)), "{out}");
    ring.assert_gone("after rm --stale");
}

/// A broadcast ring's configuration (`max_message` 128).
fn broadcast_cfg(ring: &Ring, cap: usize, overflow: Overflow) -> ShmConfig {
    let mut c = ring.cfg(cap, 128).kind(RingKind::Broadcast);
    c.overflow = overflow;
    c
}

#[test]
fn shmpipe_stat_shows_a_broadcast_ring_whose_policy_word_is_corrupt() {
    let ring = Ring::new("bc-cli-bad-policy");
    let mut tx = broadcast_cfg(&ring, 8, Overflow::Block).open_publisher().unwrap();
    let raw = RawSeg::attach_key(ring.key);
    assert_eq!(raw.u32(bc::POLICY), 1);
    raw.set_u32(bc::POLICY, 7);
    let mut stat = Proc::cli(&["stat", &ring.name, "--count", "1"], Stdout::Collect);
    let (status, out) = stat.wait_output(SOON);
    assert!(status.success(), "stat: {status}; {}", stat.stderr_text());
    assert!(String::from_utf8_lossy(&out).contains("broadcast"));
    // The live publisher goes on (it validated the policy when it opened).
    tx.send_timeout(b"still here", SOON).unwrap();
    drop(raw);
    drop(tx);
    ring.assert_gone("after the publisher left");
}

#[test]
fn shmpipe_recv_on_an_overwrite_ring_reports_its_lag_on_stderr_and_goes_on() {
    const CAP: u64 = 16;
    const N: u64 = 1000;
    let ring = Ring::new("bc-cli-lag");
    let mut tx = broadcast_cfg(&ring, CAP as usize, Overflow::Overwrite)
        .open_publisher()
        .unwrap();
    let set = sems_of(ring.shmid().unwrap()).unwrap();
    let ep = format!("{}?mode=broadcast&overflow=overwrite", ring.endpoint());
    let mut recv = Proc::cli(&["recv", &ep], Stdout::Collect);
    let deadline = Instant::now() + SOON;
    while tx.stats().joined == 0 {
        assert!(Instant::now() < deadline, "shmpipe recv never joined");
        std::thread::sleep(Duration::from_millis(2));
    }
    sigstop(&recv);
    for seq in 0..N {
        tx.try_send(format!("m-{seq}").as_bytes()).unwrap();
    }
    drop(tx);
    sigcont(&recv);
    let (status, out) = recv.wait_output(SOON);
    let stderr = recv.stderr_text();
    assert!(status.success(), "recv: {status}; stderr:\n{stderr}");
    // Lapped at 0: the last ring's worth, after a line on stderr with the exact count.
    let lines: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = (N - CAP..N).map(|s| format!("m-{s}")).collect();
    assert_eq!(lines, want);
    assert!(
        stderr.contains(&format!("{} messages missed", N - CAP)),
        "stderr: {stderr}"
    );
    ring.assert_gone("after shmpipe recv exited");
    assert_eq!(sem_count(set), None, "the ring's semaphore set is left");
}
