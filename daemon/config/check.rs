//! Checks of the daemon config that serde cannot make: ranges, names, templates, and the
//! numbers that would overflow or mean nothing (the same bounds as a submitted plan's).

use super::*;

impl Config {
    /// Checks values serde cannot (ranges, names, templates).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.max_parallel == Some(0) {
            return Err(invalid(origin, "max_parallel", "must be at least 1"));
        }
        if let Some((key, problem)) = self.routing_problem() {
            return Err(invalid(origin, &key, problem));
        }
        if !matches!(
            self.limits_backend.as_str(),
            "auto" | "cgroup-v2" | "rlimit"
        ) {
            return Err(invalid(
                origin,
                "limits_backend",
                format!(
                    "`{}` is not one of auto, cgroup-v2, rlimit",
                    self.limits_backend
                ),
            ));
        }
        if let Some(l) = self.host.max_load
            && !(l.is_finite() && l > 0.0)
        {
            return Err(invalid(
                origin,
                "host.max_load",
                format!("must be a positive number, got {l}"),
            ));
        }
        for (i, rule) in self.safety.require_approval.iter().enumerate() {
            if let Err(e) = crate::engine::machine::safety::check_rule(rule) {
                return Err(invalid(origin, &format!("safety.require_approval[{i}]"), e));
            }
        }
        let r = &self.defaults.retry;
        if let Some(err) = retry_problem(r) {
            return Err(invalid(origin, &format!("defaults.retry.{}", err.0), err.1));
        }
        if let Some(w) = r
            .retry_on
            .iter()
            .flatten()
            .find(|w| orch_proto::words::parse_outcome(w).is_none())
        {
            return Err(invalid(
                origin,
                "defaults.retry.retry_on",
                format!("unknown outcome `{w}`"),
            ));
        }
        for (class, action) in r.on_failure.iter().flatten() {
            if let Err(problem) = OnFailure::parse_entry(class, action) {
                return Err(invalid(
                    origin,
                    &format!("defaults.retry.on_failure.{class}"),
                    problem,
                ));
            }
        }
        if let Some(sl) = &self.executors.slurm {
            if !sl.output_dir.is_absolute() {
                return Err(invalid(
                    origin,
                    "executors.slurm.output_dir",
                    "must be set to an absolute path on storage the compute nodes share",
                ));
            }
            if sl.poll_min.0 == 0 || sl.poll_max.0 < sl.poll_min.0 {
                return Err(invalid(
                    origin,
                    "executors.slurm.poll_max",
                    "poll_min must be above 0 and poll_max at least poll_min",
                ));
            }
        }
        for p in &self.budget.alert_percent {
            if !(p.is_finite() && *p > 0.0) {
                return Err(invalid(
                    origin,
                    "budget.alert_percent",
                    format!("{p} is not a positive percentage"),
                ));
            }
        }
        let mut amounts = vec![
            ("budget.daily_usd".to_string(), self.budget.daily_usd),
            ("budget.monthly_usd".to_string(), self.budget.monthly_usd),
            (
                "budget.machine_daily_usd".to_string(),
                self.budget.machine_daily_usd,
            ),
            (
                "budget.machine_monthly_usd".to_string(),
                self.budget.machine_monthly_usd,
            ),
        ];
        for (name, u) in &self.users {
            amounts.push((format!("users.{name}.daily_usd"), u.daily_usd));
            amounts.push((format!("users.{name}.monthly_usd"), u.monthly_usd));
            if u.max_parallel == Some(0) {
                return Err(invalid(
                    origin,
                    &format!("users.{name}.max_parallel"),
                    "must be at least 1",
                ));
            }
        }
        for (k, v) in amounts {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(invalid(
                    origin,
                    &k,
                    format!("{v} is not a non-negative amount"),
                ));
            }
        }
        if self.max_parallel_per_user == Some(0) {
            return Err(invalid(
                origin,
                "max_parallel_per_user",
                "must be at least 1",
            ));
        }
        for (model, p) in &self.prices {
            for (k, v) in [
                ("input_per_mtok", Some(p.input_per_mtok)),
                ("output_per_mtok", Some(p.output_per_mtok)),
                ("cached_input_per_mtok", p.cached_input_per_mtok),
                ("cache_write_per_mtok", p.cache_write_per_mtok),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err(invalid(
                        origin,
                        &format!("prices.{model}.{k}"),
                        format!("{v} is not a non-negative price"),
                    ));
                }
            }
        }
        self.check_numbers(origin)?;
        if let Some((key, problem)) = self.server.problem() {
            return Err(invalid(origin, &format!("server.{key}"), problem));
        }
        if self.logs.max_user_bytes.is_some_and(|s| s.0 < 64 << 10) {
            return Err(invalid(
                origin,
                "logs.max_user_bytes",
                "must be at least 64K (in bytes)",
            ));
        }
        if self.max_sub_objective_depth > 100 {
            return Err(invalid(
                origin,
                "max_sub_objective_depth",
                "must be at most 100",
            ));
        }
        for (name, m) in &self.mcp {
            let key = format!("mcp.{name}");
            match (m.command.first(), &m.url) {
                (Some(program), None) if !program.is_empty() => {}
                (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                    if !m.env.is_empty() {
                        return Err(invalid(
                            origin,
                            &format!("{key}.env"),
                            "is for a `command` server, not a `url` one",
                        ));
                    }
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        origin,
                        &format!("{key}.url"),
                        "must be an http:// or https:// URL",
                    ));
                }
                _ => {
                    return Err(invalid(
                        origin,
                        &key,
                        "give either `command` (a program and its arguments, started over stdio) or `url` (Streamable HTTP)",
                    ));
                }
            }
        }
        for (name, a) in &self.agents {
            for server in &a.mcp {
                if !self.mcp.contains_key(server) {
                    return Err(invalid(
                        origin,
                        &format!("agents.{name}.mcp"),
                        format!("no [mcp.{server}] is configured"),
                    ));
                }
            }
        }
        for (name, a) in &self.agents {
            let key = format!("agents.{name}");
            if a.command.is_empty() || a.command[0].is_empty() {
                return Err(invalid(
                    origin,
                    &format!("{key}.command"),
                    "must name a program",
                ));
            }
            if let Some(p) = &a.prompt
                && crate::model::PromptMode::from_word(p).is_none()
            {
                return Err(invalid(
                    origin,
                    &format!("{key}.prompt"),
                    format!(
                        "`{p}` is not one of {}",
                        crate::model::PromptMode::WORDS.join(", ")
                    ),
                ));
            }
            if !USAGE_FORMATS.contains(&a.usage.as_str()) {
                return Err(invalid(
                    origin,
                    &format!("{key}.usage"),
                    format!("`{}` is not one of {}", a.usage, USAGE_FORMATS.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The numbers serde accepts but that would overflow or mean nothing: the same bounds
    /// as a submitted plan's (`orch_proto::validate`), and prices that are amounts.
    fn check_numbers(&self, origin: &str) -> Result<(), ConfigError> {
        use orch_proto::validate::{self as v, MAX_DURATION_MS, MAX_MULTIPLIER};
        let spec = |e: v::SpecError| invalid(origin, &e.field, e.problem);
        if self.retention.0 > MAX_RETENTION_MS {
            return Err(invalid(
                origin,
                "retention",
                "longer than the limit of 36500 days (100 years)",
            ));
        }
        if self.grace_period.0 > MAX_DURATION_MS {
            return Err(invalid(
                origin,
                "grace_period",
                "longer than the limit of 365 days",
            ));
        }
        if self.rate_limit_wait.0 == 0 || self.rate_limit_wait.0 > MAX_DURATION_MS {
            return Err(invalid(
                origin,
                "rate_limit_wait",
                "must be between 1ms and 365 days",
            ));
        }
        let d = &self.defaults;
        v::check_timeouts(
            d.timeout.map(|x| x.0),
            d.idle_timeout.map(|x| x.0),
            "defaults",
        )
        .map_err(spec)?;
        for (key, ms) in [
            ("defaults.retry.initial_backoff", d.retry.initial_backoff),
            ("defaults.retry.max_backoff", d.retry.max_backoff),
        ] {
            if ms.is_some_and(|ms| ms.0 > MAX_DURATION_MS) {
                return Err(invalid(origin, key, "longer than the limit of 365 days"));
            }
        }
        if let Some(m) = d.retry.multiplier
            && m > MAX_MULTIPLIER
        {
            return Err(invalid(
                origin,
                "defaults.retry.multiplier",
                format!("must be between 1 and {MAX_MULTIPLIER}, got {m}"),
            ));
        }
        v::check_limits(&limits_pb(&d.limits), "defaults.limits").map_err(spec)?;
        for (name, a) in &self.agents {
            let key = format!("agents.{name}");
            v::check_timeouts(a.timeout.map(|x| x.0), a.idle_timeout.map(|x| x.0), &key)
                .map_err(spec)?;
            v::check_limits(&limits_pb(&a.limits), &format!("{key}.limits")).map_err(spec)?;
        }
        for (model, p) in &self.prices {
            for (field, x) in [
                ("input_per_mtok", p.input_per_mtok),
                ("output_per_mtok", p.output_per_mtok),
            ] {
                if !(x.is_finite() && x >= 0.0) {
                    return Err(invalid(
                        origin,
                        &format!("prices.{model}.{field}"),
                        format!("{x} is not a non-negative amount"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A `limits` table as the API's message, for the checks plans get.
fn limits_pb(l: &LimitsConfig) -> orch_proto::v1::Limits {
    orch_proto::v1::Limits {
        memory_bytes: l.memory.map(|s| s.0),
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    }
}

fn retry_problem(r: &RetryConfig) -> Option<(&'static str, String)> {
    if r.max_attempts == Some(0) {
        return Some(("max_attempts", "must be at least 1".into()));
    }
    if let Some(m) = r.multiplier
        && !(m.is_finite() && m >= 1.0)
    {
        return Some(("multiplier", format!("must be at least 1.0, got {m}")));
    }
    if let Some(j) = r.jitter
        && !(0.0..=1.0).contains(&j)
    {
        return Some(("jitter", format!("must be between 0 and 1, got {j}")));
    }
    None
}
