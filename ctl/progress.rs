//! What `submit --wait` shows while it waits: on a terminal the live view; elsewhere one
//! line per state change on stderr (stdout keeps only the id, for `id=$(...)`), retries
//! announced as "attempt 2 of 3 in 2s". When the objective did not succeed: the last
//! lines of the failed step's stderr and the `orchctl logs` command that shows more.

use std::collections::HashMap;

use orch_proto::v1::{
    Event, LogStream, Objective, ObjectiveState, ResolvedPlan, StepState, StreamLogsRequest,
    event::Payload,
};
use orch_proto::words;

use crate::client::Client;
use crate::error::Result;
use crate::output;
use crate::views::clock;
use crate::watch::EventView;

/// Lines of the failed step's stderr shown when an objective fails.
pub const FAILED_TAIL: u64 = 20;

/// Each step's `max_attempts` from the resolved plan (0 when unknown).
pub fn max_attempts(plan: Option<&ResolvedPlan>) -> HashMap<String, u32> {
    plan.map(|p| {
        p.steps
            .iter()
            .map(|s| {
                let n = s.retry.as_ref().and_then(|r| r.max_attempts).unwrap_or(0);
                (s.id.clone(), n)
            })
            .collect()
    })
    .unwrap_or_default()
}

/// One line per state change, written to stderr.
pub struct StateLines {
    attempts: HashMap<String, u32>,
    /// Lines go here in tests instead of stderr.
    captured: Option<Vec<String>>,
}

impl StateLines {
    pub fn new(attempts: HashMap<String, u32>) -> Self {
        StateLines {
            attempts,
            captured: None,
        }
    }

    /// "attempt 2" or "attempt 2 of 3".
    fn attempt(&self, step: &str, n: u32) -> String {
        match self.attempts.get(step) {
            Some(&max) if max > 0 => format!("attempt {n} of {max}"),
            _ => format!("attempt {n}"),
        }
    }

    /// The text for an event, or `None` for what is not a state change.
    pub fn text(&self, e: &Event) -> Option<String> {
        let step = e.step_id.as_str();
        let with = |head: String, msg: &str| {
            if msg.is_empty() {
                head
            } else {
                format!("{head}: {msg}")
            }
        };
        let text = match e.payload.as_ref()? {
            Payload::ObjectiveState(x) => with(
                format!(
                    "objective {}",
                    words::objective_state(
                        ObjectiveState::try_from(x.state).unwrap_or(ObjectiveState::Unspecified)
                    )
                ),
                &x.message,
            ),
            Payload::StepState(x) => {
                let state = StepState::try_from(x.state).unwrap_or(StepState::Unspecified);
                // The retry_scheduled line says it better.
                if state == StepState::Backoff {
                    return None;
                }
                let mut head = format!("step {step} {}", words::step_state(state));
                if state == StepState::Running && e.attempt > 0 {
                    head.push_str(&format!(" ({})", self.attempt(step, e.attempt)));
                }
                with(head, &x.message)
            }
            Payload::AttemptEnded(x) => {
                let mut head = format!(
                    "step {step} {} ended: {}",
                    self.attempt(step, e.attempt),
                    words::outcome(
                        orch_proto::v1::Outcome::try_from(x.outcome)
                            .unwrap_or(orch_proto::v1::Outcome::Unspecified)
                    )
                );
                if let Some(c) = x.exit_code {
                    head.push_str(&format!(" (exit {c})"));
                }
                if let Some(s) = x.signal {
                    head.push_str(&format!(" (signal {s})"));
                }
                head
            }
            Payload::RetryScheduled(x) => format!(
                "step {step} {} in {}",
                self.attempt(step, e.attempt + 1),
                crate::live::compact_duration(i64::try_from(x.delay_ms).unwrap_or(i64::MAX))
            ),
            Payload::ApprovalRequested(_) => format!(
                "step {step} awaits approval: orchctl approve {} {step}",
                e.objective_id
            ),
            _ => return None,
        };
        Some(format!("{}  {text}", clock(e.time.as_ref())))
    }
}

impl EventView for StateLines {
    fn show(&mut self, event: &Event) -> Result<()> {
        if let Some(line) = self.text(event) {
            match &mut self.captured {
                Some(c) => c.push(line),
                None => output::warn(&line),
            }
        }
        Ok(())
    }

    fn wants_every_kind(&self) -> bool {
        true
    }
}

/// The step whose failure failed the objective: the first failed step in plan order
/// (steps skipped or cancelled because of it are not it).
pub fn failed_step(o: &Objective) -> Option<(&str, u32)> {
    o.steps
        .iter()
        .find(|s| s.state == StepState::Failed as i32)
        .or_else(|| {
            o.steps
                .iter()
                .find(|s| s.state == StepState::Cancelled as i32)
        })
        .map(|s| (s.id.as_str(), s.attempts.len() as u32))
}

/// Shows, on stderr, the last [`FAILED_TAIL`] lines of the failed step's stderr and the
/// command that shows all of its output.
pub async fn explain_failure(client: &mut Client, end: &Objective) -> Result<()> {
    let Some((step, attempt)) = failed_step(end) else {
        return Ok(());
    };
    let step = step.to_string();
    let request = StreamLogsRequest {
        id: end.id.clone(),
        step_id: step.clone(),
        attempt: 0,
        follow: false,
        tail_lines: FAILED_TAIL,
        streams: vec![LogStream::Stderr as i32],
    };
    let mut text = Vec::new();
    if attempt > 0 {
        let r = client.api.stream_logs(request).await;
        if let Ok(mut stream) = client.check(r) {
            while let Ok(Some(chunk)) = stream.message().await {
                text.extend_from_slice(&chunk.data);
            }
        }
    }
    let text = String::from_utf8_lossy(&text);
    let text = text.trim_end();
    if text.is_empty() {
        output::warn(&format!("step {step} wrote nothing to stderr"));
    } else {
        output::warn(&format!(
            "--- last {FAILED_TAIL} lines of step {step}'s stderr (attempt {attempt}) ---"
        ));
        output::warn(text);
        output::warn("---");
    }
    output::warn(&format!(
        "see all of its output: orchctl logs {} {step}",
        end.id
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{AttemptEnded, RetryScheduled, Step, StepStateChanged};

    fn ev(step: &str, attempt: u32, p: Payload) -> Event {
        Event {
            step_id: step.into(),
            attempt,
            objective_id: "01ABC".into(),
            payload: Some(p),
            ..Default::default()
        }
    }

    fn lines() -> StateLines {
        StateLines::new([("main".to_string(), 3)].into_iter().collect())
    }

    #[test]
    fn retries_are_announced_with_their_count_and_delay() {
        let v = lines();
        let e = ev(
            "main",
            1,
            Payload::RetryScheduled(RetryScheduled {
                delay_ms: 2000,
                due_at: None,
            }),
        );
        let text = v.text(&e).unwrap_or_default();
        assert!(text.ends_with("step main attempt 2 of 3 in 2s"), "{text}");
        let e = ev(
            "main",
            2,
            Payload::AttemptEnded(AttemptEnded {
                outcome: orch_proto::v1::Outcome::ExitFailure as i32,
                exit_code: Some(1),
                ..Default::default()
            }),
        );
        let text = v.text(&e).unwrap_or_default();
        assert!(
            text.ends_with("step main attempt 2 of 3 ended: exit_failure (exit 1)"),
            "{text}"
        );
    }

    #[test]
    fn backoff_and_other_kinds_are_not_state_lines() {
        let v = lines();
        let backoff = ev(
            "main",
            1,
            Payload::StepState(StepStateChanged {
                state: StepState::Backoff as i32,
                message: String::new(),
            }),
        );
        assert_eq!(v.text(&backoff), None);
        let running = ev(
            "main",
            1,
            Payload::StepState(StepStateChanged {
                state: StepState::Running as i32,
                message: String::new(),
            }),
        );
        let text = v.text(&running).unwrap_or_default();
        assert!(
            text.ends_with("step main running (attempt 1 of 3)"),
            "{text}"
        );
    }

    #[test]
    fn the_failed_step_is_the_first_that_failed() {
        let step = |id: &str, s: StepState| Step {
            id: id.into(),
            state: s as i32,
            ..Default::default()
        };
        let o = Objective {
            steps: vec![
                step("a", StepState::Succeeded),
                step("b", StepState::Failed),
                step("c", StepState::Skipped),
            ],
            ..Default::default()
        };
        assert_eq!(failed_step(&o).map(|s| s.0), Some("b"));
    }
}
