"""No identifying value from a DICOM header reaches any output: files, records, tables, logs, metadata."""

import logging
import shutil
from pathlib import Path

import dagster as dg
import pydicom
import pytest

from medvec.phi import IDENTIFYING_TAGS, MissingPseudonymKey, Pseudonymizer
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
#: Original UIDs and dates that must leave only replaced (PS3.15 basic profile); `{n}` tells files apart.
UID_SENTINELS = {"StudyInstanceUID": "1.2.826.0.1.3680043.7777.{n}.1",
                 "SeriesInstanceUID": "1.2.826.0.1.3680043.7777.{n}.2",
                 "SOPInstanceUID": "1.2.826.0.1.3680043.7777.{n}.3"}
DATE_SENTINELS = {"SeriesDate": "18610205", "AcquisitionDate": "18610206", "ContentDate": "18610207"}


def _with_sentinels(source_name: str, path, truncate: bool = False, n: int = 1) -> None:
    ds = pydicom.dcmread(dicom_testfile(source_name))
    for keyword, value in {**SENTINELS, **DATE_SENTINELS}.items():
        setattr(ds, keyword, value)
    for keyword, value in UID_SENTINELS.items():
        setattr(ds, keyword, value.format(n=n))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
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
    _with_sentinels("CT_small.dcm", folder / "ct.dcm", n=1)
    _with_sentinels("MR_small_RLE.dcm", folder / "mr.dcm", n=2)
    _with_sentinels("CT_small.dcm", folder / "cut.dcm", truncate=True, n=3)
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
    originals = {**SENTINELS, **DATE_SENTINELS, **{f"{k} {n}": v.format(n=n) for k, v in UID_SENTINELS.items()
                                                  for n in (1, 2, 3)}, "UID root": "1.2.826.0.1.3680043.7777"}
    for where, data in haystacks.items():
        for keyword, value in originals.items():
            assert value.encode() not in data, f"{keyword} leaked into {where}"

    # The PatientID did leave, but only as its keyed pseudonym.
    from medvec.ingest.batches import load_batch_records

    records = load_batch_records(settings.home, summary.batches[0])
    expected = Pseudonymizer(secret).subject_key(SENTINELS["PatientID"])
    assert {r.subject_key for r in records if not r.source_uri.endswith("plain.dcm")} == {expected}

    # The HTTP API answers (search, metadata, similar, stats) carry none of them either.
    haystack = _api_answers(settings, records)
    for keyword, value in originals.items():
        assert value not in haystack, f"{keyword} leaked into the HTTP API"

    # Another machine sharing the key (another home, another Dagster instance) gives the same replaced ids.
    monkeypatch.setenv("MEDVEC_HOME", str(tmp_path / "other_home"))
    with dg.instance_for_test() as other_instance:
        again = ingest(str(folder), Settings.from_env(), instance=other_instance, workers=1, embed=False)
    replaced = sorted((r.image_id, r.study_id, r.series_id) for r in records)
    assert replaced == sorted((r.image_id, r.study_id, r.series_id)
                              for r in load_batch_records(tmp_path / "other_home", again.batches[0]))
    assert all(image_id.startswith("2.25.") for image_id, _, _ in replaced if image_id)


def _api_answers(settings: Settings, records) -> str:
    import httpx

    from medvec.search.configured import open_search
    from medvec.serve.http_api import create_app
    from tests.test_http_api import running

    search = open_search(settings)
    answers = []
    try:
        with running(create_app(search, settings.home)) as base_url, httpx.Client(base_url=base_url) as api:
            for route in ["/api/stats", "/api/search?q=chest&k=10",
                          *(f"/api/images/{r.image_id}" for r in records), f"/api/similar/{records[0].image_id}"]:
                answer = api.get(route)
                assert answer.status_code == 200, (route, answer.text)
                answers.append(answer.text)
    finally:
        search.close()
    return "\n".join(answers)


def test_allowed_tag_is_kept_only_when_asked(tmp_path, pseudonymizer):
    from medvec.imaging.normalize import NormalizeOptions, normalize_bytes

    path = tmp_path / "ct.dcm"
    _with_sentinels("CT_small.dcm", path)
    plain = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer)
    assert "StationName" not in plain.record.extra
    allowed = normalize_bytes(path.read_bytes(), str(path), pseudonymizer=pseudonymizer,
                              options=NormalizeOptions(allow_tags=("StationName",)))
    assert allowed.record.extra["StationName"] == SENTINELS["StationName"]


def test_missing_pseudonym_key_is_refused_unless_the_dev_key_is_allowed(caplog):
    with pytest.raises(MissingPseudonymKey) as refused:
        Pseudonymizer(None)
    assert "MEDVEC_PSEUDONYM_KEY" in str(refused.value) and "secrets.token_urlsafe(32)" in str(refused.value)
    with caplog.at_level(logging.WARNING):
        dev = Pseudonymizer(None, allow_dev_key=True)
    assert dev.uses_dev_key and "MEDVEC_PSEUDONYM_KEY" in caplog.text
    assert Pseudonymizer("secret").subject_key("123") != dev.subject_key("123")


def test_ingest_without_a_key_stops_before_any_batch(tmp_path, monkeypatch, dagster_instance):
    monkeypatch.setenv("MEDVEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDVEC_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("MEDVEC_ALLOW_DEV_KEY", raising=False)
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(dicom_testfile("CT_small.dcm"), folder / "ct.dcm")
    with pytest.raises(MissingPseudonymKey):
        ingest(str(folder), Settings.from_env(), instance=dagster_instance, workers=1, embed=False)
    assert not (tmp_path / "home" / "batches").exists() and not dagster_instance.get_runs()


def test_normalize_batch_refuses_in_the_parent_without_a_key(tmp_path):
    from medvec.ingest.batches import normalize_batch, plan_batches
    from medvec.sources import open_source

    shutil.copy(dicom_testfile("CT_small.dcm"), tmp_path / "ct.dcm")
    manifest = plan_batches(open_source(str(tmp_path), None), tmp_path / "home", batch_size=10)[0]
    with pytest.raises(MissingPseudonymKey):
        normalize_batch(manifest, tmp_path / "home", workers=2)


def test_uids_are_replaced_by_keyed_2_25_uids_the_same_for_the_same_key(tmp_path):
    from medvec.imaging.normalize import normalize_bytes

    path = tmp_path / "ct.dcm"
    _with_sentinels("CT_small.dcm", path, n=9)
    one = normalize_bytes(path.read_bytes(), "a", pseudonymizer=Pseudonymizer("key-one")).record
    again = normalize_bytes(path.read_bytes(), "b", pseudonymizer=Pseudonymizer("key-one")).record
    other = normalize_bytes(path.read_bytes(), "c", pseudonymizer=Pseudonymizer("key-two")).record
    for record in (one, other):
        for value in (record.image_id, record.study_id, record.series_id):
            assert value.startswith("2.25.") and len(value) <= 44 and value[5:].isdigit() and "7777" not in value
    assert (one.image_id, one.study_id, one.series_id) == (again.image_id, again.study_id, again.series_id)
    assert one.image_id != other.image_id and one.study_id != other.study_id
    assert one.image_uri.endswith(f"{one.image_id}.webp") or one.image_id in one.image_uri


def test_dates_are_removed_by_default_and_shifted_per_subject_on_request(tmp_path):
    from medvec.imaging.normalize import NormalizeOptions, normalize_bytes

    key = Pseudonymizer("k")
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    _with_sentinels("CT_small.dcm", first, n=1)
    ds = pydicom.dcmread(first)
    ds.StudyDate, ds.SOPInstanceUID = "18610214", "1.2.826.0.1.3680043.7777.1.4"  # ten days later
    ds.save_as(second)
    tags = ("StudyDate", "StudyInstanceUID")
    removed = normalize_bytes(first.read_bytes(), "a", pseudonymizer=key, options=NormalizeOptions(allow_tags=tags))
    assert "StudyDate" not in removed.record.extra
    assert removed.record.extra["StudyInstanceUID"] == removed.record.study_id  # replaced, even when allowed
    shift = NormalizeOptions(allow_tags=tags, date_policy="shift")
    a = normalize_bytes(first.read_bytes(), "a", pseudonymizer=key, options=shift).record.extra["StudyDate"]
    b = normalize_bytes(second.read_bytes(), "b", pseudonymizer=key, options=shift).record.extra["StudyDate"]
    assert a != SENTINELS["StudyDate"]
    from datetime import datetime

    days = (datetime.strptime(b, "%Y%m%d") - datetime.strptime(a, "%Y%m%d")).days
    assert days == 10  # the interval between one subject's studies is kept


@pytest.mark.parametrize("change", [{"BurnedInAnnotation": "YES"}, {"Modality": "US"}, {"Modality": "SC"}])
def test_images_with_burned_in_text_are_refused_unless_allowed(tmp_path, pseudonymizer, change):
    from medvec.imaging.dicom import UnreadableImage
    from medvec.imaging.normalize import NormalizeOptions, normalize_bytes

    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / "x.dcm")
    data = (tmp_path / "x.dcm").read_bytes()
    with pytest.raises(UnreadableImage) as refused:
        normalize_bytes(data, "x", pseudonymizer=pseudonymizer)
    assert refused.value.stage == "deidentify" and "burned" in refused.value.reason.lower()
    assert normalize_bytes(data, "x", pseudonymizer=pseudonymizer, options=NormalizeOptions(allow_burned_in=True))
    if "Modality" in change:  # a modality the user takes off the list, or an explicit NO, goes through
        assert normalize_bytes(data, "x", pseudonymizer=pseudonymizer,
                               options=NormalizeOptions(burned_in_modalities=("XA",)))
        ds.BurnedInAnnotation = "NO"
        ds.save_as(tmp_path / "no.dcm")
        assert normalize_bytes((tmp_path / "no.dcm").read_bytes(), "x", pseudonymizer=pseudonymizer)
