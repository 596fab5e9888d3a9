//! Sub-objectives: an objective submitted from inside a running attempt is that attempt's
//! objective's child. The rules are data: who may have a child (`admit_child`: the
//! attempt runs, the parent is not being cancelled, the depth is within the limit), and
//! what a parent's input does to its live children (`CASCADE`).

use crate::model::{ParentRef, Usage};

use super::{Input, Invalid, Run, Tx};

/// What an input to a parent does to each of its live children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToChildren {
    /// The same cancel: a sub-objective is cancelled with its parent.
    Cancel,
    /// The same exhaustion: the parent's budget covers its sub-objectives.
    Exhaust,
}

/// The kinds of parent input that reach the children, and how. Every other input
/// (pause, resume, approve, retry, attempt facts) stays with the parent.
pub const CASCADE: &[(&str, ToChildren)] = &[
    ("cancel", ToChildren::Cancel),
    ("exhaust", ToChildren::Exhaust),
];

/// The input a parent's `input` sends on to each of its live children, if any.
pub fn cascade(input: &Input) -> Option<Input> {
    let kind = match input {
        Input::Cancel { .. } => "cancel",
        Input::Exhaust { .. } => "exhaust",
        _ => return None,
    };
    let (_, to) = CASCADE.iter().find(|(k, _)| *k == kind)?;
    Some(match (to, input) {
        (ToChildren::Cancel, Input::Cancel { by }) => Input::Cancel { by: *by },
        (ToChildren::Exhaust, Input::Exhaust { why }) => Input::Exhaust {
            why: format!("parent objective: {why}"),
        },
        (ToChildren::Cancel, _) => Input::Cancel { by: 0 },
        (ToChildren::Exhaust, _) => Input::Exhaust {
            why: "the parent objective's budget ran out".into(),
        },
    })
}

/// Whether attempt `attempt` of step `step_id` of `parent` may submit a sub-objective,
/// and where that child hangs (its depth included), given the nesting limit.
pub fn admit_child(
    parent: &Run,
    step_id: &str,
    attempt: u32,
    max_depth: u32,
) -> Result<ParentRef, Invalid> {
    let id = &parent.obj.id;
    let Some(step) = parent.steps.iter().find(|s| s.plan.id == step_id) else {
        return Err(Invalid::FailedPrecondition(format!(
            "sub-objective refused: objective {id} has no step `{step_id}`"
        )));
    };
    let runs = parent
        .running
        .get(&step.index)
        .is_some_and(|r| r.attempt.number == attempt);
    if !runs {
        return Err(Invalid::FailedPrecondition(format!(
            "sub-objective refused: attempt {attempt} of step `{step_id}` of objective {id} is not running"
        )));
    }
    if parent.cancelling {
        return Err(Invalid::FailedPrecondition(format!(
            "sub-objective refused: objective {id} is being cancelled"
        )));
    }
    let depth = parent.obj.parent.as_ref().map_or(0, |p| p.depth) + 1;
    if depth > max_depth {
        return Err(Invalid::FailedPrecondition(format!(
            "sub-objective refused: nesting limit reached (objective {id} is at depth {}, \
             and max_sub_objective_depth is {max_depth})",
            depth - 1
        )));
    }
    Ok(ParentRef {
        objective_id: id.clone(),
        step_id: step_id.to_string(),
        attempt,
        depth,
    })
}

impl Tx<'_> {
    /// A sub-objective was submitted: it is recorded among the children.
    pub(super) fn adopt(&mut self, child: String) {
        if !self.run.obj.children.contains(&child) {
            self.run.obj.children.push(child);
            self.d.objective = true;
        }
    }

    /// A sub-objective (at any depth) used `delta`: it counts against this one's budgets.
    pub(super) fn child_usage(&mut self, delta: &Usage) {
        self.run.obj.sub_usage.add(delta);
        self.d.objective = true;
    }
}
