//! `orchctl logs`: writes captured output raw to stdout, with a `==> STEP (attempt N) <==`
//! header per attempt (when no STEP is given) and `--- stderr ---` markers when both
//! streams are shown and the stream changes.

use orch_proto::v1::{LogChunk, LogStream, StreamLogsRequest};

use std::collections::HashMap;

use crate::cli::LogsArgs;
use crate::client::Client;
use crate::error::Result;
use crate::output::{self, Format};

/// `logs -o json`: JSON Lines `{time, step, attempt, stream, line}`, one per line of
/// output. Lines are put back together across chunks, per step, attempt and stream; the
/// log files keep no time per line, so `time` is when orchctl received it.
#[derive(Default)]
struct JsonLines {
    partial: HashMap<(String, u32, i32), Vec<u8>>,
}

impl JsonLines {
    fn value(key: &(String, u32, i32), line: &[u8]) -> serde_json::Value {
        let stream = orch_proto::words::log_stream(
            LogStream::try_from(key.2).unwrap_or(LogStream::Unspecified),
        );
        let line = String::from_utf8_lossy(line);
        serde_json::json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "step": key.0,
            "attempt": key.1,
            "stream": stream,
            "line": line.strip_suffix('\r').unwrap_or(&line),
        })
    }

    /// The complete lines of `chunk` (what is left waits for the rest of its line).
    fn push(&mut self, chunk: &LogChunk) -> Vec<serde_json::Value> {
        let key = (chunk.step_id.clone(), chunk.attempt, chunk.stream);
        let buf = self.partial.entry(key.clone()).or_default();
        buf.extend_from_slice(&chunk.data);
        let mut out = Vec::new();
        while let Some(at) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            out.push(Self::value(&key, &line[..line.len() - 1]));
        }
        out
    }

    /// The last lines that had no newline.
    fn finish(&mut self) -> Vec<serde_json::Value> {
        let mut rest: Vec<_> = self
            .partial
            .drain()
            .filter(|(_, b)| !b.is_empty())
            .collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        rest.iter().map(|(k, b)| Self::value(k, b)).collect()
    }
}

/// Tracks what was printed last, to place headers and stream markers.
pub struct LogPrinter {
    headers: bool,
    markers: bool,
    current: Option<(String, u32)>,
    stream: i32,
    at_line_start: bool,
}

impl LogPrinter {
    pub fn new(headers: bool, markers: bool) -> Self {
        LogPrinter {
            headers,
            markers,
            current: None,
            stream: LogStream::Stdout as i32,
            at_line_start: true,
        }
    }

    /// The bytes to print for one chunk: any header or marker, then the data.
    pub fn render(&mut self, chunk: &LogChunk) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.data.len() + 64);
        let key = (chunk.step_id.clone(), chunk.attempt);
        if self.current.as_ref() != Some(&key) {
            if self.headers {
                self.newline_if_needed(&mut out);
                if self.current.is_some() {
                    out.push(b'\n');
                }
                out.extend_from_slice(
                    format!("==> {} (attempt {}) <==\n", chunk.step_id, chunk.attempt).as_bytes(),
                );
                self.at_line_start = true;
            }
            self.current = Some(key);
            self.stream = LogStream::Stdout as i32;
        }
        if self.markers && chunk.stream != self.stream {
            self.newline_if_needed(&mut out);
            let name = orch_proto::words::log_stream(
                LogStream::try_from(chunk.stream).unwrap_or(LogStream::Unspecified),
            );
            out.extend_from_slice(format!("--- {name} ---\n").as_bytes());
            self.at_line_start = true;
        }
        self.stream = chunk.stream;
        if let Some(last) = chunk.data.last() {
            self.at_line_start = *last == b'\n';
        }
        out.extend_from_slice(&chunk.data);
        out
    }

    fn newline_if_needed(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.push(b'\n');
            self.at_line_start = true;
        }
    }
}

/// Runs `orchctl logs`.
pub async fn run(args: LogsArgs, client: &mut Client, format: Format) -> Result<()> {
    let streams = match (args.stdout, args.stderr) {
        (true, false) => vec![LogStream::Stdout as i32],
        (false, true) => vec![LogStream::Stderr as i32],
        _ => Vec::new(),
    };
    let both = streams.is_empty();
    let request = StreamLogsRequest {
        id: args.id,
        step_id: args.step.clone().unwrap_or_default(),
        attempt: args.attempt.unwrap_or(0),
        follow: args.follow,
        tail_lines: args.tail.unwrap_or(0),
        streams,
    };
    let r = client.api.stream_logs(request).await;
    let mut stream = client.check(r)?;
    let mut printer = LogPrinter::new(args.step.is_none(), both);
    let mut json = JsonLines::default();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => match format {
                Format::Table => output::write_bytes(&printer.render(&chunk))?,
                Format::Json => {
                    for v in json.push(&chunk) {
                        output::json_line(&v)?;
                    }
                }
            },
            Ok(None) => break,
            Err(status) => return Err(client.status_error(status)),
        }
    }
    for v in json.finish() {
        output::json_line(&v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(step: &str, attempt: u32, stream: LogStream, data: &str) -> LogChunk {
        LogChunk {
            step_id: step.into(),
            attempt,
            stream: stream as i32,
            data: data.as_bytes().to_vec(),
        }
    }

    fn render_all(p: &mut LogPrinter, chunks: &[LogChunk]) -> String {
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| p.render(c)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn headers_and_markers() {
        let mut p = LogPrinter::new(true, true);
        let text = render_all(
            &mut p,
            &[
                chunk("a", 1, LogStream::Stdout, "out1\n"),
                chunk("a", 1, LogStream::Stderr, "err1"),
                chunk("a", 1, LogStream::Stdout, "out2\n"),
                chunk("b", 2, LogStream::Stdout, "bout\n"),
            ],
        );
        assert_eq!(
            text,
            "==> a (attempt 1) <==\nout1\n--- stderr ---\nerr1\n--- stdout ---\nout2\n\n==> b (attempt 2) <==\nbout\n"
        );
    }

    #[test]
    fn json_lines_are_whole_lines_per_stream() {
        let mut j = JsonLines::default();
        let mut got = Vec::new();
        for c in [
            chunk("a", 1, LogStream::Stdout, "one\ntw"),
            chunk("a", 1, LogStream::Stderr, "oops\n"),
            chunk("a", 1, LogStream::Stdout, "o\r\nthree"),
        ] {
            got.extend(j.push(&c));
        }
        got.extend(j.finish());
        let seen: Vec<(String, String)> = got
            .iter()
            .map(|v| {
                (
                    v["stream"].as_str().unwrap_or("").to_string(),
                    v["line"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let want = [
            ("stdout", "one"),
            ("stderr", "oops"),
            ("stdout", "two"),
            ("stdout", "three"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(got[0]["step"], "a");
        assert_eq!(got[0]["attempt"], 1);
        assert!(got[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn raw_when_one_step_and_one_stream() {
        let mut p = LogPrinter::new(false, false);
        let text = render_all(
            &mut p,
            &[
                chunk("a", 1, LogStream::Stderr, "x"),
                chunk("a", 1, LogStream::Stderr, "y\n"),
            ],
        );
        assert_eq!(text, "xy\n");
    }
}
