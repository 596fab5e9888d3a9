//! `cargo bench --bench exhaustion [-- SECTION...]`: what one attacking client costs everyone
//! else, measured on the real release `orchd` (as root, the way a shared system daemon runs).
//!
//! Sections: `connections` (one user opens 20,000 connections and holds them, then
//! reconnects as fast as it can, while another user's `orchctl daemon status` and submits
//! and root's `DaemonStatus` are timed; how many connections orchd holds), `requests` (40
//! submits of 15 MiB at once: refusals and orchd's RSS), `watchers` (20 watch clients that
//! never read while an agent writes 100 checkpoints of 1 MiB: orchd's RSS, against the same
//! agent with nobody watching), `logs` (8 objectives at once, each an agent writing 512 MiB
//! as fast as it can, under a 256 MiB log cap and under the default 10 GiB: bytes on disk,
//! and how long they took). Name one or more to run
//! only those. The attacker is this binary run again as user `nobody`
//! (`--attacker SOCKET N SECONDS`). Figures are printed, never asserted.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use orch_proto::v1 as pb;
use pb::orchestrator_client::OrchestratorClient;
use tonic::transport::Channel;

const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");
const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");
const SECTIONS: [&str; 4] = ["connections", "requests", "watchers", "logs"];

/// The attacking user, and the other user whose calls are timed (no passwd entry needed:
/// connecting and asking is all they do).
const ATTACKER: u32 = 65534;
const OTHER: u32 = 65533;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--attacker") {
        return match attacker(&args[1..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("attacker: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if let Some(w) = wanted
        .iter()
        .find(|w| !SECTIONS.iter().any(|s| s.contains(w.as_str())))
    {
        eprintln!(
            "exhaustion bench: no section matches `{w}` (sections: {})",
            SECTIONS.join(", ")
        );
        return std::process::ExitCode::from(2);
    }
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| name.contains(w.as_str()));
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("exhaustion bench: needs root (a shared daemon, and users to attack it)");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exhaustion bench: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        println!("load average before: {}", loadavg());
        if run("connections") {
            connections().await.context("connections")?;
        }
        if run("requests") {
            requests().await.context("requests")?;
        }
        if run("watchers") {
            watchers().await.context("watchers")?;
        }
        if run("logs") {
            logs().await.context("logs")?;
        }
        anyhow::Ok(())
    });
    println!("\nload average after: {}", loadavg());
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exhaustion bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- the daemon

/// A root `orchd` on a private socket every user can reach.
struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    work: PathBuf,
}

impl Daemon {
    async fn start(config: &str) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("orch-bench-exhaustion-")
            .tempdir_in("/tmp")
            .context("create a temp dir")?;
        let socket = dir.path().join("orchd.sock");
        let work = dir.path().join("work");
        fs::create_dir(&work).context("create the work dir")?;
        let config_path = dir.path().join("orchd.toml");
        fs::write(&config_path, config).context("write the config")?;
        let log = File::create(dir.path().join("orchd.log")).context("create the log")?;
        let mut cmd = Command::new(ORCHD);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "orchd=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("ORCH_") || k == "JOURNAL_STREAM" || k == "NOTIFY_SOCKET" {
                cmd.env_remove(&key);
            }
        }
        let child = cmd.spawn().context("start orchd")?;
        let d = Daemon {
            child,
            _dir: dir,
            socket,
            work,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.client().await.is_err() {
            if Instant::now() > deadline {
                bail!("orchd did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for p in [d.socket.parent().unwrap_or(Path::new("/")), &d.socket] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o777))
                .with_context(|| format!("chmod {}", p.display()))?;
        }
        fs::set_permissions(&d.work, fs::Permissions::from_mode(0o777)).context("chmod work")?;
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn client(&self) -> Result<OrchestratorClient<Channel>> {
        let c = orch_proto::connect(&self.socket).await?;
        Ok(c.max_encoding_message_size(64 << 20))
    }

    fn rss_mib(&self) -> f64 {
        rss_kib(self.pid()) as f64 / 1024.0
    }

    /// Sockets orchd has open (its listener included).
    fn sockets(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| {
                        fs::read_link(fd.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    fn one_step(&self, command: &[&str]) -> pb::SubmitRequest {
        pb::SubmitRequest {
            spec: Some(pb::ObjectiveSpec {
                name: "bench".into(),
                steps: vec![pb::StepSpec {
                    id: "main".into(),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            workdir: self.work.display().to_string(),
            ..Default::default()
        }
    }

    /// Waits (over Watch) until objective `id` has ended.
    async fn wait_ended(&self, id: &str) -> Result<()> {
        let mut c = self.client().await?;
        let mut s = c
            .watch(pb::WatchRequest {
                objective_id: id.into(),
                from_seq: Some(0),
                kinds: vec!["objective_state".into()],
            })
            .await?
            .into_inner();
        while s.message().await?.is_some() {}
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The peak RSS of a process, sampled every 10 ms until dropped.
struct Peak {
    kib: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Peak {
    fn sample(pid: u32) -> Peak {
        let kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let k = kib.clone();
        let task = tokio::spawn(async move {
            loop {
                k.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Peak { kib, task }
    }

    fn mib(&self) -> f64 {
        self.kib.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `p50 / p99 / max` of durations, in ms.
fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} calls)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        v.len()
    )
}

// ---------------------------------------------------------------- 1. connections

/// Attacker mode, as user `nobody`: opens `N` connections to `SOCKET` (as many as its
/// open-files limit allows), says how many, holds them until its stdin has a line, then
/// for `SECONDS` connects and drops as fast as it can (each one refused), and exits.
fn attacker(args: &[String]) -> Result<()> {
    let [socket, n, secs] = args else {
        bail!("usage: --attacker SOCKET N SECONDS");
    };
    let n: usize = n.parse().context("N")?;
    let secs: u64 = secs.parse().context("SECONDS")?;
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    let mut held = Vec::with_capacity(n);
    let mut failed = None;
    for _ in 0..n.min(hard.saturating_sub(16) as usize) {
        match UnixStream::connect(socket) {
            Ok(s) => held.push(s),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    println!(
        "opened {}{}",
        held.len(),
        failed.map(|e| format!(" (then: {e})")).unwrap_or_default()
    );
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    drop(held);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut storm = 0u64;
    while Instant::now() < until {
        if UnixStream::connect(socket).is_ok() {
            storm += 1;
        }
    }
    println!("storm {storm}");
    Ok(())
}

/// `orchctl ARGS...` as `uid`; how long it took, and whether it succeeded.
fn orchctl_as(d: &Daemon, uid: u32, args: &[&str]) -> (Duration, bool) {
    let t = Instant::now();
    let ok = Command::new(ORCHCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .current_dir(&d.work)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/tmp")
        .uid(uid)
        .gid(uid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (t.elapsed(), ok)
}

/// Times another user's `orchctl daemon status` and `orchctl submit`, and root's
/// `DaemonStatus` on a fresh connection each, `n` of each.
async fn victim_calls(d: &Daemon, n: usize) -> Result<String> {
    let mut status = Vec::new();
    let mut submit = Vec::new();
    let mut root = Vec::new();
    let mut failed = 0;
    let mut errors = Vec::new();
    for _ in 0..n {
        let (t, ok) = orchctl_as(d, OTHER, &["daemon", "status"]);
        status.push(t);
        failed += usize::from(!ok);
        let (t, ok) = orchctl_as(d, OTHER, &["submit", "--workdir", "/tmp", "--", "true"]);
        submit.push(t);
        failed += usize::from(!ok);
        let t = Instant::now();
        let answered = match d.client().await {
            Ok(mut c) => c.daemon_status(pb::DaemonStatusRequest {}).await.is_ok(),
            Err(e) => {
                errors.push(format!("{e:#}"));
                false
            }
        };
        root.push(t.elapsed());
        failed += usize::from(!answered);
    }
    errors.sort();
    errors.dedup();
    Ok(format!(
        "    uid {OTHER} `orchctl daemon status`: {}\n    uid {OTHER} `orchctl submit -- true`: {}\n    root DaemonStatus (new connection each): {}\n    failed calls: {failed} of {}{}",
        spread(status),
        spread(submit),
        spread(root),
        3 * n,
        if errors.is_empty() {
            String::new()
        } else {
            format!(" (root's: {})", errors.join("; "))
        }
    ))
}

async fn connections() -> Result<()> {
    println!(
        "\n1. connections: uid {ATTACKER} opens 20,000 connections, then reconnects as fast as it can (defaults: 64 per user, 1024 in all)"
    );
    let d = Daemon::start("").await?;
    println!("  no attack:\n{}", victim_calls(&d, 10).await?);
    let mut attacker = Command::new(std::env::current_exe().context("this binary")?)
        .args(["--attacker", &d.socket.display().to_string(), "20000", "10"])
        .uid(ATTACKER)
        .gid(ATTACKER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the attacker")?;
    let mut out = BufReader::new(attacker.stdout.take().context("attacker stdout")?);
    let mut stdin = attacker.stdin.take().context("attacker stdin")?;
    let t = Instant::now();
    let mut line = String::new();
    out.read_line(&mut line)?;
    println!(
        "  attacker: {} in {:.1} s; orchd holds {} sockets (its listener included), RSS {:.0} MiB",
        line.trim(),
        t.elapsed().as_secs_f64(),
        d.sockets(),
        d.rss_mib()
    );
    // The last of its connections may still wait in the listen queue: orchd refuses them
    // as fast as it can accept them.
    let t = Instant::now();
    while UnixStream::connect(&d.socket).is_err() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "  listen queue drained {:.0} ms later; while it holds them:\n{}",
        t.elapsed().as_secs_f64() * 1e3,
        victim_calls(&d, 10).await?
    );
    writeln!(stdin)?;
    println!(
        "  while it reconnects as fast as it can (10 s):\n{}",
        victim_calls(&d, 10).await?
    );
    line.clear();
    out.read_line(&mut line)?;
    let _ = attacker.wait();
    println!(
        "  attacker: {} connections made and refused in 10 s; orchd holds {} sockets after",
        line.trim().trim_start_matches("storm "),
        d.sockets()
    );
    Ok(())
}

// ---------------------------------------------------------------- 2. requests

async fn requests() -> Result<()> {
    println!("\n2. requests: 40 submits of a 15 MiB prompt at once, each on its own connection");
    let d = Daemon::start("").await?;
    let before = d.rss_mib();
    let mut calls = Vec::new();
    let t = Instant::now();
    for _ in 0..40 {
        let mut c = d.client().await?;
        let req = pb::SubmitRequest {
            spec: Some(pb::ObjectiveSpec {
                name: "big".into(),
                steps: vec![pb::StepSpec {
                    id: "main".into(),
                    agent: "shell".into(),
                    prompt: "x".repeat(15 << 20),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            workdir: d.work.display().to_string(),
            ..Default::default()
        };
        calls.push(tokio::spawn(async move { c.submit(req).await }));
    }
    let peak = Peak::sample(d.pid());
    let mut refused = std::collections::BTreeMap::<String, usize>::new();
    for c in calls {
        let code = match c.await? {
            Ok(_) => "accepted".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *refused.entry(code).or_default() += 1;
    }
    let took = t.elapsed();
    let peak = peak.mib();
    println!(
        "  answers: {refused:?} in {:.2} s; orchd RSS {before:.0} MiB before, peak {peak:.0} MiB, {:.0} MiB after",
        took.as_secs_f64(),
        d.rss_mib()
    );
    Ok(())
}

// ---------------------------------------------------------------- 3. watchers

async fn checkpoints(d: &Daemon, watchers: usize) -> Result<(f64, f64, Duration)> {
    let script = "pad=$(head -c 1048000 /dev/zero | tr '\\0' a); for i in $(seq 100); do echo \"::orch-checkpoint::{\\\"i\\\":$i,\\\"pad\\\":\\\"$pad\\\"}\"; done";
    let before = d.rss_mib();
    let mut c = d.client().await?;
    let id = c
        .submit(d.one_step(&["bash", "-c", script]))
        .await?
        .into_inner()
        .id;
    let mut stalled = Vec::new();
    for _ in 0..watchers {
        let mut w = d.client().await?;
        let s = w
            .watch(pb::WatchRequest {
                objective_id: id.clone(),
                from_seq: Some(0),
                kinds: vec![],
            })
            .await?
            .into_inner();
        stalled.push((w, s));
    }
    let t = Instant::now();
    let peak = Peak::sample(d.pid());
    d.wait_ended(&id).await?;
    let took = t.elapsed();
    let peak = peak.mib();
    drop(stalled);
    Ok((before, peak, took))
}

async fn watchers() -> Result<()> {
    println!(
        "\n3. watchers: an agent writes 100 checkpoints of 1 MiB (default queue: 2 MiB per watcher)"
    );
    for n in [0, 20] {
        let d = Daemon::start("").await?;
        let (before, after, took) = checkpoints(&d, n).await?;
        println!(
            "  {n} watchers not reading: orchd RSS {before:.0} MiB before, peak {after:.0} MiB while the agent ran; the agent took {:.1} s",
            took.as_secs_f64()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- 4. logs

async fn logs() -> Result<()> {
    println!(
        "\n4. logs: 8 objectives at once, each an agent writing 512 MiB to stdout as fast as it can (max_attempt_bytes 256M)"
    );
    for cap in ["256M", "10G"] {
        let config = format!("max_parallel = 8\n[logs]\nmax_total_bytes = \"{cap}\"\n");
        let d = Daemon::start(&config).await?;
        let req = d.one_step(&["sh", "-c", "head -c 536870912 /dev/zero"]);
        let logs = d._dir.path().join("state").join("logs");
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = {
            let (logs, peak) = (logs.clone(), peak.clone());
            std::thread::spawn(move || {
                while std::sync::Arc::strong_count(&peak) > 1 {
                    peak.fetch_max(dir_bytes(&logs), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let mut c = d.client().await?;
        let t = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..8 {
            ids.push(c.submit(req.clone()).await?.into_inner().id);
        }
        for id in &ids {
            d.wait_ended(id).await?;
        }
        let took = t.elapsed();
        let peak_bytes = peak.load(std::sync::atomic::Ordering::Relaxed);
        drop(peak);
        let _ = sampler.join();
        println!(
            "  max_total_bytes = {cap}: logs peaked at {:.0} MiB on disk, {:.0} MiB at the end; submit to end {:.2} s",
            peak_bytes as f64 / (1 << 20) as f64,
            dir_bytes(&logs) as f64 / (1 << 20) as f64,
            took.as_secs_f64()
        );
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}
