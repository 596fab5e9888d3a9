//! The rules of what follows an attempt's end, as data: the precedence of success,
//! interruption, cancel, an exhausted budget, a provider's rate limit, retries and
//! fallback agents lives here and nowhere else.

pub use crate::model::End;
use crate::model::{Outcome, Step};

/// What becomes of a step after one of its attempts ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Succeeded,
    /// Runs again without using up a retry (held while paused), with this message.
    Requeue(String),
    Cancelled(String),
    Failed(String),
    /// Waits in `backoff`, then runs again.
    Backoff {
        delay_ms: u64,
        message: String,
    },
    /// The next fallback agent takes over with a fresh set of attempts.
    FallBack(String),
}

/// Whether an attempt's end uses up one of the step's `max_attempts`: neither an
/// interruption nor a provider's rate limit does.
pub fn counts_against_retries(outcome: Outcome, rate_limited: bool) -> bool {
    match outcome {
        Outcome::Interrupted => false,
        Outcome::Success => true,
        _ => !rate_limited,
    }
}

/// The rule table, first match wins (`step.counted_attempts` already counts this end):
///
/// | # | condition                                   | next                          |
/// |---|---------------------------------------------|-------------------------------|
/// | 1 | success                                     | succeeded                     |
/// | 2 | interrupted                                 | requeue (no retry used)       |
/// | 3 | cancelled, or the objective is cancelling   | cancelled                     |
/// | 4 | a budget covering the objective ran out     | failed, saying which budget   |
/// | 5 | budget_exceeded                             | failed                        |
/// | 6 | rate limited, no fallback on rate limit     | backoff until the reset       |
/// | 7 | rate limited, fallback on rate limit        | next fallback agent           |
/// | 8 | the policy retries it and attempts are left | backoff (exponential, jitter) |
/// | 9 | a fallback agent is left                    | next fallback agent           |
/// | 10| otherwise                                   | failed                        |
pub fn next_after_end(
    end: &End,
    step: &Step,
    cancelling: bool,
    exhausted: Option<&str>,
    rate_limited_for: Option<u64>,
    jitter: f64,
) -> Next {
    let policy = &step.plan.retry;
    let has_fallback = (step.agent_index as usize) < step.plan.fallback.len();
    let message = end.message.clone();
    match end.outcome {
        Outcome::Success => Next::Succeeded,
        Outcome::Interrupted => Next::Requeue(message),
        Outcome::Cancelled => Next::Cancelled(message),
        _ if cancelling => Next::Cancelled(message),
        _ if exhausted.is_some() => Next::Failed(exhausted.unwrap_or_default().to_string()),
        Outcome::BudgetExceeded => Next::Failed(message),
        _ if rate_limited_for.is_some() => match rate_limited_for {
            Some(_) if step.plan.fallback_on_rate_limit && has_fallback => {
                Next::FallBack("rate limited by the provider".into())
            }
            wait => Next::Backoff {
                delay_ms: wait.unwrap_or(0),
                message: "rate limited by the provider; waiting for the reset".into(),
            },
        },
        o if policy.retries(o, end.exit_code) && step.counted_attempts < policy.max_attempts => {
            Next::Backoff {
                delay_ms: policy.delay_ms(step.counted_attempts + 1, jitter),
                message,
            }
        }
        _ if has_fallback => Next::FallBack(format!("attempts exhausted ({message})")),
        _ => Next::Failed(message),
    }
}
