//! The calls of the shim executor and of `orchd daemon upgrade`: the shim's own session
//! and the listener it inherits on a fixed descriptor, its daemonizing fork, and orchd's
//! re-execution of itself.

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;

/// The descriptor a shim finds its per-attempt listening socket on.
pub const SHIM_LISTENER_FD: RawFd = 3;

/// Forks so that the shim is nobody's child but init's (or a subreaper's) once its first
/// process exits: returns `true` in that first process, which must exit at once. Call
/// only while the process has a single thread.
pub fn detach_fork() -> io::Result<bool> {
    // SAFETY: called before any thread is started (the shim's `main`, before its runtime).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Takes the listener orchd handed over on [`SHIM_LISTENER_FD`], close-on-exec from now
/// on (the agent must not inherit it). Refuses a descriptor that is not a listening
/// Unix socket.
pub fn take_shim_listener() -> io::Result<std::os::unix::net::UnixListener> {
    // SAFETY: fcntl on a plain descriptor number.
    if unsafe { libc::fcntl(SHIM_LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no listener on descriptor {SHIM_LISTENER_FD} ({}); a shim is started by orchd only",
                io::Error::last_os_error()
            ),
        ));
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`.
    let r = unsafe {
        libc::getsockopt(
            SHIM_LISTENER_FD,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 || ty == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {SHIM_LISTENER_FD} is not a listening socket"),
        ));
    }
    // SAFETY: the descriptor was handed to this process for this use alone and is
    // owned by the listener from here on.
    Ok(unsafe { std::os::unix::net::UnixListener::from_raw_fd(SHIM_LISTENER_FD) })
}

/// Replaces this process with `exe` run with `args` (same pid, same environment).
/// Returns only on failure. `listener`: a socket passed on as socket activation does
/// (`SD_LISTEN_FDS_START`, fd 3, with `LISTEN_FDS=1` and `LISTEN_PID`).
pub fn reexec(exe: &Path, args: &[OsString], listener: Option<RawFd>) -> io::Error {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args);
    if let Some(fd) = listener {
        cmd.env("LISTEN_FDS", "1")
            .env("LISTEN_PID", std::process::id().to_string())
            .env_remove("LISTEN_FDNAMES");
        // SAFETY: runs in this process just before execve (exec replaces it; nothing is
        // forked); inherit_as makes only async-signal-safe calls. The socket goes where
        // systemd puts a passed one (SD_LISTEN_FDS_START, 3).
        unsafe {
            cmd.pre_exec(move || super::spawn::inherit_as(fd, 3));
        }
    }
    cmd.exec()
}
