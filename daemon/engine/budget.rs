//! Usage and budgets: pricing reported tokens, the daemon-wide totals of the day, the
//! month and all time (mirrored in the store), which budgets cover an objective, which
//! alert thresholds a report crossed, and stopping what a used-up budget covers. The
//! rules are pure functions; `Engine`'s methods here only feed them and apply results.

use std::collections::HashSet;

use crate::config::Config;
use crate::model::{Objective, Usage};
use crate::store::{Store, WriteSet};

use super::Engine;
use super::machine::Input;

/// Usage today, this month and in total (UTC).
#[derive(Debug, Default)]
pub struct Totals {
    loaded: bool,
    pub day_key: String,
    pub day: Usage,
    pub month_key: String,
    pub month: Usage,
    pub total: Usage,
}

/// The daemon-wide usage totals and the daemon-wide alerts already sent.
#[derive(Debug, Default)]
pub struct Budgets {
    pub totals: Totals,
    /// `daily_usd:2026-11-21:80`: sent once (also kept as store markers).
    sent: HashSet<String>,
}

impl Budgets {
    /// Loads the day's and month's totals when the (UTC) date changed.
    fn refresh(&mut self, store: &Store) {
        let (day, month) = crate::model::usage_keys(chrono::Utc::now());
        let load = |key: &str| store.usage_total(key).unwrap_or_default();
        let t = &mut self.totals;
        if !t.loaded {
            t.total = load("total");
            t.loaded = true;
        }
        if t.day_key != day {
            t.day = load(&day);
            t.day_key = day;
        }
        if t.month_key != month {
            t.month = load(&month);
            t.month_key = month;
        }
    }

    /// Adds a report to the totals and writes them with the turn.
    pub fn add(&mut self, store: &Store, writes: &mut WriteSet, d: &Usage) {
        self.refresh(store);
        let t = &mut self.totals;
        t.day.add(d);
        t.month.add(d);
        t.total.add(d);
        writes.usage_total(&t.day_key, &t.day);
        writes.usage_total(&t.month_key, &t.month);
        writes.usage_total("total", &t.total);
    }
}

/// One budget covering an objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: &'static str,
    pub used: f64,
    pub limit: f64,
    /// The objective's own budget (else daemon-wide).
    pub own: bool,
}

/// The budgets that cover `obj`: its own, then the daemon's daily and monthly ones.
pub fn covering(obj: &Objective, cfg: &crate::config::BudgetConfig, totals: &Totals) -> Vec<Line> {
    let mut out = Vec::new();
    let mut push = |name, used, limit, own| {
        out.push(Line {
            name,
            used,
            limit,
            own,
        })
    };
    if let Some(l) = obj.budget.max_cost_usd {
        push("objective_usd", obj.usage.cost_usd, l, true);
    }
    if let Some(t) = obj.budget.max_tokens {
        push(
            "objective_tokens",
            obj.usage.tokens() as f64,
            t as f64,
            true,
        );
    }
    if let Some(l) = cfg.daily_usd {
        push("daily_usd", totals.day.cost_usd, l, false);
    }
    if let Some(l) = cfg.monthly_usd {
        push("monthly_usd", totals.month.cost_usd, l, false);
    }
    out
}

/// The alert thresholds (percent) a budget has reached, lowest first, each with the
/// key that makes it be sent once (per day or month for the daemon-wide budgets).
pub fn reached(line: &Line, thresholds: &[f64], day: &str, month: &str) -> Vec<(f64, String)> {
    let percent = if line.limit > 0.0 {
        line.used / line.limit * 100.0
    } else {
        100.0
    };
    let mut t: Vec<f64> = thresholds
        .iter()
        .copied()
        .filter(|t| percent >= *t)
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t.into_iter()
        .map(|t| {
            let key = match line.name {
                "daily_usd" => format!("{}:{day}:{t}", line.name),
                "monthly_usd" => format!("{}:{month}:{t}", line.name),
                name => format!("{name}:{t}"),
            };
            (t, key)
        })
        .collect()
}

/// Says which budget ran out and by how much.
pub fn message(name: &str, used: f64, limit: f64) -> String {
    let over = (used - limit).max(0.0);
    match name {
        "objective_usd" => {
            format!("objective budget of ${limit:.2} exhausted: used ${used:.4} (${over:.4} over)")
        }
        "objective_tokens" => format!(
            "objective token budget of {limit:.0} exhausted: used {used:.0} tokens ({over:.0} over)"
        ),
        "daily_usd" => format!(
            "daily budget of ${limit:.2} exhausted: used ${used:.4} today (${over:.4} over)"
        ),
        "monthly_usd" => format!(
            "monthly budget of ${limit:.2} exhausted: used ${used:.4} this month (${over:.4} over)"
        ),
        other => format!("budget {other} of {limit} exhausted: used {used}"),
    }
}

/// The cost of tokens from the `[prices.MODEL]` table (`None` when the model has none).
pub fn price(cfg: &Config, model: &str, input: u64, output: u64) -> Option<f64> {
    cfg.prices
        .get(model)
        .map(|p| (input as f64 * p.input_per_mtok + output as f64 * p.output_per_mtok) / 1e6)
}

impl Engine {
    /// A usage report as a delta with its cost and model: the model the agent named,
    /// else its profile's; the cost it reported, else the `[prices]` of that model.
    pub(super) fn priced(
        &self,
        id: &str,
        step: u32,
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: Option<f64>,
        model: String,
    ) -> Option<(Usage, String)> {
        let step = self.live.get(id)?.run.steps.get(step as usize)?;
        let profile = self.cfg.agents.get(step.current_agent());
        let model = if model.is_empty() {
            profile.and_then(|p| p.model.clone()).unwrap_or_default()
        } else {
            model
        };
        let cost = cost_usd.unwrap_or_else(|| {
            price(&self.cfg, &model, input_tokens, output_tokens).unwrap_or_else(|| {
                if input_tokens + output_tokens > 0 {
                    tracing::warn!(
                        model,
                        "no [prices] entry for this model; its tokens are counted at $0"
                    );
                }
                0.0
            })
        });
        let delta = Usage {
            input_tokens,
            output_tokens,
            cost_usd: cost,
        };
        Some((delta, model))
    }

    fn budget_lines(&mut self, id: &str) -> Vec<Line> {
        self.budgets.refresh(&self.store);
        match self.live.get(id) {
            Some(live) => covering(&live.run.obj, &self.cfg.budget, &self.budgets.totals),
            None => Vec::new(),
        }
    }

    /// Why no new attempt of objective `id` may start, if a budget covering it is used up.
    pub(super) fn budget_block(&mut self, id: &str) -> Option<String> {
        if let Some(why) = self.live.get(id).and_then(|l| l.run.exhausted.clone()) {
            return Some(why);
        }
        self.budget_lines(id)
            .into_iter()
            .find(|l| l.used >= l.limit)
            .map(|l| message(l.name, l.used, l.limit))
    }

    /// Sends the alerts a usage report crossed, and stops what a used-up budget covers:
    /// the objective for its own budgets, every live objective for daemon-wide ones.
    pub(super) fn check_budgets(&mut self, id: &str) {
        let thresholds = self.cfg.budget.alert_percent.clone();
        let lines = self.budget_lines(id);
        let (day, month) = (
            self.budgets.totals.day_key.clone(),
            self.budgets.totals.month_key.clone(),
        );
        for line in lines {
            for (percent, key) in reached(&line, &thresholds, &day, &month) {
                let key = if line.own {
                    let sent = self
                        .live
                        .get(id)
                        .is_some_and(|l| l.run.obj.alerts.contains(&key));
                    if sent {
                        continue;
                    }
                    Some(key)
                } else if self.budgets.sent.contains(&key)
                    || self.store.has_marker(&key).unwrap_or(false)
                {
                    continue;
                } else {
                    // Kept in the store so a restart does not send it again.
                    self.turn.writes.marker(&key);
                    self.budgets.sent.insert(key);
                    None
                };
                tracing::warn!(objective = %id, budget = line.name, percent, used = line.used, limit = line.limit, "budget alert");
                let alert = Input::Alert {
                    key,
                    percent,
                    budget: line.name.to_string(),
                    used: line.used,
                    limit: line.limit,
                };
                if let Err(e) = self.input(id, alert) {
                    tracing::error!(objective = %id, error = %e, "budget alert refused");
                }
            }
            if line.used >= line.limit {
                let why = message(line.name, line.used, line.limit);
                let ids: Vec<String> = if line.own {
                    vec![id.to_string()]
                } else {
                    self.live.keys().cloned().collect()
                };
                for other in ids {
                    self.exhaust(&other, why.clone());
                }
            }
        }
    }

    /// A budget covering objective `id` is used up: it fails, saying why.
    pub(super) fn exhaust(&mut self, id: &str, why: String) {
        if self.live.get(id).is_some_and(|l| l.run.exhausted.is_none()) {
            tracing::warn!(objective = %id, reason = %why, "budget exhausted");
        }
        if let Err(e) = self.input(id, Input::Exhaust { why }) {
            tracing::error!(objective = %id, error = %e, "budget exhaustion refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &'static str, used: f64, limit: f64) -> Line {
        Line {
            name,
            used,
            limit,
            own: !name.starts_with("daily") && !name.starts_with("monthly"),
        }
    }

    #[test]
    fn thresholds_reached_are_keyed_per_period() {
        let l = line("daily_usd", 9.0, 10.0);
        assert_eq!(
            reached(&l, &[100.0, 50.0, 80.0], "day:2026-12-01", "month:2026-12"),
            vec![
                (50.0, "daily_usd:day:2026-12-01:50".to_string()),
                (80.0, "daily_usd:day:2026-12-01:80".to_string())
            ]
        );
        let m = line("monthly_usd", 10.0, 10.0);
        assert_eq!(reached(&m, &[100.0], "d", "month:2026-12").len(), 1);
        let o = line("objective_usd", 1.0, 10.0);
        assert!(reached(&o, &[50.0], "d", "m").is_empty());
        assert_eq!(
            reached(&line("objective_tokens", 5.0, 10.0), &[50.0], "d", "m"),
            vec![(50.0, "objective_tokens:50".to_string())]
        );
    }

    #[test]
    fn a_zero_limit_is_reached_at_once() {
        let l = line("objective_usd", 0.0, 0.0);
        assert_eq!(reached(&l, &[100.0], "d", "m").len(), 1);
    }

    #[test]
    fn messages_name_the_budget_and_the_overrun() {
        assert_eq!(
            message("objective_usd", 1.5, 1.0),
            "objective budget of $1.00 exhausted: used $1.5000 ($0.5000 over)"
        );
        assert!(message("daily_usd", 3.0, 2.0).starts_with("daily budget of $2.00"));
        assert!(message("monthly_usd", 3.0, 2.0).contains("this month"));
        assert!(message("objective_tokens", 120.0, 100.0).contains("(20 over)"));
    }
}
