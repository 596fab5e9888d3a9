//! `orchctl mcp`: orch as a Model Context Protocol server (official Rust SDK, `rmcp`), over
//! stdio or Streamable HTTP on loopback with a bearer token. Every tool call is an ordinary
//! gRPC call to orchd as the user running `orchctl mcp` (`server.rs`); `io.rs` holds the
//! tools' inputs and outputs, `http.rs` the HTTP transport and its token.

mod http;
pub mod io;
pub mod server;
pub mod tools;

use std::path::Path;

use rmcp::ServiceExt;

use crate::cli::McpArgs;
use crate::client::Client;
use crate::error::{CtlError, Result};
use server::OrchMcp;

/// Runs `orchctl mcp`: connects to orchd first (so a daemon that cannot be reached is
/// reported before any client speaks), then serves until the client goes away (stdio) or
/// the process is interrupted (HTTP).
pub async fn run(args: McpArgs, socket: &Path) -> Result<()> {
    let client = Client::connect(socket).await?;
    let workdir =
        std::env::current_dir().map_err(|e| CtlError::io("reading the current directory", e))?;
    let server = OrchMcp::new(client, workdir);
    match args.http {
        Some(addr) => http::serve(server, addr, args.token_file.as_deref()).await,
        None => {
            let running = server
                .serve(rmcp::transport::io::stdio_pipes())
                .await
                .map_err(|e| CtlError::Failed(format!("mcp: {e}")))?;
            running
                .waiting()
                .await
                .map_err(|e| CtlError::Failed(format!("mcp: {e}")))?;
            Ok(())
        }
    }
}
