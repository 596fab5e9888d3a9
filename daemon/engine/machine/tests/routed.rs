//! Routed steps (`agent = "auto"`) in the core: a routing decision is recorded as an
//! `agent_routed` event and sets the attempt's agent; with no agent the step waits for
//! the earliest reset or fails; a rate limit routes again at once instead of waiting.

use super::*;
use crate::model::{RoutePriority, RouteSpec};
use routing::{Routed, Scored};

fn routed_plan(id: &str) -> StepPlan {
    let mut p = plan(id, &[]);
    p.agent = crate::model::AUTO_AGENT.into();
    p.command = vec![];
    p.route = Some(RouteSpec {
        priority: RoutePriority::Speed,
        tags: vec!["code".into()],
    });
    p
}

fn to(agent: Option<&str>, wait_until: Option<Millis>) -> Routed {
    Routed {
        agent: agent.map(String::from),
        reason: match agent {
            Some(a) => format!("fastest: {a}"),
            None => "nothing available".into(),
        },
        priority: RoutePriority::Speed,
        scores: vec![Scored {
            agent: "fast".into(),
            score: Some(10.0),
            excluded: String::new(),
        }],
        wait_until,
    }
}

fn route(run: &mut Run, s: u32, r: Routed) -> Decision {
    ok(run, Input::Route { step: s, routed: r })
}

fn start_as(run: &mut Run, s: u32, agent: &str) -> Decision {
    ok(
        run,
        Input::Start {
            step: s,
            agent: agent.into(),
            command: vec!["x".into()],
        },
    )
}

#[test]
fn a_routing_decision_is_an_event_and_names_the_attempts_agent_and_reason() {
    let mut run = run_of(vec![routed_plan("a")]);
    assert_eq!(run.steps[0].current_agent(), "");
    let d = route(&mut run, 0, to(Some("fast"), None));
    assert_eq!(said(&d), ["agent_routed a"]);
    assert_eq!(
        d.events[0].attempt, 1,
        "the event names the attempt it routes"
    );
    assert_eq!(run.steps[0].current_agent(), "fast");
    assert!(run.steps[0].agent_from_config());
    start_as(&mut run, 0, "fast");
    let a = &run.running[&0].attempt;
    assert_eq!(
        (a.agent.as_str(), a.route_reason.as_str()),
        ("fast", "fastest: fast")
    );
}

#[test]
fn another_agent_starts_its_own_session_but_keeps_the_checkpoint() {
    let mut run = run_of(vec![routed_plan("a")]);
    route(&mut run, 0, to(Some("fast"), None));
    start_as(&mut run, 0, "fast");
    ok(
        &mut run,
        Input::Session {
            step: 0,
            attempt: 1,
            id: "s-1".into(),
        },
    );
    ok(
        &mut run,
        Input::Checkpoint {
            step: 0,
            attempt: 1,
            json: "{\"done\":3}".into(),
        },
    );
    end(&mut run, 0, Outcome::Interrupted);
    assert_eq!(run.steps[0].session.as_deref(), Some("s-1"));
    // The same agent again: its session goes on.
    route(&mut run, 0, to(Some("fast"), None));
    assert_eq!(run.steps[0].session.as_deref(), Some("s-1"));
    // Another one: a new session, the same checkpoint.
    route(&mut run, 0, to(Some("slow"), None));
    assert_eq!(run.steps[0].session, None);
    assert_eq!(run.steps[0].checkpoint.as_deref(), Some("{\"done\":3}"));
}

#[test]
fn with_no_agent_the_step_waits_for_the_earliest_reset() {
    let mut run = run_of(vec![routed_plan("a")]);
    let due = T0 + 30_000;
    let d = route(&mut run, 0, to(None, Some(due)));
    assert_eq!(states(&run), [StepState::Backoff]);
    assert!(d.effects.contains(&Effect::Timer { step: 0, due }));
    assert_eq!(run.steps[0].next_attempt_ms, Some(due));
    assert_eq!(run.steps[0].message, "nothing available");
    ok(&mut run, Input::TimerFired { step: 0 });
    assert_eq!(states(&run), [StepState::Ready]);
}

#[test]
fn with_no_agent_and_no_reset_coming_the_step_fails_saying_why() {
    let mut run = run_of(vec![routed_plan("a"), plan("b", &["a"])]);
    route(&mut run, 0, to(None, None));
    assert_eq!(states(&run), [StepState::Failed, StepState::Skipped]);
    assert_eq!(run.steps[0].message, "nothing available");
}

#[test]
fn a_rate_limited_routed_step_is_routed_again_at_once_without_a_wait() {
    let mut run = run_of(vec![routed_plan("a")]);
    route(&mut run, 0, to(Some("fast"), None));
    start_as(&mut run, 0, "fast");
    rate_limit(&mut run, 0, T0 + 3_600_000);
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [StepState::Ready]);
    assert!(d.effects.contains(&Effect::Enqueue { step: 0 }));
    assert!(!d.effects.iter().any(|e| matches!(e, Effect::Timer { .. })));
    assert_eq!(run.steps[0].message, tables::ROUTE_AROUND_LIMIT);
    assert_eq!(run.steps[0].counted_attempts, 0, "no attempt was used up");
    assert_eq!(run.steps[0].rate_limit_waits, 0);
}

#[test]
fn only_a_ready_routed_step_takes_a_routing_decision() {
    let mut run = run_of(vec![plan("fixed", &[])]);
    refused(
        &mut run,
        Input::Route {
            step: 0,
            routed: to(Some("fast"), None),
        },
    );
    let mut run = run_of(vec![routed_plan("a")]);
    route(&mut run, 0, to(Some("fast"), None));
    start_as(&mut run, 0, "fast");
    refused(
        &mut run,
        Input::Route {
            step: 0,
            routed: to(Some("fast"), None),
        },
    );
}
