//! `orchctl doctor`: what makes orch work well on this machine, each finding with how to fix
//! it. Exits 1 when something is broken (a `fail`), 0 when there are only warnings.
//!
//! The checks: cgroup v2 and the controllers orchd's limits use; the socket (its owner and
//! mode checks, whether a daemon answers) and the state directory; journald; lingering for a
//! user daemon; the programs of the configured agent profiles and their versions; the
//! config's validity (read by the `orchd` beside this `orchctl`, as the daemon reads it).
//! The judgements are pure functions of facts gathered first, tested without the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use orch_proto::paths::{self, SocketOrigin};
use orch_proto::v1::{DaemonStatusRequest, DaemonStatusResponse, ListAgentsRequest};
use serde_json::json;

use crate::client::Client;
use crate::error::{CtlError, Result};
use crate::output::{self, Format};

/// How a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    /// How to fix it (for warn and fail).
    pub fix: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// The controllers orchd's per-attempt limits use.
const WANTED_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// cgroup v2: `root_controllers` is the unified hierarchy's `cgroup.controllers`, wherever it
/// is mounted (None: none mounted); `backend` is what a reachable daemon reports (`limits_backend`,
/// `limits_detail`).
pub fn judge_cgroup(root_controllers: Option<&str>, backend: Option<(&str, &str)>) -> Finding {
    const CHECK: &str = "cgroup v2";
    let Some(available) = root_controllers else {
        return warn(
            CHECK,
            "no cgroup v2 (unified) hierarchy is mounted: limits fall back to rlimits \
             (no memory accounting, no reliable kill of a whole agent tree)",
            "boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1 on the kernel \
             command line; the default on Debian 11+, Fedora 31+)",
        );
    };
    let have: Vec<&str> = available.split_whitespace().collect();
    let missing: Vec<&str> = WANTED_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !have.contains(c))
        .collect();
    let controllers = format!("controllers: {}", have.join(" "));
    if let Some((name, detail)) = backend
        && name != "cgroup-v2"
    {
        return warn(
            CHECK,
            format!("the daemon uses {name} ({detail}); {controllers}"),
            "run orchd from its systemd unit (Delegate=yes gives it a cgroup subtree of its own); \
             for a user service, systemd delegates only with user@.service's Delegate=yes \
             (the default on systemd 244+)",
        );
    }
    if !missing.is_empty() {
        return warn(
            CHECK,
            format!("{controllers}; missing {}", missing.join(", ")),
            format!(
                "enable the missing controllers ({}) for the daemon's cgroup: under systemd \
                 they come with Delegate=yes; the memory controller may need \
                 cgroup_enable=memory on the kernel command line",
                missing.join(", ")
            ),
        );
    }
    let delegated = match backend {
        Some((_, detail)) => format!("delegated to the daemon ({detail}); "),
        None => String::new(),
    };
    ok(CHECK, format!("{delegated}{controllers}"))
}

/// journald: whether its socket is there.
pub fn judge_journald(socket_exists: bool, systemd_running: bool) -> Finding {
    const CHECK: &str = "journald";
    if socket_exists {
        ok(
            CHECK,
            "orchd under systemd logs to the journal: journalctl -u orchd OBJECTIVE_ID=<id>",
        )
    } else if systemd_running {
        warn(
            CHECK,
            "systemd runs but journald's socket /run/systemd/journal/socket is missing",
            "systemctl start systemd-journald.socket",
        )
    } else {
        warn(
            CHECK,
            "no journald (systemd is not PID 1): orchd logs to its stderr",
            "run orchd under systemd (systemctl enable --now orchd.socket), or keep its stderr \
             in a file",
        )
    }
}

/// Lingering, for a user whose own daemon serves them: without it, systemd stops the user
/// service (and every agent) at logout.
pub fn judge_linger(origin: SocketOrigin, uid: u32, user: &str, lingering: bool) -> Finding {
    const CHECK: &str = "lingering";
    if uid == 0 || origin == SocketOrigin::System {
        return ok(CHECK, "not needed: the system daemon serves you");
    }
    if lingering {
        ok(
            CHECK,
            format!("on for {user}: your user daemon keeps running after logout"),
        )
    } else {
        warn(
            CHECK,
            format!(
                "off for {user}: systemd stops your user daemon and its agents when you log out"
            ),
            format!("loginctl enable-linger {user}"),
        )
    }
}

/// The state directory a reachable daemon reported, from its owner and mode (when this user
/// can see them).
pub fn judge_state_dir(
    path: &str,
    facts: Option<(u32, u32)>,
    daemon_uid: u32,
    is_root: bool,
) -> Finding {
    const CHECK: &str = "state directory";
    let Some((owner, mode)) = facts else {
        return ok(CHECK, format!("{path} (the daemon's; not visible to you)"));
    };
    if owner != daemon_uid {
        return fail(
            CHECK,
            format!("{path} belongs to uid {owner}, not to the daemon's user (uid {daemon_uid})"),
            format!("chown -R {daemon_uid} {path}"),
        );
    }
    let loose = mode & 0o022;
    if loose != 0 {
        return fail(
            CHECK,
            format!("{path} is writable by others (mode {:04o})", mode & 0o7777),
            format!(
                "chmod {} {path}",
                if is_root || daemon_uid == 0 {
                    "0711"
                } else {
                    "0700"
                }
            ),
        );
    }
    ok(
        CHECK,
        format!("{path} (uid {owner}, mode {:04o})", mode & 0o7777),
    )
}

/// An agent profile's program: `version` is the first line of `PROGRAM --version`, or why
/// it could not be had.
pub fn judge_agent(
    name: &str,
    program: &str,
    found: bool,
    version: std::result::Result<String, String>,
) -> Finding {
    const CHECK: &str = "agent";
    if !found {
        return warn(
            CHECK,
            format!(
                "{name}: `{program}` is not on the daemon's PATH; objectives using this profile fail"
            ),
            format!(
                "install {program}, or set the profile's command to its full path ([agents.{name}] in orchd.toml)"
            ),
        );
    }
    match version {
        Ok(v) => ok(CHECK, format!("{name}: {program} {v}")),
        Err(why) => warn(
            CHECK,
            format!("{name}: {program} is found but `{program} --version` {why}"),
            format!("check that {program} runs for the users who submit to it"),
        ),
    }
}

/// The first line of `program --version`, within 10 s.
fn program_version(program: &str) -> std::result::Result<String, String> {
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let stdout = child.stdout.take();
    // The reader ends when the program (and anything holding its stdout) exits; a timer
    // kills a program that hangs.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut out) = stdout {
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
        }
        let _ = tx.send(text);
    });
    let text = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(t) => t,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err("did not answer within 10 s".into());
        }
    };
    let status = child.wait().map_err(|e| format!("cannot wait: {e}"))?;
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    if first.is_empty() {
        return Err("printed nothing".into());
    }
    Ok(first)
}

/// The config, as `orchd --config PATH --print-config` reads it.
pub fn judge_config(path: &str, exists: bool, check: std::result::Result<(), String>) -> Finding {
    const CHECK: &str = "config";
    if !exists {
        return ok(
            CHECK,
            format!("no file at {path}: the built-in defaults serve"),
        );
    }
    match check {
        Ok(()) => ok(CHECK, format!("{path} is valid")),
        Err(why) => fail(
            CHECK,
            format!("{path}: {why}"),
            format!(
                "fix {path} (docs: orchd.toml(5)); `orchd --config {path} --print-config` shows \
                 how orchd reads it; then `orchctl daemon reload`"
            ),
        ),
    }
}

/// The `orchd` to ask: the one beside this `orchctl`, else on PATH.
fn orchd_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("orchd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("orchd"))
}

fn check_config(path: &str) -> std::result::Result<(), String> {
    let out = Command::new(orchd_program())
        .arg("--config")
        .arg(path)
        .arg("--print-config")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run orchd to read it: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim().trim_start_matches("orchd: error: ");
    Err(text.replace('\n', " "))
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// Gathers the facts and judges them.
async fn findings(socket: &Path, origin: SocketOrigin) -> Vec<Finding> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let uid = paths::effective_uid();

    // The socket and the daemon behind it.
    let mut daemon: Option<(Client, DaemonStatusResponse)> = None;
    match Client::connect(socket).await {
        Ok(mut client) => {
            let r = client.api.daemon_status(DaemonStatusRequest {}).await;
            match client.check(r) {
                Ok(d) => {
                    out.push(ok(
                        "socket",
                        format!(
                            "{} ({}): {}",
                            socket.display(),
                            origin.describe(),
                            crate::views::daemon_kind(&d)
                        ),
                    ));
                    daemon = Some((client, d));
                }
                Err(e) => out.push(fail(
                    "socket",
                    format!("{}: the daemon refused its status: {e}", socket.display()),
                    "see the daemon's log (journalctl -u orchd)",
                )),
            }
        }
        Err(CtlError::Unreachable { cause, .. }) => out.push(fail(
            "socket",
            format!("no daemon answers at {} ({cause})", socket.display()),
            "start one: systemctl enable --now orchd.socket (system), \
             systemctl --user enable --now orchd (your own), or run orchd",
        )),
        Err(e) => out.push(fail(
            "socket",
            format!("{}: {e}", socket.display()),
            "remove or fix what the message names; a socket must be the daemon user's or root's, \
             in directories nobody else can write",
        )),
    }

    let root_controllers = orch_proto::paths::cgroup2_mount()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok());
    let backend = daemon
        .as_ref()
        .map(|(_, d)| (d.limits_backend.as_str(), d.limits_detail.as_str()));
    out.push(judge_cgroup(root_controllers.as_deref(), backend));

    if let Some((_, d)) = &daemon {
        let facts = std::fs::metadata(&d.state_dir)
            .ok()
            .map(|m| (m.uid(), m.mode()));
        out.push(judge_state_dir(&d.state_dir, facts, d.uid, uid == 0));
    }

    out.push(judge_journald(
        Path::new("/run/systemd/journal/socket").exists(),
        Path::new("/run/systemd/system").is_dir(),
    ));

    let me = user_name(uid);
    let lingering = Path::new("/var/lib/systemd/linger").join(&me).exists();
    out.push(judge_linger(origin, uid, &me, lingering));

    if let Some((client, d)) = &mut daemon {
        let r = client.api.list_agents(ListAgentsRequest {}).await;
        match client.check(r) {
            Ok(list) => {
                let mut agents = list.agents;
                agents.sort_by(|a, b| a.name.cmp(&b.name));
                for a in agents {
                    let Some(program) = a.command.first() else {
                        continue;
                    };
                    let version = if a.found {
                        program_version(program)
                    } else {
                        Err(String::new())
                    };
                    out.push(judge_agent(&a.name, program, a.found, version));
                }
            }
            Err(e) => out.push(warn(
                "agent",
                format!("cannot list the agent profiles: {e}"),
                "see the daemon's log",
            )),
        }
        let path = d.config_path.clone();
        let exists = Path::new(&path).exists();
        let check = if exists { check_config(&path) } else { Ok(()) };
        out.push(judge_config(&path, exists, check));
    } else {
        let path = paths::default_config().display().to_string();
        let exists = Path::new(&path).exists();
        let check = if exists { check_config(&path) } else { Ok(()) };
        out.push(judge_config(&path, exists, check));
    }
    out
}

/// `orchctl doctor`.
pub async fn run(socket: &Path, origin: SocketOrigin, format: Format) -> Result<()> {
    let found = findings(socket, origin).await;
    let broken = found.iter().filter(|f| f.level == Level::Fail).count();
    let warned = found.iter().filter(|f| f.level == Level::Warn).count();
    match format {
        Format::Json => output::json_pretty(&json!({
            "ok": broken == 0,
            "findings": found.iter().map(|f| json!({
                "check": f.check,
                "level": f.level.word().to_ascii_lowercase(),
                "detail": f.detail,
                "fix": f.fix,
            })).collect::<Vec<_>>(),
        }))?,
        Format::Table => {
            let mut text = String::new();
            for f in &found {
                text.push_str(&format!(
                    "{:<4}  {:<15}  {}\n",
                    f.level.word(),
                    f.check,
                    f.detail
                ));
                if let Some(fix) = &f.fix {
                    text.push_str(&format!("{:<4}  {:<15}  fix: {fix}\n", "", ""));
                }
            }
            text.push_str(&format!("{} problem(s), {} warning(s)\n", broken, warned));
            output::write_out(&text)?;
        }
    }
    if broken > 0 {
        return Err(CtlError::Exit(1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_findings() {
        let f = judge_cgroup(None, None);
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.fix
                .as_deref()
                .unwrap_or("")
                .contains("unified_cgroup_hierarchy")
        );
        let f = judge_cgroup(
            Some("cpuset cpu io memory pids\n"),
            Some(("cgroup-v2", "/sys/fs/cgroup/x")),
        );
        assert_eq!(f.level, Level::Ok, "{f:?}");
        assert!(f.detail.contains("delegated"), "{f:?}");
        let f = judge_cgroup(Some("cpu io pids"), None);
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("missing memory"), "{f:?}");
        let f = judge_cgroup(
            Some("cpu io memory pids"),
            Some(("rlimit", "no delegation")),
        );
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.fix.as_deref().unwrap_or("").contains("Delegate=yes"),
            "{f:?}"
        );
    }

    #[test]
    fn linger_matters_only_for_a_user_daemon() {
        assert_eq!(
            judge_linger(SocketOrigin::System, 1000, "ann", false).level,
            Level::Ok
        );
        assert_eq!(
            judge_linger(SocketOrigin::Own, 0, "root", false).level,
            Level::Ok
        );
        let f = judge_linger(SocketOrigin::Own, 1000, "ann", false);
        assert_eq!(f.level, Level::Warn);
        assert_eq!(f.fix.as_deref(), Some("loginctl enable-linger ann"));
        assert_eq!(
            judge_linger(SocketOrigin::Own, 1000, "ann", true).level,
            Level::Ok
        );
    }

    #[test]
    fn state_dir_findings() {
        assert_eq!(
            judge_state_dir("/s", Some((1000, 0o40700)), 1000, false).level,
            Level::Ok
        );
        let f = judge_state_dir("/s", Some((1001, 0o40700)), 1000, false);
        assert_eq!(f.level, Level::Fail);
        assert_eq!(f.fix.as_deref(), Some("chown -R 1000 /s"));
        let f = judge_state_dir("/var/lib/orch", Some((0, 0o40777)), 0, false);
        assert_eq!(f.level, Level::Fail);
        assert_eq!(f.fix.as_deref(), Some("chmod 0711 /var/lib/orch"));
        assert_eq!(judge_state_dir("/s", None, 0, false).level, Level::Ok);
    }

    #[test]
    fn journald_and_agent_and_config_findings() {
        assert_eq!(judge_journald(true, true).level, Level::Ok);
        assert_eq!(judge_journald(false, true).level, Level::Warn);
        assert_eq!(judge_journald(false, false).level, Level::Warn);
        assert_eq!(
            judge_agent("claude", "claude", true, Ok("2.1 (Claude Code)".into())).level,
            Level::Ok
        );
        let f = judge_agent("codex", "codex", false, Err(String::new()));
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("not on the daemon's PATH"), "{f:?}");
        assert_eq!(
            judge_agent("x", "x", true, Err("exited with 1".into())).level,
            Level::Warn
        );
        assert_eq!(judge_config("/e/o.toml", false, Ok(())).level, Level::Ok);
        assert_eq!(judge_config("/e/o.toml", true, Ok(())).level, Level::Ok);
        let f = judge_config("/e/o.toml", true, Err("unknown key".into()));
        assert_eq!(f.level, Level::Fail);
        assert!(f.detail.contains("unknown key"));
    }

    #[test]
    fn a_program_version_is_its_first_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            p.display().to_string()
        };
        let good = script("good", "echo 'tool 1.2.3'; echo more");
        assert_eq!(program_version(&good), Ok("tool 1.2.3".into()));
        let bad = script("bad", "exit 3");
        assert_eq!(
            program_version(&bad),
            Err("exited with exit status: 3".into())
        );
        let quiet = script("quiet", "exit 0");
        assert_eq!(program_version(&quiet), Err("printed nothing".into()));
        assert!(program_version("/nonexistent/prog").is_err());
    }
}
