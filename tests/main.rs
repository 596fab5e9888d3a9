//! End-to-end tests (`e2e`): the real `orchd` and `orchctl` binaries on a private socket and state dir.

mod agents;
mod approval_state;
mod cli;
mod config;
mod durability;
mod events;
mod exhaustion;
mod grpc;
mod lifecycle;
mod plans;
mod runs;
mod security;
mod supervisor;
mod support;
mod upgrade;
mod watch_from;
