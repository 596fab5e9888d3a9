//! A store that cannot write (a full disk): the turns it could not write are held, new
//! work is refused naming the filesystem and the room needed, and the store is reopened
//! and the held turns written once there is room again; nothing is lost meanwhile.

use std::time::Duration;

use super::{After, Engine, Turn};
use crate::model::Event;
use crate::store::{StoreError, WriteSet};

/// Turns whose writes failed (the disk is full): kept, in order, until the store can
/// write again; their events are published and their actions (replies, spawns, orders)
/// carried out only then.
pub(super) struct Degraded {
    pub(super) writes: WriteSet,
    pub(super) events: Vec<Event>,
    pub(super) after: Vec<After>,
    pub(super) error: String,
    since: std::time::Instant,
    attempts: u32,
    /// No reopening before this (each one reads the whole store again).
    next_try: std::time::Instant,
}

/// How often the disk is looked at again while the store is degraded or new attempts
/// wait for free space.
pub(super) const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Free space the store needs before it is reopened after a write error.
const REOPEN_ROOM: u64 = 2 << 20;

impl Engine {
    /// The store could not write `turn`: hold it, refuse new work, look again soon.
    pub(super) fn degrade(&mut self, turn: Turn, e: StoreError) {
        let error = e.to_string();
        let space = match self.disk.space() {
            Ok(s) => format!(
                "{} free of {}",
                orch_proto::units::HumanBytes(s.free),
                orch_proto::units::HumanBytes(s.total)
            ),
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %error, disk = %self.disk.name(), space = %space, "the store cannot write; new work is refused and what is not written is held until it can (no restart needed)");
        self.disk.set_store_problem(Some(format!(
            "cannot write ({error}); {space}; held until there is room"
        )));
        self.degraded = Some(Degraded {
            writes: turn.writes,
            events: turn.events,
            after: turn.after,
            error,
            since: std::time::Instant::now(),
            attempts: 0,
            next_try: std::time::Instant::now(),
        });
        self.recheck_at = Some(tokio::time::Instant::now() + RECHECK_EVERY);
    }

    /// While degraded: when the disk has room again, reopens the store (sled refuses every
    /// write after an I/O error until then) and writes every held turn in one transaction;
    /// once that is flushed, their events are published and their actions carried out.
    pub(super) async fn recover_store(&mut self) {
        let Some(d) = &mut self.degraded else {
            return;
        };
        if std::time::Instant::now() < d.next_try {
            return;
        }
        match self.disk.space() {
            Ok(s) if s.free >= REOPEN_ROOM => {}
            _ => return,
        }
        d.attempts += 1;
        d.next_try = std::time::Instant::now() + RECHECK_EVERY;
        let store = self.store.clone();
        let reopened = match tokio::task::spawn_blocking(move || store.reopen()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the store's reopening task failed");
                return;
            }
        };
        let written = match reopened {
            Ok(()) => match self.store.write(&d.writes) {
                Ok(()) => self.store.flush().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, attempts = d.attempts, "the store cannot write yet");
            d.error = e.to_string();
            return;
        }
        let Some(d) = self.degraded.take() else {
            return;
        };
        tracing::info!(
            events = d.events.len(),
            degraded_ms = d.since.elapsed().as_millis() as u64,
            "the store writes again; what was held is durable now"
        );
        self.disk.set_store_problem(None);
        self.publish(d.events, d.after).await;
    }

    /// Why new work is refused now: the store cannot write, or the disk is below the
    /// reserve.
    pub(super) fn disk_refusal(&self) -> Option<String> {
        if let Some(d) = &self.degraded {
            let need = match self.disk.space() {
                Ok(s) => format!(
                    "{} free, orchd needs at least {} ([store] min_free) to accept new work",
                    orch_proto::units::HumanBytes(s.free),
                    orch_proto::units::HumanBytes(self.disk.min_free().max(REOPEN_ROOM))
                ),
                Err(e) => e.to_string(),
            };
            return Some(format!(
                "the store cannot write to {} ({}); {need}; free some space and submit again",
                self.disk.name(),
                d.error
            ));
        }
        self.disk.short()
    }
}
