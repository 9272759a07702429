"""Grey-level rendering of DICOM pixels to 8 bits: modality LUT → VOI → invert → scale.

Small pure functions with DICOM semantics (PS3.3 C.11). The fast path never does float math on
the full-size image: every transform is evaluated once per *possible stored value* to build a
uint8 lookup table, and the image is then mapped with a single `np.take` (measured in
benchmarks/normalize.py against the float64 reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

#: Percentiles of the robust window used when the header carries no VOI.
PERCENTILE_WINDOW = (0.5, 99.5)


@dataclass(frozen=True)
class Rendering:
    """An 8-bit grey image and how its grey levels were chosen (recorded per image)."""

    pixels: np.ndarray  # uint8, 2-D
    window_source: str  # "voi_lut" | "header_window" | "percentile" | "flat"
    window: tuple[float, float] | None  # (centre, width) actually applied, when a window was used


def stored_value_domain(dtype: np.dtype) -> tuple[np.ndarray, np.dtype] | None:
    """Every stored value an integer array of `dtype` can hold, in index order.

    Returns `(values, index_dtype)`: `values[i]` is the stored value whose bit pattern, read as
    `index_dtype`, equals `i`. Signed data thus needs no offset copy: the image is viewed as its
    unsigned twin and indexes the table directly. None for dtypes too wide for a table.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui" or dtype.itemsize > 2:
        return None
    index_dtype = np.dtype(f"u{dtype.itemsize}").newbyteorder(dtype.byteorder)
    patterns = np.arange(2 ** (8 * dtype.itemsize), dtype=np.dtype(f"u{dtype.itemsize}"))
    values = patterns.view(np.dtype(f"{dtype.kind}{dtype.itemsize}")).astype(np.int64)
    return values, index_dtype


def window_linear(x: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI window as PS3.3 C.11.2.1.2/3, scaled to [0, 1]."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        y = (x - centre) / width + 0.5
    else:  # LINEAR: the standard's half-pixel offsets, width at least 1
        width = max(width, 1.0)
        y = (x - (centre - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (x > centre - 0.5).astype(float)
    return np.clip(y, 0.0, 1.0)


def first_value(value) -> float | None:
    """DICOM multi-valued numbers: the first one (what viewers and dcm2pnm `+Wi 1` use)."""
    if value is None:
        return None
    try:
        return float(value[0]) if not isinstance(value, (int, float, str)) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def header_window(ds: Dataset) -> tuple[float, float, str] | None:
    """(centre, width, function) of the first header window, or None when absent or unusable."""
    centre = first_value(ds.get("WindowCenter"))
    width = first_value(ds.get("WindowWidth"))
    if centre is None or width is None or not np.isfinite([centre, width]).all() or width <= 0:
        return None
    return centre, width, str(ds.get("VOILUTFunction") or "LINEAR")


def voi_lut_sequence(x: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT Sequence item applied to modality values `x`, scaled to [0, 1]."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    descriptor = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if descriptor is None or data is None:
        return None
    entries, first_mapped, bits = (int(v) for v in descriptor)
    entries = entries or 65536  # PS3.3 C.11.2.1.1: 0 means 2^16 entries
    if isinstance(data, bytes):
        table = np.frombuffer(data, dtype="<u2" if bits > 8 or len(data) >= 2 * entries else "u1")
    else:
        table = np.asarray(data, dtype=np.float64)
    table = np.asarray(table[:entries], dtype=np.float64)
    # Some writers declare 16 bits for 8-bit tables (a known quirk pydicom also handles): scale by
    # the range the table really spans when it is smaller than the declared one.
    top = float(2**bits - 1)
    if table.max(initial=0) <= 255 and bits > 8:
        top = 255.0
    index = np.clip(np.rint(x) - first_mapped, 0, len(table) - 1).astype(np.int64)
    return table[index] / top


def percentile_limits(values: np.ndarray, counts: np.ndarray | None = None,
                      percentiles: tuple[float, float] = PERCENTILE_WINDOW) -> tuple[float, float]:
    """Robust low/high grey limits from the (weighted) distribution of modality values."""
    if counts is None:
        lo, hi = np.percentile(values, percentiles)
        return float(lo), float(hi)
    present = counts > 0
    v, c = values[present], counts[present]
    order = np.argsort(v, kind="stable")
    v, c = v[order], np.cumsum(c[order])
    total = c[-1]
    lo = v[np.searchsorted(c, total * percentiles[0] / 100.0, side="left")]
    hi = v[min(np.searchsorted(c, total * percentiles[1] / 100.0, side="left"), len(v) - 1)]
    return float(lo), float(hi)


def voi_to_unit(x: np.ndarray, ds: Dataset, counts: np.ndarray | None,
                use_header_voi: bool = True) -> tuple[np.ndarray, str, tuple | None]:
    """Modality values → [0, 1] display values: VOI LUT, else header window, else percentiles."""
    y = voi_lut_sequence(x, ds) if use_header_voi else None
    if y is not None:
        return y, "voi_lut", None
    window = header_window(ds) if use_header_voi else None
    if window is not None:
        centre, width, function = window
        return window_linear(x, centre, width, function), "header_window", (centre, width)
    return _stretch(x, *percentile_limits(x, counts))


def render_grey(pixels: np.ndarray, ds: Dataset, use_header_voi: bool = True) -> Rendering:
    """Render one 2-D frame of stored values to uint8 with the header's grey-level semantics.

    `use_header_voi=False` ignores the header's VOI and always takes the percentile window: some
    writers (the WG04 set among them) store a window spanning the whole bit range, which renders flat.
    """
    invert = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    header_voi = use_header_voi and has_header_voi(ds)
    domain = stored_value_domain(pixels.dtype)
    if domain is None:
        # Wide integers or float pixel data: rare in radiography; evaluate on the image itself.
        x = apply_modality_lut(pixels, ds).astype(np.float64)
        sample = x[:: max(1, x.shape[0] // 512), :: max(1, x.shape[1] // 512)].ravel()
        y, source, window = voi_to_unit(x, ds, None) if header_voi else _stretch(x, *percentile_limits(sample))
        if invert:
            y = 1.0 - y
        return Rendering(np.rint(y * 255.0).astype(np.uint8), source, window)

    values, index_dtype = domain
    index = pixels.view(index_dtype)
    x = apply_modality_lut(values, ds).astype(np.float64)
    counts = None if header_voi else np.bincount(index.ravel(), minlength=len(values))
    y, source, window = voi_to_unit(x, ds, counts, use_header_voi)
    if invert:
        y = 1.0 - y
    table = np.rint(y * 255.0).astype(np.uint8)
    return Rendering(np.take(table, index), source, window)


def has_header_voi(ds: Dataset) -> bool:
    """Whether the header carries a usable VOI (LUT sequence or window): then no percentile window is needed."""
    return bool(ds.get("VOILUTSequence")) or header_window(ds) is not None


def _stretch(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, str, tuple | None]:
    """Percentile limits → [0, 1]; a flat image (hi <= lo) renders black rather than dividing by zero."""
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64), "flat", None
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0), "percentile", ((lo + hi) / 2, hi - lo)

