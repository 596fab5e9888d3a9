//! The Slurm executor against a real single-node cluster (`tests/slurm/cluster.sh start`,
//! which `.ci/run` runs, exporting `SLURM_CONF`): each attempt of a step with
//! `executor = "slurm"` is one batch job. Skipped loudly without a cluster; mandatory under
//! `ORCH_TEST_SLURM=1`. Each test has its own daemon, output directory and objective (job
//! names carry the objective id), so they run in parallel; the one that restarts slurmctld
//! holds the cluster alone while it does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    TestDaemon, attempts, describe, poll_until, progress, require_slurm, stdout, step,
};

/// Jobs start in under a second here, but the node has 2 CPUs shared by every test.
const JOB_DEADLINE: Duration = Duration::from_secs(90);

/// Taken for writing by the test that restarts slurmctld, for reading by the others (whose
/// sbatch would fail while the controller is down).
static CLUSTER: RwLock<()> = RwLock::new(());

struct Slurm {
    d: TestDaemon,
    conf: PathBuf,
    /// Files the jobs wait for (on the "shared" disk).
    gates: PathBuf,
}

/// A daemon with `[executors.slurm]` on the test cluster, or `None` (skipped).
fn slurm_daemon() -> Option<Slurm> {
    slurm_daemon_with("")
}

/// The same, shared by the members of group `orch` (a root daemon, its temp dir
/// traversable), or `None` (skipped without root or a cluster).
fn shared_slurm_daemon() -> Option<Slurm> {
    if !crate::support::require_root("to run a shared root daemon and a throwaway user") {
        return None;
    }
    crate::support::orch_group();
    let conf = require_slurm()?;
    let cluster_dir = conf.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut d = TestDaemon::prepare_with_config("", &[]);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("make the temp dir traversable");
    let shared = d.dir().join("shared");
    std::fs::create_dir(&shared).expect("create the shared output dir");
    d.write_file(
        "orchd.toml",
        &format!(
            "[executors.slurm]\noutput_dir = \"{}\"\njobcomp_log = \"{}\"\npoll_max = \"2s\"\n",
            shared.display(),
            cluster_dir.join("log/jobcomp.log").display()
        ),
    );
    d.set_env("SLURM_CONF", &conf.display().to_string());
    d.launch();
    let gates = d.dir().join("gates");
    std::fs::create_dir(&gates).expect("create the gates dir");
    Some(Slurm { d, conf, gates })
}

/// The same, with more `[executors.slurm]` keys.
fn slurm_daemon_with(extra: &str) -> Option<Slurm> {
    let conf = require_slurm()?;
    let cluster_dir = conf.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut d = TestDaemon::prepare_with_config("", &[]);
    let shared = d.dir().join("shared");
    std::fs::create_dir(&shared).expect("create the shared output dir");
    let config = format!(
        "[executors.slurm]\noutput_dir = \"{}\"\njobcomp_log = \"{}\"\npoll_max = \"2s\"\n{extra}\n",
        shared.display(),
        cluster_dir.join("log/jobcomp.log").display()
    );
    d.write_file("orchd.toml", &config);
    d.set_env("SLURM_CONF", &conf.display().to_string());
    d.launch();
    let gates = d.dir().join("gates");
    std::fs::create_dir(&gates).expect("create the gates dir");
    Some(Slurm { d, conf, gates })
}

impl Slurm {
    /// Submits a plan (TOML text) and returns the objective id.
    fn submit(&self, plan: &str) -> String {
        let path = self
            .d
            .write_file(&format!("plan-{}.toml", fastrand_name()), plan);
        self.d.submit(&[&path.display().to_string()], 0)
    }

    /// A Slurm command on the test cluster.
    fn slurm(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new(program)
            .env("SLURM_CONF", &self.conf)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// The job's state as `scontrol` says it.
    fn job_state(&self, job: &str) -> String {
        let out = self.slurm("scontrol", &["show", "job", "-o", job]);
        stdout(&out)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or("")
            .to_string()
    }

    /// Waits (over the Watch stream) until step `s`'s latest attempt has a job id.
    fn wait_job(&self, id: &str, s: &str) -> String {
        self.d.wait_until(id, "a Slurm job id", JOB_DEADLINE, |o| {
            o.steps
                .iter()
                .find(|x| x.id == s)
                .and_then(|x| x.attempts.last())
                .is_some_and(|a| !a.job_id.is_empty())
        });
        let v = self.d.status(id);
        job_of(&v, s)
    }

    fn gate(&self, name: &str) -> PathBuf {
        self.gates.join(name)
    }

    fn open(&self, name: &str) {
        std::fs::write(self.gate(name), b"").expect("open the gate");
    }
}

fn fastrand_name() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string()
}

fn job_of(status: &Value, s: &str) -> String {
    let a = attempts(step(status, s));
    let last = a
        .last()
        .unwrap_or_else(|| panic!("no attempt of {s}: {status}"));
    last["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in {last}"))
        .to_string()
}

fn one_step(command: &str, extra: &str) -> String {
    format!(
        "name = \"slurm\"\n[[steps]]\nid = \"job\"\nexecutor = \"slurm\"\ncommand = [\"sh\", \"-c\", {}]\n{extra}\n",
        toml_str(command)
    )
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a JSON string is a TOML basic string")
}

fn attempt(status: &Value, s: &str) -> Value {
    attempts(step(status, s))
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no attempt of {s}: {status}"))
}

#[test]
fn a_job_that_succeeds_is_logged_parsed_and_shows_its_job_id() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    let t = Instant::now();
    let cmd = format!(
        "echo hello from $SLURM_JOB_ID; {}; echo to-stderr >&2; echo \"id=$ORCH_STEP_ID\"",
        progress(50, "half")
    );
    let id = s.submit(&one_step(&cmd, ""));
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    let took = t.elapsed();
    assert_eq!(v["state"], "succeeded", "{v}\n{}", s.d.log_text());
    let a = attempt(&v, "job");
    assert_eq!(a["outcome"], "success", "{a}");
    assert!(a["pid"].is_null(), "a Slurm job has no local pid: {a}");
    let job = job_of(&v, "job");
    assert!(job.parse::<u64>().is_ok(), "job id `{job}`");
    assert_eq!(step(&v, "job")["progress"]["percent"], 50.0, "{v}");
    let logs = String::from_utf8_lossy(&s.d.logs(&[&id])).into_owned();
    assert!(logs.contains(&format!("hello from {job}")), "{logs}");
    assert!(logs.contains("to-stderr"), "{logs}");
    assert!(logs.contains("id=job"), "{logs}");
    // The job's files on shared storage are gone once its output is in the log.
    let left: Vec<_> = std::fs::read_dir(s.d.dir().join("shared"))
        .expect("read the output dir")
        .collect();
    assert!(left.is_empty(), "left in the output dir: {left:?}");
    // daemon status shows the executors and the cluster's health.
    let st = s.d.ctl(&["daemon", "status"]);
    let text = stdout(&st);
    assert!(text.contains("slurm ok (sinfo:"), "{}", describe(&st));
    crate::support::announce(&format!("slurm: success job took {took:?}"));
}

#[test]
fn exit_code_3_is_an_exit_failure() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    let id = s.submit(&one_step(
        "echo failing; exit 3",
        "retry = { max_attempts = 1 }",
    ));
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    assert_eq!(v["state"], "failed", "{v}");
    let a = attempt(&v, "job");
    assert_eq!(a["outcome"], "exit_failure", "{a}");
    assert_eq!(a["exit_code"], 3, "{a}");
}

#[test]
fn a_500m_hog_under_100m_is_a_memory_limit() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    let hog = "python3 -c 'import time; b = bytearray(500 << 20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(30)'";
    let id = s.submit(&one_step(
        hog,
        "limits = { memory = \"100M\" }\nretry = { max_attempts = 1 }",
    ));
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    let a = attempt(&v, "job");
    assert_eq!(a["outcome"], "memory_limit", "{a}\n{}", s.d.log_text());
    assert_eq!(a["signal"], 9, "{a}");
}

#[test]
fn cancel_scancels_the_job() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    let id = s.submit(&one_step("echo started; sleep 600", ""));
    let job = s.wait_job(&id, "job");
    s.d.ctl_exits(&["cancel", &id], 0, "cancel");
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    assert_eq!(v["state"], "cancelled", "{v}");
    assert_eq!(attempt(&v, "job")["outcome"], "cancelled", "{v}");
    // Nothing of it is left in the queue.
    let out = s.slurm("squeue", &["-h", "-j", &job, "-o", "%i %T"]);
    let queued = stdout(&out);
    assert!(queued.trim().is_empty(), "job {job} still queued: {queued}");
    assert_eq!(s.job_state(&job), "CANCELLED");
}

#[test]
fn pause_suspends_and_resume_resumes_the_job() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    let gate = s.gate("go");
    let cmd = format!(
        "echo waiting; while [ ! -e {} ]; do sleep 0.1; done; echo done",
        gate.display()
    );
    let id = s.submit(&one_step(&cmd, ""));
    let job = s.wait_job(&id, "job");
    poll_until("the job runs", JOB_DEADLINE, || {
        (s.job_state(&job) == "RUNNING").then_some(())
    });
    s.d.ctl_exits(&["pause", &id], 0, "pause");
    poll_until("SUSPENDED", JOB_DEADLINE, || {
        (s.job_state(&job) == "SUSPENDED").then_some(())
    });
    s.d.ctl_exits(&["resume", &id], 0, "resume");
    poll_until("RUNNING again", JOB_DEADLINE, || {
        (s.job_state(&job) == "RUNNING").then_some(())
    });
    s.open("go");
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(attempts(step(&v, "job")).len(), 1, "{v}");
}

#[test]
fn kill_9_of_orchd_reattaches_to_the_same_job() {
    let _shared = CLUSTER.read();
    let Some(mut s) = slurm_daemon() else { return };
    let gate = s.gate("go");
    let cmd = format!(
        "echo before; while [ ! -e {} ]; do sleep 0.1; done; echo after",
        gate.display()
    );
    let id = s.submit(&one_step(&cmd, ""));
    let job = s.wait_job(&id, "job");
    // Its first output is in the log before the crash.
    poll_until("`before` in the log", JOB_DEADLINE, || {
        String::from_utf8_lossy(&s.d.logs(&[&id]))
            .contains("before")
            .then_some(())
    });
    s.d.kill9();
    // The job keeps running while orchd is down, and ends while it is.
    assert_eq!(s.job_state(&job), "RUNNING");
    s.open("go");
    poll_until("the job ends", JOB_DEADLINE, || {
        (s.job_state(&job) == "COMPLETED").then_some(())
    });
    s.d.launch();
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", s.d.log_text());
    let a = attempts(step(&v, "job"));
    assert_eq!(a.len(), 1, "the same attempt, re-attached: {v}");
    assert_eq!(a[0]["job_id"], job.as_str(), "{v}");
    assert_eq!(a[0]["outcome"], "success", "{v}");
    // The output goes on where it stopped: each line once.
    let logs = String::from_utf8_lossy(&s.d.logs(&[&id])).into_owned();
    assert_eq!(logs.matches("before").count(), 1, "{logs}");
    assert_eq!(logs.matches("after").count(), 1, "{logs}");
}

#[test]
fn a_restart_of_slurmctld_during_a_job_is_survived() {
    // Alone on the cluster: other tests' sbatch would fail while the controller is down.
    let _alone = CLUSTER.write();
    let Some(s) = slurm_daemon() else { return };
    let gate = s.gate("go");
    let cmd = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; echo survived",
        gate.display()
    );
    let id = s.submit(&one_step(&cmd, ""));
    let job = s.wait_job(&id, "job");
    poll_until("the job runs", JOB_DEADLINE, || {
        (s.job_state(&job) == "RUNNING").then_some(())
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
    let out = Command::new(&script)
        .arg("restart-ctld")
        .env(
            "ORCH_SLURM_DIR",
            s.conf.parent().map(Path::to_path_buf).unwrap_or_default(),
        )
        .output()
        .expect("run cluster.sh restart-ctld");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(s.job_state(&job), "RUNNING");
    s.open("go");
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", s.d.log_text());
    let logs = String::from_utf8_lossy(&s.d.logs(&[&id])).into_owned();
    assert!(logs.contains("survived"), "{logs}");
}

#[test]
fn one_dag_mixes_local_and_slurm_steps() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    let out = s.d.dir().join("handoff");
    let plan = format!(
        r#"name = "mixed"
[[steps]]
id = "prepare"
command = ["sh", "-c", {prep}]
[[steps]]
id = "compute"
executor = "slurm"
needs = ["prepare"]
command = ["sh", "-c", {compute}]
[[steps]]
id = "report"
needs = ["compute"]
command = ["sh", "-c", {report}]
"#,
        prep = toml_str(&format!("echo 20 > {}", out.display())),
        compute = toml_str(&format!(
            "echo $(( $(cat {0}) + 1 )) > {0}.2",
            out.display()
        )),
        report = toml_str(&format!("cat {}.2", out.display())),
    );
    let id = s.submit(&plan);
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", s.d.log_text());
    for local in ["prepare", "report"] {
        let a = attempt(&v, local);
        assert!(a["pid"].as_u64().is_some(), "{local} ran here: {a}");
        assert!(a["job_id"].is_null(), "{local} is no job: {a}");
    }
    let c = attempt(&v, "compute");
    assert!(c["pid"].is_null() && c["job_id"].is_string(), "{c}");
    let logs = String::from_utf8_lossy(&s.d.logs(&[&id, "report"])).into_owned();
    assert!(logs.contains("21"), "{logs}");
}

#[test]
fn a_job_sbatch_refuses_is_a_spawn_error_with_its_message() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon_with("partition = \"no-such-partition\"") else {
        return;
    };
    let id = s.submit(&one_step("echo never", ""));
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    let a = attempt(&v, "job");
    assert_eq!(a["outcome"], "spawn_error", "{a}");
    let message = a["message"].as_str().unwrap_or("");
    assert!(
        message.contains("sbatch refused the job") && message.contains("invalid partition"),
        "{a}"
    );
    assert!(a["job_id"].is_null(), "{a}");
}

#[test]
fn a_sub_minute_timeout_is_enforced_by_orch_with_scancel() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    let id = s.submit(&one_step(
        "echo started; sleep 600",
        "timeout = \"2s\"\nretry = { max_attempts = 1 }",
    ));
    let job = s.wait_job(&id, "job");
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    let a = attempt(&v, "job");
    assert_eq!(a["outcome"], "timeout", "{a}");
    assert!(
        a["message"]
            .as_str()
            .unwrap_or("")
            .contains("timed out after 2s"),
        "{a}"
    );
    assert_eq!(s.job_state(&job), "CANCELLED");
}

#[test]
fn a_job_cancelled_outside_orch_is_signaled() {
    let _shared = CLUSTER.read();
    let Some(s) = slurm_daemon() else { return };
    // `signaled` is retried by default: one attempt only.
    let id = s.submit(&one_step(
        "echo started; sleep 600",
        "retry = { max_attempts = 1 }",
    ));
    let job = s.wait_job(&id, "job");
    let out = s.slurm("scancel", &[&job]);
    assert!(out.status.success(), "{}", describe(&out));
    let v = s.d.wait_ended(&id, JOB_DEADLINE);
    let a = attempt(&v, "job");
    assert_eq!(a["outcome"], "signaled", "{a}");
    assert!(
        a["message"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled outside orch"),
        "{a}"
    );
}

#[test]
fn a_slurm_step_without_executors_slurm_is_refused_naming_the_key() {
    // No cluster needed: the daemon has no [executors.slurm].
    let d = TestDaemon::start();
    let plan = d.write_file(
        "plan.toml",
        "[[steps]]\nid = \"a\"\nexecutor = \"slurm\"\ncommand = [\"true\"]\n",
    );
    let out = d.ctl(&["submit", &plan.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("steps[a].executor") && err.contains("[executors.slurm]"),
        "{err}"
    );
    let plan = d.write_file(
        "plan2.toml",
        "[defaults]\nexecutor = \"k8s\"\n[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n",
    );
    let out = d.ctl(&["submit", &plan.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("defaults.executor") && err.contains("unknown executor `k8s`"),
        "{err}"
    );
    assert!(d.list(&[]).is_empty(), "nothing stored");
}

#[test]
fn the_job_runs_as_the_user_who_submitted_it_never_as_root() {
    let _shared = CLUSTER.read();
    let Some(s) = shared_slurm_daemon() else {
        return;
    };
    let u = crate::support::TestUser::create(true);
    let plan = s.d.write_file(
        "user-plan.toml",
        &one_step(
            "echo uid=$(id -u) user=$USER",
            "retry = { max_attempts = 1 }",
        ),
    );
    std::fs::set_permissions(&plan, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = u.orchctl(&s.d, &["submit", "--wait", &plan.display().to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = crate::support::first_line(&out);
    let v = s.d.status(&id);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", s.d.log_text());
    let job = job_of(&v, "job");
    let logs = String::from_utf8_lossy(&s.d.logs(&[&id])).into_owned();
    assert!(
        logs.contains(&format!("uid={} user={}", u.uid, u.name)),
        "{logs}"
    );
    // Slurm agrees: the job is the user's.
    let show = s.slurm("scontrol", &["show", "job", "-o", &job]);
    assert!(
        stdout(&show).contains(&format!("UserId={}({})", u.name, u.uid)),
        "{}",
        describe(&show)
    );
}

#[test]
fn without_its_commands_slurm_is_unhealthy_and_attempts_are_spawn_errors() {
    // No cluster needed: the commands are missing.
    let mut d = TestDaemon::prepare_with_config("", &[]);
    let shared = d.dir().join("shared");
    std::fs::create_dir(&shared).expect("create the shared output dir");
    d.write_file(
        "orchd.toml",
        &format!(
            "[executors.slurm]\noutput_dir = \"{}\"\nsbatch = \"/nonexistent/sbatch\"\nsinfo = \"/nonexistent/sinfo\"\n",
            shared.display()
        ),
    );
    d.launch();
    let st = d.ctl(&["daemon", "status"]);
    let text = stdout(&st);
    assert!(
        text.contains("local ok; slurm UNHEALTHY (cannot run `/nonexistent/sinfo`"),
        "{}",
        describe(&st)
    );
    let v = d.ctl_json(&["daemon", "status"]);
    assert_eq!(v["executors"][1]["name"], "slurm", "{v}");
    assert_eq!(v["executors"][1]["healthy"], false, "{v}");
    let plan = d.write_file(
        "plan.toml",
        "[[steps]]\nid = \"a\"\nexecutor = \"slurm\"\ncommand = [\"true\"]\nretry = { max_attempts = 1 }\n",
    );
    let id = d.submit(&[&plan.display().to_string()], 0);
    let v = d.wait_ended(&id, JOB_DEADLINE);
    let a = attempt(&v, "a");
    assert_eq!(a["outcome"], "spawn_error", "{a}");
    assert!(
        a["message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot run `/nonexistent/sbatch`"),
        "{a}"
    );
}
