"""PNG, JPEG and TIFF inputs (8 and 16 bit): grey files to the same 8-bit grey as DICOM, colour files
to 8-bit RGB (medvec.imaging.colour: an RGB file whose channels are all equal is stored grey)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medvec.imaging.budget import check_raster_budget, use_pillow_limit
from medvec.imaging.dicom import UnreadableImage
from medvec.imaging.reduced import draft_jpeg
from medvec.imaging.colour import colour_or_grey
from medvec.settings import DEFAULT_MAX_PIXELS

_ORIENTATION = 0x0112  # EXIF Orientation tag

#: Leading bytes of the raster formats we read; anything else is tried as DICOM.
RASTER_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"BM": "bmp",
    b"\xff\x4f\xff\x51": "jpeg2000",  # a raw J2K codestream (SOC then SIZ)
    b"\x00\x00\x00\x0cjP  \r\n\x87\n": "jpeg2000",  # a JP2 file
}


def sniff_raster(data: bytes) -> str | None:
    for magic, kind in RASTER_MAGIC.items():
        if data.startswith(magic):
            return kind
    return None


def read_raster(data: bytes, target_size: int | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Decode the first page to uint8: (rows, cols) grey or (rows, cols, 3) RGB. 16-bit data is scaled
    min→max (it is already a rendered image, so no clinical window applies); colour stays colour unless
    its channels are all equal, and the info's `photometric` says which ("RGB" or "MONOCHROME2").

    With `target_size`, a JPEG decodes in the DCT domain at the smallest 1/2^k scale whose long side
    is still >= it, grey as grey and colour as RGB (libjpeg scales each component before converting).
    `rows`/`columns` in the info are always the source's own size. A header claiming more than
    `max_pixels` raises before anything is decoded (medvec.imaging.budget).
    """
    use_pillow_limit(max_pixels)
    try:
        with warnings.catch_warnings():  # Pillow warns between 1x and 2x its limit: ours refuses there itself
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        check_raster_budget(image, max_pixels)
        rows, columns = image.height, image.width
        if image.getexif().get(_ORIENTATION) in (5, 6, 7, 8):  # stored on its side: upright swaps them
            rows, columns = columns, rows
        info = {"rows": rows, "columns": columns, "mode": image.mode}
        if target_size and image.format == "JPEG" and image.mode in ("L", "RGB", "YCbCr"):
            draft_jpeg(image, target_size, "L" if image.mode == "L" else "RGB")
        image = ImageOps.exif_transpose(image)  # phone/scanner JPEGs store rotation in EXIF
        image.load()
    except Image.DecompressionBombError as exc:  # Pillow's own guard, in open(), at 2x our limit
        raise UnreadableImage("decode", f"the image header claims too many pixels ({str(exc).split(',')[0]}), over "
                                        f"the {max_pixels / 1e6:,.0f} Mpx limit (MEDVEC_MAX_PIXELS); not decoded",
                              exc) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage("decode", f"image file is corrupt or truncated ({str(exc)[:160]})", exc) from exc
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image).astype(np.float64)
        bits = 16 if mode.startswith("I;16") else (32 if mode == "I" else 32)
        lo, hi = float(arr.min()), float(arr.max())
        grey = np.zeros(arr.shape, np.uint8) if hi <= lo else np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return grey, {**info, "bits_stored": bits, "photometric": "MONOCHROME2", "window_source": "minmax"}
    if mode in ("L", "1", "LA"):
        grey = np.asarray(image.convert("L"))
        return grey, {**info, "bits_stored": 8, "photometric": "MONOCHROME2", "window_source": "8bit"}
    # RGB(A), CMYK, YCbCr and palettes (a palette may hold colours or only greys): decided by the pixels.
    pixels, colour = colour_or_grey(np.asarray(image.convert("RGB")))
    if colour:
        return pixels, {**info, "bits_stored": 8, "photometric": "RGB", "window_source": "colour"}
    return pixels, {**info, "bits_stored": 8, "photometric": "MONOCHROME2", "window_source": "grey-rgb"}
