//! Goal-only objectives in the core: plan → execute → verify rounds.
//!
//! A round is steps of the objective like any other, told apart by `StepPlan::role` and
//! `round`: the planner's step `rN.plan` (its attempts write the plan), the plan's steps
//! `rN.<id>` (each needs `rN.plan`), then the verifier's step `rN.verify`. The objective's
//! state is derived from the current round's steps only; earlier rounds have ended.
//! What follows each part of a round is data: [`on_success`] (a step's success by its
//! role) and [`next_round`] (the end of a round's phase).
//!
//! The actor reads and resolves a planner attempt's plan (it needs the config) and hands
//! the result in with the attempt's end (`Input::PlanEnded`); the core never sees text
//! it has to parse.

use super::{Invalid, Tx};
use crate::model::{
    End, EventKind, Outcome, Planner, Round, RoundPhase, Step, StepPlan, StepRole, StepState,
    Verdict, round_step_id,
};

/// The actor's reading of the plan a planner attempt wrote: its steps resolved against
/// the config (with the planner's own ids), or why it is not a valid plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub steps: Vec<StepPlan>,
    /// The plan as the planner wrote it (JSON).
    pub text: String,
}

/// What a step's success leads to, by its role (the ROLE table).
///
/// | role   | `approve_plan` | on success                                              |
/// |--------|----------------|---------------------------------------------------------|
/// | work   | any            | release the steps that need it                          |
/// | plan   | false          | accept the plan: add its steps (`plan_accepted`)         |
/// | plan   | true           | hold it `awaiting_approval` until `approve ID plan`      |
/// | verify | any            | the verdict decides (see [`next_round`])                 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSuccess {
    Release,
    AcceptPlan,
    HoldPlan,
}

pub fn on_success(role: StepRole, approve_plan: bool) -> OnSuccess {
    match (role, approve_plan) {
        (StepRole::Plan, false) => OnSuccess::AcceptPlan,
        (StepRole::Plan, true) => OnSuccess::HoldPlan,
        (StepRole::Work | StepRole::Verify, _) => OnSuccess::Release,
    }
}

/// How a phase of a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseEnd {
    /// The planner step failed: no valid plan within its retry policy, or it was denied.
    PlanFailed,
    /// Every step of the plan succeeded.
    StepsSucceeded,
    /// A step of the plan failed (or was skipped).
    StepsFailed,
    /// The verifier passed (`true`) or rejected (`false`) the result.
    Verdict(bool),
}

/// What follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundNext {
    /// Run the verifier.
    Verify,
    /// The goal is reached: the objective succeeds.
    Pass,
    /// Plan again, with the findings.
    Again,
    /// The objective fails with the findings.
    Fail,
}

/// The ROUND table: what follows the end of a round's phase.
///
/// | phase ended        | verifier | rounds left | next   |
/// |--------------------|----------|-------------|--------|
/// | plan failed        | any      | any         | fail   |
/// | steps succeeded    | yes      | any         | verify |
/// | steps succeeded    | no       | any         | pass   |
/// | steps failed       | any      | yes         | again  |
/// | steps failed       | any      | no          | fail   |
/// | verdict pass       | yes      | any         | pass   |
/// | verdict fail       | yes      | yes         | again  |
/// | verdict fail       | yes      | no          | fail   |
///
/// A cancelled objective, or one whose budget ran out, never starts another round.
pub fn next_round(end: PhaseEnd, has_verifier: bool, rounds_left: bool) -> RoundNext {
    match (end, has_verifier, rounds_left) {
        (PhaseEnd::PlanFailed, _, _) => RoundNext::Fail,
        (PhaseEnd::StepsSucceeded, true, _) => RoundNext::Verify,
        (PhaseEnd::StepsSucceeded, false, _) => RoundNext::Pass,
        (PhaseEnd::Verdict(true), _, _) => RoundNext::Pass,
        (PhaseEnd::StepsFailed | PhaseEnd::Verdict(false), _, true) => RoundNext::Again,
        (PhaseEnd::StepsFailed | PhaseEnd::Verdict(false), _, false) => RoundNext::Fail,
    }
}

/// The steps of a goal-only objective's current round, which its state is derived from
/// (earlier rounds have ended, whatever they ended as); `None` for other objectives.
fn current_steps(run: &super::Run) -> Option<Vec<Step>> {
    let round = run.obj.planner.as_deref()?.round();
    Some(
        run.steps
            .iter()
            .filter(|s| s.plan.round == round)
            .cloned()
            .collect(),
    )
}

/// The objective's state derived from its steps: a goal-only objective's from its current
/// round's (one that has run anything is running, never pending, between rounds).
pub fn derived_state(run: &super::Run) -> crate::model::ObjState {
    use crate::model::{ObjState, derive_objective_state};
    let Some(current) = current_steps(run) else {
        return derive_objective_state(&run.steps, run.cancelling);
    };
    match derive_objective_state(&current, run.cancelling) {
        ObjState::Pending if run.steps.iter().any(|s| s.attempts > 0) => ObjState::Running,
        derived => derived,
    }
}

/// Why a goal-only objective failed, from its last round.
pub fn failure_message(p: &Planner) -> Option<String> {
    let r = p.current()?;
    if r.phase != RoundPhase::Failed {
        return None;
    }
    let max = p.max_rounds();
    Some(match r.verdict.as_ref() {
        Some(v) if !v.pass => format!(
            "the goal was not reached after {} of {max} rounds (max_rounds); the verifier's last findings: {}",
            r.number, r.findings
        ),
        _ if r.steps.is_empty() => format!("round {}: {}", r.number, r.findings),
        _ => format!(
            "the goal was not reached after {} of {max} rounds (max_rounds): {}",
            r.number, r.findings
        ),
    })
}

/// The text a planner gets on stdin in round `round` (after round one: the findings and
/// the previous plan too, which it also gets in `ORCH_VERIFY_FINDINGS` and
/// `ORCH_PREVIOUS_PLAN`).
pub fn round_prompt(base: &str, round: u32, findings: &str, previous: &str) -> String {
    if round <= 1 {
        return base.to_string();
    }
    format!(
        "{base}\n\n# Round {round}\n\nThe previous round did not reach the goal. Findings:\n\n{findings}\n\n\
         The previous plan:\n\n{previous}\n"
    )
}

impl Tx<'_> {
    fn planner(&self) -> Option<&Planner> {
        self.run.obj.planner.as_deref()
    }

    fn round_mut(&mut self) -> Option<&mut Round> {
        self.d.objective = true;
        self.run.obj.planner.as_deref_mut()?.current_mut()
    }

    /// A goal-only objective was submitted with its first round begun.
    pub(super) fn first_round(&mut self) {
        let Some(round) = self.planner().map(Planner::round) else {
            return;
        };
        self.emit(
            "",
            0,
            EventKind::RoundStarted {
                round,
                findings: String::new(),
            },
        );
    }

    /// `approve ID plan`: the current round's planner step.
    pub(super) fn plan_step_name(&self, name: &str) -> Option<String> {
        let p = self.planner()?;
        (name == "plan").then(|| round_step_id(p.round(), "plan"))
    }

    /// Attempt `attempt` of step `step` runs, and the step has this role (a protocol
    /// line of another step's attempt is ignored).
    fn runs_as(&mut self, step: u32, attempt: u32, role: StepRole) -> bool {
        self.running_mut(step, attempt).is_some()
            && self
                .run
                .steps
                .get(step as usize)
                .is_some_and(|s| s.plan.role == role)
    }

    /// A planner attempt printed its plan (`::orch-plan::`): kept until its end.
    pub(super) fn plan_printed(&mut self, step: u32, attempt: u32, json: String) {
        if !self.runs_as(step, attempt, StepRole::Plan) {
            return;
        }
        if let Some(r) = self.round_mut() {
            r.printed_plan = Some(json);
            r.printed_by = attempt;
        }
    }

    /// The verifier said its verdict (`::orch-verdict::`).
    pub(super) fn verdict_said(&mut self, step: u32, attempt: u32, verdict: Verdict) {
        if !self.runs_as(step, attempt, StepRole::Verify) {
            return;
        }
        if let Some(r) = self.round_mut() {
            r.verdict = Some(verdict);
        }
    }

    /// A planner attempt ended; `plan` is what the actor read of the plan it wrote (for
    /// an attempt that exited 0). An invalid plan fails the attempt (retried by the
    /// step's policy, with the errors in `ORCH_PLAN_ERRORS`).
    pub(super) fn plan_ended(
        &mut self,
        index: u32,
        number: u32,
        mut end: End,
        plan: Option<Result<Proposal, String>>,
    ) {
        if self.running_mut(index, number).is_none() {
            return;
        }
        let round = self.planner().map_or(0, Planner::round);
        let sid = round_step_id(round, "plan");
        if let Some(r) = self.round_mut() {
            r.printed_plan = None;
        }
        match plan {
            Some(Ok(p)) => {
                let steps = p.steps.len() as u32;
                self.emit(
                    &sid,
                    number,
                    EventKind::PlanProposed {
                        round,
                        valid: true,
                        steps,
                        errors: String::new(),
                        plan: p.text.clone(),
                    },
                );
                if let Some(r) = self.round_mut() {
                    r.plan = p.text;
                    r.plan_errors.clear();
                    r.steps = p
                        .steps
                        .iter()
                        .map(|s| round_step_id(round, &s.id))
                        .collect();
                }
                self.pending = p.steps;
            }
            Some(Err(errors)) => {
                self.emit(
                    &sid,
                    number,
                    EventKind::PlanProposed {
                        round,
                        valid: false,
                        steps: 0,
                        errors: errors.clone(),
                        plan: String::new(),
                    },
                );
                if let Some(r) = self.round_mut() {
                    r.plan_errors = errors.clone();
                }
                // Its next attempt gets the errors.
                if let Some(s) = self.run.steps.get_mut(index as usize) {
                    for env in [&mut s.plan.env, &mut s.plan.step_env] {
                        env.insert("ORCH_PLAN_ERRORS".into(), errors.clone());
                    }
                }
                end.outcome = Outcome::ExitFailure;
                end.message = format!("the planner's plan is invalid: {errors}");
            }
            None => {}
        }
        self.ended(index, number, end);
        self.pending.clear();
    }

    /// The verifier's attempt ended: its verdict (said, or a verify command's exit
    /// status) decides how the step ends; no verdict from an agent is a rejection.
    pub(super) fn judge(&mut self, index: u32, end: End) -> End {
        let Some(step) = self.run.steps.get(index as usize) else {
            return end;
        };
        if step.plan.role != StepRole::Verify
            || matches!(end.outcome, Outcome::Cancelled | Outcome::Interrupted)
        {
            return end;
        }
        let command = step.plan.agent.is_empty();
        let said = self.planner().and_then(|p| p.current()?.verdict.clone());
        let verdict = match said {
            Some(v) => v,
            None if command => Verdict {
                pass: end.outcome == Outcome::Success,
                findings: if end.outcome == Outcome::Success {
                    String::new()
                } else {
                    format!("the verify command failed: {}", end.message)
                },
            },
            None => Verdict {
                pass: false,
                findings: format!(
                    "the verifier printed no ::orch-verdict:: line ({})",
                    if end.message.is_empty() {
                        end.outcome.word().to_string()
                    } else {
                        end.message.clone()
                    }
                ),
            },
        };
        let round = self.planner().map_or(0, Planner::round);
        let sid = step.plan.id.clone();
        let number = step.attempts;
        self.emit(
            &sid,
            number,
            EventKind::Verdict {
                round,
                pass: verdict.pass,
                findings: verdict.findings.clone(),
            },
        );
        let mut end = end;
        if verdict.pass {
            end.outcome = Outcome::Success;
            end.message = String::new();
        } else {
            end.outcome = Outcome::ExitFailure;
            end.message = format!("the verifier rejected the result: {}", verdict.findings);
        }
        if let Some(r) = self.round_mut() {
            r.verdict = Some(verdict);
        }
        end
    }

    /// A step succeeded: what follows, by its role ([`on_success`]).
    pub(super) fn succeeded(&mut self, index: u32) {
        let role = self
            .run
            .steps
            .get(index as usize)
            .map_or(StepRole::Work, |s| s.plan.role);
        let approve_plan = self.planner().is_some_and(|p| p.approve_plan);
        match on_success(role, approve_plan) {
            OnSuccess::Release => {
                self.set_step(index, StepState::Succeeded, String::new());
                self.release_ready();
            }
            OnSuccess::AcceptPlan => self.accept_plan(index, None),
            OnSuccess::HoldPlan => {
                let steps = std::mem::take(&mut self.pending);
                let n = steps.len();
                if let Some(r) = self.round_mut() {
                    r.phase = RoundPhase::AwaitingApproval;
                    r.held = steps;
                }
                let (sid, attempt, id) = match self.run.steps.get(index as usize) {
                    Some(s) => (s.plan.id.clone(), s.attempts, self.id().to_string()),
                    None => return,
                };
                self.set_step(
                    index,
                    StepState::AwaitingApproval,
                    format!(
                        "the planner proposed {n} step(s); approve with `orchctl approve {id} plan` \
                         (or deny with `orchctl deny {id} plan`)"
                    ),
                );
                self.emit(&sid, attempt, EventKind::ApprovalRequested);
            }
        }
    }

    /// `approve ID plan` answered yes: the held plan is accepted.
    pub(super) fn approve_plan(&mut self, index: u32, by: u32) {
        self.accept_plan(index, Some(by));
    }

    /// The round's plan is accepted: its steps join the objective (each needing the
    /// planner step, their ids and needs prefixed with the round) and the planner step
    /// succeeds, which releases them.
    fn accept_plan(&mut self, index: u32, by: Option<u32>) {
        let round = self.planner().map_or(0, Planner::round);
        let held = self
            .planner()
            .and_then(|p| p.current())
            .is_some_and(|r| r.phase == RoundPhase::AwaitingApproval);
        let steps = match self.round_mut() {
            Some(r) if held => std::mem::take(&mut r.held),
            _ => std::mem::take(&mut self.pending),
        };
        let plan_id = round_step_id(round, "plan");
        let mut ids = Vec::new();
        for mut plan in steps {
            plan.id = round_step_id(round, &plan.id);
            plan.needs = std::iter::once(plan_id.clone())
                .chain(plan.needs.iter().map(|n| round_step_id(round, n)))
                .collect();
            plan.round = round;
            plan.role = StepRole::Work;
            ids.push(plan.id.clone());
            self.add_step(plan);
        }
        if let Some(r) = self.round_mut() {
            r.phase = RoundPhase::Executing;
        }
        let attempt = self.run.steps.get(index as usize).map_or(0, |s| s.attempts);
        self.emit(
            &plan_id,
            attempt,
            EventKind::PlanAccepted {
                round,
                steps: ids,
                by_uid: by,
            },
        );
        let message = match by {
            Some(uid) => format!("plan approved by uid {uid}"),
            None => String::new(),
        };
        self.set_step(index, StepState::Succeeded, message);
        self.release_ready();
    }

    /// Appends a step to the objective (waiting for its needs).
    fn add_step(&mut self, plan: StepPlan) {
        let index = self.run.steps.len() as u32;
        let step = Step::new(&self.run.obj.id, index, plan);
        self.run.steps.push(step);
        self.run.obj.step_count = self.run.steps.len() as u32;
        self.d.objective = true;
        self.d.steps.insert(index);
    }

    /// After every input: moves a goal-only objective's round on when a phase of it
    /// ended ([`next_round`]).
    pub(super) fn advance(&mut self) {
        let Some(p) = self.planner() else {
            return;
        };
        let Some(r) = p.current() else {
            return;
        };
        let round = r.number;
        let phase = r.phase;
        let has_verifier = p.verify_step.is_some();
        let rounds_left = round < p.max_rounds();
        let of_round = |role: StepRole| -> Vec<&Step> {
            self.run
                .steps
                .iter()
                .filter(|s| s.plan.round == round && s.plan.role == role)
                .collect()
        };
        let ended = match phase {
            RoundPhase::Planning | RoundPhase::AwaitingApproval => {
                let plan = of_round(StepRole::Plan);
                match plan.first() {
                    Some(s) if s.state.is_terminal() && s.state != StepState::Succeeded => {
                        Some((PhaseEnd::PlanFailed, s.message.clone()))
                    }
                    _ => None,
                }
            }
            RoundPhase::Executing => {
                let work = of_round(StepRole::Work);
                if work.iter().all(|s| s.state.is_terminal()) {
                    if work.iter().all(|s| s.state == StepState::Succeeded) {
                        Some((PhaseEnd::StepsSucceeded, String::new()))
                    } else {
                        let findings: Vec<String> = work
                            .iter()
                            .filter(|s| s.state != StepState::Succeeded)
                            .map(|s| {
                                format!("step `{}` {}: {}", s.plan.id, s.state.word(), s.message)
                            })
                            .collect();
                        Some((PhaseEnd::StepsFailed, findings.join("; ")))
                    }
                } else {
                    None
                }
            }
            RoundPhase::Verifying => match of_round(StepRole::Verify).first() {
                Some(s) if s.state.is_terminal() => {
                    let v = r.verdict.clone().unwrap_or_else(|| Verdict {
                        pass: false,
                        findings: s.message.clone(),
                    });
                    let pass = v.pass && s.state == StepState::Succeeded;
                    Some((PhaseEnd::Verdict(pass), v.findings))
                }
                _ => None,
            },
            RoundPhase::Passed | RoundPhase::Failed => None,
        };
        let Some((end, findings)) = ended else {
            return;
        };
        let stopping = self.run.cancelling || self.run.exhausted.is_some();
        let next = match next_round(end, has_verifier, rounds_left) {
            RoundNext::Again if stopping => RoundNext::Fail,
            next => next,
        };
        match next {
            RoundNext::Verify => self.start_verify(round),
            RoundNext::Pass => {
                if let Some(r) = self.round_mut() {
                    r.phase = RoundPhase::Passed;
                }
            }
            RoundNext::Fail => {
                if let Some(r) = self.round_mut() {
                    r.phase = RoundPhase::Failed;
                    r.findings = findings;
                }
            }
            RoundNext::Again => {
                let previous = match self.round_mut() {
                    Some(r) => {
                        r.phase = RoundPhase::Failed;
                        r.findings = findings.clone();
                        r.plan.clone()
                    }
                    None => String::new(),
                };
                self.start_round(round + 1, &findings, &previous);
            }
        }
    }

    /// Round `round` begins: its planner step (with the last round's findings and plan).
    pub(super) fn start_round(&mut self, round: u32, findings: &str, previous: &str) {
        let Some(p) = self.run.obj.planner.as_deref_mut() else {
            return;
        };
        p.rounds.push(Round {
            number: round,
            ..Round::default()
        });
        let mut plan = p.plan_step.clone();
        plan.id = round_step_id(round, "plan");
        plan.role = StepRole::Plan;
        plan.round = round;
        plan.prompt = round_prompt(&plan.prompt, round, findings, previous);
        if round > 1 {
            for env in [&mut plan.env, &mut plan.step_env] {
                env.insert("ORCH_VERIFY_FINDINGS".into(), findings.to_string());
                env.insert("ORCH_PREVIOUS_PLAN".into(), previous.to_string());
            }
        }
        for env in [&mut plan.env, &mut plan.step_env] {
            env.insert("ORCH_ROUND".into(), round.to_string());
        }
        self.d.objective = true;
        self.emit(
            "",
            0,
            EventKind::RoundStarted {
                round,
                findings: findings.to_string(),
            },
        );
        self.add_step(plan);
        self.release_ready();
    }

    /// The round's steps all succeeded: its verifier runs.
    fn start_verify(&mut self, round: u32) {
        let Some(p) = self.run.obj.planner.as_deref_mut() else {
            return;
        };
        let Some(mut plan) = p.verify_step.clone() else {
            return;
        };
        if let Some(r) = p.current_mut() {
            r.phase = RoundPhase::Verifying;
            r.verdict = None;
        }
        plan.id = round_step_id(round, "verify");
        plan.role = StepRole::Verify;
        plan.round = round;
        for env in [&mut plan.env, &mut plan.step_env] {
            env.insert("ORCH_ROUND".into(), round.to_string());
        }
        self.add_step(plan);
        self.release_ready();
    }

    /// A goal-only objective is planned afresh, not retried.
    pub(super) fn refuse_retry(&self) -> Result<(), Invalid> {
        if self.planner().is_some() {
            return Err(Invalid::FailedPrecondition(format!(
                "objective {} is goal-only (planned by an agent): it cannot be retried; submit the goal again",
                self.id()
            )));
        }
        Ok(())
    }
}
