//! The daemon config: `orchd.toml` (serde, every key optional) layered as
//! defaults → file → `ORCH_*` environment → command-line flags, then resolved
//! into typed settings. Errors name the file or variable and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Limits, OnFailure, Outcome, RetryPolicy};
use orch_proto::units::{format_duration_ms, parse_duration_ms, parse_size};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {key}{problem}")]
    Invalid {
        path: String,
        key: String,
        problem: String,
    },
}

fn invalid(path: &str, key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_string(),
        key: if key.is_empty() {
            String::new()
        } else {
            format!("{key}: ")
        },
        problem: problem.into(),
    }
}

/// A duration as written in the file (`"10s"`), kept as milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub u64);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration_ms(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration_ms(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A size as written in the file (`"256M"` or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<Dur>,
    pub max_backoff: Option<Dur>,
    pub multiplier: Option<f64>,
    pub jitter: Option<f64>,
    pub retry_on: Option<Vec<String>>,
    pub retry_exit_codes: Option<Vec<i32>>,
    pub max_rate_limit_waits: Option<u32>,
    pub on_failure: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub memory: Option<Size>,
    pub cpu_seconds: Option<u64>,
    pub pids: Option<u64>,
    pub open_files: Option<u64>,
    pub cpu_quota: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultsConfig {
    pub timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub retry: RetryConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Each user's own spend per UTC day (overridden per user in `[users.NAME]`).
    pub daily_usd: Option<f64>,
    /// Each user's own spend per UTC month.
    pub monthly_usd: Option<f64>,
    /// Every user together per UTC day: once reached, new submits are refused; work
    /// already submitted goes on.
    pub machine_daily_usd: Option<f64>,
    /// Every user together per UTC month (like `machine_daily_usd`).
    pub machine_monthly_usd: Option<f64>,
    pub alert_percent: Vec<f64>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            daily_usd: None,
            monthly_usd: None,
            machine_daily_usd: None,
            machine_monthly_usd: None,
            alert_percent: vec![50.0, 80.0, 100.0],
        }
    }
}

/// `[users.NAME]` (a user name or a numeric uid): one user's own limits, over the
/// `[budget]` and `max_parallel_per_user` defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserConfig {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub max_parallel: Option<u32>,
}

/// One user's effective limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UserLimits {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    /// Attempts of this user running at once (never above `max_parallel`).
    pub max_parallel: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    pub max_attempt_bytes: Size,
    pub max_total_bytes: Size,
    /// The most the logs of one user's running attempts may hold at once, in a daemon
    /// shared by several users (default: half of `max_total_bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_user_bytes: Option<Size>,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_attempt_bytes: Size(256 << 20),
            max_total_bytes: Size(10 << 30),
            max_user_bytes: None,
        }
    }
}

impl LogsConfig {
    /// `max_user_bytes`, or its default: half of `max_total_bytes`.
    pub fn user_bytes(&self) -> u64 {
        self.max_user_bytes
            .map_or(self.max_total_bytes.0 / 2, |s| s.0)
    }
}

/// `[host]`: admission on the host's state. Below `min_available_memory` of available
/// memory, or above a 1-minute load average of `max_load`, no new attempt starts (ready
/// work waits, with the reason in `status`); running attempts are left alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_available_memory: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_load: Option<f64>,
}

/// `[store]`: the state directory's disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Free space kept on the filesystem of the state directory: below it new submits are
    /// refused (`RESOURCE_EXHAUSTED`) and no new attempt starts, so the store and the logs
    /// of running attempts keep room to finish what is acknowledged.
    pub min_free: Size,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            min_free: Size(256 << 20),
        }
    }
}

/// `[server]`: what one client, and all of them, may hold of the daemon (connections,
/// calls, bytes of requests and of unread events). Read at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Connections open at once, all users together (the last few are kept for root and
    /// the daemon's own user).
    pub max_connections: u32,
    /// Connections open at once per user; root and the daemon's own user are exempt.
    pub max_connections_per_user: u32,
    /// A connection with no call in flight for this long is closed.
    pub idle_timeout: Dur,
    /// Calls in flight at once on one connection (HTTP/2 `MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
    /// HTTP/2 ping interval, and how long a ping may go unanswered before the connection
    /// is closed.
    pub keepalive_interval: Dur,
    pub keepalive_timeout: Dur,
    /// Bytes of requests being received or handled at once, per user.
    pub request_bytes_per_user: Size,
    /// `Watch` and `StreamLogs` calls open at once per user; root and the daemon's own
    /// user are exempt.
    pub max_streams_per_user: u32,
    /// Bytes of events queued for one `Watch` client that has not read them yet.
    pub watch_queue_bytes: Size,
    /// A `Watch` client that takes nothing from a full queue for this long is ended.
    pub watch_stall_timeout: Dur,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            max_connections_per_user: 64,
            idle_timeout: Dur(5 * 60_000),
            max_streams_per_connection: 64,
            keepalive_interval: Dur(30_000),
            keepalive_timeout: Dur(10_000),
            request_bytes_per_user: Size(64 << 20),
            max_streams_per_user: 64,
            watch_queue_bytes: Size(2 << 20),
            watch_stall_timeout: Dur(5 * 60_000),
        }
    }
}

impl ServerConfig {
    /// The first key out of range, and why.
    fn problem(&self) -> Option<(&'static str, String)> {
        let count = |key, v: u32| (v < 1).then(|| (key, "must be at least 1".to_string()));
        let time = |key, d: Dur| {
            (d.0 < 100).then(|| {
                (
                    key,
                    format!("must be at least 100ms, got {}", format_duration_ms(d.0)),
                )
            })
        };
        let bytes = |key, s: Size, min: u64, name: &str| {
            (s.0 < min).then(|| (key, format!("must be at least {name}, got {} bytes", s.0)))
        };
        count("max_connections", self.max_connections)
            .or_else(|| count("max_connections_per_user", self.max_connections_per_user))
            .or_else(|| {
                count(
                    "max_streams_per_connection",
                    self.max_streams_per_connection,
                )
            })
            .or_else(|| time("idle_timeout", self.idle_timeout))
            .or_else(|| time("keepalive_interval", self.keepalive_interval))
            .or_else(|| time("keepalive_timeout", self.keepalive_timeout))
            .or_else(|| time("watch_stall_timeout", self.watch_stall_timeout))
            .or_else(|| {
                bytes(
                    "request_bytes_per_user",
                    self.request_bytes_per_user,
                    64 << 10,
                    "64K",
                )
            })
            .or_else(|| bytes("watch_queue_bytes", self.watch_queue_bytes, 64 << 10, "64K"))
            .or_else(|| count("max_streams_per_user", self.max_streams_per_user))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Input read from the prompt cache (default: `input_per_mtok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
    /// Input written to the prompt cache (default: `input_per_mtok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
}

impl Price {
    /// What `u`'s tokens cost at these prices.
    pub fn cost(&self, u: &crate::model::Usage) -> f64 {
        let read = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        let write = self.cache_write_per_mtok.unwrap_or(self.input_per_mtok);
        (u.input_tokens as f64 * self.input_per_mtok
            + u.cache_read_tokens as f64 * read
            + u.cache_write_tokens as f64 * write
            + u.output_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// How a profile's usage and cost are read from its output.
pub const USAGE_FORMATS: [&str; 4] = ["orch-lines", "claude-stream-json", "codex-json", "aider"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    pub command: Vec<String>,
    #[serde(default = "default_usage")]
    pub usage: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Model name for the price table, when the agent reports tokens but no cost.
    #[serde(default)]
    pub model: Option<String>,
    /// How the agent takes its prompt: `stdin`, `argv` (`{prompt}`) or `file`
    /// (`{prompt_file}`); default: what the command's placeholders imply, else stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Arguments added to `command` to continue the step's earlier session
    /// (`{session_id}` is replaced), e.g. `["--resume", "{session_id}"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resume: Vec<String>,
    /// A whole command used instead of `command` to continue the session, e.g.
    /// `["codex", "exec", "resume", "{session_id}", "--json", "-"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resume_command: Vec<String>,
    /// The `[mcp.NAME]` tool servers this agent is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp: Vec<String>,
    /// Offer orch's own MCP server (`orchctl mcp`) to the agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mcp_self: bool,
    /// Routing (`agent = "auto"`): the user's own ranking, 1–10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// Routing: what the profile is good for (`["code", "review"]`); a step's
    /// `route.tags` must all be here. `last-resort`: chosen only when nothing else may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Every step run by this profile waits for `orchctl approve` first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_approval: bool,
}

impl Config {
    /// The agent profiles in config order (those the file does not order, after them
    /// by name).
    pub fn agents_in_order(&self) -> Vec<(&str, &AgentProfile)> {
        let mut out: Vec<(&str, &AgentProfile)> = self
            .agent_order
            .iter()
            .filter_map(|n| self.agents.get_key_value(n))
            .map(|(n, p)| (n.as_str(), p))
            .collect();
        for (n, p) in &self.agents {
            if !self.agent_order.contains(n) {
                out.push((n.as_str(), p));
            }
        }
        out
    }

    /// What is wrong with the routing settings (`[routing]`, profiles' `quality`), if
    /// anything: the key and the problem.
    pub fn routing_problem(&self) -> Option<(String, String)> {
        let r = &self.routing;
        // 100: the runs each profile's stats keep (`engine::stats::MAX_RECENT`).
        if !(1..=100).contains(&r.window) {
            return Some((
                "routing.window".into(),
                format!("must be from 1 to 100, got {}", r.window),
            ));
        }
        if !(r.budget_alert_percent.is_finite() && r.budget_alert_percent > 0.0) {
            return Some((
                "routing.budget_alert_percent".into(),
                format!("must be a positive number, got {}", r.budget_alert_percent),
            ));
        }
        if self.agents.contains_key(crate::model::AUTO_AGENT) {
            return Some((
                "agents.auto".into(),
                "`auto` is reserved for routed steps (agent = \"auto\"); rename the profile".into(),
            ));
        }
        self.agents.iter().find_map(|(name, p)| match p.quality {
            Some(q) if !(1..=10).contains(&q) => Some((
                format!("agents.{name}.quality"),
                format!("must be from 1 to 10, got {q}"),
            )),
            _ => None,
        })
    }
}

impl AgentProfile {
    /// How this profile's agent takes its prompt.
    pub fn prompt_mode(&self) -> crate::model::PromptMode {
        self.prompt
            .as_deref()
            .and_then(crate::model::PromptMode::from_word)
            .unwrap_or_else(|| crate::model::PromptMode::implied_by(&self.command))
    }
}

fn default_usage() -> String {
    "orch-lines".into()
}

/// The built-in `shell` profile.
pub fn shell_profile() -> AgentProfile {
    AgentProfile {
        command: vec!["bash".into(), "-c".into(), "{prompt}".into()],
        prompt: None,
        resume: Vec::new(),
        resume_command: Vec::new(),
        usage: default_usage(),
        env: BTreeMap::new(),
        timeout: None,
        idle_timeout: None,
        limits: LimitsConfig::default(),
        model: None,
        mcp: Vec::new(),
        mcp_self: false,
        quality: None,
        tags: Vec::new(),
        requires_approval: false,
    }
}

/// `orchd.toml` as written (every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub max_parallel: Option<u32>,
    /// Attempts one user may run at once (default: `max_parallel`); free slots are
    /// shared fairly between users with work waiting.
    pub max_parallel_per_user: Option<u32>,
    pub retention: Dur,
    pub grace_period: Dur,
    /// How long a step waits when an agent's provider rate-limits it without saying
    /// until when (a plain HTTP 429).
    pub rate_limit_wait: Dur,
    /// `auto`, `cgroup-v2` or `rlimit`.
    pub limits_backend: String,
    /// Whether agents outlive orchd: each attempt runs under a shim process of its own
    /// (`executor::shim`), so a crash or `kill -9` of orchd leaves them running and the
    /// next orchd re-attaches. `false`: attempts are orchd's children and a crash
    /// interrupts them. Read at start.
    pub live_restore: bool,
    pub defaults: DefaultsConfig,
    pub budget: BudgetConfig,
    pub logs: LogsConfig,
    pub store: StoreConfig,
    pub server: ServerConfig,
    pub prices: BTreeMap<String, Price>,
    pub agents: BTreeMap<String, AgentProfile>,
    /// Per-user limits by user name or uid.
    pub users: BTreeMap<String, UserConfig>,
    pub host: HostConfig,
    /// How deep sub-objectives may nest (an objective submitted from inside a running
    /// attempt is at its parent's depth + 1; top-level objectives are at depth 0).
    pub max_sub_objective_depth: u32,
    /// MCP tool servers agent profiles may be given (`mcp = ["NAME"]`), by name.
    pub mcp: BTreeMap<String, McpServerConfig>,
    /// Where steps can run besides this machine (`[executors.slurm]`). Read at start.
    #[serde(skip_serializing_if = "ExecutorsConfig::is_empty")]
    pub executors: ExecutorsConfig,
    /// How routed steps (`agent = "auto"`) choose and avoid agent profiles.
    pub routing: RoutingConfig,
    /// The `[agents.NAME]` in the order the file gives them (routing's ties go to it).
    #[serde(skip)]
    pub agent_order: Vec<String>,
    /// `[safety]`: which steps wait for approval whatever their plan says.
    #[serde(skip_serializing_if = "SafetyConfig::is_empty")]
    pub safety: SafetyConfig,
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// How many of a profile's latest runs its success rate, p50 and cost per success
    /// are measured over.
    pub window: u32,
    /// A profile that fails this many times in a row is cooled down (0: never).
    pub cooldown_after: u32,
    /// For how long.
    pub cooldown: Dur,
    /// Past this percent of a budget covering the objective (its own, or its owner's
    /// daily or monthly), routed steps take the cheapest eligible profile.
    pub budget_alert_percent: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            window: 20,
            cooldown_after: 3,
            cooldown: Dur(10 * 60_000),
            budget_alert_percent: 80.0,
        }
    }
}

/// `[safety]`: glob patterns over a literal step's command line (`git push*`); a step
/// whose command matches one waits for `orchctl approve`, the rule named as the reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetyConfig {
    pub require_approval: Vec<String>,
}

impl SafetyConfig {
    fn is_empty(&self) -> bool {
        self.require_approval.is_empty()
    }
}

/// The default of `max_sub_objective_depth`.
pub const DEFAULT_SUB_OBJECTIVE_DEPTH: u32 = 3;

/// `[mcp.NAME]`: an MCP tool server, started over stdio (`command`, `env`) or reached
/// over Streamable HTTP (`url`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `[executors]`: the executors besides `local` (always there).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmConfig>,
}

impl ExecutorsConfig {
    fn is_empty(&self) -> bool {
        self.slurm.is_none()
    }
}

/// `[executors.slurm]`: steps with `executor = "slurm"` run as batch jobs of this cluster
/// (docs/scaling.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// More `sbatch` arguments, given before orch's own.
    pub sbatch_args: Vec<String>,
    /// A directory on storage shared with the compute nodes: each job writes its
    /// stdout and stderr there, and orchd follows them. Required.
    pub output_dir: PathBuf,
    /// The Slurm commands (names looked up on PATH, or paths).
    pub sbatch: PathBuf,
    pub scontrol: PathBuf,
    pub scancel: PathBuf,
    pub squeue: PathBuf,
    pub sinfo: PathBuf,
    pub sacct: PathBuf,
    /// The job completion log (`JobCompLoc` with `jobcomp/filetxt`), read for the final
    /// state of a job that `scontrol` forgot (after `MinJobAge`) when `sacct` has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobcomp_log: Option<PathBuf>,
    /// How often a live job's state is asked at first, and at most (the interval doubles
    /// while nothing happens; output or an order brings it back to `poll_min`).
    pub poll_min: Dur,
    pub poll_max: Dur,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: None,
            account: None,
            qos: None,
            sbatch_args: Vec::new(),
            output_dir: PathBuf::new(),
            sbatch: "sbatch".into(),
            scontrol: "scontrol".into(),
            scancel: "scancel".into(),
            squeue: "squeue".into(),
            sinfo: "sinfo".into(),
            sacct: "sacct".into(),
            jobcomp_log: None,
            poll_min: Dur(1_000),
            poll_max: Dur(30_000),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            state_dir: None,
            max_parallel: None,
            max_parallel_per_user: None,
            retention: Dur(30 * 86_400_000),
            grace_period: Dur(10_000),
            rate_limit_wait: Dur(60_000),
            limits_backend: "auto".into(),
            live_restore: true,
            defaults: DefaultsConfig::default(),
            budget: BudgetConfig::default(),
            logs: LogsConfig::default(),
            store: StoreConfig::default(),
            server: ServerConfig::default(),
            prices: BTreeMap::new(),
            agents: BTreeMap::new(),
            users: BTreeMap::new(),
            host: HostConfig::default(),
            max_sub_objective_depth: DEFAULT_SUB_OBJECTIVE_DEPTH,
            mcp: BTreeMap::new(),
            executors: ExecutorsConfig::default(),
            routing: RoutingConfig::default(),
            agent_order: Vec::new(),
            safety: SafetyConfig::default(),
        }
    }
}

impl Config {
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(orch_proto::paths::default_socket)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(orch_proto::paths::default_state_dir)
    }

    pub fn max_parallel(&self) -> u32 {
        self.max_parallel.unwrap_or_else(default_parallel)
    }

    /// The limits of user `uid` (named `name`, if it has a name): its `[users.NAME]` or
    /// `[users.UID]` entry over the `[budget]` and `max_parallel_per_user` defaults.
    pub fn user_limits(&self, uid: u32, name: Option<&str>) -> UserLimits {
        let own = name
            .and_then(|n| self.users.get(n))
            .or_else(|| self.users.get(&uid.to_string()));
        let max = self.max_parallel();
        UserLimits {
            daily_usd: own.and_then(|u| u.daily_usd).or(self.budget.daily_usd),
            monthly_usd: own.and_then(|u| u.monthly_usd).or(self.budget.monthly_usd),
            max_parallel: own
                .and_then(|u| u.max_parallel)
                .or(self.max_parallel_per_user)
                .unwrap_or(max)
                .min(max),
        }
    }

    /// The daemon-wide retry policy (built-in defaults overlaid by `[defaults.retry]`).
    pub fn retry_policy(&self) -> RetryPolicy {
        let mut p = RetryPolicy::default();
        let r = &self.defaults.retry;
        if let Some(v) = r.max_attempts {
            p.max_attempts = v;
        }
        if let Some(v) = r.initial_backoff {
            p.initial_backoff_ms = v.0;
        }
        if let Some(v) = r.max_backoff {
            p.max_backoff_ms = v.0;
        }
        if let Some(v) = r.multiplier {
            p.multiplier = v;
        }
        if let Some(v) = r.jitter {
            p.jitter = v;
        }
        if let Some(v) = &r.retry_on {
            p.retry_on = v.iter().filter_map(|w| outcome_of(w)).collect();
        }
        if let Some(v) = &r.retry_exit_codes {
            p.retry_exit_codes = v.clone();
        }
        if let Some(v) = r.max_rate_limit_waits {
            p.max_rate_limit_waits = v;
        }
        // Checked by `validate`.
        for (class, action) in r.on_failure.iter().flatten() {
            if let Ok((c, a)) = OnFailure::parse_entry(class, action) {
                p.on_failure.put(c, a);
            }
        }
        p
    }

    /// The daemon-wide default limits.
    pub fn limits(&self) -> Limits {
        limits_of(&self.defaults.limits)
    }

    /// Renders the effective config as TOML.
    pub fn to_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render config: {e}\n"),
        };
        // The profiles in the file's order (routing's ties go to it), not by name.
        if let Some(agents) = value.get_mut("agents").and_then(toml::Value::as_table_mut) {
            let mut ordered = toml::Table::new();
            for (name, _) in self.agents_in_order() {
                if let Some(v) = agents.remove(name) {
                    ordered.insert(name.to_string(), v);
                }
            }
            ordered.extend(std::mem::take(agents));
            *agents = ordered;
        }
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// An outcome word, read the way `validate` checks it (`orch_proto::words`: spaces and
/// case do not matter), so that a word accepted there is never dropped here.
fn outcome_of(word: &str) -> Option<Outcome> {
    let word = word.trim().to_lowercase();
    serde_json::from_value(serde_json::Value::String(word)).ok()
}

/// Limits from a `limits` table.
pub fn limits_of(l: &LimitsConfig) -> Limits {
    Limits {
        memory_bytes: l.memory.map(|s| s.0),
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    }
}

fn default_parallel() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

mod check;
mod load;

// `parse` and `MAX_CONFIG_BYTES` are used by the tests and the fuzz crate, not orchd itself.
#[allow(unused_imports)]
pub use load::{MAX_CONFIG_BYTES, MAX_RETENTION_MS, Overrides, config_path, parse, read_file};

#[cfg(test)]
mod tests;
