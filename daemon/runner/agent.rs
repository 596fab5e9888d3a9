//! How agent output is read: the usage format of a profile (`UsageFormat`), the stdout
//! line reader (`LineParser`), and what lines say (`AgentLine`): `::orch-*::` protocol
//! lines; Claude Code stream-json (every line read as JSON, whatever the key order: the
//! session, per-call usage as a running estimate, the final `result` per model, error
//! results and rate limits); Codex `exec --json` (the thread, cumulative `turn.completed`
//! usage, failed turns and usage limits); aider's `Tokens: … Cost: …` lines.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Local, NaiveTime, TimeZone};

pub use crate::model::FailureClass;
use crate::model::Usage;

/// How an agent reports usage on stdout (the profile's `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageFormat {
    /// Only `::orch-*::` lines.
    #[default]
    OrchLines,
    /// Claude Code `--output-format stream-json`: the `result` event is authoritative.
    ClaudeStreamJson,
    /// Codex `exec --json`: `turn.completed` usage, cumulative per thread.
    CodexJson,
    /// aider: `Tokens: 1.2k sent, 50 received. Cost: $0.00013 message, $0.0002 session.`
    Aider,
}

impl UsageFormat {
    pub fn from_name(name: &str) -> UsageFormat {
        match name {
            "claude-stream-json" => UsageFormat::ClaudeStreamJson,
            "codex-json" => UsageFormat::CodexJson,
            "aider" => UsageFormat::Aider,
            _ => UsageFormat::OrchLines,
        }
    }

    /// Whether a line starting with `start` may be one this format reads.
    fn wants(self, start: &[u8]) -> bool {
        let prefixes: &[&[u8]] = match self {
            UsageFormat::OrchLines => &[PREFIX],
            UsageFormat::ClaudeStreamJson | UsageFormat::CodexJson => &[PREFIX, b"{"],
            UsageFormat::Aider => &[
                PREFIX,
                b"Tokens: ",
                b"Retrying in ",
                AIDER_RATE_LIMITED.as_bytes(),
                AIDER_AUTH.as_bytes(),
                AIDER_DOWN.as_bytes(),
            ],
        };
        prefixes.iter().any(|p| {
            if start.len() <= p.len() {
                p.starts_with(start)
            } else {
                start.starts_with(p)
            }
        })
    }

    fn json(self) -> bool {
        matches!(self, UsageFormat::ClaudeStreamJson | UsageFormat::CodexJson)
    }
}

/// The `[prices]` table and a profile's model, for pricing what an agent reports as it
/// goes.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    pub table: std::sync::Arc<std::collections::BTreeMap<String, crate::config::Price>>,
    /// The profile's `model`, when a model has no entry of its own.
    pub model: String,
}

impl Prices {
    /// The price of `model`, else of the profile's model.
    fn of(&self, model: &str) -> Option<&crate::config::Price> {
        self.table
            .get(model)
            .or_else(|| self.table.get(&self.model))
    }
}

/// Reads agent lines from stdout chunks: keeps only lines that may be something the
/// format reads (bounded), and turns cumulative or final totals into deltas, so that the
/// usage lines of an attempt always add up to what the agent reported last.
pub struct LineParser {
    format: UsageFormat,
    line: Vec<u8>,
    skipping: bool,
    /// What was reported so far, per model (deltas are taken against it).
    seen: BTreeMap<String, Usage>,
    /// Claude message ids already counted in the running estimate (a message's usage is
    /// repeated on each of its content blocks).
    messages: HashSet<String>,
    /// The prices, for the running estimate's cost.
    prices: Prices,
    /// A rejected `rate_limit_event`'s reset, for the error result that follows it.
    reset_ms: Option<i64>,
    /// The wall clock, for "try again at 3:28 PM" (a seam for tests).
    now: fn() -> DateTime<Local>,
    /// Where a thread's last running total is kept across attempts and objectives.
    threads: Option<Threads>,
    /// The thread this attempt runs (Codex `thread.started`).
    thread: Option<String>,
    /// aider's last provider error not followed by its own retry or a reply: if the
    /// output ends on it, aider gave up (and exits 0 all the same).
    aider_error: Option<(FailureClass, String)>,
    /// Journal mode (the shim executor): the lines the format may read are appended to
    /// this file, whole and unparsed, for orchd to parse; nothing is parsed here.
    journal: Option<std::fs::File>,
}

/// What aider prints when the provider refuses it; each is followed by `Retrying in …`
/// while aider still retries by itself.
const AIDER_RATE_LIMITED: &str = "The API provider has rate limited you";
const AIDER_AUTH: &str = "The API provider is not able to authenticate you";
const AIDER_DOWN: &str = "The API provider's servers are down or overloaded";

/// Keeps each agent thread's last reported running total (Codex `turn.completed` is the
/// thread's total so far), so that a thread resumed later, by any attempt of any
/// objective, is counted from where it was and not from zero.
pub trait ThreadTotals: Send + Sync {
    fn get(&self, thread: &str) -> Option<Usage>;
    fn put(&self, thread: &str, total: &Usage);
}

/// A shared [`ThreadTotals`] (the daemon's store).
#[derive(Clone)]
pub struct Threads(pub std::sync::Arc<dyn ThreadTotals>);

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Threads")
    }
}

impl LineParser {
    pub fn new(format: UsageFormat) -> LineParser {
        LineParser {
            format,
            line: Vec::new(),
            skipping: false,
            seen: BTreeMap::new(),
            messages: HashSet::new(),
            prices: Prices::default(),
            reset_ms: None,
            now: Local::now,
            threads: None,
            thread: None,
            aider_error: None,
            journal: None,
        }
    }

    /// Takes the thread totals out (to replay lines already counted without them).
    pub fn take_threads(&mut self) -> Option<Threads> {
        self.threads.take()
    }

    /// Journal mode: complete lines the format may read go to `journal` (appended whole,
    /// one write each) instead of being parsed; `feed` and `finish` then return only
    /// notes about over-long lines.
    pub fn with_journal(mut self, journal: Option<std::fs::File>) -> LineParser {
        self.journal = journal;
        self
    }

    /// Reads and keeps thread totals in `threads` (Codex).
    pub fn with_threads(mut self, threads: Option<Threads>) -> LineParser {
        self.threads = threads;
        self
    }

    /// Counts a resumed session's running totals (Codex `turn.completed`) from what it
    /// had used before this attempt.
    pub fn with_session_usage(mut self, before: Option<Usage>) -> LineParser {
        if let (UsageFormat::CodexJson, Some(u)) = (self.format, before) {
            self.seen
                .insert(String::new(), Usage { cost_usd: 0.0, ..u });
        }
        self
    }

    /// Prices the running estimate (Claude's per-call usage) from `prices`.
    pub fn with_prices(mut self, prices: Prices) -> LineParser {
        self.prices = prices;
        self
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
                if !self.format.wants(&self.line) {
                    self.skipping = true;
                    self.line.clear();
                } else if self.line.len() > MAX_PROTOCOL_LINE {
                    // JSON events this long are tool results and the like, not usage.
                    if !self.format.json() || self.line.starts_with(PREFIX) {
                        out.push(AgentLine::Malformed(format!(
                            "protocol line longer than {MAX_PROTOCOL_LINE} bytes ignored"
                        )));
                    }
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

    /// The last line, when the stream ended without a newline, and what the end of the
    /// output means (aider's output ending on a provider error: it gave up).
    pub fn finish(&mut self) -> Vec<AgentLine> {
        let mut out = Vec::new();
        self.finish_line(&mut out);
        if let Some((class, said)) = self.aider_error.take() {
            if class == FailureClass::RateLimited {
                out.push(AgentLine::RateLimited { until_ms: None });
            }
            out.push(AgentLine::Failed {
                class,
                message: format!("aider gave up: {said}"),
            });
        }
        out
    }

    fn finish_line(&mut self, out: &mut Vec<AgentLine>) {
        if let Some(journal) = &mut self.journal {
            if !self.skipping && !self.line.is_empty() {
                self.line.push(b'\n');
                if let Err(e) = std::io::Write::write_all(journal, &self.line) {
                    tracing::error!(error = %e, "cannot append to the protocol journal; a protocol line is lost");
                }
            }
            self.line.clear();
            self.skipping = false;
            return;
        }
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
        match self.format {
            UsageFormat::Aider => return self.aider(text),
            UsageFormat::OrchLines => return Vec::new(),
            _ => {}
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return Vec::new();
        };
        match self.format {
            UsageFormat::ClaudeStreamJson => self.claude(&v),
            UsageFormat::CodexJson => self.codex(&v),
            _ => Vec::new(),
        }
    }

    fn claude(&mut self, v: &serde_json::Value) -> Vec<AgentLine> {
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let subtype = v.get("subtype").and_then(|t| t.as_str()).unwrap_or("");
        match kind {
            "system" if subtype == "init" => session_of(v, "session_id").into_iter().collect(),
            "assistant" => self.claude_estimate(v).into_iter().collect(),
            "rate_limit_event" => {
                let info = v.get("rate_limit_info").cloned().unwrap_or_default();
                let rejected = info.get("status").and_then(|s| s.as_str()) == Some("rejected");
                match (rejected, info.get("resetsAt").and_then(|r| r.as_i64())) {
                    (true, Some(secs)) => {
                        let until_ms = secs.saturating_mul(1000);
                        self.reset_ms = Some(until_ms);
                        vec![AgentLine::RateLimited {
                            until_ms: Some(until_ms),
                        }]
                    }
                    _ => Vec::new(),
                }
            }
            "result" => self.claude_result(v),
            _ => Vec::new(),
        }
    }

    /// A call's usage as it happens (output counts are placeholders there): input and
    /// cache tokens once per message, priced at the profile's prices.
    fn claude_estimate(&mut self, v: &serde_json::Value) -> Option<AgentLine> {
        let m = v.get("message")?;
        let id = m
            .get("id")
            .and_then(|i| i.as_str())
            .unwrap_or("")
            .to_string();
        if id.is_empty() || !self.messages.insert(id) {
            return None;
        }
        let model = m.get("model").and_then(|x| x.as_str()).unwrap_or("");
        if model.starts_with('<') {
            // `<synthetic>`: an error placeholder, not a call.
            return None;
        }
        let u = m.get("usage")?;
        let tokens = Usage {
            input_tokens: num(u, "input_tokens"),
            cache_read_tokens: num(u, "cache_read_input_tokens"),
            cache_write_tokens: num(u, "cache_creation_input_tokens"),
            ..Usage::default()
        };
        // Always a cost (0 without a price), so that the result's cost completes it
        // rather than the daemon pricing it a second time.
        let cost = self.prices.of(model).map_or(0.0, |p| p.cost(&tokens));
        Some(self.add(model, tokens, Some(cost)))
    }

    fn claude_result(&mut self, v: &serde_json::Value) -> Vec<AgentLine> {
        let mut out: Vec<AgentLine> = session_of(v, "session_id").into_iter().collect();
        // This run's usage per model: `model_usage_since_last_result` (a resumed session's
        // `modelUsage` and `total_cost_usd` include the runs before), else `modelUsage`.
        let per_model = v
            .get("model_usage_since_last_result")
            .and_then(|m| m.as_object())
            .filter(|m| !m.is_empty())
            .or_else(|| {
                v.get("modelUsage")
                    .and_then(|m| m.as_object())
                    .filter(|m| !m.is_empty())
            });
        match per_model {
            Some(models) => {
                let names: Vec<&str> = models.keys().map(String::as_str).collect();
                self.rekey_estimates(&names);
                for (model, u) in models {
                    let tokens = Usage {
                        input_tokens: num(u, "inputTokens"),
                        cache_read_tokens: num(u, "cacheReadInputTokens"),
                        cache_write_tokens: num(u, "cacheCreationInputTokens"),
                        output_tokens: num(u, "outputTokens"),
                        cost_usd: 0.0,
                    };
                    let cost = u.get("costUSD").and_then(|c| c.as_f64()).unwrap_or(0.0);
                    out.push(self.total_delta(model, tokens, cost));
                }
            }
            None => {
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
                if tokens.has_tokens() || cost > 0.0 {
                    out.push(self.total_delta("", tokens, cost));
                }
            }
        }
        let is_error = v.get("is_error").and_then(|e| e.as_bool()).unwrap_or(false)
            || v.get("subtype")
                .and_then(|s| s.as_str())
                .is_some_and(|s| s.starts_with("error"));
        if is_error {
            let (class, message) = claude_failure(v);
            if class == FailureClass::RateLimited {
                out.push(AgentLine::RateLimited {
                    until_ms: self.reset_ms,
                });
            }
            out.push(AgentLine::Failed { class, message });
        }
        out
    }

    fn codex(&mut self, v: &serde_json::Value) -> Vec<AgentLine> {
        match v.get("type").and_then(|t| t.as_str()).unwrap_or("") {
            "thread.started" => {
                let line = session_of(v, "thread_id");
                if let Some(AgentLine::Session(id)) = &line {
                    // A resumed thread's totals carry on from what it was last seen at.
                    let before = self.threads.as_ref().and_then(|t| t.0.get(id));
                    if let Some(before) = before {
                        raise(self.seen.entry(String::new()).or_default(), &before);
                    }
                    self.thread = Some(id.clone());
                }
                line.into_iter().collect()
            }
            "turn.completed" => {
                // `input_tokens` includes the cached ones; totals are the thread's so far.
                let u = v.get("usage").cloned().unwrap_or_default();
                let cached = num(&u, "cached_input_tokens");
                let total = Usage {
                    input_tokens: num(&u, "input_tokens").saturating_sub(cached),
                    cache_read_tokens: cached,
                    cache_write_tokens: num(&u, "cache_write_input_tokens"),
                    output_tokens: num(&u, "output_tokens"),
                    cost_usd: 0.0,
                };
                if let (Some(threads), Some(id)) = (&self.threads, &self.thread) {
                    threads.0.put(id, &total);
                }
                vec![self.total_delta_unpriced("", total)]
            }
            "turn.failed" => {
                let message = v
                    .pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("the turn failed")
                    .to_string();
                let (class, until_ms) = codex_failure(&message, (self.now)());
                let mut out = Vec::new();
                if class == FailureClass::RateLimited {
                    out.push(AgentLine::RateLimited { until_ms });
                }
                out.push(AgentLine::Failed { class, message });
                out
            }
            _ => Vec::new(),
        }
    }

    /// Files the estimates made under another name of a model the result names (a reply's
    /// dated `claude-sonnet-4-5-20250929` for the requested `claude-sonnet-4-5`), so the
    /// result completes them instead of counting them again. Estimates of no model the
    /// result names go to its first model.
    fn rekey_estimates(&mut self, names: &[&str]) {
        let Some(first) = names.first() else {
            return;
        };
        let stray: Vec<String> = self
            .seen
            .keys()
            .filter(|k| !names.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in stray {
            let to = names
                .iter()
                .find(|n| k.starts_with(&format!("{n}-")) || n.starts_with(&format!("{k}-")))
                .unwrap_or(first);
            if let Some(u) = self.seen.remove(&k) {
                self.seen.entry(to.to_string()).or_default().add(&u);
            }
        }
    }

    /// Adds an increment for `model`.
    fn add(&mut self, model: &str, tokens: Usage, cost: Option<f64>) -> AgentLine {
        let seen = self.seen.entry(model.to_string()).or_default();
        seen.add(&Usage {
            cost_usd: cost.unwrap_or(0.0),
            ..tokens
        });
        AgentLine::Usage {
            tokens,
            cost_usd: cost,
            model: model.to_string(),
        }
    }

    /// A reported total (with its cost) for `model`, as the delta since what was already
    /// reported for it (estimates included). An estimate above the total is not taken back.
    fn total_delta(&mut self, model: &str, total: Usage, cost: f64) -> AgentLine {
        let seen = self.seen.entry(model.to_string()).or_default();
        let line = AgentLine::Usage {
            tokens: minus(&total, seen),
            cost_usd: Some((cost - seen.cost_usd).max(0.0)),
            model: model.to_string(),
        };
        raise(seen, &total);
        seen.cost_usd = seen.cost_usd.max(cost);
        line
    }

    /// A reported total without a cost (priced by the daemon), as a delta.
    fn total_delta_unpriced(&mut self, model: &str, total: Usage) -> AgentLine {
        let seen = self.seen.entry(model.to_string()).or_default();
        let line = AgentLine::Usage {
            tokens: minus(&total, seen),
            cost_usd: None,
            model: model.to_string(),
        };
        raise(seen, &total);
        line
    }
}

/// `a - b` by kind, never below zero (cost left out).
fn minus(a: &Usage, b: &Usage) -> Usage {
    Usage {
        input_tokens: a.input_tokens.saturating_sub(b.input_tokens),
        cache_read_tokens: a.cache_read_tokens.saturating_sub(b.cache_read_tokens),
        cache_write_tokens: a.cache_write_tokens.saturating_sub(b.cache_write_tokens),
        output_tokens: a.output_tokens.saturating_sub(b.output_tokens),
        cost_usd: 0.0,
    }
}

/// `seen` raised to at least `total` in every kind.
fn raise(seen: &mut Usage, total: &Usage) {
    seen.input_tokens = seen.input_tokens.max(total.input_tokens);
    seen.cache_read_tokens = seen.cache_read_tokens.max(total.cache_read_tokens);
    seen.cache_write_tokens = seen.cache_write_tokens.max(total.cache_write_tokens);
    seen.output_tokens = seen.output_tokens.max(total.output_tokens);
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(|x| x.as_u64()).unwrap_or(0)
}

fn session_of(v: &serde_json::Value, key: &str) -> Option<AgentLine> {
    v.get(key)
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .map(|s| AgentLine::Session(s.to_string()))
}

/// What a Claude error result says: its class and a message.
fn claude_failure(v: &serde_json::Value) -> (FailureClass, String) {
    let status = v.get("api_error_status").and_then(|s| s.as_u64());
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let subtype = text("subtype");
    let class = match status {
        Some(429) => FailureClass::RateLimited,
        Some(401 | 403) => FailureClass::Auth,
        Some(s) if s == 529 || (500..600).contains(&s) => FailureClass::Overloaded,
        _ if subtype == "error_max_turns" || text("terminal_reason") == "max_turns" => {
            FailureClass::MaxTurns
        }
        _ => FailureClass::Error,
    };
    let detail = v
        .get("errors")
        .and_then(|e| e.as_array())
        .and_then(|e| e.first())
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .or_else(|| {
            let t = [text("api_error"), text("api_error_type")]
                .into_iter()
                .find(|t| !t.is_empty())?;
            Some(match status {
                Some(s) => format!("{t} (HTTP {s})"),
                None => t.to_string(),
            })
        })
        .unwrap_or_else(|| {
            let r = text("result");
            if r.is_empty() {
                subtype.to_string()
            } else {
                r.chars().take(300).collect()
            }
        });
    (class, format!("{}: {detail}", class.word()))
}

/// What a failed Codex turn says: its class, and for a usage limit the reset ("try again
/// at 3:28 PM", the next such time after `now`).
fn codex_failure(message: &str, now: DateTime<Local>) -> (FailureClass, Option<i64>) {
    let lower = message.to_lowercase();
    if lower.contains("usage limit") || lower.contains("try again at") {
        return (FailureClass::RateLimited, try_again_at(message, now));
    }
    if lower.contains("429") || lower.contains("rate limit") {
        return (FailureClass::RateLimited, None);
    }
    if lower.contains("401") || lower.contains("403") || lower.contains("unauthorized") {
        return (FailureClass::Auth, None);
    }
    if lower.contains("500")
        || lower.contains("502")
        || lower.contains("503")
        || lower.contains("overloaded")
    {
        return (FailureClass::Overloaded, None);
    }
    (FailureClass::Error, None)
}

/// The next time after `now` that "try again at 7:07 AM" (or "19:07") names, in ms.
fn try_again_at(message: &str, now: DateTime<Local>) -> Option<i64> {
    let lower = message.to_lowercase();
    let at = lower.find("try again at ")? + "try again at ".len();
    let rest = lower[at..].trim_end_matches(['.', ' ']);
    let words: Vec<&str> = rest.split_whitespace().take(2).collect();
    let clock = words.first()?.trim_end_matches(['.', ',']);
    let ampm = words
        .get(1)
        .map(|w| w.trim_end_matches(['.', ',']))
        .filter(|w| *w == "am" || *w == "pm");
    let time = match ampm {
        Some(m) => NaiveTime::parse_from_str(&format!("{clock} {m}"), "%I:%M %P").ok()?,
        None => NaiveTime::parse_from_str(clock, "%H:%M").ok()?,
    };
    let today = now.date_naive().and_time(time);
    let mut at = Local.from_local_datetime(&today).earliest()?;
    if at <= now {
        // The named minute is this one (the reset is within it, a time of day says no
        // more): the next minute. An earlier time of day is tomorrow's.
        at = if now - at < chrono::Duration::minutes(1) {
            at.checked_add_signed(chrono::Duration::minutes(1))?
        } else {
            at.checked_add_signed(chrono::Duration::days(1))?
        };
    }
    Some(at.timestamp_millis())
}

impl LineParser {
    /// aider's lines: a provider error is pending until aider retries (`Retrying in`) or
    /// gets a reply (`Tokens:`); see [`LineParser::finish`].
    fn aider(&mut self, text: &str) -> Vec<AgentLine> {
        for (start, class) in [
            (AIDER_RATE_LIMITED, FailureClass::RateLimited),
            (AIDER_AUTH, FailureClass::Auth),
            (AIDER_DOWN, FailureClass::Overloaded),
        ] {
            if text.starts_with(start) {
                self.aider_error = Some((class, text.trim().to_string()));
                return Vec::new();
            }
        }
        if text.starts_with("Retrying in ") {
            self.aider_error = None;
            return Vec::new();
        }
        let line = parse_aider(text);
        if line.is_some() {
            self.aider_error = None;
        }
        line.into_iter().collect()
    }
}

/// Reads aider's `Tokens: 1.2k sent, 50 received. Cost: $0.00013 message, $0.02 session.`
/// as this message's usage.
fn parse_aider(text: &str) -> Option<AgentLine> {
    let rest = text.strip_prefix("Tokens: ")?;
    let count = |s: &str| -> Option<u64> {
        let s = s.trim().replace(',', "");
        let (n, mult) = match s.chars().last()? {
            'k' | 'K' => (&s[..s.len() - 1], 1e3),
            'm' | 'M' => (&s[..s.len() - 1], 1e6),
            _ => (s.as_str(), 1.0),
        };
        let v: f64 = n.parse().ok()?;
        (v.is_finite() && v >= 0.0).then(|| (v * mult).round() as u64)
    };
    let (tokens, cost) = rest.split_once(". Cost: ").unwrap_or((rest, ""));
    let mut input = 0;
    let mut output = 0;
    for part in tokens.split(',') {
        let part = part.trim();
        if let Some(n) = part.strip_suffix(" sent") {
            input = count(n)?;
        } else if let Some(n) = part.strip_suffix(" received") {
            output = count(n)?;
        } else if let Some(n) = part.strip_suffix(" cache write") {
            let _ = count(n);
        }
    }
    let cost_usd = cost
        .split(',')
        .next()
        .and_then(|c| c.trim().strip_suffix(" message"))
        .and_then(|c| c.trim().trim_start_matches('$').parse::<f64>().ok())
        .filter(|c| c.is_finite() && *c >= 0.0);
    Some(AgentLine::Usage {
        tokens: Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
        cost_usd,
        model: String::new(),
    })
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
    /// The provider refused until this time (ms since the epoch); `None`: it gave no
    /// time, the daemon's `rate_limit_wait` applies.
    RateLimited {
        until_ms: Option<i64>,
    },
    Progress {
        percent: Option<f64>,
        message: String,
    },
    /// The agent's session (Claude `session_id`, Codex `thread_id`).
    Session(String),
    /// The agent reported that its run failed, whatever its exit code.
    Failed {
        class: FailureClass,
        message: String,
    },
    /// A planner's plan (`::orch-plan::JSON`), as JSON text (read by the engine).
    Plan(String),
    /// A verifier's verdict (`::orch-verdict::{"pass":…,"findings":…}`).
    Verdict(crate::model::Verdict),
    /// A `::orch-…::` line that could not be read; kept in the log, reported, never fatal.
    Malformed(String),
}

/// Largest checkpoint accepted, in bytes of JSON.
pub const MAX_CHECKPOINT_BYTES: usize = 1 << 20;
/// Longest protocol line kept for parsing; longer lines are logged but not parsed.
const MAX_PROTOCOL_LINE: usize = MAX_CHECKPOINT_BYTES + 64;
/// Longest findings kept from a verdict, in characters.
pub const MAX_FINDINGS_CHARS: usize = 16 * 1024;
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
                until_ms: Some(t.timestamp_millis()),
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
    if let Some(json) = text.strip_prefix("::orch-plan::") {
        // Read as a plan by the engine when the planner's attempt ends, which names
        // every problem (not JSON included) to the planner's next attempt.
        return Some(AgentLine::Plan(json.trim().to_string()));
    }
    if let Some(json) = text.strip_prefix("::orch-verdict::") {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct V {
            pass: bool,
            #[serde(default)]
            findings: String,
        }
        return Some(match serde_json::from_str::<V>(json) {
            Ok(v) => AgentLine::Verdict(crate::model::Verdict {
                pass: v.pass,
                findings: v.findings.chars().take(MAX_FINDINGS_CHARS).collect(),
            }),
            Err(e) => AgentLine::Malformed(format!(
                "verdict is not {{\"pass\": true|false, \"findings\": \"...\"}}: {e}"
            )),
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
#[path = "agent_tests.rs"]
mod tests;
