//! Running commands: the real `orchctl` against a `TestDaemon` (plain, as JSON, as a follower
//! of its output), other programs with a deadline, and their output for assertion messages.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::{TestDaemon, scrub_env};
use super::json::json_lines;

/// The client binary under test.
pub const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

/// How long one `orchctl` (or other helper command) may run.
pub const CMD_DEADLINE: Duration = Duration::from_secs(20);
/// How long a watch of an objective may take to end.
pub const WATCH_DEADLINE: Duration = Duration::from_secs(30);

/// Everything a failed command printed, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe_status(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An exit status as `exit code N` or `killed by signal N`.
pub fn describe_status(s: ExitStatus) -> String {
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

/// The first stdout line, trimmed (empty when there is none).
pub fn first_line(out: &Output) -> String {
    stdout(out).lines().next().unwrap_or("").trim().to_string()
}

/// The first stdout line, asserted to be a ULID (26 characters).
pub fn ulid_first_line(out: &Output) -> String {
    let id = first_line(out);
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

/// What is wrong with a refusal that should exit `code` and mention each of `exact` (as
/// written) and of `any_case` (in any case) on stderr: one line a problem, none when it is
/// right.
pub fn refusal_problems(out: &Output, code: i32, exact: &[&str], any_case: &[&str]) -> Vec<String> {
    let err = stderr(out);
    let lower = err.to_lowercase();
    let mut problems = Vec::new();
    if out.status.code() != Some(code) {
        problems.push(format!("exit code is not {code}"));
    }
    for w in exact {
        if !err.contains(w) {
            problems.push(format!("stderr does not contain `{w}`"));
        }
    }
    for w in any_case {
        if !lower.contains(&w.to_lowercase()) {
            problems.push(format!("stderr does not mention `{w}`"));
        }
    }
    problems
}

/// Polls `child` until it exits or `deadline` passes (a child's exit has no event to wait on
/// short of blocking in `wait`, which could not be bounded).
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

/// Reads `pipe` to its end on a thread, so a chatty child can never block on a full pipe.
fn read_on_thread(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` with stdin closed and stdout/stderr captured. `Err` carries what it printed when it
/// did not finish within `deadline` (it is killed then).
pub fn run_deadline(cmd: &mut Command, deadline: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out_reader = read_on_thread(child.stdout.take().expect("piped stdout"));
    let err_reader = read_on_thread(child.stderr.take().expect("piped stderr"));
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

/// A started command whose stdout lines arrive as they are printed; killed on drop.
pub struct Follower {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    err: Option<thread::JoinHandle<Vec<u8>>>,
}

impl Follower {
    /// Spawns `cmd` (stdin closed) and starts reading its stdout line by line.
    pub fn start(mut cmd: Command) -> Follower {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let err = read_on_thread(child.stderr.take().expect("piped stderr"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower {
            what,
            child,
            lines: rx,
            seen: Vec::new(),
            err: Some(err),
        }
    }

    /// The next line (`None` at the end of output); panics when none comes within `deadline`.
    pub fn next_line(&mut self, deadline: Duration) -> Option<String> {
        match self.lines.recv_timeout(deadline) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{}: no output line within {deadline:?}; so far:\n{}",
                self.what,
                self.seen.join("\n")
            ),
        }
    }

    /// The next line if one comes within `wait`.
    pub fn try_next_line(&mut self, wait: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads lines until one satisfies `pred` (that one included), within `deadline`.
    pub fn until(&mut self, what: &str, deadline: Duration, pred: impl Fn(&str) -> bool) {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_line(left.max(Duration::from_millis(1))) {
                Some(line) if pred(&line) => return,
                Some(_) => {}
                None => {
                    let err = self.stderr_now();
                    panic!(
                        "{}: output ended before {what}; it printed:\n{}\nstderr:\n{err}",
                        self.what,
                        self.seen.join("\n"),
                    )
                }
            }
        }
    }

    /// Kills the process and returns its stderr.
    fn stderr_now(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.take_stderr()
    }

    fn take_stderr(&mut self) -> String {
        self.err
            .take()
            .and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) for the process to exit; returns its status, every stdout line it
    /// printed and its stderr.
    pub fn finish(mut self, deadline: Duration) -> (ExitStatus, Vec<String>, String) {
        let status = match wait_deadline(&mut self.child, deadline) {
            Some(s) => s,
            None => {
                let err = self.stderr_now();
                panic!(
                    "{} did not end within {deadline:?}; it printed:\n{}\nstderr:\n{err}",
                    self.what,
                    self.seen.join("\n")
                );
            }
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let err = self.take_stderr();
        (status, std::mem::take(&mut self.seen), err)
    }

    /// Kills the process; returns the lines read so far.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestDaemon {
    /// Runs `orchctl ARGS...` against this daemon, in the work dir.
    pub fn ctl(&self, args: &[&str]) -> Output {
        orchctl(self.socket(), self.work_dir(), args)
    }

    /// Runs `orchctl ARGS...` and asserts its exit code (`what` names the case in the failure
    /// message); returns the output for further checks.
    pub fn ctl_exits(&self, args: &[&str], code: i32, what: &str) -> Output {
        let out = self.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "orchctl {args:?}: {what}\n{}",
            describe(&out)
        );
        out
    }

    /// `orchctl ARGS...` against this daemon, not started yet (for commands that keep
    /// running, such as `logs -f`).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        orchctl_command(self.socket(), self.work_dir(), args)
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

    /// `orchctl COMMAND ARGS... -o json`, asserted to be a JSON array.
    fn ctl_array(&self, command: &str, args: &[&str]) -> Vec<Value> {
        let mut full = vec![command];
        full.extend_from_slice(args);
        match self.ctl_json(&full) {
            Value::Array(items) => items,
            other => panic!("orchctl {full:?} -o json is not an array: {other}"),
        }
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
        self.ctl_array("list", args)
    }

    /// `orchctl audit -o json` (plus `--limit`, `--objective`) as an array, newest first.
    pub fn audit(&self, args: &[&str]) -> Vec<Value> {
        self.ctl_array("audit", args)
    }

    /// `orchctl watch ID -o json ARGS...` run to its end (bounded): its exit code and the
    /// events it printed, one JSON object a line.
    pub fn watch_json(&self, id: &str, args: &[&str]) -> (Option<i32>, Vec<Value>) {
        let (out, events) = self.watch_run(id, args);
        (out.status.code(), events)
    }

    /// Every event of objective `id` (`orchctl watch ID -o json`). The objective must have
    /// ended (watch ends with it; its exit code is the result).
    pub fn events(&self, id: &str) -> Vec<Value> {
        let (out, events) = self.watch_run(id, &[]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "orchctl watch {id} -o json failed\n{}",
            describe(&out)
        );
        events
    }

    fn watch_run(&self, id: &str, args: &[&str]) -> (Output, Vec<Value>) {
        let mut full = vec!["watch", id, "-o", "json"];
        full.extend_from_slice(args);
        let mut cmd = self.ctl_command(&full);
        let out = run_deadline(&mut cmd, WATCH_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
        let events = json_lines(
            &stdout(&out),
            &format!("orchctl {full:?}\n{}", describe(&out)),
        );
        (out, events)
    }
}
