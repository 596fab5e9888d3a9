//! End-to-end tests (`e2e`): the real `orchd` and `orchctl` binaries on a private socket and state dir.

mod agents;
mod approval_state;
mod cli;
mod config;
mod durability;
mod events;
mod exhaustion;
mod full_disk;
mod grpc;
mod holes;
mod lifecycle;
mod multiuser;
mod plans;
mod prompts;
mod rate_limits;
mod real_agents;
mod runs;
mod security;
mod sessions;
mod squatting;
mod supervisor;
mod support;
mod token_kinds;
mod upgrade;
mod watch_from;
