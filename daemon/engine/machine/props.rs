//! Property tests of the core: random plans driven by random input sequences, checking
//! after every input the invariants the rest of orch relies on.

use proptest::prelude::*;

use super::*;
use crate::model::{Outcome, StepRole, Usage};

const T0: Millis = 5_000_000;

/// A random plan: up to 4 steps, each needing some earlier ones, some gated, some with
/// a fallback agent, with 1–3 attempts.
fn plans() -> impl Strategy<Value = Vec<StepPlan>> {
    prop::collection::vec(
        (
            any::<u8>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            1u32..4,
        ),
        1..5,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (needs, gate, fallback, on_rate, max_attempts))| {
                let needs: Vec<String> = (0..i)
                    .filter(|j| needs & (1 << j) != 0)
                    .map(|j| format!("s{j}"))
                    .collect();
                let needs: Vec<&str> = needs.iter().map(String::as_str).collect();
                let mut p = StepPlan::literal(&format!("s{i}"), &needs);
                if fallback {
                    p.agent = "first".into();
                    p.fallback = vec!["second".into()];
                }
                p.retry.max_attempts = max_attempts;
                p.requires_approval = gate;
                p.fallback_on_rate_limit = on_rate;
                p
            })
            .collect()
    })
}

/// What a driver may do next; step indexes are taken modulo the plan's length.
#[derive(Debug, Clone)]
enum Act {
    Start(u32),
    End(u32, Outcome),
    RateLimit(u32),
    Timer(u32),
    Approve(u32, bool),
    Cancel,
    Pause,
    Resume,
    Exhaust,
    Retry,
    Usage(u32),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop::sample::select(vec![
        Outcome::Success,
        Outcome::Success,
        Outcome::ExitFailure,
        Outcome::Signaled,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::Interrupted,
        Outcome::Cancelled,
        Outcome::BudgetExceeded,
        Outcome::SpawnError,
    ])
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (0u32..4).prop_map(Act::Start),
        4 => (0u32..4, outcome()).prop_map(|(s, o)| Act::End(s, o)),
        1 => (0u32..4).prop_map(Act::RateLimit),
        2 => (0u32..4).prop_map(Act::Timer),
        2 => (0u32..4, any::<bool>()).prop_map(|(s, a)| Act::Approve(s, a)),
        1 => Just(Act::Cancel),
        1 => Just(Act::Pause),
        1 => Just(Act::Resume),
        1 => Just(Act::Exhaust),
        1 => Just(Act::Retry),
        1 => (0u32..4).prop_map(Act::Usage),
    ]
}

fn input(run: &Run, a: &Act) -> Input {
    let n = run.steps.len() as u32;
    let attempt = |s: u32| run.steps[(s % n) as usize].attempts;
    let name = |s: u32| run.steps[(s % n) as usize].plan.id.clone();
    match a {
        Act::Start(s) => Input::Start {
            step: s % n,
            agent: String::new(),
            command: vec![],
        },
        Act::End(s, o) => Input::Ended {
            step: s % n,
            attempt: attempt(*s),
            end: End::of(*o, "ended"),
        },
        Act::RateLimit(s) => Input::RateLimited {
            step: s % n,
            attempt: attempt(*s),
            until_ms: Some(T0 + 1_000),
            wait_ms: 0,
        },
        Act::Timer(s) => Input::TimerFired { step: s % n },
        Act::Approve(s, approve) => Input::Approve {
            step: name(*s),
            approve: *approve,
            reason: String::new(),
            by: 1,
        },
        Act::Cancel => Input::Cancel { by: 1 },
        Act::Pause => Input::Pause { by: 1 },
        Act::Resume => Input::Resume { by: 1 },
        Act::Exhaust => Input::Exhaust {
            why: "budget".into(),
        },
        Act::Retry => Input::Retry {
            step: None,
            fresh: false,
            by: 1,
        },
        Act::Usage(s) => Input::Usage {
            step: s % n,
            attempt: attempt(*s),
            delta: Usage {
                input_tokens: 1,
                output_tokens: 1,
                cost_usd: 0.01,
                ..Usage::default()
            },
            model: String::new(),
        },
    }
}

fn objective(n: usize) -> Objective {
    Objective::pending("P", n, 1, T0)
}

/// The invariants that hold after every input.
fn check(run: &Run) -> Result<(), TestCaseError> {
    let derived = planner::derived_state(run);
    if run.paused && !derived.is_terminal() {
        prop_assert_eq!(run.obj.state, ObjState::Paused);
    } else {
        prop_assert_eq!(
            run.obj.state,
            derived,
            "the objective's state is derived from its steps"
        );
    }
    for (index, r) in &run.running {
        let s = &run.steps[*index as usize];
        prop_assert!(
            matches!(s.state, StepState::Running | StepState::Paused),
            "a step with a running attempt is running or paused, not {:?}",
            s.state
        );
        prop_assert_eq!(
            r.attempt.number,
            s.attempts,
            "the running attempt is the step's last"
        );
    }
    for s in &run.steps {
        if s.state == StepState::Running {
            prop_assert!(
                run.running.contains_key(&s.index),
                "a running step has an attempt"
            );
        }
        prop_assert!(
            s.counted_attempts <= s.attempts,
            "counted attempts are attempts"
        );
    }
    if run.obj.state.is_terminal() {
        prop_assert!(run.running.is_empty(), "an ended objective runs nothing");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_inputs(plans in plans(), acts in prop::collection::vec(act(), 1..60)) {
        let n = plans.len();
        let ctx = Ctx::at(T0);
        let (mut run, first) = submit(objective(n), plans, ctx);
        check(&run)?;
        let submitted = matches!(first.events.first().map(|e| &e.kind), Some(EventKind::ObjectiveSubmitted { .. }));
        prop_assert!(submitted, "a submit is recorded first");
        for a in &acts {
            let before = run.clone();
            let input = input(&run, a);
            let retry = matches!(input, Input::Retry { .. });
            match step(&mut run, input, ctx) {
                Err(_) => prop_assert_eq!(&run, &before, "a refused input changes nothing"),
                Ok(d) => {
                    check(&run)?;
                    // A terminal state is never left except by retry.
                    if before.obj.state.is_terminal() {
                        prop_assert!(retry, "only retry reopens an ended objective");
                    }
                    for (b, s) in before.steps.iter().zip(&run.steps) {
                        if b.state.is_terminal() && !retry {
                            prop_assert_eq!(s.state, b.state, "a terminal step stays terminal");
                        }
                        // Attempt numbers only grow.
                        prop_assert!(s.attempts >= b.attempts);
                    }
                    // Every event of a transition is emitted once.
                    for (i, e) in d.events.iter().enumerate() {
                        prop_assert!(!d.events[i + 1..].contains(e), "event {:?} emitted twice", e);
                    }
                    // The objective ends exactly when it becomes terminal.
                    let ended = d.effects.contains(&Effect::Ended);
                    prop_assert_eq!(ended, !before.obj.state.is_terminal() && run.obj.state.is_terminal());
                    // Every state change is recorded, and only real changes are.
                    for (b, s) in before.steps.iter().zip(&run.steps) {
                        let said = d.events.iter().any(|e| {
                            e.step_id == s.plan.id && matches!(e.kind, EventKind::StepState { .. })
                        });
                        if b.state != s.state {
                            prop_assert!(said, "step {} went {:?} -> {:?} silently", s.plan.id, b.state, s.state);
                            prop_assert!(d.steps.contains(&s.index), "a changed step is written");
                        }
                    }
                    if before.obj.state != run.obj.state {
                        prop_assert!(d.objective, "a changed objective is written");
                    }
                    // Attempts written carry growing numbers per step.
                    for a in &d.attempts {
                        prop_assert!(a.number <= run.steps[a.step_index as usize].attempts);
                    }
                }
            }
        }
    }

    #[test]
    fn an_objective_driven_to_the_end_always_ends(plans in plans(), seed in any::<u64>()) {
        // A cooperative driver: approve every gate, start every ready step, fire every
        // timer, end attempts by a seeded pattern; the objective must end.
        let n = plans.len();
        let ctx = Ctx::at(T0);
        let (mut run, _) = submit(objective(n), plans, ctx);
        let mut rng = seed;
        for _ in 0..400 {
            if run.obj.state.is_terminal() {
                break;
            }
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let pick = (rng >> 33) as u32;
            let s = (pick as usize) % n;
            let step_state = run.steps[s].state;
            let input = match step_state {
                StepState::AwaitingApproval => Input::Approve { step: run.steps[s].plan.id.clone(), approve: true, reason: String::new(), by: 1 },
                StepState::Ready => Input::Start { step: s as u32, agent: String::new(), command: vec![] },
                StepState::Backoff => Input::TimerFired { step: s as u32 },
                StepState::Running => Input::Ended {
                    step: s as u32,
                    attempt: run.steps[s].attempts,
                    end: End::of(if pick.is_multiple_of(3) { Outcome::ExitFailure } else { Outcome::Success }, "x"),
                },
                _ => continue,
            };
            let _ = step(&mut run, input, ctx).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check(&run)?;
        }
        prop_assert!(run.obj.state.is_terminal(), "still {:?} with steps {:?}", run.obj.state, run.steps.iter().map(|s| s.state).collect::<Vec<_>>());
    }

    #[test]
    fn a_goal_only_objective_always_ends_within_its_rounds(
        max_rounds in 1u32..4,
        verify in any::<bool>(),
        approve_plan in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // A cooperative driver of rounds: planner attempts propose a valid plan or not,
        // plans are approved, steps succeed or fail, verdicts pass or fail, by a seed.
        let ctx = Ctx::at(T0);
        let (mut run, _) = submit(goal_objective(max_rounds, verify, approve_plan), vec![first_plan_step()], ctx);
        let mut rng = seed;
        for _ in 0..600 {
            if run.obj.state.is_terminal() {
                break;
            }
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let pick = (rng >> 33) as u32;
            let n = run.steps.len();
            let s = (pick as usize) % n;
            let step_ref = &run.steps[s];
            let attempt = step_ref.attempts;
            let input = match (step_ref.state, step_ref.plan.role) {
                (StepState::AwaitingApproval, _) => Input::Approve { step: step_ref.plan.id.clone(), approve: true, reason: String::new(), by: 1 },
                (StepState::Ready, _) => Input::Start { step: s as u32, agent: String::new(), command: vec![] },
                (StepState::Backoff, _) => Input::TimerFired { step: s as u32 },
                (StepState::Running, StepRole::Plan) => Input::PlanEnded {
                    step: s as u32,
                    attempt,
                    end: End::of(Outcome::Success, ""),
                    plan: Some(if pick.is_multiple_of(4) {
                        Err("steps: invalid".into())
                    } else {
                        let a = StepPlan::literal("a", &[]);
                        let b = StepPlan::literal("b", &["a"]);
                        Ok(planner::Proposal { steps: vec![a, b], text: "{}".into() })
                    }),
                },
                (StepState::Running, StepRole::Verify) if pick.is_multiple_of(2) => Input::Verdict {
                    step: s as u32,
                    attempt,
                    verdict: crate::model::Verdict { pass: pick.is_multiple_of(3), findings: "f".into() },
                },
                (StepState::Running, _) => Input::Ended {
                    step: s as u32,
                    attempt,
                    end: End::of(if pick.is_multiple_of(5) { Outcome::ExitFailure } else { Outcome::Success }, "x"),
                },
                _ => continue,
            };
            let _ = step(&mut run, input, ctx).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check(&run)?;
            let p = run.obj.planner.as_deref().ok_or_else(|| TestCaseError::fail("no planner"))?;
            prop_assert!(p.rounds.len() as u32 <= max_rounds, "{} rounds of {max_rounds}", p.rounds.len());
            let round = p.round();
            for st in run.steps.iter().filter(|st| st.plan.round < round) {
                prop_assert!(st.state.is_terminal(), "step {} of an earlier round is {:?}", st.plan.id, st.state);
            }
            let mut ids: Vec<&str> = run.steps.iter().map(|st| st.plan.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), run.steps.len(), "step ids are unique");
        }
        prop_assert!(run.obj.state.is_terminal(), "still {:?}", run.obj.state);
        let p = run.obj.planner.as_deref().ok_or_else(|| TestCaseError::fail("no planner"))?;
        let last = p.current().map(|r| r.phase);
        match run.obj.state {
            ObjState::Succeeded => prop_assert_eq!(last, Some(crate::model::RoundPhase::Passed)),
            _ => {
                prop_assert_eq!(last, Some(crate::model::RoundPhase::Failed));
                prop_assert!(!run.obj.message.is_empty(), "a failed goal says why");
            }
        }
    }
}

fn first_plan_step() -> StepPlan {
    let mut p = StepPlan::literal("r1.plan", &[]);
    p.role = StepRole::Plan;
    p.round = 1;
    p.retry.max_attempts = 2;
    p
}

fn goal_objective(max_rounds: u32, verify: bool, approve_plan: bool) -> Objective {
    let mut obj = objective(1);
    let mut plan_step = first_plan_step();
    plan_step.id = "plan".into();
    obj.planner = Some(Box::new(crate::model::Planner {
        agent: "planner".into(),
        verifier: String::new(),
        verify_command: vec![],
        max_rounds,
        approve_plan,
        plan_step,
        verify_step: verify.then(|| {
            let mut v = StepPlan::literal("verify", &[]);
            v.role = StepRole::Verify;
            v.retry.max_attempts = 1;
            v
        }),
        workdir: "/".into(),
        rounds: vec![crate::model::Round {
            number: 1,
            ..Default::default()
        }],
    }));
    obj
}
