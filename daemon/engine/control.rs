//! API commands: submit, cancel, pause, resume, approve, retry, and the daemon-level
//! ones. Each control call finds the objective (live, or ended in the store), checks
//! the caller, and hands the rest to the core, whose refusal is the API's answer.
//! Replies go out once the turn that made them true is durable.

use crate::model::{ObjState, Objective, ParentRef, Usage, now_ms};

use super::machine::{self, Input, Run};
use super::{
    Caller, Command, Engine, EngineError, EngineStatus, Live, NewObjective, ParentClaim, Submitted,
};

impl Engine {
    pub(super) fn on_command(&mut self, c: Command) {
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
                    r => self.after_reply(reply, r),
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(EngineStatus {
                    running_attempts: self.running as u32,
                    max_parallel: self.cfg.max_parallel(),
                    last_seq: self.next_seq - 1,
                    host_held: self.host.held.clone(),
                });
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats.clone());
            }
            Command::AgentViews { reply } => {
                let _ = reply.send(self.agent_views());
            }
            Command::SwitchAgent {
                name,
                on,
                for_ms,
                reason,
                caller,
                reply,
            } => {
                let r = if on {
                    self.enable_agent(&name, caller)
                } else {
                    self.disable_agent(&name, for_ms, reason, caller)
                };
                self.after_reply(reply, r);
            }
            Command::RouteDryRun { routes, uid, reply } => {
                let out = routes.iter().map(|r| self.route_dry_run(r, uid)).collect();
                let _ = reply.send(out);
            }
            Command::Ping { reply } => {
                let _ = reply.send(());
            }
            Command::Cancel { id, caller, reply } => {
                match self.control(&id, caller, Input::Cancel { by: caller.uid }) {
                    Ok(()) => match self.live.get_mut(&id) {
                        // Answered once every tree is gone and the objective ended.
                        Some(live) => live.waiters.push(reply),
                        None => self.after_reply(reply, Ok(())),
                    },
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Pause { id, caller, reply } => {
                let r = self.control(&id, caller, Input::Pause { by: caller.uid });
                self.after_reply(reply, r);
            }
            Command::Resume { id, caller, reply } => {
                let r = self.control(&id, caller, Input::Resume { by: caller.uid });
                self.after_reply(reply, r);
            }
            Command::Approve {
                id,
                step,
                approve,
                reason,
                caller,
                reply,
            } => {
                let input = Input::Approve {
                    step: step.clone(),
                    approve,
                    reason,
                    by: caller.uid,
                };
                let r = self.control(&id, caller, input);
                if r.is_ok() {
                    tracing::info!(objective = %id, step, uid = caller.uid, approved = approve, "approval answered");
                }
                self.after_reply(reply, r);
            }
            Command::Retry {
                id,
                step,
                fresh,
                caller,
                reply,
            } => {
                if let Some(why) = self.disk_refusal() {
                    let _ = reply.send(Err(EngineError::ResourceExhausted(why)));
                    return;
                }
                let input = Input::Retry {
                    step,
                    fresh,
                    by: caller.uid,
                };
                let r = self.control(&id, caller, input);
                self.after_reply(reply, r);
            }
            Command::Remove { id, caller, reply } => {
                let r = self.remove(&id, caller).map(|_| ());
                self.after_reply(reply, r);
            }
            Command::Prune {
                filter,
                caller,
                reply,
            } => {
                let r = self.prune(caller, filter);
                self.after_reply(reply, r);
            }
            Command::LogBytes(n) => {
                self.log_bytes += n;
                self.enforce_log_cap();
            }
            Command::Audit(entry) => {
                let seq = self.store.next_audit_seq();
                self.turn.writes.audit(seq, &entry);
            }
            Command::Reload { cfg, reply } => {
                tracing::info!("config reloaded");
                self.disk.set_min_free(cfg.store.min_free.0);
                self.cfg = cfg;
                // Users may have been renamed since; names are looked up again.
                self.user_names.clear();
                let _ = reply.send(());
            }
        }
    }

    /// A control call on objective `id`: the live one, or the ended one from the store
    /// (only `retry` brings an ended objective back to life).
    fn control(&mut self, id: &str, caller: Caller, input: Input) -> Result<(), EngineError> {
        let action = input.action();
        if let Some(live) = self.live.get(id) {
            machine::authorize(caller.uid, self.own_uid, live.run.obj.owner_uid, action, id)?;
            tracing::info!(objective = %id, uid = caller.uid, action, "control");
            return Ok(self.input(id, input)?);
        }
        let obj = self.stored_objective(id)?;
        machine::authorize(caller.uid, self.own_uid, obj.owner_uid, action, id)?;
        let stored = obj.state;
        let retry = matches!(input, Input::Retry { .. });
        let mut run = Run::new(obj, self.store.steps(id)?);
        let d = machine::step(&mut run, input, self.ctx())?;
        if !retry {
            // Every objective that has not ended is live (recovery loads them all).
            tracing::error!(objective = %id, state = stored.word(), "an objective that has not ended is not loaded");
            return Err(EngineError::FailedPrecondition(format!(
                "objective {id} is {} but not loaded; restart orchd",
                stored.word()
            )));
        }
        tracing::info!(objective = %id, uid = caller.uid, action, "control");
        self.live
            .insert(id.to_string(), Live::new(run, Some(stored)));
        self.apply(id, d);
        Ok(())
    }

    fn submit(&mut self, new: NewObjective) -> Result<Submitted, EngineError> {
        if !new.request_id.is_empty()
            && let Some(id) = self
                .store
                .objective_for_request(new.caller.uid, &new.request_id)?
        {
            return Ok(Submitted { id, existing: true });
        }
        if let Some(why) = self.disk_refusal() {
            tracing::warn!(uid = new.caller.uid, reason = %why, "submit refused");
            return Err(EngineError::ResourceExhausted(why));
        }
        if let Some(why) = self.submit_block(new.caller.uid) {
            tracing::warn!(uid = new.caller.uid, reason = %why, "submit refused");
            return Err(EngineError::ResourceExhausted(why));
        }
        let parent = match &new.parent_claim {
            Some(claim) => Some(self.admit_child(claim, new.caller)?),
            None => None,
        };
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
            parent: parent.clone(),
            children: Vec::new(),
            sub_usage: Usage::default(),
            planner: new.planner.map(Box::new),
        };
        if !new.request_id.is_empty() {
            self.turn
                .writes
                .request_id(new.caller.uid, &new.request_id, &id);
        }
        let (run, d) = machine::submit(obj, new.steps, self.ctx());
        self.live.insert(id.clone(), Live::new(run, None));
        self.apply(&id, d);
        if let Some(p) = &parent {
            tracing::info!(objective = %id, parent = %p.objective_id, step = %p.step_id, depth = p.depth, "sub-objective submitted");
            if let Err(e) = self.input(&p.objective_id, Input::Adopt { child: id.clone() }) {
                tracing::error!(objective = %id, parent = %p.objective_id, error = %e, "a sub-objective was not recorded on its parent");
            }
        } else {
            tracing::info!(objective = %id, "objective submitted");
        }
        Ok(Submitted {
            id,
            existing: false,
        })
    }

    /// Checks a submit's claim to come from a running attempt: the attempt runs, the
    /// nesting limit allows another level (the pure rules, `machine::admit_child`), the
    /// caller may act on the parent, and the calling process really is in the attempt's
    /// tree (its cgroup leaf, or a descendant of its process), not just carrying its
    /// environment.
    fn admit_child(&self, claim: &ParentClaim, caller: Caller) -> Result<ParentRef, EngineError> {
        let pid = &claim.objective_id;
        let Some(live) = self.live.get(pid) else {
            return Err(EngineError::FailedPrecondition(format!(
                "sub-objective refused: objective {pid} (named by ORCH_OBJECTIVE_ID) is not running"
            )));
        };
        let parent = machine::admit_child(
            &live.run,
            &claim.step_id,
            claim.attempt,
            self.cfg.max_sub_objective_depth,
        )?;
        machine::authorize(
            caller.uid,
            self.own_uid,
            live.run.obj.owner_uid,
            "submit a sub-objective of",
            pid,
        )?;
        let attempt = live
            .run
            .steps
            .iter()
            .find(|s| s.plan.id == claim.step_id)
            .and_then(|s| live.run.running.get(&s.index))
            .map(|r| &r.attempt);
        let in_tree = attempt.is_some_and(|a| {
            crate::sys::in_attempt_tree(
                caller.pid.max(0) as u32,
                a.pid.unwrap_or(0),
                a.pid_start_ticks,
                a.cgroup.as_deref().map(std::path::Path::new),
            )
        });
        if !in_tree {
            tracing::warn!(objective = %pid, step = %claim.step_id, attempt = claim.attempt, caller_pid = caller.pid, "a submit claimed an attempt it is not part of");
            return Err(EngineError::PermissionDenied(format!(
                "sub-objective refused: the caller (pid {}) is not a process of attempt {} of step `{}` \
                 of objective {pid}, which its ORCH_OBJECTIVE_ID, ORCH_STEP_ID and ORCH_ATTEMPT name \
                 (unset them to submit a top-level objective)",
                caller.pid, claim.attempt, claim.step_id
            )));
        }
        Ok(parent)
    }

    /// A sub-objective used `delta`: every live ancestor counts it against its own
    /// budgets, which may run out (and then stop it and its sub-objectives).
    pub(super) fn count_for_ancestors(&mut self, id: &str, delta: &crate::model::Usage) {
        let mut at = self.live.get(id).and_then(|l| l.run.obj.parent.clone());
        while let Some(p) = at {
            let ancestor = p.objective_id;
            if !self.live.contains_key(&ancestor) {
                break;
            }
            if self
                .input(&ancestor, Input::ChildUsage { delta: *delta })
                .is_ok()
            {
                self.check_budgets(&ancestor);
            }
            at = self
                .live
                .get(&ancestor)
                .and_then(|l| l.run.obj.parent.clone());
        }
    }
}
