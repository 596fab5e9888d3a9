//! Reports and host pressure: `orchctl stats` (per agent profile, kept across restarts),
//! `orchctl usage --by day|agent|model|objective [--since]`, `orchctl daemon config` (the
//! effective config with sources, secrets redacted), and `[host]` admission (work waits
//! `ready` with the reason in `status`, the host figures in `daemon status`).

use serde_json::Value;

use crate::support::{STATE_DEADLINE, TestDaemon, describe, stderr, stdout};

/// The `shell` profile's step printing a usage line for `model` costing `usd`.
fn usage_step(model: &str, usd: f64) -> String {
    format!(
        "echo '::orch-usage::{{\"input_tokens\":100,\"output_tokens\":20,\"cost_usd\":{usd},\"model\":\"{model}\"}}'"
    )
}

fn row<'a>(rows: &'a Value, key_field: &str, key: &str) -> &'a Value {
    rows.as_array()
        .and_then(|r| r.iter().find(|x| x[key_field] == key))
        .unwrap_or_else(|| panic!("no row with {key_field} = {key} in {rows}"))
}

#[test]
fn stats_count_runs_successes_retries_and_cost_per_success_across_a_restart() {
    let mut d = TestDaemon::start();
    let failing = d.submit(&["--retries", "1", "--", "sh", "-c", "exit 3"], 0);
    let ok1 = d.submit(&["--", "true"], 0);
    let ok2 = d.submit(&["--", "true"], 0);
    let agent = d.submit(&["--agent", "shell", "--prompt", &usage_step("m1", 0.5)], 0);
    for id in [&failing, &ok1, &ok2, &agent] {
        d.wait_ended(id, STATE_DEADLINE);
    }
    let check = |stats: &Value| {
        let cmd = row(stats, "agent", "command");
        assert_eq!(cmd["runs"], 4, "{cmd}");
        assert_eq!(cmd["successes"], 2, "{cmd}");
        assert_eq!(cmd["retries"], 1, "{cmd}");
        assert_eq!(cmd["success_rate"], 0.5, "{cmd}");
        assert_eq!(cmd["cost_per_success_usd"], 0.0, "{cmd}");
        let shell = row(stats, "agent", "shell");
        assert_eq!(shell["runs"], 1, "{shell}");
        assert_eq!(shell["successes"], 1, "{shell}");
        assert_eq!(shell["cost_per_success_usd"], 0.5, "{shell}");
        assert_eq!(shell["usage"]["output_tokens"], 20, "{shell}");
        let (p50, p95) = (
            shell["duration_p50_ms"].as_u64().unwrap_or(u64::MAX),
            shell["duration_p95_ms"].as_u64().unwrap_or(0),
        );
        assert!(p50 <= p95 && p95 < 60_000, "{shell}");
    };
    let before = d.ctl_json(&["stats"]);
    check(&before);
    // Kept in the store: the same after a restart, without re-reading the history.
    d.restart();
    let after = d.ctl_json(&["stats"]);
    assert_eq!(before, after, "stats changed across a restart");
    let table = stdout(&d.ctl_exits(&["stats"], 0, "stats table"));
    for word in [
        "AGENT",
        "P50",
        "P95",
        "COST/SUCCESS",
        "command",
        "shell",
        "50%",
    ] {
        assert!(table.contains(word), "{word} missing:\n{table}");
    }
}

#[test]
fn usage_breaks_down_by_model_objective_agent_and_day() {
    let d = TestDaemon::start();
    let a = d.submit(
        &[
            "--name",
            "first",
            "--agent",
            "shell",
            "--prompt",
            &usage_step("m1", 0.25),
        ],
        0,
    );
    let b = d.submit(
        &[
            "--name",
            "second",
            "--agent",
            "shell",
            "--prompt",
            &usage_step("m2", 1.0),
        ],
        0,
    );
    d.wait_ended(&a, STATE_DEADLINE);
    d.wait_ended(&b, STATE_DEADLINE);

    let by_model = d.ctl_json(&["usage", "--by", "model"]);
    assert_eq!(
        row(&by_model["rows"], "model", "m1")["usage"]["cost_usd"],
        0.25
    );
    assert_eq!(
        row(&by_model["rows"], "model", "m2")["usage"]["cost_usd"],
        1.0
    );
    assert_eq!(by_model["total"]["cost_usd"], 1.25, "{by_model}");

    let by_objective = d.ctl_json(&["usage", "--by", "objective"]);
    let first = row(&by_objective["rows"], "objective", &a);
    assert_eq!(first["name"], "first", "{first}");
    assert_eq!(first["usage"]["input_tokens"], 100, "{first}");

    let by_agent = d.ctl_json(&["usage", "--by", "agent", "--since", "1h"]);
    assert_eq!(
        row(&by_agent["rows"], "agent", "shell")["usage"]["cost_usd"],
        1.25
    );

    let by_day = d.ctl_json(&["usage", "--by", "day"]);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let rows = by_day["rows"].as_array().cloned().unwrap_or_default();
    // Just after midnight the two reports may straddle it.
    assert!(
        !rows.is_empty() && rows.len() <= 2 && rows.iter().any(|r| r["day"] == today.as_str()),
        "{by_day}"
    );
    assert_eq!(by_day["total"]["cost_usd"], 1.25, "{by_day}");

    // A period that ends before the usage: nothing.
    let none = d.ctl_json(&["usage", "--by", "model", "--since", "1ms"]);
    assert_eq!(none["rows"], Value::Array(vec![]), "{none}");

    let table = stdout(&d.ctl_exits(&["usage", "--by", "objective"], 0, "table"));
    assert!(
        table.contains("OBJECTIVE") && table.contains("second"),
        "{table}"
    );
    assert!(
        table.contains("total") && table.contains("$1.25"),
        "{table}"
    );

    // Bad input is refused before anything is asked.
    let out = d.ctl_exits(&["usage", "--by", "week"], 2, "unknown breakdown");
    assert!(stderr(&out).contains("week"), "{}", describe(&out));
    d.ctl_exits(&["usage", "--since", "1d"], 2, "--since without --by");
    d.ctl_exits(
        &["usage", "--by", "day", "--since", "soon"],
        2,
        "bad duration",
    );
}

#[test]
fn daemon_config_shows_values_with_sources_and_redacts_secrets() {
    let config = r#"
retention = "7d"

[agents.helper]
command = ["bash", "-c", "{prompt}"]
usage = "orch-lines"
env = { ANTHROPIC_API_KEY = "sk-very-secret", RUST_LOG = "debug" }
"#;
    let mut d = TestDaemon::prepare_with_config(config, &["--max-parallel", "3"]);
    d.launch();
    let c = d.ctl_json(&["daemon", "config"]);
    assert_eq!(c["config_file_exists"], true, "{c}");
    let entries = &c["entries"];
    let entry = |key: &str| row(entries, "key", key).clone();
    assert_eq!(entry("retention")["value"], "7days");
    assert_eq!(entry("retention")["source"], "file");
    assert_eq!(entry("max_parallel")["value"], 3);
    assert_eq!(entry("max_parallel")["source"], "flag --max-parallel");
    assert_eq!(entry("grace_period")["source"], "default");
    assert_eq!(entry("agents.helper.env.RUST_LOG")["value"], "debug");
    assert_eq!(
        entry("agents.helper.env.ANTHROPIC_API_KEY")["value"],
        "<redacted>"
    );
    assert_eq!(entry("agents.shell.command")["source"], "default");
    for args in [
        &["daemon", "config"][..],
        &["daemon", "config", "-o", "json"][..],
    ] {
        let text = stdout(&d.ctl_exits(args, 0, "daemon config"));
        assert!(!text.contains("sk-very-secret"), "a secret leaked:\n{text}");
    }
    let table = stdout(&d.ctl_exits(&["daemon", "config"], 0, "table"));
    assert!(table.contains("KEY") && table.contains("SOURCE"), "{table}");
    assert!(table.contains("flag --max-parallel"), "{table}");

    // Values from the environment name their variable.
    let by_env = TestDaemon::start_via_env();
    let c = by_env.ctl_json(&["daemon", "config"]);
    assert_eq!(
        row(&c["entries"], "key", "socket")["source"],
        "env ORCH_SOCKET",
        "{c}"
    );
    assert_eq!(
        row(&c["entries"], "key", "state_dir")["source"],
        "env ORCH_STATE_DIR"
    );
}

#[test]
fn host_pressure_holds_ready_work_with_the_reason_until_it_eases() {
    // No host has 4096 TiB available: the floor holds every new attempt back.
    let mut d = TestDaemon::prepare_with_config("[host]\nmin_available_memory = \"4096T\"\n", &[]);
    d.launch();
    let id = d.submit(&["--", "true"], 0);
    let status = d.status(&id);
    let step = &status["steps"][0];
    assert_eq!(step["state"], "ready", "{status}");
    let message = step["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("available memory") && message.contains("min_available_memory"),
        "{status}"
    );
    assert!(
        step["attempts"].as_array().is_some_and(|a| a.is_empty()),
        "{status}"
    );
    let text = stdout(&d.ctl_exits(&["status", &id], 0, "status table"));
    assert!(text.contains("held back"), "{text}");

    let daemon = d.ctl_json(&["daemon", "status"]);
    let host = &daemon["host"];
    assert!(
        host["total_memory_bytes"].as_u64().is_some_and(|n| n > 0),
        "{daemon}"
    );
    assert!(
        host["available_memory_bytes"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{daemon}"
    );
    assert!(host["load_1m"].as_f64().is_some(), "{daemon}");
    assert_eq!(
        host["min_available_memory_bytes"],
        4096u64 << 40,
        "{daemon}"
    );
    assert!(
        host["held"]
            .as_str()
            .is_some_and(|h| h.contains("held back")),
        "{daemon}"
    );
    let table = stdout(&d.ctl_exits(&["daemon", "status"], 0, "daemon status"));
    assert!(
        table.contains("Host") && table.contains("memory floor"),
        "{table}"
    );
    assert!(table.contains("Held"), "{table}");

    // A bad ceiling is refused by a reload, naming the key; the running config stays.
    let config = d.dir().join("orchd.toml");
    std::fs::write(&config, "[host]\nmax_load = -1\n").expect("write the config");
    let out = d.ctl_exits(&["daemon", "reload"], 1, "bad max_load");
    assert!(stderr(&out).contains("host.max_load"), "{}", describe(&out));
    assert_eq!(d.status(&id)["steps"][0]["state"], "ready");

    // The floor lowered: the reload is a scheduling event, and the work runs.
    std::fs::write(
        &config,
        "[host]\nmin_available_memory = \"1M\"\nmax_load = 100000\n",
    )
    .expect("write the config");
    d.ctl_exits(&["daemon", "reload"], 0, "reload");
    let done = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(done["state"], "succeeded", "{done}");
    let daemon = d.ctl_json(&["daemon", "status"]);
    assert_eq!(daemon["host"]["held"], Value::Null, "{daemon}");
}

#[test]
fn stats_count_an_attempt_cut_by_a_crash_once_as_stopped() {
    let mut d = TestDaemon::start();
    let gate = crate::support::Gate::new(&d, "crash");
    let id = d.submit(&["--", "sh", "-c", &gate.wait()], 0);
    d.wait_started(&id, STATE_DEADLINE);
    d.kill9();
    d.launch();
    gate.open();
    let done = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(done["state"], "succeeded", "{done}");
    let stats = d.ctl_json(&["stats"]);
    let cmd = row(&stats, "agent", "command");
    // The interrupted attempt is counted once, apart from the runs; its re-run is a retry.
    assert_eq!(
        (
            &cmd["runs"],
            &cmd["successes"],
            &cmd["cancelled"],
            &cmd["retries"]
        ),
        (
            &Value::from(1),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1)
        ),
        "{cmd}"
    );
}

#[test]
fn stats_are_built_once_from_a_store_written_before_them() {
    let mut d = TestDaemon::prepare(&[], &[]);
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1/store");
    let store = d.state_dir().join("store");
    std::fs::create_dir_all(&store).expect("mkdir the store");
    for e in std::fs::read_dir(&fixture).expect("read the fixture") {
        let e = e.expect("fixture entry");
        std::fs::copy(e.path(), store.join(e.file_name())).expect("copy the fixture");
    }
    d.launch();
    // What the stored attempts say, counted here from their records.
    let mut expected = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for o in d.list(&[]) {
        let id = o["id"].as_str().unwrap_or_default().to_string();
        for step in d.status(&id)["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            for a in step["attempts"].as_array().cloned().unwrap_or_default() {
                let agent = match a["agent"].as_str() {
                    Some(name) if !name.is_empty() => name.to_string(),
                    _ => "command".to_string(),
                };
                let e = expected.entry(agent).or_default();
                e.0 += 1;
                e.1 += u64::from(a["outcome"] == "success");
            }
        }
    }
    assert!(!expected.is_empty(), "the fixture holds no attempts");
    let check = |stats: &Value| {
        for (agent, (runs, successes)) in &expected {
            let r = row(stats, "agent", agent);
            assert_eq!(
                (&r["runs"], &r["successes"]),
                (&Value::from(*runs), &Value::from(*successes)),
                "{agent}: {r}"
            );
        }
    };
    let first = d.ctl_json(&["stats"]);
    check(&first);
    // Built once: a restart reads them back instead of counting the history again.
    d.restart();
    assert_eq!(d.ctl_json(&["stats"]), first);
    assert!(
        d.log_text().matches("agent statistics built").count() == 1,
        "{}",
        d.log_text()
    );
}

#[test]
fn usage_by_shows_a_user_their_own_and_root_everyones() {
    use std::os::unix::fs::PermissionsExt;
    if !crate::support::require_root("to run a shared root daemon and throwaway users") {
        return;
    }
    crate::support::orch_group();
    let mut d = TestDaemon::prepare_with_config("", &[]);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("make the temp dir traversable");
    d.launch();
    let (a, b) = (
        crate::support::TestUser::create(true),
        crate::support::TestUser::create(true),
    );
    for (u, model, usd) in [(&a, "ma", 0.25), (&b, "mb", 1.0)] {
        let script = usage_step(model, usd);
        let out = u.orchctl(&d, &["submit", "--wait", "--", "sh", "-c", &script]);
        assert!(
            out.status.success(),
            "submit as {}: {}",
            u.name,
            describe(&out)
        );
    }
    let out = a.orchctl(&d, &["usage", "--by", "model", "-o", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let models: Vec<&Value> = mine["rows"]
        .as_array()
        .map(|r| r.iter().map(|x| &x["model"]).collect())
        .unwrap_or_default();
    assert_eq!(models, [&Value::from("ma")], "{mine}");
    assert_eq!(mine["total"]["cost_usd"], 0.25, "{mine}");
    let all = d.ctl_json(&["usage", "--by", "model"]);
    assert_eq!(all["total"]["cost_usd"], 1.25, "{all}");
}
