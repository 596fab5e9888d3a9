//! Cancel, pause, resume, approvals, retry, recovery and owners.

use super::*;

// ------------------------------------------------------------ cancel

#[test]
fn cancel_stops_running_attempts_and_cancels_the_rest_at_once() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[]), plan("c", &["a"])]);
    start(&mut run, 0);
    let d = ok(&mut run, Input::Cancel { by: 7 });
    assert_eq!(said(&d), ["step b cancelled", "step c cancelled"]);
    assert_eq!(run.steps[1].message, "cancelled by uid 7");
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Stop(StopReason::Cancelled)
        }
    ));
    assert_eq!(run.obj.state, ObjState::Running);
    let d = end(&mut run, 0, Outcome::Cancelled);
    assert_eq!(
        said(&d),
        ["attempt_ended a", "step a cancelled", "objective cancelled"]
    );
    assert!(has(&d, &Effect::Ended));
}

#[test]
fn an_attempt_failing_while_its_objective_is_cancelled_is_cancelled_not_retried() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Cancel { by: 0 });
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(states(&run), [S::Cancelled]);
    assert_eq!(run.obj.state, ObjState::Cancelled);
}

#[test]
fn cancel_arriving_mid_backoff_ends_the_objective_and_drops_its_timer() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::ExitFailure);
    let d = ok(&mut run, Input::Cancel { by: OWNER });
    assert_eq!(said(&d), ["step a cancelled", "objective cancelled"]);
    assert!(has(&d, &Effect::Dequeue { timers: true }));
    assert!(has(&d, &Effect::Ended));
    assert_eq!(run.steps[0].next_attempt_ms, None);
}

#[test]
fn a_second_cancel_is_accepted_and_does_nothing() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Cancel { by: 0 });
    assert!(ok(&mut run, Input::Cancel { by: 0 }).is_empty());
}

// ------------------------------------------------------------ pause and resume

#[test]
fn pause_holds_ready_steps_and_freezes_running_ones() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[]), plan("c", &["a"])]);
    start(&mut run, 0);
    let d = ok(&mut run, Input::Pause { by: 5 });
    assert_eq!(
        said(&d),
        ["objective paused", "step a paused", "step b paused"]
    );
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Pause
        }
    ));
    assert!(has(&d, &Effect::Dequeue { timers: false }));
    assert_eq!(run.obj.state, ObjState::Paused);
}

#[test]
fn pause_is_refused_twice_and_while_cancelling() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    assert_eq!(
        refused(&mut run, Input::Pause { by: 0 }),
        Invalid::FailedPrecondition("objective OBJ is already paused".into())
    );
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Cancel { by: 0 });
    assert_eq!(
        refused(&mut run, Input::Pause { by: 0 }),
        Invalid::FailedPrecondition("objective OBJ is being cancelled".into())
    );
}

#[test]
fn resume_is_refused_unless_paused() {
    let mut run = run_of(vec![plan("a", &[])]);
    assert_eq!(
        refused(&mut run, Input::Resume { by: 0 }),
        Invalid::FailedPrecondition("objective OBJ is pending, not paused".into())
    );
}

#[test]
fn resume_thaws_running_attempts_queues_held_steps_and_derives_the_state_again() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    let d = ok(&mut run, Input::Resume { by: 0 });
    assert_eq!(
        said(&d),
        ["step a running", "step b ready", "objective running"]
    );
    assert!(has(
        &d,
        &Effect::Order {
            step: 0,
            order: Control::Resume
        }
    ));
    assert!(has(&d, &Effect::Enqueue { step: 1 }));
}

#[test]
fn a_step_finishing_while_paused_holds_its_dependents() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &["a"])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    end(&mut run, 0, Outcome::Success);
    assert_eq!(states(&run), [S::Succeeded, S::Paused]);
    assert_eq!(run.obj.state, ObjState::Paused);
}

#[test]
fn a_backoff_timer_firing_while_paused_holds_the_step() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::ExitFailure);
    ok(&mut run, Input::Pause { by: 0 });
    assert_eq!(states(&run), [S::Backoff]);
    let d = ok(&mut run, Input::TimerFired { step: 0 });
    assert_eq!(said(&d), ["step a paused"]);
    assert!(d.effects.is_empty());
}

#[test]
fn the_last_step_failing_while_paused_still_ends_the_objective() {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    let mut run = run_of(vec![p]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    let d = end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.obj.state, ObjState::Failed);
    assert!(has(&d, &Effect::Ended));
}

// ------------------------------------------------------------ approvals

#[test]
fn approve_readies_the_step_and_deny_fails_it_and_its_dependents() {
    let mut run = run_of(vec![gated("a", &[]), plan("b", &["a"])]);
    let d = ok(
        &mut run,
        Input::Approve {
            step: "a".into(),
            approve: true,
            reason: String::new(),
            by: 9,
        },
    );
    assert_eq!(
        said(&d),
        ["approval_answered a", "step a ready", "objective pending"]
    );
    assert_eq!(run.steps[0].message, "approved by uid 9");
    let mut run = run_of(vec![gated("a", &[]), plan("b", &["a"])]);
    let d = ok(
        &mut run,
        Input::Approve {
            step: "a".into(),
            approve: false,
            reason: "too risky".into(),
            by: 9,
        },
    );
    assert_eq!(
        said(&d),
        [
            "approval_answered a",
            "step a failed",
            "step b skipped",
            "objective failed"
        ]
    );
    assert_eq!(run.steps[0].message, "denied by uid 9: too risky");
}

#[test]
fn approvals_are_refused_for_unknown_steps_and_steps_not_waiting() {
    let mut run = run_of(vec![gated("a", &[]), plan("b", &[])]);
    let answer = |step: &str| Input::Approve {
        step: step.into(),
        approve: true,
        reason: String::new(),
        by: 0,
    };
    assert_eq!(
        refused(&mut run, answer("zz")),
        Invalid::NotFound("objective OBJ has no step `zz`".into())
    );
    assert_eq!(
        refused(&mut run, answer("b")),
        Invalid::FailedPrecondition("step `b` is not awaiting approval (ready)".into())
    );
}

#[test]
fn pause_during_approval_keeps_the_gate_and_an_approval_then_holds_the_step() {
    let mut run = run_of(vec![gated("a", &[])]);
    ok(&mut run, Input::Pause { by: 0 });
    assert_eq!(states(&run), [S::AwaitingApproval]);
    ok(
        &mut run,
        Input::Approve {
            step: "a".into(),
            approve: true,
            reason: String::new(),
            by: 0,
        },
    );
    assert_eq!(states(&run), [S::Paused]);
    let d = ok(&mut run, Input::Resume { by: 0 });
    assert!(has(&d, &Effect::Enqueue { step: 0 }));
}

#[test]
fn cancel_during_approval_cancels_the_gate() {
    let mut run = run_of(vec![gated("a", &[])]);
    let d = ok(&mut run, Input::Cancel { by: 0 });
    assert_eq!(said(&d), ["step a cancelled", "objective cancelled"]);
}

// ------------------------------------------------------------ ended objectives and retry

fn ended_run() -> Run {
    let mut p = plan("a", &[]);
    p.retry.max_attempts = 1;
    let mut run = run_of(vec![p, plan("b", &["a"]), plan("c", &[])]);
    start(&mut run, 0);
    start(&mut run, 2);
    end(&mut run, 2, Outcome::Success);
    end(&mut run, 0, Outcome::ExitFailure);
    assert_eq!(run.obj.state, ObjState::Failed);
    run
}

#[test]
fn control_of_an_ended_objective_is_refused_saying_so() {
    let mut run = ended_run();
    for (input, verb) in [
        (Input::Cancel { by: 0 }, "cancel"),
        (Input::Pause { by: 0 }, "pause"),
        (Input::Resume { by: 0 }, "resume"),
        (Input::Exhaust { why: String::new() }, "change"),
    ] {
        assert_eq!(
            refused(&mut run, input),
            Invalid::FailedPrecondition(format!(
                "cannot {verb} objective OBJ: it has already ended (failed)"
            ))
        );
    }
}

#[test]
fn retry_of_an_objective_that_has_not_ended_is_refused() {
    let mut run = run_of(vec![plan("a", &[])]);
    assert_eq!(
        refused(
            &mut run,
            Input::Retry {
                step: None,
                fresh: false,
                by: 0
            }
        ),
        Invalid::FailedPrecondition(
            "objective OBJ has not ended; only an ended objective can be retried".into()
        )
    );
}

#[test]
fn retry_reruns_failed_steps_and_what_they_skipped_with_fresh_attempts() {
    let mut run = ended_run();
    let d = ok(
        &mut run,
        Input::Retry {
            step: None,
            fresh: false,
            by: 3,
        },
    );
    assert_eq!(
        said(&d),
        [
            "step a waiting",
            "step b waiting",
            "step a ready",
            "objective running"
        ]
    );
    assert_eq!(states(&run), [S::Ready, S::Waiting, S::Succeeded]);
    assert_eq!(run.steps[0].counted_attempts, 0);
    assert_eq!(run.steps[0].attempts, 1, "attempt numbers keep growing");
    assert_eq!(run.obj.ended_seq, None);
    assert!(run.obj.message.is_empty());
}

#[test]
fn retry_of_one_step_is_refused_unless_it_failed_or_was_cancelled() {
    let mut run = ended_run();
    assert_eq!(
        refused(
            &mut run,
            Input::Retry {
                step: Some("c".into()),
                fresh: false,
                by: 0
            }
        ),
        Invalid::FailedPrecondition(
            "step `c` is succeeded; only failed or cancelled steps can be retried".into()
        )
    );
    assert_eq!(
        refused(
            &mut run,
            Input::Retry {
                step: Some("x".into()),
                fresh: false,
                by: 0
            }
        ),
        Invalid::NotFound("objective OBJ has no step `x`".into())
    );
}

#[test]
fn retry_with_nothing_to_rerun_is_refused() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    end(&mut run, 0, Outcome::Success);
    assert_eq!(
        refused(
            &mut run,
            Input::Retry {
                step: None,
                fresh: false,
                by: 0
            }
        ),
        Invalid::FailedPrecondition(
            "objective OBJ has no failed or cancelled step to retry".into()
        )
    );
}

// ------------------------------------------------------------ recovery

#[test]
fn recovery_ends_open_attempts_interrupted_and_runs_their_steps_again() {
    let mut run = run_of(vec![plan("a", &[]), plan("b", &[])]);
    start(&mut run, 0);
    start(&mut run, 1);
    end(&mut run, 1, Outcome::ExitFailure);
    let open = run
        .running
        .get(&0)
        .map(|r| r.attempt.clone())
        .into_iter()
        .collect();
    // As loaded from the store: nothing is known to run.
    let mut loaded = Run::new(run.obj.clone(), run.steps.clone());
    let d = ok(
        &mut loaded,
        Input::Recover {
            gone: open,
            kept: vec![],
        },
    );
    assert_eq!(said(&d), ["attempt_ended a", "step a ready"]);
    assert_eq!(d.attempts[0].outcome, Some(Outcome::Interrupted));
    assert!(has(&d, &Effect::Enqueue { step: 0 }));
    assert!(has(
        &d,
        &Effect::Timer {
            step: 1,
            due: T0 + 2_000
        }
    ));
}

#[test]
fn recovery_of_a_paused_objective_holds_its_steps() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Pause { by: 0 });
    let open = vec![run.running[&0].attempt.clone()];
    let mut loaded = Run::new(run.obj.clone(), run.steps.clone());
    assert!(loaded.paused);
    let d = ok(
        &mut loaded,
        Input::Recover {
            gone: open,
            kept: vec![],
        },
    );
    assert_eq!(loaded.steps[0].message, "interrupted; held while paused");
    assert!(
        !d.effects
            .iter()
            .any(|e| matches!(e, Effect::Enqueue { .. }))
    );
}

#[test]
fn recovery_keeps_attempts_an_executor_reattached_to() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let kept = vec![run.running[&0].attempt.clone()];
    let mut loaded = Run::new(run.obj.clone(), run.steps.clone());
    let d = ok(&mut loaded, Input::Recover { gone: vec![], kept });
    assert!(d.events.is_empty());
    assert_eq!(states(&loaded), [S::Running]);
    assert!(loaded.running.contains_key(&0));
    end(&mut loaded, 0, Outcome::Success);
    assert_eq!(loaded.obj.state, ObjState::Succeeded);
}

// ------------------------------------------------------------ owners

#[test]
fn root_the_daemon_and_the_owner_may_act_others_may_not() {
    let daemon = 999;
    for (caller, allowed) in [(0, true), (daemon, true), (OWNER, true), (1001, false)] {
        let r = authorize(caller, daemon, OWNER, "cancel", "OBJ");
        assert_eq!(r.is_ok(), allowed, "uid {caller}");
    }
    assert_eq!(
        authorize(1001, daemon, OWNER, "pause", "OBJ"),
        Err(Invalid::PermissionDenied(
            "uid 1001 may not pause objective OBJ (owned by uid 1000)".into()
        ))
    );
}

// ------------------------------------------------------------ remove

#[test]
fn the_precondition_table_needs_an_end_for_retry_and_remove_only() {
    let retry = Input::Retry {
        step: None,
        fresh: false,
        by: 0,
    };
    for (input, want) in [
        (Input::Remove { by: 0 }, Needs::Ended),
        (retry, Needs::Ended),
        (Input::Cancel { by: 0 }, Needs::NotEnded),
        (Input::Pause { by: 0 }, Needs::NotEnded),
        (Input::Resume { by: 0 }, Needs::NotEnded),
        (Input::TimerFired { step: 0 }, Needs::NotEnded),
    ] {
        assert_eq!(needs(&input), want, "{input:?}");
    }
}

#[test]
fn remove_of_an_objective_that_has_not_ended_is_refused_saying_what_to_do() {
    // Pending, running, paused, awaiting approval: each refused, nothing changed.
    let mut pending = run_of(vec![plan("a", &["b"]), plan("b", &[])]);
    let mut running = run_of(vec![plan("a", &[])]);
    start(&mut running, 0);
    let mut paused = run_of(vec![plan("a", &[])]);
    ok(&mut paused, Input::Pause { by: OWNER });
    let mut gated_run = run_of(vec![gated("a", &[])]);
    for (run, state) in [
        (&mut pending, "pending"),
        (&mut running, "running"),
        (&mut paused, "paused"),
        (&mut gated_run, "awaiting_approval"),
    ] {
        let e = refused(run, Input::Remove { by: OWNER });
        let Invalid::FailedPrecondition(text) = e else {
            panic!("not a precondition: {e:?}");
        };
        assert!(
            text.starts_with(&format!("cannot remove objective OBJ: it is {state}")),
            "{text}"
        );
        assert!(text.contains("orchctl cancel OBJ"), "{text}");
    }
}

#[test]
fn remove_of_an_ended_objective_records_the_removal_and_asks_for_it() {
    let mut run = ended_run();
    let d = ok(&mut run, Input::Remove { by: OWNER });
    assert_eq!(said(&d), ["objective_removed"]);
    assert_eq!(
        d.events[0].kind,
        EventKind::ObjectiveRemoved {
            by_uid: OWNER,
            state: ObjState::Failed
        }
    );
    assert_eq!(d.effects, [Effect::Remove]);
    // Nothing of the objective's own records changes: they are deleted whole.
    assert!(!d.objective && d.steps.is_empty() && d.attempts.is_empty());
    assert_eq!(run.obj.state, ObjState::Failed);
}

#[test]
fn a_cancelled_objective_can_be_removed_once_it_ended() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    ok(&mut run, Input::Cancel { by: OWNER });
    assert!(matches!(
        refused(&mut run, Input::Remove { by: OWNER }),
        Invalid::FailedPrecondition(_)
    ));
    end(&mut run, 0, Outcome::Cancelled);
    assert_eq!(run.obj.state, ObjState::Cancelled);
    let d = ok(&mut run, Input::Remove { by: 0 });
    assert!(has(&d, &Effect::Remove));
}
