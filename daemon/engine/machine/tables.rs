//! The rules of what follows an attempt's end, as data: the precedence of success,
//! interruption, cancel, an exhausted budget, a provider's rate limit, retries and
//! fallback agents lives here and nowhere else.

pub use crate::model::End;
use crate::model::{FailureAction, FailureClass, Millis, Outcome, Step};

use super::Input;

/// What an input needs of its objective's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// An objective that has not ended (every input but the two below).
    NotEnded,
    /// An ended objective (`succeeded`, `failed` or `cancelled`).
    Ended,
}

/// The precondition table: what each input needs of the objective's state. A refused
/// input changes nothing.
///
/// | input                                    | needs     | refused with                          |
/// |------------------------------------------|-----------|---------------------------------------|
/// | retry                                    | ended     | `objective ID has not ended; ...`     |
/// | remove                                   | ended     | `cannot remove objective ID: it is S` |
/// | cancel, pause, resume, approve, facts, … | not ended | `cannot V objective ID: it has already ended (S)` |
pub fn needs(input: &Input) -> Needs {
    match input {
        Input::Retry { .. } | Input::Remove { .. } => Needs::Ended,
        _ => Needs::NotEnded,
    }
}

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
    /// Waits in `backoff` for the provider's rate-limit reset, then runs again: uses no
    /// attempt, counts against `max_rate_limit_waits`.
    RateLimitWait {
        delay_ms: u64,
    },
    /// The next fallback agent takes over with a fresh set of attempts.
    FallBack(String),
}

/// A provider refused the attempt until a reset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// From now until the reset; 0 when it has passed.
    pub wait_ms: u64,
    /// The reset (ms since the epoch).
    pub until_ms: Millis,
}

/// How long before an attempt's end a provider's reset may have passed and still be the
/// refusal that ended it: the agent reports it, gives up and exits, and the reset (often
/// rounded to the second) can pass on the way. A reset further back was one the agent
/// waited out and went on working after, so its failure is an ordinary one.
pub const RESET_PASSED_GRACE_MS: Millis = 10_000;

impl RateLimit {
    /// The refusal an attempt that ended at `now` was under, given the reset it reported:
    ///
    /// | reset                                       | refusal                     |
    /// |---------------------------------------------|-----------------------------|
    /// | ahead of `now`                              | wait until it               |
    /// | passed at most `RESET_PASSED_GRACE_MS` ago  | run again now (no wait)     |
    /// | further back                                | none: an ordinary failure   |
    pub fn at_end(until_ms: Millis, now: Millis) -> Option<RateLimit> {
        if until_ms.saturating_add(RESET_PASSED_GRACE_MS) < now {
            return None;
        }
        Some(RateLimit {
            wait_ms: u64::try_from(until_ms.saturating_sub(now)).unwrap_or(0),
            until_ms,
        })
    }
}

/// Row 6r: what a routed step says when it is routed again around a rate limit.
pub const ROUTE_AROUND_LIMIT: &str =
    "rate limited by the provider; routing to an agent that is not";

/// Rows 6r, 6, 7 and 7b: the provider refused the attempt.
fn after_rate_limit(step: &Step, has_fallback: bool, limit: RateLimit) -> Next {
    let policy = &step.plan.retry;
    if step.plan.route.is_some() {
        // Routing skips the limited profile until its reset (or waits for it when no
        // other one may run the step).
        return Next::Requeue(ROUTE_AROUND_LIMIT.into());
    }
    if step.plan.fallback_on_rate_limit && has_fallback {
        Next::FallBack("rate limited by the provider".into())
    } else if step.rate_limit_waits < policy.max_rate_limit_waits {
        Next::RateLimitWait {
            delay_ms: limit.wait_ms,
        }
    } else {
        Next::Failed(format!(
            "rate limited by the provider again after {} waits for its reset \
             (max_rate_limit_waits = {}); the next reset is at {}",
            step.rate_limit_waits,
            policy.max_rate_limit_waits,
            rfc3339(limit.until_ms)
        ))
    }
}

/// A time for messages, in UTC.
fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Whether an attempt's end uses up one of the step's `max_attempts`: neither an
/// interruption nor a provider's rate limit that the policy waits out does.
pub fn counts_against_retries(outcome: Outcome, step: &Step, rate_limited: bool) -> bool {
    match outcome {
        Outcome::Interrupted => false,
        Outcome::Success => true,
        _ => !(rate_limited && step.plan.retry.on_failure.rate_limited == FailureAction::Wait),
    }
}

/// The class of a failed attempt, if the agent or its provider gave one: a provider's
/// refusal counts as `rate_limited` whatever else the agent said.
fn failure_class(
    rate_limit: Option<RateLimit>,
    agent: Option<FailureClass>,
) -> Option<FailureClass> {
    if rate_limit.is_some() {
        Some(FailureClass::RateLimited)
    } else {
        agent
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
/// | 6r| rate limited (`wait`), a routed step         | requeue: routed again now     |
/// | 6 | rate limited (`wait`), fallback on rate limit | next fallback agent         |
/// | 7 | rate limited (`wait`), rate-limit waits left | backoff until the reset      |
/// | 7b| rate limited (`wait`), all waits made       | failed, saying how many waits |
/// | 7c| the class's action is `fallback`            | next fallback agent, or failed |
/// | 7d| the class's action is `fail`                | failed, naming the setting    |
/// | 8 | the policy retries it and attempts are left | backoff (exponential, jitter) |
/// | 9 | a fallback agent is left                    | next fallback agent           |
/// | 10| otherwise                                   | failed                        |
///
/// A failure's class (rate limited, max turns, auth, overloaded, error) picks its action
/// from the policy's `on_failure` (defaults: wait, fallback, fallback, retry, retry); a
/// class whose action is `retry`, and a failure with no class, go on to rows 8–10.
pub fn next_after_end(
    end: &End,
    step: &Step,
    cancelling: bool,
    exhausted: Option<&str>,
    rate_limit: Option<RateLimit>,
    agent_failure: Option<FailureClass>,
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
        _ => match failure_class(rate_limit, agent_failure)
            .map(|c| (c, policy.on_failure.action(c)))
        {
            Some((_, FailureAction::Wait)) => match rate_limit {
                Some(limit) => after_rate_limit(step, has_fallback, limit),
                None => after_retries(end, step, has_fallback, jitter),
            },
            Some((class, FailureAction::Fallback)) if has_fallback => Next::FallBack(format!(
                "{}, which a retry of this agent would not fix ({message})",
                class.word()
            )),
            Some((FailureClass::MaxTurns | FailureClass::Auth, FailureAction::Fallback)) => {
                Next::Failed(format!(
                    "{message} (not retried: a retry would pay again for the same)"
                ))
            }
            Some((class, action @ (FailureAction::Fallback | FailureAction::Fail))) => {
                Next::Failed(format!(
                    "{message} (not retried: retry.on_failure.{} is \"{}\")",
                    class.key(),
                    action.word()
                ))
            }
            Some((_, FailureAction::Retry)) | None => {
                after_retries(end, step, has_fallback, jitter)
            }
        },
    }
}

/// Rows 8 to 10: retried under the policy while attempts are left, then the next
/// fallback agent, then failed.
fn after_retries(end: &End, step: &Step, has_fallback: bool, jitter: f64) -> Next {
    let policy = &step.plan.retry;
    let message = end.message.clone();
    match end.outcome {
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
