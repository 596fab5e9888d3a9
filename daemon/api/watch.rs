//! `Watch`: the sequenced event history from the store, then live events, joined with no
//! gap and no duplicate.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use orch_proto::v1 as pb;
use orch_proto::words::EVENT_KINDS;

use super::convert::event_pb;
use super::{Api, BoxStream, store_status};
use crate::model::{Event, EventKind};
use crate::store::{Store, StoreError};

/// Starts one `Watch` call: checks the request, subscribes to live events, then spawns the
/// job that sends history and live events to the returned stream.
pub(super) fn open(api: &Api, req: pb::WatchRequest) -> Result<BoxStream<pb::Event>, Status> {
    let mut kinds = HashSet::new();
    for k in &req.kinds {
        let k = k.trim();
        if !EVENT_KINDS.contains(&k) {
            return Err(Status::invalid_argument(format!(
                "kinds: `{k}` is not an event kind (one of {})",
                EVENT_KINDS.join(", ")
            )));
        }
        kinds.insert(k.to_string());
    }
    let objective = if req.objective_id.is_empty() {
        None
    } else {
        let o = api
            .store
            .objective(&req.objective_id)
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!("no objective with id `{}`", req.objective_id))
            })?;
        Some(o)
    };
    // Subscribed before reading history, so nothing published meanwhile is missed.
    let live = api.events.subscribe();
    let next = first_seq(
        objective.is_some(),
        req.from_seq,
        api.published.load(AtomicOrdering::SeqCst),
    );
    let (tx, rx) = mpsc::channel(256);
    let job = WatchJob {
        store: api.store.clone(),
        published: api.published.clone(),
        objective_id: objective.as_ref().map(|o| o.id.clone()),
        ended_seq: objective
            .as_ref()
            .and_then(|o| o.ended_seq.filter(|_| o.state.is_terminal())),
        kinds,
        next,
    };
    tokio::spawn(job.run(live, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The first sequence number a watch looks at. `from_seq` set (even to 0): from there.
/// Unset: an objective's watch starts at its first event, the global one is live only
/// (after `published`, the last durable event).
fn first_seq(objective: bool, from_seq: Option<u64>, published: u64) -> u64 {
    match (objective, from_seq) {
        (_, Some(seq)) => seq,
        (true, None) => 0,
        (false, None) => published + 1,
    }
}

/// One `Watch` call: history from the store, then live events, joined with no gap and no
/// duplicate by sequence number. Only durable events are replayed; a watcher that falls
/// behind the live broadcast is re-fed from the store, never skipped.
struct WatchJob {
    store: Store,
    published: Arc<AtomicU64>,
    objective_id: Option<String>,
    /// Seq of the event that ended the objective, if it had ended when the watch began.
    ended_seq: Option<u64>,
    kinds: HashSet<String>,
    /// The next global sequence number not yet looked at.
    next: u64,
}

enum Sent {
    More,
    /// The watched objective ended (or the client went away).
    Done,
}

type EventTx = mpsc::Sender<Result<pb::Event, Status>>;

impl WatchJob {
    async fn offer(&mut self, e: &Event, tx: &EventTx) -> Sent {
        if e.seq < self.next {
            // Already passed (or skipped by `--from`): only the end still matters.
            return match (&e.kind, &self.objective_id) {
                (EventKind::ObjectiveState { state, .. }, Some(id))
                    if state.is_terminal() && e.objective_id == *id =>
                {
                    self.final_state(id, e.seq)
                }
                _ => Sent::More,
            };
        }
        self.next = e.seq + 1;
        if let Some(id) = &self.objective_id
            && &e.objective_id != id
        {
            return Sent::More;
        }
        if (self.kinds.is_empty() || self.kinds.contains(e.kind.word()))
            && tx.send(Ok(event_pb(e))).await.is_err()
        {
            return Sent::Done;
        }
        match (&e.kind, &self.objective_id) {
            // The end only if no retry revived it since: the objective records which
            // event ended it last.
            (EventKind::ObjectiveState { state, .. }, Some(id)) if state.is_terminal() => {
                self.final_state(id, e.seq)
            }
            _ => Sent::More,
        }
    }

    /// Whether the terminal state event `seq` is the objective's last end (no retry since).
    fn final_state(&self, id: &str, seq: u64) -> Sent {
        match self.store.objective(id) {
            Ok(Some(o)) if o.ended_seq.is_some_and(|s| s > seq) || !o.state.is_terminal() => {
                Sent::More
            }
            _ => Sent::Done,
        }
    }

    /// Sends stored events from `next` up to what is durable now.
    async fn replay(&mut self, tx: &EventTx) -> Result<Sent, StoreError> {
        loop {
            let upto = self.published.load(AtomicOrdering::SeqCst);
            let batch = match &self.objective_id {
                Some(id) => self.store.objective_events_from(id, self.next, 512)?,
                None => self.store.events_from(self.next, 512)?,
            };
            let batch: Vec<Event> = batch.into_iter().filter(|e| e.seq <= upto).collect();
            if batch.is_empty() {
                // Everything up to what is durable has been looked at.
                self.next = self.next.max(upto + 1);
                return Ok(Sent::More);
            }
            for e in &batch {
                if let Sent::Done = self.offer(e, tx).await {
                    return Ok(Sent::Done);
                }
            }
        }
    }

    async fn run(mut self, mut live: broadcast::Receiver<Arc<Event>>, tx: EventTx) {
        let fail = |e: StoreError| Status::internal(format!("cannot read the event log: {e}"));
        match self.replay(&tx).await {
            Ok(Sent::Done) => return,
            // Ended before `next` (e.g. `--from` past its end): nothing more will come.
            Ok(Sent::More) if self.ended_seq.is_some_and(|s| s < self.next) => return,
            Ok(Sent::More) => {}
            Err(e) => {
                let _ = tx.send(Err(fail(e))).await;
                return;
            }
        }
        loop {
            let got = tokio::select! {
                got = live.recv() => got,
                _ = tx.closed() => return,
            };
            let e = match got {
                Ok(e) => Some(e),
                // Fell behind the broadcast: re-feed from the store, never skip.
                Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Err(Status::unavailable("orchd is stopping"))).await;
                    return;
                }
            };
            // An event past `next` means some were published before we looked (or were
            // lagged over): take those from the store first.
            if e.as_ref().is_none_or(|e| e.seq > self.next) {
                match self.replay(&tx).await {
                    Ok(Sent::Done) => return,
                    Ok(Sent::More) => {}
                    Err(err) => {
                        let _ = tx.send(Err(fail(err))).await;
                        return;
                    }
                }
            }
            if let Some(e) = e
                && let Sent::Done = self.offer(&e, &tx).await
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first_seq;
    use orch_proto::v1 as pb;
    use prost::Message;

    /// `WatchRequest` as clients built before `from_seq` became `optional` encode it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldWatchRequest {
        #[prost(string, tag = "1")]
        objective_id: String,
        #[prost(uint64, tag = "2")]
        from_seq: u64,
        #[prost(string, repeated, tag = "3")]
        kinds: Vec<String>,
    }

    fn from_old_client(from_seq: u64) -> Option<u64> {
        let old = OldWatchRequest {
            from_seq,
            ..Default::default()
        };
        pb::WatchRequest::decode(old.encode_to_vec().as_slice())
            .unwrap_or_else(|e| panic!("decode: {e}"))
            .from_seq
    }

    #[test]
    fn old_clients_keep_their_meaning() {
        // Their 0 is never sent: unset, so still live only.
        assert_eq!(from_old_client(0), None);
        assert_eq!(first_seq(false, from_old_client(0), 41), 42);
        assert_eq!(from_old_client(7), Some(7));
    }

    #[test]
    fn unset_from_seq_is_live_only_without_an_objective() {
        assert_eq!(first_seq(false, None, 41), 42);
        assert_eq!(first_seq(true, None, 41), 0);
    }

    #[test]
    fn a_set_from_seq_is_honoured_even_when_zero() {
        assert_eq!(first_seq(false, Some(0), 41), 0);
        assert_eq!(first_seq(false, Some(7), 41), 7);
        assert_eq!(first_seq(true, Some(0), 41), 0);
        assert_eq!(first_seq(true, Some(50), 41), 50);
    }
}
