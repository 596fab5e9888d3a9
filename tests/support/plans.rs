//! Building what tests submit: plan files in a daemon's temp dir, `SubmitRequest`s for gRPC,
//! shell snippets agents run (progress lines), and gate files that hold an agent until the
//! test lets it go on.

use std::path::{Path, PathBuf};

use orch_proto::v1::{ObjectiveSpec, StepSpec, SubmitRequest};

use super::daemon::TestDaemon;

/// `path` as UTF-8 text (every temp path is).
pub fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

impl TestDaemon {
    /// Writes a plan file (TOML, YAML or JSON by its name) into the temp dir; returns its path
    /// as text, ready for `orchctl submit`.
    pub fn write_plan(&self, name: &str, text: &str) -> String {
        utf8(&self.write_file(name, text)).to_string()
    }
}

/// A command step for a gRPC `ObjectiveSpec`.
pub fn command_step(id: &str, command: &[&str]) -> StepSpec {
    StepSpec {
        id: id.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A `SubmitRequest` of `spec` from a client in `workdir`.
pub fn submit_request(workdir: &Path, spec: Option<ObjectiveSpec>) -> SubmitRequest {
    SubmitRequest {
        spec,
        workdir: workdir.display().to_string(),
        ..Default::default()
    }
}

/// A `SubmitRequest` of objective `name` with one step `main` running `bash -c SCRIPT`.
pub fn script_request(name: &str, workdir: &Path, script: &str) -> SubmitRequest {
    let spec = ObjectiveSpec {
        name: name.into(),
        steps: vec![command_step("main", &["bash", "-c", script])],
        ..Default::default()
    };
    submit_request(workdir, Some(spec))
}

/// Shell text printing one progress line (`message` may use shell variables).
pub fn progress(percent: u32, message: &str) -> String {
    format!(r#"echo "::orch-progress::{{\"percent\":{percent},\"message\":\"{message}\"}}""#)
}

/// A file the test creates to let a waiting agent go on.
pub struct Gate(PathBuf);

impl Gate {
    /// A closed gate `gate-NAME` in the daemon's temp dir.
    pub fn new(d: &TestDaemon, name: &str) -> Gate {
        Gate(d.dir().join(format!("gate-{name}")))
    }

    /// Shell text that waits until the gate is open.
    pub fn wait(&self) -> String {
        format!("while [ ! -e '{}' ]; do sleep 0.02; done", self.0.display())
    }

    /// Opens the gate.
    pub fn open(&self) {
        std::fs::write(&self.0, b"open").unwrap_or_else(|e| panic!("open the gate: {e}"));
    }
}
