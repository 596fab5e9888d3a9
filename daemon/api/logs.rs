//! `StreamLogs`: the captured output of the selected attempts, in plan order, following
//! live attempts until they end when asked to.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use orch_proto::v1 as pb;

use super::{Api, BoxStream, required_id, store_status};
use crate::logfile::{Chunk, LogReader, Stream, Tail, attempt_log};
use crate::model::{Event, Step};
use crate::store::Store;

/// Starts one `StreamLogs` call: checks the request against the stored objective, then
/// spawns the job that sends the chunks to the returned stream.
pub(super) fn open(
    api: &Api,
    req: pb::StreamLogsRequest,
) -> Result<BoxStream<pb::LogChunk>, Status> {
    let id = required_id(req.id.clone())?;
    let obj = api
        .store
        .objective(&id)
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no objective with id `{id}`")))?;
    let steps = api.store.steps(&id).map_err(store_status)?;
    let selected: Vec<&Step> = if req.step_id.is_empty() {
        steps.iter().collect()
    } else {
        let s = steps
            .iter()
            .find(|s| s.plan.id == req.step_id)
            .ok_or_else(|| {
                Status::not_found(format!("objective {id} has no step `{}`", req.step_id))
            })?;
        vec![s]
    };
    let mut targets = Vec::new();
    for s in selected {
        let number = if req.attempt == 0 {
            s.attempts
        } else {
            req.attempt
        };
        if number == 0 {
            continue;
        }
        if number > s.attempts {
            return Err(Status::not_found(format!(
                "step `{}` has {} attempt(s); there is no attempt {number}",
                s.plan.id, s.attempts
            )));
        }
        targets.push((s.index, s.plan.id.clone(), number));
    }
    let mut streams: Vec<Stream> = req
        .streams
        .iter()
        .filter_map(|v| match pb::LogStream::try_from(*v) {
            Ok(pb::LogStream::Stdout) => Some(Stream::Stdout),
            Ok(pb::LogStream::Stderr) => Some(Stream::Stderr),
            _ => None,
        })
        .collect();
    if streams.is_empty() {
        streams = vec![Stream::Stdout, Stream::Stderr];
    }
    let (tx, rx) = mpsc::channel(16);
    let job = LogJob {
        store: api.store.clone(),
        logs_dir: api.info.state_dir.join("logs"),
        objective_id: obj.id,
        targets,
        streams,
        follow: req.follow,
        tail: req.tail_lines as usize,
        events: api.events.subscribe(),
    };
    tokio::spawn(job.run(tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// One `StreamLogs` call: sends the selected attempts' logs in order, following each
/// live attempt until it ends when asked to.
struct LogJob {
    store: Store,
    logs_dir: PathBuf,
    objective_id: String,
    /// `(step index, step id, attempt number)` in plan order.
    targets: Vec<(u32, String, u32)>,
    streams: Vec<Stream>,
    follow: bool,
    tail: usize,
    events: broadcast::Receiver<Arc<Event>>,
}

impl LogJob {
    fn chunk(&self, step_id: &str, number: u32, c: Chunk) -> Option<pb::LogChunk> {
        if !self.streams.contains(&c.stream) {
            return None;
        }
        Some(pb::LogChunk {
            step_id: step_id.to_string(),
            attempt: number,
            stream: match c.stream {
                Stream::Stdout => pb::LogStream::Stdout,
                Stream::Stderr => pb::LogStream::Stderr,
            } as i32,
            data: c.data,
        })
    }

    fn ended(&self, index: u32, number: u32) -> bool {
        match self.store.attempt(&self.objective_id, index, number) {
            Ok(Some(a)) => a.ended_ms.is_some(),
            // No record (or a store error): nothing more will be written.
            _ => true,
        }
    }

    async fn run(mut self, tx: mpsc::Sender<Result<pb::LogChunk, Status>>) {
        let targets = std::mem::take(&mut self.targets);
        for (index, step_id, number) in targets {
            let path = attempt_log(&self.logs_dir, &self.objective_id, &step_id, number);
            let mut reader = LogReader::new(&path);
            // Subscribed to changes before the first read, so no write or end is missed.
            let watch = if self.follow {
                reader.watcher().ok()
            } else {
                None
            };
            let first = match reader.read_new() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!(
                            "cannot read {}: {e}",
                            path.display()
                        ))))
                        .await;
                    return;
                }
            };
            let first: Vec<Chunk> = first
                .into_iter()
                .filter(|c| self.streams.contains(&c.stream))
                .collect();
            let first = if self.tail > 0 {
                let mut t = Tail::new(self.tail);
                first.into_iter().for_each(|c| t.push(c));
                t.finish()
            } else {
                first
            };
            for c in first {
                if let Some(m) = self.chunk(&step_id, number, c)
                    && tx.send(Ok(m)).await.is_err()
                {
                    return;
                }
            }
            let Some(watch) = watch else { continue };
            loop {
                let done = self.ended(index, number);
                match reader.read_new() {
                    Ok(chunks) => {
                        for c in chunks {
                            if let Some(m) = self.chunk(&step_id, number, c)
                                && tx.send(Ok(m)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "cannot read {}: {e}",
                                path.display()
                            ))))
                            .await;
                        return;
                    }
                }
                if done {
                    break;
                }
                tokio::select! {
                    _ = watch.changed() => {}
                    ev = self.events.recv() => {
                        if let Err(broadcast::error::RecvError::Closed) = ev {
                            break;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        }
    }
}
