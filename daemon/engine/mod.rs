//! The engine: one actor task that owns all live state. It `select!`s over API
//! commands, executor facts and backoff timers; every decision is made by the pure core
//! (`machine`), and each turn writes the decisions' records and events to the store in
//! one atomic write, flushes once (group commit), publishes the events and only then
//! acts (replies, spawns, signals). Only live objectives are kept in memory.
//!
//! Modules: `machine` (the pure transition core), `control` (API commands), `schedule`
//! (ready queue, timers, slots), `attempt` (an attempt's command and environment),
//! `budget` (usage totals and budgets), `recovery` (start after a crash or restart),
//! `housekeeping` (retention and the log cap).

mod attempt;
mod budget;
mod control;
mod degraded;
mod facts;
mod housekeeping;
pub mod machine;
mod mcp;
mod planner;
mod recovery;
mod remove;
pub mod routing;
pub use remove::PruneFilter;
mod schedule;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;
use crate::disk::Disk;
use crate::executor::{AttemptHandle, Executor};
use crate::model::{
    AuditEntry, Budget, Control, Event, EventKind, Millis, ObjState, Outcome, StepPlan, StopReason,
    now_ms,
};
use crate::runner::{AttemptEnd, Fact};
use crate::store::{Store, StoreError, WriteSet};

use degraded::{Degraded, RECHECK_EVERY};
pub use housekeeping::dir_size;
use machine::{Ctx, Decision, Effect, Input, Invalid, Run};

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
    /// The attempt the caller's `ORCH_*` environment names: the would-be parent, to be
    /// verified against the caller's place in that attempt's process tree.
    pub parent_claim: Option<ParentClaim>,
    /// A goal-only objective's planner (then `steps` is its first planner step).
    pub planner: Option<crate::model::Planner>,
}

/// What a submit's `ORCH_OBJECTIVE_ID`, `ORCH_STEP_ID` and `ORCH_ATTEMPT` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentClaim {
    pub objective_id: String,
    pub step_id: String,
    pub attempt: u32,
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
    /// A budget or limit refuses new work.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Invalid> for EngineError {
    fn from(e: Invalid) -> EngineError {
        match e {
            Invalid::NotFound(m) => EngineError::NotFound(m),
            Invalid::FailedPrecondition(m) => EngineError::FailedPrecondition(m),
            Invalid::PermissionDenied(m) => EngineError::PermissionDenied(m),
        }
    }
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
    /// Why host pressure holds new attempts back now (`[host]`).
    pub host_held: Option<String>,
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
        /// New agent sessions instead of resumed ones.
        fresh: bool,
        caller: Caller,
        reply: Reply<()>,
    },
    /// Every agent profile's aggregate (`GetStats`).
    Stats {
        reply: oneshot::Sender<stats::Stats>,
    },
    /// Remove an ended objective (records, events, logs, checkpoints).
    Remove {
        id: String,
        caller: Caller,
        reply: Reply<()>,
    },
    /// Remove the caller's ended objectives that match the filter; replies with their ids.
    Prune {
        filter: PruneFilter,
        caller: Caller,
        reply: Reply<Vec<String>>,
    },
    /// Every agent profile as routing sees it (`orchctl agents`).
    AgentViews {
        reply: oneshot::Sender<Vec<routing::AgentView>>,
    },
    /// Switch an agent profile off (for `for_ms`, 0 = until enabled) or on.
    SwitchAgent {
        name: String,
        on: bool,
        for_ms: u64,
        reason: String,
        caller: Caller,
        reply: Reply<routing::AgentView>,
    },
    /// What routed steps with these routes would get now (`submit --dry-run`).
    RouteDryRun {
        routes: Vec<crate::model::RouteSpec>,
        uid: u32,
        reply: oneshot::Sender<Vec<machine::routing::Routed>>,
    },
}

/// What recovery found on start.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub objectives: usize,
    pub interrupted_attempts: usize,
    pub killed_trees: usize,
}

/// Something to do once the turn is durable.
enum After {
    Reply(Box<dyn FnOnce() + Send>),
    Spawn(Box<crate::runner::RunSpec>),
    /// The attempt could not even be described (e.g. its fallback profile is gone).
    SpawnError(crate::runner::AttemptKey, String),
    Order(String, u32, Control),
    /// Directories to delete, after the worktrees to remove first.
    RemoveDirs(Vec<PathBuf>, Vec<Worktree>),
    /// Count an ended attempt's log files against the daemon-wide cap.
    CountLog(PathBuf),
}

/// A worktree to remove, and who runs git to do it.
type Worktree = (crate::workspace::Leftover, crate::workspace::Runner);

/// Runner facts (agent lines, usage, ends) taken into one turn at most.
const MAX_FACTS_PER_TURN: usize = 512;
/// API commands (submits, control calls) taken into one turn at most.
const MAX_COMMANDS_PER_TURN: usize = 4096;

/// Transitions collected during one turn, committed together.
#[derive(Default)]
struct Turn {
    writes: WriteSet,
    events: Vec<Event>,
    after: Vec<After>,
}

/// An objective that has not ended: the core's view plus what the actor holds for it.
struct Live {
    run: Run,
    /// The state as last written (the by-state index key); `None` before the first write.
    stored: Option<ObjState>,
    /// Orders to running attempts, by step index.
    handles: HashMap<u32, AttemptHandle>,
    /// Answered when the objective ends (cancel waits for every tree to be gone).
    waiters: Vec<Reply<()>>,
}

impl Live {
    fn new(run: Run, stored: Option<ObjState>) -> Live {
        Live {
            run,
            stored,
            handles: HashMap::new(),
            waiters: Vec::new(),
        }
    }
}

pub struct Engine {
    store: Store,
    cfg: Arc<Config>,
    logs_dir: PathBuf,
    live: HashMap<String, Live>,
    queue: schedule::Queue,
    /// Attempts running now (every live objective's `run.running`).
    running: usize,
    /// The same, by the objectives' owners.
    running_by_user: HashMap<u32, usize>,
    /// User names by uid, for `[users.NAME]` (looked up once).
    user_names: HashMap<u32, Option<String>>,
    next_seq: u64,
    turn: Turn,
    facts_tx: mpsc::UnboundedSender<Fact>,
    facts_rx: mpsc::UnboundedReceiver<Fact>,
    events: broadcast::Sender<Arc<Event>>,
    executor: Arc<dyn Executor>,
    /// The highest event seq that is durable and published (Watch replays up to it).
    published: Arc<AtomicU64>,
    /// The daemon's own uid (may control every objective, like root).
    own_uid: u32,
    /// Bytes under the logs directory (kept under `[logs] max_total_bytes`).
    log_bytes: u64,
    /// When retention and the log cap run next.
    housekeeping_at: tokio::time::Instant,
    budgets: budget::Budgets,
    shutting_down: bool,
    /// Set by `serve` before an upgrade's stop: the drain leaves running the attempts
    /// the next orchd re-attaches to.
    handover: Arc<std::sync::atomic::AtomicBool>,
    /// Per agent profile aggregates, updated as attempts end.
    stats: stats::Stats,
    /// Agent profiles switched off for routing (`routing`).
    switches: routing::Switches,
    /// Host pressure: the last reading and whether it holds new attempts back.
    host: schedule::HostGate,
    /// The state directory's disk: free space against `[store] min_free`.
    disk: Arc<Disk>,
    /// Set while the store cannot write (a full disk): what is not durable yet.
    degraded: Option<Degraded>,
    /// When to look at the disk again while work waits for space or the store is degraded
    /// (`None` otherwise: no timer runs while all is well).
    recheck_at: Option<tokio::time::Instant>,
    /// When to give memory freed by ended objectives back to the system: armed when one
    /// ends, so at most once per `TRIM_AFTER` under load and never while idle.
    trim_at: Option<tokio::time::Instant>,
}

/// An event the core emitted for objective `id`, given the next sequence number.
fn number_event(next_seq: &mut u64, id: &str, e: machine::Emit, now: i64) -> Event {
    let seq = *next_seq;
    *next_seq += 1;
    Event {
        seq,
        time_ms: now,
        objective_id: id.to_string(),
        step_id: e.step_id,
        attempt: e.attempt,
        kind: e.kind,
    }
}

impl Engine {
    pub fn new(
        store: Store,
        cfg: Arc<Config>,
        events: broadcast::Sender<Arc<Event>>,
        executor: Arc<dyn Executor>,
        published: Arc<AtomicU64>,
        disk: Arc<Disk>,
    ) -> Result<Engine, StoreError> {
        let (facts_tx, facts_rx) = mpsc::unbounded_channel();
        let next_seq = store.last_seq()? + 1;
        published.store(next_seq - 1, Ordering::SeqCst);
        tracing::info!(executor = executor.name(), "attempts run on this executor");
        Ok(Engine {
            logs_dir: cfg.state_dir().join("logs"),
            store,
            cfg,
            live: HashMap::new(),
            queue: schedule::Queue::default(),
            running: 0,
            running_by_user: HashMap::new(),
            user_names: HashMap::new(),
            next_seq,
            turn: Turn::default(),
            facts_tx,
            facts_rx,
            events,
            executor,
            published,
            own_uid: crate::sys::effective_uid(),
            log_bytes: 0,
            housekeeping_at: tokio::time::Instant::now(),
            trim_at: None,
            budgets: budget::Budgets::default(),
            shutting_down: false,
            handover: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stats: stats::Stats::new(),
            host: schedule::HostGate::default(),
            disk,
            degraded: None,
            recheck_at: None,
            switches: routing::Switches::default(),
        })
    }

    // ------------------------------------------------------------ turn plumbing

    fn ctx(&self) -> Ctx {
        Ctx {
            now: now_ms(),
            jitter: fastrand::f64() * 2.0 - 1.0,
            draining: self.shutting_down,
        }
    }

    /// Feeds one input to a live objective's core and applies the decision.
    fn input(&mut self, id: &str, input: Input) -> Result<(), Invalid> {
        let ctx = self.ctx();
        let Some(live) = self.live.get_mut(id) else {
            return Ok(());
        };
        let before = live.run.running.len();
        let to_children = machine::cascade(&input);
        let d = machine::step(&mut live.run, input, ctx)?;
        // Slots: `Start` opens an attempt, `Ended` closes one.
        let (after, uid) = (live.run.running.len(), live.run.obj.owner_uid);
        let children = match &to_children {
            Some(_) => live.run.obj.children.clone(),
            None => Vec::new(),
        };
        self.count_running(uid, before, after);
        self.apply(id, d);
        // What reaches the children (cancel, exhaustion), and through them theirs.
        if let Some(child_input) = to_children {
            for child in children {
                if self.live.contains_key(&child)
                    && let Err(e) = self.input(&child, child_input.clone())
                {
                    tracing::debug!(objective = %child, parent = %id, error = %e, "not passed on to a sub-objective");
                }
            }
        }
        Ok(())
    }

    /// Slots in use, in all and by user, after an objective went from `before` to `after`
    /// running attempts.
    fn count_running(&mut self, uid: u32, before: usize, after: usize) {
        self.running = (self.running + after).saturating_sub(before);
        let mine = self.running_by_user.entry(uid).or_default();
        *mine = (*mine + after).saturating_sub(before);
        if *mine == 0 {
            self.running_by_user.remove(&uid);
        }
    }

    /// Records a decision in the turn (numbered events, changed records) and carries out
    /// its in-memory effects now and its outside effects once the turn is durable.
    fn apply(&mut self, id: &str, d: Decision) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let now = now_ms();
        // Attempts that end in this decision (each end has exactly one event).
        let mut ended: Vec<(String, u32)> = d
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::AttemptEnded { .. }))
            .map(|e| (e.step_id.clone(), e.attempt))
            .collect();
        for e in d.events {
            let e = number_event(&mut self.next_seq, id, e, now);
            if let EventKind::ObjectiveState { state, .. } = &e.kind
                && state.is_terminal()
            {
                live.run.obj.ended_seq = Some(e.seq);
            }
            self.turn.writes.event(&e);
            self.turn.events.push(e);
        }
        if d.objective {
            self.turn.writes.objective(&live.run.obj, live.stored);
            live.stored = Some(live.run.obj.state);
        }
        for i in &d.steps {
            if let Some(s) = live.run.steps.get(*i as usize) {
                self.turn.writes.step(s);
            }
        }
        let mut ended_now = Vec::new();
        for a in &d.attempts {
            self.turn.writes.attempt(a);
            let key = (a.step_id.clone(), a.number);
            if let Some(i) = ended.iter().position(|k| *k == key)
                && a.ended_ms.is_some()
            {
                ended.swap_remove(i);
                let name = stats::agent_of(a);
                let s = self.stats.entry(name.to_string()).or_default();
                s.record(a);
                self.turn.writes.agent_stats(name, s);
                ended_now.push(a);
            }
        }
        for a in ended_now {
            self.note_end(a);
        }
        for effect in d.effects {
            let Some(live) = self.live.get_mut(id) else {
                break;
            };
            match effect {
                Effect::Enqueue { step } => {
                    let (uid, priority) = (live.run.obj.owner_uid, live.run.obj.priority);
                    self.queue.push(uid, priority, id, step)
                }
                Effect::Timer { step, due } => self.queue.timer(due, id, step),
                Effect::Dequeue { timers } => self.queue.remove(live.run.obj.owner_uid, id, timers),
                Effect::Spawn { step, attempt } => self.spawn_after(id, step, attempt),
                Effect::Order { step, order } => {
                    self.turn
                        .after
                        .push(After::Order(id.to_string(), step, order))
                }
                // Only an ended objective is removed, and never through here (`remove`).
                Effect::Remove => {}
                Effect::Ended => {
                    tracing::info!(objective = %id, state = live.run.obj.state.word(), "objective ended");
                    if self.trim_at.is_none() {
                        self.trim_at = Some(tokio::time::Instant::now() + housekeeping::TRIM_AFTER);
                    }
                    // Every step is terminal, so nothing of it runs any more.
                    if let Some(live) = self.live.remove(id) {
                        for w in live.waiters {
                            self.turn.after.push(After::Reply(Box::new(move || {
                                let _ = w.send(Ok(()));
                            })));
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Replies once the turn is durable; a refusal (which changed nothing) at once, even
    /// while the store cannot write.
    fn after_reply<T: Send + 'static>(&mut self, reply: Reply<T>, r: Result<T, EngineError>) {
        if r.is_err() {
            let _ = reply.send(r);
            return;
        }
        self.turn.after.push(After::Reply(Box::new(move || {
            let _ = reply.send(r);
        })));
    }

    /// Writes the turn atomically, flushes, publishes its events, then acts. A write that
    /// fails (a full disk) does not stop the engine: the turn is held, with every later
    /// one, until the store can write again (`recover_store`).
    async fn commit(&mut self) {
        let turn = std::mem::take(&mut self.turn);
        if let Some(d) = &mut self.degraded {
            d.writes.extend(turn.writes);
            d.events.extend(turn.events);
            d.after.extend(turn.after);
            return;
        }
        if !turn.writes.is_empty() {
            let written = match self.store.write(&turn.writes) {
                Ok(()) => self.store.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                self.degrade(turn, e);
                return;
            }
        }
        self.publish(turn.events, turn.after).await;
    }

    /// The turn is durable: its events go out, then its actions.
    async fn publish(&mut self, events: Vec<Event>, after: Vec<After>) {
        let mut woken = !events.is_empty();
        if let Some(last) = events.last() {
            self.published.store(last.seq, Ordering::SeqCst);
        }
        for e in events {
            // No receivers is fine.
            let _ = self.events.send(Arc::new(e));
        }
        for a in after {
            if woken && matches!(a, After::Spawn(_)) {
                // A task woken from here (a reply's caller, a watcher) waits in this
                // worker's LIFO slot until the engine yields: let it answer before the
                // spawns (clone, exec) of this turn, not after them.
                tokio::task::yield_now().await;
                woken = false;
            }
            woken |= matches!(a, After::Reply(_));
            self.act(a);
        }
    }

    /// Carries out one effect of a durable turn.
    fn act(&mut self, a: After) {
        match a {
            After::Reply(f) => f(),
            After::Spawn(spec) => {
                let key = spec.key.clone();
                let handle = self.executor.start(*spec, self.facts_tx.clone());
                if let Some(live) = self.live.get_mut(&key.objective_id) {
                    live.handles.insert(key.step_index, handle);
                }
            }
            After::SpawnError(key, message) => {
                let _ = self.facts_tx.send(Fact::Ended {
                    key,
                    end: AttemptEnd::spawn_error(message),
                });
            }
            After::Order(id, step, order) => {
                if let Some(h) = self.live.get(&id).and_then(|l| l.handles.get(&step)) {
                    h.send(order);
                }
            }
            After::RemoveDirs(dirs, worktrees) => {
                tokio::task::spawn_blocking(move || {
                    for (w, git) in worktrees {
                        if let Err(e) = crate::workspace::remove(&w, &git) {
                            tracing::warn!(worktree = %w.path.display(), error = %e, "cannot remove the worktree");
                        }
                    }
                    for d in dirs {
                        if let Err(e) = std::fs::remove_dir_all(&d)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::warn!(dir = %d.display(), error = %e, "cannot remove");
                        }
                    }
                });
            }
            After::CountLog(log) => {
                self.log_bytes += housekeeping::file_size(&log)
                    + housekeeping::file_size(&crate::logfile::rotated(&log));
                if self.log_bytes > self.cfg.logs.max_total_bytes.0 {
                    // Its deletions are committed with the next turn.
                    self.enforce_log_cap();
                }
            }
        }
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
            let timer = match (self.queue.next_timer(), self.switches.next_expiry()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(f) = self.facts_rx.recv() => self.on_fact(f),
                c = commands.recv() => match c {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = sleep_until_ms(timer) => {}
                // Only while host pressure holds work back.
                _ = sleep_until_opt(self.host.recheck) => {}
                _ = tokio::time::sleep_until(self.housekeeping_at) => self.housekeeping(),
                _ = sleep_until_opt(self.recheck_at) => self.recheck_at = None,
                _ = sleep_until_opt(self.trim_at) => self.release_memory(),
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
            if self.degraded.is_some() {
                self.recover_store().await;
            }
            self.schedule();
            self.commit().await;
            if self.degraded.is_some() && self.recheck_at.is_none() {
                self.recheck_at = Some(tokio::time::Instant::now() + RECHECK_EVERY);
            }
        }
        self.drain().await
    }

    /// The flag `serve` sets before stopping the engine for an upgrade.
    pub fn handover(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.handover.clone()
    }

    async fn drain(&mut self) -> Result<(), StoreError> {
        self.shutting_down = true;
        let grace = Duration::from_millis(self.cfg.grace_period.0);
        let mut n = 0;
        let handover = self.handover.load(Ordering::SeqCst);
        let mut kept_set = std::collections::HashSet::new();
        for (id, live) in &self.live {
            for (step, h) in &live.handles {
                // An upgrade leaves running what the next orchd re-attaches to.
                let survives = handover
                    && live.run.running.get(step).is_some_and(|r| {
                        r.attempt.executor == "slurm"
                            || (self.cfg.live_restore && r.attempt.executor.is_empty())
                            || (self.cfg.live_restore && r.attempt.executor == "local")
                    });
                if survives {
                    kept_set.insert((id.clone(), *step));
                    continue;
                }
                h.send(Control::Stop(StopReason::Shutdown));
                n += 1;
            }
        }
        if handover {
            tracing::info!(
                stopped = n,
                kept = kept_set.len(),
                "handing over to the upgraded orchd"
            );
        }
        tracing::info!(
            attempts = n,
            grace_ms = grace.as_millis() as u64,
            "stopping running attempts"
        );
        // Executors end every attempt within the grace period plus the kill; the extra
        // margin covers a process stuck in the kernel.
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(5);
        let kept = kept_set.len();
        while self.running > kept {
            match tokio::time::timeout_at(deadline, self.facts_rx.recv()).await {
                Ok(Some(f)) => self.on_fact(f),
                _ => break,
            }
        }
        // Whatever did not report is recorded as interrupted all the same.
        let left: Vec<(String, u32, u32)> = self
            .live
            .iter()
            .flat_map(|(id, l)| {
                l.run
                    .running
                    .values()
                    .map(move |r| (id.clone(), r.attempt.step_index, r.attempt.number))
            })
            .filter(|(id, step, _)| !kept_set.contains(&(id.clone(), *step)))
            .collect();
        for (id, step, attempt) in left {
            tracing::warn!(objective = %id, step, "attempt did not stop in time");
            let end = machine::End::of(
                Outcome::Interrupted,
                "the daemon stopped; the process did not exit in time",
            );
            self.attempt_input(&id, Input::Ended { step, attempt, end });
        }
        self.commit().await;
        if self.degraded.is_some() {
            self.recover_store().await;
        }
        if let Some(d) = &self.degraded {
            tracing::error!(events = d.events.len(), error = %d.error, "stopping with transitions the store could not write; the next start recovers from what is durable");
            return Ok(());
        }
        self.store.flush().await
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
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
