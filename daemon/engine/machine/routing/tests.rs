//! The routing rules as rows: each row is a set of candidates, a step's route, the budget
//! pressure and the time, and the agent that must be chosen.

use proptest::prelude::*;

use super::*;

const NOW: Millis = 1_800_000_000_000;

/// name, quality, tags, cost per success, success rate, p50 ms
fn c(
    name: &str,
    quality: u8,
    tags: &[&str],
    cost: Option<f64>,
    rate: Option<f64>,
    p50: Option<u64>,
) -> Candidate {
    Candidate {
        name: name.into(),
        order: 0,
        quality,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        cost_per_success: cost,
        success_rate: rate,
        p50_ms: p50,
        unavailable: None,
    }
}

fn off(mut c: Candidate, why: &str, until: Option<Millis>) -> Candidate {
    c.unavailable = Some(Unavailable {
        why: why.into(),
        until,
    });
    c
}

fn ordered(cs: Vec<Candidate>) -> Vec<Candidate> {
    cs.into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.order = i;
            c
        })
        .collect()
}

fn spec(p: RoutePriority, tags: &[&str]) -> RouteSpec {
    RouteSpec {
        priority: p,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn pressure() -> Pressure {
    Pressure {
        budget: "objective_usd".into(),
        percent: 85.0,
        threshold: 80.0,
    }
}

/// The three profiles most rows use: `opus` (best, dear, slow), `sonnet` (middle),
/// `haiku` (cheap, fast, weakest).
fn trio() -> Vec<Candidate> {
    ordered(vec![
        c(
            "opus",
            9,
            &["code", "plan"],
            Some(1.00),
            Some(0.9),
            Some(90_000),
        ),
        c("sonnet", 7, &["code"], Some(0.30), Some(0.8), Some(40_000)),
        c("haiku", 4, &["code"], Some(0.05), Some(0.6), Some(10_000)),
    ])
}

use RoutePriority::{Cost, Quality, Speed};

struct Row {
    name: &'static str,
    candidates: Vec<Candidate>,
    route: RouteSpec,
    pressure: Option<Pressure>,
    want: Option<&'static str>,
    /// A word the reason must hold.
    says: &'static str,
}

fn rows() -> Vec<Row> {
    let later = NOW + 60_000;
    vec![
        Row {
            name: "cost: cheapest expected cost per success",
            candidates: trio(),
            route: spec(Cost, &["code"]),
            pressure: None,
            want: Some("haiku"),
            says: "cheapest of 3",
        },
        Row {
            name: "quality: highest quality",
            candidates: trio(),
            route: spec(Quality, &["code"]),
            pressure: None,
            want: Some("opus"),
            says: "highest quality",
        },
        Row {
            name: "speed: lowest p50",
            candidates: trio(),
            route: spec(Speed, &["code"]),
            pressure: None,
            want: Some("haiku"),
            says: "fastest",
        },
        Row {
            name: "tags must all be covered",
            candidates: trio(),
            route: spec(Cost, &["code", "plan"]),
            pressure: None,
            want: Some("opus"),
            says: "only eligible",
        },
        Row {
            name: "quality ties go to the success rate",
            candidates: ordered(vec![
                c("a", 8, &[], None, Some(0.5), None),
                c("b", 8, &[], None, Some(0.9), None),
            ]),
            route: spec(Quality, &[]),
            pressure: None,
            want: Some("b"),
            says: "success rate 90%",
        },
        Row {
            name: "full ties go to the config order",
            candidates: ordered(vec![
                c("first", 5, &[], Some(0.1), Some(0.5), Some(10)),
                c("second", 5, &[], Some(0.1), Some(0.5), Some(10)),
            ]),
            route: spec(Quality, &[]),
            pressure: None,
            want: Some("first"),
            says: "",
        },
        Row {
            name: "unknown cost ranks after a known one",
            candidates: ordered(vec![
                c("new", 5, &[], None, None, None),
                c("known", 5, &[], Some(2.0), Some(0.5), Some(10)),
            ]),
            route: spec(Cost, &[]),
            pressure: None,
            want: Some("known"),
            says: "",
        },
        Row {
            name: "no quality given ranks after any given",
            candidates: ordered(vec![
                c("unranked", 0, &[], None, Some(1.0), None),
                c("ranked", 1, &[], None, Some(0.1), None),
            ]),
            route: spec(Quality, &[]),
            pressure: None,
            want: Some("ranked"),
            says: "",
        },
        Row {
            name: "a disabled profile is skipped",
            candidates: {
                let mut t = trio();
                t[2] = off(t[2].clone(), "disabled: broken", None);
                t
            },
            route: spec(Cost, &["code"]),
            pressure: None,
            want: Some("sonnet"),
            says: "cheapest of 2",
        },
        Row {
            name: "a rate-limited profile is skipped until its reset",
            candidates: {
                let mut t = trio();
                t[2] = off(t[2].clone(), "rate limited", Some(later));
                t
            },
            route: spec(Speed, &["code"]),
            pressure: None,
            want: Some("sonnet"),
            says: "fastest of 2",
        },
        Row {
            name: "a reset that has passed makes it eligible again",
            candidates: {
                let mut t = trio();
                t[2] = off(t[2].clone(), "rate limited", Some(NOW - 1));
                t
            },
            route: spec(Speed, &["code"]),
            pressure: None,
            want: Some("haiku"),
            says: "",
        },
        Row {
            name: "past the budget alert the cheapest wins whatever the priority",
            candidates: trio(),
            route: spec(Quality, &["code"]),
            pressure: Some(pressure()),
            want: Some("haiku"),
            says: "past its 80% alert",
        },
        Row {
            name: "budget pressure still skips unavailable profiles",
            candidates: {
                let mut t = trio();
                t[2] = off(t[2].clone(), "cooling down", Some(later));
                t
            },
            route: spec(Speed, &["code"]),
            pressure: Some(pressure()),
            want: Some("sonnet"),
            says: "instead of by speed",
        },
        Row {
            name: "a last-resort profile waits behind every other",
            candidates: ordered(vec![
                c(
                    "local",
                    2,
                    &["code", LAST_RESORT],
                    Some(0.0),
                    Some(1.0),
                    Some(1),
                ),
                c("paid", 8, &["code"], Some(3.0), Some(0.5), Some(100_000)),
            ]),
            route: spec(Cost, &["code"]),
            pressure: None,
            want: Some("paid"),
            says: "",
        },
        Row {
            name: "the last resort runs when nothing else may",
            candidates: ordered(vec![
                off(
                    c("paid", 8, &["code"], Some(3.0), None, None),
                    "rate limited",
                    Some(later),
                ),
                c("local", 2, &["code", LAST_RESORT], Some(0.0), None, None),
            ]),
            route: spec(Quality, &["code"]),
            pressure: None,
            want: Some("local"),
            says: "last resort",
        },
        Row {
            name: "nothing available: wait for the earliest reset",
            candidates: ordered(vec![
                off(
                    c("a", 5, &["code"], None, None, None),
                    "rate limited",
                    Some(later + 5),
                ),
                off(
                    c("b", 5, &["code"], None, None, None),
                    "rate limited",
                    Some(later),
                ),
            ]),
            route: spec(Cost, &["code"]),
            pressure: None,
            want: None,
            says: "waiting until",
        },
        Row {
            name: "nothing covers the tags",
            candidates: trio(),
            route: spec(Cost, &["review"]),
            pressure: None,
            want: None,
            says: "no agent profile has the tags [review]",
        },
        Row {
            name: "every covering profile disabled for good",
            candidates: ordered(vec![off(
                c("a", 5, &["code"], None, None, None),
                "disabled: off",
                None,
            )]),
            route: spec(Cost, &["code"]),
            pressure: None,
            want: None,
            says: "disabled until enabled again",
        },
    ]
}

#[test]
fn the_routing_rules() {
    for row in rows() {
        let r = route(&row.candidates, &row.route, row.pressure.as_ref(), NOW);
        assert_eq!(r.agent.as_deref(), row.want, "{}: {r:?}", row.name);
        assert!(
            r.reason.contains(row.says),
            "{}: reason `{}`",
            row.name,
            r.reason
        );
        assert_eq!(r.scores.len(), row.candidates.len(), "{}", row.name);
    }
}

#[test]
fn every_priority_has_a_row_in_the_order_table() {
    for p in RoutePriority::ALL {
        assert!(!keys(p).is_empty(), "{p:?}");
    }
}

#[test]
fn the_scores_say_why_a_profile_was_left_out() {
    let mut t = trio();
    t[0] = off(t[0].clone(), "disabled: flaky", Some(NOW + 1000));
    let r = route(&t, &spec(Cost, &["code"]), None, NOW);
    assert_eq!(r.scores[0].score, None);
    assert!(
        r.scores[0].excluded.starts_with("disabled: flaky until "),
        "{:?}",
        r.scores[0]
    );
    assert_eq!(r.scores[2].score, Some(0.05));
    assert!(r.scores[2].excluded.is_empty());
}

#[test]
fn waiting_for_a_reset_names_the_earliest_one() {
    let t = ordered(vec![
        off(
            c("a", 5, &[], None, None, None),
            "rate limited",
            Some(NOW + 9),
        ),
        off(
            c("b", 5, &[], None, None, None),
            "rate limited",
            Some(NOW + 3),
        ),
        off(c("c", 5, &[], None, None, None), "disabled", None),
    ]);
    let r = route(&t, &spec(Speed, &[]), None, NOW);
    assert_eq!(r.wait_until, Some(NOW + 3));
}

fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (
            0u8..=10,
            any::<bool>(),
            any::<bool>(),
            prop::option::of(0.0f64..10.0),
            prop::option::of(0.0f64..=1.0),
            prop::option::of(0u64..100_000),
            prop::option::of(prop::option::of(-1000i64..1000)),
        ),
        0..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (q, code, resort, cost, rate, p50, off))| {
                let mut tags = Vec::new();
                if code {
                    tags.push("code".to_string());
                }
                if resort {
                    tags.push(LAST_RESORT.to_string());
                }
                Candidate {
                    name: format!("p{i}"),
                    order: i,
                    quality: q,
                    tags,
                    cost_per_success: cost,
                    success_rate: rate,
                    p50_ms: p50,
                    unavailable: off.map(|until| Unavailable {
                        why: "off".into(),
                        until: until.map(|d| NOW + d),
                    }),
                }
            })
            .collect()
    })
}

fn priorities() -> impl Strategy<Value = RoutePriority> {
    prop::sample::select(RoutePriority::ALL.to_vec())
}

proptest! {
    /// Whatever the candidates: the chosen one is eligible (tags covered, available now),
    /// not a last resort while another is eligible, and no eligible one beats it.
    #[test]
    fn the_choice_is_eligible_and_unbeaten(cs in candidates(), p in priorities(), code in any::<bool>(), squeezed in any::<bool>()) {
        let tags: &[&str] = if code { &["code"] } else { &[] };
        let step = spec(p, tags);
        let pressure = squeezed.then(pressure);
        let r = route(&cs, &step, pressure.as_ref(), NOW);
        let effective = if squeezed { Cost } else { p };
        prop_assert_eq!(r.priority, effective);
        let ok = |c: &Candidate| covers(&c.tags, &step.tags)
            && c.unavailable.as_ref().is_none_or(|u| u.until.is_some_and(|t| t <= NOW));
        let resort = |c: &Candidate| c.tags.iter().any(|t| t == LAST_RESORT);
        match &r.agent {
            Some(name) => {
                let chosen = cs.iter().find(|c| &c.name == name).expect("a candidate");
                prop_assert!(ok(chosen));
                if resort(chosen) {
                    prop_assert!(!cs.iter().any(|c| ok(c) && !resort(c)));
                }
                for c in cs.iter().filter(|c| ok(c) && resort(c) == resort(chosen)) {
                    prop_assert!(compare(effective, chosen, c) != Ordering::Greater);
                }
                prop_assert_eq!(r.wait_until, None);
            }
            None => {
                prop_assert!(!cs.iter().any(ok));
                if let Some(t) = r.wait_until {
                    prop_assert!(t > NOW);
                }
            }
        }
    }

    /// The decision does not depend on the order the candidates are listed in (only on
    /// their config order).
    #[test]
    fn listing_order_does_not_matter(cs in candidates(), p in priorities()) {
        let step = spec(p, &[]);
        let a = route(&cs, &step, None, NOW).agent;
        let mut rev = cs.clone();
        rev.reverse();
        let b = route(&rev, &step, None, NOW).agent;
        prop_assert_eq!(a, b);
    }
}
