//! The live view of `orchctl watch ID` and `submit --watch` on a terminal: one line per
//! step (state, attempt, elapsed time, cost, progress percent and message) redrawn in
//! place as events arrive, notable events printed above it, and a summary at the end.
//!
//! [`Board`] is the model (an objective's steps as the events leave them, no I/O);
//! [`LiveView`] draws it with indicatif.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use orch_proto::v1::{Event, Objective, ObjectiveState, Outcome, Step, StepState, event::Payload};
use orch_proto::words;

use crate::error::{CtlError, Result};
use crate::output::{cost, truncate};
use crate::views;
use crate::watch::{EventView, is_terminal};

/// The events printed above the live lines when `--kinds` is not given: the ones a person
/// wants in the scroll-back (the rest only update the lines).
pub const DEFAULT_LOG_KINDS: [&str; 7] = [
    "objective_state",
    "attempt_started",
    "attempt_ended",
    "retry_scheduled",
    "budget_alert",
    "approval_requested",
    "approval_answered",
];

/// How often the live lines are redrawn without events (spinner, elapsed times).
pub const TICK: Duration = Duration::from_millis(200);

/// The longest step id shown in full.
const ID_WIDTH_MAX: usize = 24;
/// Width of the text progress bar, in cells.
const BAR_CELLS: usize = 20;
/// Spinner frames of running steps.
const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// Milliseconds since the Unix epoch.
type Ms = i64;

fn now_ms() -> Ms {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Ms)
        .unwrap_or(0)
}

/// A timestamp in milliseconds since the epoch; `None` when unset.
fn ms(ts: Option<&prost_types::Timestamp>) -> Option<Ms> {
    let t = ts?;
    if t.seconds == 0 && t.nanos == 0 {
        return None;
    }
    Some(t.seconds.saturating_mul(1000) + Ms::from(t.nanos.max(0) / 1_000_000))
}

/// A compact duration: `850ms`, `12s`, `1m03s`, `2h05m`.
pub fn compact_duration(ms: Ms) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn step_state_of(v: i32) -> StepState {
    StepState::try_from(v).unwrap_or(StepState::Unspecified)
}

/// One step as the events left it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub id: String,
    pub state: i32,
    /// The current (or last) attempt's number; 0 before the first.
    pub attempt: u32,
    pub started: Option<Ms>,
    pub ended: Option<Ms>,
    /// The last ended attempt's outcome.
    pub outcome: Option<i32>,
    pub percent: Option<f64>,
    pub message: String,
    pub cost_usd: f64,
    /// When in backoff: when the next attempt is due.
    pub due: Option<Ms>,
    /// The last step-state message (e.g. why it failed).
    pub note: String,
}

impl Row {
    fn from_step(s: &Step) -> Row {
        let last = s.attempts.last();
        let progress = s.progress.clone().unwrap_or_default();
        Row {
            id: s.id.clone(),
            state: s.state,
            attempt: last.map(|a| a.number).unwrap_or(0),
            started: last.and_then(|a| ms(a.started_at.as_ref())),
            ended: last.and_then(|a| ms(a.ended_at.as_ref())),
            outcome: last
                .map(|a| a.outcome)
                .filter(|o| *o != Outcome::Unspecified as i32),
            percent: progress.percent,
            message: progress.message,
            cost_usd: s.usage.map(|u| u.cost_usd).unwrap_or(0.0),
            due: ms(s.next_attempt_at.as_ref()),
            note: s.message.clone(),
        }
    }

    /// Time spent in the current (or last) attempt, up to `now` while it runs.
    pub fn elapsed(&self, now: Ms) -> Option<Ms> {
        let start = self.started?;
        Some(self.ended.unwrap_or(now) - start)
    }
}

/// An objective's steps as the events leave them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Board {
    pub id: String,
    pub name: String,
    pub state: i32,
    pub message: String,
    pub created: Option<Ms>,
    pub ended: Option<Ms>,
    pub cost_usd: f64,
    pub rows: Vec<Row>,
}

impl Board {
    /// The board of an objective as `GetObjective` returned it.
    pub fn from_objective(o: &Objective) -> Board {
        Board {
            id: o.id.clone(),
            name: o.name.clone(),
            state: o.state,
            message: o.message.clone(),
            created: ms(o.created_at.as_ref()),
            ended: if is_terminal(o.state) {
                ms(o.updated_at.as_ref())
            } else {
                None
            },
            cost_usd: o.usage.map(|u| u.cost_usd).unwrap_or(0.0),
            rows: o.steps.iter().map(Row::from_step).collect(),
        }
    }

    fn row(&mut self, step_id: &str) -> Option<&mut Row> {
        if step_id.is_empty() {
            return None;
        }
        let i = match self.rows.iter().position(|r| r.id == step_id) {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    id: step_id.to_string(),
                    state: StepState::Waiting as i32,
                    ..Default::default()
                });
                self.rows.len() - 1
            }
        };
        self.rows.get_mut(i)
    }

    /// Applies one event of this objective (others are ignored).
    pub fn apply(&mut self, e: &Event) {
        if !self.id.is_empty() && e.objective_id != self.id {
            return;
        }
        let Some(p) = &e.payload else { return };
        let at = ms(e.time.as_ref());
        match p {
            Payload::ObjectiveSubmitted(x) => {
                self.name = x.name.clone();
                self.created = self.created.or(at);
            }
            Payload::ObjectiveState(x) => {
                self.state = x.state;
                self.message = x.message.clone();
                self.ended = if is_terminal(x.state) { at } else { None };
            }
            Payload::StepState(x) => {
                if let Some(r) = self.row(&e.step_id) {
                    r.state = x.state;
                    r.note = x.message.clone();
                    if x.state != StepState::Backoff as i32 {
                        r.due = None;
                    }
                }
            }
            Payload::AttemptStarted(_) => {
                if let Some(r) = self.row(&e.step_id) {
                    r.attempt = e.attempt;
                    r.started = at;
                    r.ended = None;
                    r.outcome = None;
                    r.percent = None;
                    r.message.clear();
                    r.due = None;
                    r.state = StepState::Running as i32;
                }
            }
            Payload::AttemptEnded(x) => {
                if let Some(r) = self.row(&e.step_id) {
                    r.attempt = r.attempt.max(e.attempt);
                    r.ended = at;
                    r.outcome = Some(x.outcome);
                }
            }
            Payload::RetryScheduled(x) => {
                if let Some(r) = self.row(&e.step_id) {
                    r.due = ms(x.due_at.as_ref());
                }
            }
            Payload::Progress(x) => {
                if let Some(r) = self.row(&e.step_id) {
                    if x.percent.is_some() {
                        r.percent = x.percent;
                    }
                    r.message = x.message.clone();
                }
            }
            Payload::Usage(x) => {
                if let Some(t) = &x.objective_total {
                    self.cost_usd = t.cost_usd;
                }
                if let (Some(t), Some(r)) = (x.step_total, self.row(&e.step_id)) {
                    r.cost_usd = t.cost_usd;
                }
            }
            Payload::Checkpoint(_)
            | Payload::BudgetAlert(_)
            | Payload::ApprovalRequested(_)
            | Payload::ApprovalAnswered(_)
            | Payload::ObjectiveRemoved(_)
            | Payload::AgentRouted(_)
            | Payload::AgentSwitched(_)
            | Payload::RoundStarted(_)
            | Payload::PlanProposed(_)
            | Payload::PlanAccepted(_)
            | Payload::Verdict(_) => {}
        }
    }

    /// Steps that succeeded.
    pub fn succeeded(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.state == StepState::Succeeded as i32)
            .count()
    }

    fn elapsed(&self, now: Ms) -> Option<Ms> {
        Some(self.ended.unwrap_or(now) - self.created?)
    }

    /// The first line: id, name, state, steps done, elapsed time and cost.
    pub fn header(&self, now: Ms) -> String {
        let state = words::objective_state(
            ObjectiveState::try_from(self.state).unwrap_or(ObjectiveState::Unspecified),
        );
        let mut line = format!(
            "{}  {}  {}  {}/{} steps",
            self.id,
            truncate(&self.name, 40),
            state,
            self.succeeded(),
            self.rows.len()
        );
        if let Some(el) = self.elapsed(now) {
            line.push_str(&format!("  {}", compact_duration(el)));
        }
        line.push_str(&format!("  {}", cost(self.cost_usd)));
        line
    }

    /// Width of the step-id column.
    pub fn id_width(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.id.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(4, ID_WIDTH_MAX)
    }

    /// One step's line; `frame` picks the spinner frame of running steps.
    pub fn line(&self, row: &Row, now: Ms, frame: usize) -> String {
        let state = step_state_of(row.state);
        let marker = match state {
            StepState::Running => SPINNER[frame % SPINNER.len()],
            StepState::Succeeded => "✓",
            StepState::Failed => "✗",
            StepState::Cancelled => "⊘",
            StepState::Skipped => "-",
            StepState::Backoff => "↻",
            StepState::Paused => "‖",
            StepState::AwaitingApproval => "?",
            _ => "·",
        };
        let attempt = if row.attempt > 0 {
            format!("#{}", row.attempt)
        } else {
            "-".into()
        };
        let elapsed = row
            .elapsed(now)
            .map(compact_duration)
            .unwrap_or_else(|| "-".into());
        let id = truncate(&row.id, ID_WIDTH_MAX);
        let width = self.id_width();
        let mut line = format!(
            "{marker} {id:<width$}  {:<10} {attempt:>4}  {elapsed:>7}  {:>8}",
            words::step_state(state),
            cost(row.cost_usd),
        );
        let detail = self.detail(row, now);
        if !detail.is_empty() {
            line.push_str("  ");
            line.push_str(&detail);
        }
        line.trim_end().to_string()
    }

    /// What a step line ends with: progress, the retry due time, or why it ended.
    fn detail(&self, row: &Row, now: Ms) -> String {
        let state = step_state_of(row.state);
        match state {
            StepState::Backoff => match row.due {
                Some(due) => format!("next attempt in {}", compact_duration(due - now)),
                None => row.note.clone(),
            },
            StepState::Running | StepState::Paused | StepState::Succeeded => {
                let mut s = String::new();
                if let Some(p) = row.percent {
                    let filled = ((p.clamp(0.0, 100.0) / 100.0) * BAR_CELLS as f64).round();
                    let filled = filled as usize;
                    s.push_str(&format!(
                        "[{}{}] {p:>3.0}%",
                        "#".repeat(filled),
                        "-".repeat(BAR_CELLS - filled)
                    ));
                }
                if !row.message.is_empty() {
                    if !s.is_empty() {
                        s.push(' ');
                    }
                    s.push_str(&row.message.replace(['\n', '\r'], " "));
                }
                if s.is_empty() && state == StepState::Paused {
                    s = row.note.clone();
                }
                s
            }
            StepState::Failed | StepState::Cancelled | StepState::Skipped => {
                let outcome = row
                    .outcome
                    .map(|o| words::outcome(Outcome::try_from(o).unwrap_or(Outcome::Unspecified)))
                    .unwrap_or_default();
                match (outcome.is_empty(), row.note.is_empty()) {
                    (false, false) => format!("{outcome}: {}", row.note),
                    (false, true) => outcome,
                    (true, _) => row.note.clone(),
                }
            }
            _ => row.note.clone(),
        }
    }

    /// The closing line: how the objective ended, how long it took, steps and cost.
    pub fn summary(&self, now: Ms) -> String {
        let state = words::objective_state(
            ObjectiveState::try_from(self.state).unwrap_or(ObjectiveState::Unspecified),
        );
        let took = self
            .elapsed(now)
            .map(|ms| format!(" after {}", compact_duration(ms)))
            .unwrap_or_default();
        let mut line = format!(
            "objective {} {state}{took}: {}/{} steps succeeded, cost {}",
            self.id,
            self.succeeded(),
            self.rows.len(),
            cost(self.cost_usd)
        );
        if !self.message.is_empty() {
            line.push_str(&format!(" ({})", self.message));
        }
        line
    }
}

/// The live, in-place view (see the module doc).
pub struct LiveView {
    board: Board,
    multi: MultiProgress,
    header: ProgressBar,
    bars: Vec<ProgressBar>,
    /// Event kinds printed above the live lines.
    log_kinds: Vec<String>,
    frame: usize,
    finished: bool,
}

fn line_style() -> ProgressStyle {
    // `wide_msg` cuts lines at the terminal's width, so nothing wraps and redraws stay in place.
    ProgressStyle::with_template("{wide_msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn draw_error(e: std::io::Error) -> CtlError {
    CtlError::io("drawing the live view", e)
}

impl LiveView {
    /// A live view of `objective` (its state when watching began) drawn on `target`;
    /// `log_kinds` are printed above the lines (empty: [`DEFAULT_LOG_KINDS`]).
    pub fn new(objective: &Objective, log_kinds: &[String], target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(ProgressBar::new_spinner().with_style(line_style()));
        let log_kinds = if log_kinds.is_empty() {
            DEFAULT_LOG_KINDS.iter().map(|k| k.to_string()).collect()
        } else {
            log_kinds.to_vec()
        };
        let mut view = LiveView {
            board: Board::from_objective(objective),
            multi,
            header,
            bars: Vec::new(),
            log_kinds,
            frame: 0,
            finished: false,
        };
        view.redraw();
        view
    }

    /// The view on stdout.
    pub fn on_stdout(objective: &Objective, log_kinds: &[String]) -> Self {
        Self::new(objective, log_kinds, ProgressDrawTarget::stdout())
    }

    fn redraw(&mut self) {
        let now = now_ms();
        while self.bars.len() < self.board.rows.len() {
            let bar = self
                .multi
                .add(ProgressBar::new_spinner().with_style(line_style()));
            self.bars.push(bar);
        }
        self.header.set_message(self.board.header(now));
        for (row, bar) in self.board.rows.iter().zip(&self.bars) {
            bar.set_message(self.board.line(row, now, self.frame));
        }
    }
}

impl EventView for LiveView {
    fn show(&mut self, event: &Event) -> Result<()> {
        self.board.apply(event);
        let kind = crate::json::event_kind(event);
        if self.log_kinds.contains(&kind) {
            self.multi
                .println(views::event_line(event, false))
                .map_err(draw_error)?;
        }
        self.redraw();
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        self.frame = self.frame.wrapping_add(1);
        self.redraw();
        Ok(())
    }

    fn wants_every_kind(&self) -> bool {
        true
    }

    fn finish(&mut self, end: Option<&Objective>) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if let Some(o) = end {
            // What the daemon says at the end is the truth (events may have been filtered).
            self.board = Board::from_objective(o);
        }
        // The in-place lines go; the final state stays in the scroll-back.
        self.multi.clear().map_err(draw_error)?;
        for bar in &self.bars {
            bar.finish_and_clear();
        }
        self.header.finish_and_clear();
        let now = now_ms();
        let mut text = self.board.header(now);
        text.push('\n');
        for row in &self.board.rows {
            text.push_str(&self.board.line(row, now, 0));
            text.push('\n');
        }
        text.push_str(&self.board.summary(now));
        text.push('\n');
        crate::output::write_out(&text)
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        // An error path: leave no half-drawn lines behind.
        if !self.finished {
            let _ = self.multi.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{
        AttemptEnded, AttemptStarted, ObjectiveStateChanged, ProgressReported, RetryScheduled,
        StepStateChanged, Usage, UsageRecorded,
    };
    use std::sync::{Arc, Mutex};

    fn t(ms: Ms) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })
    }

    fn ev(seq: u64, time: Ms, step: &str, attempt: u32, payload: Payload) -> Event {
        Event {
            seq,
            time: t(time),
            objective_id: "O1".into(),
            step_id: step.into(),
            attempt,
            kind: String::new(),
            payload: Some(payload),
        }
    }

    fn objective() -> Objective {
        Objective {
            id: "O1".into(),
            name: "demo".into(),
            state: ObjectiveState::Pending as i32,
            created_at: t(1_000_000),
            steps: vec![
                Step {
                    id: "build".into(),
                    state: StepState::Ready as i32,
                    ..Default::default()
                },
                Step {
                    id: "test".into(),
                    state: StepState::Waiting as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn step_state(seq: u64, time: Ms, step: &str, s: StepState) -> Event {
        ev(
            seq,
            time,
            step,
            0,
            Payload::StepState(StepStateChanged {
                state: s as i32,
                message: String::new(),
            }),
        )
    }

    #[test]
    fn events_move_the_board() {
        let mut b = Board::from_objective(&objective());
        assert_eq!(b.rows.len(), 2);
        let started = Payload::AttemptStarted(AttemptStarted {
            pid: 7,
            agent: String::new(),
        });
        b.apply(&step_state(1, 1_000_100, "build", StepState::Running));
        b.apply(&ev(2, 1_000_100, "build", 1, started.clone()));
        b.apply(&ev(
            3,
            1_000_500,
            "build",
            1,
            Payload::Progress(ProgressReported {
                percent: Some(45.0),
                message: "compiling".into(),
            }),
        ));
        b.apply(&ev(
            4,
            1_000_600,
            "build",
            1,
            Payload::Usage(UsageRecorded {
                report: None,
                step_total: Some(Usage {
                    cost_usd: 0.25,
                    ..Default::default()
                }),
                objective_total: Some(Usage {
                    cost_usd: 0.25,
                    ..Default::default()
                }),
                model: String::new(),
            }),
        ));
        let r = b.rows[0].clone();
        assert_eq!(r.attempt, 1);
        assert_eq!(r.percent, Some(45.0));
        assert_eq!(r.elapsed(1_063_100), Some(63_000));
        let line = b.line(&r, 1_063_100, 0);
        assert!(line.starts_with("⠋ build"), "{line}");
        assert!(line.contains("running"), "{line}");
        assert!(line.contains("#1"), "{line}");
        assert!(line.contains("1m03s"), "{line}");
        assert!(line.contains("$0.2500"), "{line}");
        assert!(
            line.contains("[#########-----------]  45% compiling"),
            "{line}"
        );

        // A failed attempt, a retry, a second attempt that succeeds.
        b.apply(&ev(
            5,
            1_001_000,
            "build",
            1,
            Payload::AttemptEnded(AttemptEnded {
                outcome: Outcome::ExitFailure as i32,
                exit_code: Some(1),
                signal: None,
                message: String::new(),
            }),
        ));
        b.apply(&step_state(6, 1_001_000, "build", StepState::Backoff));
        b.apply(&ev(
            7,
            1_001_000,
            "build",
            1,
            Payload::RetryScheduled(RetryScheduled {
                delay_ms: 2000,
                due_at: t(1_003_000),
            }),
        ));
        let line = b.line(&b.rows[0], 1_001_000, 0);
        assert!(line.contains("next attempt in 2s"), "{line}");
        b.apply(&ev(8, 1_003_000, "build", 2, started));
        assert_eq!(b.rows[0].percent, None, "progress starts over");
        assert_eq!(b.rows[0].attempt, 2);
        b.apply(&step_state(9, 1_004_000, "build", StepState::Succeeded));
        b.apply(&ev(
            10,
            1_004_000,
            "build",
            2,
            Payload::AttemptEnded(AttemptEnded {
                outcome: Outcome::Success as i32,
                ..Default::default()
            }),
        ));
        let line = b.line(&b.rows[0], 9_999_999, 3);
        assert!(line.starts_with("✓ build"), "{line}");
        assert!(line.contains("#2"), "{line}");
        assert!(line.contains(" 1s"), "elapsed stops at the end: {line}");

        // A step the snapshot did not have gets a line.
        b.apply(&step_state(11, 1_004_000, "extra", StepState::Skipped));
        assert_eq!(b.rows.len(), 3);
        // Another objective's events are ignored.
        let mut other = step_state(12, 1_004_000, "build", StepState::Failed);
        other.objective_id = "O2".into();
        b.apply(&other);
        assert_eq!(b.rows[0].state, StepState::Succeeded as i32);

        b.apply(&ev(
            13,
            1_005_000,
            "",
            0,
            Payload::ObjectiveState(ObjectiveStateChanged {
                state: ObjectiveState::Failed as i32,
                message: "step `test` failed".into(),
            }),
        ));
        let s = b.summary(9_999_999);
        assert_eq!(
            s,
            "objective O1 failed after 5s: 1/3 steps succeeded, cost $0.2500 (step `test` failed)"
        );
        assert!(
            b.header(9_999_999)
                .contains("O1  demo  failed  1/3 steps  5s")
        );
    }

    #[test]
    fn failed_step_says_why() {
        let mut o = objective();
        o.steps[1].state = StepState::Failed as i32;
        o.steps[1].message = "exit code 3".into();
        o.steps[1].attempts = vec![orch_proto::v1::Attempt {
            number: 2,
            started_at: t(1_000_000),
            ended_at: t(1_000_250),
            outcome: Outcome::ExitFailure as i32,
            ..Default::default()
        }];
        let b = Board::from_objective(&o);
        let line = b.line(&b.rows[1], 2_000_000, 0);
        assert!(line.starts_with("✗ test "), "{line}");
        assert!(line.contains("#2"), "{line}");
        assert!(line.contains("250ms"), "{line}");
        assert!(line.ends_with("exit_failure: exit code 3"), "{line}");
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(compact_duration(-5), "0ms");
        assert_eq!(compact_duration(850), "850ms");
        assert_eq!(compact_duration(12_400), "12s");
        assert_eq!(compact_duration(63_000), "1m03s");
        assert_eq!(compact_duration(7_500_000), "2h05m");
    }

    /// A terminal that keeps what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl Screen {
        fn text(&self) -> String {
            self.0.lock().map(|s| s.clone()).unwrap_or_default()
        }
        fn push(&self, s: &str) {
            if let Ok(mut t) = self.0.lock() {
                t.push_str(s);
            }
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.push(s);
            self.push("\n");
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.push(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn live_view_draws_lines_and_logs_notable_events() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 200);
        let mut view = LiveView::new(&objective(), &[], target);
        let progress = ev(
            1,
            1_000_100,
            "build",
            1,
            Payload::Progress(ProgressReported {
                percent: Some(50.0),
                message: "half way".into(),
            }),
        );
        let started = ev(
            2,
            1_000_100,
            "build",
            1,
            Payload::AttemptStarted(AttemptStarted {
                pid: 4242,
                agent: String::new(),
            }),
        );
        view.show(&started).unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(20));
        view.show(&progress).unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(20));
        view.tick().unwrap_or_else(|e| panic!("{e}"));
        let text = screen.text();
        assert!(text.contains("O1  demo  pending"), "{text}");
        assert!(text.contains("build"), "{text}");
        assert!(text.contains("50% half way"), "{text}");
        // attempt_started is logged above the lines; progress only moves the line.
        assert!(text.contains("attempt_started"), "{text}");
        assert!(text.contains("pid 4242"), "{text}");
        assert!(!text.contains("progress  "), "{text}");
        assert_eq!(view.board.rows[0].percent, Some(50.0));
    }
}
