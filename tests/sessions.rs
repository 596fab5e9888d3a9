//! An agent's session is recorded on its attempt, and the step's next attempt continues
//! it with the profile's `resume` arguments (`orchctl retry --fresh` starts anew).

use std::time::Duration;

use crate::support::{TestDaemon, attempts, describe};

/// A Claude-like agent: names a session (a new one unless resumed), records its argv,
/// and fails while the file `fail` exists in its workdir.
const CONFIG: &str = r#"
[agents.talker]
usage = "claude-stream-json"
resume = ["--resume", "{session_id}"]
command = ["sh", "-c", """
sid=new-$$
[ "$1" = --resume ] && sid=$2
echo "$*" >> argv.txt
echo '{"type":"system","subtype":"init","session_id":"'$sid'"}'
[ ! -e fail ]
""", "sh"]
"#;

fn argv_lines(d: &TestDaemon) -> Vec<String> {
    std::fs::read_to_string(d.work_dir().join("argv.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_retried_step_resumes_its_session_unless_asked_to_start_fresh() {
    let mut d = TestDaemon::prepare_with_config(CONFIG, &[]);
    d.launch();
    std::fs::write(d.work_dir().join("fail"), "").expect("write");
    let out = d.ctl(&[
        "submit",
        "--wait",
        "--retries",
        "1",
        "--agent",
        "talker",
        "--prompt",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let v = d.wait_ended(&id, Duration::from_secs(30));
    let tries = attempts(&v["steps"][0]);
    let first = tries[0]["session_id"].as_str().unwrap_or("").to_string();
    assert!(first.starts_with("new-"), "{v}");
    assert_eq!(
        tries[1]["session_id"],
        first.as_str(),
        "the retry resumed it: {v}"
    );
    assert_eq!(argv_lines(&d), ["", &format!("--resume {first}")]);

    // `orchctl retry` resumes too; `--fresh` does not.
    std::fs::remove_file(d.work_dir().join("fail")).expect("rm");
    let out = d.ctl(&["retry", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    d.wait_ended(&id, Duration::from_secs(30));
    assert_eq!(
        argv_lines(&d).last().map(String::as_str),
        Some(format!("--resume {first}").as_str())
    );

    std::fs::write(d.work_dir().join("fail"), "").expect("write");
    let out = d.ctl(&[
        "submit",
        "--wait",
        "--retries",
        "0",
        "--agent",
        "talker",
        "--prompt",
        "hi",
    ]);
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    d.wait_ended(&id, Duration::from_secs(30));
    std::fs::remove_file(d.work_dir().join("fail")).expect("rm");
    let out = d.ctl(&["retry", "--fresh", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = d.wait_ended(&id, Duration::from_secs(30));
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(
        argv_lines(&d).last().map(String::as_str),
        Some(""),
        "a fresh session"
    );
}
