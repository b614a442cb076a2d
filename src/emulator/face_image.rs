//! Generated faces: real JPEG files, different for every user and for the
//! full and cropped variants, the same on every run.

use jpeg_encoder::{ColorType, Encoder};

/// The crop the emulator serves for an uploaded face: a face of its own,
/// seeded by the upload's bytes (the real service cuts it out of them).
pub fn crop_of(image: &[u8]) -> Vec<u8> {
    face_jpeg(crate::hash::digest(image), 90, 90)
}

/// A cartoon face of `width` x `height` pixels, varied by `seed`, with
/// sensor-like noise so that it compresses like a photo, not like a drawing.
pub fn face_jpeg(seed: u64, width: u16, height: u16) -> Vec<u8> {
    let (w, h) = (f32::from(width), f32::from(height));
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || crate::hash::xorshift(&mut rng);
    let hue = (seed % 360) as f32;
    let background = hsv(hue, 0.35, 0.85);
    let skin = hsv(
        20.0 + (seed % 25) as f32,
        0.35 + (seed % 7) as f32 * 0.03,
        0.9,
    );
    let (cx, cy) = (w / 2.0, h / 2.0);
    let (rx, ry) = (w * 0.32, h * 0.38);
    let mut pixels = Vec::with_capacity(usize::from(width) * usize::from(height) * 3);
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (f32::from(x), f32::from(y));
            let in_ellipse = |ex: f32, ey: f32, erx: f32, ery: f32| {
                ((fx - ex) / erx).powi(2) + ((fy - ey) / ery).powi(2) <= 1.0
            };
            let mut c = background.map(|v| v * (0.75 + 0.25 * fy / h));
            if in_ellipse(cx, cy, rx, ry) {
                c = skin;
            }
            let eye_y = cy - ry * 0.25;
            if in_ellipse(cx - rx * 0.4, eye_y, rx * 0.14, ry * 0.08)
                || in_ellipse(cx + rx * 0.4, eye_y, rx * 0.14, ry * 0.08)
            {
                c = [0.15, 0.12, 0.1];
            }
            if in_ellipse(cx, cy + ry * 0.45, rx * 0.35, ry * 0.07) {
                c = [0.6, 0.2, 0.2];
            }
            let noise = (next() % 41) as f32 / 255.0 - 20.0 / 255.0;
            pixels.extend(c.map(|v| ((v + noise).clamp(0.0, 1.0) * 255.0) as u8));
        }
    }
    let mut out = Vec::new();
    Encoder::new(&mut out, 90)
        .encode(&pixels, width, height, ColorType::Rgb)
        .expect("encoding to memory cannot fail");
    out
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (h as u32 / 60) % 6 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [r + m, g + m, b + m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faces_are_jpegs_that_differ_by_seed() {
        let a = face_jpeg(1, 64, 80);
        let b = face_jpeg(2, 64, 80);
        assert_eq!(&a[..2], &[0xff, 0xd8], "JPEG start of image");
        assert_eq!(&a[a.len() - 2..], &[0xff, 0xd9], "JPEG end of image");
        assert_ne!(a, b);
        assert_eq!(a, face_jpeg(1, 64, 80), "deterministic");
    }
}
