//! What is handed to `sbatch`: its arguments and the batch script. Pure (tested without
//! a cluster).

use std::path::{Path, PathBuf};

use crate::config::SlurmConfig;
use crate::runner::RunSpec;

/// Files of one job in its output directory (on shared storage).
pub const STDOUT: &str = "stdout";
pub const STDERR: &str = "stderr";
pub const STDIN: &str = "stdin";
pub const SCRIPT: &str = "job.sh";
/// Written by the batch script when the command ends (its exit status): orchd sees it
/// by inotify and asks Slurm for the job's state at once.
pub const EXIT: &str = "exit";
pub const CHECKPOINT: &str = "checkpoint.json";

/// The job's name: objective, step and attempt (unique, so a job can be found by it
/// after a crash between its submission and recording its id).
pub fn job_name(spec: &RunSpec) -> String {
    format!(
        "orch.{}.{}.{}",
        spec.key.objective_id, spec.step_id, spec.key.number
    )
}

/// The job's own directory under `output_dir`.
pub fn job_dir(output_dir: &Path, objective_id: &str, step_index: u32, number: u32) -> PathBuf {
    output_dir.join(format!("{objective_id}-{step_index}-{number}"))
}

/// Slurm counts whole minutes: the limit is the timeout rounded up (orch stops the job
/// itself at the exact time).
pub fn time_minutes(timeout_ms: u64) -> u64 {
    timeout_ms.div_ceil(60_000).max(1)
}

/// `sbatch`'s arguments for the attempt: the configured ones first, then orch's.
pub fn sbatch_args(cfg: &SlurmConfig, spec: &RunSpec, dir: &Path) -> Vec<String> {
    let mut a = cfg.sbatch_args.clone();
    a.push("--parsable".into());
    a.push(format!("--job-name={}", job_name(spec)));
    a.push(format!("--chdir={}", spec.workdir.display()));
    // sbatch runs with exactly the step's environment (ORCH_* included) and passes it on.
    a.push("--export=ALL".into());
    a.push(format!("--output={}", dir.join(STDOUT).display()));
    a.push(format!("--error={}", dir.join(STDERR).display()));
    a.push("--open-mode=append".into());
    // orch decides retries: a node failure ends the job (interrupted), Slurm does not
    // requeue it behind orch's back.
    a.push("--no-requeue".into());
    if let Some(p) = &cfg.partition {
        a.push(format!("--partition={p}"));
    }
    if let Some(acc) = &cfg.account {
        a.push(format!("--account={acc}"));
    }
    if let Some(q) = &cfg.qos {
        a.push(format!("--qos={q}"));
    }
    if let Some(m) = spec.limits.memory_bytes {
        a.push(format!("--mem={}M", m.div_ceil(1 << 20).max(1)));
    }
    if let Some(q) = spec.limits.cpu_quota {
        a.push(format!("--cpus-per-task={}", q.ceil().max(1.0) as u64));
    }
    if let Some(t) = spec.timeout {
        a.push(format!(
            "--time={}",
            time_minutes(t.as_millis().try_into().unwrap_or(u64::MAX))
        ));
    }
    a.push(dir.join(SCRIPT).display().to_string());
    a
}

/// The batch script: runs the argv with its stdin, records the exit status in `EXIT`,
/// and ends as the command did (a command killed by a signal re-raises it, so Slurm
/// records the signal, not 128 + it).
pub fn batch_script(spec: &RunSpec, dir: &Path) -> Result<String, String> {
    let q = |s: &str| {
        shlex::try_quote(s).map(|c| c.into_owned()).map_err(|_| {
            format!(
                "cannot pass `{}` to a shell: it holds a NUL byte",
                s.escape_debug()
            )
        })
    };
    let argv = spec
        .argv
        .iter()
        .map(|a| q(a))
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    let stdin = if spec.stdin.is_some() {
        q(&dir.join(STDIN).display().to_string())?
    } else {
        "/dev/null".to_string()
    };
    let exit = q(&dir.join(EXIT).display().to_string())?;
    let exit_tmp = q(&dir.join(format!("{EXIT}.tmp")).display().to_string())?;
    Ok(format!(
        "#!/bin/sh\n\
         # orch: objective {obj}, step {step}, attempt {n}\n\
         {argv} <{stdin}\n\
         rc=$?\n\
         printf '%s\\n' \"$rc\" >{exit_tmp} && mv -f {exit_tmp} {exit}\n\
         if [ \"$rc\" -gt 128 ] && [ \"$rc\" -lt 160 ]; then trap - $((rc - 128)); kill -$((rc - 128)) $$; fi\n\
         exit \"$rc\"\n",
        obj = spec.key.objective_id,
        step = spec.step_id,
        n = spec.key.number,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::AttemptKey;
    use std::time::Duration;

    fn spec() -> RunSpec {
        RunSpec {
            key: AttemptKey {
                objective_id: "01OBJ".into(),
                step_index: 2,
                number: 3,
            },
            argv: vec!["sh".into(), "-c".into(), "echo 'it''s' $HOME".into()],
            workdir: "/shared/work".into(),
            env: vec![],
            stdin: None,
            log: "/x.log".into(),
            log_max_bytes: 1 << 20,
            checkpoint: None,
            prompt_file: None,
            grace: Duration::from_secs(1),
            timeout: Some(Duration::from_secs(61)),
            idle_timeout: None,
            limits: crate::model::Limits {
                memory_bytes: Some(100 << 20),
                cpu_quota: Some(1.5),
                ..Default::default()
            },
            prepared: Default::default(),
            usage_format: Default::default(),
            prices: Default::default(),
            session_usage: None,
            threads: None,
            mcp_config: None,
            run_as: None,
            executor: "slurm".into(),
            step_id: "build".into(),
            protocol_journal: None,
            plan_file: None,
            workspace: None,
        }
    }

    #[test]
    fn sbatch_gets_name_dir_env_limits_and_time() {
        let cfg = SlurmConfig {
            partition: Some("gpu".into()),
            qos: Some("long".into()),
            sbatch_args: vec!["--gres=gpu:1".into()],
            ..Default::default()
        };
        let a = sbatch_args(&cfg, &spec(), Path::new("/out/j"));
        assert_eq!(a[0], "--gres=gpu:1");
        for want in [
            "--parsable",
            "--job-name=orch.01OBJ.build.3",
            "--chdir=/shared/work",
            "--export=ALL",
            "--output=/out/j/stdout",
            "--error=/out/j/stderr",
            "--no-requeue",
            "--partition=gpu",
            "--qos=long",
            "--mem=100M",
            "--cpus-per-task=2",
            "--time=2",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert!(!a.iter().any(|x| x.starts_with("--account")));
        assert_eq!(a.last().map(String::as_str), Some("/out/j/job.sh"));
    }

    #[test]
    fn minutes_round_up() {
        assert_eq!(time_minutes(1), 1);
        assert_eq!(time_minutes(60_000), 1);
        assert_eq!(time_minutes(60_001), 2);
    }

    #[test]
    fn the_script_quotes_the_argv_and_records_the_exit() {
        let s = batch_script(&spec(), Path::new("/out/j")).expect("script");
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        // The quoting itself is checked by running a script (below).
        assert!(s.contains("\nsh -c ") && s.contains(" </dev/null\n"), "{s}");
        assert!(s.contains("mv -f /out/j/exit.tmp /out/j/exit"), "{s}");
        let mut with_stdin = spec();
        with_stdin.stdin = Some(b"prompt".to_vec());
        let s = batch_script(&with_stdin, Path::new("/out/j")).expect("script");
        assert!(s.contains("</out/j/stdin\n"), "{s}");
        let mut nul = spec();
        nul.argv.push("a\0b".into());
        assert!(batch_script(&nul, Path::new("/o")).is_err());
    }

    #[test]
    fn the_script_runs_under_sh_as_the_argv_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = spec();
        s.argv = vec![
            "sh".into(),
            "-c".into(),
            "printf '%s|' \"$0\" \"$1\"; exit 3".into(),
            "a b".into(),
            "c'd".into(),
        ];
        let text = batch_script(&s, dir.path()).expect("script");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|c'd|");
        assert_eq!(out.status.code(), Some(3));
        let exit = std::fs::read_to_string(dir.path().join(EXIT)).expect("exit file");
        assert_eq!(exit.trim(), "3");
    }
}
