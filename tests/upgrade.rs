//! Stores written by earlier builds open in this one: `tests/fixtures/store-v1` was
//! written by orch 0.1.0 (schema 1) running the README's quick start as an unprivileged
//! user; every later schema must keep reading it (migrating it on start).

use std::path::Path;

use crate::support::TestDaemon;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("fixture entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy fixture file");
        }
    }
}

#[test]
fn a_schema_1_store_opens_with_its_history_intact() {
    let mut d = TestDaemon::prepare(&[], &[]);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1/store");
    copy_dir(&fixture, &d.state_dir().join("store"));
    d.launch();

    let list = d.list(&[]);
    let names: Vec<(&str, &str)> = list
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap_or(""),
                o["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("hello", "succeeded"),
            ("bash -c echo working; sleep 1; echo done", "succeeded"),
            ("echo hi", "succeeded"),
        ],
        "newest first, as stored"
    );
    let hello = list[0]["id"].as_str().expect("id").to_string();
    let v = d.status(&hello);
    let count = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["id"] == "count")
        .expect("step count")
        .clone();
    assert_eq!(count["checkpoint"], serde_json::json!({"done": 3}), "{v}");
    assert_eq!(count["attempts"][0]["outcome"], "success");

    // The audit trail and the event log came along, and new events continue after them.
    let audit = d.ctl_json(&["audit"]);
    let audit = audit.as_array().expect("audit");
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|e| e["uid"] == 65534 && e["action"] == "submit")
    );
    let old = d.events(&hello);
    assert_eq!(
        old.first().map(|e| e["seq"].clone()),
        Some(serde_json::json!(17))
    );
    assert_eq!(
        old.last().map(|e| e["seq"].clone()),
        Some(serde_json::json!(38))
    );
    let id = d.submit(&["--wait", "--", "true"], 0);
    let new = d.events(&id);
    assert!(
        new.iter().all(|e| e["seq"].as_u64().unwrap_or(0) > 38),
        "{new:?}"
    );
    // A new audit entry lists first.
    let audit = d.ctl_json(&["audit", "--limit", "1"]);
    assert_eq!(audit[0]["objective_id"], serde_json::json!(id));
}
