//! Scheduling: the ready queue, the backoff timers, and giving free slots
//! (`max_parallel`) to ready steps, shared fairly between users: the next slot goes to
//! the user with work waiting who runs the fewest attempts (below their own
//! `max_parallel`), ties to the one served least recently; priorities (then age, then
//! plan order) order a user's own work. The queue is plain data; starting an attempt is
//! an input to the core.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{Millis, now_ms};

use super::machine::{Input, host};
use super::{After, Engine, attempt};

/// How often the host is read again while it holds work back.
pub const HOST_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);
/// A reading younger than this is reused (turns come in bursts).
const HOST_READING_TTL: std::time::Duration = std::time::Duration::from_millis(500);

/// Host pressure, as the actor holds it: the last reading (taken only while work waits for
/// a slot and `[host]` sets a rule), why work is held back, and when to look again.
#[derive(Debug, Default)]
pub struct HostGate {
    reading: Option<(tokio::time::Instant, host::Reading)>,
    /// Why new attempts wait now; `None` when they do not.
    pub held: Option<String>,
    /// When to read the host again (only while held).
    pub recheck: Option<tokio::time::Instant>,
}

impl HostGate {
    /// Decides admission for the ready work now: reads the host (unless a fresh reading
    /// exists) and applies the rules; remembers the answer and sets the recheck timer.
    fn admit(&mut self, floors: &host::Floors) -> bool {
        if !floors.any() {
            self.clear();
            return true;
        }
        let now = tokio::time::Instant::now();
        let reading = match self.reading {
            Some((at, r)) if now.duration_since(at) < HOST_READING_TTL => r,
            _ => {
                let h = crate::sys::host_figures();
                let r = host::Reading {
                    available_memory: h.available_memory,
                    load_1m: h.load_1m,
                };
                self.reading = Some((now, r));
                r
            }
        };
        match host::hold(&reading, floors) {
            Some(why) => {
                if self.held.as_deref() != Some(why.as_str()) {
                    tracing::info!(reason = %why, "new attempts held back by host pressure");
                }
                self.held = Some(why);
                self.recheck = Some(now + HOST_RECHECK);
                false
            }
            None => {
                self.clear();
                true
            }
        }
    }

    fn clear(&mut self) {
        if self.held.take().is_some() {
            tracing::info!("host pressure eased: new attempts start again");
        }
        self.recheck = None;
    }
}

/// `(priority high first, objective id oldest first, step index)`.
type ReadyKey = (Reverse<i32>, String, u32);

/// Ready steps (per user) and backoff timers of every live objective.
#[derive(Debug, Default)]
pub struct Queue {
    ready: BTreeMap<u32, BTreeSet<ReadyKey>>,
    timers: BTreeSet<(Millis, String, u32)>,
    /// The turn each user was last given a slot in.
    served: HashMap<u32, u64>,
    turns: u64,
}

impl Queue {
    pub fn push(&mut self, uid: u32, priority: i32, id: &str, step: u32) {
        self.ready
            .entry(uid)
            .or_default()
            .insert((Reverse(priority), id.to_string(), step));
    }

    pub fn timer(&mut self, due: Millis, id: &str, step: u32) {
        self.timers.insert((due, id.to_string(), step));
    }

    /// Drops user `uid`'s queued steps of objective `id`, and its timers when `timers`.
    pub fn remove(&mut self, uid: u32, id: &str, timers: bool) {
        if let Some(q) = self.ready.get_mut(&uid) {
            q.retain(|(_, o, _)| o != id);
            if q.is_empty() {
                self.ready.remove(&uid);
            }
        }
        if timers {
            self.timers.retain(|(_, o, _)| o != id);
        }
    }

    /// The next step to give a slot to: from the user with work waiting who runs the
    /// fewest attempts (`running`) and is below their own cap (`cap`), ties to the user
    /// served least recently, then the lower uid; that user's best step.
    pub fn pick(
        &mut self,
        running: impl Fn(u32) -> usize,
        cap: impl Fn(u32) -> usize,
    ) -> Option<(String, u32)> {
        let uid = self
            .ready
            .keys()
            .copied()
            .filter(|u| running(*u) < cap(*u))
            .min_by_key(|u| (running(*u), self.served.get(u).copied().unwrap_or(0), *u))?;
        let q = self.ready.get_mut(&uid)?;
        let (_, id, step) = q.pop_first()?;
        if q.is_empty() {
            self.ready.remove(&uid);
        }
        self.turns += 1;
        self.served.insert(uid, self.turns);
        Some((id, step))
    }

    /// The users with steps waiting.
    pub fn users(&self) -> impl Iterator<Item = u32> + '_ {
        self.ready.keys().copied()
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
        self.expire_switches();
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
        if self.running < max && self.queue.users().next().is_some() {
            // No new attempt while the disk is below the reserve or the store cannot
            // write: the steps wait in the queue, and the disk is looked at again soon.
            if let Some(why) = self.disk_refusal() {
                if self.recheck_at.is_none() {
                    tracing::warn!(reason = %why, "new attempts wait for free space");
                    self.recheck_at = Some(tokio::time::Instant::now() + super::RECHECK_EVERY);
                }
                return;
            }
            let floors = host::Floors {
                min_available_memory: self.cfg.host.min_available_memory.map(|s| s.0),
                max_load: self.cfg.host.max_load,
            };
            if !self.host.admit(&floors) {
                return;
            }
        } else {
            // Nothing waits for a slot: nothing is held back.
            self.host.clear();
        }
        while self.running < max {
            let users: Vec<u32> = self.queue.users().collect();
            let caps: HashMap<u32, usize> = users
                .into_iter()
                .map(|uid| (uid, self.limits_of(uid).max_parallel as usize))
                .collect();
            let by_user = &self.running_by_user;
            let running = |uid: u32| by_user.get(&uid).copied().unwrap_or(0);
            let cap = |uid: u32| caps.get(&uid).copied().unwrap_or(0);
            let Some((id, step)) = self.queue.pick(running, cap) else {
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
        // A routed step first gets its agent (or waits, or fails).
        if !self.route_step(id, index) {
            return;
        }
        let Some(step) = self
            .live
            .get(id)
            .and_then(|l| l.run.steps.get(index as usize))
        else {
            return;
        };
        let (agent, command) = match attempt::command(&self.cfg, step, id, step.attempts + 1) {
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
        let after = match attempt::command(&self.cfg, s, id, number) {
            Ok((_, argv, format)) => {
                let mut spec = attempt::run_spec(
                    &self.cfg,
                    &self.logs_dir,
                    &live.run.obj,
                    s,
                    number,
                    argv,
                    format,
                );
                spec.workspace =
                    attempt::workspace(&self.cfg, &live.run.obj, &live.run.steps, s, number, &spec);
                spec.threads = Some(crate::runner::Threads(std::sync::Arc::new(
                    self.store.clone(),
                )));
                After::Spawn(Box::new(spec))
            }
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

    fn all(q: &mut Queue) -> Vec<(String, u32)> {
        std::iter::from_fn(|| q.pick(|_| 0, |_| usize::MAX)).collect()
    }

    #[test]
    fn a_users_steps_go_by_priority_then_age_then_plan_order() {
        let mut q = Queue::default();
        q.push(1, 0, "01B", 0);
        q.push(1, 5, "01C", 1);
        q.push(1, 0, "01A", 2);
        q.push(1, 0, "01A", 1);
        assert_eq!(
            all(&mut q),
            [
                ("01C".into(), 1),
                ("01A".into(), 1),
                ("01A".into(), 2),
                ("01B".into(), 0)
            ]
        );
    }

    #[test]
    fn the_user_running_least_gets_the_slot_whatever_the_priorities() {
        let mut q = Queue::default();
        q.push(1, i32::MAX, "A1", 0);
        q.push(1, i32::MAX, "A2", 0);
        q.push(2, 0, "B1", 0);
        let running = |uid: u32| if uid == 1 { 3 } else { 0 };
        assert_eq!(q.pick(running, |_| 10), Some(("B1".into(), 0)));
        assert_eq!(q.pick(running, |_| 10), Some(("A1".into(), 0)));
    }

    #[test]
    fn equals_take_turns() {
        let mut q = Queue::default();
        for i in 0..3 {
            q.push(1, 0, &format!("A{i}"), 0);
            q.push(2, 0, &format!("B{i}"), 0);
        }
        let order: Vec<String> = all(&mut q).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, ["A0", "B0", "A1", "B1", "A2", "B2"]);
    }

    #[test]
    fn a_user_at_their_cap_waits_while_others_run() {
        let mut q = Queue::default();
        q.push(1, 0, "A", 0);
        q.push(2, 0, "B", 0);
        let cap = |uid: u32| if uid == 1 { 1 } else { 5 };
        let running = |uid: u32| if uid == 1 { 1 } else { 4 };
        assert_eq!(q.pick(running, cap), Some(("B".into(), 0)));
        assert_eq!(q.pick(running, cap), None, "user 1 is at their cap");
        assert_eq!(q.pick(|_| 0, cap), Some(("A".into(), 0)));
    }

    #[test]
    fn the_host_is_not_read_without_a_rule_and_a_held_gate_rechecks() {
        let mut g = HostGate::default();
        assert!(g.admit(&host::Floors::default()));
        assert!(g.reading.is_none(), "read the host without a rule");
        // No machine has this much memory available: held, with a recheck timer.
        let floors = host::Floors {
            min_available_memory: Some(u64::MAX),
            max_load: None,
        };
        assert!(!g.admit(&floors));
        assert!(
            g.held
                .as_deref()
                .is_some_and(|h| h.contains("available memory"))
        );
        assert!(g.recheck.is_some());
        // Eased (the rule gone): admitted, no timer left running.
        assert!(g.admit(&host::Floors::default()));
        assert_eq!((g.held.clone(), g.recheck), (None, None));
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
        q.push(7, 0, "A", 0);
        q.timer(10, "A", 1);
        q.remove(7, "A", false);
        assert_eq!(all(&mut q), vec![]);
        assert_eq!(q.next_timer(), Some(10));
        q.remove(7, "A", true);
        assert_eq!(q.next_timer(), None);
    }
}
