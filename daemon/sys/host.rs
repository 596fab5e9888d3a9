//! The host's memory and load, read with sysinfo (/proc/meminfo, /proc/loadavg).

/// One reading of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostFigures {
    pub total_memory: u64,
    pub available_memory: u64,
    pub load_1m: f64,
    pub load_5m: f64,
    pub load_15m: f64,
    pub cpus: u32,
}

/// Reads the host now (a few small /proc files; no process table).
pub fn host_figures() -> HostFigures {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
    let load = sysinfo::System::load_average();
    HostFigures {
        total_memory: sys.total_memory(),
        available_memory: sys.available_memory(),
        load_1m: load.one,
        load_5m: load.five,
        load_15m: load.fifteen,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host() {
        let h = host_figures();
        assert!(h.total_memory > 0, "{h:?}");
        assert!(
            h.available_memory > 0 && h.available_memory <= h.total_memory,
            "{h:?}"
        );
        assert!(h.load_1m >= 0.0 && h.cpus >= 1, "{h:?}");
    }
}
