"""Model files from a local folder, an S3 mirror (moto's real server) and the Hub cache, verified on reuse."""

import hashlib

import boto3
import pytest

from medvec.model_files import ModelFilesError, resolve_model_files, verify_model_files



@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "siglip"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "siglip"}')
    (folder / "model.safetensors").write_bytes(b"\x01" * 5000)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    (folder / ".hidden").write_text("ignored")
    return folder


def test_a_local_folder_resolves_with_sizes_hashes_and_a_stable_revision(model_folder, tmp_path):
    resolved = resolve_model_files("org/m", source="local", location=str(model_folder), cache_dir=tmp_path / "c")
    assert [f.path for f in resolved.files] == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    weights = next(f for f in resolved.files if f.path == "model.safetensors")
    assert weights.size == 5000 and weights.sha256 == hashlib.sha256(b"\x01" * 5000).hexdigest()
    assert resolved.revision.startswith("sha256:") and resolved.local_dir == model_folder
    again = resolve_model_files("org/m", source="local", location=str(model_folder), cache_dir=tmp_path / "c")
    assert again.revision == resolved.revision and verify_model_files(again) == []
    assert not (model_folder / "medvec_files.json").exists()  # the user's folder is never written

    (model_folder / "model.safetensors").write_bytes(b"\x02" * 5000)
    assert verify_model_files(resolved) == ["model.safetensors changed content (sha256 differs)"]
    changed = resolve_model_files("org/m", source="local", location=str(model_folder), cache_dir=tmp_path / "c")
    assert changed.revision != resolved.revision
    assert changed.to_metadata()["n_files"] == 3


def test_an_s3_mirror_downloads_once_and_repairs_a_corrupted_copy(s3_endpoint, model_folder, tmp_path, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="models")
    for path in ("config.json", "model.safetensors", "sub/tokenizer.json"):
        client.upload_file(str(model_folder / path), "models", f"mirror/siglip/{path}")
    options = dict(source="s3", location="s3://models/mirror/siglip", cache_dir=tmp_path / "c",
                   s3_endpoint_url=s3_endpoint)
    first = resolve_model_files("org/m", **options)
    assert [f.path for f in first.files] == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    local = {f.path: (first.local_dir / f.path).stat().st_mtime_ns for f in first.files}

    second = resolve_model_files("org/m", **options)
    assert second.revision == first.revision
    assert {f.path: (second.local_dir / f.path).stat().st_mtime_ns for f in second.files} == local  # nothing fetched

    (first.local_dir / "model.safetensors").write_bytes(b"corrupt")
    repaired = resolve_model_files("org/m", **options)
    assert repaired.revision == first.revision and verify_model_files(repaired) == []

    with pytest.raises(ModelFilesError, match="empty"):
        resolve_model_files("org/m", source="s3", location="s3://models/nothing-here", cache_dir=tmp_path / "c",
                            s3_endpoint_url=s3_endpoint)


def test_an_unreachable_hub_is_a_plain_words_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFilesError, match="google/siglip-base-patch16-224.*MEDVEC_MODEL_SOURCE"):
        resolve_model_files("google/siglip-base-patch16-224", source="hub", cache_dir=tmp_path / "empty")


def test_a_populated_hub_cache_resolves_offline_to_its_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    commit = "a" * 40
    repo = tmp_path / "c" / "hub" / "models--org--cached"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    resolved = resolve_model_files("org/cached", source="hub", cache_dir=tmp_path / "c")
    assert resolved.revision == commit and [f.path for f in resolved.files] == ["config.json"]
