//! Files: access checks, extended attributes, ownership, the process umask and POSIX
//! record locks — the file-system calls std has no portable wrapper for.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::stat::{Mode, umask};
use nix::unistd::{AccessFlags, Gid, Uid, access, chown};

use super::SysError;

/// Whether the daemon's real user may write `path` (`access(2)` with `W_OK`). Any error
/// (missing path, read-only file system, no permission) counts as no.
pub fn can_write(path: &Path) -> bool {
    access(path, AccessFlags::W_OK).is_ok()
}

/// Reads the extended attribute `name` of `path` into `buf` (`getxattr(2)`, following
/// symlinks); returns its length. A value longer than `buf` is an error (`ERANGE`).
pub fn read_xattr(path: &Path, name: &CStr, buf: &mut [u8]) -> Result<usize, SysError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        SysError::path(
            "getxattr",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    // SAFETY: getxattr writes at most buf.len() bytes into buf; path and name are NUL-terminated.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(SysError::path("getxattr", path, io::Error::last_os_error()));
    }
    Ok(n as usize)
}

/// Changes the owner and/or group of `path` (`chown(2)`, following symlinks); `None`
/// leaves that id as it is.
pub fn set_owner(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), SysError> {
    chown(path, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
        .map_err(|e| SysError::path("chown", path, e.into()))
}

/// Runs `f` with the process umask set to `mask`, then restores the previous one. The
/// umask is process-wide: files other threads create meanwhile get it too, so keep `f`
/// short (e.g. one `bind`).
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    let old = umask(Mode::from_bits_truncate(mask));
    let out = f();
    umask(old);
    out
}

/// Takes a POSIX write record lock on the whole of `file` (`fcntl(F_SETLK)`), held until
/// the file is closed. `Ok(false)` when another process holds a lock on it. Unlike
/// `flock`, the lock is not shared with forked children.
pub fn try_lock_record(file: &File) -> Result<bool, SysError> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_SETLK only reads the flock struct we pass; the fd is open for the lifetime
    // of `file`.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(SysError::call("fcntl F_SETLK", err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn writable_dir_and_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(can_write(dir.path()));
        assert!(!can_write(&dir.path().join("missing")));
    }

    #[test]
    fn missing_xattr_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut buf = [0u8; 8];
        let e = read_xattr(dir.path(), c"user.orch-test-none", &mut buf)
            .expect_err("no such attribute");
        let msg = e.to_string();
        assert!(msg.starts_with("getxattr "), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn umask_applies_inside_and_is_restored() {
        // Masks that keep the owner's bits: the umask is process-wide and other tests
        // create files and directories meanwhile.
        let dir = tempfile::tempdir().expect("tempdir");
        let inside = dir.path().join("inside");
        with_umask(0o077, || std::fs::write(&inside, b"x")).expect("write inside");
        let mode = std::fs::metadata(&inside)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let restored = with_umask(0o027, || {
            with_umask(0o077, || ());
            umask(Mode::from_bits_truncate(0o027)).bits()
        });
        assert_eq!(restored, 0o027);
    }

    #[test]
    fn set_owner_to_own_ids_and_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").expect("write");
        let meta = std::fs::metadata(&f).expect("stat");
        set_owner(&f, Some(meta.uid()), Some(meta.gid())).expect("chown to own ids");
        set_owner(&f, None, None).expect("chown with nothing to change");
        let missing = dir.path().join("missing");
        let e = set_owner(&missing, None, Some(meta.gid())).expect_err("missing file");
        assert!(e.to_string().starts_with("chown "), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn record_lock_on_a_writable_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        assert!(try_lock_record(&file).expect("lock"));
        // A write lock needs an fd open for writing.
        let read_only = File::open(&path).expect("open read-only");
        let e = try_lock_record(&read_only).expect_err("read-only fd");
        assert!(e.to_string().starts_with("fcntl F_SETLK: "), "{e}");
    }
}
