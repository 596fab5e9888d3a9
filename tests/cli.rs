//! `orchctl` on its own: exit codes for an unreachable daemon and bad input, the socket
//! overrides, help and shell completions.

use std::os::unix::net::UnixListener;
use std::process::Command;

use crate::support::{
    CMD_DEADLINE, ORCHCTL, TestDaemon, describe, orchctl, run_deadline, scrub_env, stderr, stdout,
    temp_dir,
};

/// `orchctl ARGS...` with a clean environment plus `env`, and no `--socket` flag.
fn orchctl_env(
    cwd: &std::path::Path,
    env: &[(&str, &std::path::Path)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(ORCHCTL);
    scrub_env(&mut cmd);
    cmd.args(args).current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_unreachable(out: &std::process::Output, socket: &std::path::Path) {
    assert_eq!(out.status.code(), Some(3), "{}", describe(out));
    let err = stderr(out);
    assert!(
        err.contains(&socket.display().to_string()),
        "the message does not say where it looked ({})\n{}",
        socket.display(),
        describe(out)
    );
    assert!(
        err.contains("orchd"),
        "the message does not say how to start orchd\n{}",
        describe(out)
    );
}

#[test]
fn no_daemon_exits_3_saying_where_it_looked() {
    let dir = temp_dir();
    let socket = dir.path().join("nobody-home.sock");
    for args in [
        &["list"][..],
        &["status", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        &["submit", "--", "true"],
    ] {
        let out = orchctl(&socket, dir.path(), args);
        assert_unreachable(&out, &socket);
    }
    // The same through ORCH_SOCKET alone.
    let out = orchctl_env(dir.path(), &[("ORCH_SOCKET", &socket)], &["list"]);
    assert_unreachable(&out, &socket);
}

#[test]
fn a_dead_socket_file_exits_3() {
    let dir = temp_dir();
    let socket = dir.path().join("dead.sock");
    drop(UnixListener::bind(&socket).expect("bind a socket to leave behind"));
    let out = orchctl(&socket, dir.path(), &["list"]);
    assert_unreachable(&out, &socket);
}

#[test]
fn orch_socket_env_reaches_the_daemon() {
    let d = TestDaemon::start();
    let id = d.submit(&["--", "true"], 0);
    let out = orchctl_env(
        d.work_dir(),
        &[("ORCH_SOCKET", d.socket())],
        &["list", "-o", "json"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains(&id), "{}", describe(&out));
    // The flag beats the environment.
    let dir = temp_dir();
    let bogus = dir.path().join("bogus.sock");
    let mut cmd = Command::new(ORCHCTL);
    scrub_env(&mut cmd);
    cmd.arg("--socket")
        .arg(d.socket())
        .args(["list", "-o", "json"])
        .env("ORCH_SOCKET", &bogus)
        .current_dir(d.work_dir());
    let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "--socket must beat ORCH_SOCKET\n{}",
        describe(&out)
    );
}

#[test]
fn bad_input_exits_2() {
    // Against a live daemon, so that "invalid input" cannot be confused with "unreachable".
    let d = TestDaemon::start();
    for args in [
        &["--no-such-flag"][..],
        &["list", "--limit", "many"],
        &["list", "--state", "bogus"],
        &["submit"],
        &["submit", "--timeout", "soon", "--", "true"],
        &["submit", "--memory", "2Q", "--", "true"],
        &["no-such-command"],
    ] {
        let out = d.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "orchctl {args:?}\n{}",
            describe(&out)
        );
    }
    let list = d.list(&[]);
    assert!(
        list.is_empty(),
        "invalid input stored an objective: {list:?}"
    );
}

#[test]
fn status_of_an_unknown_objective_exits_1() {
    let d = TestDaemon::start();
    let id = ulid::Ulid::generate().to_string();
    let out = d.ctl(&["status", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains(&id), "{}", describe(&out));
}

#[test]
fn help_lists_the_commands() {
    let dir = temp_dir();
    let out = orchctl(&dir.path().join("x.sock"), dir.path(), &["--help"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    for cmd in ["submit", "status", "list", "completions"] {
        assert!(
            text.contains(cmd),
            "--help does not mention `{cmd}`\n{text}"
        );
    }
}

#[test]
fn completions_need_no_daemon() {
    let dir = temp_dir();
    let socket = dir.path().join("nobody-home.sock");
    let out = orchctl(&socket, dir.path(), &["completions", "bash"]);
    assert!(out.status.success(), "{}", describe(&out));
    let script = stdout(&out);
    assert!(
        script.contains("complete"),
        "not a bash completion script:\n{script}"
    );
    assert!(
        script.contains("orchctl"),
        "does not complete orchctl:\n{script}"
    );
    // The script asks orchctl itself (COMPLETE=bash) for candidates: commands, flags, ids.
    assert!(
        script.contains("COMPLETE=\"bash\""),
        "not a dynamic completion script:\n{script}"
    );
    let mut cmd = Command::new(ORCHCTL);
    scrub_env(&mut cmd);
    cmd.env("COMPLETE", "fish")
        .env("ORCH_SOCKET", &socket)
        .args(["--", "orchctl", "sub"])
        .current_dir(dir.path());
    let out = run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("submit")),
        "does not complete `submit`:\n{}",
        describe(&out)
    );
    let out = orchctl(&socket, dir.path(), &["completions", "no-such-shell"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
