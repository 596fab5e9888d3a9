//! Control inputs in the core: cancel, pause, resume, approve, retry, and a budget
//! running out. Each checks its preconditions before changing anything.

use std::collections::BTreeSet;

use super::{Effect, Invalid, Tx};
use crate::model::{Control, EventKind, ObjState, Step, StepState, StopReason, Usage};

impl Tx<'_> {
    pub(super) fn cancel(&mut self, by: u32) {
        if self.run.cancelling {
            return;
        }
        let why = format!("cancelled by uid {by}");
        self.run.cancelling = true;
        self.run.obj.message = why.clone();
        self.d.objective = true;
        self.effect(Effect::Dequeue { timers: true });
        for index in self.idle(true) {
            self.set_step(index, StepState::Cancelled, why.clone());
        }
        self.order_running(Control::Stop(StopReason::Cancelled));
    }

    /// Steps that have not ended and run nothing now (`waiting` ones only if asked).
    fn idle(&self, waiting: bool) -> Vec<u32> {
        self.run
            .steps
            .iter()
            .filter(|s| !s.state.is_terminal() && !self.run.running.contains_key(&s.index))
            .filter(|s| waiting || s.state != StepState::Waiting)
            .map(|s| s.index)
            .collect()
    }

    pub(super) fn order_running(&mut self, order: Control) {
        let running: Vec<u32> = self.run.running.keys().copied().collect();
        for step in running {
            self.effect(Effect::Order { step, order });
        }
    }

    pub(super) fn pause(&mut self, by: u32) -> Result<(), Invalid> {
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

    pub(super) fn resume(&mut self, _by: u32) -> Result<(), Invalid> {
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

    pub(super) fn approve(
        &mut self,
        name: &str,
        approve: bool,
        reason: String,
        by: u32,
    ) -> Result<(), Invalid> {
        let index = self.find_step(name)?;
        let s = self.step_ref(index)?;
        let name = &s.plan.id.clone();
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
        if approve && self.step_ref(index)?.plan.role == crate::model::StepRole::Plan {
            self.approve_plan(index, by);
        } else if approve {
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
    pub(super) fn retry(
        &mut self,
        name: Option<&str>,
        fresh: bool,
        by: u32,
    ) -> Result<(), Invalid> {
        self.refuse_retry()?;
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
            s.rate_limit_waits = 0;
            s.next_attempt_ms = None;
            if fresh {
                s.session = None;
                s.session_usage = Usage::default();
            }
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

    /// A budget covering the objective ran out: stop its running attempts
    /// (`budget_exceeded`), start nothing new, and fail it saying why.
    pub(super) fn exhaust(&mut self, why: String) {
        if self.run.exhausted.is_some() {
            return;
        }
        self.run.exhausted = Some(why.clone());
        self.run.obj.message = why.clone();
        self.d.objective = true;
        self.effect(Effect::Dequeue { timers: true });
        let idle = self.idle(false);
        for index in idle {
            self.set_step(index, StepState::Failed, why.clone());
        }
        self.order_running(Control::Stop(StopReason::BudgetExceeded));
        self.release_ready();
    }
}

/// `chosen` and every step downstream of it that was skipped or cancelled.
pub(super) fn downstream(steps: &[Step], chosen: Vec<u32>) -> BTreeSet<u32> {
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
