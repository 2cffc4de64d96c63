//! Thumbnails: requests snap to the spec's common sizes; images are decoded (with size
//! limits against decompression bombs), scaled or cropped, and encoded as PNG or JPEG.
//! Everything here blocks: callers run it in the blocking pool.

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::Path;

use image::codecs::gif::GifDecoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A thumbnail size and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub width: u32,
    pub height: u32,
    pub method: Method,
}

/// The sizes the spec says servers should produce; every request is served one of them.
const COMMON_SIZES: [Target; 5] = [
    Target { width: 32, height: 32, method: Method::Crop },
    Target { width: 96, height: 96, method: Method::Crop },
    Target { width: 320, height: 240, method: Method::Scale },
    Target { width: 640, height: 480, method: Method::Scale },
    Target { width: 800, height: 600, method: Method::Scale },
];

/// The common size that serves a request: the smallest of the asked method at least as large
/// as asked (never smaller than requested), else the largest of that method.
pub fn snap(width: u32, height: u32, method: Method) -> Target {
    let of_method = || COMMON_SIZES.iter().filter(move |t| t.method == method);
    // COMMON_SIZES is ordered by size: the first covering size is the smallest, the last the largest.
    let chosen = of_method().find(|t| t.width >= width && t.height >= height).or_else(|| of_method().next_back());
    // Every method has sizes, so `chosen` is always found.
    *chosen.unwrap_or(&COMMON_SIZES[0])
}

/// Files larger than this are never decoded.
pub const MAX_SOURCE_BYTES: u64 = 100 * 1024 * 1024;
/// Largest animated original sent as its own animated thumbnail.
const MAX_ANIMATED_ORIGINAL_BYTES: u64 = 4 * 1024 * 1024;
const MAX_DIMENSION: u32 = 16_384;
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

fn is_animated(path: &Path, format: ImageFormat) -> Result<bool, ThumbnailError> {
    Ok(match format {
        ImageFormat::Gif => {
            let mut decoder = GifDecoder::new(open(path)?).map_err(decode_error)?;
            decoder.set_limits(limits()).map_err(decode_error)?;
            decoder.into_frames().take(2).count() > 1
        }
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
    let mut reader = ImageReader::new(open(path)?).with_guessed_format()?;
    reader.limits(limits());
    reader.into_dimensions().map_err(decode_error)
}

/// Renders the thumbnail of the image file at `path` (of `size` bytes). Never upscales.
pub fn render(path: &Path, size: u64, target: Target, animated: bool) -> Result<Rendered, ThumbnailError> {
    if size > MAX_SOURCE_BYTES {
        return Err(ThumbnailError::TooLarge);
    }
    let format = sniff(path)?;
    let source_animated = is_animated(path, format)?;
    if animated && source_animated && size <= MAX_ANIMATED_ORIGINAL_BYTES {
        return Ok(Rendered::Original { content_type: mime(format) });
    }
    let image = decode(path)?;
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(ThumbnailError::NotAnImage);
    }
    if width <= target.width && height <= target.height && !source_animated {
        // The spec: content smaller than asked is served as it is.
        return Ok(Rendered::Original { content_type: mime(format) });
    }
    let thumbnail = match target.method {
        Method::Scale => image.thumbnail(target.width, target.height),
        Method::Crop => crop(&image, target.width, target.height),
    };
    encode(&thumbnail, format)
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
            let s = snap(w, h, m);
            (s.width, s.height, s.method)
        };
        assert_eq!(t(32, 32, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(t(33, 20, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(t(500, 500, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(t(96, 96, Method::Scale), (320, 240, Method::Scale));
        assert_eq!(t(320, 240, Method::Scale), (320, 240, Method::Scale));
        assert_eq!(t(321, 240, Method::Scale), (640, 480, Method::Scale));
        assert_eq!(t(4000, 4000, Method::Scale), (800, 600, Method::Scale));
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
}
