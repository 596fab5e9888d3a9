//! Per-attempt log files. stdout and stderr go into one file as frames
//! (`[stream u8][length u32 LE][bytes]`), so their interleaving is kept and either stream
//! can be read alone. The file rotates by size into `NAME.1` so the newest output (at
//! least half the cap, at most the cap) is kept. The writer never blocks the agent: it
//! is fed through a queue bounded by bytes that readers never wait on. The reader can follow
//! a live file, woken by inotify, across rotations. The logs of running attempts draw their
//! bytes from one [`LogBudget`] (`[logs] max_total_bytes`, and `max_user_bytes` for each user
//! of a shared daemon): beyond it output is dropped, and a marker line in the log says so.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use orch_proto::units::HumanBytes;

use tokio::sync::mpsc;

/// Which output stream a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

impl Stream {
    fn from_tag(t: u8) -> Option<Stream> {
        match t {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            _ => None,
        }
    }
}

const HEADER: usize = 5;

/// The log file of one attempt: `LOGS/OBJECTIVE/STEP.N.log`.
pub fn attempt_log(logs_dir: &Path, objective_id: &str, step_id: &str, number: u32) -> PathBuf {
    logs_dir
        .join(objective_id)
        .join(format!("{step_id}.{number}.log"))
}

/// The rotated-away segment of a log.
pub fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Creates (or truncates) a log file with mode 0600, whatever the umask.
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// The bytes the logs of running attempts hold on disk, against `[logs] max_total_bytes`
/// (all of them) and `max_user_bytes` (each user of a shared daemon: the attempts run as
/// another user). Log writers draw from it frame by frame and give back what rotation
/// deletes; when an attempt ends its log leaves the budget (housekeeping keeps ended logs
/// under `max_total_bytes`). A writer refused a frame drops it and marks the log.
pub struct LogBudget {
    state: Mutex<BudgetState>,
}

struct BudgetState {
    total_cap: u64,
    user_cap: u64,
    total: u64,
    users: HashMap<u32, u64>,
}

/// Which limit refused output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Over {
    Total { cap: u64 },
    User { uid: u32, cap: u64 },
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Over::Total { cap } => write!(
                f,
                "the logs of running attempts reached [logs] max_total_bytes = {cap} bytes ({})",
                HumanBytes(*cap)
            ),
            Over::User { uid, cap } => write!(
                f,
                "the logs of the running attempts of uid {uid} reached [logs] max_user_bytes = \
                 {cap} bytes ({})",
                HumanBytes(*cap)
            ),
        }
    }
}

impl LogBudget {
    pub fn new(total_cap: u64, user_cap: u64) -> LogBudget {
        LogBudget {
            state: Mutex::new(BudgetState {
                total_cap,
                user_cap,
                total: 0,
                users: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        // The counts stay meaningful whatever panicked while holding them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the limits (at start and when the config is reloaded); what is held stays.
    pub fn set_caps(&self, total_cap: u64, user_cap: u64) {
        let mut s = self.lock();
        s.total_cap = total_cap;
        s.user_cap = user_cap;
    }

    /// Takes `n` bytes for a log of `uid` (`None`: the daemon's own user, counted in the
    /// total only) if there is room for `need` under the limits (but at most a quarter of
    /// each, and at least `n`); `force` takes them anyway (marker lines).
    fn draw(&self, uid: Option<u32>, n: u64, need: u64, force: bool) -> Result<(), Over> {
        // Room for `need` (but at most a quarter of a limit), and for `n` in any case.
        let room = |cap: u64| need.min(cap / 4).max(n);
        let mut s = self.lock();
        if !force && s.total.saturating_add(room(s.total_cap)) > s.total_cap {
            return Err(Over::Total { cap: s.total_cap });
        }
        if let Some(uid) = uid {
            let cap = s.user_cap;
            let mine = s.users.entry(uid).or_default();
            if !force && mine.saturating_add(room(cap)) > cap {
                return Err(Over::User { uid, cap });
            }
            *mine += n;
        }
        s.total += n;
        Ok(())
    }

    fn give_back(&self, uid: Option<u32>, n: u64) {
        let mut s = self.lock();
        s.total = s.total.saturating_sub(n);
        if let Some(uid) = uid
            && let Some(mine) = s.users.get_mut(&uid)
        {
            *mine = mine.saturating_sub(n);
            if *mine == 0 {
                s.users.remove(&uid);
            }
        }
    }

    /// Bytes held now: all, and those of `uid`.
    #[cfg(test)]
    pub fn held(&self, uid: u32) -> (u64, u64) {
        let s = self.lock();
        (s.total, s.users.get(&uid).copied().unwrap_or(0))
    }
}

/// The daemon's log budget (no limits until `set_caps`).
pub fn budget() -> Arc<LogBudget> {
    static BUDGET: OnceLock<Arc<LogBudget>> = OnceLock::new();
    BUDGET
        .get_or_init(|| Arc::new(LogBudget::new(u64::MAX, u64::MAX)))
        .clone()
}

/// Room a log that is dropping output must see before it writes again.
const RESUME_ROOM: u64 = 256 << 10;
/// Bytes gathered before they are written to the file.
const BUFFER_BYTES: usize = 256 << 10;
/// While the disk is full, how often (at most, as output arrives) its free space is
/// looked at again.
const FULL_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Told about output dropped because the disk is full (a sentence for the event log).
pub type DropNotice = Box<dyn Fn(String) + Send>;

/// Writes one attempt's log.
pub struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    segment_max: u64,
    /// The budget its bytes are drawn from, and the user they are counted for.
    budget: Option<(Arc<LogBudget>, Option<u32>)>,
    /// What the file and its rotated segment held when it was opened (`append`).
    sizes: (u64, u64),
    notice: Option<DropNotice>,
}

impl LogWriter {
    /// Creates the log (and its directories, mode 0700; the file is 0600: only the daemon's
    /// user reads logs, others through `StreamLogs`); `max_bytes` caps both segments together.
    pub fn create(path: &Path, max_bytes: u64) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = create_private(path)?;
        let _ = std::fs::remove_file(rotated(path));
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            segment_max: (max_bytes / 2).max(64 * 1024),
            budget: None,
            sizes: (0, 0),
            notice: None,
        })
    }

    /// Opens an attempt's log to add to what it holds (an attempt followed again after a
    /// restart); a missing log is created.
    pub fn append(path: &Path, max_bytes: u64) -> io::Result<LogWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        if !path.exists() {
            return LogWriter::create(path, max_bytes);
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(path)?;
        let size = file.metadata()?.len();
        let rotated_size = std::fs::metadata(rotated(path)).map_or(0, |m| m.len());
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            segment_max: (max_bytes / 2).max(64 * 1024),
            budget: None,
            sizes: (size, rotated_size),
            notice: None,
        })
    }

    /// Draws the log's bytes from `budget`, for `uid` (`None`: the daemon's own user).
    pub fn drawing_from(mut self, budget: Arc<LogBudget>, uid: Option<u32>) -> LogWriter {
        self.budget = Some((budget, uid));
        self
    }

    /// Calls `notice` when output is dropped because the disk is full, and when the log
    /// resumes.
    pub fn noticing(mut self, notice: DropNotice) -> LogWriter {
        self.notice = Some(notice);
        self
    }

    /// Starts the writer on a thread of its own (plain buffered file writes, no async
    /// hops per chunk); chunks sent through the returned handle are appended in order.
    /// The returned receiver resolves when every sender is dropped and all is written.
    pub fn spawn(self) -> (LogTx, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        let name = format!(
            "log-{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            self.run(rx, &q);
            let _ = done_tx.send(());
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log writer thread; output is not logged");
        }
        (LogTx { tx, queued }, done_rx)
    }

    fn run(self, mut rx: mpsc::UnboundedReceiver<(Stream, Vec<u8>)>, queued: &AtomicUsize) {
        let LogWriter {
            path,
            file,
            segment_max,
            budget,
            sizes,
            notice,
        } = self;
        let mut sink = Sink {
            file,
            buf: Vec::with_capacity(BUFFER_BYTES),
            path,
            size: sizes.0,
            written: sizes.0,
            rotated_size: sizes.1,
            segment_max,
            broken: false,
            budget,
            held: 0,
            dropped: 0,
            over: None,
            full: None,
            notice,
        };
        loop {
            // Flush whenever the queue runs dry, so followers see output promptly.
            let next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    sink.flush();
                    rx.blocking_recv()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some((stream, data)) = next else { break };
            queued.fetch_sub(data.len(), Ordering::Relaxed);
            sink.write(stream, &data);
        }
        sink.finish();
    }
}

/// Why output is being dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dropping {
    /// A log budget (`[logs]`) is used up.
    Budget(Over),
    /// The filesystem is full.
    DiskFull,
}

/// Where a log writer's frames go: the file (rotated by size), and the budget they are
/// drawn from.
struct Sink {
    file: std::fs::File,
    /// Frames not written to the file yet.
    buf: Vec<u8>,
    path: PathBuf,
    /// Bytes of the current segment (buffered included), of it in the file, and of the
    /// rotated one (`NAME.1`).
    size: u64,
    written: u64,
    rotated_size: u64,
    segment_max: u64,
    /// Writing failed for a reason other than a full disk: nothing more is written.
    broken: bool,
    budget: Option<(Arc<LogBudget>, Option<u32>)>,
    /// Bytes drawn from the budget (what both segments hold).
    held: u64,
    /// Output bytes dropped since the last marker, and why.
    dropped: u64,
    over: Option<Dropping>,
    /// Set while the disk is full: when its free space was last looked at.
    full: Option<std::time::Instant>,
    notice: Option<DropNotice>,
}

impl Sink {
    /// Writes what is buffered to the file. A full disk keeps the file whole (a partly
    /// written frame is cut off) and drops what did not fit; any other error stops the
    /// log.
    fn flush(&mut self) {
        use std::io::{Seek, Write};
        if self.buf.is_empty() || self.broken {
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.written += self.buf.len() as u64;
                self.buf.clear();
            }
            Err(e) => {
                let lost = self.buf.len() as u64;
                self.buf.clear();
                // What reached the file of the failed write is not a whole frame.
                let cut = self
                    .file
                    .set_len(self.written)
                    .and_then(|_| self.file.seek(io::SeekFrom::Start(self.written)));
                self.size = self.written;
                self.give_back(lost);
                if crate::sys::is_disk_full(&e) && cut.is_ok() {
                    self.disk_full(lost);
                } else {
                    // A broken file must not stop the agent: keep draining.
                    tracing::warn!(log = %self.path.display(), error = %e, "cannot write the attempt log; output is no longer logged");
                    self.broken = true;
                }
            }
        }
    }

    /// The disk is full: output is dropped from here until it has room again.
    fn disk_full(&mut self, lost: u64) {
        if self.full.is_none() {
            let text = format!(
                "orchd: the disk holding {} is full: output is dropped from the log until there is room",
                self.path.display()
            );
            tracing::warn!(log = %self.path.display(), "{text}");
            if let Some(n) = &self.notice {
                n(text);
            }
        }
        self.full = Some(std::time::Instant::now());
        self.dropped += lost;
        self.over = Some(Dropping::DiskFull);
    }

    /// Whether the disk has room again (looked at no more often than `FULL_RECHECK`).
    fn room_again(&mut self) -> bool {
        let Some(checked) = self.full else {
            return true;
        };
        if checked.elapsed() < FULL_RECHECK {
            return false;
        }
        self.full = Some(std::time::Instant::now());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let room = crate::sys::fs_space(dir).is_ok_and(|s| s.free >= RESUME_ROOM);
        if room {
            self.full = None;
            let text = format!(
                "orchd: the disk holding {} has room again: {} bytes of output were dropped from the log",
                self.path.display(),
                self.dropped
            );
            tracing::info!(log = %self.path.display(), "{text}");
            if let Some(n) = &self.notice {
                n(text);
            }
        }
        room
    }

    /// Writes one chunk of output as a frame, unless the budget refuses it or the disk is
    /// full: then it is dropped, and the log gets a marker where output stops (when it
    /// fits) and where it starts again.
    fn write(&mut self, stream: Stream, data: &[u8]) {
        if self.broken {
            return;
        }
        if self.full.is_some() && !self.room_again() {
            self.dropped += data.len() as u64;
            return;
        }
        // Once dropping, output resumes only when there is room for a good stretch of it
        // (another attempt ended, or rotation freed some), not for the odd small chunk.
        let need = if self.dropped > 0 { RESUME_ROOM } else { 0 };
        if let Err(over) = self.draw(HEADER + data.len(), need, false) {
            if self.dropped == 0 {
                tracing::warn!(log = %self.path.display(), "{over}; output of this attempt is dropped from its log until there is room");
                self.marker(format!("orchd: output dropped from here: {over}\n"));
            }
            self.dropped += data.len() as u64;
            self.over = Some(Dropping::Budget(over));
            return;
        }
        if self.dropped > 0 {
            self.dropped_marker("before this point");
        }
        self.frame(stream, data);
    }

    /// Takes `n` bytes from the budget (if the log draws from one), when it has room for
    /// `need`.
    fn draw(&mut self, n: usize, need: u64, force: bool) -> Result<(), Over> {
        if let Some((budget, uid)) = &self.budget {
            budget.draw(*uid, n as u64, need, force)?;
        }
        self.held += n as u64;
        Ok(())
    }

    /// A line of orchd's own in the log (on stderr), taken from the budget whatever it
    /// holds: there is at most one per stretch of dropped output and one at the end.
    fn marker(&mut self, text: String) {
        let _ = self.draw(HEADER + text.len(), 0, true);
        self.frame(Stream::Stderr, text.as_bytes());
    }

    fn dropped_marker(&mut self, at: &str) {
        let why = match self.over.take() {
            Some(Dropping::Budget(o)) => format!(" ({o})"),
            Some(Dropping::DiskFull) => " (the disk was full)".to_string(),
            None => String::new(),
        };
        let text = format!(
            "orchd: {} bytes of output were dropped {at}{why}\n",
            std::mem::take(&mut self.dropped)
        );
        self.marker(text);
    }

    /// Appends one frame (its bytes already drawn), rotating first when it would not fit.
    fn frame(&mut self, stream: Stream, data: &[u8]) {
        let frame_len = (HEADER + data.len()) as u64;
        if self.size > 0 && self.size + frame_len > self.segment_max {
            self.flush();
            if self.broken || self.full.is_some() {
                self.dropped += data.len() as u64;
                self.give_back(frame_len);
                return;
            }
            match std::fs::rename(&self.path, rotated(&self.path))
                .and_then(|_| create_private(&self.path))
            {
                Ok(f) => {
                    self.file = f;
                    // The old `NAME.1` is gone: its bytes go back to the budget.
                    let freed = std::mem::replace(&mut self.rotated_size, self.size);
                    self.give_back(freed);
                    self.size = 0;
                    self.written = 0;
                }
                Err(e) => {
                    tracing::warn!(log = %self.path.display(), error = %e, "cannot rotate the attempt log; output is no longer logged");
                    self.broken = true;
                    return;
                }
            }
        }
        let mut header = [0u8; HEADER];
        header[0] = stream as u8;
        header[1..].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(data);
        self.size += frame_len;
        if self.buf.len() >= BUFFER_BYTES {
            self.flush();
        }
    }

    fn give_back(&mut self, n: u64) {
        let n = n.min(self.held);
        self.held -= n;
        if let Some((budget, uid)) = &self.budget {
            budget.give_back(*uid, n);
        }
    }

    /// The attempt's output has ended: says what was dropped at the end, flushes, and
    /// takes the log out of the budget of running attempts.
    fn finish(mut self) {
        if self.full.is_some() {
            // One more look: the marker is written if the disk has room now.
            let now = std::time::Instant::now();
            self.full = Some(now.checked_sub(FULL_RECHECK).unwrap_or(now));
            self.room_again();
        }
        if self.dropped > 0 && !self.broken && self.full.is_none() {
            self.dropped_marker("at the end");
        }
        self.flush();
        let held = self.held;
        self.give_back(held);
    }
}

/// Most bytes queued for one attempt's writer before output is dropped (the disk stalled).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Feeds an attempt's log writer without ever blocking.
#[derive(Clone)]
pub struct LogTx {
    tx: mpsc::UnboundedSender<(Stream, Vec<u8>)>,
    queued: Arc<AtomicUsize>,
}

impl LogTx {
    /// Queues a chunk; false (and nothing queued) when the writer is too far behind.
    pub fn send(&self, stream: Stream, data: Vec<u8>) -> bool {
        let n = data.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        if self.tx.send((stream, data)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A chunk read back from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// Reads frames from one open segment, remembering where it stopped.
struct Segment {
    file: std::fs::File,
    inode: u64,
    pending: Vec<u8>,
}

impl Segment {
    fn open(path: &Path) -> io::Result<Segment> {
        let file = std::fs::File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(Segment {
            file,
            inode,
            pending: Vec::new(),
        })
    }

    /// Reads every complete frame available now.
    fn read_available(&mut self, out: &mut Vec<Chunk>) -> io::Result<()> {
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.pending.extend_from_slice(&buf);
        let mut at = 0;
        while self.pending.len() - at >= HEADER {
            let len = u32::from_le_bytes([
                self.pending[at + 1],
                self.pending[at + 2],
                self.pending[at + 3],
                self.pending[at + 4],
            ]) as usize;
            if self.pending.len() - at < HEADER + len {
                break;
            }
            if let Some(stream) = Stream::from_tag(self.pending[at]) {
                out.push(Chunk {
                    stream,
                    data: self.pending[at + HEADER..at + HEADER + len].to_vec(),
                });
            }
            at += HEADER + len;
        }
        self.pending.drain(..at);
        Ok(())
    }
}

/// Reads a log (rotated segment first), optionally following it.
pub struct LogReader {
    path: PathBuf,
    current: Option<Segment>,
    started: bool,
}

impl LogReader {
    pub fn new(path: &Path) -> LogReader {
        LogReader {
            path: path.to_path_buf(),
            current: None,
            started: false,
        }
    }

    /// Every complete frame written so far that this reader has not returned yet.
    pub fn read_new(&mut self) -> io::Result<Vec<Chunk>> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            if let Ok(mut old) = Segment::open(&rotated(&self.path)) {
                old.read_available(&mut out)?;
            }
            match Segment::open(&self.path) {
                Ok(s) => self.current = Some(s),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        loop {
            if let Some(seg) = &mut self.current {
                seg.read_available(&mut out)?;
            }
            // Rotated since we opened it: what we hold is now `NAME.1` (read to its end
            // above); continue with the new file from its start.
            let now = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
            match (&self.current, now) {
                (Some(seg), Some(ino)) if seg.inode != ino => {
                    self.current = Some(Segment::open(&self.path)?);
                }
                (None, Some(_)) => self.current = Some(Segment::open(&self.path)?),
                _ => return Ok(out),
            }
        }
    }

    /// Watches the log's directory for changes (a write, a rotation), by inotify.
    pub fn watcher(&self) -> io::Result<crate::sys::Watch> {
        use crate::sys::WatchFlags as F;
        Ok(crate::sys::Watch::new(
            self.path.parent().unwrap_or(Path::new(".")),
            F::IN_MODIFY | F::IN_CREATE | F::IN_MOVED_TO | F::IN_CLOSE_WRITE,
        )?)
    }
}

/// Keeps only the chunks holding the last `lines` lines (bounded memory while streaming).
pub struct Tail {
    lines: usize,
    chunks: VecDeque<Chunk>,
    newlines: usize,
}

impl Tail {
    pub fn new(lines: usize) -> Tail {
        Tail {
            lines,
            chunks: VecDeque::new(),
            newlines: 0,
        }
    }

    pub fn push(&mut self, c: Chunk) {
        self.newlines += c.data.iter().filter(|b| **b == b'\n').count();
        self.chunks.push_back(c);
        // Drop whole chunks while what remains still holds more than `lines` lines.
        while let Some(front) = self.chunks.front() {
            let n = front.data.iter().filter(|b| **b == b'\n').count();
            if self.newlines - n > self.lines {
                self.newlines -= n;
                self.chunks.pop_front();
            } else {
                break;
            }
        }
    }

    /// The last `lines` lines, cut at a line start inside the first chunk.
    pub fn finish(mut self) -> Vec<Chunk> {
        // Lines counted by newline; a final partial line counts as one.
        let ends_open = self
            .chunks
            .back()
            .is_some_and(|c| c.data.last() != Some(&b'\n'));
        let total = self.newlines + usize::from(ends_open);
        let mut skip = total.saturating_sub(self.lines);
        while skip > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            match front.data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    front.data.drain(..=i);
                    skip -= 1;
                    if front.data.is_empty() {
                        self.chunks.pop_front();
                    }
                }
                None => {
                    self.chunks.pop_front();
                }
            }
        }
        self.chunks.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunks: &[Chunk]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn frames_keep_order_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let (tx, task) = LogWriter::create(&path, 1 << 20).unwrap().spawn();
        assert!(tx.send(Stream::Stdout, b"out1\n".to_vec()));
        assert!(tx.send(Stream::Stderr, b"err1\n".to_vec()));
        assert!(tx.send(Stream::Stdout, b"out2\n".to_vec()));
        drop(tx);
        task.await.unwrap();
        let chunks = LogReader::new(&path).read_new().unwrap();
        assert_eq!(text(&chunks), "out1\nerr1\nout2\n");
        assert_eq!(chunks[1].stream, Stream::Stderr);
    }

    #[tokio::test]
    async fn rotation_keeps_the_newest_output_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let cap = 256 * 1024;
        let (tx, task) = LogWriter::create(&path, cap).unwrap().spawn();
        for i in 0..5000 {
            assert!(tx.send(
                Stream::Stdout,
                format!("line {i:06} {}\n", "x".repeat(100)).into_bytes(),
            ));
        }
        drop(tx);
        task.await.unwrap();
        let size = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(rotated(&path)).unwrap().len();
        assert!(size <= cap, "{size} > {cap}");
        let all = text(&LogReader::new(&path).read_new().unwrap());
        assert!(all.ends_with(&format!("line 004999 {}\n", "x".repeat(100))));
        assert!(!all.contains("line 000000 "));
        assert!(all.len() as u64 >= cap / 2 - 1024);
    }

    fn log_size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
            + std::fs::metadata(rotated(path))
                .map(|m| m.len())
                .unwrap_or(0)
    }

    /// Writes `chunks` chunks of 1000 bytes through a writer drawing from `budget`.
    async fn write_through(path: &Path, budget: &Arc<LogBudget>, uid: Option<u32>, chunks: usize) {
        let w = LogWriter::create(path, 1 << 30)
            .unwrap()
            .drawing_from(budget.clone(), uid);
        let (tx, task) = w.spawn();
        for i in 0..chunks {
            assert!(tx.send(Stream::Stdout, format!("{i:0999}\n").into_bytes()));
        }
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn past_the_budget_output_is_dropped_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let budget = Arc::new(LogBudget::new(100_000, u64::MAX));
        write_through(&path, &budget, None, 1000).await;
        let size = log_size(&path);
        assert!(size <= 100_000 + 1000, "{size}");
        let all = text(&LogReader::new(&path).read_new().unwrap());
        assert!(all.starts_with(&format!("{:0999}\n", 0)));
        let marker = "orchd: output dropped from here: the logs of running attempts reached \
                      [logs] max_total_bytes = 100000 bytes (97.7K)\n";
        assert!(all.contains(marker), "{}", &all[all.len() - 400..]);
        assert!(
            all.ends_with(
                "bytes of output were dropped at the end (the logs of running attempts \
                           reached [logs] max_total_bytes = 100000 bytes (97.7K))\n"
            ),
            "{}",
            &all[all.len() - 400..]
        );
        assert_eq!(
            budget.held(0),
            (0, 0),
            "an ended attempt's log leaves the budget"
        );
    }

    #[tokio::test]
    async fn each_user_has_a_share_of_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(LogBudget::new(1 << 20, 50_000));
        let a = dir.path().join("a.log");
        write_through(&a, &budget, Some(1001), 200).await;
        assert!(log_size(&a) <= 50_000 + 1000);
        let all = text(&LogReader::new(&a).read_new().unwrap());
        assert!(all.contains("the logs of the running attempts of uid 1001 reached [logs] max_user_bytes = 50000 bytes"), "{all}");
        // Another user is not held back by the first; the daemon's own user counts in the
        // total only.
        budget.draw(Some(1001), 50_000, 0, false).unwrap();
        assert!(budget.draw(Some(1001), 10, 0, false).is_err());
        budget.draw(Some(1002), 10, 0, false).unwrap();
        budget.draw(None, 500_000, 0, false).unwrap();
        assert_eq!(budget.held(1001), (550_010, 50_000));
        // Room again (another attempt ended): that user's next log is written again.
        budget.give_back(Some(1001), 50_000);
        let (tx, task) = LogWriter::create(&dir.path().join("b.log"), 1 << 30)
            .unwrap()
            .drawing_from(budget.clone(), Some(1001))
            .spawn();
        for _ in 0..60 {
            assert!(tx.send(Stream::Stdout, vec![b'x'; 999]));
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(budget.held(1001), (500_010, 0));
    }

    #[tokio::test]
    async fn rotation_gives_back_what_it_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let budget = Arc::new(LogBudget::new(300_000, u64::MAX));
        let (tx, task) = LogWriter::create(&path, 256 * 1024)
            .unwrap()
            .drawing_from(budget.clone(), None)
            .spawn();
        for i in 0..2000 {
            assert!(tx.send(Stream::Stdout, format!("{i:0999}\n").into_bytes()));
        }
        drop(tx);
        task.await.unwrap();
        // 2 MB went through a 256K log under a 300K budget: rotation made room each time.
        let all = text(&LogReader::new(&path).read_new().unwrap());
        assert!(!all.contains("orchd:"), "nothing was dropped");
        assert!(all.ends_with(&format!("{:0999}\n", 1999)));
    }

    #[test]
    fn tail_cuts_at_line_starts() {
        let mut t = Tail::new(2);
        for s in ["a\nb\n", "c\nd", "\ne\n"] {
            t.push(Chunk {
                stream: Stream::Stdout,
                data: s.as_bytes().to_vec(),
            });
        }
        assert_eq!(text(&t.finish()), "d\ne\n");
        let mut t = Tail::new(5);
        t.push(Chunk {
            stream: Stream::Stdout,
            data: b"only\n".to_vec(),
        });
        assert_eq!(text(&t.finish()), "only\n");
    }

    #[test]
    fn reader_follows_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, [1, 2, 0, 0, 0, b'h', b'i']).unwrap();
        let mut r = LogReader::new(&path);
        assert_eq!(text(&r.read_new().unwrap()), "hi");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        // A partial frame is held back until complete.
        f.write_all(&[2, 1, 0, 0]).unwrap();
        assert!(r.read_new().unwrap().is_empty());
        f.write_all(&[0, b'!']).unwrap();
        let c = r.read_new().unwrap();
        assert_eq!(text(&c), "!");
        assert_eq!(c[0].stream, Stream::Stderr);
    }
}
