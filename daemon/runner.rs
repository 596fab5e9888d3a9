//! One task per attempt: builds the command, starts it in its own process group, feeds
//! stdin, tees stdout/stderr to the attempt's log files (never blocking the agent),
//! reads `::orch-*::` lines, enforces the wall-clock timeout, stops the tree on request
//! (TERM, grace, KILL), waits, and classifies the outcome. It reports facts to the engine.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::Outcome;
use crate::sys;

/// Identifies an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptKey {
    pub objective_id: String,
    pub step_index: u32,
    pub number: u32,
}

/// Everything needed to run one attempt.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub key: AttemptKey,
    pub argv: Vec<String>,
    pub workdir: PathBuf,
    /// The complete environment of the agent.
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    pub grace: Duration,
    pub timeout: Option<Duration>,
}

/// Why the engine stops an attempt; decides its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Shutdown,
}

/// Requests from the engine to a running attempt.
#[derive(Debug)]
pub enum Control {
    Stop(StopReason),
}

/// A line of the agent protocol read from stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentLine {
    Checkpoint(String),
    Progress { percent: Option<f64>, message: String },
    /// A `::orch-…::` line that could not be read; kept in the log, reported, never fatal.
    Malformed(String),
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
}

/// What a runner reports to the engine.
#[derive(Debug)]
pub enum Fact {
    Started {
        key: AttemptKey,
        pid: u32,
        start_ticks: Option<u64>,
    },
    Line {
        key: AttemptKey,
        line: AgentLine,
    },
    Ended {
        key: AttemptKey,
        end: AttemptEnd,
    },
}

/// Largest checkpoint accepted, in bytes of JSON.
pub const MAX_CHECKPOINT_BYTES: usize = 1 << 20;
/// Longest protocol line kept for parsing; longer lines are logged but not parsed.
const MAX_PROTOCOL_LINE: usize = MAX_CHECKPOINT_BYTES + 64;
/// Every agent protocol line starts with this.
const PREFIX: &[u8] = b"::orch-";

/// Starts the attempt on its own task; returns the control channel.
pub fn start(spec: RunSpec, facts: mpsc::UnboundedSender<Fact>) -> mpsc::UnboundedSender<Control> {
    let (tx, rx) = mpsc::unbounded_channel();
    let key = spec.key.clone();
    tokio::spawn(async move {
        let end = run(spec, rx, &facts).await;
        // The engine may be gone during shutdown; nothing else to do then.
        let _ = facts.send(Fact::Ended { key, end });
    });
    tx
}

fn spawn_error(message: String) -> AttemptEnd {
    AttemptEnd {
        outcome: Outcome::SpawnError,
        exit_code: None,
        signal: None,
        message,
    }
}

async fn open_log(path: &PathBuf) -> std::io::Result<tokio::fs::File> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::File::create(path).await
}

async fn run(
    spec: RunSpec,
    mut control: mpsc::UnboundedReceiver<Control>,
    facts: &mpsc::UnboundedSender<Fact>,
) -> AttemptEnd {
    let Some(program) = spec.argv.first() else {
        return spawn_error("empty command".into());
    };
    match std::fs::metadata(&spec.workdir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return spawn_error(format!("workdir {} is not a directory", spec.workdir.display()));
        }
        Err(e) => {
            return spawn_error(format!("workdir {}: {e}", spec.workdir.display()));
        }
    }
    let (out_log, err_log) = match (open_log(&spec.stdout_log).await, open_log(&spec.stderr_log).await) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return spawn_error(format!(
                "cannot create the log files under {}: {e}",
                spec.stdout_log.parent().map(|p| p.display().to_string()).unwrap_or_default()
            ));
        }
    };

    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.workdir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: child_pre_exec only makes async-signal-safe calls, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| sys::child_pre_exec());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "no such program (not found on PATH or not a file)".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied (not executable?)".to_string(),
                _ => e.to_string(),
            };
            return spawn_error(format!("cannot start `{program}`: {why}"));
        }
    };
    let Some(pid) = child.id() else {
        return spawn_error(format!("`{program}` exited before it could be tracked"));
    };
    let _ = facts.send(Fact::Started {
        key: spec.key.clone(),
        pid,
        start_ticks: sys::process_start_ticks(pid),
    });
    tracing::debug!(objective = %spec.key.objective_id, step = spec.key.step_index, attempt = spec.key.number, pid, "attempt started");

    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), spec.stdin.clone()) {
        tokio::spawn(async move {
            // An agent that does not read its stdin is fine.
            let _ = stdin.write_all(&data).await;
        });
    }
    let stdout = child.stdout.take().map(|s| {
        let facts = facts.clone();
        let key = spec.key.clone();
        tokio::spawn(copy_stream(s, out_log, Some((facts, key))))
    });
    let stderr = child.stderr.take().map(|s| tokio::spawn(copy_stream(s, err_log, None)));

    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut stop: Option<(Outcome, String)> = None;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(Control::Stop(reason)) = control.recv(), if stop.is_none() => {
                let (outcome, why) = match reason {
                    StopReason::Cancelled => (Outcome::Cancelled, "cancelled"),
                    StopReason::Shutdown => (Outcome::Interrupted, "the daemon is stopping"),
                };
                stop = Some((outcome, why.to_string()));
                let _ = sys::signal_group(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + spec.grace);
            }
            _ = sleep_until_opt(deadline), if stop.is_none() => {
                let t = spec.timeout.unwrap_or_default();
                stop = Some((Outcome::Timeout, format!("timed out after {}", orch_proto::units::format_duration_ms(t.as_millis() as u64))));
                let _ = sys::signal_group(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + spec.grace);
            }
            _ = sleep_until_opt(kill_at) => {
                let _ = sys::signal_group(pid, Signal::SIGKILL);
                kill_at = None;
            }
        }
    };
    // The attempt is over when its main process exits: what it left behind in its group dies too.
    let _ = sys::signal_group(pid, Signal::SIGKILL);
    for task in [stdout, stderr].into_iter().flatten() {
        // Output already written is kept; a process that escaped the group may hold the pipe,
        // so the drain is bounded.
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let (exit_code, signal) = match &status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code(), s.signal())
        }
        Err(_) => (None, None),
    };
    if let Err(e) = status {
        return AttemptEnd {
            outcome: Outcome::Interrupted,
            exit_code: None,
            signal: None,
            message: format!("cannot wait for pid {pid}: {e}"),
        };
    }
    let (outcome, message) = match stop {
        Some((o, m)) => (o, m),
        None => classify(exit_code, signal),
    };
    AttemptEnd {
        outcome,
        exit_code,
        signal,
        message,
    }
}

/// The outcome of a process that ended on its own.
pub fn classify(exit_code: Option<i32>, signal: Option<i32>) -> (Outcome, String) {
    match (exit_code, signal) {
        (Some(0), _) => (Outcome::Success, String::new()),
        (Some(c), _) => (Outcome::ExitFailure, format!("exited with code {c}")),
        (None, Some(s)) => {
            let name = Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?");
            if s == libc::SIGXCPU {
                (Outcome::CpuLimit, format!("killed by {name}: CPU time limit reached"))
            } else {
                (Outcome::Signaled, format!("killed by signal {s} ({name})"))
            }
        }
        (None, None) => (Outcome::Signaled, "ended without an exit status".into()),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Copies a child's stream to its log file as fast as it comes; on stdout, also reads the
/// agent protocol lines. A failing log file never stops the copy (the agent must not block).
async fn copy_stream<R: AsyncRead + Unpin>(
    mut src: R,
    mut log: tokio::fs::File,
    protocol: Option<(mpsc::UnboundedSender<Fact>, AttemptKey)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut overlong = false;
    let mut log_ok = true;
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if log_ok && let Err(e) = log.write_all(chunk).await {
            tracing::warn!(error = %e, "cannot write the attempt log; output is dropped from now on");
            log_ok = false;
        }
        if let Some((facts, key)) = &protocol {
            for &b in chunk {
                if b == b'\n' {
                    if !overlong {
                        parse_line(&line, facts, key);
                    }
                    line.clear();
                    overlong = false;
                } else if !overlong {
                    line.push(b);
                    // Only protocol lines are kept whole; other lines are dropped early.
                    let is_protocol = if line.len() <= PREFIX.len() {
                        PREFIX.starts_with(&line)
                    } else {
                        line.starts_with(PREFIX)
                    };
                    if !is_protocol || line.len() > MAX_PROTOCOL_LINE {
                        if is_protocol {
                            let _ = facts.send(Fact::Line {
                                key: key.clone(),
                                line: AgentLine::Malformed(format!(
                                    "protocol line longer than {MAX_PROTOCOL_LINE} bytes ignored"
                                )),
                            });
                        }
                        overlong = true;
                        line.clear();
                    }
                }
            }
        }
    }
    if let Some((facts, key)) = &protocol
        && !overlong
    {
        parse_line(&line, facts, key);
    }
    let _ = log.flush().await;
}

fn parse_line(line: &[u8], facts: &mpsc::UnboundedSender<Fact>, key: &AttemptKey) {
    if !line.starts_with(b"::orch-") {
        return;
    }
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    if let Some(parsed) = parse_protocol_line(text) {
        let _ = facts.send(Fact::Line {
            key: key.clone(),
            line: parsed,
        });
    }
}

/// Reads one `::orch-KIND::JSON` line. `None` for lines that are not (or not yet) handled.
pub fn parse_protocol_line(text: &str) -> Option<AgentLine> {
    if let Some(json) = text.strip_prefix("::orch-checkpoint::") {
        if json.len() > MAX_CHECKPOINT_BYTES {
            return Some(AgentLine::Malformed(format!(
                "checkpoint of {} bytes is larger than the limit of {MAX_CHECKPOINT_BYTES}",
                json.len()
            )));
        }
        return Some(match serde_json::from_str::<serde_json::Value>(json) {
            Ok(v) => AgentLine::Checkpoint(v.to_string()),
            Err(e) => AgentLine::Malformed(format!("checkpoint is not JSON: {e}")),
        });
    }
    if let Some(json) = text.strip_prefix("::orch-progress::") {
        #[derive(serde::Deserialize)]
        struct P {
            percent: Option<f64>,
            #[serde(default)]
            message: String,
        }
        return Some(match serde_json::from_str::<P>(json) {
            Ok(p) if p.percent.is_none_or(|x| x.is_finite()) => AgentLine::Progress {
                percent: p.percent.map(|x| x.clamp(0.0, 100.0)),
                message: p.message.chars().take(1000).collect(),
            },
            Ok(_) => AgentLine::Malformed("progress percent is not a number".into()),
            Err(e) => AgentLine::Malformed(format!("progress is not valid JSON: {e}")),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_outcomes() {
        assert_eq!(classify(Some(0), None).0, Outcome::Success);
        assert_eq!(classify(Some(3), None).0, Outcome::ExitFailure);
        assert_eq!(classify(None, Some(9)).0, Outcome::Signaled);
        assert!(classify(None, Some(9)).1.contains("SIGKILL"));
        assert_eq!(classify(None, Some(libc::SIGXCPU)).0, Outcome::CpuLimit);
    }

    #[test]
    fn protocol_lines() {
        assert_eq!(
            parse_protocol_line(r#"::orch-checkpoint::{"done": 3}"#),
            Some(AgentLine::Checkpoint(r#"{"done":3}"#.into()))
        );
        assert!(matches!(
            parse_protocol_line("::orch-checkpoint::{oops"),
            Some(AgentLine::Malformed(_))
        ));
        assert_eq!(
            parse_protocol_line(r#"::orch-progress::{"percent":150,"message":"m"}"#),
            Some(AgentLine::Progress {
                percent: Some(100.0),
                message: "m".into()
            })
        );
        assert_eq!(parse_protocol_line("hello"), None);
        let big = format!("::orch-checkpoint::\"{}\"", "x".repeat(MAX_CHECKPOINT_BYTES));
        assert!(matches!(parse_protocol_line(&big), Some(AgentLine::Malformed(m)) if m.contains("limit")));
    }
}
