//! `MockProvider`: a scripted model provider on 127.0.0.1 (port 0, one per test) that speaks
//! enough of the Anthropic Messages API and the OpenAI Responses API for the real Claude Code,
//! Codex and aider CLIs to run against it offline, and records every request it gets.
//!
//! A test queues replies per API (`anthropic(..)`, `openai(..)`); each `POST /v1/messages` or
//! `POST /v1/responses` takes the next one, in order. A [`Reply`] is either a model turn
//! ([`Turn`]: text, a tool call, usage numbers), streamed as server-sent events when the
//! request asked for `stream: true` and as one JSON object otherwise, or an HTTP error with
//! the headers and body a test chooses (rate limits, usage limits, overload). A request that
//! finds its queue empty gets a 400 (never retried by the CLIs) naming the request, so a
//! test that scripted too few replies fails fast instead of hanging.
//!
//! Wire formats: the event sequences are the ones the Anthropic SDK and Codex parse
//! (`message_start`, `content_block_start/delta/stop`, `message_delta` with usage,
//! `message_stop`; `response.created`, `response.output_item.added/done`,
//! `response.output_text.delta`, `response.completed` with usage), checked against Claude
//! Code 2.1.332 and Codex 0.171.0 (see docs/agents.md and tests/fixtures/agents/README.md).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Which API a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/messages` (Anthropic Messages).
    Anthropic,
    /// `POST /v1/responses` (OpenAI Responses).
    OpenAi,
    /// Anything else (e.g. `HEAD /`).
    Other,
}

/// Token counts of one reply. For Anthropic, `input` excludes the cache fields (as the API
/// reports it); for OpenAI, `input` includes `cached` (as `input_tokens` and
/// `input_tokens_details.cached_tokens` do), and `cache_creation` is not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    /// Anthropic `cache_creation_input_tokens`.
    pub cache_creation: u64,
    /// Anthropic `cache_read_input_tokens`; OpenAI `input_tokens_details.cached_tokens`.
    pub cached: u64,
    /// OpenAI `output_tokens_details.reasoning_tokens` (part of `output`).
    pub reasoning: u64,
}

impl Usage {
    /// Plain input and output tokens.
    pub fn new(input: u64, output: u64) -> Usage {
        Usage {
            input,
            output,
            ..Usage::default()
        }
    }

    /// With cache reads (`cached`) and, for Anthropic, cache writes (`creation`).
    pub fn cache(self, creation: u64, cached: u64) -> Usage {
        Usage {
            cache_creation: creation,
            cached,
            ..self
        }
    }

    /// With reasoning tokens (OpenAI).
    pub fn reasoning(self, reasoning: u64) -> Usage {
        Usage { reasoning, ..self }
    }
}

/// A tool call the model makes.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Anthropic `tool_use.id` / OpenAI `call_id`.
    pub id: String,
    /// The tool's name as the CLI declared it (`Bash` for Claude Code, `exec_command` for
    /// Codex 0.171 with a unified-exec model).
    pub name: String,
    /// Its input (Anthropic) or arguments (OpenAI, sent as a JSON string).
    pub input: Value,
}

/// One model turn: optional text, then an optional tool call, with its usage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Turn {
    pub text: Option<String>,
    pub tool: Option<ToolCall>,
    pub usage: Usage,
    /// The model the reply names (default: the one the request asked for). The real APIs
    /// answer an alias with a dated snapshot (`claude-sonnet-4-5` → `claude-sonnet-4-5-20250929`).
    pub served_model: Option<String>,
}

/// What the next request of an API gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A model turn (streamed when the request asked for it).
    Turn(Turn),
    /// An HTTP error: status, extra headers, JSON body.
    Error {
        status: u16,
        headers: Vec<(String, String)>,
        body: Value,
    },
}

impl Reply {
    /// A plain text answer.
    pub fn text(text: &str, usage: Usage) -> Reply {
        Reply::Turn(Turn {
            text: Some(text.to_string()),
            usage,
            ..Turn::default()
        })
    }

    /// A tool call (`id`, tool `name`, its `input`), optionally after some text.
    pub fn tool(text: Option<&str>, id: &str, name: &str, input: Value, usage: Usage) -> Reply {
        Reply::Turn(Turn {
            text: text.map(str::to_string),
            tool: Some(ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                input,
            }),
            usage,
            served_model: None,
        })
    }

    /// This turn answered as from `model` (see [`Turn::served_model`]).
    pub fn served_as(self, model: &str) -> Reply {
        match self {
            Reply::Turn(t) => Reply::Turn(Turn {
                served_model: Some(model.to_string()),
                ..t
            }),
            other => other,
        }
    }

    /// Claude Code's `Bash` tool running `command`.
    pub fn claude_bash(text: Option<&str>, command: &str, usage: Usage) -> Reply {
        Reply::tool(
            text,
            "toolu_01",
            "Bash",
            json!({"command": command, "description": "Run the command"}),
            usage,
        )
    }

    /// Codex's `exec_command` tool running `cmd`.
    pub fn codex_exec(cmd: &str, usage: Usage) -> Reply {
        Reply::tool(None, "call_1", "exec_command", json!({"cmd": cmd}), usage)
    }

    /// Any HTTP error.
    pub fn error(status: u16, headers: &[(&str, &str)], body: Value) -> Reply {
        Reply::Error {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        }
    }

    /// Anthropic 429 for an API key (per-minute request limit) with `retry-after` and the
    /// `anthropic-ratelimit-requests-*` headers.
    pub fn anthropic_rate_limited(retry_after_s: u64) -> Reply {
        let retry = retry_after_s.to_string();
        Reply::error(
            429,
            &[
                ("retry-after", &retry),
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2030-01-01T00:00:00Z"),
            ],
            json!({"type": "error", "error": {"type": "rate_limit_error",
                "message": "Number of requests has exceeded your per-minute rate limit"},
                "request_id": "req_mock_429"}),
        )
    }

    /// Anthropic 429 for a subscription (OAuth) whose 5-hour window is used up until
    /// `reset_epoch_s`: the `anthropic-ratelimit-unified-*` headers Claude Code reads
    /// (status, reset, representative-claim, overage status) make it print a
    /// `rate_limit_event` with `status: rejected` and `resetsAt`.
    pub fn anthropic_usage_limit(reset_epoch_s: i64) -> Reply {
        let reset = reset_epoch_s.to_string();
        Reply::error(
            429,
            &[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", &reset),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour",
                ),
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &reset),
                ("anthropic-ratelimit-unified-5h-utilization", "1.0"),
                ("anthropic-ratelimit-unified-overage-status", "rejected"),
                (
                    "anthropic-ratelimit-unified-overage-disabled-reason",
                    "org_level_disabled",
                ),
            ],
            json!({"type": "error", "error": {"type": "rate_limit_error",
                "message": "This request would exceed your account's rate limit. Please try again later."},
                "request_id": "req_mock_limit"}),
        )
    }

    /// Anthropic 529 `overloaded_error`.
    pub fn anthropic_overloaded() -> Reply {
        Reply::error(
            529,
            &[],
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                "request_id": "req_mock_529"}),
        )
    }

    /// Anthropic 500 `api_error`.
    pub fn anthropic_server_error() -> Reply {
        Reply::error(
            500,
            &[],
            json!({"type": "error", "error": {"type": "api_error", "message": "Internal server error"},
                "request_id": "req_mock_500"}),
        )
    }

    /// OpenAI 429 `usage_limit_reached` (a ChatGPT plan's limit) resetting at `reset_epoch_s`.
    pub fn openai_usage_limit(reset_epoch_s: i64) -> Reply {
        let reset = reset_epoch_s.to_string();
        let in_s = (reset_epoch_s - chrono::Utc::now().timestamp()).max(0);
        Reply::error(
            429,
            &[
                ("x-codex-primary-used-percent", "100"),
                ("x-codex-primary-window-minutes", "300"),
                ("x-codex-primary-reset-at", &reset),
            ],
            json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                "plan_type": "plus", "resets_at": reset_epoch_s, "resets_in_seconds": in_s}}),
        )
    }

    /// OpenAI plain 429 (`rate_limit_exceeded`, tokens per minute) with `retry-after`.
    pub fn openai_rate_limited(retry_after_s: u64) -> Reply {
        let retry = retry_after_s.to_string();
        Reply::error(
            429,
            &[("retry-after", &retry)],
            json!({"error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded",
                "message": "Rate limit reached for gpt-5.5 on tokens per min (TPM): Limit 30000, Used 30000, Requested 100. Please try again in 1s."}}),
        )
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub api: Api,
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
}

impl Recorded {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's text, serialized, for `contains` checks.
    pub fn body_text(&self) -> String {
        self.body.to_string()
    }
}

#[derive(Default)]
struct State {
    anthropic: VecDeque<Reply>,
    openai: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

/// A scripted provider on `127.0.0.1:<port>`; stops when dropped.
pub struct MockProvider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MockProvider {
    /// Starts a provider on a free port of 127.0.0.1, with empty scripts.
    pub fn start() -> MockProvider {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock provider");
        listener
            .set_nonblocking(true)
            .expect("make the mock provider's socket non-blocking");
        let addr = listener.local_addr().expect("mock provider address");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = thread::Builder::new()
            .name(format!("mockprovider-{}", addr.port()))
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the mock provider's runtime")
                    .block_on(serve(listener, st, stop_rx));
            })
            .expect("spawn the mock provider thread");
        MockProvider {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` (Claude Code's `ANTHROPIC_BASE_URL`; aider's
    /// `ANTHROPIC_API_BASE`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1` (a Codex `model_providers.*.base_url`).
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues replies for `POST /v1/messages`.
    pub fn anthropic(&self, replies: impl IntoIterator<Item = Reply>) -> &Self {
        self.lock().anthropic.extend(replies);
        self
    }

    /// Queues replies for `POST /v1/responses`.
    pub fn openai(&self, replies: impl IntoIterator<Item = Reply>) -> &Self {
        self.lock().openai.extend(replies);
        self
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The bodies of the model requests of `api` (`POST /v1/messages` or `/v1/responses`,
    /// count_tokens excluded), in order.
    pub fn bodies(&self, api: Api) -> Vec<Value> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.api == api && r.method == "POST" && !r.path.contains("count_tokens"))
            .map(|r| r.body.clone())
            .collect()
    }

    /// Replies still queued (Anthropic, OpenAI).
    pub fn pending(&self) -> (usize, usize) {
        let s = self.lock();
        (s.anthropic.len(), s.openai.len())
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener =
        tokio::net::TcpListener::from_std(listener).expect("mock provider tokio listener");
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let st = state.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
    conns.abort_all();
}

type Resp = Response<Full<Bytes>>;

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let route = path.split('?').next().unwrap_or("");
    let api = match route {
        "/v1/messages" | "/v1/messages/count_tokens" => Api::Anthropic,
        "/v1/responses" => Api::OpenAi,
        _ => Api::Other,
    };
    let (n, reply) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.requests.push(Recorded {
            api,
            method: method.to_string(),
            path: path.clone(),
            headers,
            body: body.clone(),
        });
        let n = s.requests.len();
        let reply = match (api, &method, route) {
            (Api::Anthropic, &Method::POST, "/v1/messages/count_tokens") => Ok(Either::Resp(
                json_response(200, &[], &json!({"input_tokens": 1000})),
            )),
            (Api::Anthropic, &Method::POST, _) => {
                s.anthropic.pop_front().map(Either::Reply).ok_or(n)
            }
            (Api::OpenAi, &Method::POST, _) => s.openai.pop_front().map(Either::Reply).ok_or(n),
            (_, &Method::HEAD, _) | (_, &Method::GET, "/") => {
                Ok(Either::Resp(json_response(200, &[], &Value::Null)))
            }
            _ => Ok(Either::Resp(json_response(
                404,
                &[],
                &json!({"error": {"type": "not_found_error",
                    "message": format!("mock provider: no route {method} {path}")}}),
            ))),
        };
        (n, reply)
    };
    let resp = match reply {
        Ok(Either::Resp(r)) => r,
        Ok(Either::Reply(Reply::Error {
            status,
            headers,
            body,
        })) => {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            json_response(status, &h, &body)
        }
        Ok(Either::Reply(Reply::Turn(turn))) => {
            let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
            let model = turn.served_model.as_deref().unwrap_or_else(|| {
                body.get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("mock-model")
            });
            match (api, stream) {
                (Api::Anthropic, true) => sse_response(&anthropic_events(n, &turn, model)),
                (Api::Anthropic, false) => {
                    json_text_response(200, &anthropic_message(n, &turn, model))
                }
                (_, true) => sse_response(&openai_events(n, &turn, model)),
                (_, false) => json_text_response(200, &openai_response(n, &turn, model)),
            }
        }
        Err(n) => json_response(
            400,
            &[("x-should-retry", "false")],
            &json!({"type": "error", "error": {"type": "invalid_request_error",
                "message": format!("mock provider: no reply scripted for request {n} ({method} {path})")}}),
        ),
    };
    Ok(resp)
}

/// A queued reply or a ready response (count_tokens, HEAD, 404).
enum Either {
    Reply(Reply),
    Resp(Resp),
}

fn json_text_response(status: u16, body: &str) -> Resp {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("request-id", "req_mock")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("build a mock response")
}

fn json_response(status: u16, headers: &[(&str, &str)], body: &Value) -> Resp {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("request-id", "req_mock");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(bytes)))
        .expect("build a mock response")
}

fn sse_response(events: &[(&str, String)]) -> Resp {
    let mut text = String::new();
    for (name, data) in events {
        text.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("request-id", "req_mock")
        .body(Full::new(Bytes::from(text)))
        .expect("build a mock SSE response")
}

/// A JSON object with its keys in the given order (`serde_json::Value` sorts them; the CLIs
/// pass some objects through to their own output, so the order the real APIs use is kept).
fn obj(fields: &[(&str, String)]) -> String {
    let items: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", items.join(","))
}

/// A JSON value as text.
fn j(v: impl Into<Value>) -> String {
    v.into().to_string()
}

fn arr(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

/// Anthropic `usage`, in the API's order.
fn anthropic_usage(u: &Usage, output: u64) -> String {
    obj(&[
        ("input_tokens", j(u.input)),
        ("cache_creation_input_tokens", j(u.cache_creation)),
        ("cache_read_input_tokens", j(u.cached)),
        (
            "cache_creation",
            obj(&[
                ("ephemeral_5m_input_tokens", j(u.cache_creation)),
                ("ephemeral_1h_input_tokens", j(0)),
            ]),
        ),
        ("output_tokens", j(output)),
        ("service_tier", j("standard")),
    ])
}

fn text_block(text: &str) -> String {
    obj(&[("type", j("text")), ("text", j(text))])
}

fn tool_block(t: &ToolCall, input: String) -> String {
    obj(&[
        ("type", j("tool_use")),
        ("id", j(t.id.as_str())),
        ("name", j(t.name.as_str())),
        ("input", input),
    ])
}

fn anthropic_content(turn: &Turn) -> Vec<String> {
    let mut content = Vec::new();
    if let Some(t) = &turn.text {
        content.push(text_block(t));
    }
    if let Some(t) = &turn.tool {
        content.push(tool_block(t, t.input.to_string()));
    }
    content
}

fn stop_reason(turn: &Turn) -> &'static str {
    if turn.tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    }
}

/// A Messages API `message` object (as in `message_start`, or a whole non-streamed reply).
fn anthropic_msg(n: usize, model: &str, content: &[String], stop: Value, usage: String) -> String {
    obj(&[
        ("model", j(model)),
        ("id", j(format!("msg_mock{n:04}"))),
        ("type", j("message")),
        ("role", j("assistant")),
        ("content", arr(content)),
        ("stop_reason", stop.to_string()),
        ("stop_sequence", j(Value::Null)),
        ("usage", usage),
    ])
}

/// A non-streamed Messages API reply to request `n`.
fn anthropic_message(n: usize, turn: &Turn, model: &str) -> String {
    anthropic_msg(
        n,
        model,
        &anthropic_content(turn),
        j(stop_reason(turn)).into(),
        anthropic_usage(&turn.usage, turn.usage.output),
    )
}

/// The streamed events of a Messages API reply to request `n`.
fn anthropic_events(n: usize, turn: &Turn, model: &str) -> Vec<(&'static str, String)> {
    let start = anthropic_msg(n, model, &[], Value::Null, anthropic_usage(&turn.usage, 1));
    let mut ev = vec![
        (
            "message_start",
            obj(&[("type", j("message_start")), ("message", start)]),
        ),
        ("ping", obj(&[("type", j("ping"))])),
    ];
    let mut block = |index: usize, start: String, delta: String| {
        ev.push((
            "content_block_start",
            obj(&[
                ("type", j("content_block_start")),
                ("index", j(index)),
                ("content_block", start),
            ]),
        ));
        ev.push((
            "content_block_delta",
            obj(&[
                ("type", j("content_block_delta")),
                ("index", j(index)),
                ("delta", delta),
            ]),
        ));
        ev.push((
            "content_block_stop",
            obj(&[("type", j("content_block_stop")), ("index", j(index))]),
        ));
    };
    let mut index = 0;
    if let Some(t) = &turn.text {
        block(
            index,
            text_block(""),
            obj(&[("type", j("text_delta")), ("text", j(t.as_str()))]),
        );
        index += 1;
    }
    if let Some(t) = &turn.tool {
        block(
            index,
            tool_block(t, "{}".into()),
            obj(&[
                ("type", j("input_json_delta")),
                ("partial_json", j(t.input.to_string())),
            ]),
        );
    }
    ev.push((
        "message_delta",
        obj(&[
            ("type", j("message_delta")),
            (
                "delta",
                obj(&[
                    ("stop_reason", j(stop_reason(turn))),
                    ("stop_sequence", j(Value::Null)),
                ]),
            ),
            ("usage", obj(&[("output_tokens", j(turn.usage.output))])),
        ]),
    ));
    ev.push(("message_stop", obj(&[("type", j("message_stop"))])));
    ev
}

/// OpenAI `usage`, in the API's order.
fn openai_usage(u: &Usage) -> String {
    obj(&[
        ("input_tokens", j(u.input)),
        (
            "input_tokens_details",
            obj(&[("cached_tokens", j(u.cached))]),
        ),
        ("output_tokens", j(u.output)),
        (
            "output_tokens_details",
            obj(&[("reasoning_tokens", j(u.reasoning))]),
        ),
        ("total_tokens", j(u.input + u.output)),
    ])
}

/// An output item of a Responses API reply: `done` is the finished item, else the one
/// `response.output_item.added` announces (empty content / arguments).
fn openai_item(n: usize, turn: &Turn, which: usize, done: bool) -> Option<String> {
    let status = j(if done { "completed" } else { "in_progress" });
    let mut items = Vec::new();
    if let Some(t) = &turn.text {
        let content = if done {
            arr(&[obj(&[
                ("type", j("output_text")),
                ("annotations", arr(&[])),
                ("text", j(t.as_str())),
            ])])
        } else {
            arr(&[])
        };
        items.push(obj(&[
            ("id", j(format!("msg_mock{n:04}"))),
            ("type", j("message")),
            ("status", status.clone()),
            ("content", content),
            ("role", j("assistant")),
        ]));
    }
    if let Some(t) = &turn.tool {
        let args = if done {
            t.input.to_string()
        } else {
            String::new()
        };
        items.push(obj(&[
            ("id", j(format!("fc_mock{n:04}"))),
            ("type", j("function_call")),
            ("status", status),
            ("arguments", j(args)),
            ("call_id", j(t.id.as_str())),
            ("name", j(t.name.as_str())),
        ]));
    }
    items.into_iter().nth(which)
}

fn openai_items(n: usize, turn: &Turn) -> Vec<String> {
    (0..2)
        .filter_map(|i| openai_item(n, turn, i, true))
        .collect()
}

/// A Responses API `response` object.
fn openai_resp(
    n: usize,
    model: &str,
    status: &str,
    output: &[String],
    usage: Option<String>,
) -> String {
    obj(&[
        ("id", j(format!("resp_mock{n:04}"))),
        ("object", j("response")),
        ("created_at", j(chrono::Utc::now().timestamp())),
        ("status", j(status)),
        ("model", j(model)),
        ("output", arr(output)),
        ("usage", usage.unwrap_or_else(|| j(Value::Null))),
    ])
}

/// A non-streamed Responses API reply to request `n`.
fn openai_response(n: usize, turn: &Turn, model: &str) -> String {
    openai_resp(
        n,
        model,
        "completed",
        &openai_items(n, turn),
        Some(openai_usage(&turn.usage)),
    )
}

/// The streamed events of a Responses API reply to request `n`.
fn openai_events(n: usize, turn: &Turn, model: &str) -> Vec<(&'static str, String)> {
    let mut seq = 0;
    let mut ev = Vec::new();
    let mut push =
        |ev: &mut Vec<(&'static str, String)>, name: &'static str, rest: Vec<(&str, String)>| {
            let mut fields = vec![("type", j(name)), ("sequence_number", j(seq))];
            fields.extend(rest);
            seq += 1;
            ev.push((name, obj(&fields)));
        };
    push(
        &mut ev,
        "response.created",
        vec![("response", openai_resp(n, model, "in_progress", &[], None))],
    );
    for i in 0..2 {
        let (Some(added), Some(done)) = (
            openai_item(n, turn, i, false),
            openai_item(n, turn, i, true),
        ) else {
            continue;
        };
        let item: Value = serde_json::from_str(&done).unwrap_or_default();
        push(
            &mut ev,
            "response.output_item.added",
            vec![("output_index", j(i)), ("item", added)],
        );
        if item["type"] == "message" {
            push(
                &mut ev,
                "response.output_text.delta",
                vec![
                    ("item_id", item["id"].to_string()),
                    ("output_index", j(i)),
                    ("content_index", j(0)),
                    ("delta", item["content"][0]["text"].to_string()),
                ],
            );
        } else {
            push(
                &mut ev,
                "response.function_call_arguments.delta",
                vec![
                    ("item_id", item["id"].to_string()),
                    ("output_index", j(i)),
                    ("delta", item["arguments"].to_string()),
                ],
            );
        }
        push(
            &mut ev,
            "response.output_item.done",
            vec![("output_index", j(i)), ("item", done)],
        );
    }
    push(
        &mut ev,
        "response.completed",
        vec![(
            "response",
            openai_resp(
                n,
                model,
                "completed",
                &openai_items(n, turn),
                Some(openai_usage(&turn.usage)),
            ),
        )],
    );
    ev
}
