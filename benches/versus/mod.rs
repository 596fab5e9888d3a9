//! Sections `machine`, `versus` and `targets` of `cargo bench --bench orch`: the raw limits
//! of the machine, orch beside pueue 4.0.4 (installed from crates.io into
//! `target/bench-tools/pueue-4.0.4/` on first use), and the figures of issue 17 with their
//! targets. Every figure is printed, never asserted.

use super::*;

/// Raw machine limits measured in this run (read by later sections for their ratios).
#[derive(Default, Clone, Copy)]
pub struct Machine {
    /// fork+exec+wait of /bin/true, 2 in parallel, per second.
    pub spawn2_per_s: f64,
    /// fork+exec+wait of /bin/true, sequential, p50 in µs.
    pub spawn_seq_p50_us: u64,
}

static MACHINE: std::sync::Mutex<Machine> = std::sync::Mutex::new(Machine {
    spawn2_per_s: 0.0,
    spawn_seq_p50_us: 0,
});

/// One line of the closing scorecard: a figure of issue 17 with orch, pueue (when pueue
/// has that figure), the raw machine (when there is a raw equivalent), the ratio and the
/// target.
pub struct Score {
    pub figure: String,
    pub orch: String,
    pub pueue: String,
    pub raw: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
}

static SCORES: std::sync::Mutex<Vec<Score>> = std::sync::Mutex::new(Vec::new());

/// Adds a line to the closing scorecard.
pub fn score(
    figure: &str,
    orch: String,
    pueue: String,
    raw: String,
    ratio: String,
    target: &str,
    met: Option<bool>,
) {
    if let Ok(mut g) = SCORES.lock() {
        g.push(Score {
            figure: figure.to_string(),
            orch,
            pueue,
            raw,
            ratio,
            target: target.to_string(),
            met,
        });
    }
}

/// The raw machine's fork+exec+wait p50 (sequential), when section 0 ran.
pub fn raw_spawn_p50() -> Option<u64> {
    MACHINE
        .lock()
        .ok()
        .map(|m| m.spawn_seq_p50_us)
        .filter(|v| *v > 0)
}

/// Prints every scorecard line collected in this run (a Markdown table).
pub fn print_scorecard() {
    let Ok(g) = SCORES.lock() else { return };
    if g.is_empty() {
        return;
    }
    header("issue 17 scorecard (this run)");
    println!("| figure | orch | pueue 4.0.4 | raw machine | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|");
    for s in g.iter() {
        let met = match s.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {met} |",
            s.figure, s.orch, s.pueue, s.raw, s.ratio, s.target
        );
    }
}

fn p50(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    pct(&v, 50.0)
}

fn spawn_true_loop(n: usize) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new("/bin/true")
            .status()
            .context("run /bin/true")?;
        if !s.success() {
            bail!("/bin/true failed: {s}");
        }
        out.push(t.elapsed().as_micros() as u64);
    }
    Ok(out)
}

/// Raw limits: fork+exec+wait of `/bin/true` (sequential and 2 in parallel) and a 4 KiB
/// write + fsync in /tmp (where the bench's state directories are).
pub fn machine() -> Result<Machine> {
    header("0. raw machine limits (same run)");
    const N: usize = 1000;
    spawn_true_loop(50)?;
    let seq = spawn_true_loop(N)?;
    let seq_rate = 1e6 * N as f64 / seq.iter().sum::<u64>().max(1) as f64;
    let t = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(|| spawn_true_loop(N / 2)))
        .collect();
    for th in threads {
        th.join()
            .map_err(|_| anyhow!("a spawn thread panicked"))??;
    }
    let par_rate = per_s(N, t.elapsed());
    let dir = bench_dir("fsync")?;
    let path = dir.path().join("f");
    let mut f = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = [7u8; 4096];
    let mut syncs = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        f.write_all(&block).context("write")?;
        f.sync_data().context("fdatasync")?;
        syncs.push(t.elapsed().as_micros() as u64);
    }
    let sync_p50 = p50(syncs.clone());
    let seq_p50 = p50(seq);
    println!(
        "  fork+exec+wait /bin/true, sequential:  p50 {}  ({seq_rate:.0}/s)",
        us(seq_p50)
    );
    println!("  fork+exec+wait /bin/true, 2 parallel:  {par_rate:.0}/s");
    row_header();
    row("4 KiB write + fdatasync (/tmp)", syncs);
    println!(
        "  4 KiB write + fdatasync: {:.0}/s",
        1e6 / sync_p50.max(1) as f64
    );
    let m = Machine {
        spawn2_per_s: par_rate,
        spawn_seq_p50_us: seq_p50,
    };
    if let Ok(mut g) = MACHINE.lock() {
        *g = m;
    }
    Ok(m)
}

// ---------------------------------------------------------------- pueue

const PUEUE_VERSION: &str = "4.0.4";

/// `target/bench-tools/pueue-4.0.4/bin`, installed there with `cargo install` if missing.
fn pueue_bin() -> Result<PathBuf> {
    let target = PathBuf::from(BUILT_ORCHD)
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cannot find the target directory from {BUILT_ORCHD}"))?;
    let root = target
        .join("bench-tools")
        .join(format!("pueue-{PUEUE_VERSION}"));
    let bin = root.join("bin");
    if bin.join("pueue").is_file() && bin.join("pueued").is_file() {
        return Ok(bin);
    }
    println!(
        "  installing pueue {PUEUE_VERSION} into {} (once; cached)",
        root.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "install",
            "pueue",
            "--version",
            PUEUE_VERSION,
            "--locked",
            "--root",
        ])
        .arg(&root)
        .status()
        .context("run cargo install pueue")?;
    if !st.success() {
        bail!("cargo install pueue --version {PUEUE_VERSION} failed ({st})");
    }
    Ok(bin)
}

struct Pueue {
    bin: PathBuf,
    config: PathBuf,
    daemon: Child,
}

impl Pueue {
    fn start(dir: &Path) -> Result<Pueue> {
        let bin = pueue_bin()?;
        let config = dir.join("pueue.yml");
        let data = dir.join("pueue-data");
        fs::create_dir_all(&data).context("create the pueue dir")?;
        fs::write(
            &config,
            format!(
                "shared:\n  pueue_directory: {d}\n  runtime_directory: {d}\n  use_unix_socket: true\n  unix_socket_path: {d}/pueue.sock\ndaemon:\n  default_parallel_tasks: 2\n",
                d = data.display()
            ),
        )
        .context("write pueue.yml")?;
        let daemon = Command::new(bin.join("pueued"))
            .arg("-c")
            .arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start pueued")?;
        let p = Pueue {
            bin,
            config,
            daemon,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.cmd(&["status"]).status().is_ok_and(|s| s.success()) {
            if Instant::now() > deadline {
                bail!("pueued did not answer within 20 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("pueue"));
        c.arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .cmd(args)
            .stdout(Stdio::piped())
            .output()
            .context("run pueue")?;
        if !out.status.success() {
            bail!("pueue {args:?} failed ({})", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Pueue {
    fn drop(&mut self) {
        let _ = signal::kill(Pid::from_raw(self.daemon.id() as i32), Signal::SIGTERM);
        let _ = self.daemon.wait();
    }
}

/// The wall time of one process, in µs; fails if it fails.
fn timed(mut c: Command) -> Result<u64> {
    let t = Instant::now();
    let st = c.status().context("run a client")?;
    let took = t.elapsed().as_micros() as u64;
    if !st.success() {
        bail!("{c:?} failed ({st})");
    }
    Ok(took)
}

fn orchctl(socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(&*ORCHCTL);
    c.arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ORCH_") {
            c.env_remove(&key);
        }
    }
    c
}

fn ratio_row(label: &str, orch: f64, pueue: f64, unit: &str) {
    println!(
        "  {label:<52} {:>12} {:>12} {:>8.2}",
        format!("{orch:.2} {unit}"),
        format!("{pueue:.2} {unit}"),
        orch / pueue.max(1e-9)
    );
}

/// orch beside pueue: client process, submit → seen done, a shell loop of 300, idle RSS.
pub async fn versus() -> Result<()> {
    header(&format!(
        "V. orch beside pueue {PUEUE_VERSION} (2 parallel slots each, same machine, same run)"
    ));
    let dir = bench_dir("versus")?;
    let pueue = match Pueue::start(dir.path()) {
        Ok(p) => p,
        Err(e) => {
            println!("  pueue unavailable, section skipped: {e:#}");
            CHECK_FAILED.store(true, Ordering::SeqCst);
            return Ok(());
        }
    };
    let mut d = Daemon::start(dir.path(), "orchd", &[], false)?;
    d.wait_serving().await?;
    let work = d.work_dir()?;
    let socket = d.socket.clone();
    let pueued_rss_idle = rss_kib(pueue.daemon.id())?;
    let orchd_rss_idle = d.rss_kib()?;

    // Whole client processes, interleaved so both see the same machine.
    const N: usize = 300;
    let (mut o, mut p) = (Vec::new(), Vec::new());
    for _ in 0..N {
        o.push(timed(orchctl(&socket, &["submit", "--", "true"]))?);
        let mut c = pueue.cmd(&["add", "--", "true"]);
        c.current_dir(&work);
        p.push(timed(c)?);
    }
    // Let both queues drain before the next figure.
    pueue.run(&["wait"])?;
    let o_add = p50(o) as f64 / 1e3;
    let p_add = p50(p) as f64 / 1e3;

    // submit → seen done by the client.
    let (mut o, mut p) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        o.push(timed(orchctl(
            &socket,
            &["submit", "--wait", "--", "true"],
        ))?);
    }
    for _ in 0..3 {
        let t = Instant::now();
        let id = pueue.run(&["add", "--print-task-id", "--", "true"])?;
        pueue.run(&["wait", &id])?;
        p.push(t.elapsed().as_micros() as u64);
    }
    let o_wait = p50(o) as f64 / 1e3;
    let p_wait = p50(p) as f64 / 1e3;

    // LOOP_N `true` through a shell loop of the CLI, to all done (pueue needs ~0.3 s each).
    const LOOP_N: usize = 100;
    let n = "100";
    let client = d.client().await?;
    let done = ended_watch(
        watch_all(&client, &["objective_state"]).await?,
        LOOP_N,
        Duration::from_secs(120),
    );
    let t = Instant::now();
    let sock = socket.display().to_string();
    shell_loop(
        &work,
        r#"i=0; while [ $i -lt "$3" ]; do "$1" --socket "$2" submit -- true >/dev/null || exit 1; i=$((i+1)); done"#,
        &[&ORCHCTL, &sock, n],
    )
    .await?;
    let ended = done.await.context("watch task panicked")??;
    let o_loop = per_s(LOOP_N, t.elapsed());
    let ok = count_succeeded(&ended);
    let t = Instant::now();
    let pueue_bin = pueue.bin.join("pueue").display().to_string();
    let cfg = pueue.config.display().to_string();
    shell_loop(
        &work,
        r#"i=0; while [ $i -lt "$3" ]; do "$1" -c "$2" add -- true >/dev/null || exit 1; i=$((i+1)); done"#,
        &[&pueue_bin, &cfg, n],
    )
    .await?;
    pueue.run(&["wait"])?;
    let p_loop = per_s(LOOP_N, t.elapsed());
    let pueued_rss_after = rss_kib(pueue.daemon.id())?;
    let orchd_rss_after = d.rss_kib()?;
    d.stop().await?;

    println!(
        "  {:<52} {:>12} {:>12} {:>8}",
        "figure (medians)", "orch", "pueue", "ratio"
    );
    ratio_row(
        "`orchctl submit -- true` vs `pueue add -- true`",
        o_add,
        p_add,
        "ms",
    );
    ratio_row(
        "`submit --wait -- true` vs `add` + `wait`",
        o_wait,
        p_wait,
        "ms",
    );
    ratio_row(
        "100 `true` through a shell loop, end to end",
        o_loop,
        p_loop,
        "/s",
    );
    ratio_row(
        "idle RSS (after start)",
        orchd_rss_idle as f64 / 1024.0,
        pueued_rss_idle as f64 / 1024.0,
        "MiB",
    );
    ratio_row(
        "RSS after this section (~450 tasks)",
        orchd_rss_after as f64 / 1024.0,
        pueued_rss_after as f64 / 1024.0,
        "MiB",
    );
    println!(
        "  target: submit ratio <= 0.80: {}",
        if o_add <= 0.8 * p_add {
            "met"
        } else {
            "NOT met"
        }
    );
    check(
        ok == LOOP_N,
        &format!("orch: all {LOOP_N} succeeded ({ok})"),
    );
    let r = |o: f64, p: f64| format!("{:.2}", o / p.max(1e-9));
    score(
        "`orchctl submit -- true` vs `pueue add -- true`, whole process, p50",
        format!("{o_add:.2} ms"),
        format!("{p_add:.2} ms"),
        String::new(),
        r(o_add, p_add),
        "ratio <= 0.80",
        Some(o_add <= 0.8 * p_add),
    );
    score(
        "submit -> seen done by the client (`submit --wait` vs `add` + `wait`), p50",
        format!("{o_wait:.2} ms"),
        format!("{p_wait:.2} ms"),
        String::new(),
        r(o_wait, p_wait),
        "",
        None,
    );
    score(
        "100 `true` through a shell loop of the CLI, end to end",
        format!("{o_loop:.0}/s"),
        format!("{p_loop:.1}/s"),
        String::new(),
        r(o_loop, p_loop),
        "",
        None,
    );
    score(
        "idle RSS (right after start)",
        format!("{:.1} MiB", orchd_rss_idle as f64 / 1024.0),
        format!("{:.1} MiB", pueued_rss_idle as f64 / 1024.0),
        String::new(),
        r(orchd_rss_idle as f64, pueued_rss_idle as f64),
        "orch <= 10 MiB",
        Some(orchd_rss_idle <= 10 * 1024),
    );
    Ok(())
}

// ---------------------------------------------------------------- issue 17 targets

/// `HISTORY` stored objectives for the "cost does not grow with history" figure
/// (`ORCH_BENCH_HISTORY`, default 10,000; the target is stated for 100,000).
fn history() -> usize {
    std::env::var("ORCH_BENCH_HISTORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Runs `n` `true` objectives with 64 in flight; `(objectives/s to all succeeded,
/// Submit p50 µs, succeeded)`.
async fn burst(client: &Client, work: &Path, n: usize) -> Result<(f64, u64, usize)> {
    let done = ended_watch(
        watch_all(client, &["objective_state"]).await?,
        n,
        Duration::from_secs(600),
    );
    let t = Instant::now();
    let replies = submit_many(client, &one_step(work, "t", &["true"]), n, 64).await?;
    let ended = done.await.context("watch task panicked")??;
    Ok((
        per_s(n, t.elapsed()),
        p50(replies.iter().map(|r| r.2).collect()),
        count_succeeded(&ended),
    ))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// The figures of issue 17 with their targets.
pub async fn targets() -> Result<()> {
    header("T. issue 17 targets (default config: 2 parallel slots, cgroup-v2 when available)");
    let raw2 = MACHINE.lock().map(|m| m.spawn2_per_s).unwrap_or(0.0);
    let raw2 = if raw2 > 0.0 {
        raw2
    } else {
        machine()?.spawn2_per_s
    };
    let dir = bench_dir("targets")?;
    let mut d = Daemon::start(dir.path(), "orchd", &[], false)?;
    d.wait_serving().await?;
    let rss_idle = d.rss_kib()?;
    let client = d.client().await?;
    let work = d.work_dir()?;

    // exit → visible to a watcher: the step stamps its own end just before it exits.
    let mut ended = watch_all(&client, &["attempt_ended"]).await?;
    let mut delays = Vec::new();
    let mut c = client.clone();
    for i in 0..105 {
        let stamp = work.join(format!("stamp-{i}"));
        let script = format!("date +%s%6N > {}", stamp.display());
        let id = c
            .submit(one_step(&work, "exit", &["sh", "-c", &script]))
            .await
            .map_err(|s| anyhow!("submit: {s}"))?
            .into_inner()
            .id;
        loop {
            match tokio::time::timeout(Duration::from_secs(20), ended.message()).await {
                Ok(Ok(Some(e))) if e.objective_id == id => break,
                Ok(Ok(Some(_))) => {}
                _ => bail!("no attempt_ended for {id}"),
            }
        }
        let got = now_us();
        let t: i64 = fs::read_to_string(&stamp)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow!("no stamp in {}", stamp.display()))?;
        if i >= 5 {
            delays.push((got - t).max(0) as u64);
        }
    }
    let exit_p50 = p50(delays.clone());

    // submit --wait, whole process.
    let mut waits = Vec::new();
    for _ in 0..100 {
        waits.push(timed(orchctl(
            &d.socket,
            &["submit", "--wait", "--", "true"],
        ))?);
    }
    let wait_p50 = p50(waits.clone());

    // Throughput: one client, 64 in flight, at 1,000 stored objectives (205 so far).
    burst(&client, &work, 1_000 - 205).await?;
    let (rate_1k, sub_1k, ok_1k) = burst(&client, &work, 1_000).await?;
    // Fill to the history size, then the same burst again.
    let hist = history().max(2_000);
    let t = Instant::now();
    if hist > 2_000 {
        burst(&client, &work, hist - 2_000).await?;
    }
    let fill = t.elapsed();
    let rss_hist = d.rss_kib()?;
    let (rate_h, sub_h, ok_h) = burst(&client, &work, 1_000).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_hist = d.rss_kib()?;
    d.stop().await?;

    row_header();
    row("exit -> attempt_ended at a watcher", delays);
    row("`orchctl submit --wait -- true`, whole process", waits);
    let pct_raw = 100.0 * rate_1k / raw2.max(1e-9);
    println!(
        "  64 in flight, 2 slots, 1,000 `true` to success: {rate_1k:.0}/s = {pct_raw:.0}% of raw 2-parallel fork+exec+wait ({raw2:.0}/s); Submit p50 {}",
        us(sub_1k)
    );
    println!(
        "  the same with {hist} stored: {rate_h:.0}/s; Submit p50 {} (filled in {:.1} s)",
        us(sub_h),
        fill.as_secs_f64()
    );
    println!(
        "  orchd VmRSS: idle after start {rss_idle} KiB; with {hist} stored {rss_hist} KiB; after 1,000 more and 2 s idle {rss_idle_hist} KiB"
    );
    println!("  targets:");
    println!(
        "    submit --wait p50 <= 5 ms: {} ({})",
        us(wait_p50),
        verdict(wait_p50 <= 5_000)
    );
    println!(
        "    exit -> watcher p50 <= 1 ms: {} ({})",
        us(exit_p50),
        verdict(exit_p50 <= 1_000)
    );
    println!(
        "    >= 1,000/s and >= 35% of raw: {rate_1k:.0}/s, {pct_raw:.0}% ({})",
        verdict(rate_1k >= 1_000.0 && pct_raw >= 35.0)
    );
    println!(
        "    idle RSS <= 10 MiB: {:.1} MiB ({}); with {hist} stored <= 25 MiB: {:.1} MiB ({})",
        rss_idle as f64 / 1024.0,
        verdict(rss_idle <= 10 * 1024),
        rss_hist as f64 / 1024.0,
        verdict(rss_hist <= 25 * 1024)
    );
    let grow_rate = rate_1k / rate_h.max(1e-9);
    let grow_sub = sub_h as f64 / sub_1k.max(1) as f64;
    println!(
        "    history {hist} vs 1,000 stored within 1.2x: throughput {grow_rate:.2}x slower, Submit p50 {grow_sub:.2}x ({})",
        verdict(grow_rate <= 1.2 && grow_sub <= 1.2)
    );
    let raw_p50 = raw_spawn_p50().map(us).unwrap_or_default();
    score(
        "exit -> `attempt_ended` at a watcher, p50",
        us(exit_p50),
        String::new(),
        String::new(),
        String::new(),
        "<= 1 ms",
        Some(exit_p50 <= 1_000),
    );
    score(
        "`orchctl submit --wait -- true`, whole process, p50",
        us(wait_p50),
        String::new(),
        format!("{raw_p50} (fork+exec+wait)"),
        String::new(),
        "<= 5 ms",
        Some(wait_p50 <= 5_000),
    );
    score(
        "one gRPC client, 64 in flight, 2 slots: `true` to success",
        format!("{rate_1k:.0}/s"),
        String::new(),
        format!("{raw2:.0}/s (2-parallel fork+exec+wait)"),
        format!("{:.2}", rate_1k / raw2.max(1e-9)),
        ">= 1,000/s and >= 0.35 of raw",
        Some(rate_1k >= 1_000.0 && pct_raw >= 35.0),
    );
    score(
        &format!("orchd RSS with {hist} stored objectives"),
        format!("{:.1} MiB", rss_hist as f64 / 1024.0),
        String::new(),
        String::new(),
        String::new(),
        "<= 25 MiB (at 10,000)",
        Some(rss_hist <= 25 * 1024),
    );
    score(
        &format!("cost with {hist} stored vs 1,000: throughput / Submit p50"),
        format!("{grow_rate:.2}x / {grow_sub:.2}x"),
        String::new(),
        String::new(),
        String::new(),
        "both <= 1.2x (stated for 100,000)",
        Some(grow_rate <= 1.2 && grow_sub <= 1.2),
    );
    check(
        ok_1k == 1_000 && ok_h == 1_000,
        &format!("every burst objective succeeded ({ok_1k}, {ok_h})"),
    );
    Ok(())
}
