//! The human (table) views: status, list, plan, events, agents, usage, audit, daemon status.

use orch_proto::units::{HumanBytes, format_duration_ms};
use orch_proto::v1::{
    AgentProfile, Attempt, AuditEntry, DaemonStatusResponse, Event, Limits, Objective,
    ObjectiveState, ObjectiveSummary, Outcome, ResolvedPlan, RetryPolicy, Step, StepState,
    UsageReport, event::Payload,
};
use orch_proto::words;

use crate::json;
use crate::output::{self, argv, bytes, cost, cpu, dash, key_values, table, time, truncate};

fn objective_state(v: i32) -> String {
    words::objective_state(ObjectiveState::try_from(v).unwrap_or(ObjectiveState::Unspecified))
}

fn step_state(v: i32) -> String {
    words::step_state(StepState::try_from(v).unwrap_or(StepState::Unspecified))
}

fn outcome(v: i32) -> String {
    words::outcome(Outcome::try_from(v).unwrap_or(Outcome::Unspecified))
}

/// What a step runs: `agent claude` or the argv.
fn runs(agent: &str, command: &[String]) -> String {
    match (agent.is_empty(), command.is_empty()) {
        (true, _) => argv(command),
        (false, true) => format!("agent {agent}"),
        (false, false) => format!("[{agent}] {}", argv(command)),
    }
}

/// The outcome column of a step's latest attempt (`running` while it runs).
fn attempt_outcome(a: &Attempt) -> String {
    let o = outcome(a.outcome);
    if o.is_empty() {
        return "running".into();
    }
    match (a.signal, a.message.is_empty()) {
        (Some(sig), _) => format!("{o} (signal {sig})"),
        (None, false) if a.outcome != Outcome::Success as i32 => {
            format!("{o}: {}", truncate(&a.message, 40))
        }
        _ => o,
    }
}

/// The `status` view.
pub fn objective(o: &Objective) -> String {
    let mut pairs = vec![("Objective", o.id.clone()), ("Name", o.name.clone())];
    if !o.goal.is_empty() {
        pairs.push(("Goal", truncate(&o.goal.replace('\n', " "), 100)));
    }
    pairs.push(("State", objective_state(o.state)));
    if !o.message.is_empty() {
        pairs.push(("Message", o.message.clone()));
    }
    pairs.push(("Created", time(o.created_at.as_ref())));
    pairs.push(("Updated", time(o.updated_at.as_ref())));
    let mut use_line = output::usage(o.usage.as_ref());
    if let Some(b) = &o.budget {
        if let Some(max) = b.max_cost_usd {
            use_line.push_str(&format!(" of {} budget", cost(max)));
        }
        if let Some(max) = b.max_tokens {
            use_line.push_str(&format!(" (max {max} tokens)"));
        }
    }
    pairs.push(("Usage", use_line));
    if !o.parent_id.is_empty() {
        pairs.push((
            "Parent",
            format!(
                "{} (step {}, attempt {}; depth {})",
                o.parent_id, o.parent_step_id, o.parent_attempt, o.depth
            ),
        ));
    }
    if !o.children.is_empty() {
        let used = o.sub_usage.as_ref().map_or(0.0, |u| u.cost_usd);
        pairs.push((
            "Sub-objectives",
            format!("{} (used {})", o.children.len(), cost(used)),
        ));
    }
    pairs.extend(crate::planner::status_pairs(o));
    let mut text = key_values(&pairs);
    text.push('\n');
    let rows = o.steps.iter().map(step_row).collect();
    text.push_str(&table(
        &[
            "STEP",
            "STATE",
            "RUNS",
            "ATTEMPTS",
            "OUTCOME",
            "EXIT",
            "PID",
            "PEAK RSS",
            "CPU",
            "CHECKPOINT",
        ],
        rows,
    ));
    let notes: Vec<String> = o.steps.iter().filter_map(step_note).collect();
    if !notes.is_empty() {
        text.push('\n');
        for n in notes {
            text.push_str(&n);
            text.push('\n');
        }
    }
    if !o.children.is_empty() {
        text.push_str("\nSub-objectives:\n");
        for c in &o.children {
            text.push_str(&format!("  {c}\n"));
        }
    }
    text
}

fn step_row(s: &Step) -> Vec<String> {
    let last = s.attempts.last();
    let exit = last
        .and_then(|a| a.exit_code.map(|c| c.to_string()))
        .unwrap_or_else(|| "-".into());
    let pid = last
        .and_then(|a| if a.ended_at.is_none() { a.pid } else { None })
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    let checkpoint = match &s.checkpoint_json {
        Some(c) => truncate(c, 30),
        None => "-".into(),
    };
    let agent = last
        .map(|a| a.agent.as_str())
        .filter(|a| !a.is_empty())
        .unwrap_or(&s.agent);
    vec![
        s.id.clone(),
        step_state(s.state),
        truncate(&runs(agent, &s.command), 30),
        s.attempts.len().to_string(),
        last.map(attempt_outcome).unwrap_or_else(|| "-".into()),
        exit,
        pid,
        last.map(|a| bytes(a.peak_rss_bytes))
            .unwrap_or_else(|| "-".into()),
        last.map(|a| cpu(a.cpu_ms)).unwrap_or_else(|| "-".into()),
        checkpoint,
    ]
}

/// A line under the table for steps with something to say (backoff, progress, messages).
fn step_note(s: &Step) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(due) = json::ts_text(s.next_attempt_at.as_ref()) {
        parts.push(format!("next attempt at {due}"));
    }
    if let Some(p) = &s.progress {
        let pct = p.percent.map(|x| format!("{x:.0}% ")).unwrap_or_default();
        if !pct.is_empty() || !p.message.is_empty() {
            parts.push(
                format!("progress {pct}{}", p.message)
                    .trim_end()
                    .to_string(),
            );
        }
    }
    if !s.branch.is_empty() {
        let head: String = s.branch_head.chars().take(12).collect();
        parts.push(format!("branch {} at {head}", s.branch));
    }
    if s.state == StepState::AwaitingApproval as i32 {
        parts.push("waiting for `orchctl approve` / `orchctl deny`".into());
    }
    parts.extend(crate::routing::attempt_notes(s));
    if !s.message.is_empty() {
        parts.push(s.message.clone());
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("{}: {}", s.id, parts.join("; ")))
    }
}

/// The `list` view.
pub fn list(items: &[ObjectiveSummary]) -> String {
    let rows = items
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                truncate(&s.name, 40),
                objective_state(s.state),
                format!("{}/{}", s.steps_succeeded, s.steps_total),
                time(s.created_at.as_ref()),
                cost(s.usage.as_ref().map(|u| u.cost_usd).unwrap_or(0.0)),
            ]
        })
        .collect();
    table(&["ID", "NAME", "STATE", "STEPS", "CREATED", "COST"], rows)
}

fn retry_text(r: Option<&RetryPolicy>) -> String {
    let Some(r) = r else { return "-".into() };
    let mut parts = Vec::new();
    if let Some(n) = r.max_attempts {
        parts.push(format!("{n} attempts"));
    }
    if let Some(b) = r.initial_backoff_ms {
        parts.push(format!("backoff {}", format_duration_ms(b)));
    }
    if let Some(m) = r.multiplier {
        parts.push(format!("x{m}"));
    }
    if let Some(m) = r.max_backoff_ms {
        parts.push(format!("max {}", format_duration_ms(m)));
    }
    if let Some(j) = r.jitter {
        parts.push(format!("±{:.0}%", j * 100.0));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn limits_text(l: Option<&Limits>) -> String {
    let Some(l) = l else { return "-".into() };
    let mut parts = Vec::new();
    if let Some(m) = l.memory_bytes {
        parts.push(format!("mem {}", HumanBytes(m)));
    }
    if let Some(c) = l.cpu_seconds {
        parts.push(format!("cpu {c}s"));
    }
    if let Some(p) = l.pids {
        parts.push(format!("pids {p}"));
    }
    if let Some(f) = l.open_files {
        parts.push(format!("files {f}"));
    }
    if let Some(q) = l.cpu_quota {
        parts.push(format!("{q} cores"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The widest line of the `submit --dry-run` view.
pub const PLAN_WIDTH: usize = 100;

/// The `submit --dry-run` view: a block per step (its settings one per line, values cut
/// to fit [`PLAN_WIDTH`] columns; `-o json` has them in full), then the execution order.
pub fn plan(p: &ResolvedPlan) -> String {
    let fit = |s: &str, room: usize| truncate(s, room);
    let mut text = fit(
        &format!("Plan {} (dry run: nothing was stored)", p.name),
        PLAN_WIDTH,
    );
    text.push('\n');
    let mut cut = false;
    for s in &p.steps {
        let mut head = s.id.clone();
        let mut notes = Vec::new();
        if !s.needs.is_empty() {
            notes.push(format!("needs {}", s.needs.join(", ")));
        }
        if s.requires_approval {
            notes.push(if s.approval_reason.is_empty() {
                "waits for approval".to_string()
            } else {
                format!("waits for approval: {}", s.approval_reason)
            });
        }
        if !s.workspace.is_empty() && s.workspace != "shared" {
            notes.push(format!("workspace {}", s.workspace));
        }
        if !notes.is_empty() {
            head.push_str(&format!("  ({})", notes.join("; ")));
        }
        text.push_str(&format!("\n{}\n", fit(&head, PLAN_WIDTH)));
        let mut what = runs(&s.agent, &s.command);
        if !s.fallback.is_empty() {
            what.push_str(&format!(" (fallback {})", s.fallback.join(", ")));
        }
        if let Some(r) = &s.routed {
            what = crate::routing::dry_run_text(s.route.as_ref(), r);
        }
        let timeout = match (s.timeout_ms, s.idle_timeout_ms) {
            (None, None) => "-".to_string(),
            (t, None) => output::opt_duration(t),
            (t, i) => format!(
                "{} (idle {})",
                output::opt_duration(t),
                output::opt_duration(i)
            ),
        };
        for (key, value) in [
            ("runs", what),
            ("workdir", dash(&s.workdir)),
            ("timeout", timeout),
            ("retry", retry_text(s.retry.as_ref())),
            ("limits", limits_text(s.limits.as_ref())),
        ] {
            let line = format!("  {key:<9} {value}");
            cut |= line.chars().count() > PLAN_WIDTH;
            text.push_str(&fit(&line, PLAN_WIDTH));
            text.push('\n');
        }
    }
    if cut {
        text.push_str("\n(values cut to fit; -o json shows them in full)\n");
    }
    text.push_str("\nExecution order:\n");
    for (i, g) in p.groups.iter().enumerate() {
        let parallel = if g.step_ids.len() > 1 {
            "  (in parallel)"
        } else {
            ""
        };
        let line = format!("  {}. {}{parallel}", i + 1, g.step_ids.join(", "));
        text.push_str(&fit(&line, PLAN_WIDTH));
        text.push('\n');
    }
    text
}

/// Local wall-clock time of day of an event, e.g. `14:03:07`.
pub fn clock(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "--:--:--".into())
}

/// The last 8 characters of an objective id (the random part of a ULID).
fn short_id(id: &str) -> &str {
    let n = id.chars().count();
    if n <= 8 {
        return id;
    }
    id.char_indices()
        .nth(n - 8)
        .map(|(i, _)| &id[i..])
        .unwrap_or(id)
}

/// The kind-specific details of an event, for one line.
pub fn event_details(e: &Event) -> String {
    let Some(p) = &e.payload else {
        return String::new();
    };
    let with_message = |head: String, msg: &str| {
        if msg.is_empty() {
            head
        } else {
            format!("{head}: {msg}")
        }
    };
    match p {
        Payload::ObjectiveSubmitted(x) => format!("{:?}, {} step(s)", x.name, x.steps),
        Payload::ObjectiveState(x) => with_message(objective_state(x.state), &x.message),
        Payload::StepState(x) => with_message(step_state(x.state), &x.message),
        Payload::AttemptStarted(x) => {
            if x.agent.is_empty() {
                format!("pid {}", x.pid)
            } else {
                format!("pid {} agent {}", x.pid, x.agent)
            }
        }
        Payload::AttemptEnded(x) => {
            let mut head = outcome(x.outcome);
            if let Some(c) = x.exit_code {
                head.push_str(&format!(" exit {c}"));
            }
            if let Some(s) = x.signal {
                head.push_str(&format!(" signal {s}"));
            }
            with_message(head, &x.message)
        }
        Payload::RetryScheduled(x) => {
            let at = x
                .due_at
                .as_ref()
                .map(|t| format!(" (at {})", clock(Some(t))))
                .unwrap_or_default();
            format!("in {}{at}", format_duration_ms(x.delay_ms))
        }
        Payload::Checkpoint(x) => truncate(&x.json, 80),
        Payload::Usage(x) => {
            let r = x.report.unwrap_or_default();
            let mut s = format!(
                "+{} in{} / +{} out, +{}",
                r.input_tokens,
                output::cache(&r),
                r.output_tokens,
                cost(r.cost_usd)
            );
            if !x.model.is_empty() {
                s.push_str(&format!(" ({})", x.model));
            }
            if let Some(t) = &x.objective_total {
                s.push_str(&format!("; objective total {}", cost(t.cost_usd)));
            }
            s
        }
        Payload::Progress(x) => {
            let pct = x.percent.map(|p| format!("{p:.0}%")).unwrap_or_default();
            format!("{pct} {}", x.message).trim().to_string()
        }
        Payload::BudgetAlert(x) => format!(
            "{} at {:.0}% ({} of {})",
            x.budget, x.percent, x.used, x.limit
        ),
        Payload::ApprovalRequested(_) => format!(
            "waiting: orchctl approve {} {}",
            e.objective_id,
            if e.step_id.is_empty() {
                "STEP"
            } else {
                &e.step_id
            }
        ),
        Payload::ApprovalAnswered(x) => {
            let head = if x.approved { "approved" } else { "denied" };
            with_message(format!("{head} by uid {}", x.by_uid), &x.reason)
        }
        Payload::ObjectiveRemoved(x) => {
            format!("removed by uid {} ({})", x.by_uid, objective_state(x.state))
        }
        Payload::AgentRouted(x) => crate::routing::routed_line(x),
        Payload::AgentSwitched(x) => crate::routing::switched_line(x),
        Payload::RoundStarted(_)
        | Payload::PlanProposed(_)
        | Payload::PlanAccepted(_)
        | Payload::Verdict(_) => crate::planner::details(p),
    }
}

/// One readable line for an event: time, (objective,) step#attempt, kind, details.
pub fn event_line(e: &Event, show_objective: bool) -> String {
    let mut where_ = if e.step_id.is_empty() {
        "-".to_string()
    } else {
        e.step_id.clone()
    };
    if e.attempt > 0 {
        where_.push_str(&format!("#{}", e.attempt));
    }
    let mut line = clock(e.time.as_ref());
    if show_objective {
        line.push_str(&format!("  {}", short_id(&e.objective_id)));
    }
    line.push_str(&format!(
        "  {where_:<12}  {:<18}  {}",
        json::event_kind(e),
        event_details(e)
    ));
    line.trim_end().to_string()
}

/// The `agents` view.
pub fn agents(list: &[AgentProfile]) -> String {
    let rows = list
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                truncate(&argv(&a.command), 60),
                dash(&a.usage),
                if a.found { "yes".into() } else { "no".into() },
                crate::routing::quality_cell(a),
                dash(&a.tags.join(",")),
                crate::routing::state_cell(a),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "COMMAND", "USAGE", "FOUND", "QUALITY", "TAGS", "ROUTING",
        ],
        rows,
    )
}

/// The `usage` view.
pub fn usage(r: &UsageReport, id: Option<&str>) -> String {
    let mut pairs = vec![(
        if id.is_some() {
            "Objective"
        } else {
            "Your total"
        },
        output::usage(r.usage.as_ref()),
    )];
    if let Some(b) = r.budget_usd {
        let pct = r
            .budget_used_percent
            .map(|p| format!(" ({p:.1}% used)"))
            .unwrap_or_default();
        pairs.push(("Budget", format!("{}{pct}", cost(b))));
    }
    if let Some(t) = r.max_tokens {
        pairs.push(("Max tokens", t.to_string()));
    }
    if r.today.is_some() || r.daily_budget_usd.is_some() {
        let mut s = output::usage(r.today.as_ref());
        if let Some(d) = r.daily_budget_usd {
            s.push_str(&format!(" of {} daily budget", cost(d)));
        }
        pairs.push(("Today", s));
    }
    if r.this_month.is_some() || r.monthly_budget_usd.is_some() {
        let mut s = output::usage(r.this_month.as_ref());
        if let Some(m) = r.monthly_budget_usd {
            s.push_str(&format!(" of {} monthly budget", cost(m)));
        }
        pairs.push(("This month", s));
    }
    for (label, used, cap) in [
        (
            "All users today",
            r.machine_today.as_ref(),
            r.machine_daily_budget_usd,
        ),
        (
            "All users, month",
            r.machine_this_month.as_ref(),
            r.machine_monthly_budget_usd,
        ),
    ] {
        if let Some(cap) = cap {
            pairs.push((
                label,
                format!("{} of {} machine-wide cap", output::usage(used), cost(cap)),
            ));
        }
    }
    key_values(&pairs)
}

/// The `audit` view.
pub fn audit(entries: &[AuditEntry]) -> String {
    let rows = entries
        .iter()
        .map(|a| {
            vec![
                time(a.time.as_ref()),
                a.uid.to_string(),
                a.pid.to_string(),
                a.action.clone(),
                dash(&a.objective_id),
                a.result.clone(),
            ]
        })
        .collect();
    table(
        &["TIME", "UID", "PID", "ACTION", "OBJECTIVE", "RESULT"],
        rows,
    )
}

/// The `daemon status` view.
/// Which daemon answered: the system one or a user's own, and how it was started.
pub fn daemon_kind(d: &DaemonStatusResponse) -> String {
    let who = if d.uid == 0 {
        "system daemon (root)".to_string()
    } else {
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(d.uid))
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {}", d.uid), |u| u.name);
        format!("user daemon of {name}")
    };
    if d.socket_activated {
        format!("{who}, socket-activated by systemd")
    } else {
        who
    }
}

pub fn daemon_status(d: &DaemonStatusResponse, origin: orch_proto::paths::SocketOrigin) -> String {
    // Contract order first, then any state word this client does not know.
    let mut counts: Vec<String> = words::OBJECTIVE_STATES
        .iter()
        .map(|w| format!("{w} {}", d.counts.get(*w).copied().unwrap_or(0)))
        .collect();
    let mut extra: Vec<_> = d
        .counts
        .iter()
        .filter(|(k, _)| !words::OBJECTIVE_STATES.contains(&k.as_str()))
        .collect();
    extra.sort();
    counts.extend(extra.into_iter().map(|(k, v)| format!("{k} {v}")));
    let counts = counts.join(", ");
    let backend = if d.limits_detail.is_empty() {
        d.limits_backend.clone()
    } else {
        format!("{} ({})", d.limits_backend, d.limits_detail)
    };
    key_values(&[
        ("Version", d.version.clone()),
        ("PID", d.pid.to_string()),
        (
            "Uptime",
            format_duration_ms(d.uptime_s.saturating_mul(1000)),
        ),
        ("Daemon", daemon_kind(d)),
        ("Socket", format!("{} ({})", d.socket, origin.describe())),
        ("State dir", d.state_dir.clone()),
        ("Store size", HumanBytes(d.store_bytes).to_string()),
        (
            "Config",
            if d.config_found || d.config_path.is_empty() {
                dash(&d.config_path)
            } else {
                format!("none (no file at {}; built-in defaults)", d.config_path)
            },
        ),
        ("Limits", backend),
        (
            "Running",
            format!(
                "{} attempt(s), at most {} at once",
                d.running_attempts, d.max_parallel
            ),
        ),
        ("Objectives", counts),
        ("Last event", d.last_event_seq.to_string()),
        (
            "State disk",
            format!(
                "{} free of {}, keeps {} free for the store ([store] min_free){}",
                HumanBytes(d.state_disk_free_bytes),
                HumanBytes(d.state_disk_total_bytes),
                HumanBytes(d.min_free_bytes),
                if d.state_disk_free_bytes < d.min_free_bytes {
                    ": new work is refused"
                } else {
                    ""
                }
            ),
        ),
        (
            "Store",
            if d.store_problem.is_empty() {
                "ok".to_string()
            } else {
                d.store_problem.clone()
            },
        ),
        ("Executors", executors(d)),
    ]) + &daemon_host(d)
}

/// The host's lines of `daemon status`: memory and load, and why work waits (if it does).
fn daemon_host(d: &DaemonStatusResponse) -> String {
    let Some(h) = &d.host else {
        return String::new();
    };
    let mut pairs = vec![("Host", crate::reports::host_line(h))];
    if !h.held.is_empty() {
        pairs.push(("Held", h.held.clone()));
    }
    // Aligned with the lines above (their longest key is 10 characters).
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<10}  {v}\n"))
        .collect()
}

/// `local ok, slurm ok (sinfo: ...)`: each executor and its health.
fn executors(d: &DaemonStatusResponse) -> String {
    if d.executors.is_empty() {
        return "-".to_string();
    }
    d.executors
        .iter()
        .map(|e| {
            let health = if e.healthy { "ok" } else { "UNHEALTHY" };
            if e.detail.is_empty() {
                format!("{} {health}", e.name)
            } else {
                format!("{} {health} ({})", e.name, e.detail)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{AttemptEnded, ParallelGroup, ResolvedStep};

    #[test]
    fn event_line_has_step_kind_and_details() {
        let e = Event {
            seq: 3,
            objective_id: "01J0000000000000000ABCDEFG".into(),
            step_id: "build".into(),
            attempt: 2,
            kind: "attempt_ended".into(),
            payload: Some(Payload::AttemptEnded(AttemptEnded {
                outcome: Outcome::ExitFailure as i32,
                exit_code: Some(1),
                signal: None,
                message: String::new(),
            })),
            ..Default::default()
        };
        let line = event_line(&e, true);
        assert!(line.contains("ABCDEFG"), "{line}");
        assert!(line.contains("build#2"), "{line}");
        assert!(line.contains("attempt_ended"), "{line}");
        assert!(line.contains("exit_failure exit 1"), "{line}");
    }

    #[test]
    fn plan_view_lists_groups() {
        let p = ResolvedPlan {
            name: "p".into(),
            steps: vec![ResolvedStep {
                id: "a".into(),
                command: vec!["true".into()],
                ..Default::default()
            }],
            groups: vec![ParallelGroup {
                step_ids: vec!["a".into(), "b".into()],
            }],
        };
        let text = plan(&p);
        assert!(text.contains("Execution order:"), "{text}");
        assert!(text.contains("1. a, b  (in parallel)"), "{text}");
    }

    #[test]
    fn plan_view_fits_100_columns_whatever_the_plan() {
        let long = "x".repeat(300);
        let p = ResolvedPlan {
            name: long.clone(),
            steps: vec![ResolvedStep {
                id: long.clone(),
                command: vec!["bash".into(), "-c".into(), long.clone()],
                workdir: format!("/{long}"),
                needs: vec![long.clone()],
                timeout_ms: Some(1_200_000),
                idle_timeout_ms: Some(300_000),
                retry: Some(RetryPolicy {
                    max_attempts: Some(3),
                    initial_backoff_ms: Some(2000),
                    ..Default::default()
                }),
                requires_approval: true,
                fallback: vec![long.clone()],
                ..Default::default()
            }],
            groups: vec![ParallelGroup {
                step_ids: vec![long.clone(), long.clone()],
            }],
        };
        let text = plan(&p);
        for line in text.lines() {
            assert!(
                line.chars().count() <= PLAN_WIDTH,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(text.contains("  retry     3 attempts"), "{text}");
        assert!(text.contains("-o json shows them in full"), "{text}");
    }
}
