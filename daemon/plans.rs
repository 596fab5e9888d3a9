//! Plan resolution: turns a submitted objective (already checked as a message by
//! `orch_proto::validate`) into the steps the daemon runs, against the daemon's agent
//! profiles and defaults. Domain logic only: no tonic or prost types.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::config::{Config, limits_of};
use crate::engine::machine::safety::{self, Gate};
use crate::model::{
    AUTO_AGENT, Budget, FailureAction, FailureClass, Limits, MAX_ARG_PROMPT_BYTES, Outcome,
    PromptMode, RetryPolicy, StepPlan, Workspace, expand_template,
};

/// Why a submitted objective cannot be resolved. The messages name the field the way
/// `orch_proto::validate::SpecError` does (`field: problem`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The client's working directory, which relative step workdirs start from, is relative.
    #[error("workdir: `{0}` is not an absolute path")]
    RelativeWorkdir(String),
    /// A step names an agent profile the daemon does not have.
    #[error("{at}.agent: unknown agent `{agent}` (known: {known})")]
    UnknownAgent {
        at: String,
        agent: String,
        known: String,
    },
    /// A step's fallback list names an agent profile the daemon does not have.
    #[error("{at}.fallback[{index}]: unknown agent `{agent}`")]
    UnknownFallback {
        at: String,
        index: usize,
        agent: String,
    },
    /// A prompt too large to pass as one argument to an agent that takes it in argv.
    #[error(
        "{at}.prompt: {bytes} bytes is too large to pass as an argument to agent `{agent}` (at most {max}); give the profile prompt = \"stdin\" or \"file\""
    )]
    PromptTooLarge {
        at: String,
        agent: String,
        bytes: usize,
        max: usize,
    },
    /// A step (or the plan's defaults) names an executor the daemon has no config for.
    #[error(
        "{at}.executor: `{executor}` is not configured in this daemon (add [executors.{executor}] to orchd.toml; see docs/scaling.md)"
    )]
    ExecutorNotConfigured { at: String, executor: String },
    /// A routed step asks for tags no agent profile has.
    #[error(
        "{at}.route.tags: no agent profile has every tag of [{tags}] (give a profile tags = [...] in orchd.toml; see docs/agents.md)"
    )]
    NoRouteCandidate { at: String, tags: String },
    /// A `worktree` step's workdir is not inside a git repository (or has no commit).
    #[error("{at}.workspace: `worktree` needs a git repository with a commit: {why}")]
    NotARepository { at: String, why: String },
    /// A private workspace for a step that does not run on this machine.
    #[error(
        "{at}.workspace: `{workspace}` works only for steps run on this machine, not on executor `{executor}`"
    )]
    WorkspaceElsewhere {
        at: String,
        workspace: String,
        executor: String,
    },
}

/// A submitted objective, as the domain sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectiveInput {
    pub name: String,
    pub goal: String,
    pub priority: i32,
    pub budget: Budget,
    /// The plan's `[defaults]`, applied to every step.
    pub defaults: StepDefaults,
    pub steps: Vec<StepInput>,
}

/// Per-step settings a plan's `[defaults]` gives; `None` inherits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepDefaults {
    pub timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub retry: Option<RetryOverlay>,
    pub limits: Option<Limits>,
    /// Empty: local.
    pub executor: String,
    /// Empty: shared.
    pub workspace: String,
}

/// One submitted step: an agent profile plus a prompt, or a literal command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepInput {
    pub id: String,
    /// Empty for a literal command.
    pub agent: String,
    pub prompt: String,
    /// Empty for an agent step.
    pub command: Vec<String>,
    /// Relative to the client's workdir; empty = that workdir.
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    pub needs: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub retry: Option<RetryOverlay>,
    pub limits: Option<Limits>,
    pub requires_approval: bool,
    pub fallback: Vec<String>,
    pub fallback_on_rate_limit: bool,
    /// Empty: the plan's default, then local.
    pub executor: String,
    /// With `agent = "auto"`: how the agent is chosen at each attempt.
    pub route: Option<crate::model::RouteSpec>,
    /// Empty: the plan's default, then shared.
    pub workspace: String,
}

/// The retry settings a plan or step gives; `None` inherits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryOverlay {
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub multiplier: Option<f64>,
    pub jitter: Option<f64>,
    pub retry_on: Option<Vec<Outcome>>,
    pub retry_exit_codes: Option<Vec<i32>>,
    pub max_rate_limit_waits: Option<u32>,
    /// Classes whose action is set here; the others inherit.
    pub on_failure: Vec<(FailureClass, FailureAction)>,
}

/// An objective resolved against the config: what the engine stores, less who asked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedObjective {
    pub name: String,
    pub goal: String,
    pub priority: i32,
    pub budget: Budget,
    pub steps: Vec<StepPlan>,
}

/// Resolves `input` into the steps the daemon runs: agent commands expanded, defaults
/// applied (step, then plan `[defaults]`, then the agent profile, then the daemon config),
/// workdirs made absolute against `client_workdir` (empty: the daemon's own cwd).
pub fn resolve(
    input: &ObjectiveInput,
    cfg: &Config,
    client_workdir: &str,
) -> Result<ResolvedObjective, PlanError> {
    check_agents(input, cfg)?;
    check_executors(input, cfg)?;
    let base_dir = if client_workdir.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    } else {
        let p = PathBuf::from(client_workdir);
        if !p.is_absolute() {
            return Err(PlanError::RelativeWorkdir(client_workdir.to_string()));
        }
        p
    };
    let defaults = &input.defaults;
    let mut steps: Vec<StepPlan> = input
        .steps
        .iter()
        .map(|s| resolve_step(s, defaults, cfg, &base_dir))
        .collect();
    for plan in &mut steps {
        place(plan, cfg)?;
    }
    Ok(ResolvedObjective {
        name: input.name.clone(),
        goal: input.goal.clone(),
        priority: input.priority,
        budget: input.budget.clone(),
        steps,
    })
}

/// Every agent and fallback agent a step names must be one of the config's profiles.
fn check_agents(input: &ObjectiveInput, cfg: &Config) -> Result<(), PlanError> {
    for (i, s) in input.steps.iter().enumerate() {
        let at = if s.id.is_empty() {
            format!("steps[{i}]")
        } else {
            format!("steps[{}]", s.id)
        };
        if s.agent == AUTO_AGENT {
            let tags = s
                .route
                .as_ref()
                .map(|r| r.tags.as_slice())
                .unwrap_or_default();
            if !cfg
                .agents
                .values()
                .any(|p| tags.iter().all(|t| p.tags.contains(t)))
            {
                return Err(PlanError::NoRouteCandidate {
                    at,
                    tags: tags.join(", "),
                });
            }
            continue;
        }
        if !s.agent.is_empty() && !cfg.agents.contains_key(&s.agent) {
            let known: Vec<&str> = cfg.agents.keys().map(String::as_str).collect();
            return Err(PlanError::UnknownAgent {
                at,
                agent: s.agent.clone(),
                known: known.join(", "),
            });
        }
        // Every agent that may run it must be able to take the prompt.
        for agent in std::iter::once(&s.agent).chain(&s.fallback) {
            let argv = cfg
                .agents
                .get(agent)
                .is_some_and(|p| p.prompt_mode() == PromptMode::Argv);
            if argv && s.prompt.len() > MAX_ARG_PROMPT_BYTES {
                return Err(PlanError::PromptTooLarge {
                    at,
                    agent: agent.clone(),
                    bytes: s.prompt.len(),
                    max: MAX_ARG_PROMPT_BYTES,
                });
            }
        }
        if let Some((index, agent)) = s
            .fallback
            .iter()
            .enumerate()
            .find(|(_, f)| !cfg.agents.contains_key(*f))
        {
            return Err(PlanError::UnknownFallback {
                at,
                index,
                agent: agent.clone(),
            });
        }
    }
    Ok(())
}

/// The executor a step runs on: its own, else the plan's default, else local (stored
/// empty).
fn executor_of(s: &StepInput, defaults: &StepDefaults) -> String {
    let e = if s.executor.is_empty() {
        &defaults.executor
    } else {
        &s.executor
    };
    if e == "local" {
        String::new()
    } else {
        e.clone()
    }
}

/// Every executor a step runs on must be configured (`local` always is).
fn check_executors(input: &ObjectiveInput, cfg: &Config) -> Result<(), PlanError> {
    for s in &input.steps {
        let e = executor_of(s, &input.defaults);
        let configured = match e.as_str() {
            "" => true,
            "slurm" => cfg.executors.slurm.is_some(),
            _ => false,
        };
        if !configured {
            let at = if s.executor.is_empty() {
                "defaults".to_string()
            } else {
                format!("steps[{}]", s.id)
            };
            return Err(PlanError::ExecutorNotConfigured { at, executor: e });
        }
    }
    Ok(())
}

fn resolve_step(s: &StepInput, defaults: &StepDefaults, cfg: &Config, base: &Path) -> StepPlan {
    let profile = if s.agent.is_empty() {
        None
    } else {
        cfg.agents.get(&s.agent)
    };
    let workdir = if s.workdir.is_empty() {
        base.to_path_buf()
    } else {
        base.join(&s.workdir)
    };
    let workdir_text = normalize(&workdir).display().to_string();
    let vars = [
        ("prompt", s.prompt.as_str()),
        ("workdir", workdir_text.as_str()),
    ];
    let command = match profile {
        Some(p) => p
            .command
            .iter()
            .map(|a| expand_template(a, &vars))
            .collect(),
        None => s.command.clone(),
    };
    let mut env: BTreeMap<String, String> = profile.map(|p| p.env.clone()).unwrap_or_default();
    env.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut retry = cfg.retry_policy();
    overlay_retry(&mut retry, defaults.retry.as_ref());
    overlay_retry(&mut retry, s.retry.as_ref());
    let mut limits = cfg.limits();
    if let Some(p) = profile {
        overlay_limits(&mut limits, &limits_of(&p.limits));
    }
    if let Some(l) = &defaults.limits {
        overlay_limits(&mut limits, l);
    }
    if let Some(l) = &s.limits {
        overlay_limits(&mut limits, l);
    }
    let profile_timeout = profile.and_then(|p| p.timeout).map(|d| d.0);
    let profile_idle = profile.and_then(|p| p.idle_timeout).map(|d| d.0);
    StepPlan {
        id: s.id.clone(),
        agent: s.agent.clone(),
        prompt: s.prompt.clone(),
        command,
        template: profile.map(|p| p.command.clone()).unwrap_or_default(),
        workdir: workdir_text,
        env,
        step_env: s.env.clone(),
        needs: s.needs.clone(),
        timeout_ms: s
            .timeout_ms
            .or(defaults.timeout_ms)
            .or(profile_timeout)
            .or(cfg.defaults.timeout.map(|d| d.0)),
        idle_timeout_ms: s
            .idle_timeout_ms
            .or(defaults.idle_timeout_ms)
            .or(profile_idle)
            .or(cfg.defaults.idle_timeout.map(|d| d.0)),
        retry,
        limits,
        requires_approval: s.requires_approval,
        fallback: s.fallback.clone(),
        fallback_on_rate_limit: s.fallback_on_rate_limit,
        prompt_mode: profile.map(|p| p.prompt_mode()),
        route: (s.agent == AUTO_AGENT).then(|| s.route.clone().unwrap_or_default()),
        executor: executor_of(s, defaults),
        approval_reason: String::new(),
        workspace: Workspace::from_word(if s.workspace.is_empty() {
            &defaults.workspace
        } else {
            &s.workspace
        })
        .unwrap_or_default(),
        repo: None,
        role: Default::default(),
        round: 0,
    }
}

/// What the daemon decides about a resolved step beyond its plan: whether it waits for
/// approval (the safety gates) and, for a `worktree` step, its repository and base commit.
fn place(plan: &mut StepPlan, cfg: &Config) -> Result<(), PlanError> {
    let at = format!("steps[{}]", plan.id);
    let literal: &[String] = if plan.agent.is_empty() {
        &plan.command
    } else {
        &[]
    };
    let gate = Gate {
        asked: plan.requires_approval,
        agent: &plan.agent,
        profile_requires: cfg
            .agents
            .get(&plan.agent)
            .is_some_and(|p| p.requires_approval),
        command: literal,
        rules: &cfg.safety.require_approval,
    };
    if let Some(why) = safety::gate(&gate) {
        plan.requires_approval = true;
        plan.approval_reason = why;
    }
    if plan.workspace != Workspace::Shared && !plan.executor.is_empty() {
        return Err(PlanError::WorkspaceElsewhere {
            at,
            workspace: plan.workspace.word().into(),
            executor: plan.executor.clone(),
        });
    }
    if plan.workspace == Workspace::Worktree {
        let repo = crate::workspace::repo_base(Path::new(&plan.workdir))
            .map_err(|why| PlanError::NotARepository { at, why })?;
        plan.repo = Some(repo);
    }
    Ok(())
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Applies the settings `r` gives over `p`; a backoff cap below the start is raised to it.
fn overlay_retry(p: &mut RetryPolicy, r: Option<&RetryOverlay>) {
    let Some(r) = r else { return };
    if let Some(v) = r.max_attempts {
        p.max_attempts = v;
    }
    if let Some(v) = r.initial_backoff_ms {
        p.initial_backoff_ms = v;
    }
    if let Some(v) = r.max_backoff_ms {
        p.max_backoff_ms = v;
    }
    if let Some(v) = r.multiplier {
        p.multiplier = v;
    }
    if let Some(v) = r.jitter {
        p.jitter = v;
    }
    if let Some(v) = &r.retry_on {
        p.retry_on = v.clone();
    }
    if let Some(v) = &r.retry_exit_codes {
        p.retry_exit_codes = v.clone();
    }
    if let Some(v) = r.max_rate_limit_waits {
        p.max_rate_limit_waits = v;
    }
    for (class, action) in &r.on_failure {
        p.on_failure.put(*class, *action);
    }
    if p.max_backoff_ms < p.initial_backoff_ms {
        p.max_backoff_ms = p.initial_backoff_ms;
    }
}

/// Applies every limit `o` sets over `l`.
fn overlay_limits(l: &mut Limits, o: &Limits) {
    l.memory_bytes = o.memory_bytes.or(l.memory_bytes);
    l.cpu_seconds = o.cpu_seconds.or(l.cpu_seconds);
    l.pids = o.pids.or(l.pids);
    l.open_files = o.open_files.or(l.open_files);
    l.cpu_quota = o.cpu_quota.or(l.cpu_quota);
}

/// Whether `program` names an executable file (directly, or found on the daemon's PATH):
/// the `found` of an agent profile.
pub fn on_path(program: &str) -> bool {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(program))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective(steps: Vec<StepInput>) -> ObjectiveInput {
        ObjectiveInput {
            name: "t".into(),
            steps,
            ..Default::default()
        }
    }

    fn command(id: &str) -> StepInput {
        StepInput {
            id: id.into(),
            command: vec!["true".into()],
            ..Default::default()
        }
    }

    fn agent(id: &str, agent: &str, prompt: &str) -> StepInput {
        StepInput {
            id: id.into(),
            agent: agent.into(),
            prompt: prompt.into(),
            ..Default::default()
        }
    }

    fn cfg() -> Config {
        Config::default()
            .layer(&Default::default())
            .expect("default config")
    }

    fn steps(input: &ObjectiveInput, workdir: &str) -> Vec<StepPlan> {
        resolve(input, &cfg(), workdir)
            .unwrap_or_else(|e| panic!("resolve: {e}"))
            .steps
    }

    #[test]
    fn safety_rules_and_profiles_gate_steps_with_a_reason() {
        let mut c = cfg();
        c.safety.require_approval = vec!["git push*".into()];
        let mut deployer = crate::config::shell_profile();
        deployer.requires_approval = true;
        c.agents.insert("deployer".into(), deployer);
        let mut push = command("push");
        push.command = vec!["git".into(), "push".into(), "origin".into()];
        let mut asked = command("asked");
        asked.requires_approval = true;
        let input = objective(vec![
            command("plain"),
            push,
            agent("deploy", "deployer", "echo hi"),
            asked,
        ]);
        let r = resolve(&input, &c, "/").unwrap_or_else(|e| panic!("resolve: {e}"));
        let gates: Vec<(bool, &str)> = r
            .steps
            .iter()
            .map(|s| (s.requires_approval, s.approval_reason.as_str()))
            .collect();
        assert_eq!(
            gates,
            [
                (false, ""),
                (true, "command matches safety rule `git push*`"),
                (true, "agent profile `deployer` requires approval"),
                (true, ""),
            ]
        );
    }

    #[test]
    fn a_worktree_needs_a_repository_and_this_machine() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut s = command("a");
        s.workspace = "worktree".into();
        let input = objective(vec![s.clone()]);
        let workdir = dir.path().display().to_string();
        match resolve(&input, &cfg(), &workdir) {
            Err(PlanError::NotARepository { at, why }) => {
                assert_eq!(at, "steps[a]");
                assert!(why.contains("not inside a git repository"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let mut c = cfg();
        c.executors.slurm = Some(Default::default());
        s.workspace = "scratch".into();
        s.executor = "slurm".into();
        let e = resolve(&objective(vec![s]), &c, &workdir).unwrap_err();
        assert_eq!(
            e.to_string(),
            "steps[a].workspace: `scratch` works only for steps run on this machine, not on executor `slurm`"
        );
    }

    #[test]
    fn agent_template_is_expanded_as_one_argument() {
        let s = objective(vec![agent("a", "shell", "echo 'x y'; rm -rf $HOME")]);
        let steps = steps(&s, "/tmp");
        assert_eq!(
            steps[0].command,
            vec!["bash", "-c", "echo 'x y'; rm -rf $HOME"]
        );
        assert_eq!(steps[0].template, vec!["bash", "-c", "{prompt}"]);
        assert_eq!(steps[0].workdir, "/tmp");
    }

    #[test]
    fn defaults_layer_step_over_plan_over_daemon() {
        let mut s = objective(vec![
            StepInput {
                timeout_ms: Some(5),
                retry: Some(RetryOverlay {
                    max_attempts: Some(7),
                    ..Default::default()
                }),
                workdir: "sub/../x".into(),
                ..command("a")
            },
            command("b"),
        ]);
        s.defaults = StepDefaults {
            timeout_ms: Some(9),
            retry: Some(RetryOverlay {
                initial_backoff_ms: Some(100),
                ..Default::default()
            }),
            limits: Some(Limits {
                memory_bytes: Some(1 << 30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let steps = steps(&s, "/w");
        assert_eq!(steps[0].timeout_ms, Some(5));
        assert_eq!(steps[1].timeout_ms, Some(9));
        assert_eq!(steps[0].retry.max_attempts, 7);
        assert_eq!(steps[1].retry.max_attempts, 3);
        assert_eq!(steps[1].retry.initial_backoff_ms, 100);
        assert_eq!(steps[1].limits.memory_bytes, Some(1 << 30));
        assert_eq!(steps[0].workdir, "/w/x");
    }

    #[test]
    fn step_env_is_kept_apart_from_the_profile_env() {
        let mut c = cfg();
        let shell = c.agents.get_mut("shell").expect("built-in shell profile");
        shell.env.insert("FROM".into(), "profile".into());
        shell.env.insert("BOTH".into(), "profile".into());
        let mut a = agent("a", "shell", "true");
        a.env = [("BOTH".to_string(), "step".to_string())].into();
        let r = resolve(&objective(vec![a]), &c, "/").unwrap_or_else(|e| panic!("{e}"));
        let env = &r.steps[0].env;
        assert_eq!(env.get("FROM").map(String::as_str), Some("profile"));
        assert_eq!(env.get("BOTH").map(String::as_str), Some("step"));
        assert_eq!(r.steps[0].step_env.len(), 1);
    }

    #[test]
    fn retry_overlay_sets_outcomes_and_codes_and_raises_the_cap() {
        let s = objective(vec![StepInput {
            retry: Some(RetryOverlay {
                initial_backoff_ms: Some(90_000),
                retry_on: Some(vec![Outcome::Timeout]),
                retry_exit_codes: Some(vec![75]),
                ..Default::default()
            }),
            ..command("a")
        }]);
        let retry = &steps(&s, "/")[0].retry;
        assert_eq!(retry.retry_on, vec![Outcome::Timeout]);
        assert_eq!(retry.retry_exit_codes, vec![75]);
        assert_eq!(retry.max_backoff_ms, 90_000);
    }

    #[test]
    fn objective_fields_are_carried() {
        let s = ObjectiveInput {
            goal: "g".into(),
            priority: 4,
            budget: Budget {
                max_cost_usd: Some(1.5),
                max_tokens: Some(10),
            },
            ..objective(vec![command("a")])
        };
        let r = resolve(&s, &cfg(), "/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.name.as_str(), r.goal.as_str(), r.priority),
            ("t", "g", 4)
        );
        assert_eq!(r.budget, s.budget);
    }

    #[test]
    fn unknown_agent_is_refused() {
        let e = resolve(&objective(vec![agent("a", "nope", "hi")]), &cfg(), "/").unwrap_err();
        assert_eq!(
            e,
            PlanError::UnknownAgent {
                at: "steps[a]".into(),
                agent: "nope".into(),
                known: "shell".into(),
            }
        );
        assert_eq!(
            e.to_string(),
            "steps[a].agent: unknown agent `nope` (known: shell)"
        );
    }

    #[test]
    fn unknown_fallback_agent_is_refused() {
        let s = objective(vec![StepInput {
            fallback: vec!["shell".into(), "nope".into()],
            ..agent("a", "shell", "hi")
        }]);
        let e = resolve(&s, &cfg(), "/").unwrap_err();
        assert_eq!(e.to_string(), "steps[a].fallback[1]: unknown agent `nope`");
    }

    #[test]
    fn relative_client_workdir_is_refused() {
        let e = resolve(&objective(vec![command("a")]), &cfg(), "rel").unwrap_err();
        assert_eq!(e, PlanError::RelativeWorkdir("rel".into()));
        assert_eq!(e.to_string(), "workdir: `rel` is not an absolute path");
    }

    #[test]
    fn normalize_drops_dot_components() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/..")), PathBuf::from("/"));
    }

    #[test]
    fn on_path_finds_executables_only() {
        assert!(on_path("sh"));
        assert!(on_path("/bin/sh"));
        assert!(!on_path("/etc/passwd"));
        assert!(!on_path("orch-no-such-program"));
    }
}
