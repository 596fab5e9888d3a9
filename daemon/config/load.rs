//! Loading the daemon config in layers: defaults → file → `ORCH_*` environment →
//! command-line flags.

use super::*;

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

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Longest `retention`: 100 years (the cut-off is computed in signed milliseconds).
pub const MAX_RETENTION_MS: u64 = 36_500 * 86_400_000;

/// Reads a config file; a missing file that was not named explicitly yields defaults.
pub fn read_file(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() > MAX_CONFIG_BYTES
    {
        return Err(invalid(
            &path.display().to_string(),
            "",
            format!(
                "{} bytes is more than the config size limit of {MAX_CONFIG_BYTES}",
                meta.len()
            ),
        ));
    }
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
    orch_proto::plan::guard::check(text, orch_proto::plan::Format::Toml)
        .map_err(|problem| invalid(origin, "", problem))?;
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
    let agent_order: Vec<String> = value
        .get("agents")
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let mut cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        invalid(
            origin,
            if key == "." { "" } else { &key },
            e.into_inner().to_string(),
        )
    })?;
    cfg.agent_order = agent_order;
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
        if let Some(v) = env_var("ORCH_LIVE_RESTORE") {
            self.live_restore = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(invalid(
                        "environment",
                        "ORCH_LIVE_RESTORE",
                        format!("`{v}` is not one of true, false"),
                    ));
                }
            };
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
        if !self.agent_order.iter().any(|n| n == "shell") {
            // The built-in profile comes after the file's (routing's ties go by this order).
            self.agent_order.push("shell".into());
        }
        Ok(self)
    }
}
