//! Domain ↔ proto conversions for the API: records and events to `pb` messages, and a
//! submitted `pb::ObjectiveSpec` to the domain input that `plans` resolves.

use std::collections::HashSet;

use tonic::Status;

use orch_proto::v1 as pb;
use orch_proto::validate::{SpecError, validate_spec};

use super::store_status;
use crate::model::{
    Attempt, Budget, Event, EventKind, Limits, ObjState, Objective, OnFailure, Outcome,
    RetryPolicy, Step, StepPlan, StepState, Usage,
};
use crate::plans::{ObjectiveInput, RetryOverlay, StepDefaults, StepInput};
use crate::store::Store;

// ---------------------------------------------------------------- proto → domain

/// Checks a submitted spec as a message (against the agent profiles the daemon knows) and
/// turns it into the domain input `plans::resolve` takes.
pub fn objective_input(
    spec: &pb::ObjectiveSpec,
    agents: &HashSet<String>,
) -> Result<ObjectiveInput, SpecError> {
    validate_spec(spec, Some(agents))?;
    let defaults = spec.defaults.clone().unwrap_or_default();
    Ok(ObjectiveInput {
        name: spec.name.clone(),
        goal: spec.goal.clone(),
        priority: spec.priority,
        budget: Budget {
            max_cost_usd: spec.budget_usd,
            max_tokens: spec.max_tokens,
        },
        defaults: StepDefaults {
            timeout_ms: defaults.timeout_ms,
            idle_timeout_ms: defaults.idle_timeout_ms,
            retry: defaults.retry.as_ref().map(retry_overlay_from_pb),
            limits: defaults.limits.as_ref().map(limits_from_pb),
            executor: defaults.executor.clone(),
            workspace: defaults.workspace.clone(),
        },
        steps: spec.steps.iter().map(step_input_from_pb).collect(),
    })
}

fn step_input_from_pb(s: &pb::StepSpec) -> StepInput {
    StepInput {
        id: s.id.clone(),
        agent: s.agent.clone(),
        prompt: s.prompt.clone(),
        command: s.command.clone(),
        workdir: s.workdir.clone(),
        env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        needs: s.needs.clone(),
        timeout_ms: s.timeout_ms,
        idle_timeout_ms: s.idle_timeout_ms,
        retry: s.retry.as_ref().map(retry_overlay_from_pb),
        limits: s.limits.as_ref().map(limits_from_pb),
        requires_approval: s.requires_approval,
        fallback: s.fallback.clone(),
        fallback_on_rate_limit: s.fallback_on_rate_limit,
        executor: s.executor.clone(),
        route: super::route_convert::route_from_pb(s),
        workspace: s.workspace.clone(),
    }
}

/// Empty lists mean "inherit"; outcomes this build does not know are dropped.
fn retry_overlay_from_pb(r: &pb::RetryPolicy) -> RetryOverlay {
    RetryOverlay {
        max_attempts: r.max_attempts,
        initial_backoff_ms: r.initial_backoff_ms,
        max_backoff_ms: r.max_backoff_ms,
        multiplier: r.multiplier,
        jitter: r.jitter,
        retry_on: (!r.retry_on.is_empty()).then(|| {
            r.retry_on
                .iter()
                .filter_map(|o| pb::Outcome::try_from(*o).ok().and_then(outcome_from_pb))
                .collect()
        }),
        retry_exit_codes: (!r.retry_exit_codes.is_empty()).then(|| r.retry_exit_codes.clone()),
        max_rate_limit_waits: r.max_rate_limit_waits,
        // Checked by `validate_spec` before this runs.
        on_failure: r
            .on_failure
            .iter()
            .filter_map(|(c, a)| OnFailure::parse_entry(c, a).ok())
            .collect(),
    }
}

fn limits_from_pb(l: &pb::Limits) -> Limits {
    Limits {
        memory_bytes: l.memory_bytes,
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    }
}

// ---------------------------------------------------------------- domain → proto

pub fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    Some(orch_proto::ts_from_ms(ms))
}

pub fn usage_pb(u: &Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cost_usd: u.cost_usd,
        cache_read_tokens: u.cache_read_tokens,
        cache_write_tokens: u.cache_write_tokens,
    }
}

pub fn obj_state_pb(s: ObjState) -> pb::ObjectiveState {
    match s {
        ObjState::Pending => pb::ObjectiveState::Pending,
        ObjState::Running => pb::ObjectiveState::Running,
        ObjState::Paused => pb::ObjectiveState::Paused,
        ObjState::AwaitingApproval => pb::ObjectiveState::AwaitingApproval,
        ObjState::Succeeded => pb::ObjectiveState::Succeeded,
        ObjState::Failed => pb::ObjectiveState::Failed,
        ObjState::Cancelled => pb::ObjectiveState::Cancelled,
    }
}

pub fn obj_state_from_pb(s: pb::ObjectiveState) -> Option<ObjState> {
    ObjState::ALL.into_iter().find(|d| obj_state_pb(*d) == s)
}

/// An optional `state` filter of a request, refused naming the value when it is no
/// objective state.
pub fn state_filter(state: Option<i32>) -> Result<Option<ObjState>, Status> {
    state
        .map(|v| {
            pb::ObjectiveState::try_from(v)
                .ok()
                .and_then(obj_state_from_pb)
                .ok_or_else(|| {
                    Status::invalid_argument(format!("state: {v} is not an objective state"))
                })
        })
        .transpose()
}

pub fn step_state_pb(s: StepState) -> pb::StepState {
    match s {
        StepState::Waiting => pb::StepState::Waiting,
        StepState::Ready => pb::StepState::Ready,
        StepState::Running => pb::StepState::Running,
        StepState::Backoff => pb::StepState::Backoff,
        StepState::Paused => pb::StepState::Paused,
        StepState::AwaitingApproval => pb::StepState::AwaitingApproval,
        StepState::Succeeded => pb::StepState::Succeeded,
        StepState::Failed => pb::StepState::Failed,
        StepState::Cancelled => pb::StepState::Cancelled,
        StepState::Skipped => pb::StepState::Skipped,
    }
}

pub fn outcome_pb(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Success => pb::Outcome::Success,
        Outcome::ExitFailure => pb::Outcome::ExitFailure,
        Outcome::Signaled => pb::Outcome::Signaled,
        Outcome::Timeout => pb::Outcome::Timeout,
        Outcome::MemoryLimit => pb::Outcome::MemoryLimit,
        Outcome::CpuLimit => pb::Outcome::CpuLimit,
        Outcome::BudgetExceeded => pb::Outcome::BudgetExceeded,
        Outcome::Cancelled => pb::Outcome::Cancelled,
        Outcome::Interrupted => pb::Outcome::Interrupted,
        Outcome::SpawnError => pb::Outcome::SpawnError,
    }
}

fn outcome_from_pb(o: pb::Outcome) -> Option<Outcome> {
    [
        Outcome::Success,
        Outcome::ExitFailure,
        Outcome::Signaled,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::CpuLimit,
        Outcome::BudgetExceeded,
        Outcome::Cancelled,
        Outcome::Interrupted,
        Outcome::SpawnError,
    ]
    .into_iter()
    .find(|d| outcome_pb(*d) == o)
}

fn retry_pb(r: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_attempts: Some(r.max_attempts),
        initial_backoff_ms: Some(r.initial_backoff_ms),
        max_backoff_ms: Some(r.max_backoff_ms),
        multiplier: Some(r.multiplier),
        jitter: Some(r.jitter),
        retry_on: r.retry_on.iter().map(|o| outcome_pb(*o) as i32).collect(),
        retry_exit_codes: r.retry_exit_codes.clone(),
        max_rate_limit_waits: Some(r.max_rate_limit_waits),
        on_failure: r
            .on_failure
            .entries()
            .into_iter()
            .map(|(c, a)| (c.to_string(), a.to_string()))
            .collect(),
    }
}

fn limits_pb(l: &Limits) -> pb::Limits {
    pb::Limits {
        memory_bytes: l.memory_bytes,
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    }
}

fn attempt_pb(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        number: a.number,
        pid: a.pid,
        started_at: ts(a.started_ms),
        ended_at: a.ended_ms.and_then(ts),
        agent: a.agent.clone(),
        outcome: a.outcome.map_or(pb::Outcome::Unspecified, outcome_pb) as i32,
        exit_code: a.exit_code,
        signal: a.signal,
        peak_rss_bytes: a.peak_rss_bytes,
        cpu_ms: a.cpu_ms,
        usage: Some(usage_pb(&a.usage)),
        message: a.message.clone(),
        command: a.command.clone(),
        session_id: a.session.clone().unwrap_or_default(),
        job_id: a.job_id.clone().unwrap_or_default(),
        route_reason: a.route_reason.clone(),
    }
}

fn step_pb(s: &Step, attempts: &[Attempt]) -> pb::Step {
    pb::Step {
        id: s.plan.id.clone(),
        state: step_state_pb(s.state) as i32,
        agent: s.plan.agent.clone(),
        command: s.plan.command.clone(),
        needs: s.plan.needs.clone(),
        checkpoint_json: s.checkpoint.clone(),
        attempts: attempts
            .iter()
            .filter(|a| a.step_index == s.index)
            .map(attempt_pb)
            .collect(),
        next_attempt_at: s.next_attempt_ms.and_then(ts),
        progress: Some(pb::Progress {
            percent: s.progress.percent,
            message: s.progress.message.clone(),
        }),
        usage: Some(usage_pb(&s.usage)),
        message: s.message.clone(),
        prompt: s.plan.prompt.clone(),
        workdir: s.plan.workdir.clone(),
        requires_approval: s.plan.requires_approval,
        fallback: s.plan.fallback.clone(),
        route: s.plan.route.as_ref().map(super::route_convert::route_pb),
        workspace: s.plan.workspace.word().to_string(),
        branch: s
            .branch
            .as_ref()
            .map(|b| b.name.clone())
            .unwrap_or_default(),
        branch_base: s
            .branch
            .as_ref()
            .map(|b| b.base.clone())
            .unwrap_or_default(),
        branch_head: s
            .branch
            .as_ref()
            .map(|b| b.head.clone())
            .unwrap_or_default(),
        repo: s
            .plan
            .repo
            .as_ref()
            .map(|r| r.root.clone())
            .unwrap_or_default(),
        role: if s.plan.round == 0 {
            String::new()
        } else {
            s.plan.role.word().to_string()
        },
        round: s.plan.round,
    }
}

/// A goal-only objective's planner and rounds.
fn planner_pb(p: &crate::model::Planner) -> pb::PlannerStatus {
    pb::PlannerStatus {
        agent: p.agent.clone(),
        verifier: p.verifier.clone(),
        verify_command: p.verify_command.clone(),
        max_rounds: p.max_rounds(),
        approve_plan: p.approve_plan,
        rounds: p
            .rounds
            .iter()
            .map(|r| pb::RoundStatus {
                number: r.number,
                phase: r.phase.word().to_string(),
                plan: r.plan.clone(),
                steps: r.steps.clone(),
                plan_errors: r.plan_errors.clone(),
                pass: r.verdict.as_ref().map(|v| v.pass),
                findings: r.findings.clone(),
            })
            .collect(),
    }
}

fn budget_pb(b: &Budget) -> pb::Budget {
    pb::Budget {
        max_cost_usd: b.max_cost_usd,
        max_tokens: b.max_tokens,
    }
}

fn objective_pb(o: &Objective, steps: &[Step], attempts: &[Attempt]) -> pb::Objective {
    pb::Objective {
        id: o.id.clone(),
        name: o.name.clone(),
        goal: o.goal.clone(),
        state: obj_state_pb(o.state) as i32,
        created_at: ts(o.created_ms),
        updated_at: ts(o.updated_ms),
        usage: Some(usage_pb(&o.usage)),
        budget: Some(budget_pb(&o.budget)),
        steps: steps.iter().map(|s| step_pb(s, attempts)).collect(),
        priority: o.priority,
        message: o.message.clone(),
        owner_uid: o.owner_uid,
        request_id: o.request_id.clone(),
        parent_id: o
            .parent
            .as_ref()
            .map_or(String::new(), |p| p.objective_id.clone()),
        parent_step_id: o
            .parent
            .as_ref()
            .map_or(String::new(), |p| p.step_id.clone()),
        parent_attempt: o.parent.as_ref().map_or(0, |p| p.attempt),
        planner: o.planner.as_deref().map(planner_pb),
        depth: o.parent.as_ref().map_or(0, |p| p.depth),
        children: o.children.clone(),
        sub_usage: Some(usage_pb(&o.sub_usage)),
    }
}

pub fn summary_pb(o: &Objective, steps: &[Step]) -> pb::ObjectiveSummary {
    pb::ObjectiveSummary {
        id: o.id.clone(),
        name: o.name.clone(),
        state: obj_state_pb(o.state) as i32,
        created_at: ts(o.created_ms),
        updated_at: ts(o.updated_ms),
        steps_total: o.step_count,
        steps_succeeded: steps
            .iter()
            .filter(|s| s.state == StepState::Succeeded)
            .count() as u32,
        usage: Some(usage_pb(&o.usage)),
        parent_id: o
            .parent
            .as_ref()
            .map_or(String::new(), |p| p.objective_id.clone()),
    }
}

pub fn resolved_plan_pb(
    name: &str,
    steps: &[StepPlan],
    groups: Vec<Vec<String>>,
) -> pb::ResolvedPlan {
    pb::ResolvedPlan {
        name: name.to_string(),
        steps: steps
            .iter()
            .map(|s| pb::ResolvedStep {
                id: s.id.clone(),
                command: s.command.clone(),
                agent: s.agent.clone(),
                workdir: s.workdir.clone(),
                needs: s.needs.clone(),
                timeout_ms: s.timeout_ms,
                idle_timeout_ms: s.idle_timeout_ms,
                retry: Some(retry_pb(&s.retry)),
                limits: Some(limits_pb(&s.limits)),
                requires_approval: s.requires_approval,
                fallback: s.fallback.clone(),
                route: s.route.as_ref().map(super::route_convert::route_pb),
                routed: None,
                approval_reason: s.approval_reason.clone(),
                workspace: s.workspace.word().to_string(),
                repo: s.repo.as_ref().map(|r| r.root.clone()).unwrap_or_default(),
                base: s.repo.as_ref().map(|r| r.base.clone()).unwrap_or_default(),
            })
            .collect(),
        groups: groups
            .into_iter()
            .map(|step_ids| pb::ParallelGroup { step_ids })
            .collect(),
    }
}

/// Reads an objective with its steps and attempts.
pub fn read_objective(store: &Store, id: &str) -> Result<pb::Objective, Status> {
    let obj = store
        .objective(id)
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no objective with id `{id}`")))?;
    let steps = store.steps(id).map_err(store_status)?;
    let attempts = store.attempts(id).map_err(store_status)?;
    Ok(objective_pb(&obj, &steps, &attempts))
}

pub fn event_pb(e: &Event) -> pb::Event {
    use pb::event::Payload as P;
    let payload = match &e.kind {
        EventKind::ObjectiveSubmitted { name, steps } => {
            P::ObjectiveSubmitted(pb::ObjectiveSubmitted {
                name: name.clone(),
                steps: *steps,
            })
        }
        EventKind::ObjectiveState { state, message } => {
            P::ObjectiveState(pb::ObjectiveStateChanged {
                state: obj_state_pb(*state) as i32,
                message: message.clone(),
            })
        }
        EventKind::StepState { state, message } => P::StepState(pb::StepStateChanged {
            state: step_state_pb(*state) as i32,
            message: message.clone(),
        }),
        EventKind::AttemptStarted { pid, agent } => P::AttemptStarted(pb::AttemptStarted {
            pid: *pid,
            agent: agent.clone(),
        }),
        EventKind::AttemptEnded {
            outcome,
            exit_code,
            signal,
            message,
        } => P::AttemptEnded(pb::AttemptEnded {
            outcome: outcome_pb(*outcome) as i32,
            exit_code: *exit_code,
            signal: *signal,
            message: message.clone(),
        }),
        EventKind::RetryScheduled {
            delay_ms,
            due_at_ms,
        } => P::RetryScheduled(pb::RetryScheduled {
            delay_ms: *delay_ms,
            due_at: ts(*due_at_ms),
        }),
        EventKind::Checkpoint { json } => {
            P::Checkpoint(pb::CheckpointRecorded { json: json.clone() })
        }
        EventKind::Usage {
            report,
            step_total,
            objective_total,
            model,
        } => P::Usage(pb::UsageRecorded {
            report: Some(usage_pb(report)),
            step_total: Some(usage_pb(step_total)),
            objective_total: Some(usage_pb(objective_total)),
            model: model.clone(),
        }),
        EventKind::Progress { percent, message } => P::Progress(pb::ProgressReported {
            percent: *percent,
            message: message.clone(),
        }),
        EventKind::BudgetAlert {
            percent,
            budget,
            used,
            limit,
        } => P::BudgetAlert(pb::BudgetAlert {
            percent: *percent,
            budget: budget.clone(),
            used: *used,
            limit: *limit,
        }),
        EventKind::ApprovalRequested => P::ApprovalRequested(pb::ApprovalRequested {
            step_id: e.step_id.clone(),
        }),
        EventKind::ApprovalAnswered {
            approved,
            by_uid,
            reason,
        } => P::ApprovalAnswered(pb::ApprovalAnswered {
            approved: *approved,
            by_uid: *by_uid,
            reason: reason.clone(),
        }),
        EventKind::ObjectiveRemoved { by_uid, state } => {
            P::ObjectiveRemoved(pb::ObjectiveRemoved {
                by_uid: *by_uid,
                state: obj_state_pb(*state) as i32,
            })
        }
        EventKind::AgentRouted { .. }
        | EventKind::AgentDisabled { .. }
        | EventKind::AgentEnabled { .. } => super::route_convert::event_payload(&e.kind),
        EventKind::RoundStarted { round, findings } => P::RoundStarted(pb::RoundStarted {
            round: *round,
            findings: findings.clone(),
        }),
        EventKind::PlanProposed {
            round,
            valid,
            steps,
            errors,
            plan,
        } => P::PlanProposed(pb::PlanProposed {
            round: *round,
            valid: *valid,
            steps: *steps,
            errors: errors.clone(),
            plan: plan.clone(),
        }),
        EventKind::PlanAccepted {
            round,
            steps,
            by_uid,
        } => P::PlanAccepted(pb::PlanAccepted {
            round: *round,
            steps: steps.clone(),
            by_uid: *by_uid,
        }),
        EventKind::Verdict {
            round,
            pass,
            findings,
        } => P::Verdict(pb::VerdictGiven {
            round: *round,
            pass: *pass,
            findings: findings.clone(),
        }),
    };
    pb::Event {
        seq: e.seq,
        time: ts(e.time_ms),
        objective_id: e.objective_id.clone(),
        step_id: e.step_id.clone(),
        attempt: e.attempt,
        kind: e.kind.word().to_string(),
        payload: Some(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> HashSet<String> {
        ["shell".to_string()].into()
    }

    fn spec(steps: Vec<pb::StepSpec>) -> pb::ObjectiveSpec {
        pb::ObjectiveSpec {
            name: "t".into(),
            steps,
            ..Default::default()
        }
    }

    #[test]
    fn a_spec_becomes_the_domain_input() {
        let mut s = spec(vec![pb::StepSpec {
            id: "a".into(),
            command: vec!["true".into()],
            env: [("K".to_string(), "v".to_string())].into(),
            retry: Some(pb::RetryPolicy {
                max_attempts: Some(2),
                retry_on: vec![pb::Outcome::Timeout as i32, 999],
                ..Default::default()
            }),
            limits: Some(pb::Limits {
                pids: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        s.budget_usd = Some(2.0);
        s.defaults = Some(pb::StepDefaults {
            timeout_ms: Some(9),
            ..Default::default()
        });
        let input = objective_input(&s, &agents()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(input.budget.max_cost_usd, Some(2.0));
        assert_eq!(input.defaults.timeout_ms, Some(9));
        assert_eq!(input.defaults.retry, None);
        let step = &input.steps[0];
        assert_eq!(step.env.get("K").map(String::as_str), Some("v"));
        let retry = step.retry.as_ref().expect("retry overlay");
        assert_eq!(retry.max_attempts, Some(2));
        // An outcome this build does not know is dropped; empty lists inherit.
        assert_eq!(retry.retry_on, Some(vec![Outcome::Timeout]));
        assert_eq!(retry.retry_exit_codes, None);
        assert_eq!(step.limits.as_ref().and_then(|l| l.pids), Some(5));
    }

    #[test]
    fn an_invalid_spec_is_refused_before_conversion() {
        let s = spec(vec![pb::StepSpec {
            id: "a".into(),
            agent: "nope".into(),
            ..Default::default()
        }]);
        let e = objective_input(&s, &agents()).unwrap_err();
        assert_eq!(e.field, "steps[a].agent");
        assert_eq!(
            e.to_string(),
            "steps[a].agent: unknown agent `nope` (known: shell)"
        );
        assert!(objective_input(&spec(Vec::new()), &agents()).is_err());
    }
}
