//! The engine's side of routing (`agent = "auto"`): which agent profiles are switched
//! off (by a user, a usage limit or a cool-down) and until when, kept in the store and
//! turned on again by a timer; the candidates a routed step's attempt is chosen from
//! (attributes from the config, recent figures from `stats`); the budget pressure. The
//! choice itself is the core's (`machine::routing::route`), recorded through
//! `Input::Route`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::budget::{objective_lines, reached};
use super::machine::routing::{self, Candidate, Pressure, Routed, Unavailable};
use super::machine::{Emit, Input};
use super::{Caller, Engine, EngineError};
use crate::model::{Attempt, EventKind, Millis, Outcome, RouteSpec, StepState, Usage, now_ms};

/// Who switched a profile off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffBy {
    /// `orchctl agents disable`.
    User,
    /// Its provider's rate or usage limit, until the reset.
    Limit,
    /// It failed `[routing] cooldown_after` times in a row.
    Cooldown,
}

/// A profile that routing does not choose, why and until when (`None`: until enabled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Off {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<Millis>,
    pub by: OffBy,
    pub by_uid: u32,
}

/// Every profile switched off, and the failures in a row of each.
#[derive(Debug, Default)]
pub struct Switches {
    pub off: BTreeMap<String, Off>,
    fails: HashMap<String, u32>,
}

impl Switches {
    /// When the next switch runs out.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.off.values().filter_map(|o| o.until_ms).min()
    }
}

/// A nominal run, for the expected cost of a profile that has not run yet: its model's
/// `[prices]` for 20 000 input and 2 000 output tokens.
const NOMINAL_RUN: Usage = Usage {
    input_tokens: 20_000,
    output_tokens: 2_000,
    cost_usd: 0.0,
    cache_read_tokens: 0,
    cache_write_tokens: 0,
};

/// One profile as `orchctl agents` shows it.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub name: String,
    pub off: Option<Off>,
    pub figures: super::stats::RecentFigures,
    pub cost_per_success: Option<f64>,
}

impl Engine {
    /// Reads the switches back on start.
    pub(super) fn load_switches(&mut self) -> Result<(), crate::store::StoreError> {
        self.switches.off = self.store.agent_switches()?.into_iter().collect();
        Ok(())
    }

    /// Records a daemon-wide event (no objective) in the turn.
    fn global_event(&mut self, kind: EventKind) {
        let e = Emit {
            step_id: String::new(),
            attempt: 0,
            kind,
        };
        let e = super::number_event(&mut self.next_seq, "", e, now_ms());
        self.turn.writes.event_unindexed(&e);
        self.turn.events.push(e);
    }

    /// Switches `name` off (replacing an earlier switch), durable and evented.
    fn switch_off(&mut self, name: &str, off: Off) {
        tracing::warn!(agent = name, reason = %off.reason, until = ?off.until_ms, "agent profile disabled");
        self.turn.writes.agent_switch(name, Some(&off));
        self.global_event(EventKind::AgentDisabled {
            agent: name.to_string(),
            reason: off.reason.clone(),
            until_ms: off.until_ms,
            by_uid: off.by_uid,
        });
        self.switches.off.insert(name.to_string(), off);
    }

    /// Switches `name` on again; false when it was not off.
    fn switch_on(&mut self, name: &str, reason: String, by_uid: u32) -> bool {
        if self.switches.off.remove(name).is_none() {
            return false;
        }
        tracing::info!(agent = name, %reason, "agent profile enabled");
        self.switches.fails.remove(name);
        self.turn.writes.agent_switch::<Off>(name, None);
        self.global_event(EventKind::AgentEnabled {
            agent: name.to_string(),
            reason,
            by_uid,
        });
        true
    }

    /// Turns on every profile whose switch ran out (from the engine's timer).
    pub(super) fn expire_switches(&mut self) {
        let now = now_ms();
        let due: Vec<(String, OffBy)> = self
            .switches
            .off
            .iter()
            .filter(|(_, o)| o.until_ms.is_some_and(|t| t <= now))
            .map(|(n, o)| (n.clone(), o.by))
            .collect();
        for (name, by) in due {
            let why = match by {
                OffBy::User => "the time it was disabled for ran out",
                OffBy::Limit => "its provider's limit reset",
                OffBy::Cooldown => "its cool-down ended",
            };
            self.switch_on(&name, why.to_string(), self.own_uid);
        }
    }

    /// `orchctl agents disable NAME [--for DUR] [--reason TEXT]`.
    pub(super) fn disable_agent(
        &mut self,
        name: &str,
        for_ms: u64,
        reason: String,
        caller: Caller,
    ) -> Result<AgentView, EngineError> {
        self.may_switch(name, caller, "disable")?;
        let until_ms = (for_ms > 0)
            .then(|| now_ms().saturating_add(i64::try_from(for_ms).unwrap_or(i64::MAX)));
        let reason = if reason.trim().is_empty() {
            format!("disabled by uid {}", caller.uid)
        } else {
            reason
        };
        self.switch_off(
            name,
            Off {
                reason,
                until_ms,
                by: OffBy::User,
                by_uid: caller.uid,
            },
        );
        Ok(self.agent_view(name))
    }

    /// `orchctl agents enable NAME`.
    pub(super) fn enable_agent(
        &mut self,
        name: &str,
        caller: Caller,
    ) -> Result<AgentView, EngineError> {
        self.may_switch(name, caller, "enable")?;
        self.switch_on(name, format!("enabled by uid {}", caller.uid), caller.uid);
        Ok(self.agent_view(name))
    }

    fn may_switch(&self, name: &str, caller: Caller, verb: &str) -> Result<(), EngineError> {
        if !self.cfg.agents.contains_key(name) {
            let known: Vec<&str> = self.cfg.agents.keys().map(String::as_str).collect();
            return Err(EngineError::NotFound(format!(
                "no agent profile `{name}` (known: {})",
                known.join(", ")
            )));
        }
        if caller.uid != 0 && caller.uid != self.own_uid {
            return Err(EngineError::PermissionDenied(format!(
                "only root or orchd's own user may {verb} agent profiles (they are shared by every user)"
            )));
        }
        Ok(())
    }

    /// Every profile as routing sees it, in config order.
    pub(super) fn agent_views(&self) -> Vec<AgentView> {
        self.cfg
            .agents_in_order()
            .into_iter()
            .map(|(n, _)| self.agent_view(n))
            .collect()
    }

    fn agent_view(&self, name: &str) -> AgentView {
        let figures = self
            .stats
            .get(name)
            .map(|s| s.recent_figures(self.cfg.routing.window as usize))
            .unwrap_or_default();
        AgentView {
            name: name.to_string(),
            off: self.switches.off.get(name).cloned(),
            figures,
            cost_per_success: self.expected_cost(name, &figures),
        }
    }

    /// Expected cost per success: measured over recent runs, else a nominal run at its
    /// model's `[prices]`; `None` when neither is known.
    fn expected_cost(&self, name: &str, f: &super::stats::RecentFigures) -> Option<f64> {
        if f.runs > 0 {
            return f.cost_per_success;
        }
        let model = self.cfg.agents.get(name)?.model.as_ref()?;
        self.cfg.prices.get(model).map(|p| p.cost(&NOMINAL_RUN))
    }

    /// The candidates of a routed step: every profile with tags, in config order.
    fn candidates(&self) -> Vec<Candidate> {
        self.cfg
            .agents_in_order()
            .into_iter()
            .filter(|(_, p)| !p.tags.is_empty())
            .enumerate()
            .map(|(order, (name, p))| {
                let v = self.agent_view(name);
                Candidate {
                    name: name.to_string(),
                    order,
                    quality: p.quality.unwrap_or(0),
                    tags: p.tags.clone(),
                    cost_per_success: v.cost_per_success,
                    success_rate: v.figures.success_rate,
                    p50_ms: v.figures.p50_ms,
                    unavailable: v.off.map(|o| Unavailable {
                        why: match o.by {
                            OffBy::User => format!("disabled: {}", o.reason),
                            OffBy::Limit => format!("rate limited: {}", o.reason),
                            OffBy::Cooldown => format!("cooling down: {}", o.reason),
                        },
                        until: o.until_ms,
                    }),
                }
            })
            .collect()
    }

    /// The budget covering objective `id` (its own, its owner's daily or monthly) most
    /// used, when past `[routing] budget_alert_percent`.
    fn pressure_of(&mut self, id: Option<&str>, uid: u32) -> Option<Pressure> {
        let threshold = self.cfg.routing.budget_alert_percent;
        let own = id
            .and_then(|id| self.live.get(id))
            .map(|l| objective_lines(&l.run.obj))
            .unwrap_or_default();
        let (user, _) = self.user_and_machine_lines(uid);
        own.iter()
            .chain(&user)
            .filter(|l| !reached(l, &[threshold]).is_empty())
            .map(|l| Pressure {
                budget: l.name.to_string(),
                percent: if l.limit > 0.0 {
                    l.used / l.limit * 100.0
                } else {
                    100.0
                },
                threshold,
            })
            .max_by(|a, b| a.percent.total_cmp(&b.percent))
    }

    /// What a routed step of user `uid` would get now (`submit --dry-run`).
    pub(super) fn route_dry_run(&mut self, route: &RouteSpec, uid: u32) -> Routed {
        let pressure = self.pressure_of(None, uid);
        routing::route(&self.candidates(), route, pressure.as_ref(), now_ms())
    }

    /// Chooses the agent of a routed step's next attempt (through the core); true when
    /// one was chosen and the step may start.
    pub(super) fn route_step(&mut self, id: &str, index: u32) -> bool {
        let Some((route, uid)) = self.live.get(id).and_then(|l| {
            let s = l.run.steps.get(index as usize)?;
            Some((s.plan.route.clone()?, l.run.obj.owner_uid))
        }) else {
            return true;
        };
        let pressure = self.pressure_of(Some(id), uid);
        let routed = routing::route(&self.candidates(), &route, pressure.as_ref(), now_ms());
        tracing::info!(objective = %id, step = index, agent = ?routed.agent, reason = %routed.reason, "routed");
        let chosen = routed.agent.is_some();
        if let Err(e) = self.input(
            id,
            Input::Route {
                step: index,
                routed,
            },
        ) {
            tracing::debug!(objective = %id, step = index, error = %e, "not routed");
            return false;
        }
        chosen
            && self
                .live
                .get(id)
                .and_then(|l| l.run.steps.get(index as usize))
                .is_some_and(|s| s.state == StepState::Ready)
    }

    /// A provider limited `agent` until `until_ms` (or, unsaid, for `[rate_limit_wait]`):
    /// routing skips it until then.
    pub(super) fn note_limit(&mut self, agent: &str, until_ms: Option<Millis>) {
        if !self.routable(agent) {
            return;
        }
        let now = now_ms();
        let (until, reason) = match until_ms.filter(|t| *t > now) {
            Some(t) => (t, "its provider's usage limit was reached".to_string()),
            None => (
                now.saturating_add(i64::try_from(self.cfg.rate_limit_wait.0).unwrap_or(0)),
                "its provider rate-limited it without saying until when".to_string(),
            ),
        };
        // A user's own switch stays as it is.
        if self
            .switches
            .off
            .get(agent)
            .is_some_and(|o| o.by == OffBy::User || o.until_ms.is_some_and(|t| t >= until))
        {
            return;
        }
        self.switch_off(
            agent,
            Off {
                reason,
                until_ms: Some(until),
                by: OffBy::Limit,
                by_uid: self.own_uid,
            },
        );
    }

    /// Whether routing may choose `agent` at all (a profile with tags): only those are
    /// switched off by limits and cool-downs.
    fn routable(&self, agent: &str) -> bool {
        self.cfg
            .agents
            .get(agent)
            .is_some_and(|p| !p.tags.is_empty())
    }

    /// Counts an ended attempt's agent's failures in a row; cools it down after
    /// `[routing] cooldown_after` of them.
    pub(super) fn note_end(&mut self, a: &Attempt) {
        let (Some(outcome), true) = (a.outcome, self.routable(&a.agent)) else {
            return;
        };
        match outcome {
            Outcome::Success => {
                self.switches.fails.remove(&a.agent);
            }
            Outcome::Cancelled | Outcome::Interrupted => {}
            _ => {
                let n = self.switches.fails.entry(a.agent.clone()).or_default();
                *n += 1;
                let after = self.cfg.routing.cooldown_after;
                if after == 0 || *n < after || self.switches.off.contains_key(&a.agent) {
                    return;
                }
                self.switches.fails.remove(&a.agent);
                let cooldown = self.cfg.routing.cooldown.0;
                self.switch_off(
                    &a.agent,
                    Off {
                        reason: format!("failed {after} times in a row"),
                        until_ms: Some(
                            now_ms().saturating_add(i64::try_from(cooldown).unwrap_or(0)),
                        ),
                        by: OffBy::Cooldown,
                        by_uid: self.own_uid,
                    },
                );
            }
        }
    }
}
