//! Housekeeping: retention removes ended objectives older than `retention` (records,
//! events, logs, checkpoints), and the daemon-wide log cap deletes the logs of the
//! oldest ended objectives. Runs at start, hourly, and when an attempt's logs push the
//! total over the cap.

use std::path::Path;
use std::time::Duration;

use crate::model::now_ms;

use super::{After, Engine};

/// How long after an objective ends the memory it freed is given back (see
/// `release_memory`).
pub(super) const TRIM_AFTER: Duration = Duration::from_secs(1);

impl Engine {
    /// Gives back what a burst of ended objectives left behind: the live table's spare
    /// room (a map never shrinks by itself) and the allocator's free pages.
    pub(super) fn release_memory(&mut self) {
        self.trim_at = None;
        if self.live.capacity() > 4 * self.live.len().max(16) {
            self.live.shrink_to(2 * self.live.len());
        }
        // A trim walks the allocator's arenas (0.3-2.5 ms after a burst): not on this thread.
        tokio::task::spawn_blocking(|| {
            let started = std::time::Instant::now();
            let released = crate::sys::release_free_memory();
            tracing::debug!(
                released,
                us = started.elapsed().as_micros() as u64,
                "freed memory returned"
            );
        });
    }

    pub(super) fn housekeeping(&mut self) {
        self.housekeeping_at = tokio::time::Instant::now() + Duration::from_secs(3600);
        let cutoff = now_ms() - self.cfg.retention.0 as i64;
        // Creation precedes the last update, so nothing created after the cutoff can be due.
        let old = match self.store.ended_oldest_first(|o| o.created_ms < cutoff) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot read the store");
                return;
            }
        };
        let (mut dirs, mut worktrees) = (Vec::new(), Vec::new());
        let mut count = 0;
        for o in old.into_iter().filter(|o| o.updated_ms < cutoff) {
            match self.store.removal(&o) {
                Ok(w) => {
                    self.turn.writes.extend(w);
                    count += 1;
                    let (d, t) = self.workspaces_of(&o);
                    dirs.extend(d);
                    worktrees.extend(t);
                    dirs.push(self.logs_dir.join(&o.id));
                    dirs.push(super::attempt::checkpoints_dir(&self.cfg).join(&o.id));
                }
                Err(e) => {
                    tracing::error!(error = %e, objective = %o.id, "retention: cannot plan the removal")
                }
            }
        }
        if !dirs.is_empty() {
            tracing::info!(objectives = count, "retention: removing ended objectives");
            // Deleted once the removal from the store is durable.
            self.turn.after.push(After::RemoveDirs(dirs, worktrees));
        }
        self.enforce_log_cap();
    }

    /// Keeps the logs under `[logs] max_total_bytes` by deleting the logs of the oldest
    /// ended objectives (nothing in the store depends on them).
    pub(super) fn enforce_log_cap(&mut self) {
        let cap = self.cfg.logs.max_total_bytes.0;
        if self.log_bytes <= cap {
            return;
        }
        let mut over = self.log_bytes - cap;
        let logs = self.logs_dir.clone();
        let victims = match self.store.ended_oldest_first(|o| {
            let more = over > 0;
            over = over.saturating_sub(dir_size(&logs.join(&o.id)));
            more
        }) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "log cap: cannot read the store");
                return;
            }
        };
        let mut freed = 0;
        let mut dirs = Vec::new();
        for o in victims {
            let d = self.logs_dir.join(&o.id);
            freed += dir_size(&d);
            dirs.push(d);
        }
        tracing::info!(
            freed_bytes = freed,
            objectives = dirs.len(),
            cap,
            "log cap: removing the logs of the oldest ended objectives"
        );
        self.log_bytes = self.log_bytes.saturating_sub(freed);
        self.act(After::RemoveDirs(dirs, Vec::new()));
    }
}

pub fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bytes of the files under `dir` (recursively).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
