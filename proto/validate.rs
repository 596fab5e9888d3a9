//! Validation of an `ObjectiveSpec`, shared by `orchctl` (early, naming the file) and
//! `orchd` (authoritative: nothing invalid is ever stored). Also computes the execution
//! order as parallel groups, which names any dependency cycle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::units::{MAX_DURATION_MS, format_duration_ms};
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
    if spec.steps.is_empty() {
        return Err(err("steps", "a plan needs at least one step"));
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

fn check_step(
    step: &StepSpec,
    at: &str,
    agents: Option<&HashSet<String>>,
) -> Result<(), SpecError> {
    if step.id.is_empty() {
        return Err(err(format!("{at}.id"), "must not be empty"));
    }
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
    if step.timeout_ms == Some(0) {
        return Err(err(format!("{at}.timeout"), "must be longer than zero"));
    }
    if step.idle_timeout_ms == Some(0) {
        return Err(err(
            format!("{at}.idle_timeout"),
            "must be longer than zero",
        ));
    }
    check_duration(step.timeout_ms, || format!("{at}.timeout"))?;
    check_duration(step.idle_timeout_ms, || format!("{at}.idle_timeout"))?;
    if let Some(r) = &step.retry {
        check_retry(r, &format!("{at}.retry"))?;
    }
    if let Some(l) = &step.limits {
        check_limits(l, &format!("{at}.limits"))?;
    }
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

fn check_defaults(d: &StepDefaults, at: &str) -> Result<(), SpecError> {
    if d.timeout_ms == Some(0) {
        return Err(err(format!("{at}.timeout"), "must be longer than zero"));
    }
    if d.idle_timeout_ms == Some(0) {
        return Err(err(
            format!("{at}.idle_timeout"),
            "must be longer than zero",
        ));
    }
    check_duration(d.timeout_ms, || format!("{at}.timeout"))?;
    check_duration(d.idle_timeout_ms, || format!("{at}.idle_timeout"))?;
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
        && !(m.is_finite() && m >= 1.0)
    {
        return Err(err(
            format!("{at}.multiplier"),
            format!("must be at least 1.0, got {m}"),
        ));
    }
    if let Some(j) = r.jitter
        && !(0.0..=1.0).contains(&j)
    {
        return Err(err(
            format!("{at}.jitter"),
            format!("must be between 0 and 1, got {j}"),
        ));
    }
    check_duration(r.initial_backoff_ms, || format!("{at}.initial_backoff"))?;
    check_duration(r.max_backoff_ms, || format!("{at}.max_backoff"))?;
    if let (Some(i), Some(m)) = (r.initial_backoff_ms, r.max_backoff_ms)
        && m < i
    {
        return Err(err(
            format!("{at}.max_backoff"),
            "must not be shorter than initial_backoff",
        ));
    }
    Ok(())
}

/// Checks resource limits (every limit, when set, is positive).
pub fn check_limits(l: &Limits, at: &str) -> Result<(), SpecError> {
    let named = [
        ("memory", l.memory_bytes),
        ("cpu_seconds", l.cpu_seconds),
        ("pids", l.pids),
        ("open_files", l.open_files),
    ];
    for (name, v) in named {
        if v == Some(0) {
            return Err(err(format!("{at}.{name}"), "must be greater than zero"));
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
    check_duration(l.cpu_seconds.map(|s| s.saturating_mul(1000)), || {
        format!("{at}.cpu_seconds")
    })?;
    if let Some(q) = l.cpu_quota
        && !(q.is_finite() && q > 0.0)
    {
        return Err(err(
            format!("{at}.cpu_quota"),
            format!("must be a positive number of cores, got {q}"),
        ));
    }
    Ok(())
}

/// A duration a client sent as milliseconds: at most `MAX_DURATION_MS` (plan files get
/// the same limit from `units::parse_duration_ms`).
fn check_duration(ms: Option<u64>, field: impl FnOnce() -> String) -> Result<(), SpecError> {
    match ms {
        Some(ms) if ms > MAX_DURATION_MS => Err(err(
            field(),
            format!(
                "longer than the limit of {}",
                format_duration_ms(MAX_DURATION_MS)
            ),
        )),
        _ => Ok(()),
    }
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

    /// Found with the submit_spec fuzz target (fuzz/corpus/submit_spec/huge-durations):
    /// durations sent as milliseconds past what the daemon's `i64` time arithmetic holds
    /// (a timeout, a backoff, `cpu_seconds` counted in ms) were accepted.
    #[test]
    fn durations_over_the_limit() {
        let mut s = step("a", &[]);
        s.timeout_ms = Some(MAX_DURATION_MS);
        assert_eq!(validate_spec(&spec(vec![s.clone()]), None), Ok(()));
        s.timeout_ms = Some(u64::MAX);
        let e = validate_spec(&spec(vec![s]), None).unwrap_err();
        assert_eq!(e.field, "steps[a].timeout");
        assert!(e.problem.contains("limit of 100years"), "{e}");
        let mut s = step("a", &[]);
        s.limits = Some(Limits {
            cpu_seconds: Some(u64::MAX / 1000 + 1),
            ..Default::default()
        });
        let e = validate_spec(&spec(vec![s]), None).unwrap_err();
        assert_eq!(e.field, "steps[a].limits.cpu_seconds");
        let mut t = spec(vec![step("a", &[])]);
        t.defaults = Some(StepDefaults {
            retry: Some(RetryPolicy {
                max_backoff_ms: Some(1 << 63),
                ..Default::default()
            }),
            idle_timeout_ms: Some(1),
            ..Default::default()
        });
        let e = validate_spec(&t, None).unwrap_err();
        assert_eq!(e.field, "defaults.retry.max_backoff");
    }
}
