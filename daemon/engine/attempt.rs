//! What one attempt runs: its argv (a literal command, or its current agent profile's
//! template with `{prompt}`, `{workdir}`, `{objective_id}` and `{step_id}` filled in
//! inside argv elements, never through a shell), its environment (a minimal one names
//! the account the agent runs as) and where its checkpoint is handed over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::logfile::attempt_log;
use crate::model::{Objective, PromptMode, Step, Workspace};
use crate::runner::{AttemptKey, RunSpec, UsageFormat};
use crate::sys;
use crate::workspace::{Prep, Runner as GitRunner, branch_name, workspace_dir};

use super::mcp;

/// How the agent of a step's next attempt takes its prompt: its own profile's mode as
/// recorded at submit (`None` for steps stored before: stdin and `{prompt}` alike), a
/// fallback agent's from its profile now.
pub fn prompt_mode(cfg: &Config, step: &Step) -> Option<PromptMode> {
    if step.current_agent().is_empty() {
        return None;
    }
    if !step.agent_from_config() {
        return step.plan.prompt_mode;
    }
    cfg.agents
        .get(step.current_agent())
        .map(|p| p.prompt_mode())
}

/// The session the next attempt of `step` continues: the step's last one, when its
/// current agent's profile says how to resume (`resume` or `resume_command`).
pub fn resumes<'a>(cfg: &Config, step: &'a Step) -> Option<&'a str> {
    let profile = cfg.agents.get(step.current_agent())?;
    if profile.resume.is_empty() && profile.resume_command.is_empty() {
        return None;
    }
    step.session.as_deref()
}

/// Where attempt `number` of a step finds its prompt with `prompt = "file"`.
pub fn prompt_file(cfg: &Config, objective_id: &str, step: &Step, number: u32) -> PathBuf {
    cfg.state_dir()
        .join("prompts")
        .join(objective_id)
        .join(format!("{}-{number}.txt", step.plan.id))
}

/// Where a planner step's attempt `number` writes its plan (`ORCH_PLAN_FILE`).
pub fn plan_file(cfg: &Config, objective_id: &str, step: &Step, number: u32) -> PathBuf {
    prompt_file(cfg, objective_id, step, number).with_extension("plan.json")
}

/// Where attempt `number` of a step finds its MCP configuration (`{mcp_config}`).
pub fn mcp_config_file(cfg: &Config, objective_id: &str, step: &Step, number: u32) -> PathBuf {
    let prompt = prompt_file(cfg, objective_id, step, number);
    let dir = prompt.parent().map(Path::to_path_buf).unwrap_or_default();
    mcp::config_file(&dir, &step.plan.id, number)
}

/// The MCP servers the agent of attempt `number` of a step is given by its profile.
fn mcp_servers(
    cfg: &Config,
    profile: &crate::config::AgentProfile,
    objective_id: &str,
    step: &Step,
    number: u32,
) -> BTreeMap<String, crate::config::McpServerConfig> {
    if profile.mcp.is_empty() && !profile.mcp_self {
        return BTreeMap::new();
    }
    let ids = [
        ("ORCH_OBJECTIVE_ID", objective_id.to_string()),
        ("ORCH_STEP_ID", step.plan.id.clone()),
        ("ORCH_ATTEMPT", number.to_string()),
    ];
    mcp::servers(cfg, profile, &ids, &mcp::orchctl_program())
}

/// The agent, argv and usage format of attempt `number` of a step.
pub fn command(
    cfg: &Config,
    step: &Step,
    objective_id: &str,
    number: u32,
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
    let base: &[String] = if step.agent_from_config() {
        &profile
            .ok_or_else(|| format!("agent profile `{agent}` is not in the daemon config"))?
            .command
    } else if step.plan.template.is_empty() {
        // Stored before templates were kept: its command is already expanded.
        &step.plan.command
    } else {
        &step.plan.template
    };
    // Continue the agent's earlier session when the profile says how.
    let template: Vec<String> = match (resumes(cfg, step), profile) {
        (Some(_), Some(p)) if !p.resume_command.is_empty() => p.resume_command.clone(),
        (Some(_), Some(p)) => base.iter().chain(&p.resume).cloned().collect(),
        _ => base.to_vec(),
    };
    let session = resumes(cfg, step).unwrap_or_default();
    let file = prompt_file(cfg, objective_id, step, number)
        .display()
        .to_string();
    let mcp_file = mcp_config_file(cfg, objective_id, step, number)
        .display()
        .to_string();
    let vars = [
        ("prompt", step.plan.prompt.as_str()),
        ("prompt_file", file.as_str()),
        ("mcp_config", mcp_file.as_str()),
        ("session_id", session),
        ("workdir", step.plan.workdir.as_str()),
        ("objective_id", objective_id),
        ("step_id", step.plan.id.as_str()),
    ];
    let mut argv: Vec<String> = template
        .iter()
        .map(|a| crate::model::expand_template(a, &vars))
        .collect();
    let format = profile
        .map(|p| UsageFormat::from_name(&p.usage))
        .unwrap_or_default();
    // Codex takes its MCP servers as `-c mcp_servers...` overrides, right after the program.
    if let Some(p) = profile
        && p.usage == "codex-json"
        && !argv.is_empty()
    {
        let servers = mcp_servers(cfg, p, objective_id, step, number);
        let extra = mcp::codex_args(&servers);
        argv.splice(1..1, extra);
    }
    Ok((agent.to_string(), argv, format))
}

/// Whose account an agent's minimal environment describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsAs {
    /// The daemon's own user: its `HOME`, `USER`, `LOGNAME`, `SHELL` are passed on.
    Daemon,
    /// Another user (a root daemon runs each agent as its submitter): that user's passwd
    /// entry, never the daemon's (root's) home; `None` when the user has no entry.
    User(Option<sys::Account>),
}

/// The environment of an attempt: the client's (or a minimal one), the `ORCH_*` ids,
/// then the step's own additions — a fallback agent gets its own profile's env plus
/// the step's, not the first agent's.
pub fn environment(
    cfg: &Config,
    obj: &Objective,
    step: &Step,
    number: u32,
    runs_as: &RunsAs,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = match &obj.client_env {
        Some(e) => e.clone(),
        None => minimal_env(runs_as),
    };
    env.insert("ORCH_OBJECTIVE_ID".into(), obj.id.clone());
    env.insert("ORCH_STEP_ID".into(), step.plan.id.clone());
    env.insert("ORCH_ATTEMPT".into(), number.to_string());
    env.remove("ORCH_CHECKPOINT_FILE");
    let fallback = step
        .agent_from_config()
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
    let run_as = sys::run_as(obj.owner_uid, obj.owner_gid);
    let runs_as = match &run_as {
        Some((uid, _, _)) => RunsAs::User(sys::account(*uid)),
        None => RunsAs::Daemon,
    };
    RunSpec {
        key: AttemptKey {
            objective_id: obj.id.clone(),
            step_index: step.index,
            number,
        },
        argv,
        workdir: PathBuf::from(&step.plan.workdir),
        env: environment(cfg, obj, step, number, &runs_as)
            .into_iter()
            .collect(),
        // An agent gets its prompt once: on stdin (also for steps stored before modes
        // were kept), in its argv (expanded already) or in a file.
        stdin: match prompt_mode(cfg, step) {
            Some(PromptMode::Stdin) => Some(step.plan.prompt.clone().into_bytes()),
            None if !step.current_agent().is_empty() => Some(step.plan.prompt.clone().into_bytes()),
            _ => None,
        },
        prompt_file: (prompt_mode(cfg, step) == Some(PromptMode::File)).then(|| {
            (
                prompt_file(cfg, &obj.id, step, number),
                step.plan.prompt.clone(),
            )
        }),
        mcp_config: cfg
            .agents
            .get(step.current_agent())
            .map(|p| mcp_servers(cfg, p, &obj.id, step, number))
            .filter(|servers| !servers.is_empty())
            .map(|servers| {
                (
                    mcp_config_file(cfg, &obj.id, step, number),
                    mcp::claude_config(&servers),
                )
            }),
        log: attempt_log(logs_dir, &obj.id, &step.plan.id, number),
        log_max_bytes: cfg.logs.max_attempt_bytes.0,
        checkpoint: step.checkpoint.as_ref().map(|json| {
            let path = checkpoints_dir(cfg)
                .join(&obj.id)
                .join(format!("{}.json", step.plan.id));
            (path, json.clone())
        }),
        grace: Duration::from_millis(cfg.grace_period.0),
        timeout: step.plan.timeout_ms.map(Duration::from_millis),
        idle_timeout: step.plan.idle_timeout_ms.map(Duration::from_millis),
        usage_format,
        // A resumed session's running totals carry on from what it had used.
        session_usage: resumes(cfg, step).map(|_| step.session_usage),
        threads: None,
        prices: crate::runner::Prices {
            table: std::sync::Arc::new(cfg.prices.clone()),
            model: cfg
                .agents
                .get(step.current_agent())
                .and_then(|p| p.model.clone())
                .unwrap_or_default(),
        },
        run_as,
        limits: step.plan.limits,
        prepared: Default::default(),
        executor: step.plan.executor.clone(),
        step_id: step.plan.id.clone(),
        protocol_journal: None,
        plan_file: (step.plan.role == crate::model::StepRole::Plan)
            .then(|| plan_file(cfg, &obj.id, step, number)),
        workspace: None,
    }
}

/// The private workspace attempt `number` of `step` works in (none for a shared one):
/// a scratch directory, or a worktree on the step's branch started from the branches of
/// the worktree steps it needs (else the recorded base). Git runs as the attempt does.
pub fn workspace(
    cfg: &Config,
    obj: &Objective,
    steps: &[Step],
    step: &Step,
    number: u32,
    spec: &RunSpec,
) -> Option<(Prep, GitRunner)> {
    let dir = |kind| workspace_dir(&cfg.state_dir(), kind, &obj.id, &step.plan.id);
    let prep = match (step.plan.workspace, &step.plan.repo) {
        (Workspace::Scratch, _) => Prep::Scratch {
            top: cfg.state_dir().join("scratch"),
            path: dir("scratch"),
        },
        (Workspace::Worktree, Some(repo)) => Prep::Worktree {
            top: cfg.state_dir().join("worktrees"),
            repo: repo.clone(),
            path: dir("worktrees"),
            branch: branch_name(&obj.id, &step.plan.id),
            from: step
                .plan
                .needs
                .iter()
                .filter_map(|n| steps.iter().find(|s| &s.plan.id == n))
                .filter(|s| {
                    s.plan.workspace == Workspace::Worktree
                        && s.plan.repo.as_ref().map(|r| &r.root) == Some(&repo.root)
                })
                .map(|s| branch_name(&obj.id, &s.plan.id))
                .collect(),
            known: step.branch.clone(),
            message: format!(
                "orch: objective {} step {} attempt {number}\n\nCommitted by orch: what the agent left uncommitted.",
                obj.id, step.plan.id
            ),
        },
        _ => return None,
    };
    let git = GitRunner {
        run_as: spec.run_as.as_ref().map(|(uid, gid, _)| (*uid, *gid)),
        env: spec.env.clone(),
    };
    Some((prep, git))
}

/// Where checkpoints are handed to agents: `checkpoints/` in the state directory. A root
/// daemon keeps the state directory and this one traversable (0711) but not listable, so
/// another user's agent reaches its own file (0600, given to that user) and nothing else.
pub fn checkpoints_dir(cfg: &Config) -> PathBuf {
    cfg.state_dir().join("checkpoints")
}

/// The default `PATH` when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The environment an agent gets when the client sent none: `PATH` and `LANG` from the
/// daemon, and `HOME`, `USER`, `LOGNAME`, `SHELL` of the user the agent runs as.
fn minimal_env(runs_as: &RunsAs) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
    );
    if let Ok(lang) = std::env::var("LANG") {
        env.insert("LANG".to_string(), lang);
    }
    match runs_as {
        RunsAs::Daemon => {
            for k in ["HOME", "USER", "LOGNAME", "SHELL"] {
                if let Ok(v) = std::env::var(k) {
                    env.insert(k.to_string(), v);
                }
            }
        }
        RunsAs::User(Some(a)) => {
            env.insert("HOME".to_string(), a.home.clone());
            env.insert("USER".to_string(), a.name.clone());
            env.insert("LOGNAME".to_string(), a.name.clone());
            env.insert("SHELL".to_string(), a.shell.clone());
        }
        // No passwd entry: nothing of the daemon's own account either.
        RunsAs::User(None) => {
            env.insert("HOME".to_string(), "/".to_string());
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_env_names_the_account_the_agent_runs_as() {
        let alice = sys::Account {
            name: "alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/zsh".into(),
        };
        let env = minimal_env(&RunsAs::User(Some(alice)));
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("HOME"), Some("/home/alice"));
        assert_eq!(get("USER"), Some("alice"));
        assert_eq!(get("LOGNAME"), Some("alice"));
        assert_eq!(get("SHELL"), Some("/bin/zsh"));
        assert!(get("PATH").is_some());
        // No passwd entry: nothing of the daemon's own account either.
        let env = minimal_env(&RunsAs::User(None));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/"));
        assert!(!env.contains_key("USER") && !env.contains_key("SHELL"));
    }
}
