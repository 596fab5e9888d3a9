//! Readiness from the kernel in async code: fds registered with the tokio reactor, and
//! inotify watches on files and directories.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use nix::sys::inotify::AddWatchFlags as WatchFlags;

use super::SysError;

/// Registers an owned fd with the tokio reactor for readability.
pub fn readable_fd<T: AsRawFd>(inner: T) -> Result<AsyncFd<T>, SysError> {
    // SAFETY: every `T` passed here (OwnedFd, InotifyFd) owns its fd, keeps it open for its
    // whole life and always returns the same one from `as_raw_fd`.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| SysError::call("register fd with the reactor", e.into_parts().1))
}

/// An inotify watch usable from async code: `changed` resolves at the next event.
pub struct Watch {
    /// Taken only by `drop`.
    fd: Option<AsyncFd<InotifyFd>>,
}

impl Drop for Watch {
    /// Closing an inotify instance waits for an SRCU grace period in the kernel
    /// (`fsnotify_destroy_group`): 10–20 ms measured here. On a runtime worker that stalls
    /// whatever waits in its queue (after an attempt's end: the engine, woken by that end),
    /// so the close happens on the blocking pool.
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else {
            return;
        };
        let ino = fd.into_inner();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || drop(ino));
        }
    }
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Watch {
    /// Watches `path` (a file or a directory) for `flags`.
    pub fn new(path: &Path, flags: WatchFlags) -> Result<Watch, SysError> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| SysError::call("inotify_init1", e.into()))?;
        ino.add_watch(path, flags)
            .map_err(|e| SysError::path("inotify_add_watch", path, e.into()))?;
        Ok(Watch {
            fd: Some(readable_fd(InotifyFd(ino))?),
        })
    }

    /// Resolves at the next change.
    pub async fn changed(&self) -> Result<(), SysError> {
        let Some(fd) = &self.fd else {
            return std::future::pending().await;
        };
        let mut guard = fd
            .readable()
            .await
            .map_err(|e| SysError::call("wait for inotify events", e))?;
        let _ = guard.get_inner().0.read_events();
        guard.clear_ready();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_wakes_the_watch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").expect("create");
        let watch = Watch::new(&file, WatchFlags::IN_MODIFY).expect("watch");
        std::fs::write(&file, b"x").expect("write");
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken within 5 s")
            .expect("inotify");
    }

    #[tokio::test]
    async fn watching_a_missing_path_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let e = Watch::new(&missing, WatchFlags::IN_MODIFY)
            .err()
            .expect("missing path");
        assert!(e.to_string().starts_with("inotify_add_watch "), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
