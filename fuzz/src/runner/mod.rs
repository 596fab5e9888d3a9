//! `daemon/runner/`: only the agent output parsers.

#[allow(dead_code)]
#[path = "../../../daemon/runner/agent.rs"]
pub mod agent;

// `daemon/store.rs` implements it (as `crate::runner::ThreadTotals`, re-exported the same way in
// `daemon/runner/mod.rs`).
pub use agent::ThreadTotals;
