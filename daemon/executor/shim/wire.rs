//! What orchd and a shim say to each other, and the files a shim keeps in its
//! directory (`STATE/shims/att-OBJECTIVE-STEP-N/`). Messages are JSON, one a line, on
//! the per-attempt socket `sock`: the shim sends `Up`, orchd sends `Down`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::{Prepared, Rlimit};
use crate::model::{End, Limits, Outcome, Usage};
use crate::runner::{AttemptKey, RunSpec, UsageFormat};

/// The attempt, written by orchd before it starts the shim.
pub const SPEC: &str = "spec.json";
/// The per-attempt socket (bound by orchd, handed to the shim, which keeps it).
pub const SOCK: &str = "sock";
/// The shim's pid and start time, written by the shim when it starts.
pub const SHIM: &str = "shim.json";
/// The agent's pid, start time and cgroup, written once it started.
pub const STARTED: &str = "started.json";
/// How the attempt ended, written (atomically) before the shim exits.
pub const END: &str = "end.json";
/// The stdout lines the usage format may read, appended unparsed, for orchd to parse.
pub const JOURNAL: &str = "journal";
/// The shim's own diagnostics (its stderr).
pub const SHIM_LOG: &str = "shim.log";

/// Everything the shim needs to run the attempt, and what orchd needs to parse its
/// journal again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub objective_id: String,
    pub step_index: u32,
    pub number: u32,
    pub step_id: String,
    pub argv: Vec<String>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    pub log: PathBuf,
    pub log_max_bytes: u64,
    /// The daemon's log caps (total, per user), which the shim's log writer draws from.
    pub log_caps: (u64, u64),
    pub checkpoint: Option<(PathBuf, String)>,
    pub prompt_file: Option<(PathBuf, String)>,
    pub mcp_config: Option<(PathBuf, String)>,
    pub grace_ms: u64,
    pub timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub limits: Limits,
    pub cgroup: Option<PathBuf>,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(u32, u64, u64)>,
    pub memory_by_cgroup: bool,
    pub run_as: Option<(u32, u32, Vec<u32>)>,
    /// The profile's usage format (`UsageFormat::from_name`).
    pub usage_format: String,
    /// For orchd's parser: the profile's model and a resumed session's usage before.
    pub model: String,
    pub session_usage: Option<Usage>,
    /// A planner attempt's `ORCH_PLAN_FILE`.
    #[serde(default)]
    pub plan_file: Option<PathBuf>,
}

pub fn format_name(f: UsageFormat) -> &'static str {
    match f {
        UsageFormat::OrchLines => "orch",
        UsageFormat::ClaudeStreamJson => "claude-stream-json",
        UsageFormat::CodexJson => "codex-json",
        UsageFormat::Aider => "aider",
    }
}

impl ShimSpec {
    pub fn of(spec: &RunSpec, log_caps: (u64, u64)) -> ShimSpec {
        ShimSpec {
            objective_id: spec.key.objective_id.clone(),
            step_index: spec.key.step_index,
            number: spec.key.number,
            step_id: spec.step_id.clone(),
            argv: spec.argv.clone(),
            workdir: spec.workdir.clone(),
            env: spec.env.clone(),
            stdin: spec.stdin.clone(),
            log: spec.log.clone(),
            log_max_bytes: spec.log_max_bytes,
            log_caps,
            checkpoint: spec.checkpoint.clone(),
            prompt_file: spec.prompt_file.clone(),
            mcp_config: spec.mcp_config.clone(),
            grace_ms: spec.grace.as_millis() as u64,
            timeout_ms: spec.timeout.map(|d| d.as_millis() as u64),
            idle_timeout_ms: spec.idle_timeout.map(|d| d.as_millis() as u64),
            limits: spec.limits,
            cgroup: spec.prepared.cgroup.clone(),
            rlimits: spec
                .prepared
                .rlimits
                .iter()
                .map(|r| (r.resource, r.soft, r.hard))
                .collect(),
            memory_by_cgroup: spec.prepared.memory_by_cgroup,
            run_as: spec.run_as.clone(),
            usage_format: format_name(spec.usage_format).to_string(),
            model: spec.prices.model.clone(),
            session_usage: spec.session_usage,
            plan_file: spec.plan_file.clone(),
        }
    }

    pub fn key(&self) -> AttemptKey {
        AttemptKey {
            objective_id: self.objective_id.clone(),
            step_index: self.step_index,
            number: self.number,
        }
    }

    /// The attempt as the shim runs it: its stdout lines go to `journal` unparsed.
    pub fn run_spec(&self, journal: &Path) -> RunSpec {
        RunSpec {
            key: self.key(),
            argv: self.argv.clone(),
            workdir: self.workdir.clone(),
            env: self.env.clone(),
            stdin: self.stdin.clone(),
            log: self.log.clone(),
            log_max_bytes: self.log_max_bytes,
            checkpoint: self.checkpoint.clone(),
            prompt_file: self.prompt_file.clone(),
            mcp_config: self.mcp_config.clone(),
            grace: Duration::from_millis(self.grace_ms),
            timeout: self.timeout_ms.map(Duration::from_millis),
            idle_timeout: self.idle_timeout_ms.map(Duration::from_millis),
            limits: self.limits,
            prepared: Prepared {
                cgroup: self.cgroup.clone(),
                rlimits: self
                    .rlimits
                    .iter()
                    .map(|(resource, soft, hard)| Rlimit {
                        resource: *resource,
                        soft: *soft,
                        hard: *hard,
                    })
                    .collect(),
                memory_by_cgroup: self.memory_by_cgroup,
            },
            usage_format: UsageFormat::from_name(&self.usage_format),
            prices: Default::default(),
            session_usage: None,
            threads: None,
            run_as: self.run_as.clone(),
            executor: String::new(),
            step_id: self.step_id.clone(),
            protocol_journal: Some(journal.to_path_buf()),
            plan_file: self.plan_file.clone(),
            workspace: None,
        }
    }
}

/// A process identified beyond its pid: with its start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: Option<u64>,
}

/// The agent once started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
    pub start_ticks: Option<u64>,
    pub cgroup: Option<String>,
}

/// How the attempt ended (`model::End`, and when the agent's main process was reaped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndRecord {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub peak_rss_bytes: u64,
    pub cpu_ms: u64,
    pub ended_ms: i64,
}

impl EndRecord {
    pub fn of(e: &End, ended_ms: i64) -> EndRecord {
        EndRecord {
            outcome: e.outcome,
            exit_code: e.exit_code,
            signal: e.signal,
            message: e.message.clone(),
            peak_rss_bytes: e.peak_rss_bytes,
            cpu_ms: e.cpu_ms,
            ended_ms,
        }
    }

    pub fn end(&self) -> End {
        End {
            outcome: self.outcome,
            exit_code: self.exit_code,
            signal: self.signal,
            message: self.message.clone(),
            peak_rss_bytes: self.peak_rss_bytes,
            cpu_ms: self.cpu_ms,
            ended_ms: Some(self.ended_ms),
        }
    }
}

/// Shim to orchd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Up {
    /// First on every connection: what happened so far.
    Hello {
        shim: ProcId,
        started: Option<Started>,
    },
    Started(Started),
    Usage {
        peak_rss_bytes: u64,
        cpu_ms: u64,
    },
    /// Last: the shim exits after it.
    Ended(EndRecord),
}

/// orchd to shim: the attempt's orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Down {
    Stop(Why),
    Pause,
    Resume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    Cancelled,
    Shutdown,
    BudgetExceeded,
}

/// One message and its newline.
pub fn line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Plain data types: serializing cannot fail.
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Reads a JSON file the shim or orchd wrote; `None` when it is not there.
pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a JSON file whole or not at all (a temporary file renamed over it).
pub fn write<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, line(v))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Up::Hello {
                shim: ProcId {
                    pid: 7,
                    start_ticks: Some(9),
                },
                started: None,
            },
            Up::Usage {
                peak_rss_bytes: 1,
                cpu_ms: 2,
            },
            Up::Ended(EndRecord::of(&End::of(Outcome::Success, "ok"), 5)),
        ] {
            let l = line(&m);
            assert_eq!(l.last(), Some(&b'\n'));
            let back: Up = serde_json::from_slice(&l).expect("parse");
            assert_eq!(back, m);
        }
        let d: Down = serde_json::from_slice(&line(&Down::Stop(Why::Shutdown))).expect("parse");
        assert_eq!(d, Down::Stop(Why::Shutdown));
    }

    #[test]
    fn a_missing_file_is_none_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(END);
        assert!(read::<EndRecord>(&p).expect("read").is_none());
        std::fs::write(&p, b"{not json").expect("write");
        assert!(read::<EndRecord>(&p).is_err());
        let rec = EndRecord::of(&End::of(Outcome::ExitFailure, "exit 3"), 1);
        write(&p, &rec).expect("write");
        assert_eq!(read::<EndRecord>(&p).expect("read"), Some(rec));
    }
}
