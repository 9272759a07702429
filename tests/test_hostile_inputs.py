"""A source folder as hostile as a real archive: over-long UIDs, names that are not UTF-8, a FIFO, a link
loop, a link to /dev/zero, a link out of the root, pixel bombs in every format, a folder named `x.dcm`,
a reused UID with other content, an empty file, burned-in text (BurnedInAnnotation YES, an ultrasound).
Through `medvec ingest` (a real subprocess, under a timeout), the folder sensor and the upload route:
every good file is stored, every bad one is one error record, and a second run adds nothing and fails
nothing."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from medvec.imaging.dicom import UnreadableImage
from medvec.imaging.normalize import MAX_ID_LENGTH, NormalizeOptions, normalize_bytes
from medvec.ingest.batches import list_batches, load_batch_errors, load_batch_records, load_manifest
from medvec.ingest.forget import forget_entry
from medvec.phi import Pseudonymizer
from medvec.settings import Settings
from medvec.sources import LocalFolderSource
from medvec.sources.local_files import path_for_uri
from medvec.tables import database
from tests.conftest import dicom_testfile

HANG_LIMIT_S = 300  # an ingest of 20 small files takes seconds; past this it hung
NON_UTF8_NAME = b"caf\xe9-\xff.dcm"
#: Source name -> the stage of its one error record.
BAD = {"empty.dcm": "read", "fifo.dcm": "read", "loop.dcm": "read", "devzero.dcm": "read", "outside.dcm": "read",
       "bomb.png": "decode", "bomb.jpg": "decode", "bomb.j2k": "decode", "bomb_j2k.dcm": "decode",
       "bomb_rows.dcm": "decode", "z_dup_other.dcm": "duplicate", "burned.dcm": "deidentify", "us.dcm": "deidentify"}
#: Stored as images ("café" is the non-UTF-8 name); y_copy.dcm is the same bytes as a_good.dcm: kept once.
GOOD = {"a_good.dcm", "good.png", "long_uid.dcm", "caf%E9-%FF.dcm", "inner.png", "mr.dcm"}


def _dicom(name="CT_small.dcm", **changes) -> pydicom.Dataset:
    ds = pydicom.dcmread(dicom_testfile(name))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _png(colour, size=(32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def png_bomb(width=100_000, height=100_000) -> bytes:
    """A valid tiny PNG whose IHDR (CRC fixed) claims width x height."""
    data = bytearray(_png((9, 9, 9), (8, 8)))
    ihdr = 8  # signature, then the IHDR chunk: length(4) type(4) data(13) crc(4)
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])))
    return bytes(data)


def jpeg_bomb() -> bytes:
    """A tiny baseline JPEG whose SOF0 claims 65535 x 65535 (JPEG's largest)."""
    out = io.BytesIO()
    Image.new("L", (8, 8), 128).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65535, 65535)
    return bytes(data)


def j2k_bomb(width=100_000, height=100_000) -> bytes:
    """A J2K main header (SOC, SIZ, COD) claiming width x height, one 16-bit component, then EOC."""
    siz = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, width, height, 0, 0, 1) + bytes([15, 1, 1])
    cod = bytes([0, 0, 0, 1, 0]) + bytes([5, 4, 4, 0, 1])  # Scod, SGcod, SPcod (5 levels)
    return (b"\xff\x4f" + b"\xff\x51" + struct.pack(">H", len(siz) + 2) + siz
            + b"\xff\x52" + struct.pack(">H", len(cod) + 2) + cod + b"\xff\xd9")


def dicom_j2k_bomb() -> bytes:
    """A DICOM whose header says 64 x 64 but whose JPEG 2000 codestream claims 100k x 100k."""
    ds = _dicom(SOPInstanceUID="1.2.826.0.1.3680043.99.1", Rows=64, Columns=64)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([j2k_bomb()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return _bytes(ds)


@pytest.fixture
def hostile(tmp_path) -> Path:
    root = tmp_path / "incoming"
    (root / "x.dcm").mkdir(parents=True)  # a folder with an image's name: walked, never read
    good = dicom_testfile("CT_small.dcm").read_bytes()
    (root / "a_good.dcm").write_bytes(good)
    (root / "y_copy.dcm").write_bytes(good)  # the same bytes again: a duplicate, kept once
    pixels = _dicom().pixel_array
    other = _dicom()
    other.PixelData = (pixels.max() - pixels).astype(pixels.dtype).tobytes()  # another image, same UID
    (root / "z_dup_other.dcm").write_bytes(_bytes(other))
    (root / "long_uid.dcm").write_bytes(_bytes(_dicom(SOPInstanceUID="1.2." + "7" * 300)))
    (root / "mr.dcm").write_bytes(dicom_testfile("MR_small_RLE.dcm").read_bytes())
    with open(os.path.join(os.fsencode(root), NON_UTF8_NAME), "wb") as handle:
        handle.write(_bytes(_dicom(SOPInstanceUID="1.2.826.0.1.3680043.99.2")))
    (root / "good.png").write_bytes(_png((200, 30, 30)))
    (root / "x.dcm" / "inner.png").write_bytes(_png((30, 30, 200)))
    (root / "empty.dcm").write_bytes(b"")
    os.mkfifo(root / "fifo.dcm")
    os.symlink("loop.dcm", root / "loop.dcm")
    os.symlink("/dev/zero", root / "devzero.dcm")
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(good)
    os.symlink(outside, root / "outside.dcm")
    (root / "bomb.png").write_bytes(png_bomb())
    (root / "bomb.jpg").write_bytes(jpeg_bomb())
    (root / "bomb.j2k").write_bytes(j2k_bomb())
    (root / "bomb_j2k.dcm").write_bytes(dicom_j2k_bomb())
    (root / "bomb_rows.dcm").write_bytes(_bytes(_dicom(SOPInstanceUID="1.2.826.0.1.3680043.99.3", Rows=60000,
                                                       Columns=60000)))
    (root / "burned.dcm").write_bytes(_bytes(_dicom(SOPInstanceUID="1.2.826.0.1.3680043.99.4",
                                                    BurnedInAnnotation="YES")))
    (root / "us.dcm").write_bytes(_bytes(_dicom(SOPInstanceUID="1.2.826.0.1.3680043.99.5", Modality="US")))
    past = time.time() - 300  # settled for the sensor
    for entry in os.scandir(os.fsencode(root)):
        os.utime(entry.path, (past, past), follow_symlinks=False)
    return root


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def _ingest(source: Path, env: dict) -> dict:
    """`medvec ingest SOURCE --json` as a user runs it; a hang fails the test instead of stalling it."""
    try:
        done = subprocess.run([sys.executable, "-m", "medvec.cli", "ingest", str(source), "--json", "--workers", "2"],
                              env=env, capture_output=True, text=True, timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"medvec ingest hung (still running after {HANG_LIMIT_S} s)")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _finishes(work, limit_s: float = HANG_LIMIT_S):
    """Run `work()` on a daemon thread; fail (rather than stall the suite) if it is still running at the limit."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's own thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still running after {limit_s} s: it hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _assert_stored_and_recorded(settings: Settings, errors: list[dict]):
    records = [r for b in list_batches(settings.home) for r in load_batch_records(settings.home, b)]
    assert sorted(_name(r.source_uri) for r in records) == sorted(GOOD)
    assert all(len(r.image_id) <= MAX_ID_LENGTH and (settings.home / r.image_uri).is_file() for r in records)
    assert sorted((_name(e["source_uri"]), e["stage"]) for e in errors) == sorted(BAD.items())
    assert all(e["message"] for e in errors)
    return records, {_name(e["source_uri"]): e for e in errors}


def test_a_hostile_folder_ingests_with_every_bad_file_recorded_once(hostile, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "MEDVEC_HOME": str(home), "MEDVEC_PSEUDONYM_KEY": "test-key", "MEDVEC_MODEL": "tiny-siglip"}
    first = _ingest(hostile, env)
    assert first["failed_runs"] == [] and first["ok"] == len(GOOD)
    settings = Settings.from_env(env)
    errors = database.list_errors(database.connect(settings.lancedb_uri))
    records, by_name = _assert_stored_and_recorded(settings, errors)

    caf = next(r for r in records if "caf" in r.source_uri)  # the name's bytes kept, escaped, round-trip
    assert caf.source_uri.startswith("file://") and os.fsencode(path_for_uri(caf.source_uri)).endswith(NON_UTF8_NAME)
    assert "outside the source folder" in by_name["outside.dcm"]["message"]
    assert "loops" in by_name["loop.dcm"]["message"] and "FIFO" in by_name["fifo.dcm"]["message"]
    assert "MEDVEC_MAX_PIXELS" in by_name["bomb_j2k.dcm"]["message"]
    assert "a_good.dcm" in by_name["z_dup_other.dcm"]["message"]  # names the file that holds the UID
    assert "BurnedInAnnotation is YES" in by_name["burned.dcm"]["message"]
    assert "modality US" in by_name["us.dcm"]["message"]

    second = _ingest(hostile, env)  # nothing new, nothing failing, the errors still one each
    assert second["batches"] == [] and second["failed_runs"] == []
    _assert_stored_and_recorded(settings, database.list_errors(database.connect(settings.lancedb_uri)))


def test_the_folder_sensor_takes_the_same_folder(hostile, settings, dagster_instance, monkeypatch):
    from resources import home_resources
    from resources.embedders import LocalEmbedderResource
    from pipelines.sensors import incoming_folder_sensor
    from tests.test_sensors import Daemon

    monkeypatch.setenv("MEDVEC_WATCH_BATCH_SIZE", "100")
    monkeypatch.setenv("MEDVEC_WATCH_SETTLE_MARGIN_S", "0")
    settings.home.mkdir(parents=True)
    os.rename(hostile, settings.home / "incoming")  # links and the FIFO move as they are
    resources = {**home_resources(settings), "embedder": LocalEmbedderResource(model="tiny-siglip")}
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)

    def two_ticks_and_their_runs():
        daemon.tick()  # the model first
        daemon.launch()
        daemon.tick()
        daemon.launch()  # asserts every run succeeded

    _finishes(two_ticks_and_their_runs)
    errors = [e.to_row() for b in list_batches(settings.home) for e in load_batch_errors(settings.home, b)]
    _assert_stored_and_recorded(settings, errors)
    daemon.tick()
    assert daemon.last.run_requests == [] and not daemon.last.dynamic_partitions_requests


def test_forgetting_one_entry_drops_it_from_the_batch(hostile, tmp_path):
    from medvec.ingest.batches import normalize_batch, plan_batches, write_manifest

    home = tmp_path / "home"
    [manifest] = plan_batches(LocalFolderSource(hostile), home, batch_size=100)
    write_manifest(home, manifest)
    normalize_batch(manifest, home, pseudonym_key="k", workers=1)
    gone = forget_entry(home, manifest.batch, str(hostile / "fifo.dcm"))
    assert [_name(u) for u in gone] == ["fifo.dcm"]
    left = load_manifest(home, manifest.batch)
    assert len(left.files) == len(manifest.files) - 1 and "fifo.dcm" not in {_name(f.uri) for f in left.files}
    assert "fifo.dcm" not in {_name(e.source_uri) for e in load_batch_errors(home, manifest.batch)}
    escaped = next(f.uri for f in left.files if f.uri.startswith("file://"))
    assert forget_entry(home, manifest.batch, path_for_uri(escaped)) == [escaped]  # by its raw path too
    with pytest.raises(KeyError):
        forget_entry(home, manifest.batch, str(hostile / "fifo.dcm"))


def test_backfill_forget_on_the_command_line(hostile, settings, capsys):
    from medvec.cli import main
    from medvec.ingest.batches import plan_batches, write_manifest

    [manifest] = plan_batches(LocalFolderSource(hostile), settings.home, batch_size=100)
    write_manifest(settings.home, manifest)
    assert main(["backfill", "--forget", str(hostile / "loop.dcm"), manifest.batch, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"batch": manifest.batch, "forgotten": [str(hostile / "loop.dcm")]}
    assert main(["backfill", "--forget", str(hostile / "loop.dcm"), manifest.batch]) == 2  # gone: said, not raised


def test_reads_are_bounded_in_size_and_never_block(hostile):
    source = LocalFolderSource(hostile, max_file_bytes=1000)
    with pytest.raises(OSError, match="MEDVEC_MAX_FILE_BYTES"):
        source.read_bytes(str(hostile / "a_good.dcm"))  # 39 KB, over the 1000-byte limit
    with pytest.raises(OSError, match="FIFO"):  # returns at once: no writer is ever waited for
        _finishes(lambda: LocalFolderSource(hostile).read_bytes(str(hostile / "fifo.dcm")), 60)
    with pytest.raises(OSError, match="outside the source folder"):  # /dev/zero is never opened
        _finishes(lambda: LocalFolderSource(hostile).read_bytes(str(hostile / "devzero.dcm")), 60)


@pytest.mark.parametrize("bomb", [png_bomb, jpeg_bomb, j2k_bomb, dicom_j2k_bomb])
def test_pixel_bombs_are_refused_before_decoding(bomb):
    with pytest.raises(UnreadableImage, match="MEDVEC_MAX_PIXELS|too many pixels") as caught:
        normalize_bytes(bomb(), "bomb", pseudonymizer=Pseudonymizer("k", warn=False))
    assert caught.value.stage == "decode"


def test_the_pixel_budget_is_a_setting():
    png = png_bomb(3000, 3000)  # 27 Mpx of RGB: inside the default budget, outside a 1 Mpx one
    with pytest.raises(UnreadableImage, match="MEDVEC_MAX_PIXELS"):
        normalize_bytes(png, "x.png", pseudonymizer=Pseudonymizer("k", warn=False),
                        options=NormalizeOptions(max_pixels=1_000_000))
    assert Settings.from_env({"MEDVEC_MAX_PIXELS": "1000"}).max_pixels == 1000


def test_uploaded_bombs_are_400_never_500(search_collection, hostile):
    import httpx

    from medvec.search.configured import open_search
    from medvec.serve.http_api import create_app
    from tests.test_http_api import running

    search = open_search(search_collection.settings)
    uploads = {name: (hostile / name).read_bytes() for name in BAD if (hostile / name).is_file()
               and not (hostile / name).is_symlink() and name not in ("fifo.dcm", "z_dup_other.dcm")
               and BAD[name] != "deidentify"}
    try:
        with running(create_app(search, search_collection.settings.home)) as base_url, \
                httpx.Client(base_url=base_url, timeout=120) as client:
            def post(item):
                name, data = item
                return name, client.post("/api/search/image", files={"file": (name, data)})

            with ThreadPoolExecutor(8) as pool:  # parallel bombs: all refused, the server still answers
                answers = list(pool.map(post, list(uploads.items()) * 2))
            good = client.post("/api/search/image", files={"file": ("a_good.dcm", (hostile / "a_good.dcm").read_bytes())})
            # A query image is never stored: burned-in text is no reason to refuse searching with it.
            burned = client.post("/api/search/image", files={"file": ("burned.dcm", (hostile / "burned.dcm").read_bytes())})
    finally:
        search.close()
    assert sorted((name, r.status_code) for name, r in answers) == sorted((name, 400) for name in uploads for _ in "ab")
    reasons = {name: r.json()["error"] for name, r in answers}
    assert all("MEDVEC_MAX_PIXELS" in reasons[name] or "too many pixels" in reasons[name]
               for name in uploads if "bomb" in name), reasons
    assert good.status_code == 200 and good.json()["hits"] and burned.status_code == 200


def test_hostile_s3_objects_are_one_error_each(s3_endpoint, tmp_path, monkeypatch):
    """Objects that vanish between listing and reading, zero-byte objects, a key sent with a byte that is
    not UTF-8 (moto, like S3, stores a decoded key) and control characters in keys, against moto's server."""
    import boto3
    import httpx

    from medvec.ingest.batches import normalize_batch, plan_batches, write_manifest
    from medvec.sources import S3PrefixSource
    from tests.conftest import free_port

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"hostile-{free_port()}"
    client.create_bucket(Bucket=bucket)
    good = dicom_testfile("CT_small.dcm").read_bytes()
    client.put_object(Bucket=bucket, Key="in/a_good.dcm", Body=good)
    client.put_object(Bucket=bucket, Key="in/empty.dcm", Body=b"")
    client.put_object(Bucket=bucket, Key="in/gone.dcm", Body=good)
    client.put_object(Bucket=bucket, Key="in/odd\x01name €.png", Body=_png((1, 2, 3)))
    assert httpx.put(f"{s3_endpoint}/{bucket}/in/bad%FFname.png", content=_png((4, 5, 6))).status_code == 200
    home = tmp_path / "home"
    source = S3PrefixSource(f"s3://{bucket}/in", endpoint_url=s3_endpoint)
    [manifest] = plan_batches(source, home, batch_size=100)
    write_manifest(home, manifest)
    client.delete_object(Bucket=bucket, Key="in/gone.dcm")  # between the listing and the read

    result = _finishes(lambda: normalize_batch(manifest, home, pseudonym_key="k", s3_endpoint_url=s3_endpoint,
                                               workers=1))
    assert sorted(_name(r.source_uri) for r in result.records) == sorted(["a_good.dcm", "odd\x01name €.png",
                                                                         "bad\ufffdname.png"])
    assert sorted((_name(e.source_uri), e.stage) for e in result.errors) == [("empty.dcm", "read"), ("gone.dcm", "read")]
    assert "gone" in next(e.message for e in result.errors if e.source_uri.endswith("gone.dcm"))
    again = normalize_batch(manifest, home, pseudonym_key="k", s3_endpoint_url=s3_endpoint, workers=1)
    assert again.normalized == 0 and len(again.errors) == 2  # the same two, once each
    with pytest.raises(OSError, match="MEDVEC_MAX_FILE_BYTES"):
        S3PrefixSource(f"s3://{bucket}/in", endpoint_url=s3_endpoint, max_file_bytes=100).read_bytes(
            f"s3://{bucket}/in/a_good.dcm")


def test_another_image_under_a_stored_uid_is_an_error_and_never_overwrites_it(tmp_path):
    from medvec.ingest.batches import normalize_batch, plan_batches, write_manifest

    pixels = _dicom().pixel_array
    other = _dicom()
    other.PixelData = (pixels.max() - pixels).astype(pixels.dtype).tobytes()
    first, second, home = tmp_path / "first", tmp_path / "second", tmp_path / "home"
    for folder, files in ((first, {"a.dcm": dicom_testfile("CT_small.dcm").read_bytes(), "b.dcm": _bytes(other)}),
                          (second, {"c.dcm": _bytes(other)})):
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
    results = []
    for folder in (first, second):
        [manifest] = plan_batches(LocalFolderSource(folder), home, batch_size=10)
        write_manifest(home, manifest)
        results.append(normalize_batch(manifest, home, pseudonym_key="k", workers=1))
    [held] = results[0].records
    expected = normalize_bytes((first / "a.dcm").read_bytes(), "a", pseudonymizer=Pseudonymizer("k", warn=False))
    assert (home / held.image_uri).read_bytes() == expected.view_webp  # still a.dcm's pixels
    [in_batch] = results[0].errors
    [across] = results[1].errors
    assert in_batch.stage == across.stage == "duplicate" and results[1].records == []
    assert str(first / "a.dcm") in in_batch.message and str(first / "a.dcm") in across.message
