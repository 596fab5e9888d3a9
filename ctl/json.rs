//! The `-o json` shapes of the contract, built from API messages: status, list, events
//! (payload fields flattened), plans, agents, usage, audit and daemon status.

use orch_proto::v1::{
    AgentProfile, Attempt, AuditEntry, DaemonStatusResponse, Event, Limits, Objective,
    ObjectiveState, ObjectiveSummary, Outcome, ResolvedPlan, ResolvedStep, RetryPolicy, Step,
    StepState, Usage, UsageReport, event::Payload,
};
use orch_proto::words;
pub use orch_proto::words::EVENT_KINDS;
use serde_json::{Map, Value, json};

/// RFC 3339 UTC text of a timestamp; `None` when unset (or the zero timestamp).
pub fn ts_text(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = ts?;
    if t.seconds == 0 && t.nanos == 0 {
        return None;
    }
    let text = orch_proto::rfc3339(t);
    if text.is_empty() { None } else { Some(text) }
}

/// A timestamp as JSON: RFC 3339 text or `null`.
pub fn ts(t: Option<&prost_types::Timestamp>) -> Value {
    ts_text(t).map(Value::String).unwrap_or(Value::Null)
}

/// A string, or `null` when empty.
fn text_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

/// `{input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, cost_usd}`
/// (zeros when unset).
pub fn usage(u: Option<&Usage>) -> Value {
    let u = u.cloned().unwrap_or_default();
    json!({
        "input_tokens": u.input_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "output_tokens": u.output_tokens,
        "cost_usd": u.cost_usd,
    })
}

fn objective_state_word(v: i32) -> String {
    words::objective_state(ObjectiveState::try_from(v).unwrap_or(ObjectiveState::Unspecified))
}

fn step_state_word(v: i32) -> String {
    words::step_state(StepState::try_from(v).unwrap_or(StepState::Unspecified))
}

/// The outcome word of a raw enum value, `null` while running (unspecified).
fn outcome(v: i32) -> Value {
    text_or_null(&words::outcome(
        Outcome::try_from(v).unwrap_or(Outcome::Unspecified),
    ))
}

/// A checkpoint's JSON text as a JSON value (kept as a string when it does not parse).
fn checkpoint_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// One attempt of `status -o json`.
pub fn attempt(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "pid": a.pid,
        "started_at": ts(a.started_at.as_ref()),
        "ended_at": ts(a.ended_at.as_ref()),
        "agent": text_or_null(&a.agent),
        "outcome": outcome(a.outcome),
        "exit_code": a.exit_code,
        "signal": a.signal,
        "peak_rss_bytes": a.peak_rss_bytes,
        "cpu_ms": a.cpu_ms,
        "usage": usage(a.usage.as_ref()),
        "message": text_or_null(&a.message),
        "command": if a.command.is_empty() { Value::Null } else { json!(a.command) },
        "session_id": text_or_null(&a.session_id),
        "job_id": text_or_null(&a.job_id),
        "route_reason": text_or_null(&a.route_reason),
    })
}

/// One step of `status -o json`.
pub fn step(s: &Step) -> Value {
    json!({
        "id": s.id,
        "state": step_state_word(s.state),
        "agent": text_or_null(&s.agent),
        "command": if s.command.is_empty() { Value::Null } else { json!(s.command) },
        "needs": s.needs,
        "checkpoint": s.checkpoint_json.as_deref().map(checkpoint_value).unwrap_or(Value::Null),
        "attempts": s.attempts.iter().map(attempt).collect::<Vec<_>>(),
        "next_attempt_at": ts(s.next_attempt_at.as_ref()),
        "progress": s
            .progress
            .as_ref()
            .filter(|p| p.percent.is_some() || !p.message.is_empty())
            .map(|p| json!({"percent": p.percent, "message": text_or_null(&p.message)})),
        "usage": usage(s.usage.as_ref()),
        "message": text_or_null(&s.message),
        "prompt": text_or_null(&s.prompt),
        "workdir": text_or_null(&s.workdir),
        "requires_approval": s.requires_approval,
        "fallback": s.fallback,
        "route": s.route.as_ref().map(|r| json!({"priority": r.priority, "tags": r.tags})),
        "workspace": if s.workspace.is_empty() { "shared" } else { s.workspace.as_str() },
        "role": text_or_null(&s.role),
        "round": if s.round == 0 { Value::Null } else { json!(s.round) },
        "branch": if s.branch.is_empty() {
            Value::Null
        } else {
            json!({"name": s.branch, "base": s.branch_base, "head": s.branch_head, "repo": s.repo})
        },
    })
}

/// The `status -o json` object (also printed by the control commands).
pub fn objective(o: &Objective) -> Value {
    let budget = o.budget.unwrap_or_default();
    json!({
        "id": o.id,
        "name": o.name,
        "goal": text_or_null(&o.goal),
        "state": objective_state_word(o.state),
        "message": text_or_null(&o.message),
        "created_at": ts(o.created_at.as_ref()),
        "updated_at": ts(o.updated_at.as_ref()),
        "usage": usage(o.usage.as_ref()),
        "budget": { "max_cost_usd": budget.max_cost_usd, "max_tokens": budget.max_tokens },
        "priority": o.priority,
        "owner_uid": o.owner_uid,
        "request_id": text_or_null(&o.request_id),
        "steps": o.steps.iter().map(step).collect::<Vec<_>>(),
        "parent": if o.parent_id.is_empty() {
            Value::Null
        } else {
            json!({
                "objective_id": o.parent_id,
                "step_id": o.parent_step_id,
                "attempt": o.parent_attempt,
                "depth": o.depth,
            })
        },
        "children": o.children,
        "sub_usage": usage(o.sub_usage.as_ref()),
        "planner": crate::planner::json(o.planner.as_ref()),
    })
}

/// One element of `list -o json`.
pub fn summary(s: &ObjectiveSummary) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "state": objective_state_word(s.state),
        "created_at": ts(s.created_at.as_ref()),
        "updated_at": ts(s.updated_at.as_ref()),
        "steps_total": s.steps_total,
        "steps_succeeded": s.steps_succeeded,
        "usage": usage(s.usage.as_ref()),
        "parent_id": text_or_null(&s.parent_id),
    })
}

/// The kind word of an event: its `kind`, or the payload case when `kind` is empty.
pub fn event_kind(e: &Event) -> String {
    if !e.kind.is_empty() {
        return e.kind.clone();
    }
    match &e.payload {
        Some(Payload::ObjectiveSubmitted(_)) => "objective_submitted",
        Some(Payload::ObjectiveState(_)) => "objective_state",
        Some(Payload::StepState(_)) => "step_state",
        Some(Payload::AttemptStarted(_)) => "attempt_started",
        Some(Payload::AttemptEnded(_)) => "attempt_ended",
        Some(Payload::RetryScheduled(_)) => "retry_scheduled",
        Some(Payload::Checkpoint(_)) => "checkpoint",
        Some(Payload::Usage(_)) => "usage",
        Some(Payload::Progress(_)) => "progress",
        Some(Payload::BudgetAlert(_)) => "budget_alert",
        Some(Payload::ApprovalRequested(_)) => "approval_requested",
        Some(Payload::ApprovalAnswered(_)) => "approval_answered",
        Some(Payload::ObjectiveRemoved(_)) => "objective_removed",
        Some(Payload::AgentRouted(_)) => "agent_routed",
        Some(Payload::AgentSwitched(x)) if x.enabled => "agent_enabled",
        Some(Payload::AgentSwitched(_)) => "agent_disabled",
        Some(p) => crate::planner::kind(p).unwrap_or("unknown"),
        None => "unknown",
    }
    .to_string()
}

/// The payload's own fields, flattened into the event object.
fn payload_fields(p: &Payload) -> Value {
    match p {
        Payload::ObjectiveSubmitted(x) => json!({"name": x.name, "steps": x.steps}),
        Payload::ObjectiveState(x) => {
            json!({"state": objective_state_word(x.state), "message": text_or_null(&x.message)})
        }
        Payload::StepState(x) => {
            json!({"state": step_state_word(x.state), "message": text_or_null(&x.message)})
        }
        Payload::AttemptStarted(x) => json!({"pid": x.pid, "agent": text_or_null(&x.agent)}),
        Payload::AttemptEnded(x) => json!({
            "outcome": outcome(x.outcome),
            "exit_code": x.exit_code,
            "signal": x.signal,
            "message": text_or_null(&x.message),
        }),
        Payload::RetryScheduled(x) => {
            json!({"delay_ms": x.delay_ms, "due_at": ts(x.due_at.as_ref())})
        }
        Payload::Checkpoint(x) => json!({"checkpoint": checkpoint_value(&x.json)}),
        Payload::Usage(x) => {
            let mut m = match usage(x.report.as_ref()) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            m.insert("model".into(), text_or_null(&x.model));
            m.insert("step_total".into(), usage(x.step_total.as_ref()));
            m.insert("objective_total".into(), usage(x.objective_total.as_ref()));
            Value::Object(m)
        }
        Payload::Progress(x) => json!({"percent": x.percent, "message": text_or_null(&x.message)}),
        Payload::BudgetAlert(x) => json!({
            "percent": x.percent,
            "budget": x.budget,
            "used": x.used,
            "limit": x.limit,
        }),
        // Its step id is the envelope's `step_id` (see `event`).
        Payload::ApprovalRequested(_) => json!({}),
        Payload::ApprovalAnswered(x) => json!({
            "approved": x.approved,
            "by_uid": x.by_uid,
            "reason": text_or_null(&x.reason),
        }),
        Payload::ObjectiveRemoved(x) => json!({
            "by_uid": x.by_uid,
            "state": objective_state_word(x.state),
        }),
        Payload::AgentRouted(x) => crate::routing::routed_json(x),
        Payload::AgentSwitched(x) => crate::routing::switched_json(x),
        Payload::RoundStarted(_)
        | Payload::PlanProposed(_)
        | Payload::PlanAccepted(_)
        | Payload::Verdict(_) => crate::planner::fields(p),
    }
}

/// One `watch -o json` line: the envelope plus the payload's fields at the top level.
pub fn event(e: &Event) -> Value {
    let mut m = Map::new();
    if let Some(Value::Object(fields)) = e.payload.as_ref().map(payload_fields) {
        m.extend(fields);
    }
    // The envelope wins over any payload field of the same name.
    m.insert("seq".into(), json!(e.seq));
    m.insert("time".into(), ts(e.time.as_ref()));
    m.insert("objective_id".into(), json!(e.objective_id));
    let step_id = match (&e.payload, e.step_id.is_empty()) {
        (Some(Payload::ApprovalRequested(x)), true) => text_or_null(&x.step_id),
        _ => text_or_null(&e.step_id),
    };
    m.insert("step_id".into(), step_id);
    m.insert(
        "attempt".into(),
        if e.attempt == 0 {
            Value::Null
        } else {
            json!(e.attempt)
        },
    );
    m.insert("kind".into(), json!(event_kind(e)));
    Value::Object(m)
}

fn retry(r: Option<&RetryPolicy>) -> Value {
    let Some(r) = r else { return Value::Null };
    json!({
        "max_attempts": r.max_attempts,
        "initial_backoff_ms": r.initial_backoff_ms,
        "max_backoff_ms": r.max_backoff_ms,
        "multiplier": r.multiplier,
        "jitter": r.jitter,
        "retry_on": r.retry_on.iter().map(|o| outcome(*o)).collect::<Vec<_>>(),
        "retry_exit_codes": r.retry_exit_codes,
        "max_rate_limit_waits": r.max_rate_limit_waits,
        "on_failure": r.on_failure.iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

fn limits(l: Option<&Limits>) -> Value {
    let Some(l) = l else { return Value::Null };
    json!({
        "memory_bytes": l.memory_bytes,
        "cpu_seconds": l.cpu_seconds,
        "pids": l.pids,
        "open_files": l.open_files,
        "cpu_quota": l.cpu_quota,
    })
}

fn resolved_step(s: &ResolvedStep) -> Value {
    json!({
        "id": s.id,
        "command": s.command,
        "agent": text_or_null(&s.agent),
        "workdir": s.workdir,
        "needs": s.needs,
        "timeout_ms": s.timeout_ms,
        "idle_timeout_ms": s.idle_timeout_ms,
        "retry": retry(s.retry.as_ref()),
        "limits": limits(s.limits.as_ref()),
        "requires_approval": s.requires_approval,
        "approval_reason": text_or_null(&s.approval_reason),
        "fallback": s.fallback,
        "route": s.route.as_ref().map(|r| json!({"priority": r.priority, "tags": r.tags})),
        "routed": s.routed.as_ref().map(crate::routing::routed_json),
        "workspace": if s.workspace.is_empty() { "shared" } else { s.workspace.as_str() },
        "repo": text_or_null(&s.repo),
        "base": text_or_null(&s.base),
    })
}

/// The resolved plan of `submit --dry-run -o json`.
pub fn plan(p: &ResolvedPlan) -> Value {
    json!({
        "name": p.name,
        "steps": p.steps.iter().map(resolved_step).collect::<Vec<_>>(),
        "groups": p.groups.iter().map(|g| g.step_ids.clone()).collect::<Vec<_>>(),
    })
}

/// One element of `agents -o json`.
pub fn agent(a: &AgentProfile) -> Value {
    json!({
        "name": a.name,
        "command": a.command,
        "usage": a.usage,
        "found": a.found,
        "env": a.env.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "quality": (a.quality > 0).then_some(a.quality),
        "tags": a.tags,
        "model": text_or_null(&a.model),
        "enabled": a.enabled,
        "disabled_reason": text_or_null(&a.disabled_reason),
        "disabled_until": ts(a.disabled_until.as_ref()),
        "recent": {
            "runs": a.recent_runs,
            "success_rate": (a.recent_runs > 0).then_some(a.success_rate),
            "p50_ms": a.p50_ms,
            "cost_per_success_usd": a.cost_per_success_usd,
        },
    })
}

/// The `usage -o json` object.
pub fn usage_report(r: &UsageReport) -> Value {
    let mut m = match usage(r.usage.as_ref()) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let optional = [
        ("budget_usd", r.budget_usd.map(Value::from)),
        (
            "budget_used_percent",
            r.budget_used_percent.map(Value::from),
        ),
        ("max_tokens", r.max_tokens.map(Value::from)),
        ("daily_budget_usd", r.daily_budget_usd.map(Value::from)),
        ("monthly_budget_usd", r.monthly_budget_usd.map(Value::from)),
        (
            "machine_daily_budget_usd",
            r.machine_daily_budget_usd.map(Value::from),
        ),
        (
            "machine_monthly_budget_usd",
            r.machine_monthly_budget_usd.map(Value::from),
        ),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    }
    m.insert("today".into(), usage(r.today.as_ref()));
    m.insert("this_month".into(), usage(r.this_month.as_ref()));
    m.insert("machine_today".into(), usage(r.machine_today.as_ref()));
    m.insert(
        "machine_this_month".into(),
        usage(r.machine_this_month.as_ref()),
    );
    m.insert("uid".into(), Value::from(r.uid));
    Value::Object(m)
}

/// One element of `audit -o json`.
pub fn audit(a: &AuditEntry) -> Value {
    json!({
        "time": ts(a.time.as_ref()),
        "uid": a.uid,
        "gid": a.gid,
        "pid": a.pid,
        "action": a.action,
        "objective_id": text_or_null(&a.objective_id),
        "result": a.result,
    })
}

/// The counts by state, with every objective state present (0 when absent).
pub fn counts(d: &DaemonStatusResponse) -> Map<String, Value> {
    let mut m = Map::new();
    for w in words::OBJECTIVE_STATES {
        m.insert(w.to_string(), json!(d.counts.get(w).copied().unwrap_or(0)));
    }
    for (k, v) in &d.counts {
        m.insert(k.clone(), json!(v));
    }
    m
}

/// The `daemon status -o json` object.
pub fn daemon_status(d: &DaemonStatusResponse, origin: orch_proto::paths::SocketOrigin) -> Value {
    json!({
        "version": d.version,
        "pid": d.pid,
        "uid": d.uid,
        "daemon": if d.uid == 0 { "system" } else { "user" },
        "socket_activated": d.socket_activated,
        "socket_origin": origin.word(),
        "uptime_s": d.uptime_s,
        "socket": d.socket,
        "state_dir": d.state_dir,
        "store_bytes": d.store_bytes,
        "limits_backend": d.limits_backend,
        "limits_detail": d.limits_detail,
        "counts": counts(d),
        "max_parallel": d.max_parallel,
        "running_attempts": d.running_attempts,
        "config_path": d.config_path,
        "config_found": d.config_found,
        "last_event_seq": d.last_event_seq,
        "host": d.host.as_ref().map(crate::reports::host_json),
        "executors": d.executors.iter().map(|e| json!({
            "name": e.name,
            "healthy": e.healthy,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
        "state_disk_free_bytes": d.state_disk_free_bytes,
        "state_disk_total_bytes": d.state_disk_total_bytes,
        "min_free_bytes": d.min_free_bytes,
        "store_problem": text_or_null(&d.store_problem),
        "daemon_started_ms": d.daemon_started_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{
        ApprovalAnswered, AttemptEnded, Budget, CheckpointRecorded, ObjectiveStateChanged,
        Progress, RetryScheduled, StepStateChanged, UsageRecorded,
    };

    fn t(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn sample_objective() -> Objective {
        Objective {
            id: "01J0000000000000000000000A".into(),
            name: "demo".into(),
            state: ObjectiveState::Running as i32,
            created_at: t(1_700_000_000),
            updated_at: None,
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 20,
                cost_usd: 0.5,
                ..Default::default()
            }),
            budget: Some(Budget {
                max_cost_usd: Some(5.0),
                max_tokens: None,
            }),
            steps: vec![
                Step {
                    id: "main".into(),
                    state: StepState::Running as i32,
                    command: vec!["sleep".into(), "1".into()],
                    checkpoint_json: Some(r#"{"done": 3}"#.into()),
                    attempts: vec![
                        Attempt {
                            number: 1,
                            pid: Some(42),
                            started_at: t(1_700_000_001),
                            ended_at: t(1_700_000_002),
                            outcome: Outcome::ExitFailure as i32,
                            exit_code: Some(3),
                            signal: None,
                            ..Default::default()
                        },
                        Attempt {
                            number: 2,
                            pid: None,
                            started_at: t(1_700_000_003),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                Step {
                    id: "review".into(),
                    state: StepState::Waiting as i32,
                    agent: "claude".into(),
                    needs: vec!["main".into()],
                    progress: Some(Progress {
                        percent: Some(50.0),
                        message: "half".into(),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn status_has_contract_keys_and_nulls() {
        let v = objective(&sample_objective());
        for k in [
            "id",
            "name",
            "state",
            "created_at",
            "updated_at",
            "usage",
            "budget",
            "steps",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["state"], "running");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["updated_at"], Value::Null);
        assert_eq!(v["usage"]["input_tokens"], 10);
        assert_eq!(v["usage"]["cost_usd"], 0.5);
        assert_eq!(v["budget"]["max_cost_usd"], 5.0);
        assert_eq!(v["budget"]["max_tokens"], Value::Null);
        let s0 = &v["steps"][0];
        for k in [
            "id",
            "state",
            "agent",
            "command",
            "needs",
            "checkpoint",
            "attempts",
        ] {
            assert!(s0.get(k).is_some(), "missing step {k}");
        }
        assert_eq!(s0["agent"], Value::Null);
        assert_eq!(s0["command"], json!(["sleep", "1"]));
        assert_eq!(s0["checkpoint"], json!({"done": 3}));
        assert_eq!(s0["needs"], json!([]));
        let a1 = &s0["attempts"][0];
        for k in [
            "number",
            "pid",
            "started_at",
            "ended_at",
            "agent",
            "outcome",
            "exit_code",
            "signal",
            "peak_rss_bytes",
            "cpu_ms",
            "usage",
        ] {
            assert!(a1.get(k).is_some(), "missing attempt {k}");
        }
        assert_eq!(a1["pid"], 42);
        assert_eq!(a1["outcome"], "exit_failure");
        assert_eq!(a1["exit_code"], 3);
        assert_eq!(a1["signal"], Value::Null);
        let a2 = &s0["attempts"][1];
        assert_eq!(a2["pid"], Value::Null);
        assert_eq!(a2["outcome"], Value::Null);
        assert_eq!(a2["ended_at"], Value::Null);
        assert_eq!(a2["exit_code"], Value::Null);
        assert_eq!(a2["usage"]["output_tokens"], 0);
        let s1 = &v["steps"][1];
        assert_eq!(s1["agent"], "claude");
        assert_eq!(s1["command"], Value::Null);
        assert_eq!(s1["checkpoint"], Value::Null);
        assert_eq!(s1["needs"], json!(["main"]));
        assert_eq!(s1["state"], "waiting");
        assert_eq!(s1["progress"]["percent"], 50.0);
    }

    #[test]
    fn bad_checkpoint_json_is_kept_as_text() {
        let mut o = sample_objective();
        o.steps[0].checkpoint_json = Some("not json".into());
        assert_eq!(objective(&o)["steps"][0]["checkpoint"], "not json");
    }

    #[test]
    fn list_element_keys() {
        let s = ObjectiveSummary {
            id: "x".into(),
            name: "n".into(),
            state: ObjectiveState::Succeeded as i32,
            created_at: t(1_700_000_000),
            steps_total: 3,
            steps_succeeded: 2,
            ..Default::default()
        };
        let v = summary(&s);
        assert_eq!(v["id"], "x");
        assert_eq!(v["name"], "n");
        assert_eq!(v["state"], "succeeded");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["updated_at"], Value::Null);
        assert_eq!(v["steps_total"], 3);
        assert_eq!(v["usage"]["cost_usd"], 0.0);
    }

    fn ev(kind: &str, payload: Payload) -> Event {
        Event {
            seq: 7,
            time: t(1_700_000_000),
            objective_id: "o1".into(),
            step_id: "main".into(),
            attempt: 2,
            kind: kind.into(),
            payload: Some(payload),
        }
    }

    #[test]
    fn event_envelope_and_flattening() {
        let v = event(&ev(
            "attempt_ended",
            Payload::AttemptEnded(AttemptEnded {
                outcome: Outcome::Signaled as i32,
                exit_code: None,
                signal: Some(9),
                message: String::new(),
            }),
        ));
        assert_eq!(v["seq"], 7);
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["objective_id"], "o1");
        assert_eq!(v["step_id"], "main");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["kind"], "attempt_ended");
        assert_eq!(v["outcome"], "signaled");
        assert_eq!(v["signal"], 9);
        assert_eq!(v["exit_code"], Value::Null);
        assert_eq!(v["message"], Value::Null);

        let v = event(&ev(
            "step_state",
            Payload::StepState(StepStateChanged {
                state: StepState::Backoff as i32,
                message: "x".into(),
            }),
        ));
        assert_eq!(v["state"], "backoff");

        let v = event(&ev(
            "retry_scheduled",
            Payload::RetryScheduled(RetryScheduled {
                delay_ms: 2000,
                due_at: t(1_700_000_002),
            }),
        ));
        assert_eq!(v["delay_ms"], 2000);
        assert_eq!(v["due_at"], "2023-11-14T22:13:22.000Z");

        let v = event(&ev(
            "usage",
            Payload::Usage(UsageRecorded {
                report: Some(Usage {
                    input_tokens: 5,
                    output_tokens: 6,
                    cost_usd: 0.1,
                    ..Default::default()
                }),
                step_total: None,
                objective_total: Some(Usage {
                    input_tokens: 50,
                    output_tokens: 60,
                    cost_usd: 1.0,
                    ..Default::default()
                }),
                model: "m".into(),
            }),
        ));
        assert_eq!(v["input_tokens"], 5);
        assert_eq!(v["cost_usd"], 0.1);
        assert_eq!(v["model"], "m");
        assert_eq!(v["objective_total"]["input_tokens"], 50);
        assert_eq!(v["step_total"]["input_tokens"], 0);

        let v = event(&ev(
            "approval_answered",
            Payload::ApprovalAnswered(ApprovalAnswered {
                approved: false,
                by_uid: 1000,
                reason: "no".into(),
            }),
        ));
        assert_eq!(v["approved"], false);
        assert_eq!(v["by_uid"], 1000);
        assert_eq!(v["reason"], "no");

        let v = event(&ev(
            "checkpoint",
            Payload::Checkpoint(CheckpointRecorded {
                json: r#"{"n":1}"#.into(),
            }),
        ));
        assert_eq!(v["checkpoint"], json!({"n": 1}));
    }

    #[test]
    fn objective_event_has_null_step_and_attempt() {
        let mut e = ev(
            "",
            Payload::ObjectiveState(ObjectiveStateChanged {
                state: ObjectiveState::Failed as i32,
                message: "boom".into(),
            }),
        );
        e.step_id.clear();
        e.attempt = 0;
        let v = event(&e);
        assert_eq!(v["kind"], "objective_state");
        assert_eq!(v["step_id"], Value::Null);
        assert_eq!(v["attempt"], Value::Null);
        assert_eq!(v["state"], "failed");
        assert_eq!(v["message"], "boom");
    }

    #[test]
    fn daemon_counts_include_every_state() {
        let mut d = DaemonStatusResponse {
            version: "0.1.0".into(),
            ..Default::default()
        };
        d.counts.insert("running".into(), 2);
        let v = daemon_status(&d, orch_proto::paths::SocketOrigin::Own);
        assert_eq!(v["counts"]["running"], 2);
        assert_eq!(v["counts"]["pending"], 0);
        assert_eq!(v["counts"].as_object().map(|m| m.len()), Some(7));
        for k in [
            "version",
            "pid",
            "uptime_s",
            "socket",
            "state_dir",
            "store_bytes",
            "limits_backend",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
    }

    #[test]
    fn usage_report_optional_budget() {
        let r = UsageReport {
            usage: Some(Usage {
                input_tokens: 1,
                output_tokens: 2,
                cost_usd: 3.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = usage_report(&r);
        assert_eq!(v["input_tokens"], 1);
        assert!(v.get("budget_usd").is_none());
        let r = UsageReport {
            budget_usd: Some(10.0),
            budget_used_percent: Some(30.0),
            ..r
        };
        let v = usage_report(&r);
        assert_eq!(v["budget_usd"], 10.0);
        assert_eq!(v["budget_used_percent"], 30.0);
    }

    #[test]
    fn audit_shape() {
        let a = AuditEntry {
            time: t(1_700_000_000),
            uid: 1000,
            gid: 1000,
            pid: 77,
            action: "submit".into(),
            objective_id: String::new(),
            result: "ok".into(),
        };
        let v = audit(&a);
        assert_eq!(v["objective_id"], Value::Null);
        assert_eq!(v["result"], "ok");
        assert_eq!(v["pid"], 77);
    }
}
