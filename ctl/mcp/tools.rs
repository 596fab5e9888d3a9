//! `orchctl tools [AGENT]`: connects to the MCP tool servers the daemon's agent profiles
//! are given, as an MCP client, and lists their tools.

use std::path::Path;

use crate::cli::ToolsArgs;
use crate::error::{CtlError, Result};
use crate::output::Format;

/// Runs `orchctl tools`.
pub async fn run(_args: ToolsArgs, _socket: &Path, _format: Format) -> Result<()> {
    Err(CtlError::Failed("orchctl tools: not built yet".into()))
}
