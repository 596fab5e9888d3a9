//! Goal-only objectives (`goal` and a `[planner]` table, or `orchctl submit --goal TEXT
//! --planner AGENT`): what is checked at submit. orchd does not run them yet, so a valid
//! one is refused as well, saying so; nothing is ever stored.

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

#[test]
fn a_valid_goal_only_objective_is_refused_as_not_run_yet() {
    let d = daemon();
    assert_refused(
        &d,
        &[
            "submit",
            "--goal",
            "make it fast",
            "--planner",
            "plannerbot",
            "--verify-command",
            "true",
        ],
        1,
        &["planner:", "not run by this orchd yet"],
    );
    let plan = d.write_plan(
        "goal.toml",
        "goal = \"make it fast\"\n[planner]\nagent = \"plannerbot\"\nmax_rounds = 2\napprove_plan = true\n",
    );
    assert_refused(&d, &["submit", &plan], 1, &["not run by this orchd yet"]);
}
