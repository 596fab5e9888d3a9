//! Smaller holes of a root daemon shared by several users, each reproduced: what an agent
//! inherits from the daemon (`oom_score_adj`, ignored signals, root's `HOME`), its
//! checkpoint file, the workdir as an existence oracle, who may reload the config, and
//! numbers that are too large to mean anything (refused by `orchctl` and by `orchd`).
//! The multi-user tests need root (`support::require_root`).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    TestDaemon, TestUser, block_on, command_step, describe, first_line, require_root, stderr,
    submit_request,
};

/// Opens a root daemon's socket (and its directory) to other users, as group `orch` does
/// on a real system.
fn open_to_everyone(d: &TestDaemon) {
    // The socket's directory is root's and not writable by others (orchctl refuses one
    // that is); the socket itself is open.
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

/// A throwaway user in group `orch` and a root daemon it can reach (started by `wrapper`
/// when one is given), or `None` without root.
fn user_and_daemon(why: &str, wrapper: &[&str]) -> Option<(TestUser, TestDaemon)> {
    if !require_root(why) {
        return None;
    }
    let u = TestUser::create(true);
    let d = if wrapper.is_empty() {
        TestDaemon::start()
    } else {
        TestDaemon::start_wrapped(wrapper, &[])
    };
    open_to_everyone(&d);
    Some((u, d))
}

/// `orchctl submit --wait --retries 0 ARGS...` as `u`; asserts success, returns the id.
fn submit_as(u: &TestUser, d: &TestDaemon, args: &[&str]) -> String {
    let mut full = vec!["submit", "--wait", "--retries", "0"];
    full.extend_from_slice(args);
    let out = u.orchctl(d, &full);
    assert!(out.status.success(), "{}", describe(&out));
    first_line(&out)
}

/// What step `step` of objective `id` printed, as text (read as root).
fn log_of(d: &TestDaemon, id: &str, step: &str) -> String {
    String::from_utf8_lossy(&d.logs(&[id, step])).into_owned()
}

/// Whether this process has CAP_SYS_RESOURCE, without which no process may set an
/// `oom_score_adj` below 0.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"));
    let eff = eff.and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    eff.is_some_and(|e| e & (1 << 24) != 0)
}

#[test]
fn agents_of_users_do_not_keep_the_daemons_oom_score_adj() {
    // Reset after the user switch, the write failed: the agent's /proc/self files belong
    // to root until it execs, and lowering a value that a process with CAP_SYS_RESOURCE
    // set (systemd's OOMScoreAdjust=) needs that capability.
    let values: &[&str] = if has_cap_sys_resource() {
        &["500", "-500"]
    } else {
        crate::support::announce(
            "note agents_of_users_do_not_keep_the_daemons_oom_score_adj: no CAP_SYS_RESOURCE \
             here, so the daemon cannot be given a negative value; checked with 500 only",
        );
        &["500"]
    };
    for adj in values {
        let script = format!("echo {adj} > /proc/self/oom_score_adj && exec \"$@\"");
        let Some((u, d)) = user_and_daemon("to run agents as a user", &["sh", "-c", &script, "sh"])
        else {
            return;
        };
        let own = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", d.pid()));
        assert_eq!(own.expect("daemon's oom_score_adj").trim(), *adj);
        let id = submit_as(&u, &d, &["--", "cat", "/proc/self/oom_score_adj"]);
        assert_eq!(log_of(&d, &id, "main").trim(), "0", "daemon at {adj}");
    }
}

#[test]
fn signals_the_daemon_ignores_are_not_ignored_by_agents() {
    let wrapper = [
        "bash",
        "-c",
        "trap '' HUP USR2 RTMIN RTMIN+3 RTMAX-2 RTMAX; exec \"$@\"",
        "bash",
    ];
    let Some((u, d)) = user_and_daemon("to run agents as a user", &wrapper) else {
        return;
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    let ignored = status.lines().find(|l| l.starts_with("SigIgn:"));
    let rt_bit = 1u64 << (libc::SIGRTMIN() + 3 - 1);
    let mask = ignored
        .and_then(|l| u64::from_str_radix(l["SigIgn:".len()..].trim(), 16).ok())
        .unwrap_or(0);
    assert_ne!(mask & rt_bit, 0, "the wrapper did not work: {ignored:?}");
    let script = "grep SigIgn /proc/self/status";
    let by_user = submit_as(&u, &d, &["--", "sh", "-c", script]);
    let by_root = d.submit(&["--wait", "--", "sh", "-c", script], 0);
    for id in [by_user, by_root] {
        let log = log_of(&d, &id, "main");
        assert_eq!(log.trim(), "SigIgn:\t0000000000000000", "{log}");
    }
}

#[test]
fn a_retried_step_of_a_user_reads_its_checkpoint() {
    let Some((u, d)) = user_and_daemon("to run agents as a user", &[]) else {
        return;
    };
    let plan = d.write_plan(
        "checkpoint.toml",
        r#"
[[steps]]
id = "a"
retry = { max_attempts = 2, initial_backoff = "50ms" }
command = ["sh", "-c", """
if [ -n "$ORCH_CHECKPOINT_FILE" ]; then
  echo "file=$ORCH_CHECKPOINT_FILE"
  echo "owner=$(stat -c %U:%a "$ORCH_CHECKPOINT_FILE")"
  echo "read=$(cat "$ORCH_CHECKPOINT_FILE")"
  exit 0
fi
echo '::orch-checkpoint::{"done":7}'
exit 1
"""]
"#,
    );
    let out = u.orchctl(&d, &["submit", "--wait", &plan]);
    assert!(out.status.success(), "{}", describe(&out));
    let log = log_of(&d, &first_line(&out), "a");
    assert!(log.contains("read={\"done\":7}"), "{log}");
    assert!(log.contains(&format!("owner={}:600", u.name)), "{log}");
    // The copy handed over lived for the attempt only.
    let file = log.lines().find_map(|l| l.strip_prefix("file="));
    let file = file.unwrap_or_else(|| panic!("no file= line: {log}"));
    assert!(!std::path::Path::new(file).exists(), "{file} was left");
}

/// The attempt's outcome and message of each step of objective `id`.
fn attempt_ends(d: &TestDaemon, id: &str) -> Vec<(String, String)> {
    let v = d.status(id);
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    steps
        .iter()
        .map(|s| {
            let a = &s["attempts"][0];
            let word = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (word("outcome"), word("message"))
        })
        .collect()
}

#[test]
fn a_workdir_the_user_cannot_see_says_only_permission_denied() {
    let Some((u, d)) = user_and_daemon("to submit as a user", &[]) else {
        return;
    };
    // A directory only root may enter (as /root is), holding one that exists.
    let private = d.dir().join("private");
    std::fs::create_dir_all(private.join("exists")).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let (exists, missing) = (private.join("exists"), private.join("missing"));
    let (exists, missing) = (exists.display().to_string(), missing.display().to_string());
    let plan = d.write_plan(
        "workdirs.toml",
        &format!(
            "[[steps]]\nid = \"exists\"\nworkdir = \"{exists}\"\ncommand = [\"true\"]\n\
             [[steps]]\nid = \"missing\"\nworkdir = \"{missing}\"\ncommand = [\"true\"]\n"
        ),
    );
    let out = u.orchctl(&d, &["submit", "--wait", "--retries", "0", &plan]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let ends = attempt_ends(&d, &first_line(&out));
    for ((outcome, message), dir) in ends.iter().zip([&exists, &missing]) {
        assert_eq!(outcome, "spawn_error");
        assert_eq!(
            message,
            &format!("cannot use workdir {dir}: permission denied")
        );
    }
    // orchctl's own check of --workdir, as the user, cannot tell them apart either.
    let refusals: Vec<(Option<i32>, String)> = [&exists, &missing]
        .iter()
        .map(|dir| {
            let out = u.orchctl(&d, &["submit", "--workdir", dir, "--", "true"]);
            (out.status.code(), stderr(&out).replace(dir.as_str(), "DIR"))
        })
        .collect();
    assert_eq!(refusals[0], refusals[1]);
    assert_eq!(refusals[0].0, Some(2), "{refusals:?}");
}

#[test]
fn a_clean_env_gives_a_user_agent_its_own_account() {
    let Some((u, d)) = user_and_daemon("to run agents as a user", &[]) else {
        return;
    };
    let script = "echo HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL";
    let id = submit_as(&u, &d, &["--clean-env", "--", "sh", "-c", script]);
    let expected = format!(
        "HOME={} USER={name} LOGNAME={name} SHELL=/bin/sh",
        u.home.display(),
        name = u.name
    );
    assert_eq!(log_of(&d, &id, "main").trim(), expected);
}

#[test]
fn only_root_or_the_daemons_user_may_reload_the_config() {
    let Some((u, d)) = user_and_daemon("to call as a user", &[]) else {
        return;
    };
    let out = u.orchctl(&d, &["daemon", "reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("may not reload"),
        "{}",
        describe(&out)
    );
    let out = d.ctl(&["daemon", "reload"]);
    assert!(out.status.success(), "{}", describe(&out));
    crate::support::poll_until("both reloads audited", Duration::from_secs(10), || {
        let audit = d.audit(&[]);
        let of = |uid: u32, result: &str| {
            audit
                .iter()
                .any(|e| e["action"] == "reload" && e["uid"] == uid && e["result"] == result)
        };
        (of(u.uid, "denied") && of(0, "ok")).then_some(())
    });
}

// ------------------------------------------------------------------ numbers out of range

/// Plan lines whose numbers are out of range, and the key each refusal must name.
const TOO_LARGE: &[(&str, &str)] = &[
    ("timeout = \"1000000d\"", "steps[a].timeout"),
    ("idle_timeout = \"1000000d\"", "steps[a].idle_timeout"),
    (
        "retry = { max_backoff = \"1000000d\" }",
        "steps[a].retry.max_backoff",
    ),
    (
        "retry = { multiplier = 1e308 }",
        "steps[a].retry.multiplier",
    ),
    (
        "limits = { memory = \"16777215T\" }",
        "steps[a].limits.memory",
    ),
    // TOML integers stop at i64::MAX.
    (
        "limits = { cpu_seconds = 9223372036854775807 }",
        "steps[a].limits.cpu_seconds",
    ),
    (
        "limits = { pids = 9223372036854775807 }",
        "steps[a].limits.pids",
    ),
    (
        "limits = { cpu_quota = 1e308 }",
        "steps[a].limits.cpu_quota",
    ),
];

#[test]
fn numbers_too_large_to_mean_anything_are_refused_by_orchctl() {
    let d = TestDaemon::start();
    for (i, (line, key)) in TOO_LARGE.iter().enumerate() {
        let plan = d.write_plan(
            &format!("big{i}.toml"),
            &format!("[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n{line}\n"),
        );
        let out = d.ctl(&["submit", "--dry-run", &plan]);
        assert_eq!(out.status.code(), Some(2), "{line}\n{}", describe(&out));
        assert!(stderr(&out).contains(key), "{line}\n{}", describe(&out));
    }
    for budget in ["nan", "inf", "-1"] {
        let plan = d.write_plan(
            "budget.toml",
            &format!("budget_usd = {budget}\n[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n"),
        );
        let out = d.ctl(&["submit", "--dry-run", &plan]);
        assert_eq!(out.status.code(), Some(2), "{budget}\n{}", describe(&out));
        assert!(stderr(&out).contains("budget_usd"), "{}", describe(&out));
        let out = d.ctl(&["submit", "--budget-usd", budget, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{budget}\n{}", describe(&out));
    }
    for (flag, value, key) in [
        (
            "--cpu-seconds",
            "18446744073709551615",
            "defaults.limits.cpu_seconds",
        ),
        ("--timeout", "1000000d", "defaults.timeout"),
        ("--idle-timeout", "1000000d", "defaults.idle_timeout"),
        ("--memory", "2000T", "defaults.limits.memory"),
    ] {
        let out = d.ctl(&["submit", "--dry-run", flag, value, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{flag}\n{}", describe(&out));
        assert!(stderr(&out).contains(key), "{flag}\n{}", describe(&out));
    }
}

/// A one-step spec changed by `edit`, submitted over gRPC (no orchctl checks): the refusal.
fn grpc_refusal(
    d: &TestDaemon,
    edit: impl FnOnce(&mut orch_proto::v1::ObjectiveSpec),
) -> tonic::Status {
    let mut spec = orch_proto::v1::ObjectiveSpec {
        name: "big".into(),
        steps: vec![command_step("a", &["true"])],
        ..Default::default()
    };
    edit(&mut spec);
    let req = submit_request(d.work_dir(), Some(spec));
    let result = block_on(async { d.client().await.submit(req).await });
    match result {
        Ok(r) => panic!("accepted: {:?}", r.into_inner()),
        Err(s) => s,
    }
}

#[test]
fn numbers_too_large_to_mean_anything_are_refused_by_orchd() {
    use orch_proto::v1::{Limits, RetryPolicy};
    let d = TestDaemon::start();
    type Edit = Box<dyn FnOnce(&mut orch_proto::v1::ObjectiveSpec)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "steps[a].timeout",
            Box::new(|s| s.steps[0].timeout_ms = Some(u64::MAX)),
        ),
        (
            "steps[a].idle_timeout",
            Box::new(|s| s.steps[0].idle_timeout_ms = Some(u64::MAX)),
        ),
        (
            "steps[a].retry.initial_backoff",
            Box::new(|s| {
                s.steps[0].retry = Some(RetryPolicy {
                    initial_backoff_ms: Some(u64::MAX),
                    max_backoff_ms: Some(u64::MAX),
                    ..Default::default()
                })
            }),
        ),
        (
            "steps[a].retry.multiplier",
            Box::new(|s| {
                s.steps[0].retry = Some(RetryPolicy {
                    multiplier: Some(1e308),
                    ..Default::default()
                })
            }),
        ),
        (
            "defaults.limits.memory",
            Box::new(|s| {
                s.defaults = Some(orch_proto::v1::StepDefaults {
                    limits: Some(Limits {
                        memory_bytes: Some(u64::MAX),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
        ),
        (
            "steps[a].limits.cpu_seconds",
            Box::new(|s| {
                s.steps[0].limits = Some(Limits {
                    cpu_seconds: Some(u64::MAX),
                    ..Default::default()
                })
            }),
        ),
        (
            "steps[a].limits.pids",
            Box::new(|s| {
                s.steps[0].limits = Some(Limits {
                    pids: Some(u64::MAX),
                    ..Default::default()
                })
            }),
        ),
        (
            "steps[a].limits.cpu_quota",
            Box::new(|s| {
                s.steps[0].limits = Some(Limits {
                    cpu_quota: Some(f64::INFINITY),
                    ..Default::default()
                })
            }),
        ),
        ("budget_usd", Box::new(|s| s.budget_usd = Some(f64::NAN))),
        (
            "budget_usd",
            Box::new(|s| s.budget_usd = Some(f64::INFINITY)),
        ),
        ("budget_usd", Box::new(|s| s.budget_usd = Some(-1.0))),
    ];
    for (key, edit) in cases {
        let s = grpc_refusal(&d, edit);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{key}: {s:?}");
        assert!(s.message().starts_with(key), "{key}: {}", s.message());
    }
    let none: Value = d.ctl_json(&["list"]);
    assert_eq!(none, Value::Array(vec![]), "nothing was stored");
}
