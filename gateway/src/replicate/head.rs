//! The head of a stored annotation: the fields the stage needs for a
//! record's key and headers (camera, frame id, model, whether an image was
//! sampled), read without parsing the rest.
//!
//! # Promise
//!
//! [`parse`] returns what a full parse of the record into [`AnnotationHead`]
//! returns. A record whose top-level keys come in the order the gateway
//! writes them ([`WRITER_ORDER`], the order of `FrameAnnotation`'s fields
//! in every version so far) is read only up to its model, which comes before
//! the items: on a record of a few text lines that was most of the stage's
//! parsing time. Any other record (keys reordered by hand, unknown keys
//! before the annotation) is read whole, so a `sampled` written after the
//! annotation is still seen. The tail left unread was checked by the log's
//! record checksum, not by this parser.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;
use std::borrow::Cow;

/// The fields of a stored `FrameAnnotation` the stage needs for keys
/// and headers.
#[derive(Debug, PartialEq, serde::Deserialize)]
pub(super) struct AnnotationHead {
    pub(super) camera: String,
    pub(super) frame_id: String,
    #[serde(default, deserialize_with = "present")]
    pub(super) sampled: bool,
    pub(super) annotation: ModelHead,
}

/// The model of a stored annotation.
#[derive(Debug, PartialEq, serde::Deserialize)]
pub(super) struct ModelHead {
    pub(super) model: inference::ModelInfo,
}

/// `sampled` is set when the key holds anything but `null`.
fn present<'de, D: de::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(<Option<IgnoredAny> as serde::Deserialize>::deserialize(d)?.is_some())
}

/// The top-level keys the gateway writes before `annotation`, in order
/// (optional ones may be missing).
const WRITER_ORDER: [&str; 12] = [
    "schema",
    "frame_id",
    "gateway_id",
    "seq",
    "camera",
    "camera_seq",
    "captured_at_ms",
    "received_at_ms",
    "content_type",
    "frame_bytes",
    "sampled",
    "annotation",
];

/// What the early stop carries out of the parser (never shown: [`parse`]
/// tells it from a real error by what was found).
const DONE: &str = "annotation head read";

/// Reads the head of stored annotation `json` (see the module's promise).
///
/// # Errors
/// The full parser's error when the record is not a stored annotation.
pub(super) fn parse(json: &[u8]) -> Result<AnnotationHead, serde_json::Error> {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(json);
    let outcome = (&mut de).deserialize_map(Top(&mut found));
    if let (Err(e), Some(head)) = (&outcome, found.done.take()) {
        if e.to_string().starts_with(DONE) {
            return Ok(head);
        }
    }
    // Read whole (or failed): the full parse gives the answer and its error.
    serde_json::from_slice(json)
}

#[derive(Default)]
struct Found {
    camera: Option<String>,
    frame_id: Option<String>,
    sampled: bool,
    done: Option<AnnotationHead>,
}

struct Top<'a>(&'a mut Found);

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a stored annotation")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let found = self.0;
        // The keys so far came in the writer's order.
        let mut in_order = true;
        let mut next = 0usize;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match WRITER_ORDER[next..].iter().position(|k| *k == key) {
                Some(i) => next += i + 1,
                None => in_order = false,
            }
            match key.as_ref() {
                "camera" => found.camera = Some(map.next_value()?),
                "frame_id" => found.frame_id = Some(map.next_value()?),
                "sampled" => found.sampled = map.next_value::<Option<IgnoredAny>>()?.is_some(),
                "annotation" if in_order => map.next_value_seed(Annotation(found))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The `annotation` object, read up to its model.
struct Annotation<'a>(&'a mut Found);

impl<'de> DeserializeSeed<'de> for Annotation<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Annotation<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an annotation")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let found = self.0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != "model" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let model: inference::ModelInfo = map.next_value()?;
            if let (Some(camera), Some(frame_id)) = (found.camera.take(), found.frame_id.take()) {
                found.done =
                    Some(AnnotationHead { camera, frame_id, sampled: found.sampled, annotation: ModelHead { model } });
                return Err(de::Error::custom(DONE));
            }
            return Ok(());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{FrameAnnotation, SampleReason, SCHEMA_VERSION};

    fn stored(sampled: Option<SampleReason>, camera_seq: Option<u64>) -> Vec<u8> {
        let mut annotation =
            inference::Annotation::failed(inference::ModelInfo::new("ppocr-v6", "6", "ab"), String::new());
        annotation.error = None;
        annotation.items = (0..3)
            .map(|k| {
                inference::Item::text(format!("LOT \"{k}\"\n"), 0.9, [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
            })
            .collect();
        let fa = FrameAnnotation {
            schema: SCHEMA_VERSION,
            frame_id: "gw:7".into(),
            gateway_id: "gw".into(),
            seq: 7,
            camera: "cam \u{e9}\\1".into(),
            camera_seq,
            captured_at_ms: None,
            received_at_ms: 1,
            content_type: "image/jpeg".into(),
            frame_bytes: 10,
            sampled,
            annotation,
        };
        serde_json::to_vec(&fa).expect("serializes")
    }

    fn full(json: &[u8]) -> AnnotationHead {
        serde_json::from_slice(json).expect("full parse")
    }

    #[test]
    fn a_stored_annotation_reads_as_the_full_parse_does() {
        for sampled in [None, Some(SampleReason::EveryNth)] {
            for camera_seq in [None, Some(3)] {
                let json = stored(sampled, camera_seq);
                let head = parse(&json).expect("parses");
                assert_eq!(head, full(&json));
                assert_eq!(head.sampled, sampled.is_some());
                assert_eq!(head.camera, "cam \u{e9}\\1");
                assert_eq!(head.annotation.model.name, "ppocr-v6");
            }
        }
    }

    #[test]
    fn a_record_in_the_writers_order_is_read_only_up_to_its_model() {
        let json = stored(None, Some(3));
        let text = String::from_utf8(json).expect("utf-8");
        let at = text.find("\"width\"").expect("width after the model");
        // A tail the full parser refuses: the early stop never reads it.
        let cut = format!("{}\"width\": nonsense", &text[..at]);
        assert!(serde_json::from_slice::<AnnotationHead>(cut.as_bytes()).is_err());
        assert_eq!(parse(cut.as_bytes()).expect("head read").frame_id, "gw:7");
    }

    #[test]
    fn a_record_in_another_order_is_read_whole_and_its_late_sampled_is_seen() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&stored(Some(SampleReason::EveryNth), None)).expect("json");
        let obj = v.as_object_mut().expect("object");
        let sampled = obj.remove("sampled").expect("sampled");
        obj.insert("sampled".into(), sampled); // now after "annotation"
        let json = serde_json::to_vec(&v).expect("serializes");
        let head = parse(&json).expect("parses");
        assert!(head.sampled, "a sampled key after the annotation is not missed");
        assert_eq!(head, full(&json));
        // An unknown key before the annotation also turns the early stop off.
        let json = br#"{"camera":"c","frame_id":"f","x":1,"annotation":{"model":{"name":"m","version":"1","hash":"h"}},"sampled":"interval"}"#;
        assert!(parse(json).expect("parses").sampled);
    }

    #[test]
    fn what_is_not_a_stored_annotation_gets_the_full_parsers_error() {
        for bad in [&b"not json"[..], b"{}", br#"{"camera":"c","annotation":{"model":{"name":"m"}}}"#, b"[1,2]"] {
            let fast = parse(bad).map_err(|e| e.to_string());
            let slow = serde_json::from_slice::<AnnotationHead>(bad).map_err(|e| e.to_string());
            assert!(fast.is_err());
            assert_eq!(fast.err(), slow.err());
        }
    }
}
