//! `auto://NAME` picks shared memory, else a message queue, else a Unix socket. Tested in a
//! private IPC namespace (`unshare --ipc`, root only) where `kernel.shmmni` / `kernel.msgmni` are
//! set to 0, which makes `shmget` / `msgget` fail with ENOSPC exactly as a locked-down container
//! would. The namespace dies with the shell, so nothing can leak into the host's `ipcs`.

use std::process::Command;

fn can_unshare() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    match Command::new("unshare").args(["--ipc", "true"]).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("unshare --ipc failed: {s}")),
        Err(e) => Err(format!("unshare not available: {e}")),
    }
}

/// Streams 2000 lines through `auto://NAME` inside a fresh IPC namespace after `setup`, and
/// returns what the receiver printed on stdout and both ends' stderr.
fn round_trip(name: &str, setup: &str) -> (String, String) {
    let exe = env!("CARGO_BIN_EXE_shmpipe");
    let script = format!(
        "{setup}
         ( seq 1 2000 | {exe} send auto://{name} ) &
         {exe} recv auto://{name}
         wait $!"
    );
    let out = Command::new("unshare")
        .args(["--ipc", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn auto_uses_shared_memory_then_a_queue_then_a_unix_socket() {
    if let Err(why) = can_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let expected: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    let name = format!("auto-{}", std::process::id());
    let cases = [
        ("", "using shm://"),
        ("echo 0 > /proc/sys/kernel/shmmni", "using msgq://"),
        (
            "echo 0 > /proc/sys/kernel/shmmni; echo 0 > /proc/sys/kernel/msgmni",
            "using unix://",
        ),
    ];
    for (setup, chosen) in cases {
        let (stdout, stderr) = round_trip(&name, setup);
        assert_eq!(stdout, expected, "setup {setup:?}");
        assert_eq!(
            stderr.matches(chosen).count(),
            2,
            "both ends say {chosen:?}: {stderr}"
        );
        if chosen != "using shm://" {
            assert!(
                stderr.contains("shm:// unavailable"),
                "the reason is given: {stderr}"
            );
        }
    }
}

#[test]
fn auto_endpoints_are_validated() {
    let exe = env!("CARGO_BIN_EXE_shmpipe");
    for (ep, says) in [
        ("auto://a/b", "characters"),
        ("auto://x?mode=0600", "auto:// takes capacity, max_message"),
    ] {
        let out = Command::new(exe).args(["recv", ep]).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{ep}: {err}");
    }
}

/// Each kernel limit a container may lower, lowered in a private IPC namespace: opening a ring
/// fails with `Error::Limit` naming the limit, and leaves no segment or semaphore set behind.
#[test]
fn lowered_kernel_limits_are_named_in_the_error_and_leave_nothing() {
    if let Err(why) = can_unshare() {
        eprintln!("skipped: {why}");
        return;
    }
    let exe = env!("CARGO_BIN_EXE_shmpipe");
    let cases = [
        ("echo 4096 > /proc/sys/kernel/shmmax", "kernel.shmmax"),
        ("echo 0 > /proc/sys/kernel/shmmni", "kernel.shmmni"),
        ("echo '250 32000 32 0' > /proc/sys/kernel/sem", "kernel.sem"),
    ];
    for (setup, named) in cases {
        let script = format!(
            "{setup}
             {exe} send shm://limited < /dev/null
             echo \"exit=$?\"
             ipcs -m -s | grep -c '^0x' || true"
        );
        let out = Command::new("unshare")
            .args(["--ipc", "sh", "-c", &script])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(stdout.contains("exit=1"), "{setup}: {stdout} {stderr}");
        assert!(
            stderr.contains("system limit") && stderr.contains(named),
            "{setup}: the error names {named}: {stderr}"
        );
        assert_eq!(stdout.lines().last(), Some("0"), "{setup}: left behind: {stdout}");
    }
}
