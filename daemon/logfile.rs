//! Per-attempt log files. stdout and stderr go into one file as frames
//! (`[stream u8][length u32 LE][bytes]`), so their interleaving is kept and either stream
//! can be read alone. The file rotates by size into `NAME.1` so the newest output (at
//! least half the cap, at most the cap) is kept. The writer never blocks the agent: it
//! is fed through a queue bounded by bytes that readers never wait on. The reader can follow
//! a live file, woken by inotify, across rotations.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Writes one attempt's log.
pub struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    segment_max: u64,
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
            size: 0,
            segment_max: (max_bytes / 2).max(64 * 1024),
        })
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
        use std::io::Write;
        let LogWriter {
            path,
            file,
            mut size,
            segment_max,
        } = self;
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
        let mut broken = false;
        loop {
            // Flush whenever the queue runs dry, so followers see output promptly.
            let next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let _ = out.flush();
                    rx.blocking_recv()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some((stream, data)) = next else { break };
            queued.fetch_sub(data.len(), Ordering::Relaxed);
            if broken {
                continue;
            }
            let frame_len = (HEADER + data.len()) as u64;
            if size > 0 && size + frame_len > segment_max {
                let _ = out.flush();
                match std::fs::rename(&path, rotated(&path)).and_then(|_| create_private(&path)) {
                    Ok(f) => {
                        out = std::io::BufWriter::with_capacity(256 * 1024, f);
                        size = 0;
                    }
                    Err(e) => {
                        tracing::warn!(log = %path.display(), error = %e, "cannot rotate the attempt log; output is no longer logged");
                        broken = true;
                        continue;
                    }
                }
            }
            let mut header = [0u8; HEADER];
            header[0] = stream as u8;
            header[1..].copy_from_slice(&(data.len() as u32).to_le_bytes());
            if let Err(e) = out.write_all(&header).and_then(|_| out.write_all(&data)) {
                // A full disk or a broken file must not stop the agent: keep draining.
                tracing::warn!(log = %path.display(), error = %e, "cannot write the attempt log; output is no longer logged");
                broken = true;
                continue;
            }
            size += frame_len;
        }
        let _ = out.flush();
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
