//! The format syntax: what parses, what is refused with its column, and
//! the automaton each format compiles to.

use super::*;

fn ok(p: &str) -> Pattern {
    match Pattern::parse(p) {
        Ok(p) => p,
        Err(e) => panic!("{p:?}: {e}"),
    }
}

#[test]
fn lines_and_values() {
    let lot = ok(r"LOT <L\d{4}[A-FX]>");
    assert_eq!(lot.matches("LOT L2112X").as_deref(), Some("L2112X"));
    assert_eq!(lot.matches("LOTL2112X").as_deref(), Some("L2112X"), "a dropped space");
    assert_eq!(lot.matches("LOT L2112G"), None);
    assert_eq!(lot.matches("L0T L2112X"), None);
    assert_eq!(lot.matches("LOT L2112XX"), None);
    let date = ok(r"DATE <\d{4}-\d{2}-\d{2}>");
    assert_eq!(date.matches("DATE 2026-09-16").as_deref(), Some("2026-09-16"));
    let sn = ok(r"SN <\d{5}-\d{4}>");
    assert_eq!(sn.matches("SN69554-1455").as_deref(), Some("69554-1455"));
    let g = ok(r"GASKET <\u-\d{3}>");
    assert_eq!(g.matches("GASKETX-486").as_deref(), Some("X-486"));
    assert_eq!(g.matches("GASKET X-486").as_deref(), Some("X-486"));
    let alt = ok(r"(EXP|USE BY) <\d{2}/\d{2}>");
    assert_eq!(alt.matches("USE BY 09/27").as_deref(), Some("09/27"));
    assert_eq!(alt.matches("EXP09/27").as_deref(), Some("09/27"));
    let esc = ok(r"V\.<\d+(\.\d+)?>");
    assert_eq!(esc.matches("V.12.5").as_deref(), Some("12.5"));
    assert_eq!(esc.matches("V12.5"), None);
    let opt = ok(r"<[A-Z]{2,3}\d{0,2}>");
    assert_eq!(opt.matches("AB").as_deref(), Some("AB"));
    assert_eq!(opt.matches("ABC12").as_deref(), Some("ABC12"));
    assert_eq!(opt.matches("ABCD"), None);
}

#[test]
fn a_dropped_space_is_written_back() {
    let p = ok(r"SN <\d{3} \d{3}>");
    assert_eq!(p.matches("SN123456").as_deref(), Some("123 456"));
    assert_eq!(p.matches("SN 123 456").as_deref(), Some("123 456"));
    let whole = ok(r"PN \d{2}");
    assert_eq!(whole.matches("PN12").as_deref(), Some("PN 12"));
}

#[test]
fn bad_formats_name_the_column() {
    for (p, col, what) in [
        ("", 0, "empty"),
        ("LOT <\\d", 5, "not closed"),
        ("(AB", 1, "not closed"),
        ("AB)", 3, "does not close"),
        ("\\q", 1, "unknown escape"),
        ("[Z-A]", 2, "backwards"),
        ("\\d{3,1}", 3, "below the minimum"),
        ("\\d{99}", 4, "over 64"),
        ("<A><B>", 4, "at most one value"),
        ("A?", 0, "empty line"),
        ("*A", 1, "nothing to apply to"),
        ("<A>+", 4, "cannot be repeated"),
        ("[]", 1, "empty set"),
        ("\\d{x}", 4, "number"),
    ] {
        match Pattern::parse(p) {
            Ok(_) => panic!("{p:?} accepted"),
            Err(e) => {
                assert!(e.message.contains(what), "{p:?}: {e}");
                assert_eq!(e.column, col, "{p:?}: {e}");
            }
        }
    }
}

#[test]
fn repeats_are_bounded() {
    let e = Pattern::parse(r"((\d{64}){64}){64}").unwrap_err();
    assert!(e.message.contains("too large"), "{e}");
    assert!(ok(r"\d{64}").states() <= 65);
    assert!(Pattern::parse(&"A".repeat(MAX_LEN + 1)).is_err());
}

#[test]
fn stacked_repeats_of_a_star_compile_quickly_or_are_refused() {
    // Found by the fields fuzz target (a timeout): every repeat of a star
    // adds epsilon paths, and the automaton's transitions were de-duplicated
    // by a linear search, quadratic in their number.
    for f in ["SN <#~d*{5}?{4}*{6}?{4}>", "<(A*)?{9}(B*){9}C>", "<(\\d*)*{60}>"] {
        match Pattern::parse(f) {
            Ok(p) => assert!(p.states() <= MAX_STATES, "{f}"),
            Err(e) => assert!(!e.to_string().is_empty(), "{f}"),
        }
    }
}
