//! Routing at the gRPC edge: a dry run's decisions, the profiles as `ListAgents` shows
//! them, and `DisableAgent` / `EnableAgent` (the pure conversions: `route_convert`).

use orch_proto::v1 as pb;

use super::convert::ts;
use crate::config::Config;
use crate::engine::machine::routing::Routed;
use crate::engine::routing::AgentView;

/// A routing decision as `submit --dry-run` shows it.
pub fn routed_pb(r: &Routed) -> pb::AgentRouted {
    pb::AgentRouted {
        agent: r.agent.clone().unwrap_or_default(),
        reason: r.reason.clone(),
        candidates: r
            .scores
            .iter()
            .map(|c| pb::RouteCandidate {
                agent: c.agent.clone(),
                score: c.score,
                excluded: c.excluded.clone(),
            })
            .collect(),
        priority: r.priority.word().to_string(),
        wait_until: r.wait_until.and_then(ts),
    }
}

/// A profile of the config with what routing knows of it (`view`; `None` when the
/// engine did not answer).
pub fn agent_pb(cfg: &Config, name: &str, view: Option<&AgentView>) -> pb::AgentProfile {
    let p = cfg.agents.get(name);
    let mut out = pb::AgentProfile {
        name: name.to_string(),
        command: p.map(|p| p.command.clone()).unwrap_or_default(),
        usage: p.map(|p| p.usage.clone()).unwrap_or_default(),
        found: p
            .and_then(|p| p.command.first())
            .is_some_and(|prog| crate::plans::on_path(prog)),
        env: p
            .map(|p| p.env.clone().into_iter().collect())
            .unwrap_or_default(),
        quality: p.and_then(|p| p.quality).map(u32::from).unwrap_or(0),
        tags: p.map(|p| p.tags.clone()).unwrap_or_default(),
        model: p.and_then(|p| p.model.clone()).unwrap_or_default(),
        enabled: true,
        ..Default::default()
    };
    if let Some(v) = view {
        if let Some(off) = &v.off {
            out.enabled = false;
            out.disabled_reason = off.reason.clone();
            out.disabled_until = off.until_ms.and_then(ts);
        }
        out.recent_runs = v.figures.runs;
        out.success_rate = v.figures.success_rate.unwrap_or(0.0);
        out.p50_ms = v.figures.p50_ms;
        out.cost_per_success_usd = v.cost_per_success;
    }
    out
}

impl super::Api {
    /// `DisableAgent` (`on` false) and `EnableAgent`, audited.
    pub(super) async fn switch_agent_call(
        &self,
        who: crate::engine::Caller,
        name: String,
        on: bool,
        for_ms: u64,
        reason: String,
    ) -> Result<pb::AgentProfile, tonic::Status> {
        let action = if on { "agent enable" } else { "agent disable" };
        let result = async {
            if name.trim().is_empty() {
                return Err(tonic::Status::invalid_argument(
                    "name: give the agent profile to switch",
                ));
            }
            if for_ms > 0 {
                orch_proto::validate::check_duration(Some(for_ms), "for_ms")
                    .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            }
            let view = self
                .ask(|reply| crate::engine::Command::SwitchAgent {
                    name: name.clone(),
                    on,
                    for_ms,
                    reason,
                    caller: who,
                    reply,
                })
                .await?
                .map_err(super::engine_status)?;
            let cfg = self.config.borrow().clone();
            Ok(agent_pb(&cfg, &name, Some(&view)))
        }
        .await;
        self.audit(who, &format!("{action} {name}"), "", &result)
            .await;
        result
    }
}
