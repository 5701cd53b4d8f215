//! Codes on the label: DataMatrix, Code 128, QR (and opt-in 1D/2D
//! symbologies) read with `rxing`, a pure-Rust ZXing port, and their GS1
//! element strings split into Application Identifiers ([`gs1`]).
//!
//! Owns what a read code is ([`Code`]), which symbologies are read
//! ([`Symbology`], [`CodeOptions`]) and the time bound ([`CodeReader`]).
//! Promises: a frame costs at most its budget on the calling thread. The
//! decode runs on a helper thread of the calling worker; when it overruns,
//! the frame's result is `timeout` and the worker goes on, the helper
//! finishes on its own and ends (at most [`MAX_HELPERS`] threads of
//! a worker alive, each with one frame's grey image). A panic in the
//! decoder is a read error, not a dead worker. Duplicates of one symbol
//! are merged, and a frame keeps at most [`MAX_CODES`] codes. The code's
//! value never feeds the OCR of the fields it checks ([`crate::fields`]
//! reads the print alone; [`verify`] compares afterwards).

pub mod gs1;
mod read;
pub mod verify;

pub use read::{CodeReader, Outcome, Ticket, MAX_HELPERS};

/// Codes kept per frame (a frame full of symbols could otherwise make an
/// annotation larger than a Kafka message may be): the first, top to
/// bottom.
pub const MAX_CODES: usize = 32;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A symbology the reader can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Symbology {
    /// Data Matrix (ECC 200), GS1 DataMatrix included.
    DataMatrix,
    /// Code 128, GS1-128 included.
    Code128,
    /// QR Code, GS1 QR included.
    Qr,
    /// EAN-13 (opt-in).
    Ean13,
    /// EAN-8 (opt-in).
    Ean8,
    /// UPC-A (opt-in).
    UpcA,
    /// UPC-E (opt-in).
    UpcE,
    /// Code 39 (opt-in).
    Code39,
    /// Code 93 (opt-in).
    Code93,
    /// Interleaved 2 of 5 (opt-in).
    Itf,
    /// Codabar (opt-in).
    Codabar,
    /// PDF417 (opt-in).
    Pdf417,
    /// Aztec (opt-in).
    Aztec,
}

impl Symbology {
    /// Every symbology, by its configuration name.
    pub const ALL: [Symbology; 13] = [
        Self::DataMatrix,
        Self::Code128,
        Self::Qr,
        Self::Ean13,
        Self::Ean8,
        Self::UpcA,
        Self::UpcE,
        Self::Code39,
        Self::Code93,
        Self::Itf,
        Self::Codabar,
        Self::Pdf417,
        Self::Aztec,
    ];

    /// The default set: the three a product label carries, and the three
    /// that gave no false read on 11,641 noise images (1D formats with
    /// short symbols do give some).
    pub const DEFAULT: [Symbology; 3] = [Self::DataMatrix, Self::Code128, Self::Qr];

    /// Its name in configuration and annotations.
    pub fn name(self) -> &'static str {
        match self {
            Self::DataMatrix => "data_matrix",
            Self::Code128 => "code128",
            Self::Qr => "qr",
            Self::Ean13 => "ean13",
            Self::Ean8 => "ean8",
            Self::UpcA => "upc_a",
            Self::UpcE => "upc_e",
            Self::Code39 => "code39",
            Self::Code93 => "code93",
            Self::Itf => "itf",
            Self::Codabar => "codabar",
            Self::Pdf417 => "pdf417",
            Self::Aztec => "aztec",
        }
    }

    /// By configuration name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    fn to_rxing(self) -> rxing::BarcodeFormat {
        use rxing::BarcodeFormat as F;
        match self {
            Self::DataMatrix => F::DATA_MATRIX,
            Self::Code128 => F::CODE_128,
            Self::Qr => F::QR_CODE,
            Self::Ean13 => F::EAN_13,
            Self::Ean8 => F::EAN_8,
            Self::UpcA => F::UPC_A,
            Self::UpcE => F::UPC_E,
            Self::Code39 => F::CODE_39,
            Self::Code93 => F::CODE_93,
            Self::Itf => F::ITF,
            Self::Codabar => F::CODABAR,
            Self::Pdf417 => F::PDF_417,
            Self::Aztec => F::AZTEC,
        }
    }

    fn from_rxing(f: rxing::BarcodeFormat) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.to_rxing() == f)
    }
}

/// How codes are read (`[detect.codes]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CodeOptions {
    /// What to look for.
    pub symbologies: Vec<Symbology>,
    /// The most one frame's decode may take on the worker.
    pub budget: Duration,
    /// Thorough (rxing's try-harder: rotations, more rows; reads more,
    /// slower) or fast.
    pub thorough: bool,
    /// Where to look.
    pub region: Region,
}

impl Default for CodeOptions {
    fn default() -> Self {
        Self {
            symbologies: Symbology::DEFAULT.to_vec(),
            budget: Duration::from_millis(500),
            thorough: true,
            region: Region::Frame,
        }
    }
}

/// Where on the frame codes are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Region {
    /// The whole frame, beside the model (on the worker's code thread
    /// while the model runs).
    #[default]
    Frame,
    /// Around the text the OCR detector found (the box around every text
    /// line, grown on every side by 1.5 times its longer side, where a
    /// label's codes sit), after the model: less to scan on a large frame
    /// with a small label. A frame with no text is scanned whole. Other
    /// models than OCR: the whole frame.
    Labels,
}

/// The rectangle `[x0, y0, x1, y1]` (pixels, end exclusive) a `Labels`
/// scan covers on a `width` x `height` frame with text boxes `boxes`.
pub fn label_region(boxes: &[[f32; 4]], width: usize, height: usize) -> [usize; 4] {
    if boxes.is_empty() {
        return [0, 0, width, height];
    }
    let mut u = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    for b in boxes {
        u = [u[0].min(b[0]), u[1].min(b[1]), u[2].max(b[2]), u[3].max(b[3])];
    }
    let g = 1.5 * (u[2] - u[0]).max(u[3] - u[1]).max(0.0);
    let (gw, gh) = (g, g);
    let clamp = |v: f32, hi: usize| (v.max(0.0) as usize).min(hi);
    let r = [
        clamp(u[0] - gw, width),
        clamp(u[1] - gh, height),
        clamp(u[2] + gw + 1.0, width),
        clamp(u[3] + gh + 1.0, height),
    ];
    if r[2] <= r[0] || r[3] <= r[1] {
        return [0, 0, width, height];
    }
    r
}

/// The grey image (BT.601 luma) of `rect` of a BGR frame.
pub fn luma(frame: &crate::imageops::Bgr, rect: [usize; 4]) -> Vec<u8> {
    let [x0, y0, x1, y1] = rect;
    let (x1, y1) = (x1.min(frame.width), y1.min(frame.height));
    let (x0, y0) = (x0.min(x1), y0.min(y1));
    if frame.data.len() < frame.width * frame.height * 3 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(x1.saturating_sub(x0) * y1.saturating_sub(y0));
    for y in y0..y1 {
        let row = &frame.data[(y * frame.width + x0) * 3..(y * frame.width + x1) * 3];
        out.extend(
            row.chunks_exact(3)
                .map(|p| ((u32::from(p[0]) * 29 + u32::from(p[1]) * 150 + u32::from(p[2]) * 77 + 128) >> 8) as u8),
        );
    }
    out
}

/// One code read on a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Code {
    /// Its symbology.
    pub symbology: Symbology,
    /// The decoded text (a GS1 code's inner FNC1 as ASCII 29).
    pub text: String,
    /// A GS1 code's Application Identifiers, AI -> value (absent for a
    /// code not flagged GS1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gs1: Option<BTreeMap<String, String>>,
    /// Why a code flagged GS1 could not be split into AIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gs1_error: Option<String>,
    /// Axis-aligned box `[x0, y0, x1, y1]` around the points the decoder
    /// found, in frame pixels.
    pub bbox: [f32; 4],
    /// The decoder's points in frame pixels: a 2D symbol's corners or
    /// finder patterns, a 1D symbol's ends.
    pub points: Vec<[f32; 2]>,
}

impl Code {
    /// The text for people: the GS1 group separator (ASCII 29, invisible)
    /// shown as `<GS>`.
    pub fn shown_text(&self) -> String {
        self.text.replace(gs1::GS, "<GS>")
    }
}

/// The symbology identifiers of GS1 data: DataMatrix `]d2` (`]d5` with
/// ECI), GS1-128 `]C1`, GS1 QR `]Q3` (`]Q4`), GS1 DataBar `]e0`.
fn is_gs1(symbology_id: &str) -> bool {
    matches!(symbology_id, "]d2" | "]d5" | "]C1" | "]Q3" | "]Q4" | "]e0")
}

/// Builds a [`Code`] from the decoder's text, symbology identifier and
/// points (offset by the region's corner).
fn code(symbology: Symbology, text: String, id: &str, pts: &[[f32; 2]]) -> Code {
    let pts: Vec<[f32; 2]> = pts.iter().copied().filter(|p| p[0].is_finite() && p[1].is_finite()).collect();
    let (gs1, gs1_error) = if is_gs1(id) {
        match gs1::parse(&text) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    let mut bbox = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    for p in &pts {
        bbox = [bbox[0].min(p[0]), bbox[1].min(p[1]), bbox[2].max(p[0]), bbox[3].max(p[1])];
    }
    if pts.is_empty() {
        bbox = [0.0; 4];
    }
    Code { symbology, text, gs1, gs1_error, bbox, points: pts }
}

/// Merges reads of one symbol (same symbology and text): the reader can
/// find a symbol twice (its halves, a rotation). Boxes are joined.
fn merge(codes: Vec<Code>) -> Vec<Code> {
    let mut out: Vec<Code> = Vec::with_capacity(codes.len());
    for c in codes {
        if let Some(o) = out.iter_mut().find(|o| o.symbology == c.symbology && o.text == c.text) {
            o.bbox = [
                o.bbox[0].min(c.bbox[0]),
                o.bbox[1].min(c.bbox[1]),
                o.bbox[2].max(c.bbox[2]),
                o.bbox[3].max(c.bbox[3]),
            ];
            if o.points.len() < c.points.len() {
                o.points = c.points;
            }
        } else {
            out.push(c);
        }
    }
    // Reading order: top to bottom, then left to right.
    out.sort_by(|a, b| a.bbox[1].total_cmp(&b.bbox[1]).then(a.bbox[0].total_cmp(&b.bbox[0])));
    out.truncate(MAX_CODES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_default_is_the_three_label_codes() {
        for s in Symbology::ALL {
            assert_eq!(Symbology::parse(s.name()), Some(s));
            assert_eq!(Symbology::from_rxing(s.to_rxing()), Some(s));
        }
        assert_eq!(Symbology::parse("qrcode"), None);
        assert_eq!(CodeOptions::default().symbologies, vec![Symbology::DataMatrix, Symbology::Code128, Symbology::Qr]);
    }

    #[test]
    fn a_gs1_code_is_split_and_a_malformed_one_reported() {
        let c = code(Symbology::DataMatrix, "0109506000134376\u{1d}".into(), "]d2", &[[1.0, 2.0], [5.0, 9.0]]);
        assert_eq!(c.gs1.as_ref().and_then(|m| m.get("01")).map(String::as_str), Some("09506000134376"));
        assert_eq!(c.bbox, [1.0, 2.0, 5.0, 9.0]);
        let bad = code(Symbology::DataMatrix, "0109506000134377".into(), "]d2", &[]);
        assert!(bad.gs1.is_none() && bad.gs1_error.as_deref().is_some_and(|e| e.contains("check digit")));
        let plain = code(Symbology::Qr, "0109506000134376".into(), "]Q1", &[]);
        assert!(plain.gs1.is_none() && plain.gs1_error.is_none());
    }

    #[test]
    fn the_label_region_grows_around_the_text_and_stays_in_the_frame() {
        assert_eq!(label_region(&[], 640, 480), [0, 0, 640, 480]);
        let text = [[400.0, 300.0, 500.0, 340.0], [400.0, 350.0, 450.0, 380.0]];
        assert_eq!(label_region(&text, 1920, 1080), [250, 150, 651, 531]);
        assert_eq!(label_region(&text, 640, 480), [250, 150, 640, 480]);
        assert_eq!(label_region(&[[600.0, 0.0, 640.0, 10.0]], 640, 480), [540, 0, 640, 71]);
        let frame = crate::imageops::Bgr {
            width: 3,
            height: 2,
            data: vec![255, 255, 255, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 255, 0, 9, 9, 9],
        };
        assert_eq!(luma(&frame, [0, 0, 3, 2]), [255, 0, 77, 29, 149, 9]);
        assert_eq!(luma(&frame, [1, 1, 3, 2]), [149, 9]);
        assert!(luma(&frame, [5, 5, 2, 1]).is_empty() && luma(&frame, [0, 0, 0, 9]).is_empty());
    }

    #[test]
    fn one_symbol_found_twice_is_one_code() {
        let a = code(Symbology::Code128, "X".into(), "]C0", &[[0.0, 10.0], [50.0, 10.0]]);
        let b = code(Symbology::Code128, "X".into(), "]C0", &[[5.0, 12.0], [60.0, 12.0]]);
        let c = code(Symbology::Qr, "X".into(), "]Q1", &[[0.0, 0.0], [9.0, 9.0], [0.0, 9.0]]);
        let m = merge(vec![a, b, c]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].symbology, Symbology::Qr);
        assert_eq!(m[1].bbox, [0.0, 10.0, 60.0, 12.0]);
    }
}
