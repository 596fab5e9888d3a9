//! Processes: signals to a pid or a process group, identity (pid + start time, uids,
//! groups), exit notification (pidfd) and reaping (wait4), and what /proc says about
//! resource use, sessions and environments.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Group, Pid, Uid, User};

use super::SysError;

/// Sends `sig` to every process of the group `pgid`. A group that no longer exists is fine.
pub fn signal_group(pgid: u32, sig: Signal) -> Result<(), SysError> {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(SysError::pid("killpg", pgid, e.into())),
    }
}

/// Sends `sig` to the process `pid`. A process that no longer exists is fine.
pub fn signal_process(pid: u32, sig: Signal) -> Result<(), SysError> {
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(SysError::pid("kill", pid, e.into())),
    }
}

/// Whether the process group `pgid` still has members.
pub fn group_alive(pgid: u32) -> bool {
    matches!(
        killpg(Pid::from_raw(pgid as i32), None),
        Ok(()) | Err(Errno::EPERM)
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

/// A pidfd for `pid` (readable once the process has exited).
pub fn pidfd_open(pid: u32) -> Result<OwnedFd, SysError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(SysError::pid(
            "pidfd_open",
            pid,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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

/// Waits for our child `pid` to end and reaps it; returns its exit status (128 + the
/// signal's number when a signal ended it), as a shell reports it.
pub fn wait_exit(pid: u32) -> std::io::Result<i32> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes only into the local status.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    })
}

/// Reaps `pid` if it has exited (`wait4` with `WNOHANG`); `None` while it runs.
pub fn reap(pid: u32) -> Result<Option<Reaped>, SysError> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into the two locals passed by pointer.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut ru) };
    if r < 0 {
        return Err(SysError::pid("wait4", pid, std::io::Error::last_os_error()));
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

/// The parent pid of `pid` (`/proc/PID/stat` field 4).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The cgroup v2 path of `pid` relative to the hierarchy's root (`/proc/PID/cgroup`,
/// the `0::` line).
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Whether process `pid` is in the tree of an attempt: a member of its cgroup leaf
/// `cgroup` (an absolute path under the cgroup v2 mount), or `root` itself or one of its
/// descendants, where `root` is still the process that started at `root_ticks` (so a
/// reused pid does not count).
pub fn in_attempt_tree(
    pid: u32,
    root: u32,
    root_ticks: Option<u64>,
    cgroup: Option<&Path>,
) -> bool {
    if let (Some(leaf), Some(rel)) = (cgroup, cgroup_of(pid)) {
        let rel = rel.trim_start_matches('/');
        if !rel.is_empty() && leaf.ends_with(rel) {
            return true;
        }
    }
    if root <= 1 || root_ticks.is_some_and(|t| process_start_ticks(root) != Some(t)) {
        return false;
    }
    let mut at = pid;
    // Bounded: a pid chain ends at 1 (or 0) well before this.
    for _ in 0..4096 {
        if at == root {
            return true;
        }
        match parent_pid(at) {
            Some(p) if p > 1 && p != at => at = p,
            _ => return false,
        }
    }
    false
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

/// The real uid of the daemon.
pub fn current_uid() -> u32 {
    Uid::current().as_raw()
}

/// The effective uid of the daemon.
pub fn effective_uid() -> u32 {
    Uid::effective().as_raw()
}

/// The gid of the group called `name` (`getgrnam_r`); `None` when there is no such group.
pub fn group_id(name: &str) -> Result<Option<u32>, SysError> {
    Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(|e| SysError::name("getgrnam", name, e.into()))
}

/// The name of user `uid` in the passwd database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// A user's passwd entry, as much of it as an agent's environment needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub home: String,
    pub shell: String,
}

/// The passwd entry of `uid` (`getpwuid_r`); `None` when there is none (or it cannot be
/// read, or holds a path that is not UTF-8).
pub fn account(uid: u32) -> Option<Account> {
    let u = User::from_uid(Uid::from_raw(uid)).ok().flatten()?;
    Some(Account {
        home: u.dir.into_os_string().into_string().ok()?,
        shell: u.shell.into_os_string().into_string().ok()?,
        name: u.name,
    })
}

/// Who an agent runs as: a daemon running as root runs each agent as the user who
/// submitted it (with that user's supplementary groups); otherwise as the daemon's user.
pub fn run_as(uid: u32, gid: u32) -> Option<(u32, u32, Vec<u32>)> {
    if effective_uid() != 0 || uid == 0 {
        return None;
    }
    let groups = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .and_then(|u| {
            let name = std::ffi::CString::new(u.name).ok()?;
            nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).ok()
        })
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![gid]);
    Some((uid, gid, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_in_the_tree_of_its_ancestors_only() {
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        let ticks = process_start_ticks(parent);
        assert!(in_attempt_tree(me, parent, ticks, None));
        assert!(in_attempt_tree(me, me, process_start_ticks(me), None));
        // Not the other way round, and not when the root's start time says the pid was reused.
        assert!(!in_attempt_tree(parent, me, process_start_ticks(me), None));
        assert!(!in_attempt_tree(me, parent, ticks.map(|t| t + 1), None));
        // pid 1 and 0 are nobody's attempt.
        assert!(!in_attempt_tree(me, 1, None, None));
        assert!(!in_attempt_tree(me, 0, None, None));
        // By cgroup: the leaf this process is in (as an absolute path), not another.
        if let Some(rel) = cgroup_of(me).filter(|r| r != "/") {
            let leaf = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
            assert!(in_attempt_tree(me, 0, None, Some(&leaf)));
            assert!(!in_attempt_tree(me, 0, None, Some(&leaf.join("elsewhere"))));
        }
    }

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
    fn reap_of_a_stranger_names_the_pid() {
        // pid 1 is never our child: wait4 fails with ECHILD.
        let e = reap(1).expect_err("pid 1 is not our child");
        assert!(e.to_string().starts_with("wait4 pid 1: "), "{e}");
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
        assert!(signal_process(pid, Signal::SIGTERM).is_ok());
    }

    #[test]
    fn signal_process_reaches_the_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        signal_process(child.id(), Signal::SIGKILL).expect("kill");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn group_lookup() {
        assert_eq!(group_id("root").expect("getgrnam root"), Some(0));
        assert_eq!(group_id("orch-no-such-group-here").expect("getgrnam"), None);
    }
}
