"""Decoding compressed frames at the size the output needs, not the size they were stored at.

JPEG 2000 (and HTJ2K) keeps a wavelet pyramid: resolution level r is the image at 1/2^r scale and
costs a fraction of the full decode. Baseline JPEG scales by 1/2, 1/4, 1/8 in the DCT domain
(libjpeg's scaled IDCT, Pillow's `draft`). Both run through Pillow here (its bundled openjpeg reads
HTJ2K too; the installed pylibjpeg-openjpeg 2.6 `decode` has no `reduce` argument).

Every function returns None when the frame is not eligible or the reduced decode fails or looks
wrong; the caller then decodes at full size. Nothing here raises for a bad file.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: JPEG 2000 Part 1 and Part 15 (HTJ2K) transfer syntaxes: both carry a J2K codestream per frame.
J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000 lossless / lossy
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
})
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

#: How much larger than the output a reduced J2K image stays. The 5/3 low band is a weak anti-alias
#: filter, so the final resize must still average. Windowed by the image's own percentiles, the reduced
#: image keeps >= 1.5x: each level averages noise out of the histogram's tails, which moves the window
#: (level 2 of a 3000x2500 chest: 1.7-2.1 grey levels off a box-downscaled full decode, level 1: 0.7).
#: Windowed by the header (a fixed VOI), >= 1.25x suffices once the low band is recentred: level 2 of the
#: 3000x2500 chest (750 px for a 512 output) measured 0.88, of the 2128x2000 DX chest (532 px) 1.38.
J2K_OVERSAMPLE = 1.5
J2K_OVERSAMPLE_FIXED_WINDOW = 1.25

_SOC, _SIZ, _COD, _COC, _SOT, _SOD = 0xFF4F, 0xFF51, 0xFF52, 0xFF53, 0xFF90, 0xFF93


@dataclass(frozen=True)
class CodestreamHeader:
    """What the J2K main header says (ISO 15444-1 A.5.1 SIZ, A.6.1 COD, A.6.2 COC)."""

    width: int
    height: int
    components: int
    precision: int  # bits of component 0
    signed: bool
    levels: int  # fewest wavelet decomposition levels of any component: the most a decode can reduce


def read_codestream_header(frame: bytes) -> CodestreamHeader | None:
    """Parse SIZ and COD/COC of a raw J2K codestream; None when it is not one or is malformed."""
    if len(frame) < 4 or struct.unpack(">H", frame[:2])[0] != _SOC:
        return None
    pos, size, levels = 2, None, []
    try:
        while pos + 4 <= len(frame):
            marker, length = struct.unpack(">HH", frame[pos:pos + 4])
            if marker in (_SOT, _SOD) or marker >> 8 != 0xFF:
                break  # end of the main header
            segment = frame[pos + 4:pos + 2 + length]
            if marker == _SIZ:
                x1, y1, x0, y0 = struct.unpack(">IIII", segment[2:18])
                components = struct.unpack(">H", segment[34:36])[0]
                ssiz = segment[36]
                size = (x1 - x0, y1 - y0, components, (ssiz & 0x7F) + 1, bool(ssiz & 0x80))
            elif marker == _COD:
                levels.append(segment[5])  # Scod(1) SGcod(4) then SPcod's first byte
            elif marker == _COC:
                levels.append(segment[2 if size is None or size[2] < 257 else 3])  # Ccoc is 1 or 2 bytes
            pos += 2 + length
    except (struct.error, IndexError):
        return None
    if size is None or not levels:
        return None
    return CodestreamHeader(*size, levels=min(levels))


def pillow_reduced_size(length: int, reduction: int) -> int:
    """The size Pillow's JPEG 2000 plugin allots at `reduction`: it rounds to nearest (Pillow 10-13)."""
    power = 1 << reduction
    return int((length + (power >> 1)) / power)


def j2k_reduced_size(length: int, reduction: int) -> int:
    """The size openjpeg decodes at `reduction`: ceil(length / 2^r) (ISO 15444-1 B.5)."""
    return -(-length // (1 << reduction))


def choose_reduction(header: CodestreamHeader, target: int, oversample: float = J2K_OVERSAMPLE) -> int:
    """The largest wavelet reduction whose long side is still >= `oversample` x `target`.

    Capped by the decomposition levels in COD/COC (a codestream with 5 levels has 6 resolutions) and
    by Pillow's sizing: Pillow rounds the reduced size to nearest where openjpeg takes the ceiling, and
    refuses the tile when they disagree ("broken data stream"). RG1_J2KR (1841 wide) fails at
    reduce=2 for exactly this reason: 1841/4 = 460.25 → Pillow 460, openjpeg 461.
    """
    long_side = max(header.width, header.height)
    reduction = 0
    while (reduction < header.levels and j2k_reduced_size(long_side, reduction + 1) >= oversample * target):
        reduction += 1
    while reduction > 0 and not _pillow_agrees(header, reduction):
        reduction -= 1
    return reduction


def _pillow_agrees(header: CodestreamHeader, reduction: int) -> bool:
    return all(pillow_reduced_size(n, reduction) == j2k_reduced_size(n, reduction)
               for n in (header.width, header.height))


def decode_j2k_reduced(frame: bytes, target: int, *, rows: int, columns: int, bits_allocated: int,
                       bits_stored: int, signed: bool, reduction: int | None = None,
                       oversample: float = J2K_OVERSAMPLE) -> np.ndarray | None:
    """Stored values of a grey J2K/HTJ2K frame at the largest reduction still >= `oversample` x `target` px,
    recentred on the full image's pixel grid (`recentre`).

    Returns None (decode at full size instead) when the frame is not plain grey data the header
    describes, when no reduction helps, or when Pillow's decode fails or gives another shape.
    `reduction` overrides the choice (the benchmark and the fallback test use it).
    """
    header = read_codestream_header(frame)
    if header is None or header.components != 1 or (header.width, header.height) != (columns, rows):
        return None
    if header.signed != signed or not bits_stored <= header.precision <= min(bits_allocated, 16):
        return None  # pydicom's precision/sign corrections apply: leave these to the full decode
    if reduction is None:
        reduction = choose_reduction(header, target, oversample)
    if reduction <= 0 or reduction > header.levels:
        return None
    expected = (j2k_reduced_size(rows, reduction), j2k_reduced_size(columns, reduction))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(frame), formats=["JPEG2000"])
            image.reduce = reduction
            image.load()
            decoded = np.asarray(image)
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        log.debug("reduced JPEG 2000 decode failed at reduce=%d (%s); decoding at full size", reduction, exc)
        return None
    if decoded.shape != expected or decoded.dtype not in (np.uint8, np.uint16):
        log.debug("reduced JPEG 2000 decode gave %s, expected %s; decoding at full size", decoded.shape, expected)
        return None
    return _stored_values(decoded, header, bits_allocated, reduction)


def _stored_values(decoded: np.ndarray, header: CodestreamHeader, bits_allocated: int, reduction: int) -> np.ndarray:
    """Undo Pillow's scaling (it shifts samples up to fill 8 or 16 bits and offsets signed ones), recentred."""
    container = 8 if decoded.dtype == np.uint8 else 16
    values = decoded.astype(np.int32) >> (container - header.precision)
    if header.signed:
        values -= 1 << (header.precision - 1)
    values = recentre(values, reduction)
    dtype = np.dtype(f"{'i' if header.signed else 'u'}{1 if bits_allocated <= 8 else 2}")
    return values.astype(dtype)


def recentre(values: np.ndarray, reduction: int) -> np.ndarray:
    """Move a low band's samples to where a box average of the full image would put them.

    Low-band sample j of level r sits on full-image sample 2^r j (ISO 15444-1 Annex F: the low-pass
    output is at even positions), a box average of 2^r pixels on 2^r j + (2^r - 1) / 2: the band lags by
    (2^r - 1) / 2^(r+1) of its own pixel. Interpolating that far towards the next sample, in integers,
    halved the grey difference from a box-downscaled full decode (3000x2500 chest at level 2: 1.71 → 0.88
    levels; level 1: 0.52 → 0.27); the two taps also damp the noise the low band lets through. 0.7 ms
    at 750x625.
    """
    if reduction <= 0:
        return values
    shift, num = reduction + 1, (1 << reduction) - 1
    keep, half = (1 << shift) - num, 1 << reduction
    out = values.copy()
    out[:, :-1] = (keep * values[:, :-1] + num * values[:, 1:] + half) >> shift
    rows = out.copy()
    rows[:-1] = (keep * out[:-1] + num * out[1:] + half) >> shift
    return rows


def decode_jpeg_draft(frame: bytes, target: int, *, rows: int, columns: int, mode: str = "L") -> np.ndarray | None:
    """An 8-bit grey ("L") or YCbCr colour ("RGB") baseline JPEG decoded by libjpeg at the smallest 1/2^k
    scale still >= `target`; colour arrives as RGB, libjpeg converting after its scaled IDCT."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(frame), formats=["JPEG"])
            if image.mode != mode or image.size != (columns, rows):
                return None
            draft_jpeg(image, target)
            image.load()
            decoded = np.asarray(image)
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        log.debug("scaled JPEG decode failed (%s); decoding at full size", exc)
        return None
    if decoded.ndim != (2 if mode == "L" else 3) or max(decoded.shape[:2]) < min(target, max(rows, columns)):
        return None
    return decoded


def draft_jpeg(image: Image.Image, target: int, mode: str | None = None) -> None:
    """Ask libjpeg for the smallest DCT scale whose long side is still >= `target`.

    Pillow's draft picks the largest 1/2^k with both sides >= the requested box, so the box keeps
    the image's aspect ratio; a box the size of the image (small sources) leaves the scale at 1.
    """
    width, height = image.size
    scale = min(1.0, target / max(width, height))
    image.draft(mode or image.mode, (max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))))
