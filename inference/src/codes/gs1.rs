//! GS1 element strings: the Application Identifier (AI) data a GS1
//! DataMatrix, GS1-128 or GS1 QR code carries, split into AI -> value.
//!
//! Owns the AI table (which AIs exist, how long their values are, which are
//! numeric or dates) and the checks: GTIN/SSCC check digits, YYMMDD dates
//! (day `00` is allowed: "end of the month"), numeric fields, the GS1
//! character set. Promise: [`parse`] never guesses. A string it cannot
//! split unambiguously (an unknown AI, a value too long or too short, a bad
//! check digit or date, a character outside the set) is an [`Gs1Error`]
//! that says where and why; it never panics and never allocates more than
//! the input's size.
//!
//! The input is the decoded text after the symbology's leading FNC1 (which
//! the decoder drops): elements one after another, a variable-length value
//! ended by the group separator (ASCII 29, what the decoder makes of an
//! inner FNC1) or by the end of the string.

use std::collections::BTreeMap;
use std::fmt;

/// The group separator a decoder gives for an inner FNC1.
pub const GS: char = '\u{1d}';

/// How an AI's value is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Digits only, exactly `n`.
    Fixed(usize),
    /// Digits only, exactly `n`, the last a GS1 mod-10 check digit.
    Check(usize),
    /// A date, YYMMDD, day `00` allowed ("end of the month": AIs 11-17).
    Date,
    /// A date, YYMMDD, a real day (AI 7006).
    ExactDate,
    /// One YYMMDD date or two (a range: AI 7007), real days.
    DateRange,
    /// Digits, 1 to `n`.
    Digits(usize),
    /// GS1 characters (set 82), 1 to `n`.
    Text(usize),
}

/// The AI at the start of `s` (2, 3 or 4 digits) and its kind, by the GS1
/// General Specifications' table (the AIs a product label carries; others
/// are refused as unknown rather than guessed).
fn ai_at(s: &str) -> Option<(&str, Kind)> {
    let d = |n: usize| s.get(..n).filter(|p| p.bytes().all(|b| b.is_ascii_digit()));
    let two = d(2)?;
    let kind2 = match two {
        "00" => Some(Kind::Check(18)),
        "01" | "02" => Some(Kind::Check(14)),
        "10" | "21" | "22" => Some(Kind::Text(20)),
        "11" | "12" | "13" | "15" | "16" | "17" => Some(Kind::Date),
        "20" => Some(Kind::Fixed(2)),
        "30" | "37" => Some(Kind::Digits(8)),
        "90" => Some(Kind::Text(30)),
        "91" | "92" | "93" | "94" | "95" | "96" | "97" | "98" | "99" => Some(Kind::Text(90)),
        _ => None,
    };
    if let Some(k) = kind2 {
        return Some((two, k));
    }
    let three = d(3)?;
    let kind3 = match three {
        "235" => Some(Kind::Text(28)),
        "240" | "241" | "250" | "251" | "400" | "401" | "403" => Some(Kind::Text(30)),
        "242" => Some(Kind::Digits(6)),
        "243" | "254" | "420" => Some(Kind::Text(20)),
        "253" => Some(Kind::Text(30)),
        "255" => Some(Kind::Text(25)),
        "402" => Some(Kind::Check(17)),
        "410" | "411" | "412" | "413" | "414" | "415" | "416" | "417" => Some(Kind::Check(13)),
        "422" | "424" | "426" => Some(Kind::Fixed(3)),
        _ => None,
    };
    if let Some(k) = kind3 {
        return Some((three, k));
    }
    let four = d(4)?;
    let p3 = &four[..3];
    let decimals = four.as_bytes()[3] <= b'5';
    let measure = matches!(p3.parse::<u32>(), Ok(310..=316 | 320..=337 | 340..=357 | 360..=369));
    let kind4 = match p3 {
        // Measures: 310n-316n, 320n-337n, 340n-357n, 360n-369n, six
        // digits, n (0-5) the decimal point's place.
        _ if measure && decimals => Some(Kind::Fixed(6)),
        // Amounts: 390n, 392n up to 15 digits.
        "390" | "392" if decimals => Some(Kind::Digits(15)),
        _ => match four {
            "7003" => Some(Kind::Fixed(10)),
            "7006" => Some(Kind::ExactDate),
            "7007" => Some(Kind::DateRange),
            "8003" => Some(Kind::Text(30)),
            "8004" => Some(Kind::Text(30)),
            "8020" => Some(Kind::Text(25)),
            _ => None,
        },
    };
    kind4.map(|k| (four, k))
}

/// Why an element string was not parsed, with the byte offset where it
/// went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gs1Error {
    /// Byte offset in the element string.
    pub at: usize,
    /// What is wrong there.
    pub reason: String,
}

impl fmt::Display for Gs1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed GS1 element string at byte {}: {}", self.at, self.reason)
    }
}

impl std::error::Error for Gs1Error {}

/// The GS1 mod-10 check digit is right (GTIN-8/12/13/14, SSCC, GSIN).
pub fn check_digit_ok(digits: &str) -> bool {
    let b = digits.as_bytes();
    if b.len() < 2 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let (body, last) = b.split_at(b.len() - 1);
    let sum: u32 =
        body.iter().rev().enumerate().map(|(i, c)| u32::from(c - b'0') * if i % 2 == 0 { 3 } else { 1 }).sum();
    (10 - sum % 10) % 10 == u32::from(last[0] - b'0')
}

/// A YYMMDD date is well formed: month 01-12, day 00 (end of month) to
/// the month's last day (29 February every year: the century is not
/// known here).
pub fn date_ok(d: &str) -> bool {
    if d.len() != 6 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let n = |r: std::ops::Range<usize>| d[r].parse::<u32>().unwrap_or(99);
    let (m, day) = (n(2..4), n(4..6));
    let last = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => 29,
        _ => return false,
    };
    day <= last
}

/// `ai` is an Application Identifier this parser knows (for checking a
/// `verify = "gs1:<AI>"` rule before any frame).
pub fn known_ai(ai: &str) -> bool {
    ai_at(ai).is_some_and(|(a, _)| a.len() == ai.len())
}

/// GS1 AI encodable character set 82 (printable ASCII but space, `"`, `#`,
/// `$`, `@`, `[`, `\`, `]`, `^`, `` ` ``, `{`, `|`, `}`, `~`).
fn set82(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '"' | '#' | '$' | '@' | '[' | '\\' | ']' | '^' | '`' | '{' | '|' | '}' | '~')
}

/// Splits an element string into AI -> value.
///
/// # Errors
/// [`Gs1Error`] for an empty string, an unknown AI, a value of the wrong
/// length or characters, a bad check digit or date, or an AI given twice
/// with different values.
pub fn parse(s: &str) -> Result<BTreeMap<String, String>, Gs1Error> {
    let err = |at: usize, reason: String| Gs1Error { at, reason };
    let mut out = BTreeMap::new();
    let mut at = 0;
    if s.is_empty() {
        return Err(err(0, "empty".into()));
    }
    while at < s.len() {
        let rest = &s[at..];
        // A separator right after a fixed-length value is allowed.
        if let Some(r) = rest.strip_prefix(GS) {
            if r.is_empty() {
                break;
            }
            if r.starts_with(GS) {
                return Err(err(at, "empty element".into()));
            }
            at += GS.len_utf8();
            continue;
        }
        let Some((ai, kind)) = ai_at(rest) else {
            let shown: String = rest.chars().take(4).filter(|c| *c != GS).collect();
            return Err(err(at, format!("unknown application identifier at {shown:?}")));
        };
        let start = at + ai.len();
        let value = element(&s[start..], ai, kind).map_err(|reason| err(start, reason))?;
        let next = start + value.len();
        if let Some(prev) = out.insert(ai.to_owned(), value.to_owned()) {
            if prev != value {
                return Err(err(at, format!("({ai}) given twice: {prev:?} and {value:?}")));
            }
        }
        at = next;
    }
    if out.is_empty() {
        return Err(err(0, "no element, only separators".into()));
    }
    Ok(out)
}

/// The value of element `ai` (of `kind`) at the start of `body`, checked.
fn element<'a>(body: &'a str, ai: &str, kind: Kind) -> Result<&'a str, String> {
    let to_gs = || &body[..body.find(GS).unwrap_or(body.len())];
    let value = match kind {
        Kind::Fixed(n) | Kind::Check(n) => body.get(..n).filter(|v| v.len() == n).ok_or_else(|| {
            format!("({ai}) needs {n} digits, {} left", body.chars().take_while(|c| *c != GS).count())
        })?,
        Kind::Date | Kind::ExactDate => body.get(..6).ok_or_else(|| format!("({ai}) needs a YYMMDD date"))?,
        Kind::DateRange => {
            let v = to_gs();
            if v.len() != 6 && v.len() != 12 {
                return Err(format!("({ai}) takes one or two YYMMDD dates, found {} characters", v.len()));
            }
            v
        }
        Kind::Digits(n) | Kind::Text(n) => {
            let v = to_gs();
            if v.is_empty() || v.chars().count() > n {
                return Err(format!("({ai}) takes 1 to {n} characters, found {}", v.chars().count()));
            }
            v
        }
    };
    if !matches!(kind, Kind::Text(_)) && !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("({ai}) is numeric, found {value:?}"));
    }
    if let Some(bad) = value.chars().find(|c| !set82(*c)) {
        return Err(format!("({ai}) has {bad:?}, not a GS1 character"));
    }
    let real_day = |d: &[u8]| std::str::from_utf8(d).is_ok_and(|d| date_ok(d) && !d.ends_with("00"));
    match kind {
        Kind::Check(_) if !check_digit_ok(value) => Err(format!("({ai}) {value}: wrong check digit")),
        Kind::Date if !date_ok(value) => Err(format!("({ai}) {value}: not a YYMMDD date")),
        Kind::ExactDate if !real_day(value.as_bytes()) => Err(format!("({ai}) {value}: not a YYMMDD date with a day")),
        Kind::DateRange if !value.as_bytes().chunks(6).all(real_day) => {
            Err(format!("({ai}) {value}: not one or two YYMMDD dates"))
        }
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<(String, String)> {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}")).into_iter().collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn a_udi_label_splits_into_its_identifiers() {
        let s = format!("0109506000134376172712311048-21K{GS}21SN-0042");
        assert_eq!(ok(&s), pairs(&[("01", "09506000134376"), ("10", "48-21K"), ("17", "271231"), ("21", "SN-0042")]));
    }

    #[test]
    fn fixed_length_values_need_no_separator_and_a_trailing_one_is_tolerated() {
        assert_eq!(ok("00106141412345678908"), pairs(&[("00", "106141412345678908")]));
        let s = format!("0109506000134376{GS}3103000150");
        assert_eq!(ok(&s), pairs(&[("01", "09506000134376"), ("3103", "000150")]));
        assert_eq!(ok(&format!("10ABC{GS}240X-1")), pairs(&[("10", "ABC"), ("240", "X-1")]));
        assert_eq!(ok("3712"), pairs(&[("37", "12")]));
        assert_eq!(ok("30123"), pairs(&[("30", "123")]));
        assert_eq!(ok("7007210101210131"), pairs(&[("7007", "210101210131")]));
        assert_eq!(ok(&format!("7007210101{GS}10A")), pairs(&[("10", "A"), ("7007", "210101")]));
        assert_eq!(ok("3925123"), pairs(&[("3925", "123")]));
    }

    #[test]
    fn the_known_identifiers_are_those_of_the_table() {
        for ai in ["00", "01", "10", "17", "21", "240", "3103", "3375", "3925", "7003", "7007", "8020", "91"] {
            assert!(known_ai(ai), "{ai}");
        }
        for ai in ["1", "19", "999", "421", "3106", "3175", "3385", "3926", "7777", "010", "10A"] {
            assert!(!known_ai(ai), "{ai}");
        }
    }

    #[test]
    fn day_00_means_the_end_of_the_month() {
        assert_eq!(ok("17270200"), pairs(&[("17", "270200")]));
        assert!(date_ok("270229"));
        assert!(!date_ok("271301") && !date_ok("270431") && !date_ok("27011"));
    }

    #[test]
    fn malformed_strings_are_reported_not_guessed() {
        let cases = [
            ("", "empty"),
            ("\u{1d}", "no element"),
            ("7006270200", "with a day"),
            ("70072101012101", "one or two"),
            ("7007210101210100", "one or two"),
            ("3106123456", "unknown application identifier"),
            ("3175123456", "unknown application identifier"),
            ("\u{1d}\u{1d}", "empty element"),
            ("0109506000134377", "check digit"),
            ("01095060001343", "needs 14 digits"),
            ("17271301", "not a YYMMDD"),
            ("172712", "needs a YYMMDD"),
            ("10", "1 to 20"),
            ("10ABCDEFGHIJKLMNOPQRSTU", "1 to 20"),
            ("30ABC", "numeric"),
            ("10A B", "not a GS1 character"),
            ("7777", "unknown application identifier"),
            ("X1", "unknown application identifier"),
            ("10A\u{1d}\u{1d}21B", "empty element"),
            ("10A\u{1d}10B", "given twice"),
        ];
        for (s, want) in cases {
            match parse(s) {
                Ok(v) => panic!("{s:?} parsed as {v:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{s:?}: {e} (wanted {want:?})"),
            }
        }
    }

    #[test]
    fn check_digits_of_the_gs1_examples() {
        assert!(check_digit_ok("09506000134376"));
        assert!(check_digit_ok("4006381333931"));
        assert!(check_digit_ok("106141412345678908"));
        assert!(!check_digit_ok("4006381333932"));
        assert!(!check_digit_ok("4"));
    }

    #[test]
    fn any_string_gives_a_result_or_an_error_never_a_panic() {
        // A seeded walk over strings built from the characters that matter
        // (digits, separators, letters, multi-byte): the fuzz target
        // (tests/fuzz, gs1) does the same at length.
        let alphabet: Vec<char> = "0123456789\u{1d}AZ-é ".chars().collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut parsed = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let s: String = (0..len).map(|i| alphabet[((x >> (i % 60)) as usize + i * 7) % alphabet.len()]).collect();
            if parse(&s).is_ok() {
                parsed += 1;
            }
        }
        assert!(parsed > 0, "no random string parsed: the walk is not reaching the grammar");
    }
}
