//! The MCP server: orch's tools (one per orchctl command an agent needs) and its resources,
//! answered through the same gRPC [`Client`] as every other orchctl command, so the
//! daemon sees the calling user and audits the calls as usual.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use orch_proto::plan::{Format as PlanFileFormat, parse_plan};
use orch_proto::units::parse_duration_ms;
use orch_proto::v1::{
    ApproveRequest, DaemonStatusRequest, Event, GetObjectiveRequest, GetUsageRequest,
    ListAgentsRequest, ListObjectivesRequest, Objective, ObjectiveRef, RetryRequest,
    StreamLogsRequest, SubmitRequest, WatchRequest, event::Payload,
};
use orch_proto::validate::{check_env, validate_spec};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    ErrorData, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, RequestMetaObject, Resource, ResourceContents,
    ResourceTemplate, ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter,
    UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use tokio::task::JoinHandle;

use super::io::*;
use crate::cli::SubmitArgs;
use crate::client::{Client, status_message};
use crate::commands::parse_state;
use crate::error::CtlError;
use crate::logs::LogPrinter;
use crate::submit::{apply_overrides, build_spec};
use crate::watch::is_terminal;
use crate::{json, views};

/// The most log bytes one `logs` call or log resource returns.
pub const MAX_LOG_BYTES: usize = 256 * 1024;
/// Lines of each log `logs` returns when the caller does not say.
const DEFAULT_TAIL: u64 = 100;
/// Objectives `resources/list` names, newest first.
const LISTED_OBJECTIVES: u32 = 100;
/// The URI prefix of orch's resources.
pub const URI_PREFIX: &str = "orch://objectives/";

/// orch as an MCP server. Cloned per HTTP session; clones share the daemon connection.
#[derive(Clone)]
pub struct OrchMcp {
    client: Client,
    /// The working directory submissions default to.
    workdir: PathBuf,
    /// Legacy `resources/subscribe` subscriptions: URI → the task sending its updates.
    subscriptions: Arc<Mutex<HashMap<String, JoinHandle<()>>>>,
    #[allow(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

impl Drop for OrchMcp {
    fn drop(&mut self) {
        // The last clone of a session takes its subscriptions' tasks with it.
        if Arc::strong_count(&self.subscriptions) == 1
            && let Ok(mut subs) = self.subscriptions.lock()
        {
            for (_, task) in subs.drain() {
                task.abort();
            }
        }
    }
}

fn objective_out(o: &Objective) -> std::result::Result<ObjectiveOut, String> {
    ObjectiveOut::from_json(json::objective(o))
}

#[tool_router]
impl OrchMcp {
    /// A server answering through `client`; submissions default to `workdir`.
    pub fn new(client: Client, workdir: PathBuf) -> Self {
        OrchMcp {
            client,
            workdir,
            subscriptions: Arc::new(Mutex::new(HashMap::new())),
            tool_router: Self::tool_router(),
        }
    }

    /// A server for one more HTTP session: the same daemon connection, its own
    /// subscriptions.
    pub fn for_session(&self) -> Self {
        OrchMcp::new(self.client.clone(), self.workdir.clone())
    }

    #[tool(
        description = "Submit an objective to orch: a plan (JSON object, or plan_text with its format), \
a command with args, or an agent profile with a prompt. Returns its id; with wait=true, blocks until it \
ends and returns the final status. Sub-objectives submitted from inside a running orch attempt are \
recorded under that attempt's objective."
    )]
    async fn submit(
        &self,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        Parameters(input): Parameters<SubmitIn>,
    ) -> Result<Json<SubmitOut>, String> {
        let wait = input.wait;
        let mut client = self.client.clone();
        let request = submit_request(input, &self.workdir).map_err(|e| e.to_string())?;
        let dry_run = request.dry_run;
        let response = match client.api.submit(request).await {
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Err(status_message(&status));
            }
            r => client.check(r).map_err(|e| e.to_string())?,
        };
        if dry_run {
            let plan = response.plan.unwrap_or_default();
            return Ok(Json(SubmitOut {
                id: String::new(),
                existing: false,
                plan: Some(json::plan(&plan)),
                status: None,
            }));
        }
        let status = if wait {
            let progress = meta.get_progress_token().map(|t| (peer, t));
            let end = wait_end(&mut client, &response.id, progress)
                .await
                .map_err(|e| e.to_string())?;
            Some(objective_out(&end)?)
        } else {
            None
        };
        Ok(Json(SubmitOut {
            id: response.id,
            existing: response.existing,
            plan: None,
            status,
        }))
    }

    #[tool(description = "An objective's status: its state, steps and attempts, usage and budget")]
    async fn status(
        &self,
        Parameters(IdIn { id }): Parameters<IdIn>,
    ) -> Result<Json<ObjectiveOut>, String> {
        let mut client = self.client.clone();
        let r = client.api.get_objective(GetObjectiveRequest { id }).await;
        let o = client.check(r).map_err(|e| e.to_string())?;
        Ok(Json(objective_out(&o)?))
    }

    #[tool(description = "List objectives, newest first, optionally only those in one state")]
    async fn list(&self, Parameters(input): Parameters<ListIn>) -> Result<Json<ListOut>, String> {
        let state = input
            .state
            .as_deref()
            .map(parse_state)
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut client = self.client.clone();
        let request = ListObjectivesRequest {
            state: state.map(|s| s as i32),
            limit: input.limit.unwrap_or(0),
        };
        let r = client.api.list_objectives(request).await;
        let items = client.check(r).map_err(|e| e.to_string())?.objectives;
        Ok(Json(ListOut {
            objectives: items.iter().map(json::summary).collect(),
        }))
    }

    #[tool(description = "Cancel an objective: its running agents are stopped")]
    async fn cancel(
        &self,
        Parameters(IdIn { id }): Parameters<IdIn>,
    ) -> Result<Json<ObjectiveOut>, String> {
        let mut client = self.client.clone();
        let r = client.api.cancel(ObjectiveRef { id }).await;
        let o = client.check(r).map_err(|e| e.to_string())?;
        Ok(Json(objective_out(&o)?))
    }

    #[tool(description = "Pause an objective: its running agents are frozen in place")]
    async fn pause(
        &self,
        Parameters(IdIn { id }): Parameters<IdIn>,
    ) -> Result<Json<ObjectiveOut>, String> {
        let mut client = self.client.clone();
        let r = client.api.pause(ObjectiveRef { id }).await;
        let o = client.check(r).map_err(|e| e.to_string())?;
        Ok(Json(objective_out(&o)?))
    }

    #[tool(description = "Resume a paused objective")]
    async fn resume(
        &self,
        Parameters(IdIn { id }): Parameters<IdIn>,
    ) -> Result<Json<ObjectiveOut>, String> {
        let mut client = self.client.clone();
        let r = client.api.resume(ObjectiveRef { id }).await;
        let o = client.check(r).map_err(|e| e.to_string())?;
        Ok(Json(objective_out(&o)?))
    }

    #[tool(
        description = "Re-run the failed or cancelled steps of an ended objective (and what they skipped)"
    )]
    async fn retry(
        &self,
        Parameters(input): Parameters<RetryIn>,
    ) -> Result<Json<ObjectiveOut>, String> {
        let mut client = self.client.clone();
        let request = RetryRequest {
            id: input.id,
            step_id: input.step.unwrap_or_default(),
            fresh: input.fresh,
        };
        let r = client.api.retry(request).await;
        let o = client.check(r).map_err(|e| e.to_string())?;
        Ok(Json(objective_out(&o)?))
    }

    #[tool(description = "Approve (approve=true) or deny (approve=false) a step awaiting approval")]
    async fn approve(
        &self,
        Parameters(input): Parameters<ApproveIn>,
    ) -> Result<Json<ObjectiveOut>, String> {
        let mut client = self.client.clone();
        let request = ApproveRequest {
            id: input.id,
            step_id: input.step,
            approve: input.approve,
            reason: input.reason.unwrap_or_default(),
        };
        let r = client.api.approve(request).await;
        let o = client.check(r).map_err(|e| e.to_string())?;
        Ok(Json(objective_out(&o)?))
    }

    #[tool(
        description = "The captured stdout/stderr of an objective's steps: the last `tail` lines (default 100) of one step or of every step's latest attempt"
    )]
    async fn logs(&self, Parameters(input): Parameters<LogsIn>) -> Result<Json<LogsOut>, String> {
        let mut client = self.client.clone();
        let tail = input.tail.unwrap_or(DEFAULT_TAIL);
        let (text, truncated) = read_logs(
            &mut client,
            &input.id,
            input.step.as_deref(),
            input.attempt,
            tail,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Json(LogsOut {
            id: input.id,
            text,
            truncated,
        }))
    }

    #[tool(
        description = "The agent profiles the daemon knows (their names, programs and whether each is installed)"
    )]
    async fn agents(&self) -> Result<Json<AgentsOut>, String> {
        let mut client = self.client.clone();
        let r = client.api.list_agents(ListAgentsRequest {}).await;
        let mut list = client.check(r).map_err(|e| e.to_string())?.agents;
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Json(AgentsOut {
            agents: list.iter().map(json::agent).collect(),
        }))
    }

    #[tool(
        description = "Tokens and cost of one objective, or the caller's totals, with budget use"
    )]
    async fn usage(
        &self,
        Parameters(input): Parameters<UsageIn>,
    ) -> Result<Json<UsageOut>, String> {
        let mut client = self.client.clone();
        let request = GetUsageRequest {
            objective_id: input.id.unwrap_or_default(),
        };
        let r = client.api.get_usage(request).await;
        let report = client.check(r).map_err(|e| e.to_string())?;
        let mut rest = match json::usage_report(&report) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let cost_usd = rest
            .remove("cost_usd")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        Ok(Json(UsageOut { cost_usd, rest }))
    }

    #[tool(
        description = "Block until an objective ends and return its final status; sends notifications/progress (one per event) when the request carries a progress token"
    )]
    async fn wait(
        &self,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        Parameters(IdIn { id }): Parameters<IdIn>,
    ) -> Result<Json<ObjectiveOut>, String> {
        let mut client = self.client.clone();
        let progress = meta.get_progress_token().map(|t| (peer, t));
        let end = wait_end(&mut client, &id, progress)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Json(objective_out(&end)?))
    }
}

/// The `SubmitRequest` an MCP `submit` asks for.
pub fn submit_request(
    input: SubmitIn,
    default_workdir: &std::path::Path,
) -> crate::error::Result<SubmitRequest> {
    let forms = [
        input.plan.is_some(),
        input.plan_text.is_some(),
        input.command.is_some(),
        input.agent.is_some(),
    ];
    if forms.iter().filter(|f| **f).count() != 1 {
        return Err(CtlError::Usage(
            "give exactly one of plan, plan_text, command or agent (with prompt)".into(),
        ));
    }
    if input.agent.is_some() != input.prompt.is_some() {
        return Err(CtlError::Usage("agent and prompt go together".into()));
    }
    if input.format.is_some() && input.plan_text.is_none() {
        return Err(CtlError::Usage("format is the format of plan_text".into()));
    }
    if !input.args.is_empty() && input.command.is_none() {
        return Err(CtlError::Usage("args are the arguments of command".into()));
    }
    let timeout = match input.timeout.as_deref() {
        Some(text) => match parse_duration_ms(text) {
            Ok(0) => return Err(CtlError::Usage("timeout: must be longer than zero".into())),
            Ok(ms) => Some(ms),
            Err(e) => return Err(CtlError::Usage(format!("timeout: {e}"))),
        },
        None => None,
    };
    let args = SubmitArgs {
        plan: None,
        command: input
            .command
            .iter()
            .cloned()
            .chain(input.args.iter().cloned())
            .collect(),
        agent: input.agent.clone(),
        prompt: input.prompt.clone(),
        goal: None,
        planner: None,
        verifier: None,
        verify_command: None,
        max_rounds: None,
        name: input.name.clone(),
        workdir: None,
        env: input.env.clone().into_iter().collect(),
        retries: input.retries,
        workspace: None,
        timeout,
        idle_timeout: None,
        memory: None,
        cpu_seconds: None,
        budget_usd: input.budget_usd,
        request_id: input.request_id.clone(),
        clean_env: false,
        wait: false,
        watch: false,
        dry_run: input.dry_run,
    };
    let spec = if input.plan.is_some() || input.plan_text.is_some() {
        let (text, format, what) = match (input.plan, input.plan_text, input.format) {
            (Some(plan), _, _) => {
                let text = serde_json::to_string(&serde_json::Value::Object(plan))
                    .map_err(|e| CtlError::Plan(format!("plan: {e}")))?;
                (text, PlanFileFormat::Json, "plan")
            }
            (None, Some(text), Some(format)) => {
                let format = match format {
                    PlanFormat::Toml => PlanFileFormat::Toml,
                    PlanFormat::Yaml => PlanFileFormat::Yaml,
                    PlanFormat::Json => PlanFileFormat::Json,
                };
                (text, format, "plan_text")
            }
            _ => {
                return Err(CtlError::Usage(
                    "plan_text needs its format (toml, yaml or json)".into(),
                ));
            }
        };
        let mut spec =
            parse_plan(&text, format, what, "plan").map_err(|e| CtlError::Plan(e.to_string()))?;
        apply_overrides(&mut spec, &args)?;
        validate_spec(&spec, None).map_err(|e| CtlError::Plan(format!("{what}: {e}")))?;
        spec
    } else {
        build_spec(&args)?.spec
    };
    let workdir = match input.workdir {
        Some(dir) => PathBuf::from(dir),
        None => default_workdir.to_path_buf(),
    };
    if !workdir.is_absolute() || !workdir.is_dir() {
        return Err(CtlError::Usage(format!(
            "workdir {}: not an absolute path to a directory",
            workdir.display()
        )));
    }
    let workdir = workdir.to_str().map(str::to_string).ok_or_else(|| {
        CtlError::Usage(format!("workdir {} is not valid UTF-8", workdir.display()))
    })?;
    // Like `orchctl submit`: this process's environment goes along (it carries the
    // attempt's ORCH_* variables when an agent runs this server).
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    check_env(&env, "environment").map_err(|e| {
        CtlError::Usage(format!(
            "the MCP server's environment cannot be sent: {}",
            e.problem
        ))
    })?;
    Ok(SubmitRequest {
        spec: Some(spec),
        dry_run: input.dry_run,
        request_id: input.request_id.unwrap_or_default(),
        workdir,
        env,
        ..SubmitRequest::default()
    })
}

/// Whether an event says the objective reached a final state.
fn ends(e: &Event) -> bool {
    matches!(&e.payload, Some(Payload::ObjectiveState(s)) if is_terminal(s.state))
}

/// Follows an objective's events until it ends and returns it as it ended; each event is
/// sent as a progress notification when the caller gave a progress token.
pub async fn wait_end(
    client: &mut Client,
    id: &str,
    progress: Option<(Peer<RoleServer>, ProgressToken)>,
) -> crate::error::Result<Objective> {
    let mut from = 0u64;
    let mut seen = 0u64;
    loop {
        let request = WatchRequest {
            objective_id: id.to_string(),
            from_seq: Some(from),
            kinds: Vec::new(),
        };
        let r = client.api.watch(request).await;
        let mut stream = client.check(r)?;
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    from = e.seq + 1;
                    seen += 1;
                    if let Some((peer, token)) = &progress {
                        let note = ProgressNotificationParam::new(token.clone(), seen as f64)
                            .with_message(views::event_line(&e, false));
                        // A client that went away gets no more; the wait goes on.
                        let _ = peer.notify_progress(note).await;
                    }
                    if ends(&e) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => return Err(client.status_error(status)),
            }
        }
        let r = client
            .api
            .get_objective(GetObjectiveRequest { id: id.to_string() })
            .await;
        let o = client.check(r)?;
        if is_terminal(o.state) {
            return Ok(o);
        }
        // Retried after it ended, or the stream closed early: follow on from where it was.
    }
}

/// The captured output of an objective's steps as text, cut at [`MAX_LOG_BYTES`].
pub async fn read_logs(
    client: &mut Client,
    id: &str,
    step: Option<&str>,
    attempt: Option<u32>,
    tail: u64,
) -> crate::error::Result<(String, bool)> {
    let request = StreamLogsRequest {
        id: id.to_string(),
        step_id: step.unwrap_or_default().to_string(),
        attempt: attempt.unwrap_or(0),
        follow: false,
        tail_lines: tail,
        streams: Vec::new(),
    };
    let r = client.api.stream_logs(request).await;
    let mut stream = client.check(r)?;
    let mut printer = LogPrinter::new(step.is_none(), true);
    let mut out: Vec<u8> = Vec::new();
    let mut truncated = false;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if out.len() >= MAX_LOG_BYTES {
                    truncated = true;
                    continue;
                }
                out.extend_from_slice(&printer.render(&chunk));
                if out.len() > MAX_LOG_BYTES {
                    out.truncate(MAX_LOG_BYTES);
                    truncated = true;
                }
            }
            Ok(None) => break,
            Err(status) => return Err(client.status_error(status)),
        }
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), truncated))
}

/// What a resource URI names.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Objective(String),
    Logs(String, String),
}

/// Parses `orch://objectives/{id}` and `orch://objectives/{id}/logs/{step}`.
pub fn parse_uri(uri: &str) -> Option<Target> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let mut parts = rest.split('/');
    let id = parts.next().filter(|s| !s.is_empty())?.to_string();
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Some(Target::Objective(id)),
        (Some("logs"), Some(step), None) if !step.is_empty() => {
            Some(Target::Logs(id, step.to_string()))
        }
        _ => None,
    }
}

fn unknown_uri(uri: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "unknown resource {uri} (orch's are {URI_PREFIX}{{id}} and {URI_PREFIX}{{id}}/logs/{{step}})"
        ),
        None,
    )
}

/// Sends `on_change(uri)` for every event of the objective `uri` names, from now on,
/// until the stream ends or the task is dropped.
async fn watch_changes<F, Fut>(mut client: Client, uri: String, id: String, mut on_change: F)
where
    F: FnMut(String) -> Fut + Send,
    Fut: std::future::Future<Output = bool> + Send,
{
    let r = client.api.daemon_status(DaemonStatusRequest {}).await;
    let Ok(now) = client.check(r) else { return };
    let request = WatchRequest {
        objective_id: id,
        from_seq: Some(now.last_event_seq + 1),
        kinds: Vec::new(),
    };
    let r = client.api.watch(request).await;
    let Ok(mut stream) = client.check(r) else {
        return;
    };
    while let Ok(Some(_event)) = stream.message().await {
        if !on_change(uri.clone()).await {
            return;
        }
    }
}

impl OrchMcp {
    async fn read(&self, uri: &str) -> std::result::Result<ReadResourceResult, ErrorData> {
        let mut client = self.client.clone();
        let refused = |e: CtlError| ErrorData::invalid_params(e.to_string(), None);
        match parse_uri(uri) {
            Some(Target::Objective(id)) => {
                let r = client.api.get_objective(GetObjectiveRequest { id }).await;
                let o = client.check(r).map_err(refused)?;
                let text = serde_json::to_string_pretty(&json::objective(&o))
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                Ok(ReadResourceResult::new(vec![
                    ResourceContents::text(text, uri).with_mime_type("application/json"),
                ]))
            }
            Some(Target::Logs(id, step)) => {
                let (text, _) = read_logs(&mut client, &id, Some(&step), None, 0)
                    .await
                    .map_err(refused)?;
                Ok(ReadResourceResult::new(vec![
                    ResourceContents::text(text, uri).with_mime_type("text/plain"),
                ]))
            }
            None => Err(unknown_uri(uri)),
        }
    }
}

#[tool_handler]
impl ServerHandler for OrchMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("orch", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "orch supervises long-running AI agents and commands. Submit objectives (plans, \
commands or agent prompts), follow them with status/wait/logs, and control them with \
cancel/pause/resume/retry/approve. Each objective is also the resource orch://objectives/{id}.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListResourcesResult, ErrorData> {
        let mut client = self.client.clone();
        let request = ListObjectivesRequest {
            state: None,
            limit: LISTED_OBJECTIVES,
        };
        let r = client.api.list_objectives(request).await;
        let items = client
            .check(r)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            .objectives;
        let resources = items
            .iter()
            .map(|s| {
                Resource::new(format!("{URI_PREFIX}{}", s.id), s.name.clone())
                    .with_mime_type("application/json")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListResourceTemplatesResult, ErrorData> {
        let templates = vec![
            ResourceTemplate::new(format!("{URI_PREFIX}{{id}}"), "objective")
                .with_description("An objective's status (the `orchctl status -o json` object)")
                .with_mime_type("application/json"),
            ResourceTemplate::new(format!("{URI_PREFIX}{{id}}/logs/{{step}}"), "step logs")
                .with_description("The captured output of a step's latest attempt")
                .with_mime_type("text/plain"),
        ];
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<ReadResourceResponse, ErrorData> {
        self.read(&request.uri).await.map(Into::into)
    }

    #[allow(
        deprecated,
        reason = "resources/subscribe is what clients of 2025 revisions send"
    )]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<(), ErrorData> {
        let uri = request.uri;
        let Some(Target::Objective(id)) = parse_uri(&uri) else {
            return Err(unknown_uri(&uri));
        };
        // Refuse what cannot be read (an unknown id, another user's objective).
        self.read(&uri).await?;
        let peer = context.peer;
        let task = tokio::spawn(watch_changes(
            self.client.clone(),
            uri.clone(),
            id,
            move |uri| {
                let peer = peer.clone();
                async move {
                    peer.notify_resource_updated(
                        rmcp::model::ResourceUpdatedNotificationParam::new(uri),
                    )
                    .await
                    .is_ok()
                }
            },
        ));
        if let Ok(mut subs) = self.subscriptions.lock()
            && let Some(old) = subs.insert(uri, task)
        {
            old.abort();
        }
        Ok(())
    }

    #[allow(
        deprecated,
        reason = "resources/unsubscribe is what clients of 2025 revisions send"
    )]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<(), ErrorData> {
        if let Ok(mut subs) = self.subscriptions.lock()
            && let Some(task) = subs.remove(&request.uri)
        {
            task.abort();
        }
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| matches!(parse_uri(u), Some(Target::Objective(_))))
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> std::result::Result<(), ErrorData> {
        let uris = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        let mut tasks = Vec::new();
        for uri in uris {
            let Some(Target::Objective(id)) = parse_uri(&uri) else {
                continue;
            };
            let sink = context.sink().clone();
            tasks.push(tokio::spawn(watch_changes(
                self.client.clone(),
                uri,
                id,
                move |uri| {
                    let sink = sink.clone();
                    async move { sink.notify_resource_updated(uri).await.is_ok() }
                },
            )));
        }
        context.cancelled().await;
        for task in tasks {
            task.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("orch://objectives/01J"),
            Some(Target::Objective("01J".into()))
        );
        assert_eq!(
            parse_uri("orch://objectives/01J/logs/build"),
            Some(Target::Logs("01J".into(), "build".into()))
        );
        for bad in [
            "orch://objectives/",
            "orch://objectives/01J/logs/",
            "orch://objectives/01J/logs",
            "orch://objectives/01J/x/y",
            "orch://objectives/01J/logs/a/b",
            "file:///etc/passwd",
        ] {
            assert_eq!(parse_uri(bad), None, "{bad}");
        }
    }

    fn input(v: serde_json::Value) -> SubmitIn {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refusal(v: serde_json::Value) -> String {
        let dir = std::env::temp_dir();
        match submit_request(input(v), &dir) {
            Ok(_) => panic!("must be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn submit_forms() {
        let dir = std::env::temp_dir();
        let r = submit_request(
            input(serde_json::json!({"command": "echo", "args": ["a", "b"], "retries": 2})),
            &dir,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let spec = r.spec.unwrap_or_default();
        assert_eq!(spec.steps[0].command, vec!["echo", "a", "b"]);
        let retry = spec.defaults.and_then(|d| d.retry).unwrap_or_default();
        assert_eq!(retry.max_attempts, Some(3));
        let r = submit_request(
            input(serde_json::json!({
                "plan": {"name": "p", "steps": [{"id": "a", "command": ["true"]}]},
                "timeout": "1m",
            })),
            &dir,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let spec = r.spec.unwrap_or_default();
        assert_eq!(spec.name, "p");
        assert_eq!(spec.defaults.and_then(|d| d.timeout_ms), Some(60_000));
        let r = submit_request(
            input(serde_json::json!({
                "plan_text": "[[steps]]\nid = \"x\"\ncommand = [\"true\"]\n",
                "format": "toml",
            })),
            &dir,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.spec.unwrap_or_default().steps[0].id, "x");
    }

    #[test]
    fn submit_refusals_name_the_problem() {
        let both = refusal(serde_json::json!({"command": "true", "agent": "a", "prompt": "p"}));
        assert!(both.starts_with("give exactly one of"), "{both}");
        let none = refusal(serde_json::json!({}));
        assert!(none.starts_with("give exactly one of"), "{none}");
        let t = refusal(serde_json::json!({"plan_text": "x"}));
        assert_eq!(t, "plan_text needs its format (toml, yaml or json)");
        let t = refusal(serde_json::json!({"command": "true", "timeout": "soon"}));
        assert!(t.starts_with("timeout: "), "{t}");
        let t = refusal(serde_json::json!({"plan": {"steps": [{"id": "a"}]}}));
        assert!(t.contains("steps[a]"), "{t}");
        let t = refusal(serde_json::json!({"command": "true", "workdir": "rel"}));
        assert!(t.contains("not an absolute path"), "{t}");
    }
}
