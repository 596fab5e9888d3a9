//! Waiting out a provider's rate limit is bounded: after `max_rate_limit_waits` waits
//! the step fails, saying how many it made, without using up its attempts.

use std::time::Duration;

use crate::support::TestDaemon;

#[test]
fn a_provider_that_keeps_refusing_fails_the_step_after_the_allowed_waits() {
    let d = TestDaemon::start();
    // Refused until the next second, every time.
    let script = "until=$(date -u -d '+1 second' +%Y-%m-%dT%H:%M:%SZ); \
                  echo \"::orch-usage::{\\\"rate_limited_until\\\":\\\"$until\\\"}\"; exit 1";
    let plan = d.write_file(
        "limited.toml",
        &format!(
            "name = \"limited\"\n\n[[steps]]\nid = \"ask\"\ncommand = {}\nretry = {{ max_attempts = 2, max_rate_limit_waits = 2 }}\n",
            toml::Value::from(vec!["sh", "-c", script])
        ),
    );
    let id = d.submit(&[plan.to_str().expect("utf-8 path")], 0);
    let v = d.wait_ended(&id, Duration::from_secs(30));
    let step = &v["steps"][0];
    assert_eq!(step["state"], "failed", "{v}");
    let attempts = step["attempts"].as_array().map_or(0, Vec::len);
    assert_eq!(attempts, 3, "two waits, then the refusal that ends it: {v}");
    let message = step["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(
            "rate limited by the provider again after 2 waits for its reset (max_rate_limit_waits = 2); the next reset is at "
        ),
        "{message}"
    );
}
