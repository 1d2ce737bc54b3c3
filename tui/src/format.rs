//! How numbers, rates, sizes, ages and times are written on screen. Pure functions.

/// A count: exact below 100 000 (so small numbers read as they are), then `123.4k`, `12.3M`.
pub fn count(n: u64) -> String {
    if n < 100_000 {
        n.to_string()
    } else {
        si(n as f64, "")
    }
}

/// A rate in packets per second: `0`, `12`, `1.2k`, `3.4M`.
pub fn pps(x: f64) -> String {
    if x < 0.5 {
        "0".into()
    } else if x < 1000.0 {
        format!("{x:.0}")
    } else {
        si(x, "")
    }
}

/// A rate in bits per second: `0`, `512b`, `9.6M`, `1.2G` (suffix `b/s` left to the header).
pub fn bps(x: f64) -> String {
    if x < 0.5 {
        "0".into()
    } else if x < 1000.0 {
        format!("{x:.0}")
    } else {
        si(x, "")
    }
}

/// A size in bytes: `512B`, `1.2KiB`, `3.4MiB`, `5.6GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if x < 10.0 {
        format!("{x:.2}{}", UNITS[unit])
    } else if x < 100.0 {
        format!("{x:.1}{}", UNITS[unit])
    } else {
        format!("{x:.0}{}", UNITS[unit])
    }
}

/// `x` with a decimal SI prefix and three significant digits: `1.23k`, `45.6M`, `789G`.
fn si(x: f64, unit: &str) -> String {
    const PREFIXES: [&str; 5] = ["k", "M", "G", "T", "P"];
    let mut v = x / 1000.0;
    let mut p = 0;
    while v >= 999.95 && p + 1 < PREFIXES.len() {
        v /= 1000.0;
        p += 1;
    }
    if v < 9.995 {
        format!("{v:.2}{}{unit}", PREFIXES[p])
    } else if v < 99.95 {
        format!("{v:.1}{}{unit}", PREFIXES[p])
    } else {
        format!("{v:.0}{}{unit}", PREFIXES[p])
    }
}

/// A duration in whole seconds, two units at most: `42s`, `3m05s`, `2h07m`, `3d04h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// A percentage of `part` in `whole`, `-` when the whole is zero.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time as the collector writes it
/// (`2023-11-14T22:13:20.123456789Z`; any number of fraction digits, or none). `None` for
/// anything else: it came over the network.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hh, mm, ss) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut frac = 0.0;
    let rest = &s[19..s.len() - 1];
    if let Some(f) = rest.strip_prefix('.') {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        frac = f.parse::<u64>().ok()? as f64 / 10f64.powi(f.len() as i32);
    } else if !rest.is_empty() {
        return None;
    }
    let days = days_from_civil(y, m, d);
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_when_small() {
        assert_eq!(count(0), "0");
        assert_eq!(count(99_999), "99999");
        assert_eq!(count(100_000), "100k");
        assert_eq!(count(1_234_567), "1.23M");
        assert_eq!(count(45_600_000_000), "45.6G");
    }

    #[test]
    fn rates() {
        assert_eq!(pps(0.2), "0");
        assert_eq!(pps(12.4), "12");
        assert_eq!(pps(1234.0), "1.23k");
        assert_eq!(pps(999_999.0), "1.00M");
        assert_eq!(bps(9_600_000.0), "9.60M");
        assert_eq!(bps(123_456_789_012.0), "123G");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1536), "1.50KiB");
        assert_eq!(bytes(50 << 20), "50.0MiB");
        assert_eq!(bytes(300 << 30), "300GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(-1.0), "0s");
        assert_eq!(duration(59.9), "59s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(7620.0), "2h07m");
        assert_eq!(duration(273_600.0), "3d04h");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(1, 3), "33%");
        assert_eq!(percent(0, 0), "-");
    }

    #[test]
    fn rfc3339_round_trips_the_collector_format() {
        // 1_700_000_000.123456789 s is what the collector's own formatter tests against.
        let t = parse_rfc3339("2023-11-14T22:13:20.123456789Z").unwrap();
        assert!((t - 1_700_000_000.123_457).abs() < 1e-6, "{t}");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.5Z"), Some(951_868_800.5));
    }

    #[test]
    fn rfc3339_refuses_garbage() {
        for s in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+01:00",
            "2023-11-14T22:13:2xZ",
            "2023-11-14T22:13:20.1234567890Z",
            "२०२३-11-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s:?}");
        }
    }
}
