//! Goal-only objectives (`goal` and a `[planner]` table, or `orchctl submit --goal TEXT
//! --planner AGENT`): what is checked at submit, and the plan → execute → verify rounds
//! run with scripted planners and verifiers (small shell scripts speaking the protocol,
//! as agent profiles of a real orchd).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{TestDaemon, describe, refusal_problems};

/// A daemon whose config has a `plannerbot` agent profile (never run by these tests).
fn daemon() -> TestDaemon {
    let mut d = TestDaemon::prepare_with_config(
        "[agents.plannerbot]\ncommand = [\"true\"]\nprompt = \"stdin\"\n",
        &[],
    );
    d.launch();
    d
}

/// Refused with exit `code`, stderr naming each of `words`, and nothing stored.
fn assert_refused(d: &TestDaemon, args: &[&str], code: i32, words: &[&str]) {
    let out = d.ctl(args);
    let problems = refusal_problems(&out, code, words, &[]);
    assert!(
        problems.is_empty(),
        "{args:?}: {problems:?}\n{}",
        describe(&out)
    );
    let list = d.list(&[]);
    assert!(list.is_empty(), "{args:?} stored something: {list:?}");
}

#[test]
fn a_goal_with_an_unknown_planner_or_verifier_is_refused_naming_it() {
    let d = daemon();
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["submit", "--goal", "make it fast", "--planner", "ghost"],
            &["planner.agent", "unknown agent `ghost`", "plannerbot"],
        ),
        (
            &[
                "submit",
                "--goal",
                "make it fast",
                "--planner",
                "plannerbot",
                "--verifier",
                "judge",
            ],
            &["planner.verifier", "unknown agent `judge`"],
        ),
        (
            &[
                "submit",
                "--goal",
                "   ",
                "--planner",
                "plannerbot",
                "--verify-command",
                "true",
            ],
            &["goal", "needs a goal"],
        ),
    ];
    for (args, words) in cases {
        assert_refused(&d, args, 2, words);
    }
}

#[test]
fn goal_flags_need_each_other() {
    let d = daemon();
    assert_refused(&d, &["submit", "--goal", "make it fast"], 2, &["--planner"]);
    assert_refused(&d, &["submit", "--planner", "plannerbot"], 2, &["--goal"]);
    assert_refused(
        &d,
        &[
            "submit",
            "--goal",
            "g",
            "--planner",
            "plannerbot",
            "--verifier",
            "plannerbot",
            "--verify-command",
            "true",
        ],
        2,
        &["--verify-command"],
    );
}

#[test]
fn bad_planner_tables_are_refused_naming_the_key() {
    let d = daemon();
    let cases = [
        (
            "with-steps.toml",
            "goal = \"g\"\n[planner]\nagent = \"plannerbot\"\n[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n",
            vec!["with-steps.toml", "steps", "the planner proposes them"],
        ),
        (
            "no-goal.toml",
            "[planner]\nagent = \"plannerbot\"\n",
            vec!["no-goal.toml", "goal"],
        ),
        (
            "typo.toml",
            "goal = \"g\"\n[planner]\nagent = \"plannerbot\"\nmax_roundz = 2\n",
            vec!["typo.toml", "max_roundz"],
        ),
        (
            "both-verifiers.toml",
            "goal = \"g\"\n[planner]\nagent = \"plannerbot\"\nverifier = \"plannerbot\"\nverify_command = [\"true\"]\n",
            vec!["both-verifiers.toml", "planner.verifier", "not both"],
        ),
        (
            "too-many-rounds.toml",
            "goal = \"g\"\n[planner]\nagent = \"plannerbot\"\nmax_rounds = 1000\n",
            vec!["planner.max_rounds", "1000"],
        ),
        (
            "no-steps.toml",
            "name = \"empty\"\n",
            vec!["no-steps.toml", "steps", "[planner]"],
        ),
    ];
    for (file, text, words) in cases {
        let plan = d.write_plan(file, text);
        assert_refused(&d, &["submit", &plan], 2, &words);
    }
}

const LONG: Duration = Duration::from_secs(60);

/// A daemon whose agent profiles are the scripts `planner.sh` (`planner`) and
/// `judge.sh` (`judge`), written by the test; planner attempts are retried quickly.
fn scripted(planner: &str, judge: &str, extra: &str) -> TestDaemon {
    let mut d = TestDaemon::prepare_with_config("", &[]);
    let p = d.write_script("planner.sh", planner);
    let j = d.write_script("judge.sh", judge);
    let config = format!(
        "[defaults.retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"10ms\"\n\
         [agents.planner]\ncommand = [\"{}\"]\nprompt = \"stdin\"\n\
         [agents.judge]\ncommand = [\"{}\"]\nprompt = \"stdin\"\n{extra}",
        p.display(),
        j.display()
    );
    d.write_file("orchd.toml", &config);
    d.launch();
    d
}

/// A planner that writes `plan` (JSON, `$D` standing for the work directory) to
/// `ORCH_PLAN_FILE`, after saving its stdin and environment for the test.
fn planner_writing(plan: &str) -> String {
    format!(
        "#!/bin/sh\nD=\"$PWD\"\ncat > \"$D/planner-stdin-$ORCH_ROUND-$ORCH_ATTEMPT.txt\"\n\
         printf '%s' \"$ORCH_PLAN_ERRORS\" > \"$D/planner-errors-$ORCH_ROUND-$ORCH_ATTEMPT.txt\"\n\
         printf '%s' \"$ORCH_VERIFY_FINDINGS\" > \"$D/planner-findings-$ORCH_ROUND-$ORCH_ATTEMPT.txt\"\n\
         cat > \"$ORCH_PLAN_FILE\" <<EOF\n{plan}\nEOF\n"
    )
}

const PASS: &str = "#!/bin/sh\necho '::orch-verdict::{\"pass\":true}'\n";

fn planner_status(v: &Value) -> &Value {
    &v["planner"]
}

fn rounds(v: &Value) -> Vec<Value> {
    planner_status(v)["rounds"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_valid_plan_runs_its_steps_and_the_verify_command_passes() {
    let plan = r#"{"steps":[{"id":"write","command":["sh","-c","echo done > result.txt"]},{"id":"check","command":["test","-s","result.txt"],"needs":["write"]}]}"#;
    let d = scripted(&planner_writing(plan), PASS, "");
    let id = d.submit(
        &[
            "--goal",
            "write result.txt",
            "--planner",
            "planner",
            "--verify-command",
            "grep -q done result.txt",
        ],
        0,
    );
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        steps,
        ["r1.plan", "r1.write", "r1.check", "r1.verify"],
        "{v:#}"
    );
    let r = rounds(&v);
    assert_eq!(r.len(), 1, "{v:#}");
    assert_eq!(r[0]["phase"], "passed");
    assert_eq!(r[0]["pass"], true);
    assert_eq!(r[0]["plan"]["steps"][0]["id"], "write");
    assert_eq!(read(d.work_dir(), "result.txt").trim(), "done");
    // The planner got the goal, the profiles and the schema on stdin.
    let stdin = read(d.work_dir(), "planner-stdin-1-1.txt");
    for want in [
        "write result.txt",
        "- planner",
        "- judge",
        "ORCH_PLAN_FILE",
        "grep -q done result.txt",
    ] {
        assert!(
            stdin.contains(want),
            "{want} not in the planner's stdin:\n{stdin}"
        );
    }
    let events = d.events(&id);
    let k = kinds(&events);
    for want in ["round_started", "plan_proposed", "plan_accepted", "verdict"] {
        assert!(k.iter().any(|x| x == want), "no {want} event in {k:?}");
    }
    // Status (text) shows the planner and the round.
    let out = d.ctl(&["status", &id]);
    let text = crate::support::stdout(&out);
    assert!(
        text.contains("Planner") && text.contains("Round      1: passed"),
        "{text}"
    );
}

#[test]
fn an_invalid_plan_is_planned_again_with_the_errors_then_a_rejected_round_is_planned_again() {
    // Round N, first attempt: an unknown agent. Later attempts: a valid plan. The judge
    // rejects round 1 and passes round 2.
    let planner = r#"#!/bin/sh
D="$PWD"
cat > "$D/planner-stdin-$ORCH_ROUND-$ORCH_ATTEMPT.txt"
printf '%s' "$ORCH_PLAN_ERRORS" > "$D/planner-errors-$ORCH_ROUND-$ORCH_ATTEMPT.txt"
printf '%s' "$ORCH_VERIFY_FINDINGS" > "$D/planner-findings-$ORCH_ROUND.txt"
if [ -z "$ORCH_PLAN_ERRORS" ]; then
  echo '::orch-plan::{"steps":[{"id":"a","agent":"ghost","prompt":"x"}]}'
  exit 0
fi
echo "::orch-plan::{\"steps\":[{\"id\":\"work\",\"command\":[\"sh\",\"-c\",\"echo round $ORCH_ROUND >> work.txt\"]}]}"
"#;
    let judge = r#"#!/bin/sh
if [ "$ORCH_ROUND" = 1 ]; then
  echo '::orch-verdict::{"pass":false,"findings":"only one round of work"}'
else
  echo '::orch-verdict::{"pass":true,"findings":"fine"}'
fi
"#;
    let d = scripted(planner, judge, "");
    let plan = d.write_plan(
        "goal.toml",
        "goal = \"do two rounds\"\n[planner]\nagent = \"planner\"\nverifier = \"judge\"\nmax_rounds = 3\n",
    );
    let id = d.submit(&[&plan], 0);
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let r = rounds(&v);
    assert_eq!(r.len(), 2, "{v:#}");
    assert_eq!(r[0]["phase"], "failed");
    assert_eq!(r[0]["pass"], false);
    assert_eq!(r[0]["findings"], "only one round of work");
    assert_eq!(r[1]["phase"], "passed");
    // The second attempt of each round's planner got the errors of the first.
    let errors = read(d.work_dir(), "planner-errors-1-2.txt");
    assert!(errors.contains("unknown agent `ghost`"), "{errors}");
    // Round 2's planner got round 1's findings, in its env and on stdin.
    assert_eq!(
        read(d.work_dir(), "planner-findings-2.txt"),
        "only one round of work"
    );
    let stdin = read(d.work_dir(), "planner-stdin-2-1.txt");
    assert!(
        stdin.contains("only one round of work") && stdin.contains("\"work\""),
        "{stdin}"
    );
    assert_eq!(read(d.work_dir(), "work.txt"), "round 1\nround 2\n");
    let events = d.events(&id);
    let proposed: Vec<bool> = events
        .iter()
        .filter(|e| e["kind"] == "plan_proposed")
        .filter_map(|e| e["valid"].as_bool())
        .collect();
    assert_eq!(proposed, [false, true, false, true], "{events:#?}");
    let verdicts: Vec<bool> = events
        .iter()
        .filter(|e| e["kind"] == "verdict")
        .filter_map(|e| e["pass"].as_bool())
        .collect();
    assert_eq!(verdicts, [false, true]);
    // Between rounds the objective stays running (never back to pending).
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "objective_state")
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(states, ["running", "succeeded"], "{events:#?}");
    let text = crate::support::stdout(&d.ctl(&["status", &id]));
    assert!(
        text.contains("Round      1: failed")
            && text.contains("verdict fail")
            && text.contains("Round      2: passed"),
        "{text}"
    );
}

#[test]
fn a_planner_that_never_writes_a_valid_plan_fails_the_objective_saying_why() {
    let cases = [
        (
            "#!/bin/sh\necho '::orch-plan::this is not json'\n",
            "expected",
        ),
        (
            "#!/bin/sh\necho '::orch-plan::{\"steps\":[{\"id\":\"a\",\"agent\":\"ghost\",\"prompt\":\"x\"}]}'\n",
            "unknown agent `ghost`",
        ),
        ("#!/bin/sh\ncat > /dev/null\n", "wrote no plan"),
    ];
    for (planner, why) in cases {
        let d = scripted(planner, PASS, "");
        let id = d.submit(&["--goal", "g", "--planner", "planner"], 0);
        let v = d.wait_ended(&id, LONG);
        assert_eq!(v["state"], "failed", "{v:#}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("round 1") && message.contains("invalid") && message.contains(why),
            "{why}: {message}"
        );
        // Its retry policy: three attempts, each refused.
        let plan = crate::support::step(&v, "r1.plan");
        assert_eq!(crate::support::attempts(plan).len(), 3, "{v:#}");
        assert_eq!(rounds(&v)[0]["phase"], "failed");
    }
}

#[test]
fn max_rounds_exhausted_fails_with_the_last_findings() {
    let plan = r#"{"steps":[{"id":"work","command":["true"]}]}"#;
    let d = scripted(&planner_writing(plan), PASS, "");
    let id = d.submit(
        &[
            "--goal",
            "g",
            "--planner",
            "planner",
            "--verify-command",
            "sh -c 'echo missing >&2; exit 3'",
            "--max-rounds",
            "2",
        ],
        0,
    );
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "failed", "{v:#}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("2 of 2 rounds") && message.contains("verify command failed"),
        "{message}"
    );
    let r = rounds(&v);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| r["pass"] == false), "{r:?}");
    // Round 2's planner got round 1's findings.
    let findings = read(d.work_dir(), "planner-findings-2-1.txt");
    assert!(findings.contains("verify command failed"), "{findings}");
}

#[test]
fn a_failed_step_starts_another_round_with_the_failure_as_findings() {
    let planner = r#"#!/bin/sh
printf '%s' "$ORCH_VERIFY_FINDINGS" > "findings-$ORCH_ROUND.txt"
if [ "$ORCH_ROUND" = 1 ]; then
  echo '::orch-plan::{"steps":[{"id":"boom","command":["sh","-c","exit 7"],"retry":{"max_attempts":1}}]}'
else
  echo '::orch-plan::{"steps":[{"id":"ok","command":["true"]}]}'
fi
"#;
    let d = scripted(planner, PASS, "");
    let id = d.submit(&["--goal", "g", "--planner", "planner"], 0);
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let findings = read(d.work_dir(), "findings-2.txt");
    assert!(
        findings.contains("r1.boom") && findings.contains("failed"),
        "{findings}"
    );
}

#[test]
fn a_planner_proposed_git_push_waits_for_approval() {
    let plan = r#"{"steps":[{"id":"push","command":["git","push","--dry-run"]}]}"#;
    let d = scripted(
        &planner_writing(plan),
        PASS,
        "[safety]\nrequire_approval = [\"git push*\"]\n",
    );
    let id = d.submit(&["--goal", "g", "--planner", "planner"], 0);
    let v = d.wait_for_state(
        &id,
        |v| {
            v["steps"]
                .as_array()
                .and_then(|steps| steps.iter().find(|s| s["id"] == "r1.push"))
                .is_some_and(|s| s["state"] == "awaiting_approval")
        },
        LONG,
    );
    assert_eq!(v["state"], "awaiting_approval", "{v:#}");
    let step = crate::support::step(&v, "r1.push");
    assert!(
        step["message"]
            .as_str()
            .unwrap_or_default()
            .contains("git push*"),
        "{step:#}"
    );
    // The planner step itself did not wait: only the step the rule matched.
    assert_eq!(crate::support::step(&v, "r1.plan")["state"], "succeeded");
    let out = d.ctl(&["cancel", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "cancelled", "{v:#}");
    // A cancelled objective starts no further round.
    assert_eq!(rounds(&v).len(), 1, "{v:#}");
}

#[test]
fn approve_plan_holds_the_plan_until_approve_id_plan() {
    let plan = r#"{"steps":[{"id":"work","command":["sh","-c","echo ran > ran.txt"]}]}"#;
    let d = scripted(&planner_writing(plan), PASS, "");
    let file = d.write_plan(
        "goal.toml",
        "goal = \"g\"\n[planner]\nagent = \"planner\"\napprove_plan = true\n",
    );
    let id = d.submit(&[&file], 0);
    let v = d.wait_state(&id, &["awaiting_approval"], LONG);
    assert_eq!(
        v.steps.len(),
        1,
        "the plan's steps wait for the approval: {v:?}"
    );
    assert!(read(d.work_dir(), "ran.txt").is_empty());
    let text = crate::support::stdout(&d.ctl(&["status", &id]));
    assert!(text.contains("Round      1: awaiting_approval"), "{text}");
    let out = d.ctl(&["approve", &id, "plan"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(read(d.work_dir(), "ran.txt").trim(), "ran");
    let events = d.events(&id);
    let accepted: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "plan_accepted")
        .collect();
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0]["by_uid"].is_number(), "{:#}", accepted[0]);
}

#[test]
fn a_goal_only_objective_cannot_be_retried() {
    let d = scripted("#!/bin/sh\nexit 1\n", PASS, "");
    let id = d.submit(&["--goal", "g", "--planner", "planner"], 0);
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "failed");
    let out = d.ctl(&["retry", &id]);
    let problems = refusal_problems(&out, 1, &["goal-only", "submit the goal again"], &[]);
    assert!(problems.is_empty(), "{problems:?}\n{}", describe(&out));
}

#[test]
fn orchd_killed_mid_round_resumes_the_round() {
    // Round 1's step blocks until the test lets it go (a fifo); orchd is killed with
    // SIGKILL while it runs, started again, and the round carries on to the verdict.
    let plan = r#"{"steps":[{"id":"wait","command":["sh","-c","cat gate > /dev/null; echo through >> passed.txt"]}]}"#;
    let mut d = scripted(&planner_writing(plan), PASS, "");
    let gate = d.work_dir().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let id = d.submit(
        &["--goal", "g", "--planner", "planner", "--verifier", "judge"],
        0,
    );
    d.wait_for_state(
        &id,
        |v| {
            v["steps"]
                .as_array()
                .and_then(|steps| steps.iter().find(|s| s["id"] == "r1.wait"))
                .and_then(|s| s["attempts"].as_array())
                .is_some_and(|a| a.iter().any(|x| x["pid"].is_number()))
        },
        LONG,
    );
    d.kill9();
    d.launch();
    // Let every attempt of the step through (a re-run one or one a shim kept running).
    let opener = std::thread::spawn({
        let gate = gate.clone();
        move || {
            for _ in 0..2 {
                if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&gate) {
                    let _ = std::io::Write::write_all(&mut f, b"go\n");
                }
            }
        }
    });
    let v = d.wait_ended(&id, LONG);
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let r = rounds(&v);
    assert_eq!(r.len(), 1, "{v:#}");
    assert_eq!(r[0]["phase"], "passed");
    assert!(read(d.work_dir(), "passed.txt").contains("through"));
    // The plan was accepted once, not again after the restart.
    let events = d.events(&id);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "plan_accepted")
            .count(),
        1
    );
    // The opener's second open of the gate waits for a reader, and there is none when one
    // attempt was enough (the first "go" reached the attempt that finished): be that reader,
    // without blocking, so that it can end (before `d` removes the directory the gate is in).
    let reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&gate)
            .expect("open the gate to read")
    };
    let _ = opener.join();
    drop(reader);
    drop(d);
}
