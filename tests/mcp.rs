//! `orchctl mcp` driven by the official MCP Python SDK (PyPI `mcp`), over stdio and over
//! Streamable HTTP with its bearer token; and raw HTTP requests for the 401 and the
//! 2025-06-18 handshake.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// How long one run of the Python scenario may take.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(120);

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/orch_mcp_client.py")
}

/// The scenario's JSON lines, by their `type`.
fn lines_by_type(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", describe(out));
    stdout(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", describe(out)))
        })
        .collect()
}

fn line<'a>(lines: &'a [Value], kind: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["type"] == kind)
        .unwrap_or_else(|| panic!("no `{kind}` line in {lines:#?}"))
}

/// Checks what the Python client saw in one run of the scenario (`orch_mcp_client.py`).
fn check_scenario(d: &TestDaemon, lines: &[Value], protocol: &str) {
    assert_eq!(line(lines, "protocol")["version"], protocol);
    let tools = line(lines, "tools");
    let names: Vec<&str> = tools["names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let want = [
        "agents", "approve", "cancel", "list", "logs", "pause", "resume", "retry", "status",
        "submit", "usage", "wait",
    ];
    assert_eq!(names, want, "{tools}");
    for name in want {
        let input = &tools["input_schemas"][name];
        assert_eq!(input["type"], "object", "{name} input schema: {input}");
        let output = &tools["output_schemas"][name];
        assert_eq!(output["type"], "object", "{name} output schema: {output}");
    }
    let submit_props = &tools["input_schemas"]["submit"]["properties"];
    for key in [
        "plan",
        "plan_text",
        "format",
        "command",
        "args",
        "agent",
        "prompt",
        "wait",
    ] {
        assert!(
            submit_props.get(key).is_some(),
            "submit lacks `{key}`: {submit_props}"
        );
    }
    assert!(
        tools["input_schemas"]["approve"]["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|k| k == "approve")),
        "{}",
        tools["input_schemas"]["approve"]
    );
    let status_out = &tools["output_schemas"]["status"]["properties"];
    for key in ["id", "name", "state", "steps"] {
        assert!(status_out.get(key).is_some(), "status output lacks `{key}`");
    }

    let id = line(lines, "submitted")["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id"))
        .to_string();
    let waited = line(lines, "waited");
    assert_eq!(waited["state"], "succeeded", "{waited}");
    let progress = waited["progress"].as_array().cloned().unwrap_or_default();
    let messages: Vec<&str> = progress
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("attempt_ended")),
        "progress notifications: {messages:?}"
    );
    let values: Vec<f64> = progress
        .iter()
        .filter_map(|p| p["progress"].as_f64())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "progress must grow: {values:?}"
    );
    // What orchd says about it agrees.
    assert_eq!(d.status(&id)["state"], "succeeded");
    assert_eq!(line(lines, "status")["state"], "succeeded");
    assert_eq!(line(lines, "status")["steps"], 1);
    assert_eq!(line(lines, "logs")["text"], "hello-from-mcp\n");

    let templates = &line(lines, "templates")["uris"];
    assert_eq!(
        templates,
        &serde_json::json!([
            "orch://objectives/{id}",
            "orch://objectives/{id}/logs/{step}"
        ])
    );
    let uri = format!("orch://objectives/{id}");
    assert!(
        line(lines, "resources")["uris"]
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == &uri)),
        "{}",
        line(lines, "resources")
    );
    let read = &line(lines, "read")["json"];
    assert_eq!(read["id"], id.as_str());
    assert_eq!(read["state"], "succeeded");
    assert_eq!(line(lines, "read_logs")["text"], "hello-from-mcp\n");

    // Cancelled through MCP, and the subscription said so.
    assert_eq!(line(lines, "cancelled")["state"], "cancelled");
    let updated = line(lines, "updated")["uri"].as_str().unwrap_or_default();
    let long_id = updated.trim_start_matches("orch://objectives/");
    assert_eq!(d.status(long_id)["state"], "cancelled", "{updated}");

    // Tool errors carry orchctl's own message.
    let err = line(lines, "tool_error");
    assert_eq!(err["is_error"], true, "{err}");
    let ctl = d.ctl(&["status", "no-such-objective"]);
    let ctl_message = stderr(&ctl)
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    assert!(!ctl_message.is_empty());
    assert_eq!(err["text"], ctl_message.as_str());
    let err = line(lines, "submit_error");
    assert_eq!(err["is_error"], true, "{err}");
    assert_eq!(
        err["text"],
        "give exactly one of plan, plan_text, command or agent (with prompt)"
    );
}

#[test]
fn python_sdk_drives_orchctl_mcp_over_stdio() {
    if !require_python_mcp() {
        return;
    }
    let d = TestDaemon::start();
    // Both handshakes the SDK speaks: the 2026-07-28 discovery and the initialize of 2025.
    for (mode, protocol) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let mut cmd = Command::new("python3");
        scrub_env(&mut cmd);
        cmd.arg(client_script())
            .args(["stdio", env!("CARGO_BIN_EXE_orchctl")])
            .arg(d.socket())
            .arg(mode)
            .current_dir(d.work_dir());
        let out = run_deadline(&mut cmd, SCENARIO_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
        check_scenario(&d, &lines_by_type(&out), protocol);
    }
}

/// `orchctl mcp --http 127.0.0.1:0` started, with its URL and token file as it printed them.
fn start_http(d: &TestDaemon, extra: &[&str]) -> (Follower, String, PathBuf) {
    let mut args = vec!["mcp", "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut cmd = d.ctl_command(&args);
    cmd.env("XDG_RUNTIME_DIR", d.dir());
    let mut f = Follower::start(cmd);
    let mut url = String::new();
    let mut token_file = PathBuf::new();
    while url.is_empty() {
        let line = f
            .next_line(CMD_DEADLINE)
            .unwrap_or_else(|| panic!("orchctl mcp --http ended early"));
        if let Some(p) = line.strip_prefix("token file: ") {
            token_file = PathBuf::from(p);
        } else if let Some(u) = line.strip_prefix("listening on ") {
            url = u.to_string();
        }
    }
    (f, url, token_file)
}

/// One raw HTTP/1.1 POST of `body` to `url`; the whole response as text.
fn raw_post(url: &str, token: Option<&str>, body: &str) -> String {
    let rest = url.trim_start_matches("http://");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    s.set_read_timeout(Some(CMD_DEADLINE)).ok();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\n{auth}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const INITIALIZE_2025_06_18: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

#[test]
fn http_needs_the_bearer_token_and_serves_the_python_sdk() {
    if !require_python_mcp() {
        return;
    }
    let d = TestDaemon::start();
    let (f, url, token_file) = start_http(&d, &[]);
    let mode = std::fs::metadata(&token_file).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "{}", token_file.display());
    let token = std::fs::read_to_string(&token_file).unwrap_or_default();
    assert!(token.len() >= 32, "{token}");

    // Without the token, or with a wrong one: 401, and nothing reaches MCP.
    for bad in [None, Some("not-the-token-at-all")] {
        let answer = raw_post(&url, bad, INITIALIZE_2025_06_18);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(!answer.contains("protocolVersion"), "{answer}");
    }
    // With it, the 2025-06-18 handshake is answered in that version.
    let answer = raw_post(&url, Some(&token), INITIALIZE_2025_06_18);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#""protocolVersion":"2025-06-18""#),
        "{answer}"
    );
    assert!(answer.contains(r#""name":"orch""#), "{answer}");

    for (mode, protocol) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let mut cmd = Command::new("python3");
        scrub_env(&mut cmd);
        cmd.arg(client_script())
            .args(["http", &url, &token, mode])
            .current_dir(d.work_dir());
        let out = run_deadline(&mut cmd, SCENARIO_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
        check_scenario(&d, &lines_by_type(&out), protocol);
    }
    // The SDK without the token is refused too.
    let mut cmd = Command::new("python3");
    scrub_env(&mut cmd);
    cmd.arg(client_script())
        .args(["http", &url, "wrong-token-wrong-token", "auto"])
        .current_dir(d.work_dir());
    let out = run_deadline(&mut cmd, SCENARIO_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        !stdout(&out).contains("protocol"),
        "no session without the token\n{}",
        describe(&out)
    );
    f.kill();
}

#[test]
fn http_token_file_is_read_and_checked() {
    let d = TestDaemon::start();
    let path = d.write_file("token", "a-token-the-user-chose-1234\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let p = path.display().to_string();
    let out = d.ctl_exits(
        &["mcp", "--http", "127.0.0.1:0", "--token-file", &p],
        2,
        "a token file others can read",
    );
    let text = stderr(&out);
    assert!(
        text.contains("readable by others (mode 0644); chmod 600 it"),
        "{text}"
    );
    let out = d.ctl_exits(
        &["mcp", "--http", "0.0.0.0:0", "--token-file", &p],
        2,
        "a non-loopback address",
    );
    assert!(
        stderr(&out).contains("only a loopback address"),
        "{}",
        stderr(&out)
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    let (f, url, printed) = start_http(&d, &["--token-file", &p]);
    assert_eq!(printed, PathBuf::new(), "no new token file is made");
    let answer = raw_post(
        &url,
        Some("a-token-the-user-chose-1234"),
        INITIALIZE_2025_06_18,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw_post(&url, None, INITIALIZE_2025_06_18);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    f.kill();
}

#[test]
fn mcp_without_a_daemon_says_it_cannot_reach_orchd() {
    let dir = temp_dir();
    let socket = dir.path().join("none.sock");
    let mut cmd = orchctl_command(&socket, dir.path(), &["mcp"]);
    let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot reach orchd at"),
        "{}",
        describe(&out)
    );
}

/// A daemon whose `planner` profile is the stand-in agent, given orch's own MCP server.
fn planner_daemon(extra_config: &str) -> TestDaemon {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/planner_agent.py");
    let config = format!(
        "{extra_config}\n[agents.planner]\ncommand = [\"python3\", \"{}\", \"{{mcp_config}}\"]\nmcp_self = true\n",
        agent.display()
    );
    let mut d = TestDaemon::prepare_with_config(&config, &[]);
    d.launch();
    d
}

/// Follows a step's log until a line starts with `prefix`; returns the rest of it.
fn log_line(d: &TestDaemon, id: &str, prefix: &str) -> String {
    let mut f = Follower::start(d.ctl_command(&["logs", "-f", id, "main"]));
    let mut found = String::new();
    f.until(prefix, SCENARIO_DEADLINE, |l| l.starts_with(prefix));
    let lines = f.kill();
    if let Some(l) = lines.iter().find(|l| l.starts_with(prefix)) {
        found = l[prefix.len()..].trim().to_string();
    }
    found
}

#[test]
fn an_agent_with_mcp_self_submits_a_sub_objective_that_is_cancelled_with_its_parent() {
    if !require_python_mcp() {
        return;
    }
    let d = planner_daemon("");
    let parent = d.submit(&["--agent", "planner", "--prompt", "fan out"], 0);
    let child = log_line(&d, &parent, "CHILD ");
    assert!(!child.is_empty());

    // The child runs, recorded under the attempt that submitted it.
    d.wait_state(&child, &["running"], STATE_DEADLINE);
    let c = d.status(&child);
    assert_eq!(c["parent"]["objective_id"], parent.as_str(), "{c}");
    assert_eq!(c["parent"]["step_id"], "main");
    assert_eq!(c["parent"]["attempt"], 1);
    assert_eq!(c["parent"]["depth"], 1);
    let p = d.status(&parent);
    assert_eq!(p["children"], serde_json::json!([child]), "{p}");
    assert_eq!(p["parent"], Value::Null);
    let table = stdout(&d.ctl(&["status", &parent]));
    assert!(table.contains("Sub-objectives"), "{table}");
    assert!(table.contains(&child), "{table}");
    let listed = d.list(&[]);
    let row = listed.iter().find(|o| o["id"] == child.as_str());
    assert_eq!(
        row.map(|o| o["parent_id"].clone()),
        Some(Value::from(parent.clone()))
    );

    // The MCP configuration orch handed the agent: only its user may read it.
    let config = d
        .state_dir()
        .join("prompts")
        .join(&parent)
        .join("main-1.mcp.json");
    let mode = std::fs::metadata(&config).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "{}", config.display());
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap_or_default())
        .unwrap_or_default();
    let orch = &json["mcpServers"]["orch"];
    assert_eq!(orch["env"]["ORCH_OBJECTIVE_ID"], parent.as_str(), "{json}");
    assert_eq!(orch["args"][2], "mcp", "{json}");

    // The same ORCH_* environment from outside the attempt's process tree is refused.
    let mut forged = d.ctl_command(&["submit", "--", "true"]);
    forged
        .env("ORCH_OBJECTIVE_ID", &parent)
        .env("ORCH_STEP_ID", "main")
        .env("ORCH_ATTEMPT", "1");
    let out = run_deadline(&mut forged, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stderr(&out);
    assert!(
        text.contains("sub-objective refused: the caller (pid")
            && text.contains(&format!(
                "is not a process of attempt 1 of step `main` of objective {parent}"
            )),
        "{text}"
    );
    assert_eq!(d.status(&parent)["children"], serde_json::json!([child]));

    // Cancelled with its parent.
    d.ctl_exits(&["cancel", &parent], 0, "cancel the parent");
    let c = d.wait_ended(&child, STATE_DEADLINE);
    assert_eq!(c["state"], "cancelled", "{c}");
    assert_eq!(d.status(&parent)["state"], "cancelled");
    assert!(
        !config.exists(),
        "the MCP configuration outlived its attempt"
    );
}

#[test]
fn sub_objectives_nest_only_as_deep_as_the_limit() {
    if !require_python_mcp() {
        return;
    }
    let d = planner_daemon("max_sub_objective_depth = 0");
    let parent = d.submit(&["--agent", "planner", "--prompt", "fan out"], 0);
    let refused = log_line(&d, &parent, "REFUSED ");
    assert_eq!(
        refused,
        format!(
            "sub-objective refused: nesting limit reached (objective {parent} is at depth 0, and max_sub_objective_depth is 0)"
        )
    );
    let v = d.wait_ended(&parent, STATE_DEADLINE);
    assert_eq!(v["children"], serde_json::json!([]), "{v}");
}

#[test]
fn orchctl_tools_lists_a_python_sdk_servers_tools_and_reports_broken_servers() {
    if !require_python_mcp() {
        return;
    }
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/tool_server.py");
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let config = format!(
        r#"
[mcp.pytools]
command = ["python3", "{server}"]
env = {{ FIXTURE = "1" }}
[mcp.broken]
command = ["sh", "-c", "echo cannot open the database >&2; exit 1"]
[mcp.gone]
url = "http://127.0.0.1:{closed}/mcp"
[agents.coder]
command = ["true"]
mcp = ["pytools", "broken"]
mcp_self = true
[agents.plain]
command = ["true"]
mcp = ["pytools"]
"#,
        server = server.display()
    );
    let mut d = TestDaemon::prepare_with_config(&config, &[]);
    d.launch();

    // One agent's servers, all answering.
    let v = d.ctl_json(&["tools", "plain"]);
    assert_eq!(v[0]["server"], "pytools", "{v}");
    assert_eq!(v[0]["ok"], true, "{v}");
    assert_eq!(v[0]["agents"], serde_json::json!(["plain"]));
    let tools = &v[0]["tools"];
    assert_eq!(tools[0]["name"], "add", "{v}");
    assert_eq!(tools[0]["description"], "Add two integers.");
    assert_eq!(tools[1]["name"], "shout");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");

    // Every server: the broken ones are named with why, and the exit code says so.
    let out = d.ctl_exits(&["tools"], 1, "two tool servers fail");
    let table = stdout(&out);
    let row = |server: &str| {
        table
            .lines()
            .filter(|l| l.starts_with(server))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(row("broken").contains("FAILED"), "{table}");
    assert!(
        row("broken").contains("its stderr: cannot open the database"),
        "{table}"
    );
    assert!(row("gone").contains("FAILED"), "{table}");
    assert!(
        row("gone").contains(&format!("cannot reach http://127.0.0.1:{closed}/mcp")),
        "{table}"
    );
    assert!(row("pytools").contains("add"), "{table}");
    // orch's own server, for the agent with mcp_self.
    assert!(row("orch").contains("submit"), "{table}");
    assert!(
        stderr(&out).contains("2 of 4 tool servers failed"),
        "{}",
        describe(&out)
    );

    let out = d.ctl_exits(&["tools", "nope"], 2, "an unknown agent");
    assert!(
        stderr(&out).contains("no agent profile `nope` (known: coder, plain, shell)"),
        "{}",
        describe(&out)
    );
}

#[test]
fn bad_mcp_config_is_refused_naming_the_key() {
    let d = TestDaemon::prepare(&[], &[]);
    for (config, problem) in [
        (
            "[agents.a]\ncommand = [\"true\"]\nmcp = [\"nope\"]\n",
            "agents.a.mcp: no [mcp.nope] is configured",
        ),
        (
            "[mcp.half]\nurl = \"ftp://x\"\n",
            "mcp.half.url: must be an http:// or https:// URL",
        ),
        (
            "[mcp.both]\nurl = \"http://127.0.0.1:1/mcp\"\ncommand = [\"x\"]\n",
            "mcp.both: give either `command`",
        ),
        (
            "max_sub_objective_depth = 1000\n",
            "max_sub_objective_depth: must be at most 100",
        ),
    ] {
        let path = d.write_file("bad.toml", config);
        let out = d.print_config(&path);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}: accepted");
        assert!(text.contains(problem), "{config}: {text}");
    }
}

#[test]
fn what_a_sub_objective_spends_counts_against_its_parents_budget() {
    if !require_python_mcp() {
        return;
    }
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/planner_agent.py");
    // The child reports $0.40 at once, then $0.40 more once the test has seen its parent
    // count the first report (`sub_usage`) and opens the gate (`go` in the work dir): the
    // second crosses the parent's $0.50.
    let config = format!(
        r#"
[agents.spender]
command = ["python3", "{agent}", "{{mcp_config}}", "sh", "-c", "echo '::orch-usage::{{\"cost_usd\":0.4}}'; while [ ! -e go ]; do sleep 0.05; done; echo '::orch-usage::{{\"cost_usd\":0.4}}'; sleep 300"]
mcp_self = true
"#,
        agent = agent.display()
    );
    let mut d = TestDaemon::prepare_with_config(&config, &[]);
    d.launch();
    let parent = d.submit(
        &[
            "--agent",
            "spender",
            "--prompt",
            "spend",
            "--budget-usd",
            "0.5",
        ],
        0,
    );
    let child = log_line(&d, &parent, "CHILD ");
    // The parent counts the child's report in the turn that records it.
    d.wait_for_state(
        &child,
        |v| v["usage"]["cost_usd"].as_f64() == Some(0.4),
        STATE_DEADLINE,
    );
    let p = d.status(&parent);
    assert_eq!(p["sub_usage"]["cost_usd"], 0.4, "{p}");
    assert_eq!(p["usage"]["cost_usd"], 0.0, "its own usage is apart");
    assert_eq!(p["state"], "running", "{p}");
    std::fs::write(d.work_dir().join("go"), "").unwrap_or_else(|e| panic!("{e}"));
    let p = d.wait_ended(&parent, STATE_DEADLINE);
    assert_eq!(p["state"], "failed", "{p}");
    assert!(
        p["message"].as_str().unwrap_or_default().contains("budget"),
        "{p}"
    );
    let c = d.wait_ended(&child, STATE_DEADLINE);
    assert_ne!(c["state"], "succeeded", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("parent objective:"),
        "{c}"
    );
}

/// In a daemon shared by group `orch`, a tool server's secrets reach root and the daemon's
/// own user only: another member's `orchctl tools` and `daemon config` never show the value,
/// and the server is reported as not tried, naming the withheld variables.
#[test]
fn a_tool_servers_secrets_are_not_shown_to_other_users_of_a_shared_daemon() {
    if !require_root("to run a shared root daemon and a throwaway user") {
        return;
    }
    crate::support::orch_group();
    let config = r#"
[mcp.db]
command = ["sh", "-c", "exit 1"]
env = { DB_PASSWORD = "hunter2-secret", DB_HOST = "db.internal" }
[agents.coder]
command = ["true"]
mcp = ["db"]
"#;
    let mut d = TestDaemon::prepare_with_config(config, &[]);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("make the temp dir traversable");
    d.launch();
    let member = TestUser::create(true);

    let out = member.orchctl(&d, &["tools", "-o", "json"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(!text.contains("hunter2"), "the secret leaked: {text}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    let db = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["server"] == "db"))
        .unwrap_or_else(|| panic!("no db row: {v}"));
    assert_eq!(db["ok"], false, "{v}");
    let error = db["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("holds secrets (DB_PASSWORD)") && error.contains("root"),
        "{v}"
    );

    let out = member.orchctl(&d, &["daemon", "config"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!stdout(&out).contains("hunter2"), "{}", stdout(&out));

    // Root (the daemon's own user here) gets the value and tries the server, which fails
    // on its own account.
    let out = d.ctl_exits(&["tools", "-o", "json"], 1, "the db server exits at once");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    let db = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["server"] == "db"))
        .unwrap_or_else(|| panic!("no db row: {v}"));
    assert!(
        !db["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not tried"),
        "{v}"
    );
}
