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

/// Gives the allocator's free pages back to the kernel (glibc's `malloc_trim`): after a
/// burst of objectives, memory freed in the middle of the heap otherwise stays resident.
/// Returns whether any memory was released.
pub fn release_free_memory() -> bool {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(target_env = "gnu"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_env = "gnu")]
    #[test]
    fn freed_memory_in_the_middle_of_the_heap_is_released() {
        // Many small blocks (below the mmap threshold), then one kept past them so that
        // the free space is not at the top of the heap, where free() trims by itself.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1000]).collect();
        let kept = vec![1u8; 1000];
        drop(blocks);
        assert!(release_free_memory(), "nothing was released");
        assert_eq!(kept[999], 1);
    }

    #[test]
    fn the_soft_limit_never_goes_down_nor_past_the_hard_one() {
        let before = raise_open_files(0).expect("read RLIMIT_NOFILE");
        assert!(before.soft <= before.hard);
        let after = raise_open_files(u64::MAX).expect("raise RLIMIT_NOFILE");
        assert_eq!(after.soft, after.hard);
        assert_eq!(raise_open_files(0).expect("read again"), after);
    }
}
