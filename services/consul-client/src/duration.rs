//! Go's `time.Duration` text format (`"10s"`, `"1m30s"`, `"250ms"`), used by Consul for
//! intervals, timeouts and the `wait` query parameter: `time.ParseDuration` and
//! `Duration.String()` to the letter (error messages included), so a registry speaking
//! Consul's API can answer exactly what Consul answers.

use std::time::Duration;

/// Nanoseconds, signed like Go's `time.Duration`.
pub type Nanos = i64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;

/// A non-negative Go duration (surrounding white space ignored): what Consul's intervals,
/// timeouts and `wait` hold.
pub fn parse(text: &str) -> Result<Duration, String> {
    let nanos = parse_nanos(text.trim())?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| format!("negative duration {text:?}"))
}

/// Formats a duration as Go does (`Duration.String()`), so Go (and Consul) parse it back
/// exactly. Beyond Go's range (292 years) it says Go's longest.
pub fn format(duration: Duration) -> String {
    format_nanos(Nanos::try_from(duration.as_nanos()).unwrap_or(Nanos::MAX))
}

/// `time.ParseDuration`, with its error messages (`time: invalid duration "x"`).
pub fn parse_nanos(text: &str) -> Result<Nanos, String> {
    let quoted = format!("{text:?}");
    let invalid = || format!("time: invalid duration {quoted}");
    let mut rest = text;
    let negative = rest.starts_with('-');
    if let Some(stripped) = rest.strip_prefix(['-', '+']) {
        rest = stripped;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let integer_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let integer = &rest[..integer_len];
        rest = &rest[integer_len..];
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let fraction_len = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            fraction = &after_dot[..fraction_len];
            rest = &after_dot[fraction_len..];
        }
        if integer.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let per_unit: u128 = match unit {
            "" => return Err(format!("time: missing unit in duration {quoted}")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("time: unknown unit {other:?} in duration {quoted}")),
        };
        let whole: u128 = if integer.is_empty() {
            0
        } else {
            integer.parse().map_err(|_| invalid())?
        };
        let mut value = whole.checked_mul(per_unit).ok_or_else(invalid)?;
        let mut scale = per_unit;
        for digit in fraction.bytes() {
            scale /= 10;
            value += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
    }
    let total = i64::try_from(total).map_err(|_| invalid())?;
    Ok(if negative { -total } else { total })
}

/// `Duration.String()`: `"0s"`, `"1.5s"`, `"1m0s"`, `"250ms"`, `"1h0m0s"`.
pub fn format_nanos(nanos: Nanos) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = u128::from(nanos.unsigned_abs());
    let body = if u < 1_000_000_000 {
        let (unit, divisor) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        format!("{}{unit}", decimal(u, divisor))
    } else {
        let hours = u / 3_600_000_000_000;
        let minutes = (u / 60_000_000_000) % 60;
        let seconds = format!("{}s", decimal(u % 60_000_000_000, 1_000_000_000));
        if hours > 0 {
            format!("{hours}h{minutes}m{seconds}")
        } else if minutes > 0 {
            format!("{minutes}m{seconds}")
        } else {
            seconds
        }
    };
    format!("{sign}{body}")
}

/// `value / divisor` as a decimal without trailing zeros.
fn decimal(value: u128, divisor: u128) -> String {
    let whole = value / divisor;
    let fraction = value % divisor;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = divisor.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// `#[serde(with = "duration::option")]` for `Option<Duration>` fields in Go format.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        // Consul accepts both "10s" and a number of nanoseconds.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Str(String),
            Nanos(u64),
        }
        match Option::<Text>::deserialize(d)? {
            None => Ok(None),
            Some(Text::Str(s)) if s.is_empty() => Ok(None),
            Some(Text::Str(s)) => super::parse(&s).map(Some).map_err(D::Error::custom),
            Some(Text::Nanos(n)) => Ok(Some(Duration::from_nanos(n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("3us").unwrap(), Duration::from_micros(3));
        assert_eq!(parse(" 10s\n").unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "10", "s", "-1s", "10x", "1..2s", ".s", "1s5"] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_millis(1500),
            Duration::from_nanos(7),
            Duration::from_secs(3 * 3600 + 7),
            Duration::from_nanos(1_000_000_001),
        ] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }

    #[test]
    fn nanos_parse_like_go() {
        assert_eq!(parse_nanos("10s"), Ok(10 * SECOND));
        assert_eq!(parse_nanos("1m30s"), Ok(90 * SECOND));
        assert_eq!(parse_nanos("1.5h"), Ok(5400 * SECOND));
        assert_eq!(parse_nanos("250ms"), Ok(250_000_000));
        assert_eq!(parse_nanos("-1s"), Ok(-SECOND));
        assert_eq!(parse_nanos("+2s"), Ok(2 * SECOND));
        assert_eq!(parse_nanos(".5s"), Ok(SECOND / 2));
        assert_eq!(parse_nanos("1.000000001s"), Ok(SECOND + 1));
        assert_eq!(parse_nanos("0"), Ok(0));
        assert_eq!(
            parse_nanos("10"),
            Err(r#"time: missing unit in duration "10""#.into())
        );
        assert_eq!(
            parse_nanos("1x"),
            Err(r#"time: unknown unit "x" in duration "1x""#.into())
        );
        assert_eq!(parse_nanos(""), Err(r#"time: invalid duration """#.into()));
        assert_eq!(
            parse_nanos("9999999999h"),
            Err(r#"time: invalid duration "9999999999h""#.into()),
            "past Go's range"
        );
        assert!(parse_nanos("s").is_err());
    }

    #[test]
    fn nanos_format_like_go() {
        assert_eq!(format_nanos(0), "0s");
        assert_eq!(format_nanos(10 * SECOND), "10s");
        assert_eq!(format_nanos(60 * SECOND), "1m0s");
        assert_eq!(format_nanos(3600 * SECOND), "1h0m0s");
        assert_eq!(format_nanos(SECOND * 3 / 2), "1.5s");
        assert_eq!(format_nanos(250_000_000), "250ms");
        assert_eq!(format_nanos(1_500), "1.5µs");
        assert_eq!(format_nanos(7), "7ns");
        assert_eq!(format_nanos(-SECOND), "-1s");
    }
}
