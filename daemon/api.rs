//! The gRPC edge: the only module that knows tonic/prost types. It checks the caller,
//! validates and resolves specs into domain types, forwards commands to the engine
//! (reserving channel capacity first) and maps errors to `Status`. Queries read the store.

use orch_proto::words::EVENT_KINDS;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use orch_proto::v1 as pb;
use orch_proto::v1::orchestrator_server::Orchestrator;
use orch_proto::validate::{SpecError, check_env, parallel_groups, validate_spec};

use crate::config::{Config, limits_of};
use crate::engine::{Caller, Command, EngineError, NewObjective};
use crate::logfile::{Chunk, LogReader, Stream, Tail, attempt_log};
use crate::model::{
    Attempt, Budget, Limits, ObjState, Objective, Outcome, RetryPolicy, Step, StepPlan, StepState,
    Usage, expand_template,
};
use crate::model::{AuditEntry, Event, EventKind};
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// Static facts about the running daemon, for `DaemonStatus`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub limits_backend: String,
    pub limits_detail: String,
    pub started: Instant,
}

fn required_id(id: String) -> Result<String, Status> {
    if id.trim().is_empty() {
        return Err(Status::invalid_argument("id: missing (an objective id)"));
    }
    Ok(id.trim().to_string())
}

/// One `StreamLogs` call: sends the selected attempts' logs in order, following each
/// live attempt until it ends when asked to.
struct LogJob {
    store: Store,
    logs_dir: PathBuf,
    objective_id: String,
    /// `(step index, step id, attempt number)` in plan order.
    targets: Vec<(u32, String, u32)>,
    streams: Vec<Stream>,
    follow: bool,
    tail: usize,
    events: broadcast::Receiver<Arc<Event>>,
}

impl LogJob {
    fn chunk(&self, step_id: &str, number: u32, c: Chunk) -> Option<pb::LogChunk> {
        if !self.streams.contains(&c.stream) {
            return None;
        }
        Some(pb::LogChunk {
            step_id: step_id.to_string(),
            attempt: number,
            stream: match c.stream {
                Stream::Stdout => pb::LogStream::Stdout,
                Stream::Stderr => pb::LogStream::Stderr,
            } as i32,
            data: c.data,
        })
    }

    fn ended(&self, index: u32, number: u32) -> bool {
        match self.store.attempt(&self.objective_id, index, number) {
            Ok(Some(a)) => a.ended_ms.is_some(),
            // No record (or a store error): nothing more will be written.
            _ => true,
        }
    }

    async fn run(mut self, tx: mpsc::Sender<Result<pb::LogChunk, Status>>) {
        let targets = std::mem::take(&mut self.targets);
        for (index, step_id, number) in targets {
            let path = attempt_log(&self.logs_dir, &self.objective_id, &step_id, number);
            let mut reader = LogReader::new(&path);
            // Subscribed to changes before the first read, so no write or end is missed.
            let watch = if self.follow {
                reader.watcher().ok()
            } else {
                None
            };
            let first = match reader.read_new() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!(
                            "cannot read {}: {e}",
                            path.display()
                        ))))
                        .await;
                    return;
                }
            };
            let first: Vec<Chunk> = first
                .into_iter()
                .filter(|c| self.streams.contains(&c.stream))
                .collect();
            let first = if self.tail > 0 {
                let mut t = Tail::new(self.tail);
                first.into_iter().for_each(|c| t.push(c));
                t.finish()
            } else {
                first
            };
            for c in first {
                if let Some(m) = self.chunk(&step_id, number, c)
                    && tx.send(Ok(m)).await.is_err()
                {
                    return;
                }
            }
            let Some(watch) = watch else { continue };
            loop {
                let done = self.ended(index, number);
                match reader.read_new() {
                    Ok(chunks) => {
                        for c in chunks {
                            if let Some(m) = self.chunk(&step_id, number, c)
                                && tx.send(Ok(m)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "cannot read {}: {e}",
                                path.display()
                            ))))
                            .await;
                        return;
                    }
                }
                if done {
                    break;
                }
                tokio::select! {
                    _ = watch.changed() => {}
                    ev = self.events.recv() => {
                        if let Err(broadcast::error::RecvError::Closed) = ev {
                            break;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        }
    }
}

/// One `Watch` call: history from the store, then live events, joined with no gap and no
/// duplicate by sequence number. Only durable events are replayed; a watcher that falls
/// behind the live broadcast is re-fed from the store, never skipped.
struct WatchJob {
    store: Store,
    published: Arc<AtomicU64>,
    objective_id: Option<String>,
    /// Seq of the event that ended the objective, if it had ended when the watch began.
    ended_seq: Option<u64>,
    kinds: HashSet<String>,
    /// The next global sequence number not yet looked at.
    next: u64,
}

enum Sent {
    More,
    /// The watched objective ended (or the client went away).
    Done,
}

type EventTx = mpsc::Sender<Result<pb::Event, Status>>;

impl WatchJob {
    async fn offer(&mut self, e: &Event, tx: &EventTx) -> Sent {
        if e.seq < self.next {
            // Already passed (or skipped by `--from`): only the end still matters.
            return match (&e.kind, &self.objective_id) {
                (EventKind::ObjectiveState { state, .. }, Some(id))
                    if state.is_terminal() && e.objective_id == *id =>
                {
                    self.final_state(id, e.seq)
                }
                _ => Sent::More,
            };
        }
        self.next = e.seq + 1;
        if let Some(id) = &self.objective_id
            && &e.objective_id != id
        {
            return Sent::More;
        }
        if (self.kinds.is_empty() || self.kinds.contains(e.kind.word()))
            && tx.send(Ok(event_pb(e))).await.is_err()
        {
            return Sent::Done;
        }
        match (&e.kind, &self.objective_id) {
            // The end only if no retry revived it since: the objective records which
            // event ended it last.
            (EventKind::ObjectiveState { state, .. }, Some(id)) if state.is_terminal() => {
                self.final_state(id, e.seq)
            }
            _ => Sent::More,
        }
    }

    /// Whether the terminal state event `seq` is the objective's last end (no retry since).
    fn final_state(&self, id: &str, seq: u64) -> Sent {
        match self.store.objective(id) {
            Ok(Some(o)) if o.ended_seq.is_some_and(|s| s > seq) || !o.state.is_terminal() => {
                Sent::More
            }
            _ => Sent::Done,
        }
    }

    /// Sends stored events from `next` up to what is durable now.
    async fn replay(&mut self, tx: &EventTx) -> Result<Sent, StoreError> {
        loop {
            let upto = self.published.load(AtomicOrdering::SeqCst);
            let batch = match &self.objective_id {
                Some(id) => self.store.objective_events_from(id, self.next, 512)?,
                None => self.store.events_from(self.next, 512)?,
            };
            let batch: Vec<Event> = batch.into_iter().filter(|e| e.seq <= upto).collect();
            if batch.is_empty() {
                // Everything up to what is durable has been looked at.
                self.next = self.next.max(upto + 1);
                return Ok(Sent::More);
            }
            for e in &batch {
                if let Sent::Done = self.offer(e, tx).await {
                    return Ok(Sent::Done);
                }
            }
        }
    }

    async fn run(mut self, mut live: broadcast::Receiver<Arc<Event>>, tx: EventTx) {
        let fail = |e: StoreError| Status::internal(format!("cannot read the event log: {e}"));
        match self.replay(&tx).await {
            Ok(Sent::Done) => return,
            // Ended before `next` (e.g. `--from` past its end): nothing more will come.
            Ok(Sent::More) if self.ended_seq.is_some_and(|s| s < self.next) => return,
            Ok(Sent::More) => {}
            Err(e) => {
                let _ = tx.send(Err(fail(e))).await;
                return;
            }
        }
        loop {
            let got = tokio::select! {
                got = live.recv() => got,
                _ = tx.closed() => return,
            };
            let e = match got {
                Ok(e) => Some(e),
                // Fell behind the broadcast: re-feed from the store, never skip.
                Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Err(Status::unavailable("orchd is stopping"))).await;
                    return;
                }
            };
            // An event past `next` means some were published before we looked (or were
            // lagged over): take those from the store first.
            if e.as_ref().is_none_or(|e| e.seq > self.next) {
                match self.replay(&tx).await {
                    Ok(Sent::Done) => return,
                    Ok(Sent::More) => {}
                    Err(err) => {
                        let _ = tx.send(Err(fail(err))).await;
                        return;
                    }
                }
            }
            if let Some(e) = e
                && let Sent::Done = self.offer(&e, &tx).await
            {
                return;
            }
        }
    }
}

fn event_pb(e: &Event) -> pb::Event {
    use pb::event::Payload as P;
    let payload = match &e.kind {
        EventKind::ObjectiveSubmitted { name, steps } => {
            P::ObjectiveSubmitted(pb::ObjectiveSubmitted {
                name: name.clone(),
                steps: *steps,
            })
        }
        EventKind::ObjectiveState { state, message } => {
            P::ObjectiveState(pb::ObjectiveStateChanged {
                state: obj_state_pb(*state) as i32,
                message: message.clone(),
            })
        }
        EventKind::StepState { state, message } => P::StepState(pb::StepStateChanged {
            state: step_state_pb(*state) as i32,
            message: message.clone(),
        }),
        EventKind::AttemptStarted { pid, agent } => P::AttemptStarted(pb::AttemptStarted {
            pid: *pid,
            agent: agent.clone(),
        }),
        EventKind::AttemptEnded {
            outcome,
            exit_code,
            signal,
            message,
        } => P::AttemptEnded(pb::AttemptEnded {
            outcome: outcome_pb(*outcome) as i32,
            exit_code: *exit_code,
            signal: *signal,
            message: message.clone(),
        }),
        EventKind::RetryScheduled {
            delay_ms,
            due_at_ms,
        } => P::RetryScheduled(pb::RetryScheduled {
            delay_ms: *delay_ms,
            due_at: ts(*due_at_ms),
        }),
        EventKind::Checkpoint { json } => {
            P::Checkpoint(pb::CheckpointRecorded { json: json.clone() })
        }
        EventKind::Usage {
            report,
            step_total,
            objective_total,
            model,
        } => P::Usage(pb::UsageRecorded {
            report: Some(usage_pb(report)),
            step_total: Some(usage_pb(step_total)),
            objective_total: Some(usage_pb(objective_total)),
            model: model.clone(),
        }),
        EventKind::Progress { percent, message } => P::Progress(pb::ProgressReported {
            percent: *percent,
            message: message.clone(),
        }),
        EventKind::BudgetAlert {
            percent,
            budget,
            used,
            limit,
        } => P::BudgetAlert(pb::BudgetAlert {
            percent: *percent,
            budget: budget.clone(),
            used: *used,
            limit: *limit,
        }),
        EventKind::ApprovalRequested => P::ApprovalRequested(pb::ApprovalRequested {
            step_id: e.step_id.clone(),
        }),
        EventKind::ApprovalAnswered {
            approved,
            by_uid,
            reason,
        } => P::ApprovalAnswered(pb::ApprovalAnswered {
            approved: *approved,
            by_uid: *by_uid,
            reason: reason.clone(),
        }),
    };
    pb::Event {
        seq: e.seq,
        time: ts(e.time_ms),
        objective_id: e.objective_id.clone(),
        step_id: e.step_id.clone(),
        attempt: e.attempt,
        kind: e.kind.word().to_string(),
        payload: Some(payload),
    }
}

/// Whether `program` names an executable file (directly, or found on the daemon's PATH).
fn on_path(program: &str) -> bool {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(program))))
}

/// Re-reads the config file (SIGHUP or `ReloadConfig`): validates it fully, then hands it
/// to the engine and the API; on any error the running config stays.
pub struct Reloader {
    pub path: PathBuf,
    pub explicit: bool,
    pub overrides: crate::config::Overrides,
    pub current: watch::Sender<Arc<Config>>,
    pub engine: mpsc::Sender<Command>,
}

impl Reloader {
    pub async fn reload(&self) -> Result<PathBuf, String> {
        let cfg = crate::config::read_file(&self.path, self.explicit)
            .and_then(|c| c.layer(&self.overrides))
            .map_err(|e| e.to_string())?;
        let old = self.current.borrow().clone();
        if cfg.socket != old.socket
            || cfg.state_dir != old.state_dir
            || cfg.limits_backend != old.limits_backend
        {
            tracing::warn!(
                "socket, state_dir and limits_backend changes take effect at the next start"
            );
        }
        let cfg = Arc::new(cfg);
        let (tx, rx) = oneshot::channel();
        self.engine
            .send(Command::Reload {
                cfg: cfg.clone(),
                reply: tx,
            })
            .await
            .map_err(|_| "orchd is stopping".to_string())?;
        rx.await.map_err(|_| "orchd is stopping".to_string())?;
        self.current.send_replace(cfg);
        tracing::info!(config = %self.path.display(), "config reloaded");
        Ok(self.path.clone())
    }
}

/// The `orch.v1.Orchestrator` service.
pub struct Api {
    reloader: Arc<Reloader>,
    events: broadcast::Sender<Arc<Event>>,
    published: Arc<AtomicU64>,
    engine: mpsc::Sender<Command>,
    store: Store,
    config: watch::Receiver<Arc<Config>>,
    info: Arc<DaemonInfo>,
}

impl Api {
    pub fn new(
        engine: mpsc::Sender<Command>,
        store: Store,
        config: watch::Receiver<Arc<Config>>,
        info: Arc<DaemonInfo>,
        events: broadcast::Sender<Arc<Event>>,
        published: Arc<AtomicU64>,
        reloader: Arc<Reloader>,
    ) -> Api {
        Api {
            reloader,
            events,
            published,
            engine,
            store,
            config,
            info,
        }
    }

    /// Sends a command to the engine and waits for its reply.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let permit = self
            .engine
            .reserve()
            .await
            .map_err(|_| Status::unavailable("orchd is stopping"))?;
        let (tx, rx) = oneshot::channel();
        permit.send(make(tx));
        rx.await
            .map_err(|_| Status::unavailable("orchd is stopping"))
    }

    async fn submit_inner(
        &self,
        who: Caller,
        req: pb::SubmitRequest,
    ) -> Result<pb::SubmitResponse, Status> {
        let spec = req.spec.ok_or_else(|| {
            Status::invalid_argument("spec: missing (an objective needs a spec with steps)")
        })?;
        check_env(&req.env, "env").map_err(spec_status)?;
        if req.request_id.len() > 200 {
            return Err(Status::invalid_argument(
                "request_id: longer than 200 bytes",
            ));
        }
        let cfg = self.config.borrow().clone();
        let steps = resolve(&spec, &cfg, &req.workdir).map_err(spec_status)?;
        let groups = parallel_groups(&spec).map_err(spec_status)?;
        let plan = resolved_plan_pb(&spec.name, &steps, groups);
        if req.dry_run {
            return Ok(pb::SubmitResponse {
                id: String::new(),
                existing: false,
                plan: Some(plan),
            });
        }
        let new = NewObjective {
            name: spec.name.clone(),
            goal: spec.goal.clone(),
            priority: spec.priority,
            budget: Budget {
                max_cost_usd: spec.budget_usd,
                max_tokens: spec.max_tokens,
            },
            steps,
            client_env: if req.env.is_empty() {
                None
            } else {
                Some(req.env.into_iter().collect())
            },
            request_id: req.request_id,
            caller: who,
        };
        let done = self
            .ask(|reply| Command::Submit {
                new: Box::new(new),
                reply,
            })
            .await?
            .map_err(engine_status)?;
        Ok(pb::SubmitResponse {
            id: done.id,
            existing: done.existing,
            plan: Some(plan),
        })
    }

    /// Records a mutating call and its result in the audit trail (through the engine,
    /// the store's one writer; committed with its next turn).
    async fn audit<T>(
        &self,
        who: Caller,
        action: &str,
        objective_id: &str,
        result: &Result<T, Status>,
    ) {
        let result = match result {
            Ok(_) => "ok".to_string(),
            Err(s) if s.code() == tonic::Code::PermissionDenied => "denied".to_string(),
            // One line per entry, whatever the message.
            Err(s) => format!(
                "error: {}",
                s.message().split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        };
        let entry = AuditEntry {
            time_ms: crate::model::now_ms(),
            uid: who.uid,
            gid: who.gid,
            pid: who.pid,
            action: action.to_string(),
            objective_id: objective_id.to_string(),
            result,
        };
        if let Ok(permit) = self.engine.reserve().await {
            permit.send(Command::Audit(Box::new(entry)));
        }
    }

    /// Cancel, pause or resume, audited.
    async fn control(
        &self,
        req: Request<pb::ObjectiveRef>,
        action: &str,
        make: fn(String, Caller, crate::engine::Reply<()>) -> Command,
    ) -> Result<Response<pb::Objective>, Status> {
        let who = caller(&req);
        let raw = req.into_inner().id;
        let result = async {
            let id = required_id(raw.clone())?;
            self.ask(|reply| make(id.clone(), who, reply))
                .await?
                .map_err(engine_status)?;
            read_objective(&self.store, &id)
        }
        .await;
        self.audit(who, action, raw.trim(), &result).await;
        result.map(Response::new)
    }
}

/// The caller's credentials from the Unix socket (SO_PEERCRED).
pub fn caller<T>(req: &Request<T>) -> Caller {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| Caller {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid().unwrap_or(0),
        })
        .unwrap_or_default()
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::NotFound(m) => Status::not_found(m),
        EngineError::FailedPrecondition(m) => Status::failed_precondition(m),
        EngineError::Unavailable(m) => Status::unavailable(m),
        EngineError::PermissionDenied(m) => Status::permission_denied(m),
        EngineError::Store(e) => store_status(e),
    }
}

fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error");
    Status::internal(format!("store error: {e}"))
}

fn spec_status(e: SpecError) -> Status {
    Status::invalid_argument(e.to_string())
}

// ---------------------------------------------------------------- spec resolution

/// Validates a spec against the config and resolves it into the steps the daemon runs:
/// agent commands expanded, defaults applied (step, then plan `[defaults]`, then the agent
/// profile, then the daemon config), workdirs made absolute.
pub fn resolve(
    spec: &pb::ObjectiveSpec,
    cfg: &Config,
    client_workdir: &str,
) -> Result<Vec<StepPlan>, SpecError> {
    let agents: HashSet<String> = cfg.agents.keys().cloned().collect();
    validate_spec(spec, Some(&agents))?;
    let base_dir = if client_workdir.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    } else {
        let p = PathBuf::from(client_workdir);
        if !p.is_absolute() {
            return Err(SpecError {
                field: "workdir".into(),
                problem: format!("`{client_workdir}` is not an absolute path"),
            });
        }
        p
    };
    let defaults = spec.defaults.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(spec.steps.len());
    for s in &spec.steps {
        let profile = if s.agent.is_empty() {
            None
        } else {
            cfg.agents.get(&s.agent)
        };
        let workdir = if s.workdir.is_empty() {
            base_dir.clone()
        } else {
            base_dir.join(&s.workdir)
        };
        let workdir = normalize(&workdir);
        let workdir_text = workdir.display().to_string();
        let vars = [
            ("prompt", s.prompt.as_str()),
            ("workdir", workdir_text.as_str()),
        ];
        let command = match profile {
            Some(p) => p
                .command
                .iter()
                .map(|a| expand_template(a, &vars))
                .collect(),
            None => s.command.clone(),
        };
        let mut env: BTreeMap<String, String> = profile.map(|p| p.env.clone()).unwrap_or_default();
        env.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut retry = cfg.retry_policy();
        overlay_retry(&mut retry, defaults.retry.as_ref());
        overlay_retry(&mut retry, s.retry.as_ref());
        let mut limits = cfg.limits();
        if let Some(p) = profile {
            overlay_limits(&mut limits, &limits_of(&p.limits));
        }
        if let Some(l) = &defaults.limits {
            overlay_limits(&mut limits, &limits_from_pb(l));
        }
        if let Some(l) = &s.limits {
            overlay_limits(&mut limits, &limits_from_pb(l));
        }
        let profile_timeout = profile.and_then(|p| p.timeout).map(|d| d.0);
        let profile_idle = profile.and_then(|p| p.idle_timeout).map(|d| d.0);
        out.push(StepPlan {
            id: s.id.clone(),
            agent: s.agent.clone(),
            prompt: s.prompt.clone(),
            command,
            template: profile.map(|p| p.command.clone()).unwrap_or_default(),
            workdir: workdir_text,
            env,
            step_env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            needs: s.needs.clone(),
            timeout_ms: s
                .timeout_ms
                .or(defaults.timeout_ms)
                .or(profile_timeout)
                .or(cfg.defaults.timeout.map(|d| d.0)),
            idle_timeout_ms: s
                .idle_timeout_ms
                .or(defaults.idle_timeout_ms)
                .or(profile_idle)
                .or(cfg.defaults.idle_timeout.map(|d| d.0)),
            retry,
            limits,
            requires_approval: s.requires_approval,
            fallback: s.fallback.clone(),
            fallback_on_rate_limit: s.fallback_on_rate_limit,
        });
    }
    Ok(out)
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn overlay_retry(p: &mut RetryPolicy, r: Option<&pb::RetryPolicy>) {
    let Some(r) = r else { return };
    if let Some(v) = r.max_attempts {
        p.max_attempts = v;
    }
    if let Some(v) = r.initial_backoff_ms {
        p.initial_backoff_ms = v;
    }
    if let Some(v) = r.max_backoff_ms {
        p.max_backoff_ms = v;
    }
    if let Some(v) = r.multiplier {
        p.multiplier = v;
    }
    if let Some(v) = r.jitter {
        p.jitter = v;
    }
    if !r.retry_on.is_empty() {
        p.retry_on = r
            .retry_on
            .iter()
            .filter_map(|o| pb::Outcome::try_from(*o).ok().and_then(outcome_from_pb))
            .collect();
    }
    if !r.retry_exit_codes.is_empty() {
        p.retry_exit_codes = r.retry_exit_codes.clone();
    }
    if p.max_backoff_ms < p.initial_backoff_ms {
        p.max_backoff_ms = p.initial_backoff_ms;
    }
}

fn overlay_limits(l: &mut Limits, o: &Limits) {
    l.memory_bytes = o.memory_bytes.or(l.memory_bytes);
    l.cpu_seconds = o.cpu_seconds.or(l.cpu_seconds);
    l.pids = o.pids.or(l.pids);
    l.open_files = o.open_files.or(l.open_files);
    l.cpu_quota = o.cpu_quota.or(l.cpu_quota);
}

fn limits_from_pb(l: &pb::Limits) -> Limits {
    Limits {
        memory_bytes: l.memory_bytes,
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    }
}

// ---------------------------------------------------------------- domain → proto

fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    Some(orch_proto::ts_from_ms(ms))
}

fn usage_pb(u: &Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cost_usd: u.cost_usd,
    }
}

pub fn obj_state_pb(s: ObjState) -> pb::ObjectiveState {
    match s {
        ObjState::Pending => pb::ObjectiveState::Pending,
        ObjState::Running => pb::ObjectiveState::Running,
        ObjState::Paused => pb::ObjectiveState::Paused,
        ObjState::AwaitingApproval => pb::ObjectiveState::AwaitingApproval,
        ObjState::Succeeded => pb::ObjectiveState::Succeeded,
        ObjState::Failed => pb::ObjectiveState::Failed,
        ObjState::Cancelled => pb::ObjectiveState::Cancelled,
    }
}

fn obj_state_from_pb(s: pb::ObjectiveState) -> Option<ObjState> {
    ObjState::ALL.into_iter().find(|d| obj_state_pb(*d) == s)
}

pub fn step_state_pb(s: StepState) -> pb::StepState {
    match s {
        StepState::Waiting => pb::StepState::Waiting,
        StepState::Ready => pb::StepState::Ready,
        StepState::Running => pb::StepState::Running,
        StepState::Backoff => pb::StepState::Backoff,
        StepState::Paused => pb::StepState::Paused,
        StepState::AwaitingApproval => pb::StepState::AwaitingApproval,
        StepState::Succeeded => pb::StepState::Succeeded,
        StepState::Failed => pb::StepState::Failed,
        StepState::Cancelled => pb::StepState::Cancelled,
        StepState::Skipped => pb::StepState::Skipped,
    }
}

pub fn outcome_pb(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Success => pb::Outcome::Success,
        Outcome::ExitFailure => pb::Outcome::ExitFailure,
        Outcome::Signaled => pb::Outcome::Signaled,
        Outcome::Timeout => pb::Outcome::Timeout,
        Outcome::MemoryLimit => pb::Outcome::MemoryLimit,
        Outcome::CpuLimit => pb::Outcome::CpuLimit,
        Outcome::BudgetExceeded => pb::Outcome::BudgetExceeded,
        Outcome::Cancelled => pb::Outcome::Cancelled,
        Outcome::Interrupted => pb::Outcome::Interrupted,
        Outcome::SpawnError => pb::Outcome::SpawnError,
    }
}

fn outcome_from_pb(o: pb::Outcome) -> Option<Outcome> {
    [
        Outcome::Success,
        Outcome::ExitFailure,
        Outcome::Signaled,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::CpuLimit,
        Outcome::BudgetExceeded,
        Outcome::Cancelled,
        Outcome::Interrupted,
        Outcome::SpawnError,
    ]
    .into_iter()
    .find(|d| outcome_pb(*d) == o)
}

fn retry_pb(r: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_attempts: Some(r.max_attempts),
        initial_backoff_ms: Some(r.initial_backoff_ms),
        max_backoff_ms: Some(r.max_backoff_ms),
        multiplier: Some(r.multiplier),
        jitter: Some(r.jitter),
        retry_on: r.retry_on.iter().map(|o| outcome_pb(*o) as i32).collect(),
        retry_exit_codes: r.retry_exit_codes.clone(),
    }
}

fn limits_pb(l: &Limits) -> pb::Limits {
    pb::Limits {
        memory_bytes: l.memory_bytes,
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    }
}

fn attempt_pb(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        number: a.number,
        pid: a.pid,
        started_at: ts(a.started_ms),
        ended_at: a.ended_ms.and_then(ts),
        agent: a.agent.clone(),
        outcome: a.outcome.map_or(pb::Outcome::Unspecified, outcome_pb) as i32,
        exit_code: a.exit_code,
        signal: a.signal,
        peak_rss_bytes: a.peak_rss_bytes,
        cpu_ms: a.cpu_ms,
        usage: Some(usage_pb(&a.usage)),
        message: a.message.clone(),
        command: a.command.clone(),
    }
}

fn step_pb(s: &Step, attempts: &[Attempt]) -> pb::Step {
    pb::Step {
        id: s.plan.id.clone(),
        state: step_state_pb(s.state) as i32,
        agent: s.plan.agent.clone(),
        command: s.plan.command.clone(),
        needs: s.plan.needs.clone(),
        checkpoint_json: s.checkpoint.clone(),
        attempts: attempts
            .iter()
            .filter(|a| a.step_index == s.index)
            .map(attempt_pb)
            .collect(),
        next_attempt_at: s.next_attempt_ms.and_then(ts),
        progress: Some(pb::Progress {
            percent: s.progress.percent,
            message: s.progress.message.clone(),
        }),
        usage: Some(usage_pb(&s.usage)),
        message: s.message.clone(),
        prompt: s.plan.prompt.clone(),
        workdir: s.plan.workdir.clone(),
        requires_approval: s.plan.requires_approval,
        fallback: s.plan.fallback.clone(),
    }
}

fn budget_pb(b: &Budget) -> pb::Budget {
    pb::Budget {
        max_cost_usd: b.max_cost_usd,
        max_tokens: b.max_tokens,
    }
}

fn objective_pb(o: &Objective, steps: &[Step], attempts: &[Attempt]) -> pb::Objective {
    pb::Objective {
        id: o.id.clone(),
        name: o.name.clone(),
        goal: o.goal.clone(),
        state: obj_state_pb(o.state) as i32,
        created_at: ts(o.created_ms),
        updated_at: ts(o.updated_ms),
        usage: Some(usage_pb(&o.usage)),
        budget: Some(budget_pb(&o.budget)),
        steps: steps.iter().map(|s| step_pb(s, attempts)).collect(),
        priority: o.priority,
        message: o.message.clone(),
        owner_uid: o.owner_uid,
        request_id: o.request_id.clone(),
    }
}

fn summary_pb(o: &Objective, steps: &[Step]) -> pb::ObjectiveSummary {
    pb::ObjectiveSummary {
        id: o.id.clone(),
        name: o.name.clone(),
        state: obj_state_pb(o.state) as i32,
        created_at: ts(o.created_ms),
        updated_at: ts(o.updated_ms),
        steps_total: o.step_count,
        steps_succeeded: steps
            .iter()
            .filter(|s| s.state == StepState::Succeeded)
            .count() as u32,
        usage: Some(usage_pb(&o.usage)),
    }
}

fn resolved_plan_pb(name: &str, steps: &[StepPlan], groups: Vec<Vec<String>>) -> pb::ResolvedPlan {
    pb::ResolvedPlan {
        name: name.to_string(),
        steps: steps
            .iter()
            .map(|s| pb::ResolvedStep {
                id: s.id.clone(),
                command: s.command.clone(),
                agent: s.agent.clone(),
                workdir: s.workdir.clone(),
                needs: s.needs.clone(),
                timeout_ms: s.timeout_ms,
                idle_timeout_ms: s.idle_timeout_ms,
                retry: Some(retry_pb(&s.retry)),
                limits: Some(limits_pb(&s.limits)),
                requires_approval: s.requires_approval,
                fallback: s.fallback.clone(),
            })
            .collect(),
        groups: groups
            .into_iter()
            .map(|step_ids| pb::ParallelGroup { step_ids })
            .collect(),
    }
}

/// Reads an objective with its steps and attempts.
pub fn read_objective(store: &Store, id: &str) -> Result<pb::Objective, Status> {
    let obj = store
        .objective(id)
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no objective with id `{id}`")))?;
    let steps = store.steps(id).map_err(store_status)?;
    let attempts = store.attempts(id).map_err(store_status)?;
    Ok(objective_pb(&obj, &steps, &attempts))
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Orchestrator for Api {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let who = caller(&req);
        let dry_run = req.get_ref().dry_run;
        let result = self.submit_inner(who, req.into_inner()).await;
        if !dry_run {
            let id = result.as_ref().map(|r| r.id.clone()).unwrap_or_default();
            self.audit(who, "submit", &id, &result).await;
        }
        result.map(Response::new)
    }

    async fn get_objective(
        &self,
        req: Request<pb::GetObjectiveRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id: missing"));
        }
        read_objective(&self.store, &id).map(Response::new)
    }

    async fn list_objectives(
        &self,
        req: Request<pb::ListObjectivesRequest>,
    ) -> Result<Response<pb::ListObjectivesResponse>, Status> {
        let req = req.into_inner();
        let state = match req.state {
            None => None,
            Some(v) => {
                let s = pb::ObjectiveState::try_from(v)
                    .ok()
                    .and_then(obj_state_from_pb)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!("state: {v} is not an objective state"))
                    })?;
                Some(s)
            }
        };
        let objectives = self
            .store
            .list(state, req.limit as usize)
            .map_err(store_status)?;
        let mut out = Vec::with_capacity(objectives.len());
        for o in &objectives {
            let steps = self.store.steps(&o.id).map_err(store_status)?;
            out.push(summary_pb(o, &steps));
        }
        Ok(Response::new(pb::ListObjectivesResponse {
            objectives: out,
        }))
    }

    async fn cancel(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        self.control(req, "cancel", |id, caller, reply| Command::Cancel {
            id,
            caller,
            reply,
        })
        .await
    }

    async fn pause(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        self.control(req, "pause", |id, caller, reply| Command::Pause {
            id,
            caller,
            reply,
        })
        .await
    }

    async fn resume(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        self.control(req, "resume", |id, caller, reply| Command::Resume {
            id,
            caller,
            reply,
        })
        .await
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let result = async {
            let id = required_id(r.id.clone())?;
            let step = (!r.step_id.trim().is_empty()).then(|| r.step_id.trim().to_string());
            self.ask(|reply| Command::Retry {
                id: id.clone(),
                step,
                caller: who,
                reply,
            })
            .await?
            .map_err(engine_status)?;
            read_objective(&self.store, &id)
        }
        .await;
        self.audit(who, "retry", r.id.trim(), &result).await;
        result.map(Response::new)
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let action = if r.approve { "approve" } else { "deny" };
        let result = async {
            let id = required_id(r.id.clone())?;
            if r.step_id.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "step_id: missing (the step waiting for approval)",
                ));
            }
            self.ask(|reply| Command::Approve {
                id: id.clone(),
                step: r.step_id.trim().to_string(),
                approve: r.approve,
                reason: r.reason.clone(),
                caller: who,
                reply,
            })
            .await?
            .map_err(engine_status)?;
            read_objective(&self.store, &id)
        }
        .await;
        self.audit(who, action, r.id.trim(), &result).await;
        result.map(Response::new)
    }

    type WatchStream = BoxStream<pb::Event>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let mut kinds = HashSet::new();
        for k in &req.kinds {
            let k = k.trim();
            if !EVENT_KINDS.contains(&k) {
                return Err(Status::invalid_argument(format!(
                    "kinds: `{k}` is not an event kind (one of {})",
                    EVENT_KINDS.join(", ")
                )));
            }
            kinds.insert(k.to_string());
        }
        let objective = if req.objective_id.is_empty() {
            None
        } else {
            let o = self
                .store
                .objective(&req.objective_id)
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("no objective with id `{}`", req.objective_id))
                })?;
            Some(o)
        };
        // Subscribed before reading history, so nothing published meanwhile is missed.
        let live = self.events.subscribe();
        let from = match (&objective, req.from_seq) {
            (Some(_), seq) => seq,
            (None, 0) => self.published.load(AtomicOrdering::SeqCst) + 1,
            (None, seq) => seq,
        };
        let (tx, rx) = mpsc::channel(256);
        let job = WatchJob {
            store: self.store.clone(),
            published: self.published.clone(),
            objective_id: objective.as_ref().map(|o| o.id.clone()),
            ended_seq: objective
                .as_ref()
                .and_then(|o| o.ended_seq.filter(|_| o.state.is_terminal())),
            kinds,
            next: from,
        };
        tokio::spawn(job.run(live, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type StreamLogsStream = BoxStream<pb::LogChunk>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = req.into_inner();
        let id = required_id(req.id.clone())?;
        let obj = self
            .store
            .objective(&id)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no objective with id `{id}`")))?;
        let steps = self.store.steps(&id).map_err(store_status)?;
        let selected: Vec<&Step> = if req.step_id.is_empty() {
            steps.iter().collect()
        } else {
            let s = steps
                .iter()
                .find(|s| s.plan.id == req.step_id)
                .ok_or_else(|| {
                    Status::not_found(format!("objective {id} has no step `{}`", req.step_id))
                })?;
            vec![s]
        };
        let mut targets = Vec::new();
        for s in selected {
            let number = if req.attempt == 0 {
                s.attempts
            } else {
                req.attempt
            };
            if number == 0 {
                continue;
            }
            if number > s.attempts {
                return Err(Status::not_found(format!(
                    "step `{}` has {} attempt(s); there is no attempt {number}",
                    s.plan.id, s.attempts
                )));
            }
            targets.push((s.index, s.plan.id.clone(), number));
        }
        let mut streams: Vec<Stream> = req
            .streams
            .iter()
            .filter_map(|v| match pb::LogStream::try_from(*v) {
                Ok(pb::LogStream::Stdout) => Some(Stream::Stdout),
                Ok(pb::LogStream::Stderr) => Some(Stream::Stderr),
                _ => None,
            })
            .collect();
        if streams.is_empty() {
            streams = vec![Stream::Stdout, Stream::Stderr];
        }
        let (tx, rx) = mpsc::channel(16);
        let job = LogJob {
            store: self.store.clone(),
            logs_dir: self.info.state_dir.join("logs"),
            objective_id: obj.id,
            targets,
            streams,
            follow: req.follow,
            tail: req.tail_lines as usize,
            events: self.events.subscribe(),
        };
        tokio::spawn(job.run(tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let cfg = self.config.borrow().clone();
        let agents = cfg
            .agents
            .iter()
            .map(|(name, p)| pb::AgentProfile {
                name: name.clone(),
                command: p.command.clone(),
                usage: p.usage.clone(),
                found: p.command.first().is_some_and(|prog| on_path(prog)),
                env: p.env.clone().into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        let id = req.into_inner().objective_id;
        let cfg = self.config.borrow().clone();
        let (day_key, month_key) = crate::model::usage_keys(chrono::Utc::now());
        let today = self.store.usage_total(&day_key).map_err(store_status)?;
        let month = self.store.usage_total(&month_key).map_err(store_status)?;
        let percent = |used: f64, limit: f64| {
            if limit > 0.0 {
                used / limit * 100.0
            } else {
                100.0
            }
        };
        let mut report = pb::UsageReport {
            today: Some(usage_pb(&today)),
            this_month: Some(usage_pb(&month)),
            daily_budget_usd: cfg.budget.daily_usd,
            monthly_budget_usd: cfg.budget.monthly_usd,
            ..Default::default()
        };
        if id.trim().is_empty() {
            let total = self.store.usage_total("total").map_err(store_status)?;
            report.usage = Some(usage_pb(&total));
            // In total, the tightest daemon-wide budget applies.
            if let Some(d) = cfg.budget.daily_usd {
                report.budget_usd = Some(d);
                report.budget_used_percent = Some(percent(today.cost_usd, d));
            } else if let Some(m) = cfg.budget.monthly_usd {
                report.budget_usd = Some(m);
                report.budget_used_percent = Some(percent(month.cost_usd, m));
            }
        } else {
            let o = self
                .store
                .objective(id.trim())
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("no objective with id `{}`", id.trim()))
                })?;
            report.usage = Some(usage_pb(&o.usage));
            report.max_tokens = o.budget.max_tokens;
            if let Some(b) = o.budget.max_cost_usd {
                report.budget_usd = Some(b);
                report.budget_used_percent = Some(percent(o.usage.cost_usd, b));
            }
        }
        Ok(Response::new(report))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let req = req.into_inner();
        let objective = (!req.objective_id.is_empty()).then_some(req.objective_id.as_str());
        let entries = self
            .store
            .audit(objective, req.limit as usize)
            .map_err(store_status)?
            .into_iter()
            .map(|e| pb::AuditEntry {
                time: ts(e.time_ms),
                uid: e.uid,
                gid: e.gid,
                pid: e.pid,
                action: e.action,
                objective_id: e.objective_id,
                result: e.result,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn daemon_status(
        &self,
        _req: Request<pb::DaemonStatusRequest>,
    ) -> Result<Response<pb::DaemonStatusResponse>, Status> {
        let live = self.ask(|reply| Command::Status { reply }).await?;
        let counts = self
            .store
            .counts()
            .map_err(store_status)?
            .into_iter()
            .map(|(s, n)| (s.word().to_string(), n))
            .collect();
        let info = &self.info;
        Ok(Response::new(pb::DaemonStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_s: info.started.elapsed().as_secs(),
            socket: info.socket.display().to_string(),
            state_dir: info.state_dir.display().to_string(),
            store_bytes: self.store.size_on_disk(),
            limits_backend: info.limits_backend.clone(),
            counts,
            max_parallel: live.max_parallel,
            running_attempts: live.running_attempts,
            config_path: info.config_path.display().to_string(),
            limits_detail: info.limits_detail.clone(),
            last_event_seq: live.last_seq,
        }))
    }

    async fn reload_config(
        &self,
        req: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let who = caller(&req);
        let result = self
            .reloader
            .reload()
            .await
            .map(|path| pb::ReloadConfigResponse {
                config_path: path.display().to_string(),
            })
            .map_err(|e| Status::failed_precondition(format!("{e}; the running config is kept")));
        self.audit(who, "reload", "", &result).await;
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: Vec<pb::StepSpec>) -> pb::ObjectiveSpec {
        pb::ObjectiveSpec {
            name: "t".into(),
            steps,
            ..Default::default()
        }
    }

    fn cfg() -> Config {
        Config::default()
            .layer(&Default::default())
            .expect("default config")
    }

    #[test]
    fn agent_template_is_expanded_as_one_argument() {
        let s = spec(vec![pb::StepSpec {
            id: "a".into(),
            agent: "shell".into(),
            prompt: "echo 'x y'; rm -rf $HOME".into(),
            ..Default::default()
        }]);
        let steps = resolve(&s, &cfg(), "/tmp").unwrap();
        assert_eq!(
            steps[0].command,
            vec!["bash", "-c", "echo 'x y'; rm -rf $HOME"]
        );
        assert_eq!(steps[0].workdir, "/tmp");
    }

    #[test]
    fn defaults_layer_step_over_plan_over_daemon() {
        let mut s = spec(vec![
            pb::StepSpec {
                id: "a".into(),
                command: vec!["true".into()],
                timeout_ms: Some(5),
                retry: Some(pb::RetryPolicy {
                    max_attempts: Some(7),
                    ..Default::default()
                }),
                workdir: "sub/../x".into(),
                ..Default::default()
            },
            pb::StepSpec {
                id: "b".into(),
                command: vec!["true".into()],
                ..Default::default()
            },
        ]);
        s.defaults = Some(pb::StepDefaults {
            timeout_ms: Some(9),
            retry: Some(pb::RetryPolicy {
                initial_backoff_ms: Some(100),
                ..Default::default()
            }),
            limits: Some(pb::Limits {
                memory_bytes: Some(1 << 30),
                ..Default::default()
            }),
            ..Default::default()
        });
        let steps = resolve(&s, &cfg(), "/w").unwrap();
        assert_eq!(steps[0].timeout_ms, Some(5));
        assert_eq!(steps[1].timeout_ms, Some(9));
        assert_eq!(steps[0].retry.max_attempts, 7);
        assert_eq!(steps[1].retry.max_attempts, 3);
        assert_eq!(steps[1].retry.initial_backoff_ms, 100);
        assert_eq!(steps[1].limits.memory_bytes, Some(1 << 30));
        assert_eq!(steps[0].workdir, "/w/x");
    }

    #[test]
    fn unknown_agent_and_relative_workdir_are_refused() {
        let s = spec(vec![pb::StepSpec {
            id: "a".into(),
            agent: "nope".into(),
            ..Default::default()
        }]);
        assert_eq!(
            resolve(&s, &cfg(), "/").unwrap_err().field,
            "steps[a].agent"
        );
        let s = spec(vec![pb::StepSpec {
            id: "a".into(),
            command: vec!["true".into()],
            ..Default::default()
        }]);
        assert_eq!(resolve(&s, &cfg(), "rel").unwrap_err().field, "workdir");
    }
}
