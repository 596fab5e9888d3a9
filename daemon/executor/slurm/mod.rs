//! The Slurm executor: each attempt is one batch job (`sbatch --parsable`), submitted as
//! the objective's owner. The job writes stdout and stderr to files in its directory on
//! shared storage; orchd follows them by inotify into the attempt's log and the agent line
//! parser, exactly like local output. Its state is asked of `scontrol show job -o` at an
//! interval that backs off while nothing happens (output, the exit marker the batch script
//! writes, or an order bring it back), and mapped to an outcome by the table in `states`.
//! Orders: `scancel`, `scontrol suspend`/`resume`. After a restart orchd re-attaches to
//! the job by id (or by its unique name, when the crash came before the id was recorded)
//! and goes on from the output it had already logged.

pub mod script;
pub mod states;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::SlurmConfig;
use crate::logfile::{LogReader, LogTx, LogWriter, Stream};
use crate::model::{Attempt, Control, End, Outcome, StopReason};
use crate::runner::{AttemptEnd, AttemptKey, Fact, LineParser, RunSpec};
use crate::sys;

use super::{AttemptHandle, Executor, Facts, Reattached};
use states::{Asked, JobView};

/// How long `sinfo` may take for `daemon status`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Slurm command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// After an order or the exit marker the job's end is near: it is asked this often,
/// for at most `NEAR_FOR`.
const NEAR_EVERY: Duration = Duration::from_millis(200);
const NEAR_FOR: Duration = Duration::from_secs(15);
/// The most read from an output file at once (then the rest, in turn).
const READ_AT_ONCE: u64 = 4 << 20;
/// How much of a job's stderr is kept for classifying its end.
const TAIL: u64 = 8192;

pub struct SlurmExecutor {
    cfg: SlurmConfig,
    /// The engine's logs directory and per-attempt cap, for re-attached attempts (which
    /// have no `RunSpec`).
    logs_dir: PathBuf,
    log_max_bytes: u64,
    /// The agent profiles at start: how a re-attached attempt's stdout is read.
    agents: std::collections::BTreeMap<String, crate::config::AgentProfile>,
    prices: std::sync::Arc<std::collections::BTreeMap<String, crate::config::Price>>,
}

/// The health line of `daemon status`.
pub struct Health {
    pub healthy: bool,
    pub detail: String,
}

impl SlurmExecutor {
    /// The executor of `daemon.executors.slurm`, for a daemon whose config is `daemon`.
    pub fn new(cfg: SlurmConfig, daemon: &crate::config::Config) -> SlurmExecutor {
        SlurmExecutor {
            cfg,
            logs_dir: daemon.state_dir().join("logs"),
            log_max_bytes: daemon.logs.max_attempt_bytes.0,
            agents: daemon.agents.clone(),
            prices: std::sync::Arc::new(daemon.prices.clone()),
        }
    }

    /// What `sinfo` says of the nodes (of the configured partition).
    pub async fn health(&self) -> Health {
        let mut args = vec!["-h".to_string(), "-o".into(), "%P %a %D %T".into()];
        if let Some(p) = &self.cfg.partition {
            args.push(format!("--partition={p}"));
        }
        // `daemon status` waits for it: a cluster that does not answer soon is unhealthy.
        let asked = tokio::time::timeout(HEALTH_TIMEOUT, run(&self.cfg.sinfo, &args, None)).await;
        let answer = asked.unwrap_or_else(|_| {
            Err(format!(
                "`{}` did not answer within {HEALTH_TIMEOUT:?}",
                self.cfg.sinfo.display()
            ))
        });
        match answer {
            Ok(out) => {
                let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
                let usable = lines.iter().any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.get(1) == Some(&"up")
                        && w.get(3).is_some_and(|s| {
                            ["idle", "mixed", "allocated", "completing"]
                                .iter()
                                .any(|ok| s.starts_with(ok))
                        })
                });
                Health {
                    healthy: usable,
                    detail: if lines.is_empty() {
                        "sinfo: no partition".into()
                    } else {
                        format!("sinfo: {}", lines.join(", "))
                    },
                }
            }
            Err(e) => Health {
                healthy: false,
                detail: e,
            },
        }
    }
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn start(&self, spec: RunSpec, facts: Facts) -> AttemptHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = self.cfg.clone();
        tokio::spawn(async move {
            let key = spec.key.clone();
            let end = match submit(&cfg, &spec).await {
                Ok(job) => {
                    let _ = facts.send(Fact::Started {
                        key: key.clone(),
                        pid: None,
                        start_ticks: None,
                        cgroup: None,
                        job_id: Some(job.clone()),
                    });
                    follow(&cfg, Followed::of(&spec, job, false), rx, &facts).await
                }
                Err(message) => AttemptEnd::spawn_error(message),
            };
            let _ = facts.send(Fact::Ended { key, end });
        });
        AttemptHandle::new(tx)
    }

    fn reattach(&self, a: &Attempt, facts: Facts) -> Reattached {
        let dir = script::job_dir(
            &self.cfg.output_dir,
            &a.objective_id,
            a.step_index,
            a.number,
        );
        let name = format!("orch.{}.{}.{}", a.objective_id, a.step_id, a.number);
        // Synchronous here (recovery runs before the socket is bound): a short look-up.
        let job = match &a.job_id {
            Some(j) => Some(j.clone()),
            None => find_by_name(&self.cfg, &name),
        };
        let Some(job) = job else {
            // Never submitted, or gone without a trace: nothing runs.
            let _ = std::fs::remove_dir_all(&dir);
            return Reattached::Gone { killed: false };
        };
        tracing::info!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, job = %job, "re-attaching to a Slurm job");
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = self.cfg.clone();
        let key = AttemptKey {
            objective_id: a.objective_id.clone(),
            step_index: a.step_index,
            number: a.number,
        };
        let recorded = a.job_id.is_some();
        let followed = Followed {
            key: key.clone(),
            job: job.clone(),
            dir,
            log: crate::logfile::attempt_log(&self.logs_dir, &a.objective_id, &a.step_id, a.number),
            // Its agent's usage format and model, as the profile has them now; the step's
            // timeouts are not in the attempt record: Slurm's `--time` still holds.
            usage_format: self
                .agents
                .get(&a.agent)
                .map_or(crate::runner::UsageFormat::OrchLines, |p| {
                    crate::runner::UsageFormat::from_name(&p.usage)
                }),
            prices: crate::runner::Prices {
                table: self.prices.clone(),
                model: self
                    .agents
                    .get(&a.agent)
                    .and_then(|p| p.model.clone())
                    .unwrap_or_default(),
            },
            timeout: None,
            idle_timeout: None,
            log_max_bytes: self.log_max_bytes,
            reattached: true,
        };
        tokio::spawn(async move {
            if !recorded {
                let _ = facts.send(Fact::Started {
                    key: key.clone(),
                    pid: None,
                    start_ticks: None,
                    cgroup: None,
                    job_id: Some(job),
                });
            }
            let end = follow(&cfg, followed, rx, &facts).await;
            let _ = facts.send(Fact::Ended { key, end });
        });
        Reattached::Attached(AttemptHandle::new(tx))
    }
}

/// One job being followed.
struct Followed {
    key: AttemptKey,
    job: String,
    dir: PathBuf,
    log: PathBuf,
    usage_format: crate::runner::UsageFormat,
    prices: crate::runner::Prices,
    timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    log_max_bytes: u64,
    reattached: bool,
}

impl Followed {
    fn of(spec: &RunSpec, job: String, reattached: bool) -> Followed {
        Followed {
            key: spec.key.clone(),
            job,
            dir: script::job_dir(
                Path::new(""),
                &spec.key.objective_id,
                spec.key.step_index,
                spec.key.number,
            ),
            log: spec.log.clone(),
            usage_format: spec.usage_format,
            prices: spec.prices.clone(),
            timeout: spec.timeout,
            idle_timeout: spec.idle_timeout,
            log_max_bytes: spec.log_max_bytes,
            reattached,
        }
    }
}

/// Runs a Slurm command (as `user`, when given: sbatch as the objective's owner) and
/// returns its stdout, or a message naming the command and what it said.
async fn run(program: &Path, args: &[String], as_user: Option<&RunSpec>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(spec) = as_user {
        cmd.env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/");
        // The cluster's config, when orchd was pointed at one.
        if let Ok(conf) = std::env::var("SLURM_CONF")
            && !spec.env.iter().any(|(k, _)| k == "SLURM_CONF")
        {
            cmd.env("SLURM_CONF", conf);
        }
        if let Some((uid, gid, _)) = spec.run_as {
            cmd.uid(uid).gid(gid);
        }
    }
    let name = program.display().to_string();
    let out = match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("cannot run `{name}`: {e}")),
        Err(_) => {
            return Err(format!(
                "`{name}` did not answer within {COMMAND_TIMEOUT:?}"
            ));
        }
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim();
    Err(format!(
        "`{name} {}` failed ({}): {}",
        args.first().map(String::as_str).unwrap_or(""),
        out.status,
        if said.is_empty() { "no message" } else { said }
    ))
}

/// Prepares the job's directory and submits it; returns the job id or sbatch's message.
async fn submit(cfg: &SlurmConfig, spec: &RunSpec) -> Result<String, String> {
    let dir = script::job_dir(
        &cfg.output_dir,
        &spec.key.objective_id,
        spec.key.step_index,
        spec.key.number,
    );
    let owner = spec.run_as.as_ref().map(|(u, g, _)| (*u, *g));
    let mut spec = spec.clone();
    prepare_dir(&dir, owner, &mut spec).map_err(|e| {
        format!(
            "cannot prepare the job's directory {} (executors.slurm.output_dir): {e}",
            dir.display()
        )
    })?;
    let args = script::sbatch_args(cfg, &spec, &dir);
    let out = run(&cfg.sbatch, &args, Some(&spec))
        .await
        .map_err(|e| format!("sbatch refused the job: {e}"))?;
    // `--parsable`: `ID` or `ID;CLUSTER`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(format!("sbatch answered `{}`, not a job id", out.trim()));
    }
    Ok(id)
}

/// The job's directory, its script, stdin and checkpoint, given to the job's user.
fn prepare_dir(dir: &Path, owner: Option<(u32, u32)>, spec: &mut RunSpec) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let mut files = vec![(
        script::SCRIPT,
        script::batch_script(spec, dir)
            .map_err(std::io::Error::other)?
            .into_bytes(),
        0o700,
    )];
    if let Some(stdin) = &spec.stdin {
        files.push((script::STDIN, stdin.clone(), 0o600));
    }
    if let Some((_, json)) = &spec.checkpoint {
        files.push((script::CHECKPOINT, json.clone().into_bytes(), 0o600));
        let path = dir.join(script::CHECKPOINT).display().to_string();
        spec.env.retain(|(k, _)| k != "ORCH_CHECKPOINT_FILE");
        spec.env.push(("ORCH_CHECKPOINT_FILE".into(), path));
    }
    for (name, data, mode) in files {
        let p = dir.join(name);
        std::fs::write(&p, data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        chown(&p, owner)?;
    }
    if let Some((path, prompt)) = &spec.prompt_file {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, prompt)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        chown(path, owner)?;
    }
    chown(dir, owner)
}

fn chown(p: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match owner {
        Some((u, g)) => sys::set_owner(p, Some(u), Some(g)).map_err(std::io::Error::other),
        None => Ok(()),
    }
}

/// A job still queued or running under `name` (after a crash before its id was kept).
fn find_by_name(cfg: &SlurmConfig, name: &str) -> Option<String> {
    let out = std::process::Command::new(&cfg.squeue)
        .args(["-h", "-o", "%i", "-n", name])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The job's state now: `scontrol`, or once it forgot the job (`MinJobAge`), `sacct`,
/// then the job completion log. `Err` when nothing answers.
async fn job_state(cfg: &SlurmConfig, job: &str) -> Result<JobView, String> {
    let args = [
        "show".to_string(),
        "job".into(),
        "-o".into(),
        job.to_string(),
    ];
    match run(&cfg.scontrol, &args, None).await {
        Ok(out) => return Ok(states::parse_fields(&out)),
        Err(e) if !e.contains("Invalid job id") => return Err(e),
        Err(_) => {}
    }
    let sacct = [
        "-j".to_string(),
        job.to_string(),
        "-X".into(),
        "-n".into(),
        "-P".into(),
        "-o".into(),
        "State,ExitCode".into(),
    ];
    if let Ok(out) = run(&cfg.sacct, &sacct, None).await
        && let Some(v) = states::parse_sacct(&out)
    {
        return Ok(v);
    }
    if let Some(path) = &cfg.jobcomp_log
        && let Ok(text) = std::fs::read_to_string(path)
        && let Some(v) = states::find_in_jobcomp(&text, job)
    {
        return Ok(v);
    }
    Ok(JobView {
        state: "NODE_FAIL".into(),
        reason: format!("Slurm no longer knows job {job} and has no record of its end"),
        ..Default::default()
    })
}

/// Output of one stream file, read from an offset.
struct Tailer {
    path: PathBuf,
    offset: u64,
    stream: Stream,
}

impl Tailer {
    /// What was added since the last read (bounded per call).
    fn read_new(&mut self) -> Vec<u8> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let _ = f.take(READ_AT_ONCE).read_to_end(&mut buf);
        self.offset += buf.len() as u64;
        buf
    }
}

/// What the attempt's log already holds of each stream (where to go on after a restart).
fn logged_bytes(log: &Path) -> (u64, u64) {
    let mut r = LogReader::new(log);
    let (mut out, mut err) = (0u64, 0u64);
    if let Ok(chunks) = r.read_new() {
        for c in chunks {
            match c.stream {
                Stream::Stdout => out += c.data.len() as u64,
                Stream::Stderr => err += c.data.len() as u64,
            }
        }
    }
    (out, err)
}

/// Follows the job until it ends: output into the log and the parser, orders to Slurm,
/// orch's own timeouts, the state from Slurm at a backing-off interval.
async fn follow(
    cfg: &SlurmConfig,
    mut f: Followed,
    mut control: mpsc::UnboundedReceiver<Control>,
    facts: &Facts,
) -> AttemptEnd {
    if f.dir.is_relative() {
        f.dir = cfg.output_dir.join(&f.dir);
    }
    let max = f.log_max_bytes;
    let (offsets, writer) = if f.reattached {
        (logged_bytes(&f.log), LogWriter::append(&f.log, max))
    } else {
        ((0, 0), LogWriter::create(&f.log, max))
    };
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            let _ = cancel(cfg, &f.job).await;
            return AttemptEnd::spawn_error(format!(
                "cannot open the log file {}: {e}",
                f.log.display()
            ));
        }
    };
    let (log, writer_task) = writer.spawn();
    let mut out = Tailer {
        path: f.dir.join(script::STDOUT),
        offset: offsets.0,
        stream: Stream::Stdout,
    };
    let mut err = Tailer {
        path: f.dir.join(script::STDERR),
        offset: offsets.1,
        stream: Stream::Stderr,
    };
    let mut parser = LineParser::new(f.usage_format).with_prices(f.prices.clone());
    use sys::WatchFlags as W;
    let watch = sys::Watch::new(
        &f.dir,
        W::IN_MODIFY | W::IN_CREATE | W::IN_MOVED_TO | W::IN_CLOSE_WRITE,
    );
    if let Err(e) = &watch {
        tracing::warn!(job = %f.job, error = %e, "cannot watch the job's output; it is read when the job's state is asked");
    }
    let mut last_output = Instant::now();
    let mut deadline = f.timeout.map(|t| Instant::now() + t);
    let mut asked: Option<Asked> = None;
    let mut paused_at: Option<Instant> = None;
    let mut every = Duration::from_millis(cfg.poll_min.0);
    let mut next_poll = Instant::now();
    let mut near_until: Option<Instant> = None;
    let mut exit_seen = false;
    let pump = |t: &mut Tailer, parser: &mut LineParser, log: &LogTx| -> bool {
        let mut any = false;
        loop {
            let data = t.read_new();
            if data.is_empty() {
                return any;
            }
            any = true;
            let whole = data.len() < READ_AT_ONCE as usize;
            if t.stream == Stream::Stdout {
                for line in parser.feed(&data) {
                    let _ = facts.send(Fact::Line {
                        key: f.key.clone(),
                        line,
                    });
                }
            }
            if !log.send(t.stream, data) {
                tracing::warn!(job = %f.job, "log writer fell behind; output was dropped from the log");
            }
            if whole {
                return any;
            }
        }
    };
    let view = loop {
        let running = asked.is_none() && paused_at.is_none();
        let idle_at = f.idle_timeout.filter(|_| running).map(|t| last_output + t);
        tokio::select! {
            changed = async {
                match &watch {
                    Ok(w) => w.changed().await,
                    Err(_) => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    tokio::time::sleep(every).await;
                }
                let a = pump(&mut out, &mut parser, &log);
                let b = pump(&mut err, &mut parser, &log);
                if a || b {
                    last_output = Instant::now();
                    // Something happens: ask sooner.
                    every = Duration::from_millis(cfg.poll_min.0);
                    next_poll = next_poll.min(Instant::now() + every);
                }
                if !exit_seen && f.dir.join(script::EXIT).exists() {
                    exit_seen = true;
                    near_until = Some(Instant::now() + NEAR_FOR);
                    next_poll = Instant::now();
                }
            }
            Some(order) = control.recv() => {
                match order {
                    Control::Stop(reason) if asked.is_none() => {
                        asked = Some(match reason {
                            StopReason::Cancelled => Asked::Cancel,
                            StopReason::Shutdown => Asked::Shutdown,
                            StopReason::BudgetExceeded => Asked::Budget,
                        });
                        if let Err(e) = cancel(cfg, &f.job).await {
                            tracing::warn!(job = %f.job, error = %e, "scancel failed");
                        }
                        near_until = Some(Instant::now() + NEAR_FOR);
                        next_poll = Instant::now() + NEAR_EVERY;
                    }
                    Control::Pause if paused_at.is_none() && asked.is_none() => {
                        match scontrol(cfg, "suspend", &f.job).await {
                            Ok(_) => paused_at = Some(Instant::now()),
                            Err(e) => tracing::warn!(job = %f.job, error = %e, "cannot suspend the job"),
                        }
                    }
                    Control::Resume => {
                        if let Some(since) = paused_at.take() {
                            if let Err(e) = scontrol(cfg, "resume", &f.job).await {
                                tracing::warn!(job = %f.job, error = %e, "cannot resume the job");
                            }
                            let paused = since.elapsed();
                            deadline = deadline.map(|d| d + paused);
                            last_output += paused;
                        }
                    }
                    _ => {}
                }
            }
            _ = sleep_until_opt(deadline), if running => {
                let t = f.timeout.unwrap_or_default();
                asked = Some(Asked::Timeout(format!("timed out after {}", orch_proto::units::format_duration_ms(t.as_millis() as u64))));
                let _ = cancel(cfg, &f.job).await;
                near_until = Some(Instant::now() + NEAR_FOR);
                next_poll = Instant::now() + NEAR_EVERY;
            }
            _ = sleep_until_opt(idle_at) => {
                let t = f.idle_timeout.unwrap_or_default();
                asked = Some(Asked::Timeout(format!("no output for {} (idle timeout)", orch_proto::units::format_duration_ms(t.as_millis() as u64))));
                let _ = cancel(cfg, &f.job).await;
                near_until = Some(Instant::now() + NEAR_FOR);
                next_poll = Instant::now() + NEAR_EVERY;
            }
            _ = tokio::time::sleep_until(next_poll) => {
                match job_state(cfg, &f.job).await {
                    Ok(v) => {
                        if states::rule(&v.state).is_none() {
                            tracing::warn!(job = %f.job, state = %v.state, "a Slurm job state orch does not know; taken as not ended");
                        }
                        let tail = stderr_tail(&err.path);
                        if states::end_of(&v, asked.as_ref(), &tail).is_some() {
                            break v;
                        }
                    }
                    Err(e) => tracing::warn!(job = %f.job, error = %e, "cannot ask Slurm for the job's state"),
                }
                let near = near_until.is_some_and(|u| Instant::now() < u);
                if near {
                    next_poll = Instant::now() + NEAR_EVERY;
                } else {
                    next_poll = Instant::now() + every;
                    every = (every * 2).min(Duration::from_millis(cfg.poll_max.0));
                }
            }
        }
    };
    // The job is over: what it wrote last, then the end.
    pump(&mut out, &mut parser, &log);
    pump(&mut err, &mut parser, &log);
    for line in parser.finish() {
        let _ = facts.send(Fact::Line {
            key: f.key.clone(),
            line,
        });
    }
    drop(log);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    let tail = stderr_tail(&err.path);
    let end = states::end_of(&view, asked.as_ref(), &tail)
        .unwrap_or_else(|| End::of(Outcome::Interrupted, "the job's end could not be told"));
    // Shared storage is not orch's to fill: the output is in the attempt's log now.
    if let Err(e) = std::fs::remove_dir_all(&f.dir) {
        tracing::warn!(dir = %f.dir.display(), error = %e, "cannot remove the job's output directory");
    }
    tracing::debug!(job = %f.job, state = %view.state, outcome = end.outcome.word(), "Slurm job ended");
    AttemptEnd {
        end,
        exited_at: Some(Instant::now()),
    }
}

fn stderr_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

async fn cancel(cfg: &SlurmConfig, job: &str) -> Result<String, String> {
    run(&cfg.scancel, &[job.to_string()], None).await
}

async fn scontrol(cfg: &SlurmConfig, verb: &str, job: &str) -> Result<String, String> {
    run(&cfg.scontrol, &[verb.to_string(), job.to_string()], None).await
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reattached_log_goes_on_after_what_it_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("a.log");
        let (tx, done) = LogWriter::create(&log, 1 << 20).expect("log").spawn();
        assert!(tx.send(Stream::Stdout, b"before\n".to_vec()));
        assert!(tx.send(Stream::Stderr, b"err\n".to_vec()));
        drop(tx);
        done.await.expect("written");
        assert_eq!(logged_bytes(&log), (7, 4));
        let (tx, done) = LogWriter::append(&log, 1 << 20).expect("append").spawn();
        assert!(tx.send(Stream::Stdout, b"after\n".to_vec()));
        drop(tx);
        done.await.expect("written");
        assert_eq!(logged_bytes(&log), (13, 4));
        let text: Vec<u8> = LogReader::new(&log)
            .read_new()
            .expect("read")
            .into_iter()
            .filter(|c| c.stream == Stream::Stdout)
            .flat_map(|c| c.data)
            .collect();
        assert_eq!(text, b"before\nafter\n");
        assert_eq!(logged_bytes(&dir.path().join("missing.log")), (0, 0));
    }

    #[test]
    fn a_tailer_reads_from_its_offset_in_bounded_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        let mut t = Tailer {
            path: path.clone(),
            offset: 3,
            stream: Stream::Stdout,
        };
        assert!(t.read_new().is_empty(), "no file yet");
        std::fs::write(&path, b"abcdef").expect("write");
        assert_eq!(t.read_new(), b"def");
        assert!(t.read_new().is_empty());
        assert_eq!(t.offset, 6);
    }
}
