"""Viewing images and thumbnails: pad, resize (reduce first), and WebP bytes with no metadata."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pad_to_square(pixels: np.ndarray) -> np.ndarray:
    """Centre the image (grey or RGB) on a black square (black is air after rendering, so padding reads as air)."""
    rows, cols = pixels.shape[:2]
    side = max(rows, cols)
    if rows == cols:
        return pixels
    out = np.zeros((side, side, *pixels.shape[2:]), dtype=pixels.dtype)
    top, left = (side - rows) // 2, (side - cols) // 2
    out[top:top + rows, left:left + cols] = pixels
    return out


def fit_long_side(image: Image.Image, size: int) -> Image.Image:
    """Shrink so the long side is `size` px; never enlarge (small sources stay their own size).

    `reducing_gap` makes Pillow box-reduce by an integer factor first and resample only the last
    step; BOX for that step measured 2.8 ms against BILINEAR's 4.5 ms on RG1, at a mean difference of
    0.39 grey levels from LANCZOS (BENCHMARKS.md).
    """
    width, height = image.size
    long_side = max(width, height)
    if long_side <= size:
        return image
    scale = size / long_side
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(target, Image.Resampling.BOX, reducing_gap=2.0)


def encode_webp(image: Image.Image, quality: int, method: int) -> bytes:
    """Lossy WebP, grey ("L") or colour ("RGB"); no EXIF, XMP or ICC chunk is ever written (the image
    carries no info dict), so viewers read colour as sRGB (medvec.imaging.colour on ICC profiles)."""
    buffer = io.BytesIO()
    clean = Image.frombytes(image.mode, image.size, image.tobytes())  # drops any .info
    clean.save(buffer, format="WEBP", quality=quality, method=method)
    return buffer.getvalue()


def contact_sheet(thumbnails: list[bytes], columns: int = 8, cell: int = 96) -> bytes | None:
    """Thumbnails in a grid of `cell`-px squares, as one small PNG (Dagster UI, demo output)."""
    if not thumbnails:
        return None
    rows = (len(thumbnails) + columns - 1) // columns
    width = min(columns, len(thumbnails))
    sheet = Image.new("RGB", (width * (cell + 4) - 4, rows * (cell + 4) - 4), (32, 32, 32))
    for i, data in enumerate(thumbnails):
        image = Image.open(io.BytesIO(data)).convert("RGB")  # photographs keep their colour
        image.thumbnail((cell, cell), Image.Resampling.BILINEAR)
        x, y = (i % columns) * (cell + 4), (i // columns) * (cell + 4)
        sheet.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def thumbnail_strip(thumbnails: list[bytes], limit: int = 8) -> bytes | None:
    """The first few thumbnails side by side (a batch at a glance in the Dagster UI)."""
    return contact_sheet(thumbnails[:limit], columns=limit)
