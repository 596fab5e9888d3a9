//! What one attempt runs: its argv (a literal command, or its current agent profile's
//! template with `{prompt}`, `{workdir}`, `{objective_id}` and `{step_id}` filled in
//! inside argv elements, never through a shell), its environment and its files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::logfile::attempt_log;
use crate::model::{Objective, Step};
use crate::runner::{AttemptKey, RunSpec, UsageFormat};

/// The agent, argv and usage format of a step's next attempt.
pub fn command(
    cfg: &Config,
    step: &Step,
    objective_id: &str,
) -> Result<(String, Vec<String>, UsageFormat), String> {
    let agent = step.current_agent();
    if agent.is_empty() {
        return Ok((
            String::new(),
            step.plan.command.clone(),
            UsageFormat::OrchLines,
        ));
    }
    let profile = cfg.agents.get(agent);
    let template: &[String] = if step.agent_index > 0 {
        &profile
            .ok_or_else(|| format!("agent profile `{agent}` is not in the daemon config"))?
            .command
    } else if step.plan.template.is_empty() {
        // Stored before templates were kept: its command is already expanded.
        &step.plan.command
    } else {
        &step.plan.template
    };
    let vars = [
        ("prompt", step.plan.prompt.as_str()),
        ("workdir", step.plan.workdir.as_str()),
        ("objective_id", objective_id),
        ("step_id", step.plan.id.as_str()),
    ];
    let argv = template
        .iter()
        .map(|a| crate::model::expand_template(a, &vars))
        .collect();
    let format = profile
        .map(|p| UsageFormat::from_name(&p.usage))
        .unwrap_or_default();
    Ok((agent.to_string(), argv, format))
}

/// The environment of an attempt: the client's (or a minimal one), the `ORCH_*` ids,
/// then the step's own additions — a fallback agent gets its own profile's env plus
/// the step's, not the first agent's.
pub fn environment(
    cfg: &Config,
    obj: &Objective,
    step: &Step,
    number: u32,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = match &obj.client_env {
        Some(e) => e.clone(),
        None => minimal_env(),
    };
    env.insert("ORCH_OBJECTIVE_ID".into(), obj.id.clone());
    env.insert("ORCH_STEP_ID".into(), step.plan.id.clone());
    env.insert("ORCH_ATTEMPT".into(), number.to_string());
    env.remove("ORCH_CHECKPOINT_FILE");
    let fallback = (step.agent_index > 0)
        .then(|| cfg.agents.get(step.current_agent()))
        .flatten();
    match fallback {
        Some(p) => env.extend(
            p.env
                .iter()
                .chain(step.plan.step_env.iter())
                .map(|(k, v)| (k.clone(), v.clone())),
        ),
        None => env.extend(step.plan.env.iter().map(|(k, v)| (k.clone(), v.clone()))),
    }
    env
}

/// Everything an executor needs to run attempt `number` of `step`.
pub fn run_spec(
    cfg: &Config,
    logs_dir: &Path,
    obj: &Objective,
    step: &Step,
    number: u32,
    argv: Vec<String>,
    usage_format: UsageFormat,
) -> RunSpec {
    RunSpec {
        key: AttemptKey {
            objective_id: obj.id.clone(),
            step_index: step.index,
            number,
        },
        argv,
        workdir: PathBuf::from(&step.plan.workdir),
        env: environment(cfg, obj, step, number).into_iter().collect(),
        // Agent steps (including a fallback agent) get the prompt on stdin.
        stdin: (!step.current_agent().is_empty()).then(|| step.plan.prompt.clone().into_bytes()),
        log: attempt_log(logs_dir, &obj.id, &step.plan.id, number),
        log_max_bytes: cfg.logs.max_attempt_bytes.0,
        checkpoint: step.checkpoint.as_ref().map(|json| {
            let path = cfg
                .state_dir()
                .join("checkpoints")
                .join(&obj.id)
                .join(format!("{}.json", step.plan.id));
            (path, json.clone())
        }),
        grace: Duration::from_millis(cfg.grace_period.0),
        timeout: step.plan.timeout_ms.map(Duration::from_millis),
        idle_timeout: step.plan.idle_timeout_ms.map(Duration::from_millis),
        usage_format,
        run_as: crate::sys::run_as(obj.owner_uid, obj.owner_gid),
        limits: step.plan.limits,
        prepared: Default::default(),
    }
}

/// The environment an agent gets when the client sent none.
fn minimal_env() -> BTreeMap<String, String> {
    ["PATH", "HOME", "USER", "LANG"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .chain(std::iter::once((
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )))
        .collect()
}
