//! Slurm job states → orch outcomes, as a table (decisions are data), and the parsing of
//! what `scontrol show job -o`, `sacct -P` and the job completion log say of a job. Pure:
//! no commands, files or clocks.

use crate::model::{End, Outcome};

/// What became of a job, as far as its state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Not ended: waiting, running, suspended, being requeued or cleaned up.
    Live,
    /// `COMPLETED`.
    Success,
    /// `FAILED`: its exit code, or its signal (a memory kill when the output says so).
    Failed,
    /// `OUT_OF_MEMORY`.
    Memory,
    /// `TIMEOUT`, `DEADLINE`.
    Timeout,
    /// `CANCELLED`: `cancelled` when orch asked, else `signaled`.
    Cancelled,
    /// `NODE_FAIL`, `PREEMPTED`, `BOOT_FAIL`: the attempt is `interrupted` (retried).
    Interrupted,
}

/// Every state Slurm 22.05 reports, and what it means for an attempt. A state missing
/// here is taken as live (a newer Slurm's transient state), and said in the log.
pub const STATES: &[(&str, Rule)] = &[
    ("PENDING", Rule::Live),
    ("CONFIGURING", Rule::Live),
    ("RUNNING", Rule::Live),
    ("SUSPENDED", Rule::Live),
    ("COMPLETING", Rule::Live),
    ("REQUEUED", Rule::Live),
    ("REQUEUE_FED", Rule::Live),
    ("REQUEUE_HOLD", Rule::Live),
    ("RESIZING", Rule::Live),
    ("RESV_DEL_HOLD", Rule::Live),
    ("SIGNALING", Rule::Live),
    ("SPECIAL_EXIT", Rule::Live),
    ("STAGE_OUT", Rule::Live),
    ("STOPPED", Rule::Live),
    ("COMPLETED", Rule::Success),
    ("FAILED", Rule::Failed),
    ("OUT_OF_MEMORY", Rule::Memory),
    ("TIMEOUT", Rule::Timeout),
    ("DEADLINE", Rule::Timeout),
    ("CANCELLED", Rule::Cancelled),
    ("NODE_FAIL", Rule::Interrupted),
    ("PREEMPTED", Rule::Interrupted),
    ("BOOT_FAIL", Rule::Interrupted),
];

/// The rule for a state word (`CANCELLED+`, `CANCELLED by 0` are `CANCELLED`).
pub fn rule(state: &str) -> Option<Rule> {
    let word = state
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .next()
        .unwrap_or("");
    STATES.iter().find(|(s, _)| *s == word).map(|(_, r)| *r)
}

/// What orch asked of the job before it ended (its own stop wins, as for local steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Cancel,
    /// orchd is stopping.
    Shutdown,
    Budget,
    /// orch's own timeout or idle timeout, with its message.
    Timeout(String),
}

impl Asked {
    fn end(&self) -> (Outcome, String) {
        match self {
            Asked::Cancel => (Outcome::Cancelled, "cancelled".into()),
            Asked::Shutdown => (Outcome::Interrupted, "the daemon is stopping".into()),
            Asked::Budget => (
                Outcome::BudgetExceeded,
                "stopped: the budget is exhausted".into(),
            ),
            Asked::Timeout(m) => (Outcome::Timeout, m.clone()),
        }
    }
}

/// A job as `scontrol`, `sacct` or the completion log describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobView {
    pub state: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
}

/// Reads `key=value` words (`scontrol show job -o`, the job completion log).
pub fn parse_fields(line: &str) -> JobView {
    let mut v = JobView::default();
    for word in line.split_whitespace() {
        let Some((k, val)) = word.split_once('=') else {
            continue;
        };
        match k {
            "JobState" => v.state = val.to_string(),
            "ExitCode" => (v.exit_code, v.signal) = exit_pair(val),
            "Reason" => v.reason = val.to_string(),
            _ => {}
        }
    }
    v
}

/// Reads `sacct -n -P -o State,ExitCode` (its first line: the job's allocation).
pub fn parse_sacct(text: &str) -> Option<JobView> {
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let (state, exit) = line.split_once('|')?;
    let (exit_code, signal) = exit_pair(exit.trim());
    Some(JobView {
        state: state.split_whitespace().next().unwrap_or("").to_string(),
        exit_code,
        signal,
        reason: String::new(),
    })
}

/// The last line of a job completion log (`jobcomp/filetxt`) about job `id`.
pub fn find_in_jobcomp(text: &str, id: &str) -> Option<JobView> {
    let key = format!("JobId={id} ");
    text.lines()
        .rev()
        .find(|l| l.starts_with(&key))
        .map(parse_fields)
}

/// `3:0` → exit code 3; `0:9` → signal 9.
fn exit_pair(s: &str) -> (Option<i32>, Option<i32>) {
    let mut it = s.split(':').map(|p| p.trim().parse::<i32>().ok());
    let code = it.next().flatten();
    let sig = it.next().flatten().filter(|s| *s != 0);
    (code, sig)
}

/// Slurm's own words when it kills a step over its memory (enforced by polling).
pub fn says_memory_kill(output_tail: &str) -> bool {
    output_tail.contains("exceeded memory limit") || output_tail.contains("Exceeded job memory")
}

/// The end of an attempt whose job is in `view`: `None` while it lives. `asked` is what
/// orch asked of it; `output_tail` the end of its stderr (for a memory kill by polling).
pub fn end_of(view: &JobView, asked: Option<&Asked>, output_tail: &str) -> Option<End> {
    let rule = rule(&view.state).unwrap_or(Rule::Live);
    if rule == Rule::Live {
        return None;
    }
    let state = view.state.as_str();
    let (outcome, message) = match (rule, asked) {
        // orch's own stop decides, whatever the job ended as (as for local steps).
        (_, Some(a)) => a.end(),
        (Rule::Success, None) => (Outcome::Success, String::new()),
        (Rule::Failed, None) => match (view.exit_code, view.signal) {
            (_, Some(9)) if says_memory_kill(output_tail) => (
                Outcome::MemoryLimit,
                "killed by Slurm: the job exceeded its memory limit".into(),
            ),
            (_, Some(sig)) => (Outcome::Signaled, format!("job {state} with signal {sig}")),
            (Some(code), None) if code != 0 => {
                (Outcome::ExitFailure, format!("exited with code {code}"))
            }
            _ => (
                Outcome::ExitFailure,
                format!(
                    "job {state} ({})",
                    reason_or(&view.reason, "no reason given")
                ),
            ),
        },
        (Rule::Memory, None) => (
            Outcome::MemoryLimit,
            "killed by Slurm: OUT_OF_MEMORY".into(),
        ),
        (Rule::Timeout, None) => (
            Outcome::Timeout,
            format!("Slurm ended the job: {state} (its time limit)"),
        ),
        (Rule::Cancelled, None) => (
            Outcome::Signaled,
            "the job was cancelled outside orch (scancel)".into(),
        ),
        (Rule::Interrupted, None) => (
            Outcome::Interrupted,
            format!(
                "the job ended {state}: {}",
                reason_or(&view.reason, "the cluster lost it")
            ),
        ),
        (Rule::Live, None) => return None,
    };
    Some(End {
        outcome,
        exit_code: view.exit_code.filter(|_| view.signal.is_none()),
        signal: view.signal,
        message,
        peak_rss_bytes: 0,
        cpu_ms: 0,
        ended_ms: None,
    })
}

fn reason_or<'a>(reason: &'a str, default: &'a str) -> &'a str {
    if reason.is_empty() || reason == "None" {
        default
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str, exit: &str) -> JobView {
        parse_fields(&format!(
            "JobId=7 JobState={state} Reason=None ExitCode={exit}"
        ))
    }

    fn outcome(v: &JobView, asked: Option<&Asked>, tail: &str) -> Option<Outcome> {
        end_of(v, asked, tail).map(|e| e.outcome)
    }

    /// State, exit code, what orch asked, stderr tail, expected outcome.
    type Row = (
        &'static str,
        &'static str,
        Option<Asked>,
        &'static str,
        Option<Outcome>,
    );

    #[test]
    fn the_issue_mapping_row_by_row() {
        let rows: &[Row] = &[
            ("COMPLETED", "0:0", None, "", Some(Outcome::Success)),
            ("FAILED", "3:0", None, "", Some(Outcome::ExitFailure)),
            (
                "OUT_OF_MEMORY",
                "0:125",
                None,
                "",
                Some(Outcome::MemoryLimit),
            ),
            (
                "FAILED",
                "0:9",
                None,
                "slurmstepd: error: StepId=2.batch exceeded memory limit (1 > 0), being killed",
                Some(Outcome::MemoryLimit),
            ),
            ("FAILED", "0:9", None, "", Some(Outcome::Signaled)),
            ("TIMEOUT", "0:0", None, "", Some(Outcome::Timeout)),
            (
                "CANCELLED",
                "0:15",
                Some(Asked::Cancel),
                "",
                Some(Outcome::Cancelled),
            ),
            ("CANCELLED", "0:15", None, "", Some(Outcome::Signaled)),
            (
                "CANCELLED",
                "0:15",
                Some(Asked::Shutdown),
                "",
                Some(Outcome::Interrupted),
            ),
            (
                "CANCELLED",
                "0:15",
                Some(Asked::Budget),
                "",
                Some(Outcome::BudgetExceeded),
            ),
            (
                "CANCELLED",
                "0:15",
                Some(Asked::Timeout("timed out after 5s".into())),
                "",
                Some(Outcome::Timeout),
            ),
            ("NODE_FAIL", "0:0", None, "", Some(Outcome::Interrupted)),
            ("PREEMPTED", "0:0", None, "", Some(Outcome::Interrupted)),
            ("BOOT_FAIL", "0:0", None, "", Some(Outcome::Interrupted)),
            ("RUNNING", "0:0", None, "", None),
            ("PENDING", "0:0", Some(Asked::Cancel), "", None),
            ("SUSPENDED", "0:0", None, "", None),
            ("COMPLETING", "0:0", None, "", None),
            ("SOMETHING_NEW", "0:0", None, "", None),
        ];
        for (state, exit, asked, tail, want) in rows {
            let got = outcome(&view(state, exit), asked.as_ref(), tail);
            assert_eq!(got, *want, "{state} {exit} {asked:?}");
        }
    }

    #[test]
    fn every_state_word_has_one_row() {
        let mut seen = std::collections::HashSet::new();
        for (s, _) in STATES {
            assert!(seen.insert(*s), "{s} twice");
        }
        assert_eq!(rule("CANCELLED+"), Some(Rule::Cancelled));
        assert_eq!(rule("CANCELLED by 0"), Some(Rule::Cancelled));
        assert_eq!(rule("nonsense"), None);
    }

    #[test]
    fn exit_codes_and_signals_are_kept() {
        let e = end_of(&view("FAILED", "3:0"), None, "").expect("ended");
        assert_eq!((e.exit_code, e.signal), (Some(3), None));
        assert_eq!(e.message, "exited with code 3");
        let e = end_of(&view("FAILED", "0:9"), None, "").expect("ended");
        assert_eq!((e.exit_code, e.signal), (None, Some(9)));
    }

    #[test]
    fn scontrol_sacct_and_the_completion_log_are_read() {
        let line = "JobId=1 JobName=t1 UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:00:00";
        let v = parse_fields(line);
        assert_eq!(v.state, "FAILED");
        assert_eq!((v.exit_code, v.signal), (Some(3), None));
        assert_eq!(v.reason, "NonZeroExitCode");
        let s = parse_sacct("CANCELLED by 0|0:15\n").expect("sacct");
        assert_eq!(s.state, "CANCELLED");
        assert_eq!(s.signal, Some(15));
        assert_eq!(parse_sacct(""), None);
        let log = "JobId=1 UserId=root(0) Name=a JobState=FAILED ExitCode=3:0 \nJobId=12 Name=b JobState=COMPLETED ExitCode=0:0 \n";
        assert_eq!(
            find_in_jobcomp(log, "1").map(|v| v.state),
            Some("FAILED".into())
        );
        assert_eq!(
            find_in_jobcomp(log, "12").map(|v| v.state),
            Some("COMPLETED".into())
        );
        assert_eq!(find_in_jobcomp(log, "2"), None);
    }
}
