//! The child's side of a spawn: what runs between `fork` and `exec` (new session, cgroup,
//! rlimits, `oom_score_adj`, user switch, working directory, signal dispositions and mask,
//! close-on-exec of inherited fds, umask), with everything it needs prepared before `fork`.

use std::io;

/// Data the child needs before `exec`, prepared before `fork` (nothing is allocated in the child).
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// `cgroup.procs` of the attempt's leaf: the child moves itself there first.
    pub cgroup_procs: Option<std::ffi::CString>,
    pub rlimits: Vec<crate::limits::Rlimit>,
    /// Switch to this user (uid, gid, supplementary groups) last, after the root-only steps.
    pub run_as: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// Entered after switching users, so it is checked with the agent's own credentials:
    /// a failure says only what that user could find out (see [`workdir_error`]).
    pub workdir: Option<std::ffi::CString>,
}

/// Errors of the child's `chdir` are reported as this plus the errno, so that the parent
/// can tell "cannot use the workdir" from "cannot execute the program" (std hands only the
/// raw OS error of a failed `pre_exec` back to the parent).
const WORKDIR_ERRNO_BASE: i32 = 1 << 20;

/// The error of entering the workdir, when `spawn` failed there (as the agent's user).
pub fn workdir_error(e: &io::Error) -> Option<io::Error> {
    match e.raw_os_error() {
        Some(code) if code > WORKDIR_ERRNO_BASE => {
            Some(io::Error::from_raw_os_error(code - WORKDIR_ERRNO_BASE))
        }
        _ => None,
    }
}

/// Runs in the forked child before `exec`: only async-signal-safe calls.
/// Starts a new session (own process group, no controlling terminal), joins the attempt's
/// cgroup, applies rlimits, resets `oom_score_adj` to 0 while still privileged (an agent
/// must not inherit the daemon's value, and an unprivileged process may not lower it),
/// switches to the agent's user, enters the workdir as that user, puts every signal back
/// to its default action (real-time ones included) and unblocks them all (the daemon's
/// dispositions and mask must not leak into agents), and gives back the umask the daemon
/// was started with.
///
/// # Safety
/// Must only be called between `fork` (or `clone3(CLONE_VM | CLONE_VFORK)`, see `spawn`)
/// and `exec`.
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
    // Before the user switch: lowering the value (from a daemon started with a positive
    // one) needs CAP_SYS_RESOURCE, which the agent's user does not have.
    // SAFETY: open/write/close on a NUL-terminated static path are async-signal-safe.
    // Failure (e.g. no /proc, or a non-root daemon that may not lower its own positive
    // value) is ignored: the agent then keeps the daemon's value, as before.
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
    if let Some((uid, gid, groups)) = &setup.run_as {
        // SAFETY: raw setgroups/setgid/setuid system calls: glibc's wrappers would tell
        // every thread of the daemon to switch too (setxid broadcast), and a child started
        // with CLONE_VM shares the daemon's memory; the group list was allocated before.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, *gid) != 0
                || libc::syscall(libc::SYS_setuid, *uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
    }
    if let Some(dir) = &setup.workdir {
        // SAFETY: chdir with a NUL-terminated path prepared before fork.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            return Err(io::Error::from_raw_os_error(WORKDIR_ERRNO_BASE + errno));
        }
    }
    reset_signal_dispositions();
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
    Ok(())
}

/// Every signal, 1 to `SIGRTMAX`, back to its default action: an ignored signal stays
/// ignored across `exec`, and a daemon started by a shell or service manager that ignores
/// some (real-time ones included) must not pass that on. The raw `rt_sigaction` call is
/// used because glibc refuses the two real-time signals it reserves for itself (32, 33),
/// which an ignoring parent may still have set. Failures (SIGKILL, SIGSTOP) are harmless.
fn reset_signal_dispositions() {
    // An all-zero kernel `struct sigaction` is SIG_DFL with no flags and an empty mask on
    // every architecture (SIG_DFL is 0); 64 bytes cover the largest layout.
    let act = [0u64; 8];
    let max = libc::SIGRTMAX();
    // The kernel's sigset_t: one bit per signal, in whole words (8 bytes for 64 signals).
    let sigset_bytes = (max as usize).div_ceil(64) * 8;
    for sig in 1..=max {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction is async-signal-safe; it reads `act` (large enough for the
        // kernel's struct) and writes nothing (no old action is asked for).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig as libc::c_long,
                act.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                sigset_bytes,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workdir_failure_is_told_apart_from_an_exec_failure() {
        let coded = io::Error::from_raw_os_error(WORKDIR_ERRNO_BASE + libc::EACCES);
        let e = workdir_error(&coded).expect("a workdir error");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(workdir_error(&io::Error::from_raw_os_error(libc::EACCES)).is_none());
        assert!(workdir_error(&io::Error::other("no code")).is_none());
    }
}
