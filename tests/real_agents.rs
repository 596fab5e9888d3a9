//! The real agent CLIs (Claude Code, Codex, aider) run under the real `orchd`, offline, against
//! a scripted mock provider on 127.0.0.1 (`support::MockProvider`), and orch's recorded usage
//! compared with what each CLI itself reported, kind by kind: fresh input, cache reads, cache
//! writes, output, and the cost.
//!
//! The CLIs are installed by `.ci/run` under `$ORCH_AGENTS_DIR` (default `/opt/orch-agents`);
//! without them these tests are skipped, or fail under `ORCH_TEST_AGENTS=1`. Each test has its
//! own provider (port 0), daemon, work dir and CLI home (and, where it matters, time zone), so
//! they run in parallel.
//!
//! What orch reads is asserted, every figure against what the CLI itself reported (the
//! gaps these tests once reported are closed and asserted now). The transcripts these tests produce are kept in
//! `tests/fixtures/agents/` (`capture_agent_fixtures` rewrites them) and replayed through orchd
//! by `fixtures_replayed_through_orchd`, which needs no CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{
    Api, MockProvider, Reply, TestDaemon, Usage, agent_cli, announce, attempts, describe, of_kind,
    poll_until, require_agents, rfc3339,
};

// ------------------------------------------------------------------ helpers

/// The model each CLI is pinned to (one it knows, so it does not look up metadata).
const CLAUDE_MODEL: &str = "claude-sonnet-4-5";
const CODEX_MODEL: &str = "gpt-5.5";
const AIDER_MODEL: &str = "anthropic/claude-sonnet-4-5";

/// Claude Sonnet 4.5's list prices, as `[prices]` (what Claude Code's `costUSD` uses).
fn claude_prices() -> String {
    format!(
        "[prices.{}]\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\ncached_input_per_mtok = 0.3\ncache_write_per_mtok = 3.75\n",
        q(CLAUDE_MODEL)
    )
}

/// A directory outside /tmp for CLI state (Codex refuses to put its helper binaries under
/// /tmp): `target/tmp/agents-XXXX`, removed on drop.
fn home_dir() -> TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(base).expect("create the target tmp dir");
    tempfile::Builder::new()
        .prefix("agents-")
        .tempdir_in(base)
        .expect("create a CLI home dir")
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML inline table of environment variables.
fn env_table(env: &[(&str, String)]) -> String {
    let items: Vec<String> = env.iter().map(|(k, v)| format!("{k} = {}", q(v))).collect();
    format!("{{ {} }}", items.join(", "))
}

/// A TOML array of strings.
fn argv(args: &[String]) -> String {
    let items: Vec<String> = args.iter().map(|a| q(a)).collect();
    format!("[{}]", items.join(", "))
}

/// How Claude Code runs offline against the mock: base URL, a dummy API key, no telemetry,
/// no auto-update, no nonessential traffic, no retries, a private `HOME`.
fn claude_env(mock: &MockProvider, home: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", home.display().to_string()),
        ("ANTHROPIC_BASE_URL", mock.base_url()),
        ("ANTHROPIC_API_KEY", "sk-ant-mock".into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
        // Its scratch files (else /tmp/claude-UID/<cwd>/, never removed).
        ("CLAUDE_CODE_TMPDIR", home.join("tmp").display().to_string()),
    ]
}

/// [`claude_env`] with a subscription's OAuth token instead of the API key: only then does
/// Claude Code read the `anthropic-ratelimit-unified-*` headers and print a
/// `rate_limit_event`.
fn claude_oauth_env(mock: &MockProvider, home: &Path) -> Vec<(&'static str, String)> {
    let mut env = claude_env(mock, home);
    env.retain(|(k, _)| *k != "ANTHROPIC_API_KEY");
    env.push(("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-mock".into()));
    env
}

/// `claude -p {prompt} --model M --output-format stream-json --verbose --allowedTools Bash`
/// plus `extra`.
fn claude_argv(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        agent_cli("claude").display().to_string(),
        "-p".into(),
        "{prompt}".into(),
        "--model".into(),
        CLAUDE_MODEL.into(),
        "--output-format".into(),
        "stream-json".into(),
        "--verbose".into(),
        "--allowedTools".into(),
        "Bash".into(),
    ]
    .into();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Writes `CODEX_HOME/config.toml` for the mock: a `responses` provider at the mock, no
/// retries, no update check, analytics and OpenTelemetry off, and the `plugins` feature off
/// (with it on, Codex looks up github.com, api.github.com and chatgpt.com).
fn codex_home(mock: &MockProvider, home: &Path) -> PathBuf {
    let dir = home.join("codex-home");
    fs::create_dir_all(&dir).expect("create CODEX_HOME");
    fs::write(
        dir.join("config.toml"),
        format!(
            r#"model = {model}
model_provider = "mock"
check_for_update_on_startup = false

[model_providers.mock]
name = "mock"
base_url = {url}
wire_api = "responses"
env_key = "MOCK_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[otel]
exporter = "none"

[features]
plugins = false
"#,
            model = q(CODEX_MODEL),
            url = q(&mock.openai_base_url()),
        ),
    )
    .expect("write the Codex config");
    dir
}

fn codex_env(codex_home: &Path, home: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", home.display().to_string()),
        ("CODEX_HOME", codex_home.display().to_string()),
        ("MOCK_API_KEY", "sk-mock".into()),
    ]
}

/// `codex exec --json --skip-git-repo-check --sandbox workspace-write --model M` plus `tail`.
fn codex_argv(tail: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        agent_cli("codex").display().to_string(),
        "exec".into(),
        "--json".into(),
        "--skip-git-repo-check".into(),
        "--sandbox".into(),
        "workspace-write".into(),
        "--model".into(),
        CODEX_MODEL.into(),
    ]
    .into();
    a.extend(tail.iter().map(|s| s.to_string()));
    a
}

/// An agent profile for `orchd.toml`.
fn profile(name: &str, command: &[String], usage: &str, env: &[(&str, String)]) -> String {
    format!(
        "[agents.{name}]\ncommand = {}\nusage = {}\nenv = {}\n",
        argv(command),
        q(usage),
        env_table(env)
    )
}

/// A started daemon whose config is `config`.
fn daemon(config: &str) -> TestDaemon {
    daemon_in_tz(config, None)
}

/// A started daemon whose config is `config`, in time zone `tz` (a POSIX `TZ`) when given.
fn daemon_in_tz(config: &str, tz: Option<&str>) -> TestDaemon {
    let mut d = TestDaemon::prepare_with_config(config, &[]);
    if let Some(tz) = tz {
        d.set_env("TZ", tz);
    }
    d.launch();
    d
}

/// Submits a one-step objective for `agent` with `prompt` (no retries unless `extra` says
/// otherwise, the caller's environment not sent), waits for it, and returns its status.
fn run_agent(d: &TestDaemon, agent: &str, prompt: &str, extra: &[&str]) -> Value {
    let mut args = vec!["submit", "--clean-env"];
    if !extra.contains(&"--retries") {
        args.extend(["--retries", "0"]);
    }
    args.extend(["--wait", "--agent", agent, "--prompt", prompt]);
    args.extend_from_slice(extra);
    let out = d.ctl(&args);
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        !id.is_empty(),
        "submit printed no id\n{}\n{}",
        describe(&out),
        d.log_text()
    );
    d.status(&id)
}

/// The only step of an objective, and its only attempt.
fn only_attempt(status: &Value) -> &Value {
    let s = &status["steps"][0];
    let a = attempts(s);
    assert_eq!(a.len(), 1, "expected one attempt: {s}");
    &a[0]
}

/// The captured stdout of the first step's latest attempt.
fn stdout_of(d: &TestDaemon, status: &Value) -> String {
    stdout_of_attempt(d, status, None)
}

/// The captured stdout of attempt `number` (default: the latest) of the first step.
fn stdout_of_attempt(d: &TestDaemon, status: &Value, number: Option<u32>) -> String {
    let id = status["id"].as_str().expect("objective id");
    let step_id = status["steps"][0]["id"].as_str().expect("step id");
    let n = number.map(|n| n.to_string());
    let mut args = vec![id, step_id, "--stdout"];
    if let Some(n) = &n {
        args.extend(["--attempt", n.as_str()]);
    }
    String::from_utf8_lossy(&d.logs(&args)).into_owned()
}

/// The JSON lines of a transcript (non-JSON lines skipped).
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Usage kept apart by kind, as orch records it: fresh input (neither read from nor written
/// to a prompt cache), cache reads, cache writes, output, and the cost when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Kinds {
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
    cost: Option<f64>,
}

impl Kinds {
    fn new(input: u64, cache_read: u64, cache_write: u64, output: u64) -> Kinds {
        Kinds {
            input,
            cache_read,
            cache_write,
            output,
            cost: None,
        }
    }

    fn cost(self, usd: f64) -> Kinds {
        Kinds {
            cost: Some(usd),
            ..self
        }
    }

    /// The same tokens of every kind, and the same cost (to 1e-9 dollars) when `want` has one.
    fn matches(&self, want: &Kinds) -> bool {
        (self.input, self.cache_read, self.cache_write, self.output)
            == (want.input, want.cache_read, want.cache_write, want.output)
            && want
                .cost
                .is_none_or(|w| self.cost.is_some_and(|g| (g - w).abs() < 1e-9))
    }

    fn add(&mut self, o: &Kinds) {
        self.input += o.input;
        self.cache_read += o.cache_read;
        self.cache_write += o.cache_write;
        self.output += o.output;
        self.cost = match (self.cost, o.cost) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
    }
}

/// Asserts that orch recorded `want`, kind by kind (and the cost when `want` has one).
#[track_caller]
fn assert_kinds(what: &str, got: Kinds, want: Kinds) {
    assert!(
        got.matches(&want),
        "{what}: orch recorded {got:?}, the CLI reported {want:?}"
    );
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The last `result` event of a Claude Code transcript.
fn claude_result(stdout: &str) -> Value {
    json_lines(stdout)
        .into_iter()
        .rfind(|v| v["type"] == "result")
        .unwrap_or_else(|| panic!("no result event in\n{stdout}"))
}

/// The result's top-level account: `usage` (the main model only: `input_tokens` is fresh
/// input, `cache_creation_input_tokens` cache writes, `cache_read_input_tokens` cache reads)
/// and `total_cost_usd` (the whole session's, earlier runs included after `--resume`).
fn claude_result_usage(result: &Value) -> Kinds {
    let u = &result["usage"];
    Kinds::new(
        n(&u["input_tokens"]),
        n(&u["cache_read_input_tokens"]),
        n(&u["cache_creation_input_tokens"]),
        n(&u["output_tokens"]),
    )
    .cost(result["total_cost_usd"].as_f64().unwrap_or(0.0))
}

/// This run over every model it used (subagents included): `model_usage_since_last_result`
/// summed with each model's `costUSD`; a result without per-model entries (an API error) is
/// its `usage` and `total_cost_usd`.
fn claude_this_run(result: &Value) -> Kinds {
    match result["model_usage_since_last_result"].as_object() {
        Some(models) if !models.is_empty() => {
            let mut k = Kinds::default().cost(0.0);
            for m in models.values() {
                k.add(
                    &Kinds::new(
                        n(&m["inputTokens"]),
                        n(&m["cacheReadInputTokens"]),
                        n(&m["cacheCreationInputTokens"]),
                        n(&m["outputTokens"]),
                    )
                    .cost(m["costUSD"].as_f64().unwrap_or(0.0)),
                );
            }
            k
        }
        _ => claude_result_usage(result),
    }
}

/// Codex's account: its last `turn.completed`, the thread's totals so far (`input_tokens`
/// includes `cached_input_tokens`, kept apart here as cache reads). Codex reports no cost.
fn codex_thread_total(stdout: &str) -> Kinds {
    let last = json_lines(stdout)
        .into_iter()
        .rfind(|v| v["type"] == "turn.completed")
        .unwrap_or_else(|| panic!("no turn.completed in\n{stdout}"));
    let u = &last["usage"];
    let cached = n(&u["cached_input_tokens"]);
    Kinds::new(
        n(&u["input_tokens"]) - cached,
        cached,
        n(&u["cache_write_input_tokens"]),
        n(&u["output_tokens"]),
    )
}

/// What orch recorded for an attempt (or a step, an objective, `orchctl usage`).
fn recorded(v: &Value) -> Kinds {
    let u = if v.get("usage").is_some() {
        &v["usage"]
    } else {
        v
    };
    Kinds::new(
        n(&u["input_tokens"]),
        n(&u["cache_read_tokens"]),
        n(&u["cache_write_tokens"]),
        n(&u["output_tokens"]),
    )
    .cost(u["cost_usd"].as_f64().unwrap_or(0.0))
}

/// The `usage` events of attempt `number` of step `step`: how many, and their sum.
fn usage_events(events: &[Value], step: &str, number: u64) -> (usize, Kinds) {
    let mut sum = Kinds::default().cost(0.0);
    let mine: Vec<&Value> = of_kind(events, "usage")
        .into_iter()
        .filter(|e| e["step_id"] == step && e["attempt"] == number)
        .collect();
    for e in &mine {
        sum.add(&recorded(e));
    }
    (mine.len(), sum)
}

/// A gap that is closed now: `ok` must hold, else the test fails saying what it was.
fn assert_fixed(what: &str, ok: bool, got: impl std::fmt::Debug, want: impl std::fmt::Debug) {
    assert!(ok, "{what}: orch has {got:?}, it should have {want:?}");
}

/// A POSIX `TZ` (UTC shifted by less than a minute) in which the local time now is `second`
/// seconds past a minute, and the epoch second at which the next local minute starts. Codex
/// names a usage limit's reset as a local time to the minute ("try again at 7:12 AM"), which
/// orch waits for: in this zone that wait is under a minute minus `second`.
fn tz_at_second(second: i64) -> (String, i64) {
    let now = now_s();
    // Local time is UTC minus `off` seconds.
    let off = (now - second).rem_euclid(60);
    (format!("ORC+00:00:{off:02}"), now - second + 60)
}

/// `epoch_s` as Codex prints a reset in zone `tz` of [`tz_at_second`]: `7:12 AM`.
fn codex_clock(tz: &str, epoch_s: i64) -> String {
    let off: i32 = tz
        .rsplit(':')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("tz");
    let zone = chrono::FixedOffset::west_opt(off).expect("an offset");
    chrono::DateTime::from_timestamp(epoch_s, 0)
        .expect("a time")
        .with_timezone(&zone)
        .format("%-I:%M %p")
        .to_string()
}

/// The text of every `tool_result` block in an Anthropic request body.
fn anthropic_tool_results(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        for c in m["content"].as_array().into_iter().flatten() {
            if c["type"] == "tool_result" {
                out.push(match &c["content"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
        }
    }
    out
}

/// The `output` of every `function_call_output` item in an OpenAI request body.
fn openai_tool_outputs(body: &Value) -> Vec<String> {
    body["input"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"] == "function_call_output")
        .map(|i| match &i["output"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Asserts that attempt 1 of a step was refused by a rate limit and waited for in
/// `backoff` without using up a retry (the objective allowed one attempt), that attempt 2
/// started once the wait was over and succeeded, and returns the `retry_scheduled` event.
#[track_caller]
fn assert_waited_then_succeeded(d: &TestDaemon, v: &Value) -> Value {
    assert_eq!(
        v["state"],
        "succeeded",
        "one attempt allowed; the rate-limited one must not count: {v}\n{}",
        d.log_text()
    );
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 2, "{v}");
    assert_eq!(a[0]["outcome"], "exit_failure", "{v}");
    assert!(
        a[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("; the agent said: ")),
        "attempt 1 says why: {v}"
    );
    assert_eq!(a[1]["outcome"], "success", "{v}");
    let events = d.events(v["id"].as_str().expect("id"));
    let retry = of_kind(&events, "retry_scheduled");
    assert_eq!(retry.len(), 1, "{retry:?}");
    let waiting: Vec<&Value> = of_kind(&events, "step_state")
        .into_iter()
        .filter(|e| e["state"] == "backoff")
        .collect();
    assert_eq!(waiting.len(), 1, "{events:?}");
    assert_eq!(
        waiting[0]["message"], "rate limited by the provider; waiting for the reset",
        "{}",
        waiting[0]
    );
    let due = rfc3339(&retry[0]["due_at"], "due_at").timestamp_millis();
    let started = rfc3339(&a[1]["started_at"], "started_at").timestamp_millis();
    assert!(
        started >= due,
        "attempt 2 started at {started}, before the wait ended at {due}: {v}"
    );
    retry[0].clone()
}
// ------------------------------------------------------------------ the mock itself

/// One HTTP/1.1 request to the mock over a plain socket: (status, headers, body).
fn http(mock: &MockProvider, method: &str, path: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = mock.base_url().trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to the mock");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-test: yes\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send a request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the reply");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), rest.to_string())
}

/// The SSE `data:` payloads of a streamed reply, with their event names.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

/// The mock on its own (no CLI needed): replies in order per API, streamed and not, errors
/// with their headers, an empty queue answered 400, every request recorded.
#[test]
fn mock_provider_scripts_and_records_both_apis() {
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(
            Some("Let me run it."),
            "echo hi",
            Usage::new(10, 5).cache(3, 4),
        ),
        Reply::anthropic_server_error(),
        Reply::text("plain", Usage::new(1, 2)),
    ]);
    mock.openai([Reply::codex_exec(
        "echo hi",
        Usage::new(100, 7).cache(0, 60).reasoning(2),
    )]);
    assert_eq!(mock.pending(), (3, 1));

    let (status, head, _) = http(&mock, "HEAD", "/", "");
    assert_eq!(status, 200, "{head}");

    let (status, head, body) = http(
        &mock,
        "POST",
        "/v1/messages?beta=true",
        r#"{"model":"m","stream":true}"#,
    );
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let ev = sse_events(&body);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[0].1["message"]["usage"]["cache_read_input_tokens"], 4);
    assert_eq!(ev[5].1["content_block"]["name"], "Bash");
    let input: Value = serde_json::from_str(
        ev[6].1["delta"]["partial_json"]
            .as_str()
            .expect("partial_json"),
    )
    .expect("tool input JSON");
    assert_eq!(input["command"], "echo hi");
    assert_eq!(ev[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(ev[8].1["usage"]["output_tokens"], 5);
    // The key order of the real API is kept (Claude Code passes message objects through).
    assert!(
        body.contains(r#"{"type":"message_start","message":{"model":"m","id":"#),
        "{body}"
    );

    let (status, _, body) = http(&mock, "POST", "/v1/messages", r#"{"model":"m"}"#);
    assert_eq!(status, 500, "{body}");
    let (status, _, body) = http(&mock, "POST", "/v1/messages", r#"{"model":"m"}"#);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("a JSON message");
    assert_eq!(v["content"][0]["text"], "plain");
    assert_eq!(v["usage"]["output_tokens"], 2);
    let (status, _, body) = http(&mock, "POST", "/v1/messages", "{}");
    assert_eq!(status, 400);
    assert!(body.contains("no reply scripted for request"), "{body}");

    let (status, _, body) = http(
        &mock,
        "POST",
        "/v1/responses",
        r#"{"model":"g","stream":true}"#,
    );
    assert_eq!(status, 200);
    let ev = sse_events(&body);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(ev[3].1["item"]["name"], "exec_command");
    assert_eq!(ev[3].1["item"]["call_id"], "call_1");
    let u = &ev[4].1["response"]["usage"];
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 60);
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 2);

    let limited = MockProvider::start();
    limited.openai([
        Reply::openai_usage_limit(2_000_000_000),
        Reply::openai_rate_limited(3),
    ]);
    let (status, head, body) = http(&limited, "POST", "/v1/responses", "{}");
    assert_eq!(status, 429);
    assert!(
        head.contains("x-codex-primary-reset-at: 2000000000"),
        "{head}"
    );
    assert!(body.contains("usage_limit_reached"), "{body}");
    let (status, head, _) = http(&limited, "POST", "/v1/responses", "{}");
    assert_eq!(status, 429);
    assert!(head.contains("retry-after: 3"), "{head}");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 6);
    assert_eq!(reqs[0].api, Api::Other);
    assert_eq!(reqs[1].header("x-test"), Some("yes"));
    assert!(reqs[1].body_text().contains("\"stream\":true"));
    assert_eq!(mock.bodies(Api::Anthropic).len(), 4);
    assert_eq!(mock.bodies(Api::OpenAi).len(), 1);
    assert_eq!(mock.pending(), (0, 0));
}

// ------------------------------------------------------------------ Claude Code

#[test]
fn claude_tool_round_trip_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(
            Some("Let me run it."),
            "echo hi",
            Usage::new(100, 20).cache(300, 400),
        ),
        Reply::text(
            "The command printed hi.",
            Usage::new(150, 30).cache(50, 700),
        ),
    ]);
    let home = home_dir();
    let d = daemon(&profile(
        "claude",
        &claude_argv(&[]),
        "claude-stream-json",
        &claude_env(&mock, home.path()),
    ));
    let v = run_agent(&d, "claude", "run echo hi", &[]);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", d.log_text());
    let a = only_attempt(&v);
    assert_eq!(a["outcome"], "success", "{a}");

    // The tool ran and its output went back to the model in the second request.
    let bodies = mock.bodies(Api::Anthropic);
    assert_eq!(bodies.len(), 2, "two model requests expected");
    assert!(anthropic_tool_results(&bodies[0]).is_empty());
    let results = anthropic_tool_results(&bodies[1]);
    assert_eq!(results.len(), 1, "{}", bodies[1]["messages"]);
    assert!(
        results[0].starts_with("hi"),
        "tool result: {:?}",
        results[0]
    );
    assert_eq!(bodies[0]["model"], CLAUDE_MODEL);
    let first = &mock.requests()[0];
    assert_eq!(first.path, "/v1/messages?beta=true");
    assert_eq!(first.header("x-api-key"), Some("sk-ant-mock"));

    // Claude Code's own sums: 250 fresh input, 1100 cache reads, 350 cache writes, 50
    // output, priced at Sonnet 4.5's list price; per model the same.
    let out = stdout_of(&d, &v);
    let result = claude_result(&out);
    let cli = claude_result_usage(&result);
    assert_kinds(
        "Claude Code's result.usage",
        cli,
        Kinds::new(250, 1100, 350, 50).cost(0.0031425),
    );
    assert_kinds(
        "Claude Code's model_usage_since_last_result",
        claude_this_run(&result),
        cli,
    );
    assert_kinds("attempt usage", recorded(a), cli);
    assert_kinds("step usage", recorded(&v["steps"][0]), cli);
    assert_kinds("objective usage", recorded(&v), cli);
    let id = v["id"].as_str().expect("id");
    assert_kinds(
        "orchctl usage ID",
        recorded(&d.ctl_json(&["usage", id])),
        cli,
    );
    assert_eq!(a["session_id"], result["session_id"], "{a}");

    // Each call's input and cache tokens as it happened (a running estimate, unpriced
    // here: the profile names no model with a price), then the result's remainder.
    let events = d.events(id);
    let (count, sum) = usage_events(&events, "main", 1);
    assert_eq!(count, 3, "two calls, then the result: {events:?}");
    assert_kinds("the usage events' sum", sum, cli);
    let first = of_kind(&events, "usage")[0];
    assert_kinds(
        "the first call's estimate",
        recorded(first),
        Kinds::new(100, 400, 300, 0).cost(0.0),
    );
}

/// What the running estimate costs: priced at the profile's `model` price and taken off the
/// result's `costUSD`, the attempt costs what Claude Code said. A profile without `model`
/// gets its estimates priced by the daemon at the `[prices]` of the model the reply names,
/// and the result's cost is added in full (a known gap). A reply naming a dated snapshot
/// (as the real API answers an alias) is counted once.
#[test]
fn claude_cost_with_prices_configured_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    let hello = || Reply::text("Hello from the mock.", Usage::new(12, 6).cache(2000, 10000));
    mock.anthropic([
        hello(),
        hello(),
        hello().served_as("claude-sonnet-4-5-20250929"),
    ]);
    let home = home_dir();
    let env = claude_env(&mock, home.path());
    let d = daemon(&format!(
        "{}\n{}model = {}\n\n{}",
        claude_prices(),
        profile("priced", &claude_argv(&[]), "claude-stream-json", &env),
        q(CLAUDE_MODEL),
        profile("unpriced", &claude_argv(&[]), "claude-stream-json", &env),
    ));
    // 12 fresh in, 10000 cache reads, 2000 cache writes, 6 out: $0.010626.
    let want = Kinds::new(12, 10000, 2000, 6).cost(0.010626);
    let estimate = (12.0 * 3.0 + 10000.0 * 0.3 + 2000.0 * 3.75) / 1e6;

    let v = run_agent(&d, "priced", "say hello", &[]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let out = stdout_of(&d, &v);
    assert_kinds(
        "Claude Code's account",
        claude_this_run(&claude_result(&out)),
        want,
    );
    assert_kinds(
        "attempt usage (profile priced)",
        recorded(only_attempt(&v)),
        want,
    );
    let events = d.events(v["id"].as_str().expect("id"));
    let u = of_kind(&events, "usage");
    assert_eq!(u.len(), 2, "the call's estimate, then the result: {u:?}");
    assert_kinds(
        "the estimate, priced",
        recorded(u[0]),
        Kinds::new(12, 10000, 2000, 0).cost(estimate),
    );

    let v = run_agent(&d, "unpriced", "say hello", &[]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let got = recorded(only_attempt(&v));
    assert_fixed(
        "claude profile without `model`, its model in [prices]: the estimate's cost (priced \
         by the daemon) is added to the result's costUSD",
        got.matches(&want),
        got.cost,
        want.cost,
    );

    let v = run_agent(&d, "priced", "say hello", &[]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let out = stdout_of(&d, &v);
    let result = claude_result(&out);
    assert_kinds(
        "Claude Code's account (dated reply)",
        claude_this_run(&result),
        want,
    );
    // Claude Code files the run under the model it asked for; the call's estimate names the
    // model the reply named.
    let keys: Vec<&String> = result["model_usage_since_last_result"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, [CLAUDE_MODEL], "{result}");
    let events = d.events(v["id"].as_str().expect("id"));
    let models: Vec<&str> = of_kind(&events, "usage")
        .iter()
        .filter_map(|e| e["model"].as_str())
        .collect();
    let got = recorded(only_attempt(&v));
    assert_fixed(
        &format!(
            "claude reply naming claude-sonnet-4-5-20250929, result filed under {CLAUDE_MODEL}: \
             the estimate (usage events by model {models:?}) is not taken off the result, \
             so input, cache and cost are counted twice"
        ),
        got.matches(&want),
        got,
        want,
    );
}

/// A subscription's usage limit: Claude Code (with `CLAUDE_CODE_OAUTH_TOKEN`) prints a
/// `rate_limit_event` with `status: rejected` and `resetsAt`, and exits 1; orch waits in
/// `backoff` until the reset without using up a retry, then the next attempt succeeds.
#[test]
fn claude_usage_limit_waits_for_the_reset_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    // Far enough ahead that attempt 1 (a Claude Code start, ~1-2 s) ends before it even on
    // a loaded machine; a reset already past is an ordinary failure.
    let reset_s = now_s() + 5;
    mock.anthropic([
        Reply::anthropic_usage_limit(reset_s),
        Reply::text("Hello after the reset.", Usage::new(12, 6)),
    ]);
    let home = home_dir();
    let d = daemon(&profile(
        "claude",
        &claude_argv(&[]),
        "claude-stream-json",
        &claude_oauth_env(&mock, home.path()),
    ));
    let v = run_agent(&d, "claude", "say hello", &[]);
    let a = attempts(&v["steps"][0]);
    assert!(
        a.first()
            .is_some_and(|a| rfc3339(&a["ended_at"], "ended_at").timestamp() < reset_s),
        "the machine was too slow: attempt 1 ended after the reset: {v}"
    );
    let retry = assert_waited_then_succeeded(&d, &v);
    assert_eq!(
        rfc3339(&retry["due_at"], "due_at").timestamp_millis(),
        reset_s * 1000,
        "the wait ends at resetsAt: {retry}"
    );
    let first = stdout_of_attempt(&d, &v, Some(1));
    assert!(
        json_lines(&first)
            .iter()
            .any(|l| l["type"] == "rate_limit_event"
                && l["rate_limit_info"]["status"] == "rejected"
                && l["rate_limit_info"]["resetsAt"] == reset_s),
        "{first}"
    );
    assert!(
        a[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("usage_limit_reached"))
    );
    assert_kinds(
        "the refused attempt",
        recorded(&a[0]),
        Kinds::default().cost(0.0),
    );
    assert_kinds(
        "the attempt after the reset",
        recorded(&a[1]),
        Kinds::new(12, 0, 0, 6).cost(0.000126),
    );
    assert_eq!(mock.bodies(Api::Anthropic).len(), 2);
}

/// An API key's plain 429: Claude Code ends with an error result (`is_error: true`,
/// `api_error_status: 429`, no reset time) and exits 1; orch waits `rate_limit_wait` in
/// `backoff` without using up a retry, and the next attempt succeeds.
#[test]
fn claude_429_result_waits_without_using_a_retry_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::anthropic_rate_limited(30),
        Reply::text("Hello after the wait.", Usage::new(12, 6)),
    ]);
    let home = home_dir();
    // Counted from when orch reads the error, so longer than Claude Code takes to exit after
    // printing it.
    let d = daemon(&format!(
        "rate_limit_wait = \"2s\"\n\n{}",
        profile(
            "claude",
            &claude_argv(&[]),
            "claude-stream-json",
            &claude_env(&mock, home.path()),
        )
    ));
    let v = run_agent(&d, "claude", "say hello", &[]);
    let first = stdout_of_attempt(&d, &v, Some(1));
    let result = claude_result(&first);
    assert_eq!(result["is_error"], true, "{result}");
    assert_eq!(result["api_error_status"], 429, "{result}");
    let retry = assert_waited_then_succeeded(&d, &v);
    let delay = retry["delay_ms"].as_u64().unwrap_or(0);
    assert!(
        delay > 0 && delay <= 2000,
        "rate_limit_wait (2 s) from the error: {retry}"
    );
    let a = attempts(&v["steps"][0]);
    assert!(
        a[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rate limited: rate_limit_error (HTTP 429)")),
        "{}",
        a[0]
    );
    assert_kinds(
        "the attempt after the wait",
        recorded(&a[1]),
        Kinds::new(12, 0, 0, 6).cost(0.000126),
    );
}

/// `--max-turns 1` with a tool call: Claude Code ends with an `error_max_turns` result
/// (`is_error: true`) and exits 1; a 401 ends in an error result with
/// `api_error_status: 401`. A retry would fail the same way: neither is retried, even with
/// `--retries 2`. The turn that ran is counted.
#[test]
fn claude_max_turns_and_auth_are_not_retried_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(
            Some("Let me run it."),
            "echo hi",
            Usage::new(100, 20).cache(300, 400),
        ),
        Reply::error(
            401,
            &[],
            json!({"type": "error", "error": {"type": "authentication_error",
                "message": "invalid x-api-key"}, "request_id": "req_mock_401"}),
        ),
    ]);
    let home = home_dir();
    let d = daemon(&format!(
        "{}\n{}",
        profile(
            "claude",
            &claude_argv(&["--max-turns", "1"]),
            "claude-stream-json",
            &claude_env(&mock, home.path()),
        ),
        profile(
            "claude-auth",
            &claude_argv(&[]),
            "claude-stream-json",
            &claude_env(&mock, home.path()),
        ),
    ));
    let v = run_agent(&d, "claude", "run echo hi", &["--retries", "2"]);
    assert_eq!(v["state"], "failed", "{v}");
    let a = only_attempt(&v);
    assert_eq!(a["outcome"], "exit_failure", "{a}");
    assert_eq!(a["exit_code"], 1, "{a}");
    let out = stdout_of(&d, &v);
    let result = claude_result(&out);
    assert_eq!(result["subtype"], "error_max_turns", "{result}");
    assert_eq!(result["is_error"], true, "{result}");
    let message = v["steps"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("max turns reached: Reached maximum number of turns (1)")
            && message.contains("not retried"),
        "{message}"
    );
    // The CLI's account and orch's: 100 fresh in, 400 cache reads, 300 cache writes, 20
    // out, $0.001845.
    let want = Kinds::new(100, 400, 300, 20).cost(0.001845);
    assert_kinds("Claude Code's account", claude_this_run(&result), want);
    assert_kinds("the max-turns attempt", recorded(a), want);

    let v = run_agent(&d, "claude-auth", "say hello", &["--retries", "2"]);
    assert_eq!(v["state"], "failed", "{v}");
    let a = only_attempt(&v);
    let result = claude_result(&stdout_of(&d, &v));
    assert_eq!(result["is_error"], true, "{result}");
    assert_eq!(result["api_error_status"], 401, "{result}");
    let message = v["steps"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("authentication failed") && message.contains("not retried"),
        "{message}"
    );
    assert_kinds(
        "the refused attempt",
        recorded(a),
        Kinds::default().cost(0.0),
    );
    assert_eq!(mock.bodies(Api::Anthropic).len(), 2);
}

/// A session resumed in a second objective (`--resume ID`, same `HOME` and workdir): the
/// mock sees the earlier tool round trip replayed, and the resumed run's `result` reports
/// this run's tokens in `usage` and `model_usage_since_last_result` but the whole session's
/// in `modelUsage` and `total_cost_usd`. orch counts this run only.
#[test]
fn claude_resume_replays_the_session_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(
            Some("Let me run it."),
            "echo hi",
            Usage::new(100, 20).cache(300, 400),
        ),
        Reply::text(
            "The command printed hi.",
            Usage::new(150, 30).cache(50, 700),
        ),
        Reply::text(
            "I ran echo hi; it printed hi.",
            Usage::new(40, 12).cache(0, 2000),
        ),
    ]);
    let home = home_dir();
    let sid = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b";
    let env = claude_env(&mock, home.path());
    let d = daemon(&format!(
        "{}\n{}",
        profile(
            "claude",
            &claude_argv(&["--session-id", sid]),
            "claude-stream-json",
            &env
        ),
        profile(
            "claude-resume",
            &claude_argv(&["--resume", sid]),
            "claude-stream-json",
            &env
        ),
    ));
    let first = run_agent(&d, "claude", "run echo hi", &[]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let second = run_agent(&d, "claude-resume", "what did you run?", &[]);
    assert_eq!(second["state"], "succeeded", "{second}");
    let bodies = mock.bodies(Api::Anthropic);
    assert_eq!(bodies.len(), 3);
    assert_eq!(
        anthropic_tool_results(&bodies[2]).len(),
        1,
        "the resumed session must replay the tool round trip: {}",
        bodies[2]["messages"]
    );
    let result = claude_result(&stdout_of(&d, &second));
    assert_eq!(result["session_id"], sid);
    // This run alone: 40 fresh in, 2000 cache reads, 12 out, $0.0009; the result's
    // total_cost_usd is the session's ($0.0031425 + $0.0009).
    let this_run = Kinds::new(40, 2000, 0, 12).cost(0.0009);
    assert_kinds(
        "Claude Code's model_usage_since_last_result",
        claude_this_run(&result),
        this_run,
    );
    let total = result["total_cost_usd"].as_f64().unwrap_or(0.0);
    assert!((total - 0.0040425).abs() < 1e-9, "{result}");
    assert_kinds(
        "the first run",
        recorded(only_attempt(&first)),
        Kinds::new(250, 1100, 350, 50).cost(0.0031425),
    );
    assert_kinds("the resumed run", recorded(only_attempt(&second)), this_run);
    for v in [&first, &second] {
        assert_eq!(only_attempt(v)["session_id"], sid, "{v}");
    }
}

/// orch writes the prompt to an agent's stdin as well as putting it where `{prompt}` is.
/// Claude Code `-p PROMPT` appends piped stdin to the prompt (`PROMPT\nSTDIN`), so the model
/// gets it twice; `-p` with no prompt argument reads it from stdin once. Codex `exec PROMPT`
/// likewise appends stdin; `exec -` reads it from stdin only.
#[test]
fn prompt_reaches_the_model_once_only_from_stdin_under_orchd() {
    if !require_agents(&["claude", "codex"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::text("Hello.", Usage::new(10, 2)),
        Reply::text("Hello.", Usage::new(10, 2)),
    ]);
    mock.openai([
        Reply::text("Hello.", Usage::new(10, 2)),
        Reply::text("Hello.", Usage::new(10, 2)),
    ]);
    let home = home_dir();
    let cenv = claude_env(&mock, home.path());
    let ch = codex_home(&mock, home.path());
    let xenv = codex_env(&ch, home.path());
    let mut claude_stdin = claude_argv(&[]);
    claude_stdin.remove(2); // "{prompt}"
    let d = daemon(
        &[
            profile("claude-arg", &claude_argv(&[]), "claude-stream-json", &cenv),
            profile("claude-stdin", &claude_stdin, "claude-stream-json", &cenv),
            profile("codex-arg", &codex_argv(&["{prompt}"]), "codex-json", &xenv),
            profile("codex-stdin", &codex_argv(&["-"]), "codex-json", &xenv),
        ]
        .join("\n"),
    );
    let copies = |api: Api, i: usize, prompt: &str| {
        let b = &mock.bodies(api)[i];
        let field = if api == Api::Anthropic {
            "messages"
        } else {
            "input"
        };
        b[field].to_string().matches(prompt).count()
    };
    for (i, (agent, api)) in [
        ("claude-arg", Api::Anthropic),
        ("claude-stdin", Api::Anthropic),
        ("codex-arg", Api::OpenAi),
        ("codex-stdin", Api::OpenAi),
    ]
    .into_iter()
    .enumerate()
    {
        let prompt = format!("say hello {agent}");
        let v = run_agent(&d, agent, &prompt, &[]);
        assert_eq!(v["state"], "succeeded", "{agent}: {v}");
        let n = copies(api, i % 2, &prompt);
        if agent.ends_with("stdin") {
            assert_eq!(n, 1, "{agent}: the prompt once");
        } else {
            // Today 2: the argument plus the same prompt on stdin.
            assert_fixed(
                &format!("{agent}: copies of the prompt sent to the model"),
                n == 1,
                n,
                1,
            );
        }
    }
}

// ------------------------------------------------------------------ Codex

#[test]
fn codex_tool_round_trip_under_orchd() {
    if !require_agents(&["codex"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.openai([
        Reply::codex_exec("echo hi", Usage::new(1000, 20).cache(0, 600).reasoning(5)),
        Reply::text(
            "The command printed hi.",
            Usage::new(1200, 30).cache(0, 1000),
        ),
    ]);
    let home = home_dir();
    let ch = codex_home(&mock, home.path());
    let d = daemon(&format!(
        "[prices.{model}]\ninput_per_mtok = 1.0\noutput_per_mtok = 10.0\ncached_input_per_mtok = 0.1\n\n{}model = {model}\n",
        profile(
            "codex",
            &codex_argv(&["-"]),
            "codex-json",
            &codex_env(&ch, home.path())
        ),
        model = q(CODEX_MODEL),
    ));
    let v = run_agent(&d, "codex", "run echo hi", &[]);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", d.log_text());
    let a = only_attempt(&v);

    let bodies = mock.bodies(Api::OpenAi);
    assert_eq!(bodies.len(), 2, "two model requests expected");
    let outputs = openai_tool_outputs(&bodies[1]);
    assert_eq!(outputs.len(), 1, "{}", bodies[1]["input"]);
    assert!(outputs[0].contains("hi"), "tool output: {:?}", outputs[0]);
    assert_eq!(bodies[0]["model"], CODEX_MODEL);
    let first = &mock.requests()[0];
    assert_eq!(first.path, "/v1/responses");
    assert_eq!(first.header("authorization"), Some("Bearer sk-mock"));
    assert_eq!(mock.pending(), (0, 0));

    // Codex: 2200 input of which 1600 cached, 50 output; orch: 600 fresh, 1600 cache reads,
    // priced at the configured prices (cached input at its own).
    let out = stdout_of(&d, &v);
    let cli = codex_thread_total(&out);
    assert_eq!(cli, Kinds::new(600, 1600, 0, 50), "{out}");
    let cost = (600.0 * 1.0 + 1600.0 * 0.1 + 50.0 * 10.0) / 1e6;
    assert_kinds("attempt usage", recorded(a), cli.cost(cost));
    let events = d.events(v["id"].as_str().expect("id"));
    let (_, sum) = usage_events(&events, "main", 1);
    assert_kinds("the usage events' sum", sum, cli.cost(cost));
    assert_eq!(
        a["session_id"],
        json_lines(&out)[0]["thread_id"],
        "the thread: {a}"
    );
}

/// A thread resumed in a second objective (`codex exec resume --last`): the mock sees the
/// earlier round trip replayed, and the resumed run's `turn.completed` reports the thread's
/// totals (earlier runs included). orch kept the thread's total from the first objective,
/// so it counts only this run's part.
#[test]
fn codex_resume_replays_the_thread_under_orchd() {
    if !require_agents(&["codex"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.openai([
        Reply::codex_exec("echo hi", Usage::new(1000, 20).cache(0, 600).reasoning(5)),
        Reply::text(
            "The command printed hi.",
            Usage::new(1200, 30).cache(0, 1000),
        ),
        Reply::text(
            "I ran echo hi; it printed hi.",
            Usage::new(1500, 15).cache(0, 1200),
        ),
    ]);
    let home = home_dir();
    let ch = codex_home(&mock, home.path());
    let env = codex_env(&ch, home.path());
    let d = daemon(&format!(
        "{}\n{}",
        profile("codex", &codex_argv(&["-"]), "codex-json", &env),
        profile(
            "codex-resume",
            &codex_argv(&["resume", "--last", "-"]),
            "codex-json",
            &env
        ),
    ));
    let first = run_agent(&d, "codex", "run echo hi", &[]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let second = run_agent(&d, "codex-resume", "what did you run?", &[]);
    assert_eq!(second["state"], "succeeded", "{second}");
    let bodies = mock.bodies(Api::OpenAi);
    assert_eq!(bodies.len(), 3);
    assert_eq!(
        openai_tool_outputs(&bodies[2]).len(),
        1,
        "the resumed thread must replay the tool round trip"
    );
    assert_kinds(
        "the first run",
        recorded(only_attempt(&first)),
        Kinds::new(600, 1600, 0, 50),
    );
    // One thread: both attempts name it.
    let (a1, a2) = (only_attempt(&first), only_attempt(&second));
    assert!(a1["session_id"].is_string(), "{a1}");
    assert_eq!(a1["session_id"], a2["session_id"], "{a2}");
    let out = stdout_of(&d, &second);
    // Cumulative for the thread: 2200 + 1500 in (1600 + 1200 cached), 50 + 15 out.
    assert_eq!(
        codex_thread_total(&out),
        Kinds::new(900, 2800, 0, 65),
        "{out}"
    );
    // This run: 1500 in of which 1200 cached, 15 out.
    assert_kinds(
        "the resumed run, counted from the thread's earlier total",
        recorded(a2),
        Kinds::new(300, 1200, 0, 15),
    );
    // The two objectives add up to the thread's total.
    let (_, u1) = usage_events(&d.events(first["id"].as_str().expect("id")), "main", 1);
    let (_, u2) = usage_events(&d.events(second["id"].as_str().expect("id")), "main", 1);
    assert_kinds(
        "the first run's usage events",
        u1,
        Kinds::new(600, 1600, 0, 50),
    );
    assert_kinds(
        "the resumed run's usage events",
        u2,
        Kinds::new(300, 1200, 0, 15),
    );
}

/// A ChatGPT plan's usage limit: Codex prints an `error` and a `turn.failed` saying "try
/// again at <local time>" (to the minute) and exits 1; orch waits in `backoff` until that
/// time without using up a retry, then the next attempt succeeds. Codex and orchd run in a
/// time zone where the next minute starts in ~8 s, so the wait is short.
#[test]
fn codex_usage_limit_waits_for_the_reset_under_orchd() {
    if !require_agents(&["codex"]) {
        return;
    }
    let (tz, minute_s) = tz_at_second(52);
    let mock = MockProvider::start();
    // Within the next local minute: Codex names it, orch waits for its start.
    mock.openai([
        Reply::openai_usage_limit(minute_s + 1),
        Reply::text("Hello after the reset.", Usage::new(100, 5).cache(0, 40)),
    ]);
    let home = home_dir();
    let ch = codex_home(&mock, home.path());
    let mut env = codex_env(&ch, home.path());
    env.push(("TZ", tz.clone()));
    let d = daemon_in_tz(
        &profile("codex", &codex_argv(&["-"]), "codex-json", &env),
        Some(&tz),
    );
    let v = run_agent(&d, "codex", "say hello", &[]);
    let a = attempts(&v["steps"][0]);
    assert!(
        a.first()
            .is_some_and(|a| rfc3339(&a["ended_at"], "ended_at").timestamp() < minute_s),
        "the machine was too slow: attempt 1 ended after the reset: {v}"
    );
    let first = stdout_of_attempt(&d, &v, Some(1));
    let says = format!("try again at {}.", codex_clock(&tz, minute_s + 1));
    assert!(
        json_lines(&first).iter().any(|l| l["type"] == "turn.failed"
            && l["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&says))),
        "{says:?} in\n{first}"
    );
    let retry = assert_waited_then_succeeded(&d, &v);
    assert_eq!(
        rfc3339(&retry["due_at"], "due_at").timestamp_millis(),
        minute_s * 1000,
        "the wait ends when the named minute starts: {retry}"
    );
    assert!(
        a[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("hit your usage limit")),
        "{}",
        a[0]
    );
    assert_kinds(
        "the attempt after the reset",
        recorded(&a[1]),
        Kinds::new(60, 40, 0, 5),
    );
}

/// A plain 429 (`rate_limit_exceeded`): Codex gives up (`exceeded retry limit, last status:
/// 429 Too Many Requests`) and exits 1; orch waits `rate_limit_wait` in `backoff` without
/// using up a retry, and the next attempt succeeds.
#[test]
fn codex_429_waits_without_using_a_retry_under_orchd() {
    if !require_agents(&["codex"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.openai([
        Reply::openai_rate_limited(1),
        Reply::text("Hello after the wait.", Usage::new(100, 5)),
    ]);
    let home = home_dir();
    let ch = codex_home(&mock, home.path());
    let d = daemon(&format!(
        "rate_limit_wait = \"2s\"\n\n{}",
        profile(
            "codex",
            &codex_argv(&["-"]),
            "codex-json",
            &codex_env(&ch, home.path())
        )
    ));
    let v = run_agent(&d, "codex", "say hello", &[]);
    let retry = assert_waited_then_succeeded(&d, &v);
    let delay = retry["delay_ms"].as_u64().unwrap_or(0);
    assert!(
        delay > 0 && delay <= 2000,
        "rate_limit_wait (2 s) from the failed turn: {retry}"
    );
    let a = attempts(&v["steps"][0]);
    assert!(
        a[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("429 Too Many Requests")),
        "{}",
        a[0]
    );
    assert_kinds(
        "the attempt after the wait",
        recorded(&a[1]),
        Kinds::new(100, 0, 0, 5),
    );
}

// ------------------------------------------------------------------ aider

/// aider answers through the mock's Anthropic API (litellm, `--no-stream`) and prints its
/// usage as text (`Tokens: 1.2k sent, 6 received. Cost: $0.0037 message, ...`), which the
/// `aider` usage format reads.
#[test]
fn aider_plain_answer_under_orchd() {
    if !require_agents(&["aider"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([Reply::text("Hello from the mock.", Usage::new(1200, 6))]);
    let home = home_dir();
    seed_aider_home(home.path());
    let mut command = vec![agent_cli("aider").display().to_string()];
    command.extend(aider_args("{prompt}"));
    let d = daemon(&profile(
        "aider",
        &command,
        "aider",
        &aider_env(&mock, home.path()),
    ));
    let v = run_agent(&d, "aider", "say hello", &[]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let bodies = mock.bodies(Api::Anthropic);
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["model"], "claude-sonnet-4-5");
    let out = stdout_of(&d, &v);
    assert!(out.contains("Hello from the mock."), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("Tokens: "))
        .unwrap_or_else(|| panic!("no Tokens line in\n{out}"));
    assert!(
        line.contains("1.2k sent, 6 received. Cost: $0.0037 message"),
        "{line}"
    );
    assert_kinds(
        "aider's Tokens line",
        recorded(only_attempt(&v)),
        Kinds::new(1200, 0, 0, 6).cost(0.0037),
    );
}

// ------------------------------------------------------------------ fixtures

/// Where the captured transcripts live.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agents");

/// One line about a scripted reply, for the fixtures' README.
fn describe_reply(r: &Reply) -> String {
    match r {
        Reply::Turn(t) => {
            let mut parts = Vec::new();
            if let Some(text) = &t.text {
                parts.push(format!("text {text:?}"));
            }
            if let Some(tool) = &t.tool {
                parts.push(format!("tool_use {} {}", tool.name, tool.input));
            }
            let u = t.usage;
            parts.push(format!(
                "usage input={} output={} cache_creation={} cached={} reasoning={}",
                u.input, u.output, u.cache_creation, u.cached, u.reasoning
            ));
            parts.join("; ")
        }
        Reply::Error {
            status,
            headers,
            body,
        } => {
            let h: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("HTTP {status} [{}] {body}", h.join(", "))
        }
    }
}

/// A transcript captured from a real CLI run against the mock.
struct Captured {
    file: String,
    exit_code: Option<i32>,
    args: Vec<String>,
    env: Vec<String>,
    script: Vec<String>,
    stdout: String,
}

/// Runs `program args` directly (not under orchd) in `cwd` with only `PATH`, `LANG` and `env`,
/// stdin closed, against a fresh mock scripted with `replies` for `api`.
fn capture(
    file: &str,
    program: &str,
    args: &[String],
    env: impl Fn(&MockProvider) -> Vec<(&'static str, String)>,
    api: Api,
    replies: Vec<Reply>,
    cwd: &Path,
) -> (Captured, MockProvider) {
    let mock = MockProvider::start();
    let script: Vec<String> = replies.iter().map(describe_reply).collect();
    match api {
        Api::OpenAi => mock.openai(replies),
        _ => mock.anthropic(replies),
    };
    let env = env(&mock);
    let mut cmd = std::process::Command::new(agent_cli(program));
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let out = crate::support::run_deadline(&mut cmd, std::time::Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    announce(&format!(
        "captured {file}: exit {:?}, {} bytes{}",
        out.status.code(),
        stdout.len(),
        if out.stderr.is_empty() {
            String::new()
        } else {
            format!(
                ", stderr: {}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            )
        }
    ));
    let port = mock.base_url();
    let c = Captured {
        file: file.to_string(),
        exit_code: out.status.code(),
        args: std::iter::once(program.to_string())
            .chain(args.iter().cloned())
            .collect(),
        env: env
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace(&port, "http://127.0.0.1:PORT")))
            .collect(),
        script,
        stdout,
    };
    (c, mock)
}

/// The value of `key` on the first line of `stdout` that has it.
fn first_field(stdout: &str, key: &str) -> String {
    json_lines(stdout)
        .iter()
        .find_map(|v| v[key].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no {key} in\n{stdout}"))
}

/// `claude -p PROMPT` args (as `claude_argv`, prompt filled in, program left out).
fn claude_args(prompt: &str, extra: &[&str]) -> Vec<String> {
    let mut a = claude_argv(extra);
    a.remove(0);
    a[1] = prompt.to_string();
    a
}

/// `codex exec ...` args (program left out).
fn codex_args(tail: &[&str]) -> Vec<String> {
    let mut a = codex_argv(tail);
    a.remove(0);
    a
}

fn aider_args(prompt: &str) -> Vec<String> {
    [
        "--model",
        AIDER_MODEL,
        "--message",
        prompt,
        "--yes-always",
        "--no-pretty",
        "--no-stream",
        "--no-git",
        "--no-check-update",
        "--analytics-disable",
        "--no-show-release-notes",
        "--no-gitignore",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Seeds aider's model price cache (`~/.aider/caches/model_prices_and_context_window.json`)
/// from the copy litellm ships, so aider does not fetch one; a fresh mtime keeps it for 24 h.
fn seed_aider_home(home: &Path) {
    let caches = home.join(".aider/caches");
    fs::create_dir_all(&caches).expect("create aider's cache dir");
    let venv = crate::support::agents_dir().join("aider-venv/lib");
    let src = fs::read_dir(&venv)
        .expect("read the aider venv's lib dir")
        .filter_map(Result::ok)
        .map(|e| {
            e.path()
                .join("site-packages/litellm/model_prices_and_context_window_backup.json")
        })
        .find(|p| p.exists())
        .expect("litellm's model_prices_and_context_window_backup.json in the aider venv");
    fs::copy(&src, caches.join("model_prices_and_context_window.json"))
        .expect("seed aider's model price cache");
}

fn aider_env(mock: &MockProvider, home: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", home.display().to_string()),
        ("ANTHROPIC_API_BASE", mock.base_url()),
        ("ANTHROPIC_API_KEY", "sk-ant-mock".into()),
        // litellm's own price list: the copy it ships, not a fetch at import.
        ("LITELLM_LOCAL_MODEL_COST_MAP", "True".into()),
    ]
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Rewrites `tests/fixtures/agents/` from real runs of the installed CLIs against the mock.
/// Run with `ORCH_CAPTURE_AGENT_FIXTURES=1 cargo test --test e2e capture_agent_fixtures --
/// --ignored`; takes a few minutes (aider's retries of a 429 take the longest).
#[test]
#[ignore = "rewrites tests/fixtures/agents; run by hand with ORCH_CAPTURE_AGENT_FIXTURES=1"]
fn capture_agent_fixtures() {
    if std::env::var_os("ORCH_CAPTURE_AGENT_FIXTURES").is_none_or(|v| v != "1") {
        announce("capture_agent_fixtures: set ORCH_CAPTURE_AGENT_FIXTURES=1 to rewrite them");
        return;
    }
    assert!(
        require_agents(&["claude", "codex", "aider"]),
        "the CLIs are needed"
    );
    let h = home_dir();
    let mut all: Vec<Captured> = Vec::new();
    let dir = |name: &str| {
        let p = h.path().join(name);
        fs::create_dir_all(&p).expect("create a capture dir");
        p
    };
    let (ch, cw) = (dir("claude-home"), dir("claude-work"));
    let chp = ch.clone();
    let cenv = move |m: &MockProvider| claude_env(m, &chp);

    // --- Claude Code
    let (c, _) = capture(
        "claude-plain.jsonl",
        "claude",
        &claude_args("say hello", &[]),
        &cenv,
        Api::Anthropic,
        vec![Reply::text(
            "Hello from the mock.",
            Usage::new(12, 6).cache(2000, 10000),
        )],
        &cw,
    );
    all.push(c);
    let (c, _) = capture(
        "claude-tool.jsonl",
        "claude",
        &claude_args("run echo hi", &[]),
        &cenv,
        Api::Anthropic,
        vec![
            Reply::claude_bash(
                Some("Let me run it."),
                "echo hi",
                Usage::new(100, 20).cache(300, 400),
            ),
            Reply::text(
                "The command printed hi.",
                Usage::new(150, 30).cache(50, 700),
            ),
        ],
        &cw,
    );
    let sid = first_field(&c.stdout, "session_id");
    all.push(c);
    let (c, mock) = capture(
        "claude-resume.jsonl",
        "claude",
        &claude_args("what did you run?", &["--resume", &sid]),
        &cenv,
        Api::Anthropic,
        vec![Reply::text(
            "I ran echo hi; it printed hi.",
            Usage::new(40, 12).cache(0, 2000),
        )],
        &cw,
    );
    let bodies = mock.bodies(Api::Anthropic);
    assert!(
        bodies
            .first()
            .is_some_and(|b| anthropic_tool_results(b).len() == 1),
        "the resumed session did not replay the earlier tool round trip"
    );
    all.push(c);
    let (c, _) = capture(
        "claude-max-turns.jsonl",
        "claude",
        &claude_args("run echo hi", &["--max-turns", "1"]),
        &cenv,
        Api::Anthropic,
        vec![Reply::claude_bash(
            Some("Let me run it."),
            "echo hi",
            Usage::new(100, 20).cache(300, 400),
        )],
        &cw,
    );
    all.push(c);
    let (c, _) = capture(
        "claude-rate-limit-429.jsonl",
        "claude",
        &claude_args("say hello", &[]),
        &cenv,
        Api::Anthropic,
        vec![Reply::anthropic_rate_limited(30)],
        &cw,
    );
    all.push(c);
    let (c, _) = capture(
        "claude-overloaded-529.jsonl",
        "claude",
        &claude_args("say hello", &[]),
        &cenv,
        Api::Anthropic,
        vec![Reply::anthropic_overloaded()],
        &cw,
    );
    all.push(c);
    // A subagent on another model (haiku): the result's `usage` has the main model's
    // tokens only; `modelUsage` and `total_cost_usd` have both.
    let (c, mock) = capture(
        "claude-subagent.jsonl",
        "claude",
        &claude_args("delegate a greeting", &["--allowedTools", "Agent"]),
        &cenv,
        Api::Anthropic,
        vec![
            Reply::tool(
                Some("Delegating."),
                "toolu_02",
                "Agent",
                json!({"description": "Say hi", "prompt": "Reply with hi.",
                    "subagent_type": "general-purpose", "model": "haiku",
                    "run_in_background": false}),
                Usage::new(100, 20).cache(0, 500),
            ),
            Reply::text("hi", Usage::new(50, 3)),
            Reply::text("The subagent said hi.", Usage::new(200, 10).cache(0, 600)),
        ],
        &cw,
    );
    let models: Vec<String> = mock
        .bodies(Api::Anthropic)
        .iter()
        .map(|b| b["model"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        models.len() == 3 && models[1] != models[0],
        "the subagent did not run on another model: {models:?}"
    );
    all.push(c);
    let chp = ch.clone();
    let (c, _) = capture(
        "claude-retry-then-success.jsonl",
        "claude",
        &claude_args("say hello", &[]),
        move |m: &MockProvider| {
            let mut e = claude_env(m, &chp);
            e.retain(|(k, _)| *k != "CLAUDE_CODE_MAX_RETRIES");
            e.push(("CLAUDE_CODE_MAX_RETRIES", "1".into()));
            e
        },
        Api::Anthropic,
        vec![
            Reply::anthropic_overloaded(),
            Reply::text("Hello after a retry.", Usage::new(12, 6)),
        ],
        &cw,
    );
    all.push(c);
    let chp = ch.clone();
    let (c, _) = capture(
        "claude-usage-limit.jsonl",
        "claude",
        &claude_args("say hello", &[]),
        move |m: &MockProvider| {
            let mut e = claude_env(m, &chp);
            e.retain(|(k, _)| *k != "ANTHROPIC_API_KEY");
            e.push(("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-mock".into()));
            e
        },
        Api::Anthropic,
        vec![Reply::anthropic_usage_limit(now_s() + 3600)],
        &cw,
    );
    all.push(c);

    // --- Codex
    let xh = h.path().join("codex-user-home");
    fs::create_dir_all(&xh).expect("create the codex HOME");
    let xw = dir("codex-work");
    let codex_mock_env = |xh: PathBuf| {
        move |m: &MockProvider| {
            let ch = codex_home(m, &xh);
            codex_env(&ch, &xh)
        }
    };
    let (c, _) = capture(
        "codex-plain.jsonl",
        "codex",
        &codex_args(&["say hello"]),
        codex_mock_env(xh.clone()),
        Api::OpenAi,
        vec![Reply::text(
            "Hello from the mock.",
            Usage::new(5000, 8).cache(0, 4096),
        )],
        &xw,
    );
    all.push(c);
    let (c, _) = capture(
        "codex-tool.jsonl",
        "codex",
        &codex_args(&["run echo hi"]),
        codex_mock_env(xh.clone()),
        Api::OpenAi,
        vec![
            Reply::codex_exec("echo hi", Usage::new(1000, 20).cache(0, 600).reasoning(5)),
            Reply::text(
                "The command printed hi.",
                Usage::new(1200, 30).cache(0, 1000),
            ),
        ],
        &xw,
    );
    let tid = first_field(&c.stdout, "thread_id");
    all.push(c);
    let (c, mock) = capture(
        "codex-resume.jsonl",
        "codex",
        &codex_args(&["resume", &tid, "what did you run?"]),
        codex_mock_env(xh.clone()),
        Api::OpenAi,
        vec![Reply::text(
            "I ran echo hi; it printed hi.",
            Usage::new(1500, 15).cache(0, 1200),
        )],
        &xw,
    );
    assert!(
        mock.bodies(Api::OpenAi)
            .first()
            .is_some_and(|b| openai_tool_outputs(b).len() == 1),
        "the resumed thread did not replay the earlier tool round trip"
    );
    all.push(c);
    let (c, _) = capture(
        "codex-rate-limit-429.jsonl",
        "codex",
        &codex_args(&["say hello"]),
        codex_mock_env(xh.clone()),
        Api::OpenAi,
        vec![Reply::openai_rate_limited(1)],
        &xw,
    );
    all.push(c);
    let (c, _) = capture(
        "codex-usage-limit.jsonl",
        "codex",
        &codex_args(&["say hello"]),
        codex_mock_env(xh.clone()),
        Api::OpenAi,
        vec![Reply::openai_usage_limit(now_s() + 3600)],
        &xw,
    );
    all.push(c);

    // --- aider
    let ah = dir("aider-home");
    seed_aider_home(&ah);
    // Outside the repository: aider looks for a git root from its cwd upwards (even with
    // --no-git) and writes its .aider.*.history files there.
    let aw_dir = crate::support::temp_dir();
    let aw = aw_dir.path().to_path_buf();
    let ahp = ah.clone();
    let (c, _) = capture(
        "aider-plain.txt",
        "aider",
        &aider_args("say hello"),
        move |m: &MockProvider| aider_env(m, &ahp),
        Api::Anthropic,
        vec![Reply::text(
            "Hello from the mock.",
            Usage::new(1200, 6).cache(0, 0),
        )],
        &aw,
    );
    all.push(c);
    // aider retries a 429 with backoff (0.2 s doubling to 32 s, about a minute in all), then
    // gives up and exits 0.
    let ahp = ah.clone();
    let (c, _) = capture(
        "aider-rate-limit-429.txt",
        "aider",
        &aider_args("say hello"),
        move |m: &MockProvider| aider_env(m, &ahp),
        Api::Anthropic,
        (0..12).map(|_| Reply::anthropic_rate_limited(1)).collect(),
        &aw,
    );
    all.push(c);

    write_fixtures(&all);
}

/// Writes each transcript, `manifest.json` (file, exit code, argv, env, mock script) and the
/// README's generated table.
fn write_fixtures(all: &[Captured]) {
    let dir = Path::new(FIXTURES);
    fs::create_dir_all(dir).expect("create the fixtures dir");
    let mut manifest = Vec::new();
    let mut table = String::new();
    for c in all {
        fs::write(dir.join(&c.file), &c.stdout).expect("write a fixture");
        manifest.push(
            json!({"file": c.file, "exit_code": c.exit_code, "argv": c.args,
            "env": c.env, "mock_script": c.script}),
        );
        table.push_str(&format!(
            "### `{}`\n\nexit code {}; `{}`\n\nmock replies, in order:\n\n{}\n\n",
            c.file,
            c.exit_code
                .map_or("none (signal)".into(), |c| c.to_string()),
            c.args.join(" "),
            c.script
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{}. {s}", i + 1))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&Value::Array(manifest)).expect("manifest JSON") + "\n",
    )
    .expect("write manifest.json");
    let version = |cli: &str| {
        std::process::Command::new(agent_cli(cli))
            .arg("--version")
            .env("HOME", std::env::temp_dir())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let readme_path = dir.join("README.md");
    let old = fs::read_to_string(&readme_path).unwrap_or_default();
    let marker = "<!-- generated by capture_agent_fixtures -->";
    let head = old
        .split(marker)
        .next()
        .unwrap_or("")
        .trim_end()
        .to_string();
    fs::write(
        &readme_path,
        format!(
            "{head}\n\n{marker}\n\nCaptured {} with `{}`, `{}`, `{}`.\n\n{table}",
            chrono::Utc::now().format("%Y-%m-%d"),
            version("claude"),
            version("codex"),
            version("aider"),
        )
        .trim_start(),
    )
    .expect("write the fixtures README");
}

/// How a replayed fixture's step should end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Replay {
    /// Once, as the CLI ended (success, or a failure not worth a retry).
    Once,
    /// Refused by a rate limit: waited for in `backoff` without using up a retry (the step
    /// allows one attempt), then the next attempt (the CLI's plain answer) succeeds.
    Waited,
    /// A failure worth a retry: retried after the backoff, and the retry succeeds.
    Retried,
}

/// The reply that follows a refusal in a replay: the CLI's plain answer.
fn plain_fixture(cli: &str) -> &'static str {
    match cli {
        "claude" => "claude-plain.jsonl",
        "codex" => "codex-plain.jsonl",
        _ => "aider-plain.txt",
    }
}

/// Each captured transcript (`tests/fixtures/agents/`, see its README) replayed through orchd
/// by a profile that prints it and exits with the CLI's exit code, its usage read with the
/// CLI's format and compared with what the CLI itself reported, kind by kind, and its outcome
/// checked: error results are failures told apart (max turns not retried, overload retried),
/// and rate limits are waited for without using up a retry, after which the replay prints the
/// CLI's plain answer. The usage limits' resets are moved to a few seconds from now (Codex's,
/// a local time to the minute, in a time zone where the next minute is near); plain 429s wait
/// `rate_limit_wait = "1s"`. Needs no CLI.
#[test]
fn fixtures_replayed_through_orchd() {
    let dir = Path::new(FIXTURES);
    let manifest: Vec<Value> = serde_json::from_str(
        &fs::read_to_string(dir.join("manifest.json")).expect("read manifest.json"),
    )
    .expect("manifest.json is JSON");
    let cases: Vec<(String, String, i64)> = manifest
        .iter()
        .map(|m| {
            (
                m["file"].as_str().expect("file").to_string(),
                m["argv"][0].as_str().expect("argv[0]").to_string(),
                m["exit_code"].as_i64().expect("exit_code"),
            )
        })
        .collect();
    assert!(cases.len() >= 16, "{cases:?}");
    let text = |f: &str| fs::read_to_string(dir.join(f)).expect("read a fixture");
    let scratch = crate::support::temp_dir();
    let (tz, minute_s) = tz_at_second(54);
    let claude_reset_s = now_s() + 3;

    // The fixtures to print: the usage limits' resets moved near.
    let mut printed: Vec<(String, PathBuf)> = Vec::new();
    for (file, _, _) in &cases {
        let mut t = text(file);
        if file == "claude-usage-limit.jsonl" {
            let old = first_field_value(&t, "resetsAt");
            t = t.replace(&old, &claude_reset_s.to_string());
        } else if file == "codex-usage-limit.jsonl" {
            let at = t.find("try again at ").expect("a reset time") + "try again at ".len();
            let old = t[at..].split('.').next().expect("a time").to_string();
            t = t.replace(
                &format!("try again at {old}."),
                &format!("try again at {}.", codex_clock(&tz, minute_s + 1)),
            );
        }
        let path = scratch.path().join(file);
        fs::write(&path, t).expect("write a replayed fixture");
        printed.push((file.clone(), path));
    }
    let path_of = |f: &str| {
        printed
            .iter()
            .find(|(p, _)| p == f)
            .map(|(_, p)| p.display().to_string())
            .expect("a fixture")
    };
    let how = |file: &str| -> Replay {
        if file.contains("usage-limit") || file.contains("429") {
            Replay::Waited
        } else if file.contains("overloaded") {
            Replay::Retried
        } else {
            Replay::Once
        }
    };

    let mut config = format!(
        "rate_limit_wait = \"1s\"\n\n[prices.{m}]\ninput_per_mtok = 1.25\noutput_per_mtok = 10.0\ncached_input_per_mtok = 0.125\n\n{}",
        claude_prices(),
        m = q(CODEX_MODEL)
    );
    let mut plan = String::from("name = \"replay\"\n");
    // Steps: (name, file, cli, exit code, how it should end).
    let mut steps: Vec<(String, String, String, i64, Replay)> = cases
        .iter()
        .map(|(f, cli, code)| {
            let name = f.split('.').next().expect("a name").to_string();
            (name, f.clone(), cli.clone(), *code, how(f))
        })
        .collect();
    // The waits first: they must start before their resets.
    steps.sort_by_key(|s| s.4 != Replay::Waited);
    for (name, file, cli, code, how) in &steps {
        let usage = match cli.as_str() {
            "claude" => "claude-stream-json",
            "codex" => "codex-json",
            _ => "aider",
        };
        let me = path_of(file);
        let script = if *how == Replay::Once {
            format!("cat {me}; exit {code}")
        } else {
            let mark = scratch.path().join(format!("{name}.refused"));
            // The run after the refusal prints the plain transcript as a thread of its
            // own: orchd counts a thread it has seen from its last total, and every
            // replay of one transcript would be the same thread.
            let plain = text(plain_fixture(cli));
            let plain = match cli.as_str() {
                "codex" => {
                    let thread = first_field_value(&plain, "thread_id");
                    plain.replace(&thread, &format!("{thread}-{name}"))
                }
                _ => plain,
            };
            let next = scratch.path().join(format!("{name}.next"));
            fs::write(&next, plain).expect("write the run after a refusal");
            format!(
                "if [ -e {m} ]; then cat {next}; else : > {m}; cat {me}; exit {code}; fi",
                m = mark.display(),
                next = next.display(),
            )
        };
        config.push_str(&format!(
            "\n{}{}",
            profile(name, &["sh".into(), "-c".into(), script], usage, &[]),
            match cli.as_str() {
                "claude" => format!("model = {}\n", q(CLAUDE_MODEL)),
                "codex" => format!("model = {}\n", q(CODEX_MODEL)),
                _ => String::new(),
            }
        ));
        let retry = match how {
            Replay::Retried => "{ max_attempts = 2, initial_backoff = \"100ms\" }",
            // A retry would be allowed, but max turns is not worth one.
            Replay::Once if file.contains("max-turns") => {
                "{ max_attempts = 3, initial_backoff = \"100ms\" }"
            }
            _ => "{ max_attempts = 1 }",
        };
        // The resumed thread after the run that began it, as it was captured.
        let needs = if file == "codex-resume.jsonl" {
            "needs = [\"codex-tool\"]\n"
        } else {
            ""
        };
        plan.push_str(&format!(
            "\n[[steps]]\nid = {n}\nagent = {n}\nprompt = \"replay\"\nretry = {retry}\n{needs}",
            n = q(name)
        ));
    }
    // Known gaps, replayed on purpose:
    // - a Claude profile without `model` (its model in [prices]);
    // - a 429 whose CLI takes longer than rate_limit_wait to exit after saying so.
    config.push_str(&format!(
        "\n{}",
        profile(
            "claude-tool-profile-without-model",
            &[
                "sh".into(),
                "-c".into(),
                format!("cat {}", path_of("claude-tool.jsonl"))
            ],
            "claude-stream-json",
            &[]
        )
    ));
    let mark = scratch.path().join("slow-exit.refused");
    config.push_str(&format!(
        "\n{}",
        profile(
            "claude-rate-limit-429-slow-exit",
            &[
                "sh".into(),
                "-c".into(),
                format!(
                    "if [ -e {m} ]; then cat {next}; else : > {m}; cat {me}; sleep 1.5; exit 1; fi",
                    m = mark.display(),
                    next = path_of("claude-plain.jsonl"),
                    me = path_of("claude-rate-limit-429.jsonl"),
                )
            ],
            "claude-stream-json",
            &[]
        )
    ));
    for extra in [
        "claude-tool-profile-without-model",
        "claude-rate-limit-429-slow-exit",
    ] {
        plan.push_str(&format!(
            "\n[[steps]]\nid = {n}\nagent = {n}\nprompt = \"replay\"\nretry = {{ max_attempts = 1 }}\n",
            n = q(extra)
        ));
    }

    let d = daemon_in_tz(&config, Some(&tz));
    let p = d.write_file("replay.toml", &plan);
    let out = d.ctl(&["submit", "--clean-env", "--wait", &p.display().to_string()]);
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(!id.is_empty(), "{}\n{}", describe(&out), d.log_text());
    let v = d.status(&id);
    let events = d.events(&id);

    // What each CLI reported for this run, by kind (Codex: priced here as orch does).
    let codex_cost = |k: Kinds| {
        k.cost((k.input as f64 * 1.25 + k.cache_read as f64 * 0.125 + k.output as f64 * 10.0) / 1e6)
    };
    let account = |file: &str, cli: &str| -> Kinds {
        let t = text(file);
        match cli {
            "claude" => claude_this_run(&claude_result(&t)),
            "codex" if t.contains("\"turn.completed\"") => {
                let mut k = codex_thread_total(&t);
                // A resumed thread's totals include the runs before it (same thread_id).
                let tid = first_field(&t, "thread_id");
                for (other, ocli, _) in &cases {
                    let o = text(other);
                    if other != file
                        && ocli == "codex"
                        && !other.contains("resume")
                        && file.contains("resume")
                        && o.contains("\"turn.completed\"")
                        && first_field(&o, "thread_id") == tid
                    {
                        let before = codex_thread_total(&o);
                        k.input -= before.input;
                        k.cache_read -= before.cache_read;
                        k.cache_write -= before.cache_write;
                        k.output -= before.output;
                    }
                }
                codex_cost(k)
            }
            "codex" => Kinds::default().cost(0.0),
            _ => match t.lines().find(|l| l.starts_with("Tokens: ")) {
                Some(line) => {
                    assert!(
                        line.contains("1.2k sent, 6 received. Cost: $0.0037 message"),
                        "{file}: {line}"
                    );
                    Kinds::new(1200, 0, 0, 6).cost(0.0037)
                }
                None => Kinds::default().cost(0.0),
            },
        }
    };

    for (name, file, cli, _, how) in &steps {
        let s = crate::support::step(&v, name);
        let a = attempts(s);
        let mine: Vec<&Value> = events.iter().filter(|e| e["step_id"] == *name).collect();
        let retries: Vec<&&Value> = mine
            .iter()
            .filter(|e| e["kind"] == "retry_scheduled")
            .collect();
        let t = text(file);
        let want = account(file, cli);
        // The session (Claude) or thread (Codex) the transcript names.
        let session = match cli.as_str() {
            "claude" => json_lines(&t)
                .iter()
                .find_map(|l| l["session_id"].as_str().map(str::to_string)),
            "codex" => json_lines(&t)
                .iter()
                .find_map(|l| l["thread_id"].as_str().map(str::to_string)),
            _ => None,
        };
        if let Some(sid) = &session {
            assert_eq!(a[0]["session_id"], sid.as_str(), "{file}: {}", a[0]);
        }
        match how {
            Replay::Once if file.contains("resume") && cli == "codex" => {
                assert_eq!(s["state"], "succeeded", "{file}: {s}");
                let got = recorded(&a[0]);
                // Its turn.completed is the thread's total, codex-tool.jsonl's run included;
                // orchd saw that run first and counts only this one.
                assert_kinds(&format!("replay {file}"), got, want);
            }
            Replay::Once => {
                assert_eq!(a.len(), 1, "{file}: one attempt: {s}");
                let (state, outcome) = if t.contains("error_max_turns") {
                    ("failed", "exit_failure")
                } else {
                    ("succeeded", "success")
                };
                assert_eq!(
                    (s["state"].as_str(), a[0]["outcome"].as_str()),
                    (Some(state), Some(outcome)),
                    "{file}: {s}"
                );
                if state == "failed" {
                    let m = s["message"].as_str().unwrap_or("");
                    assert!(
                        m.contains("max turns reached: Reached maximum number of turns (1)")
                            && m.contains("not retried"),
                        "{file}: {m}"
                    );
                }
                assert_kinds(&format!("replay {file}"), recorded(&a[0]), want);
                let (count, sum) = usage_events(&events, name, 1);
                assert_kinds(&format!("replay {file}: usage events"), sum, want);
                if cli == "claude" && want.input + want.cache_read + want.cache_write > 0 {
                    let calls = json_lines(&t)
                        .iter()
                        .filter(|l| l["type"] == "assistant")
                        .filter_map(|l| l["message"]["id"].as_str().map(str::to_string))
                        .collect::<std::collections::BTreeSet<_>>()
                        .len();
                    assert!(
                        count > calls,
                        "{file}: an estimate per call, then the result: {count}"
                    );
                }
            }
            Replay::Retried => {
                assert_eq!(s["state"], "succeeded", "{file}: {s}");
                assert_eq!(a.len(), 2, "{file}: {s}");
                assert!(
                    a[0]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("provider overloaded or failing")),
                    "{file}: {}",
                    a[0]
                );
                assert_eq!(retries.len(), 1, "{file}: {mine:?}");
                assert!(
                    !mine.iter().any(|e| e["kind"] == "step_state"
                        && e["message"] == "rate limited by the provider; waiting for the reset"),
                    "{file}: not a rate limit: {mine:?}"
                );
                assert_kinds(&format!("replay {file}"), recorded(&a[0]), want);
                let plain = plain_fixture(cli);
                assert_kinds(
                    &format!("replay {file}, then {plain}"),
                    recorded(&a[1]),
                    account(plain, cli),
                );
            }
            Replay::Waited => {
                assert_eq!(
                    s["state"], "succeeded",
                    "{file}: one attempt allowed, the refused one must not count: {s}"
                );
                assert_eq!(a.len(), 2, "{file}: {s}");
                // Claude's error results are told apart in the message; Codex's failed turn
                // is quoted as it is.
                // aider gives up on a 429 after its own retries and exits 0: its output
                // ending on the provider's refusal makes it a failure all the same.
                let why = match cli.as_str() {
                    "claude" => "rate limited: ",
                    "codex" => "the agent said: ",
                    _ => "aider gave up: The API provider has rate limited you",
                };
                assert!(
                    a[0]["message"].as_str().is_some_and(|m| m.contains(why)),
                    "{file}: {}",
                    a[0]
                );
                assert_eq!(retries.len(), 1, "{file}: {mine:?}");
                assert!(
                    mine.iter().any(|e| e["kind"] == "step_state"
                        && e["state"] == "backoff"
                        && e["message"] == "rate limited by the provider; waiting for the reset"),
                    "{file}: {mine:?}"
                );
                let due = rfc3339(&retries[0]["due_at"], "due_at").timestamp_millis();
                let delay = retries[0]["delay_ms"].as_u64().unwrap_or(0);
                match file.as_str() {
                    "claude-usage-limit.jsonl" => {
                        assert_eq!(due, claude_reset_s * 1000, "{file}: until resetsAt")
                    }
                    "codex-usage-limit.jsonl" => {
                        assert_eq!(due, minute_s * 1000, "{file}: until the named minute")
                    }
                    _ => assert!(
                        delay > 0 && delay <= 1000,
                        "{file}: rate_limit_wait: {}",
                        retries[0]
                    ),
                }
                assert_kinds(&format!("replay {file}"), recorded(&a[0]), want);
                let plain = plain_fixture(cli);
                assert_kinds(
                    &format!("replay {file}, then {plain}"),
                    recorded(&a[1]),
                    account(plain, cli),
                );
            }
        }
    }

    let s = crate::support::step(&v, "claude-tool-profile-without-model");
    let got = recorded(&attempts(s)[0]);
    let want = account("claude-tool.jsonl", "claude");
    assert_fixed(
        "replay claude-tool.jsonl by a profile without `model` (claude-sonnet-4-5 in [prices]): \
         the estimate's cost, priced by the daemon, is added to the result's costUSD",
        got.matches(&want),
        got.cost,
        want.cost,
    );
    let s = crate::support::step(&v, "claude-rate-limit-429-slow-exit");
    let outcomes: Vec<&str> = attempts(s)
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_fixed(
        "replay claude-rate-limit-429.jsonl, exit 1.5 s after the 429 with rate_limit_wait = 1s: \
         the wait, counted from the error line, is over at the exit, so it is an ordinary \
         failure (a retry used, here the step failed)",
        outcomes == ["exit_failure", "success"],
        (s["state"].as_str(), &outcomes),
        (Some("succeeded"), ["exit_failure", "success"]),
    );
}

/// The first value of `key` (a number or a string) on any line of `stdout`, as text.
fn first_field_value(stdout: &str, key: &str) -> String {
    fn find(v: &Value, key: &str) -> Option<String> {
        match v {
            Value::Object(m) => m
                .get(key)
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .or_else(|| m.values().find_map(|x| find(x, key))),
            Value::Array(a) => a.iter().find_map(|x| find(x, key)),
            _ => None,
        }
    }
    json_lines(stdout)
        .iter()
        .find_map(|v| find(v, key))
        .unwrap_or_else(|| panic!("no {key} in\n{stdout}"))
}

// ------------------------------------------------------------------ resumed retries, budgets

/// Whether `command` (an attempt's argv) has `args` in a row.
fn has_args(command: &Value, args: &[&str]) -> bool {
    let c: Vec<&str> = command
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    c.windows(args.len()).any(|w| w == args)
}

/// A rate limit after the session started: attempt 1's first call asks for a tool, its second
/// gets a 429 (Claude Code ends with an error result naming the session and exits 1). orch
/// waits `rate_limit_wait` without using up a retry, and attempt 2 runs with the profile's
/// `resume = ["--resume", "{session_id}"]`: the mock's first request of attempt 2 replays the
/// tool round trip, and both attempts name the same session.
#[test]
fn claude_rate_limit_then_resume_of_the_same_session_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(Some("Let me run it."), "echo hi", Usage::new(100, 20)),
        Reply::anthropic_rate_limited(30),
        Reply::text("The command printed hi.", Usage::new(150, 30)),
    ]);
    let home = home_dir();
    let d = daemon(&format!(
        "rate_limit_wait = \"2s\"\n\n{}resume = [\"--resume\", \"{{session_id}}\"]\n",
        profile(
            "claude",
            &claude_argv(&[]),
            "claude-stream-json",
            &claude_env(&mock, home.path()),
        )
    ));
    let v = run_agent(&d, "claude", "run echo hi", &[]);
    let first = stdout_of_attempt(&d, &v, Some(1));
    let result = claude_result(&first);
    assert_eq!(result["api_error_status"], 429, "{result}");
    assert_waited_then_succeeded(&d, &v);
    let a = attempts(&v["steps"][0]);
    let sid = a[0]["session_id"].as_str().unwrap_or_default();
    assert!(!sid.is_empty(), "attempt 1 names its session: {}", a[0]);
    assert_eq!(result["session_id"], sid, "{result}");
    assert_eq!(a[1]["session_id"], sid, "attempt 2 continues it: {}", a[1]);
    assert!(
        !has_args(&a[0]["command"], &["--resume"]),
        "attempt 1 starts fresh: {}",
        a[0]["command"]
    );
    assert!(
        has_args(&a[1]["command"], &["--resume", sid]),
        "attempt 2 resumes: {}",
        a[1]["command"]
    );
    let bodies = mock.bodies(Api::Anthropic);
    assert_eq!(bodies.len(), 3);
    assert_eq!(
        anthropic_tool_results(&bodies[2]).len(),
        1,
        "attempt 2's first request replays the tool round trip: {}",
        bodies[2]["messages"]
    );
    assert_eq!(
        claude_result(&stdout_of_attempt(&d, &v, Some(2)))["session_id"],
        sid
    );
}

/// An agent killed with SIGKILL mid-run (its Bash tool runs `perl -e "sleep 30"`, after the
/// session started; Claude Code refuses a plain long `sleep`): the step is retried, and the retry runs with `--resume SESSION`, continuing the
/// same session (the mock's first request of attempt 2 carries the killed turn's tool call).
#[test]
fn claude_kill_9_then_retry_resumes_the_session_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(
            Some("Let me wait."),
            "perl -e \"sleep 30\"",
            Usage::new(100, 20),
        ),
        Reply::text("I was interrupted; nothing ran.", Usage::new(150, 30)),
    ]);
    let home = home_dir();
    let d = daemon(&format!(
        "{}resume = [\"--resume\", \"{{session_id}}\"]\n",
        profile(
            "claude",
            &claude_argv(&[]),
            "claude-stream-json",
            &claude_env(&mock, home.path()),
        )
    ));
    let id = d.submit(
        &[
            "--clean-env",
            "--retries",
            "1",
            "--agent",
            "claude",
            "--prompt",
            "wait a while",
        ],
        0,
    );
    d.wait_until(
        &id,
        "attempt 1 running with a session",
        Duration::from_secs(30),
        |o| {
            o.steps
                .first()
                .and_then(|s| s.attempts.first())
                .is_some_and(|a| a.pid.is_some() && !a.session_id.is_empty())
        },
    );
    // The tool call was requested: the CLI is in its 30 s sleep.
    poll_until("the tool call requested", Duration::from_secs(20), || {
        (mock.bodies(Api::Anthropic).len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = d.status(&id);
    let a0 = &attempts(&before["steps"][0])[0];
    let sid = a0["session_id"].as_str().unwrap_or_default().to_string();
    let pid = u32::try_from(a0["pid"].as_u64().expect("pid")).expect("pid fits u32");
    // SAFETY: kill(2) on the agent's pid, which this test's daemon started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
    let v = d.wait_ended(&id, Duration::from_secs(30));
    assert_eq!(v["state"], "succeeded", "{v}\n{}", d.log_text());
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 2, "{v}");
    assert_eq!(a[0]["signal"], 9, "attempt 1 died of SIGKILL: {}", a[0]);
    assert_eq!(a[0]["outcome"], "signaled", "{}", a[0]);
    assert_eq!(a[1]["outcome"], "success", "{v}");
    assert_eq!(a[0]["session_id"], sid.as_str(), "{v}");
    assert_eq!(
        a[1]["session_id"],
        sid.as_str(),
        "the retry continues it: {v}"
    );
    assert!(
        !has_args(&a[0]["command"], &["--resume"]),
        "{}",
        a[0]["command"]
    );
    assert!(
        has_args(&a[1]["command"], &["--resume", &sid]),
        "the retry resumes: {}",
        a[1]["command"]
    );
    let bodies = mock.bodies(Api::Anthropic);
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let history = bodies[1]["messages"].to_string();
    assert!(
        history.contains("toolu_01") && history.contains("sleep 30"),
        "attempt 2's first request carries the killed turn: {history}"
    );
    assert_eq!(
        claude_result(&stdout_of_attempt(&d, &v, Some(2)))["session_id"],
        sid.as_str()
    );
}

/// A budget that stops a run in progress: the objective may spend $0.01, and Claude Code's
/// first call (20,000 tokens in, $0.06 at `[prices]`) asks for a 10 s tool run. orch's running
/// estimate of that call passes the budget, so the attempt is stopped (`budget_exceeded`)
/// before the CLI prints its result, and the objective fails with the budget's message.
#[test]
fn claude_budget_stops_the_run_in_progress_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(
            Some("Let me wait."),
            "perl -e \"sleep 10\"",
            Usage::new(20_000, 100),
        ),
        Reply::text("Done waiting.", Usage::new(20_000, 100)),
    ]);
    let home = home_dir();
    let d = daemon(&format!(
        "{}\n{}",
        claude_prices(),
        profile(
            "claude",
            &claude_argv(&[]),
            "claude-stream-json",
            &claude_env(&mock, home.path()),
        )
    ));
    let started = std::time::Instant::now();
    let v = run_agent(
        &d,
        "claude",
        "wait a while",
        &["--retries", "2", "--budget-usd", "0.01"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the run was not stopped at the budget (its tool sleeps 10 s): {v}"
    );
    assert_eq!(v["state"], "failed", "{v}\n{}", d.log_text());
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 1, "budget_exceeded is not retried: {v}");
    assert_eq!(a[0]["outcome"], "budget_exceeded", "{v}");
    let out = stdout_of(&d, &v);
    let lines = json_lines(&out);
    assert!(
        lines.iter().any(|l| l["type"] == "assistant"),
        "the CLI ran its first call: {out}"
    );
    assert!(
        !lines.iter().any(|l| l["type"] == "result"),
        "stopped before the CLI's result: {out}"
    );
    let message = v["steps"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("objective budget of $0.01 exhausted: used $"),
        "{message}\n{v}"
    );
    let cost = recorded(&a[0]).cost.unwrap_or(0.0);
    assert!(
        (cost - 0.06).abs() < 1e-9,
        "the running estimate of the first call (20,000 in at $3/Mtok): {}",
        a[0]
    );
    assert_eq!(
        v["message"], "objective budget of $0.01 exhausted: used $0.0600 ($0.0500 over)",
        "{v}"
    );
    assert_eq!(a[0]["message"], "stopped: the budget is exhausted", "{v}");
    assert_eq!(mock.bodies(Api::Anthropic).len(), 1);
}

/// A rate limit after the thread started: attempt 1's first call runs a tool, its second gets
/// a 429 (Codex prints `turn.failed` after naming its thread, and exits 1). orch waits
/// `rate_limit_wait` without using up a retry, and attempt 2 runs the profile's
/// `resume_command` (`codex exec ... resume {session_id} -`): the mock's first request of
/// attempt 2 replays the tool round trip, both attempts name the same thread, and attempt 2
/// counts only what it added to the thread.
#[test]
fn codex_rate_limit_then_resume_of_the_same_thread_under_orchd() {
    if !require_agents(&["codex"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.openai([
        Reply::codex_exec("echo hi", Usage::new(1000, 20).cache(0, 600)),
        Reply::openai_rate_limited(1),
        Reply::text(
            "The command printed hi.",
            Usage::new(1500, 15).cache(0, 1200),
        ),
    ]);
    let home = home_dir();
    let ch = codex_home(&mock, home.path());
    let d = daemon(&format!(
        "rate_limit_wait = \"2s\"\n\n{}resume_command = {}\n",
        profile(
            "codex",
            &codex_argv(&["-"]),
            "codex-json",
            &codex_env(&ch, home.path())
        ),
        argv(&codex_argv(&["resume", "{session_id}", "-"])),
    ));
    let v = run_agent(&d, "codex", "run echo hi", &[]);
    assert_waited_then_succeeded(&d, &v);
    let a = attempts(&v["steps"][0]);
    let sid = a[0]["session_id"].as_str().unwrap_or_default();
    assert!(!sid.is_empty(), "attempt 1 names its thread: {}", a[0]);
    assert_eq!(a[1]["session_id"], sid, "attempt 2 continues it: {}", a[1]);
    assert!(
        !has_args(&a[0]["command"], &["resume"]),
        "attempt 1 starts fresh: {}",
        a[0]["command"]
    );
    assert!(
        has_args(&a[1]["command"], &["resume", sid, "-"]),
        "attempt 2 resumes: {}",
        a[1]["command"]
    );
    let bodies = mock.bodies(Api::OpenAi);
    assert_eq!(bodies.len(), 3);
    assert_eq!(
        openai_tool_outputs(&bodies[2]).len(),
        1,
        "attempt 2's first request replays the tool round trip"
    );
    // Codex reports usage only when a turn completes: attempt 1's turn failed, so its call
    // (1000 in, 600 cached, 20 out) is first reported in attempt 2's `turn.completed`, the
    // thread's totals (2500 in, 1800 cached, 35 out). Counted once, on attempt 2.
    let out = stdout_of_attempt(&d, &v, Some(2));
    let thread = Kinds::new(700, 1800, 0, 35);
    assert_eq!(codex_thread_total(&out), thread, "{out}");
    assert_kinds(
        "the rate-limited attempt",
        recorded(&a[0]),
        Kinds::default(),
    );
    assert_kinds("the resumed attempt", recorded(&a[1]), thread);
    assert_kinds("the step", recorded(&v["steps"][0]), thread);
}

/// Codex killed with SIGKILL mid-run (its tool runs `perl -e "sleep 30"`, after the thread
/// started): the step is retried, and the retry runs the profile's `resume_command`,
/// continuing the same thread (the mock's first request of attempt 2 carries the killed
/// turn's tool call).
#[test]
fn codex_kill_9_then_retry_resumes_the_thread_under_orchd() {
    if !require_agents(&["codex"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.openai([
        Reply::codex_exec(
            "touch tool.started && perl -e \"sleep 30\"",
            Usage::new(1000, 20),
        ),
        Reply::text("I was interrupted; nothing ran.", Usage::new(1500, 15)),
    ]);
    let home = home_dir();
    let ch = codex_home(&mock, home.path());
    let d = daemon(&format!(
        "{}resume_command = {}\n",
        profile(
            "codex",
            &codex_argv(&["-"]),
            "codex-json",
            &codex_env(&ch, home.path())
        ),
        argv(&codex_argv(&["resume", "{session_id}", "-"])),
    ));
    let id = d.submit(
        &[
            "--clean-env",
            "--retries",
            "1",
            "--agent",
            "codex",
            "--prompt",
            "wait a while",
        ],
        0,
    );
    // The tool runs (its marker file is there) and orch has read the thread's id.
    let marker = d.work_dir().join("tool.started");
    let before = poll_until("the tool running", Duration::from_secs(20), || {
        let v = d.status(&id);
        let named = v["steps"][0]["attempts"][0]["session_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty());
        (marker.exists() && named).then_some(v)
    });
    let a0 = &attempts(&before["steps"][0])[0];
    assert!(a0["ended_at"].is_null(), "still running: {a0}");
    let sid = a0["session_id"].as_str().unwrap_or_default().to_string();
    let pid = u32::try_from(a0["pid"].as_u64().expect("pid")).expect("pid fits u32");
    // SAFETY: kill(2) on the agent's pid, which this test's daemon started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
    let v = d.wait_ended(&id, Duration::from_secs(30));
    assert_eq!(v["state"], "succeeded", "{v}\n{}", d.log_text());
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 2, "{v}");
    assert_eq!(a[0]["signal"], 9, "attempt 1 died of SIGKILL: {}", a[0]);
    assert_eq!(a[0]["outcome"], "signaled", "{}", a[0]);
    assert_eq!(a[1]["outcome"], "success", "{v}");
    assert_eq!(a[0]["session_id"], sid.as_str(), "{v}");
    assert_eq!(
        a[1]["session_id"],
        sid.as_str(),
        "the retry continues it: {v}"
    );
    assert!(
        has_args(&a[1]["command"], &["resume", &sid, "-"]),
        "the retry resumes: {}",
        a[1]["command"]
    );
    let bodies = mock.bodies(Api::OpenAi);
    assert_eq!(bodies.len(), 2);
    let history = bodies[1]["input"].to_string();
    assert!(
        history.contains("call_1") && history.contains("sleep 30"),
        "attempt 2's first request carries the killed turn: {history}"
    );
}

/// `orchctl retry --fresh ID` starts a new session even though the profile says how to
/// resume: attempt 1 runs a tool, then a 401 fails the objective (not retried); the fresh
/// retry runs without `--resume`, sends no history, and names a new session.
#[test]
fn claude_retry_fresh_starts_a_new_session_under_orchd() {
    if !require_agents(&["claude"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.anthropic([
        Reply::claude_bash(Some("Let me run it."), "echo hi", Usage::new(100, 20)),
        Reply::error(
            401,
            &[],
            json!({"type": "error", "error": {"type": "authentication_error",
                "message": "invalid x-api-key"}, "request_id": "req_mock_401"}),
        ),
        Reply::text("Hello from a new session.", Usage::new(12, 6)),
    ]);
    let home = home_dir();
    let d = daemon(&format!(
        "{}resume = [\"--resume\", \"{{session_id}}\"]\n",
        profile(
            "claude",
            &claude_argv(&[]),
            "claude-stream-json",
            &claude_env(&mock, home.path()),
        )
    ));
    let v = run_agent(&d, "claude", "run echo hi", &[]);
    assert_eq!(v["state"], "failed", "{v}");
    let sid = only_attempt(&v)["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!sid.is_empty(), "{v}");
    let id = v["id"].as_str().expect("id");
    let out = d.ctl(&["retry", "--fresh", id]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(id, Duration::from_secs(30));
    assert_eq!(v["state"], "succeeded", "{v}\n{}", d.log_text());
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 2, "{v}");
    assert!(
        !has_args(&a[1]["command"], &["--resume"]),
        "a fresh retry does not resume: {}",
        a[1]["command"]
    );
    let new = a[1]["session_id"].as_str().unwrap_or_default();
    assert!(!new.is_empty() && new != sid, "a new session: {}", a[1]);
    let bodies = mock.bodies(Api::Anthropic);
    assert_eq!(bodies.len(), 3);
    assert!(
        anthropic_tool_results(&bodies[2]).is_empty(),
        "no history in the fresh session: {}",
        bodies[2]["messages"]
    );
}

/// A budget with Codex: Codex reports usage only when its turn completes (no per-call
/// usage in `exec --json`), so orch's estimate cannot stop it mid-run as it does Claude Code.
/// Its `turn.completed` (40,000 in, 200 out: $0.123 at `[prices]` for the profile's `model`)
/// passes the $0.01 budget: the attempt is stopped there (`budget_exceeded`) and the
/// objective fails with the budget's message.
#[test]
fn codex_budget_is_reached_at_turn_completed_under_orchd() {
    if !require_agents(&["codex"]) {
        return;
    }
    let mock = MockProvider::start();
    mock.openai([
        Reply::codex_exec("echo hi", Usage::new(20_000, 100)),
        Reply::text("Done.", Usage::new(20_000, 100)),
    ]);
    let home = home_dir();
    let ch = codex_home(&mock, home.path());
    let d = daemon(&format!(
        "[prices.{}]\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\n\n{}model = {}\n",
        q(CODEX_MODEL),
        profile(
            "codex",
            &codex_argv(&["-"]),
            "codex-json",
            &codex_env(&ch, home.path())
        ),
        q(CODEX_MODEL),
    ));
    let v = run_agent(&d, "codex", "run echo hi", &["--budget-usd", "0.01"]);
    assert_eq!(v["state"], "failed", "{v}\n{}", d.log_text());
    let a = only_attempt(&v);
    assert_eq!(a["outcome"], "budget_exceeded", "{v}");
    assert_eq!(a["message"], "stopped: the budget is exhausted", "{v}");
    assert_eq!(
        v["message"], "objective budget of $0.01 exhausted: used $0.1230 ($0.1130 over)",
        "{v}"
    );
    assert_kinds(
        "the stopped attempt",
        recorded(a),
        Kinds::new(40_000, 0, 0, 200).cost(0.123),
    );
    let out = stdout_of(&d, &v);
    assert!(
        json_lines(&out)
            .iter()
            .any(|l| l["type"] == "turn.completed"),
        "the budget was reached by the turn's usage: {out}"
    );
    // Both calls were made (the mock records a request once its connection is done).
    poll_until("both calls recorded", Duration::from_secs(5), || {
        (mock.bodies(Api::OpenAi).len() == 2).then_some(())
    });
}
