//! orchd's side of one attempt run by a shim: reads the shim's messages (started,
//! usage, end), sends it the engine's orders, and parses the protocol journal as it
//! grows (woken by inotify), from the offset the engine last stored. The journal is
//! read in whole lines only, so the offset is always at a line start; after a restart
//! the parser's state (running totals) is rebuilt by reading the journal up to the
//! offset without reporting anything.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::model::{Attempt, Control, End, Outcome, StopReason};
use crate::runner::{AttemptEnd, AttemptKey, Fact, LineParser, Threads, UsageFormat};
use crate::sys;

use super::wire::{self, Down, EndRecord, ShimSpec, Started, Up, Why};
use super::{Facts, prices};

pub struct Attend {
    pub key: AttemptKey,
    pub dir: PathBuf,
    /// `None`: the shim is gone and left `end.json`.
    pub conn: Option<tokio::net::UnixStream>,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub facts: Facts,
    pub parser: LineParser,
    /// Where the journal's unprocessed lines start (the attempt's stored offset).
    pub offset: u64,
    /// Whether the agent's start is still to be reported (not recorded yet).
    pub report_started: bool,
    /// The agent as recorded, for killing its tree if the shim dies.
    pub known: Option<Started>,
    pub leaf: Option<PathBuf>,
    /// Run once the agent has run a little ([`SPARE_AFTER`]) or the attempt is over:
    /// the next spare shim is started then, not while this attempt is starting.
    pub once_started: OnceOrAtEnd,
}

/// A closure run once, by whichever of its clones calls [`Once::run`] first.
#[derive(Clone, Default)]
pub struct Once(std::sync::Arc<std::sync::Mutex<Option<Task>>>);

type Task = Box<dyn FnOnce() + Send>;

impl Once {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Once {
        Once(std::sync::Arc::new(std::sync::Mutex::new(Some(Box::new(
            f,
        )))))
    }

    fn run(&self) {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f();
        }
    }

    /// Runs it `after` from now, unless it ran before.
    fn run_after(&self, after: std::time::Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            me.run();
        });
    }
}

/// A [`Once`] that also runs when this handle is dropped (the attempt is over).
#[derive(Default)]
pub struct OnceOrAtEnd(pub Once);

impl Drop for OnceOrAtEnd {
    fn drop(&mut self) {
        self.0.run();
    }
}

/// How long an agent runs before the next spare shim is started (or until it ends, if
/// sooner): on two cores, loading a spare beside a short attempt slows that attempt down.
const SPARE_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// A parser for the attempt's journal; `threads` is set only once the journal read
/// before is replayed.
pub fn parser(
    spec: &ShimSpec,
    table: &std::sync::Arc<std::collections::BTreeMap<String, crate::config::Price>>,
    threads: Option<Threads>,
) -> LineParser {
    LineParser::new(UsageFormat::from_name(&spec.usage_format))
        .with_prices(prices(table, &spec.model))
        .with_session_usage(spec.session_usage)
        .with_threads(threads)
}

/// The end of the journal's lines: one past the last byte read marks that the parser's
/// `finish` (the end of output) was processed too.
fn finished_mark(len: u64) -> u64 {
    len + 1
}

struct Journal {
    path: PathBuf,
    /// How far it was read.
    pos: u64,
    /// `finish` was processed (before a restart, or now).
    finished: bool,
}

impl Journal {
    /// Reads the complete lines after `pos`; returns them.
    fn read_lines(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let read = std::fs::File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.pos))?;
            f.read_to_end(&mut buf)
        });
        if let Err(e) = read {
            tracing::warn!(journal = %self.path.display(), error = %e, "cannot read the protocol journal");
            return Vec::new();
        }
        let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        buf.truncate(whole);
        self.pos += whole as u64;
        buf
    }
}

/// Rebuilds the parser's state from the journal before `offset`, reporting nothing.
fn replay(parser: &mut LineParser, path: &Path, offset: u64) -> (u64, bool) {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    let upto = offset.min(len);
    if upto > 0 {
        let mut buf = Vec::new();
        let r = std::fs::File::open(path).and_then(|f| f.take(upto).read_to_end(&mut buf));
        if let Err(e) = r {
            tracing::warn!(journal = %path.display(), error = %e, "cannot replay the protocol journal");
        }
        let _ = parser.feed(&buf);
    }
    (upto, offset > len)
}

fn order(c: Control) -> Down {
    match c {
        Control::Stop(StopReason::Cancelled) => Down::Stop(Why::Cancelled),
        Control::Stop(StopReason::Shutdown) => Down::Stop(Why::Shutdown),
        Control::Stop(StopReason::BudgetExceeded) => Down::Stop(Why::BudgetExceeded),
        Control::Pause => Down::Pause,
        Control::Resume => Down::Resume,
    }
}

pub async fn attend(mut a: Attend) {
    // Replayed without thread totals: what it would write is written already.
    let threads = a.parser.take_threads();
    let path = a.dir.join(wire::JOURNAL);
    let (pos, finished) = replay(&mut a.parser, &path, a.offset);
    a.parser = std::mem::replace(&mut a.parser, LineParser::new(UsageFormat::OrchLines))
        .with_threads(threads);
    let mut journal = Journal {
        path: path.clone(),
        pos,
        finished,
    };
    let watch = sys::Watch::new(&path, sys::WatchFlags::IN_MODIFY);
    if let Err(e) = &watch {
        tracing::warn!(journal = %path.display(), error = %e, "cannot watch the protocol journal; it is read when the shim reports");
    }
    catch_up(&mut a, &mut journal);
    let Some(conn) = a.conn.take() else {
        return finish_from_file(a, journal);
    };
    let (r, mut w) = conn.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut hello = false;
    loop {
        tokio::select! {
            _ = async { match &watch { Ok(w) => { let _ = w.changed().await; } Err(_) => std::future::pending().await } } => {
                catch_up(&mut a, &mut journal);
            }
            Some(c) = a.control.recv() => {
                if w.write_all(&wire::line(&order(c))).await.is_err() {
                    tracing::warn!(objective = %a.key.objective_id, attempt = a.key.number, "cannot send an order to the attempt's shim");
                }
            }
            l = lines.next_line() => match l {
                Ok(Some(text)) => match serde_json::from_str::<Up>(&text) {
                    Ok(Up::Hello { started, .. }) => {
                        hello = true;
                        if let Some(s) = started { started_now(&mut a, s); }
                    }
                    Ok(Up::Started(s)) => started_now(&mut a, s),
                    Ok(Up::Usage { peak_rss_bytes, cpu_ms }) => {
                        let _ = a.facts.send(Fact::Usage { key: a.key.clone(), peak_rss_bytes, cpu_ms });
                    }
                    Ok(Up::Ended(rec)) => return ended(a, journal, rec),
                    Err(e) => tracing::warn!(error = %e, line = %text, "a message of the shim orchd does not understand"),
                },
                Ok(None) | Err(_) => {
                    if a.dir.join(wire::END).exists() {
                        return finish_from_file(a, journal);
                    }
                    return shim_lost(a, journal, hello);
                }
            },
        }
    }
}

fn started_now(a: &mut Attend, s: Started) {
    a.once_started.0.run_after(SPARE_AFTER);
    if a.report_started {
        a.report_started = false;
        let _ = a.facts.send(Fact::Started {
            key: a.key.clone(),
            pid: Some(s.pid),
            start_ticks: s.start_ticks,
            cgroup: s.cgroup.clone(),
            job_id: None,
        });
    }
    a.known = Some(s);
}

/// Parses the journal's new whole lines and reports them with the new offset.
fn catch_up(a: &mut Attend, j: &mut Journal) {
    let bytes = j.read_lines();
    if bytes.is_empty() {
        return;
    }
    let lines = a.parser.feed(&bytes);
    if !lines.is_empty() {
        let _ = a.facts.send(Fact::Protocol {
            key: a.key.clone(),
            lines,
            upto: j.pos,
        });
    }
}

/// The last lines, the end of output, then the end.
fn ended(mut a: Attend, mut j: Journal, rec: EndRecord) {
    catch_up(&mut a, &mut j);
    if !j.finished {
        let lines = a.parser.finish();
        if !lines.is_empty() {
            let _ = a.facts.send(Fact::Protocol {
                key: a.key.clone(),
                lines,
                upto: finished_mark(j.pos),
            });
        }
    }
    if a.report_started
        && let Some(s) = wire::read::<Started>(&a.dir.join(wire::STARTED))
            .ok()
            .flatten()
    {
        started_now(&mut a, s);
    }
    let _ = a.facts.send(Fact::Ended {
        key: a.key.clone(),
        end: AttemptEnd {
            end: rec.end(),
            exited_at: None,
        },
    });
}

fn finish_from_file(a: Attend, j: Journal) {
    match wire::read::<EndRecord>(&a.dir.join(wire::END)) {
        Ok(Some(rec)) => ended(a, j, rec),
        Ok(None) => shim_lost(a, j, true),
        Err(e) => {
            tracing::error!(dir = %a.dir.display(), error = %e, "the shim's end.json cannot be read");
            shim_lost(a, j, true)
        }
    }
}

/// The shim died without an end: its agent's tree is killed and the attempt ends
/// `interrupted` (a shim that never said hello could not start the attempt).
fn shim_lost(mut a: Attend, mut j: Journal, hello: bool) {
    catch_up(&mut a, &mut j);
    let mut rec = Attempt::new(&a.key.objective_id, a.key.step_index, "", a.key.number);
    if let Some(s) = a.known.clone().or_else(|| {
        wire::read::<Started>(&a.dir.join(wire::STARTED))
            .ok()
            .flatten()
    }) {
        rec.pid = Some(s.pid);
        rec.pid_start_ticks = s.start_ticks;
        rec.cgroup = s.cgroup;
    }
    let killed = super::super::local::kill_leftover(&rec, a.leaf.as_deref(), &sys::Host);
    let end = if hello {
        tracing::warn!(objective = %a.key.objective_id, step = a.key.step_index, attempt = a.key.number, killed, "the attempt's shim died; its agent is stopped and the attempt interrupted");
        End::of(
            Outcome::Interrupted,
            "the attempt's supervisor process (shim) died",
        )
    } else {
        let log = tail_text(&a.dir.join(wire::SHIM_LOG), 2000);
        End::of(
            Outcome::SpawnError,
            &format!("the attempt's shim did not start: {log}"),
        )
    };
    let _ = a.facts.send(Fact::Ended {
        key: a.key.clone(),
        end: AttemptEnd {
            end,
            exited_at: None,
        },
    });
}

/// The last `max` bytes of a file, as text.
fn tail_text(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let from = b.len().saturating_sub(max);
            let t = String::from_utf8_lossy(&b[from..]).trim().to_string();
            if t.is_empty() {
                "it exited without a word".into()
            } else {
                t
            }
        }
        Err(e) => format!("(no log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::AgentLine;

    #[test]
    fn the_next_spare_is_started_once_whether_the_agent_runs_or_the_attempt_ends() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let runs = std::sync::Arc::new(AtomicU32::new(0));
        let counter = || {
            let r = runs.clone();
            Once::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        };
        // Started (the timer's clone runs it), then the attempt ends: once.
        let at_end = OnceOrAtEnd(counter());
        let timer = at_end.0.clone();
        timer.run();
        drop(at_end);
        timer.run();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The attempt ends before the agent ran long enough: at the end, once.
        let at_end = OnceOrAtEnd(counter());
        let timer = at_end.0.clone();
        drop(at_end);
        timer.run();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // Nothing to run (a re-attached attempt): nothing happens.
        drop(OnceOrAtEnd::default());
    }

    fn journal(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join(wire::JOURNAL);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn only_whole_lines_are_read_and_the_offset_stays_at_a_line_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = journal(dir.path(), "::orch-progress:: {\"percent\":1}\n::orch-prog");
        let mut j = Journal {
            path: p.clone(),
            pos: 0,
            finished: false,
        };
        let first = j.read_lines();
        assert_eq!(first, b"::orch-progress:: {\"percent\":1}\n");
        assert_eq!(j.pos, first.len() as u64);
        assert!(j.read_lines().is_empty(), "a partial line waits");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open");
        std::io::Write::write_all(&mut f, b"ress:: {\"percent\":2}\n").expect("append");
        assert_eq!(j.read_lines(), b"::orch-progress:: {\"percent\":2}\n");
    }

    #[test]
    fn a_replay_rebuilds_the_parser_and_reports_nothing_before_the_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = "::orch-usage:: {\"input_tokens\":3}\n";
        let p = journal(dir.path(), &format!("{one}{one}"));
        let mut parser = LineParser::new(UsageFormat::OrchLines);
        let (pos, finished) = replay(&mut parser, &p, one.len() as u64);
        assert_eq!((pos, finished), (one.len() as u64, false));
        let mut j = Journal {
            path: p.clone(),
            pos,
            finished,
        };
        let lines = parser.feed(&j.read_lines());
        assert_eq!(lines.len(), 1, "only the line after the offset: {lines:?}");
        assert!(matches!(lines[0], AgentLine::Usage { .. }));
        // One past the end: `finish` was processed before the restart.
        let (pos, finished) = replay(&mut parser, &p, finished_mark(2 * one.len() as u64));
        assert_eq!((pos, finished), (2 * one.len() as u64, true));
    }
}
