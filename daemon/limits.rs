//! Limits backends. `cgroup-v2`: where the daemon has a writable cgroup v2 subtree, each
//! attempt runs in its own leaf (memory.max with oom.group and no swap, pids.max, cpu.max),
//! is killed with `cgroup.kill`, frozen with `cgroup.freeze`, and measured from its files.
//! `rlimit`: each attempt runs in its own session with setrlimit limits and is signalled by
//! process group. Detection happens once at start; controllers missing from the subtree
//! fall back to rlimits one by one. File writes go through a base path, so the limit logic
//! is tested against a temporary directory as well as the real cgroup file system.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::model::Limits;
use crate::sys::{self, Signal};

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("cgroup-v2 backend requested but unavailable: {0}")]
    Unavailable(String),
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LimitsError + 'a {
    move |source| LimitsError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// One setrlimit to apply in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: libc::__rlimit_resource_t,
    pub soft: u64,
    pub hard: u64,
}

/// The cgroup v2 subtree the daemon manages.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    /// Attempt leaves are created directly under this directory.
    pub base: PathBuf,
    /// Controllers enabled for the leaves (`memory`, `pids`, `cpu`).
    pub controllers: BTreeSet<String>,
    /// The base is a directory the daemon created (removed when empty at exit).
    pub owned_base: bool,
}

/// The backend chosen at start.
#[derive(Debug, Clone)]
pub enum Backend {
    Cgroup(CgroupTree),
    Rlimit,
}

/// The detected backend plus a sentence describing it.
#[derive(Debug, Clone)]
pub struct Limiter {
    pub backend: Backend,
    pub detail: String,
}

/// What one attempt gets: its cgroup (if any) and the rlimits to set in the child.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub cgroup: Option<PathBuf>,
    pub rlimits: Vec<Rlimit>,
    /// The memory limit is enforced by the cgroup (so `memory.events` classifies OOM).
    pub memory_by_cgroup: bool,
}

impl Limiter {
    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Cgroup(_) => "cgroup-v2",
            Backend::Rlimit => "rlimit",
        }
    }

    /// Chooses the backend: `choice` is `auto`, `cgroup-v2` or `rlimit`. `instance` names
    /// this daemon's subtree when it must create one beside other processes.
    pub fn detect(choice: &str, instance: &str) -> Result<Limiter, LimitsError> {
        if choice == "rlimit" {
            return Ok(Limiter {
                backend: Backend::Rlimit,
                detail:
                    "forced by config; own session and process group per attempt, setrlimit limits"
                        .into(),
            });
        }
        match detect_cgroup(instance) {
            Ok(tree) => {
                let ctl: Vec<&str> = tree.controllers.iter().map(String::as_str).collect();
                let detail = format!(
                    "leaves under {} (controllers: {}; {})",
                    tree.base.display(),
                    if ctl.is_empty() {
                        "none".to_string()
                    } else {
                        ctl.join(", ")
                    },
                    if ctl.len() == 3 {
                        "all limits by cgroup".to_string()
                    } else {
                        "missing controllers fall back to rlimits".to_string()
                    }
                );
                Ok(Limiter {
                    backend: Backend::Cgroup(tree),
                    detail,
                })
            }
            Err(why) if choice == "auto" => Ok(Limiter {
                backend: Backend::Rlimit,
                detail: format!(
                    "no usable cgroup v2 subtree ({why}); own session and process group per attempt, setrlimit limits"
                ),
            }),
            Err(why) => Err(LimitsError::Unavailable(why)),
        }
    }

    /// Creates the attempt's cgroup leaf (cgroup backend) and decides its limits.
    /// `uid` is the user the attempt runs as (RLIMIT_NPROC counts that user's processes).
    pub fn prepare(&self, leaf: &str, limits: &Limits, uid: u32) -> Result<Prepared, LimitsError> {
        match &self.backend {
            Backend::Rlimit => Ok(Prepared {
                cgroup: None,
                rlimits: rlimits_for(limits, &BTreeSet::new(), uid),
                memory_by_cgroup: false,
            }),
            Backend::Cgroup(tree) => tree.prepare(leaf, limits, uid),
        }
    }

    /// Where the leaf `name` is (or would be), with the cgroup backend.
    pub fn leaf_path(&self, name: &str) -> Option<PathBuf> {
        match &self.backend {
            Backend::Cgroup(tree) => Some(tree.base.join(name)),
            Backend::Rlimit => None,
        }
    }

    /// Removes the daemon's own subtree if it created one and it is empty.
    pub fn cleanup(&self) {
        if let Backend::Cgroup(tree) = &self.backend
            && tree.owned_base
        {
            let _ = std::fs::remove_dir(&tree.base);
        }
    }
}

/// The rlimits for `limits`, leaving out what the cgroup controllers enforce.
pub fn rlimits_for(limits: &Limits, by_cgroup: &BTreeSet<String>, uid: u32) -> Vec<Rlimit> {
    let mut out = Vec::new();
    if let Some(m) = limits.memory_bytes
        && !by_cgroup.contains("memory")
    {
        // RLIMIT_DATA (heap and private mappings) rather than RLIMIT_AS: runtimes that
        // reserve large address ranges (Go, the JVM, V8) keep working.
        out.push(Rlimit {
            resource: libc::RLIMIT_DATA,
            soft: m,
            hard: m,
        });
    }
    if let Some(c) = limits.cpu_seconds {
        // SIGXCPU at the limit, SIGKILL a little later if it is ignored.
        out.push(Rlimit {
            resource: libc::RLIMIT_CPU,
            soft: c,
            hard: c.saturating_add(5),
        });
    }
    if let Some(n) = limits.open_files {
        out.push(Rlimit {
            resource: libc::RLIMIT_NOFILE,
            soft: n,
            hard: n,
        });
    }
    if let Some(p) = limits.pids
        && !by_cgroup.contains("pids")
    {
        // RLIMIT_NPROC counts every process of the user, so allow the attempt `p` more
        // than the user runs now. (Root is exempt from it; only pids.max binds root.)
        let current = user_process_count(uid);
        out.push(Rlimit {
            resource: libc::RLIMIT_NPROC,
            soft: p.saturating_add(current),
            hard: p.saturating_add(current),
        });
    }
    out
}

/// Number of processes owned by `uid` (from /proc).
fn user_process_count(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .count() as u64
}

use orch_proto::paths::cgroup2_mount;

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// The cgroup whose `supervisor` leaf `own` is (where orchd moved itself in a delegated
/// cgroup), if it is one.
fn resumed_base(own: &str) -> Option<&str> {
    own.strip_suffix("/supervisor").filter(|p| !p.is_empty())
}

/// Whether systemd delegated the cgroup at `dir` (xattr `trusted.delegate` or `user.delegate` = 1).
fn delegated(dir: &Path) -> bool {
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut buf = [0u8; 8];
        matches!(sys::read_xattr(dir, name, &mut buf), Ok(n) if n > 0 && buf[..n].starts_with(b"1"))
    })
}

fn detect_cgroup(instance: &str) -> Result<CgroupTree, String> {
    let mount = cgroup2_mount().ok_or("no cgroup2 file system mounted")?;
    let mut own = own_cgroup().ok_or("this process has no cgroup v2 path")?;
    let mut own_dir = mount.join(own.trim_start_matches('/'));
    // Re-executed in place (an upgrade): this process already sits in the `supervisor`
    // leaf it made of the delegated cgroup, which stays the base of the attempts.
    if let Some(parent) = resumed_base(&own)
        && !delegated(&own_dir)
        && delegated(&mount.join(parent.trim_start_matches('/')))
    {
        own = parent.to_string();
        own_dir = mount.join(own.trim_start_matches('/'));
    }
    if !sys::can_write(&own_dir) {
        return Err(format!(
            "{} is not writable (not delegated)",
            own_dir.display()
        ));
    }
    // Root may write any cgroup; only one systemd delegated to us is ours to manage
    // (systemd marks it with the `trusted.delegate` / `user.delegate` xattr).
    if own != "/" && !delegated(&own_dir) {
        return Err(format!(
            "{} is not delegated to orchd (run it as a systemd service with Delegate=yes)",
            own_dir.display()
        ));
    }
    let (base, owned_base) = if own == "/" {
        // The root cgroup (containers, plain machines): the daemon stays where it is and
        // keeps its attempts in a subtree of its own.
        let base = own_dir.join(format!("orch-{instance}"));
        std::fs::create_dir_all(&base)
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        (base, true)
    } else {
        // A delegated cgroup (systemd Delegate=yes): no processes may stay in an inner
        // node, so the daemon moves into a `supervisor` leaf; attempts are its siblings.
        let sup = own_dir.join("supervisor");
        std::fs::create_dir_all(&sup)
            .map_err(|e| format!("cannot create {}: {e}", sup.display()))?;
        let procs = std::fs::read_to_string(own_dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            // Moving the whole process moves every thread of it.
            std::fs::write(sup.join("cgroup.procs"), pid)
                .map_err(|e| format!("cannot move pid {pid} into {}: {e}", sup.display()))?;
        }
        (own_dir.clone(), false)
    };
    let probe = base.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe)
        .map_err(|e| format!("cannot create a leaf in {}: {e}", base.display()))?;
    let has_kill = probe.join("cgroup.kill").exists();
    let has_freeze = probe.join("cgroup.freeze").exists();
    let _ = std::fs::remove_dir(&probe);
    if !has_kill || !has_freeze {
        if owned_base {
            let _ = std::fs::remove_dir(&base);
        }
        return Err("cgroup.kill or cgroup.freeze is missing (kernel older than 5.14)".into());
    }
    let available = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    for c in ["memory", "pids", "cpu"] {
        if available.split_whitespace().any(|a| a == c) {
            // One at a time: a controller that cannot be enabled just falls back.
            let _ = std::fs::write(base.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    let enabled = std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
    let controllers = enabled
        .split_whitespace()
        .filter(|c| matches!(*c, "memory" | "pids" | "cpu"))
        .map(String::from)
        .collect();
    Ok(CgroupTree {
        base,
        controllers,
        owned_base,
    })
}

impl CgroupTree {
    /// Creates the leaf `name` under the base and writes its limits.
    pub fn prepare(&self, name: &str, limits: &Limits, uid: u32) -> Result<Prepared, LimitsError> {
        let leaf = self.base.join(name);
        std::fs::create_dir_all(&leaf).map_err(io(&leaf, "create"))?;
        let write = |file: &str, value: String| -> Result<(), LimitsError> {
            let p = leaf.join(file);
            std::fs::write(&p, value).map_err(|source| LimitsError::Io {
                path: p,
                op: "write",
                source,
            })
        };
        let mut memory_by_cgroup = false;
        if self.controllers.contains("memory") {
            if let Some(m) = limits.memory_bytes {
                write("memory.max", m.to_string())?;
                // Best effort: absent without swap accounting.
                let _ = write("memory.swap.max", "0".into());
                memory_by_cgroup = true;
            }
            // The whole tree dies together on OOM, so the outcome is unambiguous.
            let _ = write("memory.oom.group", "1".into());
        }
        if self.controllers.contains("pids")
            && let Some(p) = limits.pids
        {
            write("pids.max", p.to_string())?;
        }
        if self.controllers.contains("cpu")
            && let Some(q) = limits.cpu_quota
        {
            let period = 100_000u64;
            // Bounded like a submitted plan's, whatever was stored or configured (the
            // float-to-integer cast saturates; NaN becomes 0 and then the minimum).
            let cores = q.min(orch_proto::validate::MAX_CPU_QUOTA);
            let quota = ((cores * period as f64) as u64).max(1000);
            write("cpu.max", format!("{quota} {period}"))?;
        }
        Ok(Prepared {
            cgroup: Some(leaf),
            rlimits: rlimits_for(limits, &self.controllers, uid),
            memory_by_cgroup,
        })
    }
}

/// Operations on one attempt's cgroup leaf.
#[derive(Debug, Clone)]
pub struct Leaf(pub PathBuf);

impl Leaf {
    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(file)).ok()
    }

    fn keyed(&self, file: &str, key: &str) -> Option<u64> {
        self.read(file)?
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// SIGKILL to every process of the leaf, escaped sessions included.
    pub fn kill(&self) -> std::io::Result<()> {
        match std::fs::write(self.0.join("cgroup.kill"), "1") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Sends `sig` to every process in the leaf.
    pub fn signal(&self, sig: Signal) {
        for pid in self.pids() {
            let _ = sys::signal_process(pid, sig);
        }
    }

    pub fn freeze(&self, frozen: bool) -> std::io::Result<()> {
        std::fs::write(self.0.join("cgroup.freeze"), if frozen { "1" } else { "0" })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.read("cgroup.procs")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Whether any process is still in the leaf (`cgroup.events` `populated`).
    pub fn populated(&self) -> bool {
        match self.keyed("cgroup.events", "populated") {
            Some(v) => v != 0,
            None => self.0.exists() && !self.pids().is_empty(),
        }
    }

    /// OOM kills inside the leaf (`memory.events` `oom_kill`).
    pub fn oom_kills(&self) -> u64 {
        self.keyed("memory.events", "oom_kill").unwrap_or(0)
    }

    /// CPU time used by the leaf in microseconds (`cpu.stat` `usage_usec`).
    pub fn cpu_usec(&self) -> Option<u64> {
        self.keyed("cpu.stat", "usage_usec")
    }

    /// Peak memory of the leaf (`memory.peak`, else `memory.current`), when accounted.
    pub fn memory_peak(&self) -> Option<u64> {
        self.read("memory.peak")
            .or_else(|| self.read("memory.current"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Removes the (empty) leaf.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, controllers: &[&str]) -> CgroupTree {
        CgroupTree {
            base: dir.to_path_buf(),
            controllers: controllers.iter().map(|s| s.to_string()).collect(),
            owned_base: false,
        }
    }

    #[test]
    fn a_re_executed_orchd_finds_the_base_above_its_supervisor_leaf() {
        assert_eq!(
            resumed_base("/system.slice/orchd.service/supervisor"),
            Some("/system.slice/orchd.service")
        );
        assert_eq!(resumed_base("/system.slice/orchd.service"), None);
        assert_eq!(resumed_base("/supervisor"), None);
        assert_eq!(resumed_base("/a/not-supervisor"), None);
    }

    #[test]
    fn full_controllers_write_cgroup_files_and_no_memory_rlimit() {
        let dir = tempfile::tempdir().unwrap();
        let t = tree(dir.path(), &["memory", "pids", "cpu"]);
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(20),
            cpu_seconds: Some(3),
            cpu_quota: Some(1.5),
            open_files: Some(100),
        };
        let p = t.prepare("att-x", &limits, 0).unwrap();
        let leaf = dir.path().join("att-x");
        assert_eq!(p.cgroup.as_deref(), Some(leaf.as_path()));
        let read = |f: &str| std::fs::read_to_string(leaf.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("pids.max"), "20");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert!(p.memory_by_cgroup);
        let kinds: Vec<_> = p.rlimits.iter().map(|r| r.resource).collect();
        assert_eq!(kinds, vec![libc::RLIMIT_CPU, libc::RLIMIT_NOFILE]);
    }

    #[test]
    fn missing_controllers_fall_back_to_rlimits() {
        let dir = tempfile::tempdir().unwrap();
        let t = tree(dir.path(), &[]);
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(20),
            ..Default::default()
        };
        let p = t.prepare("att-y", &limits, 0).unwrap();
        assert!(!dir.path().join("att-y/memory.max").exists());
        assert!(!p.memory_by_cgroup);
        let data = p
            .rlimits
            .iter()
            .find(|r| r.resource == libc::RLIMIT_DATA)
            .unwrap();
        assert_eq!(data.soft, 64 << 20);
        assert!(
            p.rlimits
                .iter()
                .any(|r| r.resource == libc::RLIMIT_NPROC && r.soft >= 20)
        );
    }

    #[test]
    fn leaf_reads_keyed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        let l = Leaf(dir.path().to_path_buf());
        assert!(l.populated());
        assert_eq!(l.oom_kills(), 1);
        assert_eq!(l.cpu_usec(), Some(1500));
    }

    #[test]
    fn forced_rlimit() {
        let l = Limiter::detect("rlimit", "t").unwrap();
        assert_eq!(l.name(), "rlimit");
    }
}
