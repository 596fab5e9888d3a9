//! The engine: one actor task that owns all live state and makes every decision.
//! It `select!`s over API commands, runner facts and backoff timers; each turn applies
//! its transitions to the store in one atomic write, flushes once (group commit: one
//! fsync covers every transition of the turn), then publishes the events and only then
//! acts (replies, spawns, signals). Only live objectives are kept in memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;
use crate::limits::{Leaf, Limiter};
use crate::logfile::attempt_log;
use crate::model::{
    Attempt, AuditEntry, Budget, Event, EventKind, Millis, ObjState, Objective, Outcome, Progress,
    Step, StepPlan, StepState, Usage, derive_objective_state, now_ms,
};
use crate::runner::{
    self, AgentLine, AttemptEnd, AttemptKey, Control, Fact, RunSpec, StopReason, UsageFormat,
};
use crate::store::{Store, StoreError, WriteSet};
use crate::sys;

/// Who made a call (from SO_PEERCRED).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// A validated, resolved objective ready to be stored.
#[derive(Debug, Clone)]
pub struct NewObjective {
    pub name: String,
    pub goal: String,
    pub priority: i32,
    pub budget: Budget,
    pub steps: Vec<StepPlan>,
    pub client_env: Option<BTreeMap<String, String>>,
    pub request_id: String,
    pub caller: Caller,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// The result of a submit.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    /// The request id matched an objective submitted before.
    pub existing: bool,
}

/// Live figures for `DaemonStatus`.
#[derive(Debug, Clone, Default)]
pub struct EngineStatus {
    pub running_attempts: u32,
    pub max_parallel: u32,
    pub last_seq: u64,
}

/// Commands from the API.
#[derive(Debug)]
pub enum Command {
    Submit {
        new: Box<NewObjective>,
        reply: Reply<Submitted>,
    },
    Status {
        reply: oneshot::Sender<EngineStatus>,
    },
    /// Answered when the loop turns: the systemd watchdog's liveness check.
    Ping { reply: oneshot::Sender<()> },
    /// Stop every attempt of the objective; answered once every tree is gone.
    Cancel {
        id: String,
        caller: Caller,
        reply: Reply<()>,
    },
    Pause {
        id: String,
        caller: Caller,
        reply: Reply<()>,
    },
    Resume {
        id: String,
        caller: Caller,
        reply: Reply<()>,
    },
    /// Bytes found under the logs directory at start (measured off the engine's task).
    LogBytes(u64),
    /// Append an entry to the audit trail (committed with the turn).
    Audit(Box<AuditEntry>),
    /// Answer an approval gate.
    Approve {
        id: String,
        step: String,
        approve: bool,
        reason: String,
        caller: Caller,
        reply: Reply<()>,
    },
    /// Use a new (validated) config from now on.
    Reload {
        cfg: Arc<Config>,
        reply: oneshot::Sender<()>,
    },
    /// Re-run failed or cancelled steps (one, or all) of an ended objective.
    Retry {
        id: String,
        step: Option<String>,
        caller: Caller,
        reply: Reply<()>,
    },
}

/// What recovery found on start.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub objectives: usize,
    pub interrupted_attempts: usize,
    pub killed_trees: usize,
}

type Deferred = Box<dyn FnOnce(&mut Engine) + Send>;

/// Runner facts (agent lines, usage, ends) taken into one turn at most.
const MAX_FACTS_PER_TURN: usize = 512;
/// API commands (submits, control calls) taken into one turn at most.
const MAX_COMMANDS_PER_TURN: usize = 4096;

/// Transitions collected during one turn, committed together.
#[derive(Default)]
struct Turn {
    writes: WriteSet,
    events: Vec<Event>,
    after: Vec<Deferred>,
}

/// An objective that has not ended.
struct Live {
    obj: Objective,
    /// The state as last written (the by-state index key).
    stored_state: ObjState,
    steps: Vec<Step>,
    /// Running attempts by step index.
    running: HashMap<u32, Running>,
    paused: bool,
    cancelling: bool,
    /// Set when a budget covering it ran out: why (it then fails).
    exhausted: Option<String>,
    /// Answered when the objective ends (cancel waits for every tree to be gone).
    waiters: Vec<Reply<()>>,
}

impl Live {
    /// An objective as loaded or submitted: its stored state is the one it has.
    fn new(obj: Objective, steps: Vec<Step>, paused: bool) -> Live {
        Live {
            stored_state: obj.state,
            obj,
            steps,
            running: HashMap::new(),
            paused,
            cancelling: false,
            exhausted: None,
            waiters: Vec::new(),
        }
    }
}

struct Running {
    attempt: Attempt,
    /// The provider refused until then (ms); the step waits instead of failing.
    rate_limited_until: Option<Millis>,
    control: Option<mpsc::UnboundedSender<Control>>,
}

/// `(priority high first, objective id oldest first, step index)`.
type ReadyKey = (Reverse<i32>, String, u32);

pub struct Engine {
    store: Store,
    cfg: Arc<Config>,
    logs_dir: PathBuf,
    live: HashMap<String, Live>,
    ready: BTreeSet<ReadyKey>,
    timers: BTreeSet<(Millis, String, u32)>,
    running: usize,
    next_seq: u64,
    turn: Turn,
    facts_tx: mpsc::UnboundedSender<Fact>,
    facts_rx: mpsc::UnboundedReceiver<Fact>,
    events: broadcast::Sender<Arc<Event>>,
    limiter: Arc<Limiter>,
    /// The highest event seq that is durable and published (Watch replays up to it).
    published: Arc<AtomicU64>,
    /// The daemon's own uid (may control every objective, like root).
    own_uid: u32,
    /// Bytes under the logs directory (kept under `[logs] max_total_bytes`).
    log_bytes: u64,
    /// When retention and the log cap run next.
    housekeeping_at: tokio::time::Instant,
    /// Usage today, this month and in total (UTC), mirrored in the store.
    totals: Totals,
    /// Daemon-wide budget alerts already sent (`daily_usd:2026-11-21:80`).
    global_alerts: std::collections::HashSet<String>,
    shutting_down: bool,
}

impl Engine {
    pub fn new(
        store: Store,
        cfg: Arc<Config>,
        events: broadcast::Sender<Arc<Event>>,
        limiter: Arc<Limiter>,
        published: Arc<AtomicU64>,
    ) -> Result<Engine, StoreError> {
        let (facts_tx, facts_rx) = mpsc::unbounded_channel();
        let next_seq = store.last_seq()? + 1;
        published.store(next_seq - 1, Ordering::SeqCst);
        Ok(Engine {
            logs_dir: cfg.state_dir().join("logs"),
            store,
            cfg,
            live: HashMap::new(),
            ready: BTreeSet::new(),
            timers: BTreeSet::new(),
            running: 0,
            next_seq,
            turn: Turn::default(),
            facts_tx,
            facts_rx,
            events,
            limiter,
            published,
            own_uid: nix::unistd::Uid::effective().as_raw(),
            log_bytes: 0,
            housekeeping_at: tokio::time::Instant::now(),
            totals: Totals::default(),
            global_alerts: Default::default(),
            shutting_down: false,
        })
    }

    // ------------------------------------------------------------ turn plumbing

    fn emit(&mut self, objective_id: &str, step_id: &str, attempt: u32, kind: EventKind) {
        let e = Event {
            seq: self.next_seq,
            time_ms: now_ms(),
            objective_id: objective_id.to_string(),
            step_id: step_id.to_string(),
            attempt,
            kind,
        };
        self.next_seq += 1;
        self.turn.writes.event(&e);
        self.turn.events.push(e);
    }

    fn after(&mut self, f: impl FnOnce(&mut Engine) + Send + 'static) {
        self.turn.after.push(Box::new(f));
    }

    /// Writes the turn atomically, flushes, publishes its events, then acts.
    async fn commit(&mut self) -> Result<(), StoreError> {
        let turn = std::mem::take(&mut self.turn);
        if !turn.writes.is_empty() {
            self.store.write(&turn.writes)?;
            self.store.flush().await?;
        }
        if let Some(last) = turn.events.last() {
            self.published.store(last.seq, Ordering::SeqCst);
        }
        for e in turn.events {
            // No receivers is fine.
            let _ = self.events.send(Arc::new(e));
        }
        for f in turn.after {
            f(self);
        }
        Ok(())
    }

    // ------------------------------------------------------------ the loop

    /// Runs until `shutdown` resolves, then drains: stops every attempt (TERM, grace,
    /// KILL), records them `interrupted`, flushes.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<(), StoreError> {
        loop {
            let timer = self.timers.first().map(|(t, _, _)| *t);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(f) = self.facts_rx.recv() => self.on_fact(f),
                c = commands.recv() => match c {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = sleep_until_ms(timer) => {}
                _ = tokio::time::sleep_until(self.housekeeping_at) => self.housekeeping(),
            }
            // Group commit: take whatever else is already queued into the same turn, up to
            // a bound that keeps one turn (and so the delay to the first event) short.
            for _ in 0..MAX_FACTS_PER_TURN {
                match self.facts_rx.try_recv() {
                    Ok(f) => self.on_fact(f),
                    Err(_) => break,
                }
            }
            for _ in 0..MAX_COMMANDS_PER_TURN {
                match commands.try_recv() {
                    Ok(c) => self.on_command(c),
                    Err(_) => break,
                }
            }
            self.fire_timers();
            self.schedule();
            self.commit().await?;
        }
        self.drain().await
    }

    async fn drain(&mut self) -> Result<(), StoreError> {
        self.shutting_down = true;
        let grace = Duration::from_millis(self.cfg.grace_period.0);
        let mut n = 0;
        for live in self.live.values() {
            for r in live.running.values() {
                if let Some(c) = &r.control {
                    let _ = c.send(Control::Stop(StopReason::Shutdown));
                    n += 1;
                }
            }
        }
        tracing::info!(
            attempts = n,
            grace_ms = grace.as_millis() as u64,
            "stopping running attempts"
        );
        // Runners end every attempt within the grace period plus the kill; the extra
        // margin covers a process stuck in the kernel.
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(5);
        while self.running > 0 {
            match tokio::time::timeout_at(deadline, self.facts_rx.recv()).await {
                Ok(Some(f)) => self.on_fact(f),
                _ => break,
            }
        }
        // Whatever did not report is recorded as interrupted all the same.
        let left: Vec<AttemptKey> = self
            .live
            .iter()
            .flat_map(|(id, l)| {
                l.running.values().map(move |r| AttemptKey {
                    objective_id: id.clone(),
                    step_index: r.attempt.step_index,
                    number: r.attempt.number,
                })
            })
            .collect();
        for key in left {
            tracing::warn!(objective = %key.objective_id, step = key.step_index, "attempt did not stop in time");
            self.on_ended(
                key,
                AttemptEnd {
                    outcome: Outcome::Interrupted,
                    exit_code: None,
                    signal: None,
                    message: "the daemon stopped; the process did not exit in time".into(),
                    peak_rss_bytes: 0,
                    cpu_ms: 0,
                    exited_at: None,
                },
            );
        }
        self.commit().await?;
        self.store.flush().await
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Submit { new, reply } => {
                if self.shutting_down {
                    let _ = reply.send(Err(EngineError::Unavailable("orchd is stopping".into())));
                    return;
                }
                match self.submit(*new) {
                    Ok(s) if s.existing => {
                        let _ = reply.send(Ok(s));
                    }
                    // Acknowledged only after the commit has flushed it.
                    Ok(s) => self.after(move |_| {
                        let _ = reply.send(Ok(s));
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(EngineStatus {
                    running_attempts: self.running as u32,
                    max_parallel: self.cfg.max_parallel(),
                    last_seq: self.next_seq - 1,
                });
            }
            Command::Ping { reply } => {
                let _ = reply.send(());
            }
            Command::Cancel { id, caller, reply } => match self.cancel(&id, caller) {
                Ok(()) => match self.live.get_mut(&id) {
                    Some(live) => live.waiters.push(reply),
                    // Nothing was running: it ended in this turn; answer once durable.
                    None => self.after(move |_| {
                        let _ = reply.send(Ok(()));
                    }),
                },
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Pause { id, caller, reply } => {
                let r = self.pause(&id, caller);
                self.after(move |_| {
                    let _ = reply.send(r);
                });
            }
            Command::Resume { id, caller, reply } => {
                let r = self.resume(&id, caller);
                self.after(move |_| {
                    let _ = reply.send(r);
                });
            }
            Command::LogBytes(n) => {
                self.log_bytes += n;
                self.enforce_log_cap();
            }
            Command::Audit(entry) => {
                let seq = self.store.next_audit_seq();
                self.turn.writes.audit(seq, &entry);
            }
            Command::Approve {
                id,
                step,
                approve,
                reason,
                caller,
                reply,
            } => {
                let r = self.approve(&id, &step, approve, reason, caller);
                self.after(move |_| {
                    let _ = reply.send(r);
                });
            }
            Command::Reload { cfg, reply } => {
                tracing::info!("config reloaded");
                self.cfg = cfg;
                let _ = reply.send(());
            }
            Command::Retry {
                id,
                step,
                caller,
                reply,
            } => {
                let r = self.retry(&id, step.as_deref(), caller);
                self.after(move |_| {
                    let _ = reply.send(r);
                });
            }
        }
    }

    /// Root and the daemon's own user control everything; others their own objectives.
    fn authorize(
        &self,
        caller: Caller,
        owner: u32,
        action: &str,
        id: &str,
    ) -> Result<(), EngineError> {
        if caller.uid == 0 || caller.uid == self.own_uid || caller.uid == owner {
            return Ok(());
        }
        Err(EngineError::PermissionDenied(format!(
            "uid {} may not {action} objective {id} (owned by uid {owner})",
            caller.uid
        )))
    }

    /// Fails unless `id` is a live objective, saying why.
    fn check_live(&self, id: &str, action: &str, caller: Caller) -> Result<(), EngineError> {
        if let Some(live) = self.live.get(id) {
            return self.authorize(caller, live.obj.owner_uid, action, id);
        }
        Err(match self.store.objective(id)? {
            Some(o) => EngineError::FailedPrecondition(format!(
                "cannot {action} objective {id}: it has already ended ({})",
                o.state.word()
            )),
            None => EngineError::NotFound(format!("no objective with id `{id}`")),
        })
    }

    // ------------------------------------------------------------ control

    fn cancel(&mut self, id: &str, caller: Caller) -> Result<(), EngineError> {
        self.check_live(id, "cancel", caller)?;
        let Some(live) = self.live.get_mut(id) else {
            return Ok(());
        };
        if live.cancelling {
            return Ok(());
        }
        live.cancelling = true;
        live.obj.message = format!("cancelled by uid {}", caller.uid);
        let idle: Vec<u32> = live
            .steps
            .iter()
            .filter(|s| !s.state.is_terminal() && !live.running.contains_key(&s.index))
            .map(|s| s.index)
            .collect();
        let running: Vec<u32> = live.running.keys().copied().collect();
        tracing::info!(objective = %id, uid = caller.uid, running = running.len(), "cancel requested");
        self.ready.retain(|(_, o, _)| o != id);
        self.timers.retain(|(_, o, _)| o != id);
        for index in idle {
            self.set_step(
                id,
                index,
                StepState::Cancelled,
                format!("cancelled by uid {}", caller.uid),
            );
        }
        // Stopped only once the cancel is durable.
        let id_owned = id.to_string();
        self.after(move |engine| {
            if let Some(live) = engine.live.get(&id_owned) {
                for index in running {
                    if let Some(c) = live.running.get(&index).and_then(|r| r.control.as_ref()) {
                        let _ = c.send(Control::Stop(StopReason::Cancelled));
                    }
                }
            }
        });
        self.refresh_objective(id);
        Ok(())
    }

    fn pause(&mut self, id: &str, caller: Caller) -> Result<(), EngineError> {
        self.check_live(id, "pause", caller)?;
        let Some(live) = self.live.get_mut(id) else {
            return Ok(());
        };
        if live.paused {
            return Err(EngineError::FailedPrecondition(format!(
                "objective {id} is already paused"
            )));
        }
        if live.cancelling {
            return Err(EngineError::FailedPrecondition(format!(
                "objective {id} is being cancelled"
            )));
        }
        live.paused = true;
        let prev = live.obj.state;
        live.obj.state = ObjState::Paused;
        live.obj.updated_ms = now_ms();
        self.turn
            .writes
            .objective(&live.obj, Some(live.stored_state));
        live.stored_state = ObjState::Paused;
        let holds: Vec<(u32, bool)> = live
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Ready | StepState::Running))
            .map(|s| (s.index, live.running.contains_key(&s.index)))
            .collect();
        tracing::info!(objective = %id, uid = caller.uid, from = prev.word(), "paused");
        self.emit(
            id,
            "",
            0,
            EventKind::ObjectiveState {
                state: ObjState::Paused,
                message: format!("paused by uid {}", caller.uid),
            },
        );
        self.ready.retain(|(_, o, _)| o != id);
        let mut frozen = Vec::new();
        for (index, running) in holds {
            self.set_step(id, index, StepState::Paused, String::new());
            if running {
                frozen.push(index);
            }
        }
        self.control_after(id, frozen, || Control::Pause);
        Ok(())
    }

    fn resume(&mut self, id: &str, caller: Caller) -> Result<(), EngineError> {
        self.check_live(id, "resume", caller)?;
        let Some(live) = self.live.get_mut(id) else {
            return Ok(());
        };
        if !live.paused {
            return Err(EngineError::FailedPrecondition(format!(
                "objective {id} is {}, not paused",
                live.obj.state.word()
            )));
        }
        live.paused = false;
        let held: Vec<(u32, bool)> = live
            .steps
            .iter()
            .filter(|s| s.state == StepState::Paused)
            .map(|s| (s.index, live.running.contains_key(&s.index)))
            .collect();
        tracing::info!(objective = %id, uid = caller.uid, "resumed");
        let mut thaw = Vec::new();
        for (index, running) in held {
            if running {
                self.set_step(id, index, StepState::Running, String::new());
                thaw.push(index);
            } else {
                self.set_step(id, index, StepState::Ready, String::new());
                self.push_ready(id, index);
            }
        }
        self.control_after(id, thaw, || Control::Resume);
        self.release_ready(id);
        self.refresh_objective(id);
        Ok(())
    }

    /// Sends a control message to the given running attempts once the turn is durable.
    fn control_after(&mut self, id: &str, steps: Vec<u32>, make: fn() -> Control) {
        if steps.is_empty() {
            return;
        }
        let id = id.to_string();
        self.after(move |engine| {
            if let Some(live) = engine.live.get(&id) {
                for index in steps {
                    if let Some(c) = live.running.get(&index).and_then(|r| r.control.as_ref()) {
                        let _ = c.send(make());
                    }
                }
            }
        });
    }

    fn approve(
        &mut self,
        id: &str,
        step: &str,
        approve: bool,
        reason: String,
        caller: Caller,
    ) -> Result<(), EngineError> {
        let action = if approve { "approve" } else { "deny" };
        self.check_live(id, action, caller)?;
        let Some(live) = self.live.get_mut(id) else {
            return Ok(());
        };
        let s = live
            .steps
            .iter_mut()
            .find(|s| s.plan.id == step)
            .ok_or_else(|| EngineError::NotFound(format!("objective {id} has no step `{step}`")))?;
        if s.state != StepState::AwaitingApproval {
            return Err(EngineError::FailedPrecondition(format!(
                "step `{step}` is not awaiting approval ({})",
                s.state.word()
            )));
        }
        let index = s.index;
        s.approved = approve;
        let attempt = s.attempts;
        tracing::info!(objective = %id, step, uid = caller.uid, approved = approve, "approval answered");
        self.emit(
            id,
            step,
            attempt,
            EventKind::ApprovalAnswered {
                approved: approve,
                by_uid: caller.uid,
                reason: reason.clone(),
            },
        );
        if approve {
            let paused = self.live.get(id).is_some_and(|l| l.paused);
            if paused {
                self.set_step(
                    id,
                    index,
                    StepState::Paused,
                    format!("approved by uid {}", caller.uid),
                );
            } else {
                self.set_step(
                    id,
                    index,
                    StepState::Ready,
                    format!("approved by uid {}", caller.uid),
                );
                self.push_ready(id, index);
            }
        } else {
            let why = if reason.is_empty() {
                format!("denied by uid {}", caller.uid)
            } else {
                format!("denied by uid {}: {reason}", caller.uid)
            };
            self.set_step(id, index, StepState::Failed, why);
            self.release_ready(id);
        }
        self.refresh_objective(id);
        Ok(())
    }

    /// Loads an ended objective back into the live set and re-runs its failed or
    /// cancelled steps (or `step` alone) and the steps they skipped, each with a fresh
    /// set of attempts, from its last checkpoint.
    fn retry(&mut self, id: &str, step: Option<&str>, caller: Caller) -> Result<(), EngineError> {
        if self.live.contains_key(id) {
            return Err(EngineError::FailedPrecondition(format!(
                "objective {id} has not ended; only an ended objective can be retried"
            )));
        }
        let obj = self
            .store
            .objective(id)?
            .ok_or_else(|| EngineError::NotFound(format!("no objective with id `{id}`")))?;
        self.authorize(caller, obj.owner_uid, "retry", id)?;
        let mut steps = self.store.steps(id)?;
        let rerun = |s: &Step| matches!(s.state, StepState::Failed | StepState::Cancelled);
        let chosen: Vec<u32> = match step {
            Some(name) => {
                let s = steps.iter().find(|s| s.plan.id == name).ok_or_else(|| {
                    EngineError::NotFound(format!("objective {id} has no step `{name}`"))
                })?;
                if !rerun(s) {
                    return Err(EngineError::FailedPrecondition(format!(
                        "step `{name}` is {}; only failed or cancelled steps can be retried",
                        s.state.word()
                    )));
                }
                vec![s.index]
            }
            None => steps.iter().filter(|s| rerun(s)).map(|s| s.index).collect(),
        };
        if chosen.is_empty() {
            return Err(EngineError::FailedPrecondition(format!(
                "objective {id} has no failed or cancelled step to retry"
            )));
        }
        // The chosen steps and everything downstream of them that did not succeed.
        let mut again: std::collections::BTreeSet<u32> = chosen.into_iter().collect();
        loop {
            let more: Vec<u32> = steps
                .iter()
                .filter(|s| {
                    !again.contains(&s.index)
                        && matches!(s.state, StepState::Skipped | StepState::Cancelled)
                })
                .filter(|s| {
                    s.plan.needs.iter().any(|n| {
                        steps
                            .iter()
                            .any(|d| &d.plan.id == n && again.contains(&d.index))
                    })
                })
                .map(|s| s.index)
                .collect();
            if more.is_empty() {
                break;
            }
            again.extend(more);
        }
        for s in steps.iter_mut().filter(|s| again.contains(&s.index)) {
            s.counted_attempts = 0;
            s.next_attempt_ms = None;
        }
        tracing::info!(objective = %id, uid = caller.uid, steps = again.len(), "retry");
        let mut obj = obj;
        obj.message = String::new();
        obj.ended_seq = None;
        self.live
            .insert(id.to_string(), Live::new(obj, steps, false));
        for index in again {
            self.set_step(
                id,
                index,
                StepState::Waiting,
                format!("retry requested by uid {}", caller.uid),
            );
        }
        self.release_ready(id);
        self.refresh_objective(id);
        Ok(())
    }

    // ------------------------------------------------------------ housekeeping

    /// Removes ended objectives older than `retention` (with their events, logs and
    /// checkpoints), then keeps the logs under `[logs] max_total_bytes` by deleting the
    /// logs of the oldest ended objectives. Runs at start and hourly.
    fn housekeeping(&mut self) {
        self.housekeeping_at = tokio::time::Instant::now() + Duration::from_secs(3600);
        let cutoff = now_ms() - self.cfg.retention.0 as i64;
        // Creation precedes the last update, so nothing created after the cutoff can be due.
        let old = match self.store.ended_oldest_first(|o| o.created_ms < cutoff) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot read the store");
                return;
            }
        };
        let mut removed = Vec::new();
        for o in old.into_iter().filter(|o| o.updated_ms < cutoff) {
            match self.store.removal(&o) {
                Ok(w) => {
                    self.turn.writes.extend(w);
                    removed.push(o.id);
                }
                Err(e) => {
                    tracing::error!(error = %e, objective = %o.id, "retention: cannot plan the removal")
                }
            }
        }
        if !removed.is_empty() {
            tracing::info!(
                objectives = removed.len(),
                "retention: removing ended objectives"
            );
            self.remove_files_after(removed);
        }
        self.enforce_log_cap();
    }

    /// Deletes the logs and checkpoints of objectives once the turn is durable.
    fn remove_files_after(&mut self, ids: Vec<String>) {
        let dirs: Vec<PathBuf> = ids
            .iter()
            .flat_map(|id| {
                [
                    self.logs_dir.join(id),
                    self.cfg.state_dir().join("checkpoints").join(id),
                ]
            })
            .collect();
        self.after(move |_| {
            tokio::task::spawn_blocking(move || {
                for d in dirs {
                    if let Err(e) = std::fs::remove_dir_all(&d)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot remove");
                    }
                }
            });
        });
    }

    fn enforce_log_cap(&mut self) {
        let cap = self.cfg.logs.max_total_bytes.0;
        if self.log_bytes <= cap {
            return;
        }
        let mut over = self.log_bytes - cap;
        let logs = self.logs_dir.clone();
        let victims = match self.store.ended_oldest_first(|o| {
            let more = over > 0;
            over = over.saturating_sub(dir_size(&logs.join(&o.id)));
            more
        }) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "log cap: cannot read the store");
                return;
            }
        };
        let mut freed = 0;
        let mut dirs = Vec::new();
        for o in victims {
            let d = self.logs_dir.join(&o.id);
            freed += dir_size(&d);
            dirs.push(d);
        }
        tracing::info!(
            freed_bytes = freed,
            objectives = dirs.len(),
            cap,
            "log cap: removing the logs of the oldest ended objectives"
        );
        self.log_bytes = self.log_bytes.saturating_sub(freed);
        // Only files of ended objectives: nothing in the store depends on them.
        tokio::task::spawn_blocking(move || {
            for d in dirs {
                let _ = std::fs::remove_dir_all(&d);
            }
        });
    }

    // ------------------------------------------------------------ submit

    fn submit(&mut self, new: NewObjective) -> Result<Submitted, EngineError> {
        if !new.request_id.is_empty()
            && let Some(id) = self
                .store
                .objective_for_request(new.caller.uid, &new.request_id)?
        {
            return Ok(Submitted { id, existing: true });
        }
        let now = now_ms();
        let id = ulid::Ulid::generate().to_string();
        let obj = Objective {
            id: id.clone(),
            name: new.name,
            goal: new.goal,
            priority: new.priority,
            budget: new.budget,
            state: ObjState::Pending,
            created_ms: now,
            updated_ms: now,
            message: String::new(),
            owner_uid: new.caller.uid,
            owner_gid: new.caller.gid,
            request_id: new.request_id.clone(),
            usage: Usage::default(),
            client_env: new.client_env,
            step_count: new.steps.len() as u32,
            ended_seq: None,
            alerts: Vec::new(),
        };
        self.turn.writes.objective(&obj, None);
        if !new.request_id.is_empty() {
            self.turn
                .writes
                .request_id(new.caller.uid, &new.request_id, &id);
        }
        self.emit(
            &id,
            "",
            0,
            EventKind::ObjectiveSubmitted {
                name: obj.name.clone(),
                steps: obj.step_count,
            },
        );
        let steps: Vec<Step> = new
            .steps
            .into_iter()
            .enumerate()
            .map(|(i, plan)| Step::new(&id, i as u32, plan))
            .collect();
        for s in &steps {
            self.turn.writes.step(s);
        }
        self.live.insert(id.clone(), Live::new(obj, steps, false));
        self.release_ready(&id);
        tracing::info!(objective = %id, "objective submitted");
        Ok(Submitted {
            id,
            existing: false,
        })
    }

    // ------------------------------------------------------------ step transitions

    /// Sets a step's state, storing it and recording the event.
    fn set_step(&mut self, id: &str, index: u32, state: StepState, message: String) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let Some(step) = live.steps.get_mut(index as usize) else {
            return;
        };
        if step.state == state && step.message == message {
            return;
        }
        step.state = state;
        step.message = message.clone();
        if state != StepState::Backoff {
            step.next_attempt_ms = None;
        }
        self.turn.writes.step(step);
        let (step_id, attempt) = (step.plan.id.clone(), step.attempts);
        self.emit(
            id,
            &step_id,
            attempt,
            EventKind::StepState { state, message },
        );
    }

    /// Moves waiting steps whose needs all succeeded to `ready`, and skips those whose
    /// needs can no longer succeed.
    fn release_ready(&mut self, id: &str) {
        loop {
            let Some(live) = self.live.get(id) else {
                return;
            };
            let state_of = |name: &str| {
                live.steps
                    .iter()
                    .find(|s| s.plan.id == name)
                    .map(|s| s.state)
            };
            let mut change = None;
            for s in &live.steps {
                if s.state != StepState::Waiting {
                    continue;
                }
                let needs: Vec<Option<StepState>> =
                    s.plan.needs.iter().map(|n| state_of(n)).collect();
                if needs.iter().all(|n| *n == Some(StepState::Succeeded)) {
                    change = Some((s.index, StepState::Ready, String::new()));
                    break;
                }
                if let Some(bad) = s.plan.needs.iter().zip(&needs).find(|(_, st)| {
                    matches!(
                        st,
                        Some(StepState::Failed | StepState::Skipped | StepState::Cancelled) | None
                    )
                }) {
                    change = Some((
                        s.index,
                        StepState::Skipped,
                        format!("dependency `{}` did not succeed", bad.0),
                    ));
                    break;
                }
            }
            let Some((index, state, message)) = change else {
                return;
            };
            let live = self.live.get(id);
            let paused = live.is_some_and(|l| l.paused);
            let gated = live
                .and_then(|l| l.steps.get(index as usize))
                .is_some_and(|s| s.plan.requires_approval && !s.approved);
            let state = match state {
                StepState::Ready if gated => StepState::AwaitingApproval,
                StepState::Ready if paused => StepState::Paused,
                other => other,
            };
            self.set_step(id, index, state, message);
            if state == StepState::AwaitingApproval {
                let attempt = self
                    .live
                    .get(id)
                    .and_then(|l| l.steps.get(index as usize))
                    .map_or(0, |s| s.attempts);
                let step_id = self
                    .live
                    .get(id)
                    .and_then(|l| l.steps.get(index as usize))
                    .map(|s| s.plan.id.clone())
                    .unwrap_or_default();
                tracing::info!(objective = %id, step = %step_id, "waiting for approval");
                self.emit(id, &step_id, attempt, EventKind::ApprovalRequested);
            }
            if state == StepState::Ready {
                self.push_ready(id, index);
            }
        }
    }

    fn push_ready(&mut self, id: &str, index: u32) {
        if let Some(live) = self.live.get(id) {
            self.ready
                .insert((Reverse(live.obj.priority), id.to_string(), index));
        }
    }

    /// Re-derives the objective's state from its steps; stores and reports a change.
    /// An ended objective leaves the live set.
    fn refresh_objective(&mut self, id: &str) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let derived = derive_objective_state(&live.steps, live.cancelling);
        if live.paused && !derived.is_terminal() {
            return;
        }
        if derived == live.obj.state {
            return;
        }
        live.obj.state = derived;
        live.obj.updated_ms = now_ms();
        if derived == ObjState::Failed && live.exhausted.is_some() {
            live.obj.message = live.exhausted.clone().unwrap_or_default();
        } else if derived == ObjState::Failed {
            live.obj.message = live
                .steps
                .iter()
                .find(|s| s.state == StepState::Failed)
                .map(|s| format!("step `{}` failed: {}", s.plan.id, s.message))
                .unwrap_or_default();
        }
        // The seq `emit` below gives the state event.
        live.obj.ended_seq = derived.is_terminal().then_some(self.next_seq);
        self.turn
            .writes
            .objective(&live.obj, Some(live.stored_state));
        live.stored_state = derived;
        let message = live.obj.message.clone();
        self.emit(
            id,
            "",
            0,
            EventKind::ObjectiveState {
                state: derived,
                message,
            },
        );
        if derived.is_terminal() {
            tracing::info!(objective = %id, state = derived.word(), "objective ended");
            if let Some(live) = self.live.remove(id) {
                for w in live.waiters {
                    self.turn.after.push(Box::new(move |_| {
                        let _ = w.send(Ok(()));
                    }));
                }
            }
            self.ready.retain(|(_, o, _)| o != id);
            self.timers.retain(|(_, o, _)| o != id);
        }
    }

    // ------------------------------------------------------------ scheduling

    fn schedule(&mut self) {
        if self.shutting_down {
            return;
        }
        let max = self.cfg.max_parallel() as usize;
        while self.running < max {
            let Some((_, id, index)) = self.ready.pop_first() else {
                break;
            };
            // No new attempt under an exhausted budget.
            if let Some(why) = self.budget_block(&id) {
                self.exhaust(&id, why);
                continue;
            }
            self.start_attempt(&id, index);
        }
    }

    fn start_attempt(&mut self, id: &str, index: u32) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let Some(step) = live.steps.get_mut(index as usize) else {
            return;
        };
        if step.state != StepState::Ready {
            return;
        }
        step.attempts += 1;
        let number = step.attempts;
        let (agent, argv, usage_format, problem) = match attempt_command(&self.cfg, step, id) {
            Ok((a, v, f)) => (a, v, f, None),
            Err(why) => (
                step.current_agent().to_string(),
                Vec::new(),
                UsageFormat::OrchLines,
                Some(why),
            ),
        };
        let attempt = Attempt {
            objective_id: id.to_string(),
            step_index: index,
            step_id: step.plan.id.clone(),
            number,
            agent: agent.clone(),
            command: argv.clone(),
            pid: None,
            pid_start_ticks: None,
            cgroup: None,
            started_ms: now_ms(),
            ended_ms: None,
            outcome: None,
            exit_code: None,
            signal: None,
            peak_rss_bytes: 0,
            cpu_ms: 0,
            usage: Usage::default(),
            message: String::new(),
        };
        let spec = run_spec(
            &self.cfg,
            &self.logs_dir,
            &live.obj,
            step,
            number,
            argv,
            usage_format,
        );
        self.turn.writes.attempt(&attempt);
        live.running.insert(
            index,
            Running {
                attempt,
                rate_limited_until: None,
                control: None,
            },
        );
        self.running += 1;
        self.set_step(id, index, StepState::Running, String::new());
        self.refresh_objective(id);
        // Spawned only once the attempt record is durable.
        self.after(move |engine| {
            let mut spec = spec;
            let key = spec.key.clone();
            if let Some(message) = problem {
                let _ = engine.facts_tx.send(Fact::Ended {
                    key,
                    end: AttemptEnd::spawn_error(message),
                });
                return;
            }
            let leaf = leaf_name(&key.objective_id, key.step_index, key.number);
            let uid = spec
                .run_as
                .as_ref()
                .map_or_else(|| nix::unistd::Uid::current().as_raw(), |r| r.0);
            match engine.limiter.prepare(&leaf, &spec.limits, uid) {
                Ok(p) => spec.prepared = p,
                Err(e) => {
                    let _ = engine.facts_tx.send(Fact::Ended {
                        key,
                        end: AttemptEnd::spawn_error(format!(
                            "cannot set up the attempt's limits: {e}"
                        )),
                    });
                    return;
                }
            }
            let control = runner::start(spec, engine.facts_tx.clone());
            if let Some(r) = engine
                .live
                .get_mut(&key.objective_id)
                .and_then(|l| l.running.get_mut(&key.step_index))
            {
                r.control = Some(control);
            }
        });
    }
}

/// The command, environment and files of one attempt.
/// The attempt's argv and usage format come from `attempt_command`.
fn run_spec(
    cfg: &Config,
    logs_dir: &std::path::Path,
    obj: &Objective,
    step: &Step,
    number: u32,
    argv: Vec<String>,
    usage_format: UsageFormat,
) -> RunSpec {
    {
        let mut env: BTreeMap<String, String> = match &obj.client_env {
            Some(e) => e.clone(),
            None => minimal_env(),
        };
        env.insert("ORCH_OBJECTIVE_ID".into(), obj.id.clone());
        env.insert("ORCH_STEP_ID".into(), step.plan.id.clone());
        env.insert("ORCH_ATTEMPT".into(), number.to_string());
        env.remove("ORCH_CHECKPOINT_FILE");
        // A fallback agent gets its own profile's env (plus the step's), not the first's.
        let fallback_env = (step.agent_index > 0)
            .then(|| cfg.agents.get(step.current_agent()))
            .flatten()
            .map(|p| {
                p.env
                    .iter()
                    .chain(step.plan.step_env.iter())
                    .collect::<Vec<_>>()
            });
        match fallback_env {
            Some(vars) => env.extend(vars.into_iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => env.extend(step.plan.env.iter().map(|(k, v)| (k.clone(), v.clone()))),
        }
        RunSpec {
            key: AttemptKey {
                objective_id: obj.id.clone(),
                step_index: step.index,
                number,
            },
            argv,
            workdir: PathBuf::from(&step.plan.workdir),
            env: env.into_iter().collect(),
            // Agent steps (including a fallback agent) get the prompt on stdin.
            stdin: (!step.current_agent().is_empty())
                .then(|| step.plan.prompt.clone().into_bytes()),
            log: attempt_log(logs_dir, &obj.id, &step.plan.id, number),
            log_max_bytes: cfg.logs.max_attempt_bytes.0,
            checkpoint: step.checkpoint.as_ref().map(|json| {
                let path = cfg
                    .state_dir()
                    .join("checkpoints")
                    .join(&obj.id)
                    .join(format!("{}.json", step.plan.id));
                (path, json.clone())
            }),
            grace: Duration::from_millis(cfg.grace_period.0),
            timeout: step.plan.timeout_ms.map(Duration::from_millis),
            idle_timeout: step.plan.idle_timeout_ms.map(Duration::from_millis),
            usage_format,
            run_as: run_as(obj.owner_uid, obj.owner_gid),
            limits: step.plan.limits,
            prepared: Default::default(),
        }
    }
}

impl Engine {
    fn fire_timers(&mut self) {
        let now = now_ms();
        while let Some((due, _, _)) = self.timers.first() {
            if *due > now {
                break;
            }
            let Some((_, id, index)) = self.timers.pop_first() else {
                break;
            };
            let in_backoff = self
                .live
                .get(&id)
                .and_then(|l| l.steps.get(index as usize))
                .is_some_and(|s| s.state == StepState::Backoff);
            if in_backoff {
                if self.live.get(&id).is_some_and(|l| l.paused) {
                    self.set_step(&id, index, StepState::Paused, String::new());
                } else {
                    self.set_step(&id, index, StepState::Ready, String::new());
                    self.push_ready(&id, index);
                }
            }
        }
    }

    // ------------------------------------------------------------ facts

    fn on_fact(&mut self, f: Fact) {
        match f {
            Fact::Usage {
                key,
                peak_rss_bytes,
                cpu_ms,
            } => {
                // Kept in memory while it runs; stored with the attempt's end.
                if let Some(r) = self
                    .live
                    .get_mut(&key.objective_id)
                    .and_then(|l| l.running.get_mut(&key.step_index))
                {
                    r.attempt.peak_rss_bytes = peak_rss_bytes;
                    r.attempt.cpu_ms = cpu_ms;
                }
            }
            Fact::Started {
                key,
                pid,
                start_ticks,
                cgroup,
            } => {
                let Some(live) = self.live.get_mut(&key.objective_id) else {
                    return;
                };
                let Some(r) = live.running.get_mut(&key.step_index) else {
                    return;
                };
                r.attempt.pid = Some(pid);
                r.attempt.pid_start_ticks = start_ticks;
                r.attempt.cgroup = cgroup;
                self.turn.writes.attempt(&r.attempt);
                let (step_id, agent) = (r.attempt.step_id.clone(), r.attempt.agent.clone());
                self.emit(
                    &key.objective_id,
                    &step_id,
                    key.number,
                    EventKind::AttemptStarted { pid, agent },
                );
            }
            Fact::Line { key, line } => self.on_line(key, line),
            Fact::Ended { key, end } => self.on_ended(key, end),
        }
    }

    fn on_line(&mut self, key: AttemptKey, line: AgentLine) {
        let Some(live) = self.live.get_mut(&key.objective_id) else {
            return;
        };
        let Some(step) = live.steps.get_mut(key.step_index as usize) else {
            return;
        };
        let step_id = step.plan.id.clone();
        match line {
            AgentLine::Checkpoint(json) => {
                step.checkpoint = Some(json.clone());
                self.turn.writes.step(step);
                self.emit(
                    &key.objective_id,
                    &step_id,
                    key.number,
                    EventKind::Checkpoint { json },
                );
            }
            AgentLine::Progress { percent, message } => {
                step.progress = Progress {
                    percent,
                    message: message.clone(),
                };
                self.turn.writes.step(step);
                self.emit(
                    &key.objective_id,
                    &step_id,
                    key.number,
                    EventKind::Progress { percent, message },
                );
            }
            AgentLine::Usage {
                input_tokens,
                output_tokens,
                cost_usd,
                model,
            } => {
                let profile = self.cfg.agents.get(step.current_agent());
                let model = if model.is_empty() {
                    profile.and_then(|p| p.model.clone()).unwrap_or_default()
                } else {
                    model
                };
                let cost = cost_usd
                    .unwrap_or_else(|| price(&self.cfg, &model, input_tokens, output_tokens));
                let delta = Usage {
                    input_tokens,
                    output_tokens,
                    cost_usd: cost,
                };
                step.usage.add(&delta);
                self.turn.writes.step(step);
                let step_total = step.usage;
                if let Some(r) = live.running.get_mut(&key.step_index) {
                    r.attempt.usage.add(&delta);
                }
                live.obj.usage.add(&delta);
                live.obj.updated_ms = now_ms();
                self.turn
                    .writes
                    .objective(&live.obj, Some(live.stored_state));
                let objective_total = live.obj.usage;
                self.add_totals(&delta);
                self.emit(
                    &key.objective_id,
                    &step_id,
                    key.number,
                    EventKind::Usage {
                        report: delta,
                        step_total,
                        objective_total,
                        model,
                    },
                );
                self.check_budgets(&key.objective_id);
            }
            AgentLine::RateLimited { until_ms } => {
                if let Some(r) = live.running.get_mut(&key.step_index) {
                    r.rate_limited_until = Some(until_ms);
                }
                tracing::warn!(objective = %key.objective_id, step = %step_id, attempt = key.number, until = until_ms, "the agent's provider rate-limited it");
            }
            AgentLine::Malformed(problem) => {
                tracing::warn!(objective = %key.objective_id, step = %step_id, attempt = key.number, %problem, "malformed agent protocol line (kept in the log)");
            }
        }
    }

    fn on_ended(&mut self, key: AttemptKey, end: AttemptEnd) {
        let id = key.objective_id.clone();
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        let Some(mut r) = live.running.remove(&key.step_index) else {
            return;
        };
        self.running = self.running.saturating_sub(1);
        let a = &mut r.attempt;
        a.ended_ms = Some(now_ms());
        a.outcome = Some(end.outcome);
        a.exit_code = end.exit_code;
        a.signal = end.signal;
        a.message = end.message.clone();
        a.peak_rss_bytes = a.peak_rss_bytes.max(end.peak_rss_bytes);
        a.cpu_ms = a.cpu_ms.max(end.cpu_ms);
        self.turn.writes.attempt(a);
        let step_id = a.step_id.clone();
        let log = attempt_log(&self.logs_dir, &id, &step_id, key.number);
        self.turn.after.push(Box::new(move |engine| {
            engine.log_bytes += file_size(&log) + file_size(&crate::logfile::rotated(&log));
            if engine.log_bytes > engine.cfg.logs.max_total_bytes.0 {
                // Its deletions are committed with the next turn.
                engine.enforce_log_cap();
            }
        }));
        if let Some(exited) = end.exited_at {
            // Measured once the end is durable: the per-attempt exit-to-recorded overhead.
            let (obj, n) = (id.clone(), key.number);
            self.turn.after.push(Box::new(move |_| {
                tracing::debug!(objective = %obj, attempt = n, exit_to_recorded_us = exited.elapsed().as_micros() as u64, "attempt end recorded");
            }));
        }
        let rate_limited = r.rate_limited_until.filter(|t| *t > now_ms());
        // Neither an interruption nor a provider's rate limit uses up a retry.
        if let Some(step) = live.steps.get_mut(key.step_index as usize)
            && end.outcome != Outcome::Interrupted
            && !(rate_limited.is_some() && end.outcome != Outcome::Success)
        {
            step.counted_attempts += 1;
        }
        let Some(step) = live.steps.get(key.step_index as usize) else {
            return;
        };
        let counted = step.counted_attempts;
        let policy = step.plan.retry.clone();
        let has_fallback = (step.agent_index as usize) < step.plan.fallback.len();
        let fallback_on_rate_limit = step.plan.fallback_on_rate_limit && has_fallback;
        let cancelling = live.cancelling;
        let exhausted = live.exhausted.clone();
        tracing::info!(objective = %id, step = %step_id, attempt = key.number, outcome = end.outcome.word(), exit_code = ?end.exit_code, signal = ?end.signal, "attempt ended");
        self.emit(
            &id,
            &step_id,
            key.number,
            EventKind::AttemptEnded {
                outcome: end.outcome,
                exit_code: end.exit_code,
                signal: end.signal,
                message: end.message.clone(),
            },
        );
        let index = key.step_index;
        match end.outcome {
            Outcome::Success => {
                self.set_step(&id, index, StepState::Succeeded, String::new());
                self.release_ready(&id);
            }
            Outcome::Interrupted => {
                // Does not use up a retry; runs again on the next start (held while paused).
                let paused = self.live.get(&id).is_some_and(|l| l.paused);
                let state = if paused {
                    StepState::Paused
                } else {
                    StepState::Ready
                };
                self.set_step(&id, index, state, end.message);
                if !self.shutting_down && !paused {
                    self.push_ready(&id, index);
                }
            }
            Outcome::Cancelled => {
                self.set_step(&id, index, StepState::Cancelled, end.message);
                self.release_ready(&id);
            }
            _ if cancelling => {
                self.set_step(&id, index, StepState::Cancelled, end.message);
                self.release_ready(&id);
            }
            o => {
                if let Some(why) = exhausted {
                    self.set_step(&id, index, StepState::Failed, why);
                    self.release_ready(&id);
                } else if o == Outcome::BudgetExceeded {
                    self.set_step(&id, index, StepState::Failed, end.message);
                    self.release_ready(&id);
                } else if let Some(until) = rate_limited.filter(|_| !fallback_on_rate_limit) {
                    let delay = (until - now_ms()).max(0) as u64;
                    self.schedule_retry(
                        &id,
                        index,
                        key.number,
                        delay,
                        "rate limited by the provider; waiting for the reset".into(),
                    );
                } else if rate_limited.is_some() {
                    self.fall_back(&id, index, "rate limited by the provider");
                } else if policy.retries(o, end.exit_code) && counted < policy.max_attempts {
                    let delay = policy.delay_ms(counted + 1, rand_unit());
                    self.schedule_retry(&id, index, key.number, delay, end.message);
                } else if has_fallback && !matches!(o, Outcome::Cancelled | Outcome::BudgetExceeded)
                {
                    self.fall_back(&id, index, &format!("attempts exhausted ({})", end.message));
                } else {
                    self.set_step(&id, index, StepState::Failed, end.message);
                    self.release_ready(&id);
                }
            }
        }
        self.refresh_objective(&id);
    }

    /// Puts a step in `backoff` until `delay` from now (a timer fires it).
    fn schedule_retry(&mut self, id: &str, index: u32, attempt: u32, delay: u64, message: String) {
        let due = now_ms() + delay as i64;
        self.set_step(id, index, StepState::Backoff, message);
        let Some(step) = self
            .live
            .get_mut(id)
            .and_then(|l| l.steps.get_mut(index as usize))
        else {
            return;
        };
        step.next_attempt_ms = Some(due);
        self.turn.writes.step(step);
        let step_id = step.plan.id.clone();
        self.emit(
            id,
            &step_id,
            attempt,
            EventKind::RetryScheduled {
                delay_ms: delay,
                due_at_ms: due,
            },
        );
        self.timers.insert((due, id.to_string(), index));
    }

    /// Moves a step to its next fallback agent with a fresh set of attempts (its
    /// checkpoint stays, so the new agent starts from it).
    fn fall_back(&mut self, id: &str, index: u32, why: &str) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let paused = live.paused;
        let Some(step) = live.steps.get_mut(index as usize) else {
            return;
        };
        step.agent_index += 1;
        step.counted_attempts = 0;
        let agent = step.current_agent().to_string();
        tracing::info!(objective = %id, step = %step.plan.id, %agent, "falling back");
        let message = format!("{why}; falling back to agent `{agent}`");
        if paused {
            self.set_step(id, index, StepState::Paused, message);
        } else {
            self.set_step(id, index, StepState::Ready, message);
            self.push_ready(id, index);
        }
    }

    // ------------------------------------------------------------ usage and budgets

    /// Loads the day's and month's totals when the (UTC) date changed.
    fn refresh_totals(&mut self) {
        let (day, month) = crate::model::usage_keys(chrono::Utc::now());
        let load = |key: &str| self.store.usage_total(key).unwrap_or_default();
        if !self.totals.loaded {
            self.totals.total = load("total");
            self.totals.loaded = true;
        }
        if self.totals.day_key != day {
            self.totals.day = load(&day);
            self.totals.day_key = day;
        }
        if self.totals.month_key != month {
            self.totals.month = load(&month);
            self.totals.month_key = month;
        }
    }

    fn add_totals(&mut self, d: &Usage) {
        self.refresh_totals();
        let t = &mut self.totals;
        t.day.add(d);
        t.month.add(d);
        t.total.add(d);
        self.turn.writes.usage_total(&t.day_key, &t.day);
        self.turn.writes.usage_total(&t.month_key, &t.month);
        self.turn.writes.usage_total("total", &t.total);
    }

    /// The budgets that cover objective `id`: `(name, used, limit, own)`.
    fn budgets(&mut self, id: &str) -> Vec<(&'static str, f64, f64, bool)> {
        self.refresh_totals();
        let mut out = Vec::new();
        if let Some(live) = self.live.get(id) {
            if let Some(l) = live.obj.budget.max_cost_usd {
                out.push(("objective_usd", live.obj.usage.cost_usd, l, true));
            }
            if let Some(t) = live.obj.budget.max_tokens {
                out.push((
                    "objective_tokens",
                    live.obj.usage.tokens() as f64,
                    t as f64,
                    true,
                ));
            }
        }
        if let Some(l) = self.cfg.budget.daily_usd {
            out.push(("daily_usd", self.totals.day.cost_usd, l, false));
        }
        if let Some(l) = self.cfg.budget.monthly_usd {
            out.push(("monthly_usd", self.totals.month.cost_usd, l, false));
        }
        out
    }

    /// Why no new attempt of objective `id` may start, if a budget covering it is used up.
    fn budget_block(&mut self, id: &str) -> Option<String> {
        if let Some(why) = self.live.get(id).and_then(|l| l.exhausted.clone()) {
            return Some(why);
        }
        self.budgets(id)
            .into_iter()
            .find(|(_, used, limit, _)| used >= limit)
            .map(|(name, used, limit, _)| budget_message(name, used, limit))
    }

    /// Sends the alerts a usage report crossed, and stops what a used-up budget covers.
    fn check_budgets(&mut self, id: &str) {
        let mut thresholds = self.cfg.budget.alert_percent.clone();
        thresholds.sort_by(|a, b| a.total_cmp(b));
        // `budgets` brings the totals (and so the period keys) up to date first.
        let budgets = self.budgets(id);
        let period = self.totals.day_key.clone();
        let month = self.totals.month_key.clone();
        for (name, used, limit, own) in budgets {
            let percent = if limit > 0.0 {
                used / limit * 100.0
            } else {
                100.0
            };
            for t in thresholds.iter().filter(|t| percent >= **t) {
                let key = match name {
                    "daily_usd" => format!("{name}:{period}:{t}"),
                    "monthly_usd" => format!("{name}:{month}:{t}"),
                    _ => format!("{name}:{t}"),
                };
                let fresh = if own {
                    match self.live.get_mut(id) {
                        Some(live) if !live.obj.alerts.contains(&key) => {
                            live.obj.alerts.push(key);
                            self.turn
                                .writes
                                .objective(&live.obj, Some(live.stored_state));
                            true
                        }
                        _ => false,
                    }
                } else if self.global_alerts.contains(&key)
                    || self.store.has_marker(&key).unwrap_or(false)
                {
                    false
                } else {
                    // Kept in the store so a restart does not send it again.
                    self.turn.writes.marker(&key);
                    self.global_alerts.insert(key)
                };
                if fresh {
                    tracing::warn!(objective = %id, budget = name, percent = t, used, limit, "budget alert");
                    self.emit(
                        id,
                        "",
                        0,
                        EventKind::BudgetAlert {
                            percent: *t,
                            budget: name.to_string(),
                            used,
                            limit,
                        },
                    );
                }
            }
            if used >= limit {
                let why = budget_message(name, used, limit);
                if own {
                    self.exhaust(id, why);
                } else {
                    let ids: Vec<String> = self.live.keys().cloned().collect();
                    for other in ids {
                        self.exhaust(&other, why.clone());
                    }
                }
            }
        }
    }

    /// A budget covering objective `id` is used up: stop its running attempts
    /// (`budget_exceeded`), start nothing new, and fail it saying why.
    fn exhaust(&mut self, id: &str, why: String) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        if live.exhausted.is_some() {
            return;
        }
        tracing::warn!(objective = %id, reason = %why, "budget exhausted");
        live.exhausted = Some(why.clone());
        live.obj.message = why.clone();
        let running: Vec<u32> = live.running.keys().copied().collect();
        let waiting: Vec<u32> = live
            .steps
            .iter()
            .filter(|s| {
                !s.state.is_terminal()
                    && s.state != StepState::Waiting
                    && !live.running.contains_key(&s.index)
            })
            .map(|s| s.index)
            .collect();
        self.ready.retain(|(_, o, _)| o != id);
        self.timers.retain(|(_, o, _)| o != id);
        for index in waiting {
            self.set_step(id, index, StepState::Failed, why.clone());
        }
        self.control_after(id, running, || Control::Stop(StopReason::BudgetExceeded));
        self.release_ready(id);
        self.refresh_objective(id);
    }

    // ------------------------------------------------------------ recovery

    /// Loads every objective that has not ended, closes attempts that were running when
    /// the daemon last stopped as `interrupted` (killing their leftover process groups,
    /// identified by pid and start time), and reschedules their steps.
    pub async fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut report = Recovery::default();
        for state in [
            ObjState::Pending,
            ObjState::Running,
            ObjState::Paused,
            ObjState::AwaitingApproval,
        ] {
            for id in self.store.ids_in_state(state)? {
                let Some(obj) = self.store.objective(&id)? else {
                    continue;
                };
                let steps = self.store.steps(&id)?;
                let open: Vec<Attempt> = self
                    .store
                    .attempts(&id)?
                    .into_iter()
                    .filter(|a| a.ended_ms.is_none())
                    .collect();
                report.objectives += 1;
                let paused = obj.state == ObjState::Paused;
                self.live.insert(id.clone(), Live::new(obj, steps, paused));
                for mut a in open {
                    if kill_leftover(&a, &self.limiter) {
                        report.killed_trees += 1;
                    }
                    a.ended_ms = Some(now_ms());
                    a.outcome = Some(Outcome::Interrupted);
                    a.message = "the daemon stopped while this attempt ran".into();
                    self.turn.writes.attempt(&a);
                    self.emit(
                        &id,
                        &a.step_id,
                        a.number,
                        EventKind::AttemptEnded {
                            outcome: Outcome::Interrupted,
                            exit_code: None,
                            signal: None,
                            message: a.message.clone(),
                        },
                    );
                    report.interrupted_attempts += 1;
                }
                let Some(live) = self.live.get(&id) else {
                    continue;
                };
                let plan: Vec<(u32, StepState, Option<Millis>)> = live
                    .steps
                    .iter()
                    .map(|s| (s.index, s.state, s.next_attempt_ms))
                    .collect();
                for (index, state, due) in plan {
                    match state {
                        StepState::Running | StepState::Paused if paused => {
                            self.set_step(
                                &id,
                                index,
                                StepState::Paused,
                                "interrupted; held while paused".into(),
                            );
                        }
                        StepState::Running | StepState::Paused => {
                            self.set_step(
                                &id,
                                index,
                                StepState::Ready,
                                "interrupted; resuming".into(),
                            );
                            self.push_ready(&id, index);
                        }
                        StepState::Ready if paused => {
                            self.set_step(&id, index, StepState::Paused, String::new());
                        }
                        StepState::Ready => self.push_ready(&id, index),
                        StepState::Backoff => {
                            self.timers.insert((due.unwrap_or(0), id.clone(), index));
                        }
                        _ => {}
                    }
                }
                self.release_ready(&id);
                self.refresh_objective(&id);
            }
        }
        self.commit().await?;
        Ok(report)
    }
}

/// Kills the process group an interrupted attempt left behind, if it is still the same
/// one (pid and start time match, or the leader is gone and the group id is unused by
/// any process). Returns whether a kill was sent.
fn kill_leftover(a: &Attempt, limiter: &Limiter) -> bool {
    // The leaf it had, or would have had: a crash between spawn and recording the
    // spawn leaves no path in the record, but the leaf's name is fixed.
    let cgroup = a
        .cgroup
        .clone()
        .map(PathBuf::from)
        .or_else(|| limiter.leaf_path(&leaf_name(&a.objective_id, a.step_index, a.number)));
    if let Some(cg) = cgroup {
        let leaf = Leaf(cg);
        if leaf.0.exists() {
            let had = leaf.populated();
            if had {
                tracing::warn!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, cgroup = %leaf.0.display(), "killing the leftover cgroup of an interrupted attempt");
                let _ = leaf.kill();
            }
            leaf.remove();
            return had;
        }
    }
    let Some(pid) = a.pid else {
        // Spawned, but the crash came before its pid was recorded: every process of the
        // attempt carries its ids in the environment it was started with.
        let number = a.number.to_string();
        let pids = sys::processes_with_env(&[
            ("ORCH_OBJECTIVE_ID", &a.objective_id),
            ("ORCH_STEP_ID", &a.step_id),
            ("ORCH_ATTEMPT", &number),
        ]);
        for p in &pids {
            tracing::warn!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, pid = p, "killing a leftover process of an interrupted attempt (found by its environment)");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return !pids.is_empty();
    };
    let leader_alive = sys::process_start_ticks(pid).is_some();
    let ours = match (leader_alive, a.pid_start_ticks) {
        (true, Some(ticks)) => sys::same_process(pid, ticks),
        // The leader is gone: a group with this id can only be what it left behind,
        // since a new group leader would have to hold this pid.
        (false, _) => sys::group_alive(pid),
        (true, None) => false,
    };
    if ours {
        tracing::warn!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, pid, "killing the leftover process group of an interrupted attempt");
        let _ = sys::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    ours
}

/// Who an agent runs as: a daemon running as root runs each agent as the user who
/// submitted it (with that user's supplementary groups); otherwise as the daemon's user.
fn run_as(uid: u32, gid: u32) -> Option<(u32, u32, Vec<u32>)> {
    if !nix::unistd::Uid::effective().is_root() || uid == 0 {
        return None;
    }
    let groups = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .and_then(|u| {
            let name = std::ffi::CString::new(u.name).ok()?;
            nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok()
        })
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![gid]);
    Some((uid, gid, groups))
}

/// The cgroup leaf of an attempt.
fn leaf_name(objective_id: &str, step_index: u32, number: u32) -> String {
    format!("att-{objective_id}-{step_index}-{number}")
}

/// Usage today, this month and in total.
#[derive(Debug, Default)]
struct Totals {
    loaded: bool,
    day_key: String,
    day: Usage,
    month_key: String,
    month: Usage,
    total: Usage,
}

/// The cost of tokens from the `[prices.MODEL]` table (0 when the model has no price).
fn price(cfg: &Config, model: &str, input: u64, output: u64) -> f64 {
    match cfg.prices.get(model) {
        Some(p) => (input as f64 * p.input_per_mtok + output as f64 * p.output_per_mtok) / 1e6,
        None => {
            if input + output > 0 {
                tracing::warn!(
                    model,
                    "no [prices] entry for this model; its tokens are counted at $0"
                );
            }
            0.0
        }
    }
}

/// Says which budget ran out and by how much.
fn budget_message(name: &str, used: f64, limit: f64) -> String {
    let over = (used - limit).max(0.0);
    match name {
        "objective_usd" => {
            format!("objective budget of ${limit:.2} exhausted: used ${used:.4} (${over:.4} over)")
        }
        "objective_tokens" => format!(
            "objective token budget of {limit:.0} exhausted: used {used:.0} tokens ({over:.0} over)"
        ),
        "daily_usd" => format!(
            "daily budget of ${limit:.2} exhausted: used ${used:.4} today (${over:.4} over)"
        ),
        "monthly_usd" => format!(
            "monthly budget of ${limit:.2} exhausted: used ${used:.4} this month (${over:.4} over)"
        ),
        other => format!("budget {other} of {limit} exhausted: used {used}"),
    }
}

/// The agent, argv and usage format of a step's next attempt: its own command, or its
/// current (fallback) agent profile with `{prompt}`, `{workdir}`, `{objective_id}` and
/// `{step_id}` replaced inside argv elements (never through a shell).
fn attempt_command(
    cfg: &Config,
    step: &Step,
    objective_id: &str,
) -> Result<(String, Vec<String>, UsageFormat), String> {
    let agent = step.current_agent();
    if agent.is_empty() {
        return Ok((
            String::new(),
            step.plan.command.clone(),
            UsageFormat::OrchLines,
        ));
    }
    let profile = cfg.agents.get(agent);
    let template: &[String] = if step.agent_index > 0 {
        &profile
            .ok_or_else(|| format!("agent profile `{agent}` is not in the daemon config"))?
            .command
    } else if step.plan.template.is_empty() {
        // Stored before templates were kept: its command is already expanded.
        &step.plan.command
    } else {
        &step.plan.template
    };
    let vars = [
        ("prompt", step.plan.prompt.as_str()),
        ("workdir", step.plan.workdir.as_str()),
        ("objective_id", objective_id),
        ("step_id", step.plan.id.as_str()),
    ];
    let argv = template
        .iter()
        .map(|a| crate::model::expand_template(a, &vars))
        .collect();
    let format = profile
        .map(|p| UsageFormat::from_name(&p.usage))
        .unwrap_or_default();
    Ok((agent.to_string(), argv, format))
}

fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bytes of the files under `dir` (recursively).
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// The environment an agent gets when the client sent none.
fn minimal_env() -> BTreeMap<String, String> {
    ["PATH", "HOME", "USER", "LANG"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .chain(std::iter::once((
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )))
        .collect()
}

/// A uniform number in [-1, 1] for jitter.
fn rand_unit() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

async fn sleep_until_ms(at: Option<Millis>) {
    match at {
        Some(t) => {
            let wait = (t - now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await
        }
        None => std::future::pending().await,
    }
}
