//! Routing in orchctl: `agents disable|enable`, and how routing events, decisions and
//! profiles' routing state are shown.

use orch_proto::v1::{
    AgentProfile, AgentRouted, AgentSwitched, DisableAgentRequest, EnableAgentRequest, Route, Step,
};
use serde_json::{Value, json};

use crate::cli::AgentsAction;
use crate::client::Client;
use crate::error::Result;
use crate::json::{ts, ts_text};
use crate::output::{self, Format};

/// `orchctl agents disable NAME [--for DUR] [--reason TEXT]`, `orchctl agents enable NAME`.
pub async fn switch(client: &mut Client, action: AgentsAction, format: Format) -> Result<()> {
    let r = match action {
        AgentsAction::Disable {
            name,
            for_ms,
            reason,
        } => {
            let request = DisableAgentRequest {
                name,
                for_ms: for_ms.unwrap_or(0),
                reason: reason.unwrap_or_default(),
            };
            client.api.disable_agent(request).await
        }
        AgentsAction::Enable { name } => client.api.enable_agent(EnableAgentRequest { name }).await,
    };
    let a = client.check(r)?;
    match format {
        Format::Json => output::json_pretty(&crate::json::agent(&a)),
        Format::Table => output::line(&format!("{}: {}", a.name, state_cell(&a))),
    }
}

/// The ROUTING cell of `orchctl agents`: `enabled`, or why not and until when.
pub fn state_cell(a: &AgentProfile) -> String {
    if a.enabled {
        return "enabled".into();
    }
    let until = match ts_text(a.disabled_until.as_ref()) {
        Some(t) => format!(" until {t}"),
        None => " until enabled".into(),
    };
    format!("disabled{until}: {}", a.disabled_reason)
}

pub fn quality_cell(a: &AgentProfile) -> String {
    if a.quality == 0 {
        "-".into()
    } else {
        a.quality.to_string()
    }
}

fn candidates_json(x: &AgentRouted) -> Value {
    Value::Array(
        x.candidates
            .iter()
            .map(|c| {
                json!({
                    "agent": c.agent,
                    "score": c.score,
                    "excluded": if c.excluded.is_empty() { Value::Null } else { json!(c.excluded) },
                })
            })
            .collect(),
    )
}

/// The fields of an `agent_routed` event (and of a dry run's decision).
pub fn routed_json(x: &AgentRouted) -> Value {
    json!({
        "agent": if x.agent.is_empty() { Value::Null } else { json!(x.agent) },
        "reason": x.reason,
        "priority": x.priority,
        "candidates": candidates_json(x),
        "wait_until": ts(x.wait_until.as_ref()),
    })
}

/// The fields of an `agent_disabled` / `agent_enabled` event.
pub fn switched_json(x: &AgentSwitched) -> Value {
    json!({
        "agent": x.agent,
        "enabled": x.enabled,
        "reason": x.reason,
        "until": ts(x.until.as_ref()),
        "by_uid": x.by_uid,
    })
}

fn scores_text(x: &AgentRouted) -> String {
    x.candidates
        .iter()
        .map(|c| match (&c.score, c.excluded.is_empty()) {
            (_, false) => format!("{} ({})", c.agent, c.excluded),
            (Some(s), true) => format!("{} {}", c.agent, score_text(&x.priority, *s)),
            (None, true) => format!("{} ?", c.agent),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn score_text(priority: &str, s: f64) -> String {
    match priority {
        "cost" => format!("${s:.4}"),
        "quality" => format!("q{s:.0}"),
        _ => orch_proto::units::format_duration_ms(s.max(0.0) as u64),
    }
}

/// One line for an `agent_routed` event.
pub fn routed_line(x: &AgentRouted) -> String {
    let head = if x.agent.is_empty() {
        "no agent".to_string()
    } else {
        x.agent.clone()
    };
    format!(
        "{head} by {}: {} [{}]",
        x.priority,
        x.reason,
        scores_text(x)
    )
}

/// One line for an `agent_disabled` / `agent_enabled` event.
pub fn switched_line(x: &AgentSwitched) -> String {
    if x.enabled {
        return format!("{} enabled: {}", x.agent, x.reason);
    }
    let until = match ts_text(x.until.as_ref()) {
        Some(t) => format!(" until {t}"),
        None => String::new(),
    };
    format!("{} disabled{until}: {}", x.agent, x.reason)
}

/// What `submit --dry-run` says a routed step would run on now.
pub fn dry_run_text(route: Option<&Route>, r: &AgentRouted) -> String {
    let tags = route.map(|r| r.tags.join(", ")).unwrap_or_default();
    let now = if r.agent.is_empty() {
        format!("nothing now: {}", r.reason)
    } else {
        format!("now {} ({})", r.agent, r.reason)
    };
    format!("auto by {} [{tags}]: {now}", r.priority)
}

/// `status`: which agent each attempt of a routed step got, and why.
pub fn attempt_notes(s: &Step) -> Vec<String> {
    if s.route.is_none() {
        return Vec::new();
    }
    s.attempts
        .iter()
        .filter(|a| !a.route_reason.is_empty())
        .map(|a| {
            format!(
                "attempt {} routed to {}: {}",
                a.number, a.agent, a.route_reason
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{Attempt, RouteCandidate};

    fn decision() -> AgentRouted {
        AgentRouted {
            agent: "haiku".into(),
            reason: "cheapest of 2 eligible (expected $0.0500 per success)".into(),
            priority: "cost".into(),
            candidates: vec![
                RouteCandidate {
                    agent: "opus".into(),
                    score: None,
                    excluded: "disabled: outage".into(),
                },
                RouteCandidate {
                    agent: "haiku".into(),
                    score: Some(0.05),
                    excluded: String::new(),
                },
            ],
            wait_until: None,
        }
    }

    #[test]
    fn a_decision_reads_on_one_line_with_every_candidate() {
        let line = routed_line(&decision());
        assert_eq!(
            line,
            "haiku by cost: cheapest of 2 eligible (expected $0.0500 per success) \
             [opus (disabled: outage), haiku $0.0500]"
        );
        let v = routed_json(&decision());
        assert_eq!(v["candidates"][0]["excluded"], "disabled: outage");
        assert_eq!(v["candidates"][1]["score"], 0.05);
    }

    #[test]
    fn status_names_each_routed_attempts_agent_and_reason() {
        let step = Step {
            route: Some(Route {
                priority: "speed".into(),
                tags: vec![],
            }),
            attempts: vec![Attempt {
                number: 1,
                agent: "fast".into(),
                route_reason: "fastest of 2 eligible (p50 10 ms)".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            attempt_notes(&step),
            vec!["attempt 1 routed to fast: fastest of 2 eligible (p50 10 ms)".to_string()]
        );
        let fixed = Step {
            route: None,
            ..step
        };
        assert!(attempt_notes(&fixed).is_empty());
    }

    #[test]
    fn a_disabled_profile_says_why_and_until_when() {
        let a = AgentProfile {
            name: "x".into(),
            enabled: false,
            disabled_reason: "outage".into(),
            ..Default::default()
        };
        assert_eq!(state_cell(&a), "disabled until enabled: outage");
        let on = AgentProfile { enabled: true, ..a };
        assert_eq!(state_cell(&on), "enabled");
    }
}
