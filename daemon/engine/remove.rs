//! Housekeeping asked for by users: `Remove` (one ended objective) and `Prune` (the
//! caller's ended objectives matching filters). The core decides (`Input::Remove`: only
//! an ended objective, an `objective_removed` event); here the objective's records leave
//! the store in the turn's one write, and its logs and checkpoints once that is durable.

use std::path::PathBuf;

use crate::model::{ObjState, Objective, now_ms};

use super::machine::{self, Effect, Input, Run};
use super::{After, Caller, Engine, EngineError};

/// What `Prune` removes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneFilter {
    /// Only objectives that ended at least this long ago.
    pub older_than_ms: Option<u64>,
    /// Only objectives in this ended state.
    pub state: Option<ObjState>,
}

impl Engine {
    /// Removes the ended objective `id` for `caller` (the owner rule applies); returns the
    /// state it was in.
    pub(super) fn remove(&mut self, id: &str, caller: Caller) -> Result<ObjState, EngineError> {
        let input = Input::Remove { by: caller.uid };
        if let Some(live) = self.live.get(id) {
            machine::authorize(
                caller.uid,
                self.own_uid,
                live.run.obj.owner_uid,
                "remove",
                id,
            )?;
            // The core refuses it (the objective has not ended) and says why.
            let mut run = live.run.clone();
            machine::step(&mut run, input, self.ctx())?;
            return Err(EngineError::FailedPrecondition(format!(
                "objective {id} is live and cannot be removed"
            )));
        }
        let obj = self.stored_objective(id)?;
        machine::authorize(caller.uid, self.own_uid, obj.owner_uid, "remove", id)?;
        let mut run = Run::new(obj, Vec::new());
        let d = machine::step(&mut run, input, self.ctx())?;
        let removal = self.store.removal(&run.obj)?;
        self.turn.writes.extend(removal);
        let now = now_ms();
        for e in d.events {
            let e = super::number_event(&mut self.next_seq, id, e, now);
            // Its objective's own events go with it; the global history keeps this one.
            self.turn.writes.event_unindexed(&e);
            self.turn.events.push(e);
        }
        if d.effects.contains(&Effect::Remove) {
            let (mut dirs, worktrees) = self.workspaces_of(&run.obj);
            dirs.push(self.logs_dir.join(id));
            dirs.push(super::attempt::checkpoints_dir(&self.cfg).join(id));
            self.turn.after.push(After::RemoveDirs(dirs, worktrees));
        }
        tracing::info!(objective = %id, uid = caller.uid, state = run.obj.state.word(), "objective removed");
        Ok(run.obj.state)
    }

    /// The worktrees (their branches kept when they have commits) and the directories
    /// of an objective's private workspaces, to remove with it.
    pub(super) fn workspaces_of(&self, obj: &Objective) -> (Vec<PathBuf>, Vec<super::Worktree>) {
        let state = self.cfg.state_dir();
        let dirs = ["worktrees", "scratch"]
            .iter()
            .map(|kind| state.join(kind).join(&obj.id))
            .collect();
        let steps = self.store.steps(&obj.id).unwrap_or_default();
        let git = crate::workspace::Runner {
            run_as: crate::sys::run_as(obj.owner_uid, obj.owner_gid).map(|(u, g, _)| (u, g)),
            env: Vec::new(),
        };
        let worktrees = steps
            .iter()
            .filter_map(|s| {
                let repo = s.plan.repo.as_ref()?;
                let branch = s.branch.as_ref()?;
                Some((
                    crate::workspace::Leftover {
                        root: repo.root.clone(),
                        path: crate::workspace::workspace_dir(
                            &state,
                            "worktrees",
                            &obj.id,
                            &s.plan.id,
                        ),
                        branch: branch.name.clone(),
                        base: branch.base.clone(),
                    },
                    git.clone(),
                ))
            })
            .collect();
        (dirs, worktrees)
    }

    /// Whether `id` was removed by an earlier command of this turn (not yet written).
    /// An objective that is not live, from the store; one removed earlier in this turn
    /// (its removal not written yet) is gone all the same.
    pub(super) fn stored_objective(
        &self,
        id: &str,
    ) -> Result<crate::model::Objective, EngineError> {
        let gone = || EngineError::NotFound(format!("no objective with id `{id}`"));
        if self.removed_this_turn(id) {
            return Err(gone());
        }
        self.store.objective(id)?.ok_or_else(gone)
    }

    pub(super) fn removed_this_turn(&self, id: &str) -> bool {
        self.turn.events.iter().any(|e| {
            e.objective_id == id
                && matches!(e.kind, crate::model::EventKind::ObjectiveRemoved { .. })
        })
    }

    /// Removes the caller's ended objectives (everyone's for root and the daemon's user)
    /// that match `filter`, oldest first; returns their ids.
    pub(super) fn prune(
        &mut self,
        caller: Caller,
        filter: PruneFilter,
    ) -> Result<Vec<String>, EngineError> {
        let now = now_ms();
        let own = self.own_uid;
        let candidates = self.store.ended_oldest_first(|_| true)?;
        let mut removed = Vec::new();
        for o in candidates {
            let mine = caller.uid == 0 || caller.uid == own || caller.uid == o.owner_uid;
            let state_ok = filter.state.is_none_or(|s| s == o.state);
            let old_enough = filter
                .older_than_ms
                .is_none_or(|ms| o.updated_ms <= now.saturating_sub(ms as i64));
            if !(mine && state_ok && old_enough) || self.removed_this_turn(&o.id) {
                continue;
            }
            self.remove(&o.id, caller)?;
            removed.push(o.id);
        }
        Ok(removed)
    }
}
