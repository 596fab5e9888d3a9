//! Safety gates as the core sees them (the reason a step waits) and worktree branches.

use super::*;
use crate::model::Branch;

#[test]
fn a_step_gated_by_a_safety_rule_waits_with_the_rule_as_its_message() {
    let mut p = gated("push", &[]);
    p.approval_reason = "command matches safety rule `git push*`".into();
    let (run, d) = new(vec![p]);
    assert_eq!(run.steps[0].state, S::AwaitingApproval);
    assert_eq!(
        run.steps[0].message,
        "command matches safety rule `git push*`"
    );
    assert!(said(&d).contains(&"approval_requested push".to_string()));
}

#[test]
fn a_steps_branch_is_recorded_and_keeps_its_base_when_only_the_head_moves() {
    let mut run = run_of(vec![plan("a", &[])]);
    start(&mut run, 0);
    let made = Branch {
        name: "orch/obj/a".into(),
        base: "b0".into(),
        head: "b0".into(),
    };
    let d = ok(
        &mut run,
        Input::Branch {
            step: 0,
            attempt: 1,
            branch: made.clone(),
        },
    );
    assert!(d.steps.contains(&0) && d.events.is_empty());
    assert_eq!(run.steps[0].branch.as_ref(), Some(&made));
    // After the attempt the runner knows the head only.
    let d = ok(
        &mut run,
        Input::Branch {
            step: 0,
            attempt: 1,
            branch: Branch {
                name: "orch/obj/a".into(),
                base: String::new(),
                head: "h1".into(),
            },
        },
    );
    assert!(d.steps.contains(&0));
    let b = run.steps[0].branch.clone().unwrap_or_default();
    assert_eq!((b.base.as_str(), b.head.as_str()), ("b0", "h1"));
    // The same again changes nothing.
    let again = Input::Branch {
        step: 0,
        attempt: 1,
        branch: b.clone(),
    };
    assert!(ok(&mut run, again).is_empty());
}

#[test]
fn a_branch_for_an_unknown_step_is_refused() {
    let mut run = run_of(vec![plan("a", &[])]);
    let e = refused(
        &mut run,
        Input::Branch {
            step: 7,
            attempt: 1,
            branch: Branch::default(),
        },
    );
    assert_eq!(e, Invalid::NotFound("objective OBJ has no step #7".into()));
}
