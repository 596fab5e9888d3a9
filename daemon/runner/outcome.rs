//! How an attempt that ended on its own becomes an `Outcome` and a message: exit status,
//! signal, the cgroup's `oom_kill` count, and (without a memory controller) allocation
//! failures in the stderr tail.

use crate::model::Outcome;
use crate::sys::Signal;

/// The facts an outcome is decided from.
pub struct Classify<'a> {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `oom_kill` from the leaf's `memory.events`.
    pub oom_kills: u64,
    pub memory_by_cgroup: bool,
    pub memory_limit: Option<u64>,
    pub stderr_tail: &'a str,
}

/// Phrases runtimes print when an allocation fails under RLIMIT_DATA.
const ALLOC_FAILURES: [&str; 6] = [
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "Out of memory",
    "memory allocation of",
    "std::bad_alloc",
];

/// The outcome of a process that ended on its own. `memory_limit` comes from the cgroup's
/// `oom_kill` count (never from exit status 137 alone); without a memory controller, from an
/// allocation failure or a crash of a process that had a memory limit.
pub fn classify(c: &Classify) -> (Outcome, String) {
    let limit = c
        .memory_limit
        .map(|m| orch_proto::units::HumanBytes(m).to_string())
        .unwrap_or_default();
    if c.oom_kills > 0 {
        return (
            Outcome::MemoryLimit,
            format!(
                "killed by the OOM killer at the memory limit of {limit} (memory.events oom_kill {})",
                c.oom_kills
            ),
        );
    }
    if c.exit_code == Some(0) {
        return (Outcome::Success, String::new());
    }
    if c.memory_limit.is_some() && !c.memory_by_cgroup {
        let alloc_failed = ALLOC_FAILURES.iter().any(|p| c.stderr_tail.contains(p));
        let crashed = matches!(c.signal, Some(libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS));
        if alloc_failed || crashed {
            return (
                Outcome::MemoryLimit,
                format!("an allocation failed at the memory limit of {limit} (RLIMIT_DATA)"),
            );
        }
    }
    match (c.exit_code, c.signal) {
        (Some(code), _) => (Outcome::ExitFailure, format!("exited with code {code}")),
        (None, Some(s)) => {
            let name = Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?");
            if s == libc::SIGXCPU {
                (
                    Outcome::CpuLimit,
                    format!("killed by {name}: CPU time limit reached"),
                )
            } else {
                (Outcome::Signaled, format!("killed by signal {s} ({name})"))
            }
        }
        (None, None) => (Outcome::Signaled, "ended without an exit status".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(exit_code: Option<i32>, signal: Option<i32>) -> Classify<'static> {
        Classify {
            exit_code,
            signal,
            oom_kills: 0,
            memory_by_cgroup: false,
            memory_limit: None,
            stderr_tail: "",
        }
    }

    #[test]
    fn classify_outcomes() {
        assert_eq!(classify(&c(Some(0), None)).0, Outcome::Success);
        assert_eq!(classify(&c(Some(3), None)).0, Outcome::ExitFailure);
        assert_eq!(classify(&c(None, Some(9))).0, Outcome::Signaled);
        assert!(classify(&c(None, Some(9))).1.contains("SIGKILL"));
        assert_eq!(classify(&c(None, Some(libc::SIGXCPU))).0, Outcome::CpuLimit);
    }

    #[test]
    fn memory_limit_needs_evidence_not_137() {
        // SIGKILL (137) alone is not an OOM.
        let mut k = c(None, Some(9));
        k.memory_limit = Some(1 << 20);
        k.memory_by_cgroup = true;
        assert_eq!(classify(&k).0, Outcome::Signaled);
        k.oom_kills = 1;
        assert_eq!(classify(&k).0, Outcome::MemoryLimit);
        // rlimit backend: an allocation failure of a limited process.
        let mut r = c(Some(1), None);
        r.memory_limit = Some(64 << 20);
        r.stderr_tail = "Traceback...\nMemoryError\n";
        assert_eq!(classify(&r).0, Outcome::MemoryLimit);
        r.memory_limit = None;
        assert_eq!(classify(&r).0, Outcome::ExitFailure);
    }
}
