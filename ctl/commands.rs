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
