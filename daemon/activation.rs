//! Socket activation: the listening socket systemd hands orchd (`orchd.socket`,
//! `LISTEN_PID`/`LISTEN_FDS`, `sd_listen_fds(3)`). With one, orchd serves on it as it is (its
//! owner, group and mode are the socket unit's) and leaves the file in place when it stops;
//! without, it binds its own socket as before.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{Context, bail};
use nix::sys::socket::{self, SockType, sockopt};

/// The listening socket systemd passed, and its path.
#[derive(Debug)]
pub struct Activated {
    pub listener: UnixListener,
    pub path: PathBuf,
}

/// Takes the socket systemd passed to this process, if any, and removes the `LISTEN_*`
/// variables so nothing orchd starts sees them. Must run before any other thread starts.
/// More than one socket, or one that is not a listening Unix stream socket bound to a path,
/// is refused with the reason (the socket unit is wrong).
pub fn take() -> anyhow::Result<Option<Activated>> {
    let fds: Vec<i32> = sd_notify::listen_fds()
        .context("the socket-activation variables LISTEN_PID/LISTEN_FDS are malformed")?
        .collect();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called from `main`'s thread before the runtime (or any other thread)
        // starts, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => bail!(
            "systemd passed {} sockets (LISTEN_FDS); orchd serves on exactly one: \
             give orchd.socket a single ListenStream=",
            more.len()
        ),
    };
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID matched) and
    // nothing else in orchd owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    adopt(owned)
}

/// Checks that `fd` is a listening Unix stream socket bound to a path and makes it a
/// non-blocking listener.
pub fn adopt(fd: OwnedFd) -> anyhow::Result<Option<Activated>> {
    let kind = socket::getsockopt(&fd, sockopt::SockType)
        .context("the socket passed by systemd (fd 3) is not a socket")?;
    if kind != SockType::Stream {
        bail!(
            "the socket passed by systemd is not a stream socket: use ListenStream= in orchd.socket"
        );
    }
    let listening = socket::getsockopt(&fd, sockopt::AcceptConn)
        .context("cannot inspect the socket passed by systemd")?;
    if !listening {
        bail!("the socket passed by systemd is not listening (Accept=yes is not supported)");
    }
    let addr: socket::UnixAddr = socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .context(
            "the socket passed by systemd is not a Unix socket: ListenStream= must name a path",
        )?;
    let Some(path) = addr.path() else {
        bail!("the socket passed by systemd has no path (an abstract socket?)");
    };
    let path = path.to_path_buf();
    let listener = UnixListener::from(fd);
    listener
        .set_nonblocking(true)
        .context("cannot make the passed socket non-blocking")?;
    Ok(Some(Activated { listener, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_unix_socket_is_adopted_with_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let got = adopt(OwnedFd::from(l)).expect("adopted").expect("some");
        assert_eq!(got.path, path);
    }

    #[test]
    fn a_datagram_socket_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = std::os::unix::net::UnixDatagram::bind(dir.path().join("d.sock")).expect("bind");
        let err = adopt(OwnedFd::from(s)).expect_err("refused");
        assert!(err.to_string().contains("not a stream socket"), "{err}");
    }

    #[test]
    fn a_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = std::fs::File::create(dir.path().join("f")).expect("file");
        let err = adopt(OwnedFd::from(f)).expect_err("refused");
        assert!(err.to_string().contains("not a socket"), "{err:#}");
    }

    #[test]
    fn a_tcp_socket_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let err = adopt(OwnedFd::from(l)).expect_err("refused");
        assert!(err.to_string().contains("not a Unix socket"), "{err:#}");
    }
}
