//! Thumbnails: requests snap to the configured sizes (the spec's common ones by default);
//! images are decoded (with size limits against decompression bombs), scaled or cropped, and
//! encoded as PNG or JPEG, or as an animated GIF when an animation is asked for.
//! Everything here blocks: callers run it in the blocking pool.

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::Path;

use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::{
    AnimationDecoder, DynamicImage, Frame, Frames, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "crop" => Some(Method::Crop),
            "scale" => Some(Method::Scale),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// A thumbnail size and method (also the `[[media.thumbnail_sizes]]` entries of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub width: u32,
    pub height: u32,
    pub method: Method,
}

/// The sizes the spec says servers should produce (Synapse's default `thumbnail_sizes`).
pub const COMMON_SIZES: [Target; 5] = [
    Target { width: 32, height: 32, method: Method::Crop },
    Target { width: 96, height: 96, method: Method::Crop },
    Target { width: 320, height: 240, method: Method::Scale },
    Target { width: 640, height: 480, method: Method::Scale },
    Target { width: 800, height: 600, method: Method::Scale },
];

/// The configured size that serves a request: among the sizes of the asked method (all sizes
/// when none has it), the smallest at least as large as asked (never smaller than
/// requested), else the largest. `sizes` is not empty (the config checks it).
pub fn snap(sizes: &[Target], width: u32, height: u32, method: Method) -> Target {
    let area = |t: &Target| u64::from(t.width) * u64::from(t.height);
    let of_method: Vec<&Target> = sizes.iter().filter(|t| t.method == method).collect();
    let candidates = if of_method.is_empty() { sizes.iter().collect() } else { of_method };
    let covering =
        candidates.iter().copied().filter(|t| t.width >= width && t.height >= height).min_by_key(|t| area(t));
    let chosen = covering.or_else(|| candidates.iter().copied().max_by_key(|t| area(t)));
    chosen.copied().unwrap_or(COMMON_SIZES[0])
}

/// Files larger than this are never decoded.
pub const MAX_SOURCE_BYTES: u64 = 100 * 1024 * 1024;
/// Largest animated original sent as its own animated thumbnail when the animation is too
/// long to re-encode.
const MAX_ANIMATED_ORIGINAL_BYTES: u64 = 4 * 1024 * 1024;
/// Animations re-encoded at the thumbnail size have at most this many frames and source
/// pixels (all frames together): encoding GIF frames is slow.
const MAX_ANIMATION_FRAMES: usize = 300;
const MAX_ANIMATION_PIXELS: u64 = 100_000_000;
const MAX_DIMENSION: u32 = 16_384;
/// Larger images are not thumbnailed (Synapse's default `max_image_pixels`).
const MAX_PIXELS: u64 = 32_000_000;
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// What to send for a thumbnail request.
pub enum Rendered {
    /// The original file itself (already small enough, or an animation that may be sent).
    Original { content_type: &'static str },
    /// A newly encoded image.
    Image { bytes: Vec<u8>, content_type: &'static str },
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("cannot generate thumbnails for this content")]
    NotAnImage,
    #[error("content is too large to thumbnail")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("encoding the thumbnail failed: {0}")]
    Encode(ImageError),
}

fn decode_error(e: ImageError) -> ThumbnailError {
    match e {
        ImageError::Limits(_) => ThumbnailError::TooLarge,
        ImageError::IoError(e) => ThumbnailError::Io(e),
        _ => ThumbnailError::NotAnImage,
    }
}

fn mime(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Gif => "image/gif",
        _ => "image/webp",
    }
}

fn open(path: &Path) -> Result<BufReader<File>, ThumbnailError> {
    Ok(BufReader::new(File::open(path)?))
}

/// The format of an image file, judged by its bytes (not by the uploaded content type).
fn sniff(path: &Path) -> Result<ImageFormat, ThumbnailError> {
    let format = ImageReader::new(open(path)?).with_guessed_format()?.format();
    match format {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)) => Ok(f),
        _ => Err(ThumbnailError::NotAnImage),
    }
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits
}

/// The frames of an animation, each the whole canvas.
fn frames(path: &Path, format: ImageFormat) -> Result<Frames<'static>, ThumbnailError> {
    Ok(match format {
        ImageFormat::Gif => {
            let mut decoder = GifDecoder::new(open(path)?).map_err(decode_error)?;
            decoder.set_limits(limits()).map_err(decode_error)?;
            decoder.into_frames()
        }
        ImageFormat::WebP => {
            let mut decoder = WebPDecoder::new(open(path)?).map_err(decode_error)?;
            decoder.set_limits(limits()).map_err(decode_error)?;
            decoder.into_frames()
        }
        ImageFormat::Png => {
            let mut decoder = PngDecoder::new(open(path)?).map_err(decode_error)?;
            decoder.set_limits(limits()).map_err(decode_error)?;
            decoder.apng().map_err(decode_error)?.into_frames()
        }
        _ => return Err(ThumbnailError::NotAnImage),
    })
}

fn is_animated(path: &Path, format: ImageFormat) -> Result<bool, ThumbnailError> {
    Ok(match format {
        ImageFormat::Gif => frames(path, format)?.take(2).count() > 1,
        ImageFormat::WebP => WebPDecoder::new(open(path)?).map_err(decode_error)?.has_animation(),
        ImageFormat::Png => PngDecoder::new(open(path)?).and_then(|d| d.is_apng()).map_err(decode_error)?,
        _ => false,
    })
}

/// The (first frame of the) image, turned upright as its EXIF orientation says.
fn decode(path: &Path) -> Result<DynamicImage, ThumbnailError> {
    let mut reader = ImageReader::new(open(path)?).with_guessed_format()?;
    reader.limits(limits());
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// The width and height of an image file of a thumbnailed format.
pub fn dimensions(path: &Path) -> Result<(u32, u32), ThumbnailError> {
    sniff(path)?;
    header_dimensions(path)
}

/// The width and height an image file (already sniffed) declares in its header.
fn header_dimensions(path: &Path) -> Result<(u32, u32), ThumbnailError> {
    let mut reader = ImageReader::new(open(path)?).with_guessed_format()?;
    reader.limits(limits());
    reader.into_dimensions().map_err(decode_error)
}

/// Renders the thumbnail of the image file at `path` (of `size` bytes). Never upscales.
/// `animated` asks for an animation when the source is one (else a still of its first frame).
pub fn render(path: &Path, size: u64, target: Target, animated: bool) -> Result<Rendered, ThumbnailError> {
    if size > MAX_SOURCE_BYTES {
        return Err(ThumbnailError::TooLarge);
    }
    let format = sniff(path)?;
    // A few bytes can declare a canvas that takes seconds to decode and scale (found by
    // fuzzing: a 40-byte GIF of 6,427 x 12,699): refuse it before decoding anything.
    let (width, height) = header_dimensions(path)?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ThumbnailError::TooLarge);
    }
    // Whether the source is animated costs decoding two frames: asked only when it matters.
    if animated && is_animated(path, format)? {
        match animation(path, format, target)? {
            Some(rendered) => return Ok(rendered),
            None if size <= MAX_ANIMATED_ORIGINAL_BYTES => {
                return Ok(Rendered::Original { content_type: mime(format) });
            }
            None => {}
        }
    }
    let image = decode(path)?;
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(ThumbnailError::NotAnImage);
    }
    if width <= target.width && height <= target.height && !is_animated(path, format)? {
        // The spec: content smaller than asked is served as it is.
        return Ok(Rendered::Original { content_type: mime(format) });
    }
    encode(&resize(&image, target), format)
}

/// An animation at the target size, as an animated GIF (the only animated format the `image`
/// crate encodes); the original when it already fits; `None` when it is too long to re-encode.
fn animation(path: &Path, format: ImageFormat, target: Target) -> Result<Option<Rendered>, ThumbnailError> {
    let mut bytes = Vec::new();
    {
        // Speed 10 of 30: far faster than the default, with little loss at thumbnail sizes.
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(ThumbnailError::Encode)?;
        let mut pixels: u64 = 0;
        for (index, frame) in frames(path, format)?.enumerate() {
            let frame = frame.map_err(decode_error)?;
            let (width, height) = frame.buffer().dimensions();
            if index == 0 && width <= target.width && height <= target.height {
                return Ok(Some(Rendered::Original { content_type: mime(format) }));
            }
            pixels += u64::from(width) * u64::from(height);
            if index >= MAX_ANIMATION_FRAMES || pixels > MAX_ANIMATION_PIXELS {
                return Ok(None);
            }
            let delay = frame.delay();
            let resized = resize(&DynamicImage::ImageRgba8(frame.into_buffer()), target);
            encoder.encode_frame(Frame::from_parts(resized.to_rgba8(), 0, 0, delay)).map_err(ThumbnailError::Encode)?;
        }
    }
    Ok(Some(Rendered::Image { bytes, content_type: "image/gif" }))
}

fn resize(image: &DynamicImage, target: Target) -> DynamicImage {
    match target.method {
        Method::Scale => image.thumbnail(target.width, target.height),
        Method::Crop => crop(image, target.width, target.height),
    }
}

/// The centred part of the image with the target's aspect ratio, scaled down to the target
/// size (left as large as the image allows when that is smaller).
fn crop(image: &DynamicImage, target_width: u32, target_height: u32) -> DynamicImage {
    let (width, height) = (u64::from(image.width()), u64::from(image.height()));
    let (tw, th) = (u64::from(target_width), u64::from(target_height));
    let (crop_width, crop_height) =
        if width * th > height * tw { ((height * tw / th).max(1), height) } else { (width, (width * th / tw).max(1)) };
    let x = ((width - crop_width) / 2) as u32;
    let y = ((height - crop_height) / 2) as u32;
    let cropped = image.crop_imm(x, y, crop_width as u32, crop_height as u32);
    if crop_width > tw { cropped.thumbnail_exact(target_width, target_height) } else { cropped }
}

/// JPEG stays JPEG (photos); everything else becomes PNG (keeps transparency).
fn encode(image: &DynamicImage, source: ImageFormat) -> Result<Rendered, ThumbnailError> {
    let mut bytes = Vec::new();
    let content_type = if source == ImageFormat::Jpeg {
        let rgb = DynamicImage::ImageRgb8(image.to_rgb8());
        rgb.write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, 80)).map_err(ThumbnailError::Encode)?;
        "image/jpeg"
    } else {
        image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).map_err(ThumbnailError::Encode)?;
        "image/png"
    };
    Ok(Rendered::Image { bytes, content_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_snap_to_common_sizes() {
        let t = |w, h, m| {
            let s = snap(&COMMON_SIZES, w, h, m);
            (s.width, s.height, s.method)
        };
        assert_eq!(t(32, 32, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(t(33, 20, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(t(500, 500, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(t(96, 96, Method::Scale), (320, 240, Method::Scale));
        assert_eq!(t(320, 240, Method::Scale), (320, 240, Method::Scale));
        assert_eq!(t(321, 240, Method::Scale), (640, 480, Method::Scale));
        assert_eq!(t(4000, 4000, Method::Scale), (800, 600, Method::Scale));
        // Configured sizes in any order; a method without sizes is served from the others.
        let sizes = [
            Target { width: 400, height: 400, method: Method::Scale },
            Target { width: 100, height: 100, method: Method::Scale },
        ];
        assert_eq!(snap(&sizes, 50, 50, Method::Crop), sizes[1]);
        assert_eq!(snap(&sizes, 101, 50, Method::Scale), sizes[0]);
        assert_eq!(snap(&sizes, 900, 900, Method::Scale), sizes[0]);
    }

    fn write_gif(dir: &Path, width: u32, height: u32, frames: usize) -> std::path::PathBuf {
        let path = dir.join(format!("{width}x{height}x{frames}.gif"));
        let mut encoder = GifEncoder::new(File::create(&path).unwrap());
        encoder.set_repeat(Repeat::Infinite).unwrap();
        for i in 0..frames {
            let color = image::Rgba([(i * 80 % 256) as u8, 0, 255, 255]);
            encoder.encode_frame(Frame::new(image::RgbaImage::from_pixel(width, height, color))).unwrap();
        }
        drop(encoder);
        path
    }

    #[test]
    fn animations_are_resized_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_gif(dir.path(), 200, 100, 3);
        let size = std::fs::metadata(&path).unwrap().len();
        let crop = Target { width: 32, height: 32, method: Method::Crop };
        let Rendered::Image { bytes, content_type } = render(&path, size, crop, true).unwrap() else {
            panic!("expected a new animation");
        };
        assert_eq!(content_type, "image/gif");
        let frames = GifDecoder::new(Cursor::new(&bytes)).unwrap().into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].buffer().dimensions(), (32, 32));
        // Without `animated`, a still image; an animation that already fits is sent as it is.
        assert_eq!(rendered_size(render(&path, size, crop, false).unwrap()), (32, 32));
        let large = Target { width: 320, height: 240, method: Method::Scale };
        assert!(matches!(render(&path, size, large, true), Ok(Rendered::Original { content_type: "image/gif" })));
    }

    fn write_png(dir: &Path, width: u32, height: u32) -> std::path::PathBuf {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        }));
        let path = dir.join(format!("{width}x{height}.png"));
        image.save_with_format(&path, ImageFormat::Png).unwrap();
        path
    }

    fn rendered_size(rendered: Rendered) -> (u32, u32) {
        match rendered {
            Rendered::Image { bytes, .. } => {
                let image = image::load_from_memory(&bytes).unwrap();
                (image.width(), image.height())
            }
            Rendered::Original { .. } => panic!("expected a new image"),
        }
    }

    #[test]
    fn crop_is_exact_and_scale_keeps_aspect() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_png(dir.path(), 640, 400);
        let size = std::fs::metadata(&path).unwrap().len();
        let crop = Target { width: 96, height: 96, method: Method::Crop };
        assert_eq!(rendered_size(render(&path, size, crop, false).unwrap()), (96, 96));
        let scale = Target { width: 320, height: 240, method: Method::Scale };
        assert_eq!(rendered_size(render(&path, size, scale, false).unwrap()), (320, 200));
        // Narrower than the crop target on one side: cropped to the aspect, not upscaled.
        let path = write_png(dir.path(), 200, 50);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(rendered_size(render(&path, size, crop, false).unwrap()), (50, 50));
    }

    #[test]
    fn small_images_are_served_as_they_are_and_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_png(dir.path(), 20, 10);
        let size = std::fs::metadata(&path).unwrap().len();
        let target = Target { width: 32, height: 32, method: Method::Crop };
        assert!(matches!(render(&path, size, target, false), Ok(Rendered::Original { content_type: "image/png" })));
        let text = dir.path().join("text");
        std::fs::write(&text, b"just some text, not an image").unwrap();
        assert!(matches!(render(&text, 28, target, false), Err(ThumbnailError::NotAnImage)));
    }

    /// The fuzzer's finding: 40 bytes of GIF declaring a 6,427 x 12,699 canvas took over 10 s.
    #[test]
    fn a_huge_declared_canvas_is_refused_before_decoding() {
        let gif: &[u8] = &[
            0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x1b, 0x19, 0x9b, 0x31, 0x6b, 0xce, 0xc4, 0x3f, 0x86, 0x1e, 0x34, 0x78,
            0x98, 0x61, 0x87, 0x1b, 0x32, 0x3f, 0x96, 0x5e, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x02, 0x23, 0x02, 0x44,
            0x01, 0x00, 0x00, 0x3b,
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.gif");
        std::fs::write(&path, gif).unwrap();
        assert_eq!(dimensions(&path).unwrap(), (6_427, 12_699));
        let target = Target { width: 32, height: 32, method: Method::Crop };
        for animated in [false, true] {
            assert!(matches!(render(&path, gif.len() as u64, target, animated), Err(ThumbnailError::TooLarge)));
        }
    }
}
