//! `shmpipe soak --duration 5 --kill-every 500 --json` end to end, on shm and on msgq: it must
//! pass (exit 0, no error, no leak), and it must really have killed and checked something. The
//! leak check is repeated here from outside: no SysV object may remain at the key of any ring
//! name the run used.

use shmpipe::transport::shm::key_for_name;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The run takes 5 s; generous for a busy 2-core machine and a debug build.
const LIMIT: Duration = Duration::from_secs(120);

/// The `"key":value` pairs of one flat JSON object (no nesting, no commas inside values).
fn parse_object(line: &str) -> BTreeMap<String, String> {
    let inner = line
        .trim()
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a JSON object: {line}"));
    inner
        .split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once(':')
                .unwrap_or_else(|| panic!("no key:value in {pair:?} of {line}"));
            let k = k.trim_matches('"');
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn number(fields: &BTreeMap<String, String>, key: &str) -> u64 {
    let v = fields
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("{key}: {v:?} is not a whole number"))
}

/// Keys of every SysV segment, message queue and semaphore set (a queue's liveness set lives at
/// its key).
fn sysv_keys() -> Vec<i32> {
    let mut keys = Vec::new();
    for file in ["/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem"] {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {file}: {e}"));
        keys.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next()?.parse::<i32>().ok()),
        );
    }
    keys
}

fn soak(endpoint: &str) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmpipe"))
        .args(["soak", "--duration", "5", "--kill-every", "500", "--json"])
        .args(["--endpoint", endpoint])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning shmpipe soak");
    let readers = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|p| {
        let mut p = p.expect("piped");
        std::thread::spawn(move || {
            let mut s = String::new();
            p.read_to_string(&mut s).expect("reading the soak's output");
            s
        })
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the soak") {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmpipe soak did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [stdout, stderr] = readers.map(|r| r.join().expect("reader thread"));
    assert!(
        status.success(),
        "soak on {endpoint} failed ({status}):\n{stdout}\n{stderr}"
    );

    let f = parse_object(&stdout);
    for zero in [
        "errors",
        "errors_checksum",
        "errors_order",
        "errors_duplicate",
        "leaked",
    ] {
        assert_eq!(number(&f, zero), 0, "{zero} on {endpoint}: {stdout}\n{stderr}");
    }
    assert!(number(&f, "kills") > 0, "nothing was killed: {stdout}");
    assert!(number(&f, "messages") > 0, "nothing was checked: {stdout}");
    assert!(number(&f, "restarts") >= number(&f, "kills"), "{stdout}");
    assert_eq!(f["ok"], "true", "{stdout}");

    // From outside: every ring name it used (NAME-PID-0 .. NAME-PID-(rings-1)) is gone.
    let pattern = &f["endpoint"];
    let (_, name) = pattern.split_once("://").expect("scheme://name");
    let stem = name
        .strip_suffix("-N")
        .unwrap_or_else(|| panic!("endpoint {pattern:?}"));
    let keys = sysv_keys();
    for n in 0..number(&f, "rings") {
        let ring = format!("{stem}-{n}");
        assert!(
            !keys.contains(&key_for_name(&ring)),
            "{ring} ({:#x}) is still there",
            key_for_name(&ring)
        );
    }
}

#[test]
fn soak_shm_with_kills_passes() {
    soak("shm://soaktest");
}

#[test]
fn soak_msgq_with_kills_passes() {
    soak("msgq://soaktest");
}
