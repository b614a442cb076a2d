//! What the face upload accepts: a whole JPEG or PNG, of a bounded size.
//! The one place that tells an image from other bytes.

/// The largest face facefs uploads. The ACS upload page names no limit;
/// Feishu's other image uploads (`im/v1/images`) take at most 10 MB, and a
/// face for a door reader is tens of KB, so anything larger is refused
/// before it is sent (an inference, documented in the README).
pub const MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024;

/// The upload's `file_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageType {
    Jpeg,
    Png,
}

const JPEG_START: &[u8] = &[0xff, 0xd8, 0xff];
const JPEG_END: &[u8] = &[0xff, 0xd9];
const PNG_START: &[u8] = &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
/// The IEND chunk every PNG ends with: length 0, type, CRC.
const PNG_END: &[u8] = &[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82];

impl ImageType {
    /// The `file_type` part's value.
    pub fn file_type(self) -> &'static str {
        match self {
            ImageType::Jpeg => "jpg",
            ImageType::Png => "png",
        }
    }

    /// The `file_name` part's value: a name with its suffix. Not the id,
    /// which need not be a valid file name (and is personal data).
    pub fn file_name(self) -> &'static str {
        match self {
            ImageType::Jpeg => "face.jpg",
            ImageType::Png => "face.png",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageType::Jpeg => "image/jpeg",
            ImageType::Png => "image/png",
        }
    }

    /// The type of a whole image, or `None`: neither a JPEG nor a PNG, or
    /// one cut short. The end is checked as well as the start, so that a
    /// copy killed half-way (whose close still reaches facefs) is refused
    /// rather than uploaded. Zero bytes after a JPEG's end are allowed
    /// (some writers pad).
    pub fn of_whole(bytes: &[u8]) -> Option<ImageType> {
        if bytes.starts_with(PNG_START) && bytes.ends_with(PNG_END) {
            return Some(ImageType::Png);
        }
        if bytes.starts_with(JPEG_START) {
            let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            if end > JPEG_START.len() && bytes[..end].ends_with(JPEG_END) {
                return Some(ImageType::Jpeg);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_images_only() {
        let jpeg = crate::emulator::face_image::face_jpeg(7, 40, 50);
        assert_eq!(ImageType::of_whole(&jpeg), Some(ImageType::Jpeg));
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(ImageType::of_whole(&padded), Some(ImageType::Jpeg));
        for cut in [1, 2, jpeg.len() / 2, jpeg.len() - 1] {
            assert_eq!(ImageType::of_whole(&jpeg[..cut]), None, "cut at {cut}");
        }
        let mut png = PNG_START.to_vec();
        png.extend_from_slice(b"\0\0\0\rIHDR-rest-of-it");
        png.extend_from_slice(PNG_END);
        assert_eq!(ImageType::of_whole(&png), Some(ImageType::Png));
        assert_eq!(ImageType::of_whole(&png[..png.len() - 1]), None);
        for other in [
            &b""[..],
            b"hello\n",
            b"GIF89a....",
            &[0xff, 0xd8, 0xff, 0xd9][..3],
        ] {
            assert_eq!(ImageType::of_whole(other), None, "{other:?}");
        }
    }
}
