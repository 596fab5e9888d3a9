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
//! - `skip`: tests that need root or Python's grpc say when they are skipped;
//! - `users`: throwaway users (and group `orch`) for the multi-user tests, as root.

mod ctl;
mod daemon;
mod json;
mod plans;
mod procfs;
mod skip;
mod users;
mod wait;

pub use ctl::*;
pub use daemon::*;
pub use json::*;
pub use plans::*;
pub use procfs::*;
pub use skip::*;
pub use users::*;
pub use wait::*;
