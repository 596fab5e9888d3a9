//! Plan files that do not validate: `orchctl submit` exits 2 naming the file, the key and the
//! problem, and nothing is stored.

use crate::support::{TestDaemon, describe, refusal_problems, stderr, utf8};

const CMD: &str = r#"command = ["true"]"#;

/// `(file name, contents, words the message must contain besides the file name)`.
fn bad_plans() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "unknown-key.toml",
            format!("[[steps]]\nid = \"a\"\n{CMD}\ntimeuot = \"1s\"\n"),
            vec!["timeuot"],
        ),
        (
            "unknown-top-key.toml",
            format!("nmae = \"x\"\n[[steps]]\nid = \"a\"\n{CMD}\n"),
            vec!["nmae"],
        ),
        (
            "unknown-key.yaml",
            "steps:\n  - id: a\n    command: [\"true\"]\n    retires: 2\n".to_string(),
            vec!["retires"],
        ),
        (
            "unknown-key.json",
            r#"{"steps": [{"id": "a", "command": ["true"], "evn": {}}]}"#.to_string(),
            vec!["evn"],
        ),
        (
            "duplicate-ids.toml",
            format!("[[steps]]\nid = \"twice\"\n{CMD}\n[[steps]]\nid = \"twice\"\n{CMD}\n"),
            vec!["id", "twice", "duplicate"],
        ),
        (
            "bad-duration.toml",
            format!("[[steps]]\nid = \"a\"\n{CMD}\ntimeout = \"soon\"\n"),
            vec!["timeout", "soon"],
        ),
        (
            "bad-default-duration.toml",
            format!("[defaults]\nidle_timeout = \"5 parsecs\"\n[[steps]]\nid = \"a\"\n{CMD}\n"),
            vec!["idle_timeout", "5 parsecs"],
        ),
        (
            "bad-size.toml",
            format!("[[steps]]\nid = \"a\"\n{CMD}\nlimits = {{ memory = \"2Q\" }}\n"),
            vec!["memory", "2Q"],
        ),
        (
            "unknown-needs.toml",
            format!("[[steps]]\nid = \"a\"\nneeds = [\"ghost\"]\n{CMD}\n"),
            vec!["needs", "ghost"],
        ),
        (
            "cycle.toml",
            format!(
                "[[steps]]\nid = \"a\"\nneeds = [\"b\"]\n{CMD}\n[[steps]]\nid = \"b\"\nneeds = [\"a\"]\n{CMD}\n"
            ),
            vec!["needs", "cycle"],
        ),
        (
            "empty-program.toml",
            "[[steps]]\nid = \"a\"\ncommand = [\"\"]\n".to_string(),
            vec!["command"],
        ),
        (
            "no-command.toml",
            "[[steps]]\nid = \"a\"\ncommand = []\n".to_string(),
            vec!["command"],
        ),
        (
            "no-steps.toml",
            "name = \"nothing\"\n".to_string(),
            vec!["steps"],
        ),
        (
            "unknown-agent.toml",
            "[[steps]]\nid = \"a\"\nagent = \"no-such-agent\"\nprompt = \"hi\"\n".to_string(),
            vec!["agent", "no-such-agent"],
        ),
        (
            "plan.txt",
            format!("[[steps]]\nid = \"a\"\n{CMD}\n"),
            vec!["toml"],
        ),
    ]
}

#[test]
fn invalid_plans_exit_2_naming_file_and_key_and_store_nothing() {
    let d = TestDaemon::start();
    let mut failures = Vec::new();
    for (name, text, words) in bad_plans() {
        let path = d.write_plan(name, &text);
        let out = d.ctl(&["submit", &path]);
        let problems = refusal_problems(&out, 2, &[name], &words);
        if !problems.is_empty() {
            failures.push(format!(
                "{name}: {}\n{}",
                problems.join("; "),
                describe(&out)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad plan(s) not refused as they should be:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    let list = d.list(&[]);
    assert!(list.is_empty(), "an invalid plan was stored: {list:?}");
}

#[test]
fn missing_plan_file_is_invalid_input() {
    let d = TestDaemon::start();
    let missing = d.dir().join("missing.toml");
    let out = d.ctl(&["submit", utf8(&missing)]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("missing.toml"), "{}", describe(&out));
}

#[test]
fn a_valid_yaml_plan_runs() {
    let d = TestDaemon::start();
    let plan = d.write_plan(
        "two.yaml",
        "name: two\nsteps:\n  - id: a\n    command: [\"true\"]\n  - id: b\n    needs: [a]\n    command: [\"true\"]\n",
    );
    let id = d.submit(&["--wait", &plan], 0);
    let v = d.status(&id);
    assert_eq!(v["name"], "two", "{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["steps"].as_array().map(Vec::len), Some(2), "{v}");
}
