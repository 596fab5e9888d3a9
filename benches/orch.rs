//! `cargo bench --bench orch [-- SECTION...]`: end-to-end figures of the real release `orchd`.
//!
//! Every section starts its own `orchd` (the binary cargo built for this bench) on a private
//! socket and state directory under `/tmp`, drives it over gRPC (and with the real `orchctl`
//! where the section is about the client), and prints its figures. Sections: `overhead`
//! (attempt overhead per limits backend), `submit` (durable submit throughput and idle RSS),
//! `recovery` (restart after `kill -9` with a large store), `events` (progress events to 1 and
//! 100 watchers). Name one or more to run only those; no name runs all of them.
//! `ORCH_BENCH_RECOVERY_ENDED=N` sets the number of ended objectives in the recovery store
//! (default 10,000). Results and how to read them: `docs/benchmarks.md`.
//!
//! The figures are printed, never asserted: this is a measurement, not a test. Checks that
//! make a figure meaningful (every objective succeeded, every watcher got every event, no
//! leftover process survived recovery) are reported as `ok` or `FAILED`, and a failed check
//! makes the bench exit non-zero after printing everything it measured.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use orch_proto::v1 as pb;
use pb::event::Payload;
use pb::orchestrator_client::OrchestratorClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The binaries cargo built for this bench (bench profile: `target/release/`).
const BUILT_ORCHD: &str = env!("CARGO_BIN_EXE_orchd");
const BUILT_ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

/// The binaries the bench drives: those in `ORCH_BENCH_BIN_DIR` when it is set (a copy of
/// an earlier build, to measure before and after on the same machine in one sitting), else
/// the ones cargo built.
static ORCHD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| bin("orchd", BUILT_ORCHD));
static ORCHCTL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| bin("orchctl", BUILT_ORCHCTL));

fn bin(name: &str, built: &str) -> String {
    match std::env::var_os("ORCH_BENCH_BIN_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join(name).display().to_string(),
        _ => built.to_string(),
    }
}

type Client = OrchestratorClient<Channel>;

/// Set when a check that makes a figure meaningful fails; the bench then exits 1.
static CHECK_FAILED: AtomicBool = AtomicBool::new(false);

#[path = "versus/mod.rs"]
mod versus;

const SECTIONS: [&str; 7] = [
    "machine", "versus", "targets", "overhead", "submit", "recovery", "events",
];

fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; other dashed arguments are ignored the same way.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for w in &wanted {
        if !SECTIONS.iter().any(|s| s.contains(w.as_str())) {
            eprintln!(
                "orch bench: no section matches `{w}` (sections: {})",
                SECTIONS.join(", ")
            );
            return std::process::ExitCode::from(2);
        }
    }
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| name.contains(w.as_str()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orch bench: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let result = runtime.block_on(async {
        preflight()?;
        println!("load average before: {}", loadavg());
        if run("machine") || run("versus") || run("targets") {
            versus::machine()?;
        }
        if run("versus") {
            versus::versus().await.context("section V (versus pueue)")?;
        }
        if run("targets") {
            versus::targets().await.context("section T (targets)")?;
        }
        if run("overhead") {
            overhead("rlimit")
                .await
                .context("section 1 (overhead, rlimit)")?;
            overhead("auto")
                .await
                .context("section 1 (overhead, auto)")?;
        }
        if run("submit") {
            submit_throughput()
                .await
                .context("sections 2 and 3 (submit, rss)")?;
        }
        if run("recovery") {
            recovery().await.context("section 4 (recovery)")?;
        }
        if run("events") {
            events(1).await.context("section 5 (events, 1 watcher)")?;
            events(100)
                .await
                .context("section 5 (events, 100 watchers)")?;
        }
        anyhow::Ok(())
    });
    versus::print_scorecard();
    println!(
        "\nload average after: {}\nbench wall time: {:.1} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    match result {
        Err(e) => {
            eprintln!("orch bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Ok(()) if CHECK_FAILED.load(Ordering::SeqCst) => {
            eprintln!("orch bench: some checks FAILED (see above)");
            std::process::ExitCode::FAILURE
        }
        Ok(()) => std::process::ExitCode::SUCCESS,
    }
}

fn preflight() -> Result<()> {
    for bin in [ORCHD.as_str(), ORCHCTL.as_str()] {
        if !Path::new(bin).is_file() {
            bail!("{bin} is missing; build it with `cargo build --release --bins`");
        }
    }
    println!("orchd:   {}", *ORCHD);
    println!("orchctl: {}", *ORCHCTL);
    println!(
        "machine: {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

fn check(ok: bool, what: &str) {
    if ok {
        println!("  check: {what}: ok");
    } else {
        CHECK_FAILED.store(true, Ordering::SeqCst);
        println!("  check: {what}: FAILED");
    }
}

// ---------------------------------------------------------------- the daemon under test

/// One `orchd` process on a private socket and state directory.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// When the process was spawned (for time-to-ready).
    spawned: Instant,
}

impl Daemon {
    /// Starts `orchd` in `dir` (state in `dir/state`, stderr to `dir/<log_name>.log`).
    fn start(dir: &Path, log_name: &str, extra: &[&str], debug: bool) -> Result<Daemon> {
        let socket = dir.join("orchd.sock");
        let state = dir.join("state");
        let config = dir.join("orchd.toml");
        if !config.exists() {
            // An explicit, empty config: the built-in defaults, whatever /etc or ~ holds.
            File::create(&config).with_context(|| format!("create {}", config.display()))?;
        }
        let log = dir.join(format!("{log_name}.log"));
        let err = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new(&*ORCHD);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", if debug { "orchd=debug" } else { "orchd=info" })
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("ORCH_") || k == "JOURNAL_STREAM" || k == "NOTIFY_SOCKET" {
                cmd.env_remove(&key);
            }
        }
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", *ORCHD))?;
        Ok(Daemon {
            child,
            dir: dir.to_path_buf(),
            socket,
            log,
            spawned,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls the standard health check until `orch.v1.Orchestrator` answers SERVING;
    /// returns the time since the process was spawned.
    async fn wait_serving(&mut self) -> Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = orch_proto::channel(&self.socket).await {
                let mut h = HealthClient::new(ch);
                let req = HealthCheckRequest {
                    service: "orch.v1.Orchestrator".into(),
                };
                if let Ok(r) = h.check(req).await
                    && r.into_inner().status == ServingStatus::Serving as i32
                {
                    return Ok(self.spawned.elapsed());
                }
            }
            if let Some(status) = self.child.try_wait().context("wait for orchd")? {
                bail!(
                    "orchd exited ({status}) before answering its health check; its log:\n{}",
                    tail(&self.log, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "orchd did not answer SERVING on {} within 30 s; its log:\n{}",
                    self.socket.display(),
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    async fn client(&self) -> Result<Client> {
        orch_proto::connect(&self.socket)
            .await
            .with_context(|| format!("cannot connect to {}", self.socket.display()))
    }

    fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }

    /// SIGTERM (orchd drains and exits 0), then waits; SIGKILL after 20 s.
    async fn stop(mut self) -> Result<()> {
        let pid = Pid::from_raw(self.pid() as i32);
        let _ = signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().context("wait for orchd")? {
                if !status.success() {
                    println!("  note: orchd exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("orchd did not exit within 20 s of SIGTERM; killed it");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `kill -9`, and reap it.
    fn kill9(mut self) -> Result<()> {
        self.child.kill().context("kill -9 orchd")?;
        self.child.wait().context("reap orchd")?;
        Ok(())
    }

    /// The JSON lines orchd wrote to stderr (lines that are not JSON are skipped).
    fn log_lines(&self) -> Result<Vec<serde_json::Value>> {
        let text = fs::read_to_string(&self.log)
            .with_context(|| format!("read orchd's log {}", self.log.display()))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    fn work_dir(&self) -> Result<PathBuf> {
        let w = self.dir.join("work");
        fs::create_dir_all(&w).with_context(|| format!("create {}", w.display()))?;
        Ok(w)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn bench_dir(name: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("orch-bench-{name}-"))
        .tempdir_in("/tmp")
        .context("create a temp dir in /tmp")
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS line in {path}"))
}

/// CPU seconds of `pid` from `/proc/PID/stat`: `(own user+system, reaped children's)`.
/// Its own time includes the fork (page-table copy) of each child; the children's time
/// includes their exec and exit.
fn cpu_secs(pid: u32) -> Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .ok_or_else(|| anyhow!("cannot parse {path}"))?;
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let tick = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    };
    // `rest` starts at field 3; utime, stime, cutime, cstime are fields 14..=17.
    let at = |field: usize| f.get(field - 3).copied().unwrap_or(0.0);
    Ok(((at(14) + at(15)) / tick, (at(16) + at(17)) / tick))
}

/// CPU used between two `cpu_secs` readings, as one line.
fn cpu_line(label: &str, before: (f64, f64), after: (f64, f64), wall: Duration, n: usize) {
    let own = after.0 - before.0;
    let kids = after.1 - before.1;
    println!(
        "  {label}: orchd {own:.2} CPU-s ({:.0}% of one core, {:.2} ms per objective); its children {kids:.2} CPU-s",
        100.0 * own / wall.as_secs_f64().max(1e-9),
        1e3 * own / n.max(1) as f64
    );
}

/// Processes `(pid, start ticks)` the bench kills when dropped, if still the same and alive.
struct KillOnDrop(Vec<(u32, u64)>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for (pid, ticks) in &self.0 {
            if same_alive(*pid, *ticks) {
                let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// `(files, bytes)` under `dir`, recursively (read_dir plus one stat per entry).
fn walk(dir: &Path) -> (u64, u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut out = (0, 0);
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let (f, b) = walk(&e.path());
                out = (out.0 + f, out.1 + b);
            }
            _ => {
                out.0 += 1;
                out.1 += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    out
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `(state letter, start time in clock ticks)` from `/proc/PID/stat`.
fn proc_state(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); starttime is field 22.
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// The process `pid` that started at `ticks` still exists and is not a zombie.
fn same_alive(pid: u32, ticks: u64) -> bool {
    matches!(proc_state(pid), Some((s, t)) if t == ticks && s != 'Z' && s != 'X')
}

// ---------------------------------------------------------------- requests and watches

fn one_step(workdir: &Path, name: &str, command: &[&str]) -> pb::SubmitRequest {
    pb::SubmitRequest {
        spec: Some(pb::ObjectiveSpec {
            name: name.into(),
            steps: vec![pb::StepSpec {
                id: "main".into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        workdir: workdir.display().to_string(),
        ..Default::default()
    }
}

/// Submits `n` copies of `req` with `in_flight` calls outstanding (one HTTP/2 connection);
/// returns each objective id with the instant its reply arrived and the call's latency in
/// microseconds, in reply order.
async fn submit_many(
    client: &Client,
    req: &pb::SubmitRequest,
    n: usize,
    in_flight: usize,
) -> Result<Vec<(String, Instant, u64)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (mut client, req, next) = (client.clone(), req.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let sent = Instant::now();
                let r = client
                    .submit(req.clone())
                    .await
                    .map_err(|s| anyhow!("submit refused: {s}"))?;
                got.push((
                    r.into_inner().id,
                    Instant::now(),
                    sent.elapsed().as_micros() as u64,
                ));
            }
            anyhow::Ok(got)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.context("submit task panicked")??);
    }
    all.sort_by_key(|(_, t, _)| *t);
    Ok(all)
}

/// A global Watch (live from now) of `kinds`; subscribed once this returns.
async fn watch_all(client: &Client, kinds: &[&str]) -> Result<tonic::Streaming<pb::Event>> {
    let req = pb::WatchRequest {
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    };
    Ok(client
        .clone()
        .watch(req)
        .await
        .map_err(|s| anyhow!("watch refused: {s}"))?
        .into_inner())
}

fn obj_state(e: &pb::Event) -> Option<i32> {
    match &e.payload {
        Some(Payload::ObjectiveState(s)) => Some(s.state),
        _ => None,
    }
}

fn is_terminal(state: i32) -> bool {
    state == pb::ObjectiveState::Succeeded as i32
        || state == pb::ObjectiveState::Failed as i32
        || state == pb::ObjectiveState::Cancelled as i32
}

/// Reads `stream` until `n` events satisfy `done`; returns those events with the instant
/// each arrived. Fails after `limit`.
fn collect_until(
    mut stream: tonic::Streaming<pb::Event>,
    n: usize,
    limit: Duration,
    done: impl Fn(&pb::Event) -> bool + Send + Sync + 'static,
) -> JoinHandle<Result<Vec<(pb::Event, Instant)>>> {
    tokio::spawn(async move {
        let mut got = Vec::with_capacity(n);
        let work = async {
            while got.len() < n {
                match stream.message().await {
                    Ok(Some(e)) => {
                        if done(&e) {
                            got.push((e, Instant::now()));
                        }
                    }
                    Ok(None) => bail!("the watch stream ended after {} of {n} events", got.len()),
                    Err(s) => bail!("the watch stream failed: {s}"),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(limit, work).await {
            Ok(Ok(())) => Ok(got),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!(
                "only {} of {n} awaited events arrived within {} s",
                got.len(),
                limit.as_secs()
            ),
        }
    })
}

/// Waits for `n` objectives to end (objective_state terminal events on a global watch).
fn ended_watch(
    stream: tonic::Streaming<pb::Event>,
    n: usize,
    limit: Duration,
) -> JoinHandle<Result<Vec<(pb::Event, Instant)>>> {
    collect_until(stream, n, limit, |e| obj_state(e).is_some_and(is_terminal))
}

fn count_succeeded(ended: &[(pb::Event, Instant)]) -> usize {
    ended
        .iter()
        .filter(|(e, _)| obj_state(e) == Some(pb::ObjectiveState::Succeeded as i32))
        .count()
}

// ---------------------------------------------------------------- figures

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration given in microseconds, in a readable unit.
fn us(v: u64) -> String {
    if v < 1_000 {
        format!("{v} µs")
    } else if v < 1_000_000 {
        format!("{:.2} ms", v as f64 / 1e3)
    } else {
        format!("{:.2} s", v as f64 / 1e6)
    }
}

/// One `label  n  p50  p99  max` row (values in microseconds).
fn row(label: &str, mut values: Vec<u64>) {
    values.sort_unstable();
    if values.is_empty() {
        println!("  {label:<46} (no samples)");
        return;
    }
    println!(
        "  {label:<46} {:>5} {:>10} {:>10} {:>10}",
        values.len(),
        us(pct(&values, 50.0)),
        us(pct(&values, 99.0)),
        us(*values.last().unwrap_or(&0)),
    );
}

fn header(title: &str) {
    println!("\n== {title} ==  (load average {})", loadavg());
}

fn row_header() {
    println!(
        "  {:<46} {:>5} {:>10} {:>10} {:>10}",
        "", "n", "p50", "p99", "max"
    );
}

fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn ts_us(ts: &Option<prost_types::Timestamp>) -> i64 {
    ts.as_ref()
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}

/// `field` (a number) of orchd's JSON log lines whose message is `message`, keyed by the
/// line's `objective` field.
fn log_field(lines: &[serde_json::Value], message: &str, field: &str) -> Vec<(String, u64)> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .filter_map(|l| {
            let f = &l["fields"];
            Some((f["objective"].as_str()?.to_string(), f[field].as_u64()?))
        })
        .collect()
}

fn of(pairs: &[(String, u64)], ids: &HashSet<String>) -> Vec<u64> {
    pairs
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, v)| *v)
        .collect()
}

// ---------------------------------------------------------------- 1. attempt overhead

const OVERHEAD_N: usize = 200;

async fn overhead(backend: &str) -> Result<()> {
    let dir = bench_dir("overhead")?;
    // The runner logs `spawn_us` where it runs: in orchd with the local executor, in each
    // attempt's shim (its own log) with live restore. This section measures the runner's
    // spawn, so it runs the local executor.
    let config = dir.path().join("orchd.toml");
    fs::write(&config, "live_restore = false\n")
        .with_context(|| format!("write {}", config.display()))?;
    let mut d = Daemon::start(dir.path(), "orchd", &["--limits-backend", backend], true)?;
    d.wait_serving().await?;
    let client = d.client().await?;
    let st = client
        .clone()
        .daemon_status(pb::DaemonStatusRequest {})
        .await
        .map_err(|s| anyhow!("daemon status: {s}"))?
        .into_inner();
    header(&format!(
        "1. attempt overhead: --limits-backend {backend} (DaemonStatus: {}, max_parallel {})",
        st.limits_backend, st.max_parallel
    ));
    println!("  limits detail: {}", st.limits_detail);
    let work = d.work_dir()?;
    let req = one_step(&work, "overhead", &["true"]);

    // Sequential: submit one, wait for its attempt_ended, then the next (no queueing).
    let mut ended = watch_all(&client, &["attempt_ended"]).await?;
    let mut c = client.clone();
    let mut seq_ids = HashSet::new();
    let mut e2e = Vec::new();
    let mut submit_lat = Vec::new();
    let mut failures = 0;
    const WARMUP: usize = 5;
    for i in 0..WARMUP + OVERHEAD_N {
        let sent = Instant::now();
        let id = c
            .submit(req.clone())
            .await
            .map_err(|s| anyhow!("submit refused: {s}"))?
            .into_inner()
            .id;
        let replied = Instant::now();
        if i >= WARMUP {
            submit_lat.push((replied - sent).as_micros() as u64);
        }
        let event = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ended.message().await {
                    Ok(Some(e)) if e.objective_id == id => return Ok(e),
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("the watch stream ended"),
                    Err(s) => bail!("the watch stream failed: {s}"),
                }
            }
        })
        .await
        .map_err(|_| anyhow!("objective {id}: no attempt_ended within 20 s"))??;
        let got = replied.elapsed();
        if !matches!(&event.payload, Some(Payload::AttemptEnded(a)) if a.outcome == pb::Outcome::Success as i32)
        {
            failures += 1;
        }
        if i >= WARMUP {
            e2e.push(got.as_micros() as u64);
            seq_ids.insert(id);
        }
    }

    // Burst: 200 submitted with 64 in flight; they queue behind max_parallel.
    let done = ended_watch(
        watch_all(&client, &["objective_state"]).await?,
        OVERHEAD_N,
        Duration::from_secs(60),
    );
    let t = Instant::now();
    let replies = submit_many(&client, &req, OVERHEAD_N, 64).await?;
    let t_submitted = t.elapsed();
    let done = done.await.context("watch task panicked")??;
    let t_all = t.elapsed();
    let burst_ids: HashSet<String> = replies.iter().map(|(id, _, _)| id.clone()).collect();
    let burst_ok = count_succeeded(&done);
    d.stop().await?;

    let lines = d_log(&dir)?;
    let spawn = log_field(&lines, "attempt started", "spawn_us");
    let recorded = log_field(&lines, "attempt end recorded", "exit_to_recorded_us");
    // The runner's share of exit_to_recorded (tree empty, pipes drained), when logged.
    let reported = log_field(&lines, "attempt reaped", "exit_to_report_us");
    let logged = of(&spawn, &seq_ids).len() + of(&recorded, &seq_ids).len();
    row_header();
    row("spawn_us (fork+exec), sequential", of(&spawn, &seq_ids));
    row(
        "exit_to_recorded_us (reap -> durable), seq.",
        of(&recorded, &seq_ids),
    );
    row(
        "  of which runner: exit_to_report_us, seq.",
        of(&reported, &seq_ids),
    );
    row("Submit call (durable reply), seq.", submit_lat);
    row("submit reply -> attempt_ended received, seq.", e2e);
    row(
        "spawn_us, burst of 200 (64 in flight)",
        of(&spawn, &burst_ids),
    );
    row("exit_to_recorded_us, burst", of(&recorded, &burst_ids));
    row(
        "  of which runner: exit_to_report_us, burst",
        of(&reported, &burst_ids),
    );
    println!(
        "  burst: 200 replies in {:.0} ms, all ended in {:.0} ms ({:.0} objectives/s end to end)",
        t_submitted.as_secs_f64() * 1e3,
        t_all.as_secs_f64() * 1e3,
        per_s(OVERHEAD_N, t_all)
    );
    let mut seq_spawn = of(&spawn, &seq_ids);
    seq_spawn.sort_unstable();
    let spawn_p50 = pct(&seq_spawn, 50.0);
    versus::score(
        &format!("spawn -> exec p50 (`spawn_us`, sequential, local executor), {backend} backend"),
        if seq_spawn.is_empty() {
            "not logged".to_string()
        } else {
            us(spawn_p50)
        },
        String::new(),
        versus::raw_spawn_p50()
            .map(|v| format!("{} (fork+exec+wait)", us(v)))
            .unwrap_or_default(),
        String::new(),
        "<= 1 ms",
        (!seq_spawn.is_empty()).then_some(spawn_p50 <= 1_000),
    );
    check(
        logged == 2 * OVERHEAD_N,
        "orchd logged spawn_us and exit_to_recorded_us for every sequential attempt",
    );
    check(
        failures == 0 && burst_ok == OVERHEAD_N,
        &format!(
            "every attempt succeeded (sequential failures {failures}, burst {burst_ok}/{OVERHEAD_N})"
        ),
    );
    Ok(())
}

/// The log lines of the daemon that ran in `dir` (its stderr file `orchd.log`).
fn d_log(dir: &tempfile::TempDir) -> Result<Vec<serde_json::Value>> {
    let path = dir.path().join("orchd.log");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("read orchd's log {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

// ---------------------------------------------------------------- 2 + 3. submit throughput, RSS

const SUBMIT_N: usize = 1_000;

/// Runs `sh -c script` with `args` in `dir`; returns its wall time.
async fn shell_loop(dir: &Path, script: &str, args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("run sh")?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "shell loop failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

async fn submit_throughput() -> Result<()> {
    let dir = bench_dir("submit")?;
    let mut d = Daemon::start(dir.path(), "orchd", &[], false)?;
    d.wait_serving().await?;
    let rss_start = d.rss_kib()?;
    let client = d.client().await?;
    let work = d.work_dir()?;
    let socket = d.socket.display().to_string();
    header(&format!(
        "2. durable submit throughput ({SUBMIT_N} one-step `true` objectives, default max_parallel)"
    ));

    // The client's own cost: the same number of `orchctl daemon status` processes.
    let n = SUBMIT_N.to_string();
    let t_status = shell_loop(
        &work,
        r#"i=0; while [ $i -lt "$3" ]; do "$1" --socket "$2" daemon status >/dev/null || exit 1; i=$((i+1)); done"#,
        &[&ORCHCTL, &socket, &n],
    )
    .await?;

    // (a) sequential orchctl processes.
    let cpu_a0 = cpu_secs(d.pid())?;
    let done = ended_watch(
        watch_all(&client, &["objective_state"]).await?,
        SUBMIT_N,
        Duration::from_secs(120),
    );
    let t = Instant::now();
    let t_loop = shell_loop(
        &work,
        r#"i=0; while [ $i -lt "$3" ]; do "$1" --socket "$2" submit -- true >/dev/null || exit 1; i=$((i+1)); done"#,
        &[&ORCHCTL, &socket, &n],
    )
    .await?;
    let ended_a = done.await.context("watch task panicked")??;
    let t_all_a = t.elapsed();
    let ok_a = count_succeeded(&ended_a);
    let cpu_a1 = cpu_secs(d.pid())?;
    let rss_a = d.rss_kib()?;

    // (b) one gRPC client, 64 submits in flight.
    let cpu_b0 = cpu_secs(d.pid())?;
    let done = ended_watch(
        watch_all(&client, &["objective_state"]).await?,
        SUBMIT_N,
        Duration::from_secs(120),
    );
    let t = Instant::now();
    let replies = submit_many(&client, &one_step(&work, "submit", &["true"]), SUBMIT_N, 64).await?;
    let t_submit_b = t.elapsed();
    let ended_b = done.await.context("watch task panicked")??;
    let t_all_b = t.elapsed();
    let ok_b = count_succeeded(&ended_b);
    let cpu_b1 = cpu_secs(d.pid())?;
    let rss_b = d.rss_kib()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_b_later = d.rss_kib()?;
    let store_bytes = client
        .clone()
        .daemon_status(pb::DaemonStatusRequest {})
        .await
        .map_err(|s| anyhow!("daemon status: {s}"))?
        .into_inner()
        .store_bytes;
    d.stop().await?;

    println!(
        "  {:<58} {:>10} {:>12} {:>14}",
        "", "wall", "per call", "rate"
    );
    let line = |label: &str, took: Duration, n: usize| {
        println!(
            "  {label:<58} {:>8.2} s {:>12} {:>10.0} /s",
            took.as_secs_f64(),
            us((took.as_micros() / n as u128) as u64),
            per_s(n, took)
        );
    };
    line(
        "`orchctl daemon status` x1000 (client cost, no write)",
        t_status,
        SUBMIT_N,
    );
    line(
        "(a) `orchctl submit -- true` x1000, sequential processes",
        t_loop,
        SUBMIT_N,
    );
    line("(a) ... until all 1000 succeeded", t_all_a, SUBMIT_N);
    line(
        "(b) gRPC Submit x1000, 64 in flight: all replies",
        t_submit_b,
        SUBMIT_N,
    );
    line("(b) ... until all 1000 succeeded", t_all_b, SUBMIT_N);
    let replied: Vec<u64> = replies
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_micros() as u64)
        .collect();
    row_header();
    row(
        "(b) Submit call latency (64 in flight)",
        replies.iter().map(|r| r.2).collect(),
    );
    row("(b) gap between consecutive replies", replied);
    cpu_line("(a) CPU", cpu_a0, cpu_a1, t_all_a, SUBMIT_N);
    cpu_line("(b) CPU", cpu_b0, cpu_b1, t_all_b, SUBMIT_N);
    check(
        ok_a == SUBMIT_N && ok_b == SUBMIT_N,
        &format!("every objective succeeded ((a) {ok_a}/{SUBMIT_N}, (b) {ok_b}/{SUBMIT_N})"),
    );

    header("3. orchd resident memory (VmRSS)");
    println!(
        "  right after start (health SERVING):        {:>7} KiB",
        rss_start
    );
    println!(
        "  after (a): 1,000 objectives ended:          {:>7} KiB",
        rss_a
    );
    println!(
        "  after (b): 2,000 objectives ended:          {:>7} KiB",
        rss_b
    );
    println!(
        "  2 s later, idle:                            {:>7} KiB",
        rss_b_later
    );
    println!(
        "  store size with 2,000 ended objectives:     {:>7} KiB",
        store_bytes / 1024
    );
    Ok(())
}

// ---------------------------------------------------------------- 4. recovery

/// Ended objectives in the recovery store (`ORCH_BENCH_RECOVERY_ENDED` overrides).
fn recovery_ended() -> usize {
    std::env::var("ORCH_BENCH_RECOVERY_ENDED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}
const RECOVERY_RUNNING: usize = 100;

async fn recovery() -> Result<()> {
    let n_ended = recovery_ended();
    let dir = bench_dir("recovery")?;
    let args = ["--max-parallel", "100", "--grace-period", "1s"];
    let mut d = Daemon::start(dir.path(), "orchd", &args, false)?;
    d.wait_serving().await?;
    let client = d.client().await?;
    let work = d.work_dir()?;
    header(&format!(
        "4. recovery: {n_ended} ended + {RECOVERY_RUNNING} running objectives, kill -9, restart (auto backend, --max-parallel 100)"
    ));
    let backend = client
        .clone()
        .daemon_status(pb::DaemonStatusRequest {})
        .await
        .map_err(|s| anyhow!("daemon status: {s}"))?
        .into_inner()
        .limits_backend;
    println!("  limits backend: {backend}");

    let rss_empty = d.rss_kib()?;
    let cpu0 = cpu_secs(d.pid())?;
    let done = ended_watch(
        watch_all(&client, &["objective_state"]).await?,
        n_ended,
        Duration::from_secs(300),
    );
    let t = Instant::now();
    submit_many(&client, &one_step(&work, "ended", &["true"]), n_ended, 64).await?;
    let ended = done.await.context("watch task panicked")??;
    let t_fill = t.elapsed();
    let cpu1 = cpu_secs(d.pid())?;
    let rss_full = d.rss_kib()?;
    println!(
        "  filled: {n_ended} objectives ended in {:.1} s ({} succeeded; {:.0} objectives/s)",
        t_fill.as_secs_f64(),
        count_succeeded(&ended),
        per_s(n_ended, t_fill)
    );
    cpu_line("  fill CPU", cpu0, cpu1, t_fill, n_ended);
    println!("  orchd VmRSS: {rss_empty} KiB at start, {rss_full} KiB after the fill");
    // Whether the end-to-end rate holds as the store grows.
    let block = (n_ended / 10).max(1);
    let mut rates = Vec::new();
    let mut prev = t;
    for chunk in ended.chunks(block) {
        if let Some((_, at)) = chunk.last() {
            rates.push(format!("{:.0}", per_s(chunk.len(), *at - prev)));
            prev = *at;
        }
    }
    println!(
        "  objectives/s ended, per successive {block}: {}",
        rates.join(" ")
    );

    let started = collect_until(
        watch_all(&client, &["attempt_started"]).await?,
        RECOVERY_RUNNING,
        Duration::from_secs(60),
        |_| true,
    );
    submit_many(
        &client,
        &one_step(&work, "running", &["sleep", "1000"]),
        RECOVERY_RUNNING,
        16,
    )
    .await?;
    let started = started.await.context("watch task panicked")??;
    let mut sleeps: Vec<(u32, u64)> = Vec::new();
    for (e, _) in &started {
        if let Some(Payload::AttemptStarted(a)) = &e.payload
            && let Some((_, ticks)) = proc_state(a.pid)
        {
            sleeps.push((a.pid, ticks));
        }
    }
    // If this section fails half-way, the sleeps do not outlive the bench.
    let _guard = KillOnDrop(sleeps.clone());
    let alive_before = sleeps.iter().filter(|(p, t)| same_alive(*p, *t)).count();
    let store_bytes = client
        .clone()
        .daemon_status(pb::DaemonStatusRequest {})
        .await
        .map_err(|s| anyhow!("daemon status: {s}"))?
        .into_inner()
        .store_bytes;
    drop(client);
    d.kill9()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alive_orphans = sleeps.iter().filter(|(p, t)| same_alive(*p, *t)).count();
    println!(
        "  store: {:.1} MiB; {alive_before} sleeps running; after kill -9 of orchd {alive_orphans} are still alive (orphans)",
        store_bytes as f64 / (1 << 20) as f64
    );

    // Restart on the same state dir.
    let mut d = Daemon::start(dir.path(), "orchd-restart", &args, false)?;
    let ready = d.wait_serving().await?;
    let t_ready = Instant::now();
    // The kill is sent during recovery; give the kernel a moment to finish the exits.
    let mut survivors;
    loop {
        survivors = sleeps
            .iter()
            .filter(|(p, t)| same_alive(*p, *t))
            .copied()
            .collect::<Vec<_>>();
        if survivors.is_empty() || t_ready.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gone_after = t_ready.elapsed();
    let rss_restarted = d.rss_kib()?;
    // For comparison with the recovery time: one walk of the log tree, stat-ing every entry.
    let t_walk = Instant::now();
    let (log_files, log_bytes) = walk(&dir.path().join("state").join("logs"));
    let t_walk = t_walk.elapsed();
    let lines = d.log_lines()?;
    let rec = lines
        .iter()
        .find(|l| l["fields"]["message"] == "recovery done")
        .map(|l| l["fields"].clone());
    println!(
        "  exec -> health SERVING:          {:>8.1} ms",
        ready.as_secs_f64() * 1e3
    );
    match &rec {
        Some(f) => println!(
            "  \"recovery done\" log line:        {:>8} ms  (objectives {}, interrupted_attempts {}, killed_trees {})",
            f["ms"], f["objectives"], f["interrupted_attempts"], f["killed_trees"]
        ),
        None => println!("  no \"recovery done\" line in {}", d.log.display()),
    }
    println!("  restarted orchd VmRSS:           {rss_restarted:>8} KiB");
    println!(
        "  state/logs/: {log_files} files, {:.1} MiB; one walk stat-ing each (this bench, warm cache): {:.0} ms",
        log_bytes as f64 / (1 << 20) as f64,
        t_walk.as_secs_f64() * 1e3
    );
    println!(
        "  old sleeps alive after restart:  {:>8} of {} (checked {:.0} ms after SERVING)",
        survivors.len(),
        sleeps.len(),
        gone_after.as_secs_f64() * 1e3
    );
    check(
        alive_before == RECOVERY_RUNNING,
        "all 100 sleeps were running before kill -9",
    );
    check(
        rec.as_ref().is_some_and(|f| {
            f["objectives"] == RECOVERY_RUNNING && f["interrupted_attempts"] == RECOVERY_RUNNING
        }),
        "recovery loaded 100 objectives and interrupted 100 attempts",
    );
    check(
        survivors.is_empty(),
        "the restarted daemon killed every leftover sleep",
    );
    // Only now clean up what the daemon missed (by pid, after checking its start time).
    for (pid, ticks) in &survivors {
        if same_alive(*pid, *ticks) {
            let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }

    // The restarted daemon reruns the 100 steps; stop it (drain: SIGTERM, 1 s grace) and
    // make sure none of those new sleeps outlives it either.
    let client = d.client().await?;
    let mut new_sleeps: Vec<(u32, u64)> = Vec::new();
    let list = client
        .clone()
        .list_objectives(pb::ListObjectivesRequest {
            state: Some(pb::ObjectiveState::Running as i32),
            limit: 0,
        })
        .await
        .map_err(|s| anyhow!("list: {s}"))?
        .into_inner();
    for o in list.objectives {
        let obj = client
            .clone()
            .get_objective(pb::GetObjectiveRequest { id: o.id })
            .await
            .map_err(|s| anyhow!("get objective: {s}"))?
            .into_inner();
        for s in obj.steps {
            if let Some(pid) = s.attempts.last().and_then(|a| a.pid)
                && let Some((_, ticks)) = proc_state(pid)
            {
                new_sleeps.push((pid, ticks));
            }
        }
    }
    drop(client);
    d.stop().await?;
    let left: Vec<_> = new_sleeps
        .iter()
        .filter(|(p, t)| same_alive(*p, *t))
        .collect();
    for (pid, _) in &left {
        let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    if !left.is_empty() {
        println!(
            "  note: {} rerun sleeps outlived the daemon's SIGTERM drain (killed by the bench)",
            left.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- 5. events to watchers

const PROGRESS_N: usize = 5_000;

/// What one watcher saw: `(seq, event time µs, receive time µs)` of each progress event.
type Seen = Vec<(u64, i64, i64)>;

async fn events(watchers: usize) -> Result<()> {
    let dir = bench_dir("events")?;
    let mut d = Daemon::start(dir.path(), "orchd", &[], false)?;
    d.wait_serving().await?;
    let client = d.client().await?;
    let work = d.work_dir()?;
    let fifo = work.join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("mkfifo {}", fifo.display()))?;
    // The step blocks on the fifo until every watcher is live, then prints as fast as it can.
    let script = format!(
        r#"read x < go; awk 'BEGIN {{ for (i = 0; i < {PROGRESS_N}; i++) printf "::orch-progress::{{\"percent\":%d,\"message\":\"m\"}}\n", i % 101 }}'"#
    );
    let id = client
        .clone()
        .submit(one_step(&work, "progress", &["sh", "-c", &script]))
        .await
        .map_err(|s| anyhow!("submit refused: {s}"))?
        .into_inner()
        .id;

    let live = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        // Each watcher is its own client connection.
        let mut c = d.client().await?;
        let (id, live) = (id.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = c
                .watch(pb::WatchRequest {
                    objective_id: id,
                    ..Default::default()
                })
                .await
                .map_err(|s| anyhow!("watch refused: {s}"))?
                .into_inner();
            let mut seen: Seen = Vec::with_capacity(PROGRESS_N);
            let mut last_seq = 0u64;
            let mut in_order = true;
            loop {
                match stream.message().await {
                    Ok(Some(e)) => {
                        let recv = now_us();
                        in_order &= e.seq > last_seq;
                        last_seq = e.seq;
                        match &e.payload {
                            Some(Payload::AttemptStarted(_)) => {
                                live.fetch_add(1, Ordering::SeqCst);
                            }
                            Some(Payload::Progress(_)) => seen.push((e.seq, ts_us(&e.time), recv)),
                            _ => {}
                        }
                    }
                    // The stream ends after the objective's terminal state.
                    Ok(None) => break,
                    Err(s) => bail!("watch failed: {s}"),
                }
            }
            anyhow::Ok((seen, in_order))
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while live.load(Ordering::SeqCst) < watchers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {watchers} watchers saw the attempt start within 30 s",
                live.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cpu_d0 = cpu_secs(d.pid())?;
    let cpu_b0 = cpu_secs(std::process::id())?;
    let go = Instant::now();
    let go_us = now_us();
    let fifo2 = fifo.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&fifo2)
            .with_context(|| format!("open {}", fifo2.display()))?;
        f.write_all(b"go\n").context("write the fifo")?;
        Ok(())
    })
    .await
    .context("fifo task panicked")??;

    let mut all: Vec<(Seen, bool)> = Vec::new();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .map_err(|_| anyhow!("a watcher did not finish within 60 s"))?
            .context("watcher task panicked")??;
        all.push(r);
    }
    let wall = go.elapsed();
    let cpu_d1 = cpu_secs(d.pid())?;
    let cpu_b1 = cpu_secs(std::process::id())?;
    let state = client
        .clone()
        .get_objective(pb::GetObjectiveRequest { id: id.clone() })
        .await
        .map_err(|s| anyhow!("get objective: {s}"))?
        .into_inner()
        .state;
    d.stop().await?;

    header(&format!(
        "5. events to watchers: {PROGRESS_N} progress events, {watchers} watcher(s) (Watch with objective_id, one connection each)"
    ));
    let first_seqs: Vec<u64> = all[0].0.iter().map(|s| s.0).collect();
    let complete = all.iter().all(|(s, ord)| {
        *ord && s.len() == PROGRESS_N && s.iter().map(|x| x.0).eq(first_seqs.iter().copied())
    });
    let ev_first = all[0].0.first().map_or(0, |s| s.1);
    let ev_last = all[0].0.last().map_or(0, |s| s.1);
    let mut delays = Vec::new();
    let mut rates = Vec::new();
    let mut flowing = Vec::new();
    let mut first_recv = i64::MAX;
    let mut last_recv = go_us;
    let mut total = 0usize;
    for (seen, _) in &all {
        total += seen.len();
        for (_, t, r) in seen {
            delays.push((r - t).max(0) as u64);
        }
        if let (Some(&(_, _, r0)), Some(&(_, _, r))) = (seen.first(), seen.last()) {
            first_recv = first_recv.min(r0);
            last_recv = last_recv.max(r);
            let span = (r - go_us).max(1) as f64 / 1e6;
            rates.push((seen.len() as f64 / span) as u64);
            let span = (r - r0).max(1) as f64 / 1e6;
            flowing.push((seen.len() as f64 / span) as u64);
        }
    }
    rates.sort_unstable();
    flowing.sort_unstable();
    let span_all = (last_recv - go_us).max(1) as f64 / 1e6;
    println!(
        "  produced: engine stamped {} events over {:.0} ms (first event {:.0} ms after go)",
        first_seqs.len(),
        (ev_last - ev_first) as f64 / 1e3,
        (ev_first - go_us) as f64 / 1e3
    );
    println!(
        "  first event received {:.0} ms after go, last {:.0} ms after go",
        (first_recv - go_us) as f64 / 1e3,
        (last_recv - go_us) as f64 / 1e3
    );
    println!(
        "  delivered per watcher (go -> its last event): p50 {} events/s, min {} events/s",
        pct(&rates, 50.0),
        rates.first().copied().unwrap_or(0)
    );
    println!(
        "  delivered per watcher (its first -> its last event): p50 {} events/s, min {} events/s",
        pct(&flowing, 50.0),
        flowing.first().copied().unwrap_or(0)
    );
    println!(
        "  delivered in total: {total} events in {:.0} ms = {:.0} events/s",
        span_all * 1e3,
        total as f64 / span_all
    );
    println!(
        "  CPU from go to the last watcher done ({:.0} ms): orchd {:.2} CPU-s, this bench (the watchers) {:.2} CPU-s",
        wall.as_secs_f64() * 1e3,
        cpu_d1.0 - cpu_d0.0,
        cpu_b1.0 - cpu_b0.0
    );
    row_header();
    let mut sorted = delays.clone();
    sorted.sort_unstable();
    let p99 = pct(&sorted, 99.0);
    let rate = first_seqs.len() as f64 / ((ev_last - ev_first).max(1) as f64 / 1e6);
    if watchers >= 100 {
        versus::score(
            &format!("{watchers} watchers: delivery delay p99 (produced at {rate:.0} events/s)"),
            us(p99),
            String::new(),
            String::new(),
            String::new(),
            "<= 10 ms at 10,000 events/s",
            Some(p99 <= 10_000 && rate >= 10_000.0),
        );
    }
    row("delivery delay (receive - event time)", delays);
    println!(
        "  (event times are stamped in whole milliseconds before the flush, so a delay reads up to 1 ms high)"
    );
    check(
        complete,
        &format!("every watcher got all {PROGRESS_N} progress events, in order, the same seqs"),
    );
    check(
        state == pb::ObjectiveState::Succeeded as i32,
        "the progress objective succeeded",
    );
    Ok(())
}
