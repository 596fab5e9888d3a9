//! `orchctl submit`: builds the `ObjectiveSpec` from a plan file or flags, applies the
//! flag overrides, validates locally, sends it, and then optionally waits or watches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use orch_proto::plan::load_plan_file;
use orch_proto::v1::{
    GetObjectiveRequest, Limits, ObjectiveSpec, ObjectiveState, Planner, RetryPolicy, StepDefaults,
    StepSpec, SubmitRequest,
};
use orch_proto::validate::{check_env, validate_spec};
use orch_proto::words;

use crate::cli::SubmitArgs;
use crate::client::{Client, status_message};
use crate::error::{CtlError, Result};
use crate::live::LiveView;
use crate::output::{self, Format};
use crate::{progress, views, watch};

/// The step id of a one-step objective made from `-- CMD` or `--agent`.
pub const SINGLE_STEP_ID: &str = "main";
/// Longest default objective name made from a command or prompt, in characters.
const DEFAULT_NAME_CHARS: usize = 60;

/// The spec to submit and, for a plan file, the file's name (for error messages).
pub struct Built {
    pub spec: ObjectiveSpec,
    pub file: Option<String>,
}

/// Builds and validates the spec that `args` describe.
pub fn build_spec(args: &SubmitArgs) -> Result<Built> {
    if args.prompt.is_some() && args.agent.is_none() {
        return Err(CtlError::Usage("--prompt needs --agent NAME".into()));
    }
    let (mut spec, file) = if let Some(path) = &args.plan {
        let spec = load_plan_file(path).map_err(|e| CtlError::Plan(e.to_string()))?;
        (spec, Some(path.display().to_string()))
    } else if !args.command.is_empty() {
        let step = StepSpec {
            id: SINGLE_STEP_ID.into(),
            command: args.command.clone(),
            ..Default::default()
        };
        let name = default_name(&args.command.join(" "));
        (one_step(name, step), None)
    } else if let Some(agent) = &args.agent {
        let prompt = args.prompt.clone().unwrap_or_default();
        let step = StepSpec {
            id: SINGLE_STEP_ID.into(),
            agent: agent.clone(),
            prompt: prompt.clone(),
            ..Default::default()
        };
        (
            one_step(default_name(&format!("{agent}: {prompt}")), step),
            None,
        )
    } else if let (Some(goal), Some(planner)) = (&args.goal, &args.planner) {
        let spec = ObjectiveSpec {
            name: match default_name(goal) {
                n if n.is_empty() => "goal".to_string(),
                n => n,
            },
            goal: goal.clone(),
            planner: Some(Planner {
                agent: planner.clone(),
                verifier: args.verifier.clone().unwrap_or_default(),
                verify_command: args
                    .verify_command
                    .as_ref()
                    .map(|c| vec!["sh".to_string(), "-c".to_string(), c.clone()])
                    .unwrap_or_default(),
                max_rounds: args.max_rounds.unwrap_or(0),
                approve_plan: false,
            }),
            ..Default::default()
        };
        (spec, None)
    } else {
        return Err(CtlError::Usage(
            "give a plan file, a command after `--`, --agent NAME --prompt TEXT, or --goal TEXT --planner AGENT".into(),
        ));
    };
    apply_overrides(&mut spec, args)?;
    validate_spec(&spec, None).map_err(|e| match &file {
        Some(f) => CtlError::Plan(format!("{f}: {e}")),
        None => CtlError::Plan(e.to_string()),
    })?;
    Ok(Built { spec, file })
}

fn one_step(name: String, step: StepSpec) -> ObjectiveSpec {
    ObjectiveSpec {
        name,
        steps: vec![step],
        ..Default::default()
    }
}

/// A default objective name: whitespace collapsed, at most ~60 characters.
pub fn default_name(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    output::truncate(&flat, DEFAULT_NAME_CHARS)
}

/// Applies the submit flags over the spec: they override the plan's `[defaults]`,
/// its budget and name, and add `--env` to every step.
pub fn apply_overrides(spec: &mut ObjectiveSpec, args: &SubmitArgs) -> Result<()> {
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    if let Some(b) = args.budget_usd {
        spec.budget_usd = Some(b);
    }
    let defaults = spec.defaults.get_or_insert_with(StepDefaults::default);
    if let Some(t) = args.timeout {
        defaults.timeout_ms = Some(t);
    }
    if let Some(t) = args.idle_timeout {
        defaults.idle_timeout_ms = Some(t);
    }
    if let Some(w) = &args.workspace {
        defaults.workspace = w.clone();
    }
    if let Some(n) = args.retries {
        let attempts = retries_to_max_attempts(n)?;
        defaults
            .retry
            .get_or_insert_with(RetryPolicy::default)
            .max_attempts = Some(attempts);
    }
    if args.memory.is_some() || args.cpu_seconds.is_some() {
        let limits = defaults.limits.get_or_insert_with(Limits::default);
        if let Some(m) = args.memory {
            limits.memory_bytes = Some(m);
        }
        if let Some(c) = args.cpu_seconds {
            limits.cpu_seconds = Some(c);
        }
    }
    if *defaults == StepDefaults::default() {
        spec.defaults = None;
    }
    for step in &mut spec.steps {
        for (k, v) in &args.env {
            step.env.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// `--retries N` allows N attempts after the first: `max_attempts = N + 1`.
pub fn retries_to_max_attempts(retries: u32) -> Result<u32> {
    retries
        .checked_add(1)
        .ok_or_else(|| CtlError::Usage(format!("--retries {retries} is too large")))
}

/// The caller's working directory, or `--workdir` made absolute.
fn resolve_workdir(flag: Option<&Path>) -> Result<String> {
    let dir: PathBuf = match flag {
        Some(d) => std::path::absolute(d)
            .map_err(|e| CtlError::io(format!("resolving --workdir {}", d.display()), e))?,
        None => {
            std::env::current_dir().map_err(|e| CtlError::io("reading the current directory", e))?
        }
    };
    if !dir.is_dir() {
        return Err(CtlError::Usage(format!(
            "--workdir {}: not a directory",
            dir.display()
        )));
    }
    dir.to_str()
        .map(str::to_string)
        .ok_or_else(|| CtlError::Usage(format!("workdir {} is not valid UTF-8", dir.display())))
}

/// This process's environment (variables that are not valid UTF-8 cannot be sent and are skipped).
fn caller_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Runs `orchctl submit`.
pub async fn run(args: SubmitArgs, socket: &Path, format: Format) -> Result<()> {
    let Built { spec, file } = build_spec(&args)?;
    let workdir = resolve_workdir(args.workdir.as_deref())?;
    let env = if args.clean_env {
        HashMap::new()
    } else {
        caller_env()
    };
    check_env(&env, "environment").map_err(|e| {
        CtlError::Usage(format!(
            "your environment cannot be sent: {}; use --clean-env (and --env K=V for what the agent needs)",
            e.problem
        ))
    })?;

    let mut client = Client::connect(socket).await?;
    let request = SubmitRequest {
        spec: Some(spec),
        dry_run: args.dry_run,
        request_id: args.request_id.clone().unwrap_or_default(),
        workdir,
        env,
        ..Default::default()
    };
    let response = match client.api.submit(request).await {
        // The daemon's own validation (e.g. an unknown agent) names the key; add the file.
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            let msg = status_message(&status);
            return Err(match file {
                Some(f) => CtlError::Plan(format!("{f}: {msg}")),
                None => CtlError::Plan(msg),
            });
        }
        r => client.check(r)?,
    };

    if args.dry_run {
        let plan = response.plan.unwrap_or_default();
        return match format {
            Format::Json => output::json_pretty(&crate::json::plan(&plan)),
            Format::Table => output::write_out(&views::plan(&plan)),
        };
    }

    let id = response.id;
    match format {
        Format::Json => output::json_line(&serde_json::json!({ "id": id }))?,
        Format::Table => output::line(&id)?,
    }
    if response.existing {
        output::warn(&format!(
            "note: request id matched objective {id}, submitted before; nothing new was stored"
        ));
    }

    let attempts = progress::max_attempts(response.plan.as_ref());
    if args.plan.is_none() && args.retries.is_none() {
        // An ad-hoc command or prompt is retried by the daemon's default policy: say so.
        if let Some(&n) = attempts.get(SINGLE_STEP_ID).filter(|n| **n > 1) {
            output::warn(&format!(
                "note: it runs up to {n} times if it fails (the daemon's default retry \
                 policy); --retries 0 runs it once"
            ));
        }
    }

    if args.watch {
        return watch::show_objective(&mut client, &id, 0, &[], format).await;
    }
    if args.wait {
        let mut view: Box<dyn watch::EventView> =
            if format == Format::Table && watch::stdout_is_live_terminal() {
                let r = client
                    .api
                    .get_objective(GetObjectiveRequest { id: id.clone() })
                    .await;
                let start = client.check(r)?;
                Box::new(LiveView::on_stdout(&start, &[]))
            } else {
                Box::new(progress::StateLines::new(attempts))
            };
        let end = watch::follow_objective(&mut client, &id, 0, &[], view.as_mut()).await?;
        drop(view);
        if end.state == ObjectiveState::Succeeded as i32 {
            return Ok(());
        }
        progress::explain_failure(&mut client, &end).await?;
        let state = words::objective_state(
            ObjectiveState::try_from(end.state).unwrap_or(ObjectiveState::Unspecified),
        );
        let detail = if end.message.is_empty() {
            String::new()
        } else {
            format!(": {}", end.message)
        };
        return Err(CtlError::Failed(format!("objective {id} {state}{detail}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::io::Write;

    fn submit_args(argv: &[&str]) -> SubmitArgs {
        let mut full = vec!["orchctl", "submit"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full) {
            Ok(Cli {
                command: Command::Submit(s),
                ..
            }) => *s,
            Ok(_) => panic!("not a submit"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn retries_map_to_max_attempts() {
        assert_eq!(retries_to_max_attempts(0).ok(), Some(1));
        assert_eq!(retries_to_max_attempts(2).ok(), Some(3));
        assert!(retries_to_max_attempts(u32::MAX).is_err());
        let built = build_spec(&submit_args(&["--retries", "4", "--", "true"]));
        let spec = built.map(|b| b.spec).ok().unwrap_or_default();
        let retry = spec.defaults.and_then(|d| d.retry).unwrap_or_default();
        assert_eq!(retry.max_attempts, Some(5));
    }

    #[test]
    fn command_form() {
        let b = build_spec(&submit_args(&[
            "--env",
            "A=1",
            "--timeout",
            "30s",
            "--memory",
            "256M",
            "--",
            "echo",
            "hello",
            "world",
        ]));
        let Ok(b) = b else { panic!("build failed") };
        assert!(b.file.is_none());
        assert_eq!(b.spec.name, "echo hello world");
        assert_eq!(b.spec.steps.len(), 1);
        let s = &b.spec.steps[0];
        assert_eq!(s.id, "main");
        assert_eq!(s.command, vec!["echo", "hello", "world"]);
        assert_eq!(s.env.get("A").map(String::as_str), Some("1"));
        let d = b.spec.defaults.unwrap_or_default();
        assert_eq!(d.timeout_ms, Some(30_000));
        assert_eq!(d.limits.unwrap_or_default().memory_bytes, Some(256 << 20));
    }

    #[test]
    fn no_flags_means_no_defaults() {
        let Ok(b) = build_spec(&submit_args(&["--", "true"])) else {
            panic!("build failed")
        };
        assert!(b.spec.defaults.is_none());
        assert!(b.spec.budget_usd.is_none());
    }

    #[test]
    fn long_command_name_is_truncated() {
        let long = "x".repeat(200);
        let Ok(b) = build_spec(&submit_args(&["--", "echo", &long])) else {
            panic!("build failed")
        };
        assert!(b.spec.name.chars().count() <= DEFAULT_NAME_CHARS);
        assert!(b.spec.name.starts_with("echo xxx"));
    }

    #[test]
    fn agent_form() {
        let Ok(b) = build_spec(&submit_args(&[
            "--agent",
            "claude",
            "--prompt",
            "fix\nthe tests",
            "--name",
            "n",
        ])) else {
            panic!("build failed")
        };
        assert_eq!(b.spec.name, "n");
        assert_eq!(b.spec.steps[0].agent, "claude");
        assert_eq!(b.spec.steps[0].prompt, "fix\nthe tests");
        assert_eq!(
            default_name("claude: fix\nthe tests"),
            "claude: fix the tests"
        );
    }

    fn plan_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("plan.toml");
        let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    #[test]
    fn flags_override_plan_defaults() {
        let (_dir, path) = plan_file(
            r#"
name = "p"
budget_usd = 5.0
[defaults]
timeout = "20m"
idle_timeout = "5m"
retry = { max_attempts = 3, initial_backoff = "2s" }
limits = { memory = "2G", pids = 64 }
[[steps]]
id = "a"
command = ["true"]
env = { A = "plan", B = "plan" }
"#,
        );
        let p = path.to_string_lossy().to_string();
        let Ok(b) = build_spec(&submit_args(&[
            &p,
            "--timeout",
            "1m",
            "--retries",
            "0",
            "--memory",
            "512M",
            "--budget-usd",
            "1.5",
            "--env",
            "A=flag",
            "--name",
            "renamed",
        ])) else {
            panic!("build failed")
        };
        assert_eq!(b.file.as_deref(), Some(p.as_str()));
        assert_eq!(b.spec.name, "renamed");
        assert_eq!(b.spec.budget_usd, Some(1.5));
        let d = b.spec.defaults.unwrap_or_default();
        assert_eq!(d.timeout_ms, Some(60_000));
        assert_eq!(d.idle_timeout_ms, Some(300_000), "untouched default kept");
        let r = d.retry.unwrap_or_default();
        assert_eq!(r.max_attempts, Some(1));
        assert_eq!(
            r.initial_backoff_ms,
            Some(2000),
            "untouched retry field kept"
        );
        let l = d.limits.unwrap_or_default();
        assert_eq!(l.memory_bytes, Some(512 << 20));
        assert_eq!(l.pids, Some(64));
        let env = &b.spec.steps[0].env;
        assert_eq!(env.get("A").map(String::as_str), Some("flag"));
        assert_eq!(env.get("B").map(String::as_str), Some("plan"));
    }

    #[test]
    fn plan_errors_name_the_file_and_exit_2() {
        let (_dir, path) =
            plan_file("[[steps]]\nid = \"a\"\ncommand = [\"true\"]\nneeds = [\"zz\"]\n");
        let p = path.to_string_lossy().to_string();
        let Err(e) = build_spec(&submit_args(&[&p])) else {
            panic!("must fail")
        };
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{p}: steps[a].needs: ")),
            "{text}"
        );
    }

    #[test]
    fn invalid_name_from_flags_is_refused() {
        let Err(e) = build_spec(&submit_args(&["--name", " ", "--", "true"])) else {
            panic!("must fail")
        };
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("name: "));
    }
}
