//! Domain types of the daemon: objectives, steps, attempts, events, and their state
//! machines. No I/O here; `store` persists these, `api` converts them to proto.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[path = "model_planner.rs"]
mod planner;
pub use planner::{Planner, Round, RoundPhase, StepRole, Verdict, round_step_id};

/// Milliseconds since the UNIX epoch.
pub type Millis = i64;

/// The wall clock in milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ObjState {
    Pending,
    Running,
    Paused,
    AwaitingApproval,
    Succeeded,
    Failed,
    Cancelled,
}

impl ObjState {
    pub const ALL: [ObjState; 7] = [
        ObjState::Pending,
        ObjState::Running,
        ObjState::Paused,
        ObjState::AwaitingApproval,
        ObjState::Succeeded,
        ObjState::Failed,
        ObjState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ObjState::Succeeded | ObjState::Failed | ObjState::Cancelled
        )
    }

    pub fn word(self) -> &'static str {
        match self {
            ObjState::Pending => "pending",
            ObjState::Running => "running",
            ObjState::Paused => "paused",
            ObjState::AwaitingApproval => "awaiting_approval",
            ObjState::Succeeded => "succeeded",
            ObjState::Failed => "failed",
            ObjState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Waiting,
    Ready,
    Running,
    Backoff,
    Paused,
    AwaitingApproval,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
}

impl StepState {
    pub fn word(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Ready => "ready",
            StepState::Running => "running",
            StepState::Backoff => "backoff",
            StepState::Paused => "paused",
            StepState::AwaitingApproval => "awaiting_approval",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
            StepState::Skipped => "skipped",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::Failed | StepState::Cancelled | StepState::Skipped
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    ExitFailure,
    Signaled,
    Timeout,
    MemoryLimit,
    CpuLimit,
    BudgetExceeded,
    Cancelled,
    Interrupted,
    SpawnError,
}

impl Outcome {
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ExitFailure => "exit_failure",
            Outcome::Signaled => "signaled",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::CpuLimit => "cpu_limit",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
            Outcome::SpawnError => "spawn_error",
        }
    }

    /// The outcomes retried when a policy names none (design.md, "Retries").
    pub const DEFAULT_RETRY_ON: [Outcome; 5] = [
        Outcome::ExitFailure,
        Outcome::Signaled,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::CpuLimit,
    ];
}

/// Tokens by kind, and what they cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Fresh input (neither read from nor written to a prompt cache).
    pub input_tokens: u64,
    /// Input read from the provider's prompt cache (Claude cache reads, Codex cached input).
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Input written to the prompt cache (Claude cache creation).
    #[serde(default)]
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Resource limits of one attempt, after defaults are applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub pids: Option<u64>,
    pub open_files: Option<u64>,
    pub cpu_quota: Option<f64>,
}

/// A retry policy with every field resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
    pub retry_on: Vec<Outcome>,
    /// Empty = every exit code.
    pub retry_exit_codes: Vec<i32>,
    /// Waits for a provider's rate-limit reset a step may make (they use up no attempt).
    #[serde(default = "default_rate_limit_waits")]
    pub max_rate_limit_waits: u32,
    /// What follows each class of agent failure.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// `max_rate_limit_waits` of a policy stored before it existed, and the default.
fn default_rate_limit_waits() -> u32 {
    10
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 2_000,
            max_backoff_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
            retry_on: Outcome::DEFAULT_RETRY_ON.to_vec(),
            retry_exit_codes: Vec::new(),
            max_rate_limit_waits: default_rate_limit_waits(),
            on_failure: OnFailure::default(),
        }
    }
}

impl RetryPolicy {
    /// Whether an attempt that ended with `outcome` (and `exit_code`) may be retried.
    pub fn retries(&self, outcome: Outcome, exit_code: Option<i32>) -> bool {
        if !self.retry_on.contains(&outcome) {
            return false;
        }
        if outcome == Outcome::ExitFailure && !self.retry_exit_codes.is_empty() {
            return exit_code.is_some_and(|c| self.retry_exit_codes.contains(&c));
        }
        true
    }

    /// The delay before attempt `n` (n ≥ 2): `min(max, initial × multiplier^(n-2))`,
    /// then scaled by `1 + jitter × u` with `u` uniform in [-1, 1] (passed in, for tests).
    /// Whatever the numbers (a policy stored before they were bounded, a huge multiplier),
    /// the result is finite and at most the cap plus its jitter.
    pub fn delay_ms(&self, n: u32, u: f64) -> u64 {
        let exp = n.saturating_sub(2).min(i32::MAX as u32) as i32;
        let cap = self.max_backoff_ms as f64;
        let grown = self.initial_backoff_ms as f64 * self.multiplier.powi(exp);
        // 0 × ∞ (no initial backoff, a multiplier grown to infinity) is no backoff.
        let base = if self.initial_backoff_ms == 0 || grown.is_nan() {
            0.0
        } else {
            grown.min(cap)
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jittered = base * (1.0 + jitter * u.clamp(-1.0, 1.0));
        // A float beyond u64 saturates when cast; NaN cannot reach here.
        jittered.clamp(0.0, cap * 2.0).round() as u64
    }
}

/// How an agent takes its prompt (a profile's `prompt`): never twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    /// Written to the agent's stdin.
    Stdin,
    /// The `{prompt}` placeholder of its argv (at most `MAX_ARG_PROMPT_BYTES`).
    Argv,
    /// A file named by the `{prompt_file}` placeholder, readable only by the agent's user.
    File,
}

impl PromptMode {
    pub const WORDS: [&'static str; 3] = ["stdin", "argv", "file"];

    pub fn from_word(w: &str) -> Option<PromptMode> {
        match w {
            "stdin" => Some(PromptMode::Stdin),
            "argv" => Some(PromptMode::Argv),
            "file" => Some(PromptMode::File),
            _ => None,
        }
    }

    /// The mode a command template implies: its placeholder, else stdin.
    pub fn implied_by(template: &[String]) -> PromptMode {
        if template.iter().any(|a| a.contains("{prompt_file}")) {
            PromptMode::File
        } else if template.iter().any(|a| a.contains("{prompt}")) {
            PromptMode::Argv
        } else {
            PromptMode::Stdin
        }
    }
}

/// The largest prompt passed as one argv element (Linux's `MAX_ARG_STRLEN`, 128 KiB).
pub const MAX_ARG_PROMPT_BYTES: usize = 128 * 1024;

/// A step as the daemon runs it: defaults applied, paths absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPlan {
    pub id: String,
    /// Empty for literal commands.
    pub agent: String,
    pub prompt: String,
    /// The resolved argv (for an agent step: its template with `{prompt}` and `{workdir}`
    /// filled in; the ids are filled in when an attempt starts).
    pub command: Vec<String>,
    /// An agent step's command template as the profile had it at submit time.
    #[serde(default)]
    pub template: Vec<String>,
    pub workdir: String,
    /// What the step adds to the client's environment: its profile's `env`, then its own.
    pub env: BTreeMap<String, String>,
    /// The step's own `env` (without its profile's), for fallback agents.
    #[serde(default)]
    pub step_env: BTreeMap<String, String>,
    pub needs: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub retry: RetryPolicy,
    pub limits: Limits,
    pub requires_approval: bool,
    pub fallback: Vec<String>,
    pub fallback_on_rate_limit: bool,
    /// How its own agent takes the prompt (`None`: stored before this was kept, when the
    /// prompt went to stdin and to any `{prompt}` alike).
    #[serde(default)]
    pub prompt_mode: Option<PromptMode>,
    /// Where its attempts run: empty for this machine, `slurm` for a Slurm cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub executor: String,
    /// A routed step (`agent = "auto"`): how each attempt's agent profile is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    /// Why it waits for approval when a safety rule or its agent profile asked for it
    /// (the step's state message while it waits); empty for the plan's own gate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub approval_reason: String,
    /// The directory its attempts work in (`shared`: its workdir as it is).
    #[serde(default, skip_serializing_if = "Workspace::is_shared")]
    pub workspace: Workspace,
    /// For a `worktree` step: the repository and the commit its `HEAD` was at on submit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoBase>,
    /// In a goal-only objective: what the step does in its round, and the round.
    #[serde(default, skip_serializing_if = "StepRole::is_work")]
    pub role: StepRole,
    #[serde(default, skip_serializing_if = "is_zero_round")]
    pub round: u32,
}

fn is_zero_round(n: &u32) -> bool {
    *n == 0
}

/// The agent name that makes a step routed.
pub const AUTO_AGENT: &str = "auto";

/// What a routed step optimizes (`route.priority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutePriority {
    /// Cheapest expected cost per success.
    #[default]
    Cost,
    /// Highest `quality`, then success rate.
    Quality,
    /// Lowest p50 duration.
    Speed,
}

impl RoutePriority {
    pub const ALL: [RoutePriority; 3] = [
        RoutePriority::Cost,
        RoutePriority::Quality,
        RoutePriority::Speed,
    ];

    pub fn word(self) -> &'static str {
        match self {
            RoutePriority::Cost => "cost",
            RoutePriority::Quality => "quality",
            RoutePriority::Speed => "speed",
        }
    }

    pub fn from_word(w: &str) -> Option<RoutePriority> {
        RoutePriority::ALL.into_iter().find(|p| p.word() == w)
    }
}

/// A routed step's `route = { priority, tags }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub priority: RoutePriority,
    /// Every one of these must be among a profile's tags for it to be chosen.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Where a step's attempts work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workspace {
    /// The step's workdir as it is, shared with every other step.
    #[default]
    Shared,
    /// A git worktree of its own, on the branch `orch/<short id>/<step id>`.
    Worktree,
    /// A private empty directory under the state directory.
    Scratch,
}

impl Workspace {
    pub fn word(self) -> &'static str {
        match self {
            Workspace::Shared => "shared",
            Workspace::Worktree => "worktree",
            Workspace::Scratch => "scratch",
        }
    }

    pub fn from_word(w: &str) -> Option<Workspace> {
        match w {
            "" | "shared" => Some(Workspace::Shared),
            "worktree" => Some(Workspace::Worktree),
            "scratch" => Some(Workspace::Scratch),
            _ => None,
        }
    }

    pub fn is_shared(&self) -> bool {
        *self == Workspace::Shared
    }
}

/// The repository a `worktree` step branches from, recorded on submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoBase {
    /// The repository's top directory (`git rev-parse --show-toplevel`).
    pub root: String,
    /// The step's workdir relative to `root` (empty: the top).
    #[serde(default)]
    pub subdir: String,
    /// The commit `HEAD` was at.
    pub base: String,
}

/// A `worktree` step's branch as its last attempt left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub name: String,
    /// The commit the branch was created from.
    pub base: String,
    /// Its head after the attempt (orch committed what the agent left).
    pub head: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub percent: Option<f64>,
    pub message: String,
}

/// An objective's own record (its steps and attempts are stored beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub id: String,
    pub name: String,
    pub goal: String,
    pub priority: i32,
    pub budget: Budget,
    pub state: ObjState,
    pub created_ms: Millis,
    pub updated_ms: Millis,
    pub message: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub request_id: String,
    pub usage: Usage,
    /// The submitting client's environment; `None` = the daemon's minimal one.
    pub client_env: Option<BTreeMap<String, String>>,
    pub step_count: u32,
    /// Seq of the event that ended it (cleared by a retry); Watch ends there.
    #[serde(default)]
    pub ended_seq: Option<u64>,
    /// Budget alerts already sent (`objective_usd:80`), so each is sent once.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Set on a sub-objective: the attempt that submitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Its sub-objectives' ids, in the order they were submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// What its sub-objectives (at any depth) used; counts against its own budgets.
    #[serde(default)]
    pub sub_usage: Usage,
    /// A goal-only objective: its planner, verifier and rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<Box<Planner>>,
}

/// Where a sub-objective comes from: the attempt that submitted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub objective_id: String,
    pub step_id: String,
    pub attempt: u32,
    /// 1 for a sub-objective of a top-level objective, and so on.
    pub depth: u32,
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub objective_id: String,
    /// Position in the plan (keys sort by it).
    pub index: u32,
    pub plan: StepPlan,
    pub state: StepState,
    /// Attempts made so far (the last attempt's number).
    pub attempts: u32,
    /// Attempts that count against `max_attempts` (interrupted ones do not).
    pub counted_attempts: u32,
    pub checkpoint: Option<String>,
    pub next_attempt_ms: Option<Millis>,
    pub progress: Progress,
    pub usage: Usage,
    pub message: String,
    /// 0 = the step's own agent or command; n = `plan.fallback[n - 1]`.
    #[serde(default)]
    pub agent_index: u32,
    /// Waits for a provider's rate-limit reset made with the current agent.
    #[serde(default)]
    pub rate_limit_waits: u32,
    /// The current agent's session (from its last attempt that named one): the next
    /// attempt resumes it when the profile says how.
    #[serde(default)]
    pub session: Option<String>,
    /// What that session used so far (agents that report a session's running total, like
    /// Codex, are counted from there when it is resumed).
    #[serde(default)]
    pub session_usage: Usage,
    /// An approval gate was answered yes.
    #[serde(default)]
    pub approved: bool,
    /// A routed step: the profile its latest routing chose, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_agent: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_reason: String,
    /// A `worktree` step's branch, once an attempt made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<Branch>,
}

impl Step {
    /// A step as submitted: nothing run yet, waiting for its dependencies.
    pub fn new(objective_id: &str, index: u32, plan: StepPlan) -> Step {
        Step {
            objective_id: objective_id.to_string(),
            index,
            plan,
            state: StepState::Waiting,
            attempts: 0,
            counted_attempts: 0,
            checkpoint: None,
            next_attempt_ms: None,
            progress: Progress::default(),
            usage: Usage::default(),
            message: String::new(),
            agent_index: 0,
            rate_limit_waits: 0,
            session: None,
            session_usage: Usage::default(),
            approved: false,
            routed_agent: None,
            route_reason: String::new(),
            branch: None,
        }
    }

    /// Whether the next attempt's agent comes from the daemon's config now (a fallback or
    /// routed agent) rather than from what was resolved at submit.
    pub fn agent_from_config(&self) -> bool {
        self.agent_index > 0 || self.plan.route.is_some()
    }

    /// The agent profile the next attempt uses (empty for a literal command).
    pub fn current_agent(&self) -> &str {
        if self.plan.route.is_some() {
            return self.routed_agent.as_deref().unwrap_or("");
        }
        match self.agent_index {
            0 => &self.plan.agent,
            n => self
                .plan
                .fallback
                .get(n as usize - 1)
                .map(String::as_str)
                .unwrap_or(""),
        }
    }
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(o.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(o.cache_write_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cost_usd += o.cost_usd;
    }

    /// The tokens a `max_tokens` budget counts: every kind but cache reads.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_write_tokens)
            .saturating_add(self.output_tokens)
    }

    /// Whether it reports any tokens at all.
    pub fn has_tokens(&self) -> bool {
        self.tokens() > 0 || self.cache_read_tokens > 0
    }
}

/// One attempt's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub objective_id: String,
    pub step_index: u32,
    pub step_id: String,
    pub number: u32,
    pub agent: String,
    pub command: Vec<String>,
    pub pid: Option<u32>,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat` field 22),
    /// so a recycled pid is never mistaken for it.
    pub pid_start_ticks: Option<u64>,
    /// The attempt's cgroup, when the cgroup backend ran it.
    pub cgroup: Option<String>,
    /// The agent's session (Claude `session_id`, Codex `thread_id`), when it said.
    #[serde(default)]
    pub session: Option<String>,
    /// Where it runs: empty for this machine, `slurm` for a Slurm cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub executor: String,
    /// Its cluster job (the Slurm job id), once submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub started_ms: Millis,
    pub ended_ms: Option<Millis>,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub peak_rss_bytes: u64,
    pub cpu_ms: u64,
    pub usage: Usage,
    pub message: String,
    /// A routed step's attempt: why its agent was chosen.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_reason: String,
    /// How far the attempt's protocol journal (shim executor) has been read: its lines
    /// before this byte were processed, in the same store write as their effects.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub protocol_offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Attempt {
    /// Attempt `number` of a step, opened at `started_ms`, before anything ran.
    pub fn new(objective_id: &str, step_index: u32, step_id: &str, number: u32) -> Attempt {
        Attempt {
            objective_id: objective_id.to_string(),
            step_index,
            step_id: step_id.to_string(),
            number,
            agent: String::new(),
            command: Vec::new(),
            pid: None,
            pid_start_ticks: None,
            cgroup: None,
            session: None,
            executor: String::new(),
            job_id: None,
            started_ms: 0,
            ended_ms: None,
            outcome: None,
            exit_code: None,
            signal: None,
            peak_rss_bytes: 0,
            cpu_ms: 0,
            usage: Usage::default(),
            message: String::new(),
            route_reason: String::new(),
            protocol_offset: 0,
        }
    }
}

#[cfg(test)]
impl StepPlan {
    /// A step running `true`, needing `needs`, with the default policy (tests).
    pub fn literal(id: &str, needs: &[&str]) -> StepPlan {
        StepPlan {
            id: id.into(),
            agent: String::new(),
            prompt: String::new(),
            command: vec!["true".into()],
            template: vec![],
            workdir: "/".into(),
            env: BTreeMap::new(),
            step_env: BTreeMap::new(),
            needs: needs.iter().map(|n| n.to_string()).collect(),
            timeout_ms: None,
            idle_timeout_ms: None,
            retry: RetryPolicy::default(),
            limits: Limits::default(),
            requires_approval: false,
            fallback: vec![],
            fallback_on_rate_limit: false,
            executor: String::new(),
            prompt_mode: None,
            route: None,
            approval_reason: String::new(),
            workspace: Workspace::Shared,
            repo: None,
            role: StepRole::Work,
            round: 0,
        }
    }
}

#[cfg(test)]
impl Objective {
    /// A pending objective `id` of `steps` steps owned by `owner`, created at `now` (tests).
    pub fn pending(id: &str, steps: usize, owner: u32, now: Millis) -> Objective {
        Objective {
            id: id.into(),
            name: "test".into(),
            goal: String::new(),
            priority: 0,
            budget: Budget::default(),
            state: ObjState::Pending,
            created_ms: now,
            updated_ms: now,
            message: String::new(),
            owner_uid: owner,
            owner_gid: owner,
            request_id: String::new(),
            usage: Usage::default(),
            client_env: None,
            step_count: steps as u32,
            ended_seq: None,
            alerts: vec![],
            parent: None,
            children: vec![],
            sub_usage: Usage::default(),
            planner: None,
        }
    }
}

/// What happened, as stored in the sequenced event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    ObjectiveSubmitted {
        name: String,
        steps: u32,
    },
    ObjectiveState {
        state: ObjState,
        message: String,
    },
    StepState {
        state: StepState,
        message: String,
    },
    AttemptStarted {
        pid: u32,
        agent: String,
    },
    AttemptEnded {
        outcome: Outcome,
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: String,
    },
    RetryScheduled {
        delay_ms: u64,
        due_at_ms: Millis,
    },
    Checkpoint {
        json: String,
    },
    Usage {
        report: Usage,
        step_total: Usage,
        objective_total: Usage,
        model: String,
    },
    Progress {
        percent: Option<f64>,
        message: String,
    },
    BudgetAlert {
        percent: f64,
        budget: String,
        used: f64,
        limit: f64,
    },
    ApprovalRequested,
    ApprovalAnswered {
        approved: bool,
        by_uid: u32,
        reason: String,
    },
    /// The ended objective was removed (`rm`, `prune`), in `state`.
    ObjectiveRemoved {
        by_uid: u32,
        state: ObjState,
    },
    /// A routed step's attempt got `agent` (none: it waits until `wait_until_ms`, or
    /// fails), with the reason and every candidate's score.
    AgentRouted {
        agent: String,
        reason: String,
        priority: RoutePriority,
        candidates: Vec<RouteScore>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_until_ms: Option<Millis>,
    },
    /// An agent profile was disabled (by a user, a usage limit or a cool-down) until
    /// `until_ms` (`None`: until enabled). A daemon-wide event.
    AgentDisabled {
        agent: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<Millis>,
        by_uid: u32,
    },
    /// An agent profile was enabled again (by a user, or its `--for` ran out).
    AgentEnabled {
        agent: String,
        reason: String,
        by_uid: u32,
    },
    /// A goal-only objective's round `round` began (`findings`: why the last one did not
    /// reach the goal; empty for the first).
    RoundStarted {
        round: u32,
        findings: String,
    },
    /// The planner's attempt wrote a plan: `valid` (then `steps` of them), or not
    /// (`errors`, handed to its next attempt in `ORCH_PLAN_ERRORS`).
    PlanProposed {
        round: u32,
        valid: bool,
        steps: u32,
        errors: String,
        plan: String,
    },
    /// The round's plan was accepted (at once, or approved): its steps were added.
    PlanAccepted {
        round: u32,
        steps: Vec<String>,
        by_uid: Option<u32>,
    },
    /// The verifier judged the round.
    Verdict {
        round: u32,
        pass: bool,
        findings: String,
    },
}

/// One candidate of a routing decision (`agent_routed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteScore {
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub excluded: String,
}

impl EventKind {
    pub fn word(&self) -> &'static str {
        match self {
            EventKind::ObjectiveSubmitted { .. } => "objective_submitted",
            EventKind::ObjectiveState { .. } => "objective_state",
            EventKind::StepState { .. } => "step_state",
            EventKind::AttemptStarted { .. } => "attempt_started",
            EventKind::AttemptEnded { .. } => "attempt_ended",
            EventKind::RetryScheduled { .. } => "retry_scheduled",
            EventKind::Checkpoint { .. } => "checkpoint",
            EventKind::Usage { .. } => "usage",
            EventKind::Progress { .. } => "progress",
            EventKind::BudgetAlert { .. } => "budget_alert",
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::ApprovalAnswered { .. } => "approval_answered",
            EventKind::ObjectiveRemoved { .. } => "objective_removed",
            EventKind::AgentRouted { .. } => "agent_routed",
            EventKind::AgentDisabled { .. } => "agent_disabled",
            EventKind::AgentEnabled { .. } => "agent_enabled",
            EventKind::RoundStarted { .. } => "round_started",
            EventKind::PlanProposed { .. } => "plan_proposed",
            EventKind::PlanAccepted { .. } => "plan_accepted",
            EventKind::Verdict { .. } => "verdict",
        }
    }
}

/// An event of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time_ms: Millis,
    pub objective_id: String,
    pub step_id: String,
    pub attempt: u32,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// How an attempt ended: its outcome, status, message and resource figures.
#[derive(Debug, Clone, PartialEq)]
pub struct End {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub peak_rss_bytes: u64,
    pub cpu_ms: u64,
    /// When it ended, when that was before the engine heard of it (an agent that ended
    /// while no orchd was running: its shim kept the time). `None`: now.
    pub ended_ms: Option<Millis>,
}

impl End {
    /// An end with only an outcome and a message (an attempt that could not start,
    /// synthetic ends).
    pub fn of(outcome: Outcome, message: &str) -> End {
        End {
            outcome,
            exit_code: None,
            signal: None,
            message: message.to_string(),
            peak_rss_bytes: 0,
            cpu_ms: 0,
            ended_ms: None,
        }
    }
}

/// Why an agent says its run failed (whatever its exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The provider refused: rate or usage limit (the reset, when known, comes as a
    /// `RateLimited` line); waited out, not retried.
    RateLimited,
    /// The turn limit was reached (`error_max_turns`): a retry would pay again for the
    /// same, so it is not retried.
    MaxTurns,
    /// The provider refused the credentials: not retried.
    Auth,
    /// The provider was overloaded or failed (5xx, 529): retried.
    Overloaded,
    /// Any other error the agent reported: retried by the policy.
    Error,
}

impl FailureClass {
    pub fn word(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate limited",
            FailureClass::MaxTurns => "max turns reached",
            FailureClass::Auth => "authentication failed",
            FailureClass::Overloaded => "provider overloaded or failing",
            FailureClass::Error => "error",
        }
    }

    pub const ALL: [FailureClass; 5] = [
        FailureClass::RateLimited,
        FailureClass::MaxTurns,
        FailureClass::Auth,
        FailureClass::Overloaded,
        FailureClass::Error,
    ];

    /// Its key in `on_failure` (one of [`orch_proto::words::FAILURE_CLASSES`]).
    pub fn key(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::MaxTurns => "max_turns",
            FailureClass::Auth => "auth",
            FailureClass::Overloaded => "overloaded",
            FailureClass::Error => "error",
        }
    }

    pub fn parse_key(key: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|c| c.key() == key)
    }
}

/// What follows a class of agent failure (`on_failure` in a retry policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Wait for the provider's reset without using an attempt (rate limits only).
    Wait,
    /// Retry under the policy's `max_attempts` and backoff, then fall back.
    Retry,
    /// Hand over to the next fallback agent at once; fail when there is none.
    Fallback,
    /// Fail the step at once.
    Fail,
}

impl FailureAction {
    pub fn word(self) -> &'static str {
        match self {
            FailureAction::Wait => "wait",
            FailureAction::Retry => "retry",
            FailureAction::Fallback => "fallback",
            FailureAction::Fail => "fail",
        }
    }

    fn parse(word: &str) -> Option<FailureAction> {
        [
            FailureAction::Wait,
            FailureAction::Retry,
            FailureAction::Fallback,
            FailureAction::Fail,
        ]
        .into_iter()
        .find(|a| a.word() == word)
    }
}

/// The action for each failure class: the defaults wait out rate limits, retry overloads
/// and other errors, and never retry what a retry would pay for again (max turns,
/// refused credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnFailure {
    pub rate_limited: FailureAction,
    pub max_turns: FailureAction,
    pub auth: FailureAction,
    pub overloaded: FailureAction,
    pub error: FailureAction,
}

impl Default for OnFailure {
    fn default() -> Self {
        OnFailure {
            rate_limited: FailureAction::Wait,
            max_turns: FailureAction::Fallback,
            auth: FailureAction::Fallback,
            overloaded: FailureAction::Retry,
            error: FailureAction::Retry,
        }
    }
}

impl OnFailure {
    pub fn action(&self, class: FailureClass) -> FailureAction {
        match class {
            FailureClass::RateLimited => self.rate_limited,
            FailureClass::MaxTurns => self.max_turns,
            FailureClass::Auth => self.auth,
            FailureClass::Overloaded => self.overloaded,
            FailureClass::Error => self.error,
        }
    }

    /// One entry from its words (`max_turns`, `retry`), refusing what
    /// [`orch_proto::words::check_on_failure`] refuses.
    pub fn parse_entry(class: &str, action: &str) -> Result<(FailureClass, FailureAction), String> {
        orch_proto::words::check_on_failure(class, action)?;
        let c = FailureClass::parse_key(class)
            .ok_or_else(|| format!("unknown failure class `{class}`"))?;
        let a = FailureAction::parse(action)
            .ok_or_else(|| format!("unknown action `{action}` for {class}"))?;
        Ok((c, a))
    }

    pub fn put(&mut self, class: FailureClass, action: FailureAction) {
        let slot = match class {
            FailureClass::RateLimited => &mut self.rate_limited,
            FailureClass::MaxTurns => &mut self.max_turns,
            FailureClass::Auth => &mut self.auth,
            FailureClass::Overloaded => &mut self.overloaded,
            FailureClass::Error => &mut self.error,
        };
        *slot = action;
    }

    /// Every class with its action, as words, in the order of
    /// [`orch_proto::words::FAILURE_CLASSES`].
    pub fn entries(&self) -> Vec<(&'static str, &'static str)> {
        FailureClass::ALL
            .into_iter()
            .map(|c| (c.key(), self.action(c).word()))
            .collect()
    }
}

/// Why the engine stops an attempt; decides its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Shutdown,
    BudgetExceeded,
}

/// What the engine asks of a running attempt (carried out by its executor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Stop(StopReason),
    Pause,
    Resume,
}

/// An entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_ms: Millis,
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pub action: String,
    pub objective_id: String,
    /// `ok`, `denied` or `error: <message>`.
    pub result: String,
}

/// The store key of user `uid`'s own share of the usage total `key` (`day:…`, `month:…`,
/// `total`); the keys without a user are every user's together.
pub fn user_usage_key(uid: u32, key: &str) -> String {
    format!("user:{uid}:{key}")
}

/// The store keys of the usage totals of the (UTC) day and month of `now`.
pub fn usage_keys(now: chrono::DateTime<chrono::Utc>) -> (String, String) {
    (
        format!("day:{}", now.format("%Y-%m-%d")),
        format!("month:{}", now.format("%Y-%m")),
    )
}

/// Replaces `{name}` placeholders of `template` in one pass: text put in is never
/// scanned again, so a prompt containing `{workdir}` stays as written.
pub fn expand_template(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let hit = vars
            .iter()
            .find(|(k, _)| tail[1..].starts_with(k) && tail[1 + k.len()..].starts_with('}'));
        match hit {
            Some((k, v)) => {
                out.push_str(v);
                rest = &tail[k.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The objective's state, derived from its steps (the one place this rule lives).
/// `paused` is kept by the caller; this only answers for a running objective.
pub fn derive_objective_state(steps: &[Step], cancelling: bool) -> ObjState {
    let all_done = steps.iter().all(|s| s.state.is_terminal());
    if all_done && cancelling {
        return ObjState::Cancelled;
    }
    if all_done {
        if steps.iter().all(|s| s.state == StepState::Succeeded) {
            return ObjState::Succeeded;
        }
        if steps.iter().any(|s| s.state == StepState::Failed) {
            return ObjState::Failed;
        }
        if steps.iter().any(|s| s.state == StepState::Cancelled) {
            return ObjState::Cancelled;
        }
        return ObjState::Failed;
    }
    let active = steps.iter().any(|s| {
        matches!(
            s.state,
            StepState::Running | StepState::Backoff | StepState::Ready
        )
    });
    if !active && steps.iter().any(|s| s.state == StepState::AwaitingApproval) {
        return ObjState::AwaitingApproval;
    }
    if steps
        .iter()
        .any(|s| s.attempts > 0 || s.state.is_terminal() || s.state == StepState::Running)
    {
        ObjState::Running
    } else {
        ObjState::Pending
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
