//! Facts about attempts, from executors: a started process, resource samples, agent
//! protocol lines (also those a shim journaled, each read once), branches, an end. Each
//! becomes an input to its objective's core.

use super::machine::Input;
use super::{After, Engine};
use crate::runner::{AgentLine, AttemptEnd, Fact};

impl Engine {
    /// An input about a running attempt; a refusal there is a bug, logged, not fatal.
    pub(super) fn attempt_input(&mut self, id: &str, input: Input) {
        if let Err(e) = self.input(id, input) {
            tracing::error!(objective = %id, error = %e, "the engine refused a fact");
        }
    }

    pub(super) fn on_fact(&mut self, f: Fact) {
        match f {
            Fact::Usage {
                key,
                peak_rss_bytes,
                cpu_ms,
            } => self.attempt_input(
                &key.objective_id,
                Input::Sample {
                    step: key.step_index,
                    attempt: key.number,
                    peak_rss_bytes,
                    cpu_ms,
                },
            ),
            Fact::Started {
                key,
                pid,
                start_ticks,
                cgroup,
                job_id,
            } => self.attempt_input(
                &key.objective_id,
                Input::Started {
                    step: key.step_index,
                    attempt: key.number,
                    pid,
                    start_ticks,
                    cgroup,
                    job_id,
                },
            ),
            Fact::Line { key, line } => {
                let (step, attempt) = (key.step_index, key.number);
                let input = match line {
                    AgentLine::Checkpoint(json) => Input::Checkpoint {
                        step,
                        attempt,
                        json,
                    },
                    AgentLine::Progress { percent, message } => Input::Progress {
                        step,
                        attempt,
                        percent,
                        message,
                    },
                    AgentLine::Usage {
                        tokens,
                        cost_usd,
                        model,
                    } => {
                        let priced = self.priced(&key.objective_id, step, tokens, cost_usd, model);
                        let Some((delta, model)) = priced else {
                            return;
                        };
                        self.attempt_input(
                            &key.objective_id,
                            Input::Usage {
                                step,
                                attempt,
                                delta,
                                model,
                            },
                        );
                        self.count_usage(&key.objective_id, &delta);
                        self.check_budgets(&key.objective_id);
                        self.count_for_ancestors(&key.objective_id, &delta);
                        return;
                    }
                    AgentLine::RateLimited { until_ms } => {
                        tracing::warn!(objective = %key.objective_id, step, attempt, until = ?until_ms, "the agent's provider rate-limited it");
                        let agent = self
                            .live
                            .get(&key.objective_id)
                            .and_then(|l| l.run.running.get(&step))
                            .map(|r| r.attempt.agent.clone())
                            .unwrap_or_default();
                        self.note_limit(&agent, until_ms);
                        // No reset given: the configured wait, from the attempt's end.
                        Input::RateLimited {
                            step,
                            attempt,
                            until_ms,
                            wait_ms: self.cfg.rate_limit_wait.0,
                        }
                    }
                    AgentLine::Session(id) => Input::Session { step, attempt, id },
                    AgentLine::Failed { class, message } => {
                        tracing::warn!(objective = %key.objective_id, step, attempt, class = class.word(), %message, "the agent reported a failure");
                        Input::AgentFailed {
                            step,
                            attempt,
                            class,
                            message,
                        }
                    }
                    AgentLine::Plan(json) => Input::PlanPrinted {
                        step,
                        attempt,
                        json,
                    },
                    AgentLine::Verdict(verdict) => Input::Verdict {
                        step,
                        attempt,
                        verdict,
                    },
                    AgentLine::Malformed(problem) => {
                        tracing::warn!(objective = %key.objective_id, step, attempt, %problem, "malformed agent protocol line (kept in the log)");
                        return;
                    }
                };
                self.attempt_input(&key.objective_id, input);
            }
            Fact::Branch { key, branch } => self.attempt_input(
                &key.objective_id,
                Input::Branch {
                    step: key.step_index,
                    attempt: key.number,
                    branch,
                },
            ),
            Fact::Ended { key, end } => self.on_ended(key, end),
            Fact::Protocol { key, lines, upto } => self.on_protocol(key, lines, upto),
        }
    }

    /// Lines a shim's journal held up to `upto`: the offset is set on the running
    /// attempt first, so every write of it in this turn (the lines' own included) carries
    /// it, and written once more after them.
    fn on_protocol(&mut self, key: crate::runner::AttemptKey, lines: Vec<AgentLine>, upto: u64) {
        match self.running_attempt(&key) {
            Some(a) if a.protocol_offset < upto => a.protocol_offset = upto,
            // Already read (a duplicate after a re-attach), or no longer running.
            _ => return,
        }
        for line in lines {
            self.on_fact(Fact::Line {
                key: key.clone(),
                line,
            });
        }
        if let Some(a) = self.running_attempt(&key) {
            let a = a.clone();
            self.turn.writes.attempt(&a);
        }
    }

    fn running_attempt(
        &mut self,
        key: &crate::runner::AttemptKey,
    ) -> Option<&mut crate::model::Attempt> {
        self.live
            .get_mut(&key.objective_id)
            .and_then(|l| l.run.running.get_mut(&key.step_index))
            .filter(|r| r.attempt.number == key.number)
            .map(|r| &mut r.attempt)
    }

    fn on_ended(&mut self, key: crate::runner::AttemptKey, end: AttemptEnd) {
        let id = key.objective_id.clone();
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        live.handles.remove(&key.step_index);
        let step_id = live
            .run
            .running
            .get(&key.step_index)
            .map(|r| r.attempt.step_id.clone());
        let Some(step_id) = step_id else {
            return;
        };
        let AttemptEnd { end, exited_at } = end;
        let leftovers = self.executor.leftovers(&key);
        if !leftovers.is_empty() {
            self.turn
                .after
                .push(After::RemoveDirs(leftovers, Vec::new()));
        }
        tracing::info!(objective = %id, step = %step_id, attempt = key.number, outcome = end.outcome.word(), exit_code = ?end.exit_code, signal = ?end.signal, "attempt ended");
        self.turn
            .after
            .push(After::CountLog(crate::logfile::attempt_log(
                &self.logs_dir,
                &id,
                &step_id,
                key.number,
            )));
        if let Some(exited) = exited_at {
            // Measured once the end is durable: the per-attempt exit-to-recorded overhead.
            let (obj, n) = (id.clone(), key.number);
            self.turn.after.push(After::Reply(Box::new(move || {
                tracing::debug!(objective = %obj, attempt = n, exit_to_recorded_us = exited.elapsed().as_micros() as u64, "attempt end recorded");
            })));
        }
        let input = self.end_input(&key, end);
        self.attempt_input(&id, input);
    }
}
