"""Open untrusted image files safely and turn them into plain RGB.

Datasets come from scrapes, phones and editors, so every file is treated as hostile:
size limits are checked from the header *before* any pixel is decoded, and every
decoder failure becomes a ``DatasetError`` whose message is the per-file reason the
scan reports (a bad file is skipped, never a crash in the middle of training).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from studio.errors import DatasetError

# Lower-case suffixes the scan picks up. GIF is not a kohya extension, but animated
# GIFs are common in scraped sets and train fine from their first frame.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})

# PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS). We enforce it ourselves too, so a
# caller that sets MAX_IMAGE_PIXELS = None elsewhere does not disable the protection.
MAX_PIXELS = 178_956_970
MIN_SIDE = 16
MAX_ASPECT = 8.0

WHITE = (255, 255, 255)
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class ImageInfo:
    """What the scan keeps about an image: its displayed size, never its pixels."""

    width: int
    height: int
    frames: int = 1


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` that refuses decompression bombs and reports unreadable files as user errors."""
    try:
        if path.stat().st_size == 0:
            raise DatasetError("empty file (0 bytes)", path=path)
        with warnings.catch_warnings():
            # Our own pixel limit below decides; PIL's softer warning threshold is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DatasetError(_bomb_reason(exc), path=path) from None
    except UnidentifiedImageError:
        raise DatasetError(_unidentified_reason(path), path=path) from None
    except DatasetError:
        raise
    except Exception as exc:  # PIL's header parsers raise many types on malformed input
        raise DatasetError(f"cannot read image ({_describe(exc)})", path=path) from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise DatasetError(
                f"refused as a decompression bomb: {width}x{height} is {width * height:,} pixels "
                f"(limit {MAX_PIXELS:,})",
                path=path,
            )
        yield image


def _oriented_size(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """``size`` (the stored one) as displayed, i.e. after ``image``'s EXIF orientation."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (size[1], size[0]) if orientation in _SWAPS_SIDES else size


def probe_image(path: Path) -> ImageInfo:
    """Check that ``path`` is a usable training image, decoding it once and keeping nothing.

    Raises ``DatasetError`` with a human-readable reason. Cheap header checks (pixel count,
    side length, aspect ratio) run before the decode, so bad files cost almost nothing.
    """
    with open_image(path) as image:
        size = image.size  # before draft() shrinks it
        _check_shape(path, *size)  # EXIF rotation only swaps sides: no need to wait for it
        frames = getattr(image, "n_frames", 1)
        # A JPEG decoded at 1/8 scale still reads the whole stream, so truncation shows,
        # at a fraction of the time and memory of a full decode.
        image.draft(None, (image.width // 8, image.height // 8))
        _decode(path, image)
        try:  # after the decode: a PNG may keep its EXIF after the pixels
            width, height = _oriented_size(image, size)
            to_rgb(ImageOps.exif_transpose(image))  # what training will do, so it cannot fail there
        except Exception as exc:
            raise DatasetError(f"cannot convert to RGB ({_describe(exc)})", path=path) from None
    return ImageInfo(width, height, frames)


def load_rgb(path: Path, min_size: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``path`` to an upright RGB image; also return its original ``(width, height)``.

    ``min_size`` lets a JPEG decode at a reduced scale that still covers that size (DCT
    scaling), which is much faster for large photos that get downscaled anyway.
    """
    with open_image(path) as image:
        original = _oriented_size(image, image.size)
        if min_size is not None:
            scale = max(min_size[0] / original[0], min_size[1] / original[1])
            image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        _decode(path, image)
        return to_rgb(ImageOps.exif_transpose(image)), original


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB; transparent pixels become white, not black."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL clips 16-bit grey to 255 when converting; rescale instead.
        grey = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8), mode="L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _check_shape(path: Path, width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise DatasetError(f"too small ({width}x{height}; each side needs at least {MIN_SIDE} px)", path=path)
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise DatasetError(
            f"aspect ratio too extreme ({width}x{height} is {round(aspect, 1):g}:1; limit {MAX_ASPECT:g}:1)",
            path=path,
        )


def _decode(path: Path, image: Image.Image) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise DatasetError(_bomb_reason(exc), path=path) from None
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, zlib/struct errors...
        raise DatasetError(f"corrupt or truncated image data ({_describe(exc)})", path=path) from None


def _bomb_reason(exc: Image.DecompressionBombError) -> str:
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if found is None:
        return f"refused as a decompression bomb ({exc})"
    return f"refused as a decompression bomb: {int(found[1]):,} pixels (limit {int(found[2]):,})"


def _unidentified_reason(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(512)
    # Text has no control bytes besides whitespace; every image format's header does.
    if all(byte >= 0x20 or byte in b"\t\n\r\f" for byte in head):
        return "not an image (the file contains text)"
    return "not an image (unrecognised content)"


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
