"""Decoding at the output size: JPEG 2000 / HTJ2K wavelet levels and baseline JPEG DCT scaling agree
with a downscaled full decode, and fall back to it when the reduced decode fails."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import UID, JPEG2000Lossless, generate_uid

from medvec.imaging.dicom import decode_first_frame, read_dataset
from medvec.imaging.normalize import normalize_bytes
from medvec.imaging.raster import read_raster
from medvec.imaging.reduced import choose_reduction, read_codestream_header
from medvec.imaging.webp import fit_long_side
from medvec.imaging.windowing import has_header_voi, render_grey
from tests.conftest import SHARED_DATA, dicom_testfile

MAX_MEAN_GREY_DIFF = 1.5
HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K_LOSSY = (UID("1.2.840.10008.1.2.4.201"), UID("1.2.840.10008.1.2.4.202"),
                                          UID("1.2.840.10008.1.2.4.203"))


def _view(data: bytes, target: int | None, window: bool = True, size: int = 512) -> np.ndarray:
    """The 512 px grey view as normalize_bytes renders it, decoded at `target` (None: full size)."""
    ds = read_dataset(data)
    frame = decode_first_frame(ds, target, window_from_header=window and has_header_voi(ds))
    grey = render_grey(frame.pixels, frame.dataset, window).pixels
    return np.asarray(fit_long_side(Image.fromarray(grey), size), dtype=float)


def _assert_agrees(data: bytes, size: int = 512) -> None:
    for window in (True, False):  # the header's window and the percentile window both agree
        reduced, full = _view(data, size, window, size), _view(data, None, window, size)
        assert reduced.shape == full.shape
        assert np.abs(reduced - full).mean() <= MAX_MEAN_GREY_DIFF


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"])
def test_jpeg2000_reduced_decode_matches_a_downscaled_full_decode(name):
    data = dicom_testfile(name).read_bytes()
    frame = decode_first_frame(read_dataset(data), 256)
    assert frame.reduced and max(frame.pixels.shape) >= 256
    _assert_agrees(data, 512)
    _assert_agrees(data, 256)


@pytest.mark.parametrize("name", ["DX-chest-PA-mono1-12bit-j2k-lossless.dcm", "CR-chest-PA-mono2-8bit-jpeg-baseline.dcm"])
def test_shared_chest_files_decode_reduced_and_agree(name):
    path = SHARED_DATA / "dicom" / name
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    data = path.read_bytes()
    frame = decode_first_frame(read_dataset(data), 512)
    assert frame.reduced and 512 <= max(frame.pixels.shape) < 1024 + 64  # J2K keeps >= 1.5x the target
    _assert_agrees(data)


@pytest.fixture(scope="module")
def dx_sized_chest() -> bytes:
    """A chest at a DX detector's size: RG1's 15-bit pixels bicubic-resized to 2500x3000 with seeded noise
    restoring RG1's own pixel-to-pixel variation (median neighbour difference ~120), JPEG 2000 lossless."""
    ds = pydicom.dcmread(dicom_testfile("RG1_UNCR.dcm"))
    big = Image.fromarray(ds.pixel_array.astype(np.float32), mode="F").resize((2500, 3000), Image.Resampling.BICUBIC)
    noisy = np.asarray(big) + np.random.default_rng(20).normal(0, 80, (3000, 2500))
    ds.Rows, ds.Columns = 3000, 2500
    ds.PixelData = np.clip(np.rint(noisy), 0, 2**15 - 1).astype(np.uint16).tobytes()
    ds.compress(JPEG2000Lossless)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dx_sized_chest_decodes_as_deep_as_its_window_allows(dx_sized_chest):
    # The header's window is fixed: level 2 (750 px) is >= 1.25 x 512. A percentile window reads the
    # histogram's tails, which deeper levels narrow: it keeps level 1 (>= 1.5 x 512).
    ds = read_dataset(dx_sized_chest)
    assert decode_first_frame(ds, 512, window_from_header=True).pixels.shape == (750, 625)
    ds = read_dataset(dx_sized_chest)
    assert decode_first_frame(ds, 512, window_from_header=False).pixels.shape == (1500, 1250)
    _assert_agrees(dx_sized_chest)


def test_rg1_reduction_is_limited_to_what_pillow_sizes_like_openjpeg():
    ds = pydicom.dcmread(dicom_testfile("RG1_J2KR.dcm"))
    header = read_codestream_header(get_frame(ds.PixelData, 0, number_of_frames=1))
    assert (header.width, header.height, header.precision, header.levels) == (1841, 1955, 15, 5)
    # 1841 / 4 = 460.25: openjpeg decodes 461 columns, Pillow allots 460 and refuses the tile.
    assert choose_reduction(header, 256) == 1


def test_a_failing_reduced_decode_falls_back_to_the_full_decode():
    data = dicom_testfile("RG1_J2KR.dcm").read_bytes()
    forced = decode_first_frame(read_dataset(data), 256, j2k_reduction=2)  # Pillow fails for real here
    full = decode_first_frame(read_dataset(data))
    assert not forced.reduced and np.array_equal(forced.pixels, full.pixels)


def test_sharp_mr_reduced_decode_is_unbiased():
    # The wavelet's low band is sharper than a box average and samples even positions: on MR2's hard
    # edges that stays a few grey levels of mean absolute difference, on chest radiographs < 1.
    data = dicom_testfile("MR2_J2KR.dcm").read_bytes()
    reduced, full = _view(data, 256, size=256), _view(data, None, size=256)
    assert decode_first_frame(read_dataset(data), 256).reduced and reduced.shape == full.shape == (256, 256)
    assert abs((reduced - full).mean()) <= MAX_MEAN_GREY_DIFF and np.abs(reduced - full).mean() <= 5


def test_colour_and_small_frames_keep_the_full_decode():
    colour = decode_first_frame(read_dataset(dicom_testfile("US1_J2KR.dcm").read_bytes()), 256)
    assert not colour.reduced and colour.pixels.shape == (480, 640, 3)
    small = decode_first_frame(read_dataset(dicom_testfile("MR2_J2KR.dcm").read_bytes()), 512)
    assert not small.reduced and small.pixels.shape == (1024, 1024)


# --- HTJ2K: files made here with OpenJPH (itkwasm-htj2k), decoded through pydicom's plugins ---------

def _chest_pixels(size: int) -> np.ndarray:
    """RG1's 15-bit pixels cropped square to `size` (real image content for the encoders)."""
    ds = pydicom.dcmread(dicom_testfile("RG1_UNCR.dcm"))
    return np.ascontiguousarray(ds.pixel_array[:size, :size])


def _htj2k(pixels: np.ndarray, lossless: bool, levels: int = 5) -> bytes:
    htj2k = pytest.importorskip("itkwasm_htj2k", reason="HTJ2K test files need itkwasm-htj2k (dev extra)")
    from itkwasm import Image as ItkImage, ImageType

    rows, cols = pixels.shape
    image = ItkImage(imageType=ImageType(dimension=2, componentType="uint16", pixelType="Scalar", components=1),
                     size=[cols, rows], data=pixels)
    return bytes(htj2k.encode(image, decompositions=levels, not_reversible=not lossless, quantization_step=0.0005,
                              tile_size=[cols, rows], tile_offset=[0, 0], block_dimensions=[64, 64]))


def _dicom(pixels: np.ndarray, codestream: bytes, syntax: UID) -> bytes:
    template = pydicom.dcmread(dicom_testfile("RG1_UNCR.dcm"))
    ds = template.copy()
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15  # OpenJPH writes 16-bit precision for uint16
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [HTJ2K_LOSSLESS, HTJ2K_RPCL])
def test_htj2k_lossless_decodes_exactly_through_pydicom(syntax):
    pixels = _chest_pixels(1536)
    data = _dicom(pixels, _htj2k(pixels, lossless=True), syntax)
    assert np.array_equal(decode_first_frame(read_dataset(data)).pixels, pixels)
    frame = decode_first_frame(read_dataset(data), 512)
    assert frame.reduced and frame.pixels.shape == (768, 768)
    _assert_agrees(data)


def test_htj2k_lossy_decodes_close_and_reduced(pseudonymizer):
    pixels = _chest_pixels(1536)
    data = _dicom(pixels, _htj2k(pixels, lossless=False), HTJ2K_LOSSY)
    full = decode_first_frame(read_dataset(data)).pixels.astype(float)
    assert np.abs(full - pixels).mean() < 0.01 * (pixels.max() - pixels.min())
    _assert_agrees(data)
    result = normalize_bytes(data, "htj2k.dcm", pseudonymizer=pseudonymizer)
    assert result.record.transfer_syntax == HTJ2K_LOSSY and (result.record.width, result.record.height) == (512, 512)


def test_reduction_stops_at_the_codestreams_decomposition_levels():
    pixels = _chest_pixels(1536)
    data = _dicom(pixels, _htj2k(pixels, lossless=True, levels=1), HTJ2K_LOSSLESS)
    frame = decode_first_frame(read_dataset(data), 128)  # 3 levels would fit; the codestream has 1
    assert frame.reduced and frame.pixels.shape == (768, 768)


# --- plain JPEG files (MIMIC-CXR-JPG style) --------------------------------------------------------

def _chest_jpeg(mode: str = "L", exif_rotate: bool = False) -> bytes:
    grey = render_grey(*(lambda ds: (ds.pixel_array, ds))(pydicom.dcmread(dicom_testfile("RG1_UNCR.dcm")))).pixels
    image = Image.fromarray(grey).resize((2500, 3000), Image.Resampling.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if exif_rotate:
        exif[0x0112] = 6  # stored on its side
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_file_dct_scaled_decode_matches_a_downscaled_full_decode(mode):
    data = _chest_jpeg(mode)
    reduced, info = read_raster(data, 512)
    full, full_info = read_raster(data)
    assert reduced.shape == (750, 625) and full.shape == (3000, 2500)
    # An RGB JPEG of a grey chest has equal channels: it is stored grey (medvec.imaging.colour).
    assert info == full_info and info["rows"] == 3000 and info["photometric"] == "MONOCHROME2"
    assert info["window_source"] == ("grey-rgb" if mode == "RGB" else "8bit")
    a = np.asarray(fit_long_side(Image.fromarray(reduced), 512), dtype=float)
    b = np.asarray(fit_long_side(Image.fromarray(full), 512), dtype=float)
    assert np.abs(a - b).mean() <= MAX_MEAN_GREY_DIFF


def test_exif_rotated_jpeg_keeps_its_upright_size_when_scaled():
    data = _chest_jpeg(exif_rotate=True)
    reduced, info = read_raster(data, 512)
    assert (info["rows"], info["columns"]) == (2500, 3000) and reduced.shape == (625, 750)
