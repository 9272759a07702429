"""Batches: fixed manifests, bad input recorded per file, re-runs that change nothing."""

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvec.ingest.batches import (load_batch_errors, load_batch_records, load_manifest, normalize_batch, plan_batches,
                            write_manifest)
from medvec.sources import LocalFolderSource
from medvec.sources.local_files import path_for_uri
from tests.conftest import dicom_testfile

GOOD = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm"]


@pytest.fixture
def mixed_folder(tmp_path):
    """Good DICOM and PNG files next to every kind of bad input a download folder holds."""
    folder = tmp_path / "incoming"
    (folder / "good").mkdir(parents=True)
    (folder / "bad").mkdir()
    for name in GOOD:
        shutil.copy(dicom_testfile(name), folder / "good" / name)
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(buffer, format="PNG")
    (folder / "good" / "scan.png").write_bytes(buffer.getvalue())
    ct = dicom_testfile("CT_small.dcm").read_bytes()
    bad = {
        "truncated.dcm": ct[: len(ct) - 4000],  # ends inside the pixel data
        "random.dcm": np.random.default_rng(0).bytes(5000),
        "empty.dcm": b"",
        "notes.dcm": b"this is a text file with the wrong extension\n" * 20,
        "no_pixels.dcm": dicom_testfile("rtplan.dcm").read_bytes(),
        "no_decoder.dcm": dicom_testfile("JPEG-lossy.dcm").read_bytes(),
        "cut.png": buffer.getvalue()[: len(buffer.getvalue()) // 2],
    }
    for name, data in bad.items():
        (folder / "bad" / name).write_bytes(data)
    (folder / "labels.csv").write_text("path,labels\ngood/scan.png,Edema\n")
    (folder / ".hidden.dcm").write_bytes(ct)
    return folder


EXPECTED_STAGES = {"truncated.dcm": "decode", "random.dcm": "parse", "empty.dcm": "read", "notes.dcm": "parse",
                   "no_pixels.dcm": "parse", "no_decoder.dcm": "decode", "cut.png": "decode"}


def _open_one_batch(folder, home, **kw):
    source = LocalFolderSource(folder)
    manifests = plan_batches(source, home, batch_size=100, metadata_csv=str(folder / "labels.csv"), **kw)
    assert len(manifests) == 1
    write_manifest(home, manifests[0])
    return manifests[0]


def test_every_bad_file_is_an_error_record_and_the_rest_is_stored(mixed_folder, tmp_path):
    home = tmp_path / "home"
    manifest = _open_one_batch(mixed_folder, home)
    assert not any(".hidden" in f.uri or f.uri.endswith(".csv") for f in manifest.files)
    result = normalize_batch(manifest, home, pseudonym_key="k", workers=2)

    errors = {e.source_uri.rsplit("/", 1)[-1]: e for e in result.errors}
    assert set(errors) == set(EXPECTED_STAGES)
    for name, stage in EXPECTED_STAGES.items():
        assert errors[name].stage == stage, (name, errors[name])
        assert errors[name].message and errors[name].error
    assert "no installed decoder" in errors["no_decoder.dcm"].message or "could not be decoded" in errors["no_decoder.dcm"].message
    assert "no image" in errors["no_pixels.dcm"].message
    assert "empty" in errors["empty.dcm"].message

    stored = {r.source_uri.rsplit("/", 1)[-1]: r for r in result.records}
    assert set(stored) == set(GOOD) | {"scan.png"}
    assert stored["scan.png"].labels == ["Edema"]
    for record in result.records:
        assert (home / record.image_uri).stat().st_size > 0 and (home / record.thumb_uri).stat().st_size > 0
    assert load_batch_errors(home, manifest.batch) == result.errors


def test_rematerialising_a_batch_skips_unchanged_files_and_changes_nothing(mixed_folder, tmp_path):
    home = tmp_path / "home"
    manifest = _open_one_batch(mixed_folder, home)
    first = normalize_batch(manifest, home, pseudonym_key="k", workers=1)
    files_before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.rglob("*.webp")}

    second = normalize_batch(load_manifest(home, manifest.batch), home, pseudonym_key="k", workers=2)
    assert second.unchanged == len(first.records) and second.normalized == 0
    assert [r.to_row() for r in second.records] == [r.to_row() for r in first.records]
    assert [(e.source_uri, e.stage, e.message) for e in second.errors] == \
        [(e.source_uri, e.stage, e.message) for e in first.errors]
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.rglob("*.webp")} == files_before
    assert len(load_batch_records(home, manifest.batch)) == len(first.records)


def test_a_reingest_reads_and_normalises_only_the_chosen_files_and_keeps_the_rest(mixed_folder, tmp_path):
    home = tmp_path / "home"
    manifest = _open_one_batch(mixed_folder, home)
    first = normalize_batch(manifest, home, pseudonym_key="k", workers=1)
    chosen = [f.uri for f in manifest.files if f.uri.endswith(("CT_small.dcm", "random.dcm"))]
    for entry in manifest.files:  # the files left alone are gone: a re-ingest that read one would say so
        if entry.uri not in chosen:
            Path(path_for_uri(entry.uri)).unlink()

    again = normalize_batch(manifest, home, pseudonym_key="k", workers=1, only=chosen)
    assert again.normalized == 1 and again.unchanged == 0  # normalised again although unchanged
    assert again.kept == len(first.records) + len(first.errors) - 2
    assert [r.to_row() for r in again.records] == [r.to_row() for r in first.records]
    assert [(e.source_uri, e.stage) for e in again.errors] == [(e.source_uri, e.stage) for e in first.errors]


def test_outputs_are_identical_when_regenerated_from_scratch(mixed_folder, tmp_path):
    home = tmp_path / "home"
    manifest = _open_one_batch(mixed_folder, home)
    normalize_batch(manifest, home, pseudonym_key="k", workers=1)
    before = {p.relative_to(home): p.read_bytes() for p in home.rglob("*.webp")}
    shutil.rmtree(home / "images")
    shutil.rmtree(home / "thumbs")
    again = normalize_batch(manifest, home, pseudonym_key="k", workers=2)
    assert again.normalized == len(again.records)
    assert {p.relative_to(home): p.read_bytes() for p in home.rglob("*.webp")} == before


def test_a_file_is_never_put_into_a_second_batch(mixed_folder, tmp_path):
    home = tmp_path / "home"
    source = LocalFolderSource(mixed_folder)
    first = plan_batches(source, home, batch_size=5)
    assert [len(m.files) for m in first] == [5, 5, 3]
    for manifest in first[:2]:
        write_manifest(home, manifest)
    rest = plan_batches(source, home, batch_size=5)
    assert [f.uri for m in rest for f in m.files] == [f.uri for f in first[2].files]
    with pytest.raises(FileExistsError):
        write_manifest(home, first[0])


def test_limit_takes_only_the_first_new_files(mixed_folder, tmp_path):
    manifests = plan_batches(LocalFolderSource(mixed_folder), tmp_path / "home", batch_size=2, limit=3)
    assert sum(len(m.files) for m in manifests) == 3 and len(manifests) == 2


def test_a_file_changed_after_the_batch_opened_is_reported(mixed_folder, tmp_path):
    home = tmp_path / "home"
    manifest = _open_one_batch(mixed_folder, home)
    target = mixed_folder / "good" / "scan.png"
    target.write_bytes(target.read_bytes() + b"\0" * 10)
    result = normalize_batch(manifest, home, pseudonym_key="k", workers=1)
    assert result.changed == [str(target)]


def test_same_image_twice_in_a_batch_is_stored_once(tmp_path):
    folder = tmp_path / "dups"
    folder.mkdir()
    for name in ("a.dcm", "b.dcm"):
        shutil.copy(dicom_testfile("CT_small.dcm"), folder / name)
    home = tmp_path / "home"
    manifest = plan_batches(LocalFolderSource(folder), home, batch_size=10)[0]
    write_manifest(home, manifest)
    result = normalize_batch(manifest, home, pseudonym_key="k", workers=1)
    assert len(result.records) == 1 and result.records[0].source_uri.endswith("a.dcm")
    assert [u.rsplit("/", 1)[-1] for u in result.duplicates] == ["b.dcm"]


def test_an_image_already_held_by_an_earlier_batch_stays_there(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, names in ((first, ["CT_small.dcm", "MR_small_RLE.dcm"]), (second, ["CT_small.dcm", "image_dfl.dcm"])):
        folder.mkdir()
        for name in names:
            shutil.copy(dicom_testfile(name), folder / f"{folder.name}_{name}")
    home = tmp_path / "home"
    results = []
    for folder in (first, second):
        manifest = plan_batches(LocalFolderSource(folder), home, batch_size=10)[0]
        write_manifest(home, manifest)
        results.append(normalize_batch(manifest, home, pseudonym_key="k", workers=1))
    assert len(results[0].records) == 2
    assert [r.source_uri.rsplit("/", 1)[-1] for r in results[1].records] == ["second_image_dfl.dcm"]
    assert [u.rsplit("/", 1)[-1] for u in results[1].duplicates] == ["second_CT_small.dcm"]
    assert any(f"batch {results[0].batch}" in note for note in results[1].notes)
