//! Goal-only objectives in the core: the ROLE and ROUND tables, and rounds driven by
//! inputs (a plan proposed, invalid, held, a verdict, max_rounds, a restart).

use super::*;
use crate::engine::machine::planner::{
    OnSuccess, PhaseEnd, Proposal, RoundNext, next_round, on_success,
};
use crate::model::{Planner, Round, RoundPhase, StepRole, Verdict};

#[test]
fn the_role_table() {
    let rows = [
        (StepRole::Work, false, OnSuccess::Release),
        (StepRole::Work, true, OnSuccess::Release),
        (StepRole::Verify, false, OnSuccess::Release),
        (StepRole::Plan, false, OnSuccess::AcceptPlan),
        (StepRole::Plan, true, OnSuccess::HoldPlan),
    ];
    for (role, approve, want) in rows {
        assert_eq!(on_success(role, approve), want, "{role:?} {approve}");
    }
}

#[test]
fn the_round_table() {
    use PhaseEnd as E;
    use RoundNext as N;
    let rows = [
        (E::PlanFailed, true, true, N::Fail),
        (E::PlanFailed, false, true, N::Fail),
        (E::StepsSucceeded, true, false, N::Verify),
        (E::StepsSucceeded, false, false, N::Pass),
        (E::StepsFailed, true, true, N::Again),
        (E::StepsFailed, false, false, N::Fail),
        (E::Verdict(true), true, false, N::Pass),
        (E::Verdict(false), true, true, N::Again),
        (E::Verdict(false), true, false, N::Fail),
    ];
    for (end, verifier, left, want) in rows {
        assert_eq!(
            next_round(end, verifier, left),
            want,
            "{end:?} {verifier} {left}"
        );
    }
}

fn goal(verify: bool, approve_plan: bool, max_rounds: u32) -> Run {
    let mut plan_step = plan("plan", &[]);
    plan_step.agent = "planner".into();
    plan_step.role = StepRole::Plan;
    let verify_step = verify.then(|| {
        let mut v = plan("verify", &[]);
        v.role = StepRole::Verify;
        v.retry.max_attempts = 1;
        v
    });
    let mut first = plan_step.clone();
    first.id = "r1.plan".into();
    first.round = 1;
    let mut obj = objective(1);
    obj.planner = Some(Box::new(Planner {
        agent: "planner".into(),
        verifier: String::new(),
        verify_command: if verify { vec!["true".into()] } else { vec![] },
        max_rounds,
        approve_plan,
        plan_step,
        verify_step,
        workdir: "/".into(),
        rounds: vec![Round {
            number: 1,
            ..Round::default()
        }],
    }));
    submit(obj, vec![first], ctx()).0
}

fn index_of(run: &Run, id: &str) -> u32 {
    run.steps
        .iter()
        .find(|s| s.plan.id == id)
        .map(|s| s.index)
        .unwrap_or_else(|| panic!("no step {id}: {:?}", run.steps))
}

fn plan_ended(run: &mut Run, id: &str, plan: Result<Vec<StepPlan>, String>) -> Decision {
    let s = index_of(run, id);
    start(run, s);
    let attempt = run.steps[s as usize].attempts;
    ok(
        run,
        Input::PlanEnded {
            step: s,
            attempt,
            end: End::of(Outcome::Success, ""),
            plan: Some(plan.map(|steps| Proposal {
                steps,
                text: "{}".into(),
            })),
        },
    )
}

fn run_ok(run: &mut Run, id: &str) -> Decision {
    let s = index_of(run, id);
    start(run, s);
    end(run, s, Outcome::Success)
}

fn phase(run: &Run) -> RoundPhase {
    run.obj
        .planner
        .as_ref()
        .and_then(|p| p.current())
        .map(|r| r.phase)
        .unwrap_or_default()
}

#[test]
fn a_valid_plan_adds_its_steps_behind_the_planner_step() {
    let mut run = goal(false, false, 3);
    let d = plan_ended(
        &mut run,
        "r1.plan",
        Ok(vec![plan("a", &[]), plan("b", &["a"])]),
    );
    let ids: Vec<&str> = run.steps.iter().map(|s| s.plan.id.as_str()).collect();
    assert_eq!(ids, ["r1.plan", "r1.a", "r1.b"]);
    assert_eq!(run.steps[2].plan.needs, ["r1.plan", "r1.a"]);
    assert_eq!(states(&run), [S::Succeeded, S::Ready, S::Waiting]);
    assert_eq!(run.obj.step_count, 3);
    assert!(d.objective && d.steps.contains(&1) && d.steps.contains(&2));
    let words = said(&d);
    let pos = |w: &str| words.iter().position(|x| x.starts_with(w));
    assert!(pos("plan_proposed") < pos("plan_accepted"), "{words:?}");
    assert_eq!(phase(&run), RoundPhase::Executing);
    run_ok(&mut run, "r1.a");
    run_ok(&mut run, "r1.b");
    // No verifier: every step succeeding reaches the goal.
    assert_eq!(run.obj.state, ObjState::Succeeded);
    assert_eq!(phase(&run), RoundPhase::Passed);
}

#[test]
fn an_invalid_plan_fails_the_attempt_and_hands_the_errors_to_the_next() {
    let mut run = goal(false, false, 3);
    let d = plan_ended(
        &mut run,
        "r1.plan",
        Err("steps[a].agent: unknown agent `x`".into()),
    );
    assert_eq!(run.steps.len(), 1);
    assert_eq!(run.steps[0].state, S::Backoff);
    assert_eq!(
        run.steps[0]
            .plan
            .env
            .get("ORCH_PLAN_ERRORS")
            .map(String::as_str),
        Some("steps[a].agent: unknown agent `x`")
    );
    assert!(said(&d).iter().any(|w| w.starts_with("plan_proposed")));
    let r = run
        .obj
        .planner
        .as_ref()
        .and_then(|p| p.current().cloned())
        .unwrap_or_default();
    assert!(r.plan_errors.contains("unknown agent"));
}

#[test]
fn a_rejected_verdict_plans_again_until_max_rounds_then_fails_with_the_findings() {
    let mut run = goal(true, false, 2);
    for round in 1..=2 {
        plan_ended(
            &mut run,
            &format!("r{round}.plan"),
            Ok(vec![plan("a", &[])]),
        );
        run_ok(&mut run, &format!("r{round}.a"));
        assert_eq!(phase(&run), RoundPhase::Verifying);
        let v = index_of(&run, &format!("r{round}.verify"));
        start(&mut run, v);
        ok(
            &mut run,
            Input::Verdict {
                step: v,
                attempt: 1,
                verdict: Verdict {
                    pass: false,
                    findings: format!("missing {round}"),
                },
            },
        );
        end(&mut run, v, Outcome::Success);
    }
    let p = run.obj.planner.as_ref().expect("planner");
    assert_eq!(p.rounds.len(), 2);
    let second = index_of(&run, "r2.plan");
    assert_eq!(
        run.steps[second as usize]
            .plan
            .env
            .get("ORCH_VERIFY_FINDINGS")
            .map(String::as_str),
        Some("missing 1")
    );
    assert_eq!(run.obj.state, ObjState::Failed);
    assert!(
        run.obj.message.contains("2 of 2 rounds") && run.obj.message.contains("missing 2"),
        "{}",
        run.obj.message
    );
}

#[test]
fn a_held_plan_waits_for_approve_plan_and_a_deny_fails_the_round() {
    let mut run = goal(false, true, 3);
    plan_ended(&mut run, "r1.plan", Ok(vec![plan("a", &[])]));
    assert_eq!(run.steps.len(), 1, "held: nothing added yet");
    assert_eq!(run.obj.state, ObjState::AwaitingApproval);
    assert_eq!(phase(&run), RoundPhase::AwaitingApproval);
    let mut denied = run.clone();
    ok(
        &mut run,
        Input::Approve {
            step: "plan".into(),
            approve: true,
            reason: String::new(),
            by: OWNER,
        },
    );
    assert_eq!(states(&run), [S::Succeeded, S::Ready]);
    ok(
        &mut denied,
        Input::Approve {
            step: "plan".into(),
            approve: false,
            reason: "no".into(),
            by: OWNER,
        },
    );
    assert_eq!(denied.obj.state, ObjState::Failed);
    assert_eq!(denied.steps.len(), 1);
}

#[test]
fn a_restart_mid_round_keeps_the_round_and_reruns_the_interrupted_attempt() {
    let mut run = goal(true, false, 3);
    plan_ended(&mut run, "r1.plan", Ok(vec![plan("a", &[])]));
    let a = index_of(&run, "r1.a");
    start(&mut run, a);
    // As loaded from the store after a crash: the records, nothing running.
    let gone = run
        .running
        .get(&a)
        .map(|r| r.attempt.clone())
        .into_iter()
        .collect();
    let mut loaded = Run::new(run.obj.clone(), run.steps.clone());
    let d = ok(&mut loaded, Input::Recover { gone, kept: vec![] });
    assert!(has(&d, &Effect::Enqueue { step: a }));
    assert_eq!(phase(&loaded), RoundPhase::Executing);
    run_ok(&mut loaded, "r1.a");
    assert_eq!(phase(&loaded), RoundPhase::Verifying);
    // No second plan was asked for.
    assert_eq!(loaded.obj.planner.as_ref().map(|p| p.rounds.len()), Some(1));
}

#[test]
fn a_goal_only_objective_is_not_retried() {
    let mut run = goal(false, false, 1);
    let s = index_of(&run, "r1.plan");
    start(&mut run, s);
    end(&mut run, s, Outcome::ExitFailure);
    for _ in 0..3 {
        if run.obj.state.is_terminal() {
            break;
        }
        ok(&mut run, Input::TimerFired { step: s });
        start(&mut run, s);
        end(&mut run, s, Outcome::ExitFailure);
    }
    assert_eq!(run.obj.state, ObjState::Failed, "{:?}", run.steps);
    let e = refused(
        &mut run,
        Input::Retry {
            step: None,
            fresh: false,
            by: OWNER,
        },
    );
    assert!(e.to_string().contains("goal-only"), "{e}");
}

#[test]
fn a_verdict_or_plan_line_of_a_work_step_is_ignored() {
    let mut run = goal(true, false, 3);
    plan_ended(&mut run, "r1.plan", Ok(vec![plan("x.verify", &[])]));
    let s = index_of(&run, "r1.x.verify");
    start(&mut run, s);
    let before = run.obj.clone();
    ok(
        &mut run,
        Input::Verdict {
            step: s,
            attempt: 1,
            verdict: Verdict {
                pass: true,
                findings: String::new(),
            },
        },
    );
    ok(
        &mut run,
        Input::PlanPrinted {
            step: s,
            attempt: 1,
            json: "{}".into(),
        },
    );
    assert_eq!(run.obj.planner, before.planner);
}
