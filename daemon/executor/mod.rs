//! Where an attempt runs: the `Executor` seam. The engine decides *that* an attempt
//! starts, stops, pauses or resumes; an executor decides *how*: a direct child of orchd
//! (`local`), and later a supervisor process that outlives orchd (live restore) or a
//! job of a cluster engine. Every executor reports the same facts (`runner::Fact`) on
//! the engine's channel, the attempt's `Ended` last and exactly once, and takes orders
//! through an `AttemptHandle`.

pub mod local;

use tokio::sync::mpsc;

use crate::model::{Attempt, Control};
use crate::runner::{Fact, RunSpec};

pub use local::LocalExecutor;

/// Where the engine's facts go.
pub type Facts = mpsc::UnboundedSender<Fact>;

/// Orders to one running attempt. Dropping it does not stop the attempt.
#[derive(Debug, Clone)]
pub struct AttemptHandle(mpsc::UnboundedSender<Control>);

impl AttemptHandle {
    pub fn new(tx: mpsc::UnboundedSender<Control>) -> AttemptHandle {
        AttemptHandle(tx)
    }

    /// A handle whose orders go nowhere (the attempt already reported its end).
    pub fn detached() -> AttemptHandle {
        AttemptHandle(mpsc::unbounded_channel().0)
    }

    /// Sends an order; an attempt that already ended ignores it.
    pub fn send(&self, order: Control) {
        let _ = self.0.send(order);
    }
}

/// What became of an attempt recorded as running when orchd last stopped.
#[derive(Debug)]
pub enum Reattached {
    /// It is gone (`killed`: a leftover of it was found and killed); it ends `interrupted`.
    Gone { killed: bool },
    /// It still runs and reports to the engine again through this handle. The local
    /// executor never re-attaches (its attempts die with orchd); the live-restore one will.
    #[allow(dead_code)]
    Attached(AttemptHandle),
}

/// Runs attempts somewhere.
pub trait Executor: Send + Sync {
    /// The name `daemon status` shows.
    fn name(&self) -> &'static str;

    /// Starts the attempt. Its facts (`Started`, lines, samples, `Ended`) arrive on
    /// `facts`; a start that fails is reported as an `Ended` with `spawn_error`.
    fn start(&self, spec: RunSpec, facts: Facts) -> AttemptHandle;

    /// After a restart: finds what is left of `attempt` and either re-attaches to it or
    /// makes sure nothing of it runs any more.
    fn reattach(&self, attempt: &Attempt, facts: Facts) -> Reattached;
}

/// The name of an attempt's cgroup leaf (fixed, so recovery finds it without a record).
pub fn leaf_name(objective_id: &str, step_index: u32, number: u32) -> String {
    format!("att-{objective_id}-{step_index}-{number}")
}
