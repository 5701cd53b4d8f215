//! Human-friendly sizes (`"2GiB"`, `"900KiB"`, `"16MB"`) and durations
//! (`"30s"`, `"500ms"`, `"7d"`) used in the configuration file.
//!
//! Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal units (kB,
//! MB, GB, TB) powers of 1000; a bare integer is bytes. Durations need a
//! unit so that `"30"` is never silently read as 30 ms or 30 s.

use std::time::Duration;

/// Parses a size such as `"2GiB"`, `"900 KiB"`, `"16MB"` or `1048576`.
///
/// # Errors
/// A sentence saying what is wrong and giving examples.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (examples: \"512MiB\", \"2GiB\", \"900KiB\")"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?} has an unknown size unit {unit:?} (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
            ))
        }
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: \"512MiB\", \"2GiB\")"))?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration such as `"30s"`, `"500ms"`, `"5m"`, `"1h"`, `"7d"`.
///
/// # Errors
/// A sentence saying what is wrong and giving examples.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs: f64 = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "" => return Err(format!("{s:?} needs a unit (examples: \"500ms\", \"30s\", \"5m\", \"1h\", \"7d\")")),
        u => return Err(format!("{s:?} has an unknown duration unit {u:?} (use ms, s, m, h or d)")),
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (examples: \"500ms\", \"30s\", \"7d\")"))?;
    Duration::try_from_secs_f64(v * secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Formats bytes with a binary unit, for messages and stats.
pub fn format_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("900 KiB"), Ok(900 * 1024));
        assert_eq!(parse_size("16MB"), Ok(16_000_000));
        assert_eq!(parse_size("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("2 gigs").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(2 << 30), "2.0 GiB");
    }
}
