//! The one error type of `orchctl`; each variant knows the exit code it means.

use std::path::PathBuf;

/// The hint printed after "cannot reach orchd".
pub const START_HINT: &str = "start it with `orchd` (or `systemctl --user start orchd`), or point --socket / ORCH_SOCKET at a running daemon";

/// Everything that can make `orchctl` stop early.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad input given on the command line (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A plan file (or the spec built from flags) that does not validate (exit 2).
    #[error("{0}")]
    Plan(String),
    /// The daemon cannot be reached (exit 3).
    #[error("cannot reach orchd at {}: {cause}\nhint: {START_HINT}", socket.display())]
    Unreachable { socket: PathBuf, cause: String },
    /// The socket, its directory or the process serving it is not trusted: it could be
    /// another user's, impersonating orchd (exit 1). Not "unreachable" (3): something does
    /// answer there, or could, and starting another orchd would not help; and not bad input
    /// (2): the default path can be squatted without the caller doing anything wrong.
    #[error("{0}")]
    Untrusted(String),
    /// The daemon refused the call (exit 1, or 2 for INVALID_ARGUMENT).
    #[error("{message}")]
    Refused { code: tonic::Code, message: String },
    /// The thing asked for failed (exit 1), e.g. a waited objective failed.
    #[error("{0}")]
    Failed(String),
    /// Local I/O failed (exit 1).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// stdout was closed by the reader (e.g. `| head`): a quiet success.
    #[error("broken pipe")]
    BrokenPipe,
    /// Exit with this code and print nothing more (the reason is already shown).
    #[error("exit {0}")]
    Exit(u8),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::Plan(_) => 2,
            CtlError::Unreachable { .. } => 3,
            CtlError::Refused { code, .. } => {
                if *code == tonic::Code::InvalidArgument {
                    2
                } else {
                    1
                }
            }
            CtlError::Failed(_) | CtlError::Io { .. } | CtlError::Untrusted(_) => 1,
            CtlError::BrokenPipe => 0,
            CtlError::Exit(code) => *code,
        }
    }

    /// Whether an `error: ...` line should be printed for this error.
    pub fn is_silent(&self) -> bool {
        matches!(self, CtlError::BrokenPipe | CtlError::Exit(_))
    }

    /// An I/O error with what was being done; a broken pipe becomes [`CtlError::BrokenPipe`].
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            CtlError::BrokenPipe
        } else {
            CtlError::Io {
                what: what.into(),
                source,
            }
        }
    }
}

/// The result type of every command.
pub type Result<T, E = CtlError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 2);
        assert_eq!(
            CtlError::Refused {
                code: tonic::Code::InvalidArgument,
                message: "x".into()
            }
            .exit_code(),
            2
        );
        assert_eq!(
            CtlError::Refused {
                code: tonic::Code::NotFound,
                message: "x".into()
            }
            .exit_code(),
            1
        );
        let e = CtlError::Unreachable {
            socket: "/s".into(),
            cause: "nope".into(),
        };
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("cannot reach orchd at /s: nope"));
        assert_eq!(
            CtlError::Untrusted("refusing socket /s".into()).exit_code(),
            1
        );
        assert_eq!(
            CtlError::io("write", std::io::ErrorKind::BrokenPipe.into()).exit_code(),
            0
        );
    }
}
