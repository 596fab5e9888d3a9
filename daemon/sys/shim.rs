//! The calls of the shim executor and of `orchd daemon upgrade`: the shim's own session
//! and the listener it inherits on a fixed descriptor, its daemonizing fork, and orchd's
//! re-execution of itself.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

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
    keep_fd3_from_children("listener", "a shim")?;
    if socket_option(SHIM_LISTENER_FD, libc::SO_ACCEPTCONN).unwrap_or(0) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {SHIM_LISTENER_FD} is not a listening socket"),
        ));
    }
    // SAFETY: the descriptor was handed to this process for this use alone and is
    // owned by the listener from here on.
    Ok(unsafe { std::os::unix::net::UnixListener::from_raw_fd(SHIM_LISTENER_FD) })
}

/// Makes [`SHIM_LISTENER_FD`] close-on-exec (the agent must not inherit it); an error
/// naming `what` was expected there when there is no such descriptor.
fn keep_fd3_from_children(what: &str, who: &str) -> io::Result<()> {
    // SAFETY: fcntl on a plain descriptor number.
    if unsafe { libc::fcntl(SHIM_LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no {what} on descriptor {SHIM_LISTENER_FD} ({}); {who} is started by orchd only",
                io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// A connected pair of sequenced-packet Unix sockets, both close-on-exec: orchd's end and
/// the end a spare shim gets as descriptor 3 ([`take_spare_socket`]).
pub fn spare_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// In a spare shim: takes orchd's socket from [`SHIM_LISTENER_FD`], close-on-exec from now
/// on. Refuses a descriptor that is not a sequenced-packet socket.
pub fn take_spare_socket() -> io::Result<OwnedFd> {
    keep_fd3_from_children("socket", "a spare shim")?;
    if socket_option(SHIM_LISTENER_FD, libc::SO_TYPE) != Some(libc::SOCK_SEQPACKET) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {SHIM_LISTENER_FD} is not orchd's socket for a spare shim"),
        ));
    }
    // SAFETY: the descriptor was handed to this process for this use alone.
    Ok(unsafe { OwnedFd::from_raw_fd(SHIM_LISTENER_FD) })
}

/// orchd: hands an attempt to a spare shim, its directory and its listening socket (which
/// the spare then owns; orchd may close its copy). Fails when the spare is gone.
pub fn hand_over(spare: &OwnedFd, dir: &Path, listener: RawFd) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::unix::ffi::OsStrExt;
    let bytes = dir.as_os_str().as_bytes();
    let fds = [listener];
    let sent = sendmsg::<()>(
        spare.as_raw_fd(),
        &[io::IoSlice::new(bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    if sent != bytes.len() {
        return Err(io::Error::other(format!(
            "sent {sent} of {} bytes to the spare shim",
            bytes.len()
        )));
    }
    Ok(())
}

/// In a spare shim: waits until orchd hands over an attempt ([`hand_over`]). `None` when
/// orchd closed its end instead (it stopped, or needs no spare any more).
pub fn receive_attempt(
    spare: &OwnedFd,
) -> io::Result<Option<(PathBuf, std::os::unix::net::UnixListener)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (len, fds) = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            spare.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(got) = c {
                        // SAFETY: the kernel just installed these descriptors in this
                        // process; nothing else owns them.
                        fds.extend(
                            got.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                break (msg.bytes, fds);
            }
        }
    };
    let mut fds = fds.into_iter();
    let Some(listener) = fds.next() else {
        if len == 0 {
            return Ok(None);
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "orchd sent an attempt without its socket",
        ));
    };
    if socket_option(listener.as_raw_fd(), libc::SO_ACCEPTCONN) != Some(1) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket orchd sent is not a listening socket",
        ));
    }
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..len]));
    if !dir.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "orchd sent a directory that is not absolute: {}",
                dir.display()
            ),
        ));
    }
    Ok(Some((
        dir,
        std::os::unix::net::UnixListener::from(listener),
    )))
}

/// orchd: lets a spare shim go and waits (up to `timeout`) until it has exited: it reads
/// the end of orchd's socket and exits, which closes its end (it never writes, so orchd's
/// end becomes readable only then).
pub fn retire_spare(spare: OwnedFd, timeout: std::time::Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    // SAFETY: shutdown on a descriptor this function owns.
    unsafe { libc::shutdown(spare.as_raw_fd(), libc::SHUT_WR) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(spare.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(n) => return n > 0,
            Err(_) => return false,
        }
    }
}

/// From here on this process's stdout and stderr go to `path` (appended, created 0600).
pub fn redirect_output(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for target in [1, 2] {
        // SAFETY: dup2 onto the standard descriptors, from a descriptor this owns.
        if unsafe { libc::dup2(f.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An integer socket option of `fd` (`SOL_SOCKET`); `None` when it is not a socket.
fn socket_option(fd: RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_attempt_handed_over_arrives_with_its_listener() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("att-X-0-1");
        let listener =
            std::os::unix::net::UnixListener::bind(tmp.path().join("sock")).expect("bind");
        let (ours, theirs) = spare_pair().expect("pair");
        hand_over(&ours, &dir, listener.as_raw_fd()).expect("hand over");
        drop(listener);
        let (got, l) = receive_attempt(&theirs)
            .expect("receive")
            .expect("an attempt");
        assert_eq!(got, dir);
        // The listener came along: a connection to its path is accepted through it.
        let _c = std::os::unix::net::UnixStream::connect(tmp.path().join("sock")).expect("connect");
        l.accept().expect("accept through the received listener");
    }

    #[test]
    fn a_spare_told_nothing_hears_the_end_and_orchd_sees_it_go() {
        let (ours, theirs) = spare_pair().expect("pair");
        let spare = std::thread::spawn(move || {
            let r = receive_attempt(&theirs).map(|a| a.is_none());
            drop(theirs);
            r
        });
        assert!(retire_spare(ours, Duration::from_secs(10)), "not retired");
        assert!(
            spare.join().expect("join").expect("receive"),
            "got an attempt"
        );
    }

    #[test]
    fn handing_over_to_a_spare_that_is_gone_fails() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let listener =
            std::os::unix::net::UnixListener::bind(tmp.path().join("sock")).expect("bind");
        let (ours, theirs) = spare_pair().expect("pair");
        drop(theirs);
        assert!(hand_over(&ours, tmp.path(), listener.as_raw_fd()).is_err());
    }

    #[test]
    fn a_socket_that_is_not_listening_or_a_relative_directory_is_refused() {
        let (ours, theirs) = spare_pair().expect("pair");
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("stream pair");
        hand_over(&ours, Path::new("/tmp/x"), a.as_raw_fd()).expect("hand over");
        let e = receive_attempt(&theirs).expect_err("a connected socket is not a listener");
        assert!(e.to_string().contains("not a listening socket"), "{e}");
        let tmp = tempfile::tempdir().expect("temp dir");
        let listener =
            std::os::unix::net::UnixListener::bind(tmp.path().join("sock")).expect("bind");
        hand_over(&ours, Path::new("relative/dir"), listener.as_raw_fd()).expect("hand over");
        let e = receive_attempt(&theirs).expect_err("a relative directory");
        assert!(e.to_string().contains("not absolute"), "{e}");
    }
}
