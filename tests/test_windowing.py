"""Grey-level rendering semantics (PS3.3 C.11) on constructed datasets and real files."""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medvec.imaging.windowing import (percentile_limits, render_grey, stored_value_domain, window_linear)
from tests.conftest import dicom_testfile


def _dataset(photometric="MONOCHROME2", **elements) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.BitsStored = 12
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def test_linear_window_follows_the_standard_formula():
    # C.11.2.1.2.1: c=2048, w=4096 → x <= c-0.5-(w-1)/2 is black, x > c-0.5+(w-1)/2 is white.
    x = np.array([0.0, 0.5, 2047.5, 4095.0, 4096.0])
    y = window_linear(x, 2048, 4096)
    assert y[0] == 0.0 and y[-1] == 1.0
    assert y[2] == pytest.approx(0.5)
    assert y[3] == pytest.approx((4095 - 2047.5) / 4095 + 0.5)


def test_linear_exact_and_sigmoid_windows_centre_at_half():
    assert window_linear(np.array([100.0]), 100, 50, "LINEAR_EXACT")[0] == pytest.approx(0.5)
    assert window_linear(np.array([100.0]), 100, 50, "SIGMOID")[0] == pytest.approx(0.5)
    assert window_linear(np.array([0.0, 200.0]), 100, 50, "SIGMOID").tolist() == pytest.approx([0, 1], abs=1e-3)


def test_signed_stored_values_index_the_table_without_an_offset_copy():
    values, index_dtype = stored_value_domain(np.dtype(np.int16))
    pixels = np.array([[-1024, 0, 3071]], dtype=np.int16)
    assert values[pixels.view(index_dtype)].tolist() == [[-1024, 0, 3071]]


def test_header_window_is_used_when_present():
    pixels = np.array([[0, 1000, 1500, 2000, 4000]], dtype=np.uint16)
    ds = _dataset(WindowCenter=1500, WindowWidth=1001)
    rendering = render_grey(pixels, ds)
    assert rendering.window_source == "header_window"
    assert rendering.pixels.tolist() == [[0, 0, 128, 255, 255]]


def test_first_of_several_windows_is_used():
    pixels = np.array([[1000, 1500, 2000]], dtype=np.uint16)
    ds = _dataset(WindowCenter=[1500, 100], WindowWidth=[1001, 50])
    assert render_grey(pixels, ds).pixels.tolist() == [[0, 128, 255]]


def test_rescale_slope_and_intercept_apply_before_the_window():
    pixels = np.array([[0, 1024, 2048]], dtype=np.uint16)
    ds = _dataset(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2049)
    assert render_grey(pixels, ds).pixels.tolist() == [[0, 128, 255]]


def test_percentile_window_when_the_header_has_none():
    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 3000, size=(200, 200), dtype=np.uint16)
    pixels[0, :5] = [0, 0, 0, 65535, 65535]  # outliers must not stretch the window
    rendering = render_grey(pixels, _dataset())
    assert rendering.window_source == "percentile"
    assert rendering.pixels.min() == 0 and rendering.pixels.max() == 255
    assert 100 < rendering.pixels.mean() < 155  # mid-grey: the outliers did not flatten the image


def test_weighted_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 500, size=10000)
    counts = np.bincount(data, minlength=500)
    lo, hi = percentile_limits(np.arange(500, dtype=float), counts, (1, 99))
    assert lo == pytest.approx(np.percentile(data, 1, method="inverted_cdf"))
    assert hi == pytest.approx(np.percentile(data, 99, method="inverted_cdf"))


def test_monochrome1_inverts_after_the_window():
    pixels = np.array([[1000, 2000]], dtype=np.uint16)
    mono2 = render_grey(pixels, _dataset(WindowCenter=1500, WindowWidth=1001)).pixels
    mono1 = render_grey(pixels, _dataset("MONOCHROME1", WindowCenter=1500, WindowWidth=1001)).pixels
    assert (mono1.astype(int) + mono2).tolist() == [[255, 255]]


def test_flat_image_renders_black_not_an_error():
    rendering = render_grey(np.full((8, 8), 7, dtype=np.uint16), _dataset())
    assert rendering.window_source == "flat" and rendering.pixels.max() == 0


def test_voi_lut_sequence_is_applied():
    ds = pydicom.dcmread(dicom_testfile("vlut_04.dcm"))
    rendering = render_grey(ds.pixel_array, ds)
    assert rendering.window_source == "voi_lut"
    item = ds.VOILUTSequence[0]
    first_mapped = int(item.LUTDescriptor[1])
    lut = np.asarray(item.LUTData, dtype=float)
    stored = ds.pixel_array.astype(int)
    expected = lut[np.clip(stored - first_mapped, 0, len(lut) - 1)]
    expected = np.rint(expected / (2 ** int(item.LUTDescriptor[2]) - 1 if expected.max() > 255 else 255) * 255)
    assert np.abs(rendering.pixels.astype(int) - expected).max() <= 1


def test_modality_lut_sequence_is_applied():
    ds = pydicom.dcmread(dicom_testfile("mlut_18.dcm"))
    assert "ModalityLUTSequence" in ds
    rendering = render_grey(ds.pixel_array, ds)
    modality = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(float)
    # Rendering must be monotonic in the modality output, not in the raw stored values.
    order = np.argsort(modality.ravel(), kind="stable")
    assert np.all(np.diff(rendering.pixels.ravel()[order].astype(int)) >= 0)
