//! `cargo bench --bench shim`: what live restore costs per attempt, on the real release
//! `orchd`, with `live_restore = false` (the agent is orchd's child) against `true` (the
//! agent runs under a shim: orchd re-executed as `orchd __shim`, forked away).
//!
//! - spawn latency: from just before `orchctl submit` to the moment the agent runs
//!   (`date +%s%N` written by the agent), median and p90 of 40 sequential attempts, and
//!   the round trip of `orchctl submit --wait -- true`;
//! - memory: RSS and PSS (`/proc/PID/smaps_rollup`) of each shim while 10 agents run.
//!
//! Figures are printed, never asserted (issue 17's `benches/orch.rs` covers the rest).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");
const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");
const ROUNDS: usize = 40;
const RUNNING: usize = 10;

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(live_restore: bool) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("orch-bench-shim-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("orchd.toml");
        fs::write(
            &config,
            format!("live_restore = {live_restore}\nmax_parallel = 64\n"),
        )
        .expect("config");
        let mut cmd = Command::new(ORCHD);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ORCH_") {
                cmd.env_remove(&key);
            }
        }
        let child = cmd
            .arg("--socket")
            .arg(dir.path().join("orchd.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start orchd");
        let d = Daemon { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.ctl(&["daemon", "status"]).status.success() {
            assert!(Instant::now() < deadline, "orchd did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(ORCHCTL)
            .env("ORCH_SOCKET", self.dir.path().join("orchd.sock"))
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .expect("run orchctl")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Milliseconds from before `submit` until the agent ran, and of `submit --wait -- true`.
fn latency(d: &Daemon) -> (Vec<f64>, Vec<f64>) {
    let (mut start, mut trip) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let f = d.dir.path().join(format!("t{i}"));
        let script = format!("date +%s%N > {}", f.display());
        let t0 = now_ns();
        let out = d.ctl(&[
            "submit",
            "--wait",
            "--retries",
            "0",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        assert!(out.status.success(), "{out:?}");
        let ran: u128 = fs::read_to_string(&f)
            .expect("the agent's time")
            .trim()
            .parse()
            .expect("a number");
        start.push((ran.saturating_sub(t0)) as f64 / 1e6);
        let t = Instant::now();
        let out = d.ctl(&["submit", "--wait", "--retries", "0", "--", "true"]);
        assert!(out.status.success(), "{out:?}");
        trip.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (start, trip)
}

fn kib(path: &Path, key: &str) -> Option<f64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("shim cost per attempt ({ROUNDS} attempts each, {build} orchd)");
    let mut rows = Vec::new();
    for live in [false, true] {
        let d = Daemon::start(live);
        let (mut start, mut trip) = latency(&d);
        rows.push((
            live,
            pct(&mut start, 0.5),
            pct(&mut start, 0.9),
            pct(&mut trip, 0.5),
        ));
        if live {
            for _ in 0..RUNNING {
                let out = d.ctl(&["submit", "--retries", "0", "--", "sleep", "60"]);
                assert!(out.status.success(), "{out:?}");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            let shims = loop {
                let ids: Vec<u32> = fs::read_dir(d.state().join("shims"))
                    .map(|r| {
                        r.flatten()
                            .filter(|e| e.path().join("started.json").exists())
                            .filter_map(|e| fs::read_to_string(e.path().join("shim.json")).ok())
                            .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                            .filter_map(|v| v["pid"].as_u64().map(|p| p as u32))
                            .collect()
                    })
                    .unwrap_or_default();
                if ids.len() >= RUNNING || Instant::now() > deadline {
                    break ids;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let (mut rss, mut pss) = (Vec::new(), Vec::new());
            for pid in &shims {
                rss.extend(kib(Path::new(&format!("/proc/{pid}/status")), "VmRSS:"));
                pss.extend(kib(Path::new(&format!("/proc/{pid}/smaps_rollup")), "Pss:"));
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64 / 1024.0;
            println!(
                "shim memory ({} shims): RSS {:.1} MiB each (mean), PSS {:.1} MiB each (the orchd image is shared)",
                shims.len(),
                mean(&rss),
                mean(&pss)
            );
        }
    }
    println!(
        "{:<14} {:>14} {:>14} {:>22}",
        "live_restore", "start p50 ms", "start p90 ms", "submit --wait p50 ms"
    );
    for (live, p50, p90, trip) in &rows {
        println!("{live:<14} {p50:>14.2} {p90:>14.2} {trip:>22.2}");
    }
    if let [(_, a, _, ta), (_, b, _, tb)] = rows.as_slice() {
        println!(
            "shim spawn latency: +{:.2} ms to the agent's start, +{:.2} ms per short attempt",
            b - a,
            tb - ta
        );
    }
}
