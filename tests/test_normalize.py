"""Rendering behaviour on real chest DICOM, raster inputs, metadata CSVs and the WebP outputs."""

import io
import struct

import numpy as np
import pydicom
import pytest
from PIL import Image

from medvec.datasets.metadata_csv import MetadataTable
from medvec.imaging.normalize import NormalizeOptions, normalize_bytes
from medvec.imaging.windowing import render_grey
from tests.conftest import SHARED_DATA, dicom_testfile


def _grey(webp: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(webp)).convert("L"), dtype=float)


def test_monochrome1_chest_renders_lungs_dark_and_mediastinum_bright(pseudonymizer):
    path = dicom_testfile("RG1_UNCR.dcm")
    result = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    assert result.record.photometric == "MONOCHROME1"
    image = _grey(result.view_webp)
    h, w = image.shape
    rows = slice(int(0.35 * h), int(0.6 * h))
    right_lung = image[rows, int(0.2 * w):int(0.35 * w)].mean()
    left_lung = image[rows, int(0.65 * w):int(0.8 * w)].mean()
    mediastinum = image[rows, int(0.46 * w):int(0.54 * w)].mean()
    assert mediastinum > right_lung + 50 and mediastinum > left_lung + 50


def test_header_window_of_rg1_is_applied_exactly():
    ds = pydicom.dcmread(dicom_testfile("RG1_UNCR.dcm"))
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    pixels = ds.pixel_array
    rendering = render_grey(pixels, ds)
    assert rendering.window_source == "header_window" and rendering.window == (centre, width)
    x = pixels[::97, ::89].astype(float) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    y = np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)
    expected = 255 - np.rint(y * 255)  # MONOCHROME1: inverted after the window
    assert np.abs(rendering.pixels[::97, ::89].astype(int) - expected).max() <= 1


def test_percentile_window_replaces_a_missing_header_window(pseudonymizer):
    ds = pydicom.dcmread(dicom_testfile("RG1_UNCR.dcm"))
    with_window = render_grey(ds.pixel_array, ds)
    del ds.WindowCenter, ds.WindowWidth
    without = render_grey(ds.pixel_array, ds)
    assert without.window_source == "percentile"
    assert without.pixels.min() == 0 and without.pixels.max() == 255
    assert not np.array_equal(with_window.pixels, without.pixels)


def _riff_chunks(webp: bytes) -> list[tuple[bytes, bytes]]:
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    chunks, offset = [], 12
    while offset < len(webp):
        fourcc, size = webp[offset:offset + 4], struct.unpack("<I", webp[offset + 4:offset + 8])[0]
        chunks.append((fourcc, webp[offset + 8:offset + 8 + size]))
        offset += 8 + size + (size & 1)
    return chunks


def test_webp_outputs_carry_no_metadata_chunks(pseudonymizer):
    path = dicom_testfile("RG1_UNCR.dcm")
    result = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    for webp in (result.view_webp, result.thumb_webp):
        fourccs = {fourcc for fourcc, _ in _riff_chunks(webp)}
        assert fourccs <= {b"VP8 ", b"VP8L", b"VP8X", b"ALPH"}
        assert not fourccs & {b"EXIF", b"XMP ", b"ICCP"}


def test_pad_square_and_sizes(pseudonymizer):
    path = dicom_testfile("RG1_UNCR.dcm")  # 1841 wide x 1955 high
    plain = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer,
                            options=NormalizeOptions(size=300, thumb_size=100))
    assert (plain.record.width, plain.record.height) == (round(1841 * 300 / 1955), 300)
    padded = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer,
                             options=NormalizeOptions(size=300, thumb_size=100, pad_square=True))
    assert (padded.record.width, padded.record.height) == (300, 300)
    assert Image.open(io.BytesIO(padded.thumb_webp)).size == (100, 100)


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt) if mode else Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _gradient(dtype, lo, hi, shape=(300, 200)) -> np.ndarray:
    return np.linspace(lo, hi, shape[0] * shape[1]).reshape(shape).astype(dtype)


@pytest.mark.parametrize("fmt,array,kind", [
    ("PNG", _gradient(np.uint8, 0, 255), "png"),
    ("PNG", _gradient(np.uint16, 1000, 3000), "png"),
    ("JPEG", _gradient(np.uint8, 10, 240), "jpeg"),
    ("TIFF", _gradient(np.uint16, 200, 60000), "tiff"),
    ("TIFF", _gradient(np.uint8, 0, 255), "tiff"),
])
def test_raster_inputs_render_full_range_grey(fmt, array, kind, pseudonymizer):
    data = _encode(array, fmt)
    result = normalize_bytes(data, f"x.{kind}", pseudonymizer=pseudonymizer)
    record = result.record
    assert record.source_format == kind and (record.rows, record.columns) == array.shape
    assert record.image_id == record.content_sha256  # non-DICOM: content hash
    image = _grey(result.view_webp)
    assert image.shape == array.shape  # small sources are never enlarged
    assert image[:5].mean() < 30 and image[-5:].mean() > 215  # dark top, bright bottom
    assert record.bits_stored == (16 if array.dtype == np.uint16 else 8)


def test_colour_raster_stays_colour(pseudonymizer):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)
    rgb[:, 32:] = (0, 255, 0)
    result = normalize_bytes(_encode(rgb, "PNG"), "c.png", pseudonymizer=pseudonymizer)
    image = np.asarray(Image.open(io.BytesIO(result.view_webp)).convert("RGB"), dtype=float)
    assert np.abs(image[:, :28].mean(axis=(0, 1)) - (255, 0, 0)).max() < 12
    assert np.abs(image[:, 36:].mean(axis=(0, 1)) - (0, 255, 0)).max() < 12
    assert (result.record.photometric, result.record.window_source) == ("RGB", "colour")


NIH_CSV = """Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,Patient Name,split
00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,SENTINEL^NAME,train
00000002_000.png,No Finding,0,2,81,F,ap,SENTINEL^OTHER,test
"""


def test_nih_style_csv_maps_labels_view_split_and_pseudonymised_patient(pseudonymizer):
    table = MetadataTable.from_csv_text(NIH_CSV, pseudonymizer)
    first = table.lookup("/data/nih/images/00000001_000.png")
    # NIH names map into the CheXpert vocabulary (medvec.datasets.labels): Effusion → Pleural Effusion.
    assert first.labels == ["Cardiomegaly", "Pleural Effusion"] and first.view_position == "PA" and first.split == "train"
    assert first.subject_key == pseudonymizer.subject_key("1") and first.subject_key != "1"
    assert first.extra["patient_age"] == "58" and first.extra["follow_up_#"] == "0"
    assert "patient_name" not in first.extra and table.dropped_columns == ["Patient Name"]
    second = table.lookup("s3://bucket/x/00000002_000.png")
    assert second.labels == ["No Finding"] and second.view_position == "AP"  # a label of its own (CheXpert)


def test_allowed_identifying_column_is_kept_when_the_user_asks(pseudonymizer):
    table = MetadataTable.from_csv_text(NIH_CSV, pseudonymizer, allow_columns=("Patient Name",))
    assert table.lookup("00000001_000.png").extra["patient_name"] == "SENTINEL^NAME"


def test_csv_row_matches_by_relative_path_before_file_name(pseudonymizer):
    text = "path,labels\na/img.png,Edema\nb/img.png,Pneumonia\n"
    table = MetadataTable.from_csv_text(text, pseudonymizer)
    assert table.lookup("/root/b/img.png").labels == ["Pneumonia"]
    assert table.lookup("/elsewhere/img.png") is None  # ambiguous by name alone


def test_a_label_column_that_is_not_chest_findings_keeps_the_datasets_own_labels(pseudonymizer):
    """A fundus or dermatology set's labels.csv keeps its own conditions (they become the collection's
    vocabulary); a chest set's names still map into the CheXpert findings, with the odd ones left over."""
    own = MetadataTable.from_csv_text(
        "path,labels\na.png,Diabetic Retinopathy|Glaucoma\nb.png,Glaucoma\nc.png,none\nd.png,Effusion\n",
        pseudonymizer)
    assert own.lookup("a.png").labels == ["Diabetic Retinopathy", "Glaucoma"]
    assert own.lookup("c.png").labels == [] and own.lookup("d.png").labels == ["Effusion"]
    assert "unmapped_labels" not in own.lookup("a.png").extra
    chest = MetadataTable.from_csv_text("path,labels\na.png,Effusion|Hernia\nb.png,Edema\n", pseudonymizer)
    assert chest.lookup("a.png").labels == ["Pleural Effusion"]
    assert chest.lookup("a.png").extra["unmapped_labels"] == "Hernia"


def test_nih1000_pngs_with_labels_csv(pseudonymizer):
    root = SHARED_DATA / "nih1000"
    if not (root / "labels.csv").exists():
        pytest.skip("../shared/data/nih1000 is not present beside this checkout")
    table = MetadataTable.from_csv_text((root / "labels.csv").read_text(), pseudonymizer)
    assert len(table) == 1000
    files = sorted((root / "images").rglob("*.png"))[:40]
    for path in files:
        result = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer,
                                 metadata=table.lookup(str(path)))
        assert result.record.split == path.parts[-3]
        assert ("No Finding" in result.record.labels) == (path.parts[-2] == "0_normal")
        assert result.record.view_position in {"PA", "AP"}


def test_percentile_window_option_ignores_a_full_range_header_window(pseudonymizer):
    path = dicom_testfile("RG1_UNCR.dcm")  # WG04 header window spans the whole 15-bit range
    header = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    robust = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer,
                             options=NormalizeOptions(window="percentile"))
    assert header.record.window_source == "header_window" and robust.record.window_source == "percentile"
    assert _grey(robust.view_webp).std() > _grey(header.view_webp).std() * 1.3  # more contrast
