//! Objectives as agent plans: DAG scheduling and priority, agent profiles and their command
//! templates, usage and cost (orch lines, Claude Code stream-json, Codex JSON), budgets,
//! approvals, fallbacks, provider rate limits, dry runs, config reload and the example plans.
//!
//! Fake `claude` and `codex` programs print transcripts in the shape the real CLIs print (see
//! `CLAUDE_TRANSCRIPT` and `CODEX_TRANSCRIPT` for where the shapes come from).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use orch_proto::v1::ListAgentsRequest;
use serde_json::{Value, json};

use crate::support::{
    STATE_DEADLINE, TestDaemon, array, attempts, block_on, describe, of_kind, poll_until,
    refusal_problems, rfc3339, signal_pid, stderr, stdout, step, utf8, wait_process_gone,
};

// ------------------------------------------------------------------ helpers

/// A daemon whose config (`orchd.toml` in its temp dir) is `config(dir)`, after `setup(d)`
/// wrote whatever files the config names.
fn daemon_with(
    args: &[&str],
    setup: impl FnOnce(&TestDaemon),
    config: impl FnOnce(&Path) -> String,
) -> TestDaemon {
    let mut d = TestDaemon::prepare_with_config("", args);
    fs::create_dir(d.dir().join("bin")).expect("create the bin dir");
    setup(&d);
    let text = config(d.dir());
    d.write_file("orchd.toml", &text);
    d.launch();
    d
}

/// A file in the clients' working directory (the default workdir of every step).
fn work_file(d: &TestDaemon, name: &str) -> PathBuf {
    d.work_dir().join(name)
}

fn read_work(d: &TestDaemon, name: &str) -> String {
    let p = work_file(d, name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn int(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not an unsigned integer: {v}"))
}

fn ms(v: &Value, what: &str) -> i64 {
    rfc3339(v, what).timestamp_millis()
}

/// Asserts a usage object: `input` is every input kind together (fresh, cache reads,
/// cache writes), which the kinds must add up to.
fn assert_usage(v: &Value, input: u64, output: u64, cost: f64, what: &str) {
    let all_input: u64 = ["input_tokens", "cache_read_tokens", "cache_write_tokens"]
        .iter()
        .map(|k| int(&v[*k], what))
        .sum();
    assert_eq!(all_input, input, "{what} input tokens of every kind: {v}");
    assert_eq!(
        int(&v["output_tokens"], what),
        output,
        "{what} output_tokens: {v}"
    );
    let got = num(&v["cost_usd"], what);
    assert!(
        (got - cost).abs() < 1e-9,
        "{what} cost_usd is {got}, expected {cost}: {v}"
    );
}

/// Attempt `n` (1-based) of step `s`.
fn attempt_n(s: &Value, n: usize) -> &Value {
    let a = attempts(s);
    a.get(n - 1)
        .unwrap_or_else(|| panic!("step has no attempt {n}: {s}"))
}

/// `orchctl agents -o json` as a map from name to profile.
fn agents(d: &TestDaemon) -> std::collections::BTreeMap<String, Value> {
    let v = d.ctl_json(&["agents"]);
    array(&v, "agents -o json")
        .iter()
        .map(|a| {
            let name = a["name"]
                .as_str()
                .unwrap_or_else(|| panic!("agent without a name: {a}"))
                .to_string();
            (name, a.clone())
        })
        .collect()
}

fn agent_names(d: &TestDaemon) -> BTreeSet<String> {
    agents(d).into_keys().collect()
}

/// `orchctl audit -o json` as an array.
fn audit(d: &TestDaemon) -> Vec<Value> {
    d.audit(&["--limit", "1000"])
}

/// The uid of this test process (the caller the daemon sees).
fn my_uid() -> u64 {
    u64::from(nix::unistd::getuid().as_raw())
}

/// `now + secs` as RFC 3339 with milliseconds, and as milliseconds since the epoch.
fn in_secs(secs: i64) -> (String, i64) {
    let t = chrono::Utc::now() + chrono::Duration::seconds(secs);
    (
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        t.timestamp_millis(),
    )
}

// ------------------------------------------------------------------ DAG scheduling

#[test]
fn diamond_dag_runs_in_order_with_middle_steps_overlapping() {
    let d = TestDaemon::start_with(&["--max-parallel", "4"], &[]);
    // b and c each wait (bounded) until the other has started: the objective can only succeed
    // when they run at the same time. Every step appends to order.txt.
    let meet = |me: &str, other: &str| {
        format!(
            "echo {me}-start >> order.txt; touch {me}.started; i=0; \
             while [ ! -e {other}.started ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 7; sleep 0.01; done; \
             sleep 0.2; echo {me}-end >> order.txt"
        )
    };
    let p = d.write_plan(
        "diamond.toml",
        &format!(
            r#"name = "diamond"

[defaults]
retry = {{ max_attempts = 1 }}

[[steps]]
id = "d"
needs = ["b", "c"]
command = ["sh", "-c", "echo d >> order.txt"]

[[steps]]
id = "b"
needs = ["a"]
command = ["sh", "-c", "{b}"]

[[steps]]
id = "c"
needs = ["a"]
command = ["sh", "-c", "{c}"]

[[steps]]
id = "a"
command = ["sh", "-c", "sleep 0.2; echo a >> order.txt"]
"#,
            b = meet("b", "c"),
            c = meet("c", "b"),
        ),
    );
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(v["state"], "succeeded", "{v}");

    let order = read_work(&d, "order.txt");
    let lines: Vec<&str> = order.lines().collect();
    assert_eq!(lines.len(), 6, "order.txt: {order}");
    assert_eq!(lines[0], "a", "a must run first: {order}");
    assert_eq!(lines[5], "d", "d must run last: {order}");
    let starts: BTreeSet<&str> = lines[1..3].iter().copied().collect();
    let ends: BTreeSet<&str> = lines[3..5].iter().copied().collect();
    assert_eq!(
        starts,
        BTreeSet::from(["b-start", "c-start"]),
        "b and c must both start before either ends: {order}"
    );
    assert_eq!(ends, BTreeSet::from(["b-end", "c-end"]), "{order}");

    // The recorded attempts say the same.
    let span = |s: &str| {
        let a = attempt_n(step(&v, s), 1);
        (
            ms(&a["started_at"], "started_at"),
            ms(&a["ended_at"], "ended_at"),
        )
    };
    let (a0, a1) = span("a");
    let (b0, b1) = span("b");
    let (c0, c1) = span("c");
    let (d0, d1) = span("d");
    assert!(b0 >= a1 && c0 >= a1, "b/c started before a ended: {v}");
    assert!(
        b0 < c1 && c0 < b1,
        "b [{b0}, {b1}] and c [{c0}, {c1}] do not overlap in time: {v}"
    );
    assert!(
        d0 >= b1.max(c1),
        "d started at {d0} before both b and c ended: {v}"
    );
    assert!(d1 >= d0 && a1 >= a0);
    for s in ["a", "b", "c", "d"] {
        assert_eq!(attempts(step(&v, s)).len(), 1, "step {s}: {v}");
    }
}

#[test]
fn failed_step_skips_its_dependents_and_fails_the_objective_after_the_rest() {
    let d = TestDaemon::start_with(&["--max-parallel", "4"], &[]);
    let p = d.write_plan(
        "broken.toml",
        r#"name = "broken"

[[steps]]
id = "broken"
command = ["sh", "-c", "exit 3"]
retry = { max_attempts = 1 }

[[steps]]
id = "after"
needs = ["broken"]
command = ["touch", "after.ran"]

[[steps]]
id = "last"
needs = ["after"]
command = ["touch", "last.ran"]

[[steps]]
id = "independent"
command = ["sh", "-c", "sleep 0.5; touch independent.ran"]
"#,
    );
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(step(&v, "broken")["state"], "failed", "{v}");
    assert_eq!(attempts(step(&v, "broken"))[0]["exit_code"], 3, "{v}");
    for (s, dep) in [("after", "broken"), ("last", "after")] {
        let st = step(&v, s);
        assert_eq!(st["state"], "skipped", "{s}: {v}");
        assert!(attempts(st).is_empty(), "skipped step {s} ran: {v}");
        let msg = st["message"].as_str().unwrap_or("");
        assert!(
            msg.contains(dep),
            "skipped step {s}'s message `{msg}` does not name the dependency `{dep}`"
        );
    }
    assert!(!work_file(&d, "after.ran").exists());
    assert!(!work_file(&d, "last.ran").exists());
    // The independent step was not cut short: it ran to its end before the objective ended.
    assert_eq!(step(&v, "independent")["state"], "succeeded", "{v}");
    assert!(work_file(&d, "independent.ran").exists());
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("broken"),
        "objective message `{msg}` does not name the failed step"
    );

    let events = d.events(&id);
    let end_of_independent = events
        .iter()
        .find(|e| e["kind"] == "attempt_ended" && e["step_id"] == "independent")
        .unwrap_or_else(|| panic!("no attempt_ended for `independent`: {events:?}"));
    let failed = events
        .iter()
        .find(|e| e["kind"] == "objective_state" && e["state"] == "failed")
        .unwrap_or_else(|| panic!("no objective_state failed: {events:?}"));
    assert!(
        int(&failed["seq"], "seq") > int(&end_of_independent["seq"], "seq"),
        "the objective failed while `independent` still ran: {events:?}"
    );
}

#[test]
fn priority_orders_ready_steps_across_objectives_oldest_first_within_one() {
    let d = TestDaemon::start_with(&["--max-parallel", "1"], &[]);
    // Holds the only slot until `release` exists (bounded: at most ~20 s).
    let blocker = d.submit(
        &[
            "--",
            "sh",
            "-c",
            "i=0; while [ ! -e release ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 9; sleep 0.02; done",
        ],
        0,
    );
    d.wait_started(&blocker, STATE_DEADLINE);

    let objective = |name: &str, priority: Option<i32>| {
        let prio = priority.map_or(String::new(), |p| format!("priority = {p}\n"));
        let p = d.write_plan(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\n{prio}\n[[steps]]\nid = \"run\"\ncommand = [\"sh\", \"-c\", \"echo {name} >> ran.txt\"]\n"
            ),
        );
        d.submit(&[&p], 0)
    };
    // Submitted in this order; all wait for the slot.
    let ids = [
        objective("negative", Some(-1)),
        objective("low-old", None),
        objective("high", Some(5)),
        objective("low-new", Some(0)),
        objective("middle", Some(2)),
    ];
    for id in &ids {
        let v = d.status(id);
        assert_eq!(
            v["steps"][0]["state"], "ready",
            "with one slot taken, {id} must wait ready: {v}"
        );
    }
    fs::write(work_file(&d, "release"), "").expect("create release");
    for id in ids.iter().chain([&blocker]) {
        let v = d.wait_ended(id, STATE_DEADLINE);
        assert_eq!(v["state"], "succeeded", "{v}");
    }
    assert_eq!(
        read_work(&d, "ran.txt"),
        "high\nmiddle\nlow-old\nlow-new\nnegative\n",
        "priority high first, oldest first within a priority"
    );
}

// ------------------------------------------------------------------ agent profiles

/// A prompt full of shell syntax; `pwned` is a path prefix that must never be created.
fn hostile_prompt(pwned: &str) -> String {
    format!(
        "$(touch {pwned}1) `touch {pwned}2`; touch {pwned}3 && echo \"hi\" 'there' | tee {pwned}4 >/dev/null; ${{HOME}} * ~\nsecond line $((6*7)) \\ end"
    )
}

fn assert_not_pwned(pwned: &str) {
    for i in 1..=4 {
        let p = format!("{pwned}{i}");
        assert!(
            !Path::new(&p).exists(),
            "{p} exists: the prompt went through a shell"
        );
    }
}

#[test]
fn agent_templates_pass_the_prompt_as_one_literal_argument_and_only_once() {
    let d = daemon_with(
        &[],
        |_| {},
        |dir| {
            format!(
                r#"[agents.echoer]
command = ["printf", "%s", "{{prompt}}"]

[agents.reader]
command = ["sh", "-c", "cat > stdin.txt; printf '%s\n' \"$@\" > args.txt", "reader", "{{objective_id}}", "{{step_id}}", "{{workdir}}", "x{{prompt}}y"]

[agents.ghost]
command = ["orch-no-such-program-4711", "{{prompt}}"]

[agents.abs-ghost]
command = ["{dir}/bin/missing-agent", "{{prompt}}"]

[agents.streamer]
command = ["sh", "-c", "true"]
usage = "claude-stream-json"
"#,
                dir = dir.display()
            )
        },
    );
    let pwned = format!("{}/pwned-", d.dir().display());
    let prompt = hostile_prompt(&pwned);

    // printf %s PROMPT: the log is the prompt, byte for byte.
    let id = d.submit(&["--wait", "--agent", "echoer", "--prompt", &prompt], 0);
    let v = d.status(&id);
    let s = &v["steps"][0];
    let sid = s["id"].as_str().expect("step id").to_string();
    assert_eq!(s["agent"], "echoer", "{v}");
    assert_eq!(attempt_n(s, 1)["agent"], "echoer", "{v}");
    let log = d.logs(&[&id, &sid, "--stdout"]);
    assert_eq!(
        String::from_utf8_lossy(&log),
        prompt,
        "the program did not get the prompt as one literal argument"
    );
    assert_not_pwned(&pwned);

    // The prompt once (its argv takes it, so stdin is empty), and every placeholder
    // replaced inside its argv element.
    let p = d.write_plan(
        "reader.toml",
        &format!(
            "[[steps]]\nid = \"read\"\nagent = \"reader\"\nprompt = {}\n\n\
             [[steps]]\nid = \"plain\"\ncommand = [\"sh\", \"-c\", \"cat > cmd-stdin.txt\"]\n",
            toml::Value::String(prompt.clone())
        ),
    );
    let id = d.submit(&["--wait", &p], 0);
    assert_eq!(
        read_work(&d, "stdin.txt"),
        "",
        "an agent that takes the prompt as an argument does not get it on stdin too"
    );
    assert_eq!(
        read_work(&d, "cmd-stdin.txt"),
        "",
        "a command step's stdin is empty"
    );
    assert_eq!(
        read_work(&d, "args.txt"),
        format!("{id}\nread\n{}\nx{prompt}y\n", d.work_dir().display()),
        "placeholders were not replaced inside their argv elements"
    );
    assert_not_pwned(&pwned);

    // A profile whose program does not exist: found false, and its step cannot start.
    let list = agents(&d);
    let names: BTreeSet<&str> = list.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "abs-ghost",
            "echoer",
            "ghost",
            "reader",
            "shell",
            "streamer"
        ]),
        "{list:?}"
    );
    assert_eq!(list["echoer"]["name"], "echoer");
    assert_eq!(
        list["echoer"]["command"],
        json!(["printf", "%s", "{prompt}"])
    );
    assert_eq!(
        list["echoer"]["usage"], "orch-lines",
        "the default usage format"
    );
    assert_eq!(list["echoer"]["found"], true, "printf is on PATH");
    assert_eq!(list["ghost"]["found"], false, "{:?}", list["ghost"]);
    assert_eq!(list["abs-ghost"]["found"], false, "{:?}", list["abs-ghost"]);
    assert_eq!(list["streamer"]["usage"], "claude-stream-json");
    assert_eq!(list["streamer"]["found"], true);
    assert_eq!(
        list["shell"]["command"],
        json!(["bash", "-c", "{prompt}"]),
        "the built-in shell profile: {:?}",
        list["shell"]
    );
    assert_eq!(list["shell"]["usage"], "orch-lines");
    assert_eq!(list["shell"]["found"], true);

    let id = d.submit(&["--wait", "--agent", "ghost", "--prompt", "hi"], 1);
    let v = d.status(&id);
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 1, "spawn_error is not retried: {v}");
    assert_eq!(a[0]["outcome"], "spawn_error", "{v}");
}

#[test]
fn prompt_text_is_not_expanded_again() {
    // `{prompt}` is replaced by the prompt; text inside the prompt that looks like a
    // placeholder is the user's text and must reach the agent unchanged.
    let d = daemon_with(
        &[],
        |_| {},
        |_| "[agents.echoer]\ncommand = [\"printf\", \"%s\", \"{prompt}\"]\n".to_string(),
    );
    let prompt = "explain {step_id}, {objective_id}, {workdir} and {prompt} in orch templates";
    let id = d.submit(&["--wait", "--agent", "echoer", "--prompt", prompt], 0);
    let v = d.status(&id);
    let sid = v["steps"][0]["id"].as_str().expect("step id").to_string();
    let log = d.logs(&[&id, &sid, "--stdout"]);
    assert_eq!(String::from_utf8_lossy(&log), prompt);
}

#[test]
fn shell_profile_runs_prompts_through_bash() {
    let d = TestDaemon::start();
    let id = d.submit(
        &[
            "--wait",
            "--agent",
            "shell",
            "--prompt",
            "echo \"$((6*7)) from $ORCH_STEP_ID\" > shell.out",
        ],
        0,
    );
    let v = d.status(&id);
    let sid = v["steps"][0]["id"].as_str().expect("step id");
    assert_eq!(read_work(&d, "shell.out"), format!("42 from {sid}\n"));
    assert_eq!(v["steps"][0]["attempts"][0]["agent"], "shell", "{v}");
}

// ------------------------------------------------------------------ usage and cost

#[test]
fn orch_usage_lines_are_priced_summed_reported_and_survive_a_restart() {
    let mut d = daemon_with(
        &[],
        |_| {},
        |_| {
            r#"[prices.test-model]
input_per_mtok = 3.0
output_per_mtok = 15.0

[prices.other-model]
input_per_mtok = 1.0
output_per_mtok = 2.0

[agents.metered]
command = ["bash", "-c", "{prompt}"]
model = "test-model"
"#
            .to_string()
        },
    );
    let day = chrono::Utc::now().date_naive();
    let p = d.write_plan(
        "usage.toml",
        r#"name = "usage"

[[steps]]
id = "spend"
agent = "metered"
prompt = '''
echo '::orch-usage::{"input_tokens":1000000,"output_tokens":200000}'
echo 'ordinary output'
echo '::orch-usage::{"input_tokens":500000,"model":"other-model"}'
echo '::orch-usage::{"input_tokens":10,"output_tokens":20,"cost_usd":0.25}'
'''

[[steps]]
id = "more"
needs = ["spend"]
command = ["sh", "-c", "echo '::orch-usage::{\"input_tokens\":2000,\"output_tokens\":1000,\"model\":\"test-model\"}'"]
"#,
    );
    let id = d.submit(&["--wait", &p], 0);

    // spend: 1M in + 200k out at test-model (3 + 3), 500k in at other-model (0.5), 0.25 as
    // reported; more: 2000 in + 1000 out at test-model (0.006 + 0.015).
    let (total_in, total_out, total_cost) = (1_502_010, 201_020, 6.771);
    let check = |d: &TestDaemon, when: &str| {
        let v = d.status(&id);
        assert_usage(
            &v["usage"],
            total_in,
            total_out,
            total_cost,
            &format!("{when}: objective"),
        );
        assert_usage(
            &attempt_n(step(&v, "spend"), 1)["usage"],
            1_500_010,
            200_020,
            6.75,
            &format!("{when}: attempt of spend"),
        );
        assert_usage(
            &attempt_n(step(&v, "more"), 1)["usage"],
            2000,
            1000,
            0.021,
            &format!("{when}: attempt of more"),
        );
        let u = d.ctl_json(&["usage", &id]);
        assert_usage(
            &u,
            total_in,
            total_out,
            total_cost,
            &format!("{when}: usage ID"),
        );
        assert!(
            u.get("budget_usd").is_none_or(Value::is_null),
            "no budget: {u}"
        );
        let all = d.ctl_json(&["usage"]);
        assert_usage(
            &all,
            total_in,
            total_out,
            total_cost,
            &format!("{when}: usage"),
        );
        if chrono::Utc::now().date_naive() == day {
            assert_usage(&all["today"], total_in, total_out, total_cost, "today");
            assert_usage(
                &all["this_month"],
                total_in,
                total_out,
                total_cost,
                "this month",
            );
        }
    };
    check(&d, "after the run");

    let events = d.events(&id);
    let usage = of_kind(&events, "usage");
    assert_eq!(usage.len(), 4, "one usage event per report: {usage:?}");
    let expect = [
        (
            "spend",
            1_000_000,
            200_000,
            6.0,
            "test-model",
            (1_000_000, 200_000, 6.0),
        ),
        (
            "spend",
            500_000,
            0,
            0.5,
            "other-model",
            (1_500_000, 200_000, 6.5),
        ),
        (
            "spend",
            10,
            20,
            0.25,
            "test-model",
            (1_500_010, 200_020, 6.75),
        ),
        (
            "more",
            2000,
            1000,
            0.021,
            "test-model",
            (total_in, total_out, total_cost),
        ),
    ];
    for (e, (s, i, o, c, model, (ti, to, tc))) in usage.iter().zip(expect) {
        assert_eq!(e["step_id"], s, "{e}");
        assert_usage(e, i, o, c, "usage event report");
        assert_eq!(e["model"], model, "{e}");
        assert_usage(
            &e["objective_total"],
            ti,
            to,
            tc,
            "usage event objective_total",
        );
    }
    assert_usage(
        &usage[2]["step_total"],
        1_500_010,
        200_020,
        6.75,
        "step_total",
    );

    d.restart();
    check(&d, "after a restart");
}

/// A `claude -p ... --output-format stream-json --verbose` transcript in the shape Claude Code
/// 2.x prints: `system/init`, per-content-block `assistant` events that each repeat their
/// message's usage (the same message id twice), a `user` tool result, an informational
/// `rate_limit_event`, and the final `result` whose `total_cost_usd` and `usage` cover the
/// whole session. Shapes from anthropics/claude-code#38673 and #83239 (result is the session
/// total), quarkusio/skills#48 (init and result fields), unfence-labs/hive#87 and
/// handarbeit/fabrik#1815 (`rate_limit_event.rate_limit_info`: status, resetsAt in epoch
/// seconds, rateLimitType, overageStatus).
const CLAUDE_TRANSCRIPT: &str = concat!(
    r#"{"type":"system","subtype":"init","cwd":"/work","session_id":"3f9d2c1e-8a41-4b4e-9a59-6d0c1f2b7e10","tools":["Bash","Edit","Read"],"mcp_servers":[],"model":"claude-sonnet-4-5-20250929","permissionMode":"default","slash_commands":["compact","cost"],"apiKeySource":"none","claude_code_version":"2.1.83","output_style":"default","agents":[],"skills":[],"plugins":[],"uuid":"0a6c3b7e-1d2f-4c5b-8e9a-0b1c2d3e4f50"}"#,
    "\n",
    r#"{"type":"assistant","message":{"model":"claude-sonnet-4-5-20250929","id":"msg_01HkQ","type":"message","role":"assistant","content":[{"type":"text","text":"Let me look at the tests."}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"cache_creation_input_tokens":5120,"cache_read_input_tokens":13200,"cache_creation":{"ephemeral_5m_input_tokens":5120,"ephemeral_1h_input_tokens":0},"output_tokens":7,"service_tier":"standard"}},"parent_tool_use_id":null,"session_id":"3f9d2c1e-8a41-4b4e-9a59-6d0c1f2b7e10","uuid":"1b7d4c8f-2e3a-4d6c-9f0b-1c2d3e4f5061"}"#,
    "\n",
    r#"{"type":"assistant","message":{"model":"claude-sonnet-4-5-20250929","id":"msg_01HkQ","type":"message","role":"assistant","content":[{"type":"tool_use","id":"toolu_01A","name":"Bash","input":{"command":"ls tests","description":"List tests"}}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"cache_creation_input_tokens":5120,"cache_read_input_tokens":13200,"cache_creation":{"ephemeral_5m_input_tokens":5120,"ephemeral_1h_input_tokens":0},"output_tokens":61,"service_tier":"standard"}},"parent_tool_use_id":null,"session_id":"3f9d2c1e-8a41-4b4e-9a59-6d0c1f2b7e10","uuid":"2c8e5d9a-3f4b-4e7d-8a1c-2d3e4f506172"}"#,
    "\n",
    r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_01A","type":"tool_result","content":"a.rs\nb.rs","is_error":false}]},"parent_tool_use_id":null,"session_id":"3f9d2c1e-8a41-4b4e-9a59-6d0c1f2b7e10","uuid":"3d9f6e0b-4a5c-4f8e-9b2d-3e4f50617283","tool_use_result":{"stdout":"a.rs\nb.rs","stderr":"","interrupted":false,"isImage":false}}"#,
    "\n",
    r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","resetsAt":1774447200,"rateLimitType":"five_hour","overageStatus":"rejected","overageDisabledReason":"org_level_disabled","isUsingOverage":false},"uuid":"4e0a7f1c-5b6d-4a9f-8c3e-4f5061728394","session_id":"3f9d2c1e-8a41-4b4e-9a59-6d0c1f2b7e10"}"#,
    "\n",
    r#"{"type":"assistant","message":{"model":"claude-sonnet-4-5-20250929","id":"msg_01JmR","type":"message","role":"assistant","content":[{"type":"text","text":"There are two test files: a.rs and b.rs."}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":6,"cache_creation_input_tokens":310,"cache_read_input_tokens":18320,"cache_creation":{"ephemeral_5m_input_tokens":310,"ephemeral_1h_input_tokens":0},"output_tokens":18,"service_tier":"standard"}},"parent_tool_use_id":null,"session_id":"3f9d2c1e-8a41-4b4e-9a59-6d0c1f2b7e10","uuid":"5f1b8a2d-6c7e-4b0a-9d4f-5061728394a5"}"#,
    "\n",
    r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":5234,"duration_api_ms":7012,"num_turns":3,"result":"There are two test files: a.rs and b.rs.","session_id":"3f9d2c1e-8a41-4b4e-9a59-6d0c1f2b7e10","total_cost_usd":0.04211325,"usage":{"input_tokens":14,"cache_creation_input_tokens":5430,"cache_read_input_tokens":44720,"output_tokens":86,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":5430}},"modelUsage":{"claude-sonnet-4-5-20250929":{"inputTokens":14,"outputTokens":86,"cacheReadInputTokens":44720,"cacheCreationInputTokens":5430,"webSearchRequests":0,"costUSD":0.04211325,"contextWindow":200000}},"permission_denials":[],"uuid":"6a2c9b3e-7d8f-4c1b-8e5a-61728394a5b6"}"#,
    "\n",
);

/// `claude -p ... --output-format json`: one result object (same fields as the stream's last
/// event).
const CLAUDE_JSON: &str = concat!(
    r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2950,"duration_api_ms":3120,"num_turns":1,"result":"Done.","session_id":"7b3d0c4f-8e9a-4d2c-9f6b-728394a5b6c7","total_cost_usd":0.0125,"usage":{"input_tokens":3,"cache_creation_input_tokens":1200,"cache_read_input_tokens":9000,"output_tokens":40,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard"},"modelUsage":{"claude-haiku-4-5-20251001":{"inputTokens":3,"outputTokens":40,"cacheReadInputTokens":9000,"cacheCreationInputTokens":1200,"costUSD":0.0125}},"permission_denials":[],"uuid":"8c4e1d5a-9f0b-4e3d-8a7c-8394a5b6c7d8"}"#,
    "\n",
);

/// `codex exec --json` output: thread/turn/item events and `turn.completed` whose usage is
/// the thread's running total (so the second turn's numbers include the first's). Shapes
/// from openai/codex#19022 and #5276 (`turn.completed.usage` with input_tokens,
/// cached_input_tokens, output_tokens), #19308 (`reasoning_output_tokens` added), #17539
/// (the totals are cumulative for the session) and zed-industries/codex-acp#99 (item events).
const CODEX_TRANSCRIPT: &str = concat!(
    r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}"#,
    "\n",
    r#"{"type":"turn.started"}"#,
    "\n",
    r#"{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":"bash -lc ls","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#,
    "\n",
    r#"{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":"bash -lc ls","aggregated_output":"a.rs\nb.rs\n","exit_code":0,"status":"completed"}}"#,
    "\n",
    r#"{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Two test files."}}"#,
    "\n",
    r#"{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122,"reasoning_output_tokens":64}}"#,
    "\n",
    r#"{"type":"turn.started"}"#,
    "\n",
    r#"{"type":"item.completed","item":{"id":"item_2","type":"reasoning","text":"**Checking the second file**"}}"#,
    "\n",
    r#"{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"Both pass."}}"#,
    "\n",
    r#"{"type":"turn.completed","usage":{"input_tokens":51200,"cached_input_tokens":49920,"output_tokens":310,"reasoning_output_tokens":128}}"#,
    "\n",
);

/// A fake CLI at `bin/NAME` that records its arguments (`NAME.args` in its cwd) and prints
/// `stream-json.jsonl` or `json.jsonl` from the temp dir depending on `--output-format`
/// (Claude), or `codex.jsonl` (Codex).
fn fake_cli(d: &TestDaemon, name: &str) {
    let dir = d.dir().display();
    d.write_script(
        &format!("bin/{name}"),
        &format!(
            r#"#!/bin/sh
printf '%s\n' "$@" > {name}.args
case "$*" in
  *"--output-format stream-json"*) cat {dir}/stream-json.jsonl ;;
  *"--output-format json"*) cat {dir}/json.jsonl ;;
  *) cat {dir}/codex.jsonl ;;
esac
"#
        ),
    );
}

#[test]
fn claude_stream_json_counts_the_result_once_not_the_messages() {
    let d = daemon_with(
        &[],
        |d| {
            fake_cli(d, "claude");
            d.write_file("stream-json.jsonl", CLAUDE_TRANSCRIPT);
            d.write_file("json.jsonl", CLAUDE_JSON);
        },
        |dir| {
            format!(
                r#"[agents.claude]
command = ["{dir}/bin/claude", "-p", "{{prompt}}", "--output-format", "stream-json", "--verbose"]
usage = "claude-stream-json"

[agents.claude-json]
command = ["{dir}/bin/claude", "-p", "{{prompt}}", "--output-format", "json"]
usage = "claude-stream-json"
"#,
                dir = dir.display()
            )
        },
    );
    let p = d.write_plan(
        "claude.toml",
        r#"name = "claude"

[[steps]]
id = "stream"
agent = "claude"
prompt = "list the tests"

[[steps]]
id = "single"
needs = ["stream"]
agent = "claude-json"
prompt = "and again"
"#,
    );
    let id = d.submit(&["--wait", &p], 0);
    assert_eq!(
        read_work(&d, "claude.args"),
        "-p\nand again\n--output-format\njson\n",
        "the last run of the fake claude got other arguments"
    );
    let v = d.status(&id);
    // The result's usage: input 14 + 5430 cache creation + 44720 cache read, output 86, at
    // its total_cost_usd. Adding the assistant messages on top would give more.
    let stream = attempt_n(step(&v, "stream"), 1);
    assert_eq!(stream["outcome"], "success", "{v}");
    assert_eq!(
        attempts(step(&v, "stream")).len(),
        1,
        "an `allowed` rate-limit event is no limit: {v}"
    );
    assert_usage(
        &stream["usage"],
        50_164,
        86,
        0.04211325,
        "stream-json attempt",
    );
    assert_usage(
        &step(&v, "stream")["usage"],
        50_164,
        86,
        0.04211325,
        "stream-json step",
    );
    let single = attempt_n(step(&v, "single"), 1);
    assert_usage(&single["usage"], 10_203, 40, 0.0125, "json attempt");
    assert_usage(&v["usage"], 60_367, 126, 0.05461325, "objective");
    let u = d.ctl_json(&["usage", &id]);
    assert_usage(&u, 60_367, 126, 0.05461325, "usage ID");

    // Each call's input is reported as it happens (a running estimate for budgets), and
    // the result adds only the rest: the reports add up to what the CLI reported.
    let events = d.events(&id);
    let usage = of_kind(&events, "usage");
    let stream: Vec<&Value> = usage
        .iter()
        .copied()
        .filter(|e| e["step_id"] == "stream")
        .collect();
    assert_eq!(stream.len(), 3, "two calls, then the result: {stream:?}");
    let sum = |k: &str| -> u64 { stream.iter().map(|e| int(&e[k], k)).sum() };
    assert_eq!(
        (
            sum("input_tokens"),
            sum("cache_write_tokens"),
            sum("cache_read_tokens"),
            sum("output_tokens")
        ),
        (14, 5430, 44720, 86)
    );
    let cost: f64 = stream.iter().map(|e| num(&e["cost_usd"], "cost")).sum();
    assert!((cost - 0.04211325).abs() < 1e-9, "{cost}");
    // The transcript stays in the log.
    let log = String::from_utf8_lossy(&d.logs(&[&id, "stream", "--stdout"])).into_owned();
    assert_eq!(log, CLAUDE_TRANSCRIPT);
}

#[test]
fn codex_json_cumulative_totals_become_priced_deltas() {
    let d = daemon_with(
        &[],
        |d| {
            fake_cli(d, "codex");
            d.write_file("codex.jsonl", CODEX_TRANSCRIPT);
        },
        |dir| {
            format!(
                r#"[prices.gpt-5-codex]
input_per_mtok = 1.25
output_per_mtok = 10.0

[agents.codex]
command = ["{dir}/bin/codex", "exec", "--json", "{{prompt}}"]
usage = "codex-json"
model = "gpt-5-codex"
"#,
                dir = dir.display()
            )
        },
    );
    let id = d.submit(
        &["--wait", "--agent", "codex", "--prompt", "check the tests"],
        0,
    );
    assert_eq!(
        read_work(&d, "codex.args"),
        "exec\n--json\ncheck the tests\n"
    );
    let v = d.status(&id);
    // Turn 1: 24763 in, 122 out; turn 2 (cumulative 51200/310): 26437 in, 188 out.
    // Priced at $1.25 / $10 per million: 0.03217375 + 0.03492625.
    assert_usage(
        &attempt_n(&v["steps"][0], 1)["usage"],
        51_200,
        310,
        0.0671,
        "attempt",
    );
    assert_usage(&v["usage"], 51_200, 310, 0.0671, "objective");
    // Codex's `input_tokens` includes `cached_input_tokens`: kept apart.
    assert_eq!(v["usage"]["cache_read_tokens"], 49_920, "{v}");
    assert_eq!(v["usage"]["input_tokens"], 1_280, "{v}");

    let events = d.events(&id);
    let usage = of_kind(&events, "usage");
    assert_eq!(usage.len(), 2, "{usage:?}");
    assert_usage(usage[0], 24_763, 122, 0.03217375, "turn 1 delta");
    assert_usage(usage[1], 26_437, 188, 0.03492625, "turn 2 delta");
    assert_eq!(usage[1]["model"], "gpt-5-codex", "{}", usage[1]);
    assert_usage(
        &usage[1]["objective_total"],
        51_200,
        310,
        0.0671,
        "running total",
    );
}

// ------------------------------------------------------------------ budgets

/// A command that reports `report` (an `::orch-usage::` JSON) every 50 ms, at most `n` times.
fn spender(report: &str, n: u32) -> String {
    let line = format!("::orch-usage::{report}");
    let quoted = toml::Value::String(format!(
        "i=0; while [ $i -lt {n} ]; do echo '{line}'; i=$((i+1)); sleep 0.05; done"
    ));
    format!("[\"sh\", \"-c\", {quoted}]")
}

/// Parses `PREFIX$U ($O over)`-style numbers out of a budget message.
fn dollars_after(msg: &str, marker: &str) -> f64 {
    let rest = &msg[msg
        .find(marker)
        .unwrap_or_else(|| panic!("`{marker}` not in `{msg}`"))
        + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("no number after `{marker}` in `{msg}`: {e}"))
}

/// Asserts the budget alerts of an objective: one per threshold, in order, each crossing it.
fn assert_alerts(events: &[Value], budget: &str, limit: f64, step_size: f64, thresholds: &[f64]) {
    let alerts = of_kind(events, "budget_alert");
    let percents: Vec<f64> = alerts
        .iter()
        .map(|a| num(&a["percent"], "percent"))
        .collect();
    assert_eq!(percents, thresholds, "budget alerts: {alerts:?}");
    for (a, t) in alerts.iter().zip(thresholds) {
        assert_eq!(a["budget"], budget, "{a}");
        assert!((num(&a["limit"], "limit") - limit).abs() < 1e-9, "{a}");
        let used = num(&a["used"], "used");
        assert!(
            used / limit * 100.0 >= *t,
            "alert at {t}% with only {used} of {limit} used: {a}"
        );
        assert!(
            (used - step_size) / limit * 100.0 < *t,
            "alert at {t}% came late (the report before already crossed it): {a}"
        );
    }
}

#[test]
fn objective_budget_stops_a_spending_step_with_alerts_at_50_80_100() {
    let d = TestDaemon::start();
    let p = d.write_plan(
        "spender.toml",
        &format!(
            r#"name = "spender"
budget_usd = 0.05

[[steps]]
id = "spend"
command = {cmd}

[[steps]]
id = "later"
needs = ["spend"]
command = ["touch", "later.ran"]
"#,
            cmd = spender(r#"{"cost_usd":0.0025}"#, 400)
        ),
    );
    let started = Instant::now();
    let id = d.submit(&["--wait", &p], 1);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the spender was not stopped at the budget (it reports for 20 s)"
    );
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    let s = step(&v, "spend");
    assert_eq!(s["state"], "failed", "{v}");
    let a = attempts(s);
    assert_eq!(
        a.len(),
        1,
        "budget_exceeded is not retried and no new attempt starts: {v}"
    );
    assert_eq!(a[0]["outcome"], "budget_exceeded", "{v}");
    let pid = u32::try_from(int(&a[0]["pid"], "pid")).expect("pid fits u32");
    assert!(
        wait_process_gone(pid, Duration::from_secs(5)),
        "the stopped attempt's process {pid} still runs"
    );
    assert_eq!(step(&v, "later")["state"], "skipped", "{v}");
    assert!(attempts(step(&v, "later")).is_empty(), "{v}");
    assert!(!work_file(&d, "later.ran").exists());

    let msg = v["message"].as_str().unwrap_or("").to_string();
    assert!(
        msg.starts_with("objective budget of $0.05 exhausted: used $"),
        "objective message: `{msg}`"
    );
    let used = dollars_after(&msg, "used $");
    let over = dollars_after(&msg, "($");
    assert!(
        (0.05 - 1e-4..=0.0525 + 1e-4).contains(&used),
        "used ${used} in `{msg}`: the budget was exhausted by the report that reached it"
    );
    assert!(
        (used - 0.05 - over).abs() < 2e-4,
        "`{msg}`: used - limit != over"
    );
    assert_eq!(
        msg,
        format!("objective budget of $0.05 exhausted: used ${used:.4} (${over:.4} over)")
    );
    assert!(num(&v["usage"]["cost_usd"], "cost") >= 0.05 - 1e-9, "{v}");
    assert_eq!(v["budget"]["max_cost_usd"], 0.05, "{v}");

    let events = d.events(&id);
    assert_alerts(&events, "objective_usd", 0.05, 0.0025, &[50.0, 80.0, 100.0]);
    let last_alert = of_kind(&events, "budget_alert")[2]["seq"].clone();
    let ended_at = of_kind(&events, "attempt_ended")[0];
    assert_eq!(ended_at["outcome"], "budget_exceeded", "{ended_at}");
    assert!(int(&ended_at["seq"], "seq") > int(&last_alert, "seq"));

    let u = d.ctl_json(&["usage", &id]);
    assert_eq!(u["budget_usd"], 0.05, "{u}");
    assert!(
        num(&u["budget_used_percent"], "percent") >= 100.0 - 1e-9,
        "{u}"
    );
}

#[test]
fn token_budget_stops_a_step_at_max_tokens() {
    let d = TestDaemon::start();
    let p = d.write_plan(
        "tokens.toml",
        &format!(
            "name = \"tokens\"\nmax_tokens = 1000\n\n[[steps]]\nid = \"talk\"\ncommand = {}\n",
            spender(r#"{"input_tokens":100,"output_tokens":50}"#, 400)
        ),
    );
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    let a = attempts(&v["steps"][0]);
    assert_eq!(a.len(), 1, "{v}");
    assert_eq!(a[0]["outcome"], "budget_exceeded", "{v}");
    // 150 tokens a report: 600 ≥ 50 %, 900 ≥ 80 %, 1050 ≥ 100 %.
    assert_eq!(
        v["message"], "objective token budget of 1000 exhausted: used 1050 tokens (50 over)",
        "{v}"
    );
    let events = d.events(&id);
    assert_alerts(
        &events,
        "objective_tokens",
        1000.0,
        150.0,
        &[50.0, 80.0, 100.0],
    );
    let used: Vec<f64> = of_kind(&events, "budget_alert")
        .iter()
        .map(|a| num(&a["used"], "used"))
        .collect();
    assert_eq!(used, [600.0, 900.0, 1050.0]);
}

/// A daemon-wide budget (`[budget] KEY = 0.01`, alerts at 50 and 100 %) stops the objective
/// spending it and keeps later objectives from starting; `what` is how the message names it.
fn daemon_budget_stops_spending(key: &str, what: &str) {
    let d = daemon_with(
        &[],
        |_| {},
        |_| format!("[budget]\n{key} = 0.01\nalert_percent = [50, 100]\n"),
    );
    let p = d.write_plan(
        "spend.toml",
        &format!(
            "name = \"spend\"\n\n[[steps]]\nid = \"spend\"\ncommand = {}\n",
            spender(r#"{"cost_usd":0.0025}"#, 400)
        ),
    );
    let id = d.submit(&["--wait", &p], 1);
    let v = d.status(&id);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(
        attempts(&v["steps"][0])[0]["outcome"],
        "budget_exceeded",
        "{v}"
    );
    let prefix = format!("{what} budget of $0.01 exhausted: used $");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with(&prefix),
        "objective message: `{msg}`, expected `{prefix}...`"
    );
    let used = dollars_after(msg, "used $");
    assert!((0.01 - 1e-4..=0.0125 + 1e-4).contains(&used), "`{msg}`");
    assert!(
        msg.contains("over)"),
        "the message says by how much: `{msg}`"
    );
    let events = d.events(&id);
    assert_alerts(&events, key, 0.01, 0.0025, &[50.0, 100.0]);

    // Once the budget is used up, nothing new starts.
    let second = d.submit(&["--wait", "--", "touch", "second.ran"], 1);
    let v = d.status(&second);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        attempts(&v["steps"][0]).is_empty(),
        "an attempt started past the {what} budget: {v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{what} budget of $0.01 exhausted")),
        "{v}"
    );
    assert!(!work_file(&d, "second.ran").exists());

    let u = d.ctl_json(&["usage"]);
    assert_eq!(u["budget_usd"], 0.01, "{u}");
    assert!(
        num(&u["budget_used_percent"], "percent") >= 100.0 - 1e-9,
        "{u}"
    );
}

#[test]
fn daily_budget_stops_spending_and_later_objectives_do_not_start() {
    daemon_budget_stops_spending("daily_usd", "daily");
}

#[test]
fn monthly_budget_stops_spending_and_later_objectives_do_not_start() {
    daemon_budget_stops_spending("monthly_usd", "monthly");
}

// ------------------------------------------------------------------ approvals

fn gated_plan(d: &TestDaemon, tag: &str) -> String {
    d.write_plan(
        &format!("gated-{tag}.toml"),
        &format!(
            r#"name = "gated-{tag}"

[[steps]]
id = "prep"
command = ["true"]

[[steps]]
id = "slow"
command = ["sh", "-c", "i=0; while [ ! -e {tag}.go ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 9; sleep 0.02; done"]

[[steps]]
id = "deploy"
needs = ["prep"]
requires_approval = true
command = ["touch", "{tag}-deploy.ran"]

[[steps]]
id = "notify"
needs = ["deploy"]
command = ["touch", "{tag}-notify.ran"]
"#
        ),
    )
}

/// Submits the gated plan and waits until `deploy` waits for approval while `slow` runs
/// (objective still running), then lets `slow` end (objective awaiting approval).
fn until_awaiting_approval(d: &TestDaemon, tag: &str) -> String {
    let id = d.submit(&[&gated_plan(d, tag)], 0);
    let v = d.wait_for_state(
        &id,
        |v| {
            step(v, "deploy")["state"] == "awaiting_approval"
                && step(v, "slow")["state"] == "running"
        },
        STATE_DEADLINE,
    );
    assert_eq!(
        v["state"], "running",
        "a step still runs, so the objective is running: {v}"
    );
    fs::write(work_file(d, &format!("{tag}.go")), "").expect("create the go file");
    d.wait_state(&id, &["awaiting_approval"], STATE_DEADLINE);
    let v = d.status(&id);
    assert_eq!(step(&v, "prep")["state"], "succeeded", "{v}");
    assert_eq!(step(&v, "slow")["state"], "succeeded", "{v}");
    assert!(attempts(step(&v, "deploy")).is_empty(), "{v}");
    assert_eq!(step(&v, "notify")["state"], "waiting", "{v}");
    assert!(!work_file(d, &format!("{tag}-deploy.ran")).exists());
    id
}

/// The audit entries of `action` for objective `id`, once there are `n` (see
/// `TestDaemon::wait_audit`).
fn audited(d: &TestDaemon, action: &str, id: &str, n: usize) -> Vec<Value> {
    d.wait_audit(&format!("{n} `{action}` audit entries for {id}"), |a| {
        a.iter()
            .filter(|e| e.action == action && e.objective_id == id)
            .count()
            >= n
    });
    audit(d)
        .into_iter()
        .filter(|e| e["action"] == action && e["objective_id"] == id)
        .collect()
}

#[test]
fn approve_starts_a_gated_step_and_is_audited() {
    let d = TestDaemon::start_with(&["--max-parallel", "4"], &[]);
    let id = until_awaiting_approval(&d, "yes");

    // Only a step that waits for approval can be approved.
    for (s, why) in [
        ("notify", "it is waiting for its needs"),
        ("prep", "it has run"),
        ("nope", "no such step"),
    ] {
        let out = d.ctl(&["approve", &id, s]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "approve {s} ({why})\n{}",
            describe(&out)
        );
        assert!(
            !stderr(&out).is_empty(),
            "approve {s}: no message\n{}",
            describe(&out)
        );
    }
    let out = d.ctl(&["approve", &id, "notify"]);
    assert!(
        stderr(&out).contains("approval"),
        "the refusal should say the step is not awaiting approval\n{}",
        describe(&out)
    );

    let out = d.ctl(&["approve", &id, "deploy"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(work_file(&d, "yes-deploy.ran").exists());
    assert!(work_file(&d, "yes-notify.ran").exists());
    assert_eq!(attempts(step(&v, "deploy")).len(), 1, "{v}");

    // Approving again: the step is no longer waiting.
    let out = d.ctl(&["approve", &id, "deploy"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    let events = d.events(&id);
    let requested = of_kind(&events, "approval_requested");
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(requested[0]["step_id"], "deploy", "{}", requested[0]);
    let answered = of_kind(&events, "approval_answered");
    assert_eq!(answered.len(), 1, "{answered:?}");
    let a = answered[0];
    assert_eq!(a["step_id"], "deploy", "{a}");
    assert_eq!(a["approved"], true, "{a}");
    assert_eq!(int(&a["by_uid"], "by_uid"), my_uid(), "{a}");
    let started = events
        .iter()
        .find(|e| e["kind"] == "attempt_started" && e["step_id"] == "deploy")
        .unwrap_or_else(|| panic!("deploy never started: {events:?}"));
    assert!(int(&requested[0]["seq"], "seq") < int(&a["seq"], "seq"));
    assert!(int(&a["seq"], "seq") < int(&started["seq"], "seq"));

    let entries = audited(&d, "approve", &id, 1);
    let ok: Vec<&Value> = entries.iter().filter(|e| e["result"] == "ok").collect();
    assert_eq!(ok.len(), 1, "one successful approve: {entries:?}");
    assert_eq!(int(&ok[0]["uid"], "uid"), my_uid(), "{}", ok[0]);
    assert!(
        entries
            .iter()
            .any(|e| e["result"].as_str().is_some_and(|r| r.starts_with("error"))),
        "refused approves are audited as errors: {entries:?}"
    );
}

#[test]
fn deny_fails_the_step_with_the_reason_and_skips_its_dependents() {
    let d = TestDaemon::start_with(&["--max-parallel", "4"], &[]);
    let id = until_awaiting_approval(&d, "no");
    let reason = "not on a Friday";
    let out = d.ctl(&["deny", &id, "deploy", "--reason", reason]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "failed", "{v}");
    let deploy = step(&v, "deploy");
    assert_eq!(deploy["state"], "failed", "{v}");
    assert!(attempts(deploy).is_empty(), "a denied step never runs: {v}");
    assert!(
        deploy["message"].as_str().unwrap_or("").contains(reason),
        "the step's message does not give the reason: {v}"
    );
    assert!(
        v["message"].as_str().unwrap_or("").contains("deploy"),
        "the objective's message does not name the step: {v}"
    );
    assert_eq!(step(&v, "notify")["state"], "skipped", "{v}");
    assert!(!work_file(&d, "no-deploy.ran").exists());
    assert!(!work_file(&d, "no-notify.ran").exists());

    let out = d.ctl(&["deny", &id, "deploy", "--reason", "again"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    let events = d.events(&id);
    let answered = of_kind(&events, "approval_answered");
    assert_eq!(answered.len(), 1, "{answered:?}");
    let a = answered[0];
    assert_eq!(a["approved"], false, "{a}");
    assert_eq!(a["reason"], reason, "{a}");
    assert_eq!(int(&a["by_uid"], "by_uid"), my_uid(), "{a}");

    let entries = audited(&d, "deny", &id, 1);
    let ok: Vec<&Value> = entries.iter().filter(|e| e["result"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{entries:?}");
    assert_eq!(int(&ok[0]["uid"], "uid"), my_uid(), "{}", ok[0]);
}

// ------------------------------------------------------------------ fallbacks

#[test]
fn fallback_agent_gets_fresh_attempts_from_the_same_checkpoint() {
    let d = daemon_with(
        &[],
        |d| {
            d.write_script(
                "bin/primary",
                r#"#!/bin/sh
echo "primary attempt $ORCH_ATTEMPT: $1"
echo "::orch-checkpoint::{\"by\":\"primary\",\"attempt\":$ORCH_ATTEMPT}"
exit 1
"#,
            );
            d.write_script(
                "bin/backup",
                r#"#!/bin/sh
if [ -n "$ORCH_CHECKPOINT_FILE" ]; then
  cat "$ORCH_CHECKPOINT_FILE" > "backup-$ORCH_ATTEMPT.checkpoint"
else
  echo none > "backup-$ORCH_ATTEMPT.checkpoint"
fi
printf '%s' "$1" > "backup-$ORCH_ATTEMPT.prompt"
if [ ! -e backup.failed-once ]; then touch backup.failed-once; exit 1; fi
echo "backup done"
"#,
            );
        },
        |dir| {
            format!(
                "[agents.primary]\ncommand = [\"{dir}/bin/primary\", \"{{prompt}}\"]\n\n\
                 [agents.backup]\ncommand = [\"{dir}/bin/backup\", \"{{prompt}}\"]\n",
                dir = dir.display()
            )
        },
    );
    let p = d.write_plan(
        "fallback.toml",
        r#"name = "fallback"

[[steps]]
id = "fix"
agent = "primary"
prompt = "fix the flaky test"
fallback = ["backup"]
retry = { max_attempts = 2, initial_backoff = "100ms", jitter = 0.0 }
"#,
    );
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(v["state"], "succeeded", "{v}");
    let s = step(&v, "fix");
    let a = attempts(s);
    let agents_used: Vec<&str> = a
        .iter()
        .map(|x| x["agent"].as_str().unwrap_or(""))
        .collect();
    // primary: its 2 attempts fail; backup: a fresh 2, the first fails, the second succeeds.
    assert_eq!(
        agents_used,
        ["primary", "primary", "backup", "backup"],
        "{v}"
    );
    let outcomes: Vec<&str> = a
        .iter()
        .map(|x| x["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        ["exit_failure", "exit_failure", "exit_failure", "success"],
        "{v}"
    );

    // Both backup attempts started from primary's last checkpoint.
    let last = json!({"by": "primary", "attempt": 2});
    for n in [3, 4] {
        let text = read_work(&d, &format!("backup-{n}.checkpoint"));
        let got: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("attempt {n} got no checkpoint JSON ({e}): {text}"));
        assert_eq!(got, last, "attempt {n}'s ORCH_CHECKPOINT_FILE");
        assert_eq!(
            read_work(&d, &format!("backup-{n}.prompt")),
            "fix the flaky test"
        );
    }
    assert_eq!(s["checkpoint"], last, "{v}");

    let events = d.events(&id);
    let started: Vec<&str> = of_kind(&events, "attempt_started")
        .iter()
        .map(|e| e["agent"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        started,
        ["primary", "primary", "backup", "backup"],
        "{events:?}"
    );
}

// ------------------------------------------------------------------ rate limits

#[test]
fn rate_limited_step_waits_for_the_reset_without_using_a_retry() {
    let d = daemon_with(
        &[],
        |d| {
            d.write_script(
                "bin/limited",
                r#"#!/bin/sh
if [ "$ORCH_ATTEMPT" = 1 ]; then
  echo "::orch-usage::{\"input_tokens\":10,\"rate_limited_until\":\"$1\"}"
  echo "429: rate limited" >&2
  exit 1
fi
echo "attempt $ORCH_ATTEMPT ran"
"#,
            );
        },
        |_| String::new(),
    );
    let (until, until_ms) = in_secs(3);
    let p = d.write_plan(
        "limited.toml",
        &format!(
            r#"name = "limited"

[[steps]]
id = "ask"
command = ["{dir}/bin/limited", "{until}"]
retry = {{ max_attempts = 1 }}
"#,
            dir = d.dir().display()
        ),
    );
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(
        v["state"], "succeeded",
        "one allowed attempt, yet a second one ran: {v}"
    );
    let a = attempts(step(&v, "ask"));
    assert_eq!(a.len(), 2, "{v}");
    assert_eq!(a[0]["outcome"], "exit_failure", "{v}");
    assert!(
        ms(&a[0]["ended_at"], "ended_at") < until_ms,
        "the test machine was too slow: attempt 1 ended after the reset time: {v}"
    );
    assert_eq!(a[1]["outcome"], "success", "{v}");
    let second = ms(&a[1]["started_at"], "started_at");
    assert!(
        second >= until_ms,
        "attempt 2 started at {second}, before the reset at {until_ms}: {v}"
    );
    assert!(
        second < until_ms + 5_000,
        "attempt 2 started {} ms after the reset",
        second - until_ms
    );

    let events = d.events(&id);
    let retry = of_kind(&events, "retry_scheduled");
    assert_eq!(retry.len(), 1, "{retry:?}");
    let due = ms(&retry[0]["due_at"], "due_at");
    assert!(
        (due - until_ms).abs() <= 1,
        "retry due at {due}, the reset is at {until_ms}: {}",
        retry[0]
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "step_state" && e["state"] == "backoff"),
        "the step never waited in backoff: {events:?}"
    );
}

#[test]
fn claude_rejected_rate_limit_event_waits_until_resets_at() {
    let d = daemon_with(
        &[],
        |d| {
            let dir = d.dir().display();
            d.write_script(
                "bin/claude",
                &format!(
                    "#!/bin/sh\nif [ \"$ORCH_ATTEMPT\" = 1 ]; then cat {dir}/limited.jsonl; exit 1; fi\ncat {dir}/stream-json.jsonl\n"
                ),
            );
            d.write_file("stream-json.jsonl", CLAUDE_TRANSCRIPT);
        },
        |dir| {
            format!(
                "[agents.claude]\ncommand = [\"{dir}/bin/claude\", \"-p\", \"{{prompt}}\", \"--output-format\", \"stream-json\", \"--verbose\"]\nusage = \"claude-stream-json\"\n",
                dir = dir.display()
            )
        },
    );
    // What Claude Code prints when the plan's limit is hit: a rejected rate_limit_event
    // (resetsAt in epoch seconds) before an error result (desplega-ai/agent-swarm#508,
    // anthropics/claude-code#57096).
    let reset_s = chrono::Utc::now().timestamp() + 3;
    d.write_file(
        "limited.jsonl",
        &format!(
            concat!(
                r#"{{"type":"system","subtype":"init","cwd":"/work","session_id":"9d5f2e6b-0a1c-4f4e-8b8d-94a5b6c7d8e9","tools":["Bash"],"model":"claude-sonnet-4-5-20250929","permissionMode":"default","apiKeySource":"none","claude_code_version":"2.1.83","uuid":"0e6a3f7c-1b2d-4a5f-9c9e-a5b6c7d8e9f0"}}"#,
                "\n",
                r#"{{"type":"rate_limit_event","rate_limit_info":{{"status":"rejected","resetsAt":{reset},"rateLimitType":"five_hour","overageStatus":"rejected","overageDisabledReason":"org_level_disabled","isUsingOverage":false}},"uuid":"1f7b4a8d-2c3e-4b6a-8d0f-b6c7d8e9f001","session_id":"9d5f2e6b-0a1c-4f4e-8b8d-94a5b6c7d8e9"}}"#,
                "\n",
                r#"{{"type":"result","subtype":"success","is_error":true,"duration_ms":412,"duration_api_ms":0,"num_turns":1,"result":"You've hit your limit · resets 3pm (UTC)","session_id":"9d5f2e6b-0a1c-4f4e-8b8d-94a5b6c7d8e9","total_cost_usd":0,"usage":{{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0,"server_tool_use":{{"web_search_requests":0,"web_fetch_requests":0}},"service_tier":"standard"}},"modelUsage":{{}},"permission_denials":[],"uuid":"2a8c5b9e-3d4f-4c7b-9e1a-c7d8e9f00112"}}"#,
                "\n",
            ),
            reset = reset_s
        ),
    );
    let p = d.write_plan(
        "claude-limited.toml",
        "[[steps]]\nid = \"ask\"\nagent = \"claude\"\nprompt = \"hello\"\nretry = { max_attempts = 1 }\n",
    );
    let id = d.submit(&["--wait", &p], 0);
    let v = d.status(&id);
    assert_eq!(v["state"], "succeeded", "{v}");
    let a = attempts(step(&v, "ask"));
    assert_eq!(a.len(), 2, "{v}");
    assert_eq!(a[1]["agent"], "claude", "{v}");
    assert!(
        ms(&a[1]["started_at"], "started_at") >= reset_s * 1000,
        "attempt 2 started before resetsAt: {v}"
    );
    assert_usage(
        &v["usage"],
        50_164,
        86,
        0.04211325,
        "usage after the limited attempt",
    );
    let events = d.events(&id);
    let retry = of_kind(&events, "retry_scheduled");
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(
        ms(&retry[0]["due_at"], "due_at"),
        reset_s * 1000,
        "{}",
        retry[0]
    );
}

#[test]
fn fallback_on_rate_limit_goes_to_the_fallback_at_once() {
    let d = daemon_with(
        &[],
        |d| {
            // Rate limited for an hour: waiting for the reset would outlast the test.
            d.write_script(
                "bin/limited",
                "#!/bin/sh\necho \"::orch-usage::{\\\"rate_limited_until\\\":\\\"$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)\\\"}\"\nexit 1\n",
            );
            d.write_script(
                "bin/steady",
                "#!/bin/sh\necho \"steady: $1 shared=$SHARED primary=${PRIMARY_ONLY:-none} step=$STEP_VAR\" > steady.ran\n",
            );
        },
        |dir| {
            format!(
                "[agents.limited]\ncommand = [\"{dir}/bin/limited\", \"{{prompt}}\"]\n\
                 env = {{ SHARED = \"limited\", PRIMARY_ONLY = \"1\" }}\n\n\
                 [agents.steady]\ncommand = [\"{dir}/bin/steady\", \"{{prompt}}\"]\n\
                 env = {{ SHARED = \"steady\" }}\n",
                dir = dir.display()
            )
        },
    );
    let p = d.write_plan(
        "switch.toml",
        r#"[[steps]]
id = "ask"
agent = "limited"
prompt = "hello"
fallback = ["steady"]
fallback_on_rate_limit = true
retry = { max_attempts = 3, initial_backoff = "30s" }
env = { STEP_VAR = "x" }
"#,
    );
    let started = Instant::now();
    let id = d.submit(&["--wait", &p], 0);
    assert!(started.elapsed() < Duration::from_secs(15));
    let v = d.status(&id);
    let a = attempts(step(&v, "ask"));
    let used: Vec<&str> = a
        .iter()
        .map(|x| x["agent"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(used, ["limited", "steady"], "{v}");
    // The fallback runs with its own profile's env (and the step's), not the first agent's.
    assert_eq!(
        read_work(&d, "steady.ran"),
        "steady: hello shared=steady primary=none step=x\n"
    );
    let events = d.events(&id);
    assert!(
        of_kind(&events, "retry_scheduled").is_empty(),
        "no waiting for the reset (or a retry) with fallback_on_rate_limit: {events:?}"
    );
}

// ------------------------------------------------------------------ dry run and validation

#[test]
fn dry_run_prints_the_resolved_plan_and_stores_nothing() {
    let d = daemon_with(
        &[],
        |_| {},
        |_| "[agents.echoer]\ncommand = [\"printf\", \"%s\", \"{prompt}\"]\n".to_string(),
    );
    let prompt = "say $(hello) 'quoted'";
    let p = d.write_plan(
        "dry.toml",
        &format!(
            r#"name = "dry"

[defaults]
timeout = "90s"
retry = {{ max_attempts = 2, initial_backoff = "1s" }}

[[steps]]
id = "a"
agent = "echoer"
prompt = {prompt}

[[steps]]
id = "b"
needs = ["a"]
command = ["true"]
timeout = "5s"

[[steps]]
id = "c"
needs = ["a"]
command = ["true"]
requires_approval = true

[[steps]]
id = "d"
needs = ["b", "c"]
command = ["touch", "d.ran"]
"#,
            prompt = toml::Value::String(prompt.into())
        ),
    );

    let out = d.ctl(&["submit", "--dry-run", &p]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.to_lowercase().contains("dry run"), "{text}");
    let order: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("Execution order"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(order.len(), 3, "three groups:\n{text}");
    assert!(order[0].starts_with("1. a"), "{text}");
    assert!(
        order[1].starts_with("2. b, c") && order[1].contains("parallel"),
        "{text}"
    );
    assert!(order[2].starts_with("3. d"), "{text}");

    let v = d.ctl_json(&["submit", "--dry-run", &p]);
    assert_eq!(v["groups"], json!([["a"], ["b", "c"], ["d"]]), "{v}");
    let steps = array(&v["steps"], "steps");
    let get = |id: &str| {
        steps
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id} in {v}"))
    };
    assert_eq!(get("a")["command"], json!(["printf", "%s", prompt]), "{v}");
    assert_eq!(get("a")["agent"], "echoer", "{v}");
    assert_eq!(get("a")["timeout_ms"], 90_000, "plan defaults apply: {v}");
    assert_eq!(
        get("b")["timeout_ms"],
        5_000,
        "the step's own value wins: {v}"
    );
    assert_eq!(get("a")["retry"]["max_attempts"], 2, "{v}");
    assert_eq!(get("a")["retry"]["initial_backoff_ms"], 1000, "{v}");
    assert_eq!(get("c")["requires_approval"], true, "{v}");
    assert_eq!(get("d")["needs"], json!(["b", "c"]), "{v}");
    assert_eq!(
        get("d")["workdir"],
        utf8(d.work_dir()),
        "the workdir is resolved to the caller's cwd: {v}"
    );

    assert!(d.list(&[]).is_empty(), "a dry run stored an objective");
    assert!(!work_file(&d, "d.ran").exists());
    let u = d.ctl_json(&["usage"]);
    assert_usage(&u, 0, 0, 0.0, "usage after dry runs");

    // The table shows the agent's command as it will run, prompt included.
    assert!(
        text.contains("printf") && text.contains(prompt),
        "the table does not show the agent command expanded:\n{text}"
    );
}

#[test]
fn agent_plan_errors_name_file_step_and_key_and_store_nothing() {
    let d = daemon_with(
        &[],
        |_| {},
        |_| "[agents.echoer]\ncommand = [\"printf\", \"%s\", \"{prompt}\"]\n".to_string(),
    );
    let many: String = (0..1001)
        .map(|i| format!("[[steps]]\nid = \"s{i}\"\ncommand = [\"true\"]\n"))
        .collect();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown-agent.toml",
            "[[steps]]\nid = \"write\"\nagent = \"claudia\"\nprompt = \"hi\"\n".into(),
            vec!["steps[write].agent", "unknown agent", "claudia"],
        ),
        (
            "unknown-fallback.toml",
            "[[steps]]\nid = \"write\"\nagent = \"echoer\"\nprompt = \"hi\"\nfallback = [\"echoer\", \"codez\"]\n".into(),
            vec!["steps[write].fallback", "codez"],
        ),
        (
            "cycle3.toml",
            "[[steps]]\nid = \"x\"\ncommand = [\"true\"]\n\
             [[steps]]\nid = \"a\"\nneeds = [\"c\"]\ncommand = [\"true\"]\n\
             [[steps]]\nid = \"b\"\nneeds = [\"a\"]\ncommand = [\"true\"]\n\
             [[steps]]\nid = \"c\"\nneeds = [\"b\"]\ncommand = [\"true\"]\n".into(),
            vec!["cycle", "needs"],
        ),
        (
            "prompt-without-agent.toml",
            "[[steps]]\nid = \"p\"\ncommand = [\"true\"]\nprompt = \"hi\"\n".into(),
            vec!["steps[p].prompt"],
        ),
        (
            "agent-and-command.toml",
            "[[steps]]\nid = \"both\"\nagent = \"echoer\"\nprompt = \"hi\"\ncommand = [\"true\"]\n".into(),
            vec!["steps[both]"],
        ),
        (
            "bad-retry.toml",
            "[[steps]]\nid = \"r\"\nagent = \"echoer\"\nprompt = \"hi\"\nretry = { max_attempts = 0 }\n".into(),
            vec!["steps[r].retry.max_attempts"],
        ),
        (
            "bad-limit.toml",
            "[[steps]]\nid = \"l\"\nagent = \"echoer\"\nprompt = \"hi\"\nlimits = { pids = 0 }\n".into(),
            vec!["steps[l].limits.pids"],
        ),
        ("too-many-steps.toml", many, vec!["steps", "1000"]),
    ];
    let mut failures = Vec::new();
    for (name, text, words) in &cases {
        let path = d.write_plan(name, text);
        for dry in [false, true] {
            let mut args = vec!["submit"];
            if dry {
                args.push("--dry-run");
            }
            args.push(&path);
            let out = d.ctl(&args);
            let exact: Vec<&str> = std::iter::once(*name)
                .chain(words.iter().copied())
                .collect();
            let problems = refusal_problems(&out, 2, &exact, &[]);
            if !problems.is_empty() {
                failures.push(format!(
                    "{name} (dry run: {dry}): {}\n{}",
                    problems.join("; "),
                    describe(&out)
                ));
            }
        }
    }
    // The cycle is named: every step on it, in order, and not the step off it.
    let out = d.ctl(&["submit", &d.write_plan("cycle3.toml", &cases[2].1)]);
    let err = stderr(&out);
    let named = ["a -> c -> b -> a", "c -> b -> a -> c", "b -> a -> c -> b"]
        .iter()
        .any(|c| err.contains(c));
    if !named {
        failures.push(format!(
            "cycle3.toml: the message does not name the cycle a -> c -> b -> a\n{}",
            describe(&out)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(d.list(&[]).is_empty(), "an invalid plan was stored");
}

// ------------------------------------------------------------------ config reload

#[test]
fn config_reload_applies_a_good_config_and_keeps_the_old_one_on_error() {
    let alpha = "[agents.alpha]\ncommand = [\"printf\", \"%s\", \"{prompt}\"]\n";
    let beta = "[agents.beta]\ncommand = [\"printf\", \"beta:%s\", \"{prompt}\"]\n";
    let mut d = TestDaemon::prepare_with_config(alpha, &[]);
    d.launch();
    let config = d.dir().join("orchd.toml");
    let names = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(agent_names(&d), names(&["alpha", "shell"]));

    // A good config: applied, and usable at once.
    fs::write(&config, format!("{alpha}\n{beta}")).expect("write the config");
    let out = d.ctl(&["daemon", "reload"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(agent_names(&d), names(&["alpha", "beta", "shell"]));
    let id = d.submit(&["--wait", "--agent", "beta", "--prompt", "hi"], 0);
    let sid = d.status(&id)["steps"][0]["id"]
        .as_str()
        .expect("step id")
        .to_string();
    assert_eq!(
        String::from_utf8_lossy(&d.logs(&[&id, &sid, "--stdout"])),
        "beta:hi"
    );

    // A bad one: refused naming the key; the old config stays in force.
    fs::write(
        &config,
        format!("{alpha}\n{beta}\n[agents.bad]\ncommand = [\"true\"]\nusage = \"magic\"\n"),
    )
    .expect("write the config");
    let refused = d.ctl(&["daemon", "reload"]);
    let out = &refused;
    assert!(
        !out.status.success(),
        "a bad config was accepted\n{}",
        describe(out)
    );
    let err = stderr(out);
    assert!(
        err.contains("agents.bad.usage") && err.contains("magic"),
        "the refusal does not name the key\n{}",
        describe(out)
    );
    assert_eq!(agent_names(&d), names(&["alpha", "beta", "shell"]));
    let out = d.ctl(&["submit", "--agent", "bad", "--prompt", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    d.wait_audit("two reload audit entries", |a| {
        a.iter().filter(|e| e.action == "reload").count() >= 2
    });
    let entries: Vec<Value> = audit(&d)
        .into_iter()
        .filter(|e| e["action"] == "reload")
        .collect();
    assert!(entries.iter().any(|e| e["result"] == "ok"), "{entries:?}");
    assert!(
        entries.iter().any(|e| e["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("error") && r.contains("agents.bad.usage"))),
        "{entries:?}"
    );
    for e in &entries {
        assert_eq!(int(&e["uid"], "uid"), my_uid(), "{e}");
    }

    // SIGHUP: the same, by signal.
    let pid = d.pid();
    let gamma = "[agents.gamma]\ncommand = [\"true\"]\n";
    fs::write(&config, format!("{alpha}\n{beta}\n{gamma}")).expect("write the config");
    signal_pid(pid, Signal::SIGHUP).expect("send SIGHUP");
    // A reload announces itself by no event: poll the agents (over gRPC).
    poll_until("gamma after SIGHUP", STATE_DEADLINE, || {
        let agents = block_on(async {
            d.client()
                .await
                .list_agents(ListAgentsRequest {})
                .await
                .unwrap_or_else(|e| panic!("ListAgents: {e}"))
                .into_inner()
                .agents
        });
        agents.iter().any(|a| a.name == "gamma").then_some(())
    });
    assert_eq!(agent_names(&d), names(&["alpha", "beta", "gamma", "shell"]));

    fs::write(
        &config,
        format!("{alpha}\n[agents.worse]\ncommand = [\"true\"]\nusage = \"telepathy\"\n"),
    )
    .expect("write the config");
    signal_pid(pid, Signal::SIGHUP).expect("send SIGHUP");
    // Nor does a refused one, but in the daemon's log.
    poll_until(
        "the refusal of the SIGHUP config in the log",
        STATE_DEADLINE,
        || d.log_text().contains("telepathy").then_some(()),
    );
    assert_eq!(
        agent_names(&d),
        names(&["alpha", "beta", "gamma", "shell"]),
        "a refused SIGHUP config changed the agents"
    );
    // Still serving.
    d.submit(&["--wait", "--agent", "gamma", "--prompt", "x"], 0);
    let status = d.stop();
    assert!(status.success(), "orchd exited with {status:?}");

    // The daemon refused the call (its config, not the caller's input, is bad): exit 1.
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a refused reload exits 1\n{}",
        describe(&refused)
    );
}

// ------------------------------------------------------------------ example plans

fn example(name: &str) -> String {
    format!("{}/docs/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn example_hello_plan_runs_as_written() {
    let d = TestDaemon::start();
    let id = d.submit(&["--wait", &example("hello.toml")], 0);
    let v = d.status(&id);
    assert_eq!(v["name"], "hello", "{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    for s in ["prepare", "count", "date"] {
        assert_eq!(step(&v, s)["state"], "succeeded", "{v}");
    }
    assert_eq!(step(&v, "count")["checkpoint"], json!({"done": 3}), "{v}");
    assert_eq!(step(&v, "prepare")["progress"]["percent"], 100.0, "{v}");
    let events = d.events(&id);
    assert_eq!(
        of_kind(&events, "checkpoint").len(),
        3,
        "every checkpoint is an event"
    );
    let log = String::from_utf8_lossy(&d.logs(&[&id, "count", "--stdout"])).into_owned();
    assert!(log.contains("count 3"), "{log}");
}

/// A TOML file of docs/examples, parsed.
fn example_toml(name: &str) -> toml::Table {
    let path = example(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not TOML: {e}"))
}

/// The prompt of step `id` in docs/examples/agent-plan.toml.
fn agent_plan_prompt(id: &str) -> String {
    let plan = example_toml("agent-plan.toml");
    plan["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"].as_str() == Some(id)))
        .and_then(|s| s.get("prompt"))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("agent-plan.toml has no step `{id}` with a prompt"))
        .to_string()
}

#[test]
fn example_agent_plan_dry_runs_with_the_example_configs() {
    // Every example config that defines the profiles the plan names.
    let configs: Vec<&str> = ["orchd.toml", "agents.toml"]
        .into_iter()
        .filter(|c| Path::new(&example(c)).exists())
        .filter(|c| {
            example_toml(c)
                .get("agents")
                .and_then(|a| a.get("claude"))
                .is_some()
        })
        .collect();
    assert!(
        !configs.is_empty(),
        "no example config defines the claude profile"
    );
    let find_prompt = agent_plan_prompt("find");
    for config in configs {
        let claude: Vec<String> = example_toml(config)["agents"]["claude"]["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{config}: agents.claude.command is not an array"))
            .iter()
            .map(|a| {
                a.as_str()
                    .expect("argv element")
                    .replace("{prompt}", &find_prompt)
            })
            .collect();
        let d = TestDaemon::start_with(&["--config", &example(config)], &[]);
        let v = d.ctl_json(&["submit", "--dry-run", &example("agent-plan.toml")]);
        assert_eq!(
            v["groups"],
            json!([["find"], ["fix"], ["verify"]]),
            "{config}: {v}"
        );
        let find = &v["steps"][0];
        assert_eq!(find["id"], "find", "{config}: {v}");
        assert_eq!(
            find["command"],
            json!(claude),
            "{config}: the expanded claude command: {v}"
        );
        assert_eq!(v["steps"][1]["requires_approval"], true, "{config}: {v}");
        assert_eq!(v["steps"][1]["fallback"], json!(["codex"]), "{config}: {v}");
        assert_eq!(
            find["timeout_ms"],
            20 * 60_000,
            "{config}: plan defaults: {v}"
        );
        assert!(
            d.list(&[]).is_empty(),
            "{config}: a dry run stored an objective"
        );
        let list = agents(&d);
        assert_eq!(list["claude"]["usage"], "claude-stream-json", "{config}");
        assert_eq!(list["codex"]["usage"], "codex-json", "{config}");
        assert!(list.contains_key("shell"), "{config}: no shell profile");
    }
}

#[test]
fn example_agent_plan_runs_with_shell_stand_ins() {
    // `claude` and `codex` become shell-backed profiles; `cargo` (run by the verify step) is a
    // stand-in on the PATH the client sends.
    let d = daemon_with(
        &["--max-parallel", "4"],
        |d| {
            d.write_script("bin/cargo", "#!/bin/sh\necho \"stand-in cargo $*\"\n");
        },
        |_| {
            r#"[agents.claude]
command = ["bash", "-c", "printf 'claude stand-in: %s\n' \"$0\"", "{prompt}"]

[agents.codex]
command = ["bash", "-c", "printf 'codex stand-in: %s\n' \"$0\"", "{prompt}"]
"#
            .to_string()
        },
    );
    let path = format!(
        "{}:{}",
        d.dir().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = d.ctl_command(&["submit", &example("agent-plan.toml")]);
    cmd.env("PATH", &path);
    let out = crate::support::run_deadline(&mut cmd, crate::support::CMD_DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));
    let id = crate::support::ulid_first_line(&out);

    let awaiting_or_ended = ["awaiting_approval", "succeeded", "failed", "cancelled"];
    d.wait_state(&id, &awaiting_or_ended, STATE_DEADLINE);
    let v = d.status(&id);
    assert_eq!(v["state"], "awaiting_approval", "{v}");
    assert_eq!(step(&v, "fix")["state"], "awaiting_approval", "{v}");
    let out = d.ctl(&["approve", &id, "fix"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["budget"]["max_cost_usd"], 5.0, "{v}");
    assert_eq!(v["budget"]["max_tokens"], 2_000_000, "{v}");
    let find = String::from_utf8_lossy(&d.logs(&[&id, "find", "--stdout"])).into_owned();
    assert_eq!(
        find,
        format!("claude stand-in: {}\n", agent_plan_prompt("find"))
    );
    let fix = String::from_utf8_lossy(&d.logs(&[&id, "fix", "--stdout"])).into_owned();
    assert_eq!(
        fix,
        format!("claude stand-in: {}\n", agent_plan_prompt("fix"))
    );
    let verify = String::from_utf8_lossy(&d.logs(&[&id, "verify", "--stdout"])).into_owned();
    assert_eq!(
        verify.matches("stand-in cargo test --locked").count(),
        3,
        "{verify}"
    );
}
