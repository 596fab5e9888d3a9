//! The event stream, `orchctl watch`, progress and the audit trail, against the real daemon:
//! resuming with `--from` (also across a restart), filters, exit codes, 100 concurrent
//! watchers of a noisy step, watchers that stop reading, ListAudit, and the Python client.
//!
//! Agents that must still run while a test looks at them wait for a gate file the test
//! creates, so nothing depends on timing; every wait is bounded by a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use orch_proto::v1::orchestrator_client::OrchestratorClient;
use orch_proto::v1::{
    DaemonStatusRequest, Event, GetObjectiveRequest, ObjectiveRef, ObjectiveState, WatchRequest,
    event::Payload,
};
use serde_json::Value;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::support::{
    CMD_DEADLINE, Follower, Gate, STATE_DEADLINE, TestDaemon, WATCH_DEADLINE,
    assert_strictly_increasing, describe, is_state, is_terminal, json_lines, objective_until,
    poll_until, progress, require_program, require_python_grpc, rfc3339, run_deadline,
    script_request, seq, seqs, stderr, stdout,
};

// ------------------------------------------------------------------ helpers

/// Submits a one-step `bash -c SCRIPT` objective with no retries; returns its id.
fn submit_script(d: &TestDaemon, name: &str, script: &str) -> String {
    d.submit(
        &["--name", name, "--retries", "0", "--", "bash", "-c", script],
        0,
    )
}

/// Parses the lines a `Follower` read as JSON Lines.
fn parse_lines(lines: &[String], what: &str) -> Vec<Value> {
    json_lines(&lines.join("\n"), what)
}

/// The whole history of an ended objective (asserting `watch` exits with `code`).
fn history(d: &TestDaemon, id: &str, code: i32) -> Vec<Value> {
    let (got, events) = d.watch_json(id, &[]);
    assert_eq!(
        got,
        Some(code),
        "watch {id}: wrong exit code; events {events:?}"
    );
    assert_strictly_increasing(&seqs(&events), "history");
    events
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn event_ms(e: &Event) -> i64 {
    e.time
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
        .unwrap_or(0)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// A gRPC client whose HTTP/2 receive windows are tiny (1 KiB per stream), so a stream it
/// does not read stalls the sender almost at once.
async fn small_window_client(socket: &Path) -> OrchestratorClient<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .initial_stream_window_size(Some(1024))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    OrchestratorClient::new(channel)
}

/// A client on its own connection to `socket`.
async fn connect(socket: &Path) -> OrchestratorClient<Channel> {
    orch_proto::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Submits a one-step `bash -c SCRIPT` objective over gRPC; returns its id.
async fn submit_rpc(
    client: &mut OrchestratorClient<Channel>,
    name: &str,
    workdir: &Path,
    script: &str,
) -> String {
    client
        .submit(script_request(name, workdir, script))
        .await
        .unwrap_or_else(|e| panic!("Submit: {e}"))
        .into_inner()
        .id
}

/// The stream of `Watch(request)`.
async fn watch(
    client: &mut OrchestratorClient<Channel>,
    request: WatchRequest,
) -> Streaming<Event> {
    client
        .watch(request)
        .await
        .unwrap_or_else(|e| panic!("Watch: {e}"))
        .into_inner()
}

/// Every event of `Watch(request)` until the stream ends (bounded by `deadline`), each with
/// the wall-clock time (ms) it arrived.
async fn collect(
    client: &mut OrchestratorClient<Channel>,
    request: WatchRequest,
    deadline: Duration,
) -> Vec<(Event, i64)> {
    drain(watch(client, request).await, deadline).await
}

/// [`collect`] without the arrival times.
async fn collect_events(
    client: &mut OrchestratorClient<Channel>,
    request: WatchRequest,
    deadline: Duration,
) -> Vec<Event> {
    let got = collect(client, request, deadline).await;
    got.into_iter().map(|(e, _)| e).collect()
}

/// Every event of `stream` until it ends (bounded by `deadline`), each with the wall-clock
/// time (ms) it arrived.
async fn drain(mut stream: Streaming<Event>, deadline: Duration) -> Vec<(Event, i64)> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, stream.message()).await {
            Ok(Ok(Some(e))) => got.push((e, now_ms())),
            Ok(Ok(None)) => return got,
            Ok(Err(status)) => panic!("Watch stream failed after {} events: {status}", got.len()),
            Err(_) => panic!(
                "Watch stream did not end within {deadline:?} ({} events)",
                got.len()
            ),
        }
    }
}

/// The events of a global `stream` (which never ends) up to the first whose seq is at least
/// `last`; each must come within 30 s.
async fn global_until(stream: &mut Streaming<Event>, last: u64, what: &str) -> Vec<Event> {
    let mut got = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("{what}: no event within 30 s"))
            .unwrap_or_else(|e| panic!("{what}: Watch: {e}"))
            .expect("a global watch does not end");
        let done = e.seq >= last;
        got.push(e);
        if done {
            return got;
        }
    }
}

fn is_final(e: &Event) -> bool {
    matches!(
        &e.payload,
        Some(Payload::ObjectiveState(s))
            if s.state == ObjectiveState::Succeeded as i32
                || s.state == ObjectiveState::Failed as i32
                || s.state == ObjectiveState::Cancelled as i32
    )
}

fn progress_count(events: &[Event]) -> usize {
    events.iter().filter(|e| e.kind == "progress").count()
}

/// Follows objective `id` until it ended (asserting success); returns how long after `since`.
async fn time_to_end(
    client: &mut OrchestratorClient<Channel>,
    id: &str,
    since: Instant,
) -> Duration {
    let o = objective_until(client, id, "its end", Duration::from_secs(60), is_terminal).await;
    assert_eq!(o.state, ObjectiveState::Succeeded as i32, "{o:?}");
    since.elapsed()
}

// ------------------------------------------------------------------ --from and reconnects

#[test]
fn reconnect_with_from_gets_every_event_exactly_once() {
    let d = TestDaemon::start();
    let gate = Gate::new(&d, "from");
    let script = format!(
        "{}; {}; {}; {}",
        progress(10, "started"),
        gate.wait(),
        progress(60, "more"),
        progress(100, "done")
    );
    let id = submit_script(&d, "reconnect", &script);

    // A first watcher follows live and goes away after the first progress event.
    let mut first = Follower::start(d.ctl_command(&["watch", &id, "-o", "json"]));
    first.until("the first progress event", WATCH_DEADLINE, |l| {
        l.contains(r#""kind":"progress""#)
    });
    let before = parse_lines(&first.kill(), "first watcher");
    let last_seen = seq(before.last().expect("some events"));

    gate.open();
    // It comes back with --from last-seen+1 and follows to the end by itself.
    let from = (last_seen + 1).to_string();
    let (code, after) = d.watch_json(&id, &["--from", &from]);
    assert_eq!(code, Some(0), "the resumed watch exits 0: {after:?}");

    let full = history(&d, &id, 0);
    let mut joined = before.clone();
    joined.extend(after);
    assert_eq!(joined, full, "before + after --from is the whole history");
    assert_eq!(full[0]["kind"], "objective_submitted", "{:?}", full[0]);
    assert!(
        is_state(full.last().expect("events"), "succeeded"),
        "{full:?}"
    );
    let progress: Vec<&Value> = full.iter().filter(|e| e["kind"] == "progress").collect();
    assert_eq!(progress.len(), 3, "{full:?}");

    // From the stored history alone, every split point gives the same.
    let mut splits: Vec<usize> = vec![1, full.len() / 2, full.len() - 1, full.len()];
    splits.dedup();
    for k in splits {
        let from = match full.get(k) {
            Some(e) => seq(e).to_string(),
            None => (seq(&full[k - 1]) + 1).to_string(),
        };
        let (code, tail) = d.watch_json(&id, &["--from", &from]);
        assert_eq!(code, Some(0), "watch --from {from}");
        assert_eq!(tail, full[k..].to_vec(), "watch --from {from} (split {k})");
    }
}

#[test]
fn reconnect_with_from_across_a_daemon_restart() {
    let mut d = TestDaemon::start();
    let gate = Gate::new(&d, "restart");
    // Interrupted by the restart, the step runs again (attempt 2) and waits for the gate.
    let script = format!(
        "{}; {}; {}",
        progress(10, "attempt $ORCH_ATTEMPT"),
        gate.wait(),
        progress(100, "done")
    );
    let id = submit_script(&d, "restart", &script);

    // One watcher keeps running through the restart (orchctl reconnects by itself) ...
    let mut through = Follower::start(d.ctl_command(&["watch", &id, "-o", "json"]));
    through.until("attempt 1's progress", WATCH_DEADLINE, |l| {
        l.contains("attempt 1")
    });
    // ... another stops before it and comes back after it with --from.
    let mut first = Follower::start(d.ctl_command(&["watch", &id, "-o", "json"]));
    first.until("attempt 1's progress", WATCH_DEADLINE, |l| {
        l.contains("attempt 1")
    });
    let before = parse_lines(&first.kill(), "first watcher");
    let last_seen = seq(before.last().expect("some events"));

    d.restart();
    d.wait_for_state(
        &id,
        |s| s["steps"][0]["progress"]["message"] == "attempt 2",
        STATE_DEADLINE,
    );
    gate.open();

    let from = (last_seen + 1).to_string();
    let (code, after) = d.watch_json(&id, &["--from", &from]);
    assert_eq!(code, Some(0), "the resumed watch exits 0: {after:?}");
    let full = history(&d, &id, 0);
    let mut joined = before.clone();
    joined.extend(after.clone());
    assert_eq!(joined, full, "before + after --from is the whole history");
    assert!(
        before.iter().all(|e| full.contains(e)),
        "the history from before the restart is kept, with its seqs"
    );
    let ended = |outcome: &str, attempt: u64| {
        full.iter().any(|e| {
            e["kind"] == "attempt_ended" && e["outcome"] == outcome && e["attempt"] == attempt
        })
    };
    assert!(ended("interrupted", 1), "attempt 1 interrupted: {full:?}");
    assert!(ended("success", 2), "attempt 2 succeeded: {full:?}");
    assert!(
        is_state(full.last().expect("events"), "succeeded"),
        "{full:?}"
    );
    assert!(
        after
            .iter()
            .any(|e| e["kind"] == "attempt_started" && e["attempt"] == 2),
        "events written after the restart are in the resumed watch: {after:?}"
    );

    // The watcher that stayed through the restart saw every event exactly once too.
    let (status, lines, err) = through.finish(WATCH_DEADLINE);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(parse_lines(&lines, "through"), full, "stderr: {err}");
}

// ------------------------------------------------------------------ filters

#[test]
fn kinds_filter_unknown_kinds_and_the_global_stream() {
    let d = TestDaemon::start();
    // Live from now: only what happens after the watch began.
    let early = d.submit(&["--wait", "--", "true"], 0);
    let mut live = Follower::start(d.ctl_command(&["watch", "-o", "json"]));
    // It prints nothing until something happens: submit small objectives until it shows
    // one, so it surely follows before `a` is submitted.
    let heartbeat = poll_until(
        "the live watch shows a new objective",
        WATCH_DEADLINE,
        || {
            let h = d.submit(&["--name", "heartbeat", "--", "true"], 0);
            let line = live.try_next_line(Duration::from_millis(200))?;
            let e: Value = serde_json::from_str(&line).expect("JSON");
            assert_ne!(
                e["objective_id"],
                early.as_str(),
                "an event from before the watch"
            );
            Some(h)
        },
    );
    d.wait_ended(&heartbeat, STATE_DEADLINE);
    let a = d.submit(
        &[
            "--wait",
            "--name",
            "a",
            "--",
            "bash",
            "-c",
            &progress(50, "a"),
        ],
        0,
    );
    let b = d.submit(
        &["--wait", "--name", "b", "--retries", "0", "--", "false"],
        1,
    );

    // --kinds: only those kinds, and all of them.
    let full_a = history(&d, &a, 0);
    let (code, filtered) = d.watch_json(&a, &["--kinds", "attempt_ended,objective_state"]);
    assert_eq!(code, Some(0));
    let expected: Vec<Value> = full_a
        .iter()
        .filter(|e| e["kind"] == "attempt_ended" || e["kind"] == "objective_state")
        .cloned()
        .collect();
    assert!(expected.len() >= 3, "{full_a:?}");
    assert_eq!(filtered, expected);
    let (code, only_progress) = d.watch_json(&a, &["--kinds", "progress"]);
    assert_eq!(code, Some(0));
    assert_eq!(only_progress.len(), 1, "{only_progress:?}");
    assert_eq!(only_progress[0]["percent"], 50.0);

    // An unknown kind is bad input, with a message naming it.
    let out = d.ctl(&["watch", &a, "--kinds", "progress,nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("nope"), "{}", describe(&out));
    let out = d.ctl(&["watch", "--kinds", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // The daemon refuses it too (for clients that do not check).
    let code = crate::support::block_on(async {
        let mut c = d.client().await;
        c.watch(WatchRequest {
            objective_id: a.clone(),
            from_seq: None,
            kinds: vec!["nope".into()],
        })
        .await
        .err()
        .map(|s| s.code())
    });
    assert_eq!(code, Some(tonic::Code::InvalidArgument));
    // Watching an unknown objective is refused (exit 1).
    let out = d.ctl(&["watch", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // The global stream from seq 1: every objective's events, in seq order, no gap.
    let full_b = history(&d, &b, 1);
    let mut global = Follower::start(d.ctl_command(&["watch", "--from", "1", "-o", "json"]));
    let end_b = seq(full_b.last().expect("events"));
    global.until("b's last event", WATCH_DEADLINE, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|e| seq(&e) == end_b)
    });
    let all = parse_lines(&global.kill(), "global watch");
    assert_eq!(
        seqs(&all),
        (1..=end_b).collect::<Vec<_>>(),
        "the global stream from 1 has every seq once, in order"
    );
    let of = |id: &str| -> Vec<Value> {
        all.iter()
            .filter(|e| e["objective_id"] == id)
            .cloned()
            .collect()
    };
    assert_eq!(of(&a), full_a);
    assert_eq!(of(&b), full_b);
    assert!(!of(&early).is_empty());

    // The live stream (no --from) started after `early` ended: none of its events, and
    // every event of a and b, in order.
    live.until("b's last event", WATCH_DEADLINE, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|e| seq(&e) == end_b)
    });
    assert!(live.running(), "a global watch does not end by itself");
    let live_events = parse_lines(&live.kill(), "live watch");
    assert_strictly_increasing(&seqs(&live_events), "live watch");
    assert!(
        live_events
            .iter()
            .all(|e| e["objective_id"] != early.as_str()),
        "nothing from before the watch began"
    );
    let mut expected = full_a.clone();
    expected.extend(full_b.clone());
    let got: Vec<Value> = live_events
        .into_iter()
        .filter(|e| e["objective_id"] == a.as_str() || e["objective_id"] == b.as_str())
        .collect();
    assert_eq!(got, expected);
}

// ------------------------------------------------------------------ exit codes, live following

#[test]
fn watch_follows_live_and_exits_with_the_objective_result() {
    let d = TestDaemon::start();
    let gate = Gate::new(&d, "live");
    let script = format!("{}; {}", progress(30, "waiting"), gate.wait());
    let id = submit_script(&d, "live", &script);

    // Started while it runs (not a terminal: one plain line per event).
    let mut w = Follower::start(d.ctl_command(&["watch", &id]));
    w.until("the progress line", WATCH_DEADLINE, |l| {
        l.contains("30% waiting")
    });
    thread::sleep(Duration::from_millis(300));
    assert!(w.running(), "watch ends only when the objective does");
    gate.open();
    let (status, lines, err) = w.finish(WATCH_DEADLINE);
    assert_eq!(status.code(), Some(0), "{err}\n{}", lines.join("\n"));
    let full = history(&d, &id, 0);
    assert_eq!(
        lines.len(),
        full.len(),
        "one line per event:\n{}",
        lines.join("\n")
    );
    for (line, e) in lines.iter().zip(&full) {
        let kind = e["kind"].as_str().unwrap_or_default();
        assert!(line.contains(kind), "`{line}` is not the {kind} event");
    }
    let last = lines.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("objective_state") && last.contains("succeeded"),
        "{last}"
    );

    // A failed objective: exit 1, with and without -o json, and for submit --watch/--wait.
    let failed = d.submit(&["--wait", "--retries", "0", "--", "false"], 1);
    let out = d.ctl(&["watch", &failed]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let events = history(&d, &failed, 1);
    assert!(
        is_state(events.last().expect("events"), "failed"),
        "{events:?}"
    );
    // A cancelled one: exit 1.
    let cancelled = submit_script(&d, "to-cancel", &Gate::new(&d, "never").wait());
    let out = d.ctl(&["cancel", &cancelled]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = d.ctl(&["watch", &cancelled]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    let out = d.ctl(&["submit", "--watch", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let id_line = lines.next().unwrap_or_default();
    assert_eq!(id_line.len(), 26, "the id comes first: {text}");
    assert!(
        text.lines().last().is_some_and(|l| l.contains("succeeded")),
        "{text}"
    );
    let out = d.ctl(&[
        "submit",
        "--watch",
        "-o",
        "json",
        "--retries",
        "0",
        "--",
        "false",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let parsed = parse_lines(&lines, "submit --watch -o json");
    assert!(parsed[0]["id"].is_string(), "{text}");
    assert!(is_state(parsed.last().expect("lines"), "failed"), "{text}");
}

/// The live view needs a terminal: run `orchctl watch` under `script` (util-linux), which
/// gives it a pseudo-terminal, when that is installed.
#[test]
fn watch_on_a_terminal_shows_the_live_view_and_a_summary() {
    if !require_program("script", "util-linux, to give orchctl a pseudo-terminal") {
        return;
    }
    let d = TestDaemon::start();
    let ok = d.submit(
        &[
            "--wait",
            "--name",
            "tty",
            "--",
            "bash",
            "-c",
            &progress(40, "almost"),
        ],
        0,
    );
    let failed = d.submit(&["--wait", "--retries", "0", "--", "false"], 1);
    for (id, code, word) in [(&ok, 0, "succeeded"), (&failed, 1, "failed")] {
        let ctl = format!(
            "{} --socket '{}' watch {id}",
            crate::support::ORCHCTL,
            d.socket().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &ctl, "/dev/null"])
            .env("TERM", "xterm")
            .env("COLUMNS", "120")
            .current_dir(d.work_dir());
        let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
        let text = stdout(&out);
        let summary = format!("objective {id} {word}");
        assert!(text.contains(&summary), "no summary `{summary}`:\n{text}");
        assert!(text.contains("steps succeeded"), "{text}");
        assert!(text.contains("main"), "the step's line:\n{text}");
    }
}

// ------------------------------------------------------------------ load

/// A script printing 1,000 lines: 700 plain, 300 `::orch-progress::`.
fn noisy_script(gate: &Gate) -> String {
    format!(
        "{}; for i in $(seq 1 1000); do if [ $((i % 10)) -lt 3 ]; then \
         echo \"::orch-progress::{{\\\"percent\\\":$((i / 10)),\\\"message\\\":\\\"line $i\\\"}}\"; \
         else echo \"plain output line $i of the noisy step\"; fi; done",
        gate.wait()
    )
}

#[test]
fn hundred_watchers_see_the_same_ordered_events_of_a_noisy_step() {
    const WATCHERS: usize = 100;
    let d = TestDaemon::start();
    let gate = Gate::new(&d, "noisy");
    let script = noisy_script(&gate);
    let rt = multi_thread_runtime();
    rt.block_on(async {
        let mut client = d.client().await;
        let id = submit_rpc(&mut client, "noisy", d.work_dir(), &script).await;

        // 100 watchers, each on its own connection, all attached before the noise starts.
        let (attached_tx, mut attached_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
        let mut tasks = Vec::new();
        for _ in 0..WATCHERS {
            let socket = d.socket().to_path_buf();
            let id = id.clone();
            let attached = attached_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = connect(&socket).await;
                let mut stream = watch(
                    &mut c,
                    WatchRequest {
                        objective_id: id,
                        from_seq: None,
                        kinds: vec![],
                    },
                )
                .await;
                let mut got: Vec<(Event, i64)> = Vec::new();
                let end = tokio::time::Instant::now() + Duration::from_secs(90);
                loop {
                    match tokio::time::timeout_at(end, stream.message()).await {
                        Ok(Ok(Some(e))) => {
                            if got.is_empty() {
                                let _ = attached.send(()).await;
                            }
                            got.push((e, now_ms()));
                        }
                        Ok(Ok(None)) => return got,
                        Ok(Err(s)) => panic!("Watch failed after {} events: {s}", got.len()),
                        Err(_) => panic!("Watch did not end within 90s ({} events)", got.len()),
                    }
                }
            }));
        }
        drop(attached_tx);
        for _ in 0..WATCHERS {
            tokio::time::timeout(Duration::from_secs(60), attached_rx.recv())
                .await
                .expect("every watcher attaches within 60s")
                .expect("a watcher died before attaching");
        }

        // The daemon stays responsive meanwhile: DaemonStatus over gRPC, and orchctl.
        let stop = Arc::new(AtomicBool::new(false));
        let grpc_probe = {
            let socket = d.socket().to_path_buf();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = connect(&socket).await;
                let mut worst = Duration::ZERO;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) || n == 0 {
                    let t = Instant::now();
                    tokio::time::timeout(Duration::from_secs(10), c.daemon_status(DaemonStatusRequest {}))
                        .await
                        .expect("DaemonStatus answered within 10 s")
                        .unwrap_or_else(|e| panic!("DaemonStatus: {e}"));
                    worst = worst.max(t.elapsed());
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                (worst, n)
            })
        };
        let ctl_probe = {
            let stop = stop.clone();
            let socket = d.socket().to_path_buf();
            let work = d.work_dir().to_path_buf();
            thread::spawn(move || {
                let mut worst = Duration::ZERO;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) || n == 0 {
                    let t = Instant::now();
                    let out = crate::support::orchctl(&socket, &work, &["daemon", "status"]);
                    assert!(out.status.success(), "{}", describe(&out));
                    worst = worst.max(t.elapsed());
                    n += 1;
                }
                (worst, n)
            })
        };

        let opened_ms = now_ms();
        let opened = Instant::now();
        gate.open();
        let mut lists = Vec::new();
        for t in tasks {
            lists.push(t.await.expect("a watcher task panicked"));
        }
        let took = opened.elapsed();
        stop.store(true, Ordering::SeqCst);
        let (grpc_worst, grpc_n) = grpc_probe.await.expect("the DaemonStatus probe panicked");
        let (ctl_worst, ctl_n) = ctl_probe.join().expect("the orchctl probe panicked");

        let first: Vec<Event> = lists[0].iter().map(|(e, _)| e.clone()).collect();
        assert!(
            first.windows(2).all(|w| w[0].seq < w[1].seq),
            "strictly increasing seqs"
        );
        assert!(first.last().is_some_and(is_final), "ends with the final state");
        assert_eq!(
            first.last().map(|e| e.payload.clone()),
            Some(Some(Payload::ObjectiveState(orch_proto::v1::ObjectiveStateChanged {
                state: ObjectiveState::Succeeded as i32,
                message: String::new(),
            }))),
        );
        assert_eq!(progress_count(&first), 300, "every progress line is an event");
        for (i, l) in lists.iter().enumerate() {
            let events: Vec<&Event> = l.iter().map(|(e, _)| e).collect();
            assert!(
                events.len() == first.len() && events.iter().zip(&first).all(|(a, b)| *a == b),
                "watcher {i} got a different list ({} events, first watcher {})",
                events.len(),
                first.len()
            );
        }
        // A fresh watcher of the history gets the same list.
        let again: Vec<Event> = collect_events(
            &mut client,
            WatchRequest {
                objective_id: id.clone(),
                from_seq: None,
                kinds: vec![],
            },
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(again, first);

        // Numbers for the notes: delivery delay of live events, and throughput.
        let mut delays: Vec<i64> = lists
            .iter()
            .flatten()
            .filter(|(e, _)| event_ms(e) >= opened_ms)
            .map(|(e, at)| at - event_ms(e))
            .collect();
        delays.sort_unstable();
        let delivered: usize = lists.iter().map(Vec::len).sum();
        eprintln!(
            "100 watchers: {} events each ({} live), {delivered} delivered in {:.2}s after the gate \
             ({:.0} events/s); delay transition->delivery p50 {} ms, p99 {} ms, max {} ms",
            first.len(),
            delays.len() / WATCHERS,
            took.as_secs_f64(),
            delivered as f64 / took.as_secs_f64(),
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays.last().copied().unwrap_or(0),
        );
        eprintln!(
            "while streaming: DaemonStatus worst {:?} over {grpc_n} calls; `orchctl daemon status` worst {:?} over {ctl_n} runs",
            grpc_worst, ctl_worst
        );
        assert!(grpc_worst < Duration::from_secs(2), "DaemonStatus took {grpc_worst:?}");
        assert!(ctl_worst < Duration::from_secs(2), "orchctl daemon status took {ctl_worst:?}");

        // Replay throughput from the store: 1 watcher, then 100 at once, of the global
        // stream from seq 1 up to the objective's last event (a global watch never ends).
        let last_seq = first.last().map(|e| e.seq).unwrap_or(0);
        let replay = |socket: PathBuf| async move {
            let mut c = connect(&socket).await;
            let mut s = watch(
                &mut c,
                WatchRequest {
                    objective_id: String::new(),
                    from_seq: Some(1),
                    kinds: vec![],
                },
            )
            .await;
            global_until(&mut s, last_seq, "replay").await.len() as u64
        };
        let t = Instant::now();
        let n1 = replay(d.socket().to_path_buf()).await;
        let one_rate = n1 as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut many = Vec::new();
        for _ in 0..WATCHERS {
            many.push(tokio::spawn(replay(d.socket().to_path_buf())));
        }
        let mut total = 0;
        for m in many {
            total += m.await.expect("a replay task panicked");
        }
        assert_eq!(total, n1 * WATCHERS as u64);
        let many_rate = total as f64 / t.elapsed().as_secs_f64();
        eprintln!(
            "replay from the store: 1 watcher {one_rate:.0} events/s; {WATCHERS} watchers {many_rate:.0} events/s in total"
        );
    });
}

#[test]
fn a_watcher_that_stops_reading_does_not_slow_the_engine() {
    let d = TestDaemon::start();
    let rt = multi_thread_runtime();
    // 300 progress events with 200-character messages.
    let pad = "x".repeat(200);
    let script = format!(
        "for i in $(seq 1 300); do echo \"::orch-progress::{{\\\"percent\\\":$((i / 3)),\\\"message\\\":\\\"$i {pad}\\\"}}\"; done"
    );
    rt.block_on(async {
        let mut client = d.client().await;
        let t = Instant::now();
        let base_id = submit_rpc(&mut client, "baseline", d.work_dir(), &script).await;
        let baseline = time_to_end(&mut client, &base_id, t).await;

        // Watchers that never read: the whole log from seq 1, and (below) the next objective.
        let mut stalled_client = small_window_client(d.socket()).await;
        let stalled_all = watch(
            &mut stalled_client,
            WatchRequest {
                objective_id: String::new(),
                from_seq: Some(1),
                kinds: vec![],
            },
        )
        .await;
        let t = Instant::now();
        let id = submit_rpc(&mut client, "with-a-stalled-watcher", d.work_dir(), &script).await;
        let stalled_one = watch(
            &mut stalled_client,
            WatchRequest {
                objective_id: id.clone(),
                from_seq: None,
                kinds: vec![],
            },
        )
        .await;
        let with_stalled = time_to_end(&mut client, &id, t).await;
        let s = Instant::now();
        client
            .daemon_status(DaemonStatusRequest {})
            .await
            .unwrap_or_else(|e| panic!("DaemonStatus: {e}"));
        let status_took = s.elapsed();
        eprintln!(
            "300-progress objective: {baseline:?} without a stalled watcher, {with_stalled:?} with two; DaemonStatus then {status_took:?}"
        );
        assert!(
            with_stalled < Duration::from_secs(10),
            "with a stalled watcher the objective took {with_stalled:?} (baseline {baseline:?})"
        );
        assert!(status_took < Duration::from_secs(2), "DaemonStatus took {status_took:?}");

        // A fresh watcher still gets the full history.
        let fresh: Vec<Event> = collect_events(
            &mut client,
            WatchRequest {
                objective_id: id.clone(),
                from_seq: None,
                kinds: vec![],
            },
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(progress_count(&fresh), 300);
        assert!(fresh.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(fresh.last().is_some_and(is_final));

        // The stalled streams, read at last, hold every event in order (none skipped).
        let got: Vec<Event> = drain(stalled_one, Duration::from_secs(30))
            .await
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(got, fresh, "the stalled objective watcher, read late");
        let mut all = stalled_all;
        let last = fresh.last().map(|e| e.seq).unwrap_or(0);
        let got = global_until(&mut all, last, "the stalled global stream").await;
        for (n, e) in (1..).zip(&got) {
            assert_eq!(e.seq, n, "the global stream skips or repeats nothing");
        }
    });
}

#[test]
fn a_watcher_far_behind_the_broadcast_is_refed_from_the_store() {
    // More events than the live broadcast holds (4096) pass while a watcher does not read.
    const EVENTS: u32 = 5000;
    let d = TestDaemon::start();
    let rt = multi_thread_runtime();
    let script = format!(
        "for i in $(seq 1 {EVENTS}); do echo \"::orch-progress::{{\\\"percent\\\":$((i / 50))}}\"; done"
    );
    rt.block_on(async {
        let mut client = d.client().await;
        let mut slow = small_window_client(d.socket()).await;
        let stalled = watch(
            &mut slow,
            WatchRequest {
                objective_id: String::new(),
                from_seq: None,
                kinds: vec![],
            },
        )
        .await;
        let t = Instant::now();
        let id = submit_rpc(&mut client, "flood", d.work_dir(), &script).await;
        let took = time_to_end(&mut client, &id, t).await;
        eprintln!("{EVENTS} progress events written in {took:?} while a watcher did not read");

        let fresh: Vec<Event> = collect_events(
            &mut client,
            WatchRequest {
                objective_id: id.clone(),
                from_seq: None,
                kinds: vec![],
            },
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(progress_count(&fresh), EVENTS as usize);
        let last = fresh.last().map(|e| e.seq).unwrap_or(0);

        let mut stalled = stalled;
        let got = global_until(&mut stalled, last, "the stalled watcher").await;
        assert_eq!(got, fresh, "the late reader gets every event, in order");
    });
}

// ------------------------------------------------------------------ audit

/// Runs `orchctl ARGS...`; returns its output and its pid.
fn ctl_with_pid(d: &TestDaemon, args: &[&str]) -> (std::process::Output, u32) {
    let mut cmd = d.ctl_command(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn orchctl: {e}"));
    let pid = child.id();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for orchctl: {e}"));
    (out, pid)
}

#[test]
fn audit_records_callers_actions_and_refusals() {
    let d = TestDaemon::start();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();

    let (out, submit_pid) = ctl_with_pid(&d, &["submit", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = crate::support::ulid_first_line(&out);
    let (out, cancel_pid) = ctl_with_pid(&d, &["cancel", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    d.wait_ended(&id, STATE_DEADLINE);
    // Refused: resume of an objective that is not paused, cancel of an unknown id.
    let (out, resume_pid) = ctl_with_pid(&d, &["resume", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let (out, unknown_pid) = ctl_with_pid(&d, &["cancel", unknown]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    // Another objective, for the filter.
    let other = d.submit(&["--", "true"], 0);

    // Entries are written with the engine's next turn: wait until all five are in.
    d.wait_audit("five audit entries", |a| a.len() >= 5);
    let entries = d.audit(&[]);
    assert_eq!(entries.len(), 5, "{entries:?}");
    for e in &entries {
        let mut keys: Vec<&str> = e
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "action",
                "gid",
                "objective_id",
                "pid",
                "result",
                "time",
                "uid"
            ],
            "{e}"
        );
        rfc3339(&e["time"], "audit time");
        assert_eq!(e["uid"], uid, "{e}");
        assert_eq!(e["gid"], gid, "{e}");
        assert!(e["pid"].as_u64().is_some_and(|p| p > 0), "{e}");
    }
    let find = |action: &str, objective: &str| -> &Value {
        entries
            .iter()
            .find(|e| e["action"] == action && e["objective_id"] == objective)
            .unwrap_or_else(|| panic!("no {action} of {objective} in {entries:?}"))
    };
    let submit = find("submit", &id);
    assert_eq!(submit["result"], "ok");
    assert_eq!(
        submit["pid"], submit_pid,
        "the pid is the caller's (orchctl's)"
    );
    let cancel = find("cancel", &id);
    assert_eq!(cancel["result"], "ok");
    assert_eq!(cancel["pid"], cancel_pid);
    let resume = find("resume", &id);
    assert_eq!(resume["pid"], resume_pid);
    let result = resume["result"].as_str().unwrap_or_default();
    assert!(
        result.starts_with("error: "),
        "a refusal is recorded as such: {resume}"
    );
    let refused = find("cancel", unknown);
    assert_eq!(refused["pid"], unknown_pid);
    let result = refused["result"].as_str().unwrap_or_default();
    assert!(result.starts_with("error: "), "{refused}");
    assert_eq!(find("submit", &other)["result"], "ok");

    // Newest first.
    let times: Vec<_> = entries
        .iter()
        .map(|e| rfc3339(&e["time"], "time"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {entries:?}"
    );
    assert_eq!(entries[0]["objective_id"], other.as_str(), "{entries:?}");

    // --objective and --limit.
    let mine = d.audit(&["--objective", &id]);
    let actions: Vec<&str> = mine.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["resume", "cancel", "submit"], "{mine:?}");
    assert!(mine.iter().all(|e| e["objective_id"] == id.as_str()));
    let newest = d.audit(&["--limit", "1"]);
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0], entries[0]);

    // The table view.
    let out = d.ctl(&["audit"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("ACTION") && text.contains("RESULT"), "{text}");
    assert!(text.contains(&cancel_pid.to_string()), "{text}");
    assert!(text.contains("error: "), "{text}");
}

#[test]
fn audit_is_newest_first_even_within_one_millisecond() {
    let d = TestDaemon::start();
    let ids: Vec<String> = (0..500).map(|i| format!("unknown-{i:03}")).collect();
    crate::support::block_on(async {
        let mut c = d.client().await;
        for id in &ids {
            let r = c.cancel(ObjectiveRef { id: id.clone() }).await;
            assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::NotFound));
        }
    });
    d.wait_audit("500 audit entries", |a| a.len() >= ids.len());
    let entries = d.audit(&[]);
    let got: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["objective_id"].as_str())
        .collect();
    let want: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(
        got, want,
        "ListAudit is newest first, in the order the calls were answered"
    );
}

// ------------------------------------------------------------------ progress

#[test]
fn status_and_watch_show_the_last_progress() {
    let d = TestDaemon::start();
    let gate = Gate::new(&d, "progress");
    let script = format!(
        "{}; {}; {}; {}",
        progress(10, "warming up"),
        progress(55, "half way"),
        gate.wait(),
        progress(100, "done")
    );
    let id = submit_script(&d, "progress", &script);
    let s = d.wait_for_state(
        &id,
        |s| s["steps"][0]["progress"]["percent"] == 55.0,
        STATE_DEADLINE,
    );
    let step = &s["steps"][0];
    assert_eq!(step["state"], "running", "{s}");
    assert_eq!(step["progress"]["message"], "half way", "{s}");
    let out = d.ctl(&["status", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("progress 55% half way"),
        "{}",
        stdout(&out)
    );

    gate.open();
    let s = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["steps"][0]["progress"]["percent"], 100.0, "{s}");
    assert_eq!(s["steps"][0]["progress"]["message"], "done", "{s}");

    let events = history(&d, &id, 0);
    let got: Vec<(f64, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "progress")
        .map(|e| {
            (
                e["percent"].as_f64().unwrap_or(-1.0),
                e["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(10.0, "warming up"), (55.0, "half way"), (100.0, "done")]
    );
    assert!(
        events
            .iter()
            .all(|e| e["kind"] != "progress" || e["step_id"] == "main")
    );
    let out = d.ctl(&["watch", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("55% half way"), "{}", stdout(&out));
}

// ------------------------------------------------------------------ the Python client

#[test]
fn python_client_follows_watch_to_the_end() {
    if !require_python_grpc() {
        return;
    }
    let d = TestDaemon::start();
    let gate = Gate::new(&d, "python");
    let script = format!(
        "{}; {}; {}",
        progress(20, "py"),
        gate.wait(),
        progress(100, "end")
    );
    let id = submit_script(&d, "python-watch", &script);
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/orch_client.py");
    let python = |args: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.arg(&client)
            .arg(d.socket())
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        cmd
    };

    // Started while the objective runs: it follows live and stops at the end by itself.
    let mut py = Follower::start(python(&["--watch", &id]));
    py.until("the progress event", Duration::from_secs(60), |l| {
        l.contains(r#""type": "event""#) && l.contains("progress")
    });
    gate.open();
    let (status, lines, err) = py.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{err}\n{}", lines.join("\n"));
    let out = parse_lines(&lines, "orch_client.py");
    assert_eq!(out[0]["type"], "health");
    assert_eq!(
        out.last().map(|v| v["type"].clone()),
        Some("watch_end".into())
    );
    assert_eq!(out.last().map(|v| v["reason"].clone()), Some("end".into()));
    assert_eq!(
        out.last().map(|v| v["state"].clone()),
        Some("OBJECTIVE_STATE_SUCCEEDED".into())
    );
    let events: Vec<&Value> = out
        .iter()
        .filter(|v| v["type"] == "event")
        .map(|v| &v["event"])
        .collect();
    let last = events.last().expect("events");
    assert_eq!(last["kind"], "objective_state", "{last}");
    assert_eq!(
        last["objective_state"]["state"], "OBJECTIVE_STATE_SUCCEEDED",
        "{last}"
    );
    // The same events as orchctl's (64-bit seqs are strings in proto JSON).
    let full = history(&d, &id, 0);
    let py_seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_str().and_then(|s| s.parse().ok()).expect("seq"))
        .collect();
    assert_eq!(py_seqs, seqs(&full));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    let want: Vec<&str> = full.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, want);

    // --from resumes after a given event.
    let k = full.len() / 2;
    let from = seq(&full[k]).to_string();
    let mut cmd = python(&["--watch", &id, "--from", &from]);
    let out = run_deadline(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let tail: Vec<u64> = parse_lines(&lines, "orch_client.py --from")
        .iter()
        .filter(|v| v["type"] == "event")
        .map(|v| {
            v["event"]["seq"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("seq")
        })
        .collect();
    assert_eq!(tail, seqs(&full[k..]));
}

/// Watches opened at any moment around an objective's end, even while its last turn is being
/// written, all end with its final `objective_state` (none is cut short at the last event
/// that was durable when it began).
#[test]
fn every_watch_ends_with_the_final_state_even_when_opened_as_it_ends() {
    const OBJECTIVES: usize = 40;
    const LOOPS: usize = 16;
    let d = TestDaemon::start();
    let rt = multi_thread_runtime();
    rt.block_on(async {
        let mut client = d.client().await;
        let mut short = 0;
        let mut watches = 0;
        for i in 0..OBJECTIVES {
            let id = submit_rpc(&mut client, &format!("end-race-{i}"), d.work_dir(), "true").await;
            let mut loops = Vec::new();
            for j in 0..LOOPS {
                let socket = d.socket().to_path_buf();
                let id = id.clone();
                loops.push(tokio::spawn(async move {
                    // Spread over the objective's short life (tens of milliseconds).
                    tokio::time::sleep(Duration::from_millis(3 * j as u64)).await;
                    let mut c = connect(&socket).await;
                    let mut lists = Vec::new();
                    // Until a watch began after the end was durable (it then replays it).
                    loop {
                        let got: Vec<Event> = collect_events(
                            &mut c,
                            WatchRequest {
                                objective_id: id.clone(),
                                from_seq: None,
                                kinds: vec![],
                            },
                            Duration::from_secs(20),
                        )
                        .await;
                        let done = lists.len() > 200
                            || c.get_objective(GetObjectiveRequest { id: id.clone() })
                                .await
                                .map(|o| o.into_inner().state == ObjectiveState::Succeeded as i32)
                                .unwrap_or(false);
                        lists.push(got);
                        if done {
                            return lists;
                        }
                    }
                }));
            }
            for l in loops {
                for got in l.await.expect("a watch loop panicked") {
                    watches += 1;
                    if !got.last().is_some_and(is_final) {
                        short += 1;
                        eprintln!(
                            "objective {i}: a watch ended after seq {:?} without the final state",
                            got.last().map(|e| e.seq)
                        );
                    }
                }
            }
        }
        assert_eq!(
            short, 0,
            "{short} of {watches} watches ended before the objective's final state"
        );
    });
}
