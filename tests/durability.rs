//! Losing nothing: retries with backoff, checkpoint hand-off, crash recovery and resume,
//! SIGTERM drain, the store's schema and retention, idempotent submit, `orchctl retry`, and
//! event sequence numbers across restarts. The crash test (`crash_rounds`) kills the daemon
//! with SIGKILL at random moments; `ORCH_CRASH_ROUNDS` (default 20) and `ORCH_CRASH_SEED`
//! (default: the clock; printed) control it.
//!
//! Every agent these tests start carries `DURA_MARK=<its daemon's temp dir>` in its
//! environment, so that its whole process tree (children included) can be found in /proc,
//! checked and, when a test fails, cleaned up without touching anything else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use orch_proto::v1::GetObjectiveRequest;
use serde_json::{Value, json};

use crate::support::{
    CMD_DEADLINE, Gate, STATE_DEADLINE, TestDaemon, assert_strictly_increasing, attempts, block_on,
    describe, ended, holders_of, orchctl_command, outcomes, pids_with_env, poll_until,
    proc_cmdline, proc_environ, proc_start_ticks, rfc3339, run_deadline, seq, sigkill, stderr,
    step, ulid_first_line,
};

// ------------------------------------------------------------------ helpers

/// The environment variable that marks the agents of one test daemon.
const MARK: &str = "DURA_MARK";

/// A live process that carries `DURA_MARK=<mark>`, with the ids the daemon gave it.
#[derive(Debug, Clone)]
struct Agent {
    pid: u32,
    objective: String,
    step: String,
    attempt: u32,
    argv: String,
    /// Field 22 of /proc/PID/stat: with the pid, the process's identity.
    start_ticks: Option<u64>,
}

/// Live (not zombie) processes whose environment holds `DURA_MARK=mark`.
fn marked_agents(mark: &str) -> Vec<Agent> {
    pids_with_env(MARK, mark)
        .into_iter()
        .filter_map(|pid| {
            // Read once more for the ids: a process that exited in between is gone.
            let env = proc_environ(pid);
            if env.get(MARK).map(String::as_str) != Some(mark) {
                return None;
            }
            Some(Agent {
                pid,
                objective: env.get("ORCH_OBJECTIVE_ID").cloned().unwrap_or_default(),
                step: env.get("ORCH_STEP_ID").cloned().unwrap_or_default(),
                attempt: env
                    .get("ORCH_ATTEMPT")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                argv: proc_cmdline(pid),
                start_ticks: proc_start_ticks(pid),
            })
        })
        .collect()
}

/// SIGKILLs every process marked with `mark` when dropped, so that a failed test leaves no
/// agent behind (the daemon is gone by then, or dies with the `TestDaemon`).
struct Reaper {
    mark: String,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for _ in 0..3 {
            let agents = marked_agents(&self.mark);
            if agents.is_empty() {
                return;
            }
            for a in agents {
                sigkill(a.pid);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Copies a test daemon's temp dir (store, logs, work files) to `/tmp/orch-dura-kept-*` when the
/// test fails, for a post-mortem.
struct KeepOnPanic {
    from: PathBuf,
    tag: String,
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        let to = PathBuf::from(format!(
            "/tmp/orch-dura-kept-{}-{}",
            self.tag,
            std::process::id()
        ));
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&self.from)
            .arg(&to)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            eprintln!("kept the daemon's dir for inspection: {}", to.display());
        }
    }
}

fn mark_of(d: &TestDaemon) -> (String, Reaper) {
    let mark = d.dir().display().to_string();
    (mark.clone(), Reaper { mark })
}

/// Polls /proc until no process is marked with `mark` (their end sends no event); returns
/// what is left after `deadline`.
fn wait_no_marked(mark: &str, deadline: Duration) -> Vec<Agent> {
    let end = Instant::now() + deadline;
    loop {
        let left = marked_agents(mark);
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds from `a` to `b`.
fn ms_between(a: &DateTime<FixedOffset>, b: &DateTime<FixedOffset>) -> i64 {
    (*b - *a).num_milliseconds()
}

fn now_utc() -> DateTime<FixedOffset> {
    Utc::now().fixed_offset()
}

/// The events tree of a stopped daemon's store: seq → stored JSON.
fn store_events(store: &Path) -> BTreeMap<u64, Value> {
    let db = sled::open(store).unwrap_or_else(|e| panic!("open {}: {e}", store.display()));
    let tree = db.open_tree("events").expect("open the events tree");
    let mut out = BTreeMap::new();
    let mut last: Option<u64> = None;
    for r in tree.iter() {
        let (k, v) = r.expect("read the events tree");
        let key = u64::from_be_bytes(
            <[u8; 8]>::try_from(k.as_ref())
                .unwrap_or_else(|_| panic!("event key {k:?} is not a u64")),
        );
        if let Some(l) = last {
            assert!(l < key, "event keys not increasing: {l} then {key}");
        }
        last = Some(key);
        let value: Value = serde_json::from_slice(&v)
            .unwrap_or_else(|e| panic!("stored event {key} is not JSON: {e}"));
        assert_eq!(
            value["seq"].as_u64(),
            Some(key),
            "stored event under key {key} says seq {}",
            value["seq"]
        );
        out.insert(key, value);
    }
    out
}

/// `meta/last_seq` of a stopped daemon's store (0 when absent).
fn store_last_seq(store: &Path) -> u64 {
    let db = sled::open(store).unwrap_or_else(|e| panic!("open {}: {e}", store.display()));
    let meta = db.open_tree("meta").expect("open the meta tree");
    meta.get("last_seq")
        .expect("read meta/last_seq")
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Every tree, key and value of a stopped daemon's store.
fn store_dump(store: &Path) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let db = sled::open(store).unwrap_or_else(|e| panic!("open {}: {e}", store.display()));
    let mut out = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).expect("open a tree");
        for r in tree.iter() {
            let (k, v) = r.expect("read a tree");
            out.push((name.to_vec(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

fn set_schema_version(store: &Path, v: u32) {
    let db = sled::open(store).unwrap_or_else(|e| panic!("open {}: {e}", store.display()));
    let meta = db.open_tree("meta").expect("open the meta tree");
    meta.insert("schema_version", &v.to_be_bytes())
        .expect("write meta/schema_version");
    db.flush().expect("flush the store");
}

/// Whether `text` has the number `n` as a token of its own (not inside a longer number).
fn mentions_number(text: &str, n: u32) -> bool {
    let n = n.to_string();
    let b = text.as_bytes();
    text.match_indices(&n).any(|(i, m)| {
        let before = i == 0 || !b[i - 1].is_ascii_digit();
        let after = i + m.len() >= b.len() || !b[i + m.len()].is_ascii_digit();
        before && after
    })
}

/// A small deterministic PRNG (xorshift64*), so a failing run can be repeated by its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ------------------------------------------------------------------ the crash test

/// The crash test's agent: `bash crash-agent.sh WORKFILE UNITS`. It resumes at the unit its
/// checkpoint names, appends `start STEP ATTEMPT PID FROM`, one `unit STEP ATTEMPT PID I` per
/// unit of work, `done STEP ATTEMPT PID` at the end, and checkpoints `{"i":N}` after each unit. Like
/// many real agents it ignores SIGPIPE: when the daemon is gone it keeps working, and then
/// lingers, so a process tree that recovery fails to kill is plainly visible.
const CRASH_AGENT: &str = r#"#!/bin/bash
w=$1; k=$2
s=$ORCH_STEP_ID; a=$ORCH_ATTEMPT
trap '' PIPE
i=0
if [ -n "$ORCH_CHECKPOINT_FILE" ]; then
  c=$(cat "$ORCH_CHECKPOINT_FILE")
  c=${c#*:}; i=${c%\}}
  case $i in ''|*[!0-9]*) echo "badckpt $s $a $$ $(cat "$ORCH_CHECKPOINT_FILE")" >> "$w"; exit 2;; esac
fi
echo "start $s $a $$ $i" >> "$w"
orphaned=0
while [ "$i" -lt "$k" ]; do
  echo "unit $s $a $$ $i" >> "$w"
  sleep "$(printf '0.%02d' $((RANDOM % 11 + 5)))"
  i=$((i + 1))
  echo "::orch-checkpoint::{\"i\":$i}" || orphaned=1
done
echo "done $s $a $$" >> "$w"
if [ "$orphaned" = 1 ]; then sleep 5; fi
exit 0
"#;

const CRASH_STEPS: [&str; 3] = ["s1", "s2", "s3"];
const CRASH_UNITS: u64 = 3;

/// One line of a crash agent's work file.
#[derive(Debug, Clone, PartialEq)]
struct WorkLine {
    kind: String,
    step: String,
    attempt: u32,
    pid: u32,
    value: Option<u64>,
}

fn read_work(path: &Path) -> Vec<WorkLine> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(
                f.len() >= 4 && f[0] != "badckpt",
                "{}: bad work line `{l}`",
                path.display()
            );
            WorkLine {
                kind: f[0].to_string(),
                step: f[1].to_string(),
                attempt: f[2].parse().expect("attempt number"),
                pid: f[3].parse().expect("pid"),
                value: f.get(4).map(|v| v.parse().expect("unit number")),
            }
        })
        .collect()
}

struct Chain {
    id: String,
    work: PathBuf,
    round: u32,
}

/// Panics if a process of an attempt the daemon has closed is still alive (after a short
/// settle time for the SIGKILL to land); returns the marked processes of running attempts.
fn assert_no_leftover_agents(d: &TestDaemon, mark: &str, when: &str) -> usize {
    let end = Instant::now() + Duration::from_millis(1500);
    loop {
        let agents = marked_agents(mark);
        let mut statuses: HashMap<String, Value> = HashMap::new();
        let mut strays = Vec::new();
        for a in &agents {
            let st = statuses
                .entry(a.objective.clone())
                .or_insert_with(|| d.status(&a.objective));
            let s = step(st, &a.step);
            let record = attempts(s).iter().find(|x| x["number"] == a.attempt);
            let closed = record.is_none_or(|x| !x["outcome"].is_null());
            let recorded_pid = record.map(|x| x["pid"].clone()).unwrap_or(Value::Null);
            // Still the same live process now that the daemon has said the attempt is closed
            // (the scan above came first: an attempt may have ended in between).
            if closed && a.start_ticks.is_some() && proc_start_ticks(a.pid) == a.start_ticks {
                strays.push((a.clone(), outcomes(s), recorded_pid));
            }
        }
        if strays.is_empty() {
            return agents.len();
        }
        if Instant::now() >= end {
            panic!(
                "{when}: processes of attempts the daemon has closed are still alive \
                 (recovery did not kill the tree):\n{}",
                strays
                    .iter()
                    .map(|(a, o, recorded)| format!(
                        "  pid {} `{}`: objective {} step {} attempt {} (recorded pid of the attempt: {recorded}; step's attempts: {o:?})",
                        a.pid, a.argv, a.objective, a.step, a.attempt
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a live `watch -o json` output file (a cut-off last line is dropped).
fn read_live_events(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[test]
fn crash_rounds() {
    let rounds: u32 = std::env::var("ORCH_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("ORCH_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!(
        "crash_rounds: {rounds} rounds, seed {seed} (ORCH_CRASH_SEED={seed} repeats the kill timings)"
    );
    let t0 = Instant::now();
    let mut rng = Rng::new(seed);

    let mut d = TestDaemon::prepare_with_config("max_parallel = 4\n", &[]);
    let (mark, _reaper) = mark_of(&d);
    let _keep = KeepOnPanic {
        from: d.dir().to_path_buf(),
        tag: format!("crash-{seed}"),
    };
    let script = d.write_file("crash-agent.sh", CRASH_AGENT);
    let works = d.dir().join("works");
    fs::create_dir(&works).expect("create the works dir");

    let mut chains: Vec<Chain> = Vec::new();
    let mut quick: Vec<String> = Vec::new();
    let mut unacknowledged_submits = 0usize;
    let mut live: Vec<Value> = Vec::new();
    let mut max_live_seq = 0u64;

    for round in 0..rounds {
        // A dead daemon's lock must be free; if not, say who holds it (for the bug report).
        for holder in holders_of(&d.state_dir().join("orchd.lock")) {
            println!(
                "round {round}: before the restart, the state dir lock is still open in {holder}"
            );
        }
        d.launch();
        let running_agents =
            assert_no_leftover_agents(&d, &mark, &format!("round {round}, after recovery"));

        // A live event stream for this round: everything it shows was acknowledged.
        let live_path = d.dir().join(format!("live-{round}.jsonl"));
        let mut watcher = d
            .ctl_command(&["watch", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&live_path).expect("create the live watch file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn orchctl watch");

        let mut submitted = Vec::new();
        for c in 0..2 {
            let work = works.join(format!("r{round}-c{c}.txt"));
            let mut text = format!(
                "name = \"crash-r{round}-c{c}\"\n\n[defaults]\nretry = {{ max_attempts = 1 }}\n"
            );
            for (i, s) in CRASH_STEPS.iter().enumerate() {
                text.push_str(&format!(
                    "\n[[steps]]\nid = \"{s}\"\ncommand = [\"bash\", \"{}\", \"{}\", \"{CRASH_UNITS}\"]\nenv = {{ {MARK} = \"{mark}\" }}\n",
                    script.display(),
                    work.display()
                ));
                if i > 0 {
                    text.push_str(&format!("needs = [\"{}\"]\n", CRASH_STEPS[i - 1]));
                }
            }
            let p = d.write_plan(&format!("crash-r{round}-c{c}.toml"), &text);
            let id = d.submit(&[&p], 0);
            submitted.push(id.clone());
            chains.push(Chain { id, work, round });
        }
        quick.push(d.submit(&["--retries", "0", "--", "true"], 0));

        // More submits race the kill: those answered must survive it.
        let stop = Arc::new(AtomicBool::new(false));
        let racer = {
            let stop = stop.clone();
            let (socket, work) = (d.socket().to_path_buf(), d.work_dir().to_path_buf());
            thread::spawn(move || {
                let (mut ok, mut failed) = (Vec::new(), 0usize);
                while !stop.load(Ordering::SeqCst) {
                    let mut cmd = orchctl_command(
                        &socket,
                        &work,
                        &["submit", "--retries", "0", "--", "true"],
                    );
                    match run_deadline(&mut cmd, CMD_DEADLINE) {
                        Ok(out) if out.status.success() => ok.push(ulid_first_line(&out)),
                        _ => failed += 1,
                    }
                    thread::sleep(Duration::from_millis(15));
                }
                (ok, failed)
            })
        };
        let delay = rng.below(401);
        // The random crash moment is the point of this test, not a wait for an event.
        thread::sleep(Duration::from_millis(delay));
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        let (raced_ok, raced_failed) = racer.join().expect("the racing submitter");
        unacknowledged_submits += raced_failed;
        quick.extend(raced_ok.iter().cloned());
        let _ = watcher.kill();
        let _ = watcher.wait();

        let events = read_live_events(&live_path);
        let seqs: Vec<u64> = events.iter().map(seq).collect();
        assert_strictly_increasing(&seqs, &format!("round {round}: live watch"));
        if let Some(first) = seqs.first() {
            assert!(
                *first > max_live_seq,
                "round {round}: the first live event has seq {first}, not above {max_live_seq} seen before the crash: seqs were reused"
            );
        }
        println!(
            "round {round:>2}: {running_agents} agents resumed, submitted {} + quick, {} raced ({} refused), killed {delay} ms later; live events {}..{} ({})",
            submitted.join(" "),
            raced_ok.len(),
            raced_failed,
            seqs.first().copied().unwrap_or(0),
            seqs.last().copied().unwrap_or(0),
            seqs.len()
        );
        max_live_seq = max_live_seq.max(seqs.last().copied().unwrap_or(0));
        live.extend(events);
    }

    // The last restart: everything acknowledged must finish.
    d.launch();
    assert_no_leftover_agents(&d, &mark, "after the last recovery");
    let acked: BTreeSet<String> = chains
        .iter()
        .map(|c| c.id.clone())
        .chain(quick.iter().cloned())
        .collect();
    let drain_deadline = Duration::from_secs(90);
    let list = d.wait_all_ended(drain_deadline);
    let present: BTreeSet<String> = list
        .iter()
        .filter_map(|o| o["id"].as_str().map(String::from))
        .collect();
    let missing: Vec<&String> = acked.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "acknowledged objectives are missing after the crashes: {missing:?}"
    );
    let drained_at = t0.elapsed();
    for o in &list {
        assert_eq!(o["state"], "succeeded", "an objective did not succeed: {o}");
    }
    let unacked = list.len() - acked.len();
    assert!(
        unacked <= unacknowledged_submits,
        "{unacked} objectives nobody was told about, but only {unacknowledged_submits} submits went unanswered"
    );
    let left = wait_no_marked(&mark, Duration::from_secs(3));
    assert!(
        left.is_empty(),
        "agents still alive after every objective ended: {left:?}"
    );

    // Every chain: the history, read back through `watch` (which must end with exit 0).
    let histories: Vec<(Option<i32>, Vec<Value>)> = thread::scope(|s| {
        let d = &d;
        let handles: Vec<_> = chains
            .chunks(chains.len().div_ceil(8).max(1))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| d.watch_json(&c.id, &[]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a watch thread"))
            .collect()
    });

    let mut interrupted = 0usize;
    let mut redone_units = 0usize;
    let mut resumed_from_checkpoint = 0usize;
    for (chain, (code, history)) in chains.iter().zip(&histories) {
        let id = &chain.id;
        let ctx = format!(
            "chain {id} (round {}, work file {})",
            chain.round,
            chain.work.display()
        );
        assert_eq!(
            *code,
            Some(0),
            "{ctx}: watch did not exit 0 for a succeeded objective"
        );
        let seqs: Vec<u64> = history.iter().map(seq).collect();
        assert_strictly_increasing(&seqs, &format!("{ctx}: watch history"));
        let status = d.status(id);
        assert_eq!(status["state"], "succeeded", "{ctx}: {status}");
        let work = read_work(&chain.work);
        let mut done_at: Option<usize> = None;
        for s in CRASH_STEPS {
            let st = step(&status, s);
            let atts = attempts(st);
            let n = atts.len() as u32;
            assert!(n >= 1, "{ctx}: step {s} has no attempt");
            for (i, a) in atts.iter().enumerate() {
                assert_eq!(a["number"], i + 1, "{ctx}: step {s} attempt numbers: {st}");
                let want = if i + 1 == atts.len() {
                    "success"
                } else {
                    "interrupted"
                };
                assert_eq!(
                    a["outcome"],
                    want,
                    "{ctx}: step {s}: every attempt but the last must be interrupted and the last a success; outcomes {:?}",
                    outcomes(st)
                );
            }
            interrupted += atts.len() - 1;
            assert_eq!(
                st["checkpoint"],
                json!({"i": CRASH_UNITS}),
                "{ctx}: step {s}'s last checkpoint"
            );

            // No attempt after the step's success was durable.
            let succeeded_seq = history
                .iter()
                .find(|e| {
                    e["kind"] == "step_state" && e["step_id"] == s && e["state"] == "succeeded"
                })
                .map(seq)
                .unwrap_or_else(|| panic!("{ctx}: no step_state succeeded event for {s}"));
            if let Some(late) = history.iter().find(|e| {
                e["kind"] == "attempt_started" && e["step_id"] == s && seq(e) > succeeded_seq
            }) {
                panic!("{ctx}: step {s} ran again after it succeeded: {late}");
            }

            let ckpts: Vec<(u32, u64)> = history
                .iter()
                .filter(|e| e["kind"] == "checkpoint" && e["step_id"] == s)
                .map(|e| {
                    (
                        e["attempt"].as_u64().expect("checkpoint attempt") as u32,
                        e["checkpoint"]["i"]
                            .as_u64()
                            .unwrap_or_else(|| panic!("{ctx}: odd checkpoint event {e}")),
                    )
                })
                .collect();
            let lines: Vec<(usize, &WorkLine)> = work
                .iter()
                .enumerate()
                .filter(|(_, l)| l.step == s)
                .collect();
            if let Some(prev) = done_at
                && let Some((i, l)) = lines.iter().find(|(i, l)| l.kind == "start" && *i < prev)
            {
                panic!(
                    "{ctx}: line {i} `{l:?}`: step {s} started before the step it needs had finished"
                );
            }
            for a in 1..=n {
                // The checkpoint this attempt must have been handed: the last durable one.
                let expected_from = ckpts
                    .iter()
                    .filter(|(att, _)| *att < a)
                    .map(|(_, i)| *i)
                    .next_back()
                    .unwrap_or(0);
                let starts: Vec<&(usize, &WorkLine)> = lines
                    .iter()
                    .filter(|(_, l)| l.attempt == a && l.kind == "start")
                    .collect();
                assert!(
                    starts.len() <= 1,
                    "{ctx}: step {s} attempt {a} started twice"
                );
                if a == n {
                    assert_eq!(
                        starts.len(),
                        1,
                        "{ctx}: the successful attempt {a} of {s} never started"
                    );
                }
                let Some((start_at, start)) = starts.first().map(|x| (x.0, x.1)) else {
                    continue;
                };
                let from = start.value.expect("start value");
                assert_eq!(
                    from, expected_from,
                    "{ctx}: step {s} attempt {a} resumed at unit {from}, but the last durable checkpoint before it was {expected_from}"
                );
                if a > 1 && from > 0 {
                    resumed_from_checkpoint += 1;
                }
                let own: Vec<u64> = ckpts
                    .iter()
                    .filter(|(att, _)| *att == a)
                    .map(|(_, i)| *i)
                    .collect();
                let want: Vec<u64> = (from + 1..=from + own.len() as u64).collect();
                assert_eq!(
                    own, want,
                    "{ctx}: step {s} attempt {a}: checkpoints recorded out of order or lost"
                );
                let units: Vec<u64> = lines
                    .iter()
                    .filter(|(_, l)| l.attempt == a && l.kind == "unit")
                    .map(|(_, l)| l.value.expect("unit value"))
                    .collect();
                let want: Vec<u64> = (from..from + units.len() as u64).collect();
                assert_eq!(
                    units, want,
                    "{ctx}: step {s} attempt {a} did its units out of order"
                );
                if a == n {
                    assert_eq!(
                        units,
                        (from..CRASH_UNITS).collect::<Vec<_>>(),
                        "{ctx}: step {s}: the successful attempt did not finish the work"
                    );
                    let dones = lines
                        .iter()
                        .filter(|(_, l)| l.attempt == a && l.kind == "done")
                        .count();
                    assert_eq!(
                        dones, 1,
                        "{ctx}: step {s}: completion lines of the successful attempt"
                    );
                    let (i, _) = lines
                        .iter()
                        .find(|(_, l)| l.attempt == a && l.kind == "done")
                        .expect("done line");
                    done_at = Some(*i);
                }
                // An earlier attempt's process that wrote after this one started was not
                // killed by recovery.
                if let Some((i, l)) = lines.iter().find(|(i, l)| *i > start_at && l.attempt < a) {
                    panic!(
                        "{ctx}: line {i} `{l:?}` of step {s} attempt {} was written after attempt {a} started: the old process survived recovery",
                        l.attempt
                    );
                }
            }
            let mut per_unit: BTreeMap<u64, usize> = BTreeMap::new();
            for (_, l) in lines.iter().filter(|(_, l)| l.kind == "unit") {
                *per_unit.entry(l.value.expect("unit")).or_default() += 1;
            }
            assert_eq!(
                per_unit.keys().copied().collect::<Vec<_>>(),
                (0..CRASH_UNITS).collect::<Vec<_>>(),
                "{ctx}: step {s}: units done"
            );
            redone_units += per_unit.values().map(|n| n - 1).sum::<usize>();
        }
    }

    // Every event seen live was durable: the store still holds it, unchanged.
    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
    let stored = store_events(&d.store_dir());
    let last_seq = store_last_seq(&d.store_dir());
    let max_key = stored.keys().next_back().copied().unwrap_or(0);
    assert!(
        last_seq >= max_key,
        "meta/last_seq {last_seq} is below the highest stored event {max_key}"
    );
    for e in &live {
        let seq = seq(e);
        let s = stored.get(&seq).unwrap_or_else(|| {
            panic!("event {e} was streamed live (so acknowledged) but is not in the store after the crashes")
        });
        let same = s["kind"] == e["kind"]
            && s["objective_id"] == e["objective_id"]
            && s["step_id"].as_str().unwrap_or("") == e["step_id"].as_str().unwrap_or("")
            && s["attempt"].as_u64().unwrap_or(0) == e["attempt"].as_u64().unwrap_or(0);
        assert!(
            same,
            "seq {seq} was streamed live as {e} but is stored as {s}: the seq was reused"
        );
    }
    for (chain, (_, history)) in chains.iter().zip(&histories) {
        let from_store: Vec<u64> = stored
            .values()
            .filter(|e| e["objective_id"] == chain.id.as_str())
            .map(seq)
            .collect();
        let from_watch: Vec<u64> = history.iter().map(seq).collect();
        assert_eq!(
            from_watch, from_store,
            "chain {}: watch history and store disagree",
            chain.id
        );
    }
    println!(
        "crash_rounds: {rounds} rounds, {} chains + {} quick objectives ({} unacknowledged submits), \
         {interrupted} interrupted attempts, {resumed_from_checkpoint} resumed from a checkpoint, \
         {redone_units} units redone, {} live events checked, {} stored; drained at {:.1}s, total {:.1}s",
        chains.len(),
        quick.len(),
        unacknowledged_submits,
        live.len(),
        stored.len(),
        drained_at.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------ retries

#[test]
fn backoff_spacing_follows_the_policy() {
    let d = TestDaemon::start();
    let p = d.write_plan(
        "backoff.toml",
        r#"name = "backoff-timing"

[[steps]]
id = "flaky"
command = ["sh", "-c", "exit 1"]
retry = { max_attempts = 3, initial_backoff = "300ms", max_backoff = "10s", multiplier = 2.0, jitter = 0.2 }
"#,
    );
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    let s = step(&v, "flaky");
    assert_eq!(s["state"], "failed", "{v}");
    let a = attempts(s);
    assert_eq!(a.len(), 3, "max_attempts = 3: {v}");
    for x in a {
        assert_eq!(x["outcome"], "exit_failure", "{v}");
    }

    let (code, history) = d.watch_json(&id, &[]);
    assert_eq!(code, Some(1), "watch of a failed objective exits 1");
    let scheduled: Vec<&Value> = history
        .iter()
        .filter(|e| e["kind"] == "retry_scheduled")
        .collect();
    assert_eq!(
        scheduled.len(),
        2,
        "a retry_scheduled event after attempts 1 and 2 only: {history:?}"
    );

    // Delay before attempt n: 300ms × 2^(n-2), ±20 %.
    for (k, base) in [(0usize, 300.0f64), (1, 600.0)] {
        let ended = rfc3339(&a[k]["ended_at"], "ended_at");
        let next = rfc3339(&a[k + 1]["started_at"], "started_at");
        let gap = ms_between(&ended, &next);
        let (lo, hi) = ((base * 0.8) as i64, (base * 1.2) as i64);
        println!(
            "attempt {} ended, attempt {} started {gap} ms later (policy {lo}..{hi} ms)",
            k + 1,
            k + 2
        );
        assert!(
            gap >= lo - 2 && gap <= hi + 150,
            "gap before attempt {}: {gap} ms, expected {lo}..{hi} ms (+150 ms slack)\n{v}",
            k + 2
        );
        let e = scheduled[k];
        assert_eq!(
            e["attempt"],
            k + 1,
            "retry_scheduled belongs to the attempt that failed: {e}"
        );
        let delay = e["delay_ms"]
            .as_i64()
            .unwrap_or_else(|| panic!("retry_scheduled without delay_ms: {e}"));
        assert!(
            (lo..=hi).contains(&delay),
            "retry_scheduled delay_ms {delay} outside {lo}..{hi}: {e}"
        );
        let due = rfc3339(&e["due_at"], "due_at");
        let due_after_end = ms_between(&ended, &due);
        assert!(
            (delay - 20..=delay + 20).contains(&due_after_end),
            "due_at is {due_after_end} ms after the attempt ended, delay_ms says {delay}: {e}"
        );
        let late = ms_between(&due, &next);
        assert!(
            (-2..=150).contains(&late),
            "attempt {} started {late} ms after its due time {due}",
            k + 2
        );
    }
    let states: Vec<&str> = history
        .iter()
        .filter(|e| e["kind"] == "step_state")
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "backoff").count(),
        2,
        "the step sits in backoff twice: {states:?}"
    );
    assert_eq!(states.last(), Some(&"failed"), "{states:?}");
}

#[test]
fn backoff_is_visible_and_survives_restarts() {
    let mut d = TestDaemon::start();
    // Attempt 1 fails, attempt 2 succeeds after a 4 s ±20 % backoff.
    let p = d.write_plan(
        "slow-backoff.toml",
        r#"name = "slow-backoff"

[[steps]]
id = "again"
command = ["sh", "-c", "[ \"$ORCH_ATTEMPT\" = 2 ]"]
retry = { max_attempts = 2, initial_backoff = "4s", jitter = 0.2 }
"#,
    );
    let id = d.submit(&[&p], 0);
    let v = d.wait_for_state(&id, |v| v["steps"][0]["state"] == "backoff", STATE_DEADLINE);
    let s = &v["steps"][0];
    assert_eq!(
        v["state"], "running",
        "an objective waiting to retry is still running: {v}"
    );
    let due = rfc3339(
        &s["next_attempt_at"],
        "next_attempt_at of a step in backoff",
    );
    let ended1 = rfc3339(&attempts(s)[0]["ended_at"], "ended_at");
    let wait = ms_between(&ended1, &due);
    assert!(
        (3200 - 20..=4800 + 20).contains(&wait),
        "next_attempt_at is {wait} ms after attempt 1 ended; the policy says 3200..4800: {v}"
    );

    // A clean restart keeps the due time.
    d.restart();
    let v = d.status(&id);
    let s = &v["steps"][0];
    assert_eq!(
        s["state"],
        "backoff",
        "after a restart (due at {due}, now {}): {v}",
        now_utc()
    );
    assert_eq!(
        rfc3339(&s["next_attempt_at"], "next_attempt_at after a restart"),
        due,
        "the due time changed across a restart: {v}"
    );
    assert_eq!(attempts(s).len(), 1, "{v}");

    // A crash, and the due time passes while the daemon is down: it fires at once on start.
    d.kill9();
    let until_due = ms_between(&now_utc(), &due) + 300;
    if until_due > 0 {
        // Waiting for the wall clock to pass the due time is the point here.
        thread::sleep(Duration::from_millis(until_due as u64));
    }
    d.launch();
    let ready = now_utc();
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 2, "{v}");
    let started2 = rfc3339(&a[1]["started_at"], "started_at of attempt 2");
    assert!(
        started2 >= due,
        "attempt 2 started at {started2}, before its due time {due}"
    );
    let lag = ms_between(&ready, &started2);
    assert!(
        lag <= 1000,
        "a backoff that fell due while the daemon was down fired {lag} ms after the restart, not at once"
    );
}

#[test]
fn outcomes_that_are_not_retried() {
    let d = TestDaemon::start();
    let (mark, _reaper) = mark_of(&d);
    let p = d.write_plan(
        "no-retry.toml",
        r#"name = "no-retry"

[defaults]
retry = { max_attempts = 3, initial_backoff = "100ms", jitter = 0.0 }

[[steps]]
id = "spawn"
command = ["/nonexistent/orch-dura-prog"]

[[steps]]
id = "only_timeouts"
command = ["sh", "-c", "exit 1"]
retry = { max_attempts = 3, initial_backoff = "100ms", retry_on = ["timeout"] }

[[steps]]
id = "code3"
command = ["sh", "-c", "exit 3"]
retry = { max_attempts = 3, initial_backoff = "100ms", retry_exit_codes = [75] }

[[steps]]
id = "code75"
command = ["sh", "-c", "exit 75"]
retry = { max_attempts = 2, initial_backoff = "100ms", retry_exit_codes = [75] }
"#,
    );
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    for (s, outcome, n) in [
        ("spawn", "spawn_error", 1),
        ("only_timeouts", "exit_failure", 1),
        ("code3", "exit_failure", 1),
        ("code75", "exit_failure", 2),
    ] {
        let st = step(&v, s);
        assert_eq!(st["state"], "failed", "step {s}: {v}");
        assert_eq!(
            outcomes(st),
            vec![outcome.to_string(); n],
            "step {s}: attempts\n{v}"
        );
    }
    assert_eq!(attempts(step(&v, "code75"))[1]["exit_code"], 75, "{v}");

    // Cancelled: never retried, whatever the policy.
    let c = d.submit(
        &[
            "--retries",
            "3",
            "--env",
            &format!("{MARK}={mark}"),
            "--",
            "sleep",
            "30.74",
        ],
        0,
    );
    d.wait_started(&c, STATE_DEADLINE);
    let out = d.ctl(&["cancel", &c]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&c, STATE_DEADLINE);
    assert_eq!(v["state"], "cancelled", "{v}");
    assert_eq!(outcomes(&v["steps"][0]), vec!["cancelled"], "{v}");
    let left = wait_no_marked(&mark, Duration::from_secs(3));
    assert!(left.is_empty(), "cancelled agent still alive: {left:?}");
}

// ------------------------------------------------------------------ checkpoints

#[test]
fn checkpoint_is_handed_to_the_next_attempt() {
    let d = TestDaemon::start();
    let out_dir = d.dir().join("ckpt-out");
    fs::create_dir(&out_dir).expect("create the output dir");
    let script = r#"out=$1
{ echo "attempt=$ORCH_ATTEMPT"; echo "objective=$ORCH_OBJECTIVE_ID"; echo "step=$ORCH_STEP_ID"; echo "file=${ORCH_CHECKPOINT_FILE-unset}"; } > "$out/env.$ORCH_ATTEMPT"
if [ -n "$ORCH_CHECKPOINT_FILE" ]; then cat "$ORCH_CHECKPOINT_FILE" > "$out/ckpt.$ORCH_ATTEMPT"; fi
if [ "$ORCH_ATTEMPT" = 1 ]; then
  echo '::orch-checkpoint::{"stage":1,"files":["a.rs","b.rs"]}'
  echo '::orch-checkpoint::{oops'
  printf '::orch-checkpoint::{"big":"%s"}\n' "$(head -c 1048576 /dev/zero | tr '\0' x)"
  echo 'after-the-bad-lines'
  exit 1
fi
exit 0
"#;
    let p = d.write_plan(
        "ckpt.toml",
        &format!(
            r#"name = "ckpt"

[[steps]]
id = "work"
command = ["bash", "-c", {}, "ckpt-agent", "{}"]
retry = {{ max_attempts = 2, initial_backoff = "100ms" }}
"#,
            serde_json::to_string(script).expect("quote the script"),
            out_dir.display()
        ),
    );
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    let s = step(&v, "work");
    assert_eq!(outcomes(s), vec!["exit_failure", "success"], "{v}");
    let good = json!({"stage": 1, "files": ["a.rs", "b.rs"]});
    assert_eq!(
        s["checkpoint"], good,
        "the malformed and the oversized checkpoint must not replace the good one: {v}"
    );

    let env1 = fs::read_to_string(out_dir.join("env.1")).expect("attempt 1 ran");
    let env2 = fs::read_to_string(out_dir.join("env.2")).expect("attempt 2 ran");
    assert_eq!(
        env1,
        format!("attempt=1\nobjective={id}\nstep=work\nfile=unset\n"),
        "attempt 1's ORCH_* environment (no checkpoint yet)"
    );
    assert!(
        env2.starts_with(&format!("attempt=2\nobjective={id}\nstep=work\nfile=/")),
        "attempt 2's ORCH_* environment: {env2}"
    );
    let handed =
        fs::read_to_string(out_dir.join("ckpt.2")).expect("attempt 2 read ORCH_CHECKPOINT_FILE");
    let handed: Value = serde_json::from_str(&handed)
        .unwrap_or_else(|e| panic!("ORCH_CHECKPOINT_FILE is not JSON ({e}): {handed}"));
    assert_eq!(handed, good, "ORCH_CHECKPOINT_FILE of attempt 2");

    let (code, history) = d.watch_json(&id, &[]);
    assert_eq!(code, Some(0));
    let ckpts: Vec<&Value> = history
        .iter()
        .filter(|e| e["kind"] == "checkpoint")
        .collect();
    assert_eq!(ckpts.len(), 1, "exactly one checkpoint event: {ckpts:?}");
    assert_eq!(ckpts[0]["checkpoint"], good, "{:?}", ckpts[0]);
    assert_eq!(ckpts[0]["attempt"], 1, "{:?}", ckpts[0]);

    // The bad lines stay in the log, and the attempt went on after them.
    let log = d.logs(&["--attempt", "1", &id, "work"]);
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("::orch-checkpoint::{oops"),
        "malformed line missing from the log"
    );
    assert!(
        log.contains("after-the-bad-lines"),
        "the attempt did not go on after a malformed line"
    );
    let daemon_log = d.log_text();
    assert!(
        daemon_log.contains("malformed") || daemon_log.contains("not JSON"),
        "the daemon did not warn about the malformed checkpoint:\n{daemon_log}"
    );
    assert!(
        daemon_log.contains("larger than the limit"),
        "the daemon did not say why the 1 MiB checkpoint was refused:\n{daemon_log}"
    );
}

// ------------------------------------------------------------------ SIGTERM

#[test]
fn sigterm_drains_a_tree_that_ignores_it() {
    let mut d = TestDaemon::start_with(&["--grace-period", "1s"], &[]);
    let (mark, _reaper) = mark_of(&d);
    let id = d.submit(
        &[
            "--retries",
            "0",
            "--env",
            &format!("{MARK}={mark}"),
            "--",
            "bash",
            "-c",
            "trap '' TERM; sleep 1000.41 & sleep 1000.42; wait",
        ],
        0,
    );
    d.wait_started(&id, STATE_DEADLINE);
    // The attempt's children announce themselves nowhere but in /proc: polled.
    let tree = poll_until("both sleeps running", STATE_DEADLINE, || {
        let a = marked_agents(&mark);
        (a.len() >= 3).then_some(a)
    });

    let t = Instant::now();
    let status = d.stop();
    let took = t.elapsed();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
    println!("SIGTERM with a 1 s grace period took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "orchd exited after {took:?}: it did not give the tree its 1 s grace period"
    );
    assert!(
        took <= Duration::from_secs(5),
        "orchd took {took:?} to drain with a 1 s grace period"
    );
    let left = wait_no_marked(&mark, Duration::from_millis(500));
    assert!(
        left.is_empty(),
        "processes of the tree outlived orchd: {left:?} (tree was {tree:?})"
    );
    assert!(!d.socket().exists(), "socket left behind after SIGTERM");

    // Recorded as interrupted, and run again although --retries 0: it used up no retry.
    d.launch();
    let v = d.wait_for_state(
        &id,
        |v| attempts(&v["steps"][0]).len() >= 2 && v["steps"][0]["attempts"][1]["pid"].is_u64(),
        STATE_DEADLINE,
    );
    assert_eq!(
        v["steps"][0]["attempts"][0]["outcome"], "interrupted",
        "{v}"
    );
    assert!(v["steps"][0]["attempts"][1]["outcome"].is_null(), "{v}");
    let out = d.ctl(&["cancel", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "cancelled", "{v}");
    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
}

#[test]
fn paused_objective_stays_paused_after_a_crash() {
    let mut d = TestDaemon::start();
    let (mark, _reaper) = mark_of(&d);
    let id = d.submit(
        &["--env", &format!("{MARK}={mark}"), "--", "sleep", "30.75"],
        0,
    );
    d.wait_started(&id, STATE_DEADLINE);
    let out = d.ctl(&["pause", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    d.wait_state(&id, &["paused"], STATE_DEADLINE);

    d.kill9();
    d.launch();
    let left = wait_no_marked(&mark, Duration::from_millis(1500));
    assert!(
        left.is_empty(),
        "the paused tree survived recovery: {left:?}"
    );
    let v = d.status(&id);
    assert_eq!(v["state"], "paused", "{v}");
    assert_eq!(v["steps"][0]["state"], "paused", "{v}");
    assert_eq!(
        outcomes(&v["steps"][0]),
        vec!["interrupted"],
        "nothing runs while paused: {v}"
    );

    let out = d.ctl(&["resume", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_for_state(
        &id,
        |v| v["steps"][0]["attempts"][1]["pid"].is_u64(),
        STATE_DEADLINE,
    );
    assert_eq!(v["state"], "running", "{v}");
    let out = d.ctl(&["cancel", &id]);
    assert!(out.status.success(), "{}", describe(&out));
}

// ------------------------------------------------------------------ store hygiene

#[test]
fn newer_schema_is_refused() {
    let mut d = TestDaemon::start();
    let id = d.submit(&["--wait", "--", "true"], 0);
    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");

    set_schema_version(&d.store_dir(), 99);
    let before = store_dump(&d.store_dir());
    let empty = d.write_file("refused-orchd.toml", "");
    let mut cmd = d.orchd();
    cmd.arg("--socket")
        .arg(d.socket())
        .arg("--state-dir")
        .arg(d.state_dir())
        .env("ORCH_CONFIG", &empty);
    let out = run_deadline(&mut cmd, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("orchd with a newer store did not exit: {e}"));
    assert!(
        !out.status.success(),
        "orchd started on a store of schema 99\n{}",
        describe(&out)
    );
    let msg = stderr(&out);
    assert!(
        mentions_number(&msg, 99) && mentions_number(&msg, 1),
        "the refusal does not name both schema versions (99 and 1)\n{}",
        describe(&out)
    );
    assert!(!d.socket().exists(), "a refused orchd left a socket");
    assert!(
        before == store_dump(&d.store_dir()),
        "the refused start changed the store"
    );

    set_schema_version(&d.store_dir(), 1);
    d.launch();
    assert_eq!(d.status(&id)["state"], "succeeded");
}

#[test]
fn retention_removes_old_ended_objectives_only() {
    let mut d = TestDaemon::prepare_with_config("retention = \"1s\"\n", &[]);
    d.launch();
    let (mark, _reaper) = mark_of(&d);
    let old = d.submit(&["--wait", "--", "sh", "-c", "echo to-be-forgotten"], 0);
    let old_status = d.status(&old);
    let (_, history) = d.watch_json(&old, &[]);
    let old_max_seq = history
        .iter()
        .map(seq)
        .max()
        .expect("events of the old objective");
    let logs = d.state_dir().join("logs").join(&old);
    assert!(
        logs.is_dir(),
        "no log dir {} for a finished objective",
        logs.display()
    );
    let keep = d.submit(
        &["--env", &format!("{MARK}={mark}"), "--", "sleep", "30.73"],
        0,
    );
    d.wait_started(&keep, STATE_DEADLINE);
    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");

    // Let the ended objective grow older than the retention (that age is what is awaited).
    let updated = rfc3339(&old_status["updated_at"], "updated_at");
    let age = ms_between(&updated, &now_utc());
    if age < 1300 {
        thread::sleep(Duration::from_millis((1300 - age) as u64));
    }
    d.launch();

    // Removal sends no event: poll for the objective (over gRPC) and its log dir.
    poll_until(
        "retention removes the old objective",
        STATE_DEADLINE,
        || {
            let got = block_on(async {
                d.client()
                    .await
                    .get_objective(GetObjectiveRequest { id: old.clone() })
                    .await
            });
            got.is_err_and(|e| e.code() == tonic::Code::NotFound)
                .then_some(())
        },
    );
    poll_until("retention removes the old logs", STATE_DEADLINE, || {
        (!logs.exists()).then_some(())
    });
    let listed: Vec<Value> = d.list(&[]);
    assert!(
        listed.iter().all(|o| o["id"] != old.as_str()),
        "a removed objective is still listed: {listed:?}"
    );
    let (code, events) = d.watch_json(&old, &[]);
    assert!(
        code != Some(0) && events.is_empty(),
        "events of a removed objective are still served ({code:?}): {events:?}"
    );
    let v = d.status(&keep);
    assert!(
        !ended(&v),
        "an objective that had not ended was removed or ended: {v}"
    );

    // Sequence numbers do not fall back when the newest events were removed.
    let fresh = d.submit(&["--wait", "--", "true"], 0);
    let (_, history) = d.watch_json(&fresh, &[]);
    let min = history
        .iter()
        .map(seq)
        .min()
        .expect("events of the new objective");
    assert!(
        min > old_max_seq,
        "a new event got seq {min}, not above {old_max_seq} of a removed objective"
    );
    let out = d.ctl(&["cancel", &keep]);
    assert!(out.status.success(), "{}", describe(&out));
}

// ------------------------------------------------------------------ submit and retry

#[test]
fn submit_with_a_request_id_is_idempotent() {
    let mut d = TestDaemon::start();
    let first = d.ctl(&["submit", "--request-id", "dura-key-1", "--", "true"]);
    assert!(first.status.success(), "{}", describe(&first));
    let id = ulid_first_line(&first);
    let again = d.ctl(&["submit", "--request-id", "dura-key-1", "--", "true"]);
    assert!(again.status.success(), "{}", describe(&again));
    assert_eq!(
        ulid_first_line(&again),
        id,
        "same request id, another objective"
    );
    assert!(
        stderr(&again).contains(&id) || !stderr(&again).trim().is_empty(),
        "orchctl did not say the request id matched an earlier objective\n{}",
        describe(&again)
    );
    let other = d.submit(&["--request-id", "dura-key-2", "--", "true"], 0);
    assert_ne!(
        other, id,
        "a different request id returned the same objective"
    );
    let list = d.list(&[]);
    assert_eq!(list.len(), 2, "two request ids, two objectives: {list:?}");

    // Remembered across a restart.
    d.wait_ended(&id, STATE_DEADLINE);
    d.restart();
    let after = d.submit(&["--request-id", "dura-key-1", "--", "true"], 0);
    assert_eq!(after, id, "the request id was forgotten across a restart");
    assert_eq!(d.list(&[]).len(), 2);
}

#[test]
fn retry_reruns_failed_steps_from_their_checkpoint() {
    let d = TestDaemon::start();
    let (mark, _reaper) = mark_of(&d);
    // Fails until it has a checkpoint; the dependent is skipped meanwhile.
    let p = d.write_plan(
        "retry.toml",
        r#"name = "retry-me"

[[steps]]
id = "flaky"
command = ["sh", "-c", "if [ -n \"$ORCH_CHECKPOINT_FILE\" ]; then exit 0; fi; echo '::orch-checkpoint::{\"seen\":1}'; exit 1"]
retry = { max_attempts = 1 }

[[steps]]
id = "after"
needs = ["flaky"]
command = ["true"]
"#,
    );
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(step(&v, "flaky")["state"], "failed", "{v}");
    assert_eq!(step(&v, "after")["state"], "skipped", "{v}");

    // Refused (exit 1), saying why.
    let refused = |args: &[&str], what: &str| {
        let out = d.ctl_exits(args, 1, &format!("retry of {what}"));
        assert!(
            !stderr(&out).trim().is_empty(),
            "retry of {what} gave no reason"
        );
    };
    refused(&["retry", &id, "nosuchstep"], "an unknown step");
    refused(&["retry", &id, "after"], "a skipped (not failed) step");

    let out = d.ctl(&["retry", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(
        outcomes(step(&v, "flaky")),
        vec!["exit_failure", "success"],
        "{v}"
    );
    assert_eq!(outcomes(step(&v, "after")), vec!["success"], "{v}");
    assert_eq!(step(&v, "flaky")["checkpoint"], json!({"seen": 1}), "{v}");

    d.ctl_exits(&["retry", &id], 1, "retry of a succeeded objective");

    let running = d.submit(
        &["--env", &format!("{MARK}={mark}"), "--", "sleep", "30.72"],
        0,
    );
    d.wait_started(&running, STATE_DEADLINE);
    refused(&["retry", &running], "a running objective");
    let out = d.ctl(&["cancel", &running]);
    assert!(out.status.success(), "{}", describe(&out));
}

// ------------------------------------------------------------------ sequence numbers

#[test]
fn event_seqs_never_repeat_across_restarts() {
    let mut d = TestDaemon::start();
    let (mark, _reaper) = mark_of(&d);
    let go = Gate::new(&d, "go");
    let id = d.submit(
        &[
            "--retries",
            "0",
            "--env",
            &format!("{MARK}={mark}"),
            "--",
            "sh",
            "-c",
            &go.wait(),
        ],
        0,
    );
    let running = |n: usize| {
        move |v: &Value| {
            attempts(&v["steps"][0]).len() == n && v["steps"][0]["attempts"][n - 1]["pid"].is_u64()
        }
    };
    d.wait_for_state(&id, running(1), STATE_DEADLINE);

    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
    let m1 = store_events(&d.store_dir())
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    d.launch();
    d.wait_for_state(&id, running(2), STATE_DEADLINE);

    d.kill9();
    let m2 = store_events(&d.store_dir())
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    assert!(
        m2 > m1,
        "no event was stored between the restarts ({m1}, {m2})"
    );
    d.launch();
    d.wait_for_state(&id, running(3), STATE_DEADLINE);
    go.open();
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(
        outcomes(&v["steps"][0]),
        vec!["interrupted", "interrupted", "success"],
        "{v}"
    );
    let fresh = d.submit(&["--wait", "--", "true"], 0);

    let (code, h1) = d.watch_json(&id, &[]);
    assert_eq!(code, Some(0));
    let s1: Vec<u64> = h1.iter().map(seq).collect();
    assert_strictly_increasing(&s1, "history across a restart and a crash");
    assert!(
        s1.iter().any(|s| *s <= m1),
        "no event from before the restart: {s1:?}"
    );
    assert!(
        s1.iter().any(|s| *s > m1 && *s <= m2),
        "no event between restart and crash: {s1:?}"
    );
    assert!(
        s1.iter().any(|s| *s > m2),
        "no event after the crash: {s1:?}"
    );
    assert_eq!(
        h1.iter().filter(|e| e["kind"] == "attempt_started").count(),
        3,
        "{h1:?}"
    );
    let (code, h2) = d.watch_json(&fresh, &[]);
    assert_eq!(code, Some(0));
    let s2: Vec<u64> = h2.iter().map(seq).collect();
    assert_strictly_increasing(&s2, "history of a new objective");
    assert!(
        s2.iter().all(|s| *s > m2),
        "a new objective got seqs {s2:?}, not above {m2} stored before the crash"
    );
    assert!(
        s1.iter().all(|s| !s2.contains(s)),
        "two objectives share a seq: {s1:?} {s2:?}"
    );

    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
    let stored = store_events(&d.store_dir());
    let all: BTreeSet<u64> = s1.iter().chain(&s2).copied().collect();
    let kept: BTreeSet<u64> = stored.keys().copied().collect();
    assert!(
        all.is_subset(&kept),
        "watch showed seqs the store does not hold"
    );
    assert!(store_last_seq(&d.store_dir()) >= *kept.iter().next_back().expect("events"));
}
