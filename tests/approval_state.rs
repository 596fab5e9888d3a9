//! An objective whose only ready step awaits approval is `awaiting_approval` from the
//! moment its submit is acknowledged (not `pending`), is counted so by `daemon status`,
//! and goes on to succeed once approved.

use crate::support::{TestDaemon, describe};

fn gated_only(d: &TestDaemon) -> String {
    let plan = d.write_file(
        "gate.toml",
        r#"name = "gate"

[[steps]]
id = "deploy"
requires_approval = true
command = ["true"]
"#,
    );
    d.submit(&[plan.to_str().expect("utf-8 path")], 0)
}

#[test]
fn a_gated_step_alone_makes_the_objective_await_approval_at_once() {
    let d = TestDaemon::start();
    let id = gated_only(&d);
    // The submit is acknowledged only once durable, so its state is already stored.
    let v = d.status(&id);
    assert_eq!(v["state"], "awaiting_approval", "{v}");
    assert_eq!(v["steps"][0]["state"], "awaiting_approval", "{v}");
    let listed = d.list(&["--state", "awaiting_approval"]);
    assert!(listed.iter().any(|o| o["id"] == id.as_str()), "{listed:?}");
    let status = d.ctl_json(&["daemon", "status"]);
    assert_eq!(status["counts"]["awaiting_approval"], 1, "{status}");
    assert_eq!(status["counts"]["pending"], 0, "{status}");

    let out = d.ctl(&["approve", &id, "deploy"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_for_state(
        &id,
        |v| v["state"] == "succeeded",
        std::time::Duration::from_secs(30),
    );
    assert_eq!(v["steps"][0]["attempts"][0]["outcome"], "success", "{v}");
}
