"""Viewing images and thumbnails: pad, resize (reduce first), and WebP bytes with no metadata."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pad_to_square(grey: np.ndarray) -> np.ndarray:
    """Centre the image on a black square (black is air after rendering, so padding reads as air)."""
    rows, cols = grey.shape
    side = max(rows, cols)
    if rows == cols:
        return grey
    out = np.zeros((side, side), dtype=grey.dtype)
    top, left = (side - rows) // 2, (side - cols) // 2
    out[top:top + rows, left:left + cols] = grey
    return out


def fit_long_side(image: Image.Image, size: int) -> Image.Image:
    """Shrink so the long side is `size` px; never enlarge (small sources stay their own size).

    `reducing_gap` makes Pillow box-reduce by an integer factor first and resample only the last
    step, which is several times faster on 2,000 px radiographs at the same visual quality.
    """
    width, height = image.size
    long_side = max(width, height)
    if long_side <= size:
        return image
    scale = size / long_side
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def encode_webp(image: Image.Image, quality: int, method: int) -> bytes:
    """Lossy WebP; no EXIF, XMP or ICC chunk is ever written (the image carries no info dict)."""
    buffer = io.BytesIO()
    clean = Image.frombytes(image.mode, image.size, image.tobytes())  # drops any .info
    clean.save(buffer, format="WEBP", quality=quality, method=method)
    return buffer.getvalue()


def thumbnail_strip(thumbnails: list[bytes], height: int = 96, limit: int = 8) -> bytes | None:
    """Several thumbnails side by side as one small PNG (shown in the Dagster UI)."""
    images = []
    for data in thumbnails[:limit]:
        image = Image.open(io.BytesIO(data)).convert("L")
        scale = height / image.height
        images.append(image.resize((max(1, round(image.width * scale)), height), Image.Resampling.BILINEAR))
    if not images:
        return None
    strip = Image.new("L", (sum(i.width for i in images) + 4 * (len(images) - 1), height), 32)
    x = 0
    for image in images:
        strip.paste(image, (x, 0))
        x += image.width + 4
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
