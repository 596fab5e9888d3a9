//! `orch_proto`: the generated gRPC API plus what both `orchd` and `orchctl` need:
//! the Unix-socket `connect`, plan-file parsing, spec validation, units and state words.

#![allow(clippy::derive_partial_eq_without_eq)]

/// Generated messages and services of package `orch.v1`.
pub mod v1 {
    tonic::include_proto!("orch.v1");
}

pub mod plan;
pub mod units;
pub mod validate;
pub mod words;

/// The encoded `FileDescriptorSet` of `orch.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/orch_descriptor.bin"));

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to an `orchd` socket. The HTTP/2 authority is `localhost`; clients in
/// other languages must set the same (e.g. Python `grpc.default_authority=localhost`).
pub async fn connect(
    socket: &Path,
) -> Result<v1::orchestrator_client::OrchestratorClient<Channel>, tonic::transport::Error> {
    let channel = channel(socket).await?;
    Ok(v1::orchestrator_client::OrchestratorClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024))
}

/// A tonic channel over the Unix socket at `socket` (for health and reflection clients too).
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is only used for the HTTP/2 authority; the connector ignores it.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// Default paths of the contract ("Where things live").
pub mod paths {
    use std::path::PathBuf;

    fn env_path(key: &str) -> Option<PathBuf> {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    fn home() -> PathBuf {
        env_path("HOME").unwrap_or_else(|| PathBuf::from("/"))
    }

    /// Whether this process runs as root (root uses the system-service paths).
    pub fn is_root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    /// The default socket: `/run/orch/orchd.sock` for root, else
    /// `$XDG_RUNTIME_DIR/orch/orchd.sock` (falling back to `/tmp/orch-$UID/orchd.sock`).
    pub fn default_socket() -> PathBuf {
        if is_root() {
            return PathBuf::from("/run/orch/orchd.sock");
        }
        match env_path("XDG_RUNTIME_DIR") {
            Some(dir) => dir.join("orch").join("orchd.sock"),
            None => PathBuf::from(format!("/tmp/orch-{}", nix::unistd::Uid::effective()))
                .join("orchd.sock"),
        }
    }

    /// The default state directory: `/var/lib/orch` for root, else `$XDG_STATE_HOME/orch`.
    pub fn default_state_dir() -> PathBuf {
        if is_root() {
            return PathBuf::from("/var/lib/orch");
        }
        env_path("XDG_STATE_HOME")
            .unwrap_or_else(|| home().join(".local").join("state"))
            .join("orch")
    }

    /// The default config file: `/etc/orch/orchd.toml` for root, else `$XDG_CONFIG_HOME/orch/orchd.toml`.
    pub fn default_config() -> PathBuf {
        if is_root() {
            return PathBuf::from("/etc/orch/orchd.toml");
        }
        env_path("XDG_CONFIG_HOME")
            .unwrap_or_else(|| home().join(".config"))
            .join("orch")
            .join("orchd.toml")
    }

    /// The socket a client should use: flag, then `ORCH_SOCKET`, then the default.
    pub fn client_socket(flag: Option<PathBuf>) -> PathBuf {
        flag.or_else(|| env_path("ORCH_SOCKET"))
            .unwrap_or_else(default_socket)
    }
}

/// Converts a `SystemTime`-like millisecond UNIX time to a protobuf timestamp.
pub fn ts_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Milliseconds since the UNIX epoch of a protobuf timestamp.
pub fn ms_from_ts(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

/// RFC 3339 UTC text (millisecond precision) of a protobuf timestamp.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    match chrono::DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => String::new(),
    }
}
