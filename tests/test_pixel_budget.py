"""The pixel budget is per frame because only the first frame of a multi-frame DICOM is ever decoded.

(The bombs themselves, in every format, are in tests/test_hostile_inputs.py.)"""

import pydicom
import pytest

from medvec.imaging.dicom import UnreadableImage, decode_first_frame
from medvec.imaging.normalize import NormalizeOptions, normalize_bytes
from tests.conftest import dicom_testfile

FRAME = 64 * 64  # emri_small: ten 64 x 64 MR frames; the RLE copy holds one encapsulated fragment per frame


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm"])
def test_only_the_first_frame_is_decoded(name):
    ds = pydicom.dcmread(dicom_testfile(name))
    assert int(ds.NumberOfFrames) == 10
    frame = decode_first_frame(ds)
    assert frame.pixels.shape == (64, 64) and frame.frames == 10


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm"])
def test_a_multi_frame_file_whose_frames_together_exceed_the_budget_is_ingested(name, pseudonymizer):
    data = dicom_testfile(name).read_bytes()
    budget = NormalizeOptions(max_pixels=2 * FRAME)  # one frame fits; all ten (40960 px) would not
    result = normalize_bytes(data, name, pseudonymizer=pseudonymizer, options=budget)
    assert result.record.frames == 10 and result.notes == ["multi-frame (10 frames): first frame used"]


def test_a_frame_over_the_budget_is_refused_and_the_reason_names_the_frames(pseudonymizer):
    data = dicom_testfile("emri_small.dcm").read_bytes()
    with pytest.raises(UnreadableImage, match="MEDVEC_MAX_PIXELS") as refused:
        normalize_bytes(data, "x", pseudonymizer=pseudonymizer, options=NormalizeOptions(max_pixels=FRAME - 1))
    assert refused.value.stage == "decode"
    assert "64 x 64 x 1 samples" in refused.value.reason and "10 frames; only the first is decoded" in refused.value.reason
