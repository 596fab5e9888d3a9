//! The `sys` seam: every call into the operating system the daemon makes goes through
//! here, as small audited functions. `process`: signals, identity, pidfd and wait4, /proc;
//! `child`: the pre-exec setup of an agent; `fs`: access, xattrs, ownership, umask, private
//! files and directories, record locks; `watch`: reactor registration and inotify. `Processes` is the seam recovery
//! uses to find and kill leftovers, with `Host` the real implementation. Other modules
//! may name nix types (re-exported here, e.g. `Signal`) but call the OS only through `sys`.
//! `limits`: the daemon's own open-files limit.

mod child;
mod fs;
mod host;
mod limits;
mod process;
mod shim;
mod spawn;
mod watch;

use std::io;
use std::path::{Path, PathBuf};

// `child_pre_exec` stays available to an executor that forks itself.
#[allow(unused_imports)]
pub use child::child_pre_exec;
pub use child::{ChildSetup, workdir_error};
pub use fs::{
    Space, can_write, create_private, fs_space, is_disk_full, private_dir, read_xattr,
    restore_inherited_umask, restrict_umask, set_owner, try_lock_record, with_umask,
};
pub use host::host_figures;
pub use limits::{limit_malloc_arenas, raise_open_files, release_free_memory};
pub use nix::sys::signal::Signal;
pub use process::{
    Account, ProcUsage, Reaped, account, current_uid, effective_uid, group_alive, group_id,
    in_attempt_tree, pidfd_open, process_start_ticks, processes_with_env, reap, run_as,
    session_members, signal_group, signal_process, usage_of, user_name, wait_exit,
};
pub use shim::{
    detach_fork, hand_over, receive_attempt, redirect_output, reexec, retire_spare, spare_pair,
    take_shim_listener, take_spare_socket,
};
pub use spawn::{FdSpawn, SpawnSpec, spawn, spawn_with_fds};
pub use watch::{Watch, WatchFlags, readable_fd};

/// A system call that failed, with what it was called on.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{op} {}: {source}", path.display())]
    Path {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{op} pid {pid}: {source}")]
    Pid {
        op: &'static str,
        pid: u32,
        source: io::Error,
    },
    #[error("{op} {name}: {source}")]
    Name {
        op: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Call { op: &'static str, source: io::Error },
}

impl SysError {
    fn path(op: &'static str, path: &Path, source: io::Error) -> SysError {
        SysError::Path {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn pid(op: &'static str, pid: u32, source: io::Error) -> SysError {
        SysError::Pid { op, pid, source }
    }

    fn name(op: &'static str, name: &str, source: io::Error) -> SysError {
        SysError::Name {
            op,
            name: name.to_string(),
            source,
        }
    }

    fn call(op: &'static str, source: io::Error) -> SysError {
        SysError::Call { op, source }
    }

    /// The kind of the underlying OS error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            SysError::Path { source, .. }
            | SysError::Pid { source, .. }
            | SysError::Name { source, .. }
            | SysError::Call { source, .. } => source.kind(),
        }
    }
}

/// For callers that report `io::Error`: keeps the kind, and the message with its context.
impl From<SysError> for io::Error {
    fn from(e: SysError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// What recovery needs to find and kill the leftovers of an attempt: a seam, so the
/// rules of `executor::local::kill_leftover` are tested against a process table in
/// memory while `Host` is the real one.
pub trait Processes: Send + Sync {
    /// The start time of `pid` (clock ticks since boot), if it exists.
    fn start_ticks(&self, pid: u32) -> Option<u64>;
    /// Whether the process group `pgid` still has members.
    fn group_alive(&self, pgid: u32) -> bool;
    /// SIGKILL to the process group `pgid`.
    fn kill_group(&self, pgid: u32);
    /// SIGKILL to `pid`.
    fn kill(&self, pid: u32);
    /// Every process whose environment holds all of `vars`.
    fn with_env(&self, vars: &[(&str, &str)]) -> Vec<u32>;
    fn leaf_exists(&self, leaf: &std::path::Path) -> bool;
    /// Whether a process is still in the cgroup leaf.
    fn leaf_populated(&self, leaf: &std::path::Path) -> bool;
    /// `cgroup.kill` on the leaf.
    fn leaf_kill(&self, leaf: &std::path::Path);
    /// Removes the (empty) leaf.
    fn leaf_remove(&self, leaf: &std::path::Path);
}

/// This machine's processes and cgroups.
pub struct Host;

impl Processes for Host {
    fn start_ticks(&self, pid: u32) -> Option<u64> {
        process_start_ticks(pid)
    }
    fn group_alive(&self, pgid: u32) -> bool {
        group_alive(pgid)
    }
    fn kill_group(&self, pgid: u32) {
        let _ = signal_group(pgid, Signal::SIGKILL);
    }
    fn kill(&self, pid: u32) {
        let _ = signal_process(pid, Signal::SIGKILL);
    }
    fn with_env(&self, vars: &[(&str, &str)]) -> Vec<u32> {
        processes_with_env(vars)
    }
    fn leaf_exists(&self, leaf: &std::path::Path) -> bool {
        leaf.exists()
    }
    fn leaf_populated(&self, leaf: &std::path::Path) -> bool {
        crate::limits::Leaf(leaf.to_path_buf()).populated()
    }
    fn leaf_kill(&self, leaf: &std::path::Path) {
        let _ = crate::limits::Leaf(leaf.to_path_buf()).kill();
    }
    fn leaf_remove(&self, leaf: &std::path::Path) {
        crate::limits::Leaf(leaf.to_path_buf()).remove();
    }
}
