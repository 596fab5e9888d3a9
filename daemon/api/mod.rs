//! The gRPC edge: the only module that knows tonic/prost types. It checks the caller,
//! converts requests to domain types (`convert`), has `plans` resolve submitted specs,
//! forwards commands to the engine (reserving channel capacity first) and maps errors to
//! `Status`. Queries read the store. The RPCs themselves are routed in `service`; the
//! streams are `watch` and `logs`. What clients may hold is decided in `admission`
//! (connections) and `calls` (each call's request bytes, streams and watch queue).

mod admission;
mod calls;
mod convert;
mod ids;
mod logs;
mod remove;
mod reports;
mod route_convert;
mod routing;
mod service;
mod watch;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use orch_proto::v1 as pb;
use orch_proto::validate::SpecError;

use crate::config::Config;
use crate::engine::{Caller, Command, EngineError};
use crate::model::{AuditEntry, Event};
use crate::plans::PlanError;
use crate::store::{Store, StoreError};

pub use admission::{Admission, ClientLimits, wanted_open_files};
pub use calls::MAX_REQUEST_BYTES;
pub use convert::{objective_input, read_objective};
// Reachable as `api::*_pb`, where they were before `api` was split; the rest of the daemon
// may use them without reaching into `api::convert`.
#[allow(unused_imports)]
pub use convert::{obj_state_pb, outcome_pb, step_state_pb};

/// A server stream of `T`s, as the `Orchestrator` trait wants it.
type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Static facts about the running daemon, for `DaemonStatus`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub limits_backend: String,
    pub limits_detail: String,
    pub started: Instant,
    /// Whether the socket was passed by systemd (`orchd.socket`) rather than bound by orchd.
    pub socket_activated: bool,
    /// Where attempts run (their health is asked at each `DaemonStatus`).
    pub executors: std::sync::Arc<crate::executor::Executors>,
    /// The state directory's disk (free space, the reserve, the store's health).
    pub disk: Arc<crate::disk::Disk>,
    /// How `UpgradeDaemon` hands over: the checked binary and arguments go to `serve`.
    pub upgrade: Arc<crate::upgrade::Upgrade>,
    /// When this process image started (ms since the epoch).
    pub started_ms: i64,
}

fn required_id(id: String) -> Result<String, Status> {
    if id.trim().is_empty() {
        return Err(Status::invalid_argument("id: missing (an objective id)"));
    }
    Ok(id.trim().to_string())
}

/// Re-reads the config file (SIGHUP or `ReloadConfig`): validates it fully, then hands it
/// to the engine and the API; on any error the running config stays.
pub struct Reloader {
    pub path: PathBuf,
    pub explicit: bool,
    pub overrides: crate::config::Overrides,
    pub current: tokio::sync::watch::Sender<Arc<Config>>,
    pub engine: mpsc::Sender<Command>,
}

impl Reloader {
    pub async fn reload(&self) -> Result<PathBuf, String> {
        let cfg = crate::config::read_file(&self.path, self.explicit)
            .and_then(|c| c.layer(&self.overrides))
            .map_err(|e| e.to_string())?;
        let old = self.current.borrow().clone();
        if cfg.socket != old.socket
            || cfg.state_dir != old.state_dir
            || cfg.limits_backend != old.limits_backend
        {
            tracing::warn!(
                "socket, state_dir and limits_backend changes take effect at the next start"
            );
        }
        let cfg = Arc::new(cfg);
        let (tx, rx) = oneshot::channel();
        self.engine
            .send(Command::Reload {
                cfg: cfg.clone(),
                reply: tx,
            })
            .await
            .map_err(|_| "orchd is stopping".to_string())?;
        rx.await.map_err(|_| "orchd is stopping".to_string())?;
        self.current.send_replace(cfg);
        tracing::info!(config = %self.path.display(), "config reloaded");
        Ok(self.path.clone())
    }
}

/// The `orch.v1.Orchestrator` service.
pub struct Api {
    reloader: Arc<Reloader>,
    events: broadcast::Sender<Arc<Event>>,
    published: Arc<AtomicU64>,
    engine: mpsc::Sender<Command>,
    store: Store,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    info: Arc<DaemonInfo>,
}

impl Api {
    pub fn new(
        engine: mpsc::Sender<Command>,
        store: Store,
        config: tokio::sync::watch::Receiver<Arc<Config>>,
        info: Arc<DaemonInfo>,
        events: broadcast::Sender<Arc<Event>>,
        published: Arc<AtomicU64>,
        reloader: Arc<Reloader>,
    ) -> Api {
        Api {
            reloader,
            events,
            published,
            engine,
            store,
            config,
            info,
        }
    }

    /// Sends a command to the engine and waits for its reply.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let permit = self
            .engine
            .reserve()
            .await
            .map_err(|_| Status::unavailable("orchd is stopping"))?;
        let (tx, rx) = oneshot::channel();
        permit.send(make(tx));
        rx.await
            .map_err(|_| Status::unavailable("orchd is stopping"))
    }

    /// Records a mutating call and its result in the audit trail (through the engine,
    /// the store's one writer; committed with its next turn).
    async fn audit<T>(
        &self,
        who: Caller,
        action: &str,
        objective_id: &str,
        result: &Result<T, Status>,
    ) {
        let result = match result {
            Ok(_) => "ok".to_string(),
            Err(s) if s.code() == tonic::Code::PermissionDenied => "denied".to_string(),
            // One line per entry, whatever the message.
            Err(s) => format!(
                "error: {}",
                s.message().split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        };
        let entry = AuditEntry {
            time_ms: crate::model::now_ms(),
            uid: who.uid,
            gid: who.gid,
            pid: who.pid,
            action: action.to_string(),
            objective_id: objective_id.to_string(),
            result,
        };
        if let Ok(permit) = self.engine.reserve().await {
            permit.send(Command::Audit(Box::new(entry)));
        }
    }

    /// Cancel, pause or resume, audited.
    async fn control(
        &self,
        req: Request<pb::ObjectiveRef>,
        action: &str,
        make: fn(String, Caller, crate::engine::Reply<()>) -> Command,
    ) -> Result<Response<pb::Objective>, Status> {
        let who = caller(&req)?;
        let raw = req.into_inner().id;
        let resolved = self.resolve(Some(who), &raw);
        let result = async {
            let id = resolved.clone()?;
            self.ask(|reply| make(id.clone(), who, reply))
                .await?
                .map_err(engine_status)?;
            read_objective(&self.store, &id)
        }
        .await;
        let audited = resolved.unwrap_or_else(|_| raw.trim().to_string());
        self.audit(who, action, &audited, &result).await;
        result.map(Response::new)
    }
}

/// The caller's credentials from the Unix socket (SO_PEERCRED). A call that carries none
/// (not over the Unix socket, or the kernel would not say) is refused: it must never be
/// taken for some user, let alone root.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| {
            tracing::warn!("refused a call without peer credentials");
            Status::unauthenticated(
                "cannot identify the caller: the connection has no peer credentials \
                 (SO_PEERCRED); orchd accepts calls only over its Unix socket",
            )
        })?;
    Ok(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
    })
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::NotFound(m) => Status::not_found(m),
        EngineError::FailedPrecondition(m) => Status::failed_precondition(m),
        EngineError::Unavailable(m) => Status::unavailable(m),
        EngineError::PermissionDenied(m) => Status::permission_denied(m),
        EngineError::ResourceExhausted(m) => Status::resource_exhausted(m),
        EngineError::Store(e) => store_status(e),
    }
}

fn store_status(e: StoreError) -> Status {
    // Reopening after a full disk: a moment later the same call works.
    if matches!(e, StoreError::Closed { .. } | StoreError::Busy { .. }) {
        return Status::unavailable(e.to_string());
    }
    tracing::error!(error = %e, "store error");
    Status::internal(format!("store error: {e}"))
}

fn spec_status(e: SpecError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn plan_status(e: PlanError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_without_connection_info_is_refused() {
        let e = caller(&Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("no peer credentials"), "{e}");
    }

    #[test]
    fn a_call_without_peer_credentials_is_refused_not_taken_for_root() {
        let mut req = Request::new(());
        req.extensions_mut().insert(UdsConnectInfo {
            peer_addr: None,
            peer_cred: None,
        });
        let e = caller(&req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn the_peer_credentials_name_the_caller() {
        let (ours, _theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut req = Request::new(());
        req.extensions_mut().insert(UdsConnectInfo {
            peer_addr: None,
            peer_cred: ours.peer_cred().ok(),
        });
        let who = caller(&req).expect("credentials of a Unix socket peer");
        assert_eq!(who.uid, nix::unistd::getuid().as_raw());
        assert_eq!(who.gid, nix::unistd::getgid().as_raw());
        assert_eq!(who.pid, std::process::id() as i32);
    }
}
