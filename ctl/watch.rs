//! `orchctl watch` and the waiting behind `submit --wait/--watch`: follows the Watch
//! stream, shows events through an [`EventView`], and decides when an objective ended.

use std::time::{Duration, Instant};

use orch_proto::v1::{
    Event, GetObjectiveRequest, Objective, ObjectiveState, WatchRequest, event::Payload,
};
use tonic::Streaming;

use crate::cli::WatchArgs;
use crate::client::{Client, is_connection_loss, status_message};
use crate::error::{CtlError, Result};
use crate::json::{self, EVENT_KINDS};
use crate::output::{self, Format};
use crate::views;

/// After a terminal `objective_state` event, how long to wait for more events before
/// asking the daemon whether the objective really ended (a replayed history may go on,
/// e.g. when the objective was retried after it ended).
const END_GRACE: Duration = Duration::from_millis(500);

/// How long to keep trying to get a broken event stream back (e.g. while orchd restarts).
#[cfg(not(test))]
const RECONNECT_FOR: Duration = Duration::from_secs(30);
#[cfg(test)]
const RECONNECT_FOR: Duration = Duration::from_secs(2);

/// The pause between attempts to get a broken event stream back.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// How often `--wait` polls when the daemon has no Watch.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Where events go. One line each today; a live in-place view can implement this too.
pub trait EventView {
    /// Shows one event.
    fn show(&mut self, event: &Event) -> Result<()>;
    /// Called once when the stream is over.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// JSON Lines: one object per event.
struct JsonLines;

impl EventView for JsonLines {
    fn show(&mut self, event: &Event) -> Result<()> {
        output::json_line(&json::event(event))
    }
}

/// One readable line per event.
struct PlainLines {
    show_objective: bool,
}

impl EventView for PlainLines {
    fn show(&mut self, event: &Event) -> Result<()> {
        output::line(&views::event_line(event, self.show_objective))
    }
}

/// Shows nothing (for `--wait`).
struct Silent;

impl EventView for Silent {
    fn show(&mut self, _event: &Event) -> Result<()> {
        Ok(())
    }
}

/// The view for an output format; `show_objective` adds the objective's id to each line.
pub fn view_for(format: Format, show_objective: bool) -> Box<dyn EventView> {
    match format {
        Format::Json => Box::new(JsonLines),
        Format::Table => Box::new(PlainLines { show_objective }),
    }
}

/// Whether an objective state (raw enum value) is final.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        ObjectiveState::try_from(state),
        Ok(ObjectiveState::Succeeded | ObjectiveState::Failed | ObjectiveState::Cancelled)
    )
}

/// Exit 0 iff the objective succeeded; the events already said why not.
pub fn exit_for(end: &Objective) -> Result<()> {
    if end.state == ObjectiveState::Succeeded as i32 {
        Ok(())
    } else {
        Err(CtlError::Exit(1))
    }
}

/// Checks `--kinds` against the known event kinds.
fn check_kinds(kinds: &[String]) -> Result<Vec<String>> {
    let kinds: Vec<String> = kinds
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    for k in &kinds {
        if !EVENT_KINDS.contains(&k.as_str()) {
            return Err(CtlError::Usage(format!(
                "unknown event kind `{k}` (known: {})",
                EVENT_KINDS.join(", ")
            )));
        }
    }
    Ok(kinds)
}

/// Runs `orchctl watch`.
pub async fn run(args: WatchArgs, client: &mut Client, format: Format) -> Result<()> {
    let kinds = check_kinds(&args.kinds)?;
    let from = args.from.unwrap_or(0);
    match args.id {
        Some(id) => {
            let mut view = view_for(format, false);
            let end = follow_objective(client, &id, from, &kinds, view.as_mut()).await?;
            exit_for(&end)
        }
        None => {
            let mut view = view_for(format, true);
            let request = WatchRequest {
                objective_id: String::new(),
                from_seq: from,
                kinds,
            };
            let r = client.api.watch(request).await;
            let mut stream = client.check(r)?;
            loop {
                match stream.message().await {
                    Ok(Some(event)) => view.show(&event)?,
                    Ok(None) => break,
                    Err(status) => return Err(client.status_error(status)),
                }
            }
            view.finish()
        }
    }
}

/// Follows one objective's events (from `from`, or its first event) until it ends, showing
/// those of the wanted `kinds` (empty = all), and returns the objective as it ended.
pub async fn follow_objective(
    client: &mut Client,
    id: &str,
    from: u64,
    kinds: &[String],
    view: &mut dyn EventView,
) -> Result<Objective> {
    // objective_state events are always needed to see the end; the others are filtered here.
    let mut wanted = kinds.to_vec();
    if !wanted.is_empty() && !wanted.iter().any(|k| k == "objective_state") {
        wanted.push("objective_state".into());
    }
    let request = WatchRequest {
        objective_id: id.to_string(),
        from_seq: from,
        kinds: wanted,
    };
    let r = client.api.watch(request.clone()).await;
    let stream = client.check(r)?;
    follow_stream(client, request, stream, kinds, view).await
}

/// Why the current stream stopped before the objective was seen to end.
enum Interrupted {
    /// The daemon closed the stream (e.g. it is shutting down).
    Closed,
    /// The connection broke.
    Lost(tonic::Status),
}

/// Follows `stream` (opened with `request`) to the objective's end. When the stream breaks
/// or closes early (e.g. orchd restarts) it is opened again after the last event seen,
/// for up to [`RECONNECT_FOR`], so nothing is shown twice and nothing is missed.
async fn follow_stream(
    client: &mut Client,
    mut request: WatchRequest,
    mut stream: Streaming<Event>,
    kinds: &[String],
    view: &mut dyn EventView,
) -> Result<Objective> {
    let id = request.objective_id.clone();
    let mut maybe_ended = false;
    let mut trouble_since: Option<Instant> = None;
    loop {
        let next = if maybe_ended {
            match tokio::time::timeout(END_GRACE, stream.message()).await {
                Ok(n) => n,
                Err(_quiet) => {
                    let o = get(client, &id).await?;
                    if is_terminal(o.state) {
                        view.finish()?;
                        return Ok(o);
                    }
                    maybe_ended = false;
                    continue;
                }
            }
        } else {
            stream.message().await
        };
        let why = match next {
            Ok(Some(event)) => {
                if request.from_seq > 0 && event.seq < request.from_seq {
                    // Already shown before a reconnect.
                    continue;
                }
                trouble_since = None;
                request.from_seq = event.seq.saturating_add(1);
                let kind = json::event_kind(&event);
                if kinds.is_empty() || kinds.contains(&kind) {
                    view.show(&event)?;
                }
                if let Some(Payload::ObjectiveState(s)) = &event.payload {
                    maybe_ended = is_terminal(s.state);
                }
                continue;
            }
            Ok(None) => Interrupted::Closed,
            Err(status) if is_connection_loss(&status) => Interrupted::Lost(status),
            Err(status) => return Err(client.status_error(status)),
        };
        if let Interrupted::Closed = why {
            // The normal end: the daemon closes the stream once the objective ended.
            match get(client, &id).await {
                Ok(o) if is_terminal(o.state) => {
                    view.finish()?;
                    return Ok(o);
                }
                Ok(_) => {}
                Err(CtlError::Refused {
                    code: tonic::Code::Unavailable,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        let since = *trouble_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            let detail = match why {
                Interrupted::Closed => {
                    "the event stream ended before the objective did".to_string()
                }
                Interrupted::Lost(status) => {
                    format!("lost the connection: {}", status_message(&status))
                }
            };
            return Err(CtlError::Failed(format!(
                "watching {id}: {detail} (did orchd stop?)"
            )));
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
        if client.reconnect().await.is_err() {
            continue;
        }
        match client.api.watch(request.clone()).await {
            Ok(s) => stream = s.into_inner(),
            Err(status) if is_connection_loss(&status) => {}
            Err(status) => return Err(client.status_error(status)),
        }
    }
}

async fn get(client: &mut Client, id: &str) -> Result<Objective> {
    let r = client
        .api
        .get_objective(GetObjectiveRequest { id: id.to_string() })
        .await;
    client.check(r)
}

/// Waits until the objective ends and returns it as it ended.
pub async fn wait(client: &mut Client, id: &str) -> Result<Objective> {
    let request = WatchRequest {
        objective_id: id.to_string(),
        from_seq: 0,
        kinds: vec!["objective_state".into()],
    };
    match client.api.watch(request.clone()).await {
        Err(status) if status.code() == tonic::Code::Unimplemented => poll(client, id).await,
        r => {
            let stream = client.check(r)?;
            follow_stream(client, request, stream, &[], &mut Silent).await
        }
    }
}

/// TEMPORARY fallback while the daemon answers UNIMPLEMENTED for Watch: poll GetObjective
/// every 200 ms, with no deadline, until the objective ends. Remove once Watch is served
/// everywhere (the contract says nothing polls).
async fn poll(client: &mut Client, id: &str) -> Result<Objective> {
    loop {
        let o = get(client, id).await?;
        if is_terminal(o.state) {
            return Ok(o);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{self, Script, state_event};

    /// Records the sequence numbers it was shown.
    #[derive(Default)]
    struct Recorder(Vec<u64>);

    impl EventView for Recorder {
        fn show(&mut self, event: &Event) -> Result<()> {
            self.0.push(event.seq);
            Ok(())
        }
    }

    #[tokio::test]
    async fn history_with_a_retry_is_followed_to_the_real_end() {
        use ObjectiveState::*;
        let d = fake::start(Script {
            events: Some(vec![
                state_event(1, Running),
                state_event(2, Failed),
                state_event(3, Running),
                state_event(4, Succeeded),
            ]),
            close: false,
            states: vec![Succeeded],
        });
        let mut client = Client::connect(&d.socket)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Recorder::default();
        let started = Instant::now();
        let end = follow_objective(&mut client, "o", 0, &[], &mut seen).await;
        let end = end.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen.0, vec![1, 2, 3, 4]);
        assert_eq!(end.state, Succeeded as i32);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(exit_for(&end).is_ok());
    }

    #[tokio::test]
    async fn closed_stream_ends_with_the_final_state() {
        use ObjectiveState::*;
        let d = fake::start(Script {
            events: Some(vec![state_event(1, Running), state_event(2, Failed)]),
            close: true,
            states: vec![Failed],
        });
        let mut client = Client::connect(&d.socket)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Recorder::default();
        let kinds = vec!["step_state".to_string()];
        let end = follow_objective(&mut client, "o", 0, &kinds, &mut seen).await;
        let end = end.unwrap_or_else(|e| panic!("{e}"));
        assert!(seen.0.is_empty(), "objective_state was not asked for");
        assert_eq!(exit_for(&end).err().map(|e| e.exit_code()), Some(1));
    }

    #[tokio::test]
    async fn stream_that_ends_early_is_an_error() {
        use ObjectiveState::*;
        let d = fake::start(Script {
            events: Some(vec![state_event(1, Running)]),
            close: true,
            states: vec![Running],
        });
        let mut client = Client::connect(&d.socket)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let end = follow_objective(&mut client, "o", 0, &[], &mut Silent).await;
        assert_eq!(end.err().map(|e| e.exit_code()), Some(1));
    }

    #[tokio::test]
    async fn wait_polls_when_watch_is_unimplemented() {
        use ObjectiveState::*;
        let d = fake::start(Script {
            events: None,
            close: true,
            states: vec![Pending, Running, Running, Cancelled],
        });
        let mut client = Client::connect(&d.socket)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let end = wait(&mut client, "o")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end.state, Cancelled as i32);
    }

    #[tokio::test]
    async fn refusals_exit_1() {
        let d = fake::start(Script {
            events: None,
            close: true,
            states: vec![],
        });
        let mut client = Client::connect(&d.socket)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let r = client
            .api
            .cancel(orch_proto::v1::ObjectiveRef { id: "o".into() })
            .await;
        let e = client.check(r).err();
        let e = e.unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "objective already ended");
    }

    #[test]
    fn kinds_are_checked() {
        assert!(check_kinds(&["step_state".into(), " attempt_ended".into()]).is_ok());
        let e = check_kinds(&["nope".into()]).err();
        assert_eq!(e.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn terminal_states() {
        assert!(is_terminal(ObjectiveState::Failed as i32));
        assert!(is_terminal(ObjectiveState::Succeeded as i32));
        assert!(!is_terminal(ObjectiveState::Paused as i32));
        assert!(!is_terminal(99));
    }
}
