//! Thin, audited wrappers over the process-level syscalls the runner needs: signals to
//! process groups, process identity (pid + start time), and the child's pre-exec setup.

use std::io;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Sends `sig` to every process of the group `pgid`. A group that no longer exists is fine.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Whether the process group `pgid` still has members.
pub fn group_alive(pgid: u32) -> bool {
    matches!(killpg(Pid::from_raw(pgid as i32), None), Ok(()) | Err(nix::errno::Errno::EPERM))
}

/// The start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22), which
/// together with the pid identifies a process even after its pid is reused.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); field 22 is the 20th from here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start_ticks`.
pub fn same_process(pid: u32, start_ticks: u64) -> bool {
    process_start_ticks(pid) == Some(start_ticks)
}

/// Runs in the forked child before `exec`: only async-signal-safe calls.
/// Unblocks every signal (the daemon's mask must not leak into agents) and resets
/// `oom_score_adj` to 0 so agents do not inherit the daemon's OOM protection.
///
/// # Safety
/// Must only be called between `fork` and `exec` (from `Command::pre_exec`).
pub unsafe fn child_pre_exec() -> io::Result<()> {
    // SAFETY: sigemptyset/sigprocmask are async-signal-safe and operate on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_ticks_are_stable() {
        let me = std::process::id();
        let a = process_start_ticks(me).expect("own /proc/PID/stat");
        assert_eq!(process_start_ticks(me), Some(a));
        assert!(same_process(me, a));
        assert!(!same_process(me, a + 1));
    }

    #[test]
    fn dead_group_is_not_alive() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        assert!(!group_alive(pid));
        assert!(signal_group(pid, Signal::SIGTERM).is_ok());
    }
}
