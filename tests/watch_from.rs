//! `Watch` from seq 0, against the real daemon: `orchctl watch --from 0` without an id
//! replays the whole history, while a gRPC `Watch` that leaves `from_seq` unset stays live
//! only (what clients built before `from_seq` became `optional` get).

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use orch_proto::v1::orchestrator_client::OrchestratorClient;
use orch_proto::v1::{Event, ObjectiveSpec, StepSpec, SubmitRequest, WatchRequest};
use serde_json::Value;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::support::{TestDaemon, describe};

/// How long any one stream may take to deliver what a test waits for.
const DEADLINE: Duration = Duration::from_secs(30);

/// Submits `-- true`, waits for it to succeed and returns its id and its whole history
/// (`orchctl watch ID -o json`, which ends when the objective ends).
fn finished_objective(d: &TestDaemon) -> (String, Vec<Value>) {
    let id = d.submit(&["--wait", "--", "true"], 0);
    let out = d.ctl(&["watch", &id, "-o", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    (id, json_lines(&out.stdout))
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("event without a numeric seq: {e}"))
        })
        .collect()
}

/// The first `n` lines `orchctl ARGS...` prints (within [`DEADLINE`]), as JSON; then stops
/// it, since a watch without an id never ends by itself.
fn first_json_lines(d: &TestDaemon, args: &[&str], n: usize) -> Vec<Value> {
    let mut child = d
        .ctl_command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn orchctl {args:?}: {e}"));
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + DEADLINE;
    let mut lines = Vec::new();
    while lines.len() < n {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut err);
                }
                panic!(
                    "orchctl {args:?}: {} of {n} lines ({e:?}):\n{}\nstderr:\n{err}",
                    lines.len(),
                    lines.join("\n")
                );
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    json_lines(lines.join("\n").as_bytes())
}

type Client = OrchestratorClient<Channel>;

/// The next event of `stream`, within [`DEADLINE`].
async fn next_event(stream: &mut Streaming<Event>) -> Event {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => panic!("the Watch stream ended"),
        Ok(Err(status)) => panic!("the Watch stream failed: {status}"),
        Err(_) => panic!("no event within {DEADLINE:?}"),
    }
}

async fn open_watch(client: &mut Client, request: WatchRequest) -> Streaming<Event> {
    client
        .watch(request)
        .await
        .unwrap_or_else(|e| panic!("Watch: {e}"))
        .into_inner()
}

#[test]
fn watch_from_zero_without_an_id_replays_the_whole_history() {
    let d = TestDaemon::start();
    let (id, history) = finished_objective(&d);
    let last = *seqs(&history).last().expect("the objective has events");
    // The only objective: its history is the daemon's whole history.
    assert_eq!(seqs(&history), (1..=last).collect::<Vec<_>>());

    let all = first_json_lines(&d, &["watch", "--from", "0", "-o", "json"], history.len());
    assert_eq!(seqs(&all), (1..=last).collect::<Vec<_>>());
    assert_eq!(all[0]["kind"], "objective_submitted");
    assert!(
        all.iter().all(|e| e["objective_id"] == id.as_str()),
        "{all:?}"
    );
    let kinds = |events: &[Value]| -> Vec<String> {
        events.iter().map(|e| e["kind"].to_string()).collect()
    };
    assert_eq!(kinds(&all), kinds(&history));
}

#[tokio::test]
async fn grpc_watch_without_from_seq_is_live_only_and_from_zero_replays() {
    let d = TestDaemon::start();
    let (first, history) = finished_objective(&d);
    let last = *seqs(&history).last().expect("the objective has events");
    let mut client = d.client().await;

    // Set to 0: history from the very first event.
    let mut replay = open_watch(
        &mut client,
        WatchRequest {
            from_seq: Some(0),
            ..Default::default()
        },
    )
    .await;
    let e = next_event(&mut replay).await;
    assert_eq!((e.seq, e.kind.as_str()), (1, "objective_submitted"));
    assert_eq!(e.objective_id, first);

    // Unset: subscribed once the call returns, and only what comes after it.
    let mut live = open_watch(&mut client, WatchRequest::default()).await;
    let spec = ObjectiveSpec {
        name: "after".into(),
        steps: vec![StepSpec {
            id: "main".into(),
            command: vec!["true".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let second = client
        .submit(SubmitRequest {
            spec: Some(spec),
            workdir: d.work_dir().display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("Submit: {e}"))
        .into_inner()
        .id;
    let e = next_event(&mut live).await;
    assert!(e.seq > last, "a live-only watch sent old event {e:?}");
    assert_eq!(
        (e.objective_id.as_str(), e.kind.as_str()),
        (second.as_str(), "objective_submitted")
    );
}
