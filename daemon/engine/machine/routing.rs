//! Routing: which agent profile a routed step (`agent = "auto"`) gets at an attempt, as
//! a pure function of the candidates (each profile's attributes, recent figures and
//! availability), the step's route, the budget pressure and the time. The rules are data:
//! `ORDER` is the table of what each priority sorts by; `route` applies it.
//!
//! | # | rule                                                                    |
//! |---|-------------------------------------------------------------------------|
//! | 1 | a profile whose tags do not cover the step's is never chosen            |
//! | 2 | a disabled, rate-limited or cooling-down profile is skipped until then  |
//! | 3 | a `last-resort` profile is chosen only when no other one is eligible    |
//! | 4 | past a budget's alert threshold the priority is `cost`, whatever asked  |
//! | 5 | the eligible profiles sort by the priority's keys (`ORDER`), unknown last |
//! | 6 | ties go to the profile order in the config                              |
//! | 7 | nothing eligible: wait for the earliest reset, or fail when none comes  |

use std::cmp::Ordering;

use crate::model::{Millis, RoutePriority, RouteSpec};

/// The tag that makes a profile the fallback of last resort (rule 3).
pub const LAST_RESORT: &str = "last-resort";

/// One agent profile as routing sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    pub name: String,
    /// Its position in the config: ties go to the earlier.
    pub order: usize,
    /// The user's own ranking, 1–10; 0 = not given (ranks below every given one).
    pub quality: u8,
    pub tags: Vec<String>,
    /// Expected cost of one success in USD: measured over recent runs, else from its
    /// model's `[prices]`; `None` = unknown.
    pub cost_per_success: Option<f64>,
    /// Over recent runs; `None` without runs.
    pub success_rate: Option<f64>,
    /// Median duration of recent runs; `None` without runs.
    pub p50_ms: Option<u64>,
    /// Why it may not be chosen now, if so.
    pub unavailable: Option<Unavailable>,
}

/// Why a profile is skipped, and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct Unavailable {
    /// `disabled: ...`, `rate limited`, `cooling down: ...`
    pub why: String,
    /// `None`: until someone enables it.
    pub until: Option<Millis>,
}

/// A budget covering the step's objective that passed its alert threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Pressure {
    /// The budget's name (`objective_usd`, `daily_usd`, …).
    pub budget: String,
    /// How much of it is used, in percent.
    pub percent: f64,
    /// The threshold it passed.
    pub threshold: f64,
}

/// One candidate's line in the decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub agent: String,
    /// The value of the priority's first key (USD, quality 1–10, ms); `None` when it was
    /// not eligible or the value is unknown.
    pub score: Option<f64>,
    /// Why it was left out; empty when eligible.
    pub excluded: String,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// `None`: nothing may run it now.
    pub agent: Option<String>,
    pub reason: String,
    /// The priority applied (`cost` under budget pressure).
    pub priority: RoutePriority,
    pub scores: Vec<Scored>,
    /// With no agent: the earliest time one comes back (then the step waits); `None` and
    /// no agent: none comes back by itself (the step fails).
    pub wait_until: Option<Millis>,
}

/// A key the eligible profiles sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Expected cost per success, lowest first.
    CostPerSuccess,
    /// `quality`, highest first.
    Quality,
    /// Success rate, highest first.
    SuccessRate,
    /// p50 duration, lowest first.
    P50,
}

/// The ordering table: what each priority sorts by, in turn (then the config order).
pub const ORDER: &[(RoutePriority, &[Key])] = &[
    (RoutePriority::Cost, &[Key::CostPerSuccess]),
    (RoutePriority::Quality, &[Key::Quality, Key::SuccessRate]),
    (RoutePriority::Speed, &[Key::P50]),
];

/// The keys of `p`.
pub fn keys(p: RoutePriority) -> &'static [Key] {
    ORDER
        .iter()
        .find(|(q, _)| *q == p)
        .map(|(_, k)| *k)
        .unwrap_or(&[])
}

impl Key {
    /// The candidate's value, oriented so that lower is better; `None` = unknown.
    fn value(self, c: &Candidate) -> Option<f64> {
        match self {
            Key::CostPerSuccess => c.cost_per_success,
            Key::Quality => (c.quality > 0).then(|| -f64::from(c.quality)),
            Key::SuccessRate => c.success_rate.map(|r| -r),
            Key::P50 => c.p50_ms.map(|ms| ms as f64),
        }
    }

    /// The value as shown (not negated).
    fn shown(self, c: &Candidate) -> Option<f64> {
        self.value(c).map(|v| match self {
            Key::Quality | Key::SuccessRate => -v,
            _ => v,
        })
    }

    fn describe(self, c: &Candidate) -> String {
        match (self, self.shown(c)) {
            (Key::CostPerSuccess, Some(v)) => format!("expected ${v:.4} per success"),
            (Key::Quality, Some(v)) => format!("quality {v:.0}"),
            (Key::SuccessRate, Some(v)) => format!("success rate {:.0}%", v * 100.0),
            (Key::P50, Some(v)) => format!("p50 {v:.0} ms"),
            (Key::CostPerSuccess, None) => "cost unknown".into(),
            (Key::Quality, None) => "no quality given".into(),
            (Key::SuccessRate, None) => "no runs yet".into(),
            (Key::P50, None) => "no runs yet".into(),
        }
    }
}

/// Unknown values sort after known ones; known ones ascending.
fn cmp_opt(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Orders two eligible candidates under `p` (rules 5 and 6).
pub fn compare(p: RoutePriority, a: &Candidate, b: &Candidate) -> Ordering {
    keys(p)
        .iter()
        .map(|k| cmp_opt(k.value(a), k.value(b)))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
        .then(a.order.cmp(&b.order))
}

/// Whether a profile with `tags` may run a step asking for `wanted`.
pub fn covers(tags: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| tags.contains(w))
}

/// Why `c` is not eligible at `now`, if it is not.
fn excluded(c: &Candidate, route: &RouteSpec, now: Millis) -> Option<String> {
    if !covers(&c.tags, &route.tags) {
        let missing: Vec<&str> = route
            .tags
            .iter()
            .filter(|t| !c.tags.contains(t))
            .map(String::as_str)
            .collect();
        return Some(format!("lacks tag {}", missing.join(", ")));
    }
    match &c.unavailable {
        Some(u) if u.until.is_none_or(|t| t > now) => Some(match u.until {
            Some(t) => format!("{} until {}", u.why, rfc3339(t)),
            None => u.why.clone(),
        }),
        _ => None,
    }
}

/// Chooses the agent of a routed step's next attempt.
pub fn route(
    candidates: &[Candidate],
    step: &RouteSpec,
    pressure: Option<&Pressure>,
    now: Millis,
) -> Routed {
    let priority = if pressure.is_some() {
        RoutePriority::Cost
    } else {
        step.priority
    };
    let first_key = keys(priority).first().copied();
    let mut scores = Vec::with_capacity(candidates.len());
    let mut eligible: Vec<&Candidate> = Vec::new();
    let mut last_resort: Vec<&Candidate> = Vec::new();
    for c in candidates {
        let why = excluded(c, step, now);
        scores.push(Scored {
            agent: c.name.clone(),
            score: match &why {
                None => first_key.and_then(|k| k.shown(c)),
                Some(_) => None,
            },
            excluded: why.clone().unwrap_or_default(),
        });
        if why.is_none() {
            if c.tags.iter().any(|t| t == LAST_RESORT) {
                last_resort.push(c);
            } else {
                eligible.push(c);
            }
        }
    }
    let (pool, resort) = if eligible.is_empty() {
        (last_resort, true)
    } else {
        (eligible, false)
    };
    let best = pool.iter().copied().min_by(|a, b| compare(priority, a, b));
    let Some(best) = best else {
        // Rule 7: the earliest time a profile covering the tags comes back.
        let wait_until = candidates
            .iter()
            .filter(|c| covers(&c.tags, &step.tags))
            .filter_map(|c| c.unavailable.as_ref().and_then(|u| u.until))
            .filter(|t| *t > now)
            .min();
        let reason = match (
            wait_until,
            candidates.iter().any(|c| covers(&c.tags, &step.tags)),
        ) {
            (Some(t), _) => format!(
                "no agent profile with tags [{}] is available now; waiting until {}",
                step.tags.join(", "),
                rfc3339(t)
            ),
            (None, true) => format!(
                "every agent profile with tags [{}] is disabled until enabled again ({})",
                step.tags.join(", "),
                scores
                    .iter()
                    .filter(|s| !s.excluded.is_empty() && !s.excluded.starts_with("lacks"))
                    .map(|s| format!("{}: {}", s.agent, s.excluded))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            (None, false) => format!("no agent profile has the tags [{}]", step.tags.join(", ")),
        };
        return Routed {
            agent: None,
            reason,
            priority,
            scores,
            wait_until,
        };
    };
    let n = pool.len();
    let what = first_key.map(|k| k.describe(best)).unwrap_or_default();
    let mut reason = match (priority, n) {
        (_, 1) => format!("the only eligible profile ({what})"),
        (RoutePriority::Cost, _) => format!("cheapest of {n} eligible ({what})"),
        (RoutePriority::Quality, _) => {
            let rate = Key::SuccessRate.describe(best);
            format!("highest quality of {n} eligible ({what}, {rate})")
        }
        (RoutePriority::Speed, _) => format!("fastest of {n} eligible ({what})"),
    };
    if let Some(p) = pressure {
        reason = format!(
            "budget {} at {:.0}% (past its {:.0}% alert): {reason}, instead of by {}",
            p.budget,
            p.percent,
            p.threshold,
            step.priority.word()
        );
    }
    if resort {
        reason = format!("last resort: {reason}");
    }
    Routed {
        agent: Some(best.name.clone()),
        reason,
        priority,
        scores,
        wait_until: None,
    }
}

/// A time for messages, in UTC.
fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests;

impl super::Tx<'_> {
    /// Records a routing decision for a ready step: the chosen agent runs its next
    /// attempt (a new agent starts its own session; the step's checkpoint stays), or,
    /// with none, the step waits for the earliest reset or fails.
    pub(super) fn routed(&mut self, index: u32, routed: Routed) -> Result<(), super::Invalid> {
        use crate::model::{EventKind, RouteScore, StepState, Usage};
        let id = self.id().to_string();
        let step = self.step_mut(index)?;
        if step.state != StepState::Ready || step.plan.route.is_none() {
            return Err(super::Invalid::FailedPrecondition(format!(
                "step `{}` of objective {id} is not a ready routed step",
                step.plan.id
            )));
        }
        let (sid, number) = (step.plan.id.clone(), step.attempts + 1);
        if let Some(agent) = &routed.agent {
            if step.routed_agent.as_ref() != Some(agent) {
                // Another agent: its own session, not the last one's.
                if step.routed_agent.is_some() {
                    step.session = None;
                    step.session_usage = Usage::default();
                    step.rate_limit_waits = 0;
                }
                step.routed_agent = Some(agent.clone());
            }
            step.route_reason = routed.reason.clone();
        }
        self.d.steps.insert(index);
        self.emit(
            &sid,
            number,
            EventKind::AgentRouted {
                agent: routed.agent.clone().unwrap_or_default(),
                reason: routed.reason.clone(),
                priority: routed.priority,
                candidates: routed
                    .scores
                    .iter()
                    .map(|s| RouteScore {
                        agent: s.agent.clone(),
                        score: s.score,
                        excluded: s.excluded.clone(),
                    })
                    .collect(),
                wait_until_ms: routed.wait_until,
            },
        );
        if routed.agent.is_some() {
            return Ok(());
        }
        match routed.wait_until {
            Some(due) => {
                self.set_step(index, StepState::Backoff, routed.reason);
                if let Some(step) = self.run.steps.get_mut(index as usize) {
                    step.next_attempt_ms = Some(due);
                }
                self.effect(super::Effect::Timer { step: index, due });
            }
            None => {
                self.set_step(index, StepState::Failed, routed.reason);
                self.release_ready();
            }
        }
        Ok(())
    }
}
