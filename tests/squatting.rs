//! Trust no path orchd did not make: another user who gets to the socket's directory, the
//! socket or the state directory first (or can write where they live) must not receive a
//! user's submits, and orchd must not change directories it did not create. Each test plays
//! one attack. The multi-user ones need root (`support::require_root`): without it they say
//! they were skipped, and under `ORCH_TEST_ROOT=1` (CI) they fail instead.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{
    CMD_DEADLINE, ORCHCTL, TestDaemon, TestUser, block_on, describe, first_line, health,
    orch_group, poll_until, require_root, run_deadline, stderr, stdout, temp_dir,
};

/// How long a refused orchd may take to say so and exit.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(15);

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Owner uid, gid and mode of `path`.
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// `uid N (name)`, as the refusals name users.
fn named(u: &TestUser) -> String {
    format!("uid {} ({})", u.uid, u.name)
}

/// Asserts `out` exited `code` and its stderr holds every one of `parts`.
fn assert_refused(out: &Output, code: i32, parts: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
    for p in parts {
        assert!(err.contains(p), "stderr lacks `{p}`\n{}", describe(out));
    }
}

/// Removes a directory (and what is in it) when dropped, for paths outside a `TempDir`.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An `orchd` (or stand-in) the test started itself; killed on drop.
struct Spawned {
    child: Child,
    log: PathBuf,
}

impl Spawned {
    /// Starts `cmd` with its output going to `log`, and waits until `socket` answers a
    /// health check (as root, or as the user the test runs as).
    fn orchd(mut cmd: Command, socket: &Path, log: &Path) -> Spawned {
        let file = fs::File::create(log).expect("create the orchd log");
        let err = file.try_clone().expect("clone the log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("spawn orchd");
        let mut s = Spawned {
            child,
            log: log.to_path_buf(),
        };
        poll_until("the orchd to serve", Duration::from_secs(20), || {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("orchd exited ({status}) before serving:\n{}", s.log_text());
            }
            (block_on(health(socket)) == Ok(ServingStatus::Serving)).then_some(())
        });
        s
    }

    fn log_text(&self) -> String {
        crate::support::tail_of(&self.log, 10_000)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `orchd --socket SOCKET --state-dir STATE` run as `u` (its own defaults otherwise).
fn orchd_as(u: &TestUser, socket: &Path, state: &Path) -> Command {
    let mut cmd = u.command(crate::support::ORCHD);
    cmd.arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state);
    cmd
}

/// `orchd --socket SOCKET --state-dir STATE` as the test's user, with `d`'s hermetic
/// environment and an empty config.
fn orchd_at(d: &TestDaemon, socket: &Path, state: &Path) -> Command {
    let empty = d.dir().join("empty-orchd.toml");
    fs::write(&empty, "").expect("write an empty config");
    let mut cmd = d.orchd_at(socket, state);
    cmd.env("ORCH_CONFIG", empty);
    cmd
}

/// Runs an orchd that must refuse to start, and returns what it said.
fn refused_orchd(mut cmd: Command) -> Output {
    run_deadline(&mut cmd, REFUSAL_DEADLINE)
        .unwrap_or_else(|e| panic!("orchd did not exit: it should have refused to start\n{e}"))
}

/// `orchctl ARGS...` as `u` with `u`'s clean environment (no `XDG_RUNTIME_DIR`, as in a
/// `su` shell, so the default socket is `/tmp/orch-$UID/orchd.sock`) plus `env`.
fn orchctl_as(u: &TestUser, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = u.command(ORCHCTL);
    cmd.envs(env.iter().copied()).args(args);
    run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
}

/// A directory only root can write, that everyone may enter, for sockets shared with
/// throwaway users.
fn shared_dir() -> tempfile::TempDir {
    let dir = temp_dir();
    chmod(dir.path(), 0o755);
    dir
}

#[test]
fn orchctl_refuses_a_socket_directory_another_user_made_for_it() {
    if !require_root("to play a victim and an attacker user") {
        return;
    }
    let victim = TestUser::create(false);
    let attacker = TestUser::create(false);
    // The victim's default socket without XDG_RUNTIME_DIR. Throwaway uids are fresh, but a
    // deleted user's uid comes back: clear what an earlier run may have left.
    let squat = PathBuf::from(format!("/tmp/orch-{}", victim.uid));
    let _ = fs::remove_dir_all(&squat);
    let _cleanup = RemoveOnDrop(squat.clone());
    // The attacker gets there first and serves an orchd of their own, open to everyone.
    let made = attacker
        .command("mkdir")
        .args(["-m", "0755"])
        .arg(&squat)
        .output()
        .expect("run mkdir");
    assert!(made.status.success(), "{}", describe(&made));
    let socket = squat.join("orchd.sock");
    let log_dir = temp_dir();
    let _fake = Spawned::orchd(
        orchd_as(&attacker, &socket, &attacker.home.join("state")),
        &socket,
        &log_dir.path().join("fake-orchd.log"),
    );
    let opened = attacker
        .command("chmod")
        .arg("666")
        .arg(&socket)
        .output()
        .expect("run chmod");
    assert!(opened.status.success(), "{}", describe(&opened));

    let out = orchctl_as(
        &victim,
        &[("API_KEY", "victim-secret")],
        &["submit", "--", "true"],
    );
    let why = format!(
        "refusing socket directory {}: owned by {}, not you (uid {}) or root; someone may be \
         impersonating orchd — remove it (its owner or root can) or set XDG_RUNTIME_DIR",
        squat.display(),
        named(&attacker),
        victim.uid
    );
    assert_refused(&out, 1, &[&why]);
    // Nothing reached the attacker's daemon.
    let seen = attacker.orchctl_at(&socket, &["list", "-o", "json"]);
    assert!(seen.status.success(), "{}", describe(&seen));
    assert_eq!(stdout(&seen).trim(), "[]", "the attacker received a submit");
}

#[test]
fn orchctl_refuses_a_socket_another_user_owns() {
    if !require_root("to play a victim and an attacker user") {
        return;
    }
    let victim = TestUser::create(false);
    let attacker = TestUser::create(false);
    // A sticky directory everyone may write, like /tmp: the attacker binds first.
    let dir = temp_dir();
    chmod(dir.path(), 0o1777);
    let socket = dir.path().join("orchd.sock");
    let _fake = Spawned::orchd(
        orchd_as(&attacker, &socket, &attacker.home.join("state")),
        &socket,
        &dir.path().join("fake-orchd.log"),
    );
    let opened = attacker
        .command("chmod")
        .arg("666")
        .arg(&socket)
        .output()
        .expect("run chmod");
    assert!(opened.status.success(), "{}", describe(&opened));

    let path = socket.display().to_string();
    let out = orchctl_as(&victim, &[], &["--socket", &path, "list"]);
    let why = format!(
        "refusing socket {path}: owned by {}, not you (uid {}) or root; someone may be \
         impersonating orchd",
        named(&attacker),
        victim.uid
    );
    assert_refused(&out, 1, &[&why]);
}

#[test]
fn orchctl_refuses_a_socket_served_by_another_user() {
    if !require_root("to play a victim and an attacker user") {
        return;
    }
    let victim = TestUser::create(false);
    let attacker = TestUser::create(false);
    // A root-owned socket file in a root-owned directory passes every path check, but the
    // process listening on it is the attacker's (bound by root, listened on after the
    // switch to the attacker: SO_PEERCRED names who listened). The same holds for a socket
    // swapped between orchctl's checks and its connect.
    let dir = shared_dir();
    let socket = dir.path().join("orchd.sock");
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, UnixAddr, bind, socket as new_socket,
    };
    let fd = new_socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    bind(raw, &UnixAddr::new(&socket).expect("address")).expect("bind");
    chmod(&socket, 0o666);
    let mut listen = Command::new("sleep");
    listen.arg("60").uid(attacker.uid).gid(attacker.gid);
    // SAFETY: listen(2) is async-signal-safe; `raw` stays open in the parent until the
    // child has exec'd (it is not close-on-exec, so the child keeps it).
    unsafe {
        listen.pre_exec(move || {
            if libc::listen(raw, 16) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = listen.spawn().expect("spawn the attacker's listener");
    let listener = Spawned {
        child,
        log: dir.path().join("none"),
    };
    drop(fd);

    let path = socket.display().to_string();
    let out = orchctl_as(&victim, &[], &["--socket", &path, "list"]);
    let why = format!(
        "refusing socket {path}: the process serving it (pid {}) runs as {}, not you (uid {}) or \
         root; someone may be impersonating orchd",
        listener.child.id(),
        named(&attacker),
        victim.uid
    );
    assert_refused(&out, 1, &[&why]);
}

#[test]
fn orchctl_refuses_a_socket_directory_others_can_write() {
    let d = TestDaemon::start();
    // Anyone could now put their own socket in place of the daemon's.
    chmod(d.dir(), 0o777);
    let out = d.ctl(&["list"]);
    // "its group and everyone", or "everyone" when the group is the user's private one.
    let what = format!(
        "refusing socket directory {}: writable by ",
        d.dir().display()
    );
    let why = "everyone (mode 0777) and not sticky; anyone who can write there could put their \
               own socket in its place";
    assert_refused(&out, 1, &[&what, why, "chmod go-w"]);
    chmod(d.dir(), 0o700);
    d.ctl_exits(&["list"], 0, "a private directory again");
}

#[test]
fn members_of_orch_use_a_system_socket_and_others_cannot() {
    if !require_root("to run orchctl as a member of group orch and as an outsider") {
        return;
    }
    let gid = orch_group();
    let member = TestUser::create(true);
    let outsider = TestUser::create(false);
    let d = TestDaemon::prepare(&[], &[]);
    // /run/orch as orchd makes it when systemd has not: root:orch 0750, socket 0660.
    let base = shared_dir();
    let run = base.path().join("run-orch");
    let socket = run.join("orchd.sock");
    let _orchd = Spawned::orchd(
        orchd_at(&d, &socket, d.state_dir()),
        &socket,
        &d.dir().join("orchd.log"),
    );
    assert_eq!(owner_and_mode(&run), (0, gid, 0o750), "{}", run.display());
    assert_eq!(
        owner_and_mode(&socket),
        (0, gid, 0o660),
        "{}",
        socket.display()
    );

    let listed = member.orchctl_at(&socket, &["list"]);
    assert!(listed.status.success(), "{}", describe(&listed));
    let id = first_line(&member.orchctl_at(&socket, &["submit", "--", "true"]));
    assert_eq!(id.len(), 26, "member's submit: {id}");
    // An outsider cannot even reach it: that is "cannot reach" (3), not a trust refusal.
    let out = outsider.orchctl_at(&socket, &["list"]);
    assert_refused(&out, 3, &["cannot reach orchd at"]);
}

#[test]
fn orchd_leaves_an_existing_socket_directory_as_it_found_it() {
    if !require_root("to be the system daemon that shares its socket with group orch") {
        return;
    }
    let gid = orch_group();
    let mut d = TestDaemon::prepare(&[], &[]);
    // Like `--socket /tmp/orchd.sock`: a directory orchd did not create.
    chmod(d.dir(), 0o755);
    let before = owner_and_mode(d.dir());
    d.launch();
    assert_eq!(
        owner_and_mode(d.dir()),
        before,
        "orchd changed the owner or mode of {}",
        d.dir().display()
    );
    // Its own socket is still shared with the group.
    assert_eq!(owner_and_mode(d.socket()), (0, gid, 0o660));
}

#[test]
fn orchd_refuses_a_socket_directory_another_user_owns() {
    if !require_root("to give a directory to another user") {
        return;
    }
    let attacker = TestUser::create(false);
    let d = TestDaemon::prepare(&[], &[]);
    let theirs = d.dir().join("theirs");
    fs::create_dir(&theirs).expect("mkdir");
    chmod(&theirs, 0o755);
    std::os::unix::fs::chown(&theirs, Some(attacker.uid), Some(attacker.gid)).expect("chown");
    let before = owner_and_mode(&theirs);
    let out = refused_orchd(orchd_at(&d, &theirs.join("orchd.sock"), d.state_dir()));
    let why = format!(
        "refusing socket directory {}: owned by {}, not root; another user could take over \
         orchd's socket",
        theirs.display(),
        named(&attacker)
    );
    assert_refused(&out, 1, &[&why]);
    assert_eq!(owner_and_mode(&theirs), before, "orchd changed it");
    assert!(!theirs.join("orchd.sock").exists(), "orchd bound there");
}

#[test]
fn orchd_refuses_a_socket_directory_others_can_write() {
    let d = TestDaemon::prepare(&[], &[]);
    let open = d.dir().join("open");
    fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);
    let out = refused_orchd(orchd_at(&d, &open.join("orchd.sock"), d.state_dir()));
    let what = format!("refusing socket directory {}: writable by ", open.display());
    let why = "everyone (mode 0777) and not sticky; other users could replace orchd's socket";
    assert_refused(&out, 1, &[&what, why]);
    assert_eq!(mode_of(&open), 0o777, "orchd changed it");
}

/// The mode orchd gives its state directory (and `checkpoints/` in it): 0711 as root, whose
/// agents run as other users and must reach their checkpoint files; 0700 otherwise.
fn state_dir_mode() -> u32 {
    if nix::unistd::Uid::effective().is_root() {
        0o711
    } else {
        0o700
    }
}

#[test]
fn orchd_tightens_a_loose_state_directory_it_owns() {
    let mut d = TestDaemon::prepare(&[], &[]);
    fs::create_dir(d.state_dir()).expect("mkdir");
    chmod(d.state_dir(), 0o777);
    d.launch();
    assert_eq!(mode_of(d.state_dir()), state_dir_mode());
}

#[test]
fn orchd_refuses_a_state_directory_another_user_owns() {
    if !require_root("to give a directory to another user") {
        return;
    }
    let other = TestUser::create(false);
    let d = TestDaemon::prepare(&[], &[]);
    fs::create_dir(d.state_dir()).expect("mkdir");
    chmod(d.state_dir(), 0o755);
    std::os::unix::fs::chown(d.state_dir(), Some(other.uid), Some(other.gid)).expect("chown");
    let before = owner_and_mode(d.state_dir());
    let out = refused_orchd(orchd_at(&d, d.socket(), d.state_dir()));
    let why = format!(
        "refusing state directory {}: owned by {}, not root; orchd keeps its store only in a \
         directory its own user owns",
        d.state_dir().display(),
        named(&other)
    );
    assert_refused(&out, 1, &[&why]);
    assert_eq!(owner_and_mode(d.state_dir()), before, "orchd changed it");
    assert!(
        !d.state_dir().join("store").exists(),
        "orchd opened a store there"
    );
}

#[test]
fn orchd_refuses_a_state_directory_under_a_directory_others_can_write() {
    let d = TestDaemon::prepare(&[], &[]);
    let open = d.dir().join("open");
    fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);
    let state = open.join("state");
    let out = refused_orchd(orchd_at(&d, d.socket(), &state));
    let what = format!(
        "refusing state directory {}: the directory above it, {}, is writable by ",
        state.display(),
        fs::canonicalize(&open).expect("real path").display()
    );
    let why = "everyone (mode 0777) and not sticky; another user could swap the state directory";
    assert_refused(&out, 1, &[&what, why]);
}

/// A step that records a checkpoint and fails on its first attempt, and on the next prints
/// where its checkpoint file is, what is in it and its owner and mode.
const CHECKPOINT_THEN_READ: &str = r#"
if [ -n "$ORCH_CHECKPOINT_FILE" ]; then
  echo "file=$ORCH_CHECKPOINT_FILE"
  echo "content=$(cat "$ORCH_CHECKPOINT_FILE")"
  echo "stat=$(stat -c '%u %a' "$ORCH_CHECKPOINT_FILE")"
  exit 0
fi
echo '::orch-checkpoint::{"done":1}'
exit 1
"#;

/// The value of `KEY=` on a line of `log`.
fn field<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the log:\n{log}"))
}

#[test]
fn state_files_are_private_after_a_run() {
    let mut d = TestDaemon::start();
    let id = d.submit(
        &[
            "--wait",
            "--retries",
            "1",
            "--",
            "sh",
            "-c",
            CHECKPOINT_THEN_READ,
        ],
        0,
    );
    let log = String::from_utf8_lossy(&d.logs(&[&id])).into_owned();
    assert_eq!(field(&log, "content"), r#"{"done":1}"#, "{log}");
    d.stop();
    let state = d.state_dir().to_path_buf();
    let checkpoints = state.join("checkpoints");
    let mut wrong = Vec::new();
    let mut seen = 0;
    let mut stack = vec![state.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let path = e.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let mode = meta.mode() & 0o7777;
            seen += 1;
            let want = if meta.is_dir() {
                stack.push(path.clone());
                if path == checkpoints || path.parent() == Some(&checkpoints) {
                    state_dir_mode()
                } else {
                    0o700
                }
            } else {
                0o600
            };
            if mode != want {
                wrong.push(format!("{} is {mode:04o}, not {want:04o}", path.display()));
            }
        }
    }
    assert!(seen > 5, "too few files under {}", state.display());
    if mode_of(&state) != state_dir_mode() {
        wrong.push(format!(
            "{} is {:04o}, not {:04o}",
            state.display(),
            mode_of(&state),
            state_dir_mode()
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_checkpoint_handed_to_another_users_agent_is_readable_by_it_alone() {
    if !require_root("to run an agent as another user") {
        return;
    }
    orch_group();
    let user = TestUser::create(true);
    let other = TestUser::create(true);
    let d = TestDaemon::start();
    // Others may pass through the test's directory to the socket (root:orch 0660).
    chmod(d.dir(), 0o711);
    let out = user.orchctl(
        &d,
        &[
            "submit",
            "--wait",
            "--retries",
            "1",
            "--",
            "sh",
            "-c",
            CHECKPOINT_THEN_READ,
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let id = first_line(&out);
    let log = String::from_utf8_lossy(&d.logs(&[&id])).into_owned();
    assert_eq!(field(&log, "content"), r#"{"done":1}"#, "{log}");
    assert_eq!(field(&log, "stat"), format!("{} 600", user.uid), "{log}");
    // Another member of orch cannot read it.
    let file = field(&log, "file");
    let peek = other.command("cat").arg(file).output().expect("run cat");
    assert!(
        !peek.status.success() && stdout(&peek).is_empty(),
        "another user read {file}: {}",
        describe(&peek)
    );
}

#[test]
fn agents_keep_the_umask_orchd_was_started_with() {
    let d = TestDaemon::start();
    // The umask the test (and so orchd) was started with, as a shell prints it.
    let ours = Command::new("sh")
        .args(["-c", "umask"])
        .output()
        .expect("run sh");
    let id = d.submit(&["--wait", "--", "sh", "-c", "echo umask=$(umask)"], 0);
    let log = String::from_utf8_lossy(&d.logs(&[&id])).into_owned();
    assert_eq!(field(&log, "umask"), stdout(&ours).trim(), "{log}");
}
