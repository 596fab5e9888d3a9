//! Tokens are recorded by kind, and a `max_tokens` budget counts every kind but cache
//! reads: a long cached session is not stopped for re-reading its context.

use std::time::Duration;

use crate::support::TestDaemon;

fn run(d: &TestDaemon, name: &str, report: &str, max_tokens: u64) -> serde_json::Value {
    let line = format!("echo '::orch-usage::{report}'");
    let plan = d.write_file(
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\nmax_tokens = {max_tokens}\n\n[[steps]]\nid = \"talk\"\ncommand = {}\nretry = {{ max_attempts = 1 }}\n",
            toml::Value::from(vec!["sh", "-c", &format!("{line}; sleep 0.3")])
        ),
    );
    let id = d.submit(&[plan.to_str().expect("utf-8 path")], 0);
    d.wait_ended(&id, Duration::from_secs(30))
}

#[test]
fn cache_reads_are_kept_apart_and_not_counted_by_max_tokens() {
    let d = TestDaemon::start();
    let v = run(
        &d,
        "cached",
        r#"{"input_tokens":10,"cache_read_tokens":900000,"cache_write_tokens":20,"output_tokens":30}"#,
        100,
    );
    assert_eq!(v["state"], "succeeded", "{v}");
    let u = &v["usage"];
    assert_eq!(
        (
            &u["input_tokens"],
            &u["cache_read_tokens"],
            &u["cache_write_tokens"],
            &u["output_tokens"]
        ),
        (&10.into(), &900_000.into(), &20.into(), &30.into()),
        "{v}"
    );
    // Cache writes are counted: 10 + 80 + 30 > 100.
    let v = run(
        &d,
        "written",
        r#"{"input_tokens":10,"cache_write_tokens":80,"output_tokens":30}"#,
        100,
    );
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["message"].as_str().is_some_and(
            |m| m.starts_with("objective token budget of 100 exhausted: used 120 tokens")
        ),
        "{v}"
    );
}
