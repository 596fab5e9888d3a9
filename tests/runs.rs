//! Running objectives: outcomes of one-step commands, the recorded attempts, and step order.

use serde_json::json;

use crate::support::{STATE_DEADLINE, TestDaemon, array, attempts, rfc3339, step};

#[test]
fn echo_succeeds_and_is_recorded() {
    let d = TestDaemon::start();
    let id = d.submit(&["--wait", "--", "echo", "hi"], 0);

    // `--wait` returned only once the objective ended: no polling needed.
    let v = d.status(&id);
    assert_eq!(v["id"], id.as_str(), "{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    rfc3339(&v["created_at"], "created_at");
    rfc3339(&v["updated_at"], "updated_at");
    let steps = array(&v["steps"], "steps");
    assert_eq!(steps.len(), 1, "{v}");
    assert_eq!(steps[0]["state"], "succeeded", "{v}");
    assert_eq!(steps[0]["command"], json!(["echo", "hi"]), "{v}");
    let a = attempts(&steps[0]);
    assert_eq!(a.len(), 1, "{v}");
    let a = &a[0];
    assert_eq!(a["number"], 1, "{a}");
    assert_eq!(a["outcome"], "success", "{a}");
    assert_eq!(a["exit_code"], 0, "{a}");
    assert!(a["signal"].is_null(), "signal should be null: {a}");
    assert!(
        a["pid"].as_u64().is_some_and(|p| p > 0),
        "pid should be a positive number: {a}"
    );
    let started = rfc3339(&a["started_at"], "started_at");
    let ended = rfc3339(&a["ended_at"], "ended_at");
    assert!(ended >= started, "ended_at before started_at: {a}");

    let list = d.list(&[]);
    let entry = list
        .iter()
        .find(|o| o["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} missing from list: {list:?}"));
    assert_eq!(entry["state"], "succeeded", "{entry}");
    assert!(entry["name"].is_string(), "{entry}");
    rfc3339(&entry["created_at"], "list created_at");
}

#[test]
fn submit_json_prints_the_id_as_an_object() {
    let d = TestDaemon::start();
    let v = d.ctl_json(&["submit", "--", "true"]);
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("submit -o json has no string id: {v}"));
    assert!(ulid::Ulid::from_string(id).is_ok(), "`{id}` is not a ULID");
    let done = d.wait_ended(id, STATE_DEADLINE);
    assert_eq!(done["state"], "succeeded", "{done}");
}

#[test]
fn exit_failure_is_recorded_with_its_code() {
    let d = TestDaemon::start();
    let id = d.submit(&["--wait", "--retries", "0", "--", "sh", "-c", "exit 3"], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    let s = &v["steps"][0];
    assert_eq!(s["state"], "failed", "{v}");
    let a = attempts(s);
    assert_eq!(a.len(), 1, "--retries 0 allows exactly one attempt: {v}");
    assert_eq!(a[0]["outcome"], "exit_failure", "{v}");
    assert_eq!(a[0]["exit_code"], 3, "{v}");
    assert!(a[0]["signal"].is_null(), "{v}");
    rfc3339(&a[0]["ended_at"], "ended_at");
}

#[test]
fn spawn_error_fails_the_objective_and_names_the_program() {
    let d = TestDaemon::start();
    // No retry flag: spawn_error is never retried by default, so one attempt and a quick end.
    let id = d.submit(&["--wait", "--", "/nonexistent/prog"], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    let a = attempts(&v["steps"][0]);
    assert_eq!(
        a.len(),
        1,
        "spawn_error must not be retried by default: {v}"
    );
    assert_eq!(a[0]["outcome"], "spawn_error", "{v}");
    assert!(a[0]["exit_code"].is_null(), "{v}");
    assert!(a[0]["signal"].is_null(), "{v}");

    // The human message (not the command field) says which program could not start.
    let o = d.get_objective(&id);
    let messages = [
        o.message.as_str(),
        o.steps[0].message.as_str(),
        o.steps[0].attempts[0].message.as_str(),
    ];
    assert!(
        messages.iter().any(|m| m.contains("/nonexistent/prog")),
        "no message names the program: {messages:?}"
    );
}

#[test]
fn signaled_child_records_the_signal() {
    let d = TestDaemon::start();
    let id = d.submit(
        &["--wait", "--retries", "0", "--", "sh", "-c", "kill -9 $$"],
        1,
    );
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 1, "{v}");
    assert_eq!(a[0]["outcome"], "signaled", "{v}");
    assert_eq!(a[0]["signal"], 9, "{v}");
    assert!(a[0]["exit_code"].is_null(), "{v}");
}

#[test]
fn steps_run_in_dependency_order() {
    let d = TestDaemon::start();
    let out = d.dir().join("order.txt");
    let out = out.display();
    // Listed out of order on purpose: only `needs` can put them in order. `first` dawdles so a
    // dependent started too early would write before it.
    let plan = d.write_plan(
        "ordered.toml",
        &format!(
            r#"name = "ordered"

[[steps]]
id = "third"
needs = ["second"]
command = ["sh", "-c", "echo third >> '{out}'"]

[[steps]]
id = "first"
command = ["sh", "-c", "sleep 0.2; echo first >> '{out}'"]

[[steps]]
id = "second"
needs = ["first"]
command = ["sh", "-c", "echo second >> '{out}'"]
"#
        ),
    );
    let id = d.submit(&["--wait", &plan], 0);

    let written = std::fs::read_to_string(d.dir().join("order.txt")).expect("read order.txt");
    assert_eq!(written, "first\nsecond\nthird\n");

    let v = d.status(&id);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["name"], "ordered", "{v}");
    assert_eq!(step(&v, "third")["needs"], json!(["second"]), "{v}");
    assert_eq!(step(&v, "first")["needs"], json!([]), "{v}");
    for (before, after) in [("first", "second"), ("second", "third")] {
        let b = &attempts(step(&v, before))[0];
        let a = &attempts(step(&v, after))[0];
        let b_end = rfc3339(&b["ended_at"], "ended_at");
        let a_start = rfc3339(&a["started_at"], "started_at");
        assert!(
            a_start >= b_end,
            "{after} started at {a_start} before {before} ended at {b_end}"
        );
    }
}
