"""An S3 prefix as a source, against moto's real S3-compatible HTTP server started by the test."""

import boto3
import pytest

from medvec.ingest.batches import load_batch_records
from medvec.settings import Settings
from medvec.sources import S3PrefixSource
from pipelines.ingest import ingest
from tests.conftest import dicom_testfile, free_port


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"cxr-{free_port()}"
    client.create_bucket(Bucket=name)
    for i, source in enumerate(["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"]):
        client.put_object(Bucket=name, Key=f"downloads/p10/s{i}/{source}", Body=dicom_testfile(source).read_bytes())
    client.put_object(Bucket=name, Key="downloads/p10/s9/bad.dcm", Body=b"not dicom at all" * 10)
    client.put_object(Bucket=name, Key="downloads/p10/s0/CT_small.dcm.done", Body=b"")
    client.put_object(Bucket=name, Key="downloads/labels.csv", Body=b"path,labels\np10/s0/CT_small.dcm,Edema\n")
    client.put_object(Bucket=name, Key="elsewhere/other.dcm", Body=b"x")
    return client, name


def test_listing_a_prefix_yields_a_manifest_with_etags(bucket, s3_endpoint):
    client, name = bucket
    source = S3PrefixSource(f"s3://{name}/downloads", endpoint_url=s3_endpoint)
    files = list(source.list_files())
    assert [f.uri.rsplit("/", 1)[-1] for f in files] == ["CT_small.dcm", "MR_small_RLE.dcm",
                                                         "SC_rgb_jpeg_dcmtk.dcm", "bad.dcm"]
    assert all(f.etag and f.size > 0 and f.mtime for f in files)
    assert source.find_metadata_csv() == f"s3://{name}/downloads/labels.csv"
    assert source.read_bytes(files[0].uri) == dicom_testfile("CT_small.dcm").read_bytes()
    assert source.stat(f"s3://{name}/downloads/missing.dcm") is None


def test_ingest_from_an_s3_prefix(bucket, s3_endpoint, tmp_path, monkeypatch, dagster_instance):
    _, name = bucket
    monkeypatch.setenv("MEDVEC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDVEC_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("MEDVEC_PSEUDONYM_KEY", "s3-source-test-key")
    settings = Settings.from_env()
    summary = ingest(f"s3://{name}/downloads", settings, instance=dagster_instance, workers=2)
    assert summary.ok == 3 and [e.source_uri for e in summary.errors] == [f"s3://{name}/downloads/p10/s9/bad.dcm"]
    records = {r.source_uri.rsplit("/", 1)[-1]: r for r in load_batch_records(settings.home, summary.batches[0])}
    assert records["CT_small.dcm"].labels == ["Edema"]
    assert all((settings.home / r.image_uri).exists() for r in records.values())
    again = ingest(f"s3://{name}/downloads", settings, instance=dagster_instance)
    assert again.batches == []
