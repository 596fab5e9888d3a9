//! Scheduling: the ready queue (priority, then oldest objective, then plan order), the
//! backoff timers, and giving free slots (`max_parallel`) to ready steps. The queue is
//! plain data; starting an attempt is an input to the core.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::model::{Millis, now_ms};

use super::machine::Input;
use super::{After, Engine, attempt};

/// `(priority high first, objective id oldest first, step index)`.
type ReadyKey = (Reverse<i32>, String, u32);

/// Ready steps and backoff timers of every live objective.
#[derive(Debug, Default)]
pub struct Queue {
    ready: BTreeSet<ReadyKey>,
    timers: BTreeSet<(Millis, String, u32)>,
}

impl Queue {
    pub fn push(&mut self, priority: i32, id: &str, step: u32) {
        self.ready.insert((Reverse(priority), id.to_string(), step));
    }

    pub fn timer(&mut self, due: Millis, id: &str, step: u32) {
        self.timers.insert((due, id.to_string(), step));
    }

    /// Drops the objective's queued steps, and its timers when `timers`.
    pub fn remove(&mut self, id: &str, timers: bool) {
        self.ready.retain(|(_, o, _)| o != id);
        if timers {
            self.timers.retain(|(_, o, _)| o != id);
        }
    }

    pub fn pop_ready(&mut self) -> Option<(String, u32)> {
        self.ready.pop_first().map(|(_, id, step)| (id, step))
    }

    /// When the first timer is due.
    pub fn next_timer(&self) -> Option<Millis> {
        self.timers.first().map(|(t, _, _)| *t)
    }

    /// Takes the timers due at `now`.
    pub fn due(&mut self, now: Millis) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        while self.timers.first().is_some_and(|(due, _, _)| *due <= now) {
            if let Some((_, id, step)) = self.timers.pop_first() {
                out.push((id, step));
            }
        }
        out
    }
}

impl Engine {
    pub(super) fn fire_timers(&mut self) {
        for (id, step) in self.queue.due(now_ms()) {
            if let Err(e) = self.input(&id, Input::TimerFired { step }) {
                tracing::error!(objective = %id, step, error = %e, "timer refused");
            }
        }
    }

    /// Gives free slots to ready steps, highest priority first.
    pub(super) fn schedule(&mut self) {
        if self.shutting_down {
            return;
        }
        let max = self.cfg.max_parallel() as usize;
        while self.running < max {
            let Some((id, step)) = self.queue.pop_ready() else {
                break;
            };
            // No new attempt under an exhausted budget.
            if let Some(why) = self.budget_block(&id) {
                self.exhaust(&id, why);
                continue;
            }
            self.start_attempt(&id, step);
        }
    }

    fn start_attempt(&mut self, id: &str, index: u32) {
        let Some(step) = self
            .live
            .get(id)
            .and_then(|l| l.run.steps.get(index as usize))
        else {
            return;
        };
        let (agent, command) = match attempt::command(&self.cfg, step, id) {
            Ok((agent, argv, _)) => (agent, argv),
            // Recorded as an attempt that could not start (see `spawn_after`).
            Err(_) => (step.current_agent().to_string(), Vec::new()),
        };
        let input = Input::Start {
            step: index,
            agent,
            command,
        };
        if let Err(e) = self.input(id, input) {
            tracing::debug!(objective = %id, step = index, error = %e, "not started");
        }
    }

    /// Queues the start of an attempt the core opened, once its record is durable.
    pub(super) fn spawn_after(&mut self, id: &str, step: u32, number: u32) {
        let Some(live) = self.live.get(id) else {
            return;
        };
        let Some(s) = live.run.steps.get(step as usize) else {
            return;
        };
        let after = match attempt::command(&self.cfg, s, id) {
            Ok((_, argv, format)) => After::Spawn(Box::new(attempt::run_spec(
                &self.cfg,
                &self.logs_dir,
                &live.run.obj,
                s,
                number,
                argv,
                format,
            ))),
            Err(why) => After::SpawnError(
                crate::runner::AttemptKey {
                    objective_id: id.to_string(),
                    step_index: step,
                    number,
                },
                why,
            ),
        };
        self.turn.after.push(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_steps_go_by_priority_then_age_then_plan_order() {
        let mut q = Queue::default();
        q.push(0, "01B", 0);
        q.push(5, "01C", 1);
        q.push(0, "01A", 2);
        q.push(0, "01A", 1);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_ready()).collect();
        assert_eq!(
            order,
            [
                ("01C".into(), 1),
                ("01A".into(), 1),
                ("01A".into(), 2),
                ("01B".into(), 0)
            ]
        );
    }

    #[test]
    fn timers_fire_in_due_order_and_only_when_due() {
        let mut q = Queue::default();
        q.timer(30, "A", 0);
        q.timer(10, "B", 1);
        assert_eq!(q.next_timer(), Some(10));
        assert_eq!(q.due(5), vec![]);
        assert_eq!(q.due(30), vec![("B".to_string(), 1), ("A".to_string(), 0)]);
        assert_eq!(q.next_timer(), None);
    }

    #[test]
    fn removing_an_objective_keeps_its_timers_unless_asked() {
        let mut q = Queue::default();
        q.push(0, "A", 0);
        q.timer(10, "A", 1);
        q.remove("A", false);
        assert_eq!(q.pop_ready(), None);
        assert_eq!(q.next_timer(), Some(10));
        q.remove("A", true);
        assert_eq!(q.next_timer(), None);
    }
}
