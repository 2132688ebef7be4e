//! Operator commands: `ls`, `rm`, `stat` (built on `shmpipe::inspect`).

use super::fail;
use clap::Args;
use shmpipe::inspect::{self, key_hex, peer_name, QueueInfo, Removal, RingInfo, RingView, Segment};
use shmpipe::ring::broadcast::SubscriberInfo;
use shmpipe::transport::shm::SegmentAddr;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `shmpipe ls`.
#[derive(Args)]
pub(crate) struct LsArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Also list segments that are not our rings, and every user's message queues.
    #[arg(long)]
    all: bool,
}

/// `shmpipe rm`.
#[derive(Args)]
pub(crate) struct RmArgs {
    /// The ring: NAME, shm://NAME or 0xKEY.
    #[arg(required_unless_present = "stale", conflicts_with = "stale")]
    ring: Option<String>,
    /// Remove it even while a live process holds a role (that process keeps its mapping; new
    /// opens get a fresh ring).
    #[arg(long)]
    force: bool,
    /// Remove every stale ring (nobody alive holds a role, nothing awaits a receiver).
    #[arg(long)]
    stale: bool,
    /// With --stale: only rings whose name starts with this.
    #[arg(long, requires = "stale")]
    prefix: Option<String>,
}

/// `shmpipe stat`.
#[derive(Args)]
pub(crate) struct StatArgs {
    /// The ring: NAME, shm://NAME or 0xKEY.
    ring: String,
    /// Milliseconds between samples.
    #[arg(long, default_value_t = 1000)]
    interval: u64,
    /// Stop after this many samples.
    #[arg(long)]
    count: Option<u64>,
}

fn parse_ring(s: &str) -> Result<SegmentAddr, shmpipe::Error> {
    SegmentAddr::parse(s.strip_prefix("shm://").unwrap_or(s))
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A name from a segment is untrusted: show control characters escaped in the table.
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

/// A role's column: its holder (SPSC, a broadcast ring's publisher), or how many members hold
/// it (MPMC, a broadcast ring's subscribers).
fn role_cell(many: bool, r: &inspect::RoleInfo, live: u32) -> String {
    match r.peer {
        shmpipe::Peer::NotYet => "vacant".into(),
        shmpipe::Peer::Alive if many => format!("{live} alive"),
        p => format!("{}/{}", peer_name(p), r.pid),
    }
}

/// A broadcast ring's subscribers, as JSON.
fn subscribers_json(subs: &[SubscriberInfo]) -> String {
    let each: Vec<String> = subs
        .iter()
        .map(|s| {
            format!(
                "{{\"record\":{},\"pid\":{},\"alive\":{},\"tethered\":{},\"lag\":{},\"missed\":{}}}",
                s.index, s.pid, s.alive, s.tethered, s.lag, s.missed
            )
        })
        .collect();
    format!("[{}]", each.join(","))
}

/// A byte count in a few characters: exact below 10000, else in KiB, MiB or GiB, with one
/// decimal below 10 of them (`4080`, `9.8K`, `72K`, `1.0M`, `64M`).
fn short_bytes(n: usize) -> String {
    if n < 10_000 {
        return n.to_string();
    }
    let (unit, name) = if n < 1 << 20 {
        (1u64 << 10, 'K')
    } else if n < 1 << 30 {
        (1 << 20, 'M')
    } else {
        (1 << 30, 'G')
    };
    let v = n as f64 / unit as f64;
    if v < 10.0 {
        format!("{v:.1}{name}")
    } else {
        format!("{v:.0}{name}")
    }
}

fn ring_json(r: &RingInfo) -> String {
    let role = |r: &inspect::RoleInfo| format!("{{\"state\":\"{}\",\"pid\":{}}}", peer_name(r.peer), r.pid);
    let c = &r.counters;
    format!(
        "{{\"type\":\"shm\",\"name\":{},\"key\":\"{}\",\"id\":{},\"kind\":\"{}\",\"status\":\"{}\",\
         \"capacity\":{},\"max_message\":{},\"data_bytes\":{},\"unread\":{},\"attached\":{},\"uid\":{},\"sender\":{},\
         \"receiver\":{},\"senders\":{},\"receivers\":{},\"in\":{},\"out\":{},\"full_waits\":{},\"empty_waits\":{},\"parks\":{},\"wakes\":{}{}}}",
        json_str(&r.name),
        key_hex(r.key),
        r.id,
        r.kind,
        r.status.as_str(),
        r.capacity,
        r.max_message,
        r.data_bytes,
        r.unread.map_or("\"corrupted\"".to_string(), |n| n.to_string()),
        r.attached,
        r.uid,
        role(&r.sender),
        role(&r.receiver),
        r.members.0,
        r.members.1,
        c.messages_in,
        c.messages_out,
        c.full_waits,
        c.empty_waits,
        c.parks,
        c.wakes,
        match r.overflow {
            Some(policy) => format!(
                ",\"overflow\":\"{policy}\",\"missed\":{},\"subscribers\":{}",
                c.missed.unwrap_or(0),
                subscribers_json(&r.subscribers)
            ),
            None => String::new(),
        }
    )
}

fn queue_json(q: &QueueInfo) -> String {
    format!(
        "{{\"type\":\"msgq\",\"key\":\"{}\",\"id\":{},\"qnum\":{},\"cbytes\":{},\"qbytes\":{},\"uid\":{},\
         \"lspid\":{},\"lspid_alive\":{},\"lrpid\":{},\"lrpid_alive\":{},\"note\":{}}}",
        key_hex(q.key),
        q.id,
        q.qnum,
        q.cbytes,
        q.qbytes.map_or("null".to_string(), |b| b.to_string()),
        q.uid,
        q.lspid.0,
        q.lspid.1,
        q.lrpid.0,
        q.lrpid.1,
        json_str(q.note)
    )
}

pub(crate) fn ls(args: LsArgs) -> ExitCode {
    let segments = match inspect::segments() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let queues = match inspect::queues(args.all) {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let mut out = String::new();
    if args.json {
        for s in &segments {
            match s {
                Segment::Ring(r) => out.push_str(&ring_json(r)),
                Segment::Other(o) if args.all => {
                    let _ = write!(
                        out,
                        "{{\"type\":\"shm\",\"status\":\"other\",\"key\":\"{}\",\"id\":{},\"size\":{},\
                         \"uid\":{},\"attached\":{},\"reason\":{}}}",
                        key_hex(o.key),
                        o.id,
                        o.size,
                        o.uid,
                        o.attached,
                        json_str(&o.reason)
                    );
                }
                Segment::Other(_) => continue,
            }
            out.push('\n');
        }
        for q in &queues {
            out.push_str(&queue_json(q));
            out.push('\n');
        }
        print!("{out}");
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<10} {:>8} {:<9} {:<9} {:>6} {:>7} {:>6} {:>9} {:>3}  {:<14} {:<14}",
        "NAME",
        "KEY",
        "SHMID",
        "STATUS",
        "KIND",
        "CAP",
        "MAXMSG",
        "BYTES",
        "UNREAD",
        "ATT",
        "SENDER",
        "RECEIVER"
    );
    for s in &segments {
        match s {
            Segment::Ring(r) => {
                let _ = writeln!(
                    out,
                    "{:<24} {:<10} {:>8} {:<9} {:<9} {:>6} {:>7} {:>6} {:>9} {:>3}  {:<14} {:<14}",
                    printable(&r.name),
                    key_hex(r.key),
                    r.id,
                    r.status.as_str(),
                    r.kind,
                    r.capacity,
                    r.max_message,
                    short_bytes(r.data_bytes),
                    r.unread.map_or("corrupted".to_string(), |n| n.to_string()),
                    r.attached,
                    role_cell(r.kind == "mpmc", &r.sender, r.members.0),
                    role_cell(r.kind != "spsc", &r.receiver, r.members.1)
                );
            }
            Segment::Other(o) if args.all => {
                let _ = writeln!(
                    out,
                    "{:<24} {:<10} {:>8} {:<9} {:<9} {:>6} {:>7} {:>9} {:>3}  {}",
                    "-",
                    key_hex(o.key),
                    o.id,
                    "other",
                    "-",
                    "-",
                    "-",
                    "-",
                    o.attached,
                    printable(&o.reason)
                );
            }
            Segment::Other(_) => {}
        }
    }
    if !queues.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<10} {:>8} {:>6} {:>9} {:>9} {:<14} {:<14} NOTE",
            "MSGQ KEY", "MSQID", "QNUM", "BYTES", "QBYTES", "LAST SEND", "LAST RECV"
        );
        let pid = |(pid, alive): (u32, bool)| match (pid, alive) {
            (0, _) => "-".to_string(),
            (p, true) => format!("alive/{p}"),
            (p, false) => format!("gone/{p}"),
        };
        for q in &queues {
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>6} {:>9} {:>9} {:<14} {:<14} {}",
                key_hex(q.key),
                q.id,
                q.qnum,
                q.cbytes,
                q.qbytes.map_or("?".to_string(), |b| b.to_string()),
                pid(q.lspid),
                pid(q.lrpid),
                q.note
            );
        }
    }
    // Columns are padded; a line does not end in spaces.
    for line in out.lines() {
        println!("{}", line.trim_end());
    }
    ExitCode::SUCCESS
}

pub(crate) fn rm(args: RmArgs) -> ExitCode {
    if args.stale {
        let (removed, failed) = match inspect::remove_stale(args.prefix.as_deref()) {
            Ok(r) => (r.removed, r.failed),
            Err(e) => return fail(e),
        };
        for r in &removed {
            println!(
                "removed {} (key {}, shmid {}, stale)",
                printable(&r.name),
                key_hex(r.key),
                r.id
            );
        }
        if removed.is_empty() && failed.is_empty() {
            println!("no stale rings");
        }
        for (r, e) in &failed {
            eprintln!("shmpipe: {} (key {}): {e}", printable(&r.name), key_hex(r.key));
        }
        return if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let Some(ring) = args.ring else {
        return fail("rm: a ring or --stale is required");
    };
    let addr = match parse_ring(&ring) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let rule = if args.force {
        Removal::Force
    } else {
        Removal::Unheld
    };
    match inspect::remove(&addr, rule) {
        Ok(r) => {
            println!(
                "removed {} (key {}, shmid {}, was {})",
                printable(&r.name),
                key_hex(r.key),
                r.id,
                r.status.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(e @ shmpipe::Error::InUse(_)) => fail(format_args!("{e} (use --force to remove it anyway)")),
        Err(e) => fail(e),
    }
}

pub(crate) fn stat(args: StatArgs) -> ExitCode {
    let addr = match parse_ring(&args.ring) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let view = match RingView::open(&addr) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let interval = Duration::from_millis(args.interval.max(1));
    let first = view.info();
    println!(
        "# ring {} key {} shmid {} {}{} capacity {} max_message {} data_bytes {}",
        printable(&first.name),
        key_hex(first.key),
        first.id,
        first.kind,
        first.overflow.map_or(String::new(), |o| format!(" overflow={o}")),
        first.capacity,
        first.max_message,
        first.data_bytes
    );
    println!(
        "{:>8} {:>12} {:>12} {:>8} {:>10} {:>11} {:>8} {:>8} {:>10} {:>10} {:>9} {:>6} status",
        "time_s",
        "in",
        "out",
        "unread",
        "full_waits",
        "empty_waits",
        "parks",
        "wakes",
        "in/s",
        "out/s",
        // A broadcast ring recovers nothing; its lapped subscribers miss messages.
        if first.overflow.is_some() {
            "missed"
        } else {
            "recovered"
        },
        "robbed",
    );
    // A broadcast ring's `out` is the slowest subscriber's position and `unread` its lag; after
    // each row comes one comment line per subscriber.
    let start = Instant::now();
    let mut last: Option<(Instant, inspect::Counters)> = None;
    let mut n = 0u64;
    while args.count.is_none_or(|c| n < c) {
        if n > 0 {
            std::thread::sleep(interval);
        }
        let info = view.info();
        let now = Instant::now();
        let c = info.counters;
        let rate = |cur: u64, prev: u64, dt: Duration| {
            format!(
                "{:.0}",
                cur.wrapping_sub(prev) as f64 / dt.as_secs_f64().max(1e-9)
            )
        };
        let (rin, rout) = match last {
            Some((t, p)) => (
                rate(c.messages_in, p.messages_in, now - t),
                rate(c.messages_out, p.messages_out, now - t),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:>8.3} {:>12} {:>12} {:>8} {:>10} {:>11} {:>8} {:>8} {:>10} {:>10} {:>9} {:>6} {}",
            (now - start).as_secs_f64(),
            c.messages_in,
            c.messages_out,
            info.unread.map_or("corrupted".to_string(), |u| u.to_string()),
            c.full_waits,
            c.empty_waits,
            c.parks,
            c.wakes,
            rin,
            rout,
            c.recovered
                .or(c.missed)
                .map_or("n.a.".to_string(), |r| r.to_string()),
            c.robbed.map_or("n.a.".to_string(), |r| r.to_string()),
            info.status.as_str()
        );
        for sub in &info.subscribers {
            println!(
                "#   subscriber {} pid {} {} {} lag {} missed {}",
                sub.index,
                sub.pid,
                if sub.alive { "alive" } else { "dead" },
                if sub.tethered { "tethered" } else { "untethered" },
                sub.lag,
                sub.missed
            );
        }
        last = Some((now, c));
        n += 1;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::short_bytes;

    #[test]
    fn byte_counts_are_short_and_exact_where_small() {
        for (n, want) in [
            (0, "0"),
            (4080, "4080"),
            (9_999, "9999"),
            (10_000, "9.8K"),
            (73_800, "72K"),
            (1 << 20, "1.0M"),
            ((1 << 20) - 1, "1024K"),
            (64 << 20, "64M"),
            (3 << 30, "3.0G"),
        ] {
            assert_eq!(short_bytes(n), want, "{n}");
        }
    }
}
