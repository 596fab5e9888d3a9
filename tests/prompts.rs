//! An agent gets its prompt once, the way its profile says: on stdin, as an argument
//! (`{prompt}`), or in a file only it can read (`{prompt_file}`); a prompt too large for
//! an argument is refused at submit.

use std::time::Duration;

use crate::support::{TestDaemon, describe};

const CONFIG: &str = r#"
[agents.by-stdin]
command = ["sh", "-c", "echo \"argv=[$*]\"; echo \"stdin=[$(cat)]\"", "sh"]

[agents.by-argv]
command = ["sh", "-c", "echo \"argv=[$*]\"; echo \"stdin=[$(cat)]\"", "sh", "{prompt}"]

[agents.by-file]
prompt = "file"
command = ["sh", "-c", "echo \"argv=[$*]\"; echo \"stdin=[$(cat)]\"; echo \"file=[$(cat \"$1\")]\"; ls -l \"$1\"", "sh", "{prompt_file}"]
"#;

fn run(d: &TestDaemon, agent: &str) -> String {
    let out = d.ctl(&["submit", "--wait", "--agent", agent, "--prompt", "say hi"]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    d.wait_ended(&id, Duration::from_secs(30));
    String::from_utf8_lossy(&d.logs(&[&id, "--stdout"])).into_owned()
}

#[test]
fn each_agent_gets_its_prompt_once_as_its_profile_says() {
    let mut d = TestDaemon::prepare_with_config(CONFIG, &[]);
    d.launch();
    let stdin = run(&d, "by-stdin");
    assert!(
        stdin.contains("argv=[]") && stdin.contains("stdin=[say hi]"),
        "{stdin}"
    );
    let argv = run(&d, "by-argv");
    assert!(
        argv.contains("argv=[say hi]") && argv.contains("stdin=[]"),
        "{argv}"
    );
    let file = run(&d, "by-file");
    assert!(
        file.contains("stdin=[]") && file.contains("file=[say hi]"),
        "{file}"
    );
    assert!(
        file.contains("-rw-------"),
        "only the agent's user reads it: {file}"
    );
    assert_eq!(file.matches("say hi").count(), 1, "{file}");
}

#[test]
fn a_prompt_too_large_for_an_argument_is_refused_at_submit() {
    let mut d = TestDaemon::prepare_with_config(CONFIG, &[]);
    d.launch();
    let big = "x".repeat(200 * 1024);
    let plan = d.write_file(
        "big.toml",
        &format!(
            "name = \"big\"\n\n[[steps]]\nid = \"ask\"\nagent = \"by-argv\"\nprompt = \"{big}\"\n"
        ),
    );
    let out = d.ctl(&["submit", plan.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("204800 bytes is too large to pass as an argument to agent `by-argv`"),
        "{err}"
    );
    // The same prompt through stdin is fine.
    let plan = d.write_file(
        "big-stdin.toml",
        &format!(
            "name = \"big\"\n\n[[steps]]\nid = \"ask\"\nagent = \"by-stdin\"\nprompt = \"{big}\"\n"
        ),
    );
    let out = d.ctl(&["submit", "--wait", plan.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", describe(&out));
}
