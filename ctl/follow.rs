//! The seam between following events (`watch.rs`) and orchd: [`Follow`] is what the
//! waiting logic asks of the daemon, implemented by the gRPC [`Client`] and, in unit
//! tests, by the in-memory `script::Scripted`.

use orch_proto::v1::{Event, GetObjectiveRequest, Objective, WatchRequest};
use tonic::{Status, Streaming};

use crate::client::Client;
use crate::error::{CtlError, Result};

/// What following events needs from orchd. Failures stay gRPC statuses so the follower
/// can tell a lost connection (worth reconnecting) from the daemon's answer;
/// [`Follow::error`] turns a status into what orchctl reports.
pub trait Follow {
    /// An open Watch stream.
    type Events: EventStream;
    /// Opens a Watch stream.
    async fn watch(&mut self, request: WatchRequest) -> Result<Self::Events, Status>;
    /// The objective as it is now (GetObjective).
    async fn objective(&mut self, id: &str) -> Result<Objective, Status>;
    /// Opens a fresh connection to the same daemon (e.g. after it restarted).
    async fn reconnect(&mut self) -> Result<()>;
    /// The error to report for a status from this daemon (exit 3 when it never answered).
    fn error(&self, status: Status) -> CtlError;
}

/// An open stream of events.
pub trait EventStream {
    /// The next event; `None` once the daemon closed the stream. Cancel-safe: dropping the
    /// future before it finished loses no event.
    async fn next_event(&mut self) -> Result<Option<Event>, Status>;
}

impl Follow for Client {
    type Events = Streaming<Event>;

    async fn watch(&mut self, request: WatchRequest) -> Result<Streaming<Event>, Status> {
        let r = self.api.watch(request).await;
        self.answered(r)
    }

    async fn objective(&mut self, id: &str) -> Result<Objective, Status> {
        let r = self
            .api
            .get_objective(GetObjectiveRequest { id: id.to_string() })
            .await;
        self.answered(r)
    }

    async fn reconnect(&mut self) -> Result<()> {
        Client::reconnect(self).await
    }

    fn error(&self, status: Status) -> CtlError {
        self.status_error(status)
    }
}

impl EventStream for Streaming<Event> {
    async fn next_event(&mut self) -> Result<Option<Event>, Status> {
        self.message().await
    }
}

/// A scripted daemon for unit tests: Watch and GetObjective answer from a script, and
/// every Watch request is recorded.
#[cfg(test)]
pub mod script {
    use std::collections::VecDeque;
    use std::path::Path;

    use orch_proto::v1 as pb;
    use pb::{Event, Objective, ObjectiveState, WatchRequest};
    use tonic::Status;

    use super::{EventStream, Follow};
    use crate::client::status_error;
    use crate::error::{CtlError, Result};

    /// The socket named in "cannot reach orchd" errors of the script.
    pub const SOCKET: &str = "/scripted/orchd.sock";

    /// One answer to Watch.
    #[derive(Clone)]
    pub enum Watch {
        /// The call is refused with this status.
        Refused(Status),
        /// A stream of these items (of the asked-for kinds only, like orchd), then closed
        /// (`close`) or left open for good. The stream ends at an error item.
        Stream {
            items: Vec<Result<Event, Status>>,
            close: bool,
        },
    }

    /// The scripted daemon.
    pub struct Scripted {
        /// Answers of successive Watch calls; the last one repeats (none: UNIMPLEMENTED).
        watches: VecDeque<Watch>,
        /// Answers of successive GetObjective calls; the last one repeats (none: running).
        objectives: VecDeque<Result<ObjectiveState, Status>>,
        /// Whether reconnecting fails (the daemon stays down).
        pub refuse_reconnect: bool,
        /// Every Watch request so far, in order.
        pub requests: Vec<WatchRequest>,
        /// How many times a fresh connection was opened.
        pub reconnects: usize,
        /// Whether a call was answered (as in [`crate::client::Client`]).
        reached: bool,
    }

    impl Scripted {
        /// A daemon answering Watch with `watches` and GetObjective with `objectives`.
        pub fn new(watches: Vec<Watch>, objectives: Vec<Result<ObjectiveState, Status>>) -> Self {
            Scripted {
                watches: watches.into(),
                objectives: objectives.into(),
                refuse_reconnect: false,
                requests: Vec::new(),
                reconnects: 0,
                reached: false,
            }
        }

        /// A daemon whose every Watch replays `events`, then closes the stream (`close`)
        /// or keeps it open; GetObjective answers `states` in turn.
        pub fn replaying(events: Vec<Event>, close: bool, states: Vec<ObjectiveState>) -> Self {
            let items = events.into_iter().map(Ok).collect();
            Self::new(
                vec![Watch::Stream { items, close }],
                states.into_iter().map(Ok).collect(),
            )
        }

        /// A daemon without Watch (UNIMPLEMENTED); GetObjective answers `states` in turn.
        pub fn without_watch(states: Vec<ObjectiveState>) -> Self {
            Self::new(Vec::new(), states.into_iter().map(Ok).collect())
        }

        /// The `kinds` of every Watch request so far.
        pub fn kinds(&self) -> Vec<Vec<String>> {
            self.requests.iter().map(|r| r.kinds.clone()).collect()
        }
    }

    /// The next answer of a script: the first, or the last one again.
    fn next<T: Clone>(answers: &mut VecDeque<T>) -> Option<T> {
        if answers.len() > 1 {
            answers.pop_front()
        } else {
            answers.front().cloned()
        }
    }

    impl Follow for Scripted {
        type Events = Events;

        async fn watch(&mut self, request: WatchRequest) -> Result<Events, Status> {
            let kinds = request.kinds.clone();
            self.requests.push(request);
            match next(&mut self.watches) {
                None => Err(Status::unimplemented("not in the script")),
                Some(Watch::Refused(status)) => Err(status),
                Some(Watch::Stream { items, close }) => {
                    self.reached = true;
                    let items = items
                        .into_iter()
                        .filter(|i| match i {
                            Ok(e) => kinds.is_empty() || kinds.contains(&e.kind),
                            Err(_) => true,
                        })
                        .collect();
                    Ok(Events { items, close })
                }
            }
        }

        async fn objective(&mut self, id: &str) -> Result<Objective, Status> {
            let state = next(&mut self.objectives).unwrap_or(Ok(ObjectiveState::Running))?;
            self.reached = true;
            Ok(Objective {
                id: id.to_string(),
                state: state as i32,
                ..Default::default()
            })
        }

        async fn reconnect(&mut self) -> Result<()> {
            self.reconnects += 1;
            if self.refuse_reconnect {
                return Err(CtlError::Unreachable {
                    socket: SOCKET.into(),
                    cause: "connection refused".into(),
                });
            }
            Ok(())
        }

        fn error(&self, status: Status) -> CtlError {
            status_error(status, self.reached, Path::new(SOCKET))
        }
    }

    /// A scripted Watch stream.
    pub struct Events {
        items: VecDeque<Result<Event, Status>>,
        close: bool,
    }

    impl EventStream for Events {
        async fn next_event(&mut self) -> Result<Option<Event>, Status> {
            match self.items.pop_front() {
                Some(Ok(event)) => Ok(Some(event)),
                Some(Err(status)) => {
                    // A stream ends at its error.
                    self.items.clear();
                    self.close = true;
                    Err(status)
                }
                None if self.close => Ok(None),
                None => std::future::pending().await,
            }
        }
    }

    /// An `objective_state` event of objective `o`.
    pub fn state_event(seq: u64, state: ObjectiveState) -> Event {
        Event {
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

    /// A `step_state` event (running) of step `step` of objective `o`.
    pub fn step_event(seq: u64, step: &str) -> Event {
        Event {
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
}
