//! How agent output is read: the usage format of a profile (`UsageFormat`), the stdout
//! line reader that keeps only lines a format reads (`LineParser`), and what those lines
//! say (`AgentLine`) — `::orch-*::` protocol lines, Claude Code stream-json `result` and
//! `rate_limit_event` events, Codex `turn.completed` usage — with cumulative totals turned
//! into deltas.

use crate::model::Usage;

/// How an agent reports usage on stdout (the profile's `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageFormat {
    /// Only `::orch-*::` lines.
    #[default]
    OrchLines,
    /// Claude Code `--output-format stream-json` / `json`: the `result` event is authoritative.
    ClaudeStreamJson,
    /// Codex `exec --json`: `turn.completed` usage, cumulative per thread.
    CodexJson,
}

impl UsageFormat {
    pub fn from_name(name: &str) -> UsageFormat {
        match name {
            "claude-stream-json" => UsageFormat::ClaudeStreamJson,
            "codex-json" => UsageFormat::CodexJson,
            _ => UsageFormat::OrchLines,
        }
    }

    /// Starts of the stdout lines this format reads (others are only logged).
    fn prefixes(self) -> &'static [&'static [u8]] {
        match self {
            UsageFormat::OrchLines => &[PREFIX],
            UsageFormat::ClaudeStreamJson => &[
                PREFIX,
                br#"{"type":"result""#,
                br#"{"type":"rate_limit_event""#,
            ],
            UsageFormat::CodexJson => &[PREFIX, br#"{"type":"turn.completed""#],
        }
    }
}

/// Reads agent lines from stdout chunks: keeps only lines that start like something the
/// format reads (bounded), and turns cumulative usage totals into deltas.
pub struct LineParser {
    format: UsageFormat,
    line: Vec<u8>,
    skipping: bool,
    /// The last cumulative totals seen (Claude `result`, Codex `turn.completed`).
    seen: Usage,
}

impl LineParser {
    pub fn new(format: UsageFormat) -> LineParser {
        LineParser {
            format,
            line: Vec::new(),
            skipping: false,
            seen: Usage::default(),
        }
    }

    /// Feeds a chunk of stdout; returns what the complete lines in it said.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<AgentLine> {
        let mut out = Vec::new();
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            let complete = part.last() == Some(&b'\n');
            let body = if complete {
                &part[..part.len() - 1]
            } else {
                part
            };
            if !self.skipping {
                self.line.extend_from_slice(body);
                let wanted = self.format.prefixes().iter().any(|p| {
                    if self.line.len() <= p.len() {
                        p.starts_with(&self.line)
                    } else {
                        self.line.starts_with(p)
                    }
                });
                if !wanted {
                    self.skipping = true;
                    self.line.clear();
                } else if self.line.len() > MAX_PROTOCOL_LINE {
                    out.push(AgentLine::Malformed(format!(
                        "protocol line longer than {MAX_PROTOCOL_LINE} bytes ignored"
                    )));
                    self.skipping = true;
                    self.line.clear();
                }
            }
            if complete {
                self.finish_line(&mut out);
            }
        }
        out
    }

    /// The last line, when the stream ended without a newline.
    pub fn finish(&mut self) -> Vec<AgentLine> {
        let mut out = Vec::new();
        self.finish_line(&mut out);
        out
    }

    fn finish_line(&mut self, out: &mut Vec<AgentLine>) {
        if !self.skipping && !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line)
                .trim_end_matches('\r')
                .to_string();
            out.extend(self.parse(&text));
        }
        self.line.clear();
        self.skipping = false;
    }

    fn parse(&mut self, text: &str) -> Vec<AgentLine> {
        if let Some(json) = text.strip_prefix("::orch-usage::") {
            return parse_usage_line(json);
        }
        if text.starts_with("::orch-") {
            return parse_protocol_line(text).into_iter().collect();
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return Vec::new();
        };
        let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        match (self.format, v.get("type").and_then(|t| t.as_str())) {
            (UsageFormat::ClaudeStreamJson, Some("result")) => {
                // Authoritative for the session: replaces (never adds to) per-message usage.
                let u = v.get("usage").cloned().unwrap_or_default();
                let tokens = Usage {
                    input_tokens: num(&u, "input_tokens"),
                    cache_read_tokens: num(&u, "cache_read_input_tokens"),
                    cache_write_tokens: num(&u, "cache_creation_input_tokens"),
                    output_tokens: num(&u, "output_tokens"),
                    cost_usd: 0.0,
                };
                let cost = v
                    .get("total_cost_usd")
                    .and_then(|c| c.as_f64())
                    .unwrap_or(0.0);
                let model = v
                    .get("modelUsage")
                    .and_then(|m| m.as_object())
                    .and_then(|m| m.keys().next().cloned())
                    .unwrap_or_default();
                vec![self.delta(tokens, Some(cost), model)]
            }
            (UsageFormat::ClaudeStreamJson, Some("rate_limit_event")) => {
                let info = v.get("rate_limit_info").cloned().unwrap_or_default();
                let rejected = info.get("status").and_then(|s| s.as_str()) == Some("rejected");
                match (rejected, info.get("resetsAt").and_then(|r| r.as_i64())) {
                    (true, Some(secs)) => vec![AgentLine::RateLimited {
                        until_ms: secs * 1000,
                    }],
                    _ => Vec::new(),
                }
            }
            (UsageFormat::CodexJson, Some("turn.completed")) => {
                // `input_tokens` includes the cached ones.
                let u = v.get("usage").cloned().unwrap_or_default();
                let cached = num(&u, "cached_input_tokens");
                let tokens = Usage {
                    input_tokens: num(&u, "input_tokens").saturating_sub(cached),
                    cache_read_tokens: cached,
                    cache_write_tokens: 0,
                    output_tokens: num(&u, "output_tokens"),
                    cost_usd: 0.0,
                };
                vec![self.delta(tokens, None, String::new())]
            }
            _ => Vec::new(),
        }
    }

    /// A cumulative total as the delta since the last one.
    fn delta(&mut self, total: Usage, cost: Option<f64>, model: String) -> AgentLine {
        let s = &mut self.seen;
        let line = AgentLine::Usage {
            tokens: Usage {
                input_tokens: total.input_tokens.saturating_sub(s.input_tokens),
                cache_read_tokens: total.cache_read_tokens.saturating_sub(s.cache_read_tokens),
                cache_write_tokens: total
                    .cache_write_tokens
                    .saturating_sub(s.cache_write_tokens),
                output_tokens: total.output_tokens.saturating_sub(s.output_tokens),
                cost_usd: 0.0,
            },
            cost_usd: cost.map(|c| (c - s.cost_usd).max(0.0)),
            model,
        };
        s.input_tokens = s.input_tokens.max(total.input_tokens);
        s.cache_read_tokens = s.cache_read_tokens.max(total.cache_read_tokens);
        s.cache_write_tokens = s.cache_write_tokens.max(total.cache_write_tokens);
        s.output_tokens = s.output_tokens.max(total.output_tokens);
        if let Some(c) = cost {
            s.cost_usd = s.cost_usd.max(c);
        }
        line
    }
}

/// A line of the agent protocol read from stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentLine {
    Checkpoint(String),
    /// Usage to add to the attempt (already a delta for cumulative sources).
    Usage {
        /// Tokens by kind (`cost_usd` unused here).
        tokens: Usage,
        /// `None` when the agent reports tokens but no cost (priced by the daemon).
        cost_usd: Option<f64>,
        model: String,
    },
    /// The provider refused until this time (ms since the epoch).
    RateLimited {
        until_ms: i64,
    },
    Progress {
        percent: Option<f64>,
        message: String,
    },
    /// A `::orch-…::` line that could not be read; kept in the log, reported, never fatal.
    Malformed(String),
}

/// Largest checkpoint accepted, in bytes of JSON.
pub const MAX_CHECKPOINT_BYTES: usize = 1 << 20;
/// Longest protocol line kept for parsing; longer lines are logged but not parsed.
const MAX_PROTOCOL_LINE: usize = MAX_CHECKPOINT_BYTES + 64;
/// Every agent protocol line starts with this.
const PREFIX: &[u8] = b"::orch-";

/// Reads the JSON of a `::orch-usage::` line (every field optional).
fn parse_usage_line(json: &str) -> Vec<AgentLine> {
    #[derive(serde::Deserialize)]
    struct U {
        input_tokens: Option<u64>,
        cache_read_tokens: Option<u64>,
        cache_write_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cost_usd: Option<f64>,
        model: Option<String>,
        rate_limited_until: Option<String>,
    }
    let u: U = match serde_json::from_str(json) {
        Ok(u) => u,
        Err(e) => {
            return vec![AgentLine::Malformed(format!(
                "usage is not valid JSON: {e}"
            ))];
        }
    };
    let mut out = Vec::new();
    if u.cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
        return vec![AgentLine::Malformed(
            "usage cost_usd must be a non-negative number".into(),
        )];
    }
    let tokens = Usage {
        input_tokens: u.input_tokens.unwrap_or(0),
        cache_read_tokens: u.cache_read_tokens.unwrap_or(0),
        cache_write_tokens: u.cache_write_tokens.unwrap_or(0),
        output_tokens: u.output_tokens.unwrap_or(0),
        cost_usd: 0.0,
    };
    let any = [
        u.input_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.output_tokens,
    ]
    .iter()
    .any(Option::is_some);
    if any || u.cost_usd.is_some() {
        out.push(AgentLine::Usage {
            tokens,
            cost_usd: u.cost_usd,
            model: u.model.unwrap_or_default(),
        });
    }
    if let Some(t) = u.rate_limited_until {
        match chrono::DateTime::parse_from_rfc3339(&t) {
            Ok(t) => out.push(AgentLine::RateLimited {
                until_ms: t.timestamp_millis(),
            }),
            Err(e) => out.push(AgentLine::Malformed(format!(
                "rate_limited_until `{t}` is not RFC 3339: {e}"
            ))),
        }
    }
    out
}

/// Reads one `::orch-KIND::JSON` line. `None` for lines that are not (or not yet) handled.
pub fn parse_protocol_line(text: &str) -> Option<AgentLine> {
    if let Some(json) = text.strip_prefix("::orch-checkpoint::") {
        if json.len() > MAX_CHECKPOINT_BYTES {
            return Some(AgentLine::Malformed(format!(
                "checkpoint of {} bytes is larger than the limit of {MAX_CHECKPOINT_BYTES}",
                json.len()
            )));
        }
        return Some(match serde_json::from_str::<serde_json::Value>(json) {
            Ok(v) => AgentLine::Checkpoint(v.to_string()),
            Err(e) => AgentLine::Malformed(format!("checkpoint is not JSON: {e}")),
        });
    }
    if let Some(json) = text.strip_prefix("::orch-progress::") {
        #[derive(serde::Deserialize)]
        struct P {
            percent: Option<f64>,
            #[serde(default)]
            message: String,
        }
        return Some(match serde_json::from_str::<P>(json) {
            Ok(p) if p.percent.is_none_or(|x| x.is_finite()) => AgentLine::Progress {
                percent: p.percent.map(|x| x.clamp(0.0, 100.0)),
                message: p.message.chars().take(1000).collect(),
            },
            Ok(_) => AgentLine::Malformed("progress percent is not a number".into()),
            Err(e) => AgentLine::Malformed(format!("progress is not valid JSON: {e}")),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usage lines added up: tokens by kind, and the cost reported.
    fn total_of(lines: &[AgentLine]) -> Usage {
        let mut total = Usage::default();
        for l in lines {
            if let AgentLine::Usage {
                tokens, cost_usd, ..
            } = l
            {
                total.add(&Usage {
                    cost_usd: cost_usd.unwrap_or(0.0),
                    ..*tokens
                });
            }
        }
        total
    }

    /// Fresh input plus both cache kinds, output, cost.
    fn usage_of(lines: &[AgentLine]) -> (u64, u64, f64) {
        let t = total_of(lines);
        (
            t.input_tokens + t.cache_read_tokens + t.cache_write_tokens,
            t.output_tokens,
            t.cost_usd,
        )
    }

    /// A transcript in the shape Claude Code 2.1 prints with `-p --output-format stream-json
    /// --verbose` (anthropics/claude-code#38673): per-message usage on `assistant` events,
    /// a `rate_limit_event`, and the final `result` whose cost and usage are authoritative.
    const CLAUDE: &str = concat!(
        r#"{"type":"system","subtype":"init","cwd":"/w","session_id":"s","tools":["Bash"],"model":"claude-opus-4-6","claude_code_version":"2.1.83"}"#,
        "\n",
        r#"{"type":"assistant","message":{"model":"claude-opus-4-6","id":"m1","type":"message","role":"assistant","content":[{"type":"text","text":"Hello."}],"usage":{"input_tokens":3,"cache_creation_input_tokens":2783,"cache_read_input_tokens":14707,"output_tokens":2}}}"#,
        "\n",
        r#"{"type":"assistant","message":{"model":"claude-opus-4-6","id":"m2","type":"message","role":"assistant","content":[{"type":"text","text":"More."}],"usage":{"input_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":17490,"output_tokens":40}}}"#,
        "\n",
        r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","resetsAt":1774447200,"rateLimitType":"five_hour","overageStatus":"rejected","isUsingOverage":false}}"#,
        "\n",
        r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":4086,"num_turns":2,"result":"Hello. More.","total_cost_usd":0.0242,"usage":{"input_tokens":8,"cache_creation_input_tokens":2783,"cache_read_input_tokens":32197,"output_tokens":42},"modelUsage":{"claude-opus-4-6":{"inputTokens":8}}}"#,
        "\n",
    );

    #[test]
    fn claude_result_is_authoritative_not_added_to_messages() {
        let mut p = LineParser::new(UsageFormat::ClaudeStreamJson);
        // Fed in awkward chunks: lines split across reads.
        let mut lines = Vec::new();
        for chunk in CLAUDE.as_bytes().chunks(37) {
            lines.extend(p.feed(chunk));
        }
        lines.extend(p.finish());
        let t = total_of(&lines);
        assert_eq!(
            (t.input_tokens, t.cache_write_tokens, t.cache_read_tokens),
            (8, 2783, 32197),
            "token kinds are kept apart"
        );
        assert_eq!(t.output_tokens, 42);
        assert_eq!(
            t.tokens(),
            8 + 2783 + 42,
            "max_tokens does not count cache reads"
        );
        assert!((t.cost_usd - 0.0242).abs() < 1e-9);
        // An `allowed` rate-limit event is informational.
        assert!(
            !lines
                .iter()
                .any(|l| matches!(l, AgentLine::RateLimited { .. }))
        );
        let rejected = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1778565600,"rateLimitType":"five_hour"}}"#;
        let l = p.feed(format!("{rejected}\n").as_bytes());
        assert_eq!(
            l,
            vec![AgentLine::RateLimited {
                until_ms: 1_778_565_600_000
            }]
        );
    }

    #[test]
    fn codex_cumulative_turns_become_deltas() {
        let mut p = LineParser::new(UsageFormat::CodexJson);
        let t = concat!(
            r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}"#,
            "\n",
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"hi"}}"#,
            "\n",
            r#"{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}"#,
            "\n",
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"turn.completed","usage":{"input_tokens":50000,"cached_input_tokens":49000,"output_tokens":300}}"#,
            "\n",
        );
        let lines = p.feed(t.as_bytes());
        assert_eq!(lines.len(), 2);
        assert_eq!(usage_of(&lines), (50000, 300, 0.0));
        let t = total_of(&lines);
        assert_eq!(
            (t.input_tokens, t.cache_read_tokens),
            (1000, 49000),
            "cached input apart"
        );
        assert!(matches!(
            &lines[1],
            AgentLine::Usage {
                tokens: Usage {
                    input_tokens: 685,
                    cache_read_tokens: 24552,
                    output_tokens: 178,
                    ..
                },
                cost_usd: None,
                ..
            }
        ));
    }

    #[test]
    fn orch_usage_lines_add_and_report_rate_limits() {
        let mut p = LineParser::new(UsageFormat::OrchLines);
        let cached = p.feed(b"::orch-usage::{\"cache_read_tokens\":7,\"cache_write_tokens\":3}\n");
        let t = total_of(&cached);
        assert_eq!((t.cache_read_tokens, t.cache_write_tokens), (7, 3));
        let lines = p.feed(b"noise\n::orch-usage::{\"input_tokens\":10,\"cost_usd\":0.5}\n::orch-usage::{\"output_tokens\":5,\"rate_limited_until\":\"2030-01-01T00:00:00Z\"}\n::orch-usage::{oops\n");
        assert_eq!(usage_of(&lines), (10, 5, 0.5));
        assert!(lines.contains(&AgentLine::RateLimited {
            until_ms: 1_893_456_000_000
        }));
        assert!(matches!(lines.last(), Some(AgentLine::Malformed(_))));
        // A JSON line of another format is not read by orch-lines.
        assert!(
            p.feed(br#"{"type":"result","total_cost_usd":9}"#)
                .is_empty()
        );
    }

    #[test]
    fn protocol_lines() {
        assert_eq!(
            parse_protocol_line(r#"::orch-checkpoint::{"done": 3}"#),
            Some(AgentLine::Checkpoint(r#"{"done":3}"#.into()))
        );
        assert!(matches!(
            parse_protocol_line("::orch-checkpoint::{oops"),
            Some(AgentLine::Malformed(_))
        ));
        assert_eq!(
            parse_protocol_line(r#"::orch-progress::{"percent":150,"message":"m"}"#),
            Some(AgentLine::Progress {
                percent: Some(100.0),
                message: "m".into()
            })
        );
        assert_eq!(parse_protocol_line("hello"), None);
        let big = format!(
            "::orch-checkpoint::\"{}\"",
            "x".repeat(MAX_CHECKPOINT_BYTES)
        );
        assert!(
            matches!(parse_protocol_line(&big), Some(AgentLine::Malformed(m)) if m.contains("limit"))
        );
    }
}
