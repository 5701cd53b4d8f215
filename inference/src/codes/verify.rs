//! The cross-check: a printed label field against the value a code on the
//! same label carries (`verify = "gs1:10"` on a field).
//!
//! Owns the rule syntax ([`Rule::parse`]) and the comparison ([`check`]):
//! text values agree when equal once white space is dropped; date AIs
//! (YYMMDD) agree with a printed date in the usual forms (`2027-12-31`,
//! `2027/12/31`, `31.12.2027`, `2027-12`, `12/2027`, `271231`), a printed
//! month without a day agreeing with any day of it, a code's day `00`
//! ("end of the month") with the month's last day. Promise: a field whose
//! code is absent is unverified, never a mismatch; a value that cannot be
//! compared (a printed date in no known form) is a mismatch that shows
//! both values, not a silent pass.

use super::Code;

/// What a field is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The value of a GS1 Application Identifier in any code of the frame.
    Gs1(String),
}

impl Rule {
    /// Parses `gs1:<AI>`, an AI [`super::gs1`] knows.
    ///
    /// # Errors
    /// A message saying what is accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("gs1", ai)) if super::gs1::known_ai(ai) => Ok(Self::Gs1(ai.to_owned())),
            _ => Err(format!(
                "verify = {s:?}: expected \"gs1:<AI>\", a GS1 application identifier the reader knows, \
                 for example \"gs1:10\" (lot), \"gs1:17\" (expiry), \"gs1:21\" (serial)"
            )),
        }
    }
}

/// The result of checking one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A code carries the value and the print agrees.
    Agree,
    /// The codes carry the value and the print differs: the code's value.
    Differ(String),
    /// No code on the frame carries the value.
    Unverified,
}

/// Checks `printed` against every code that carries the rule's value.
pub fn check(printed: &str, rule: &Rule, codes: &[Code]) -> Verdict {
    let Rule::Gs1(ai) = rule;
    let values: Vec<&str> = codes.iter().filter_map(|c| c.gs1.as_ref()?.get(ai.as_str()).map(String::as_str)).collect();
    let Some(first) = values.first() else {
        return Verdict::Unverified;
    };
    let date = matches!(ai.as_str(), "11" | "12" | "13" | "15" | "16" | "17" | "7006" | "7007");
    let agree = |v: &&str| if date { date_agrees(printed, v) } else { squash(printed) == squash(v) };
    if values.iter().any(agree) {
        Verdict::Agree
    } else {
        Verdict::Differ((*first).to_owned())
    }
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// A printed date: year, month, and the day if printed. Year first with
/// any separator; day first only with dots (`31.12.2027`): `05/12/2027`
/// is the 5th of December in Europe and the 12th of May in the US, so it
/// is not read as a date (nor is anything with letters, such as a month
/// name): the field then shows as a mismatch with both values.
fn printed_date(s: &str) -> Option<(u32, u32, Option<u32>)> {
    let s = s.trim();
    if s.chars().any(|c| !(c.is_ascii_digit() || matches!(c, '-' | '/' | '.' | ' '))) {
        return None;
    }
    let groups: Vec<&str> = s.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).collect();
    let n = |g: &str| g.parse::<u32>().ok();
    let dotted = s.contains('.') && !s.contains(['/', '-']);
    let (y, m, d) = match groups.as_slice() {
        [y, m, d] if y.len() == 4 => (n(y)?, n(m)?, Some(n(d)?)),
        [d, m, y] if y.len() == 4 && dotted => (n(y)?, n(m)?, Some(n(d)?)),
        [y, m] if y.len() == 4 => (n(y)?, n(m)?, None),
        [m, y] if y.len() == 4 => (n(y)?, n(m)?, None),
        [ymd] if ymd.len() == 8 => (n(&ymd[..4])?, n(&ymd[4..6])?, Some(n(&ymd[6..])?)),
        [ymd] if ymd.len() == 6 => (2000 + n(&ymd[..2])?, n(&ymd[2..4])?, Some(n(&ymd[4..])?)),
        _ => return None,
    };
    ((1..=12).contains(&m) && d.is_none_or(|d| (1..=31).contains(&d))).then_some((y, m, d))
}

fn last_day(y: u32, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A code's YYMMDD (the century taken as 20YY) against a printed date.
fn date_agrees(printed: &str, code: &str) -> bool {
    let Some((py, pm, pd)) = printed_date(printed) else { return false };
    if code.len() != 6 {
        return false;
    }
    let n = |r: std::ops::Range<usize>| code.get(r).and_then(|g| g.parse::<u32>().ok());
    let (Some(cy), Some(cm), Some(cd)) = (n(0..2), n(2..4), n(4..6)) else { return false };
    let cy = 2000 + cy;
    if (py, pm) != (cy, cm) {
        return false;
    }
    match pd {
        None => true,
        Some(d) if cd == 0 => d == last_day(cy, cm),
        Some(d) => d == cd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::Symbology;
    use std::collections::BTreeMap;

    fn gs1(pairs: &[(&str, &str)]) -> Code {
        let m: BTreeMap<String, String> = pairs.iter().map(|(a, v)| ((*a).to_owned(), (*v).to_owned())).collect();
        Code {
            symbology: Symbology::DataMatrix,
            text: String::new(),
            gs1: Some(m),
            gs1_error: None,
            bbox: [0.0; 4],
            points: Vec::new(),
        }
    }

    #[test]
    fn rules_are_gs1_application_identifiers() {
        assert_eq!(Rule::parse("gs1:10"), Ok(Rule::Gs1("10".into())));
        assert_eq!(Rule::parse("gs1:7006"), Ok(Rule::Gs1("7006".into())));
        for bad in ["gs1:", "gs1:1", "gs1:12345", "gs1:1A", "gs1:999", "gs1:421", "lot", "qr:10"] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_lot_agrees_differs_or_is_unverified() {
        let codes = [gs1(&[("01", "09506000134376"), ("10", "4821-K")])];
        let lot = Rule::Gs1("10".into());
        assert_eq!(check("4821-K", &lot, &codes), Verdict::Agree);
        assert_eq!(check("4821 -K", &lot, &codes), Verdict::Agree);
        assert_eq!(check("4821-X", &lot, &codes), Verdict::Differ("4821-K".into()));
        assert_eq!(check("4821-k", &lot, &codes), Verdict::Differ("4821-K".into()));
        assert_eq!(check("4821-K", &Rule::Gs1("21".into()), &codes), Verdict::Unverified);
        assert_eq!(check("4821-K", &lot, &[]), Verdict::Unverified);
    }

    #[test]
    fn expiry_dates_are_compared_as_dates() {
        let exp = Rule::Gs1("17".into());
        let on = |code: &str, printed: &str| check(printed, &exp, &[gs1(&[("17", code)])]) == Verdict::Agree;
        for p in ["2027-12-31", "2027/12/31", "31.12.2027", "20271231", "271231", "2027-12", "12/2027"] {
            assert!(on("271231", p), "{p}");
        }
        // Month names and day-first dates with slashes are not guessed.
        assert!(!on("271215", "12 MAR 2027") && !on("271205", "05/12/2027") && !on("271205", "05 DEC 2027"));
        assert!(on("271200", "2027-12-31") && on("271200", "2027-12"));
        assert!(on("280200", "2028-02-29") && !on("270200", "2027-02-29"));
        assert!(!on("271200", "2027-12-30"));
        assert!(!on("271231", "2027-11-30") && !on("271231", "2028-12-31") && !on("271231", "2027-12-30"));
        assert!(!on("271231", "soon"));
    }
}
