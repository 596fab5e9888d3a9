//! Reading what `orchctl ... -o json` prints: status accessors (steps, attempts, pids, states),
//! timestamps, JSON Lines, and the events of `watch -o json` (kinds, states, seqs).

use serde_json::Value;

/// `v` as an array, or a panic naming `what`.
pub fn array<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a JSON array: {v}"))
}

/// The step with id `id` of a status object.
pub fn step<'a>(status: &'a Value, id: &str) -> &'a Value {
    array(&status["steps"], "steps")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step `{id}` in {status}"))
}

/// The attempts of a step.
pub fn attempts(step: &Value) -> &Vec<Value> {
    array(&step["attempts"], "attempts")
}

/// The attempt outcomes of a step, in order (`(running)` for one that has none yet).
pub fn outcomes(step: &Value) -> Vec<String> {
    attempts(step)
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("(running)").to_string())
        .collect()
}

/// Whether the objective has ended.
pub fn ended(status: &Value) -> bool {
    matches!(
        status["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Whether the first step's first attempt has a pid.
pub fn first_attempt_has_pid(status: &Value) -> bool {
    status["steps"][0]["attempts"][0]["pid"].as_u64().is_some()
}

/// The pid of the first step's first attempt.
pub fn first_pid(status: &Value) -> u32 {
    let pid = status["steps"][0]["attempts"][0]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("first attempt has no pid: {status}"));
    u32::try_from(pid).expect("pid fits u32")
}

/// An RFC 3339 timestamp in UTC.
pub fn rfc3339(v: &Value, what: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{what} `{text}` is not RFC 3339: {e}"));
    assert_eq!(
        t.offset().local_minus_utc(),
        0,
        "{what} `{text}` is not in UTC"
    );
    t
}

/// The JSON Lines of `text` (blank lines skipped), panicking on a line that is not JSON; `what` says where
/// they came from.
pub fn json_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a line is not JSON ({e}): {l}\nfrom {what}"))
        })
        .collect()
}

/// The events of `kind`.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Whether `e` is the objective entering `state`.
pub fn is_state(e: &Value, state: &str) -> bool {
    e["kind"] == "objective_state" && e["state"] == state
}

/// The sequence number of an event.
pub fn seq(e: &Value) -> u64 {
    e["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without a numeric seq: {e}"))
}

/// The sequence numbers of `events`, in order.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(seq).collect()
}

/// Panics unless the seqs are strictly increasing (so: no duplicates, never backwards).
pub fn assert_strictly_increasing(seqs: &[u64], what: &str) {
    for w in seqs.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: event seq {} is followed by {} (duplicate or backwards); all: {seqs:?}",
            w[0],
            w[1]
        );
    }
}
