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
    use FailureAction::*;
    for (outcome, rate_limited, action, counts) in [
        (Outcome::Success, false, Wait, true),
        (Outcome::Success, true, Wait, true),
        (Outcome::Interrupted, false, Wait, false),
        (Outcome::Interrupted, true, Retry, false),
        (Outcome::ExitFailure, false, Wait, true),
        (Outcome::ExitFailure, true, Wait, false),
        (Outcome::Timeout, true, Wait, false),
        (Outcome::BudgetExceeded, false, Wait, true),
        // A policy that retries rate limits instead of waiting pays an attempt for each.
        (Outcome::ExitFailure, true, Retry, true),
        (Outcome::ExitFailure, true, Fail, true),
    ] {
        let mut s = Step::new("OBJ", 0, plan("a", &[]));
        s.plan.retry.on_failure.rate_limited = action;
        assert_eq!(
            counts_against_retries(outcome, &s, rate_limited),
            counts,
            "{outcome:?} rate_limited={rate_limited} action={action:?}"
        );
    }
}

/// Every failure class under every action it may have, with and without a fallback
/// agent and with attempts left or used up: the `on_failure` table, row by row.
#[test]
fn each_failure_class_follows_its_on_failure_action() {
    use FailureAction::*;
    use FailureClass::*;
    // (class, action, has fallback, attempts left, want)
    let rows = [
        (RateLimited, Wait, false, true, "wait"),
        (RateLimited, Wait, false, false, "wait"),
        (RateLimited, Retry, false, true, "backoff"),
        (RateLimited, Retry, false, false, "failed"),
        (RateLimited, Retry, true, false, "fallback"),
        (RateLimited, Fallback, true, true, "fallback"),
        (RateLimited, Fallback, false, true, "failed"),
        (RateLimited, Fail, true, true, "failed"),
        (MaxTurns, Fallback, true, true, "fallback"),
        (MaxTurns, Fallback, false, true, "failed"),
        (MaxTurns, Retry, false, true, "backoff"),
        (MaxTurns, Retry, true, false, "fallback"),
        (MaxTurns, Fail, true, true, "failed"),
        (Auth, Fallback, true, true, "fallback"),
        (Auth, Fallback, false, true, "failed"),
        (Auth, Retry, false, true, "backoff"),
        (Auth, Fail, true, true, "failed"),
        (Overloaded, Retry, false, true, "backoff"),
        (Overloaded, Retry, false, false, "failed"),
        (Overloaded, Fallback, true, true, "fallback"),
        (Overloaded, Fail, true, true, "failed"),
        (Error, Retry, false, true, "backoff"),
        (Error, Retry, true, false, "fallback"),
        (Error, Fallback, true, true, "fallback"),
        (Error, Fail, false, true, "failed"),
    ];
    for (i, (class, action, fallback, attempts_left, want)) in rows.into_iter().enumerate() {
        let mut p = plan("a", &[]);
        if fallback {
            p.agent = "first".into();
            p.fallback = vec!["second".into()];
        }
        p.retry.on_failure.put(class, action);
        let mut s = Step::new("OBJ", 0, p);
        s.counted_attempts = if attempts_left { 1 } else { 3 };
        let limit = (class == RateLimited).then_some(RateLimit {
            wait_ms: 500,
            until_ms: T0 + 500,
        });
        let agent = (class != RateLimited).then_some(class);
        let next = next_after_end(
            &End::of(Outcome::ExitFailure, "m"),
            &s,
            false,
            None,
            limit,
            agent,
            0.0,
        );
        assert_eq!(
            word(&next),
            want,
            "row {i}: {class:?} {action:?} gave {next:?}"
        );
        if action == Fail {
            let Next::Failed(message) = &next else {
                panic!("row {i}: {next:?}")
            };
            assert!(
                message.contains(&format!("retry.on_failure.{} is \"fail\"", class.key())),
                "row {i}: the message names the setting: {message}"
            );
        }
    }
}

#[test]
fn the_default_on_failure_actions_are_the_documented_ones() {
    let d = crate::model::OnFailure::default();
    assert_eq!(
        d.entries(),
        vec![
            ("rate_limited", "wait"),
            ("max_turns", "fallback"),
            ("auth", "fallback"),
            ("overloaded", "retry"),
            ("error", "retry"),
        ]
    );
    // The keys are the vocabulary the plan parser and config check against.
    let keys: Vec<_> = d.entries().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, orch_proto::words::FAILURE_CLASSES);
}

#[test]
fn on_failure_entries_are_checked_and_say_what_is_wrong() {
    use crate::model::OnFailure;
    assert!(OnFailure::parse_entry("max_turns", "retry").is_ok());
    let e = OnFailure::parse_entry("max_turn", "retry").unwrap_err();
    assert!(e.contains("unknown failure class `max_turn`"), "{e}");
    let e = OnFailure::parse_entry("auth", "wait").unwrap_err();
    assert!(e.contains("only rate_limited"), "{e}");
    let e = OnFailure::parse_entry("error", "again").unwrap_err();
    assert!(e.contains("unknown action `again`"), "{e}");
}

#[test]
fn a_reported_reset_is_a_refusal_until_it_is_long_past() {
    const NOW: Millis = 5_000_000;
    let grace = RESET_PASSED_GRACE_MS;
    // (reset, wait it means, or None for an ordinary failure)
    let rows: [(Millis, Option<u64>); 6] = [
        (NOW + 60_000, Some(60_000)),
        (NOW + 1, Some(1)),
        (NOW, Some(0)),
        (NOW - 1_000, Some(0)),
        (NOW - grace, Some(0)),
        (NOW - grace - 1, None),
    ];
    for (until, want) in rows {
        let got = RateLimit::at_end(until, NOW);
        assert_eq!(got.map(|l| l.wait_ms), want, "reset {until}");
        if let Some(l) = got {
            assert_eq!(l.until_ms, until, "the message names the reset reported");
        }
    }
    assert_eq!(RateLimit::at_end(Millis::MIN, NOW), None);
    assert!(RateLimit::at_end(Millis::MAX, NOW).is_some());
}
