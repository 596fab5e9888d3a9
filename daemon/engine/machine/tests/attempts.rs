//! Submit, attempts from start to end, facts about them, and budgets.

use super::*;

// ------------------------------------------------------------ submit

#[test]
fn submit_readies_steps_without_needs_and_records_everything() {
    let (run, d) = new(vec![plan("a", &[]), plan("b", &["a"])]);
    assert_eq!(said(&d), ["objective_submitted", "step a ready"]);
    assert_eq!(states(&run), [S::Ready, S::Waiting]);
    assert!(d.objective);
    assert_eq!(d.steps.len(), 2);
    assert_eq!(d.effects, [Effect::Enqueue { step: 0 }]);
    assert_eq!(run.obj.state, ObjState::Pending);
}

#[test]
fn an_objective_whose_only_ready_step_awaits_approval_awaits_approval() {
    let (run, d) = new(vec![gated("deploy", &[])]);
    assert_eq!(
        said(&d),
        [
            "objective_submitted",
            "step deploy awaiting_approval",
            "approval_requested deploy",
            "objective awaiting_approval"
        ]
    );
    assert_eq!(run.obj.state, ObjState::AwaitingApproval);
}

#[test]
fn a_gate_beside_a_ready_step_leaves_the_objective_pending() {
    let (run, _) = new(vec![gated("a", &[]), plan("b", &[])]);
    assert_eq!(states(&run), [S::AwaitingApproval, S::Ready]);
    assert_eq!(run.obj.state, ObjState::Pending);
}

// ------------------------------------------------------------ start and end

#[test]
fn start_opens_the_next_attempt_and_spawns_it_once_durable() {
    let mut run = run_of(vec![plan("a", &[])]);
    let d = start(&mut run, 0);
    assert_eq!(said(&d), ["step a running", "objective running"]);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].number, 1);
    assert_eq!(d.attempts[0].started_ms, T0);
    assert!(has(
        &d,
        &Effect::Spawn {
            step: 0,
            attempt: 1
        }
    ));
    assert!(run.running.contains_key(&0));
}

#[test]
fn only_a_ready_step_starts() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &["a"])]);
    let e = refused(
        &mut run,
        Input::Start {
            step: 1,
            agent: String::new(),
            command: vec![],
        },
    );
    assert_eq!(
        e,
        Invalid::FailedPrecondition("step `b` of objective OBJ is waiting, not ready".into())
    );
}

#[test]
fn success_releases_dependents_and_the_last_one_ends_the_objective() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &["a"])]);
    start(&mut run, 0);
    let d = end(&mut run, 0, Outcome::Success);
    assert_eq!(
        said(&d),
        ["attempt_ended a", "step a succeeded", "step b ready"]
    );
    assert!(has(&d, &Effect::Enqueue { step: 1 }));
    start(&mut run, 1);
    let d = end(&mut run, 1, Outcome::Success);
    assert_eq!(
        said(&d),
        ["attempt_ended b", "step b succeeded", "objective succeeded"]
    );
    assert_eq!(d.effects, [Effect::Dequeue { timers: true }, Effect::Ended]);
    assert!(run.obj.state.is_terminal());
}

#[test]
fn a_failure_with_retries_left_backs_off_by_the_policy() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(
        said(&d),
        ["attempt_ended a", "step a backoff", "retry_scheduled a"]
    );
    let due = T0 + 2_000;
    assert!(has(&d, &Effect::Timer { step: 0, due }));
    assert_eq!(run.steps[0].next_attempt_ms, Some(due));
    assert_eq!(run.steps[0].counted_attempts, 1);
    assert_eq!(run.obj.state, ObjState::Running);
}

#[test]
fn the_backoff_timer_readies_the_step_and_the_next_attempt_is_number_two() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::Timeout);
    let d = ok(&mut run, Input::TimerFired { step: 0 });
    assert_eq!(said(&d), ["step a ready"]);
    assert_eq!(run.steps[0].next_attempt_ms, None);
    let d = start(&mut run, 0);
    assert!(has(
        &d,
        &Effect::Spawn {
            step: 0,
            attempt: 2
        }
    ));
}

#[test]
fn a_timer_for_a_step_no_longer_in_backoff_does_nothing() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(&mut run, Input::TimerFired { step: 0 });
    assert!(d.is_empty());
}

#[test]
fn exhausted_retries_fail_the_step_skip_its_dependents_and_fail_the_objective() {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    let mut run = run_of(vec![p, plan("b", &["a"])]);
    start(&mut run, 0);
    let d = end_with(&mut run, 0, End::of(Outcome::ExitFailure, "exit status 3"));
    assert_eq!(
        said(&d),
        [
            "attempt_ended a",
            "step a failed",
            "step b skipped",
            "objective failed"
        ]
    );
    assert_eq!(run.steps[1].message, "dependency `a` did not succeed");
    assert_eq!(run.obj.message, "step `a` failed: exit status 3");
}

#[test]
fn exhausted_retries_fall_back_to_the_next_agent_with_fresh_attempts() {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    p.agent = "claude".into();
    p.fallback = vec!["codex".into()];
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    let d = end_with(&mut run, 0, End::of(Outcome::ExitFailure, "exit status 1"));
    assert_eq!(said(&d), ["attempt_ended a", "step a ready"]);
    let s = &run.steps[0];
    assert_eq!((s.agent_index, s.counted_attempts), (1, 0));
    assert_eq!(s.current_agent(), "codex");
    assert_eq!(
        s.message,
        "attempts exhausted (exit status 1); falling back to agent `codex`"
    );
}

#[test]
fn an_outcome_the_policy_does_not_retry_fails_at_once() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::SpawnError);
    assert_eq!(states(&run), [S::Failed]);
}

#[test]
fn an_interrupted_attempt_runs_again_without_using_a_retry() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = end(&mut run, 0, Outcome::Interrupted);
    assert_eq!(said(&d), ["attempt_ended a", "step a ready"]);
    assert!(has(&d, &Effect::Enqueue { step: 0 }));
    assert_eq!(run.steps[0].counted_attempts, 0);
}

#[test]
fn an_interrupted_attempt_while_draining_is_not_queued() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let draining = Ctx {
        draining: true,
        ..ctx()
    };
    let d = step(
        &mut run,
        Input::Ended {
            step: 0,
            attempt: 1,
            end: End::of(Outcome::Interrupted, "stopping"),
        },
        draining,
    )
    .expect("accepted");
    assert_eq!(states(&run), [S::Ready]);
    assert!(
        !d.effects
            .iter()
            .any(|e| matches!(e, Effect::Enqueue { .. }))
    );
}

#[test]
fn a_rate_limited_attempt_waits_for_the_reset_without_using_a_retry() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    rate_limit(&mut run, 0, T0 + 60_000);
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert!(has(
        &d,
        &Effect::Timer {
            step: 0,
            due: T0 + 60_000
        }
    ));
    assert_eq!(run.steps[0].counted_attempts, 0);
    assert_eq!(
        run.steps[0].message,
        "rate limited by the provider; waiting for the reset"
    );
}

#[test]
fn a_reset_that_passed_as_the_attempt_ended_runs_again_now_without_using_a_retry() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    // Refused until a second ago: the attempt took longer to exit than the reset.
    rate_limit(&mut run, 0, T0 - 1_000);
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert!(has(&d, &Effect::Timer { step: 0, due: T0 }), "{d:?}");
    assert_eq!(run.steps[0].counted_attempts, 0, "no attempt was used up");
    assert_eq!(run.steps[0].rate_limit_waits, 1);
    assert_eq!(states(&run), [S::Backoff]);
}

#[test]
fn rate_limit_waits_are_bounded_and_the_step_then_says_how_many_it_made() {
    let mut p = plan("a", &[]);
    p.retry.max_rate_limit_waits = 2;
    let mut run = run_of(vec![p]);
    for n in 1..=2 {
        start(&mut run, 0);
        ok(
            &mut run,
            Input::RateLimited {
                step: 0,
                attempt: n,
                until_ms: Some(T0 + 60_000),
                wait_ms: 0,
            },
        );
        let d = end(&mut run, 0, Outcome::ExitFailure);
        assert!(has(
            &d,
            &Effect::Timer {
                step: 0,
                due: T0 + 60_000
            }
        ));
        assert_eq!(run.steps[0].rate_limit_waits, n);
        ok(&mut run, Input::TimerFired { step: 0 });
    }
    start(&mut run, 0);
    ok(
        &mut run,
        Input::RateLimited {
            step: 0,
            attempt: 3,
            until_ms: Some(T0 + 60_000),
            wait_ms: 0,
        },
    );
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [S::Failed]);
    assert_eq!(run.steps[0].counted_attempts, 0, "no attempt was used up");
    assert_eq!(
        run.steps[0].message,
        "rate limited by the provider again after 2 waits for its reset \
         (max_rate_limit_waits = 2); the next reset is at 1970-01-01T00:17:40Z"
    );
}

#[test]
fn a_fallback_and_a_retry_start_the_rate_limit_waits_again() {
    let mut p = plan("a", &[]);
    p.agent = "claude".into();
    p.fallback = vec!["codex".into()];
    p.retry.max_attempts = 1;
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    rate_limit(&mut run, 0, T0 + 1_000);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.steps[0].rate_limit_waits, 1);
    ok(&mut run, Input::TimerFired { step: 0 });
    start(&mut run, 0);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.steps[0].current_agent(), "codex");
    assert_eq!(run.steps[0].rate_limit_waits, 0);
}

#[test]
fn an_error_the_agent_reports_is_a_failure_even_when_it_exits_0() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::AgentFailed {
            step: 0,
            attempt: 1,
            class: FailureClass::Overloaded,
            message: "provider overloaded or failing: overloaded_error (HTTP 529)".into(),
        },
    );
    let d = end(&mut run, 0, Outcome::Success);
    assert_eq!(d.attempts[0].outcome, Some(Outcome::ExitFailure));
    assert!(
        d.attempts[0]
            .message
            .starts_with("the agent reported an error although it exited 0: provider overloaded"),
        "{}",
        d.attempts[0].message
    );
    assert_eq!(states(&run), [S::Backoff], "overloaded is retried");
}

#[test]
fn max_turns_is_not_retried_since_every_retry_pays_again() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::AgentFailed {
            step: 0,
            attempt: 1,
            class: FailureClass::MaxTurns,
            message: "max turns reached: Reached maximum number of turns (1)".into(),
        },
    );
    end_with(&mut run, 0, End::of(Outcome::ExitFailure, "exit status 1"));
    assert_eq!(states(&run), [S::Failed]);
    assert_eq!(
        run.steps[0].message,
        "exit status 1; the agent said: max turns reached: Reached maximum number of turns (1) \
         (not retried: a retry would pay again for the same)"
    );
}

#[test]
fn the_session_an_agent_names_is_recorded_on_its_attempt() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let session = Input::Session {
        step: 0,
        attempt: 1,
        id: "27eb".into(),
    };
    let d = ok(&mut run, session.clone());
    assert_eq!(d.attempts[0].session.as_deref(), Some("27eb"));
    assert!(ok(&mut run, session).is_empty(), "recorded once");
}

#[test]
fn the_steps_session_is_kept_for_the_next_attempt_and_dropped_on_fallback_or_fresh_retry() {
    let mut p = plan("a", &[]);
    p.agent = "claude".into();
    p.fallback = vec!["codex".into()];
    p.retry.max_attempts = 2;
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    let session = |id: &str, attempt| Input::Session {
        step: 0,
        attempt,
        id: id.into(),
    };
    ok(&mut run, session("S1", 1));
    ok(
        &mut run,
        Input::Usage {
            step: 0,
            attempt: 1,
            delta: Usage {
                input_tokens: 10,
                ..Usage::default()
            },
            model: String::new(),
        },
    );
    assert_eq!(run.steps[0].session.as_deref(), Some("S1"));
    assert_eq!(run.steps[0].session_usage.input_tokens, 10);
    end(&mut run, 0, Outcome::ExitFailure);
    ok(&mut run, Input::TimerFired { step: 0 });
    start(&mut run, 0);
    // The resumed attempt names the same session: its usage so far carries on.
    ok(&mut run, session("S1", 2));
    assert_eq!(run.steps[0].session_usage.input_tokens, 10);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.steps[0].current_agent(), "codex");
    assert_eq!(run.steps[0].session, None, "another agent, another session");
    start(&mut run, 0);
    ok(&mut run, session("S2", 3));
    end(&mut run, 0, Outcome::ExitFailure);
    ok(&mut run, Input::TimerFired { step: 0 });
    start(&mut run, 0);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.obj.state, ObjState::Failed);
    ok(
        &mut run,
        Input::Retry {
            step: None,
            fresh: false,
            by: 0,
        },
    );
    assert_eq!(
        run.steps[0].session.as_deref(),
        Some("S2"),
        "a retry resumes"
    );
    let mut again = run.clone();
    start(&mut again, 0);
    end(&mut again, 0, Outcome::ExitFailure);
    ok(&mut again, Input::TimerFired { step: 0 });
    start(&mut again, 0);
    end(&mut again, 0, Outcome::ExitFailure);
    ok(
        &mut again,
        Input::Retry {
            step: None,
            fresh: true,
            by: 0,
        },
    );
    assert_eq!(again.steps[0].session, None, "--fresh starts anew");
}

#[test]
fn a_rate_limit_without_a_reset_waits_from_the_attempts_end() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::RateLimited {
            step: 0,
            attempt: 1,
            until_ms: None,
            wait_ms: 5_000,
        },
    );
    // The agent takes 20 s more to exit: the wait still runs from its end.
    let later = Ctx::at(T0 + 20_000);
    let d = step(
        &mut run,
        Input::Ended {
            step: 0,
            attempt: 1,
            end: End::of(Outcome::ExitFailure, "exit status 1"),
        },
        later,
    )
    .expect("accepted");
    assert!(has(
        &d,
        &Effect::Timer {
            step: 0,
            due: T0 + 25_000
        }
    ));
    assert_eq!(run.steps[0].counted_attempts, 0);
}

#[test]
fn a_rate_limit_falls_back_when_the_step_says_so() {
    let mut p = plan("a", &[]);
    p.agent = "claude".into();
    p.fallback = vec!["codex".into()];
    p.fallback_on_rate_limit = true;
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    let until_ms = T0 + 60_000;
    rate_limit(&mut run, 0, until_ms);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [S::Ready]);
    assert_eq!(run.steps[0].current_agent(), "codex");
}

#[test]
fn a_reset_long_past_is_an_ordinary_failure() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    rate_limit(&mut run, 0, T0 - RESET_PASSED_GRACE_MS - 1);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.steps[0].counted_attempts, 1);
    assert_eq!(run.steps[0].next_attempt_ms, Some(T0 + 2_000));
}

#[test]
fn facts_about_another_attempt_are_ignored() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let stale = ok(
        &mut run,
        Input::Ended {
            step: 0,
            attempt: 7,
            end: End::of(Outcome::Success, ""),
        },
    );
    assert!(stale.is_empty());
    let started = ok(
        &mut run,
        Input::Started {
            step: 0,
            attempt: 9,
            pid: Some(1),
            start_ticks: None,
            cgroup: None,
            job_id: None,
        },
    );
    assert!(started.is_empty());
    assert_eq!(states(&run), [S::Running]);
}

#[test]
fn started_records_a_cluster_job_without_a_pid() {
    let mut p = plan("a", &[]);
    p.executor = "slurm".into();
    let mut run = run_of(vec![p]);
    let d = start(&mut run, 0);
    assert_eq!(d.attempts[0].executor, "slurm");
    let d = ok(
        &mut run,
        Input::Started {
            step: 0,
            attempt: 1,
            pid: None,
            start_ticks: None,
            cgroup: None,
            job_id: Some("42".into()),
        },
    );
    assert_eq!(said(&d), ["attempt_started a"]);
    assert_eq!(d.attempts[0].pid, None);
    assert_eq!(d.attempts[0].job_id.as_deref(), Some("42"));
}

#[test]
fn started_records_the_pid_and_says_so() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(
        &mut run,
        Input::Started {
            step: 0,
            attempt: 1,
            pid: Some(4242),
            start_ticks: Some(77),
            cgroup: None,
            job_id: None,
        },
    );
    assert_eq!(said(&d), ["attempt_started a"]);
    assert_eq!(d.attempts[0].pid, Some(4242));
    assert_eq!(d.attempts[0].pid_start_ticks, Some(77));
}

#[test]
fn samples_stay_in_memory_and_reach_the_attempt_record_at_its_end() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(
        &mut run,
        Input::Sample {
            step: 0,
            attempt: 1,
            peak_rss_bytes: 5_000,
            cpu_ms: 30,
        },
    );
    assert!(d.is_empty());
    let d = end(&mut run, 0, Outcome::Success);
    assert_eq!(
        (d.attempts[0].peak_rss_bytes, d.attempts[0].cpu_ms),
        (5_000, 30)
    );
    assert_eq!(d.attempts[0].ended_ms, Some(T0));
}

#[test]
fn usage_adds_up_on_the_attempt_the_step_and_the_objective() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let delta = Usage {
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: 0.5,
        ..Usage::default()
    };
    for _ in 0..2 {
        ok(
            &mut run,
            Input::Usage {
                step: 0,
                attempt: 1,
                delta,
                model: "m".into(),
            },
        );
    }
    assert_eq!(run.obj.usage.tokens(), 30);
    assert_eq!(run.steps[0].usage.cost_usd, 1.0);
    let d = end(&mut run, 0, Outcome::Success);
    assert_eq!(d.attempts[0].usage.input_tokens, 20);
}

#[test]
fn checkpoints_and_progress_are_kept_on_the_step() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let d = ok(
        &mut run,
        Input::Checkpoint {
            step: 0,
            attempt: 1,
            json: "{\"n\":1}".into(),
        },
    );
    assert_eq!(said(&d), ["checkpoint a"]);
    let d = ok(
        &mut run,
        Input::Progress {
            step: 0,
            attempt: 1,
            percent: Some(50.0),
            message: "half".into(),
        },
    );
    assert_eq!(said(&d), ["progress a"]);
    assert_eq!(run.steps[0].checkpoint.as_deref(), Some("{\"n\":1}"));
    assert_eq!(run.steps[0].progress.percent, Some(50.0));
}

#[test]
fn an_objective_budget_alert_is_sent_once() {
    let mut run = run_of(vec![plan("a", &[])]);
    let alert = Input::Alert {
        key: Some("objective_usd:80".into()),
        percent: 80.0,
        budget: "objective_usd".into(),
        used: 8.0,
        limit: 10.0,
    };
    assert_eq!(said(&ok(&mut run, alert.clone())), ["budget_alert"]);
    assert!(ok(&mut run, alert).is_empty());
    let global = Input::Alert {
        key: None,
        percent: 80.0,
        budget: "daily_usd".into(),
        used: 8.0,
        limit: 10.0,
    };
    assert_eq!(said(&ok(&mut run, global)), ["budget_alert"]);
}

// ------------------------------------------------------------ budgets

#[test]
fn an_exhausted_budget_stops_running_attempts_and_fails_the_rest() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[]), plan("c", &["a"])]);
    start(&mut run, 0);
    let why = "objective budget of $1.00 exhausted".to_string();
    let d = ok(&mut run, Input::Exhaust { why: why.clone() });
    assert_eq!(said(&d), ["step b failed"]);
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Stop(StopReason::BudgetExceeded)
        }
    ));
    assert!(has(&d, &Effect::Dequeue { timers: true }));
    let d = end(&mut run, 0, Outcome::BudgetExceeded);
    assert_eq!(
        said(&d),
        [
            "attempt_ended a",
            "step a failed",
            "step c skipped",
            "objective failed"
        ]
    );
    assert_eq!(run.steps[0].message, why);
    assert_eq!(run.obj.message, why);
}

#[test]
fn a_second_exhaustion_changes_nothing() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(
        &mut run,
        Input::Exhaust {
            why: "first".into(),
        },
    );
    let d = ok(
        &mut run,
        Input::Exhaust {
            why: "second".into(),
        },
    );
    assert!(d.is_empty());
    assert_eq!(run.exhausted.as_deref(), Some("first"));
}

#[test]
fn an_exhausted_budget_beats_a_retry_and_a_rate_limit() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    rate_limit(&mut run, 0, T0 + 5_000);
    ok(
        &mut run,
        Input::Exhaust {
            why: "daily".into(),
        },
    );
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [S::Failed]);
    assert_eq!(run.obj.state, ObjState::Failed);
}

// ------------------------------------------------------------ ended while orchd was away

/// An attempt's end, told at `now` with the time it really ended.
fn end_told_at(now: Millis, ended_ms: Option<Millis>) -> Millis {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let end = End {
        ended_ms,
        ..End::of(Outcome::Success, "")
    };
    let input = Input::Ended {
        step: 0,
        attempt: 1,
        end,
    };
    let d = step(&mut run, input, Ctx::at(now)).unwrap_or_else(|e| panic!("refused: {e}"));
    d.attempts[0]
        .ended_ms
        .unwrap_or_else(|| panic!("no end time: {d:?}"))
}

#[test]
fn an_end_kept_by_the_shim_is_recorded_at_the_time_it_happened() {
    // Started at T0, ended 5 s later while no orchd ran, told 60 s after the start.
    assert_eq!(end_told_at(T0 + 60_000, Some(T0 + 5_000)), T0 + 5_000);
    // Unknown: when it is told.
    assert_eq!(end_told_at(T0 + 60_000, None), T0 + 60_000);
    // A clock that says it ended before it started, or in the future, is not believed.
    assert_eq!(end_told_at(T0 + 60_000, Some(T0 - 1_000)), T0);
    assert_eq!(end_told_at(T0 + 60_000, Some(T0 + 90_000)), T0 + 60_000);
}
