//! `orchctl top` in a real terminal: tmux runs it in an 80×24 pane on a private tmux
//! socket; the test reads the screen (`capture-pane`) and types keys (`send-keys`), and
//! checks what the daemon did over gRPC. The screen sends no event, so it is polled with a
//! deadline (like /proc).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{
    Gate, ORCHCTL, STATE_DEADLINE, TestDaemon, describe, poll_until, require_tmux, stderr,
};

const SCREEN_DEADLINE: Duration = Duration::from_secs(15);

/// A tmux server of the test's own, killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"))
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows every one of `words`; returns it.
    fn until(&self, what: &str, words: &[&str]) -> String {
        let mut last = String::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_until(what, SCREEN_DEADLINE, || {
                last = self.screen();
                words.iter().all(|w| last.contains(w)).then(|| last.clone())
            })
        }));
        found.unwrap_or_else(|_| panic!("{what}: {words:?} not on the screen:\n{last}"))
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "send-keys {keys:?}\n{}",
            describe(&out)
        );
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_objectives_and_acts_on_keys_in_80_by_24() {
    if !require_tmux() {
        return;
    }
    let d = TestDaemon::start();
    let plan = d.write_plan(
        "gated.toml",
        "name = \"approve-me\"\n[[steps]]\nid = \"deploy\"\ncommand = [\"true\"]\nrequires_approval = true\n",
    );
    let gated = d.submit(&[&plan], 0);
    d.wait_state(&gated, &["awaiting_approval"], STATE_DEADLINE);
    let gate = Gate::new(&d, "top");
    let sleeper = d.submit(
        &[
            "--name",
            "sleeper",
            "--",
            "sh",
            "-c",
            &format!("echo hello-from-sleeper; {}", gate.wait()),
        ],
        0,
    );
    d.wait_started(&sleeper, STATE_DEADLINE);

    let tmux = Tmux {
        socket: d.dir().join("tmux.sock"),
    };
    let command = format!("exec '{ORCHCTL}' --socket '{}' top", d.socket().display());
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top",
        &command,
    ]);
    assert!(out.status.success(), "tmux new-session\n{}", describe(&out));

    // Both objectives with their steps, the columns, the footer with slots and host memory.
    let screen = tmux.until(
        "the dashboard",
        &[
            "OBJECTIVE / STEP",
            "approve-me",
            "sleeper",
            "awaiting",
            "running",
            "slots 1/",
            "mem ",
            "q quit",
        ],
    );
    let sid = &sleeper[..10];
    assert!(screen.contains(sid), "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");

    // The sleeper is the newest: first row. Its details, then its logs.
    tmux.keys(&["g", "Enter"]);
    tmux.until("the details", &["details of", "sleeper"]);
    // Escape alone: followed at once by a key, a terminal reads it as Alt+key.
    tmux.keys(&["Escape"]);
    tmux.until("the list again", &["OBJECTIVE / STEP"]);
    tmux.keys(&["l"]);
    tmux.until("the logs", &["logs of", "hello-from-sleeper"]);
    tmux.keys(&["Escape"]);
    tmux.until("the list again", &["OBJECTIVE / STEP"]);

    // The last row is the gated step: approve it.
    tmux.keys(&["G", "a"]);
    d.wait_state(&gated, &["succeeded"], STATE_DEADLINE);
    tmux.until("the approval's result", &["approved deploy"]);

    // Pause and resume the sleeper, then cancel it (asked first).
    tmux.keys(&["g", "p"]);
    d.wait_state(&sleeper, &["paused"], STATE_DEADLINE);
    tmux.until("paused", &["paused "]);
    tmux.keys(&["p"]);
    d.wait_state(&sleeper, &["running"], STATE_DEADLINE);
    tmux.keys(&["c"]);
    tmux.until("the question", &["cancel objective", "y/n"]);
    tmux.keys(&["y"]);
    d.wait_state(&sleeper, &["cancelled"], STATE_DEADLINE);
    tmux.until("the cancel on screen", &["cancelled"]);

    tmux.keys(&["q"]);
    poll_until("top to quit on q", SCREEN_DEADLINE, || {
        (!tmux.alive()).then_some(())
    });
}

#[test]
fn top_refuses_without_a_terminal() {
    let d = TestDaemon::start();
    let out = d.ctl_exits(&["top"], 2, "top with stdout not a terminal");
    assert!(
        stderr(&out).contains("needs a terminal"),
        "{}",
        describe(&out)
    );
}
