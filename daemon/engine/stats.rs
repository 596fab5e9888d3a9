//! Per agent profile aggregates (`orchctl stats`, `GetStats`): runs, successes, retries,
//! durations and usage of every attempt that ended under a profile. They are updated as
//! each attempt ends (constant work per end, whatever the history holds), written with the
//! turn that ended the attempt, and read back on start; routing by cost, quality or speed
//! reads them from the engine.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{Attempt, Millis, Outcome, Usage};

/// What attempts of literal commands (no agent profile) count under.
pub const COMMAND: &str = "command";

/// Growth factor between two duration buckets: a percentile read from the histogram is
/// within about 10 % of the true one.
const BUCKET_BASE: f64 = 1.2;

/// One agent profile's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStats {
    /// Attempts that ended by themselves (every outcome but cancelled and interrupted).
    pub runs: u64,
    pub successes: u64,
    /// Attempts after the first of their step.
    pub retries: u64,
    /// Attempts stopped by a cancel or a daemon stop.
    pub cancelled: u64,
    /// Every attempt's usage, cancelled ones included (their cost was spent).
    pub usage: Usage,
    /// Durations of `runs`: bucket index → count (bucket `i` holds durations whose
    /// `ln(ms + 1) / ln(BUCKET_BASE)` rounds down to `i`).
    pub durations: BTreeMap<u32, u64>,
    pub min_ms: u64,
    pub max_ms: u64,
    pub last_ended_ms: Millis,
    /// The latest runs, newest last, at most `MAX_RECENT`: what routing measures.
    pub recent: VecDeque<Recent>,
}

/// How many of a profile's latest runs are kept for the recent figures (the largest
/// `[routing] window`).
pub const MAX_RECENT: usize = 100;

/// One recent run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    pub ok: bool,
    pub ms: u64,
    pub cost_usd: f64,
}

/// A profile's figures over its latest runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecentFigures {
    pub runs: u64,
    /// `None` without runs.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<u64>,
    /// What those runs cost per success (all of it when none succeeded); `None` without
    /// runs.
    pub cost_per_success: Option<f64>,
}

/// The profile an attempt counts under.
pub fn agent_of(a: &Attempt) -> &str {
    if a.agent.is_empty() {
        COMMAND
    } else {
        &a.agent
    }
}

fn bucket(ms: u64) -> u32 {
    ((ms as f64 + 1.0).ln() / BUCKET_BASE.ln()).floor() as u32
}

/// The middle (geometric) of bucket `i`, in ms.
fn bucket_mid(i: u32) -> u64 {
    let lo = BUCKET_BASE.powi(i as i32) - 1.0;
    let hi = BUCKET_BASE.powi(i as i32 + 1) - 1.0;
    ((lo.max(0.0) + 1.0) * (hi + 1.0)).sqrt().round() as u64 - 1
}

impl AgentStats {
    /// Counts one ended attempt (one that is still running is ignored).
    pub fn record(&mut self, a: &Attempt) {
        let (Some(outcome), Some(ended)) = (a.outcome, a.ended_ms) else {
            return;
        };
        self.usage.add(&a.usage);
        self.last_ended_ms = self.last_ended_ms.max(ended);
        if a.number > 1 {
            self.retries += 1;
        }
        if matches!(outcome, Outcome::Cancelled | Outcome::Interrupted) {
            self.cancelled += 1;
            return;
        }
        self.runs += 1;
        if outcome == Outcome::Success {
            self.successes += 1;
        }
        let ms = (ended - a.started_ms).max(0) as u64;
        self.min_ms = if self.runs == 1 {
            ms
        } else {
            self.min_ms.min(ms)
        };
        self.max_ms = self.max_ms.max(ms);
        *self.durations.entry(bucket(ms)).or_default() += 1;
        self.recent.push_back(Recent {
            ok: outcome == Outcome::Success,
            ms,
            cost_usd: a.usage.cost_usd,
        });
        while self.recent.len() > MAX_RECENT {
            self.recent.pop_front();
        }
    }

    /// Success rate, median duration and cost per success of the latest `window` runs.
    pub fn recent_figures(&self, window: usize) -> RecentFigures {
        let skip = self.recent.len().saturating_sub(window.max(1));
        let runs: Vec<&Recent> = self.recent.iter().skip(skip).collect();
        if runs.is_empty() {
            return RecentFigures::default();
        }
        let ok = runs.iter().filter(|r| r.ok).count();
        let cost: f64 = runs.iter().map(|r| r.cost_usd).sum();
        let mut ms: Vec<u64> = runs.iter().map(|r| r.ms).collect();
        ms.sort_unstable();
        // The lower median (nearest rank).
        let p50 = ms[(ms.len() - 1) / 2];
        RecentFigures {
            runs: runs.len() as u64,
            success_rate: Some(ok as f64 / runs.len() as f64),
            p50_ms: Some(p50),
            cost_per_success: Some(cost / ok.max(1) as f64),
        }
    }

    /// successes / runs; 0 without runs.
    pub fn success_rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.successes as f64 / self.runs as f64
        }
    }

    /// Cost per successful attempt; `None` when nothing succeeded.
    pub fn cost_per_success(&self) -> Option<f64> {
        (self.successes > 0).then(|| self.usage.cost_usd / self.successes as f64)
    }

    /// The duration below which `p` (0..=1) of the runs ended; `None` without runs.
    pub fn percentile_ms(&self, p: f64) -> Option<u64> {
        let total: u64 = self.durations.values().sum();
        if total == 0 {
            return None;
        }
        // The rank of the wanted run, 1-based (nearest-rank method).
        let rank = ((p.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min_ms);
        }
        if rank >= total {
            return Some(self.max_ms);
        }
        let mut seen = 0;
        for (i, n) in &self.durations {
            seen += n;
            if seen >= rank {
                return Some(bucket_mid(*i).clamp(self.min_ms, self.max_ms));
            }
        }
        Some(self.max_ms)
    }
}

/// Every profile's record, by name.
pub type Stats = BTreeMap<String, AgentStats>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(agent: &str, number: u32, outcome: Outcome, ms: i64, cost: f64) -> Attempt {
        let mut a = Attempt::new("01OBJ", 0, "s", number);
        a.agent = agent.into();
        a.started_ms = 1_000;
        a.ended_ms = Some(1_000 + ms);
        a.outcome = Some(outcome);
        a.usage.cost_usd = cost;
        a.usage.output_tokens = 10;
        a
    }

    #[test]
    fn counts_runs_successes_retries_and_cost_per_success() {
        let mut s = AgentStats::default();
        s.record(&ended("claude", 1, Outcome::ExitFailure, 100, 0.5));
        s.record(&ended("claude", 2, Outcome::Success, 300, 0.25));
        s.record(&ended("claude", 1, Outcome::Success, 200, 0.25));
        s.record(&ended("claude", 1, Outcome::Cancelled, 50, 1.0));
        assert_eq!((s.runs, s.successes, s.retries, s.cancelled), (3, 2, 1, 1));
        assert!((s.success_rate() - 2.0 / 3.0).abs() < 1e-9);
        // A cancelled attempt's cost was spent all the same.
        assert_eq!(s.cost_per_success(), Some(1.0));
        assert_eq!(s.usage.output_tokens, 40);
        assert_eq!((s.min_ms, s.max_ms), (100, 300));
        assert_eq!(s.last_ended_ms, 1_300);
    }

    #[test]
    fn an_attempt_that_has_not_ended_counts_nothing() {
        let mut s = AgentStats::default();
        let mut a = ended("x", 1, Outcome::Success, 10, 1.0);
        a.ended_ms = None;
        s.record(&a);
        assert_eq!(s, AgentStats::default());
        assert_eq!(s.percentile_ms(0.5), None);
        assert_eq!(s.cost_per_success(), None);
        assert_eq!(s.success_rate(), 0.0);
    }

    #[test]
    fn percentiles_are_within_ten_percent() {
        let mut s = AgentStats::default();
        // 1..=1000 seconds, one run each.
        for secs in 1..=1000i64 {
            s.record(&ended("a", 1, Outcome::Success, secs * 1000, 0.0));
        }
        let p50 = s.percentile_ms(0.5).unwrap_or(0) as f64;
        let p95 = s.percentile_ms(0.95).unwrap_or(0) as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.1, "p50 {p50}");
        assert!((p95 / 950_000.0 - 1.0).abs() < 0.1, "p95 {p95}");
        assert_eq!(s.percentile_ms(1.0), Some(1_000_000));
        assert_eq!(s.percentile_ms(0.0), Some(1000));
        // Bounded memory: a bucket per 20 % of range, not a slot per run.
        assert!(s.durations.len() < 60, "{} buckets", s.durations.len());
    }

    #[test]
    fn one_run_reads_back_exactly() {
        let mut s = AgentStats::default();
        s.record(&ended("a", 1, Outcome::Timeout, 1234, 0.0));
        assert_eq!(s.percentile_ms(0.5), Some(1234));
        assert_eq!(s.percentile_ms(0.95), Some(1234));
        assert_eq!(s.successes, 0);
    }

    #[test]
    fn survives_a_json_round_trip() {
        let mut s = AgentStats::default();
        s.record(&ended("a", 2, Outcome::Success, 10, 0.1));
        let text = serde_json::to_string(&s).unwrap_or_default();
        let back: AgentStats = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, s);
    }

    #[test]
    fn recent_figures_cover_only_the_latest_runs() {
        let mut s = AgentStats::default();
        assert_eq!(s.recent_figures(5), RecentFigures::default());
        // Ten old slow failures, then five fast successes at $0.10.
        for _ in 0..10 {
            s.record(&ended("a", 1, Outcome::ExitFailure, 9_000, 1.0));
        }
        for ms in [100, 300, 200, 500, 400] {
            s.record(&ended("a", 1, Outcome::Success, ms, 0.1));
        }
        let f = s.recent_figures(5);
        assert_eq!(f.runs, 5);
        assert_eq!(f.success_rate, Some(1.0));
        assert_eq!(f.p50_ms, Some(300));
        assert!((f.cost_per_success.unwrap_or(0.0) - 0.1).abs() < 1e-9);
        // Over the last 10: half failed, and their cost counts against the successes.
        let f = s.recent_figures(10);
        assert_eq!(f.success_rate, Some(0.5));
        assert!((f.cost_per_success.unwrap_or(0.0) - 1.1).abs() < 1e-9);
        // Memory stays bounded.
        for _ in 0..(2 * MAX_RECENT) {
            s.record(&ended("a", 1, Outcome::Success, 1, 0.0));
        }
        assert_eq!(s.recent.len(), MAX_RECENT);
    }

    #[test]
    fn recent_cost_without_a_success_is_the_whole_cost() {
        let mut s = AgentStats::default();
        s.record(&ended("a", 1, Outcome::ExitFailure, 10, 0.3));
        s.record(&ended("a", 1, Outcome::Timeout, 10, 0.2));
        let f = s.recent_figures(20);
        assert_eq!(f.success_rate, Some(0.0));
        assert!((f.cost_per_success.unwrap_or(0.0) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn literal_commands_count_under_command() {
        assert_eq!(agent_of(&ended("", 1, Outcome::Success, 1, 0.0)), COMMAND);
        assert_eq!(
            agent_of(&ended("codex", 1, Outcome::Success, 1, 0.0)),
            "codex"
        );
    }
}
