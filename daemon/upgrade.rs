//! `orchctl daemon upgrade` (and SIGUSR2, `systemctl reload`): orchd re-executes the
//! binary at its path in place — same pid, so a service manager sees no restart. The
//! binary is checked before anything is given up: it must run (`--version`) and accept
//! the config with orchd's own arguments (`--print-config`). Then `serve` stops taking
//! requests, the engine commits and flushes without stopping attempts that survive
//! orchd (shims, Slurm jobs), and the process image is replaced; the new orchd's
//! recovery re-attaches to them.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Notify;

/// How long each check of the new binary may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Upgrade {
    /// The binary at orchd's path (as started; a package upgrade replaces the file).
    pub exe: PathBuf,
    /// orchd's arguments (after `argv[0]`), given again.
    pub args: Vec<OsString>,
    requested: Notify,
}

impl Upgrade {
    pub fn new() -> Upgrade {
        let mut argv = std::env::args_os();
        let argv0 = argv.next();
        // `/proc/self/exe` reads `PATH (deleted)` once the file was replaced: the path
        // is what counts.
        let exe = std::env::current_exe()
            .ok()
            .map(|p| {
                let s = p.to_string_lossy();
                match s.strip_suffix(" (deleted)") {
                    Some(kept) => PathBuf::from(kept),
                    None => p,
                }
            })
            .or_else(|| argv0.map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("orchd"));
        Upgrade {
            exe,
            args: argv.collect(),
            requested: Notify::new(),
        }
    }

    /// Runs the new binary's checks; returns its version line, or why it is refused.
    pub async fn check(&self) -> Result<String, String> {
        let run = |args: Vec<OsString>| {
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            async move {
                match tokio::time::timeout(CHECK_TIMEOUT, cmd.output()).await {
                    Ok(Ok(out)) if out.status.success() => {
                        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
                    }
                    Ok(Ok(out)) => Err(format!(
                        "{} ({})",
                        String::from_utf8_lossy(&out.stderr).trim(),
                        out.status
                    )),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
                }
            }
        };
        let version = run(vec!["--version".into()])
            .await
            .map_err(|e| format!("{} does not run: {e}", self.exe.display()))?;
        let mut args = self.args.clone();
        args.push("--print-config".into());
        run(args).await.map_err(|e| {
            format!(
                "{} refuses the config it would start with: {e}",
                self.exe.display()
            )
        })?;
        Ok(version)
    }

    /// Asks `serve` to hand over (after a successful `check`).
    pub fn request(&self) {
        self.requested.notify_one();
    }

    /// Resolves when an upgrade was requested.
    pub async fn requested(&self) {
        self.requested.notified().await
    }

    /// Replaces this process with the binary. Returns only on failure. `listener`: the
    /// socket systemd passed (socket activation), handed to the new image the way systemd
    /// hands it (fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = this pid, which the new image keeps).
    pub fn exec(&self, listener: Option<std::os::fd::RawFd>) -> std::io::Error {
        // The new image records the umask it starts with as the one agents get.
        crate::sys::restore_inherited_umask();
        crate::sys::reexec(&self.exe, &self.args, listener)
    }
}
