"""No identifying value from a DICOM header leaves it: the records, the replaced ids, the key, burned-in text.

The helpers here (the sentinels, `write_sentinel_dicom`, `leaks`) also serve tests/test_phi_everywhere.py,
which sweeps every output of a real pipeline run for them."""

import logging
import shutil

import pydicom
import pytest

from medvec.phi import IDENTIFYING_TAGS, RECORD_TAGS, MissingPseudonymKey, Pseudonymizer
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
DATE_SENTINELS = {"SeriesDate": "18610205", "AcquisitionDate": "18610206", "ContentDate": "18610207",
                  "InstanceCreationDate": "18610208", "AcquisitionDateTime": "18610209013457.246801"}
#: Attributes Medvec never reads (times, free text, another UID, more names): present, so that a change
#: that starts reading them shows here. A private tag (creator and value) rides along.
NEVER_READ_SENTINELS = {
    "StudyTime": "013457.246801", "SeriesTime": "013457.246802", "AcquisitionTime": "013457.246803",
    "ContentTime": "013457.246804", "PatientBirthTime": "013457.246805",
    "OtherPatientNames": "ZZOTHER^NAMEQQ", "IssuerOfPatientID": "ZZISSUERQQ",
    "RequestingPhysician": "ZZREQUESTING^DOCQQ", "NameOfPhysiciansReadingStudy": "ZZREADING^DOCQQ",
    "StudyDescription": "ZZSTUDY DESCRIPTIONQQ", "SeriesDescription": "ZZSERIES DESCRIPTIONQQ",
    "PatientComments": "ZZPATIENT COMMENTSQQ", "FrameOfReferenceUID": "1.2.826.0.1.3680043.7777.0.4",
}
PRIVATE_CREATOR, PRIVATE_VALUE = "ZZPRIVATE CREATORQQ", "ZZPRIVATE VALUEQQ"
#: Every original value that must never leave a file (the UID root catches any UID quoted in part).
ORIGINALS = {**SENTINELS, **DATE_SENTINELS, **NEVER_READ_SENTINELS, "private creator": PRIVATE_CREATOR,
             "private value": PRIVATE_VALUE, "UID root": "1.2.826.0.1.3680043.7777",
             **{f"{k} {n}": v.format(n=n) for k, v in UID_SENTINELS.items() for n in range(1, 6)}}


def write_sentinel_dicom(source_name: str, path, truncate: bool = False, n: int = 1, **changes) -> None:
    ds = pydicom.dcmread(dicom_testfile(source_name))
    for keyword, value in {**SENTINELS, **DATE_SENTINELS, **NEVER_READ_SENTINELS, **changes}.items():
        setattr(ds, keyword, value)
    for keyword, value in UID_SENTINELS.items():
        setattr(ds, keyword, value.format(n=n))
    ds.private_block(0x0011, PRIVATE_CREATOR, create=True).add_new(0x01, "LO", PRIVATE_VALUE)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path)
    if truncate:  # a failing file must not leak through its error message either
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 3000])


def leaks(haystacks: dict[str, bytes | str]) -> list[str]:
    """'<what> leaked into <where>' for every original value found in any haystack (bytes or text)."""
    found = []
    for where, data in haystacks.items():
        data = data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")
        found += [f"{keyword} leaked into {where}" for keyword, value in ORIGINALS.items() if value.encode() in data]
    return found


def test_sentinel_covers_every_identifying_tag_we_strip():
    assert set(SENTINELS) <= set(IDENTIFYING_TAGS)
    assert not set(NEVER_READ_SENTINELS) & set(RECORD_TAGS)  # none of them is ever copied


def test_allowed_tag_is_kept_only_when_asked(tmp_path, pseudonymizer):
    from medvec.imaging.normalize import NormalizeOptions, normalize_bytes

    path = tmp_path / "ct.dcm"
    write_sentinel_dicom("CT_small.dcm", path)
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
    write_sentinel_dicom("CT_small.dcm", path, n=9)
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
    write_sentinel_dicom("CT_small.dcm", first, n=1)
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
