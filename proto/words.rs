//! The one-word names of states and outcomes used in JSON, events and the CLI.

use crate::v1::{LogStream, ObjectiveState, Outcome, StepState};

fn word(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
}

fn from_word(text: &str, prefix: &str) -> String {
    format!("{prefix}{}", text.trim().to_ascii_uppercase())
}

/// `OBJECTIVE_STATE_RUNNING` → `running`.
pub fn objective_state(s: ObjectiveState) -> String {
    word(s.as_str_name(), "OBJECTIVE_STATE_")
}

/// `running` → `ObjectiveState::Running`.
pub fn parse_objective_state(text: &str) -> Option<ObjectiveState> {
    ObjectiveState::from_str_name(&from_word(text, "OBJECTIVE_STATE_"))
        .filter(|s| *s != ObjectiveState::Unspecified)
}

/// `STEP_STATE_BACKOFF` → `backoff`.
pub fn step_state(s: StepState) -> String {
    word(s.as_str_name(), "STEP_STATE_")
}

/// `backoff` → `StepState::Backoff`.
pub fn parse_step_state(text: &str) -> Option<StepState> {
    StepState::from_str_name(&from_word(text, "STEP_STATE_"))
        .filter(|s| *s != StepState::Unspecified)
}

/// `OUTCOME_EXIT_FAILURE` → `exit_failure`; unspecified (still running) → empty.
pub fn outcome(o: Outcome) -> String {
    if o == Outcome::Unspecified {
        return String::new();
    }
    word(o.as_str_name(), "OUTCOME_")
}

/// `exit_failure` → `Outcome::ExitFailure`.
pub fn parse_outcome(text: &str) -> Option<Outcome> {
    Outcome::from_str_name(&from_word(text, "OUTCOME_")).filter(|o| *o != Outcome::Unspecified)
}

/// The classes an agent's failure is told apart by: the keys of a retry policy's
/// `on_failure` table.
pub const FAILURE_CLASSES: [&str; 5] = ["rate_limited", "max_turns", "auth", "overloaded", "error"];

/// What `on_failure` may do with a class: wait for the provider's reset (rate limits
/// only), retry under the policy, hand over to the next fallback agent (or fail when
/// there is none), or fail the step at once.
pub const FAILURE_ACTIONS: [&str; 4] = ["wait", "retry", "fallback", "fail"];

/// Checks one `on_failure` entry, saying what is wrong with it.
pub fn check_on_failure(class: &str, action: &str) -> Result<(), String> {
    if !FAILURE_CLASSES.contains(&class) {
        return Err(format!(
            "unknown failure class `{class}` (one of {})",
            FAILURE_CLASSES.join(", ")
        ));
    }
    if !FAILURE_ACTIONS.contains(&action) {
        return Err(format!(
            "unknown action `{action}` for {class} (one of {})",
            FAILURE_ACTIONS.join(", ")
        ));
    }
    if action == "wait" && class != "rate_limited" {
        return Err(format!(
            "`wait` waits for a provider's reset, which only rate_limited has; {class} can \
             retry, fallback or fail"
        ));
    }
    Ok(())
}

/// `stdout` / `stderr`.
pub fn log_stream(s: LogStream) -> String {
    word(s.as_str_name(), "LOG_STREAM_")
}

/// Every event kind, as words (the `kind` of `Event` and `--kinds` of `orchctl watch`).
pub const EVENT_KINDS: [&str; 16] = [
    "objective_submitted",
    "objective_state",
    "step_state",
    "attempt_started",
    "attempt_ended",
    "retry_scheduled",
    "checkpoint",
    "usage",
    "progress",
    "budget_alert",
    "approval_requested",
    "approval_answered",
    "objective_removed",
    "agent_routed",
    "agent_disabled",
    "agent_enabled",
];

/// The objective states, as words, in contract order.
pub const OBJECTIVE_STATES: [&str; 7] = [
    "pending",
    "running",
    "paused",
    "awaiting_approval",
    "succeeded",
    "failed",
    "cancelled",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for w in OBJECTIVE_STATES {
            let s = parse_objective_state(w).expect(w);
            assert_eq!(objective_state(s), w);
        }
        assert_eq!(outcome(Outcome::ExitFailure), "exit_failure");
        assert_eq!(parse_outcome("spawn_error"), Some(Outcome::SpawnError));
        assert_eq!(parse_step_state("skipped"), Some(StepState::Skipped));
        assert_eq!(parse_objective_state("unspecified"), None);
        assert_eq!(parse_objective_state("bogus"), None);
    }
}
