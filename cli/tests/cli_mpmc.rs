//! `shmpipe send` and `shmpipe recv` on an MPMC ring: several of each on one ring, every line
//! received exactly once, and `shmpipe ls` shows the ring live while they run.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use shmpipe::inspect;
use shmpipe::transport::shm::SegmentAddr;
use std::io::Write;
use std::time::{Duration, Instant};

fn info(ring: &Ring) -> inspect::RingInfo {
    inspect::RingView::open(&SegmentAddr::Name(ring.name.clone()))
        .expect("RingView::open")
        .info()
}

#[test]
fn cli_several_senders_and_receivers_share_one_mpmc_ring() {
    const K: usize = 3;
    const R: usize = 3;
    const LINES: usize = 2000;
    let ring = Ring::new("mpmc-cli");
    let rx_ep = format!("shm://{}?mode=mpmc&senders={K}", ring.name);
    let tx_ep = format!("shm://{}?mode=mpmc", ring.name);
    let mut receivers: Vec<Proc> = (0..R)
        .map(|_| Proc::cli(&["recv", &rx_ep], Stdout::Collect))
        .collect();
    ring.wait_exists(SOON);
    let mut senders: Vec<Proc> = (0..K)
        .map(|_| Proc::cli(&["send", &tx_ep], Stdout::Null))
        .collect();
    let mut input = Vec::new();
    let mut stdins = Vec::new();
    for (k, s) in senders.iter_mut().enumerate() {
        let mut stdin = s.take_stdin();
        let mut text = String::new();
        for i in 0..LINES {
            let line = format!("sender{k}-line{i}-{}", "x".repeat(i % 37));
            text.push_str(&line);
            text.push('\n');
            input.push(line);
        }
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
        stdins.push(stdin);
    }
    // While every sender still has its stdin open, the ring is live and listed as mpmc.
    let deadline = Instant::now() + SOON;
    let row = loop {
        let mut ls = Proc::cli(&["ls", "--json"], Stdout::Collect);
        let (status, out) = ls.wait_output(SOON);
        assert!(status.success(), "ls --json: {}", ls.stderr_text());
        let out = String::from_utf8(out).unwrap();
        let row = out
            .lines()
            .find(|l| l.contains(&format!("\"name\":\"{}\"", ring.name)))
            .unwrap_or_else(|| panic!("{} not in ls --json:\n{out}", ring.name))
            .to_string();
        // Every sender process has joined by the time its first line was received; wait for
        // all of them to show.
        if row.contains("\"state\":\"alive\"") && info(&ring).members == (K as u32, R as u32) {
            break row;
        }
        assert!(Instant::now() < deadline, "members never all attached: {row}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(row.contains("\"kind\":\"mpmc\""), "{row}");
    assert!(row.contains("\"status\":\"live\""), "{row}");
    let mut ls = Proc::cli(&["ls"], Stdout::Collect);
    let (status, table) = ls.wait_output(SOON);
    assert!(status.success());
    let table = String::from_utf8(table).unwrap();
    let trow = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", ring.name)))
        .unwrap_or_else(|| panic!("{} not in the table:\n{table}", ring.name));
    assert!(trow.contains(" live "), "{trow}");
    drop(stdins);
    for s in &mut senders {
        s.wait_success(Duration::from_secs(60));
    }
    let mut got = Vec::new();
    let mut per = Vec::new();
    for r in &mut receivers {
        let (status, out) = r.wait_output(Duration::from_secs(60));
        assert!(status.success(), "recv exited {status}: {}", r.stderr_text());
        let out = String::from_utf8(out).unwrap();
        per.push(out.lines().count());
        got.extend(out.lines().map(str::to_string));
    }
    got.sort_unstable();
    input.sort_unstable();
    assert_eq!(got.len(), input.len(), "lines per receiver: {per:?}");
    assert!(got == input, "the receivers' union differs from the input");
    eprintln!("cli: {} lines from {K} senders, received {per:?}", input.len());
    ring.assert_gone("after every send and recv exited");
}
