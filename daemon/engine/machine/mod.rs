//! The engine's pure core: `step(run, input, ctx) -> Result<Decision, Invalid>`.
//!
//! One objective that has not ended (`Run`) plus one input (a control call, a fact about
//! an attempt, a timer, a budget running out, recovery) gives either a refusal with the
//! message the API returns, or a `Decision`: the records that changed, the events to
//! record (in order) and the effects to carry out (enqueue, timers, spawn, signal, end).
//! No tokio, sled, nix, files or clocks here: time and jitter come in through `Ctx`.
//! A refused input changes nothing. The actor around it (`engine/mod.rs`) writes the
//! changed records and events in one store write, flushes, publishes, then acts.

#[cfg(test)]
mod props;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use tables::{End, Next, counts_against_retries, next_after_end};

use crate::model::{
    Attempt, Control, EventKind, Millis, ObjState, Objective, Outcome, Progress, Step, StepPlan,
    StepState, StopReason, Usage, derive_objective_state,
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

/// One input to an objective.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Cancel {
        by: u32,
    },
    Pause {
        by: u32,
    },
    Resume {
        by: u32,
    },
    Approve {
        step: String,
        approve: bool,
        reason: String,
        by: u32,
    },
    /// Re-run the failed or cancelled steps (or `step` alone) of an ended objective.
    Retry {
        step: Option<String>,
        by: u32,
    },
    /// The scheduler gave a slot to a ready step: open its next attempt.
    Start {
        step: u32,
        agent: String,
        command: Vec<String>,
    },
    Started {
        step: u32,
        attempt: u32,
        pid: u32,
        start_ticks: Option<u64>,
        cgroup: Option<String>,
    },
    /// Resource figures of a running attempt (kept in memory, stored with its end).
    Sample {
        step: u32,
        attempt: u32,
        peak_rss_bytes: u64,
        cpu_ms: u64,
    },
    Checkpoint {
        step: u32,
        attempt: u32,
        json: String,
    },
    Progress {
        step: u32,
        attempt: u32,
        percent: Option<f64>,
        message: String,
    },
    /// Usage reported by an attempt, priced and attributed to a model.
    Usage {
        step: u32,
        attempt: u32,
        delta: Usage,
        model: String,
    },
    RateLimited {
        step: u32,
        attempt: u32,
        until_ms: Millis,
    },
    /// A budget alert threshold was crossed. `key` is set for the objective's own
    /// budgets (sent once per objective); daemon-wide alerts are deduplicated outside.
    Alert {
        key: Option<String>,
        percent: f64,
        budget: String,
        used: f64,
        limit: f64,
    },
    Ended {
        step: u32,
        attempt: u32,
        end: End,
    },
    /// A backoff timer of the step is due.
    TimerFired {
        step: u32,
    },
    /// A budget covering the objective ran out.
    Exhaust {
        why: String,
    },
    /// Loaded after a restart. `gone` are attempts that were running and are no more
    /// (their trees are already killed): they end `interrupted` and their steps run
    /// again. `kept` are attempts their executor re-attached to: they go on running.
    Recover {
        gone: Vec<Attempt>,
        kept: Vec<Attempt>,
    },
}

impl Input {
    /// The verb of a control input, for messages.
    pub fn action(&self) -> &'static str {
        match self {
            Input::Cancel { .. } => "cancel",
            Input::Pause { .. } => "pause",
            Input::Resume { .. } => "resume",
            Input::Approve { approve: true, .. } => "approve",
            Input::Approve { approve: false, .. } => "deny",
            Input::Retry { .. } => "retry",
            _ => "change",
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
}

impl<'a> Tx<'a> {
    fn new(run: &'a mut Run, ctx: Ctx) -> Tx<'a> {
        Tx {
            run,
            d: Decision::default(),
            ctx,
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
        self.run
            .steps
            .iter()
            .find(|s| s.plan.id == name)
            .map(|s| s.index)
            .ok_or_else(|| {
                Invalid::NotFound(format!("objective {} has no step `{name}`", self.id()))
            })
    }

    fn apply(&mut self, input: Input) -> Result<(), Invalid> {
        let ended = self.run.obj.state.is_terminal();
        match &input {
            Input::Retry { .. } if !ended => {
                return Err(Invalid::FailedPrecondition(format!(
                    "objective {} has not ended; only an ended objective can be retried",
                    self.id()
                )));
            }
            Input::Retry { .. } => {}
            _ if ended => {
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
            Input::Cancel { by } => self.cancel(by),
            Input::Pause { by } => self.pause(by)?,
            Input::Resume { by } => self.resume(by)?,
            Input::Approve {
                step,
                approve,
                reason,
                by,
            } => self.approve(&step, approve, reason, by)?,
            Input::Retry { step, by } => self.retry(step.as_deref(), by)?,
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
            } => {
                let Some(r) = self.running_mut(step, attempt) else {
                    return Ok(());
                };
                r.attempt.pid = Some(pid);
                r.attempt.pid_start_ticks = start_ticks;
                r.attempt.cgroup = cgroup;
                let (a, agent) = (r.attempt.clone(), r.attempt.agent.clone());
                self.d.attempts.push(a.clone());
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
            } => {
                if let Some(r) = self.running_mut(step, attempt) {
                    r.rate_limited_until = Some(until_ms);
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
        }
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
                self.set_step(index, StepState::AwaitingApproval, String::new());
                self.emit(&sid, attempt, EventKind::ApprovalRequested);
            } else {
                self.hold_or_queue(index, String::new());
            }
        }
    }

    /// Re-derives the objective's state from its steps; records a change. An ended
    /// objective leaves the live set.
    fn refresh(&mut self) {
        let run = &mut *self.run;
        let derived = derive_objective_state(&run.steps, run.cancelling);
        if run.paused && !derived.is_terminal() {
            return;
        }
        if derived == run.obj.state {
            return;
        }
        run.obj.state = derived;
        run.obj.updated_ms = self.ctx.now;
        if derived == ObjState::Failed {
            run.obj.message = match &run.exhausted {
                Some(why) => why.clone(),
                None => run
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

    // ------------------------------------------------------------ control

    fn cancel(&mut self, by: u32) {
        if self.run.cancelling {
            return;
        }
        let why = format!("cancelled by uid {by}");
        self.run.cancelling = true;
        self.run.obj.message = why.clone();
        self.d.objective = true;
        self.effect(Effect::Dequeue { timers: true });
        let idle: Vec<u32> = self
            .run
            .steps
            .iter()
            .filter(|s| !s.state.is_terminal() && !self.run.running.contains_key(&s.index))
            .map(|s| s.index)
            .collect();
        for index in idle {
            self.set_step(index, StepState::Cancelled, why.clone());
        }
        self.order_running(Control::Stop(StopReason::Cancelled));
    }

    fn order_running(&mut self, order: Control) {
        let running: Vec<u32> = self.run.running.keys().copied().collect();
        for step in running {
            self.effect(Effect::Order { step, order });
        }
    }

    fn pause(&mut self, by: u32) -> Result<(), Invalid> {
        let id = self.id().to_string();
        if self.run.paused {
            return Err(Invalid::FailedPrecondition(format!(
                "objective {id} is already paused"
            )));
        }
        if self.run.cancelling {
            return Err(Invalid::FailedPrecondition(format!(
                "objective {id} is being cancelled"
            )));
        }
        self.run.paused = true;
        self.run.obj.state = ObjState::Paused;
        self.run.obj.updated_ms = self.ctx.now;
        self.d.objective = true;
        self.emit(
            "",
            0,
            EventKind::ObjectiveState {
                state: ObjState::Paused,
                message: format!("paused by uid {by}"),
            },
        );
        // Backoff timers stay: a step whose timer fires while paused is held then.
        self.effect(Effect::Dequeue { timers: false });
        let holds: Vec<(u32, bool)> = self
            .run
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Ready | StepState::Running))
            .map(|s| (s.index, self.run.running.contains_key(&s.index)))
            .collect();
        for (index, running) in holds {
            self.set_step(index, StepState::Paused, String::new());
            if running {
                self.effect(Effect::Order {
                    step: index,
                    order: Control::Pause,
                });
            }
        }
        Ok(())
    }

    fn resume(&mut self, _by: u32) -> Result<(), Invalid> {
        if !self.run.paused {
            return Err(Invalid::FailedPrecondition(format!(
                "objective {} is {}, not paused",
                self.id(),
                self.run.obj.state.word()
            )));
        }
        self.run.paused = false;
        let held: Vec<(u32, bool)> = self
            .run
            .steps
            .iter()
            .filter(|s| s.state == StepState::Paused)
            .map(|s| (s.index, self.run.running.contains_key(&s.index)))
            .collect();
        for (index, running) in held {
            if running {
                self.set_step(index, StepState::Running, String::new());
                self.effect(Effect::Order {
                    step: index,
                    order: Control::Resume,
                });
            } else {
                self.hold_or_queue(index, String::new());
            }
        }
        self.release_ready();
        Ok(())
    }

    fn approve(
        &mut self,
        name: &str,
        approve: bool,
        reason: String,
        by: u32,
    ) -> Result<(), Invalid> {
        let index = self.find_step(name)?;
        let s = self.step_ref(index)?;
        if s.state != StepState::AwaitingApproval {
            return Err(Invalid::FailedPrecondition(format!(
                "step `{name}` is not awaiting approval ({})",
                s.state.word()
            )));
        }
        let attempt = s.attempts;
        self.step_mut(index)?.approved = approve;
        self.d.steps.insert(index);
        self.emit(
            name,
            attempt,
            EventKind::ApprovalAnswered {
                approved: approve,
                by_uid: by,
                reason: reason.clone(),
            },
        );
        if approve {
            self.hold_or_queue(index, format!("approved by uid {by}"));
        } else {
            let why = if reason.is_empty() {
                format!("denied by uid {by}")
            } else {
                format!("denied by uid {by}: {reason}")
            };
            self.set_step(index, StepState::Failed, why);
            self.release_ready();
        }
        Ok(())
    }

    /// Re-runs the failed or cancelled steps (or `name` alone) and the steps they
    /// skipped or left cancelled downstream, each with a fresh set of attempts, from
    /// its last checkpoint.
    fn retry(&mut self, name: Option<&str>, by: u32) -> Result<(), Invalid> {
        let rerun = |s: &Step| matches!(s.state, StepState::Failed | StepState::Cancelled);
        let chosen: Vec<u32> = match name {
            Some(name) => {
                let s = self.step_ref(self.find_step(name)?)?;
                if !rerun(s) {
                    return Err(Invalid::FailedPrecondition(format!(
                        "step `{name}` is {}; only failed or cancelled steps can be retried",
                        s.state.word()
                    )));
                }
                vec![s.index]
            }
            None => self
                .run
                .steps
                .iter()
                .filter(|s| rerun(s))
                .map(|s| s.index)
                .collect(),
        };
        if chosen.is_empty() {
            return Err(Invalid::FailedPrecondition(format!(
                "objective {} has no failed or cancelled step to retry",
                self.id()
            )));
        }
        let again = downstream(&self.run.steps, chosen);
        for s in self
            .run
            .steps
            .iter_mut()
            .filter(|s| again.contains(&s.index))
        {
            s.counted_attempts = 0;
            s.next_attempt_ms = None;
        }
        let run = &mut *self.run;
        run.obj.message = String::new();
        run.obj.ended_seq = None;
        run.paused = false;
        run.cancelling = false;
        run.exhausted = None;
        self.d.objective = true;
        for index in again {
            self.set_step(
                index,
                StepState::Waiting,
                format!("retry requested by uid {by}"),
            );
        }
        self.release_ready();
        Ok(())
    }

    // ------------------------------------------------------------ attempts

    fn start(&mut self, index: u32, agent: String, command: Vec<String>) -> Result<(), Invalid> {
        let now = self.ctx.now;
        let id = self.id().to_string();
        let step = self.step_mut(index)?;
        if step.state != StepState::Ready {
            return Err(Invalid::FailedPrecondition(format!(
                "step `{}` of objective {id} is {}, not ready",
                step.plan.id,
                step.state.word()
            )));
        }
        step.attempts += 1;
        let attempt = Attempt {
            objective_id: id,
            step_index: index,
            step_id: step.plan.id.clone(),
            number: step.attempts,
            agent,
            command,
            pid: None,
            pid_start_ticks: None,
            cgroup: None,
            started_ms: now,
            ended_ms: None,
            outcome: None,
            exit_code: None,
            signal: None,
            peak_rss_bytes: 0,
            cpu_ms: 0,
            usage: Usage::default(),
            message: String::new(),
        };
        let number = attempt.number;
        self.d.attempts.push(attempt.clone());
        self.run.running.insert(
            index,
            Running {
                attempt,
                rate_limited_until: None,
            },
        );
        self.set_step(index, StepState::Running, String::new());
        self.effect(Effect::Spawn {
            step: index,
            attempt: number,
        });
        Ok(())
    }

    fn usage(
        &mut self,
        index: u32,
        attempt: u32,
        delta: Usage,
        model: String,
    ) -> Result<(), Invalid> {
        let step = self.step_mut(index)?;
        step.usage.add(&delta);
        let (sid, step_total) = (step.plan.id.clone(), step.usage);
        self.d.steps.insert(index);
        if let Some(r) = self.running_mut(index, attempt) {
            r.attempt.usage.add(&delta);
        }
        self.run.obj.usage.add(&delta);
        self.run.obj.updated_ms = self.ctx.now;
        self.d.objective = true;
        let objective_total = self.run.obj.usage;
        self.emit(
            &sid,
            attempt,
            EventKind::Usage {
                report: delta,
                step_total,
                objective_total,
                model,
            },
        );
        Ok(())
    }

    fn ended(&mut self, index: u32, number: u32, end: End) {
        let now = self.ctx.now;
        if self.running_mut(index, number).is_none() {
            return;
        }
        let Some(mut r) = self.run.running.remove(&index) else {
            return;
        };
        let a = &mut r.attempt;
        a.ended_ms = Some(now);
        a.outcome = Some(end.outcome);
        a.exit_code = end.exit_code;
        a.signal = end.signal;
        a.message = end.message.clone();
        a.peak_rss_bytes = a.peak_rss_bytes.max(end.peak_rss_bytes);
        a.cpu_ms = a.cpu_ms.max(end.cpu_ms);
        let step_id = a.step_id.clone();
        self.d.attempts.push(r.attempt);
        let rate_limited_for = r
            .rate_limited_until
            .filter(|t| *t > now)
            .map(|t| (t - now) as u64);
        let Some(step) = self.run.steps.get_mut(index as usize) else {
            return;
        };
        if counts_against_retries(end.outcome, rate_limited_for.is_some()) {
            step.counted_attempts += 1;
        }
        self.d.steps.insert(index);
        let next = next_after_end(
            &end,
            step,
            self.run.cancelling,
            self.run.exhausted.as_deref(),
            rate_limited_for,
            self.ctx.jitter,
        );
        self.emit(
            &step_id,
            number,
            EventKind::AttemptEnded {
                outcome: end.outcome,
                exit_code: end.exit_code,
                signal: end.signal,
                message: end.message,
            },
        );
        match next {
            Next::Succeeded => {
                self.set_step(index, StepState::Succeeded, String::new());
                self.release_ready();
            }
            Next::Requeue(message) if self.ctx.draining && !self.run.paused => {
                // Runs again on the next start.
                self.set_step(index, StepState::Ready, message);
            }
            Next::Requeue(message) => self.hold_or_queue(index, message),
            Next::Cancelled(message) => {
                self.set_step(index, StepState::Cancelled, message);
                self.release_ready();
            }
            Next::Failed(message) => {
                self.set_step(index, StepState::Failed, message);
                self.release_ready();
            }
            Next::Backoff { delay_ms, message } => {
                let due = now + delay_ms as i64;
                self.set_step(index, StepState::Backoff, message);
                if let Some(step) = self.run.steps.get_mut(index as usize) {
                    step.next_attempt_ms = Some(due);
                }
                self.emit(
                    &step_id,
                    number,
                    EventKind::RetryScheduled {
                        delay_ms,
                        due_at_ms: due,
                    },
                );
                self.effect(Effect::Timer { step: index, due });
            }
            Next::FallBack(why) => {
                let Some(step) = self.run.steps.get_mut(index as usize) else {
                    return;
                };
                step.agent_index += 1;
                step.counted_attempts = 0;
                let message = format!("{why}; falling back to agent `{}`", step.current_agent());
                self.hold_or_queue(index, message);
            }
        }
    }

    /// A budget covering the objective ran out: stop its running attempts
    /// (`budget_exceeded`), start nothing new, and fail it saying why.
    fn exhaust(&mut self, why: String) {
        if self.run.exhausted.is_some() {
            return;
        }
        self.run.exhausted = Some(why.clone());
        self.run.obj.message = why.clone();
        self.d.objective = true;
        self.effect(Effect::Dequeue { timers: true });
        let idle: Vec<u32> = self
            .run
            .steps
            .iter()
            .filter(|s| {
                !s.state.is_terminal()
                    && s.state != StepState::Waiting
                    && !self.run.running.contains_key(&s.index)
            })
            .map(|s| s.index)
            .collect();
        for index in idle {
            self.set_step(index, StepState::Failed, why.clone());
        }
        self.order_running(Control::Stop(StopReason::BudgetExceeded));
        self.release_ready();
    }

    fn recover(&mut self, gone: Vec<Attempt>, kept: Vec<Attempt>) {
        for a in kept {
            let index = a.step_index;
            self.run.running.insert(
                index,
                Running {
                    attempt: a,
                    rate_limited_until: None,
                },
            );
        }
        for mut a in gone {
            a.ended_ms = Some(self.ctx.now);
            a.outcome = Some(Outcome::Interrupted);
            a.message = "the daemon stopped while this attempt ran".into();
            self.emit(
                &a.step_id,
                a.number,
                EventKind::AttemptEnded {
                    outcome: Outcome::Interrupted,
                    exit_code: None,
                    signal: None,
                    message: a.message.clone(),
                },
            );
            self.d.attempts.push(a);
        }
        let paused = self.run.paused;
        let plan: Vec<(u32, StepState, Option<Millis>)> = self
            .run
            .steps
            .iter()
            .map(|s| (s.index, s.state, s.next_attempt_ms))
            .collect();
        for (index, state, due) in plan {
            if self.run.running.contains_key(&index) {
                continue;
            }
            match state {
                StepState::Running | StepState::Paused if paused => {
                    self.set_step(
                        index,
                        StepState::Paused,
                        "interrupted; held while paused".into(),
                    );
                }
                StepState::Running | StepState::Paused => {
                    self.set_step(index, StepState::Ready, "interrupted; resuming".into());
                    self.effect(Effect::Enqueue { step: index });
                }
                StepState::Ready if paused => {
                    self.set_step(index, StepState::Paused, String::new());
                }
                StepState::Ready => self.effect(Effect::Enqueue { step: index }),
                StepState::Backoff => self.effect(Effect::Timer {
                    step: index,
                    due: due.unwrap_or(0),
                }),
                _ => {}
            }
        }
        self.release_ready();
    }
}

/// `chosen` and every step downstream of it that was skipped or cancelled.
fn downstream(steps: &[Step], chosen: Vec<u32>) -> BTreeSet<u32> {
    let mut again: BTreeSet<u32> = chosen.into_iter().collect();
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
            return again;
        }
        again.extend(more);
    }
}
