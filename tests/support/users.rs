//! Throwaway users for the multi-user tests (a root `orchd` shared by several users, as
//! on a workstation with group `orch`): created with `useradd`, removed on drop, each with
//! a unique name, so tests stay parallel-safe. Needs root: callers check `require_root`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use super::{ORCHCTL, TestDaemon};

/// `useradd`/`groupadd` take a lock on /etc/passwd and fail when another runs: one at a time.
static ACCOUNTS: Mutex<()> = Mutex::new(());

fn admin(program: &str, args: &[&str]) -> Result<(), String> {
    let _held = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The gid of group `name`, if it exists.
pub fn group_gid(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Makes sure group `orch` exists (what the packages' sysusers entry does); returns its gid.
pub fn orch_group() -> u32 {
    if let Some(gid) = group_gid("orch") {
        return gid;
    }
    // Another test may create it at the same moment: that is fine.
    let _ = admin("groupadd", &["--system", "orch"]);
    group_gid("orch").unwrap_or_else(|| panic!("group orch could not be created"))
}

/// A user that exists for the length of a test, with a home directory of its own.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    /// Creates a fresh user; `in_orch` also makes it a member of group `orch`.
    pub fn create(in_orch: bool) -> TestUser {
        let name = format!("orcht{}", fastrand::u32(..) % 100_000_000);
        let mut args = vec!["--create-home", "--shell", "/bin/sh", "--user-group"];
        let orch = in_orch.then(|| {
            orch_group();
            "orch"
        });
        if let Some(g) = orch {
            args.extend(["--groups", g]);
        }
        args.push(&name);
        admin("useradd", &args).unwrap_or_else(|e| panic!("cannot create a test user: {e}"));
        let user = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {name} was created but cannot be read"));
        TestUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            name,
        }
    }

    /// The user's groups, primary first (as the daemon's `run_as` computes them).
    pub fn groups(&self) -> Vec<u32> {
        let name = std::ffi::CString::new(self.name.clone()).unwrap_or_default();
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(self.gid))
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![self.gid])
    }

    /// `program ARGS...` as this user (uid, gid and its groups, switched by util-linux's
    /// `setpriv`), in its home, with a clean environment (`HOME`, `USER`, `PATH`); nothing
    /// is run yet: add arguments with `.arg`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .current_dir(&self.home)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("USER", &self.name);
        c
    }

    /// `orchctl --socket SOCKET ARGS...` as this user.
    pub fn orchctl_at(&self, socket: &Path, args: &[&str]) -> Output {
        self.command(ORCHCTL)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run orchctl as {}: {e}", self.name))
    }

    /// `orchctl ARGS...` against `d`, as this user.
    pub fn orchctl(&self, d: &TestDaemon, args: &[&str]) -> Output {
        self.orchctl_at(d.socket(), args)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Processes of the user (agents a failed test left) would keep userdel from working.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.uid.to_string()])
            .status();
        if let Err(e) = admin("userdel", &["--remove", "--force", &self.name]) {
            super::announce(&format!("warning: {e}"));
        }
    }
}
