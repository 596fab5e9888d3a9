//! Plan files (TOML, YAML or JSON) → `ObjectiveSpec`, with errors that name the file,
//! the step and the key. Every format is read into one JSON value first so that the
//! same strict schema (unknown keys rejected) and the same messages apply to all three.
//! Before parsing, `guard` bounds the text's nesting and YAML alias expansion.

pub mod guard;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::units::{parse_duration_ms, parse_size};
use crate::v1::{Limits, ObjectiveSpec, RetryPolicy, StepDefaults, StepSpec};
use crate::validate::{MAX_SPEC_BYTES, validate_spec};
use crate::words::parse_outcome;

/// Why a plan file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub file: String,
    /// The key path, e.g. `steps[fix].limits.memory`; empty for whole-file problems.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.problem)
        }
    }
}

impl std::error::Error for PlanError {}

/// A duration written as text (`30s`), kept in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Dur(u64);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a duration as text, e.g. \"500ms\", \"30s\", \"10m\", \"2h\"",
            )
        })?;
        parse_duration_ms(&text).map(Dur).map_err(de::Error::custom)
    }
}

/// A size written as text (`2G`) or plain bytes.
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a size, e.g. \"512K\", \"256M\", \"2G\" or a number of bytes",
            )
        })? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size(&s).map(Size).map_err(de::Error::custom),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<Size>,
    cpu_seconds: Option<u64>,
    pids: Option<u64>,
    open_files: Option<u64>,
    cpu_quota: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    max_attempts: Option<u32>,
    initial_backoff: Option<Dur>,
    max_backoff: Option<Dur>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
    retry_on: Option<Vec<String>>,
    retry_exit_codes: Option<Vec<i32>>,
    max_rate_limit_waits: Option<u32>,
    on_failure: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    retry: Option<RetryFile>,
    limits: Option<LimitsFile>,
    executor: Option<String>,
    workspace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    id: String,
    agent: Option<String>,
    prompt: Option<String>,
    command: Option<Vec<String>>,
    workdir: Option<String>,
    env: Option<BTreeMap<String, String>>,
    needs: Option<Vec<String>>,
    timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    retry: Option<RetryFile>,
    limits: Option<LimitsFile>,
    requires_approval: Option<bool>,
    fallback: Option<Vec<String>>,
    fallback_on_rate_limit: Option<bool>,
    executor: Option<String>,
    route: Option<RouteFile>,
    workspace: Option<String>,
}

/// A routed step's `route = { priority = "cost", tags = ["code"] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    priority: Option<String>,
    tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    name: Option<String>,
    goal: Option<String>,
    budget_usd: Option<f64>,
    max_tokens: Option<u64>,
    priority: Option<i32>,
    defaults: Option<DefaultsFile>,
    #[serde(default)]
    steps: Vec<StepFile>,
    planner: Option<PlannerFile>,
}

/// `[planner]`: a goal-only objective's planner and verifier.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlannerFile {
    agent: String,
    verifier: Option<String>,
    verify_command: Option<Vec<String>>,
    max_rounds: Option<u32>,
    approve_plan: Option<bool>,
}

/// The formats a plan can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    /// The format of a file by its extension (`.toml`, `.yaml`/`.yml`, `.json`).
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Reads and validates a plan file. The objective name defaults to the file stem.
pub fn load_plan_file(path: &Path) -> Result<ObjectiveSpec, PlanError> {
    let file = path.display().to_string();
    let whole = |problem: String| PlanError {
        file: file.clone(),
        key: String::new(),
        problem,
    };
    let format = Format::of(path).ok_or_else(|| {
        whole("unknown plan format (use a .toml, .yaml, .yml or .json file)".into())
    })?;
    let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    if meta.len() > MAX_SPEC_BYTES as u64 {
        return Err(whole(format!(
            "{} bytes is more than the plan size limit of {MAX_SPEC_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    parse_named(&text, Some(format), &file)
}

/// Parses plan text as the file `file` would be read: in `format`, or else the format of
/// `file`'s extension; the objective name defaults to `file`'s stem. `load_plan_file`
/// (orchctl) and orchd's `SubmitRequest.plan_text` both come here, so a plan sent as text
/// means exactly what the same file given to `orchctl submit` means.
pub fn parse_named(
    text: &str,
    format: Option<Format>,
    file: &str,
) -> Result<ObjectiveSpec, PlanError> {
    let path = Path::new(file);
    let format = format
        .or_else(|| Format::of(path))
        .ok_or_else(|| PlanError {
            file: file.to_string(),
            key: String::new(),
            problem: "unknown plan format (give the format, or a file name ending in .toml, \
                  .yaml, .yml or .json)"
                .into(),
        })?;
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_plan(text, format, file, &default_name)
}

/// Parses and validates plan text. `file` names the source in errors.
pub fn parse_plan(
    text: &str,
    format: Format,
    file: &str,
    default_name: &str,
) -> Result<ObjectiveSpec, PlanError> {
    let at = |key: String, problem: String| PlanError {
        file: file.to_string(),
        key,
        problem,
    };
    if text.len() > MAX_SPEC_BYTES {
        return Err(at(
            String::new(),
            format!(
                "{} bytes is more than the plan size limit of {MAX_SPEC_BYTES}",
                text.len()
            ),
        ));
    }
    guard::check(text, format).map_err(|problem| at(String::new(), problem))?;
    let value = read_value(text, format).map_err(|(key, problem)| at(key, problem))?;
    let plan: PlanFile = serde_path_to_error::deserialize(&value).map_err(|e| {
        let key = name_steps(&e.path().to_string(), &value);
        let problem = e.into_inner().to_string();
        at(if key == "." { String::new() } else { key }, problem)
    })?;
    let spec = plan_to_spec(plan, default_name).map_err(|(k, p)| at(k, p))?;
    validate_spec(&spec, None).map_err(|e| at(e.field, e.problem))?;
    Ok(spec)
}

/// What a float that JSON cannot hold is told.
const NOT_FINITE: &str = "must be a finite number";

/// Reads plan text into one JSON value. A float JSON cannot hold (NaN, ±infinity, which
/// TOML and YAML can write) is refused naming its key: `serde_json::Value` would quietly
/// turn it into null, and `budget_usd = nan` would then mean no budget at all.
fn read_value(text: &str, format: Format) -> Result<serde_json::Value, (String, String)> {
    fn finish<E: fmt::Display>(
        read: Result<Finite, serde_path_to_error::Error<E>>,
    ) -> Result<serde_json::Value, (String, String)> {
        read.map(|v| v.0).map_err(|e| {
            let key = e.path().to_string();
            let problem = one_line(&e.into_inner().to_string());
            // Without the format's own framing (TOML quotes the line around it).
            match problem.find(NOT_FINITE) {
                Some(at) => (key, problem[at..].to_string()),
                None => (String::new(), problem),
            }
        })
    }
    match format {
        Format::Toml => {
            let de = toml::de::Deserializer::parse(text)
                .map_err(|e| (String::new(), one_line(&e.to_string())))?;
            finish(serde_path_to_error::deserialize(de))
        }
        Format::Yaml => finish(serde_path_to_error::deserialize(
            serde_yaml_ng::Deserializer::from_str(text),
        )),
        // JSON has no way to write them.
        Format::Json => serde_json::from_str(text).map_err(|e| (String::new(), e.to_string())),
    }
}

/// A JSON value read from any self-describing format, refusing non-finite floats.
struct Finite(serde_json::Value);

impl<'de> Deserialize<'de> for Finite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FiniteVisitor).map(Finite)
    }
}

struct FiniteVisitor;

impl<'de> de::Visitor<'de> for FiniteVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| E::custom(format!("{NOT_FINITE}, got {v}")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Finite::deserialize(d).map(|v| v.0)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Finite::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Finite(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((k, Finite(v))) = map.next_entry::<String, Finite>()? {
            out.insert(k, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// Rewrites `steps[2].x` as `steps[fix].x` when step 2 has the id `fix`.
fn name_steps(path: &str, value: &serde_json::Value) -> String {
    let Some(rest) = path.strip_prefix("steps[") else {
        return path.to_string();
    };
    let Some(close) = rest.find(']') else {
        return path.to_string();
    };
    let Ok(i) = rest[..close].parse::<usize>() else {
        return path.to_string();
    };
    match value
        .get("steps")
        .and_then(|s| s.get(i))
        .and_then(|s| s.get("id"))
        .and_then(|v| v.as_str())
    {
        Some(id) if !id.is_empty() => format!("steps[{id}]{}", &rest[close + 1..]),
        _ => path.to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn retry_spec(r: RetryFile, at: &str) -> Result<RetryPolicy, (String, String)> {
    let mut retry_on = Vec::new();
    for (i, w) in r.retry_on.unwrap_or_default().iter().enumerate() {
        let o = parse_outcome(w).ok_or_else(|| {
            (
                format!("{at}.retry_on[{i}]"),
                format!("unknown outcome `{w}`"),
            )
        })?;
        retry_on.push(o as i32);
    }
    Ok(RetryPolicy {
        max_attempts: r.max_attempts,
        initial_backoff_ms: r.initial_backoff.map(|d| d.0),
        max_backoff_ms: r.max_backoff.map(|d| d.0),
        multiplier: r.multiplier,
        jitter: r.jitter,
        retry_on,
        retry_exit_codes: r.retry_exit_codes.unwrap_or_default(),
        max_rate_limit_waits: r.max_rate_limit_waits,
        on_failure: r.on_failure.unwrap_or_default().into_iter().collect(),
    })
}

fn limits_spec(l: LimitsFile) -> Limits {
    Limits {
        memory_bytes: l.memory.map(|s| s.0),
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    }
}

fn plan_to_spec(plan: PlanFile, default_name: &str) -> Result<ObjectiveSpec, (String, String)> {
    let defaults = match plan.defaults {
        Some(d) => Some(StepDefaults {
            timeout_ms: d.timeout.map(|x| x.0),
            idle_timeout_ms: d.idle_timeout.map(|x| x.0),
            retry: d
                .retry
                .map(|r| retry_spec(r, "defaults.retry"))
                .transpose()?,
            limits: d.limits.map(limits_spec),
            executor: d.executor.unwrap_or_default(),
            workspace: d.workspace.unwrap_or_default(),
        }),
        None => None,
    };
    let mut steps = Vec::with_capacity(plan.steps.len());
    for s in plan.steps {
        let at = format!("steps[{}]", s.id);
        steps.push(StepSpec {
            retry: s.retry.map(|r| retry_spec(r, &at)).transpose()?,
            id: s.id,
            agent: s.agent.unwrap_or_default(),
            prompt: s.prompt.unwrap_or_default(),
            command: s.command.unwrap_or_default(),
            workdir: s.workdir.unwrap_or_default(),
            env: s
                .env
                .unwrap_or_default()
                .into_iter()
                .collect::<HashMap<_, _>>(),
            needs: s.needs.unwrap_or_default(),
            timeout_ms: s.timeout.map(|x| x.0),
            idle_timeout_ms: s.idle_timeout.map(|x| x.0),
            limits: s.limits.map(limits_spec),
            requires_approval: s.requires_approval.unwrap_or(false),
            fallback: s.fallback.unwrap_or_default(),
            fallback_on_rate_limit: s.fallback_on_rate_limit.unwrap_or(false),
            executor: s.executor.unwrap_or_default(),
            route: s.route.map(|r| crate::v1::Route {
                priority: r.priority.unwrap_or_default(),
                tags: r.tags.unwrap_or_default(),
            }),
            workspace: s.workspace.unwrap_or_default(),
        });
    }
    Ok(ObjectiveSpec {
        name: plan
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| default_name.to_string()),
        goal: plan.goal.unwrap_or_default(),
        budget_usd: plan.budget_usd,
        max_tokens: plan.max_tokens,
        priority: plan.priority.unwrap_or(0),
        defaults,
        steps,
        planner: plan.planner.map(|p| crate::v1::Planner {
            agent: p.agent,
            verifier: p.verifier.unwrap_or_default(),
            verify_command: p.verify_command.unwrap_or_default(),
            max_rounds: p.max_rounds.unwrap_or(0),
            approve_plan: p.approve_plan.unwrap_or(false),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_PLAN: &str = r#"
name = "fix-flaky-tests"
goal = "make the test suite pass three times in a row"
budget_usd = 5.0
max_tokens = 2_000_000

[defaults]
timeout = "20m"
idle_timeout = "5m"
retry = { max_attempts = 3, initial_backoff = "2s", max_backoff = "1m", multiplier = 2.0, jitter = 0.2 }
limits = { memory = "2G", cpu_seconds = 1200, pids = 256, open_files = 1024 }

[[steps]]
id = "find"
agent = "claude"
prompt = "list the flaky tests in ./tests"

[[steps]]
id = "fix"
needs = ["find"]
command = ["bash", "-c", "./scripts/fix.sh"]
workdir = "."
env = { RUST_LOG = "info" }
requires_approval = true
fallback = ["codex"]
"#;

    fn toml_err(text: &str) -> PlanError {
        parse_plan(text, Format::Toml, "p.toml", "p").unwrap_err()
    }

    #[test]
    fn planner_table_parses_in_every_format() {
        let toml = "goal = \"g\"\n[planner]\nagent = \"p\"\nverify_command = [\"make\", \"test\"]\nmax_rounds = 2\napprove_plan = true\n";
        let yaml = "goal: g\nplanner:\n  agent: p\n  verify_command: [make, test]\n  max_rounds: 2\n  approve_plan: true\n";
        let json = r#"{"goal":"g","planner":{"agent":"p","verify_command":["make","test"],"max_rounds":2,"approve_plan":true}}"#;
        for (text, format) in [
            (toml, Format::Toml),
            (yaml, Format::Yaml),
            (json, Format::Json),
        ] {
            let s = parse_plan(text, format, "p", "p").unwrap();
            assert!(s.steps.is_empty(), "{format:?}");
            let p = s.planner.unwrap();
            assert_eq!(p.agent, "p");
            assert_eq!(p.verify_command, vec!["make", "test"]);
            assert_eq!((p.max_rounds, p.approve_plan), (2, true));
            assert!(p.verifier.is_empty());
        }
        let e = toml_err("goal = \"g\"\n[planner]\nagent = \"p\"\nrounds = 2\n");
        assert_eq!(e.key, "planner.rounds");
        let e = toml_err("goal = \"g\"\n[planner]\nverifier = \"p\"\n");
        assert!(e.to_string().contains("agent"), "{e}");
    }

    #[test]
    fn contract_example_parses() {
        let s = parse_plan(CONTRACT_PLAN, Format::Toml, "p.toml", "p").unwrap();
        assert_eq!(s.name, "fix-flaky-tests");
        assert_eq!(s.max_tokens, Some(2_000_000));
        let d = s.defaults.unwrap();
        assert_eq!(d.timeout_ms, Some(20 * 60_000));
        assert_eq!(d.limits.unwrap().memory_bytes, Some(2 << 30));
        assert_eq!(d.retry.unwrap().max_backoff_ms, Some(60_000));
        assert_eq!(s.steps[1].needs, vec!["find"]);
        assert!(s.steps[1].requires_approval);
    }

    #[test]
    fn same_plan_in_yaml_and_json() {
        let yaml = "name: y\nsteps:\n  - id: a\n    command: [echo, hi]\n    timeout: 30s\n";
        let s = parse_plan(yaml, Format::Yaml, "p.yaml", "p").unwrap();
        assert_eq!(s.steps[0].timeout_ms, Some(30_000));
        let json = r#"{"steps":[{"id":"a","command":["echo"],"limits":{"memory":"256M"}}]}"#;
        let s = parse_plan(json, Format::Json, "p.json", "fallback-name").unwrap();
        assert_eq!(s.name, "fallback-name");
        assert_eq!(
            s.steps[0].limits.as_ref().unwrap().memory_bytes,
            Some(256 << 20)
        );
    }

    #[test]
    fn unknown_key_names_step_and_key() {
        let e = toml_err("[[steps]]\nid = \"a\"\ncommand = [\"true\"]\ntimeuot = \"1s\"\n");
        assert_eq!(e.file, "p.toml");
        assert_eq!(e.key, "steps[a].timeuot");
        assert!(e.problem.contains("unknown field `timeuot`"), "{e}");
    }

    #[test]
    fn bad_duration_and_size() {
        let e = toml_err("[[steps]]\nid = \"a\"\ncommand = [\"true\"]\ntimeout = \"soon\"\n");
        assert_eq!(e.key, "steps[a].timeout");
        assert!(e.problem.contains("bad duration"), "{e}");
        let e =
            toml_err("[[steps]]\nid = \"a\"\ncommand = [\"true\"]\nlimits = { memory = \"2Q\" }\n");
        assert_eq!(e.key, "steps[a].limits.memory");
        assert!(e.problem.contains("unknown unit"), "{e}");
    }

    #[test]
    fn duplicate_ids_and_syntax() {
        let e = toml_err(
            "[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n",
        );
        assert_eq!(e.key, "steps[a].id");
        assert!(e.problem.contains("duplicate"));
        let e = toml_err("steps = [");
        assert_eq!(e.key, "");
        assert!(e.to_string().starts_with("p.toml: "));
        let e = toml_err("name = \"x\"\n");
        assert_eq!(e.key, "steps", "{e}");
        assert!(e.problem.contains("at least one step"), "{e}");
    }

    #[test]
    fn floats_json_cannot_hold_are_refused_naming_the_key() {
        for (text, key) in [
            (
                "budget_usd = nan\n[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n",
                "budget_usd",
            ),
            (
                "budget_usd = inf\n[[steps]]\nid = \"a\"\ncommand = [\"true\"]\n",
                "budget_usd",
            ),
            (
                "[[steps]]\nid = \"a\"\ncommand = [\"true\"]\nretry = { multiplier = nan }\n",
                "steps[0].retry.multiplier",
            ),
        ] {
            let e = toml_err(text);
            assert_eq!(e.key, key, "{e}");
            assert!(e.problem.starts_with(NOT_FINITE), "{e}");
        }
        for yaml in [
            "budget_usd: .nan\nsteps: []\n",
            "budget_usd: -.inf\nsteps: []\n",
        ] {
            let e = parse_plan(yaml, Format::Yaml, "p.yaml", "p").unwrap_err();
            assert_eq!(e.key, "budget_usd", "{e}");
            assert!(e.problem.starts_with(NOT_FINITE), "{e}");
        }
        // Other floats still arrive as they were.
        let s = parse_plan(
            "budget_usd: 2.5\nsteps: [{id: a, command: [x]}]\n",
            Format::Yaml,
            "p.yaml",
            "p",
        );
        assert_eq!(s.map(|s| s.budget_usd), Ok(Some(2.5)));
    }

    #[test]
    fn bad_retry_outcome() {
        let e = toml_err(
            "[[steps]]\nid = \"a\"\ncommand = [\"true\"]\nretry = { retry_on = [\"nope\"] }\n",
        );
        assert_eq!(e.key, "steps[a].retry_on[0]");
    }
}
