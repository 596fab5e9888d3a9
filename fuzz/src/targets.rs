//! One function per fuzz target: parse the input the way orch does, and check properties
//! of what comes out (a panic anywhere is a finding). The `fuzz_targets/*.rs` files only
//! call these, so the same code replays the corpus in `cargo test` (fuzz/tests/corpus.rs).

use std::collections::HashSet;
use std::path::{Component, Path};
use std::sync::OnceLock;

use orch_proto::plan::{Format, parse_plan};
use orch_proto::v1 as pb;
use orch_proto::validate::{check_env, check_limits, parallel_groups, validate_spec};
use prost::Message;

use crate::api::convert::{objective_input, resolved_plan_pb};
use crate::config::{self, Config, Overrides};
use crate::model::{Limits, RetryPolicy, StepPlan, Usage};
use crate::plans::resolve;
use crate::runner::agent::{
    AgentLine, LineParser, MAX_CHECKPOINT_BYTES, UsageFormat, parse_protocol_line,
};

// ------------------------------------------------------------------ plan files

/// `plan_toml`, `plan_yaml`, `plan_json`: plan text → `parse_plan` (which validates).
/// An accepted plan must validate again, have execution waves that hold every step once
/// and after all it needs, and survive the protobuf round trip to the daemon.
pub fn plan(format: Format, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match parse_plan(text, format, "fuzz.plan", "fuzz") {
        Ok(spec) => spec,
        Err(e) => {
            assert_eq!(e.file, "fuzz.plan");
            assert!(!e.problem.is_empty(), "a refusal says why: {e:?}");
            return;
        }
    };
    validate_spec(&spec, None).expect("an accepted plan validates again");
    check_waves(&spec);
    let bytes = spec.encode_to_vec();
    let back = pb::ObjectiveSpec::decode(bytes.as_slice()).expect("own encoding decodes");
    assert_eq!(back, spec);
}

/// The waves of a valid spec: every step exactly once, each after every step it needs.
fn check_waves(spec: &pb::ObjectiveSpec) {
    let groups = parallel_groups(spec).expect("a valid spec has execution waves");
    let mut wave_of = std::collections::HashMap::new();
    for (w, g) in groups.iter().enumerate() {
        assert!(!g.is_empty(), "empty wave in {groups:?}");
        for id in g {
            assert!(wave_of.insert(id.as_str(), w).is_none(), "{id} twice");
        }
    }
    assert_eq!(wave_of.len(), spec.steps.len());
    for s in &spec.steps {
        for n in &s.needs {
            assert!(
                wave_of[n.as_str()] < wave_of[s.id.as_str()],
                "{} before {n}",
                s.id
            );
        }
    }
}

// ------------------------------------------------------------------ daemon config

/// `daemon_config`: `orchd.toml` text → `config::parse`. An accepted config must print
/// (`--print-config`) as TOML that parses back to the same config, layering must keep it
/// valid, and every default it gives a step must be one a plan could give.
pub fn daemon_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match config::parse(text, "fuzz.toml") {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(e.to_string().starts_with("config fuzz.toml: "), "{e}");
            return;
        }
    };
    round_trip(&cfg);
    check_policy(&cfg.retry_policy());
    check_retry_on(&cfg);
    check_resolved_limits(&cfg.limits(), "defaults.limits");
    check_timeouts(cfg.defaults.timeout, cfg.defaults.idle_timeout, "defaults");
    check_ms(cfg.retention.0, "retention");
    check_ms(cfg.grace_period.0, "grace_period");
    for (model, p) in &cfg.prices {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        assert!(
            ok(p.input_per_mtok) && ok(p.output_per_mtok),
            "prices.{model}: {p:?}"
        );
    }
    for (name, a) in &cfg.agents {
        check_timeouts(a.timeout, a.idle_timeout, &format!("agents.{name}"));
        check_resolved_limits(
            &config::limits_of(&a.limits),
            &format!("agents.{name}.limits"),
        );
        assert!(!a.command.is_empty() && !a.command[0].is_empty());
    }
    let layered = cfg
        .layer(&Overrides::default())
        .expect("layering a valid config");
    round_trip(&layered);
}

fn round_trip(cfg: &Config) {
    let printed = cfg.to_toml();
    let again = config::parse(&printed, "printed")
        .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{printed}"));
    assert_eq!(
        &again, cfg,
        "printed config reads back differently:\n{printed}"
    );
}

/// Limits as they reach a step must pass the checks a plan's limits get.
fn check_resolved_limits(l: &Limits, at: &str) {
    let pb = pb::Limits {
        memory_bytes: l.memory_bytes,
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
        cpu_quota: l.cpu_quota,
    };
    if let Err(e) = check_limits(&pb, at) {
        panic!("accepted limits a plan cannot give: {e}");
    }
    check_cpu_seconds(l, at);
}

/// Timeouts a config gives steps must be ones a plan could give (longer than zero).
fn check_timeouts(timeout: Option<config::Dur>, idle: Option<config::Dur>, at: &str) {
    assert_ne!(timeout.map(|d| d.0), Some(0), "{at}.timeout accepted as 0");
    assert_ne!(
        idle.map(|d| d.0),
        Some(0),
        "{at}.idle_timeout accepted as 0"
    );
    let at = at.to_string();
    timeout
        .into_iter()
        .for_each(|d| check_ms(d.0, &format!("{at}.timeout")));
    idle.into_iter()
        .for_each(|d| check_ms(d.0, &format!("{at}.idle_timeout")));
}

/// Every outcome word the config accepted is in the policy it gives.
fn check_retry_on(cfg: &Config) {
    if let Some(words) = &cfg.defaults.retry.retry_on {
        let policy = cfg.retry_policy();
        assert_eq!(
            policy.retry_on.len(),
            words.len(),
            "retry_on {words:?} read as {policy:?}"
        );
    }
}

/// A resolved retry policy the engine can use, with every backoff it computes
/// (`RetryPolicy::delay_ms`, the engine's formula) a usable duration.
fn check_policy(p: &RetryPolicy) {
    assert!(p.max_attempts >= 1, "{p:?}");
    assert!(p.multiplier.is_finite() && p.multiplier >= 1.0, "{p:?}");
    assert!((0.0..=1.0).contains(&p.jitter), "{p:?}");
    for n in 2..=p.max_attempts.saturating_add(1).min(66) {
        check_ms(p.delay_ms(n, 1.0), "a retry backoff");
    }
}

/// A duration the daemon can use as it does: milliseconds added to (or subtracted from)
/// the time now as an `i64` (engine timers, the runner's deadlines, retention), and as a
/// `Duration`.
fn check_ms(ms: u64, what: &str) {
    let now = crate::model::now_ms();
    let usable = i64::try_from(ms)
        .ok()
        .is_some_and(|m| now.checked_add(m).is_some() && now.checked_sub(m).is_some());
    assert!(
        usable,
        "{what} of {ms} ms overflows the daemon's time arithmetic"
    );
}

/// Limits the runner can use: the CPU budget is counted in ms (`cpu_seconds * 1000`).
fn check_cpu_seconds(l: &Limits, at: &str) {
    if let Some(s) = l.cpu_seconds {
        assert!(
            s.checked_mul(1000).is_some(),
            "{at}.cpu_seconds {s} overflows in ms"
        );
    }
}

// ------------------------------------------------------------------ agent output

/// `agent_output`: the first byte picks the usage format (`% 3`) and a chunk size
/// (`/ 3 + 1`); the rest is an agent's stdout. Fed whole and fed in chunks, the
/// `LineParser` must say the same things; what it says must be in range. Every line is
/// also given to `parse_protocol_line` on its own.
pub fn agent_output(data: &[u8]) {
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    let format = [
        UsageFormat::OrchLines,
        UsageFormat::ClaudeStreamJson,
        UsageFormat::CodexJson,
    ][usize::from(head % 3)];
    let chunk = usize::from(head / 3) + 1;

    let mut whole = LineParser::new(format);
    let mut said = whole.feed(stream);
    said.extend(whole.finish());

    let mut split = LineParser::new(format);
    let mut said_split = Vec::new();
    for c in stream.chunks(chunk) {
        said_split.extend(split.feed(c));
    }
    said_split.extend(split.finish());
    assert_eq!(
        said, said_split,
        "chunks of {chunk} bytes change what is read"
    );
    said.iter().for_each(check_line);

    // What the engine keeps of the usage lines: an attempt's running total
    // (`model::Usage::add`, `tokens()`), which must not overflow.
    let mut total = Usage::default();
    for l in &said {
        if let AgentLine::Usage {
            tokens, cost_usd, ..
        } = l
        {
            total.add(&Usage {
                cost_usd: cost_usd.unwrap_or(0.0),
                ..*tokens
            });
        }
    }
    let _ = total.tokens();

    for line in stream.split(|b| *b == b'\n') {
        if let Some(l) = parse_protocol_line(&String::from_utf8_lossy(line)) {
            check_line(&l);
        }
    }
}

fn check_line(l: &AgentLine) {
    match l {
        AgentLine::Usage { cost_usd, .. } => {
            assert!(cost_usd.is_none_or(|c| c.is_finite() && c >= 0.0), "{l:?}");
        }
        AgentLine::Progress { percent, message } => {
            assert!(percent.is_none_or(|p| (0.0..=100.0).contains(&p)), "{l:?}");
            assert!(message.chars().count() <= 1000);
        }
        AgentLine::Checkpoint(json) => {
            assert!(json.len() <= MAX_CHECKPOINT_BYTES + 64);
            serde_json::from_str::<serde_json::Value>(json).expect("a checkpoint is JSON");
        }
        AgentLine::Session(id) => assert!(!id.is_empty() && id.len() <= 200, "{l:?}"),
        AgentLine::Failed { message, .. } => assert!(!message.is_empty(), "{l:?}"),
        AgentLine::Plan(json) => assert_eq!(json.trim(), json, "{l:?}"),
        AgentLine::Verdict(v) => {
            assert!(v.findings.chars().count() <= crate::runner::agent::MAX_FINDINGS_CHARS);
        }
        AgentLine::RateLimited { .. } | AgentLine::Malformed(_) => {}
    }
}

// ------------------------------------------------------------------ submitted specs

/// The daemon config the `submit_spec` target resolves against: the example agent
/// profiles of docs/examples/agents.toml, layered (so with the built-in `shell`).
fn submit_config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        config::parse(
            include_str!("../../docs/examples/agents.toml"),
            "agents.toml",
        )
        .and_then(|c| c.layer(&Overrides::default()))
        .expect("docs/examples/agents.toml is a valid config")
    })
}

/// `submit_spec`: protobuf bytes → `pb::SubmitRequest`, then what `Submit` does before
/// the engine (daemon/api/service.rs `submit_inner`): `check_env`,
/// `convert::objective_input`, `plans::resolve`, `parallel_groups`,
/// `convert::resolved_plan_pb`. A resolved objective must be runnable as is.
pub fn submit_spec(data: &[u8]) {
    let Ok(req) = pb::SubmitRequest::decode(data) else {
        return;
    };
    let Some(spec) = &req.spec else {
        return;
    };
    if check_env(&req.env, "env").is_err() {
        return;
    }
    let cfg = submit_config();
    let agents: HashSet<String> = cfg.agents.keys().cloned().collect();
    let Ok(input) = objective_input(spec, &agents) else {
        return;
    };
    let resolved = match resolve(&input, cfg, &req.workdir) {
        Ok(r) => r,
        Err(e) => {
            assert!(
                !req.workdir.is_empty(),
                "only a relative workdir is refused: {e}"
            );
            return;
        }
    };
    let groups = parallel_groups(spec).expect("a validated spec has execution waves");
    check_waves(spec);
    let plan = resolved_plan_pb(&resolved.name, &resolved.steps, groups);
    assert_eq!(plan.steps.len(), spec.steps.len());
    for (step, s) in resolved.steps.iter().zip(&spec.steps) {
        assert_eq!(step.id, s.id);
        check_step(step);
    }
}

/// A resolved step: a program to run, an absolute normal workdir, usable settings, and a
/// record the store can write and read back (values are JSON).
fn check_step(s: &StepPlan) {
    assert!(!s.command.is_empty() && !s.command[0].is_empty(), "{s:?}");
    if s.agent.is_empty() {
        assert!(s.template.is_empty());
    } else {
        assert_eq!(s.command.len(), s.template.len());
    }
    let dir = Path::new(&s.workdir);
    assert!(dir.is_absolute(), "{s:?}");
    assert!(
        dir.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{s:?}"
    );
    for (k, v) in &s.step_env {
        assert_eq!(s.env.get(k), Some(v));
    }
    check_policy(&s.retry);
    assert!(
        s.retry.max_backoff_ms >= s.retry.initial_backoff_ms,
        "{s:?}"
    );
    check_resolved_limits(&s.limits, &format!("steps[{}].limits", s.id));
    assert_ne!(s.timeout_ms, Some(0));
    assert_ne!(s.idle_timeout_ms, Some(0));
    s.timeout_ms
        .into_iter()
        .for_each(|t| check_ms(t, "timeout"));
    s.idle_timeout_ms
        .into_iter()
        .for_each(|t| check_ms(t, "idle_timeout"));
    check_cpu_seconds(&s.limits, &format!("steps[{}].limits", s.id));
    let json = serde_json::to_vec(s).expect("a step plan serializes");
    let back: StepPlan = serde_json::from_slice(&json).expect("a stored step plan reads back");
    assert_eq!(&back, s);
}
