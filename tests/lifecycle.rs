//! The daemon's life: restarts keep the store, crashes and SIGTERM close running attempts,
//! the socket is private, and only one daemon may own a socket or a state dir.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    STATE_DEADLINE, TestDaemon, attempts, block_on, describe, first_pid, health, kill_if_named,
    kill_running_attempts, process_alive, run_deadline, stderr, temp_dir, wait_process_gone,
};

/// What must survive a restart unchanged: identity, state and every attempt.
fn durable_view(v: &Value) -> Value {
    let steps: Vec<Value> = v["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {v}"))
        .iter()
        .map(|s| serde_json::json!({"id": s["id"], "state": s["state"], "attempts": s["attempts"]}))
        .collect();
    serde_json::json!({
        "id": v["id"], "name": v["name"], "state": v["state"],
        "created_at": v["created_at"], "steps": steps,
    })
}

/// Submits `agent` (a command line of distinctive words) with no retries and waits until it
/// runs; returns the id and the status then.
fn start_agent(d: &TestDaemon, agent: &str) -> (String, Value) {
    let mut args = vec!["--retries", "0", "--"];
    args.extend(agent.split(' '));
    let id = d.submit(&args, 0);
    let running = d.wait_started(&id, STATE_DEADLINE);
    (id, running)
}

/// Waits (after a restart) until the first attempt has an outcome; returns the status.
fn wait_first_attempt_closed(d: &TestDaemon, id: &str) -> Value {
    d.wait_for_state(
        id,
        |v| {
            !v["steps"][0]["attempts"][0]["outcome"]
                .as_str()
                .unwrap_or("")
                .is_empty()
        },
        STATE_DEADLINE,
    )
}

/// Stops the daemon (asserting a clean exit) and kills whatever attempt of `id` it left
/// running (a rescheduled one may run after a restart).
fn stop_leaving_nothing(d: &mut TestDaemon, id: &str, agent: &str) {
    let last = d.status(id);
    let status = d.stop();
    kill_running_attempts(&last, agent);
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    let mut d = TestDaemon::start();
    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
    assert!(
        !d.socket().exists(),
        "socket {} left behind after SIGTERM",
        d.socket().display()
    );
}

#[test]
fn ended_objectives_survive_a_restart() {
    let mut d = TestDaemon::start();
    let ok = d.submit(&["--wait", "--name", "good", "--", "true"], 0);
    let bad = d.submit(
        &[
            "--wait",
            "--name",
            "bad",
            "--retries",
            "0",
            "--",
            "sh",
            "-c",
            "exit 4",
        ],
        1,
    );
    let before_ok = durable_view(&d.status(&ok));
    let before_bad = durable_view(&d.status(&bad));
    assert_eq!(before_ok["state"], "succeeded", "{before_ok}");
    assert_eq!(before_bad["state"], "failed", "{before_bad}");

    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
    assert!(!d.socket().exists(), "socket left behind after SIGTERM");
    d.launch();

    assert_eq!(durable_view(&d.status(&ok)), before_ok);
    assert_eq!(durable_view(&d.status(&bad)), before_bad);

    let list = d.list(&[]);
    let ids: Vec<&str> = list.iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(ids, [bad.as_str(), ok.as_str()], "newest first: {list:?}");
    assert_eq!(list[0]["state"], "failed");
    assert_eq!(list[1]["state"], "succeeded");

    let failed = d.list(&["--state", "failed"]);
    let ids: Vec<&str> = failed.iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(ids, [bad.as_str()], "--state failed: {failed:?}");
    let newest = d.list(&["--limit", "1"]);
    let ids: Vec<&str> = newest.iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(ids, [bad.as_str()], "--limit 1: {newest:?}");
}

#[test]
fn crash_closes_the_running_attempt_as_interrupted() {
    const AGENT: &str = "sleep 30.7";
    let mut d = TestDaemon::start();
    let (id, running) = start_agent(&d, AGENT);
    let pid = first_pid(&running);

    d.kill9();
    // The orphan (if the daemon's death did not take it along) must not outlive the test.
    kill_if_named(pid, AGENT);
    assert!(
        wait_process_gone(pid, Duration::from_secs(5)),
        "could not clean up orphaned agent {pid}"
    );

    d.restart();
    let v = wait_first_attempt_closed(&d, &id);
    let first = &attempts(&v["steps"][0])[0];
    assert_eq!(first["outcome"], "interrupted", "{v}");
    assert_eq!(first["pid"], pid, "{v}");
    crate::support::rfc3339(&first["ended_at"], "ended_at of the interrupted attempt");

    // A rescheduled attempt may be running now: stop the daemon and leave nothing behind.
    stop_leaving_nothing(&mut d, &id, AGENT);
}

#[test]
fn sigterm_stops_running_agents() {
    const AGENT: &str = "sleep 30.8";
    let mut d = TestDaemon::start();
    let (id, running) = start_agent(&d, AGENT);
    let pid = first_pid(&running);
    assert!(process_alive(pid), "agent {pid} is not running: {running}");

    let status = d.stop();
    let gone = wait_process_gone(pid, Duration::from_secs(2));
    kill_if_named(pid, AGENT);
    assert!(status.success(), "orchd exited with {status:?} on SIGTERM");
    assert!(gone, "agent {pid} still runs after orchd exited");
    assert!(!d.socket().exists(), "socket left behind after SIGTERM");

    // The stop is recorded: the attempt was interrupted, not lost.
    d.restart();
    let v = wait_first_attempt_closed(&d, &id);
    assert_eq!(
        v["steps"][0]["attempts"][0]["outcome"], "interrupted",
        "{v}"
    );
    stop_leaving_nothing(&mut d, &id, AGENT);
}

#[test]
fn socket_is_private_to_its_owner() {
    let d = TestDaemon::start();
    let meta = std::fs::metadata(d.socket()).expect("stat the socket");
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        d.socket().display()
    );
    // A root daemon shares it with group `orch` when that exists (the multi-user tests
    // create it, maybe while this daemon starts): root:orch 0660. Anyone else's is 0600.
    let orch = nix::unistd::Uid::effective()
        .is_root()
        .then(|| crate::support::group_gid("orch"))
        .flatten();
    let shared = orch.is_some_and(|gid| std::os::unix::fs::MetadataExt::gid(&meta) == gid);
    let want = if shared { 0o660 } else { 0o600 };
    assert_eq!(
        meta.permissions().mode() & 0o777,
        want,
        "socket mode is {:o}",
        meta.permissions().mode() & 0o777
    );
}

/// Runs a second daemon that is expected to be refused, and checks it said why.
fn assert_refused(d: &TestDaemon, mut cmd: Command, what: &str) {
    let out = run_deadline(&mut cmd, Duration::from_secs(10)).unwrap_or_else(|e| {
        panic!("a second orchd ({what}) did not exit: it should have been refused\n{e}")
    });
    assert!(
        !out.status.success(),
        "a second orchd ({what}) exited 0\n{}",
        describe(&out)
    );
    let msg = stderr(&out).to_lowercase();
    assert!(
        msg.contains("already running") || msg.contains("locked"),
        "a second orchd ({what}) does not say it is already running / locked\n{}",
        describe(&out)
    );
    // The first daemon keeps serving on its socket.
    assert_eq!(
        block_on(health(d.socket())),
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving),
        "the first orchd stopped serving after {what}"
    );
    let list = d.ctl(&["list"]);
    assert!(list.status.success(), "{}", describe(&list));
}

#[test]
fn a_second_daemon_is_refused() {
    let d = TestDaemon::start();
    let other = temp_dir();
    let same = d.orchd_at(d.socket(), d.state_dir());
    assert_refused(&d, same, "same socket and state dir");
    let same_state = d.orchd_at(&other.path().join("other.sock"), d.state_dir());
    assert_refused(&d, same_state, "same state dir, another socket");
    let same_socket = d.orchd_at(d.socket(), &other.path().join("state"));
    assert_refused(&d, same_socket, "same socket, another state dir");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let mut d = TestDaemon::prepare(&[], &[]);
    // A socket file with no listener, as a crashed daemon leaves behind.
    drop(UnixListener::bind(d.socket()).expect("bind a socket to leave behind"));
    assert!(d.socket().exists());
    d.launch();
    let out = d.ctl(&["list"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn daemon_takes_its_paths_from_the_environment() {
    let d = TestDaemon::start_via_env();
    assert!(d.socket().exists());
    let entries = std::fs::read_dir(d.state_dir())
        .unwrap_or_else(|e| panic!("state dir {} not created: {e}", d.state_dir().display()))
        .count();
    assert!(
        entries > 0,
        "state dir {} is empty",
        d.state_dir().display()
    );
    let id = d.submit(&["--wait", "--", "true"], 0);
    assert_eq!(d.status(&id)["state"], "succeeded");
}
