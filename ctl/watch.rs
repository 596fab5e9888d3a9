//! `orchctl watch` and the waiting behind `submit --wait/--watch`: follows the Watch
//! stream of a [`Follow`] (orchd, or a script in tests), shows events through an
//! [`EventView`], and decides when an objective ended.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use orch_proto::v1::{Event, Objective, ObjectiveState, WatchRequest, event::Payload};
use tokio::time::MissedTickBehavior;

use crate::cli::WatchArgs;
use crate::client::{Client, is_connection_loss, status_message};
use crate::error::{CtlError, Result};
use crate::follow::{EventStream, Follow};
use crate::json::{self, EVENT_KINDS};
use crate::live::{self, LiveView};
use crate::output::{self, Format};
use crate::views;

/// After a terminal `objective_state` event, how long to wait for more events before
/// asking the daemon whether the objective really ended (orchd closes the stream at the
/// end; this only matters when it does not, e.g. a proxy keeps it open).
const END_GRACE: Duration = Duration::from_millis(500);

/// How long to wait before asking again for the final events of an objective that ended
/// when its stream closed without them (time for orchd to finish writing them).
const RECHECK_AFTER: Duration = Duration::from_millis(100);

/// How long to keep trying to get a broken event stream back (e.g. while orchd restarts).
#[cfg(not(test))]
const RECONNECT_FOR: Duration = Duration::from_secs(30);
#[cfg(test)]
const RECONNECT_FOR: Duration = Duration::from_secs(2);

/// The pause between attempts to get a broken event stream back.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// Where events go: JSON Lines, plain lines, nothing, or the live terminal view.
pub trait EventView {
    /// Shows one event.
    fn show(&mut self, event: &Event) -> Result<()>;
    /// Called every [`live::TICK`] while waiting for events (to redraw clocks).
    fn tick(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether the view needs every event of the objective (it filters what it prints
    /// itself), rather than only those of the asked-for kinds.
    fn wants_every_kind(&self) -> bool {
        false
    }
    /// Called once when the stream is over, with the objective as it ended (when one
    /// objective was followed).
    fn finish(&mut self, _end: Option<&Objective>) -> Result<()> {
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

/// Shows nothing (tests of the waiting logic).
#[cfg(test)]
struct Silent;

#[cfg(test)]
impl EventView for Silent {
    fn show(&mut self, _event: &Event) -> Result<()> {
        Ok(())
    }
}

/// The line-per-event view for an output format; `show_objective` adds the objective's
/// id to each line.
pub fn view_for(format: Format, show_objective: bool) -> Box<dyn EventView> {
    match format {
        Format::Json => Box::new(JsonLines),
        Format::Table => Box::new(PlainLines { show_objective }),
    }
}

/// Whether stdout is a terminal that can redraw lines in place.
pub fn stdout_is_live_terminal() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb" && !t.is_empty())
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
            // A prefix or `last` becomes the full id once, so that the objectives submitted
            // while watching cannot make it mean another one.
            let full = get(client, &id).await?.id;
            show_objective(client, &full, from, &kinds, format).await
        }
        None => {
            let mut view = view_for(format, true);
            let request = WatchRequest {
                objective_id: String::new(),
                from_seq: args.from,
                kinds,
            };
            follow_all(client, request, view.as_mut()).await
        }
    }
}

/// Shows the events `request` asks for until the daemon closes the stream (`watch` without
/// an id: nothing to wait for, so a broken stream is an error, not a reason to reconnect).
async fn follow_all<F: Follow>(
    source: &mut F,
    request: WatchRequest,
    view: &mut dyn EventView,
) -> Result<()> {
    let r = source.watch(request).await;
    let mut stream = r.map_err(|status| watch_unavailable(source.error(status)))?;
    loop {
        match stream.next_event().await {
            Ok(Some(event)) => view.show(&event)?,
            Ok(None) => break,
            Err(status) => return Err(source.error(status)),
        }
    }
    view.finish(None)
}

/// Shows one objective's events (from `from`, or its first event) until it ends, in the
/// view `format` and stdout call for: the live view on a terminal in table format, else a
/// line per event. Exit 0 iff it succeeded (for `watch ID` and `submit --watch`).
pub async fn show_objective<F: Follow>(
    source: &mut F,
    id: &str,
    from: u64,
    kinds: &[String],
    format: Format,
) -> Result<()> {
    let mut view: Box<dyn EventView> = if format == Format::Table && stdout_is_live_terminal() {
        let start = get(source, id).await?;
        Box::new(LiveView::on_stdout(&start, kinds))
    } else {
        view_for(format, false)
    };
    let end = follow_objective(source, id, from, kinds, view.as_mut()).await?;
    exit_for(&end)
}

/// A clean error for an orchd that answers UNIMPLEMENTED to Watch.
fn watch_unavailable(e: CtlError) -> CtlError {
    match e {
        CtlError::Refused {
            code: tonic::Code::Unimplemented,
            message,
        } => CtlError::Failed(format!(
            "this orchd cannot stream events (Watch: {message}); upgrade orchd, or check the objective with `orchctl status ID`"
        )),
        e => e,
    }
}

/// Follows one objective's events (from `from`, or its first event) until it ends, showing
/// those of the wanted `kinds` (empty = all; a view that [wants every
/// kind](EventView::wants_every_kind) gets all and filters itself), and returns the
/// objective as it ended.
pub async fn follow_objective<F: Follow>(
    source: &mut F,
    id: &str,
    from: u64,
    kinds: &[String],
    view: &mut dyn EventView,
) -> Result<Objective> {
    let kinds = if view.wants_every_kind() { &[] } else { kinds };
    // objective_state events tell the end even without the stream closing; the others are
    // filtered here.
    let mut wanted = kinds.to_vec();
    if !wanted.is_empty() && !wanted.iter().any(|k| k == "objective_state") {
        wanted.push("objective_state".into());
    }
    let request = WatchRequest {
        objective_id: id.to_string(),
        from_seq: Some(from),
        kinds: wanted,
    };
    let r = source.watch(request.clone()).await;
    let stream = r.map_err(|status| watch_unavailable(source.error(status)))?;
    follow_stream(source, request, stream, kinds, view)
        .await
        .map_err(watch_unavailable)
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
async fn follow_stream<F: Follow>(
    source: &mut F,
    mut request: WatchRequest,
    mut stream: F::Events,
    kinds: &[String],
    view: &mut dyn EventView,
) -> Result<Objective> {
    let id = request.objective_id.clone();
    // Set after a terminal objective_state: when to ask whether it really ended.
    let mut grace_until: Option<tokio::time::Instant> = None;
    let mut trouble_since: Option<Instant> = None;
    // Whether the last objective_state seen was final, and which state it was.
    let mut saw_end = false;
    let mut end_state: Option<i32> = None;
    // Whether the stream was opened again to confirm an end whose final event did not come.
    let mut rechecked = false;
    let mut ticker = tokio::time::interval(live::TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            next = stream.next_event() => next,
            _ = ticker.tick() => {
                view.tick()?;
                continue;
            }
            _ = tokio::time::sleep_until(grace_until.unwrap_or_else(tokio::time::Instant::now)),
                if grace_until.is_some() =>
            {
                grace_until = None;
                let o = get(source, &id).await?;
                // Ended as the stream said: done. Ended otherwise (retried since, and the
                // rest of its history is still on its way) or running: keep following.
                if is_terminal(o.state) && end_state == Some(o.state) {
                    view.finish(Some(&o))?;
                    return Ok(o);
                }
                continue;
            }
        };
        let why = match next {
            Ok(Some(event)) => {
                if request.from_seq.is_some_and(|from| event.seq < from) {
                    // Already shown before a reconnect.
                    continue;
                }
                trouble_since = None;
                rechecked = false;
                request.from_seq = Some(event.seq.saturating_add(1));
                let kind = json::event_kind(&event);
                if kinds.is_empty() || kinds.contains(&kind) {
                    view.show(&event)?;
                }
                if let Some(Payload::ObjectiveState(s)) = &event.payload {
                    saw_end = is_terminal(s.state);
                    end_state = saw_end.then_some(s.state);
                    grace_until = saw_end.then(|| tokio::time::Instant::now() + END_GRACE);
                }
                continue;
            }
            Ok(None) => Interrupted::Closed,
            Err(status) if is_connection_loss(&status) => Interrupted::Lost(status),
            Err(status) => return Err(source.error(status)),
        };
        if let Interrupted::Closed = why {
            // The normal end: the daemon closes the stream once the objective ended.
            match get(source, &id).await {
                Ok(o) if is_terminal(o.state) && (saw_end || rechecked) => {
                    view.finish(Some(&o))?;
                    return Ok(o);
                }
                Ok(o) if is_terminal(o.state) => {
                    // It ended, but its final events did not come (a watch opened while
                    // the end was being written may stop short): ask once more for what
                    // follows the last event seen. Nothing more (e.g. `--from` past the
                    // end) confirms the end.
                    rechecked = true;
                    tokio::time::sleep(RECHECK_AFTER).await;
                    match source.watch(request.clone()).await {
                        Ok(s) => {
                            stream = s;
                            continue;
                        }
                        Err(status) if is_connection_loss(&status) => {}
                        Err(status) => return Err(source.error(status)),
                    }
                }
                Ok(_) => {}
                Err(CtlError::Refused {
                    code: tonic::Code::Unavailable,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        grace_until = None;
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
        if source.reconnect().await.is_err() {
            continue;
        }
        match source.watch(request.clone()).await {
            Ok(s) => stream = s,
            Err(status) if is_connection_loss(&status) => {}
            Err(status) => return Err(source.error(status)),
        }
    }
}

/// The objective as it is now.
async fn get<F: Follow>(source: &mut F, id: &str) -> Result<Objective> {
    let r = source.objective(id).await;
    r.map_err(|status| source.error(status))
}

/// Waits until the objective ends (following its Watch stream) and returns it as it ended.
#[cfg(test)]
pub async fn wait<F: Follow>(source: &mut F, id: &str) -> Result<Objective> {
    let kinds = ["objective_state".to_string()];
    follow_objective(source, id, 0, &kinds, &mut Silent).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::script::{Scripted, Watch, state_event, step_event};
    use tonic::Status;

    /// Records the sequence numbers it was shown.
    #[derive(Default)]
    struct Recorder(Vec<u64>);

    impl EventView for Recorder {
        fn show(&mut self, event: &Event) -> Result<()> {
            self.0.push(event.seq);
            Ok(())
        }
    }

    /// A Watch answer: `items`, then the stream stays open (unless an item is an error).
    fn open_stream(items: Vec<Result<Event, Status>>) -> Watch {
        Watch::Stream {
            items,
            close: false,
        }
    }

    #[tokio::test]
    async fn history_with_a_retry_is_followed_to_the_real_end() {
        use ObjectiveState::*;
        let events = vec![
            state_event(1, Running),
            state_event(2, Failed),
            state_event(3, Running),
            state_event(4, Succeeded),
        ];
        let mut d = Scripted::replaying(events, false, vec![Succeeded]);
        let mut seen = Recorder::default();
        let started = Instant::now();
        let end = follow_objective(&mut d, "o", 0, &[], &mut seen).await;
        let end = end.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen.0, vec![1, 2, 3, 4]);
        assert_eq!(end.state, Succeeded as i32);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(exit_for(&end).is_ok());
    }

    #[tokio::test]
    async fn closed_stream_ends_with_the_final_state() {
        use ObjectiveState::*;
        let events = vec![state_event(1, Running), state_event(2, Failed)];
        let mut d = Scripted::replaying(events, true, vec![Failed]);
        let mut seen = Recorder::default();
        let kinds = vec!["step_state".to_string()];
        let end = follow_objective(&mut d, "o", 0, &kinds, &mut seen).await;
        let end = end.unwrap_or_else(|e| panic!("{e}"));
        assert!(seen.0.is_empty(), "objective_state was not asked for");
        assert_eq!(exit_for(&end).err().map(|e| e.exit_code()), Some(1));
    }

    #[tokio::test]
    async fn an_end_without_its_final_event_is_checked_once_more() {
        use ObjectiveState::*;
        // The stream closes before the final objective_state although the objective ended
        // (an orchd race): the client asks again from after the last event, then stops.
        let events = vec![state_event(1, Running), step_event(2, "s")];
        let mut d = Scripted::replaying(events, true, vec![Succeeded]);
        let mut seen = Recorder::default();
        let end = follow_objective(&mut d, "o", 0, &[], &mut seen).await;
        let end = end.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end.state, Succeeded as i32);
        assert_eq!(seen.0, vec![1, 2], "nothing shown twice");
        assert_eq!(d.requests.len(), 2, "one more Watch to confirm the end");
        assert_eq!(d.reconnects, 0);
    }

    #[tokio::test]
    async fn stream_that_ends_early_is_an_error() {
        use ObjectiveState::*;
        let mut d = Scripted::replaying(vec![state_event(1, Running)], true, vec![Running]);
        let end = follow_objective(&mut d, "o", 0, &[], &mut Silent).await;
        let e = end.err().unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        let text = e.to_string();
        assert!(
            text.contains("the event stream ended before the objective did"),
            "{text}"
        );
        assert!(d.reconnects > 0, "it tried to get the stream back");
    }

    #[tokio::test]
    async fn unimplemented_watch_is_a_clean_error() {
        use ObjectiveState::*;
        // An orchd without Watch: waiting does not fall back to polling; it says why.
        let mut d = Scripted::without_watch(vec![Running, Succeeded]);
        let e = wait(&mut d, "o").await.err();
        let e = e.unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("cannot stream events"), "{e}");
        let e = follow_objective(&mut d, "o", 0, &[], &mut Silent)
            .await
            .err();
        let e = e.unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("upgrade orchd"), "{e}");
    }

    #[tokio::test]
    async fn wait_follows_the_stream_to_the_end() {
        use ObjectiveState::*;
        let events = vec![
            state_event(1, Running),
            step_event(2, "s"),
            state_event(3, Cancelled),
        ];
        let mut d = Scripted::replaying(events, true, vec![Cancelled]);
        let end = wait(&mut d, "o").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end.state, Cancelled as i32);
        assert_eq!(
            d.kinds(),
            vec![vec!["objective_state".to_string()]],
            "--wait asks only for objective_state"
        );
        assert_eq!(exit_for(&end).err().map(|e| e.exit_code()), Some(1));
    }

    /// Records every event and wants them all.
    #[derive(Default)]
    struct Everything(Vec<u64>, Option<i32>);

    impl EventView for Everything {
        fn show(&mut self, event: &Event) -> Result<()> {
            self.0.push(event.seq);
            Ok(())
        }
        fn wants_every_kind(&self) -> bool {
            true
        }
        fn finish(&mut self, end: Option<&Objective>) -> Result<()> {
            self.1 = end.map(|o| o.state);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_view_that_wants_every_kind_gets_every_kind() {
        use ObjectiveState::*;
        let events = vec![
            state_event(1, Running),
            step_event(2, "s"),
            state_event(3, Succeeded),
        ];
        let mut d = Scripted::replaying(events, true, vec![Succeeded]);
        let mut view = Everything::default();
        let kinds = vec!["attempt_ended".to_string()];
        let end = follow_objective(&mut d, "o", 0, &kinds, &mut view).await;
        let end = end.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(view.0, vec![1, 2, 3]);
        assert_eq!(view.1, Some(Succeeded as i32), "finish gets the end");
        assert_eq!(d.kinds(), vec![Vec::<String>::new()]);
        assert!(exit_for(&end).is_ok());
    }

    #[tokio::test]
    async fn a_lost_connection_is_resumed_after_the_last_event() {
        use ObjectiveState::*;
        // The connection breaks after two events (e.g. orchd restarts); the stream opened
        // again replays the history, and only what follows the last event seen is shown.
        let first = open_stream(vec![
            Ok(state_event(1, Running)),
            Ok(step_event(2, "s")),
            Err(Status::unavailable("transport error")),
        ]);
        let again = Watch::Stream {
            items: vec![
                Ok(state_event(1, Running)),
                Ok(step_event(2, "s")),
                Ok(state_event(3, Succeeded)),
            ],
            close: true,
        };
        let mut d = Scripted::new(vec![first, again], vec![Ok(Succeeded)]);
        let mut seen = Recorder::default();
        let end = follow_objective(&mut d, "o", 0, &[], &mut seen).await;
        let end = end.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end.state, Succeeded as i32);
        assert_eq!(seen.0, vec![1, 2, 3], "nothing shown twice, nothing missed");
        assert_eq!((d.reconnects, d.requests.len()), (1, 2));
    }

    #[tokio::test]
    async fn a_connection_that_stays_lost_is_an_error() {
        use ObjectiveState::*;
        let items = vec![
            Ok(state_event(1, Running)),
            Err(Status::unavailable("transport error")),
        ];
        // orchd stays down: no fresh connection, and GetObjective on the old one fails.
        let down = Err(Status::unavailable("connection refused"));
        let mut d = Scripted::new(vec![open_stream(items)], vec![down]);
        d.refuse_reconnect = true;
        let e = follow_objective(&mut d, "o", 0, &[], &mut Silent).await;
        let e = e.err().unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1, "it was reached before: not exit 3");
        // A stream yields its error once and then ends (as tonic's does), so by the
        // deadline what is reported is the ended stream.
        assert_eq!(
            e.to_string(),
            "watching o: the event stream ended before the objective did (did orchd stop?)"
        );
        assert!(d.reconnects > 1, "it kept trying");
        assert_eq!(d.requests.len(), 1);
    }

    #[tokio::test]
    async fn a_refusal_mid_stream_is_an_error_at_once() {
        use ObjectiveState::*;
        // An error that is the daemon's answer, not a lost connection: no reconnecting.
        let items = vec![
            Ok(state_event(1, Running)),
            Err(Status::permission_denied("not your objective")),
        ];
        let mut d = Scripted::new(vec![open_stream(items)], vec![]);
        let mut seen = Recorder::default();
        let e = follow_objective(&mut d, "o", 0, &[], &mut seen).await;
        let e = e.err().unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "not your objective");
        assert_eq!(seen.0, vec![1]);
        assert_eq!((d.reconnects, d.requests.len()), (0, 1));
    }

    #[tokio::test]
    async fn an_unknown_objective_is_refused() {
        let refused = Watch::Refused(Status::not_found("no objective o"));
        let mut d = Scripted::new(vec![refused], vec![]);
        let e = wait(&mut d, "o").await.err();
        let e = e.unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "no objective o");
        let e = follow_objective(&mut d, "o", 0, &[], &mut Silent).await;
        assert_eq!(e.err().map(|e| e.exit_code()), Some(1));
        assert_eq!(d.reconnects, 0);
    }

    #[tokio::test]
    async fn an_objective_gone_when_the_stream_closes_is_an_error() {
        use ObjectiveState::*;
        // Removed while being watched: GetObjective after the close says NOT_FOUND.
        let events = vec![Ok(state_event(1, Running))];
        let stream = Watch::Stream {
            items: events,
            close: true,
        };
        let gone = Err(Status::not_found("no objective o"));
        let mut d = Scripted::new(vec![stream], vec![gone]);
        let e = follow_objective(&mut d, "o", 0, &[], &mut Silent).await;
        let e = e.err().unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "no objective o");
        assert_eq!(d.reconnects, 0);
    }

    #[tokio::test]
    async fn an_unreachable_daemon_exits_3() {
        let down = Watch::Refused(Status::unavailable("connection refused"));
        let mut d = Scripted::new(vec![down], vec![]);
        let e = wait(&mut d, "o").await.err();
        let e = e.unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().starts_with("cannot reach orchd at"), "{e}");
    }

    #[tokio::test]
    async fn watching_every_objective_shows_all_until_the_stream_closes() {
        use ObjectiveState::*;
        let events = vec![state_event(4, Running), step_event(5, "s")];
        let mut d = Scripted::replaying(events, true, vec![]);
        let mut seen = Everything::default();
        let request = WatchRequest::default();
        let r = follow_all(&mut d, request, &mut seen).await;
        r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen.0, vec![4, 5]);
        assert_eq!(seen.1, None, "finish without an objective");
        assert_eq!(d.requests.len(), 1);
    }

    #[tokio::test]
    async fn watching_every_objective_stops_at_a_broken_stream() {
        use ObjectiveState::*;
        let items = vec![
            Ok(state_event(4, Running)),
            Err(Status::unavailable("transport error")),
        ];
        let mut d = Scripted::new(vec![open_stream(items)], vec![]);
        let mut seen = Recorder::default();
        let r = follow_all(&mut d, WatchRequest::default(), &mut seen).await;
        let e = r.err().unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "transport error");
        assert_eq!(seen.0, vec![4]);
        assert_eq!(d.reconnects, 0, "nothing to resume without an objective");
    }

    #[tokio::test]
    async fn watching_every_objective_without_watch_is_a_clean_error() {
        let mut d = Scripted::without_watch(vec![]);
        let r = follow_all(&mut d, WatchRequest::default(), &mut Silent).await;
        let e = r.err().unwrap_or_else(|| panic!("must fail"));
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("cannot stream events"), "{e}");
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
