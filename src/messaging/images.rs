//! Raster images among stored files: which ones are images (from their bytes, never from
//! the type a client declared) and their thumbnails.
//!
//! - [`sniff`] knows PNG, JPEG, GIF and WebP by their signatures. Anything else, SVG
//!   included (it is a document that can carry script), is not an image here and stays
//!   an attachment.
//! - [`probe`] reads only the header, from the file's first [`PROBE_BYTES`] (some
//!   decoders read their whole input before looking at it): the format from the
//!   signature, the dimensions (as shown, after the EXIF orientation) and whether they
//!   and the file's size are within [`ImageLimits`]. A file that passes becomes an image
//!   message (`width`, `height`).
//! - Both read headers with [`HEADER_ALLOC`] of memory at most.
//! - [`thumbnail`] decodes the whole image under the same limits and a cap on the memory
//!   the decoder may allocate (the pixel limit at the image's own bytes per pixel), so a
//!   small file that claims or unpacks to a huge picture (a decompression bomb, or a GIF
//!   frame larger than its declared screen) is refused before its pixels are allocated.
//!   It shrinks first and turns the small copy upright after, so the peak is the decoded
//!   pixels once. It runs on a blocking thread, one at a time per node (the caller holds
//!   a permit), and writes a new image (JPEG, or PNG when there is transparency), so
//!   nothing but pixels survives from the upload: no metadata, no trailing bytes.
//!
//! All functions here are blocking.

use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// How much of a file [`probe`] reads: the headers of the four formats are far smaller
/// (a JPEG's metadata segments are at most 64 KiB each).
pub const PROBE_BYTES: u64 = 1 << 20;

/// The memory a decoder may allocate while it reads a header: what a header unpacks past
/// this (a PNG's colour profile inflated to hundreds of MB; colour profiles are not used
/// here) is dropped or refused, not allocated. The pixels get their own cap after.
const HEADER_ALLOC: u64 = 8 << 20;

/// Thumbnails fit in a square of this many pixels (shown at up to half that, so they stay
/// sharp on high-density screens).
pub const THUMBNAIL_BOX: u32 = 480;

/// What a decodable image may be; past either limit a file is an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Width and height, each.
    pub max_side: u32,
    /// Width × height.
    pub max_pixels: u64,
}

impl ImageLimits {
    /// The largest file taken for an image: 4 bytes a pixel of the limit and 16 MiB (a
    /// compressed image is smaller; a JPEG is read whole into memory to be decoded).
    pub fn max_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(4).saturating_add(16 << 20)
    }

    fn allows(&self, width: u32, height: u32) -> bool {
        width >= 1
            && height >= 1
            && width <= self.max_side
            && height <= self.max_side
            && u64::from(width) * u64::from(height) <= self.max_pixels
    }

    /// The decoder's own limits: the dimensions, and `max_alloc` bytes.
    fn decoder(&self, max_alloc: u64) -> Limits {
        let mut l = Limits::default();
        l.max_image_width = Some(self.max_side);
        l.max_image_height = Some(self.max_side);
        l.max_alloc = Some(max_alloc);
        l
    }

    /// Memory for the pixels of the limit at `bytes_per_pixel`, plus 16 MiB for the
    /// decoder's buffers.
    fn pixels_alloc(&self, bytes_per_pixel: u64) -> u64 {
        self.max_pixels.saturating_mul(bytes_per_pixel).saturating_add(16 << 20)
    }
}

/// An image as a probe found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// As shown: after the EXIF orientation.
    pub width: u32,
    pub height: u32,
}

impl ImageInfo {
    pub fn mime(&self) -> &'static str {
        mime_of(self.format)
    }
}

fn mime_of(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Gif => "image/gif",
        ImageFormat::WebP => "image/webp",
        _ => "application/octet-stream",
    }
}

/// The format, from the first bytes (at least 12 are needed for WebP).
pub fn sniff(head: &[u8]) -> Option<ImageFormat> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// The MIME type of an image this module wrote (a thumbnail), from its bytes.
pub fn thumbnail_mime(head: &[u8]) -> &'static str {
    sniff(head).map_or("application/octet-stream", mime_of)
}

/// The file at `path` opened for decoding in the format its signature shows, with
/// [`HEADER_ALLOC`] for its header.
fn reader(
    path: &Path,
    limits: &ImageLimits,
) -> std::io::Result<Option<(ImageFormat, ImageReader<BufReader<std::fs::File>>)>> {
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    let Some(format) = sniff(&head[..got]) else { return Ok(None) };
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut r = ImageReader::with_format(BufReader::new(file), format);
    r.limits(limits.decoder(HEADER_ALLOC));
    Ok(Some((format, r)))
}

/// Whether the file at `path` is an image within `limits`, from its header; `None` for
/// anything else (not an image, a damaged header, too large). Errors are I/O errors only.
pub fn probe(path: &Path, limits: &ImageLimits) -> std::io::Result<Option<ImageInfo>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > limits.max_bytes() {
        return Ok(None);
    }
    let mut head = Vec::new();
    file.take(PROBE_BYTES).read_to_end(&mut head)?;
    let Some(format) = sniff(&head) else { return Ok(None) };
    let mut r = ImageReader::with_format(Cursor::new(head), format);
    r.limits(limits.decoder(HEADER_ALLOC));
    let Ok(mut decoder) = r.into_decoder() else { return Ok(None) };
    let (w, h) = decoder.dimensions();
    if !limits.allows(w, h) {
        return Ok(None);
    }
    let turned = decoder.orientation().is_ok_and(|o| {
        use image::metadata::Orientation::*;
        matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
    });
    let (width, height) = if turned { (h, w) } else { (w, h) };
    Ok(Some(ImageInfo { format, width, height }))
}

/// Why no thumbnail was made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not an image, damaged, or past the limits: it stays an attachment.
    #[error("not a usable image: {0}")]
    NotAnImage(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decodes the image at `path` within `limits` and returns a thumbnail that fits in
/// [`THUMBNAIL_BOX`] (never larger than the image), upright, as a new JPEG or PNG.
pub fn thumbnail(path: &Path, limits: &ImageLimits) -> Result<Vec<u8>, ThumbnailError> {
    let bad = |e: image::ImageError| ThumbnailError::NotAnImage(e.to_string());
    let (_, r) = reader(path, limits)?.ok_or_else(|| ThumbnailError::NotAnImage("unknown format".into()))?;
    if std::fs::metadata(path)?.len() > limits.max_bytes() {
        return Err(ThumbnailError::NotAnImage("the file is larger than an image within the limits".into()));
    }
    let mut decoder = r.into_decoder().map_err(bad)?;
    let (w, h) = decoder.dimensions();
    if !limits.allows(w, h) {
        return Err(ThumbnailError::NotAnImage(format!("{w}×{h} is past the limits")));
    }
    // The pixels of the limit at this image's own size of a pixel: a frame larger than
    // the dimensions the header gave (GIF) cannot take more.
    decoder
        .set_limits(limits.decoder(limits.pixels_alloc(u64::from(decoder.color_type().bytes_per_pixel()))))
        .map_err(bad)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    // A GIF's first frame may be larger than the screen its header declared.
    if !limits.allows(img.width(), img.height()) {
        return Err(ThumbnailError::NotAnImage(format!("{}×{} is past the limits", img.width(), img.height())));
    }
    // Shrunk first, turned upright after: the box is square, so the turned copy fits too.
    let mut small = if img.width() > THUMBNAIL_BOX || img.height() > THUMBNAIL_BOX {
        img.thumbnail(THUMBNAIL_BOX, THUMBNAIL_BOX)
    } else {
        img
    };
    small.apply_orientation(orientation);
    let mut out = Cursor::new(Vec::new());
    if small.color().has_alpha() {
        small.to_rgba8().write_to(&mut out, ImageFormat::Png).map_err(bad)?;
    } else {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82).encode_image(&small.to_rgb8()).map_err(bad)?;
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_four_formats_and_nothing_else() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\r"), Some(ImageFormat::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ImageFormat::WebP));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\">"), None);
        assert_eq!(sniff(b"GIF8"), None);
        assert_eq!(sniff(b""), None);
    }

    fn probed(bytes: &[u8]) -> Option<(u32, u32)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let limits = crate::config::FilesConfig::default().image_limits();
        probe(&path, &limits).unwrap().map(|i| (i.width, i.height))
    }

    /// The probe's small memory allowance is for what a header unpacks, not for the
    /// picture: large images are still recognised.
    #[test]
    fn large_images_are_recognised_from_their_headers() {
        // A PNG header of 7000 × 7000 (49 Mpx, 16-bit RGBA: 392 MB decoded).
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = png.len();
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            let crc = {
                let mut c = flate2::Crc::new();
                c.update(&png[start..]);
                c.sum()
            };
            png.extend_from_slice(&crc.to_be_bytes());
        };
        let mut ihdr = 7000u32.to_be_bytes().repeat(2);
        ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]);
        chunk(b"IEND", &[]);
        assert_eq!(probed(&png), Some((7000, 7000)));
        // A JPEG whose frame header says 6000 × 4000.
        let mut jpeg = Cursor::new(Vec::new());
        DynamicImage::new_rgb8(16, 16).write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        let mut jpeg = jpeg.into_inner();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&4000u16.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&6000u16.to_be_bytes());
        assert_eq!(probed(&jpeg), Some((6000, 4000)));
        // Past the pixel limit (50 million): not an image.
        jpeg[sof + 5..sof + 7].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(probed(&jpeg), None);
    }

    #[test]
    fn limits_bound_each_side_and_the_pixel_count() {
        let l = ImageLimits { max_side: 1000, max_pixels: 500_000 };
        assert!(l.allows(1000, 500));
        assert!(!l.allows(1001, 10));
        assert!(!l.allows(10, 1001));
        assert!(!l.allows(1000, 501));
        assert!(!l.allows(0, 10));
    }
}
