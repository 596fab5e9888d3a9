//! `Watch`: the sequenced event history from the store, then live events, joined with no
//! gap and no duplicate. What a client has not read yet is bounded by bytes (its queue,
//! `[server] watch_queue_bytes`, see `admission::WatchQuota`): a watch waiting for a slow
//! client holds no live events (it re-reads the store when the client catches up), and one
//! whose client takes nothing for `[server] watch_stall_timeout` is ended with a status
//! that says where to resume.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tonic::Status;

use orch_proto::units::HumanBytes;
use orch_proto::v1 as pb;
use orch_proto::words::EVENT_KINDS;

use super::calls::WatchQuota;
use super::convert::event_pb;
use super::{Api, BoxStream, store_status};
use crate::model::{Event, EventKind};
use crate::store::{Store, StoreError};

/// Starts one `Watch` call: checks the request, subscribes to live events, then spawns the
/// job that sends history and live events to the returned stream.
pub(super) fn open(
    api: &Api,
    req: pb::WatchRequest,
    quota: WatchQuota,
) -> Result<BoxStream<pb::Event>, Status> {
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
    let (queue, unread) = Queue::new(quota);
    let job = WatchJob {
        store: api.store.clone(),
        published: api.published.clone(),
        events: api.events.clone(),
        live: Some(live),
        objective_id: objective.as_ref().map(|o| o.id.clone()),
        ended_seq: objective
            .as_ref()
            .and_then(|o| o.ended_seq.filter(|_| o.state.is_terminal())),
        kinds,
        next,
        largest: LARGEST_EVENT,
    };
    tokio::spawn(job.run(queue));
    Ok(Box::pin(unread))
}

/// The largest event there can be, in bytes: a checkpoint at its limit (1 MiB, see
/// `runner::agent`), and the rest.
const LARGEST_EVENT: u64 = (1 << 20) + 1024;

/// The bytes of unread events one queued item holds of its watch's queue.
type Held = OwnedSemaphorePermit;

/// One watch's queue of events for its client, bounded by bytes (see [`WatchQuota`]); the
/// bytes are given back as the client takes the events.
struct Queue {
    tx: mpsc::UnboundedSender<(Result<pb::Event, Status>, Option<Held>)>,
    own: Arc<Semaphore>,
    quota: WatchQuota,
}

/// Why a watch could not queue an event.
enum Behind {
    /// The client went away.
    Gone,
    /// The client took nothing from its full queue for the stall timeout.
    Stalled,
}

impl Queue {
    fn new(quota: WatchQuota) -> (Queue, Unread) {
        let (tx, rx) = mpsc::unbounded_channel();
        let own = quota.queue();
        (Queue { tx, own, quota }, Unread(rx))
    }

    /// Bytes the client's queue has room for now.
    fn room_bytes(&self) -> u64 {
        self.own.available_permits() as u64 * 1024
    }

    /// Whether an event of `bytes` would be queued without waiting.
    fn has_room(&self, bytes: usize) -> bool {
        self.own.available_permits() >= self.quota.cost_kib(bytes) as usize
    }

    /// Room for `kib` now, if there is.
    fn try_reserve(&self, kib: u32) -> Option<Held> {
        self.own.clone().try_acquire_many_owned(kib).ok()
    }

    /// Room for `kib`, waiting at most the stall timeout for the client to take events.
    async fn reserve(&self, kib: u32) -> Result<Held, Behind> {
        tokio::select! {
            p = self.own.clone().acquire_many_owned(kib) => p.map_err(|_| Behind::Gone),
            _ = tokio::time::sleep(self.quota.stall) => Err(Behind::Stalled),
            _ = self.tx.closed() => Err(Behind::Gone),
        }
    }

    /// Queues an event; false when the client went away.
    fn send(&self, event: pb::Event, held: Held) -> bool {
        self.tx.send((Ok(event), Some(held))).is_ok()
    }

    /// Queues the status that ends the watch (it needs no room: nothing follows it).
    fn end(&self, status: Status) {
        let _ = self.tx.send((Err(status), None));
    }

    async fn closed(&self) {
        self.tx.closed().await
    }

    /// The status ending a watch that fell behind; `seq` is where the client resumes.
    fn behind(&self, why: &Behind, seq: u64) -> Option<Status> {
        let q = &self.quota;
        let unread = q.queue_bytes.saturating_sub(self.room_bytes());
        let message = match why {
            Behind::Gone => return None,
            Behind::Stalled => format!(
                "watch ended: this client left {} of events unread for {} (limits: [server] \
                 watch_queue_bytes = {} bytes, watch_stall_timeout = {}); resume with \
                 from_seq = {seq}",
                HumanBytes(unread),
                q.stall_text(),
                q.queue_bytes,
                q.stall_text(),
            ),
        };
        tracing::info!(uid = q.uid, "{message}");
        Some(Status::resource_exhausted(message))
    }
}

/// What the client reads: the queued events; each one's bytes are given back as it is
/// taken.
struct Unread(mpsc::UnboundedReceiver<(Result<pb::Event, Status>, Option<Held>)>);

impl tokio_stream::Stream for Unread {
    type Item = Result<pb::Event, Status>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|item| item.map(|(event, _held)| event))
    }
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
    events: broadcast::Sender<Arc<Event>>,
    /// Live events; `None` while waiting for a slow client (holding none of them), until
    /// the watch subscribes again and re-reads from the store what it missed.
    live: Option<broadcast::Receiver<Arc<Event>>>,
    objective_id: Option<String>,
    /// Seq of the event that ended the objective, if it had ended when the watch began.
    ended_seq: Option<u64>,
    kinds: HashSet<String>,
    /// The next global sequence number not yet looked at.
    next: u64,
    /// The largest event sent so far, in bytes (at first, the largest one can be).
    largest: u64,
}

enum Sent {
    More,
    /// The watched objective ended (or the client went away).
    Done,
}

impl WatchJob {
    async fn offer(&mut self, e: &Event, q: &Queue) -> Sent {
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
            && let Sent::Done = self.push(e, q).await
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

    /// Queues `e` for the client. When its queue (or its user's pool) is full, lets go of
    /// the live events and waits for the client; one that takes nothing for the stall
    /// timeout gets a status saying where to resume, and the watch ends.
    async fn push(&mut self, e: &Event, q: &Queue) -> Sent {
        let event = event_pb(e);
        let kib = q.quota.cost_kib(event.encoded_len());
        let held = match q.try_reserve(kib) {
            Some(held) => held,
            None => {
                self.live = None;
                match q.reserve(kib).await {
                    Ok(held) => held,
                    Err(why) => {
                        if let Some(status) = q.behind(&why, e.seq) {
                            q.end(status);
                        }
                        return Sent::Done;
                    }
                }
            }
        };
        if q.send(event, held) {
            Sent::More
        } else {
            Sent::Done
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
    /// Sends stored events from `next` up to what is durable now. Reads as many at a time
    /// as the client's queue has room for (by the largest event seen so far), and holds
    /// none of them while it waits for the client to make room.
    async fn replay(&mut self, q: &Queue) -> Result<Sent, StoreError> {
        loop {
            let upto = self.published.load(AtomicOrdering::SeqCst);
            let limit = (q.room_bytes() / self.largest).clamp(1, 512) as usize;
            let batch = match &self.objective_id {
                Some(id) => self.store.objective_events_from(id, self.next, limit)?,
                None => self.store.events_from(self.next, limit)?,
            };
            let mut batch = batch.into_iter().filter(|e| e.seq <= upto).peekable();
            if batch.peek().is_none() {
                // Everything up to what is durable has been looked at.
                self.next = self.next.max(upto + 1);
                return Ok(Sent::More);
            }
            while let Some(e) = batch.next() {
                let bytes = event_pb(&e).encoded_len();
                self.largest = self.largest.max(bytes as u64);
                if !q.has_room(bytes) {
                    drop(batch);
                    if let Sent::Done = self.offer(&e, q).await {
                        return Ok(Sent::Done);
                    }
                    break;
                }
                if let Sent::Done = self.offer(&e, q).await {
                    return Ok(Sent::Done);
                }
            }
        }
    }

    async fn run(mut self, q: Queue) {
        let fail = |e: StoreError| Status::internal(format!("cannot read the event log: {e}"));
        match self.replay(&q).await {
            Ok(Sent::Done) => return,
            // Ended before `next` (e.g. `--from` past its end): nothing more will come.
            Ok(Sent::More) if self.ended_seq.is_some_and(|s| s < self.next) => return,
            Ok(Sent::More) => {}
            Err(e) => {
                q.end(fail(e));
                return;
            }
        }
        loop {
            let Some(live) = self.live.as_mut() else {
                // Let go of the live events while waiting for a slow client: subscribe
                // again (before reading, so nothing is missed), then take what was
                // published meanwhile from the store.
                self.live = Some(self.events.subscribe());
                match self.replay(&q).await {
                    Ok(Sent::Done) => return,
                    Ok(Sent::More) => continue,
                    Err(err) => {
                        q.end(fail(err));
                        return;
                    }
                }
            };
            let got = tokio::select! {
                got = live.recv() => got,
                _ = q.closed() => return,
            };
            let e = match got {
                Ok(e) => Some(e),
                // Fell behind the broadcast: re-feed from the store, never skip.
                Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => {
                    q.end(Status::unavailable("orchd is stopping"));
                    return;
                }
            };
            // An event past `next` means some were published before we looked (or were
            // lagged over): take those from the store first.
            if e.as_ref().is_none_or(|e| e.seq > self.next) {
                match self.replay(&q).await {
                    Ok(Sent::Done) => return,
                    Ok(Sent::More) => {}
                    Err(err) => {
                        q.end(fail(err));
                        return;
                    }
                }
            }
            if let Some(e) = e
                && let Sent::Done = self.offer(&e, &q).await
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
