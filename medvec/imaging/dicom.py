"""Reading DICOM files as archives really hold them: any transfer syntax, no preamble, no meta.

Returns the first frame's stored values plus the allow-listed header fields; every expected
failure is raised as `UnreadableImage` with the stage and a plain-words reason.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless,
                         JPEGLSNearLossless)

from medvec.imaging.reduced import (J2K_OVERSAMPLE, J2K_OVERSAMPLE_FIXED_WINDOW, J2K_SYNTAXES, JPEG_BASELINE,
                                    decode_j2k_reduced, decode_jpeg_draft)
from medvec.phi import IDENTIFYING_TAGS, scrub

# pydicom's warnings quote element values ("Invalid value for VR PN: '<a name>'"): they must not
# reach logs, so they are silenced here and read (never logged) where they explain a failure.
logging.getLogger("pydicom").setLevel(logging.ERROR)
log = logging.getLogger(__name__)


# pydicom's default JPEG-LS decoder here is pylibjpeg-libjpeg (306 ms on RG1); CharLS via pyjpegls
# decodes the same frame in 87 ms (BENCHMARKS.md). Preferred when installed, default otherwise.
PREFERRED_DECODERS = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}


class UnreadableImage(Exception):
    """An expected per-file failure: `stage` says where, the message says why in plain words."""

    def __init__(self, stage: str, reason: str, cause: BaseException | None = None):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.error = type(cause).__name__ if cause is not None else "UnreadableImage"


@dataclass
class DicomFrame:
    dataset: Dataset  # header only (pixel data dropped once decoded)
    pixels: np.ndarray  # first frame: (rows, cols) stored values, or (rows, cols, 3) RGB
    frames: int
    transfer_syntax: str
    is_colour: bool
    colour_max: float | None = None  # full-scale value of RGB output (palette LUTs may be 16-bit)
    reduced: bool = False  # decoded below full size (wavelet level or DCT scale), long side >= the target


def read_dataset(data: bytes) -> Dataset:
    """Parse a DICOM byte string, tolerating a missing preamble and a missing file meta header."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, IndexError, TypeError, OSError) as exc:
            raise UnreadableImage("parse", f"not a readable DICOM file ({_short(exc)})", exc) from exc
    truncated = any("End of file reached" in str(w.message) for w in caught)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if truncated:
            raise UnreadableImage("parse", "the file is truncated: it ends before its pixel data")
        if data[128:132] != b"DICM" and _standard_elements(ds) < 2:
            raise UnreadableImage("parse", "not a DICOM file (no DICOM header found)")
        raise UnreadableImage("parse", "no image in this file (the DICOM object has no Pixel Data)")
    _ensure_transfer_syntax(ds)
    return ds


def _standard_elements(ds: Dataset) -> int:
    """How many elements are known public DICOM tags: a non-DICOM file read with force=True parses
    into a handful of random private or unknown tags."""
    from pydicom.datadict import dictionary_has_tag

    try:
        return sum(1 for tag in ds.keys() if tag.group % 2 == 0 and dictionary_has_tag(tag))
    except Exception:  # noqa: BLE001 - a garbage dataset may fail to enumerate
        return 0


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files without file meta (legacy ACR-NEMA style) get the syntax they were actually read in."""
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    elem = ds.get("PixelData")
    if elem is not None and getattr(ds["PixelData"], "is_undefined_length", False):
        raise UnreadableImage("parse", "compressed pixel data but no transfer syntax recorded in the file")
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    syntax = (ImplicitVRLittleEndian if implicit else
              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = syntax


def identifying_values(ds: Dataset) -> list[str]:
    """Values of identifying tags present in `ds`, so error messages can be scrubbed of them."""
    values = []
    for keyword in IDENTIFYING_TAGS:
        value = ds.get(keyword)
        if value is not None and str(value).strip():
            values.append(str(value).strip())
    return values


def decode_first_frame(ds: Dataset, target_size: int | None = None, *, j2k_reduction: int | None = None,
                       window_from_header: bool = False) -> DicomFrame:
    """Decode only the first frame; colour (RGB, YBR, palette) arrives as RGB.

    With `target_size`, grey JPEG 2000 / HTJ2K / baseline JPEG frames and YBR baseline JPEG frames decode at the smallest size whose
    long side is still >= it (medvec.imaging.reduced), falling back to the full decode when that
    fails or looks wrong. `j2k_reduction` forces a wavelet reduction (benchmarks, the fallback test).
    `window_from_header`: the grey levels will come from the header's VOI, not the image's histogram, so
    JPEG 2000 may decode one level deeper (medvec.imaging.reduced.J2K_OVERSAMPLE_FIXED_WINDOW).
    """
    syntax = str(ds.file_meta.TransferSyntaxUID)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise UnreadableImage("parse", "the header's Number of Frames is not a number", exc) from exc
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    oversample = J2K_OVERSAMPLE_FIXED_WINDOW if window_from_header else J2K_OVERSAMPLE
    reduced = (_decode_reduced(ds, syntax, frames, photometric, target_size, j2k_reduction, oversample)
               if target_size else None)
    if reduced is not None:
        del ds.PixelData
        return DicomFrame(ds, reduced, frames, syntax, is_colour=reduced.ndim == 3, reduced=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = _decode(ds, syntax, index=0 if frames > 1 else None)
    except NotImplementedError as exc:  # pydicom's "no available plugin can decode ..."
        raise UnreadableImage("decode", f"no installed decoder supports transfer syntax {_syntax_name(syntax)}", exc) from exc
    except (RuntimeError, ValueError, KeyError, AttributeError, TypeError, OSError, EOFError) as exc:
        message = scrub(_short(exc), identifying_values(ds))
        if "Missing required element" in message:
            raise UnreadableImage("parse", f"the image header is incomplete ({message})", exc) from exc
        if "less than expected" in message or "truncat" in message.lower():
            reason = f"pixel data is truncated or shorter than the header says ({message})"
        else:
            reason = f"pixel data could not be decoded as {_syntax_name(syntax)} ({message})"
        raise UnreadableImage("decode", reason, exc) from exc
    if frames > 1 and arr.ndim == 4:
        arr = arr[0]
    colour_max = None
    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise UnreadableImage("render", f"palette colour lookup table is unusable ({_short(exc)})", exc) from exc
        colour_max = float(2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1)
    is_colour = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if not is_colour and arr.ndim != 2:
        raise UnreadableImage("decode", f"unexpected pixel array shape {arr.shape} for a single frame")
    if "PixelData" in ds:
        del ds.PixelData  # keep only the header in memory from here on
    return DicomFrame(ds, arr, frames, syntax, is_colour, colour_max)


def _decode(ds: Dataset, syntax: str, index: int | None) -> np.ndarray:
    # as_rgb: YBR_FULL / YBR_FULL_422 arrive as RGB (pydicom's convert_color_space, or the JPEG decoder's
    # own transform where it applies one); YBR_ICT/YBR_RCT are undone by the JPEG 2000 decoder itself.
    plugin = PREFERRED_DECODERS.get(syntax)
    if plugin:
        try:
            return pixel_array(ds, index=index, decoding_plugin=plugin, as_rgb=True)
        except Exception:  # noqa: BLE001 - plugin missing or failing: pydicom's own choice decides
            pass
    return pixel_array(ds, index=index, as_rgb=True)


def _decode_reduced(ds: Dataset, syntax: str, frames: int, photometric: str, target_size: int,
                    j2k_reduction: int | None, oversample: float) -> np.ndarray | None:
    """The first frame at a reduced size, or None when not eligible or not trustworthy."""
    if syntax not in J2K_SYNTAXES and syntax != JPEG_BASELINE:
        return None
    samples = int(ds.get("SamplesPerPixel") or 1)
    # YBR_FULL(_422) baseline JPEG is JFIF YCbCr, what libjpeg converts to RGB itself; RGB-coded JPEGs
    # (no colour transform) and J2K colour are left to pydicom, which knows their markers.
    ybr_jpeg = syntax == JPEG_BASELINE and photometric in ("YBR_FULL", "YBR_FULL_422") and samples == 3
    if not ybr_jpeg and (photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1):
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits_allocated, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        log.debug("no reduced decode: %s", type(exc).__name__)
        return None
    if syntax == JPEG_BASELINE:
        if bits_stored > 8 or signed:
            return None
        return decode_jpeg_draft(frame, target_size, rows=rows, columns=columns, mode="RGB" if ybr_jpeg else "L")
    return decode_j2k_reduced(frame, target_size, rows=rows, columns=columns, bits_allocated=bits_allocated,
                              bits_stored=bits_stored, signed=signed, reduction=j2k_reduction, oversample=oversample)


def _syntax_name(uid: str) -> str:
    try:
        return f"{pydicom.uid.UID(uid).name} ({uid})"
    except Exception:  # noqa: BLE001 - a malformed UID string still deserves a message
        return uid


def _short(exc: BaseException, limit: int = 300) -> str:
    lines = [line.strip().rstrip(":") for line in str(exc).strip().splitlines() if line.strip()]
    return ("; ".join(lines) or type(exc).__name__)[:limit]
