//! Test harness: `TestDaemon` runs the real `orchd` in a private temp dir and drives it with the real `orchctl` and over gRPC.
//!
//! One module per concern, all re-exported here (tests write `support::NAME`):
//! - `daemon`: `TestDaemon` (temp dir, spawn, readiness, stop/crash/restart, kill on drop),
//!   temp dirs, `block_on`, health;
//! - `ctl`: running `orchctl` and other commands with deadlines, `Follower`, output helpers;
//! - `wait`: awaiting objective states over gRPC `Watch`, and `poll_until` for what has no
//!   event;
//! - `json`: accessors for `orchctl ... -o json` (status, attempts, events, seqs);
//! - `procfs`: processes in /proc and the cgroup v2 tree;
//! - `plans`: plan files, gRPC submit requests, progress lines, gate files;
//! - `skip`: tests that need root, Python's grpc or the real agent CLIs say when they are
//!   skipped, and where those CLIs are installed;
//! - `mockprovider`: a scripted Anthropic / OpenAI provider on 127.0.0.1 for the real CLIs;
//! - `users`: throwaway users (and group `orch`) for the multi-user tests, as root.

mod ctl;
mod daemon;
mod json;
mod mockprovider;
mod plans;
mod procfs;
mod skip;
mod users;
mod wait;

pub use ctl::*;
pub use daemon::*;
pub use json::*;
pub use mockprovider::*;
pub use plans::*;
pub use procfs::*;
pub use skip::*;
pub use users::*;
pub use wait::*;
