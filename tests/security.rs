//! Who may do what: a root daemon runs each agent as the user who submitted it (with
//! that user's groups), and other users may not control objectives they do not own.
//! Needs root (it switches users): without root each test says it was skipped
//! (`support::require_root`), and under `ORCH_TEST_ROOT=1` (CI) it fails instead.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::support::{ORCHCTL, TestDaemon, first_line, require_root};

const NOBODY: u32 = 65534;

/// Opens a root daemon's socket to other users (what group `orch` does on a real system).
/// Its directory may be entered, not written: clients refuse a socket others could replace.
fn open_to_everyone(d: &TestDaemon) {
    for (p, mode) in [(d.dir(), 0o755), (d.socket(), 0o777)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

/// A daemon whose socket other users can reach, or `None` without root (see
/// `require_root`).
fn shared_daemon(args: &[&str]) -> Option<TestDaemon> {
    if !require_root("to run agents and orchctl as user nobody") {
        return None;
    }
    let d = TestDaemon::start_with(args, &[]);
    open_to_everyone(&d);
    Some(d)
}

/// `orchctl ARGS...` run as user `nobody`.
fn ctl_as_nobody(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    Command::new(ORCHCTL)
        .arg("--socket")
        .arg(d.socket())
        .args(args)
        .current_dir("/tmp")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/tmp")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run orchctl as nobody")
}

#[test]
fn agents_of_a_root_daemon_run_as_the_submitting_user() {
    let Some(d) = shared_daemon(&[]) else {
        return;
    };
    let out = ctl_as_nobody(
        &d,
        &[
            "submit",
            "--wait",
            "--retries",
            "0",
            "--workdir",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo uid=$(id -u) gid=$(id -g) groups=$(id -G)",
        ],
    );
    assert!(
        out.status.success(),
        "submit as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = first_line(&out);
    let log = String::from_utf8_lossy(&d.logs(&[&id])).into_owned();
    let expected_groups = nix::unistd::getgrouplist(c"nobody", nix::unistd::Gid::from_raw(NOBODY))
        .map(|g| {
            g.into_iter()
                .map(|g| g.as_raw().to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|_| vec![NOBODY.to_string()]);
    assert!(
        log.contains(&format!("uid={NOBODY} gid={NOBODY} ")),
        "agent did not run as nobody: {log}"
    );
    for g in &expected_groups {
        assert!(log.contains(g.as_str()), "group {g} missing: {log}");
    }
    assert!(!log.contains("groups=0"), "root's group leaked: {log}");
    // Root's own objectives still run as root.
    let root_id = d.submit(
        &[
            "--wait",
            "--retries",
            "0",
            "--",
            "sh",
            "-c",
            "echo uid=$(id -u)",
        ],
        0,
    );
    let log = String::from_utf8_lossy(&d.logs(&[&root_id])).into_owned();
    assert!(log.contains("uid=0"), "{log}");
}

#[test]
fn a_workdir_the_user_cannot_enter_is_a_spawn_error() {
    let Some(d) = shared_daemon(&[]) else {
        return;
    };
    let private = d.dir().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let dir = private.display().to_string();
    let out = ctl_as_nobody(
        &d,
        &[
            "submit",
            "--wait",
            "--retries",
            "2",
            "--workdir",
            &dir,
            "--",
            "true",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = first_line(&out);
    let v = d.status(&id);
    let attempts = v["steps"][0]["attempts"]
        .as_array()
        .expect("attempts")
        .clone();
    assert_eq!(attempts.len(), 1, "spawn errors are not retried: {v}");
    assert_eq!(attempts[0]["outcome"], "spawn_error", "{v}");
}

#[test]
fn other_users_may_not_control_objectives_they_do_not_own() {
    let Some(d) = shared_daemon(&["--grace-period", "1s"]) else {
        return;
    };
    let id = d.submit(&["--", "sleep", "30"], 0);
    d.wait_state(&id, &["running"], Duration::from_secs(20));
    for action in ["cancel", "pause"] {
        let out = ctl_as_nobody(&d, &[action, &id]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{action} by nobody must be refused"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("may not") && err.contains("65534"),
            "{action}: {err}"
        );
    }
    // Reading is allowed; the refusals are audited as denied with the caller's uid.
    assert!(ctl_as_nobody(&d, &["status", &id]).status.success());
    let audit = d.ctl_json(&["audit", "--objective", &id]);
    let denied: Vec<_> = audit
        .as_array()
        .expect("audit array")
        .iter()
        .filter(|e| e["result"] == "denied" && e["uid"] == NOBODY)
        .collect();
    assert_eq!(denied.len(), 2, "{audit}");
    // The owner (root) still may.
    let out = d.ctl(&["cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn throwaway_users_exist_for_the_test_and_are_gone_after() {
    if !require_root("to create users") {
        return;
    }
    let u = crate::support::TestUser::create(true);
    let out = u.command("id").arg("-un").output().expect("run id");
    let unreachable = u.orchctl_at(std::path::Path::new("/nonexistent/orchd.sock"), &["list"]);
    assert_eq!(unreachable.status.code(), Some(3), "{unreachable:?}");
    if let Some(d) = shared_daemon(&[]) {
        let listed = u.orchctl(&d, &["list"]);
        assert!(listed.status.success(), "{listed:?}");
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), u.name);
    assert!(u.groups().contains(&crate::support::orch_group()));
    let name = u.name.clone();
    drop(u);
    assert!(nix::unistd::User::from_name(&name).ok().flatten().is_none());
}
