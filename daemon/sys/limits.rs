//! The daemon's own resource limits: raising its open-files soft limit (`RLIMIT_NOFILE`)
//! towards the hard limit, so that the connections it is configured to hold fit.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::SysError;

/// The open-files limit of this process after [`raise_open_files`]: `soft` is what it may
/// use now, `hard` the most it could be raised to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to `want` (never above the hard limit, never lowered).
/// Only as far as needed: agents inherit the soft limit, and some programs still walk every
/// descriptor up to it.
pub fn raise_open_files(want: u64) -> Result<OpenFiles, SysError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| SysError::call("getrlimit RLIMIT_NOFILE", e.into()))?;
    let target = want.min(hard).max(soft);
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)
            .map_err(|e| SysError::call("setrlimit RLIMIT_NOFILE", e.into()))?;
    }
    Ok(OpenFiles { soft: target, hard })
}

/// At most `n` glibc malloc arenas for the whole process (`M_ARENA_MAX`); before any
/// thread starts. Without glibc (or if refused) nothing changes.
pub fn limit_malloc_arenas(n: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it is called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = n;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_never_goes_down_nor_past_the_hard_one() {
        let before = raise_open_files(0).expect("read RLIMIT_NOFILE");
        assert!(before.soft <= before.hard);
        let after = raise_open_files(u64::MAX).expect("raise RLIMIT_NOFILE");
        assert_eq!(after.soft, after.hard);
        assert_eq!(raise_open_files(0).expect("read again"), after);
    }
}
