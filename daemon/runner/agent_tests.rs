//! Unit tests of `agent.rs`.
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
    r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":4086,"num_turns":2,"result":"Hello. More.","total_cost_usd":0.0242,"usage":{"input_tokens":8,"cache_creation_input_tokens":2783,"cache_read_input_tokens":32197,"output_tokens":42},"modelUsage":{"claude-opus-4-6":{"inputTokens":8,"outputTokens":42,"cacheReadInputTokens":32197,"cacheCreationInputTokens":2783,"costUSD":0.0242}}}"#,
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
            until_ms: Some(1_778_565_600_000)
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
    let lines: Vec<AgentLine> = p
        .feed(t.as_bytes())
        .into_iter()
        .filter(|l| matches!(l, AgentLine::Usage { .. }))
        .collect();
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
        until_ms: Some(1_893_456_000_000)
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

/// A real transcript from `tests/fixtures/agents/` (see its README), fed in chunks.
fn replay(format: UsageFormat, name: &str) -> Vec<AgentLine> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agents")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut p = LineParser::new(format);
    let mut out = Vec::new();
    for chunk in bytes.chunks(61) {
        out.extend(p.feed(chunk));
    }
    out.extend(p.finish());
    out
}

/// The first value of `key` anywhere in a fixture (as text).
fn fixture_field(name: &str, key: &str) -> String {
    fn find(v: &serde_json::Value, key: &str) -> Option<String> {
        match v {
            serde_json::Value::Object(m) => m
                .get(key)
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .or_else(|| m.values().find_map(|x| find(x, key))),
            serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, key)),
            _ => None,
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agents")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("fixture");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| find(&v, key))
        .unwrap_or_else(|| panic!("no {key} in {name}"))
}

fn failures(lines: &[AgentLine]) -> Vec<(FailureClass, String)> {
    lines
        .iter()
        .filter_map(|l| match l {
            AgentLine::Failed { class, message } => Some((*class, message.clone())),
            _ => None,
        })
        .collect()
}

fn sessions(lines: &[AgentLine]) -> Vec<String> {
    let mut s: Vec<String> = lines
        .iter()
        .filter_map(|l| match l {
            AgentLine::Session(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    s.dedup();
    s
}

#[test]
fn claude_results_are_read_whatever_their_key_order() {
    // Claude Code 2.1.332 starts its result with `{"duration_api_ms":…`.
    let lines = replay(UsageFormat::ClaudeStreamJson, "claude-plain.jsonl");
    let t = total_of(&lines);
    assert_eq!(
        (
            t.input_tokens,
            t.cache_write_tokens,
            t.cache_read_tokens,
            t.output_tokens
        ),
        (12, 2000, 10000, 6)
    );
    assert!((t.cost_usd - 0.010626).abs() < 1e-9, "{}", t.cost_usd);
    assert!(failures(&lines).is_empty());
    assert_eq!(
        sessions(&lines),
        [fixture_field("claude-plain.jsonl", "session_id")]
    );
}

#[test]
fn a_tool_round_trip_counts_each_call_once_and_ends_at_the_result() {
    let lines = replay(UsageFormat::ClaudeStreamJson, "claude-tool.jsonl");
    let t = total_of(&lines);
    // What the CLI itself reported in `modelUsage`.
    assert_eq!(
        (
            t.input_tokens,
            t.cache_write_tokens,
            t.cache_read_tokens,
            t.output_tokens
        ),
        (250, 350, 1100, 50)
    );
    assert!((t.cost_usd - 0.0031425).abs() < 1e-9, "{}", t.cost_usd);
    // The estimate came first, as the calls happened.
    assert!(
        matches!(lines.iter().find(|l| matches!(l, AgentLine::Usage { .. })),
        Some(AgentLine::Usage { tokens, .. }) if tokens.input_tokens == 100)
    );
}

#[test]
fn a_resumed_claude_session_counts_only_this_run() {
    // `modelUsage` there is the whole session's; this run is 40 in / 12 out.
    let lines = replay(UsageFormat::ClaudeStreamJson, "claude-resume.jsonl");
    let t = total_of(&lines);
    assert_eq!(
        (t.input_tokens, t.cache_read_tokens, t.output_tokens),
        (40, 2000, 12)
    );
    assert!((t.cost_usd - 0.0009).abs() < 1e-9, "{}", t.cost_usd);
}

#[test]
fn claude_error_results_are_failures_told_apart() {
    for (file, class, says) in [
        (
            "claude-max-turns.jsonl",
            FailureClass::MaxTurns,
            "Reached maximum number of turns (1)",
        ),
        (
            "claude-rate-limit-429.jsonl",
            FailureClass::RateLimited,
            "HTTP 429",
        ),
        (
            "claude-overloaded-529.jsonl",
            FailureClass::Overloaded,
            "HTTP 529",
        ),
        (
            "claude-usage-limit.jsonl",
            FailureClass::RateLimited,
            "usage_limit_reached",
        ),
    ] {
        let lines = replay(UsageFormat::ClaudeStreamJson, file);
        let f = failures(&lines);
        assert_eq!(f.len(), 1, "{file}: {lines:?}");
        assert_eq!(f[0].0, class, "{file}");
        assert!(f[0].1.contains(says), "{file}: {}", f[0].1);
    }
    // The usage limit's reset comes from its rate_limit_event; a plain 429 has none.
    let limited = replay(UsageFormat::ClaudeStreamJson, "claude-usage-limit.jsonl");
    let resets_at: i64 = fixture_field("claude-usage-limit.jsonl", "resetsAt")
        .parse()
        .expect("resetsAt is a number");
    assert!(limited.contains(&AgentLine::RateLimited {
        until_ms: Some(resets_at * 1000)
    }));
    let plain = replay(UsageFormat::ClaudeStreamJson, "claude-rate-limit-429.jsonl");
    assert!(plain.contains(&AgentLine::RateLimited { until_ms: None }));
    // A retry the CLI made by itself is no failure.
    let retried = replay(
        UsageFormat::ClaudeStreamJson,
        "claude-retry-then-success.jsonl",
    );
    assert!(failures(&retried).is_empty());
}

#[test]
fn codex_usage_keeps_cached_input_apart_and_names_the_thread() {
    let lines = replay(UsageFormat::CodexJson, "codex-tool.jsonl");
    let t = total_of(&lines);
    assert_eq!(
        (t.input_tokens, t.cache_read_tokens, t.output_tokens),
        (600, 1600, 50)
    );
    assert_eq!(
        sessions(&lines),
        [fixture_field("codex-tool.jsonl", "thread_id")]
    );
}

#[test]
fn codex_failed_turns_are_told_apart() {
    let limited = replay(UsageFormat::CodexJson, "codex-rate-limit-429.jsonl");
    assert_eq!(failures(&limited)[0].0, FailureClass::RateLimited);
    assert!(limited.contains(&AgentLine::RateLimited { until_ms: None }));
    let usage = replay(UsageFormat::CodexJson, "codex-usage-limit.jsonl");
    assert_eq!(failures(&usage)[0].0, FailureClass::RateLimited);
    assert!(
        usage
            .iter()
            .any(|l| matches!(l, AgentLine::RateLimited { until_ms: Some(_) })),
        "the reset time is read: {usage:?}"
    );
}

#[test]
fn try_again_at_is_the_next_such_time() {
    let now = Local
        .with_ymd_and_hms(2026, 12, 1, 6, 0, 0)
        .single()
        .expect("a local time");
    let at = |m: &str| try_again_at(m, now).map(|ms| Local.timestamp_millis_opt(ms).single());
    let seven = Local.with_ymd_and_hms(2026, 12, 1, 7, 7, 0).single();
    assert_eq!(at("... or try again at 7:07 AM."), Some(seven));
    let tomorrow = Local.with_ymd_and_hms(2026, 12, 2, 5, 30, 0).single();
    assert_eq!(at("try again at 5:30 AM"), Some(tomorrow));
    let evening = Local.with_ymd_and_hms(2026, 12, 1, 19, 15, 0).single();
    assert_eq!(at("try again at 19:15."), Some(evening));
    // The current minute: the reset is within it, so at the next one.
    let soon = Local.with_ymd_and_hms(2026, 12, 1, 6, 1, 0).single();
    assert_eq!(at("try again at 6:00 AM."), Some(soon));
    assert_eq!(at("try again later"), None);
}

#[test]
fn aider_cost_lines_are_read() {
    let lines = replay(UsageFormat::Aider, "aider-plain.txt");
    let t = total_of(&lines);
    assert_eq!((t.input_tokens, t.output_tokens), (1200, 6));
    assert!((t.cost_usd - 0.0037).abs() < 1e-9);
    assert_eq!(
        parse_aider("Tokens: 12k sent, 1.5k received. Cost: $0.05 message, $0.20 session."),
        Some(AgentLine::Usage {
            tokens: Usage {
                input_tokens: 12_000,
                output_tokens: 1_500,
                ..Usage::default()
            },
            cost_usd: Some(0.05),
            model: String::new(),
        })
    );
    assert_eq!(
        parse_aider("Tokens: lots"),
        Some(AgentLine::Usage {
            tokens: Usage::default(),
            cost_usd: None,
            model: String::new(),
        })
    );
}

#[test]
fn aider_giving_up_on_a_429_is_a_rate_limited_failure_though_it_exits_0() {
    let lines = replay(UsageFormat::Aider, "aider-rate-limit-429.txt");
    let failed: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            AgentLine::Failed { class, message } => Some((*class, message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(failed[0].0, FailureClass::RateLimited);
    assert!(
        failed[0]
            .1
            .starts_with("aider gave up: The API provider has rate limited you"),
        "{}",
        failed[0].1
    );
    assert!(
        lines
            .iter()
            .any(|l| matches!(l, AgentLine::RateLimited { until_ms: None })),
        "{lines:?}"
    );
    // The plain run ends on its reply: no failure.
    let plain = replay(UsageFormat::Aider, "aider-plain.txt");
    assert!(
        !plain.iter().any(|l| matches!(l, AgentLine::Failed { .. })),
        "{plain:?}"
    );
}

#[test]
fn aider_errors_it_retried_past_are_no_failure() {
    let mut p = LineParser::new(UsageFormat::Aider);
    let mut out = p.feed(
        b"The API provider has rate limited you. Try again later or check your quotas.\n\
          Retrying in 0.2 seconds...\n\
          Tokens: 1.2k sent, 6 received. Cost: $0.0037 message, $0.0037 session.\n",
    );
    out.extend(p.finish());
    assert!(
        !out.iter().any(|l| matches!(l, AgentLine::Failed { .. })),
        "{out:?}"
    );
    // Refused credentials and a provider that is down end in their own classes.
    for (text, class) in [
        (
            "The API provider is not able to authenticate you. Check your API key.\n",
            FailureClass::Auth,
        ),
        (
            "The API provider's servers are down or overloaded.\n",
            FailureClass::Overloaded,
        ),
    ] {
        let mut p = LineParser::new(UsageFormat::Aider);
        let mut out = p.feed(text.as_bytes());
        out.extend(p.finish());
        assert!(
            out.iter()
                .any(|l| matches!(l, AgentLine::Failed { class: c, .. } if *c == class)),
            "{text}: {out:?}"
        );
    }
}

/// An in-memory [`ThreadTotals`], as the store keeps them.
#[derive(Default)]
struct Totals(std::sync::Mutex<BTreeMap<String, Usage>>);

impl super::ThreadTotals for Totals {
    fn get(&self, thread: &str) -> Option<Usage> {
        self.0.lock().ok()?.get(thread).copied()
    }
    fn put(&self, thread: &str, total: &Usage) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(thread.to_string(), *total);
        }
    }
}

#[test]
fn a_codex_thread_resumed_by_another_attempt_counts_from_its_last_total() {
    let totals = super::Threads(std::sync::Arc::new(Totals::default()));
    let run = |turns: &[(u64, u64, u64)]| -> Usage {
        let mut p = LineParser::new(UsageFormat::CodexJson).with_threads(Some(totals.clone()));
        let mut text = String::from("{\"type\":\"thread.started\",\"thread_id\":\"th-1\"}\n");
        for (input, cached, output) in turns {
            text.push_str(&format!(
                "{{\"type\":\"turn.completed\",\"usage\":{{\"input_tokens\":{input},\"cached_input_tokens\":{cached},\"output_tokens\":{output}}}}}\n"
            ));
        }
        let mut out = p.feed(text.as_bytes());
        out.extend(p.finish());
        total_of(&out)
    };
    let first = run(&[(1000, 600, 20), (2200, 1600, 50)]);
    assert_eq!(
        (
            first.input_tokens,
            first.cache_read_tokens,
            first.output_tokens
        ),
        (600, 1600, 50)
    );
    // Another objective resumes the thread: its totals include the first run's.
    let second = run(&[(3700, 2800, 65)]);
    assert_eq!(
        (
            second.input_tokens,
            second.cache_read_tokens,
            second.output_tokens
        ),
        (300, 1200, 15)
    );
    // A new thread starts from zero.
    let mut p = LineParser::new(UsageFormat::CodexJson).with_threads(Some(totals.clone()));
    let out = p.feed(
        b"{\"type\":\"thread.started\",\"thread_id\":\"th-2\"}\n\
          {\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":100,\"cached_input_tokens\":0,\"output_tokens\":5}}\n",
    );
    assert_eq!(total_of(&out).input_tokens, 100);
}

#[test]
fn the_running_estimate_is_priced_and_the_result_only_adds_the_rest() {
    let price = crate::config::Price {
        input_per_mtok: 3.0,
        output_per_mtok: 15.0,
        cached_input_per_mtok: Some(0.3),
        cache_write_per_mtok: Some(3.75),
    };
    let prices = Prices {
        table: std::sync::Arc::new([("claude-sonnet-4-5".to_string(), price)].into()),
        model: String::new(),
    };
    let mut p = LineParser::new(UsageFormat::ClaudeStreamJson).with_prices(prices);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agents/claude-tool.jsonl");
    let text = std::fs::read_to_string(&path).expect("fixture");
    let mut estimate = 0.0;
    let mut lines = Vec::new();
    for line in text.lines() {
        let got = p.feed(format!("{line}\n").as_bytes());
        if !line.contains("\"type\":\"result\"") {
            estimate += total_of(&got).cost_usd;
        }
        lines.extend(got);
    }
    // Two calls: 100 in, 300 written, 400 read; then 150 in, 50 written, 700 read.
    let want = (250.0 * 3.0 + 350.0 * 3.75 + 1100.0 * 0.3) / 1e6;
    assert!((estimate - want).abs() < 1e-12, "{estimate} vs {want}");
    assert!((total_of(&lines).cost_usd - 0.0031425).abs() < 1e-9);
}

#[test]
fn a_resumed_codex_thread_counts_only_what_this_attempt_added() {
    // The thread's totals after `codex-tool`: what the resumed run starts from.
    let before = total_of(&replay(UsageFormat::CodexJson, "codex-tool.jsonl"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agents/codex-resume.jsonl");
    let bytes = std::fs::read(&path).expect("fixture");
    let mut p = LineParser::new(UsageFormat::CodexJson).with_session_usage(Some(before));
    let t = total_of(&p.feed(&bytes));
    assert_eq!(
        (t.input_tokens + t.cache_read_tokens, t.output_tokens),
        (1500, 15),
        "3700 in / 65 out for the thread, 2200 / 50 of it before"
    );
    // Without the earlier usage the whole thread would be counted again.
    let mut fresh = LineParser::new(UsageFormat::CodexJson);
    let all = total_of(&fresh.feed(&bytes));
    assert_eq!(all.input_tokens + all.cache_read_tokens, 3700);
}

#[test]
fn estimates_under_a_dated_model_name_are_completed_by_the_result() {
    let mut p = LineParser::new(UsageFormat::ClaudeStreamJson);
    let lines = p.feed(concat!(
        r#"{"type":"assistant","message":{"model":"claude-sonnet-4-5-20250929","id":"m1","usage":{"input_tokens":12,"cache_creation_input_tokens":2000,"cache_read_input_tokens":10000,"output_tokens":1}}}"#,
        "\n",
        r#"{"is_error":false,"type":"result","total_cost_usd":0.01,"modelUsage":{"claude-sonnet-4-5":{"inputTokens":12,"outputTokens":6,"cacheReadInputTokens":10000,"cacheCreationInputTokens":2000,"costUSD":0.01}}}"#,
        "\n",
    ).as_bytes());
    let t = total_of(&lines);
    assert_eq!(
        (
            t.input_tokens,
            t.cache_read_tokens,
            t.cache_write_tokens,
            t.output_tokens
        ),
        (12, 10000, 2000, 6),
        "counted once: {lines:?}"
    );
    assert!((t.cost_usd - 0.01).abs() < 1e-12);
}

#[test]
fn journal_mode_appends_the_lines_the_format_reads_whole_and_parses_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal");
    let file = std::fs::File::create(&path).expect("create");
    let mut p = LineParser::new(UsageFormat::OrchLines).with_journal(Some(file));
    let mut out = p.feed(b"hello\n::orch-usage:: {\"input_");
    out.extend(p.feed(b"tokens\":4}\nplain text\n::orch-progress:: {\"percent\":9}"));
    out.extend(p.finish());
    assert!(out.is_empty(), "nothing parsed in journal mode: {out:?}");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        text,
        "::orch-usage:: {\"input_tokens\":4}\n::orch-progress:: {\"percent\":9}\n"
    );
    // What orchd reads back says what the agent said.
    let lines = LineParser::new(UsageFormat::OrchLines).feed(text.as_bytes());
    assert_eq!(total_of(&lines).input_tokens, 4);
    assert_eq!(lines.len(), 2, "{lines:?}");
}

#[test]
fn planner_and_verifier_lines() {
    assert_eq!(
        parse_protocol_line(r#"::orch-plan:: {"steps":[]} "#),
        Some(AgentLine::Plan(r#"{"steps":[]}"#.into()))
    );
    // Not JSON: still the plan, refused by the engine with the parse error named.
    assert_eq!(
        parse_protocol_line("::orch-plan::oops"),
        Some(AgentLine::Plan("oops".into()))
    );
    assert_eq!(
        parse_protocol_line(r#"::orch-verdict::{"pass":false,"findings":"no tests"}"#),
        Some(AgentLine::Verdict(crate::model::Verdict {
            pass: false,
            findings: "no tests".into()
        }))
    );
    for bad in [
        "::orch-verdict::{\"findings\":\"x\"}",
        "::orch-verdict::{\"pass\":\"yes\"}",
        "::orch-verdict::true",
    ] {
        assert!(
            matches!(parse_protocol_line(bad), Some(AgentLine::Malformed(m)) if m.contains("verdict")),
            "{bad}"
        );
    }
    // Through the line parser, as an attempt's stdout is read.
    let mut p = LineParser::new(UsageFormat::OrchLines);
    let lines = p.feed(b"::orch-verdict::{\"pass\":true}\n");
    assert_eq!(
        lines,
        vec![AgentLine::Verdict(crate::model::Verdict {
            pass: true,
            findings: String::new()
        })]
    );
}
