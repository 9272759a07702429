"""Model files resolved from a folder, an S3 mirror (moto's real server) and the Hugging Face Hub, verified on reuse.

The Hub cannot be reached from the test machines, so Hub tests use either its offline mode over a cache laid
out the way huggingface_hub lays it out, or `FakeHub`: a local HTTP server answering the few Hub routes that
`snapshot_download` uses, so real huggingface_hub code downloads, fails and repairs against it.
"""

import hashlib
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from medvec.models.files import MANIFEST_NAME, ModelFilesError, resolve_model_files, verify_model_files
from tests.conftest import free_port

FILES = {"config.json": b'{"model_type": "siglip"}', "model.safetensors": bytes(range(256)) * 40,
         "tokenizer/tokenizer.json": b'{"version": "1.0"}'}
AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def age(folder: Path) -> None:
    """Date every file an hour back, like model files downloaded long ago (recent mtimes are never trusted)."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "siglip"
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / ".DS_Store").write_bytes(b"finder litter")
    return folder


def resolve_local(folder: Path, cache_dir: Path, **kwargs):
    return resolve_model_files("org/siglip", source="local", location=str(folder), cache_dir=cache_dir, **kwargs)


# --- local folder -----------------------------------------------------------------------------------------

def test_a_local_folder_resolves_in_place_with_sizes_hashes_and_a_stable_revision(model_folder, tmp_path):
    resolved = resolve_local(model_folder, tmp_path / "cache")
    assert resolved.source == "local" and resolved.local_dir == model_folder
    assert resolved.location == str(model_folder)
    assert [(f.path, f.size, f.sha256) for f in resolved.files] == [
        (rel, len(data), sha(data)) for rel, data in sorted(FILES.items())]  # hidden files left out
    assert resolved.total_bytes() == sum(len(d) for d in FILES.values())
    assert resolved.revision.startswith("sha256:") and len(resolved.revision) == 7 + 64
    assert resolve_local(model_folder, tmp_path / "cache").revision == resolved.revision
    assert resolve_local(model_folder, tmp_path / "other-cache").revision == resolved.revision

    assert sorted(p.name for p in model_folder.iterdir()) == [".DS_Store", "config.json", "model.safetensors",
                                                               "tokenizer"]  # the user's folder is not written
    [manifest] = (tmp_path / "cache" / "local").glob(f"*/{MANIFEST_NAME}")
    recorded = json.loads(manifest.read_text())
    assert recorded["revision"] == resolved.revision and len(recorded["files"]) == 3

    metadata = resolved.to_metadata()
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["n_files"] == 3 and metadata["total_bytes"] == resolved.total_bytes()
    assert metadata["files"][1] == {"path": "model.safetensors", "size": 10240,
                                    "sha256": sha(FILES["model.safetensors"])[:16]}


def test_editing_a_local_file_changes_the_revision_and_verification_reports_it(model_folder, tmp_path, caplog):
    before = resolve_local(model_folder, tmp_path / "cache")
    assert verify_model_files(before) == []

    (model_folder / "model.safetensors").write_bytes(bytes(10240))  # same size, other bytes
    (model_folder / "config.json").write_bytes(b"{}")
    (model_folder / "tokenizer" / "tokenizer.json").unlink()
    assert verify_model_files(before) == [
        "config.json changed size: 24 bytes when resolved, 2 now",
        "model.safetensors changed content: its sha256 no longer matches the one recorded",
        f"tokenizer/tokenizer.json is missing from {model_folder}"]

    with caplog.at_level(logging.WARNING, logger="medvec.models.files"):
        after = resolve_local(model_folder, tmp_path / "cache")
    assert after.revision != before.revision and verify_model_files(after) == []
    assert "model files changed since last resolution" in caplog.text
    assert "model.safetensors changed" in caplog.text and "tokenizer/tokenizer.json removed" in caplog.text
    assert resolve_local(model_folder, tmp_path / "cache").revision == after.revision  # the new one is recorded


def test_unchanged_old_files_are_not_hashed_again(model_folder, tmp_path):
    age(model_folder)
    heard = []
    resolve_local(model_folder, tmp_path / "cache", progress=lambda what, done, total: heard.append((what, total)))
    assert ("hashing model files", sum(len(d) for d in FILES.values())) in heard

    heard.clear()
    again = resolve_local(model_folder, tmp_path / "cache", progress=lambda *event: heard.append(event))
    assert heard == [] and verify_model_files(again) == []

    (model_folder / "config.json").write_bytes(b'{"model_type": "clip!!"}')  # same size, new mtime
    changed = resolve_local(model_folder, tmp_path / "cache", progress=lambda *event: heard.append(event))
    assert heard[-1] == ("hashing model files", 24, 24) and changed.revision != again.revision


def test_metadata_stays_small_for_a_model_with_many_files(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    for i in range(60):
        (folder / f"model-{i:05d}-of-00060.safetensors").write_bytes(b"s" * i)
    metadata = resolve_local(folder, tmp_path / "cache").to_metadata()
    assert metadata["n_files"] == 60 and len(metadata["files"]) == 50 and metadata["files_not_shown"] == 10
    assert metadata["total_bytes"] == sum(range(60)) and len(json.dumps(metadata)) < 8000


def test_a_missing_local_folder_says_what_to_fix(tmp_path):
    with pytest.raises(ModelFilesError, match="does not exist.*MEDVEC_MODEL_LOCATION"):
        resolve_local(tmp_path / "nowhere", tmp_path / "cache")
    with pytest.raises(ModelFilesError, match="unknown model source 'ftp'"):
        resolve_model_files("org/siglip", source="ftp", cache_dir=tmp_path)


# --- S3 mirror (moto's real server, started once in conftest) ----------------------------------------------

@pytest.fixture
def s3_mirror(s3_endpoint, model_folder, monkeypatch, request):
    """A bucket holding the model under a prefix, plus the litter real mirrors carry; and a GET counter."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    # Clients made by the code under test come from boto3's default session: count the objects it fetches.
    session = boto3.Session()
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    gets = []
    session.events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"models-{request.node.name.replace('_', '-')[:40].strip('-')}"
    client.create_bucket(Bucket=bucket)
    for rel, data in FILES.items():
        client.put_object(Bucket=bucket, Key=f"mirror/siglip/{rel}", Body=data)
    client.put_object(Bucket=bucket, Key="mirror/siglip/.keep", Body=b"")
    client.put_object(Bucket=bucket, Key=f"mirror/siglip/{MANIFEST_NAME}", Body=b'{"synced": "from elsewhere"}')
    client.put_object(Bucket=bucket, Key="mirror/siglip-large/config.json", Body=b"{}")  # a neighbour prefix
    return client, bucket, gets


def test_an_s3_mirror_is_downloaded_once_and_then_reused(s3_mirror, s3_endpoint, model_folder, tmp_path):
    client, bucket, gets = s3_mirror
    options = dict(source="s3", location=f"s3://{bucket}/mirror/siglip/", cache_dir=tmp_path / "cache",
                   s3_endpoint_url=s3_endpoint)
    first = resolve_model_files("org/siglip", **options)
    assert first.local_dir == tmp_path / "cache" / "s3" / bucket / "mirror" / "siglip"
    assert first.location == f"s3://{bucket}/mirror/siglip"
    assert [(f.path, f.size, f.sha256) for f in first.files] == [
        (rel, len(data), sha(data)) for rel, data in sorted(FILES.items())]
    assert all((first.local_dir / rel).read_bytes() == data for rel, data in FILES.items())
    assert sorted(gets) == sorted(f"mirror/siglip/{rel}" for rel in FILES)
    assert json.loads((first.local_dir / MANIFEST_NAME).read_text())["revision"] == first.revision
    # The revision names the content, not the place: the same files in a folder give the same one.
    assert first.revision == resolve_local(model_folder, tmp_path / "cache").revision

    mtimes = {rel: (first.local_dir / rel).stat().st_mtime_ns for rel in FILES}
    gets.clear()
    second = resolve_model_files("org/siglip", **options)
    assert gets == [] and second == first
    assert {rel: (first.local_dir / rel).stat().st_mtime_ns for rel in FILES} == mtimes
    assert verify_model_files(second) == []


def test_a_damaged_or_outdated_local_copy_of_an_s3_mirror_is_downloaded_again(s3_mirror, s3_endpoint, tmp_path):
    client, bucket, gets = s3_mirror
    options = dict(source="s3", location=f"s3://{bucket}/mirror/siglip", cache_dir=tmp_path / "cache",
                   s3_endpoint_url=s3_endpoint)
    first = resolve_model_files("org/siglip", **options)
    age(first.local_dir)
    resolve_model_files("org/siglip", **options)  # records the old mtimes, as a long-lived cache would have

    (first.local_dir / "model.safetensors").write_bytes(bytes(10240))  # same size: only the hash tells
    assert verify_model_files(first) == [
        "model.safetensors changed content: its sha256 no longer matches the one recorded"]
    gets.clear()
    repaired = resolve_model_files("org/siglip", **options)
    assert gets == ["mirror/siglip/model.safetensors"]
    assert repaired.revision == first.revision and verify_model_files(repaired) == []

    # The mirror moves on: one object replaced by another of the same size, one deleted.
    client.put_object(Bucket=bucket, Key="mirror/siglip/config.json", Body=b'{"model_type": "clip!!"}')
    client.delete_object(Bucket=bucket, Key="mirror/siglip/tokenizer/tokenizer.json")
    gets.clear()
    updated = resolve_model_files("org/siglip", **options)
    assert gets == ["mirror/siglip/config.json"]
    assert [f.path for f in updated.files] == ["config.json", "model.safetensors"]
    assert (updated.local_dir / "config.json").read_bytes() == b'{"model_type": "clip!!"}'
    assert not (updated.local_dir / "tokenizer" / "tokenizer.json").exists()
    assert updated.revision != first.revision


def test_an_unusable_s3_location_says_what_to_check(s3_mirror, s3_endpoint, tmp_path):
    _, bucket, _ = s3_mirror
    empty = f"s3://{bucket}/nothing-here .*holds no model files.*MEDVEC_MODEL_LOCATION"
    with pytest.raises(ModelFilesError, match=empty):
        resolve_model_files("org/siglip", source="s3", location=f"s3://{bucket}/nothing-here", cache_dir=tmp_path,
                            s3_endpoint_url=s3_endpoint)
    with pytest.raises(ModelFilesError, match="could not list .*s3://no-such-bucket-here/m.*NoSuchBucket.*credentials"):
        resolve_model_files("org/siglip", source="s3", location="s3://no-such-bucket-here/m", cache_dir=tmp_path,
                            s3_endpoint_url=s3_endpoint)
    with pytest.raises(ModelFilesError, match="needs an s3://bucket/prefix location"):
        resolve_model_files("org/siglip", source="s3", location="/models/siglip", cache_dir=tmp_path)


# --- Hugging Face Hub ------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_hub_repo(cache_dir: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """A Hub cache entry as huggingface_hub writes one: blobs, a snapshot of symlinks, refs/main."""
    root = cache_dir / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for rel, data in files.items():
        blob = root / "blobs" / sha(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: must still count


def test_an_unreachable_hub_without_a_cached_copy_is_a_plain_words_error(fake_hub, tmp_path, monkeypatch):
    fake_hub.repos["google/siglip-base-patch16-224"] = (COMMIT, HUB_FILES)  # there, but offline is offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: must still count
    with pytest.raises(ModelFilesError) as caught:
        resolve_model_files("google/siglip-base-patch16-224", source="hub", cache_dir=tmp_path / "empty")
    message = str(caught.value)
    assert message.startswith("could not reach the Hugging Face Hub for google/siglip-base-patch16-224")
    assert "mirror it to S3 or a local folder" in message and "MEDVEC_MODEL_SOURCE" in message
    assert fake_hub.requests == []  # offline means no network attempt (so no timeout to wait for)


def test_a_hub_that_does_not_answer_is_a_plain_words_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ModelFilesError) as caught:
        resolve_model_files("google/siglip-base-patch16-224", source="hub", cache_dir=tmp_path, token="hf_secret")
    message = str(caught.value)
    assert message.startswith("could not reach the Hugging Face Hub for google/siglip-base-patch16-224: ConnectError")
    assert "mirror it to S3 or a local folder" in message and "set HF_HUB_OFFLINE=1 with a populated cache" in message
    assert "hf_secret" not in message


def test_a_populated_hub_cache_resolves_offline_to_its_commit(hub_offline, tmp_path):
    snapshot = cached_hub_repo(tmp_path / "cache", "org/cached", {
        "config.json": b"{}", "model.safetensors": b"w" * 100, "pytorch_model.bin": b"p" * 100,
        "tokenizer_config.json": b"{}", "README.md": b"# card"})
    resolved = resolve_model_files("org/cached", source="hub", cache_dir=tmp_path / "cache")
    assert resolved.revision == COMMIT and resolved.source == "hub" and resolved.location == "org/cached"
    assert resolved.local_dir == snapshot
    # Safetensors present: the pickled duplicate and the model card are not part of the model.
    assert [f.path for f in resolved.files] == ["config.json", "model.safetensors", "tokenizer_config.json"]
    assert resolved.files[1].sha256 == sha(b"w" * 100) and verify_model_files(resolved) == []
    assert json.loads((snapshot / MANIFEST_NAME).read_text())["revision"] == COMMIT
    assert resolve_model_files("hf-hub:org/cached", source="hub", cache_dir=tmp_path / "cache").revision == COMMIT


def test_pytorch_bin_weights_are_used_only_without_safetensors(hub_offline, tmp_path):
    cached_hub_repo(tmp_path / "cache", "org/old",
                    {"open_clip_config.json": b"{}", "open_clip_pytorch_model.bin": b"b"})
    resolved = resolve_model_files("org/old", source="hub", cache_dir=tmp_path / "cache")
    assert [f.path for f in resolved.files] == ["open_clip_config.json", "open_clip_pytorch_model.bin"]


def test_a_damaged_hub_cache_is_refused_offline(hub_offline, tmp_path):
    snapshot = cached_hub_repo(tmp_path / "cache", "org/cached", {"config.json": b"{}", "model.safetensors": b"w" * 9})
    resolve_model_files("org/cached", source="hub", cache_dir=tmp_path / "cache")
    (snapshot / "model.safetensors").resolve().write_bytes(b"x" * 9)  # a blob damaged in place
    damaged = r"missing or changed since they were downloaded \(model.safetensors\).*HF_HUB_OFFLINE is set: unset it"
    with pytest.raises(ModelFilesError, match=damaged):
        resolve_model_files("org/cached", source="hub", cache_dir=tmp_path / "cache")
    (snapshot / "config.json").resolve().unlink()  # a blob gone: the snapshot keeps a dangling link
    with pytest.raises(ModelFilesError, match=r"\(config.json, model.safetensors\)"):
        resolve_model_files("org/cached", source="hub", cache_dir=tmp_path / "cache")


class FakeHub:
    """The Hub routes `snapshot_download` and `hf_hub_download` use, for in-memory repos; records requests."""

    def __init__(self):
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.gated: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, authorization
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                path = self.path.split("?")[0]
                api = path.startswith("/api/models/")
                parts = path.removeprefix("/api/models/").lstrip("/").split("/")
                repo, route, rest = "/".join(parts[:2]), parts[2] if len(parts) > 2 else "", parts[3:]
                if repo in hub.gated and self.headers.get("Authorization") != "Bearer hf_good_token":
                    return self.send(403, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, body)
                if repo not in hub.repos:
                    return self.send(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"}, body)
                commit, files = hub.repos[repo]
                if api and route == "revision":
                    info = {"id": repo, "sha": commit, "siblings": [{"rfilename": p} for p in files]}
                    return self.send(200, json.dumps(info).encode(), {}, body)
                if api and route == "tree":
                    tree = [{"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                            for p, d in files.items()]
                    return self.send(200, json.dumps(tree).encode(), {}, body)
                if not api and route == "resolve" and "/".join(rest[1:]) in files:
                    data = files["/".join(rest[1:])]
                    return self.send(200, data, {"X-Repo-Commit": commit,
                                                 "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, body)
                return self.send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)

            def send(self, status: int, data: bytes, headers: dict, body: bool):
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                    **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def downloads(self) -> list[str]:
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path, _ in self.requests
                if method == "GET" and "/resolve/" in path]


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


HUB_FILES = {"config.json": b'{"model_type": "siglip"}', "model.safetensors": b"w" * 300,
             "pytorch_model.bin": b"p" * 300, "tokenizer.json": b"{}", "README.md": b"# card"}


def test_a_hub_model_is_downloaded_at_its_commit_and_a_damaged_file_fetched_again(fake_hub, tmp_path):
    fake_hub.repos["org/online"] = (COMMIT, HUB_FILES)
    resolved = resolve_model_files("org/online", source="hub", cache_dir=tmp_path / "cache")
    assert resolved.revision == COMMIT
    assert [f.path for f in resolved.files] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(fake_hub.downloads()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert all(f.sha256 == sha(HUB_FILES[f.path]) for f in resolved.files)

    (resolved.local_dir / "model.safetensors").resolve().write_bytes(b"x" * 300)
    fake_hub.requests.clear()
    repaired = resolve_model_files("org/online", source="hub", cache_dir=tmp_path / "cache")
    assert fake_hub.downloads() == ["model.safetensors"]
    assert repaired == resolved and verify_model_files(repaired) == []


def test_an_incomplete_hub_cache_is_refused_offline(fake_hub, tmp_path, monkeypatch):
    fake_hub.repos["org/online"] = (COMMIT, HUB_FILES)
    resolved = resolve_model_files("org/online", source="hub", cache_dir=tmp_path / "cache")
    (resolved.local_dir / "tokenizer.json").unlink()  # an interrupted download leaves a snapshot like this
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFilesError, match="HF_HUB_OFFLINE is set and .* holds no complete copy of it"):
        resolve_model_files("org/online", source="hub", cache_dir=tmp_path / "cache")


def test_a_pinned_commit_with_a_verified_copy_is_reused_without_asking_the_hub(fake_hub, tmp_path):
    fake_hub.repos["org/online"] = (COMMIT, HUB_FILES)
    first = resolve_model_files("org/online", source="hub", cache_dir=tmp_path / "cache")
    fake_hub.requests.clear()
    pinned = resolve_model_files("org/online", source="hub", revision=COMMIT, cache_dir=tmp_path / "cache")
    assert pinned == first and fake_hub.requests == []

    resolve_model_files("org/online", source="hub", revision="main", cache_dir=tmp_path / "cache")
    assert fake_hub.requests  # a branch can move: it is always asked


def test_a_gated_hub_model_says_how_to_get_access_and_never_shows_the_token(fake_hub, tmp_path, caplog):
    fake_hub.repos["google/medsiglip-448"] = (COMMIT, HUB_FILES)
    fake_hub.gated.add("google/medsiglip-448")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ModelFilesError) as caught:
            resolve_model_files("google/medsiglip-448", source="hub", cache_dir=tmp_path / "cache",
                                token="hf_secret_token_value")
    assert str(caught.value).startswith("google/medsiglip-448 is gated: accept its terms on huggingface.co "
                                        "and set HF_TOKEN")
    assert "hf_secret_token_value" not in str(caught.value) + caplog.text
    assert fake_hub.requests[0][2] == "Bearer hf_secret_token_value"  # it was sent, only to the Hub

    granted = resolve_model_files("google/medsiglip-448", source="hub", cache_dir=tmp_path / "cache",
                                  token="hf_good_token")
    assert granted.revision == COMMIT


def test_an_unknown_hub_model_says_what_to_check(fake_hub, tmp_path):
    with pytest.raises(ModelFilesError, match="org/typo was not found on the Hugging Face Hub.*MEDVEC_MODEL"):
        resolve_model_files("org/typo", source="hub", cache_dir=tmp_path / "cache")
