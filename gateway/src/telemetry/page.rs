//! HTML and SVG for people: the status page served at `/` and the demo's
//! report share these renderers.
//!
//! Promise: everything taken from the outside (camera ids, text read,
//! labels, errors) is escaped; the pages need no script and no network
//! (styles are inline, images come from the gateway itself or sit beside
//! the report), so they work on an air-gapped line.

use super::status::Status;
use crate::records::FrameAnnotation;
use std::fmt::Write as _;

/// Box colour, chosen to stand out on grey labels (tests look for it).
pub const BOX_RGB: [u8; 3] = [0x00, 0xe6, 0x76];
const BOX: &str = "#00e676";
const ERROR: &str = "#ff5252";
/// Codes (DataMatrix, QR, barcodes) are drawn in this colour.
const CODE: &str = "#40c4ff";

/// `s` escaped for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// `s` as one URL path segment (unreserved characters kept, the rest
/// percent-encoded).
pub fn path_segment(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// Standard base64 (for images embedded in self-contained SVG files).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                o.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

/// The frame as an SVG: the image at `href`, each item's box (the rotated
/// quad for text) and what was read or recognised, with its score. An
/// annotation error is written across the top.
pub fn frame_svg(a: &FrameAnnotation, href: &str) -> String {
    // A frame that could not be decoded has no size: a grey 4:3 panel
    // with the error instead of a broken picture.
    let decoded = a.annotation.width > 0 && a.annotation.height > 0;
    let (w, h) = if decoded { (a.annotation.width, a.annotation.height) } else { (640, 480) };
    let stroke = (w.max(h) as f32 / 320.0).max(1.5);
    let font = (w.max(h) as f32 / 60.0).max(9.0);
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 {w} {h}" class="frame" role="img" aria-label="{}">"#,
        esc(&a.frame_id)
    );
    if decoded {
        let _ = write!(o, r#"<image href="{}" xlink:href="{}" width="{w}" height="{h}"/>"#, esc(href), esc(href));
    } else {
        let _ = write!(o, r##"<rect width="{w}" height="{h}" fill="#3a3f4b"/>"##);
    }
    for item in &a.annotation.items {
        let pts = match item.quad {
            Some(q) => q,
            None => {
                let [x0, y0, x1, y1] = item.bbox;
                [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
            }
        };
        let points: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", p[0], p[1])).collect();
        let _ = write!(
            o,
            r#"<polygon points="{}" fill="none" stroke="{BOX}" stroke-width="{stroke:.1}"/>"#,
            points.join(" ")
        );
        let what = item.text.as_deref().or(item.label.as_deref()).unwrap_or("");
        let x = item.bbox[0];
        let above = item.bbox[1] - stroke * 2.0;
        let y = if above > font { above } else { item.bbox[3] + font };
        let _ = write!(
            o,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="DejaVu Sans Mono, monospace" font-size="{font:.0}" fill="{BOX}" stroke="black" stroke-width="{:.1}" paint-order="stroke">{} {:.2}</text>"#,
            font / 6.0,
            esc(what),
            item.score
        );
    }
    codes_svg(&mut o, a, stroke, font);
    if let Some(e) = &a.annotation.error {
        let big = font * 1.6;
        let _ = write!(
            o,
            r#"<text x="8" y="{:.0}" font-family="sans-serif" font-size="{big:.0}" fill="{ERROR}" stroke="black" stroke-width="{:.1}" paint-order="stroke">not annotated: {}</text>"#,
            big * 1.2,
            big / 6.0,
            esc(&e.chars().take(60).collect::<String>())
        );
    }
    o.push_str("</svg>");
    o
}

/// A code's text for people ([`inference::codes::Code::shown_text`]), long
/// texts cut at 48 characters.
fn code_text(c: &inference::codes::Code) -> String {
    let full = c.shown_text();
    let shown: String = full.chars().take(48).collect();
    if full.chars().count() > 48 {
        format!("{shown}…")
    } else {
        shown
    }
}

/// The frame's codes (their corners, symbology and text) and, in red, each
/// printed field that disagrees with its code, with both values.
fn codes_svg(o: &mut String, a: &FrameAnnotation, stroke: f32, font: f32) {
    for c in &a.annotation.codes {
        let [x0, y0, x1, y1] = c.bbox;
        let pts = if c.points.len() >= 3 {
            c.points.clone()
        } else {
            vec![[x0, y0], [x1, y0], [x1, y1.max(y0 + stroke)], [x0, y1.max(y0 + stroke)]]
        };
        let points: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", p[0], p[1])).collect();
        let _ = write!(
            o,
            r#"<polygon points="{}" fill="none" stroke="{CODE}" stroke-width="{stroke:.1}"/>"#,
            points.join(" ")
        );
        let _ = write!(
            o,
            r#"<text x="{x0:.1}" y="{:.1}" font-family="DejaVu Sans Mono, monospace" font-size="{:.0}" fill="{CODE}" stroke="black" stroke-width="{:.1}" paint-order="stroke">{} {}</text>"#,
            y1.max(y0 + stroke) + font,
            font * 0.8,
            font / 6.0,
            c.symbology.name(),
            esc(&code_text(c))
        );
    }
    for name in &a.annotation.mismatches {
        let Some(f) = a.annotation.fields.get(name) else { continue };
        let [x0, y0, x1, y1] = f.bbox;
        let _ = write!(
            o,
            r#"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="{ERROR}" stroke-width="{:.1}"/>"#,
            (x1 - x0).max(1.0),
            (y1 - y0).max(1.0),
            stroke * 1.5
        );
        let _ = write!(
            o,
            r#"<text x="{x0:.1}" y="{:.1}" font-family="sans-serif" font-size="{font:.0}" fill="{ERROR}" stroke="black" stroke-width="{:.1}" paint-order="stroke">MISMATCH {}: code says {}</text>"#,
            y1 + font,
            font / 6.0,
            esc(name),
            esc(f.code.as_deref().unwrap_or(""))
        );
    }
}

/// The texts or labels of a frame, one per line, for captions; then its
/// codes and any misprint.
pub fn item_list(a: &FrameAnnotation) -> String {
    if let Some(e) = &a.annotation.error {
        return format!("<li class=\"err\">not annotated: {}</li>", esc(e));
    }
    if a.annotation.items.is_empty() && a.annotation.codes.is_empty() {
        return "<li class=\"none\">nothing found</li>".into();
    }
    let mut out: String = a
        .annotation
        .items
        .iter()
        .map(|i| {
            format!(
                "<li><code>{}</code> <span class=\"score\">{:.2}</span></li>",
                esc(i.text.as_deref().or(i.label.as_deref()).unwrap_or("")),
                i.score
            )
        })
        .collect();
    for c in &a.annotation.codes {
        let _ = write!(out, "<li>{} <code>{}</code></li>", c.symbology.name(), esc(&code_text(c)));
    }
    if a.annotation.codes_timeout {
        out.push_str("<li class=\"warn\">codes: out of time (detect.codes.budget)</li>");
    }
    for name in &a.annotation.mismatches {
        if let Some(f) = a.annotation.fields.get(name) {
            let _ = write!(
                out,
                "<li class=\"err\">MISMATCH {}: printed <code>{}</code>, code <code>{}</code></li>",
                esc(name),
                esc(&f.value),
                esc(f.code.as_deref().unwrap_or(""))
            );
        }
    }
    out
}

/// Shared style of the status page and the report.
pub const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px}
header h1{font-size:20px;margin:0 0 4px 0}
header .sub{opacity:.8;font-size:13px}
main{padding:16px 20px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:16px}
.tile{background:#fff;border-radius:6px;padding:8px 12px;min-width:120px;box-shadow:0 1px 2px #0002}
.tile .k{font-size:12px;color:#5a6275}.tile .v{font-size:20px;font-weight:600}
.ok{color:#0a7d38}.bad{color:#c62828}.warn{color:#b26a00}
.cams{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px}
.cam{background:#fff;border-radius:6px;padding:10px;box-shadow:0 1px 2px #0002}
.cam h2{font-size:16px;margin:0 0 6px 0}
.cam .meta{font-size:12px;color:#5a6275;margin-bottom:6px}
svg.frame{width:100%;height:auto;display:block;background:#000}
ul.items{margin:6px 0 0 0;padding-left:18px;font-size:13px}
.score{color:#5a6275;font-size:11px}.err{color:#c62828}.none{color:#5a6275}
table{border-collapse:collapse;background:#fff;margin-bottom:16px}
td,th{padding:4px 10px;border-bottom:1px solid #e3e5ea;text-align:left;font-size:14px}
"#;

/// One figure on the page's top row.
pub struct Tile {
    /// What it is.
    pub key: String,
    /// Its value.
    pub value: String,
    /// `ok`, `bad`, `warn` or empty.
    pub class: &'static str,
}

impl Tile {
    /// A tile.
    pub fn new(key: impl Into<String>, value: impl Into<String>, class: &'static str) -> Self {
        Self { key: key.into(), value: value.into(), class }
    }
}

/// The tiles as HTML.
pub fn tiles(t: &[Tile]) -> String {
    let mut o = String::from("<div class=\"tiles\">");
    for x in t {
        let _ = write!(
            o,
            "<div class=\"tile\"><div class=\"k\">{}</div><div class=\"v {}\">{}</div></div>",
            esc(&x.key),
            x.class,
            esc(&x.value)
        );
    }
    o.push_str("</div>");
    o
}

/// A camera card: the annotated frame and what was read. `href` is where
/// the frame's bytes are; `meta` a line of figures.
pub fn camera_card(a: &FrameAnnotation, href: &str, meta: &str) -> String {
    format!(
        "<section class=\"cam\"><h2>{}</h2><div class=\"meta\">{}</div>{}<ul class=\"items\">{}</ul></section>",
        esc(&a.camera),
        esc(meta),
        frame_svg(a, href),
        item_list(a)
    )
}

/// A whole page.
pub fn page(title: &str, subtitle: &str, body: &str, refresh_s: Option<u32>) -> String {
    let refresh = refresh_s.map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">")).unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">{refresh}<title>{}</title><style>{STYLE}</style></head><body><header><h1>{}</h1><div class=\"sub\">{}</div></header><main>{body}</main></body></html>\n",
        esc(title),
        esc(title),
        esc(subtitle)
    )
}

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// The status page's HTML.
pub fn render_page(s: &Status, refresh_s: u32) -> String {
    use super::page::{camera_card, esc, page, path_segment, tiles, Tile};
    use crate::util::units::format_size;
    let now_ms = crate::util::now_ms();
    let updown = |ok: bool, yes: &str, no: &str| if ok { (yes.to_owned(), "ok") } else { (no.to_owned(), "bad") };
    let (mqtt, mc) = if s.mqtt_subscribed {
        ("subscribed".to_owned(), "ok")
    } else {
        updown(s.mqtt_connected, "connected", "disconnected")
    };
    let (kafka, kc) = updown(s.kafka_connected, "up", "down / idle");
    let pct = if s.log_max_bytes > 0 { s.log_used_bytes as f64 * 100.0 / s.log_max_bytes as f64 } else { 0.0 };
    let mut body = tiles(&[
        Tile::new("MQTT", mqtt, mc),
        Tile::new("Kafka uplink", kafka, kc),
        Tile::new("frames received", s.frames_received.to_string(), ""),
        Tile::new("annotated", s.frames_annotated.to_string(), ""),
        Tile::new("annotations sent", s.annotations_replicated.to_string(), ""),
        Tile::new("images sent", s.images_replicated.to_string(), ""),
        Tile::new("waiting for model", s.backlog.detect.records.to_string(), ""),
        Tile::new(
            "waiting for uplink",
            format!("{} ({})", s.backlog.replicate.records, format_size(s.backlog.replicate.bytes)),
            if s.backlog.replicate.records > 1000 { "warn" } else { "" },
        ),
        Tile::new(
            "disk budget",
            format!("{pct:.0}% of {}", format_size(s.log_max_bytes)),
            if pct > 90.0 {
                "bad"
            } else if pct > 70.0 {
                "warn"
            } else {
                ""
            },
        ),
        Tile::new("quarantined", s.frames_quarantined.to_string(), if s.frames_quarantined > 0 { "warn" } else { "" }),
        Tile::new("dropped", s.records_dropped.to_string(), if s.records_dropped > 0 { "bad" } else { "" }),
    ]);
    if s.intake_blocked {
        body.push_str("<p class=\"bad\">Intake is paused: the log is at its byte budget and the uplink is behind. Frames wait on the MQTT broker.</p>");
    }
    if !s.not_ready.is_empty() {
        body.push_str(&format!("<p class=\"warn\">Not ready: {}</p>", esc(&s.not_ready.join(", "))));
    }
    if s.cameras.is_empty() {
        body.push_str("<p>No annotated frame yet.</p>");
    }
    body.push_str("<div class=\"cams\">");
    for c in &s.cameras {
        let meta = format!(
            "{} frames, {:.1} frames/s, newest {} ago: {}",
            c.frames,
            c.fps,
            ago(now_ms.saturating_sub(c.latest_at_ms)),
            c.latest.frame_id
        );
        body.push_str(&camera_card(&c.latest, &format!("/cameras/{}/latest", path_segment(&c.camera)), &meta));
    }
    body.push_str("</div>");
    page(
        &format!("vision-gateway {}", s.gateway_id),
        &format!(
            "version {}, up {}{}",
            s.version,
            ago(s.uptime_s * 1000),
            if refresh_s > 0 { format!(", this page refreshes every {refresh_s} s") } else { String::new() }
        ),
        &body,
        (refresh_s > 0).then_some(refresh_s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(path_segment("line 1/cam#2"), "line%201%2Fcam%232");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn codes_and_misprints_are_drawn_and_listed_escaped() {
        let mut a = inference::Annotation::failed(inference::ModelInfo::new("m", "1", "h"), String::new());
        (a.error, a.width, a.height) = (None, 640, 480);
        a.codes.push(inference::codes::Code {
            symbology: inference::codes::Symbology::DataMatrix,
            text: "10<LOT>\u{1d}21S".into(),
            gs1: None,
            gs1_error: None,
            bbox: [10.0, 10.0, 50.0, 50.0],
            points: vec![[10.0, 10.0], [50.0, 10.0], [50.0, 50.0], [10.0, 50.0]],
        });
        a.fields.insert(
            "lot".into(),
            inference::fields::FieldValue {
                value: "4821-X".into(),
                score: 0.99,
                raw: "LOT 4821-X".into(),
                bbox: [60.0, 10.0, 200.0, 30.0],
                uncertain: false,
                verified: Some(false),
                code: Some("4821-K".into()),
            },
        );
        a.mismatches.push("lot".into());
        let fa = FrameAnnotation {
            schema: 1,
            frame_id: "g:1".into(),
            gateway_id: "g".into(),
            seq: 1,
            camera: "c".into(),
            camera_seq: None,
            captured_at_ms: None,
            received_at_ms: 0,
            content_type: "image/jpeg".into(),
            frame_bytes: 1,
            sampled: None,
            annotation: a,
        };
        let svg = frame_svg(&fa, "x.jpg");
        assert!(svg.contains(CODE) && svg.contains("data_matrix 10&lt;LOT&gt;&lt;GS&gt;21S"), "{svg}");
        assert!(svg.contains("MISMATCH lot: code says 4821-K"), "{svg}");
        let list = item_list(&fa);
        assert!(list.contains("printed <code>4821-X</code>, code <code>4821-K</code>"), "{list}");
    }
}
