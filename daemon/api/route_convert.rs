//! Routes and routing events ↔ proto: the pure conversions `convert` uses (no engine
//! types, so the fuzz crate compiles this file as it is).

use orch_proto::v1 as pb;

use super::convert::ts;
use crate::model::{EventKind, RoutePriority, RouteSpec};

/// A step's `route`, when it is routed (`agent = "auto"`, a route given or not).
pub fn route_from_pb(s: &pb::StepSpec) -> Option<RouteSpec> {
    if s.agent != crate::model::AUTO_AGENT {
        return None;
    }
    let r = s.route.clone().unwrap_or_default();
    Some(RouteSpec {
        // Checked by `validate_spec`: empty or a known word.
        priority: RoutePriority::from_word(&r.priority).unwrap_or_default(),
        tags: r.tags,
    })
}

pub fn route_pb(r: &RouteSpec) -> pb::Route {
    pb::Route {
        priority: r.priority.word().to_string(),
        tags: r.tags.clone(),
    }
}

/// The payload of a routing event.
pub fn event_payload(kind: &EventKind) -> pb::event::Payload {
    use pb::event::Payload as P;
    match kind {
        EventKind::AgentRouted {
            agent,
            reason,
            priority,
            candidates,
            wait_until_ms,
        } => P::AgentRouted(pb::AgentRouted {
            agent: agent.clone(),
            reason: reason.clone(),
            candidates: candidates
                .iter()
                .map(|c| pb::RouteCandidate {
                    agent: c.agent.clone(),
                    score: c.score,
                    excluded: c.excluded.clone(),
                })
                .collect(),
            priority: priority.word().to_string(),
            wait_until: wait_until_ms.and_then(ts),
        }),
        EventKind::AgentDisabled {
            agent,
            reason,
            until_ms,
            by_uid,
        } => P::AgentSwitched(pb::AgentSwitched {
            agent: agent.clone(),
            enabled: false,
            reason: reason.clone(),
            until: until_ms.and_then(ts),
            by_uid: *by_uid,
        }),
        EventKind::AgentEnabled {
            agent,
            reason,
            by_uid,
        } => P::AgentSwitched(pb::AgentSwitched {
            agent: agent.clone(),
            enabled: true,
            reason: reason.clone(),
            until: None,
            by_uid: *by_uid,
        }),
        // Only routing events come here.
        _ => P::AgentSwitched(pb::AgentSwitched::default()),
    }
}
