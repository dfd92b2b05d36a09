//! Duration and size strings of the config file (`"500ms"`, `"1m30s"`,
//! `"10MiB"`): parsed here once, so validation and messages agree on syntax.

use std::time::Duration;

/// What `parse_duration` accepts, repeated in every error so that the reader
/// can fix the value without opening the docs.
const DURATION_SYNTAX: &str =
    "write a whole number followed by a unit (ms, s, m, h), e.g. \"500ms\", \"2s\", \"1m30s\"";

/// What `parse_size` accepts, repeated in every error for the same reason.
const SIZE_SYNTAX: &str = "write a whole number of bytes, optionally followed by a unit \
     (B, kB, MB, GB, KiB, MiB, GiB), e.g. \"512B\", \"64KiB\", \"10MiB\"";

/// Parses a duration such as `"500ms"`, `"2s"`, `"1m"`, `"1h"`, `"1m30s"` or
/// `"0s"`.
///
/// Every number needs a unit (a bare `"5"` is ambiguous between seconds and
/// milliseconds, and that mistake costs an outage), units go from largest to
/// smallest, and negative or fractional values are rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("empty duration; {DURATION_SYNTAX}"));
    }
    if s.starts_with('-') {
        return Err(format!(
            "negative durations are not allowed; {DURATION_SYNTAX}"
        ));
    }
    let mut total = Duration::ZERO;
    // Rank of the previous unit, so "30s1m" and "1s1s" are refused.
    let mut previous_rank = usize::MAX;
    for (number, unit) in components(s, DURATION_SYNTAX)? {
        let (rank, unit_len) = duration_unit(unit)?;
        if rank >= previous_rank {
            return Err(format!(
                "units must go from largest to smallest, each once; {DURATION_SYNTAX}"
            ));
        }
        previous_rank = rank;
        let part = unit_len
            .checked_mul(u32::try_from(number).map_err(|_| too_large(DURATION_SYNTAX))?)
            .ok_or_else(|| too_large(DURATION_SYNTAX))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| too_large(DURATION_SYNTAX))?;
    }
    Ok(total)
}

/// Parses a size such as `"10MiB"`, `"64KiB"`, `"1GiB"`, `"512B"`, `"10MB"` or
/// `"1kB"`; a bare integer is a number of bytes.
///
/// `kB`/`KB`, `MB`, `GB` are decimal (1000), `KiB`, `MiB`, `GiB` binary (1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err(format!("empty size; {SIZE_SYNTAX}"));
    }
    if s.starts_with('-') {
        return Err(format!("negative sizes are not allowed; {SIZE_SYNTAX}"));
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("a size starts with a number; {SIZE_SYNTAX}"));
    }
    let number: u64 = digits.parse().map_err(|_| too_large(SIZE_SYNTAX))?;
    let multiplier = size_unit(unit)?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| too_large(SIZE_SYNTAX))
}

/// Formats a duration for people: `"500ms"`, `"2s"`, `"2.5s"`, `"1m30s"`.
/// Used in messages and in `stampgate check`; not meant to round-trip.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d < Duration::from_secs(1) {
        return format!("{}ms", trim_float(d.as_secs_f64() * 1000.0));
    }
    if d.subsec_nanos() != 0 {
        return format!("{}s", trim_float(d.as_secs_f64()));
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value != 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

/// Formats a byte count with the largest binary unit that divides it
/// exactly: `"10MiB"`, `"64KiB"`, `"1000B"`.
pub(crate) fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes != 0 && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Three decimals at most, without trailing zeros: 2.5, 0.125, 12.
fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Splits `"1m30s"` into `[(1, "m"), (30, "s")]`; a number without a unit
/// is an error.
fn components<'a>(s: &'a str, syntax: &str) -> Result<Vec<(u64, &'a str)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(format!("expected a number before {rest:?}; {syntax}"));
        }
        let (digits, tail) = rest.split_at(digits_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        if unit.is_empty() {
            return Err(format!("missing unit after {digits}; {syntax}"));
        }
        let number = digits.parse().map_err(|_| too_large(syntax))?;
        out.push((number, unit));
        rest = next;
    }
    Ok(out)
}

/// A duration unit's rank (larger unit, larger rank) and length.
fn duration_unit(unit: &str) -> Result<(usize, Duration), String> {
    match unit {
        "ms" => Ok((0, Duration::from_millis(1))),
        "s" => Ok((1, Duration::from_secs(1))),
        "m" => Ok((2, Duration::from_secs(60))),
        "h" => Ok((3, Duration::from_secs(3600))),
        other => Err(format!("unknown unit {other:?}; {DURATION_SYNTAX}")),
    }
}

/// Bytes per size unit; the empty unit is bytes.
fn size_unit(unit: &str) -> Result<u64, String> {
    match unit {
        "" | "B" => Ok(1),
        "kB" | "KB" => Ok(1000),
        "MB" => Ok(1000 * 1000),
        "GB" => Ok(1000 * 1000 * 1000),
        "KiB" => Ok(1 << 10),
        "MiB" => Ok(1 << 20),
        "GiB" => Ok(1 << 30),
        other => Err(format!("unknown unit {other:?}; {SIZE_SYNTAX}")),
    }
}

fn too_large(syntax: &str) -> String {
    format!("value is too large; {syntax}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn compound_durations_add_up() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
    }

    #[test]
    fn bad_durations_say_what_is_accepted() {
        for bad in [
            "", "5", "-1s", "1.5s", "2 s", "1d", "s", "30s1m", "1s1s", "2sec",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("ms, s, m, h"), "{bad}: {err}");
        }
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(
            parse_duration("1d")
                .unwrap_err()
                .contains("unknown unit \"d\"")
        );
    }

    #[test]
    fn huge_durations_are_errors_not_panics() {
        let err = parse_duration("99999999999999999999999h").unwrap_err();
        assert!(err.contains("too large"), "{err}");
        assert!(parse_duration("4294967296h").is_err());
    }

    #[test]
    fn sizes_binary_decimal_and_bare() {
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1kB"), Ok(1000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_say_what_is_accepted() {
        for bad in ["", "MiB", "-1MiB", "1.5MiB", "10 MiB", "10mb", "10XB"] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains("KiB, MiB, GiB"), "{bad}: {err}");
        }
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn formatting_reads_like_the_input() {
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_size(10 << 20), "10MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
    }
}
