//! A full disk: the state directory on a small tmpfs (mounted by the test, as root) is
//! filled by an agent's output and by a user's file. orchd stays up and answers, the agent
//! keeps running with the output that does not fit dropped (a marker in the log, an
//! event), a new submit is refused with `RESOURCE_EXHAUSTED` naming the disk and the space
//! it needs, the store's writes that fail are held, not lost, and once space returns orchd
//! goes on by itself: the held transitions are written, new work is accepted, and
//! everything acknowledged is there after a restart, with event seqs never reused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use orch_proto::v1::{WatchRequest, event::Payload};
use serde_json::Value;
use tonic::Code;

use crate::support::{
    TestDaemon, block_on, poll_until, require_root, script_request, wait_process_gone,
};

/// A tmpfs mounted for one test; unmounted (lazily, so a leftover process cannot keep it)
/// when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs at {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // What a partly written last page left: a small file takes the rest.
    let _ = f.flush();
    n
}

fn status(d: &TestDaemon) -> Value {
    d.ctl_json(&["daemon", "status"])
}

fn submit(d: &TestDaemon, name: &str, script: &str) -> Result<String, tonic::Status> {
    block_on(async {
        let mut c = d.client().await;
        c.submit(script_request(name, d.work_dir(), script))
            .await
            .map(|r| r.into_inner().id)
    })
}

/// Every event from the start of the log: (seq, kind, progress message).
fn all_events(d: &TestDaemon) -> Vec<(u64, String, String)> {
    block_on(async {
        let mut c = d.client().await;
        let last = c
            .daemon_status(orch_proto::v1::DaemonStatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .last_event_seq;
        let mut s = c
            .watch(WatchRequest {
                from_seq: Some(0),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let mut out = Vec::new();
        while out.last().is_none_or(|(seq, _, _)| *seq < last) {
            let e = tokio::time::timeout(Duration::from_secs(20), s.message())
                .await
                .expect("events up to the last seq arrive")
                .expect("watch stream")
                .expect("the stream does not end");
            let message = match &e.payload {
                Some(Payload::Progress(p)) => p.message.clone(),
                _ => String::new(),
            };
            out.push((e.seq, e.kind.clone(), message));
        }
        out
    })
}

#[test]
fn a_full_disk_refuses_new_work_keeps_agents_running_and_recovers_without_a_restart() {
    if !require_root("mounts a small tmpfs as the state directory") {
        return;
    }
    let t0 = Instant::now();
    let mut d = TestDaemon::prepare_with_config("[store]\nmin_free = \"4M\"\n", &[]);
    let state = d.state_dir().to_path_buf();
    // Declared after the daemon: dropped (unmounted) after it is killed.
    let _tmpfs = Tmpfs::mount(&state, "16m");
    d.launch();
    let gate = d.work_dir().join("gate");
    let flooded = d.work_dir().join("flooded");
    let user_file = state.join("user-file");

    // Acknowledged before the disk fills: must be there, unchanged, at the end.
    let before = submit(&d, "before", "echo kept").expect("submit on an empty disk");
    d.wait_ended(&before, Duration::from_secs(30));

    let s = status(&d);
    assert_eq!(s["min_free_bytes"], 4 << 20, "{s}");
    assert!(
        s["state_disk_total_bytes"].as_u64().unwrap_or(0) >= 15 << 20,
        "{s}"
    );
    assert!(s["store_problem"].is_null(), "{s}");

    // An agent whose output alone is more than the disk holds (24 MiB on 16 MiB), then
    // waits, then says one more line, and a stretch of progress lines (store writes) while
    // the disk is full.
    let flood = format!(
        "head -c 25165824 /dev/zero | tr '\\0' x; echo; touch {flooded}; \
         while [ ! -e {gate} ]; do sleep 0.05; done; \
         for i in $(seq 1 300); do echo \"::orch-progress::{{\\\"message\\\":\\\"line $i $(head -c 600 /dev/zero | tr '\\0' y)\\\"}}\"; done; \
         while [ ! -e {gate}2 ]; do sleep 0.05; done; echo after-the-flood",
        gate = gate.display(),
        flooded = flooded.display()
    );
    // A user's file takes half the disk (freed later), the agent's output the rest.
    std::fs::write(&user_file, vec![0u8; 8 << 20]).expect("write the user's file");
    let agent = submit(&d, "flood", &flood).expect("submit the flood");
    d.wait_for_state(&agent, |o| o["state"] == "running", Duration::from_secs(30));
    // The disk is full: the agent's output is dropped, and orchd says so in an event.
    poll_until(
        "the agent has written its output",
        Duration::from_secs(60),
        || flooded.exists().then_some(()),
    );
    poll_until(
        "the log's output is dropped",
        Duration::from_secs(60),
        || {
            status(&d)["state_disk_free_bytes"]
                .as_u64()
                .filter(|free| *free < 1 << 20)
        },
    );
    // Another file takes whatever the log left.
    fill(&state.join("user-file-2"));
    let s = status(&d);
    assert!(
        s["state_disk_free_bytes"].as_u64().unwrap_or(u64::MAX) < 4 << 20,
        "{s}"
    );

    // New work is refused before it is acknowledged, naming the disk and the space needed.
    let refused = submit(&d, "refused", "echo never").expect_err("refused on a full disk");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let msg = refused.message();
    assert!(msg.contains(&state.display().to_string()), "{msg}");
    assert!(msg.contains("min_free"), "{msg}");
    assert!(msg.contains("free"), "{msg}");
    let table = d.ctl(&["daemon", "status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("State disk"), "{table}");
    assert!(table.contains("new work is refused"), "{table}");

    // The store's writes now fail (300 progress events need pages the disk does not
    // have): orchd holds them, stays up and answers; the agent keeps running.
    std::fs::write(&gate, "").expect("open the gate");
    let problem = poll_until(
        "the store reports it cannot write",
        Duration::from_secs(60),
        || status(&d)["store_problem"].as_str().map(str::to_string),
    );
    assert!(problem.contains("cannot write"), "{problem}");
    let o = d.get_objective(&agent);
    assert_eq!(crate::support::state_word(&o), "running", "{o:?}");
    let refused = submit(&d, "refused", "echo never").expect_err("refused while degraded");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains(&state.display().to_string()),
        "{refused:?}"
    );

    // Space returns: the user removes their file. No restart: the held transitions are
    // written, new work is accepted again.
    let freed_at = Instant::now();
    std::fs::remove_file(&user_file).expect("remove the user's file");
    let _ = std::fs::remove_file(state.join("user-file-2"));
    poll_until("the store writes again", Duration::from_secs(30), || {
        status(&d)["store_problem"].is_null().then_some(())
    });
    let recovered_in = freed_at.elapsed();
    let after = submit(&d, "after", "echo accepted").expect("accepted once space returned");
    d.wait_ended(&after, Duration::from_secs(30));
    std::fs::write(d.work_dir().join("gate2"), "").expect("open the second gate");
    let ended = d.wait_ended(&agent, Duration::from_secs(60));
    assert_eq!(ended["state"], "succeeded", "{ended}");

    // The log: what fitted, a marker where output was dropped, and the last line.
    let logs = d.ctl(&["logs", &agent]);
    let text =
        String::from_utf8_lossy(&logs.stdout).into_owned() + &String::from_utf8_lossy(&logs.stderr);
    assert!(
        text.contains("bytes of output were dropped") && text.contains("the disk was full"),
        "no drop marker in the log: {}",
        &text[text.len().saturating_sub(2000)..]
    );
    assert!(
        text.contains("after-the-flood"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );

    // Events: the drop and the recovery were told; seqs strictly increase; the 300
    // progress lines held while the store could not write are all there.
    let events = all_events(&d);
    assert!(
        events.iter().any(|(_, _, m)| m.contains("is full")),
        "no event about the dropped output"
    );
    assert!(events.iter().any(|(_, _, m)| m.contains("has room again")));
    let lines = events
        .iter()
        .filter(|(_, _, m)| m.starts_with("line "))
        .count();
    assert_eq!(lines, 300, "progress events held while degraded");
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "seqs increase");
    let last_seq = events.last().map_or(0, |e| e.0);

    // Nothing acknowledged is lost or corrupted: after a restart on the same disk every
    // objective is there and ended as it did, and the next event's seq is a new one.
    let pid = d.pid();
    d.stop();
    assert!(wait_process_gone(pid, Duration::from_secs(10)));
    d.launch();
    for (id, state) in [
        (&before, "succeeded"),
        (&agent, "succeeded"),
        (&after, "succeeded"),
    ] {
        let o = d.get_objective(id);
        assert_eq!(crate::support::state_word(&o), state, "{id}: {o:?}");
    }
    let next = submit(&d, "next", "echo next").expect("submit after the restart");
    d.wait_ended(&next, Duration::from_secs(30));
    let events = all_events(&d);
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "seqs increase");
    assert!(
        events.last().map_or(0, |e| e.0) > last_seq,
        "the restarted daemon's events continue after seq {last_seq}"
    );
    eprintln!(
        "full disk: recovered {} ms after space returned; whole test {} ms",
        recovered_in.as_millis(),
        t0.elapsed().as_millis()
    );
}
