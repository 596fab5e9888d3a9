//! How agent output is read: the usage format of a profile (`UsageFormat`), the stdout
//! line reader that keeps only lines a format reads (`LineParser`), and what those lines
//! say (`AgentLine`) — `::orch-*::` protocol lines, Claude Code stream-json `result` and
//! `rate_limit_event` events, Codex `turn.completed` usage — with cumulative totals turned
//! into deltas.

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
    seen_input: u64,
    seen_output: u64,
    seen_cost: f64,
}

impl LineParser {
    pub fn new(format: UsageFormat) -> LineParser {
        LineParser {
            format,
            line: Vec::new(),
            skipping: false,
            seen_input: 0,
            seen_output: 0,
            seen_cost: 0.0,
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
                let input = num(&u, "input_tokens")
                    .saturating_add(num(&u, "cache_creation_input_tokens"))
                    .saturating_add(num(&u, "cache_read_input_tokens"));
                let output = num(&u, "output_tokens");
                let cost = v
                    .get("total_cost_usd")
                    .and_then(|c| c.as_f64())
                    .unwrap_or(0.0);
                let model = v
                    .get("modelUsage")
                    .and_then(|m| m.as_object())
                    .and_then(|m| m.keys().next().cloned())
                    .unwrap_or_default();
                vec![self.delta(input, output, Some(cost), model)]
            }
            (UsageFormat::ClaudeStreamJson, Some("rate_limit_event")) => {
                let info = v.get("rate_limit_info").cloned().unwrap_or_default();
                let rejected = info.get("status").and_then(|s| s.as_str()) == Some("rejected");
                let reset = info.get("resetsAt").and_then(|r| r.as_i64());
                match (rejected, reset.and_then(|secs| secs.checked_mul(1000))) {
                    (true, Some(until_ms)) => vec![AgentLine::RateLimited { until_ms }],
                    _ => Vec::new(),
                }
            }
            (UsageFormat::CodexJson, Some("turn.completed")) => {
                let u = v.get("usage").cloned().unwrap_or_default();
                vec![self.delta(
                    num(&u, "input_tokens"),
                    num(&u, "output_tokens"),
                    None,
                    String::new(),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// A cumulative total as the delta since the last one.
    fn delta(&mut self, input: u64, output: u64, cost: Option<f64>, model: String) -> AgentLine {
        let line = AgentLine::Usage {
            input_tokens: input.saturating_sub(self.seen_input),
            output_tokens: output.saturating_sub(self.seen_output),
            cost_usd: cost.map(|c| (c - self.seen_cost).max(0.0)),
            model,
        };
        self.seen_input = self.seen_input.max(input);
        self.seen_output = self.seen_output.max(output);
        if let Some(c) = cost {
            self.seen_cost = self.seen_cost.max(c);
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
        input_tokens: u64,
        output_tokens: u64,
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
    if u.input_tokens.is_some() || u.output_tokens.is_some() || u.cost_usd.is_some() {
        out.push(AgentLine::Usage {
            input_tokens: u.input_tokens.unwrap_or(0),
            output_tokens: u.output_tokens.unwrap_or(0),
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

    fn usage_of(lines: &[AgentLine]) -> (u64, u64, f64) {
        lines.iter().fold((0, 0, 0.0), |acc, l| match l {
            AgentLine::Usage {
                input_tokens,
                output_tokens,
                cost_usd,
                ..
            } => (
                acc.0 + input_tokens,
                acc.1 + output_tokens,
                acc.2 + cost_usd.unwrap_or(0.0),
            ),
            _ => acc,
        })
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
        let (i, o, c) = usage_of(&lines);
        assert_eq!((i, o), (8 + 2783 + 32197, 42));
        assert!((c - 0.0242).abs() < 1e-9);
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

    /// Found with the agent_output fuzz target (fuzz/corpus/agent_output/claude-overflow):
    /// token counts that add up past `u64::MAX` and a `resetsAt` whose milliseconds do not
    /// fit an `i64` overflowed (a panic in debug builds, a wrapped number in release).
    #[test]
    fn claude_numbers_out_of_range_do_not_overflow() {
        let mut p = LineParser::new(UsageFormat::ClaudeStreamJson);
        let l = p.feed(
            concat!(
                r#"{"type":"result","usage":{"input_tokens":18446744073709551615,"#,
                r#""cache_read_input_tokens":1,"output_tokens":2}}"#,
                "\n",
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","#,
                r#""resetsAt":9223372036854776}}"#,
                "\n",
            )
            .as_bytes(),
        );
        assert_eq!(
            l,
            vec![AgentLine::Usage {
                input_tokens: u64::MAX,
                output_tokens: 2,
                cost_usd: Some(0.0),
                model: String::new(),
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
        assert!(matches!(
            lines[1],
            AgentLine::Usage {
                input_tokens: 25237,
                output_tokens: 178,
                cost_usd: None,
                ..
            }
        ));
    }

    #[test]
    fn orch_usage_lines_add_and_report_rate_limits() {
        let mut p = LineParser::new(UsageFormat::OrchLines);
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
