//! The operator commands across real processes: rings are created by children (this binary re-run
//! in a role, see `tests/common`), then `shmpipe ls`, `rm` and `stat` are run against them.
//!
//! `ls` and `rm --stale` see every ring of this uid on the machine, so each test looks only at
//! its own rings, and `rm --stale` is always given a `--prefix` unique to the test (other tests,
//! and other test runs, have stale rings of their own that must not be touched).

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use shmpipe::Receiver;
use std::process::ExitStatus;
use std::time::Duration;

#[test]
fn child_entry() {
    child_main();
}

/// Runs the CLI to completion: exit status, stdout, stderr.
fn cli(args: &[&str]) -> (ExitStatus, String, String) {
    let mut p = Proc::cli(args, Stdout::Collect);
    let (status, out) = p.wait_output(SOON);
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        p.stderr_text(),
    )
}

/// The value of `"key":` in a flat JSON object: a string's contents, or the raw number/literal.
fn json_get(obj: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let rest = &obj[obj.find(&pat)? + pat.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(s[..s.find('"')?].to_string());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// The nested object at `"key":{...}` (no deeper nesting).
fn json_obj<'a>(obj: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":{{");
    let start = obj.find(&pat)? + pat.len() - 1;
    let end = start + obj[start..].find('}')?;
    Some(&obj[start..=end])
}

/// `shmpipe ls --json`, the line of ring `name` (None if it is not listed).
fn ls_ring(name: &str) -> Option<String> {
    let (status, out, err) = cli(&["ls", "--json"]);
    assert!(status.success(), "ls --json failed: {err}");
    let want = format!("\"name\":\"{name}\"");
    out.lines().find(|l| l.contains(&want)).map(str::to_string)
}

/// Asserts ring `name` is listed with `status`, and returns its line.
fn assert_listed(name: &str, status: &str) -> String {
    let line = ls_ring(name).unwrap_or_else(|| panic!("{name} not in ls --json"));
    assert_eq!(json_get(&line, "status").as_deref(), Some(status), "{line}");
    assert_eq!(json_get(&line, "kind").as_deref(), Some("spsc"), "{line}");
    line
}

/// `(state, pid)` of a role in an ls line.
fn role(line: &str, which: &str) -> (String, u32) {
    let o = json_obj(line, which).unwrap_or_else(|| panic!("no {which} in {line}"));
    (
        json_get(o, "state").unwrap(),
        json_get(o, "pid").unwrap().parse().unwrap(),
    )
}

fn num(line: &str, key: &str) -> u64 {
    json_get(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {line}"))
}

/// A child holding `side` of `ring` until killed.
fn holder(ring: &Ring, side: &str) -> Proc {
    let mut p = Proc::child(
        "hold",
        &ring.name,
        &[("side", side.into()), ("cap", "8".into()), ("max", "32".into())],
    );
    p.expect("READY");
    p
}

fn kill_and_reap(p: &mut Proc) {
    p.kill();
    let _ = p.wait(SOON);
}

/// A sender child that sends `n` messages with no receiver, closes and exits: a pending ring.
fn finished_sender(ring: &Ring, n: u64) {
    let mut p = Proc::child(
        "sender",
        &ring.name,
        &[("n", n.to_string()), ("cap", "8".into()), ("max", "32".into())],
    );
    p.expect("READY");
    p.expect("SENT");
    p.expect("DONE");
    p.wait_success(SOON);
}

#[test]
fn ls_shows_a_held_ring_live_then_stale_once_its_holders_are_sigkilled() {
    let ring = Ring::new("ls-live");
    let mut tx = holder(&ring, "sender");
    let mut rx = holder(&ring, "receiver");
    let line = assert_listed(&ring.name, "live");
    assert_eq!(role(&line, "sender"), ("alive".into(), tx.pid as u32), "{line}");
    assert_eq!(role(&line, "receiver"), ("alive".into(), rx.pid as u32), "{line}");
    assert_eq!(num(&line, "capacity"), 8);
    assert_eq!(num(&line, "max_message"), 32);
    // Nine records of 8 + 32 bytes: the capacity, plus one for the padding and terminator.
    let bytes = shmpipe::ring::Geometry::new(8, 32).unwrap().ring_bytes();
    assert_eq!((num(&line, "data_bytes"), bytes), (360, 360), "{line}");
    assert_eq!(num(&line, "unread"), 0);
    assert_eq!(
        num(&line, "attached"),
        2,
        "both holders, not counting ls itself: {line}"
    );
    assert_eq!(
        json_get(&line, "key").unwrap(),
        format!("{:#010x}", ring.key as u32)
    );
    assert_eq!(num(&line, "id"), ring.shmid().unwrap() as u64);

    // The table shows the same.
    let (status, table, _) = cli(&["ls"]);
    assert!(status.success());
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", ring.name)))
        .unwrap_or_else(|| panic!("{} not in the table:\n{table}", ring.name));
    assert!(
        row.contains(" live ") && row.contains(&format!("alive/{}", tx.pid)),
        "{row}"
    );
    let cells: Vec<&str> = row.split_whitespace().collect();
    // NAME KEY SHMID STATUS KIND CAP MAXMSG BYTES ...
    assert_eq!(cells[5..8], ["8", "32", "360"], "{row}");

    kill_and_reap(&mut tx);
    kill_and_reap(&mut rx);
    let line = assert_listed(&ring.name, "stale");
    assert_eq!(role(&line, "sender"), ("dead".into(), tx.pid as u32), "{line}");
    assert_eq!(role(&line, "receiver"), ("dead".into(), rx.pid as u32), "{line}");
    assert_eq!(num(&line, "attached"), 0, "{line}");
}

#[test]
fn ls_shows_a_finished_senders_unread_messages_as_pending() {
    let ring = Ring::new("ls-pending");
    finished_sender(&ring, 3);
    let line = assert_listed(&ring.name, "pending");
    assert_eq!(num(&line, "unread"), 3, "{line}");
    assert_eq!(num(&line, "in"), 3, "{line}");
    assert_eq!(num(&line, "out"), 0, "{line}");
    assert_eq!(role(&line, "sender").0, "closed", "{line}");
    assert_eq!(role(&line, "receiver").0, "vacant", "{line}");
}

#[test]
fn rm_refuses_a_ring_held_by_a_live_process_and_removes_it_with_force() {
    let ring = Ring::new("rm-live");
    let tx = holder(&ring, "sender");
    let (status, out, err) = cli(&["rm", &ring.name]);
    assert_eq!(status.code(), Some(1), "rm of a live ring: {out} {err}");
    assert!(
        err.contains("not removed") && err.contains(&format!("held by live sender pid {}", tx.pid)),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(ring.exists(), "a refused rm left the ring");
    assert_listed(&ring.name, "live");

    let (status, out, err) = cli(&["rm", "--force", &format!("shm://{}", ring.name)]);
    assert!(status.success(), "rm --force: {err}");
    assert!(
        out.contains(&format!("removed {}", ring.name)) && out.contains("was live"),
        "{out}"
    );
    ring.assert_gone("after rm --force");
    assert!(ls_ring(&ring.name).is_none(), "removed ring still listed");
}

#[test]
fn rm_by_raw_key_removes_a_stale_ring() {
    let ring = Ring::new("rm-key");
    let mut rx = holder(&ring, "receiver");
    kill_and_reap(&mut rx);
    assert_listed(&ring.name, "stale");
    let key = format!("{:#x}", ring.key as u32);
    let (status, out, err) = cli(&["rm", &key]);
    assert!(status.success(), "rm {key}: {err}");
    assert!(out.contains("was stale"), "{out}");
    ring.assert_gone("after rm 0xKEY");
    let (status, _, err) = cli(&["rm", &key]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("no ring"), "{err}");
}

#[test]
fn rm_stale_removes_exactly_the_stale_rings_and_leaves_live_and_pending_ones() {
    // One tag for all: the names share the prefix `it-rmstale-<pid>-`, unique to this test.
    let live = Ring::new("rmstale");
    let stale_rx = Ring::new("rmstale");
    let stale_pair = Ring::new("rmstale");
    let pending = Ring::new("rmstale");
    let prefix = format!("it-rmstale-{}-", std::process::id());
    let _live_tx = holder(&live, "sender");
    let mut a = holder(&stale_rx, "receiver");
    kill_and_reap(&mut a);
    let mut b = holder(&stale_pair, "sender");
    let mut c = holder(&stale_pair, "receiver");
    kill_and_reap(&mut b);
    kill_and_reap(&mut c);
    finished_sender(&pending, 2);
    for (r, s) in [
        (&live, "live"),
        (&stale_rx, "stale"),
        (&stale_pair, "stale"),
        (&pending, "pending"),
    ] {
        assert_listed(&r.name, s);
    }

    let (status, out, err) = cli(&["rm", "--stale", "--prefix", &prefix]);
    assert!(status.success(), "rm --stale: {err}");
    let removed: Vec<&str> = out.lines().filter(|l| l.starts_with("removed ")).collect();
    assert_eq!(removed.len(), 2, "{out}");
    for r in [&stale_rx, &stale_pair] {
        assert!(out.contains(&format!("removed {} ", r.name)), "{out}");
        r.assert_gone("after rm --stale");
    }
    assert!(
        live.exists() && pending.exists(),
        "rm --stale touched a live or pending ring"
    );
    assert_listed(&live.name, "live");
    assert_listed(&pending.name, "pending");

    let (status, out, _) = cli(&["rm", "--stale", "--prefix", &prefix]);
    assert!(status.success());
    assert_eq!(out.trim(), "no stale rings");
}

#[test]
fn stat_counts_messages_in_and_out_and_the_receivers_parks() {
    let ring = Ring::new("stat");
    let mut rx = Proc::child(
        "receiver",
        &ring.name,
        &[("stall_after", "3".into()), ("wait", "park".into())],
    );
    rx.expect("READY");
    // The receiver parks on the empty ring (park-only waits) before anything is sent.
    std::thread::sleep(Duration::from_millis(300));
    let mut tx = Proc::child("sender", &ring.name, &[("n", "5".into()), ("hold", "1".into())]);
    tx.expect("READY");
    tx.expect("SENT");
    rx.expect("STALLED");

    let (status, out, err) = cli(&["stat", &ring.name, "--count", "2", "--interval", "100"]);
    assert!(status.success(), "stat: {err}");
    let mut lines = out.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "--count 2:\n{out}");
    let col = |row: &Vec<&str>, name: &str| -> String {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name}"));
        row[i].to_string()
    };
    for row in &rows {
        assert_eq!(col(row, "in"), "5", "{out}");
        assert_eq!(col(row, "out"), "3", "{out}");
        assert_eq!(col(row, "unread"), "2", "{out}");
        assert_eq!(col(row, "full_waits"), "0", "{out}");
        assert!(col(row, "empty_waits").parse::<u64>().unwrap() >= 1, "{out}");
        assert!(col(row, "parks").parse::<u64>().unwrap() >= 1, "{out}");
        assert!(col(row, "wakes").parse::<u64>().unwrap() >= 1, "{out}");
        assert_eq!(col(row, "recovered"), "n.a.", "{out}");
        assert_eq!(col(row, "robbed"), "n.a.", "{out}");
        assert_eq!(col(row, "status"), "live", "{out}");
    }
    assert_eq!(col(&rows[0], "in/s"), "-", "no rate before a second sample");
    assert_eq!(
        col(&rows[1], "in/s"),
        "0",
        "nothing moved between samples:\n{out}"
    );

    // ls --json carries the same counters.
    let line = assert_listed(&ring.name, "live");
    assert!(
        num(&line, "parks") >= 1 && num(&line, "empty_waits") >= 1,
        "{line}"
    );

    let (status, _, err) = cli(&["stat", "it-no-such-ring-for-stat", "--count", "1"]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("no ring"), "{err}");
}

#[test]
fn ls_lists_only_valid_rings_and_shows_a_foreign_segment_with_all() {
    let ring = Ring::new("ls-foreign");
    let seg = RawSeg::create(ring.key, ring_size(8, 64), 0o600);
    seg.write_bytes(0, b"notours!");
    let id = seg.id;
    drop(seg);
    let (status, out, _) = cli(&["ls", "--json"]);
    assert!(status.success());
    let is_it = |l: &&str| l.contains("\"type\":\"shm\"") && l.contains(&format!("\"id\":{id},"));
    assert!(
        !out.lines().any(|l| is_it(&l)),
        "a foreign segment listed without --all"
    );
    let (status, out, _) = cli(&["ls", "--json", "--all"]);
    assert!(status.success());
    let line = out
        .lines()
        .find(is_it)
        .unwrap_or_else(|| panic!("foreign segment {id} not in ls --all:\n{out}"));
    assert_eq!(json_get(line, "status").as_deref(), Some("other"), "{line}");
    assert!(json_get(line, "reason").unwrap().contains("magic"), "{line}");
    // rm refuses what is not a ring of ours, even with --force.
    let (status, _, err) = cli(&["rm", "--force", &ring.name]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(ring.exists(), "rm removed a foreign segment");
}

#[test]
fn after_rm_force_a_survivor_still_notices_its_peers_death() {
    // `rm --force` removes the ring's semaphore set with it, under the members still attached:
    // their liveness then falls back to pids (right within one PID namespace), so a peer that
    // dies afterwards is still noticed, never waited for in vain.
    let ring = Ring::new("rm-force-death");
    let mut rx = ring.cfg(8, 32).open_receiver().unwrap();
    let mut tx = holder(&ring, "sender");
    let (status, _, err) = cli(&["rm", "--force", &ring.name]);
    assert!(status.success(), "rm --force: {err}");
    let mut buf = Vec::new();
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_millis(300)),
        Err(shmpipe::RecvTimeoutError::Timeout),
        "the sender is alive"
    );
    kill_and_reap(&mut tx);
    let killed = std::time::Instant::now();
    assert_eq!(
        rx.recv_timeout(&mut buf, SOON),
        Err(shmpipe::RecvTimeoutError::Disconnected)
    );
    assert!(
        killed.elapsed() < DEATH_BOUND,
        "noticed after {:?}",
        killed.elapsed()
    );
}
