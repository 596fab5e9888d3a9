//! Dynamic shell completion (clap_complete's engine): `orchctl completions SHELL` prints a
//! script that asks `orchctl` itself (with `COMPLETE=SHELL` set) for candidates as the
//! user types, so objective ids come from the daemon and state names from the contract.

use std::ffi::OsStr;
use std::time::Duration;

use clap_complete::engine::CompletionCandidate;
use orch_proto::v1::{ListObjectivesRequest, ObjectiveState};
use orch_proto::words;

use crate::client::Client;

/// How long completing ids may wait for the daemon (a shell waits on us).
const DAEMON_WAIT: Duration = Duration::from_secs(2);
/// The newest objectives offered.
const MAX_IDS: u32 = 200;

/// The objective states.
pub fn objective_states() -> Vec<CompletionCandidate> {
    words::OBJECTIVE_STATES
        .iter()
        .map(|s| CompletionCandidate::new(*s))
        .collect()
}

/// The states an ended objective can be in.
pub fn ended_states() -> Vec<CompletionCandidate> {
    ["succeeded", "failed", "cancelled"]
        .into_iter()
        .map(CompletionCandidate::new)
        .collect()
}

/// Objective ids (newest first) starting with what was typed (any case), each with its
/// state and name as help, plus `last`. Nothing when the daemon cannot be reached: a
/// completion must not print errors into the user's command line.
pub fn ids(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy().to_ascii_uppercase();
    let mut out = Vec::new();
    if "LAST".starts_with(&typed) {
        out.push(CompletionCandidate::new("last").help(Some("your newest objective".into())));
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return out;
    };
    let socket = orch_proto::paths::client_socket(None);
    let listed = rt.block_on(async {
        let mut client = Client::connect(&socket).await.ok()?;
        let request = ListObjectivesRequest {
            state: None,
            limit: MAX_IDS,
        };
        let r = tokio::time::timeout(DAEMON_WAIT, client.api.list_objectives(request)).await;
        r.ok()?.ok().map(|r| r.into_inner().objectives)
    });
    for o in listed.unwrap_or_default() {
        if o.id.starts_with(&typed) {
            let state = words::objective_state(
                ObjectiveState::try_from(o.state).unwrap_or(ObjectiveState::Unspecified),
            );
            let help = format!("{state}  {}", o.name);
            out.push(CompletionCandidate::new(o.id).help(Some(help.into())));
        }
    }
    out
}

/// The registration script for `shell`: it calls `orchctl` back for every completion.
pub fn script(shell: clap_complete::Shell) -> Result<Vec<u8>, String> {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(&name)
        .ok_or_else(|| format!("no dynamic completion for {name}"))?;
    let mut buf = Vec::new();
    completer
        .write_registration("COMPLETE", "orchctl", "orchctl", "orchctl", &mut buf)
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_contract_words() {
        let all: Vec<String> = objective_states()
            .iter()
            .map(|c| c.get_value().to_string_lossy().into_owned())
            .collect();
        assert!(all.contains(&"awaiting_approval".to_string()), "{all:?}");
        assert_eq!(ended_states().len(), 3);
    }

    #[test]
    fn every_shell_gets_a_script_calling_orchctl_back() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let text = script(*shell).map(|b| String::from_utf8_lossy(&b).into_owned());
            let text = text.unwrap_or_else(|e| panic!("{shell}: {e}"));
            assert!(text.contains("COMPLETE"), "{shell}: {text}");
        }
    }
}
