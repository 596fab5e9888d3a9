//! Tests that need something this machine may lack (root, Python's grpc, a program) check it
//! first: a skip is announced on stderr past the test harness's output capture, and becomes a
//! failure where the environment says it must not happen (CI: `ORCH_TEST_ROOT=1` as root,
//! `ORCH_TEST_PYTHON=1` with the Python requirements installed, `ORCH_TEST_AGENTS=1` with the
//! real agent CLIs installed by `.ci/run`).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// Writes `line` to the real stderr: `eprintln!` from a passing test is captured and never
/// shown, which would make a skip silent.
pub fn announce(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Whether a test may go on when `have` is false: announces `SKIPPED <test>: needs <what>`
/// and returns false, or panics when `$env=1` demands that nothing be skipped.
fn require(have: bool, what: &str, env: Option<&str>) -> bool {
    if have {
        return true;
    }
    let test = test_name();
    if let Some(env) = env
        && std::env::var_os(env).is_some_and(|v| v == "1")
    {
        panic!("{test}: needs {what}, and {env}=1 says it must not be skipped");
    }
    let hint = env.map_or(String::new(), |e| format!("; {e}=1 makes this a failure"));
    announce(&format!("SKIPPED {test}: needs {what}{hint}"));
    false
}

/// Whether this process runs as root; without it, says the test was skipped and returns false
/// (panics instead under `ORCH_TEST_ROOT=1`). `why`: what the test needs root for.
pub fn require_root(why: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    require(root, &format!("root ({why})"), Some("ORCH_TEST_ROOT"))
}

/// Whether `python3` with the `grpc` and `grpc_tools` modules is available; without them,
/// says the test was skipped and returns false (panics instead under `ORCH_TEST_PYTHON=1`).
pub fn require_python_grpc() -> bool {
    let have = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        have,
        "python3 with the grpc and grpc_tools modules (pip install -r examples/python/requirements.txt)",
        Some("ORCH_TEST_PYTHON"),
    )
}

/// Whether `program --version` runs; without it, says the test was skipped and returns false.
pub fn require_program(program: &str, why: &str) -> bool {
    let have = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    require(have, &format!("`{program}` ({why})"), None)
}

/// Where `.ci/run` installs the real agent CLIs: `$ORCH_AGENTS_DIR`, default `/opt/orch-agents`
/// (npm packages under `npm/`, aider in the venv `aider-venv/`).
pub fn agents_dir() -> PathBuf {
    std::env::var_os("ORCH_AGENTS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/opt/orch-agents"), PathBuf::from)
}

/// The installed program of a real agent CLI: `claude`, `codex` or `aider`.
pub fn agent_cli(name: &str) -> PathBuf {
    let dir = agents_dir();
    match name {
        "aider" => dir.join("aider-venv/bin/aider"),
        other => dir.join("npm/node_modules/.bin").join(other),
    }
}

/// Whether every CLI in `names` (`claude`, `codex`, `aider`) is installed under
/// [`agents_dir`] and answers `--version`; without them, says the test was skipped and
/// returns false (panics instead under `ORCH_TEST_AGENTS=1`).
pub fn require_agents(names: &[&str]) -> bool {
    let missing: Vec<String> = names
        .iter()
        .map(|n| agent_cli(n))
        .filter(|p| {
            !Command::new(p)
                .arg("--version")
                .env("HOME", std::env::temp_dir())
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|p| p.display().to_string())
        .collect();
    require(
        missing.is_empty(),
        &format!(
            "the real agent CLIs ({}; install them with the agents section of .ci/run, or set \
             ORCH_AGENTS_DIR)",
            missing.join(", ")
        ),
        Some("ORCH_TEST_AGENTS"),
    )
}

/// Whether `tmux` runs here (for the `orchctl top` test); without it, says the test was
/// skipped and returns false (panics instead under `ORCH_TEST_TMUX=1`, as CI sets).
pub fn require_tmux() -> bool {
    let have = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        have,
        "tmux (apt-get install tmux), to drive `orchctl top` in a terminal",
        Some("ORCH_TEST_TMUX"),
    )
}

/// Whether `python3` with the official MCP SDK (`mcp`, pinned in
/// `tests/fixtures/mcp/requirements.txt`) is available; without it, says the test was
/// skipped and returns false (panics instead under `ORCH_TEST_PYTHON=1`).
pub fn require_python_mcp() -> bool {
    let have = Command::new("python3")
        .args(["-c", "import mcp, httpx2; from mcp import Client"])
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        have,
        "python3 with the MCP SDK (pip install -r tests/fixtures/mcp/requirements.txt)",
        Some("ORCH_TEST_PYTHON"),
    )
}

/// The single-node Slurm cluster of `tests/slurm/cluster.sh start`, found by the
/// `SLURM_CONF` it exports; without it, says the test was skipped and returns `None` (panics
/// instead under `ORCH_TEST_SLURM=1`, which `.ci/run` sets after starting the cluster).
pub fn require_slurm() -> Option<PathBuf> {
    let conf = std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .filter(|c| c.is_file());
    let up = conf.as_ref().is_some_and(|c| {
        Command::new("sinfo")
            .env("SLURM_CONF", c)
            .args(["-h", "-o", "%T"])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    });
    if require(
        up,
        "a Slurm cluster (eval \"$(tests/slurm/cluster.sh start)\" as root exports SLURM_CONF)",
        Some("ORCH_TEST_SLURM"),
    ) {
        conf
    } else {
        None
    }
}
