//! Validation of an `ObjectiveSpec`, shared by `orchctl` (early, naming the file) and
//! `orchd` (authoritative: nothing invalid is ever stored). Also computes the execution
//! order as parallel groups, which names any dependency cycle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::v1::{Limits, ObjectiveSpec, RetryPolicy, StepDefaults, StepSpec};

/// Most steps in one objective.
pub const MAX_STEPS: usize = 1000;
/// Largest plan file / encoded spec.
pub const MAX_SPEC_BYTES: usize = 4 << 20;
/// Largest argv of one step, all elements together.
pub const MAX_ARGV_BYTES: usize = 256 << 10;
/// Largest environment of one step (or of the submitting client), keys and values together.
pub const MAX_ENV_BYTES: usize = 256 << 10;
/// Largest prompt.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
/// Longest objective name, step id and agent name.
pub const MAX_NAME_BYTES: usize = 200;
/// Longest duration (`timeout`, `idle_timeout`, `initial_backoff`, `max_backoff`): 365 days.
pub const MAX_DURATION_MS: u64 = 365 * 86_400_000;
/// Largest memory limit: 1 PiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Largest CPU-time limit: 10^10 s (about 317 CPU-years).
pub const MAX_CPU_SECONDS: u64 = 10_000_000_000;
/// Largest `pids` limit: the kernel's highest possible pid_max (2^22).
pub const MAX_PIDS: u64 = 1 << 22;
/// Largest `open_files` limit: 2^30 (beyond the kernel's `nr_open` ceiling anyway).
pub const MAX_OPEN_FILES: u64 = 1 << 30;
/// Largest `cpu_quota`, in cores: 8192 (the most CPUs a Linux kernel is built for).
pub const MAX_CPU_QUOTA: f64 = 8192.0;
/// Largest retry `multiplier`.
pub const MAX_MULTIPLIER: f64 = 100.0;

/// A validation failure: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Path of the field, e.g. `steps[fix].needs`.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for SpecError {}

fn err(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Checks everything about a spec that does not need the daemon's config.
/// `agents`, when given, is the set of agent profiles the daemon knows.
pub fn validate_spec(
    spec: &ObjectiveSpec,
    agents: Option<&HashSet<String>>,
) -> Result<(), SpecError> {
    if spec.name.trim().is_empty() {
        return Err(err("name", "must not be empty"));
    }
    if spec.name.len() > MAX_NAME_BYTES {
        return Err(err("name", format!("longer than {MAX_NAME_BYTES} bytes")));
    }
    if spec.goal.len() > MAX_PROMPT_BYTES {
        return Err(err("goal", format!("longer than {MAX_PROMPT_BYTES} bytes")));
    }
    if let Some(b) = spec.budget_usd
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(err(
            "budget_usd",
            format!("must be a non-negative number, got {b}"),
        ));
    }
    if spec.max_tokens == Some(0) {
        return Err(err("max_tokens", "must be at least 1"));
    }
    if let Some(d) = &spec.defaults {
        check_defaults(d, "defaults")?;
    }
    if let Some(p) = &spec.planner {
        return check_planner(spec, p, agents);
    }
    if spec.steps.is_empty() {
        return Err(err(
            "steps",
            "a plan needs at least one step (or a goal and a [planner] table)",
        ));
    }
    if spec.steps.len() > MAX_STEPS {
        return Err(err(
            "steps",
            format!(
                "{} steps is more than the limit of {MAX_STEPS}",
                spec.steps.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let at = if step.id.is_empty() {
            format!("steps[{i}]")
        } else {
            format!("steps[{}]", step.id)
        };
        check_step(step, &at, agents)?;
        if !seen.insert(step.id.as_str()) {
            return Err(err(
                format!("{at}.id"),
                format!("duplicate step id `{}`", step.id),
            ));
        }
    }
    for step in &spec.steps {
        for need in &step.needs {
            if need == &step.id {
                return Err(err(
                    format!("steps[{}].needs", step.id),
                    "a step cannot need itself",
                ));
            }
            if !seen.contains(need.as_str()) {
                return Err(err(
                    format!("steps[{}].needs", step.id),
                    format!("unknown step `{need}`"),
                ));
            }
        }
    }
    parallel_groups(spec).map(|_| ())
}

/// Most plan → execute → verify rounds a goal-only objective may ask for.
pub const MAX_PLANNER_ROUNDS: u32 = 20;

/// A goal-only objective: a goal, a planner agent, at most one way to verify, no steps.
fn check_planner(
    spec: &ObjectiveSpec,
    p: &crate::v1::Planner,
    agents: Option<&HashSet<String>>,
) -> Result<(), SpecError> {
    if !spec.steps.is_empty() {
        return Err(err(
            "steps",
            "a plan with a [planner] table has no steps (the planner proposes them)",
        ));
    }
    if spec.goal.trim().is_empty() {
        return Err(err(
            "goal",
            "a goal-only objective needs a goal for its planner",
        ));
    }
    let known = |field: &str, agent: &str| -> Result<(), SpecError> {
        if let Some(a) = agents
            && !a.contains(agent)
        {
            let mut names: Vec<&str> = a.iter().map(String::as_str).collect();
            names.sort_unstable();
            return Err(err(
                field,
                format!("unknown agent `{agent}` (known: {})", names.join(", ")),
            ));
        }
        Ok(())
    };
    if p.agent.trim().is_empty() {
        return Err(err("planner.agent", "must name an agent profile"));
    }
    known("planner.agent", &p.agent)?;
    if !p.verifier.is_empty() && !p.verify_command.is_empty() {
        return Err(err(
            "planner.verifier",
            "give verifier or verify_command, not both",
        ));
    }
    if !p.verifier.is_empty() {
        known("planner.verifier", &p.verifier)?;
    }
    if p.verify_command.first().is_some_and(|c| c.is_empty()) {
        return Err(err(
            "planner.verify_command",
            "the program must not be empty",
        ));
    }
    if p.max_rounds > MAX_PLANNER_ROUNDS {
        return Err(err(
            "planner.max_rounds",
            format!(
                "{} is more than the limit of {MAX_PLANNER_ROUNDS}",
                p.max_rounds
            ),
        ));
    }
    Ok(())
}

fn check_step(
    step: &StepSpec,
    at: &str,
    agents: Option<&HashSet<String>>,
) -> Result<(), SpecError> {
    if step.id.is_empty() {
        return Err(err(format!("{at}.id"), "must not be empty"));
    }
    check_executor(&step.executor, at)?;
    check_workspace(&step.workspace, at)?;
    if step.id.len() > MAX_NAME_BYTES
        || !step
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(err(
            format!("{at}.id"),
            format!(
                "`{}` is not a valid step id (letters, digits, `-`, `_`, `.`; at most {MAX_NAME_BYTES} bytes)",
                step.id
            ),
        ));
    }
    match (step.agent.is_empty(), step.command.is_empty()) {
        (true, true) => {
            return Err(err(at, "needs either `command` or `agent` (with `prompt`)"));
        }
        (false, false) => {
            return Err(err(at, "has both `command` and `agent`; give one"));
        }
        (true, false) => {
            if step.command[0].is_empty() {
                return Err(err(
                    format!("{at}.command"),
                    "the program (first element) is empty",
                ));
            }
            if !step.prompt.is_empty() {
                return Err(err(format!("{at}.prompt"), "a prompt needs an `agent`"));
            }
        }
        (false, true) => {
            if let Some(known) = agents
                && step.agent != ROUTED_AGENT
                && !known.contains(&step.agent)
            {
                let mut names: Vec<&str> = known.iter().map(String::as_str).collect();
                names.sort_unstable();
                return Err(err(
                    format!("{at}.agent"),
                    format!(
                        "unknown agent `{}` (known: {})",
                        step.agent,
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    let argv: usize = step.command.iter().map(|a| a.len() + 1).sum();
    if argv > MAX_ARGV_BYTES {
        return Err(err(
            format!("{at}.command"),
            format!("{argv} bytes is more than the limit of {MAX_ARGV_BYTES}"),
        ));
    }
    if step.command.iter().any(|a| a.contains('\0')) {
        return Err(err(format!("{at}.command"), "contains a NUL byte"));
    }
    if step.prompt.len() > MAX_PROMPT_BYTES {
        return Err(err(
            format!("{at}.prompt"),
            format!("longer than {MAX_PROMPT_BYTES} bytes"),
        ));
    }
    check_env(&step.env, &format!("{at}.env"))?;
    if step.workdir.contains('\0') {
        return Err(err(format!("{at}.workdir"), "contains a NUL byte"));
    }
    check_timeouts(step.timeout_ms, step.idle_timeout_ms, at)?;
    if let Some(r) = &step.retry {
        check_retry(r, &format!("{at}.retry"))?;
    }
    if let Some(l) = &step.limits {
        check_limits(l, &format!("{at}.limits"))?;
    }
    check_route(step, at)?;
    for (i, f) in step.fallback.iter().enumerate() {
        if let Some(known) = agents
            && !known.contains(f)
        {
            return Err(err(
                format!("{at}.fallback[{i}]"),
                format!("unknown agent `{f}`"),
            ));
        }
    }
    Ok(())
}

/// The agent name of a routed step: orchd picks a profile at each attempt by `route`.
pub const ROUTED_AGENT: &str = "auto";

/// The priorities a routed step may ask for.
pub const ROUTE_PRIORITIES: [&str; 3] = ["cost", "quality", "speed"];

/// A routed step (`agent = "auto"`) has a valid `route`, and only a routed step has one.
pub fn check_route(step: &StepSpec, at: &str) -> Result<(), SpecError> {
    let routed = step.agent == ROUTED_AGENT;
    let Some(r) = &step.route else {
        return Ok(());
    };
    if !routed {
        return Err(err(
            format!("{at}.route"),
            "a route needs `agent = \"auto\"`",
        ));
    }
    if !r.priority.is_empty() && !ROUTE_PRIORITIES.contains(&r.priority.as_str()) {
        return Err(err(
            format!("{at}.route.priority"),
            format!(
                "`{}` is not one of {}",
                r.priority,
                ROUTE_PRIORITIES.join(", ")
            ),
        ));
    }
    if !step.fallback.is_empty() {
        return Err(err(
            format!("{at}.fallback"),
            "a routed step (agent = \"auto\") chooses among every profile; give no fallback list",
        ));
    }
    if let Some((i, _)) = r
        .tags
        .iter()
        .enumerate()
        .find(|(_, t)| t.trim().is_empty() || t.len() > MAX_NAME_BYTES)
    {
        return Err(err(
            format!("{at}.route.tags[{i}]"),
            format!("must be a non-empty word of at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks an environment map (names valid, total size bounded).
pub fn check_env(env: &HashMap<String, String>, at: &str) -> Result<(), SpecError> {
    let mut total = 0;
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(err(
                at,
                format!("`{k}` is not a valid environment variable name"),
            ));
        }
        total += k.len() + v.len() + 2;
    }
    if total > MAX_ENV_BYTES {
        return Err(err(
            at,
            format!("{total} bytes is more than the limit of {MAX_ENV_BYTES}"),
        ));
    }
    Ok(())
}

/// Checks a duration: longer than zero, at most [`MAX_DURATION_MS`].
pub fn check_duration(ms: Option<u64>, at: &str) -> Result<(), SpecError> {
    match ms {
        Some(0) => Err(err(at, "must be longer than zero")),
        Some(ms) if ms > MAX_DURATION_MS => Err(err(
            at,
            format!(
                "{} is longer than the limit of 365 days",
                crate::units::format_duration_ms(ms)
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks a step's (or the defaults') `timeout` and `idle_timeout`.
pub fn check_timeouts(timeout: Option<u64>, idle: Option<u64>, at: &str) -> Result<(), SpecError> {
    check_duration(timeout, &format!("{at}.timeout"))?;
    check_duration(idle, &format!("{at}.idle_timeout"))
}

/// The executors a step may name (`executor = "..."`; empty = the plan's default, then local).
pub const EXECUTORS: [&str; 2] = ["local", "slurm"];

/// Checks a step's (or the defaults') `executor`.
pub fn check_executor(name: &str, at: &str) -> Result<(), SpecError> {
    if name.is_empty() || EXECUTORS.contains(&name) {
        return Ok(());
    }
    Err(err(
        format!("{at}.executor"),
        format!(
            "unknown executor `{name}` (known: {})",
            EXECUTORS.join(", ")
        ),
    ))
}

/// Where a step's attempts may work (`workspace = "..."`; empty = the plan's default,
/// then shared).
pub const WORKSPACES: [&str; 3] = ["shared", "worktree", "scratch"];

/// Checks a step's (or the defaults') `workspace`.
pub fn check_workspace(name: &str, at: &str) -> Result<(), SpecError> {
    if name.is_empty() || WORKSPACES.contains(&name) {
        return Ok(());
    }
    Err(err(
        format!("{at}.workspace"),
        format!(
            "unknown workspace `{name}` (known: {})",
            WORKSPACES.join(", ")
        ),
    ))
}

fn check_defaults(d: &StepDefaults, at: &str) -> Result<(), SpecError> {
    check_executor(&d.executor, at)?;
    check_workspace(&d.workspace, at)?;
    check_timeouts(d.timeout_ms, d.idle_timeout_ms, at)?;
    if let Some(r) = &d.retry {
        check_retry(r, &format!("{at}.retry"))?;
    }
    if let Some(l) = &d.limits {
        check_limits(l, &format!("{at}.limits"))?;
    }
    Ok(())
}

/// Checks a retry policy's numbers.
pub fn check_retry(r: &RetryPolicy, at: &str) -> Result<(), SpecError> {
    if r.max_attempts == Some(0) {
        return Err(err(
            format!("{at}.max_attempts"),
            "must be at least 1 (the first attempt counts)",
        ));
    }
    if let Some(m) = r.multiplier
        && !(m.is_finite() && (1.0..=MAX_MULTIPLIER).contains(&m))
    {
        return Err(err(
            format!("{at}.multiplier"),
            format!("must be between 1 and {MAX_MULTIPLIER}, got {m}"),
        ));
    }
    for (name, ms) in [
        ("initial_backoff", r.initial_backoff_ms),
        ("max_backoff", r.max_backoff_ms),
    ] {
        if let Some(ms) = ms
            && ms > MAX_DURATION_MS
        {
            return Err(err(
                format!("{at}.{name}"),
                format!(
                    "{} is longer than the limit of 365 days",
                    crate::units::format_duration_ms(ms)
                ),
            ));
        }
    }
    if let Some(j) = r.jitter
        && !(0.0..=1.0).contains(&j)
    {
        return Err(err(
            format!("{at}.jitter"),
            format!("must be between 0 and 1, got {j}"),
        ));
    }
    if let (Some(i), Some(m)) = (r.initial_backoff_ms, r.max_backoff_ms)
        && m < i
    {
        return Err(err(
            format!("{at}.max_backoff"),
            "must not be shorter than initial_backoff",
        ));
    }
    let mut on_failure: Vec<_> = r.on_failure.iter().collect();
    on_failure.sort();
    for (class, action) in on_failure {
        crate::words::check_on_failure(class, action)
            .map_err(|problem| err(format!("{at}.on_failure.{class}"), problem))?;
    }
    Ok(())
}

/// Checks resource limits (every limit, when set, is positive and within its bound).
pub fn check_limits(l: &Limits, at: &str) -> Result<(), SpecError> {
    let named = [
        ("memory", l.memory_bytes, MAX_MEMORY_BYTES, "1024T (1 PiB)"),
        ("cpu_seconds", l.cpu_seconds, MAX_CPU_SECONDS, "10000000000"),
        ("pids", l.pids, MAX_PIDS, "4194304"),
        ("open_files", l.open_files, MAX_OPEN_FILES, "1073741824"),
    ];
    for (name, v, max, shown) in named {
        match v {
            Some(0) => {
                return Err(err(format!("{at}.{name}"), "must be greater than zero"));
            }
            Some(v) if v > max => {
                return Err(err(
                    format!("{at}.{name}"),
                    format!("{v} is more than the limit of {shown}"),
                ));
            }
            _ => {}
        }
    }
    if let Some(m) = l.memory_bytes
        && m < 1 << 20
    {
        return Err(err(
            format!("{at}.memory"),
            format!("{m} bytes is below the minimum of 1M"),
        ));
    }
    if let Some(q) = l.cpu_quota
        && !(q.is_finite() && q > 0.0 && q <= MAX_CPU_QUOTA)
    {
        return Err(err(
            format!("{at}.cpu_quota"),
            format!("must be a positive number of cores up to {MAX_CPU_QUOTA}, got {q}"),
        ));
    }
    Ok(())
}

/// The steps in waves that may run in parallel, in execution order (Kahn's algorithm).
/// Fails naming the cycle when the `needs` graph has one.
pub fn parallel_groups(spec: &ObjectiveSpec) -> Result<Vec<Vec<String>>, SpecError> {
    let index: HashMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut indegree: Vec<usize> = spec.steps.iter().map(|s| s.needs.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); spec.steps.len()];
    for (i, s) in spec.steps.iter().enumerate() {
        for n in &s.needs {
            match index.get(n.as_str()) {
                Some(&j) => dependents[j].push(i),
                None => {
                    return Err(err(
                        format!("steps[{}].needs", s.id),
                        format!("unknown step `{n}`"),
                    ));
                }
            }
        }
    }
    let mut groups = Vec::new();
    let mut wave: Vec<usize> = (0..spec.steps.len())
        .filter(|&i| indegree[i] == 0)
        .collect();
    let mut done = 0;
    while !wave.is_empty() {
        done += wave.len();
        let mut next = Vec::new();
        for &i in &wave {
            for &d in &dependents[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    next.push(d);
                }
            }
        }
        next.sort_unstable();
        groups.push(wave.iter().map(|&i| spec.steps[i].id.clone()).collect());
        wave = next;
    }
    if done < spec.steps.len() {
        let cycle = find_cycle(spec, &index);
        return Err(err(
            format!(
                "steps[{}].needs",
                cycle.first().map(String::as_str).unwrap_or("?")
            ),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(groups)
}

/// Finds one cycle (as step ids, first repeated at the end) by depth-first search.
fn find_cycle(spec: &ObjectiveSpec, index: &HashMap<&str, usize>) -> Vec<String> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut color = vec![0u8; spec.steps.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn dfs(
        v: usize,
        spec: &ObjectiveSpec,
        index: &HashMap<&str, usize>,
        color: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        color[v] = 1;
        stack.push(v);
        for n in &spec.steps[v].needs {
            let Some(&w) = index.get(n.as_str()) else {
                continue;
            };
            if color[w] == 1 {
                let start = stack.iter().position(|&x| x == w).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(w);
                return Some(cycle);
            }
            if color[w] == 0
                && let Some(c) = dfs(w, spec, index, color, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        color[v] = 2;
        None
    }
    for v in 0..spec.steps.len() {
        if color[v] == 0
            && let Some(c) = dfs(v, spec, index, &mut color, &mut stack)
        {
            return c.into_iter().map(|i| spec.steps[i].id.clone()).collect();
        }
    }
    Vec::new()
}

/// Counts of steps by position, for summaries: `id → plan index`.
pub fn step_index(spec: &ObjectiveSpec) -> BTreeMap<String, usize> {
    spec.steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, needs: &[&str]) -> StepSpec {
        StepSpec {
            id: id.into(),
            command: vec!["true".into()],
            needs: needs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn spec(steps: Vec<StepSpec>) -> ObjectiveSpec {
        ObjectiveSpec {
            name: "t".into(),
            steps,
            ..Default::default()
        }
    }

    #[test]
    fn diamond_groups() {
        let s = spec(vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ]);
        assert_eq!(validate_spec(&s, None), Ok(()));
        assert_eq!(
            parallel_groups(&s).unwrap(),
            vec![
                vec!["a".to_string()],
                vec!["b".into(), "c".into()],
                vec!["d".into()]
            ]
        );
    }

    #[test]
    fn an_unknown_executor_is_named() {
        let mut s = spec(vec![step("a", &[])]);
        s.steps[0].executor = "slurm".into();
        assert_eq!(validate_spec(&s, None), Ok(()));
        s.steps[0].executor = "k8s".into();
        let e = validate_spec(&s, None).unwrap_err();
        assert_eq!(e.field, "steps[a].executor");
        assert!(e.problem.contains("unknown executor `k8s`"), "{e}");
        s.steps[0].executor = String::new();
        s.defaults = Some(StepDefaults {
            executor: "lsf".into(),
            ..Default::default()
        });
        let e = validate_spec(&s, None).unwrap_err();
        assert_eq!(e.field, "defaults.executor");
    }

    #[test]
    fn cycle_is_named() {
        let s = spec(vec![
            step("a", &["c"]),
            step("b", &["a"]),
            step("c", &["b"]),
            step("x", &[]),
        ]);
        let e = validate_spec(&s, None).unwrap_err();
        assert!(e.problem.contains("dependency cycle"), "{e}");
        assert!(
            e.problem.contains("a") && e.problem.contains("b") && e.problem.contains("c"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_and_unknown() {
        let e = validate_spec(&spec(vec![step("a", &[]), step("a", &[])]), None).unwrap_err();
        assert_eq!(e.field, "steps[a].id");
        let e = validate_spec(&spec(vec![step("a", &["zz"])]), None).unwrap_err();
        assert_eq!(e.field, "steps[a].needs");
        assert!(e.problem.contains("zz"));
    }

    #[test]
    fn empty_command_and_bad_agent() {
        let mut s = step("a", &[]);
        s.command = vec![String::new()];
        assert_eq!(
            validate_spec(&spec(vec![s]), None).unwrap_err().field,
            "steps[a].command"
        );
        let mut s = step("a", &[]);
        s.command.clear();
        s.agent = "nope".into();
        let known: HashSet<String> = ["shell".to_string()].into();
        let e = validate_spec(&spec(vec![s]), Some(&known)).unwrap_err();
        assert_eq!(e.field, "steps[a].agent");
        assert!(e.problem.contains("unknown agent `nope`"));
    }

    #[test]
    fn numbers_beyond_their_bounds_name_the_key() {
        let at = |edit: fn(&mut StepSpec)| {
            let mut s = step("a", &[]);
            edit(&mut s);
            validate_spec(&spec(vec![s]), None).map_err(|e| e.field)
        };
        assert_eq!(
            at(|s| s.timeout_ms = Some(u64::MAX)),
            Err("steps[a].timeout".into())
        );
        assert_eq!(
            at(|s| s.idle_timeout_ms = Some(MAX_DURATION_MS + 1)),
            Err("steps[a].idle_timeout".into())
        );
        assert_eq!(at(|s| s.timeout_ms = Some(MAX_DURATION_MS)), Ok(()));
        let e = check_retry(
            &RetryPolicy {
                multiplier: Some(1e308),
                ..Default::default()
            },
            "r",
        );
        assert_eq!(e.map_err(|e| e.field), Err("r.multiplier".into()));
        let e = check_retry(
            &RetryPolicy {
                initial_backoff_ms: Some(u64::MAX),
                max_backoff_ms: Some(u64::MAX),
                ..Default::default()
            },
            "r",
        );
        assert_eq!(e.map_err(|e| e.field), Err("r.initial_backoff".into()));
        for (field, limits) in [
            (
                "memory",
                Limits {
                    memory_bytes: Some(u64::MAX),
                    ..Default::default()
                },
            ),
            (
                "cpu_seconds",
                Limits {
                    cpu_seconds: Some(u64::MAX),
                    ..Default::default()
                },
            ),
            (
                "pids",
                Limits {
                    pids: Some(MAX_PIDS + 1),
                    ..Default::default()
                },
            ),
            (
                "open_files",
                Limits {
                    open_files: Some(u64::MAX),
                    ..Default::default()
                },
            ),
            (
                "cpu_quota",
                Limits {
                    cpu_quota: Some(1e308),
                    ..Default::default()
                },
            ),
            (
                "cpu_quota",
                Limits {
                    cpu_quota: Some(f64::NAN),
                    ..Default::default()
                },
            ),
        ] {
            let e = check_limits(&limits, "l").unwrap_err();
            assert_eq!(e.field, format!("l.{field}"), "{e}");
            assert!(
                e.problem.contains("limit") || e.problem.contains("up to"),
                "{e}"
            );
        }
        let at_the_bounds = Limits {
            memory_bytes: Some(MAX_MEMORY_BYTES),
            cpu_seconds: Some(MAX_CPU_SECONDS),
            pids: Some(MAX_PIDS),
            open_files: Some(MAX_OPEN_FILES),
            cpu_quota: Some(MAX_CPU_QUOTA),
        };
        assert_eq!(check_limits(&at_the_bounds, "l"), Ok(()));
    }

    #[test]
    fn a_budget_that_is_not_an_amount_is_refused() {
        for b in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            let mut s = spec(vec![step("a", &[])]);
            s.budget_usd = Some(b);
            assert_eq!(validate_spec(&s, None).unwrap_err().field, "budget_usd");
        }
    }

    #[test]
    fn bounds() {
        let mut s = step("a", &[]);
        s.command = vec!["x".repeat(MAX_ARGV_BYTES)];
        assert!(
            validate_spec(&spec(vec![s]), None)
                .unwrap_err()
                .problem
                .contains("limit")
        );
        let many: Vec<StepSpec> = (0..=MAX_STEPS)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        assert_eq!(validate_spec(&spec(many), None).unwrap_err().field, "steps");
    }

    #[test]
    fn goal_only_specs() {
        use crate::v1::Planner;
        let known: HashSet<String> = ["plan".to_string(), "judge".to_string()].into();
        let good = ObjectiveSpec {
            name: "g".into(),
            goal: "make it fast".into(),
            planner: Some(Planner {
                agent: "plan".into(),
                verifier: "judge".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(validate_spec(&good, Some(&known)), Ok(()));
        let with = |f: &dyn Fn(&mut ObjectiveSpec)| {
            let mut s = good.clone();
            f(&mut s);
            validate_spec(&s, Some(&known)).unwrap_err()
        };
        // (field, what breaks it)
        type Breaks = Box<dyn Fn(&mut ObjectiveSpec)>;
        let cases: Vec<(&str, Breaks)> = vec![
            ("goal", Box::new(|s| s.goal = " ".into())),
            (
                "steps",
                Box::new(|s| {
                    s.steps.push(StepSpec {
                        id: "a".into(),
                        command: vec!["true".into()],
                        ..Default::default()
                    })
                }),
            ),
            (
                "planner.agent",
                Box::new(|s| {
                    if let Some(p) = s.planner.as_mut() {
                        p.agent = "ghost".into()
                    }
                }),
            ),
            (
                "planner.agent",
                Box::new(|s| {
                    if let Some(p) = s.planner.as_mut() {
                        p.agent = String::new()
                    }
                }),
            ),
            (
                "planner.verifier",
                Box::new(|s| {
                    if let Some(p) = s.planner.as_mut() {
                        p.verifier = "ghost".into()
                    }
                }),
            ),
            (
                "planner.verifier",
                Box::new(|s| {
                    if let Some(p) = s.planner.as_mut() {
                        p.verify_command = vec!["true".into()]
                    }
                }),
            ),
            (
                "planner.verify_command",
                Box::new(|s| {
                    if let Some(p) = s.planner.as_mut() {
                        p.verifier = String::new();
                        p.verify_command = vec![String::new()]
                    }
                }),
            ),
            (
                "planner.max_rounds",
                Box::new(|s| {
                    if let Some(p) = s.planner.as_mut() {
                        p.max_rounds = MAX_PLANNER_ROUNDS + 1
                    }
                }),
            ),
        ];
        for (field, breaks) in cases {
            assert_eq!(with(&*breaks).field, field);
        }
        // Without the daemon's agent list, agent names are not checked.
        let mut s = good.clone();
        if let Some(p) = s.planner.as_mut() {
            p.agent = "anyone".into();
        }
        assert_eq!(validate_spec(&s, None), Ok(()));
    }
}
