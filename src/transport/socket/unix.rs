//! A Unix-socket listener whose socket file appears atomically with mode 0600, that replaces a
//! stale file from a crashed run but never a live one, and that removes its file when it goes.
//!
//! Binding: `mkdir` a private directory (mode 0700) next to the target, `bind` the socket in it,
//! `chmod 0600` the socket file, then `link` it to the target path and remove the staging name
//! and directory. Until the `link`, nobody else can reach the socket (the directory is 0700), so
//! there is no window in which the file is reachable with the umask's looser mode; and `link`,
//! unlike `rename`, fails with `EEXIST` instead of replacing a file already at the target.
//!
//! On `EEXIST` the existing file is probed: we connect to it from a socket bound to the abstract
//! address `shmpipe-probe:...`. `ECONNREFUSED` means nobody listens: the file is stale and is
//! unlinked (if it is still the file we probed), then we link again. A connect that succeeds (or
//! a full backlog) means a live listener: `Error::InUse`, and the file is left alone. A shmpipe
//! listener recognises the probe by its address and discards it, so probing does not steal its
//! one connection.

use crate::error::Error;
use crate::sys::socket as sys;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its terminating NUL).
pub(crate) const MAX_PATH: usize = 107;

/// Abstract-address prefix of liveness probes; a listener discards peers bound to it.
const PROBE_PREFIX: &[u8] = b"shmpipe-probe:";

/// Mode of the socket file.
const SOCKET_MODE: u32 = 0o600;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A value unlikely to repeat across processes and calls, for temporary names.
fn unique() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ u64::from(COUNTER.fetch_add(1, Relaxed));
    // splitmix64 finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fs_error(op: &'static str, path: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Error::Permission(format!("{op} {}: {e}", path.display())),
        _ => Error::Io {
            op,
            source: io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        },
    }
}

/// A private directory holding the socket while it is bound and chmod-ed; removed on drop.
struct Staging {
    dir: PathBuf,
    sock: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> Result<Self, Error> {
        for _ in 0..16 {
            let dir = parent.join(format!(".sp{:08x}", unique() as u32));
            let sock = dir.join("s");
            if sock.as_os_str().len() > MAX_PATH {
                return Err(Error::InvalidConfig(format!(
                    "the socket is bound at {} before it is moved into place, which is longer than \
                     the {MAX_PATH} bytes a unix socket path may have; use a shorter directory",
                    sock.display()
                )));
            }
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Staging { dir, sock }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        op: "bind",
                        source: io::Error::new(
                            e.kind(),
                            format!("{}: the directory does not exist", parent.display()),
                        ),
                    })
                }
                Err(e) => return Err(fs_error("mkdir", &dir, e)),
            }
        }
        Err(Error::InUse(format!(
            "could not create a private directory in {}",
            parent.display()
        )))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.sock);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A listening Unix socket and the file it is reachable through.
pub(crate) struct UnixListenerFile {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file we placed, so we only ever remove our own.
    id: (u64, u64),
}

impl UnixListenerFile {
    /// Binds at `path` (absolute, validated by the caller), replacing a stale socket file.
    pub(crate) fn bind(path: &Path) -> Result<Self, Error> {
        let parent = path
            .parent()
            .ok_or_else(|| Error::InvalidConfig(format!("{} has no parent directory", path.display())))?;
        let staging = Staging::create(parent)?;
        let listener = UnixListener::bind(&staging.sock).map_err(|e| fs_error("bind", &staging.sock, e))?;
        // Still inside the 0700 directory: nobody else can connect before this takes effect.
        fs::set_permissions(&staging.sock, fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| fs_error("chmod", &staging.sock, e))?;
        let meta = fs::symlink_metadata(&staging.sock).map_err(|e| fs_error("stat", &staging.sock, e))?;
        let mut attempts = 0;
        loop {
            match fs::hard_link(&staging.sock, path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                    remove_if_stale(path)?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(Error::InUse(format!(
                        "{} keeps reappearing; another process is binding it",
                        path.display()
                    )))
                }
                Err(e) => return Err(fs_error("link", path, e)),
            }
        }
        drop(staging);
        listener.set_nonblocking(true).map_err(|source| Error::Io {
            op: "fcntl(O_NONBLOCK)",
            source,
        })?;
        Ok(UnixListenerFile {
            listener,
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// The next real peer, if one is waiting; liveness probes are discarded.
    pub(crate) fn accept(&self) -> io::Result<Option<UnixStream>> {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    if addr
                        .as_abstract_name()
                        .is_some_and(|n| n.starts_with(PROBE_PREFIX))
                    {
                        continue;
                    }
                    // Left in blocking mode, as `Stream` wants it (accept4 does not inherit the
                    // listener's O_NONBLOCK on Linux).
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// Errors that concern one aborted connection attempt, not the listener.
pub(crate) fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

impl Drop for UnixListenerFile {
    fn drop(&mut self) {
        // Unlink before the socket closes: while it is open, a probe finds it live, so no other
        // shmpipe listener replaces the file meanwhile; and the inode check means a file someone
        // else put there is never removed.
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Removes the socket file at `path` if nobody listens on it. `InUse` if someone does, or if it
/// is not a socket. Returns `Ok` when the way looks clear (the caller links again).
fn remove_if_stale(path: &Path) -> Result<(), Error> {
    let before = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fs_error("stat", path, e)),
    };
    if !before.file_type().is_socket() {
        return Err(Error::InUse(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )));
    }
    let mut tag = PROBE_PREFIX.to_vec();
    tag.extend_from_slice(format!("{}:{:016x}", std::process::id(), unique()).as_bytes());
    match sys::probe_unix(path, &tag) {
        Ok(()) => Err(Error::InUse(format!(
            "a live process is listening on {}",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // Stale. Remove it only if it is still the file we probed: a file that changed meanwhile
            // is looked at afresh by the caller's next attempt.
            match fs::symlink_metadata(path) {
                Ok(now) if (now.dev(), now.ino()) == (before.dev(), before.ino()) => {
                    match fs::remove_file(path) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(fs_error("unlink stale socket", path, e)),
                    }
                }
                _ => Ok(()),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EINPROGRESS) => {
            Err(Error::InUse(format!(
                "a live process is listening on {} (its backlog is full)",
                path.display()
            )))
        }
        Err(e) => Err(fs_error("connect (probing an existing socket)", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("shmpipe-u-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn socket_file_is_0600_and_removed_on_drop() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("a.sock");
        let l = UnixListenerFile::bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        // The staging directory is gone; only the socket remains.
        assert_eq!(entries(&dir.0), vec!["a.sock"]);
        // Reachable through the linked name.
        let _c = UnixStream::connect(&path).unwrap();
        assert!(l.accept().unwrap().is_some());
        drop(l);
        assert!(entries(&dir.0).is_empty());
    }

    #[test]
    fn stale_file_is_replaced_live_one_is_not() {
        let dir = TempDir::new("stale");
        let path = dir.0.join("b.sock");
        // std's listener leaves its file behind when dropped: a stale socket.
        drop(UnixListener::bind(&path).unwrap());
        let l = UnixListenerFile::bind(&path).unwrap();
        // A second listener finds a live one: refused, and the file is untouched.
        let ino = fs::symlink_metadata(&path).unwrap().ino();
        assert!(matches!(UnixListenerFile::bind(&path), Err(Error::InUse(_))));
        assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
        // The probe was discarded: the live listener still waits for its real peer.
        assert!(l.accept().unwrap().is_none());
        let _c = UnixStream::connect(&path).unwrap();
        assert!(l.accept().unwrap().is_some());
        drop(l);
        // A regular file is never replaced.
        fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(UnixListenerFile::bind(&path), Err(Error::InUse(_))));
        assert_eq!(fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn missing_directory_is_named() {
        let err = UnixListenerFile::bind(Path::new("/nonexistent-shmpipe-dir/x.sock"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "bind failed: /nonexistent-shmpipe-dir: the directory does not exist"
        );
    }

    #[test]
    fn a_foreign_live_listener_is_never_unlinked() {
        let dir = TempDir::new("foreign");
        let path = dir.0.join("c.sock");
        let foreign = UnixListener::bind(&path).unwrap();
        assert!(matches!(UnixListenerFile::bind(&path), Err(Error::InUse(_))));
        assert!(fs::symlink_metadata(&path).is_ok());
        drop(foreign);
    }
}
