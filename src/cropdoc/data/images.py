"""Safe image decoding: the one function every stage uses to turn a file into RGB pixels.

``load_image`` accepts only the formats in ``FORMATS``, applies EXIF orientation, converts
every colour mode to 8-bit RGB (16-bit scaled, alpha composited on white), treats Pillow's
decompression-bomb limit as an error and never writes to the file it reads. Memory is
bounded in bytes, not only in pixels: the image as decoded (width x height x the bytes a
pixel of its mode takes, after a JPEG's reduced-size decoding) must fit ``max_bytes``,
checked before a pixel is decoded (a 690 kB PNG can hold 9400x9400 16-bit pixels).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cropdoc.core.errors import UserError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
MAX_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit
MAX_BYTES = 384 * 2**20  # a decoded image: any image under MAX_PIXELS at 4 bytes a pixel
MIN_SIDE = 16
# the bytes a pixel of each Pillow mode takes in memory (the rest: 4, as RGB takes)
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(UserError, ValueError):
    """A file that cannot be used as an image; the message says why."""


class FormatError(ImageError):
    """Not an image, or an image in a format outside ``FORMATS``."""


class TooLargeError(ImageError):
    """An image whose decoded pixels would take more memory than allowed."""


def is_image_name(path: str | os.PathLike) -> bool:
    """True when the file name has an allowed image extension."""
    return Path(path).suffix.lower() in EXTENSIONS


def load_image(
    path: str | os.PathLike | bytes,
    max_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> np.ndarray:
    """Decode ``path`` into an ``(H, W, 3)`` uint8 RGB array; see ``read_image``."""
    return read_image(path, max_size, max_pixels, max_bytes)[0]


def read_image(
    path: str | os.PathLike | bytes,
    max_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` into ``(pixels, (width, height) of the original)``.

    ``pixels`` is an ``(H, W, 3)`` uint8 RGB array, upright after EXIF orientation.

    Args:
        path: the image file (it is only read), or its bytes.
        max_size: when given (and not 0), shrink so the longer side is at most this many pixels
            (JPEGs are decoded at reduced size with ``Image.draft`` first). Never enlarges.
        max_pixels: images with more pixels than this are refused as decompression bombs.
        max_bytes: images whose decoded pixels would take more bytes than this are refused
            (``TooLargeError``) before they are decoded.

    Raises:
        ImageError: with a one-line reason for any file that is not a usable image.
    """
    source = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
    try:
        if isinstance(source, Path) and source.is_dir():
            raise FormatError("a folder, not an image file")
        if (len(path) if isinstance(path, bytes) else source.stat().st_size) == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=FORMATS) as im:
                original = im.size  # before draft() shrinks it
                return _decode(im, max_size, max_pixels, max_bytes), original
    except ImageError:
        raise
    except MemoryError:
        raise TooLargeError("too large to decode: out of memory") from None
    except UnidentifiedImageError:
        raise FormatError(
            "not an image in an allowed format (JPEG, PNG, WebP, BMP, TIFF)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"too many pixels (over {max_pixels:,}): possible decompression bomb"
        ) from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt image ({_short(exc)})") from None


def _decode(im: Image.Image, max_size: int | None, max_pixels: int, max_bytes: int) -> np.ndarray:
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(
            f"too many pixels ({width}x{height} > {max_pixels:,}): possible decompression bomb"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"too small ({width}x{height}); images need at least {MIN_SIDE} px a side")
    if max_size and im.format == "JPEG" and max(width, height) > max_size:
        scale = max_size / max(width, height)
        # draft picks the largest DCT reduction that still gives at least this size
        im.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    _check_bytes(im, max_bytes)
    im.load()
    ImageOps.exif_transpose(im, in_place=True)  # not a copy: a 12 MP photo is 48 MB in Pillow
    rgb = _to_rgb(im)
    if max_size and max(rgb.size) > max_size:
        scale = max_size / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BOX)  # area averaging: right for shrinking
    return np.asarray(rgb, dtype=np.uint8)


def _check_bytes(im: Image.Image, max_bytes: int) -> None:
    """Refuse an image whose pixels, as Pillow will hold them, take over ``max_bytes``."""
    width, height = im.size  # a JPEG's after draft(): what will be decoded
    needed = width * height * MODE_BYTES.get(im.mode, 4)
    if needed > max_bytes:
        raise TooLargeError(
            f"too large to decode: {width}x{height} {im.mode} pixels take "
            f"{needed / 2**20:,.0f} MB, over the limit of {max_bytes / 2**20:,.0f} MB: "
            "send a smaller photo"
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im)), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale 16-bit (and 32-bit integer) pixels onto 0..255; float pixels are taken as 0..1."""
    if pixels.dtype.kind == "f":
        return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    if pixels.dtype.itemsize <= 2:  # 16-bit: rounded in integers (no float copy of 8 bytes)
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(np.rint(pixels.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__
