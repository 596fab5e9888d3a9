//! `orchctl mcp --http ADDR`: the Streamable HTTP transport on a loopback address, behind
//! a bearer token (read from `--token-file`, or generated into a new 0600 file). A request
//! without the right `Authorization: Bearer TOKEN` gets 401 before the MCP service sees it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::server::OrchMcp;
use crate::error::{CtlError, Result};
use crate::output;

/// The path the MCP endpoint is served at.
pub const ENDPOINT: &str = "/mcp";
/// Random bytes in a generated token (hex-encoded: twice as many characters).
const TOKEN_BYTES: usize = 32;
/// The shortest token accepted from `--token-file`.
const MIN_TOKEN_CHARS: usize = 16;

/// Serves `server` over Streamable HTTP at `addr` until interrupted.
pub async fn serve(server: OrchMcp, addr: SocketAddr, token_file: Option<&Path>) -> Result<()> {
    if !addr.ip().is_loopback() {
        return Err(CtlError::Usage(format!(
            "--http {addr}: only a loopback address is served (127.0.0.1 or [::1])"
        )));
    }
    let token = match token_file {
        Some(path) => read_token(path)?,
        None => {
            let (path, token) = new_token_file()?;
            output::line(&format!("token file: {}", path.display()))?;
            token
        }
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CtlError::io(format!("listening on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| CtlError::io("reading the listening address", e))?;
    let config = StreamableHttpServerConfig::default().with_allowed_hosts([
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        format!("localhost:{}", local.port()),
        local.to_string(),
    ]);
    let service = StreamableHttpService::new(
        move || Ok(server.for_session()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app =
        axum::Router::new()
            .nest_service(ENDPOINT, service)
            .layer(middleware::from_fn_with_state(
                Arc::new(token),
                require_token,
            ));
    output::line(&format!("listening on http://{local}{ENDPOINT}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CtlError::io("serving HTTP", e))
}

/// Lets a request through only with `Authorization: Bearer TOKEN`.
async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    if authorized(request.headers(), &token) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required (Authorization: Bearer TOKEN; see orchctl mcp --token-file)\n",
    )
        .into_response()
}

/// Whether the headers carry the bearer token (compared in constant time).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && same(given.trim().as_bytes(), token.as_bytes())
}

/// Equality that takes as long for every input of a length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token from `--token-file`: the whole file, trimmed, which others may not read.
fn read_token(path: &Path) -> Result<String> {
    let what = format!("reading the token file {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| CtlError::io(&what, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CtlError::Usage(format!(
            "token file {}: readable by others (mode {:04o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o7777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| CtlError::io(&what, e))?;
    let token = text.trim().to_string();
    if token.len() < MIN_TOKEN_CHARS || token.chars().any(|c| c.is_whitespace()) {
        return Err(CtlError::Usage(format!(
            "token file {}: the token must be at least {MIN_TOKEN_CHARS} characters without spaces",
            path.display()
        )));
    }
    Ok(token)
}

/// Generates a token into a new file only the caller can read, in the user's runtime
/// directory (or the temporary directory).
fn new_token_file() -> Result<(PathBuf, String)> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| CtlError::io("reading /dev/urandom", e))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "orch-mcp-token-{}-{}",
        std::process::id(),
        &token[..8]
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CtlError::io(format!("creating the token file {}", path.display()), e))?;
    file.write_all(token.as_bytes())
        .map_err(|e| CtlError::io(format!("writing the token file {}", path.display()), e))?;
    Ok((path, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = value.parse() {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn bearer_token_checks() {
        let t = "0123456789abcdef0123";
        assert!(authorized(&headers("Bearer 0123456789abcdef0123"), t));
        assert!(authorized(&headers("bearer 0123456789abcdef0123"), t));
        assert!(!authorized(&headers("Bearer 0123456789abcdef0124"), t));
        assert!(!authorized(&headers("Bearer 0123456789abcdef012"), t));
        assert!(!authorized(&headers("Basic 0123456789abcdef0123"), t));
        assert!(!authorized(&headers(""), t));
        assert!(!authorized(&HeaderMap::new(), t));
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t");
        std::fs::write(&path, "short\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = read_token(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("at least 16 characters"), "{e}");
        std::fs::write(&path, "a-long-enough-token-here\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_token(&path).ok().as_deref(),
            Some("a-long-enough-token-here")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = read_token(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("readable by others (mode 0644)"), "{e}");
        let (made, token) = new_token_file().unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&made).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        assert_eq!(read_token(&made).ok(), Some(token));
        let _ = std::fs::remove_file(made);
    }
}
