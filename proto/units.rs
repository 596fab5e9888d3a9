//! Durations (`500ms`, `30s`, `10m`, `2h`, `30d`) and sizes (`512K`, `256M`, `2G`, powers of 1024, or bytes).

use std::fmt;

/// Longest duration accepted (100 years): the daemon adds durations to the time now in
/// `i64` milliseconds (timers, deadlines, retention), which longer ones would overflow.
pub const MAX_DURATION_MS: u64 = 100 * 31_557_600_000;

/// Parses a duration into milliseconds (at most `MAX_DURATION_MS`).
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration (expected e.g. 500ms, 30s, 10m, 2h)".into());
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("bad duration `{text}`: {e} (expected e.g. 500ms, 30s, 10m, 2h)"))?;
    u64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .ok_or_else(|| {
            format!(
                "duration `{text}` is longer than the limit of {}",
                format_duration_ms(MAX_DURATION_MS)
            )
        })
}

/// Parses a size into bytes: plain bytes, or a number with K, M, G or T (powers of 1024;
/// `KB`/`KiB`/`MiB` spellings are accepted too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.replace('_', "");
    if num.is_empty() {
        return Err(format!(
            "bad size `{text}` (expected e.g. 512K, 256M, 2G or bytes)"
        ));
    }
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "bad size `{text}`: unknown unit `{other}` (expected K, M, G or T)"
            ));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad size `{text}` (expected e.g. 512K, 256M, 2G or bytes)"))?;
    let bytes = value * (1u64 << shift) as f64;
    // At most `i64::MAX`, the largest integer TOML can write back (`--print-config`).
    if !bytes.is_finite() || bytes >= 2f64.powi(63) {
        return Err(format!("size `{text}` is too large"));
    }
    Ok(bytes as u64)
}

/// Formats milliseconds the way durations are written (`1500ms`, `30s`, `2m30s`).
pub fn format_duration_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms))
        .to_string()
        .replace(' ', "")
}

/// A byte count for people: `512B`, `1.5K`, `256M`, `2.0G`.
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i + 1 < UNITS.len() {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{}B", self.0)
        } else {
            write!(f, "{v:.1}{}", UNITS[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert!(parse_duration_ms("ten minutes").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("5").is_err());
    }

    /// Found with the daemon_config fuzz target (fuzz/corpus/daemon_config/huge-values.toml):
    /// `retention = "300000000y"` was accepted and overflowed `now - retention` in `i64`
    /// milliseconds, and `max_attempt_bytes = "16000000T"` was printed by `--print-config`
    /// as an integer TOML cannot read back.
    #[test]
    fn durations_and_sizes_have_limits() {
        assert_eq!(parse_duration_ms("100y"), Ok(MAX_DURATION_MS));
        let e = parse_duration_ms("300000000y").unwrap_err();
        assert!(e.contains("longer than the limit of 100years"), "{e}");
        assert!(parse_duration_ms("100y 1ms").is_err());
        assert_eq!(parse_size("8388607T"), Ok(8_388_607 << 40));
        assert!(parse_size("16000000T").unwrap_err().contains("too large"));
        assert!(parse_size("9223372036854775808").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("2X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn human_bytes() {
        assert_eq!(HumanBytes(512).to_string(), "512B");
        assert_eq!(HumanBytes(3 << 29).to_string(), "1.5G");
    }
}
