//! The engine: one actor task that owns all live state and makes every decision.
//! It `select!`s over API commands, runner facts and backoff timers; each turn applies
//! its transitions to the store in one atomic write, flushes once (group commit: one
//! fsync covers every transition of the turn), then publishes the events and only then
//! acts (replies, spawns, signals). Only live objectives are kept in memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;
use crate::model::{
    Attempt, Budget, Event, EventKind, Millis, ObjState, Objective, Outcome, Progress, Step,
    StepPlan, StepState, Usage, derive_objective_state, now_ms,
};
use crate::runner::{self, AgentLine, AttemptEnd, AttemptKey, Control, Fact, RunSpec, StopReason};
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
    pub live_objectives: u32,
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
}

/// What recovery found on start.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub objectives: usize,
    pub interrupted_attempts: usize,
    pub killed_trees: usize,
}

type Deferred = Box<dyn FnOnce(&mut Engine) + Send>;

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
}

struct Running {
    attempt: Attempt,
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
    shutting_down: bool,
}

impl Engine {
    pub fn new(store: Store, cfg: Arc<Config>, events: broadcast::Sender<Arc<Event>>) -> Result<Engine, StoreError> {
        let (facts_tx, facts_rx) = mpsc::unbounded_channel();
        let next_seq = store.last_seq()? + 1;
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
            }
            // Group commit: take whatever else is already queued into the same turn.
            for _ in 0..4096 {
                match self.facts_rx.try_recv() {
                    Ok(f) => self.on_fact(f),
                    Err(_) => break,
                }
            }
            for _ in 0..4096 {
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
        tracing::info!(attempts = n, grace_ms = grace.as_millis() as u64, "stopping running attempts");
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
                    live_objectives: self.live.len() as u32,
                    max_parallel: self.cfg.max_parallel(),
                    last_seq: self.next_seq - 1,
                });
            }
            Command::Ping { reply } => {
                let _ = reply.send(());
            }
        }
    }

    // ------------------------------------------------------------ submit

    fn submit(&mut self, new: NewObjective) -> Result<Submitted, EngineError> {
        if !new.request_id.is_empty()
            && let Some(id) = self.store.objective_for_request(new.caller.uid, &new.request_id)?
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
        };
        self.turn.writes.objective(&obj, None);
        if !new.request_id.is_empty() {
            self.turn.writes.request_id(new.caller.uid, &new.request_id, &id);
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
            .map(|(i, plan)| Step {
                objective_id: id.clone(),
                index: i as u32,
                state: StepState::Waiting,
                plan,
                attempts: 0,
                counted_attempts: 0,
                checkpoint: None,
                next_attempt_ms: None,
                progress: Progress::default(),
                usage: Usage::default(),
                message: String::new(),
            })
            .collect();
        for s in &steps {
            self.turn.writes.step(s);
        }
        self.live.insert(
            id.clone(),
            Live {
                stored_state: obj.state,
                obj,
                steps,
                running: HashMap::new(),
            },
        );
        self.release_ready(&id);
        tracing::info!(objective = %id, "objective submitted");
        Ok(Submitted { id, existing: false })
    }

    // ------------------------------------------------------------ step transitions

    /// Sets a step's state, storing it and recording the event.
    fn set_step(&mut self, id: &str, index: u32, state: StepState, message: String) {
        let Some(live) = self.live.get_mut(id) else { return };
        let Some(step) = live.steps.get_mut(index as usize) else { return };
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
        self.emit(id, &step_id, attempt, EventKind::StepState { state, message });
    }

    /// Moves waiting steps whose needs all succeeded to `ready`, and skips those whose
    /// needs can no longer succeed.
    fn release_ready(&mut self, id: &str) {
        loop {
            let Some(live) = self.live.get(id) else { return };
            let state_of = |name: &str| live.steps.iter().find(|s| s.plan.id == name).map(|s| s.state);
            let mut change = None;
            for s in &live.steps {
                if s.state != StepState::Waiting {
                    continue;
                }
                let needs: Vec<Option<StepState>> = s.plan.needs.iter().map(|n| state_of(n)).collect();
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
                    change = Some((s.index, StepState::Skipped, format!("dependency `{}` did not succeed", bad.0)));
                    break;
                }
            }
            let Some((index, state, message)) = change else { return };
            self.set_step(id, index, state, message);
            if state == StepState::Ready {
                self.push_ready(id, index);
            }
        }
    }

    fn push_ready(&mut self, id: &str, index: u32) {
        if let Some(live) = self.live.get(id) {
            self.ready.insert((Reverse(live.obj.priority), id.to_string(), index));
        }
    }

    /// Re-derives the objective's state from its steps; stores and reports a change.
    /// An ended objective leaves the live set.
    fn refresh_objective(&mut self, id: &str) {
        let Some(live) = self.live.get_mut(id) else { return };
        let derived = derive_objective_state(&live.steps);
        if derived == live.obj.state {
            return;
        }
        live.obj.state = derived;
        live.obj.updated_ms = now_ms();
        if derived == ObjState::Failed {
            live.obj.message = live
                .steps
                .iter()
                .find(|s| s.state == StepState::Failed)
                .map(|s| format!("step `{}` failed: {}", s.plan.id, s.message))
                .unwrap_or_default();
        }
        self.turn.writes.objective(&live.obj, Some(live.stored_state));
        live.stored_state = derived;
        let message = live.obj.message.clone();
        self.emit(id, "", 0, EventKind::ObjectiveState { state: derived, message });
        if derived.is_terminal() {
            tracing::info!(objective = %id, state = derived.word(), "objective ended");
            self.live.remove(id);
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
            let Some((_, id, index)) = self.ready.pop_first() else { break };
            self.start_attempt(&id, index);
        }
    }

    fn start_attempt(&mut self, id: &str, index: u32) {
        let Some(live) = self.live.get_mut(id) else { return };
        let Some(step) = live.steps.get_mut(index as usize) else { return };
        if step.state != StepState::Ready {
            return;
        }
        step.attempts += 1;
        let number = step.attempts;
        let attempt = Attempt {
            objective_id: id.to_string(),
            step_index: index,
            step_id: step.plan.id.clone(),
            number,
            agent: step.plan.agent.clone(),
            command: step.plan.command.clone(),
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
        let spec = run_spec(&self.cfg, &self.logs_dir, &live.obj, step, number);
        self.turn.writes.attempt(&attempt);
        live.running.insert(index, Running { attempt, control: None });
        self.running += 1;
        self.set_step(id, index, StepState::Running, String::new());
        self.refresh_objective(id);
        // Spawned only once the attempt record is durable.
        self.after(move |engine| {
            let key = spec.key.clone();
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
fn run_spec(cfg: &Config, logs_dir: &std::path::Path, obj: &Objective, step: &Step, number: u32) -> RunSpec {
    {
        let mut env: BTreeMap<String, String> = match &obj.client_env {
            Some(e) => e.clone(),
            None => minimal_env(),
        };
        env.insert("ORCH_OBJECTIVE_ID".into(), obj.id.clone());
        env.insert("ORCH_STEP_ID".into(), step.plan.id.clone());
        env.insert("ORCH_ATTEMPT".into(), number.to_string());
        env.remove("ORCH_CHECKPOINT_FILE");
        for (k, v) in &step.plan.env {
            env.insert(k.clone(), v.clone());
        }
        let dir = logs_dir.join(&obj.id);
        let base = format!("{}.{number}", step.plan.id);
        RunSpec {
            key: AttemptKey {
                objective_id: obj.id.clone(),
                step_index: step.index,
                number,
            },
            argv: step.plan.command.clone(),
            workdir: PathBuf::from(&step.plan.workdir),
            env: env.into_iter().collect(),
            stdin: if step.plan.agent.is_empty() {
                None
            } else {
                Some(step.plan.prompt.clone().into_bytes())
            },
            stdout_log: dir.join(format!("{base}.stdout.log")),
            stderr_log: dir.join(format!("{base}.stderr.log")),
            grace: Duration::from_millis(cfg.grace_period.0),
            timeout: step.plan.timeout_ms.map(Duration::from_millis),
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
            let Some((_, id, index)) = self.timers.pop_first() else { break };
            let in_backoff = self
                .live
                .get(&id)
                .and_then(|l| l.steps.get(index as usize))
                .is_some_and(|s| s.state == StepState::Backoff);
            if in_backoff {
                self.set_step(&id, index, StepState::Ready, String::new());
                self.push_ready(&id, index);
            }
        }
    }

    // ------------------------------------------------------------ facts

    fn on_fact(&mut self, f: Fact) {
        match f {
            Fact::Started { key, pid, start_ticks } => {
                let Some(live) = self.live.get_mut(&key.objective_id) else { return };
                let Some(r) = live.running.get_mut(&key.step_index) else { return };
                r.attempt.pid = Some(pid);
                r.attempt.pid_start_ticks = start_ticks;
                self.turn.writes.attempt(&r.attempt);
                let (step_id, agent) = (r.attempt.step_id.clone(), r.attempt.agent.clone());
                self.emit(&key.objective_id, &step_id, key.number, EventKind::AttemptStarted { pid, agent });
            }
            Fact::Line { key, line } => self.on_line(key, line),
            Fact::Ended { key, end } => self.on_ended(key, end),
        }
    }

    fn on_line(&mut self, key: AttemptKey, line: AgentLine) {
        let Some(live) = self.live.get_mut(&key.objective_id) else { return };
        let Some(step) = live.steps.get_mut(key.step_index as usize) else { return };
        let step_id = step.plan.id.clone();
        match line {
            AgentLine::Checkpoint(json) => {
                step.checkpoint = Some(json.clone());
                self.turn.writes.step(step);
                self.emit(&key.objective_id, &step_id, key.number, EventKind::Checkpoint { json });
            }
            AgentLine::Progress { percent, message } => {
                step.progress = Progress {
                    percent,
                    message: message.clone(),
                };
                self.turn.writes.step(step);
                self.emit(&key.objective_id, &step_id, key.number, EventKind::Progress { percent, message });
            }
            AgentLine::Malformed(problem) => {
                tracing::warn!(objective = %key.objective_id, step = %step_id, attempt = key.number, %problem, "malformed agent protocol line (kept in the log)");
            }
        }
    }

    fn on_ended(&mut self, key: AttemptKey, end: AttemptEnd) {
        let id = key.objective_id.clone();
        let Some(live) = self.live.get_mut(&id) else { return };
        let Some(mut r) = live.running.remove(&key.step_index) else { return };
        self.running = self.running.saturating_sub(1);
        let a = &mut r.attempt;
        a.ended_ms = Some(now_ms());
        a.outcome = Some(end.outcome);
        a.exit_code = end.exit_code;
        a.signal = end.signal;
        a.message = end.message.clone();
        self.turn.writes.attempt(a);
        let step_id = a.step_id.clone();
        if let Some(step) = live.steps.get_mut(key.step_index as usize)
            && end.outcome != Outcome::Interrupted
        {
            step.counted_attempts += 1;
        }
        let Some(step) = live.steps.get(key.step_index as usize) else { return };
        let counted = step.counted_attempts;
        let policy = step.plan.retry.clone();
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
        match end.outcome {
            Outcome::Success => {
                self.set_step(&id, key.step_index, StepState::Succeeded, String::new());
                self.release_ready(&id);
            }
            Outcome::Interrupted => {
                // Does not use up a retry; runs again on the next start.
                self.set_step(&id, key.step_index, StepState::Ready, end.message);
                if !self.shutting_down {
                    self.push_ready(&id, key.step_index);
                }
            }
            Outcome::Cancelled => {
                self.set_step(&id, key.step_index, StepState::Cancelled, end.message);
                self.release_ready(&id);
            }
            o if policy.retries(o, end.exit_code) && counted < policy.max_attempts => {
                let u = rand_unit();
                let delay = policy.delay_ms(counted + 1, u);
                let due = now_ms() + delay as i64;
                if let Some(step) = self.live.get_mut(&id).and_then(|l| l.steps.get_mut(key.step_index as usize)) {
                    step.next_attempt_ms = Some(due);
                }
                self.set_step(&id, key.step_index, StepState::Backoff, end.message);
                // set_step clears the due time only for other states; store it with the step.
                if let Some(step) = self.live.get_mut(&id).and_then(|l| l.steps.get_mut(key.step_index as usize)) {
                    step.next_attempt_ms = Some(due);
                    self.turn.writes.step(step);
                }
                self.emit(&id, &step_id, key.number, EventKind::RetryScheduled { delay_ms: delay, due_at_ms: due });
                self.timers.insert((due, id.clone(), key.step_index));
            }
            _ => {
                self.set_step(&id, key.step_index, StepState::Failed, end.message);
                self.release_ready(&id);
            }
        }
        self.refresh_objective(&id);
    }

    // ------------------------------------------------------------ recovery

    /// Loads every objective that has not ended, closes attempts that were running when
    /// the daemon last stopped as `interrupted` (killing their leftover process groups,
    /// identified by pid and start time), and reschedules their steps.
    pub async fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut report = Recovery::default();
        for state in [ObjState::Pending, ObjState::Running, ObjState::Paused, ObjState::AwaitingApproval] {
            for id in self.store.ids_in_state(state)? {
                let Some(obj) = self.store.objective(&id)? else { continue };
                let steps = self.store.steps(&id)?;
                let open: Vec<Attempt> = self
                    .store
                    .attempts(&id)?
                    .into_iter()
                    .filter(|a| a.ended_ms.is_none())
                    .collect();
                report.objectives += 1;
                self.live.insert(
                    id.clone(),
                    Live {
                        stored_state: obj.state,
                        obj,
                        steps,
                        running: HashMap::new(),
                    },
                );
                for mut a in open {
                    if kill_leftover(&a) {
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
                let Some(live) = self.live.get(&id) else { continue };
                let plan: Vec<(u32, StepState, Option<Millis>)> = live
                    .steps
                    .iter()
                    .map(|s| (s.index, s.state, s.next_attempt_ms))
                    .collect();
                for (index, state, due) in plan {
                    match state {
                        StepState::Running => {
                            self.set_step(&id, index, StepState::Ready, "interrupted; resuming".into());
                            self.push_ready(&id, index);
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
fn kill_leftover(a: &Attempt) -> bool {
    let Some(pid) = a.pid else { return false };
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
