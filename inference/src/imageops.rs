//! Image operations that must match the reference pipeline (OpenCV, as used
//! by the Python PP-OCR reference) closely: decoding into BGR, bilinear
//! resize with OpenCV's pixel-centre mapping and fixed-point rounding, and a
//! bicubic perspective warp with replicated borders.
//!
//! Promise: results differ from OpenCV's by at most one grey level per
//! sample (OpenCV's vector and scalar paths differ by that much too). Loops
//! are separable with precomputed indices and weights so they vectorise.

use crate::InferenceError;

/// An 8-bit, 3-channel image in BGR order, row-major, HWC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgr {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl Bgr {
    /// Sample at (x, y), channel c.
    #[inline]
    pub fn at(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * 3 + c]
    }
}

/// Decodes JPEG or PNG bytes into BGR, refusing pictures above `max_pixels`
/// before allocating them.
///
/// # Errors
/// [`InferenceError::Decode`] with the decoder's message.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Bgr, InferenceError> {
    let (w, h) = dimensions(bytes)?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(InferenceError::Decode(format!("{w}x{h} is more than {max_pixels} pixels")));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| InferenceError::Decode(e.to_string()))?;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| InferenceError::Decode(e.to_string()))?.to_rgb8();
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut data = img.into_raw();
    for px in data.chunks_exact_mut(3) {
        px.swap(0, 2);
    }
    Ok(Bgr { width, height, data })
}

/// Width and height from the image's header, without decoding it.
///
/// # Errors
/// [`InferenceError::Decode`] if the format is unknown or the header bad.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), InferenceError> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| InferenceError::Decode(e.to_string()))?
        .into_dimensions()
        .map_err(|e| InferenceError::Decode(e.to_string()))
}

const COEF_BITS: i32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Source index and fixed-point weights for each destination coordinate,
/// as OpenCV's INTER_LINEAR computes them.
fn linear_taps(src: usize, dst: usize) -> Vec<(usize, usize, i32, i32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let mut s = f.floor() as i64;
            let mut fr = (f - s as f64) as f32;
            if s < 0 {
                s = 0;
                fr = 0.0;
            }
            if s as usize >= src - 1 {
                s = src as i64 - 1;
                fr = 0.0;
            }
            let a0 = ((1.0 - fr) * COEF_SCALE).round() as i32;
            let s = s as usize;
            (s, (s + 1).min(src - 1), a0, (1 << COEF_BITS) - a0)
        })
        .collect()
}

/// Bilinear resize with OpenCV's `INTER_LINEAR` semantics for 8-bit images.
pub fn resize_linear(img: &Bgr, width: usize, height: usize) -> Bgr {
    if width == img.width && height == img.height {
        return img.clone();
    }
    let xs = linear_taps(img.width, width);
    let ys = linear_taps(img.height, height);
    // Horizontal pass into fixed-point rows, computed once per source row.
    let mut rows: Vec<Option<Vec<i32>>> = vec![None; img.height];
    let hrow = |sy: usize, rows: &mut Vec<Option<Vec<i32>>>| {
        if rows[sy].is_none() {
            let src = &img.data[sy * img.width * 3..(sy + 1) * img.width * 3];
            let mut out = vec![0i32; width * 3];
            for (d, &(s0, s1, a0, a1)) in xs.iter().enumerate() {
                for c in 0..3 {
                    out[d * 3 + c] = i32::from(src[s0 * 3 + c]) * a0 + i32::from(src[s1 * 3 + c]) * a1;
                }
            }
            rows[sy] = Some(out);
        }
    };
    let mut data = vec![0u8; width * height * 3];
    for (dy, &(s0, s1, b0, b1)) in ys.iter().enumerate() {
        hrow(s0, &mut rows);
        hrow(s1, &mut rows);
        let (Some(r0), Some(r1)) = (&rows[s0], &rows[s1]) else { continue };
        let out = &mut data[dy * width * 3..(dy + 1) * width * 3];
        for i in 0..width * 3 {
            // OpenCV's vectorised vertical pass: high halves of 16-bit products.
            let x0 = ((r0[i] >> 4) * b0) >> 16;
            let x1 = ((r1[i] >> 4) * b1) >> 16;
            out[i] = ((x0 + x1 + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    Bgr { width, height, data }
}

/// The 3x3 matrix mapping the four `src` points onto the four `dst`
/// points (OpenCV's `getPerspectiveTransform`).
pub fn perspective_transform(src: &[[f64; 2]; 4], dst: &[[f64; 2]; 4]) -> Option<[[f64; 3]; 3]> {
    let mut a = [[0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (src[i], dst[i]);
        a[i] = [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u, u];
        a[i + 4] = [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v, v];
    }
    // Gauss-Jordan with partial pivoting.
    for col in 0..8 {
        let piv = (col..8).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        let pivot_row = a[col];
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(pivot_row.iter()).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    let h: Vec<f64> = (0..8).map(|i| a[i][8] / a[i][i]).collect();
    Some([[h[0], h[1], h[2]], [h[3], h[4], h[5]], [h[6], h[7], 1.0]])
}

fn invert3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-15 {
        return None;
    }
    let d = 1.0 / det;
    Some([
        [
            (m[1][1] * m[2][2] - m[1][2] * m[2][1]) * d,
            (m[0][2] * m[2][1] - m[0][1] * m[2][2]) * d,
            (m[0][1] * m[1][2] - m[0][2] * m[1][1]) * d,
        ],
        [
            (m[1][2] * m[2][0] - m[1][0] * m[2][2]) * d,
            (m[0][0] * m[2][2] - m[0][2] * m[2][0]) * d,
            (m[0][2] * m[1][0] - m[0][0] * m[1][2]) * d,
        ],
        [
            (m[1][0] * m[2][1] - m[1][1] * m[2][0]) * d,
            (m[0][1] * m[2][0] - m[0][0] * m[2][1]) * d,
            (m[0][0] * m[1][1] - m[0][1] * m[1][0]) * d,
        ],
    ])
}

fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let x0 = t + 1.0;
    let x1 = t;
    let x2 = 1.0 - t;
    [
        ((A * x0 - 5.0 * A) * x0 + 8.0 * A) * x0 - 4.0 * A,
        ((A + 2.0) * x1 - (A + 3.0)) * x1 * x1 + 1.0,
        ((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0,
        1.0 - (((A * x0 - 5.0 * A) * x0 + 8.0 * A) * x0 - 4.0 * A)
            - (((A + 2.0) * x1 - (A + 3.0)) * x1 * x1 + 1.0)
            - (((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0),
    ]
}

/// `warpPerspective(img, m, (width, height), INTER_CUBIC, BORDER_REPLICATE)`:
/// each destination pixel samples the source at `m⁻¹ · (x, y, 1)`, with
/// coordinates quantised to 1/32 pixel as OpenCV does.
pub fn warp_perspective_cubic(img: &Bgr, m: &[[f64; 3]; 3], width: usize, height: usize) -> Option<Bgr> {
    let inv = invert3(m)?;
    let mut data = vec![0u8; width * height * 3];
    let (w, h) = (img.width as i64, img.height as i64);
    for y in 0..height {
        for x in 0..width {
            let (xf, yf) = (x as f64, y as f64);
            let wq = inv[2][0] * xf + inv[2][1] * yf + inv[2][2];
            let wq = if wq != 0.0 { 32.0 / wq } else { 0.0 };
            let sx = ((inv[0][0] * xf + inv[0][1] * yf + inv[0][2]) * wq).round() as i64;
            let sy = ((inv[1][0] * xf + inv[1][1] * yf + inv[1][2]) * wq).round() as i64;
            let (ix, fx) = (sx >> 5, (sx & 31) as f32 / 32.0);
            let (iy, fy) = (sy >> 5, (sy & 31) as f32 / 32.0);
            let (wx, wy) = (cubic_weights(fx), cubic_weights(fy));
            for c in 0..3 {
                let mut acc = 0f32;
                for (j, wyj) in wy.iter().enumerate() {
                    let yy = (iy - 1 + j as i64).clamp(0, h - 1) as usize;
                    let mut row = 0f32;
                    for (i, wxi) in wx.iter().enumerate() {
                        let xx = (ix - 1 + i as i64).clamp(0, w - 1) as usize;
                        row += f32::from(img.at(xx, yy, c)) * wxi;
                    }
                    acc += row * wyj;
                }
                data[(y * width + x) * 3 + c] = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Some(Bgr { width, height, data })
}

/// Rotates 90° counter-clockwise (numpy's `rot90`).
pub fn rot90(img: &Bgr) -> Bgr {
    let (w, h) = (img.height, img.width);
    let mut data = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            // dst(y, x) = src(x, W_src - 1 - y)
            for c in 0..3 {
                data[(y * w + x) * 3 + c] = img.at(img.width - 1 - y, x, c);
            }
        }
    }
    Bgr { width: w, height: h, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Bgr {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8]);
            }
        }
        Bgr { width: w, height: h, data }
    }

    #[test]
    fn resize_identity_and_constant() {
        let g = gradient(10, 7);
        assert_eq!(resize_linear(&g, 10, 7), g);
        let c = Bgr { width: 4, height: 4, data: vec![200; 48] };
        assert!(resize_linear(&c, 9, 13).data.iter().all(|&v| v == 200));
    }

    #[test]
    fn resize_up_by_two_interpolates_halfway() {
        // 2 pixels 0 and 100 -> 4 pixels: 0, 25, 75, 100 (OpenCV).
        let img = Bgr { width: 2, height: 1, data: vec![0, 0, 0, 100, 100, 100] };
        let r = resize_linear(&img, 4, 1);
        let row: Vec<u8> = r.data.chunks(3).map(|p| p[0]).collect();
        assert_eq!(row, vec![0, 25, 75, 100]);
    }

    #[test]
    fn perspective_of_a_translation() {
        let src = [[10.0, 20.0], [30.0, 20.0], [30.0, 40.0], [10.0, 40.0]];
        let dst = [[0.0, 0.0], [20.0, 0.0], [20.0, 20.0], [0.0, 20.0]];
        let m = perspective_transform(&src, &dst).unwrap();
        assert!((m[0][2] + 10.0).abs() < 1e-9 && (m[1][2] + 20.0).abs() < 1e-9);
        let g = gradient(64, 64);
        let out = warp_perspective_cubic(&g, &m, 20, 20).unwrap();
        // An integer translation samples exact pixels.
        assert_eq!(out.at(3, 4, 0), g.at(13, 24, 0));
        assert_eq!(out.at(19, 19, 2), g.at(29, 39, 2));
    }

    #[test]
    fn rot90_is_counter_clockwise() {
        let g = gradient(3, 2);
        let r = rot90(&g);
        assert_eq!((r.width, r.height), (2, 3));
        assert_eq!(r.at(0, 0, 0), g.at(2, 0, 0));
        assert_eq!(r.at(1, 2, 1), g.at(0, 1, 1));
    }

    #[test]
    fn decode_refuses_bombs_before_allocating() {
        let mut png = Vec::new();
        let img = image::RgbImage::new(4, 4);
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let d = decode(&png, 100).unwrap();
        assert_eq!((d.width, d.height), (4, 4));
        assert!(decode(&png, 10).is_err());
        assert!(decode(b"not an image", 100).is_err());
    }
}
