"""One source file → a metadata record and two WebP images (viewing size and thumbnail).

Radiographs are stored grey, photographs (RGB/YBR DICOM, colour PNG/JPEG) in colour; the record's
`window_source` is "colour" exactly when the stored WebP is colour (medvec.imaging.colour).

`normalize_bytes` is pure (bytes in, record and encoded images out) so the batch runner, the
`medvec normalize` command and the search path (upload a query image) all share it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from medvec.home import image_paths
from medvec.imaging.budget import check_dicom_budget
from medvec.settings import DEFAULT_MAX_PIXELS
from medvec.imaging.dicom import DicomFrame, UnreadableImage, decode_first_frame, read_dataset
from medvec.datasets.metadata_csv import ImageMetadata
from medvec.phi import Pseudonymizer
from medvec.imaging.raster import read_raster, sniff_raster
from medvec.tables.records import ImageRecord
from medvec.imaging.webp import encode_webp, fit_long_side, pad_to_square
from medvec.imaging.colour import colour_or_grey, to_rgb8
from medvec.imaging.windowing import has_header_voi, render_grey

#: Longest image id: ids are keyed `2.25.` UIDs (at most 44 characters, digits and dots) or content
#: hashes (64 hex digits), whatever the source's UID was, so file names stay far below 255 bytes.
MAX_ID_LENGTH = 64


@dataclass(frozen=True)
class NormalizeOptions:
    size: int = 512  # long side of the viewing WebP
    thumb_size: int = 256
    pad_square: bool = False
    window: str = "header"  # "header": the file's VOI when present; "percentile": always a robust window
    quality: int = 90
    thumb_quality: int = 80
    webp_method: int = 0  # libwebp effort 0-6: 0 took 4.3 ms vs 6.6 ms for 2 at 44.9 vs 45.1 dB PSNR
    allow_tags: tuple[str, ...] = ()  # extra DICOM keywords the user explicitly allows into `extra`
    max_pixels: int = DEFAULT_MAX_PIXELS  # one frame's rows x columns x samples, checked before decoding
    date_policy: str = "remove"  # dates among allowed tags: "remove", or "shift" by a keyed per-subject offset
    # PS3.15 E.1: pixels may carry burned-in text (names, dates). Refused unless allowed.
    allow_burned_in: bool = False
    burned_in_modalities: tuple[str, ...] = ("US", "SC", "XA")


@dataclass
class NormalizedImage:
    record: ImageRecord
    view_webp: bytes
    thumb_webp: bytes
    notes: list[str] = field(default_factory=list)


def normalize_bytes(data: bytes, source_uri: str, *, batch: str = "", options: NormalizeOptions = NormalizeOptions(),
                    pseudonymizer: Pseudonymizer, metadata: ImageMetadata | None = None,
                    content_sha256: str | None = None) -> NormalizedImage:
    """Decode, render and encode one file. Raises `UnreadableImage` for expected failures."""
    if options.window not in ("header", "percentile"):
        raise ValueError(f"window must be 'header' or 'percentile', not {options.window!r}")
    if options.date_policy not in ("remove", "shift"):
        raise ValueError(f"date_policy must be 'remove' or 'shift', not {options.date_policy!r}")
    if not data:
        raise UnreadableImage("read", "empty file (0 bytes)")
    sha = content_sha256 or hashlib.sha256(data).hexdigest()
    # A DICOM preamble may itself look like TIFF (WG04 files are dual-format): "DICM" decides first.
    raster_kind = None if data[128:132] == b"DICM" else sniff_raster(data)
    if raster_kind:
        pixels, info = read_raster(data, options.size, max_pixels=options.max_pixels)
        record = ImageRecord(
            image_id=sha, batch=batch, source_uri=source_uri, content_sha256=sha, image_uri="", thumb_uri="",
            source_format=raster_kind, rows=info["rows"], columns=info["columns"],
            photometric=info["photometric"], bits_stored=info["bits_stored"], window_source=info["window_source"],
        )
    else:
        # pydicom's warnings quote element values (names, IDs): never let them reach a log.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(data)
            check_dicom_budget(ds, options.max_pixels)
            _refuse_burned_in_text(ds, options)
            use_header_voi = options.window == "header"
            frame = decode_first_frame(ds, options.size, window_from_header=use_header_voi and has_header_voi(ds))
            pixels, window_source = _render_dicom(frame, use_header_voi)
            record = _dicom_record(frame, sha, batch, source_uri, pseudonymizer, options)
        record.window_source = window_source
    if metadata is not None:
        _apply_metadata(record, metadata)

    try:
        if options.pad_square:
            pixels = pad_to_square(pixels)
        image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB" if pixels.ndim == 3 else "L")
        view = fit_long_side(image, options.size)
        thumb = fit_long_side(view, options.thumb_size)
        view_webp = encode_webp(view, options.quality, options.webp_method)
        thumb_webp = encode_webp(thumb, options.thumb_quality, options.webp_method)
    except (ValueError, OSError, MemoryError) as exc:
        raise UnreadableImage("render", f"could not resize or encode the image ({str(exc)[:160]})", exc) from exc
    record.image_uri, record.thumb_uri = image_paths(record.image_id)
    record.width, record.height = view.size
    notes = [f"multi-frame ({record.frames} frames): first frame used"] if record.frames > 1 else []
    return NormalizedImage(record, view_webp, thumb_webp, notes)


def _refuse_burned_in_text(ds, options: NormalizeOptions) -> None:
    if options.allow_burned_in:
        return
    burned = (_text(ds, "BurnedInAnnotation") or "").upper()
    modality = (_text(ds, "Modality") or "").upper()
    if burned == "YES":
        raise UnreadableImage("deidentify", "BurnedInAnnotation is YES: the pixels may show names or dates; "
                              "excluded (allow burned-in images with MEDVEC_ALLOW_BURNED_IN=1 once checked)")
    if burned != "NO" and modality in options.burned_in_modalities:
        raise UnreadableImage("deidentify", f"modality {modality} often has names or dates burned into the pixels; "
                              "excluded (set MEDVEC_BURNED_IN_MODALITIES or MEDVEC_ALLOW_BURNED_IN=1 once checked)")


def _render_dicom(frame: DicomFrame, use_header_voi: bool) -> tuple[np.ndarray, str]:
    if frame.is_colour:  # RGB, YBR_* (converted to RGB by pydicom) or a palette
        pixels, colour = colour_or_grey(to_rgb8(frame.pixels, frame.colour_max))
        return pixels, "colour" if colour else "grey-rgb"
    try:
        rendering = render_grey(frame.pixels, frame.dataset, use_header_voi)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UnreadableImage("render", f"grey-level lookup tables in the header are unusable ({str(exc)[:160]})", exc) from exc
    return rendering.pixels, rendering.window_source


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(ds, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword)) if ds.get(keyword) is not None else None
    except (TypeError, ValueError):
        return None


def _dicom_record(frame: DicomFrame, sha: str, batch: str, source_uri: str, pseudonymizer: Pseudonymizer,
                  options: NormalizeOptions) -> ImageRecord:
    """Copy the allow-listed attributes only (medvec.phi.RECORD_TAGS) plus tags the user allowed; UIDs
    replaced by keyed `2.25.` UIDs and dates removed or shifted (PS3.15 basic profile, docs/privacy.md)."""
    ds = frame.dataset
    # The keyed UID is digits and dots, at most 44 characters: a safe file name by construction; a file
    # without a UID falls back to the content hash.
    image_id = pseudonymizer.uid(_text(ds, "SOPInstanceUID")) or sha
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        pixel_spacing = [float(v) for v in spacing] if spacing is not None else None
    except (TypeError, ValueError):
        pixel_spacing = None
    extra = _allowed_tags(ds, pseudonymizer, options)
    return ImageRecord(
        image_id=image_id, batch=batch, source_uri=source_uri, content_sha256=sha, image_uri="", thumb_uri="",
        source_format="dicom",
        study_id=pseudonymizer.uid(_text(ds, "StudyInstanceUID")),
        series_id=pseudonymizer.uid(_text(ds, "SeriesInstanceUID")),
        subject_key=pseudonymizer.subject_key(_text(ds, "PatientID")),
        view_position=(_text(ds, "ViewPosition") or "").upper() or None,
        modality=_text(ds, "Modality"), body_part=(_text(ds, "BodyPartExamined") or "").upper() or None,
        rows=_int(ds, "Rows"), columns=_int(ds, "Columns"),
        photometric=_text(ds, "PhotometricInterpretation"), bits_stored=_int(ds, "BitsStored"),
        pixel_spacing=pixel_spacing, transfer_syntax=frame.transfer_syntax, frames=frame.frames, extra=extra,
    )


def _allowed_tags(ds, pseudonymizer: Pseudonymizer, options: NormalizeOptions) -> dict[str, str]:
    """Tags the user allowed, with UIDs replaced and dates removed or shifted like the record's own."""
    subject = _text(ds, "PatientID") or _text(ds, "StudyInstanceUID") or ""
    extra = {}
    for keyword in options.allow_tags:
        value = _text(ds, keyword)
        element = ds.data_element(keyword) if value is not None else None
        vr = getattr(element, "VR", "")
        if value is None:
            continue
        if vr == "UI":
            value = pseudonymizer.uid(value)
        elif vr in ("DA", "DT"):
            value = pseudonymizer.shift_date(value, subject) if options.date_policy == "shift" else None
        if value is not None:
            extra[keyword] = value
    return extra


def _apply_metadata(record: ImageRecord, meta: ImageMetadata) -> None:
    """Curated CSV values fill and override header values (labels and split exist only there)."""
    record.labels = list(meta.labels)
    record.split = meta.split or record.split
    record.view_position = meta.view_position or record.view_position
    record.subject_key = meta.subject_key or record.subject_key
    record.study_id = meta.study_id or record.study_id
    weights = {"label_weights": json.dumps(meta.label_weights, sort_keys=True)} if meta.label_weights else {}
    demographics = dict(meta.demographics)
    record.sex = demographics.pop("sex", None) or record.sex
    record.age_group = demographics.pop("age_group", None) or record.age_group
    record.skin_type = demographics.pop("fitzpatrick_skin_type", None) or record.skin_type
    record.extra = {**meta.extra, **demographics, **weights, **record.extra}


