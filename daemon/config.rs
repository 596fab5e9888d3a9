//! The daemon config: `orchd.toml` (serde, every key optional) layered as
//! defaults → file → `ORCH_*` environment → command-line flags, then resolved
//! into typed settings. Errors name the file or variable and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Limits, Outcome, RetryPolicy};
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
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub alert_percent: Vec<f64>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            daily_usd: None,
            monthly_usd: None,
            alert_percent: vec![50.0, 80.0, 100.0],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    pub max_attempt_bytes: Size,
    pub max_total_bytes: Size,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_attempt_bytes: Size(256 << 20),
            max_total_bytes: Size(10 << 30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// How a profile's usage and cost are read from its output.
pub const USAGE_FORMATS: [&str; 3] = ["orch-lines", "claude-stream-json", "codex-json"];

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
}

fn default_usage() -> String {
    "orch-lines".into()
}

/// The built-in `shell` profile.
pub fn shell_profile() -> AgentProfile {
    AgentProfile {
        command: vec!["bash".into(), "-c".into(), "{prompt}".into()],
        usage: default_usage(),
        env: BTreeMap::new(),
        timeout: None,
        idle_timeout: None,
        limits: LimitsConfig::default(),
        model: None,
    }
}

/// `orchd.toml` as written (every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub max_parallel: Option<u32>,
    pub retention: Dur,
    pub grace_period: Dur,
    /// `auto`, `cgroup-v2` or `rlimit`.
    pub limits_backend: String,
    pub defaults: DefaultsConfig,
    pub budget: BudgetConfig,
    pub logs: LogsConfig,
    pub prices: BTreeMap<String, Price>,
    pub agents: BTreeMap<String, AgentProfile>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            state_dir: None,
            max_parallel: None,
            retention: Dur(30 * 86_400_000),
            grace_period: Dur(10_000),
            limits_backend: "auto".into(),
            defaults: DefaultsConfig::default(),
            budget: BudgetConfig::default(),
            logs: LogsConfig::default(),
            prices: BTreeMap::new(),
            agents: BTreeMap::new(),
        }
    }
}

/// Overrides from the command line (strongest layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub max_parallel: Option<u32>,
    pub limits_backend: Option<String>,
    pub grace_period: Option<String>,
}

/// The config file to read: flag, then `ORCH_CONFIG`, then the default path.
/// The second value says whether it was named explicitly (then it must exist).
pub fn config_path(flag: Option<PathBuf>) -> (PathBuf, bool) {
    if let Some(p) = flag {
        return (p, true);
    }
    match std::env::var_os("ORCH_CONFIG").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), true),
        None => (orch_proto::paths::default_config(), false),
    }
}

/// Reads a config file; a missing file that was not named explicitly yields defaults.
pub fn read_file(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(Config::default());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse(&text, &path.display().to_string())
}

/// Parses config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let value: toml::Value = toml::from_str(text).map_err(|e| {
        let msg = e.to_string();
        invalid(
            origin,
            "",
            msg.lines().next().unwrap_or("bad TOML").to_string()
                + &msg
                    .lines()
                    .skip(1)
                    .map(|l| format!(" {}", l.trim()))
                    .collect::<String>(),
        )
    })?;
    let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        invalid(
            origin,
            if key == "." { "" } else { &key },
            e.into_inner().to_string(),
        )
    })?;
    cfg.validate(origin)?;
    Ok(cfg)
}

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Applies `ORCH_*` environment variables, then flags.
    pub fn layer(mut self, flags: &Overrides) -> Result<Config, ConfigError> {
        if let Some(v) = env_var("ORCH_SOCKET") {
            self.socket = Some(v.into());
        }
        if let Some(v) = env_var("ORCH_STATE_DIR") {
            self.state_dir = Some(v.into());
        }
        if let Some(v) = env_var("ORCH_MAX_PARALLEL") {
            self.max_parallel = Some(v.parse().map_err(|_| {
                invalid(
                    "environment",
                    "ORCH_MAX_PARALLEL",
                    format!("`{v}` is not a number"),
                )
            })?);
        }
        if let Some(v) = env_var("ORCH_LIMITS_BACKEND") {
            self.limits_backend = v;
        }
        if let Some(v) = env_var("ORCH_GRACE_PERIOD") {
            self.grace_period = Dur(parse_duration_ms(&v)
                .map_err(|e| invalid("environment", "ORCH_GRACE_PERIOD", e))?);
        }
        if let Some(v) = env_var("ORCH_RETENTION") {
            self.retention =
                Dur(parse_duration_ms(&v)
                    .map_err(|e| invalid("environment", "ORCH_RETENTION", e))?);
        }
        self.validate("environment")?;
        if let Some(v) = &flags.socket {
            self.socket = Some(v.clone());
        }
        if let Some(v) = &flags.state_dir {
            self.state_dir = Some(v.clone());
        }
        if let Some(v) = flags.max_parallel {
            self.max_parallel = Some(v);
        }
        if let Some(v) = &flags.limits_backend {
            self.limits_backend = v.clone();
        }
        if let Some(v) = &flags.grace_period {
            self.grace_period =
                Dur(parse_duration_ms(v)
                    .map_err(|e| invalid("command line", "--grace-period", e))?);
        }
        self.validate("command line")?;
        // Resolve the defaults so `--print-config` shows the values in force.
        self.socket
            .get_or_insert_with(orch_proto::paths::default_socket);
        self.state_dir
            .get_or_insert_with(orch_proto::paths::default_state_dir);
        self.max_parallel.get_or_insert_with(default_parallel);
        self.agents
            .entry("shell".into())
            .or_insert_with(shell_profile);
        Ok(self)
    }

    /// Checks values serde cannot (ranges, names, templates).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.max_parallel == Some(0) {
            return Err(invalid(origin, "max_parallel", "must be at least 1"));
        }
        if !matches!(
            self.limits_backend.as_str(),
            "auto" | "cgroup-v2" | "rlimit"
        ) {
            return Err(invalid(
                origin,
                "limits_backend",
                format!(
                    "`{}` is not one of auto, cgroup-v2, rlimit",
                    self.limits_backend
                ),
            ));
        }
        let r = &self.defaults.retry;
        if let Some(err) = retry_problem(r) {
            return Err(invalid(origin, &format!("defaults.retry.{}", err.0), err.1));
        }
        if let Some(w) = r
            .retry_on
            .iter()
            .flatten()
            .find(|w| orch_proto::words::parse_outcome(w).is_none())
        {
            return Err(invalid(
                origin,
                "defaults.retry.retry_on",
                format!("unknown outcome `{w}`"),
            ));
        }
        for p in &self.budget.alert_percent {
            if !(p.is_finite() && *p > 0.0) {
                return Err(invalid(
                    origin,
                    "budget.alert_percent",
                    format!("{p} is not a positive percentage"),
                ));
            }
        }
        for (k, v) in [
            ("budget.daily_usd", self.budget.daily_usd),
            ("budget.monthly_usd", self.budget.monthly_usd),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(invalid(
                    origin,
                    k,
                    format!("{v} is not a non-negative amount"),
                ));
            }
        }
        step_settings(
            origin,
            "defaults",
            [self.defaults.timeout, self.defaults.idle_timeout],
            &self.defaults.limits,
        )?;
        for (model, p) in &self.prices {
            for (k, v) in [
                ("input_per_mtok", p.input_per_mtok),
                ("output_per_mtok", p.output_per_mtok),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(
                        origin,
                        &format!("prices.{model}.{k}"),
                        format!("{v} is not a non-negative amount"),
                    ));
                }
            }
        }
        for (name, a) in &self.agents {
            let key = format!("agents.{name}");
            if a.command.is_empty() || a.command[0].is_empty() {
                return Err(invalid(
                    origin,
                    &format!("{key}.command"),
                    "must name a program",
                ));
            }
            step_settings(origin, &key, [a.timeout, a.idle_timeout], &a.limits)?;
            if !USAGE_FORMATS.contains(&a.usage.as_str()) {
                return Err(invalid(
                    origin,
                    &format!("{key}.usage"),
                    format!("`{}` is not one of {}", a.usage, USAGE_FORMATS.join(", ")),
                ));
            }
        }
        Ok(())
    }

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
        p
    }

    /// The daemon-wide default limits.
    pub fn limits(&self) -> Limits {
        limits_of(&self.defaults.limits)
    }

    /// Renders the effective config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// An outcome word as `validate` accepts it (`orch_proto::words::parse_outcome`: trimmed,
/// any case).
fn outcome_of(word: &str) -> Option<Outcome> {
    serde_json::from_value(serde_json::Value::String(word.trim().to_ascii_lowercase())).ok()
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

/// What `[defaults]` or a profile gives steps must be what a plan could give: timeouts
/// longer than zero, limits that pass `orch_proto::validate::check_limits`.
fn step_settings(
    origin: &str,
    at: &str,
    [timeout, idle_timeout]: [Option<Dur>; 2],
    limits: &LimitsConfig,
) -> Result<(), ConfigError> {
    for (k, d) in [("timeout", timeout), ("idle_timeout", idle_timeout)] {
        if d == Some(Dur(0)) {
            return Err(invalid(
                origin,
                &format!("{at}.{k}"),
                "must be longer than zero",
            ));
        }
    }
    let l = limits_of(limits);
    let l = orch_proto::v1::Limits {
        memory_bytes: l.memory_bytes,
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    };
    orch_proto::validate::check_limits(&l, &format!("{at}.limits"))
        .map_err(|e| invalid(origin, &e.field, e.problem))
}

fn retry_problem(r: &RetryConfig) -> Option<(&'static str, String)> {
    if r.max_attempts == Some(0) {
        return Some(("max_attempts", "must be at least 1".into()));
    }
    if let Some(m) = r.multiplier
        && !(m.is_finite() && m >= 1.0)
    {
        return Some(("multiplier", format!("must be at least 1.0, got {m}")));
    }
    if let Some(j) = r.jitter
        && !(0.0..=1.0).contains(&j)
    {
        return Some(("jitter", format!("must be between 0 and 1, got {j}")));
    }
    None
}

fn default_parallel() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        let c = parse("", "t.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.retry_policy(), RetryPolicy::default());
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"
max_parallel = 3
retention = "7d"
grace_period = "2s"
[defaults]
timeout = "20m"
retry = { max_attempts = 5, initial_backoff = "1s" }
limits = { memory = "2G", pids = 256 }
[budget]
daily_usd = 10.0
[logs]
max_attempt_bytes = "64M"
[prices.gpt-5]
input_per_mtok = 1.25
output_per_mtok = 10.0
[agents.claude]
command = ["claude", "-p", "{prompt}"]
usage = "claude-stream-json"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.max_parallel(), 3);
        assert_eq!(c.retention.0, 7 * 86_400_000);
        assert_eq!(c.retry_policy().max_attempts, 5);
        assert_eq!(c.retry_policy().initial_backoff_ms, 1000);
        assert_eq!(c.limits().memory_bytes, Some(2 << 30));
        assert_eq!(c.logs.max_attempt_bytes.0, 64 << 20);
        assert_eq!(c.agents["claude"].usage, "claude-stream-json");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("max_paralel = 2", "t.toml").unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("max_paralel"), "{e}");
        let e = parse("[defaults]\ntimeout = \"soon\"", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("defaults.timeout") && e.contains("bad duration"),
            "{e}"
        );
        let e = parse("limits_backend = \"docker\"", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits_backend"), "{e}");
        let e = parse("[agents.x]\ncommand = []", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("agents.x.command"), "{e}");
        let e = parse("[agents.x]\ncommand = [\"x\"]\nusage = \"magic\"", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("agents.x.usage"), "{e}");
        let e = parse("max_parallel = 0", "t.toml").unwrap_err().to_string();
        assert!(e.contains("max_parallel"), "{e}");
    }

    /// Found by fuzzing (fuzz/corpus/daemon_config/zero-timeout.toml): a profile's
    /// `timeout = "0h"` was accepted, and every attempt of it would time out at once. Step
    /// settings from the config now get the checks a plan's get, and prices must be numbers.
    #[test]
    fn step_settings_a_plan_could_not_give_are_refused() {
        for (text, key) in [
            (
                "[agents.x]\ncommand = [\"x\"]\ntimeout = \"0h\"",
                "agents.x.timeout",
            ),
            ("[defaults]\nidle_timeout = \"0s\"", "defaults.idle_timeout"),
            ("[defaults.limits]\nmemory = 0", "defaults.limits.memory"),
            (
                "[defaults.limits]\ncpu_quota = nan",
                "defaults.limits.cpu_quota",
            ),
            (
                "[agents.x]\ncommand = [\"x\"]\nlimits = { memory = \"1K\" }",
                "agents.x.limits.memory",
            ),
            (
                "[prices.m]\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0",
                "prices.m.input_per_mtok",
            ),
            (
                "[prices.m]\ninput_per_mtok = 1.0\noutput_per_mtok = inf",
                "prices.m.output_per_mtok",
            ),
        ] {
            let e = parse(text, "t.toml").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("config t.toml: {key}: ")),
                "{text}: {e}"
            );
        }
    }

    /// Found with the daemon_config fuzz target (fuzz/corpus/daemon_config/retry-on-case.toml):
    /// `retry_on = [" Timeout"]` passed `validate` but was dropped from the policy, which then
    /// retried nothing.
    #[test]
    fn retry_on_words_are_read_as_validated() {
        let c = parse(
            "[defaults.retry]\nretry_on = [\" Timeout\", \"EXIT_FAILURE\"]",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.retry_policy().retry_on,
            vec![Outcome::Timeout, Outcome::ExitFailure]
        );
    }

    #[test]
    fn flags_beat_file() {
        let c = parse("max_parallel = 3\ngrace_period = \"5s\"", "t.toml").unwrap();
        let c = c
            .layer(&Overrides {
                max_parallel: Some(7),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.max_parallel(), 7);
        assert_eq!(c.grace_period.0, 5000);
        assert!(c.agents.contains_key("shell"));
        let again = parse(&c.to_toml(), "printed").unwrap();
        assert_eq!(again.max_parallel(), 7);
    }
}
