//! Shared code of orch's fuzz targets (docs/fuzzing.md): the `orchd` modules they reach,
//! compiled from the daemon's own source files, and one function per target that feeds it
//! an input and checks what came out.
//!
//! The daemon is a binary crate, so its modules are included here with `#[path]`: the
//! files are the daemon's, unchanged and never copied, and their `crate::…` imports resolve
//! to the modules declared below, laid out as in `daemon/main.rs`. Only what the targets
//! reach is included; `api` holds `convert.rs` and the one private helper of
//! `daemon/api/mod.rs` that it calls.

#[allow(dead_code)]
#[path = "../../daemon/model.rs"]
pub mod model;

#[allow(dead_code)]
#[path = "../../daemon/config/mod.rs"]
pub mod config;

#[allow(dead_code)]
#[path = "../../daemon/plans.rs"]
pub mod plans;

#[allow(dead_code)]
#[path = "../../daemon/store.rs"]
pub mod store;

#[allow(dead_code)]
#[path = "../../daemon/workspace.rs"]
pub mod workspace;

/// The one file of the engine's core that config and plans read: the safety gates
/// (included at the top, since a `#[path]` inside inline modules starts from directories
/// that do not exist here, and re-exported where the daemon has it).
#[allow(dead_code)]
#[path = "../../daemon/engine/machine/safety.rs"]
pub mod safety_gates;

pub mod engine {
    pub mod machine {
        pub use crate::safety_gates as safety;
    }
}

pub mod api;
pub mod runner;
pub mod targets;
