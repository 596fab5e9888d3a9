//! `orchctl`: the command-line client of `orchd`, speaking only the gRPC API on its Unix socket.

mod cli;
mod client;
mod commands;
mod complete;
mod doctor;
mod error;
mod follow;
mod housekeeping;
mod json;
mod live;
mod logs;
mod man;
mod mcp;
mod output;
mod planner;
mod progress;
mod reports;
mod routing;
mod submit;
mod top;
mod views;
mod watch;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, DaemonCommand};
use crate::client::Client;
use crate::commands::Control;
use crate::error::{CtlError, Result};
use crate::output::Format;

fn main() -> ExitCode {
    // With `COMPLETE=SHELL` set (by the script `orchctl completions SHELL` prints): answer
    // the shell's completion request and exit.
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).complete();
    man::generate_if_asked();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(CtlError::io("starting the async runtime", e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_silent() {
                output::warn(&format!("error: {e}"));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// A command line clap refused: its message, a hint where a common slip explains it, and
/// clap's exit code (2 for bad input, 0 for `--help` and `--version`).
fn usage_error(e: clap::Error) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = e.print();
    if let Some(hint) = submit_hint(&e, &args) {
        output::warn(&hint);
    }
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// `orchctl submit echo hi`: a command given without `--` is read as a plan file plus
/// stray arguments; say how to give a command.
fn submit_hint(e: &clap::Error, args: &[String]) -> Option<String> {
    use clap::error::ErrorKind;
    if !matches!(
        e.kind(),
        ErrorKind::UnknownArgument | ErrorKind::TooManyValues
    ) {
        return None;
    }
    let at = args.iter().position(|a| a == "submit")?;
    let rest = &args[at + 1..];
    if rest.iter().any(|a| a == "--") {
        return None;
    }
    let first = rest.iter().find(|a| !a.starts_with('-'))?;
    if orch_proto::plan::Format::of(Path::new(first)).is_some() {
        return None;
    }
    // Flags and their values cannot be told apart here: name the command only when the
    // line is nothing but the command.
    Some(if rest.first().is_some_and(|a| !a.starts_with('-')) {
        format!(
            "hint: to run a command, give it after `--`: orchctl submit -- {}",
            rest.join(" ")
        )
    } else {
        "hint: to run a command, give it after `--`: orchctl submit [OPTIONS] -- CMD [ARG]..."
            .to_string()
    })
}

async fn run(cli: Cli) -> Result<()> {
    let (socket, origin) = orch_proto::paths::client_socket_choice(cli.socket);
    let format = cli.output;
    match cli.command {
        Command::Completions { shell } => commands::completions(shell),
        Command::Submit(args) => submit::run(*args, &socket, format).await,
        Command::Mcp(args) => mcp::run(args, &socket).await,
        Command::Doctor => doctor::run(&socket, origin, format).await,
        Command::Tools(args) => mcp::tools::run(args, &socket, format).await,
        Command::List { state, limit } => {
            // Check input before reaching for the daemon.
            let state = state.as_deref().map(commands::parse_state).transpose()?;
            let mut client = Client::connect(&socket).await?;
            commands::list(&mut client, state, limit, format).await
        }
        other => {
            let mut client = Client::connect(&socket).await?;
            dispatch(other, &mut client, format, &socket, origin).await
        }
    }
}

async fn dispatch(
    command: Command,
    client: &mut Client,
    format: Format,
    socket: &Path,
    origin: orch_proto::paths::SocketOrigin,
) -> Result<()> {
    match command {
        Command::Status { id } => commands::status(client, id, format).await,
        Command::Diff { id, step, git_args } => commands::diff(client, id, step, git_args).await,
        Command::Watch(args) => watch::run(args, client, format).await,
        Command::Logs(args) => logs::run(args, client, format).await,
        Command::Cancel { id } => commands::control(client, id, Control::Cancel, format).await,
        Command::Pause { id } => commands::control(client, id, Control::Pause, format).await,
        Command::Resume { id } => commands::control(client, id, Control::Resume, format).await,
        Command::Retry { id, step, fresh } => {
            commands::control(client, id, Control::Retry { step, fresh }, format).await
        }
        Command::Approve { id, step } => {
            let what = Control::Answer {
                step,
                approve: true,
                reason: None,
            };
            commands::control(client, id, what, format).await
        }
        Command::Deny { id, step, reason } => {
            let what = Control::Answer {
                step,
                approve: false,
                reason,
            };
            commands::control(client, id, what, format).await
        }
        Command::Agents { action: None } => commands::agents(client, format).await,
        Command::Agents {
            action: Some(action),
        } => routing::switch(client, action, format).await,
        Command::Usage {
            by: Some(by),
            since,
            ..
        } => reports::usage_by(client, by, since, format).await,
        Command::Usage { id, .. } => commands::usage(client, id, format).await,
        Command::Stats => reports::stats(client, format).await,
        Command::Top(args) => top::run(args, client).await,
        Command::Daemon(DaemonCommand::Config) => reports::daemon_config(client, format).await,
        Command::Audit { limit, objective } => {
            commands::audit(client, limit, objective, format).await
        }
        Command::Daemon(DaemonCommand::Status) => {
            commands::daemon_status(client, format, origin).await
        }
        Command::Daemon(DaemonCommand::Reload) => commands::daemon_reload(client, format).await,
        Command::Daemon(DaemonCommand::Upgrade) => commands::daemon_upgrade(client, format).await,
        Command::Rm { ids } => housekeeping::rm(client, ids, format).await,
        Command::Prune { older_than, state } => {
            housekeeping::prune(client, older_than, state, format).await
        }
        // Handled before connecting.
        Command::Completions { .. }
        | Command::Submit(_)
        | Command::Doctor
        | Command::List { .. }
        | Command::Mcp(_)
        | Command::Tools(_) => Err(CtlError::Failed(format!(
            "internal: command dispatched twice ({})",
            socket.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(argv: &[&str]) -> Option<String> {
        let e = Cli::try_parse_from(argv).err()?;
        let args: Vec<String> = argv[1..].iter().map(|a| a.to_string()).collect();
        submit_hint(&e, &args)
    }

    #[test]
    fn a_command_without_dashes_gets_a_hint() {
        assert_eq!(
            hint(&["orchctl", "submit", "echo", "hi"]).as_deref(),
            Some("hint: to run a command, give it after `--`: orchctl submit -- echo hi")
        );
        assert_eq!(
            hint(&["orchctl", "submit", "--retries", "1", "ls", "-l"]).as_deref(),
            Some(
                "hint: to run a command, give it after `--`: orchctl submit [OPTIONS] -- CMD [ARG]..."
            )
        );
        assert_eq!(hint(&["orchctl", "submit", "plan.toml", "x"]), None);
        assert_eq!(hint(&["orchctl", "status", "a", "b"]), None);
    }
}
