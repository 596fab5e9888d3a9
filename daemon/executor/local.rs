//! The local executor: each attempt is a direct child of orchd in its own session and
//! (with the cgroup backend) its own cgroup leaf; it ends when orchd stops. After a
//! restart it cannot re-attach, so it kills what an interrupted attempt left behind,
//! identified by cgroup leaf, by pid plus start time, or by the attempt's environment —
//! never by pid alone. Process inspection goes through the `Processes` seam.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::limits::Limiter;
use crate::model::Attempt;
use crate::runner::{self, RunSpec};
use crate::sys::{self, Processes};

use super::{AttemptHandle, Executor, Facts, Reattached, leaf_name};

pub struct LocalExecutor {
    limiter: Arc<Limiter>,
    procs: Arc<dyn Processes>,
}

impl LocalExecutor {
    pub fn new(limiter: Arc<Limiter>) -> LocalExecutor {
        LocalExecutor {
            limiter,
            procs: Arc::new(sys::Host),
        }
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start(&self, mut spec: RunSpec, facts: Facts) -> AttemptHandle {
        if super::prepare_limits(&self.limiter, &mut spec, &facts).is_none() {
            return AttemptHandle::detached();
        }
        AttemptHandle::new(runner::start(spec, facts))
    }

    fn reattach(&self, attempt: &Attempt, _facts: Facts) -> Reattached {
        // The leaf it had, or would have had: a crash between spawn and recording the
        // spawn leaves no path in the record, but the leaf's name is fixed.
        let leaf = attempt.cgroup.clone().map(PathBuf::from).or_else(|| {
            self.limiter.leaf_path(&leaf_name(
                &attempt.objective_id,
                attempt.step_index,
                attempt.number,
            ))
        });
        Reattached::Gone {
            killed: kill_leftover(attempt, leaf.as_deref(), self.procs.as_ref()),
        }
    }
}

/// Kills what an interrupted attempt left behind: its cgroup leaf, else its process
/// group if it is still the same one (pid and start time match, or the leader is gone
/// and the group id is still in use), else the processes carrying its ids in their
/// environment. Returns whether anything was killed.
pub fn kill_leftover(a: &Attempt, leaf: Option<&Path>, procs: &dyn Processes) -> bool {
    if let Some(cg) = leaf
        && procs.leaf_exists(cg)
    {
        let had = procs.leaf_populated(cg);
        if had {
            tracing::warn!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, cgroup = %cg.display(), "killing the leftover cgroup of an interrupted attempt");
            procs.leaf_kill(cg);
        }
        procs.leaf_remove(cg);
        return had;
    }
    let Some(pid) = a.pid else {
        // Spawned, but the crash came before its pid was recorded: every process of the
        // attempt carries its ids in the environment it was started with.
        let number = a.number.to_string();
        let pids = procs.with_env(&[
            ("ORCH_OBJECTIVE_ID", &a.objective_id),
            ("ORCH_STEP_ID", &a.step_id),
            ("ORCH_ATTEMPT", &number),
        ]);
        for p in &pids {
            tracing::warn!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, pid = p, "killing a leftover process of an interrupted attempt (found by its environment)");
            procs.kill(*p);
        }
        return !pids.is_empty();
    };
    let ours = match (procs.start_ticks(pid), a.pid_start_ticks) {
        (Some(now), Some(then)) => now == then,
        // The leader is gone: a group with this id can only be what it left behind,
        // since a new group leader would have to hold this pid.
        (None, _) => procs.group_alive(pid),
        // Alive, but nothing to tell it from a process that reused the pid.
        (Some(_), None) => false,
    };
    if ours {
        tracing::warn!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, pid, "killing the leftover process group of an interrupted attempt");
        procs.kill_group(pid);
    }
    ours
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    /// A process table in memory: what the seam answers, and what was done to it.
    #[derive(Default)]
    struct Fake {
        ticks: BTreeMap<u32, u64>,
        groups: BTreeSet<u32>,
        env: Vec<u32>,
        leaves: BTreeMap<PathBuf, bool>,
        done: Mutex<Vec<String>>,
    }

    impl Processes for Fake {
        fn start_ticks(&self, pid: u32) -> Option<u64> {
            self.ticks.get(&pid).copied()
        }
        fn group_alive(&self, pgid: u32) -> bool {
            self.groups.contains(&pgid)
        }
        fn kill_group(&self, pgid: u32) {
            self.log(format!("killpg {pgid}"));
        }
        fn kill(&self, pid: u32) {
            self.log(format!("kill {pid}"));
        }
        fn with_env(&self, _vars: &[(&str, &str)]) -> Vec<u32> {
            self.env.clone()
        }
        fn leaf_exists(&self, leaf: &Path) -> bool {
            self.leaves.contains_key(leaf)
        }
        fn leaf_populated(&self, leaf: &Path) -> bool {
            self.leaves.get(leaf).copied().unwrap_or(false)
        }
        fn leaf_kill(&self, leaf: &Path) {
            self.log(format!("cgroup.kill {}", leaf.display()));
        }
        fn leaf_remove(&self, leaf: &Path) {
            self.log(format!("rmdir {}", leaf.display()));
        }
    }

    impl Fake {
        fn log(&self, s: String) {
            if let Ok(mut d) = self.done.lock() {
                d.push(s);
            }
        }
        fn done(&self) -> Vec<String> {
            self.done.lock().map(|d| d.clone()).unwrap_or_default()
        }
    }

    fn attempt(pid: Option<u32>, ticks: Option<u64>) -> Attempt {
        Attempt {
            pid,
            pid_start_ticks: ticks,
            ..Attempt::new("O", 0, "s", 1)
        }
    }

    #[test]
    fn same_pid_and_start_time_is_killed() {
        let f = Fake {
            ticks: [(42, 7)].into(),
            ..Default::default()
        };
        assert!(kill_leftover(&attempt(Some(42), Some(7)), None, &f));
        assert_eq!(f.done(), ["killpg 42"]);
    }

    #[test]
    fn a_recycled_pid_is_never_killed() {
        let f = Fake {
            ticks: [(42, 99)].into(),
            groups: [42].into(),
            ..Default::default()
        };
        assert!(!kill_leftover(&attempt(Some(42), Some(7)), None, &f));
        assert!(!kill_leftover(&attempt(Some(42), None), None, &f));
        assert!(f.done().is_empty());
    }

    #[test]
    fn a_group_left_by_a_dead_leader_is_killed() {
        let f = Fake {
            groups: [42].into(),
            ..Default::default()
        };
        assert!(kill_leftover(&attempt(Some(42), Some(7)), None, &f));
        assert_eq!(f.done(), ["killpg 42"]);
        let empty = Fake::default();
        assert!(!kill_leftover(&attempt(Some(42), Some(7)), None, &empty));
    }

    #[test]
    fn no_pid_recorded_kills_by_environment() {
        let f = Fake {
            env: vec![5, 6],
            ..Default::default()
        };
        assert!(kill_leftover(&attempt(None, None), None, &f));
        assert_eq!(f.done(), ["kill 5", "kill 6"]);
    }

    #[test]
    fn a_leaf_wins_over_the_pid_and_is_removed() {
        let leaf = PathBuf::from("/cg/att-O-0-1");
        let f = Fake {
            ticks: [(42, 7)].into(),
            leaves: [(leaf.clone(), true)].into(),
            ..Default::default()
        };
        assert!(kill_leftover(&attempt(Some(42), Some(7)), Some(&leaf), &f));
        assert_eq!(
            f.done(),
            ["cgroup.kill /cg/att-O-0-1", "rmdir /cg/att-O-0-1"]
        );
        let empty = Fake {
            leaves: [(leaf.clone(), false)].into(),
            ..Default::default()
        };
        assert!(!kill_leftover(
            &attempt(Some(42), Some(7)),
            Some(&leaf),
            &empty
        ));
        assert_eq!(empty.done(), ["rmdir /cg/att-O-0-1"]);
    }

    #[test]
    fn a_missing_leaf_falls_back_to_the_pid() {
        let f = Fake {
            ticks: [(42, 7)].into(),
            ..Default::default()
        };
        let leaf = PathBuf::from("/cg/gone");
        assert!(kill_leftover(&attempt(Some(42), Some(7)), Some(&leaf), &f));
        assert_eq!(f.done(), ["killpg 42"]);
    }
}
