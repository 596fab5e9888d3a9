//! orch as a service: socket activation (the listening socket systemd passes, here through
//! `systemd-socket-activate`, which sets `LISTEN_PID`/`LISTEN_FDS` as systemd does) and
//! `orchctl doctor`. The rest (journald, the packaged units) runs on a real systemd in the VM
//! test (tests/vm/deb.sh).

use std::fs;

use crate::support::{TestDaemon, describe, require_program, stdout};

/// A daemon started the way systemd starts a socket-activated service: by
/// `systemd-socket-activate`, which binds the socket and passes it (`LISTEN_FDS`).
fn socket_activated_daemon() -> Option<TestDaemon> {
    if !require_program("systemd-socket-activate", "passes orchd a listening socket") {
        return None;
    }
    let mut d = TestDaemon::prepare(&[], &[]);
    let socket = d.socket().display().to_string();
    // systemd-socket-activate starts its program with only the variables named by -E.
    let mut wrapper = vec!["systemd-socket-activate", "-l", socket.as_str()];
    for var in [
        "ORCH_CONFIG",
        "ORCH_LIVE_RESTORE",
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
        "XDG_RUNTIME_DIR",
        "RUST_LOG",
        "NO_COLOR",
        "PATH",
        "HOME",
    ] {
        wrapper.extend(["-E", var]);
    }
    d.set_wrapper(&wrapper);
    d.launch();
    Some(d)
}

#[test]
fn orchd_serves_on_the_socket_systemd_passes_and_leaves_it_in_place() {
    let Some(mut d) = socket_activated_daemon() else {
        return;
    };
    let socket = d.socket().display().to_string();
    let status = d.ctl_json(&["daemon", "status"]);
    assert_eq!(status["socket_activated"], true, "{status}");
    assert_eq!(status["socket"], socket.as_str(), "{status}");
    assert_eq!(status["socket_origin"], "flag", "{status}");
    let id = d.submit(&["--wait", "--", "true"], 0);
    assert_eq!(d.status(&id)["state"], "succeeded");
    let text = stdout(&d.ctl(&["daemon", "status"]));
    assert!(text.contains("socket-activated by systemd"), "{text}");
    let exit = d.stop();
    assert!(exit.success(), "orchd's exit: {exit:?}\n{}", d.log_text());
    // The socket is systemd's: orchd must not remove it (the next connection starts it).
    assert!(
        fs::symlink_metadata(d.socket()).is_ok(),
        "orchd removed the passed socket\n{}",
        d.log_text()
    );
    assert!(
        d.log_text()
            .contains("serving on the socket systemd passed"),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_daemon_that_binds_its_own_socket_says_so() {
    let d = TestDaemon::start();
    let status = d.ctl_json(&["daemon", "status"]);
    assert_eq!(status["socket_activated"], false, "{status}");
    assert_eq!(
        status["uid"],
        nix::unistd::Uid::effective().as_raw(),
        "{status}"
    );
    let want = if nix::unistd::Uid::effective().is_root() {
        "system"
    } else {
        "user"
    };
    assert_eq!(status["daemon"], want, "{status}");
}

#[test]
fn doctor_reports_each_check_and_fails_on_a_broken_config() {
    let d = TestDaemon::start();
    let out = d.ctl(&["doctor", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor -o json: {e}\n{}", describe(&out)));
    let checks: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["check"].as_str())
        .collect();
    for want in [
        "socket",
        "cgroup v2",
        "state directory",
        "journald",
        "lingering",
        "config",
    ] {
        assert!(checks.contains(&want), "no `{want}` check: {report}");
    }
    // Nothing is broken here (warnings, such as no journald, do not fail the run).
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(report["ok"], true, "{report}");
    for f in report["findings"].as_array().expect("findings") {
        if f["level"] != "ok" {
            assert!(
                f["fix"].as_str().is_some_and(|s| !s.is_empty()),
                "a finding without a fix: {f}"
            );
        }
    }

    // The config the daemon reads becomes invalid: doctor names it and exits 1.
    let config = report["findings"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["check"] == "config"))
        .expect("config finding");
    assert!(
        config["detail"]
            .as_str()
            .is_some_and(|s| s.contains("is valid")),
        "{config}"
    );
    let status = d.ctl_json(&["daemon", "status"]);
    let path = status["config_path"]
        .as_str()
        .expect("config_path")
        .to_string();
    fs::write(&path, "max_parallel = \"many\"\n").expect("write a broken config");
    let out = d.ctl(&["doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("config"))
        .unwrap_or_else(|| panic!("no failed config line:\n{text}"));
    assert!(line.contains(&path), "{line}");
    assert!(text.contains("fix: fix "), "{text}");
    assert!(text.contains("1 problem(s)"), "{text}");
}

#[test]
fn doctor_without_a_daemon_says_how_to_start_one() {
    let d = TestDaemon::prepare(&[], &[]);
    let out = d.ctl(&["doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("socket"))
        .unwrap_or_else(|| panic!("no failed socket line:\n{text}"));
    assert!(line.contains("no daemon answers"), "{line}");
    assert!(
        text.contains("systemctl enable --now orchd.socket"),
        "{text}"
    );
}

/// `orchctl daemon upgrade` of a socket-activated orchd: the re-executed image gets the
/// socket systemd passed (as systemd passes it) and serves on it; the pid stays.
#[test]
fn an_upgrade_keeps_serving_on_the_socket_systemd_passed() {
    let Some(d) = socket_activated_daemon() else {
        return;
    };
    let before = d.ctl_json(&["daemon", "status"]);
    assert_eq!(before["socket_activated"], true, "{before}");
    let out = d.ctl(&["daemon", "upgrade"]);
    assert!(out.status.success(), "{}\n{}", describe(&out), d.log_text());
    let after = d.ctl_json(&["daemon", "status"]);
    assert_eq!(after["socket_activated"], true, "{after}\n{}", d.log_text());
    assert_eq!(after["pid"], before["pid"], "{after}");
    assert_ne!(
        after["daemon_started_ms"], before["daemon_started_ms"],
        "{after}"
    );
    let id = d.submit(&["--wait", "--", "true"], 0);
    assert_eq!(d.status(&id)["state"], "succeeded");
    assert!(
        fs::symlink_metadata(d.socket()).is_ok(),
        "the passed socket's file is gone\n{}",
        d.log_text()
    );
}
