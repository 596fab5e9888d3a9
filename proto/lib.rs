//! `orch_proto`: the generated gRPC API plus what both `orchd` and `orchctl` need:
//! the Unix-socket `connect`, plan-file parsing, spec validation, units and state words.

#![allow(clippy::derive_partial_eq_without_eq)]

/// Generated messages and services of package `orch.v1`.
pub mod v1 {
    tonic::include_proto!("orch.v1");
}

pub mod paths;
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
