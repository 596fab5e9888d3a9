//! Test harness: `TestDaemon` runs the real `orchd` in a private temp dir and drives it with the real `orchctl`.
//!
//! Every daemon gets its own directory under `/tmp` (short, so the socket path stays far below
//! the 107-byte limit) holding `state/`, `orchd.sock`, `orchd.log` (its stderr) and `work/` (the
//! clients' working directory). The environment is scrubbed of `ORCH_*` and pointed at private
//! XDG directories so a developer's own config or running daemon never leaks in. Waits are
//! polls bounded by a deadline, never sleeps standing in for an event.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use orch_proto::v1::orchestrator_client::OrchestratorClient;
use serde_json::Value;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The daemon binary under test.
pub const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");
/// The client binary under test.
pub const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

/// How long a daemon may take to answer its first health check.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long one `orchctl` (or other helper command) may run.
pub const CMD_DEADLINE: Duration = Duration::from_secs(20);
/// Default deadline for an objective to reach an awaited state.
pub const STATE_DEADLINE: Duration = Duration::from_secs(15);

/// A private directory under `/tmp` with a short name.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("orch-")
        .tempdir_in("/tmp")
        .expect("create a temp dir in /tmp")
}

/// Removes every `ORCH_*` variable and the systemd hand-offs (journald, sd_notify) from `cmd`'s
/// environment, so that the caller's setup cannot change what the binaries do.
pub fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("ORCH_") || k == "JOURNAL_STREAM" || k == "NOTIFY_SOCKET" {
            cmd.env_remove(&key);
        }
    }
}

/// Everything a failed command printed, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe_status(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `child` until it exits or `deadline` passes.
pub fn wait_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child process") {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured. `Err` carries what it printed when it
/// did not finish within `deadline` (it is killed then).
pub fn run_deadline(cmd: &mut Command, deadline: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    // Readers on threads so a chatty child can never block on a full pipe.
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let finished = wait_deadline(&mut child, deadline);
    let status = match finished {
        Some(s) => s,
        None => {
            let _ = child.kill();
            child.wait().expect("wait for a killed child")
        }
    };
    let out = Output {
        status,
        stdout: out_reader.join().expect("stdout reader thread"),
        stderr: err_reader.join().expect("stderr reader thread"),
    };
    match finished {
        Some(_) => Ok(out),
        None => Err(format!(
            "{cmd:?} did not finish within {deadline:?} (killed)\n{}",
            describe(&out)
        )),
    }
}

/// An `orchctl --socket SOCKET ARGS...` command (with `ORCH_SOCKET` set too) in `cwd`, not
/// started yet.
pub fn orchctl_command(socket: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(ORCHCTL);
    scrub_env(&mut cmd);
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .current_dir(cwd)
        .env("ORCH_SOCKET", socket);
    cmd
}

/// Runs `orchctl --socket SOCKET ARGS...` (with `ORCH_SOCKET` set too) in `cwd`.
pub fn orchctl(socket: &Path, cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = orchctl_command(socket, cwd, args);
    run_deadline(&mut cmd, CMD_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
}

/// Calls `f` every ~20 ms until it returns `Some`, up to `deadline`; panics naming `what`.
pub fn poll_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= end {
            panic!("{what}: not within {deadline:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a future to completion on a fresh runtime on its own thread, so it works both from
/// plain `#[test]`s and from inside `#[tokio::test]`s.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    thread::scope(|s| {
        let handle = s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime")
                .block_on(fut)
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The overall (`""`) health status the daemon reports on `socket`.
pub async fn health(socket: &Path) -> Result<ServingStatus, String> {
    let check = async {
        let channel = orch_proto::channel(socket)
            .await
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| format!("health check: {e}"))?;
        ServingStatus::try_from(reply.into_inner().status)
            .map_err(|e| format!("bad serving status: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .map_err(|_| "health check timed out".to_string())?
}

/// The tail of a log file, for failure messages.
pub fn tail_of(path: &Path, max: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    match text {
        Ok(t) if t.len() > max => {
            let mut cut = t.len() - max;
            while !t.is_char_boundary(cut) {
                cut += 1;
            }
            format!("[...]{}", &t[cut..])
        }
        Ok(t) => t,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A real `orchd` on a private socket and state dir; SIGKILLed on drop.
pub struct TestDaemon {
    dir: TempDir,
    socket: PathBuf,
    state: PathBuf,
    work: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A program (and its arguments) that execs `orchd ARGS...`, to start the daemon with
    /// inherited state (signal mask, open fds) that a service manager or shell might pass on.
    wrapper: Vec<String>,
    /// Give socket and state dir by `ORCH_SOCKET`/`ORCH_STATE_DIR` instead of flags.
    via_env: bool,
    launches: u32,
    child: Option<Child>,
}

impl TestDaemon {
    /// A started daemon with default settings.
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// A started daemon with extra arguments and environment.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut d = Self::prepare(args, env);
        d.launch();
        d
    }

    /// A started daemon launched as `WRAPPER... orchd ARGS...`; the wrapper must exec orchd.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        let mut d = Self::prepare(args, &[]);
        d.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        d.launch();
        d
    }

    /// A started daemon that is told its socket and state dir by environment only.
    pub fn start_via_env() -> Self {
        let mut d = Self::prepare(&[], &[]);
        d.via_env = true;
        d.launch();
        d
    }

    /// The directory and paths, without starting anything yet.
    pub fn prepare(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = temp_dir();
        let work = dir.path().join("work");
        fs::create_dir(&work).expect("create the work dir");
        for sub in ["xdg-config", "xdg-state", "xdg-runtime"] {
            fs::create_dir(dir.path().join(sub)).expect("create a private XDG dir");
        }
        TestDaemon {
            socket: dir.path().join("orchd.sock"),
            state: dir.path().join("state"),
            log: dir.path().join("orchd.log"),
            work,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: Vec::new(),
            via_env: false,
            launches: 0,
            child: None,
        }
    }

    /// The private temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's state dir.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The working directory clients run in.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Everything the daemon wrote to stderr so far (all launches).
    pub fn log_text(&self) -> String {
        tail_of(&self.log, 20_000)
    }

    /// An `orchd` command with the hermetic environment (private XDG dirs, no `ORCH_*`) but no
    /// socket or state-dir flags, for extra daemons and `--print-config`.
    pub fn orchd(&self) -> Command {
        self.hermetic(ORCHD)
    }

    /// `program` with the hermetic environment of [`TestDaemon::orchd`].
    fn hermetic(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        scrub_env(&mut cmd);
        cmd.current_dir(&self.work)
            .env("XDG_CONFIG_HOME", self.dir().join("xdg-config"))
            .env("XDG_STATE_HOME", self.dir().join("xdg-state"))
            .env("XDG_RUNTIME_DIR", self.dir().join("xdg-runtime"));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain text in the captured log.
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Spawns the daemon (again, on the same socket and state dir) and waits until its health
    /// check answers SERVING.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "launch: orchd is already running");
        self.launches += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the orchd log");
        writeln!(log, "==== orch test harness: launch {} ====", self.launches)
            .expect("write the orchd log");
        let mut cmd = match self.wrapper.split_first() {
            None => self.orchd(),
            Some((program, rest)) => {
                let mut c = self.hermetic(program);
                c.args(rest).arg(ORCHD);
                c
            }
        };
        if self.via_env {
            cmd.env("ORCH_SOCKET", &self.socket)
                .env("ORCH_STATE_DIR", &self.state);
        } else {
            cmd.arg("--socket")
                .arg(&self.socket)
                .arg("--state-dir")
                .arg(&self.state);
        }
        // Root's default config is /etc/orch/orchd.toml, which this machine may have: name a
        // private empty one instead, unless the test chose a config itself.
        let chose_config = self.args.iter().any(|a| a == "--config")
            || self.env.iter().any(|(k, _)| k == "ORCH_CONFIG");
        if !chose_config {
            let empty = self.dir().join("empty-orchd.toml");
            File::create(&empty).expect("create an empty config file");
            cmd.env("ORCH_CONFIG", empty);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {ORCHD}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let end = Instant::now() + READY_DEADLINE;
        let mut backoff = Duration::from_millis(5);
        let mut last = String::from("socket not created yet");
        loop {
            let child = self.child.as_mut().expect("orchd child");
            if let Some(status) = child.try_wait().expect("try_wait on orchd") {
                self.child = None;
                panic!("orchd exited during startup ({})", describe_status(status));
            }
            if self.socket.exists() {
                match block_on(health(&self.socket)) {
                    Ok(ServingStatus::Serving) => return,
                    Ok(other) => last = format!("health status {other:?}"),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= end {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                panic!("orchd was not ready within {READY_DEADLINE:?} (last: {last})");
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits (bounded) for the daemon to exit; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("stop: orchd is not running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        signal::kill(pid, Signal::SIGTERM).expect("send SIGTERM to orchd");
        match wait_deadline(&mut child, STOP_DEADLINE) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("orchd did not exit within {STOP_DEADLINE:?} of SIGTERM");
            }
        }
    }

    /// SIGKILL, as a crash would; the socket file is left behind.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: orchd is not running");
        child.kill().expect("SIGKILL orchd");
        child.wait().expect("reap orchd");
    }

    /// Stops the daemon if it runs (asserting a clean exit) and starts it again on the same
    /// socket and state dir.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(
                status.success(),
                "orchd exited with {} on SIGTERM",
                describe_status(status)
            );
        }
        self.launch();
    }

    /// Runs `orchctl ARGS...` against this daemon, in the work dir.
    pub fn ctl(&self, args: &[&str]) -> Output {
        orchctl(&self.socket, &self.work, args)
    }

    /// `orchctl ARGS...` against this daemon, not started yet (for commands that keep
    /// running, such as `logs -f`).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        orchctl_command(&self.socket, &self.work, args)
    }

    /// `orchctl logs ARGS...`: asserts exit 0 and returns what it printed on stdout.
    pub fn logs(&self, args: &[&str]) -> Vec<u8> {
        let mut full = vec!["logs"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        assert!(
            out.status.success(),
            "orchctl {full:?} failed\n{}",
            describe(&out)
        );
        out.stdout
    }

    /// Runs `orchctl ARGS... -o json` (before a `--`, if any), asserts exit 0 and parses stdout.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut full: Vec<&str> = args.to_vec();
        let at = full.iter().position(|a| *a == "--").unwrap_or(full.len());
        full.splice(at..at, ["-o", "json"]);
        let out = self.ctl(&full);
        assert!(
            out.status.success(),
            "orchctl {full:?} failed\n{}",
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("orchctl {full:?} printed no JSON ({e})\n{}", describe(&out))
        })
    }

    /// `orchctl submit ARGS...`: asserts the exit code and returns the id from the first line.
    pub fn submit(&self, args: &[&str], expect_code: i32) -> String {
        let mut full = vec!["submit"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        assert_eq!(
            out.status.code(),
            Some(expect_code),
            "orchctl {full:?}: wrong exit code\n{}",
            describe(&out)
        );
        ulid_first_line(&out)
    }

    /// `orchctl status ID -o json`.
    pub fn status(&self, id: &str) -> Value {
        self.ctl_json(&["status", id])
    }

    /// `orchctl list -o json` (plus filters) as an array.
    pub fn list(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["list"];
        full.extend_from_slice(args);
        match self.ctl_json(&full) {
            Value::Array(items) => items,
            other => panic!("orchctl {full:?} -o json is not an array: {other}"),
        }
    }

    /// Polls `orchctl status ID -o json` every ~50 ms until `pred` holds, up to `deadline`.
    pub fn wait_for_state(
        &self,
        id: &str,
        pred: impl Fn(&Value) -> bool,
        deadline: Duration,
    ) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let out = self.ctl(&["status", id, "-o", "json"]);
            if out.status.code() == Some(3) {
                panic!(
                    "orchd became unreachable while waiting for {id}\n{}",
                    describe(&out)
                );
            }
            let last = if out.status.success() {
                match serde_json::from_slice::<Value>(&out.stdout) {
                    Ok(v) if pred(&v) => return v,
                    Ok(v) => v.to_string(),
                    Err(e) => format!("not JSON ({e}): {}", stdout(&out)),
                }
            } else {
                describe(&out)
            };
            if Instant::now() >= end {
                panic!(
                    "objective {id} did not reach the awaited state within {deadline:?}\nlast status: {last}"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A gRPC client on this daemon's socket.
    pub async fn client(&self) -> OrchestratorClient<Channel> {
        orch_proto::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket.display()))
    }

    /// `GetObjective` over gRPC, from synchronous tests.
    pub fn get_objective(&self, id: &str) -> orch_proto::v1::Objective {
        block_on(async {
            self.client()
                .await
                .get_objective(orch_proto::v1::GetObjectiveRequest { id: id.into() })
                .await
                .unwrap_or_else(|e| panic!("GetObjective {id}: {e}"))
                .into_inner()
        })
    }

    /// Writes `text` to `name` inside the temp dir and returns the path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        let mut f =
            File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: a daemon that exits cleanly removes its cgroup subtree, so
            // test runs do not pile them up. One still draining agents after a short
            // bounded wait is killed.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- orchd log ({}) ----\n{}\n---- end of orchd log ----",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

// ------------------------------------------------------------------ JSON and value helpers

/// The first stdout line, asserted to be a ULID (26 characters).
pub fn ulid_first_line(out: &Output) -> String {
    let text = stdout(out);
    let id = text.lines().next().unwrap_or("").trim().to_string();
    assert_eq!(
        id.len(),
        26,
        "first stdout line is not a 26-character id\n{}",
        describe(out)
    );
    assert!(
        ulid::Ulid::from_string(&id).is_ok(),
        "first stdout line `{id}` is not a ULID\n{}",
        describe(out)
    );
    id
}

/// `v` as an array, or a panic naming `what`.
pub fn array<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a JSON array: {v}"))
}

/// The step with id `id` of a status object.
pub fn step<'a>(status: &'a Value, id: &str) -> &'a Value {
    array(&status["steps"], "steps")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step `{id}` in {status}"))
}

/// The attempts of a step.
pub fn attempts(step: &Value) -> &Vec<Value> {
    array(&step["attempts"], "attempts")
}

/// Whether the objective has ended.
pub fn ended(status: &Value) -> bool {
    matches!(
        status["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Whether the first step's first attempt has a pid.
pub fn first_attempt_has_pid(status: &Value) -> bool {
    status["steps"][0]["attempts"][0]["pid"].as_u64().is_some()
}

/// An RFC 3339 timestamp in UTC.
pub fn rfc3339(v: &Value, what: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{what} `{text}` is not RFC 3339: {e}"));
    assert_eq!(
        t.offset().local_minus_utc(),
        0,
        "{what} `{text}` is not in UTC"
    );
    t
}

// ------------------------------------------------------------------ processes

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Polls until `pid` is gone, up to `deadline`; true when it went.
pub fn wait_process_gone(pid: u32, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if !process_alive(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs `pid` when it is still a live process whose command line (arguments joined by
/// spaces) contains `name`, so that a recycled pid is never hit. Used to clean up agents
/// orphaned by a killed daemon; give each test's agent a distinctive command line.
pub fn kill_if_named(pid: u32, name: &str) {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if process_alive(pid) && cmdline.contains(name) {
        let _ = signal::kill(
            Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
            Signal::SIGKILL,
        );
    }
}

/// Kills the attempt processes of a status object that still run and whose command line
/// contains `name`.
pub fn kill_running_attempts(status: &Value, name: &str) {
    for s in status["steps"].as_array().into_iter().flatten() {
        for a in s["attempts"].as_array().into_iter().flatten() {
            if let Some(pid) = a["pid"].as_u64() {
                kill_if_named(u32::try_from(pid).expect("pid fits u32"), name);
            }
        }
    }
}

/// The arguments of `pid` (empty when it is gone or a kernel thread).
pub fn proc_argv(pid: u32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every pid in /proc.
fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose arguments are exactly `argv`.
pub fn pids_with_argv(argv: &[&str]) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_argv(*p) == argv && process_alive(*p))
        .collect()
}

/// Live processes (other than this one) whose command line (arguments joined by spaces)
/// contains `text`.
pub fn pids_with_cmdline(text: &str) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|p| *p != me && proc_argv(*p).join(" ").contains(text) && process_alive(*p))
        .collect()
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat, after the command name.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

/// The scheduler state letter of `pid` (`R`, `S`, `T`, `Z`...).
pub fn proc_state(pid: u32) -> Option<char> {
    stat_field(pid, 3)?.chars().next()
}

/// The session id of `pid`.
pub fn proc_session(pid: u32) -> Option<u32> {
    stat_field(pid, 6)?.parse().ok()
}

/// The cgroup v2 path of `pid` (the `0::` line of /proc/PID/cgroup).
pub fn proc_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// Live processes whose session id is `sid`.
pub fn pids_in_session(sid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_session(*p) == Some(sid) && process_alive(*p))
        .collect()
}

// ------------------------------------------------------------------ daemon config and store

impl TestDaemon {
    /// A daemon, not started yet, that reads `config` (written to `orchd.toml` in its temp
    /// dir) through `--config`, with extra `args`.
    pub fn prepare_with_config(config: &str, args: &[&str]) -> Self {
        let mut d = Self::prepare(args, &[]);
        let path = d.write_file("orchd.toml", config);
        d.args.push("--config".into());
        d.args.push(path.display().to_string());
        d
    }

    /// The daemon's sled store (open it only while the daemon is not running).
    pub fn store_dir(&self) -> PathBuf {
        self.state.join("store")
    }
}

// ------------------------------------------------------------------ events, scripts, daemon pid

impl TestDaemon {
    /// Every event of objective `id` (`orchctl watch ID -o json`, one JSON object a line).
    /// The objective must have ended (watch ends with it; its exit code is the result).
    pub fn events(&self, id: &str) -> Vec<Value> {
        let out = self.ctl(&["watch", id, "-o", "json"]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "orchctl watch {id} -o json failed\n{}",
            describe(&out)
        );
        stdout(&out)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Writes an executable script `name` inside the temp dir and returns its path.
    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write_file(name, text);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        path
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("orchd is not running").id()
    }
}
