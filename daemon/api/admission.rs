//! Admission of connections: counted per peer uid (SO_PEERCRED, read at accept) and
//! overall, and refused at once beyond `[server] max_connections_per_user` /
//! `max_connections` (root and the daemon's own user are exempt from the first and have a
//! reserve in the second); a connection with no call in flight for `idle_timeout` is
//! closed. [`Admission`] also keeps each user's count of streams and pool of request
//! bytes, which `calls` draws on for each call.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::calls::AdmissionLayer;

use crate::config::ServerConfig;

/// File descriptors kept for everything but client connections (agents' pipes and pidfds,
/// log files, the store, inotify), or half the open-files limit when that is smaller.
const FD_RESERVE: u64 = 512;

/// Connections kept for root and the daemon's own user when everyone else has used
/// `max_connections` (at most a quarter of it).
const ADMIN_RESERVE: usize = 16;

/// Tasks accepting connections at once.
const ACCEPTORS: usize = 2;

/// How often refused connections of one uid are logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The limits in force, from `[server]` and the open-files limit.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Connections of all users together (after fitting them to the open-files limit).
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub idle_timeout: Duration,
    pub request_bytes_per_user: u64,
    pub max_streams_per_user: usize,
    pub watch_queue_bytes: u64,
    pub watch_stall_timeout: Duration,
}

impl ClientLimits {
    /// The limits of `cfg`, with `max_connections` lowered to what `open_files` (the
    /// soft open-files limit) leaves after the descriptors kept for agents and the store.
    /// The second value says why it was lowered, if it was.
    pub fn new(cfg: &ServerConfig, open_files: u64) -> (ClientLimits, Option<String>) {
        let reserve = FD_RESERVE.min(open_files / 2);
        let room = open_files.saturating_sub(reserve).max(1);
        let wanted = u64::from(cfg.max_connections);
        let lowered = (wanted > room).then(|| {
            format!(
                "[server] max_connections = {wanted} is lowered to {room}: the open-files limit \
                 (RLIMIT_NOFILE) is {open_files} and {reserve} descriptors are kept for agents, \
                 logs and the store"
            )
        });
        let limits = ClientLimits {
            max_connections: wanted.min(room) as usize,
            max_connections_per_user: cfg.max_connections_per_user as usize,
            idle_timeout: Duration::from_millis(cfg.idle_timeout.0),
            request_bytes_per_user: cfg.request_bytes_per_user.0,
            max_streams_per_user: cfg.max_streams_per_user as usize,
            watch_queue_bytes: cfg.watch_queue_bytes.0,
            watch_stall_timeout: Duration::from_millis(cfg.watch_stall_timeout.0),
        };
        (limits, lowered)
    }

    /// Connections kept for root and the daemon's own user.
    fn admin_reserve(&self) -> usize {
        ADMIN_RESERVE.min(self.max_connections / 4)
    }
}

/// How many file descriptors orchd wants for `cfg`: its connections and the reserve.
pub fn wanted_open_files(cfg: &ServerConfig) -> u64 {
    u64::from(cfg.max_connections) + FD_RESERVE
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    NoCredentials(String),
    User {
        uid: u32,
        open: usize,
        limit: usize,
    },
    Total {
        uid: u32,
        open: usize,
        limit: usize,
        reserved: usize,
    },
}

impl Refusal {
    fn uid(&self) -> Option<u32> {
        match self {
            Refusal::NoCredentials(_) => None,
            Refusal::User { uid, .. } | Refusal::Total { uid, .. } => Some(*uid),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoCredentials(e) => write!(
                f,
                "orchd refused the connection: cannot read its peer credentials (SO_PEERCRED): {e}"
            ),
            Refusal::User { uid, open, limit } => write!(
                f,
                "orchd refused the connection: uid {uid} already has {open} connections open, \
                 the limit of [server] max_connections_per_user = {limit}"
            ),
            Refusal::Total {
                uid,
                open,
                limit,
                reserved,
            } => write!(
                f,
                "orchd refused the connection of uid {uid}: {open} connections are open, the \
                 limit of [server] max_connections = {limit} (the last {reserved} are kept for \
                 root and the daemon's user)"
            ),
        }
    }
}

/// Connections open now, per uid, and when each uid's refusals were last logged.
#[derive(Default)]
struct Conns {
    total: usize,
    by_uid: HashMap<u32, usize>,
    /// Streams open per uid.
    streams: HashMap<u32, usize>,
    refusals: HashMap<u32, Refusals>,
    accept_error_logged: Option<Instant>,
}

struct Refusals {
    logged: Instant,
    /// Refused since `logged`, not logged one by one.
    since: u64,
}

/// Bytes held per uid, in KiB permits of one semaphore per uid (created on first use).
struct Pools {
    kib: u32,
    by_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

impl Pools {
    fn new(bytes: u64) -> Pools {
        Pools {
            kib: kib_of(bytes),
            by_uid: Mutex::new(HashMap::new()),
        }
    }

    fn of(&self, uid: u32) -> Arc<Semaphore> {
        lock(&self.by_uid)
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.kib as usize)))
            .clone()
    }
}

/// Bytes as whole KiB (rounded up), the unit of the byte semaphores.
pub(super) fn kib_of(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(u64::from(u32::MAX)) as u32
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves counts that are still meaningful.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decides which connections are served and keeps count of them; hands out the per-user
/// byte pools of requests and counts the streams each user has open.
pub struct Admission {
    limits: ClientLimits,
    /// The daemon's own uid: like root, exempt from the per-user connection limit.
    owner: u32,
    conns: Mutex<Conns>,
    /// Signalled when a connection closes (an accept that ran out of descriptors waits).
    closed: Notify,
    requests: Pools,
    /// Refused connections being told why (see [`refuse`]).
    telling: Arc<Semaphore>,
}

impl Admission {
    pub fn new(limits: ClientLimits, owner: u32) -> Arc<Admission> {
        Arc::new(Admission {
            requests: Pools::new(limits.request_bytes_per_user),
            limits,
            owner,
            conns: Mutex::new(Conns::default()),
            closed: Notify::new(),
            telling: Arc::new(Semaphore::new(TELLING)),
        })
    }

    /// Accepts connections on `listener` (on a task of its own) and yields those admitted;
    /// the others are closed at once. Ends when the returned stream is dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: UnixListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(64);
        // Two accepting tasks: a flood of connections (each refused at once) empties the
        // listen queue faster, so fewer of everyone else's connects find it full.
        let listener = Arc::new(listener);
        for _ in 0..ACCEPTORS {
            tokio::spawn(self.clone().accept_loop(listener.clone(), tx.clone()));
        }
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: Arc<UnixListener>,
        tx: mpsc::Sender<io::Result<Conn>>,
    ) {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if out_of_resources(&e) {
                        self.wait_for_room(&e, &tx).await;
                    }
                    continue;
                }
            };
            match self.admit(&stream) {
                Ok(slot) => {
                    let conn = Conn::new(stream, slot, self.limits.idle_timeout);
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(refusal) => {
                    refuse(stream, &refusal, &self.telling);
                    self.log_refusal(&refusal);
                }
            }
        }
    }

    /// Out of descriptors (or kernel memory): wait until a connection closes, or a second.
    async fn wait_for_room(&self, e: &io::Error, tx: &mpsc::Sender<io::Result<Conn>>) {
        {
            let mut c = lock(&self.conns);
            if c.accept_error_logged
                .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY)
            {
                c.accept_error_logged = Some(Instant::now());
                tracing::warn!(error = %e, connections = c.total, "cannot accept connections: out of resources; waiting for a connection to close (logged at most once a minute)");
            }
        }
        tokio::select! {
            _ = self.closed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tx.closed() => {}
        }
    }

    /// Takes a place for the peer of `stream`, or says why there is none.
    fn admit(self: &Arc<Self>, stream: &UnixStream) -> Result<Slot, Refusal> {
        let cred = stream
            .peer_cred()
            .map_err(|e| Refusal::NoCredentials(e.to_string()))?;
        self.take(cred.uid())
    }

    fn take(self: &Arc<Self>, uid: u32) -> Result<Slot, Refusal> {
        let privileged = uid == 0 || uid == self.owner;
        let l = &self.limits;
        let reserved = l.admin_reserve();
        let mut c = lock(&self.conns);
        let limit = if privileged {
            l.max_connections
        } else {
            l.max_connections - reserved
        };
        if c.total >= limit {
            return Err(Refusal::Total {
                uid,
                open: c.total,
                limit: l.max_connections,
                reserved,
            });
        }
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if !privileged && mine >= l.max_connections_per_user {
            return Err(Refusal::User {
                uid,
                open: mine,
                limit: l.max_connections_per_user,
            });
        }
        c.total += 1;
        *c.by_uid.entry(uid).or_default() += 1;
        Ok(Slot {
            admission: self.clone(),
            uid,
        })
    }

    fn release(&self, uid: u32) {
        let mut c = lock(&self.conns);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&uid);
            }
        }
        drop(c);
        self.closed.notify_one();
    }

    /// Logs a refusal: the first of a uid at once, then at most once a minute with how
    /// many more were refused meanwhile.
    fn log_refusal(&self, refusal: &Refusal) {
        let key = refusal.uid().unwrap_or(u32::MAX);
        let mut c = lock(&self.conns);
        let now = Instant::now();
        let r = c.refusals.entry(key).or_insert(Refusals {
            logged: now - REFUSAL_LOG_EVERY,
            since: 0,
        });
        if now.duration_since(r.logged) < REFUSAL_LOG_EVERY {
            r.since += 1;
            return;
        }
        let since = std::mem::take(&mut r.since);
        r.logged = now;
        drop(c);
        if since > 0 {
            tracing::warn!(
                uid = refusal.uid(),
                refused_since_last = since,
                "{refusal} ({since} more refused in the last minute; logged at most once a minute per uid)"
            );
        } else {
            tracing::warn!(
                uid = refusal.uid(),
                "{refusal} (logged at most once a minute per uid)"
            );
        }
    }

    /// Connections open now: all, and those of `uid`.
    #[cfg(test)]
    fn open(&self, uid: u32) -> (usize, usize) {
        let c = lock(&self.conns);
        (c.total, c.by_uid.get(&uid).copied().unwrap_or(0))
    }

    /// The layer that tracks calls in flight and measures requests.
    pub fn layer(&self) -> AdmissionLayer {
        AdmissionLayer
    }

    pub(super) fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// The pool of request bytes of `uid`.
    pub(super) fn request_pool(&self, uid: u32) -> Arc<Semaphore> {
        self.requests.of(uid)
    }

    /// A place for one more stream (`Watch`, `StreamLogs`) of `uid`, or the refusal.
    pub(super) fn take_stream(self: &Arc<Self>, uid: u32) -> Result<StreamSlot, Status> {
        let limit = self.limits.max_streams_per_user;
        let mut c = lock(&self.conns);
        let open = c.streams.entry(uid).or_default();
        if uid != 0 && uid != self.owner && *open >= limit {
            let open = *open;
            drop(c);
            let message = format!(
                "uid {uid} already has {open} Watch and StreamLogs calls open, the limit of \
                 [server] max_streams_per_user = {limit}; close one first"
            );
            tracing::debug!(uid, "{message}");
            return Err(Status::resource_exhausted(message));
        }
        *open += 1;
        Ok(StreamSlot {
            admission: self.clone(),
            uid,
        })
    }
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Refused connections that may still be told why (see [`refuse`]).
const TELLING: usize = 32;
/// How long a refused connection may take to read why.
const TELL_FOR: Duration = Duration::from_millis(250);

/// Closes a refused connection, first telling an HTTP/2 client why: the server preface (an
/// empty SETTINGS frame) and a GOAWAY (ENHANCE_YOUR_CALM) whose debug data is the reason,
/// written without waiting. A client whose preface arrives at a closed socket fails on the
/// write and never reads the GOAWAY, so up to [`TELLING`] refused connections are kept
/// half-closed for at most [`TELL_FOR`], until the client hangs up; past that many they
/// are closed at once.
fn refuse(stream: UnixStream, why: &Refusal, telling: &Arc<Semaphore>) {
    let _ = stream.try_write(&goaway(&why.to_string()));
    let Ok(permit) = telling.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(TELL_FOR, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(permit);
    });
}

/// An empty SETTINGS frame followed by a GOAWAY frame carrying `reason`.
fn goaway(reason: &str) -> Vec<u8> {
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let debug = &reason.as_bytes()[..reason.len().min(1024)];
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + debug.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    out.extend_from_slice(debug);
    out
}

/// A connection's place in the counts, given back when it is dropped.
struct Slot {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.uid);
    }
}

/// One open stream's place in its user's count, given back when the call ends.
pub(super) struct StreamSlot {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.admission.conns);
        if let Some(n) = c.streams.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.streams.remove(&self.uid);
            }
        }
    }
}

/// What calls on one connection share: who is on the other end and whether a call is in
/// flight (an idle connection is closed).
pub struct ConnState {
    pub(super) uid: u32,
    pub(super) admission: Arc<Admission>,
    pub(super) in_flight: AtomicUsize,
    /// When the last call started or ended, in ms since `opened`.
    last_active_ms: AtomicU64,
    opened: Instant,
}

impl ConnState {
    pub(super) fn touch(&self) {
        self.last_active_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// When the connection is due to be closed as idle, seen at `now`: `None` if it is
    /// due now.
    fn idle_deadline(&self, idle: Duration, now: Instant) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Some(now + idle);
        }
        let due =
            self.opened + Duration::from_millis(self.last_active_ms.load(Ordering::SeqCst)) + idle;
        (due > now).then_some(due)
    }
}

/// What tonic puts into each request's extensions for a [`Conn`].
#[derive(Clone)]
pub struct ConnInfo {
    pub(super) peer: UdsConnectInfo,
    pub(super) state: Arc<ConnState>,
}

/// An admitted connection: the socket, its place in the counts, and its idle timer. When
/// no call is in flight for `idle_timeout`, reading from it ends (EOF), which closes it.
pub struct Conn {
    stream: UnixStream,
    info: ConnInfo,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    expired: bool,
    _slot: Slot,
}

impl Conn {
    fn new(stream: UnixStream, slot: Slot, idle_timeout: Duration) -> Conn {
        let peer = UdsConnectInfo {
            peer_addr: stream.peer_addr().ok().map(Arc::new),
            peer_cred: stream.peer_cred().ok(),
        };
        let state = Arc::new(ConnState {
            uid: slot.uid,
            admission: slot.admission.clone(),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            opened: Instant::now(),
        });
        Conn {
            stream,
            info: ConnInfo { peer, state },
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            expired: false,
            _slot: slot,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(r) = Pin::new(&mut this.stream).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        // Nothing to read: wake again when the connection may have become idle for long
        // enough (the timer is moved on while calls are in flight).
        while this.idle.as_mut().poll(cx).is_ready() {
            match this
                .info
                .state
                .idle_deadline(this.idle_timeout, Instant::now())
            {
                Some(next) => this.idle.as_mut().reset(next),
                None => {
                    tracing::debug!(
                        uid = this.info.state.uid,
                        idle_ms = this.idle_timeout.as_millis() as u64,
                        "closing a connection with no call in flight ([server] idle_timeout)"
                    );
                    this.expired = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::calls::InFlight;

    fn limits(max: usize, per_user: usize) -> ClientLimits {
        let (mut l, _) = ClientLimits::new(&ServerConfig::default(), 1 << 20);
        l.max_connections = max;
        l.max_connections_per_user = per_user;
        l
    }

    #[test]
    fn each_user_gets_its_share_and_root_the_reserve() {
        let a = Admission::new(limits(40, 3), 500);
        let mut held: Vec<Slot> = (0..3)
            .map(|_| a.take(1000).expect("within the share"))
            .collect();
        let e = a.take(1000).err().expect("a fourth is refused");
        assert_eq!(
            e.to_string(),
            "orchd refused the connection: uid 1000 already has 3 connections open, the limit \
             of [server] max_connections_per_user = 3"
        );
        // Other users, root and the daemon's own user are not affected.
        held.push(a.take(1001).expect("another user"));
        held.push(a.take(0).expect("root"));
        held.push(a.take(500).expect("the daemon's user"));
        assert_eq!(a.open(1000), (6, 3));
        held.truncate(1);
        assert_eq!(a.open(1000), (1, 1));
        // Up to max_connections minus the reserve for everyone; the rest for root.
        let mut others: Vec<Slot> = (0..29).map(|i| a.take(2000 + i).expect("room")).collect();
        assert_eq!(a.open(0).0, 30);
        let e = a.take(3000).err().expect("the reserve is not for users");
        assert!(
            e.to_string()
                .contains("max_connections = 40 (the last 10 are kept"),
            "{e}"
        );
        others.extend((0..10).map(|_| a.take(0).expect("root uses the reserve")));
        assert!(a.take(0).is_err(), "not even root past max_connections");
        drop(others);
        assert_eq!(a.open(0).0, 1);
    }

    #[test]
    fn max_connections_fits_the_open_files_limit() {
        let cfg = ServerConfig::default();
        let (l, why) = ClientLimits::new(&cfg, 100_000);
        assert_eq!((l.max_connections, why), (1024, None));
        let (l, why) = ClientLimits::new(&cfg, 1024);
        assert_eq!(l.max_connections, 512);
        let why = why.expect("says it was lowered");
        assert!(
            why.contains("lowered to 512") && why.contains("1024"),
            "{why}"
        );
        let (l, _) = ClientLimits::new(&cfg, 256);
        assert_eq!(l.max_connections, 128);
    }

    #[test]
    fn goaway_carries_the_reason() {
        let f = goaway("too many");
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(&f[9..12], &[0, 0, 16]);
        assert_eq!(f[12], 7);
        assert_eq!(&f[22..26], &[0, 0, 0, 0xb]);
        assert_eq!(&f[26..], b"too many");
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_with_no_call_in_flight() {
        let a = Admission::new(limits(10, 10), 0);
        let (ours, _theirs) = UnixStream::pair().expect("a socket pair");
        let conn = Conn::new(ours, a.take(5).expect("room"), Duration::from_secs(10));
        let state = conn.info.state.clone();
        let idle = Duration::from_secs(10);
        let at = |s: u64| state.opened + Duration::from_secs(s);
        assert_eq!(state.idle_deadline(idle, at(9)), Some(at(10)));
        assert_eq!(state.idle_deadline(idle, at(11)), None);
        let call = InFlight::start(&state);
        assert_eq!(
            state.idle_deadline(idle, at(60)),
            Some(at(70)),
            "a call is in flight"
        );
        drop(call);
        let ended = Instant::now();
        assert!(
            state
                .idle_deadline(idle, ended + Duration::from_secs(9))
                .is_some()
        );
        assert!(
            state
                .idle_deadline(idle, ended + Duration::from_secs(11))
                .is_none()
        );
        drop(conn);
        assert_eq!(a.open(5), (0, 0), "its place is given back");
    }

    #[tokio::test]
    async fn reading_an_idle_connection_ends() {
        use tokio::io::AsyncReadExt;
        let a = Admission::new(limits(10, 10), 0);
        let (ours, _theirs) = UnixStream::pair().expect("a socket pair");
        let idle = Duration::from_millis(100);
        let mut conn = Conn::new(ours, a.take(5).expect("room"), idle);
        let started = Instant::now();
        let n = conn.read(&mut [0u8; 16]).await.expect("EOF, not an error");
        assert_eq!(n, 0);
        assert!(started.elapsed() >= idle);
    }
}
