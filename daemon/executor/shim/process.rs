//! The shim: `orchd __shim DIR`, started by the shim executor with the attempt's
//! listening socket on descriptor 3. It forks once more (so that it is nobody's child
//! once its first process exits), then runs the attempt with the same runner as the
//! local executor — the shim is the agent's parent, holds its stdio, writes the framed
//! log, reaps it with wait4, keeps its cgroup leaf, enforces its timeouts and carries
//! out stop, pause and resume — and tells whichever orchd is connected. What a later
//! orchd needs is in its directory: `started.json`, the protocol `journal`, `end.json`.

use std::path::Path;
use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::model::{Control, StopReason, now_ms};
use crate::runner::{self, Fact};
use crate::sys;

use super::wire::{self, Down, EndRecord, ProcId, ShimSpec, Started, Up, Why};

/// Runs the shim in `dir`; returns when the attempt has ended and `end.json` is written.
pub fn main(dir: &Path) -> ExitCode {
    let listener = match sys::take_shim_listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("orchd __shim: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(code) = detach() {
        return code;
    }
    let Some(runtime) = prepare() else {
        return ExitCode::FAILURE;
    };
    run(runtime, dir, listener)
}

/// `orchd __shim --spare ROOT`: a shim started before it is needed, so that an attempt
/// does not wait for orchd's binary to be loaded. It detaches as a shim does, then waits
/// for orchd to hand it an attempt (its directory and listener) and runs it as
/// [`main`] would; when orchd closes its end instead (it stopped, crashed or re-executed
/// itself), it exits. Until then its stderr is orchd's; from the hand-over on, its output
/// goes to the attempt's `shim.log`.
pub fn spare_main() -> ExitCode {
    let control = match sys::take_spare_socket() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orchd __shim {SPARE_ARG}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(code) = detach() {
        return code;
    }
    // What does not depend on the attempt is done before it comes.
    let Some(runtime) = prepare() else {
        return ExitCode::FAILURE;
    };
    let (dir, listener) = match sys::receive_attempt(&control) {
        Ok(Some(attempt)) => attempt,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchd __shim {SPARE_ARG}: {e}");
            return ExitCode::FAILURE;
        }
    };
    drop(control);
    if let Err(e) = sys::redirect_output(&dir.join(wire::SHIM_LOG)) {
        // It runs the attempt anyway; its own messages then go to orchd's stderr.
        eprintln!(
            "orchd __shim {SPARE_ARG}: cannot write {}: {e}",
            dir.join(wire::SHIM_LOG).display()
        );
    }
    run(runtime, &dir, listener)
}

/// The spare shim's argument (`orchd __shim --spare ROOT`).
pub const SPARE_ARG: &str = "--spare";

/// Forks so that the shim is nobody's child: `Some(exit code)` in the first process.
fn detach() -> Option<ExitCode> {
    match sys::detach_fork() {
        Ok(true) => Some(ExitCode::SUCCESS),
        Ok(false) => None,
        Err(e) => {
            eprintln!("orchd __shim: cannot fork: {e}");
            Some(ExitCode::FAILURE)
        }
    }
}

/// The shim's logging (to its stderr, wherever that points when it writes) and runtime.
fn prepare() -> Option<tokio::runtime::Runtime> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the shim's runtime");
            None
        }
    }
}

fn run(
    runtime: tokio::runtime::Runtime,
    dir: &Path,
    listener: std::os::unix::net::UnixListener,
) -> ExitCode {
    match runtime.block_on(serve(dir, listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "shim failed");
            ExitCode::FAILURE
        }
    }
}

fn order(d: Down) -> Control {
    match d {
        Down::Stop(Why::Cancelled) => Control::Stop(StopReason::Cancelled),
        Down::Stop(Why::Shutdown) => Control::Stop(StopReason::Shutdown),
        Down::Stop(Why::BudgetExceeded) => Control::Stop(StopReason::BudgetExceeded),
        Down::Pause => Control::Pause,
        Down::Resume => Control::Resume,
    }
}

/// Sends `msg` to the connected orchd, if any; a connection that fails is dropped (the
/// files keep what it missed).
async fn tell(client: &mut Option<OwnedWriteHalf>, msg: &Up) {
    if let Some(w) = client
        && w.write_all(&wire::line(msg)).await.is_err()
    {
        *client = None;
    }
}

async fn serve(dir: &Path, listener: std::os::unix::net::UnixListener) -> anyhow::Result<()> {
    use anyhow::Context;
    let pid = std::process::id();
    let me = ProcId {
        pid,
        start_ticks: sys::process_start_ticks(pid),
    };
    wire::write(&dir.join(wire::SHIM), &me).context("cannot write shim.json")?;
    let spec: ShimSpec = wire::read(&dir.join(wire::SPEC))
        .context("cannot read spec.json")?
        .context("spec.json is missing")?;
    let budget = crate::logfile::budget();
    budget.set_caps(spec.log_caps.0, spec.log_caps.1);
    listener
        .set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    let listener = UnixListener::from_std(listener).context("cannot use the listener")?;

    let (facts_tx, mut facts) = mpsc::unbounded_channel();
    let control = runner::start(spec.run_spec(&dir.join(wire::JOURNAL)), facts_tx);
    let (orders_tx, mut orders) = mpsc::unbounded_channel::<(u64, Down)>();
    let mut client: Option<OwnedWriteHalf> = None;
    let mut generation = 0u64;
    let mut started: Option<Started> = None;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((conn, _)) = conn else { continue };
                // The newest orchd wins: an older connection is closed.
                generation += 1;
                let (r, w) = conn.into_split();
                client = Some(w);
                tell(&mut client, &Up::Hello { shim: me, started: started.clone() }).await;
                let (tx, g) = (orders_tx.clone(), generation);
                tokio::spawn(async move {
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        match serde_json::from_str::<Down>(&l) {
                            Ok(d) => { let _ = tx.send((g, d)); }
                            Err(e) => tracing::warn!(error = %e, line = %l, "an order the shim does not understand"),
                        }
                    }
                });
            }
            Some((g, d)) = orders.recv() => {
                if g == generation {
                    let _ = control.send(order(d));
                }
            }
            fact = facts.recv() => match fact {
                Some(Fact::Started { pid: Some(pid), start_ticks, cgroup, .. }) => {
                    let s = Started { pid, start_ticks, cgroup };
                    if let Err(e) = wire::write(&dir.join(wire::STARTED), &s) {
                        tracing::warn!(error = %e, "cannot write started.json");
                    }
                    started = Some(s.clone());
                    tell(&mut client, &Up::Started(s)).await;
                }
                Some(Fact::Usage { peak_rss_bytes, cpu_ms, .. }) => {
                    tell(&mut client, &Up::Usage { peak_rss_bytes, cpu_ms }).await;
                }
                Some(Fact::Ended { end, .. }) => {
                    let rec = EndRecord::of(&end.end, now_ms());
                    // The record first: an orchd that misses the message reads it.
                    wire::write(&dir.join(wire::END), &rec).context("cannot write end.json")?;
                    tell(&mut client, &Up::Ended(rec)).await;
                    if let Some(mut w) = client.take() {
                        let _ = w.shutdown().await;
                    }
                    return Ok(());
                }
                // Protocol lines go to the journal; the runner's own notes are logged.
                Some(Fact::Line { line, .. }) => tracing::info!(?line, "note from the runner"),
                Some(_) => {}
                None => anyhow::bail!("the runner stopped without reporting an end"),
            },
        }
    }
}
