//! RFC 3339 timestamps with nanoseconds, in UTC, without a date-time dependency.

/// `2014-03-04T17:10:09.123456789Z` for nanoseconds since the Unix epoch.
pub fn rfc3339_ns(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let nanos = ts_ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Nanoseconds since the epoch of an RFC 3339 time (`2026-12-06T14:02:00Z`,
/// `2026-12-06T15:02:00.5+01:00`; a space or `t` for the `T`, `z` for the `Z`).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || d > 31 || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let digits = &s[start..at];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        nanos = digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32);
    }
    let offset_s: i64 = match &b[at..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hh = num(at + 1..at + 3)?;
            let mm = num(at + 4..at + 6)?;
            let _ = (h1, h2, m1, m2);
            let v = i64::from(hh * 3600 + mm * 60);
            if *sign == b'+' { v } else { -v }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec.min(59)) - offset_s;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(nanos)
}

/// A point in time as the query commands take it: RFC 3339 (`2026-12-06T14:02:00Z`), relative
/// to `now_ns` (`-15m`, `-1h30m`: before now; `now`), or seconds since the epoch with up to
/// nine decimals (`1765029720.5`). Nanoseconds since the epoch.
pub fn parse_time(s: &str, now_ns: u64) -> Result<u64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ns);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel)
            .map_err(|e| format!("{s:?}: not a duration before now ({e})"))?;
        return Ok(now_ns.saturating_sub(d.as_nanos().min(u128::from(u64::MAX)) as u64));
    }
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if frac.len() > 9 || frac.contains('.') || whole.is_empty() {
            return Err(format!(
                "{s:?}: seconds since the epoch take at most nine decimals"
            ));
        }
        let secs: u64 = whole
            .parse()
            .map_err(|_| format!("{s:?}: not a number of seconds"))?;
        let nanos = if frac.is_empty() {
            0
        } else {
            frac.parse::<u64>()
                .map_err(|_| format!("{s:?}: not a number"))?
                * 10u64.pow(9 - frac.len() as u32)
        };
        return secs
            .checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(|| format!("{s:?}: too far in the future"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("{s:?}: give RFC 3339 (2026-12-06T14:02:00Z), a time before now (-15m) or seconds since the epoch (1765029720.5)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_the_query_takes_them() {
        let now = 1_765_029_720_500_000_000;
        assert_eq!(parse_time("1765029720.5", 0), Ok(now));
        assert_eq!(parse_time("1765029720", 0), Ok(now - 500_000_000));
        assert_eq!(parse_time("-15m", now), Ok(now - 900_000_000_000));
        assert_eq!(parse_time("-1h 30m", now), Ok(now - 5_400_000_000_000));
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("2025-12-06T14:02:00.5Z", 0), Ok(now));
        assert_eq!(
            parse_time("2025-12-06T15:02:00.500000000+01:00", 0),
            Ok(now)
        );
        assert_eq!(
            parse_time("2025-12-06 14:02:00.000000001Z", 0),
            Ok(now - 499_999_999)
        );
        for bad in [
            "",
            "yesterday",
            "-5",
            "1.2.3",
            "2025-13-06T14:02:00Z",
            "2025-12-06T14:02:00",
            "1.0123456789",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
        for ns in [0, 951_782_400_000_000_000, 1_700_000_000_123_456_789, now] {
            assert_eq!(parse_rfc3339(&rfc3339_ns(ns)), Some(ns));
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339_ns(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
