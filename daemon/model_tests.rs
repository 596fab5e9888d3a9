//! Unit tests of `model.rs`.
use super::*;

#[test]
fn templates_expand_once() {
    let vars = [("prompt", "say {workdir} and {prompt}"), ("workdir", "/w")];
    assert_eq!(
        expand_template("{prompt}", &vars),
        "say {workdir} and {prompt}"
    );
    assert_eq!(expand_template("--dir={workdir}/x", &vars), "--dir=/w/x");
    assert_eq!(expand_template("{unknown} {", &vars), "{unknown} {");
    assert_eq!(expand_template("{step_id}", &vars), "{step_id}");
}

#[test]
fn backoff_stays_finite_and_capped_whatever_the_numbers() {
    let p = RetryPolicy {
        initial_backoff_ms: u64::MAX,
        max_backoff_ms: u64::MAX,
        multiplier: 1e308,
        jitter: 1.0,
        ..RetryPolicy::default()
    };
    for n in [2, 3, 1000, u32::MAX] {
        assert_eq!(p.delay_ms(n, 1.0), u64::MAX, "saturates, n = {n}");
    }
    let p = RetryPolicy {
        initial_backoff_ms: 1_000,
        max_backoff_ms: 5_000,
        multiplier: f64::INFINITY,
        jitter: f64::NAN,
        ..RetryPolicy::default()
    };
    assert_eq!(p.delay_ms(u32::MAX, 1.0), 5_000);
    let none = RetryPolicy {
        initial_backoff_ms: 0,
        multiplier: 1e308,
        ..p
    };
    assert_eq!(none.delay_ms(10_000, 0.0), 0, "0 × ∞ is no backoff");
}

#[test]
fn backoff_formula() {
    let p = RetryPolicy {
        initial_backoff_ms: 2_000,
        max_backoff_ms: 60_000,
        multiplier: 2.0,
        jitter: 0.2,
        ..Default::default()
    };
    assert_eq!(p.delay_ms(2, 0.0), 2_000);
    assert_eq!(p.delay_ms(3, 0.0), 4_000);
    assert_eq!(p.delay_ms(4, 0.0), 8_000);
    assert_eq!(p.delay_ms(10, 0.0), 60_000);
    assert_eq!(p.delay_ms(2, 1.0), 2_400);
    assert_eq!(p.delay_ms(2, -1.0), 1_600);
}

#[test]
fn retry_rules() {
    let mut p = RetryPolicy::default();
    assert!(p.retries(Outcome::ExitFailure, Some(1)));
    assert!(!p.retries(Outcome::SpawnError, None));
    assert!(!p.retries(Outcome::Cancelled, None));
    assert!(!p.retries(Outcome::BudgetExceeded, None));
    p.retry_exit_codes = vec![75];
    assert!(p.retries(Outcome::ExitFailure, Some(75)));
    assert!(!p.retries(Outcome::ExitFailure, Some(1)));
    assert!(p.retries(Outcome::Timeout, None));
}

fn step(state: StepState, attempts: u32) -> Step {
    let plan = StepPlan::literal("s", &[]);
    Step {
        state,
        attempts,
        counted_attempts: attempts,
        ..Step::new("o", 0, plan)
    }
}

fn derive_objective_state_t(steps: &[Step]) -> ObjState {
    derive_objective_state(steps, false)
}

#[test]
fn cancel_wins_once_everything_stopped() {
    use StepState::*;
    assert_eq!(
        derive_objective_state(&[step(Failed, 1), step(Cancelled, 0)], true),
        ObjState::Cancelled
    );
    assert_eq!(
        derive_objective_state(&[step(Running, 1), step(Cancelled, 0)], true),
        ObjState::Running
    );
}

#[test]
fn objective_state_from_steps() {
    use StepState::*;
    assert_eq!(
        derive_objective_state_t(&[step(Ready, 0)]),
        ObjState::Pending
    );
    assert_eq!(
        derive_objective_state_t(&[step(Running, 1)]),
        ObjState::Running
    );
    assert_eq!(
        derive_objective_state_t(&[step(Succeeded, 1), step(Succeeded, 1)]),
        ObjState::Succeeded
    );
    assert_eq!(
        derive_objective_state_t(&[step(Failed, 1), step(Skipped, 0)]),
        ObjState::Failed
    );
    assert_eq!(
        derive_objective_state_t(&[step(Succeeded, 1), step(Running, 1)]),
        ObjState::Running
    );
    assert_eq!(
        derive_objective_state_t(&[step(Succeeded, 1), step(AwaitingApproval, 0)]),
        ObjState::AwaitingApproval
    );
    assert_eq!(
        derive_objective_state_t(&[step(Cancelled, 1), step(Skipped, 0)]),
        ObjState::Cancelled
    );
}
