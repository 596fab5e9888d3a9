//! Where an attempt runs: the `Executor` seam. The engine decides *that* an attempt
//! starts, stops, pauses or resumes; an executor decides *how*: a direct child of orchd
//! (`local`), and later a supervisor process that outlives orchd (live restore) or a
//! job of a cluster engine. Every executor reports the same facts (`runner::Fact`) on
//! the engine's channel, the attempt's `Ended` last and exactly once, and takes orders
//! through an `AttemptHandle`.

pub mod local;
pub mod shim;
pub mod slurm;

use tokio::sync::mpsc;

use crate::model::{Attempt, Control};
use crate::runner::{Fact, RunSpec};

pub use local::LocalExecutor;
pub use shim::ShimExecutor;
pub use slurm::SlurmExecutor;

/// Where the engine's facts go.
pub type Facts = mpsc::UnboundedSender<Fact>;

/// Orders to one running attempt. Dropping it does not stop the attempt.
#[derive(Debug, Clone)]
pub struct AttemptHandle(mpsc::UnboundedSender<Control>);

impl AttemptHandle {
    pub fn new(tx: mpsc::UnboundedSender<Control>) -> AttemptHandle {
        AttemptHandle(tx)
    }

    /// A handle whose orders go nowhere (the attempt already reported its end).
    pub fn detached() -> AttemptHandle {
        AttemptHandle(mpsc::unbounded_channel().0)
    }

    /// Sends an order; an attempt that already ended ignores it.
    pub fn send(&self, order: Control) {
        let _ = self.0.send(order);
    }
}

/// What became of an attempt recorded as running when orchd last stopped.
#[derive(Debug)]
pub enum Reattached {
    /// It is gone (`killed`: a leftover of it was found and killed); it ends `interrupted`.
    Gone { killed: bool },
    /// It still runs and reports to the engine again through this handle. The local
    /// executor never re-attaches (its attempts die with orchd); a Slurm job does.
    Attached(AttemptHandle),
}

/// Runs attempts somewhere.
pub trait Executor: Send + Sync {
    /// The name `daemon status` shows.
    fn name(&self) -> &'static str;

    /// Starts the attempt. Its facts (`Started`, lines, samples, `Ended`) arrive on
    /// `facts`; a start that fails is reported as an `Ended` with `spawn_error`.
    fn start(&self, spec: RunSpec, facts: Facts) -> AttemptHandle;

    /// After a restart: finds what is left of `attempt` and either re-attaches to it or
    /// makes sure nothing of it runs any more.
    fn reattach(&self, attempt: &Attempt, facts: Facts) -> Reattached;

    /// What is left to remove once the attempt's end is durable (a shim's directory).
    fn leftovers(&self, _key: &crate::runner::AttemptKey) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}

/// Every executor of the daemon: `local`, and `slurm` when `[executors.slurm]` is set.
/// Attempts go to the one their step names (`RunSpec::executor`, `Attempt::executor`).
pub struct Executors {
    pub local: LocalExecutor,
    /// Re-attaches to shims whatever `live_restore` says now (an earlier orchd may have
    /// started them); starts this machine's attempts when `live_restore` is on.
    pub shim: ShimExecutor,
    pub live_restore: bool,
    pub slurm: Option<SlurmExecutor>,
}

/// One executor's health, for `daemon status`.
pub struct ExecutorHealth {
    pub name: &'static str,
    pub healthy: bool,
    pub detail: String,
}

impl std::fmt::Debug for Executors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Executors {
    pub async fn health(&self) -> Vec<ExecutorHealth> {
        let mut v = vec![ExecutorHealth {
            name: "local",
            healthy: true,
            detail: if self.live_restore {
                "live restore: each attempt under a shim that outlives orchd".into()
            } else {
                String::new()
            },
        }];
        if let Some(s) = &self.slurm {
            let h = s.health().await;
            v.push(ExecutorHealth {
                name: "slurm",
                healthy: h.healthy,
                detail: h.detail,
            });
        }
        v
    }
}

impl Executor for Executors {
    fn name(&self) -> &'static str {
        if self.slurm.is_some() {
            "local, slurm"
        } else {
            "local"
        }
    }

    fn start(&self, spec: RunSpec, facts: Facts) -> AttemptHandle {
        match (spec.executor.as_str(), &self.slurm) {
            // A private workspace (worktree, scratch) is made and committed by orchd's own
            // runner around the attempt, so such a step runs as orchd's direct child: a
            // crash interrupts it and its next attempt continues in the same worktree.
            ("", _) | ("local", _) if self.live_restore && spec.workspace.is_none() => {
                self.shim.start(spec, facts)
            }
            ("", _) | ("local", _) => self.local.start(spec, facts),
            ("slurm", Some(s)) => s.start(spec, facts),
            (other, _) => {
                // Refused at submit; a stored step whose executor was since removed.
                let message = format!(
                    "executor `{other}` is not configured in this daemon (executors.{other} in orchd.toml)"
                );
                let _ = facts.send(Fact::Ended {
                    key: spec.key,
                    end: crate::runner::AttemptEnd::spawn_error(message),
                });
                AttemptHandle::detached()
            }
        }
    }

    fn reattach(&self, attempt: &Attempt, facts: Facts) -> Reattached {
        match (attempt.executor.as_str(), &self.slurm) {
            ("", _) | ("local", _) => match self.shim.reattach(attempt, facts.clone()) {
                Some(r) => r,
                None => self.local.reattach(attempt, facts),
            },
            ("slurm", Some(s)) => s.reattach(attempt, facts),
            (other, _) => {
                tracing::warn!(objective = %attempt.objective_id, step = %attempt.step_id, executor = other, job = ?attempt.job_id, "an attempt of an executor no longer configured: recorded interrupted, its job is left alone");
                Reattached::Gone { killed: false }
            }
        }
    }

    fn leftovers(&self, key: &crate::runner::AttemptKey) -> Vec<std::path::PathBuf> {
        self.shim.leftovers(key)
    }
}

/// Prepares the attempt's limits (its cgroup leaf or rlimits) into `spec.prepared`;
/// returns the leaf's name. On failure the attempt's end (`spawn_error`) is reported
/// and `None` returned: the caller hands back [`AttemptHandle::detached`].
pub fn prepare_limits(
    limiter: &crate::limits::Limiter,
    spec: &mut RunSpec,
    facts: &Facts,
) -> Option<String> {
    let key = &spec.key;
    let leaf = leaf_name(&key.objective_id, key.step_index, key.number);
    let uid = spec
        .run_as
        .as_ref()
        .map_or_else(crate::sys::current_uid, |r| r.0);
    match limiter.prepare(&leaf, &spec.limits, uid) {
        Ok(p) => {
            spec.prepared = p;
            Some(leaf)
        }
        Err(e) => {
            let _ = facts.send(Fact::Ended {
                key: key.clone(),
                end: crate::runner::AttemptEnd::spawn_error(format!(
                    "cannot set up the attempt's limits: {e}"
                )),
            });
            None
        }
    }
}

/// The name of an attempt's cgroup leaf (fixed, so recovery finds it without a record).
pub fn leaf_name(objective_id: &str, step_index: u32, number: u32) -> String {
    format!("att-{objective_id}-{step_index}-{number}")
}
