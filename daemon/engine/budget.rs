//! Usage and budgets: pricing reported tokens; the usage totals of the day, the month
//! and all time, for every user together (the machine) and for each user, mirrored in
//! the store; which budgets cover an objective (its own, its owner's daily and monthly
//! ones, the machine-wide caps); which alert thresholds a report crossed; and what a
//! used-up budget stops. The rules are pure functions; the `Engine` methods here feed
//! them and apply the results.
//!
//! Who pays for what: an objective's own budget fails that objective; a user's budget
//! fails that user's objectives (and those they submit until the period turns); the
//! machine-wide cap only refuses new submits, so one user's spend never kills another
//! user's running work.

use std::collections::{HashMap, HashSet};

use crate::config::{BudgetConfig, Config, UserLimits};
use crate::model::{Objective, Usage, usage_keys, user_usage_key};
use crate::store::{Store, WriteSet};

use super::Engine;
use super::machine::Input;

/// Usage today, this month and in total (UTC) of one scope: the machine or one user.
#[derive(Debug, Default)]
pub struct Totals {
    loaded: bool,
    /// `user:UID:` for a user, empty for the machine.
    prefix: String,
    pub day_key: String,
    pub day: Usage,
    pub month_key: String,
    pub month: Usage,
    pub total: Usage,
}

impl Totals {
    fn of_user(uid: u32) -> Totals {
        Totals {
            prefix: user_usage_key(uid, ""),
            ..Totals::default()
        }
    }

    /// Loads the totals when first used and when the (UTC) day or month changed.
    fn refresh(&mut self, store: &Store, day: &str, month: &str) {
        let load = |key: String| store.usage_total(&key).unwrap_or_default();
        if !self.loaded {
            self.total = load(format!("{}total", self.prefix));
            self.loaded = true;
        }
        if self.day_key != day {
            self.day = load(format!("{}{day}", self.prefix));
            self.day_key = day.to_string();
        }
        if self.month_key != month {
            self.month = load(format!("{}{month}", self.prefix));
            self.month_key = month.to_string();
        }
    }

    fn add(&mut self, writes: &mut WriteSet, d: &Usage) {
        self.day.add(d);
        self.month.add(d);
        self.total.add(d);
        let p = &self.prefix;
        writes.usage_total(&format!("{p}{}", self.day_key), &self.day);
        writes.usage_total(&format!("{p}{}", self.month_key), &self.month);
        writes.usage_total(&format!("{p}total"), &self.total);
    }
}

/// Every user's totals, each user's, and the alerts already sent for them.
#[derive(Debug, Default)]
pub struct Budgets {
    pub machine: Totals,
    users: HashMap<u32, Totals>,
    /// Alert keys sent for user and machine budgets (also kept as store markers).
    sent: HashSet<String>,
}

impl Budgets {
    /// Brings the machine's and `uid`'s totals up to date for today.
    fn refresh(&mut self, store: &Store, uid: u32) {
        let (day, month) = usage_keys(chrono::Utc::now());
        self.machine.refresh(store, &day, &month);
        self.users
            .entry(uid)
            .or_insert_with(|| Totals::of_user(uid))
            .refresh(store, &day, &month);
    }

    /// `uid`'s totals, up to date.
    fn user(&mut self, store: &Store, uid: u32) -> &Totals {
        self.refresh(store, uid);
        self.users
            .entry(uid)
            .or_insert_with(|| Totals::of_user(uid))
    }

    /// Adds a report by user `uid` to its totals and the machine's, written with the turn.
    pub fn add(&mut self, store: &Store, writes: &mut WriteSet, uid: u32, d: &Usage) {
        self.refresh(store, uid);
        self.machine.add(writes, d);
        if let Some(t) = self.users.get_mut(&uid) {
            t.add(writes, d);
        }
    }
}

/// Whose budget a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The objective's own (`max_cost_usd`, `max_tokens`): fails the objective.
    Objective,
    /// Its owner's daily or monthly budget: fails the owner's objectives.
    User(u32),
    /// Every user together: refuses new submits only.
    Machine,
}

/// One budget covering an objective or a submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The name events and messages use (`objective_usd`, `daily_usd`, …).
    pub name: &'static str,
    pub used: f64,
    pub limit: f64,
    pub scope: Scope,
    /// What makes each alert of this budget be sent once (per period where there is one).
    pub key: String,
}

impl Line {
    pub fn used_up(&self) -> bool {
        self.used >= self.limit
    }
}

/// The objective's own budgets.
pub fn objective_lines(obj: &Objective) -> Vec<Line> {
    let mut out = Vec::new();
    if let Some(l) = obj.budget.max_cost_usd {
        out.push(line(
            "objective_usd",
            obj.usage.cost_usd + obj.sub_usage.cost_usd,
            l,
            Scope::Objective,
            "objective_usd".into(),
        ));
    }
    if let Some(t) = obj.budget.max_tokens {
        // Sub-objectives count against their parent's budgets.
        let used = (obj.usage.tokens() + obj.sub_usage.tokens()) as f64;
        out.push(line(
            "objective_tokens",
            used,
            t as f64,
            Scope::Objective,
            "objective_tokens".into(),
        ));
    }
    out
}

/// User `uid`'s daily and monthly budgets.
pub fn user_lines(uid: u32, limits: &UserLimits, t: &Totals) -> Vec<Line> {
    let mut out = Vec::new();
    let key = |name: &str, period: &str| user_usage_key(uid, &format!("{name}:{period}"));
    if let Some(l) = limits.daily_usd {
        out.push(line(
            "daily_usd",
            t.day.cost_usd,
            l,
            Scope::User(uid),
            key("daily_usd", &t.day_key),
        ));
    }
    if let Some(l) = limits.monthly_usd {
        let k = key("monthly_usd", &t.month_key);
        out.push(line(
            "monthly_usd",
            t.month.cost_usd,
            l,
            Scope::User(uid),
            k,
        ));
    }
    out
}

/// The machine-wide caps.
pub fn machine_lines(cfg: &BudgetConfig, t: &Totals) -> Vec<Line> {
    let mut out = Vec::new();
    if let Some(l) = cfg.machine_daily_usd {
        let k = format!("machine_daily_usd:{}", t.day_key);
        out.push(line(
            "machine_daily_usd",
            t.day.cost_usd,
            l,
            Scope::Machine,
            k,
        ));
    }
    if let Some(l) = cfg.machine_monthly_usd {
        let k = format!("machine_monthly_usd:{}", t.month_key);
        out.push(line(
            "machine_monthly_usd",
            t.month.cost_usd,
            l,
            Scope::Machine,
            k,
        ));
    }
    out
}

fn line(name: &'static str, used: f64, limit: f64, scope: Scope, key: String) -> Line {
    Line {
        name,
        used,
        limit,
        scope,
        key,
    }
}

/// The alert thresholds (percent) a budget has reached, lowest first, each with the key
/// that makes it be sent once.
pub fn reached(line: &Line, thresholds: &[f64]) -> Vec<(f64, String)> {
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
        .map(|t| (t, format!("{}:{t}", line.key)))
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
        "machine_daily_usd" => format!(
            "the machine-wide daily budget of ${limit:.2} is exhausted: every user together used ${used:.4} today; new work is refused until tomorrow (UTC)"
        ),
        "machine_monthly_usd" => format!(
            "the machine-wide monthly budget of ${limit:.2} is exhausted: every user together used ${used:.4} this month; new work is refused until next month (UTC)"
        ),
        other => format!("budget {other} of {limit} exhausted: used {used}"),
    }
}

/// The cost of tokens from the `[prices.MODEL]` table (`None` when the model has none).
pub fn price(cfg: &Config, model: &str, tokens: &Usage) -> Option<f64> {
    cfg.prices.get(model).map(|p| p.cost(tokens))
}

impl Engine {
    /// A usage report as a delta with its cost and model: the model the agent named,
    /// else its profile's; the cost it reported, else the `[prices]` of that model.
    pub(super) fn priced(
        &self,
        id: &str,
        step: u32,
        tokens: Usage,
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
            price(&self.cfg, &model, &tokens).unwrap_or_else(|| {
                if tokens.has_tokens() {
                    tracing::warn!(
                        model,
                        "no [prices] entry for this model; its tokens are counted at $0"
                    );
                }
                0.0
            })
        });
        let delta = Usage {
            cost_usd: cost,
            ..tokens
        };
        Some((delta, model))
    }

    /// Adds a usage report of objective `id` to its owner's and the machine's totals.
    pub(super) fn count_usage(&mut self, id: &str, delta: &Usage) {
        let Some(uid) = self.live.get(id).map(|l| l.run.obj.owner_uid) else {
            return;
        };
        self.budgets
            .add(&self.store, &mut self.turn.writes, uid, delta);
    }

    /// User `uid`'s limits. Its name (for `[users.NAME]`) is looked up once, and only
    /// when the config names users at all.
    pub(super) fn limits_of(&mut self, uid: u32) -> UserLimits {
        if self.cfg.users.is_empty() {
            return self.cfg.user_limits(uid, None);
        }
        let name = self
            .user_names
            .entry(uid)
            .or_insert_with(|| crate::sys::user_name(uid));
        self.cfg.user_limits(uid, name.as_deref())
    }

    /// User `uid`'s budgets and the machine-wide caps, up to date.
    pub(super) fn user_and_machine_lines(&mut self, uid: u32) -> (Vec<Line>, Vec<Line>) {
        let limits = self.limits_of(uid);
        let user = user_lines(uid, &limits, self.budgets.user(&self.store, uid));
        let machine = machine_lines(&self.cfg.budget, &self.budgets.machine);
        (user, machine)
    }

    /// Why no one may submit new work now: the machine-wide cap is used up. (A user
    /// whose own budget is used up may submit; their objective fails at once, saying
    /// why, as it always has.)
    pub(super) fn submit_block(&mut self, uid: u32) -> Option<String> {
        let (_, machine) = self.user_and_machine_lines(uid);
        machine
            .iter()
            .find(|l| l.used_up())
            .map(|l| message(l.name, l.used, l.limit))
    }

    /// Why no new attempt of objective `id` may start: its own or its owner's budget is
    /// used up (the machine-wide cap lets submitted work go on).
    pub(super) fn budget_block(&mut self, id: &str) -> Option<String> {
        let live = self.live.get(id)?;
        if let Some(why) = live.run.exhausted.clone() {
            return Some(why);
        }
        let (uid, own) = (live.run.obj.owner_uid, objective_lines(&live.run.obj));
        let (user, _) = self.user_and_machine_lines(uid);
        own.iter()
            .chain(&user)
            .find(|l| l.used_up())
            .map(|l| message(l.name, l.used, l.limit))
    }

    /// Sends the alerts a usage report of objective `id` crossed, and stops what a
    /// used-up budget covers: the objective for its own budgets, its owner's objectives
    /// for the owner's budgets, nothing running for the machine-wide cap.
    pub(super) fn check_budgets(&mut self, id: &str) {
        let Some(obj) = self.live.get(id).map(|l| l.run.obj.clone()) else {
            return;
        };
        let thresholds = self.cfg.budget.alert_percent.clone();
        let (user, machine) = self.user_and_machine_lines(obj.owner_uid);
        let lines = objective_lines(&obj).into_iter().chain(user).chain(machine);
        for line in lines {
            for (percent, key) in reached(&line, &thresholds) {
                let key = if line.scope == Scope::Objective {
                    if obj.alerts.contains(&key) {
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
            if !line.used_up() {
                continue;
            }
            let why = message(line.name, line.used, line.limit);
            let ids: Vec<String> = match line.scope {
                Scope::Objective => vec![id.to_string()],
                Scope::User(uid) => self
                    .live
                    .iter()
                    .filter(|(_, l)| l.run.obj.owner_uid == uid)
                    .map(|(id, _)| id.clone())
                    .collect(),
                // New submits are refused (`submit_block`); running work goes on.
                Scope::Machine => Vec::new(),
            };
            for other in ids {
                self.exhaust(&other, why.clone());
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

    fn totals(day: f64, month: f64) -> Totals {
        Totals {
            loaded: true,
            prefix: String::new(),
            day_key: "day:2026-12-01".into(),
            day: Usage {
                cost_usd: day,
                ..Usage::default()
            },
            month_key: "month:2026-12".into(),
            month: Usage {
                cost_usd: month,
                ..Usage::default()
            },
            total: Usage::default(),
        }
    }

    #[test]
    fn a_users_budgets_are_keyed_by_user_and_period() {
        let limits = UserLimits {
            daily_usd: Some(10.0),
            monthly_usd: Some(100.0),
            max_parallel: 1,
        };
        let lines = user_lines(1000, &limits, &totals(9.0, 9.0));
        assert_eq!(lines[0].key, "user:1000:daily_usd:day:2026-12-01");
        assert_eq!(lines[0].scope, Scope::User(1000));
        assert_eq!(
            reached(&lines[0], &[100.0, 50.0, 80.0]),
            vec![
                (50.0, "user:1000:daily_usd:day:2026-12-01:50".to_string()),
                (80.0, "user:1000:daily_usd:day:2026-12-01:80".to_string())
            ]
        );
        assert!(reached(&lines[1], &[50.0]).is_empty());
    }

    #[test]
    fn machine_caps_are_their_own_scope() {
        let cfg = BudgetConfig {
            machine_daily_usd: Some(5.0),
            ..BudgetConfig::default()
        };
        let lines = machine_lines(&cfg, &totals(5.0, 5.0));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].scope, Scope::Machine);
        assert!(lines[0].used_up());
        assert!(message(lines[0].name, 5.0, 5.0).contains("new work is refused"));
    }

    #[test]
    fn an_objectives_own_budgets_come_from_its_record() {
        let mut o = Objective::pending("O", 1, 7, 0);
        o.budget.max_cost_usd = Some(1.0);
        o.budget.max_tokens = Some(10);
        o.usage.input_tokens = 10;
        let lines = objective_lines(&o);
        assert_eq!(lines.len(), 2);
        assert!(!lines[0].used_up() && lines[1].used_up());
        assert_eq!(
            reached(&lines[1], &[100.0]),
            vec![(100.0, "objective_tokens:100".to_string())]
        );
    }

    #[test]
    fn a_zero_limit_is_reached_at_once() {
        let l = line(
            "objective_usd",
            0.0,
            0.0,
            Scope::Objective,
            "objective_usd".into(),
        );
        assert_eq!(reached(&l, &[100.0]).len(), 1);
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
