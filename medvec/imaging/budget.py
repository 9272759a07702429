"""The pixel budget: how large a frame a header claims, checked before any decoder allocates for it.

A 280 KB PNG can decode to 12000 x 12000 16-bit (1.8 GB), and a tiny file can claim 100k x 100k. Every
format's size is read from its header only (Pillow's lazy open, DICOM Rows/Columns/SamplesPerPixel, the
JPEG SOF or JPEG 2000 SIZ of the first frame's codestream, which may disagree with the DICOM header) and
compared with `max_pixels` (MEDVEC_MAX_PIXELS).

The budget is per frame, not Rows x Columns x frames x samples: Medvec only ever decodes the first frame
of a multi-frame DICOM (`decode_first_frame` asks pydicom for frame 0 alone, or one fragment's
codestream), so what a decoder allocates is one frame, however many frames the header claims. The
other frames cost only their stored bytes, which MEDVEC_MAX_FILE_BYTES bounds before the file is read.
Multiplying by the frame count would refuse a 200-frame 512 x 512 CT cine (52 Mpx in all, 0.26 Mpx
decoded). A decoder that read every frame would have to multiply by the frame count first.
"""

from __future__ import annotations

import struct

from PIL import Image

from medvec.imaging.dicom import UnreadableImage
from medvec.imaging.reduced import J2K_SYNTAXES, read_codestream_header

#: DICOM JPEG-family transfer syntaxes whose frames start with a JPEG (or JPEG-LS) SOF segment.
JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS lossless / near-lossless (SOF55)
})
# Start-of-frame markers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC); SOF55 is JPEG-LS.
_SOF = frozenset(range(0xFFC0, 0xFFD0)) - {0xFFC4, 0xFFC8, 0xFFCC} | {0xFFF7}


def use_pillow_limit(max_pixels: int) -> None:
    """Pillow's own bomb guard agrees with ours: it refuses at twice MAX_IMAGE_PIXELS and warns above
    it, inside `Image.open`, so a limit below ours would refuse images our budget allows."""
    if Image.MAX_IMAGE_PIXELS != max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def check_pixels(rows: int, columns: int, samples: int, max_pixels: int, *, what: str, frames: int = 1) -> None:
    """Raise `UnreadableImage` when one frame of `rows` x `columns` x `samples` is over the budget (the
    header's `frames` is named in the message, not multiplied: one frame is decoded)."""
    pixels = rows * columns * max(samples, 1)
    if pixels > max_pixels:  # an empty or missing size is left to the decoder, which says what is missing
        many = f" ({frames} frames; only the first is decoded)" if frames > 1 else ""
        raise UnreadableImage(
            "decode", f"the {what} claims {columns:,} x {rows:,} x {samples} samples = {pixels / 1e6:,.0f} Mpx "
                      f"per frame{many}, over the {max_pixels / 1e6:,.0f} Mpx limit (MEDVEC_MAX_PIXELS); not decoded")


def check_raster_budget(image: Image.Image, max_pixels: int) -> None:
    """A lazily opened Pillow image (header read, nothing decoded)."""
    check_pixels(image.height, image.width, len(image.getbands()), max_pixels, what=f"{image.format or 'image'} header")


def check_dicom_budget(ds, max_pixels: int) -> None:
    """Rows x Columns x SamplesPerPixel from the header, then the first frame's own codestream header: one
    frame, the only one `decode_first_frame` decodes (see the module's note)."""
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise UnreadableImage("parse", "the header's Rows, Columns, Samples per Pixel or Number of Frames is "
                                       "not a number", exc) from exc
    check_pixels(rows, columns, samples, max_pixels, what="DICOM header", frames=frames)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if syntax not in J2K_SYNTAXES and syntax not in JPEG_SYNTAXES:
        return
    frame = _first_fragment(ds)
    if frame is None:
        return
    if syntax in J2K_SYNTAXES:
        header = read_codestream_header(frame)
        if header is not None:
            check_pixels(header.height, header.width, header.components, max_pixels,
                         what="JPEG 2000 codestream", frames=frames)
        return
    size = read_jpeg_sof(frame)
    if size is not None:
        check_pixels(size[0], size[1], size[2], max_pixels, what="JPEG codestream", frames=frames)


def _first_fragment(ds) -> bytes | None:
    """The first fragment of encapsulated pixel data (where the first frame's codestream header sits),
    read from the basic offset table's end without splitting the whole stream into frames."""
    data = ds.get("PixelData")
    if not isinstance(data, (bytes, bytearray)) or len(data) < 16:
        return None
    pos = 0
    for _ in range(2):  # the offset table item, then the first fragment
        tag, length = struct.unpack("<II", bytes(data[pos:pos + 8]))
        if tag != 0xE000FFFE:
            return None
        if _ == 1:
            return bytes(data[pos + 8:pos + 8 + min(length, 1 << 16)])
        pos += 8 + length
    return None


def read_jpeg_sof(stream: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG or JPEG-LS start-of-frame segment; None when absent."""
    if stream[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(stream):
        marker, length = struct.unpack(">HH", stream[pos:pos + 4])
        if marker >> 8 != 0xFF:
            return None
        if marker in _SOF and pos + 10 <= len(stream):
            rows, columns = struct.unpack(">HH", stream[pos + 5:pos + 9])
            return rows, columns, stream[pos + 9]
        if marker == 0xFFDA:  # start of scan: no frame header before it
            return None
        pos += 2 + length
    return None
