//! Go's text formatting, as etcdctl's output depends on it: `%q` quoting
//! and unquoting, `time.Duration.String`, `strconv.ParseInt` and its error
//! text, and go-humanize's SI byte sizes.
//!
//! Pure functions only; nothing here talks to a server or writes output.

use std::time::Duration;

/// Go's `strconv.Quote`: a double-quoted string with Go escapes; bytes
/// that are not UTF-8 come out as `\xNN`.
pub fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c if c.is_control() => {
                    if (c as u32) < 0x10000 {
                        out.push_str(&format!("\\u{:04x}", c as u32));
                    } else {
                        out.push_str(&format!("\\U{:08x}", c as u32));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.Unquote` for a double-quoted or back-quoted string.
pub fn unquote(s: &str) -> Result<Vec<u8>, String> {
    let err = || "invalid syntax".to_string();
    if s.len() >= 2 && s.starts_with('`') && s.ends_with('`') {
        return Ok(s.as_bytes()[1..s.len() - 1].to_vec());
    }
    if s.len() < 2 || !s.starts_with('"') || !s.ends_with('"') {
        return Err(err());
    }
    let inner = &s[1..s.len() - 1];
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\n' {
            return Err(err());
        }
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let esc = chars.next().ok_or_else(err)?;
        let simple = match esc {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let take = |chars: &mut std::str::Chars<'_>, n: usize, radix: u32| -> Result<u32, String> {
            let digits: String = chars.take(n).collect();
            if digits.len() != n {
                return Err(err());
            }
            u32::from_str_radix(&digits, radix).map_err(|_| err())
        };
        match esc {
            'x' => out.push(u8::try_from(take(&mut chars, 2, 16)?).map_err(|_| err())?),
            '0'..='7' => {
                let rest = take(&mut chars, 2, 8)?;
                let v = (esc as u32 - '0' as u32) * 64 + rest;
                out.push(u8::try_from(v).map_err(|_| err())?);
            }
            'u' | 'U' => {
                let n = if esc == 'u' { 4 } else { 8 };
                let c = char::from_u32(take(&mut chars, n, 16)?).ok_or_else(err)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return Err(err()),
        }
    }
    // Go strings are bytes: a `\xff` escape yields a byte, not a character.
    Ok(out)
}

/// Go's `strconv.ParseInt(s, base, 64)`, with Go's error text.
pub fn parse_int(s: &str, base: u32) -> Result<i64, String> {
    let syntax = || format!("strconv.ParseInt: parsing {}: invalid syntax", quote(s.as_bytes()));
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(base)) {
        return Err(syntax());
    }
    i64::from_str_radix(s, base)
        .map_err(|_| format!("strconv.ParseInt: parsing {}: value out of range", quote(s.as_bytes())))
}

/// Go's `strconv.ParseUint(s, base, 64)`, with Go's error text: no sign
/// is allowed, not even `+`.
pub fn parse_uint(s: &str, base: u32) -> Result<u64, String> {
    if s.is_empty() || !s.chars().all(|c| c.is_digit(base)) {
        return Err(format!("strconv.ParseUint: parsing {}: invalid syntax", quote(s.as_bytes())));
    }
    u64::from_str_radix(s, base)
        .map_err(|_| format!("strconv.ParseUint: parsing {}: value out of range", quote(s.as_bytes())))
}

/// `parse_int(s, 10)` as a clap value parser, for etcdctl's int64 flags.
pub fn parse_int10(s: &str) -> Result<i64, String> {
    parse_int(s, 10)
}

/// Go's `time.ParseDuration` (`2s`, `500ms`, `1m30s`, `1.5h`); negative
/// durations count as zero, which is what a timeout makes of them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {}", quote(s.as_bytes()));
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {}", quote(s.as_bytes()))),
            unit => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit.as_bytes()),
                    quote(s.as_bytes())
                ));
            }
        };
        total += value * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    if negative {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Go's `time.Duration.String`, e.g. `1.394781ms`, `5.000674578s`, `1m2s`.
pub fn duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", fraction(nanos, 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", fraction(nanos, 1_000_000, 6));
    }
    let secs_part = nanos % 60_000_000_000;
    let minutes = nanos / 60_000_000_000;
    let seconds = format!("{}s", fraction(secs_part, 1_000_000_000, 9));
    if minutes == 0 {
        return seconds;
    }
    let (hours, minutes) = (minutes / 60, minutes % 60);
    if hours == 0 {
        format!("{minutes}m{seconds}")
    } else {
        format!("{hours}h{minutes}m{seconds}")
    }
}

/// `value / unit` with up to `digits` decimals, trailing zeros dropped.
fn fraction(value: u128, unit: u128, digits: usize) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// go-humanize's `Bytes`: SI units, e.g. `33 kB` for 32768.
pub fn humanize_bytes(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 10 {
        return format!("{size} B");
    }
    let sizef = size as f64;
    let exp = (sizef.ln() / 1000f64.ln()).floor();
    let unit = UNITS[(exp as usize).min(UNITS.len() - 1)];
    let val = (sizef / 1000f64.powf(exp) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {unit}")
    } else {
        format!("{val:.0} {unit}")
    }
}

/// etcdctl's `--hex` form of bytes: every byte as `\xNN`.
pub fn hex_escaped(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|b| format!("\\x{b:02x}").into_bytes()).collect()
}

/// Go's `%016x` of a lease id (an int64): a negative id keeps its sign in
/// front of the zero padding, within the same width.
pub fn lease_id(id: i64) -> String {
    if id < 0 {
        format!("-{:015x}", id.unsigned_abs())
    } else {
        format!("{id:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_like_go() {
        assert_eq!(quote(b"a\"b\\c\n\x01\xff"), r#""a\"b\\c\n\x01\xff""#);
        assert_eq!(quote("héllo".as_bytes()), "\"héllo\"");
    }

    #[test]
    fn unquote_reads_go_escapes() {
        assert_eq!(unquote(r#""a\"b\x41\101\u00e9\xff""#), Ok(b"a\"bAA\xc3\xa9\xff".to_vec()));
        assert_eq!(unquote("`raw\\n`"), Ok(b"raw\\n".to_vec()));
        assert!(unquote(r#""bad\q""#).is_err());
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(duration(Duration::from_nanos(1_394_781)), "1.394781ms");
        assert_eq!(duration(Duration::from_nanos(943_203)), "943.203µs");
        assert_eq!(duration(Duration::from_nanos(5_000_674_578)), "5.000674578s");
        assert_eq!(duration(Duration::from_secs(62)), "1m2s");
        assert_eq!(duration(Duration::from_nanos(500)), "500ns");
    }

    #[test]
    fn durations_parse_as_go_does() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("x"), Err(r#"time: invalid duration "x""#.to_string()));
        assert_eq!(parse_duration("5"), Err(r#"time: missing unit in duration "5""#.to_string()));
    }

    #[test]
    fn bytes_humanize_as_go_humanize() {
        assert_eq!(humanize_bytes(32768), "33 kB");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(5), "5 B");
        assert_eq!(humanize_bytes(1500), "1.5 kB");
        assert_eq!(humanize_bytes(25_165_824), "25 MB");
    }

    #[test]
    fn lease_ids_print_as_percent_016x() {
        assert_eq!(lease_id(0x1234), "0000000000001234");
        assert_eq!(lease_id(0x346aa1fdec46b405), "346aa1fdec46b405");
        assert_eq!(lease_id(-1), "-000000000000001");
    }

    #[test]
    fn parse_uint_errors_match_strconv() {
        assert_eq!(parse_uint("bdae9bbc11dd390d", 16), Ok(0xbdae9bbc11dd390d));
        assert_eq!(
            parse_uint("+1", 16),
            Err(r#"strconv.ParseUint: parsing "+1": invalid syntax"#.to_string())
        );
        assert_eq!(
            parse_uint("ffffffffffffffffff", 16),
            Err(r#"strconv.ParseUint: parsing "ffffffffffffffffff": value out of range"#.to_string())
        );
    }

    #[test]
    fn parse_int_errors_match_strconv() {
        assert_eq!(parse_int("ff", 16), Ok(255));
        assert_eq!(
            parse_int("abc", 10),
            Err(r#"strconv.ParseInt: parsing "abc": invalid syntax"#.to_string())
        );
    }
}
