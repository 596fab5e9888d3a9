//! One client (or one user) cannot exhaust the daemon for everyone else: connections are
//! bounded per user and overall, idle ones are closed, requests larger than the spec limit
//! are refused before they are read, a user's requests in flight and a watcher's unread
//! events are bounded by bytes, and the logs of running attempts stay under the log cap.
//! Each test reproduces one attack, scaled down to a few seconds by small limits in the
//! daemon's config; the figures at full scale are in `cargo bench --bench exhaustion`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use orch_proto::v1::{
    DaemonStatusRequest, Event, ObjectiveSpec, StepSpec, WatchRequest, event::Payload,
};
use tonic::Code;
use tonic::codec::Streaming;

use tempfile::TempDir;

use crate::support::{
    Follower, ORCHCTL, TestDaemon, TestUser, block_on, describe, first_line, is_terminal,
    poll_until, require_root, run_deadline, submit_request, temp_dir,
};

/// A daemon reading `config` whose socket every user can reach (what group `orch` does on
/// a real system), started through `prlimit` with an open-files limit when `open_files` is
/// set. The second value holds the config file of the latter until the test ends.
fn daemon(config: &str, open_files: Option<u32>) -> (TestDaemon, Option<TempDir>) {
    let (d, kept) = match open_files {
        None => {
            let mut d = TestDaemon::prepare_with_config(config, &[]);
            d.launch();
            (d, None)
        }
        Some(n) => {
            let dir = temp_dir();
            let path = dir.path().join("orchd.toml");
            std::fs::write(&path, config).expect("write the config");
            let limit = format!("--nofile={n}:{n}");
            let d = TestDaemon::start_wrapped(
                &["prlimit", &limit, "--"],
                &["--config", path.to_str().expect("utf-8 temp path")],
            );
            (d, Some(dir))
        }
    };
    // Root's directory, not writable by others (orchctl refuses one that is); the socket
    // itself is open to every user.
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    (d, kept)
}

/// orchd's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// ------------------------------------------------------------------ connections

/// Holds connections to a socket as another user (Python, standard library only): opens
/// `n`, then, for each `SECONDS WANT` line on stdin, waits until `WANT` of them have been
/// closed by the other end (or `SECONDS` passed) and prints `closed N open M`.
const HOLDER: &str = r#"
import selectors, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("opened", n, flush=True)
closed = 0
for line in sys.stdin:
    secs, want = line.split()
    end = time.monotonic() + float(secs)
    while closed < int(want) and time.monotonic() < end:
        for key, _ in sel.select(end - time.monotonic()):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
    print("closed", closed, "open", n - closed, flush=True)
"#;

/// A running [`HOLDER`].
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::BufReader<ChildStdout>,
}

impl Holder {
    fn start(user: &TestUser, d: &TestDaemon, n: usize) -> Holder {
        let mut child = user
            .command("python3")
            .args(["-c", HOLDER])
            .arg(d.socket())
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the connection holder (python3)");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut h = Holder {
            child,
            stdin,
            stdout,
        };
        assert_eq!(h.line(), format!("opened {n}"));
        h
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the holder");
        line.trim().to_string()
    }

    /// Waits up to `secs` for `want` connections to be closed by orchd; returns how many
    /// are closed and how many still open.
    fn closed(&mut self, secs: u32, want: usize) -> (usize, usize) {
        use std::io::Write;
        writeln!(self.stdin, "{secs} {want}").expect("ask the holder");
        let line = self.line();
        let n: Vec<usize> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match n[..] {
            [closed, open] => (closed, open),
            _ => panic!("the holder said `{line}`"),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `orchctl ARGS...` as `user`; returns its output and how long it took.
fn timed(user: &TestUser, d: &TestDaemon, args: &[&str]) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = user.orchctl(d, args);
    (out, t.elapsed())
}

#[test]
fn a_flood_of_connections_from_one_user_leaves_room_for_everyone_else() {
    if !require_root("to hold connections as one user and call as another") {
        return;
    }
    // 400 connections against an open-files limit of 256: without a per-user cap orchd
    // runs out of descriptors and nobody else gets in. With it, uid A keeps 20.
    let (d, _config) = daemon(
        "[server]\nmax_connections = 100\nmax_connections_per_user = 20\n",
        Some(256),
    );
    let attacker = TestUser::create(true);
    let other = TestUser::create(true);
    let mut holder = Holder::start(&attacker, &d, 400);
    assert_eq!(
        holder.closed(10, 380),
        (380, 20),
        "orchd keeps 20 connections of uid {} and closes the rest at once",
        attacker.uid
    );

    // Meanwhile another user's calls answer, and root's.
    let (status, took) = timed(&other, &d, &["daemon", "status"]);
    assert!(status.status.success(), "{}", describe(&status));
    assert!(took < Duration::from_secs(5), "daemon status took {took:?}");
    let (submit, took) = timed(&other, &d, &["submit", "--wait", "--", "true"]);
    assert!(submit.status.success(), "{}", describe(&submit));
    assert!(
        took < Duration::from_secs(10),
        "submit --wait took {took:?}"
    );
    assert!(d.ctl(&["daemon", "status"]).status.success());

    // The refusals are logged once (per uid and minute), naming the limit.
    let refusal = format!(
        "uid {} already has 20 connections open, the limit of [server] \
         max_connections_per_user = 20",
        attacker.uid
    );
    assert_eq!(
        d.log_text().matches(&refusal).count(),
        1,
        "{}",
        d.log_text()
    );
    drop(holder);
}

#[test]
fn a_refused_client_is_told_the_limit() {
    let (d, _config) = daemon("[server]\nmax_connections = 8\n", None);
    let socket = d.socket().to_path_buf();
    let (held, texts) = block_on(async {
        // Eight connections, each admitted (a call answered on it), then idle: the daemon's
        // own user may use all of them. The harness's readiness probe may hold a place for
        // a moment after it hung up (a place is given back when orchd sees the close), so a
        // connection refused meanwhile is tried again.
        let mut held = Vec::new();
        while held.len() < 8 {
            let t = Instant::now();
            loop {
                if let Ok(mut c) = orch_proto::connect(&socket).await
                    && c.daemon_status(DaemonStatusRequest {}).await.is_ok()
                {
                    held.push(c);
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "connection {} was not admitted",
                    held.len() + 1
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Every further connection is refused. The reason is in the GOAWAY orchd sends;
        // a client that sent its request before reading it sees only "connection closed"
        // (a race inside the client), so a few are tried for the reason.
        let mut texts = Vec::new();
        for _ in 0..5 {
            let ninth = async {
                let mut c = orch_proto::connect(&socket).await?;
                c.daemon_status(DaemonStatusRequest {})
                    .await
                    .map(|_| ())
                    .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
            }
            .await;
            let err = ninth.expect_err("a ninth connection is refused");
            texts.push(chain(err.as_ref()));
            if texts.last().is_some_and(|t| {
                t.contains("8 connections are open, the limit of [server] max_connections = 8")
            }) {
                break;
            }
        }
        (held, texts)
    });
    assert!(
        texts.iter().any(
            |t| t.contains("8 connections are open, the limit of [server] max_connections = 8")
        ),
        "{texts:?}"
    );
    drop(held);
    // Their places are given back when they close.
    poll_until("a call answering again", Duration::from_secs(10), || {
        block_on(async {
            let mut c = orch_proto::connect(d.socket()).await.ok()?;
            c.daemon_status(DaemonStatusRequest {}).await.ok()
        })
    });
}

#[test]
fn idle_connections_are_closed_and_calls_in_flight_are_not() {
    let (d, _config) = daemon("[server]\nidle_timeout = \"1s\"\n", None);
    // A connection that never sends a request is closed after the idle timeout.
    let mut idle = UnixStream::connect(d.socket()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    while idle.read(&mut buf).expect("orchd closes, not a timeout") > 0 {}
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );

    // A watch in flight for longer than the idle timeout is not cut.
    block_on(async {
        let mut c = d.client().await;
        let spec = ObjectiveSpec {
            name: "slow".into(),
            steps: vec![StepSpec {
                id: "main".into(),
                command: vec!["sleep".into(), "3".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let id = c
            .submit(submit_request(d.work_dir(), Some(spec)))
            .await
            .expect("submit")
            .into_inner()
            .id;
        let mut watch = d
            .client()
            .await
            .watch(WatchRequest {
                objective_id: id,
                from_seq: None,
                kinds: vec![],
            })
            .await
            .expect("watch")
            .into_inner();
        let mut last = None;
        while let Some(e) = watch.message().await.expect("the watch is not cut") {
            last = Some(e);
        }
        let ended = matches!(
            last.and_then(|e| e.payload),
            Some(Payload::ObjectiveState(_))
        );
        assert!(ended, "the watch ran to the objective's end");
    });
}

// ------------------------------------------------------------------ requests

/// Submits a one-step objective whose agent gets a prompt of `bytes` bytes.
fn submit_with_prompt(d: &TestDaemon, bytes: usize) -> Result<String, tonic::Status> {
    let spec = ObjectiveSpec {
        name: "big".into(),
        steps: vec![StepSpec {
            id: "main".into(),
            agent: "shell".into(),
            prompt: "x".repeat(bytes),
            ..Default::default()
        }],
        ..Default::default()
    };
    block_on(async {
        let mut c = d.client().await.max_encoding_message_size(64 << 20);
        c.submit(submit_request(d.work_dir(), Some(spec)))
            .await
            .map(|r| r.into_inner().id)
    })
}

#[test]
fn a_request_larger_than_the_spec_limit_is_refused_before_it_is_read() {
    let (d, _config) = daemon("", None);
    let before = rss_bytes(d.pid());
    let statuses: Vec<tonic::Status> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|_| s.spawn(|| submit_with_prompt(&d, 15 << 20).expect_err("refused")))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("a submit thread"))
            .collect()
    });
    for st in &statuses {
        assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
        assert!(
            st.message().contains(
                "is larger than the limit of 5242880 bytes (5.0M: the spec \
                                   limit of 4.0M plus 1.0M for the rest of the request)"
            ),
            "{}",
            st.message()
        );
    }
    let grew = rss_bytes(d.pid()).saturating_sub(before);
    assert!(
        grew < 64 << 20,
        "8 refused 15 MiB requests grew orchd by {grew} bytes"
    );
    assert!(d.ctl(&["daemon", "status"]).status.success());
}

#[test]
fn a_users_requests_in_flight_are_bounded_by_bytes() {
    let (d, _config) = daemon("[server]\nrequest_bytes_per_user = \"1M\"\n", None);
    let st = submit_with_prompt(&d, 2 << 20).expect_err("refused");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message()
            .contains("would pass the limit of [server] request_bytes_per_user = 1048576 bytes"),
        "{}",
        st.message()
    );
    // Smaller requests still pass (the bytes went back when the call ended).
    submit_with_prompt(&d, 1000).expect("a small submit");
}

// ------------------------------------------------------------------ watchers

/// An objective whose agent writes 200 checkpoints of 100 KB each (20 MB of events).
fn spew_checkpoints() -> ObjectiveSpec {
    let script = "pad=$(head -c 100000 /dev/zero | tr '\\0' a); \
                  for i in $(seq 200); do \
                  echo \"::orch-checkpoint::{\\\"i\\\":$i,\\\"pad\\\":\\\"$pad\\\"}\"; done";
    ObjectiveSpec {
        name: "spew".into(),
        steps: vec![StepSpec {
            id: "main".into(),
            command: vec!["bash".into(), "-c".into(), script.into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `n` Watch streams of objective `id` from `from_seq`, each on its own connection, that
/// nobody reads yet.
async fn stalled_watchers(d: &TestDaemon, id: &str, n: usize) -> Vec<Streaming<Event>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let stream = d
            .client()
            .await
            .watch(WatchRequest {
                objective_id: id.to_string(),
                from_seq: Some(0),
                kinds: vec![],
            })
            .await
            .expect("watch")
            .into_inner();
        out.push(stream);
    }
    out
}

/// orchd's peak RSS while waiting `for_` or, with `id`, until that objective has ended.
async fn peak_rss(d: &TestDaemon, id: Option<&str>, for_: Duration) -> u64 {
    let mut c = d.client().await;
    let until = Instant::now() + for_;
    let mut peak = 0;
    loop {
        peak = peak.max(rss_bytes(d.pid()));
        let done = match id {
            Some(id) => {
                let o = c
                    .get_objective(orch_proto::v1::GetObjectiveRequest { id: id.into() })
                    .await
                    .expect("get the objective")
                    .into_inner();
                is_terminal(&o)
            }
            None => Instant::now() >= until,
        };
        // Without the bounds the daemon would grow by gigabytes: stop early.
        if done || peak > 1 << 30 || (id.is_some() && Instant::now() >= until) {
            return peak;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn watch_clients_that_do_not_read_hold_bounded_memory() {
    const WATCHERS: usize = 24;
    let (d, _config) = daemon(
        "[server]\nwatch_queue_bytes = \"1M\"\nwatch_stall_timeout = \"1s\"\n",
        None,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut c = d.client().await;
        let request = || submit_request(d.work_dir(), Some(spew_checkpoints()));
        // What storing 20 MB of events costs orchd by itself, with nobody watching.
        let before = rss_bytes(d.pid());
        let first = c.submit(request()).await.expect("submit").into_inner().id;
        let alone = peak_rss(&d, Some(&first), Duration::from_secs(120)).await;
        let stored = alone.saturating_sub(before);

        // Watchers replaying it from the store, not reading: each may hold its queue.
        let at_rest = rss_bytes(d.pid());
        let replaying = stalled_watchers(&d, &first, WATCHERS).await;
        let grew = peak_rss(&d, None, Duration::from_secs(3))
            .await
            .saturating_sub(at_rest);
        assert!(
            grew < 64 << 20,
            "{WATCHERS} watchers replaying 20 MB each, not reading, grew orchd by {} MiB",
            grew >> 20
        );

        // Watchers of a live objective, not reading, while it writes the same 20 MB.
        let at_rest = rss_bytes(d.pid());
        let second = c.submit(request()).await.expect("submit").into_inner().id;
        let live = stalled_watchers(&d, &second, WATCHERS).await;
        let grew = peak_rss(&d, Some(&second), Duration::from_secs(120))
            .await
            .saturating_sub(at_rest);
        eprintln!(
            "storing 20 MB of events: +{} MiB; with {WATCHERS} live watchers not reading: +{} MiB",
            stored >> 20,
            grew >> 20
        );
        assert!(
            grew < stored + (64 << 20),
            "{WATCHERS} live watchers not reading grew orchd by {} MiB (storing alone: {} MiB)",
            grew >> 20,
            stored >> 20
        );
        drop(replaying);

        // Those that stayed full for the stall timeout were ended with a status saying
        // where to resume; what each got, and what resuming there gets, are all the
        // objective's events once each.
        let all_from = |from: u64| {
            let mut c = c.clone();
            let id = second.clone();
            async move {
                let mut s = c
                    .watch(WatchRequest {
                        objective_id: id,
                        from_seq: Some(from),
                        kinds: vec![],
                    })
                    .await
                    .expect("watch")
                    .into_inner();
                let mut seqs = Vec::new();
                while let Some(e) = s.message().await.expect("a watch that reads") {
                    seqs.push(e.seq);
                }
                seqs
            }
        };
        let all = all_from(0).await;
        let mut ended = 0;
        for mut stream in live {
            let mut seqs = Vec::new();
            let status = loop {
                match stream.message().await {
                    Ok(Some(e)) => seqs.push(e.seq),
                    Ok(None) => break None,
                    Err(s) => break Some(s),
                }
            };
            let Some(status) = status else {
                // Read before its stall timeout passed: it caught up.
                assert_eq!(seqs, all);
                continue;
            };
            ended += 1;
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            let m = status.message();
            assert!(
                m.contains(
                    "(limits: [server] watch_queue_bytes = 1048576 bytes, watch_stall_timeout = \
                     1s)"
                ),
                "{m}"
            );
            let resume: u64 = m
                .rsplit_once("; resume with from_seq = ")
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or_else(|| panic!("no seq to resume from in `{m}`"));
            seqs.extend(all_from(resume).await);
            assert_eq!(seqs, all, "resumed with no gap and no repeat");
        }
        assert!(ended > 0, "no watcher was ended for falling behind");
    });
}

#[test]
fn one_user_may_hold_only_so_many_streams() {
    if !require_root("to watch as another user") {
        return;
    }
    let (d, _config) = daemon("[server]\nmax_streams_per_user = 3\n", None);
    let id = d.submit(&["--", "sleep", "60"], 0);
    let user = TestUser::create(true);
    let watch = || {
        let mut cmd = user.command(ORCHCTL);
        cmd.arg("--socket").arg(d.socket()).args(["watch", &id]);
        cmd
    };
    let mut open: Vec<Follower> = (0..3).map(|_| Follower::start(watch())).collect();
    for w in &mut open {
        w.next_line(Duration::from_secs(10));
    }
    let fourth = run_deadline(&mut watch(), Duration::from_secs(10)).expect("refused at once");
    assert_eq!(fourth.status.code(), Some(1), "{}", describe(&fourth));
    let err = String::from_utf8_lossy(&fourth.stderr);
    assert!(
        err.contains(&format!(
            "uid {} already has 3 Watch and StreamLogs calls open, the limit of [server] \
             max_streams_per_user = 3",
            user.uid
        )),
        "{err}"
    );
    // Root is not counted; and a closed stream gives its place back.
    let mut roots: Vec<Follower> = (0..4)
        .map(|_| Follower::start(d.ctl_command(&["watch", &id])))
        .collect();
    for w in &mut roots {
        w.next_line(Duration::from_secs(10));
    }
    drop(open.pop());
    poll_until(
        "a fourth stream once one closed",
        Duration::from_secs(10),
        || {
            let mut w = Follower::start(watch());
            w.try_next_line(Duration::from_secs(2)).map(|_| w)
        },
    );
    d.ctl(&["cancel", &id]);
}

// ------------------------------------------------------------------ logs

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A shell agent writing 30 MB to stdout as fast as it can.
const SPEW: &[&str] = &[
    "submit",
    "--wait",
    "--retries",
    "0",
    "--",
    "sh",
    "-c",
    "head -c 30000000 /dev/zero | tr '\\0' x | fold -w 100",
];

#[test]
fn the_log_cap_holds_while_attempts_run() {
    let (d, _config) = daemon("[logs]\nmax_total_bytes = \"1M\"\n", None);
    let out = d.ctl(SPEW);
    assert!(
        out.status.success(),
        "the agent is never blocked: {}",
        describe(&out)
    );
    let id = first_line(&out);
    let logs = dir_bytes(&d.state_dir().join("logs"));
    assert!(logs <= (1 << 20) + 4096, "the logs hold {logs} bytes");
    let text = String::from_utf8_lossy(&d.logs(&[&id])).into_owned();
    let marker = "orchd: output dropped from here: the logs of running attempts reached [logs] \
                  max_total_bytes = 1048576 bytes (1.0M)";
    assert!(
        text.contains(marker),
        "{}",
        &text[text.len().saturating_sub(500)..]
    );
    assert!(text.contains("bytes of output were dropped at the end"));
    assert!(
        d.log_text()
            .contains(&marker["orchd: output dropped from here: ".len()..]),
        "orchd warned"
    );
}

#[test]
fn one_users_running_attempts_get_their_share_of_the_log_space() {
    if !require_root("to run an agent as another user") {
        return;
    }
    let (d, _config) = daemon(
        "[logs]\nmax_total_bytes = \"64M\"\nmax_user_bytes = \"1M\"\n",
        None,
    );
    let user = TestUser::create(true);
    let out = user.orchctl(&d, SPEW);
    assert!(out.status.success(), "{}", describe(&out));
    let id = first_line(&out);
    let logs = dir_bytes(&d.state_dir().join("logs"));
    assert!(logs <= (1 << 20) + 4096, "the logs hold {logs} bytes");
    let text = String::from_utf8_lossy(&d.logs(&[&id])).into_owned();
    let marker = format!(
        "the logs of the running attempts of uid {} reached [logs] max_user_bytes = 1048576 \
         bytes (1.0M)",
        user.uid
    );
    assert!(
        text.contains(&marker),
        "{}",
        &text[text.len().saturating_sub(500)..]
    );
    // Root's output (the daemon's own user: the total only) is not held to that share.
    let out = d.ctl(SPEW);
    let id = first_line(&out);
    let text = String::from_utf8_lossy(&d.logs(&[&id])).into_owned();
    assert!(
        !text.contains("orchd: output dropped"),
        "root's log is whole"
    );
}
