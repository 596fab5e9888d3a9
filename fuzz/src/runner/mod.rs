//! `daemon/runner/`: only the agent output parsers.

#[allow(dead_code)]
#[path = "../../../daemon/runner/agent.rs"]
pub mod agent;

pub use agent::ThreadTotals;
