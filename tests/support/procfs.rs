//! Looking at processes through /proc (liveness, argv, environment, state, session, start
//! time, ignored signals, open files, cgroup) and the cgroup v2 tree, and signalling them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Sends `sig` to `pid`.
pub fn signal_pid(pid: u32, sig: Signal) -> nix::Result<()> {
    signal::kill(
        Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
        sig,
    )
}

/// SIGKILLs `pid`, ignoring a process that is already gone.
pub fn sigkill(pid: u32) {
    let _ = signal_pid(pid, Signal::SIGKILL);
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// The arguments of `pid` (empty when it is gone or a kernel thread).
pub fn proc_argv(pid: u32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The command line of `pid`: its arguments joined by spaces.
pub fn proc_cmdline(pid: u32) -> String {
    proc_argv(pid).join(" ")
}

/// The environment of `pid` (empty when it is gone or not ours to read).
pub fn proc_environ(pid: u32) -> HashMap<String, String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose arguments are exactly `argv`.
pub fn pids_with_argv(argv: &[&str]) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_argv(*p) == argv && process_alive(*p))
        .collect()
}

/// Live processes (other than this one) whose command line (arguments joined by spaces)
/// contains `text`.
pub fn pids_with_cmdline(text: &str) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|p| *p != me && proc_cmdline(*p).contains(text) && process_alive(*p))
        .collect()
}

/// Live processes (other than this one) whose environment holds `key=value`.
pub fn pids_with_env(key: &str, value: &str) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|p| {
            *p != me
                && proc_environ(*p).get(key).map(String::as_str) == Some(value)
                && process_alive(*p)
        })
        .collect()
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat, after the command name.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

/// The scheduler state letter of `pid` (`R`, `S`, `T`, `Z`...).
pub fn proc_state(pid: u32) -> Option<char> {
    stat_field(pid, 3)?.chars().next()
}

/// The session id of `pid`.
pub fn proc_session(pid: u32) -> Option<u32> {
    stat_field(pid, 6)?.parse().ok()
}

/// The start time of `pid` in clock ticks after boot (field 22 of /proc/PID/stat), while it
/// is a live process: with the pid, the process's identity.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    if !process_alive(pid) {
        return None;
    }
    stat_field(pid, 22)?.parse().ok()
}

/// Whether `sig` is ignored by `pid` (the `SigIgn` mask of /proc/PID/status).
pub fn ignores_signal(pid: u32, sig: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// The cgroup v2 path of `pid` (the `0::` line of /proc/PID/cgroup).
pub fn proc_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// Live processes whose session id is `sid`.
pub fn pids_in_session(sid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_session(*p) == Some(sid) && process_alive(*p))
        .collect()
}

/// The processes that have `path` open, each as `pid PID `ARGV` (state S)`.
pub fn holders_of(path: &Path) -> Vec<String> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| fs::read_link(fd.path()).ok().as_deref() == Some(path))
        })
        .map(|pid| {
            format!(
                "pid {pid} `{}` (state {})",
                proc_cmdline(pid),
                proc_state(pid).unwrap_or('?')
            )
        })
        .collect()
}

/// SIGKILLs `pid` when it is still a live process whose command line (arguments joined by
/// spaces) contains `name`, so that a recycled pid is never hit. Used to clean up agents
/// orphaned by a killed daemon; give each test's agent a distinctive command line.
pub fn kill_if_named(pid: u32, name: &str) {
    if process_alive(pid) && proc_cmdline(pid).contains(name) {
        sigkill(pid);
    }
}

/// Kills the attempt processes of a status object that still run and whose command line
/// contains `name`.
pub fn kill_running_attempts(status: &Value, name: &str) {
    for s in status["steps"].as_array().into_iter().flatten() {
        for a in s["attempts"].as_array().into_iter().flatten() {
            if let Some(pid) = a["pid"].as_u64() {
                kill_if_named(u32::try_from(pid).expect("pid fits u32"), name);
            }
        }
    }
}

/// Where cgroup v2 is mounted.
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    for l in info.lines() {
        if let Some((left, right)) = l.split_once(" - ")
            && right.split_whitespace().next() == Some("cgroup2")
            && let Some(mount) = left.split_whitespace().nth(4)
        {
            return PathBuf::from(mount);
        }
    }
    panic!("no cgroup2 mount in /proc/self/mountinfo");
}

/// A `KEY VALUE` line of a cgroup file.
pub fn cgroup_key(dir: &Path, file: &str, key: &str) -> Option<u64> {
    fs::read_to_string(dir.join(file))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}
