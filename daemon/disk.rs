//! The state directory's disk: its free space against `[store] min_free` (the reserve
//! below which new work is refused), and the words that name it in a refusal. Shared by
//! the engine (submits, starting attempts, the store's health) and the API (status).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use orch_proto::units::HumanBytes;

use crate::sys::{self, Space};

/// The filesystem holding the state directory.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    min_free: AtomicU64,
    /// Why the store cannot write (set while it is degraded), for `DaemonStatus`.
    store_problem: Mutex<Option<String>>,
}

impl Disk {
    pub fn new(dir: &Path, min_free: u64) -> Disk {
        Disk {
            dir: dir.to_path_buf(),
            min_free: AtomicU64::new(min_free),
            store_problem: Mutex::new(None),
        }
    }

    /// The reserve, `[store] min_free` (a reload sets a new one).
    pub fn min_free(&self) -> u64 {
        self.min_free.load(Ordering::Relaxed)
    }

    pub fn set_min_free(&self, n: u64) {
        self.min_free.store(n, Ordering::Relaxed);
    }

    /// Free and total bytes now.
    pub fn space(&self) -> Result<Space, sys::SysError> {
        sys::fs_space(&self.dir)
    }

    /// Why new work must wait (the refusal's message), or `None` when the disk has the
    /// reserve free. A disk that cannot be measured does not block work.
    pub fn short(&self) -> Option<String> {
        let space = match self.space() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the state directory's free space");
                return None;
            }
        };
        refusal(&self.dir, space, self.min_free())
    }

    pub fn set_store_problem(&self, problem: Option<String>) {
        *self.store_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Why the store cannot write now, if it cannot.
    pub fn store_problem(&self) -> Option<String> {
        self.store_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The words naming the disk: the state directory and the filesystem it is on.
    pub fn name(&self) -> String {
        describe(&self.dir)
    }
}

/// The state directory and the filesystem holding it (mount point and source), when
/// /proc says.
fn describe(dir: &Path) -> String {
    match mount_of(dir) {
        Some((point, source)) => format!(
            "the filesystem mounted at {} ({source}) holding the state directory {}",
            point.display(),
            dir.display()
        ),
        None => format!(
            "the filesystem holding the state directory {}",
            dir.display()
        ),
    }
}

/// The refusal for `space` under reserve `min_free`, or `None` when there is room.
pub fn refusal(dir: &Path, space: Space, min_free: u64) -> Option<String> {
    if space.free >= min_free {
        return None;
    }
    Some(format!(
        "not enough free space for new work: {} has {} free ({} bytes) and orchd keeps at least \
         {} free ([store] min_free); free {} more (e.g. remove old objectives or agent logs) \
         and submit again",
        describe(dir),
        HumanBytes(space.free),
        space.free,
        HumanBytes(min_free),
        HumanBytes(min_free - space.free),
    ))
}

/// The mount point holding `path` and its source, from /proc/self/mountinfo (the longest
/// mount point that is a prefix of the canonical path).
fn mount_of(path: &Path) -> Option<(PathBuf, String)> {
    let real = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(PathBuf, String)> = None;
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let point = PathBuf::from(unescape(point));
        let fstype = fields.get(dash + 1).copied().unwrap_or("");
        let source = fields.get(dash + 2).copied().unwrap_or("");
        if real.starts_with(&point)
            && best
                .as_ref()
                .is_none_or(|(b, _)| point.as_os_str().len() >= b.as_os_str().len())
        {
            best = Some((point, format!("{fstype} {}", unescape(source))));
        }
    }
    best
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_the_directory_and_the_space_needed() {
        let dir = Path::new("/nonexistent/state");
        let space = Space {
            free: 1 << 20,
            total: 16 << 20,
        };
        assert_eq!(refusal(dir, space, 1 << 20), None);
        let msg = refusal(dir, space, 4 << 20).expect("refused");
        assert!(msg.contains("/nonexistent/state"), "{msg}");
        assert!(msg.contains("1.0M free"), "{msg}");
        assert!(msg.contains("at least 4.0M"), "{msg}");
        assert!(msg.contains("free 3.0M more"), "{msg}");
        assert!(msg.contains("[store] min_free"), "{msg}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn the_root_filesystem_is_found() {
        let (point, _) = mount_of(Path::new("/")).expect("/ is mounted");
        assert_eq!(point, PathBuf::from("/"));
    }
}
