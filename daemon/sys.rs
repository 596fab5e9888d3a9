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
    matches!(
        killpg(Pid::from_raw(pgid as i32), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
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
/// agents) and resets `oom_score_adj` to 0 so agents do not inherit the daemon's value.
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

/// A pidfd for `pid` (readable once the process has exited).
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// How a reaped child ended, with its resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Peak resident set size of the child (and its reaped descendants), in bytes.
    pub max_rss_bytes: u64,
    /// User + system CPU time, in milliseconds.
    pub cpu_ms: u64,
}

/// Reaps `pid` if it has exited (`wait4` with `WNOHANG`); `None` while it runs.
pub fn reap(pid: u32) -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into the two locals passed by pointer.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut ru) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(None);
    }
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    let tv_ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
    Ok(Some(Reaped {
        exit_code,
        signal,
        max_rss_bytes: ru.ru_maxrss.max(0) as u64 * 1024,
        cpu_ms: tv_ms(ru.ru_utime) + tv_ms(ru.ru_stime),
    }))
}

/// Resource use of a set of processes, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcUsage {
    pub rss_bytes: u64,
    pub cpu_ms: u64,
    pub count: u32,
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// `(session id, utime+stime+cutime+cstime ticks, rss pages)` of `pid` from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let session = num(6)? as u32;
    let cpu = num(14)? + num(15)? + num(16)? + num(17)?;
    Some((session, cpu, num(24)?))
}

/// Sums RSS and CPU of `pids`.
pub fn usage_of(pids: impl IntoIterator<Item = u32>) -> ProcUsage {
    let (ticks, page) = (clock_ticks(), page_size());
    let mut u = ProcUsage::default();
    for pid in pids {
        if let Some((_, cpu, rss)) = proc_stat(pid) {
            u.rss_bytes += rss * page;
            u.cpu_ms += cpu * 1000 / ticks;
            u.count += 1;
        }
    }
    u
}

/// Every process whose session id is `sid` (an attempt's tree under the rlimit backend).
pub fn session_members(sid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(s, _, _)| s == sid))
        .collect()
}

/// Every process whose environment (as it was at exec) holds all of `vars`.
pub fn processes_with_env(vars: &[(&str, &str)]) -> Vec<u32> {
    let wanted: Vec<Vec<u8>> = vars
        .iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            wanted
                .iter()
                .all(|w| env.split(|b| *b == 0).any(|entry| entry == w.as_slice()))
        })
        .collect()
}

/// Registers an owned fd with the tokio reactor for readability.
pub fn readable_fd<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: every `T` passed here (OwnedFd, InotifyFd) owns its fd, keeps it open for its
    // whole life and always returns the same one from `as_raw_fd`.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(|e| io::Error::other(e.to_string()))
}

/// An inotify watch usable from async code: `changed` resolves at the next event.
pub struct Watch {
    fd: tokio::io::unix::AsyncFd<InotifyFd>,
}

struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl Watch {
    /// Watches `path` (a file or a directory) for `flags`.
    pub fn new(
        path: &std::path::Path,
        flags: nix::sys::inotify::AddWatchFlags,
    ) -> io::Result<Watch> {
        use nix::sys::inotify::{InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        ino.add_watch(path, flags)?;
        Ok(Watch {
            fd: readable_fd(InotifyFd(ino))?,
        })
    }

    /// Resolves at the next change.
    pub async fn changed(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        let _ = guard.get_inner().0.read_events();
        guard.clear_ready();
        Ok(())
    }
}

/// What recovery needs to find and kill the leftovers of an attempt: a seam, so the
/// rules of `executor::local::kill_leftover` are tested against a process table in
/// memory while `Host` is the real one.
pub trait Processes: Send + Sync {
    /// The start time of `pid` (clock ticks since boot), if it exists.
    fn start_ticks(&self, pid: u32) -> Option<u64>;
    /// Whether the process group `pgid` still has members.
    fn group_alive(&self, pgid: u32) -> bool;
    /// SIGKILL to the process group `pgid`.
    fn kill_group(&self, pgid: u32);
    /// SIGKILL to `pid`.
    fn kill(&self, pid: u32);
    /// Every process whose environment holds all of `vars`.
    fn with_env(&self, vars: &[(&str, &str)]) -> Vec<u32>;
    fn leaf_exists(&self, leaf: &std::path::Path) -> bool;
    /// Whether a process is still in the cgroup leaf.
    fn leaf_populated(&self, leaf: &std::path::Path) -> bool;
    /// `cgroup.kill` on the leaf.
    fn leaf_kill(&self, leaf: &std::path::Path);
    /// Removes the (empty) leaf.
    fn leaf_remove(&self, leaf: &std::path::Path);
}

/// This machine's processes and cgroups.
pub struct Host;

impl Processes for Host {
    fn start_ticks(&self, pid: u32) -> Option<u64> {
        process_start_ticks(pid)
    }
    fn group_alive(&self, pgid: u32) -> bool {
        group_alive(pgid)
    }
    fn kill_group(&self, pgid: u32) {
        let _ = signal_group(pgid, Signal::SIGKILL);
    }
    fn kill(&self, pid: u32) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    fn with_env(&self, vars: &[(&str, &str)]) -> Vec<u32> {
        processes_with_env(vars)
    }
    fn leaf_exists(&self, leaf: &std::path::Path) -> bool {
        leaf.exists()
    }
    fn leaf_populated(&self, leaf: &std::path::Path) -> bool {
        crate::limits::Leaf(leaf.to_path_buf()).populated()
    }
    fn leaf_kill(&self, leaf: &std::path::Path) {
        let _ = crate::limits::Leaf(leaf.to_path_buf()).kill();
    }
    fn leaf_remove(&self, leaf: &std::path::Path) {
        crate::limits::Leaf(leaf.to_path_buf()).remove();
    }
}

/// The real uid of the daemon.
pub fn current_uid() -> u32 {
    nix::unistd::Uid::current().as_raw()
}

/// The effective uid of the daemon.
pub fn effective_uid() -> u32 {
    nix::unistd::Uid::effective().as_raw()
}

/// Who an agent runs as: a daemon running as root runs each agent as the user who
/// submitted it (with that user's supplementary groups); otherwise as the daemon's user.
pub fn run_as(uid: u32, gid: u32) -> Option<(u32, u32, Vec<u32>)> {
    if effective_uid() != 0 || uid == 0 {
        return None;
    }
    let groups = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .and_then(|u| {
            let name = std::ffi::CString::new(u.name).ok()?;
            nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok()
        })
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![gid]);
    Some((uid, gid, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_ticks_are_stable() {
        let me = std::process::id();
        let a = process_start_ticks(me).expect("own /proc/PID/stat");
        assert_eq!(process_start_ticks(me), Some(a));
        assert_eq!(process_start_ticks(me), Some(a));
        assert_ne!(process_start_ticks(me), Some(a + 1));
    }

    #[test]
    // The child is reaped by `reap` (wait4), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn reap_reports_exit_and_rusage() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let fd = pidfd_open(pid).expect("pidfd");
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
        let r = reap(pid).expect("wait4").expect("exited");
        assert_eq!(r.exit_code, Some(7));
        assert_eq!(r.signal, None);
        assert!(r.max_rss_bytes > 0);
    }

    #[test]
    fn own_session_is_found() {
        let me = std::process::id();
        let (sid, _, _) = proc_stat(me).expect("own stat");
        assert!(session_members(sid).contains(&me));
        assert!(usage_of([me]).rss_bytes > 0);
    }

    #[test]
    fn finds_processes_by_environment() {
        let marker = format!("orch-test-{}-{}", std::process::id(), fastrand::u64(..));
        // Until the child has exec'd, /proc shows the test's own environment: wait for
        // the line the shell prints once it runs.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo up; exec sleep 5"])
            .env("ORCH_TEST_MARK", &marker)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        let out = child.stdout.take().expect("piped stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("read the child's first line");
        assert_eq!(line, "up\n");
        let found = processes_with_env(&[("ORCH_TEST_MARK", &marker)]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found,
            vec![child.id()],
            "processes with {marker}: {found:?}"
        );
        assert!(processes_with_env(&[("ORCH_TEST_MARK", "nobody-has-this")]).is_empty());
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
