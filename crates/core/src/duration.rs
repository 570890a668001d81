//! Human durations (`"500ms"`, `"1s"`, `"1m30s"`, `"10m"`, `"2h"`).
//!
//! The config contract says durations are strings with units; a bare number
//! is refused because `timeout = 30` is ambiguous (seconds? milliseconds?).

use std::time::Duration;

/// Parses a duration string. Errors are phrased to follow "key: " in a message.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. \"500ms\", \"5s\" or \"10m\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "'{s}' is not a duration; write a number with a unit, e.g. \"5s\""
            ));
        }
        let num: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("'{s}' has a malformed number"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => num / 1000.0,
            "s" => num,
            "m" => num * 60.0,
            "h" => num * 3600.0,
            "" => {
                return Err(format!(
                    "'{s}' has no unit; durations need one of ms, s, m, h (e.g. \"{num}s\")"
                ))
            }
            other => {
                return Err(format!(
                    "'{s}' has unknown unit '{other}'; use ms, s, m or h"
                ))
            }
        };
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// Formats a duration the way `parse` reads it back (used in messages and docs).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn refuses_ambiguous_or_malformed() {
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("s").is_err());
        assert!(parse("3d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn format_round_trips() {
        for s in ["500ms", "1s", "10m", "2h", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
