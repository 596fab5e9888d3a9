//! What `orchctl top` shows, as plain data: the objectives it follows, the daemon's figures,
//! the live CPU and memory of running attempts, the selection and the mode (list, details,
//! logs, a question). Rows and their cells are computed here, so they are unit-tested
//! without a terminal.

use std::collections::{BTreeMap, HashMap};

use orch_proto::units::HumanBytes;
use orch_proto::v1::{
    DaemonStatusResponse, Objective, ObjectiveState, Step, StepState, Usage, UsageReport,
};
use orch_proto::words;

use crate::output;

/// Ended objectives shown besides those that have not ended (without `--all`).
pub const RECENT_ENDED: usize = 5;

/// CPU and memory of one attempt's process tree (its session), sampled by `top`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcFigures {
    /// Percent of one CPU.
    pub cpu_percent: f32,
    pub rss_bytes: u64,
}

/// A row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Objective(String),
    Step(String, usize),
}

/// What the keys act on after a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Cancel(String),
    Deny(String, String),
}

/// The screen shown.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    List,
    Details {
        id: String,
        scroll: u16,
    },
    Logs {
        id: String,
        step: String,
        text: String,
        scroll: u16,
    },
    Confirm(Ask),
}

/// Everything the dashboard shows.
#[derive(Debug)]
pub struct Dash {
    pub objectives: BTreeMap<String, Objective>,
    pub daemon: Option<DaemonStatusResponse>,
    pub usage: Option<UsageReport>,
    /// Live figures by the pid of an attempt's main process (its session id).
    pub procs: HashMap<u32, ProcFigures>,
    pub selected: usize,
    pub all: bool,
    pub mode: Mode,
    /// The last action's result or a problem, shown in the bottom line.
    pub message: String,
    /// The current time (ms since the epoch), for ages.
    pub now_ms: i64,
}

fn ms_of(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    let t = ts?;
    (t.seconds > 0).then(|| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn objective_state(o: &Objective) -> ObjectiveState {
    ObjectiveState::try_from(o.state).unwrap_or(ObjectiveState::Unspecified)
}

fn step_state(s: &Step) -> StepState {
    StepState::try_from(s.state).unwrap_or(StepState::Unspecified)
}

/// Whether an objective has ended.
pub fn ended(o: &Objective) -> bool {
    matches!(
        objective_state(o),
        ObjectiveState::Succeeded | ObjectiveState::Failed | ObjectiveState::Cancelled
    )
}

/// A state word cut for the STATE column (`awaiting_approval` → `awaiting`).
fn state_cell(word: String) -> String {
    match word.as_str() {
        "awaiting_approval" => "awaiting".into(),
        _ => word,
    }
}

/// Tokens for people: `950`, `12.3k`, `4.1M`.
pub fn tokens(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn usage_tokens(u: Option<&Usage>) -> u64 {
    u.map_or(0, |u| {
        u.input_tokens + u.cache_read_tokens + u.cache_write_tokens + u.output_tokens
    })
}

/// An age for people in at most 5 characters: `42s`, `17m`, `3h05`, `12d`.
pub fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86_400),
    }
}

/// The first characters of an id, enough to tell objectives apart on a screen.
pub fn short_id(id: &str) -> &str {
    let n = id.len().min(10);
    id.get(..n).unwrap_or(id)
}

impl Dash {
    pub fn new(all: bool) -> Dash {
        Dash {
            objectives: BTreeMap::new(),
            daemon: None,
            usage: None,
            procs: HashMap::new(),
            selected: 0,
            all,
            mode: Mode::List,
            message: String::new(),
            now_ms: 0,
        }
    }

    /// The objectives shown, newest first: every one that has not ended, and the newest
    /// few that have (every one with `--all`).
    pub fn shown(&self) -> Vec<&Objective> {
        let mut ended_seen = 0;
        self.objectives
            .values()
            .rev()
            .filter(|o| {
                if !ended(o) || self.all {
                    return true;
                }
                ended_seen += 1;
                ended_seen <= RECENT_ENDED
            })
            .collect()
    }

    /// The rows: each objective, then its steps unless it ended (`Enter` shows an ended
    /// one's steps in its details).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for o in self.shown() {
            rows.push(Row::Objective(o.id.clone()));
            if !ended(o) {
                rows.extend((0..o.steps.len()).map(|i| Row::Step(o.id.clone(), i)));
            }
        }
        rows
    }

    /// The selected row, if any.
    pub fn selected_row(&self) -> Option<Row> {
        self.rows().get(self.selected).cloned()
    }

    /// Moves the selection by `delta` rows, within the table.
    pub fn select_by(&mut self, delta: isize) {
        let n = self.rows().len();
        if n == 0 {
            self.selected = 0;
            return;
        }
        let at = self.selected as isize + delta;
        self.selected = at.clamp(0, n as isize - 1) as usize;
    }

    /// Keeps the selection inside the table after the rows changed.
    pub fn clamp_selection(&mut self) {
        let n = self.rows().len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }

    /// The selected objective and step index (for a step row).
    pub fn target(&self) -> Option<(&Objective, Option<usize>)> {
        match self.selected_row()? {
            Row::Objective(id) => Some((self.objectives.get(&id)?, None)),
            Row::Step(id, i) => Some((self.objectives.get(&id)?, Some(i))),
        }
    }

    /// The step an approve or deny would answer: the selected one if it waits for
    /// approval, else the objective's first that does.
    pub fn awaiting_step(&self) -> Option<(String, String)> {
        let (o, i) = self.target()?;
        let waits = |s: &Step| step_state(s) == StepState::AwaitingApproval;
        let step = match i {
            Some(i) if o.steps.get(i).is_some_and(waits) => o.steps.get(i),
            _ => o.steps.iter().find(|s| waits(s)),
        }?;
        Some((o.id.clone(), step.id.clone()))
    }

    /// Whether the selected objective is paused (then `p` resumes it).
    pub fn selected_paused(&self) -> bool {
        self.target()
            .is_some_and(|(o, _)| objective_state(o) == ObjectiveState::Paused)
    }

    /// The running attempt's pid of a step, if it runs.
    fn running_pid(s: &Step) -> Option<u32> {
        let a = s.attempts.last()?;
        (a.ended_at.is_none() && step_state(s) == StepState::Running)
            .then_some(a.pid)
            .flatten()
    }

    /// Every pid of an attempt running now, to sample.
    pub fn running_pids(&self) -> Vec<u32> {
        self.objectives
            .values()
            .filter(|o| !ended(o))
            .flat_map(|o| o.steps.iter().filter_map(Self::running_pid))
            .collect()
    }

    fn step_figures(&self, s: &Step) -> (String, String) {
        match Self::running_pid(s).and_then(|pid| self.procs.get(&pid)) {
            Some(p) => (
                format!("{:.0}%", p.cpu_percent),
                HumanBytes(p.rss_bytes).to_string(),
            ),
            None => {
                let peak = s.attempts.last().map_or(0, |a| a.peak_rss_bytes);
                ("-".into(), output::bytes(peak))
            }
        }
    }

    /// The cells of a row: NAME, STATE, ATT, CPU, RSS, TOKENS, COST, PROG, AGE.
    pub fn cells(&self, row: &Row) -> Option<[String; 9]> {
        match row {
            Row::Objective(id) => {
                let o = self.objectives.get(id)?;
                let (mut cpu, mut rss, mut any) = (0.0f32, 0u64, false);
                for s in &o.steps {
                    if let Some(p) = Self::running_pid(s).and_then(|pid| self.procs.get(&pid)) {
                        cpu += p.cpu_percent;
                        rss += p.rss_bytes;
                        any = true;
                    }
                }
                let done = o
                    .steps
                    .iter()
                    .filter(|s| step_state(s) == StepState::Succeeded)
                    .count();
                let created = ms_of(o.created_at.as_ref()).unwrap_or(self.now_ms);
                let name = if o.name.is_empty() { "-" } else { &o.name };
                Some([
                    format!("{} {name}", short_id(&o.id)),
                    state_cell(words::objective_state(objective_state(o))),
                    String::new(),
                    if any {
                        format!("{cpu:.0}%")
                    } else {
                        "-".into()
                    },
                    if any {
                        HumanBytes(rss).to_string()
                    } else {
                        "-".into()
                    },
                    tokens(usage_tokens(o.usage.as_ref())),
                    output::cost(o.usage.as_ref().map_or(0.0, |u| u.cost_usd)),
                    format!("{done}/{}", o.steps.len()),
                    age(self.now_ms - created),
                ])
            }
            Row::Step(id, i) => {
                let o = self.objectives.get(id)?;
                let s = o.steps.get(*i)?;
                let (cpu, rss) = self.step_figures(s);
                let attempt = s.attempts.last();
                let progress = s
                    .progress
                    .as_ref()
                    .and_then(|p| p.percent)
                    .map_or("-".into(), |p| format!("{p:.0}%"));
                let started = attempt.and_then(|a| ms_of(a.started_at.as_ref()));
                let ended_at = attempt.and_then(|a| ms_of(a.ended_at.as_ref()));
                let age_cell = match (started, ended_at) {
                    (Some(st), None) => age(self.now_ms - st),
                    (Some(st), Some(en)) => age(en - st),
                    _ => "-".into(),
                };
                Some([
                    format!(" └ {}", s.id),
                    state_cell(words::step_state(step_state(s))),
                    attempt.map_or("-".into(), |a| a.number.to_string()),
                    cpu,
                    rss,
                    tokens(usage_tokens(s.usage.as_ref())),
                    output::cost(s.usage.as_ref().map_or(0.0, |u| u.cost_usd)),
                    progress,
                    age_cell,
                ])
            }
        }
    }

    /// The footer: slots, budget use, host memory and load.
    pub fn footer(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.daemon {
            parts.push(format!("slots {}/{}", d.running_attempts, d.max_parallel));
        }
        if let Some(u) = &self.usage {
            let today = u.today.as_ref().map_or(0.0, |t| t.cost_usd);
            match u.daily_budget_usd {
                Some(b) if b > 0.0 => parts.push(format!(
                    "today {} of {} ({:.0}%)",
                    output::cost(today),
                    output::cost(b),
                    today / b * 100.0
                )),
                _ => parts.push(format!("today {}", output::cost(today))),
            }
        }
        if let Some(h) = self.daemon.as_ref().and_then(|d| d.host.as_ref()) {
            parts.push(format!(
                "mem {} free of {}",
                HumanBytes(h.available_memory_bytes),
                HumanBytes(h.total_memory_bytes)
            ));
            parts.push(format!("load {:.2}", h.load_1m));
            if !h.held.is_empty() {
                parts.push("HELD".into());
            }
        }
        parts.join(" · ")
    }

    /// Why new work waits, when the host holds it back.
    pub fn held(&self) -> Option<&str> {
        let h = self.daemon.as_ref()?.host.as_ref()?;
        (!h.held.is_empty()).then_some(h.held.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{Attempt, HostStatus};

    fn ts(ms: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: 0,
        })
    }

    fn step(id: &str, state: StepState, pid: Option<u32>) -> Step {
        Step {
            id: id.into(),
            state: state as i32,
            attempts: pid
                .map(|p| Attempt {
                    number: 2,
                    pid: Some(p),
                    started_at: ts(1_000_000),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn objective(id: &str, state: ObjectiveState, steps: Vec<Step>) -> Objective {
        Objective {
            id: id.into(),
            name: format!("obj-{id}"),
            state: state as i32,
            created_at: ts(1_000_000),
            steps,
            ..Default::default()
        }
    }

    fn dash() -> Dash {
        let mut d = Dash::new(false);
        d.now_ms = 1_090_000;
        for (id, state, steps) in [
            (
                "01A",
                ObjectiveState::Running,
                vec![
                    step("build", StepState::Running, Some(42)),
                    step("gate", StepState::AwaitingApproval, None),
                ],
            ),
            (
                "01B",
                ObjectiveState::Succeeded,
                vec![step("x", StepState::Succeeded, None)],
            ),
        ] {
            d.objectives.insert(id.into(), objective(id, state, steps));
        }
        d
    }

    #[test]
    fn rows_are_newest_first_with_the_steps_of_live_objectives() {
        let d = dash();
        assert_eq!(
            d.rows(),
            [
                Row::Objective("01B".into()),
                Row::Objective("01A".into()),
                Row::Step("01A".into(), 0),
                Row::Step("01A".into(), 1),
            ]
        );
    }

    #[test]
    fn the_selection_stays_in_the_table() {
        let mut d = dash();
        d.select_by(100);
        assert_eq!(d.selected, d.rows().len() - 1);
        d.select_by(-100);
        assert_eq!(d.selected, 0);
    }

    #[test]
    fn only_the_newest_ended_objectives_are_shown_unless_all() {
        let mut d = Dash::new(false);
        for i in 0..(RECENT_ENDED + 3) {
            let id = format!("01{i:02}");
            d.objectives
                .insert(id.clone(), objective(&id, ObjectiveState::Failed, vec![]));
        }
        assert_eq!(d.shown().len(), RECENT_ENDED);
        assert_eq!(d.shown()[0].id, format!("01{:02}", RECENT_ENDED + 2));
        d.all = true;
        assert_eq!(d.shown().len(), RECENT_ENDED + 3);
    }

    #[test]
    fn cells_show_live_cpu_and_memory_of_running_attempts() {
        let mut d = dash();
        d.procs.insert(
            42,
            ProcFigures {
                cpu_percent: 97.4,
                rss_bytes: 3 << 20,
            },
        );
        let o = d.cells(&Row::Objective("01A".into())).unwrap_or_default();
        assert_eq!(o[0], "01A obj-01A");
        assert_eq!(
            (o[1].as_str(), o[3].as_str(), o[4].as_str()),
            ("running", "97%", "3.0M")
        );
        assert_eq!((o[7].as_str(), o[8].as_str()), ("0/2", "1m"));
        let s = d.cells(&Row::Step("01A".into(), 0)).unwrap_or_default();
        assert_eq!(
            (s[2].as_str(), s[3].as_str(), s[8].as_str()),
            ("2", "97%", "1m")
        );
        let gate = d.cells(&Row::Step("01A".into(), 1)).unwrap_or_default();
        assert_eq!((gate[1].as_str(), gate[2].as_str()), ("awaiting", "-"));
        assert_eq!(d.running_pids(), vec![42]);
    }

    #[test]
    fn approve_targets_the_waiting_step() {
        let mut d = dash();
        d.selected = 1; // the objective 01A
        assert_eq!(d.awaiting_step(), Some(("01A".into(), "gate".into())));
        d.selected = 2; // its running step: the waiting one all the same
        assert_eq!(d.awaiting_step(), Some(("01A".into(), "gate".into())));
        d.selected = 0;
        assert_eq!(d.awaiting_step(), None);
        assert!(!d.selected_paused());
    }

    #[test]
    fn footer_has_slots_budget_and_host_memory() {
        let mut d = dash();
        d.daemon = Some(DaemonStatusResponse {
            running_attempts: 1,
            max_parallel: 4,
            host: Some(HostStatus {
                total_memory_bytes: 8 << 30,
                available_memory_bytes: 2 << 30,
                load_1m: 0.5,
                held: "held back: load".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        d.usage = Some(UsageReport {
            today: Some(Usage {
                cost_usd: 2.5,
                ..Default::default()
            }),
            daily_budget_usd: Some(10.0),
            ..Default::default()
        });
        let f = d.footer();
        assert!(f.contains("slots 1/4"), "{f}");
        assert!(f.contains("today $2.50 of $10.00 (25%)"), "{f}");
        assert!(f.contains("mem 2.0G free of 8.0G"), "{f}");
        assert!(f.contains("HELD"), "{f}");
        assert_eq!(d.held(), Some("held back: load"));
    }

    #[test]
    fn small_formats() {
        assert_eq!(tokens(999), "999");
        assert_eq!(tokens(12_345), "12.3k");
        assert_eq!(tokens(4_100_000), "4.1M");
        assert_eq!(age(42_000), "42s");
        assert_eq!(age(3_900_000), "1h05");
        assert_eq!(age(3 * 86_400_000), "3d");
        assert_eq!(short_id("01JD3XABCDEFGHJKMNPQRSTVWX"), "01JD3XABCD");
    }
}
