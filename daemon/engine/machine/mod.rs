//! The engine's pure core: `step(run, input, ctx) -> Result<Decision, Invalid>`.
//!
//! One objective that has not ended (`Run`) plus one input (a control call, a fact about
//! an attempt, a timer, a budget running out, recovery) gives either a refusal with the
//! message the API returns, or a `Decision`: the records that changed, the events to
//! record (in order) and the effects to carry out (enqueue, timers, spawn, signal, end).
//! No tokio, sled, nix, files or clocks here: time and jitter come in through `Ctx`.
//! A refused input changes nothing. The actor around it (`engine/mod.rs`) writes the
//! changed records and events in one store write, flushes, publishes, then acts.

mod attempts;
mod control;
mod family;
pub mod host;
mod input;
pub mod planner;
#[cfg(test)]
mod props;
pub mod routing;
pub mod safety;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use family::{admit_child, cascade};
pub use input::Input;
pub use tables::{End, Needs, Next, RateLimit, counts_against_retries, needs, next_after_end};

use crate::model::{
    Attempt, Branch, Control, EventKind, FailureClass, Millis, ObjState, Objective, Progress, Step,
    StepPlan, StepState,
};

/// An objective that has not ended (or an ended one being reopened by `retry`), as the
/// core sees it: its records and what runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub obj: Objective,
    pub steps: Vec<Step>,
    /// Running attempts by step index.
    pub running: BTreeMap<u32, Running>,
    pub paused: bool,
    pub cancelling: bool,
    /// Set when a budget covering it ran out: why (it then fails).
    pub exhausted: Option<String>,
}

impl Run {
    /// An objective as loaded or submitted (paused when stored paused).
    pub fn new(obj: Objective, steps: Vec<Step>) -> Run {
        Run {
            paused: obj.state == ObjState::Paused,
            obj,
            steps,
            running: BTreeMap::new(),
            cancelling: false,
            exhausted: None,
        }
    }
}

/// A running attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub attempt: Attempt,
    /// The provider refused until then (ms); the step waits instead of failing.
    pub rate_limited_until: Option<Millis>,
    /// The provider refused without saying until when: the step waits this long from
    /// the attempt's end (the daemon's `rate_limit_wait`).
    pub rate_limited_for: Option<u64>,
    /// The agent said its run failed (whatever its exit code): why.
    pub failure: Option<(FailureClass, String)>,
}

/// What the core may not read for itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ctx {
    /// The wall clock (ms since the epoch).
    pub now: Millis,
    /// Uniform in [-1, 1], for the retry jitter.
    pub jitter: f64,
    /// The daemon is stopping: interrupted steps are not queued again.
    pub draining: bool,
}

impl Ctx {
    #[cfg(test)]
    pub fn at(now: Millis) -> Ctx {
        Ctx {
            now,
            jitter: 0.0,
            draining: false,
        }
    }
}

/// Why an input was refused; the API returns the message as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
}

/// An event to record, on this objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub step_id: String,
    pub attempt: u32,
    pub kind: EventKind,
}

/// What the actor does once it has the decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Put the step in the ready queue.
    Enqueue { step: u32 },
    /// Fire `TimerFired` for the step at `due`.
    Timer { step: u32, due: Millis },
    /// Drop the objective's queued steps (and its timers when `timers`).
    Dequeue { timers: bool },
    /// Start the attempt `Start` opened, once its record is durable.
    Spawn { step: u32, attempt: u32 },
    /// Send a control order to the step's running attempt, once the turn is durable.
    Order { step: u32, order: Control },
    /// The objective ended: it leaves the live set; whoever waits on it is answered.
    Ended,
    /// Delete the ended objective's records, logs and checkpoints.
    Remove,
}

/// What one input did: changed records, events in order, effects in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub events: Vec<Emit>,
    /// The objective record changed.
    pub objective: bool,
    /// Step records that changed, by index.
    pub steps: BTreeSet<u32>,
    /// Attempt records to write.
    pub attempts: Vec<Attempt>,
    pub effects: Vec<Effect>,
}

impl Decision {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && !self.objective
            && self.steps.is_empty()
            && self.attempts.is_empty()
            && self.effects.is_empty()
    }
}

/// Root and the daemon's own user control everything; others their own objectives.
pub fn authorize(
    caller: u32,
    own_uid: u32,
    owner: u32,
    action: &str,
    id: &str,
) -> Result<(), Invalid> {
    if caller == 0 || caller == own_uid || caller == owner {
        return Ok(());
    }
    Err(Invalid::PermissionDenied(format!(
        "uid {caller} may not {action} objective {id} (owned by uid {owner})"
    )))
}

/// A new objective: its steps wait for their needs; those without become ready (or
/// await approval).
pub fn submit(obj: Objective, plans: Vec<StepPlan>, ctx: Ctx) -> (Run, Decision) {
    let steps: Vec<Step> = plans
        .into_iter()
        .enumerate()
        .map(|(i, plan)| Step::new(&obj.id, i as u32, plan))
        .collect();
    let mut run = Run::new(obj, steps);
    let mut t = Tx::new(&mut run, ctx);
    t.d.objective = true;
    t.d.steps.extend(t.run.steps.iter().map(|s| s.index));
    let (name, count) = (t.run.obj.name.clone(), t.run.obj.step_count);
    t.emit("", 0, EventKind::ObjectiveSubmitted { name, steps: count });
    t.first_round();
    t.release_ready();
    t.refresh();
    let d = t.d;
    (run, d)
}

/// Applies one input to an objective. On `Err` nothing changed.
pub fn step(run: &mut Run, input: Input, ctx: Ctx) -> Result<Decision, Invalid> {
    let mut t = Tx::new(run, ctx);
    t.apply(input)?;
    Ok(t.d)
}

/// A decision being made.
struct Tx<'a> {
    run: &'a mut Run,
    d: Decision,
    ctx: Ctx,
    /// A planner's valid plan, between its attempt's end and the step's success.
    pending: Vec<StepPlan>,
}

impl<'a> Tx<'a> {
    fn new(run: &'a mut Run, ctx: Ctx) -> Tx<'a> {
        Tx {
            run,
            d: Decision::default(),
            ctx,
            pending: Vec::new(),
        }
    }

    fn id(&self) -> &str {
        &self.run.obj.id
    }

    fn emit(&mut self, step_id: &str, attempt: u32, kind: EventKind) {
        self.d.events.push(Emit {
            step_id: step_id.to_string(),
            attempt,
            kind,
        });
    }

    fn effect(&mut self, e: Effect) {
        self.d.effects.push(e);
    }

    fn step_ref(&self, index: u32) -> Result<&Step, Invalid> {
        self.run.steps.get(index as usize).ok_or_else(|| {
            Invalid::NotFound(format!("objective {} has no step #{index}", self.id()))
        })
    }

    fn find_step(&self, name: &str) -> Result<u32, Invalid> {
        let name = self
            .plan_step_name(name)
            .unwrap_or_else(|| name.to_string());
        let name = name.as_str();
        self.run
            .steps
            .iter()
            .find(|s| s.plan.id == name)
            .map(|s| s.index)
            .ok_or_else(|| {
                Invalid::NotFound(format!("objective {} has no step `{name}`", self.id()))
            })
    }

    /// Why an input that needs an ended objective is refused.
    fn not_ended(&self, input: &Input) -> String {
        let id = self.id();
        match input {
            Input::Remove { .. } => format!(
                "cannot remove objective {id}: it is {} (only an ended objective can be \
                 removed; cancel it first with `orchctl cancel {id}`, or wait for it to end)",
                self.run.obj.state.word()
            ),
            _ => format!(
                "objective {id} has not ended; only an ended objective can be {}",
                match input.action() {
                    "retry" => "retried",
                    other => other,
                }
            ),
        }
    }

    fn apply(&mut self, input: Input) -> Result<(), Invalid> {
        let ended = self.run.obj.state.is_terminal();
        match (needs(&input), ended) {
            (Needs::Ended, false) => {
                return Err(Invalid::FailedPrecondition(self.not_ended(&input)));
            }
            (Needs::NotEnded, true) => {
                return Err(Invalid::FailedPrecondition(format!(
                    "cannot {} objective {}: it has already ended ({})",
                    input.action(),
                    self.id(),
                    self.run.obj.state.word()
                )));
            }
            _ => {}
        }
        match input {
            Input::Remove { by } => {
                let state = self.run.obj.state;
                self.emit("", 0, EventKind::ObjectiveRemoved { by_uid: by, state });
                self.effect(Effect::Remove);
            }
            Input::Cancel { by } => self.cancel(by),
            Input::Pause { by } => self.pause(by)?,
            Input::Resume { by } => self.resume(by)?,
            Input::Approve {
                step,
                approve,
                reason,
                by,
            } => self.approve(&step, approve, reason, by)?,
            Input::Retry { step, fresh, by } => self.retry(step.as_deref(), fresh, by)?,
            Input::Route { step, routed } => self.routed(step, routed)?,
            Input::Start {
                step,
                agent,
                command,
            } => self.start(step, agent, command)?,
            Input::Started {
                step,
                attempt,
                pid,
                start_ticks,
                cgroup,
                job_id,
            } => {
                let Some(r) = self.running_mut(step, attempt) else {
                    return Ok(());
                };
                r.attempt.pid = pid;
                r.attempt.pid_start_ticks = start_ticks;
                r.attempt.cgroup = cgroup;
                r.attempt.job_id = job_id;
                let (a, agent) = (r.attempt.clone(), r.attempt.agent.clone());
                self.d.attempts.push(a.clone());
                // A cluster job has no pid here: the event says 0.
                let pid = pid.unwrap_or(0);
                self.emit(
                    &a.step_id,
                    attempt,
                    EventKind::AttemptStarted { pid, agent },
                );
            }
            Input::Sample {
                step,
                attempt,
                peak_rss_bytes,
                cpu_ms,
            } => {
                if let Some(r) = self.running_mut(step, attempt) {
                    r.attempt.peak_rss_bytes = peak_rss_bytes;
                    r.attempt.cpu_ms = cpu_ms;
                }
            }
            Input::Checkpoint {
                step,
                attempt,
                json,
            } => {
                let s = self.step_mut(step)?;
                s.checkpoint = Some(json.clone());
                let sid = s.plan.id.clone();
                self.d.steps.insert(step);
                self.emit(&sid, attempt, EventKind::Checkpoint { json });
            }
            Input::Progress {
                step,
                attempt,
                percent,
                message,
            } => {
                let s = self.step_mut(step)?;
                s.progress = Progress {
                    percent,
                    message: message.clone(),
                };
                let sid = s.plan.id.clone();
                self.d.steps.insert(step);
                self.emit(&sid, attempt, EventKind::Progress { percent, message });
            }
            Input::Usage {
                step,
                attempt,
                delta,
                model,
            } => self.usage(step, attempt, delta, model)?,
            Input::RateLimited {
                step,
                attempt,
                until_ms,
                wait_ms,
            } => {
                if let Some(r) = self.running_mut(step, attempt) {
                    match until_ms {
                        Some(t) => r.rate_limited_until = Some(t),
                        None => r.rate_limited_for = Some(wait_ms),
                    }
                }
            }
            Input::Session { step, attempt, id } => {
                if let Some(r) = self.running_mut(step, attempt)
                    && r.attempt.session.as_deref() != Some(id.as_str())
                {
                    r.attempt.session = Some(id.clone());
                    let a = r.attempt.clone();
                    let so_far = a.usage;
                    self.d.attempts.push(a);
                    // The step's next attempt resumes it (with the same agent).
                    let s = self.step_mut(step)?;
                    if s.session.as_deref() != Some(id.as_str()) {
                        s.session = Some(id);
                        s.session_usage = so_far;
                    }
                    self.d.steps.insert(step);
                }
            }
            Input::AgentFailed {
                step,
                attempt,
                class,
                message,
            } => {
                if let Some(r) = self.running_mut(step, attempt) {
                    r.failure = Some((class, message));
                }
            }
            Input::Alert {
                key,
                percent,
                budget,
                used,
                limit,
            } => {
                if let Some(key) = key {
                    if self.run.obj.alerts.contains(&key) {
                        return Ok(());
                    }
                    self.run.obj.alerts.push(key);
                    self.d.objective = true;
                }
                self.emit(
                    "",
                    0,
                    EventKind::BudgetAlert {
                        percent,
                        budget,
                        used,
                        limit,
                    },
                );
            }
            Input::Ended { step, attempt, end } => self.ended(step, attempt, end),
            Input::TimerFired { step } => {
                if self.step_ref(step)?.state == StepState::Backoff {
                    self.hold_or_queue(step, String::new());
                }
            }
            Input::Exhaust { why } => self.exhaust(why),
            Input::Recover { gone, kept } => self.recover(gone, kept),
            Input::Branch {
                step,
                attempt: _,
                branch,
            } => {
                let s = self.step_mut(step)?;
                // After an attempt only the head moves: the base stays the one it had.
                let base = match (&s.branch, branch.base.is_empty()) {
                    (Some(old), true) => old.base.clone(),
                    _ => branch.base.clone(),
                };
                let branch = Branch { base, ..branch };
                if s.branch.as_ref() != Some(&branch) {
                    s.branch = Some(branch);
                    self.d.steps.insert(step);
                }
            }
            Input::Adopt { child } => self.adopt(child),
            Input::ChildUsage { delta } => self.child_usage(&delta),
            Input::PlanPrinted {
                step,
                attempt,
                json,
            } => self.plan_printed(step, attempt, json),
            Input::Verdict {
                step,
                attempt,
                verdict,
            } => self.verdict_said(step, attempt, verdict),
            Input::PlanEnded {
                step,
                attempt,
                end,
                plan,
            } => self.plan_ended(step, attempt, end, plan),
        }
        self.advance();
        self.refresh();
        Ok(())
    }

    fn step_mut(&mut self, index: u32) -> Result<&mut Step, Invalid> {
        let id = self.run.obj.id.clone();
        self.run
            .steps
            .get_mut(index as usize)
            .ok_or_else(|| Invalid::NotFound(format!("objective {id} has no step #{index}")))
    }

    fn running_mut(&mut self, step: u32, attempt: u32) -> Option<&mut Running> {
        self.run
            .running
            .get_mut(&step)
            .filter(|r| r.attempt.number == attempt)
    }

    // ------------------------------------------------------------ step states

    /// Sets a step's state (and message), recording the event; the one way states change.
    fn set_step(&mut self, index: u32, state: StepState, message: String) {
        let Some(step) = self.run.steps.get_mut(index as usize) else {
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
        let (sid, attempt) = (step.plan.id.clone(), step.attempts);
        self.d.steps.insert(index);
        self.emit(&sid, attempt, EventKind::StepState { state, message });
    }

    /// A step that may run again: held while the objective is paused, else queued.
    fn hold_or_queue(&mut self, index: u32, message: String) {
        if self.run.paused {
            self.set_step(index, StepState::Paused, message);
        } else {
            self.set_step(index, StepState::Ready, message);
            self.effect(Effect::Enqueue { step: index });
        }
    }

    /// Moves waiting steps whose needs all succeeded on (ready, paused, or awaiting
    /// approval), and skips those whose needs can no longer succeed.
    fn release_ready(&mut self) {
        loop {
            let state_of = |name: &str| {
                self.run
                    .steps
                    .iter()
                    .find(|s| s.plan.id == name)
                    .map(|s| s.state)
            };
            let mut change = None;
            for s in self
                .run
                .steps
                .iter()
                .filter(|s| s.state == StepState::Waiting)
            {
                let needs: Vec<Option<StepState>> =
                    s.plan.needs.iter().map(|n| state_of(n)).collect();
                if needs.iter().all(|n| *n == Some(StepState::Succeeded)) {
                    change = Some((s.index, None));
                    break;
                }
                if let Some((bad, _)) = s.plan.needs.iter().zip(&needs).find(|(_, st)| {
                    matches!(
                        st,
                        Some(StepState::Failed | StepState::Skipped | StepState::Cancelled) | None
                    )
                }) {
                    change = Some((s.index, Some(format!("dependency `{bad}` did not succeed"))));
                    break;
                }
            }
            let Some((index, skipped)) = change else {
                return;
            };
            if let Some(why) = skipped {
                self.set_step(index, StepState::Skipped, why);
                continue;
            }
            let Some(s) = self.run.steps.get(index as usize) else {
                return;
            };
            if s.plan.requires_approval && !s.approved {
                let (sid, attempt) = (s.plan.id.clone(), s.attempts);
                let why = s.plan.approval_reason.clone();
                self.set_step(index, StepState::AwaitingApproval, why);
                self.emit(&sid, attempt, EventKind::ApprovalRequested);
            } else {
                self.hold_or_queue(index, String::new());
            }
        }
    }

    /// Re-derives the objective's state from its steps; records a change. An ended
    /// objective leaves the live set.
    fn refresh(&mut self) {
        let derived = planner::derived_state(self.run);
        let run = &mut *self.run;
        if run.paused && !derived.is_terminal() {
            return;
        }
        if derived == run.obj.state {
            return;
        }
        run.obj.state = derived;
        run.obj.updated_ms = self.ctx.now;
        if derived == ObjState::Failed {
            let planned = run
                .obj
                .planner
                .as_deref()
                .and_then(planner::failure_message);
            run.obj.message = match (&run.exhausted, planned) {
                (Some(why), _) => why.clone(),
                (None, Some(why)) => why,
                (None, None) => run
                    .steps
                    .iter()
                    .find(|s| s.state == StepState::Failed)
                    .map(|s| format!("step `{}` failed: {}", s.plan.id, s.message))
                    .unwrap_or_default(),
            };
        }
        // The actor sets `ended_seq` to the seq it gives the event below.
        run.obj.ended_seq = None;
        let message = run.obj.message.clone();
        self.d.objective = true;
        self.emit(
            "",
            0,
            EventKind::ObjectiveState {
                state: derived,
                message,
            },
        );
        if derived.is_terminal() {
            self.effect(Effect::Dequeue { timers: true });
            self.effect(Effect::Ended);
        }
    }
}
