//! The engine's side of goal-only objectives: when a planner's attempt ends, the plan it
//! wrote (its `ORCH_PLAN_FILE`, else its `::orch-plan::` line) is read and resolved
//! against the config with the same validator and resolver as a submitted plan
//! (`goal::read_plan`), and handed to the core with the end (`Input::PlanEnded`). The
//! rules of the rounds are the core's (`machine::planner`).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::machine::Input;
use super::machine::planner::Proposal;
use super::{After, Engine, attempt};
use crate::goal::{MAX_PLAN_BYTES, read_plan};
use crate::model::{End, Outcome, StepRole};
use crate::runner::AttemptKey;

impl Engine {
    /// The input an attempt's end becomes: `Ended`, or for a planner's attempt
    /// `PlanEnded` with its plan read (when it exited 0). The plan file goes once the
    /// end is durable.
    pub(super) fn end_input(&mut self, key: &AttemptKey, end: End) -> Input {
        let (step, attempt) = (key.step_index, key.number);
        let Some(live) = self.live.get(&key.objective_id) else {
            return Input::Ended { step, attempt, end };
        };
        let Some(s) = live
            .run
            .steps
            .get(step as usize)
            .filter(|s| s.plan.role == StepRole::Plan)
        else {
            return Input::Ended { step, attempt, end };
        };
        let path = attempt::plan_file(&self.cfg, &key.objective_id, s, attempt);
        let planner = live.run.obj.planner.as_deref();
        let printed = planner
            .and_then(|p| p.current())
            .filter(|r| r.printed_by == attempt)
            .and_then(|r| r.printed_plan.clone());
        let workdir = planner.map(|p| p.workdir.clone()).unwrap_or_default();
        let plan = (end.outcome == Outcome::Success).then(|| {
            let written = read_plan_file(&path)?;
            let text = match written.trim() {
                "" => printed.unwrap_or_default(),
                _ => written,
            };
            let steps = read_plan(&text, &self.cfg, &workdir)?;
            Ok(Proposal { steps, text })
        });
        if let Some(Err(e)) = &plan {
            tracing::warn!(objective = %key.objective_id, attempt, error = %e, "the planner's plan is invalid");
        }
        self.turn.after.push(After::Reply(Box::new(move || {
            let _ = std::fs::remove_file(&path);
        })));
        Input::PlanEnded {
            step,
            attempt,
            end,
            plan,
        }
    }
}

/// The plan file a planner's attempt wrote: empty when it wrote none (or it is gone);
/// never followed through a link, at most `MAX_PLAN_BYTES`.
fn read_plan_file(path: &Path) -> Result<String, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => {
            return Err(format!(
                "cannot read $ORCH_PLAN_FILE {}: {e}",
                path.display()
            ));
        }
    };
    match f.metadata() {
        Ok(m) if m.is_file() => {}
        _ => {
            return Err(format!(
                "$ORCH_PLAN_FILE {} is not a regular file",
                path.display()
            ));
        }
    }
    let mut text = String::new();
    f.take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read $ORCH_PLAN_FILE {}: {e}", path.display()))?;
    if text.len() > MAX_PLAN_BYTES {
        return Err(format!(
            "the plan in $ORCH_PLAN_FILE is larger than the limit of {MAX_PLAN_BYTES} bytes"
        ));
    }
    Ok(text)
}
