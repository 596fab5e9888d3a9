//! One call's share of the daemon: the tower layer [`AdmissionLayer`] counts each
//! connection's calls in flight (an idle connection is one with none), reads each request
//! message's length prefix before tonic buffers the message (refusing one larger than
//! [`MAX_REQUEST_BYTES`], or one that would take its user's calls in flight past
//! `[server] request_bytes_per_user`), counts each user's streams (`Watch`, `StreamLogs`)
//! against `max_streams_per_user`, and hands each call its caller's credentials and
//! [`WatchQuota`]. Connections themselves are admitted in `admission`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{Request, Response};

use super::admission::{Admission, ConnInfo, ConnState, StreamSlot, kib_of, lock};
use crate::config::ServerConfig;
use orch_proto::units::{HumanBytes, format_duration_ms};
use orch_proto::validate::MAX_SPEC_BYTES;

/// The largest request message orchd reads: a `SubmitRequest` whose spec is at the spec
/// limit ([`MAX_SPEC_BYTES`]) plus 1 MiB for the rest (client environment, workdir,
/// request id). Anything larger is refused before it is buffered.
pub const MAX_REQUEST_BYTES: usize = MAX_SPEC_BYTES + (1 << 20);

/// The bytes charged for one queued item besides its encoded size.
const ITEM_OVERHEAD: usize = 64;

impl Admission {
    pub(super) fn watch_quota(&self, uid: u32) -> WatchQuota {
        WatchQuota {
            uid,
            queue_bytes: self.limits().watch_queue_bytes,
            stall: self.limits().watch_stall_timeout,
        }
    }
}

/// Whether a gRPC method is a server stream that holds memory for its client.
fn is_stream(path: &str) -> bool {
    matches!(
        path,
        "/orch.v1.Orchestrator/Watch" | "/orch.v1.Orchestrator/StreamLogs"
    )
}

/// A call in flight on a connection; when it ends, the connection's idle time starts.
pub(super) struct InFlight(Arc<ConnState>);

impl InFlight {
    pub(super) fn start(state: &Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.touch();
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The bytes of request messages one call holds of its user's pool.
struct Charge {
    uid: u32,
    pool: Arc<Semaphore>,
    pool_bytes: u64,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Charge {
    /// Takes what a message of `len` bytes (and its 5-byte prefix) holds for this call,
    /// or says which limit refuses it.
    fn take(&self, len: usize) -> Result<(), Status> {
        if len > MAX_REQUEST_BYTES {
            return Err(too_large(len));
        }
        let bytes = len + 5;
        let kib = kib_of(bytes as u64);
        match self.pool.clone().try_acquire_many_owned(kib) {
            Ok(p) => {
                let mut held = lock(&self.held);
                match held.as_mut() {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                }
                Ok(())
            }
            Err(_) => {
                let free = self.pool.available_permits() as u64 * 1024;
                Err(Status::resource_exhausted(format!(
                    "calls in flight from uid {} hold {} of requests; this request of {} \
                     would pass the limit of [server] request_bytes_per_user = {} bytes ({}); \
                     retry when they have finished",
                    self.uid,
                    HumanBytes(self.pool_bytes.saturating_sub(free)),
                    HumanBytes(bytes as u64),
                    self.pool_bytes,
                    HumanBytes(self.pool_bytes),
                )))
            }
        }
    }
}

/// The refusal of a request message larger than [`MAX_REQUEST_BYTES`].
fn too_large(bytes: usize) -> Status {
    Status::resource_exhausted(format!(
        "request message of {bytes} bytes is larger than the limit of {MAX_REQUEST_BYTES} bytes \
         ({}: the spec limit of {} plus {} for the rest of the request); nothing was read",
        HumanBytes(MAX_REQUEST_BYTES as u64),
        HumanBytes(MAX_SPEC_BYTES as u64),
        HumanBytes((MAX_REQUEST_BYTES - MAX_SPEC_BYTES) as u64),
    ))
}

/// Reads the gRPC message prefixes (`[flag u8][length u32 BE]`) of a request body as it
/// arrives, so each message is measured (and charged) before tonic buffers it.
#[derive(Default)]
struct Prefixes {
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    left: usize,
}

impl Prefixes {
    /// Feeds `data`; returns the length of each message whose prefix completed in it.
    fn feed(
        &mut self,
        mut data: &[u8],
        mut on_message: impl FnMut(usize) -> Result<(), Status>,
    ) -> Result<(), Status> {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.left = len;
                on_message(len)?;
            }
        }
        Ok(())
    }
}

/// A request body whose messages are measured as they arrive (see [`Prefixes`]).
struct Metered {
    inner: Body,
    prefixes: Prefixes,
    charge: Arc<Charge>,
    failed: bool,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        if let Some(data) = frame.data_ref() {
            let charge = &this.charge;
            if let Err(status) = this.prefixes.feed(data, |len| charge.take(len)) {
                this.failed = true;
                tracing::debug!(uid = charge.uid, "{}", status.message());
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What one call holds until its response has been sent (or dropped).
struct Call {
    _in_flight: InFlight,
    _charge: Arc<Charge>,
    _stream: Option<StreamSlot>,
}

/// A response body that ends its call when it is done: the call leaves the connection's
/// calls in flight, the bytes its request held go back to its user's pool, and a stream
/// gives back its place.
struct Finish<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> http_body::Body for Finish<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.call = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The memory a `Watch` call may hold of unread events, and how long its client may
/// leave its queue full.
#[derive(Clone)]
pub struct WatchQuota {
    pub uid: u32,
    pub queue_bytes: u64,
    pub stall: Duration,
}

impl WatchQuota {
    /// For a watch that did not come through [`AdmissionLayer`] (unit tests): the default
    /// limits.
    pub fn standalone(uid: u32) -> WatchQuota {
        let cfg = ServerConfig::default();
        WatchQuota {
            uid,
            queue_bytes: cfg.watch_queue_bytes.0,
            stall: Duration::from_millis(cfg.watch_stall_timeout.0),
        }
    }

    /// The KiB permits an item of `encoded` bytes costs (at most the whole queue).
    pub fn cost_kib(&self, encoded: usize) -> u32 {
        kib_of((encoded + ITEM_OVERHEAD) as u64).min(kib_of(self.queue_bytes))
    }

    /// A queue of the configured size for one watch.
    pub fn queue(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(kib_of(self.queue_bytes) as usize))
    }

    pub fn stall_text(&self) -> String {
        format_duration_ms(self.stall.as_millis() as u64)
    }
}

/// The tower layer of [`Admission`]: tracks each connection's calls in flight, measures
/// request messages against the limits, counts each user's streams (refusing one past
/// `max_streams_per_user`), and gives each call its caller's credentials (`UdsConnectInfo`,
/// what `api::caller` reads) and [`WatchQuota`]. Calls that did not come through
/// [`Admission::incoming`] pass unchanged.
#[derive(Clone)]
pub struct AdmissionLayer;

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted { inner }
    }
}

#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, B> tower::Service<Request<Body>> for Admitted<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(info) = req.extensions().get::<ConnInfo>().cloned() else {
            let fut = self.inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(Body::new)) });
        };
        let state = info.state;
        let a = state.admission.clone();
        let stream = if is_stream(req.uri().path()) {
            match a.take_stream(state.uid) {
                Ok(slot) => Some(slot),
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            }
        } else {
            None
        };
        req.extensions_mut().insert(info.peer);
        req.extensions_mut().insert(a.watch_quota(state.uid));
        let charge = Arc::new(Charge {
            uid: state.uid,
            pool: a.request_pool(state.uid),
            pool_bytes: a.limits().request_bytes_per_user,
            held: Mutex::new(None),
        });
        let metered = charge.clone();
        let req = req.map(|inner| {
            Body::new(Metered {
                inner,
                prefixes: Prefixes::default(),
                charge: metered,
                failed: false,
            })
        });
        let call = Call {
            _in_flight: InFlight::start(&state),
            _charge: charge,
            _stream: stream,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| {
                Body::new(Finish {
                    inner,
                    call: Some(call),
                })
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::admission::ClientLimits;

    fn limits(max: usize, per_user: usize) -> ClientLimits {
        let (mut l, _) = ClientLimits::new(&ServerConfig::default(), 1 << 20);
        l.max_connections = max;
        l.max_connections_per_user = per_user;
        l
    }

    #[test]
    fn each_user_may_hold_only_so_many_streams() {
        let mut l = limits(10, 10);
        l.max_streams_per_user = 2;
        let a = Admission::new(l, 500);
        let held: Vec<StreamSlot> = (0..2).map(|_| a.take_stream(1000).expect("room")).collect();
        let e = a.take_stream(1000).err().expect("a third is refused");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "uid 1000 already has 2 Watch and StreamLogs calls open, the limit of [server] \
             max_streams_per_user = 2; close one first"
        );
        a.take_stream(1001).expect("another user");
        let _root: Vec<StreamSlot> = (0..5).map(|_| a.take_stream(0).expect("root")).collect();
        let _own: Vec<StreamSlot> = (0..5).map(|_| a.take_stream(500).expect("owner")).collect();
        drop(held);
        a.take_stream(1000).expect("room again");
    }

    #[test]
    fn prefixes_are_read_across_frames() {
        let mut p = Prefixes::default();
        let mut seen = Vec::new();
        let mut msg = vec![0u8, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1];
        msg.extend_from_slice(&[0, b'z']);
        for chunk in msg.chunks(2) {
            p.feed(chunk, |n| {
                seen.push(n);
                Ok(())
            })
            .expect("no refusal");
        }
        assert_eq!(seen, vec![3, 256]);
        assert_eq!(p.left, 255);
    }

    fn charge(pool_bytes: u64) -> Charge {
        Charge {
            uid: 7,
            pool: Arc::new(Semaphore::new(kib_of(pool_bytes) as usize)),
            pool_bytes,
            held: Mutex::new(None),
        }
    }

    #[test]
    fn a_message_over_the_request_limit_is_refused_by_its_prefix() {
        let c = charge(64 << 20);
        let e = c.take(15 << 20).expect_err("too large");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().starts_with(&format!(
                "request message of {} bytes is larger than the limit of {MAX_REQUEST_BYTES} bytes (5.0M",
                15 << 20
            )),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_users_calls_share_one_pool_until_they_end() {
        let pool = charge(3 << 20);
        let first = Charge {
            uid: 7,
            pool: pool.pool.clone(),
            pool_bytes: 3 << 20,
            held: Mutex::new(None),
        };
        first.take(2 << 20).expect("fits");
        let e = pool.take(2 << 20).expect_err("would pass the pool");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("uid 7 hold 2.0M")
                && e.message()
                    .contains("[server] request_bytes_per_user = 3145728 bytes"),
            "{}",
            e.message()
        );
        drop(first);
        pool.take(2 << 20)
            .expect("room again once the first call ended");
    }
}
