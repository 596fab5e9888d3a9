//! Attempt facts in the core: opening an attempt, usage, an attempt's end (through
//! the rule table of `tables`), and recovery after a restart.

use super::{
    Effect, End, Invalid, Next, RateLimit, Running, Tx, counts_against_retries, next_after_end,
};
use crate::model::{Attempt, EventKind, FailureClass, Millis, Outcome, StepState, Usage};

impl Tx<'_> {
    pub(super) fn start(
        &mut self,
        index: u32,
        agent: String,
        command: Vec<String>,
    ) -> Result<(), Invalid> {
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
        let route_reason = match step.plan.route {
            Some(_) => step.route_reason.clone(),
            None => String::new(),
        };
        let attempt = Attempt {
            agent,
            route_reason,
            command,
            executor: step.plan.executor.clone(),
            started_ms: now,
            ..Attempt::new(&id, index, &step.plan.id, step.attempts)
        };
        let number = attempt.number;
        self.d.attempts.push(attempt.clone());
        self.run.running.insert(
            index,
            Running {
                attempt,
                rate_limited_until: None,
                rate_limited_for: None,
                failure: None,
            },
        );
        self.set_step(index, StepState::Running, String::new());
        self.effect(Effect::Spawn {
            step: index,
            attempt: number,
        });
        Ok(())
    }

    pub(super) fn usage(
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
        let mut in_session = None;
        if let Some(r) = self.running_mut(index, attempt) {
            r.attempt.usage.add(&delta);
            in_session = r.attempt.session.clone();
        }
        let step = self.step_mut(index)?;
        if in_session.is_some() && in_session == step.session {
            step.session_usage.add(&delta);
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

    pub(super) fn ended(&mut self, index: u32, number: u32, end: End) {
        let now = self.ctx.now;
        if self.running_mut(index, number).is_none() {
            return;
        }
        let end = self.judge(index, end);
        let Some(mut r) = self.run.running.remove(&index) else {
            return;
        };
        let end = agent_verdict(end, r.failure.as_ref());
        let a = &mut r.attempt;
        // The time it really ended when that is known and earlier (it ended while no
        // orchd ran), never before it started.
        a.ended_ms = Some(
            end.ended_ms
                .filter(|t| *t < now)
                .map_or(now, |t| t.max(a.started_ms)),
        );
        a.outcome = Some(end.outcome);
        a.exit_code = end.exit_code;
        a.signal = end.signal;
        a.message = end.message.clone();
        a.peak_rss_bytes = a.peak_rss_bytes.max(end.peak_rss_bytes);
        a.cpu_ms = a.cpu_ms.max(end.cpu_ms);
        let step_id = a.step_id.clone();
        self.d.attempts.push(r.attempt);
        // The reset the provider named, or a wait from now when it named none.
        let until = r.rate_limited_until.or_else(|| {
            r.rate_limited_for
                .map(|ms| now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
        });
        let rate_limit = until.and_then(|until_ms| RateLimit::at_end(until_ms, now));
        let Some(step) = self.run.steps.get_mut(index as usize) else {
            return;
        };
        if counts_against_retries(end.outcome, step, rate_limit.is_some()) {
            step.counted_attempts += 1;
        }
        self.d.steps.insert(index);
        let next = next_after_end(
            &end,
            step,
            self.run.cancelling,
            self.run.exhausted.as_deref(),
            rate_limit,
            r.failure.as_ref().map(|f| f.0),
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
            Next::Succeeded => self.succeeded(index),
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
                self.backoff(index, number, &step_id, delay_ms, message)
            }
            Next::RateLimitWait { delay_ms } => {
                if let Some(step) = self.run.steps.get_mut(index as usize) {
                    step.rate_limit_waits += 1;
                }
                let message = "rate limited by the provider; waiting for the reset".to_string();
                self.backoff(index, number, &step_id, delay_ms, message);
            }
            Next::FallBack(why) => {
                let Some(step) = self.run.steps.get_mut(index as usize) else {
                    return;
                };
                step.agent_index += 1;
                step.counted_attempts = 0;
                step.rate_limit_waits = 0;
                // Another agent: its own session, not the last one's.
                step.session = None;
                step.session_usage = Usage::default();
                let message = format!("{why}; falling back to agent `{}`", step.current_agent());
                self.hold_or_queue(index, message);
            }
        }
    }

    /// Puts the step in `backoff` for `delay_ms`, with a timer for the next attempt.
    fn backoff(&mut self, index: u32, number: u32, step_id: &str, delay_ms: u64, message: String) {
        let due = self
            .ctx
            .now
            .saturating_add(delay_ms.min(i64::MAX as u64) as i64);
        self.set_step(index, StepState::Backoff, message);
        if let Some(step) = self.run.steps.get_mut(index as usize) {
            step.next_attempt_ms = Some(due);
        }
        self.emit(
            step_id,
            number,
            EventKind::RetryScheduled {
                delay_ms,
                due_at_ms: due,
            },
        );
        self.effect(Effect::Timer { step: index, due });
    }

    pub(super) fn recover(&mut self, gone: Vec<Attempt>, kept: Vec<Attempt>) {
        for a in kept {
            let index = a.step_index;
            self.run.running.insert(
                index,
                Running {
                    attempt: a,
                    rate_limited_until: None,
                    rate_limited_for: None,
                    failure: None,
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

/// What the agent said overrides what its exit status suggests: an error result that
/// exits 0 is a failure, and a failure carries the agent's own words.
fn agent_verdict(mut end: End, failure: Option<&(FailureClass, String)>) -> End {
    let Some((_, said)) = failure else {
        return end;
    };
    if end.outcome == Outcome::Success {
        end.outcome = Outcome::ExitFailure;
        end.message = format!("the agent reported an error although it exited 0: {said}");
    } else if !matches!(end.outcome, Outcome::Cancelled | Outcome::Interrupted) {
        end.message = if end.message.is_empty() {
            said.clone()
        } else {
            format!("{}; the agent said: {said}", end.message)
        };
    }
    end
}
