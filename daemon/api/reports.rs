//! Reports: per agent profile statistics (`GetStats`, from the engine's aggregates), usage
//! broken down by day, agent, model or objective (`GetUsageBreakdown`, from the usage
//! events kept), the effective config with its sources (`GetConfig`), and the host's
//! figures for `DaemonStatus`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tonic::Status;

use orch_proto::v1 as pb;

use super::convert::{ts, usage_pb};
use crate::config::{Config, Overrides};
use crate::engine::Caller;
use crate::engine::stats::{self, Stats};
use crate::model::{Attempt, EventKind, Millis, Objective, Usage, now_ms};
use crate::store::{Store, StoreError};

/// `GetUsageBreakdown` without `since_ms`: the last 30 days.
pub const DEFAULT_SINCE_MS: u64 = 30 * 86_400_000;
/// The words `by` takes.
pub const BREAKDOWNS: [&str; 4] = ["day", "agent", "model", "objective"];

/// The host's figures and the `[host]` rules, with why work is held back (if it is).
pub fn host_status(cfg: &Config, held: Option<String>) -> pb::HostStatus {
    let h = crate::sys::host_figures();
    pb::HostStatus {
        total_memory_bytes: h.total_memory,
        available_memory_bytes: h.available_memory,
        load_1m: h.load_1m,
        load_5m: h.load_5m,
        load_15m: h.load_15m,
        cpus: h.cpus,
        min_available_memory_bytes: cfg.host.min_available_memory.map(|s| s.0),
        max_load: cfg.host.max_load,
        held: held.unwrap_or_default(),
    }
}

/// The engine's aggregates as the API's message, by profile name.
pub fn stats_pb(stats: &Stats) -> pb::GetStatsResponse {
    let agents = stats
        .iter()
        .map(|(name, s)| pb::AgentStats {
            agent: name.clone(),
            runs: s.runs,
            successes: s.successes,
            success_rate: s.success_rate(),
            retries: s.retries,
            cancelled: s.cancelled,
            duration_p50_ms: s.percentile_ms(0.5).unwrap_or(0),
            duration_p95_ms: s.percentile_ms(0.95).unwrap_or(0),
            usage: Some(usage_pb(&s.usage)),
            cost_per_success_usd: s.cost_per_success(),
            last_ended_at: (s.last_ended_ms > 0).then(|| ts(s.last_ended_ms)).flatten(),
        })
        .collect();
    pb::GetStatsResponse { agents }
}

/// What a usage report of one objective needs: its owner and name, and its attempts' agents.
struct ObjectiveFacts {
    owner: u32,
    name: String,
    agents: HashMap<(String, u32), String>,
}

fn facts_of(store: &Store, id: &str) -> Result<Option<ObjectiveFacts>, StoreError> {
    let Some(Objective {
        owner_uid, name, ..
    }) = store.objective(id)?
    else {
        return Ok(None);
    };
    let agents = store
        .attempts(id)?
        .into_iter()
        .map(|a: Attempt| {
            let agent = stats::agent_of(&a).to_string();
            ((a.step_id, a.number), agent)
        })
        .collect();
    Ok(Some(ObjectiveFacts {
        owner: owner_uid,
        name,
        agents,
    }))
}

fn day_of(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Sums the usage events of the last `since_ms` by `by`. `everyone`: root and orchd's
/// own user see every user's usage; others their own.
pub fn usage_breakdown(
    store: &Store,
    who: Caller,
    everyone: bool,
    by: &str,
    since_ms: Option<u64>,
) -> Result<pb::UsageBreakdown, Status> {
    let by = by.trim().to_lowercase();
    if !BREAKDOWNS.contains(&by.as_str()) {
        return Err(Status::invalid_argument(format!(
            "by: `{by}` is not one of {}",
            BREAKDOWNS.join(", ")
        )));
    }
    let since_ms = since_ms.unwrap_or(DEFAULT_SINCE_MS);
    if since_ms > crate::config::MAX_RETENTION_MS {
        return Err(Status::invalid_argument(
            "since_ms: longer than the limit of 36500 days",
        ));
    }
    let cutoff = now_ms() - since_ms as i64;
    let events = store
        .usage_events_newest_first(|t| t >= cutoff)
        .map_err(super::store_status)?;
    let mut objectives: HashMap<String, Option<ObjectiveFacts>> = HashMap::new();
    let mut rows: BTreeMap<String, (Usage, u64, String)> = BTreeMap::new();
    let mut total = Usage::default();
    for e in events {
        let EventKind::Usage { report, model, .. } = &e.kind else {
            continue;
        };
        if !objectives.contains_key(&e.objective_id) {
            let facts = facts_of(store, &e.objective_id).map_err(super::store_status)?;
            objectives.insert(e.objective_id.clone(), facts);
        }
        let Some(Some(o)) = objectives.get(&e.objective_id) else {
            continue;
        };
        if !everyone && o.owner != who.uid {
            continue;
        }
        let (key, name) = match by.as_str() {
            "day" => (day_of(e.time_ms), String::new()),
            "agent" => (
                o.agents
                    .get(&(e.step_id.clone(), e.attempt))
                    .cloned()
                    .unwrap_or_else(|| stats::COMMAND.to_string()),
                String::new(),
            ),
            "model" => (model.clone(), String::new()),
            _ => (e.objective_id.clone(), o.name.clone()),
        };
        let row = rows
            .entry(key)
            .or_insert_with(|| (Usage::default(), 0, name));
        row.0.add(report);
        row.1 += 1;
        total.add(report);
    }
    Ok(pb::UsageBreakdown {
        by,
        since: ts(cutoff),
        rows: rows
            .into_iter()
            .map(|(key, (u, n, name))| pb::UsageRow {
                key,
                usage: Some(usage_pb(&u)),
                name,
                reports: n,
            })
            .collect(),
        total: Some(usage_pb(&total)),
    })
}

/// Environment variable names whose values are treated as secrets.
const SECRET_WORDS: [&str; 8] = [
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
    "COOKIE",
];

/// Whether an environment variable's value should not be shown.
pub fn is_secret(name: &str) -> bool {
    let upper = name.to_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

pub const REDACTED: &str = "<redacted>";

/// The config with secret-looking environment values of agent profiles replaced.
pub fn redacted(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    let envs = cfg.agents.values_mut().map(|p| &mut p.env);
    for env in envs.chain(cfg.mcp.values_mut().map(|s| &mut s.env)) {
        for (k, v) in env.iter_mut() {
            if is_secret(k) {
                *v = REDACTED.to_string();
            }
        }
    }
    cfg
}

/// A tool server's environment as a caller may see it: whole for a `trusted` caller, else
/// with secret-looking values replaced by [`REDACTED`].
pub fn tool_server_env(
    env: &std::collections::BTreeMap<String, String>,
    trusted: bool,
) -> std::collections::HashMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let shown = if trusted || !is_secret(k) {
                v.clone()
            } else {
                REDACTED.to_string()
            };
            (k.clone(), shown)
        })
        .collect()
}

/// Dotted keys of every leaf of `v` (arrays are leaves), with their values.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        serde_json::Value::Null => {}
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// The keys the config file sets (each table's own keys and every leaf).
fn file_keys(path: &Path) -> (bool, Vec<String>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (false, Vec::new());
    };
    let value: serde_json::Value = toml::from_str::<toml::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_default();
    let mut leaves = Vec::new();
    flatten("", &value, &mut leaves);
    (true, leaves.into_iter().map(|(k, _)| k).collect())
}

/// Where the value of `key` comes from: a flag, the environment, the file, or the default.
fn source_of(key: &str, flags: &Overrides, in_file: &[String]) -> String {
    let flag = match key {
        "socket" => flags.socket.is_some().then_some("--socket"),
        "state_dir" => flags.state_dir.is_some().then_some("--state-dir"),
        "max_parallel" => flags.max_parallel.is_some().then_some("--max-parallel"),
        "limits_backend" => flags.limits_backend.is_some().then_some("--limits-backend"),
        "grace_period" => flags.grace_period.is_some().then_some("--grace-period"),
        _ => None,
    };
    if let Some(f) = flag {
        return format!("flag {f}");
    }
    let env = match key {
        "socket" => Some("ORCH_SOCKET"),
        "state_dir" => Some("ORCH_STATE_DIR"),
        "max_parallel" => Some("ORCH_MAX_PARALLEL"),
        "limits_backend" => Some("ORCH_LIMITS_BACKEND"),
        "grace_period" => Some("ORCH_GRACE_PERIOD"),
        "retention" => Some("ORCH_RETENTION"),
        _ => None,
    };
    if let Some(var) = env
        && std::env::var(var).is_ok_and(|v| !v.is_empty())
    {
        return format!("env {var}");
    }
    let set_in_file = in_file
        .iter()
        .any(|k| k == key || key.starts_with(&format!("{k}.")));
    if set_in_file {
        "file".into()
    } else {
        "default".into()
    }
}

/// The effective config, key by key, with sources; secrets redacted.
pub fn config_report(cfg: &Config, path: &Path, flags: &Overrides) -> pb::GetConfigResponse {
    let shown = redacted(cfg);
    let (exists, in_file) = file_keys(path);
    let value = serde_json::to_value(&shown).unwrap_or_default();
    let mut leaves = Vec::new();
    flatten("", &value, &mut leaves);
    let entries = leaves
        .into_iter()
        .map(|(key, v)| pb::ConfigEntry {
            source: source_of(&key, flags, &in_file),
            value_json: v.to_string(),
            key,
        })
        .collect();
    pb::GetConfigResponse {
        config_path: path.display().to_string(),
        config_file_exists: exists,
        entries,
        toml: shown.to_toml(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_server_secrets_are_shown_only_to_a_trusted_caller() {
        let env: std::collections::BTreeMap<String, String> = [
            ("GITHUB_TOKEN".to_string(), "ghp_1".to_string()),
            ("ROOT_DIR".to_string(), "/srv".to_string()),
        ]
        .into();
        let other = tool_server_env(&env, false);
        assert_eq!(other["GITHUB_TOKEN"], REDACTED);
        assert_eq!(other["ROOT_DIR"], "/srv");
        let trusted = tool_server_env(&env, true);
        assert_eq!(trusted["GITHUB_TOKEN"], "ghp_1");
        assert_eq!(trusted.len(), 2);
    }

    #[test]
    fn tool_server_secrets_are_redacted_in_the_config_report() {
        let mut cfg = Config::default();
        let server = crate::config::McpServerConfig {
            command: vec!["srv".into()],
            env: [("DB_PASSWORD".to_string(), "hunter2".to_string())].into(),
            url: None,
        };
        cfg.mcp.insert("db".into(), server);
        let r = redacted(&cfg);
        assert_eq!(r.mcp["db"].env["DB_PASSWORD"], REDACTED);
        assert!(!r.to_toml().contains("hunter2"));
    }

    #[test]
    fn secret_looking_names_are_redacted_and_others_kept() {
        let mut cfg = Config::default();
        let mut p = crate::config::shell_profile();
        p.env.insert("ANTHROPIC_API_KEY".into(), "sk-123".into());
        p.env.insert("GITHUB_TOKEN".into(), "ghp".into());
        p.env.insert("RUST_LOG".into(), "info".into());
        cfg.agents.insert("a".into(), p);
        let r = redacted(&cfg);
        let env = &r.agents["a"].env;
        assert_eq!(env["ANTHROPIC_API_KEY"], REDACTED);
        assert_eq!(env["GITHUB_TOKEN"], REDACTED);
        assert_eq!(env["RUST_LOG"], "info");
        let report = config_report(
            &cfg,
            Path::new("/nonexistent/orchd.toml"),
            &Overrides::default(),
        );
        assert!(!report.toml.contains("sk-123"), "{}", report.toml);
        assert!(
            report
                .entries
                .iter()
                .all(|e| !e.value_json.contains("sk-123"))
        );
        assert!(!report.config_file_exists);
    }

    #[test]
    fn sources_go_flag_then_env_then_file_then_default() {
        let flags = Overrides {
            max_parallel: Some(3),
            ..Default::default()
        };
        let file = vec!["retention".to_string(), "agents.claude".to_string()];
        assert_eq!(
            source_of("max_parallel", &flags, &file),
            "flag --max-parallel"
        );
        assert_eq!(source_of("retention", &flags, &file), "file");
        assert_eq!(source_of("agents.claude.command", &flags, &file), "file");
        assert_eq!(
            source_of("agents.claudex.command", &flags, &file),
            "default"
        );
        assert_eq!(source_of("grace_period", &flags, &file), "default");
    }

    #[test]
    fn flatten_names_leaves_with_dotted_keys() {
        let v = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "d": null, "e": {}});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.b", "a.c", "e"]);
    }

    #[test]
    fn unknown_breakdowns_are_refused() {
        assert!(BREAKDOWNS.contains(&"model"));
        assert_eq!(day_of(0), "1970-01-01");
    }
}
