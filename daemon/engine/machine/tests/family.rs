//! Sub-objectives: who may have a child, how deep they nest, and what reaches them.

use super::*;
use crate::model::ParentRef;

fn running_parent() -> Run {
    let mut run = run_of(vec![plan("plan", &[])]);
    start(&mut run, 0);
    run
}

#[test]
fn a_running_attempt_may_have_a_child_one_level_down() {
    let run = running_parent();
    let p = admit_child(&run, "plan", 1, 3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p,
        ParentRef {
            objective_id: "OBJ".into(),
            step_id: "plan".into(),
            attempt: 1,
            depth: 1
        }
    );
}

#[test]
fn the_nesting_limit_refuses_the_next_level() {
    let mut run = running_parent();
    for (depth, allowed) in [(0, true), (1, true), (2, true), (3, false), (7, false)] {
        run.obj.parent = (depth > 0).then(|| ParentRef {
            objective_id: "UP".into(),
            step_id: "s".into(),
            attempt: 1,
            depth,
        });
        let r = admit_child(&run, "plan", 1, 3);
        assert_eq!(r.is_ok(), allowed, "parent at depth {depth}: {r:?}");
        if let Err(e) = r {
            assert_eq!(
                e.to_string(),
                format!(
                    "sub-objective refused: nesting limit reached (objective OBJ is at depth {depth}, and max_sub_objective_depth is 3)"
                )
            );
        }
    }
    // A limit of 0 allows no sub-objectives at all.
    run.obj.parent = None;
    assert!(admit_child(&run, "plan", 1, 0).is_err());
}

#[test]
fn only_the_running_attempt_of_a_known_step_qualifies() {
    let run = running_parent();
    let e = admit_child(&run, "nope", 1, 3).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("sub-objective refused: objective OBJ has no step `nope`")
    );
    let e = admit_child(&run, "plan", 2, 3).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("sub-objective refused: attempt 2 of step `plan` of objective OBJ is not running")
    );
    let idle = run_of(vec![plan("plan", &[])]);
    assert!(admit_child(&idle, "plan", 1, 3).is_err());
}

#[test]
fn a_parent_being_cancelled_takes_no_children() {
    let mut run = running_parent();
    ok(&mut run, Input::Cancel { by: OWNER });
    assert!(run.cancelling);
    let e = admit_child(&run, "plan", 1, 3).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("sub-objective refused: objective OBJ is being cancelled")
    );
}

#[test]
fn cancel_and_exhaustion_reach_the_children_and_nothing_else_does() {
    assert_eq!(
        cascade(&Input::Cancel { by: 7 }),
        Some(Input::Cancel { by: 7 })
    );
    assert_eq!(
        cascade(&Input::Exhaust {
            why: "objective budget $1.00 used up".into()
        }),
        Some(Input::Exhaust {
            why: "parent objective: objective budget $1.00 used up".into()
        })
    );
    for other in [
        Input::Pause { by: 1 },
        Input::Resume { by: 1 },
        Input::Retry {
            step: None,
            fresh: false,
            by: 1,
        },
        Input::TimerFired { step: 0 },
        Input::Adopt { child: "C".into() },
    ] {
        assert_eq!(cascade(&other), None, "{other:?}");
    }
}

#[test]
fn adopting_and_child_usage_change_only_the_objective_record() {
    let mut run = running_parent();
    let d = ok(&mut run, Input::Adopt { child: "C1".into() });
    assert!(d.objective && d.events.is_empty() && d.steps.is_empty());
    ok(&mut run, Input::Adopt { child: "C1".into() });
    ok(&mut run, Input::Adopt { child: "C2".into() });
    assert_eq!(run.obj.children, vec!["C1", "C2"]);
    let delta = Usage {
        cost_usd: 0.25,
        input_tokens: 10,
        ..Usage::default()
    };
    ok(&mut run, Input::ChildUsage { delta });
    ok(&mut run, Input::ChildUsage { delta });
    assert_eq!(run.obj.sub_usage.cost_usd, 0.5);
    assert_eq!(run.obj.sub_usage.input_tokens, 20);
    assert_eq!(run.obj.usage, Usage::default(), "its own usage is apart");
}
