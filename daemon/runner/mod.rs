//! One task per attempt: builds the command, starts it in its own session (and cgroup leaf
//! with the cgroup backend) with its limits, feeds stdin, tees stdout/stderr into the
//! attempt's log (never blocking the agent), reads `::orch-*::` lines, enforces the
//! wall-clock and idle timeouts and the CPU budget, samples resource use, pauses and
//! resumes the tree, stops it on request (TERM, grace, KILL), reaps the main process
//! (pidfd + wait4), empties the tree, and classifies the outcome. How stdout lines are
//! read is in `agent`, how the end becomes an outcome in `outcome`.

mod agent;
mod outcome;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::limits::{Leaf, Prepared};
use crate::logfile::{LogWriter, Stream};
use crate::model::{End, Limits, Outcome, now_ms};
use crate::sys::{self, ChildSetup, Reaped, Signal};

pub use crate::model::{Control, StopReason};
pub use agent::{AgentLine, LineParser, Prices, ThreadTotals, Threads, UsageFormat};
pub use outcome::{Classify, classify};

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
    /// The attempt's log file (framed stdout + stderr, see `logfile`).
    pub log: PathBuf,
    pub log_max_bytes: u64,
    /// Written before the start when the step has a checkpoint: `(path, JSON)`.
    pub checkpoint: Option<(PathBuf, String)>,
    /// Written before the start for an agent that reads its prompt from a file
    /// (`prompt = "file"`): `(path, prompt)`; removed when the attempt ends.
    pub prompt_file: Option<(PathBuf, String)>,
    /// Written before the start for an agent given MCP servers (`mcp`, `mcp_self`): its
    /// MCP configuration `(path, JSON)`, readable only by the agent's user; removed when
    /// the attempt ends.
    pub mcp_config: Option<(PathBuf, String)>,
    pub grace: Duration,
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub limits: Limits,
    /// The attempt's limits as prepared by the backend.
    pub prepared: Prepared,
    /// How usage and cost are read from stdout.
    pub usage_format: UsageFormat,
    /// The `[prices]` table and the profile's model, for the running estimate of an
    /// agent's cost.
    pub prices: crate::runner::Prices,
    /// A resumed session's usage before this attempt (for agents that report a session's
    /// running total, so that only this attempt's part is counted).
    pub session_usage: Option<crate::model::Usage>,
    /// Where agent threads' running totals are kept (read and written by the parser).
    pub threads: Option<agent::Threads>,
    /// Run as this user (uid, gid, supplementary groups): a root daemon runs each agent
    /// as the user who submitted it.
    pub run_as: Option<(u32, u32, Vec<u32>)>,
    /// Where it runs: empty for this machine, `slurm` for a Slurm cluster.
    pub executor: String,
    /// The step's id (cluster job names carry it).
    pub step_id: String,
    /// Journal mode (the shim executor): stdout lines the usage format may read are
    /// appended to this file unparsed, and orchd parses them (`LineParser::with_journal`).
    pub protocol_journal: Option<PathBuf>,
    /// A planner attempt's plan file (`ORCH_PLAN_FILE`): made empty, owned by the
    /// agent's user, before the start; read by the engine after the end.
    pub plan_file: Option<PathBuf>,
    /// A private workspace to make before the start (`workdir` becomes it), as whom.
    pub workspace: Option<(crate::workspace::Prep, crate::workspace::Runner)>,
}

/// How an attempt ended, and when its main process was reaped.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub end: End,
    /// When the main process was reaped (for the exit-to-recorded measurement).
    pub exited_at: Option<Instant>,
}

impl AttemptEnd {
    /// An attempt that could not start.
    pub fn spawn_error(message: String) -> AttemptEnd {
        AttemptEnd {
            end: End::of(Outcome::SpawnError, &message),
            exited_at: None,
        }
    }
}

/// What a runner reports to the engine.
#[derive(Debug)]
pub enum Fact {
    Started {
        key: AttemptKey,
        /// The local process; `None` for a cluster job.
        pid: Option<u32>,
        start_ticks: Option<u64>,
        cgroup: Option<String>,
        /// The cluster job (Slurm job id).
        job_id: Option<String>,
    },
    Line {
        key: AttemptKey,
        line: AgentLine,
    },
    Usage {
        key: AttemptKey,
        peak_rss_bytes: u64,
        cpu_ms: u64,
    },
    /// A `worktree` step's branch, once made and again after the attempt.
    Branch {
        key: AttemptKey,
        branch: crate::model::Branch,
    },
    Ended {
        key: AttemptKey,
        end: AttemptEnd,
    },
    /// Agent lines parsed by orchd from a shim's protocol journal, and how far the
    /// journal has been read: the engine keeps `upto` in the attempt's record in the same
    /// store write as the lines' effects, so each line is processed exactly once.
    Protocol {
        key: AttemptKey,
        lines: Vec<AgentLine>,
        upto: u64,
    },
}

/// How often the tree's memory and CPU are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long output may still be drained after the tree is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the tree may take to empty after SIGKILL before it is reported.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the attempt on its own task; returns the control channel.
pub fn start(spec: RunSpec, facts: mpsc::UnboundedSender<Fact>) -> mpsc::UnboundedSender<Control> {
    let (tx, rx) = mpsc::unbounded_channel();
    let key = spec.key.clone();
    tokio::spawn(async move {
        let leaf = spec.prepared.cgroup.clone().map(Leaf);
        // The files handed to the agent are for this attempt only: the store keeps the
        // checkpoint, and the prompt is written again for the next attempt.
        let handed: Vec<PathBuf> = [
            spec.checkpoint
                .as_ref()
                .filter(|_| spec.run_as.is_some())
                .map(|(path, _)| path.clone()),
            spec.prompt_file.as_ref().map(|(path, _)| path.clone()),
            spec.mcp_config.as_ref().map(|(path, _)| path.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut spec = spec;
        let workspace = spec.workspace.take();
        if let Some((prep, git)) = &workspace {
            let (p, g) = (prep.clone(), git.clone());
            let made = tokio::task::spawn_blocking(move || crate::workspace::prepare(&p, &g))
                .await
                .unwrap_or_else(|e| Err(format!("the workspace task failed: {e}")));
            match made {
                Ok(made) => {
                    spec.workdir = made.workdir;
                    if let Some(branch) = made.branch {
                        let _ = facts.send(Fact::Branch {
                            key: key.clone(),
                            branch,
                        });
                    }
                }
                Err(why) => {
                    let end = AttemptEnd::spawn_error(format!("cannot make the workspace: {why}"));
                    let _ = facts.send(Fact::Ended { key, end });
                    return;
                }
            }
        }
        let end = run(spec, rx, &facts).await;
        if let Some((
            crate::workspace::Prep::Worktree {
                path,
                branch,
                message,
                ..
            },
            git,
        )) = workspace
        {
            let p = path.clone();
            let committed = tokio::task::spawn_blocking(move || {
                crate::workspace::commit_leftovers(&p, &message, &git)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the commit task failed: {e}")));
            match committed {
                Ok(head) => {
                    let _ = facts.send(Fact::Branch {
                        key: key.clone(),
                        branch: crate::model::Branch {
                            name: branch,
                            base: String::new(),
                            head,
                        },
                    });
                }
                Err(e) => {
                    tracing::warn!(objective = %key.objective_id, step = key.step_index, worktree = %path.display(), error = %e, "cannot commit what the agent left")
                }
            }
        }
        if let Some(leaf) = leaf {
            leaf.remove();
        }
        for path in handed {
            let _ = std::fs::remove_file(&path);
            // Other steps of the objective may still use the directory: then it stays.
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        // The engine may be gone during shutdown; nothing else to do then.
        let _ = facts.send(Fact::Ended { key, end });
    });
    tx
}

/// The attempt's tree: its cgroup leaf, or its session / process group.
struct Tree {
    leaf: Option<Leaf>,
    pgid: u32,
}

impl Tree {
    fn signal(&self, sig: Signal) {
        match &self.leaf {
            // Every process of the leaf, sessions that escaped the group included.
            Some(leaf) => leaf.signal(sig),
            None => {
                let _ = sys::signal_group(self.pgid, sig);
            }
        }
    }

    fn kill(&self) {
        match &self.leaf {
            Some(leaf) => {
                if let Err(e) = leaf.kill() {
                    tracing::warn!(error = %e, cgroup = %leaf.0.display(), "cgroup.kill failed; signalling each process");
                    leaf.signal(Signal::SIGKILL);
                }
            }
            None => {
                let _ = sys::signal_group(self.pgid, Signal::SIGKILL);
            }
        }
    }

    fn pause(&self, paused: bool) {
        match &self.leaf {
            Some(leaf) => {
                if let Err(e) = leaf.freeze(paused) {
                    tracing::warn!(error = %e, cgroup = %leaf.0.display(), "cannot write cgroup.freeze");
                }
            }
            None => {
                let sig = if paused {
                    Signal::SIGSTOP
                } else {
                    Signal::SIGCONT
                };
                let _ = sys::signal_group(self.pgid, sig);
            }
        }
    }

    fn usage(&self) -> sys::ProcUsage {
        match &self.leaf {
            Some(leaf) => {
                let mut u = sys::usage_of(leaf.pids());
                if let Some(peak) = leaf.memory_peak() {
                    u.rss_bytes = u.rss_bytes.max(peak);
                }
                if let Some(us) = leaf.cpu_usec() {
                    u.cpu_ms = u.cpu_ms.max(us / 1000);
                }
                u
            }
            None => sys::usage_of(sys::session_members(self.pgid)),
        }
    }

    /// After the main process was reaped: the tree's last usage, then kills what is left
    /// and waits (bounded) until nothing is ([`Tree::empty`]); returns the usage and
    /// whether the tree is empty. A session found empty is done: its members are read
    /// once (a walk of /proc), not three times, and nothing can join a session without
    /// a member to fork it.
    async fn finish(&self) -> (sys::ProcUsage, bool) {
        if self.leaf.is_none() {
            let members = sys::session_members(self.pgid);
            if members.is_empty() {
                return (sys::ProcUsage::default(), true);
            }
            let usage = sys::usage_of(members);
            return (usage, self.empty().await);
        }
        (self.usage(), self.empty().await)
    }

    /// Kills what is left and waits (bounded) until nothing is: for a cgroup, until
    /// `cgroup.events` says `populated 0`. Returns whether the tree is empty.
    async fn empty(&self) -> bool {
        self.kill();
        match &self.leaf {
            Some(leaf) => wait_unpopulated(leaf, EMPTY_TIMEOUT).await,
            None => {
                // A session has no change notification of its own: wait on a pidfd of
                // each member still there (readable when it exits).
                let deadline = Instant::now() + EMPTY_TIMEOUT;
                for pid in sys::session_members(self.pgid) {
                    let Ok(fd) = sys::pidfd_open(pid).and_then(sys::readable_fd) else {
                        continue;
                    };
                    let _ = tokio::time::timeout_at(deadline, fd.readable()).await;
                }
                sys::session_members(self.pgid).is_empty()
            }
        }
    }
}

/// Waits for `cgroup.events` to report `populated 0`, woken by inotify.
async fn wait_unpopulated(leaf: &Leaf, timeout: Duration) -> bool {
    if !leaf.populated() {
        return true;
    }
    let watch = sys::Watch::new(&leaf.0.join("cgroup.events"), sys::WatchFlags::IN_MODIFY);
    let Ok(watch) = watch else {
        return !leaf.populated();
    };
    let deadline = Instant::now() + timeout;
    loop {
        if !leaf.populated() {
            return true;
        }
        if !matches!(
            tokio::time::timeout_at(deadline, watch.changed()).await,
            Ok(Ok(()))
        ) {
            return !leaf.populated();
        }
    }
}

/// The instant `d` from now, for a deadline. Durations are bounded where they come in
/// (plans, config); this also keeps one that is not (a record stored before the bounds)
/// from overflowing `Instant`: it is cut to the longest a plan may ask for.
fn later(d: Duration) -> Instant {
    let longest = Duration::from_millis(orch_proto::validate::MAX_DURATION_MS);
    Instant::now() + d.min(longest)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn describe_spawn_error(program: &str, workdir: &std::path::Path, e: &std::io::Error) -> String {
    if let Some(e) = sys::workdir_error(e) {
        let why = match e.kind() {
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            std::io::ErrorKind::NotFound => "no such directory".to_string(),
            std::io::ErrorKind::NotADirectory => "not a directory".to_string(),
            _ => e.to_string(),
        };
        return format!("cannot use workdir {}: {why}", workdir.display());
    }
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => {
            "no such program (not found on PATH or not a file)".to_string()
        }
        std::io::ErrorKind::PermissionDenied => "permission denied (not executable?)".to_string(),
        _ => e.to_string(),
    };
    format!("cannot start `{program}`: {why}")
}

async fn run(
    spec: RunSpec,
    mut control: mpsc::UnboundedReceiver<Control>,
    facts: &mpsc::UnboundedSender<Fact>,
) -> AttemptEnd {
    let Some(program) = spec.argv.first().cloned() else {
        return AttemptEnd::spawn_error("empty command".into());
    };
    // The workdir is not looked at here, as the daemon: the child enters it after
    // switching to the agent's user, so a failure tells only what that user could see.
    let Ok(workdir) =
        std::ffi::CString::new(spec.workdir.clone().into_os_string().into_encoded_bytes())
    else {
        return AttemptEnd::spawn_error(format!(
            "cannot use workdir {}: it contains a NUL byte",
            spec.workdir.display()
        ));
    };
    let log = match LogWriter::create(&spec.log, spec.log_max_bytes) {
        // Counted against the daemon's log budget, per user when run as another user.
        Ok(w) => {
            // Output dropped on a full disk is told in the event log as orchd's own
            // progress note of the attempt.
            let (facts, key) = (facts.clone(), spec.key.clone());
            w.drawing_from(crate::logfile::budget(), spec.run_as.as_ref().map(|r| r.0))
                .noticing(Box::new(move |message| {
                    let _ = facts.send(Fact::Line {
                        key: key.clone(),
                        line: AgentLine::Progress {
                            percent: None,
                            message,
                        },
                    });
                }))
        }
        Err(e) => {
            return AttemptEnd::spawn_error(format!(
                "cannot create the log file {}: {e}",
                spec.log.display()
            ));
        }
    };
    let journal = match &spec.protocol_journal {
        Some(path) => match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                return AttemptEnd::spawn_error(format!(
                    "cannot open the protocol journal {}: {e}",
                    path.display()
                ));
            }
        },
        None => None,
    };
    let mut env = spec.env.clone();
    if let Some((path, json)) = &spec.checkpoint {
        let owner = spec.run_as.as_ref().map(|(u, g, _)| (*u, *g));
        if let Err(e) = write_private(path, json, owner) {
            return AttemptEnd::spawn_error(format!(
                "cannot write the checkpoint file {}: {e}",
                path.display()
            ));
        }
        env.push(("ORCH_CHECKPOINT_FILE".into(), path.display().to_string()));
    }
    if let Some((path, json)) = &spec.mcp_config {
        let owner = spec.run_as.as_ref().map(|(u, g, _)| (*u, *g));
        if let Err(e) = write_private(path, json, owner) {
            return AttemptEnd::spawn_error(format!(
                "cannot write the MCP configuration {}: {e}",
                path.display()
            ));
        }
    }
    if let Some(path) = &spec.plan_file {
        let owner = spec.run_as.as_ref().map(|(u, g, _)| (*u, *g));
        if let Err(e) = write_private(path, "", owner) {
            return AttemptEnd::spawn_error(format!(
                "cannot create the plan file {}: {e}",
                path.display()
            ));
        }
        env.push(("ORCH_PLAN_FILE".into(), path.display().to_string()));
    }
    if let Some((path, prompt)) = &spec.prompt_file {
        let owner = spec.run_as.as_ref().map(|(u, g, _)| (*u, *g));
        if let Err(e) = write_private(path, prompt, owner) {
            return AttemptEnd::spawn_error(format!(
                "cannot write the prompt file {}: {e}",
                path.display()
            ));
        }
    }
    let setup = ChildSetup {
        cgroup_procs: None,
        rlimits: spec.prepared.rlimits.clone(),
        run_as: spec.run_as.clone(),
        workdir: Some(workdir),
    };
    let spawned_at = Instant::now();
    let child = match sys::spawn(sys::SpawnSpec {
        argv: &spec.argv,
        env: &env,
        stdin_pipe: spec.stdin.is_some(),
        setup,
        cgroup: spec.prepared.cgroup.as_deref(),
    }) {
        Ok(c) => c,
        Err(e) => {
            return AttemptEnd::spawn_error(describe_spawn_error(&program, &spec.workdir, &e));
        }
    };
    let spawn_us = spawned_at.elapsed().as_micros() as u64;
    let pid = child.pid;
    let tree = Tree {
        leaf: spec.prepared.cgroup.clone().map(Leaf),
        pgid: pid,
    };
    let _ = facts.send(Fact::Started {
        key: spec.key.clone(),
        pid: Some(pid),
        job_id: None,
        start_ticks: sys::process_start_ticks(pid),
        cgroup: spec
            .prepared
            .cgroup
            .as_ref()
            .map(|c| c.display().to_string()),
    });
    tracing::debug!(objective = %spec.key.objective_id, step = spec.key.step_index, attempt = spec.key.number, pid, spawn_us, vfork = child.vfork, "attempt started");

    // Exit notification: a pidfd becomes readable when the process exits.
    let exit = match sys::pidfd_open(pid).and_then(sys::readable_fd) {
        Ok(fd) => fd,
        Err(e) => {
            tree.kill();
            let _ = sys::wait_exit(pid);
            return AttemptEnd::spawn_error(format!("cannot watch pid {pid}: {e}"));
        }
    };

    if let (Some(stdin), Some(data)) = (child.stdin, spec.stdin.clone())
        && let Ok(mut w) = tokio::net::unix::pipe::Sender::from_owned_fd(stdin)
    {
        tokio::spawn(async move {
            // An agent that does not read its stdin is fine.
            let _ = w.write_all(&data).await;
        });
    }
    let last_output = Arc::new(AtomicI64::new(now_ms()));
    let (writer_tx, writer_task) = log.spawn();
    let pipe = |fd: Option<OwnedFd>| {
        fd.and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok())
    };
    let stdout = pipe(Some(child.stdout)).map(|r| {
        tokio::spawn(copy_stream(
            r,
            Stream::Stdout,
            writer_tx.clone(),
            last_output.clone(),
            Some((
                facts.clone(),
                spec.key.clone(),
                LineParser::new(spec.usage_format)
                    .with_prices(spec.prices.clone())
                    .with_session_usage(spec.session_usage)
                    .with_threads(spec.threads.clone())
                    .with_journal(journal),
            )),
            None,
        ))
    });
    let stderr_tail = Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let stderr = pipe(Some(child.stderr)).map(|r| {
        tokio::spawn(copy_stream(
            r,
            Stream::Stderr,
            writer_tx.clone(),
            last_output.clone(),
            None,
            Some(stderr_tail.clone()),
        ))
    });
    drop(writer_tx);

    let mut deadline = spec.timeout.map(later);
    let mut stop: Option<(Outcome, String)> = None;
    let mut kill_at: Option<Instant> = None;
    let mut paused_at: Option<Instant> = None;
    let mut peak = sys::ProcUsage::default();
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_check = |last: i64| {
        spec.idle_timeout.map(|t| {
            let idle_ms = i64::try_from(t.as_millis()).unwrap_or(i64::MAX);
            let left = last.saturating_add(idle_ms).saturating_sub(now_ms()).max(0);
            later(Duration::from_millis(left as u64))
        })
    };
    let mut idle_at = idle_check(last_output.load(Ordering::Relaxed));
    let cpu_budget_ms = spec.limits.cpu_seconds.map(|s| s.saturating_mul(1000));

    let reaped: Reaped = loop {
        let running = stop.is_none() && paused_at.is_none();
        tokio::select! {
            guard = exit.readable() => {
                match sys::reap(pid) {
                    Ok(Some(r)) => break r,
                    Ok(None) => { if let Ok(mut g) = guard { g.clear_ready(); } }
                    Err(e) => {
                        tracing::error!(pid, error = %e, "wait4 failed");
                        break Reaped { exit_code: None, signal: None, max_rss_bytes: 0, cpu_ms: 0 };
                    }
                }
            }
            Some(c) = control.recv() => match c {
                Control::Stop(reason) if stop.is_none() => {
                    let (outcome, why) = match reason {
                        StopReason::Cancelled => (Outcome::Cancelled, "cancelled"),
                        StopReason::Shutdown => (Outcome::Interrupted, "the daemon is stopping"),
                        StopReason::BudgetExceeded => (Outcome::BudgetExceeded, "stopped: the budget is exhausted"),
                    };
                    stop = Some((outcome, why.to_string()));
                    tree.signal(Signal::SIGTERM);
                    if paused_at.take().is_some() {
                        // A frozen / stopped tree must run to handle SIGTERM.
                        tree.pause(false);
                    }
                    kill_at = Some(later(spec.grace));
                }
                Control::Stop(_) => {}
                Control::Pause if paused_at.is_none() && stop.is_none() => {
                    tree.pause(true);
                    paused_at = Some(Instant::now());
                }
                Control::Resume => {
                    if let Some(since) = paused_at.take() {
                        tree.pause(false);
                        // Time spent paused does not count against the timeouts.
                        let paused = since.elapsed();
                        deadline = deadline.map(|d| d.checked_add(paused).unwrap_or(d));
                        let paused_ms = i64::try_from(paused.as_millis()).unwrap_or(i64::MAX);
                        last_output.fetch_add(paused_ms, Ordering::Relaxed);
                        idle_at = idle_check(last_output.load(Ordering::Relaxed));
                    }
                }
                Control::Pause => {}
            },
            _ = sleep_until_opt(deadline), if running => {
                let t = spec.timeout.unwrap_or_default();
                stop = Some((Outcome::Timeout, format!("timed out after {}", orch_proto::units::format_duration_ms(t.as_millis() as u64))));
                tree.signal(Signal::SIGTERM);
                kill_at = Some(later(spec.grace));
            }
            _ = sleep_until_opt(idle_at), if running => {
                let last = last_output.load(Ordering::Relaxed);
                let t = spec.idle_timeout.unwrap_or_default();
                if now_ms() - last >= t.as_millis() as i64 {
                    stop = Some((Outcome::Timeout, format!("no output for {} (idle timeout)", orch_proto::units::format_duration_ms(t.as_millis() as u64))));
                    tree.signal(Signal::SIGTERM);
                    kill_at = Some(later(spec.grace));
                } else {
                    idle_at = idle_check(last);
                }
            }
            _ = sleep_until_opt(kill_at) => {
                tree.kill();
                kill_at = None;
            }
            _ = sample.tick(), if paused_at.is_none() => {
                let u = tree.usage();
                peak.rss_bytes = peak.rss_bytes.max(u.rss_bytes);
                peak.cpu_ms = peak.cpu_ms.max(u.cpu_ms);
                let _ = facts.send(Fact::Usage { key: spec.key.clone(), peak_rss_bytes: peak.rss_bytes, cpu_ms: peak.cpu_ms });
                if let Some(budget) = cpu_budget_ms
                    && stop.is_none()
                    && u.cpu_ms >= budget
                {
                    stop = Some((Outcome::CpuLimit, format!("used {} ms of CPU, over the limit of {} s", u.cpu_ms, budget / 1000)));
                    tree.kill();
                }
            }
        }
    };
    let exited_at = Instant::now();
    // The attempt is over when its main process exits: what it left behind dies too,
    // sessions that escaped the process group included (cgroup backend).
    let (final_usage, empty) = tree.finish().await;
    // Once the tree is gone the pipes reach EOF at once. With the rlimit backend a
    // process that escaped the session may still hold them: the drain then gets one
    // short shared deadline and is cut off, which also lets the log writer finish.
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    for task in [stdout, stderr].into_iter().flatten() {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(drain_until, task).await.is_err() {
            abort.abort();
            tracing::warn!(objective = %spec.key.objective_id, attempt = spec.key.number, "a process outside the attempt's tree still holds its output; no longer captured");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    let stderr_tail = stderr_tail
        .lock()
        .map(|t| t.iter().copied().collect::<Vec<u8>>())
        .unwrap_or_default();
    let peak_rss_bytes = peak
        .rss_bytes
        .max(final_usage.rss_bytes)
        .max(reaped.max_rss_bytes);
    let cpu_ms = peak.cpu_ms.max(final_usage.cpu_ms).max(reaped.cpu_ms);
    let leaf_oom = tree.leaf.as_ref().map(|l| l.oom_kills()).unwrap_or(0);
    let (outcome, mut message) = match stop {
        Some(s) => s,
        None => classify(&Classify {
            exit_code: reaped.exit_code,
            signal: reaped.signal,
            oom_kills: leaf_oom,
            memory_by_cgroup: spec.prepared.memory_by_cgroup,
            memory_limit: spec.limits.memory_bytes,
            stderr_tail: &String::from_utf8_lossy(&stderr_tail),
        }),
    };
    if !empty {
        message.push_str(if message.is_empty() { "" } else { "; " });
        message.push_str("some processes of the tree did not exit after SIGKILL");
    }
    tracing::debug!(objective = %spec.key.objective_id, attempt = spec.key.number, pid, exit_to_report_us = exited_at.elapsed().as_micros() as u64, "attempt reaped");
    AttemptEnd {
        end: End {
            outcome,
            exit_code: reaped.exit_code,
            signal: reaped.signal,
            message,
            peak_rss_bytes,
            cpu_ms,
            ended_ms: None,
        },
        exited_at: Some(exited_at),
    }
}

/// Writes a checkpoint file that only its reader can read: mode 0600, given to `owner` (the
/// agent's user) when that is not the daemon's. Its directories (`checkpoints/` and the
/// objective's) are 0711 under a root daemon, so another user's agent can reach its own file
/// without listing anything, and 0700 otherwise. A symbolic link in the file's place is
/// refused rather than followed.
fn write_private(
    path: &std::path::Path,
    data: &str,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir_mode = if sys::effective_uid() == 0 {
        0o711
    } else {
        0o700
    };
    if let Some(dir) = path.parent() {
        for d in [dir.parent(), Some(dir)].into_iter().flatten() {
            sys::private_dir(d, dir_mode)?;
        }
    }
    let mut f = sys::create_private(path, owner)?;
    std::io::Write::write_all(&mut f, data.as_bytes())?;
    Ok(())
}

/// Copies a child's stream into the log as fast as it comes; on stdout, also reads the
/// agent protocol lines. Returns the last few KiB (for classifying allocation failures).
async fn copy_stream<R: AsyncRead + Unpin>(
    mut src: R,
    stream: Stream,
    log: crate::logfile::LogTx,
    last_output: Arc<AtomicI64>,
    mut protocol: Option<(mpsc::UnboundedSender<Fact>, AttemptKey, LineParser)>,
    tail: Option<Arc<std::sync::Mutex<VecDeque<u8>>>>,
) {
    const TAIL: usize = 4096;
    let mut buf = vec![0u8; 64 * 1024];
    let mut dropped = 0u64;
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        last_output.store(now_ms(), Ordering::Relaxed);
        let chunk = &buf[..n];
        if let Some(tail) = &tail
            && let Ok(mut t) = tail.lock()
        {
            t.extend(&chunk[chunk.len().saturating_sub(TAIL)..]);
            let excess = t.len().saturating_sub(TAIL);
            t.drain(..excess);
        }
        // Never block the agent: when the disk cannot keep up, drop and say so.
        if !log.send(stream, chunk.to_vec()) {
            dropped += n as u64;
        } else if dropped > 0 {
            tracing::warn!(
                bytes = dropped,
                "log writer fell behind; output was dropped from the log"
            );
            dropped = 0;
        }
        if let Some((facts, key, parser)) = &mut protocol {
            for line in parser.feed(chunk) {
                let _ = facts.send(Fact::Line {
                    key: key.clone(),
                    line,
                });
            }
        }
    }
    if let Some((facts, key, parser)) = &mut protocol {
        for line in parser.finish() {
            let _ = facts.send(Fact::Line {
                key: key.clone(),
                line,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::symlink_metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn a_checkpoint_is_never_written_through_a_link() {
        let base = tempfile::tempdir().expect("tempdir");
        let file = base.path().join("checkpoints/obj/step.json");
        std::fs::create_dir(base.path().join("checkpoints")).expect("mkdir");
        write_private(&file, "{\"n\":1}", None).expect("first write");
        assert_eq!(mode(&file), 0o600);
        // A link put in its place is refused, not followed.
        let elsewhere = base.path().join("elsewhere");
        std::fs::write(&elsewhere, "keep").expect("write");
        std::fs::remove_file(&file).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &file).expect("symlink");
        assert!(write_private(&file, "{\"n\":2}", None).is_err());
        assert_eq!(
            std::fs::read_to_string(&elsewhere).ok().as_deref(),
            Some("keep")
        );
    }

    #[test]
    fn a_loose_checkpoint_directory_of_the_daemon_is_tightened() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("checkpoints");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        write_private(&dir.join("obj/step.json"), "{}", None).expect("written");
        let want = if sys::effective_uid() == 0 {
            0o711
        } else {
            0o700
        };
        assert_eq!(mode(&dir), want);
        assert_eq!(mode(&dir.join("obj")), want);
    }
}
