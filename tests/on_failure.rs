//! A retry policy's `on_failure` table overrides, class by class, what follows an agent's
//! failure: the defaults (max turns and refused credentials not retried, other errors
//! retried) and each override, from a plan and from the daemon's config; a bad entry is
//! refused naming the key.
//!
//! The agent is a script that prints the `result` line Claude Code prints when it runs out
//! of turns (`is_error: true`, `subtype: error_max_turns`) and exits 1, through orch's real
//! `claude-stream-json` reader. The real CLI's own max-turns run is in `real_agents.rs`.

use std::fs;

use serde_json::Value;

use crate::support::{TestDaemon, attempts, describe, stderr, step};

const MAX_TURNS_RESULT: &str = r#"{"type":"result","subtype":"error_max_turns","is_error":true,"duration_ms":900,"num_turns":2,"session_id":"5a1c2b3d-0000-4000-8000-00000000a001","total_cost_usd":0.001,"usage":{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":5},"errors":["Reached maximum number of turns (1)"]}"#;

/// A daemon with an agent `turns` that counts its runs in `runs` (in the work dir) and ends
/// each with a max-turns error result, plus `daemon_config` appended to its config.
fn daemon(daemon_config: &str) -> TestDaemon {
    let mut d = TestDaemon::prepare_with_config("", &[]);
    let result = d.write_file("result.json", &format!("{MAX_TURNS_RESULT}\n"));
    let script = d.write_script(
        "turns.sh",
        &format!(
            "#!/bin/sh\necho run >> runs\ncat '{}'\nexit 1\n",
            result.display()
        ),
    );
    d.write_file(
        "orchd.toml",
        &format!(
            "[agents.turns]\ncommand = [\"{}\", \"{{prompt}}\"]\nusage = \"claude-stream-json\"\n\n{daemon_config}",
            script.display()
        ),
    );
    d.launch();
    d
}

fn runs(d: &TestDaemon) -> usize {
    fs::read_to_string(d.work_dir().join("runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn plan(d: &TestDaemon, retry: &str) -> String {
    d.write_plan(
        "plan.toml",
        &format!(
            "name = \"turns\"\n\n[[steps]]\nid = \"work\"\nagent = \"turns\"\nprompt = \"go\"\n\
             retry = {{ max_attempts = 3, initial_backoff = \"10ms\"{retry} }}\n"
        ),
    )
}

fn message(v: &Value) -> String {
    step(v, "work")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn max_turns_is_not_retried_by_default() {
    let d = daemon("");
    let p = plan(&d, "");
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(runs(&d), 1, "a max-turns failure paid for once only");
    assert!(message(&v).contains("not retried"), "{v}");
}

#[test]
fn a_plan_can_retry_max_turns() {
    let d = daemon("");
    let p = plan(&d, ", on_failure = { max_turns = \"retry\" }");
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(runs(&d), 3, "every attempt ran: {v}");
    assert_eq!(attempts(step(&v, "work")).len(), 3, "{v}");
    // The resolved policy shows the override beside the defaults.
    let dry = d.ctl_json(&["submit", "--dry-run", &p]);
    let on = &dry["steps"][0]["retry"]["on_failure"];
    assert_eq!(on["max_turns"], "retry", "{dry}");
    assert_eq!(on["auth"], "fallback", "{dry}");
    assert_eq!(on["rate_limited"], "wait", "{dry}");
}

#[test]
fn the_daemon_config_sets_the_default_and_a_plan_still_overrides_it() {
    let d = daemon("[defaults.retry.on_failure]\nmax_turns = \"retry\"\n");
    let p = plan(&d, "");
    d.submit(&["--wait", &p], 1);
    assert_eq!(runs(&d), 3, "the daemon's default retries max turns");

    let p = d.write_plan(
        "fail.toml",
        "name = \"fail\"\n\n[[steps]]\nid = \"work\"\nagent = \"turns\"\nprompt = \"go\"\n\
         retry = { max_attempts = 3, initial_backoff = \"10ms\", on_failure = { max_turns = \"fail\" } }\n",
    );
    let id = d.submit(&["--wait", &p], 1);
    assert_eq!(
        runs(&d),
        4,
        "the plan's `fail` ran it once more, not three times"
    );
    let v = d.status(&id);
    assert!(
        message(&v).contains("retry.on_failure.max_turns is \"fail\""),
        "the message names the setting: {v}"
    );
}

#[test]
fn an_error_class_set_to_fail_is_not_retried_even_with_attempts_left() {
    let d = daemon("");
    let p = d.write_plan(
        "plain.toml",
        "name = \"plain\"\n\n[[steps]]\nid = \"work\"\ncommand = [\"sh\", \"-c\", \"echo run >> runs; exit 3\"]\n\
         retry = { max_attempts = 3, initial_backoff = \"10ms\", on_failure = { error = \"fail\" } }\n",
    );
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    // A plain command reports no class: `on_failure` leaves it to the policy's retries.
    assert_eq!(runs(&d), 3, "{v}");
}

#[test]
fn bad_on_failure_entries_are_refused_naming_the_key() {
    let d = daemon("");
    for (entry, want) in [
        (
            "on_failure = { max_turn = \"retry\" }",
            "unknown failure class `max_turn`",
        ),
        ("on_failure = { auth = \"wait\" }", "only rate_limited"),
        (
            "on_failure = { error = \"again\" }",
            "unknown action `again`",
        ),
    ] {
        let p = plan(&d, &format!(", {entry}"));
        let out = d.ctl(&["submit", &p]);
        assert_eq!(out.status.code(), Some(2), "{entry}\n{}", describe(&out));
        let err = stderr(&out);
        assert!(
            err.contains("on_failure") && err.contains(want),
            "{entry}: {err}"
        );
    }
    assert_eq!(d.list(&[]).len(), 0, "nothing was stored");
    assert_eq!(runs(&d), 0);
}

#[test]
fn a_bad_on_failure_entry_in_the_config_stops_orchd_naming_it() {
    let d = TestDaemon::prepare(&[], &[]);
    let path = d.write_file("bad.toml", "[defaults.retry.on_failure]\nauth = \"wait\"\n");
    let out = d.print_config(&path);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("defaults.retry.on_failure.auth") && err.contains("only rate_limited"),
        "{err}"
    );
}
