//! Routed steps (`agent = "auto"`) against the real orchd, with stand-in profiles
//! (small shell scripts that report tokens priced by `[prices]`): priority cost vs
//! quality vs speed, a disabled profile skipped, a rate-limited one skipped without
//! waiting (the step resumes its checkpoint on the next one), the cheapest past 80 % of
//! the budget, and a profile disabled `--for` a while enabled again by itself.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Follower, TestDaemon};

const DEADLINE: Duration = Duration::from_secs(60);

/// The stand-in agent: reads its prompt, reports 20k input and 2k output tokens (or the
/// cost in `$COST`), takes `$2` seconds, says who ran.
const STAND_IN: &str = r#"#!/bin/sh
cat >/dev/null
echo "::orch-usage::{\"input_tokens\":20000,\"output_tokens\":2000${COST:+,\"cost_usd\":$COST}}"
sleep "$2"
echo "$1 ran"
"#;

/// A stand-in whose provider refuses it for an hour, after it recorded a checkpoint.
const LIMITED: &str = r#"#!/bin/sh
cat >/dev/null
echo '::orch-checkpoint::{"done":1}'
until=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
echo "::orch-usage::{\"rate_limited_until\":\"$until\"}"
exit 1
"#;

/// A stand-in that keeps the checkpoint it was handed in the work dir.
const RESUMER: &str = r#"#!/bin/sh
cat >/dev/null
echo "::orch-usage::{\"input_tokens\":20000,\"output_tokens\":2000}"
if [ -n "$ORCH_CHECKPOINT_FILE" ]; then cat "$ORCH_CHECKPOINT_FILE" > resumed.txt; fi
echo "$1 ran"
"#;

/// Three profiles, deliberately listed so that config order decides nothing:
/// `opus` dear, best and slowest; `sonnet` middling and fastest; `haiku` cheapest, weakest.
/// `haiku_script` replaces haiku's stand-in by another script of the temp dir.
fn config(dir: &std::path::Path, haiku_script: Option<&str>, extra: &str) -> String {
    let bin = dir.join("stand-in");
    let b = bin.display();
    let haiku = match haiku_script {
        Some(script) => format!(r#"["{}/{script}", "haiku"]"#, dir.display()),
        None => format!(r#"["{b}", "haiku", "0.3"]"#),
    };
    format!(
        r#"max_parallel = 4
{extra}
[prices.dear]
input_per_mtok = 15.0
output_per_mtok = 75.0

[prices.middling]
input_per_mtok = 3.0
output_per_mtok = 15.0

[prices.cheap]
input_per_mtok = 0.25
output_per_mtok = 1.25

[agents.opus]
command = ["{b}", "opus", "0.6"]
model = "dear"
quality = 9
tags = ["code", "plan"]

[agents.sonnet]
command = ["{d}/resumer", "sonnet"]
model = "middling"
quality = 7
tags = ["code"]

[agents.haiku]
command = {haiku}
model = "cheap"
quality = 4
tags = ["code"]

[agents.local]
command = ["{b}", "local", "0"]
tags = ["code", "last-resort"]
"#,
        d = dir.display()
    )
}

fn daemon(haiku_script: Option<&str>, extra: &str) -> TestDaemon {
    let mut d = TestDaemon::prepare_with_config("", &[]);
    d.write_script("stand-in", STAND_IN);
    d.write_script("limited", LIMITED);
    d.write_script("resumer", RESUMER);
    let text = config(d.dir(), haiku_script, extra);
    d.write_file("orchd.toml", &text);
    d.launch();
    d
}

fn routed_step(id: &str, priority: &str, tags: &str) -> String {
    format!(
        "[[steps]]\nid = \"{id}\"\nagent = \"auto\"\nprompt = \"do {id}\"\nroute = {{ priority = \"{priority}\", tags = [{tags}] }}\n\n"
    )
}

fn step<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {v}"))
}

fn attempt_agents(v: &Value, id: &str) -> Vec<String> {
    step(v, id)["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| a["agent"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn agents(d: &TestDaemon) -> Vec<Value> {
    d.ctl_json(&["agents"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn agent(d: &TestDaemon, name: &str) -> Value {
    agents(d)
        .into_iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name}"))
}

/// Runs every profile once with a fixed agent, so each has a measured p50.
fn warm_up(d: &TestDaemon) {
    let mut plan = String::from("name = \"warm-up\"\n\n");
    for a in ["opus", "sonnet", "haiku"] {
        plan.push_str(&format!(
            "[[steps]]\nid = \"{a}\"\nagent = \"{a}\"\nprompt = \"warm up\"\n\n"
        ));
    }
    let p = d.write_plan("warm.toml", &plan);
    d.submit(&["--wait", &p], 0);
}

#[test]
fn routing_by_cost_quality_and_speed_picks_different_profiles() {
    let d = daemon(None, "");
    warm_up(&d);
    let plan = format!(
        "name = \"routed\"\n\n{}{}{}{}",
        routed_step("cheap", "cost", "\"code\""),
        routed_step("good", "quality", "\"code\""),
        routed_step("fast", "speed", "\"code\""),
        routed_step("planning", "cost", "\"plan\""),
    );
    let p = d.write_plan("routed.toml", &plan);

    // What would be chosen now, without storing anything.
    let dry = d.ctl_json(&["submit", "--dry-run", &p]);
    let chosen = |i: usize| {
        dry["steps"][i]["routed"]["agent"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        [chosen(0), chosen(1), chosen(2), chosen(3)],
        ["haiku", "opus", "sonnet", "opus"],
        "{dry}"
    );
    let text = String::from_utf8_lossy(&d.ctl(&["submit", "--dry-run", &p]).stdout).into_owned();
    assert!(
        text.contains("auto by cost [code]: now haiku (cheapest of 3 eligible"),
        "{text}"
    );

    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(attempt_agents(&v, "cheap"), ["haiku"], "{v}");
    assert_eq!(attempt_agents(&v, "good"), ["opus"], "{v}");
    assert_eq!(attempt_agents(&v, "fast"), ["sonnet"], "{v}");
    assert_eq!(attempt_agents(&v, "planning"), ["opus"], "{v}");
    let reason = step(&v, "good")["attempts"][0]["route_reason"]
        .as_str()
        .unwrap_or("");
    assert!(
        reason.starts_with("highest quality of 3 eligible (quality 9"),
        "{reason}"
    );

    // Every choice is an event with the candidates and their scores.
    let events = d.events(&id);
    let routed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "agent_routed")
        .collect();
    assert_eq!(routed.len(), 4, "{events:?}");
    let fast = routed
        .iter()
        .find(|e| e["step_id"] == "fast")
        .expect("the fast step's choice");
    assert_eq!(fast["agent"], "sonnet");
    assert_eq!(fast["priority"], "speed");
    let candidates = fast["candidates"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = candidates
        .iter()
        .filter_map(|c| c["agent"].as_str())
        .collect();
    assert_eq!(names, ["opus", "sonnet", "haiku", "local"], "{fast}");
    assert!(
        candidates.iter().take(3).all(|c| c["score"].is_number()),
        "{fast}"
    );

    // `status` says which agent each attempt got and why.
    let text = String::from_utf8_lossy(&d.ctl(&["status", &id]).stdout).into_owned();
    assert!(
        text.contains("attempt 1 routed to sonnet: fastest of 3 eligible"),
        "{text}"
    );
}

#[test]
fn a_disabled_profile_is_never_chosen_and_agents_says_why() {
    let d = daemon(None, "");
    let out = d.ctl_exits(
        &["agents", "disable", "haiku", "--reason", "provider outage"],
        0,
        "disable haiku",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("haiku: disabled until enabled: provider outage")
    );
    let h = agent(&d, "haiku");
    assert_eq!(h["enabled"], false, "{h}");
    assert_eq!(h["disabled_reason"], "provider outage", "{h}");
    assert_eq!(h["disabled_until"], Value::Null, "{h}");
    assert_eq!(h["quality"], 4);
    assert_eq!(h["tags"], serde_json::json!(["code"]));

    let p = d.write_plan("cheap.toml", &routed_step("cheap", "cost", "\"code\""));
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(
        attempt_agents(&v, "cheap"),
        ["sonnet"],
        "the next cheapest: {v}"
    );
    let events = d.events(&id);
    let routed = events
        .iter()
        .find(|e| e["kind"] == "agent_routed")
        .expect("an agent_routed event");
    let haiku = routed["candidates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["agent"] == "haiku").cloned())
        .unwrap_or_default();
    assert_eq!(haiku["excluded"], "disabled: provider outage", "{routed}");

    // Audited, and it survives a restart.
    let audit = d.audit(&[]);
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "agent disable haiku" && e["result"] == "ok"),
        "{audit:?}"
    );
    let mut d = d;
    d.restart();
    assert_eq!(agent(&d, "haiku")["enabled"], false);

    d.ctl_exits(&["agents", "enable", "haiku"], 0, "enable haiku");
    assert_eq!(agent(&d, "haiku")["enabled"], true);
    let dry = d.ctl_json(&["submit", "--dry-run", &p]);
    assert_eq!(dry["steps"][0]["routed"]["agent"], "haiku", "{dry}");

    // Bad input is refused, naming the problem.
    let out = d.ctl(&["agents", "disable", "nobody"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("no agent profile `nobody`"), "{err}");
}

#[test]
fn a_rate_limited_profile_is_skipped_without_waiting_and_the_step_resumes_its_checkpoint() {
    let d = daemon(Some("limited"), "");

    let p = d.write_plan("cheap.toml", &routed_step("cheap", "cost", "\"code\""));
    let started = std::time::Instant::now();
    let id = d.submit(&["--wait", &p], 0);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it waited for the hour-long reset"
    );
    let v = d.status(&id);
    assert_eq!(attempt_agents(&v, "cheap"), ["haiku", "sonnet"], "{v}");
    let resumed = fs::read_to_string(d.work_dir().join("resumed.txt")).unwrap_or_default();
    assert!(
        resumed.contains("\"done\":1") || resumed.contains("\"done\": 1"),
        "{resumed}"
    );
    let h = agent(&d, "haiku");
    assert_eq!(h["enabled"], false, "{h}");
    assert!(h["disabled_until"].is_string(), "{h}");
    assert_eq!(
        h["disabled_reason"], "its provider's usage limit was reached",
        "{h}"
    );
}

#[test]
fn past_80_percent_of_the_budget_routing_takes_the_cheapest_whatever_the_priority() {
    let d = daemon(None, "");
    // The first step spends $0.85 of the objective's $1.00; the routed one asks for quality.
    let plan = r#"name = "squeezed"
budget_usd = 1.0

[[steps]]
id = "spend"
agent = "opus"
prompt = "spend"
env = { COST = "0.85" }

[[steps]]
id = "good"
agent = "auto"
prompt = "good work"
needs = ["spend"]
route = { priority = "quality", tags = ["code"] }
"#;
    let p = d.write_plan("squeezed.toml", plan);
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(attempt_agents(&v, "good"), ["haiku"], "{v}");
    let reason = step(&v, "good")["attempts"][0]["route_reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        reason.starts_with("budget objective_usd at 85% (past its 80% alert): cheapest of 3"),
        "{reason}"
    );
    assert!(reason.ends_with("instead of by quality"), "{reason}");
}

#[test]
fn a_profile_disabled_for_a_while_is_enabled_again_by_itself() {
    let d = daemon(None, "");
    // From the first event on, so nothing is missed however fast it goes.
    let mut follow = Follower::start(d.ctl_command(&[
        "watch",
        "--from",
        "0",
        "--kinds",
        "agent_disabled,agent_enabled",
        "-o",
        "json",
    ]));
    d.ctl_exits(
        &[
            "agents",
            "disable",
            "haiku",
            "--for",
            "1s",
            "--reason",
            "a short break",
        ],
        0,
        "disable haiku for 1s",
    );
    follow.until("haiku disabled", DEADLINE, |l| {
        l.contains("\"agent_disabled\"") && l.contains("a short break")
    });
    follow.until("haiku enabled again", DEADLINE, |l| {
        l.contains("\"agent_enabled\"") && l.contains("the time it was disabled for ran out")
    });
    follow.kill();
    assert_eq!(agent(&d, "haiku")["enabled"], true);
    let p = d.write_plan("cheap.toml", &routed_step("cheap", "cost", "\"code\""));
    let dry = d.ctl_json(&["submit", "--dry-run", &p]);
    assert_eq!(dry["steps"][0]["routed"]["agent"], "haiku", "{dry}");
}

#[test]
fn the_last_resort_runs_only_when_nothing_else_may() {
    let d = daemon(None, "");
    for a in ["opus", "sonnet", "haiku"] {
        d.ctl_exits(&["agents", "disable", a], 0, "disable");
    }
    let p = d.write_plan("cheap.toml", &routed_step("cheap", "quality", "\"code\""));
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(attempt_agents(&v, "cheap"), ["local"], "{v}");
    let reason = step(&v, "cheap")["attempts"][0]["route_reason"]
        .as_str()
        .unwrap_or("");
    assert!(reason.starts_with("last resort: "), "{reason}");

    // Nothing at all for `plan` but opus, disabled for good: the step fails, saying so.
    let p = d.write_plan("plan.toml", &routed_step("planning", "cost", "\"plan\""));
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    let message = step(&v, "planning")["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("every agent profile with tags [plan] is disabled until enabled again"),
        "{message}"
    );
}

#[test]
fn routed_plans_and_profiles_are_checked() {
    let d = daemon(None, "");
    let bad = |name: &str, text: &str, says: &str| {
        let p = d.write_plan(name, text);
        let out = d.ctl(&["submit", &p]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(says), "{name}: {err}");
    };
    bad(
        "priority.toml",
        &routed_step("a", "cheapest", "\"code\""),
        "steps[a].route.priority: `cheapest` is not one of cost, quality, speed",
    );
    bad(
        "tags.toml",
        &routed_step("a", "cost", "\"review\""),
        "steps[a].route.tags: no agent profile has every tag of [review]",
    );
    bad(
        "fixed.toml",
        "[[steps]]\nid = \"a\"\nagent = \"opus\"\nprompt = \"x\"\nroute = { priority = \"cost\" }\n",
        "steps[a].route: a route needs `agent = \"auto\"`",
    );

    // A profile's quality is 1 to 10.
    let d2 = TestDaemon::prepare_with_config(
        "[agents.x]\ncommand = [\"true\"]\nquality = 11\ntags = [\"code\"]\n",
        &[],
    );
    let out = d2.print_config(&d2.dir().join("orchd.toml"));
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("agents.x.quality: must be from 1 to 10, got 11"),
        "{err}"
    );
}

#[test]
fn the_example_config_routes_to_the_local_server_only_as_a_last_resort() {
    let example = format!("{}/docs/examples/agents.toml", env!("CARGO_MANIFEST_DIR"));
    let d = TestDaemon::start_with(&["--config", &example], &[]);
    let p = d.write_plan("code.toml", &routed_step("code", "quality", "\"code\""));
    let dry = d.ctl_json(&["submit", "--dry-run", &p]);
    assert_eq!(dry["steps"][0]["routed"]["agent"], "claude", "{dry}");
    for a in ["claude", "codex", "aider"] {
        d.ctl_exits(
            &["agents", "disable", a, "--reason", "over quota"],
            0,
            "disable",
        );
    }
    let dry = d.ctl_json(&["submit", "--dry-run", &p]);
    let routed = &dry["steps"][0]["routed"];
    assert_eq!(routed["agent"], "local", "{dry}");
    assert!(
        routed["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("last resort: "),
        "{dry}"
    );
}

#[test]
fn a_profile_that_keeps_failing_is_cooled_down_and_the_step_moves_on() {
    let d = daemon(
        Some("failing"),
        "\n[routing]\ncooldown_after = 2\ncooldown = \"1h\"\n",
    );
    d.write_script(
        "failing",
        "#!/bin/sh\ncat >/dev/null\necho broken >&2\nexit 1\n",
    );
    let plan = r#"[[steps]]
id = "cheap"
agent = "auto"
prompt = "do it"
route = { priority = "cost", tags = ["code"] }
retry = { max_attempts = 3, initial_backoff = "50ms", jitter = 0.0 }
"#;
    let p = d.write_plan("cheap.toml", plan);
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(
        attempt_agents(&v, "cheap"),
        ["haiku", "haiku", "sonnet"],
        "{v}"
    );
    let h = agent(&d, "haiku");
    assert_eq!(h["enabled"], false, "{h}");
    assert_eq!(h["disabled_reason"], "failed 2 times in a row", "{h}");
    assert!(h["disabled_until"].is_string(), "{h}");
}
