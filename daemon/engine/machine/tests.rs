//! Table tests of the core: every control input in every state it can meet, every
//! fact about an attempt, and the precedence of what follows an attempt's end. No I/O:
//! each test builds a `Run`, feeds inputs, and checks the decision and the states.

use std::collections::BTreeMap;

use super::*;
use crate::model::{Budget, Limits, RetryPolicy};

const T0: Millis = 1_000_000;
const OWNER: u32 = 1000;

fn ctx() -> Ctx {
    Ctx::at(T0)
}

fn plan(id: &str, needs: &[&str]) -> StepPlan {
    StepPlan {
        id: id.into(),
        agent: String::new(),
        prompt: String::new(),
        command: vec!["true".into()],
        template: vec![],
        workdir: "/".into(),
        env: BTreeMap::new(),
        step_env: BTreeMap::new(),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        timeout_ms: None,
        idle_timeout_ms: None,
        retry: RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        limits: Limits::default(),
        requires_approval: false,
        fallback: vec![],
        fallback_on_rate_limit: false,
    }
}

fn gated(id: &str, needs: &[&str]) -> StepPlan {
    StepPlan {
        requires_approval: true,
        ..plan(id, needs)
    }
}

fn objective(n: usize) -> Objective {
    Objective {
        id: "OBJ".into(),
        name: "test".into(),
        goal: String::new(),
        priority: 0,
        budget: Budget::default(),
        state: ObjState::Pending,
        created_ms: T0,
        updated_ms: T0,
        message: String::new(),
        owner_uid: OWNER,
        owner_gid: OWNER,
        request_id: String::new(),
        usage: Usage::default(),
        client_env: None,
        step_count: n as u32,
        ended_seq: None,
        alerts: vec![],
    }
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

// ------------------------------------------------------------ submit

#[test]
fn submit_readies_steps_without_needs_and_records_everything() {
    let (run, d) = new(vec![plan("a", &[]), plan("b", &["a"])]);
    assert_eq!(said(&d), ["objective_submitted", "step a ready"]);
    assert_eq!(states(&run), [S::Ready, S::Waiting]);
    assert!(d.objective);
    assert_eq!(d.steps.len(), 2);
    assert_eq!(d.effects, [Effect::Enqueue { step: 0 }]);
    assert_eq!(run.obj.state, ObjState::Pending);
}

#[test]
fn an_objective_whose_only_ready_step_awaits_approval_awaits_approval() {
    let (run, d) = new(vec![gated("deploy", &[])]);
    assert_eq!(
        said(&d),
        [
            "objective_submitted",
            "step deploy awaiting_approval",
            "approval_requested deploy",
            "objective awaiting_approval"
        ]
    );
    assert_eq!(run.obj.state, ObjState::AwaitingApproval);
}

#[test]
fn a_gate_beside_a_ready_step_leaves_the_objective_pending() {
    let (run, _) = new(vec![gated("a", &[]), plan("b", &[])]);
    assert_eq!(states(&run), [S::AwaitingApproval, S::Ready]);
    assert_eq!(run.obj.state, ObjState::Pending);
}

// ------------------------------------------------------------ start and end

#[test]
fn start_opens_the_next_attempt_and_spawns_it_once_durable() {
    let mut run = run_of(vec![plan("a", &[])]);
    let d = start(&mut run, 0);
    assert_eq!(said(&d), ["step a running", "objective running"]);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].number, 1);
    assert_eq!(d.attempts[0].started_ms, T0);
    assert!(has(
        &d,
        &Effect::Spawn {
            step: 0,
            attempt: 1
        }
    ));
    assert!(run.running.contains_key(&0));
}

#[test]
fn only_a_ready_step_starts() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &["a"])]);
    let e = refused(
        &mut run,
        Input::Start {
            step: 1,
            agent: String::new(),
            command: vec![],
        },
    );
    assert_eq!(
        e,
        Invalid::FailedPrecondition("step `b` of objective OBJ is waiting, not ready".into())
    );
}

#[test]
fn success_releases_dependents_and_the_last_one_ends_the_objective() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &["a"])]);
    start(&mut run, 0);
    let d = end(&mut run, 0, Outcome::Success);
    assert_eq!(
        said(&d),
        ["attempt_ended a", "step a succeeded", "step b ready"]
    );
    assert!(has(&d, &Effect::Enqueue { step: 1 }));
    start(&mut run, 1);
    let d = end(&mut run, 1, Outcome::Success);
    assert_eq!(
        said(&d),
        ["attempt_ended b", "step b succeeded", "objective succeeded"]
    );
    assert_eq!(d.effects, [Effect::Dequeue { timers: true }, Effect::Ended]);
    assert!(run.obj.state.is_terminal());
}

#[test]
fn a_failure_with_retries_left_backs_off_by_the_policy() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(
        said(&d),
        ["attempt_ended a", "step a backoff", "retry_scheduled a"]
    );
    let due = T0 + 2_000;
    assert!(has(&d, &Effect::Timer { step: 0, due }));
    assert_eq!(run.steps[0].next_attempt_ms, Some(due));
    assert_eq!(run.steps[0].counted_attempts, 1);
    assert_eq!(run.obj.state, ObjState::Running);
}

#[test]
fn the_backoff_timer_readies_the_step_and_the_next_attempt_is_number_two() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::Timeout);
    let d = ok(&mut run, Input::TimerFired { step: 0 });
    assert_eq!(said(&d), ["step a ready"]);
    assert_eq!(run.steps[0].next_attempt_ms, None);
    let d = start(&mut run, 0);
    assert!(has(
        &d,
        &Effect::Spawn {
            step: 0,
            attempt: 2
        }
    ));
}

#[test]
fn a_timer_for_a_step_no_longer_in_backoff_does_nothing() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(&mut run, Input::TimerFired { step: 0 });
    assert!(d.is_empty());
}

#[test]
fn exhausted_retries_fail_the_step_skip_its_dependents_and_fail_the_objective() {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    let mut run = run_of(vec![p, plan("b", &["a"])]);
    start(&mut run, 0);
    let d = end_with(&mut run, 0, End::of(Outcome::ExitFailure, "exit status 3"));
    assert_eq!(
        said(&d),
        [
            "attempt_ended a",
            "step a failed",
            "step b skipped",
            "objective failed"
        ]
    );
    assert_eq!(run.steps[1].message, "dependency `a` did not succeed");
    assert_eq!(run.obj.message, "step `a` failed: exit status 3");
}

#[test]
fn exhausted_retries_fall_back_to_the_next_agent_with_fresh_attempts() {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    p.agent = "claude".into();
    p.fallback = vec!["codex".into()];
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    let d = end_with(&mut run, 0, End::of(Outcome::ExitFailure, "exit status 1"));
    assert_eq!(said(&d), ["attempt_ended a", "step a ready"]);
    let s = &run.steps[0];
    assert_eq!((s.agent_index, s.counted_attempts), (1, 0));
    assert_eq!(s.current_agent(), "codex");
    assert_eq!(
        s.message,
        "attempts exhausted (exit status 1); falling back to agent `codex`"
    );
}

#[test]
fn an_outcome_the_policy_does_not_retry_fails_at_once() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::SpawnError);
    assert_eq!(states(&run), [S::Failed]);
}

#[test]
fn an_interrupted_attempt_runs_again_without_using_a_retry() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = end(&mut run, 0, Outcome::Interrupted);
    assert_eq!(said(&d), ["attempt_ended a", "step a ready"]);
    assert!(has(&d, &Effect::Enqueue { step: 0 }));
    assert_eq!(run.steps[0].counted_attempts, 0);
}

#[test]
fn an_interrupted_attempt_while_draining_is_not_queued() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let draining = Ctx {
        draining: true,
        ..ctx()
    };
    let d = step(
        &mut run,
        Input::Ended {
            step: 0,
            attempt: 1,
            end: End::of(Outcome::Interrupted, "stopping"),
        },
        draining,
    )
    .expect("accepted");
    assert_eq!(states(&run), [S::Ready]);
    assert!(
        !d.effects
            .iter()
            .any(|e| matches!(e, Effect::Enqueue { .. }))
    );
}

#[test]
fn a_rate_limited_attempt_waits_for_the_reset_without_using_a_retry() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::RateLimited {
            step: 0,
            attempt: 1,
            until_ms: T0 + 60_000,
        },
    );
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert!(has(
        &d,
        &Effect::Timer {
            step: 0,
            due: T0 + 60_000
        }
    ));
    assert_eq!(run.steps[0].counted_attempts, 0);
    assert_eq!(
        run.steps[0].message,
        "rate limited by the provider; waiting for the reset"
    );
}

#[test]
fn a_rate_limit_falls_back_when_the_step_says_so() {
    let mut p = plan("a", &[]);
    p.agent = "claude".into();
    p.fallback = vec!["codex".into()];
    p.fallback_on_rate_limit = true;
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    let until_ms = T0 + 60_000;
    ok(
        &mut run,
        Input::RateLimited {
            step: 0,
            attempt: 1,
            until_ms,
        },
    );
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [S::Ready]);
    assert_eq!(run.steps[0].current_agent(), "codex");
}

#[test]
fn a_reset_already_past_is_an_ordinary_failure() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::RateLimited {
            step: 0,
            attempt: 1,
            until_ms: T0 - 1,
        },
    );
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.steps[0].counted_attempts, 1);
    assert_eq!(run.steps[0].next_attempt_ms, Some(T0 + 2_000));
}

#[test]
fn facts_about_another_attempt_are_ignored() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let stale = ok(
        &mut run,
        Input::Ended {
            step: 0,
            attempt: 7,
            end: End::of(Outcome::Success, ""),
        },
    );
    assert!(stale.is_empty());
    let started = ok(
        &mut run,
        Input::Started {
            step: 0,
            attempt: 9,
            pid: 1,
            start_ticks: None,
            cgroup: None,
        },
    );
    assert!(started.is_empty());
    assert_eq!(states(&run), [S::Running]);
}

#[test]
fn started_records_the_pid_and_says_so() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(
        &mut run,
        Input::Started {
            step: 0,
            attempt: 1,
            pid: 4242,
            start_ticks: Some(77),
            cgroup: None,
        },
    );
    assert_eq!(said(&d), ["attempt_started a"]);
    assert_eq!(d.attempts[0].pid, Some(4242));
    assert_eq!(d.attempts[0].pid_start_ticks, Some(77));
}

#[test]
fn samples_stay_in_memory_and_reach_the_attempt_record_at_its_end() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(
        &mut run,
        Input::Sample {
            step: 0,
            attempt: 1,
            peak_rss_bytes: 5_000,
            cpu_ms: 30,
        },
    );
    assert!(d.is_empty());
    let d = end(&mut run, 0, Outcome::Success);
    assert_eq!(
        (d.attempts[0].peak_rss_bytes, d.attempts[0].cpu_ms),
        (5_000, 30)
    );
    assert_eq!(d.attempts[0].ended_ms, Some(T0));
}

#[test]
fn usage_adds_up_on_the_attempt_the_step_and_the_objective() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let delta = Usage {
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: 0.5,
    };
    for _ in 0..2 {
        ok(
            &mut run,
            Input::Usage {
                step: 0,
                attempt: 1,
                delta,
                model: "m".into(),
            },
        );
    }
    assert_eq!(run.obj.usage.tokens(), 30);
    assert_eq!(run.steps[0].usage.cost_usd, 1.0);
    let d = end(&mut run, 0, Outcome::Success);
    assert_eq!(d.attempts[0].usage.input_tokens, 20);
}

#[test]
fn checkpoints_and_progress_are_kept_on_the_step() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(
        &mut run,
        Input::Checkpoint {
            step: 0,
            attempt: 1,
            json: "{\"n\":1}".into(),
        },
    );
    assert_eq!(said(&d), ["checkpoint a"]);
    let d = ok(
        &mut run,
        Input::Progress {
            step: 0,
            attempt: 1,
            percent: Some(50.0),
            message: "half".into(),
        },
    );
    assert_eq!(said(&d), ["progress a"]);
    assert_eq!(run.steps[0].checkpoint.as_deref(), Some("{\"n\":1}"));
    assert_eq!(run.steps[0].progress.percent, Some(50.0));
}

#[test]
fn an_objective_budget_alert_is_sent_once() {
    let mut run = run_of(vec![plan("a", &[])]);
    let alert = Input::Alert {
        key: Some("objective_usd:80".into()),
        percent: 80.0,
        budget: "objective_usd".into(),
        used: 8.0,
        limit: 10.0,
    };
    assert_eq!(said(&ok(&mut run, alert.clone())), ["budget_alert"]);
    assert!(ok(&mut run, alert).is_empty());
    let global = Input::Alert {
        key: None,
        percent: 80.0,
        budget: "daily_usd".into(),
        used: 8.0,
        limit: 10.0,
    };
    assert_eq!(said(&ok(&mut run, global)), ["budget_alert"]);
}

// ------------------------------------------------------------ budgets

#[test]
fn an_exhausted_budget_stops_running_attempts_and_fails_the_rest() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[]), plan("c", &["a"])]);
    start(&mut run, 0);
    let why = "objective budget of $1.00 exhausted".to_string();
    let d = ok(&mut run, Input::Exhaust { why: why.clone() });
    assert_eq!(said(&d), ["step b failed"]);
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Stop(StopReason::BudgetExceeded)
        }
    ));
    assert!(has(&d, &Effect::Dequeue { timers: true }));
    let d = end(&mut run, 0, Outcome::BudgetExceeded);
    assert_eq!(
        said(&d),
        [
            "attempt_ended a",
            "step a failed",
            "step c skipped",
            "objective failed"
        ]
    );
    assert_eq!(run.steps[0].message, why);
    assert_eq!(run.obj.message, why);
}

#[test]
fn a_second_exhaustion_changes_nothing() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::Exhaust {
            why: "first".into(),
        },
    );
    let d = ok(
        &mut run,
        Input::Exhaust {
            why: "second".into(),
        },
    );
    assert!(d.is_empty());
    assert_eq!(run.exhausted.as_deref(), Some("first"));
}

#[test]
fn an_exhausted_budget_beats_a_retry_and_a_rate_limit() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::RateLimited {
            step: 0,
            attempt: 1,
            until_ms: T0 + 5_000,
        },
    );
    ok(
        &mut run,
        Input::Exhaust {
            why: "daily".into(),
        },
    );
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [S::Failed]);
    assert_eq!(run.obj.state, ObjState::Failed);
}

// ------------------------------------------------------------ cancel

#[test]
fn cancel_stops_running_attempts_and_cancels_the_rest_at_once() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[]), plan("c", &["a"])]);
    start(&mut run, 0);
    let d = ok(&mut run, Input::Cancel { by: 7 });
    assert_eq!(said(&d), ["step b cancelled", "step c cancelled"]);
    assert_eq!(run.steps[1].message, "cancelled by uid 7");
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Stop(StopReason::Cancelled)
        }
    ));
    assert_eq!(run.obj.state, ObjState::Running);
    let d = end(&mut run, 0, Outcome::Cancelled);
    assert_eq!(
        said(&d),
        ["attempt_ended a", "step a cancelled", "objective cancelled"]
    );
    assert!(has(&d, &Effect::Ended));
}

#[test]
fn an_attempt_failing_while_its_objective_is_cancelled_is_cancelled_not_retried() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Cancel { by: 0 });
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [S::Cancelled]);
    assert_eq!(run.obj.state, ObjState::Cancelled);
}

#[test]
fn cancel_arriving_mid_backoff_ends_the_objective_and_drops_its_timer() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::ExitFailure);
    let d = ok(&mut run, Input::Cancel { by: OWNER });
    assert_eq!(said(&d), ["step a cancelled", "objective cancelled"]);
    assert!(has(&d, &Effect::Dequeue { timers: true }));
    assert!(has(&d, &Effect::Ended));
    assert_eq!(run.steps[0].next_attempt_ms, None);
}

#[test]
fn a_second_cancel_is_accepted_and_does_nothing() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Cancel { by: 0 });
    assert!(ok(&mut run, Input::Cancel { by: 0 }).is_empty());
}

// ------------------------------------------------------------ pause and resume

#[test]
fn pause_holds_ready_steps_and_freezes_running_ones() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[]), plan("c", &["a"])]);
    start(&mut run, 0);
    let d = ok(&mut run, Input::Pause { by: 5 });
    assert_eq!(
        said(&d),
        ["objective paused", "step a paused", "step b paused"]
    );
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Pause
        }
    ));
    assert!(has(&d, &Effect::Dequeue { timers: false }));
    assert_eq!(run.obj.state, ObjState::Paused);
}

#[test]
fn pause_is_refused_twice_and_while_cancelling() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    assert_eq!(
        refused(&mut run, Input::Pause { by: 0 }),
        Invalid::FailedPrecondition("objective OBJ is already paused".into())
    );
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Cancel { by: 0 });
    assert_eq!(
        refused(&mut run, Input::Pause { by: 0 }),
        Invalid::FailedPrecondition("objective OBJ is being cancelled".into())
    );
}

#[test]
fn resume_is_refused_unless_paused() {
    let mut run = run_of(vec![plan("a", &[])]);
    assert_eq!(
        refused(&mut run, Input::Resume { by: 0 }),
        Invalid::FailedPrecondition("objective OBJ is pending, not paused".into())
    );
}

#[test]
fn resume_thaws_running_attempts_queues_held_steps_and_derives_the_state_again() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    let d = ok(&mut run, Input::Resume { by: 0 });
    assert_eq!(
        said(&d),
        ["step a running", "step b ready", "objective running"]
    );
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Resume
        }
    ));
    assert!(has(&d, &Effect::Enqueue { step: 1 }));
}

#[test]
fn a_step_finishing_while_paused_holds_its_dependents() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &["a"])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    end(&mut run, 0, Outcome::Success);
    assert_eq!(states(&run), [S::Succeeded, S::Paused]);
    assert_eq!(run.obj.state, ObjState::Paused);
}

#[test]
fn a_backoff_timer_firing_while_paused_holds_the_step() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::ExitFailure);
    ok(&mut run, Input::Pause { by: 0 });
    assert_eq!(states(&run), [S::Backoff]);
    let d = ok(&mut run, Input::TimerFired { step: 0 });
    assert_eq!(said(&d), ["step a paused"]);
    assert!(d.effects.is_empty());
}

#[test]
fn the_last_step_failing_while_paused_still_ends_the_objective() {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.obj.state, ObjState::Failed);
    assert!(has(&d, &Effect::Ended));
}

// ------------------------------------------------------------ approvals

#[test]
fn approve_readies_the_step_and_deny_fails_it_and_its_dependents() {
    let mut run = run_of(vec![gated("a", &[]), plan("b", &["a"])]);
    let d = ok(
        &mut run,
        Input::Approve {
            step: "a".into(),
            approve: true,
            reason: String::new(),
            by: 9,
        },
    );
    assert_eq!(
        said(&d),
        ["approval_answered a", "step a ready", "objective pending"]
    );
    assert_eq!(run.steps[0].message, "approved by uid 9");
    let mut run = run_of(vec![gated("a", &[]), plan("b", &["a"])]);
    let d = ok(
        &mut run,
        Input::Approve {
            step: "a".into(),
            approve: false,
            reason: "too risky".into(),
            by: 9,
        },
    );
    assert_eq!(
        said(&d),
        [
            "approval_answered a",
            "step a failed",
            "step b skipped",
            "objective failed"
        ]
    );
    assert_eq!(run.steps[0].message, "denied by uid 9: too risky");
}

#[test]
fn approvals_are_refused_for_unknown_steps_and_steps_not_waiting() {
    let mut run = run_of(vec![gated("a", &[]), plan("b", &[])]);
    let answer = |step: &str| Input::Approve {
        step: step.into(),
        approve: true,
        reason: String::new(),
        by: 0,
    };
    assert_eq!(
        refused(&mut run, answer("zz")),
        Invalid::NotFound("objective OBJ has no step `zz`".into())
    );
    assert_eq!(
        refused(&mut run, answer("b")),
        Invalid::FailedPrecondition("step `b` is not awaiting approval (ready)".into())
    );
}

#[test]
fn pause_during_approval_keeps_the_gate_and_an_approval_then_holds_the_step() {
    let mut run = run_of(vec![gated("a", &[])]);
    ok(&mut run, Input::Pause { by: 0 });
    assert_eq!(states(&run), [S::AwaitingApproval]);
    ok(
        &mut run,
        Input::Approve {
            step: "a".into(),
            approve: true,
            reason: String::new(),
            by: 0,
        },
    );
    assert_eq!(states(&run), [S::Paused]);
    let d = ok(&mut run, Input::Resume { by: 0 });
    assert!(has(&d, &Effect::Enqueue { step: 0 }));
}

#[test]
fn cancel_during_approval_cancels_the_gate() {
    let mut run = run_of(vec![gated("a", &[])]);
    let d = ok(&mut run, Input::Cancel { by: 0 });
    assert_eq!(said(&d), ["step a cancelled", "objective cancelled"]);
}

// ------------------------------------------------------------ ended objectives and retry

fn ended_run() -> Run {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    let mut run = run_of(vec![p, plan("b", &["a"]), plan("c", &[])]);
    start(&mut run, 0);
    start(&mut run, 2);
    end(&mut run, 2, Outcome::Success);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.obj.state, ObjState::Failed);
    run
}

#[test]
fn control_of_an_ended_objective_is_refused_saying_so() {
    let mut run = ended_run();
    for (input, verb) in [
        (Input::Cancel { by: 0 }, "cancel"),
        (Input::Pause { by: 0 }, "pause"),
        (Input::Resume { by: 0 }, "resume"),
        (Input::Exhaust { why: String::new() }, "change"),
    ] {
        assert_eq!(
            refused(&mut run, input),
            Invalid::FailedPrecondition(format!(
                "cannot {verb} objective OBJ: it has already ended (failed)"
            ))
        );
    }
}

#[test]
fn retry_of_an_objective_that_has_not_ended_is_refused() {
    let mut run = run_of(vec![plan("a", &[])]);
    assert_eq!(
        refused(&mut run, Input::Retry { step: None, by: 0 }),
        Invalid::FailedPrecondition(
            "objective OBJ has not ended; only an ended objective can be retried".into()
        )
    );
}

#[test]
fn retry_reruns_failed_steps_and_what_they_skipped_with_fresh_attempts() {
    let mut run = ended_run();
    let d = ok(&mut run, Input::Retry { step: None, by: 3 });
    assert_eq!(
        said(&d),
        [
            "step a waiting",
            "step b waiting",
            "step a ready",
            "objective running"
        ]
    );
    assert_eq!(states(&run), [S::Ready, S::Waiting, S::Succeeded]);
    assert_eq!(run.steps[0].counted_attempts, 0);
    assert_eq!(run.steps[0].attempts, 1, "attempt numbers keep growing");
    assert_eq!(run.obj.ended_seq, None);
    assert!(run.obj.message.is_empty());
}

#[test]
fn retry_of_one_step_is_refused_unless_it_failed_or_was_cancelled() {
    let mut run = ended_run();
    assert_eq!(
        refused(
            &mut run,
            Input::Retry {
                step: Some("c".into()),
                by: 0
            }
        ),
        Invalid::FailedPrecondition(
            "step `c` is succeeded; only failed or cancelled steps can be retried".into()
        )
    );
    assert_eq!(
        refused(
            &mut run,
            Input::Retry {
                step: Some("x".into()),
                by: 0
            }
        ),
        Invalid::NotFound("objective OBJ has no step `x`".into())
    );
}

#[test]
fn retry_with_nothing_to_rerun_is_refused() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::Success);
    assert_eq!(
        refused(&mut run, Input::Retry { step: None, by: 0 }),
        Invalid::FailedPrecondition(
            "objective OBJ has no failed or cancelled step to retry".into()
        )
    );
}

// ------------------------------------------------------------ recovery

#[test]
fn recovery_ends_open_attempts_interrupted_and_runs_their_steps_again() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[])]);
    start(&mut run, 0);
    start(&mut run, 1);
    end(&mut run, 1, Outcome::ExitFailure);
    let open = run
        .running
        .get(&0)
        .map(|r| r.attempt.clone())
        .into_iter()
        .collect();
    // As loaded from the store: nothing is known to run.
    let mut loaded = Run::new(run.obj.clone(), run.steps.clone());
    let d = ok(
        &mut loaded,
        Input::Recover {
            gone: open,
            kept: vec![],
        },
    );
    assert_eq!(said(&d), ["attempt_ended a", "step a ready"]);
    assert_eq!(d.attempts[0].outcome, Some(Outcome::Interrupted));
    assert!(has(&d, &Effect::Enqueue { step: 0 }));
    assert!(has(
        &d,
        &Effect::Timer {
            step: 1,
            due: T0 + 2_000
        }
    ));
}

#[test]
fn recovery_of_a_paused_objective_holds_its_steps() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    let open = vec![run.running[&0].attempt.clone()];
    let mut loaded = Run::new(run.obj.clone(), run.steps.clone());
    assert!(loaded.paused);
    let d = ok(
        &mut loaded,
        Input::Recover {
            gone: open,
            kept: vec![],
        },
    );
    assert_eq!(loaded.steps[0].message, "interrupted; held while paused");
    assert!(
        !d.effects
            .iter()
            .any(|e| matches!(e, Effect::Enqueue { .. }))
    );
}

#[test]
fn recovery_keeps_attempts_an_executor_reattached_to() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let kept = vec![run.running[&0].attempt.clone()];
    let mut loaded = Run::new(run.obj.clone(), run.steps.clone());
    let d = ok(&mut loaded, Input::Recover { gone: vec![], kept });
    assert!(d.events.is_empty());
    assert_eq!(states(&loaded), [S::Running]);
    assert!(loaded.running.contains_key(&0));
    end(&mut loaded, 0, Outcome::Success);
    assert_eq!(loaded.obj.state, ObjState::Succeeded);
}

// ------------------------------------------------------------ owners

#[test]
fn root_the_daemon_and_the_owner_may_act_others_may_not() {
    let daemon = 999;
    for (caller, allowed) in [(0, true), (daemon, true), (OWNER, true), (1001, false)] {
        let r = authorize(caller, daemon, OWNER, "cancel", "OBJ");
        assert_eq!(r.is_ok(), allowed, "uid {caller}");
    }
    assert_eq!(
        authorize(1001, daemon, OWNER, "pause", "OBJ"),
        Err(Invalid::PermissionDenied(
            "uid 1001 may not pause objective OBJ (owned by uid 1000)".into()
        ))
    );
}

// ------------------------------------------------------------ the end table

/// One row of the rule table: the situation and what must follow.
struct Row {
    outcome: Outcome,
    cancelling: bool,
    exhausted: bool,
    rate_limited: bool,
    fallback: bool,
    fallback_on_rate_limit: bool,
    attempts_left: bool,
    want: &'static str,
}

const fn row(outcome: Outcome, want: &'static str) -> Row {
    Row {
        outcome,
        cancelling: false,
        exhausted: false,
        rate_limited: false,
        fallback: false,
        fallback_on_rate_limit: false,
        attempts_left: true,
        want,
    }
}

fn word(n: &Next) -> &'static str {
    match n {
        Next::Succeeded => "succeeded",
        Next::Requeue(_) => "requeue",
        Next::Cancelled(_) => "cancelled",
        Next::Failed(_) => "failed",
        Next::Backoff { .. } => "backoff",
        Next::FallBack(_) => "fallback",
    }
}

#[test]
fn the_end_table_in_order_of_precedence() {
    use Outcome::*;
    let all = |r: Row| Row {
        cancelling: true,
        exhausted: true,
        rate_limited: true,
        fallback: true,
        ..r
    };
    let rows = [
        all(row(Success, "succeeded")),
        all(row(Interrupted, "requeue")),
        all(row(Cancelled, "cancelled")),
        all(row(ExitFailure, "cancelled")),
        Row {
            cancelling: false,
            ..all(row(ExitFailure, "failed"))
        },
        Row {
            rate_limited: true,
            fallback: true,
            ..row(BudgetExceeded, "failed")
        },
        Row {
            rate_limited: true,
            fallback: true,
            ..row(Timeout, "backoff")
        },
        Row {
            rate_limited: true,
            fallback: true,
            fallback_on_rate_limit: true,
            ..row(Timeout, "fallback")
        },
        Row {
            rate_limited: true,
            fallback_on_rate_limit: true,
            ..row(Timeout, "backoff")
        },
        Row {
            rate_limited: true,
            attempts_left: false,
            ..row(SpawnError, "backoff")
        },
        Row {
            fallback: true,
            ..row(ExitFailure, "backoff")
        },
        Row {
            fallback: true,
            attempts_left: false,
            ..row(ExitFailure, "fallback")
        },
        Row {
            fallback: true,
            ..row(SpawnError, "fallback")
        },
        row(SpawnError, "failed"),
        Row {
            attempts_left: false,
            ..row(MemoryLimit, "failed")
        },
        row(CpuLimit, "backoff"),
        row(Signaled, "backoff"),
    ];
    for (i, r) in rows.iter().enumerate() {
        let mut p = plan("a", &[]);
        if r.fallback {
            p.agent = "first".into();
            p.fallback = vec!["second".into()];
        }
        p.fallback_on_rate_limit = r.fallback_on_rate_limit;
        let mut s = Step::new("OBJ", 0, p);
        s.counted_attempts = if r.attempts_left { 1 } else { 3 };
        let next = next_after_end(
            &End::of(r.outcome, "m"),
            &s,
            r.cancelling,
            r.exhausted.then_some("budget"),
            r.rate_limited.then_some(500),
            0.0,
        );
        assert_eq!(
            word(&next),
            r.want,
            "row {i}: {:?} gave {next:?}",
            r.outcome
        );
    }
}

#[test]
fn retry_exit_codes_limit_which_failures_retry() {
    let mut p = plan("a", &[]);
    p.retry.retry_exit_codes = vec![75];
    let mut s = Step::new("OBJ", 0, p);
    s.counted_attempts = 1;
    let with = |code| End {
        exit_code: Some(code),
        ..End::of(Outcome::ExitFailure, "x")
    };
    assert_eq!(
        word(&next_after_end(&with(75), &s, false, None, None, 0.0)),
        "backoff"
    );
    assert_eq!(
        word(&next_after_end(&with(1), &s, false, None, None, 0.0)),
        "failed"
    );
}

#[test]
fn backoff_delays_grow_with_the_counted_attempts_and_take_the_jitter() {
    let mut s = Step::new("OBJ", 0, plan("a", &[]));
    s.plan.retry.jitter = 0.5;
    s.plan.retry.max_attempts = 10;
    let delay = |counted, jitter| {
        let mut s = s.clone();
        s.counted_attempts = counted;
        match next_after_end(
            &End::of(Outcome::Timeout, "t"),
            &s,
            false,
            None,
            None,
            jitter,
        ) {
            Next::Backoff { delay_ms, .. } => delay_ms,
            n => panic!("{n:?}"),
        }
    };
    assert_eq!(delay(1, 0.0), 2_000);
    assert_eq!(delay(2, 0.0), 4_000);
    assert_eq!(delay(1, 1.0), 3_000);
    assert_eq!(delay(1, -1.0), 1_000);
    assert_eq!(delay(9, 0.0), 60_000);
}

#[test]
fn which_ends_use_up_a_retry() {
    for (outcome, rate_limited, counts) in [
        (Outcome::Success, false, true),
        (Outcome::Success, true, true),
        (Outcome::Interrupted, false, false),
        (Outcome::ExitFailure, false, true),
        (Outcome::ExitFailure, true, false),
        (Outcome::Timeout, true, false),
        (Outcome::BudgetExceeded, false, true),
    ] {
        assert_eq!(
            counts_against_retries(outcome, rate_limited),
            counts,
            "{outcome:?} rate_limited={rate_limited}"
        );
    }
}
