//! Local message sockets for the control plane ↔ dataplane IPC: a Unix `SOCK_SEQPACKET`
//! listener and connection with peer credentials, message-size checks and timeouts.
//!
//! This module owns every `libc` call the IPC needs, so the dataplane's IPC code stays free of
//! `unsafe`. It moves whole messages only: a [`SeqpacketConn::recv`] returns exactly one
//! message, never part of one, and a message longer than the caller's buffer is reported as
//! [`SeqpacketError::MessageTooLarge`] (it is consumed, so the next message is intact). It must
//! never interpret message contents and never log them (they carry session keys).
//!
//! # Platforms
//! - Linux / Android: `AF_UNIX` + `SOCK_SEQPACKET`, `SO_PEERCRED`, oversize detection with
//!   `MSG_TRUNC` (which reports the real length on Unix seqpacket sockets since Linux 3.4).
//! - Other Unix (macOS, BSDs): macOS has no `SOCK_SEQPACKET` on `AF_UNIX` (`EPROTONOSUPPORT`),
//!   so the fallback is `SOCK_STREAM` with a 4-byte little-endian length prefix per message,
//!   peer credentials from `getpeereid` (pid from `LOCAL_PEERPID` on macOS, 0 elsewhere). A
//!   reader that sees a header waits for the rest of the frame, giving up (a framing error)
//!   after [`FALLBACK_BODY_TIMEOUT`] without progress. The framing code runs in the Linux
//!   unit tests over a stream socketpair; the rest of the fallback is only type-checked
//!   (`cargo check --target aarch64-apple-darwin`): it has not run on a Mac.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of the local message socket layer.
#[derive(Debug, thiserror::Error)]
pub enum SeqpacketError {
    /// The socket path does not fit in `sockaddr_un.sun_path`.
    #[error("socket path {path:?} is {len} bytes; at most {max} bytes fit in sun_path")]
    PathTooLong {
        /// The path given.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest path that fits (without the NUL).
        max: usize,
    },
    /// The socket path contains a NUL byte.
    #[error("socket path {path:?} contains a NUL byte; expected a plain filesystem path")]
    PathHasNul {
        /// The path given.
        path: PathBuf,
    },
    /// Something that is not a socket already exists at the path; we never delete it.
    #[error("{path:?} exists and is not a socket; expected a free path or a stale socket")]
    NotASocket {
        /// The path given.
        path: PathBuf,
    },
    /// A live server already listens on the path.
    #[error("{path:?} is in use: a server is listening on it")]
    InUse {
        /// The path given.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation that failed (e.g. "bind", "connect").
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A received message was larger than the buffer given to `recv` (it was discarded).
    #[error("message too large: {len} bytes, expected at most {max}")]
    MessageTooLarge {
        /// The real length of the message, where the OS reports it (else `max + 1`).
        len: usize,
        /// The buffer size, i.e. the largest message accepted.
        max: usize,
    },
    /// An empty message was given to `send`: a zero-length datagram cannot be told apart
    /// from end-of-stream on a seqpacket socket.
    #[error("empty message: expected at least one byte")]
    EmptyMessage,
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The operation did not complete within the socket's timeout.
    #[error("{op} timed out")]
    TimedOut {
        /// The operation that timed out.
        op: &'static str,
    },
    /// The directory that holds (or would hold) a socket lets someone else replace the socket:
    /// it is group/other-writable, owned by another user, or not a directory.
    #[error(
        "socket directory {dir:?} {problem}; expected a directory owned by root or uid {uid} that \
         group and others cannot write (fix: `chown {uid} {dir:?}` and `chmod 700 {dir:?}`, or put \
         the socket in such a directory, e.g. /run/shadowmesh)"
    )]
    UnsafeDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it, e.g. "has mode 1777 (writable by group or others)".
        problem: String,
        /// Our effective uid (the owner the directory may have besides root).
        uid: u32,
    },
    /// The process at the other end of a connection runs as a user the [`PeerPolicy`] does
    /// not allow; nothing was sent to it.
    #[error(
        "{path:?}: the process serving this socket runs as uid {uid} (pid {pid}), expected \
         {allowed}; refusing to talk to it. Check who owns the socket (`ls -l {path:?}`, \
         `ps -o user,pid,args -p {pid}`) and run both ends as root or as the same user"
    )]
    PeerRefused {
        /// The socket path.
        path: PathBuf,
        /// The peer's process id (0 where the platform cannot tell).
        pid: i32,
        /// The peer's effective uid.
        uid: u32,
        /// The users that would have been accepted, in words.
        allowed: String,
    },
    /// The stream fallback saw a broken frame (only on platforms without seqpacket).
    #[error("broken message framing: {what}")]
    Framing {
        /// What was wrong.
        what: &'static str,
    },
}

impl SeqpacketError {
    /// Whether an `accept` error concerns only the one incoming connection or a passing
    /// resource shortage (ECONNABORTED, EPROTO, EPERM, EMFILE, ENFILE, ENOBUFS, ENOMEM), so
    /// the listener itself is fine and a server should keep serving.
    pub fn is_transient_accept_error(&self) -> bool {
        match self {
            SeqpacketError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(
                    libc::ECONNABORTED
                        | libc::EPROTO
                        | libc::EPERM
                        | libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                )
            ),
            _ => false,
        }
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, SeqpacketError>;

/// Credentials of the process at the other end of a connection, as the kernel recorded them
/// when it connected (not what it claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id (0 where the platform cannot tell).
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// Which users the process at the other end of a local socket may run as: root, this
/// process's effective uid, and optionally one more (e.g. a configured service user).
///
/// Used at both ends: a server closes connections from other users, and a client refuses to
/// send anything (session keys) to a server run by another user, who could have bound the
/// path first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPolicy {
    own_uid: u32,
    extra_uid: Option<u32>,
}

impl PeerPolicy {
    /// Root and this process's effective uid.
    pub fn current() -> Self {
        Self::for_uid(current_uid())
    }

    /// Root and `uid` (as if this process ran as `uid`).
    pub fn for_uid(uid: u32) -> Self {
        Self {
            own_uid: uid,
            extra_uid: None,
        }
    }

    /// Also allows `uid`.
    #[must_use]
    pub fn also_allow(self, uid: u32) -> Self {
        Self {
            extra_uid: Some(uid),
            ..self
        }
    }

    /// Whether a peer with these credentials is allowed.
    pub fn allows(&self, cred: &PeerCred) -> bool {
        cred.uid == 0 || cred.uid == self.own_uid || Some(cred.uid) == self.extra_uid
    }

    /// The allowed users in words, for errors and logs ("root or uid 1000").
    pub fn describe(&self) -> String {
        let mut uids = vec![self.own_uid];
        uids.extend(self.extra_uid);
        uids.retain(|&u| u != 0);
        uids.dedup();
        match uids.as_slice() {
            [] => "root (uid 0)".to_string(),
            [a] => format!("root or uid {a}"),
            [a, b, ..] => format!("root, uid {a} or uid {b}"),
        }
    }
}

/// Read timeout used by the stream fallback for a message body whose header arrived, when no
/// read timeout is set: a writer sends header and body in one write, so the body is near.
pub const FALLBACK_BODY_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(any(target_os = "linux", target_os = "android"))]
const SOCK_TYPE: libc::c_int = libc::SOCK_SEQPACKET;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SOCK_TYPE: libc::c_int = libc::SOCK_STREAM;

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

fn last_err(op: &'static str) -> SeqpacketError {
    let source = io::Error::last_os_error();
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => SeqpacketError::TimedOut { op },
        _ => SeqpacketError::Io { op, source },
    }
}

/// Checks a `-1`-on-error return value.
fn cvt(ret: libc::c_int, op: &'static str) -> Result<libc::c_int> {
    if ret < 0 {
        Err(last_err(op))
    } else {
        Ok(ret)
    }
}

/// Builds a `sockaddr_un` for `path`.
fn sockaddr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(SeqpacketError::PathHasNul {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let max = addr.sun_path.len() - 1; // keep room for the NUL terminator
    if bytes.is_empty() || bytes.len() > max {
        return Err(SeqpacketError::PathTooLong {
            path: path.to_path_buf(),
            len: bytes.len(),
            max,
        });
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        addr.sun_len = len as u8;
    }
    Ok((addr, len as libc::socklen_t))
}

/// Creates an `AF_UNIX` socket of our type with close-on-exec set.
fn new_socket() -> Result<OwnedFd> {
    new_socket_of(SOCK_TYPE)
}

/// Creates an `AF_UNIX` socket of type `ty` with close-on-exec set.
fn new_socket_of(ty: libc::c_int) -> Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let fd = {
        // SAFETY: socket() takes no pointers; the result is checked below.
        unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) }
    };
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let fd = {
        // SAFETY: socket() takes no pointers; the result is checked below.
        unsafe { libc::socket(libc::AF_UNIX, ty, 0) }
    };
    let fd = cvt(fd, "socket")?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        set_cloexec(owned.as_raw_fd())?;
        let one: libc::c_int = 1;
        setsockopt(
            owned.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            &one,
        )?;
    }
    Ok(owned)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_cloexec(fd: RawFd) -> Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    cvt(ret, "fcntl(FD_CLOEXEC)")?;
    Ok(())
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> Result<()> {
    // SAFETY: `val` points to a live T of the size we pass; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(ret, "setsockopt")?;
    Ok(())
}

fn set_nonblocking_fd(fd: RawFd, on: bool) -> Result<()> {
    // SAFETY: fcntl F_GETFL on an fd we own; no pointers.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) }, "fcntl(F_GETFL)")?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: fcntl F_SETFL on an fd we own; no pointers.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    cvt(ret, "fcntl(F_SETFL)")?;
    Ok(())
}

fn timeval(timeout: Option<Duration>) -> libc::timeval {
    match timeout {
        // A zero timeval means "block forever" to the kernel; round a zero Duration up.
        Some(d) => libc::timeval {
            tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_usec: if d.is_zero() {
                1
            } else {
                d.subsec_micros() as libc::suseconds_t
            },
        },
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    }
}

/// Makes sure the directory that will hold a socket guards its path.
///
/// A missing directory is created with mode 0700 (missing ancestors too, 0700 minus the
/// umask). An existing one must be a directory owned by root or by us that group and others
/// cannot write; anything else is [`SeqpacketError::UnsafeDir`]. It is refused rather than
/// warned about or fixed: whoever can write the directory can rename our socket away and put
/// their own in its place, which a warning would not stop, and chmod'ing a directory the
/// operator chose (say `/tmp`) is not ours to do. An empty path means the current directory.
pub fn prepare_socket_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match std::fs::metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| SeqpacketError::Io {
                    op: "create socket directory",
                    source,
                })?;
            // The umask may have taken owner bits away; the directory must be exactly 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| SeqpacketError::Io {
                    op: "chmod socket directory",
                    source,
                },
            )?;
        }
        Err(source) => {
            return Err(SeqpacketError::Io {
                op: "stat socket directory",
                source,
            })
        }
    }
    check_socket_dir(dir)
}

/// The checks of [`prepare_socket_dir`] on an existing path.
fn check_socket_dir(dir: &Path) -> Result<()> {
    let uid = current_uid();
    let meta = std::fs::metadata(dir).map_err(|source| SeqpacketError::Io {
        op: "stat socket directory",
        source,
    })?;
    let unsafe_dir = |problem: String| {
        Err(SeqpacketError::UnsafeDir {
            dir: dir.to_path_buf(),
            problem,
            uid,
        })
    };
    if !meta.is_dir() {
        return unsafe_dir("is not a directory".into());
    }
    if meta.uid() != 0 && meta.uid() != uid {
        return unsafe_dir(format!("is owned by uid {}", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return unsafe_dir(format!("has mode {mode:04o} (writable by group or others)"));
    }
    Ok(())
}

/// Removes a stale socket file at `path` (nothing listens; probed with a socket of type
/// `ty`); refuses a live one and anything that is not a socket.
fn remove_stale_socket(path: &Path, ty: libc::c_int) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let probe = new_socket_of(ty)?;
            match connect_fd(&probe, path) {
                Ok(()) => Err(SeqpacketError::InUse {
                    path: path.to_path_buf(),
                }),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    tracing::info!(path = %path.display(), "removing stale socket file");
                    std::fs::remove_file(path).map_err(|source| SeqpacketError::Io {
                        op: "remove stale socket",
                        source,
                    })
                }
                Err(source) => Err(SeqpacketError::Io {
                    op: "probe existing socket",
                    source,
                }),
            }
        }
        Ok(_) => Err(SeqpacketError::NotASocket {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SeqpacketError::Io {
            op: "stat socket path",
            source,
        }),
    }
}

/// What [`bind_with_mode`] made.
struct BoundSocket {
    /// (device, inode) of the socket file.
    ident: (u64, u64),
    /// The file's permission bits as bind created them (before any fix-up chmod).
    born_mode: u32,
}

impl BoundSocket {
    /// Warns if the file was created with bits beyond `mode` (it was narrowed before
    /// `listen`, so nobody could connect, but the platform ignored the pre-bind mode).
    fn warn_if_born_wide(&self, path: &Path, mode: u32) {
        if self.born_mode & !mode != 0 {
            tracing::warn!(
                path = %path.display(),
                born = format_args!("{:04o}", self.born_mode),
                mode = format_args!("{mode:04o}"),
                "socket file was created wider than asked; narrowed before listen"
            );
        }
    }
}

/// Binds `fd` to `path` so that the socket file is never wider than `mode`, then makes its
/// mode exactly `mode`. Returns the file's identity and first mode. On error the file is
/// removed.
///
/// Nothing can connect before `listen`, but the mode is still right from the first moment
/// the path exists, so no later change (an earlier `listen`, a copied socket) can open a window.
fn bind_with_mode(
    fd: &OwnedFd,
    path: &Path,
    addr: &libc::sockaddr_un,
    len: libc::socklen_t,
    mode: u32,
) -> Result<BoundSocket> {
    let do_bind = || {
        // SAFETY: addr is a valid sockaddr_un of `len` bytes living across the call.
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (addr as *const libc::sockaddr_un).cast(),
                len,
            )
        }
    };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let ret = {
        // Linux creates the socket file with the mode of the unbound socket's inode minus the
        // umask, so an fchmod before bind narrows the file from its creation on, without
        // touching the process-wide umask (which would race other threads creating files).
        // SAFETY: fchmod on a socket we own; no pointers.
        let r = unsafe { libc::fchmod(fd.as_raw_fd(), (mode & 0o777) as libc::mode_t) };
        cvt(r, "fchmod socket")?;
        do_bind()
    };
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let ret = {
        // Elsewhere only the umask shapes the new file's mode: narrow it around bind. It is
        // process-wide, so a file another thread creates meanwhile gets narrower bits too
        // (never wider); the IPC and admin sockets are bound at start-up.
        // SAFETY: umask only swaps the process's mask; it cannot fail.
        let old = unsafe { libc::umask((!mode & 0o777) as libc::mode_t) };
        let r = do_bind();
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old) };
        r
    };
    cvt(ret, "bind")?;
    // Set exactly `mode` (the umask may have taken owner bits too), before listen().
    let ident = std::fs::symlink_metadata(path)
        .map_err(|source| SeqpacketError::Io {
            op: "stat bound socket",
            source,
        })
        .and_then(|meta| {
            let born_mode = meta.mode() & 0o7777;
            if born_mode != mode {
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(|source| SeqpacketError::Io {
                        op: "chmod socket",
                        source,
                    })?;
            }
            Ok(BoundSocket {
                ident: (meta.dev(), meta.ino()),
                born_mode,
            })
        });
    if ident.is_err() {
        let _ = std::fs::remove_file(path);
    }
    ident
}

/// Binds a listening `SOCK_STREAM` Unix socket at `path` whose file has mode `mode` from its
/// creation on, in a directory checked (or created 0700) by [`prepare_socket_dir`]. A stale
/// socket file is replaced; a live one is [`SeqpacketError::InUse`], a non-socket
/// [`SeqpacketError::NotASocket`]. For stream protocols on a local socket (the admin API);
/// unlike [`SeqpacketListener`] the file stays when the listener is dropped.
pub fn bind_stream_listener(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener> {
    let (addr, len) = sockaddr(path)?;
    prepare_socket_dir(path.parent().unwrap_or(Path::new("/")))?;
    remove_stale_socket(path, libc::SOCK_STREAM)?;
    let fd = new_socket_of(libc::SOCK_STREAM)?;
    bind_with_mode(&fd, path, &addr, len, mode)?.warn_if_born_wide(path, mode);
    // SAFETY: listen() on a bound socket we own; no pointers.
    if let Err(e) = cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) }, "listen") {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// Connects `fd` to `path`.
fn connect_fd(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let (addr, len) = sockaddr(path).map_err(io::Error::other)?;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes living across the call.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A listening local message socket, bound to a filesystem path with a given mode.
///
/// Dropping it removes the socket file, unless another server has replaced it meanwhile.
#[derive(Debug)]
pub struct SeqpacketListener {
    fd: OwnedFd,
    path: PathBuf,
    /// (device, inode) of the socket file we created, so Drop never unlinks someone else's.
    ident: (u64, u64),
}

impl SeqpacketListener {
    /// Binds and listens on `path`, with file mode `mode` (0o600 for the IPC socket).
    ///
    /// The directory is checked (or created 0700) by [`prepare_socket_dir`]. A stale socket
    /// file (nothing listening) is removed first; a live one is [`SeqpacketError::InUse`] and
    /// a non-socket file is [`SeqpacketError::NotASocket`]. The socket file is never wider
    /// than `mode`, from its creation on (fchmod before bind on Linux, the umask elsewhere).
    pub fn bind(path: &Path, mode: u32) -> Result<Self> {
        let (addr, len) = sockaddr(path)?;
        prepare_socket_dir(path.parent().unwrap_or(Path::new("/")))?;
        remove_stale_socket(path, SOCK_TYPE)?;
        let fd = new_socket()?;
        let bound = bind_with_mode(&fd, path, &addr, len, mode)?;
        bound.warn_if_born_wide(path, mode);
        let ident = bound.ident;
        // SAFETY: listen() on a bound socket we own; no pointers.
        if let Err(e) = cvt(unsafe { libc::listen(fd.as_raw_fd(), 8) }, "listen") {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            ident,
        })
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `accept` return [`SeqpacketError::TimedOut`] instead of blocking when no
    /// connection is pending.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        set_nonblocking_fd(self.fd.as_raw_fd(), on)
    }

    /// Accepts one connection and reads its peer credentials from the kernel.
    pub fn accept(&self) -> Result<(SeqpacketConn, PeerCred)> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let fd = {
            // SAFETY: null address pointers are allowed (we do not want the address).
            unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            }
        };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let fd = {
            // SAFETY: null address pointers are allowed (we do not want the address).
            unsafe {
                libc::accept(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            }
        };
        let fd = cvt(fd, "accept")?;
        // SAFETY: fd was just returned by accept and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            set_cloexec(owned.as_raw_fd())?;
            let one: libc::c_int = 1;
            setsockopt(
                owned.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                &one,
            )?;
            // Accepted sockets may inherit O_NONBLOCK on BSDs; start blocking as on Linux.
            set_nonblocking_fd(owned.as_raw_fd(), false)?;
        }
        let conn = SeqpacketConn { fd: owned };
        let cred = conn.peer_cred()?;
        Ok((conn, cred))
    }
}

impl AsRawFd for SeqpacketListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for SeqpacketListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SeqpacketListener {
    fn drop(&mut self) {
        // Only remove the file if it is still the socket we created: a newer server may
        // have replaced a path it believed stale.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// One connected local message socket.
#[derive(Debug)]
pub struct SeqpacketConn {
    fd: OwnedFd,
}

impl SeqpacketConn {
    /// Connects to a listener at `path`.
    pub fn connect(path: &Path) -> Result<Self> {
        let fd = new_socket()?;
        connect_fd(&fd, path).map_err(|source| {
            if source.raw_os_error().is_some() {
                SeqpacketError::Io {
                    op: "connect",
                    source,
                }
            } else {
                // sockaddr() errors were wrapped as io::Error::other; unwrap them again.
                match source.into_inner().map(|e| e.downcast::<SeqpacketError>()) {
                    Some(Ok(e)) => *e,
                    _ => SeqpacketError::Io {
                        op: "connect",
                        source: io::Error::other("invalid socket path"),
                    },
                }
            }
        })?;
        Ok(Self { fd })
    }

    /// Connects to a listener at `path` and checks the kernel's record of the server's
    /// credentials against `policy` before anything is sent: a server run by another user
    /// (who may have bound the path before ours) is [`SeqpacketError::PeerRefused`], and the
    /// connection is closed unused.
    pub fn connect_checked(path: &Path, policy: &PeerPolicy) -> Result<(Self, PeerCred)> {
        let conn = Self::connect(path)?;
        let cred = conn.peer_cred()?;
        if !policy.allows(&cred) {
            return Err(SeqpacketError::PeerRefused {
                path: path.to_path_buf(),
                pid: cred.pid,
                uid: cred.uid,
                allowed: policy.describe(),
            });
        }
        Ok((conn, cred))
    }

    /// A connected pair (socketpair), for tests and in-process use.
    pub fn pair() -> Result<(Self, Self)> {
        let mut fds = [0 as libc::c_int; 2];
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let ty = SOCK_TYPE | libc::SOCK_CLOEXEC;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let ty = SOCK_TYPE;
        // SAFETY: fds points to two writable c_ints, as socketpair requires.
        let ret = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
        cvt(ret, "socketpair")?;
        // SAFETY: both fds were just returned by socketpair and are owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        for fd in [&a, &b] {
            set_cloexec(fd.as_raw_fd())?;
            let one: libc::c_int = 1;
            setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NOSIGPIPE, &one)?;
        }
        Ok((Self { fd: a }, Self { fd: b }))
    }

    /// Credentials of the peer process, from the kernel.
    pub fn peer_cred(&self) -> Result<PeerCred> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let mut cred = libc::ucred {
                pid: 0,
                uid: 0,
                gid: 0,
            };
            let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
            // SAFETY: cred and len are live and writable; len holds cred's size.
            let ret = unsafe {
                libc::getsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERCRED,
                    (&mut cred as *mut libc::ucred).cast(),
                    &mut len,
                )
            };
            cvt(ret, "getsockopt(SO_PEERCRED)")?;
            Ok(PeerCred {
                pid: cred.pid,
                uid: cred.uid,
                gid: cred.gid,
            })
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let mut uid: libc::uid_t = 0;
            let mut gid: libc::gid_t = 0;
            // SAFETY: uid and gid are live and writable.
            let ret = unsafe { libc::getpeereid(self.fd.as_raw_fd(), &mut uid, &mut gid) };
            cvt(ret, "getpeereid")?;
            #[allow(unused_mut)]
            let mut pid: libc::pid_t = 0;
            #[cfg(target_vendor = "apple")]
            {
                let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
                // SAFETY: pid and len are live and writable; len holds pid's size. A failure
                // leaves pid at 0, which we report as "unknown".
                let _ = unsafe {
                    libc::getsockopt(
                        self.fd.as_raw_fd(),
                        libc::SOL_LOCAL,
                        libc::LOCAL_PEERPID,
                        (&mut pid as *mut libc::pid_t).cast(),
                        &mut len,
                    )
                };
            }
            Ok(PeerCred { pid, uid, gid })
        }
    }

    /// Sets the timeout of blocking receives (`None` = block forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        setsockopt(
            self.fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeval(timeout),
        )
    }

    /// Sets the timeout of blocking sends (`None` = block forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        setsockopt(
            self.fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &timeval(timeout),
        )
    }

    /// Makes `send`/`recv` return [`SeqpacketError::TimedOut`] instead of blocking.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        set_nonblocking_fd(self.fd.as_raw_fd(), on)
    }

    /// Sends one whole message (blocking up to the write timeout).
    pub fn send(&self, msg: &[u8]) -> Result<()> {
        self.send_flags(msg, 0)
    }

    /// Sends one whole message without blocking: `Ok(false)` if the socket buffer is full
    /// (nothing was sent).
    pub fn try_send(&self, msg: &[u8]) -> Result<bool> {
        match self.send_flags(msg, libc::MSG_DONTWAIT) {
            Ok(()) => Ok(true),
            Err(SeqpacketError::TimedOut { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Receives one whole message into `buf` (blocking up to the read timeout) and returns
    /// its length. A message longer than `buf` is consumed and reported as
    /// [`SeqpacketError::MessageTooLarge`]; end of stream is [`SeqpacketError::Closed`].
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        self.recv_flags(buf, 0)
    }

    /// Like [`recv`](Self::recv) but never blocks: `Ok(None)` when no message is waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        match self.recv_flags(buf, libc::MSG_DONTWAIT) {
            Ok(n) => Ok(Some(n)),
            Err(SeqpacketError::TimedOut { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn send_flags(&self, msg: &[u8], flags: libc::c_int) -> Result<()> {
        if msg.is_empty() {
            return Err(SeqpacketError::EmptyMessage);
        }
        loop {
            // SAFETY: msg is a live slice of msg.len() readable bytes.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    flags | SEND_FLAGS,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(map_send_err(last_err("send")));
            }
            // A seqpacket send is atomic: all or an error.
            return Ok(());
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> Result<usize> {
        loop {
            // SAFETY: buf is a live, writable slice of buf.len() bytes. MSG_TRUNC makes the
            // kernel return the real length but it still writes at most buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(last_err("recv"));
            }
            let n = n as usize;
            if n == 0 {
                // We never send empty messages, so 0 is end of stream.
                return Err(SeqpacketError::Closed);
            }
            if n > buf.len() {
                return Err(SeqpacketError::MessageTooLarge {
                    len: n,
                    max: buf.len(),
                });
            }
            return Ok(n);
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn send_flags(&self, msg: &[u8], flags: libc::c_int) -> Result<()> {
        stream::send(self.fd.as_fd(), msg, flags)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> Result<usize> {
        stream::recv(self.fd.as_fd(), buf, flags, FALLBACK_BODY_TIMEOUT)
    }
}

/// The stream fallback's framing: a 4-byte little-endian length, then the message. Built on
/// non-seqpacket platforms, and in Linux tests (over a stream socketpair) so it is exercised.
#[cfg(any(test, not(any(target_os = "linux", target_os = "android"))))]
mod stream {
    use super::*;

    /// Sends one framed message. Once part of a frame is out, the rest is sent blocking so
    /// the stream stays framed.
    pub(super) fn send(fd: BorrowedFd<'_>, msg: &[u8], flags: libc::c_int) -> Result<()> {
        if msg.is_empty() {
            return Err(SeqpacketError::EmptyMessage);
        }
        let len = u32::try_from(msg.len()).map_err(|_| SeqpacketError::MessageTooLarge {
            len: msg.len(),
            max: u32::MAX as usize,
        })?;
        let mut frame = Vec::with_capacity(4 + msg.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(msg);
        let res = send_all(fd, &frame, flags);
        // The frame held message bytes (maybe keys): clear it before freeing; black_box
        // keeps the compiler from dropping the dead stores.
        frame.fill(0);
        std::hint::black_box(&frame);
        res
    }

    fn send_all(fd: BorrowedFd<'_>, frame: &[u8], flags: libc::c_int) -> Result<()> {
        let mut sent = 0;
        let mut flags = flags;
        while sent < frame.len() {
            let rest = frame.get(sent..).unwrap_or_default();
            // SAFETY: rest is a live slice of rest.len() readable bytes.
            let n = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    flags | SEND_FLAGS,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let err = map_send_err(last_err("send"));
                if sent > 0 {
                    // Part of a frame is out: the stream is now unusable.
                    return Err(SeqpacketError::Framing {
                        what: "send failed mid-message",
                    });
                }
                return Err(err);
            }
            sent += n as usize;
            flags = 0;
        }
        Ok(())
    }

    /// Receives one framed message; see [`SeqpacketConn::recv`]. `body_timeout` bounds each
    /// wait for the rest of a frame whose first byte arrived.
    pub(super) fn recv(
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        flags: libc::c_int,
        body_timeout: Duration,
    ) -> Result<usize> {
        let mut hdr = [0u8; 4];
        // Peek first so that a non-blocking call with no message waiting consumes nothing.
        loop {
            // SAFETY: hdr is a live, writable 4-byte buffer.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    hdr.as_mut_ptr().cast(),
                    hdr.len(),
                    flags | libc::MSG_PEEK,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(last_err("recv"));
            }
            if n == 0 {
                return Err(SeqpacketError::Closed);
            }
            break;
        }
        read_exact(fd, &mut hdr, body_timeout)?;
        let len = u32::from_le_bytes(hdr) as usize;
        if len == 0 {
            return Err(SeqpacketError::Framing {
                what: "zero-length frame",
            });
        }
        if len > buf.len() {
            // Discard the body so the next message stays framed.
            let mut left = len;
            let mut sink = [0u8; 4096];
            while left > 0 {
                let take = left.min(sink.len());
                read_exact(fd, sink.get_mut(..take).unwrap_or_default(), body_timeout)?;
                left -= take;
            }
            return Err(SeqpacketError::MessageTooLarge {
                len,
                max: buf.len(),
            });
        }
        read_exact(fd, buf.get_mut(..len).unwrap_or_default(), body_timeout)?;
        Ok(len)
    }

    /// Reads exactly `buf.len()` bytes without blocking on the socket; waits in `poll` for
    /// the rest, and a wait of `body_timeout` with no progress breaks the frame.
    fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8], body_timeout: Duration) -> Result<()> {
        let mut got = 0;
        let mut stalled = false;
        while got < buf.len() {
            let rest = buf.get_mut(got..).unwrap_or_default();
            // SAFETY: rest is a live, writable slice of rest.len() bytes.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        if stalled {
                            return Err(SeqpacketError::Framing {
                                what: "message body did not arrive in time",
                            });
                        }
                        stalled = true;
                        let mut ready = [false];
                        poll_readable(&[fd], body_timeout, &mut ready)?;
                        continue;
                    }
                    _ => {
                        return Err(SeqpacketError::Io {
                            op: "recv",
                            source: err,
                        })
                    }
                }
            }
            if n == 0 {
                return Err(SeqpacketError::Closed);
            }
            got += n as usize;
            stalled = false;
        }
        Ok(())
    }
}

/// A send to a peer that went away is "closed", not an I/O failure.
fn map_send_err(e: SeqpacketError) -> SeqpacketError {
    match e {
        SeqpacketError::Io { ref source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
            ) =>
        {
            SeqpacketError::Closed
        }
        other => other,
    }
}

impl AsRawFd for SeqpacketConn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for SeqpacketConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until at least one of `fds` is readable (or hung up / in error, which a read then
/// reports), or `timeout` passes. Sets `ready[i]` for each such fd and returns how many are
/// ready (0 on timeout). `ready` must be at least as long as `fds`.
pub fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
    ready: &mut [bool],
) -> Result<usize> {
    let mut pfds = [PollFd::NONE; MAX_POLL_FDS];
    for (p, fd) in pfds.iter_mut().zip(fds.iter()) {
        *p = PollFd {
            fd: Some(*fd),
            write: false,
        };
    }
    let count = fds.len().min(MAX_POLL_FDS);
    let mut states = [Ready::default(); MAX_POLL_FDS];
    let got = poll(pfds.get(..count).unwrap_or_default(), timeout, &mut states)?;
    for (r, st) in ready.iter_mut().zip(states.iter()).take(count) {
        *r = st.readable;
    }
    Ok(got)
}

/// Most fds one [`poll`] call watches; further entries are ignored.
pub const MAX_POLL_FDS: usize = 8;

/// One fd for [`poll`]: always watched for reading, and for writing if `write`.
#[derive(Debug, Clone, Copy)]
pub struct PollFd<'a> {
    /// The fd (`None` = an unused slot).
    pub fd: Option<BorrowedFd<'a>>,
    /// Also wake when it becomes writable.
    pub write: bool,
}

impl PollFd<'_> {
    /// An unused slot.
    pub const NONE: PollFd<'static> = PollFd {
        fd: None,
        write: false,
    };
}

/// What [`poll`] found for one fd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// Readable, hung up or in error (a read reports which).
    pub readable: bool,
    /// Writable (only if asked), or in error (a write reports it).
    pub writable: bool,
}

/// Waits until one of `fds` is ready as asked, or `timeout` passes; fills `ready` (at least
/// as long as `fds`) and returns how many fds are ready (0 on timeout or on a signal).
pub fn poll(fds: &[PollFd<'_>], timeout: Duration, ready: &mut [Ready]) -> Result<usize> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_POLL_FDS];
    let count = fds.len().min(MAX_POLL_FDS).min(ready.len());
    for (p, f) in pfds.iter_mut().zip(fds.iter()).take(count) {
        // A negative fd makes poll skip the entry.
        p.fd = f.fd.map_or(-1, |fd| fd.as_raw_fd());
        p.events = libc::POLLIN | if f.write { libc::POLLOUT } else { 0 };
    }
    // Rounded up: a sub-millisecond wait must not become poll(0) and spin.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: pfds is a live array of at least `count` pollfd entries.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), count as libc::nfds_t, ms) };
    if n < 0 {
        if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            // A signal cut the wait short: report "nothing ready"; callers loop anyway.
            ready.iter_mut().for_each(|r| *r = Ready::default());
            return Ok(0);
        }
        return Err(last_err("poll"));
    }
    let mut got = 0;
    for (r, p) in ready.iter_mut().zip(pfds.iter()).take(count) {
        let err = p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
        r.readable = err || p.revents & libc::POLLIN != 0;
        r.writable = err || p.revents & libc::POLLOUT != 0;
        got += usize::from(r.readable || r.writable);
    }
    Ok(got)
}

/// A wake-up fd for a thread sleeping in [`poll_readable`]: another thread calls
/// [`wake`](Self::wake) after queueing work (e.g. on a channel that cannot be polled), the
/// sleeper polls [`as_fd`](AsFd::as_fd) and calls [`drain`](Self::drain) when it is readable.
/// A non-blocking pipe, so it works on every Unix; wakes coalesce (a full pipe is already
/// awake).
#[derive(Debug)]
pub struct Wakeup {
    read: OwnedFd,
    write: OwnedFd,
}

impl Wakeup {
    /// Creates the pipe (both ends non-blocking and close-on-exec).
    pub fn new() -> Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds points to two writable c_ints, as pipe requires.
        let ret = unsafe { libc::pipe(fds.as_mut_ptr()) };
        cvt(ret, "pipe")?;
        // SAFETY: both fds were just returned by pipe and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            set_nonblocking_fd(fd.as_raw_fd(), true)?;
            // SAFETY: fcntl on an fd we own, with integer arguments only.
            let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            cvt(ret, "fcntl(FD_CLOEXEC)")?;
        }
        Ok(Self { read, write })
    }

    /// Makes the read end readable. Never blocks; safe to call from any thread.
    pub fn wake(&self) {
        let b = [1u8];
        // SAFETY: b is a live 1-byte buffer. EAGAIN (pipe full) means a wake is already
        // pending, which is all we want; other errors cannot be acted on here.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), b.as_ptr().cast(), 1) };
    }

    /// Empties the pipe so the next poll sleeps until the next wake.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        // Bounded: the pipe holds at most its capacity, and wakes racing with us only
        // leave it readable again, which is correct.
        for _ in 0..1024 {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

impl AsFd for Wakeup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

/// The effective user id of this process (the IPC server accepts peers with this uid or 0).
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A path that fits in `sun_path`, helpful to callers choosing a socket location.
pub fn max_path_len() -> usize {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn temp_sock(tag: &str) -> (PathBuf, PathBuf) {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smsp-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        (dir, sock)
    }

    #[test]
    fn bind_sets_mode_0600_and_accept_reports_our_creds() {
        let (dir, path) = temp_sock("mode");
        let l = SeqpacketListener::bind(&path, 0o600).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let c = SeqpacketConn::connect(&path).unwrap();
        let (s, cred) = l.accept().unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(cred.uid, unsafe { libc::geteuid() });
        c.send(b"hello").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.recv(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        drop(l);
        assert!(!path.exists(), "listener drop removes its socket file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn message_boundaries_kept_and_oversize_detected() {
        let (a, b) = SeqpacketConn::pair().unwrap();
        a.send(&[1; 10]).unwrap();
        a.send(&[2; 100]).unwrap();
        a.send(&[3; 3]).unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(b.recv(&mut buf).unwrap(), 10);
        match b.recv(&mut buf) {
            Err(SeqpacketError::MessageTooLarge { len, max }) => {
                assert_eq!(max, 32);
                assert!(len > 32);
            }
            other => panic!("expected MessageTooLarge, got {other:?}"),
        }
        // The oversize message was consumed; the next one is intact.
        assert_eq!(b.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], &[3, 3, 3]);
        assert!(b.try_recv(&mut buf).unwrap().is_none());
        assert!(matches!(a.send(&[]), Err(SeqpacketError::EmptyMessage)));
        drop(a);
        assert!(matches!(b.recv(&mut buf), Err(SeqpacketError::Closed)));
    }

    #[test]
    fn read_timeout_and_poll() {
        let (a, b) = SeqpacketConn::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(
            b.recv(&mut buf),
            Err(SeqpacketError::TimedOut { .. })
        ));
        let mut ready = [false; 1];
        assert_eq!(
            poll_readable(&[b.as_fd()], Duration::from_millis(10), &mut ready).unwrap(),
            0
        );
        a.send(b"x").unwrap();
        assert_eq!(
            poll_readable(&[b.as_fd()], Duration::from_millis(1000), &mut ready).unwrap(),
            1
        );
        assert!(ready[0]);
    }

    #[test]
    fn stale_socket_replaced_live_one_refused_file_kept() {
        let (dir, path) = temp_sock("stale");
        let l = SeqpacketListener::bind(&path, 0o600).unwrap();
        assert!(matches!(
            SeqpacketListener::bind(&path, 0o600),
            Err(SeqpacketError::InUse { .. })
        ));
        drop(l);
        // Leave a stale socket file behind: std's listener does not unlink on drop.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l2 = SeqpacketListener::bind(&path, 0o600).unwrap();
        drop(l2);
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            SeqpacketListener::bind(&path, 0o600),
            Err(SeqpacketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wakeup_wakes_poll_and_drains() {
        let w = Wakeup::new().unwrap();
        let mut ready = [false];
        assert_eq!(
            poll_readable(&[w.as_fd()], Duration::ZERO, &mut ready).unwrap(),
            0
        );
        for _ in 0..100_000 {
            w.wake(); // far more than the pipe holds: must never block
        }
        assert_eq!(
            poll_readable(&[w.as_fd()], Duration::ZERO, &mut ready).unwrap(),
            1
        );
        w.drain();
        assert_eq!(
            poll_readable(&[w.as_fd()], Duration::ZERO, &mut ready).unwrap(),
            0
        );
    }

    fn stream_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds points to two writable c_ints.
        let ret =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(ret, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn stream_fallback_keeps_boundaries_and_detects_oversize() {
        let (a, b) = stream_pair();
        let t = Duration::from_millis(200);
        stream::send(a.as_fd(), &[1; 10], 0).unwrap();
        stream::send(a.as_fd(), &[2; 100], 0).unwrap();
        stream::send(a.as_fd(), &[3; 3], 0).unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(stream::recv(b.as_fd(), &mut buf, 0, t).unwrap(), 10);
        assert_eq!(&buf[..10], &[1; 10]);
        assert!(matches!(
            stream::recv(b.as_fd(), &mut buf, 0, t),
            Err(SeqpacketError::MessageTooLarge { len: 100, max: 32 })
        ));
        assert_eq!(stream::recv(b.as_fd(), &mut buf, 0, t).unwrap(), 3);
        assert_eq!(&buf[..3], &[3, 3, 3]);
        assert!(matches!(
            stream::recv(b.as_fd(), &mut buf, libc::MSG_DONTWAIT, t),
            Err(SeqpacketError::TimedOut { .. })
        ));
        assert!(matches!(
            stream::send(a.as_fd(), &[], 0),
            Err(SeqpacketError::EmptyMessage)
        ));
        drop(a);
        assert!(matches!(
            stream::recv(b.as_fd(), &mut buf, 0, t),
            Err(SeqpacketError::Closed)
        ));
    }

    #[test]
    fn stream_fallback_waits_for_a_split_body_and_gives_up_on_a_stalled_one() {
        let (a, b) = stream_pair();
        let raw = |bytes: &[u8]| {
            // SAFETY: bytes is a live slice; a is a connected socket we own.
            let n = unsafe { libc::send(a.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
            assert_eq!(n as usize, bytes.len());
        };
        // Header and half the body now, the rest a little later: still one message.
        raw(&[4, 0, 0, 0, 9, 9]);
        let mut buf = [0u8; 16];
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                raw(&[8]);
                std::thread::sleep(Duration::from_millis(30));
                raw(&[7]);
            });
            let n = stream::recv(b.as_fd(), &mut buf, 0, Duration::from_secs(2)).unwrap();
            assert_eq!(&buf[..n], &[9, 9, 8, 7]);
        });
        // A header whose body never comes breaks the frame after the body timeout.
        raw(&[4, 0, 0, 0, 1]);
        assert!(matches!(
            stream::recv(b.as_fd(), &mut buf, 0, Duration::from_millis(50)),
            Err(SeqpacketError::Framing { .. })
        ));
    }

    #[test]
    fn bind_creates_a_missing_dir_0700_and_the_socket_is_born_0600() {
        let (dir, _) = temp_sock("newdir");
        let sub = dir.join("a").join("run");
        let path = sub.join("dp.sock");
        let l = SeqpacketListener::bind(&path, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&sub).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        drop(l);
        // The file had 0600 from bind on (fchmod before bind), not after a later chmod: no
        // moment with the umask's wider bits.
        let fd = new_socket().unwrap();
        let (addr, len) = sockaddr(&path).unwrap();
        let bound = bind_with_mode(&fd, &path, &addr, len, 0o600).unwrap();
        assert_eq!(bound.born_mode, 0o600);
        // The stream listener (admin API) goes through the same helpers.
        let spath = sub.join("admin.sock");
        let sl = bind_stream_listener(&spath, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&spath).unwrap().mode() & 0o7777, 0o600);
        let _c = std::os::unix::net::UnixStream::connect(&spath).unwrap();
        assert!(sl.accept().is_ok());
        assert!(matches!(
            bind_stream_listener(&spath, 0o600),
            Err(SeqpacketError::InUse { .. })
        ));
        drop(sl);
        // Stale now: replaced.
        bind_stream_listener(&spath, 0o600).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unsafe_socket_dirs_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path) = temp_sock("unsafe");
        for mode in [0o775, 0o757, 0o1777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = SeqpacketListener::bind(&path, 0o600).unwrap_err();
            assert!(
                matches!(&err, SeqpacketError::UnsafeDir { dir: d, .. } if *d == dir),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{mode:04o}")), "{err}");
            assert!(err.to_string().contains("chmod 700"), "{err}");
            assert!(matches!(
                bind_stream_listener(&path, 0o600),
                Err(SeqpacketError::UnsafeDir { .. })
            ));
            assert!(!path.exists(), "nothing bound in a refused directory");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SeqpacketListener::bind(&path, 0o600).unwrap();
        // A directory owned by another (non-root) user is refused too.
        if current_uid() == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let err = SeqpacketListener::bind(&path, 0o600).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
        // A file where the directory should be.
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            prepare_socket_dir(&file),
            Err(SeqpacketError::UnsafeDir { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn peer_policy_allows_root_ours_and_the_extra_uid_only() {
        let cred = |uid| PeerCred {
            pid: 1,
            uid,
            gid: 0,
        };
        let p = PeerPolicy::for_uid(1000);
        assert!(p.allows(&cred(0)));
        assert!(p.allows(&cred(1000)));
        assert!(!p.allows(&cred(1001)));
        assert!(!p.allows(&cred(65534)));
        assert_eq!(p.describe(), "root or uid 1000");
        let p = p.also_allow(1001);
        assert!(p.allows(&cred(1001)));
        assert!(!p.allows(&cred(1002)));
        assert_eq!(p.describe(), "root, uid 1000 or uid 1001");
        assert_eq!(PeerPolicy::for_uid(0).describe(), "root (uid 0)");
    }

    /// A real server of another user: we bind the socket, a forked child switches to uid
    /// 65534 and calls listen() (the kernel records the listener's credentials there), and
    /// `connect_checked` must refuse it. Needs root to switch uid.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn connect_checked_refuses_a_server_run_by_another_user() {
        if current_uid() != 0 {
            eprintln!("not root: cannot run a server as another uid; skipped");
            return;
        }
        let (dir, path) = temp_sock("peer");
        let fd = new_socket().unwrap();
        let (addr, len) = sockaddr(&path).unwrap();
        bind_with_mode(&fd, &path, &addr, len, 0o600).unwrap();
        let mut ready = [0 as libc::c_int; 2];
        let mut stop = [0 as libc::c_int; 2];
        // SAFETY: each array holds two writable c_ints, as pipe() requires.
        unsafe {
            assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(stop.as_mut_ptr()), 0);
        }
        let raw = fd.as_raw_fd();
        // SAFETY: the child only makes async-signal-safe system calls and ends in _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw system calls on inherited fds and plain integers; no allocation.
            unsafe {
                libc::close(ready[0]);
                libc::close(stop[1]);
                if libc::syscall(libc::SYS_setgid, 65534) != 0
                    || libc::syscall(libc::SYS_setuid, 65534) != 0
                    || libc::listen(raw, 8) != 0
                {
                    libc::_exit(2);
                }
                let one = 1u8;
                libc::write(ready[1], (&one as *const u8).cast(), 1);
                let mut b = 0u8;
                // Returns when the parent closes its end.
                libc::read(stop[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copies of the child's ends; reading one byte into a local.
        let got = unsafe {
            libc::close(ready[1]);
            libc::close(stop[0]);
            let mut b = 0u8;
            libc::read(ready[0], (&mut b as *mut u8).cast(), 1)
        };
        assert_eq!(got, 1, "child failed to listen as uid 65534");
        let result = SeqpacketConn::connect_checked(&path, &PeerPolicy::current());
        let allowed =
            SeqpacketConn::connect_checked(&path, &PeerPolicy::current().also_allow(65534));
        // SAFETY: closing our pipe ends lets the child exit; waitpid reaps it.
        unsafe {
            libc::close(stop[1]);
            libc::close(ready[0]);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        let err = result.unwrap_err();
        match &err {
            SeqpacketError::PeerRefused { uid, pid: p, .. } => {
                assert_eq!(*uid, 65534);
                assert_eq!(*p, pid);
            }
            other => panic!("expected PeerRefused, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("uid 65534") && text.contains(&format!("pid {pid}")),
            "{text}"
        );
        assert!(text.contains("expected root (uid 0)"), "{text}");
        let (_, cred) = allowed.unwrap();
        assert_eq!(cred.uid, 65534);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn path_too_long_is_an_error() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert!(matches!(
            SeqpacketListener::bind(&long, 0o600),
            Err(SeqpacketError::PathTooLong { .. })
        ));
        assert!(matches!(
            SeqpacketConn::connect(&long),
            Err(SeqpacketError::PathTooLong { .. })
        ));
    }
}
