//! `Remove` and `Prune`: the API side of housekeeping asked for by users. The engine
//! decides and removes; every removal is audited (`remove`, `prune`).

use tonic::{Request, Response, Status};

use orch_proto::v1 as pb;

use super::convert::state_filter;
use super::{Api, caller, engine_status};
use crate::engine::{Command, PruneFilter};

impl Api {
    pub(super) async fn remove_call(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let who = caller(&req)?;
        let raw = req.into_inner().id;
        let resolved = self.resolve(Some(who), &raw);
        let result = async {
            let id = resolved.clone()?;
            self.ask(|reply| Command::Remove {
                id: id.clone(),
                caller: who,
                reply,
            })
            .await?
            .map_err(engine_status)?;
            Ok(pb::RemoveResponse { removed: vec![id] })
        }
        .await;
        let audited = resolved.unwrap_or_else(|_| raw.trim().to_string());
        self.audit(who, "remove", &audited, &result).await;
        result.map(Response::new)
    }

    pub(super) async fn prune_call(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let result = async {
            let state = state_filter(r.state)?;
            if let Some(s) = state.filter(|s| !s.is_terminal()) {
                return Err(Status::invalid_argument(format!(
                    "state: `{}` has not ended; prune removes ended objectives \
                     (succeeded, failed or cancelled)",
                    s.word()
                )));
            }
            let filter = PruneFilter {
                older_than_ms: r.older_than_ms,
                state,
            };
            let removed = self
                .ask(|reply| Command::Prune {
                    filter,
                    caller: who,
                    reply,
                })
                .await?
                .map_err(engine_status)?;
            Ok(pb::RemoveResponse { removed })
        }
        .await;
        match &result {
            Ok(r) if !r.removed.is_empty() => {
                for id in &r.removed {
                    self.audit(who, "prune", id, &result).await;
                }
            }
            _ => self.audit(who, "prune", "", &result).await,
        }
        result.map(Response::new)
    }
}
