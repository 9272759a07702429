"""Colour where colour is the signal: photographs stay colour from the file to the stored WebP and the
vector; radiographs (and RGB files whose channels are equal) stay grey. Files are made here, ingested
through the real path (Dagster run, normalisation, tiny-siglip, LanceDB)."""

import io

import dagster as dg
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from medvec.embedders.transformers_local import PixelPreparer, TransformersEmbedder
from medvec.imaging.normalize import normalize_bytes
from medvec.imaging.raster import read_raster
from medvec.imaging.webp import fit_long_side
from medvec.ingest.batches import load_batch_records
from medvec.models.registry import resolve_model
from medvec.models.tiny import build_tiny_siglip
from medvec.settings import Settings
from medvec.tables import database
from tests.conftest import dicom_testfile

pytestmark = pytest.mark.slow

RED, GREEN, BLUE, SKIN = (200, 30, 30), (30, 170, 40), (30, 40, 200), (224, 172, 140)
# Two colours of the same BT.601 luma (0.299 R + 0.587 G + 0.114 B = 109.9 and 109.8 → 110 as grey).
SAME_LUMA_RED, SAME_LUMA_GREEN = (180, 80, 80), (50, 150, 60)
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"


def _photo() -> np.ndarray:
    """A 'dermatology photograph': skin, with a red, a green and a blue patch at known places."""
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[:] = SKIN
    rgb[8:40, 8:40] = RED
    rgb[8:40, 48:80] = GREEN
    rgb[8:40, 88:120] = BLUE
    return rgb


def _encoded(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _dicom(pixels: np.ndarray, photometric: str) -> bytes:
    """A VL photographic (XC) DICOM: uncompressed RGB, or JPEG baseline YBR_FULL_422 as cameras write it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined = "XC", "SKIN"
    if photometric == "RGB":
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_pixel_data(pixels, "RGB", 8)
    else:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "YBR_FULL_422"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        # Pillow writes JFIF YCbCr; subsampling=1 is 4:2:2, what YBR_FULL_422 declares.
        ds.PixelData = encapsulate([_encoded(pixels, "JPEG", quality=95, subsampling=1)])
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _patch(colour) -> np.ndarray:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:] = (110, 110, 110)
    rgb[8:56, 8:56] = colour
    return rgb


def _grey_chest() -> np.ndarray:
    """A chest-X-ray-like grey image stored as RGB with three equal channels."""
    y, x = np.mgrid[0:120, 0:100]
    grey = (np.clip(255 - np.hypot(y - 60, (x - 50) * 1.4) * 3, 0, 255)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


PHOTOS = {"photo.png": ("RGB", "png"), "photo.jpg": ("RGB", "jpeg"), "photo_rgb.dcm": ("RGB", "dicom"),
          "photo_ybr.dcm": ("YBR_FULL_422", "dicom")}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """The photographs, the equal-luma patches and an RGB-but-grey X-ray, ingested with tiny-siglip."""
    from pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("colour")
    folder = root / "incoming"
    folder.mkdir()
    photo = _photo()
    (folder / "photo.png").write_bytes(_encoded(photo, "PNG"))
    (folder / "photo.jpg").write_bytes(_encoded(photo, "JPEG", quality=95))
    (folder / "photo_rgb.dcm").write_bytes(_dicom(photo, "RGB"))
    (folder / "photo_ybr.dcm").write_bytes(_dicom(photo, "YBR_FULL_422"))
    (folder / "red.png").write_bytes(_encoded(_patch(SAME_LUMA_RED), "PNG"))
    (folder / "green.png").write_bytes(_encoded(_patch(SAME_LUMA_GREEN), "PNG"))
    (folder / "xray_rgb.png").write_bytes(_encoded(_grey_chest(), "PNG"))
    env = {"MEDVEC_HOME": str(root / "home"), "MEDVEC_PSEUDONYM_KEY": "test-key", "MEDVEC_ALLOW_DEV_KEY": "1", "MEDVEC_MODEL": "tiny-siglip"}
    settings = Settings.from_env(env)
    with dg.instance_for_test() as instance:
        summary = ingest(str(folder), settings, batch_size=16, instance=instance)
    assert not summary.failed_runs and summary.ok == 7 and summary.embedded == 7, summary.to_json()
    records = {r.source_uri.rsplit("/", 1)[-1]: r for b in summary.batches for r in load_batch_records(settings.home, b)}
    table = database.connect(settings.lancedb_uri).open_table(summary.table)
    vectors = {row["image_id"]: np.asarray(row["vector"]) for row in table.to_arrow().to_pylist()}
    return type("Ingested", (), {"settings": settings, "records": records, "vectors": vectors})


def _stored(ingested, name: str, which: str = "image_uri") -> Image.Image:
    return Image.open(ingested.settings.home / getattr(ingested.records[name], which))


def _mean(image: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    return image[box].reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_photographs_are_stored_as_colour_webp(ingested, name):
    record = ingested.records[name]
    photometric, source_format = PHOTOS[name]
    assert (record.photometric, record.source_format, record.window_source) == (photometric, source_format, "colour")
    view = np.asarray(_stored(ingested, name).convert("RGB"), dtype=float)
    assert view.shape == (96, 128, 3)  # small sources keep their size
    inner = (slice(12, 36), slice(12, 36)), (slice(12, 36), slice(52, 76)), (slice(12, 36), slice(92, 116))
    for box, colour in zip(inner, (RED, GREEN, BLUE)):
        assert np.abs(_mean(view, box) - colour).max() < 12, (name, colour, _mean(view, box))
    thumb = np.asarray(_stored(ingested, name, "thumb_uri").convert("RGB"), dtype=float)
    red, green = _mean(thumb, inner[0]), _mean(thumb, inner[1])
    assert red[0] > red[1] + 100 and green[1] > green[0] + 100  # the thumbnail is colour too


def test_rgb_png_with_equal_channels_stays_grey(ingested):
    record = ingested.records["xray_rgb.png"]
    assert (record.photometric, record.window_source) == ("MONOCHROME2", "grey-rgb")
    view = np.asarray(_stored(ingested, "xray_rgb.png").convert("RGB"), dtype=np.int16)
    assert (view.max(axis=2) - view.min(axis=2)).max() <= 2
    centre = view[50:70, 40:60, 1].mean()
    assert centre > 200 and view[:5, :5, 1].mean() < 60  # the grey picture itself survived


def test_same_luminance_red_and_green_embed_differently_and_grey_would_not(ingested, tmp_path):
    red = ingested.vectors[ingested.records["red.png"].image_id]
    green = ingested.vectors[ingested.records["green.png"].image_id]
    assert float(red @ green) < 0.9999 and np.abs(red - green).max() > 1e-3

    # The old path rendered colour to BT.601 luma: both patches become the same grey image ...
    grey_red = np.asarray(Image.fromarray(_patch(SAME_LUMA_RED)).convert("L"))
    grey_green = np.asarray(Image.fromarray(_patch(SAME_LUMA_GREEN)).convert("L"))
    assert np.array_equal(grey_red, grey_green)
    # ... and so the same vector; the stored colour WebPs give the stored, different vectors.
    model = TransformersEmbedder(resolve_model("tiny-siglip"), build_tiny_siglip(tmp_path / "tiny-siglip"))
    as_grey = model.embed_images([_encoded(grey_red, "WEBP"), _encoded(grey_green, "WEBP")])
    np.testing.assert_allclose(as_grey[0], as_grey[1], atol=1e-6)
    stored = [(ingested.settings.home / ingested.records[n].image_uri).read_bytes() for n in ("red.png", "green.png")]
    np.testing.assert_allclose(model.embed_images(stored), np.stack([red, green]), atol=1e-5)


def test_preparer_keeps_colour_channels_and_replicates_grey():
    preparer = PixelPreparer(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash", "bicubic")
    colour = preparer(_encoded(_patch(RED), "WEBP", quality=90)) * 0.5 + 0.5
    centre = colour[:, 12:20, 12:20].reshape(3, -1).mean(axis=1) * 255
    assert np.abs(centre - RED).max() < 12
    grey = preparer(_encoded(_grey_chest()[..., 0], "WEBP", quality=90))
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])


def test_ybr_full_422_jpeg_dicom_converts_to_true_rgb(pseudonymizer):
    """pydicom's own YBR_FULL_422 baseline test file: red, green and blue bands at known rows."""
    path = dicom_testfile("SC_rgb_dcmtk_+eb+cy+s2.dcm")
    result = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    assert (result.record.photometric, result.record.window_source) == ("YBR_FULL_422", "colour")
    view = np.asarray(Image.open(io.BytesIO(result.view_webp)).convert("RGB"), dtype=float)
    assert np.abs(view[3:8, 40:60].reshape(-1, 3).mean(axis=0) - (255, 0, 0)).max() < 15
    assert np.abs(view[23:28, 40:60].reshape(-1, 3).mean(axis=0) - (0, 255, 0)).max() < 15
    assert np.abs(view[43:48, 40:60].reshape(-1, 3).mean(axis=0) - (0, 0, 255)).max() < 15


def test_colour_jpeg_dct_scaled_decode_stays_colour():
    big = np.asarray(Image.fromarray(_photo()).resize((2500, 1875), Image.Resampling.NEAREST))
    data = _encoded(big, "JPEG", quality=95)
    reduced, info = read_raster(data, 512)
    full, _ = read_raster(data)
    assert reduced.shape == (469, 625, 3) and full.shape == (1875, 2500, 3)  # 1/4 scale in the DCT domain
    assert (info["photometric"], info["window_source"]) == ("RGB", "colour")
    a = np.asarray(fit_long_side(Image.fromarray(reduced), 512), dtype=float)
    b = np.asarray(fit_long_side(Image.fromarray(full), 512), dtype=float)
    assert np.abs(a - b).mean() <= 2.0


def test_ybr_jpeg_dicom_dct_scaled_decode_stays_colour_and_matches_the_full_decode():
    from medvec.imaging.dicom import decode_first_frame, read_dataset

    big = np.asarray(Image.fromarray(_photo()).resize((2048, 1536), Image.Resampling.NEAREST))
    data = _dicom(big, "YBR_FULL_422")
    reduced = decode_first_frame(read_dataset(data), 512)
    full = decode_first_frame(read_dataset(data))
    assert reduced.reduced and reduced.is_colour and reduced.pixels.shape == (384, 512, 3)
    assert not full.reduced and full.pixels.shape == (1536, 2048, 3)
    a = np.asarray(fit_long_side(Image.fromarray(reduced.pixels), 512), dtype=float)
    b = np.asarray(fit_long_side(Image.fromarray(full.pixels), 512), dtype=float)
    assert np.abs(a - b).mean() <= 2.0
    assert np.abs(_mean(a, (slice(40, 140), slice(40, 140))) - RED).max() < 12
