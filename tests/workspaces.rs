//! Step workspaces (`workspace = "worktree" | "scratch"`) and the safety gates
//! (`[safety] require_approval`, a profile's `requires_approval`), against throwaway git
//! repositories.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{STATE_DEADLINE, TestDaemon, describe, stderr, stdout, step};

/// Runs git in `dir`; its stdout (the test fails with what git said).
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Makes the daemon's work dir a repository with one commit of `shared.txt`.
fn repo(d: &TestDaemon) -> &Path {
    let dir = d.work_dir();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.name", "Test User"]);
    git(dir, &["config", "user.email", "test@example.invalid"]);
    fs::write(dir.join("shared.txt"), "one\ntwo\nthree\n").expect("write shared.txt");
    git(dir, &["add", "shared.txt"]);
    git(dir, &["commit", "-q", "-m", "base"]);
    dir
}

fn branch(v: &Value, id: &str) -> Value {
    step(v, id)["branch"].clone()
}

#[test]
fn parallel_worktree_steps_edit_one_file_and_a_join_sees_both() {
    let d = TestDaemon::start_with(&["--max-parallel", "4"], &[]);
    let dir = repo(&d);
    let base = git(dir, &["rev-parse", "HEAD"]);
    // `top` leaves its change uncommitted (orch commits it); `bottom` commits its own.
    // Each waits until the other has started, so they run at the same time.
    let plan = d.write_plan(
        "parallel.toml",
        r#"
[defaults]
workspace = "worktree"

[[steps]]
id = "top"
command = ["sh", "-c", "sed -i 's/^one$/ONE/' shared.txt && touch ../top.on && i=0; while [ ! -e ../bottom.on ]; do i=$((i+1)); [ $i -gt 500 ] && exit 9; sleep 0.02; done"]

[[steps]]
id = "bottom"
command = ["sh", "-c", "sed -i 's/^three$/THREE/' shared.txt && git commit -qam 'bottom edits' && touch ../bottom.on && i=0; while [ ! -e ../top.on ]; do i=$((i+1)); [ $i -gt 500 ] && exit 9; sleep 0.02; done"]

[[steps]]
id = "join"
needs = ["top", "bottom"]
command = ["sh", "-c", "grep -qx ONE shared.txt && grep -qx two shared.txt && grep -qx THREE shared.txt"]
"#,
    );
    let id = d.submit(&[&plan], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    // The user's checkout is untouched.
    assert_eq!(
        fs::read_to_string(dir.join("shared.txt")).expect("read shared.txt"),
        "one\ntwo\nthree\n"
    );
    for s in ["top", "bottom", "join"] {
        let b = branch(&v, s);
        assert_eq!(step(&v, s)["workspace"], "worktree", "{v}");
        let name = b["name"].as_str().expect("a branch name");
        assert!(
            name.starts_with("orch/") && name.ends_with(&format!("/{s}")),
            "{b}"
        );
        assert_eq!(git(dir, &["rev-parse", name]), b["head"], "{b}");
    }
    assert_eq!(branch(&v, "top")["base"], base.as_str());
    assert_eq!(branch(&v, "bottom")["base"], base.as_str());
    // orch committed what `top` left, naming the objective, step and attempt.
    let top = branch(&v, "top");
    let msg = git(
        dir,
        &[
            "log",
            "-1",
            "--format=%s",
            top["name"].as_str().unwrap_or(""),
        ],
    );
    assert_eq!(msg, format!("orch: objective {id} step top attempt 1"));
    let author = git(
        dir,
        &[
            "log",
            "-1",
            "--format=%an",
            top["name"].as_str().unwrap_or(""),
        ],
    );
    assert_eq!(author, "Test User", "the user's git identity");

    // `diff` shows a step's own change against its base.
    let out = d.ctl(&["diff", &id, "top"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("-one") && text.contains("+ONE"), "{text}");
    assert!(!text.contains("THREE"), "only top's change: {text}");
    let out = d.ctl(&["diff", &id]);
    let text = stdout(&out);
    assert!(
        text.contains("# step bottom") && text.contains("+THREE"),
        "{text}"
    );
    // The human status names the branch and head.
    let out = d.ctl(&["status", &id]);
    assert!(
        stdout(&out).contains("top: branch orch/"),
        "{}",
        stdout(&out)
    );
    let out = d.ctl(&["diff", &id, "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no step `nope`"),
        "{}",
        describe(&out)
    );

    // rm removes the worktrees; branches with commits stay.
    let worktrees = d.state_dir().join("worktrees").join(&id);
    assert!(worktrees.join("top").join("shared.txt").exists());
    let out = d.ctl(&["rm", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    crate::support::poll_until("the worktrees removed", STATE_DEADLINE, || {
        (!worktrees.exists() && git(dir, &["worktree", "list"]).lines().count() == 1).then_some(())
    });
    for s in ["top", "bottom"] {
        let name = branch(&v, s)["name"].as_str().unwrap_or("").to_string();
        git(dir, &["rev-parse", "--verify", &name]);
    }
    // `join` only read: its branch has no commit of its own, so it went too.
    let join = branch(&v, "join")["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(git(dir, &["branch", "--list", &join]), "");
}

#[test]
fn a_join_of_conflicting_worktrees_fails_naming_the_paths() {
    let d = TestDaemon::start_with(&["--max-parallel", "4"], &[]);
    let dir = repo(&d);
    let plan = d.write_plan(
        "conflict.toml",
        r#"
[defaults]
workspace = "worktree"

[[steps]]
id = "left"
command = ["sh", "-c", "sed -i 's/^two$/LEFT/' shared.txt"]

[[steps]]
id = "right"
command = ["sh", "-c", "sed -i 's/^two$/RIGHT/' shared.txt"]

[[steps]]
id = "join"
needs = ["left", "right"]
retry = { max_attempts = 1 }
command = ["true"]
"#,
    );
    let id = d.submit(&[&plan], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(step(&v, "left")["state"], "succeeded", "{v}");
    assert_eq!(step(&v, "right")["state"], "succeeded", "{v}");
    let join = step(&v, "join");
    assert_eq!(join["state"], "failed", "{v}");
    let msg = join["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("merge conflict") && msg.contains("shared.txt"),
        "{v}"
    );
    // The failed merge left no worktree behind, and the user's checkout is untouched.
    assert_eq!(
        git(dir, &["worktree", "list"]).lines().count(),
        3,
        "left, right and main"
    );
    assert_eq!(git(dir, &["status", "--porcelain"]), "");
}

#[test]
fn a_retried_attempt_continues_in_the_same_worktree() {
    let d = TestDaemon::start();
    repo(&d);
    let plan = d.write_plan(
        "retry.toml",
        r#"
[[steps]]
id = "flaky"
workspace = "worktree"
retry = { max_attempts = 2, initial_backoff = "10ms", jitter = 0.0 }
command = ["sh", "-c", "if [ -e marker ]; then echo again >> marker; else echo first > marker; exit 1; fi"]
"#,
    );
    let id = d.submit(&[&plan], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    let path = d.state_dir().join("worktrees").join(&id).join("flaky");
    assert_eq!(
        fs::read_to_string(path.join("marker")).expect("read the marker"),
        "first\nagain\n"
    );
    let name = branch(&v, "flaky")["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let log = git(d.work_dir(), &["log", "--format=%s", &name]);
    assert!(
        log.contains("step flaky attempt 1") && log.contains("step flaky attempt 2"),
        "{log}"
    );
}

#[test]
fn a_worktree_outside_a_repository_is_refused_at_submit() {
    let d = TestDaemon::start();
    let plan = d.write_plan(
        "norepo.toml",
        "[[steps]]\nid = \"a\"\nworkspace = \"worktree\"\ncommand = [\"true\"]\n",
    );
    let out = d.ctl(&["submit", &plan]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("steps[a].workspace") && err.contains("not inside a git repository"),
        "{err}"
    );
    let plan = d.write_plan(
        "badword.toml",
        "[[steps]]\nid = \"a\"\nworkspace = \"sandbox\"\ncommand = [\"true\"]\n",
    );
    let out = d.ctl(&["submit", &plan]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("unknown workspace `sandbox`"),
        "{}",
        describe(&out)
    );
    assert!(d.list(&[]).is_empty(), "nothing stored");
}

#[test]
fn a_scratch_step_works_in_a_private_directory_removed_with_the_objective() {
    let d = TestDaemon::start();
    let plan = d.write_plan(
        "scratch.toml",
        "[[steps]]\nid = \"s\"\nworkspace = \"scratch\"\ncommand = [\"sh\", \"-c\", \"test -z \\\"$(ls -A)\\\" && pwd > made\"]\n",
    );
    let id = d.submit(&[&plan], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    let dir = d.state_dir().join("scratch").join(&id).join("s");
    assert_eq!(
        fs::read_to_string(dir.join("made"))
            .expect("read made")
            .trim(),
        dir.display().to_string()
    );
    let out = d.ctl(&["rm", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    crate::support::poll_until("the scratch dir removed", STATE_DEADLINE, || {
        (!dir.exists()).then_some(())
    });
}

#[test]
fn a_command_matching_a_safety_rule_waits_for_approval_naming_the_rule() {
    let mut d = TestDaemon::prepare_with_config(
        r#"
[safety]
require_approval = ["git push*", "rm -rf *"]

[agents.deployer]
command = ["sh", "-c", "{prompt}"]
requires_approval = true
"#,
        &[],
    );
    d.launch();
    let plan = d.write_plan(
        "risky.toml",
        r#"
[[steps]]
id = "safe"
command = ["echo", "git push is only words here"]

[[steps]]
id = "push"
needs = ["safe"]
command = ["sh", "-c", "git push origin main || touch pushed"]

[[steps]]
id = "deploy"
needs = ["safe"]
agent = "deployer"
prompt = "touch deployed"
"#,
    );
    // A dry run says which steps a rule will hold, and why.
    let out = d.ctl(&["submit", "--dry-run", &plan]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "push  (needs safe; waits for approval: command matches safety rule `git push*`)"
        ),
        "{text}"
    );
    let id = d.submit(&[&plan], 0);
    d.wait_state(&id, &["awaiting_approval"], STATE_DEADLINE);
    let v = d.status(&id);
    assert_eq!(step(&v, "safe")["state"], "succeeded", "{v}");
    assert_eq!(step(&v, "push")["state"], "awaiting_approval", "{v}");
    assert_eq!(
        step(&v, "push")["message"],
        "command matches safety rule `git push*`",
        "{v}"
    );
    assert_eq!(step(&v, "deploy")["state"], "awaiting_approval", "{v}");
    assert_eq!(
        step(&v, "deploy")["message"],
        "agent profile `deployer` requires approval",
        "{v}"
    );
    assert!(!d.work_dir().join("pushed").exists());
    for s in ["push", "deploy"] {
        let out = d.ctl(&["approve", &id, s]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(d.work_dir().join("pushed").exists() && d.work_dir().join("deployed").exists());
}

#[test]
fn a_safety_rule_that_is_no_glob_is_refused_naming_it() {
    let d = TestDaemon::prepare(&[], &[]);
    let path = d.write_file(
        "orchd.toml",
        "[safety]\nrequire_approval = [\"git [push\"]\n",
    );
    let out = d.print_config(&path);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("safety.require_approval[0]")
            && err.contains("`git [push` is not a glob pattern"),
        "{err}"
    );
}

/// A root daemon runs git as the user who submitted: their repository, their identity,
/// files they own.
#[test]
fn a_worktree_belongs_to_the_submitting_user_and_commits_as_them() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !crate::support::require_root("to run a shared root daemon and a throwaway user") {
        return;
    }
    crate::support::orch_group();
    let mut d = TestDaemon::prepare(&[], &[]);
    fs::set_permissions(d.dir(), fs::Permissions::from_mode(0o711))
        .expect("make the temp dir traversable");
    d.launch();
    let u = crate::support::TestUser::create(true);
    let as_user = |args: &[&str]| {
        let out = u
            .command("git")
            .args(args)
            .output()
            .expect("run git as the user");
        assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    };
    as_user(&["config", "--global", "user.name", "Alice Example"]);
    as_user(&["config", "--global", "user.email", "alice@example.invalid"]);
    as_user(&["init", "-q", "-b", "main", "repo"]);
    let repo = u.home.join("repo");
    fs::write(repo.join("f.txt"), "a\n").expect("write f.txt");
    fs::set_permissions(repo.join("f.txt"), fs::Permissions::from_mode(0o666)).expect("chmod");
    as_user(&["-C", "repo", "add", "f.txt"]);
    as_user(&["-C", "repo", "commit", "-q", "-m", "base"]);
    let out = u.orchctl(
        &d,
        &[
            "submit",
            "--wait",
            "--workdir",
            &repo.display().to_string(),
            "--retries",
            "0",
            "--workspace",
            "worktree",
            "--",
            "sh",
            "-c",
            "echo b >> f.txt && touch new.txt",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let id = crate::support::first_line(&out);
    let v = d.status(&id);
    let b = branch(&v, "main");
    let path = d.state_dir().join("worktrees").join(&id).join("main");
    let meta = fs::metadata(path.join("new.txt")).expect("the agent's file");
    assert_eq!(meta.uid(), u.uid, "made by the user");
    let out = u
        .command("git")
        .args([
            "-C",
            "repo",
            "log",
            "-1",
            "--format=%an",
            b["name"].as_str().unwrap_or(""),
        ])
        .output()
        .expect("git log");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Alice Example");
}

/// orchd killed mid-attempt: after the restart the step runs again in the worktree its
/// interrupted attempt left, and the branch gets what both did.
#[test]
fn after_a_crash_the_step_continues_in_its_worktree() {
    let mut d = TestDaemon::start();
    repo(&d);
    let plan = d.write_plan(
        "crash.toml",
        r#"
[[steps]]
id = "long"
workspace = "worktree"
command = ["sh", "-c", "if [ -e marker ]; then echo resumed >> marker; exit 0; fi; echo first > marker; touch ../long.started; while :; do sleep 0.05; done"]
"#,
    );
    let id = d.submit(&[&plan], 0);
    let started = d
        .state_dir()
        .join("worktrees")
        .join(&id)
        .join("long.started");
    crate::support::poll_until("the first attempt started", STATE_DEADLINE, || {
        started.exists().then_some(())
    });
    d.kill9();
    d.restart();
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    let attempts = step(&v, "long")["attempts"].as_array().map_or(0, Vec::len);
    assert_eq!(attempts, 2, "{v}");
    let name = branch(&v, "long")["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let text = git(d.work_dir(), &["show", &format!("{name}:marker")]);
    assert_eq!(text, "first\nresumed");
}

/// With live restore on (the default), a worktree step still gets its worktree and its
/// leftovers committed: private workspaces run under orchd's own runner, beside a shared
/// step that runs under a shim.
#[test]
fn worktree_steps_work_with_live_restore_on() {
    let mut d = TestDaemon::prepare(&[], &[]);
    d.set_env("ORCH_LIVE_RESTORE", "true");
    d.launch();
    repo(&d);
    let plan = d.write_plan(
        "live.toml",
        r#"
[[steps]]
id = "edit"
workspace = "worktree"
command = ["sh", "-c", "echo four >> shared.txt"]

[[steps]]
id = "look"
command = ["sh", "-c", "grep -c four shared.txt || true"]
"#,
    );
    let id = d.submit(&[&plan], 0);
    let v = d.wait_ended(&id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    let b = branch(&v, "edit");
    let name = b["name"].as_str().unwrap_or_default().to_string();
    assert!(name.starts_with("orch/"), "{v}");
    let shown = git(d.work_dir(), &["show", &format!("{name}:shared.txt")]);
    assert!(shown.ends_with("four"), "{shown}");
    // The shared checkout was not touched.
    let here = fs::read_to_string(d.work_dir().join("shared.txt")).expect("read shared.txt");
    assert!(!here.contains("four"), "{here}");
}
