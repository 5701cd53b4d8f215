//! The latest annotated frame of each camera, kept in memory for the status
//! page.
//!
//! Owns nothing durable: the detect stage hands over each frame it has just
//! committed (the bytes it would otherwise free), and only the newest frame
//! per camera is kept, for at most [`MAX_CAMERAS`] cameras. Reading is a
//! short lock and a clone of reference-counted bytes, so a page view never
//! slows the pipeline.

use crate::detect::FrameAnnotation;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Cameras shown at most; frames of further cameras are not kept.
pub const MAX_CAMERAS: usize = 256;
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
#[derive(Debug, Default)]
pub struct LatestFrames {
    cameras: Mutex<BTreeMap<String, CameraView>>,
}

impl LatestFrames {
    /// Keeps `image` as the newest frame of its camera.
    pub fn record(&self, annotation: &FrameAnnotation, image: Vec<u8>, now_ms: u64) {
        let mut cams = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cams.get_mut(&annotation.camera) {
            v.annotation = annotation.clone();
            v.image = Arc::new(image);
            v.frames += 1;
            if v.recent_ms.len() == RATE_WINDOW {
                v.recent_ms.pop_front();
            }
            v.recent_ms.push_back(now_ms);
        } else if cams.len() < MAX_CAMERAS {
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
