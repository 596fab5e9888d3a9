//! A fake `orchd` for unit tests: serves a scripted Watch stream and GetObjective answers
//! on a Unix socket, so the waiting logic is tested without the real daemon.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use orch_proto::v1 as pb;
use orch_proto::v1::orchestrator_server::{Orchestrator, OrchestratorServer};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the fake answers.
pub struct Script {
    /// Events sent by Watch; `None` = Watch is UNIMPLEMENTED.
    pub events: Option<Vec<pb::Event>>,
    /// Whether the Watch stream ends after the events (else it stays open).
    pub close: bool,
    /// Objective states returned by successive GetObjective calls (the last one repeats).
    pub states: Vec<pb::ObjectiveState>,
}

struct Fake {
    events: Option<Vec<pb::Event>>,
    close: bool,
    states: Mutex<VecDeque<pb::ObjectiveState>>,
    /// The `kinds` of every Watch request, in order.
    requests: Arc<Mutex<Vec<Vec<String>>>>,
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl Orchestrator for Fake {
    async fn submit(
        &self,
        _: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        unimplemented()
    }
    async fn get_objective(
        &self,
        r: Request<pb::GetObjectiveRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        let mut states = self
            .states
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let state = if states.len() > 1 {
            states.pop_front()
        } else {
            states.front().copied()
        };
        Ok(Response::new(pb::Objective {
            id: r.into_inner().id,
            state: state.unwrap_or(pb::ObjectiveState::Running) as i32,
            ..Default::default()
        }))
    }
    async fn list_objectives(
        &self,
        _: Request<pb::ListObjectivesRequest>,
    ) -> Result<Response<pb::ListObjectivesResponse>, Status> {
        unimplemented()
    }
    async fn cancel(
        &self,
        _: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        Err(Status::failed_precondition("objective already ended"))
    }
    async fn pause(&self, _: Request<pb::ObjectiveRef>) -> Result<Response<pb::Objective>, Status> {
        unimplemented()
    }
    async fn resume(
        &self,
        _: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        unimplemented()
    }
    async fn retry(&self, _: Request<pb::RetryRequest>) -> Result<Response<pb::Objective>, Status> {
        unimplemented()
    }
    async fn approve(
        &self,
        _: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        unimplemented()
    }
    type WatchStream = BoxStream<pb::Event>;
    async fn watch(
        &self,
        r: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Some(events) = self.events.clone() else {
            return unimplemented();
        };
        let kinds = r.into_inner().kinds;
        if let Ok(mut seen) = self.requests.lock() {
            seen.push(kinds.clone());
        }
        // Like orchd: only the asked-for kinds (all when none).
        let events: Vec<pb::Event> = events
            .into_iter()
            .filter(|e| kinds.is_empty() || kinds.contains(&e.kind))
            .collect();
        let replay = tokio_stream::iter(events.into_iter().map(Ok));
        if self.close {
            Ok(Response::new(Box::pin(replay)))
        } else {
            Ok(Response::new(Box::pin(
                replay.chain(tokio_stream::pending()),
            )))
        }
    }
    type StreamLogsStream = BoxStream<pb::LogChunk>;
    async fn stream_logs(
        &self,
        _: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        unimplemented()
    }
    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        unimplemented()
    }
    async fn get_usage(
        &self,
        _: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        unimplemented()
    }
    async fn list_audit(
        &self,
        _: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        unimplemented()
    }
    async fn daemon_status(
        &self,
        _: Request<pb::DaemonStatusRequest>,
    ) -> Result<Response<pb::DaemonStatusResponse>, Status> {
        unimplemented()
    }
    async fn reload_config(
        &self,
        _: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        unimplemented()
    }
}

/// A running fake daemon; the socket lives in `_dir`.
pub struct FakeDaemon {
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Vec<String>>>>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    /// The `kinds` of every Watch request so far.
    pub fn requests(&self) -> Vec<Vec<String>> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Starts a fake daemon on the current tokio runtime.
pub fn start(script: Script) -> FakeDaemon {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let socket = dir.path().join("orchd.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap_or_else(|e| panic!("bind: {e}"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        events: script.events,
        close: script.close,
        states: Mutex::new(script.states.into()),
        requests: requests.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(OrchestratorServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    FakeDaemon {
        socket,
        requests,
        _dir: dir,
    }
}

/// An `objective_state` event.
pub fn state_event(seq: u64, state: pb::ObjectiveState) -> pb::Event {
    pb::Event {
        seq,
        objective_id: "o".into(),
        kind: "objective_state".into(),
        payload: Some(pb::event::Payload::ObjectiveState(
            pb::ObjectiveStateChanged {
                state: state as i32,
                message: String::new(),
            },
        )),
        ..Default::default()
    }
}

/// A `step_state` event (running) of step `step`.
pub fn step_event(seq: u64, step: &str) -> pb::Event {
    pb::Event {
        seq,
        objective_id: "o".into(),
        step_id: step.into(),
        kind: "step_state".into(),
        payload: Some(pb::event::Payload::StepState(pb::StepStateChanged {
            state: pb::StepState::Running as i32,
            message: String::new(),
        })),
        ..Default::default()
    }
}
