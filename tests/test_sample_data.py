"""The offline demo dataset: deterministic, decodable in every encoding, labelled by construction."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from medvec.sample import wg04
from medvec.sample.painter import cardiothoracic_ratio, draw_chest, frontal_layout, stored_values
from medvec.sample.plan import CARDIOMEGALY, NO_FINDING, PLEURAL_EFFUSION, chest_specs
from medvec.sample.writer import write_sample_data

COUNT = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_sample_data(tmp_path_factory.mktemp("sample_a"), count=COUNT)


@pytest.fixture(scope="module")
def specs():
    return chest_specs(COUNT)


def _read_labels(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _relative_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _header(dataset, spec) -> pydicom.Dataset:
    return pydicom.dcmread(dataset.out_dir / spec.relative_path, stop_before_pixels=True)


def _display(path: Path) -> np.ndarray:
    """The image as a viewer shows it, scaled to [0, 1]: white = dense, whatever the encoding."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    low, high = np.percentile(values, [1, 99])
    shown = np.clip((values - low) / (high - low), 0.0, 1.0)
    return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


# (a) determinism ------------------------------------------------------------------------------


def test_two_runs_write_byte_identical_files(dataset, tmp_path):
    again = write_sample_data(tmp_path / "sample_b", count=COUNT)
    first, second = _relative_files(dataset.out_dir), _relative_files(again.out_dir)
    assert first.keys() == second.keys()
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_summary_lists_every_written_file_and_reports_progress(tmp_path):
    calls: list[tuple[int, int]] = []
    summary = write_sample_data(tmp_path, count=3, progress=lambda *args: calls.append(args))
    on_disk = {p for p in tmp_path.rglob("*") if p.is_file()} - {summary.labels_csv}
    assert set(summary.files) == on_disk
    assert calls == [(n, len(summary.files)) for n in range(1, len(summary.files) + 1)]
    assert summary.labels_csv == tmp_path / "labels.csv"


# (b) every synthetic file decodes, and the set spans the encodings the readers must handle ----


def test_every_synthetic_file_decodes_losslessly_with_expected_shape(dataset, specs):
    for spec in specs:
        ds = pydicom.dcmread(dataset.out_dir / spec.relative_path)
        assert ds.pixel_array.shape == (spec.rows, spec.columns)
        # Lossless codecs must return exactly the stored values that were generated.
        np.testing.assert_array_equal(ds.pixel_array, stored_values(draw_chest(spec), spec))


def test_encodings_views_and_photometrics_are_varied(dataset, specs):
    headers = [_header(dataset, spec) for spec in specs]
    transfer_syntaxes = {ds.file_meta.TransferSyntaxUID for ds in headers}
    assert len(transfer_syntaxes) >= 4
    assert {ds.PhotometricInterpretation for ds in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {ds.ViewPosition for ds in headers} == {"PA", "AP", "LATERAL"}
    assert {int(ds.BitsStored) for ds in headers} >= {8, 10, 12}
    assert any(ds.PixelRepresentation == 1 for ds in headers)  # a signed int16 image
    assert any("WindowCenter" not in ds for ds in headers)  # needs a percentile window
    assert any("WindowCenter" in ds and ds["WindowCenter"].VM == 2 for ds in headers)  # multi-valued
    assert any(float(ds.get("RescaleSlope", 1)) != 1 for ds in headers)


def test_headers_are_valid_files_with_obviously_fake_identifiers(dataset, specs):
    for spec in specs:
        path = dataset.out_dir / spec.relative_path
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.Modality in {"CR", "DX"} and ds.BodyPartExamined == "CHEST"
        assert ds.PatientID == spec.patient_id and str(ds.PatientName).startswith("SYNTHETIC^")
        assert ds.InstitutionName == "Medvec Synthetic Hospital"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    studies = {_header(dataset, spec).StudyInstanceUID for spec in specs}
    assert 1 < len(studies) < len(specs)  # several images share a study


# (c) labels.csv ------------------------------------------------------------------------------


def test_labels_csv_has_one_row_per_readable_file_and_splits_by_patient(dataset, specs):
    rows = _read_labels(dataset.labels_csv)
    assert list(rows[0].keys()) == ["path", "finding_labels", "view_position", "split", "patient_id"]
    readable = {p.relative_to(dataset.out_dir).as_posix() for p in dataset.out_dir.rglob("*.dcm")
                if "broken" not in p.parts}
    assert {r["path"] for r in rows} == readable and len(rows) == len(readable)

    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of.values())
    assert {s for splits in split_of.values() for s in splits} == {"train", "valid", "test"}

    by_path = {r["path"]: r for r in rows}
    for spec in specs:
        row = by_path[spec.relative_path]
        assert row["finding_labels"].split("|") == spec.labels
        assert (row["view_position"], row["patient_id"]) == (spec.view, spec.patient_id)
    assert by_path["wg04/RG1_UNCR.dcm"]["finding_labels"] == NO_FINDING
    assert by_path["wg04/RG3_UNCR.dcm"]["finding_labels"] == ""


def test_broken_files_are_written_but_not_labelled(dataset):
    truncated = dataset.out_dir / "broken" / "truncated_chest.dcm"
    assert (dataset.out_dir / "broken" / "notes.txt").read_text().strip()
    with pytest.raises(Exception):
        pydicom.dcmread(truncated).pixel_array
    assert not any(r["path"].startswith("broken/") for r in _read_labels(dataset.labels_csv))


def test_without_pydicom_data_the_wg04_files_are_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("pydicom.data.get_testdata_file", lambda *args, **kwargs: None)
    with caplog.at_level(logging.WARNING, logger=wg04.__name__):
        summary = write_sample_data(tmp_path, count=2, include_broken=False)
    assert "pydicom-data" in caplog.text
    assert [r["path"] for r in _read_labels(summary.labels_csv)] == [
        "synthetic/chest_000.dcm", "synthetic/chest_001.dcm"]
    assert not (tmp_path / "wg04").exists() and not (tmp_path / "broken").exists()


def test_default_plan_is_roughly_balanced():
    labels = [tuple(s.labels) for s in chest_specs(36)]
    assert len({s.patient_id for s in chest_specs(36)}) == 12
    for finding in (NO_FINDING, CARDIOMEGALY, PLEURAL_EFFUSION):
        assert 8 <= sum(finding in combo for combo in labels) <= 16
    assert 1 <= labels.count((CARDIOMEGALY, PLEURAL_EFFUSION)) <= 6


# (d) the anatomy matches the labels ----------------------------------------------------------


def test_ground_truth_cardiothoracic_ratio_follows_the_label():
    for spec in chest_specs(36):
        if spec.cardiomegaly:
            assert cardiothoracic_ratio(spec) > 0.55
        else:
            assert 0.42 <= cardiothoracic_ratio(spec) < 0.5


def _frontal_by_label(specs, labels):
    return [s for s in specs if s.view != "LATERAL" and s.labels == labels]


def _measured_ctr(image: np.ndarray, spec) -> float:
    """CTR read off the pixels: widest bright run through the midline that has aerated lung on
    both sides (the heart), over the widest span of aerated lung (the inner thorax)."""
    layout = frontal_layout(spec)
    mid, reach = int(round(layout.midline_x)), int(1.1 * layout.thorax_half_width)
    top = int(layout.lung_center_y - 0.6 * layout.lung_half_height)
    # Above the dome peaks: lower down the heart merges with the diaphragm, as on a real film.
    bottom = int(min(layout.diaphragm_y) - 0.075 * spec.rows)
    thorax = image[top:bottom, mid - reach:mid + reach]
    threshold = np.mean(np.percentile(thorax, [5, 95]))
    heart_width = thoracic_width = 0
    for row in thorax:
        dark = np.flatnonzero(row < threshold)
        left, right = dark[dark < reach], dark[dark > reach]
        if len(left) and len(right):
            heart_width = max(heart_width, right.min() - left.max() - 1)
            thoracic_width = max(thoracic_width, right.max() - left.min() + 1)
    return heart_width / thoracic_width


def test_measured_heart_size_separates_cardiomegaly_from_normal(dataset, specs):
    enlarged = _frontal_by_label(specs, [CARDIOMEGALY])
    normal = _frontal_by_label(specs, [NO_FINDING])
    assert enlarged and normal
    for spec in enlarged + normal:
        measured = _measured_ctr(_display(dataset.out_dir / spec.relative_path), spec)
        assert measured == pytest.approx(cardiothoracic_ratio(spec), abs=0.02)
        assert (measured > 0.55) if spec.cardiomegaly else (measured < 0.5)


def test_band_beside_a_normal_heart_border_is_bright_only_with_cardiomegaly(dataset, specs):
    def band_brightness(spec) -> float:
        # Lateral to where any normal heart's left border can lie (CTR < 0.5), inside where
        # an enlarged one (CTR > 0.55) reaches: lung if normal, heart if enlarged.
        layout = frontal_layout(spec)
        left = int(layout.midline_x + 0.68 * layout.thorax_half_width)
        right = int(layout.midline_x + 0.75 * layout.thorax_half_width)
        rows = slice(int(layout.heart_center_y - 0.25 * layout.heart_half_height),
                     int(layout.heart_center_y + 0.1 * layout.heart_half_height))
        return float(_display(dataset.out_dir / spec.relative_path)[rows, left:right].mean())

    enlarged = [band_brightness(s) for s in _frontal_by_label(specs, [CARDIOMEGALY])]
    normal = [band_brightness(s) for s in _frontal_by_label(specs, [NO_FINDING])]
    assert min(enlarged) > max(normal) + 0.2


def test_effusion_fills_the_costophrenic_recess_on_its_side(dataset, specs):
    def recess_brightness(spec, image_side: int, dome_y: float) -> float:
        # Just above the lateral lung base, where a sharp costophrenic angle still holds air.
        layout = frontal_layout(spec)
        centre = layout.midline_x + image_side * layout.lung_offset
        columns = sorted(int(centre + image_side * f * layout.lung_half_width) for f in (0.6, 0.8))
        rows = slice(int(dome_y - 0.075 * spec.rows), int(dome_y - 0.05 * spec.rows))
        return float(_display(dataset.out_dir / spec.relative_path)[rows, columns[0]:columns[1]].mean())

    filled, clear = [], []
    for spec in (s for s in specs if s.view != "LATERAL"):
        layout = frontal_layout(spec)
        for image_side, patient_side, dome_y in ((-1, "right", layout.diaphragm_y[0]),
                                                 (1, "left", layout.diaphragm_y[1])):
            brightness = recess_brightness(spec, image_side, dome_y)
            (filled if patient_side in spec.effusion_sides else clear).append(brightness)
    assert filled and clear
    assert min(filled) > max(clear) + 0.2
