//! `TestDaemon`: a real `orchd` in a private temp dir (state dir, socket, log, work dir), started,
//! checked for readiness over gRPC health, stopped or crashed on demand and killed on drop.
//!
//! Every daemon gets its own directory under `/tmp` (short, so the socket path stays far below
//! the 107-byte limit) holding `state/`, `orchd.sock`, `orchd.log` (its stderr) and `work/` (the
//! clients' working directory). The environment is scrubbed of `ORCH_*` and pointed at private
//! XDG directories so a developer's own config or running daemon never leaks in.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use orch_proto::v1::orchestrator_client::OrchestratorClient;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::ctl::{describe_status, wait_deadline};
use super::procfs::signal_pid;

/// The daemon binary under test.
pub const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");

/// How long a daemon may take to answer its first health check.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

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

    /// A daemon, not started yet, that reads `config` (written to `orchd.toml` in its temp
    /// dir) through `--config`, with extra `args`.
    pub fn prepare_with_config(config: &str, args: &[&str]) -> Self {
        let mut d = Self::prepare(args, &[]);
        let path = d.write_file("orchd.toml", config);
        d.args.push("--config".into());
        d.args.push(path.display().to_string());
        d
    }

    /// Launch the daemon as `WRAPPER... orchd ARGS...` from now on; the wrapper must exec orchd.
    pub fn set_wrapper(&mut self, wrapper: &[&str]) {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
    }

    /// Sets `key=value` in the environment of the daemon's next launch (e.g. `TZ`).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
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

    /// The daemon's sled store (open it only while the daemon is not running).
    pub fn store_dir(&self) -> PathBuf {
        self.state.join("store")
    }

    /// The working directory clients run in.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Everything the daemon wrote to stderr so far (all launches).
    pub fn log_text(&self) -> String {
        tail_of(&self.log, 20_000)
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("orchd is not running").id()
    }

    /// An `orchd` command with the hermetic environment (private XDG dirs, no `ORCH_*`) but no
    /// socket or state-dir flags, for extra daemons and `--print-config`.
    pub fn orchd(&self) -> Command {
        self.hermetic(ORCHD)
    }

    /// `orchd --config PATH --print-config` (hermetic, within 10 s): how orchd takes the
    /// config at `path`, without serving.
    pub fn print_config(&self, path: &Path) -> std::process::Output {
        let mut cmd = self.orchd();
        cmd.arg("--config").arg(path).arg("--print-config");
        super::ctl::run_deadline(&mut cmd, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TestDaemon::orchd`] with `--socket SOCKET --state-dir STATE`, for a second daemon
    /// (which may share this one's paths, to be refused).
    pub fn orchd_at(&self, socket: &Path, state: &Path) -> Command {
        let mut cmd = self.orchd();
        cmd.arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state);
        cmd
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
        // Attempts are orchd's children unless a test asks for live restore (shims
        // outlive orchd on purpose: tests of crashes expect what dies with it to die).
        // ORCH_TEST_LIVE_RESTORE=true runs the whole suite under shims.
        let live = std::env::var("ORCH_TEST_LIVE_RESTORE").unwrap_or_else(|_| "false".into());
        cmd.env("ORCH_LIVE_RESTORE", live);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {ORCHD}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls the health check (backing off up to 100 ms) until it answers SERVING: before the
    /// daemon listens there is nothing to subscribe to.
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
        signal_pid(child.id(), nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM to orchd");
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

    /// Writes an executable script `name` inside the temp dir and returns its path.
    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write_file(name, text);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        path
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: a daemon that exits cleanly removes its cgroup subtree, so
            // test runs do not pile them up. One still draining agents after a short
            // bounded wait is killed.
            let _ = signal_pid(child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = wait_deadline(&mut child, Duration::from_secs(2));
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_leftover_shims(&self.state);
        if thread::panicking() {
            eprintln!(
                "---- orchd log ({}) ----\n{}\n---- end of orchd log ----",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Kills what shims (live restore) left running after the test: every shim recorded in
/// `STATE/shims/*/shim.json` and its agent's process group (`started.json`), each only
/// if its start time still matches (never a recycled pid).
pub fn kill_leftover_shims(state: &Path) {
    let Ok(dirs) = fs::read_dir(state.join("shims")) else {
        return;
    };
    for dir in dirs.flatten() {
        for (file, group) in [("started.json", true), ("shim.json", false)] {
            let Ok(text) = fs::read_to_string(dir.path().join(file)) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let (Some(pid), ticks) = (v["pid"].as_u64(), v["start_ticks"].as_u64()) else {
                continue;
            };
            let pid = pid as u32;
            if ticks.is_none() || super::proc_start_ticks(pid) != ticks {
                continue;
            }
            let target = if group {
                nix::unistd::Pid::from_raw(-(pid as i32))
            } else {
                nix::unistd::Pid::from_raw(pid as i32)
            };
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
