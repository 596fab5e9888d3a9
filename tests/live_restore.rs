//! Live restore (`live_restore = true`, the shim executor): agents keep running through
//! a crash (`kill -9`), restart or upgrade of orchd; the next orchd re-attaches to the
//! same attempt, and its output and protocol lines arrive exactly once. SIGTERM still
//! drains; a shim that dies ends its attempt `interrupted` (and it runs again); an
//! agent that ends while no orchd runs has its end recorded when one comes back.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Lines the counting agent prints at least (10 s) before the long tests stop it.
const LINES: u32 = 200;

/// An agent printing `n 1`, `n 2`, … one every 50 ms, each followed by a usage line of
/// one input token (so the usage total counts every protocol line processed), until the
/// test creates its stop file, then exiting `exit`. (Its length follows the test, not
/// the clock: on a loaded machine the rounds of a test may take longer than 10 s.)
struct Counter {
    script: PathBuf,
    stop: PathBuf,
}

impl Counter {
    fn new(d: &TestDaemon, exit: i32) -> Counter {
        let stop = d.dir().join("stop");
        let script = d.write_script(
            "count.sh",
            &format!(
                "#!/bin/bash\ni=0\nwhile [ ! -e {} ]; do\n  i=$((i+1))\n  echo \"n $i\"\n  echo '::orch-usage:: {{\"input_tokens\":1}}'\n  sleep 0.05\ndone\nexit {exit}\n",
                stop.display()
            ),
        );
        Counter { script, stop }
    }

    fn submit(&self, d: &TestDaemon) -> String {
        d.submit(&["--", "bash", utf8(&self.script)], 0)
    }

    fn stop(&self) {
        fs::write(&self.stop, "").expect("create the stop file");
    }
}

fn live_daemon() -> TestDaemon {
    let mut d = TestDaemon::prepare(&[], &[]);
    d.set_env("ORCH_LIVE_RESTORE", "true");
    d.launch();
    d
}

/// The numbers of the `n N` lines `orchctl logs` shows.
fn numbered(d: &TestDaemon, id: &str) -> Vec<u32> {
    String::from_utf8_lossy(&d.logs(&[id]))
        .lines()
        .filter_map(|l| l.strip_prefix("n "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Waits until the log shows more numbered lines than `seen` (output went on).
fn wait_more_output(d: &TestDaemon, id: &str, seen: usize) -> usize {
    poll_until("more output in the log", STATE_DEADLINE, || {
        let n = numbered(d, id).len();
        (n > seen).then_some(n)
    })
}

fn attempts(v: &Value) -> Vec<Value> {
    v["steps"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// One attempt, the same pid throughout, every line once and in order, every usage
/// line counted once, success, and a duration that is the agent's own (at least 50 ms a
/// line). Returns the number of lines.
fn assert_one_clean_run(d: &TestDaemon, id: &str, pid: u64) -> u32 {
    let v = d.wait_ended(id, Duration::from_secs(60));
    assert_eq!(v["state"], "succeeded", "{v}");
    let a = attempts(&v);
    assert_eq!(a.len(), 1, "one attempt, not restarted: {v}");
    assert_eq!(
        a[0]["pid"].as_u64(),
        Some(pid),
        "the same agent process: {v}"
    );
    assert_eq!(a[0]["outcome"], "success", "{v}");
    assert_eq!(a[0]["exit_code"], 0, "{v}");
    let got = numbered(d, id);
    let n = got.len() as u32;
    assert!(n > 0);
    assert_eq!(
        got,
        (1..=n).collect::<Vec<u32>>(),
        "every line once, in order"
    );
    assert_eq!(
        a[0]["usage"]["input_tokens"].as_u64(),
        Some(u64::from(n)),
        "every usage line processed exactly once: {v}"
    );
    let ms = (rfc3339(&a[0]["ended_at"], "ended_at") - rfc3339(&a[0]["started_at"], "started_at"))
        .num_milliseconds();
    let least = i64::from(n) * 50;
    assert!(
        ms >= least && ms < least * 3 + 5_000,
        "the attempt lasted {ms} ms; its agent printed {n} lines 50 ms apart"
    );
    n
}

/// Lets the agent run to `LINES` lines (10 s) if it has not yet, then stops it.
fn finish(d: &TestDaemon, id: &str, agent: &Counter) {
    poll_until("10 s of output", Duration::from_secs(60), || {
        (numbered(d, id).len() >= LINES as usize).then_some(())
    });
    agent.stop();
}

#[test]
fn ten_crashes_of_orchd_leave_the_agent_running_and_its_attempt_whole() {
    let mut d = live_daemon();
    let agent = Counter::new(&d, 0);
    let id = agent.submit(&d);
    let v = d.wait_started(&id, STATE_DEADLINE);
    let pid = attempts(&v)[0]["pid"].as_u64().expect("pid");
    let mut seen = 0;
    for round in 0..10 {
        seen = wait_more_output(&d, &id, seen);
        d.kill9();
        assert!(
            process_alive(pid as u32),
            "round {round}: the agent died with orchd"
        );
        d.launch();
        let v = d.status(&id);
        assert_eq!(attempts(&v).len(), 1, "round {round}: {v}");
    }
    let v = d.status(&id);
    assert_eq!(
        v["state"], "running",
        "the crashes all happened while the agent ran: {v}"
    );
    finish(&d, &id, &agent);
    assert_one_clean_run(&d, &id, pid);
}

#[test]
fn five_upgrades_leave_the_agent_running_and_its_attempt_whole() {
    let d = live_daemon();
    let orchd_pid = d.pid();
    let agent = Counter::new(&d, 0);
    let id = agent.submit(&d);
    let v = d.wait_started(&id, STATE_DEADLINE);
    let pid = attempts(&v)[0]["pid"].as_u64().expect("pid");
    let mut seen = 0;
    for round in 0..5 {
        seen = wait_more_output(&d, &id, seen);
        let out = d.ctl(&["daemon", "upgrade", "-o", "json"]);
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        let r: Value = serde_json::from_slice(&out.stdout).expect("upgrade JSON");
        assert_eq!(
            r["pid"].as_u64(),
            Some(u64::from(orchd_pid)),
            "in place: {r}"
        );
        assert_eq!(r["attempts_kept"], 1, "{r}");
        assert!(process_alive(pid as u32), "round {round}: the agent died");
    }
    assert_eq!(d.status(&id)["state"], "running");
    finish(&d, &id, &agent);
    assert_one_clean_run(&d, &id, pid);
}

#[test]
fn an_upgrade_the_new_daemon_would_refuse_is_refused_and_changes_nothing() {
    let mut d = TestDaemon::prepare_with_config("", &[]);
    d.set_env("ORCH_LIVE_RESTORE", "true");
    d.launch();
    let before = d.ctl_json(&["daemon", "status"]);
    assert!(
        before["executors"][0]["detail"]
            .as_str()
            .is_some_and(|t| t.contains("shim")),
        "daemon status tells live restore is on: {before}"
    );
    // The binary is checked with the config it would start with: now a broken one.
    d.write_file("orchd.toml", "max_parallel = \"many\"\n");
    let out = d.ctl(&["daemon", "upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refuses the config") && err.contains("max_parallel") && err.contains("kept"),
        "{err}"
    );
    let after = d.ctl_json(&["daemon", "status"]);
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["daemon_started_ms"], before["daemon_started_ms"]);
    let audit = d.audit(&[]);
    assert!(
        audit.iter().any(|e| e["action"] == "upgrade"),
        "the refused upgrade is audited: {audit:?}"
    );
}

#[test]
fn sigterm_still_drains_agents_under_shims() {
    let mut d = live_daemon();
    let id = d.submit(&["--", "sleep", "300"], 0);
    let v = d.wait_started(&id, STATE_DEADLINE);
    let pid = attempts(&v)[0]["pid"].as_u64().expect("pid") as u32;
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        wait_process_gone(pid, Duration::from_secs(5)),
        "the agent outlived a SIGTERM of orchd"
    );
    let shims: Vec<_> = fs::read_dir(d.state_dir().join("shims"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    d.launch();
    let v = d.status(&id);
    assert_eq!(attempts(&v)[0]["outcome"], "interrupted", "{v}");
    for s in shims {
        assert!(!s.exists(), "{} was left behind", s.display());
    }
    d.ctl(&["cancel", &id]);
}

#[test]
fn a_killed_shim_interrupts_its_attempt_which_runs_again() {
    let d = live_daemon();
    let id = d.submit(&["--", "sleep", "300"], 0);
    let v = d.wait_started(&id, STATE_DEADLINE);
    let pid = attempts(&v)[0]["pid"].as_u64().expect("pid") as u32;
    let dir = fs::read_dir(d.state_dir().join("shims"))
        .expect("shims dir")
        .flatten()
        .next()
        .expect("a shim directory")
        .path();
    let shim: Value =
        serde_json::from_slice(&fs::read(dir.join("shim.json")).expect("shim.json")).expect("json");
    let shim_pid = shim["pid"].as_u64().expect("shim pid") as u32;
    assert_ne!(shim_pid, d.pid());
    sigkill(shim_pid);
    let v = d.wait_for_state(
        &id,
        |v| attempts(v).len() >= 2 && attempts(v)[1]["pid"].is_u64(),
        STATE_DEADLINE,
    );
    let a = attempts(&v);
    assert_eq!(a[0]["outcome"], "interrupted", "{v}");
    assert!(
        a[0]["message"].as_str().unwrap_or("").contains("shim"),
        "{v}"
    );
    assert!(
        wait_process_gone(pid, Duration::from_secs(5)),
        "the agent of the dead shim was not stopped"
    );
    assert_ne!(a[1]["pid"], a[0]["pid"]);
    d.ctl(&["cancel", &id]);
}

#[test]
fn an_agent_that_ends_while_orchd_is_down_has_its_exit_code_recorded() {
    let mut d = live_daemon();
    let fifo = d.dir().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let script = d.write_script(
        "wait.sh",
        &format!(
            "#!/bin/bash\necho waiting\necho '::orch-usage:: {{\"input_tokens\":5}}'\nread x < {}\necho \"got $x\"\necho '::orch-usage:: {{\"input_tokens\":7}}'\nexit 7\n",
            fifo.display()
        ),
    );
    let id = d.submit(&["--retries", "0", "--", "bash", utf8(&script)], 0);
    let v = d.wait_started(&id, STATE_DEADLINE);
    let pid = attempts(&v)[0]["pid"].as_u64().expect("pid") as u32;
    d.kill9();
    fs::write(&fifo, "go\n").expect("write the fifo");
    assert!(
        wait_process_gone(pid, STATE_DEADLINE),
        "the agent did not exit"
    );
    let end = fs::read_dir(d.state_dir().join("shims"))
        .expect("shims dir")
        .flatten()
        .next()
        .expect("the shim directory")
        .path()
        .join("end.json");
    poll_until("the shim's end.json", STATE_DEADLINE, || {
        end.exists().then_some(())
    });
    let end_seen = chrono::Utc::now();
    // orchd stays away a while longer; the attempt's end is when the agent ended, not
    // when the next orchd heard of it.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    d.launch();
    let v = d.wait_ended(&id, STATE_DEADLINE);
    let a = attempts(&v);
    assert_eq!(a.len(), 1, "{v}");
    let ended = crate::support::rfc3339(&a[0]["ended_at"], "ended_at");
    assert!(
        ended <= end_seen,
        "recorded as ended at {ended}, after its end.json was seen at {end_seen}: {v}"
    );
    assert_eq!(a[0]["exit_code"], 7, "{v}");
    assert_eq!(a[0]["outcome"], "exit_failure", "{v}");
    assert_eq!(
        a[0]["usage"]["input_tokens"], 12,
        "both usage lines, once: {v}"
    );
    let logs = String::from_utf8_lossy(&d.logs(&[&id])).to_string();
    assert!(
        logs.contains("waiting") && logs.contains("got go"),
        "{logs}"
    );
    assert!(
        !end.exists(),
        "the shim's directory is removed once the end is recorded"
    );
}

#[test]
fn live_restore_is_on_by_default_and_a_bad_environment_value_is_refused() {
    let d = TestDaemon::prepare(&[], &[]);
    let empty = d.write_file("empty.toml", "");
    let out = d.print_config(&empty);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("live_restore = true"),
        "{}",
        stdout(&out)
    );
    let off = d.write_file("off.toml", "live_restore = false\n");
    assert!(stdout(&d.print_config(&off)).contains("live_restore = false"));
    let mut cmd = d.orchd();
    cmd.arg("--config")
        .arg(&empty)
        .arg("--print-config")
        .env("ORCH_LIVE_RESTORE", "maybe");
    let out = run_deadline(&mut cmd, Duration::from_secs(10)).expect("orchd");
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ORCH_LIVE_RESTORE") && err.contains("maybe"),
        "{err}"
    );
}

#[test]
fn without_cgroups_the_shim_still_keeps_its_agent_through_crashes() {
    let mut d = TestDaemon::prepare(&["--limits-backend", "rlimit"], &[]);
    d.set_env("ORCH_LIVE_RESTORE", "true");
    d.launch();
    let agent = Counter::new(&d, 0);
    let id = agent.submit(&d);
    let v = d.wait_started(&id, STATE_DEADLINE);
    let a = attempts(&v);
    let pid = a[0]["pid"].as_u64().expect("pid");
    assert_eq!(
        d.ctl_json(&["daemon", "status"])["limits_backend"],
        "rlimit"
    );
    let mut seen = 0;
    for _ in 0..2 {
        seen = wait_more_output(&d, &id, seen);
        d.kill9();
        assert!(process_alive(pid as u32), "the agent died with orchd");
        d.launch();
    }
    wait_more_output(&d, &id, seen);
    agent.stop();
    assert_one_clean_run(&d, &id, pid);
}

#[test]
fn an_agent_that_cannot_start_under_a_shim_is_a_spawn_error() {
    let d = live_daemon();
    let id = d.submit(&["--retries", "0", "--", "/nonexistent/agent"], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_spawn_error(&v, "/nonexistent/agent");
}

/// The objective's first attempt ended as a spawn error whose message names `text`.
fn assert_spawn_error(v: &Value, text: &str) {
    let a = attempts(v);
    assert_eq!(a[0]["outcome"], "spawn_error", "{v}");
    let message = a[0]["message"].as_str().unwrap_or("");
    assert!(message.contains(text), "no {text:?} in the message: {v}");
}

#[test]
fn a_shim_that_cannot_be_started_is_a_spawn_error_and_the_next_attempt_runs() {
    let d = live_daemon();
    // A file where the shims' directory goes: launching the shim fails (its files are
    // written off the engine's thread), and the attempt must still end, with the reason.
    let shims = d.state_dir().join("shims");
    assert!(!shims.exists(), "no attempt ran yet");
    fs::write(&shims, "").expect("put a file where STATE/shims goes");
    let id = d.submit(&["--retries", "0", "--", "true"], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_spawn_error(&v, "cannot start the attempt's shim");
    fs::remove_file(&shims).expect("remove the file");
    let id = d.submit(&["--", "true"], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[test]
fn a_paused_attempt_stays_paused_across_a_crash_and_resumes_under_the_new_orchd() {
    let mut d = live_daemon();
    let agent = Counter::new(&d, 0);
    let id = agent.submit(&d);
    let v = d.wait_started(&id, STATE_DEADLINE);
    let pid = attempts(&v)[0]["pid"].as_u64().expect("pid");
    wait_more_output(&d, &id, 0);
    let out = d.ctl(&["pause", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    d.wait_state(&id, &["paused"], STATE_DEADLINE);
    d.kill9();
    d.launch();
    let v = d.status(&id);
    assert_eq!(v["state"], "paused", "{v}");
    assert_eq!(attempts(&v).len(), 1, "{v}");
    assert!(
        process_alive(pid as u32),
        "the paused agent died with orchd"
    );
    let paused_at = numbered(&d, &id).len();
    let out = d.ctl(&["resume", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    wait_more_output(&d, &id, paused_at);
    agent.stop();
    assert_one_clean_run(&d, &id, pid);
}

#[test]
fn timeouts_and_budgets_count_the_time_orchd_was_away() {
    let mut d = live_daemon();
    // A timeout that expires while no orchd runs: the shim enforces it.
    let slow = d.submit(
        &["--retries", "0", "--timeout", "2s", "--", "sleep", "300"],
        0,
    );
    let v = d.wait_started(&slow, STATE_DEADLINE);
    let slow_pid = attempts(&v)[0]["pid"].as_u64().expect("pid") as u32;
    // Usage reported while no orchd runs counts against the budget when one is back.
    let fifo = d.dir().join("spend");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let script = d.write_script(
        "spend.sh",
        &format!(
            "#!/bin/bash\nread x < {}\necho '::orch-usage:: {{\"input_tokens\":10,\"cost_usd\":0.5}}'\nexec sleep 300\n",
            fifo.display()
        ),
    );
    let spender = d.submit(
        &[
            "--retries",
            "0",
            "--budget-usd",
            "0.1",
            "--",
            "bash",
            utf8(&script),
        ],
        0,
    );
    d.wait_started(&spender, STATE_DEADLINE);
    d.kill9();
    fs::write(&fifo, "go\n").expect("write the fifo");
    assert!(
        wait_process_gone(slow_pid, STATE_DEADLINE),
        "the timeout was not enforced while orchd was away"
    );
    poll_until("the usage line in a journal", STATE_DEADLINE, || {
        fs::read_dir(d.state_dir().join("shims"))
            .ok()?
            .flatten()
            .any(|e| {
                fs::read_to_string(e.path().join("journal")).is_ok_and(|t| t.contains("cost_usd"))
            })
            .then_some(())
    });
    d.launch();
    let v = d.wait_ended(&slow, STATE_DEADLINE);
    assert_eq!(attempts(&v)[0]["outcome"], "timeout", "{v}");
    let v = d.wait_ended(&spender, STATE_DEADLINE);
    let a = attempts(&v);
    assert_eq!(a[0]["outcome"], "budget_exceeded", "{v}");
    assert_eq!(a[0]["usage"]["input_tokens"], 10, "{v}");
}

#[test]
fn agents_under_shims_keep_the_umask_orchd_was_started_with_even_after_an_upgrade() {
    let d = live_daemon();
    let ours = std::process::Command::new("sh")
        .args(["-c", "umask"])
        .output()
        .expect("sh");
    let want = format!("umask={}", stdout(&ours).trim());
    let id = d.submit(&["--wait", "--", "sh", "-c", "echo umask=$(umask)"], 0);
    let log = String::from_utf8_lossy(&d.logs(&[&id])).to_string();
    assert!(log.contains(&want), "want {want}: {log}");
    let out = d.ctl(&["daemon", "upgrade"]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = d.submit(&["--wait", "--", "sh", "-c", "echo umask=$(umask)"], 0);
    let log = String::from_utf8_lossy(&d.logs(&[&id])).to_string();
    assert!(log.contains(&want), "after the upgrade, want {want}: {log}");
}

/// The spare shim `d`'s orchd keeps started ahead of the next attempt (waits for it).
fn spare_of(d: &TestDaemon) -> u32 {
    let marker = spare_marker(d);
    poll_until("a spare shim", STATE_DEADLINE, || {
        pids_with_cmdline(&marker).first().copied()
    })
}

fn spare_marker(d: &TestDaemon) -> String {
    format!("__shim --spare {}", d.state_dir().join("shims").display())
}

/// The pid in the `shim.json` of objective `id`'s first attempt (while it runs).
fn attempt_shim_pid(d: &TestDaemon, id: &str) -> u32 {
    let dir = d.state_dir().join("shims").join(format!("att-{id}-0-1"));
    let text = fs::read_to_string(dir.join("shim.json"))
        .unwrap_or_else(|e| panic!("read {}/shim.json: {e}", dir.display()));
    let v: Value = serde_json::from_str(&text).expect("shim.json is JSON");
    v["pid"].as_u64().expect("shim.json has a pid") as u32
}

#[test]
fn an_attempt_runs_under_the_spare_shim_and_a_new_spare_follows() {
    let d = live_daemon();
    let spare = spare_of(&d);
    let agent = Counter::new(&d, 0);
    let id = agent.submit(&d);
    wait_more_output(&d, &id, 0);
    assert_eq!(
        attempt_shim_pid(&d, &id),
        spare,
        "the attempt did not go to the spare shim"
    );
    let marker = spare_marker(&d);
    let next = poll_until("a new spare shim", STATE_DEADLINE, || {
        pids_with_cmdline(&marker).into_iter().find(|p| *p != spare)
    });
    assert!(process_alive(next));
    agent.stop();
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(attempts(&v).len(), 1, "{v}");
}

#[test]
fn a_killed_spare_shim_is_not_waited_for_the_attempt_starts_its_own() {
    let d = live_daemon();
    let spare = spare_of(&d);
    sigkill(spare);
    assert!(
        wait_process_gone(spare, STATE_DEADLINE),
        "the spare shim survived SIGKILL"
    );
    let id = d.submit(&["--retries", "0", "--", "true"], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    let next = spare_of(&d);
    assert_ne!(next, spare, "no new spare after the killed one");
}

#[test]
fn the_spare_shim_goes_when_orchd_stops_or_is_killed() {
    let mut d = live_daemon();
    let spare = spare_of(&d);
    let status = d.stop();
    assert!(status.success(), "orchd exited {status:?}");
    assert!(
        wait_process_gone(spare, Duration::from_secs(5)),
        "the spare shim outlived a stopped orchd: {}",
        proc_cmdline(spare)
    );
    d.launch();
    let spare = spare_of(&d);
    d.kill9();
    assert!(
        wait_process_gone(spare, Duration::from_secs(5)),
        "the spare shim outlived orchd's kill -9: {}",
        proc_cmdline(spare)
    );
}

#[test]
fn a_spare_shim_not_started_by_orchd_says_so_and_exits() {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(ORCHD);
    cmd.args(["__shim", "--spare", "/nonexistent/shims"]);
    // SAFETY: only close(2) between fork and exec. Descriptor 3 is closed, whatever the
    // test harness left there.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(3);
            Ok(())
        });
    }
    let out = cmd.output().expect("run orchd __shim --spare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it exited 0: {stderr}");
    assert!(
        stderr.contains("no socket on descriptor 3") && stderr.contains("started by orchd only"),
        "{stderr}"
    );
}
