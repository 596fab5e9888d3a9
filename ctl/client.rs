//! The connection to `orchd`: refusing a socket that another user could control (its
//! directory, the file, then the process that answers), connecting with a clear "cannot
//! reach" error, and mapping gRPC statuses to [`CtlError`]s with the contract's exit codes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use orch_proto::paths::{self, CheckError, Side, Subject, Untrusted};
use orch_proto::v1::orchestrator_client::OrchestratorClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{CtlError, Result};

/// How long connecting to the socket may take before the daemon counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client plus what is needed to explain failures. Cloning shares the
/// connection (the MCP server serves concurrent calls from clones).
#[derive(Clone)]
pub struct Client {
    pub api: OrchestratorClient<Channel>,
    socket: PathBuf,
    /// Whether a call has already succeeded (after that, UNAVAILABLE is a failure, not "unreachable").
    reached: bool,
}

impl Client {
    /// Connects to the daemon's socket, after checking that nobody but the caller and root
    /// controls it ([`paths::check_socket`]) and, once connected, that the process serving
    /// it runs as one of them.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let side = Side::Client(paths::effective_uid());
        match paths::check_socket(socket, side) {
            Ok(()) => {}
            Err(CheckError::Untrusted(u)) => return Err(CtlError::Untrusted(u.to_string())),
            // Facts that cannot be read (a directory we may not search) mean we cannot
            // connect either: connecting says so, and the peer is still checked.
            Err(CheckError::Io { .. }) => {}
        }
        let unreachable = |cause: String| CtlError::Unreachable {
            socket: socket.to_path_buf(),
            cause,
        };
        if let Some(what) = not_a_socket(socket) {
            return Err(unreachable(format!(
                "{what}, not a socket (is --socket / ORCH_SOCKET pointing at the right path?)"
            )));
        }
        let refused = Arc::new(Mutex::new(None));
        let connecting = checked_channel(socket, side, refused.clone());
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                let untrusted = refused.lock().ok().and_then(|mut r| r.take());
                return Err(match untrusted {
                    Some(u) => CtlError::Untrusted(u.to_string()),
                    None => unreachable(error_chain(&e)),
                });
            }
            Err(_) => return Err(unreachable("timed out connecting".into())),
        };
        // The same limit as `orch_proto::connect`.
        let api = OrchestratorClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        Ok(Client {
            api,
            socket: socket.to_path_buf(),
            reached: false,
        })
    }

    /// Opens a fresh connection to the same socket (after the daemon restarted).
    pub async fn reconnect(&mut self) -> Result<()> {
        let fresh = Client::connect(&self.socket).await?;
        self.api = fresh.api;
        Ok(())
    }

    /// Unwraps a response, or turns its status into the right error.
    pub fn check<T>(
        &mut self,
        r: std::result::Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T> {
        self.answered(r).map_err(|status| self.status_error(status))
    }

    /// Unwraps a response, noting that the daemon answered; a status is left as it is
    /// (for callers that tell a lost connection from a refusal).
    pub fn answered<T>(
        &mut self,
        r: std::result::Result<tonic::Response<T>, tonic::Status>,
    ) -> std::result::Result<T, tonic::Status> {
        let resp = r?;
        self.reached = true;
        Ok(resp.into_inner())
    }

    /// Maps a gRPC status to an error (see [`status_error`]).
    pub fn status_error(&self, status: tonic::Status) -> CtlError {
        status_error(status, self.reached, &self.socket)
    }
}

/// What is at `path` when it exists and is not a socket (following links): "it is a
/// directory", "it is a regular file", ...
fn not_a_socket(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    let what = if t.is_socket() {
        return None;
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a named pipe"
    } else {
        "a device"
    };
    Some(format!("{} is {what}", path.display()))
}

/// A channel over the Unix socket at `socket` whose every connection (the first and any
/// reconnection) is dropped unless the process that accepted it runs as the caller or root
/// (`SO_PEERCRED`), before a byte is sent. This closes the gap between checking the path
/// and connecting to it. A refusal is also left in `refused`, for the error message.
async fn checked_channel(
    socket: &Path,
    side: Side,
    refused: Arc<Mutex<Option<Untrusted>>>,
) -> std::result::Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    // The URI is only used for the HTTP/2 authority; the connector ignores it.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            let refused = refused.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                let cred = stream.peer_cred()?;
                if let Err(problem) = paths::judge_peer(cred.uid(), cred.pid(), side) {
                    let untrusted = Untrusted {
                        subject: Subject::Socket,
                        path,
                        side,
                        problem,
                    };
                    let message = untrusted.to_string();
                    if let Ok(mut slot) = refused.lock() {
                        *slot = Some(untrusted);
                    }
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        message,
                    ));
                }
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// Maps a gRPC status to an error: UNAVAILABLE before the daemon ever answered (`reached`)
/// means it cannot be reached at `socket` (exit 3); anything else is a refusal (exit 1, or
/// 2 for bad input).
pub fn status_error(status: tonic::Status, reached: bool, socket: &Path) -> CtlError {
    if status.code() == tonic::Code::Unavailable && !reached {
        return CtlError::Unreachable {
            socket: socket.to_path_buf(),
            cause: status_message(&status),
        };
    }
    CtlError::Refused {
        code: status.code(),
        message: status_message(&status),
    }
}

/// Whether a status means the connection to the daemon was lost (worth reconnecting),
/// rather than an answer from the daemon.
pub fn is_connection_loss(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
            let m = status.message().to_ascii_lowercase();
            [
                "transport",
                "h2 protocol",
                "connection",
                "broken pipe",
                "stream closed",
            ]
            .iter()
            .any(|w| m.contains(w))
        }
        _ => false,
    }
}

/// The human message of a status, falling back to the code's description.
pub fn status_message(status: &tonic::Status) -> String {
    let msg = status.message().trim();
    if msg.is_empty() {
        status.code().description().to_string()
    } else {
        msg.to_string()
    }
}

/// An error and its sources as one line (`transport error: No such file or directory`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_unreachable() {
        let dir = std::env::temp_dir().join(format!("orchctl-test-{}", std::process::id()));
        let err = Client::connect(&dir.join("nope.sock")).await.err();
        let err = err.expect("connect must fail");
        assert_eq!(err.exit_code(), 3);
        let text = err.to_string();
        assert!(text.contains("cannot reach orchd at"), "{text}");
        assert!(text.contains("systemctl --user start orchd"), "{text}");
    }

    #[tokio::test]
    async fn a_socket_directory_others_can_write_is_refused_before_connecting() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let socket = open.join("orchd.sock");
        let err = Client::connect(&socket).await.err().expect("refused");
        assert_eq!(err.exit_code(), 1, "{err}");
        let text = err.to_string();
        let what = format!("refusing socket directory {}: writable by ", open.display());
        assert!(text.starts_with(&what), "{text}");
        assert!(
            text.contains("everyone (mode 0777) and not sticky"),
            "{text}"
        );
        // Sticky (like /tmp): nothing there to refuse; the socket is missing: unreachable.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = Client::connect(&socket).await.err().expect("unreachable");
        assert_eq!(err.exit_code(), 3, "{err}");
    }

    #[tokio::test]
    async fn a_socket_path_that_is_not_a_socket_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("orchd.sock");
        std::fs::write(&file, "x").expect("write");
        for (path, what) in [
            (file, "a regular file"),
            (dir.path().to_path_buf(), "a directory"),
        ] {
            let err = Client::connect(&path).await.err().expect("refused");
            assert_eq!(err.exit_code(), 3, "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("{} is {what}, not a socket", path.display())),
                "{text}"
            );
        }
    }

    #[test]
    fn refusals_exit_1() {
        let s = tonic::Status::failed_precondition("objective already ended");
        let e = status_error(s, true, Path::new("/s"));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "objective already ended");
        let e = status_error(
            tonic::Status::invalid_argument("bad"),
            true,
            Path::new("/s"),
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn unavailable_is_unreachable_only_before_an_answer() {
        let down = || tonic::Status::unavailable("connection refused");
        let e = status_error(down(), false, Path::new("/run/orch/orchd.sock"));
        assert_eq!(e.exit_code(), 3);
        let text = e.to_string();
        assert!(
            text.starts_with("cannot reach orchd at /run/orch/orchd.sock"),
            "{text}"
        );
        let e = status_error(down(), true, Path::new("/run/orch/orchd.sock"));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "connection refused");
    }

    #[test]
    fn empty_status_message_uses_code() {
        let s = tonic::Status::new(tonic::Code::NotFound, "");
        assert!(!status_message(&s).is_empty());
    }
}
