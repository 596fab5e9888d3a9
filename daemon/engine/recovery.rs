//! Start after a crash or restart: every objective that has not ended is loaded; the
//! attempts that were running are handed to the executor, which re-attaches to them
//! or makes sure nothing of them runs (killing leftovers, identified by cgroup, or pid
//! plus start time, never pid alone); those gone end `interrupted` (no retry used up)
//! and their steps run again from their last checkpoint.

use crate::executor::Reattached;
use crate::model::{Attempt, ObjState};
use crate::store::StoreError;

use super::machine::{self, Input, Run};
use super::{Engine, Live, Recovery};

impl Engine {
    pub async fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut report = Recovery::default();
        self.load_stats()?;
        self.load_switches()?;
        for state in [
            ObjState::Pending,
            ObjState::Running,
            ObjState::Paused,
            ObjState::AwaitingApproval,
        ] {
            for id in self.store.ids_in_state(state)? {
                let Some(obj) = self.store.objective(&id)? else {
                    continue;
                };
                let steps = self.store.steps(&id)?;
                let open: Vec<Attempt> = self
                    .store
                    .attempts(&id)?
                    .into_iter()
                    .filter(|a| a.ended_ms.is_none())
                    .collect();
                report.objectives += 1;
                let (mut gone, mut kept, mut handles) = (Vec::new(), Vec::new(), Vec::new());
                for a in open {
                    match self.executor.reattach(&a, self.facts_tx.clone()) {
                        Reattached::Gone { killed } => {
                            report.killed_trees += usize::from(killed);
                            report.interrupted_attempts += 1;
                            gone.push(a);
                        }
                        Reattached::Attached(h) => {
                            handles.push((a.step_index, h));
                            kept.push(a);
                        }
                    }
                }
                let stored = obj.state;
                let mut run = Run::new(obj, steps);
                let input = Input::Recover { gone, kept };
                match machine::step(&mut run, input, self.ctx()) {
                    Ok(d) => {
                        self.count_running(run.obj.owner_uid, 0, run.running.len());
                        let mut live = Live::new(run, Some(stored));
                        live.handles.extend(handles);
                        self.live.insert(id.clone(), live);
                        self.apply(&id, d);
                    }
                    Err(e) => tracing::error!(objective = %id, error = %e, "cannot recover"),
                }
            }
        }
        self.commit().await;
        Ok(report)
    }
}

/// Marks a store whose agent aggregates cover every attempt it holds.
const STATS_BUILT: &str = "agent_stats_v1";

impl Engine {
    /// Reads the per-agent aggregates; a store written before they existed gets them built
    /// once from its attempts (written with recovery's turn).
    pub(super) fn load_stats(&mut self) -> Result<(), StoreError> {
        if self.store.has_marker(STATS_BUILT)? {
            self.stats = self.store.agent_stats()?.into_iter().collect();
            return Ok(());
        }
        let mut built = super::stats::Stats::new();
        self.store.each_attempt(|a| {
            built
                .entry(super::stats::agent_of(&a).to_string())
                .or_default()
                .record(&a)
        })?;
        for (name, s) in &built {
            self.turn.writes.agent_stats(name, s);
        }
        self.turn.writes.marker(STATS_BUILT);
        tracing::info!(
            agents = built.len(),
            "agent statistics built from the stored attempts"
        );
        self.stats = built;
        Ok(())
    }
}
