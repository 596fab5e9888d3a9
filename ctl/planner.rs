//! How `orchctl` shows goal-only objectives: the planner, its rounds and verdicts in
//! `status` (text and JSON), and the round events in `watch`/`events`.

use orch_proto::v1::event::Payload;
use orch_proto::v1::{Objective, PlannerStatus};
use serde_json::{Value, json};

use crate::output::truncate;

/// The `Planner` and `Round N` lines of `status`.
pub fn status_pairs(o: &Objective) -> Vec<(&'static str, String)> {
    let Some(p) = &o.planner else {
        return Vec::new();
    };
    let verify = match (p.verifier.as_str(), p.verify_command.is_empty()) {
        ("", true) => "none (every step succeeding)".to_string(),
        ("", false) => format!("command `{}`", p.verify_command.join(" ")),
        (v, _) => format!("agent {v}"),
    };
    let mut pairs = vec![(
        "Planner",
        format!(
            "{}; verifier: {verify}; max_rounds {}{}",
            p.agent,
            p.max_rounds,
            if p.approve_plan {
                "; plans need approval"
            } else {
                ""
            }
        ),
    )];
    for r in &p.rounds {
        let mut line = format!("{}: {}", r.number, r.phase);
        if !r.steps.is_empty() {
            line.push_str(&format!("; {} step(s)", r.steps.len()));
        }
        match r.pass {
            Some(true) => line.push_str("; verdict pass"),
            Some(false) => line.push_str("; verdict fail"),
            None => {}
        }
        if !r.plan_errors.is_empty() {
            line.push_str(&format!(
                "; last plan refused: {}",
                truncate(&r.plan_errors, 80)
            ));
        }
        if !r.findings.is_empty() {
            line.push_str(&format!("; findings: {}", truncate(&r.findings, 100)));
        }
        pairs.push(("Round", line));
    }
    pairs
}

/// `planner` of `status -o json` (null for other objectives).
pub fn json(p: Option<&PlannerStatus>) -> Value {
    let Some(p) = p else { return Value::Null };
    json!({
        "agent": p.agent,
        "verifier": if p.verifier.is_empty() { Value::Null } else { json!(p.verifier) },
        "verify_command": p.verify_command,
        "max_rounds": p.max_rounds,
        "approve_plan": p.approve_plan,
        "rounds": p.rounds.iter().map(|r| json!({
            "number": r.number,
            "phase": r.phase,
            "plan": serde_json::from_str::<Value>(&r.plan).unwrap_or(Value::Null),
            "steps": r.steps,
            "plan_errors": if r.plan_errors.is_empty() { Value::Null } else { json!(r.plan_errors) },
            "pass": r.pass,
            "findings": if r.findings.is_empty() { Value::Null } else { json!(r.findings) },
        })).collect::<Vec<_>>(),
    })
}

/// The kind word of a round event's payload.
pub fn kind(p: &Payload) -> Option<&'static str> {
    Some(match p {
        Payload::RoundStarted(_) => "round_started",
        Payload::PlanProposed(_) => "plan_proposed",
        Payload::PlanAccepted(_) => "plan_accepted",
        Payload::Verdict(_) => "verdict",
        _ => return None,
    })
}

/// A round event's fields for `watch -o json`.
pub fn fields(p: &Payload) -> Value {
    match p {
        Payload::RoundStarted(x) => json!({"round": x.round, "findings": x.findings}),
        Payload::PlanProposed(x) => json!({
            "round": x.round,
            "valid": x.valid,
            "steps": x.steps,
            "errors": x.errors,
            "plan": serde_json::from_str::<Value>(&x.plan).unwrap_or(Value::Null),
        }),
        Payload::PlanAccepted(x) => {
            json!({"round": x.round, "steps": x.steps, "by_uid": x.by_uid})
        }
        Payload::Verdict(x) => {
            json!({"round": x.round, "pass": x.pass, "findings": x.findings})
        }
        _ => Value::Null,
    }
}

/// A round event's details for `watch`/`events`.
pub fn details(p: &Payload) -> String {
    match p {
        Payload::RoundStarted(x) if x.findings.is_empty() => format!("round {}", x.round),
        Payload::RoundStarted(x) => {
            format!("round {} after: {}", x.round, truncate(&x.findings, 100))
        }
        Payload::PlanProposed(x) if x.valid => {
            format!("round {}: a valid plan of {} step(s)", x.round, x.steps)
        }
        Payload::PlanProposed(x) => {
            format!(
                "round {}: invalid plan: {}",
                x.round,
                truncate(&x.errors, 120)
            )
        }
        Payload::PlanAccepted(x) => {
            let by = x.by_uid.map(|u| format!(" (approved by uid {u})"));
            format!(
                "round {}: {}{}",
                x.round,
                x.steps.join(", "),
                by.unwrap_or_default()
            )
        }
        Payload::Verdict(x) => format!(
            "round {}: {}{}",
            x.round,
            if x.pass { "pass" } else { "fail" },
            if x.findings.is_empty() {
                String::new()
            } else {
                format!(": {}", truncate(&x.findings, 120))
            }
        ),
        _ => String::new(),
    }
}
