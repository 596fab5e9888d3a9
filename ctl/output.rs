//! Writing to stdout (a closed pipe is a quiet success), plain tables, and the small
//! formatters the human views share.

use std::io::Write;

use comfy_table::{Table, presets};
use orch_proto::units::{HumanBytes, format_duration_ms};
use orch_proto::v1::Usage;

use crate::error::{CtlError, Result};

/// The output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    // Aligned columns and text for people.
    Table,
    // JSON for programs (JSON Lines for streams).
    Json,
}

/// Writes text to stdout and flushes it.
pub fn write_out(text: &str) -> Result<()> {
    write_bytes(text.as_bytes())
}

/// Writes raw bytes to stdout and flushes them (used for log data).
pub fn write_bytes(data: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(data)
        .and_then(|()| out.flush())
        .map_err(|e| CtlError::io("writing to stdout", e))
}

/// Writes one line (a newline is added).
pub fn line(text: &str) -> Result<()> {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    write_out(&s)
}

/// Writes a JSON value, pretty-printed, followed by a newline.
pub fn json_pretty(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CtlError::Failed(format!("cannot encode JSON: {e}")))?;
    line(&text)
}

/// Writes a JSON value on one line (JSON Lines).
pub fn json_line(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| CtlError::Failed(format!("cannot encode JSON: {e}")))?;
    line(&text)
}

/// Writes a line to stderr; errors writing to stderr are ignored (nowhere left to report them).
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// A borderless table of aligned columns (like `ps`), with an upper-case header.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    let mut text = String::new();
    for l in t.lines() {
        text.push_str(l.trim_end());
        text.push('\n');
    }
    text
}

/// `key  value` lines with the keys aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (k, v) in pairs {
        text.push_str(format!("{k:<width$}  {v}").trim_end());
        text.push('\n');
    }
    text
}

/// A cost in dollars: `$0.0123`, `$12.50`.
pub fn cost(usd: f64) -> String {
    if usd != 0.0 && usd.abs() < 1.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

/// Tokens and cost of a usage record: `1200 in / 340 out tokens, $0.0123`, with the
/// cache reads and writes when there are any.
pub fn usage(u: Option<&Usage>) -> String {
    let u = u.cloned().unwrap_or_default();
    format!(
        "{} in{} / {} out tokens, {}",
        u.input_tokens,
        cache(&u),
        u.output_tokens,
        cost(u.cost_usd)
    )
}

/// ` (+5000 cache read, +200 cache write)`, or nothing without cache tokens.
pub fn cache(u: &Usage) -> String {
    match (u.cache_read_tokens, u.cache_write_tokens) {
        (0, 0) => String::new(),
        (r, 0) => format!(" (+{r} cache read)"),
        (0, w) => format!(" (+{w} cache write)"),
        (r, w) => format!(" (+{r} cache read, +{w} cache write)"),
    }
}

/// Milliseconds as a duration for people (`1m30s`), or `-` when unset.
pub fn opt_duration(ms: Option<u64>) -> String {
    ms.map(format_duration_ms).unwrap_or_else(|| "-".into())
}

/// CPU time in milliseconds as seconds (`1.23s`).
pub fn cpu(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// A byte count for people, `-` for zero (not measured).
pub fn bytes(n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        HumanBytes(n).to_string()
    }
}

/// A timestamp for people: local-free RFC 3339 UTC at second precision, `-` when unset.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    match crate::json::ts_text(ts) {
        Some(_) => ts
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into()),
        None => "-".into(),
    }
}

/// `-` for an empty string.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Cuts a string to at most `max` characters, ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An argv for display, quoting arguments that contain spaces or are empty.
pub fn argv(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) || a.contains(['"', '\'']) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned_without_trailing_space() {
        let t = table(
            &["ID", "NAME"],
            vec![
                vec!["a".into(), "x".into()],
                vec!["long".into(), "y".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID    NAME");
        assert_eq!(lines[1], "a     x");
        assert_eq!(lines[2], "long  y");
    }

    #[test]
    fn small_formatters() {
        assert_eq!(cost(0.0), "$0.00");
        assert_eq!(cost(0.01234), "$0.0123");
        assert_eq!(cost(12.5), "$12.50");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(
            argv(&["bash".into(), "-c".into(), "echo hi".into()]),
            "bash -c \"echo hi\""
        );
        assert_eq!(cpu(1234), "1.23s");
    }
}
