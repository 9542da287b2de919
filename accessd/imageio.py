"""Decode photos into RGB uint8 arrays, with errors that name the file.

Photos come from people's phones and cameras: 16-bit PNGs, grayscale, alpha
channels and absurd headers all appear. Each is normalised here so every later
stage sees one format, and an image too large to decode safely is refused from
its header before any pixel is allocated.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from accessd.types import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MAX_PIXELS = 50_000_000  # ~50 MP: larger than any camera photo, far below a decompression bomb


class ImageError(ValueError):
    """A photo that cannot be used; the message names the file."""


def _header_size(data: bytes, name: str) -> tuple[int, int]:
    import io

    from PIL import Image as PILImage  # header-only parse; pixels are decoded by OpenCV

    try:
        with PILImage.open(io.BytesIO(data)) as img:
            return img.size
    except PILImage.DecompressionBombError as exc:
        raise ImageError(f"{name}: dimensions exceed the {MAX_PIXELS} pixel limit") from exc
    except Exception as exc:
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__})") from exc


def decode_image(data: bytes, name: str = "<bytes>") -> Image:
    """Decode encoded image bytes to an HxWx3 RGB uint8 array or raise ImageError."""
    if not data:
        raise ImageError(f"{name}: empty file")
    width, height = _header_size(data, name)
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} dimensions exceed the {MAX_PIXELS} pixel limit")
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise ImageError(f"{name}: corrupt or unsupported image data")
    return to_rgb(array, name)


def to_rgb(array: np.ndarray, name: str = "<array>") -> Image:
    """Normalise an OpenCV image (BGR/BGRA/gray, 8 or 16 bit) to RGB uint8."""
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {array.dtype}")
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels == 1:
        rgb = cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    elif channels == 3:
        rgb = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif channels == 4:
        # Transparent pixels become white rather than whatever colour they hid.
        bgr = array[:, :, :3].astype(np.float32)
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        blended = bgr * alpha + 255.0 * (1.0 - alpha)
        rgb = cv2.cvtColor(blended.astype(np.uint8), cv2.COLOR_BGR2RGB)
    else:
        raise ImageError(f"{name}: unsupported channel count {channels}")
    return np.asarray(rgb, dtype=np.uint8)


def read_image(path: Path) -> Image:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, str(path))
