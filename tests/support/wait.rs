//! Waiting with a deadline. Objective states are awaited over gRPC: subscribe to the live
//! `Watch` stream, look (`GetObjective`) once after subscribing and again after each batch of
//! events, so no change is missed and nothing is polled on a timer. Polling (`poll_until`) is
//! left for what sends no event: processes in /proc, files, log text, audit entries.

use std::thread;
use std::time::{Duration, Instant};

use orch_proto::v1::orchestrator_client::OrchestratorClient;
use orch_proto::v1::{
    AuditEntry, Event, GetObjectiveRequest, ListAuditRequest, ListObjectivesRequest, Objective,
    WatchRequest,
};
use orch_proto::words;
use serde_json::Value;
use tonic::Streaming;
use tonic::transport::Channel;

use super::ctl::{describe, stdout};
use super::daemon::{TestDaemon, block_on};
use super::json::first_attempt_has_pid;
use super::procfs::process_alive;

/// Default deadline for an objective to reach an awaited state.
pub const STATE_DEADLINE: Duration = Duration::from_secs(15);

/// The objective states in which nothing runs any more.
pub const TERMINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Calls `f` every ~20 ms until it returns `Some`, up to `deadline`; panics naming `what`.
/// Only for conditions no event announces (see the module doc).
pub fn poll_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= end {
            panic!("{what}: not within {deadline:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls /proc until `pid` is gone, up to `deadline`; true when it went. (A process that is not
/// our child announces its end nowhere.)
pub fn wait_process_gone(pid: u32, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if !process_alive(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The state of `o` as `orchctl` prints it (`running`, `succeeded`, ...).
pub fn state_word(o: &Objective) -> String {
    words::objective_state(o.state())
}

/// Whether the objective has ended.
pub fn is_terminal(o: &Objective) -> bool {
    TERMINAL.contains(&state_word(o).as_str())
}

/// One line about an objective for failure messages: its state and message, and each step's
/// state and attempt count.
pub fn summary(o: &Objective) -> String {
    let steps: Vec<String> = o
        .steps
        .iter()
        .map(|s| {
            format!(
                "{} {} ({} attempts)",
                s.id,
                words::step_state(s.state()),
                s.attempts.len()
            )
        })
        .collect();
    format!(
        "{} `{}`; steps: {}",
        state_word(o),
        o.message,
        steps.join(", ")
    )
}

/// A live `Watch` subscription used as a wake-up: after [`Changes::next`] says so, something
/// may have changed. It asks for no history (`from_seq` is left at its default), so callers
/// look at the current state once after subscribing.
pub struct Changes {
    stream: Streaming<Event>,
    ended: bool,
}

/// What [`Changes::next`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// One or more events.
    Events,
    /// The stream ended: the watched objective ended.
    Ended,
    /// Nothing before the deadline.
    Deadline,
}

impl Changes {
    /// Subscribes to the events of objective `id`, or of every objective for `""`. When this
    /// returns, the daemon has subscribed: nothing published afterwards is missed.
    pub async fn subscribe(client: &mut OrchestratorClient<Channel>, id: &str) -> Changes {
        let stream = client
            .watch(WatchRequest {
                objective_id: id.to_string(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("Watch `{id}`: {e}"))
            .into_inner();
        Changes {
            stream,
            ended: false,
        }
    }

    /// Waits for events (taking all that have already arrived, so one look covers them), the
    /// end of the stream, or `end`.
    pub async fn next(&mut self, end: tokio::time::Instant) -> Woke {
        if self.ended {
            return Woke::Ended;
        }
        match tokio::time::timeout_at(end, self.stream.message()).await {
            Err(_) => return Woke::Deadline,
            Ok(m) => self.take(m),
        }
        // `timeout` polls the stream before its (zero) timer: this takes what is there.
        while !self.ended {
            match tokio::time::timeout(Duration::ZERO, self.stream.message()).await {
                Ok(m) => self.take(m),
                Err(_) => break,
            }
        }
        if self.ended {
            Woke::Ended
        } else {
            Woke::Events
        }
    }

    fn take(&mut self, m: Result<Option<Event>, tonic::Status>) {
        match m {
            Ok(Some(_)) => {}
            Ok(None) => self.ended = true,
            Err(status) => panic!("the Watch stream failed: {status}"),
        }
    }
}

async fn get(client: &mut OrchestratorClient<Channel>, id: &str) -> Objective {
    client
        .get_objective(GetObjectiveRequest { id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("GetObjective {id}: {e}"))
        .into_inner()
}

/// How a wait on one objective ended.
pub enum Waited {
    /// The predicate held for this state.
    Reached(Objective),
    /// The objective ended (its watch stream with it) in this state, and the predicate does
    /// not hold.
    Ended(Objective),
    /// The deadline passed; the last state seen.
    Deadline(Objective),
}

/// Follows objective `id` on `client` until `pred` holds for its state, it ends without, or
/// `deadline` passes.
pub async fn follow(
    client: &mut OrchestratorClient<Channel>,
    id: &str,
    deadline: Duration,
    mut pred: impl FnMut(&Objective) -> bool,
) -> Waited {
    let end = tokio::time::Instant::now() + deadline;
    let mut changes = Changes::subscribe(client, id).await;
    loop {
        let o = get(client, id).await;
        if pred(&o) {
            return Waited::Reached(o);
        }
        match changes.next(end).await {
            Woke::Events => {}
            Woke::Deadline => return Waited::Deadline(o),
            Woke::Ended => {
                let o = get(client, id).await;
                return if pred(&o) {
                    Waited::Reached(o)
                } else {
                    Waited::Ended(o)
                };
            }
        }
    }
}

/// [`follow`], panicking with a message naming `what` unless `pred` came to hold.
pub async fn objective_until(
    client: &mut OrchestratorClient<Channel>,
    id: &str,
    what: &str,
    deadline: Duration,
    pred: impl FnMut(&Objective) -> bool,
) -> Objective {
    match follow(client, id, deadline, pred).await {
        Waited::Reached(o) => o,
        Waited::Ended(o) => panic!("objective {id} ended without {what}: {}", summary(&o)),
        Waited::Deadline(o) => panic!(
            "objective {id}: {what} not within {deadline:?}; last seen: {}",
            summary(&o)
        ),
    }
}

impl TestDaemon {
    /// Waits (over gRPC, see the module doc) until `pred` holds for objective `id`; panics
    /// naming `what` when it ends without or `deadline` passes.
    pub fn wait_until(
        &self,
        id: &str,
        what: &str,
        deadline: Duration,
        pred: impl FnMut(&Objective) -> bool + Send,
    ) -> Objective {
        block_on(async {
            let mut client = self.client().await;
            objective_until(&mut client, id, what, deadline, pred).await
        })
    }

    /// Waits until objective `id` is in one of `states` (words: `running`, `paused`, ...).
    pub fn wait_state(&self, id: &str, states: &[&str], deadline: Duration) -> Objective {
        let what = format!("state {}", states.join(" or "));
        self.wait_until(id, &what, deadline, |o| {
            states.contains(&state_word(o).as_str())
        })
    }

    /// Waits until objective `id` has ended; returns its final `orchctl status` JSON.
    pub fn wait_ended(&self, id: &str, deadline: Duration) -> Value {
        self.wait_state(id, &TERMINAL, deadline);
        self.status(id)
    }

    /// Waits until the first attempt of objective `id` has started (has a pid); returns its
    /// `orchctl status` JSON, which shows that pid.
    pub fn wait_started(&self, id: &str, deadline: Duration) -> Value {
        self.wait_until(id, "a pid for the first attempt", deadline, |o| {
            o.steps
                .first()
                .and_then(|s| s.attempts.first())
                .is_some_and(|a| a.pid.is_some())
        });
        let v = self.status(id);
        assert!(
            first_attempt_has_pid(&v),
            "no pid in the status of {id}: {v}"
        );
        v
    }

    /// Waits until `pred` holds for `orchctl status ID -o json`, looked at after subscribing
    /// to the objective's events and again whenever it changed (never on a timer); returns
    /// that status.
    pub fn wait_for_state(
        &self,
        id: &str,
        pred: impl Fn(&Value) -> bool,
        deadline: Duration,
    ) -> Value {
        let end = Instant::now() + deadline;
        let mut seen: Option<Objective> = None;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let waited = block_on(async {
                let mut client = self.client().await;
                follow(&mut client, id, left, |o| seen.as_ref() != Some(o)).await
            });
            // Set when no further change can come (or none came in time).
            let finished = match waited {
                Waited::Reached(o) => {
                    seen = Some(o);
                    None
                }
                Waited::Ended(_) => Some("ended without reaching the awaited state".to_string()),
                Waited::Deadline(_) => Some(format!(
                    "did not reach the awaited state within {deadline:?}"
                )),
            };
            let out = self.ctl(&["status", id, "-o", "json"]);
            if out.status.code() == Some(3) {
                panic!(
                    "orchd became unreachable while waiting for {id}\n{}",
                    describe(&out)
                );
            }
            let last = if out.status.success() {
                match serde_json::from_slice::<Value>(&out.stdout) {
                    Ok(v) if pred(&v) => return v,
                    Ok(v) => v.to_string(),
                    Err(e) => format!("not JSON ({e}): {}", stdout(&out)),
                }
            } else {
                describe(&out)
            };
            if let Some(how) = finished {
                panic!("objective {id} {how}\nlast status: {last}");
            }
        }
    }

    /// Waits until the first of `ids` for which `pred` holds; returns its index. Follows every
    /// objective's events (one live stream) and looks at each of `ids` after each batch.
    pub fn wait_first_of(
        &self,
        ids: &[&str],
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Objective) -> bool + Sync,
    ) -> usize {
        block_on(async {
            let mut client = self.client().await;
            let end = tokio::time::Instant::now() + deadline;
            let mut changes = Changes::subscribe(&mut client, "").await;
            loop {
                let mut last = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    let o = get(&mut client, id).await;
                    if pred(&o) {
                        return i;
                    }
                    last.push(format!("{id}: {}", summary(&o)));
                }
                if changes.next(end).await == Woke::Deadline {
                    panic!(
                        "{what}: not within {deadline:?}; last seen:\n{}",
                        last.join("\n")
                    );
                }
            }
        })
    }

    /// Waits until every objective the daemon lists has ended; returns `orchctl list` JSON.
    pub fn wait_all_ended(&self, deadline: Duration) -> Vec<Value> {
        block_on(async {
            let mut client = self.client().await;
            let end = tokio::time::Instant::now() + deadline;
            let mut changes = Changes::subscribe(&mut client, "").await;
            loop {
                let list = client
                    .list_objectives(ListObjectivesRequest::default())
                    .await
                    .unwrap_or_else(|e| panic!("ListObjectives: {e}"))
                    .into_inner()
                    .objectives;
                let running: Vec<String> = list
                    .iter()
                    .filter(|o| !TERMINAL.contains(&words::objective_state(o.state()).as_str()))
                    .map(|o| format!("{} {}", o.id, words::objective_state(o.state())))
                    .collect();
                if running.is_empty() {
                    return;
                }
                if changes.next(end).await == Woke::Deadline {
                    panic!("not every objective ended within {deadline:?}: {running:?}");
                }
            }
        });
        self.list(&[])
    }

    /// Polls `ListAudit` over gRPC until `enough` holds for the trail (newest first). The trail
    /// has no event: an entry is written with the engine's next turn.
    pub fn wait_audit(&self, what: &str, enough: impl Fn(&[AuditEntry]) -> bool) {
        poll_until(what, STATE_DEADLINE, || {
            let entries = block_on(async {
                self.client()
                    .await
                    .list_audit(ListAuditRequest::default())
                    .await
                    .unwrap_or_else(|e| panic!("ListAudit: {e}"))
                    .into_inner()
                    .entries
            });
            enough(&entries).then_some(())
        })
    }
}

/// The waits fail at once, and say why, when what they wait for can no longer happen, and
/// name what they waited for when the deadline passes.
mod tests {
    use std::time::Duration;

    use crate::support::TestDaemon;

    #[test]
    #[should_panic(expected = "ended without state running")]
    fn a_state_an_ended_objective_cannot_reach_fails_at_once() {
        let d = TestDaemon::start();
        let id = d.submit(&["--wait", "--retries", "0", "--", "false"], 1);
        // Far longer than the test may take: only the end of the stream can stop this wait.
        d.wait_state(&id, &["running"], Duration::from_secs(600));
    }

    #[test]
    #[should_panic(expected = "ended without reaching the awaited state")]
    fn a_status_an_ended_objective_cannot_reach_fails_at_once() {
        let d = TestDaemon::start();
        let id = d.submit(&["--wait", "--retries", "0", "--", "false"], 1);
        d.wait_for_state(&id, |v| v["state"] == "running", Duration::from_secs(600));
    }

    #[test]
    #[should_panic(expected = "state succeeded not within 300ms")]
    fn a_wait_past_its_deadline_names_what_it_waited_for() {
        let d = TestDaemon::start();
        let id = d.submit(&["--retries", "0", "--", "sleep", "30.61"], 0);
        d.wait_state(&id, &["succeeded"], Duration::from_millis(300));
    }
}
