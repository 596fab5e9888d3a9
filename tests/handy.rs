//! orchctl made pleasant (issue 15): short ids everywhere (prefixes, `last`, ambiguity,
//! owner scope, completion), `submit --wait` telling what happens, plans sent as text over
//! the API (Rust and Python clients), `rm` and `prune`, and the rough edges.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use orch_proto::v1 as pb;
use serde_json::Value;

use crate::support::{
    CMD_DEADLINE, Gate, ORCHCTL, STATE_DEADLINE, TestDaemon, TestUser, block_on, describe,
    first_line, orch_group, require_python_grpc, require_root, run_deadline, scrub_env, stderr,
    stdout,
};

/// The shortest prefix of `a` that `b` does not share, and the longest one it does.
fn prefixes(a: &str, b: &str) -> (String, String) {
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    assert!(
        common >= 4,
        "ids made moments apart share their time prefix: {a} {b}"
    );
    (a[..common + 1].to_string(), a[..common].to_string())
}

/// The state word of `orchctl status ID -o json`.
fn state(d: &TestDaemon, id: &str) -> String {
    d.status(id)["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_unique_prefix_or_last_works_for_every_command_that_takes_an_id() {
    let d = TestDaemon::start();
    let gate = Gate::new(&d, "short");
    // Fails at first; once `again` is open, a retry runs until cancelled.
    let again = Gate::new(&d, "again");
    let hold = Gate::new(&d, "hold");
    let script = format!(
        "echo old; if [ -e '{}' ]; then {}; fi; exit 3",
        d.dir().join("gate-again").display(),
        hold.wait()
    );
    let old = d.submit(&["--wait", "--retries", "0", "--", "sh", "-c", &script], 1);
    let plan = d.write_plan(
        "gated.toml",
        &format!(
            "[[steps]]\nid = \"work\"\ncommand = [\"sh\", \"-c\", \"echo hello; {}\"]\n\
             [[steps]]\nid = \"ship\"\nneeds = [\"work\"]\nrequires_approval = true\n\
             command = [\"true\"]\n",
            gate.wait()
        ),
    );
    let new = d.submit(&[&plan], 0);
    let (p_new, _) = prefixes(&new, &old);
    let (p_old, _) = prefixes(&old, &new);
    let lower = p_new.to_ascii_lowercase();

    // Reads.
    for id in [&p_new, &lower, &"last".to_string(), &"-".to_string()] {
        assert_eq!(d.status(id)["id"], new.as_str(), "status {id}");
    }
    assert_eq!(d.status(&p_old)["id"], old.as_str());
    assert_eq!(d.ctl_json(&["usage", &p_old])["cost_usd"], 0.0);
    let logs = d.logs(&[&p_old, "main"]);
    assert_eq!(String::from_utf8_lossy(&logs), "old\n");
    let (code, events) = d.watch_json(&p_old, &[]);
    assert_eq!(code, Some(1), "{events:?}");
    assert!(events.iter().all(|e| e["objective_id"] == old.as_str()));
    let audit = d.audit(&["--objective", &p_old]);
    assert!(!audit.is_empty() && audit.iter().all(|e| e["objective_id"] == old.as_str()));

    // Controls, audited under the full id.
    d.wait_state(&new, &["running"], STATE_DEADLINE);
    d.ctl_exits(&["pause", &p_new], 0, "pause by prefix");
    assert_eq!(state(&d, &new), "paused");
    d.ctl_exits(&["resume", "last"], 0, "resume last");
    gate.open();
    d.wait_state(&new, &["awaiting_approval"], STATE_DEADLINE);
    let out = d.ctl_exits(&["approve", &lower, "ship"], 0, "approve by prefix");
    assert!(
        stdout(&out).starts_with("approved: step ship of "),
        "{}",
        describe(&out)
    );
    d.wait_ended(&new, STATE_DEADLINE);
    again.open();
    d.ctl_exits(&["retry", &p_old], 0, "retry by prefix");
    d.wait_state(&old, &["running"], STATE_DEADLINE);
    d.ctl_exits(&["cancel", &p_old], 0, "cancel by prefix");
    for action in ["pause", "resume", "approve", "retry", "cancel"] {
        let entries = d.audit(&["--limit", "50"]);
        assert!(
            entries.iter().any(|e| e["action"] == action
                && e["result"] == "ok"
                && (e["objective_id"] == new.as_str() || e["objective_id"] == old.as_str())),
            "no `{action}` entry under a full id: {entries:?}"
        );
    }
    d.wait_ended(&old, STATE_DEADLINE);
    d.ctl_exits(&["rm", &p_old], 0, "rm by prefix");
    d.ctl_exits(&["status", &old], 1, "gone");
}

#[test]
fn an_ambiguous_prefix_exits_2_listing_the_candidates() {
    let d = TestDaemon::start();
    let a = d.submit(&["--wait", "--name", "first", "--", "true"], 0);
    let b = d.submit(&["--wait", "--name", "second", "--", "true"], 0);
    let (_, shared) = prefixes(&a, &b);
    for args in [
        vec!["status", shared.as_str()],
        vec!["logs", shared.as_str()],
        vec!["cancel", shared.as_str()],
        vec!["rm", shared.as_str()],
        vec!["watch", shared.as_str()],
    ] {
        let out = d.ctl_exits(&args, 2, "ambiguous prefix");
        let err = stderr(&out);
        assert!(err.contains("ambiguous"), "{args:?}: {err}");
        assert!(err.contains(&a) && err.contains(&b), "{args:?}: {err}");
        assert!(err.contains("first") && err.contains("second"), "{err}");
    }
    // Both are still there: an ambiguous rm removed nothing.
    assert_eq!(d.list(&[]).len(), 2);
    // Too short, and matching nothing.
    let out = d.ctl_exits(&["status", &a[..3]], 2, "a 3-character prefix");
    assert!(
        stderr(&out).contains("at least 4 characters"),
        "{}",
        describe(&out)
    );
    let out = d.ctl_exits(&["status", "ZZZZZZ"], 1, "no match");
    assert!(
        stderr(&out).contains("no objective with id or id prefix `ZZZZZZ`"),
        "{}",
        describe(&out)
    );
}

#[test]
fn last_without_objectives_says_so() {
    let d = TestDaemon::start();
    let out = d.ctl_exits(&["status", "last"], 1, "no objectives yet");
    assert!(
        stderr(&out).contains("have no objectives"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_prefix_never_matches_another_users_objective() {
    if !require_root("to run a shared root daemon and a throwaway user") {
        return;
    }
    orch_group();
    let mut d = TestDaemon::prepare(&[], &[]);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("make the temp dir traversable");
    d.launch();
    let root_id = d.submit(&["--wait", "--", "true"], 0);
    let u = TestUser::create(true);
    // The other user's prefix finds nothing, `last` is their own (none), and the full id
    // still reads (reads were never owner-scoped); a control on it is refused.
    let out = u.orchctl(&d, &["status", &root_id[..12]]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no objective with id or id prefix"),
        "{}",
        describe(&out)
    );
    assert!(!stderr(&out).contains(&root_id), "{}", describe(&out));
    let out = u.orchctl(&d, &["status", "last"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let out = u.orchctl(&d, &["status", &root_id]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = u.orchctl(&d, &["rm", &root_id]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("may not remove"),
        "{}",
        describe(&out)
    );
    // Their prune leaves root's objective alone.
    let out = u.orchctl(&d, &["prune"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(state(&d, &root_id), "succeeded");
    // Root's prefix does find it.
    assert_eq!(d.status(&root_id[..12])["id"], root_id.as_str());
}

/// `orchctl` asked to complete `words` as `fish` would (the protocol of clap_complete's
/// dynamic completion, as the script from `orchctl completions fish` calls it).
fn complete(d: &TestDaemon, words: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(ORCHCTL);
    scrub_env(&mut cmd);
    cmd.env("COMPLETE", "fish")
        .env("ORCH_SOCKET", d.socket())
        .arg("--")
        .arg("orchctl")
        .args(words)
        .current_dir(d.work_dir());
    let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));
    stdout(&out)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn completion_offers_ids_and_state_names_from_the_daemon() {
    let d = TestDaemon::start();
    let id = d.submit(&["--wait", "--", "true"], 0);
    let got = complete(&d, &["status", &id[..4].to_ascii_lowercase()]);
    assert!(got.contains(&id), "{got:?}");
    let got = complete(&d, &["rm", ""]);
    assert!(
        got.contains(&id) && got.contains(&"last".to_string()),
        "{got:?}"
    );
    let got = complete(&d, &["list", "--state", "a"]);
    assert_eq!(got, ["awaiting_approval"]);
    let got = complete(&d, &["prune", "--state", ""]);
    assert_eq!(got, ["succeeded", "failed", "cancelled"]);
    // The script itself calls orchctl back.
    let out = d.ctl_exits(&["completions", "bash"], 0, "script");
    assert!(stdout(&out).contains("COMPLETE"), "{}", describe(&out));
}

#[test]
fn submit_wait_says_what_happens_and_why_it_failed() {
    let d = TestDaemon::start();
    let script = "for i in $(seq 1 30); do echo \"err $i\" >&2; done; echo out; exit 3";
    let out = d.ctl(&[
        "submit",
        "--wait",
        "--retries",
        "1",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let id = first_line(&out);
    assert_eq!(stdout(&out).trim(), id, "stdout holds the id alone");
    let err = stderr(&out);
    for want in [
        "step main running (attempt 1 of 2)",
        "step main attempt 1 of 2 ended: exit_failure (exit 3)",
        "step main attempt 2 of 2 in ",
        "step main running (attempt 2 of 2)",
        "objective failed",
        "--- last 20 lines of step main's stderr (attempt 2) ---",
        &format!("see all of its output: orchctl logs {id} main"),
    ] {
        assert!(err.contains(want), "missing `{want}`:\n{err}");
    }
    assert!(
        err.contains("err 11\nerr 12") && err.contains("err 30"),
        "{err}"
    );
    assert!(!err.contains("err 10\n"), "only the last 20 lines:\n{err}");
    // A success says nothing of stderr; default retries are announced.
    let out = d.ctl(&["submit", "--wait", "--", "true"]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("runs up to 3 times if it fails"), "{err}");
    assert!(err.contains("objective succeeded"), "{err}");
    assert!(!err.contains("stderr"), "{err}");
}

/// A plan with units, a default name from its file name and a relative workdir.
const PLAN: &str = "[defaults]\ntimeout = \"20m\"\nlimits = { memory = \"256M\" }\n\
                    [[steps]]\nid = \"a\"\ncommand = [\"pwd\"]\nworkdir = \"sub\"\n\
                    [[steps]]\nid = \"b\"\nneeds = [\"a\"]\nagent = \"shell\"\nprompt = \"true\"\n";

async fn submit(
    d: &TestDaemon,
    req: pb::SubmitRequest,
) -> Result<pb::SubmitResponse, tonic::Status> {
    let mut c = d.client().await;
    c.submit(req).await.map(|r| r.into_inner())
}

#[test]
fn a_plan_sent_as_text_is_resolved_exactly_like_orchctl_submit_plan() {
    let d = TestDaemon::start();
    let path = d.write_plan("fix-tests.toml", PLAN);
    std::fs::create_dir_all(d.work_dir().join("sub")).expect("mkdir");
    let workdir = d.work_dir().display().to_string();
    let as_text = pb::SubmitRequest {
        plan_text: PLAN.into(),
        plan_file: "fix-tests.toml".into(),
        workdir: workdir.clone(),
        dry_run: true,
        ..Default::default()
    };
    // What orchctl sends for the same file: the spec it parsed.
    let spec = orch_proto::plan::load_plan_file(Path::new(&path)).expect("the plan parses");
    let as_spec = pb::SubmitRequest {
        spec: Some(spec),
        workdir: workdir.clone(),
        dry_run: true,
        ..Default::default()
    };
    let (text, spec) =
        block_on(async { (submit(&d, as_text.clone()).await, submit(&d, as_spec).await) });
    let text = text.expect("plan_text accepted").plan.expect("a plan");
    let spec = spec.expect("spec accepted").plan.expect("a plan");
    assert_eq!(text, spec, "the same plan, resolved the same way");
    assert_eq!(text.name, "fix-tests");
    assert_eq!(text.steps[0].workdir, format!("{workdir}/sub"));
    assert_eq!(text.steps[0].timeout_ms, Some(1_200_000));
    // And orchctl's own dry run says the same.
    let v = d.ctl_json(&["submit", "--dry-run", &path]);
    assert_eq!(v["name"], "fix-tests", "{v}");
    // YAML and JSON, with the format given or taken from the name.
    let yaml = "steps:\n  - id: a\n    command: [\"true\"]\n    timeout: 1m\n";
    for (file, format) in [("y.yaml", 0), ("whatever", pb::PlanFormat::Yaml as i32)] {
        let req = pb::SubmitRequest {
            plan_text: yaml.into(),
            plan_file: file.into(),
            plan_format: format,
            workdir: workdir.clone(),
            ..Default::default()
        };
        let r = block_on(submit(&d, req)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let v = d.wait_ended(&r.id, STATE_DEADLINE);
        assert_eq!(v["state"], "succeeded", "{v}");
    }
    let json = r#"{"name": "j", "steps": [{"id": "a", "command": ["true"]}]}"#;
    let req = pb::SubmitRequest {
        plan_text: json.into(),
        plan_format: pb::PlanFormat::Json as i32,
        workdir: workdir.clone(),
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(
        block_on(submit(&d, req))
            .map(|r| r.plan.map(|p| p.name))
            .ok(),
        Some(Some("j".into()))
    );

    // Refusals name the file and the key; nothing is stored.
    let bad = |req: pb::SubmitRequest, want: &str| {
        let e = block_on(submit(&d, req))
            .err()
            .unwrap_or_else(|| panic!("accepted: {want}"));
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(want), "{want}: {e}");
    };
    bad(
        pb::SubmitRequest {
            plan_text: PLAN.replace("20m", "soon"),
            plan_file: "fix-tests.toml".into(),
            workdir: workdir.clone(),
            ..Default::default()
        },
        "fix-tests.toml: defaults.timeout",
    );
    bad(
        pb::SubmitRequest {
            plan_text: PLAN.into(),
            workdir: workdir.clone(),
            ..Default::default()
        },
        "unknown plan format",
    );
    bad(
        pb::SubmitRequest {
            plan_text: PLAN.into(),
            plan_format: 9,
            workdir: workdir.clone(),
            ..Default::default()
        },
        "plan_format: 9",
    );
    let mut both = as_text;
    both.spec = Some(pb::ObjectiveSpec::default());
    bad(both, "not both");
    assert_eq!(d.list(&[]).len(), 2, "only the two YAML plans were stored");
}

#[test]
fn the_python_client_submits_a_plan_file_without_parsing_it() {
    if !require_python_grpc() {
        return;
    }
    let d = TestDaemon::start();
    std::fs::create_dir_all(d.work_dir().join("sub")).expect("mkdir");
    let yaml = "steps:\n  - id: a\n    command: [\"pwd\"]\n    workdir: sub\n    timeout: 20m\n";
    std::fs::write(d.work_dir().join("py-plan.yaml"), yaml).expect("write the plan");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/orch_client.py");
    let run = |args: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(d.socket())
            .args(args)
            .current_dir(d.work_dir());
        run_deadline(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
    };
    let lines = |out: &std::process::Output| -> Vec<Value> {
        stdout(out)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let out = run(&["--plan", "py-plan.yaml", "--dry-run"]);
    assert!(out.status.success(), "{}", describe(&out));
    let sub = lines(&out)
        .into_iter()
        .find(|v| v["type"] == "submitted")
        .expect("submitted");
    assert_eq!(sub["id"], "", "{sub}");
    assert_eq!(sub["plan"]["name"], "py-plan", "{sub}");
    let step = &sub["plan"]["steps"][0];
    assert_eq!(
        step["timeout_ms"], "1200000",
        "proto JSON: 64-bit as text: {sub}"
    );
    let want = d.work_dir().join("sub");
    assert_eq!(
        step["workdir"],
        want.display().to_string().as_str(),
        "{sub}"
    );

    let out = run(&["--plan", "py-plan.yaml"]);
    assert!(out.status.success(), "{}", describe(&out));
    let sub = lines(&out)
        .into_iter()
        .find(|v| v["type"] == "submitted")
        .expect("submitted");
    let id = sub["id"].as_str().expect("an id").to_string();
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(
        String::from_utf8_lossy(&d.logs(&[&id, "a"])).trim(),
        want.display().to_string()
    );

    std::fs::write(
        d.work_dir().join("bad.yml"),
        "steps:\n  - id: a\n    command: [\"true\"]\n    timeout: soon\n",
    )
    .expect("write");
    let out = run(&["--plan", "bad.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = lines(&out)
        .into_iter()
        .find(|v| v["type"] == "error")
        .expect("error line");
    assert_eq!(err["code"], "INVALID_ARGUMENT", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("bad.yml: steps[a].timeout"),
        "{err}"
    );
}

#[test]
fn rm_removes_ended_objectives_with_their_logs_audited_and_announced() {
    let d = TestDaemon::start();
    let gate = Gate::new(&d, "rm");
    let done = d.submit(&["--wait", "--", "sh", "-c", "echo kept-until-rm"], 0);
    let running = d.submit(&["--", "sh", "-c", &gate.wait()], 0);
    d.wait_started(&running, STATE_DEADLINE);
    let logs_dir = d.state_dir().join("logs").join(&done);
    assert!(logs_dir.exists(), "{}", logs_dir.display());

    // A running objective is refused, saying what to do; nothing is removed.
    let out = d.ctl_exits(&["rm", &running], 1, "rm of a running objective");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot remove objective {running}: it is running")),
        "{err}"
    );
    assert!(err.contains(&format!("orchctl cancel {running}")), "{err}");
    // rm of several: the refused one is reported, the others go (exit 1).
    let out = d.ctl_exits(&["rm", &done, &running], 1, "one of two refused");
    assert!(
        stdout(&out).contains(&format!("removed {done}")),
        "{}",
        describe(&out)
    );
    assert_eq!(state(&d, &running), "running");
    d.ctl_exits(&["status", &done], 1, "removed");
    // Its logs go once the removal is durable (off the engine's task).
    crate::support::poll_until("the logs removed", STATE_DEADLINE, || {
        (!logs_dir.exists()).then_some(())
    });
    // Audited, and an event in the global history.
    let audit = d.audit(&["--objective", &done]);
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "remove" && e["result"] == "ok"),
        "{audit:?}"
    );
    // `watch` without an id follows live: the history is read over gRPC.
    let removed = block_on(async {
        let mut c = d.client().await;
        let mut s = c
            .watch(pb::WatchRequest {
                objective_id: String::new(),
                from_seq: Some(0),
                kinds: vec!["objective_removed".into()],
            })
            .await
            .expect("watch")
            .into_inner();
        s.message().await.expect("an event").expect("one event")
    });
    assert_eq!(removed.objective_id, done);
    assert_eq!(removed.kind, "objective_removed");
    let Some(pb::event::Payload::ObjectiveRemoved(p)) = removed.payload else {
        panic!("not an objective_removed payload: {removed:?}");
    };
    assert_eq!(p.state, pb::ObjectiveState::Succeeded as i32);
    gate.open();
    d.wait_ended(&running, STATE_DEADLINE);
    let v = d.ctl_json(&["rm", "last"]);
    assert_eq!(v["removed"][0], running.as_str(), "{v}");
    assert!(d.list(&[]).is_empty());
}

#[test]
fn prune_removes_ended_objectives_by_state_and_age() {
    let d = TestDaemon::start();
    let ok = d.submit(&["--wait", "--", "true"], 0);
    let failed = d.submit(&["--wait", "--retries", "0", "--", "false"], 1);
    let gate = Gate::new(&d, "prune");
    let running = d.submit(&["--", "sh", "-c", &gate.wait()], 0);
    d.wait_started(&running, STATE_DEADLINE);
    // Nothing ended a day ago; a state that has not ended is bad input.
    let out = d.ctl_exits(&["prune", "--older-than", "1d"], 0, "nothing old");
    assert!(
        stdout(&out).contains("nothing to prune"),
        "{}",
        describe(&out)
    );
    let out = d.ctl_exits(&["prune", "--state", "running"], 2, "not an ended state");
    assert!(stderr(&out).contains("has not ended"), "{}", describe(&out));
    d.ctl_exits(&["prune", "--state", "sucess"], 2, "a typo");
    let v = d.ctl_json(&["prune", "--state", "failed"]);
    assert_eq!(v["removed"], serde_json::json!([failed]), "{v}");
    let v = d.ctl_json(&["prune"]);
    assert_eq!(v["removed"], serde_json::json!([ok]), "{v}");
    assert_eq!(
        state(&d, &running),
        "running",
        "a running objective is never pruned"
    );
    let audit = d.audit(&["--limit", "20"]);
    for id in [&ok, &failed] {
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == "prune" && e["objective_id"] == id.as_str()),
            "{audit:?}"
        );
    }
    gate.open();
    d.wait_ended(&running, STATE_DEADLINE);
}

#[test]
fn the_rough_edges_are_smoothed() {
    let d = TestDaemon::start();
    let id = d.submit(
        &[
            "--wait",
            "--",
            "sh",
            "-c",
            "echo one; echo two >&2; printf three",
        ],
        0,
    );

    // logs -o json: JSON Lines.
    let out = d.ctl_exits(&["logs", &id, "-o", "json"], 0, "logs -o json");
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|v| {
            (
                v["stream"].as_str().unwrap_or(""),
                v["line"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        got.contains(&("stdout", "one")) && got.contains(&("stderr", "two")),
        "{got:?}"
    );
    assert!(got.contains(&("stdout", "three")), "{got:?}");
    for v in &lines {
        assert_eq!(v["step"], "main");
        assert_eq!(v["attempt"], 1);
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    }

    // The dry-run view fits 100 columns.
    let long = "x".repeat(150);
    let out = d.ctl_exits(&["submit", "--dry-run", "--", "echo", &long], 0, "dry run");
    for line in stdout(&out).lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}",
            line.chars().count()
        );
    }

    // daemon status without a config file says so (the harness's empty config, deleted:
    // a daemon started without one reports the same).
    let config = d.ctl_json(&["daemon", "status"])["config_path"]
        .as_str()
        .map(std::path::PathBuf::from)
        .expect("a config path");
    assert_eq!(d.ctl_json(&["daemon", "status"])["config_found"], true);
    std::fs::remove_file(&config).expect("remove the config file");
    let out = d.ctl_exits(&["daemon", "status"], 0, "status");
    assert!(
        stdout(&out).contains("none (no file at "),
        "{}",
        describe(&out)
    );
    assert_eq!(d.ctl_json(&["daemon", "status"])["config_found"], false);

    // orchd --help names each environment variable once.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchd"));
    scrub_env(&mut cmd);
    cmd.arg("--help").env("ORCH_LOG_FORMAT", "json");
    let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    // Wrapped lines joined: a bracket may break across lines.
    let help = stdout(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for var in [
        "ORCH_SOCKET",
        "ORCH_STATE_DIR",
        "ORCH_LOG_FORMAT",
        "ORCH_GRACE_PERIOD",
    ] {
        assert_eq!(
            help.matches(&format!("[env: {var}")).count(),
            1,
            "{var}:\n{help}"
        );
    }

    // Every subcommand's --help has an example.
    for sub in [
        "submit",
        "status",
        "rm",
        "prune",
        "logs",
        "approve",
        "completions",
    ] {
        let out = d.ctl_exits(&[sub, "--help"], 0, "help");
        assert!(
            stdout(&out).contains("Example"),
            "{sub}:\n{}",
            describe(&out)
        );
    }

    // `submit echo hi` hints at `--`.
    let out = d.ctl_exits(&["submit", "echo", "hi"], 2, "a command without --");
    assert!(
        stderr(&out)
            .contains("hint: to run a command, give it after `--`: orchctl submit -- echo hi"),
        "{}",
        describe(&out)
    );

    // --socket at something that is not a socket says so.
    let file = d.write_file("not-a-socket", "x");
    let mut cmd = Command::new(ORCHCTL);
    scrub_env(&mut cmd);
    cmd.arg("--socket").arg(&file).arg("list");
    let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{} is a regular file, not a socket",
            file.display()
        )),
        "{}",
        describe(&out)
    );
}

#[test]
fn submit_wait_on_a_terminal_draws_the_live_view() {
    // `script` (util-linux, essential on Debian) gives orchctl a pseudo-terminal.
    if Command::new("script").arg("--version").output().is_err() {
        crate::support::announce(
            "SKIPPED submit_wait_on_a_terminal_draws_the_live_view: needs `script`",
        );
        return;
    }
    let d = TestDaemon::start();
    let line = format!(
        "'{}' --socket '{}' submit --wait --name on-a-tty -- true",
        ORCHCTL,
        d.socket().display()
    );
    let mut cmd = Command::new("script");
    scrub_env(&mut cmd);
    cmd.args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .current_dir(d.work_dir());
    let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains("1/1 steps succeeded"),
        "no live view summary:\n{text}"
    );
    assert!(
        !text.contains("running (attempt 1 of"),
        "state lines on a terminal:\n{text}"
    );
}
