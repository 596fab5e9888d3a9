//! `orchctl top`: a full-screen live dashboard (ratatui over crossterm). It is driven by
//! the daemon's event stream: an event re-reads the objective it is about (and, once per
//! tick, the daemon's figures); nothing is re-read on a timer but the daemon's host and
//! slot figures every few seconds. A one-second tick redraws ages and samples the CPU and
//! memory of running attempts from /proc (sysinfo; the daemon runs on this machine).
//! Keys act on the selected row; long calls (cancel waits for the trees to be gone) run
//! in tasks, their results shown in the bottom line.

mod model;
mod view;

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::Duration;

use orch_proto::v1::orchestrator_client::OrchestratorClient;
use orch_proto::v1::{
    ApproveRequest, DaemonStatusRequest, Event, GetObjectiveRequest, GetUsageRequest,
    ListObjectivesRequest, ObjectiveRef, StreamLogsRequest, WatchRequest,
};
use ratatui::crossterm::event::{
    self as term, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::cli::TopArgs;
use crate::client::Client;
use crate::error::{CtlError, Result};
use model::{Ask, Dash, Mode, Row};

type Api = OrchestratorClient<Channel>;

/// Objectives listed at start (the newest).
const LIST_LIMIT: u32 = 200;
/// How often the daemon's own figures (slots, host memory, budget) are re-read without events.
const DAEMON_EVERY: Duration = Duration::from_secs(5);
/// Lines of log shown by `l`.
const LOG_TAIL: u64 = 500;

/// Runs the dashboard until `q`.
pub async fn run(args: TopArgs, client: &mut Client) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        return Err(CtlError::Usage(
            "orchctl top needs a terminal; use `orchctl list`, `orchctl status ID` or `orchctl watch` in scripts".into(),
        ));
    }
    let mut api = client.api.clone();
    // Where the event stream starts: just after what the first reads below will see.
    let d = client.check(api.daemon_status(DaemonStatusRequest {}).await)?;
    let from_seq = d.last_event_seq + 1;
    let mut dash = Dash::new(args.all);
    dash.daemon = Some(d);
    load_all(&mut api, &mut dash).await?;
    let stream = client.check(
        api.watch(WatchRequest {
            objective_id: String::new(),
            from_seq: Some(from_seq),
            kinds: Vec::new(),
        })
        .await,
    )?;
    let mut terminal = ratatui::try_init().map_err(|e| CtlError::io("opening the terminal", e))?;
    let result = run_loop(&mut terminal, api, dash, stream).await;
    ratatui::restore();
    result
}

/// What a key asks of the loop.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    Quit,
    /// Read everything again (and reconnect the event stream if it ended).
    Reload,
}

/// What the background tasks tell the loop.
enum Note {
    Key(TermEvent),
    Done(String),
    /// A step's last lines; `open` when asked for by `l` (else a re-read of the page shown).
    Logs {
        id: String,
        step: String,
        text: String,
        open: bool,
    },
}

async fn run_loop(
    terminal: &mut ratatui::DefaultTerminal,
    mut api: Api,
    mut dash: Dash,
    mut stream: tonic::Streaming<Event>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_keys(tx.clone());
    let mut sampler = Sampler::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut daemon_due = tokio::time::Instant::now() + DAEMON_EVERY;
    let mut stream_open = true;
    let mut last_seq = 0;
    loop {
        dash.now_ms = chrono::Utc::now().timestamp_millis();
        terminal
            .draw(|f| view::draw(f, &dash))
            .map_err(|e| CtlError::io("drawing", e))?;
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut daemon_dirty = false;
        let mut reload = false;
        tokio::select! {
            note = rx.recv() => match note {
                Some(Note::Key(ev)) => match on_key(ev, &mut dash, &api, &tx) {
                    Flow::Quit => return Ok(()),
                    Flow::Reload => reload = true,
                    Flow::Go => {}
                },
                Some(Note::Done(text)) => dash.message = text,
                Some(Note::Logs { id, step, text, open }) => {
                    let bottom = (text.lines().count() as u16).saturating_sub(10);
                    match &mut dash.mode {
                        // A re-read of the page shown: follow the end if it was there.
                        Mode::Logs { id: i, step: s, text: t, scroll }
                            if *i == id && *s == step =>
                        {
                            let was_bottom = *scroll >= (t.lines().count() as u16).saturating_sub(10);
                            *t = text;
                            if was_bottom {
                                *scroll = bottom;
                            }
                        }
                        // Asked for from the list; a re-read that comes after leaving the
                        // page is dropped.
                        Mode::List if open => {
                            dash.message.clear();
                            dash.mode = Mode::Logs { id, step, text, scroll: bottom }
                        }
                        _ => {}
                    }
                }
                None => return Ok(()),
            },
            ev = stream.message(), if stream_open => match ev {
                Ok(Some(e)) => {
                    last_seq = e.seq;
                    dirty.insert(e.objective_id);
                    daemon_dirty = true;
                    // Take whatever else already arrived into the same redraw.
                    while let Some(Ok(Some(e))) = futures_now(&mut stream).await {
                        last_seq = e.seq;
                        dirty.insert(e.objective_id);
                    }
                }
                Ok(None) | Err(_) => {
                    stream_open = false;
                    dash.message = "the event stream ended; r reconnects".into();
                }
            },
            _ = tick.tick() => {
                sampler.sample(&mut dash);
                if tokio::time::Instant::now() >= daemon_due {
                    daemon_dirty = true;
                }
            }
        }
        if reload && stream_open {
            if let Err(e) = load_all(&mut api, &mut dash).await {
                dash.message = e.to_string();
            }
        } else if reload {
            match api
                .watch(WatchRequest {
                    objective_id: String::new(),
                    from_seq: Some(last_seq + 1),
                    kinds: Vec::new(),
                })
                .await
            {
                Ok(s) => {
                    stream = s.into_inner();
                    stream_open = true;
                    dash.message = "reconnected".into();
                    if let Err(e) = load_all(&mut api, &mut dash).await {
                        dash.message = e.to_string();
                    }
                }
                Err(e) => dash.message = format!("cannot reconnect: {}", e.message()),
            }
        }
        let before = dash.selected_row();
        let refreshed = dirty.clone();
        for id in dirty {
            if id.is_empty() {
                continue;
            }
            match api
                .get_objective(GetObjectiveRequest { id: id.clone() })
                .await
            {
                Ok(o) => {
                    dash.objectives.insert(id, o.into_inner());
                }
                Err(e) if e.code() == tonic::Code::NotFound => {
                    dash.objectives.remove(&id);
                }
                Err(e) => dash.message = format!("cannot read {id}: {}", e.message()),
            }
        }
        keep_selection(&mut dash, before);
        // The logs shown follow their objective's events (new output comes with them:
        // progress, usage, the attempt's end).
        if let Mode::Logs { id, step, .. } = &dash.mode
            && refreshed.contains(id)
        {
            read_logs(&api, &tx, id.clone(), step.clone(), false);
        }
        if daemon_dirty {
            refresh_daemon(&mut api, &mut dash).await;
            daemon_due = tokio::time::Instant::now() + DAEMON_EVERY;
        }
    }
}

/// The next message of the stream if one is already there, without waiting.
async fn futures_now(
    stream: &mut tonic::Streaming<Event>,
) -> Option<std::result::Result<Option<Event>, tonic::Status>> {
    tokio::time::timeout(Duration::ZERO, stream.message())
        .await
        .ok()
}

/// After the rows changed: the same row stays selected when it is still there.
fn keep_selection(dash: &mut Dash, before: Option<Row>) {
    if let Some(row) = before
        && let Some(i) = dash.rows().iter().position(|r| *r == row)
    {
        dash.selected = i;
    }
    dash.clamp_selection();
}

/// Reads the objectives to show: every one that has not ended and the newest that have.
async fn load_all(api: &mut Api, dash: &mut Dash) -> Result<()> {
    let list = api
        .list_objectives(ListObjectivesRequest {
            state: None,
            limit: LIST_LIMIT,
        })
        .await
        .map_err(|e| CtlError::Failed(format!("cannot list objectives: {}", e.message())))?
        .into_inner()
        .objectives;
    let mut ended_seen = 0;
    for s in list {
        let ended = matches!(s.state, 5..=7);
        if ended {
            ended_seen += 1;
            if !dash.all && ended_seen > model::RECENT_ENDED {
                continue;
            }
        }
        if let Ok(o) = api
            .get_objective(GetObjectiveRequest { id: s.id.clone() })
            .await
        {
            dash.objectives.insert(s.id, o.into_inner());
        }
    }
    refresh_daemon(api, dash).await;
    dash.clamp_selection();
    Ok(())
}

async fn refresh_daemon(api: &mut Api, dash: &mut Dash) {
    if let Ok(d) = api.daemon_status(DaemonStatusRequest {}).await {
        dash.daemon = Some(d.into_inner());
    }
    if let Ok(u) = api
        .get_usage(GetUsageRequest {
            objective_id: String::new(),
        })
        .await
    {
        dash.usage = Some(u.into_inner());
    }
}

/// Reads keys (and resizes) on a thread of its own: crossterm's reads block.
fn spawn_keys(tx: mpsc::UnboundedSender<Note>) {
    std::thread::spawn(move || {
        while let Ok(ev) = term::read() {
            if tx.send(Note::Key(ev)).is_err() {
                break;
            }
        }
    });
}

/// Handles one key.
fn on_key(ev: TermEvent, dash: &mut Dash, api: &Api, tx: &mpsc::UnboundedSender<Note>) -> Flow {
    let TermEvent::Key(key) = ev else {
        // A resize: the next draw fits the new size.
        return Flow::Go;
    };
    if key.kind != KeyEventKind::Press {
        return Flow::Go;
    }
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Flow::Quit;
    }
    dash.message.clear();
    match std::mem::replace(&mut dash.mode, Mode::List) {
        Mode::Confirm(ask) => {
            if matches!(key.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                act(api, tx, ask);
            } else {
                dash.message = "nothing done".into();
            }
        }
        Mode::Details { id, scroll } => {
            dash.mode = page_key(key.code, Mode::Details { id, scroll });
        }
        Mode::Logs {
            id,
            step,
            text,
            scroll,
        } => {
            if key.code == KeyCode::Char('r') {
                read_logs(api, tx, id.clone(), step.clone(), false);
            }
            dash.mode = page_key(
                key.code,
                Mode::Logs {
                    id,
                    step,
                    text,
                    scroll,
                },
            );
        }
        Mode::List => return list_key(key.code, dash, api, tx),
    }
    Flow::Go
}

/// Scrolling and leaving a details or logs page.
fn page_key(code: KeyCode, mut mode: Mode) -> Mode {
    let (Mode::Details { scroll, .. } | Mode::Logs { scroll, .. }) = &mut mode else {
        return mode;
    };
    match code {
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace | KeyCode::Left => Mode::List,
        KeyCode::Up | KeyCode::Char('k') => {
            *scroll = scroll.saturating_sub(1);
            mode
        }
        KeyCode::Down | KeyCode::Char('j') => {
            *scroll = scroll.saturating_add(1);
            mode
        }
        KeyCode::PageUp => {
            *scroll = scroll.saturating_sub(20);
            mode
        }
        KeyCode::PageDown | KeyCode::Char(' ') => {
            *scroll = scroll.saturating_add(20);
            mode
        }
        KeyCode::Home | KeyCode::Char('g') => {
            *scroll = 0;
            mode
        }
        _ => mode,
    }
}

fn list_key(code: KeyCode, dash: &mut Dash, api: &Api, tx: &mpsc::UnboundedSender<Note>) -> Flow {
    let target = dash.target().map(|(o, i)| {
        let step = i
            .and_then(|i| o.steps.get(i))
            .map(|s| s.id.clone())
            .or_else(|| o.steps.last().map(|s| s.id.clone()));
        (o.id.clone(), step)
    });
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return Flow::Quit,
        KeyCode::Up | KeyCode::Char('k') => dash.select_by(-1),
        KeyCode::Down | KeyCode::Char('j') => dash.select_by(1),
        KeyCode::PageUp => dash.select_by(-10),
        KeyCode::PageDown => dash.select_by(10),
        KeyCode::Home | KeyCode::Char('g') => dash.select_by(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => dash.select_by(isize::MAX / 2),
        KeyCode::Char('r') => return Flow::Reload,
        _ => {
            let Some((id, step)) = target else {
                dash.message = "select an objective first".into();
                return Flow::Go;
            };
            match code {
                KeyCode::Enter | KeyCode::Char('d') | KeyCode::Right => {
                    dash.mode = Mode::Details { id, scroll: 0 }
                }
                KeyCode::Char('l') => match step {
                    Some(step) => {
                        dash.message = format!("reading the logs of {step}…");
                        read_logs(api, tx, id, step, true);
                    }
                    None => dash.message = "this objective has no steps".into(),
                },
                KeyCode::Char('c') => dash.mode = Mode::Confirm(Ask::Cancel(id)),
                KeyCode::Char('p') => {
                    let resume = dash.selected_paused();
                    let api = api.clone();
                    spawn_call(tx, async move {
                        let mut api = api;
                        let r = if resume {
                            api.resume(ObjectiveRef { id: id.clone() }).await
                        } else {
                            api.pause(ObjectiveRef { id: id.clone() }).await
                        };
                        let verb = if resume { "resumed" } else { "paused" };
                        r.map(|_| format!("{verb} {id}"))
                    });
                }
                KeyCode::Char('a') => match dash.awaiting_step() {
                    Some((id, step)) => {
                        let api = api.clone();
                        spawn_call(tx, async move {
                            let mut api = api;
                            let request = ApproveRequest {
                                id: id.clone(),
                                step_id: step.clone(),
                                approve: true,
                                reason: String::new(),
                            };
                            api.approve(request).await.map(|_| {
                                format!("approved {step} of {id}: it starts when a slot is free")
                            })
                        });
                    }
                    None => dash.message = "no step of this objective waits for approval".into(),
                },
                KeyCode::Char('x') => match dash.awaiting_step() {
                    Some((id, step)) => dash.mode = Mode::Confirm(Ask::Deny(id, step)),
                    None => dash.message = "no step of this objective waits for approval".into(),
                },
                KeyCode::Char('?') | KeyCode::Char('h') => dash.message = view::LIST_KEYS.into(),
                _ => {}
            }
        }
    }
    Flow::Go
}

/// Runs a confirmed action.
fn act(api: &Api, tx: &mpsc::UnboundedSender<Note>, ask: Ask) {
    let mut api = api.clone();
    match ask {
        Ask::Cancel(id) => spawn_call(tx, async move {
            api.cancel(ObjectiveRef { id: id.clone() })
                .await
                .map(|_| format!("cancelled {id}"))
        }),
        Ask::Deny(id, step) => spawn_call(tx, async move {
            let request = ApproveRequest {
                id: id.clone(),
                step_id: step.clone(),
                approve: false,
                reason: "denied in orchctl top".into(),
            };
            api.approve(request)
                .await
                .map(|_| format!("denied {step} of {id}"))
        }),
    }
}

/// Runs a call in a task; its result (or the daemon's refusal) goes to the bottom line.
fn spawn_call<F>(tx: &mpsc::UnboundedSender<Note>, call: F)
where
    F: std::future::Future<Output = std::result::Result<String, tonic::Status>> + Send + 'static,
{
    let tx = tx.clone();
    tokio::spawn(async move {
        let text = match call.await {
            Ok(t) => t,
            Err(e) => format!("refused: {}", e.message()),
        };
        let _ = tx.send(Note::Done(text));
    });
}

/// Reads the last lines of a step's latest attempt, then shows them (`open`) or refreshes
/// the page that shows them.
fn read_logs(api: &Api, tx: &mpsc::UnboundedSender<Note>, id: String, step: String, open: bool) {
    let mut api = api.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let request = StreamLogsRequest {
            id: id.clone(),
            step_id: step.clone(),
            attempt: 0,
            follow: false,
            tail_lines: LOG_TAIL,
            streams: Vec::new(),
        };
        let mut data = Vec::new();
        let note = match api.stream_logs(request).await {
            Ok(r) => {
                let mut s = r.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(chunk)) => data.extend_from_slice(&chunk.data),
                        Ok(None) => break,
                        Err(e) => {
                            data.extend_from_slice(format!("\n[{}]\n", e.message()).as_bytes());
                            break;
                        }
                    }
                }
                let mut text = String::from_utf8_lossy(&data).into_owned();
                if text.is_empty() {
                    text = "(no output yet)".into();
                }
                Note::Logs {
                    id,
                    step,
                    text,
                    open,
                }
            }
            Err(e) => Note::Done(format!("cannot read the logs: {}", e.message())),
        };
        let _ = tx.send(note);
    });
}

/// Samples the CPU and memory of running attempts: each attempt runs in a session of its
/// own (its main process is the session leader), so the session's processes are its tree.
#[derive(Default)]
struct Sampler {
    sys: Option<sysinfo::System>,
}

impl Sampler {
    fn sample(&mut self, dash: &mut Dash) {
        let pids = dash.running_pids();
        if pids.is_empty() {
            dash.procs.clear();
            return;
        }
        let sys = self.sys.get_or_insert_with(sysinfo::System::new);
        sys.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::All,
            true,
            sysinfo::ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory(),
        );
        dash.procs.clear();
        for (pid, p) in sys.processes() {
            let session = p.session_id().map(|s| s.as_u32());
            let owner = match session {
                Some(s) if pids.contains(&s) => s,
                _ if pids.contains(&pid.as_u32()) => pid.as_u32(),
                _ => continue,
            };
            let f = dash.procs.entry(owner).or_default();
            f.cpu_percent += p.cpu_usage();
            f.rss_bytes += p.memory();
        }
    }
}
