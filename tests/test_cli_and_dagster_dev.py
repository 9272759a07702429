"""End to end through the user's own commands: `medvec normalize`, `medvec ingest`, `dagster dev`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import dicom_testfile, free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_medvec_normalize_writes_webp_records_and_reports_errors(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(dicom_testfile("RG1_UNCR.dcm"), inputs / "chest.dcm")
    (inputs / "junk.dcm").write_bytes(b"junk" * 100)
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "medvec"), "normalize", str(inputs), "--out", str(out), "--json",
                           "--size", "256"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MEDVEC_PSEUDONYM_KEY": "k"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] == 1 and summary["errors"] == 1
    assert summary["error_records"][0]["stage"] == "parse"
    record = summary["records"][0]
    assert record["view_position"] == "PA" and record["photometric"] == "MONOCHROME1"
    assert (out / record["image_uri"]).exists() and (out / record["thumb_uri"]).exists()
    assert max(record["width"], record["height"]) == 256
    assert len((out / "records.jsonl").read_text().splitlines()) == 1


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_dagster_dev_shows_the_assets_and_the_batches_that_ingest_made(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        shutil.copy(dicom_testfile(name), folder / name)
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "MEDVEC_PSEUDONYM_KEY": "k"}
    ingest = subprocess.run([str(BIN / "medvec"), "ingest", str(folder), "--json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    [batch] = json.loads(ingest.stdout)["batches"]

    port = free_port()
    server = subprocess.Popen([str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-p", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline, assets = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            try:
                assets = _graphql(port, "{ assetNodes { assetKey { path } } }")
                if assets.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                pass
            time.sleep(2)
        assert assets and assets.get("data"), "dagster dev did not answer GraphQL in 180 s"
        keys = {"/".join(node["assetKey"]["path"]) for node in assets["data"]["assetNodes"]}
        assert {"source_manifest", "normalized_images", "embedding_model", "image_embeddings",
                "image_index", "fallback_queries", "similar_images"} <= keys
        materialized = _graphql(port, """{ assetOrError(assetKey: {path: ["normalized_images"]}) {
            ... on Asset { assetMaterializations(limit: 5) { partition metadataEntries { label } } } } }""")
        events = materialized["data"]["assetOrError"]["assetMaterializations"]
        assert [e["partition"] for e in events] == [batch]
        assert {"ok", "errors", "thumbnails"} <= {m["label"] for m in events[0]["metadataEntries"]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_medvec_embed_server_serves_the_nim_protocol(tmp_path):
    port = free_port()
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_MODEL": "tiny-siglip"}
    server = subprocess.Popen([str(BIN / "medvec"), "embed-server", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health/ready", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", headers={
            "Content-Type": "application/json"}, data=json.dumps(
                {"input": ["pleural effusion", "cardiomegaly"], "model": "medvec/tiny-siglip",
                 "encoding_format": "float"}).encode())
        with urllib.request.urlopen(request, timeout=30) as answer:
            data = json.loads(answer.read())["data"]
        assert [d["index"] for d in data] == [0, 1] and len(data[0]["embedding"]) == 64
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
