//! The shim executor (live restore): each attempt runs under a small supervisor
//! process of its own — orchd re-executed as `orchd __shim DIR` — in its own session,
//! outside orchd's process tree, so that agents outlive a crash, `kill -9`, restart
//! or upgrade of orchd. The shim (`process`) runs the attempt with the same runner as
//! the local executor; orchd (`attend`) talks to it over the per-attempt socket (`wire`)
//! and parses the agent's protocol lines from the shim's journal, keeping how far it
//! read in the attempt's record (`Fact::Protocol`), so that a restarted orchd resumes
//! from there: every line is processed once. See docs/ARCHITECTURE.md, "Live restore".

mod attend;
pub mod process;
pub mod wire;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::limits::Limiter;
use crate::model::Attempt;
use crate::runner::{AttemptEnd, AttemptKey, Fact, Prices, RunSpec, Threads};
use crate::sys;

use super::{AttemptHandle, Facts, Reattached, leaf_name};
use wire::{ProcId, ShimSpec};

/// The argument that makes orchd a shim.
pub const SHIM_ARG: &str = "__shim";

pub struct ShimExecutor {
    limiter: Arc<Limiter>,
    /// `STATE/shims`: one directory per attempt.
    root: PathBuf,
    /// The agent thread totals (the store), for orchd's parser after a restart.
    threads: Option<Threads>,
    prices: Arc<std::collections::BTreeMap<String, crate::config::Price>>,
    log_caps: (u64, u64),
    spare: Arc<Spare>,
}

/// The shim orchd keeps started ahead of need (`orchd __shim --spare ROOT`, at most one):
/// loading orchd's binary, detaching and starting the shim's runtime take longer than
/// the rest of an attempt's start, and a spare has done them before the attempt comes.
/// It holds nothing of orchd's but its end of a socket pair; it exits when orchd closes
/// that (a stop, a crash, a re-execution), so it never outlives orchd.
#[derive(Default)]
struct Spare {
    state: Mutex<SpareState>,
}

#[derive(Default)]
struct SpareState {
    /// orchd's end of the ready spare's socket, with the spare's number. Ready from its
    /// exec on: an attempt handed over while it still loads waits in its socket.
    ready: Option<(u64, OwnedFd)>,
    /// A spare is being started (one at a time).
    starting: bool,
    /// Spares started so far.
    count: u64,
}

impl Spare {
    fn lock(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<OwnedFd> {
        self.lock().ready.take().map(|(_, fd)| fd)
    }

    /// Starts a spare unless one is ready or starting. Blocks (it reaps the spare's first
    /// process): call it on the blocking pool.
    fn refill(&self, root: &Path) {
        {
            let mut s = self.lock();
            if s.starting || s.ready.is_some() {
                return;
            }
            s.starting = true;
        }
        let (fd, first) = match start_spare(root) {
            Ok(started) => started,
            Err(e) => {
                self.lock().starting = false;
                // Attempts then start their own shim, as without a spare.
                tracing::warn!(error = %e, "cannot start a spare shim");
                return;
            }
        };
        let number = {
            let mut s = self.lock();
            s.starting = false;
            s.count += 1;
            s.ready = Some((s.count, fd));
            s.count
        };
        // Its first process forks the spare and exits; if it failed, the spare is not
        // there (an attempt already handed to it ends as a shim that did not start).
        let failed = match sys::wait_exit(first) {
            Ok(0) => return,
            Ok(code) => format!("its first process exited with {code}"),
            Err(e) => format!("cannot reap its first process: {e}"),
        };
        tracing::warn!(error = %failed, "the spare shim did not start");
        let mut s = self.lock();
        if s.ready.as_ref().is_some_and(|(n, _)| *n == number) {
            s.ready = None;
        }
    }
}

impl ShimExecutor {
    pub fn new(
        limiter: Arc<Limiter>,
        state_dir: &Path,
        threads: Option<Threads>,
        cfg: &crate::config::Config,
    ) -> ShimExecutor {
        ShimExecutor {
            limiter,
            root: state_dir.join("shims"),
            threads,
            prices: Arc::new(cfg.prices.clone()),
            log_caps: (cfg.logs.max_total_bytes.0, cfg.logs.user_bytes()),
            spare: Arc::new(Spare::default()),
        }
    }

    /// Starts a spare shim in the background (live restore on: before the first attempt).
    pub fn prepare_spare(&self) {
        let (spare, root) = (self.spare.clone(), self.root.clone());
        tokio::task::spawn_blocking(move || spare.refill(&root));
    }

    /// Lets the spare shim go and waits (bounded) until it has exited, so that a stopped
    /// orchd leaves no process of its own behind.
    pub fn retire_spare(&self) {
        if let Some(fd) = self.spare.take()
            && !sys::retire_spare(fd, Duration::from_secs(2))
        {
            tracing::warn!("the spare shim did not exit within 2 s");
        }
    }

    /// The directory of an attempt's shim.
    pub fn dir_of(&self, objective_id: &str, step_index: u32, number: u32) -> PathBuf {
        self.root.join(leaf_name(objective_id, step_index, number))
    }

    fn leaf(&self, a: &Attempt) -> Option<PathBuf> {
        a.cgroup.clone().map(PathBuf::from).or_else(|| {
            self.limiter
                .leaf_path(&leaf_name(&a.objective_id, a.step_index, a.number))
        })
    }

    pub fn start(&self, mut spec: RunSpec, facts: Facts) -> AttemptHandle {
        let Some(leaf) = super::prepare_limits(&self.limiter, &mut spec, &facts) else {
            return AttemptHandle::detached();
        };
        let key = spec.key.clone();
        let dir = self.root.join(&leaf);
        let shim = ShimSpec::of(&spec, self.log_caps);
        let parser = attend::parser(&shim, &self.prices, spec.threads.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let root = self.root.clone();
        let cgroup = spec.prepared.cgroup.clone();
        let spare = self.spare.clone();
        // Writing the shim's files and starting it (which waits until the shim's exec)
        // happen off the engine's thread; orders sent meanwhile wait in the channel.
        tokio::spawn(async move {
            let at = dir.clone();
            let refill = (spare.clone(), root.clone());
            let launched =
                tokio::task::spawn_blocking(move || launch(&root, &at, &shim, spare.take()))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .and_then(|c| {
                        c.set_nonblocking(true)?;
                        tokio::net::UnixStream::from_std(c)
                    });
            // The next attempt's spare: started once this attempt's agent has run a little
            // or it is over (on two cores, loading a spare beside a short attempt slows it).
            let once_started = attend::OnceOrAtEnd(attend::Once::new(move || {
                tokio::task::spawn_blocking(move || refill.0.refill(&refill.1));
            }));
            let conn = match launched {
                Ok(c) => c,
                Err(e) => {
                    if let Some(cg) = &cgroup {
                        let _ = std::fs::remove_dir(cg);
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = facts.send(Fact::Ended {
                        key,
                        end: AttemptEnd::spawn_error(format!(
                            "cannot start the attempt's shim: {e}"
                        )),
                    });
                    return;
                }
            };
            attend::attend(attend::Attend {
                key,
                dir,
                conn: Some(conn),
                control: rx,
                facts,
                parser,
                offset: 0,
                report_started: true,
                known: None,
                leaf: cgroup,
                once_started,
            })
            .await
        });
        AttemptHandle::new(tx)
    }

    /// After a restart: re-attaches to a live shim, takes the end a finished one left,
    /// or (no shim) leaves the attempt to the local executor's leftover killing. `None`
    /// when the attempt has no shim directory (it was not the shim's).
    pub fn reattach(&self, a: &Attempt, facts: Facts) -> Option<Reattached> {
        let dir = self.dir_of(&a.objective_id, a.step_index, a.number);
        if !dir.is_dir() {
            return None;
        }
        let spec: Option<ShimSpec> = wire::read(&dir.join(wire::SPEC)).ok().flatten();
        let shim: Option<ProcId> = wire::read(&dir.join(wire::SHIM)).ok().flatten();
        let alive = shim.is_some_and(|s| {
            s.start_ticks.is_some() && sys::process_start_ticks(s.pid) == s.start_ticks
        });
        let conn = alive
            .then(|| std::os::unix::net::UnixStream::connect(dir.join(wire::SOCK)).ok())
            .flatten()
            .and_then(|c| {
                c.set_nonblocking(true).ok()?;
                tokio::net::UnixStream::from_std(c).ok()
            });
        let ended = dir.join(wire::END).exists();
        let key = AttemptKey {
            objective_id: a.objective_id.clone(),
            step_index: a.step_index,
            number: a.number,
        };
        match (spec, conn.is_some() || ended) {
            (Some(spec), true) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let parser = attend::parser(&spec, &self.prices, self.threads.clone());
                let known = a.pid.map(|pid| wire::Started {
                    pid,
                    start_ticks: a.pid_start_ticks,
                    cgroup: a.cgroup.clone(),
                });
                tracing::info!(objective = %a.objective_id, step = %a.step_id, attempt = a.number, shim = ?shim.map(|s| s.pid), live = conn.is_some(), "re-attached to the attempt's shim");
                tokio::spawn(attend::attend(attend::Attend {
                    key,
                    dir,
                    conn,
                    control: rx,
                    facts,
                    parser,
                    offset: a.protocol_offset,
                    report_started: a.pid.is_none(),
                    known,
                    leaf: self.leaf(a),
                    once_started: attend::OnceOrAtEnd::default(),
                }));
                Some(Reattached::Attached(AttemptHandle::new(tx)))
            }
            _ => {
                // The shim is gone without an end (killed, or the machine rebooted): what
                // it left is killed, identified as the local executor does.
                if let Some(s) = shim.filter(|_| alive) {
                    let _ = sys::signal_process(s.pid, sys::Signal::SIGKILL);
                }
                let started: Option<wire::Started> =
                    wire::read(&dir.join(wire::STARTED)).ok().flatten();
                let mut a = a.clone();
                if a.pid.is_none()
                    && let Some(s) = started
                {
                    a.pid = Some(s.pid);
                    a.pid_start_ticks = s.start_ticks;
                    a.cgroup = s.cgroup;
                }
                let killed = super::local::kill_leftover(&a, self.leaf(&a).as_deref(), &sys::Host);
                let _ = std::fs::remove_dir_all(&dir);
                Some(Reattached::Gone { killed })
            }
        }
    }

    pub fn leftovers(&self, key: &AttemptKey) -> Vec<PathBuf> {
        let dir = self.dir_of(&key.objective_id, key.step_index, key.number);
        if dir.is_dir() { vec![dir] } else { Vec::new() }
    }
}

/// Writes the attempt's directory, binds its socket, hands the attempt to the `spare`
/// shim or (none, or it is gone) starts a shim (which forks away), and connects; the
/// connection waits in the socket's backlog until the shim accepts it.
fn launch(
    root: &Path,
    dir: &Path,
    spec: &ShimSpec,
    spare: Option<OwnedFd>,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    wire::write(&dir.join(wire::SPEC), spec)?;
    std::fs::File::create(dir.join(wire::JOURNAL))?;
    let listener = std::os::unix::net::UnixListener::bind(dir.join(wire::SOCK))?;
    let conn = std::os::unix::net::UnixStream::connect(dir.join(wire::SOCK))?;
    if let Some(spare) = spare {
        match sys::hand_over(&spare, dir, listener.as_raw_fd()) {
            Ok(()) => return Ok(conn),
            Err(e) => tracing::debug!(error = %e, "the spare shim is gone; starting a shim"),
        }
    }
    let log = std::fs::File::create(dir.join(wire::SHIM_LOG))?;
    let null = std::fs::File::open("/dev/null")?;
    let first = spawn_shim(
        &[dir.as_os_str()],
        [null.as_raw_fd(), log.as_raw_fd(), log.as_raw_fd()],
        listener.as_raw_fd(),
    )?;
    drop((listener, log, null));
    // The first process forks the shim and exits at once; it is reaped off the
    // engine's thread.
    tokio::task::spawn_blocking(move || match sys::wait_exit(first) {
        Ok(0) => {}
        Ok(code) => tracing::warn!(code, "the shim's first process failed"),
        Err(e) => tracing::warn!(error = %e, "cannot reap the shim's first process"),
    });
    Ok(conn)
}

/// Starts a spare shim: `orchd __shim --spare ROOT` in a session of its own, with its end
/// of a new socket pair as descriptor 3 and orchd's stderr. Returns orchd's end and the
/// pid of its first process (which forks the spare and exits; the caller reaps it).
fn start_spare(root: &Path) -> std::io::Result<(OwnedFd, u32)> {
    let (ours, theirs) = sys::spare_pair()?;
    let null = std::fs::File::open("/dev/null")?;
    let first = spawn_shim(
        &[process::SPARE_ARG.as_ref(), root.as_os_str()],
        [null.as_raw_fd(), null.as_raw_fd(), 2],
        theirs.as_raw_fd(),
    )?;
    Ok((ours, first))
}

/// Starts `orchd-shim __shim ARGS…` (`/proc/self/exe`): in a session of its own, with
/// `fd3` as descriptor 3 and the umask orchd was started with (which it keeps for its
/// agent and restricts for itself); started without copying orchd (`clone3`, as agents
/// are). Returns the pid of its first process, which forks the shim and exits.
fn spawn_shim(
    args: &[&std::ffi::OsStr],
    stdio: [std::os::fd::RawFd; 3],
    fd3: std::os::fd::RawFd,
) -> std::io::Result<u32> {
    let argv: Vec<std::ffi::OsString> = ["orchd-shim".as_ref(), SHIM_ARG.as_ref()]
        .iter()
        .chain(args)
        .map(|a| a.to_os_string())
        .collect();
    sys::spawn_with_fds(&sys::FdSpawn {
        program: Path::new("/proc/self/exe"),
        argv: &argv,
        stdio,
        fd3,
    })
}

/// The prices for orchd's parser of one attempt's journal.
fn prices(
    table: &Arc<std::collections::BTreeMap<String, crate::config::Price>>,
    model: &str,
) -> Prices {
    Prices {
        table: table.clone(),
        model: model.to_string(),
    }
}
