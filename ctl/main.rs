//! `orchctl`: the command-line client of `orchd`, speaking only the gRPC API on its Unix socket.

mod cli;
mod client;
mod commands;
mod error;
mod follow;
mod json;
mod live;
mod logs;
mod mcp;
mod output;
mod submit;
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
    let cli = Cli::parse();
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

async fn run(cli: Cli) -> Result<()> {
    let socket = orch_proto::paths::client_socket(cli.socket);
    let format = cli.output;
    match cli.command {
        Command::Completions { shell } => commands::completions(shell),
        Command::Submit(args) => submit::run(*args, &socket, format).await,
        Command::Mcp(args) => mcp::run(args, &socket).await,
        Command::Tools(args) => mcp::tools::run(args, &socket, format).await,
        Command::List { state, limit } => {
            // Check input before reaching for the daemon.
            let state = state.as_deref().map(commands::parse_state).transpose()?;
            let mut client = Client::connect(&socket).await?;
            commands::list(&mut client, state, limit, format).await
        }
        other => {
            let mut client = Client::connect(&socket).await?;
            dispatch(other, &mut client, format, &socket).await
        }
    }
}

async fn dispatch(
    command: Command,
    client: &mut Client,
    format: Format,
    socket: &Path,
) -> Result<()> {
    match command {
        Command::Status { id } => commands::status(client, id, format).await,
        Command::Watch(args) => watch::run(args, client, format).await,
        Command::Logs(args) => logs::run(args, client).await,
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
        Command::Agents => commands::agents(client, format).await,
        Command::Usage { id } => commands::usage(client, id, format).await,
        Command::Audit { limit, objective } => {
            commands::audit(client, limit, objective, format).await
        }
        Command::Daemon(DaemonCommand::Status) => commands::daemon_status(client, format).await,
        Command::Daemon(DaemonCommand::Reload) => commands::daemon_reload(client, format).await,
        // Handled before connecting.
        Command::Completions { .. }
        | Command::Submit(_)
        | Command::List { .. }
        | Command::Mcp(_)
        | Command::Tools(_) => Err(CtlError::Failed(format!(
            "internal: command dispatched twice ({})",
            socket.display()
        ))),
    }
}
