//! The inputs and outputs of the MCP tools: serde types whose JSON Schemas (schemars) are
//! what `tools/list` publishes. Outputs reuse the `-o json` shapes of `orchctl` (`json.rs`),
//! with the fields clients rely on typed and the rest carried as they are.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The format of plan text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanFormat {
    Toml,
    Yaml,
    Json,
}

/// `submit`: exactly one of `plan`, `plan_text`, `command` or `agent` (+ `prompt`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitIn {
    /// A plan as a JSON object (the same keys as a plan file: name, defaults, steps, ...)
    #[serde(default)]
    pub plan: Option<Map<String, Value>>,
    /// A plan as text, in `format`
    #[serde(default)]
    pub plan_text: Option<String>,
    /// The format of `plan_text` (toml, yaml or json)
    #[serde(default)]
    pub format: Option<PlanFormat>,
    /// A program to run as a one-step objective (with `args`)
    #[serde(default)]
    pub command: Option<String>,
    /// The arguments of `command`
    #[serde(default)]
    pub args: Vec<String>,
    /// An agent profile to run as a one-step objective (with `prompt`)
    #[serde(default)]
    pub agent: Option<String>,
    /// The prompt for `agent`
    #[serde(default)]
    pub prompt: Option<String>,
    /// The objective's name
    #[serde(default)]
    pub name: Option<String>,
    /// Working directory (absolute) [default: the MCP server's]
    #[serde(default)]
    pub workdir: Option<String>,
    /// Environment variables for every step
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Attempts allowed after the first one
    #[serde(default)]
    pub retries: Option<u32>,
    /// Wall-clock limit per attempt, e.g. "30s", "10m"
    #[serde(default)]
    pub timeout: Option<String>,
    /// Budget of the objective in US dollars
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Idempotency key: the same key returns the same objective
    #[serde(default)]
    pub request_id: Option<String>,
    /// Validate and return the resolved plan; nothing is stored
    #[serde(default)]
    pub dry_run: bool,
    /// Wait until the objective ends and return its final status
    #[serde(default)]
    pub wait: bool,
}

/// What `submit` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SubmitOut {
    /// The objective's id (empty for a dry run)
    pub id: String,
    /// True when `request_id` matched an objective submitted before
    pub existing: bool,
    /// The resolved plan (a dry run)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    /// The final status (with `wait`)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ObjectiveOut>,
}

/// An objective's id.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdIn {
    /// Objective id
    pub id: String,
}

/// `retry`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryIn {
    /// Objective id
    pub id: String,
    /// Only this step [default: every failed or cancelled step]
    #[serde(default)]
    pub step: Option<String>,
    /// Start the agents' sessions afresh instead of resuming them
    #[serde(default)]
    pub fresh: bool,
}

/// `approve`: answers an approval gate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveIn {
    /// Objective id
    pub id: String,
    /// The step awaiting approval
    pub step: String,
    /// true approves, false denies
    pub approve: bool,
    /// Why (recorded in the events and the audit trail)
    #[serde(default)]
    pub reason: Option<String>,
}

/// `list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListIn {
    /// Only objectives in this state (pending, running, paused, awaiting_approval, succeeded, failed, cancelled)
    #[serde(default)]
    pub state: Option<String>,
    /// At most this many, newest first
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `logs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsIn {
    /// Objective id
    pub id: String,
    /// Only this step [default: every step's latest attempt]
    #[serde(default)]
    pub step: Option<String>,
    /// This attempt [default: the latest]
    #[serde(default)]
    pub attempt: Option<u32>,
    /// The last N lines of each log [default: 100; 0 = all]
    #[serde(default)]
    pub tail: Option<u64>,
}

/// `usage`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageIn {
    /// Objective id [default: totals over every objective]
    #[serde(default)]
    pub id: Option<String>,
}

/// An objective's status: the `orchctl status -o json` object.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ObjectiveOut {
    /// Objective id
    pub id: String,
    /// Its name
    pub name: String,
    /// pending, running, paused, awaiting_approval, succeeded, failed or cancelled
    pub state: String,
    /// Why it ended the way it did, when it failed or was cancelled
    pub message: Option<String>,
    /// Its steps, in plan order, with their attempts
    pub steps: Vec<Value>,
    /// The other fields of `orchctl status -o json` (usage, budget, times, owner, ...)
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `list`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ListOut {
    /// The objectives (as `orchctl list -o json`), newest first
    pub objectives: Vec<Value>,
}

/// `logs`' answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogsOut {
    /// Objective id
    pub id: String,
    /// The captured output (UTF-8, invalid bytes replaced), with `==> STEP (attempt N) <==`
    /// headers when several steps are shown
    pub text: String,
    /// True when the output was cut at the size limit
    pub truncated: bool,
}

/// `agents`' answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentsOut {
    /// The agent profiles (what MAOS called roles), as `orchctl agents -o json`
    pub agents: Vec<Value>,
}

/// `usage`'s answer: the `orchctl usage -o json` object.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UsageOut {
    /// US dollars spent
    pub cost_usd: f64,
    /// The other fields of `orchctl usage -o json` (tokens by kind, budgets, today, this month)
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl ObjectiveOut {
    /// The typed view of a status JSON object (as built by `json::objective`).
    pub fn from_json(value: Value) -> Result<Self, String> {
        serde_json::from_value(value).map_err(|e| format!("internal: status JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_submit_keys_are_refused() {
        let e = serde_json::from_value::<SubmitIn>(serde_json::json!({"comand": "true"}));
        let text = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("unknown field `comand`"), "{text}");
    }

    #[test]
    fn objective_out_keeps_every_field() {
        let v = serde_json::json!({
            "id": "01J", "name": "n", "state": "running", "message": null,
            "steps": [{"id": "a"}], "priority": 3, "usage": {"cost_usd": 0.5},
        });
        let o = ObjectiveOut::from_json(v.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.state, "running");
        assert_eq!(serde_json::to_value(&o).ok(), Some(v));
    }

    #[test]
    fn schemas_are_objects() {
        for schema in [
            serde_json::to_value(schemars::schema_for!(SubmitIn)),
            serde_json::to_value(schemars::schema_for!(ObjectiveOut)),
            serde_json::to_value(schemars::schema_for!(LogsOut)),
        ] {
            let schema = schema.unwrap_or_default();
            assert_eq!(schema["type"], "object", "{schema}");
        }
    }
}
