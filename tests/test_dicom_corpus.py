"""Every pixel-bearing DICOM that pydicom and pydicom-data ship normalises, or fails in plain words."""

import io
import os
import warnings
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_files

from medvec.imaging.dicom import UnreadableImage
from medvec.imaging.normalize import NormalizeOptions, normalize_bytes
from tests.conftest import SHARED_DATA

# Files no installed decoder can read, or that are broken on purpose (../shared/reference/dicom.md):
# name → (stage, words the reason must contain).
EXPECTED_FAILURES = {
    "JPEG-lossy.dcm": ("decode", "could not be decoded as JPEG Extended"),
    # Its corrupt codestream header claims 3.7e9 x 1,024 pixels: the pixel budget refuses it before any decoder.
    "JPEG2000-embedded-sequence-delimiter.dcm": ("decode", "over the 50 Mpx limit"),
    "MR_truncated.dcm": ("decode", "truncated"),
    "emri_small_jpeg_2k_lossless_too_short.dcm": ("parse", "truncated"),
    "meta_missing_tsyntax.dcm": ("parse", "header is incomplete"),
    "nested_priv_SQ.dcm": ("parse", "header is incomplete"),
    "badVR.dcm": ("parse", "Number of Frames is not a number"),
}


def _corpus() -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = sorted({Path(f) for f in get_testdata_files("*") if os.path.isfile(f)}, key=lambda p: p.name)
    pixel_files = []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, defer_size=64)
        except Exception:  # noqa: BLE001 - not DICOM at all: covered by the error tests
            continue
        if "PixelData" in ds or path.name in EXPECTED_FAILURES:
            pixel_files.append(path)
    return pixel_files


CORPUS = _corpus()


def test_corpus_includes_every_codec_and_layout_named_in_the_issue():
    names = {p.name for p in CORPUS}
    for required in ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_UNCR.dcm",
                     "RG3_J2KR.dcm", "MR_small_RLE.dcm", "JPGExtended.dcm", "JPEG-LL.dcm",
                     "JPEGLSNearLossless_16.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm",
                     "OBXXXX1A_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm",
                     "mlut_18.dcm", "vlut_04.dcm", "JPEG-lossy.dcm", "MR_truncated.dcm"):
        assert required in names, f"{required} missing: is pydicom-data installed?"
    assert len(CORPUS) > 100


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_file_normalises_or_fails_in_plain_words(path, pseudonymizer):
    # Decoding is what this corpus tests: its ultrasound and colour files would otherwise be refused for
    # possible burned-in text (PS3.15 E.1, tests/test_phi.py), before any decoder ran.
    data, options = path.read_bytes(), NormalizeOptions(allow_burned_in=True)
    if path.name in EXPECTED_FAILURES:
        stage, words = EXPECTED_FAILURES[path.name]
        with pytest.raises(UnreadableImage) as failure:
            normalize_bytes(data, str(path), pseudonymizer=pseudonymizer, options=options)
        assert failure.value.stage == stage
        assert words in failure.value.reason
        return
    result = normalize_bytes(data, str(path), pseudonymizer=pseudonymizer, options=options)
    view = Image.open(io.BytesIO(result.view_webp))
    thumb = Image.open(io.BytesIO(result.thumb_webp))
    assert view.format == "WEBP" and view.size == (result.record.width, result.record.height)
    assert max(view.size) <= 512 and max(thumb.size) <= 256
    assert max(view.size) == min(512, max(result.record.rows, result.record.columns))
    assert result.record.source_format == "dicom"
    assert result.record.window_source in {"voi_lut", "header_window", "percentile", "flat", "colour", "grey-rgb"}


def test_multi_frame_uses_the_first_frame_and_says_so(pseudonymizer):
    path = next(p for p in CORPUS if p.name == "emri_small_big_endian.dcm")
    result = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    assert result.record.frames == 10
    assert any("first frame" in note for note in result.notes)


def test_file_without_meta_header_is_read_in_the_syntax_it_was_written_in(pseudonymizer):
    path = SHARED_DATA / "dicom" / "CR-chest-PA-mono1-10bit-no-preamble.dcm"
    if not path.exists():
        pytest.skip("../shared/data is not present beside this checkout")
    result = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    assert result.record.transfer_syntax == pydicom.uid.ImplicitVRLittleEndian
    assert result.record.photometric == "MONOCHROME1"


@pytest.mark.parametrize("name", ["CR-chest-PA-mono1-10bit-no-preamble.dcm", "CR-chest-PA-mono2-8bit-jpeg-baseline.dcm",
                                  "DX-chest-PA-mono1-12bit-j2k-lossless.dcm", "CR-hip-mono2-10bit-jpeg-extended.dcm"])
def test_real_archive_files_normalise(name, pseudonymizer):
    path = SHARED_DATA / "dicom" / name
    if not path.exists():
        pytest.skip("../shared/data is not present beside this checkout")
    result = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    assert result.record.modality in {"CR", "DX"}
    assert max(result.record.width, result.record.height) == min(512, max(result.record.rows, result.record.columns))
