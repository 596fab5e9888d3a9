//! Goal-only objectives at the edges of the engine: resolving the planner and verifier
//! steps at submit, the planner's prompt (the goal, the agent profiles, the plan schema),
//! and reading a plan a planner wrote, with the same validator and resolver as a
//! submitted plan. Domain logic plus the config; the rounds' rules are in
//! `engine::machine::planner`.

use std::collections::HashSet;

use crate::config::Config;
use crate::model::{Planner, Round, StepPlan, StepRole, round_step_id};
use crate::plans::{self, ObjectiveInput, PlanError, ResolvedObjective, StepInput};

/// The `[planner]` table of a submitted goal-only objective.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlannerInput {
    pub agent: String,
    pub verifier: String,
    pub verify_command: Vec<String>,
    pub max_rounds: u32,
    pub approve_plan: bool,
}

/// Step ids a plan may not use: each round's own steps are `rN.plan` and `rN.verify`.
const RESERVED_IDS: [&str; 2] = ["plan", "verify"];

/// Largest plan a planner may write, in bytes.
pub const MAX_PLAN_BYTES: usize = orch_proto::validate::MAX_SPEC_BYTES;

/// The plan schema a planner is given (the JSON form of a plan file's steps).
pub const PLAN_SCHEMA: &str = r#"Write the plan as one JSON object:
{
  "steps": [
    {
      "id": "short-id",                 // required, unique; letters, digits, - _ .
      "agent": "PROFILE",               // an agent profile below, with "prompt" ...
      "prompt": "what this agent should do",
      "command": ["program", "arg"],    // ... or a literal command instead of agent/prompt
      "needs": ["other-id"],            // optional: steps that must succeed first
      "workdir": "sub/dir",             // optional, relative to the objective's directory
      "env": {"KEY": "value"},          // optional
      "timeout": "10m",                 // optional
      "retry": {"max_attempts": 2}      // optional
    }
  ],
  "defaults": {"timeout": "30m"}        // optional, applied to every step
}
Steps without "needs" run in parallel. Write the JSON to the file named by
$ORCH_PLAN_FILE, or print it on one line of stdout as ::orch-plan::{...}.
When your last plan was refused, $ORCH_PLAN_ERRORS says why."#;

/// What a planner reads on stdin: the goal, the agent profiles it may use, the schema.
pub fn planner_prompt(goal: &str, cfg: &Config, verifier: &str) -> String {
    let mut out = format!("# Goal\n\n{goal}\n\n# Agent profiles you may use\n\n");
    for (name, p) in cfg.agents_in_order() {
        out.push_str(&format!("- {name}"));
        if !p.tags.is_empty() {
            out.push_str(&format!(" (tags: {})", p.tags.join(", ")));
        }
        if let Some(m) = &p.model {
            out.push_str(&format!(" model {m}"));
        }
        out.push('\n');
    }
    out.push_str("\n# How the result is checked\n\n");
    out.push_str(if verifier.is_empty() {
        "The goal counts as reached when every step succeeds.\n"
    } else {
        verifier
    });
    out.push_str("\n\n# Plan schema\n\n");
    out.push_str(PLAN_SCHEMA);
    out.push('\n');
    out
}

/// A goal-only objective resolved against the config: its first planner step, and the
/// planner record (the planner and verifier steps resolved once, round 1 begun).
pub fn resolve_goal(
    input: &ObjectiveInput,
    planner: &PlannerInput,
    cfg: &Config,
    client_workdir: &str,
) -> Result<(ResolvedObjective, Planner), PlanError> {
    let how = match (planner.verifier.as_str(), planner.verify_command.as_slice()) {
        ("", []) => String::new(),
        ("", cmd) => format!(
            "When the steps have succeeded, the command `{}` runs; the goal is reached when it exits 0.",
            cmd.join(" ")
        ),
        (agent, _) => {
            format!("When the steps have succeeded, the agent `{agent}` judges the result.")
        }
    };
    let mut steps = vec![StepInput {
        id: "plan".into(),
        agent: planner.agent.clone(),
        prompt: planner_prompt(&input.goal, cfg, &how),
        ..StepInput::default()
    }];
    if !planner.verifier.is_empty() {
        steps.push(StepInput {
            id: "verify".into(),
            agent: planner.verifier.clone(),
            prompt: verifier_prompt(&input.goal),
            ..StepInput::default()
        });
    } else if !planner.verify_command.is_empty() {
        steps.push(StepInput {
            id: "verify".into(),
            command: planner.verify_command.clone(),
            ..StepInput::default()
        });
    }
    let with = ObjectiveInput {
        steps,
        ..input.clone()
    };
    let mut resolved = plans::resolve(&with, cfg, client_workdir)?;
    let mut it = resolved.steps.drain(..);
    let Some(mut plan) = it.next() else {
        return Err(PlanError::RelativeWorkdir(client_workdir.into()));
    };
    let verify = it.next().map(|mut v| {
        v.role = StepRole::Verify;
        // A verdict is final: the next round, not a retry, answers a rejection.
        v.retry.max_attempts = 1;
        v
    });
    drop(it);
    let workdir = plan.workdir.clone();
    plan.role = StepRole::Plan;
    let mut first = plan.clone();
    first.id = round_step_id(1, "plan");
    first.round = 1;
    for env in [&mut first.env, &mut first.step_env] {
        env.insert("ORCH_ROUND".into(), "1".into());
    }
    resolved.steps = vec![first];
    let record = Planner {
        agent: planner.agent.clone(),
        verifier: planner.verifier.clone(),
        verify_command: planner.verify_command.clone(),
        max_rounds: planner.max_rounds,
        approve_plan: planner.approve_plan,
        plan_step: plan,
        verify_step: verify,
        workdir,
        rounds: vec![Round {
            number: 1,
            ..Round::default()
        }],
    };
    Ok((resolved, record))
}

/// What a verifier agent reads on stdin.
fn verifier_prompt(goal: &str) -> String {
    format!(
        "# Goal\n\n{goal}\n\nCheck whether the goal has been reached in this directory. \
         Print your verdict on one line of stdout:\n\
         ::orch-verdict::{{\"pass\": true|false, \"findings\": \"what is missing or wrong\"}}\n"
    )
}

/// Reads the plan a planner wrote (JSON) with the same parser, validator and resolver
/// as a submitted plan; the error names every problem it found, for `ORCH_PLAN_ERRORS`.
pub fn read_plan(text: &str, cfg: &Config, workdir: &str) -> Result<Vec<StepPlan>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "the planner wrote no plan (nothing in $ORCH_PLAN_FILE and no ::orch-plan:: line)"
                .into(),
        );
    }
    if text.len() > MAX_PLAN_BYTES {
        return Err(format!(
            "the plan is {} bytes, more than the limit of {MAX_PLAN_BYTES}",
            text.len()
        ));
    }
    let spec = orch_proto::plan::parse_named(text, Some(orch_proto::plan::Format::Json), "plan")
        .map_err(|e| e.to_string())?;
    if spec.planner.is_some() {
        return Err("planner: a proposed plan gives steps, not a [planner] table".into());
    }
    if let Some(s) = spec
        .steps
        .iter()
        .find(|s| RESERVED_IDS.contains(&s.id.as_str()))
    {
        return Err(format!(
            "steps[{id}].id: `{id}` is taken by the round's own {id} step; choose another id",
            id = s.id
        ));
    }
    let agents: HashSet<String> = cfg.agents.keys().cloned().collect();
    let input = crate::api::objective_input(&spec, &agents).map_err(|e| e.to_string())?;
    let resolved = plans::resolve(&input, cfg, workdir).map_err(|e| e.to_string())?;
    Ok(resolved.steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c: Config = toml::from_str(
            "[agents.coder]\ncommand = [\"coder\"]\ntags = [\"code\"]\n[agents.planner]\ncommand = [\"p\"]\n",
        )
        .expect("config");
        c.safety.require_approval = vec!["git push*".into()];
        c
    }

    #[test]
    fn a_valid_plan_resolves_like_a_submitted_one() {
        let steps = read_plan(
            r#"{"steps":[{"id":"a","agent":"coder","prompt":"do it"},{"id":"b","command":["git","push"],"needs":["a"]}]}"#,
            &cfg(),
            "/tmp",
        )
        .expect("valid");
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].agent, "coder");
        assert_eq!(steps[1].needs, vec!["a".to_string()]);
        // The safety gates apply to planner-proposed steps as to submitted ones.
        assert!(steps[1].requires_approval);
        assert!(steps[1].approval_reason.contains("git push"));
    }

    #[test]
    fn a_bad_plan_names_its_problem() {
        let cases = [
            ("", "wrote no plan"),
            ("not json", "plan"),
            (
                r#"{"steps":[{"id":"a","agent":"ghost","prompt":"x"}]}"#,
                "unknown agent `ghost`",
            ),
            (r#"{"steps":[]}"#, "steps"),
            (
                r#"{"steps":[{"id":"a","command":["true"],"needs":["b"]}]}"#,
                "unknown step `b`",
            ),
            (r#"{"goal":"g","planner":{"agent":"planner"}}"#, "[planner]"),
        ];
        for (text, want) in cases {
            let e = read_plan(text, &cfg(), "/tmp").expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn the_prompt_has_the_goal_the_profiles_and_the_schema() {
        let p = planner_prompt("make it fast", &cfg(), "");
        for want in [
            "make it fast",
            "- coder (tags: code)",
            "- planner",
            "ORCH_PLAN_FILE",
        ] {
            assert!(p.contains(want), "{want} missing from {p}");
        }
    }
}
