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
            tool: None,
            usage,
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
        })
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
                ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
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
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock provider");
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
    let reply = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.requests.push(Recorded {
            api,
            method: method.to_string(),
            path: path.clone(),
            headers,
            body: body.clone(),
        });
        let n = s.requests.len();
        match (api, &method, route) {
            (Api::Anthropic, &Method::POST, "/v1/messages/count_tokens") => Ok(Either::Resp(
                json_response(200, &[], &json!({"input_tokens": 1000})),
            )),
            (Api::Anthropic, &Method::POST, _) => s.anthropic.pop_front().map(Either::Reply).ok_or(n),
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
        }
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
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock-model");
            match (api, stream) {
                (Api::Anthropic, true) => sse_response(&anthropic_events(&turn, model)),
                (Api::Anthropic, false) => json_response(200, &[], &anthropic_message(&turn, model)),
                (_, true) => sse_response(&openai_events(&turn, model)),
                (_, false) => json_response(200, &[], &openai_response(&turn, model)),
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

fn sse_response(events: &[(&str, Value)]) -> Resp {
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

fn anthropic_usage(u: &Usage, output: u64) -> Value {
    json!({"input_tokens": u.input, "output_tokens": output,
        "cache_creation_input_tokens": u.cache_creation, "cache_read_input_tokens": u.cached})
}

fn anthropic_content(turn: &Turn) -> Vec<Value> {
    let mut content = Vec::new();
    if let Some(t) = &turn.text {
        content.push(json!({"type": "text", "text": t}));
    }
    if let Some(t) = &turn.tool {
        content.push(json!({"type": "tool_use", "id": t.id, "name": t.name, "input": t.input}));
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

/// A non-streamed Messages API reply.
fn anthropic_message(turn: &Turn, model: &str) -> Value {
    json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": anthropic_content(turn), "stop_reason": stop_reason(turn), "stop_sequence": null,
        "usage": anthropic_usage(&turn.usage, turn.usage.output)})
}

/// The streamed events of a Messages API reply.
fn anthropic_events(turn: &Turn, model: &str) -> Vec<(&'static str, Value)> {
    let mut ev = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": anthropic_usage(&turn.usage, 1)}}),
    )];
    ev.push(("ping", json!({"type": "ping"})));
    let mut index = 0;
    if let Some(t) = &turn.text {
        ev.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}),
        ));
        ev.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": t}}),
        ));
        ev.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    if let Some(t) = &turn.tool {
        ev.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": t.id, "name": t.name, "input": {}}}),
        ));
        ev.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": t.input.to_string()}}),
        ));
        ev.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    ev.push((
        "message_delta",
        json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(turn), "stop_sequence": null},
            "usage": {"output_tokens": turn.usage.output}}),
    ));
    ev.push(("message_stop", json!({"type": "message_stop"})));
    ev
}

fn openai_usage(u: &Usage) -> Value {
    json!({"input_tokens": u.input, "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input + u.output})
}

/// The output items of a Responses API reply.
fn openai_items(turn: &Turn) -> Vec<Value> {
    let mut items = Vec::new();
    if let Some(t) = &turn.text {
        items.push(json!({"type": "message", "id": "msg_mock", "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": t, "annotations": []}]}));
    }
    if let Some(t) = &turn.tool {
        items.push(json!({"type": "function_call", "id": "fc_mock", "call_id": t.id,
            "name": t.name, "arguments": t.input.to_string(), "status": "completed"}));
    }
    items
}

/// A non-streamed Responses API reply.
fn openai_response(turn: &Turn, model: &str) -> Value {
    json!({"id": "resp_mock", "object": "response", "status": "completed", "model": model,
        "output": openai_items(turn), "usage": openai_usage(&turn.usage)})
}

/// The streamed events of a Responses API reply.
fn openai_events(turn: &Turn, model: &str) -> Vec<(&'static str, Value)> {
    let mut ev = vec![(
        "response.created",
        json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_mock",
            "object": "response", "status": "in_progress", "model": model, "output": []}}),
    )];
    for (i, item) in openai_items(turn).into_iter().enumerate() {
        let mut added = item.clone();
        match item["type"].as_str() {
            Some("message") => {
                added["content"] = json!([]);
                added["status"] = json!("in_progress");
                ev.push((
                    "response.output_item.added",
                    json!({"type": "response.output_item.added", "output_index": i, "item": added}),
                ));
                let text = item["content"][0]["text"].clone();
                ev.push((
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "item_id": item["id"],
                        "output_index": i, "content_index": 0, "delta": text}),
                ));
            }
            _ => {
                added["arguments"] = json!("");
                added["status"] = json!("in_progress");
                ev.push((
                    "response.output_item.added",
                    json!({"type": "response.output_item.added", "output_index": i, "item": added}),
                ));
                ev.push((
                    "response.function_call_arguments.delta",
                    json!({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                        "output_index": i, "delta": item["arguments"]}),
                ));
            }
        }
        ev.push((
            "response.output_item.done",
            json!({"type": "response.output_item.done", "output_index": i, "item": item}),
        ));
    }
    ev.push((
        "response.completed",
        json!({"type": "response.completed", "response": {"id": "resp_mock", "object": "response",
            "status": "completed", "model": model, "output": openai_items(turn),
            "usage": openai_usage(&turn.usage)}}),
    ));
    ev
}
