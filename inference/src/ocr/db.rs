//! DB (Differentiable Binarization) post-processing of PP-OCR's text
//! detector: probability map -> text boxes, as the reference (RapidOCR /
//! PaddleOCR `DBPostProcess`, score mode "fast", 2x2 dilation) does it.
//!
//! Steps: threshold, dilate, connected regions (8-connectivity, like
//! OpenCV's contours), minimum-area rectangle of each region, mean
//! probability inside it (box score), unclip (grow by area x ratio /
//! perimeter on every side), minimum-area rectangle again, scale to the
//! original image.

/// Parameters (defaults of the reference).
#[derive(Debug, Clone, Copy)]
pub struct DbParams {
    /// Probability threshold of the text mask.
    pub thresh: f32,
    /// Minimum mean probability inside a box.
    pub box_thresh: f32,
    /// Regions considered at most.
    pub max_candidates: usize,
    /// Growth of each box.
    pub unclip_ratio: f32,
}

impl Default for DbParams {
    fn default() -> Self {
        Self { thresh: 0.3, box_thresh: 0.5, max_candidates: 1000, unclip_ratio: 1.6 }
    }
}

/// A rotated rectangle: centre, size and the unit vectors of its sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotRect {
    /// Centre.
    pub center: [f64; 2],
    /// Side lengths along `u` and `v`.
    pub size: [f64; 2],
    /// Unit vector of the first side.
    pub u: [f64; 2],
}

impl RotRect {
    /// The four corners.
    pub fn corners(&self) -> [[f64; 2]; 4] {
        let v = [-self.u[1], self.u[0]];
        let (hw, hh) = (self.size[0] / 2.0, self.size[1] / 2.0);
        let c = self.center;
        let p = |a: f64, b: f64| [c[0] + a * self.u[0] + b * v[0], c[1] + a * self.u[1] + b * v[1]];
        [p(-hw, -hh), p(hw, -hh), p(hw, hh), p(-hw, hh)]
    }

    /// Shorter side.
    pub fn short_side(&self) -> f64 {
        self.size[0].min(self.size[1])
    }
}

fn cross(o: [i64; 2], a: [i64; 2], b: [i64; 2]) -> i64 {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

/// Convex hull (monotone chain), counter-clockwise, no collinear points.
pub fn convex_hull(mut pts: Vec<[i64; 2]>) -> Vec<[i64; 2]> {
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let mut lower: Vec<[i64; 2]> = Vec::new();
    for &p in &pts {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], p) <= 0 {
            lower.pop();
        }
        lower.push(p);
    }
    let mut upper: Vec<[i64; 2]> = Vec::new();
    for &p in pts.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], p) <= 0 {
            upper.pop();
        }
        upper.push(p);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

/// Minimum-area enclosing rectangle of points (rotating calipers over the
/// hull edges).
pub fn min_area_rect(points: &[[f64; 2]]) -> RotRect {
    let hull =
        convex_hull(points.iter().map(|p| [(p[0] * 1024.0).round() as i64, (p[1] * 1024.0).round() as i64]).collect());
    let hull: Vec<[f64; 2]> = hull.iter().map(|p| [p[0] as f64 / 1024.0, p[1] as f64 / 1024.0]).collect();
    if hull.len() < 2 {
        let c = hull.first().copied().unwrap_or([0.0, 0.0]);
        return RotRect { center: c, size: [0.0, 0.0], u: [1.0, 0.0] };
    }
    let mut best: Option<(f64, RotRect)> = None;
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len = (dx * dx + dy * dy).sqrt();
        if len == 0.0 {
            continue;
        }
        let u = [dx / len, dy / len];
        let v = [-u[1], u[0]];
        let (mut umin, mut umax, mut vmin, mut vmax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in &hull {
            let pu = p[0] * u[0] + p[1] * u[1];
            let pv = p[0] * v[0] + p[1] * v[1];
            umin = umin.min(pu);
            umax = umax.max(pu);
            vmin = vmin.min(pv);
            vmax = vmax.max(pv);
        }
        let area = (umax - umin) * (vmax - vmin);
        if best.as_ref().is_none_or(|(b, _)| area < *b - 1e-9) {
            let (cu, cv) = ((umin + umax) / 2.0, (vmin + vmax) / 2.0);
            let center = [cu * u[0] + cv * v[0], cu * u[1] + cv * v[1]];
            best = Some((area, RotRect { center, size: [umax - umin, vmax - vmin], u }));
        }
    }
    best.map_or(RotRect { center: hull[0], size: [0.0, 0.0], u: [1.0, 0.0] }, |(_, r)| r)
}

/// Orders box corners as the reference's `get_mini_boxes` does: sorted by x,
/// then (top-left, top-right, bottom-right, bottom-left) by y within the
/// left and right pairs.
pub fn mini_box_order(c: [[f64; 2]; 4]) -> [[f64; 2]; 4] {
    let mut p = c;
    p.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (i1, i4) = if p[1][1] > p[0][1] { (0, 1) } else { (1, 0) };
    let (i2, i3) = if p[3][1] > p[2][1] { (2, 3) } else { (3, 2) };
    [p[i1], p[i2], p[i3], p[i4]]
}

/// Mean of `pred` over the pixels inside the polygon `quad` (truncated to
/// integers, as the reference fills it), within its clipped bounding box.
fn box_score(pred: &[f32], w: usize, h: usize, quad: &[[f64; 2]; 4]) -> f32 {
    let xmin = (quad.iter().map(|p| p[0]).fold(f64::MAX, f64::min).floor() as i64).clamp(0, w as i64 - 1);
    let xmax = (quad.iter().map(|p| p[0]).fold(f64::MIN, f64::max).ceil() as i64).clamp(0, w as i64 - 1);
    let ymin = (quad.iter().map(|p| p[1]).fold(f64::MAX, f64::min).floor() as i64).clamp(0, h as i64 - 1);
    let ymax = (quad.iter().map(|p| p[1]).fold(f64::MIN, f64::max).ceil() as i64).clamp(0, h as i64 - 1);
    let q: Vec<[f64; 2]> = quad.iter().map(|p| [p[0].trunc(), p[1].trunc()]).collect();
    let inside = |x: f64, y: f64| {
        // Inside or on the edge of a convex polygon, either orientation.
        let mut sign = 0i32;
        for i in 0..4 {
            let (a, b) = (q[i], q[(i + 1) % 4]);
            let c = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
            if c.abs() < 1e-9 {
                continue;
            }
            let s = if c > 0.0 { 1 } else { -1 };
            if sign == 0 {
                sign = s;
            } else if s != sign {
                return false;
            }
        }
        true
    };
    let (mut sum, mut n) = (0f64, 0u64);
    for y in ymin..=ymax {
        for x in xmin..=xmax {
            if inside(x as f64, y as f64) {
                sum += f64::from(pred[y as usize * w + x as usize]);
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        (sum / n as f64) as f32
    }
}

fn polygon_area(q: &[[f64; 2]]) -> f64 {
    let n = q.len();
    (0..n).map(|i| q[i][0] * q[(i + 1) % n][1] - q[(i + 1) % n][0] * q[i][1]).sum::<f64>() / 2.0
}

fn perimeter(q: &[[f64; 2]]) -> f64 {
    let n = q.len();
    (0..n).map(|i| ((q[(i + 1) % n][0] - q[i][0]).powi(2) + (q[(i + 1) % n][1] - q[i][1]).powi(2)).sqrt()).sum()
}

/// Clipper's rounding (half away from zero).
fn cround(v: f64) -> f64 {
    if v < 0.0 {
        (v - 0.5).trunc()
    } else {
        (v + 0.5).trunc()
    }
}

/// Outward offset of a closed polygon by `delta` with round joins, as
/// Clipper 6 (`ClipperOffset`, `JT_ROUND`, arc tolerance 0.25) computes it:
/// input truncated to integers, output vertices rounded to integers.
pub fn offset_round(poly: &[[f64; 2]], delta: f64) -> Vec<[f64; 2]> {
    let mut src: Vec<[f64; 2]> = poly.iter().map(|p| [p[0].trunc(), p[1].trunc()]).collect();
    src.dedup();
    if polygon_area(&src) < 0.0 {
        src.reverse();
    }
    let n = src.len();
    if n < 3 || delta <= 0.0 {
        return src;
    }
    let normals: Vec<[f64; 2]> = (0..n)
        .map(|j| {
            let (a, b) = (src[j], src[(j + 1) % n]);
            let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
            let f = 1.0 / (dx * dx + dy * dy).sqrt();
            [dy * f, -dx * f]
        })
        .collect();
    let two_pi = std::f64::consts::TAU;
    let mut steps = std::f64::consts::PI / (1.0 - 0.25 / delta).acos();
    if steps > delta * std::f64::consts::PI {
        steps = delta * std::f64::consts::PI;
    }
    let (sin, cos) = ((two_pi / steps).sin(), (two_pi / steps).cos());
    let steps_per_rad = steps / two_pi;
    let mut out = Vec::new();
    let mut k = n - 1;
    for j in 0..n {
        let (nk, nj, p) = (normals[k], normals[j], src[j]);
        let sin_a = (nk[0] * nj[1] - nj[0] * nk[1]).clamp(-1.0, 1.0);
        let cos_a = nk[0] * nj[0] + nk[1] * nj[1];
        if (sin_a * delta).abs() < 1.0 && cos_a > 0.0 {
            out.push([cround(p[0] + nk[0] * delta), cround(p[1] + nk[1] * delta)]);
        } else if sin_a * delta < 0.0 {
            out.push([cround(p[0] + nk[0] * delta), cround(p[1] + nk[1] * delta)]);
            out.push(p);
            out.push([cround(p[0] + nj[0] * delta), cround(p[1] + nj[1] * delta)]);
        } else {
            let a = sin_a.atan2(cos_a);
            let st = ((steps_per_rad * a.abs()).round() as i64).max(1);
            let (mut x, mut y) = (nk[0], nk[1]);
            for _ in 0..st {
                out.push([cround(p[0] + x * delta), cround(p[1] + y * delta)]);
                let x2 = x;
                x = x * cos - sin * y;
                y = x2 * sin + y * cos;
            }
            out.push([cround(p[0] + nj[0] * delta), cround(p[1] + nj[1] * delta)]);
        }
        k = j;
    }
    out
}

/// Text boxes found in a probability map of `(w, h)`, in the coordinates
/// of an image of `(dest_w, dest_h)`: corners (rounded, clipped) and box
/// score.
pub fn boxes_from_map(
    pred: &[f32],
    (w, h): (usize, usize),
    (dest_w, dest_h): (usize, usize),
    p: DbParams,
) -> Vec<([[f64; 2]; 4], f32)> {
    // Threshold and 2x2 dilation (anchor at the bottom-right of the kernel).
    let raw: Vec<bool> = pred.iter().map(|v| *v > p.thresh).collect();
    let mut mask = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            mask[y * w + x] = raw[y * w + x]
                || (x > 0 && raw[y * w + x - 1])
                || (y > 0 && raw[(y - 1) * w + x])
                || (x > 0 && y > 0 && raw[(y - 1) * w + x - 1]);
        }
    }
    // 8-connected regions; keep their border pixels (enough for the hull).
    let mut label = vec![0u32; w * h];
    let mut out = Vec::new();
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        if next as usize > p.max_candidates {
            break;
        }
        let mut border: Vec<[f64; 2]> = Vec::new();
        label[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % w) as i64, (i / w) as i64);
            let mut is_border = false;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    if dx == 0 && dy == 0 {
                        continue;
                    }
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        is_border = true;
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if !mask[j] {
                        is_border = true;
                    } else if label[j] == 0 {
                        label[j] = next;
                        stack.push(j);
                    }
                }
            }
            if is_border {
                border.push([x as f64, y as f64]);
            }
        }
        let rect = min_area_rect(&border);
        if rect.short_side() < 3.0 {
            continue;
        }
        let quad = mini_box_order(rect.corners().map(|c| [c[0] as f32 as f64, c[1] as f32 as f64]));
        let score = box_score(pred, w, h, &quad);
        if score < p.box_thresh {
            continue;
        }
        // Unclip: grow by area * ratio / perimeter, as Clipper's round
        // offset does it on integer coordinates.
        let d = polygon_area(&quad).abs() * f64::from(p.unclip_ratio) / perimeter(&quad);
        let grown = min_area_rect(&offset_round(&quad, d));
        if grown.short_side() < 5.0 {
            continue;
        }
        // The reference scales in float32 and rounds half to even.
        let quad = mini_box_order(grown.corners().map(|c| [c[0] as f32 as f64, c[1] as f32 as f64])).map(|c| {
            [
                f64::from((c[0] as f32 / w as f32 * dest_w as f32).round_ties_even()).clamp(0.0, dest_w as f64),
                f64::from((c[1] as f32 / h as f32 * dest_h as f32).round_ties_even()).clamp(0.0, dest_h as f64),
            ]
        });
        out.push((quad, score));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_area_rect_of_a_rotated_square() {
        let pts = [[0.0, 5.0], [5.0, 0.0], [10.0, 5.0], [5.0, 10.0]];
        let r = min_area_rect(&pts);
        assert!((r.size[0] - 50f64.sqrt()).abs() < 1e-3 && (r.size[1] - 50f64.sqrt()).abs() < 1e-3, "{r:?}");
        assert!((r.center[0] - 5.0).abs() < 1e-6 && (r.center[1] - 5.0).abs() < 1e-6);
    }

    #[test]
    fn a_bright_bar_becomes_one_grown_box() {
        let (w, h) = (64, 32);
        let mut pred = vec![0.0f32; w * h];
        for y in 10..16 {
            for x in 8..40 {
                pred[y * w + x] = 0.9;
            }
        }
        let boxes = boxes_from_map(&pred, (w, h), (w * 2, h * 2), DbParams::default());
        assert_eq!(boxes.len(), 1);
        let (q, s) = &boxes[0];
        // The dilated region is 33 x 7 pixels, of which 32 x 6 have 0.9.
        let want = 0.9 * (32.0 * 6.0) / (33.0 * 7.0);
        assert!((s - want).abs() < 1e-4, "score {s}, want {want}");
        // Region spans x 8..=40 (dilated), y 10..=16; grown by
        // d = 32*6*1.6/(2*38) ~ 4.04 on each side, then scaled by 2.
        let xs: Vec<f64> = q.iter().map(|p| p[0]).collect();
        let ys: Vec<f64> = q.iter().map(|p| p[1]).collect();
        let (x0, x1) = (xs.iter().cloned().fold(f64::MAX, f64::min), xs.iter().cloned().fold(f64::MIN, f64::max));
        let (y0, y1) = (ys.iter().cloned().fold(f64::MAX, f64::min), ys.iter().cloned().fold(f64::MIN, f64::max));
        assert!((x0 - 8.0).abs() <= 1.0 && (x1 - 88.0).abs() <= 1.0, "{q:?}");
        assert!((y0 - 12.0).abs() <= 1.0 && (y1 - 40.0).abs() <= 1.0, "{q:?}");
    }

    #[test]
    fn faint_or_tiny_regions_are_dropped() {
        let (w, h) = (32, 32);
        let mut pred = vec![0.0f32; w * h];
        pred[5 * w + 5] = 0.9; // one pixel: too small
        for y in 20..26 {
            for x in 4..28 {
                pred[y * w + x] = 0.35; // above thresh, below box_thresh
            }
        }
        assert!(boxes_from_map(&pred, (w, h), (w, h), DbParams::default()).is_empty());
    }
}
