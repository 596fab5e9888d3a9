//! `orchctl rm` and `orchctl prune`: removing ended objectives (the daemon checks the
//! owner and the state, removes records, events, logs and checkpoints, and audits it).

use orch_proto::v1::{ObjectiveRef, PruneRequest};

use crate::client::Client;
use crate::commands::parse_state;
use crate::error::{CtlError, Result};
use crate::output::{self, Format};

/// `orchctl rm ID...`: each id in turn; one that cannot be removed is reported and the
/// rest still go. Exit 1 when any was refused (2 when every refusal was bad input).
pub async fn rm(client: &mut Client, ids: Vec<String>, format: Format) -> Result<()> {
    let mut removed = Vec::new();
    let mut failures: Vec<CtlError> = Vec::new();
    for id in &ids {
        let r = client.api.remove(ObjectiveRef { id: id.clone() }).await;
        match client.check(r) {
            Ok(resp) => {
                for id in resp.removed {
                    if format == Format::Table {
                        output::line(&format!("removed {id}"))?;
                    }
                    removed.push(id);
                }
            }
            Err(e @ (CtlError::Unreachable { .. } | CtlError::BrokenPipe)) => return Err(e),
            Err(e) => {
                output::warn(&format!("error: {e}"));
                failures.push(e);
            }
        }
    }
    if format == Format::Json {
        output::json_pretty(&serde_json::json!({ "removed": removed }))?;
    }
    match failures.iter().map(CtlError::exit_code).max() {
        None => Ok(()),
        Some(code) => Err(CtlError::Exit(if failures.len() < ids.len() {
            1
        } else {
            code
        })),
    }
}

/// `orchctl prune [--older-than DUR] [--state S]`.
pub async fn prune(
    client: &mut Client,
    older_than_ms: Option<u64>,
    state: Option<String>,
    format: Format,
) -> Result<()> {
    let state = state.as_deref().map(parse_state).transpose()?;
    let request = PruneRequest {
        older_than_ms,
        state: state.map(|s| s as i32),
    };
    let r = client.api.prune(request).await;
    let removed = client.check(r)?.removed;
    match format {
        Format::Json => output::json_pretty(&serde_json::json!({ "removed": removed })),
        Format::Table => {
            for id in &removed {
                output::line(&format!("removed {id}"))?;
            }
            output::line(&match removed.len() {
                0 => "nothing to prune".to_string(),
                1 => "pruned 1 objective".to_string(),
                n => format!("pruned {n} objectives"),
            })
        }
    }
}
