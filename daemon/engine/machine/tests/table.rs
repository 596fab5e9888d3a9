//! The rule table of what follows an attempt's end, row by row.

use super::*;

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
    /// Every `max_rate_limit_waits` already made.
    waits_used: bool,
    /// What the agent said of its failure.
    agent_failure: Option<FailureClass>,
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
        waits_used: false,
        agent_failure: None,
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
        Next::RateLimitWait { .. } => "wait",
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
            ..row(Timeout, "wait")
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
            ..row(Timeout, "wait")
        },
        Row {
            rate_limited: true,
            attempts_left: false,
            ..row(SpawnError, "wait")
        },
        Row {
            rate_limited: true,
            waits_used: true,
            ..row(ExitFailure, "failed")
        },
        Row {
            rate_limited: true,
            waits_used: true,
            fallback: true,
            fallback_on_rate_limit: true,
            ..row(ExitFailure, "fallback")
        },
        Row {
            waits_used: true,
            ..row(ExitFailure, "backoff")
        },
        Row {
            agent_failure: Some(FailureClass::MaxTurns),
            ..row(ExitFailure, "failed")
        },
        Row {
            agent_failure: Some(FailureClass::Auth),
            fallback: true,
            ..row(ExitFailure, "fallback")
        },
        Row {
            agent_failure: Some(FailureClass::Overloaded),
            ..row(ExitFailure, "backoff")
        },
        Row {
            agent_failure: Some(FailureClass::Error),
            attempts_left: false,
            ..row(ExitFailure, "failed")
        },
        Row {
            agent_failure: Some(FailureClass::MaxTurns),
            cancelling: true,
            ..row(ExitFailure, "cancelled")
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
        s.rate_limit_waits = if r.waits_used { 10 } else { 9 };
        let limit = RateLimit {
            wait_ms: 500,
            until_ms: T0 + 500,
        };
        let next = next_after_end(
            &End::of(r.outcome, "m"),
            &s,
            r.cancelling,
            r.exhausted.then_some("budget"),
            r.rate_limited.then_some(limit),
            r.agent_failure,
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
        word(&next_after_end(&with(75), &s, false, None, None, None, 0.0)),
        "backoff"
    );
    assert_eq!(
        word(&next_after_end(&with(1), &s, false, None, None, None, 0.0)),
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
