//! The inputs of the core: control calls, facts about attempts, timers, a budget
//! running out, recovery, and a goal-only objective's plans and verdicts.

use super::{End, planner, routing};
use crate::model::{Attempt, Branch, FailureClass, Millis, Usage};

/// One input to an objective.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Cancel {
        by: u32,
    },
    Pause {
        by: u32,
    },
    Resume {
        by: u32,
    },
    Approve {
        step: String,
        approve: bool,
        reason: String,
        by: u32,
    },
    /// Re-run the failed or cancelled steps (or `step` alone) of an ended objective.
    Retry {
        step: Option<String>,
        /// Forget the agents' sessions: the next attempts start new ones.
        fresh: bool,
        by: u32,
    },
    /// Remove an ended objective (its records, logs and checkpoints go once the
    /// decision is durable).
    Remove {
        by: u32,
    },
    /// A routed step about to start: the agent routing chose (see `routing`), or none.
    Route {
        step: u32,
        routed: routing::Routed,
    },
    /// The scheduler gave a slot to a ready step: open its next attempt.
    Start {
        step: u32,
        agent: String,
        command: Vec<String>,
    },
    /// The attempt runs: a local process (`pid`), or a cluster job (`job_id`).
    Started {
        step: u32,
        attempt: u32,
        pid: Option<u32>,
        start_ticks: Option<u64>,
        cgroup: Option<String>,
        job_id: Option<String>,
    },
    /// Resource figures of a running attempt (kept in memory, stored with its end).
    Sample {
        step: u32,
        attempt: u32,
        peak_rss_bytes: u64,
        cpu_ms: u64,
    },
    Checkpoint {
        step: u32,
        attempt: u32,
        json: String,
    },
    Progress {
        step: u32,
        attempt: u32,
        percent: Option<f64>,
        message: String,
    },
    /// Usage reported by an attempt, priced and attributed to a model.
    Usage {
        step: u32,
        attempt: u32,
        delta: Usage,
        model: String,
    },
    /// The provider refused until `until_ms`, or (`None`) without saying: then the step
    /// waits `wait_ms` from the attempt's end.
    RateLimited {
        step: u32,
        attempt: u32,
        until_ms: Option<Millis>,
        wait_ms: u64,
    },
    /// The agent's session id (recorded on the attempt, for a later resume).
    Session {
        step: u32,
        attempt: u32,
        id: String,
    },
    /// The agent said its run failed, whatever its exit code will be.
    AgentFailed {
        step: u32,
        attempt: u32,
        class: FailureClass,
        message: String,
    },
    /// A budget alert threshold was crossed. `key` is set for the objective's own
    /// budgets (sent once per objective); daemon-wide alerts are deduplicated outside.
    Alert {
        key: Option<String>,
        percent: f64,
        budget: String,
        used: f64,
        limit: f64,
    },
    Ended {
        step: u32,
        attempt: u32,
        end: End,
    },
    /// A backoff timer of the step is due.
    TimerFired {
        step: u32,
    },
    /// A budget covering the objective ran out.
    Exhaust {
        why: String,
    },
    /// Loaded after a restart. `gone` are attempts that were running and are no more
    /// (their trees are already killed): they end `interrupted` and their steps run
    /// again. `kept` are attempts their executor re-attached to: they go on running.
    Recover {
        gone: Vec<Attempt>,
        kept: Vec<Attempt>,
    },
    /// A `worktree` step's branch as an attempt made or left it.
    Branch {
        step: u32,
        attempt: u32,
        branch: Branch,
    },
    /// A sub-objective of this one was submitted.
    Adopt {
        child: String,
    },
    /// A sub-objective of this one (at any depth) used this.
    ChildUsage {
        delta: Usage,
    },
    /// A planner attempt printed its plan (`::orch-plan::JSON`).
    PlanPrinted {
        step: u32,
        attempt: u32,
        json: String,
    },
    /// A verifier attempt said its verdict (`::orch-verdict::JSON`).
    Verdict {
        step: u32,
        attempt: u32,
        verdict: crate::model::Verdict,
    },
    /// A planner attempt ended (instead of `Ended`), with what the actor read of its
    /// plan when it exited 0 (`None` otherwise).
    PlanEnded {
        step: u32,
        attempt: u32,
        end: End,
        plan: Option<Result<planner::Proposal, String>>,
    },
}

impl Input {
    /// The verb of a control input, for messages.
    pub fn action(&self) -> &'static str {
        match self {
            Input::Cancel { .. } => "cancel",
            Input::Pause { .. } => "pause",
            Input::Resume { .. } => "resume",
            Input::Approve { approve: true, .. } => "approve",
            Input::Approve { approve: false, .. } => "deny",
            Input::Retry { .. } => "retry",
            Input::Remove { .. } => "remove",
            _ => "change",
        }
    }
}
