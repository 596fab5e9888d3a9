//! Logging to the systemd journal in its native protocol, with structured fields.
//!
//! Under systemd (`JOURNAL_STREAM` set, the journal's socket answering) orchd sends each
//! event as one datagram to `/run/systemd/journal/socket`: `MESSAGE`, `PRIORITY` (from the
//! level: error 3, warn 4, info 6, debug and trace 7), `SYSLOG_IDENTIFIER=orchd`, `TARGET`
//! and every field of the event under its upper-case name, with the fields that name an
//! objective under `OBJECTIVE_ID`, so `journalctl -u orchd OBJECTIVE_ID=<id>` shows one
//! objective's daemon lines. (tracing-journald writes a field under its own name, so the
//! daemon's `objective` field could only ever be `OBJECTIVE`: the wire format is simple
//! enough to write here, which also lets the tests read it from a socket of their own.)

use std::fmt::{self, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A datagram larger than this is sent with its message cut (journald's own limit on a
/// datagram without a memfd is the socket's send buffer, some 200 KiB).
const MAX_MESSAGE: usize = 48 * 1024;

/// The journal field for a tracing field: `objective` → `OBJECTIVE_ID`, `message` →
/// `MESSAGE`, else the name in upper case with anything but letters, digits and `_` turned
/// into `_` (a field name may not start with `_`: those are journald's own).
pub fn field_name(name: &str) -> String {
    match name {
        "objective" | "objective_id" => return "OBJECTIVE_ID".into(),
        "message" => return "MESSAGE".into(),
        _ => {}
    }
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with('_') {
        out.remove(0);
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "F_");
    }
    // Fields orchd sets itself are not overridden by an event's own.
    if matches!(
        out.as_str(),
        "PRIORITY" | "SYSLOG_IDENTIFIER" | "TARGET" | "CODE_FILE" | "CODE_LINE"
    ) {
        out.insert_str(0, "F_");
    }
    out
}

/// syslog priority of a level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Appends `NAME=value` to a native-protocol payload (length-prefixed when the value holds
/// a newline).
fn put(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// The fields of one event, in order.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.rest
                .push((field_name(field.name()), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.rest
                .push((field_name(field.name()), format!("{value:?}")));
        }
    }
}

/// A tracing layer that writes each event to the journal.
pub struct JournalLayer {
    socket: UnixDatagram,
    target: PathBuf,
    identifier: String,
}

impl JournalLayer {
    /// A layer sending to journald's socket at `path`; fails when nothing listens there.
    pub fn connect(path: &Path, identifier: &str) -> std::io::Result<JournalLayer> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(JournalLayer {
            socket,
            target: path.to_path_buf(),
            identifier: identifier.to_string(),
        })
    }

    /// The native-protocol payload of one event.
    fn payload(&self, event: &Event<'_>, cut: bool) -> Vec<u8> {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        // The text log shows the fields after the message; so does the journal's MESSAGE.
        for (k, v) in &fields.rest {
            let _ = write!(message, " {}={v}", k.to_ascii_lowercase());
        }
        if cut && message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" [cut]");
        }
        let mut buf = Vec::with_capacity(256 + message.len());
        put(&mut buf, "MESSAGE", message.as_bytes());
        put(
            &mut buf,
            "PRIORITY",
            priority(meta.level()).to_string().as_bytes(),
        );
        put(&mut buf, "SYSLOG_IDENTIFIER", self.identifier.as_bytes());
        put(&mut buf, "TARGET", meta.target().as_bytes());
        if let Some(file) = meta.file() {
            put(&mut buf, "CODE_FILE", file.as_bytes());
        }
        if let Some(line) = meta.line() {
            put(&mut buf, "CODE_LINE", line.to_string().as_bytes());
        }
        for (k, v) in &fields.rest {
            let v = if cut && v.len() > MAX_MESSAGE {
                &v.as_bytes()[..MAX_MESSAGE]
            } else {
                v.as_bytes()
            };
            put(&mut buf, k, v);
        }
        buf
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let buf = self.payload(event, false);
        if self.socket.send(&buf).is_err() {
            // Too large for one datagram (or journald restarting): once more, cut down;
            // a line that still cannot go is lost, as it would be on a full pipe.
            let _ = self.socket.send(&self.payload(event, true));
        }
    }
}

impl fmt::Debug for JournalLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JournalLayer({})", self.target.display())
    }
}

/// Whether orchd should log to the journal: started by systemd with its stderr on the
/// journal (`JOURNAL_STREAM`), and the journal's socket present.
pub fn wanted() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
        && Path::new(JOURNAL_SOCKET).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn field_names_follow_journald_rules() {
        assert_eq!(field_name("objective"), "OBJECTIVE_ID");
        assert_eq!(field_name("objective_id"), "OBJECTIVE_ID");
        assert_eq!(field_name("attempt"), "ATTEMPT");
        assert_eq!(field_name("state_dir"), "STATE_DIR");
        assert_eq!(field_name("log.file"), "LOG_FILE");
        assert_eq!(field_name("_secret"), "SECRET");
        assert_eq!(field_name("9lives"), "F_9LIVES");
        assert_eq!(field_name("priority"), "F_PRIORITY");
        assert_eq!(field_name("target"), "F_TARGET");
    }

    #[test]
    fn priorities_match_levels() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    /// Parses a native-protocol payload into (name, value) pairs.
    fn parse(mut buf: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let nl = buf.iter().position(|&b| b == b'\n').expect("a newline");
            let line = &buf[..nl];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                out.push((
                    String::from_utf8_lossy(&line[..eq]).into_owned(),
                    line[eq + 1..].to_vec(),
                ));
                buf = &buf[nl + 1..];
            } else {
                let name = String::from_utf8_lossy(line).into_owned();
                let rest = &buf[nl + 1..];
                let mut len = [0u8; 8];
                len.copy_from_slice(&rest[..8]);
                let len = u64::from_le_bytes(len) as usize;
                out.push((name, rest[8..8 + len].to_vec()));
                assert_eq!(rest[8 + len], b'\n');
                buf = &rest[9 + len..];
            }
        }
        out
    }

    fn get<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).expect("utf-8"))
    }

    #[test]
    fn events_reach_the_socket_as_structured_fields() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal.sock");
        let journal = UnixDatagram::bind(&path).expect("bind a fake journal");
        let layer = JournalLayer::connect(&path, "orchd").expect("connect");
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(objective = "01ABC", attempt = 2, "budget alert");
            tracing::error!(error = "two\nlines", "store failed");
        });
        let mut buf = vec![0u8; 65536];
        let n = journal.recv(&mut buf).expect("first datagram");
        let first = parse(&buf[..n]);
        assert_eq!(get(&first, "OBJECTIVE_ID"), Some("01ABC"));
        assert_eq!(get(&first, "ATTEMPT"), Some("2"));
        assert_eq!(get(&first, "PRIORITY"), Some("4"));
        assert_eq!(get(&first, "SYSLOG_IDENTIFIER"), Some("orchd"));
        assert_eq!(
            get(&first, "MESSAGE"),
            Some("budget alert objective_id=01ABC attempt=2")
        );
        assert!(first.iter().all(|(k, _)| !k.starts_with("F_")), "{first:?}");
        let n = journal.recv(&mut buf).expect("second datagram");
        let second = parse(&buf[..n]);
        assert_eq!(get(&second, "PRIORITY"), Some("3"));
        assert_eq!(get(&second, "ERROR"), Some("two\nlines"));
    }

    #[test]
    fn a_huge_event_is_sent_cut_rather_than_lost() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal.sock");
        let journal = UnixDatagram::bind(&path).expect("bind a fake journal");
        let layer = JournalLayer::connect(&path, "orchd").expect("connect");
        let huge = "x".repeat(4 << 20);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info!(detail = %huge, "big");
        });
        let mut buf = vec![0u8; 8 << 20];
        let n = journal.recv(&mut buf).expect("a datagram");
        let fields = parse(&buf[..n]);
        let message = get(&fields, "MESSAGE").expect("MESSAGE");
        assert!(message.starts_with("big detail=xxx"), "{}", &message[..40]);
        assert!(message.ends_with(" [cut]"));
        assert_eq!(get(&fields, "DETAIL").map(str::len), Some(MAX_MESSAGE));
    }

    #[test]
    fn connecting_where_nothing_listens_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(JournalLayer::connect(&dir.path().join("none.sock"), "orchd").is_err());
    }
}
