//! Files: access checks, extended attributes, ownership, the process umask (restricted
//! for the daemon, given back to agents), private files and directories, and POSIX record
//! locks — the file-system calls std has no portable wrapper for.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

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

/// No umask recorded by [`restrict_umask`] yet.
const UNSET: u32 = u32::MAX;
/// The umask the daemon was started with, once [`restrict_umask`] replaced it.
static INHERITED_UMASK: AtomicU32 = AtomicU32::new(UNSET);

/// Sets the process umask to `mask` for the rest of the daemon's life, so that nothing it
/// or a library (sled) creates is wider than that by accident, and remembers the umask the
/// process was started with for [`restore_inherited_umask`]. Returns the remembered one.
pub fn restrict_umask(mask: u32) -> u32 {
    let old = umask(Mode::from_bits_truncate(mask)).bits();
    let _ = INHERITED_UMASK.compare_exchange(UNSET, old, Ordering::SeqCst, Ordering::SeqCst);
    INHERITED_UMASK.load(Ordering::SeqCst)
}

/// Gives a forked child, before `exec`, the umask the daemon was started with (when
/// [`restrict_umask`] changed it): agents create files as their users expect, not with the
/// daemon's private mask. Async-signal-safe: an atomic load and `umask(2)`.
pub fn restore_inherited_umask() {
    let mask = INHERITED_UMASK.load(Ordering::Relaxed);
    if mask != UNSET {
        // SAFETY: umask only sets a process attribute; it cannot fail.
        unsafe {
            libc::umask(mask as libc::mode_t);
        }
    }
}

/// Makes sure the directory `path` exists with exactly `mode`: created (its parent must
/// exist) or, when it is already there and owned by the daemon's user, set to `mode`.
/// A directory of someone else is left as it is (and then writing in it is theirs to allow).
pub fn private_dir(path: &Path, mode: u32) -> Result<(), SysError> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(SysError::path("mkdir", path, e)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| SysError::path("stat", path, e))?;
    if !meta.is_dir() {
        return Err(SysError::path(
            "mkdir",
            path,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        ));
    }
    // The umask may have taken bits `mode` asks for (0711 under 077).
    if meta.uid() == super::effective_uid() && meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| SysError::path("chmod", path, e))?;
    }
    Ok(())
}

/// Creates (or truncates) the file `path` for writing with mode 0600 and, with `owner`,
/// gives it to that uid and gid. A symbolic link at `path` is refused (`O_NOFOLLOW`), and
/// mode and owner are set through the open descriptor, so nothing but that file is touched.
pub fn create_private(path: &Path, owner: Option<(u32, u32)>) -> Result<File, SysError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| SysError::path("open", path, e))?;
    // An existing file keeps its mode on open: set it again.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| SysError::path("fchmod", path, e))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| SysError::path("fchown", path, e.into()))?;
    }
    Ok(file)
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

    /// The umask is process-wide: tests that set it take turns.
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn umask_turn() -> std::sync::MutexGuard<'static, ()> {
        UMASK.lock().unwrap_or_else(|p| p.into_inner())
    }

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
        let _turn = umask_turn();
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
    fn the_inherited_umask_is_remembered_once() {
        // A mask that keeps the owner's bits: other tests create files meanwhile.
        let _turn = umask_turn();
        let before = umask(Mode::from_bits_truncate(0o022));
        let first = restrict_umask(0o077);
        // A second call restricts again but keeps the first inherited mask.
        assert_eq!(restrict_umask(0o077), first);
        restore_inherited_umask();
        let now = umask(before);
        assert_eq!(now.bits(), first);
    }

    #[test]
    fn private_dirs_get_exactly_their_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("d");
        let _turn = umask_turn();
        // 0711 under a umask that would take the x bits of others.
        with_umask(0o077, || private_dir(&d, 0o711)).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&d), 0o711);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&d, 0o700).expect("tighten");
        assert_eq!(mode(&d), 0o700);
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").expect("write");
        let e = private_dir(&f, 0o700).expect_err("a file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = private_dir(&dir.path().join("no/such"), 0o700).expect_err("no parent");
        assert!(e.to_string().starts_with("mkdir "), "{e}");
    }

    #[test]
    fn private_files_are_0600_and_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ckpt.json");
        std::fs::write(&f, b"old").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let meta = std::fs::metadata(&f).expect("stat");
        let mut file = create_private(&f, Some((meta.uid(), meta.gid()))).expect("create");
        io::Write::write_all(&mut file, b"new").expect("write");
        drop(file);
        assert_eq!(std::fs::read(&f).expect("read"), b"new");
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let e = create_private(&link, None).expect_err("a symbolic link");
        assert!(e.to_string().starts_with("open "), "{e}");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
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

/// The space of the filesystem holding `path` (`statvfs(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged user may still write (`f_bavail`).
    pub free: u64,
    /// The filesystem's size.
    pub total: u64,
}

/// The free and total bytes of the filesystem holding `path`.
pub fn fs_space(path: &Path) -> Result<Space, SysError> {
    let s =
        nix::sys::statvfs::statvfs(path).map_err(|e| SysError::path("statvfs", path, e.into()))?;
    let unit = s.fragment_size() as u64;
    Ok(Space {
        free: (s.blocks_available() as u64).saturating_mul(unit),
        total: (s.blocks() as u64).saturating_mul(unit),
    })
}

/// Whether an I/O error means the filesystem (or the user's quota on it) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
