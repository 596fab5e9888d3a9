//! The reports: `usage --by`, `stats`, `daemon config`, and the host lines of `daemon
//! status` (tables and their `-o json` shapes).

use orch_proto::units::{HumanBytes, format_duration_ms};
use orch_proto::v1::{
    AgentStats, GetConfigRequest, GetConfigResponse, GetStatsRequest, HostStatus, UsageBreakdown,
    UsageBreakdownRequest,
};
use serde_json::{Value, json};

use crate::cli::UsageBy;
use crate::client::Client;
use crate::error::Result;
use crate::json;
use crate::output::{self, Format};

/// `orchctl usage --by WHAT [--since DUR]`.
pub async fn usage_by(
    client: &mut Client,
    by: UsageBy,
    since_ms: Option<u64>,
    format: Format,
) -> Result<()> {
    let request = UsageBreakdownRequest {
        by: by.word().to_string(),
        since_ms,
    };
    let r = client.api.get_usage_breakdown(request).await;
    let report = client.check(r)?;
    match format {
        Format::Json => output::json_pretty(&breakdown_json(&report)),
        Format::Table => output::write_out(&breakdown_table(&report)),
    }
}

fn breakdown_json(r: &UsageBreakdown) -> Value {
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            let mut v = json!({
                r.by.clone(): row.key,
                "usage": json::usage(row.usage.as_ref()),
                "reports": row.reports,
            });
            if r.by == "objective" {
                v["name"] = Value::String(row.name.clone());
            }
            v
        })
        .collect();
    json!({
        "by": r.by,
        "since": json::ts(r.since.as_ref()),
        "rows": rows,
        "total": json::usage(r.total.as_ref()),
    })
}

fn breakdown_table(r: &UsageBreakdown) -> String {
    let key_header = r.by.to_uppercase();
    let mut header = vec![key_header.as_str()];
    if r.by == "objective" {
        header.push("NAME");
    }
    header.extend(["INPUT", "CACHE READ", "CACHE WRITE", "OUTPUT", "COST"]);
    let cells = |key: String, name: Option<String>, u: Option<&orch_proto::v1::Usage>| {
        let u = u.cloned().unwrap_or_default();
        let mut row = vec![key];
        row.extend(name);
        row.extend([
            u.input_tokens.to_string(),
            u.cache_read_tokens.to_string(),
            u.cache_write_tokens.to_string(),
            u.output_tokens.to_string(),
            output::cost(u.cost_usd),
        ]);
        row
    };
    let named = r.by == "objective";
    let mut rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            let key = match (r.by.as_str(), row.key.is_empty()) {
                ("model", true) => "(not named)".to_string(),
                _ => row.key.clone(),
            };
            let name = named.then(|| output::truncate(&output::dash(&row.name), 24));
            cells(key, name, row.usage.as_ref())
        })
        .collect();
    rows.push(cells(
        "total".into(),
        named.then(String::new),
        r.total.as_ref(),
    ));
    let since = output::time(r.since.as_ref());
    let mut text = format!("Usage by {} since {since} UTC\n", r.by);
    if r.rows.is_empty() {
        text.push_str("(no usage recorded in this period)\n");
    }
    text.push_str(&output::table(&header, rows));
    text
}

/// `orchctl stats`.
pub async fn stats(client: &mut Client, format: Format) -> Result<()> {
    let r = client.api.get_stats(GetStatsRequest {}).await;
    let list = client.check(r)?.agents;
    match format {
        Format::Json => output::json_pretty(&Value::Array(list.iter().map(stats_json).collect())),
        Format::Table => output::write_out(&stats_table(&list)),
    }
}

fn stats_json(s: &AgentStats) -> Value {
    json!({
        "agent": s.agent,
        "runs": s.runs,
        "successes": s.successes,
        "success_rate": s.success_rate,
        "retries": s.retries,
        "cancelled": s.cancelled,
        "duration_p50_ms": s.duration_p50_ms,
        "duration_p95_ms": s.duration_p95_ms,
        "usage": json::usage(s.usage.as_ref()),
        "cost_per_success_usd": s.cost_per_success_usd,
        "last_ended_at": json::ts(s.last_ended_at.as_ref()),
    })
}

fn stats_table(list: &[AgentStats]) -> String {
    if list.is_empty() {
        return "no attempt has ended yet\n".into();
    }
    let rows = list
        .iter()
        .map(|s| {
            let cost = s.usage.as_ref().map_or(0.0, |u| u.cost_usd);
            vec![
                s.agent.clone(),
                s.runs.to_string(),
                format!("{:.0}%", s.success_rate * 100.0),
                duration(s.runs, s.duration_p50_ms),
                duration(s.runs, s.duration_p95_ms),
                s.retries.to_string(),
                s.cancelled.to_string(),
                output::cost(cost),
                s.cost_per_success_usd
                    .map(output::cost)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(
        &[
            "AGENT",
            "RUNS",
            "SUCCESS",
            "P50",
            "P95",
            "RETRIES",
            "CANCELLED",
            "COST",
            "COST/SUCCESS",
        ],
        rows,
    )
}

fn duration(runs: u64, ms: u64) -> String {
    if runs == 0 {
        "-".into()
    } else {
        format_duration_ms(ms - ms % if ms >= 10_000 { 1000 } else { 1 })
    }
}

/// `orchctl daemon config`.
pub async fn daemon_config(client: &mut Client, format: Format) -> Result<()> {
    let r = client.api.get_config(GetConfigRequest {}).await;
    let c = client.check(r)?;
    match format {
        Format::Json => output::json_pretty(&config_json(&c)),
        Format::Table => output::write_out(&config_table(&c)),
    }
}

fn config_json(c: &GetConfigResponse) -> Value {
    let entries: Vec<Value> = c
        .entries
        .iter()
        .map(|e| {
            json!({
                "key": e.key,
                "value": serde_json::from_str::<Value>(&e.value_json)
                    .unwrap_or_else(|_| Value::String(e.value_json.clone())),
                "source": e.source,
            })
        })
        .collect();
    json!({
        "config_path": c.config_path,
        "config_file_exists": c.config_file_exists,
        "entries": entries,
        "toml": c.toml,
    })
}

fn config_table(c: &GetConfigResponse) -> String {
    let mut text = if c.config_file_exists {
        format!("Config file: {}\n", c.config_path)
    } else {
        format!(
            "Config file: none ({} does not exist: defaults, environment and flags only)\n",
            c.config_path
        )
    };
    let rows = c
        .entries
        .iter()
        .map(|e| {
            // Strings without their quotes, the rest as JSON.
            let value = match serde_json::from_str::<Value>(&e.value_json) {
                Ok(Value::String(s)) => s,
                _ => e.value_json.clone(),
            };
            vec![
                e.key.clone(),
                output::truncate(&value, 60),
                e.source.clone(),
            ]
        })
        .collect();
    text.push_str(&output::table(&["KEY", "VALUE", "SOURCE"], rows));
    text
}

/// `Host` for `daemon status`: memory, load, and whether work is held back.
pub fn host_line(h: &HostStatus) -> String {
    let mut text = format!(
        "{} of {} memory available, load {:.2} {:.2} {:.2} on {} CPU(s)",
        HumanBytes(h.available_memory_bytes),
        HumanBytes(h.total_memory_bytes),
        h.load_1m,
        h.load_5m,
        h.load_15m,
        h.cpus
    );
    let mut rules = Vec::new();
    if let Some(m) = h.min_available_memory_bytes {
        rules.push(format!("memory floor {}", HumanBytes(m)));
    }
    if let Some(l) = h.max_load {
        rules.push(format!("load ceiling {l}"));
    }
    if !rules.is_empty() {
        text.push_str(&format!(" ({})", rules.join(", ")));
    }
    text
}

/// `host` of `daemon status -o json`.
pub fn host_json(h: &HostStatus) -> Value {
    json!({
        "total_memory_bytes": h.total_memory_bytes,
        "available_memory_bytes": h.available_memory_bytes,
        "load_1m": h.load_1m,
        "load_5m": h.load_5m,
        "load_15m": h.load_15m,
        "cpus": h.cpus,
        "min_available_memory_bytes": h.min_available_memory_bytes,
        "max_load": h.max_load,
        "held": if h.held.is_empty() { Value::Null } else { Value::String(h.held.clone()) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{ConfigEntry, Usage, UsageRow};

    #[test]
    fn breakdown_table_has_a_row_per_key_and_a_total() {
        let r = UsageBreakdown {
            by: "model".into(),
            since: None,
            rows: vec![
                UsageRow {
                    key: String::new(),
                    usage: Some(Usage {
                        cost_usd: 0.5,
                        ..Default::default()
                    }),
                    name: String::new(),
                    reports: 1,
                },
                UsageRow {
                    key: "opus".into(),
                    usage: Some(Usage {
                        cost_usd: 1.25,
                        output_tokens: 7,
                        ..Default::default()
                    }),
                    name: String::new(),
                    reports: 2,
                },
            ],
            total: Some(Usage {
                cost_usd: 1.75,
                output_tokens: 7,
                ..Default::default()
            }),
        };
        let t = breakdown_table(&r);
        assert!(t.contains("MODEL"), "{t}");
        assert!(t.contains("(not named)") && t.contains("opus"), "{t}");
        assert!(t.contains("$1.75"), "{t}");
        let j = breakdown_json(&r);
        assert_eq!(j["rows"][1]["model"], "opus");
        assert_eq!(j["total"]["cost_usd"], 1.75);
    }

    #[test]
    fn stats_table_shows_rates_and_dashes_without_successes() {
        let s = AgentStats {
            agent: "claude".into(),
            runs: 4,
            successes: 3,
            success_rate: 0.75,
            duration_p50_ms: 1500,
            duration_p95_ms: 65_400,
            cost_per_success_usd: None,
            ..Default::default()
        };
        let t = stats_table(&[s]);
        assert!(t.contains("75%"), "{t}");
        assert!(t.contains("1s 500ms") || t.contains("1s500ms"), "{t}");
        assert!(t.contains("1m5s"), "{t}");
        assert!(stats_table(&[]).contains("no attempt"));
    }

    #[test]
    fn config_table_says_when_there_is_no_file() {
        let c = GetConfigResponse {
            config_path: "/etc/orch/orchd.toml".into(),
            config_file_exists: false,
            entries: vec![ConfigEntry {
                key: "retention".into(),
                value_json: "\"30d\"".into(),
                source: "default".into(),
            }],
            toml: String::new(),
        };
        let t = config_table(&c);
        assert!(
            t.contains("none (/etc/orch/orchd.toml does not exist"),
            "{t}"
        );
        assert!(t.contains("retention  30d"), "{t}");
        assert_eq!(config_json(&c)["entries"][0]["value"], "30d");
    }
}
