//! The latest annotated frame of each camera, kept in memory for the status
//! page.
//!
//! Owns nothing durable: the detect stage hands over each frame it has just
//! committed (the bytes it would otherwise free), and only the newest frame
//! per camera is kept. Reading is a short lock and a clone of
//! reference-counted bytes, so a page view never slows the pipeline.
//!
//! Promise: bounded whatever camera ids arrive. At most [`MAX_CAMERAS`]
//! cameras and [`MAX_BYTES`] of frame bytes are kept; past either, the
//! cameras whose newest frame is oldest are evicted first. A frame larger
//! than the whole budget is shown without its picture.

use crate::records::FrameAnnotation;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Cameras shown at most (the least recently seen are evicted).
pub const MAX_CAMERAS: usize = 256;
/// Frame bytes kept at most, all cameras together.
pub const MAX_BYTES: usize = 64 << 20;
/// Commit times kept per camera for its frame rate.
const RATE_WINDOW: usize = 30;

/// One camera's newest annotated frame and its rate.
#[derive(Debug, Clone)]
pub struct CameraView {
    /// The frame's annotation.
    pub annotation: FrameAnnotation,
    /// The frame's bytes (as received).
    pub image: Arc<Vec<u8>>,
    /// Frames of this camera annotated since start.
    pub frames: u64,
    /// Commit times (ms since the epoch) of the last frames.
    recent_ms: VecDeque<u64>,
}

impl CameraView {
    /// Annotated frames per second over the last frames (0 with fewer than 2).
    pub fn fps(&self) -> f64 {
        match (self.recent_ms.front(), self.recent_ms.back()) {
            (Some(a), Some(b)) if b > a => (self.recent_ms.len() - 1) as f64 * 1000.0 / (b - a) as f64,
            _ => 0.0,
        }
    }

    /// When the newest frame was annotated (ms since the epoch).
    pub fn last_ms(&self) -> u64 {
        self.recent_ms.back().copied().unwrap_or(0)
    }
}

/// The newest annotated frame per camera.
#[derive(Debug)]
pub struct LatestFrames {
    cameras: Mutex<BTreeMap<String, CameraView>>,
    max_cameras: usize,
    max_bytes: usize,
}

impl Default for LatestFrames {
    fn default() -> Self {
        Self::with_limits(MAX_CAMERAS, MAX_BYTES)
    }
}

impl LatestFrames {
    /// A view with other bounds (tests).
    pub fn with_limits(max_cameras: usize, max_bytes: usize) -> Self {
        Self { cameras: Mutex::new(BTreeMap::new()), max_cameras, max_bytes }
    }

    /// Keeps `image` as the newest frame of its camera, evicting the
    /// cameras seen longest ago to stay within the bounds.
    pub fn record(&self, annotation: &FrameAnnotation, image: Vec<u8>, now_ms: u64) {
        let image = if image.len() > self.max_bytes { Vec::new() } else { image };
        let mut cams = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cams.get_mut(&annotation.camera) {
            v.annotation = annotation.clone();
            v.image = Arc::new(image);
            v.frames += 1;
            if v.recent_ms.len() == RATE_WINDOW {
                v.recent_ms.pop_front();
            }
            v.recent_ms.push_back(now_ms);
        } else {
            cams.insert(
                annotation.camera.clone(),
                CameraView {
                    annotation: annotation.clone(),
                    image: Arc::new(image),
                    frames: 1,
                    recent_ms: VecDeque::from([now_ms]),
                },
            );
        }
        let mut bytes: usize = cams.values().map(|v| v.image.len()).sum();
        while cams.len() > self.max_cameras || bytes > self.max_bytes {
            let Some(oldest) = cams
                .iter()
                .filter(|(id, _)| **id != annotation.camera)
                .min_by_key(|(_, v)| v.last_ms())
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some(v) = cams.remove(&oldest) {
                bytes -= v.image.len();
            }
        }
    }

    /// Frame bytes held (all cameras).
    pub fn bytes(&self) -> usize {
        self.cameras.lock().unwrap_or_else(|p| p.into_inner()).values().map(|v| v.image.len()).sum()
    }

    /// Every camera's view, by camera id.
    pub fn snapshot(&self) -> Vec<CameraView> {
        self.cameras.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The newest frame of `camera`: content type and bytes.
    pub fn image(&self, camera: &str) -> Option<(String, Arc<Vec<u8>>)> {
        let cams = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        cams.get(camera).map(|v| (v.annotation.content_type.clone(), v.image.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(camera: &str) -> FrameAnnotation {
        FrameAnnotation {
            schema: crate::records::SCHEMA_VERSION,
            frame_id: "g:0".into(),
            gateway_id: "g".into(),
            seq: 0,
            camera: camera.into(),
            camera_seq: None,
            captured_at_ms: None,
            received_at_ms: 0,
            content_type: "image/jpeg".into(),
            frame_bytes: 0,
            sampled: None,
            annotation: crate::detect::not_annotated(),
        }
    }

    #[test]
    fn bounded_by_cameras_and_bytes_evicting_the_oldest() {
        let v = LatestFrames::with_limits(3, 1000);
        for (i, cam) in ["a", "b", "c", "d"].iter().enumerate() {
            v.record(&ann(cam), vec![0; 100], i as u64);
        }
        let ids: Vec<String> = v.snapshot().iter().map(|c| c.annotation.camera.clone()).collect();
        assert_eq!(ids, vec!["b", "c", "d"], "the camera seen longest ago goes");
        v.record(&ann("b"), vec![0; 100], 10);
        v.record(&ann("e"), vec![0; 700], 11);
        let ids: Vec<String> = v.snapshot().iter().map(|c| c.annotation.camera.clone()).collect();
        assert_eq!(ids, vec!["b", "d", "e"], "a fourth camera evicts the one seen longest ago (c)");
        v.record(&ann("e"), vec![0; 950], 12);
        let ids: Vec<String> = v.snapshot().iter().map(|c| c.annotation.camera.clone()).collect();
        assert_eq!(ids, vec!["e"], "bytes over budget evict the oldest first (d, then b)");
        assert!(v.bytes() <= 1000);
        v.record(&ann("f"), vec![0; 5000], 13);
        assert_eq!(v.image("f").map(|(_, b)| b.len()), Some(0), "too large to keep: shown without picture");
        // 10,000 camera ids: still bounded.
        for i in 0..10_000u64 {
            v.record(&ann(&format!("cam{i}")), vec![0; 300], 100 + i);
            assert!(v.bytes() <= 1000 && v.snapshot().len() <= 3);
        }
    }
}
