//! The CLI run as an unprivileged uid (65534, through `setpriv`) against root's 0600 ring and
//! queue: refused with a permission error naming the problem, exit status 1, and nothing changed.
//! These need root (CI runs as root); elsewhere they say so and pass.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use shmpipe::transport::msgq::MsgqConfig;
use shmpipe::{Peer, Receiver, TryRecvError};
use std::io::Write;
use std::process::{Command, ExitStatus};

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A copy of the CLI binary that any uid can execute (the target dir may not be reachable for
/// uid 65534), in a directory of its own removed on drop.
struct CliCopy {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl CliCopy {
    fn new() -> Option<CliCopy> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(unique_name("shmpipe-faultx-cli"));
        std::fs::create_dir_all(&dir).ok()?;
        let copy = CliCopy {
            exe: dir.join("shmpipe"),
            dir,
        };
        std::fs::set_permissions(&copy.dir, std::fs::Permissions::from_mode(0o755)).ok()?;
        std::fs::copy(env!("CARGO_BIN_EXE_shmpipe"), &copy.exe).ok()?;
        std::fs::set_permissions(&copy.exe, std::fs::Permissions::from_mode(0o755)).ok()?;
        Some(copy)
    }
}

impl Drop for CliCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the CLI as uid/gid 65534 (`setpriv`), feeding `stdin`; returns (status, stderr).
fn cli_as_nobody(args: &[&str], stdin: &str) -> Option<(ExitStatus, String)> {
    if !is_root() {
        eprintln!("skipped: running as another uid needs root");
        return None;
    }
    let Ok(setpriv) = which("setpriv") else {
        eprintln!("skipped: no setpriv");
        return None;
    };
    let copy = CliCopy::new()?;
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy.exe)
        .args(args);
    let mut p = Proc::spawn(cmd, Stdout::Collect);
    let mut stdin_pipe = p.take_stdin();
    // The child may refuse (and exit) before reading its input: a broken pipe here is expected.
    let _ = stdin_pipe.write_all(stdin.as_bytes());
    drop(stdin_pipe);
    let (status, _) = p.wait_output(SOON);
    Some((status, p.stderr_text()))
}

fn which(prog: &str) -> Result<std::path::PathBuf, ()> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = std::path::Path::new(dir).join(prog);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

#[test]
fn an_unprivileged_uid_cannot_receive_from_roots_0600_ring_and_changes_nothing() {
    let ring = Ring::new("nobody-shm");
    let mut tx = ring.cfg(8, 64).open_sender().unwrap();
    send_ok(&mut tx, b"secret");
    let id = ring.shmid().unwrap();
    let before = stat_id(id).unwrap();
    let Some((status, stderr)) = cli_as_nobody(&["recv", &ring.endpoint()], "") else {
        return;
    };
    assert_eq!(status.code(), Some(1), "{status}; stderr:\n{stderr}");
    assert!(stderr.to_lowercase().contains("permission"), "stderr:\n{stderr}");
    assert_eq!(
        ring.shmid(),
        Some(id),
        "the ring was neither removed nor replaced"
    );
    let after = stat_id(id).unwrap();
    assert_eq!(after.shm_nattch, 1, "only our sender is attached");
    assert_eq!(after.shm_perm.mode, before.shm_perm.mode);
    assert_eq!(after.shm_perm.uid, 0);
    // The ring still works for its owner: the message is there, the receiver role free.
    assert_eq!(tx.receiver(), Peer::NotYet);
    let mut rx = ring.cfg(8, 64).open_receiver().unwrap();
    let mut buf = Vec::new();
    recv_ok(&mut rx, &mut buf);
    assert_eq!(buf, b"secret");
    drop((tx, rx));
    ring.assert_gone("after root's pair");
}

#[test]
fn an_unprivileged_uid_cannot_send_into_roots_0600_queue_and_changes_nothing() {
    let q = Queue::new("nobody-msgq");
    let mut rx = MsgqConfig::named(&q.name).unwrap().open_receiver().unwrap();
    let id = msqid_at(q.key).unwrap();
    let endpoint = format!("msgq://{}", q.name);
    let Some((status, stderr)) = cli_as_nobody(&["send", &endpoint], "intruder\n") else {
        return;
    };
    assert_eq!(status.code(), Some(1), "{status}; stderr:\n{stderr}");
    assert!(stderr.to_lowercase().contains("permission"), "stderr:\n{stderr}");
    assert_eq!(
        msqid_at(q.key),
        Some(id),
        "the queue was neither removed nor replaced"
    );
    let mut buf = Vec::new();
    assert_eq!(
        rx.try_recv(&mut buf),
        Err(TryRecvError::Empty),
        "nothing was queued"
    );
    drop(rx);
    assert_eq!(msqid_at(q.key), None, "the receiver removed its queue");
    assert_eq!(semid_at(q.key), None, "and its semaphore set");
}
