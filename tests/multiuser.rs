//! One root daemon shared by several users (group `orch`), tried as an attacker would:
//! one user's spend must not stop another user's work, and one user's many objectives at
//! the highest priority must not keep another user's work waiting. Each test makes
//! throwaway users; it needs root (skipped loudly without, a failure under
//! `ORCH_TEST_ROOT=1`, as in CI).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{TestDaemon, TestUser, describe, first_line, require_root};

const DEADLINE: Duration = Duration::from_secs(30);

/// A root daemon with `config`, whose socket the members of group `orch` can reach (the
/// daemon gives its socket to the group; the temp dir above it is made traversable).
fn shared_daemon(config: &str) -> Option<TestDaemon> {
    if !require_root("to run a shared root daemon and throwaway users") {
        return None;
    }
    crate::support::orch_group();
    let mut d = TestDaemon::prepare_with_config(config, &[]);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("make the temp dir traversable");
    d.launch();
    Some(d)
}

/// A user in group `orch` with a directory for gate files it can read.
fn member() -> TestUser {
    TestUser::create(true)
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", describe(out));
}

/// A gate file in the user's home: agents wait for it (as that user).
fn gate(u: &TestUser, name: &str) -> PathBuf {
    u.home.join(format!("gate-{name}"))
}

fn open(gate: &Path) {
    std::fs::write(gate, b"go").expect("open the gate");
}

/// `orchctl submit [ARGS...] -- sh -c SCRIPT` as `u`; returns the objective id (with
/// `--wait`, whether it succeeded or not).
fn submit(u: &TestUser, d: &TestDaemon, args: &[&str], script: &str) -> String {
    let mut full = vec!["submit", "--retries", "0"];
    full.extend_from_slice(args);
    full.extend(["--", "sh", "-c", script]);
    let out = u.orchctl(d, &full);
    if !args.contains(&"--wait") || out.status.code() != Some(1) {
        ok(&out, &format!("submit as {}", u.name));
    }
    first_line(&out)
}

fn waits_for(g: &Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.02; done", g.display())
}

fn usage_of(u: &TestUser, d: &TestDaemon) -> Value {
    let out = u.orchctl(d, &["usage", "-o", "json"]);
    ok(&out, "usage");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("usage JSON: {e}"))
}

#[test]
fn one_users_spend_does_not_stop_another_users_work() {
    let Some(d) = shared_daemon("[budget]\ndaily_usd = 1.0\n") else {
        return;
    };
    let (victim, attacker) = (member(), member());
    let g = gate(&victim, "run");
    let running = submit(&victim, &d, &[], &waits_for(&g));
    d.wait_state(&running, &["running"], DEADLINE);

    // The attack: an agent that reports a million dollars.
    let spend = submit(
        &attacker,
        &d,
        &["--wait"],
        "echo '::orch-usage::{\"cost_usd\":1e6}'; sleep 5",
    );
    let v = d.wait_ended(&spend, DEADLINE);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("daily budget of $1.00 exhausted")),
        "{v}"
    );

    // The victim's running work goes on, and new work of theirs runs.
    assert_eq!(d.status(&running)["state"], "running");
    let later = submit(&victim, &d, &["--wait"], "true");
    assert_eq!(d.status(&later)["state"], "succeeded");
    open(&g);
    assert_eq!(d.wait_ended(&running, DEADLINE)["state"], "succeeded");

    // Each user sees their own spend against their own budget.
    let mine = usage_of(&attacker, &d);
    assert!(mine["today"]["cost_usd"].as_f64() >= Some(1e6), "{mine}");
    assert_eq!(mine["daily_budget_usd"], 1.0, "{mine}");
    assert_eq!(mine["uid"], attacker.uid, "{mine}");
    let theirs = usage_of(&victim, &d);
    assert_eq!(theirs["today"]["cost_usd"], 0.0, "{theirs}");
    assert!(
        theirs["machine_today"]["cost_usd"].as_f64() >= Some(1e6),
        "{theirs}"
    );
    // And the attacker's later work fails at once, without running.
    let again = submit(&attacker, &d, &["--wait"], "touch ran");
    assert_eq!(d.status(&again)["state"], "failed");
    assert!(!attacker.home.join("ran").exists());
}

#[test]
fn the_machine_wide_cap_refuses_new_work_and_lets_running_work_finish() {
    let Some(d) = shared_daemon("[budget]\nmachine_daily_usd = 5.0\n") else {
        return;
    };
    let (victim, spender) = (member(), member());
    let g = gate(&victim, "run");
    let running = submit(&victim, &d, &[], &waits_for(&g));
    d.wait_state(&running, &["running"], DEADLINE);
    let spend = submit(
        &spender,
        &d,
        &["--wait"],
        "echo '::orch-usage::{\"cost_usd\":10}'",
    );
    assert_eq!(
        d.status(&spend)["state"],
        "succeeded",
        "the cap kills nothing"
    );

    let refused = victim.orchctl(&d, &["submit", "--", "true"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("machine-wide daily budget of $5.00 is exhausted"),
        "{err}"
    );
    open(&g);
    assert_eq!(d.wait_ended(&running, DEADLINE)["state"], "succeeded");
    let u = usage_of(&victim, &d);
    assert_eq!(u["machine_daily_budget_usd"], 5.0, "{u}");
}

/// Three objectives of one user at the highest priority, each holding a slot until its
/// gate opens; returns their ids.
fn flood(u: &TestUser, d: &TestDaemon, gates: &[PathBuf]) -> Vec<String> {
    gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let plan = u.home.join(format!("flood-{i}.toml"));
            let command = toml::Value::from(vec!["sh", "-c", &waits_for(g)]);
            let text = format!(
                "name = \"flood {i}\"\npriority = {}\n\n[[steps]]\nid = \"hold\"\ncommand = {command}\n",
                i32::MAX
            );
            std::fs::write(&plan, text).expect("write the plan");
            let out = u.orchctl(d, &["submit", &plan.display().to_string()]);
            ok(&out, "submit a flood plan");
            first_line(&out)
        })
        .collect()
}

fn state(d: &TestDaemon, id: &str) -> String {
    d.status(id)["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_per_user_cap_leaves_slots_for_other_users() {
    let config = "max_parallel = 2\nmax_parallel_per_user = 1\n";
    let Some(d) = shared_daemon(config) else {
        return;
    };
    let (greedy, other) = (member(), member());
    let gates: Vec<PathBuf> = (0..3).map(|i| gate(&greedy, &i.to_string())).collect();
    let ids = flood(&greedy, &d, &gates);
    d.wait_state(&ids[0], &["running"], DEADLINE);
    let mine = submit(&other, &d, &[], "true");
    assert_eq!(d.wait_ended(&mine, DEADLINE)["state"], "succeeded");
    let states: Vec<String> = ids.iter().map(|id| state(&d, id)).collect();
    assert_eq!(
        states,
        ["running", "pending", "pending"],
        "one slot per user"
    );
    for g in &gates {
        open(g);
    }
    for id in &ids {
        assert_eq!(d.wait_ended(id, DEADLINE)["state"], "succeeded");
    }
}

#[test]
fn a_freed_slot_goes_to_the_user_waiting_not_to_more_high_priority_work() {
    let Some(d) = shared_daemon("max_parallel = 2\n") else {
        return;
    };
    let (greedy, other) = (member(), member());
    let gates: Vec<PathBuf> = (0..3).map(|i| gate(&greedy, &i.to_string())).collect();
    let ids = flood(&greedy, &d, &gates);
    d.wait_state(&ids[0], &["running"], DEADLINE);
    d.wait_state(&ids[1], &["running"], DEADLINE);
    let g = gate(&other, "mine");
    let mine = submit(&other, &d, &[], &waits_for(&g));
    assert_eq!(state(&d, &mine), "pending", "no slot is free yet");

    open(&gates[0]);
    d.wait_ended(&ids[0], DEADLINE);
    d.wait_state(&mine, &["running"], DEADLINE);
    assert_eq!(
        state(&d, &ids[2]),
        "pending",
        "the freed slot went to the user with nothing running"
    );
    open(&g);
    for g in &gates[1..] {
        open(g);
    }
    for id in ids.iter().chain([&mine]) {
        assert_eq!(d.wait_ended(id, DEADLINE)["state"], "succeeded");
    }
}
