//! Goal-only objectives (plan → execute → verify), as records: the planner and verifier
//! an objective was submitted with, and its rounds. No I/O; the rules are in
//! `engine::machine::planner`.

use serde::{Deserialize, Serialize};

use super::StepPlan;

/// What a step does in a goal-only objective's round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepRole {
    /// An ordinary step (submitted, or proposed by a planner).
    #[default]
    Work,
    /// The planner's attempt: it writes the round's plan.
    Plan,
    /// The verifier (an agent or a command) judging the round's result.
    Verify,
}

impl StepRole {
    pub fn is_work(&self) -> bool {
        *self == StepRole::Work
    }

    pub fn word(self) -> &'static str {
        match self {
            StepRole::Work => "work",
            StepRole::Plan => "plan",
            StepRole::Verify => "verify",
        }
    }
}

/// Where a round is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundPhase {
    /// The planner runs (again after an invalid plan).
    #[default]
    Planning,
    /// A valid plan waits for `orchctl approve ID plan` (`approve_plan = true`).
    AwaitingApproval,
    /// The plan's steps run.
    Executing,
    /// The verifier runs.
    Verifying,
    /// The goal is reached: the verifier passed (or, without one, every step succeeded).
    Passed,
    /// The round did not reach the goal (its findings say why).
    Failed,
}

impl RoundPhase {
    pub fn word(self) -> &'static str {
        match self {
            RoundPhase::Planning => "planning",
            RoundPhase::AwaitingApproval => "awaiting_approval",
            RoundPhase::Executing => "executing",
            RoundPhase::Verifying => "verifying",
            RoundPhase::Passed => "passed",
            RoundPhase::Failed => "failed",
        }
    }
}

/// A verifier's judgement (`::orch-verdict::{"pass":…,"findings":…}`, or a verify
/// command's exit status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    #[serde(default)]
    pub findings: String,
}

/// One plan → execute → verify round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// 1, 2, …
    pub number: u32,
    pub phase: RoundPhase,
    /// The plan accepted in this round (JSON, as the planner wrote it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plan: String,
    /// The ids of the steps it added (`rN.<id>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// Why the planner's last plan was refused (handed to its next attempt).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plan_errors: String,
    /// A valid plan's steps (resolved, with the planner's ids) held for approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<StepPlan>,
    /// A plan the running planner attempt printed (`::orch-plan::`), until its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printed_plan: Option<String>,
    /// The attempt that printed it (another attempt's end does not read it).
    #[serde(default)]
    pub printed_by: u32,
    /// The verifier's verdict (as soon as it says it), else none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why the round did not reach the goal (the verifier's findings, or the steps that
    /// failed): handed to the next round's planner.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub findings: String,
}

/// A goal-only objective's planner, verifier and rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planner {
    pub agent: String,
    /// Empty: no verifier agent.
    #[serde(default)]
    pub verifier: String,
    /// Empty: no verify command.
    #[serde(default)]
    pub verify_command: Vec<String>,
    pub max_rounds: u32,
    pub approve_plan: bool,
    /// The planner step every round starts from (resolved at submit); its prompt is the
    /// goal, the agent profiles and the plan schema.
    pub plan_step: StepPlan,
    /// The verifier step (resolved at submit), if there is a verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_step: Option<StepPlan>,
    /// The client's working directory: where a proposed plan's relative workdirs start.
    #[serde(default)]
    pub workdir: String,
    pub rounds: Vec<Round>,
}

impl Planner {
    /// The round under way (the last one).
    pub fn current(&self) -> Option<&Round> {
        self.rounds.last()
    }

    pub fn current_mut(&mut self) -> Option<&mut Round> {
        self.rounds.last_mut()
    }

    /// The round number under way (0 before the first).
    pub fn round(&self) -> u32 {
        self.current().map_or(0, |r| r.number)
    }
}

/// Rounds a goal-only objective gets when its plan does not say (`max_rounds = 0`).
pub const DEFAULT_MAX_ROUNDS: u32 = 3;

impl Planner {
    /// The rounds this planner allows (`max_rounds`, or the default when unset).
    pub fn max_rounds(&self) -> u32 {
        if self.max_rounds == 0 {
            DEFAULT_MAX_ROUNDS
        } else {
            self.max_rounds
        }
    }
}

/// The id of a step of round `round`: `r2.build`, `r2.plan`, `r2.verify`.
pub fn round_step_id(round: u32, id: &str) -> String {
    format!("r{round}.{id}")
}
