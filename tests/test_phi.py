"""No identifying value from a DICOM header reaches any output: files, records, tables, logs, metadata."""

import logging
import shutil
from pathlib import Path

import dagster as dg
import pydicom
import pytest

from medvec.phi import IDENTIFYING_TAGS, Pseudonymizer
from medvec.settings import Settings
from pipelines.ingest import ingest
from tests.conftest import dicom_testfile

# Distinctive strings that cannot occur by chance in any output.
SENTINELS = {
    "PatientName": "ZZSENTINEL^NAMEQQ",
    "PatientID": "ZZSENTINELIDQQ",
    "PatientBirthDate": "18610203",
    "PatientAddress": "ZZSENTINEL ADDRESS QQ",
    "PatientTelephoneNumbers": "ZZ5550199QQ",
    "OtherPatientIDs": "ZZSENTINELOTHERIDQQ",
    "AccessionNumber": "ZZACCESSIONQQ",
    "InstitutionName": "ZZSENTINEL INSTITUTIONQQ",
    "InstitutionAddress": "ZZSENTINEL INST ADDRQQ",
    "ReferringPhysicianName": "ZZREFERRING^DOCQQ",
    "PerformingPhysicianName": "ZZPERFORMING^DOCQQ",
    "OperatorsName": "ZZOPERATOR^NAMEQQ",
    "StudyID": "ZZSTUDYIDQQ",
    "StationName": "ZZSTATIONQQ",
    "DeviceSerialNumber": "ZZSERIALQQ",
    "StudyDate": "18610204",
}


def _with_sentinels(source_name: str, path, truncate: bool = False) -> None:
    ds = pydicom.dcmread(dicom_testfile(source_name))
    for keyword, value in SENTINELS.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    if truncate:  # a failing file must not leak through its error message either
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 3000])


def test_sentinel_covers_every_identifying_tag_we_strip():
    assert set(SENTINELS) <= set(IDENTIFYING_TAGS)


@pytest.mark.slow
def test_identifying_tags_leave_no_trace_in_any_output(tmp_path, settings, dagster_instance, caplog, monkeypatch):
    secret = "ZZPSEUDONYMKEYSENTINELQQ"
    monkeypatch.setenv("MEDVEC_PSEUDONYM_KEY", secret)
    settings = Settings.from_env()
    folder = tmp_path / "incoming"
    folder.mkdir()
    _with_sentinels("CT_small.dcm", folder / "ct.dcm")
    _with_sentinels("MR_small_RLE.dcm", folder / "mr.dcm")
    _with_sentinels("CT_small.dcm", folder / "cut.dcm", truncate=True)
    shutil.copy(dicom_testfile("JPEGLSNearLossless_16.dcm"), folder / "plain.dcm")
    (folder / "labels.csv").write_text("path,labels,patient_id,Patient Name\nct.dcm,Edema,ZZSENTINELIDQQ,ZZSENTINEL^NAMEQQ\n")

    with caplog.at_level(logging.DEBUG):
        summary = ingest(str(folder), settings, instance=dagster_instance, workers=1)
    assert summary.ok == 3 and len(summary.errors) == 1

    haystacks = {str(p): p.read_bytes() for p in settings.home.rglob("*") if p.is_file()}
    dagster_files = {str(p): p.read_bytes() for p in Path(dagster_instance.root_directory).rglob("*") if p.is_file()}
    assert dagster_files and not [p for p, data in dagster_files.items() if secret.encode() in data]  # run snapshots
    haystacks.update(dagster_files)
    assert any(p.endswith(".webp") for p in haystacks) and any("lancedb" in p for p in haystacks)
    haystacks["log"] = caplog.text.encode()
    haystacks["summary"] = repr(summary.to_json()).encode()
    for key in ("source_manifest", "normalized_images"):
        for record in dagster_instance.fetch_materializations(dg.AssetKey(key), limit=10).records:
            haystacks[f"metadata {record.storage_id}"] = repr(record.asset_materialization.metadata).encode()
    from dagster._serdes import serialize_value  # run snapshots are stored compressed: read them back

    for run in dagster_instance.get_runs():
        snapshot = serialize_value(dagster_instance.get_job_snapshot(run.job_snapshot_id))
        assert secret not in snapshot and secret not in serialize_value(run)  # the key went in as an EnvVar
        for event in dagster_instance.all_logs(run.run_id):
            haystacks[f"event {run.run_id}"] = haystacks.get(f"event {run.run_id}", b"") + repr(event).encode()
    assert len(haystacks) > 10
    for where, data in haystacks.items():
        for keyword, value in SENTINELS.items():
            assert value.encode() not in data, f"{keyword} leaked into {where}"

    # The PatientID did leave, but only as its keyed pseudonym.
    from medvec.ingest.batches import load_batch_records

    records = load_batch_records(settings.home, summary.batches[0])
    expected = Pseudonymizer(secret).subject_key(SENTINELS["PatientID"])
    assert {r.subject_key for r in records if not r.source_uri.endswith("plain.dcm")} == {expected}


def test_allowed_tag_is_kept_only_when_asked(tmp_path, pseudonymizer):
    from medvec.imaging.normalize import NormalizeOptions, normalize_bytes

    path = tmp_path / "ct.dcm"
    _with_sentinels("CT_small.dcm", path)
    plain = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    assert "StationName" not in plain.record.extra
    allowed = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer,
                              options=NormalizeOptions(allow_tags=("StationName",)))
    assert allowed.record.extra["StationName"] == SENTINELS["StationName"]


def test_missing_pseudonym_key_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        dev = Pseudonymizer(None)
    assert dev.uses_dev_key and "MEDVEC_PSEUDONYM_KEY" in caplog.text
    assert Pseudonymizer("secret").subject_key("123") != dev.subject_key("123")
