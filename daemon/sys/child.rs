//! The child's side of a spawn: what runs between `fork` and `exec` (new session, cgroup,
//! rlimits, user switch, signal dispositions and mask, close-on-exec of inherited fds,
//! `oom_score_adj`, umask), with everything it needs prepared before `fork`.

use std::io;

/// Data the child needs before `exec`, prepared before `fork` (nothing is allocated in the child).
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// `cgroup.procs` of the attempt's leaf: the child moves itself there first.
    pub cgroup_procs: Option<std::ffi::CString>,
    pub rlimits: Vec<crate::limits::Rlimit>,
    /// Switch to this user (uid, gid, supplementary groups) last, after the root-only steps.
    pub run_as: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// Entered again after switching users, so the user must be able to enter it.
    pub workdir: Option<std::ffi::CString>,
}

/// Runs in the forked child before `exec`: only async-signal-safe calls.
/// Starts a new session (own process group, no controlling terminal), joins the attempt's
/// cgroup, applies rlimits, unblocks every signal (the daemon's mask must not leak into
/// agents), gives back the umask the daemon was started with and resets `oom_score_adj` to
/// 0 so agents do not inherit the daemon's value.
///
/// # Safety
/// Must only be called between `fork` and `exec` (from `Command::pre_exec`).
pub unsafe fn child_pre_exec(setup: &ChildSetup) -> io::Result<()> {
    // SAFETY: setsid is async-signal-safe; the child is not a group leader after fork.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(path) = &setup.cgroup_procs {
        // SAFETY: open/write/close on a NUL-terminated path prepared before fork.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = io::Error::last_os_error();
            libc::close(fd);
            if !ok {
                return Err(err);
            }
        }
    }
    for r in &setup.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit is async-signal-safe and reads a local struct.
        if unsafe { libc::setrlimit(r.resource, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some((uid, gid, groups)) = &setup.run_as {
        // SAFETY: setgroups/setgid/setuid are plain syscalls here (a forked child has one
        // thread); the group list was allocated before fork.
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(*gid) != 0
                || libc::setuid(*uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(dir) = &setup.workdir {
            // SAFETY: chdir with a NUL-terminated path prepared before fork.
            if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // Every signal back to its default action (ignored ones survive exec otherwise).
    for sig in 1..libc::SIGRTMIN() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: signal() with SIG_DFL is async-signal-safe; failures are harmless.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
    // No fd of the daemon beyond 0-2 reaches the agent, even ones it inherited without
    // close-on-exec (close-on-exec rather than close keeps std's exec-error pipe working).
    // SAFETY: close_range only changes fd flags of this (child) process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r != 0 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a local struct.
        let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.min(65536) as i32
        } else {
            1024
        };
        for fd in 3..max {
            // SAFETY: fcntl on an fd that may not exist just fails with EBADF.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    // SAFETY: sigemptyset/sigprocmask are async-signal-safe and operate on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // The umask orchd was started with, not its own private one.
    super::fs::restore_inherited_umask();
    // SAFETY: open/write/close on a NUL-terminated static path are async-signal-safe.
    // Failure (e.g. no /proc) is ignored: it only matters when the daemon's value is non-zero.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
    Ok(())
}
