//! Table tests of the core: every control input in every state it can meet, every
//! fact about an attempt, and the precedence of what follows an attempt's end. No I/O:
//! each test builds a `Run`, feeds inputs, and checks the decision and the states.

use super::*;

mod attempts;
mod control;
mod family;
mod planner;
mod routed;
mod table;
mod workspace;
use super::tables::RESET_PASSED_GRACE_MS;
use crate::model::{FailureAction, FailureClass, Outcome, StopReason, Usage};

const T0: Millis = 1_000_000;
const OWNER: u32 = 1000;

fn ctx() -> Ctx {
    Ctx::at(T0)
}

fn plan(id: &str, needs: &[&str]) -> StepPlan {
    let mut p = StepPlan::literal(id, needs);
    p.retry.jitter = 0.0;
    p
}

fn gated(id: &str, needs: &[&str]) -> StepPlan {
    StepPlan {
        requires_approval: true,
        ..plan(id, needs)
    }
}

fn objective(n: usize) -> Objective {
    Objective::pending("OBJ", n, OWNER, T0)
}

fn new(plans: Vec<StepPlan>) -> (Run, Decision) {
    let n = plans.len();
    submit(objective(n), plans, ctx())
}

fn run_of(plans: Vec<StepPlan>) -> Run {
    new(plans).0
}

fn ok(run: &mut Run, input: Input) -> Decision {
    match step(run, input.clone(), ctx()) {
        Ok(d) => d,
        Err(e) => panic!("{input:?} refused: {e}"),
    }
}

fn refused(run: &mut Run, input: Input) -> Invalid {
    let before = run.clone();
    let e = match step(run, input.clone(), ctx()) {
        Ok(d) => panic!("{input:?} accepted: {d:?}"),
        Err(e) => e,
    };
    assert_eq!(*run, before, "a refused input changed the run");
    e
}

fn start(run: &mut Run, s: u32) -> Decision {
    ok(
        run,
        Input::Start {
            step: s,
            agent: String::new(),
            command: vec!["true".into()],
        },
    )
}

fn end_with(run: &mut Run, s: u32, end: End) -> Decision {
    let attempt = run.steps[s as usize].attempts;
    ok(
        run,
        Input::Ended {
            step: s,
            attempt,
            end,
        },
    )
}

fn end(run: &mut Run, s: u32, outcome: Outcome) -> Decision {
    end_with(run, s, End::of(outcome, outcome.word()))
}

/// The provider refused attempt 1 of step `s` until `until_ms`.
fn rate_limit(run: &mut Run, s: u32, until_ms: Millis) {
    ok(
        run,
        Input::RateLimited {
            step: s,
            attempt: 1,
            until_ms: Some(until_ms),
            wait_ms: 0,
        },
    );
}

fn states(run: &Run) -> Vec<StepState> {
    run.steps.iter().map(|s| s.state).collect()
}

/// The events of a decision as short words: `step a ready`, `objective running`, ….
fn said(d: &Decision) -> Vec<String> {
    d.events
        .iter()
        .map(|e| match &e.kind {
            EventKind::StepState { state, .. } => format!("step {} {}", e.step_id, state.word()),
            EventKind::ObjectiveState { state, .. } => format!("objective {}", state.word()),
            k => match e.step_id.as_str() {
                "" => k.word().to_string(),
                s => format!("{} {s}", k.word()),
            },
        })
        .collect()
}

fn has(d: &Decision, e: &Effect) -> bool {
    d.effects.contains(e)
}

use StepState as S;
