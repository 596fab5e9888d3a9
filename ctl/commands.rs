//! The commands that are one call and a print: status, list, the objective controls,
//! agents, usage, audit, daemon status/reload and completions.

use orch_proto::v1::{
    ApproveRequest, DaemonStatusRequest, GetObjectiveRequest, GetUsageRequest, ListAgentsRequest,
    ListAuditRequest, ListObjectivesRequest, Objective, ObjectiveRef, ObjectiveState,
    ReloadConfigRequest, RetryRequest,
};
use orch_proto::words;

use crate::client::Client;
use crate::error::{CtlError, Result};
use crate::json;
use crate::output::{self, Format};
use crate::views;

/// Prints an objective: the status view, or the status JSON object.
fn print_objective(o: &Objective, format: Format) -> Result<()> {
    match format {
        Format::Json => output::json_pretty(&json::objective(o)),
        Format::Table => output::write_out(&views::objective(o)),
    }
}

/// Prints the state an objective is in after a control call.
fn print_state(o: &Objective, format: Format) -> Result<()> {
    match format {
        Format::Json => output::json_pretty(&json::objective(o)),
        Format::Table => output::line(&words::objective_state(
            ObjectiveState::try_from(o.state).unwrap_or(ObjectiveState::Unspecified),
        )),
    }
}

/// `orchctl status ID`.
pub async fn status(client: &mut Client, id: String, format: Format) -> Result<()> {
    let r = client.api.get_objective(GetObjectiveRequest { id }).await;
    let o = client.check(r)?;
    print_objective(&o, format)
}

/// `orchctl diff ID [STEP]`: `git diff BASE HEAD` of each worktree step's branch, run
/// here as the caller, in the step's repository.
pub async fn diff(
    client: &mut Client,
    id: String,
    step: Option<String>,
    git_args: Vec<String>,
) -> Result<()> {
    let r = client.api.get_objective(GetObjectiveRequest { id }).await;
    let o = client.check(r)?;
    let steps: Vec<&orch_proto::v1::Step> = match &step {
        Some(name) => {
            let s = o.steps.iter().find(|s| &s.id == name).ok_or_else(|| {
                CtlError::Usage(format!("objective {} has no step `{name}`", o.id))
            })?;
            if s.workspace != "worktree" {
                return Err(CtlError::Usage(format!(
                    "step `{name}` has no worktree (its workspace is {})",
                    if s.workspace.is_empty() {
                        "shared"
                    } else {
                        &s.workspace
                    }
                )));
            }
            if s.branch.is_empty() {
                return Err(CtlError::Failed(format!(
                    "step `{name}` has no branch yet (it has not started)"
                )));
            }
            vec![s]
        }
        None => o.steps.iter().filter(|s| !s.branch.is_empty()).collect(),
    };
    if steps.is_empty() {
        return Err(CtlError::Failed(format!(
            "objective {} has no worktree step with a branch",
            o.id
        )));
    }
    let several = steps.len() > 1;
    for s in steps {
        if several {
            println!("# step {} (branch {})", s.id, s.branch);
        }
        let head = if s.branch_head.is_empty() {
            &s.branch
        } else {
            &s.branch_head
        };
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(&s.repo)
            .args(["diff", &s.branch_base, head])
            .args(&git_args)
            .status()
            .map_err(|source| CtlError::Io {
                what: "cannot run git".into(),
                source,
            })?;
        if !status.success() {
            return Err(CtlError::Failed(format!(
                "git diff in {} failed for step `{}` ({status})",
                s.repo, s.id
            )));
        }
    }
    Ok(())
}

/// Parses `--state` (exit 2 naming the valid states).
pub fn parse_state(text: &str) -> Result<ObjectiveState> {
    words::parse_objective_state(text).ok_or_else(|| {
        CtlError::Usage(format!(
            "unknown state `{text}` (valid: {})",
            words::OBJECTIVE_STATES.join(", ")
        ))
    })
}

/// `orchctl list`.
pub async fn list(
    client: &mut Client,
    state: Option<ObjectiveState>,
    limit: Option<u32>,
    format: Format,
) -> Result<()> {
    let request = ListObjectivesRequest {
        state: state.map(|s| s as i32),
        limit: limit.unwrap_or(0),
    };
    let r = client.api.list_objectives(request).await;
    let items = client.check(r)?.objectives;
    match format {
        Format::Json => output::json_pretty(&serde_json::Value::Array(
            items.iter().map(json::summary).collect(),
        )),
        Format::Table => output::write_out(&views::list(&items)),
    }
}

/// The objective controls.
pub enum Control {
    Cancel,
    Pause,
    Resume,
    Retry {
        step: Option<String>,
        /// New agent sessions instead of resumed ones.
        fresh: bool,
    },
    Answer {
        step: String,
        approve: bool,
        reason: Option<String>,
    },
}

/// `orchctl cancel|pause|resume|retry|approve|deny`.
pub async fn control(client: &mut Client, id: String, what: Control, format: Format) -> Result<()> {
    let r = match what {
        Control::Cancel => client.api.cancel(ObjectiveRef { id }).await,
        Control::Pause => client.api.pause(ObjectiveRef { id }).await,
        Control::Resume => client.api.resume(ObjectiveRef { id }).await,
        Control::Retry { step, fresh } => {
            let request = RetryRequest {
                id,
                step_id: step.unwrap_or_default(),
                fresh,
            };
            client.api.retry(request).await
        }
        Control::Answer {
            step,
            approve,
            reason,
        } => {
            let request = ApproveRequest {
                id,
                step_id: step.clone(),
                approve,
                reason: reason.unwrap_or_default(),
            };
            let r = client.api.approve(request).await;
            let o = client.check(r)?;
            return match format {
                Format::Json => output::json_pretty(&json::objective(&o)),
                Format::Table => output::line(&answered(&o, &step, approve)),
            };
        }
    };
    let o = client.check(r)?;
    print_state(&o, format)
}

/// What happens next after an approval gate was answered, in one sentence.
pub fn answered(o: &Objective, step: &str, approve: bool) -> String {
    use orch_proto::v1::StepState;
    let id = &o.id;
    let state = o
        .steps
        .iter()
        .find(|s| s.id == step)
        .and_then(|s| StepState::try_from(s.state).ok())
        .unwrap_or(StepState::Unspecified);
    if !approve {
        return format!(
            "denied: step {step} of {id} is {}; the steps that need it are skipped \
             (orchctl status {id})",
            words::step_state(state)
        );
    }
    let next = match state {
        StepState::Ready => "is ready and starts when a slot is free".to_string(),
        StepState::Running => "is running".to_string(),
        StepState::Paused => format!("waits while the objective is paused (orchctl resume {id})"),
        StepState::Succeeded => "has already run".to_string(),
        s => format!("is {}", words::step_state(s)),
    };
    format!("approved: step {step} of {id} {next}; follow it with `orchctl watch {id}`")
}

/// `orchctl agents`.
pub async fn agents(client: &mut Client, format: Format) -> Result<()> {
    let r = client.api.list_agents(ListAgentsRequest {}).await;
    let mut list = client.check(r)?.agents;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    match format {
        Format::Json => output::json_pretty(&serde_json::Value::Array(
            list.iter().map(json::agent).collect(),
        )),
        Format::Table => output::write_out(&views::agents(&list)),
    }
}

/// `orchctl usage [ID]`.
pub async fn usage(client: &mut Client, id: Option<String>, format: Format) -> Result<()> {
    let request = GetUsageRequest {
        objective_id: id.clone().unwrap_or_default(),
    };
    let r = client.api.get_usage(request).await;
    let report = client.check(r)?;
    match format {
        Format::Json => output::json_pretty(&json::usage_report(&report)),
        Format::Table => output::write_out(&views::usage(&report, id.as_deref())),
    }
}

/// `orchctl audit`.
pub async fn audit(
    client: &mut Client,
    limit: Option<u32>,
    objective: Option<String>,
    format: Format,
) -> Result<()> {
    let request = ListAuditRequest {
        limit: limit.unwrap_or(0),
        objective_id: objective.unwrap_or_default(),
    };
    let r = client.api.list_audit(request).await;
    let entries = client.check(r)?.entries;
    match format {
        Format::Json => output::json_pretty(&serde_json::Value::Array(
            entries.iter().map(json::audit).collect(),
        )),
        Format::Table => output::write_out(&views::audit(&entries)),
    }
}

/// `orchctl daemon status`.
pub async fn daemon_status(
    client: &mut Client,
    format: Format,
    origin: orch_proto::paths::SocketOrigin,
) -> Result<()> {
    let r = client.api.daemon_status(DaemonStatusRequest {}).await;
    let d = client.check(r)?;
    match format {
        Format::Json => output::json_pretty(&json::daemon_status(&d, origin)),
        Format::Table => output::write_out(&views::daemon_status(&d, origin)),
    }
}

/// `orchctl daemon reload`.
pub async fn daemon_reload(client: &mut Client, format: Format) -> Result<()> {
    let r = client.api.reload_config(ReloadConfigRequest {}).await;
    let resp = client.check(r)?;
    match format {
        Format::Json => output::json_pretty(&serde_json::json!({
            "reloaded": true,
            "config_path": resp.config_path,
        })),
        Format::Table => output::line(&format!("reloaded {}", resp.config_path)),
    }
}

/// How long `daemon upgrade` waits for the new daemon to answer.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `orchctl daemon upgrade`: asks orchd to re-execute itself, then waits until the new
/// process image answers (its start time differs; the pid stays).
pub async fn daemon_upgrade(client: &mut Client, format: Format) -> Result<()> {
    let r = client
        .api
        .upgrade_daemon(orch_proto::v1::UpgradeDaemonRequest {})
        .await;
    let resp = client.check(r)?;
    let until = std::time::Instant::now() + UPGRADE_WAIT;
    let mut backoff = std::time::Duration::from_millis(5);
    let status = loop {
        if client.reconnect().await.is_ok()
            && let Ok(s) = client.api.daemon_status(DaemonStatusRequest {}).await
        {
            let s = s.into_inner();
            if s.daemon_started_ms != resp.daemon_started_ms {
                break s;
            }
        }
        if std::time::Instant::now() >= until {
            return Err(CtlError::Failed(format!(
                "orchd was asked to re-execute {} but did not answer again within {}s (see its log)",
                resp.binary,
                UPGRADE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_millis(200));
    };
    match format {
        Format::Json => output::json_pretty(&serde_json::json!({
            "upgraded": true,
            "binary": resp.binary,
            "old_version": resp.old_version,
            "new_version": status.version,
            "pid": status.pid,
            "attempts_kept": resp.attempts_kept,
            "running_attempts": status.running_attempts,
        })),
        Format::Table => output::line(&format!(
            "upgraded: {} re-executed in place (pid {}), {} -> orchd {}; {} running attempts kept",
            resp.binary, status.pid, resp.old_version, status.version, resp.attempts_kept
        )),
    }
}

/// `orchctl completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let buf = crate::complete::script(shell).map_err(CtlError::Failed)?;
    output::write_bytes(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words() {
        assert_eq!(parse_state("running").ok(), Some(ObjectiveState::Running));
        let e = parse_state("runing").err();
        let e = e.map(|e| (e.exit_code(), e.to_string()));
        let Some((code, text)) = e else {
            panic!("must fail")
        };
        assert_eq!(code, 2);
        assert!(text.contains("awaiting_approval"), "{text}");
    }

    #[test]
    fn an_answer_says_what_happens_next() {
        use orch_proto::v1::{Step, StepState};
        let o = |state: StepState| Objective {
            id: "01ABCD".into(),
            steps: vec![Step {
                id: "deploy".into(),
                state: state as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = answered(&o(StepState::Ready), "deploy", true);
        assert_eq!(
            text,
            "approved: step deploy of 01ABCD is ready and starts when a slot is free; \
             follow it with `orchctl watch 01ABCD`"
        );
        let text = answered(&o(StepState::Paused), "deploy", true);
        assert!(text.contains("orchctl resume 01ABCD"), "{text}");
        let text = answered(&o(StepState::Failed), "deploy", false);
        assert!(
            text.starts_with("denied: step deploy of 01ABCD is failed"),
            "{text}"
        );
    }

    #[test]
    fn completions_need_no_daemon() {
        let buf = crate::complete::script(clap_complete::Shell::Bash).unwrap_or_default();
        assert!(String::from_utf8_lossy(&buf).contains("orchctl"));
    }
}
