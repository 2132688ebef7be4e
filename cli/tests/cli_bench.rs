//! `shmpipe bench --quick --json` end to end: every transport and every raw and in-process
//! baseline reports a plausible result line, and no SysV segment or message queue is left behind
//! by the bench process or any of its peers.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Small enough for a few seconds in a debug build; large enough for a percentile.
const MESSAGES: u64 = 300;
/// Generous bound for the whole run on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(180);

const KEYS: [&str; 14] = [
    "scenario",
    "transport",
    "size",
    "messages",
    "p50_ns",
    "p99_ns",
    "p999_ns",
    "max_ns",
    "msgs_per_s",
    "bytes_per_s",
    "ns_per_msg",
    "subscribers",
    "subscriber",
    "missed",
];

/// A SysV object listed in /proc/sysvipc: kind, id, and the pids it records (creator and last
/// operation for a segment; last sender and last receiver for a queue, which records no creator).
#[derive(Debug)]
struct IpcObject {
    kind: &'static str,
    id: u64,
    pids: [u32; 2],
}

fn sysv_objects() -> Vec<IpcObject> {
    // Columns: /proc/sysvipc/shm: key shmid perms size cpid lpid ...;
    //          /proc/sysvipc/msg: key msqid perms cbytes qnum lspid lrpid ...
    let mut out = Vec::new();
    for (kind, file, pid_cols) in [
        ("shm", "/proc/sysvipc/shm", [4, 5]),
        ("msg", "/proc/sysvipc/msg", [5, 6]),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {file}: {e}"));
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() <= pid_cols[1] {
                continue;
            }
            out.push(IpcObject {
                kind,
                id: cols[1].parse().expect("numeric id"),
                pids: pid_cols.map(|c| cols[c].parse().expect("numeric pid")),
            });
        }
    }
    out
}

/// The `"key":value` pairs of one flat JSON object (no nesting, no commas inside values).
fn parse_line(line: &str) -> BTreeMap<String, String> {
    let inner = line
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a JSON object: {line}"));
    inner
        .split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once(':')
                .unwrap_or_else(|| panic!("no key:value in {pair:?} of {line}"));
            let k = k
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .unwrap_or_else(|| panic!("unquoted key {k:?} in {line}"));
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn number(fields: &BTreeMap<String, String>, key: &str) -> Option<f64> {
    match fields[key].as_str() {
        "null" => None,
        v => Some(
            v.parse()
                .unwrap_or_else(|_| panic!("{key}: {v:?} is not a number")),
        ),
    }
}

/// A finished, successful `shmpipe bench` run.
struct Run {
    stdout: String,
    stderr: String,
    bench_pid: u32,
    before: BTreeSet<(&'static str, u64)>,
}

/// Runs `shmpipe bench ARGS` within [`LIMIT`]; panics unless it succeeds.
fn run_bench(args: &[&str]) -> Run {
    let before: BTreeSet<(&str, u64)> = sysv_objects().iter().map(|o| (o.kind, o.id)).collect();

    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmpipe"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning shmpipe bench");
    let bench_pid = child.id();
    let mut pipes = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|p| {
        let mut p = p.expect("piped");
        std::thread::spawn(move || {
            let mut s = String::new();
            p.read_to_string(&mut s).expect("reading the bench's output");
            s
        })
    })
    .into_iter();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the bench") {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmpipe bench --quick did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = pipes.next().unwrap().join().unwrap();
    let stderr = pipes.next().unwrap().join().unwrap();
    assert!(status.success(), "bench failed ({status}); stderr:\n{stderr}");
    Run {
        stdout,
        stderr,
        bench_pid,
        before,
    }
}

/// Asserts that at least `peers` peers ran and that nothing new in /proc/sysvipc was created or
/// used by the bench or one of its peers.
fn assert_no_leak(run: &Run, peers: usize) {
    let Run {
        stderr,
        bench_pid,
        before,
        ..
    } = run;
    let mut ours: BTreeSet<u32> = stderr
        .split("peer pid ")
        .skip(1)
        .map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("a pid after \"peer pid \"")
        })
        .collect();
    assert!(ours.len() >= peers, "{peers} peers expected; stderr:\n{stderr}");
    ours.insert(*bench_pid);
    let leaked: Vec<IpcObject> = sysv_objects()
        .into_iter()
        .filter(|o| !before.contains(&(o.kind, o.id)) && o.pids.iter().any(|p| ours.contains(p)))
        .collect();
    assert!(leaked.is_empty(), "left behind: {leaked:?}");
    // Nor a temporary directory (socket files, ipmpsc's ring files): `shmpipe-bench-PID-N`.
    let prefix = format!("shmpipe-bench-{bench_pid}-");
    let dirs: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .expect("listing the temp dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert!(dirs.is_empty(), "temporary directories left behind: {dirs:?}");
}

#[test]
fn quick_json_run_covers_every_transport_and_baseline_and_leaks_nothing() {
    let run = run_bench(&["--quick", "--json", "--messages", &MESSAGES.to_string()]);
    let stdout = &run.stdout;

    // Every line is a result with exactly the documented keys.
    let mut seen = BTreeSet::new();
    for line in stdout.lines() {
        let f = parse_line(line);
        let keys: BTreeSet<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS.into_iter().collect(), "keys of {line}");
        assert_eq!(number(&f, "messages"), Some(MESSAGES as f64), "{line}");
        let size = number(&f, "size").expect("size");
        match f["scenario"].as_str() {
            "throughput" => {
                let rate = number(&f, "msgs_per_s").unwrap_or(0.0);
                assert!(rate > 0.0, "no throughput: {line}");
                assert!(number(&f, "bytes_per_s").unwrap_or(0.0) > 0.0, "{line}");
                assert_eq!(number(&f, "p50_ns"), None, "{line}");
            }
            "latency" => {
                let p: Vec<f64> = ["p50_ns", "p99_ns", "p999_ns", "max_ns"]
                    .iter()
                    .map(|k| number(&f, k).unwrap_or_else(|| panic!("{k} missing: {line}")))
                    .collect();
                assert!(p[0] > 0.0, "no latency: {line}");
                assert!(
                    p.windows(2).all(|w| w[0] <= w[1]),
                    "percentiles out of order: {line}"
                );
                assert_eq!(number(&f, "msgs_per_s"), None, "{line}");
                assert_eq!(size, 8.0, "{line}");
            }
            "mpmc" => {
                assert!(
                    number(&f, "msgs_per_s").unwrap_or(0.0) > 0.0,
                    "no throughput: {line}"
                );
                assert_eq!(number(&f, "p50_ns"), None, "{line}");
                assert_eq!(size, 64.0, "{line}");
            }
            other => panic!("unknown scenario {other:?}: {line}"),
        }
        assert!(
            seen.insert((f["scenario"].clone(), f["transport"].clone(), size as u64)),
            "duplicate: {line}"
        );
    }
    let mut expected = BTreeSet::new();
    for t in [
        "shm",
        "shm-park",
        "ipmpsc",
        "msgq",
        "raw-msgq",
        "unix",
        "raw-unix",
        "raw-pipe",
        "tcp",
        "raw-tcp",
        "inproc-ring",
        "inproc-arrayqueue",
        "inproc-rtrb",
    ] {
        for size in [64, 1024] {
            expected.insert(("throughput".to_string(), t.to_string(), size));
        }
    }
    for t in [
        "shm",
        "shm-park",
        "raw-atomic",
        "raw-atomic-pair",
        "raw-futex",
        "ipmpsc",
        "msgq",
        "raw-msgq",
        "unix",
        "raw-unix",
        "raw-pipe",
        "tcp",
        "raw-tcp",
    ] {
        expected.insert(("latency".to_string(), t.to_string(), 8));
    }
    for t in ["shm-mpmc", "inproc-mpmc", "inproc-arrayqueue"] {
        expected.insert(("mpmc".to_string(), t.to_string(), 64));
    }
    // The zenoh row exists only in a CLI built with the feature.
    if cfg!(feature = "zenoh") {
        for size in [64, 1024] {
            expected.insert(("throughput".to_string(), "zenoh".to_string(), size));
        }
        expected.insert(("latency".to_string(), "zenoh".to_string(), 8));
    }
    assert_eq!(seen, expected, "result lines; stdout:\n{stdout}");

    // The in-process baselines run no peer; shm-mpmc runs one a producer (two).
    let with_peer = expected
        .iter()
        .filter(|(_, t, _)| !t.starts_with("inproc-"))
        .count()
        + 1;
    assert_no_leak(&run, with_peer);
}

#[test]
fn fanout_run_covers_every_subscriber_count_and_leaks_nothing() {
    let run = run_bench(&[
        "--scenario",
        "fanout",
        "--json",
        "--messages",
        &MESSAGES.to_string(),
    ]);
    // (transport, subscribers) -> the subscriber indices seen on per-subscriber lines.
    let mut rows: BTreeMap<(String, u64), BTreeSet<u64>> = BTreeMap::new();
    for line in run.stdout.lines() {
        let f = parse_line(line);
        let keys: BTreeSet<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS.into_iter().collect(), "keys of {line}");
        assert_eq!(f["scenario"], "fanout", "{line}");
        assert_eq!(number(&f, "size"), Some(64.0), "{line}");
        let n = number(&f, "subscribers").expect("subscribers") as u64;
        let p: Vec<f64> = ["p50_ns", "p99_ns", "p999_ns", "max_ns"]
            .iter()
            .map(|k| number(&f, k).unwrap_or_else(|| panic!("{k} missing: {line}")))
            .collect();
        assert!(p[0] > 0.0, "no latency: {line}");
        assert!(
            p.windows(2).all(|w| w[0] <= w[1]),
            "percentiles out of order: {line}"
        );
        let missed = number(&f, "missed").expect("missed");
        // Lossless rings and the bus never miss a message.
        if f["transport"] != "shm-bcast-overwrite" {
            assert_eq!(missed, 0.0, "{line}");
        }
        let key = (f["transport"].clone(), n);
        match number(&f, "subscriber") {
            None => {
                assert!(
                    number(&f, "msgs_per_s").unwrap_or(0.0) > 0.0,
                    "no throughput: {line}"
                );
                assert!(rows.insert(key, BTreeSet::new()).is_none(), "duplicate: {line}");
            }
            Some(i) => {
                assert_eq!(number(&f, "msgs_per_s"), None, "{line}");
                let subs = rows
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("before its row: {line}"));
                assert!(subs.insert(i as u64), "duplicate: {line}");
            }
        }
    }
    let mut expected = BTreeMap::new();
    expected.insert(("shm".to_string(), 1), (0..1).collect::<BTreeSet<u64>>());
    for t in [
        "shm-bcast-block",
        "shm-bcast-overwrite",
        "inproc-bcast",
        "inproc-bus",
    ] {
        for n in [1, 2, 4] {
            expected.insert((t.to_string(), n), (0..n).collect());
        }
    }
    assert_eq!(rows, expected, "result lines; stdout:\n{}", run.stdout);
    // A peer per subscriber of the cross-process rows: 1 + 2 x (1 + 2 + 4).
    assert_no_leak(&run, 1 + 2 * 7);
}

#[test]
fn crossover_run_covers_every_count_and_leaks_nothing() {
    let run = run_bench(&["--scenario", "crossover", "--json", "--size", "8,1024"]);
    let mut seen = BTreeSet::new();
    for line in run.stdout.lines() {
        let f = parse_line(line);
        let keys: BTreeSet<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS.into_iter().collect(), "keys of {line}");
        assert_eq!(f["scenario"], "crossover", "{line}");
        assert!(number(&f, "ns_per_msg").unwrap_or(0.0) > 0.0, "no time: {line}");
        for k in ["p50_ns", "msgs_per_s", "bytes_per_s"] {
            assert_eq!(number(&f, k), None, "{k}: {line}");
        }
        let size = number(&f, "size").expect("size") as u64;
        let n = number(&f, "messages").expect("messages") as u64;
        assert!(
            seen.insert((f["transport"].clone(), size, n)),
            "duplicate: {line}"
        );
    }
    let mut expected = BTreeSet::new();
    for t in ["shm", "msgq", "unix"] {
        for size in [8, 1024] {
            for n in [1, 10, 100, 1000] {
                expected.insert((t.to_string(), size, n));
            }
        }
    }
    assert_eq!(seen, expected, "result lines; stdout:\n{}", run.stdout);
    assert_no_leak(&run, expected.len());
}

/// The text of every `<text>` element of an SVG document, after checking that it is one `<svg>`
/// element whose tags are balanced (a well-formedness check enough for what plotters writes:
/// no CDATA, no comments, no `<` or `>` in attribute values).
fn svg_texts(svg: &str) -> Vec<String> {
    let body = svg.trim();
    let body = match body.strip_prefix("<?xml") {
        Some(rest) => rest
            .split_once("?>")
            .expect("an XML declaration ends")
            .1
            .trim_start(),
        None => body,
    };
    assert!(
        body.starts_with("<svg "),
        "does not start with <svg: {}",
        &body[..body.len().min(80)]
    );
    assert!(body.ends_with("</svg>"), "does not end with </svg>");
    assert!(
        body.contains("xmlns=\"http://www.w3.org/2000/svg\""),
        "no SVG namespace"
    );
    let mut open: Vec<&str> = Vec::new();
    let mut texts = Vec::new();
    let mut rest = body;
    let mut roots = 0;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        assert!(!text.contains('>'), "stray '>' in {text:?}");
        if open.last() == Some(&"text") {
            texts.push(text.trim().to_owned());
        }
        let end = rest[start..].find('>').expect("an unclosed tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name.trim()), "mismatched </{name}>");
            continue;
        }
        let name = tag.split_whitespace().next().expect("a tag name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':'),
            "bad tag name {name:?}"
        );
        if open.is_empty() {
            roots += 1;
        }
        if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed elements: {open:?}");
    assert!(rest.trim().is_empty(), "text after the root element: {rest:?}");
    assert_eq!(roots, 1, "one root element");
    texts
}

#[test]
fn plot_writes_an_svg_naming_every_transport() {
    let dir = std::env::temp_dir().join(format!("shmpipe-cli-bench-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    let path = dir.join("bench.svg");
    let transports = ["shm", "raw-unix", "inproc-ring"];
    let run = run_bench(&[
        "--quick",
        "--json",
        "--messages",
        &MESSAGES.to_string(),
        "--transport",
        &transports.join(","),
        "--plot",
        path.to_str().expect("a UTF-8 temp path"),
    ]);
    let svg = std::fs::read_to_string(&path);
    let _ = std::fs::remove_dir_all(&dir);
    let svg = svg.expect("reading the plot");
    let texts = svg_texts(&svg);
    // The latency curves' legend names each transport run in that scenario; the throughput bars
    // are labelled "SIZE B TRANSPORT".
    for t in ["shm", "raw-unix"] {
        assert!(
            texts.iter().any(|s| s == t),
            "no latency legend for {t}: {texts:?}"
        );
    }
    for t in transports {
        for size in [64, 1024] {
            let label = format!("{size} B {t}");
            assert!(texts.contains(&label), "no throughput bar {label:?}: {texts:?}");
        }
    }
    assert!(run.stderr.contains("plot written to"), "{}", run.stderr);
    // The JSON lines are still one per result.
    assert_eq!(run.stdout.lines().count(), 2 + 3 * 2, "stdout:\n{}", run.stdout);
    assert_no_leak(&run, 2 + 2 * 2);
}

#[test]
fn async_run_reports_the_async_rows_their_baselines_and_ratios_and_leaks_nothing() {
    let dir = std::env::temp_dir().join(format!("shmpipe-cli-bench-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    let path = dir.join("async.svg");
    let run = run_bench(&[
        "--scenario",
        "async",
        "--json",
        "--messages",
        &MESSAGES.to_string(),
        "--plot",
        path.to_str().expect("a UTF-8 temp path"),
    ]);
    let svg = std::fs::read_to_string(&path);
    let _ = std::fs::remove_dir_all(&dir);
    let texts = svg_texts(&svg.expect("reading the plot"));
    assert!(
        texts.iter().any(|s| s == "shm-async"),
        "no latency legend: {texts:?}"
    );
    assert!(
        texts.iter().any(|s| s == "64 B shm-async"),
        "no throughput bar: {texts:?}"
    );

    let mut seen = BTreeSet::new();
    for line in run.stdout.lines() {
        let f = parse_line(line);
        let keys: BTreeSet<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS.into_iter().collect(), "keys of {line}");
        assert_eq!(number(&f, "messages"), Some(MESSAGES as f64), "{line}");
        let size = number(&f, "size").expect("size") as u64;
        match f["scenario"].as_str() {
            "throughput" => {
                assert!(number(&f, "msgs_per_s").unwrap_or(0.0) > 0.0, "{line}");
                assert_eq!(size, 64, "{line}");
            }
            "latency" => {
                assert!(number(&f, "p50_ns").unwrap_or(0.0) > 0.0, "{line}");
                assert!(number(&f, "p99_ns") >= number(&f, "p50_ns"), "{line}");
                assert_eq!(size, 8, "{line}");
            }
            other => panic!("unexpected scenario {other:?}: {line}"),
        }
        assert!(
            seen.insert((f["scenario"].clone(), f["transport"].clone())),
            "duplicate: {line}"
        );
    }
    let expected: BTreeSet<(String, String)> = [
        ("throughput", "shm"),
        ("throughput", "shm-async"),
        ("latency", "shm-park"),
        ("latency", "shm-async"),
    ]
    .iter()
    .map(|(s, t)| (s.to_string(), t.to_string()))
    .collect();
    assert_eq!(seen, expected, "stdout:\n{}", run.stdout);

    for prefix in [
        "async ratio: latency shm-async / shm-park: p50 ",
        "async ratio: throughput 64 B shm-async / shm: ",
    ] {
        assert_ratio_line(&run, prefix);
    }
    assert_no_leak(&run, expected.len());
}

/// A ratio line (on stderr with `--json`) starting with `prefix`: a positive, finite ratio and a
/// verdict on its target.
fn assert_ratio_line(run: &Run, prefix: &str) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line; stderr:\n{}", run.stderr));
    let ratio: f64 = line[prefix.len()..]
        .split('x')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {line}"));
    assert!(ratio > 0.0 && ratio.is_finite(), "{line}");
    assert!(line.ends_with(": met") || line.ends_with(": NOT met"), "{line}");
}

#[test]
fn hot_path_run_reports_the_ring_against_its_references() {
    let run = run_bench(&[
        "--json",
        "--transport",
        "shm,raw-atomic,raw-atomic-pair,inproc-ring,inproc-rtrb",
        "--size",
        "8",
        "--messages",
        &MESSAGES.to_string(),
    ]);
    let mut seen = BTreeSet::new();
    for line in run.stdout.lines() {
        let f = parse_line(line);
        seen.insert((f["scenario"].clone(), f["transport"].clone()));
    }
    let expected: BTreeSet<(String, String)> = [
        ("throughput", "shm"),
        ("throughput", "inproc-ring"),
        ("throughput", "inproc-rtrb"),
        ("latency", "shm"),
        ("latency", "raw-atomic"),
        ("latency", "raw-atomic-pair"),
    ]
    .iter()
    .map(|(s, t)| (s.to_string(), t.to_string()))
    .collect();
    assert_eq!(seen, expected, "stdout:\n{}", run.stdout);
    for prefix in [
        "hot path: latency p50 shm / raw-atomic: ",
        "hot path: throughput 8 B inproc-ring / inproc-rtrb: ",
        "hot path: throughput 8 B shm / inproc-rtrb: ",
    ] {
        assert_ratio_line(&run, prefix);
    }
    assert!(run.stderr.contains("x raw-atomic-pair, "), "{}", run.stderr);
    // Peers: shm twice (throughput, latency), each raw baseline once.
    assert_no_leak(&run, 4);
}
