//! `orchctl logs`: writes captured output raw to stdout, with a `==> STEP (attempt N) <==`
//! header per attempt (when no STEP is given) and `--- stderr ---` markers when both
//! streams are shown and the stream changes.

use orch_proto::v1::{LogChunk, LogStream, StreamLogsRequest};

use crate::cli::LogsArgs;
use crate::client::Client;
use crate::error::Result;
use crate::output;

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
pub async fn run(args: LogsArgs, client: &mut Client) -> Result<()> {
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
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => output::write_bytes(&printer.render(&chunk))?,
            Ok(None) => return Ok(()),
            Err(status) => return Err(client.status_error(status)),
        }
    }
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
